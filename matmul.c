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
 * whole panels), so transposes, strides and ragged edges are all handled there and nowhere else.
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

/* Blocking of one kernel. MR x NR is the register tile. KC bounds the two panels one kernel call reads
 * (A: KC x MR, B: KC x NR) to the inner caches and sets how often C is re-read (once per KC slice);
 * MC x KC (the packed A block) fits in L2; KC x NC (the B panels one A block meets) in the outer caches.
 * MC is a multiple of MR and NC of NR. */
typedef struct {
    const char *name;
    int mr, nr, kc, mc, nc;
    kernel_fn fn;
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

__attribute__((target("avx2,fma")))
static void kernel_avx2(int kc, const float *restrict a, const float *restrict b, float *restrict c,
                        size_t ldc, float alpha, float beta) {
    __m256 acc[A2_MR][2];
    #pragma GCC unroll 8
    for (int i = 0; i < A2_MR; i++) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    for (int k = 0; k < kc; k++, a += A2_MR, b += A2_NR) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        #pragma GCC unroll 8
        for (int i = 0; i < A2_MR; i++) {
            __m256 ai = _mm256_broadcast_ss(a + i);
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

static int have_avx2(void) { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

/* ---------------------------------------------------------------- AVX-512: 8 x 48
 * 32 zmm registers: 24 accumulators (8 rows x 3 vectors of 16), 3 for the B row, the A values broadcast
 * straight from memory into the FMA. 48 divides the hidden sizes 768 and 3072 and 8 divides the token
 * count, so the step's products have no ragged tiles. */

enum { A5_MR = 8, A5_NR = 48 };

__attribute__((target("avx512f")))
static void kernel_avx512(int kc, const float *restrict a, const float *restrict b, float *restrict c,
                          size_t ldc, float alpha, float beta) {
    __m512 acc[A5_MR][3];
    #pragma GCC unroll 8
    for (int i = 0; i < A5_MR; i++) acc[i][0] = acc[i][1] = acc[i][2] = _mm512_setzero_ps();
    for (int k = 0; k < kc; k++, a += A5_MR, b += A5_NR) {
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16), b2 = _mm512_loadu_ps(b + 32);
        #pragma GCC unroll 8
        for (int i = 0; i < A5_MR; i++) {
            __m512 ai = _mm512_set1_ps(a[i]);
            acc[i][0] = _mm512_fmadd_ps(ai, b0, acc[i][0]);
            acc[i][1] = _mm512_fmadd_ps(ai, b1, acc[i][1]);
            acc[i][2] = _mm512_fmadd_ps(ai, b2, acc[i][2]);
        }
    }
    __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    #pragma GCC unroll 8
    for (int i = 0; i < A5_MR; i++)
        #pragma GCC unroll 3
        for (int v = 0; v < 3; v++) {
            float *p = c + i * ldc + 16 * v;
            __m512 r = _mm512_mul_ps(va, acc[i][v]);
            if (beta != 0.0f) r = _mm512_add_ps(r, _mm512_mul_ps(vb, _mm512_loadu_ps(p)));
            _mm512_storeu_ps(p, r);
        }
}

static int have_avx512(void) { return __builtin_cpu_supports("avx512f"); }
#endif

/* Best first. Blocking for a core with 32-48 KiB of L1d and 1 MiB of L2 (set on a 2-core AMD EPYC, Zen 5):
 *   avx512  KC 256: A panel 8 KiB + B panel 48 KiB per kernel call, from L1 and L2 (Zen 5's L2 feeds 64
 *           bytes a cycle, enough for one 48-float B row per 24 FMAs); MC 256: a 256 KiB A block in L2;
 *           NC 3072: the B panels one A block meets, 3 MiB, in L3. ~390 GFLOP/s on 2 cores, near peak.
 *   avx2    KC 256: A 6 KiB + B 16 KiB, in L1; MC 144: a 144 KiB A block in L2.
 *   scalar  small blocks; it is the portable fallback, not a fast path. */
static const kernel KERNELS[] = {
#ifdef FX_X86
    {"avx512", A5_MR, A5_NR, 256, 256, 3072, kernel_avx512, have_avx512},
    {"avx2", A2_MR, A2_NR, 256, 144, 3072, kernel_avx2, have_avx2},
#endif
    {"scalar", S_MR, S_NR, 256, 64, 1024, kernel_scalar, always},
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

/* op(A)[i0:i0+mc, p0:p0+kc] into ceil(mc/MR) panels, each (kc, MR): out[(panel*kc + k)*MR + i].
 * Rows past mc are zero: they only feed the discarded rows of an edge tile. */
static void pack_a(int ta, const float *A, size_t lda, int i0, int mc, int p0, int kc, int mr, float *out) {
    for (int ip = 0; ip < mc; ip += mr, out += (size_t)kc * mr) {
        int rows = mc - ip < mr ? mc - ip : mr;
        if (ta) { /* op(A)[i][k] = A[k][i]: each k gives a contiguous run of rows */
            for (int k = 0; k < kc; k++) {
                const float *src = A + (size_t)(p0 + k) * lda + i0 + ip;
                float *dst = out + (size_t)k * mr;
                for (int i = 0; i < rows; i++) dst[i] = src[i];
                for (int i = rows; i < mr; i++) dst[i] = 0.0f;
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
            for (int j = 0; j < cols; j++) dst[j] = src[j];
            for (int j = cols; j < nr; j++) dst[j] = 0.0f;
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

static float *grow(float **buf, size_t *have, size_t need) {
    if (need > *have) {
        free(*buf);
        *buf = fx_malloc(need * sizeof **buf);
        *have = need;
    }
    return *buf;
}

/* C = beta * C over M x N (alpha == 0 or K == 0): nothing of A or B is read; beta == 0 writes zeros. */
static void scale_c(int M, int N, float beta, float *C, size_t ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
}

/* Below this many multiply-adds (a 128 x 128 x 256 product, ~30 us on one core) one thread does the
 * whole product. Waking a second thread costs microseconds on an idle machine but a scheduler time slice
 * (milliseconds) on a busy one, and small products cannot win that back. Depends on the shape alone. */
#define PARALLEL_MIN_MACS (128.0 * 128.0 * 256.0)

/* The blocked loops above, on C with element (i, j) at C[i*rs + j*cs]: (rs, cs) = (ldc, 1) for C itself,
 * (1, ldc) when the caller computes C^T = op(B)^T op(A)^T instead (see fx_matmul). */
static void gemm(const kernel *kn, int ta, int tb, int M, int N, int K, float alpha, const float *A, size_t lda,
                 const float *B, size_t ldb, float beta, float *C, size_t rs, size_t cs) {
    const int MR = kn->mr, NR = kn->nr, KC = kn->kc, MC = kn->mc, NC = kn->nc;
    int npanels = (N + NR - 1) / NR;
    scratch *mine = my_scratch();
    float *bpack = grow(&mine->b, &mine->nb, (size_t)npanels * K * NR); /* (npanels, K, NR) */
    int kcb = K < KC ? K : KC;

    /* Small products run on one thread (PARALLEL_MIN_MACS), and so do products called inside someone
     * else's parallel region (one per attention head, say): we are one of its threads already.
     * Threads split the tiles of C along M, or along N when C has fewer row tiles than column tiles. */
    int mtiles = (M + MR - 1) / MR;
    int split_m = mtiles >= npanels;

    #pragma omp parallel num_threads((double)M * N * K < PARALLEL_MIN_MACS || omp_in_parallel() ? 1 \
                                                                                     : omp_get_max_threads())
    {
        #pragma omp for schedule(static)
        for (int p = 0; p < npanels; p++) {
            int cols = N - p * NR < NR ? N - p * NR : NR;
            pack_b_panel(tb, B, ldb, 0, K, p * NR, cols, NR, bpack + (size_t)p * K * NR);
        }
        /* (the implied barrier: every panel is packed before anyone reads one; the only one) */

        int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int tiles = split_m ? mtiles : npanels;
        int lo = (int)((long)tiles * t / nt), hi = (int)((long)tiles * (t + 1) / nt);
        int m0 = 0, m1 = M, n0 = 0, n1 = N;          /* this thread's rectangle of C */
        if (split_m) { m0 = lo * MR; m1 = hi * MR < M ? hi * MR : M; }
        else { n0 = lo * NR; n1 = hi * NR < N ? hi * NR : N; }
        int mcb = m1 - m0 < MC ? (m1 - m0 + MR - 1) / MR * MR : MC;
        scratch *own = my_scratch();
        float *apack = grow(&own->a, &own->na, (size_t)kcb * (mcb > 0 ? mcb : MR)); /* (kcb, mcb) */
        float tile[MAX_TILE];                        /* (MR, NR) */

        for (int jc = n0; jc < n1; jc += NC) {
            int jhi = jc + NC < n1 ? jc + NC : n1;
            for (int pc = 0; pc < K; pc += KC) {
                int kc = K - pc < KC ? K - pc : KC;
                float beta_eff = pc == 0 ? beta : 1.0f;
                for (int ic = m0; ic < m1; ic += MC) {
                    int mc = m1 - ic < MC ? m1 - ic : MC;
                    pack_a(ta, A, lda, ic, mc, pc, kc, MR, apack);
                    for (int jr = jc; jr < jhi; jr += NR) {
                        int cols = jhi - jr < NR ? jhi - jr : NR;
                        const float *bp = bpack + ((size_t)(jr / NR) * K + pc) * NR;
                        for (int ir = 0; ir < mc; ir += MR) {
                            int rows = mc - ir < MR ? mc - ir : MR;
                            const float *ap = apack + (size_t)ir * kc;
                            float *c = C + (size_t)(ic + ir) * rs + (size_t)jr * cs;
                            if (rows == MR && cols == NR && cs == 1) {
                                kn->fn(kc, ap, bp, c, rs, alpha, beta_eff);
                            } else { /* ragged or transposed tile: the kernel's sums, then its epilogue */
                                kn->fn(kc, ap, bp, tile, (size_t)NR, 1.0f, 0.0f);
                                for (int i = 0; i < rows; i++)
                                    for (int j = 0; j < cols; j++) {
                                        float v = alpha * tile[i * NR + j];
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

void fx_matmul(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (__atomic_load_n(&log_on, __ATOMIC_RELAXED)) log_product(ta, tb, M, N, K);
    if (K <= 0 || alpha == 0.0f) { scale_c(M, N, beta, C, (size_t)ldc); return; }
    const kernel *kn = pick();
    /* A thin C (N = 4 for a LoRA rank) would waste most of a wide NR tile; computed as
     * C^T = op(B)^T op(A)^T, the thin side lands on the short MR side instead. The choice depends on the
     * shape alone, so it keeps results independent of the thread count. */
    if (padded(kn, N, M) < 0.75 * padded(kn, M, N))
        gemm(kn, !tb, !ta, N, M, K, alpha, B, (size_t)ldb, A, (size_t)lda, beta, C, 1, (size_t)ldc);
    else
        gemm(kn, ta, tb, M, N, K, alpha, A, (size_t)lda, B, (size_t)ldb, beta, C, (size_t)ldc, 1);
}
