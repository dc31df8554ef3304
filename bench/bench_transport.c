/* bench/bench_transport.c: what a round costs on each transport. (1) The bytes a client receives and sends
 * per round at roberta-base's shapes (24 adapted 768 x 768 layers, LoRA on query and value), for several
 * client counts and ranks: the residual factored, dense, and in the automatic per-layer choice, from
 * agg.c's own message sizes. (2) A round's time with the clients as MPI ranks (mpirun -np N+1) against
 * forked clients on shared memory, the same run, in interleaved pairs, with the median of each and their
 * ratio (skipped with a line without mpirun or an MPI build). It measures; the tests check correctness.
 * Usage: bench_transport [pairs] [rounds] (defaults 3 and 3; run from the checkout, after `make`). */
#include "../fedex.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---------------------------------------------------------------- (1) bytes per round per client */

static void bytes_table(void) {
    fx_config c = {.vocab_size = 50265, .hidden = 768, .layers = 12, .heads = 12, .intermediate = 3072,
                   .max_positions = 514, .type_vocab_size = 1, .pad_id = 1, .num_labels = 2,
                   .layer_norm_eps = 1e-5f, .initializer_range = 0.02f};
    printf("bytes per round per client, roberta-base shapes, LoRA on query,value (24 layers of 768 x 768):\n");
    printf("%8s %4s %14s %14s %14s %14s\n", "clients", "r", "up (state)", "down factored", "down dense", "down auto");
    const int ns[] = {3, 8, 32}, rs[] = {4, 64};
    for (size_t ri = 0; ri < 2; ri++)
        for (size_t ni = 0; ni < 3; ni++) {
            fx_adapter_cfg a = {.kind = FX_LORA, .targets = FX_T_QUERY | FX_T_VALUE, .r = rs[ri], .alpha = 8, .seed = 1};
            fx_model m; /* the base's pages are never touched: it costs nothing */
            if (fx_model_create(&m, &c, &a, NULL) != 0) { printf("  %s\n", fx_err()); return; }
            int q = fx_agg_residual_rank(&m, ns[ni]);
            fx_residual_msg f = {.round = 1, .q = q, .form = FX_RESIDUAL_FACTORED};
            fx_residual_msg d = {.round = 1, .q = 0, .form = FX_RESIDUAL_DENSE};
            fx_residual_msg au = {.round = 1, .q = q, .form = FX_RESIDUAL_AUTO};
            double state = 4.0 * (double)m.train.n, job = (double)sizeof(fx_job);
            printf("%8d %4d %11.2f MB %11.2f MB %11.2f MB %11.2f MB\n", ns[ni], rs[ri], state / 1e6,
                   (state + job + fx_residual_msg_bytes(&m, &f)) / 1e6, (state + job + fx_residual_msg_bytes(&m, &d)) / 1e6,
                   (state + job + fx_residual_msg_bytes(&m, &au)) / 1e6);
            fx_model_free(&m);
        }
}

/* ---------------------------------------------------------------- (2) a round's time, MPI vs shm */

/* The median of metrics.jsonl's per-round "seconds" in DIR, or -1. */
static double median_round(const char *dir) {
    char path[4200], *text;
    size_t len;
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir);
    if (fx_read_file(path, &text, &len) != 0) return -1;
    double t[64];
    int n = 0;
    for (char *save, *l = strtok_r(text, "\n", &save); l && n < 64; l = strtok_r(NULL, "\n", &save)) {
        fx_json j;
        if (fx_json_parse(l, strlen(l), &j) != 0) continue;
        const fx_json *s = fx_json_get(&j, "seconds");
        if (s && s->type == FX_JNUM) t[n++] = s->num;
        fx_json_free(&j);
    }
    free(text);
    return n ? fx_sort_median(t, n) : -1;
}

static int on_path(const char *prog) {
    char cmd[256];
    snprintf(cmd, sizeof cmd, "command -v %s >/dev/null 2>&1", prog);
    return system(cmd) == 0;
}

static void round_times(int pairs, int rounds) {
    char ver[256] = "";
    FILE *p = popen("./fedex --version", "r");
    if (p) { if (!fgets(ver, sizeof ver, p)) ver[0] = 0; pclose(p); }
    if (!strstr(ver, "MPI") || !on_path("mpirun")) {
        printf("skipped: a round under MPI vs shm (%s)\n", strstr(ver, "MPI") ? "no mpirun in PATH" : "./fedex has no MPI");
        return;
    }
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1); /* as root, mpirun wants to be told */
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    char dir[] = "/tmp/fedex_bench_transport_XXXXXX";
    if (!mkdtemp(dir)) { printf("skipped: mkdtemp failed\n"); return; }
    const char *common = "train --num-clients 3 --local-epochs 2 --threads 2 --seed 1 --overwrite";
    double shm[32], mpi[32];
    int n = 0;
    printf("a round's time (median over %d rounds of the embedded model, 3 clients, 2 local epochs), %d pairs:\n",
           rounds, pairs);
    for (int i = 0; i < pairs && i < 32; i++) {
        char cmd[1024];
        snprintf(cmd, sizeof cmd, "./fedex %s --rounds %d --out %s/shm >/dev/null 2>&1", common, rounds, dir);
        int a = system(cmd);
        snprintf(cmd, sizeof cmd,
                 "mpirun --oversubscribe --bind-to none -np 4 ./fedex %s --transport mpi --rounds %d --out %s/mpi "
                 ">/dev/null 2>&1", common, rounds, dir);
        int b = system(cmd);
        char ds[256], dm[256];
        snprintf(ds, sizeof ds, "%s/shm", dir);
        snprintf(dm, sizeof dm, "%s/mpi", dir);
        double ts = median_round(ds), tm = median_round(dm);
        if (a != 0 || b != 0 || ts < 0 || tm < 0) { printf("  pair %d failed (exit %d, %d)\n", i + 1, a, b); continue; }
        shm[n] = ts; mpi[n] = tm; n++;
        printf("  pair %d: shm %.3f s, mpi %.3f s, ratio %.2f\n", n, ts, tm, tm / ts);
    }
    if (n) {
        double r[32];
        for (int i = 0; i < n; i++) r[i] = mpi[i] / shm[i];
        double ms = fx_sort_median(shm, n), mm = fx_sort_median(mpi, n), mr = fx_sort_median(r, n);
        printf("median round: shm %.3f s, mpi %.3f s; median mpi/shm ratio %.2f (a shared machine: re-take quietly)\n",
               ms, mm, mr);
    }
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) { /* a temporary folder left behind */ }
}

int main(int argc, char **argv) {
    int pairs = argc > 1 ? atoi(argv[1]) : 3, rounds = argc > 2 ? atoi(argv[2]) : 3;
    if (pairs < 1) pairs = 1;
    if (rounds < 1) rounds = 1;
    bytes_table();
    round_times(pairs, rounds);
    return 0;
}
