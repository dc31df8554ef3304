/* glue.c: the GLUE tasks (table of columns and labels), strict reading of their TSV splits, tokenised
 * datasets and padded batches, client splits (iid and Dirichlet label skew), the metrics as sklearn and
 * scipy compute them, and a built-in synthetic task. It does not tokenise (tokenizer.c) or train. */
#include "fedex.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* ============================================================================================
 * Tasks
 * ============================================================================================
 * Columns are 0-based here (the data README counts from 1). MNLI's train has 12 columns and its dev
 * files 16, so its ncols is 0 ("varies") and its label is the last column (col_label = -1). Label
 * strings are in the id order of Hugging Face's glue processors; NULL means the file holds 0/1. */

static const fx_task tasks[] = {
    /* name      dir      dev split          hdr ncols a  b  lab nl labels; names; metric
     * names: the Hugging Face glue dataset's ClassLabel names in fedex's ids (MNLI's ids follow its label
     * strings, so its names are in that order, not the dataset's entailment, neutral, contradiction) */
    {"CoLA",    "CoLA",  "dev",             0, 4,  3, -1, 1,  2, {NULL, NULL, NULL},
     {"unacceptable", "acceptable", NULL}, "mcc", 0},
    {"SST-2",   "SST-2", "dev",             1, 2,  0, -1, 1,  2, {NULL, NULL, NULL},
     {"negative", "positive", NULL}, "accuracy", 0},
    {"MRPC",    "MRPC",  "dev",             1, 5,  3, 4,  0,  2, {NULL, NULL, NULL},
     {"not_equivalent", "equivalent", NULL}, "f1", 0},
    {"STS-B",   "STS-B", "dev",             1, 10, 7, 8,  9,  1, {NULL, NULL, NULL},
     {NULL, NULL, NULL}, "pearson", 0},
    {"QQP",     "QQP",   "dev",             1, 6,  3, 4,  5,  2, {NULL, NULL, NULL},
     {"not_duplicate", "duplicate", NULL}, "accuracy", 0},
    {"MNLI",    "MNLI",  "dev_matched",     1, 0,  8, 9,  -1, 3, {"contradiction", "entailment", "neutral"},
     {"contradiction", "entailment", "neutral"}, "accuracy", 0},
    {"MNLI-MM", "MNLI",  "dev_mismatched",  1, 0,  8, 9,  -1, 3, {"contradiction", "entailment", "neutral"},
     {"contradiction", "entailment", "neutral"}, "accuracy", 0},
    {"QNLI",    "QNLI",  "dev",             1, 4,  1, 2,  3,  2, {"entailment", "not_entailment", NULL},
     {"entailment", "not_entailment", NULL}, "accuracy", 0},
    {"RTE",     "RTE",   "dev",             1, 4,  1, 2,  3,  2, {"entailment", "not_entailment", NULL},
     {"entailment", "not_entailment", NULL}, "accuracy", 0},
    {"WNLI",    "WNLI",  "dev",             1, 4,  1, 2,  3,  2, {NULL, NULL, NULL},
     {"not_entailment", "entailment", NULL}, "accuracy", 0},
};

/* Not a GLUE task: no folder, no files; see fx_dataset_synthetic. */
static const fx_task synthetic_task = {"synthetic", NULL, NULL, 0, 0, 0, -1, 0, 2, {NULL, NULL, NULL},
                                       {NULL, NULL, NULL}, "accuracy", 0};

/* STS-B scores are similarity judgements on a 0..5 scale. */
#define STSB_MIN 0.0
#define STSB_MAX 5.0

/* Lower-cased letters and digits only, so "SST-2", "sst2" and "sst_2" compare equal. */
static void task_key(const char *s, char *out, size_t outsz) {
    size_t k = 0;
    for (; *s && k + 1 < outsz; s++)
        if (isalnum((unsigned char)*s)) out[k++] = (char)tolower((unsigned char)*s);
    out[k] = 0;
}

