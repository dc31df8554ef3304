/* vmath.c: erf and exp over float arrays, vectorised with AVX-512 or AVX2 + FMA where the CPU has them and
 * in plain C otherwise (the first the CPU runs of avx512, avx2, c, chosen at run time), for the CPU ops'
 * exact GELU and SiLU. Every path computes in double and rounds once to float. It is not a general libm:
 * float in, float out, round-to-nearest only. */
#include "fedex.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FX_X86 1
#endif

/* ============================================================================================
 * The math, and why the results are libm's to one ulp
 * ============================================================================================
 * erf. On |x| < 4, erf(x) = x g(x), g(x) = erf(x)/x smooth and even; [0, 4) is cut into 8 intervals
 * [i/2, (i+1)/2) and g is a polynomial of degree 10 in t = 4 (|x| - c_i) on each (c_i the midpoint, so
 * |t| <= 1), interpolated at Chebyshev points in 50-digit arithmetic by tools/vmath_coeffs.py. Its worst
 * relative error is 6.4e-14 (the script prints it per interval), far below float's 2^-24. For |x| >= 4,
 * erfc(x) < 1.6e-8 is under half an ulp of 1 (2^-25 = 3.0e-8), so erf rounds to +-1 exactly. x g(x)
 * keeps the sign, +-0 and subnormals (relative accuracy near 0); NaN stays NaN.
 *
 * exp. x = n ln2 + r, n = rint(x log2 e), |r| <= ln2/2, r = (x - n ln2_hi) - n ln2_lo with ln2_hi
 * holding 32 bits, so n ln2_hi is exact for |n| < 2^20 (x is clamped to [-160, 160] first, which
 * changes no float result: exp(160) overflows float and exp(-160) is below half its least subnormal);
 * e^r is Taylor's degree-12 polynomial, remainder < 0.35^13 / 13! = 1.9e-16 relative; then times 2^n.
 *
 * The bound. Each double result is within a relative 1e-13 of the true value (the fit or remainder, plus
 * some 20 double roundings of 2^-53), 2^-24 / 1e-13 ~ 6e5 times finer than a float ulp, so the one
 * rounding to float lands within 0.5 + 2e-6 ulp of the true value (subnormal results: within half their
 * spacing, as double holds them exactly). glibc's erff and expf are within 1 ulp of the true value
 * (its documented bounds on x86_64), so ours and theirs differ by less than 1.6 ulp, and floats of the
 * same binade differ by whole ulps: by at most 1 ulp. tests/test_vmath.c sweeps the floats and checks it
 * on every path the CPU runs, and that the result is within 1 ulp of double erf/exp rounded once. The
 * bound asks only that each double be within 1e-13, so it holds on each path whatever the order of the
 * roundings. The AVX-512 and AVX2 paths use FMA and the C path separate multiplies and adds, so C and the
 * vector paths agree to that bound, not bit for bit; AVX2 does AVX-512's operations in the same order
 * (its coefficient picks and its 2^n are exact, as AVX-512's are), so those two give the same bits. Each
 * path gives the same bits for any thread count and any split of an array: every element is computed
 * alone, and a vector's lanes do not interact. */

