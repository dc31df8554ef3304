/* settings.c: the command line's one option parser (a table per command: spellings, kinds, defaults,
 * ranges, help), and a federated run's settings: their table, their checks and the settings file that
 * --resume and export read back. It parses and validates; it starts nothing and trains nothing. */
#include "fedex.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

/* ============================================================================================
 * The option parser, shared by every command
 * ============================================================================================
 * `--opt value` and `--opt=value`; a flag takes no value; `--` ends the options (what follows is
 * positional, even when it starts with '-'); a lone `-` is positional (standard input). Usage errors
 * come back as -1 with fx_err(); the command line prints them and exits 2. */

int fx_is_help(const char *a) { return !strcmp(a, "-h") || !strcmp(a, "--help"); }

int fx_opts_wants_help(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--")) return 0;
        if (fx_is_help(argv[i])) return 1;
    }
    return 0;
}

static int set_value(const fx_opt *o, void *dst, const char *v) {
    char *end;
    void *p = (char *)dst + o->off;
    int ranged = o->lo < o->hi;
    switch (o->kind) {
    case FX_OPT_INT: {
        errno = 0;
        long x = strtol(v, &end, 10);
        if (*end || end == v) { fx_seterr("%s: '%s' is not a whole number", o->name, v); return -1; }
        if (errno || x < INT32_MIN || x > INT32_MAX) {
            if (ranged) fx_seterr("%s '%s' must be an integer in [%lld, %lld]", o->name, v, o->lo, o->hi);
            else fx_seterr("%s: '%s' is out of range (at most %d)", o->name, v, INT32_MAX);
            return -1;
        }
        if (ranged && (x < o->lo || x > o->hi)) {
            fx_seterr("%s '%s' must be an integer in [%lld, %lld]", o->name, v, o->lo, o->hi);
            return -1;
        }
        *(int *)p = (int)x;
        return 0;
    }
    case FX_OPT_SEED: {
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (errno || *end || end == v || x < 0) {
            fx_seterr("%s: '%s' is not a seed (a whole number from 0 to %lld)", o->name, v, (long long)INT64_MAX);
            return -1;
        }
        *(long long *)p = x;
        return 0;
    }
    case FX_OPT_REAL: {
        errno = 0;
        double x = strtod(v, &end);
        if (errno || *end || end == v || !isfinite(x)) { fx_seterr("%s: '%s' is not a number", o->name, v); return -1; }
        *(double *)p = x;
        return 0;
    }
    case FX_OPT_STR:
        /* (PEFT's three list options read an empty value as None, as the reference code's scripts pass it) */
        if (!*v && strcmp(o->name, "--modules_to_save") && strcmp(o->name, "--layers_to_transform") &&
            strcmp(o->name, "--layers_pattern")) {
            fx_seterr("%s: an empty value (give a name, or leave the option out)", o->name);
            return -1;
        }
        *(const char **)p = v;
        return 0;
    case FX_OPT_FLAG: *(int *)p = 1; return 0;
    }
    return -1;
}

int fx_opts_defaults(const fx_cmdline *cl, void *dst) {
    if (cl->size) memset(dst, 0, cl->size);
    for (int i = 0; i < cl->nopt; i++)
        if (cl->opt[i].def && set_value(&cl->opt[i], dst, cl->opt[i].def) != 0) return -1;
    return 0;
}

int fx_opts_find(const fx_cmdline *cl, const char *name) {
    for (int i = 0; i < cl->nopt; i++)
        if (!strcmp(name, cl->opt[i].name) || (cl->opt[i].alias && !strcmp(name, cl->opt[i].alias))) return i;
    return -1;
}

int fx_opts_parse(const fx_cmdline *cl, int argc, char **argv, void *dst, int *set, const char **pos, int *npos) {
    if (fx_opts_defaults(cl, dst) != 0) return -1;
    for (int i = 0; i < cl->nopt; i++) set[i] = 0;
    int n = 0, options = 1;
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a], *val = NULL;
        if (options && !strcmp(arg, "--")) { options = 0; continue; }
        if (!options || arg[0] != '-' || !strcmp(arg, "-")) {
            if (n >= cl->npos_max) {
                if (cl->npos_max == 0) fx_seterr("unexpected argument '%s' (see `fedex help %s`)", arg, cl->cmd);
                else fx_seterr("at most %d %s, got another: '%s'", cl->npos_max, cl->pos_name, arg);
                return -1;
            }
            pos[n++] = arg;
            continue;
        }
        char name[64];
        const char *eq = strchr(arg, '=');
        if (eq && (size_t)(eq - arg) < sizeof name) {
            memcpy(name, arg, (size_t)(eq - arg));
            name[eq - arg] = 0;
            val = eq + 1;
            arg = name;
        }
        int k = fx_opts_find(cl, arg);
        if (k < 0) { fx_seterr("unknown option '%s' (see `fedex help %s`)", argv[a], cl->cmd); return -1; }
        const fx_opt *o = &cl->opt[k];
        if (set[k]) { fx_seterr("option %s given twice", o->name); return -1; }
        set[k] = 1;
        if (o->kind == FX_OPT_FLAG) {
            if (val) { fx_seterr("%s takes no value", o->name); return -1; }
        } else if (!val) {
            if (a + 1 >= argc) { fx_seterr("%s needs a value", o->name); return -1; }
            val = argv[++a];
        }
        if (set_value(o, dst, val) != 0) return -1;
    }
    if (n < cl->npos_min) {
        fx_seterr("needs %s (usage: fedex %s %s)", cl->pos_name, cl->cmd, cl->synopsis);
        return -1;
    }
    if (npos) *npos = n;
    return 0;
}

void fx_opts_help(const fx_cmdline *cl, FILE *f) {
    fprintf(f, "usage: fedex %s %s\n%s", cl->cmd, cl->synopsis, cl->about);
    if (!cl->nopt) return;
    int alias = 0;
    for (int i = 0; i < cl->nopt; i++) alias |= cl->opt[i].alias != NULL;
    fprintf(f, "\noptions%s:\n", alias ? " (the reference code's spelling in parentheses)" : "");
    for (int i = 0; i < cl->nopt; i++) {
        const fx_opt *o = &cl->opt[i];
        char name[64];
        snprintf(name, sizeof name, "%s%s", o->name,
                 o->kind == FX_OPT_FLAG ? "" : o->kind == FX_OPT_STR ? " S" : o->kind == FX_OPT_REAL ? " X" : " N");
        fprintf(f, "  %-20s %s", name, o->help);
        if (o->def) fprintf(f, " [default %s]", o->def);
        if (o->alias) fprintf(f, " (%s)", o->alias);
        fprintf(f, "\n");
    }
    fprintf(f, "Options take their value as `--opt value` or `--opt=value`; `--` ends the options.\n");
}

