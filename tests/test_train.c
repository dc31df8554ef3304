/* tests/test_train.c: `fedex train` end to end through the command line ($FEDEX), on a tiny RoBERTa and a
 * slice of RTE: every method, FedEx's exactness recomputed from the run's saved files, a dying client,
 * resume, determinism, Ctrl-C, /dev/shm and the parser. Not the model's numerics (test_model_core). */
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

/* ---------------------------------------------------------------- tolerances
 * The run accumulates FedEx's residual in fp32 (residual.safetensors holds it, R_R after round R) and
 * builds each round's share as an fp32 product of factors. Exactness is checked elementwise against what
 * that arithmetic can hold, and normwise against the residual itself and against the round's update (as
 * the run's own agg_error is defined). */

/* res_R - res_{R-1} vs the formula: the accumulation R_R = R_{R-1} + dR rounds by half an ulp of R_R
 * (<= 2^-24 |R_R|): one ulp is a margin of two ... */
#define TOL_R_ROUND 0x1p-23
/* ... plus the fp32 product of the factors: q = (N+1) r <= 16 terms (VeRA: r = 8), each rounded at 2^-24,
 * worth at most ~1e-6 of sum |terms|; ten times that. */
#define TOL_PRODUCT 1e-5
/* ||res_R - res_{R-1} - formula|| / ||formula||. fp32 can hold the residual to ~1e-7 of itself; VeRA's
 * factored product reaches 6e-8 here. LoRA's (sum_i w_i B_i A_i - B̄ Ā) sums terms up to 2e4 times
 * larger than their result and keeps only 2e-6 to 4e-4 of it (measured; an fp32 numpy product of the same
 * factors agrees); the centred form sum_i w_i (B_i - B̄)(A_i - Ā) plus the rank-2r correction for B̄, Ā's
 * own rounding gives 8e-8 on the same data. */
#define TOL_RESIDUAL_REL 1e-5
/* The global adapter is the double mean of the clients' rounded once to fp32: half an ulp, twice. */
#define TOL_MEAN 0x1p-23
/* || global model - mean of the clients' models || / || the round's update ||: the run's own agg_error
 * and ours, for FedEx (exact) and the methods without a cross term (FFA: one shared A; centralized: one
 * client). Measured 9e-8 to 2e-7 (LoRA) and 3e-11 to 6e-11 (VeRA) here; FFA 3e-8, centralized 0. */
#define TOL_EXACT 1e-5
/* FedIT's deviation must show: measured 5e-3 in round 1 and 4e-2 in round 2 with these settings. */
#define FEDIT_ERR_MIN 1e-4
/* A layer's residual is measurable when its norm is this many times the rounding bound above: a transposed
 * recomputation, off by ~||R||, then shows. */
#define SIGNIFICANT 20.0
/* The transposed formula R^T must differ from the saved residual by at least this share of ||R||
 * (measured 1.2 to 1.5 for these square, non-symmetric layers). */
#define TRANSPOSED_MIN 0.1
/* Our agg_error against the run's: the same fp32 inputs in double, summed in another order, printed with
 * 9 significant digits. */
#define TOL_METRIC 1e-5
/* Bounded waits for a run's first metrics line and for a run to finish (a run here takes 1 to 3 s). */
#define WAIT_LINE_S 120.0
#define WAIT_RUN_S 120.0

#include "run_harness.h"

static int shm_entries(pid_t pid);

/* ---------------------------------------------------------------- 1. every method */

static const struct { const char *agg; int vera; } methods[] = {
    {"fedex", 0}, {"fedit", 0}, {"ffa", 0}, {"fedex-vera", 1}, {"fedit-vera", 1}, {"ffa-vera", 1}, {"centralized", 0},
};
#define NMETHODS ((int)(sizeof methods / sizeof methods[0]))

/* The LoRA runs' and the VeRA runs' options besides --agg: a learning rate at which three steps a round
 * move the clients apart enough for FedIT's deviation to show. */
#define LORA_OPTS "--lr", "5e-3"
#define VERA_OPTS "--lr", "5e-3", "--vera-r", "8"

static int run_method(int k, const char *out, const char *tag, const char *seed, const char *rounds) {
    if (methods[k].vera)
        return train(tag, NULL, "--agg", methods[k].agg, VERA_OPTS, "--rounds", rounds, "--seed", seed, "--out", out,
                     "--save-clients", NULL);
    if (!strcmp(methods[k].agg, "centralized"))
        return train(tag, NULL, "--agg", methods[k].agg, LORA_OPTS, "--rounds", rounds, "--seed", seed, "--out", out,
                     "--save-clients", NULL);
    return train(tag, NULL, "--agg", methods[k].agg, LORA_OPTS, "--num-clients", "3", "--rounds", rounds, "--seed",
                 seed, "--out", out, "--save-clients", NULL);
}

static void test_methods(void) {
    for (int k = 0; k < NMETHODS; k++) {
        const char *agg = methods[k].agg;
        char out[1024];
        snprintf(out, sizeof out, "%s/run_%s", tmp, agg);
        int rc = run_method(k, out, P("run_%s", agg), "42", "2");
        CHECK(rc == 0, "--agg %s: exit status %d", agg, rc);
        if (rc != 0) { show_err(P("run_%s", agg)); continue; }
        metrics m;
        int nc = strcmp(agg, "centralized") ? 3 : 1;
        CHECK(metrics_load(out, &m) == 0 && m.n == 2, "--agg %s: metrics.jsonl is not 2 JSON lines", agg);
        for (int r = 0; r < m.n; r++)
            CHECK(line_ok(&m.line[r], r + 1, nc), "--agg %s: round %d's line lacks a field or has a bad value", agg, r + 1);
        const char *files[] = {"adapter_model.safetensors", "adapter_config.json", "residual.safetensors",
                               FX_SETTINGS_FILE, "state.safetensors"};
        for (int f = 0; f < 5; f++) CHECK(exists(P("%s/%s", out, files[f])), "--agg %s: no %s", agg, files[f]);
        /* only FedEx moves W0: the others' residual is zero, FedEx's is not */
        fx_st_file f;
        if (fx_st_open(P("%s/residual.safetensors", out), &f) == 0) {
            double mx = 0;
            for (int t = 0; t < f.n; t++) {
                size_t n;
                double *v = tget(&f, f.t[t].name, &n);
                for (size_t i = 0; v && i < n; i++) if (fabs(v[i]) > mx) mx = fabs(v[i]);
                free(v);
            }
            int exact = !strcmp(agg, "fedex") || !strcmp(agg, "fedex-vera");
            CHECK(f.n > 0 && (exact ? mx > 0 : mx == 0), "--agg %s: residual.safetensors max |x| = %.3g, want %s", agg,
                  mx, exact ? "> 0" : "0");
            fx_st_close(&f);
        } else CHECK(0, "--agg %s: residual.safetensors does not load: %s", agg, fx_err());
        /* the run's own aggregation error: float rounding for the exact methods, FedIT's deviation visible */
        double worst = 0;
        for (int r = 0; r < m.n; r++) {
            double e = num(fx_json_get(&m.line[r], "agg_error"), "max");
            if (!(e <= worst)) worst = e;
            if (!strcmp(agg, "fedex") || !strcmp(agg, "fedex-vera") || !strcmp(agg, "ffa") || !strcmp(agg, "centralized"))
                CHECK(e < TOL_EXACT, "--agg %s round %d: agg_error max %.3g, want < %.0e", agg, r + 1, e, TOL_EXACT);
        }
        if (!strcmp(agg, "fedit"))
            CHECK(worst > FEDIT_ERR_MIN, "--agg fedit: agg_error max %.3g in every round, want > %.0e in one", worst,
                  FEDIT_ERR_MIN);
        metrics_free(&m);
    }
}

