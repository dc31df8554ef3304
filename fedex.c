/* fedex.c: the command line, one function per command, each parsed by settings.c's option parser from a
 * table. It reads arguments, calls the library and reports; the numeric work, the run's settings, the
 * server, the clients and the transport all live in their own files. Usage errors exit 2, other
 * failures 1. */
#include "fedex.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <dirent.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Parses a command's arguments; on a usage error prints it and returns 2, on --help prints the
 * generated help and returns 0; -1 when the command should go on. */
static int parse_or_exit(const fx_cmdline *cl, int argc, char **argv, void *dst, int *set, const char **pos,
                         int *npos) {
    if (fx_opts_wants_help(argc, argv)) { fx_opts_help(cl, stdout); return 0; }
    if (fx_opts_parse(cl, argc, argv, dst, set, pos, npos) != 0) {
        fprintf(stderr, "fedex %s: %s\n", cl->cmd, fx_err());
        return 2;
    }
    return -1;
}

/* A usage error found after parsing: exit status 2. */
static int usage_error(const char *cmd, const char *msg) {
    fprintf(stderr, "fedex %s: %s (see `fedex help %s`)\n", cmd, msg, cmd);
    return 2;
}

#define OPT(s, f) offsetof(s, f)
/* A command's line from its settings struct S and option table T. */
#define CMDLINE(name, synopsis, about, S, T) {name, synopsis, about, sizeof(S), T, (int)(sizeof T / sizeof T[0]), 0, 0, NULL}

/* ============================================================================================
 * inspect
 * ============================================================================================ */

static const fx_cmdline inspect_cl = {
    "inspect", "FILE",
    "Lists the tensors of the safetensors file FILE (- reads it from standard input), after checking its\n"
    "header against the file: one line per tensor (name, dtype, shape, bytes), then the totals and the\n"
    "file's metadata.\n",
    0, NULL, 0, 1, 1, "FILE"};

static int cmd_inspect(int argc, char **argv) {
    const char *file = NULL;
    int set[1], np, rc = parse_or_exit(&inspect_cl, argc, argv, NULL, set, &file, &np);
    if (rc >= 0) return rc;
    fx_st_file f;
    if (fx_st_open(file, &f) != 0) fx_die("%s", fx_err());

    /* Column widths from the widest entry, so that the listing reads as a table. */
    char shape[160];
    int wname = 6, wshape = 5, wbytes = 5;
    size_t params = 0;
    for (int i = 0; i < f.n; i++) {
        const fx_st_tensor *t = &f.t[i];
        int l = (int)strlen(t->name), s = (int)strlen(fx_shape_str(t->shape, t->ndim, shape, sizeof shape));
        int b = snprintf(NULL, 0, "%zu", t->end - t->begin);
        if (l > wname) wname = l;
        if (s > wshape) wshape = s;
        if (b > wbytes) wbytes = b;
        params += fx_st_numel(t); /* cannot overflow: the reader checked every tensor fits the file */
    }
    printf("%-*s  %-5s  %-*s  %*s\n", wname, "tensor", "dtype", wshape, "shape", wbytes, "bytes");
    for (int i = 0; i < f.n; i++) {
        const fx_st_tensor *t = &f.t[i];
        printf("%-*s  %-5s  %-*s  %*zu\n", wname, t->name, fx_dtype_name(t->dtype), wshape,
               fx_shape_str(t->shape, t->ndim, shape, sizeof shape), wbytes, t->end - t->begin);
    }
    printf("%d tensors, %zu parameters, %zu bytes\n", f.n, params, f.data_len);
    for (int i = 0; i < f.nmeta; i++) printf("metadata %s = %s\n", f.meta_keys[i], f.meta_vals[i]);
    fx_st_close(&f);
    return 0;
}

/* ============================================================================================
 * tokenize
 * ============================================================================================ */

typedef struct { const char *model, *task, *file; int max_len; } tokenize_opts;
static const fx_opt tokenize_opt[] = {
    {"--model", NULL, FX_OPT_STR, OPT(tokenize_opts, model), NULL, "folder with tokenizer.json, or vocab.json and merges.txt (required)", 0, 0},
    {"--task", NULL, FX_OPT_STR, OPT(tokenize_opts, task), NULL, "GLUE task of --file", 0, 0},
    {"--file", NULL, FX_OPT_STR, OPT(tokenize_opts, file), NULL, "a GLUE TSV file: one line of ids per row", 0, 0},
    {"--max-length", NULL, FX_OPT_INT, OPT(tokenize_opts, max_len), "128", "truncate longest_first to N ids (0: no truncation)", 0, 1000000},
};
static const fx_cmdline tokenize_cl = {
    "tokenize", "--model DIR [--max-length N] TEXT [TEXT2]\n       fedex tokenize --model DIR --task TASK --file F.tsv [--max-length N]",
    "Prints the token ids of TEXT (or of the pair TEXT TEXT2) on one line, space separated, as Hugging\n"
    "Face's tokenizer of the vocabulary gives them: RoBERTa's <s> TEXT </s> (<s> TEXT </s></s> TEXT2 </s>),\n"
    "GPT-2's without any special token (<|endoftext|> written in a text is its id), a tokenizer.json's\n"
    "post-processor's (Llama-3: <|begin_of_text|> TEXT). With --file, one such\n"
    "line per row of a GLUE file, in file order.\n",
    sizeof(tokenize_opts), tokenize_opt, 4, 0, 2, "texts"};

/* Appends " ID" (no space before the first) for each id, then a newline, to stdout. */
static void print_ids(const int32_t *ids, int n) {
    char buf[16];
    for (int i = 0; i < n; i++) {
        int k = sizeof buf;
        uint32_t v = (uint32_t)ids[i]; /* ids are never negative */
        do { buf[--k] = (char)('0' + v % 10); v /= 10; } while (v);
        if (i) buf[--k] = ' ';
        fwrite(buf + k, 1, sizeof buf - (size_t)k, stdout);
    }
    putchar('\n');
}

static int cmd_tokenize(int argc, char **argv) {
    tokenize_opts o;
    const char *text[2] = {NULL, NULL};
    int set[4], ntext, rc = parse_or_exit(&tokenize_cl, argc, argv, &o, set, text, &ntext);
    if (rc >= 0) return rc;
    if (!o.model) return usage_error("tokenize", "--model DIR is required");
    if (o.file ? (!o.task || ntext) : (o.task || !ntext))
        return usage_error("tokenize", "give either TEXT [TEXT2], or --task and --file");
    fx_tokenizer *tok = fx_tok_load(o.model);
    if (!tok) fx_die("%s", fx_err());
    const fx_text_template *tpl = fx_tok_template(tok);
    int room = tpl->bos + tpl->eos_a + ((o.file ? 0 : ntext == 2) ? tpl->eos_b_lead + tpl->bos_b + tpl->eos_b : 0);
    if (o.max_len > 0 && o.max_len < room) {
        fprintf(stderr, "fedex tokenize: --max-length %d leaves no room for %d special tokens\n", o.max_len, room);
        fx_tok_free(tok);
        return 2;
    }

    int32_t *ids = NULL;
    int n = 0, cap = 0;
    if (!o.file) {
        if (fx_tok_encode_seq(tok, text[0], text[1], o.max_len, &ids, &n, &cap) != 0)
            fx_die("tokenize: text: %s", fx_err());
        print_ids(ids, n);
    } else {
        const fx_task *t = fx_task_find(o.task);
        if (!t) { fx_tok_free(tok); fprintf(stderr, "fedex tokenize: unknown task '%s'\n", o.task); return 2; }
        fx_rows rows;
        if (fx_glue_read(t, o.file, &rows) != 0) fx_die("%s", fx_err());
        int pair_room = room + (t->col_b >= 0 ? tpl->eos_b_lead + tpl->bos_b + tpl->eos_b : 0);
        if (o.max_len > 0 && o.max_len < pair_room)
            fx_die("tokenize: --max-length %d leaves no room for a pair's %d special tokens", o.max_len, pair_room);
        for (int r = 0; r < rows.n; r++) {
            n = 0;
            if (fx_tok_encode_seq(tok, rows.a[r], rows.b ? rows.b[r] : NULL, o.max_len, &ids, &n, &cap) != 0)
                fx_die("%s:%d: %s", o.file, rows.line[r], fx_err());
            print_ids(ids, n);
        }
        fx_rows_free(&rows);
    }
    free(ids);
    fx_tok_free(tok);
    if (fflush(stdout) != 0 || ferror(stdout)) fx_die("tokenize: cannot write the ids to stdout");
    return 0;
}

/* ============================================================================================
 * init
 * ============================================================================================ */

/* FILE's folder (FILE itself names a file in it), into BUF. */
static void dir_of(const char *file, char *buf, size_t cap) {
    const char *slash = strrchr(file, '/');
    if (!slash) snprintf(buf, cap, ".");
    else snprintf(buf, cap, "%.*s", slash == file ? 1 : (int)(slash - file), file);
}

