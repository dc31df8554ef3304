/* report.c: a run read back from its folder (metrics.jsonl and its settings) into one struct that the
 * plots and the table share, and the paper-style table of several runs (method rows, task columns, best
 * dev metric and its round, the average) as Markdown or CSV. It trains nothing and draws nothing (plot.c
 * draws); it only reads what `fedex train` wrote. */
#include "fedex.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ============================================================================================
 * Reading a run
 * ============================================================================================ */

static double jnum(const fx_json *o, const char *key) {
    const fx_json *v = o ? fx_json_get(o, key) : NULL;
    return v && v->type == FX_JNUM ? v->num : NAN;
}

static const char *jstr(const fx_json *o, const char *key) {
    const fx_json *v = o ? fx_json_get(o, key) : NULL;
    return v && v->type == FX_JSTR ? v->str : NULL;
}

/* Index of layer NAME in L, added when new. */
static int layer_index(fx_runlog *L, const char *name) {
    for (int k = 0; k < L->nlayers; k++) if (!strcmp(L->layer[k], name)) return k;
    L->layer = fx_realloc(L->layer, sizeof(char *) * (size_t)(L->nlayers + 1));
    L->layer[L->nlayers] = fx_strdup(name);
    return L->nlayers++;
}

/* One metrics.jsonl line into round I of L (the deviation into a list of (layer, value) kept by the
 * caller, as the number of rounds is not known until the end). */
static int read_line(fx_runlog *L, const fx_json *j, const char *path, int lineno, int i, double **devv, int **devl,
                     int *ndev) {
    fx_log_round *r = &L->r[i];
    double round = jnum(j, "round");
    if (j->type != FX_JOBJ || !(round >= 1) || round != floor(round)) {
        fx_seterr("%s:%d: not a round of a fedex run (no \"round\")", path, lineno);
        return -1;
    }
    r->round = (int)round;
    if (i > 0 && r->round <= L->r[i - 1].round) {
        fx_seterr("%s:%d: round %d after round %d: the rounds must increase", path, lineno, r->round, L->r[i - 1].round);
        return -1;
    }
    r->value = jnum(j, "value");
    r->dev_loss = jnum(j, "dev_loss");
    r->seconds = jnum(j, "seconds");
    r->best = jnum(j, "best");
    double br = jnum(j, "best_round");
    r->best_round = br >= 0 ? (int)br : 0;
    const fx_json *cl = fx_json_get(j, "clients");
    double loss = 0, samples = 0;
    for (size_t c = 0; cl && cl->type == FX_JARR && c < cl->n; c++) {
        double s = jnum(&cl->kids[c], "samples"), l = jnum(&cl->kids[c], "train_loss");
        if (s > 0 && isfinite(l)) { loss += s * l; samples += s; }
    }
    r->train_loss = samples > 0 ? loss / samples : NAN;
    r->err_max = jnum(fx_json_get(j, "agg_error"), "max");
    const fx_json *dv = fx_json_get(j, "deviation");
    r->dev_max = jnum(dv, "max");
    const fx_json *layers = dv ? fx_json_get(dv, "layers") : NULL;
    for (size_t k = 0; layers && layers->type == FX_JOBJ && k < layers->n; k++) {
        if (layers->kids[k].type != FX_JNUM && layers->kids[k].type != FX_JNULL) {
            fx_seterr("%s:%d: deviation of layer '%s' is not a number", path, lineno, layers->keys[k]);
            return -1;
        }
        *devv = fx_realloc(*devv, sizeof(double) * (size_t)(*ndev + 1));
        *devl = fx_realloc(*devl, sizeof(int) * 2 * (size_t)(*ndev + 1));
        (*devv)[*ndev] = layers->kids[k].type == FX_JNUM ? layers->kids[k].num : NAN;
        (*devl)[2 * *ndev] = layer_index(L, layers->keys[k]);
        (*devl)[2 * *ndev + 1] = i;
        (*ndev)++;
    }
    const char *metric = jstr(j, "metric"), *agg = jstr(j, "agg");
    if (metric && !L->metric) L->metric = fx_strdup(metric);
    if (agg && !L->method) L->method = fx_strdup(agg);
    return 0;
}