/* ---------------------------------------------------------------- 2. exactness, recomputed */

typedef struct { fx_st_file f; int open; } stf;

static int st_open(stf *s, const char *path) {
    s->open = fx_st_open(path, &s->f) == 0;
    if (!s->open) fprintf(stderr, "cannot read %s: %s\n", path, fx_err());
    return s->open ? 0 : -1;
}
static void st_close(stf *s) { if (s->open) fx_st_close(&s->f); s->open = 0; }

/* One adapted layer's tensors in an adapter file, as doubles: LoRA A (r, in), B (out, r); VeRA
 * A = lambda_d (r), B = lambda_b (out), and the shared projections VA = vera_A (r, in_max),
 * VB = vera_B (out_max, r). PRE is "base_model.model.roberta.<layer>". */
typedef struct { double *A, *B, *VA, *VB; int r; size_t in_max; } layer_ad;

static int layer_load(const fx_st_file *f, const char *pre, int vera, int out, int in, layer_ad *l) {
    size_t na = 0, nb = 0, nva = 0, nvb = 0;
    memset(l, 0, sizeof *l);
    l->A = tget(f, P("%s.%s", pre, vera ? "vera_lambda_d" : "lora_A.weight"), &na);
    l->B = tget(f, P("%s.%s", pre, vera ? "vera_lambda_b" : "lora_B.weight"), &nb);
    if (vera) {
        l->VA = tget(f, "base_model.vera_A", &nva);
        l->VB = tget(f, "base_model.vera_B", &nvb);
    }
    if (!l->A || !l->B || (vera && (!l->VA || !l->VB))) return -1;
    l->r = vera ? (int)na : (int)(na / (size_t)in);
    if (l->r < 1) return -1;
    if (!vera) return na == (size_t)l->r * in && nb == (size_t)out * l->r ? 0 : -1;
    l->in_max = nva / (size_t)l->r;
    /* vera_A[:, :in] and vera_B[:out, :] must exist */
    return nb == (size_t)out && nva % (size_t)l->r == 0 && nvb % (size_t)l->r == 0 && l->in_max >= (size_t)in &&
           nvb / (size_t)l->r >= (size_t)out ? 0 : -1;
}

static void layer_free(layer_ad *l) { free(l->A); free(l->B); free(l->VA); free(l->VB); }

/* dW = s B A (LoRA) or diag(b) vera_B[:out, :] diag(d) vera_A[:, :in] (VeRA), (out, in), in double. */
static void delta_w(const layer_ad *l, int vera, double s, int out, int in, double *dW) {
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
            double acc = 0;
            for (int j = 0; j < l->r; j++)
                acc += vera ? l->B[o] * l->VB[(size_t)o * l->r + j] * l->A[j] * l->VA[(size_t)j * l->in_max + i]
                            : s * l->B[(size_t)o * l->r + j] * l->A[(size_t)j * in + i];
            dW[(size_t)o * in + i] = acc;
        }
}

/* This round's residual by the formula, from the clients' adapters CL (N of them) and the global G:
 *   LoRA  R = s (1/N sum_i B_i A_i - B̄ Ā)
 *   VeRA  R = M A,  M[o][j] = B[o][j] (1/N sum_i b_i[o] d_i[j] - b̄[o] d̄[j]),  A, B the shared projections
 * and in S the sum of |terms| that the run's fp32 product of factors adds up (LoRA: every s B_i A_i and
 * B̄ Ā; VeRA: |M| |A|), which bounds that product's rounding. */
static void residual_formula(const layer_ad *cl, int n, const layer_ad *g, int vera, double s, int out, int in,
                             double *want, double *S) {
    int r = g->r;
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
            double acc = 0, mag = 0;
            for (int j = 0; j < r; j++) {
                if (vera) {
                    double m = 0;
                    for (int c = 0; c < n; c++) m += cl[c].B[o] * cl[c].A[j] / n;
                    m = g->VB[(size_t)o * r + j] * (m - g->B[o] * g->A[j]);
                    double a = g->VA[(size_t)j * g->in_max + i];
                    acc += m * a;
                    mag += fabs(m * a);
                } else {
                    for (int c = 0; c < n; c++) {
                        double t = s * cl[c].B[(size_t)o * r + j] * cl[c].A[(size_t)j * in + i] / n;
                        acc += t;
                        mag += fabs(t);
                    }
                    double t = s * g->B[(size_t)o * r + j] * g->A[(size_t)j * in + i];
                    acc -= t;
                    mag += fabs(t);
                }
            }
            want[(size_t)o * in + i] = acc;
            S[(size_t)o * in + i] = mag;
        }
}

/* LoRA's scale s = alpha / r (alpha / sqrt(r) with rslora) from the run's adapter_config.json. */
static double lora_scale(const char *dir) {
    char *t = slurp(P("%s/adapter_config.json", dir));
    fx_json j;
    double s = NAN;
    if (t && fx_json_parse(t, strlen(t), &j) == 0) {
        double r = num(&j, "r"), a = num(&j, "lora_alpha");
        const fx_json *rs = fx_json_get(&j, "use_rslora");
        s = rs && rs->type == FX_JBOOL && rs->boolean ? a / sqrt(r) : a / r;
        fx_json_free(&j);
    }
    free(t);
    return s;
}

/* One layer K of one round R: the residual added this round (res_R - res_{R-1}) against the formula,
 * elementwise and normwise; the run's agg_error against ours; the transposed formula refused. */
