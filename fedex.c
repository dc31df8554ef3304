/* fedex.c: the command line (one function per subcommand) and the federated orchestration (server,
 * forked clients, shared memory). The numeric work lives in the library files; this file parses
 * arguments, wires modules together and reports. */
#include "fedex.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static int is_help(const char *a) { return !strcmp(a, "-h") || !strcmp(a, "--help"); }

/* ============================================================================================
 * inspect
 * ============================================================================================ */

static const char inspect_usage[] =
    "usage: fedex inspect FILE\n"
    "Lists the tensors of the safetensors file FILE, after checking its header against the file: one line\n"
    "per tensor (name, dtype, shape, bytes), then the totals and the file's metadata.\n";

static int cmd_inspect(int argc, char **argv) {
    if (argc == 2 && is_help(argv[1])) {
        fputs(inspect_usage, stdout);
        return 0;
    }
    if (argc != 2 || argv[1][0] == '-') {
        fputs(inspect_usage, stderr);
        return 2;
    }
    fx_st_file f;
    if (fx_st_open(argv[1], &f) != 0) fx_die("%s", fx_err());

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

static const char tokenize_usage[] =
    "usage: fedex tokenize --model DIR [--max-length N] TEXT [TEXT2]\n"
    "       fedex tokenize --model DIR --task TASK --file F.tsv [--max-length N]\n"
    "Prints the token ids of <s> TEXT </s> (or <s> TEXT </s></s> TEXT2 </s>) on one line, space\n"
    "separated; with --file, one such line per row of a GLUE file, in file order. DIR holds vocab.json and\n"
    "merges.txt. --max-length truncates longest_first to N ids (default 128; 0 = no truncation).\n";

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
    const char *model = NULL, *task = NULL, *file = NULL, *text[2] = {NULL, NULL};
    int ntext = 0;
    long max_len = 128;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (is_help(a)) { fputs(tokenize_usage, stdout); return 0; }
        int has_val = !strcmp(a, "--model") || !strcmp(a, "--task") || !strcmp(a, "--file") ||
                      !strcmp(a, "--max-length");
        if (has_val && i + 1 >= argc) fx_die("tokenize: %s needs a value", a);
        if (!strcmp(a, "--model")) model = argv[++i];
        else if (!strcmp(a, "--task")) task = argv[++i];
        else if (!strcmp(a, "--file")) file = argv[++i];
        else if (!strcmp(a, "--max-length")) {
            char *end;
            const char *v = argv[++i];
            max_len = strtol(v, &end, 10);
            if (end == v || *end || max_len < 0 || max_len > 1000000)
                fx_die("tokenize: --max-length '%s' must be an integer in [0, 1000000]", v);
        } else if (a[0] == '-' && a[1] == '-') fx_die("tokenize: unknown option '%s' (see --help)", a);
        else if (ntext < 2) text[ntext++] = a;
        else fx_die("tokenize: at most two texts, got a third: '%s'", a);
    }
    if (!model) fx_die("tokenize: --model DIR is required (see --help)");
    if (file ? (!task || ntext) : (task || !ntext))
        fx_die("tokenize: give either TEXT [TEXT2], or --task and --file (see --help)");
    int room = (file ? 0 : ntext == 2) ? 4 : 2;
    if (max_len > 0 && max_len < room) fx_die("tokenize: --max-length %ld leaves no room for %d special tokens",
                                              max_len, room);

    fx_tokenizer *tok = fx_tok_load(model);
    if (!tok) fx_die("%s", fx_err());
    int32_t *ids = NULL;
    int n = 0, cap = 0;
    if (!file) {
        if (fx_tok_encode_seq(tok, text[0], text[1], (int)max_len, &ids, &n, &cap) != 0)
            fx_die("tokenize: text: %s", fx_err());
        print_ids(ids, n);
    } else {
        const fx_task *t = fx_task_find(task);
        if (!t) fx_die("tokenize: unknown task '%s'", task);
        fx_rows rows;
        if (fx_glue_read(t, file, &rows) != 0) fx_die("%s", fx_err());
        if (t->col_b >= 0 && max_len > 0 && max_len < 4)
            fx_die("tokenize: --max-length %ld leaves no room for a pair's 4 special tokens", max_len);
        for (int r = 0; r < rows.n; r++) {
            n = 0;
            if (fx_tok_encode_seq(tok, rows.a[r], rows.b ? rows.b[r] : NULL, (int)max_len, &ids, &n, &cap) != 0)
                fx_die("%s:%d: %s", file, rows.line[r], fx_err());
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
 * init, eval
 * ============================================================================================ */

/* An integer option's value in [lo, hi], or exit with a message naming the command and the option. */
static long option_long(const char *cmd, const char *opt, const char *v, long lo, long hi) {
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno || x < lo || x > hi)
        fx_die("%s: %s '%s' must be an integer in [%ld, %ld]", cmd, opt, v, lo, hi);
    return x;
}

/* FILE's folder (FILE itself names a file in it), into BUF. */
static void dir_of(const char *file, char *buf, size_t cap) {
    const char *slash = strrchr(file, '/');
    if (!slash) snprintf(buf, cap, ".");
    else snprintf(buf, cap, "%.*s", slash == file ? 1 : (int)(slash - file), file);
}

static const char init_usage[] =
    "usage: fedex init --config FILE --out DIR [--seed S] [--labels N]\n"
    "Writes a randomly initialised RoBERTa of FILE's shapes as a Hugging Face folder: DIR/model.safetensors\n"
    "(weights drawn as Hugging Face initialises them: normal(0, initializer_range), LayerNorm 1 and 0, zero\n"
    "biases), DIR/config.json, and vocab.json and merges.txt copied from beside FILE when they are there.\n"
    "  --seed S     the random stream (default 0): the same seed gives the same weights\n"
    "  --labels N   the classifier's labels (default: the config's id2label, else 2; 1 = regression)\n";

/* Copies vocab.json and merges.txt from FROM to TO (those present), so TO is a complete model folder.
 * Returns how many it copied, -1 on error. */
static int copy_tokenizer(const char *from, const char *to) {
    static const char *const names[2] = {"vocab.json", "merges.txt"};
    int copied = 0;
    for (int k = 0; k < 2; k++) {
        char src[4096], dst[4096], *data;
        size_t len;
        if ((size_t)snprintf(src, sizeof src, "%s/%s", from, names[k]) >= sizeof src ||
            (size_t)snprintf(dst, sizeof dst, "%s/%s", to, names[k]) >= sizeof dst) {
            fx_seterr("path too long: %s", to);
            return -1;
        }
        if (access(src, F_OK) != 0) continue; /* absent: nothing to copy; unreadable: an error below */
        int rc = fx_read_file(src, &data, &len) == 0 ? fx_write_file_atomic(dst, data, len) : -1;
        if (rc == 0) free(data);
        if (rc != 0) return -1;
        copied++;
    }
    return copied;
}

static int cmd_init(int argc, char **argv) {
    const char *config = NULL, *out = NULL;
    long seed = 0, labels = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (is_help(a)) { fputs(init_usage, stdout); return 0; }
        if (!strcmp(a, "--config") || !strcmp(a, "--out") || !strcmp(a, "--seed") || !strcmp(a, "--labels")) {
            if (i + 1 >= argc) fx_die("init: %s needs a value", a);
            const char *v = argv[++i];
            if (!strcmp(a, "--config")) config = v;
            else if (!strcmp(a, "--out")) out = v;
            else if (!strcmp(a, "--seed")) seed = option_long("init", a, v, 0, LONG_MAX);
            else labels = option_long("init", a, v, 1, 1000);
        } else fx_die("init: unknown argument '%s' (see --help)", a);
    }
    if (!config || !out) fx_die("init: --config FILE and --out DIR are required (see --help)");
    fx_config c;
    if (fx_config_load(config, &c) != 0) fx_die("%s", fx_err());
    if (labels) c.num_labels = (int)labels;
    /* No adapter: the folder is a base model; adapters are drawn when training starts. */
    fx_adapter_cfg a = {.kind = FX_LORA, .targets = 0, .r = 1, .alpha = 1};
    fx_model m;
    if (fx_model_create(&m, &c, &a, NULL) != 0) fx_die("%s: %s", config, fx_err());
    fx_model_init_base(&m, (uint64_t)seed);
    if (fx_model_save(&m, out, 0) != 0) fx_die("%s", fx_err());
    fx_model_free(&m);

    char dir[4096];
    dir_of(config, dir, sizeof dir);
    int copied = copy_tokenizer(dir, out);
    if (copied < 0) fx_die("%s", fx_err());
    printf("init: %s: %d layers, hidden %d, %d label%s, %zu base weights%s\n", out, c.layers, c.hidden,
           c.num_labels, c.num_labels == 1 ? " (regression)" : "s", fx_base_numel(&c), copied == 2 ? ", tokenizer copied" :
           " (no vocab.json/merges.txt beside the config: add them to use the folder)");
    return 0;
}

static const char eval_usage[] =
    "usage: fedex eval --model DIR --task T --data DIR [--adapter PATH] [--residual FILE]\n"
    "                  [--max-length 128] [--batch-size 32] [--logits OUT.safetensors] [--threads N]\n"
    "Evaluates a Hugging Face folder (config.json, model.safetensors, vocab.json, merges.txt) on the task's\n"
    "dev split (DATA/<task>/dev.tsv) and prints its metrics on one line.\n"
    "  --adapter PATH   a PEFT adapter: its folder (adapter_config.json + adapter_model.safetensors) or file\n"
    "  --residual FILE  tensors added into the base weights of the same names (a FedEx residual)\n"
    "  --logits OUT     also writes the logits (n, num_labels) as tensor 'logits' of a safetensors file\n"
    "  --threads N      CPU threads (default: OpenMP's)\n";

/* ============================================================================================
 * Evaluating a split (fedex eval, and the server after each round)
 * ============================================================================================ */

typedef float (*eval_step_fn)(void *backend, const fx_batch *b, float *logits);
static float cpu_eval_step(void *m, const fx_batch *b, float *logits) { return fx_model_step(m, b, 0, logits); }

static const fx_dataset *len_sort_data;
static int by_length(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    size_t li = len_sort_data->off[i + 1] - len_sort_data->off[i], lj = len_sort_data->off[j + 1] - len_sort_data->off[j];
    return li != lj ? (li < lj ? -1 : 1) : (i > j) - (i < j);
}

/* LOGITS (n, L) of every row of D, in D's order, and the mean loss over rows (NAN with fx_err() on a
 * bad batch). Rows go in batches of BS in order of length, so a batch pads little: the model ignores
 * padding, so only the time changes. */
static double eval_split(const fx_dataset *d, int bs, int pad, int L, eval_step_fn step, void *backend,
                         float *logits) {
    int n = d->n;
    int *order = fx_malloc(sizeof(int) * (size_t)(n ? n : 1));
    float *out = fx_malloc(sizeof(float) * (size_t)bs * (size_t)L);
    for (int i = 0; i < n; i++) order[i] = i;
    len_sort_data = d;
    qsort(order, (size_t)n, sizeof *order, by_length);
    fx_batch b = {0};
    double loss = 0;
    for (int i = 0; i < n && !isnan(loss); i += bs) {
        int nb = n - i < bs ? n - i : bs;
        fx_batch_fill(d, order + i, nb, pad, &b);
        float l = step(backend, &b, out);
        if (isnan(l)) { fx_seterr("rows %d to %d (by length): %s", i, i + nb - 1, fx_err()); loss = NAN; }
        loss += (double)l * nb;
        for (int j = 0; j < nb; j++) memcpy(logits + (size_t)order[i + j] * L, out + (size_t)j * L, sizeof(float) * L);
    }
    fx_batch_free(&b);
    free(out);
    free(order);
    return n ? loss / n : NAN;
}

