/* bench/bench_step.c: one LoRA training step on the CPU (fx_model_step with train=1, then
 * fx_adamw_update), all threads, random weights, of RoBERTa-base (LoRA r=4 on query/value, a
 * classification loss) and of GPT-2 small (LoRA r=4 on c_attn and c_proj, the causal LM loss with label
 * smoothing 0.1 over 96 supervised tokens a row, clipping at 1.0), on full batches of 8 x 128 random
 * tokens and, for RoBERTa, on real batches of 8 RTE training rows padded to their longest as training
 * pads them; fedex's step runs in fp32 and with the frozen base in bf16 (--precision bf16). Its yardsticks
 * run in the same process tree, paired and interleaved with fedex's steps (fedex fp32, bf16, PyTorch, bound,
 * peak; fedex fp32, ...): the same step in PyTorch (bench/torch_step.py kept running
 * over a pipe, in the fastest of the thread settings it tries first; skipped with a visible line without
 * python3/torch), the "GEMM bound" (every matrix product of fedex's step timed with OpenBLAS on its own
 * shape) and the fp32 FMA peak of the machine. It prints each pair, the medians, the median of the pairs'
 * ratios and the goals beside them. It measures speed only; correctness is the tests' job.
 * Usage: bench_step [threads] [pairs] [roberta|gpt2|all] */
#include "../fedex.h"

#include <cblas.h>
#include <errno.h>
#include <fcntl.h>
#include <omp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

extern char **environ;

/* ---------------------------------------------------------------- setup */

enum { BATCH = 8, TOKENS = 128, RANK = 4, MAX_SHAPES = 256, MAX_PAIRS = 64, RTE_MAX_LEN = 128 };

/* The goals printed beside the figures, each a ratio of medians over the pairs. */
#define GOAL_STEP_BOUND 1.1  /* fp32 step / OpenBLAS bound on full batches */
#define GOAL_RTE_TORCH 0.6   /* fedex / PyTorch on RTE batches: fedex skips the padding, PyTorch does not */
#define GOAL_BF16_BOUND 0.6  /* bf16 step / the fp32 OpenBLAS bound */

static const char *shared(void) {
    const char *d = getenv("FEDEX_SHARED");
    return d ? d : "../shared";
}

static const char *met(double ratio, double goal) { return ratio <= goal ? "met" : "not met"; }

/* A full batch of random tokens (no padding) with random binary labels; LM: targets the ids but the
 * first 32 of a row (an E2E prompt). */
static void make_batch(fx_batch *b, int vocab, int lm, uint64_t seed) {
    fx_rng r; fx_rng_seed(&r, seed);
    memset(b, 0, sizeof *b);
    b->n = BATCH; b->T = TOKENS; b->cap_rows = BATCH; b->cap_tok = BATCH * TOKENS;
    b->ids = fx_malloc((size_t)BATCH * TOKENS * sizeof *b->ids);
    b->mask = fx_malloc((size_t)BATCH * TOKENS);
    b->labels = fx_malloc(BATCH * sizeof *b->labels);
    for (int i = 0; i < BATCH * TOKENS; i++) {
        b->ids[i] = 4 + (int32_t)(fx_rng_u64(&r) % (uint64_t)(vocab - 4));
        b->mask[i] = 1;
    }
    for (int i = 0; i < BATCH; i++) b->labels[i] = (float)(fx_rng_u64(&r) & 1);
    if (!lm) return;
    b->targets = fx_malloc((size_t)BATCH * TOKENS * sizeof *b->targets);
    for (int i = 0; i < BATCH * TOKENS; i++) b->targets[i] = i % TOKENS < 32 ? -100 : b->ids[i];
}

/* RTE's training rows, tokenised by fedex's RoBERTa tokenizer (truncated at 128 as training does), as
 * an epoch's shuffle cuts them into batches of 8: the first COUNT such batches, each padded to its
 * longest row (fx_batch_fill, training's own). Prints what an epoch's batches look like. 0, or -1 with
 * the reason printed as a skip. */