/* ============================================================================================
 * A federated run's settings (train, demo, export)
 * ============================================================================================
 * One table describes every setting: its spellings (ours, then the reference code's), its type, its
 * default and its help line. Parsing, `fedex help train` and the run's settings file all read it. */

#define RC(f) offsetof(fx_settings, f)
static const fx_opt train_opts[] = {
    {"--model", NULL, FX_OPT_STR, RC(model), NULL, "model folder (config.json, model.safetensors, tokenizer.json or vocab.json + merges.txt); none: the embedded demo model", 0, 0},
    {"--task", NULL, FX_OPT_STR, RC(task), NULL, "GLUE task (CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI), e2e (a causal LM on E2E NLG), or instruct, gsm8k, mc (a causal LM on JSON Lines: instructions, GSM8K exact match, multiple choice); none: the built-in synthetic task", 0, 0},
    {"--data", NULL, FX_OPT_STR, RC(data), NULL, "folder holding the GLUE task folders; for e2e trainset.csv, devset.csv and testset_w_refs.csv; for instruct, gsm8k, mc train.jsonl and dev.jsonl", 0, 0},
    {"--train-file", "--train_file", FX_OPT_STR, RC(train_file), NULL, "e2e: the training CSV, in place of DATA/trainset.csv (instruct, gsm8k, mc: the JSON Lines, in place of DATA/train.jsonl)", 0, 0},
    {"--chat-template", NULL, FX_OPT_STR, RC(chat_template), "auto", "instruct, gsm8k, mc: auto (the model's tokenizer_config.json chat_template when it has one, else Alpaca's plain prompt) | none (the plain prompt)", 0, 0},
    {"--eval-rows", NULL, FX_OPT_INT, RC(eval_rows), "0", "gsm8k, mc: generate (gsm8k, greedy) or score (mc) the first N dev rows at the rounds --eval-every says (0: all)", 0, 0},
    {"--test-file", NULL, FX_OPT_STR, RC(test_file), NULL, "e2e: the test CSV whose MRs are generated and scored, in place of DATA/testset_w_refs.csv", 0, 0},
    {"--eval-every", NULL, FX_OPT_INT, RC(eval_every), "0", "e2e: generate and score the test MRs every N rounds and at the last (0: the last only, when the test file is there; -1: never); gsm8k, mc: likewise the dev rows (their default 1: every round)", 0, 0},
    {"--test-mrs", NULL, FX_OPT_INT, RC(test_mrs), "0", "e2e: generate for the first N test MRs only (0: all)", 0, 0},
    {"--num-beams", NULL, FX_OPT_INT, RC(num_beams), "10", "e2e generation: beams (1: greedy)", 0, 0},
    {"--length-penalty", NULL, FX_OPT_REAL, RC(length_penalty), "0.8", "e2e generation: a finished beam scores sum log p / generated_length^X", 0, 0},
    {"--early-stopping", NULL, FX_OPT_STR, RC(early_stopping), "false", "e2e generation: false (HF's heuristic) | true | never", 0, 0},
    {"--no-repeat-ngram-size", NULL, FX_OPT_INT, RC(no_repeat_ngram), "4", "e2e generation: no N-gram twice (0: off)", 0, 0},
    {"--no-repeat-scope", NULL, FX_OPT_STR, RC(no_repeat_scope), "generated", "e2e generation: generated (the prompt's n-grams may recur) | row (HF's: prompt included)", 0, 0},
    {"--max-new-tokens", NULL, FX_OPT_INT, RC(max_new_tokens), "64", "e2e generation: tokens generated at most per MR (gsm8k: per answer, default 256)", 0, 0},
    {"--agg", "--agg_type", FX_OPT_STR, RC(agg_name), "fedex", "fedex|fedit|ffa|fedex-vera|fedit-vera|ffa-vera|sorf-vera|fedex-sorf-vera|centralized (also ours|normal|ffa|ours_vera|normal_vera|ffa_vera|sorf_vera|ours_sorf_vera)", 0, 0},
    {"--num-clients", "--num_clients", FX_OPT_INT, RC(num_clients), "3", "number of clients", 0, 0},
    {"--rounds", NULL, FX_OPT_INT, RC(rounds), "50", "federated rounds", 0, 0},
    {"--local-epochs", "--local_epochs", FX_OPT_INT, RC(local_epochs), "3", "epochs over its shard each client trains per round", 0, 0},
    {"--lr", NULL, FX_OPT_REAL, RC(lr), "1e-3", "peak learning rate (AdamW)", 0, 0},
    {"--weight-decay", "--weight_decay", FX_OPT_REAL, RC(weight_decay), "0.01", "AdamW decoupled weight decay", 0, 0},
    {"--batch-size", "--batch_size", FX_OPT_INT, RC(batch_size), "128", "local batch size", 0, 0},
    {"--micro-batch", NULL, FX_OPT_INT, RC(micro_batch), "32", "rows per forward/backward (gradients accumulate to --batch-size; 0: whole batch)", 0, 0},
    {"--eval-batch", NULL, FX_OPT_INT, RC(eval_batch), "64", "rows per evaluation batch", 0, 0},
    {"--max-seq-length", "--max_seq_length", FX_OPT_INT, RC(max_len), "128", "truncate token sequences to this length", 0, 0},
    {"--lora-r", "--lora_r", FX_OPT_INT, RC(lora_r), "4", "LoRA rank", 0, 0},
    {"--lora-alpha", "--lora_alpha", FX_OPT_REAL, RC(lora_alpha), "8", "LoRA alpha (scale alpha/r)", 0, 0},
    {"--lora-dropout", "--lora_dropout", FX_OPT_REAL, RC(lora_dropout), "0.1", "dropout on the adapter input", 0, 0},
    {"--rslora", NULL, FX_OPT_FLAG, RC(rslora), NULL, "rank-stabilised scale alpha/sqrt(r)", 0, 0},
    {"--vera-r", "--vera_r", FX_OPT_INT, RC(vera_r), "256", "VeRA rank", 0, 0},
    {"--d-initial", "--d_initial", FX_OPT_REAL, RC(d_initial), "0.1", "VeRA lambda_d initial value (SORF-VeRA: the scale s)", 0, 0},
    {"--vera-dropout", "--vera_dropout", FX_OPT_REAL, RC(vera_dropout), "0", "dropout on a VeRA adapter's input (PEFT's vera_dropout)", 0, 0},
    {"--projection-prng-key", "--projection_prng_key", FX_OPT_SEED, RC(projection_prng_key), "0", "seed of VeRA's shared projections, drawn as PEFT draws them (0 to 4294967295)", 0, 0},
    {"--save-projection", "--save_projection", FX_OPT_STR, RC(save_projection), "true", "true: vera_A and vera_B are saved in the adapter; false: PEFT redraws them from projection_prng_key", 0, 0},
    {"--vera-scale", NULL, FX_OPT_STR, RC(vera_scale), "1", "factor on the VeRA residual: 1 (exact), lr or alpha/r (the VeRA fork's, not exact: the aggregation error shows by how much)", 0, 0},
    {"--vera_scale", NULL, FX_OPT_FLAG, RC(fork_vera_scale), NULL, "the VeRA fork's flag: --vera-scale alpha/r", 0, 0},
    {"--rsvera", NULL, FX_OPT_FLAG, RC(rsvera), NULL, "--vera-scale alpha/r uses alpha/sqrt(r) (the VeRA fork's RSVeRA scale)", 0, 0},
    {"--vera", NULL, FX_OPT_FLAG, RC(vera), NULL, "VeRA adapters: --agg fedex, fedit, ffa (ours, normal, ffa) become fedex-vera, fedit-vera, ffa-vera", 0, 0},
    {"--r", NULL, FX_OPT_INT, RC(r_any), "0", "rank of the method's adapter (the VeRA fork's --r: --lora-r or --vera-r; 0: those)", 0, 0},
    {"--sorf-seed", "--sorf_seed", FX_OPT_SEED, RC(sorf_seed), "42", "seed of SORF-VeRA's orthonormal mixer S (its signs and permutations)", 0, 0},
    {"--sorf-refit", NULL, FX_OPT_STR, RC(sorf_refit), "svd", "how SORF-VeRA's server refits b, s, theta: svd (the VeRA fork's, from the mean dW) | polar (b kept, the mean Lambda_d's nearest scaled rotation)", 0, 0},
    {"--parallel_clients", NULL, FX_OPT_FLAG, RC(parallel_clients), NULL, "accepted: fedex's clients always run in parallel, one process each", 0, 0},
    {"--server_gpu", NULL, FX_OPT_INT, RC(fork_server_gpu), "-1", "--server-gpu with --device cuda; on the CPU accepted and ignored, as the VeRA fork does without CUDA", 0, 0},
    {"--client_gpus", NULL, FX_OPT_STR, RC(fork_client_gpus), NULL, "--client-gpus with --device cuda; on the CPU accepted and ignored, as the VeRA fork does without CUDA", 0, 0},
    {"--fan_in_fan_out", NULL, FX_OPT_STR, RC(fan_in_fan_out), "false", "PEFT's fan_in_fan_out: accepted; fedex takes it from the model's layers, as PEFT resets it (true for GPT-2's Conv1D, false for nn.Linear)", 0, 0},
    {"--bias", NULL, FX_OPT_STR, RC(bias), "none", "PEFT's bias: none (fedex trains no biases of the base); all and vera_only are refused", 0, 0},
    {"--modules_to_save", NULL, FX_OPT_STR, RC(modules_to_save), NULL, "PEFT's modules_to_save: classifier (the head, always trained and saved); others are refused", 0, 0},
    {"--init_weights", NULL, FX_OPT_STR, RC(init_weights), "true", "PEFT's init_weights: true (lambda_b = 0, lambda_d = d_initial); false is refused", 0, 0},
    {"--layers_to_transform", NULL, FX_OPT_STR, RC(layers_to_transform), NULL, "PEFT's layers_to_transform: None (fedex adapts every layer); a list is refused", 0, 0},
    {"--layers_pattern", NULL, FX_OPT_STR, RC(layers_pattern), NULL, "PEFT's layers_pattern: None; a pattern is refused", 0, 0},
    {"--warmup-ratio", "--warmup_ratio", FX_OPT_REAL, RC(warmup_ratio), "0.06", "linear warmup share of each round's steps (restarted every round)", 0, 0},
    {"--label-smoothing", "--label_smoothing_factor", FX_OPT_REAL, RC(label_smoothing), "0", "LM loss label smoothing eps: (1-eps) nll + eps mean over the vocabulary of -log p (e2e: 0.1)", 0, 0},
    {"--max-grad-norm", "--max_grad_norm", FX_OPT_REAL, RC(max_grad_norm), "0", "clip each step's gradient to this total norm (0: no clipping; e2e: 1.0)", 0, 0},
    {"--seed", NULL, FX_OPT_SEED, RC(seed), "42", "seed of splits, initialisation, shuffling and dropout", 0, 0},
    {"--split", NULL, FX_OPT_STR, RC(split), "iid", "iid | dirichlet:ALPHA (label-skewed)", 0, 0},
    {"--weighted", NULL, FX_OPT_FLAG, RC(weighted), NULL, "weight clients by sample count (the paper uses a plain mean)", 0, 0},
    {"--targets", NULL, FX_OPT_STR, RC(targets), "query,value", "adapted layers: query,key,value,attention.output.dense,intermediate.dense,output.dense", 0, 0},
    {"--residual", NULL, FX_OPT_STR, RC(residual), "auto", "how the FedEx residual travels: auto (each layer in the smaller form) | factored | dense", 0, 0},
    {"--clients-per-round", NULL, FX_OPT_INT, RC(clients_per_round), "0", "clients sampled (with the seed) to train each round, aggregated over them (0: all)", 0, 0},
    {"--transport", NULL, FX_OPT_STR, RC(transport), "shm", "shm (forked clients on this machine) | mpi (ranks of `mpirun -np K fedex train ...`: rank 0 the server, the others clients)", 0, 0},
    {"--out", "--output_dir", FX_OPT_STR, RC(out), NULL, "write metrics.jsonl, config.json, adapter, residual and checkpoints here", 0, 0},
    {"--resume", NULL, FX_OPT_STR, RC(resume), NULL, "continue the run saved in this folder", 0, 0},
    {"--overwrite", NULL, FX_OPT_FLAG, RC(overwrite), NULL, "replace the run saved in --out (it stays resumable until this one's first round is saved)", 0, 0},
    {"--threads", NULL, FX_OPT_INT, RC(threads), "0", "CPU threads in all, divided among parallel clients (0: all cores)", 0, 0},
    {"--strict", NULL, FX_OPT_FLAG, RC(strict), NULL, "stop when a client dies (default: finish the round over the survivors)", 0, 0},
    {"--client-timeout", NULL, FX_OPT_REAL, RC(client_timeout), "900", "seconds a client may go without finishing a step before it is counted as dead (stopped or stuck) and killed", 0, 0},
    {"--save-clients", NULL, FX_OPT_FLAG, RC(save_clients), NULL, "also write each client's adapter and head every round", 0, 0},
    {"--device", NULL, FX_OPT_STR, RC(device), "cpu", "cpu | cuda", 0, 0},
    {"--precision", NULL, FX_OPT_STR, RC(precision), NULL, "cuda: matrix products fp32 | tf32 | bf16 (default bf16); cpu: fp32 | bf16 (default fp32: bf16 holds the frozen base in bf16)", 0, 0},
    {"--client-gpus", NULL, FX_OPT_STR, RC(client_gpus), NULL, "GPU of each client, e.g. 0,0,1 (default: all on GPU 0)", 0, 0},
    {"--server-gpu", NULL, FX_OPT_INT, RC(server_gpu), "-1", "GPU for the server's evaluation (-1: CPU)", 0, 0},
};

