/* tests/test_vmath.c: vmath.c's erf and exp, every path this CPU runs, against glibc's erff/expf and
 * against double erf/exp rounded once to float: a sweep over the float line, every float of the windows
 * where the methods change (interval edges, erf's cut to +-1, exp's overflow and subnormal range), the
 * special values, and every array length up to 40 in and out of place. */
#include "../fedex.h"
#include "check.h"

#include <float.h>
#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------- tolerances
 *
 *   what                            bound       why
 *   vs libm (erff, expf)            1 ulp       vmath.c: ours is within 0.5 + 2e-6 ulp of the true value,
 *   vs double erf/exp rounded                   glibc's within 1 ulp, and two floats differ by whole ulps.
 *   +-0, +-inf, NaN                 exact       erf(+-0) = +-0, erf(+-inf) = +-1, exp(-inf) = +0,
 *                                               exp(+inf) = inf, NaN in NaN out.
 *   in place, any length            bitwise     the same values whatever the array's length or offset.
 */
#define MAX_ULP 1

/* Distance in ulps: floats as integers ordered along the line (+0 and -0 both 0). */
static int64_t ord(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u & 0x80000000u ? -(int64_t)(u & 0x7fffffffu) : (int64_t)u;
}
static int64_t ulps(float a, float b) {
    if (a != a || b != b) return a != a && b != b ? 0 : INT64_MAX;
    int64_t d = ord(a) - ord(b);
    return d < 0 ? -d : d;
}
static float from_bits(uint32_t u) { float f; memcpy(&f, &u, sizeof f); return f; }

typedef struct {
    const char *name;
    void (*ours)(float *, const float *, size_t);
    float (*libm)(float);
    double (*exact)(double);
} fn;

static const fn FNS[] = {{"erf", fx_erf, erff, erf}, {"exp", fx_exp, expf, exp}};

/* Worst ulps over X[0..n) against libm and against the double function, and how many differ from libm. */
static void compare(const char *path, const fn *f, const float *x, size_t n, const char *what) {
    float *y = fx_malloc(n * sizeof *y);
    f->ours(y, x, n);
    int64_t worst_libm = 0, worst_exact = 0;
    size_t wl = 0, we = 0, differ = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t dl = ulps(y[i], f->libm(x[i])), de = ulps(y[i], (float)f->exact(x[i]));
        if (dl) differ++;
        if (dl > worst_libm) { worst_libm = dl; wl = i; }
        if (de > worst_exact) { worst_exact = de; we = i; }
    }
    CHECK(worst_libm <= MAX_ULP, "%s %s, %s: %lld ulps from libm at x = %.9g (ours %.9g, libm %.9g)", path,
          f->name, what, (long long)worst_libm, (double)x[wl], (double)y[wl], (double)f->libm(x[wl]));
    CHECK(worst_exact <= MAX_ULP, "%s %s, %s: %lld ulps from the double function at x = %.9g (ours %.9g)", path,
          f->name, what, (long long)worst_exact, (double)x[we], (double)y[we]);
    printf("%s %s, %s: %zu floats, %zu differ from libm (by 1 ulp), worst vs double %lld ulp\n", path, f->name,
           what, n, differ, (long long)worst_exact);
    free(y);
}

/* Every float with bits from lo to hi by STRIDE, both signs. */
static size_t sweep(float *x, uint32_t lo, uint32_t hi, uint32_t stride) {
    size_t n = 0;
    for (uint64_t u = lo; u <= hi; u += stride) {
        x[n++] = from_bits((uint32_t)u);
        x[n++] = -from_bits((uint32_t)u);
    }
    return n;
}

/* Every float in [a, b], at most 2 million of them (X's room). */
static size_t window(float *x, float a, float b) {
    size_t n = 0;
    for (float v = a; v <= b && n < 2000000; v = nextafterf(v, INFINITY)) x[n++] = v;
    return n;
}

