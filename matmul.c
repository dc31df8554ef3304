/* matmul.c: fx_matmul, the one matrix product of the CPU backend: a cache-blocked, OpenMP-parallel
 * GEMM in the GotoBLAS/BLIS layout, with AVX-512, AVX2+FMA and plain C micro-kernels chosen at run time.
 * It calls no BLAS and needs no global -m flags; strict IEEE fp32 throughout (no fast-math). */
#include "fedex.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#else /* built without OpenMP (the fuzz build): one thread, and the pragmas are ignored */
#define omp_get_max_threads() 1
#define omp_get_thread_num() 0
#define omp_get_num_threads() 1
#define omp_in_parallel() 0
#define omp_set_num_threads(n) ((void)(n))
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FX_X86 1
#endif

/* ============================================================================================
 * The algorithm
 * ============================================================================================
 * C (M x N) += op(A) (M x K) op(B) (K x N) is cut into blocks that fit the caches (Goto's scheme):
 *
 *   pack all of op(B) into NR-wide panels (K x NR each), shared, the threads splitting the panels
 *   for jc in N by NC:              a column block of C (its B panels: the outer caches)
 *     for pc in K by KC:            a K slice
 *       for ic in M by MC:          pack op(A)[ic:ic+MC, pc:pc+KC] into MR-tall panels (kc x MR each),
 *                                   private to the thread (L2)
 *         for jr in NC by NR:       one B panel slice (kc x NR) stays in L1 while
 *           for ir in MC by MR:     every A panel streams past it:
 *             micro-kernel: an MR x NR tile of C, held in registers, += A panel x B panel over kc
 *
 * Packing B whole, once, costs K x N floats of scratch but leaves one barrier per product (after the
 * packing) instead of two per K slice: a thread that the OS preempts then stalls the other only once.
 *
 * Packing copies each operand into the exact order the micro-kernel reads it (unit stride, zero-padded to
 * whole panels), so transposes, strides and ragged edges are all handled there and nowhere else. One
 * exception: where op(A) = A (its rows contiguous in k) and the kernel has a direct form (AVX-512, AVX2),
 * the whole row tiles read A where it lies, MR rows at a time, and only a ragged last row panel is packed (not in
 * fx_matmul_b16, whose fp32 operand is rounded as it is packed). The copy bought nothing there: the A
 * block's rows are contiguous runs that stay in L2 just as the packed block does, and the packing pass
 * was time with no multiply-adds in it (on a 2-core EPYC under AVX2 the RoBERTa-base step's large
 * products ran 1-7% faster without it, the attention ones 8-17%; on a 2-core Zen 4 under AVX-512, 1-3%
 * and 8-14%).
 *
 * Determinism. Each C element is the sum of its K products in one fixed order: k ascending within a KC
 * slice (one fp32 accumulator per element, FMA where the kernel has it), then slice after slice into C as
 *   C = alpha * acc + beta * C   (first slice; beta == 0 writes alpha * acc without reading C)
 *   C = alpha * acc + C          (later slices).
 * Threads only split the M x N tiles among themselves, never K, and the edge tiles go through the same
 * kernel as the rest, so the result is bit-for-bit the same for any thread count (not across kernels). */

/* ============================================================================================
 * Micro-kernels
 * ============================================================================================
 * kernel(kc, a, b, c, ldc, alpha, beta): acc = sum_k a[k*MR + i] * b[k*NR + j] for the MR x NR tile, then
 * c[i*ldc + j] = alpha * acc + beta * c[i*ldc + j], or alpha * acc when beta == 0 (c is not read).
 * a: (kc, MR) packed A panel; b: (kc, NR) packed B panel; c: (MR, ldc) tile of C. */
typedef void (*kernel_fn)(int kc, const float *restrict a, const float *restrict b, float *restrict c,
                          size_t ldc, float alpha, float beta);
/* kernel_fn with A read in place instead of from a packed panel: element (i, k) of the MR x kc block at
 * a[i*lda + k] (op(A) = A, row-major). Same sums in the same order as kernel_fn, so the same bits. */
typedef void (*direct_fn)(int kc, const float *restrict a, size_t lda, const float *restrict b,
                          float *restrict c, size_t ldc, float alpha, float beta);
/* The same sums for a ragged tile: only its first ROWS x COLS of C are written (and read when beta != 0),
 * and B vectors wholly past COLS are not multiplied at all. A's element (i, k) at a[i*ars + k*aks]: a
 * packed panel (ars 1, aks MR) or A in place (ars lda, aks 1). Same order of operations as kernel_fn. */
typedef void (*edge_fn)(int kc, const float *restrict a, size_t ars, size_t aks, const float *restrict b,
                        float *restrict c, size_t ldc, float alpha, float beta, int rows, int cols);

/* Blocking of one kernel. MR x NR is the register tile. KC bounds the two panels one kernel call reads
 * (A: KC x MR, B: KC x NR) to the inner caches and sets how often C is re-read (once per KC slice);
 * MC x KC (the packed A block) fits in L2; KC x NC (the B panels one A block meets) in the outer caches.
 * MC is a multiple of MR and NC of NR. */
typedef struct {
    const char *name;
    int mr, nr, kc, mc, nc;
    kernel_fn fn;
    edge_fn edge;                                /* NULL: ragged tiles go through a full tile and a copy */
    direct_fn direct;                            /* NULL: A is always packed */
    int (*available)(void);
} kernel;

/* ---------------------------------------------------------------- scalar (any CPU) */

enum { S_MR = 4, S_NR = 4 };

static void kernel_scalar(int kc, const float *restrict a, const float *restrict b, float *restrict c,
                          size_t ldc, float alpha, float beta) {
    float acc[S_MR][S_NR] = {{0}};
    for (int k = 0; k < kc; k++, a += S_MR, b += S_NR)
        for (int i = 0; i < S_MR; i++)
            for (int j = 0; j < S_NR; j++) acc[i][j] += a[i] * b[j];
    for (int i = 0; i < S_MR; i++)
        for (int j = 0; j < S_NR; j++) {
            float v = alpha * acc[i][j];
            c[i * ldc + j] = beta == 0.0f ? v : v + beta * c[i * ldc + j];
        }
}

static int always(void) { return 1; }

#ifdef FX_X86
/* ---------------------------------------------------------------- AVX2 + FMA: 6 x 16
 * 16 ymm registers: 12 accumulators (6 rows x 2 vectors of 8), 2 for the B row, 1 for the broadcast. */

enum { A2_MR = 6, A2_NR = 16 };

/* The body of both AVX2 kernels: A's element (i, k) at a[i*ars + k*aks], a packed panel (ars 1, aks MR)
 * or A itself, read in place (ars lda, aks 1). The sums are the same in the same order either way. */
__attribute__((target("avx2,fma"), always_inline))
static inline void avx2_body(int kc, const float *restrict a, size_t ars, size_t aks, const float *restrict b,
                             float *restrict c, size_t ldc, float alpha, float beta) {
    __m256 acc[A2_MR][2];
    /* The tile of C is fetched while the sums run: its 6 rows (64 bytes each, maybe across two lines) are
     * far apart in memory, and loaded (beta != 0) or stored at the end they would each wait for memory.
     * On a 2-core Zen 3 the step's large products ran 5-10% faster with it (cold operands, either order). */
    #pragma GCC unroll 8
    for (int i = 0; i < A2_MR; i++) {
        acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        _mm_prefetch((const char *)(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char *)(c + i * ldc + A2_NR - 1), _MM_HINT_T0);
    }
    for (int k = 0; k < kc; k++, a += aks, b += A2_NR) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        #pragma GCC unroll 8
        for (int i = 0; i < A2_MR; i++) {
            __m256 ai = _mm256_broadcast_ss(a + i * ars);
            acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
        }
    }
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    #pragma GCC unroll 8
    for (int i = 0; i < A2_MR; i++)
        #pragma GCC unroll 2
        for (int v = 0; v < 2; v++) {
            float *p = c + i * ldc + 8 * v;
            __m256 r = _mm256_mul_ps(va, acc[i][v]);
            if (beta != 0.0f) r = _mm256_add_ps(r, _mm256_mul_ps(vb, _mm256_loadu_ps(p)));
            _mm256_storeu_ps(p, r);
        }
}

