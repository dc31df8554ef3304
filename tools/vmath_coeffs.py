#!/usr/bin/python3
"""tools/vmath_coeffs.py: prints vmath.c's erf table. On each of the 8 intervals [i/2, (i+1)/2) of |x|,
erf(x)/x is interpolated at Chebyshev points in 50-digit arithmetic (mpmath) by a polynomial of degree
DEG in t = 4 (|x| - c), c the interval's midpoint, converted to powers of t and rounded to double; then
the fit's worst relative error over 4001 points an interval is printed (it must stay far below 2^-24)."""
import mpmath as mp

mp.mp.dps = 50
DEG, NINT, WIDTH = 10, 8, mp.mpf(1) / 2


def g(x):
    return 2 / mp.sqrt(mp.pi) if x == 0 else mp.erf(x) / x


def fit(i):
    c = (i + mp.mpf(1) / 2) * WIDTH
    n = DEG + 1
    nodes = [mp.cos(mp.pi * (k + mp.mpf(1) / 2) / n) for k in range(n)]
    vals = [g(c + t * WIDTH / 2) for t in nodes]
    # Chebyshev coefficients, then the power basis (exact in 50 digits)
    a = [2 * mp.fsum(vals[k] * mp.cos(j * mp.pi * (k + mp.mpf(1) / 2) / n) for k in range(n)) / n for j in range(n)]
    a[0] /= 2
    T = [[mp.mpf(1)], [mp.mpf(0), mp.mpf(1)]]
    for j in range(2, n):
        prev, prev2 = T[j - 1], T[j - 2]
        T.append([(2 * prev[k - 1] if k >= 1 else 0) - (prev2[k] if k < len(prev2) else 0) for k in range(j + 1)])
    p = [mp.mpf(0)] * n
    for j in range(n):
        for k, tk in enumerate(T[j]):
            p[k] += a[j] * tk
    return c, [float(v) for v in p]


def worst(c, p):
    w = 0
    for k in range(4001):
        t = mp.mpf(-1) + 2 * mp.mpf(k) / 4000
        x = c + t * WIDTH / 2
        acc = mp.mpf(0)
        for coef in reversed(p):
            acc = acc * t + mp.mpf(coef)
        w = max(w, abs(acc / g(x) - 1))
    return w


rows = [fit(i) for i in range(NINT)]
print("static const double ERF_POLY[%d][%d] = { /* [power of t][interval] */" % (DEG + 1, NINT))
for k in range(DEG + 1):
    print("    {" + ", ".join("%.17g" % rows[i][1][k] for i in range(NINT)) + "},")
print("};")
for i, (c, p) in enumerate(rows):
    print("/* interval %d: worst relative error of the fit %.2e */" % (i, worst(c, p)))
