/* cpu.c: the CPU ops table, the specification other backends are tested against: every layer op's
 * forward and backward in plain fp32 C, OpenMP-parallel with results independent of the thread count.
 * It knows no model, tensor name or family: model.c calls the ops in the order the transformer needs. */
#include "fedex.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Loops go parallel only above this many elements of work: a parallel region costs microseconds, and
 * the tiny models of the tests would spend their time in them. Above it, threads take chunks of rows or
 * elements as they come free (schedule dynamic): a thread the OS preempts on a busy machine then delays
 * the op by one chunk, not by its whole share. Every row or element is computed alone, so the results do
 * not depend on who took which. */
#define PAR_MIN 16384

/* ============================================================================================
 * memory
 * ============================================================================================ */

static void *cpu_alloc(size_t bytes) {
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) fx_die("out of memory allocating %zu bytes", bytes);
    return p;
}
static void cpu_release(void *p) { free(p); }
static void cpu_move(void *dst, const void *src, size_t bytes) { memcpy(dst, src, bytes); }
static void cpu_zero(float *x, size_t n) { memset(x, 0, n * sizeof *x); }
static void cpu_copy(float *dst, const float *src, size_t n) { memcpy(dst, src, n * sizeof *dst); }

/* y += alpha x (FedEx's W0 += alpha R). */
static void cpu_axpy(float *y, float alpha, const float *x, size_t n) {
    #pragma omp parallel for schedule(dynamic, 8192) if ((long)n >= PAR_MIN)
    for (long i = 0; i < (long)n; i++) y[i] += alpha * x[i];
}

static void cpu_copy_rows(float *dst, size_t ds, const float *src, size_t ss, int rows, int cols) {
    for (int i = 0; i < rows; i++) memcpy(dst + (size_t)i * ds, src + (size_t)i * ss, (size_t)cols * sizeof(float));
}
static void cpu_add_rows(float *dst, size_t ds, const float *src, size_t ss, int rows, int cols) {
    #pragma omp parallel for schedule(dynamic, 8) if ((long)rows * cols >= PAR_MIN)
    for (long i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) dst[(size_t)i * ds + j] += src[(size_t)i * ss + j];
}

/* ============================================================================================
 * elementwise and reductions
 * ============================================================================================ */

/* --- bias gradient and friends: column sums with the rows summed in order, one column per thread, so
 * the result does not depend on the thread count. db[j] = sum_i a[i,j] (* b[i,j] when B is given). */
static void column_dot(float *db /* (cols) */, const float *a /* (rows, cols) */, const float *b /* (rows, cols) or NULL */,
                       int rows, int cols) {
    #pragma omp parallel for schedule(dynamic, 16) if ((long)rows * cols >= PAR_MIN)
    for (long j = 0; j < cols; j++) {
        double s = 0;
        for (long i = 0; i < rows; i++) s += b ? (double)a[i * cols + j] * b[i * cols + j] : a[i * cols + j];
        db[j] = (float)s;
    }
}

/* out[i] = s[i % cols] * x[i] (VeRA's lambda scalings; fp32 products commute exactly). */
static void scale_cols(float *out, const float *s, const float *x, size_t n, int cols) {
    #pragma omp parallel for schedule(dynamic, 8192) if ((long)n >= PAR_MIN)
    for (long i = 0; i < (long)n; i++) out[i] = s[i % cols] * x[i];
}
static void scale_cols_add(float *y, const float *s, const float *x, size_t n, int cols) {
    #pragma omp parallel for schedule(dynamic, 8192) if ((long)n >= PAR_MIN)
    for (long i = 0; i < (long)n; i++) y[i] += s[i % cols] * x[i];
}

static void tanh_forward(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = tanhf(x[i]);
}
static void tanh_backward(float *d, const float *y, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] *= 1.0f - y[i] * y[i]; /* tanh' = 1 - tanh^2 */
}

/* ============================================================================================
 * dropout
 * ============================================================================================ */

/* Row r of a site draws from its own stream seeded by (site, r): the mask does not depend on how rows are
 * shared among threads. keep = 1 with probability 1 - p; kept values scale by 1/(1-p). */
static uint64_t dropout_seed(uint64_t site, size_t row) { return site ^ (0x9e3779b97f4a7c15ULL * (row + 1)); }
static void dropout_row(uint8_t *keep /* (cols) */, uint64_t site, size_t row, size_t cols, float p) {
    fx_rng g;
    fx_rng_seed(&g, dropout_seed(site, row));
    fx_rng_keep(&g, keep, cols, p);
}
/* N rows of masks into KEEP (row stride LD): row i is stream ROW0 + i STEP of SITE, as dropout_row draws
 * it (fx_rng_keep_rows: 8 streams at once where the CPU can). */