static int cmd_eval(int argc, char **argv) {
    const char *model = NULL, *adapter = NULL, *residual = NULL, *task_name = NULL, *data = NULL,
               *logits_path = NULL;
    long max_len = 128, batch = 32, threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (is_help(a)) { fputs(eval_usage, stdout); return 0; }
        static const char *const opts[] = {"--model", "--adapter", "--residual", "--task", "--data",
                                           "--max-length", "--batch-size", "--logits", "--threads"};
        int o = 0;
        while (o < 9 && strcmp(a, opts[o])) o++;
        if (o == 9) fx_die("eval: unknown argument '%s' (see --help)", a);
        if (i + 1 >= argc) fx_die("eval: %s needs a value", a);
        const char *v = argv[++i];
        switch (o) {
        case 0: model = v; break;
        case 1: adapter = v; break;
        case 2: residual = v; break;
        case 3: task_name = v; break;
        case 4: data = v; break;
        case 5: max_len = option_long("eval", a, v, 4, 1000000); break;
        case 6: batch = option_long("eval", a, v, 1, 1000000); break;
        case 7: logits_path = v; break;
        default: threads = option_long("eval", a, v, 1, 4096); break;
        }
    }
    if (!model || !task_name || !data) fx_die("eval: --model, --task and --data are required (see --help)");
    if (threads) fx_set_threads((int)threads);
    const fx_task *task = fx_task_find(task_name);
    if (!task) fx_die("eval: unknown task '%s'", task_name);

    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/config.json", model) >= sizeof path) fx_die("eval: path too long");
    fx_config c;
    if (fx_config_load(path, &c) != 0) fx_die("%s", fx_err());
    if (c.num_labels != task->num_labels)
        fx_die("eval: %s has %d label%s, %s's config.json says %d (make one with fedex init --labels %d)",
               task->name, task->num_labels, task->num_labels == 1 ? " (regression)" : "s", model,
               c.num_labels, task->num_labels);
    /* RoBERTa's positions start after pad_id, so a row of T tokens needs pad_id + T < max_positions. */
    if (max_len > c.max_positions - c.pad_id - 1)
        fx_die("eval: --max-length %ld exceeds the model's %d positions (at most %d tokens)", max_len,
               c.max_positions, c.max_positions - c.pad_id - 1);

    fx_adapter_cfg a = {.kind = FX_LORA, .targets = 0, .r = 1, .alpha = 1};
    if (adapter && fx_adapter_config_load(adapter, &a) != 0) fx_die("%s", fx_err());
    fx_model m;
    if (fx_model_create(&m, &c, &a, NULL) != 0) fx_die("%s: %s", path, fx_err());
    fx_model_init_base(&m, 0);
    int head = fx_model_load(&m, model);
    if (head < 0) fx_die("%s", fx_err());
    if (adapter && fx_adapter_load(&m, adapter) != 0) fx_die("%s", fx_err());
    if (residual && fx_residual_load(&m, residual) != 0) fx_die("%s", fx_err());
    if (!head && !adapter)
        fprintf(stderr, "fedex: eval: %s has no classifier head of %d labels: the head is random\n", model,
                c.num_labels);

    fx_tokenizer *tok = fx_tok_load(model);
    if (!tok) fx_die("%s", fx_err());
    fx_dataset d;
    if (fx_dataset_build(task, data, "dev", tok, (int)max_len, &d) != 0) fx_die("%s", fx_err());
    int L = c.num_labels;
    float *logits = fx_malloc((size_t)d.n * (size_t)L * sizeof(float));
    double t0 = fx_now();
    double loss = eval_split(&d, (int)batch, fx_tok_pad(tok), L, cpu_eval_step, &m, logits);
    if (isnan(loss)) fx_die("eval: %s", fx_err());
    fx_metrics mt;
    fx_task_metrics(task, logits, d.labels, d.n, &mt);
    printf("%s dev: n %d, loss %.4f", task->name, d.n, loss);
    const char *names[5] = {"accuracy", "f1", "mcc", "pearson", "spearman"};
    double vals[5] = {mt.accuracy, mt.f1, mt.mcc, mt.pearson, mt.spearman};
    for (int k = 0; k < 5; k++)
        if (!isnan(vals[k])) printf(", %s %.4f", names[k], vals[k]);
    printf(" (%.1f s)\n", fx_now() - t0);
    if (logits_path) {
        fx_st_entry e = {.name = "logits", .dtype = FX_F32, .ndim = 2, .shape = {d.n, L}, .data = logits};
        const char *meta[] = {"task", task->name, NULL};
        if (fx_st_write(logits_path, &e, 1, meta) != 0) fx_die("%s", fx_err());
    }
    free(logits);
    fx_dataset_free(&d);
    fx_tok_free(tok);
    fx_model_free(&m);
    return 0;
}

/* ============================================================================================
 * Options of a federated run (train, demo, export)
 * ============================================================================================
 * One table describes every option: its spellings (ours, then the reference code's), its type, its
 * default and its help line. Parsing, `fedex help train` and the run's config.json all read it. */

typedef struct {
    const char *model, *task, *data, *out, *resume, *split, *targets, *agg_name, *residual;
    const char *device, *precision, *client_gpus;
    int num_clients, rounds, local_epochs, batch_size, max_len, lora_r, vera_r, threads;
    int micro_batch, eval_batch, server_gpu;
    double lr, lora_alpha, lora_dropout, d_initial, warmup_ratio, weight_decay;
    long long seed;
    int rslora, weighted, strict, save_clients;
    fx_agg_method agg;
} run_cfg;

typedef enum { OPT_INT, OPT_REAL, OPT_STR, OPT_FLAG, OPT_SEED } opt_kind;
typedef struct {
    const char *name, *alias;
    opt_kind kind;
    size_t off;
    const char *def;
    const char *help;
} opt_def;

#define RC(f) offsetof(run_cfg, f)
static const opt_def train_opts[] = {
    {"--model", NULL, OPT_STR, RC(model), NULL, "model folder (config.json, model.safetensors, vocab.json, merges.txt); none: the embedded demo model"},
    {"--task", NULL, OPT_STR, RC(task), NULL, "GLUE task (CoLA, SST-2, MRPC, STS-B, QQP, MNLI, QNLI, RTE, WNLI); none: the built-in synthetic task"},
    {"--data", NULL, OPT_STR, RC(data), NULL, "folder holding the GLUE task folders"},
    {"--agg", "--agg_type", OPT_STR, RC(agg_name), "fedex", "fedex|fedit|ffa|fedex-vera|fedit-vera|ffa-vera|centralized (also ours|normal|ffa|ours_vera|normal_vera|ffa_vera)"},
    {"--num-clients", "--num_clients", OPT_INT, RC(num_clients), "3", "number of clients"},
    {"--rounds", NULL, OPT_INT, RC(rounds), "50", "federated rounds"},
    {"--local-epochs", "--local_epochs", OPT_INT, RC(local_epochs), "3", "epochs over its shard each client trains per round"},
    {"--lr", NULL, OPT_REAL, RC(lr), "1e-3", "peak learning rate (AdamW)"},
    {"--weight-decay", "--weight_decay", OPT_REAL, RC(weight_decay), "0.01", "AdamW decoupled weight decay"},
    {"--batch-size", "--batch_size", OPT_INT, RC(batch_size), "128", "local batch size"},
    {"--micro-batch", NULL, OPT_INT, RC(micro_batch), "32", "rows per forward/backward (gradients accumulate to --batch-size; 0: whole batch)"},
    {"--eval-batch", NULL, OPT_INT, RC(eval_batch), "64", "rows per evaluation batch"},
    {"--max-seq-length", "--max_seq_length", OPT_INT, RC(max_len), "128", "truncate token sequences to this length"},
    {"--lora-r", "--lora_r", OPT_INT, RC(lora_r), "4", "LoRA rank"},
    {"--lora-alpha", "--lora_alpha", OPT_REAL, RC(lora_alpha), "8", "LoRA alpha (scale alpha/r)"},
    {"--lora-dropout", "--lora_dropout", OPT_REAL, RC(lora_dropout), "0.1", "dropout on the adapter input"},
    {"--rslora", NULL, OPT_FLAG, RC(rslora), NULL, "rank-stabilised scale alpha/sqrt(r)"},
    {"--vera-r", "--vera_r", OPT_INT, RC(vera_r), "256", "VeRA rank"},
    {"--d-initial", "--d_initial", OPT_REAL, RC(d_initial), "0.1", "VeRA lambda_d initial value"},
    {"--warmup-ratio", "--warmup_ratio", OPT_REAL, RC(warmup_ratio), "0.06", "linear warmup share of each round's steps (restarted every round)"},
    {"--seed", NULL, OPT_SEED, RC(seed), "42", "seed of splits, initialisation, shuffling and dropout"},
    {"--split", NULL, OPT_STR, RC(split), "iid", "iid | dirichlet:ALPHA (label-skewed)"},
    {"--weighted", NULL, OPT_FLAG, RC(weighted), NULL, "weight clients by sample count (the paper uses a plain mean)"},
    {"--targets", NULL, OPT_STR, RC(targets), "query,value", "adapted layers: query,key,value,attention.output.dense,intermediate.dense,output.dense"},
    {"--residual", NULL, OPT_STR, RC(residual), "factored", "how the FedEx residual travels: factored | dense"},
    {"--out", "--output_dir", OPT_STR, RC(out), NULL, "write metrics.jsonl, config.json, adapter, residual and checkpoints here"},
    {"--resume", NULL, OPT_STR, RC(resume), NULL, "continue the run saved in this folder"},
    {"--threads", NULL, OPT_INT, RC(threads), "0", "CPU threads in all, divided among parallel clients (0: all cores)"},
    {"--strict", NULL, OPT_FLAG, RC(strict), NULL, "stop when a client dies (default: finish the round over the survivors)"},
    {"--save-clients", NULL, OPT_FLAG, RC(save_clients), NULL, "also write each client's adapter and head every round"},
    {"--device", NULL, OPT_STR, RC(device), "cpu", "cpu | cuda"},
    {"--precision", NULL, OPT_STR, RC(precision), "bf16", "GPU matrix products: fp32 | tf32 | bf16"},
    {"--client-gpus", NULL, OPT_STR, RC(client_gpus), NULL, "GPU of each client, e.g. 0,0,1 (default: all on GPU 0)"},
    {"--server-gpu", NULL, OPT_INT, RC(server_gpu), "-1", "GPU for the server's evaluation (-1: CPU)"},
};
#define NOPTS ((int)(sizeof train_opts / sizeof train_opts[0]))

