/* plot.c: one SVG of one or more runs, written by hand with no library: the dev metric per round of every
 * run, train and dev loss per round, and for each run that reports a deviation its layer x round heat map
 * and its deviation by depth. Every plotted point carries its value (data-value, printed so that it reads
 * back as the number in metrics.jsonl) and every panel its axes' mapping (data-x0 ... data-ymax), so that
 * a reader, or a test, can take the values back. It reads nothing itself (report.c does) and renders no
 * pixels (a browser does). */
#include "fedex.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ============================================================================================
 * Layout and colours
 * ============================================================================================ */

enum {
    WIDTH = 1000,                    /* the drawing */
    PANEL_W = 470, PANEL_H = 320,    /* one chart with its margins */
    COL0 = 20, COL1 = 510,           /* the two columns' left edges */
    ML = 72, MR = 22, MT = 44, MB = 52, /* margins of a panel's plot area */
    BAR_W = 14,                      /* the heat map's colour bar */
    ROW_GAP = 24, LEGEND_ROW = 20, HEADER = 48,
};

/* Tableau 10: distinct on screen and in grey; runs past ten repeat them with a dash. */
static const char *const palette[] = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                      "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};
#define NPAL 10

/* Viridis at five stops, low to high, interpolated in RGB: ordered in lightness, readable in grey. */
static const unsigned char viridis[5][3] = {{68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};

static void heat_colour(double t, char *out) {
    if (!(t >= 0)) t = 0;
    if (t > 1) t = 1;
    double p = t * 4;
    int i = p >= 4 ? 3 : (int)p;
    double u = p - i;
    int c[3];
    for (int k = 0; k < 3; k++) c[k] = (int)lround(viridis[i][k] + u * (viridis[i + 1][k] - viridis[i][k]));
    sprintf(out, "#%02x%02x%02x", c[0], c[1], c[2]);
}

/* Text for XML content or an attribute. */
static void xml_text(FILE *f, const char *s) {
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&apos;", f); break;
        default:
            if ((unsigned char)*s < 0x20 && *s != '\t') fputc(' ', f); /* not allowed in XML 1.0 */
            else fputc(*s, f);
        }
    }
}

/* A value as data-value: the shortest of %.17g that reads back as X (so "0.505", as metrics.jsonl has it). */
static void put_value(FILE *f, double x) {
    char b[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(b, sizeof b, "%.*g", p, x);
        if (strtod(b, NULL) == x) break;
    }
    fputs(b, f);
}

/* ============================================================================================
 * Axes
 * ============================================================================================
 * A panel maps data (xmin..xmax, ymin..ymax; log10 of the value on a log axis) linearly onto its plot
 * area (x0..x1 left to right, y1..y0 bottom to top, in pixels), and writes that mapping on its <g>. */

typedef struct {
    double x0, x1, y0, y1;           /* plot area, pixels */
    double xmin, xmax, ymin, ymax;   /* data range (log10 when ylog) */
    int ylog;
} axes;

static double px(const axes *a, double x) { return a->x0 + (x - a->xmin) / (a->xmax - a->xmin) * (a->x1 - a->x0); }
static double py(const axes *a, double y) {
    double v = a->ylog ? log10(y) : y;
    return a->y1 - (v - a->ymin) / (a->ymax - a->ymin) * (a->y1 - a->y0);
}

/* A step of 1, 2 or 5 times a power of ten giving about five intervals over RANGE. */
static double nice_step(double range) {
    double raw = range / 5, p = pow(10, floor(log10(raw))), m = raw / p;
    return (m < 1.5 ? 1 : m < 3.5 ? 2 : m < 7.5 ? 5 : 10) * p;
}

/* Range LO..HI widened to whole steps (at least a small span when they are equal). */
static void nice_range(double *lo, double *hi, int integer) {
    if (!(*hi > *lo)) { double d = integer ? 0.5 : (fabs(*lo) > 0 ? 0.05 * fabs(*lo) : 0.05); *lo -= d; *hi += d; }
    if (integer) return;
    double s = nice_step(*hi - *lo);
    *lo = floor(*lo / s + 1e-9) * s;
    *hi = ceil(*hi / s - 1e-9) * s;
}

