/* tests/test_glue.c: glue.c against independent references: metrics against sklearn/scipy values
 * (tests/fixtures/metrics_glue.txt, from tests/make_metric_fixtures.py), the GLUE files against row and
 * label counts taken with awk, tokenised splits against Hugging Face's ids (../shared/fixtures), crafted
 * bad files against their path:line errors, and the invariants of client splits, batches and the
 * synthetic task. */
#include "fedex.h"
#include "check.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---------------------------------------------------------------- tolerances */

/* The metrics use sklearn's and scipy's formulas in double over at most 500 values of magnitude <= 1e4
 * (after centring <= 10); only the order of summation differs, worth n * 2^-52 relative at most. */
#define TOL_METRIC 1e-12
/* Dirichlet skew: mean (size-weighted) total-variation distance between each client's label mix and
 * the global mix, 3000 examples, 10 clients, 3 classes (or 5 target quintiles). Dir(0.1) puts most of a
 * class on one or two clients (measured 0.43 on labels, 0.52 on quintiles); Dir(1000) and iid leave only
 * sampling noise (measured 0.014 to 0.046). The bounds sit well between the two regimes. */
#define SKEW_LOW_ALPHA_MIN 0.3
#define SKEW_HIGH_ALPHA_MAX 0.1

/* ---------------------------------------------------------------- helpers */

static char tmpdir[] = "/tmp/fedex_test_glue_XXXXXX";

static const char *write_tmp(const char *name, const char *text, size_t len) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(text, 1, len, f) != len || fclose(f) != 0) { perror(path); exit(2); }
    return path;
}

/* A dataset without a tokenizer: row i has len[i] ids (i * 100 + j), label y[i]. */
static void fake_dataset(const fx_task *t, int n, const int *len, const float *y, fx_dataset *d) {
    memset(d, 0, sizeof *d);
    d->task = t; d->n = n;
    d->off = fx_malloc(((size_t)n + 1) * sizeof *d->off);
    d->labels = fx_malloc((size_t)n * sizeof *d->labels);
    d->off[0] = 0;
    for (int i = 0; i < n; i++) d->off[i + 1] = d->off[i] + (size_t)len[i];
    d->ids = fx_malloc((d->off[n] ? d->off[n] : 1) * sizeof *d->ids);
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < len[i]; j++) d->ids[d->off[i] + (size_t)j] = i * 100 + j;
        d->labels[i] = y[i];
    }
}

/* ---------------------------------------------------------------- tasks */

static void test_task_find(void) {
    const char *alias[][2] = {{"sst2", "SST-2"}, {"SST-2", "SST-2"}, {"cola", "CoLA"}, {"STS_B", "STS-B"},
                              {"stsb", "STS-B"}, {"mnli", "MNLI"}, {"mnli-mm", "MNLI-MM"},
                              {"mnli_mismatched", "MNLI-MM"}, {"QNLI", "QNLI"}, {"rte", "RTE"},
                              {"qqp", "QQP"}, {"wnli", "WNLI"}, {"mrpc", "MRPC"}, {"Synthetic", "synthetic"}};
    for (size_t i = 0; i < sizeof alias / sizeof alias[0]; i++) {
        const fx_task *t = fx_task_find(alias[i][0]);
        CHECK(t && !strcmp(t->name, alias[i][1]), "fx_task_find(%s) gave %s", alias[i][0], t ? t->name : "NULL");
    }
    CHECK(fx_task_find("squad") == NULL && strstr(fx_err(), "squad"), "unknown task: %s", fx_err());

    const fx_task *cola = fx_task_find("cola"), *stsb = fx_task_find("sts-b"), *mm = fx_task_find("mnli-mm");
    CHECK(!strcmp(cola->metric, "mcc") && !strcmp(stsb->metric, "pearson") && stsb->num_labels == 1,
          "headline metrics");
    CHECK(mm->num_labels == 3 && !strcmp(mm->labels[0], "contradiction") && !strcmp(mm->labels[1], "entailment")
          && !strcmp(mm->labels[2], "neutral"), "MNLI label order as Hugging Face's processor");

    /* label names as the Hugging Face glue dataset's features name them, in fedex's ids */
    const char *names[][4] = {{"cola", "unacceptable", "acceptable", NULL}, {"sst2", "negative", "positive", NULL},
                              {"mrpc", "not_equivalent", "equivalent", NULL}, {"qqp", "not_duplicate", "duplicate", NULL},
                              {"qnli", "entailment", "not_entailment", NULL}, {"rte", "entailment", "not_entailment", NULL},
                              {"wnli", "not_entailment", "entailment", NULL},
                              {"mnli", "contradiction", "entailment", "neutral"},
                              {"mnli-mm", "contradiction", "entailment", "neutral"}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const fx_task *t = fx_task_find(names[i][0]);
        int ok = t != NULL;
        for (int k = 0; ok && k < t->num_labels; k++) ok = t->names[k] && !strcmp(t->names[k], names[i][k + 1]);
        CHECK(ok && t->num_labels == (names[i][3] ? 3 : 2), "%s: label names", names[i][0]);
    }
    CHECK(!stsb->names[0] && !fx_task_find("synthetic")->names[0], "STS-B (regression) and synthetic have no names");

    char p[64];
    CHECK(fx_glue_path(mm, "/d", "dev", p, sizeof p) == 0 && !strcmp(p, "/d/MNLI/dev_mismatched.tsv"), "%s", p);
    CHECK(fx_glue_path(mm, "/d", "train", p, sizeof p) == 0 && !strcmp(p, "/d/MNLI/train.tsv"), "%s", p);
    CHECK(fx_glue_path(cola, "/d", "dev", p, sizeof p) == 0 && !strcmp(p, "/d/CoLA/dev.tsv"), "%s", p);
    CHECK(fx_glue_path(cola, "/d", "valid", p, sizeof p) == -1, "unknown split refused");
    CHECK(fx_glue_path(cola, "/a/very/long/data/folder/name", "train", p, 16) == -1, "overflowing path refused");
    CHECK(fx_glue_path(fx_task_find("synthetic"), "/d", "train", p, sizeof p) == -1, "synthetic has no files");
}