static int set_opt(run_cfg *c, const opt_def *o, const char *v) {
    char *end;
    void *p = (char *)c + o->off;
    switch (o->kind) {
    case OPT_INT: {
        errno = 0;
        long x = strtol(v, &end, 10);
        if (errno || *end || end == v || x < INT32_MIN || x > INT32_MAX) {
            fx_seterr("%s: '%s' is not a whole number", o->name, v);
            return -1;
        }
        *(int *)p = (int)x;
        return 0;
    }
    case OPT_SEED: {
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (errno || *end || end == v || x < 0) { fx_seterr("%s: '%s' is not a seed (0 or more)", o->name, v); return -1; }
        *(long long *)p = x;
        return 0;
    }
    case OPT_REAL: {
        errno = 0;
        double x = strtod(v, &end);
        if (errno || *end || end == v || !isfinite(x)) { fx_seterr("%s: '%s' is not a number", o->name, v); return -1; }
        *(double *)p = x;
        return 0;
    }
    case OPT_STR: *(const char **)p = v; return 0;
    case OPT_FLAG: *(int *)p = 1; return 0;
    }
    return -1;
}

static void opts_help(const char *cmd, const char *synopsis) {
    printf("usage: fedex %s %s\n\noptions (the reference code's spelling in parentheses):\n", cmd, synopsis);
    for (int i = 0; i < NOPTS; i++) {
        const opt_def *o = &train_opts[i];
        char name[64];
        snprintf(name, sizeof name, "%s%s", o->name,
                 o->kind == OPT_FLAG ? "" : o->kind == OPT_STR ? " S" : o->kind == OPT_REAL ? " X" : " N");
        printf("  %-20s %s", name, o->help);
        if (o->def) printf(" [default %s]", o->def);
        if (o->alias) printf(" (%s)", o->alias);
        printf("\n");
    }
}

/* Parses argv into C. SET[i] records which options were given, for the contradiction checks. */
static int parse_opts(int argc, char **argv, run_cfg *c, int *set) {
    memset(c, 0, sizeof *c);
    for (int i = 0; i < NOPTS; i++)
        if (train_opts[i].def && set_opt(c, &train_opts[i], train_opts[i].def) != 0) return -1;
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a], *val = NULL;
        char name[64];
        const char *eq = strchr(arg, '=');
        if (eq && (size_t)(eq - arg) < sizeof name) {
            memcpy(name, arg, (size_t)(eq - arg));
            name[eq - arg] = 0;
            val = eq + 1;
            arg = name;
        }
        int k = -1;
        for (int i = 0; i < NOPTS; i++)
            if (!strcmp(arg, train_opts[i].name) || (train_opts[i].alias && !strcmp(arg, train_opts[i].alias))) k = i;
        if (k < 0) {
            fx_seterr("unknown option '%s' (see `fedex help train`)", argv[a]);
            return -1;
        }
        if (set[k]) { fx_seterr("option %s given twice", train_opts[k].name); return -1; }
        set[k] = 1;
        if (train_opts[k].kind == OPT_FLAG) {
            if (val) { fx_seterr("%s takes no value", train_opts[k].name); return -1; }
        } else if (!val) {
            if (a + 1 >= argc) { fx_seterr("%s needs a value", train_opts[k].name); return -1; }
            val = argv[++a];
        }
        if (set_opt(c, &train_opts[k], val) != 0) return -1;
    }
    return 0;
}

static int opt_index(const char *name) {
    for (int i = 0; i < NOPTS; i++) if (!strcmp(train_opts[i].name, name)) return i;
    return -1;
}
#define WAS_SET(set, name) ((set)[opt_index(name)])

/* Ranges and contradictions: refuse what cannot be meant, with the reason. */
static int check_cfg(run_cfg *c, const int *set) {
    if (fx_agg_parse(c->agg_name, &c->agg) != 0) return -1;
    int vera = fx_agg_is_vera(c->agg);
    struct { int bad; const char *msg; } rules[] = {
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
        {c->threads < 0, "--threads must be 0 (all cores) or more"},
        {strcmp(c->residual, "factored") && strcmp(c->residual, "dense"), "--residual must be factored or dense"},
        {strcmp(c->device, "cpu") && strcmp(c->device, "cuda"), "--device must be cpu or cuda"},
        {strcmp(c->precision, "fp32") && strcmp(c->precision, "tf32") && strcmp(c->precision, "bf16"),
         "--precision must be fp32, tf32 or bf16"},
        {vera && (WAS_SET(set, "--lora-r") || WAS_SET(set, "--lora-alpha") || WAS_SET(set, "--rslora")),
         "--lora-r, --lora-alpha and --rslora apply to LoRA; VeRA methods take --vera-r and --d-initial"},
        {!vera && (WAS_SET(set, "--vera-r") || WAS_SET(set, "--d-initial")),
         "--vera-r and --d-initial apply to VeRA methods (fedex-vera, fedit-vera, ffa-vera)"},
        {c->agg == FX_AGG_CENTRAL && WAS_SET(set, "--num-clients") && c->num_clients != 1,
         "--agg centralized trains one client on all the data; it takes no --num-clients"},
        {c->agg == FX_AGG_CENTRAL && WAS_SET(set, "--split"), "--agg centralized does not split the data"},
        {!c->model && c->task && strcasecmp(c->task, "synthetic"),
         "--task needs --model: the embedded model trains only on the built-in synthetic task"},
        {c->model && !c->task, "--model needs --task"},
        {c->task && strcasecmp(c->task, "synthetic") && !c->data, "--task needs --data (the folder of GLUE task folders)"},
        {(c->precision && WAS_SET(set, "--precision") && !strcmp(c->device, "cpu")),
         "--precision applies to --device cuda (the CPU path is fp32)"},
        {(WAS_SET(set, "--client-gpus") || WAS_SET(set, "--server-gpu")) && !strcmp(c->device, "cpu"),
         "--client-gpus and --server-gpu apply to --device cuda"},
    };
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
 * Federated run: shared memory, forked clients, rounds
 * ============================================================================================
 * One POSIX shared-memory segment holds everything that moves between processes:
 *
 *   [ header | client slots (N) | base weights | global trainable | client trainable (N) | residual ]
 *
 * The frozen base weights live there once, so N clients cost one model plus N x (adapters, optimiser
 * state, activations). The segment is unlinked right after it is mapped: forked clients inherit the
 * mapping, and nothing is left in /dev/shm whatever happens to the processes.
 *
 * Each client is a forked process with two pipes: the server writes a round number into one, the
 * client answers one byte on the other when its adapters are in its slot. A client that dies closes
 * its pipe, so the server sees end-of-file at once (never a timeout). The server must not start an
 * OpenMP team (nor, on the GPU path, a CUDA context) before forking: neither survives fork(). */

typedef struct {
    int64_t samples;                 /* size of the client's shard */
    int64_t steps_done, steps_total; /* progress of the current round */
    int64_t samples_done;            /* rows trained on so far this round */
    double t_start;                  /* fx_now() when the round began (CLOCK_MONOTONIC: one clock for all) */
    double loss_sum;                 /* sum of batch losses so far this round */
    double train_loss, seconds;      /* of the finished round */
    char err[256];                   /* why the client failed, when it answers 'e' */
} client_slot;

typedef struct {
    /* configuration */
    run_cfg cfg;
    fx_config mc;
    fx_adapter_cfg ac;
    const fx_task *task;
    int n;                           /* clients */
    /* data */
    fx_tokenizer *tok;
    fx_dataset train, dev;
    int **rows, *counts;
    int pad_id;
    /* shared memory */
    void *shm; size_t shm_len;
    client_slot *slot;               /* (n) */
    float *base;                     /* (fx_base_numel) frozen weights, W0 with residuals added */
    float *global;                   /* (P) global trainable state */
    float **client;                  /* n x (P) each client's trained state */
    float *msg;                      /* the last round's residual of every adapted layer, as factors
                                        (U, V) or dense R, at msg_off[k]: what a GPU client rebuilds */
    size_t *msg_off;                 /* (nadapted) */
    int *resid_info;                 /* shared: [0] round of the residual in msg, [1] its q */
    float *tmp;                      /* server scratch: one layer's factors (--residual dense) */
    int *gpu_of;                     /* (n) device of each client (--client-gpus) */
    size_t P;
    /* server */
    fx_model srv;                    /* base = shared base, evaluates the global model */
    float *prev_global;
    float *w0_orig;                  /* adapted layers' original W0, concatenated */
    float *r_acc, *r_old;            /* FedEx's accumulated residual R (same layout), now and before the
                                        round: the shared base holds W0 + R for the forward pass */
    double *err_work;
    pid_t *pid; int *cmd_fd, *res_fd, *alive;
    /* results */
    int round0;                      /* rounds already done (resume) */
    double best; int best_round;
    char **lines; int nlines;        /* metrics.jsonl */
    double *hist_metric, *hist_err;  /* per round, for `fedex demo` */
    int quiet;                       /* `fedex demo`: one line per round, no per-client lines */
    int round_now;
#ifdef FEDEX_CUDA
    fx_gpu *srv_gpu;                 /* --server-gpu: the server's device copy, for evaluation */
#endif
} fed_run;

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) { interrupted = sig; }

static size_t align64(size_t x) { return (x + 63) & ~(size_t)63; }

/* The embedded model: a small RoBERTa with random weights for the built-in synthetic task, so a fresh
 * clone shows a real run without downloads. */
static void embedded_config(fx_config *c, int max_len) {
    memset(c, 0, sizeof *c);
    c->vocab_size = 24; c->hidden = 32; c->layers = 2; c->heads = 4; c->intermediate = 64;
    c->max_positions = max_len + 2; c->type_vocab_size = 1; c->pad_id = 1; c->num_labels = 2;
    c->layer_norm_eps = 1e-5f; c->hidden_dropout = 0.1f; c->attention_dropout = 0.1f;
    c->classifier_dropout = 0.1f; c->initializer_range = 0.02f;
}
#define SYNTH_TRAIN 1200
#define SYNTH_DEV 400
#define SYNTH_LEN 32

static uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
    fx_rng r;
    fx_rng_seed(&r, seed ^ (a * 0x9e3779b97f4a7c15ULL) ^ (b * 0xc2b2ae3d27d4eb4fULL) ^ (c * 0x165667b19e3779f9ULL));
    return fx_rng_u64(&r);
}

/* Bytes that would cross a network each round for one client: the trained tensors up (FFA's frozen A or
 * lambda_d stays home), the global ones down, plus FedEx's residual as factors or as dense matrices. */
static void comm_bytes(const fed_run *R, int nclients, int64_t *up, int64_t *down) {
    const fx_model *m = &R->srv;
    int64_t trained = (int64_t)m->head_n;
    int64_t resid = 0;
    for (int k = 0; k < m->nadapted; k++) {
        const fx_adapted *ad = &m->ad[k];
        int64_t a = m->a.kind == FX_LORA ? (int64_t)m->a.r * ad->in : m->a.r;
        int64_t b = m->a.kind == FX_LORA ? (int64_t)ad->out * m->a.r : ad->out;
        trained += b + (m->a.freeze_a || m->a.freeze_d ? 0 : a);
        if (fx_agg_is_exact(R->cfg.agg)) {
            int64_t q = fx_agg_residual_rank(m, nclients);
            if (!strcmp(R->cfg.residual, "dense")) resid += (int64_t)ad->out * ad->in;
            else if (m->a.kind == FX_LORA) resid += q * (ad->out + ad->in);
            else resid += (int64_t)ad->out * q; /* VeRA: U only, V is the shared frozen A */
        }
    }
    *up = 4 * trained + 8;
    *down = 4 * (trained + resid);
}