static void check_exact_layer(const char *agg, int vera, double s, int R, const char *name, int out, int in,
                              const double *got, const double *prev, const layer_ad *cl, const layer_ad *g,
                              const layer_ad *pg, const fx_json *reported, int *significant) {
    enum { NC = 3 };
    size_t len = (size_t)out * in;
    double *want = fx_malloc(len * sizeof(double)), *S = fx_malloc(len * sizeof(double));
    double *mean = fx_calloc(len, sizeof(double)), *dW = fx_malloc(len * sizeof(double));
    double *dWg = fx_malloc(len * sizeof(double)), *dWp = fx_calloc(len, sizeof(double));
    residual_formula(cl, NC, g, vera, s, out, in, want, S);
    for (int c = 0; c < NC; c++) {
        delta_w(&cl[c], vera, s, out, in, dW);
        for (size_t i = 0; i < len; i++) mean[i] += dW[i] / NC;
    }
    delta_w(g, vera, s, out, in, dWg);
    /* the model the clients started from: round R-1's global; before round 1, B = 0 (LoRA) or
     * lambda_b = 0 (VeRA) make dW zero */
    if (pg) delta_w(pg, vera, s, out, in, dWp);

    double worst = 0, e2 = 0, et2 = 0, r2 = 0, u2 = 0, b2 = 0, a2 = 0;
    size_t wi = 0;
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
            size_t j = (size_t)o * in + i;
            double d = got[j] - (prev ? prev[j] : 0);
            double bound = TOL_R_ROUND * fabs(got[j]) + TOL_PRODUCT * S[j];
            double ex = fabs(d - want[j]) - bound;
            if (ex > worst) { worst = ex; wi = j; }
            e2 += (d - want[j]) * (d - want[j]);
            r2 += want[j] * want[j];
            b2 += bound * bound;
            u2 += (mean[j] - dWp[j]) * (mean[j] - dWp[j]);
            /* W_global - mean_i W_i = (R_R - R_{R-1}) + dW(global) - mean_i dW_i */
            a2 += (d + dWg[j] - mean[j]) * (d + dWg[j] - mean[j]);
            if (out == in) {
                double wt = want[(size_t)i * in + o];
                et2 += (d - wt) * (d - wt);
            }
        }
    CHECK(worst <= 0, "%s round %d %s: residual element (%zu, %zu) is off the formula by %.3g beyond fp32 rounding",
          agg, R, name, wi / (size_t)in, wi % (size_t)in, worst);
    CHECK(sqrt(e2 / u2) < TOL_EXACT, "%s round %d %s: ||residual - formula|| / ||update|| = %.3g, want < %.0e", agg,
          R, name, sqrt(e2 / u2), TOL_EXACT);
    CHECK(sqrt(e2 / r2) < TOL_RESIDUAL_REL, "%s round %d %s: ||residual - formula|| / ||formula|| = %.3g, want < "
          "%.0e (sum |terms| / |R| = %.3g)", agg, R, name, sqrt(e2 / r2), TOL_RESIDUAL_REL, sqrt(b2 / r2) / TOL_PRODUCT);
    /* The run's agg_error takes this round's residual as its factors carry it (agg.c); ours takes it from
     * the saved fp32 R_acc, which also holds the rounding of forming and accumulating it, at most BOUND
     * elementwise: the two differ by no more than that (triangle inequality). */
    double mine = sqrt(a2 / u2), theirs = reported && reported->type == FX_JNUM ? reported->num : NAN;
    CHECK(fabs(mine - theirs) <= TOL_METRIC * mine + sqrt(b2 / u2) + 1e-15,
          "%s round %d %s: agg_error %.9g, recomputed %.9g (apart by more than the accumulation's rounding, %.3g)", agg,
          R, name, theirs, mine, sqrt(b2 / u2));
    if (r2 > SIGNIFICANT * SIGNIFICANT * b2) {
        (*significant)++;
        /* non-square layers: (in, out) cannot even be laid over (out, in) */
        if (out == in)
            CHECK(sqrt(et2 / r2) > TRANSPOSED_MIN, "%s round %d %s: the transposed formula matches too "
                  "(||residual - R^T|| / ||R|| = %.3g)", agg, R, name, sqrt(et2 / r2));
    }
    free(want); free(S); free(mean); free(dW); free(dWg); free(dWp);
}

/* One round R of one exact run: the global adapter is the clients' mean, and the residual added this round
 * is the formula's, in W's (out, in) orientation, up to fp32 rounding. */
static void check_exact_round(const char *agg, int vera, const char *run, int R, const fx_json *line) {
    enum { NC = 3 };
    stf cl[NC], g, pg, res, pres;
    memset(cl, 0, sizeof cl); memset(&g, 0, sizeof g); memset(&pg, 0, sizeof pg);
    memset(&res, 0, sizeof res); memset(&pres, 0, sizeof pres);
    int ok = 1;
    for (int c = 0; c < NC; c++) ok &= st_open(&cl[c], P("%s/rounds/%d/client_%d/adapter_model.safetensors", run, R, c)) == 0;
    ok &= st_open(&g, P("%s/rounds/%d/global/adapter_model.safetensors", run, R)) == 0;
    ok &= st_open(&res, P("%s/rounds/%d/global/residual.safetensors", run, R)) == 0;
    if (R > 1) ok &= st_open(&pg, P("%s/rounds/%d/global/adapter_model.safetensors", run, R - 1)) == 0 &&
                     st_open(&pres, P("%s/rounds/%d/global/residual.safetensors", run, R - 1)) == 0;
    CHECK(ok, "%s round %d: the saved client, global and residual files do not all load", agg, R);
    if (!ok) goto out;

    /* the global tensors: the plain mean of the clients' (VeRA's shared projections: equal everywhere) */
    for (int t = 0; t < g.f.n; t++) {
        const char *name = g.f.t[t].name;
        size_t n, nc;
        double *gv = tget(&g.f, name, &n), *cv[NC];
        int shared = !strcmp(name, "base_model.vera_A") || !strcmp(name, "base_model.vera_B");
        int have = gv != NULL;
        for (int c = 0; c < NC; c++) { cv[c] = tget(&cl[c].f, name, &nc); have &= cv[c] && nc == n; }
        CHECK(have, "%s round %d: %s missing from a client's adapter or of another size", agg, R, name);
        double worst = 0;
        size_t wi = 0;
        for (size_t i = 0; have && i < n; i++) {
            double mean = (cv[0][i] + cv[1][i] + cv[2][i]) / NC;
            double ex = shared ? fabs(gv[i] - cv[0][i]) + fabs(cv[1][i] - cv[0][i]) + fabs(cv[2][i] - cv[0][i])
                               : fabs(gv[i] - mean) - TOL_MEAN * fabs(mean);
            if (ex > worst) { worst = ex; wi = i; }
        }
        CHECK(worst <= 0, "%s round %d: %s[%zu]: the global value is not the clients' mean (excess %.3g)", agg, R,
              name, wi, worst);
        for (int c = 0; c < NC; c++) free(cv[c]);
        free(gv);
    }

    /* the residual, layer by layer; agg_error's layers are keyed by the layer's name */
    double s = vera ? 1.0 : lora_scale(run);
    const fx_json *layers = fx_json_get(fx_json_get(line, "agg_error"), "layers");
    if (layers && layers->type != FX_JOBJ) layers = NULL;
    CHECK(layers && (int)layers->n == res.f.n, "%s round %d: agg_error lists %d layers, the residual has %d", agg,
          R, layers ? (int)layers->n : -1, res.f.n);
    int significant = 0;
    for (int k = 0; k < res.f.n; k++) {
        const fx_st_tensor *t = &res.f.t[k];
        size_t nl = strlen(t->name), n1 = 0, n2 = 0;
        /* "roberta.<layer>.weight", (out, in), names the layer */
        int named = t->ndim == 2 && nl > 15 && !strncmp(t->name, "roberta.", 8) && !strcmp(t->name + nl - 7, ".weight");
        CHECK(named, "%s: residual tensor '%s' is not roberta.<layer>.weight of shape (out, in)", agg, t->name);
        if (!named) continue;
        int out = (int)t->shape[0], in = (int)t->shape[1];
        char pre[512];
        snprintf(pre, sizeof pre, "base_model.model.roberta.%.*s", (int)(nl - 15), t->name + 8);
        double *got = tget(&res.f, t->name, &n1), *prev = R > 1 ? tget(&pres.f, t->name, &n2) : NULL;
        layer_ad la[NC], lg, lp;
        int have = got && (R == 1 || (prev && n2 == n1));
        for (int c = 0; c < NC; c++) have &= layer_load(&cl[c].f, pre, vera, out, in, &la[c]) == 0;
        have &= layer_load(&g.f, pre, vera, out, in, &lg) == 0;
        if (R > 1) have &= layer_load(&pg.f, pre, vera, out, in, &lp) == 0;
        CHECK(have, "%s round %d: %s: adapter or residual tensors missing or of the wrong size", agg, R, pre);
        char lname[512];
        snprintf(lname, sizeof lname, "%.*s", (int)(nl - 15), t->name + 8);
        const fx_json *lerr = layers ? fx_json_get(layers, lname) : NULL;
        CHECK(lerr && lerr->type == FX_JNUM, "%s round %d: agg_error.layers has no entry \"%s\"", agg, R, lname);
        if (have)
            check_exact_layer(agg, vera, s, R, t->name, out, in, got, prev, la, &lg, R > 1 ? &lp : NULL, lerr,
                              &significant);
        for (int c = 0; c < NC; c++) layer_free(&la[c]);
        layer_free(&lg);
        if (R > 1) layer_free(&lp);
        free(got); free(prev);
    }
    CHECK(significant > 0, "%s round %d: no layer's residual stands above fp32 rounding: nothing was tested", agg, R);
out:
    for (int c = 0; c < NC; c++) st_close(&cl[c]);
    st_close(&g); st_close(&pg); st_close(&res); st_close(&pres);
}

