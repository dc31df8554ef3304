/* tests/test_matmul.c: fx_matmul against a naive double-precision product written here, for every
 * micro-kernel this CPU runs, all four transpose combinations, alpha/beta, strides and edge shapes;
 * plus the promises of fedex.h: beta == 0 never reads C, and results do not depend on the thread count. */
#include "../fedex.h"
#include "check.h"

#include <string.h>

/* ---------------------------------------------------------------- tolerances
 *
 *   what                     bound                                      why
 *   each element of C        (2K + 8) u (|alpha| sum_k |a_ik b_kj|       Higham's a-priori bound for a fp32
 *                                        + |beta c_ij|),  u = 2^-24      sum of K products in any order, with
 *                                                                        or without FMA (gamma_K), plus the
 *                                                                        roundings of alpha*, beta* and the
 *                                                                        adds that join K blocks (at most K+8).
 *                                                                        A lost or doubled term is ~1/K of the
 *                                                                        scale, far above it.
 *   1, 2 or 3 threads        bitwise equal                              fedex.h promises it: every element's
 *                                                                        K sum has one fixed order.
 *   C outside the M x N      bitwise unchanged                          fx_matmul writes only op's result.
 */
#define TOL_K_FACTOR 2.0
#define TOL_EXTRA 8.0
static const double U32 = 1.0 / 16777216.0; /* 2^-24, fp32 unit roundoff */

/* ---------------------------------------------------------------- operands */

static const float PAD_C = 12345.0f;        /* C's padding columns: must survive unchanged */

typedef struct {
    int ta, tb, M, N, K, lda, ldb, ldc;
    float alpha, beta;
    float *A, *B, *C0;                      /* stored operands, C's initial content */
} problem;

static float rnd(fx_rng *r) { return (float)(2.0 * fx_rng_uniform(r) - 1.0); }

/* Stored A is M x K (K x M when ta) with lda >= its row length; the padding holds NaN so that reading it
 * would poison the result. C's valid part is NaN when beta == 0 (it must not be read). */
static void make_problem(problem *p, fx_rng *r, int ta, int tb, int M, int N, int K, int pad,
                         float alpha, float beta) {
    p->ta = ta; p->tb = tb; p->M = M; p->N = N; p->K = K; p->alpha = alpha; p->beta = beta;
    int arows = ta ? K : M, acols = ta ? M : K;
    int brows = tb ? N : K, bcols = tb ? K : N;
    p->lda = acols + pad; p->ldb = bcols + (pad ? pad + 1 : 0); p->ldc = N + pad;
    p->A = fx_malloc(((size_t)arows * p->lda + 1) * sizeof(float));
    p->B = fx_malloc(((size_t)brows * p->ldb + 1) * sizeof(float));
    p->C0 = fx_malloc(((size_t)M * p->ldc + 1) * sizeof(float));
    for (int i = 0; i < arows; i++)
        for (int j = 0; j < p->lda; j++) p->A[(size_t)i * p->lda + j] = j < acols ? rnd(r) : NAN;
    for (int i = 0; i < brows; i++)
        for (int j = 0; j < p->ldb; j++) p->B[(size_t)i * p->ldb + j] = j < bcols ? rnd(r) : NAN;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < p->ldc; j++)
            p->C0[(size_t)i * p->ldc + j] = j >= N ? PAD_C : beta == 0.0f ? NAN : rnd(r);
}

static void free_problem(problem *p) { free(p->A); free(p->B); free(p->C0); }

static double opA(const problem *p, int i, int k) {
    return p->ta ? p->A[(size_t)k * p->lda + i] : p->A[(size_t)i * p->lda + k];
}
static double opB(const problem *p, int k, int j) {
    return p->tb ? p->B[(size_t)j * p->ldb + k] : p->B[(size_t)k * p->ldb + j];
}

/* fx_matmul on a fresh copy of C0; returns the malloc'd result (M x ldc). */
static float *run(const problem *p) {
    size_t n = (size_t)p->M * p->ldc;
    float *C = fx_malloc((n + 1) * sizeof *C);
    memcpy(C, p->C0, n * sizeof *C);
    fx_matmul(p->ta, p->tb, p->M, p->N, p->K, p->alpha, p->A, p->lda, p->B, p->ldb, p->beta, C, p->ldc);
    return C;
}