__attribute__((target("avx2,fma")))
static void kernel_avx2(int kc, const float *restrict a, const float *restrict b, float *restrict c,
                        size_t ldc, float alpha, float beta) {
    avx2_body(kc, a, 1, A2_MR, b, c, ldc, alpha, beta);
}

__attribute__((target("avx2,fma")))
static void direct_avx2(int kc, const float *restrict a, size_t lda, const float *restrict b, float *restrict c,
                        size_t ldc, float alpha, float beta) {
    avx2_body(kc, a, lda, 1, b, c, ldc, alpha, beta);
}

static int have_avx2(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

/* ---------------------------------------------------------------- AVX-512: 8 x 48
 * 32 zmm registers: 24 accumulators (8 rows x 3 vectors of 16), 3 for the B row, the A values broadcast
 * straight from memory into the FMA. 48 divides the hidden sizes 768 and 3072 and 8 divides the token
 * count, so the step's products have no ragged tiles. */

enum { A5_MR = 8, A5_NR = 48 };

/* The kernel's body for NV of the 3 B vectors (NV * 16 columns) and ROWS stored rows of C, the last
 * vector's columns masked by LAST. The full tile is NV 3, ROWS 8, LAST all ones; ragged tiles (attention's
 * 128 and 64 columns, say) call it with fewer vectors instead of multiplying zero padding. A's element
 * (i, k) is a[i*ars + k*aks]: a packed panel (ars 1, aks MR) or A itself, read in place (ars lda, aks 1). */
__attribute__((target("avx512f"), always_inline))
static inline void avx512_body(int nv, int rows, __mmask16 last, int kc, const float *restrict a, size_t ars,
                               size_t aks, const float *restrict b, float *restrict c, size_t ldc, float alpha,
                               float beta) {
    __m512 acc[A5_MR][3];
    #pragma GCC unroll 8
    for (int i = 0; i < A5_MR; i++) acc[i][0] = acc[i][1] = acc[i][2] = _mm512_setzero_ps();
    for (int k = 0; k < kc; k++, a += aks, b += A5_NR) {
        __m512 b0 = _mm512_loadu_ps(b), b1 = b0, b2 = b0;
        if (nv > 1) b1 = _mm512_loadu_ps(b + 16);
        if (nv > 2) b2 = _mm512_loadu_ps(b + 32);
        #pragma GCC unroll 8
        for (int i = 0; i < A5_MR; i++) {
            __m512 ai = _mm512_set1_ps(a[i * ars]);
            acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
            if (nv > 1) acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
            if (nv > 2) acc[i][2] = _mm512_fmadd_ps(ai, b2, acc[i][2]);
        }
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    #pragma GCC unroll 8
    for (int i = 0; i < A5_MR; i++) {
        if (i >= rows) break;
        #pragma GCC unroll 3
        for (int v = 0; v < 3; v++) {
            if (v >= nv) break;
            float *p = c + i * ldc + 16 * v;
            __mmask16 m = v == nv - 1 ? last : (__mmask16)0xFFFF;
            __m512 r = _mm512_mul_ps(va, acc[i][v]);
            if (beta != 0.0f) r = _mm512_add_ps(r, _mm512_mul_ps(vb, _mm512_maskz_loadu_ps(m, p)));
            _mm512_mask_storeu_ps(p, m, r);
        }
    }
}

__attribute__((target("avx512f")))
static void kernel_avx512(int kc, const float *restrict a, const float *restrict b, float *restrict c,
                          size_t ldc, float alpha, float beta) {
    avx512_body(3, A5_MR, 0xFFFF, kc, a, 1, A5_MR, b, c, ldc, alpha, beta);
}

__attribute__((target("avx512f")))
static void direct_avx512(int kc, const float *restrict a, size_t lda, const float *restrict b,
                          float *restrict c, size_t ldc, float alpha, float beta) {
    avx512_body(3, A5_MR, 0xFFFF, kc, a, lda, 1, b, c, ldc, alpha, beta);
}

__attribute__((target("avx512f")))
static void edge_avx512(int kc, const float *restrict a, size_t ars, size_t aks, const float *restrict b,
                        float *restrict c, size_t ldc, float alpha, float beta, int rows, int cols) {
    int nv = (cols + 15) / 16;
    __mmask16 last = (__mmask16)((1u << (cols - 16 * (nv - 1))) - 1);
    if (nv == 1) avx512_body(1, rows, last, kc, a, ars, aks, b, c, ldc, alpha, beta);
    else if (nv == 2) avx512_body(2, rows, last, kc, a, ars, aks, b, c, ldc, alpha, beta);
    else avx512_body(3, rows, last, kc, a, ars, aks, b, c, ldc, alpha, beta);
}

static int have_avx512(void) { return __builtin_cpu_supports("avx512f"); }
#endif

/* Best first. Blocking for a core with 32-48 KiB of L1d and 1 MiB of L2 (set on a 2-core AMD EPYC, Zen 5):
 *   avx512  KC 256: A panel 8 KiB + B panel 48 KiB per kernel call, from L1 and L2 (Zen 5's L2 feeds 64
 *           bytes a cycle, enough for one 48-float B row per 24 FMAs); MC 256: a 256 KiB A block in L2;
 *           NC 3072: the B panels one A block meets, 3 MiB, in L3. ~390 GFLOP/s on 2 cores, near peak.
 *   avx2    KC 768: A 18 KiB from L1, B 48 KiB from L2 (set on a 2-core AMD EPYC, Zen 3: against KC 256,
 *           whose panels both fit L1, the products of a RoBERTa-base step ran 12-19% faster on one
 *           thread and 2-7% on two, C being read and written a third as often); MC 144: a 432 KiB A block
 *           in L2 (a 2-thread product's rectangles hold about 66 rows, 198 KiB).
 *   scalar  small blocks; it is the portable fallback, not a fast path. */
static const kernel KERNELS[] = {
#ifdef FX_X86
    {"avx512", A5_MR, A5_NR, 256, 256, 3072, kernel_avx512, edge_avx512, direct_avx512, have_avx512},
    {"avx2", A2_MR, A2_NR, 768, 144, 3072, kernel_avx2, NULL, direct_avx2, have_avx2},
#endif
    {"scalar", S_MR, S_NR, 256, 64, 1024, kernel_scalar, NULL, NULL, always},
};
enum { NKERNELS = sizeof KERNELS / sizeof KERNELS[0] };
enum { MAX_TILE = 8 * 48 };                      /* the largest MR x NR above */

/* Index into KERNELS of the one in use; -1 until the first product picks the best available. */
static int current = -1;

static const kernel *pick(void) {
    int k = __atomic_load_n(&current, __ATOMIC_ACQUIRE);
    if (k < 0) {
        #ifdef FX_X86
        __builtin_cpu_init();
        #endif
        for (k = 0; k < NKERNELS - 1 && !KERNELS[k].available(); k++) {}
        __atomic_store_n(&current, k, __ATOMIC_RELEASE);
    }
    return &KERNELS[k];
}

const char *fx_matmul_kernel(void) { return pick()->name; }

int fx_matmul_force(const char *name) {
    pick();
    for (int k = 0; k < NKERNELS; k++)
        if (strcmp(KERNELS[k].name, name) == 0) {
            if (!KERNELS[k].available()) {
                fx_seterr("fx_matmul_force: this CPU cannot run the %s kernel", name);
                return -1;
            }
            __atomic_store_n(&current, k, __ATOMIC_RELEASE);
            return 0;
        }
    fx_seterr("fx_matmul_force: no kernel named '%s' (avx512, avx2, scalar)", name);
    return -1;
}

void fx_set_threads(int n) { omp_set_num_threads(n > 0 ? n : 1); }

/* ============================================================================================
 * Packing
 * ============================================================================================ */

/* Packing only copies, so any way of moving the values gives the same panels; the transposing cases
 * (op(A) = A, op(B) = B^T: a panel's rows are strided in memory) go through 16 x 16 register transposes
 * where the CPU has AVX-512 and 8 x 8 ones where it has AVX2, the contiguous ones through memcpy (of a
 * constant size for a whole tile row, so the compiler inlines it instead of calling the library). */

#ifdef FX_X86
static int pack512 = -1;                         /* AVX-512 transposes for packing: -1 until first asked */

static int use_pack512(void) {
    int v = __atomic_load_n(&pack512, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512f") ? 1 : 0;
        __atomic_store_n(&pack512, v, __ATOMIC_RELAXED);
    }
    return v;
}

/* r[i] = row i of a 16 x 16 block; afterwards r[j] = its column j. */
__attribute__((target("avx512f"), always_inline))
static inline void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) { /* u[4i + m], 128-bit lane l: column 4l + m of rows 4i..4i+3 */
        u[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int m = 0; m < 4; m++) {
        __m512 x0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0x88), y0 = _mm512_shuffle_f32x4(u[m], u[4 + m], 0xDD);
        __m512 x1 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0x88), y1 = _mm512_shuffle_f32x4(u[8 + m], u[12 + m], 0xDD);
        r[m] = _mm512_shuffle_f32x4(x0, x1, 0x88);
        r[8 + m] = _mm512_shuffle_f32x4(x0, x1, 0xDD);
        r[4 + m] = _mm512_shuffle_f32x4(y0, y1, 0x88);
        r[12 + m] = _mm512_shuffle_f32x4(y0, y1, 0xDD);
    }
}