static void open_panel(FILE *f, const axes *a, const char *kind, int run, const char *title) {
    fprintf(f, "<g class=\"panel\" data-kind=\"%s\"", kind);
    if (run >= 0) fprintf(f, " data-run=\"%d\"", run);
    fprintf(f, " data-x0=\"%.2f\" data-x1=\"%.2f\" data-y0=\"%.2f\" data-y1=\"%.2f\" data-xmin=\"", a->x0, a->x1, a->y0, a->y1);
    put_value(f, a->xmin);
    fputs("\" data-xmax=\"", f);
    put_value(f, a->xmax);
    fputs("\" data-ymin=\"", f);
    put_value(f, a->ymin);
    fputs("\" data-ymax=\"", f);
    put_value(f, a->ymax);
    fprintf(f, "\" data-ylog=\"%d\">\n", a->ylog);
    fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" font-size=\"14\" font-weight=\"bold\">", a->x0, a->y0 - 18);
    xml_text(f, title);
    fputs("</text>\n", f);
}

/* Frame, ticks, tick labels and axis titles. X ticks every whole step (integers when XINT). */
static void draw_axes(FILE *f, const axes *a, const char *xtitle, const char *ytitle, int xint) {
    fprintf(f, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"none\" stroke=\"#333\"/>\n", a->x0,
            a->y0, a->x1 - a->x0, a->y1 - a->y0);
    double s = nice_step(a->xmax - a->xmin);
    if (xint && s < 1) s = 1;
    for (double t = ceil(a->xmin / s - 1e-9) * s; t <= a->xmax + 1e-9 * s; t += s) {
        double x = px(a, t);
        fprintf(f, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"#333\"/>", x, a->y1, x, a->y1 + 5);
        fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"middle\">%g</text>\n", x, a->y1 + 18, fabs(t) < 1e-12 ? 0 : t);
    }
    if (a->ylog) {
        for (double e = ceil(a->ymin - 1e-9); e <= a->ymax + 1e-9; e += 1) {
            double y = a->y1 - (e - a->ymin) / (a->ymax - a->ymin) * (a->y1 - a->y0);
            fprintf(f, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"#ddd\"/>", a->x0, y, a->x1, y);
            fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"end\">1e%d</text>\n", a->x0 - 7, y + 4, (int)e);
        }
    } else {
        double ys = nice_step(a->ymax - a->ymin);
        for (double t = ceil(a->ymin / ys - 1e-9) * ys; t <= a->ymax + 1e-9 * ys; t += ys) {
            double y = a->y1 - (t - a->ymin) / (a->ymax - a->ymin) * (a->y1 - a->y0);
            fprintf(f, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"#ddd\"/>", a->x0, y, a->x1, y);
            fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"end\">%g</text>\n", a->x0 - 7, y + 4, fabs(t) < 1e-12 * ys ? 0 : t);
        }
    }
    fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"middle\">", (a->x0 + a->x1) / 2, a->y1 + 38);
    xml_text(f, xtitle);
    fprintf(f, "</text>\n<text transform=\"translate(%.2f %.2f) rotate(-90)\" text-anchor=\"middle\">", a->x0 - 54,
            (a->y0 + a->y1) / 2);
    xml_text(f, ytitle);
    fputs("</text>\n", f);
}

static axes panel_axes(double left, double top, double h, double xmin, double xmax, double ymin, double ymax, int ylog,
                       double right_margin) {
    axes a = {left + ML, left + PANEL_W - right_margin, top + MT, top + h - MB, xmin, xmax, ymin, ymax, ylog};
    return a;
}

/* ============================================================================================
 * The charts
 * ============================================================================================ */

/* A series as a polyline through its finite points, then a marker per point carrying its value. */
typedef double (*round_field)(const fx_log_round *r);
static double f_value(const fx_log_round *r) { return r->value; }
static double f_train(const fx_log_round *r) { return r->train_loss; }
static double f_devloss(const fx_log_round *r) { return r->dev_loss; }