static int rte_batches(fx_batch *out, int count, int pad_id) {
    char dir[512], data[512];
    snprintf(dir, sizeof dir, "%s/models/roberta-base", shared());
    snprintf(data, sizeof data, "%s/data/glue", shared());
    fx_tokenizer *tok = fx_tok_load(dir);
    if (!tok) { printf("skipped: RTE batches (%s)\n", fx_err()); return -1; }
    fx_dataset d;
    int rc = fx_dataset_build(fx_task_find("RTE"), data, "train", tok, RTE_MAX_LEN, &d);
    fx_tok_free(tok);
    if (rc != 0) { printf("skipped: RTE batches (%s)\n", fx_err()); return -1; }
    if (d.n < BATCH) { printf("skipped: RTE batches (%d rows)\n", d.n); fx_dataset_free(&d); return -1; }
    int *order = fx_malloc((size_t)d.n * sizeof *order);
    fx_rng r; fx_rng_seed(&r, 7);
    for (int i = 0; i < d.n; i++) order[i] = i;
    for (int i = d.n - 1; i > 0; i--) {
        int j = (int)(fx_rng_u64(&r) % (uint64_t)(i + 1)), t = order[i];
        order[i] = order[j]; order[j] = t;
    }
    /* the whole epoch's padded and real tokens, to show the timed batches are typical */
    double pad_tok = 0, real_tok = 0;
    int nb = d.n / BATCH;
    for (int k = 0; k < nb; k++) {
        size_t T = 0;
        for (int i = 0; i < BATCH; i++) {
            size_t len = d.off[order[k * BATCH + i] + 1] - d.off[order[k * BATCH + i]];
            if (len > T) T = len;
            real_tok += (double)len;
        }
        pad_tok += (double)(T * BATCH);
    }
    printf("RTE train: %d rows; an epoch's %d batches of %d pad to %.1f tokens on average for a mean row of "
           "%.1f (%.0f%% of the padded tokens real)\n", d.n, nb, BATCH, pad_tok / nb / BATCH,
           real_tok / nb / BATCH, 100.0 * real_tok / pad_tok);
    for (int k = 0; k < count; k++) {
        memset(&out[k], 0, sizeof out[k]);
        fx_batch_fill(&d, order + (size_t)(k % nb) * BATCH, BATCH, pad_id, &out[k]);
    }
    free(order);
    fx_dataset_free(&d);
    return 0;
}

static int real_tokens(const fx_batch *b) {
    int n = 0;
    for (int i = 0; i < b->n * b->T; i++) n += b->mask[i] != 0;
    return n;
}

/* The batches for the PyTorch peer, in torch_step.py's "fedex-batches 1" text form. 0 or -1. */
static int write_batches(const char *path, const fx_batch *b, int count) {
    FILE *f = fopen(path, "w");
    if (!f) { printf("skipped: RTE batches for PyTorch (cannot write %s)\n", path); return -1; }
    fprintf(f, "fedex-batches 1\n%d\n", count);
    for (int k = 0; k < count; k++) {
        fprintf(f, "%d %d\n", b[k].n, b[k].T);
        for (int i = 0; i < b[k].n * b[k].T; i++) fprintf(f, "%d%c", b[k].ids[i], i % b[k].T == b[k].T - 1 ? '\n' : ' ');
        for (int i = 0; i < b[k].n * b[k].T; i++) fprintf(f, "%d%c", b[k].mask[i], i % b[k].T == b[k].T - 1 ? '\n' : ' ');
        for (int i = 0; i < b[k].n; i++) fprintf(f, "%d%c", (int)b[k].labels[i], i == b[k].n - 1 ? '\n' : ' ');
    }
    if (fclose(f) != 0) { printf("skipped: RTE batches for PyTorch (cannot write %s)\n", path); return -1; }
    return 0;
}

/* ---------------------------------------------------------------- the fedex variants */

typedef struct { const char *name; fx_model m; int on; } variant;

/* The bf16 variant (--precision bf16): the frozen base held in bf16, its products by fx_matmul_bf16. */
static int bf16_config(fx_config *c) {
    c->precision = FX_PREC_BF16;
    return 1;
}

static double step(fx_model *m, const fx_batch *b) {
    double t0 = fx_now();
    fx_model_step(m, b, 1, NULL);
    fx_adamw_update(m, 1e-4f, 0.01f);
    return fx_now() - t0;
}

/* One untimed step (workspace, page faults) logging the products it runs: their count, or -1. */
static int logged_step(fx_model *m, const fx_batch *b, fx_matmul_shape *shapes) {
    fx_matmul_log_start();
    step(m, b);
    int n = fx_matmul_log_stop(shapes, MAX_SHAPES);
    if (n > MAX_SHAPES) { fprintf(stderr, "bench_step: more than %d product shapes\n", MAX_SHAPES); return -1; }
    return n;
}

/* ---------------------------------------------------------------- the fp32 FMA peak */

/* Independent chains a = a * m + c (12, more than the FMA latency times the FMA ports of current x86
 * cores), on every thread at once: FLOP/s the machine's fp32 FMAs can reach. */