/* ---------------------------------------------------------------- the GLUE files */

/* Row counts from ../shared/data/README.md; label counts taken with awk on the files. */
static const struct { const char *task, *split; int rows; int nlab; int lab_count[2]; } glue_counts[] = {
    {"CoLA", "train", 8551, 0, {0, 0}},  {"CoLA", "dev", 1043, 2, {322, 721}},
    {"SST-2", "train", 67349, 2, {29780, 37569}}, {"SST-2", "dev", 872, 0, {0, 0}},
    {"MRPC", "train", 3668, 0, {0, 0}},  {"MRPC", "dev", 408, 2, {129, 279}},
    {"STS-B", "train", 5749, 0, {0, 0}}, {"STS-B", "dev", 1500, 0, {0, 0}},
    {"QNLI", "dev", 5463, 2, {2702, 2761}},
    {"RTE", "train", 2490, 2, {1249, 1241}}, {"RTE", "dev", 277, 0, {0, 0}},
};

static void test_read_glue(const char *shared) {
    char dir[512], path[1024];
    snprintf(dir, sizeof dir, "%s/data/glue", shared);
    for (size_t i = 0; i < sizeof glue_counts / sizeof glue_counts[0]; i++) {
        const fx_task *t = fx_task_find(glue_counts[i].task);
        fx_rows r;
        CHECK(fx_glue_path(t, dir, glue_counts[i].split, path, sizeof path) == 0, "path");
        if (fx_glue_read(t, path, &r) != 0) { CHECK(0, "%s", fx_err()); continue; }
        CHECK(r.n == glue_counts[i].rows, "%s: %d rows, want %d", path, r.n, glue_counts[i].rows);
        CHECK((r.b != NULL) == (t->col_b >= 0), "%s: second text present iff a pair task", path);
        CHECK(r.line[0] == 1 + t->header && r.line[r.n - 1] == r.n + t->header, "%s: line numbers", path);
        int cnt[2] = {0, 0}, bad = 0;
        for (int k = 0; k < r.n; k++) {
            if (t->num_labels == 2 && (r.label[k] == 0 || r.label[k] == 1)) cnt[(int)r.label[k]]++;
            else if (t->num_labels == 1 && !(r.label[k] >= 0 && r.label[k] <= 5)) bad++;
            if (strchr(r.a[k], '\r') || strchr(r.a[k], '\t') || (r.b && (strchr(r.b[k], '\r') || strchr(r.b[k], '\t')))) bad++;
        }
        CHECK(bad == 0, "%s: %d rows with a bad score or stray \\r/\\t", path, bad);
        if (glue_counts[i].nlab)
            CHECK(cnt[0] == glue_counts[i].lab_count[0] && cnt[1] == glue_counts[i].lab_count[1],
                  "%s: labels 0:%d 1:%d, want %d %d", path, cnt[0], cnt[1], glue_counts[i].lab_count[0],
                  glue_counts[i].lab_count[1]);
        /* Spot checks against the raw files (head/sed -n on them). */
        if (!strcmp(t->name, "MRPC") && !strcmp(glue_counts[i].split, "dev"))
            CHECK(!strcmp(r.b[0], "\"The foodservice pie business does not fit our long-term growth strategy.")
                  && r.label[0] == 1, "MRPC dev row 0 kept byte for byte (stray quote included)");
        if (!strcmp(t->name, "SST-2") && !strcmp(glue_counts[i].split, "dev"))
            CHECK(!strcmp(r.a[0], "it 's a charming and often affecting journey . "), "SST-2 trailing space kept");
        if (!strcmp(t->name, "STS-B") && !strcmp(glue_counts[i].split, "dev")) {
            double sum = 0;
            for (int k = 0; k < r.n; k++) sum += r.label[k];
            CHECK(fabs(sum - 3545.8613) < 1e-3, "STS-B dev score sum %.4f (awk: 3545.8613)", sum);
            CHECK(!strcmp(r.a[3], "A woman is playing the guitar.") && !strcmp(r.b[3], "A man is playing guitar.")
                  && r.label[3] == 2.4f, "STS-B dev row 3");
        }
        if (!strcmp(t->name, "CoLA") && !strcmp(glue_counts[i].split, "dev"))
            CHECK(!strcmp(r.a[r.n - 1], "John talked to Bill about himself."), "CoLA dev last row (no final newline)");
        fx_rows_free(&r);
    }
    /* QNLI's training file is absent from the data folder. */
    fx_rows r;
    fx_glue_path(fx_task_find("qnli"), dir, "train", path, sizeof path);
    CHECK(fx_glue_read(fx_task_find("qnli"), path, &r) == -1 && strstr(fx_err(), path)
          && strstr(fx_err(), "no such file"), "missing split: %s", fx_err());
    /* Tasks whose folders may or may not be present: read whatever is there. */
    const char *maybe[] = {"QQP", "MNLI", "MNLI-MM", "WNLI"};
    for (int i = 0; i < 4; i++) {
        for (int s = 0; s < 2; s++) {
            fx_glue_path(fx_task_find(maybe[i]), dir, s ? "dev" : "train", path, sizeof path);
            if (access(path, R_OK) != 0) { printf("skipped: %s (not in the data folder)\n", path); continue; }
            int rc = fx_glue_read(fx_task_find(maybe[i]), path, &r);
            CHECK(rc == 0 && r.n > 0, "%s: %s", path, rc ? fx_err() : "no rows");
            if (rc == 0) fx_rows_free(&r);
        }
    }
}