static void dropout_rows(uint8_t *keep, size_t ld, uint64_t site, size_t row0, size_t step, int n, size_t cols,
                         float p) {
    for (int i = 0; i < n; i += 8) {
        int m = n - i < 8 ? n - i : 8;
        uint64_t seeds[8];
        for (int q = 0; q < m; q++) seeds[q] = dropout_seed(site, row0 + (size_t)(i + q) * step);
        fx_rng_keep_rows(seeds, m, keep + (size_t)i * ld, ld, cols, p);
    }
}
static void dropout_mask(uint8_t *keep /* (rows, cols) */, size_t rows, size_t cols, float p, uint64_t site) {
    #pragma omp parallel for schedule(dynamic, 1) if ((long)(rows * cols) >= PAR_MIN)
    for (long r = 0; r < (long)rows; r += 8)
        dropout_rows(keep + r * cols, cols, site, (size_t)r, 1, rows - r < 8 ? (int)(rows - r) : 8, cols, p);
}
/* Row i of KEEP drawn as row ROWS[i] of dropout_mask's (rows, cols) mask for the same site. */
static void dropout_mask_rows(uint8_t *keep, const int32_t *rows, size_t n, size_t cols, float p, uint64_t site) {
    for (size_t i = 0; i < n; i += 8) {
        int m = n - i < 8 ? (int)(n - i) : 8;
        uint64_t seeds[8];
        for (int q = 0; q < m; q++) seeds[q] = dropout_seed(site, (size_t)rows[i + q]);
        fx_rng_keep_rows(seeds, m, keep + i * cols, cols, cols, p);
    }
}
/* out = in * keep / (1 - p), or a copy when KEEP is NULL. In place allowed. Also the backward. */
static void dropout_apply(float *out, const float *in, const uint8_t *keep, float p, size_t n) {
    float scale = keep ? 1.0f / (1.0f - p) : 1.0f;
    if (!keep) {
        if (out != in) memcpy(out, in, n * sizeof *out);
        return;
    }
    #pragma omp parallel for simd schedule(dynamic, 8192) if ((long)n >= PAR_MIN)
    for (long i = 0; i < (long)n; i++) out[i] = keep[i] ? in[i] * scale : 0.0f;
}
/* dx += d * keep / (1 - p): an adapter's input gradient through its dropout. */
static void dropout_accumulate(float *dx, const float *d, const uint8_t *keep, float p, size_t n) {
    float scale = 1.0f / (1.0f - p);
    #pragma omp parallel for simd schedule(dynamic, 8192) if ((long)n >= PAR_MIN)
    for (long i = 0; i < (long)n; i++) dx[i] += keep[i] ? d[i] * scale : 0.0f;
}

/* ============================================================================================
 * layers: forward / backward pairs
 * ============================================================================================ */

/* --- frozen dense layer: y = x W^T + b. The bias goes in first and the product is added to it, as in
 * PyTorch's addmm. B NULL (Llama's bias-free linears): y = x W^T. */
static void linear_forward(float *y /* (N, out) */, const float *x /* (N, in) */, const float *W /* (out, in) */,
                           const float *b /* (out) or NULL */, int N, int in, int out) {
    if (!b) { fx_matmul(0, 1, N, out, in, 1.0f, x, in, W, in, 0.0f, y, out); return; }
    #pragma omp parallel for schedule(dynamic, 8) if ((long)N * out >= PAR_MIN)
    for (long i = 0; i < N; i++) memcpy(y + i * out, b, (size_t)out * sizeof *y);
    fx_matmul(0, 1, N, out, in, 1.0f, x, in, W, in, 1.0f, y, out);
}
/* dx = dy W (beta 0) or dx += dy W (beta 1). W and b are frozen: no dW, no db. */
static void linear_backward(float *dx /* (N, in) */, const float *dy /* (N, out) */, const float *W /* (out, in) */,
                            int N, int in, int out, float beta) {
    fx_matmul(0, 0, N, in, out, 1.0f, dy, out, W, in, beta, dx, in);
}
/* The pair with W in bf16 (--precision bf16): x and dy rounded to bf16 by fx_matmul_bf16, fp32 sums. */
static void linear_forward_bf16(float *y /* (N, out) */, const float *x /* (N, in) */, const uint16_t *W /* (out, in) */,
                                const float *b /* (out) or NULL */, int N, int in, int out) {
    if (!b) { fx_matmul_bf16(1, N, out, in, x, in, W, in, 0.0f, y, out); return; }
    #pragma omp parallel for schedule(static) if ((long)N * out >= PAR_MIN)
    for (long i = 0; i < N; i++) memcpy(y + i * out, b, (size_t)out * sizeof *y);
    fx_matmul_bf16(1, N, out, in, x, in, W, in, 1.0f, y, out);
}
static void linear_backward_bf16(float *dx /* (N, in) */, const float *dy /* (N, out) */,
                                 const uint16_t *W /* (out, in) */, int N, int in, int out, float beta) {
    fx_matmul_bf16(0, N, in, out, dy, out, W, in, beta, dx, in);
}

/* --- LayerNorm over the last dimension: out = (x - mean) * rstd * g + b, rstd = 1/sqrt(var + eps),
 * var the biased variance. Moments in double, summed as vector lanes (an order that is fixed, the same
 * for every thread count). */
static void layernorm_row(float *out, float *mean, float *rstd, const float *x, const float *g, const float *b,
                          int H, float eps) {
    double s = 0, ss = 0;
    #pragma omp simd reduction(+ : s)
    for (int j = 0; j < H; j++) s += x[j];
    double mu = s / H;
    #pragma omp simd reduction(+ : ss)
    for (int j = 0; j < H; j++) ss += (x[j] - mu) * (x[j] - mu);
    float mf = (float)mu, rs = (float)(1.0 / sqrt(ss / H + eps));
    #pragma omp simd
    for (int j = 0; j < H; j++) out[j] = (x[j] - mf) * rs * g[j] + b[j];
    if (mean) { *mean = mf; *rstd = rs; }
}
/* RobertaSelfOutput / RobertaOutput after their dense: res = dropout(y) + x, out = LayerNorm(res). */
static void residual_layernorm_forward(float *out /* (N, H) */, float *res /* (N, H) */, float *mean /* (N) */,
                                       float *rstd /* (N) */, const float *y /* (N, H) */,
                                       const uint8_t *keep /* (N, H) or NULL */, float p,
                                       const float *x /* (N, H) */, const float *g, const float *b,
                                       int N, int H, float eps) {
    float scale = keep ? 1.0f / (1.0f - p) : 1.0f;
    #pragma omp parallel for schedule(dynamic, 8) if ((long)N * H >= PAR_MIN)
    for (long i = 0; i < N; i++) {
        size_t o = (size_t)i * H;
        for (int j = 0; j < H; j++)
            res[o + j] = (keep ? (keep[o + j] ? y[o + j] * scale : 0.0f) : y[o + j]) + x[o + j];
        layernorm_row(out + o, mean + i, rstd + i, res + o, g, b, H, eps);
    }
}
/* Pre-LN blocks: out = LayerNorm(x) alone, its moments kept for backward. In place allowed. */
static void layernorm_forward(float *out /* (N, H) */, float *mean /* (N) */, float *rstd /* (N) */,
                              const float *x /* (N, H) */, const float *g, const float *b, int N, int H, float eps) {
    #pragma omp parallel for schedule(dynamic, 8) if ((long)N * H >= PAR_MIN)
    for (long i = 0; i < N; i++)
        layernorm_row(out + (size_t)i * H, mean + i, rstd + i, x + (size_t)i * H, g, b, H, eps);
}
/* With g frozen: dx = rstd * (dxh - mean(dxh) - xh * mean(dxh * xh)), dxh = dy * g,
 * xh = (x - mean) * rstd. */