#define CHAINS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#if defined(__x86_64__)
#define DECL512(i) __m512 a##i = _mm512_set1_ps(0.01f * (i + 1));
#define STEP512(i) a##i = _mm512_fmadd_ps(a##i, m, c);
#define SUM512(i) s = _mm512_add_ps(s, a##i);
__attribute__((target("avx512f"))) static float fma_avx512(long iters) {
    __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-6f), s = _mm512_setzero_ps();
    CHAINS(DECL512)
    for (long i = 0; i < iters; i++) { CHAINS(STEP512) }
    CHAINS(SUM512)
    return _mm512_reduce_add_ps(s);
}
#define DECL256(i) __m256 a##i = _mm256_set1_ps(0.01f * (i + 1));
#define STEP256(i) a##i = _mm256_fmadd_ps(a##i, m, c);
#define SUM256(i) s = _mm256_add_ps(s, a##i);
__attribute__((target("avx2,fma"))) static float fma_avx2(long iters) {
    __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-6f), s = _mm256_setzero_ps();
    CHAINS(DECL256)
    for (long i = 0; i < iters; i++) { CHAINS(STEP256) }
    CHAINS(SUM256)
    float v[8];
    _mm256_storeu_ps(v, s);
    return v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
}
#endif

static volatile float fma_sink;

/* GFLOP/s of all THREADS running FMA chains, best of 5 rounds of >= 20 ms; -1 without AVX2/AVX-512.
 * ISA names the instructions used. */
static double fma_gflops(int threads, const char **isa) {
    float (*f)(long) = NULL;
    int lanes = 0;
    *isa = "none";
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f")) { f = fma_avx512; lanes = 16; *isa = "AVX-512"; }
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) { f = fma_avx2; lanes = 8; *isa = "AVX2"; }
#endif
    if (!f) return -1;
    static long iters = 1 << 14; /* kept between calls: later calls start at a round's length */
    double best = 0;
    for (int round = 0; round < 5;) {
        float sum = 0;
        double t0 = fx_now();
        #pragma omp parallel num_threads(threads) reduction(+ : sum)
        sum += f(iters);
        double t = fx_now() - t0;
        fma_sink = sum;
        if (t < 0.02) { iters *= 2; continue; }
        double gf = (double)threads * iters * 12 * lanes * 2 / t * 1e-9;
        if (gf > best) best = gf;
        round++;
    }
    return best;
}

/* ---------------------------------------------------------------- the GEMM bound */

typedef struct { fx_matmul_shape s; long reps[2]; } product; /* reps: calls per round (OpenBLAS, fx), found once */

/* Seconds per product of P's shape with OpenBLAS (BLAS) or fx_matmul, best of ROUNDS rounds of >= 30 ms.
 * A product the step runs inside its own parallel region (one per attention head) is timed the way it
 * runs: every thread doing single-threaded products on its own operands at once; the time is per
 * product, all threads counted. */