_Static_assert(sizeof train_opts / sizeof train_opts[0] <= FX_SETTINGS_MAX, "FX_SETTINGS_MAX is too small");

const fx_cmdline fx_train_cmdline = {
    "train", "[--model DIR --task T --data DIR] [options]",
    "\nFederated fine-tuning: forked clients train adapters on their shards, the server aggregates\n"
    "(FedEx: exactly, with the residual folded into the frozen weights) and evaluates on dev.\n"
    "Without --model it runs the embedded demo model on the built-in synthetic task.\n",
    sizeof(fx_settings), train_opts, (int)(sizeof train_opts / sizeof train_opts[0]), 0, 0, NULL};

int fx_settings_opt(const char *name) { return fx_opts_find(&fx_train_cmdline, name); }

/* Without --data: ./data/glue or ./data when it holds TASK's folder (where the reference code's forks keep
 * their GLUE copy), or NULL. */
static const char *default_data(const char *task) {
    const fx_task *t = fx_task_find(task);
    static const char *dirs[] = {"data/glue", "data"};
    char path[512];
    for (int i = 0; t && t->dir && i < 2; i++) {
        snprintf(path, sizeof path, "%s/%s/train.tsv", dirs[i], t->dir);
        if (access(path, R_OK) == 0) return dirs[i];
    }
    return NULL;
}