static void layernorm_backward(float *dx /* (N, H) */, const float *dy /* (N, H) */, const float *x /* (N, H) */,
                               const float *mean, const float *rstd, const float *g, int N, int H) {
    #pragma omp parallel for schedule(dynamic, 8) if ((long)N * H >= PAR_MIN)
    for (long i = 0; i < N; i++) {
        const float *xi = x + (size_t)i * H, *dyi = dy + (size_t)i * H;
        float *dxi = dx + (size_t)i * H;
        double s1 = 0, s2 = 0;
        #pragma omp simd reduction(+ : s1, s2)
        for (int j = 0; j < H; j++) {
            double dxh = (double)dyi[j] * g[j], xh = (double)(xi[j] - mean[i]) * rstd[i];
            s1 += dxh;
            s2 += dxh * xh;
        }
        float m1 = (float)(s1 / H), m2 = (float)(s2 / H);
        for (int j = 0; j < H; j++) {
            float xh = (xi[j] - mean[i]) * rstd[i];
            dxi[j] = rstd[i] * (dyi[j] * g[j] - m1 - xh * m2);
        }
    }
}

/* --- embeddings: x0 = dropout(LayerNorm((word[id] + type[0]) + pos[position])), or without TE and
 * LN_W (GPT-2) x0 = dropout(word[id] + pos[position]), or without PE as well (Llama, whose positions
 * are rotations inside attention) x0 = word[id]. Nothing before them is trainable, so there is no
 * backward and no LayerNorm state is kept. */
/* x0 (N, H) = dropout(x0), row i's mask from its own stream of SITE; p = 0: unchanged. */
static void embeddings_dropout(float *x0, int N, int H, float p, uint64_t site) {
    if (p <= 0) return;
    float scale = 1.0f / (1.0f - p);
    #pragma omp parallel for schedule(dynamic, 8) if ((long)N * H >= PAR_MIN)
    for (long i = 0; i < N; i++) {
        uint8_t keep[H];
        dropout_row(keep, site, (size_t)i, (size_t)H, p);
        for (int j = 0; j < H; j++) x0[(size_t)i * H + j] = keep[j] ? x0[(size_t)i * H + j] * scale : 0.0f;
    }
}
static void embeddings_forward(float *x0 /* (N, H) */, const int32_t *ids /* (N) */, const int32_t *pos /* (N) */,
                               const float *we /* (V, H) */, const float *pe /* (P, H) */, const float *te /* (TV, H) */,
                               const float *ln_w, const float *ln_b, int N, int H, float eps, float p, uint64_t site) {
    #pragma omp parallel for schedule(dynamic, 8) if ((long)N * H >= PAR_MIN)
    for (long i = 0; i < N; i++) {
        float *x = x0 + (size_t)i * H;
        const float *wr = we + (size_t)ids[i] * H, *pr = pe ? pe + (size_t)pos[i] * H : NULL;
        if (!pe) {
            memcpy(x, wr, (size_t)H * sizeof *x);
            continue;
        }
        if (!te) {
            for (int j = 0; j < H; j++) x[j] = wr[j] + pr[j];
            continue;
        }
        for (int j = 0; j < H; j++) x[j] = (wr[j] + te[j]) + pr[j];
        if (ln_w) layernorm_row(x, NULL, NULL, x, ln_w, ln_b, H, eps);
    }
    embeddings_dropout(x0, N, H, p, site);
}
/* The same with bf16 tables: each row widened (exactly), then the same fp32 sums, LayerNorm, dropout. */
static void embeddings_forward_bf16(float *x0 /* (N, H) */, const int32_t *ids, const int32_t *pos,
                                    const uint16_t *we /* (V, H) */, const uint16_t *pe /* (P, H) */,
                                    const uint16_t *te /* (TV, H) */, const float *ln_w, const float *ln_b, int N,
                                    int H, float eps, float p, uint64_t site) {
    #pragma omp parallel for schedule(dynamic, 8) if ((long)N * H >= PAR_MIN)
    for (long i = 0; i < N; i++) {
        float *x = x0 + (size_t)i * H;
        const uint16_t *wr = we + (size_t)ids[i] * H, *pr = pe ? pe + (size_t)pos[i] * H : NULL;
        if (!pe) for (int j = 0; j < H; j++) x[j] = fx_bf16_widen(wr[j]);
        else if (!te) for (int j = 0; j < H; j++) x[j] = fx_bf16_widen(wr[j]) + fx_bf16_widen(pr[j]);
        else {
            for (int j = 0; j < H; j++) x[j] = (fx_bf16_widen(wr[j]) + fx_bf16_widen(te[j])) + fx_bf16_widen(pr[j]);
            if (ln_w) layernorm_row(x, NULL, NULL, x, ln_w, ln_b, H, eps);
        }
    }
    embeddings_dropout(x0, N, H, p, site);
}