static void test_exactness(void) {
    for (int v = 0; v < 2; v++) {
        const char *agg = v ? "fedex-vera" : "fedex";
        char run[1024];
        snprintf(run, sizeof run, "%s/run_%s", tmp, agg);
        metrics m;
        if (metrics_load(run, &m) != 0 || m.n != 2) {
            CHECK(0, "%s: no metrics of the 2-round run to recompute", agg);
            metrics_free(&m);
            continue;
        }
        for (int R = 1; R <= 2; R++) check_exact_round(agg, v, run, R, &m.line[R - 1]);
        metrics_free(&m);
    }
}

/* ---------------------------------------------------------------- demo */

/* `fedex demo` prints, per round, each method's dev accuracy and aggregation error: FedEx and FFA at
 * float rounding, FedIT clearly not (what the README's first screen shows). */
static void test_demo(void) {
    int rc = fedex("demo", NULL, "demo", "--rounds", "2", "--local-epochs", "1", NULL);
    CHECK(rc == 0, "demo: exit status %d", rc);
    if (rc != 0) { show_err("demo"); return; }
    char *o = slurp(P("%s/demo.out", tmp));
    const char *table = o ? strstr(o, "\nround ") : NULL;
    CHECK(table != NULL, "demo: no table in its output");
    int rows = 0;
    for (const char *p = table ? strchr(table + 1, '\n') : NULL; p && *p; p = strchr(p + 1, '\n')) {
        int r;
        double acc[3], err[3];
        if (sscanf(p + 1, "%d %lf (%lf) %lf (%lf) %lf (%lf)", &r, &acc[0], &err[0], &acc[1], &err[1], &acc[2],
                   &err[2]) != 7)
            continue;
        rows++;
        CHECK(err[2] < 1e-5 && err[1] < 1e-5, "demo round %d: fedex / ffa aggregation error %.3g / %.3g", r, err[2], err[1]);
        CHECK(err[0] > 1e-4, "demo round %d: fedit aggregation error %.3g is not clearly above rounding", r, err[0]);
        for (int k = 0; k < 3; k++) CHECK(acc[k] >= 0 && acc[k] <= 1, "demo round %d: accuracy %g", r, acc[k]);
    }
    CHECK(rows == 2, "demo: %d table rows, want 2", rows);
    free(o);
    /* --out DIR: each method's run in a folder of its own, as train writes one */
    const char *out = P("%s/demo_runs", tmp);
    rc = fedex("demo_out", NULL, "demo", "--rounds", "1", "--local-epochs", "1", "--out", out, NULL);
    CHECK(rc == 0, "demo --out: exit status %d", rc);
    if (rc != 0) show_err("demo_out");
    static const char *const method[] = {"fedit", "ffa", "fedex"};
    for (int k = 0; k < 3; k++) {
        metrics m;
        const char *dir = P("%s/%s", out, method[k]);
        int ok = metrics_load(dir, &m) == 0;
        CHECK(ok && m.n == 1 && exists(P("%s/adapter_model.safetensors", dir)), "demo --out: %s holds no 1-round run", dir);
        if (ok) metrics_free(&m);
    }
}

/* ---------------------------------------------------------------- export */

/* `fedex export` writes the run's global model: evaluated by `fedex eval`, the merged checkpoint must give
 * the dev loss the run itself reported for its last round, and the unmerged one (residual merged, PEFT
 * adapter beside it) the same logits as the merged one. */
static double eval_loss(const char *tag) {
    char *o = slurp(P("%s/%s.out", tmp, tag));
    const char *p = o ? strstr(o, "loss ") : NULL;
    double v = p ? strtod(p + 5, NULL) : NAN;
    free(o);
    return v;
}

static int methods_vera(const char *agg) { return strstr(agg, "vera") != NULL; }

/* The exported weights, rebuilt here from the run's own files: plain = W0 + R, merged = W0 + R + dW, for
 * every adapted layer (tiny model: 2 layers, query and value, 16 x 16), with W0 from the base checkpoint,
 * R from residual.safetensors, dW from the adapter. */
static void check_export_weights(const char *agg, int vera, const char *run, const char *merged, const char *plain) {
    static const double TOL_W = 1e-6; /* fp32 sums of values of order 0.1, relative to max |W| */
    stf base, res, ad, mg, pl;
    if (st_open(&base, P("%s/model.safetensors", model)) | st_open(&res, P("%s/residual.safetensors", run)) |
        st_open(&ad, P("%s/adapter_model.safetensors", run)) | st_open(&mg, P("%s/model.safetensors", merged)) |
        st_open(&pl, P("%s/model.safetensors", plain))) {
        CHECK(0, "export %s: a file to check does not load", agg);
        st_close(&base); st_close(&res); st_close(&ad); st_close(&mg); st_close(&pl);
        return;
    }
    double s = vera ? 1.0 : lora_scale(run), rmax = 0;
    const int H = 16;
    for (int l = 0; l < 2; l++)
        for (int q = 0; q < 2; q++) {
            const char *lay = P("encoder.layer.%d.attention.self.%s", l, q ? "value" : "query");
            char name[256], pre[256];
            snprintf(name, sizeof name, "roberta.%s.weight", lay);
            snprintf(pre, sizeof pre, "base_model.model.roberta.%s", lay);
            size_t n0 = 0, nr = 0, nm = 0, np = 0;
            double *W0 = tget(&base.f, name, &n0), *R = tget(&res.f, name, &nr);
            double *Wm = tget(&mg.f, name, &nm), *Wp = tget(&pl.f, name, &np);
            layer_ad la;
            int have = W0 && R && Wm && Wp && n0 == (size_t)H * H && nr == n0 && nm == n0 && np == n0 &&
                       layer_load(&ad.f, pre, vera, H, H, &la) == 0;
            CHECK(have, "export %s: %s missing in one of the files", agg, name);
            if (have) {
                double *dW = fx_malloc(sizeof(double) * n0), em = 0, ep = 0, wmax = 0;
                delta_w(&la, vera, s, H, H, dW);
                for (size_t i = 0; i < n0; i++) {
                    wmax = fmax(wmax, fabs(W0[i]));
                    rmax = fmax(rmax, fabs(R[i]));
                    ep = fmax(ep, fabs(Wp[i] - (W0[i] + R[i])));
                    em = fmax(em, fabs(Wm[i] - (W0[i] + R[i] + dW[i])));
                }
                CHECK(ep <= TOL_W * wmax, "export %s: %s: plain weight off W0 + R by %.3g", agg, name, ep);
                CHECK(em <= TOL_W * wmax, "export %s: %s: merged weight off W0 + R + dW by %.3g", agg, name, em);
                free(dW);
                layer_free(&la);
            }
            free(W0); free(R); free(Wm); free(Wp);
        }
    CHECK(rmax > 0, "export %s: the residual is zero, so the check above proves nothing", agg);
    st_close(&base); st_close(&res); st_close(&ad); st_close(&mg); st_close(&pl);
}

