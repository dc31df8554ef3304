/* tests/test_sorf.c: SORF-VeRA against an independent float64 PyTorch implementation
 * (tests/make_vera_fixtures.py): the mixer S from given signs and permutations (dense, by the VeRA fork's
 * construction) against the FWHT path, S orthonormal for fedex's own mixers, Gamma(b) and Lambda_d =
 * s G(theta) with its gradient, one model step's logits, loss and gradients of s, theta and the head;
 * then the server: fedex-sorf-vera's global model is the exact mean of the clients' models (the dense
 * check, independent of the aggregation error), sorf-vera's is not, and the refit of identical clients
 * gives their own state back. */
#include "fedex.h"
#include "check.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define FIX "tests/fixtures/"

/* Tolerances, each with its reason:
 * T_S      the fixture's S is stored in fp32 (entries ~1/sqrt(d)): its rounding, 6e-8 relative;
 * T_FWHT   the fp32 FWHT path against the double product: 6 FWHTs of log2(d) levels of fp32 sums;
 * T_ORTHO  S S^T in double: rounding of 3 x 2 x log2(d) butterflies per column;
 * T_OP     Gamma and Lambda_d from fp32 inputs in fp32 (Gamma) and double (G), stored to fp32;
 * T_STEP   logits, loss and gradients of the model step: the tiny model in fp32 against float64, as
 *          test_model.c's cases (its T_LOGITS / T_GRAD are of this size);
 * T_EXACT  fedex-sorf-vera's deviation from the exact mean, relative to the mean update: the fp32 factors
 *          of the residual and the fp32 refitted state, a few ulp of the update. */
#define T_S 1e-6
#define T_FWHT 1e-5
#define T_ORTHO 1e-12
#define T_OP 1e-6
#define T_STEP 5e-5
#define T_EXACT 1e-5

/* max |a - b| / max |b| */
static double rel_err(const float *a, const float *b, size_t n) {
    double e = 0, m = 0;
    for (size_t i = 0; i < n; i++) { e = fmax(e, fabs((double)a[i] - b[i])); m = fmax(m, fabs((double)b[i])); }
    return m > 0 ? e / m : e;
}

static const float *tensor(const fx_st_file *f, const char *name, size_t n, float **owned) {
    *owned = NULL;
    const fx_st_tensor *t = fx_st_find(f, name);
    if (!t || fx_st_numel(t) != n) { CHECK(0, "%s: no tensor '%s' of %zu elements", f->path, name, n); return NULL; }
    const float *p = fx_st_f32(f, t, owned);
    CHECK(p != NULL, "%s", fx_err());
    return p;
}

/* The fixture's mixer of width D (signs F32, perm I32) into S, whose buffers it replaces. */
static int load_mixer(const fx_st_file *f, int d, fx_sorf_mixer *S) {
    char name[64];
    float *ow;
    snprintf(name, sizeof name, "mix%d.signs", d);
    const float *signs = tensor(f, name, (size_t)9 * d, &ow);
    snprintf(name, sizeof name, "mix%d.perm", d);
    const fx_st_tensor *p = fx_st_find(f, name);
    if (!signs || !p || p->dtype != FX_I32 || fx_st_numel(p) != (size_t)3 * d) {
        CHECK(0, "%s: mixer %d incomplete", f->path, d);
        free(ow);
        return -1;
    }
    free(S->signs); free(S->perm);
    S->d = d;
    S->signs = fx_malloc(sizeof(float) * 9 * d);
    S->perm = fx_malloc(sizeof(int32_t) * 3 * d);
    memcpy(S->signs, signs, sizeof(float) * 9 * d);
    memcpy(S->perm, f->data + p->begin, sizeof(int32_t) * 3 * d);
    free(ow);
    return 0;
}

/* Dense S (d, d) through the fp32 ops (TRANSPOSE: S^T): rows of I times S^T are S's columns. */
static void dense_ops(const fx_sorf_mixer *S, float *D, int transpose) {
    int d = S->d;
    float *X = fx_calloc((size_t)d * d, sizeof(float)), *tmp = fx_malloc(sizeof(float) * (size_t)d * d);
    for (int i = 0; i < d; i++) X[(size_t)i * d + i] = 1;
    fx_sorf_mix(&fx_cpu_ops, S, X, tmp, X, d, transpose); /* X = I S^T (or I S) */
    for (int i = 0; i < d; i++)
        for (int j = 0; j < d; j++) D[(size_t)i * d + j] = X[(size_t)j * d + i];
    free(X); free(tmp);
}

