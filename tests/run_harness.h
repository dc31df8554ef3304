/* tests/run_harness.h: running $FEDEX from the end-to-end tests (test_train.c, test_faults.c): processes
 * in groups of their own with bounded waits, their output in a temporary folder, metrics.jsonl and
 * safetensors files read back, and the tiny model and RTE slice every run trains on. Include after
 * check.h; the including test defines WAIT_LINE_S and WAIT_RUN_S. */
#ifndef FEDEX_RUN_HARNESS_H
#define FEDEX_RUN_HARNESS_H
#include "fedex.h"
#include "check.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- running fedex, reading files */

static char tmp[64];                /* the test's temporary folder, made by run_harness_start */
static const char *fedex_bin;
static char cfgdir[512], model_head[512], model[512], glue[512], glue_wide[512];
static pid_t servers[64];
static int nservers;

static inline const char *P(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* A path (or any string) built in one of a ring of buffers: several may be alive in one call. */
static inline const char *P(const char *fmt, ...) {
    static char ring[16][1024];
    static int next;
    char *b = ring[next++ % 16];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b, sizeof ring[0], fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof ring[0]) { fprintf(stderr, "path too long: %s\n", b); exit(2); }
    return b;
}

static inline char *slurp(const char *path) {
    char *d; size_t n;
    return fx_read_file(path, &d, &n) == 0 ? d : NULL;
}

static inline int exists(const char *path) { return access(path, F_OK) == 0; }

static inline int same_bytes(const char *a, const char *b) {
    char *x, *y; size_t nx, ny;
    if (fx_read_file(a, &x, &nx) != 0) return 0;
    if (fx_read_file(b, &y, &ny) != 0) { free(x); return 0; }
    int same = nx == ny && memcmp(x, y, nx) == 0;
    free(x); free(y);
    return same;
}

static inline int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st; (void)flag; (void)ftw;
    return remove(p);
}

/* The first N lines (N < 0: all) of SRC into DST. */
/* GPT-2's byte-level vocabulary without merges: token b is byte b, written as GPT-2's byte-to-unicode table
 * maps it (printable Latin-1 as itself, the other bytes to U+0100 onwards in byte order); 256 is
 * <|endoftext|>. A real GPT-2 tokenizer, every text one token per byte. */
static inline int write_byte_vocab(const char *dir) {
    char *buf = NULL; size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return -1;
    fputc('{', f);
    int next = 256;
    uint32_t cp[256];
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        cp[b] = printable ? (uint32_t)b : (uint32_t)next++;
    }
    for (int b = 0; b < 256; b++) {
        char u[5] = {0};
        fx_utf8_put(u, cp[b]);
        char *q = fx_json_quote(u);
        fprintf(f, "%s%s: %d", b ? ", " : "", q, b);
        free(q);
    }
    fprintf(f, ", \"<|endoftext|>\": 256}\n");
    return fx_write_memstream_atomic(f, &buf, &len, P("%s/vocab.json", dir)) ||
           fx_write_file_atomic(P("%s/merges.txt", dir), "#version: 0.2\n", 14) ? -1 : 0;
}

/* tools/check_agg.py RUN: 1 (and its worst errors) when it ran, 0 when python3 with numpy is absent. */
static inline int check_agg(const char *run, const char *tag, double *mean_err, double *res_err) {
    char cmd[2048], out[8192];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 -c 'import numpy' 2>/dev/null && /usr/bin/python3 tools/check_agg.py %s "
             "2>&1 | tail -1", run);
    if (check_run(cmd, out, sizeof out) != 0 || !*out) return 0;
    const char *w = strstr(out, "global adapter ");
    CHECK(w && sscanf(w, "global adapter %lf, residual %lf", mean_err, res_err) == 2, "%s: check_agg.py: %s", tag, out);
    return 1;
}