static void test_path(const char *path) {
    /* the whole finite line, 1 float in 1021 (about 2 million of each sign) */
    size_t cap = 2 * ((size_t)0x41200000u / 257 + 2); /* the larger of the two sweeps */
    float *x = fx_malloc(cap * sizeof *x);
    size_t n = sweep(x, 0, 0x7f7fffffu, 1021);
    for (int f = 0; f < 2; f++) compare(path, &FNS[f], x, n, "the float line by 1021");
    /* [-10, 10] more densely, 1 in 257 */
    n = sweep(x, 0, 0x41200000u, 257);
    for (int f = 0; f < 2; f++) compare(path, &FNS[f], x, n, "[-10, 10] by 257");
    free(x);

    /* every float of the windows where a method changes */
    static const float ERF_WIN[][2] = {{0.4999f, 0.5001f}, {0.9999f, 1.0001f}, {1.9999f, 2.0001f}, {3.49f, 3.5f},
                                       {3.85f, 4.1f}, {-4.1f, -3.85f}, {-1.0001f, -0.9999f}, {1e-6f, 1.01e-6f}};
    static const float EXP_WIN[][2] = {{88.6f, 89.0f}, {-88.0f, -87.0f}, {-104.0f, -102.0f}, {-0.36f, -0.34f},
                                       {0.34f, 0.36f}, {1e-7f, 1.001e-7f}, {-1.001e-7f, -1e-7f}};
    float *w = fx_malloc(2000000 * sizeof *w);
    for (size_t i = 0; i < sizeof ERF_WIN / sizeof ERF_WIN[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "every float of [%g, %g]", ERF_WIN[i][0], ERF_WIN[i][1]);
        compare(path, &FNS[0], w, window(w, ERF_WIN[i][0], ERF_WIN[i][1]), what);
    }
    for (size_t i = 0; i < sizeof EXP_WIN / sizeof EXP_WIN[0]; i++) {
        char what[64];
        snprintf(what, sizeof what, "every float of [%g, %g]", EXP_WIN[i][0], EXP_WIN[i][1]);
        compare(path, &FNS[1], w, window(w, EXP_WIN[i][0], EXP_WIN[i][1]), what);
    }
    free(w);

    /* special values */
    float sp[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN, FLT_MIN, -FLT_MIN, from_bits(1), -from_bits(1),
                  from_bits(0x7fffff), FLT_MAX, -FLT_MAX, 4.0f, -4.0f, 1e30f, -1e30f};
    enum { NS = sizeof sp / sizeof sp[0] };
    float e[NS], g[NS];
    fx_erf(e, sp, NS);
    fx_exp(g, sp, NS);
    CHECK(e[0] == 0 && !signbit(e[0]) && e[1] == 0 && signbit(e[1]), "%s erf(+-0) = %g %g", path, e[0], e[1]);
    CHECK(e[2] == 1 && e[3] == -1 && e[4] != e[4] && e[5] != e[5], "%s erf(+-inf, NaN) = %g %g %g %g", path, e[2],
          e[3], e[4], e[5]);
    CHECK(g[0] == 1 && g[1] == 1 && g[2] == INFINITY && g[3] == 0 && !signbit(g[3]) && g[4] != g[4] && g[5] != g[5],
          "%s exp(+-0, +-inf, NaN) = %g %g %g %g %g %g", path, g[0], g[1], g[2], g[3], g[4], g[5]);
    for (int f = 0; f < 2; f++) compare(path, &FNS[f], sp, NS, "special values");

    /* every length up to 40, at an odd offset, out of place and in place */
    float in[48], out[48], ref[48], inpl[48];
    for (int i = 0; i < 48; i++) in[i] = (float)(i - 20) * 0.37f;
    for (int f = 0; f < 2; f++) {
        FNS[f].ours(ref, in, 48);
        int bad = 0;
        for (int len = 0; len <= 40; len++) {
            for (int i = 0; i < 48; i++) out[i] = -7.0f;
            FNS[f].ours(out + 3, in + 3, (size_t)len);
            memcpy(inpl, in, sizeof in);
            FNS[f].ours(inpl + 3, inpl + 3, (size_t)len);
            for (int i = 0; i < 48; i++) {
                int inside = i >= 3 && i < 3 + len;
                if (inside ? out[i] != ref[i] || inpl[i] != ref[i] : out[i] != -7.0f || inpl[i] != in[i]) bad = 1;
            }
        }
        CHECK(!bad, "%s %s: a length or offset changed values, or wrote outside the array", path, FNS[f].name);
    }
}

/* Whether this CPU runs a path, asked of the CPU here rather than of vmath.c. */
static int cpu_runs(const char *path) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (strcmp(path, "avx512") == 0) return __builtin_cpu_supports("avx512f") != 0; /* a nonzero mask, not 1 */
    if (strcmp(path, "avx2") == 0) return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    if (strcmp(path, "avx512") == 0 || strcmp(path, "avx2") == 0) return 0;
#endif
    return 1;
}

int main(void) {
    static const char *PATHS[] = {"avx512", "avx2", "c"}; /* vmath.c's order, fastest first */
    enum { NPATHS = sizeof PATHS / sizeof PATHS[0] };
    const char *best = fx_vmath_path();
    int first = 0;
    while (!cpu_runs(PATHS[first])) first++;
    CHECK(strcmp(best, PATHS[first]) == 0, "the default path is %s, the fastest this CPU runs is %s", best,
          PATHS[first]);
    CHECK(fx_vmath_force("no-such-path") == -1, "an unknown path name was accepted");
    for (int i = 0; i < NPATHS; i++) {
        int forced = fx_vmath_force(PATHS[i]) == 0;
        CHECK(forced == cpu_runs(PATHS[i]), "fx_vmath_force(%s) %s on a CPU that %s it", PATHS[i],
              forced ? "succeeded" : "failed", cpu_runs(PATHS[i]) ? "runs" : "cannot run");
        if (!forced) { printf("skipped: path %s (%s)\n", PATHS[i], fx_err()); continue; }
        CHECK(strcmp(fx_vmath_path(), PATHS[i]) == 0, "forced %s, but the path in use is %s", PATHS[i],
              fx_vmath_path());
        test_path(PATHS[i]);
    }
    CHECK(fx_vmath_force(best) == 0, "cannot return to path %s", best);
    return check_done();
}