static void series(FILE *f, const axes *a, const fx_runlog *L, int run, round_field get, const char *name, int dashed,
                   int hollow) {
    const char *col = palette[run % NPAL];
    fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s points=\"", col,
            dashed || run >= NPAL ? " stroke-dasharray=\"6 4\"" : "");
    for (int i = 0; i < L->n; i++) {
        double v = get(&L->r[i]);
        if (isfinite(v)) fprintf(f, "%.2f,%.2f ", px(a, L->r[i].round), py(a, v));
    }
    fputs("\"/>\n", f);
    for (int i = 0; i < L->n; i++) {
        double v = get(&L->r[i]);
        if (!isfinite(v)) continue;
        fprintf(f, "<circle class=\"pt\" cx=\"%.2f\" cy=\"%.2f\" r=\"3\" fill=\"%s\" stroke=\"%s\" data-run=\"%d\" "
                "data-series=\"%s\" data-round=\"%d\" data-value=\"", px(a, L->r[i].round), py(a, v), hollow ? "#fff" : col,
                col, run, name, L->r[i].round);
        put_value(f, v);
        fputs("\"/>\n", f);
    }
}

/* Rounds and values of all runs: the range of the x axis and of FIELD(s). */
static void ranges(const fx_runlog *runs, int n, round_field g1, round_field g2, double *xmin, double *xmax,
                   double *ymin, double *ymax) {
    *xmin = INFINITY; *xmax = -INFINITY; *ymin = INFINITY; *ymax = -INFINITY;
    for (int k = 0; k < n; k++)
        for (int i = 0; i < runs[k].n; i++) {
            const fx_log_round *r = &runs[k].r[i];
            if (r->round < *xmin) *xmin = r->round;
            if (r->round > *xmax) *xmax = r->round;
            for (int g = 0; g < 2; g++) {
                round_field get = g ? g2 : g1;
                double v = get ? get(r) : NAN;
                if (isfinite(v)) { if (v < *ymin) *ymin = v; if (v > *ymax) *ymax = v; }
            }
        }
    if (!isfinite(*xmin)) { *xmin = 1; *xmax = 1; }
    if (!isfinite(*ymin)) { *ymin = 0; *ymax = 1; }
    nice_range(xmin, xmax, 1);
    nice_range(ymin, ymax, 0);
}

static void metric_panel(FILE *f, const fx_runlog *runs, int n, double top) {
    double xmin, xmax, ymin, ymax;
    ranges(runs, n, f_value, NULL, &xmin, &xmax, &ymin, &ymax);
    axes a = panel_axes(COL0, top, PANEL_H, xmin, xmax, ymin, ymax, 0, MR);
    /* the runs may name different metrics (MCC on CoLA, accuracy on RTE): the axis names them all */
    char title[256] = "dev ", *p = title + 4;
    for (int k = 0; k < n && p < title + 200; k++) {
        int seen = 0;
        for (int j = 0; j < k; j++) seen |= !strcmp(runs[j].metric, runs[k].metric);
        if (!seen) p += snprintf(p, (size_t)(title + sizeof title - p), "%s%s", p == title + 4 ? "" : " / ", runs[k].metric);
    }
    open_panel(f, &a, "metric", -1, "dev metric per round");
    draw_axes(f, &a, "round", title, 1);
    for (int k = 0; k < n; k++) series(f, &a, &runs[k], k, f_value, "value", 0, 0);
    fputs("</g>\n", f);
}

static void loss_panel(FILE *f, const fx_runlog *runs, int n, double top) {
    double xmin, xmax, ymin, ymax;
    ranges(runs, n, f_train, f_devloss, &xmin, &xmax, &ymin, &ymax);
    axes a = panel_axes(COL1, top, PANEL_H, xmin, xmax, ymin, ymax, 0, MR);
    open_panel(f, &a, "loss", -1, "loss per round: train (solid), dev (dashed)");
    draw_axes(f, &a, "round", "loss per example (the task's: cross-entropy, MSE)", 1);
    for (int k = 0; k < n; k++) {
        series(f, &a, &runs[k], k, f_train, "train", 0, 0);
        series(f, &a, &runs[k], k, f_devloss, "dev", 1, 1);
    }
    fputs("</g>\n", f);
}

/* A short label of a layer for an axis: "3 query" from encoder.layer.3.attention.self.query. */
static void layer_label(const char *name, char *out, size_t n) {
    const char *target;
    int d = fx_layer_depth(name, &target);
    const char *last = strrchr(target, '.');
    last = last ? last + 1 : target;
    /* "output.dense" and "attention.output.dense" both end in dense: keep two components then */
    if (!strcmp(last, "dense") && last > target + 1) {
        const char *q = last - 2;
        while (q > target && q[-1] != '.') q--;
        last = q;
    }
    if (d >= 0) snprintf(out, n, "%d %s", d, last);
    else snprintf(out, n, "%s", last);
}