const fx_task *fx_task_find(const char *name) {
    char want[32], have[32];
    task_key(name, want, sizeof want);
    /* Hugging Face's dataset config names for MNLI's two dev sets. */
    if (!strcmp(want, "mnlimatched")) return &tasks[5];
    if (!strcmp(want, "mnlimismatched")) return &tasks[6];
    for (size_t i = 0; i < sizeof tasks / sizeof tasks[0]; i++) {
        task_key(tasks[i].name, have, sizeof have);
        if (!strcmp(want, have)) return &tasks[i];
    }
    task_key(synthetic_task.name, have, sizeof have);
    if (!strcmp(want, have)) return &synthetic_task;
    task_key(fx_e2e_task.name, have, sizeof have);
    if (!strcmp(want, have) || !strcmp(want, "e2enlg")) return &fx_e2e_task;
    const fx_task *const inst[] = {&fx_instruct_task, &fx_gsm8k_task, &fx_mc_task};
    for (int k = 0; k < 3; k++) {
        task_key(inst[k]->name, have, sizeof have);
        if (!strcmp(want, have)) return inst[k];
    }
    fx_seterr("unknown task '%s' (known: CoLA, SST-2, MRPC, STS-B, QQP, MNLI, MNLI-MM, QNLI, RTE, WNLI, "
              "e2e, instruct, gsm8k, mc, synthetic)", name);
    return NULL;
}

int fx_glue_path(const fx_task *t, const char *data_dir, const char *split, char *out, size_t outsz) {
    if (!t->dir) { fx_seterr("task %s has no data files", t->name); return -1; }
    const char *file = !strcmp(split, "dev") ? t->dev_split : split;
    if (strcmp(split, "train") && strcmp(split, "dev") && strcmp(split, "test")) {
        fx_seterr("unknown split '%s' (train, dev or test)", split);
        return -1;
    }
    int k = snprintf(out, outsz, "%s/%s/%s.tsv", data_dir, t->dir, file);
    if (k < 0 || (size_t)k >= outsz) { fx_seterr("%s/%s/%s.tsv: path too long", data_dir, t->dir, file); return -1; }
    return 0;
}

/* ============================================================================================
 * Reading TSV splits
 * ============================================================================================
 * Texts are the raw column strings, byte for byte (no CSV unquoting: MRPC's fields open with stray
 * quotes that belong to the text). A trailing \r is dropped, as is a UTF-8 byte-order mark at the start
 * of the file (MRPC has one). A last line without a newline is a row (CoLA's dev ends that way). */

/* The label of one row: a class id, or the STS-B score. -1 (with a path:line error) when invalid. */
static int parse_label(const fx_task *t, const char *s, const char *path, int line, float *out) {
    if (t->num_labels == 1) {
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (end == s || *end || errno || !(v >= STSB_MIN && v <= STSB_MAX)) {
            fx_seterr("%s:%d: score '%.40s' is not a number in [%g, %g]", path, line, s, STSB_MIN, STSB_MAX);
            return -1;
        }
        *out = (float)v;
        return 0;
    }
    for (int k = 0; k < t->num_labels; k++) {
        char num[2] = {(char)('0' + k), 0};
        const char *want = t->labels[0] ? t->labels[k] : num;
        if (!strcmp(s, want)) { *out = (float)k; return 0; }
    }
    if (t->labels[0])
        fx_seterr("%s:%d: unknown label '%.40s' (expected %s, %s%s%s)", path, line, s, t->labels[0], t->labels[1],
                  t->labels[2] ? " or " : "", t->labels[2] ? t->labels[2] : "");
    else
        fx_seterr("%s:%d: unknown label '%.40s' (expected 0 or 1)", path, line, s);
    return -1;
}

void fx_rows_free(fx_rows *r) {
    for (int i = 0; i < r->n; i++) {
        free(r->a[i]);
        if (r->b) free(r->b[i]);
    }
    free(r->a); free(r->b); free(r->label); free(r->line);
    memset(r, 0, sizeof *r);
}

