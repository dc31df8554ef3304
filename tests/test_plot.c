/* tests/test_plot.c: the deviation in metrics.jsonl, `fedex plot` and `fedex table`, end to end through the
 * command line ($FEDEX): on the demo's task, a FedEx run's deviation against the aggregation error of a
 * FedIT run started from the same global state; the SVG parsed as XML and every plotted value read back
 * and compared with metrics.jsonl (and its position with the panel's axes); a headless Chromium renders it
 * (skipped, visibly, where Chromium is absent); the table against the runs' best rounds; and on a
 * roberta-base-shaped model, the deviation of all 12 layers' query and value. */
#include "fedex.h"
#include "check.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---------------------------------------------------------------- tolerances */
/* Coordinates are printed with two decimals: a point is within 0.005 px of its exact place; a little more
 * for the division that maps it back. */
#define TOL_PIXEL 0.0051
/* The depth curves' points are the mean over rounds of a layer's deviations, which the test sums in
 * double as plot.c does but need not in the same order: relative. */
#define TOL_MEAN 1e-12
/* A PNG of the plot against one of a blank page of the same size: the plot's compresses to many times more
 * bytes (measured 126 kB against 5 kB), and at least this share of its pixels are not white. */
#define NONBLANK_BYTES_RATIO 4.0
#define NONBLANK_SHARE 0.02
#define WAIT_LINE_S 120.0
#define WAIT_RUN_S 300.0

#include "run_harness.h"

/* ---------------------------------------------------------------- a small XML reader
 * Well-formedness as XML 1.0 asks of what fedex writes: one root element, every start tag closed by its
 * own end tag, attributes quoted and not repeated, '<' never in text or values, '&' only as one of the
 * five named entities or a character reference. Each element is kept with its attributes and its parent. */

typedef struct { char *name; int nattr; char *key[24], *val[24]; int parent; } xel;
typedef struct { xel *e; int n, cap; } xdoc;

static const char *xget(const xdoc *d, int i, const char *key) {
    for (; i >= 0; i = d->e[i].parent)
        for (int k = 0; k < d->e[i].nattr; k++) if (!strcmp(d->e[i].key[k], key)) return d->e[i].val[k];
    return NULL;
}
/* KEY of element I itself (not inherited). */
static const char *xown(const xdoc *d, int i, const char *key) {
    for (int k = 0; k < d->e[i].nattr; k++) if (!strcmp(d->e[i].key[k], key)) return d->e[i].val[k];
    return NULL;
}
/* The nearest enclosing element with class="panel". */
static int xpanel(const xdoc *d, int i) {
    for (i = d->e[i].parent; i >= 0; i = d->e[i].parent) {
        const char *c = xown(d, i, "class");
        if (c && !strcmp(c, "panel")) return i;
    }
    return -1;
}

static int entity_ok(const char *s, const char **end) {
    static const char *const named[] = {"&amp;", "&lt;", "&gt;", "&quot;", "&apos;"};
    for (int k = 0; k < 5; k++) if (!strncmp(s, named[k], strlen(named[k]))) { *end = s + strlen(named[k]); return 1; }
    if (s[1] == '#') {
        const char *p = s + 2;
        int hex = *p == 'x';
        if (hex) p++;
        const char *q = p;
        while (hex ? isxdigit((unsigned char)*q) : isdigit((unsigned char)*q)) q++;
        if (q > p && *q == ';') { *end = q + 1; return 1; }
    }
    return 0;
}

static int is_name(char c) { return isalnum((unsigned char)c) || c == '-' || c == '_' || c == ':' || c == '.'; }

static char *dup_n(const char *s, size_t n) {
    char *r = fx_malloc(n + 1);
    memcpy(r, s, n);
    r[n] = 0;
    return r;
}