/* ---------------------------------------------------------------- bad files */

static void expect_error(const char *task, const char *name, const char *text, size_t len, const char *where,
                         const char *what) {
    const char *path = write_tmp(name, text, len);
    char want[600];
    snprintf(want, sizeof want, "%s%s", path, where);
    fx_rows r;
    int rc = fx_glue_read(fx_task_find(task), path, &r);
    CHECK(rc == -1 && strstr(fx_err(), want) && strstr(fx_err(), what) && !strchr(fx_err(), '\n'),
          "%s: want one line with '%s' and '%s', got rc %d: %s", name, want, what, rc, rc ? fx_err() : "");
}

static void test_bad_files(void) {
    const char *hdr = "index\tsentence1\tsentence2\tlabel\n";
    char buf[512];
    snprintf(buf, sizeof buf, "%s0\ta\tb\tentailment\n1\ta\tb\n", hdr);
    expect_error("rte", "cols.tsv", buf, strlen(buf), ":3:", "3 columns, expected 4");
    snprintf(buf, sizeof buf, "%s0\ta\tb\tmaybe\n", hdr);
    expect_error("rte", "label.tsv", buf, strlen(buf), ":2:", "unknown label 'maybe'");
    snprintf(buf, sizeof buf, "sentence\tlabel\nfine\t1\nbad \xff byte\t0\n");
    expect_error("sst2", "utf8.tsv", buf, strlen(buf), ":3:", "invalid UTF-8");
    snprintf(buf, sizeof buf, "sentence\tlabel\nfine\t1\nsurrogate \xed\xa0\x80\t0\n");
    expect_error("sst2", "surrogate.tsv", buf, strlen(buf), ":3:", "invalid UTF-8");
    snprintf(buf, sizeof buf, "sentence\tlabel\nfine\t2\n");
    expect_error("sst2", "numlabel.tsv", buf, strlen(buf), ":2:", "unknown label '2'");
    snprintf(buf, sizeof buf, "gj04\t1\t\tok\ngj04\t1\t\n");
    expect_error("cola", "cola.tsv", buf, strlen(buf), ":2:", "3 columns");
    const char *sts = "i\tg\tf\ty\to\ts1\ts2\tsentence1\tsentence2\tscore\n";
    snprintf(buf, sizeof buf, "%s0\tg\tf\ty\to\ts\ts\tA\tB\t5.5\n", sts);
    expect_error("stsb", "score.tsv", buf, strlen(buf), ":2:", "5.5");
    snprintf(buf, sizeof buf, "%s0\tg\tf\ty\to\ts\ts\tA\tB\tnan\n", sts);
    expect_error("stsb", "nan.tsv", buf, strlen(buf), ":2:", "nan");
    snprintf(buf, sizeof buf, "%s0\tg\tf\ty\to\ts\ts\tA\tB\t1.0x\n", sts);
    expect_error("stsb", "junk.tsv", buf, strlen(buf), ":2:", "1.0x");
    expect_error("sst2", "nul.tsv", "sentence\tlabel\na\0b\t1\n", 21, ":2:", "NUL");
    expect_error("sst2", "empty.tsv", "sentence\tlabel\n", 15, ":", "no rows");

    char missing[600];
    snprintf(missing, sizeof missing, "%s/nowhere/train.tsv", tmpdir);
    fx_rows r;
    CHECK(fx_glue_read(fx_task_find("rte"), missing, &r) == -1 && strstr(fx_err(), missing)
          && strstr(fx_err(), "no such file (this split is not in the data folder)"), "missing: %s", fx_err());

    /* Accepted quirks: CRLF line ends, a byte-order mark before the header, no final newline, MNLI's
     * label in the last column whatever the column count, STS-B's integer scores. */
    snprintf(buf, sizeof buf, "\xEF\xBB\xBF%s0\tx y\t\"q\tnot_entailment\r\n1\ta\tb\tentailment", hdr);
    const char *path = write_tmp("good.tsv", buf, strlen(buf));
    int rc = fx_glue_read(fx_task_find("rte"), path, &r);
    CHECK(rc == 0 && r.n == 2 && !strcmp(r.a[0], "x y") && !strcmp(r.b[0], "\"q") && r.label[0] == 1
          && r.label[1] == 0 && r.line[1] == 3, "CRLF/BOM/no final newline: %s", rc ? fx_err() : "");
    if (rc == 0) fx_rows_free(&r);
    snprintf(buf, sizeof buf, "h1\th2\th3\th4\th5\th6\th7\th8\th9\th10\th11\th12\n"
                              "0\t1\t2\t3\t4\t5\t6\t7\tP\tH\tx\tneutral\n"
                              "0\t1\t2\t3\t4\t5\t6\t7\tP2\tH2\tx\ty\tz\tw\tv\tcontradiction\n");
    path = write_tmp("mnli.tsv", buf, strlen(buf));
    rc = fx_glue_read(fx_task_find("mnli"), path, &r);
    CHECK(rc == 0 && r.n == 2 && !strcmp(r.a[1], "P2") && !strcmp(r.b[1], "H2") && r.label[0] == 2
          && r.label[1] == 0, "MNLI train/dev layouts: %s", rc ? fx_err() : "");
    if (rc == 0) fx_rows_free(&r);
    snprintf(buf, sizeof buf, "h1\th2\th3\th4\th5\th6\th7\th8\th9\th10\th11\th12\n0\t1\t2\t3\t4\t5\t6\t7\tP\tH\n");
    expect_error("mnli", "mnli_short.tsv", buf, strlen(buf), ":2:", "10 columns");
    snprintf(buf, sizeof buf, "%s0\tg\tf\ty\to\ts\ts\tA\tB\t3\n", sts);
    path = write_tmp("sts_int.tsv", buf, strlen(buf));
    rc = fx_glue_read(fx_task_find("stsb"), path, &r);
    CHECK(rc == 0 && r.n == 1 && r.label[0] == 3.0f, "STS-B integer score: %s", rc ? fx_err() : "");
    if (rc == 0) fx_rows_free(&r);
}