static double product_seconds(product *p, int threads, int blas, int rounds) {
    const fx_matmul_shape *s = &p->s;
    int nested = s->nested && threads > 1;
    int copies = nested ? threads : 1;
    size_t na = (size_t)s->M * s->K, nb = (size_t)s->K * s->N, nc = (size_t)s->M * s->N;
    float *buf = fx_calloc((na + nb + nc) * copies, sizeof *buf);
    for (size_t i = 0; i < (na + nb) * copies; i++) buf[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
    int lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N;
    enum CBLAS_TRANSPOSE ta = s->ta ? CblasTrans : CblasNoTrans, tb = s->tb ? CblasTrans : CblasNoTrans;
    openblas_set_num_threads(nested ? 1 : threads);
    long *reps = &p->reps[blas ? 0 : 1];
    if (*reps < 1) *reps = 1;
    double best = 1e30;
    for (int round = -1; round < rounds;) {
        /* Each copy loops on its own (no fork/join per product, which an oversubscribed machine makes
         * cost a time slice); round -1 is one untimed call (page faults), then REPS grows until a round
         * lasts 30 ms. */
        long n = round < 0 ? 1 : *reps;
        double t0 = fx_now();
        #pragma omp parallel num_threads(copies)
        {
            int c = omp_get_thread_num();
            float *A = buf + (na + nb + nc) * c, *B = A + na, *C = B + nb;
            for (long i = 0; i < n; i++) {
                if (blas) cblas_sgemm(CblasRowMajor, ta, tb, s->M, s->N, s->K, 1.0f, A, lda, B, ldb, 0.0f, C, s->N);
                else fx_matmul(s->ta, s->tb, s->M, s->N, s->K, 1.0f, A, lda, B, ldb, 0.0f, C, s->N);
            }
        }
        double t = fx_now() - t0;
        if (round < 0) { round++; continue; }
        if (t < 0.03) { *reps = *reps * 2 + (long)(0.03 / (t + 1e-9) * *reps); continue; }
        if (t / (n * copies) < best) best = t / (n * copies);
        round++;
    }
    openblas_set_num_threads(threads);
    free(buf);
    return best;
}

/* Seconds of all N products' calls with OpenBLAS: the step's GEMM bound. */
static double bound_seconds(product *p, int n, int threads, int rounds) {
    double sum = 0;
    for (int i = 0; i < n; i++) sum += p[i].s.calls * product_seconds(&p[i], threads, 1, rounds);
    return sum;
}

static double product_flops(const product *p, int n) {
    double f = 0;
    for (int i = 0; i < n; i++) f += 2.0 * p[i].s.M * p[i].s.N * p[i].s.K * p[i].s.calls;
    return f;
}

static int to_products(product *p, const fx_matmul_shape *s, int n) {
    for (int i = 0; i < n; i++) { p[i].s = s[i]; p[i].reps[0] = p[i].reps[1] = 0; }
    return n;
}

/* The table of each product, OpenBLAS and fx_matmul: fx's own products' time against the step. */
static void product_table(product *p, int n, int threads, double step_s) {
    printf("%2s %2s %5s %5s %5s %6s %6s %9s %10s %9s %8s\n", "ta", "tb", "M", "N", "K", "nested", "calls",
           "blas GF/s", "bound ms", "fx GF/s", "fx ms");
    double bound = 0, fx_total = 0;
    for (int i = 0; i < n; i++) {
        const fx_matmul_shape *s = &p[i].s;
        double flops = 2.0 * s->M * s->N * s->K;
        double sec = product_seconds(&p[i], threads, 1, 3), fx = product_seconds(&p[i], threads, 0, 3);
        bound += s->calls * sec;
        fx_total += s->calls * fx;
        printf("%2d %2d %5d %5d %5d %6d %6ld %9.1f %10.2f %9.1f %8.2f\n", s->ta, s->tb, s->M, s->N, s->K, s->nested,
               s->calls, flops / sec * 1e-9, s->calls * sec * 1e3, flops / fx * 1e-9, s->calls * fx * 1e3);
    }
    printf("products %.1f GFLOP: OpenBLAS %.1f ms, fx_matmul %.1f ms (fx / OpenBLAS throughput %.2f); the rest of "
           "a %.1f ms step: %.1f ms\n", product_flops(p, n) * 1e-9, bound * 1e3, fx_total * 1e3, bound / fx_total,
           step_s * 1e3, (step_s - fx_total) * 1e3);
}

/* ---------------------------------------------------------------- the PyTorch peer */

/* bench/torch_step.py --serve, one process: commands on TO, one reply line each on FROM. */
typedef struct { pid_t pid; FILE *to, *from; int blas, threads; } peer;

/* Sends one command and reads its reply into REPLY (what follows "ok "): 0, or -1 with the reply (or why
 * there is none) in REPLY. */
static int peer_ask(peer *p, char *reply, size_t n, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(p->to, fmt, ap);
    va_end(ap);
    fputc('\n', p->to);
    if (fflush(p->to) != 0 || !fgets(reply, (int)n, p->from)) {
        snprintf(reply, n, "torch_step.py exited");
        return -1;
    }
    reply[strcspn(reply, "\n")] = 0;
    if (strncmp(reply, "ok", 2) != 0) return -1;
    size_t skip = reply[2] == ' ' ? 3 : 2;
    memmove(reply, reply + skip, strlen(reply + skip) + 1);
    return 0;
}

static void peer_stop(peer *p) {
    if (!p->pid) return;
    fprintf(p->to, "quit\n");
    fclose(p->to);
    fclose(p->from);
    waitpid(p->pid, NULL, 0);
    p->pid = 0;
}

/* Starts torch_step.py with OPENBLAS_NUM_THREADS = OMP_NUM_THREADS = BLAS (read once, when OpenBLAS
 * loads). HELLO gets its first line. 0, or -1 with the reason in HELLO. */
static int peer_start(peer *p, const char *config, const char *batches, int blas, char *hello, size_t n) {
    memset(p, 0, sizeof *p);
    if (access("/usr/bin/python3", X_OK) != 0) { snprintf(hello, n, "no /usr/bin/python3"); return -1; }
    int to[2], from[2];
    if (pipe2(to, O_CLOEXEC) != 0) { snprintf(hello, n, "pipe: %s", strerror(errno)); return -1; }
    if (pipe2(from, O_CLOEXEC) != 0) {
        snprintf(hello, n, "pipe: %s", strerror(errno));
        close(to[0]); close(to[1]);
        return -1;
    }
    size_t ne = 0;
    while (environ[ne]) ne++;
    char **env = fx_malloc((ne + 3) * sizeof *env), ob[32], om[32];
    size_t k = 0;
    for (size_t i = 0; i < ne; i++)
        if (strncmp(environ[i], "OPENBLAS_NUM_THREADS=", 21) && strncmp(environ[i], "OMP_NUM_THREADS=", 16)) env[k++] = environ[i];
    snprintf(ob, sizeof ob, "OPENBLAS_NUM_THREADS=%d", blas);
    snprintf(om, sizeof om, "OMP_NUM_THREADS=%d", blas);
    env[k++] = ob; env[k++] = om; env[k] = NULL;
    char sb[16], st[16], sr[16];
    snprintf(sb, sizeof sb, "%d", BATCH); snprintf(st, sizeof st, "%d", TOKENS); snprintf(sr, sizeof sr, "%d", RANK);
    char *argv[] = {"python3", "bench/torch_step.py", (char *)config, "--serve", "--batch", sb, "--tokens", st,
                    "--rank", sr, batches ? "--batches" : NULL, (char *)batches, NULL};
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, to[0], 0);
    posix_spawn_file_actions_adddup2(&fa, from[1], 1);
    int rc = posix_spawn(&p->pid, "/usr/bin/python3", &fa, NULL, argv, env);
    posix_spawn_file_actions_destroy(&fa);
    free(env);
    close(to[0]);
    close(from[1]);
    if (rc != 0) {
        snprintf(hello, n, "posix_spawn /usr/bin/python3: %s", strerror(rc));
        close(to[1]); close(from[0]);
        p->pid = 0;
        return -1;
    }
    p->to = fdopen(to[1], "w");
    p->from = fdopen(from[0], "r");
    p->blas = blas;
    if (!p->to || !p->from) fx_die("bench_step: fdopen: %s", strerror(errno));
    if (!fgets(hello, (int)n, p->from)) snprintf(hello, n, "torch_step.py exited");
    hello[strcspn(hello, "\n")] = 0;
    if (strncmp(hello, "ok ", 3) != 0) { peer_stop(p); return -1; }
    memmove(hello, hello + 3, strlen(hello) - 2);
    return 0;
}