/* Parses TEXT into D; 0, or -1 with the reason in WHY. */
static int xml_parse(const char *text, xdoc *d, char *why, size_t cap) {
    memset(d, 0, sizeof *d);
    const char *p = text;
    int stack[256], depth = 0, roots = 0;
#define BAD(...) do { snprintf(why, cap, __VA_ARGS__); return -1; } while (0)
    if (!strncmp(p, "<?xml", 5)) { p = strstr(p, "?>"); if (!p) BAD("unterminated XML declaration"); p += 2; }
    while (*p) {
        if (*p != '<') {
            if (depth == 0 && !isspace((unsigned char)*p)) BAD("text outside the root element at byte %ld", (long)(p - text));
            if (*p == '&') { const char *e; if (!entity_ok(p, &e)) BAD("bad entity at byte %ld", (long)(p - text)); p = e; continue; }
            if (*p == '>') { p++; continue; } /* allowed in text */
            p++;
            continue;
        }
        if (!strncmp(p, "<!--", 4)) { p = strstr(p, "-->"); if (!p) BAD("unterminated comment"); p += 3; continue; }
        if (p[1] == '/') {
            const char *n = p + 2, *q = n;
            while (is_name(*q)) q++;
            if (depth == 0 || strlen(d->e[stack[depth - 1]].name) != (size_t)(q - n) ||
                strncmp(d->e[stack[depth - 1]].name, n, (size_t)(q - n)))
                BAD("end tag </%.*s> at byte %ld does not close <%s>", (int)(q - n), n, (long)(p - text),
                    depth ? d->e[stack[depth - 1]].name : "(nothing)");
            while (isspace((unsigned char)*q)) q++;
            if (*q != '>') BAD("bad end tag at byte %ld", (long)(p - text));
            depth--;
            p = q + 1;
            continue;
        }
        const char *n = p + 1, *q = n;
        while (is_name(*q)) q++;
        if (q == n) BAD("'<' not starting a tag at byte %ld", (long)(p - text));
        if (depth == 0 && roots++) BAD("a second root element at byte %ld", (long)(p - text));
        if (d->n == d->cap) { d->cap = d->cap ? 2 * d->cap : 1024; d->e = fx_realloc(d->e, sizeof *d->e * (size_t)d->cap); }
        xel *e = &d->e[d->n];
        memset(e, 0, sizeof *e);
        e->name = dup_n(n, (size_t)(q - n));
        e->parent = depth ? stack[depth - 1] : -1;
        int me = d->n++;
        for (;;) {
            int sp = 0;
            while (isspace((unsigned char)*q)) { q++; sp = 1; }
            if (*q == '>' || (q[0] == '/' && q[1] == '>')) break;
            if (!sp) BAD("attributes not separated at byte %ld", (long)(q - text));
            const char *an = q;
            while (is_name(*q)) q++;
            if (q == an || *q != '=' || (q[1] != '"' && q[1] != '\'')) BAD("bad attribute at byte %ld", (long)(an - text));
            char quote = q[1];
            const char *v = q + 2, *ve = v;
            while (*ve && *ve != quote) {
                if (*ve == '<') BAD("'<' in an attribute value at byte %ld", (long)(ve - text));
                if (*ve == '&') { const char *x; if (!entity_ok(ve, &x)) BAD("bad entity in a value at byte %ld", (long)(ve - text)); ve = x; continue; }
                ve++;
            }
            if (!*ve) BAD("unterminated attribute value");
            for (int k = 0; k < e->nattr; k++)
                if (strlen(e->key[k]) == (size_t)(q - an) && !strncmp(e->key[k], an, (size_t)(q - an))) BAD("repeated attribute %s", e->key[k]);
            if (e->nattr == 24) BAD("too many attributes");
            e->key[e->nattr] = dup_n(an, (size_t)(q - an));
            e->val[e->nattr++] = dup_n(v, (size_t)(ve - v));
            q = ve + 1;
        }
        if (*q == '/') q += 2;
        else {
            if (depth == 256) BAD("nested too deep");
            stack[depth++] = me;
            q++;
        }
        p = q;
    }
    if (depth) BAD("<%s> is never closed", d->e[stack[depth - 1]].name);
    if (!roots) BAD("no root element");
#undef BAD
    return 0;
}

static void xml_free(xdoc *d) {
    for (int i = 0; i < d->n; i++) {
        free(d->e[i].name);
        for (int k = 0; k < d->e[i].nattr; k++) { free(d->e[i].key[k]); free(d->e[i].val[k]); }
    }
    free(d->e);
    memset(d, 0, sizeof *d);
}

static double xnum(const xdoc *d, int i, const char *key) {
    const char *v = xget(d, i, key);
    char *end;
    double x = v ? strtod(v, &end) : NAN;
    return v && *end == 0 ? x : NAN;
}

