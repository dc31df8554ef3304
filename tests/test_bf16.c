/* tests/test_bf16.c: bf16 numbers and fx_matmul_bf16 against references written here: rounding to bf16
 * against the nearest-of-two-neighbours rule computed in double, and every product against a
 * double-precision sum of the same bf16-rounded operands, for both kernels (the AVX-512 BF16 one when the
 * CPU has it, and the fallback), both layouts of B, beta 0 and 1, strides and ragged shapes. */
#include "../fedex.h"
#include "check.h"

#include <string.h>

/* ---------------------------------------------------------------- tolerances
 *
 *   what                      bound                                  why
 *   fx_bf16_round             bitwise: the nearer of the two bf16    the definition of round-to-nearest,
 *                             neighbours, ties to the even one       ties to even (torch's rounding)
 *   each element of C         (K + 4) u sum_k |a_k b_k| + |beta c|u  the products of two bf16 are exact in
 *                             + 2^-120, u = 2^-24                    fp32, so only the K - 1 fp32 additions
 *                                                                    round, each by at most u of the partial
 *                                                                    sum (gamma_K for any order), plus the
 *                                                                    adds joining K slices and beta C; the
 *                                                                    absolute term covers VDPBF16PS's flush
 *                                                                    of subnormals. A wrongly rounded input
 *                                                                    moves a term by 2^-9 relative: far above.
 *   1 and 3 threads           bitwise equal                          fedex.h promises it.
 */
#define TOL_K_EXTRA 4.0
static const double U32 = 1.0 / 16777216.0;
static const double TOL_ABS = 7.52316384526264e-37; /* 2^-120 */

static float rnd(fx_rng *r) { return (float)(2.0 * fx_rng_uniform(r) - 1.0); }

/* ---------------------------------------------------------------- rounding */

static float bits_f(uint32_t u) { float x; memcpy(&x, &u, sizeof x); return x; }

/* The bf16 nearest to X by the definition: the neighbours below and above in magnitude, the nearer one in
 * exact (double) arithmetic, the even mantissa on a tie. */
static uint16_t ref_round(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    uint16_t lo = (uint16_t)(u >> 16), hi = (uint16_t)(lo + 1);
    double dl = fabs((double)x - (double)bits_f((uint32_t)lo << 16));
    double dh = fabs((double)bits_f((uint32_t)hi << 16) - (double)x);
    if ((hi & 0x7f80) == 0x7f80 && (hi & 0x7f)) dh = INFINITY;   /* past the largest finite: to infinity below */
    if ((hi & 0x7fff) == 0x7f80) dh = fabs(ldexp(1.0, 128) - fabs((double)x)); /* infinity as 2^128 */
    if (dl < dh) return lo;
    if (dh < dl) return hi;
    return (lo & 1) ? hi : lo;
}

static void test_rounding(void) {
    fx_rng r;
    fx_rng_seed(&r, 7);
    int bad = 0;
    for (int i = 0; i < 200000 && bad < 5; i++) {
        uint32_t u = (uint32_t)fx_rng_u64(&r);
        if ((u & 0x7f800000u) == 0x7f800000u) continue; /* infinities and NaN below */
        float x = bits_f(u);
        if (fx_bf16_round(x) != ref_round(x)) { bad++; CHECK(0, "round(%a) = %04x, want %04x", x, fx_bf16_round(x), ref_round(x)); }
    }
    CHECK(bad == 0, "random bit patterns round to nearest, ties to even");
    /* the ties themselves: exactly half way, both parities */
    CHECK(fx_bf16_round(bits_f(0x3f808000u)) == 0x3f80, "1 + 2^-8 (a tie) rounds down to the even 1");
    CHECK(fx_bf16_round(bits_f(0x3f818000u)) == 0x3f82, "1 + 3 2^-8 (a tie) rounds up to the even one");
    CHECK(fx_bf16_round(bits_f(0x3f808001u)) == 0x3f81, "just past the tie rounds up");
    CHECK(fx_bf16_round(bits_f(0x7f7fffffu)) == 0x7f80, "FLT_MAX rounds to infinity, as torch");
    CHECK(fx_bf16_round(-0.0f) == 0x8000, "-0 keeps its sign");
    CHECK(fx_bf16_round(INFINITY) == 0x7f80 && fx_bf16_round(-INFINITY) == 0xff80, "infinities stay");
    uint16_t n = fx_bf16_round(NAN);
    CHECK((n & 0x7f80) == 0x7f80 && (n & 0x7f), "NaN stays NaN");
    CHECK(fx_bf16_widen(0x3fc0) == 1.5f && fx_bf16_widen(0xc000) == -2.0f, "widening is exact");
}