/* log10 range of the run's positive finite deviations; 0 when it has none. */
static int dev_range(const fx_runlog *L, double *lo, double *hi) {
    *lo = INFINITY; *hi = -INFINITY;
    for (size_t k = 0; k < (size_t)L->nlayers * (size_t)L->n; k++)
        if (isfinite(L->dev[k]) && L->dev[k] > 0) {
            double v = log10(L->dev[k]);
            if (v < *lo) *lo = v;
            if (v > *hi) *hi = v;
        }
    if (!isfinite(*lo)) return 0;
    *lo = floor(*lo);
    *hi = ceil(*hi);
    if (*hi <= *lo) *hi = *lo + 1;
    return 1;
}

static const char legend_of_dev[] = "deviation ||dW(mean B, mean A) - mean dW_i|| / ||mean dW_i - dW_prev||";

/* LO..HI: log10 of the colour scale, shared by every run's heat map in the drawing so that colours compare. */
static void heat_panel(FILE *f, const fx_runlog *L, int run, double top, double h, const char *label, double lo, double hi) {
    /* x: rounds as columns centred on their number; y: layers top (first) to bottom; colour: log10 dev */
    double xmin = L->r[0].round - 0.5, xmax = L->r[L->n - 1].round + 0.5;
    axes a = panel_axes(COL0, top, h, xmin, xmax, 0, L->nlayers, 0, MR + BAR_W + 44);
    char title[400];
    snprintf(title, sizeof title, "deviation, layer x round: %s", label);
    open_panel(f, &a, "heat", run, title);
    fprintf(f, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"none\" stroke=\"#333\"/>\n", a.x0, a.y0,
            a.x1 - a.x0, a.y1 - a.y0);
    double rh = (a.y1 - a.y0) / L->nlayers;
    for (int k = 0; k < L->nlayers; k++) {
        double y = a.y0 + k * rh;
        char lab[96];
        layer_label(L->layer[k], lab, sizeof lab);
        if (rh >= 7 || k % (int)ceil(7 / rh) == 0) {
            fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"end\" font-size=\"%d\">", a.x0 - 4, y + rh / 2 + 3,
                    rh >= 11 ? 11 : 8);
            xml_text(f, lab);
            fputs("</text>\n", f);
        }
        for (int i = 0; i < L->n; i++) {
            double v = L->dev[(size_t)k * L->n + i], x = px(&a, L->r[i].round - 0.5), w = px(&a, L->r[i].round + 0.5) - x;
            char col[8] = "#eeeeee";
            if (isfinite(v) && v > 0) heat_colour((log10(v) - lo) / (hi - lo), col);
            fprintf(f, "<rect class=\"cell\" x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"%s\" "
                    "data-round=\"%d\" data-layer=\"", x, y, w, rh, col, L->r[i].round);
            xml_text(f, L->layer[k]);
            fputs("\" data-value=\"", f);
            if (isfinite(v)) put_value(f, v); else fputs("nan", f);
            fputs("\"><title>", f);
            xml_text(f, L->layer[k]);
            fprintf(f, ", round %d: %.3g</title></rect>\n", L->r[i].round, v);
        }
    }
    double s = nice_step(xmax - xmin);
    if (s < 1) s = 1;
    for (double t = ceil(L->r[0].round / s) * s; t <= xmax; t += s) {
        double x = px(&a, t);
        fprintf(f, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"#333\"/>", x, a.y1, x, a.y1 + 5);
        fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"middle\">%g</text>\n", x, a.y1 + 18, t);
    }
    fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" text-anchor=\"middle\">round</text>\n", (a.x0 + a.x1) / 2, a.y1 + 38);
    fprintf(f, "<text transform=\"translate(%.2f %.2f) rotate(-90)\" text-anchor=\"middle\">adapted layer (depth, "
            "module)</text>\n", a.x0 - 58, (a.y0 + a.y1) / 2);
    /* the colour bar: log10 of the deviation, lo at the bottom */
    double bx = a.x1 + 12, steps = 32;
    for (int i = 0; i < steps; i++) {
        char col[8];
        heat_colour((i + 0.5) / steps, col);
        double y = a.y1 - (i + 1) * (a.y1 - a.y0) / steps;
        fprintf(f, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%d\" height=\"%.2f\" fill=\"%s\"/>\n", bx, y, BAR_W,
                (a.y1 - a.y0) / steps + 0.3, col);
    }
    fprintf(f, "<g class=\"colourbar\" data-log10-min=\"%g\" data-log10-max=\"%g\">", lo, hi);
    for (double e = lo; e <= hi + 1e-9; e += 1) {
        double y = a.y1 - (e - lo) / (hi - lo) * (a.y1 - a.y0);
        fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" font-size=\"10\">1e%d</text>", bx + BAR_W + 3, y + 4, (int)e);
    }
    fputs("</g>\n</g>\n", f);
}