/* ---------------------------------------------------------------- runs on the demo's task */

static int demo_train(const char *tag, const char *agg, const char *rounds, const char *out, int resume) {
    if (resume)
        return fedex(tag, NULL, "train", "--resume", out, "--rounds", rounds, "--threads", "2", NULL);
    return fedex(tag, NULL, "train", "--agg", agg, "--rounds", rounds, "--local-epochs", "1", "--batch-size", "32",
                 "--lr", "5e-3", "--threads", "2", "--out", out, NULL);
}

/* DIR's checkpoint replaced by FROM's (its global state, residual, round and best), under DIR's own
 * settings id: a run of DIR's method that continues from FROM's global state. */
static int graft_state(const char *from, const char *dir) {
    fx_st_file a, b;
    if (fx_st_open(P("%s/state.safetensors", from), &a) != 0) return -1;
    if (fx_st_open(P("%s/state.safetensors", dir), &b) != 0) { fx_st_close(&a); return -1; }
    fx_st_entry *e = fx_calloc((size_t)a.n, sizeof *e);
    for (int i = 0; i < a.n; i++) {
        const fx_st_tensor *t = &a.t[i];
        e[i].name = t->name; e[i].dtype = t->dtype; e[i].ndim = t->ndim;
        memcpy(e[i].shape, t->shape, sizeof t->shape);
        e[i].data = a.data + t->begin;
    }
    const char *id = fx_st_meta(&b, "settings_id");
    char idc[64];
    snprintf(idc, sizeof idc, "%s", id ? id : "");
    fx_st_close(&b);
    const char *meta[] = {"round", fx_st_meta(&a, "round"), "best", fx_st_meta(&a, "best"), "best_round",
                          fx_st_meta(&a, "best_round"), "settings_id", idc, NULL};
    int rc = meta[1] && meta[3] && meta[5] && *idc ? fx_st_write(P("%s/state.safetensors", dir), e, a.n, meta) : -1;
    free(e);
    fx_st_close(&a);
    return rc;
}

/* Layer values KEY.layers of a metrics line, equal to OTHER's KEY2.layers value by value (same names,
 * same order, same numbers). */
static int same_layers(const fx_json *l1, const char *k1, const fx_json *l2, const char *k2, char *why, size_t cap) {
    const fx_json *a = fx_json_get(fx_json_get(l1, k1), "layers"), *b = fx_json_get(fx_json_get(l2, k2), "layers");
    if (!a || !b || a->type != FX_JOBJ || b->type != FX_JOBJ || a->n != b->n || !a->n) {
        snprintf(why, cap, "missing or of different sizes");
        return 0;
    }
    for (size_t k = 0; k < a->n; k++)
        if (strcmp(a->keys[k], b->keys[k]) || a->kids[k].type != FX_JNUM || b->kids[k].type != FX_JNUM ||
            a->kids[k].num != b->kids[k].num) {
            snprintf(why, cap, "layer %s: %.9g against %s %.9g", a->keys[k], a->kids[k].num, b->keys[k], b->kids[k].num);
            return 0;
        }
    return 1;
}

static char run_x[1024], run_t[1024], run_f[1024]; /* fedex 3 rounds, fedit grafted 2 rounds, ffa 2 rounds */