/* Defaults that differ by task. E2E takes the reference's GPT-2 recipe (the LoRA paper's setup): r 4,
 * alpha 32, dropout 0.1, c_attn and c_proj adapted, batch 8, AdamW with weight decay 0.01 (eps 1e-8 is
 * fx_adamw_update's), a linear schedule with 10% warmup restarted every round, 3 clients, 5 local epochs,
 * sequences up to 512 tokens, label smoothing 0.1 and gradient clipping at 1.0. Its learning rate stays
 * the table's 1e-3: the reference passes --lr to a trainer that ignores it, so 1e-3 is what it ran. */
static const struct { const char *task, *opt, *value; } task_defaults[] = {
    {"e2e", "--lora-r", "4"}, {"e2e", "--lora-alpha", "32"}, {"e2e", "--lora-dropout", "0.1"},
    {"e2e", "--targets", "c_attn,c_proj"}, {"e2e", "--batch-size", "8"}, {"e2e", "--micro-batch", "8"},
    {"e2e", "--weight-decay", "0.01"}, {"e2e", "--warmup-ratio", "0.1"}, {"e2e", "--num-clients", "3"},
    {"e2e", "--local-epochs", "5"}, {"e2e", "--lr", "1e-3"}, {"e2e", "--max-seq-length", "512"},
    {"e2e", "--label-smoothing", "0.1"}, {"e2e", "--max-grad-norm", "1.0"},
    /* GSM8K's and multiple choice's test metric every round; GSM8K's worked answers are long */
    {"gsm8k", "--eval-every", "1"}, {"gsm8k", "--max-new-tokens", "256"}, {"mc", "--eval-every", "1"},
};

int fx_settings_task_defaults(fx_settings *c, const int *set) {
    const fx_task *t = c->task ? fx_task_find(c->task) : NULL;
    int changed = 0;
    for (size_t i = 0; t && i < sizeof task_defaults / sizeof task_defaults[0]; i++) {
        if (strcmp(task_defaults[i].task, t->name)) continue;
        int k = fx_settings_opt(task_defaults[i].opt);
        if (k < 0) { fx_seterr("task default for unknown option %s", task_defaults[i].opt); return -1; }
        if (set[k]) continue;
        if (set_value(&train_opts[k], c, task_defaults[i].value) != 0) return -1;
        changed++;
    }
    return changed;
}

/* A PEFT boolean as the VeRA fork passes it ("True", "False"; argparse's type=bool would read any
 * non-empty string as true, fedex reads the word): 1, 0, or -1. */
static int peft_bool(const char *v) {
    if (!strcasecmp(v, "true") || !strcmp(v, "1")) return 1;
    if (!strcasecmp(v, "false") || !strcmp(v, "0")) return 0;
    return -1;
}
static int unset_str(const char *v) { return !v || !*v || !strcasecmp(v, "none") || !strcmp(v, "null"); }

/* What the fork's spellings mean, applied to settings already checked: the same on the command line
 * and on a run's saved settings (which keep the spellings as given, so that export, a resumed run and
 * an MPI client build the model the run trained). Applying it twice changes nothing. */