/* The merged folder as transformers loads it whole: the task's label names in config.json (which fedex
 * reads back), tokenizer_config.json with the model's token limit, special_tokens_map.json. */
static void check_export_files(const char *agg, const char *dir) {
    fx_json j;
    fx_config back, base;
    CHECK(fx_config_load(P("%s/config.json", model), &base) == 0, "%s", fx_err());
    CHECK(fx_config_load(P("%s/config.json", dir), &back) == 0 && back.num_labels == 2,
          "export %s: config.json does not read back with 2 labels: %s", agg, fx_err());
    if (fx_json_load(P("%s/config.json", dir), &j) == 0) {
        const fx_json *i2l = fx_json_get(&j, "id2label"), *l2i = fx_json_get(&j, "label2id");
        const fx_json *a = fx_json_get(i2l, "0"), *b = fx_json_get(i2l, "1");
        const fx_json *x = fx_json_get(l2i, "entailment"), *y = fx_json_get(l2i, "not_entailment");
        CHECK(a && b && a->type == FX_JSTR && b->type == FX_JSTR && !strcmp(a->str, "entailment") &&
              !strcmp(b->str, "not_entailment") && i2l->n == 2, "export %s: id2label is not RTE's names", agg);
        CHECK(x && y && x->type == FX_JNUM && y->type == FX_JNUM && x->inum == 0 && y->inum == 1 && l2i->n == 2,
              "export %s: label2id is not RTE's names", agg);
        fx_json_free(&j);
    } else CHECK(0, "%s", fx_err());
    if (fx_json_load(P("%s/tokenizer_config.json", dir), &j) == 0) {
        const fx_json *cls = fx_json_get(&j, "tokenizer_class"), *ml = fx_json_get(&j, "model_max_length");
        CHECK(cls && cls->type == FX_JSTR && !strcmp(cls->str, "RobertaTokenizer"), "export %s: tokenizer_class", agg);
        CHECK(ml && ml->type == FX_JNUM && ml->inum == base.max_positions - base.pad_id - 1,
              "export %s: model_max_length %g, want %d", agg, ml ? ml->num : -1.0,
              base.max_positions - base.pad_id - 1);
        static const char *const tok[][2] = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"unk_token", "<unk>"},
            {"sep_token", "</s>"}, {"cls_token", "<s>"}, {"pad_token", "<pad>"}, {"mask_token", "<mask>"},
            {"errors", "replace"}};
        for (int i = 0; i < 8; i++) {
            const fx_json *v = fx_json_get(&j, tok[i][0]);
            CHECK(v && v->type == FX_JSTR && !strcmp(v->str, tok[i][1]), "export %s: tokenizer_config %s", agg,
                  tok[i][0]);
        }
        const fx_json *aps = fx_json_get(&j, "add_prefix_space"), *tr = fx_json_get(&j, "trim_offsets");
        CHECK(aps && aps->type == FX_JBOOL && !aps->boolean && tr && tr->type == FX_JBOOL && tr->boolean,
              "export %s: add_prefix_space false, trim_offsets true", agg);
        fx_json_free(&j);
    } else CHECK(0, "export %s: %s", agg, fx_err());
    if (fx_json_load(P("%s/special_tokens_map.json", dir), &j) == 0) {
        const fx_json *mk = fx_json_get(&j, "mask_token"), *c = fx_json_get(mk, "content"), *l = fx_json_get(mk, "lstrip");
        const fx_json *pad = fx_json_get(fx_json_get(&j, "pad_token"), "content");
        CHECK(j.n == 7 && c && c->type == FX_JSTR && !strcmp(c->str, "<mask>") && l && l->type == FX_JBOOL &&
              l->boolean && pad && pad->type == FX_JSTR && !strcmp(pad->str, "<pad>"),
              "export %s: special_tokens_map.json", agg);
        fx_json_free(&j);
    } else CHECK(0, "export %s: %s", agg, fx_err());
}

static void test_export(void) {
    static const double TOL_LOGITS = 1e-4; /* the adapter folded into W in fp32 vs applied as s (x A^T) B^T */
    static const double TOL_LOSS = 6e-5;   /* `fedex eval` prints the loss with 4 decimals */
    const char *aggs[] = {"fedex", "fedex-vera"};
    for (int k = 0; k < 2; k++) {
        char run[1024];
        snprintf(run, sizeof run, "%s/run_%s", tmp, aggs[k]);
        metrics m;
        if (metrics_load(run, &m) != 0 || m.n < 1) { CHECK(0, "export %s: no run to export", aggs[k]); continue; }
        double dev_loss = num(&m.line[m.n - 1], "dev_loss");
        metrics_free(&m);
        char merged_dir[1100], plain_dir[1100];
        snprintf(merged_dir, sizeof merged_dir, "%s/merged", run);
        snprintf(plain_dir, sizeof plain_dir, "%s/plain", run);
        /* the merged export goes over a plain one: the adapter files that one left must go, or an eval of
         * the folder with --adapter (and PEFT, which finds them itself) would add the adapters twice */
        int rc0 = fedex(P("export_m0_%d", k), NULL, "export", "--run", run, "--out", merged_dir, NULL);
        CHECK(rc0 == 0 && exists(P("%s/adapter_config.json", merged_dir)), "export %s: exit %d", aggs[k], rc0);
        int rc1 = fedex(P("export_m_%d", k), NULL, "export", "--run", run, "--out", merged_dir, "--merged", NULL);
        CHECK(!exists(P("%s/adapter_config.json", merged_dir)) && !exists(P("%s/adapter_model.safetensors", merged_dir)),
              "export %s --merged over a plain export: the earlier adapter files are still there", aggs[k]);
        /* ... but an adapter of another base kept in the folder is not export's to remove */
        const char *foreign = "{\"peft_type\": \"LORA\", \"base_model_name_or_path\": \"roberta-base\"}";
        fx_write_file_atomic(P("%s/adapter_config.json", merged_dir), foreign, strlen(foreign));
        rc1 = rc1 ? rc1 : fedex(P("export_m2_%d", k), NULL, "export", "--run", run, "--out", merged_dir, "--merged", NULL);
        CHECK(rc1 == 0 && exists(P("%s/adapter_config.json", merged_dir)), "export %s --merged: exit %d, or it removed "
              "another base's adapter_config.json", aggs[k], rc1);
        unlink(P("%s/adapter_config.json", merged_dir));
        int rc2 = fedex(P("export_p_%d", k), NULL, "export", "--run", run, "--out", plain_dir, NULL);
        CHECK(rc1 == 0 && rc2 == 0, "export %s: exit status %d / %d", aggs[k], rc1, rc2);
        if (rc1 || rc2) continue;
        char lm[1100], lp[1100];
        snprintf(lm, sizeof lm, "%s/logits_merged.safetensors", run);
        snprintf(lp, sizeof lp, "%s/logits_plain.safetensors", run);
        rc1 = fedex(P("eval_m_%d", k), NULL, "eval", "--model", merged_dir, "--task", "RTE", "--data", glue,
                    "--max-length", "32", "--logits", lm, NULL);
        rc2 = fedex(P("eval_p_%d", k), NULL, "eval", "--model", plain_dir, "--adapter", plain_dir, "--task", "RTE",
                    "--data", glue, "--max-length", "32", "--logits", lp, NULL);
        CHECK(rc1 == 0 && rc2 == 0, "export %s: eval exit status %d / %d", aggs[k], rc1, rc2);
        if (rc1 || rc2) { show_err(P("eval_m_%d", k)); show_err(P("eval_p_%d", k)); continue; }
        double lo = eval_loss(P("eval_m_%d", k));
        CHECK(fabs(lo - dev_loss) <= TOL_LOSS, "export %s: merged model's dev loss %.6f, the run reported %.6f",
              aggs[k], lo, dev_loss);
        check_export_weights(aggs[k], methods_vera(aggs[k]), run, merged_dir, plain_dir);
        check_export_files(aggs[k], merged_dir);
        fx_st_file a, b;
        if (fx_st_open(lm, &a) != 0) { CHECK(0, "%s", fx_err()); continue; }
        if (fx_st_open(lp, &b) != 0) { CHECK(0, "%s", fx_err()); fx_st_close(&a); continue; }
        size_t na, nb;
        double *xa = tget(&a, "logits", &na), *xb = tget(&b, "logits", &nb);
        CHECK(xa && xb && na == nb && na > 0, "export %s: logits missing or of different sizes", aggs[k]);
        double worst = 0;
        for (size_t i = 0; xa && xb && i < na && na == nb; i++) worst = fmax(worst, fabs(xa[i] - xb[i]));
        CHECK(worst <= TOL_LOGITS, "export %s: merged and adapter logits differ by %.3g", aggs[k], worst);
        free(xa); free(xb);
        fx_st_close(&a); fx_st_close(&b);
    }
}