static void test_deviation_equals_fedit(void) {
    snprintf(run_x, sizeof run_x, "%s/fedex", tmp);
    snprintf(run_t, sizeof run_t, "%s/fedit", tmp);
    snprintf(run_f, sizeof run_f, "%s/ffa", tmp);
    int rc = demo_train("x1", "fedex", "1", run_x, 0);
    CHECK(rc == 0, "fedex run: exit %d", rc);
    if (rc) { show_err("x1"); return; }
    rc = demo_train("t1", "fedit", "1", run_t, 0);
    CHECK(rc == 0, "fedit run: exit %d", rc);
    if (rc) { show_err("t1"); return; }
    /* round 1 starts both from the same initial state */
    metrics mx, mt;
    char why[512];
    if (metrics_load(run_x, &mx) == 0 && metrics_load(run_t, &mt) == 0 && mx.n == 1 && mt.n == 1) {
        CHECK(same_layers(&mx.line[0], "deviation", &mt.line[0], "agg_error", why, sizeof why),
              "round 1: fedex's deviation is not fedit's aggregation error: %s", why);
        CHECK(num(fx_json_get(&mx.line[0], "deviation"), "max") > 1e-4,
              "round 1: fedex's deviation %.3g is not clearly above rounding", num(fx_json_get(&mx.line[0], "deviation"), "max"));
    } else CHECK(0, "round 1: metrics.jsonl of the two runs do not read as one line each");
    metrics_free(&mx); metrics_free(&mt);
    /* round 2: fedit continues from fedex's global state after round 1 (W0 + R_1 and the averaged factors) */
    CHECK(graft_state(run_x, run_t) == 0, "cannot give the fedit run fedex's state: %s", fx_err());
    rc = demo_train("x2", NULL, "3", run_x, 1);
    CHECK(rc == 0, "fedex resumed: exit %d", rc);
    if (rc) show_err("x2");
    rc = demo_train("t2", NULL, "2", run_t, 1);
    CHECK(rc == 0, "fedit resumed from fedex's state: exit %d", rc);
    if (rc) show_err("t2");
    if (metrics_load(run_x, &mx) == 0 && metrics_load(run_t, &mt) == 0 && mx.n == 3 && mt.n == 2) {
        CHECK(same_layers(&mx.line[1], "deviation", &mt.line[1], "agg_error", why, sizeof why),
              "round 2 from the same state: fedex's deviation is not fedit's aggregation error: %s", why);
        CHECK(same_layers(&mt.line[1], "deviation", &mt.line[1], "agg_error", why, sizeof why),
              "fedit's deviation is not its own aggregation error: %s", why);
        for (int r = 0; r < 3; r++)
            CHECK(num(fx_json_get(&mx.line[r], "agg_error"), "max") < 1e-5 &&
                  num(fx_json_get(&mx.line[r], "deviation"), "max") > 1e-4,
                  "fedex round %d: its own error should be rounding and its deviation visible", r + 1);
    } else CHECK(0, "round 2: the resumed runs' metrics.jsonl do not have 3 and 2 lines");
    metrics_free(&mx); metrics_free(&mt);
    rc = demo_train("f1", "ffa", "2", run_f, 0);
    CHECK(rc == 0, "ffa run: exit %d", rc);
    if (rc) show_err("f1");
}

/* ---------------------------------------------------------------- the SVG, read back */

static double train_loss_of(const fx_json *line) {
    const fx_json *cl = arr(line, "clients");
    double s = 0, l = 0;
    for (size_t c = 0; cl && c < cl->n; c++) {
        s += num(&cl->kids[c], "samples");
        l += num(&cl->kids[c], "samples") * num(&cl->kids[c], "train_loss");
    }
    return l / s;
}

/* Maps element I's coordinate back through its panel's axes and compares with WANT (data units; log10 on a
 * log axis). */
static int position_ok(const xdoc *d, int i, const char *coord, double want, int yaxis) {
    int p = xpanel(d, i);
    if (p < 0) return 0;
    double c = xnum(d, i, coord);
    double lo = xnum(d, p, yaxis ? "data-ymin" : "data-xmin"), hi = xnum(d, p, yaxis ? "data-ymax" : "data-xmax");
    double a = xnum(d, p, yaxis ? "data-y1" : "data-x0"), b = xnum(d, p, yaxis ? "data-y0" : "data-x1");
    if (yaxis && xnum(d, p, "data-ylog") == 1) want = log10(want);
    double got = lo + (c - a) / (b - a) * (hi - lo), tol = TOL_PIXEL * fabs(hi - lo) / fabs(b - a);
    return fabs(got - want) <= tol;
}