/* ---------------------------------------------------------------- products */

typedef struct {
    int tb, M, N, K, lda, ldb, ldc;
    float beta;
    float *A, *C0;
    uint16_t *B;
} problem;

static void make(problem *p, fx_rng *r, int tb, int M, int N, int K, int pad, float beta) {
    memset(p, 0, sizeof *p);
    p->tb = tb; p->M = M; p->N = N; p->K = K; p->beta = beta;
    int brows = tb ? N : K, bcols = tb ? K : N;
    p->lda = K + pad; p->ldb = bcols + (pad ? pad + 1 : 0); p->ldc = N + pad;
    p->A = fx_malloc(((size_t)M * p->lda + 1) * sizeof(float));
    p->B = fx_malloc(((size_t)brows * p->ldb + 1) * sizeof(uint16_t));
    p->C0 = fx_malloc(((size_t)M * p->ldc + 1) * sizeof(float));
    for (int i = 0; i < M; i++)
        for (int j = 0; j < p->lda; j++) p->A[(size_t)i * p->lda + j] = j < K ? rnd(r) * 3.0f : NAN;
    for (int i = 0; i < brows; i++)
        for (int j = 0; j < p->ldb; j++) p->B[(size_t)i * p->ldb + j] = j < bcols ? fx_bf16_round(rnd(r)) : 0x7fc0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < p->ldc; j++) p->C0[(size_t)i * p->ldc + j] = j >= N ? 12345.0f : beta == 0.0f ? NAN : rnd(r);
}

static void release(problem *p) { free(p->A); free(p->B); free(p->C0); }

static float *run(const problem *p) {
    size_t n = (size_t)p->M * p->ldc;
    float *C = fx_malloc((n + 1) * sizeof *C);
    memcpy(C, p->C0, n * sizeof *C);
    fx_matmul_bf16(p->tb, p->M, p->N, p->K, p->A, p->lda, p->B, p->ldb, p->beta, C, p->ldc);
    return C;
}

/* The reference: A rounded by ref_round (not the code under test), B widened, sums in double. */
static int check(const problem *p, const float *C, const char *what) {
    for (int i = 0; i < p->M; i++)
        for (int j = 0; j < p->ldc; j++) {
            double c = C[(size_t)i * p->ldc + j];
            if (j >= p->N) {
                if (c != 12345.0) { CHECK(0, "%s: C[%d][%d] outside N was written", what, i, j); return 0; }
                continue;
            }
            double s = 0, sa = 0;
            for (int k = 0; k < p->K; k++) {
                double a = fx_bf16_widen(ref_round(p->A[(size_t)i * p->lda + k]));
                double b = fx_bf16_widen(p->tb ? p->B[(size_t)j * p->ldb + k] : p->B[(size_t)k * p->ldb + j]);
                s += a * b;
                sa += fabs(a * b);
            }
            double c0 = p->beta == 0.0f ? 0.0 : p->C0[(size_t)i * p->ldc + j];
            s += p->beta * c0;
            double tol = (p->K + TOL_K_EXTRA) * U32 * sa + fabs(p->beta * c0) * U32 + TOL_ABS;
            if (!(fabs(c - s) <= tol)) {
                CHECK(0, "%s: tb %d M %d N %d K %d beta %g: C[%d][%d] = %.9g, want %.9g (tol %.3g)", what, p->tb,
                      p->M, p->N, p->K, p->beta, i, j, c, s, tol);
                return 0;
            }
        }
    CHECK(1, "%s", what);
    return 1;
}

static const int SHAPES[][3] = { /* M, N, K: edges of every blocking (MR 8, NR 32, KC 512, NC 128) */
    {1, 1, 1},   {1, 1, 2},   {3, 5, 7},    {8, 32, 2},   {9, 33, 3},    {7, 31, 513}, {17, 129, 1025},
    {64, 96, 64}, {2, 200, 511}, {257, 40, 30}, {600, 70, 33}, {13, 300, 700}, {1, 1000, 9},
    {300, 4, 50}, {64, 3, 800}, /* thin: the fallback computes C^T */
};