/* --- exact GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)); derivative Phi(x) + x phi(x).
 * erf and exp come from vmath.c (within 1 ulp of libm's erff and expf), a chunk at a time so that the
 * arguments and results stay in L1; the float arithmetic around them is the formula's, in its order. */
enum { VCHUNK = 1024 };
#define VCHUNKS(n) ((long)(((n) + VCHUNK - 1) / VCHUNK))

static void gelu_forward(float *out, float *erf /* (n) or NULL */, const float *in, size_t n) {
    #pragma omp parallel for schedule(dynamic, 4) if ((long)n >= PAR_MIN)
    for (long c = 0; c < VCHUNKS(n); c++) {
        size_t o = (size_t)c * VCHUNK, len = n - o < VCHUNK ? n - o : VCHUNK;
        const float *x = in + o;
        float buf[VCHUNK], *e = erf ? erf + o : buf;
        #pragma omp simd
        for (size_t j = 0; j < len; j++) e[j] = x[j] * (float)M_SQRT1_2;
        fx_erf(e, e, len);
        #pragma omp simd
        for (size_t j = 0; j < len; j++) out[o + j] = x[j] * 0.5f * (1.0f + e[j]);
    }
}
static void gelu_backward(float *d /* in: dL/dout, out: dL/din */, const float *in,
                          const float *erf /* (n): the forward's, or NULL */, size_t n) {
    const float inv_sqrt_2pi = 0.3989422804014327f;
    #pragma omp parallel for schedule(dynamic, 4) if ((long)n >= PAR_MIN)
    for (long c = 0; c < VCHUNKS(n); c++) {
        size_t o = (size_t)c * VCHUNK, len = n - o < VCHUNK ? n - o : VCHUNK;
        const float *x = in + o;
        float buf[VCHUNK], g[VCHUNK];
        const float *e = erf ? erf + o : buf;
        #pragma omp simd
        for (size_t j = 0; j < len; j++) g[j] = -0.5f * x[j] * x[j];
        if (!erf) {
            #pragma omp simd
            for (size_t j = 0; j < len; j++) buf[j] = x[j] * (float)M_SQRT1_2;
            fx_erf(buf, buf, len);
        }
        fx_exp(g, g, len);
        #pragma omp simd
        for (size_t j = 0; j < len; j++) {
            float cdf = 0.5f * (1.0f + e[j]), pdf = g[j] * inv_sqrt_2pi;
            d[o + j] *= cdf + x[j] * pdf;
        }
    }
}

/* --- gelu_new (GPT-2's NewGELUActivation, the tanh form):
 *   y = 0.5 x (1 + tanh(u)),  u = c (x + 0.044715 x^3),  c = sqrt(2 / pi);
 *   dy/dx = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) c (1 + 3 0.044715 x^2). */
#define GELU_TANH_C 0.7978845608028654f
#define GELU_TANH_K 0.044715f
static void gelu_tanh_forward(float *out, const float *in, size_t n) {
    #pragma omp parallel for schedule(dynamic, 8192) if ((long)n >= PAR_MIN)
    for (long i = 0; i < (long)n; i++) {
        float x = in[i];
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_TANH_C * (x + GELU_TANH_K * x * x * x)));
    }
}
static void gelu_tanh_backward(float *d /* in: dL/dout, out: dL/din */, const float *in, size_t n) {
    #pragma omp parallel for schedule(dynamic, 8192) if ((long)n >= PAR_MIN)
    for (long i = 0; i < (long)n; i++) {
        float x = in[i], t = tanhf(GELU_TANH_C * (x + GELU_TANH_K * x * x * x));
        d[i] *= 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_TANH_C * (1.0f + 3.0f * GELU_TANH_K * x * x);
    }
}

/* --- RMSNorm (LlamaRMSNorm, in fp32): out = g * (x * rstd), rstd = 1 / sqrt(mean(x^2) + eps), the mean
 * of squares in double. Backward with g frozen, xh = x * rstd, dxh = dy * g:
 *   dx = rstd * (dxh - xh * mean(dxh * xh)). */
static void rmsnorm_forward(float *out /* (N, H) */, float *rstd /* (N) */, const float *x /* (N, H) */,
                            const float *g /* (H) */, int N, int H, float eps) {
    #pragma omp parallel for schedule(dynamic, 8) if ((long)N * H >= PAR_MIN)
    for (long i = 0; i < N; i++) {
        const float *xi = x + (size_t)i * H;
        float *oi = out + (size_t)i * H;
        double ss = 0;
        for (int j = 0; j < H; j++) ss += (double)xi[j] * xi[j];
        float rs = (float)(1.0 / sqrt(ss / H + eps));
        for (int j = 0; j < H; j++) oi[j] = g[j] * (xi[j] * rs);
        if (rstd) rstd[i] = rs;
    }
}
static void rmsnorm_backward(float *dx /* (N, H) */, const float *dy /* (N, H) */, const float *x /* (N, H) */,
                             const float *rstd /* (N) */, const float *g /* (H) */, int N, int H) {
    #pragma omp parallel for schedule(dynamic, 8) if ((long)N * H >= PAR_MIN)
    for (long i = 0; i < N; i++) {
        const float *xi = x + (size_t)i * H, *dyi = dy + (size_t)i * H;
        float *dxi = dx + (size_t)i * H;
        double s = 0;
        for (int j = 0; j < H; j++) s += (double)dyi[j] * g[j] * ((double)xi[j] * rstd[i]);
        float m = (float)(s / H);
        for (int j = 0; j < H; j++) dxi[j] = rstd[i] * (dyi[j] * g[j] - xi[j] * rstd[i] * m);
    }
}