static void fork_meaning(fx_settings *c) {
    if (c->vera) {
        static const fx_agg_method from[] = {FX_AGG_FEDEX, FX_AGG_FEDIT, FX_AGG_FFA},
                                   to[] = {FX_AGG_FEDEX_VERA, FX_AGG_FEDIT_VERA, FX_AGG_FFA_VERA};
        for (int i = 0; i < 3; i++)
            if (c->agg == from[i]) c->agg = to[i];
    }
    if (c->fork_vera_scale) c->vera_scale = "alpha/r";
    if (c->r_any > 0) {
        if (fx_agg_is_vera(c->agg) || fx_agg_is_sorf(c->agg)) c->vera_r = c->r_any;
        else c->lora_r = c->r_any;
    }
}

/* The VeRA fork's and PEFT's spellings: --vera turns a LoRA method into its VeRA twin, --r is the rank of
 * whichever adapter the method trains, --vera_scale is --vera-scale alpha/r, and PEFT's pass-through
 * settings are honoured where fedex has the setting and refused by name where it has not. */
static int fork_options(fx_settings *c, const int *set) {
#define WAS_SET(name) (set[fx_settings_opt(name)])
    if (c->vera && c->agg == FX_AGG_CENTRAL) { fx_seterr("--vera: --agg centralized trains LoRA only"); return -1; }
    if (c->fork_vera_scale && WAS_SET("--vera-scale") && strcmp(c->vera_scale, "alpha/r")) {
        fx_seterr("--vera_scale means --vera-scale alpha/r, but --vera-scale %s was given", c->vera_scale);
        return -1;
    }
    if (WAS_SET("--r")) {
        if (c->r_any < 1 || c->r_any > 65536) { fx_seterr("--r must be between 1 and 65536"); return -1; }
        if (WAS_SET("--lora-r") || WAS_SET("--vera-r")) { fx_seterr("--r is --lora-r or --vera-r: give one of them"); return -1; }
    }
    fork_meaning(c);
    int b;
    if ((b = peft_bool(c->save_projection)) < 0) { fx_seterr("--save-projection must be true or false, not '%s'", c->save_projection); return -1; }
    if (peft_bool(c->fan_in_fan_out) < 0) { fx_seterr("--fan_in_fan_out must be true or false, not '%s'", c->fan_in_fan_out); return -1; }
    if ((b = peft_bool(c->init_weights)) != 1) {
        fx_seterr(b < 0 ? "--init_weights must be true or false, not '%s'"
                        : "--init_weights %s is not supported: adapters start as PEFT's init_weights=True starts them",
                  c->init_weights);
        return -1;
    }
    if (strcmp(c->bias, "none")) {
        fx_seterr("--bias %s is not supported: fedex trains no biases of the base model (bias none)", c->bias);
        return -1;
    }
    if (!unset_str(c->modules_to_save) && strcmp(c->modules_to_save, "classifier")) {
        fx_seterr("--modules_to_save %s is not supported: fedex trains and saves the classifier head "
                  "(modules_to_save classifier) and nothing else", c->modules_to_save);
        return -1;
    }
    if (!unset_str(c->layers_to_transform)) {
        fx_seterr("--layers_to_transform %s is not supported: fedex adapts every layer", c->layers_to_transform);
        return -1;
    }
    if (!unset_str(c->layers_pattern)) {
        fx_seterr("--layers_pattern %s is not supported: fedex adapts every layer", c->layers_pattern);
        return -1;
    }
    if (c->projection_prng_key > 0xffffffffLL) {
        fx_seterr("--projection-prng-key must be in [0, 4294967295] (torch's generator keeps 32 bits)");
        return -1;
    }
    if (strcmp(c->vera_scale, "1") && strcmp(c->vera_scale, "lr") && strcmp(c->vera_scale, "alpha/r")) {
        fx_seterr("--vera-scale must be 1, lr or alpha/r, not '%s'", c->vera_scale);
        return -1;
    }
    if (!strcmp(c->device, "cuda")) {
        if (WAS_SET("--server_gpu")) {
            if (WAS_SET("--server-gpu")) { fx_seterr("--server_gpu and --server-gpu: give one"); return -1; }
            c->server_gpu = c->fork_server_gpu;
        }
        if (WAS_SET("--client_gpus")) {
            if (WAS_SET("--client-gpus")) { fx_seterr("--client_gpus and --client-gpus: give one"); return -1; }
            c->client_gpus = c->fork_client_gpus;
        }
    }
    return 0;
#undef WAS_SET
}

void fx_settings_notes(const fx_settings *c, const int *set, FILE *f) {
    if (set[fx_settings_opt("--fan_in_fan_out")])
        fprintf(f, "fedex: --fan_in_fan_out: taken from the model's layers (Conv1D or nn.Linear), as PEFT resets it\n");
    if (c->parallel_clients) fprintf(f, "fedex: --parallel_clients: fedex's clients always run in parallel, one process each\n");
    if (strcmp(c->device, "cuda") && (set[fx_settings_opt("--server_gpu")] || set[fx_settings_opt("--client_gpus")]))
        fprintf(f, "fedex: --server_gpu/--client_gpus: this run is on the CPU, so they are ignored (as the VeRA fork "
                "ignores them without CUDA); --device cuda places the clients on GPUs\n");
}

