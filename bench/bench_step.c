/* bench/bench_step.c: one LoRA training step on the CPU (fx_model_step with train=1, then
 * fx_adamw_update), batch 8 x 128 tokens, random weights, all 2 threads, of RoBERTa-base (LoRA r=4 on
 * query/value, a classification loss) and of GPT-2 small (LoRA r=4 on c_attn and c_proj, the causal LM
 * loss with label smoothing 0.1 over 96 supervised tokens a row, clipping at 1.0). It prints each step's
 * time against yardsticks measured in the same run: the "GEMM bound" (every matrix product of the step,
 * timed with OpenBLAS on its own shape) and, for RoBERTa, the same step in PyTorch (bench/torch_step.py,
 * skipped with a visible line without python3/torch), and the peak memory. It measures speed only;
 * correctness is the tests' job. Usage: bench_step [threads] [steps] [roberta|gpt2|all] */
#include "../fedex.h"

#include <cblas.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

/* ---------------------------------------------------------------- setup */

enum { BATCH = 8, TOKENS = 128, RANK = 4, MAX_SHAPES = 256 };

static const char *shared(void) {
    const char *d = getenv("FEDEX_SHARED");
    return d ? d : "../shared";
}

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

static double step(fx_model *m, const fx_batch *b) {
    double t0 = fx_now();
    fx_model_step(m, b, 1, NULL);
    fx_adamw_update(m, 1e-4f, 0.01f);
    return fx_now() - t0;
}

/* ---------------------------------------------------------------- the GEMM bound */

/* Seconds per product of shape S with OpenBLAS (BLAS) or fx_matmul, best of the rounds of >= 30 ms. A
 * product the step runs inside its own parallel region (one per attention head) is timed the way it
 * runs: every thread doing single-threaded products on its own operands at once; the time is per
 * product, all threads counted. */
static double product_seconds(const fx_matmul_shape *s, int threads, int blas) {
    int nested = s->nested && threads > 1;
    int copies = nested ? threads : 1;
    size_t na = (size_t)s->M * s->K, nb = (size_t)s->K * s->N, nc = (size_t)s->M * s->N;
    float *buf = fx_calloc((na + nb + nc) * copies, sizeof *buf);
    for (size_t i = 0; i < (na + nb) * copies; i++) buf[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
    int lda = s->ta ? s->M : s->K, ldb = s->tb ? s->K : s->N;
    enum CBLAS_TRANSPOSE ta = s->ta ? CblasTrans : CblasNoTrans, tb = s->tb ? CblasTrans : CblasNoTrans;
    openblas_set_num_threads(nested ? 1 : threads);
    double best = 1e30;
    long reps = 1;
    for (int round = 0; round < 5; round++) {
        /* Each copy loops on its own (no fork/join per product, which an oversubscribed machine makes
         * cost a time slice); REPS grows until a round lasts 30 ms. */
        double t0 = fx_now();
        #pragma omp parallel num_threads(copies)
        {
            int c = omp_get_thread_num();
            float *A = buf + (na + nb + nc) * c, *B = A + na, *C = B + nb;
            for (long i = 0; i < reps; i++) {
                if (blas) cblas_sgemm(CblasRowMajor, ta, tb, s->M, s->N, s->K, 1.0f, A, lda, B, ldb, 0.0f, C, s->N);
                else fx_matmul(s->ta, s->tb, s->M, s->N, s->K, 1.0f, A, lda, B, ldb, 0.0f, C, s->N);
            }
        }
        double t = fx_now() - t0;
        if (t < 0.03) { reps = reps * 2 + (long)(0.03 / (t + 1e-9) * reps); continue; }
        if (t / (reps * copies) < best) best = t / (reps * copies);
    }
    if (best == 1e30) best = 1e-30; /* unreachable: some round exceeds 30 ms */
    openblas_set_num_threads(threads);
    free(buf);
    return best;
}

/* ---------------------------------------------------------------- PyTorch */

/* Runs bench/torch_step.py; returns its median step in seconds, or -1 with the reason printed. */
static double torch_seconds(const char *config, int threads, int steps) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 bench/torch_step.py '%s' --batch %d --tokens %d --rank %d "
             "--threads %d --steps %d 2>&1", config, BATCH, TOKENS, RANK, threads, steps);
    FILE *p = popen(cmd, "r");
    if (!p) { printf("skipped: PyTorch comparison (cannot run /usr/bin/python3)\n"); return -1; }
    char line[512], last[512] = "";
    double ms = -1;
    while (fgets(line, sizeof line, p)) {
        if (sscanf(line, "torch_step_ms %lf", &ms) != 1) snprintf(last, sizeof last, "%s", line);
    }
    int rc = pclose(p);
    if (ms <= 0 || rc != 0) {
        last[strcspn(last, "\n")] = 0;
        printf("skipped: PyTorch comparison (torch_step.py exited %d: %s)\n", rc, last);
        return -1;
    }
    return ms * 1e-3;
}