/* ---------------------------------------------------------------- metrics */

/* Reads "KEY v v v ..." for a known count; strtof for regression values, as the fixture asks. */
static int read_ints(FILE *f, const char *key, int n, int *v) {
    char k[8];
    if (fscanf(f, "%7s", k) != 1 || strcmp(k, key)) return -1;
    for (int i = 0; i < n; i++) if (fscanf(f, "%d", &v[i]) != 1) return -1;
    return 0;
}
static int read_floats(FILE *f, const char *key, int n, double *v) {
    char k[8], tok[64];
    if (fscanf(f, "%7s", k) != 1 || strcmp(k, key)) return -1;
    for (int i = 0; i < n; i++) {
        if (fscanf(f, "%63s", tok) != 1) return -1;
        v[i] = strtod(tok, NULL);
        if (strcmp(key, "m")) v[i] = (double)strtof(tok, NULL); /* x, y are float32 values */
    }
    return 0;
}

static int close_or_both_nan(double got, double want) {
    return isnan(want) ? isnan(got) : fabs(got - want) <= TOL_METRIC;
}

static void test_metrics(void) {
    const char *path = "tests/fixtures/metrics_glue.txt";
    FILE *f = fopen(path, "r");
    if (!f) { CHECK(0, "%s: cannot open (run from the repository root)", path); return; }
    char line[256], kind[8], name[64];
    int ncls = 0, nreg = 0;
    if (!fgets(line, sizeof line, f) || line[0] != '#') CHECK(0, "%s: no header", path);
    int n;
    while (fscanf(f, "%7s %63s %d", kind, name, &n) == 3) {
        if (n < 1 || n > 100000) { CHECK(0, "%s: case %s: n %d", path, name, n); break; }
        if (!strcmp(kind, "cls")) {
            int *p = fx_malloc((size_t)n * sizeof *p), *g = fx_malloc((size_t)n * sizeof *g);
            double m[3];
            if (read_ints(f, "p", n, p) || read_ints(f, "g", n, g) || read_floats(f, "m", 3, m)) {
                CHECK(0, "%s: case %s unreadable", path, name); free(p); free(g); break;
            }
            double acc = fx_accuracy(p, g, n), f1 = fx_f1(p, g, n), mcc = fx_mcc(p, g, n);
            CHECK(close_or_both_nan(acc, m[0]), "%s accuracy %.17g sklearn %.17g", name, acc, m[0]);
            CHECK(close_or_both_nan(f1, m[1]), "%s f1 %.17g sklearn %.17g", name, f1, m[1]);
            CHECK(close_or_both_nan(mcc, m[2]), "%s mcc %.17g sklearn %.17g", name, mcc, m[2]);
            /* The same through fx_task_metrics, with logits whose argmax is the prediction. */
            int K = 0;
            for (int i = 0; i < n; i++) { if (p[i] >= K) K = p[i] + 1; if (g[i] >= K) K = g[i] + 1; }
            if (K <= 2) {
                float *logits = fx_calloc((size_t)n * 2, sizeof *logits), *lab = fx_malloc((size_t)n * sizeof *lab);
                for (int i = 0; i < n; i++) { logits[2 * i + p[i]] = 1.5f; logits[2 * i + 1 - p[i]] = -0.25f; lab[i] = (float)g[i]; }
                fx_metrics tm;
                fx_task_metrics(fx_task_find("cola"), logits, lab, n, &tm);
                CHECK(close_or_both_nan(tm.mcc, m[2]) && tm.main == tm.mcc && !strcmp(tm.main_name, "mcc")
                      && close_or_both_nan(tm.accuracy, m[0]) && isnan(tm.f1) && isnan(tm.pearson),
                      "%s: CoLA task metrics", name);
                fx_task_metrics(fx_task_find("mrpc"), logits, lab, n, &tm);
                CHECK(close_or_both_nan(tm.f1, m[1]) && close_or_both_nan(tm.main, tm.f1) && !strcmp(tm.main_name, "f1") &&
                      close_or_both_nan(tm.accuracy, m[0]) && isnan(tm.mcc), "%s: MRPC's headline is F1, accuracy beside it", name);
                free(logits); free(lab);
            }
            free(p); free(g);
            ncls++;
        } else if (!strcmp(kind, "reg")) {
            double *x = fx_malloc((size_t)n * sizeof *x), *y = fx_malloc((size_t)n * sizeof *y), m[2];
            if (read_floats(f, "x", n, x) || read_floats(f, "y", n, y) || read_floats(f, "m", 2, m)) {
                CHECK(0, "%s: case %s unreadable", path, name); free(x); free(y); break;
            }
            double pr = fx_pearson(x, y, n), sr = fx_spearman(x, y, n);
            CHECK(close_or_both_nan(pr, m[0]), "%s pearson %.17g scipy %.17g", name, pr, m[0]);
            CHECK(close_or_both_nan(sr, m[1]), "%s spearman %.17g scipy %.17g", name, sr, m[1]);
            float *xf = fx_malloc((size_t)n * sizeof *xf), *yf = fx_malloc((size_t)n * sizeof *yf);
            for (int i = 0; i < n; i++) { xf[i] = (float)x[i]; yf[i] = (float)y[i]; }
            fx_metrics tm;
            fx_task_metrics(fx_task_find("stsb"), xf, yf, n, &tm);
            CHECK(close_or_both_nan(tm.pearson, m[0]) && close_or_both_nan(tm.spearman, m[1])
                  && close_or_both_nan(tm.main, m[0]) && isnan(tm.accuracy) && !strcmp(tm.main_name, "pearson"),
                  "%s: STS-B task metrics", name);
            free(x); free(y); free(xf); free(yf);
            nreg++;
        } else { CHECK(0, "%s: unknown case kind %s", path, kind); break; }
    }
    fclose(f);
    CHECK(ncls >= 10 && nreg >= 8, "%s: %d classification and %d regression cases read", path, ncls, nreg);

    /* Argmax ties go to the first class, as numpy's argmax. */
    float logits[6] = {0.5f, 0.5f, 0.1f, 1, 1, 1};
    float lab[2] = {0, 0};
    fx_metrics tm;
    fx_task_metrics(fx_task_find("mnli"), logits, lab, 2, &tm);
    CHECK(tm.accuracy == 1.0, "argmax ties pick the first maximum (accuracy %g)", tm.accuracy);
}