static void test_mixers(const fx_st_file *f) {
    static const int ds[] = {24, 12};
    for (int t = 0; t < 2; t++) {
        int d = ds[t];
        fx_sorf_mixer S = {0};
        if (load_mixer(f, d, &S) != 0) continue;
        float *ow, *D = fx_malloc(sizeof(float) * (size_t)d * d), *Dt = fx_malloc(sizeof(float) * (size_t)d * d);
        char name[32];
        snprintf(name, sizeof name, "mix%d.S", d);
        const float *want = tensor(f, name, (size_t)d * d, &ow);
        if (want) {
            dense_ops(&S, D, 0);
            CHECK(rel_err(D, want, (size_t)d * d) < T_S, "d %d: S through the FWHT ops differs from the dense construction by %.2e",
                  d, rel_err(D, want, (size_t)d * d));
            dense_ops(&S, Dt, 1);
            for (int i = 0; i < d; i++)
                for (int j = 0; j < d; j++) D[(size_t)i * d + j] = Dt[(size_t)j * d + i];
            CHECK(rel_err(D, want, (size_t)d * d) < T_S, "d %d: S^T through the ops is not the dense S's transpose (%.2e)", d,
                  rel_err(D, want, (size_t)d * d));
            double *v = fx_malloc(sizeof(double) * 2 * d), e = 0;
            for (int j = 0; j < d; j++) {
                for (int i = 0; i < d; i++) v[i] = i == j;
                fx_sorf_mix_d(&S, v, v + d, 0);
                for (int i = 0; i < d; i++) e = fmax(e, fabs(v[i] - want[(size_t)i * d + j]));
            }
            CHECK(e < T_S, "d %d: the server's double S differs from the dense construction by %.2e", d, e);
            free(v);
        }
        free(ow); free(D); free(Dt);
        fx_sorf_mixer_free(&S);
    }
    /* fedex's own mixers: orthonormal, and the fp32 FWHT path is the double product */
    static const int widths[] = {768, 3072, 1000};
    for (int t = 0; t < 3; t++) {
        int d = widths[t];
        fx_sorf_mixer S;
        fx_sorf_mixer_build(&S, d, 42);
        double *cols = fx_malloc(sizeof(double) * (size_t)d * d), *tmp = fx_malloc(sizeof(double) * d), worst = 0;
        int step = d > 1000 ? 7 : 1; /* a sample of columns for the widest */
        for (int j = 0; j < d; j += step) {
            double *c = cols + (size_t)j * d;
            for (int i = 0; i < d; i++) c[i] = i == j;
            fx_sorf_mix_d(&S, c, tmp, 0);
        }
        for (int a = 0; a < d; a += step)
            for (int b = a; b < d; b += step) {
                double dot = 0;
                for (int i = 0; i < d; i++) dot += cols[(size_t)a * d + i] * cols[(size_t)b * d + i];
                worst = fmax(worst, fabs(dot - (a == b)));
            }
        CHECK(worst < T_ORTHO, "d %d: S^T S differs from the identity by %.2e", d, worst);
        int N = 3;
        float *x = fx_malloc(sizeof(float) * (size_t)N * d), *y = fx_malloc(sizeof(float) * (size_t)N * d),
              *ft = fx_malloc(sizeof(float) * (size_t)N * d), *want = fx_malloc(sizeof(float) * (size_t)N * d);
        fx_rng g;
        fx_rng_seed(&g, 5);
        for (size_t i = 0; i < (size_t)N * d; i++) x[i] = (float)fx_rng_normal(&g);
        double *v = fx_malloc(sizeof(double) * (size_t)d);
        for (int n = 0; n < N; n++) {
            for (int i = 0; i < d; i++) v[i] = x[(size_t)n * d + i];
            fx_sorf_mix_d(&S, v, tmp, 0);
            for (int i = 0; i < d; i++) want[(size_t)n * d + i] = (float)v[i];
        }
        fx_sorf_mix(&fx_cpu_ops, &S, y, ft, x, N, 0);
        CHECK(rel_err(y, want, (size_t)N * d) < T_FWHT, "d %d: the fp32 FWHT path differs from the double product by %.2e", d,
              rel_err(y, want, (size_t)N * d));
        free(v); free(x); free(y); free(ft); free(want); free(cols); free(tmp);
        fx_sorf_mixer_free(&S);
    }
}