static int peer_threads(peer *p, int t) {
    char r[256];
    if (peer_ask(p, r, sizeof r, "threads %d", t) != 0) return -1;
    p->threads = t;
    return 0;
}

/* One step of batch K (-1: the full random batch): seconds, or -1 with the reason printed. */
static double peer_step(peer *p, int k) {
    char r[256];
    int rc = k < 0 ? peer_ask(p, r, sizeof r, "step full") : peer_ask(p, r, sizeof r, "step %d", k);
    double s;
    if (rc != 0 || sscanf(r, "%lf", &s) != 1) { printf("PyTorch peer failed (%s)\n", r); return -1; }
    return s;
}

/* The thread setting kept, once chosen (0: none yet): torch.set_num_threads(T) and OpenBLAS's B. */
static int chosen_t, chosen_b;

/* The PyTorch peer in its fastest thread setting. Tries torch.set_num_threads(t) x OPENBLAS_NUM_THREADS
 * = OMP_NUM_THREADS = b for t, b in {1, THREADS} (Debian's torch has no MKL to set), one process per b,
 * all settings interleaved, 2 full-batch steps each after a warm-up step, best kept; prints them all. A
 * setting chosen earlier (another model) is reused. 0 with OUT running, or -1 with a skip line printed. */
static int peer_choose(peer *out, const char *config, const char *batches, int threads) {
    int vals[2] = {1, threads}, nv = threads > 1 ? 2 : 1;
    char hello[512];
    if (chosen_t) {
        if (peer_start(out, config, batches, chosen_b, hello, sizeof hello) != 0) {
            printf("skipped: PyTorch peer (%s)\n", hello);
            return -1;
        }
        if (peer_threads(out, chosen_t) != 0 || peer_step(out, -1) < 0) { peer_stop(out); return -1; }
        printf("PyTorch peer: %s; torch.set_num_threads(%d), OPENBLAS_NUM_THREADS=OMP_NUM_THREADS=%d (the "
               "setting chosen above)\n", hello, chosen_t, chosen_b);
        return 0;
    }
    peer ps[2];
    double best[2][2];
    for (int b = 0; b < nv; b++) {
        if (peer_start(&ps[b], config, batches, vals[b], hello, sizeof hello) != 0) {
            printf("skipped: PyTorch peer (%s)\n", hello);
            for (int i = 0; i < b; i++) peer_stop(&ps[i]);
            return -1;
        }
        if (peer_threads(&ps[b], 1) != 0 || peer_step(&ps[b], -1) < 0) {
            for (int i = 0; i <= b; i++) peer_stop(&ps[i]);
            return -1;
        }
        best[b][0] = best[b][1] = 1e30;
    }
    printf("PyTorch peer: %s\n", hello);
    for (int round = 0; round < 2; round++)
        for (int b = 0; b < nv; b++)
            for (int t = 0; t < nv; t++) {
                double s;
                if (peer_threads(&ps[b], vals[t]) != 0 || (s = peer_step(&ps[b], -1)) < 0) {
                    for (int i = 0; i < nv; i++) peer_stop(&ps[i]);
                    return -1;
                }
                if (s < best[b][t]) best[b][t] = s;
            }
    int bb = 0, bt = 0;
    printf("PyTorch thread settings (best of 2 interleaved full-batch steps):");
    for (int b = 0; b < nv; b++)
        for (int t = 0; t < nv; t++) {
            printf(" set_num_threads(%d) x OpenBLAS %d: %.0f ms;", vals[t], vals[b], best[b][t] * 1e3);
            if (best[b][t] < best[bb][bt]) { bb = b; bt = t; }
        }
    printf("\n  kept: torch.set_num_threads(%d), OPENBLAS_NUM_THREADS=OMP_NUM_THREADS=%d\n", vals[bt], vals[bb]);
    for (int b = 0; b < nv; b++)
        if (b != bb) peer_stop(&ps[b]);
    *out = ps[bb];
    chosen_t = vals[bt];
    chosen_b = vals[bb];
    return peer_threads(out, chosen_t);
}