/* --- rotary positions as Hugging Face's Llama applies them (rotate_half): per head, for i < hd/2,
 *   a = pos * inv_freq[i],  y_i = x_i cos a - x_{i+hd/2} sin a,  y_{i+hd/2} = x_{i+hd/2} cos a + x_i sin a,
 * inv_freq[i] = theta^(-2i/hd) under rope_scaling's rule (fx_rope_inv_freq). The rotation is orthogonal,
 * so its backward is the same rotation by -a. Angles in double. */
static void rope(float *x /* (N, nh * hd) */, const int32_t *pos /* (N) */, int N, int nh, int hd,
                 const double *inv_freq /* (hd / 2) */, int inverse) {
    int half = hd / 2;
    #pragma omp parallel for schedule(dynamic, 8) if ((long)N * nh * hd >= PAR_MIN)
    for (long t = 0; t < N; t++) {
        for (int i = 0; i < half; i++) {
            double a = (double)pos[t] * inv_freq[i];
            float c = (float)cos(a), s = (float)(inverse ? -sin(a) : sin(a));
            for (int h = 0; h < nh; h++) {
                float *xh = x + (size_t)t * nh * hd + (size_t)h * hd;
                float x1 = xh[i], x2 = xh[i + half];
                xh[i] = x1 * c - x2 * s;
                xh[i + half] = x2 * c + x1 * s;
            }
        }
    }
}

/* --- SwiGLU (LlamaMLP's act_fn(gate) * up with SiLU): silu(g) = g sigmoid(g);
 *   d gate = dout * up * sigmoid(g) (1 + g (1 - sigmoid(g))),  d up = dout * silu(g). */
static void swiglu_forward(float *out, const float *gate, const float *up, size_t n) {
    #pragma omp parallel for schedule(dynamic, 4) if ((long)n >= PAR_MIN)
    for (long c = 0; c < VCHUNKS(n); c++) {
        size_t o = (size_t)c * VCHUNK, len = n - o < VCHUNK ? n - o : VCHUNK;
        float e[VCHUNK];
        #pragma omp simd
        for (size_t j = 0; j < len; j++) e[j] = -gate[o + j];
        fx_exp(e, e, len);
        #pragma omp simd
        for (size_t j = 0; j < len; j++) out[o + j] = gate[o + j] / (1.0f + e[j]) * up[o + j];
    }
}
static void swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                            size_t n) {
    #pragma omp parallel for schedule(dynamic, 4) if ((long)n >= PAR_MIN)
    for (long c = 0; c < VCHUNKS(n); c++) {
        size_t o = (size_t)c * VCHUNK, len = n - o < VCHUNK ? n - o : VCHUNK;
        float e[VCHUNK];
        #pragma omp simd
        for (size_t j = 0; j < len; j++) e[j] = -gate[o + j];
        fx_exp(e, e, len);
        #pragma omp simd
        for (size_t j = 0; j < len; j++) {
            size_t i = o + j;
            float g = gate[i], sg = 1.0f / (1.0f + e[j]), d = dout[i];
            dup[i] = d * (g * sg);
            dgate[i] = d * up[i] * sg * (1.0f + g * (1.0f - sg));
        }
    }
}

/* --- self-attention per sequence on the packed layout. Row b's tokens are off[b] .. off[b+1]) (len of
 * them); per head h, Q, K, V are that row's (len, hd) column block h, rows H apart:
 *   S = Q K^T / sqrt(hd),  P = softmax(S) over the row's own keys (CAUSAL: keys j <= i; a sliding
 *   WINDOW > 0: i - WINDOW < j as well),
 *   Pd = dropout(P),  ctx = Pd V.
 * Only real keys exist here, so nothing is masked: Hugging Face's additive finfo.min on padded keys
 * gives them exp() == 0 exactly, the same probabilities. The queries go in blocks of ATT_BQ rows, each
 * block's scores (ATT_BQ, len) in a per-thread scratch; what is kept for backward is the softmax's row
 * maximum and 1 / sum per (token, head), KEEP (N, nh, 2), from which the backward recomputes P with the
 * same products in the same blocks (so the same bits). Attention dropout: query i of row b, head h draws
 * its keys' mask from the stream (off[b] + i) nh + h of SITE. */
/* 256 queries a block: a GLUE row (<= 256 tokens) is one block, the unblocked products; a long row keeps
 * 3 (256, T) fp32 scratch blocks per thread (6 MB at T = 2048). */
enum { ATT_BQ = 256 };
static size_t attention_keep(int n, int T, int N, int nh, int drop) {
    (void)n; (void)T; (void)drop;
    return (size_t)N * nh * 2;
}
/* Work of all (row, head) tasks, to decide whether to go parallel. */
static long attention_work(const int32_t *off, int n, int nh, int hd) {
    long w = 0;
    for (int b = 0; b < n; b++) w += (long)(off[b + 1] - off[b]) * (off[b + 1] - off[b]);
    return w * nh * hd;
}
/* One query block's probabilities: S (rows, kl) holds Q K^T for the sequence's queries i0 .. i0+rows on
 * entry and P on exit (zero past each query's last key); each row's maximum and 1 / sum go to STATS,
 * row r at r nh 2 (the (token, head, 2) layout). */
