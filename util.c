/* util.c: the small services every other file leans on: error messages, checked allocation, whole-file
 * reads and atomic writes, a monotonic clock and a seeded random number generator.
 * It knows nothing about models, data or formats. */
#include "fedex.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- errors */

static _Thread_local char err_buf[1024];

/* Formats into a local buffer first: callers often add context to the last message, passing fx_err()
 * (this very buffer) as an argument. */
void fx_seterr(const char *fmt, ...) {
    char tmp[sizeof err_buf];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    memcpy(err_buf, tmp, sizeof err_buf);
}

const char *fx_err(void) { return err_buf[0] ? err_buf : "unknown error"; }

_Noreturn void fx_die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("fedex: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

/* ---------------------------------------------------------------- memory */

void *fx_malloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) fx_die("out of memory allocating %zu bytes", n);
    return p;
}

void *fx_calloc(size_t count, size_t size) {
    void *p = calloc(count ? count : 1, size ? size : 1);
    if (!p) fx_die("out of memory allocating %zu x %zu bytes", count, size);
    return p;
}

void *fx_realloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    if (!q) fx_die("out of memory reallocating to %zu bytes", n);
    return q;
}

char *fx_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    return memcpy(fx_malloc(n), s, n);
}

int fx_mul_size(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return -1;
    *out = a * b;
    return 0;
}

int fx_add_size(size_t a, size_t b, size_t *out) {
    if (b > SIZE_MAX - a) return -1;
    *out = a + b;
    return 0;
}

/* ---------------------------------------------------------------- files */

int fx_open_regular(const char *path, int *fd_out, size_t *size) {
    /* O_NONBLOCK: opening a FIFO (or a device) must not wait for a writer before the type is checked */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) { fx_seterr("%s: cannot open: %s", path, strerror(errno)); return -1; }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || fcntl(fd, F_SETFL, 0) != 0) {
        fx_seterr("%s: not a regular file", path);
        close(fd);
        return -1;
    }
    *fd_out = fd;
    *size = (size_t)st.st_size;
    return 0;
}

/* Standard input to its end, for "-". */
static int read_stdin(char **data, size_t *len) {
    size_t cap = 65536, n = 0;
    char *buf = fx_malloc(cap + 1);
    for (;;) {
        if (n == cap) buf = fx_realloc(buf, (cap *= 2) + 1);
        ssize_t k = read(0, buf + n, cap - n);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) { fx_seterr("standard input: read failed: %s", strerror(errno)); free(buf); return -1; }
        if (k == 0) break;
        n += (size_t)k;
    }
    buf[n] = 0;
    *data = buf;
    *len = n;
    return 0;
}

int fx_read_file(const char *path, char **data, size_t *len) {
    int fd;
    size_t n, got = 0;
    if (!strcmp(path, "-") || !strcmp(path, "/dev/stdin")) return read_stdin(data, len);
    if (fx_open_regular(path, &fd, &n) != 0) return -1;
    char *buf = fx_malloc(n + 1);
    while (got < n) {
        ssize_t k = read(fd, buf + got, n - got);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) {
            fx_seterr("%s: read failed after %zu of %zu bytes: %s", path, got, n,
                      k < 0 ? strerror(errno) : "file shrank");
            free(buf);
            close(fd);
            return -1;
        }
        got += (size_t)k;
    }
    close(fd);
    buf[n] = 0;
    *data = buf;
    *len = n;
    return 0;
}