static void check_svg(const char *svg, const char *const *dirs, int nruns) {
    char *text = slurp(svg);
    CHECK(text != NULL, "%s was not written", svg);
    if (!text) return;
    xdoc d;
    char why[256];
    int ok = xml_parse(text, &d, why, sizeof why) == 0;
    CHECK(ok, "%s is not well-formed XML: %s", svg, why);
    free(text);
    if (!ok) { xml_free(&d); return; }
    CHECK(!strcmp(d.e[0].name, "svg") && xown(&d, 0, "xmlns") && !strcmp(xown(&d, 0, "xmlns"), "http://www.w3.org/2000/svg"),
          "the root is not an SVG element");
    metrics m[3];
    for (int k = 0; k < nruns; k++) CHECK(metrics_load(dirs[k], &m[k]) == 0, "%s: metrics.jsonl", dirs[k]);
    int want_pts = 0, want_cells = 0, got_metric = 0, got_train = 0, got_dev = 0, got_cells = 0, got_depth = 0, bad = 0;
    int want_depth = 0;
    for (int k = 0; k < nruns; k++) {
        want_pts += m[k].n;
        const fx_json *lay = fx_json_get(fx_json_get(&m[k].line[0], "deviation"), "layers");
        int nl = lay ? (int)lay->n : 0;
        want_cells += nl * m[k].n;
        want_depth += nl;
    }
    for (int i = 0; i < d.n; i++) {
        const char *cls = xown(&d, i, "class");
        if (!cls) continue;
        int p = xpanel(&d, i);
        const char *kind = p >= 0 ? xown(&d, p, "data-kind") : NULL;
        int run = (int)xnum(&d, i, "data-run");
        if (!kind || run < 0 || run >= nruns) { if (!strcmp(cls, "pt") || !strcmp(cls, "cell")) bad++; continue; }
        if (!strcmp(cls, "pt") && strcmp(kind, "depth")) {
            int round = (int)xnum(&d, i, "data-round");
            const char *ser = xown(&d, i, "data-series");
            if (round < 1 || round > m[run].n || !ser) { bad++; continue; }
            const fx_json *l = &m[run].line[round - 1];
            double want = !strcmp(kind, "metric") ? num(l, "value") : !strcmp(ser, "train") ? train_loss_of(l) : num(l, "dev_loss");
            double got = xnum(&d, i, "data-value");
            CHECK(got == want, "%s run %d round %d %s: plotted %.17g, metrics.jsonl %.17g", kind, run, round, ser, got, want);
            CHECK(position_ok(&d, i, "cx", round, 0) && position_ok(&d, i, "cy", want, 1),
                  "%s run %d round %d: the point is not where the axes put %.9g", kind, run, round, want);
            if (!strcmp(kind, "metric")) got_metric++;
            else if (!strcmp(ser, "train")) got_train++;
            else got_dev++;
        } else if (!strcmp(cls, "cell")) {
            int round = (int)xnum(&d, i, "data-round");
            const char *layer = xown(&d, i, "data-layer");
            if (round < 1 || round > m[run].n || !layer) { bad++; continue; }
            double want = num(fx_json_get(fx_json_get(&m[run].line[round - 1], "deviation"), "layers"), layer);
            CHECK(xnum(&d, i, "data-value") == want, "heat map run %d round %d %s: %.17g, metrics.jsonl %.17g", run, round,
                  layer, xnum(&d, i, "data-value"), want);
            got_cells++;
        } else if (!strcmp(cls, "pt")) {
            const char *layer = xown(&d, i, "data-layer");
            double s = 0;
            for (int r = 0; layer && r < m[run].n; r++) s += num(fx_json_get(fx_json_get(&m[run].line[r], "deviation"), "layers"), layer);
            double want = s / m[run].n, got = xnum(&d, i, "data-value");
            CHECK(fabs(got - want) <= TOL_MEAN * fabs(want), "depth curve run %d %s: %.17g, mean of metrics.jsonl %.17g", run,
                  layer ? layer : "?", got, want);
            CHECK(position_ok(&d, i, "cy", want, 1) &&
                  position_ok(&d, i, "cx", fx_layer_depth(layer, NULL), 0),
                  "depth curve run %d %s: the point is not where the axes put it", run, layer);
            got_depth++;
        }
    }
    CHECK(bad == 0, "%d plotted elements outside a panel or without their run and round", bad);
    CHECK(got_metric == want_pts && got_train == want_pts && got_dev == want_pts,
          "points: %d metric, %d train loss, %d dev loss; want %d of each (one per run and round)", got_metric, got_train,
          got_dev, want_pts);
    CHECK(got_cells == want_cells && want_cells > 0, "heat map cells: %d, want %d (layers x rounds of every run)", got_cells,
          want_cells);
    CHECK(got_depth == want_depth, "depth curve points: %d, want %d (one per layer of every run)", got_depth, want_depth);
    for (int k = 0; k < nruns; k++) metrics_free(&m[k]);
    xml_free(&d);
}