/* The keys query I reads: [first, lim), FIRST past Mistral's sliding window WINDOW (causal only). */
static int window_first(int i, int causal, int window) { return causal && window > 0 && i >= window ? i - window + 1 : 0; }
static void attention_softmax_block(float *S, int rows, int kl, int i0, int len, int causal, int window, float inv,
                                    float *stats, int nh) {
    for (int r = 0; r < rows; r++) {
        float *s = S + (size_t)r * kl, mx = -INFINITY;
        int lim = causal ? i0 + r + 1 : len, first = window_first(i0 + r, causal, window);
        #pragma omp simd
        for (int j = first; j < lim; j++) s[j] = s[j] / inv;
        #pragma omp simd reduction(max : mx)
        for (int j = first; j < lim; j++) mx = s[j] > mx ? s[j] : mx;
        #pragma omp simd
        for (int j = first; j < lim; j++) s[j] -= mx;
        fx_exp(s + first, s + first, (size_t)(lim - first));
        double sum = 0;
        #pragma omp simd reduction(+ : sum)
        for (int j = first; j < lim; j++) sum += s[j];
        float rs = (float)(1.0 / sum);
        #pragma omp simd
        for (int j = first; j < lim; j++) s[j] *= rs;
        for (int j = 0; j < first; j++) s[j] = 0.0f;
        for (int j = lim; j < kl; j++) s[j] = 0.0f;
        stats[(size_t)r * nh * 2] = mx;
        stats[(size_t)r * nh * 2 + 1] = rs;
    }
}
static void attention_forward(float *ctx /* (N, H) */, float *keep /* (N, nh, 2) */, const float *q, const float *k,
                              const float *v /* (N, H) each */, const int32_t *off /* (n + 1) */, int n, int T, int H,
                              int nh, int causal, int window, float p, uint64_t site) {
    int hd = H / nh;
    float inv = sqrtf((float)hd), scale = 1.0f / (1.0f - p);
    #pragma omp parallel if (attention_work(off, n, nh, hd) >= PAR_MIN)
    {
        float *S = fx_malloc((size_t)ATT_BQ * (T ? T : 1) * sizeof *S);
        uint8_t *kp = p > 0 ? fx_malloc((size_t)ATT_BQ * (T ? T : 1)) : NULL;
        #pragma omp for schedule(dynamic, 1)
        for (long bh = 0; bh < (long)n * nh; bh++) {
            int b = (int)(bh / nh), h = (int)(bh % nh), o = off[b], len = off[b + 1] - o;
            const float *qh = q + (size_t)o * H + (size_t)h * hd, *kh = k + (size_t)o * H + (size_t)h * hd;
            const float *vh = v + (size_t)o * H + (size_t)h * hd;
            for (int i0 = 0; i0 < len; i0 += ATT_BQ) {
                int rows = len - i0 < ATT_BQ ? len - i0 : ATT_BQ, kl = causal ? i0 + rows : len;
                fx_matmul(0, 1, rows, kl, hd, 1.0f, qh + (size_t)i0 * H, H, kh, H, 0.0f, S, kl);
                attention_softmax_block(S, rows, kl, i0, len, causal, window, inv, keep + ((size_t)(o + i0) * nh + h) * 2, nh);
                if (kp) {
                    dropout_rows(kp, (size_t)kl, site, (size_t)(o + i0) * nh + h, (size_t)nh, rows, (size_t)kl, p);
                    for (int r = 0; r < rows; r++) {
                        float *s = S + (size_t)r * kl;
                        const uint8_t *kr = kp + (size_t)r * kl;
                        #pragma omp simd
                        for (int j = 0; j < kl; j++) s[j] = kr[j] ? s[j] * scale : 0.0f;
                    }
                }
                fx_matmul(0, 0, rows, hd, kl, 1.0f, S, kl, vh, H, 0.0f, ctx + (size_t)(o + i0) * H + (size_t)h * hd, H);
            }
        }
        free(S);
        free(kp);
    }
}
/* --- one query per slot against its key/value cache (the decode step), the same arithmetic as a row of
 * attention_forward: s_j = (q . k_j) / sqrt(hd) for first <= j < len, P = softmax(s), ctx = P V; first 0,
 * or len - WINDOW with a sliding window (the query sits at position len - 1). */
static void attention_decode(float *ctx /* (ns, H) */, float *scores /* (ns, nh, len) */, const float *q /* (ns, H) */,
                             const float *kc, const float *vc /* (slots, max_len, H) */, int ns, int len, int max_len,
                             int H, int nh, int window) {
    int hd = H / nh, first = window > 0 && len > window ? len - window : 0;
    if (first) { /* the window's keys alone: the same rows of the cache from FIRST */
        kc += (size_t)first * H;
        vc += (size_t)first * H;
        len -= first;
    }
    float inv = sqrtf((float)hd);
    #pragma omp parallel for schedule(static) if ((long)ns * nh * len * hd >= PAR_MIN)
    for (long sh = 0; sh < (long)ns * nh; sh++) {
        long sl = sh / nh, h = sh % nh;
        size_t co = (size_t)sl * max_len * H + (size_t)h * hd, qo = (size_t)sl * H + (size_t)h * hd;
        float *s = scores + (size_t)sh * len, mx = -INFINITY;
        fx_matmul(0, 1, 1, len, hd, 1.0f, q + qo, H, kc + co, H, 0.0f, s, len);
        for (int j = 0; j < len; j++) {
            s[j] = s[j] / inv;
            if (s[j] > mx) mx = s[j];
        }
        double sum = 0;
        for (int j = 0; j < len; j++) { s[j] = expf(s[j] - mx); sum += s[j]; }
        float rs = (float)(1.0 / sum);
        for (int j = 0; j < len; j++) s[j] *= rs;
        fx_matmul(0, 0, 1, hd, len, 1.0f, s, len, vc + co, H, 0.0f, ctx + qo, H);
    }
}

/* Backward, per (row, head), query block by query block: P again from the kept row maximum and 1 / sum
 * (the forward's products and operations, so the forward's bits), Pd with the forward's mask drawn again,
 *   dPd = dctx V^T,  dV += Pd^T dctx,  dP = dPd * keep / (1 - p),
 *   dS = P * (dP - rowsum(dP * P)) / sqrt(hd),  dQ = dS K,  dK += dS^T Q.
 * dK and dV sum over the query blocks in order, so the thread count does not matter. */