/* Loads NROWS rows of SRC (row stride LD), their first KN values each (the rest and the rows past NROWS
 * zero: masked loads read nothing past them), and transposes the block. */
__attribute__((target("avx512f"), always_inline))
static inline void load_transpose16(__m512 r[16], const float *src, size_t ld, int nrows, int kn) {
    __mmask16 km = (__mmask16)((1u << kn) - 1);
    for (int i = 0; i < 16; i++) r[i] = i < nrows ? _mm512_maskz_loadu_ps(km, src + (size_t)i * ld) : _mm512_setzero_ps();
    transpose16(r);
}

__attribute__((target("avx512f")))
void fx_transpose16_32(void *dst, size_t dst_stride, const void *src, size_t src_stride, int nrows, int kn) {
    __mmask16 km = (__mmask16)((1u << kn) - 1);
    __m512 r[16];
    for (int i = 0; i < 16; i++)
        r[i] = i < nrows ? _mm512_maskz_loadu_ps(km, (const char *)src + (size_t)i * src_stride) : _mm512_setzero_ps();
    transpose16(r);
    for (int k = 0; k < kn; k++) _mm512_storeu_ps((char *)dst + (size_t)k * dst_stride, r[k]);
}

/* op(A) = A into 8-row panels (the AVX-512 kernel's MR), two panels per 16-row transpose. */
__attribute__((target("avx512f")))
static void pack_a_rows512(const float *A, size_t lda, int i0, int mc, int p0, int kc, float *out) {
    for (int ip = 0; ip < mc; ip += 16) {
        int rows = mc - ip < 16 ? mc - ip : 16;
        float *o0 = out + (size_t)(ip / 8) * kc * 8, *o1 = o0 + (size_t)kc * 8;
        for (int kb = 0; kb < kc; kb += 16) {
            int kn = kc - kb < 16 ? kc - kb : 16;
            __m512 r[16];
            load_transpose16(r, A + (size_t)(i0 + ip) * lda + p0 + kb, lda, rows, kn);
            for (int k = 0; k < kn; k++) {
                _mm256_storeu_ps(o0 + (size_t)(kb + k) * 8, _mm512_castps512_ps256(r[k]));
                if (rows > 8)
                    _mm256_storeu_ps(o1 + (size_t)(kb + k) * 8,
                                     _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(r[k]), 1)));
            }
        }
    }
}

/* op(B) = B^T into one panel NR wide (a multiple of 16): 16 columns by 16 k per transpose. Each group of
 * 16 source rows is walked along k to its end before the next, with the next blocks' cache lines asked
 * for ahead (PACK_PREFETCH floats, four lines per row): walking k outermost instead keeps all NR rows'
 * streams open at once and ran at a third of memcpy's speed; this order runs at about two thirds. */
#define PACK_PREFETCH 64
__attribute__((target("avx512f")))
static void pack_b_cols512(const float *B, size_t ldb, int p0, int kc, int j0, int cols, int nr, float *out) {
    for (int jb = 0; jb < nr; jb += 16) {
        int nj = cols - jb < 16 ? (cols - jb > 0 ? cols - jb : 0) : 16;
        const float *src = B + (size_t)(j0 + jb) * ldb + p0;
        for (int kb = 0; kb < kc; kb += 16) {
            int kn = kc - kb < 16 ? kc - kb : 16;
            if (kb + PACK_PREFETCH < kc)
                for (int i = 0; i < nj; i++)
                    _mm_prefetch((const char *)(src + (size_t)i * ldb + kb + PACK_PREFETCH), _MM_HINT_T0);
            __m512 r[16];
            load_transpose16(r, src + kb, ldb, nj, kn);
            for (int k = 0; k < kn; k++) _mm512_storeu_ps(out + (size_t)(kb + k) * nr + jb, r[k]);
        }
    }
}

/* The same for AVX2: 8 x 8 register transposes. */
static int pack256 = -1;

static int use_pack256(void) {
    int v = __atomic_load_n(&pack256, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx2") ? 1 : 0;
        __atomic_store_n(&pack256, v, __ATOMIC_RELAXED);
    }
    return v;
}

/* r[i] = row i of an 8 x 8 block; afterwards r[j] = its column j. */
__attribute__((target("avx2"), always_inline))
static inline void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) { /* u[4i + m], 128-bit lane l: column 4l + m of rows 4i..4i+3 */
        u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int m = 0; m < 4; m++) {
        r[m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x20);
        r[4 + m] = _mm256_permute2f128_ps(u[m], u[4 + m], 0x31);
    }
}

/* op(A) = A into 6-row panels (the AVX2 kernel's MR): per 8 k, the 6 rows (and 2 zero rows) transposed,
 * each column's 6 values stored as 4 + 2. Rows past MC's end are zero; k past kc's last multiple of 8 are
 * copied one by one. */
__attribute__((target("avx2")))
static void pack_a_rows256(const float *A, size_t lda, int i0, int mc, int p0, int kc, float *out) {
    int k8 = kc & ~7;
    for (int ip = 0; ip < mc; ip += 6, out += (size_t)kc * 6) {
        int rows = mc - ip < 6 ? mc - ip : 6;
        const float *src = A + (size_t)(i0 + ip) * lda + p0;
        for (int kb = 0; kb < k8; kb += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; i++) r[i] = i < rows ? _mm256_loadu_ps(src + (size_t)i * lda + kb) : _mm256_setzero_ps();
            transpose8(r);
            for (int k = 0; k < 8; k++) {
                float *o = out + (size_t)(kb + k) * 6;
                _mm_storeu_ps(o, _mm256_castps256_ps128(r[k]));
                _mm_storel_pi((__m64 *)(o + 4), _mm256_extractf128_ps(r[k], 1));
            }
        }
        for (int k = k8; k < kc; k++)
            for (int i = 0; i < 6; i++) out[(size_t)k * 6 + i] = i < rows ? src[(size_t)i * lda + k] : 0.0f;
    }
}