/* ---------------------------------------------------------------- client splits */

/* Size-weighted mean total-variation distance between each client's class mix and the global one. */
static double label_skew(const fx_dataset *d, int nclients, int **rows, const int *counts, int nclass) {
    double global[8] = {0}, tv = 0;
    for (int i = 0; i < d->n; i++) global[(int)d->labels[i]] += 1.0 / d->n;
    for (int c = 0; c < nclients; c++) {
        double h[8] = {0}, dist = 0;
        for (int i = 0; i < counts[c]; i++) h[(int)d->labels[rows[c][i]]] += 1.0 / counts[c];
        for (int k = 0; k < nclass; k++) dist += 0.5 * fabs(h[k] - global[k]);
        tv += dist * counts[c] / d->n;
    }
    return tv;
}

/* Every example in exactly one client, each client's rows ascending. */
static int partition_ok(const fx_dataset *d, int nclients, int **rows, const int *counts) {
    int *seen = fx_calloc((size_t)d->n, sizeof *seen), ok = 1, total = 0;
    for (int c = 0; c < nclients; c++) {
        total += counts[c];
        ok &= counts[c] > 0;
        for (int i = 0; i < counts[c]; i++) {
            int r = rows[c][i];
            if (r < 0 || r >= d->n || (i && r <= rows[c][i - 1])) { ok = 0; continue; }
            seen[r]++;
        }
    }
    for (int i = 0; i < d->n; i++) ok &= seen[i] == 1;
    free(seen);
    return ok && total == d->n;
}