/* Headless Chromium renders the SVG to a PNG that is not blank: counted pixel by pixel with python3 (whose
 * zlib decodes it), or without python3 compared with a blank page of the same size. It renders at half scale: a
 * quarter of the pixels for python to count. */
static const char png_share_py[] =
    "import sys, zlib, struct\n"
    "d = open(sys.argv[1], 'rb').read(); assert d[:8] == b'\\x89PNG\\r\\n\\x1a\\n'\n"
    "p, idat = 8, b''\n"
    "while p < len(d):\n"
    "    n, t = struct.unpack('>I4s', d[p:p+8]); c = d[p+8:p+8+n]; p += 12 + n\n"
    "    if t == b'IHDR': w, h, bd, ct = struct.unpack('>IIBB', c[:10])\n"
    "    if t == b'IDAT': idat += c\n"
    "bpp = {2: 3, 6: 4}[ct]; raw = zlib.decompress(idat); stride = w * bpp; prev = bytearray(stride); ink = 0\n"
    "for y in range(h):\n"
    "    f = raw[y*(stride+1)]; line = bytearray(raw[y*(stride+1)+1:(y+1)*(stride+1)])\n"
    "    for i in range(stride):\n"
    "        a = line[i-bpp] if i >= bpp else 0; b = prev[i]; c = prev[i-bpp] if i >= bpp else 0\n"
    "        if f == 1: line[i] = (line[i] + a) & 255\n"
    "        elif f == 2: line[i] = (line[i] + b) & 255\n"
    "        elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255\n"
    "        elif f == 4:\n"
    "            pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)\n"
    "            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255\n"
    "    ink += sum(1 for x in range(0, stride, bpp) if min(line[x:x+3]) < 235)\n"
    "    prev = line\n"
    "print(ink / (w * h))\n";

static long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static int render(const char *svg, const char *png, int h) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "timeout 120 chromium --headless --disable-gpu %s --hide-scrollbars --force-device-scale-factor=0.5 "
             "--user-data-dir=%s/chromium --window-size=1000,%d --screenshot=%s file://%s >/dev/null 2>&1", geteuid() == 0 ? "--no-sandbox" : "", tmp, h,
             png, svg);
    return system(cmd);
}

static void test_chromium(const char *svg) {
    if (system("command -v chromium >/dev/null 2>&1") != 0) {
        printf("skipped: rendering the SVG with headless Chromium (no chromium on PATH; Debian: apt-get install chromium)\n");
        return;
    }
    char *text = slurp(svg);
    const char *hp = text ? strstr(text, " height=\"") : NULL;
    int h = hp ? atoi(hp + 9) : 0;
    free(text);
    CHECK(h > 100, "the SVG has no height");
    if (h <= 100) return;
    char png[1024], py[1024];
    snprintf(png, sizeof png, "%s/plot.png", tmp);
    snprintf(py, sizeof py, "%s/png_share.py", tmp);
    int rc = render(svg, png, h);
    long sz = file_size(png);
    CHECK(rc == 0 && sz > 0, "chromium --headless --screenshot: exit %d, no PNG", rc);
    if (system("command -v python3 >/dev/null 2>&1") != 0) {
        /* no decoder at hand: against a blank page of the same size, rendered the same way */
        char blank[1024], bpng[1024];
        snprintf(blank, sizeof blank, "%s/blank.svg", tmp);
        snprintf(bpng, sizeof bpng, "%s/blank.png", tmp);
        const char *bsvg = P("<?xml version=\"1.0\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1000\" height=\"%d\">"
                             "<rect width=\"1000\" height=\"%d\" fill=\"#ffffff\"/></svg>\n", h, h);
        fx_write_file_atomic(blank, bsvg, strlen(bsvg));
        int rb = render(blank, bpng, h);
        long bz = file_size(bpng);
        CHECK(rb == 0 && bz > 0, "chromium on a blank SVG: exit %d", rb);
        if (sz > 0 && bz > 0)
            CHECK(sz > NONBLANK_BYTES_RATIO * bz, "the plot's PNG (%ld bytes) is not much more than a blank page's (%ld bytes)", sz, bz);
        printf("skipped: counting the PNG's pixels (no python3; compared with a blank page instead)\n");
        return;
    }
    fx_write_file_atomic(py, png_share_py, strlen(png_share_py));
    char out[256];
    int pr = check_run(P("python3 %s %s 2>&1", py, png), out, sizeof out);
    double share = atof(out);
    CHECK(pr == 0 && share > NONBLANK_SHARE, "the PNG's share of drawn pixels is %s (want > %g)", out, NONBLANK_SHARE);
}