/* op(B) = B^T into one panel NR wide (a multiple of 8): 8 columns by 8 k per transpose. */
__attribute__((target("avx2")))
static void pack_b_cols256(const float *B, size_t ldb, int p0, int kc, int j0, int cols, int nr, float *out) {
    int k8 = kc & ~7;
    for (int jb = 0; jb < nr; jb += 8) {
        int nj = cols - jb < 8 ? (cols - jb > 0 ? cols - jb : 0) : 8;
        const float *src = B + (size_t)(j0 + jb) * ldb + p0;
        for (int kb = 0; kb < k8; kb += 8) {
            __m256 r[8];
            for (int j = 0; j < 8; j++) r[j] = j < nj ? _mm256_loadu_ps(src + (size_t)j * ldb + kb) : _mm256_setzero_ps();
            transpose8(r);
            for (int k = 0; k < 8; k++) _mm256_storeu_ps(out + (size_t)(kb + k) * nr + jb, r[k]);
        }
        for (int k = k8; k < kc; k++)
            for (int j = 0; j < 8; j++) out[(size_t)k * nr + jb + j] = j < nj ? src[(size_t)j * ldb + k] : 0.0f;
    }
}
#else
static int use_pack512(void) { return 0; }
static int use_pack256(void) { return 0; }
#endif

/* op(A)[i0:i0+mc, p0:p0+kc] into ceil(mc/MR) panels, each (kc, MR): out[(panel*kc + k)*MR + i].
 * Rows past mc are zero: they only feed the discarded rows of an edge tile. */
static void pack_a(int ta, const float *A, size_t lda, int i0, int mc, int p0, int kc, int mr, float *out) {
#ifdef FX_X86
    if (!ta && mr == 8 && use_pack512()) { pack_a_rows512(A, lda, i0, mc, p0, kc, out); return; }
    if (!ta && mr == 6 && use_pack256()) { pack_a_rows256(A, lda, i0, mc, p0, kc, out); return; }
#endif
    for (int ip = 0; ip < mc; ip += mr, out += (size_t)kc * mr) {
        int rows = mc - ip < mr ? mc - ip : mr;
        if (ta) { /* op(A)[i][k] = A[k][i]: each k gives a contiguous run of rows */
            for (int k = 0; k < kc; k++) {
                const float *src = A + (size_t)(p0 + k) * lda + i0 + ip;
                float *dst = out + (size_t)k * mr;
                if (rows == 8 && mr == 8) { memcpy(dst, src, 8 * sizeof *dst); continue; } /* inlined: 32 bytes */
                if (rows == 6 && mr == 6) { memcpy(dst, src, 6 * sizeof *dst); continue; }
                memcpy(dst, src, (size_t)rows * sizeof *dst);
                if (rows < mr) memset(dst + rows, 0, (size_t)(mr - rows) * sizeof *dst);
            }
        } else {
            for (int i = 0; i < rows; i++) {
                const float *src = A + (size_t)(i0 + ip + i) * lda + p0;
                for (int k = 0; k < kc; k++) out[(size_t)k * mr + i] = src[k];
            }
            for (int i = rows; i < mr; i++)
                for (int k = 0; k < kc; k++) out[(size_t)k * mr + i] = 0.0f;
        }
    }
}

/* One NR-wide panel of op(B)[p0:p0+kc, j0:j0+cols], (kc, NR): out[k*NR + j], columns past cols zero. */
static void pack_b_panel(int tb, const float *B, size_t ldb, int p0, int kc, int j0, int cols, int nr,
                         float *out) {
    if (tb) { /* op(B)[k][j] = B[j][k]: each column is a contiguous run of k */
#ifdef FX_X86
        if (nr % 16 == 0 && use_pack512()) { pack_b_cols512(B, ldb, p0, kc, j0, cols, nr, out); return; }
        if (nr % 8 == 0 && use_pack256()) { pack_b_cols256(B, ldb, p0, kc, j0, cols, nr, out); return; }
#endif
        for (int j = 0; j < cols; j++) {
            const float *src = B + (size_t)(j0 + j) * ldb + p0;
            for (int k = 0; k < kc; k++) out[(size_t)k * nr + j] = src[k];
        }
        for (int j = cols; j < nr; j++)
            for (int k = 0; k < kc; k++) out[(size_t)k * nr + j] = 0.0f;
    } else {
        for (int k = 0; k < kc; k++) {
            const float *src = B + (size_t)(p0 + k) * ldb + j0;
            float *dst = out + (size_t)k * nr;
            if (cols == 16 && nr == 16) { memcpy(dst, src, 16 * sizeof *dst); continue; } /* inlined */
            if (cols == 48 && nr == 48) { memcpy(dst, src, 48 * sizeof *dst); continue; }
            memcpy(dst, src, (size_t)cols * sizeof *dst);
            if (cols < nr) memset(dst + cols, 0, (size_t)(nr - cols) * sizeof *dst);
        }
    }
}

/* --- fx_matmul_b16's operands: bf16 widened while packing (exact), fp32 rounded to bf16 in the panels. */

#ifdef FX_X86
/* fx_bf16_round's rounding on the bits, 8 at a time: keep the top half after adding 0x7fff and the last
 * kept bit, or set the quiet bit of a NaN. Returns how many it did (the whole vectors of N). */