int fx_glue_read(const fx_task *t, const char *path, fx_rows *rows) {
    memset(rows, 0, sizeof *rows);
    if (!t->dir) { fx_seterr("task %s has no data files", t->name); return -1; }
    struct stat st;
    if (strcmp(path, "-") && strcmp(path, "/dev/stdin") && stat(path, &st) != 0 && errno == ENOENT) {
        fx_seterr("%s: no such file (this split is not in the data folder)", path);
        return -1;
    }
    char *data; size_t len;
    if (fx_read_file(path, &data, &len) != 0) return -1;

    size_t pos = 0;
    if (len >= 3 && !memcmp(data, "\xEF\xBB\xBF", 3)) pos = 3;
    int cap = 0, line = 0;
    enum { MAXCOLS = 64 };
    char *col[MAXCOLS];
    while (pos < len) {
        /* One line: data[pos .. eol), NUL-terminated in place. */
        char *s = data + pos, *nl = memchr(s, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - s) : len - pos;
        pos += n + (nl != NULL);
        line++;
        if (n > 0 && s[n - 1] == '\r') n--;
        s[n] = 0;
        size_t ok = fx_utf8_valid_prefix(s, n);
        if (ok != n) {
            fx_seterr("%s:%d: invalid UTF-8 (byte 0x%02X at column %zu)", path, line, (unsigned char)s[ok], ok + 1);
            goto fail;
        }
        if (line == 1 && t->header) continue;
        if (memchr(s, 0, n)) { fx_seterr("%s:%d: NUL byte in a text line", path, line); goto fail; }

        int nc = 0;
        for (char *p = s;; ) {
            char *tab = strchr(p, '\t');
            if (nc < MAXCOLS) col[nc] = p;
            nc++;
            if (!tab) break;
            *tab = 0;
            p = tab + 1;
        }
        int need = t->ncols ? t->ncols : (t->col_b > t->col_a ? t->col_b : t->col_a) + 2;
        if (t->ncols ? nc != t->ncols : (nc < need || nc > MAXCOLS)) {
            fx_seterr("%s:%d: %d columns, expected %s%d", path, line, nc, t->ncols ? "" : "at least ", need);
            goto fail;
        }
        float label;
        if (parse_label(t, col[t->col_label >= 0 ? t->col_label : nc - 1], path, line, &label) != 0) goto fail;

        if (rows->n == cap) {
            cap = cap ? 2 * cap : 1024;
            rows->a = fx_realloc(rows->a, (size_t)cap * sizeof *rows->a);
            if (t->col_b >= 0) rows->b = fx_realloc(rows->b, (size_t)cap * sizeof *rows->b);
            rows->label = fx_realloc(rows->label, (size_t)cap * sizeof *rows->label);
            rows->line = fx_realloc(rows->line, (size_t)cap * sizeof *rows->line);
        }
        rows->a[rows->n] = fx_strdup(col[t->col_a]);
        if (rows->b) rows->b[rows->n] = fx_strdup(col[t->col_b]);
        rows->label[rows->n] = label;
        rows->line[rows->n] = line;
        rows->n++;
    }
    free(data);
    if (rows->n == 0) { fx_seterr("%s: no rows", path); return -1; }
    return 0;
fail:
    free(data);
    fx_rows_free(rows);
    return -1;
}

/* ============================================================================================
 * Tokenised datasets and batches
 * ============================================================================================ */

void fx_dataset_free(fx_dataset *d) {
    free(d->ids); free(d->off); free(d->labels); free(d->targets); free(d->cls);
    memset(d, 0, sizeof *d);
}

int fx_dataset_build(const fx_task *t, const char *data_dir, const char *split, fx_tokenizer *tok,
                     int max_len, fx_dataset *d) {
    memset(d, 0, sizeof *d);
    if (max_len < 1) { fx_seterr("max_len %d: must be positive", max_len); return -1; }
    char path[4096];
    if (fx_glue_path(t, data_dir, split, path, sizeof path) != 0) return -1;
    fx_rows r;
    if (fx_glue_read(t, path, &r) != 0) return -1;

    int32_t *one = fx_malloc((size_t)max_len * sizeof *one); /* (max_len) */
    size_t cap = (size_t)r.n * 32, used = 0;                 /* GLUE rows average well under 64 tokens */
    d->task = t;
    d->ids = fx_malloc(cap * sizeof *d->ids);
    d->off = fx_malloc(((size_t)r.n + 1) * sizeof *d->off);
    d->labels = fx_malloc((size_t)r.n * sizeof *d->labels);
    d->off[0] = 0;
    for (int i = 0; i < r.n; i++) {
        int k = fx_tok_encode(tok, r.a[i], r.b ? r.b[i] : NULL, max_len, one);
        if (k < 0 || k > max_len) {
            fx_seterr("%s:%d: %s", path, r.line[i], k < 0 ? fx_err() : "token count out of range");
            free(one); fx_rows_free(&r); fx_dataset_free(d);
            return -1;
        }
        if (used + (size_t)k > cap) {
            cap = 2 * cap + (size_t)max_len;
            d->ids = fx_realloc(d->ids, cap * sizeof *d->ids);
        }
        memcpy(d->ids + used, one, (size_t)k * sizeof *one);
        used += (size_t)k;
        d->off[i + 1] = used;
        d->labels[i] = r.label[i];
    }
    d->n = r.n;
    free(one);
    fx_rows_free(&r);
    return 0;
}

