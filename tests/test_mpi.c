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
#include <stdarg.h>
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

/* ---------------------------------------------------------------- the MPI transport */

static char mpirun[1024];
/* Under the sanitizers an MPI run takes ten times as long (OpenMPI's start above all): there the fedex and
 * fedex-vera comparisons, the 16 clients and the fingerprint run, which cover every path of mpi.c that
 * ends in MPI_Finalize (where leaks are checked); the dead rank and Ctrl-C end in an abort, checked by the
 * release build's `make test`. */
#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#else
#define SANITIZED 0
#endif

/* mpirun from PATH, or 0. */
static int find_mpirun(void) {
    const char *path = getenv("PATH");
    for (const char *p = path; p && *p;) {
        const char *e = strchr(p, ':');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        snprintf(mpirun, sizeof mpirun, "%.*s/mpirun", (int)n, p);
        if (n && access(mpirun, X_OK) == 0) return 1;
        p = e ? e + 1 : p + n;
    }
    return 0;
}

/* `mpirun --oversubscribe --bind-to none -np NP fedex train` with the options every run here shares and
 * --transport mpi, then the variable ones; FAULT (or none) travels to every rank. Returns the pid. */
static pid_t mpi_spawn(const char *tag, const char *fault, int np, va_list ap) {
    static char nps[16];
    snprintf(nps, sizeof nps, "%d", np);
    const char *args[96] = {"--oversubscribe", "--bind-to", "none", "-np", nps, "-x", "FEDEX_CHECK_FROZEN", "-x",
                            "LSAN_OPTIONS"};
    int n = 9;
    if (fault) { args[n++] = "-x"; args[n++] = "FEDEX_FAULT"; }
    const char *pre[] = {fedex_bin, "train", "--transport", "mpi", "--model", model, "--task", "RTE", "--data", glue,
                         "--max-seq-length", "32", "--batch-size", "32", "--local-epochs", "1", "--threads", "2", NULL};
    for (int i = 0; pre[i]; i++) args[n++] = pre[i];
    for (const char *a; (a = va_arg(ap, const char *)) != NULL && n < 95;) args[n++] = a;
    args[n] = NULL;
    return spawn_prog(mpirun, tag, fault, args);
}

static int mpi_train(const char *tag, const char *fault, int np, ...) {
    va_list ap;
    va_start(ap, np);
    pid_t p = mpi_spawn(tag, fault, np, ap);
    va_end(ap);
    return p < 0 ? -1 : finish(tag, p);
}

/* metrics.jsonl with the time, memory and byte fields blanked: what two transports must agree on. */
static char *metrics_nobytes(const char *dir) {
    char *t = metrics_untimed(dir);
    if (!t) return NULL;
    char *o = t;
    for (const char *s = t; *s;) {
        if (!strncmp(s, "\"bytes_", 7)) {
            const char *colon = strchr(s, ':');
            if (!colon) break;
            memmove(o, s, (size_t)(colon + 1 - s));
            o += colon + 1 - s;
            s = colon + 1;
            while (*s && *s != ',' && *s != '}') s++;
            *o++ = '_';
        } else *o++ = *s++;
    }
    *o = 0;
    return t;
}

/* Two runs' metrics (time, memory, bytes aside), adapter and residual files are the same. */
static void check_same_run(const char *what, const char *a, const char *b) {
    char *ma = metrics_nobytes(a), *mb = metrics_nobytes(b);
    CHECK(ma && mb && !strcmp(ma, mb), "%s: metrics.jsonl differ (time, memory and byte fields aside)", what);
    if (ma && mb && strcmp(ma, mb)) fprintf(stderr, "  shm: %.600s\n  mpi: %.600s\n", ma, mb);
    free(ma); free(mb);
    CHECK(same_bytes(P("%s/adapter_model.safetensors", a), P("%s/adapter_model.safetensors", b)),
          "%s: adapter_model.safetensors differ", what);
    CHECK(same_bytes(P("%s/residual.safetensors", a), P("%s/residual.safetensors", b)), "%s: residual.safetensors differ",
          what);
}