/* Ranges and contradictions: refuse what cannot be meant, with the reason. */
int fx_settings_check(fx_settings *c, const int *set) {
#define WAS_SET(name) (set[fx_settings_opt(name)])
    if (!c->resume && fx_settings_task_defaults(c, set) < 0) return -1;
    if (!c->precision) c->precision = c->device && !strcmp(c->device, "cuda") ? "bf16" : "fp32"; /* each device's own */
    if (fx_agg_parse(c->agg_name, &c->agg) != 0) return -1;
    if (fork_options(c, set) != 0) return -1;
    const fx_task *task = c->task ? fx_task_find(c->task) : NULL;
    int lm = task ? task->lm : 0;
    int vera = fx_agg_is_vera(c->agg) || fx_agg_is_sorf(c->agg);
    struct { int bad; const char *msg; } rules[] = {
        {c->overwrite && !c->out, "--overwrite replaces the run saved in --out: give --out DIR (without --out nothing is saved)"},
        {c->num_clients < 1 || c->num_clients > 256, "--num-clients must be between 1 and 256"},
        {c->rounds < 1, "--rounds must be at least 1"},
        {c->local_epochs < 1, "--local-epochs must be at least 1"},
        {c->batch_size < 1, "--batch-size must be at least 1"},
        {c->micro_batch < 0, "--micro-batch must be 0 (whole batch) or more"},
        {c->eval_batch < 1, "--eval-batch must be at least 1"},
        {c->max_len < 4 || c->max_len > 4096, "--max-seq-length must be between 4 and 4096"},
        {!(c->lr > 0), "--lr must be positive"},
        {c->weight_decay < 0, "--weight-decay must be 0 or more"},
        {c->lora_r < 1 || c->lora_r > 4096, "--lora-r must be between 1 and 4096"},
        {c->vera_r < 1 || c->vera_r > 65536, "--vera-r must be between 1 and 65536"},
        {!(c->lora_alpha > 0), "--lora-alpha must be positive"},
        {c->lora_dropout < 0 || c->lora_dropout >= 1, "--lora-dropout must be in [0, 1)"},
        {c->warmup_ratio < 0 || c->warmup_ratio > 1, "--warmup-ratio must be in [0, 1]"},
        {c->threads < 0 || c->threads > 4096, "--threads must be between 0 (all cores) and 4096"},
        {!(c->client_timeout > 0), "--client-timeout must be a positive number of seconds"},
        {strcmp(c->residual, "auto") && strcmp(c->residual, "factored") && strcmp(c->residual, "dense"),
         "--residual must be auto, factored or dense"},
        {c->clients_per_round < 0 || c->clients_per_round > c->num_clients,
         "--clients-per-round must be between 1 and --num-clients (0: all)"},
        {strcmp(c->transport, "shm") && strcmp(c->transport, "mpi"), "--transport must be shm or mpi"},
        {strcmp(c->device, "cpu") && strcmp(c->device, "cuda"), "--device must be cpu or cuda"},
        {strcmp(c->precision, "fp32") && strcmp(c->precision, "tf32") && strcmp(c->precision, "bf16"),
         "--precision must be fp32, tf32 or bf16"},
        {!strcmp(c->device, "cpu") && !strcmp(c->precision, "tf32"), "--precision tf32 is a GPU mode (cpu: fp32 | bf16)"},
        {vera && (WAS_SET("--lora-r") || WAS_SET("--rslora") || WAS_SET("--lora-dropout")),
         "--lora-r, --lora-dropout and --rslora apply to LoRA; VeRA methods take --vera-r, --vera-dropout and --d-initial"},
        {vera && WAS_SET("--lora-alpha") && strcmp(c->vera_scale, "alpha/r"),
         "--lora-alpha applies to LoRA, and to VeRA only with --vera-scale alpha/r"},
        {!vera && (WAS_SET("--vera-r") || WAS_SET("--d-initial") || WAS_SET("--vera-dropout") ||
                   WAS_SET("--projection-prng-key") || WAS_SET("--vera-scale") || WAS_SET("--vera_scale") ||
                   WAS_SET("--rsvera") || WAS_SET("--save-projection")),
         "--vera-r, --vera-dropout, --d-initial, --projection-prng-key, --save-projection, --vera-scale and "
         "--rsvera apply to VeRA methods (--vera, or fedex-vera, fedit-vera, ffa-vera, sorf-vera, fedex-sorf-vera)"},
        {c->vera_dropout < 0 || c->vera_dropout >= 1, "--vera-dropout must be in [0, 1)"},
        {strcmp(c->vera_scale, "1") && !fx_agg_is_exact(c->agg),
         "--vera-scale scales the FedEx residual of fedex-vera or fedex-sorf-vera; this method has none"},
        {!fx_agg_is_sorf(c->agg) && (WAS_SET("--sorf-seed") || WAS_SET("--sorf-refit")),
         "--sorf-seed and --sorf-refit apply to sorf-vera and fedex-sorf-vera"},
        {strcmp(c->sorf_refit, "svd") && strcmp(c->sorf_refit, "polar"), "--sorf-refit must be svd or polar"},
        {fx_agg_is_sorf(c->agg) && strcmp(c->vera_scale, "1") , "--vera-scale applies to fedex-vera"},
        {c->agg == FX_AGG_CENTRAL && WAS_SET("--num-clients") && c->num_clients != 1,
         "--agg centralized trains one client on all the data; it takes no --num-clients"},
        {c->agg == FX_AGG_CENTRAL && WAS_SET("--split"), "--agg centralized does not split the data"},
        {!c->model && c->task && strcasecmp(c->task, "synthetic"),
         "--task needs --model: the embedded model trains only on the built-in synthetic task"},
        {c->model && !c->task, "--model needs --task"},
        {c->task && strcasecmp(c->task, "synthetic") && !c->data && (lm || !(c->data = default_data(c->task))),
         lm ? "--task e2e, instruct, gsm8k and mc need --data (e2e: the folder of devset.csv and testset_w_refs.csv; the others: of train.jsonl and dev.jsonl)"
            : "--task needs --data (the folder of GLUE task folders; without it, data/glue or data when they hold the task)"},
        {c->train_file && !lm, "--train-file applies to --task e2e, instruct, gsm8k and mc (GLUE reads DATA/TASK/train.tsv)"},
        {lm && lm != FX_LM_E2E && (WAS_SET("--test-file") || WAS_SET("--test-mrs") || WAS_SET("--num-beams") ||
                                   WAS_SET("--length-penalty") || WAS_SET("--early-stopping") ||
                                   WAS_SET("--no-repeat-ngram-size") || WAS_SET("--no-repeat-scope")),
         "--test-file, --test-mrs and the beam search's options apply to --task e2e (gsm8k generates greedily from "
         "the dev rows: --eval-rows, --max-new-tokens)"},
        {(!lm || lm == FX_LM_E2E) && (WAS_SET("--chat-template") || WAS_SET("--eval-rows")),
         "--chat-template and --eval-rows apply to --task instruct, gsm8k and mc"},
        {lm == FX_LM_INSTRUCT && WAS_SET("--max-new-tokens"), "--max-new-tokens applies to --task e2e and gsm8k"},
        {strcmp(c->chat_template, "auto") && strcmp(c->chat_template, "none"), "--chat-template must be auto or none"},
        {c->eval_rows < 0, "--eval-rows must be 0 (all) or more"},
        {!lm && (WAS_SET("--test-file") || WAS_SET("--eval-every") || WAS_SET("--test-mrs") || WAS_SET("--num-beams") ||
                 WAS_SET("--length-penalty") || WAS_SET("--early-stopping") || WAS_SET("--no-repeat-ngram-size") ||
                 WAS_SET("--no-repeat-scope") || WAS_SET("--max-new-tokens")),
         "--test-file, --eval-every, --test-mrs and the generation options apply to --task e2e"},
        {c->eval_every < -1, "--eval-every must be -1 (never), 0 (the last round) or a number of rounds"},
        {c->test_mrs < 0, "--test-mrs must be 0 (all) or more"},
        {c->num_beams < 1 || c->num_beams > 1024, "--num-beams must be between 1 and 1024"},
        {c->max_new_tokens < 1, "--max-new-tokens must be at least 1"},
        {c->no_repeat_ngram < 0, "--no-repeat-ngram-size must be 0 (off) or more"},
        {strcmp(c->early_stopping, "false") && strcmp(c->early_stopping, "true") && strcmp(c->early_stopping, "never"),
         "--early-stopping must be false, true or never"},
        {strcmp(c->no_repeat_scope, "generated") && strcmp(c->no_repeat_scope, "row"),
         "--no-repeat-scope must be generated or row"},
        {c->label_smoothing < 0 || c->label_smoothing >= 1, "--label-smoothing must be in [0, 1)"},
        {c->max_grad_norm < 0, "--max-grad-norm must be 0 (no clipping) or more"},
        {(WAS_SET("--client-gpus") || WAS_SET("--server-gpu")) && !strcmp(c->device, "cpu"),
         "--client-gpus and --server-gpu apply to --device cuda"},
    };
#undef WAS_SET
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++)
        if (rules[i].bad) { fx_seterr("%s", rules[i].msg); return -1; }
    if (strcmp(c->split, "iid") && strncmp(c->split, "dirichlet:", 10)) {
        fx_seterr("--split must be iid or dirichlet:ALPHA, not '%s'", c->split);
        return -1;
    }
    if (!strncmp(c->split, "dirichlet:", 10)) {
        char *end;
        double a = strtod(c->split + 10, &end);
        if (*end || end == c->split + 10 || !(a > 0)) {
            fx_seterr("--split dirichlet:ALPHA needs a positive ALPHA, not '%s'", c->split + 10);
            return -1;
        }
    }
    unsigned mask;
    if (fx_targets_parse(c->targets, &mask) != 0) return -1;
    if (c->agg == FX_AGG_CENTRAL) c->num_clients = 1;
    return 0;
}