/* ---------------------------------------------------------------- client process */

static _Noreturn void client_exit_error(fed_run *R, int c, const char *msg) {
    snprintf(R->slot[c].err, sizeof R->slot[c].err, "%s", msg);
    char e = 'e';
    if (write(R->res_fd[c], &e, 1) != 1) { /* the server is gone; nothing to tell */ }
    _exit(1);
}

static void parse_fault(int c, int *kill_round) {
    /* Fault injection for the tests: FEDEX_FAULT=kill:C:R makes client C kill itself in round R. */
    const char *f = getenv("FEDEX_FAULT");
    int fc, fr;
    *kill_round = -1;
    if (f && sscanf(f, "kill:%d:%d", &fc, &fr) == 2 && fc == c) *kill_round = fr;
}

#ifdef FEDEX_CUDA
/* A GPU client keeps its own device copy of W0: each round it adds the residual the server published
 * in shared memory (FedEx), rebuilt on the device from the factors (or taken dense). */
static void gpu_apply_residual(fed_run *R, fx_gpu *g, const fx_model *m, int c) {
    int q = R->resid_info[1];
    for (int k = 0; k < m->nadapted; k++) {
        const float *msg = R->msg + R->msg_off[k];
        int rc = q ? fx_gpu_add_residual_factored(g, k, msg, msg + (size_t)m->ad[k].out * q, q, 1.0f)
                   : fx_gpu_add_residual(g, k, msg, 1.0f);
        if (rc != 0) client_exit_error(R, c, fx_err());
    }
}

static float gpu_eval_step(void *g, const fx_batch *b, float *logits) { return fx_gpu_step(g, b, 0, logits); }

static fx_gpu *gpu_open(const fx_model *m, int device, const char *precision, char *why, size_t n) {
    int prec;
    if (fx_gpu_probe(why, n) <= 0) return NULL;
    if (fx_gpu_precision_parse(precision, &prec) != 0) { snprintf(why, n, "%s", fx_err()); return NULL; }
    fx_gpu *g = fx_gpu_create(m, device, prec);
    if (!g) snprintf(why, n, "%s", fx_err());
    return g;
}
#endif

static _Noreturn void client_main(fed_run *R, int c, int threads) {
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    fx_set_threads(threads);
    int kill_round;
    parse_fault(c, &kill_round);
    const run_cfg *cfg = &R->cfg;
    fx_model m;
    if (fx_model_create(&m, &R->mc, &R->ac, R->base) != 0) client_exit_error(R, c, fx_err());
    fx_model_init_adapters(&m, (uint64_t)cfg->seed); /* VeRA's shared projections, as the server's */
    int nrows = R->counts[c];
    int *order = fx_malloc(sizeof(int) * (size_t)(nrows ? nrows : 1));
    float *acc = fx_malloc(sizeof(float) * R->P);
    int mb = cfg->micro_batch > 0 && cfg->micro_batch < cfg->batch_size ? cfg->micro_batch : cfg->batch_size;
    fx_batch batch = {0};
#ifdef FEDEX_CUDA
    /* this client's own CUDA context, created after the fork */
    fx_gpu *g = NULL;
    int applied = R->round0; /* the device copy of W0 starts from the shared base, residuals included */
    if (!strcmp(cfg->device, "cuda")) {
        char why[512];
        g = gpu_open(&m, R->gpu_of[c], cfg->precision, why, sizeof why);
        if (!g) client_exit_error(R, c, why);
        mb = cfg->batch_size; /* the whole batch fits on a GPU */
    }
#else
    void *g = NULL;
#endif
    for (;;) {
        int32_t round;
        ssize_t k = read(R->cmd_fd[c], &round, sizeof round);
        if (k != (ssize_t)sizeof round || round < 0) _exit(0);
        double t0 = fx_now();
        client_slot *s = &R->slot[c];
        if (g) {
#ifdef FEDEX_CUDA
            if (R->resid_info[0] > applied) gpu_apply_residual(R, g, &m, c);
            applied = round - 1;
            fx_gpu_set_train(g, R->global);
            fx_gpu_adamw_reset(g);
            fx_gpu_seed(g, mix_seed((uint64_t)cfg->seed, (uint64_t)round, (uint64_t)c, 1));
#endif
        } else {
            memcpy(m.train.data, R->global, sizeof(float) * R->P);
            fx_adamw_reset(&m);
            fx_rng_seed(&m.drop, mix_seed((uint64_t)cfg->seed, (uint64_t)round, (uint64_t)c, 1));
        }
        int per_epoch = (nrows + cfg->batch_size - 1) / cfg->batch_size;
        int total = per_epoch * cfg->local_epochs;
        int warmup = (int)ceil(cfg->warmup_ratio * total);
        s->samples = nrows; s->steps_done = 0; s->steps_total = total; s->loss_sum = 0;
        s->samples_done = 0; s->t_start = t0;
        int step = 0;
        for (int e = 0; e < cfg->local_epochs; e++) {
            /* a fresh shuffle of the shard every epoch, seeded by (seed, round, client, epoch) */
            fx_rng sh;
            fx_rng_seed(&sh, mix_seed((uint64_t)cfg->seed, (uint64_t)round, (uint64_t)c, 100 + (uint64_t)e));
            memcpy(order, R->rows[c], sizeof(int) * (size_t)nrows);
            for (int i = nrows - 1; i > 0; i--) {
                int j = (int)(fx_rng_u64(&sh) % (uint64_t)(i + 1));
                int t = order[i]; order[i] = order[j]; order[j] = t;
            }
            for (int b0 = 0; b0 < nrows; b0 += cfg->batch_size) {
                int bn = nrows - b0 < cfg->batch_size ? nrows - b0 : cfg->batch_size;
                float lr = fx_linear_schedule(step, warmup, total, (float)cfg->lr);
                /* gradient of the mean loss over the batch = sum over micro-batches of (rows/bn) x theirs */
                double loss = 0;
                for (int u = 0; u < bn; u += mb) {
                    int un = bn - u < mb ? bn - u : mb;
                    fx_batch_fill(&R->train, order + b0 + u, un, R->pad_id, &batch);
#ifdef FEDEX_CUDA
                    if (g) { loss = fx_gpu_step(g, &batch, 1, NULL); break; }
#endif
                    loss += (double)un / bn * fx_model_step(&m, &batch, 1, NULL);
                    if (un == bn) break;
                    float f = (float)un / (float)bn;
                    if (u == 0) for (size_t j = 0; j < R->P; j++) acc[j] = f * m.grad[j];
                    else for (size_t j = 0; j < R->P; j++) acc[j] += f * m.grad[j];
                    if (u + un >= bn) memcpy(m.grad, acc, sizeof(float) * R->P);
                }
                if (!isfinite(loss)) client_exit_error(R, c, "training loss is not finite (lower --lr?)");
#ifdef FEDEX_CUDA
                if (g) fx_gpu_adamw(g, lr, (float)cfg->weight_decay);
                else
#endif
                fx_adamw_update(&m, lr, (float)cfg->weight_decay);
                step++;
                s->loss_sum += loss;
                s->steps_done = step;
                s->samples_done += bn;
                if (round == kill_round) raise(SIGKILL);
            }
        }
#ifdef FEDEX_CUDA
        if (g) fx_gpu_get_train(g, R->client[c]);
        else
#endif
        memcpy(R->client[c], m.train.data, sizeof(float) * R->P);
        s->train_loss = step ? s->loss_sum / step : NAN;
        s->seconds = fx_now() - t0;
        char ok = 'o';
        if (write(R->res_fd[c], &ok, 1) != 1) _exit(1);
    }
}

static int fork_clients(fed_run *R, int threads_total) {
    int par = R->n;
    int per = threads_total / par > 0 ? threads_total / par : 1;
    for (int c = 0; c < R->n; c++) {
        int cmd[2], res[2];
        if (pipe(cmd) != 0 || pipe(res) != 0) { fx_seterr("pipe: %s", strerror(errno)); return -1; }
        fflush(stdout); fflush(stderr);
        pid_t p = fork();
        if (p < 0) { fx_seterr("fork: %s (client %d)", strerror(errno), c); return -1; }
        if (p == 0) {
            /* keep only this client's ends, so that every other pipe sees EOF when its owner dies */
            for (int o = 0; o < c; o++) { close(R->cmd_fd[o]); close(R->res_fd[o]); }
            close(cmd[1]); close(res[0]);
            R->cmd_fd[c] = cmd[0]; R->res_fd[c] = res[1];
            client_main(R, c, per);
        }
        close(cmd[0]); close(res[1]);
        R->pid[c] = p; R->cmd_fd[c] = cmd[1]; R->res_fd[c] = res[0]; R->alive[c] = 1;
    }
    return 0;
}

static void stop_clients(fed_run *R, int sig) {
    for (int c = 0; c < R->n; c++) {
        if (!R->alive[c]) continue;
        if (sig) kill(R->pid[c], sig);
        else { int32_t q = -1; if (write(R->cmd_fd[c], &q, sizeof q) < 0) kill(R->pid[c], SIGTERM); }
    }
    for (int c = 0; c < R->n; c++)
        if (R->alive[c]) { waitpid(R->pid[c], NULL, 0); R->alive[c] = 0; close(R->cmd_fd[c]); close(R->res_fd[c]); }
}