static void test_gamma_givens(const fx_st_file *f) {
    float *o1, *o2, *o3, *o4;
    const float *b = tensor(f, "gamma.b", 12, &o1), *x = tensor(f, "gamma.x", 36, &o2), *y = tensor(f, "gamma.y", 36, &o3),
                *yt = tensor(f, "gamma.yt", 36, &o4);
    float got[36];
    if (b && x && y && yt) {
        fx_cpu_gamma_apply(got, x, b, 3, 12, 0);
        CHECK(rel_err(got, y, 36) < T_OP, "Gamma(b) x: %.2e", rel_err(got, y, 36));
        fx_cpu_gamma_apply(got, x, b, 3, 12, 1);
        CHECK(rel_err(got, yt, 36) < T_OP, "Gamma(b)^T x: %.2e", rel_err(got, yt, 36));
    }
    free(o1); free(o2); free(o3); free(o4);
    const float *sd = tensor(f, "givens.sd", 11, &o1), *dM = tensor(f, "givens.dM", 25, &o2), *M = tensor(f, "givens.M", 25, &o3),
                *gsd = tensor(f, "givens.gsd", 11, &o4);
    if (sd && dM && M && gsd) {
        float L[25], g[11];
        fx_cpu_givens_build(L, sd, 5);
        CHECK(rel_err(L, M, 25) < T_OP, "Lambda_d = s G(theta), Givens in the order (0,1), (0,2), ...: %.2e", rel_err(L, M, 25));
        fx_cpu_givens_backward(g, dM, sd, 5);
        CHECK(rel_err(g, gsd, 11) < T_OP, "the gradient of (s, theta): %.2e", rel_err(g, gsd, 11));
    }
    free(o1); free(o2); free(o3); free(o4);
}

/* ---------------------------------------------------------------- the model step */

static int sorf_model(fx_model *m, const fx_config *c, int r, const fx_st_file *cs, const fx_st_file *base) {
    fx_adapter_cfg a = {.kind = FX_SORF, .r = r, .d_initial = 0.5f, .seed = 3, .sorf_seed = 42};
    if (fx_targets_parse("query,value,intermediate.dense", &a.targets) != 0 || fx_model_create(m, c, &a, NULL) != 0) {
        CHECK(0, "%s", fx_err());
        return -1;
    }
    fx_model_init_adapters(m, 1);
    if (!cs) return 0;
    float *ow;
    for (int i = 0; i < m->base.nt; i++) {
        const float *p = tensor(base, m->base.t[i].name, m->base.t[i].n, &ow);
        if (!p) return -1;
        memcpy(m->base.data + m->base.t[i].off, p, sizeof(float) * m->base.t[i].n);
        free(ow);
    }
    for (int i = 0; i < m->train.nt; i++) {
        const float *p = tensor(cs, m->train.t[i].name, m->train.t[i].n, &ow);
        if (!p) return -1;
        memcpy(m->train.data + m->train.t[i].off, p, sizeof(float) * m->train.t[i].n);
        free(ow);
    }
    const float *A = tensor(cs, "vera_A", (size_t)r * m->vera_in, &ow);
    if (A) memcpy(m->vera_A, A, sizeof(float) * (size_t)r * m->vera_in);
    free(ow);
    const float *B = tensor(cs, "vera_B", (size_t)m->vera_out * r, &ow);
    if (B) memcpy(m->vera_B, B, sizeof(float) * (size_t)m->vera_out * r);
    free(ow);
    for (int i = 0; i < m->nsorf; i++)
        if (load_mixer(cs, m->sorf[i].d, &m->sorf[i]) != 0) return -1;
    return A && B ? 0 : -1;
}

