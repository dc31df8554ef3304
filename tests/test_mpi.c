/* tests/test_mpi.c: many clients and partial participation (--clients-per-round, on the shm transport and
 * under MPI), and the MPI transport end to end through `mpirun ... fedex train --transport mpi`: the same
 * metrics and the same adapter and residual bytes as the shm run with the seed, for fedex, fedit, ffa and
 * fedex-vera; 16 clients on 3 ranks with 5 a round, exact over the participants; the frozen-state hash;
 * a dead rank and Ctrl-C under mpirun, then --resume. Exactness over the participants is recomputed here
 * from the saved files in double. Without mpirun, or with a fedex built without MPI, the MPI part skips
 * with a visible line. Not the aggregation math itself (test_agg) nor the shm transport's faults
 * (test_faults). */
#include "fedex.h"
#include "check.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---------------------------------------------------------------- tolerances */
/* || global model - mean of the participants' models || / || the round's update ||, recomputed from the
 * saved fp32 files: measured 1e-9 to 4e-8 here (test_train has the same bound for all clients). */
#define TOL_EXACT 1e-5
/* The global adapter is the double mean of the participants' fp32 tensors, rounded once: half an ulp,
 * twice for a margin. */
#define TOL_MEAN 0x1p-23
/* Bounded waits: a run here takes 1 to 5 s (mpirun's start costs about half a second). */
#define WAIT_LINE_S 120.0
#define WAIT_RUN_S 180.0

#include "run_harness.h"

/* ---------------------------------------------------------------- exactness over the participants */

/* Tensor NAME of F as doubles, or NULL (and a failed check). */
static double *need(const fx_st_file *f, const char *name, size_t want, const char *what) {
    size_t n;
    double *v = tget(f, name, &n);
    CHECK(v && n == want, "%s: tensor %s missing or of %zu values, want %zu", what, name, n, want);
    if (v && n != want) { free(v); v = NULL; }
    return v;
}

/* dW = s B A (out, in) from a saved adapter's layer PRE ("base_model.model.roberta.encoder.layer.0..."). */
static int lora_dw(const fx_st_file *f, const char *pre, int out, int in, int r, double s, double *dW, const char *what) {
    double *A = need(f, P("%s.lora_A.weight", pre), (size_t)r * in, what);
    double *B = need(f, P("%s.lora_B.weight", pre), (size_t)out * r, what);
    if (!A || !B) { free(A); free(B); return -1; }
    for (int o = 0; o < out; o++)
        for (int i = 0; i < in; i++) {
            double x = 0;
            for (int j = 0; j < r; j++) x += B[(size_t)o * r + j] * A[(size_t)j * in + i];
            dW[(size_t)o * in + i] = s * x;
        }
    free(A); free(B);
    return 0;
}

/* Round R of the LoRA run RUN (--save-clients, hidden H, rank 4, alpha 8): the global adapter is the mean
 * of the participants' and W_global - mean_i W_i = (R_R - R_{R-1}) + dW(global) - mean_i dW_i is at float
 * rounding relative to the round's update, over the participants PART (NP of them) alone. */