/* ---------------------------------------------------------------- 3. a client dies */

static void test_dead_client(void) {
    char out[1024], so[1024];
    snprintf(out, sizeof out, "%s/run_kill", tmp);
    snprintf(so, sizeof so, "%s/run_strict", tmp);
    int rc = train("kill", "kill:1:2", "--agg", "fedex", LORA_OPTS, "--num-clients", "3", "--rounds", "2", "--seed",
                   "42", "--out", out, "--save-clients", NULL);
    CHECK(rc == 0, "client 1 killed in round 2: exit status %d, want 0 (finish over the survivors)", rc);
    CHECK(err_has("kill", "client 1") && err_has("kill", "died"), "no 'client 1 ... died' on stderr");
    metrics m;
    if (metrics_load(out, &m) == 0 && m.n == 2) {
        const fx_json *cl = arr(&m.line[1], "clients"), *dead = arr(&m.line[1], "dead_clients");
        CHECK(line_ok(&m.line[0], 1, 3) && line_ok(&m.line[1], 2, 2), "the rounds' lines do not list 3, then 2 clients");
        CHECK(cl && cl->n == 2 && num(&cl->kids[0], "id") == 0 && num(&cl->kids[1], "id") == 2,
              "round 2 should list clients 0 and 2");
        CHECK(dead && dead->n == 1 && dead->kids[0].type == FX_JNUM && dead->kids[0].num == 1,
              "round 2's dead_clients should be [1]");
        double e = num(fx_json_get(&m.line[1], "agg_error"), "max");
        CHECK(e < TOL_EXACT, "round 2 over 2 survivors: agg_error %.3g, want < %.0e", e, TOL_EXACT);
    } else CHECK(0, "the run with a dead client has no 2-line metrics.jsonl");
    metrics_free(&m);

    /* --strict: stop, and leave round 1 as it was */
    rc = train("strict", "kill:1:2", "--agg", "fedex", LORA_OPTS, "--num-clients", "3", "--rounds", "2", "--seed", "42",
               "--out", so, "--save-clients", "--strict", NULL);
    CHECK(rc != 0 && rc < 128, "--strict with a dead client: exit status %d, want an error", rc);
    CHECK(err_has("strict", "client 1") && err_has("strict", "--strict"), "--strict: no clear message on stderr");
    CHECK(metrics_load(so, &m) == 0 && m.n == 1 && line_ok(&m.line[0], 1, 3), "--strict: metrics.jsonl is not round 1's line");
    metrics_free(&m);
    fx_st_file f;
    if (fx_st_open(P("%s/state.safetensors", so), &f) == 0) {
        const char *r = fx_st_meta(&f, "round");
        CHECK(r && !strcmp(r, "1"), "--strict: state.safetensors says round %s, want 1", r ? r : "(none)");
        fx_st_close(&f);
    } else CHECK(0, "--strict: state.safetensors does not load: %s", fx_err());
    /* round 1 is the same computation in both runs: the strict run's files are round 1's of the other */
    CHECK(same_bytes(P("%s/adapter_model.safetensors", so), P("%s/rounds/1/global/adapter_model.safetensors", out)) &&
          same_bytes(P("%s/residual.safetensors", so), P("%s/rounds/1/global/residual.safetensors", out)),
          "--strict: the adapter and residual left behind are not round 1's");
}

/* ---------------------------------------------------------------- 4, 5. resume and determinism */

static void test_repeat_and_resume(void) {
    char a[1024], b[1024], c[1024], s[1024];
    snprintf(a, sizeof a, "%s/run_fedex", tmp);
    snprintf(b, sizeof b, "%s/run_again", tmp);
    snprintf(c, sizeof c, "%s/run_seed", tmp);
    snprintf(s, sizeof s, "%s/run_straight", tmp);
    /* the same run twice */
    int rc = run_method(0, b, "again", "42", "2");
    CHECK(rc == 0, "repeated run: exit status %d", rc);
    char *ta = metrics_untimed(a), *tb = metrics_untimed(b);
    CHECK(ta && tb && !strcmp(ta, tb), "two identical runs wrote different metrics.jsonl (times aside)");
    CHECK(same_bytes(P("%s/adapter_model.safetensors", a), P("%s/adapter_model.safetensors", b)) &&
          same_bytes(P("%s/residual.safetensors", a), P("%s/residual.safetensors", b)),
          "two identical runs wrote different adapters or residuals");
    free(tb);
    /* another seed: another split, initialisation and shuffle */
    rc = run_method(0, c, "seed", "7", "1");
    CHECK(rc == 0, "run with --seed 7: exit status %d", rc);
    char *tc = metrics_untimed(c), *l1 = line_of(ta, 0), *l2 = line_of(tc, 0);
    CHECK(tc && strlen(l1) > 0 && strcmp(l1, l2), "--seed 7 gave the same round 1 as --seed 42");
    free(tc); free(l1); free(l2);
    free(ta);

    /* 3 rounds straight vs 2 (the run above) then --resume to 3 */
    rc = run_method(0, s, "straight", "42", "3");
    CHECK(rc == 0, "3-round run: exit status %d", rc);
    rc = fedex("resume", NULL, "train", "--resume", a, "--rounds", "3", "--threads", "2", NULL);
    CHECK(rc == 0, "--resume %s --rounds 3: exit status %d", a, rc);
    if (rc != 0) show_err("resume");
    ta = metrics_untimed(a);
    char *ts = metrics_untimed(s);
    CHECK(ta && ts && !strcmp(ta, ts), "resumed run's metrics.jsonl differs from the straight run's (times aside)");
    char *l3 = line_of(ta, 2);
    CHECK(strlen(l3) > 0, "the resumed run has no round 3 line");
    free(l3); free(ta); free(ts);
    const char *files[] = {"adapter_model.safetensors", "residual.safetensors", "state.safetensors", FX_SETTINGS_FILE};
    for (int k = 0; k < 4; k++)
        CHECK(same_bytes(P("%s/%s", a, files[k]), P("%s/%s", s, files[k])), "resumed and straight runs' %s differ", files[k]);
}