static void describe_death(pid_t pid, char *buf, size_t n) {
    int st = 0;
    if (waitpid(pid, &st, 0) < 0) snprintf(buf, n, "vanished");
    else if (WIFSIGNALED(st)) snprintf(buf, n, "killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else snprintf(buf, n, "exited with status %d", WEXITSTATUS(st));
}

/* ---------------------------------------------------------------- progress display */

static void show_progress(fed_run *R, int round, const int *pending, int tty, int *drawn) {
    if (!tty) return;
    if (*drawn) fprintf(stderr, "\033[%dA", *drawn);
    *drawn = 0;
    for (int c = 0; c < R->n; c++) {
        if (!R->alive[c] && !pending[c]) continue;
        client_slot *s = &R->slot[c];
        int64_t done = s->steps_done, tot = s->steps_total > 0 ? s->steps_total : 1;
        char bar[21];
        int fill = (int)(20 * done / tot);
        for (int i = 0; i < 20; i++) bar[i] = i < fill ? '#' : '.';
        bar[20] = 0;
        double dt = fx_now() - s->t_start;
        fprintf(stderr, "\r\033[Kround %d client %d [%s] %3d%% %6.0f samples/s loss %.4f\n", round, c, bar,
                (int)(100 * done / tot), done && dt > 0 ? (double)s->samples_done / dt : 0.0,
                done ? s->loss_sum / (double)done : 0.0);
        (*drawn)++;
    }
    fflush(stderr);
}

/* ---------------------------------------------------------------- server: one round */

/* Waits for every pending client: 'o' = its state is in its slot, 'e' = it failed (message in the
 * slot), end-of-file = it died. Returns -1 on interrupt, a client error, or a death under --strict. */
static int wait_clients(fed_run *R, int round, int *pending, int *done) {
    int tty = isatty(2), drawn = 0;
    for (;;) {
        struct pollfd pf[256];
        int map[256], np = 0;
        for (int c = 0; c < R->n; c++)
            if (pending[c]) { pf[np].fd = R->res_fd[c]; pf[np].events = POLLIN; map[np++] = c; }
        if (interrupted) return -1;
        if (np == 0) break;
        show_progress(R, round, pending, tty, &drawn);
        int r = poll(pf, (nfds_t)np, tty ? 250 : -1);
        if (interrupted) return -1;
        if (r < 0) {
            if (errno == EINTR) continue;
            fx_seterr("poll: %s", strerror(errno));
            return -1;
        }
        for (int i = 0; i < np; i++) {
            if (!pf[i].revents) continue;
            int c = map[i];
            char ch = 0;
            ssize_t k = read(R->res_fd[c], &ch, 1);
            pending[c] = 0;
            if (k == 1 && ch == 'o') {
                done[c] = 1;
                if (!tty && !R->quiet) {
                    client_slot *s = &R->slot[c];
                    printf("round %d client %d: %lld samples x %d epochs in %.2f s (%.1f samples/s), loss %.4f\n",
                           round, c, (long long)s->samples, R->cfg.local_epochs, s->seconds,
                           (double)s->samples * R->cfg.local_epochs / s->seconds, s->train_loss);
                }
                continue;
            }
            if (k == 1 && ch == 'e') {
                fx_seterr("client %d failed in round %d: %s", c, round, R->slot[c].err);
                waitpid(R->pid[c], NULL, 0);
                R->alive[c] = 0;
                return -1;
            }
            char why[128];
            describe_death(R->pid[c], why, sizeof why);
            R->alive[c] = 0;
            close(R->cmd_fd[c]); close(R->res_fd[c]);
            fprintf(stderr, "fedex: client %d (pid %d) died in round %d: %s\n", c, (int)R->pid[c], round, why);
            if (R->cfg.strict) {
                fx_seterr("client %d died in round %d (--strict): stopping; the last complete round is saved", c, round);
                return -1;
            }
        }
    }
    show_progress(R, round, pending, tty, &drawn);
    return 0;
}

/* Evaluates the global model (server's model with the global state) on the dev split, on the CPU or,
 * with --server-gpu, on a device copy that receives the residual as the clients' copies do. */
static double evaluate(fed_run *R, fx_metrics *mt) {
    fx_model *m = &R->srv;
    memcpy(m->train.data, R->global, sizeof(float) * R->P);
#ifdef FEDEX_CUDA
    if (R->srv_gpu) {
        if (fx_agg_is_exact(R->cfg.agg) && R->resid_info[0] == R->round_now) {
            int q = R->resid_info[1];
            for (int k = 0; k < m->nadapted; k++) {
                const float *msg = R->msg + R->msg_off[k];
                if (q) fx_gpu_add_residual_factored(R->srv_gpu, k, msg, msg + (size_t)m->ad[k].out * q, q, 1.0f);
                else fx_gpu_add_residual(R->srv_gpu, k, msg, 1.0f);
            }
        }
        fx_gpu_set_train(R->srv_gpu, R->global);
    }
#endif
    int L = R->mc.num_labels;
    float *logits = fx_malloc(sizeof(float) * (size_t)(R->dev.n ? R->dev.n : 1) * L);
    eval_step_fn step = cpu_eval_step;
    void *backend = m;
#ifdef FEDEX_CUDA
    if (R->srv_gpu) { step = gpu_eval_step; backend = R->srv_gpu; }
#endif
    double loss = eval_split(&R->dev, R->cfg.eval_batch, R->pad_id, L, step, backend, logits);
    fx_task_metrics(R->task, logits, R->dev.labels, R->dev.n, mt);
    free(logits);
    return loss;
}

/* FedIT mean, then (FedEx) the residual into W0, then the aggregation error of every adapted layer. */
static void aggregate(fed_run *R, const int *done, double *err, double *agg_seconds) {
    double t0 = fx_now();
    fx_model *m = &R->srv;
    const float *cl[256];
    double w[256], wsum = 0;
    int n = 0;
    for (int c = 0; c < R->n; c++)
        if (done[c]) { cl[n] = R->client[c]; w[n] = R->cfg.weighted ? (double)R->slot[c].samples : 1.0; wsum += w[n]; n++; }
    for (int i = 0; i < n; i++) w[i] /= wsum;
    memcpy(R->prev_global, R->global, sizeof(float) * R->P);
    fx_agg_mean(R->global, cl, w, n, R->P);
    size_t woff = 0;
    for (int k = 0; k < m->nadapted; k++) {
        const fx_adapted *ad = &m->ad[k];
        size_t len = (size_t)ad->out * ad->in;
        float *racc = R->r_acc + woff;
        memcpy(R->r_old + woff, racc, sizeof(float) * len);
        if (fx_agg_is_exact(R->cfg.agg)) {
            /* The residual accumulates in its own fp32 buffer, where rounding is relative to |R|, not to
             * |W0|: folding it into W0 directly would cost half an ulp of W0 per element every round,
             * which is large next to a small round's update. The shared base then holds W0 + R. */
            /* factored: U, V are the message; dense: the server multiplies them out and R is */
            float *msg = R->msg + R->msg_off[k];
            int dense = !strcmp(R->cfg.residual, "dense");
            float *U = dense ? R->tmp : msg;
            int q = fx_agg_residual_rank(m, n);
            float *V = U + (size_t)ad->out * q;
            fx_agg_residual_factors(m, k, cl, w, n, R->global, U, V);
            if (dense) {
                fx_matmul(0, 0, ad->out, ad->in, q, 1.0f, U, q, V, ad->in, 0.0f, msg, ad->in);
                for (size_t j = 0; j < len; j++) racc[j] += msg[j];
            } else {
                fx_matmul(0, 0, ad->out, ad->in, q, 1.0f, U, q, V, ad->in, 1.0f, racc, ad->in);
            }
            R->resid_info[1] = dense ? 0 : q;
            float *W = R->base + ad->w_off;
            const float *W0 = R->w0_orig + woff;
            for (size_t j = 0; j < len; j++) W[j] = W0[j] + racc[j];
        }
        woff += len;
    }
    if (fx_agg_is_exact(R->cfg.agg)) R->resid_info[0] = R->round_now;
    *agg_seconds = fx_now() - t0;
    woff = 0;
    for (int k = 0; k < m->nadapted; k++) {
        const fx_adapted *ad = &m->ad[k];
        err[k] = fx_agg_error(m, k, R->r_old + woff, R->r_acc + woff, cl, w, n, R->global,
                              R->prev_global, R->err_work);
        woff += (size_t)ad->out * ad->in;
    }
}

/* ---------------------------------------------------------------- outputs */


static void json_num(FILE *f, double x) {
    if (isfinite(x)) fprintf(f, "%.9g", x);
    else fputs("null", f);
}

static int write_run_config(const fed_run *R) {
    char *buf = NULL; size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) { fx_seterr("open_memstream: %s", strerror(errno)); return -1; }
    fprintf(f, "{\n  \"fedex_run\": 1");
    for (int i = 0; i < NOPTS; i++) {
        const opt_def *o = &train_opts[i];
        if (!strcmp(o->name, "--resume") || !strcmp(o->name, "--threads") || !strcmp(o->name, "--out")) continue;
        const void *p = (const char *)&R->cfg + o->off;
        fprintf(f, ",\n  \"%s\": ", o->name + 2);
        switch (o->kind) {
        case OPT_INT: fprintf(f, "%d", *(const int *)p); break;
        case OPT_FLAG: fprintf(f, "%s", *(const int *)p ? "true" : "false"); break;
        case OPT_SEED: fprintf(f, "%lld", *(const long long *)p); break;
        case OPT_REAL: json_num(f, *(const double *)p); break;
        case OPT_STR:
            if (*(const char *const *)p) { char *q = fx_json_quote(*(const char *const *)p); fputs(q, f); free(q); }
            else fputs("null", f);
            break;
        }
    }
    fprintf(f, "\n}\n");
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", R->cfg.out);
    return fx_write_memstream_atomic(f, &buf, &len, path);
}

/* Reads a run's config.json back into C (for --resume and export). Strings point into J. */
static int read_run_config(const char *dir, run_cfg *c, fx_json *j) {
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    if (fx_json_load(path, j) != 0) return -1;
    if (!fx_json_get(j, "fedex_run")) { fx_seterr("%s: not the config.json of a fedex run", path); return -1; }
    memset(c, 0, sizeof *c);
    for (int i = 0; i < NOPTS; i++)
        if (train_opts[i].def && set_opt(c, &train_opts[i], train_opts[i].def) != 0) return -1;
    for (int i = 0; i < NOPTS; i++) {
        const opt_def *o = &train_opts[i];
        const fx_json *v = fx_json_get(j, o->name + 2);
        if (!v) continue;
        void *p = (char *)c + o->off;
        int ok = 1;
        switch (o->kind) {
        case OPT_INT: ok = v->type == FX_JNUM && v->is_int; if (ok) *(int *)p = (int)v->inum; break;
        case OPT_SEED: ok = v->type == FX_JNUM && v->is_int; if (ok) *(long long *)p = v->inum; break;
        case OPT_FLAG: ok = v->type == FX_JBOOL; if (ok) *(int *)p = v->boolean; break;
        case OPT_REAL: ok = v->type == FX_JNUM; if (ok) *(double *)p = v->num; break;
        case OPT_STR:
            ok = v->type == FX_JSTR || v->type == FX_JNULL;
            if (ok) *(const char **)p = v->type == FX_JSTR ? v->str : NULL;
            break;
        }
        if (!ok) { fx_seterr("%s: \"%s\" has the wrong type", path, o->name + 2); return -1; }
    }
    return fx_agg_parse(c->agg_name, &c->agg);
}

/* The adapted layers' current W0 minus their original W0: add it to the base checkpoint's weight of the
 * same name to get FedEx's merged frozen weight. */
/* One entry per adapted layer, pointing into the accumulated residual, named PRE + layer + POST. */
static void residual_entries(const fed_run *R, const char *pre, const char *post, fx_st_entry *e, char (*names)[128]) {
    const fx_model *m = &R->srv;
    size_t woff = 0;
    for (int k = 0; k < m->nadapted; k++) {
        const fx_adapted *ad = &m->ad[k];
        snprintf(names[k], sizeof names[k], "%s%s%s", pre, ad->name, post);
        e[k].name = names[k]; e[k].dtype = FX_F32; e[k].ndim = 2;
        e[k].shape[0] = ad->out; e[k].shape[1] = ad->in; e[k].data = R->r_acc + woff;
        woff += (size_t)ad->out * ad->in;
    }
}

static int write_residual(const fed_run *R, const char *path) {
    int n = R->srv.nadapted;
    fx_st_entry *e = fx_calloc((size_t)n, sizeof *e);
    char (*names)[128] = fx_calloc((size_t)n, sizeof *names);
    residual_entries(R, "roberta.", ".weight", e, names);
    const char *meta[] = {"format", "fedex-residual", "note", "merged weight = base weight + this tensor", NULL};
    int rc = fx_st_write(path, e, n, meta);
    free(names); free(e);
    return rc;
}

/* The checkpoint that --resume reads: the global state, the accumulated residual of every adapted layer,
 * and the round. It is written last, so a run stopped at any point resumes from a complete round. */