/* Copies the tokenizer's files from FROM to TO (those present), so TO is a complete model folder:
 * tokenizer.json, vocab.json, merges.txt; and beside a tokenizer.json the tokenizer_config.json and
 * special_tokens_map.json that name its bos and eos (they replace the family's stand-ins). Returns how
 * many it copied, -1 on error. */
static int copy_tokenizer(const char *from, const char *to) {
    static const char *const names[5] = {"tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                                         "special_tokens_map.json"};
    int copied = 0, json = 0;
    for (int k = 0; k < 5; k++) {
        char src[4096], dst[4096], *data;
        size_t len;
        if ((size_t)snprintf(src, sizeof src, "%s/%s", from, names[k]) >= sizeof src ||
            (size_t)snprintf(dst, sizeof dst, "%s/%s", to, names[k]) >= sizeof dst) {
            fx_seterr("path too long: %s", to);
            return -1;
        }
        if (access(src, F_OK) != 0 || (k >= 3 && !json)) continue; /* absent: nothing to copy; unreadable: an error below */
        json |= k == 0;
        int rc = fx_read_file(src, &data, &len) == 0 ? fx_write_file_atomic(dst, data, len) : -1;
        if (rc == 0) free(data);
        if (rc != 0) return -1;
        copied++;
    }
    return copied;
}

typedef struct { const char *config, *out; long long seed; int labels; } init_opts;
static const fx_opt init_opt[] = {
    {"--config", NULL, FX_OPT_STR, OPT(init_opts, config), NULL, "a Hugging Face config.json (required)", 0, 0},
    {"--out", NULL, FX_OPT_STR, OPT(init_opts, out), NULL, "the folder to write (required)", 0, 0},
    {"--seed", NULL, FX_OPT_SEED, OPT(init_opts, seed), "0", "the random stream: the same seed gives the same weights", 0, 0},
    {"--labels", NULL, FX_OPT_INT, OPT(init_opts, labels), NULL, "the classifier's labels (default: the config's id2label, else 2; 1 = regression)", 1, 1000},
};
static const fx_cmdline init_cl = CMDLINE("init", "--config FILE --out DIR [--seed S] [--labels N]",
    "Writes a randomly initialised RoBERTa of FILE's shapes as a Hugging Face folder: DIR/model.safetensors\n"
    "(weights drawn as Hugging Face initialises them: normal(0, initializer_range), LayerNorm 1 and 0, zero\n"
    "biases), DIR/config.json, and the tokenizer's files (tokenizer.json, or vocab.json and merges.txt)\n"
    "copied from beside FILE when they are there.\n",
    init_opts, init_opt);

/* The files of folder TMP (no subfolders), then TMP itself, removed. */
static void remove_flat(const char *tmp) {
    DIR *d = opendir(tmp);
    for (struct dirent *e; d && (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[8192];
        snprintf(p, sizeof p, "%s/%s", tmp, e->d_name);
        unlink(p);
    }
    if (d) closedir(d);
    rmdir(tmp);
}

/* Every file of the folder TMP into OUT, then TMP removed: TMP beside an absent OUT becomes it (one
 * rename); TMP INSIDE OUT (which exists) is emptied into it, a rename per file once no name is found to
 * land on a folder, so that a failure leaves OUT as it was. 0, or -1 with fx_err() (TMP left for the
 * caller to remove). */
static int move_into(const char *tmp, const char *out, int inside) {
    if (!inside && rename(tmp, out) == 0) return 0;
    struct stat st;
    if (stat(out, &st) != 0 || !S_ISDIR(st.st_mode)) { fx_seterr("%s: not a folder", out); return -1; }
    for (int pass = 0; pass < 2; pass++) {
        DIR *d = opendir(tmp);
        if (!d) { fx_seterr("%s: cannot open: %s", tmp, strerror(errno)); return -1; }
        for (struct dirent *e; (e = readdir(d));) {
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            char from[8192], to[8192];
            snprintf(from, sizeof from, "%s/%s", tmp, e->d_name);
            snprintf(to, sizeof to, "%s/%s", out, e->d_name);
            int bad = pass == 0 ? stat(to, &st) == 0 && S_ISDIR(st.st_mode) : rename(from, to) != 0;
            if (bad) {
                fx_seterr("%s: %s", to, pass == 0 ? "is a folder: cannot write the file there" : strerror(errno));
                closedir(d);
                return -1;
            }
        }
        closedir(d);
    }
    rmdir(tmp);
    return 0;
}

static int cmd_init(int argc, char **argv) {
    init_opts o;
    int set[4], rc = parse_or_exit(&init_cl, argc, argv, &o, set, NULL, NULL);
    if (rc >= 0) return rc;
    if (!o.config || !o.out) return usage_error("init", "--config FILE and --out DIR are required");
    fx_config c;
    if (fx_config_load(o.config, &c) != 0) fx_die("%s", fx_err());
    if (o.labels) c.num_labels = o.labels;
    /* No adapter: the folder is a base model; adapters are drawn when training starts. */
    fx_adapter_cfg a = {.kind = FX_LORA, .targets = 0, .r = 1, .alpha = 1};
    fx_model m;
    if (fx_model_create(&m, &c, &a, NULL) != 0) fx_die("%s: %s", o.config, fx_err());
    fx_model_init_base(&m, (uint64_t)o.seed);
    /* Everything is written into a fresh folder, then moved in: a failure on the way leaves OUT as it was,
     * with nothing half-written in it. An existing OUT gets that folder inside (the same file system,
     * whatever OUT is: a mount point, a link to another disk), an absent one beside it. */
    char tmp[4096 + 32], parent[4096];
    struct stat ost;
    int inside = stat(o.out, &ost) == 0;
    if (inside && !S_ISDIR(ost.st_mode)) fx_die("%s: not a folder", o.out);
    size_t ol = strlen(o.out);
    while (ol > 1 && o.out[ol - 1] == '/') ol--;
    if (inside) snprintf(tmp, sizeof tmp, "%.*s/.fedex-init" FX_TMP_SUFFIX "XXXXXX", (int)ol, o.out);
    else {
        snprintf(tmp, sizeof tmp, "%.*s" FX_TMP_SUFFIX "XXXXXX", (int)ol, o.out);
        dir_of(tmp, parent, sizeof parent);
        if (fx_mkdir_p(parent) != 0) fx_die("%s", fx_err());
    }
    if (!mkdtemp(tmp)) fx_die("%s: cannot create: %s", tmp, strerror(errno));
    mode_t mask = umask(0);
    umask(mask);
    chmod(tmp, 0755 & ~mask);                    /* mkdtemp's 0700 would become OUT's */
    char dir[4096];
    dir_of(o.config, dir, sizeof dir);
    /* the config's label names, kept where its id2label still counts the labels (no other --labels) */
    fx_json cj = {0};
    const char **names = NULL;
    if (fx_config_family(&c)->head_kind != FX_HEAD_LM && fx_json_load(o.config, &cj) == 0) {
        const fx_json *id2label = fx_json_get(&cj, "id2label");
        if (id2label && id2label->type == FX_JOBJ && id2label->n == (size_t)c.num_labels) {
            names = fx_calloc(id2label->n, sizeof *names);
            /* keys 0..n-1, each once (fx_config_load checks them only where num_labels is absent) */
            int ok = 1;
            for (size_t i = 0; i < id2label->n && ok; i++) {
                int v = fx_id2label_index(id2label->keys[i], c.num_labels);
                ok = v >= 0 && !names[v] && id2label->kids[i].type == FX_JSTR && *id2label->kids[i].str;
                if (ok) names[v] = id2label->kids[i].str;
            }
            if (!ok) { free(names); names = NULL; } /* not every label named: LABEL_i */
        }
    }
    int copied = fx_model_save_labels(&m, tmp, names) != 0 ? -1 : copy_tokenizer(dir, tmp);
    free(names);
    fx_json_free(&cj);
    fx_model_free(&m);
    if (copied < 0 || move_into(tmp, o.out, inside) != 0) {
        fprintf(stderr, "fedex: %s\n", fx_err());
        remove_flat(tmp);
        return 1;
    }
    char head[64];
    if (fx_config_family(&c)->head_kind == FX_HEAD_LM) snprintf(head, sizeof head, "a causal LM's head");
    else snprintf(head, sizeof head, "%d label%s", c.num_labels, c.num_labels == 1 ? " (regression)" : "s");
    printf("init: %s: %s, %d layers, hidden %d, %s, %zu base weights%s\n", o.out, fx_config_family(&c)->model_type,
           c.layers, c.hidden, head, fx_base_numel(&c), copied > 0 ? ", tokenizer copied" :
           " (no tokenizer.json or vocab.json/merges.txt beside the config: add them to use the folder)");
    return 0;
}

/* ============================================================================================
 * eval
 * ============================================================================================ */

typedef struct { const char *model, *adapter, *residual, *task, *data, *logits, *chat_template, *precision; int max_len, batch, threads, rows, max_new; } eval_opts;
static const fx_opt eval_opt[] = {
    {"--model", NULL, FX_OPT_STR, OPT(eval_opts, model), NULL, "a Hugging Face folder (config.json, model.safetensors, tokenizer.json or vocab.json + merges.txt)", 0, 0},
    {"--task", NULL, FX_OPT_STR, OPT(eval_opts, task), NULL, "GLUE task (e2e, instruct, gsm8k or mc for a causal LM)", 0, 0},
    {"--data", NULL, FX_OPT_STR, OPT(eval_opts, data), NULL, "folder holding the GLUE task folders (e2e: devset.csv; instruct, gsm8k, mc: dev.jsonl)", 0, 0},
    {"--chat-template", NULL, FX_OPT_STR, OPT(eval_opts, chat_template), "auto", "instruct, gsm8k, mc: auto (the model's chat_template when it has one) | none (the plain prompt)", 0, 0},
    {"--max-new-tokens", NULL, FX_OPT_INT, OPT(eval_opts, max_new), "256", "gsm8k: tokens generated at most per answer", 1, 1000000},
    {"--adapter", NULL, FX_OPT_STR, OPT(eval_opts, adapter), NULL, "a PEFT adapter: its folder (adapter_config.json + adapter_model.safetensors) or file", 0, 0},
    {"--residual", NULL, FX_OPT_STR, OPT(eval_opts, residual), NULL, "tensors added into the base weights of the same names (a FedEx residual)", 0, 0},
    {"--max-length", NULL, FX_OPT_INT, OPT(eval_opts, max_len), "128", "truncate token sequences to this length", 4, 1000000},
    {"--batch-size", NULL, FX_OPT_INT, OPT(eval_opts, batch), "32", "rows per batch", 1, 1000000},
    {"--logits", NULL, FX_OPT_STR, OPT(eval_opts, logits), NULL, "also write the logits (n, num_labels) as tensor 'logits' of a safetensors file; a causal LM's (tokens, vocab) of every row's positions, row i's from offsets[i] to offsets[i+1]", 0, 0},
    {"--rows", NULL, FX_OPT_INT, OPT(eval_opts, rows), "0", "a causal LM's --logits: of the first N rows only (0: all; each token's logits are the whole vocabulary)", 0, 1000000000},
    {"--threads", NULL, FX_OPT_INT, OPT(eval_opts, threads), NULL, "CPU threads (default: OpenMP's)", 1, 4096},
    {"--precision", NULL, FX_OPT_STR, OPT(eval_opts, precision), "fp32", "fp32 | bf16: the frozen base held in bf16, its products in bf16 with fp32 sums", 0, 0},
};
static const fx_cmdline eval_cl = CMDLINE("eval", "--model DIR --task T --data DIR [--adapter PATH] [--residual FILE] [options]",
    "Evaluates a Hugging Face folder on the task's dev split (DATA/<task>/dev.tsv; a causal LM: E2E's\n"
    "DATA/devset.csv or DATA/dev.jsonl, with gsm8k's exact match and mc's acc and acc_norm) and prints its\n"
    "metrics.\n", eval_opts, eval_opt);

/* The label count of DIR's checkpoint's classifier (classifier.out_proj.weight (L, H)), 0 when it has
 * none, -1 with fx_err(). */
static int checkpoint_labels(const char *dir) {
    fx_st_set s;
    const fx_st_file *f;
    if (fx_st_set_open(dir, &s) != 0) return -1;
    const fx_st_tensor *t = fx_st_set_find(&s, "classifier.out_proj.weight", &f);
    if (!t) t = fx_st_set_find(&s, "roberta.classifier.out_proj.weight", &f);
    int n = t && t->ndim == 2 && t->shape[0] > 0 && t->shape[0] <= 1000 ? (int)t->shape[0] : 0;
    fx_st_set_close(&s);
    return n;
}

/* A causal LM (GPT-2) on E2E's dev split: its loss (the mean cross-entropy over the scored tokens, no
 * label smoothing), and with --logits every position's logits of the first --rows rows, (tokens, vocab)
 * with the rows' offsets. */
static int eval_lm(const eval_opts *o, fx_config *c, const fx_task *task) {
    if (!task->lm) fx_die("eval: %s is a causal LM; --task %s is a classification task (use --task e2e, instruct, gsm8k or mc)", o->model, task->name);
    if (o->max_len > c->max_positions)
        fx_die("eval: --max-length %d exceeds the model's %d positions", o->max_len, c->max_positions);
    fx_adapter_cfg a = {.kind = FX_LORA, .targets = 0, .r = 1, .alpha = 1};
    if (o->adapter && fx_adapter_config_load(o->adapter, &a) != 0) fx_die("%s", fx_err());
    fx_model m;
    if (fx_model_create(&m, c, &a, NULL) != 0) fx_die("%s: %s", o->model, fx_err());
    if (fx_model_load_init(&m, o->model, 0) < 0) fx_die("%s", fx_err());
    if (o->adapter && fx_adapter_load(&m, o->adapter) != 0) fx_die("%s", fx_err());
    if (o->residual && fx_residual_load(&m, o->residual) != 0) fx_die("%s", fx_err());
    fx_tokenizer *tok = fx_tok_load(o->model);
    if (!tok) fx_die("%s", fx_err());
    char path[4096];
    fx_dataset d;
    fx_chat chat = {0};
    fx_inst_rows rows = {0};
    if (task->lm == FX_LM_E2E) {
        if (fx_e2e_path(o->data, "dev", NULL, path, sizeof path) != 0 || fx_e2e_load(path, tok, o->max_len, &d) != 0)
            fx_die("%s", fx_err());
    } else if (fx_chat_load(o->model, o->chat_template, &chat) != 0 || fx_inst_path(o->data, "dev", NULL, path, sizeof path) != 0 ||
               fx_inst_read(path, task, &chat, &rows) != 0 || fx_inst_dataset(&rows, path, task, tok, o->max_len, &d) != 0)
        fx_die("%s", fx_err());
    double t0 = fx_now();
    double loss = fx_eval_split(&d, o->batch, fx_tok_pad(tok), 0, fx_eval_step_cpu, &m, NULL);
    if (isnan(loss)) fx_die("eval: %s", fx_err());
    printf("%s dev: n %d, loss %.4f (%.1f s)\n", task->name, d.n, loss, fx_now() - t0);
    if (task->lm == FX_LM_GSM8K || task->lm == FX_LM_MC) {
        fx_decoder dec;
        fx_inst_scores sc;
        t0 = fx_now();
        if (fx_model_decoder(&m, 1, &dec) != 0 ||
            fx_inst_evaluate(&dec, tok, task, &rows, rows.n, o->max_new, NULL, NULL, &sc) != 0)
            fx_die("eval: %s", fx_err());
        fx_decoder_free(&dec);
        if (task->lm == FX_LM_GSM8K) printf("%s dev: exact_match %.4f on %d rows (%.1f s)\n", task->name, sc.exact_match, sc.rows, fx_now() - t0);
        else printf("%s dev: acc %.4f, acc_norm %.4f on %d rows (%.1f s)\n", task->name, sc.acc, sc.acc_norm, sc.rows, fx_now() - t0);
    }
    fx_inst_rows_free(&rows);
    fx_chat_free(&chat);
    if (o->logits) {
        int n = o->rows > 0 && o->rows < d.n ? o->rows : d.n, V = c->vocab_size;
        size_t tokens = d.off[n] - d.off[0], bytes;
        if (fx_mul_size(tokens, (size_t)V * sizeof(float), &bytes) != 0 || bytes > ((size_t)1 << 34))
            fx_die("eval: the logits of %d rows (%zu tokens x %d) would take %.1f GB: limit them with --rows", n, tokens,
                   V, (double)tokens * V * 4 / 1e9);
        float *all = fx_malloc(bytes ? bytes : 1), *z = NULL;
        int64_t *off = fx_malloc(sizeof(int64_t) * (size_t)(n + 1));
        fx_batch b = {0};
        for (int i = 0; i < n; i += o->batch) { /* rows in order; each row's own positions kept */
            int nb = n - i < o->batch ? n - i : o->batch, rows[nb];
            for (int j = 0; j < nb; j++) rows[j] = i + j;
            fx_batch_fill(&d, rows, nb, fx_tok_pad(tok), &b);
            z = fx_realloc(z, (size_t)nb * b.T * V * sizeof(float));
            if (isnan(fx_model_step(&m, &b, 0, z))) fx_die("eval: %s", fx_err());
            for (int j = 0; j < nb; j++) {
                size_t len = d.off[i + j + 1] - d.off[i + j];
                memcpy(all + (d.off[i + j] - d.off[0]) * V, z + (size_t)j * b.T * V, len * V * sizeof(float));
            }
        }
        for (int i = 0; i <= n; i++) off[i] = (int64_t)(d.off[i] - d.off[0]);
        fx_st_entry e[2] = {{.name = "logits", .dtype = FX_F32, .ndim = 2, .shape = {(int64_t)tokens, V}, .data = all},
                            {.name = "offsets", .dtype = FX_I64, .ndim = 1, .shape = {n + 1}, .data = off}};
        const char *meta[] = {"task", task->name, NULL};
        if (fx_st_write(o->logits, e, 2, meta) != 0) fx_die("%s", fx_err());
        fx_batch_free(&b);
        free(z); free(all); free(off);
    }
    fx_dataset_free(&d);
    fx_tok_free(tok);
    fx_model_free(&m);
    return 0;
}

static int cmd_eval(int argc, char **argv) {
    eval_opts o;
    int set[sizeof eval_opt / sizeof eval_opt[0]], rc = parse_or_exit(&eval_cl, argc, argv, &o, set, NULL, NULL);
    if (rc >= 0) return rc;
    if (!o.model || !o.task || !o.data) return usage_error("eval", "--model, --task and --data are required");
    if (o.threads) fx_set_threads(o.threads);
    const fx_task *task = fx_task_find(o.task);
    if (!task) { fprintf(stderr, "fedex eval: unknown task '%s'\n", o.task); return 2; }

    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/config.json", o.model) >= sizeof path) fx_die("eval: path too long");
    fx_config c;
    if (fx_config_load(path, &c) != 0) fx_die("%s", fx_err());
    if (fx_precision_parse(o.precision, &c.precision) != 0) { fprintf(stderr, "fedex eval: %s\n", fx_err()); return 2; }
    fx_precision_note(c.precision, stderr);
    if (fx_config_family(&c)->head_kind == FX_HEAD_LM) return eval_lm(&o, &c, task);
    if (task->lm)
        fx_die("eval: --task %s needs a causal LM (gpt2, llama, mistral); %s is a %s classifier", task->name, o.model,
               fx_config_family(&c)->model_type);
    /* A base without a classifier (a stock masked-LM checkpoint) gets a fresh head of the task's labels,
     * as Hugging Face creates it; a checkpoint's own head must match the task. */
    int head_labels = checkpoint_labels(o.model);
    if (head_labels < 0) fx_die("%s", fx_err());
    if (head_labels == 0) c.num_labels = task->num_labels;
    else c.num_labels = head_labels;
    if (c.num_labels != task->num_labels)
        fx_die("eval: %s has %d label%s, %s's config.json says %d (make one with fedex init --labels %d)",
               task->name, task->num_labels, task->num_labels == 1 ? " (regression)" : "s", o.model,
               c.num_labels, task->num_labels);
    /* RoBERTa's positions start after pad_id, so a row of T tokens needs pad_id + T < max_positions. */
    if (o.max_len > c.max_positions - c.pad_id - 1)
        fx_die("eval: --max-length %d exceeds the model's %d positions (at most %d tokens)", o.max_len,
               c.max_positions, c.max_positions - c.pad_id - 1);

    fx_adapter_cfg a = {.kind = FX_LORA, .targets = 0, .r = 1, .alpha = 1};
    if (o.adapter && fx_adapter_config_load(o.adapter, &a) != 0) fx_die("%s", fx_err());
    fx_model m;
    if (fx_model_create(&m, &c, &a, NULL) != 0) fx_die("%s: %s", path, fx_err());
    int head = fx_model_load_init(&m, o.model, 0);
    if (head < 0) fx_die("%s", fx_err());
    if (o.adapter && fx_adapter_load(&m, o.adapter) != 0) fx_die("%s", fx_err());
    if (o.residual && fx_residual_load(&m, o.residual) != 0) fx_die("%s", fx_err());
    if (!head && !o.adapter)
        fprintf(stderr, "fedex: eval: %s has no classifier head of %d labels: the head is random\n", o.model,
                c.num_labels);

    fx_tokenizer *tok = fx_tok_load(o.model);
    if (!tok) fx_die("%s", fx_err());
    fx_dataset d;
    if (fx_dataset_build(task, o.data, "dev", tok, o.max_len, &d) != 0) fx_die("%s", fx_err());
    int L = c.num_labels;
    float *logits = fx_malloc((size_t)d.n * (size_t)L * sizeof(float));
    double t0 = fx_now();
    double loss = fx_eval_split(&d, o.batch, fx_tok_pad(tok), L, fx_eval_step_cpu, &m, logits);
    if (isnan(loss)) fx_die("eval: %s", fx_err());
    fx_metrics mt;
    fx_task_metrics(task, logits, d.labels, d.n, &mt);
    printf("%s dev: n %d, loss %.4f", task->name, d.n, loss);
    const char *names[5] = {"accuracy", "f1", "mcc", "pearson", "spearman"};
    double vals[5] = {mt.accuracy, mt.f1, mt.mcc, mt.pearson, mt.spearman};
    for (int k = 0; k < 5; k++)
        if (!isnan(vals[k])) printf(", %s %.4f", names[k], vals[k]);
    printf(" (%.1f s)\n", fx_now() - t0);
    if (o.logits) {
        fx_st_entry e = {.name = "logits", .dtype = FX_F32, .ndim = 2, .shape = {d.n, L}, .data = logits};
        const char *meta[] = {"task", task->name, NULL};
        if (fx_st_write(o.logits, &e, 1, meta) != 0) fx_die("%s", fx_err());
    }
    free(logits);
    fx_dataset_free(&d);
    fx_tok_free(tok);
    fx_model_free(&m);
    return 0;
}

/* ============================================================================================
 * generate
 * ============================================================================================ */

typedef struct {
    const char *model, *adapter, *residual, *file, *stop, *scope, *precision;
    int beams, max_new, ngram, eos, ids, prompt_ids, threads;
    double lp;
} generate_opts;
static const fx_opt generate_opt[] = {
    {"--model", NULL, FX_OPT_STR, OPT(generate_opts, model), NULL, "a causal LM folder (config.json, model.safetensors; tokenizer.json or vocab.json + merges.txt for text)", 0, 0},
    {"--adapter", NULL, FX_OPT_STR, OPT(generate_opts, adapter), NULL, "a PEFT adapter: its folder (adapter_config.json + adapter_model.safetensors) or file", 0, 0},
    {"--residual", NULL, FX_OPT_STR, OPT(generate_opts, residual), NULL, "tensors added into the base weights of the same names (a FedEx residual)", 0, 0},
    {"--file", NULL, FX_OPT_STR, OPT(generate_opts, file), NULL, "prompts, one per line (- reads standard input)", 0, 0},
    {"--prompt-ids", NULL, FX_OPT_FLAG, OPT(generate_opts, prompt_ids), NULL, "each prompt is token ids, space separated (no tokenizer needed)", 0, 0},
    {"--ids", NULL, FX_OPT_FLAG, OPT(generate_opts, ids), NULL, "print the generated token ids (the end token included) instead of the text", 0, 0},
    {"--num-beams", NULL, FX_OPT_INT, OPT(generate_opts, beams), "10", "beams (1: greedy search)", 1, 1024},
    {"--length-penalty", NULL, FX_OPT_REAL, OPT(generate_opts, lp), "0.8", "a finished beam scores sum log p / generated_length^X", 0, 0},
    {"--early-stopping", NULL, FX_OPT_STR, OPT(generate_opts, stop), "false", "false (HF's heuristic) | true (at num-beams finished) | never", 0, 0},
    {"--no-repeat-ngram-size", NULL, FX_OPT_INT, OPT(generate_opts, ngram), "4", "no N-gram twice (0: off)", 0, 1000000},
    {"--no-repeat-scope", NULL, FX_OPT_STR, OPT(generate_opts, scope), "generated", "generated (the LoRA paper's: the prompt's n-grams may recur) | row (HF's: prompt included)", 0, 0},
    {"--max-new-tokens", NULL, FX_OPT_INT, OPT(generate_opts, max_new), "64", "tokens generated at most per prompt", 1, 1000000},
    {"--eos", NULL, FX_OPT_INT, OPT(generate_opts, eos), NULL, "end token id, -1 for none [default: config.json's eos_token_id, else the tokenizer's]", -1, 1 << 30},
    {"--threads", NULL, FX_OPT_INT, OPT(generate_opts, threads), NULL, "CPU threads (default: OpenMP's)", 1, 4096},
    {"--precision", NULL, FX_OPT_STR, OPT(generate_opts, precision), "fp32", "fp32 | bf16: the frozen base held in bf16, its products in bf16 with fp32 sums", 0, 0},
};
static const fx_cmdline generate_cl = {
    "generate", "--model DIR [options] PROMPT...\n       fedex generate --model DIR --file F|- [options]\n"
    "       fedex generate --model DIR --prompt-ids [--ids] \"ID ID ...\"...",
    "Continues each prompt with a causal LM (GPT-2) by beam search or greedy search over a KV cache, with\n"
    "Hugging Face generate()'s semantics; the defaults are the LoRA paper's E2E decoding. Prints one line\n"
    "per prompt, in order: the generated text (special tokens dropped, line breaks as spaces), or with --ids\n"
    "the generated ids. Prompts are not padded.\n",
    sizeof(generate_opts), generate_opt, (int)(sizeof generate_opt / sizeof generate_opt[0]), 0, 1 << 20, "prompts"};

/* config.json's eos_token_id, or -2 when it has none. */
static int config_eos(const char *path) {
    fx_json j;
    if (fx_json_load(path, &j) != 0) return -2;
    const fx_json *e = fx_json_get(&j, "eos_token_id");
    int eos = e && e->type == FX_JNUM && e->is_int && e->inum >= 0 && e->inum < (1 << 30) ? (int)e->inum : -2;
    fx_json_free(&j);
    return eos;
}

/* One prompt's ids from the text "ID ID ..." (WHERE names it in errors), into *ids (realloc'd). */
static int parse_prompt_ids(const char *s, const char *where, int vocab, int32_t **ids, int *n, int *cap) {
    *n = 0;
    for (const char *p = s;;) {
        while (*p == ' ' || *p == '\t') p++;
        if (!*p || *p == '\n' || *p == '\r') break;
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || (*end && *end != ' ' && *end != '\t' && *end != '\n' && *end != '\r')) {
            int len = 0;
            while (p[len] && p[len] != ' ' && p[len] != '\t' && p[len] != '\n' && len < 40) len++;
            fx_seterr("%s: '%.*s' is not a token id", where, len, p);
            return -1;
        }
        if (v < 0 || v >= vocab) { fx_seterr("%s: token id %ld is outside the vocabulary of %d", where, v, vocab); return -1; }
        if (*n == *cap) { *cap = *cap ? 2 * *cap : 64; *ids = fx_realloc(*ids, (size_t)*cap * sizeof **ids); }
        (*ids)[(*n)++] = (int32_t)v;
        p = end;
    }
    if (!*n) { fx_seterr("%s: no token ids", where); return -1; }
    return 0;
}

static int cmd_generate(int argc, char **argv) {
    generate_opts o;
    const char **prompts = fx_malloc((size_t)(argc > 1 ? argc : 1) * sizeof *prompts);
    int set[sizeof generate_opt / sizeof generate_opt[0]], np = 0;
    int rc = parse_or_exit(&generate_cl, argc, argv, &o, set, prompts, &np);
    if (rc >= 0) { free(prompts); return rc; }
    rc = 2;
    fx_gen_cfg g = {o.beams, o.max_new, -1, o.lp, FX_STOP_HEURISTIC, o.ngram, 1};
    if (!o.model) { free(prompts); return usage_error("generate", "--model DIR is required"); }
    if (o.file ? np != 0 : np == 0) {
        free(prompts);
        return usage_error("generate", o.file ? "give prompts as arguments or --file F, not both"
                                              : "no prompt: give prompts as arguments or --file F");
    }
    if (fx_gen_stop_parse(o.stop, &g.early_stopping) != 0 || fx_gen_scope_parse(o.scope, &g.no_repeat_generated) != 0) {
        fprintf(stderr, "fedex generate: %s\n", fx_err());
        free(prompts);
        return 2;
    }
    if (o.threads) fx_set_threads(o.threads);

    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/config.json", o.model) >= sizeof path) fx_die("generate: path too long");
    fx_config c;
    if (fx_config_load(path, &c) != 0) fx_die("%s", fx_err());
    if (fx_precision_parse(o.precision, &c.precision) != 0) {
        fprintf(stderr, "fedex generate: %s\n", fx_err());
        free(prompts);
        return 2;
    }
    fx_precision_note(c.precision, stderr);
    fx_adapter_cfg a = {.kind = FX_LORA, .targets = 0, .r = 1, .alpha = 1};
    if (o.adapter && fx_adapter_config_load(o.adapter, &a) != 0) fx_die("%s", fx_err());
    fx_model m;
    if (fx_model_create(&m, &c, &a, NULL) != 0) fx_die("%s: %s", path, fx_err());
    if (fx_model_load_init(&m, o.model, 0) < 0) fx_die("%s", fx_err());
    if (o.adapter && fx_adapter_load(&m, o.adapter) != 0) fx_die("%s", fx_err());
    if (o.residual && fx_residual_load(&m, o.residual) != 0) fx_die("%s", fx_err());
    fx_decoder d;
    if (fx_model_decoder(&m, g.num_beams, &d) != 0) fx_die("generate: %s: %s", o.model, fx_err());

    /* The tokenizer: needed for text prompts and text output; ids in and out need none. */
    fx_tokenizer *tok = NULL;
    if (!o.prompt_ids || !o.ids) {
        tok = fx_tok_load(o.model);
        if (!tok) fx_die("generate: %s (--prompt-ids with --ids needs no tokenizer)", fx_err());
    }
    int cfg_eos = config_eos(path);
    g.eos = set[fx_opts_find(&generate_cl, "--eos")] ? o.eos : cfg_eos >= 0 ? cfg_eos : tok ? fx_tok_eos(tok) : -1;
    if (fx_gen_check(&g, d.vocab) != 0) fx_die("generate: %s", fx_err());

    /* The prompts: arguments, or the lines of --file. */
    char *text = NULL, **lines = NULL;
    int nlines = 0;
    if (o.file) {
        size_t len;
        if (fx_read_file(o.file, &text, &len) != 0) fx_die("%s", fx_err());
        if (strlen(text) != len) fx_die("generate: %s holds a NUL byte", o.file);
        lines = fx_malloc((len + 1) * sizeof *lines);
        for (char *p = text; *p;) {
            lines[nlines++] = p;
            char *e = strchr(p, '\n');
            if (!e) break;
            if (e > p && e[-1] == '\r') e[-1] = 0;
            *e = 0;
            p = e + 1;
        }
        if (!nlines) fx_die("generate: %s holds no prompt", o.file);
        free(prompts);
        prompts = (const char **)lines;
        np = nlines;
    }

    int32_t *ids = NULL;
    int n = 0, cap = 0, *out = fx_malloc((size_t)g.max_new_tokens * sizeof *out);
    for (int i = 0; i < np; i++) {
        char where[4200];
        if (o.file) snprintf(where, sizeof where, "%s:%d", o.file, i + 1);
        else snprintf(where, sizeof where, "prompt %d", i + 1);
        if (o.prompt_ids) {
            if (parse_prompt_ids(prompts[i], where, d.vocab, &ids, &n, &cap) != 0) fx_die("generate: %s", fx_err());
        } else {
            static const fx_text_template plain = {0, 0, 0, 0, 0};
            n = 0;
            if (fx_tok_encode_tpl(tok, &plain, prompts[i], NULL, 0, &ids, &n, &cap) != 0)
                fx_die("generate: %s: %s", where, fx_err());
            if (!n) fx_die("generate: %s: the prompt is empty", where);
        }
        int nout;
        if (fx_generate(&d, &g, ids, n, out, &nout, NULL) != 0) fx_die("%s: %s", where, fx_err());
        if (o.ids) print_ids(out, nout);
        else {
            char *s = fx_gen_text(tok, out, nout);
            puts(s);
            free(s);
        }
    }
    if (fflush(stdout) != 0 || ferror(stdout)) fx_die("generate: writing standard output failed");
    rc = 0;
    free(out); free(ids); free(text); free(prompts);
    if (tok) fx_tok_free(tok);
    fx_decoder_free(&d);
    fx_model_free(&m);
    return rc;
}

/* ============================================================================================
 * train, demo
 * ============================================================================================ */

static int cmd_train(int argc, char **argv) {
    static fx_run R;
    memset(&R, 0, sizeof R);
    int set[FX_SETTINGS_MAX] = {0};
    int rc = parse_or_exit(&fx_train_cmdline, argc, argv, &R.cfg, set, NULL, NULL);
    if (rc >= 0) return rc;
    fx_json saved = {0};
    if (R.cfg.resume) {
        /* the run's own settings file decides everything but the thread count and how many rounds */
        for (int i = 0; i < fx_train_cmdline.nopt; i++) {
            const char *name = fx_train_cmdline.opt[i].name;
            if (set[i] && strcmp(name, "--resume") && strcmp(name, "--threads") && strcmp(name, "--rounds") &&
                strcmp(name, "--transport") &&
                !(strcmp(name, "--out") == 0 && !strcmp(R.cfg.out, R.cfg.resume))) {
                fprintf(stderr, "fedex train: --resume takes the run's own settings; %s cannot be changed "
                        "(only --threads, --rounds and --transport)\n", name);
                return 2;
            }
        }
        fx_settings given = R.cfg;
        /* a client rank of --transport mpi takes the run's settings from the server, whose host holds the run */
        int client_rank = !strcmp(given.transport, "mpi") && fx_mpi_env_rank() > 0;
        if (!client_rank && fx_settings_read(given.resume, &R.cfg, &saved) != 0) {
            fprintf(stderr, "fedex train: %s\n", fx_err());
            fx_json_free(&saved);
            return 2;
        }
        R.cfg.resume = given.resume;
        R.cfg.out = given.resume;
        R.cfg.threads = given.threads;
        R.cfg.transport = given.transport;
        if (set[fx_settings_opt("--rounds")]) R.cfg.rounds = given.rounds;
    }
    if (fx_settings_check(&R.cfg, set) != 0) {
        fprintf(stderr, "fedex train: %s\n", fx_err());
        fx_json_free(&saved);
        return 2;
    }
    if (!R.cfg.resume) fx_settings_notes(&R.cfg, set, stdout);
    fx_precision_note(fx_settings_precision(&R.cfg), stdout);
#ifndef FEDEX_CUDA
    if (!strcmp(R.cfg.device, "cuda")) {
        fprintf(stderr, "fedex train: --device cuda needs the CUDA build, fedex-cuda, beside this program "
                "(`make` builds it when nvcc is found)\n");
        fx_json_free(&saved);
        return 2;
    }
#endif
    /* MPI starts only here, for --transport mpi: the shm transport forks before any thread exists */
    rc = !strcmp(R.cfg.transport, "mpi") ? fx_mpi_train(&R) : fx_run_federated(&R);
    fx_json_free(&saved);
    return rc;
}

/* fedit, ffa and fedex side by side on the embedded model: each run in a process of its own (a server
 * must fork its clients before it starts any thread), results gathered through shared memory. */
static const fx_cmdline demo_about = {
    "demo", "[--rounds N] [--num-clients N] [--seed S] [--threads N] [train options]",
    "Runs fedit, ffa and fedex on the embedded model and the built-in synthetic task and prints,\n"
    "per round, each method's dev accuracy and its aggregation error against the exact mean of\n"
    "the clients' models: fedex stays at float rounding, fedit does not. With --out DIR each\n"
    "method's run is written as train writes one, to DIR/fedit, DIR/ffa and DIR/fedex.\n", 0, NULL, 0, 0, 0, NULL};

static int cmd_demo(int argc, char **argv) {
    if (fx_opts_wants_help(argc, argv)) { fx_opts_help(&demo_about, stdout); return 0; }
    static const fx_agg_method ms[] = {FX_AGG_FEDIT, FX_AGG_FFA, FX_AGG_FEDEX};
    enum { NM = 3 };
    fx_settings base;
    int set[FX_SETTINGS_MAX] = {0};
    if (fx_opts_parse(&fx_train_cmdline, argc, argv, &base, set, NULL, NULL) != 0) {
        fprintf(stderr, "fedex demo: %s\n", fx_err());
        return 2;
    }
    if (set[fx_settings_opt("--agg")] || set[fx_settings_opt("--model")] || set[fx_settings_opt("--task")] ||
        set[fx_settings_opt("--resume")] || set[fx_settings_opt("--transport")] || set[fx_settings_opt("--vera")]) {
        fprintf(stderr, "fedex demo: runs fedit, ffa and fedex (LoRA) on the embedded model with forked clients; use "
                "`fedex train` for --agg, --vera, --model, --task, --resume or --transport\n");
        return 2;
    }
    /* the demo's own defaults: a short run that learns the synthetic task in about a minute */
    if (!set[fx_settings_opt("--rounds")]) base.rounds = 8;
    if (!set[fx_settings_opt("--local-epochs")]) base.local_epochs = 2;
    if (!set[fx_settings_opt("--batch-size")]) base.batch_size = 32;
    if (!set[fx_settings_opt("--lr")]) base.lr = 5e-3;
    if (fx_settings_check(&base, set) != 0) { fprintf(stderr, "fedex demo: %s\n", fx_err()); return 2; }
    size_t len = sizeof(double) * 2 * NM * (size_t)base.rounds;
    double *res = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (res == MAP_FAILED) { fprintf(stderr, "fedex demo: mmap: %s\n", strerror(errno)); return 1; }
    for (size_t i = 0; i < 2 * NM * (size_t)base.rounds; i++) res[i] = NAN;
    printf("fedex demo: %d clients, %d rounds x %d local epochs, LoRA r=%d on %s, synthetic task "
           "(%d train / %d dev rows)\n", base.num_clients, base.rounds, base.local_epochs, base.lora_r,
           base.targets, FX_SYNTH_TRAIN, FX_SYNTH_DEV);
    for (int k = 0; k < NM; k++) {
        fflush(stdout);
        pid_t p = fork();
        if (p < 0) { fprintf(stderr, "fedex demo: fork: %s\n", strerror(errno)); return 1; }
        if (p == 0) {
            static fx_run R;
            memset(&R, 0, sizeof R);
            R.cfg = base;
            R.cfg.agg = ms[k];
            R.cfg.agg_name = fx_agg_name(ms[k]);
            static char out[4096];                /* --out DIR: each method's run in DIR/METHOD */
            if (base.out) { snprintf(out, sizeof out, "%s/%s", base.out, fx_agg_name(ms[k])); R.cfg.out = out; }
            R.hist_metric = res + (size_t)(2 * k) * base.rounds;
            R.hist_err = res + (size_t)(2 * k + 1) * base.rounds;
            R.quiet = 1;
            _exit(fx_run_federated(&R));
        }
        int st;
        if (waitpid(p, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "fedex demo: the %s run failed\n", fx_agg_name(ms[k]));
            return 1;
        }
    }
    printf("\n        dev accuracy (aggregation error: ||W_global - mean_i W_i|| / ||mean_i W_i - W_prev||)\n");
    printf("round   ");
    for (int k = 0; k < NM; k++) printf("%-24s", fx_agg_name(ms[k]));
    printf("\n");
    for (int r = 0; r < base.rounds; r++) {
        printf("%5d   ", r + 1);
        for (int k = 0; k < NM; k++)
            printf("%.4f  (%8.2e)      ", res[(size_t)(2 * k) * base.rounds + r], res[(size_t)(2 * k + 1) * base.rounds + r]);
        printf("\n");
    }
    munmap(res, len);
    return 0;
}

/* ============================================================================================
 * export
 * ============================================================================================ */

typedef struct { const char *run, *out; int merged; } export_opts;
static const fx_opt export_opt[] = {
    {"--run", NULL, FX_OPT_STR, OPT(export_opts, run), NULL, "the run's folder (required)", 0, 0},
    {"--out", NULL, FX_OPT_STR, OPT(export_opts, out), NULL, "the folder to write (required)", 0, 0},
    {"--merged", NULL, FX_OPT_FLAG, OPT(export_opts, merged), NULL, "fold the adapters into the weights too", 0, 0},
};
static const fx_cmdline export_cl = CMDLINE("export", "--run DIR --out DIR [--merged]",
    "Writes the run's final global model as a Hugging Face checkpoint (model.safetensors + config.json): the\n"
    "FedEx residual folded into the frozen weights and, with --merged, the adapters too (else the PEFT adapter\n"
    "is written beside it).\n", export_opts, export_opt);

/* An earlier (plain) export's adapter in DIR, left beside merged weights, would be applied twice: it goes
 * when it is one export wrote, its adapter_config.json naming DIR itself as the base; another adapter
 * there is left alone. 0, or -1 with fx_err() when it cannot be removed. */
static int remove_own_adapter(const char *dir) {
    char cfg[4096 + 32], abs[PATH_MAX];
    snprintf(cfg, sizeof cfg, "%s/adapter_config.json", dir);
    fx_json j;
    if (access(cfg, F_OK) != 0 || !realpath(dir, abs) || fx_json_load(cfg, &j) != 0) return 0;
    const fx_json *b = fx_json_get(&j, "base_model_name_or_path");
    int own = b && b->type == FX_JSTR && !strcmp(b->str, abs);
    fx_json_free(&j);
    if (!own) return 0;
    static const char *const names[] = {"adapter_model.safetensors", "adapter_config.json"};
    for (int k = 0; k < 2; k++) {
        char p[4096 + 32];
        snprintf(p, sizeof p, "%s/%s", dir, names[k]);
        if (unlink(p) == 0) printf("removed %s (an earlier export's adapter: the merged weights hold it)\n", p);
        else if (errno != ENOENT) { fx_seterr("%s: cannot remove: %s", p, strerror(errno)); return -1; }
    }
    return 0;
}

static int cmd_export(int argc, char **argv) {
    export_opts o;
    int set[3], rc = parse_or_exit(&export_cl, argc, argv, &o, set, NULL, NULL);
    if (rc >= 0) return rc;
    if (!o.run || !o.out) return usage_error("export", "needs --run DIR and --out DIR");
    /* a model folder is not a run folder: writing one into the other would mix them up */
    char rr[4096], ro[4096], sp[4096];
    if ((realpath(o.run, rr) && realpath(o.out, ro) && !strcmp(rr, ro)) || fx_settings_find(o.out, sp, sizeof sp)) {
        fprintf(stderr, "fedex export: --out %s is a run's folder; export writes a model folder: give another\n", o.out);
        return 2;
    }
    fx_settings c;
    fx_json j = {0};
    fx_config mc;
    fx_adapter_cfg ac;
    const fx_task *task;
    fx_model m;
    fx_residual res = {0};
    rc = 1;
    double best; int best_round;
    if (fx_settings_read(o.run, &c, &j) != 0 || fx_settings_model(&c, &mc, &task) != 0) goto out;
    fx_settings_adapter(&c, &ac);
    if (fx_model_create(&m, &mc, &ac, NULL) != 0) goto out;
    char id[24];
    fx_settings_id(&c, id, sizeof id);
    int bad = fx_run_init_weights(&c, &m) != 0 || fx_residual_init(&res, &m) != 0 ||
              fx_run_load_state(o.run, &m, m.train.data, &res, &best, &best_round, id, NULL) < 0;
    if (bad || fx_mkdir_p(o.out) != 0 || fx_model_export(&m, o.out, o.merged, task) != 0 ||
        (!o.merged && fx_adapter_save(&m, o.out, o.out) != 0) || (c.model && copy_tokenizer(c.model, o.out) < 0)) {
        fx_model_free(&m);
        goto out;
    }
    printf("wrote %s/model.safetensors (%s)\n", o.out, o.merged ? "residual and adapters merged" : "residual merged; adapter beside it");
    if (o.merged && remove_own_adapter(o.out) != 0) { fx_model_free(&m); goto out; }
    fx_model_free(&m);
    rc = 0;
out:
    if (res.off) fx_residual_free(&res);
    if (rc) fprintf(stderr, "fedex export: %s\n", fx_err());
    fx_json_free(&j);
    return rc;
}

/* ============================================================================================
 * score
 * ============================================================================================ */

typedef struct { const char *hyp, *refs; int json, tokenized; } score_opts;
static const fx_opt score_opt[] = {
    {"--hyp", NULL, FX_OPT_STR, OPT(score_opts, hyp), NULL, "hypotheses, one a line (required)", 0, 0},
    {"--refs", NULL, FX_OPT_STR, OPT(score_opts, refs), NULL,
     "references: each item's lines, items separated by blank lines (required)", 0, 0},
    {"--json", NULL, FX_OPT_FLAG, OPT(score_opts, json), NULL, "print one JSON object: BLEU, NIST, ROUGE_L, CIDEr", 0, 0},
    {"--tokenized", NULL, FX_OPT_FLAG, OPT(score_opts, tokenized), NULL,
     "the files are tokenised already: split at spaces only, no case folding", 0, 0},
};
static const fx_cmdline score_cl = CMDLINE("score", "--hyp F --refs F [--json] [--tokenized]",
    "Scores hypotheses against references as e2e-metrics (measure_scores.py -p) does: BLEU and NIST as its\n"
    "port of mteval-v13a, ROUGE-L and CIDEr-D as its pycocoevalcap on PTB-tokenised text. The files are in\n"
    "the format its measure_scores.py reads. METEOR is not computed (it needs Java): run the official\n"
    "scorer on the same files.\n", score_opts, score_opt);

static int cmd_score(int argc, char **argv) {
    score_opts o;
    int set[4], rc = parse_or_exit(&score_cl, argc, argv, &o, set, NULL, NULL);
    if (rc >= 0) return rc;
    if (!o.hyp || !o.refs) return usage_error("score", "needs --hyp F and --refs F");
    fx_e2e_scores s;
    if (fx_e2e_score_files(o.hyp, o.refs, o.tokenized, &s) != 0) {
        fprintf(stderr, "fedex score: %s\n", fx_err());
        return 1;
    }
    static const char meteor[] =
        "METEOR is not computed (the official scorer needs Java and its paraphrase tables): e2e-metrics'\n"
        "  ./measure_scores.py -p %s %s\n"
        "reads these same files and prints it with the other four.\n";
    if (o.json) {
        printf("{\"BLEU\": ");
        fx_json_num(stdout, s.bleu);
        printf(", \"NIST\": ");
        fx_json_num(stdout, s.nist);
        printf(", \"ROUGE_L\": ");
        fx_json_num(stdout, s.rouge_l);
        printf(", \"CIDEr\": ");
        fx_json_num(stdout, s.cider);
        printf("}\n");
        fprintf(stderr, meteor, o.refs, o.hyp);
    } else {
        printf("BLEU     %.4f\n", s.bleu);
        if (isnan(s.nist)) printf("NIST     undefined (the hypotheses are too short: e2e-metrics divides by zero)\n");
        else printf("NIST     %.4f\n", s.nist);
        printf("ROUGE_L  %.4f\n", s.rouge_l);
        printf("CIDEr    %.4f\n", s.cider);
        printf(meteor, o.refs, o.hyp);
    }
    return 0;
}

/* ============================================================================================
 * plot, table
 * ============================================================================================ */

#define MAX_RUNS 256

/* The runs named by the positional arguments, read; NULL (the error printed) when one does not read. */
static fx_runlog *read_runs(const char *cmd, const char **dirs, int n) {
    fx_runlog *runs = fx_calloc((size_t)n, sizeof *runs);
    for (int i = 0; i < n; i++)
        if (fx_runlog_read(dirs[i], &runs[i]) != 0) {
            fprintf(stderr, "fedex %s: %s\n", cmd, fx_err());
            for (int j = 0; j < i; j++) fx_runlog_free(&runs[j]);
            free(runs);
            return NULL;
        }
    return runs;
}

static void free_runs(fx_runlog *runs, int n) {
    for (int i = 0; i < n; i++) fx_runlog_free(&runs[i]);
    free(runs);
}

typedef struct { const char *out, *format; } plot_opts;
static const fx_opt plot_opt[] = {
    {"--out", NULL, FX_OPT_STR, OPT(plot_opts, out), NULL, "the SVG file to write (required; - for standard output)", 0, 0},
    {"--format", NULL, FX_OPT_STR, OPT(plot_opts, format), "svg", "svg (png is not built in: render the SVG, see below)", 0, 0},
};
static const fx_cmdline plot_cl = {
    "plot", "RUN... --out FILE.svg",
    "Draws the runs in the folders RUN... as one SVG: the dev metric per round of every run (legend: method\n"
    "and task), train and dev loss per round, and for each run that reports a deviation (FedIT's error on its\n"
    "round's clients, per adapted layer) a layer x round heat map and the deviation by depth. Each plotted\n"
    "point carries its metrics.jsonl value as data-value. For a PNG: chromium --headless --screenshot=F.png\n"
    "--window-size=1000,H FILE.svg (H: the SVG's height), or rsvg-convert FILE.svg > F.png.\n",
    sizeof(plot_opts), plot_opt, 2, 1, MAX_RUNS, "RUN"};

static int cmd_plot(int argc, char **argv) {
    plot_opts o;
    const char *dirs[MAX_RUNS];
    int set[2], n, rc = parse_or_exit(&plot_cl, argc, argv, &o, set, dirs, &n);
    if (rc >= 0) return rc;
    if (!o.out) return usage_error("plot", "--out FILE.svg is required");
    if (!strcmp(o.format, "png")) {
        fprintf(stderr, "fedex plot: --format png is not built in (it would need a rasteriser and fonts, a new "
                "dependency); write the SVG and render it: chromium --headless --screenshot=F.png FILE.svg\n");
        return 2;
    }
    if (strcmp(o.format, "svg")) return usage_error("plot", "--format takes svg");
    fx_runlog *runs = read_runs("plot", dirs, n);
    if (!runs) return 1;
    rc = fx_runs_write(o.out, runs, n, "svg");
    if (rc != 0) fprintf(stderr, "fedex plot: %s\n", fx_err());
    free_runs(runs, n);
    return rc ? 1 : 0;
}

typedef struct { const char *out, *format; } table_opts;
static const fx_opt table_opt[] = {
    {"--format", NULL, FX_OPT_STR, OPT(table_opts, format), "md", "md (Markdown) | csv", 0, 0},
    {"--out", NULL, FX_OPT_STR, OPT(table_opts, out), NULL, "the file to write (default: standard output)", 0, 0},
};
static const fx_cmdline table_cl = {
    "table", "RUN... [--format md|csv] [--out FILE]",
    "The paper's table of the runs in the folders RUN...: one row per method, one column per task, each cell\n"
    "the run's best dev metric (the task's metric) and the round it came in, and the row's average over the\n"
    "tasks (when it has them all). One run per method and task.\n",
    sizeof(table_opts), table_opt, 2, 1, MAX_RUNS, "RUN"};

static int cmd_table(int argc, char **argv) {
    table_opts o;
    const char *dirs[MAX_RUNS];
    int set[2], n, rc = parse_or_exit(&table_cl, argc, argv, &o, set, dirs, &n);
    if (rc >= 0) return rc;
    if (strcmp(o.format, "md") && strcmp(o.format, "csv")) return usage_error("table", "--format takes md or csv");
    fx_runlog *runs = read_runs("table", dirs, n);
    if (!runs) return 1;
    rc = fx_runs_write(o.out, runs, n, o.format);
    if (rc != 0) fprintf(stderr, "fedex table: %s\n", fx_err());
    free_runs(runs, n);
    return rc ? 1 : 0;
}

/* ============================================================================================
 * grid
 * ============================================================================================ */

typedef struct { const char *out, *model, *config, *data, *tasks, *methods; int quick, dry_run; } grid_opts;
static const fx_opt grid_opt[] = {
    {"--out", NULL, FX_OPT_STR, OPT(grid_opts, out), NULL, "the grid's folder: runs/TASK/METHOD, table.md, table.csv, plots/ (required)", 0, 0},
    {"--model", NULL, FX_OPT_STR, OPT(grid_opts, model), NULL, "the pre-trained model folder (none: the embedded model on the synthetic task)", 0, 0},
    {"--config", NULL, FX_OPT_STR, OPT(grid_opts, config), NULL, "instead of --model: a config.json whose random-weight model is made in OUT/model", 0, 0},
    {"--data", NULL, FX_OPT_STR, OPT(grid_opts, data), NULL, "folder holding the GLUE task folders", 0, 0},
    {"--tasks", NULL, FX_OPT_STR, OPT(grid_opts, tasks), NULL, "tasks, comma-separated (default: the paper's CoLA,SST-2,MRPC,STS-B,QNLI,RTE; --quick: RTE,MRPC,CoLA,STS-B)", 0, 0},
    {"--methods", NULL, FX_OPT_STR, OPT(grid_opts, methods), NULL, "methods, comma-separated (default: every --agg method, centralized first)", 0, 0},
    {"--quick", NULL, FX_OPT_FLAG, OPT(grid_opts, quick), NULL, "2 rounds x 1 epoch, batch 16, length 32, VeRA r 16: runs end to end in minutes", 0, 0},
    {"--dry-run", NULL, FX_OPT_FLAG, OPT(grid_opts, dry_run), NULL, "print the plan and the estimated time, run nothing", 0, 0},
};
static const fx_cmdline grid_cl = {
    "grid", "--out DIR [--model DIR | --config FILE] [--data DIR] [--tasks LIST] [--methods LIST] [--quick] [-- TRAIN OPTIONS]",
    "Runs every method on every task, one `fedex train` after another in DIR/runs/TASK/METHOD (its output in\n"
    "train.log there), with the paper's settings (train's defaults) or --quick's, and the train options after\n"
    "`--` for every run. Runs already complete are skipped and interrupted ones resumed, so the same command\n"
    "continues a stopped grid. Prints the estimated time first and a line per round with the time left, then\n"
    "writes DIR/table.md, DIR/table.csv and DIR/plots/TASK.svg.\n",
    sizeof(grid_opts), grid_opt, 8, 0, 0, NULL};

static int cmd_grid(int argc, char **argv) {
    int dd = argc;
    for (int i = 1; i < argc; i++) if (!strcmp(argv[i], "--")) { dd = i; break; }
    grid_opts o;
    int set[8], rc = parse_or_exit(&grid_cl, dd, argv, &o, set, NULL, NULL);
    if (rc >= 0) return rc;
    if (!o.out) return usage_error("grid", "--out DIR is required");
    if (o.model && o.config) return usage_error("grid", "give --model or --config, not both");
    char self[4096], model[4096 + 16];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) { fprintf(stderr, "fedex grid: cannot find this program (/proc/self/exe): %s\n", strerror(errno)); return 1; }
    self[n] = 0;
    if (o.config) {
        /* a random-weight model of the config's shapes, made once (seed 1) and kept for every run */
        snprintf(model, sizeof model, "%s/model", o.out);
        char st[4096 + 64];
        snprintf(st, sizeof st, "%s/model.safetensors", model);
        if (access(o.config, R_OK) != 0) {
            fprintf(stderr, "fedex grid: %s: cannot open: %s\n", o.config, strerror(errno));
            return 1;
        }
        o.model = model;
        if (!o.dry_run && access(st, F_OK) != 0) {
            /* the grid's lists and every run's options are checked before the model is made */
            fx_grid_opts chk = {.out = o.out, .model = o.model, .data = o.data, .tasks = o.tasks, .methods = o.methods,
                                .quick = o.quick, .config_file = o.config, .check_only = 1, .exe = self,
                                .extra = (const char *const *)argv + dd + 1, .nextra = dd < argc ? argc - dd - 1 : 0};
            if ((rc = fx_grid_run(&chk)) < 0) { fprintf(stderr, "fedex grid: %s\n", fx_err()); return rc == -2 ? 2 : 1; }
            char *iv[] = {"init", "--config", (char *)o.config, "--out", model, "--seed", "1", NULL};
            if ((rc = cmd_init(7, iv)) != 0) return rc;
        }
    }
    fx_grid_opts g = {.out = o.out, .model = o.model, .data = o.data, .tasks = o.tasks, .methods = o.methods,
                      .quick = o.quick, .dry_run = o.dry_run, .config_file = o.dry_run ? o.config : NULL, .exe = self,
                      .extra = (const char *const *)argv + dd + 1, .nextra = dd < argc ? argc - dd - 1 : 0};
    rc = fx_grid_run(&g);
    if (rc < 0) { fprintf(stderr, "fedex grid: %s\n", fx_err()); return rc == -2 ? 2 : 1; }
    return rc ? 130 : 0;
}