/* ---------------------------------------------------------------- checks */

/* Compares C with the double reference; returns 1 if every element is within the table's bound. */
static int check_problem(const problem *p, const char *kernel) {
    float *C = run(p);
    int bad = 0; double worst = 0; int wi = 0, wj = 0;
    double tol = (TOL_K_FACTOR * p->K + TOL_EXTRA) * U32;
    for (int i = 0; i < p->M && !bad; i++)
        for (int j = 0; j < p->ldc; j++) {
            float got = C[(size_t)i * p->ldc + j];
            if (j >= p->N) { /* padding: bitwise unchanged */
                if (memcmp(&got, &PAD_C, sizeof got) != 0) { bad = 1; wi = i; wj = j; break; }
                continue;
            }
            double s = 0, mag = 0;
            for (int k = 0; k < p->K; k++) { double t = opA(p, i, k) * opB(p, k, j); s += t; mag += fabs(t); }
            double c0 = p->beta == 0.0f ? 0.0 : p->C0[(size_t)i * p->ldc + j];
            double want = p->alpha * s + p->beta * c0;
            double scale = fabs(p->alpha) * mag + fabs(p->beta * c0);
            double err = fabs(got - want);
            if (!(err <= tol * scale + 1e-30)) { bad = 1; wi = i; wj = j; worst = err / (scale + 1e-30); break; }
        }
    CHECK(!bad, "%s ta=%d tb=%d M=%d N=%d K=%d lda=%d ldb=%d ldc=%d alpha=%g beta=%g: C[%d][%d] = %g "
          "(relative error %.3g, bound %.3g)", kernel, p->ta, p->tb, p->M, p->N, p->K, p->lda, p->ldb, p->ldc,
          p->alpha, p->beta, wi, wj, (double)C[(size_t)wi * p->ldc + wj], worst, tol);
    free(C);
    return !bad;
}

/* Shapes that sit on the edges: ones, thin LoRA-like panels, sizes that cross every block boundary. */
static const int EDGE[][3] = {
    {1, 1, 1}, {1, 7, 1}, {7, 1, 1}, {1, 1, 300}, {2, 3, 1}, {1, 33, 17}, {33, 1, 17},
    {64, 4, 96}, {64, 96, 4}, {4, 96, 64}, {96, 4, 64}, {5, 3, 2},
    {13, 49, 257}, {17, 65, 1025}, {97, 193, 515}, {261, 530, 700}, {130, 1100, 40},
};

static void test_kernel(const char *kernel) {
    fx_rng r; fx_rng_seed(&r, 42);
    static const float ALPHA[] = {1.0f, -0.5f, 2.5f};
    static const float BETA[] = {0.0f, 1.0f, 0.75f};
    int n = (int)(sizeof EDGE / sizeof EDGE[0]);
    for (int s = 0; s < n; s++)
        for (int t = 0; t < 4; t++) {
            problem p;
            make_problem(&p, &r, t & 1, t >> 1, EDGE[s][0], EDGE[s][1], EDGE[s][2], s % 3,
                         ALPHA[(s + t) % 3], BETA[(s + 2 * t) % 3]);
            check_problem(&p, kernel);
            free_problem(&p);
        }
    for (int s = 0; s < 150; s++) { /* random small shapes, strides, scalars */
        problem p;
        int M = 1 + (int)(fx_rng_u64(&r) % 80), N = 1 + (int)(fx_rng_u64(&r) % 80);
        int K = 1 + (int)(fx_rng_u64(&r) % 80);
        make_problem(&p, &r, (int)(fx_rng_u64(&r) & 1), (int)(fx_rng_u64(&r) & 1), M, N, K,
                     (int)(fx_rng_u64(&r) % 4), ALPHA[fx_rng_u64(&r) % 3], BETA[fx_rng_u64(&r) % 3]);
        check_problem(&p, kernel);
        free_problem(&p);
    }
}