static void attention_backward(float *dq, float *dk, float *dv /* (N, H) each */, const float *dctx /* (N, H) */,
                               const float *q, const float *k, const float *v, const float *keep /* (N, nh, 2) */,
                               const int32_t *off, int n, int T, int H, int nh, int causal, int window, float p,
                               uint64_t site) {
    int hd = H / nh;
    float inv = sqrtf((float)hd), scale = 1.0f / (1.0f - p);
    #pragma omp parallel if (attention_work(off, n, nh, hd) >= PAR_MIN)
    {
        size_t blk = (size_t)ATT_BQ * (T ? T : 1);
        float *S = fx_malloc(blk * sizeof *S), *dS = fx_malloc(blk * sizeof *dS);
        float *Pd = p > 0 ? fx_malloc(blk * sizeof *Pd) : S;
        uint8_t *kp = p > 0 ? fx_malloc(blk) : NULL;
        #pragma omp for schedule(dynamic, 1)
        for (long bh = 0; bh < (long)n * nh; bh++) {
            int b = (int)(bh / nh), h = (int)(bh % nh), o = off[b], len = off[b + 1] - o;
            size_t base = (size_t)o * H + (size_t)h * hd;
            const float *qh = q + base, *kh = k + base, *vh = v + base, *dch = dctx + base;
            float *dkh = dk + base, *dvh = dv + base;
            for (int i = 0; i < len; i++) {
                memset(dkh + (size_t)i * H, 0, (size_t)hd * sizeof *dkh);
                memset(dvh + (size_t)i * H, 0, (size_t)hd * sizeof *dvh);
            }
            for (int i0 = 0; i0 < len; i0 += ATT_BQ) {
                int rows = len - i0 < ATT_BQ ? len - i0 : ATT_BQ, kl = causal ? i0 + rows : len;
                const float *st = keep + ((size_t)(o + i0) * nh + h) * 2;
                fx_matmul(0, 1, rows, kl, hd, 1.0f, qh + (size_t)i0 * H, H, kh, H, 0.0f, S, kl);
                fx_matmul(0, 1, rows, kl, hd, 1.0f, dch + (size_t)i0 * H, H, vh, H, 0.0f, dS, kl);
                if (kp) dropout_rows(kp, (size_t)kl, site, (size_t)(o + i0) * nh + h, (size_t)nh, rows, (size_t)kl, p);
                for (int r = 0; r < rows; r++) {
                    float *s = S + (size_t)r * kl, *pd = Pd + (size_t)r * kl, *ds = dS + (size_t)r * kl;
                    float mx = st[(size_t)r * nh * 2], rs = st[(size_t)r * nh * 2 + 1];
                    int lim = causal ? i0 + r + 1 : len, first = window_first(i0 + r, causal, window);
                    for (int j = 0; j < first; j++) s[j] = 0.0f;
                    #pragma omp simd
                    for (int j = first; j < lim; j++) s[j] = s[j] / inv - mx;
                    fx_exp(s + first, s + first, (size_t)(lim - first));
                    #pragma omp simd
                    for (int j = first; j < lim; j++) s[j] *= rs;
                    for (int j = lim; j < kl; j++) s[j] = 0.0f;
                    if (kp) {
                        const uint8_t *kr = kp + (size_t)r * kl;
                        #pragma omp simd
                        for (int j = 0; j < kl; j++) {
                            pd[j] = kr[j] ? s[j] * scale : 0.0f;
                            ds[j] = kr[j] ? ds[j] * scale : 0.0f;
                        }
                    }
                }
                /* dV += Pd^T dctx over this block's queries, before dS overwrites dP */
                fx_matmul(1, 0, kl, hd, rows, 1.0f, Pd, kl, dch + (size_t)i0 * H, H, 1.0f, dvh, H);
                for (int r = 0; r < rows; r++) {
                    const float *pr = S + (size_t)r * kl;
                    float *ds = dS + (size_t)r * kl;
                    double dot = 0;
                    #pragma omp simd reduction(+ : dot)
                    for (int j = 0; j < kl; j++) dot += (double)ds[j] * pr[j];
                    float dotf = (float)dot;
                    #pragma omp simd
                    for (int j = 0; j < kl; j++) ds[j] = pr[j] * (ds[j] - dotf) / inv;
                }
                fx_matmul(0, 0, rows, hd, kl, 1.0f, dS, kl, kh, H, 0.0f, dq + base + (size_t)i0 * H, H);
                fx_matmul(1, 0, kl, hd, rows, 1.0f, dS, kl, qh + (size_t)i0 * H, H, 1.0f, dkh, H);
            }
        }
        free(S);
        free(dS);
        if (Pd != S) free(Pd);
        free(kp);
    }
}

/* ============================================================================================
 * loss and optimizer
 * ============================================================================================ */

/* --- loss, mean over the batch, and dlogits (n, L).
 * L == 1: MSE, (logit - y)^2, d = 2 (logit - y) / n.
 * L > 1: cross-entropy, logsumexp(logits) - logit[y], d = (softmax - onehot(y)) / n. */
static double loss_forward_backward(float *dlogits, const float *logits, const float *labels, int n, int L) {
    double total = 0;
    for (int i = 0; i < n; i++) {
        const float *z = logits + (size_t)i * L;
        float *d = dlogits + (size_t)i * L;
        if (L == 1) {
            double e = (double)z[0] - labels[i];
            total += e * e;
            d[0] = (float)(2 * e / n);
            continue;
        }
        int y = (int)labels[i];
        double mx = z[0], s = 0;
        for (int j = 1; j < L; j++) if (z[j] > mx) mx = z[j];
        for (int j = 0; j < L; j++) s += exp(z[j] - mx);
        total += mx + log(s) - z[y];
        for (int j = 0; j < L; j++) d[j] = (float)((exp(z[j] - mx) / s - (j == y)) / n);
    }
    return total / n;
}