/* ============================================================================================
 * What the settings imply: the adapter, the model's configuration
 * ============================================================================================ */

void fx_settings_adapter(const fx_settings *c, fx_adapter_cfg *a) {
    memset(a, 0, sizeof *a);
    int vera = fx_agg_is_vera(c->agg) || fx_agg_is_sorf(c->agg);
    a->kind = fx_agg_is_sorf(c->agg) ? FX_SORF : vera ? FX_VERA : FX_LORA;
    a->sorf_seed = (uint64_t)c->sorf_seed;
    fx_targets_parse(c->targets, &a->targets);
    a->r = vera ? c->vera_r : c->lora_r;
    a->alpha = (float)c->lora_alpha;
    a->rslora = c->rslora;
    a->dropout = (float)(vera ? c->vera_dropout : c->lora_dropout);
    a->proj_key = (uint32_t)c->projection_prng_key;
    a->skip_projection = peft_bool(c->save_projection) == 0;
    a->freeze_a = fx_agg_freezes(c->agg) && !vera;
    a->freeze_d = fx_agg_freezes(c->agg) && vera;
    a->d_initial = (float)c->d_initial;
    a->seed = (uint64_t)c->seed;
}

/* The VeRA fork's factor on the FedEx residual: its lr, or alpha/r (alpha/sqrt(r) with --rsvera); 1, the
 * exact residual, by default. */
float fx_settings_residual_scale(const fx_settings *c) {
    double r = c->vera_r;
    if (!strcmp(c->vera_scale, "lr")) return (float)c->lr;
    if (!strcmp(c->vera_scale, "alpha/r")) return (float)(c->lora_alpha / (c->rsvera ? sqrt(r) : r));
    return 1.0f;
}

/* The embedded model: a small RoBERTa with random weights for the built-in synthetic task, so a fresh
 * clone shows a real run without downloads. */
void fx_embedded_config(fx_config *c) {
    memset(c, 0, sizeof *c);
    c->vocab_size = 24; c->hidden = 32; c->layers = 2; c->heads = 4; c->intermediate = 64;
    c->max_positions = FX_SYNTH_LEN + 2; c->type_vocab_size = 1; c->pad_id = 1; c->num_labels = 2;
    c->layer_norm_eps = 1e-5f; c->hidden_dropout = 0.1f; c->attention_dropout = 0.1f;
    c->classifier_dropout = 0.1f; c->initializer_range = 0.02f;
}

int fx_settings_model(const fx_settings *c, fx_config *mc, const fx_task **task) {
    if (!c->model) {
        fx_embedded_config(mc);
        *task = fx_task_find("synthetic");
        return 0;
    }
    *task = fx_task_find(c->task);
    if (!*task) { fx_seterr("unknown task '%s'", c->task); return -1; }
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", c->model);
    if (fx_config_load(path, mc) != 0) return -1;
    if (!(*task)->lm) mc->num_labels = (*task)->num_labels; /* a language model keeps its config's */
    mc->label_smoothing = (float)c->label_smoothing;         /* every client's model carries them */
    mc->max_grad_norm = (float)c->max_grad_norm;
    mc->precision = fx_settings_precision(c);
    return 0;
}

int fx_settings_precision(const fx_settings *c) {
    int cpu = !c->device || !strcmp(c->device, "cpu");
    return cpu && c->precision && !strcmp(c->precision, "bf16") ? FX_PREC_BF16 : FX_PREC_FP32;
}

/* ============================================================================================
 * The settings file (DIR/config.json): written when a run starts, read by --resume and export
 * ============================================================================================ */