static void free_split(int nclients, int **rows) { for (int c = 0; c < nclients; c++) free(rows[c]); }

static void test_splits(void) {
    enum { N = 3000, C = 10 };
    int *len = fx_malloc(N * sizeof *len);
    float *y = fx_malloc(N * sizeof *y), *score = fx_malloc(N * sizeof *score);
    fx_rng r;
    fx_rng_seed(&r, 7);
    for (int i = 0; i < N; i++) {
        len[i] = 3;
        y[i] = (float)(fx_rng_u64(&r) % 3);
        score[i] = (float)(5 * fx_rng_uniform(&r));
    }
    fx_dataset d, reg;
    fake_dataset(fx_task_find("mnli"), N, len, y, &d);
    fake_dataset(fx_task_find("stsb"), N, len, score, &reg);

    int *rows[C], *rows2[C], counts[C], counts2[C];
    const char *specs[] = {"iid", "dirichlet:0.1", "dirichlet:1000", "dirichlet:0.5"};
    for (int s = 0; s < 4; s++) {
        for (int which = 0; which < 2; which++) {
            const fx_dataset *dd = which ? &reg : &d;
            int rc = fx_split_clients(dd, C, specs[s], 42, rows, counts);
            if (rc) { CHECK(0, "%s: %s", specs[s], fx_err()); continue; }
            CHECK(partition_ok(dd, C, rows, counts), "%s (%s): every example in exactly one client",
                  specs[s], dd->task->name);
            CHECK(fx_split_clients(dd, C, specs[s], 42, rows2, counts2) == 0, "%s again", specs[s]);
            int same = 1, differ = 0;
            for (int c = 0; c < C; c++) {
                same &= counts[c] == counts2[c] && !memcmp(rows[c], rows2[c], (size_t)counts[c] * sizeof(int));
            }
            CHECK(same, "%s: same seed, same split", specs[s]);
            free_split(C, rows2);
            CHECK(fx_split_clients(dd, C, specs[s], 43, rows2, counts2) == 0, "%s seed 43", specs[s]);
            for (int c = 0; c < C; c++)
                differ |= counts[c] != counts2[c] || memcmp(rows[c], rows2[c], (size_t)counts[c] * sizeof(int));
            CHECK(differ, "%s: another seed, another split", specs[s]);
            free_split(C, rows2);
            if (!which) {
                double skew = label_skew(dd, C, rows, counts, 3);
                if (s == 1) CHECK(skew > SKEW_LOW_ALPHA_MIN, "dirichlet:0.1 skew %.3f", skew);
                if (s == 0 || s == 2) CHECK(skew < SKEW_HIGH_ALPHA_MAX, "%s skew %.3f", specs[s], skew);
                if (s == 0) {
                    /* Binomial(3000, 0.1) client sizes: sd 16.4; 100 is six of them. */
                    int ok = 1;
                    for (int c = 0; c < C; c++) ok &= abs(counts[c] - N / C) < 100;
                    CHECK(ok, "iid client sizes near n / clients");
                }
            }
            if (s == 1 && which) {
                /* The report: one line per client, sizes and 5 bins adding up. */
                char *text = NULL; size_t tlen = 0;
                FILE *mf = open_memstream(&text, &tlen);
                fx_split_report(mf, dd, C, rows, counts);
                fclose(mf);
                int lines = 0, good = 0;
                for (char *p = text; (p = strstr(p, "  client ")); p++) {
                    int colons = 0;
                    for (char *q = p; *q && *q != '\n'; q++) colons += *q == ':';
                    lines++;
                    good += colons == 1 + FX_SPLIT_BINS;             /* "client N:" then one per bin */
                }
                CHECK(lines == C && good == C, "report:\n%s", text);
                free(text);
            }
            free_split(C, rows);
        }
    }
    /* Dirichlet on quintile bins skews the regression targets as it skews labels: measured on the
     * targets' quintiles, taken here by rank (the scores are continuous, so no ties). */
    fx_dataset bins;
    float *bin = fx_malloc(N * sizeof *bin);
    for (int i = 0; i < N; i++) {
        int below = 0;
        for (int k = 0; k < N; k++) below += score[k] < score[i];
        bin[i] = (float)(below * 5 / N);
    }
    fake_dataset(fx_task_find("synthetic"), N, len, bin, &bins);
    for (int s = 0; s < 2; s++) {
        CHECK(fx_split_clients(&reg, C, s ? "dirichlet:0.1" : "iid", 5, rows, counts) == 0, "reg split");
        double skew = label_skew(&bins, C, rows, counts, 5);
        CHECK(s ? skew > SKEW_LOW_ALPHA_MIN : skew < SKEW_HIGH_ALPHA_MAX, "regression %s: quintile skew %.3f",
              s ? "dirichlet:0.1" : "iid", skew);
        free_split(C, rows);
    }
    fx_dataset_free(&bins);
    free(bin);
    /* A class's examples are shuffled before they are cut: with near-equal proportions every client
     * still draws from the whole index range, not from one block of it. */
    CHECK(fx_split_clients(&d, C, "dirichlet:1000", 8, rows, counts) == 0, "dirichlet:1000");
    int spread = 1;
    for (int c = 0; c < C; c++) spread &= rows[c][counts[c] - 1] - rows[c][0] > N / 2;
    CHECK(spread, "dirichlet clients span the dataset");
    free_split(C, rows);

    const char *bad[] = {"dirichlet:0", "dirichlet:-1", "dirichlet:", "dirichlet:x", "dirichlet:inf", "iid2", "dir:1"};
    for (int i = 0; i < 7; i++)
        CHECK(fx_split_clients(&d, C, bad[i], 1, rows, counts) == -1 && strstr(fx_err(), bad[i]), "%s: %s", bad[i], fx_err());
    CHECK(fx_split_clients(&d, 0, "iid", 1, rows, counts) == -1, "0 clients refused");
    CHECK(fx_split_clients(&d, N + 1, "iid", 1, rows, counts) == -1, "more clients than examples refused");
    /* One client holds everything. */
    CHECK(fx_split_clients(&d, 1, "dirichlet:0.01", 1, rows, counts) == 0 && counts[0] == N, "one client");
    free_split(1, rows);
    /* Tiny alpha: Gamma draws underflow, the limit (one client per class) still partitions. */
    CHECK(fx_split_clients(&d, 3, "dirichlet:1e-4", 3, rows, counts) == 0 && partition_ok(&d, 3, rows, counts),
          "dirichlet:1e-4: %s", fx_err());
    free_split(3, rows);
    fx_dataset_free(&d); fx_dataset_free(&reg);
    free(len); free(y); free(score);
}