/* Mean over rounds of each layer's deviation, as curves over depth, one per module (query, value, ...). */
static void depth_panel(FILE *f, const fx_runlog *L, int run, double top, double h, const char *label) {
    int nt = 0, dmin = 1 << 30, dmax = -1;
    const char **targets = fx_calloc((size_t)L->nlayers + 1, sizeof *targets);
    int *tk = fx_malloc(sizeof(int) * ((size_t)L->nlayers + 1)), *depth = fx_malloc(sizeof(int) * ((size_t)L->nlayers + 1));
    double *mean = fx_malloc(sizeof(double) * ((size_t)L->nlayers + 1));
    double lo = INFINITY, hi = -INFINITY;
    for (int k = 0; k < L->nlayers; k++) {
        const char *t;
        depth[k] = fx_layer_depth(L->layer[k], &t);
        if (depth[k] < 0) depth[k] = k;
        int j = 0;
        while (j < nt && strcmp(targets[j], t)) j++;
        if (j == nt) targets[nt++] = t;
        tk[k] = j;
        double s = 0;
        int c = 0;
        for (int i = 0; i < L->n; i++) if (isfinite(L->dev[(size_t)k * L->n + i])) { s += L->dev[(size_t)k * L->n + i]; c++; }
        mean[k] = c ? s / c : NAN;
        if (mean[k] > 0 && isfinite(mean[k])) { if (log10(mean[k]) < lo) lo = log10(mean[k]); if (log10(mean[k]) > hi) hi = log10(mean[k]); }
        if (depth[k] < dmin) dmin = depth[k];
        if (depth[k] > dmax) dmax = depth[k];
    }
    if (!isfinite(lo)) { lo = -1; hi = 0; }
    lo = floor(lo); hi = ceil(hi);
    if (hi <= lo) hi = lo + 1;
    double xmin = dmin, xmax = dmax;
    nice_range(&xmin, &xmax, 1);
    axes a = panel_axes(COL1, top, h, xmin, xmax, lo, hi, 1, MR);
    char title[400];
    snprintf(title, sizeof title, "by depth, mean of rounds %d-%d: %s", L->r[0].round, L->r[L->n - 1].round, label);
    open_panel(f, &a, "depth", run, title);
    draw_axes(f, &a, "layer depth (0 = nearest the embeddings)", "mean deviation (relative, log scale)", 1);
    for (int j = 0; j < nt; j++) {
        const char *col = palette[j % NPAL];
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", col);
        for (int k = 0; k < L->nlayers; k++)
            if (tk[k] == j && mean[k] > 0 && isfinite(mean[k])) fprintf(f, "%.2f,%.2f ", px(&a, depth[k]), py(&a, mean[k]));
        fputs("\"/>\n", f);
        for (int k = 0; k < L->nlayers; k++) {
            if (tk[k] != j || !(mean[k] > 0) || !isfinite(mean[k])) continue;
            fprintf(f, "<circle class=\"pt\" cx=\"%.2f\" cy=\"%.2f\" r=\"3\" fill=\"%s\" data-run=\"%d\" "
                    "data-value=\"", px(&a, depth[k]), py(&a, mean[k]), col, run);
            put_value(f, mean[k]);
            fputs("\" data-layer=\"", f);
            xml_text(f, L->layer[k]);
            fputs("\"/>\n", f);
        }
        double ly = a.y0 + 14 + 16 * j;
        fprintf(f, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"%s\" stroke-width=\"2\"/>", a.x1 - 150, ly - 4,
                a.x1 - 130, ly - 4, col);
        fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" font-size=\"11\">", a.x1 - 125, ly);
        xml_text(f, targets[j]);
        fputs("</text>\n", f);
    }
    fputs("</g>\n", f);
    free(targets); free(tk); free(depth); free(mean);
}

