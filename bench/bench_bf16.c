/* bench/bench_bf16.c: GFLOP/s of fx_matmul_bf16 (bf16 weights, --precision bf16) against fx_matmul (fp32)
 * in the same run, on the frozen-weight products of a LoRA step: forward Y = X W^T and backward dX = dY W,
 * RoBERTa-base (1024 tokens) and Llama-3.2-1B (256 tokens) shapes. Speed only; tests/test_bf16.c checks the
 * results. Usage: bench_bf16 [threads] [avx512bf16 | fallback] */
#include "../fedex.h"

#include <stdlib.h>
#include <string.h>

typedef struct { const char *what; int tb, M, N, K; } shape; /* tb 1: X W^T (W N x K), 0: dY W (W K x N) */

static const shape SHAPES[] = {
    {"roberta q/k/v/o fwd", 1, 1024, 768, 768},   {"roberta ffn up fwd", 1, 1024, 3072, 768},
    {"roberta ffn down fwd", 1, 1024, 768, 3072}, {"roberta q/k/v/o dX", 0, 1024, 768, 768},
    {"roberta ffn down dH", 0, 1024, 3072, 768},  {"roberta ffn up dX", 0, 1024, 768, 3072},
    {"llama q/o fwd", 1, 256, 2048, 2048},        {"llama k/v fwd", 1, 256, 512, 2048},
    {"llama gate/up fwd", 1, 256, 8192, 2048},    {"llama down fwd", 1, 256, 2048, 8192},
    {"llama q/o dX", 0, 256, 2048, 2048},         {"llama gate/up dX", 0, 256, 2048, 8192},
    {"llama down dH", 0, 256, 8192, 2048},
};
enum { NSHAPES = sizeof SHAPES / sizeof SHAPES[0] };

static double best_of(int which, const shape *s, const float *A, const float *Bf, const uint16_t *Bh, float *C) {
    double best = 1e30;
    for (int round = 0; round < 5; round++) {
        int reps = 0;
        double t0 = fx_now(), t;
        do {
            if (which) fx_matmul_bf16(s->tb, s->M, s->N, s->K, A, s->K, Bh, s->tb ? s->K : s->N, 0.0f, C, s->N);
            else fx_matmul(0, s->tb, s->M, s->N, s->K, 1.0f, A, s->K, Bf, s->tb ? s->K : s->N, 0.0f, C, s->N);
            reps++;
        } while ((t = fx_now() - t0) < 0.04);
        if (t / reps < best) best = t / reps;
    }
    return best;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    if (threads < 1) threads = 1;
    if (argc > 2 && fx_matmul_bf16_force(argv[2]) != 0) { fprintf(stderr, "bench_bf16: %s\n", fx_err()); return 1; }
    fx_set_threads(threads);
    printf("fx_matmul_bf16 kernel %s vs fx_matmul kernel %s, %d threads\n", fx_matmul_bf16_kernel(),
           fx_matmul_kernel(), threads);
    printf("%-22s %2s %5s %5s %5s %9s %9s %6s\n", "product", "tb", "M", "N", "K", "fp32 GF/s", "bf16 GF/s", "ratio");
    fx_rng r;
    fx_rng_seed(&r, 1);
    double t32 = 0, t16 = 0;
    for (int i = 0; i < NSHAPES; i++) {
        const shape *s = &SHAPES[i];
        size_t na = (size_t)s->M * s->K, nb = (size_t)s->K * s->N, nc = (size_t)s->M * s->N;
        float *A = fx_malloc(na * sizeof *A), *Bf = fx_malloc(nb * sizeof *Bf), *C = fx_malloc(nc * sizeof *C);
        uint16_t *Bh = fx_malloc(nb * sizeof *Bh);
        for (size_t j = 0; j < na; j++) A[j] = (float)fx_rng_uniform(&r) - 0.5f;
        for (size_t j = 0; j < nb; j++) Bf[j] = fx_bf16_widen(Bh[j] = fx_bf16_round((float)fx_rng_uniform(&r) - 0.5f));
        double flops = 2.0 * s->M * s->N * s->K;
        double a = best_of(0, s, A, Bf, Bh, C), b = best_of(1, s, A, Bf, Bh, C);
        printf("%-22s %2d %5d %5d %5d %9.1f %9.1f %6.2f\n", s->what, s->tb, s->M, s->N, s->K, flops / a * 1e-9,
               flops / b * 1e-9, a / b);
        t32 += a; t16 += b;
        free(A); free(Bf); free(Bh); free(C);
    }
    printf("all shapes, equal weight: bf16/fp32 throughput %.2f\n", t32 / t16);
    return 0;
}