int fx_runlog_read(const char *dir, fx_runlog *L) {
    memset(L, 0, sizeof *L);
    L->dir = fx_strdup(dir);
    char path[4096], *text = NULL, *agg_name = NULL;
    size_t len;
    fx_json settings = {0};
    if (!fx_settings_find(dir, path, sizeof path)) {
        fx_seterr("%s: not a run folder (no %s)", dir, FX_SETTINGS_FILE);
        goto fail;
    }
    if (fx_json_load(path, &settings) != 0) goto fail;
    const char *task = jstr(&settings, "task"), *agg = jstr(&settings, "agg");
    L->task = fx_strdup(task ? task : "synthetic");
    double rounds = jnum(&settings, "rounds");
    L->rounds_planned = rounds >= 1 ? (int)rounds : 0;
    agg_name = agg ? fx_strdup(agg) : NULL;      /* AGG points into SETTINGS, freed next */
    fx_json_free(&settings);
    memset(&settings, 0, sizeof settings);

    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    if (fx_read_file(path, &text, &len) != 0) goto fail;
    int cap = 0, ndev = 0, lineno = 0;
    double *devv = NULL;
    int *devl = NULL;
    for (char *save = NULL, *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        lineno++; /* strtok_r skips empty lines; metrics.jsonl has none */
        fx_json j;
        if (fx_json_parse(line, strlen(line), &j) != 0) {
            const char *why = fx_err();
            if (!strncmp(why, "line 1, ", 8)) why += 8;  /* the line is the file's LINENO: only its column counts */
            fx_seterr("%s:%d: %s", path, lineno, why);
            free(devv); free(devl);
            goto fail;
        }
        if (L->n == cap) { cap = cap ? 2 * cap : 64; L->r = fx_realloc(L->r, sizeof *L->r * (size_t)cap); }
        int rc = read_line(L, &j, path, lineno, L->n, &devv, &devl, &ndev);
        fx_json_free(&j);
        if (rc != 0) { free(devv); free(devl); goto fail; }
        L->n++;
    }
    free(text);
    text = NULL;
    if (!L->method) L->method = fx_strdup(agg_name ? agg_name : "?");
    free(agg_name);
    if (!L->metric) L->metric = fx_strdup("metric");
    L->dev = fx_malloc(sizeof(double) * ((size_t)L->nlayers * (size_t)L->n + 1));
    for (size_t k = 0; k < (size_t)L->nlayers * (size_t)L->n; k++) L->dev[k] = NAN;
    for (int d = 0; d < ndev; d++) L->dev[(size_t)devl[2 * d] * (size_t)L->n + (size_t)devl[2 * d + 1]] = devv[d];
    free(devv); free(devl);
    if (L->n) { L->best = L->r[L->n - 1].best; L->best_round = L->r[L->n - 1].best_round; }
    return 0;
fail:
    free(text);
    free(agg_name);
    fx_json_free(&settings);
    fx_runlog_free(L);
    return -1;
}

void fx_runlog_free(fx_runlog *L) {
    for (int k = 0; k < L->nlayers; k++) free(L->layer[k]);
    free(L->layer); free(L->dev); free(L->r); free(L->dir); free(L->method); free(L->task); free(L->metric);
    memset(L, 0, sizeof *L);
}

int fx_layer_depth(const char *name, const char **target) {
    /* the first all-digit component of the dotted name: encoder.layer.3.attention.self.query -> 3 */
    const char *p = name;
    while (*p) {
        const char *e = strchr(p, '.');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n > 0 && n < 9 && strspn(p, "0123456789") == n) {
            if (target) *target = e ? e + 1 : p + n;
            return atoi(p);
        }
        if (!e) break;
        p = e + 1;
    }
    if (target) *target = name;
    return -1;
}