void fx_batch_fill(const fx_dataset *d, const int *rows, int n, int pad_id, fx_batch *b) {
    int T = 0;
    for (int i = 0; i < n; i++) {
        if (rows[i] < 0 || rows[i] >= d->n) fx_die("fx_batch_fill: row %d outside the dataset (%d rows)", rows[i], d->n);
        size_t len = d->off[rows[i] + 1] - d->off[rows[i]];
        if ((int)len > T) T = (int)len;
    }
    size_t ntok;
    if (fx_mul_size((size_t)n, (size_t)T, &ntok) != 0 || ntok > INT32_MAX) fx_die("fx_batch_fill: batch %d x %d too large", n, T);
    if (n > b->cap_rows) {
        b->labels = fx_realloc(b->labels, (size_t)n * sizeof *b->labels);
        b->cap_rows = n;
    }
    if ((int)ntok > b->cap_tok) {
        b->ids = fx_realloc(b->ids, ntok * sizeof *b->ids);
        b->mask = fx_realloc(b->mask, ntok);
        b->cap_tok = (int)ntok;
    }
    if (!d->targets) {
        free(b->targets);
        b->targets = NULL;
        b->cap_targets = 0;
    } else if ((int)ntok > b->cap_targets || !b->targets) {
        b->targets = fx_realloc(b->targets, (ntok ? ntok : 1) * sizeof *b->targets);
        b->cap_targets = (int)ntok;
    }
    b->n = n; b->T = T;
    for (int i = 0; i < n; i++) {
        const int32_t *src = d->ids + d->off[rows[i]];
        int len = (int)(d->off[rows[i] + 1] - d->off[rows[i]]);
        int32_t *ids = b->ids + (size_t)i * T;
        uint8_t *mask = b->mask + (size_t)i * T;
        for (int j = 0; j < T; j++) {
            ids[j] = j < len ? src[j] : pad_id;
            mask[j] = j < len;
        }
        if (d->targets) {
            const int32_t *tsrc = d->targets + d->off[rows[i]];
            int32_t *tgt = b->targets + (size_t)i * T;
            for (int j = 0; j < T; j++) tgt[j] = j < len ? tsrc[j] : FX_IGNORE;
        }
        b->labels[i] = d->labels ? d->labels[rows[i]] : 0.0f;
    }
}

void fx_batch_free(fx_batch *b) {
    free(b->ids); free(b->mask); free(b->labels); free(b->targets);
    memset(b, 0, sizeof *b);
}

/* ============================================================================================
 * Client splits
 * ============================================================================================
 * Both splits first give every example an owner, then list each client's rows in dataset order.
 * Dirichlet (label skew, as in Hsu et al. 2019 and FedML's partitioner): for each class k, draw
 * p_k ~ Dir(alpha, ..., alpha) over the clients as normalised Gamma(alpha, 1) draws, shuffle that class's
 * examples and cut them at the cumulative proportions round(n_k * (p_k1 + ... + p_kc)). Small alpha
 * concentrates a class on few clients; large alpha approaches iid. A split with an empty client is
 * drawn again from the continuing random stream (FedML does the same), so every client can train. */

#define SPLIT_MAX_DRAWS 1000

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The class of each example: its label id, or for regression its quantile bin. A bin is the number of
 * cut points v[floor(k n / B)] (k = 1..B-1, v sorted) at or below the target, so equal targets share a
 * bin. -1 on a label outside the task's classes. */