/* --- the causal LM's loss (GPT2LMHeadModel's shift, transformers' LabelSmoother):
 *   packed position i predicts y = targets[i] (model.c shifted them; -100: nothing); over the COUNT that predict,
 *   loss = (1 - eps) mean nll + eps mean (sum_v -log p_v) / V,   nll = lse(z) - z_y,
 *   dz_v = (p_v - (1 - eps) [v == y] - eps / V) / COUNT.
 * Each position's share is summed in double in position order, so the thread count does not matter. */
static double lm_loss(float *dlogits /* (N, V), may be LOGITS */, const float *logits /* (N, V) */,
                      const int32_t *targets /* (N) */, int Ntok, int V, float eps, int count) {
    long N = Ntok;
    double *part = fx_malloc((size_t)N * sizeof *part);
    #pragma omp parallel for schedule(dynamic, 8) if (N * V >= PAR_MIN)
    for (long i = 0; i < N; i++) {
        const float *z = logits + (size_t)i * V;
        float *d = dlogits + (size_t)i * V;
        int y = targets[i];
        part[i] = 0;
        if (y < 0) { memset(d, 0, (size_t)V * sizeof *d); continue; }
        double mx = z[0], s = 0, zsum = 0;
        for (int j = 1; j < V; j++) if (z[j] > mx) mx = z[j];
        for (int j = 0; j < V; j++) { s += exp(z[j] - mx); zsum += z[j]; }
        double lse = mx + log(s), nll = lse - z[y], smooth = lse - zsum / V;
        part[i] = (1 - (double)eps) * nll + (double)eps * smooth;
        double a = (1 - (double)eps), e = (double)eps / V;
        for (int j = 0; j < V; j++) d[j] = (float)((exp(z[j] - lse) - (j == y ? a : 0) - e) / count);
    }
    double total = 0;
    for (long i = 0; i < N; i++) total += part[i];
    free(part);
    return total / count;
}

/* --- gradient clipping's pieces: the sum of squares in double, in order; and x *= a. */
static double sumsq(const float *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return s;
}
static void scale(float *x, float a, size_t n) {
    #pragma omp parallel for schedule(dynamic, 8192) if ((long)n >= PAR_MIN)
    for (long i = 0; i < (long)n; i++) x[i] *= a;
}

/* --- AdamW on one tensor with the step's scalars (model.c forms them):
 *   p *= 1 - lr wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
 *   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). */
static void adamw(float *p, const float *g, float *mm, float *vv, size_t n, const fx_adamw_scalars *s) {
    float step = s->step, bc2s = s->bc2s, decay = s->decay, fb1 = s->b1, fb2 = s->b2, c1 = s->c1, c2 = s->c2,
          feps = s->eps;
    int decay_on = s->decay_on;
    #pragma omp parallel for schedule(dynamic, 8192) if ((long)n >= PAR_MIN)
    for (long j = 0; j < (long)n; j++) {
        if (decay_on) p[j] *= decay;
        mm[j] = mm[j] * fb1 + g[j] * c1;
        vv[j] = vv[j] * fb2 + c2 * g[j] * g[j];
        p[j] += -step * (mm[j] / (sqrtf(vv[j]) / bc2s + feps));
    }
}

/* ============================================================================================
 * the table
 * ============================================================================================ */

const fx_ops fx_cpu_ops = {
    .name = "cpu",
    .alloc = cpu_alloc,
    .release = cpu_release,
    .upload = cpu_move,
    .download = cpu_move,
    .zero = cpu_zero,
    .copy = cpu_copy,
    .axpy = cpu_axpy,
    .copy_rows = cpu_copy_rows,
    .matmul = fx_matmul,
    .column_dot = column_dot,
    .scale_cols = scale_cols,
    .scale_cols_add = scale_cols_add,
    .dropout_mask = dropout_mask,
    .dropout_mask_rows = dropout_mask_rows,
    .dropout_apply = dropout_apply,
    .dropout_accumulate = dropout_accumulate,
    .embeddings_forward = embeddings_forward,
    .linear_forward = linear_forward,
    .linear_backward = linear_backward,
    .linear_forward_bf16 = linear_forward_bf16,
    .linear_backward_bf16 = linear_backward_bf16,
    .embeddings_forward_bf16 = embeddings_forward_bf16,
    .residual_layernorm_forward = residual_layernorm_forward,
    .layernorm_forward = layernorm_forward,
    .layernorm_backward = layernorm_backward,
    .gelu_forward = gelu_forward,
    .gelu_backward = gelu_backward,
    .gelu_tanh_forward = gelu_tanh_forward,
    .gelu_tanh_backward = gelu_tanh_backward,
    .rmsnorm_forward = rmsnorm_forward,
    .rmsnorm_backward = rmsnorm_backward,
    .rope = rope,
    .swiglu_forward = swiglu_forward,
    .swiglu_backward = swiglu_backward,
    .add_rows = cpu_add_rows,
    .tanh_forward = tanh_forward,
    .tanh_backward = tanh_backward,
    .attention_keep = attention_keep,
    .attention_forward = attention_forward,
    .attention_backward = attention_backward,
    .attention_decode = attention_decode,
    .loss = loss_forward_backward,
    .lm_loss = lm_loss,
    .sumsq = sumsq,
    .scale = scale,
    .adamw = adamw,
    .fwht = fx_cpu_fwht,                  /* SORF-VeRA's ops live beside their math in sorf.c */
    .permute_cols = fx_cpu_permute_cols,
    .gamma_apply = fx_cpu_gamma_apply,
    .givens_build = fx_cpu_givens_build,
    .givens_backward = fx_cpu_givens_backward,
};