__attribute__((target("avx2")))
static size_t round_bf16_avx2(float *x, size_t n) {
    const __m256i abs = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u), half = _mm256_set1_epi32(0x7fff);
    const __m256i one = _mm256_set1_epi32(1), quiet = _mm256_set1_epi32(0x00400000);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i u = _mm256_loadu_si256((const __m256i *)(x + i));
        __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs), inf);
        __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, half), _mm256_and_si256(_mm256_srli_epi32(u, 16), one));
        r = _mm256_blendv_epi8(r, _mm256_or_si256(u, quiet), nan);
        _mm256_storeu_si256((__m256i *)(x + i), _mm256_and_si256(r, hi));
    }
    return i;
}
#endif
/* x = widen(round(x)) (fx_bf16_round, fx_bf16_widen). */
static void round_bf16(float *x, size_t n) {
    size_t i = 0;
#ifdef FX_X86
    if (use_pack256()) i = round_bf16_avx2(x, n);
#endif
    for (; i < n; i++) x[i] = fx_bf16_widen(fx_bf16_round(x[i]));
}
/* pack_a's panels from a bf16 op(A), widened. */
static void pack_a16(int ta, const uint16_t *A, size_t lda, int i0, int mc, int p0, int kc, int mr, float *out) {
    for (int ip = 0; ip < mc; ip += mr, out += (size_t)kc * mr) {
        int rows = mc - ip < mr ? mc - ip : mr;
        for (int i = 0; i < mr; i++)
            for (int k = 0; k < kc; k++) {
                size_t at = ta ? (size_t)(p0 + k) * lda + i0 + ip + i : (size_t)(i0 + ip + i) * lda + p0 + k;
                out[(size_t)k * mr + i] = i < rows ? fx_bf16_widen(A[at]) : 0.0f;
            }
    }
}
#ifdef FX_X86
/* op(B) = B^T from bf16, NR a multiple of 8: 8 columns by 8 k widened and transposed at a time. */
__attribute__((target("avx2")))
static void pack_b16_cols256(const uint16_t *B, size_t ldb, int K, int j0, int cols, int nr, float *out) {
    int k8 = K & ~7;
    for (int jb = 0; jb < nr; jb += 8) {
        int nj = cols - jb < 8 ? (cols - jb > 0 ? cols - jb : 0) : 8;
        const uint16_t *src = B + (size_t)(j0 + jb) * ldb;
        for (int kb = 0; kb < k8; kb += 8) {
            __m256 r[8];
            for (int j = 0; j < 8; j++) {
                __m128i h = j < nj ? _mm_loadu_si128((const __m128i *)(src + (size_t)j * ldb + kb)) : _mm_setzero_si128();
                r[j] = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
            }
            transpose8(r);
            for (int k = 0; k < 8; k++) _mm256_storeu_ps(out + (size_t)(kb + k) * nr + jb, r[k]);
        }
        for (int k = k8; k < K; k++)
            for (int j = 0; j < 8; j++) out[(size_t)k * nr + jb + j] = j < nj ? fx_bf16_widen(src[(size_t)j * ldb + k]) : 0.0f;
    }
}
/* op(B) = B from bf16, a whole panel of 16 columns: each row's 16 values widened by two 8-wide moves. */
__attribute__((target("avx2")))
static void pack_b16_rows256(const uint16_t *B, size_t ldb, int K, int j0, float *out) {
    for (int k = 0; k < K; k++) {
        const uint16_t *src = B + (size_t)k * ldb + j0;
        __m128i lo = _mm_loadu_si128((const __m128i *)src), hi = _mm_loadu_si128((const __m128i *)(src + 8));
        _mm256_storeu_si256((__m256i *)(out + (size_t)k * 16), _mm256_slli_epi32(_mm256_cvtepu16_epi32(lo), 16));
        _mm256_storeu_si256((__m256i *)(out + (size_t)k * 16 + 8), _mm256_slli_epi32(_mm256_cvtepu16_epi32(hi), 16));
    }
}
#endif
/* pack_b_panel's panel (all K) from a bf16 op(B), widened: read along B's rows either way. */
static void pack_b16(int tb, const uint16_t *B, size_t ldb, int K, int j0, int cols, int nr, float *out) {
#ifdef FX_X86
    if (tb && nr % 8 == 0 && use_pack256()) { pack_b16_cols256(B, ldb, K, j0, cols, nr, out); return; }
    if (!tb && nr == 16 && cols == 16 && use_pack256()) { pack_b16_rows256(B, ldb, K, j0, out); return; }
#endif
    if (tb) { /* op(B)[k][j] = B[j][k] */
        for (int j = 0; j < nr; j++) {
            const uint16_t *src = B + (size_t)(j0 + j) * ldb;
            for (int k = 0; k < K; k++) out[(size_t)k * nr + j] = j < cols ? fx_bf16_widen(src[k]) : 0.0f;
        }
    } else {
        for (int k = 0; k < K; k++) {
            const uint16_t *src = B + (size_t)k * ldb + j0;
            for (int j = 0; j < nr; j++) out[(size_t)k * nr + j] = j < cols ? fx_bf16_widen(src[j]) : 0.0f;
        }
    }
}

/* ============================================================================================
 * The product
 * ============================================================================================ */

/* Scratch that lives as long as its thread: the packed blocks are reused from call to call instead of
 * being allocated (and page-faulted) each time. A thread-specific key frees them when the thread ends
 * (OpenMP retires pool threads when a team shrinks). */
typedef struct { float *a, *b; size_t na, nb; } scratch;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *p) {
    scratch *s = p;
    free(s->a); free(s->b); free(s);
}

static void scratch_key_create(void) {
    if (pthread_key_create(&scratch_key, scratch_free) != 0) fx_die("matmul: pthread_key_create failed");
}

static scratch *my_scratch(void) {
    pthread_once(&scratch_once, scratch_key_create);
    scratch *s = pthread_getspecific(scratch_key);
    if (!s) {
        s = fx_calloc(1, sizeof *s);
        if (pthread_setspecific(scratch_key, s) != 0) fx_die("matmul: pthread_setspecific failed");
    }
    return s;
}

/* 64-byte aligned, so that no vector load of a packed panel row straddles two cache lines (malloc's
 * large blocks start 16 bytes past a page, which splits every other 32-byte load and every 64-byte one). */
static float *grow(float **buf, size_t *have, size_t need) {
    if (need > *have) {
        free(*buf);
        void *p = NULL;
        if (posix_memalign(&p, 64, need * sizeof **buf) != 0) fx_die("out of memory allocating %zu floats", need);
        *buf = p;
        *have = need;
    }
    return *buf;
}

/* C = beta * C over M x N (alpha == 0 or K == 0): nothing of A or B is read; beta == 0 writes zeros. */
static void scale_c(int M, int N, float beta, float *C, size_t ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
}

/* Below this much work (a 128 x 128 x 256 product's multiply-adds, ~30 us on one core) one thread does
 * the whole product. Waking a second thread costs microseconds on an idle machine but a scheduler time
 * slice (milliseconds) on a busy one, and small products cannot win that back. The work counts each
 * element of A, B and C as PARALLEL_MOVE_COST multiply-adds besides the multiply-adds themselves: the thin
 * products (a LoRA rank of 4 against 1024 x 768 activations, a decode step's 1 x 768 row against a
 * weight) do few multiply-adds but move megabytes, memory-bound work that two cores share well (on a
 * 2-core EPYC they ran in 0.60-0.76x the time on two threads). Depends on the shape alone. */
#define PARALLEL_MIN_WORK (128.0 * 128.0 * 256.0)
#define PARALLEL_MOVE_COST 8.0

/* One product as the threads see it: C with element (i, j) at C[i*rs + j*cs], (rs, cs) = (ldc, 1) for C
 * itself, (1, ldc) when the caller computes C^T = op(B)^T op(A)^T instead (see fx_matmul); op(B) packed
 * whole into BPACK, (npanels, K, NR). */
typedef struct {
    const kernel *kn;
    int ta, tb, M, N, K, npanels;
    int split_m;                                 /* rectangles of whole rows (1) or whole columns (0) */
    float alpha, beta;
    const float *A, *B;
    size_t lda, ldb;
    float *C;
    size_t rs, cs;
    float *bpack;
    /* fx_matmul_b16: the operand held in bf16 (A16 or B16; A or B NULL then) is widened as it is packed,
     * and the other one, fp32, rounded to bf16 in its packed panels */
    const uint16_t *A16, *B16;
} product;

static void pack_b_one(const product *g, int p) {
    int NR = g->kn->nr, cols = g->N - p * NR < NR ? g->N - p * NR : NR;
    float *out = g->bpack + (size_t)p * g->K * NR;
    if (g->B16) { pack_b16(g->tb, g->B16, g->ldb, g->K, p * NR, cols, NR, out); return; }
    pack_b_panel(g->tb, g->B, g->ldb, 0, g->K, p * NR, cols, NR, out);
    if (g->A16) round_bf16(out, (size_t)g->K * NR);
}

/* Rows K0..K1 of op(B) = B (fp32), into every panel: the same panels as pack_b_one's, but each row of B
 * is read once from start to end, where a panel at a time reads a 48-float piece of every row (a stride
 * that defeats the hardware prefetcher: that order ran at 0.6x this one's speed). */