static double check_participants_exact(const char *run, int R, const int *part, int np, int H, int exact) {
    enum { r = 4 };
    const double s = 8.0 / r;
    char what[1100];
    snprintf(what, sizeof what, "%s round %d", run, R);
    fx_st_file cl[32], g, pg, res, pres;
    int ok = np <= 32;
    for (int i = 0; i < np && ok; i++)
        ok &= fx_st_open(P("%s/rounds/%d/client_%d/adapter_model.safetensors", run, R, part[i]), &cl[i]) == 0;
    ok = ok && fx_st_open(P("%s/rounds/%d/global/adapter_model.safetensors", run, R), &g) == 0;
    ok = ok && fx_st_open(P("%s/rounds/%d/global/residual.safetensors", run, R), &res) == 0;
    int have_prev = R > 1;
    if (ok && have_prev)
        ok = fx_st_open(P("%s/rounds/%d/global/adapter_model.safetensors", run, R - 1), &pg) == 0 &&
             fx_st_open(P("%s/rounds/%d/global/residual.safetensors", run, R - 1), &pres) == 0;
    CHECK(ok, "%s: the participants', the global and the residual files do not all load", what);
    if (!ok) return NAN;
    double most = 0;
    /* the global tensors: the plain mean of the participants' */
    double worst = 0;
    for (int t = 0; t < g.n; t++) {
        size_t n = fx_st_numel(&g.t[t]);
        double *gv = need(&g, g.t[t].name, n, what), *cv[32];
        for (int i = 0; i < np; i++) cv[i] = need(&cl[i], g.t[t].name, n, what);
        for (size_t j = 0; gv && j < n; j++) {
            double mean = 0;
            int all = 1;
            for (int i = 0; i < np; i++) { all &= cv[i] != NULL; if (cv[i]) mean += cv[i][j] / np; }
            if (!all) break;
            double ex = fabs(gv[j] - mean) - TOL_MEAN * fabs(mean);
            if (ex > worst) worst = ex;
        }
        for (int i = 0; i < np; i++) free(cv[i]);
        free(gv);
    }
    CHECK(worst <= 0, "%s: a global value is not the participants' mean (excess %.3g)", what, worst);
    /* the models, layer by layer (query and value of both layers) */
    const char *mods[] = {"attention.self.query", "attention.self.value"};
    size_t len = (size_t)H * H;
    double *dW = fx_malloc(sizeof(double) * len), *mean = fx_malloc(sizeof(double) * len);
    double *dWg = fx_malloc(sizeof(double) * len), *dWp = fx_malloc(sizeof(double) * len);
    for (int L = 0; L < 2; L++)
        for (int k = 0; k < 2; k++) {
            const char *pre = P("base_model.model.roberta.encoder.layer.%d.%s", L, mods[k]);
            const char *rname = P("roberta.encoder.layer.%d.%s.weight", L, mods[k]);
            memset(mean, 0, sizeof(double) * len);
            int bad = 0;
            for (int i = 0; i < np; i++) {
                bad |= lora_dw(&cl[i], pre, H, H, r, s, dW, what);
                for (size_t j = 0; j < len; j++) mean[j] += dW[j] / np;
            }
            bad |= lora_dw(&g, pre, H, H, r, s, dWg, what);
            if (have_prev) bad |= lora_dw(&pg, pre, H, H, r, s, dWp, what);
            else memset(dWp, 0, sizeof(double) * len); /* B starts at zero */
            double *Rn = need(&res, rname, len, what), *Ro = have_prev ? need(&pres, rname, len, what) : NULL;
            if (bad || !Rn || (have_prev && !Ro)) { free(Rn); free(Ro); continue; }
            double e2 = 0, u2 = 0;
            for (size_t j = 0; j < len; j++) {
                double d = Rn[j] - (Ro ? Ro[j] : 0);
                double e = d + dWg[j] - mean[j], u = mean[j] - dWp[j];
                e2 += e * e;
                u2 += u * u;
            }
            double err = sqrt(e2 / u2);
            if (exact)
                CHECK(err < TOL_EXACT, "%s %s: ||W_global - mean of the %d participants|| / ||update|| = %.3g", what,
                      rname, np, err);
            if (!(err <= most)) most = err;
            free(Rn); free(Ro);
        }
    free(dW); free(mean); free(dWg); free(dWp);
    for (int i = 0; i < np; i++) fx_st_close(&cl[i]);
    fx_st_close(&g); fx_st_close(&res);
    if (have_prev) { fx_st_close(&pg); fx_st_close(&pres); }
    return most;
}

/* Every round of RUN drew M distinct participants of N (the "participants" field equals the clients that
 * reported), the sets are not all the same, and each round is exact over its participants. */