/* ============================================================================================
 * main
 * ============================================================================================ */

typedef struct { const char *name; int (*fn)(int, char **); const char *summary; } command;

static const command commands[] = {
    {"inspect", cmd_inspect, "list the tensors of a safetensors file"},
    {"tokenize", cmd_tokenize, "print token ids of a text pair or of every row of a GLUE file"},
    {"init", cmd_init, "write a randomly initialised model of a config's shapes"},
    {"eval", cmd_eval, "evaluate a model (and adapter) on a GLUE dev split"},
    {"generate", cmd_generate, "continue prompts with a causal LM: beam or greedy search"},
    {"train", cmd_train, "federated fine-tuning with forked clients and exact aggregation"},
    {"demo", cmd_demo, "fedit, ffa and fedex side by side on the embedded model"},
    {"export", cmd_export, "write a run's global model as a Hugging Face checkpoint"},
    {"score", cmd_score, "BLEU, NIST, ROUGE-L, CIDEr of generations as e2e-metrics computes them"},
    {"plot", cmd_plot, "draw runs as one SVG: dev metric, losses, deviation per layer"},
    {"table", cmd_table, "the paper's table of runs: best dev metric per method and task"},
    {"grid", cmd_grid, "every method on every task (the paper's grid), resumable, then table and plots"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: fedex COMMAND [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n`fedex help COMMAND` describes a command's options; `fedex --version` says which fedex this is.\n");
}

int main(int argc, char **argv) {
#ifndef FEDEX_CUDA
    /* `--device cuda` belongs to the CUDA build, fedex-cuda beside this program: hand over to it. */
    for (int i = 2; i < argc && strcmp(argv[i], "--"); i++)
        if ((!strcmp(argv[i], "--device") && i + 1 < argc && !strcmp(argv[i + 1], "cuda")) ||
            !strcmp(argv[i], "--device=cuda")) {
            char self[4096];
            ssize_t n = readlink("/proc/self/exe", self, sizeof self - 16);
            if (n > 0) {
                self[n] = 0;
                char *slash = strrchr(self, '/');
                strcpy(slash ? slash + 1 : self, "fedex-cuda");
                if (access(self, X_OK) == 0) execv(self, argv);
            }
            break; /* no CUDA build: the command says so */
        }
#endif
    /* In train and demo, the server and its clients are separate processes that each run OpenMP threads
     * on the same cores. Threads that spin while they wait would take the cores from each other (a run
     * is several times slower), so fedex asks for passive waiting. libgomp reads this once, at start:
     * set it and start again. If the restart fails, fedex goes on as it is. */
    if (!getenv("OMP_WAIT_POLICY") && argc > 1 && (!strcmp(argv[1], "train") || !strcmp(argv[1], "demo"))) {
        setenv("OMP_WAIT_POLICY", "passive", 1);
        execv("/proc/self/exe", argv);
    }
    if (argc < 2) { usage(stderr); return 2; }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
#ifdef FEDEX_CUDA
        printf("fedex %s (CPU and CUDA%s)\n", FX_VERSION, fx_mpi_built() ? "; MPI" : "");
#else
        printf("fedex %s (CPU%s)\n", FX_VERSION, fx_mpi_built() ? "; MPI" : "");
#endif
        return 0;
    }
    if (fx_is_help(argv[1]) || !strcmp(argv[1], "help")) {
        if (argc > 2) {
            char *hv[] = {argv[2], "--help", NULL};
            for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
                if (!strcmp(argv[2], commands[i].name)) return commands[i].fn(2, hv);
            fprintf(stderr, "fedex: no command '%s'\n", argv[2]);
            return 2;
        }
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "fedex: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