static const double ERF_POLY[11][8] = { /* [power of t][interval] */
    {1.1053055606729478, 0.94820751153802019, 0.73832010260516656, 0.56381238355381857, 0.44379434818369728, 0.36359977384650194, 0.30769098376016502, 0.26666663633939824},
    {-0.045291431296124451, -0.10175881411436888, -0.1003597960318634, -0.073005341088913919, -0.048516892129080995, -0.033001226963604621, -0.023666291902673282, -0.017777716993812597},
    {-0.020959451789144261, -0.0062635871199982901, 0.0052893890533897391, 0.0071308971956638529, 0.0049443708532376967, 0.0029634692142022274, 0.0018186596784272309, 0.0011851260434088738},
    {0.0016362775415680109, 0.0026459622617296011, 0.0010363196334291927, -0.00021372384663763863, -0.00039850958294412447, -0.00025372226502542148, -0.00013895550553891039, -7.8975196184399423e-05},
    {0.00034779836940992037, -9.7159453500054183e-05, -0.0002265120643605933, -7.6839026495343247e-05, 1.1147968305494841e-05, 1.8437658105124202e-05, 1.0344450733770165e-05, 5.2505951210369803e-06},
    {-3.5090671730127777e-05, -3.6939996420253314e-05, 8.4421957580261033e-06, 1.4673654431372352e-05, 3.387065043525941e-06, -6.9752806414762656e-07, -7.0143669959178561e-07, -3.4525543184705349e-07},
    {-4.4919195924030759e-06, 3.5657606249659895e-06, 2.471962672015908e-06, -8.4580874541647168e-07, -6.9148417743351946e-07, -8.3723279763288078e-08, 3.4160399306042249e-08, 2.1762292728074439e-08},
    {5.4518696927919153e-07, 3.1169969087276767e-07, -3.1726802752227953e-07, -9.0529308382544109e-08, 5.8645694111493798e-08, 2.1955495388503466e-08, 5.6415477241600505e-10, -1.1862303296139626e-09},
    {4.6413287317508244e-08, -5.7047375841107368e-08, -6.0911584315274991e-09, 1.9291930797430958e-08, 2.6367930957870817e-10, -2.4897765988245786e-09, -4.2682917827620304e-10, 3.3804818983471709e-11},
    {-6.4954563651989039e-09, -1.1888117565416982e-09, 3.8209759591636422e-09, -7.599531948477597e-10, -6.5693923977289874e-10, 1.2185670498689628e-10, 6.3822436634982783e-11, 4.2693039964912241e-12},
    {-3.8610813761789795e-10, 6.1013796628963853e-10, -1.657510404876102e-10, -1.2633057892853689e-10, 6.650737426431372e-11, 7.9248157063301415e-12, -5.4967456882337806e-12, -9.5041214345912142e-13},
};

#define ERF_DEG 10
#define EXP_DEG 12
static const double LOG2E = 1.4426950408889634;
static const double LN2_HI = 0x1.62e42fefp-1;           /* ln 2 to 32 bits: n * LN2_HI is exact */
static const double LN2_LO = 0x1.473de6af278edp-34;     /* ln 2 - LN2_HI */
static const double EXP_CLAMP = 160.0;
static const double EXP_INV_FACT[EXP_DEG + 1] = {      /* 1 / k! */
    1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040, 1.0 / 40320, 1.0 / 362880,
    1.0 / 3628800, 1.0 / 39916800, 1.0 / 479001600};

/* ============================================================================================
 * Plain C (any CPU)
 * ============================================================================================ */

static float erf_one(float xf) {
    double x = xf, a = fabs(x);
    if (a != a) return xf + xf;                  /* NaN */
    if (a >= 4.0) return x < 0 ? -1.0f : 1.0f;
    int i = (int)(a * 2.0);
    double t = (a - (i * 0.5 + 0.25)) * 4.0, p = ERF_POLY[ERF_DEG][i];
    for (int k = ERF_DEG - 1; k >= 0; k--) p = p * t + ERF_POLY[k][i];
    return (float)(x * p);
}

static float exp_one(float xf) {
    double x = xf;
    if (x != x) return xf + xf;
    x = x < -EXP_CLAMP ? -EXP_CLAMP : x > EXP_CLAMP ? EXP_CLAMP : x;
    double n = nearbyint(x * LOG2E), r = (x - n * LN2_HI) - n * LN2_LO, p = EXP_INV_FACT[EXP_DEG];
    for (int k = EXP_DEG - 1; k >= 0; k--) p = p * r + EXP_INV_FACT[k];
    uint64_t bits = (uint64_t)((int64_t)n + 1023) << 52;     /* 2^n: |n| <= 231, a normal double */
    double s;
    memcpy(&s, &bits, sizeof s);
    return (float)(p * s);
}

static void erf_c(float *y, const float *x, size_t n) { for (size_t i = 0; i < n; i++) y[i] = erf_one(x[i]); }
static void exp_c(float *y, const float *x, size_t n) { for (size_t i = 0; i < n; i++) y[i] = exp_one(x[i]); }

/* ============================================================================================
 * AVX-512: 8 doubles a vector, two per 16 floats
 * ============================================================================================ */