/* ---------------------------------------------------------------- 6. Ctrl-C */

/* Starts ARGS, waits for its first metrics line, sleeps AFTER_CLIENTS x that round's seconds_clients +
 * AFTER_EVAL x its seconds_eval, sends SIGINT to the run's group as a terminal's Ctrl-C would, and
 * returns the exit status; *LEFT is set when a process of the group outlived the server. */
static int interrupt_run(const char *tag, const char *out, double after_clients, double after_eval,
                         const char *const *args, int *left) {
    pid_t p = spawn(tag, NULL, args);
    if (p < 0) return -1;
    double t0 = fx_now(), cl = 0, ev = 0;
    int st = 0, got = 0, done = 0;
    while (fx_now() - t0 < WAIT_LINE_S) {
        metrics m;
        if (metrics_load(out, &m) == 0 && m.n >= 1) {
            cl = num(&m.line[0], "seconds_clients");
            ev = num(&m.line[0], "seconds_eval");
            got = 1;
        }
        metrics_free(&m);
        if (got) break;
        if (waitpid(p, &st, WNOHANG) == p) { done = 1; break; }
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    CHECK(got, "%s: no metrics line within %.0f s", tag, WAIT_LINE_S);
    if (!done) {
        /* the segment is unlinked as soon as it is mapped: nothing in /dev/shm even while the run is alive */
        CHECK(shm_entries(p) == 0, "%s: the running server's shared memory has a name in /dev/shm", tag);
        double delay = after_clients * cl + after_eval * ev;
        if (delay > 0) {
            struct timespec ts = {(time_t)delay, (long)((delay - floor(delay)) * 1e9)};
            nanosleep(&ts, NULL);
        }
        kill(-p, SIGINT);
    }
    int rc = done ? (WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st)) : finish(tag, p);
    *left = !(kill(-p, 0) != 0 && errno == ESRCH);
    if (*left) kill(-p, SIGKILL);
    return rc;
}

static void check_interrupted(const char *tag, const char *log, const char *out, int rc, int left) {
    CHECK(rc == 130, "%s: Ctrl-C gave exit status %d, want 130", tag, rc);
    if (rc != 130) show_err(log);
    CHECK(!left, "%s: processes of the run outlived it", tag);
    fx_st_file f;
    if (fx_st_open(P("%s/state.safetensors", out), &f) == 0) {
        const char *r = fx_st_meta(&f, "round");
        CHECK(r && atoi(r) >= 1, "%s: state.safetensors says round %s, want >= 1", tag, r ? r : "(none)");
        fx_st_close(&f);
    } else CHECK(0, "%s: state.safetensors does not load after Ctrl-C: %s", tag, fx_err());
}

static void test_interrupt(void) {
    int left;
    /* at once after round 1's line: the clients are training round 2 */
    char out[1024], out2[1024];
    snprintf(out, sizeof out, "%s/run_int", tmp);
    snprintf(out2, sizeof out2, "%s/run_int_eval", tmp);
    const char *args[] = {"train", "--model", model, "--task", "RTE", "--data", glue, "--max-seq-length", "32",
                          "--batch-size", "32", "--local-epochs", "1", "--threads", "2", "--lr", "5e-3",
                          "--rounds", "20", "--out", out, NULL};
    int rc = interrupt_run("int", out, 0, 0, args, &left);
    check_interrupted("Ctrl-C while clients train", "int", out, rc, left);

    /* while the server aggregates and evaluates: one training step per client, then 2216 dev rows one at a
     * time; Ctrl-C lands halfway through round 2's evaluation (round 1's timings say when) */
    const char *args2[] = {"train", "--model", model, "--task", "RTE", "--data", glue_wide, "--max-seq-length", "32",
                           "--batch-size", "32", "--local-epochs", "1", "--threads", "2", "--eval-batch", "1",
                           "--rounds", "20", "--out", out2, NULL};
    rc = interrupt_run("int_eval", out2, 1.0, 0.5, args2, &left);
    check_interrupted("Ctrl-C while the server evaluates", "int_eval", out2, rc, left);
}

/* ---------------------------------------------------------------- 7. /dev/shm, and what the runs said */

/* /dev/shm/fedex-PID-* entries of PID (0: of any server started here). */
static int shm_entries(pid_t pid) {
    DIR *d = opendir("/dev/shm");
    if (!d) return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        int p;
        if (sscanf(e->d_name, "fedex-%d-", &p) != 1) continue;
        for (int i = 0; i < nservers; i++)
            if ((pid ? pid : servers[i]) == p) { n++; fprintf(stderr, "in /dev/shm: %s\n", e->d_name); break; }
    }
    closedir(d);
    return n;
}

static void test_leftovers(void) {
    if (access("/dev/shm", F_OK) != 0) printf("skipped: /dev/shm check (no /dev/shm)\n");
    else CHECK(shm_entries(0) == 0, "/dev/shm/fedex-* segments of these runs were left behind");
    /* a sanitizer's report in a client does not change the server's exit status (the client just dies),
     * so every run's stderr is read: no report anywhere, and no death but the injected ones */
    DIR *d = opendir(tmp);
    if (!d) { CHECK(0, "cannot list %s", tmp); return; }
    int bad = 0, seen = 0;
    for (struct dirent *e; (e = readdir(d));) {
        size_t n = strlen(e->d_name);
        if (n < 5 || strcmp(e->d_name + n - 4, ".err")) continue;
        seen++;
        char *t = slurp(P("%s/%s", tmp, e->d_name));
        int injected = !strcmp(e->d_name, "kill.err") || !strcmp(e->d_name, "strict.err");
        if (t && (strstr(t, "Sanitizer") || strstr(t, "runtime error") || (!injected && strstr(t, "died")))) {
            bad++;
            fprintf(stderr, "---- %s:\n%.2000s\n----\n", e->d_name, t);
        }
        free(t);
    }
    closedir(d);
    CHECK(seen > 20 && bad == 0, "%d of %d runs reported a sanitizer error or an unexpected client death", bad, seen);
}

/* ---------------------------------------------------------------- 8. the argument parser */

/* Every option of `fedex train`, with the reference code's spellings where it has one: the interface
 * `fedex help train` must document. */
static const char *const options[] = {
    "--model", "--task", "--data", "--agg", "--num-clients", "--rounds", "--local-epochs", "--lr",
    "--weight-decay", "--batch-size", "--micro-batch", "--eval-batch", "--max-seq-length", "--lora-r",
    "--lora-alpha", "--lora-dropout", "--rslora", "--vera-r", "--d-initial", "--warmup-ratio", "--seed",
    "--split", "--weighted", "--targets", "--residual", "--out", "--resume", "--threads", "--strict",
    "--save-clients", "--device", "--precision", "--client-gpus", "--server-gpu",
    "--agg_type", "--num_clients", "--local_epochs", "--batch_size", "--max_seq_length", "--lora_r",
    "--lora_alpha", "--lora_dropout", "--warmup_ratio", "--output_dir",
};