/* ---------------------------------------------------------------- batches */

static void test_batch(void) {
    int len[4] = {3, 5, 2, 4};
    float y[4] = {0, 1, 1, 0};
    fx_dataset d;
    fake_dataset(fx_task_find("sst2"), 4, len, y, &d);
    fx_batch b = {0};
    int pick[3] = {2, 0, 1};
    fx_batch_fill(&d, pick, 3, -7, &b);
    CHECK(b.n == 3 && b.T == 5, "padded to the longest row: n %d T %d", b.n, b.T);
    int ok = 1;
    for (int i = 0; i < 3; i++) {
        for (int j = 0; j < 5; j++) {
            int real = j < len[pick[i]];
            ok &= b.mask[i * 5 + j] == real;
            ok &= b.ids[i * 5 + j] == (real ? pick[i] * 100 + j : -7);
        }
        ok &= b.labels[i] == y[pick[i]];
    }
    CHECK(ok, "batch ids, pad, mask and labels");
    int pick2[2] = {2, 2};
    fx_batch_fill(&d, pick2, 2, 1, &b);
    CHECK(b.n == 2 && b.T == 2 && b.ids[2] == 200 && b.ids[3] == 201 && b.mask[3] == 1, "smaller batch reuses buffers");
    int pick3[4] = {0, 1, 2, 3};
    fx_batch_fill(&d, pick3, 4, 1, &b);
    CHECK(b.n == 4 && b.T == 5 && b.ids[3 * 5 + 3] == 303 && b.ids[3 * 5 + 4] == 1 && b.mask[3 * 5 + 4] == 0,
          "larger batch grows buffers");
    fx_batch_fill(&d, pick3, 0, 1, &b);
    CHECK(b.n == 0 && b.T == 0, "empty batch");
    fx_batch_free(&b);
    fx_dataset_free(&d);
}

/* ---------------------------------------------------------------- synthetic task */