static int write_state(const fed_run *R, int round) {
    const fx_model *m = &R->srv;
    fx_st_entry *e = fx_calloc((size_t)m->nadapted + 1, sizeof *e);
    char (*names)[128] = fx_calloc((size_t)m->nadapted, sizeof *names);
    e[0].name = "global"; e[0].dtype = FX_F32; e[0].ndim = 1; e[0].shape[0] = (int64_t)R->P; e[0].data = R->global;
    residual_entries(R, "residual.", "", e + 1, names);
    char rs[32], bs[64], br[32], path[4096];
    snprintf(rs, sizeof rs, "%d", round);
    snprintf(bs, sizeof bs, "%.17g", R->best);
    snprintf(br, sizeof br, "%d", R->best_round);
    const char *meta[] = {"round", rs, "best", bs, "best_round", br, NULL};
    snprintf(path, sizeof path, "%s/state.safetensors", R->cfg.out);
    int rc = fx_st_write(path, e, m->nadapted + 1, meta);
    free(names); free(e);
    return rc;
}

static int save_adapter_from(fed_run *R, const float *state, const char *dir) {
    /* the server's model carries the layout; borrow it with STATE as its trainable buffer */
    float *keep = R->srv.train.data;
    R->srv.train.data = (float *)state;
    int rc = fx_mkdir_p(dir) == 0 ? fx_adapter_save(&R->srv, dir, R->cfg.model) : -1;
    R->srv.train.data = keep;
    return rc;
}

static int write_outputs(fed_run *R, int round, const int *done) {
    char path[4096];
    if (R->cfg.save_clients) {
        for (int c = 0; c < R->n; c++) {
            if (!done[c]) continue;
            snprintf(path, sizeof path, "%s/rounds/%d/client_%d", R->cfg.out, round, c);
            if (save_adapter_from(R, R->client[c], path) != 0) return -1;
        }
        snprintf(path, sizeof path, "%s/rounds/%d/global", R->cfg.out, round);
        if (save_adapter_from(R, R->global, path) != 0) return -1;
        snprintf(path, sizeof path, "%s/rounds/%d/global/residual.safetensors", R->cfg.out, round);
        if (write_residual(R, path) != 0) return -1;
    }
    if (save_adapter_from(R, R->global, R->cfg.out) != 0) return -1;
    snprintf(path, sizeof path, "%s/residual.safetensors", R->cfg.out);
    if (write_residual(R, path) != 0) return -1;
    size_t len = 0;
    for (int i = 0; i < R->nlines; i++) len += strlen(R->lines[i]) + 1;
    char *text = fx_malloc(len + 1), *p = text;
    for (int i = 0; i < R->nlines; i++) p += sprintf(p, "%s\n", R->lines[i]);
    snprintf(path, sizeof path, "%s/metrics.jsonl", R->cfg.out);
    int rc = fx_write_file_atomic(path, text, len);
    free(text);
    if (rc != 0) return -1;
    return write_state(R, round);
}

/* Memory of the whole run (server + clients), proportional set size so the shared base counts once. */
static double run_pss_mb(const fed_run *R) {
    double kb = 0;
    for (int c = -1; c < R->n; c++) {
        if (c >= 0 && !R->alive[c]) continue;
        char path[64], line[256];
        snprintf(path, sizeof path, "/proc/%d/smaps_rollup", c < 0 ? (int)getpid() : (int)R->pid[c]);
        FILE *f = fopen(path, "r");
        if (!f) return NAN;
        while (fgets(line, sizeof line, f)) {
            long v;
            if (sscanf(line, "Pss: %ld kB", &v) == 1) kb += v;
        }
        fclose(f);
    }
    return kb / 1024.0;
}

static char *metrics_line(fed_run *R, int round, const int *done, const fx_metrics *mt, double dev_loss, const double *err,
                          double secs, double agg_s, double eval_s, double clients_s) {
    char *buf = NULL; size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) fx_die("open_memstream: %s", strerror(errno));
    int n = 0;
    for (int c = 0; c < R->n; c++) n += done[c];
    int64_t up, down;
    comm_bytes(R, n, &up, &down);
    fprintf(f, "{\"round\": %d, \"agg\": \"%s\", \"clients\": [", round, fx_agg_name(R->cfg.agg));
    int first = 1;
    for (int c = 0; c < R->n; c++) {
        if (!done[c]) continue;
        fprintf(f, "%s{\"id\": %d, \"samples\": %lld, \"train_loss\": ", first ? "" : ", ", c, (long long)R->slot[c].samples);
        json_num(f, R->slot[c].train_loss);
        fprintf(f, ", \"seconds\": %.3f}", R->slot[c].seconds);
        first = 0;
    }
    fprintf(f, "], \"dead_clients\": [");
    first = 1;
    for (int c = 0; c < R->n; c++) if (!done[c]) { fprintf(f, "%s%d", first ? "" : ", ", c); first = 0; }
    fprintf(f, "], \"dev\": {");
    const char *names[] = {"accuracy", "f1", "mcc", "pearson", "spearman"};
    double vals[] = {mt->accuracy, mt->f1, mt->mcc, mt->pearson, mt->spearman};
    first = 1;
    for (int i = 0; i < 5; i++) {
        if (isnan(vals[i])) continue;
        fprintf(f, "%s\"%s\": ", first ? "" : ", ", names[i]);
        json_num(f, vals[i]);
        first = 0;
    }
    fprintf(f, "}, \"dev_loss\": ");
    json_num(f, dev_loss);
    fprintf(f, ", \"metric\": \"%s\", \"value\": ", mt->main_name);
    json_num(f, mt->main);
    fprintf(f, ", \"best\": ");
    json_num(f, R->best);
    fprintf(f, ", \"best_round\": %d, \"agg_error\": {\"max\": ", R->best_round);
    double mx = 0, mean = 0;
    for (int k = 0; k < R->srv.nadapted; k++) { if (err[k] > mx || isnan(err[k])) mx = err[k]; mean += err[k]; }
    mean = R->srv.nadapted ? mean / R->srv.nadapted : 0;
    json_num(f, mx);
    fprintf(f, ", \"mean\": ");
    json_num(f, mean);
    fprintf(f, ", \"layers\": [");
    for (int k = 0; k < R->srv.nadapted; k++) { fprintf(f, k ? ", " : ""); json_num(f, err[k]); }
    fprintf(f, "]}, \"bytes_up\": %lld, \"bytes_down\": %lld, \"residual\": \"%s\", ", (long long)up,
            (long long)down, fx_agg_is_exact(R->cfg.agg) ? R->cfg.residual : "none");
    fprintf(f, "\"memory_mb\": ");
    json_num(f, run_pss_mb(R));
    fprintf(f, ", \"seconds\": %.3f, \"seconds_clients\": %.3f, \"seconds_aggregate\": %.3f, \"seconds_eval\": %.3f}",
            secs, clients_s, agg_s, eval_s);
    fclose(f);
    return buf;
}

/* ---------------------------------------------------------------- setting a run up */

static void adapter_cfg_of(const run_cfg *c, fx_adapter_cfg *a) {
    memset(a, 0, sizeof *a);
    int vera = fx_agg_is_vera(c->agg);
    a->kind = vera ? FX_VERA : FX_LORA;
    fx_targets_parse(c->targets, &a->targets);
    a->r = vera ? c->vera_r : c->lora_r;
    a->alpha = (float)c->lora_alpha;
    a->rslora = c->rslora;
    a->dropout = (float)c->lora_dropout;
    a->freeze_a = fx_agg_freezes(c->agg) && !vera;
    a->freeze_d = fx_agg_freezes(c->agg) && vera;
    a->d_initial = (float)c->d_initial;
    a->seed = (uint64_t)c->seed;
}

/* The model's configuration: the folder's config.json with the task's label count, or the embedded one. */
static int model_config_of(const run_cfg *c, fx_config *mc, const fx_task **task) {
    if (!c->model) {
        embedded_config(mc, SYNTH_LEN);
        *task = fx_task_find("synthetic");
        return 0;
    }
    *task = fx_task_find(c->task);
    if (!*task) { fx_seterr("unknown task '%s'", c->task); return -1; }
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", c->model);
    if (fx_config_load(path, mc) != 0) return -1;
    mc->num_labels = (*task)->num_labels;
    return 0;
}

/* Base weights as the run starts: random (seeded, HF's initialisation) then the folder's checkpoint. */
static int init_weights(const run_cfg *c, fx_model *m) {
    fx_model_init_base(m, (uint64_t)c->seed);
    if (c->model && fx_model_load(m, c->model) < 0) return -1;
    fx_model_init_adapters(m, (uint64_t)c->seed);
    return 0;
}

/* Restores the global state and the accumulated residual (R_ACC, adapted layers concatenated) from
 * DIR/state.safetensors, and sets the adapted layers of M's base (holding the original W0) to W0 + R,
 * as the run computed them. Returns the round. */
static int load_state(const char *dir, fx_model *m, float *global, float *r_acc, double *best, int *best_round) {
    char path[4096];
    snprintf(path, sizeof path, "%s/state.safetensors", dir);
    fx_st_file f;
    if (fx_st_open(path, &f) != 0) return -1;
    int rc = -1;
    const fx_st_tensor *g = fx_st_find(&f, "global");
    const char *rs = fx_st_meta(&f, "round");
    if (!g || g->dtype != FX_F32 || fx_st_numel(g) != m->train.n || !rs) {
        fx_seterr("%s: not a checkpoint of this run (global state missing or of another size)", path);
        goto out;
    }
    float *owned;
    const float *p = fx_st_f32(&f, g, &owned);
    memcpy(global, p, sizeof(float) * m->train.n);
    free(owned);
    for (int k = 0, woff = 0; k < m->nadapted; k++) {
        char name[128];
        snprintf(name, sizeof name, "residual.%s", m->ad[k].name);
        const fx_st_tensor *t = fx_st_find(&f, name);
        if (!t || t->dtype != FX_F32 || fx_st_numel(t) != (size_t)m->ad[k].out * m->ad[k].in) {
            fx_seterr("%s: tensor '%s' missing or of the wrong size", path, name);
            goto out;
        }
        p = fx_st_f32(&f, t, &owned);
        size_t len = fx_st_numel(t);
        float *W = m->base.data + m->ad[k].w_off;
        memcpy(r_acc + woff, p, sizeof(float) * len);
        for (size_t j = 0; j < len; j++) W[j] += r_acc[woff + j];
        woff += (int)len;
        free(owned);
    }
    rc = atoi(rs);
    const char *b = fx_st_meta(&f, "best"), *br = fx_st_meta(&f, "best_round");
    *best = b ? strtod(b, NULL) : -INFINITY;
    *best_round = br ? atoi(br) : 0;
out:
    fx_st_close(&f);
    return rc;
}

/* Keeps the metrics.jsonl lines of rounds up to ROUND (a resumed run rewrites what came after). */
static void load_lines(fed_run *R, int round) {
    char path[4096], *text; size_t len;
    snprintf(path, sizeof path, "%s/metrics.jsonl", R->cfg.out);
    if (fx_read_file(path, &text, &len) != 0) return;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        fx_json j;
        if (fx_json_parse(line, strlen(line), &j) != 0) continue;
        const fx_json *r = fx_json_get(&j, "round");
        if (r && r->type == FX_JNUM && r->inum <= round) {
            R->lines = fx_realloc(R->lines, sizeof(char *) * (size_t)(R->nlines + 1));
            R->lines[R->nlines++] = fx_strdup(line);
        }
        fx_json_free(&j);
    }
    free(text);
}