static inline int copy_lines(const char *src, const char *dst, int n) {
    char *d; size_t len;
    if (fx_read_file(src, &d, &len) != 0) return -1;
    size_t end = 0;
    for (int k = 0; end < len && (n < 0 || k < n); k++) {
        char *nl = memchr(d + end, '\n', len - end);
        end = nl ? (size_t)(nl - d) + 1 : len;
    }
    int rc = fx_write_file_atomic(dst, d, end);
    free(d);
    return rc;
}

/* Starts PROG ARGS (NULL-terminated, without argv[0]) in a process group of its own (so that it can be
 * interrupted or killed with all its clients), stdout and stderr in tmp/TAG.out and tmp/TAG.err,
 * FEDEX_FAULT set to FAULT (or unset). Returns the pid, which is also the group's id. */
static inline pid_t spawn_prog(const char *prog, const char *tag, const char *fault, const char *const *args) {
    const char *argv[96];
    int n = 0;
    argv[n++] = prog;
    for (int i = 0; args[i] && n < 95; i++) argv[n++] = args[i];
    argv[n] = NULL;
    fflush(stdout); fflush(stderr);
    pid_t p = fork();
    if (p < 0) { perror("fork"); return -1; }
    if (p == 0) {
        setpgid(0, 0);
        int o = open(P("%s/%s.out", tmp, tag), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int e = open(P("%s/%s.err", tmp, tag), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0) _exit(126);
        if (fault) setenv("FEDEX_FAULT", fault, 1); else unsetenv("FEDEX_FAULT");
        execv(prog, (char *const *)argv);
        _exit(127);
    }
    setpgid(p, p); /* as the child does: whichever runs first */
    if (nservers < (int)(sizeof servers / sizeof servers[0])) servers[nservers++] = p;
    return p;
}

/* PROG is $FEDEX: `fedex ARGS`. */
static inline pid_t spawn(const char *tag, const char *fault, const char *const *args) {
    return spawn_prog(fedex_bin, tag, fault, args);
}

/* Waits for P at most WAIT_RUN_S; past that, kills its group and fails. Returns the exit status,
 * 128 + signal when killed, -1 on a failure to wait. */
static inline int finish(const char *tag, pid_t p) {
    double t0 = fx_now();
    int st;
    for (;;) {
        pid_t w = waitpid(p, &st, WNOHANG);
        if (w == p) break;
        if (w < 0) return -1;
        if (fx_now() - t0 > WAIT_RUN_S) {
            kill(-p, SIGKILL);
            waitpid(p, &st, 0);
            CHECK(0, "%s: still running after %.0f s: killed", tag, WAIT_RUN_S);
            return -1;
        }
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static inline int run_argv(const char *tag, const char *fault, const char *const *args) {
    pid_t p = spawn(tag, fault, args);
    return p < 0 ? -1 : finish(tag, p);
}

/* The same with PRE's arguments, then the variable ones up to NULL. */
static inline int vrun(const char *tag, const char *fault, const char *const *pre, va_list ap) {
    const char *args[96];
    int n = 0;
    for (int i = 0; pre && pre[i]; i++) args[n++] = pre[i];
    for (const char *a; (a = va_arg(ap, const char *)) != NULL && n < 95;) args[n++] = a;
    args[n] = NULL;
    return run_argv(tag, fault, args);
}

static inline int fedex(const char *tag, const char *fault, ...) {
    va_list ap;
    va_start(ap, fault);
    int rc = vrun(tag, fault, NULL, ap);
    va_end(ap);
    return rc;
}

/* `fedex train` on the tiny model and the RTE slice, with the options every run here shares. */
static inline int train(const char *tag, const char *fault, ...) {
    const char *pre[] = {"train", "--model", model, "--task", "RTE", "--data", glue, "--max-seq-length", "32",
                         "--batch-size", "32", "--local-epochs", "1", "--threads", "2", NULL};
    va_list ap;
    va_start(ap, fault);
    int rc = vrun(tag, fault, pre, ap);
    va_end(ap);
    return rc;
}

/* Does tmp/TAG.err contain S? */
static inline int err_has(const char *tag, const char *s) {
    char *e = slurp(P("%s/%s.err", tmp, tag));
    int has = e && strstr(e, s);
    free(e);
    return has;
}

static inline void show_err(const char *tag) {
    char *e = slurp(P("%s/%s.err", tmp, tag));
    if (e) fprintf(stderr, "---- %s stderr (last 1000 bytes):\n%s\n----\n", tag, strlen(e) > 1000 ? e + strlen(e) - 1000 : e);
    free(e);
}

/* ---------------------------------------------------------------- metrics.jsonl */

typedef struct { int n; fx_json line[16]; } metrics;

static inline int metrics_load(const char *dir, metrics *m) {
    memset(m, 0, sizeof *m);
    char *text = slurp(P("%s/metrics.jsonl", dir));
    if (!text) return -1;
    int rc = 0;
    for (char *save, *l = strtok_r(text, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
        if (m->n == 16 || fx_json_parse(l, strlen(l), &m->line[m->n]) != 0) { rc = -1; break; }
        m->n++;
    }
    free(text);
    return rc;
}

static inline void metrics_free(metrics *m) {
    for (int i = 0; i < m->n; i++) fx_json_free(&m->line[i]);
    m->n = 0;
}

static inline double num(const fx_json *o, const char *key) {
    const fx_json *v = fx_json_get(o, key);
    return v && v->type == FX_JNUM ? v->num : NAN;
}

static inline const fx_json *arr(const fx_json *o, const char *key) {
    const fx_json *v = fx_json_get(o, key);
    return v && v->type == FX_JARR ? v : NULL;
}

/* One round's line has every field with a plausible value. */
static inline int line_ok(const fx_json *l, int round, int nclients) {
    const fx_json *cl = arr(l, "clients"), *ae = fx_json_get(l, "agg_error"), *dev = fx_json_get(l, "dev");
    if (num(l, "round") != round || !cl || (int)cl->n != nclients || !dev || dev->type != FX_JOBJ || dev->n < 1)
        return 0;
    for (size_t i = 0; i < cl->n; i++)
        if (!(num(&cl->kids[i], "samples") > 0) || !(num(&cl->kids[i], "train_loss") > 0)) return 0;
    const fx_json *layers = ae ? fx_json_get(ae, "layers") : NULL; /* keyed by layer name */
    if (!ae || !(num(ae, "max") >= 0) || !(num(ae, "mean") >= 0) || !layers || layers->type != FX_JOBJ || !layers->n)
        return 0;
    for (size_t i = 0; i < layers->n; i++)
        if (strncmp(layers->keys[i], "encoder.layer.", 14) || layers->kids[i].type != FX_JNUM) return 0;
    return num(l, "value") >= 0 && num(l, "best") >= 0 && num(l, "bytes_up") > 0 && num(l, "bytes_down") > 0 &&
           num(l, "seconds") >= 0;
}

/* metrics.jsonl's text with the value of every time or memory field ("seconds...", "memory_mb", "client_idle")
 * replaced by '_': what must be equal between two runs that did the same computation. */
static inline char *metrics_untimed(const char *dir) {
    char *t = slurp(P("%s/metrics.jsonl", dir));
    if (!t) return NULL;
    char *out = fx_malloc(strlen(t) + 1), *o = out;
    for (const char *s = t; *s;) {
        if (!strncmp(s, "\"seconds", 8) || !strncmp(s, "\"memory_mb\"", 11) || !strncmp(s, "\"client_idle\"", 13)) {
            const char *colon = strchr(s, ':');
            if (!colon) break;
            memcpy(o, s, (size_t)(colon + 1 - s));
            o += colon + 1 - s;
            s = colon + 1;
            while (*s && *s != ',' && *s != '}') s++;
            *o++ = '_';
        } else *o++ = *s++;
    }
    *o = 0;
    free(t);
    return out;
}

/* Line K (from 0) of S, as a new string. */
static inline char *line_of(const char *s, int k) {
    for (; s && k > 0; k--) { s = strchr(s, '\n'); if (s) s++; }
    if (!s || !*s) return fx_strdup("");
    const char *e = strchr(s, '\n');
    size_t n = e ? (size_t)(e - s) : strlen(s);
    char *r = fx_malloc(n + 1);
    memcpy(r, s, n);
    r[n] = 0;
    return r;
}

/* ---------------------------------------------------------------- safetensors as double */

/* Tensor NAME of F as doubles (malloc'd), its element count in *N; NULL if absent. */
static inline double *tget(const fx_st_file *f, const char *name, size_t *n) {
    const fx_st_tensor *t = fx_st_find(f, name);
    *n = 0;
    if (!t) return NULL;
    float *owned;
    const float *p = fx_st_f32(f, t, &owned);
    if (!p) return NULL;
    *n = fx_st_numel(t);
    double *d = fx_malloc(sizeof(double) * (*n ? *n : 1));
    for (size_t i = 0; i < *n; i++) d[i] = p[i];
    free(owned);
    return d;
}

/* SRC's header line, then its other lines TIMES times over, into DST. */
static inline int repeat_rows(const char *src, const char *dst, int times) {
    char *d; size_t len;
    if (fx_read_file(src, &d, &len) != 0) return -1;
    char *nl = memchr(d, '\n', len);
    size_t head = nl ? (size_t)(nl - d) + 1 : len, body = len - head;
    char *out = fx_malloc(head + body * (size_t)times + 1);
    memcpy(out, d, head);
    for (int k = 0; k < times; k++) memcpy(out + head + body * (size_t)k, d + head, body);
    int rc = fx_write_file_atomic(dst, out, head + body * (size_t)times);
    free(out);
    free(d);
    return rc;
}

/* ---------------------------------------------------------------- setup */

static const char tiny_config[] =
    "{\n  \"architectures\": [\"RobertaForSequenceClassification\"],\n  \"model_type\": \"roberta\",\n"
    "  \"vocab_size\": 50265,\n  \"hidden_size\": 16,\n  \"num_hidden_layers\": 2,\n"
    "  \"num_attention_heads\": 2,\n  \"intermediate_size\": 32,\n  \"max_position_embeddings\": 130,\n"
    "  \"type_vocab_size\": 1,\n  \"pad_token_id\": 1,\n  \"bos_token_id\": 0,\n  \"eos_token_id\": 2,\n"
    "  \"layer_norm_eps\": 1e-05,\n  \"hidden_dropout_prob\": 0.1,\n  \"attention_probs_dropout_prob\": 0.1,\n"
    "  \"initializer_range\": 0.02,\n  \"hidden_act\": \"gelu\"\n}\n";

/* A copy of FROM's checkpoint without the classifier: what a pre-trained checkpoint such as
 * roberta-base looks like (its head is lm_head.*), so that training starts from a fresh head. */
static inline int strip_head(const char *from, const char *to) {
    fx_st_file f;
    if (fx_st_open(P("%s/model.safetensors", from), &f) != 0) return -1;
    fx_st_entry *e = fx_calloc((size_t)f.n, sizeof *e);
    int n = 0;
    for (int i = 0; i < f.n; i++) {
        const fx_st_tensor *t = &f.t[i];
        if (!strncmp(t->name, "classifier.", 11)) continue;
        e[n].name = t->name; e[n].dtype = t->dtype; e[n].ndim = t->ndim;
        memcpy(e[n].shape, t->shape, sizeof t->shape);
        e[n].data = f.data + t->begin;
        n++;
    }
    int rc = fx_mkdir_p(to) != 0 || fx_st_write(P("%s/model.safetensors", to), e, n, NULL) != 0 ? -1 : 0;
    const char *files[] = {"config.json", "vocab.json", "merges.txt"};
    for (int k = 0; rc == 0 && k < 3; k++) rc = copy_lines(P("%s/%s", from, files[k]), P("%s/%s", to, files[k]), -1);
    free(e);
    fx_st_close(&f);
    return n == f.n ? -1 : rc;
}

static inline int setup(const char *shared) {
    snprintf(cfgdir, sizeof cfgdir, "%s/cfg", tmp);
    snprintf(model_head, sizeof model_head, "%s/model", tmp);
    snprintf(model, sizeof model, "%s/model_nohead", tmp);
    snprintf(glue, sizeof glue, "%s/glue", tmp);
    snprintf(glue_wide, sizeof glue_wide, "%s/glue_wide", tmp);
    if (fx_mkdir_p(cfgdir) != 0 || fx_mkdir_p(P("%s/RTE", glue)) != 0 || fx_mkdir_p(P("%s/RTE", glue_wide)) != 0 ||
        fx_write_file_atomic(P("%s/config.json", cfgdir), tiny_config, strlen(tiny_config)) != 0 ||
        copy_lines(P("%s/models/roberta-base/vocab.json", shared), P("%s/vocab.json", cfgdir), -1) != 0 ||
        copy_lines(P("%s/models/roberta-base/merges.txt", shared), P("%s/merges.txt", cfgdir), -1) != 0)
        return -1;
    /* 240 training rows (80 per client of 3, three steps of 32) and 60 dev rows keep a round well under a
     * second; the wide folder has 24 training rows and the dev split 8 times over (2216 rows), so that a
     * round is mostly the server's evaluation (0.4 s here, 1 s under the sanitizers). */
    char rte[1024];
    snprintf(rte, sizeof rte, "%s/data/glue/RTE", shared);
    if (copy_lines(P("%s/train.tsv", rte), P("%s/RTE/train.tsv", glue), 1 + 240) != 0 ||
        copy_lines(P("%s/dev.tsv", rte), P("%s/RTE/dev.tsv", glue), 1 + 60) != 0 ||
        copy_lines(P("%s/train.tsv", rte), P("%s/RTE/train.tsv", glue_wide), 1 + 24) != 0 ||
        repeat_rows(P("%s/dev.tsv", rte), P("%s/RTE/dev.tsv", glue_wide), 8) != 0)
        return -1;
    int rc = fedex("init", NULL, "init", "--config", P("%s/config.json", cfgdir), "--out", model_head, "--seed", "1", NULL);
    CHECK(rc == 0, "fedex init exited %d", rc);
    if (rc != 0) { show_err("init"); return -1; }
    CHECK(exists(P("%s/model.safetensors", model_head)) && exists(P("%s/vocab.json", model_head)) &&
          exists(P("%s/merges.txt", model_head)) && exists(P("%s/config.json", model_head)),
          "fedex init did not write model.safetensors, config.json, vocab.json and merges.txt");
    return strip_head(model_head, model);
}

/* The temporary folder /tmp/fedex_test_NAME_XXXXXX and the binary from $FEDEX (made absolute): 0, or -1
 * when FEDEX is not set (the caller skips, saying so) or the folder cannot be made. */
static inline int run_harness_start(const char *name) {
    fedex_bin = getenv("FEDEX");
    if (!fedex_bin || !*fedex_bin) return -1;
    static char abs_bin[4096];
    if (!realpath(fedex_bin, abs_bin)) { CHECK(0, "FEDEX=%s: %s", fedex_bin, strerror(errno)); return -1; }
    fedex_bin = abs_bin;
    snprintf(tmp, sizeof tmp, "/tmp/fedex_test_%s_XXXXXX", name);
    if (!mkdtemp(tmp)) { CHECK(0, "mkdtemp %s: %s", tmp, strerror(errno)); return -1; }
    return 0;
}

/* Removes the temporary folder, unless FEDEX_TEST_KEEP is set. */
static inline void run_harness_end(void) {
    if (!getenv("FEDEX_TEST_KEEP")) nftw(tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    else printf("kept %s\n", tmp);
}
#endif