/* mpirun -np 4 (a server and three client ranks) against forked clients, with the seed: the same run. */
static const struct { const char *tag, *agg, *residual; int vera; } same_runs[] = {
    {"fedex", "fedex", "auto", 0}, {"fedex_factored", "fedex", "factored", 0}, {"fedit", "fedit", "auto", 0},
    {"ffa", "ffa", "auto", 0}, {"fedex-vera", "fedex-vera", "auto", 1},
};

static void test_mpi_same(void) {
    for (size_t k = 0; k < sizeof same_runs / sizeof same_runs[0]; k++) {
        if (SANITIZED && strcmp(same_runs[k].tag, "fedex") && strcmp(same_runs[k].tag, "fedex-vera")) continue;
        char a[1024], b[1024];
        snprintf(a, sizeof a, "%s/shm_%s", tmp, same_runs[k].tag);
        snprintf(b, sizeof b, "%s/mpi_%s", tmp, same_runs[k].tag);
        const char *r = same_runs[k].vera ? "--vera-r" : "--lora-r", *rv = same_runs[k].vera ? "8" : "4";
        int rc = train(P("shm_%s", same_runs[k].tag), NULL, "--agg", same_runs[k].agg, "--residual", same_runs[k].residual,
                       r, rv, "--lr", "5e-3", "--rounds", "3", "--seed", "5", "--out", a, NULL);
        int rm = mpi_train(P("mpi_%s", same_runs[k].tag), NULL, 4, "--agg", same_runs[k].agg, "--residual",
                           same_runs[k].residual, r, rv, "--lr", "5e-3", "--rounds", "3", "--seed", "5", "--out", b, NULL);
        CHECK(rc == 0 && rm == 0, "%s: shm exit status %d, mpirun -np 4 exit status %d", same_runs[k].tag, rc, rm);
        if (rc != 0) show_err(P("shm_%s", same_runs[k].tag));
        if (rm != 0) { show_err(P("mpi_%s", same_runs[k].tag)); continue; }
        check_same_run(same_runs[k].tag, a, b);
        metrics m;
        if (metrics_load(b, &m) == 0)
            for (int i = 0; i < m.n; i++) CHECK(line_ok(&m.line[i], i + 1, 3), "mpi %s round %d: a bad line", same_runs[k].tag, i + 1);
        metrics_free(&m);
    }
}

/* 16 clients on 3 ranks (a server and two client ranks, eight clients each in turn), 5 a round: exact over
 * the participants, and the same run as 16 forked clients. One step a round (15 rows each): no warmup. */
static void test_mpi_many(void) {
    char a[1024], b[1024];
    snprintf(a, sizeof a, "%s/many_shm", tmp);
    snprintf(b, sizeof b, "%s/many_mpi", tmp);
    int rm = mpi_train("many_mpi", NULL, 3, "--agg", "fedex", "--num-clients", "16", "--clients-per-round", "5",
                       "--warmup-ratio", "0", "--lr", "5e-3", "--rounds", "3", "--seed", "9", "--out", b, "--save-clients",
                       NULL);
    CHECK(rm == 0, "16 clients on 3 ranks, 5 a round: exit status %d", rm);
    if (rm != 0) { show_err("many_mpi"); return; }
    check_partial_run(b, 3, 16, 5, 1);
    int rc = train("many_shm", NULL, "--agg", "fedex", "--num-clients", "16", "--clients-per-round", "5",
                   "--warmup-ratio", "0", "--lr", "5e-3", "--rounds", "3", "--seed", "9", "--out", a, NULL);
    CHECK(rc == 0, "16 forked clients, 5 a round: exit status %d", rc);
    if (rc == 0) check_same_run("16 clients, 5 a round", a, b);
}

/* A rank whose W0 differs by one ulp in one weight: the server refuses before the first round. */
static void test_mpi_frozen(void) {
    int rc = mpi_train("frozen", "frozen:2", 3, "--rounds", "2", NULL);
    CHECK(rc != 0 && err_has("frozen", "rank 2") && err_has("frozen", "holds other frozen weights"),
          "a rank with another W0: exit status %d, want non-zero with the fingerprints' mismatch named", rc);
    if (rc == 0 || !err_has("frozen", "holds other frozen weights")) show_err("frozen");
}

