/* matmul_bf16.c: the products with bf16 frozen weights (--precision bf16): C = A op(B) + beta C with A fp32
 * activations rounded to bf16, B bf16, fp32 accumulation; and the fp32 <-> bf16 conversions. An AVX-512 BF16
 * kernel (VDPBF16PS) when the CPU has it, else a fallback: fx_matmul widening B and rounding A as it packs
 * them. Only the kernel is compiled for those instructions (a target attribute), so the build stays portable. */
#include "fedex.h"

#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang_analyzer__)
#include <immintrin.h>
#define FX_BF16_X86 1
#endif

/* ============================================================================================
 * bf16 numbers
 * ============================================================================================
 * bf16 is the top half of an fp32: sign, the same 8 exponent bits, 7 mantissa bits. Widening is exact;
 * narrowing rounds to nearest, ties to even, as torch's .to(torch.bfloat16): add 0x7fff plus the bit that
 * becomes the last kept one, then drop the low half (a carry into the exponent is the correct rounding up,
 * to infinity at the top). NaN is kept a (quiet) NaN. */

uint16_t fx_bf16_round(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float fx_bf16_widen(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

void fx_bf16_from_f32(uint16_t *dst, const float *src, size_t n) {
    #pragma omp parallel for schedule(static) if (n >= (1u << 16))
    for (size_t i = 0; i < n; i++) dst[i] = fx_bf16_round(src[i]);
}

void fx_bf16_to_f32(float *dst, const uint16_t *src, size_t n) {
    #pragma omp parallel for schedule(static) if (n >= (1u << 16))
    for (size_t i = 0; i < n; i++) dst[i] = fx_bf16_widen(src[i]);
}

/* ============================================================================================
 * The fallback: fx_matmul_b16, fx_matmul widening B and rounding A as it packs them
 * ============================================================================================
 * The same products as the fast kernel (bf16 x bf16 is exact in fp32), summed in fx_matmul's order. */

/* ============================================================================================
 * The AVX-512 BF16 kernel
 * ============================================================================================
 * VDPBF16PS acc, a, b: for each of 16 fp32 lanes, acc += a[2i] b[2i] + a[2i+1] b[2i+1] (bf16 pairs). So
 * the micro-kernel is an outer product over k in pairs: B packed as (kp, 32 columns, 2) bf16, i.e. one
 * 32-bit pair (B(2kp, j), B(2kp+1, j)) per column; A as bf16 rows, the pair (A(i, 2kp), A(i, 2kp+1)) of
 * row i broadcast to every lane. An MR x 32 tile of C lives in 2 MR registers over a KC slice.
 *
 *   A rounded to bf16 once (its rows split among the threads)
 *   tasks: column panels of NC, split among the threads; each packs its panel's op(B) once:
 *     M large (row blocks of MC): all K slices of the panel packed first, shared by the row blocks
 *     for each row block, each K slice of KC (packed here when there is one row block):
 *       for each MR rows:        for each 32 columns: the tile += A rows x B panel; into C
 *
 * Determinism: each C element sums its K products in one order (k pairs ascending inside a slice, the
 * slices added into C in order), whatever the thread count. Rows and columns past M and N are zero
 * padding, never stored. VDPBF16PS flushes subnormal inputs and outputs to zero (fp32's own range is
 * kept), which only moves results below 2^-126. */

enum { MR = 8, NR = 32, KC = 512, NC = 128, MC = 256 };

#ifdef FX_BF16_X86
__attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl")))
static void tile_bf16(int kp, const uint16_t *a, size_t lda /* bf16 elements */, const uint32_t *b,
                      float *c, size_t ldc, int rows, int cols, int first, float beta) {
    __m512 acc[MR][2];
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
    for (int p = 0; p < kp; p++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + (size_t)p * NR);
        __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + (size_t)p * NR + 16);
        #pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            int32_t pair;
            memcpy(&pair, a + i * lda + 2 * (size_t)p, sizeof pair);
            __m512bh x = (__m512bh)_mm512_set1_epi32(pair);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], x, b0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], x, b1);
        }
    }
    __mmask16 m0 = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1);
    __mmask16 m1 = cols >= 32 ? 0xffff : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
    for (int i = 0; i < rows; i++) {
        float *ci = c + i * ldc;
        __m512 r0 = acc[i][0], r1 = acc[i][1];
        if (!first) {
            r0 = _mm512_add_ps(r0, _mm512_maskz_loadu_ps(m0, ci));
            r1 = _mm512_add_ps(r1, _mm512_maskz_loadu_ps(m1, ci + 16));
        } else if (beta != 0.0f) {
            __m512 bv = _mm512_set1_ps(beta);
            r0 = _mm512_add_ps(r0, _mm512_mul_ps(bv, _mm512_maskz_loadu_ps(m0, ci)));
            r1 = _mm512_add_ps(r1, _mm512_mul_ps(bv, _mm512_maskz_loadu_ps(m1, ci + 16)));
        }
        _mm512_mask_storeu_ps(ci, m0, r0);
        _mm512_mask_storeu_ps(ci + 16, m1, r1);
    }
}
#endif