static int setup_run(fed_run *R) {
    run_cfg *c = &R->cfg;
    R->n = c->num_clients;
    if (model_config_of(c, &R->mc, &R->task) != 0) return -1;
    if (c->model) {
        if (fx_model_has_weights(c->model) != 0) return -1; /* say so before minutes of tokenising */
        R->tok = fx_tok_load(c->model);
        if (!R->tok) return -1;
        R->pad_id = fx_tok_pad(R->tok);
        printf("tokenising %s train and dev (max length %d)...\n", R->task->name, c->max_len);
        fflush(stdout);
        if (fx_dataset_build(R->task, c->data, "train", R->tok, c->max_len, &R->train) != 0) return -1;
        if (fx_dataset_build(R->task, c->data, "dev", R->tok, c->max_len, &R->dev) != 0) return -1;
    } else {
        R->pad_id = R->mc.pad_id;
        if (fx_dataset_synthetic(SYNTH_TRAIN, R->mc.vocab_size, SYNTH_LEN, (uint64_t)c->seed, &R->train) != 0 ||
            fx_dataset_synthetic(SYNTH_DEV, R->mc.vocab_size, SYNTH_LEN, (uint64_t)c->seed + 1, &R->dev) != 0)
            return -1;
    }
    if (R->train.n < R->n) { fx_seterr("%d training rows cannot feed %d clients", R->train.n, R->n); return -1; }
    adapter_cfg_of(c, &R->ac);

    /* Sizes first, from a model whose base is never touched (calloc'ed pages cost nothing). */
    fx_model probe;
    if (fx_model_create(&probe, &R->mc, &R->ac, NULL) != 0) return -1;
    R->P = probe.train.n;
    size_t msg = 0, wtot = 0, wmax = 0, omax = 0;
    R->msg_off = fx_calloc((size_t)probe.nadapted + 1, sizeof(size_t));
    for (int k = 0; k < probe.nadapted; k++) {
        size_t out = (size_t)probe.ad[k].out, in = (size_t)probe.ad[k].in, q = (size_t)fx_agg_residual_rank(&probe, R->n);
        size_t fac = (out + in) * q, dense = out * in;
        R->msg_off[k] = msg;
        msg += fac > dense ? fac : dense;
        wtot += out * in;
        if (out * in > wmax) wmax = out * in;
        if (fac > omax) omax = fac;
    }
    R->tmp = fx_malloc(sizeof(float) * (omax ? omax : 1));
    fx_model_free(&probe);

    size_t base_n = fx_base_numel(&R->mc);
    size_t off_slot = 64, off_base = align64(off_slot + sizeof(client_slot) * (size_t)R->n);
    size_t off_glob = align64(off_base + sizeof(float) * base_n);
    size_t off_cl = align64(off_glob + sizeof(float) * R->P);
    size_t cl_stride = align64(sizeof(float) * R->P);
    size_t off_msg = off_cl + cl_stride * (size_t)R->n;
    R->shm_len = align64(off_msg + sizeof(float) * (msg ? msg : 1));
    char name[64];
    static int counter;
    snprintf(name, sizeof name, "/fedex-%d-%d", (int)getpid(), counter++);
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) { fx_seterr("shm_open %s: %s", name, strerror(errno)); return -1; }
    int trunc = ftruncate(fd, (off_t)R->shm_len);
    R->shm = trunc == 0 ? mmap(NULL, R->shm_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
    int saved = errno;
    shm_unlink(name); /* mapped here and, through fork, in every client: the name is no longer needed */
    close(fd);
    if (R->shm == MAP_FAILED) {
        fx_seterr("shared memory of %.1f MB: %s (is /dev/shm large enough?)", R->shm_len / 1e6, strerror(saved));
        return -1;
    }
    char *s = R->shm;
    R->resid_info = (int *)s;
    R->slot = (client_slot *)(s + off_slot);
    R->base = (float *)(s + off_base);
    R->global = (float *)(s + off_glob);
    R->client = fx_malloc(sizeof(float *) * (size_t)R->n);
    for (int i = 0; i < R->n; i++) R->client[i] = (float *)(s + off_cl + cl_stride * (size_t)i);
    R->msg = (float *)(s + off_msg);

    if (fx_model_create(&R->srv, &R->mc, &R->ac, R->base) != 0) return -1;
    if (init_weights(c, &R->srv) != 0) return -1;
    memcpy(R->global, R->srv.train.data, sizeof(float) * R->P);
    R->w0_orig = fx_malloc(sizeof(float) * (wtot ? wtot : 1));
    R->r_acc = fx_calloc(wtot ? wtot : 1, sizeof(float));
    R->r_old = fx_malloc(sizeof(float) * (wtot ? wtot : 1));
    R->err_work = fx_malloc(sizeof(double) * 2 * (wmax ? wmax : 1));
    R->prev_global = fx_malloc(sizeof(float) * R->P);
    for (size_t k = 0, woff = 0; k < (size_t)R->srv.nadapted; k++) {
        size_t len = (size_t)R->srv.ad[k].out * R->srv.ad[k].in;
        memcpy(R->w0_orig + woff, R->base + R->srv.ad[k].w_off, sizeof(float) * len);
        woff += len;
    }
    R->best = -INFINITY;
    if (c->resume) {
        R->round0 = load_state(c->out, &R->srv, R->global, R->r_acc, &R->best, &R->best_round);
        if (R->round0 < 0) return -1;
        load_lines(R, R->round0);
        printf("resuming %s after round %d\n", c->out, R->round0);
    }

    R->rows = fx_calloc((size_t)R->n, sizeof(int *));
    R->counts = fx_calloc((size_t)R->n, sizeof(int));
    if (R->n == 1) {
        R->rows[0] = fx_malloc(sizeof(int) * (size_t)R->train.n);
        for (int i = 0; i < R->train.n; i++) R->rows[0][i] = i;
        R->counts[0] = R->train.n;
    } else if (fx_split_clients(&R->train, R->n, c->split, (uint64_t)c->seed, R->rows, R->counts) != 0) {
        return -1;
    }
    for (int i = 0; i < R->n; i++)
        if (R->counts[i] == 0) { fx_seterr("client %d got no training rows (split %s): use fewer clients or a larger alpha", i, c->split); return -1; }
    if (!R->quiet) fx_split_report(stdout, &R->train, R->n, R->rows, R->counts);
    /* --client-gpus: one device for all, or one per client */
    R->gpu_of = fx_calloc((size_t)R->n, sizeof(int));
    if (c->client_gpus) {
        const char *p = c->client_gpus;
        int k = 0;
        while (*p) {
            char *end;
            long d = strtol(p, &end, 10);
            if (end == p || d < 0 || d > 255 || k >= R->n || (*end && *end != ',')) {
                fx_seterr("--client-gpus '%s': expected %d device numbers separated by commas (or one for all)",
                          c->client_gpus, R->n);
                return -1;
            }
            R->gpu_of[k++] = (int)d;
            p = *end ? end + 1 : end;
        }
        if (k == 1) for (int i = 1; i < R->n; i++) R->gpu_of[i] = R->gpu_of[0];
        else if (k != R->n) {
            fx_seterr("--client-gpus '%s' names %d devices for %d clients", c->client_gpus, k, R->n);
            return -1;
        }
    }
    R->pid = fx_calloc((size_t)R->n, sizeof(pid_t));
    R->cmd_fd = fx_calloc((size_t)R->n, sizeof(int));
    R->res_fd = fx_calloc((size_t)R->n, sizeof(int));
    R->alive = fx_calloc((size_t)R->n, sizeof(int));
    return 0;
}

static void teardown_run(fed_run *R) {
#ifdef FEDEX_CUDA
    if (R->srv_gpu) fx_gpu_free(R->srv_gpu);
#endif
    fx_model_free(&R->srv);
    if (R->shm && R->shm != MAP_FAILED) munmap(R->shm, R->shm_len);
    for (int i = 0; R->rows && i < R->n; i++) free(R->rows[i]);
    free(R->rows); free(R->counts); free(R->client); free(R->w0_orig); free(R->r_acc); free(R->r_old);
    free(R->err_work); free(R->prev_global); free(R->pid); free(R->msg_off); free(R->tmp); free(R->gpu_of); free(R->cmd_fd); free(R->res_fd); free(R->alive);
    for (int i = 0; i < R->nlines; i++) free(R->lines[i]);
    free(R->lines);
    fx_dataset_free(&R->train); fx_dataset_free(&R->dev);
    if (R->tok) fx_tok_free(R->tok);
}

/* ---------------------------------------------------------------- the rounds */