#define PACK_ROWS 32                             /* rows of B per share of the threads' packing */
static void pack_b_rows(const product *g, int k0, int k1) {
    const int NR = g->kn->nr, N = g->N, K = g->K;
    for (int k = k0; k < k1; k++) {
        const float *src = g->B + (size_t)k * g->ldb;
        for (int p = 0; p < g->npanels; p++) {
            float *dst = g->bpack + ((size_t)p * K + k) * NR;
            int cols = N - p * NR < NR ? N - p * NR : NR;
            if (cols == 48 && NR == 48) { memcpy(dst, src + p * NR, 48 * sizeof *dst); continue; } /* inlined */
            if (cols == 16 && NR == 16) { memcpy(dst, src + p * NR, 16 * sizeof *dst); continue; }
            memcpy(dst, src + p * NR, (size_t)cols * sizeof *dst);
            if (cols < NR) memset(dst + cols, 0, (size_t)(NR - cols) * sizeof *dst);
        }
    }
}

/* The blocked loops above over one rectangle of C: row tiles LO..HI (all columns) when the product is
 * split along M, column panels LO..HI (all rows) when along N. Tiles sit on the one MR x NR grid whatever
 * the rectangle, and each C element is summed by the same kernel in the same order, so how C is cut into
 * rectangles, and which thread takes which, changes no bit. */
static void gemm_part(const product *g, int lo, int hi) {
    const kernel *kn = g->kn;
    const int MR = kn->mr, NR = kn->nr, KC = kn->kc, MC = kn->mc, NC = kn->nc;
    const int M = g->M, N = g->N, K = g->K;
    const size_t rs = g->rs, cs = g->cs;
    int m0 = 0, m1 = M, n0 = 0, n1 = N;          /* the rectangle of C */
    if (g->split_m) { m0 = lo * MR; m1 = hi * MR < M ? hi * MR : M; }
    else { n0 = lo * NR; n1 = hi * NR < N ? hi * NR : N; }
    int kcb = K < KC ? K : KC;
    int mcb = m1 - m0 < MC ? (m1 - m0 + MR - 1) / MR * MR : MC;
    scratch *own = my_scratch();
    float *apack = grow(&own->a, &own->na, (size_t)kcb * (mcb > 0 ? mcb : MR)); /* (kcb, mcb) */
    float tile[MAX_TILE];                        /* (MR, NR) */

    /* A read in place (the kernel has a direct form, op(A) = A in fp32): only a ragged last row panel of
     * each A block is packed, into APACK's first panel; the whole rows are read where they are. */
    const int direct = kn->direct && !g->ta && g->A && !g->B16;
    for (int jc = n0; jc < n1; jc += NC) {
        int jhi = jc + NC < n1 ? jc + NC : n1;
        for (int pc = 0; pc < K; pc += KC) {
            int kc = K - pc < KC ? K - pc : KC;
            float beta_eff = pc == 0 ? g->beta : 1.0f;
            for (int ic = m0; ic < m1; ic += MC) {
                int mc = m1 - ic < MC ? m1 - ic : MC, whole = direct ? mc / MR * MR : 0;
                if (g->A16) pack_a16(g->ta, g->A16, g->lda, ic, mc, pc, kc, MR, apack);
                else if (whole < mc) pack_a(g->ta, g->A, g->lda, ic + whole, mc - whole, pc, kc, MR, apack);
                if (g->B16) round_bf16(apack, (size_t)(mc + MR - 1) / MR * MR * kc);
                for (int jr = jc; jr < jhi; jr += NR) {
                    int cols = jhi - jr < NR ? jhi - jr : NR;
                    const float *bp = g->bpack + ((size_t)(jr / NR) * K + pc) * NR;
                    for (int ir = 0; ir < mc; ir += MR) {
                        int rows = mc - ir < MR ? mc - ir : MR;
                        int in_place = ir < whole;   /* else packed: the block's rows from WHOLE, at APACK's start */
                        const float *ap = in_place ? g->A + (size_t)(ic + ir) * g->lda + pc
                                                   : apack + (size_t)(ir - whole) * kc;
                        float *c = g->C + (size_t)(ic + ir) * rs + (size_t)jr * cs;
                        if (rows == MR && cols == NR && cs == 1) {
                            if (in_place) kn->direct(kc, ap, g->lda, bp, c, rs, g->alpha, beta_eff);
                            else kn->fn(kc, ap, bp, c, rs, g->alpha, beta_eff);
                        } else if (kn->edge && cs == 1) {
                            kn->edge(kc, ap, in_place ? g->lda : 1, in_place ? 1 : (size_t)MR, bp, c, rs, g->alpha,
                                     beta_eff, rows, cols);
                        } else { /* ragged or transposed tile: the kernel's sums, then its epilogue */
                            if (in_place) kn->direct(kc, ap, g->lda, bp, tile, (size_t)NR, 1.0f, 0.0f);
                            else kn->fn(kc, ap, bp, tile, (size_t)NR, 1.0f, 0.0f);
                            for (int i = 0; i < rows; i++)
                                for (int j = 0; j < cols; j++) {
                                    float v = g->alpha * tile[i * NR + j];
                                    float *cij = c + i * rs + j * cs;
                                    *cij = beta_eff == 0.0f ? v : v + beta_eff * *cij;
                                }
                        }
                    }
                }
            }
        }
    }
}

/* OP16: the operand held in bf16 (0 none, 1 A, 2 B), the other one rounded (fx_matmul_b16). */
static void gemm(const kernel *kn, int ta, int tb, int M, int N, int K, float alpha, const void *A, size_t lda,
                 const void *B, size_t ldb, float beta, float *C, size_t rs, size_t cs, int op16) {
    int npanels = (N + kn->nr - 1) / kn->nr, mtiles = (M + kn->mr - 1) / kn->mr;
    scratch *mine = my_scratch();
    /* C is cut along M, or along N when it has fewer row tiles than column panels */
    product g = {kn, ta, tb, M, N, K, npanels, mtiles >= npanels, alpha, beta, op16 == 1 ? NULL : A,
                 op16 == 2 ? NULL : B, lda, ldb, C, rs, cs, grow(&mine->b, &mine->nb, (size_t)npanels * K * kn->nr),
                 op16 == 1 ? A : NULL, op16 == 2 ? B : NULL};
    int tiles = g.split_m ? mtiles : npanels;

    /* Small products run on one thread (PARALLEL_MIN_WORK), and so do products called inside someone
     * else's parallel region (one per attention head, say): we are one of its threads already. Those
     * open no parallel region at all (even a team of one costs a fork and a join). */
    double work = (double)M * N * K + PARALLEL_MOVE_COST * ((double)M * K + (double)K * N + (double)M * N);
    int nt = work < PARALLEL_MIN_WORK || omp_in_parallel() ? 1 : omp_get_max_threads();
    const int by_rows = !tb && g.B && !g.A16;   /* op(B) = B in plain fp32: pack_b_rows */
    if (nt == 1) {
        if (by_rows) pack_b_rows(&g, 0, K);
        else for (int p = 0; p < npanels; p++) pack_b_one(&g, p);
        gemm_part(&g, 0, tiles);
        return;
    }
    /* Threads take rectangles of PER tiles (about 8 per thread, at most an A block's rows) as they come
     * free, so one that the OS preempts holds up the other by one rectangle, not by half the product. */
    int per = (tiles + 8 * nt - 1) / (8 * nt), cap = g.split_m ? kn->mc / kn->mr : tiles;
    per = per < 1 ? 1 : per > cap ? cap : per;
    int units = (tiles + per - 1) / per;
    #pragma omp parallel num_threads(nt)
    {
        if (by_rows) {
            #pragma omp for schedule(dynamic, 1)
            for (int k = 0; k < K; k += PACK_ROWS) pack_b_rows(&g, k, k + PACK_ROWS < K ? k + PACK_ROWS : K);
        } else {
            #pragma omp for schedule(dynamic, 1)
            for (int p = 0; p < npanels; p++) pack_b_one(&g, p);
        }
        /* (the implied barrier: every panel is packed before anyone reads one; the only one) */
        #pragma omp for schedule(dynamic, 1) nowait
        for (int u = 0; u < units; u++) gemm_part(&g, u * per, (u + 1) * per < tiles ? (u + 1) * per : tiles);
    }
}