/* op(B)[k0 .. k0 + 2 kp) x [j0 .. j0 + w) into the kernel's order: per 32 columns, kp x 32 pairs. */
static void pack_b(uint32_t *dst, int tb, const uint16_t *B, int ldb, int K, int k0, int kp, int j0, int w) {
    int full = k0 + 2 * kp <= K;
    for (int s = 0; s < w; s += NR) {
        uint32_t *d = dst + (size_t)(s / NR) * kp * NR;
        int cols = w - s < NR ? w - s : NR;
#ifdef FX_BF16_X86
        if (tb && full) { /* W rows, whole pairs: 16 rows x 16 pairs per register transpose, each 16 rows
                           * walked along k with their lines 64 pairs ahead asked for (on a 2-core Zen 4 the
                           * forward's packing took about 30% less time than pair by pair) */
            for (int jb = 0; jb < NR; jb += 16)
                for (int pb = 0; pb < kp; pb += 16) {
                    const uint16_t *src = B + (size_t)(j0 + s + jb) * ldb + k0 + 2 * pb;
                    if (pb + 64 < kp)
                        for (int i = 0; i < 16 && i < cols - jb; i++)
                            _mm_prefetch((const char *)(src + (size_t)i * ldb + 128), _MM_HINT_T0);
                    fx_transpose16_32(d + (size_t)pb * NR + jb, NR * sizeof *d, src, (size_t)ldb * sizeof *B, cols - jb,
                                      kp - pb < 16 ? kp - pb : 16);
                }
            continue;
        }
#endif
        if (tb) /* W rows: each column's k run is contiguous, so a pair is one 32-bit load */
            for (int j = 0; j < NR; j++) {
                const uint16_t *row = B + (size_t)(j0 + s + j) * ldb;
                if (j < cols && full)
                    for (int p = 0; p < kp; p++) {
                        uint32_t pair;
                        memcpy(&pair, row + k0 + 2 * p, sizeof pair); /* little-endian: row[k] low, row[k+1] high */
                        d[(size_t)p * NR + j] = pair;
                    }
                else
                    for (int p = 0; p < kp; p++) {
                        int k = k0 + 2 * p;
                        uint32_t lo = j < cols && k < K ? row[k] : 0, hi = j < cols && k + 1 < K ? row[k + 1] : 0;
                        d[(size_t)p * NR + j] = lo | hi << 16;
                    }
            }
        else /* two rows of B side by side, interleaved */
            for (int p = 0; p < kp; p++) {
                int k = k0 + 2 * p;
                const uint16_t *r0 = B + (size_t)k * ldb + j0 + s, *r1 = r0 + ldb;
                uint32_t *dp = d + (size_t)p * NR;
                if (k + 1 < K && cols == NR)
                    for (int j = 0; j < NR; j++) dp[j] = (uint32_t)r0[j] | (uint32_t)r1[j] << 16;
                else
                    for (int j = 0; j < NR; j++)
                        dp[j] = j < cols && k < K ? (uint32_t)r0[j] | (k + 1 < K ? (uint32_t)r1[j] << 16 : 0) : 0;
            }
    }
}

#ifdef FX_BF16_X86
/* A row rounded to bf16, zero from K to KP (all of it when A is NULL, a padding row). VCVTNE2PS2BF16
 * rounds as fx_bf16_round does (nearest even, NaN kept quiet) but flushes subnormals to zero, which the
 * kernel's VDPBF16PS would do to them anyway: the products are the same. */
__attribute__((target("avx512bf16,avx512f,avx512bw,avx512vl")))
static void round_row(uint16_t *d, const float *a, int K, int Kp) {
    int k = 0;
    if (a) {
        for (; k + 32 <= K; k += 32) {
            __m512bh h = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(a + k + 16), _mm512_loadu_ps(a + k));
            _mm512_storeu_si512(d + k, (__m512i)h);
        }
        for (; k < K; k++) d[k] = fx_bf16_round(a[k]);
    }
    for (; k < Kp; k++) d[k] = 0;
}

/* 64-byte aligned scratch: a packed row of 32 pairs is one cache line, never two. */
static void *aligned64(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) fx_die("out of memory allocating %zu bytes", bytes);
    return p;
}