static int *example_classes(const fx_dataset *d, int *nclass) {
    int *cls = fx_malloc((size_t)(d->n ? d->n : 1) * sizeof *cls);
    if (d->cls) { /* the dataset's own classes (E2E: the MR's slot count) */
        for (int i = 0; i < d->n; i++) {
            if (d->cls[i] < 0 || d->cls[i] >= d->nclass) {
                fx_seterr("%s row %d: class %d outside [0, %d)", d->task->name, i, d->cls[i], d->nclass);
                free(cls);
                return NULL;
            }
            cls[i] = d->cls[i];
        }
        *nclass = d->nclass;
        return cls;
    }
    if (d->task->num_labels == 1) {
        double *v = fx_malloc((size_t)(d->n ? d->n : 1) * sizeof *v), cut[FX_SPLIT_BINS];
        for (int i = 0; i < d->n; i++) v[i] = d->labels[i];
        qsort(v, (size_t)d->n, sizeof *v, cmp_double);
        for (int k = 1; k < FX_SPLIT_BINS; k++) cut[k] = v[(size_t)k * (size_t)d->n / FX_SPLIT_BINS];
        for (int i = 0; i < d->n; i++) {
            int bin = 0;
            for (int k = 1; k < FX_SPLIT_BINS; k++) bin += (double)d->labels[i] >= cut[k];
            cls[i] = bin;
        }
        free(v);
        *nclass = FX_SPLIT_BINS;
        return cls;
    }
    for (int i = 0; i < d->n; i++) {
        float y = d->labels[i];
        if (!(y >= 0 && y < (float)d->task->num_labels) || y != (float)(int)y) {
            fx_seterr("%s row %d: label %g is not a class of the task", d->task->name, i, (double)y);
            free(cls);
            return NULL;
        }
        cls[i] = (int)y;
    }
    *nclass = d->task->num_labels;
    return cls;
}

/* Uniform integer in [0, k); the bias of scaling a 53-bit uniform is below 2^-40 for any int k. */
static int rng_below(fx_rng *r, int k) { return (int)(fx_rng_uniform(r) * (double)k); }

/* One Dirichlet draw of owners, class by class. */
static void dirichlet_owners(const int *cls, int n, int nclass, int nclients, double alpha, fx_rng *r,
                             int *owner) {
    int *idx = fx_malloc((size_t)n * sizeof *idx);           /* (n) one class's examples */
    double *p = fx_malloc((size_t)nclients * sizeof *p);     /* (nclients) */
    for (int k = 0; k < nclass; k++) {
        int m = 0;
        for (int i = 0; i < n; i++) if (cls[i] == k) idx[m++] = i;
        double sum = 0;
        for (int c = 0; c < nclients; c++) sum += p[c] = fx_rng_gamma(r, alpha);
        for (int i = m - 1; i > 0; i--) {                    /* Fisher-Yates */
            int j = rng_below(r, i + 1), tmp = idx[i];
            idx[i] = idx[j]; idx[j] = tmp;
        }
        if (!(sum > 0)) {
            /* Every Gamma draw underflowed (alpha far below 1): Dir(alpha) tends to a one-hot vector
             * at a uniformly chosen client, so take that limit. */
            int c = rng_below(r, nclients);
            for (int i = 0; i < m; i++) owner[idx[i]] = c;
            continue;
        }
        double cum = 0;
        int start = 0;
        for (int c = 0; c < nclients; c++) {
            cum += p[c] / sum;
            int end = c == nclients - 1 ? m : (int)floor(cum * m + 0.5);
            if (end > m) end = m;
            for (int i = start; i < end; i++) owner[idx[i]] = c;
            if (end > start) start = end;
        }
    }
    free(idx); free(p);
}