/* ---------------------------------------------------------------- main */

/* One model's benchmark: MODEL "roberta-base" or "gpt2" (a folder of ../shared/models). */
static int bench_model(const char *model, int threads, int steps) {
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
    fx_model m;
    if (fx_model_create(&m, &c, &a, NULL) != 0) { fprintf(stderr, "bench_step: %s\n", fx_err()); return 1; }
    fx_model_init_base(&m, 1);
    fx_model_init_adapters(&m, 2);
    fx_batch b;
    make_batch(&b, c.vocab_size, lm, 3);

    /* One step to warm up (workspace, page faults), logging its products; then the timed ones. */
    fx_matmul_log_start();
    step(&m, &b);
    fx_matmul_shape shapes[MAX_SHAPES];
    int nshapes = fx_matmul_log_stop(shapes, MAX_SHAPES);
    if (nshapes > MAX_SHAPES) { fprintf(stderr, "bench_step: more than %d product shapes\n", MAX_SHAPES); return 1; }
    double *t = fx_malloc((size_t)steps * sizeof *t);
    for (int i = 0; i < steps; i++) t[i] = step(&m, &b);
    double step_s = fx_sort_median(t, steps);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double peak_gb = ru.ru_maxrss * 1024.0 / 1e9;

    printf("%s LoRA r=%d (%s), batch %d x %d tokens, %d threads, kernel %s, OpenBLAS %s\n",
           lm ? "GPT-2 small" : "RoBERTa-base", RANK, lm ? "c_attn, c_proj; LM loss, smoothing 0.1, clip 1.0"
           : "query, value", BATCH, TOKENS, threads, fx_matmul_kernel(), openblas_get_corename());
    printf("%2s %2s %5s %5s %5s %6s %6s %9s %10s %9s %8s\n", "ta", "tb", "M", "N", "K", "nested", "calls",
           "blas GF/s", "bound ms", "fx GF/s", "fx ms");
    double bound = 0, fx_total = 0, flops_all = 0;
    for (int i = 0; i < nshapes; i++) {
        const fx_matmul_shape *s = &shapes[i];
        double flops = 2.0 * s->M * s->N * s->K;
        double sec = product_seconds(s, threads, 1), fx = product_seconds(s, threads, 0);
        bound += s->calls * sec;
        fx_total += s->calls * fx;
        flops_all += s->calls * flops;
        printf("%2d %2d %5d %5d %5d %6d %6ld %9.1f %10.2f %9.1f %8.2f\n", s->ta, s->tb, s->M, s->N, s->K, s->nested,
               s->calls, flops / sec * 1e-9, s->calls * sec * 1e3, flops / fx * 1e-9, s->calls * fx * 1e3);
    }
    printf("step (median of %d): %.1f ms; products %.1f GFLOP\n", steps, step_s * 1e3, flops_all * 1e-9);
    printf("GEMM bound (OpenBLAS on each product): %.1f ms; step / bound = %.2f (goal <= 1.6)\n", bound * 1e3,
           step_s / bound);
    printf("the same products with fx_matmul: %.1f ms (fx / OpenBLAS throughput %.2f); the rest of the step: "
           "%.1f ms\n", fx_total * 1e3, bound / fx_total, (step_s - fx_total) * 1e3);
    printf("peak memory of the process so far (ru_maxrss): %.2f GB (goal < 2.5)\n", peak_gb);
    fflush(stdout);
    double torch = lm ? -1 : torch_seconds(config, threads, steps);
    if (torch > 0)
        printf("PyTorch step (bench/torch_step.py): %.1f ms; fedex / PyTorch = %.2f\n", torch * 1e3, step_s / torch);
    if (lm) printf("skipped: a PyTorch peer for GPT-2 (bench/torch_step.py runs RoBERTa)\n");

    free(t);
    fx_batch_free(&b);
    fx_model_free(&m);
    return 0;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    int steps = argc > 2 ? atoi(argv[2]) : 5;
    const char *which = argc > 3 ? argv[3] : "all";
    if (threads < 1) threads = 1;
    if (steps < 1) steps = 1;
    fx_set_threads(threads);
    openblas_set_num_threads(threads);
    int rc = 0;
    if (!strcmp(which, "all") || !strcmp(which, "roberta")) rc |= bench_model("roberta-base", threads, steps);
    if (!strcmp(which, "all") || !strcmp(which, "gpt2")) rc |= bench_model("gpt2", threads, steps);
    return rc;
}