static void matmul_fast(int tb, int M, int N, int K, const float *A, int lda, const uint16_t *B, int ldb,
                        float beta, float *C, int ldc) {
    int Kp = (K + 1) & ~1, Mp = (M + MR - 1) / MR * MR;
    int mc = M <= 2 * MC ? Mp : MC; /* one row block unless M is large */
    int nm = (Mp + mc - 1) / mc, nn = (N + NC - 1) / NC, nk = (Kp + KC - 1) / KC;
    size_t blk = (size_t)(KC / 2) * NC; /* one packed (K slice, column panel) block, in pairs */
    uint16_t *Ab = aligned64(sizeof(uint16_t) * (size_t)Mp * Kp);
    #pragma omp parallel
    {
        /* one row block: a task per (panel, K slice) block, packed as it is used; several: a task per
         * panel, all its K slices packed once and shared by the row blocks */
        uint32_t *bp = aligned64(sizeof(uint32_t) * blk * (nm > 1 ? (size_t)nk : 1));
        #pragma omp for schedule(static)
        for (int i = 0; i < Mp; i++) round_row(Ab + (size_t)i * Kp, i < M ? A + (size_t)i * lda : NULL, K, Kp);
        #pragma omp for schedule(static)
        for (int jb = 0; jb < nn; jb++) {
            int j0 = jb * NC, w = N - j0 < NC ? N - j0 : NC;
            if (nm > 1)
                for (int kb = 0; kb < nk; kb++) {
                    int k0 = kb * KC, kp = (Kp - k0 < KC ? Kp - k0 : KC) / 2;
                    pack_b(bp + blk * (size_t)kb, tb, B, ldb, K, k0, kp, j0, w);
                }
            for (int ib = 0; ib < nm; ib++) {
                int i0 = ib * mc, i1 = i0 + mc < Mp ? i0 + mc : Mp;
                for (int kb = 0; kb < nk; kb++) {
                    int k0 = kb * KC, kp = (Kp - k0 < KC ? Kp - k0 : KC) / 2;
                    const uint32_t *b = bp + (nm > 1 ? blk * (size_t)kb : 0);
                    if (nm == 1) pack_b(bp, tb, B, ldb, K, k0, kp, j0, w);
                    for (int i = i0; i < i1 && i < M; i += MR)
                        for (int s = 0; s < w; s += NR)
                            tile_bf16(kp, Ab + (size_t)i * Kp + k0, (size_t)Kp, b + (size_t)(s / NR) * kp * NR,
                                      C + (size_t)i * ldc + j0 + s, (size_t)ldc, M - i < MR ? M - i : MR,
                                      w - s < NR ? w - s : NR, k0 == 0, beta);
                }
            }
        }
        free(bp);
    }
    free(Ab);
}
#endif

/* ============================================================================================
 * Dispatch
 * ============================================================================================ */

static int kernel_choice = -1; /* -1: not chosen yet; 0: fallback; 1: avx512bf16 */

static int cpu_has_bf16(void) {
#ifdef FX_BF16_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
#else
    return 0;
#endif
}

const char *fx_matmul_bf16_kernel(void) {
    if (kernel_choice < 0) {
        const char *e = getenv("FEDEX_BF16_KERNEL");
        kernel_choice = cpu_has_bf16() && !(e && strcmp(e, "fallback") == 0);
    }
    return kernel_choice ? "avx512bf16" : "fallback";
}

int fx_matmul_bf16_force(const char *name) {
    if (strcmp(name, "fallback") == 0) { kernel_choice = 0; return 0; }
    if (strcmp(name, "avx512bf16") == 0) {
        if (!cpu_has_bf16()) { fx_seterr("matmul_bf16: this CPU has no AVX-512 BF16 (VDPBF16PS)"); return -1; }
        kernel_choice = 1;
        return 0;
    }
    fx_seterr("matmul_bf16: unknown kernel \"%s\" (avx512bf16 | fallback)", name);
    return -1;
}

void fx_matmul_bf16(int tb, int M, int N, int K, const float *A, int lda, const uint16_t *B, int ldb, float beta,
                    float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) { /* an empty sum: C = beta C */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) C[(size_t)i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[(size_t)i * ldc + j];
        return;
    }
    fx_matmul_bf16_kernel();
#ifdef FX_BF16_X86
    if (kernel_choice == 1) { matmul_fast(tb, M, N, K, A, lda, B, ldb, beta, C, ldc); return; }
#endif
    fx_matmul_b16(tb, M, N, K, A, lda, B, ldb, beta, C, ldc);
}