/* K == 0 leaves beta * C (zeros for beta == 0, even over NaN); M == 0 or N == 0 touch nothing. */
static void test_empty(void) {
    float C[6] = {NAN, NAN, NAN, 1, 2, 3};
    float A[1] = {NAN}, B[1] = {NAN};
    fx_matmul(0, 0, 1, 3, 0, 1.0f, A, 1, B, 3, 0.0f, C, 3);
    CHECK(C[0] == 0 && C[1] == 0 && C[2] == 0, "K=0, beta=0: got %g %g %g, want zeros", C[0], C[1], C[2]);
    fx_matmul(1, 1, 1, 3, 0, 1.0f, A, 1, B, 1, 2.0f, C + 3, 3);
    CHECK(C[3] == 2 && C[4] == 4 && C[5] == 6, "K=0, beta=2: got %g %g %g, want 2 4 6", C[3], C[4], C[5]);
    float D[2] = {7, 8};
    fx_matmul(0, 0, 0, 2, 3, 1.0f, A, 3, B, 2, 0.0f, D, 2);
    fx_matmul(0, 0, 1, 0, 3, 1.0f, A, 3, B, 1, 0.0f, D, 1);
    CHECK(D[0] == 7 && D[1] == 8, "M=0 or N=0 wrote C: %g %g", D[0], D[1]);
}

/* The same product with 1, 2 and 3 threads must agree bit for bit. */
static void test_threads(const char *kernel) {
    /* the last three: thin products, which go parallel for the bytes they move more than their sums */
    static const int SHAPE[][3] = {{300, 500, 700}, {1000, 37, 130}, {5, 900, 300}, {97, 1030, 40},
                                   {1024, 4, 768}, {1, 768, 768}, {1030, 768, 4}};
    fx_rng r; fx_rng_seed(&r, 7);
    for (int s = 0; s < (int)(sizeof SHAPE / sizeof SHAPE[0]); s++)
        for (int t = 0; t < 4; t += 3) {
            problem p;
            make_problem(&p, &r, t & 1, t >> 1, SHAPE[s][0], SHAPE[s][1], SHAPE[s][2], 1, 1.5f, 0.5f);
            fx_set_threads(1);
            float *c1 = run(&p);
            fx_set_threads(2);
            float *c2 = run(&p);
            fx_set_threads(3);
            float *c3 = run(&p);
            size_t bytes = (size_t)p.M * p.ldc * sizeof(float);
            CHECK(memcmp(c1, c2, bytes) == 0 && memcmp(c1, c3, bytes) == 0,
                  "%s M=%d N=%d K=%d ta=%d tb=%d: results differ between 1, 2 and 3 threads", kernel,
                  p.M, p.N, p.K, p.ta, p.tb);
            free(c1); free(c2); free(c3); free_problem(&p);
        }
    fx_set_threads(2);
}

/* op(A) = A is read where it lies by kernels that can (the rows of whole row tiles), op(A) = A^T always
 * packed, and a thin product is computed as C^T, where B takes A's place: the same product from each of
 * the four ways of storing A and B must agree bit for bit, as every way sums the same terms in the same
 * order. The shapes cross every edge: M not a whole number of row tiles (and under one), N ragged or thin
 * (the C^T route; with 6 or 7 columns, A' has whole row tiles), K over several K slices, small and parallel.
 * With the AVX-512 kernel, (ta 0) and N <= 8 or (ta 1, tb 0) and M or N <= 8 are thin products, (ta 1,
 * tb 1) never: so this also holds the thin kernels to the GEMM's bits. */
static float *transposed(const float *X, int rows, int cols, int ld, int *ldt) {
    *ldt = rows + 2;                             /* (cols, rows) with 2 columns of NaN padding */
    float *T = fx_malloc((size_t)cols * *ldt * sizeof(float));
    for (int c = 0; c < cols; c++)
        for (int r = 0; r < *ldt; r++) T[(size_t)c * *ldt + r] = r < rows ? X[(size_t)r * ld + c] : NAN;
    return T;
}