/* ============================================================================================
 * The table
 * ============================================================================================
 * Rows are the methods in the order the runs first name them, columns the tasks likewise; a cell is the
 * run's best dev metric (the paper's metric for the task, as the run picked it) and the round it came in.
 * The average is over the row's tasks, shown only when the row has every task. */

int fx_table_write(const fx_runlog *runs, int n, const char *format, FILE *f) {
    int csv = !strcmp(format, "csv");
    if (!csv && strcmp(format, "md")) { fx_seterr("table format '%s': expected md or csv", format); return -1; }
    const char **meth = fx_calloc((size_t)n + 1, sizeof *meth), **task = fx_calloc((size_t)n + 1, sizeof *task);
    const char **metric = fx_calloc((size_t)n + 1, sizeof *metric);
    int nm = 0, nt = 0, rc = -1;
    int *cell = fx_malloc(sizeof(int) * ((size_t)n * (size_t)n + 1)); /* method x task -> run, -1 none */
    for (int i = 0; i < n; i++) {
        int m = 0, t = 0;
        while (m < nm && strcmp(meth[m], runs[i].method)) m++;
        if (m == nm) meth[nm++] = runs[i].method;
        while (t < nt && strcmp(task[t], runs[i].task)) t++;
        if (t == nt) { metric[nt] = runs[i].metric; task[nt++] = runs[i].task; }
    }
    for (int k = 0; k < nm * nt; k++) cell[k] = -1;
    for (int i = 0; i < n; i++) {
        int m = 0, t = 0;
        while (strcmp(meth[m], runs[i].method)) m++;
        while (strcmp(task[t], runs[i].task)) t++;
        if (cell[m * nt + t] >= 0) {
            fx_seterr("%s and %s are both %s on %s: give one run per method and task", runs[cell[m * nt + t]].dir,
                      runs[i].dir, runs[i].method, runs[i].task);
            goto out;
        }
        if (runs[i].n == 0) { fx_seterr("%s: no round finished yet", runs[i].dir); goto out; }
        cell[m * nt + t] = i;
    }
    if (csv) {
        fprintf(f, "method");
        for (int t = 0; t < nt; t++) fprintf(f, ",%s %s,%s round", task[t], metric[t], task[t]);
        fprintf(f, ",average\n");
    } else {
        fprintf(f, "| method |");
        for (int t = 0; t < nt; t++) fprintf(f, " %s (%s) |", task[t], metric[t]);
        fprintf(f, " average |\n|---|");
        for (int t = 0; t <= nt; t++) fprintf(f, "---:|");
        fprintf(f, "\n");
    }
    for (int m = 0; m < nm; m++) {
        fprintf(f, csv ? "%s" : "| %s |", meth[m]);
        double sum = 0;
        int have = 0;
        for (int t = 0; t < nt; t++) {
            int i = cell[m * nt + t];
            if (i < 0) { fprintf(f, csv ? ",," : " - |"); continue; }
            if (csv) fprintf(f, ",%.9g,%d", runs[i].best, runs[i].best_round);
            else fprintf(f, " %.4f (r%d) |", runs[i].best, runs[i].best_round);
            if (isfinite(runs[i].best)) { sum += runs[i].best; have++; }
        }
        if (have == nt) fprintf(f, csv ? ",%.9g\n" : " %.4f |\n", sum / nt);
        else fprintf(f, csv ? ",\n" : " - |\n");
    }
    rc = 0;
out:
    free(meth); free(task); free(metric); free(cell);
    return rc;
}

/* ============================================================================================
 * Writing the table or the plot of runs
 * ============================================================================================ */

int fx_runs_write(const char *path, const fx_runlog *runs, int n, const char *what) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) { fx_seterr("open_memstream: %s", strerror(errno)); return -1; }
    int rc = !strcmp(what, "svg") ? fx_plot_svg(runs, n, f) : fx_table_write(runs, n, what, f);
    fclose(f);
    if (rc == 0) {
        if (!path || !strcmp(path, "-")) rc = fwrite(buf, 1, len, stdout) == len ? 0 : -1;
        else rc = fx_write_file_atomic(path, buf, len);
    }
    free(buf);
    return rc;
}