/* Returns the process exit status: 0, 1 (error), 130 (interrupted). */
static int run_federated(fed_run *R) {
    run_cfg *c = &R->cfg;
    int quiet = R->quiet;
    if (setup_run(R) != 0) { fprintf(stderr, "fedex: %s\n", fx_err()); teardown_run(R); return 1; }
    if (c->out && (fx_mkdir_p(c->out) != 0 || write_run_config(R) != 0)) {
        fprintf(stderr, "fedex: %s\n", fx_err());
        teardown_run(R);
        return 1;
    }
    int threads = c->threads > 0 ? c->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns EINTR and the loop notices */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* No OpenMP team or CUDA context exists yet in this process: fork now. */
    if (fork_clients(R, threads) != 0) { fprintf(stderr, "fedex: %s\n", fx_err()); stop_clients(R, SIGTERM); teardown_run(R); return 1; }
    fx_set_threads(threads);
#ifdef FEDEX_CUDA
    if (!strcmp(c->device, "cuda") && c->server_gpu >= 0) {
        char why[512];
        R->srv_gpu = gpu_open(&R->srv, c->server_gpu, c->precision, why, sizeof why);
        if (!R->srv_gpu) {
            fprintf(stderr, "fedex: --server-gpu %d: %s\n", c->server_gpu, why);
            stop_clients(R, SIGTERM);
            teardown_run(R);
            return 1;
        }
    }
#endif
    if (!quiet)
        printf("%s: %d client%s, %d rounds x %d local epochs, %d trainable parameters, %d threads\n",
               fx_agg_name(c->agg), R->n, R->n > 1 ? "s" : "", c->rounds, c->local_epochs, (int)R->P, threads);
    fflush(stdout);
    int status = 0;
    int *pending = fx_calloc((size_t)R->n, sizeof(int)), *done = fx_calloc((size_t)R->n, sizeof(int));
    double *err = fx_calloc((size_t)(R->srv.nadapted ? R->srv.nadapted : 1), sizeof(double));
    fx_metrics last = {0};
    int last_round = R->round0;
    for (int round = R->round0 + 1; round <= c->rounds; round++) {
        double t0 = fx_now();
        int32_t r32 = round;
        for (int i = 0; i < R->n; i++) {
            pending[i] = done[i] = 0;
            if (R->alive[i] && write(R->cmd_fd[i], &r32, sizeof r32) == (ssize_t)sizeof r32) pending[i] = 1;
        }
        if (wait_clients(R, round, pending, done) != 0) {
            if (interrupted) {
                fprintf(stderr, "\nfedex: interrupted in round %d; %s\n", round,
                        c->out && round > 1 ? "the last complete round is saved" : "nothing of this round was saved");
                status = 130;
            } else {
                fprintf(stderr, "fedex: %s\n", fx_err());
                status = 1;
            }
            break;
        }
        int ndone = 0;
        for (int i = 0; i < R->n; i++) ndone += done[i];
        if (ndone == 0) { fprintf(stderr, "fedex: no client finished round %d\n", round); status = 1; break; }
        double tc = fx_now() - t0, agg_s, te = fx_now();
        R->round_now = round;
        aggregate(R, done, err, &agg_s);
        te = fx_now();
        fx_metrics mt;
        double dev_loss = evaluate(R, &mt);
        double eval_s = fx_now() - te;
        if (mt.main > R->best || R->best_round == 0) { R->best = mt.main; R->best_round = round; }
        double mx = 0;
        for (int k = 0; k < R->srv.nadapted; k++) if (err[k] > mx) mx = err[k];
        if (R->hist_metric) { R->hist_metric[round - 1] = mt.main; R->hist_err[round - 1] = mx; }
        char *line = metrics_line(R, round, done, &mt, dev_loss, err, fx_now() - t0, agg_s, eval_s, tc);
        R->lines = fx_realloc(R->lines, sizeof(char *) * (size_t)(R->nlines + 1));
        R->lines[R->nlines++] = line;
        if (!quiet)
            printf("round %3d  dev %s %.4f  (best %.4f @ %d)  agg error max %.2e  %.1f s\n", round,
                   mt.main_name, mt.main, R->best, R->best_round, mx, fx_now() - t0);
        else
            printf("  %-6s round %d/%d: dev %s %.4f, aggregation error %.2e\n", fx_agg_name(c->agg), round,
                   c->rounds, mt.main_name, mt.main, mx);
        fflush(stdout);
        if (c->out && write_outputs(R, round, done) != 0) { fprintf(stderr, "fedex: %s\n", fx_err()); status = 1; break; }
        last = mt;
        last_round = round;
        if (interrupted) { /* after this round's checkpoint: it is complete */
            fprintf(stderr, "\nfedex: interrupted after round %d; it is %s\n", round, c->out ? "saved" : "not saved (no --out)");
            status = 130;
            break;
        }
    }
    stop_clients(R, status ? SIGTERM : 0);
    if (status == 0 && !quiet && last_round > 0 && last.main_name)
        printf("best dev %s %.4f at round %d; last %.4f (round %d)%s%s\n", last.main_name, R->best,
               R->best_round, last.main, last_round, c->out ? "; results in " : "", c->out ? c->out : "");
    free(pending); free(done); free(err);
    teardown_run(R);
    return status;
}

/* ============================================================================================
 * train, demo, export
 * ============================================================================================ */

static int cmd_train(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (is_help(argv[i])) {
            opts_help("train", "[--model DIR --task T --data DIR] [options]\n\n"
                      "Federated fine-tuning: forked clients train adapters on their shards, the server aggregates\n"
                      "(FedEx: exactly, with the residual folded into the frozen weights) and evaluates on dev.\n"
                      "Without --model it runs the embedded demo model on the built-in synthetic task.");
            return 0;
        }
    static fed_run R;
    memset(&R, 0, sizeof R);
    int set[NOPTS] = {0};
    if (parse_opts(argc, argv, &R.cfg, set) != 0) { fprintf(stderr, "fedex train: %s\n", fx_err()); return 2; }
    fx_json saved = {0};
    if (R.cfg.resume) {
        /* the run's own config.json decides everything but the thread count and how many rounds */
        for (int i = 0; i < NOPTS; i++)
            if (set[i] && strcmp(train_opts[i].name, "--resume") && strcmp(train_opts[i].name, "--threads") &&
                strcmp(train_opts[i].name, "--rounds") && !(strcmp(train_opts[i].name, "--out") == 0 &&
                                                            !strcmp(R.cfg.out, R.cfg.resume))) {
                fprintf(stderr, "fedex train: --resume takes the run's own settings; %s cannot be changed "
                        "(only --threads and --rounds)\n", train_opts[i].name);
                return 2;
            }
        run_cfg given = R.cfg;
        if (read_run_config(given.resume, &R.cfg, &saved) != 0) { fprintf(stderr, "fedex train: %s\n", fx_err()); return 2; }
        R.cfg.resume = given.resume;
        R.cfg.out = given.resume;
        R.cfg.threads = given.threads;
        if (set[opt_index("--rounds")]) R.cfg.rounds = given.rounds;
    }
    if (check_cfg(&R.cfg, set) != 0) { fprintf(stderr, "fedex train: %s\n", fx_err()); return 2; }
    if (!strcmp(R.cfg.device, "cuda")) {
#ifndef FEDEX_CUDA
        fprintf(stderr, "fedex train: --device cuda needs the CUDA build, fedex-cuda, beside this program "
                "(`make` builds it when nvcc is found)\n");
        return 2;
#endif
    }
    int rc = run_federated(&R);
    fx_json_free(&saved);
    return rc;
}

/* fedit, ffa and fedex side by side on the embedded model: each run in a process of its own (a server
 * must fork its clients before it starts any thread), results gathered through shared memory. */
static int cmd_demo(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (is_help(argv[i])) {
            printf("usage: fedex demo [--rounds N] [--num-clients N] [--seed S] [--threads N] [train options]\n\n"
                   "Runs fedit, ffa and fedex on the embedded model and the built-in synthetic task and prints,\n"
                   "per round, each method's dev accuracy and its aggregation error against the exact mean of\n"
                   "the clients' models: fedex stays at float rounding, fedit does not.\n");
            return 0;
        }
    static const fx_agg_method ms[] = {FX_AGG_FEDIT, FX_AGG_FFA, FX_AGG_FEDEX};
    enum { NM = 3 };
    run_cfg base;
    int set[NOPTS] = {0};
    if (parse_opts(argc, argv, &base, set) != 0) { fprintf(stderr, "fedex demo: %s\n", fx_err()); return 2; }
    if (set[opt_index("--agg")] || set[opt_index("--model")] || set[opt_index("--task")] || set[opt_index("--resume")]) {
        fprintf(stderr, "fedex demo: runs fedit, ffa and fedex on the embedded model; use `fedex train` for --agg, "
                "--model, --task or --resume\n");
        return 2;
    }
    /* the demo's own defaults: a short run that learns the synthetic task in about a minute */
    if (!set[opt_index("--rounds")]) base.rounds = 8;
    if (!set[opt_index("--local-epochs")]) base.local_epochs = 2;
    if (!set[opt_index("--batch-size")]) base.batch_size = 32;
    if (!set[opt_index("--lr")]) base.lr = 5e-3;
    if (check_cfg(&base, set) != 0) { fprintf(stderr, "fedex demo: %s\n", fx_err()); return 2; }
    size_t len = sizeof(double) * 2 * NM * (size_t)base.rounds;
    double *res = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (res == MAP_FAILED) { fprintf(stderr, "fedex demo: mmap: %s\n", strerror(errno)); return 1; }
    for (size_t i = 0; i < 2 * NM * (size_t)base.rounds; i++) res[i] = NAN;
    printf("fedex demo: %d clients, %d rounds x %d local epochs, LoRA r=%d on %s, synthetic task "
           "(%d train / %d dev rows)\n", base.num_clients, base.rounds, base.local_epochs, base.lora_r,
           base.targets, SYNTH_TRAIN, SYNTH_DEV);
    for (int k = 0; k < NM; k++) {
        fflush(stdout);
        pid_t p = fork();
        if (p < 0) { fprintf(stderr, "fedex demo: fork: %s\n", strerror(errno)); return 1; }
        if (p == 0) {
            static fed_run R;
            memset(&R, 0, sizeof R);
            R.cfg = base;
            R.cfg.agg = ms[k];
            R.cfg.agg_name = fx_agg_name(ms[k]);
            R.hist_metric = res + (size_t)(2 * k) * base.rounds;
            R.hist_err = res + (size_t)(2 * k + 1) * base.rounds;
            R.quiet = 1;
            _exit(run_federated(&R));
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

static int cmd_export(int argc, char **argv) {
    const char *run = NULL, *out = NULL;
    int merged = 0;
    for (int i = 1; i < argc; i++) {
        if (is_help(argv[i])) {
            printf("usage: fedex export --run DIR --out DIR [--merged]\n\n"
                   "Writes the run's final global model as a Hugging Face checkpoint (model.safetensors +\n"
                   "config.json): the FedEx residual folded into the frozen weights and, with --merged, the\n"
                   "adapters too; without --merged the PEFT adapter is written beside it.\n");
            return 0;
        }
        if (!strcmp(argv[i], "--run") && i + 1 < argc) run = argv[++i];
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--merged")) merged = 1;
        else { fprintf(stderr, "fedex export: unexpected argument '%s' (see `fedex help export`)\n", argv[i]); return 2; }
    }
    if (!run || !out) { fprintf(stderr, "fedex export: needs --run DIR and --out DIR\n"); return 2; }
    run_cfg c;
    fx_json j = {0};
    fx_config mc;
    fx_adapter_cfg ac;
    const fx_task *task;
    fx_model m;
    int rc = 1;
    double best; int best_round;
    if (read_run_config(run, &c, &j) != 0 || model_config_of(&c, &mc, &task) != 0) goto out;
    adapter_cfg_of(&c, &ac);
    if (fx_model_create(&m, &mc, &ac, NULL) != 0) goto out;
    size_t wtot = 0;
    for (int k = 0; k < m.nadapted; k++) wtot += (size_t)m.ad[k].out * m.ad[k].in;
    float *r_acc = fx_malloc(sizeof(float) * (wtot ? wtot : 1));
    int bad = init_weights(&c, &m) != 0 || load_state(run, &m, m.train.data, r_acc, &best, &best_round) < 0;
    free(r_acc);
    if (bad ||
        fx_mkdir_p(out) != 0 || fx_model_save(&m, out, merged) != 0 || (!merged && fx_adapter_save(&m, out, out) != 0)) {
        fx_model_free(&m);
        goto out;
    }
    if (c.model && copy_tokenizer(c.model, out) < 0) { fx_model_free(&m); goto out; }
    printf("wrote %s/model.safetensors (%s)\n", out, merged ? "residual and adapters merged" : "residual merged; adapter beside it");
    fx_model_free(&m);
    rc = 0;
out:
    if (rc) fprintf(stderr, "fedex export: %s\n", fx_err());
    fx_json_free(&j);
    return rc;
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
    {"train", cmd_train, "federated fine-tuning with forked clients and exact aggregation"},
    {"demo", cmd_demo, "fedit, ffa and fedex side by side on the embedded model"},
    {"export", cmd_export, "write a run's global model as a Hugging Face checkpoint"},
};

static void usage(FILE *f) {
    fprintf(f, "usage: fedex COMMAND [options]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].summary);
    fprintf(f, "\n`fedex help COMMAND` describes a command's options.\n");
}

int main(int argc, char **argv) {
#ifndef FEDEX_CUDA
    /* `--device cuda` belongs to the CUDA build, fedex-cuda beside this program: hand over to it. */
    for (int i = 2; i < argc; i++)
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
    if (is_help(argv[1]) || !strcmp(argv[1], "help")) {
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