static void test_step(const fx_config *c) {
    fx_st_file cs, base, batch;
    if (fx_st_open(FIX "sorf_case.safetensors", &cs) != 0 || fx_st_open(FIX "model_base.safetensors", &base) != 0 ||
        fx_st_open(FIX "model_batch.safetensors", &batch) != 0) {
        CHECK(0, "%s", fx_err());
        return;
    }
    fx_model m;
    if (sorf_model(&m, c, 4, &cs, &base) != 0) return;
    const fx_st_tensor *ids = fx_st_find(&batch, "ids"), *mask = fx_st_find(&batch, "mask");
    float *ow, labels[64];
    const float *lab = ids ? tensor(&batch, "label", (size_t)ids->shape[0], &ow) : NULL;
    if (!ids || !mask || !lab) { CHECK(0, "model_batch.safetensors: ids, mask, label"); return; }
    memcpy(labels, lab, sizeof(float) * (size_t)ids->shape[0]);
    free(ow);
    fx_batch b = {.n = (int)ids->shape[0], .T = (int)ids->shape[1], .ids = (int32_t *)(batch.data + ids->begin),
                  .mask = (uint8_t *)(batch.data + mask->begin), .labels = labels};
    float logits[64 * 3];
    memset(m.grad, 0xff, sizeof(float) * m.train.n); /* NaN: every gradient must be written */
    float loss = fx_model_step(&m, &b, 1, logits);
    const float *wl = tensor(&cs, "expect.logits", (size_t)b.n * 3, &ow);
    if (wl) CHECK(rel_err(logits, wl, (size_t)b.n * 3) < T_STEP, "SORF-VeRA logits: %.2e", rel_err(logits, wl, (size_t)b.n * 3));
    free(ow);
    const float *wloss = tensor(&cs, "expect.loss", 1, &ow);
    if (wloss) CHECK(fabs(loss - *wloss) < T_STEP * fabs(*wloss), "loss %.7f, expected %.7f", (double)loss, (double)*wloss);
    free(ow);
    int checked = 0;
    for (int i = 0; i < m.train.nt; i++) {
        const fx_tensor *t = &m.train.t[i];
        char name[160];
        snprintf(name, sizeof name, "grad.%s", t->name);
        if (t->frozen) {
            int zero = 1;
            for (size_t j = 0; j < t->n; j++) zero &= m.grad[t->off + j] == 0;
            CHECK(zero, "%s is frozen (Gamma is the server's) but has a gradient", t->name);
            continue;
        }
        const float *g = tensor(&cs, name, t->n, &ow);
        if (g) {
            double e = rel_err(m.grad + t->off, g, t->n);
            CHECK(e < T_STEP, "gradient of %s: %.2e", t->name, e);
            checked++;
        }
        free(ow);
    }
    CHECK(checked == 6 * 2 + 4, "gradients of s and theta in 6 layers and the 4 head tensors: %d checked", checked);
    fx_model_free(&m);
    fx_st_close(&cs); fx_st_close(&base); fx_st_close(&batch);
}

/* ---------------------------------------------------------------- the server */

/* max over layers of ||dW(global) + R - mean_i dW_i|| / ||mean_i dW_i - dW(prev)||, in double from the
 * fp32 state, with R = U A_l from the residual's fp32 factors (none when !EXACT). */
static double deviation(const fx_model *m, const float *const *cl, const double *w, int n, const float *global,
                        const float *prev, int exact) {
    double worst = 0;
    for (int k = 0; k < m->nadapted; k++) {
        const fx_adapted *ad = &m->ad[k];
        size_t len = (size_t)ad->out * ad->in;
        double *mean = fx_calloc(len, sizeof(double)), *t = fx_malloc(sizeof(double) * len), num = 0, den = 0;
        for (int i = 0; i < n; i++) {
            fx_delta_w(m, k, cl[i], t);
            for (size_t j = 0; j < len; j++) mean[j] += w[i] * t[j];
        }
        float *U = fx_malloc(sizeof(float) * (size_t)ad->out * m->a.r);
        fx_agg_residual_factors(m, k, cl, w, n, global, U, NULL);
        fx_delta_w(m, k, global, t);
        for (int o = 0; o < ad->out; o++)
            for (int x = 0; x < ad->in; x++) {
                double R = 0;
                for (int j = 0; exact && j < m->a.r; j++) R += (double)U[(size_t)o * m->a.r + j] * m->vera_A[(size_t)j * m->vera_in + x];
                double e = t[(size_t)o * ad->in + x] + R - mean[(size_t)o * ad->in + x];
                num += e * e;
            }
        fx_delta_w(m, k, prev, t);
        for (size_t j = 0; j < len; j++) den += (mean[j] - t[j]) * (mean[j] - t[j]);
        worst = fmax(worst, sqrt(num / den));
        free(U); free(mean); free(t);
    }
    return worst;
}