int fx_split_clients(const fx_dataset *d, int nclients, const char *spec, uint64_t seed,
                     int **rows, int *counts) {
    double alpha = 0;
    if (!strncmp(spec, "dirichlet:", 10)) {
        char *end;
        errno = 0;
        alpha = strtod(spec + 10, &end);
        if (end == spec + 10 || *end || errno || !(alpha > 0) || !isfinite(alpha)) {
            fx_seterr("split '%s': ALPHA must be a positive number", spec);
            return -1;
        }
    } else if (strcmp(spec, "iid")) {
        fx_seterr("split '%s': expected iid or dirichlet:ALPHA", spec);
        return -1;
    }
    if (nclients < 1 || nclients > d->n) {
        fx_seterr("split: %d clients for %d examples (need 1 to %d)", nclients, d->n, d->n);
        return -1;
    }
    int nclass = 0, *cls = NULL;
    if (alpha > 0 && !(cls = example_classes(d, &nclass))) return -1;

    fx_rng r;
    fx_rng_seed(&r, seed);
    int *owner = fx_malloc((size_t)d->n * sizeof *owner);
    int draw;
    for (draw = 0; draw < SPLIT_MAX_DRAWS; draw++) {
        if (alpha > 0) dirichlet_owners(cls, d->n, nclass, nclients, alpha, &r, owner);
        else for (int i = 0; i < d->n; i++) owner[i] = rng_below(&r, nclients);
        memset(counts, 0, (size_t)nclients * sizeof *counts);
        for (int i = 0; i < d->n; i++) counts[owner[i]]++;
        int empty = 0;
        for (int c = 0; c < nclients; c++) empty |= counts[c] == 0;
        if (!empty) break;
    }
    free(cls);
    if (draw == SPLIT_MAX_DRAWS) {
        fx_seterr("split '%s': %d draws all left a client without examples; use fewer than %d clients or a "
                  "larger alpha", spec, SPLIT_MAX_DRAWS, nclients);
        free(owner);
        return -1;
    }
    for (int c = 0; c < nclients; c++) {
        rows[c] = fx_malloc((size_t)counts[c] * sizeof **rows);
        counts[c] = 0;
    }
    for (int i = 0; i < d->n; i++) rows[owner[i]][counts[owner[i]]++] = i;
    free(owner);
    return 0;
}

void fx_split_report(FILE *f, const fx_dataset *d, int nclients, int *const *rows, const int *counts) {
    int nclass = 0, *cls = example_classes(d, &nclass);
    if (!cls) { fprintf(f, "split report: %s\n", fx_err()); return; }
    int *hist = fx_calloc((size_t)nclass, sizeof *hist);
    int *seen = fx_calloc((size_t)nclass, sizeof *seen); /* classes the data hold (d->cls may leave gaps) */
    for (int i = 0; i < d->n; i++) seen[cls[i]] = 1;
    fprintf(f, "%d clients, %d examples; %s per client:\n", nclients, d->n,
            d->cls ? "class counts (MR slot counts)" : d->task->num_labels == 1 ? "target quintile bins" : "label counts");
    for (int c = 0; c < nclients; c++) {
        memset(hist, 0, (size_t)nclass * sizeof *hist);
        for (int i = 0; i < counts[c]; i++) hist[cls[rows[c][i]]]++;
        fprintf(f, "  client %3d: %7d examples |", c, counts[c]);
        for (int k = 0; k < nclass; k++) if (!d->cls || seen[k]) fprintf(f, " %d:%d", k, hist[k]);
        fputc('\n', f);
    }
    free(hist); free(seen);
    free(cls);
}

/* ============================================================================================
 * Metrics
 * ============================================================================================
 * Definitions follow sklearn.metrics and scipy.stats, in double. Where those warn and return a fallback,
 * so do these: F1 and MCC give 0 when undefined; Pearson and Spearman give NAN for a constant input, as
 * scipy does. */

double fx_accuracy(const int *pred, const int *gold, int n) {
    if (n <= 0) return NAN;
    int ok = 0;
    for (int i = 0; i < n; i++) ok += pred[i] == gold[i];
    return (double)ok / n;
}

/* F1 = 2 tp / (2 tp + fp + fn) for class 1: the harmonic mean of precision and recall, written so it
 * is defined whenever any example is positive in prediction or truth. */
double fx_f1(const int *pred, const int *gold, int n) {
    double tp = 0, fp = 0, fn = 0;
    for (int i = 0; i < n; i++) {
        tp += pred[i] == 1 && gold[i] == 1;
        fp += pred[i] == 1 && gold[i] != 1;
        fn += pred[i] != 1 && gold[i] == 1;
    }
    double den = 2 * tp + fp + fn;
    return den > 0 ? 2 * tp / den : 0.0;
}