/* A rank that dies in round 2 (client 1 kills itself) ends the job; round 1's checkpoint is intact, and
 * --resume continues it under MPI (with client ranks that cannot see the run folder) and on shm to the
 * uninterrupted run's result. */
static void test_mpi_dead(void) {
    char run[1024], run2[1024];
    snprintf(run, sizeof run, "%s/dead", tmp);
    snprintf(run2, sizeof run2, "%s/dead_shm", tmp);
    int rc = mpi_train("dead", "kill:1:2", 4, "--agg", "fedex", "--lr", "5e-3", "--rounds", "3", "--seed", "5", "--out",
                       run, NULL);
    metrics m;
    int lines = metrics_load(run, &m) == 0 ? m.n : -1;
    metrics_free(&m);
    CHECK(rc != 0 && lines == 1, "a rank dying in round 2: exit status %d and %d metrics lines, want non-zero and 1", rc,
          lines);
    fx_st_file f;
    int ok = fx_st_open(P("%s/state.safetensors", run), &f) == 0;
    CHECK(ok && fx_st_meta(&f, "round") && !strcmp(fx_st_meta(&f, "round"), "1"),
          "after the dead rank, state.safetensors is round 1's and loads");
    if (ok) fx_st_close(&f);
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "cp -r '%s' '%s'", run, run2);
    CHECK(system(cmd) == 0, "copy of the stopped run");
    /* the client ranks run where the run folder is not (the relative path "dead" names it only in TMP): they
     * take the run's settings from the server, as on hosts without the folder */
    const char *res[] = {"--oversubscribe", "--bind-to", "none", "-x", "FEDEX_CHECK_FROZEN", "-x", "LSAN_OPTIONS",
                         "-np", "1", "-wdir", tmp, fedex_bin, "train", "--transport", "mpi", "--resume", "dead",
                         "--rounds", "3", "--threads", "2", ":",
                         "-np", "3", "-wdir", "/", fedex_bin, "train", "--transport", "mpi", "--resume", "dead",
                         "--rounds", "3", "--threads", "2", NULL};
    pid_t p = spawn_prog(mpirun, "dead_resume", NULL, res);
    rc = p < 0 ? -1 : finish("dead_resume", p);
    int rs = fedex("dead_resume_shm", NULL, "train", "--resume", run2, "--rounds", "3", "--threads", "2", NULL);
    CHECK(rc == 0 && rs == 0, "--resume after the dead rank: exit status %d under MPI, %d on shm", rc, rs);
    if (rc != 0) show_err("dead_resume");
    if (rs != 0) show_err("dead_resume_shm");
    check_same_run("resumed under MPI vs the uninterrupted shm run", P("%s/shm_fedex", tmp), run);
    check_same_run("resumed on shm vs the uninterrupted shm run", P("%s/shm_fedex", tmp), run2);
}