static void test_layouts(const char *kernel) {
    static const int SHAPE[][3] = {{301, 530, 1537}, {5, 70, 900}, {1030, 4, 770}, {4, 1030, 770},
                                   {1030, 6, 770}, {1030, 7, 300}, {97, 33, 40}, {1024, 768, 300}, {13, 2000, 2},
                                   /* the thin products' every short width (1 to 8, and 9 past it), ragged rows */
                                   {1030, 1, 530}, {45, 2, 600}, {70, 3, 17}, {8, 1030, 770}, {1, 300, 520},
                                   {3, 77, 1030}, {1030, 5, 16}, {1030, 8, 300}, {600, 9, 300}, {9, 600, 300}};
    fx_rng r; fx_rng_seed(&r, 11);
    for (int s = 0; s < (int)(sizeof SHAPE / sizeof SHAPE[0]); s++) {
        problem p;
        make_problem(&p, &r, 0, 0, SHAPE[s][0], SHAPE[s][1], SHAPE[s][2], 1 + s % 3, 1.5f, s % 2 ? 0.0f : 0.5f);
        problem q = p;
        int ldat, ldbt;
        float *At = transposed(p.A, p.M, p.K, p.lda, &ldat), *Bt = transposed(p.B, p.K, p.N, p.ldb, &ldbt);
        float *c0 = run(&p);
        for (int t = 1; t < 4; t++) {
            q.ta = t & 1; q.tb = t >> 1;
            q.A = q.ta ? At : p.A; q.lda = q.ta ? ldat : p.lda;
            q.B = q.tb ? Bt : p.B; q.ldb = q.tb ? ldbt : p.ldb;
            float *c = run(&q);
            CHECK(memcmp(c0, c, (size_t)p.M * p.ldc * sizeof(float)) == 0,
                  "%s M=%d N=%d K=%d: A and B stored as (ta %d, tb %d) give other bits than (0, 0)", kernel,
                  p.M, p.N, p.K, q.ta, q.tb);
            free(c);
        }
        free(c0); free(At); free(Bt); free_problem(&p);
    }
}

/* The product log counts calls per distinct shape, and only between start and stop. */
static void test_log(void) {
    float A[6] = {1, 2, 3, 4, 5, 6}, B[6] = {1, 0, 0, 1, 1, 1}, C[9];
    fx_matmul(0, 0, 2, 2, 3, 1.0f, A, 3, B, 2, 0.0f, C, 2);          /* before start: not counted */
    fx_matmul_log_start();
    fx_matmul(0, 0, 2, 2, 3, 1.0f, A, 3, B, 2, 0.0f, C, 2);
    fx_matmul(0, 0, 2, 2, 3, 1.0f, A, 3, B, 2, 0.0f, C, 2);
    fx_matmul(1, 0, 3, 3, 2, 1.0f, A, 3, B, 3, 0.0f, C, 3);
    fx_matmul_shape s[4];
    int n = fx_matmul_log_stop(s, 4);
    fx_matmul(1, 0, 3, 3, 2, 1.0f, A, 3, B, 3, 0.0f, C, 3);          /* after stop: not counted */
    CHECK(n == 2, "log: %d shapes, want 2", n);
    if (n == 2)
        CHECK(s[0].ta == 0 && s[0].M == 2 && s[0].N == 2 && s[0].K == 3 && s[0].calls == 2 && !s[0].nested &&
              s[1].ta == 1 && s[1].M == 3 && s[1].K == 2 && s[1].calls == 1,
              "log: got (%d %d %d %d x%ld), (%d %d %d %d x%ld)", s[0].ta, s[0].M, s[0].N, s[0].K, s[0].calls,
              s[1].ta, s[1].M, s[1].N, s[1].K, s[1].calls);
}

/* ---------------------------------------------------------------- main */

int main(void) {
    const char *best = fx_matmul_kernel();
    CHECK(best && *best, "fx_matmul_kernel returned nothing");
    CHECK(fx_matmul_force("no-such-kernel") == -1, "an unknown kernel name was accepted");
    fx_set_threads(2);
    test_empty();
    test_log();
    static const char *KERNELS[] = {"scalar", "avx2", "avx512"};
    for (int i = 0; i < 3; i++) {
        if (fx_matmul_force(KERNELS[i]) != 0) { printf("skipped: kernel %s (%s)\n", KERNELS[i], fx_err()); continue; }
        CHECK(strcmp(fx_matmul_kernel(), KERNELS[i]) == 0, "forced %s, running %s", KERNELS[i], fx_matmul_kernel());
        test_kernel(KERNELS[i]);
        test_threads(KERNELS[i]);
        test_layouts(KERNELS[i]);
        printf("kernel %s: checked\n", KERNELS[i]);
    }
    CHECK(fx_matmul_force(best) == 0, "cannot return to kernel %s", best);
    return check_done();
}