/* Gorodkin's multiclass MCC, as sklearn: with confusion matrix C, t = row sums, p = column sums,
 * c = trace, s = n:  (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)); 0 when a factor under the root is 0.
 * For two classes it is (tp tn - fp fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)). */
double fx_mcc(const int *pred, const int *gold, int n) {
    int K = 0;
    for (int i = 0; i < n; i++) {
        if (pred[i] < 0 || gold[i] < 0) return NAN;
        if (pred[i] >= K) K = pred[i] + 1;
        if (gold[i] >= K) K = gold[i] + 1;
    }
    double *t = fx_calloc((size_t)K, sizeof *t), *p = fx_calloc((size_t)K, sizeof *p), c = 0, s = n;
    for (int i = 0; i < n; i++) { t[gold[i]]++; p[pred[i]]++; c += pred[i] == gold[i]; }
    double tp = 0, pp = 0, tt = 0;
    for (int k = 0; k < K; k++) { tp += t[k] * p[k]; pp += p[k] * p[k]; tt += t[k] * t[k]; }
    free(t); free(p);
    double cov_tp = c * s - tp, cov_pp = s * s - pp, cov_tt = s * s - tt;
    if (cov_pp * cov_tt == 0) return 0.0;
    return cov_tp / sqrt(cov_tt * cov_pp);
}

/* r = sum (x - mx)(y - my) / sqrt(sum (x - mx)^2 sum (y - my)^2), means first (two passes), clipped
 * to [-1, 1] against rounding, as scipy.stats.pearsonr. */
double fx_pearson(const double *x, const double *y, int n) {
    if (n < 2) return NAN;
    double mx = 0, my = 0;
    for (int i = 0; i < n; i++) { mx += x[i]; my += y[i]; }
    mx /= n; my /= n;
    double sxx = 0, syy = 0, sxy = 0;
    int xconst = 1, yconst = 1;
    for (int i = 0; i < n; i++) {
        double dx = x[i] - mx, dy = y[i] - my;
        sxx += dx * dx; syy += dy * dy; sxy += dx * dy;
        xconst &= x[i] == x[0];
        yconst &= y[i] == y[0];
    }
    if (xconst || yconst) return NAN;
    double r = sxy / (sqrt(sxx) * sqrt(syy));
    return r > 1 ? 1 : r < -1 ? -1 : r;
}

typedef struct { double v; int i; } ranked;
static int cmp_ranked(const void *a, const void *b) {
    const ranked *x = a, *y = b;
    if (x->v != y->v) return x->v < y->v ? -1 : 1;
    return (x->i > y->i) - (x->i < y->i);
}

/* 1-based ranks of V; a run of equal values shares the mean of the ranks it spans. */
static void average_ranks(const double *v, int n, double *rank) {
    ranked *s = fx_malloc((size_t)n * sizeof *s);
    for (int i = 0; i < n; i++) { s[i].v = v[i]; s[i].i = i; }
    qsort(s, (size_t)n, sizeof *s, cmp_ranked);
    for (int i = 0; i < n; ) {
        int j = i;
        while (j + 1 < n && s[j + 1].v == s[i].v) j++;
        double r = 0.5 * (i + j) + 1;                        /* mean of ranks i+1 .. j+1 */
        for (int k = i; k <= j; k++) rank[s[k].i] = r;
        i = j + 1;
    }
    free(s);
}

/* Spearman's rho: Pearson's r of the average ranks. NAN propagates as in scipy (and keeps qsort's
 * comparisons consistent). */
double fx_spearman(const double *x, const double *y, int n) {
    if (n < 2) return NAN;
    for (int i = 0; i < n; i++) if (isnan(x[i]) || isnan(y[i])) return NAN;
    double *rx = fx_malloc((size_t)n * sizeof *rx), *ry = fx_malloc((size_t)n * sizeof *ry);
    average_ranks(x, n, rx);
    average_ranks(y, n, ry);
    double r = fx_pearson(rx, ry, n);
    free(rx); free(ry);
    return r;
}