static void test_parser(void) {
    /* each refused with status 2 and a message naming what is wrong; a model, task and data are given
     * unless the case is about them */
    static const struct { int bare; const char *a[8]; const char *names; } bad[] = {
        {0, {"--bogus", "1"}, "--bogus"},
        {0, {"--rounds"}, "--rounds"},
        {0, {"--rounds", "0"}, "--rounds"},
        {0, {"--lr", "-1"}, "--lr"},
        {0, {"--agg", "bogus"}, "bogus"},
        {0, {"--split", "dirichlet:-1"}, "dirichlet"},
        {0, {"--split", "foo"}, "foo"},
        {0, {"--agg", "fedex-vera", "--lora-r", "8"}, "--lora-r"},
        {0, {"--agg", "fedex", "--vera-r", "8"}, "--vera-r"},
        {0, {"--agg", "centralized", "--num-clients", "3"}, "--num-clients"},
        {0, {"--targets", "query,bogus"}, "bogus"},
        {0, {"--residual", "sparse"}, "--residual"},
        {0, {"--rounds", "2", "--rounds", "3"}, "twice"},
        {0, {"--rounds", "2x"}, "--rounds"},
        {0, {"--seed", "-3"}, "--seed"},
        {1, {"--model", "@model"}, "--task"},
        {1, {"--task", "RTE"}, "--model"},
        {0, {"--overwrite"}, "--out"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        const char *args[24];
        int n = 0;
        args[n++] = "train";
        if (!bad[k].bare) {
            const char *base[] = {"--model", model, "--task", "RTE", "--data", glue};
            for (int i = 0; i < 6; i++) args[n++] = base[i];
        }
        for (int i = 0; i < 8 && bad[k].a[i]; i++) args[n++] = strcmp(bad[k].a[i], "@model") ? bad[k].a[i] : model;
        args[n] = NULL;
        char tag[32];
        snprintf(tag, sizeof tag, "bad%zu", k);
        int rc = run_argv(tag, NULL, args);
        char *e = slurp(P("%s/%s.err", tmp, tag));
        int lines = 0;
        for (const char *c = e; c && *c; c++) lines += *c == '\n';
        CHECK(rc == 2 && e && strstr(e, bad[k].names) && lines == 1,
              "train %s %s %s %s: exit status %d, stderr '%s' (want status 2 and one line naming '%s')",
              bad[k].a[0], bad[k].a[1] ? bad[k].a[1] : "", bad[k].a[2] ? bad[k].a[2] : "",
              bad[k].a[3] ? bad[k].a[3] : "", rc, e ? e : "", bad[k].names);
        free(e);
    }

    /* --resume takes the run's own settings */
    char run[1024], ref[1024];
    snprintf(run, sizeof run, "%s/run_fedex", tmp);
    snprintf(ref, sizeof ref, "%s/run_ref", tmp);
    int rc = fedex("bad_resume", NULL, "train", "--resume", run, "--lr", "1e-2", NULL);
    CHECK(rc == 2 && err_has("bad_resume", "--lr"), "--resume with another --lr: exit status %d, want 2 naming --lr", rc);

    /* the reference code's spellings */
    rc = fedex("ref", NULL, "train", "--model", model, "--task", "RTE", "--data", glue, "--agg_type", "ours", "--lora_r",
               "4", "--num_clients", "2", "--local_epochs", "1", "--batch_size", "32", "--max_seq_length", "64",
               "--warmup_ratio", "0.06", "--rounds", "1", "--output_dir", ref, "--threads", "2", NULL);
    CHECK(rc == 0, "the reference code's spellings: exit status %d", rc);
    if (rc != 0) show_err("ref");
    metrics m;
    if (metrics_load(ref, &m) == 0 && m.n == 1) {
        const fx_json *agg = fx_json_get(&m.line[0], "agg");
        CHECK(line_ok(&m.line[0], 1, 2) && agg && agg->type == FX_JSTR && !strcmp(agg->str, "fedex"),
              "--agg_type ours --num_clients 2 did not run fedex with 2 clients");
    } else CHECK(0, "the reference spellings' run has no 1-line metrics.jsonl in --output_dir");
    metrics_free(&m);

    /* help */
    rc = fedex("help", NULL, "help", "train", NULL);
    char *h = slurp(P("%s/help.out", tmp));
    CHECK(rc == 0 && h, "fedex help train: exit status %d", rc);
    for (size_t k = 0; h && k < sizeof options / sizeof options[0]; k++) {
        /* the option itself, followed by a space or a bracket, not a longer option's prefix */
        int found = 0;
        for (const char *p = h; (p = strstr(p, options[k])) && !found; p++) {
            char after = p[strlen(options[k])];
            found = after == ' ' || after == ')' || after == '\n';
        }
        CHECK(found, "fedex help train does not document %s", options[k]);
    }
    free(h);
}

/* ---------------------------------------------------------------- a model folder with a classifier */

/* `fedex init` writes a classifier head; training from that folder must work (the head is loaded). */
static void test_model_with_head(void) {
    char out[1024];
    snprintf(out, sizeof out, "%s/run_head", tmp);
    int rc = fedex("head", NULL, "train", "--model", model_head, "--task", "RTE", "--data", glue, "--max-seq-length",
                   "32", "--batch-size", "32", "--local-epochs", "1", "--rounds", "1", "--threads", "2", "--out", out, NULL);
    CHECK(rc == 0 && exists(P("%s/metrics.jsonl", out)),
          "train --model %s (fedex init's folder, which has a classifier head): exit status %d", model_head, rc);
    if (rc != 0) show_err("head");
}

/* ---------------------------------------------------------------- the frozen weights, bit for bit */

/* Every run here sets FEDEX_CHECK_FROZEN=1: each client also accumulates the residual from the server's
 * messages, as a GPU client does, and fails the round unless the frozen weights it forms equal the
 * shared ones bit for bit. That check must notice a difference of one ulp in one weight. */
static void test_frozen_check(void) {
    char out[1024];
    snprintf(out, sizeof out, "%s/run_drift", tmp);
    int rc = train("drift", "drift:1", "--agg", "fedex", "--rounds", "2", "--out", out, NULL);
    CHECK(rc == 1 && err_has("drift", "differs from the server's"),
          "a client whose residual is off by one ulp: exit status %d, want 1 with the frozen weights' mismatch named", rc);
    rc = train("drift_dense", NULL, "--agg", "fedex", "--rounds", "3", "--residual", "dense", NULL);
    CHECK(rc == 0, "the clients' check of the frozen weights passes on a dense-residual run: exit status %d", rc);
    if (rc != 0) show_err("drift_dense");
}

/* ---------------------------------------------------------------- main */

int main(void) {
    if (run_harness_start("train") != 0) {
        if (!fedex_bin || !*fedex_bin)
            printf("skipped: fedex train end to end (FEDEX, the path of the fedex binary, is not set: run `make test`)\n");
        return check_done();
    }
    setenv("FEDEX_CHECK_FROZEN", "1", 1); /* every client checks its frozen weights against the server's */
    double t0 = fx_now();
    test_demo(); /* the embedded model and task: needs nothing from ../shared */
    const char *shared = shared_dir("fedex train end to end needs roberta-base's tokenizer and GLUE RTE");
    if (!shared) {
        nftw(tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        return check_done();
    }
    if (setup(shared) != 0) CHECK(0, "setting up the model and data in %s failed: %s", tmp, fx_err());
    else {
        test_methods();
        test_exactness();
        test_export();
        test_dead_client();
        test_repeat_and_resume();
        test_interrupt();
        test_parser();
        test_model_with_head();
        test_frozen_check();
        test_leftovers();
    }
    printf("fedex train end to end: %.1f s\n", fx_now() - t0);
    run_harness_end();
    return check_done();
}