static void test_synthetic(void) {
    fx_dataset d, e;
    CHECK(fx_dataset_synthetic(2000, 50, 24, 9, &d) == 0, "synthetic: %s", fx_err());
    CHECK(fx_dataset_synthetic(2000, 50, 24, 9, &e) == 0, "synthetic again");
    CHECK(d.task == fx_task_find("synthetic") && d.task->num_labels == 2 && !strcmp(d.task->metric, "accuracy"),
          "synthetic task pointer");
    CHECK(d.off[d.n] == e.off[e.n] && !memcmp(d.ids, e.ids, d.off[d.n] * sizeof *d.ids)
          && !memcmp(d.labels, e.labels, (size_t)d.n * sizeof *d.labels), "same seed, same data");
    /* The documented rule, counted here: label 1 iff more body tokens in [4, 27) than in [27, 50). */
    int ok = 1, ones = 0, minlen = 1 << 30, maxlen = 0;
    for (int i = 0; i < d.n; i++) {
        int len = (int)(d.off[i + 1] - d.off[i]), low = 0, high = 0;
        const int32_t *s = d.ids + d.off[i];
        ok &= s[0] == 0 && s[len - 1] == 2;
        for (int j = 1; j < len - 1; j++) {
            ok &= s[j] >= 4 && s[j] < 50;
            low += s[j] < 27;
            high += s[j] >= 27;
        }
        ok &= d.labels[i] == (low > high ? 1.0f : 0.0f);
        ones += d.labels[i] == 1.0f;
        if (len < minlen) minlen = len;
        if (len > maxlen) maxlen = len;
    }
    CHECK(ok, "synthetic rows: <s> body </s>, tokens in [4, vocab), labels follow the rule");
    CHECK(minlen == 8 && maxlen == 24, "lengths span [8, 24]: %d..%d", minlen, maxlen);
    CHECK(ones > 800 && ones < 1200, "classes balanced: %d of 2000 are 1", ones);
    fx_dataset_free(&e);
    CHECK(fx_dataset_synthetic(2000, 50, 24, 10, &e) == 0 && memcmp(d.ids, e.ids, 64 * sizeof *d.ids), "another seed");
    fx_dataset_free(&e);
    fx_dataset_free(&d);
    CHECK(fx_dataset_synthetic(10, 5, 24, 1, &d) == -1 && strstr(fx_err(), "vocab"), "vocab too small refused");
    CHECK(fx_dataset_synthetic(10, 50, 7, 1, &d) == -1, "max_len too small refused");
    CHECK(fx_dataset_synthetic(0, 50, 24, 1, &d) == -1, "no rows refused");
}

/* ---------------------------------------------------------------- tokenised splits */

/* fx_dataset_build on every dev split with a fixture: ids and offsets must equal Hugging Face's. */
static void test_build(const char *shared) {
    char dir[512], glue[512];
    snprintf(dir, sizeof dir, "%s/models/roberta-base", shared);
    snprintf(glue, sizeof glue, "%s/data/glue", shared);
    fx_tokenizer *tok = fx_tok_load(dir);
    if (!tok) { CHECK(0, "%s", fx_err()); return; }
    const char *tasks[] = {"CoLA", "SST-2", "MRPC", "STS-B", "QNLI", "RTE"};
    for (int t = 0; t < 6; t++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/fixtures/tokenizer/roberta-base/%s.dev.L128.jsonl", shared, tasks[t]);
        char *text; size_t tlen;
        if (fx_read_file(path, &text, &tlen) != 0) { printf("skipped: %s\n", fx_err()); continue; }
        fx_dataset d;
        double t0 = fx_now();
        if (fx_dataset_build(fx_task_find(tasks[t]), glue, "dev", tok, 128, &d) != 0) {
            CHECK(0, "%s: %s", tasks[t], fx_err()); free(text); continue;
        }
        double dt = fx_now() - t0;
        int rows = 0, bad = 0, first_bad = -1;
        for (char *line = text, *nl; line < text + tlen; line = nl + 1) {
            nl = memchr(line, '\n', (size_t)(text + tlen - line));
            if (!nl) nl = text + tlen;
            if (nl == line) continue;
            fx_json j;
            if (fx_json_parse(line, (size_t)(nl - line), &j) != 0) { CHECK(0, "%s: %s", path, fx_err()); break; }
            const fx_json *i = fx_json_get(&j, "i"), *ids = fx_json_get(&j, "ids");
            int r = i ? (int)i->inum : -1, same = ids && r >= 0 && r < d.n && ids->type == FX_JARR;
            if (same) {
                size_t n = d.off[r + 1] - d.off[r];
                same = n == ids->n;
                for (size_t k = 0; same && k < n; k++) same = ids->kids[k].inum == d.ids[d.off[r] + k];
            }
            if (!same && first_bad < 0) first_bad = r;
            bad += !same;
            rows++;
            fx_json_free(&j);
        }
        CHECK(rows == d.n && bad == 0, "%s dev: %d fixture rows for %d, %d differ (first: row %d)",
              tasks[t], rows, d.n, bad, first_bad);
        printf("%s dev: %d rows, %zu tokens, built in %.3f s\n", tasks[t], d.n, d.off[d.n], dt);
        fx_dataset_free(&d);
        free(text);
    }
    fx_dataset d;
    CHECK(fx_dataset_build(fx_task_find("qnli"), glue, "train", tok, 128, &d) == -1
          && strstr(fx_err(), "no such file"), "build on a missing split: %s", fx_err());
    fx_tok_free(tok);
}

int main(void) {
    if (!mkdtemp(tmpdir)) { perror(tmpdir); return 2; }
    test_task_find();
    test_bad_files();
    test_metrics();
    test_splits();
    test_batch();
    test_synthetic();
    const char *shared = shared_dir("GLUE files and tokenizer fixtures");
    if (shared) {
        test_read_glue(shared);
        test_build(shared);
    }
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return check_done();
}