static void check_partial_run(const char *run, int rounds, int n, int m, int exact) {
    metrics mt;
    if (metrics_load(run, &mt) != 0 || mt.n != rounds) {
        CHECK(0, "%s: metrics.jsonl is not %d JSON lines", run, rounds);
        metrics_free(&mt);
        return;
    }
    int sets[16][32], differ = 0;
    double most = 0;
    for (int R = 1; R <= rounds; R++) {
        const fx_json *l = &mt.line[R - 1], *p = arr(l, "participants"), *c = arr(l, "clients");
        CHECK(line_ok(l, R, m), "%s round %d: the line lacks a field or has a bad value", run, R);
        int ok = p && c && (int)p->n == m && (int)c->n == m;
        unsigned long long seen = 0;
        for (int i = 0; ok && i < m; i++) {
            int id = (int)p->kids[i].num;
            ok = p->kids[i].type == FX_JNUM && id >= 0 && id < n && !(seen >> id & 1) &&
                 num(&c->kids[i], "id") == id;
            seen |= 1ULL << id;
            sets[R - 1][i] = id;
        }
        CHECK(ok, "%s round %d: participants is not %d distinct clients of %d that all reported", run, R, m, n);
        if (!ok) break;
        if (R > 1) differ |= memcmp(sets[R - 1], sets[0], sizeof(int) * (size_t)m) != 0;
        double e = num(fx_json_get(l, "agg_error"), "max");
        if (exact) CHECK(e < TOL_EXACT, "%s round %d: agg_error %.3g over the participants", run, R, e);
        double e2 = check_participants_exact(run, R, sets[R - 1], m, 16, exact);
        if (!(e2 <= most)) most = e2;
    }
    CHECK(differ, "%s: every round drew the same participants", run);
    /* FedIT's deviation must show over its participants too (round 1 starts from B = 0: little there) */
    if (!exact) CHECK(most > 100 * TOL_EXACT, "%s: fedit's deviation %.3g does not show in any round", run, most);
    metrics_free(&mt);
}

/* ---------------------------------------------------------------- the shm transport */

static void test_partial_shm(void) {
    char run[1024], fit[1024];
    snprintf(run, sizeof run, "%s/partial_shm", tmp);
    int rc = train("partial_shm", NULL, "--agg", "fedex", "--lr", "5e-3", "--num-clients", "6", "--clients-per-round",
                   "2", "--rounds", "3", "--seed", "7", "--out", run, "--save-clients", NULL);
    CHECK(rc == 0, "6 clients, 2 a round, on shm: exit status %d", rc);
    if (rc != 0) { show_err("partial_shm"); return; }
    check_partial_run(run, 3, 6, 2, 1);
    snprintf(fit, sizeof fit, "%s/partial_fedit", tmp);
    rc = train("partial_fedit", NULL, "--agg", "fedit", "--lr", "5e-3", "--num-clients", "6", "--clients-per-round",
               "3", "--rounds", "2", "--seed", "7", "--out", fit, "--save-clients", NULL);
    CHECK(rc == 0, "fedit, 6 clients, 3 a round: exit status %d", rc);
    if (rc == 0) check_partial_run(fit, 2, 6, 3, 0);
    rc = train("partial_bad", NULL, "--num-clients", "3", "--clients-per-round", "4", NULL);
    CHECK(rc == 2 && err_has("partial_bad", "--clients-per-round"), "--clients-per-round 4 of 3: exit %d, want 2 naming it", rc);
}

/* ---------------------------------------------------------------- main */

int main(void) {
    if (run_harness_start("mpi") != 0) {
        if (!fedex_bin || !*fedex_bin)
            printf("skipped: many clients and MPI end to end (FEDEX, the path of the fedex binary, is not set: run `make test`)\n");
        return check_done();
    }
    setenv("FEDEX_CHECK_FROZEN", "1", 1);
    double t0 = fx_now();
    const char *shared = shared_dir("many clients and MPI end to end need roberta-base's tokenizer and GLUE RTE");
    if (shared) {
        if (setup(shared) != 0) CHECK(0, "setting up the model and data in %s failed: %s", tmp, fx_err());
        else {
            test_partial_shm();
        }
    }
    printf("many clients and MPI end to end: %.1f s\n", fx_now() - t0);
    run_harness_end();
    return check_done();
}