int fx_write_file_atomic(const char *path, const void *data, size_t len) {
    size_t plen = strlen(path) + 32;
    char *tmp = fx_malloc(plen);
    /* A fresh, unpredictable name created exclusively (mkostemp: O_CREAT | O_EXCL, so a file or symbolic
     * link planted there is never followed or truncated), mode 0644 as any output. */
    snprintf(tmp, plen, "%s" FX_TMP_SUFFIX "XXXXXX", path);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd >= 0 && fchmod(fd, 0644) != 0) { close(fd); unlink(tmp); fd = -1; }
    if (fd < 0) {
        fx_seterr("%s: cannot create: %s", tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    const char *p = data;
    size_t done = 0;
    while (done < len) {
        ssize_t k = write(fd, p + done, len - done);
        if (k < 0 && errno == EINTR) continue;
        if (k < 0) {
            fx_seterr("%s: write failed: %s", tmp, strerror(errno));
            close(fd); unlink(tmp); free(tmp);
            return -1;
        }
        done += (size_t)k;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        fx_seterr("%s: cannot flush to disk: %s", tmp, strerror(errno));
        unlink(tmp); free(tmp);
        return -1;
    }
    if (rename(tmp, path) != 0) {
        fx_seterr("%s: cannot rename into place: %s", path, strerror(errno));
        unlink(tmp); free(tmp);
        return -1;
    }
    free(tmp);
    return 0;
}

int fx_write_memstream_atomic(FILE *f, char **buf, size_t *len, const char *path) {
    int bad = fclose(f) != 0;
    int rc = bad ? -1 : fx_write_file_atomic(path, *buf, *len);
    if (bad) fx_seterr("%s: cannot format the file", path);
    free(*buf);
    *buf = NULL;
    return rc;
}

int fx_mkdir_p(const char *dir) {
    if (!*dir) { fx_seterr("an empty folder name"); return -1; }
    char *p = fx_strdup(dir);
    for (char *s = p + 1; ; s++) {
        if (*s == '/' || *s == 0) {
            char c = *s;
            *s = 0;
            if (mkdir(p, 0755) != 0 && errno != EEXIST) {
                fx_seterr("%s: cannot create directory: %s", p, strerror(errno));
                free(p);
                return -1;
            }
            *s = c;
            if (!c) break;
        }
    }
    free(p);
    return 0;
}

double fx_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

const char *fx_duration_str(double s, char *buf, size_t n) {
    if (!(s >= 0) || s > 1e9) snprintf(buf, n, "?");
    else if (s < 59.5) snprintf(buf, n, "%.0fs", s);
    else if (s < 3600 - 0.5) { long t = lround(s); snprintf(buf, n, "%ldm%02lds", t / 60, t % 60); }
    else { long t = lround(s / 60); snprintf(buf, n, "%ldh%02ldm", t / 60, t % 60); }
    return buf;
}

/* ---------------------------------------------------------------- timings */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double fx_sort_median(double *x, int n) {
    qsort(x, (size_t)n, sizeof *x, cmp_double);
    return n ? x[n / 2] : NAN;
}

/* ---------------------------------------------------------------- random numbers */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void fx_rng_seed(fx_rng *r, uint64_t seed) {
    for (int i = 0; i < 4; i++) r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* xoshiro256's state transition (Blackman and Vigna 2018) */
static inline void rng_step(uint64_t *s) {
    uint64_t t = s[1] << 17;
    s[2] ^= s[0]; s[3] ^= s[1]; s[1] ^= s[2]; s[0] ^= s[3];
    s[2] ^= t; s[3] = rotl(s[3], 45);
}

static inline uint64_t next(uint64_t *s) {
    uint64_t result = rotl(s[1] * 5, 7) * 9; /* the ** scrambler */
    rng_step(s);
    return result;
}

uint64_t fx_rng_u64(fx_rng *r) { return next(r->s); }

double fx_rng_uniform(fx_rng *r) { return (double)(fx_rng_u64(r) >> 11) * 0x1.0p-53; }

/* Jumping ahead. xoshiro256's step is a linear map T on its 256 state bits over GF(2), so T^k is a
 * polynomial in T: with p the characteristic polynomial of T (degree 256; p(T) = 0), T^k = (x^k mod p)(T),
 * and the state after K draws is the sum (xor) of T^j s over the coefficients j of x^k mod p: 256 steps
 * however large K is. p is found, rather than written down, by Berlekamp-Massey on 512 bits of one state
 * word from a fixed state: that sequence's minimal polynomial, which is T's since T's is irreducible (the
 * generator has full period 2^256 - 1). A polynomial of degree < 256 is four words, bit j of word j / 64
 * the coefficient of x^j. */
typedef struct { uint64_t w[4]; } poly256;

/* p without its leading x^256: x^256 = LOW (mod p). */
static poly256 rng_charpoly_low(void) {
    enum { N = 512 };
    unsigned char a[N], c[N + 1] = {1}, b[N + 1] = {1}, t[N + 1];
    uint64_t s[4] = {1, 2, 3, 4};
    for (int i = 0; i < N; i++) { a[i] = (unsigned char)(s[0] & 1); rng_step(s); }
    int L = 0, m = 1;
    for (int n = 0; n < N; n++) { /* c: the connection polynomial, a_n = sum_{i=1..L} c_i a_{n-i} */
        unsigned char d = a[n];
        for (int i = 1; i <= L; i++) d ^= c[i] & a[n - i];
        if (!d) { m++; continue; }
        memcpy(t, c, sizeof c);
        for (int i = 0; i + m <= N; i++) c[i + m] ^= b[i];
        if (2 * L <= n) { L = n + 1 - L; memcpy(b, t, sizeof b); m = 1; }
        else m++;
    }
    if (L != 256) fx_die("rng: the characteristic polynomial has degree %d, not 256", L);
    /* p(x) = x^L c(1/x) = x^256 + sum_i c_i x^(256 - i) */
    poly256 low = {{0}};
    for (int i = 1; i <= L; i++) if (c[i]) low.w[(256 - i) / 64] |= 1ULL << ((256 - i) % 64);
    return low;
}

/* A x mod p */
static poly256 poly_shift(poly256 a, const poly256 *low) {
    uint64_t top = a.w[3] >> 63;
    for (int i = 3; i > 0; i--) a.w[i] = (a.w[i] << 1) | (a.w[i - 1] >> 63);
    a.w[0] <<= 1;
    if (top) for (int i = 0; i < 4; i++) a.w[i] ^= low->w[i];
    return a;
}

/* A B mod p, Horner over B's bits from the highest */
static poly256 poly_mulmod(poly256 a, poly256 b, const poly256 *low) {
    poly256 r = {{0}};
    for (int j = 255; j >= 0; j--) {
        r = poly_shift(r, low);
        if (b.w[j / 64] >> (j % 64) & 1) for (int i = 0; i < 4; i++) r.w[i] ^= a.w[i];
    }
    return r;
}

void fx_rng_jump(fx_rng *r, uint64_t k) {
    if (k < 512) { for (; k; k--) rng_step(r->s); return; }
    poly256 low = rng_charpoly_low(), e = {{1}}, x = {{2}};
    for (; k; k >>= 1) { /* e = x^k mod p by squaring */
        if (k & 1) e = poly_mulmod(e, x, &low);
        x = poly_mulmod(x, x, &low);
    }
    uint64_t acc[4] = {0}, *s = r->s;
    for (int j = 0; j < 256; j++) {
        if (e.w[j / 64] >> (j % 64) & 1) for (int i = 0; i < 4; i++) acc[i] ^= s[i];
        rng_step(s);
    }
    memcpy(s, acc, sizeof acc);
}

/* uniform >= p is (u >> 11) 2^-53 >= p with both sides exact in double (p is a float), that is
 * (u >> 11) >= p 2^53, an integer against a real: (u >> 11) >= ceil(p 2^53). */
static uint64_t keep_threshold(float p) {
    double t = ceil((double)p * 0x1.0p53);
    return !(t <= 0x1.0p53) ? UINT64_MAX : t > 0 ? (uint64_t)t : 0; /* NaN or p > 1: keep none */
}

void fx_rng_keep(fx_rng *r, uint8_t *keep, size_t n, float p) {
    uint64_t s[4] = {r->s[0], r->s[1], r->s[2], r->s[3]};
    uint64_t thr = keep_threshold(p);
    for (size_t j = 0; j < n; j++) keep[j] = (next(s) >> 11) >= thr;
    memcpy(r->s, s, sizeof s);
}

/* fx_rng_keep_rows with AVX-512: the 8 rows' generators side by side, one per 64-bit lane (the scrambler's
 * multiplications by 5 and 9 as shifts and adds, exact modulo 2^64), so each lane draws exactly what
 * fx_rng_keep draws. Eight draws of the 8 rows give 64 bits, draw q of row i at bit 8q + i; an 8 x 8 bit
 * transpose puts row i's eight in byte i, and pdep spreads them to eight 0/1 bytes. */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define KEEP_ROWS_X86 1

/* bit 8r + c <-> bit 8c + r (Hacker's Delight, transpose8rS64) */
static uint64_t transpose_bits8(uint64_t x) {
    x = (x & 0xAA55AA55AA55AA55ULL) | ((x & 0x00AA00AA00AA00AAULL) << 7) | ((x >> 7) & 0x00AA00AA00AA00AAULL);
    x = (x & 0xCCCC3333CCCC3333ULL) | ((x & 0x0000CCCC0000CCCCULL) << 14) | ((x >> 14) & 0x0000CCCC0000CCCCULL);
    x = (x & 0xF0F0F0F00F0F0F0FULL) | ((x & 0x00000000F0F0F0F0ULL) << 28) | ((x >> 28) & 0x00000000F0F0F0F0ULL);
    return x;
}

__attribute__((target("avx512f,bmi2")))
static void keep_rows8(const uint64_t *seeds, int nrows, uint8_t *keep, size_t ld, size_t n, uint64_t thr) {
    uint64_t st[4][8] = {{0}};
    for (int i = 0; i < nrows; i++) {
        fx_rng g;
        fx_rng_seed(&g, seeds[i]);
        for (int w = 0; w < 4; w++) st[w][i] = g.s[w];
    }
    __m512i s0 = _mm512_loadu_si512(st[0]), s1 = _mm512_loadu_si512(st[1]);
    __m512i s2 = _mm512_loadu_si512(st[2]), s3 = _mm512_loadu_si512(st[3]), vt = _mm512_set1_epi64((long long)thr);
    size_t j = 0;
    for (;;) {
        uint64_t bits = 0;
        int q = 0;
        for (; q < 8 && j + (size_t)q < n; q++) {
            __m512i x = _mm512_add_epi64(s1, _mm512_slli_epi64(s1, 2));   /* s1 * 5 */
            x = _mm512_rol_epi64(x, 7);
            x = _mm512_add_epi64(x, _mm512_slli_epi64(x, 3));            /* * 9 */
            bits |= (uint64_t)_mm512_cmpge_epu64_mask(_mm512_srli_epi64(x, 11), vt) << (8 * q);
            __m512i t = _mm512_slli_epi64(s1, 17);
            s2 = _mm512_xor_si512(s2, s0);
            s3 = _mm512_xor_si512(s3, s1);
            s1 = _mm512_xor_si512(s1, s2);
            s0 = _mm512_xor_si512(s0, s3);
            s2 = _mm512_xor_si512(s2, t);
            s3 = _mm512_rol_epi64(s3, 45);
        }
        if (q == 0) break;
        bits = transpose_bits8(bits);
        for (int i = 0; i < nrows; i++) {
            uint64_t b = _pdep_u64((bits >> (8 * i)) & 0xff, 0x0101010101010101ULL);
            memcpy(keep + (size_t)i * ld + j, &b, (size_t)q); /* little-endian: draw q's byte at j + q */
        }
        j += (size_t)q;
    }
}

static int keep_rows_simd = -1;

static int have_keep_rows_simd(void) {
    int v = __atomic_load_n(&keep_rows_simd, __ATOMIC_RELAXED);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("bmi2");
        __atomic_store_n(&keep_rows_simd, v, __ATOMIC_RELAXED);
    }
    return v;
}
#endif

void fx_rng_keep_rows(const uint64_t *seeds, int nrows, uint8_t *keep, size_t ld, size_t n, float p) {
    int i = 0;
#ifdef KEEP_ROWS_X86
    if (have_keep_rows_simd()) {
        uint64_t thr = keep_threshold(p);
        for (; i < nrows; i += 8) keep_rows8(seeds + i, nrows - i < 8 ? nrows - i : 8, keep + (size_t)i * ld, ld, n, thr);
    }
#endif
    for (; i < nrows; i++) {
        fx_rng g;
        fx_rng_seed(&g, seeds[i]);
        fx_rng_keep(&g, keep + (size_t)i * ld, n, p);
    }
}

double fx_rng_normal(fx_rng *r) {
    double u1 = fx_rng_uniform(r), u2 = fx_rng_uniform(r);
    return sqrt(-2.0 * log(1.0 - u1)) * cos(6.283185307179586 * u2);
}

double fx_rng_gamma(fx_rng *r, double shape) {
    if (shape < 1.0) { /* boost: Gamma(a) = Gamma(a+1) * U^(1/a) */
        double u = fx_rng_uniform(r);
        return fx_rng_gamma(r, shape + 1.0) * pow(1.0 - u, 1.0 / shape);
    }
    double d = shape - 1.0 / 3.0, c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x = fx_rng_normal(r), v = 1.0 + c * x;
        if (v <= 0) continue;
        v = v * v * v;
        double u = fx_rng_uniform(r);
        if (log(1.0 - u) < 0.5 * x * x + d - d * v + d * log(v)) return d * v;
    }
}