#ifdef FX_X86
/* The interval's coefficient is picked per lane by a permute from the 8 intervals' values. */
__attribute__((target("avx512f"), always_inline))
static inline __m512d erf8(__m512d x) {
    __m512d a = _mm512_abs_pd(x);
    __m512d f = _mm512_roundscale_pd(_mm512_min_pd(_mm512_mul_pd(a, _mm512_set1_pd(2.0)), _mm512_set1_pd(7.0)),
                                     _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);  /* NaN lanes: 7 */
    __m512i idx = _mm512_cvtepi32_epi64(_mm512_cvttpd_epi32(f));
    __m512d t = _mm512_mul_pd(_mm512_sub_pd(a, _mm512_fmadd_pd(f, _mm512_set1_pd(0.5), _mm512_set1_pd(0.25))),
                              _mm512_set1_pd(4.0));
    __m512d p = _mm512_permutexvar_pd(idx, _mm512_loadu_pd(ERF_POLY[ERF_DEG]));
    for (int k = ERF_DEG - 1; k >= 0; k--) p = _mm512_fmadd_pd(p, t, _mm512_permutexvar_pd(idx, _mm512_loadu_pd(ERF_POLY[k])));
    __m512d r = _mm512_mul_pd(x, p);
    __mmask8 big = _mm512_cmp_pd_mask(a, _mm512_set1_pd(4.0), _CMP_GE_OQ);
    __m512d one = _mm512_castsi512_pd(_mm512_or_si512(_mm512_castpd_si512(_mm512_set1_pd(1.0)),
                  _mm512_and_si512(_mm512_castpd_si512(x), _mm512_set1_epi64((long long)0x8000000000000000ULL))));
    return _mm512_mask_blend_pd(big, r, one);
}

__attribute__((target("avx512f"), always_inline))
static inline __m512d exp8(__m512d x) {
    /* max/min return their second operand when one is NaN: NaN goes through, and NaN - n*ln2 stays NaN */
    x = _mm512_min_pd(_mm512_set1_pd(EXP_CLAMP), _mm512_max_pd(_mm512_set1_pd(-EXP_CLAMP), x));
    __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(x, _mm512_set1_pd(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(LN2_HI), x);
    r = _mm512_fnmadd_pd(n, _mm512_set1_pd(LN2_LO), r);
    __m512d p = _mm512_set1_pd(EXP_INV_FACT[EXP_DEG]);
    for (int k = EXP_DEG - 1; k >= 0; k--) p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(EXP_INV_FACT[k]));
    return _mm512_scalef_pd(p, n);
}

/* F over N floats: 16 a step, the tail under a mask (masked loads read nothing past the end). */
#define VMATH_LOOP(F)                                                                                  \
    for (size_t i = 0; i < n; i += 16) {                                                               \
        size_t left = n - i;                                                                           \
        __mmask16 m = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);                  \
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);                                                    \
        __m256 lo = F(_mm512_cvtps_pd(_mm512_castps512_ps256(v)));                                     \
        __m256 hi = F(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)))); \
        __m512 out = _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)),    \
                                                         _mm256_castps_pd(hi), 1));                      \
        _mm512_mask_storeu_ps(y + i, m, out);                                                          \
    }

#define ERF8_PS(v) _mm512_cvtpd_ps(erf8(v))
#define EXP8_PS(v) _mm512_cvtpd_ps(exp8(v))
__attribute__((target("avx512f"))) static void erf_512(float *y, const float *x, size_t n) { VMATH_LOOP(ERF8_PS) }
__attribute__((target("avx512f"))) static void exp_512(float *y, const float *x, size_t n) { VMATH_LOOP(EXP8_PS) }

static int have_512(void) { __builtin_cpu_init(); return __builtin_cpu_supports("avx512f"); }