/* ============================================================================================
 * Thin products (AVX-512)
 * ============================================================================================
 * A LoRA rank against activations: x A^T and dy B (N = r), dy^T z (N = r) and dz^T x (M = r). They do
 * few multiply-adds and read megabytes, and the blocked GEMM serves them badly: a tile 48 wide holds r = 4
 * columns, or, computed as C^T, the activations are packed (a 3 MB copy) to be read once. Here the long
 * operand is read once, where it lies, and the short side's sums sit in registers:
 *
 *   dots   op(A) = A, N <= THIN: 16 rows of A at a time, transposed in registers 16 k at a time, so a
 *          vector holds one k of 16 rows; it meets op(B)(k, j) broadcast, for each of the N columns;
 *   outer  op(A) = A^T, op(B) = B, M or N <= THIN: row k of the long operand (64 or 32 values of it)
 *          meets each of the short one's values in row k, broadcast.
 *
 * Both sum each C element's products exactly as the GEMM does: one FMA chain from zero over k ascending
 * within each KC slice of the kernel in use, then C = alpha * acc + beta * C on the first slice (alpha *
 * acc alone when beta == 0) and C = alpha * acc + C on the later ones. So a thin product gives the GEMM's
 * bits, for any layout of A and B and any thread count (threads split rows or the long side, never k). */

enum { THIN = 8 };

#ifdef FX_X86
/* C = alpha * acc + (first slice ? beta : 1) * C for one vector of C values ending up at C + e * step, e
 * < n; the GEMM's epilogue, multiply and add rounded separately. */
__attribute__((target("avx512f"), always_inline))
static inline void thin_store(__m512 acc, float alpha, float beta, int first, float *c, size_t step, int n) {
    float t[16];
    _mm512_storeu_ps(t, _mm512_mul_ps(_mm512_set1_ps(alpha), acc));
    float b = first ? beta : 1.0f;
    for (int e = 0; e < n; e++) {
        float *ce = c + (size_t)e * step;
        *ce = b == 0.0f ? t[e] : t[e] + b * *ce;
    }
}

/* dots over rows [i0, i1) (i1 - i0 <= 16) for N = NB columns; op(B)(k, j) at B[k*bk + j*bj]. */
__attribute__((target("avx512f"), always_inline))
static inline void dots_body(int NB, int i0, int i1, int K, int KC, float alpha, const float *A, size_t lda,
                             const float *B, size_t bk, size_t bj, float beta, float *C, size_t ldc) {
    int rows = i1 - i0;
    for (int pc = 0; pc < K; pc += KC) {
        int kc = K - pc < KC ? K - pc : KC;
        __m512 acc[THIN];
        #pragma GCC unroll 8
        for (int j = 0; j < NB; j++) acc[j] = _mm512_setzero_ps();
        for (int kb = 0; kb < kc; kb += 16) {
            int kn = kc - kb < 16 ? kc - kb : 16;
            __m512 col[16];
            load_transpose16(col, A + (size_t)i0 * lda + pc + kb, lda, rows, kn);
            const float *bp = B + (size_t)(pc + kb) * bk;
            for (int k = 0; k < kn; k++, bp += bk)
                #pragma GCC unroll 8
                for (int j = 0; j < NB; j++) acc[j] = _mm512_fmadd_ps(col[k], _mm512_set1_ps(bp[j * bj]), acc[j]);
        }
        for (int j = 0; j < NB; j++) thin_store(acc[j], alpha, beta, pc == 0, C + (size_t)i0 * ldc + j, ldc, rows);
    }
}

__attribute__((target("avx512f")))
static void dots512(int N, int i0, int i1, int K, int KC, float alpha, const float *A, size_t lda, const float *B,
                    size_t bk, size_t bj, float beta, float *C, size_t ldc) {
    switch (N) {
    case 1: dots_body(1, i0, i1, K, KC, alpha, A, lda, B, bk, bj, beta, C, ldc); break;
    case 2: dots_body(2, i0, i1, K, KC, alpha, A, lda, B, bk, bj, beta, C, ldc); break;
    case 3: dots_body(3, i0, i1, K, KC, alpha, A, lda, B, bk, bj, beta, C, ldc); break;
    case 4: dots_body(4, i0, i1, K, KC, alpha, A, lda, B, bk, bj, beta, C, ldc); break;
    case 5: dots_body(5, i0, i1, K, KC, alpha, A, lda, B, bk, bj, beta, C, ldc); break;
    case 6: dots_body(6, i0, i1, K, KC, alpha, A, lda, B, bk, bj, beta, C, ldc); break;
    case 7: dots_body(7, i0, i1, K, KC, alpha, A, lda, B, bk, bj, beta, C, ldc); break;
    default: dots_body(8, i0, i1, K, KC, alpha, A, lda, B, bk, bj, beta, C, ldc); break;
    }
}

/* outer over the long side's [l0, l1) (at most 16 LV values) for NS short values a row: S(k, s) at
 * S[k*lds + s], L(k, l) at L[k*ldl + l], C(s, l) at C[s*css + l*csl]. */
__attribute__((target("avx512f"), always_inline))
static inline void outer_body(int NS, int LV, int l0, int l1, int K, int KC, float alpha, const float *S,
                              size_t lds, const float *L, size_t ldl, float beta, float *C, size_t css, size_t csl) {
    __mmask16 mk[4];
    #pragma GCC unroll 4
    for (int v = 0; v < LV; v++) {
        int left = l1 - l0 - 16 * v;
        mk[v] = left >= 16 ? (__mmask16)0xFFFF : left <= 0 ? 0 : (__mmask16)((1u << left) - 1);
    }
    for (int pc = 0; pc < K; pc += KC) {
        int kend = K - pc < KC ? K : pc + KC;
        __m512 acc[THIN][4];
        #pragma GCC unroll 8
        for (int s = 0; s < NS; s++)
            #pragma GCC unroll 4
            for (int v = 0; v < LV; v++) acc[s][v] = _mm512_setzero_ps();
        for (int k = pc; k < kend; k++) {
            const float *lr = L + (size_t)k * ldl + l0, *sr = S + (size_t)k * lds;
            __m512 x[4];
            #pragma GCC unroll 4
            for (int v = 0; v < LV; v++) x[v] = _mm512_maskz_loadu_ps(mk[v], lr + 16 * v);
            #pragma GCC unroll 8
            for (int s = 0; s < NS; s++) {
                __m512 b = _mm512_set1_ps(sr[s]);
                #pragma GCC unroll 4
                for (int v = 0; v < LV; v++) acc[s][v] = _mm512_fmadd_ps(b, x[v], acc[s][v]);
            }
        }
        for (int s = 0; s < NS; s++)
            for (int v = 0; v < LV; v++) {
                int left = l1 - l0 - 16 * v;
                if (left <= 0) break;
                float *c = C + (size_t)s * css + (size_t)(l0 + 16 * v) * csl;
                if (csl == 1) { /* a run of C's row: vector loads and stores */
                    __m512 r = _mm512_mul_ps(_mm512_set1_ps(alpha), acc[s][v]);
                    float b = pc == 0 ? beta : 1.0f;
                    if (b != 0.0f) r = _mm512_add_ps(r, _mm512_mul_ps(_mm512_set1_ps(b), _mm512_maskz_loadu_ps(mk[v], c)));
                    _mm512_mask_storeu_ps(c, mk[v], r);
                } else {
                    thin_store(acc[s][v], alpha, beta, pc == 0, c, csl, left < 16 ? left : 16);
                }
            }
    }
}