static void test_products(const char *kernel) {
    if (fx_matmul_bf16_force(kernel) != 0) { printf("skipped: the %s kernel (%s)\n", kernel, fx_err()); return; }
    fx_rng r;
    fx_rng_seed(&r, 11);
    int n = (int)(sizeof SHAPES / sizeof SHAPES[0]);
    for (int s = 0; s < n; s++)
        for (int tb = 0; tb < 2; tb++)
            for (int b = 0; b < 2; b++) {
                problem p;
                make(&p, &r, tb, SHAPES[s][0], SHAPES[s][1], SHAPES[s][2], (s + tb) % 3, b ? 1.0f : 0.0f);
                float *C = run(&p);
                char what[96];
                snprintf(what, sizeof what, "%s M %d N %d K %d tb %d beta %d", kernel, p.M, p.N, p.K, tb, b);
                if (!check(&p, C, what)) { free(C); release(&p); return; }
                free(C);
                release(&p);
            }
    /* thread count: bitwise the same result */
    problem p;
    make(&p, &r, 1, 100, 300, 700, 1, 1.0f);
    fx_set_threads(1);
    float *C1 = run(&p);
    fx_set_threads(3);
    float *C3 = run(&p);
    fx_set_threads(2);
    CHECK(memcmp(C1, C3, sizeof(float) * (size_t)p.M * p.ldc) == 0, "%s: 1 and 3 threads give the same bits", kernel);
    free(C1); free(C3);
    release(&p);
}

/* The fallback is fx_matmul_b16: fx_matmul's sums on A rounded to bf16 and B widened, bit for bit, with
 * both done while packing. Against fx_matmul on matrices rounded and widened beforehand (fx_bf16_round,
 * checked above): shapes that take the thin path (C^T computed, so the bf16 operand becomes the packed A
 * and the rounded one the packed B), that cross the AVX2 and AVX-512 kernels' K slices (768, 256), both
 * layouts of B, beta 0 and 1, and A with ties, values that round up to infinity, infinities and NaN. */
static void test_fallback_definition(void) {
    static const int shapes[][3] = {{300, 4, 50}, {7, 1000, 9}, {64, 3, 800}, {37, 45, 1700}, {200, 96, 260}};
    fx_rng r;
    fx_rng_seed(&r, 17);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int tb = 0; tb < 2; tb++)
            for (int b = 0; b < 2; b++) {
                problem p;
                make(&p, &r, tb, shapes[s][0], shapes[s][1], shapes[s][2], (int)(s + tb) % 3, b ? 1.0f : 0.0f);
                size_t nA = (size_t)p.M * p.lda, brows = (size_t)(tb ? p.N : p.K), nB = brows * p.ldb;
                const float special[] = {1.00390625f, 1.01171875f, -3.3961e38f, INFINITY, NAN};
                for (int k = 0; k < 5; k++) p.A[(size_t)(k * 7919) % nA] = special[k];
                float *Ar = fx_malloc(nA * sizeof *Ar), *Bw = fx_malloc(nB * sizeof *Bw);
                for (size_t i = 0; i < nA; i++) Ar[i] = fx_bf16_widen(fx_bf16_round(p.A[i]));
                for (size_t i = 0; i < nB; i++) Bw[i] = fx_bf16_widen(p.B[i]);
                size_t nC = (size_t)p.M * p.ldc;
                float *C = fx_malloc(nC * sizeof *C), *want = fx_malloc(nC * sizeof *want);
                memcpy(C, p.C0, nC * sizeof *C);
                memcpy(want, p.C0, nC * sizeof *want);
                fx_matmul_b16(tb, p.M, p.N, p.K, p.A, p.lda, p.B, p.ldb, p.beta, C, p.ldc);
                fx_matmul(0, tb, p.M, p.N, p.K, 1.0f, Ar, p.lda, Bw, p.ldb, p.beta, want, p.ldc);
                CHECK(memcmp(C, want, nC * sizeof *C) == 0, "fx_matmul_b16 M %d N %d K %d tb %d beta %d differs from "
                      "fx_matmul on the rounded operands", p.M, p.N, p.K, tb, b);
                free(C); free(want); free(Ar); free(Bw);
                release(&p);
            }
}

int main(void) {
    test_rounding();
    test_fallback_definition();
    printf("bf16 kernel on this CPU: %s\n", fx_matmul_bf16_kernel());
    test_products("avx512bf16");
    test_products("fallback");
    return check_done();
}