/* ============================================================================================
 * The drawing
 * ============================================================================================ */

/* "method · task" (with the run's number when two runs would read the same). */
static void run_label(const fx_runlog *runs, int n, int k, char *out, size_t cap) {
    int dup = 0;
    for (int j = 0; j < n; j++) dup |= j != k && !strcmp(runs[j].method, runs[k].method) && !strcmp(runs[j].task, runs[k].task);
    if (dup) snprintf(out, cap, "%s \xc2\xb7 %s (run %d)", runs[k].method, runs[k].task, k + 1);
    else snprintf(out, cap, "%s \xc2\xb7 %s", runs[k].method, runs[k].task);
}

int fx_plot_svg(const fx_runlog *runs, int n, FILE *f) {
    if (n < 1) { fx_seterr("no runs to plot"); return -1; }
    for (int k = 0; k < n; k++)
        if (runs[k].n == 0) { fx_seterr("%s: no round finished yet: nothing to plot", runs[k].dir); return -1; }
    int legend_rows = (n + 2) / 3;
    double height = HEADER + PANEL_H + legend_rows * LEGEND_ROW + ROW_GAP;
    double *hh = fx_calloc((size_t)n, sizeof(double)), glo = INFINITY, ghi = -INFINITY;
    for (int k = 0; k < n; k++) {
        double lo, hi;
        if (runs[k].nlayers > 0 && dev_range(&runs[k], &lo, &hi)) {
            if (lo < glo) glo = lo;
            if (hi > ghi) ghi = hi;
            double need = MT + MB + 9.0 * runs[k].nlayers; /* at least 9 px a layer */
            hh[k] = need > PANEL_H ? need : PANEL_H;
            height += hh[k] + ROW_GAP;
        }
    }
    fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" "
            "height=\"%.0f\" viewBox=\"0 0 %d %.0f\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" "
            "font-size=\"12\">\n", WIDTH, height, WIDTH, height);
    fprintf(f, "<rect width=\"%d\" height=\"%.0f\" fill=\"#ffffff\"/>\n", WIDTH, height);
    fprintf(f, "<text x=\"%d\" y=\"28\" font-size=\"17\" font-weight=\"bold\">fedex: %d run%s</text>\n", COL0, n, n > 1 ? "s" : "");
    double top = HEADER;
    metric_panel(f, runs, n, top);
    loss_panel(f, runs, n, top);
    top += PANEL_H;
    fputs("<g class=\"legend\">\n", f);
    for (int k = 0; k < n; k++) {
        double x = COL0 + ML + (k % 3) * 300, y = top + (k / 3) * LEGEND_ROW + 10;
        char lab[300];
        run_label(runs, n, k, lab, sizeof lab);
        fprintf(f, "<line x1=\"%.2f\" y1=\"%.2f\" x2=\"%.2f\" y2=\"%.2f\" stroke=\"%s\" stroke-width=\"3\"%s/>", x, y - 4, x + 24,
                y - 4, palette[k % NPAL], k >= NPAL ? " stroke-dasharray=\"6 4\"" : "");
        fprintf(f, "<text x=\"%.2f\" y=\"%.2f\" data-run=\"%d\">", x + 30, y, k);
        xml_text(f, lab);
        fputs("</text>\n", f);
    }
    fputs("</g>\n", f);
    top += legend_rows * LEGEND_ROW + ROW_GAP;
    for (int k = 0; k < n; k++) {
        if (hh[k] == 0) continue;
        char lab[300];
        run_label(runs, n, k, lab, sizeof lab);
        heat_panel(f, &runs[k], k, top, hh[k], lab, glo, ghi);
        depth_panel(f, &runs[k], k, top, hh[k], lab);
        top += hh[k] + ROW_GAP;
    }
    fprintf(f, "<text x=\"%d\" y=\"%.0f\" font-size=\"10\" fill=\"#555\">", COL0, height - 8);
    xml_text(f, legend_of_dev);
    fputs(" (the error FedIT's averaged factors make; for FedEx, the residual it adds)</text>\n</svg>\n", f);
    free(hh);
    return 0;
}