static void test_plot(void) {
    const char *dirs[3] = {run_x, run_t, run_f};
    char svg[1024], svg2[1024];
    snprintf(svg, sizeof svg, "%s/runs.svg", tmp);
    snprintf(svg2, sizeof svg2, "%s/again.svg", tmp);
    int rc = fedex("plot", NULL, "plot", run_x, run_t, run_f, "--out", svg, NULL);
    CHECK(rc == 0, "fedex plot: exit %d", rc);
    if (rc) { show_err("plot"); return; }
    check_svg(svg, dirs, 3);
    rc = fedex("plot2", NULL, "plot", run_x, run_t, run_f, "--out", svg2, NULL);
    CHECK(rc == 0 && same_bytes(svg, svg2), "two plots of the same runs differ");
    char *o = slurp(svg);
    CHECK(o && strstr(o, "fedex \xc2\xb7 synthetic") && strstr(o, "fedit \xc2\xb7 synthetic") && strstr(o, "ffa \xc2\xb7 synthetic"),
          "the legend does not name each run's method and task");
    free(o);
    test_chromium(svg);
    rc = fedex("png", NULL, "plot", run_x, "--out", P("%s/x.png", tmp), "--format", "png", NULL);
    CHECK(rc == 2 && err_has("png", "not built in") && !exists(P("%s/x.png", tmp)), "--format png: exit %d, want a clear refusal", rc);
    rc = fedex("notrun", NULL, "plot", tmp, "--out", P("%s/y.svg", tmp), NULL);
    CHECK(rc == 1 && err_has("notrun", "not a run folder") && !exists(P("%s/y.svg", tmp)), "a folder that holds no run: exit %d", rc);
    /* a run that has its settings but no round yet (an empty metrics.jsonl): refused cleanly, by plot and
     * table alike (the sanitizer build checks that no freed memory is read on the way) */
    const char *fresh = P("%s/run_fresh", tmp);
    fx_mkdir_p(fresh);
    copy_lines(P("%s/" FX_SETTINGS_FILE, run_x), P("%s/" FX_SETTINGS_FILE, fresh), -1);
    fx_write_file_atomic(P("%s/metrics.jsonl", fresh), "", 0);
    rc = fedex("fresh_plot", NULL, "plot", fresh, "--out", P("%s/z.svg", tmp), NULL);
    CHECK(rc == 1 && err_has("fresh_plot", "no round finished yet") && !exists(P("%s/z.svg", tmp)),
          "plot of a run with no round yet: exit %d", rc);
    rc = fedex("fresh_table", NULL, "table", fresh, NULL);
    CHECK(rc == 1 && err_has("fresh_table", "no round finished yet"), "table of a run with no round yet: exit %d", rc);
}

/* ---------------------------------------------------------------- the table */

static void test_table(void) {
    int rc = fedex("table", NULL, "table", run_t, run_f, run_x, NULL);
    CHECK(rc == 0, "fedex table: exit %d", rc);
    if (rc) { show_err("table"); return; }
    char *md = slurp(P("%s/table.out", tmp));
    const char *dirs[3] = {run_t, run_f, run_x}, *names[3] = {"fedit", "ffa", "fedex"};
    for (int k = 0; k < 3; k++) {
        metrics m;
        if (metrics_load(dirs[k], &m) != 0) { CHECK(0, "%s: metrics", dirs[k]); continue; }
        const fx_json *last = &m.line[m.n - 1];
        const char *row = md ? strstr(md, P("| %s |", names[k])) : NULL;
        double v = NAN;
        int r = -1;
        CHECK(row && sscanf(row + strlen(names[k]) + 4, " %lf (r%d)", &v, &r) == 2, "no %s row in the Markdown table", names[k]);
        CHECK(fabs(v - num(last, "best")) <= 5e-5 && r == (int)num(last, "best_round"),
              "%s: the table says %.4f (r%d), metrics.jsonl %.9g at round %d", names[k], v, r, num(last, "best"),
              (int)num(last, "best_round"));
        metrics_free(&m);
    }
    CHECK(md && strstr(md, "synthetic (accuracy)") && strstr(md, "average"), "the table's header names the task, metric and average");
    free(md);
    rc = fedex("csv", NULL, "table", run_t, run_f, run_x, "--format", "csv", "--out", P("%s/t.csv", tmp), NULL);
    char *csv = slurp(P("%s/t.csv", tmp));
    CHECK(rc == 0 && csv && !strncmp(csv, "method,synthetic accuracy,synthetic round,average\nfedit,", 56),
          "CSV table: exit %d, begins %.60s", rc, csv ? csv : "(none)");
    free(csv);
    rc = fedex("dup", NULL, "table", run_x, run_x, NULL);
    CHECK(rc == 1 && err_has("dup", "one run per method and task"), "two runs of one method and task: exit %d", rc);
}