/* The Mersenne Twister MT19937 (Matsumoto and Nishimura 1998) seeded by init_genrand: the generator
 * behind PyTorch's CPU torch.Generator (manual_seed keeps the seed's low 32 bits), so that tensors PEFT
 * draws from a seed can be drawn here bit for bit. */
void fx_mt_seed(fx_mt *g, uint32_t seed) {
    g->s[0] = seed;
    for (int i = 1; i < 624; i++) g->s[i] = 1812433253u * (g->s[i - 1] ^ (g->s[i - 1] >> 30)) + (uint32_t)i;
    g->i = 624;
}

uint32_t fx_mt_u32(fx_mt *g) {
    if (g->i >= 624) {
        for (int k = 0; k < 624; k++) {
            uint32_t y = (g->s[k] & 0x80000000u) | (g->s[(k + 1) % 624] & 0x7fffffffu);
            g->s[k] = g->s[(k + 397) % 624] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
        }
        g->i = 0;
    }
    uint32_t y = g->s[g->i++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    return y ^ (y >> 18);
}

/* torch's CPU Tensor.uniform_(lo, hi) on float32 (aten's uniform_real_distribution): the bounds rounded
 * to float, then per element u = (32-bit draw & (2^24 - 1)) * 2^-24 and u (hi - lo) + lo in double,
 * rounded to float, elements in row-major order. */
void fx_mt_uniform(fx_mt *g, float *x, size_t n, double lo, double hi) {
    double l = (float)lo, h = (float)hi;
    for (size_t i = 0; i < n; i++) x[i] = (float)((double)(fx_mt_u32(g) & 0xffffffu) * 0x1.0p-24 * (h - l) + l);
}