/* ---------------------------------------------------------------- pairs */

/* One kind of batch's interleaved pairs: per pair fedex fp32, fedex bf16 (when on), PyTorch (when
 * running), the GEMM bound of the products fedex's fp32 step logged, the FMA peak. */
typedef struct { double fx, bf, torch, bound, peak, gflop; int T, real; } pair;

static double med(const pair *p, int n, size_t off) {
    double v[MAX_PAIRS];
    for (int i = 0; i < n; i++) v[i] = *(const double *)((const char *)&p[i] + off);
    return fx_sort_median(v, n);
}

/* Median and range of the pairs' ratios A / B. */
static void ratio(const pair *p, int n, size_t a, size_t b, double *m, double *lo, double *hi) {
    double v[MAX_PAIRS];
    for (int i = 0; i < n; i++)
        v[i] = *(const double *)((const char *)&p[i] + a) / *(const double *)((const char *)&p[i] + b);
    *m = fx_sort_median(v, n);
    *lo = v[0];
    *hi = v[n - 1];
}

#define F(x) offsetof(pair, x)

static void print_pair(const char *what, int i, const pair *p, int bf, int torch) {
    printf("%s %d: T %d (%d real tokens, %.1f GFLOP of products): fedex %.0f ms", what, i + 1, p->T, p->real,
           p->gflop, p->fx * 1e3);
    if (bf) printf(", bf16 %.0f ms", p->bf * 1e3);
    if (torch) printf(", PyTorch %.0f ms", p->torch * 1e3);
    printf(", bound %.0f ms, peak %.0f GFLOP/s; fedex/bound %.2f", p->bound * 1e3, p->peak, p->fx / p->bound);
    if (torch) printf(", fedex/PyTorch %.2f", p->fx / p->torch);
    if (bf) printf(", bf16/bound %.2f", p->bf / p->bound);
    printf("\n");
    fflush(stdout);
}