/* ============================================================================================
 * AVX2 + FMA: 4 doubles a vector, one per 4 floats
 * ============================================================================================
 * The AVX-512 path's steps in its order, with AVX2's instructions: the interval's coefficient is picked
 * per lane by permutes from the 8 intervals' values (a gather, the plainer way, ran at half the speed
 * on AMD Zen 3), and 2^n is built from its exponent bits where AVX-512 has scalef. A vector whose 4 lanes
 * all lie below 2 (GELU's erf(x / sqrt 2) for |x| < 2.8, nearly all of a network's activations) picks
 * from the lower 4 intervals with one permute, the same values: erf ran in 0.63x the time on GELU-sized
 * arguments (a 2-core EPYC), and no slower on wide ones. */

/* ROW[i mod 4] for each lane's interval i (PAIRS holds the pair of floats 2 (i mod 4), 2 (i mod 4) + 1):
 * vpermps picks among 8 floats, so among ROW's first 4 doubles. ROW[i] itself where every i is below 4. */
__attribute__((target("avx2,fma"), always_inline))
static inline __m256d pick4(const double *row, __m256i pairs) {
    return _mm256_castps_pd(_mm256_permutevar8x32_ps(_mm256_castpd_ps(_mm256_loadu_pd(row)), pairs));
}

/* ROW[i] for each lane's interval i of 8: each half of ROW picked by pick4, the blend taking the upper
 * half where i >= 4. */
__attribute__((target("avx2,fma"), always_inline))
static inline __m256d pick8(const double *row, __m256i pairs, __m256d upper) {
    return _mm256_blendv_pd(pick4(row, pairs), pick4(row + 4, pairs), upper);
}

__attribute__((target("avx2,fma"), always_inline))
static inline __m256d erf4(__m256d x) {
    __m256d sign = _mm256_set1_pd(-0.0);
    __m256d a = _mm256_andnot_pd(sign, x);
    /* min returns its second operand when one is NaN: NaN lanes take interval 7 */
    __m256d f = _mm256_floor_pd(_mm256_min_pd(_mm256_mul_pd(a, _mm256_set1_pd(2.0)), _mm256_set1_pd(7.0)));
    /* pick8's controls: floats 2 (i mod 4) and 2 (i mod 4) + 1 in each lane, the upper half where i >= 4 */
    __m256i i4 = _mm256_and_si256(_mm256_cvtepi32_epi64(_mm256_cvttpd_epi32(f)), _mm256_set1_epi64x(3));
    __m256i twice = _mm256_slli_epi64(i4, 1);
    __m256i pairs = _mm256_or_si256(twice, _mm256_slli_epi64(_mm256_add_epi64(twice, _mm256_set1_epi64x(1)), 32));
    __m256d upper = _mm256_cmp_pd(f, _mm256_set1_pd(4.0), _CMP_GE_OQ);
    __m256d t = _mm256_mul_pd(_mm256_sub_pd(a, _mm256_fmadd_pd(f, _mm256_set1_pd(0.5), _mm256_set1_pd(0.25))),
                              _mm256_set1_pd(4.0));
    __m256d p;
    if (_mm256_movemask_pd(upper) == 0) { /* every lane in the first 4 intervals (|x| < 2): one permute a pick */
        p = pick4(ERF_POLY[ERF_DEG], pairs);
        #pragma GCC unroll 16
        for (int k = ERF_DEG - 1; k >= 0; k--) p = _mm256_fmadd_pd(p, t, pick4(ERF_POLY[k], pairs));
    } else {
        p = pick8(ERF_POLY[ERF_DEG], pairs, upper);
        #pragma GCC unroll 16
        for (int k = ERF_DEG - 1; k >= 0; k--) p = _mm256_fmadd_pd(p, t, pick8(ERF_POLY[k], pairs, upper));
    }
    __m256d r = _mm256_mul_pd(x, p);
    __m256d big = _mm256_cmp_pd(a, _mm256_set1_pd(4.0), _CMP_GE_OQ);
    __m256d one = _mm256_or_pd(_mm256_set1_pd(1.0), _mm256_and_pd(sign, x));
    return _mm256_blendv_pd(r, one, big);
}