/* Ctrl-C to mpirun during a run stops every rank; the last complete round is saved and resumes. */
static void test_mpi_interrupt(void) {
    char run[1024];
    snprintf(run, sizeof run, "%s/int", tmp);
    const char *args[] = {"--oversubscribe", "--bind-to", "none", "-np", "3", "-x", "FEDEX_CHECK_FROZEN", "-x", "LSAN_OPTIONS", fedex_bin,
                          "train", "--transport", "mpi", "--model", model, "--task", "RTE", "--data", glue_wide,
                          "--max-seq-length", "32", "--batch-size", "32", "--threads", "2", "--local-epochs", "1",
                          "--rounds", "40", "--out", run, NULL};
    pid_t p = spawn_prog(mpirun, "int", NULL, args);
    double t0 = fx_now();
    int lines = 0;
    while (fx_now() - t0 < WAIT_LINE_S) {
        metrics m;
        lines = metrics_load(run, &m) == 0 ? m.n : 0;
        metrics_free(&m);
        if (lines >= 1) break;
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    CHECK(lines >= 1, "the run under mpirun wrote no round in %.0f s", WAIT_LINE_S);
    kill(p, SIGINT); /* to mpirun alone, as a terminal's Ctrl-C reaches it */
    int rc = finish("int", p);
    /* every rank is gone with it: nothing is left in the run's process group */
    double t1 = fx_now();
    while (kill(-p, 0) == 0 && fx_now() - t1 < 10) { struct timespec ts = {0, 20000000}; nanosleep(&ts, NULL); }
    CHECK(rc != 0 && kill(-p, 0) != 0, "Ctrl-C to mpirun: exit status %d, processes left: %s", rc,
          kill(-p, 0) == 0 ? "yes" : "no");
    metrics m;
    lines = metrics_load(run, &m) == 0 ? m.n : -1;
    metrics_free(&m);
    fx_st_file f;
    int ok = lines >= 1 && fx_st_open(P("%s/state.safetensors", run), &f) == 0;
    CHECK(ok && fx_st_meta(&f, "round") && atoi(fx_st_meta(&f, "round")) == lines,
          "after Ctrl-C, the checkpoint is the last complete round's (%d metrics lines)", lines);
    if (ok) fx_st_close(&f);
    if (lines >= 1 && lines < 40) {
        rc = fedex("int_resume", NULL, "train", "--resume", run, "--rounds", P("%d", lines + 1), "--threads", "2", NULL);
        CHECK(rc == 0, "--resume after Ctrl-C under mpirun: exit status %d", rc);
        if (rc != 0) show_err("int_resume");
    }
}

static void test_mpi_refusals(void) {
    int rc = fedex("single", NULL, "train", "--transport", "mpi", "--rounds", "1", NULL);
    CHECK(rc == 2 && err_has("single", "mpirun -np"), "--transport mpi outside mpirun: exit status %d, want 2 saying how", rc);
    rc = mpi_train("too_many", NULL, 5, "--num-clients", "3", "--rounds", "1", NULL);
    CHECK(rc != 0 && err_has("too_many", "--num-clients + 1"), "4 client ranks for 3 clients: exit status %d, want refused", rc);
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
            char ver[256] = "";
            int has = check_run(P("'%s' --version", fedex_bin), ver, sizeof ver) == 0 && strstr(ver, "MPI");
            if (!has) {
                int rc = fedex("nompi", NULL, "train", "--transport", "mpi", "--rounds", "1", NULL);
                CHECK(rc == 2 && err_has("nompi", "apt-get install openmpi-bin libopenmpi-dev"),
                      "--transport mpi in a build without MPI: exit %d, want 2 saying how to get it", rc);
                printf("skipped: the MPI transport end to end (this fedex was built without MPI: no mpicc)\n");
            } else if (!find_mpirun()) {
                printf("skipped: the MPI transport end to end (no mpirun in PATH)\n");
            } else {
                /* as root, OpenMPI's mpirun wants to be told that this is meant */
                setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);
                setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
                /* under the sanitizers: OpenMPI's own allocations kept past MPI_Finalize are not fedex's leaks
                 * (tests/lsan_mpi.supp says which and why) */
                static char supp[4200];
                char abs_supp[4096];
                if (realpath("tests/lsan_mpi.supp", abs_supp)) {
                    snprintf(supp, sizeof supp, "suppressions=%s:print_suppressions=0:fast_unwind_on_malloc=0", abs_supp);
                    setenv("LSAN_OPTIONS", supp, 0);
                }
                setenv("OMPI_MCA_mca_base_component_disable_dlclose", "1", 1);
                test_mpi_refusals();
                test_mpi_same();
                test_mpi_many();
                test_mpi_frozen();
                if (!SANITIZED) {
                    test_mpi_dead();
                    test_mpi_interrupt();
                } else
                    printf("skipped under the sanitizers: mpirun against shm for fedit, ffa and factored fedex, the dead "
                           "rank and Ctrl-C under mpirun (they run in `make test`)\n");
            }
        }
    }
    printf("many clients and MPI end to end: %.1f s\n", fx_now() - t0);
    run_harness_end();
    return check_done();
}