/* Summary lines of N pairs; FULL: the full-batch goals (step / bound), else RTE's (fedex / PyTorch). */
static void summary(const char *what, const pair *p, int n, int bf, int torch, int full, const char *isa) {
    double m, lo, hi, fx = med(p, n, F(fx)), bound = med(p, n, F(bound)), peak = med(p, n, F(peak));
    double gflop = med(p, n, F(gflop));
    printf("%s, medians of %d pairs: fedex fp32 %.0f ms (%.0f GFLOP/s), bound %.0f ms (%.0f GFLOP/s, %.0f%% of the "
           "%s FMA peak %.0f GFLOP/s)\n", what, n, fx * 1e3, gflop / fx, bound * 1e3, gflop / bound,
           100 * gflop / bound / peak, isa, peak);
    ratio(p, n, F(fx), F(bound), &m, &lo, &hi);
    printf("  fedex fp32 / OpenBLAS bound %.2f (%.2f-%.2f)", m, lo, hi);
    if (full) printf(": goal <= %.1f %s", GOAL_STEP_BOUND, met(m, GOAL_STEP_BOUND));
    printf("\n");
    if (torch) {
        ratio(p, n, F(fx), F(torch), &m, &lo, &hi);
        printf("  fedex fp32 / PyTorch fp32 %.2f (%.2f-%.2f), PyTorch %.0f ms", m, lo, hi, med(p, n, F(torch)) * 1e3);
        if (!full) printf(": goal <= %.1f %s", GOAL_RTE_TORCH, met(m, GOAL_RTE_TORCH));
        printf("\n");
    } else if (!full) {
        printf("  fedex / PyTorch: no PyTorch peer, goal <= %.1f not measured\n", GOAL_RTE_TORCH);
    }
    if (bf) {
        ratio(p, n, F(bf), F(bound), &m, &lo, &hi);
        printf("  fedex bf16 %.0f ms; bf16 / fp32 OpenBLAS bound %.2f (%.2f-%.2f): goal <= %.1f %s\n",
               med(p, n, F(bf)) * 1e3, m, lo, hi, GOAL_BF16_BOUND, met(m, GOAL_BF16_BOUND));
    } else {
        printf("  fedex bf16: not in this build (no bf16 precision in the model config), goal bf16 / fp32 bound "
               "<= %.1f not measured\n", GOAL_BF16_BOUND);
    }
    fflush(stdout);
}

/* NP interleaved pairs over BATCHES (pair i steps batches[i % nb]; torch_k = that batch's index in the
 * peer, -1: its full batch). Products are logged by an untimed fp32 step on each batch first. */
static int run_pairs(pair *out, int np, variant *v, const fx_batch *batches, int nb, int rte, peer *pe,
                     int threads, product *prods, int *nprods) {
    fx_matmul_shape shapes[MAX_SHAPES];
    const char *isa;
    for (int i = 0; i < np; i++) {
        const fx_batch *b = &batches[i % nb];
        pair *p = &out[i];
        if (rte || !*nprods) {
            int n = logged_step(&v[0].m, b, shapes);
            if (n < 0) return -1;
            *nprods = to_products(prods, shapes, n);
        }
        p->T = b->T;
        p->real = real_tokens(b);
        p->gflop = product_flops(prods, *nprods) * 1e-9;
        p->fx = step(&v[0].m, b);
        if (v[1].on) p->bf = step(&v[1].m, b);
        if (pe->pid) {
            p->torch = peer_step(pe, rte ? i % nb : -1);
            if (p->torch < 0) { peer_stop(pe); return -1; }
        }
        p->bound = bound_seconds(prods, *nprods, threads, 2);
        p->peak = fma_gflops(threads, &isa);
        print_pair(rte ? "RTE pair" : "pair", i, p, v[1].on, pe->pid != 0);
    }
    return 0;
}

/* ---------------------------------------------------------------- main */