/* 4 vectors (64 values of L) a block for NS <= 4, 2 for NS <= 8: 16 accumulators either way. */
__attribute__((target("avx512f")))
static void outer512(int NS, int l0, int l1, int K, int KC, float alpha, const float *S, size_t lds, const float *L,
                     size_t ldl, float beta, float *C, size_t css, size_t csl) {
    switch (NS) {
    case 1: outer_body(1, 4, l0, l1, K, KC, alpha, S, lds, L, ldl, beta, C, css, csl); break;
    case 2: outer_body(2, 4, l0, l1, K, KC, alpha, S, lds, L, ldl, beta, C, css, csl); break;
    case 3: outer_body(3, 4, l0, l1, K, KC, alpha, S, lds, L, ldl, beta, C, css, csl); break;
    case 4: outer_body(4, 4, l0, l1, K, KC, alpha, S, lds, L, ldl, beta, C, css, csl); break;
    case 5: outer_body(5, 2, l0, l1, K, KC, alpha, S, lds, L, ldl, beta, C, css, csl); break;
    case 6: outer_body(6, 2, l0, l1, K, KC, alpha, S, lds, L, ldl, beta, C, css, csl); break;
    case 7: outer_body(7, 2, l0, l1, K, KC, alpha, S, lds, L, ldl, beta, C, css, csl); break;
    default: outer_body(8, 2, l0, l1, K, KC, alpha, S, lds, L, ldl, beta, C, css, csl); break;
    }
}
#endif

/* Runs a thin product and returns 1, or returns 0 (not thin, or not the AVX-512 kernel) having done
 * nothing. Threads as gemm's: one below PARALLEL_MIN_WORK or inside a parallel region, else 16-row blocks
 * (dots) or blocks of the long side (outer) handed out as they come free. */
static int thin(const kernel *kn, int ta, int tb, int M, int N, int K, float alpha, const float *A, size_t lda,
                const float *B, size_t ldb, float beta, float *C, size_t ldc) {
#ifdef FX_X86
    if (kn->fn != kernel_avx512 || !use_pack512()) return 0;
    int dots = !ta && N <= THIN, outer = ta && !tb && (M <= THIN || N <= THIN);
    if (!dots && !outer) return 0;
    double work = (double)M * N * K + PARALLEL_MOVE_COST * ((double)M * K + (double)K * N + (double)M * N);
    int nt = work < PARALLEL_MIN_WORK || omp_in_parallel() ? 1 : omp_get_max_threads();
    if (dots) {
        size_t bk = tb ? 1 : ldb, bj = tb ? ldb : 1; /* op(B)(k, j) at B[k*bk + j*bj] */
        int units = (M + 15) / 16;
        #pragma omp parallel for schedule(dynamic, 4) num_threads(nt) if (nt > 1)
        for (int u = 0; u < units; u++)
            dots512(N, u * 16, (u + 1) * 16 < M ? (u + 1) * 16 : M, K, kn->kc, alpha, A, lda, B, bk, bj, beta, C, ldc);
        return 1;
    }
    /* outer: the short side is M (S = A, L = B, C as it is) or N (S = B, L = A, C read as C^T) */
    int short_m = M <= THIN, ns = short_m ? M : N, nl = short_m ? N : M, width = ns <= 4 ? 64 : 32;
    const float *S = short_m ? A : B, *L = short_m ? B : A;
    size_t lds = short_m ? lda : ldb, ldl = short_m ? ldb : lda, css = short_m ? ldc : 1, csl = short_m ? 1 : ldc;
    int units = (nl + width - 1) / width;
    #pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1)
    for (int u = 0; u < units; u++)
        outer512(ns, u * width, (u + 1) * width < nl ? (u + 1) * width : nl, K, kn->kc, alpha, S, lds, L, ldl, beta,
                 C, css, csl);
    return 1;
#else
    (void)kn; (void)ta; (void)tb; (void)M; (void)N; (void)K; (void)alpha; (void)A; (void)lda; (void)B; (void)ldb;
    (void)beta; (void)C; (void)ldc;
    return 0;
#endif
}

/* Multiply-adds the kernel really does on an M x N result: both sides rounded up to whole tiles. */
static double padded(const kernel *kn, int M, int N) {
    return (double)((M + kn->mr - 1) / kn->mr * kn->mr) * ((N + kn->nr - 1) / kn->nr * kn->nr);
}

/* ---------------------------------------------------------------- the product log (benchmarks only) */

enum { LOG_MAX = 256 };
static int log_on;                               /* read on every call: one relaxed load when off */
static int log_n;
static fx_matmul_shape log_tab[LOG_MAX];

void fx_matmul_log_start(void) {
    #pragma omp critical(fx_matmul_log)
    { log_n = 0; __atomic_store_n(&log_on, 1, __ATOMIC_RELEASE); }
}

int fx_matmul_log_stop(fx_matmul_shape *out, int max) {
    int n;
    #pragma omp critical(fx_matmul_log)
    {
        __atomic_store_n(&log_on, 0, __ATOMIC_RELEASE);
        n = log_n;
        for (int i = 0; i < n && i < max; i++) out[i] = log_tab[i];
    }
    return n;
}

static void log_product(int ta, int tb, int M, int N, int K) {
    fx_matmul_shape s = {ta, tb, M, N, K, omp_in_parallel(), 1};
    #pragma omp critical(fx_matmul_log)
    {
        int i = 0;
        while (i < log_n && !(log_tab[i].ta == ta && log_tab[i].tb == tb && log_tab[i].M == M &&
                              log_tab[i].N == N && log_tab[i].K == K && log_tab[i].nested == s.nested)) i++;
        if (i < log_n) log_tab[i].calls++;
        else if (log_n < LOG_MAX) log_tab[log_n++] = s;
    }
}

/* fx_matmul and fx_matmul_b16 (B16: B is bf16 and A is rounded to it). */
static void product_of(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const void *B,
                       int ldb, float beta, float *C, int ldc, int b16) {
    if (M <= 0 || N <= 0) return;
    if (__atomic_load_n(&log_on, __ATOMIC_RELAXED)) log_product(ta, tb, M, N, K);
    if (K <= 0 || alpha == 0.0f) { scale_c(M, N, beta, C, (size_t)ldc); return; }
    const kernel *kn = pick();
    if (!b16 && thin(kn, ta, tb, M, N, K, alpha, A, (size_t)lda, B, (size_t)ldb, beta, C, (size_t)ldc)) return;
    /* A thin C (N = 4 for a LoRA rank) would waste most of a wide NR tile; computed as
     * C^T = op(B)^T op(A)^T, the thin side lands on the short MR side instead. The choice depends on the
     * shape alone, so it keeps results independent of the thread count. */
    if (padded(kn, N, M) < 0.75 * padded(kn, M, N))
        gemm(kn, !tb, !ta, N, M, K, alpha, B, (size_t)ldb, A, (size_t)lda, beta, C, 1, (size_t)ldc, b16 ? 1 : 0);
    else
        gemm(kn, ta, tb, M, N, K, alpha, A, (size_t)lda, B, (size_t)ldb, beta, C, (size_t)ldc, 1, b16 ? 2 : 0);
}

void fx_matmul(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc) {
    product_of(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, 0);
}

void fx_matmul_b16(int tb, int M, int N, int K, const float *A, int lda, const uint16_t *B, int ldb, float beta,
                   float *C, int ldc) {
    product_of(0, tb, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc, 1);
}