/* ---------------------------------------------------------------- roberta-base shapes */

/* One round of three clients, two single-row steps each (the first moves B from zero, the second then A,
 * so that the clients' products differ), on a random model of roberta-base's shapes. */
static void test_roberta_base(const char *shared) {
    char cfg[1024], mdir[1024], data[1024], run[1024], svg[1024];
    snprintf(cfg, sizeof cfg, "%s/models/roberta-base/config.json", shared);
    snprintf(mdir, sizeof mdir, "%s/rb", tmp);
    snprintf(data, sizeof data, "%s/glue", tmp);
    snprintf(run, sizeof run, "%s/rbrun", tmp);
    snprintf(svg, sizeof svg, "%s/rb.svg", tmp);
    int rc = fedex("rbinit", NULL, "init", "--config", cfg, "--out", mdir, "--seed", "3", NULL);
    CHECK(rc == 0, "init roberta-base shapes: exit %d", rc);
    if (rc) { show_err("rbinit"); return; }
    fx_mkdir_p(P("%s/RTE", data));
    CHECK(copy_lines(P("%s/data/glue/RTE/train.tsv", shared), P("%s/RTE/train.tsv", data), 1 + 3) == 0 &&
          copy_lines(P("%s/data/glue/RTE/dev.tsv", shared), P("%s/RTE/dev.tsv", data), 1 + 2) == 0, "RTE slice");
    rc = fedex("rbtrain", NULL, "train", "--model", mdir, "--task", "RTE", "--data", data, "--agg", "fedex", "--rounds", "1",
               "--local-epochs", "2", "--batch-size", "1", "--max-seq-length", "8", "--lr", "1e-2", "--threads", "2",
               "--out", run, NULL);
    CHECK(rc == 0, "train on roberta-base shapes: exit %d", rc);
    if (rc) { show_err("rbtrain"); return; }
    metrics m;
    if (metrics_load(run, &m) != 0 || m.n != 1) { CHECK(0, "roberta-base run: metrics.jsonl"); metrics_free(&m); return; }
    const fx_json *lay = fx_json_get(fx_json_get(&m.line[0], "deviation"), "layers");
    CHECK(lay && lay->type == FX_JOBJ && lay->n == 24, "deviation of %d layers, want 24 (12 layers x query, value)",
          lay ? (int)lay->n : -1);
    for (int l = 0; lay && l < 12; l++)
        for (int t = 0; t < 2; t++) {
            const char *name = P("encoder.layer.%d.attention.self.%s", l, t ? "value" : "query");
            double v = num(lay, name);
            CHECK(v > 0 && isfinite(v), "deviation of %s: %g, want a positive number", name, v);
        }
    metrics_free(&m);
    rc = fedex("rbplot", NULL, "plot", run, "--out", svg, NULL);
    CHECK(rc == 0, "plot of the roberta-base run: exit %d", rc);
    const char *dirs[1] = {run};
    if (rc == 0) check_svg(svg, dirs, 1);
    remove(P("%s/model.safetensors", mdir)); /* half a gigabyte */
}

int main(void) {
    if (run_harness_start("plot") != 0) {
        printf("skipped: plots and tables end to end (FEDEX, the path of the fedex binary, is not set: run `make test`)\n");
        return check_done();
    }
    test_deviation_equals_fedit();
    test_plot();
    test_table();
    const char *shared = shared_dir("the deviation on roberta-base shapes (needs its config and RTE)");
    if (shared) test_roberta_base(shared);
    run_harness_end();
    return check_done();
}