/* Whether option O's field P holds the value D, its default's. */
static int at_default(const fx_opt *o, const void *p, const void *d) {
    switch (o->kind) {
    case FX_OPT_INT: case FX_OPT_FLAG: return *(const int *)p == *(const int *)d;
    case FX_OPT_SEED: return *(const long long *)p == *(const long long *)d;
    case FX_OPT_REAL: return *(const double *)p == *(const double *)d;
    case FX_OPT_STR: {
        const char *a = *(const char *const *)p, *b = *(const char *const *)d;
        return a == b || (a && b && !strcmp(a, b));
    }
    }
    return 0;
}

/* The saved settings as JSON members; without --rounds when ID (what names the run). */
static void settings_members(FILE *f, const fx_settings *c, int id) {
    fx_settings defs;
    if (id) fx_opts_defaults(&fx_train_cmdline, &defs);
    for (int i = 0; i < fx_train_cmdline.nopt; i++) {
        const fx_opt *o = &train_opts[i];
        if (!strcmp(o->name, "--resume") || !strcmp(o->name, "--threads") || !strcmp(o->name, "--out") ||
            !strcmp(o->name, "--overwrite") || !strcmp(o->name, "--transport") || (id && !strcmp(o->name, "--rounds")))
            continue;
        const void *p = (const char *)c + o->off;
        /* What the test generation does changes no training: not part of the id. */
        static const char *const eval_only[] = {"--test-file", "--eval-every", "--test-mrs", "--num-beams",
            "--length-penalty", "--early-stopping", "--no-repeat-ngram-size", "--no-repeat-scope", "--max-new-tokens"};
        int skip = 0;
        for (size_t k = 0; id && k < sizeof eval_only / sizeof eval_only[0]; k++) skip |= !strcmp(o->name, eval_only[k]);
        if (skip) continue;
        /* Every option at its default stays out of the id, so that an option added later (whose default
         * is what runs before it did) leaves the ids of runs saved before it as they were. */
        if (id && at_default(o, p, (const char *)&defs + o->off)) continue;
        fprintf(f, ",\n  \"%s\": ", o->name + 2);
        switch (o->kind) {
        case FX_OPT_INT: fprintf(f, "%d", *(const int *)p); break;
        case FX_OPT_FLAG: fprintf(f, "%s", *(const int *)p ? "true" : "false"); break;
        case FX_OPT_SEED: fprintf(f, "%lld", *(const long long *)p); break;
        case FX_OPT_REAL: fx_json_num(f, *(const double *)p); break;
        case FX_OPT_STR:
            if (*(const char *const *)p) { char *q = fx_json_quote(*(const char *const *)p); fputs(q, f); free(q); }
            else fputs("null", f);
            break;
        }
    }
}

void fx_settings_id(const fx_settings *c, char *out, size_t cap) {
    char *buf = NULL; size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) fx_die("open_memstream: %s", strerror(errno));
    settings_members(f, c, 1);
    fclose(f);
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (size_t i = 0; i < len; i++) h = (h ^ (unsigned char)buf[i]) * 0x100000001b3ULL;
    free(buf);
    snprintf(out, cap, "%016llx", (unsigned long long)h);
}

char *fx_settings_text(const fx_settings *c, size_t *len) {
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    if (!f) fx_die("open_memstream: %s", strerror(errno));
    fprintf(f, "{\n  \"fedex_run\": 1");
    settings_members(f, c, 0);
    fprintf(f, "\n}\n");
    fclose(f);
    return buf;
}

int fx_settings_write(const fx_settings *c, const char *dir) {
    size_t len;
    char *buf = fx_settings_text(c, &len), path[4096];
    snprintf(path, sizeof path, "%s/" FX_SETTINGS_FILE, dir);
    int rc = fx_write_file_atomic(path, buf, len);
    free(buf);
    return rc;
}

static int settings_from_json(const fx_json *j, const char *path, fx_settings *c);

int fx_settings_find(const char *dir, char *path, size_t cap) {
    snprintf(path, cap, "%s/" FX_SETTINGS_FILE, dir);
    if (access(path, F_OK) == 0) return 1;
    snprintf(path, cap, "%s/config.json", dir); /* runs saved before the settings had their own name */
    fx_json j;
    if (access(path, F_OK) != 0 || fx_json_load(path, &j) != 0) return 0;
    int run = fx_json_get(&j, "fedex_run") != NULL;
    fx_json_free(&j);
    return run;
}

int fx_settings_read(const char *dir, fx_settings *c, fx_json *j) {
    char path[4096];
    if (!fx_settings_find(dir, path, sizeof path)) snprintf(path, sizeof path, "%s/" FX_SETTINGS_FILE, dir);
    if (fx_json_load(path, j) != 0) return -1;
    return settings_from_json(j, path, c);
}

int fx_settings_parse(const char *text, size_t len, const char *label, fx_settings *c, fx_json *j) {
    if (fx_json_parse(text, len, j) != 0) { fx_seterr("%s: %s", label, fx_err()); return -1; }
    return settings_from_json(j, label, c);
}

static int settings_from_json(const fx_json *j, const char *path, fx_settings *c) {
    if (!fx_json_get(j, "fedex_run")) { fx_seterr("%s: not the settings of a fedex run", path); return -1; }
    if (fx_opts_defaults(&fx_train_cmdline, c) != 0) return -1;
    for (int i = 0; i < fx_train_cmdline.nopt; i++) {
        const fx_opt *o = &train_opts[i];
        const fx_json *v = fx_json_get(j, o->name + 2);
        if (!v) continue;
        void *p = (char *)c + o->off;
        int ok = 1;
        switch (o->kind) {
        case FX_OPT_INT: ok = v->type == FX_JNUM && v->is_int; if (ok) *(int *)p = (int)v->inum; break;
        case FX_OPT_SEED: ok = v->type == FX_JNUM && v->is_int; if (ok) *(long long *)p = v->inum; break;
        case FX_OPT_FLAG: ok = v->type == FX_JBOOL; if (ok) *(int *)p = v->boolean; break;
        case FX_OPT_REAL: ok = v->type == FX_JNUM; if (ok) *(double *)p = v->num; break;
        case FX_OPT_STR:
            ok = v->type == FX_JSTR || v->type == FX_JNULL;
            if (ok) *(const char **)p = v->type == FX_JSTR ? v->str : NULL;
            break;
        }
        if (!ok) { fx_seterr("%s: \"%s\" has the wrong type", path, o->name + 2); return -1; }
    }
    if (fx_agg_parse(c->agg_name, &c->agg) != 0) return -1;
    fork_meaning(c);
    return 0;
}