void fx_task_metrics(const fx_task *t, const float *logits, const float *labels, int n, fx_metrics *m) {
    m->accuracy = m->f1 = m->mcc = m->pearson = m->spearman = NAN;
    m->main_name = t->metric;
    int nl = t->num_labels;
    if (nl == 1) {
        double *x = fx_malloc((size_t)(n ? n : 1) * sizeof *x), *y = fx_malloc((size_t)(n ? n : 1) * sizeof *y);
        for (int i = 0; i < n; i++) { x[i] = logits[i]; y[i] = labels[i]; }
        m->pearson = fx_pearson(x, y, n);
        m->spearman = fx_spearman(x, y, n);
        free(x); free(y);
    } else {
        int *pred = fx_malloc((size_t)(n ? n : 1) * sizeof *pred), *gold = fx_malloc((size_t)(n ? n : 1) * sizeof *gold);
        for (int i = 0; i < n; i++) {
            const float *l = logits + (size_t)i * nl;
            int best = 0;                                    /* first maximum, as numpy's argmax */
            for (int k = 1; k < nl; k++) if (l[k] > l[best]) best = k;
            pred[i] = best;
            gold[i] = (int)labels[i];
        }
        m->accuracy = fx_accuracy(pred, gold, n);
        /* What Hugging Face's glue metric reports besides accuracy: F1 for the paraphrase tasks, MCC
         * for CoLA. */
        if (!strcmp(t->name, "MRPC") || !strcmp(t->name, "QQP")) m->f1 = fx_f1(pred, gold, n);
        if (!strcmp(t->metric, "mcc")) m->mcc = fx_mcc(pred, gold, n);
        free(pred); free(gold);
    }
    m->main = !strcmp(t->metric, "mcc") ? m->mcc : !strcmp(t->metric, "pearson") ? m->pearson
            : !strcmp(t->metric, "f1") ? m->f1 : m->accuracy;
}

/* ============================================================================================
 * The synthetic task
 * ============================================================================================
 * Each row picks a favoured half of the body vocabulary, then draws every body token from it with
 * probability SYNTH_BIAS. The label is the documented rule (more lower-half tokens than upper-half,
 * strictly), counted on the tokens actually drawn; the bias only makes the margin wide, so a tiny
 * model that averages a "lower half" feature over the sequence from its first token learns it fast. */

#define SYNTH_BIAS 0.8

int fx_dataset_synthetic(int n, int vocab, int max_len, uint64_t seed, fx_dataset *d) {
    memset(d, 0, sizeof *d);
    if (n < 1 || vocab < 6 || max_len < 8) {
        fx_seterr("synthetic task: n %d, vocab %d, max_len %d (need n >= 1, vocab >= 6, max_len >= 8)", n, vocab, max_len);
        return -1;
    }
    size_t cap;
    if (fx_mul_size((size_t)n, (size_t)max_len, &cap) != 0) { fx_seterr("synthetic task: %d x %d rows too large", n, max_len); return -1; }
    int half = (vocab - 4) / 2;                              /* lower half [4, 4 + half), upper the rest */
    fx_rng r;
    fx_rng_seed(&r, seed);
    d->task = &synthetic_task;
    d->ids = fx_malloc(cap * sizeof *d->ids);
    d->off = fx_malloc(((size_t)n + 1) * sizeof *d->off);
    d->labels = fx_malloc((size_t)n * sizeof *d->labels);
    d->n = n;
    size_t used = 0;
    d->off[0] = 0;
    for (int i = 0; i < n; i++) {
        int len = 8 + rng_below(&r, max_len - 8 + 1), lower_side = rng_below(&r, 2), nlow = 0;
        d->ids[used++] = 0;
        for (int j = 1; j < len - 1; j++) {
            int lower = (fx_rng_uniform(&r) < SYNTH_BIAS) == lower_side;
            int tok = lower ? 4 + rng_below(&r, half) : 4 + half + rng_below(&r, vocab - 4 - half);
            nlow += lower;
            d->ids[used++] = tok;
        }
        d->ids[used++] = 2;
        d->off[i + 1] = used;
        d->labels[i] = nlow > (len - 2) - nlow ? 1.0f : 0.0f;
    }
    return 0;
}