__attribute__((target("avx2,fma"), always_inline))
static inline __m256d exp4(__m256d x) {
    /* max/min return their second operand when one is NaN: NaN goes through, and NaN - n*ln2 stays NaN */
    x = _mm256_min_pd(_mm256_set1_pd(EXP_CLAMP), _mm256_max_pd(_mm256_set1_pd(-EXP_CLAMP), x));
    __m256d n = _mm256_round_pd(_mm256_mul_pd(x, _mm256_set1_pd(LOG2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256d r = _mm256_fnmadd_pd(n, _mm256_set1_pd(LN2_HI), x);
    r = _mm256_fnmadd_pd(n, _mm256_set1_pd(LN2_LO), r);
    __m256d p = _mm256_set1_pd(EXP_INV_FACT[EXP_DEG]);
    for (int k = EXP_DEG - 1; k >= 0; k--) p = _mm256_fmadd_pd(p, r, _mm256_set1_pd(EXP_INV_FACT[k]));
    /* 2^n as bits, (n + 1023) << 52: |n| <= 231, a normal double, and p 2^n is exact (as scalef is).
     * A NaN lane converts to some integer, and p, NaN, stays NaN whatever it is multiplied by. */
    __m256i e = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_cvtpd_epi32(n)), _mm256_set1_epi64x(1023));
    return _mm256_mul_pd(p, _mm256_castsi256_pd(_mm256_slli_epi64(e, 52)));
}

/* F over N floats: 4 a step, the last 1 to 3 under a mask (masked loads read nothing past the end). */
#define VMATH_LOOP4(F)                                                                                 \
    size_t i = 0;                                                                                      \
    for (; i + 4 <= n; i += 4) _mm_storeu_ps(y + i, _mm256_cvtpd_ps(F(_mm256_cvtps_pd(_mm_loadu_ps(x + i))))); \
    if (i < n) {                                                                                       \
        __m128i m = _mm_cmpgt_epi32(_mm_set1_epi32((int)(n - i)), _mm_setr_epi32(0, 1, 2, 3));        \
        _mm_maskstore_ps(y + i, m, _mm256_cvtpd_ps(F(_mm256_cvtps_pd(_mm_maskload_ps(x + i, m)))));   \
    }

__attribute__((target("avx2,fma"))) static void erf_avx2(float *y, const float *x, size_t n) { VMATH_LOOP4(erf4) }
__attribute__((target("avx2,fma"))) static void exp_avx2(float *y, const float *x, size_t n) { VMATH_LOOP4(exp4) }

static int have_avx2(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

/* ============================================================================================
 * Dispatch
 * ============================================================================================ */

typedef struct {
    const char *name;
    void (*erf)(float *, const float *, size_t);
    void (*exp)(float *, const float *, size_t);
    int (*available)(void);
    const char *needs;          /* what available() asks of the CPU, for the error */
} vmath_path;

static int always(void) { return 1; }

static const vmath_path PATHS[] = {
#ifdef FX_X86
    {"avx512", erf_512, exp_512, have_512, "AVX-512F"},
    {"avx2", erf_avx2, exp_avx2, have_avx2, "AVX2 and FMA"},
#endif
    {"c", erf_c, exp_c, always, "nothing"},
};
enum { NPATHS = sizeof PATHS / sizeof PATHS[0] };
static int current = -1;

static const vmath_path *pick(void) {
    int k = __atomic_load_n(&current, __ATOMIC_ACQUIRE);
    if (k < 0) {
        for (k = 0; k < NPATHS - 1 && !PATHS[k].available(); k++) {}
        __atomic_store_n(&current, k, __ATOMIC_RELEASE);
    }
    return &PATHS[k];
}

const char *fx_vmath_path(void) { return pick()->name; }

int fx_vmath_force(const char *name) {
    for (int k = 0; k < NPATHS; k++)
        if (strcmp(PATHS[k].name, name) == 0) {
            if (!PATHS[k].available()) {
                fx_seterr("fx_vmath_force: the %s path needs %s, which this CPU lacks", name, PATHS[k].needs);
                return -1;
            }
            __atomic_store_n(&current, k, __ATOMIC_RELEASE);
            return 0;
        }
    fx_seterr("fx_vmath_force: no path named '%s' (avx512, avx2, c)", name);
    return -1;
}

void fx_erf(float *y, const float *x, size_t n) { pick()->erf(y, x, n); }
void fx_exp(float *y, const float *x, size_t n) { pick()->exp(y, x, n); }
