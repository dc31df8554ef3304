/* bench/bench_matmul.c: GFLOP/s of fx_matmul against OpenBLAS cblas_sgemm, in the same run, on the
 * products of one RoBERTa-base LoRA training step (8 x 128 tokens, hidden 768, FFN 3072, 12 heads).
 * It checks speed only; correctness is tests/test_matmul.c's job. Usage: bench_matmul [threads] [kernel] */
#include "../fedex.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- the shapes */

typedef struct { const char *what; int ta, tb, M, N, K; int count; } shape; /* count: uses per step */

/* T = 1024 tokens, H = 768, F = 3072, per-head 128 x 64, LoRA rank 4; counts are per 12-layer step. */
static const shape SHAPES[] = {
    {"q/k/v/out fwd   X W^T", 0, 1, 1024, 768, 768, 48},
    {"ffn up fwd      X W1^T", 0, 1, 1024, 3072, 768, 12},
    {"ffn down fwd    H W2^T", 0, 1, 1024, 768, 3072, 12},
    {"q/k/v/out dX    dY W", 0, 0, 1024, 768, 768, 48},
    {"ffn down dH     dY W2", 0, 0, 1024, 3072, 768, 12},
    {"ffn up dX       dH W1", 0, 0, 1024, 768, 3072, 12},
    {"dW 768x768      dY^T X", 1, 0, 768, 768, 1024, 0},
    {"dW 3072x768     dY^T X", 1, 0, 3072, 768, 1024, 0},
    {"dW 768x3072     dY^T H", 1, 0, 768, 3072, 1024, 0},
    {"attn scores     Q K^T", 0, 1, 128, 128, 64, 96 * 12},
    {"attn context    P V", 0, 0, 128, 64, 128, 96 * 12},
    {"attn dV         P^T dO", 1, 0, 128, 64, 128, 96 * 12},
    {"attn dK         dS^T Q", 1, 0, 128, 64, 128, 96 * 12},
    {"lora down       X A^T", 0, 1, 1024, 4, 768, 4 * 12},
    {"lora up         U B^T", 0, 1, 1024, 768, 4, 2 * 12},
    {"lora dB         dY^T U", 1, 0, 768, 4, 1024, 2 * 12},
    {"lora dA         dU^T X", 1, 0, 4, 768, 1024, 2 * 12},
    {"lora dX         dU A", 0, 0, 1024, 768, 4, 2 * 12},
};
enum { NSHAPES = sizeof SHAPES / sizeof SHAPES[0] };

/* ---------------------------------------------------------------- timing */

typedef void (*gemm_fn)(const shape *s, const float *A, const float *B, float *C);

static void run_fx(const shape *s, const float *A, const float *B, float *C) {
    fx_matmul(s->ta, s->tb, s->M, s->N, s->K, 1.0f, A, s->ta ? s->M : s->K, B, s->tb ? s->K : s->N,
              0.0f, C, s->N);
}

static void run_blas(const shape *s, const float *A, const float *B, float *C) {
    cblas_sgemm(CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans, s->tb ? CblasTrans : CblasNoTrans,
                s->M, s->N, s->K, 1.0f, A, s->ta ? s->M : s->K, B, s->tb ? s->K : s->N, 0.0f, C, s->N);
}

/* Best of 5 rounds, each long enough (>= 40 ms) to swamp the clock: seconds per call. */
static double time_it(gemm_fn f, const shape *s, const float *A, const float *B, float *C) {
    f(s, A, B, C);
    double best = 1e30;
    for (int round = 0; round < 5; round++) {
        int reps = 0;
        double t0 = fx_now(), t;
        do { f(s, A, B, C); reps++; } while ((t = fx_now() - t0) < 0.04);
        if (t / reps < best) best = t / reps;
    }
    return best;
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    if (threads < 1) threads = 1;
    if (argc > 2 && fx_matmul_force(argv[2]) != 0) { fprintf(stderr, "bench_matmul: %s\n", fx_err()); return 1; }
    fx_set_threads(threads);
    openblas_set_num_threads(threads);
    printf("fx_matmul kernel %s vs OpenBLAS %s, %d threads\n", fx_matmul_kernel(), openblas_get_corename(),
           threads);
    printf("%-24s %2s %2s %5s %5s %5s %9s %9s %6s\n", "product", "ta", "tb", "M", "N", "K", "fx GF/s",
           "blas GF/s", "ratio");
    fx_rng r; fx_rng_seed(&r, 1);
    double step_fx = 0, step_blas = 0, big_fx = 0, big_blas = 0;
    for (int i = 0; i < NSHAPES; i++) {
        const shape *s = &SHAPES[i];
        size_t na = (size_t)s->M * s->K, nb = (size_t)s->K * s->N, nc = (size_t)s->M * s->N;
        float *A = fx_malloc(na * sizeof *A), *B = fx_malloc(nb * sizeof *B), *C = fx_malloc(nc * sizeof *C);
        for (size_t j = 0; j < na; j++) A[j] = (float)fx_rng_uniform(&r) - 0.5f;
        for (size_t j = 0; j < nb; j++) B[j] = (float)fx_rng_uniform(&r) - 0.5f;
        double flops = 2.0 * s->M * s->N * s->K;
        double tf = time_it(run_fx, s, A, B, C), tb = time_it(run_blas, s, A, B, C);
        printf("%-24s %2d %2d %5d %5d %5d %9.1f %9.1f %6.2f\n", s->what, s->ta, s->tb, s->M, s->N, s->K,
               flops / tf * 1e-9, flops / tb * 1e-9, tb / tf);
        step_fx += s->count * tf; step_blas += s->count * tb;
        if (s->M >= 768 && s->N >= 768 && s->K >= 768) { big_fx += tf; big_blas += tb; }
        free(A); free(B); free(C);
    }
    printf("large products (M, N, K >= 768), equal weight: fx/blas throughput %.2f\n", big_blas / big_fx);
    printf("one step's products, weighted by use: fx %.1f ms, blas %.1f ms, throughput ratio %.2f\n",
           step_fx * 1e3, step_blas * 1e3, step_blas / step_fx);
    return 0;
}