/* One model's benchmark: MODEL "roberta-base" or "gpt2" (a folder of ../shared/models). */
static int bench_model(const char *model, int threads, int pairs) {
    char config[512];
    snprintf(config, sizeof config, "%s/models/%s/config.json", shared(), model);
    fx_config c;
    if (fx_config_load(config, &c) != 0) {
        printf("skipped: bench_step %s (%s)\n", model, fx_err());
        return 0;
    }
    int lm = fx_config_family(&c)->head_kind == FX_HEAD_LM;
    if (lm) { c.label_smoothing = 0.1f; c.max_grad_norm = 1.0f; }
    fx_adapter_cfg a = {.kind = FX_LORA, .targets = lm ? FX_T_QKV | FX_T_ATTN_OUT | FX_T_OUTPUT : FX_T_QUERY | FX_T_VALUE,
                        .r = RANK, .alpha = lm ? 32.0f : 2.0f * RANK, .seed = 1};
    variant v[2] = {{.name = "fp32", .on = 1}, {.name = "bf16"}};
    fx_config cb = c;
    v[1].on = bf16_config(&cb);
    fx_batch full;
    make_batch(&full, c.vocab_size, lm, 3);
    printf("%s LoRA r=%d (%s), batch %d x %d tokens, %d threads, kernel %s, OpenBLAS %s; fedex fp32",
           lm ? "GPT-2 small" : "RoBERTa-base", RANK, lm ? "c_attn, c_proj; LM loss, smoothing 0.1, clip 1.0"
           : "query, value", BATCH, TOKENS, threads, fx_matmul_kernel(), openblas_get_corename());
    printf(" and bf16 (kernel %s)\n", fx_matmul_bf16_kernel());
    fx_precision_note(cb.precision, stdout);

    /* the fp32 model and the products of one full-batch step (each against fx_matmul below, once); the
     * peak memory of a process holding it alone; then the bf16 model beside it */
    static product prods[MAX_SHAPES];
    fx_matmul_shape shapes[MAX_SHAPES];
    int nprods = -1;
    double rss[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        if (!v[i].on) continue;
        if (fx_model_create(&v[i].m, i ? &cb : &c, &a, NULL) != 0) { fprintf(stderr, "bench_step: %s\n", fx_err()); return 1; }
        fx_model_init_base(&v[i].m, 1);
        fx_model_init_adapters(&v[i].m, 2);
        if (i == 0 && (nprods = logged_step(&v[0].m, &full, shapes)) < 0) return 1;
        if (i == 1) step(&v[1].m, &full);
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        rss[i] = ru.ru_maxrss * 1024.0 / 1e9;
    }
    to_products(prods, shapes, nprods);
    printf("peak memory (ru_maxrss) after the fp32 model's first step: %.2f GB (goal < 2.5)", rss[0]);
    if (v[1].on) printf("; with the bf16 model beside it: %.2f GB", rss[1]);
    printf("\n");
    double s0 = step(&v[0].m, &full);
    product_table(prods, nprods, threads, s0);
    fflush(stdout);

    /* RTE's batches (RoBERTa), and the peer that steps on them too */
    fx_batch rte[MAX_PAIRS];
    char tmp[] = "/tmp/fedex-bench-batches-XXXXXX";
    int nrte = 0, fd = -1;
    if (!lm && rte_batches(rte, pairs, c.pad_id) == 0) {
        nrte = pairs;
        if ((fd = mkstemp(tmp)) < 0 || write_batches(tmp, rte, nrte) != 0) {
            printf("skipped: RTE batches for PyTorch (mkstemp %s)\n", tmp);
            if (fd >= 0) unlink(tmp);
            fd = -1;
        }
        if (fd >= 0) close(fd);
    }
    peer pe = {0};
    if (peer_choose(&pe, config, fd >= 0 ? tmp : NULL, threads) != 0) pe.pid = 0;
    if (fd >= 0) unlink(tmp); /* read by the peer at its start */

    pair full_p[MAX_PAIRS], rte_p[MAX_PAIRS];
    const char *isa;
    fma_gflops(threads, &isa);
    if (run_pairs(full_p, pairs, v, &full, 1, 0, &pe, threads, prods, &nprods) != 0) return 1;
    summary("full batches", full_p, pairs, v[1].on, pe.pid != 0, 1, isa);
    if (nrte) {
        if (run_pairs(rte_p, nrte, v, rte, nrte, 1, fd >= 0 ? &pe : &(peer){0}, threads, prods, &nprods) != 0) return 1;
        summary("RTE batches", rte_p, nrte, v[1].on, fd >= 0 && pe.pid != 0, 0, isa);
    }
    peer_stop(&pe);
    printf("\n");
    for (int k = 0; k < nrte; k++) fx_batch_free(&rte[k]);
    fx_batch_free(&full);
    for (int i = 0; i < 2; i++)
        if (v[i].on) fx_model_free(&v[i].m);
    return 0;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    int pairs = argc > 2 ? atoi(argv[2]) : 5;
    const char *which = argc > 3 ? argv[3] : "all";
    if (threads < 1) threads = 1;
    if (pairs < 1) pairs = 1;
    if (pairs > MAX_PAIRS) pairs = MAX_PAIRS;
    signal(SIGPIPE, SIG_IGN); /* a peer that dies is a failed write, not the end of the benchmark */
    fx_set_threads(threads);
    openblas_set_num_threads(threads);
    int rc = 0;
    if (!strcmp(which, "all") || !strcmp(which, "roberta")) rc |= bench_model("roberta-base", threads, pairs);
    if (!strcmp(which, "all") || !strcmp(which, "gpt2")) rc |= bench_model("gpt2", threads, pairs);
    return rc;
}