static void test_server(const fx_config *c) {
    fx_model m;
    if (sorf_model(&m, c, 4, NULL, NULL) != 0) return;
    size_t P = m.train.n;
    enum { N = 3 };
    float *prev = fx_malloc(sizeof(float) * P), *glob = fx_malloc(sizeof(float) * P), *cl[N];
    double w[N] = {0.5, 0.3, 0.2};
    memcpy(prev, m.train.data, sizeof(float) * P);
    fx_rng g;
    fx_rng_seed(&g, 9);
    /* a Gamma away from the identity (as after a refit), shared by the clients, and local moves of s, theta */
    for (int k = 0; k < m.nadapted; k++)
        for (int j = 0; j < m.ad[k].out; j++) prev[m.ad[k].b_off + j] += (float)(0.2 * fx_rng_normal(&g));
    for (int i = 0; i < N; i++) {
        cl[i] = fx_malloc(sizeof(float) * P);
        memcpy(cl[i], prev, sizeof(float) * P);
        for (int k = 0; k < m.nadapted; k++) {
            int na = 1 + m.a.r * (m.a.r - 1) / 2;
            for (int j = 0; j < na; j++) cl[i][m.ad[k].a_off + j] += (float)(0.05 * fx_rng_normal(&g));
        }
    }
    const float *const *cc = (const float *const *)cl;
    for (int polar = 0; polar < 2; polar++) {
        fx_agg_mean(glob, cc, w, N, P);
        for (int k = 0; k < m.nadapted; k++) fx_sorf_refit(&m, k, cc, w, N, glob, polar);
        double ex = deviation(&m, cc, w, N, glob, prev, 1), ap = deviation(&m, cc, w, N, glob, prev, 0);
        CHECK(ex < T_EXACT, "fedex-sorf-vera (%s refit): the global model is %.2e off the clients' mean", polar ? "polar" : "svd", ex);
        CHECK(ap > 1e-3, "sorf-vera (%s refit) alone: %.2e off the mean (an approximation expected)", polar ? "polar" : "svd", ap);
        double e = 0;
        double *ew = fx_malloc(sizeof(double) * fx_agg_error_work(&m, N));
        for (int k = 0; k < m.nadapted; k++) e = fmax(e, fx_agg_error(&m, k, 1.0f, cc, w, N, glob, prev, ew));
        CHECK(e < T_EXACT, "the aggregation error of fedex-sorf-vera (%s): %.2e", polar ? "polar" : "svd", e);
        free(ew);
    }
    /* identical clients at a proper rotation and Gamma = I: the polar refit gives their state back */
    for (int i = 0; i < N; i++) memcpy(cl[i], cl[0], sizeof(float) * P);
    for (int k = 0; k < m.nadapted; k++)
        for (int j = 0; j < m.ad[k].out; j++) cl[0][m.ad[k].b_off + j] = j < m.ad[k].out / 2;
    for (int i = 1; i < N; i++) memcpy(cl[i], cl[0], sizeof(float) * P);
    fx_agg_mean(glob, cc, w, N, P);
    for (int k = 0; k < m.nadapted; k++) fx_sorf_refit(&m, k, cc, w, N, glob, 1);
    CHECK(rel_err(glob, cl[0], P) < 1e-5, "refitting identical clients changed their state by %.2e", rel_err(glob, cl[0], P));
    for (int i = 0; i < N; i++) free(cl[i]);
    free(prev); free(glob);
    fx_model_free(&m);
}

int main(void) {
    fx_st_file f;
    if (fx_st_open(FIX "sorf_ops.safetensors", &f) != 0) { CHECK(0, "%s", fx_err()); return check_done(); }
    test_mixers(&f);
    test_gamma_givens(&f);
    fx_st_close(&f);
    fx_config c;
    if (fx_config_load(FIX "model_config.json", &c) != 0) { CHECK(0, "%s", fx_err()); return check_done(); }
    test_step(&c);
    test_server(&c);
    return check_done();
}
