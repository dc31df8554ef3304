/* gpu.cu: the CUDA backend of fedex: the model of model.c (RoBERTa for sequence classification with
 * LoRA / VeRA adapters and FedEx's residual folded into W0) trained on one GPU, and AdamW on the device.
 * It mirrors model.c's semantics and flat buffers; it does not load files, tokenise or aggregate. */
#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

/* fedex.h is C11; _Noreturn is not C++, and nvcc's host compiler reads this file as C++. */
#define _Noreturn __attribute__((noreturn))
extern "C" {
#include "fedex.h"
}
#undef _Noreturn

/* ============================================================================================
 * checks and small helpers
 * ============================================================================================
 * A failed CUDA or cuBLAS call is a broken device or a bug, not bad input: it ends the process with the
 * file, line and call, as running out of host memory does. Bad arguments from callers go to
 * fx_seterr() instead. */

static void cuda_check(cudaError_t e, const char *file, int line, const char *call) {
    if (e != cudaSuccess) fx_die("%s:%d: %s failed: %s (%s)", file, line, call, cudaGetErrorString(e),
                                 cudaGetErrorName(e));
}
static void cublas_check(cublasStatus_t s, const char *file, int line, const char *call) {
    if (s != CUBLAS_STATUS_SUCCESS)
        fx_die("%s:%d: %s failed: %s (status %d)", file, line, call, cublasGetStatusString(s), (int)s);
}
#define CUDA_CHECK(call) cuda_check((call), __FILE__, __LINE__, #call)
#define CUBLAS_CHECK(call) cublas_check((call), __FILE__, __LINE__, #call)
/* Every kernel launch goes through LAUNCH, so a bad configuration is reported where it happened. */
#define LAUNCH(kernel, grid, block, smem, ...)                                                   \
    do {                                                                                         \
        kernel<<<(grid), (block), (smem), g->st>>>(__VA_ARGS__);                                 \
        cuda_check(cudaGetLastError(), __FILE__, __LINE__, #kernel);                             \
    } while (0)

typedef __nv_bfloat16 bf16;

enum { THREADS = 256 };                  /* block size of the elementwise kernels */
static unsigned nblocks(size_t n) { return (unsigned)((n + THREADS - 1) / THREADS); }

/* Counter-based random numbers for dropout: splitmix64's output function applied to (key, index), so
 * any element's keep/drop decision can be recomputed in the backward pass from the same key and index
 * without storing a mask. A key mixes the step's seed with the dropout site (below). */
__host__ __device__ static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* One dropout site: drop with probability p, scale kept values by 1 / (1 - p) (torch's inverted
 * dropout). p == 0 is the identity (evaluation, or dropout off). */
typedef struct { float p, scale; uint64_t key; } drop_t;

__device__ static inline float dropout(float x, drop_t d, uint64_t i) {
    if (d.p <= 0.0f) return x;
    uint64_t z = mix64(d.key + 0x9e3779b97f4a7c15ULL * (i + 1));
    float u = (float)(z >> 40) * 0x1.0p-24f;         /* [0, 1), 24 bits */
    return u < d.p ? 0.0f : x * d.scale;
}

/* Dropout sites: every place that drops gets its own stream, the same in forward and backward. */
enum { SITE_EMB = 1, SITE_HEAD_IN = 2, SITE_HEAD_MID = 3, SITE_LAYER = 16, SITE_ADAPTER = 1 << 20 };
enum { LSITE_PROBS = 0, LSITE_ATTN_OUT = 1, LSITE_FFN_OUT = 2 }; /* SITE_LAYER + 4 * layer + these */

__device__ static inline float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ static inline float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* ============================================================================================
 * kernels: embeddings
 * ============================================================================================ */

/* e = word[id] + token_type[0] + position[pos], HF's order of the sums. */
__global__ void embeddings_kernel(float *e,                     /* (BT, H) */
                                  const int32_t *ids,           /* (BT) */
                                  const int32_t *pos,           /* (BT) */
                                  const float *word,            /* (V, H) */
                                  const float *position,        /* (P, H) */
                                  const float *type,            /* (types, H): row 0 */
                                  int BT, int H) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)BT * H) return;
    size_t t = i / H, c = i % H;
    e[i] = (word[(size_t)ids[t] * H + c] + type[c]) + position[(size_t)pos[t] * H + c];
}

/* ============================================================================================
 * kernels: LayerNorm (one warp per row), forward and backward
 * ============================================================================================
 * Post-LN sublayer: h = res + dropout(y + bias); out = (h - mean) / sqrt(var + eps) * gamma + beta.
 * With y == NULL, h is already in place (the embeddings). The weights are frozen, so the backward pass
 * produces dh only. */

__global__ void layernorm_forward_kernel(float *out,            /* (rows, C) */
                                         float *mean, float *rstd, /* (rows) */
                                         float *h,              /* (rows, C) LN input, written if y */
                                         const float *y,        /* (rows, C) sublayer output, or NULL */
                                         const float *bias,     /* (C) */
                                         const float *res,      /* (rows, C) residual */
                                         const float *gamma, const float *beta, /* (C) */
                                         int rows, int C, float eps, drop_t d) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    float *hr = h + (size_t)row * C;
    if (y) {
        const float *yr = y + (size_t)row * C, *rr = res + (size_t)row * C;
        for (int c = lane; c < C; c += 32) hr[c] = rr[c] + dropout(yr[c] + bias[c], d, (size_t)row * C + c);
    }
    float s = 0.0f;
    for (int c = lane; c < C; c += 32) s += hr[c];
    float mu = warp_sum(s) / C;
    float v = 0.0f;
    for (int c = lane; c < C; c += 32) { float x = hr[c] - mu; v += x * x; }
    float rs = 1.0f / sqrtf(warp_sum(v) / C + eps);    /* biased variance, as torch */
    float *o = out + (size_t)row * C;
    for (int c = lane; c < C; c += 32) o[c] = (hr[c] - mu) * rs * gamma[c] + beta[c];
    if (lane == 0) { mean[row] = mu; rstd[row] = rs; }
}

/* dh = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dout * gamma, xhat = (h - mean) * rstd.
 * dbranch (optional) = dh through the sublayer's dropout: the gradient of (y + bias). dh may be dout. */
__global__ void layernorm_backward_kernel(float *dh,            /* (rows, C) */
                                          float *dbranch,       /* (rows, C) or NULL */
                                          const float *dout,    /* (rows, C) */
                                          const float *h,       /* (rows, C) */
                                          const float *mean, const float *rstd, /* (rows) */
                                          const float *gamma,   /* (C) */
                                          int rows, int C, drop_t d) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const float *hr = h + (size_t)row * C, *dr = dout + (size_t)row * C;
    float mu = mean[row], rs = rstd[row], s1 = 0.0f, s2 = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float gx = dr[c] * gamma[c];
        s1 += gx;
        s2 += gx * (hr[c] - mu) * rs;
    }
    s1 = warp_sum(s1) / C;
    s2 = warp_sum(s2) / C;
    float *o = dh + (size_t)row * C;
    for (int c = lane; c < C; c += 32) {
        float xhat = (hr[c] - mu) * rs;
        float v = rs * (dr[c] * gamma[c] - s1 - xhat * s2);
        o[c] = v;
        if (dbranch) dbranch[(size_t)row * C + c] = dropout(v, d, (size_t)row * C + c);
    }
}

/* ============================================================================================
 * kernels: bias, GELU (exact erf form), dropout
 * ============================================================================================ */

__global__ void bias_add_kernel(float *y, const float *bias, size_t n, int C) { /* y (n/C, C) += bias */
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += bias[i % C];
}

/* f += bias; g = gelu(f) = f * Phi(f). f is kept for the backward pass. */
__global__ void bias_gelu_forward_kernel(float *f, float *gl, const float *bias, size_t n, int C) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = f[i] + bias[i % C];
    f[i] = x;
    gl[i] = 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

/* dg -> df in place: gelu'(f) = Phi(f) + f * phi(f). */
__global__ void gelu_backward_kernel(float *d, const float *f, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = f[i];
    float cdf = 0.5f * (1.0f + erff(x * 0.70710678118654752f));
    float pdf = 0.39894228040143268f * expf(-0.5f * x * x);
    d[i] *= cdf + x * pdf;
}

__global__ void dropout_kernel(float *y, const float *x, size_t n, drop_t d) { /* y = drop(x); y may be x */
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = dropout(x[i], d, i);
}

__global__ void dropout_add_kernel(float *y, const float *x, size_t n, drop_t d) { /* y += drop(x) */
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += dropout(x[i], d, i);
}

/* ============================================================================================
 * kernels: attention's softmax, forward and backward
 * ============================================================================================
 * Per (sequence b, head h): S = Q K^T, P = softmax(S / sqrt(hd) + M) row-wise, P' = dropout(P),
 * ctx = P' V, with M = finfo(float32).min on padded keys (HF's additive mask). The four products run on
 * the tensor cores through cuBLAS ("attention on the tensor cores" below); these kernels are the
 * row-wise part between them, one warp per row of T scores, lane j reading key j, j + 32, ... (coalesced),
 * the row held in registers (T <= ATT_TMAX). The forward pass keeps each row's max and sum, from which the
 * backward pass recomputes P bit for bit out of a recomputed S. Backward, as model.c's:
 *   dP = m dP' with dP' = dctx V^T and m the dropout factor (0 or 1/(1-p)),
 *   dS = P (dP - rowsum(dP P)) / sqrt(hd), then dV = P'^T dctx, dQ = dS K, dK = dS^T Q.
 * Scores are laid out (nb, NH, T, T) for the nb sequences of one chunk starting at sequence b0; the
 * dropout hash takes the global row ((b NH + h) T + i) and column j, whatever the chunking. */

enum { ATT_TMAX = 512, ATT_PER_LANE = ATT_TMAX / 32, ATT_ROWS = 8 /* warps (rows) per block */ };

/* A product's operand as the precision wants it: fp32, or bf16 rounded to nearest even. */
__device__ static inline void store_as(float *p, float v) { *p = v; }
__device__ static inline void store_as(bf16 *p, float v) { *p = __float2bfloat16_rn(v); }

template <typename OT>
__global__ void softmax_forward_kernel(OT *P,                   /* (nb, NH, T, T) P' */
                                       float2 *stats,           /* (B, NH, T): row max, row sum */
                                       const float *S,          /* (nb, NH, T, T) Q K^T */
                                       const uint8_t *mask,     /* (B, T) 1 = real token */
                                       int b0, int nb, int NH, int T, float sq, drop_t d) {
    int lane = threadIdx.x % 32;
    size_t r = (size_t)blockIdx.x * ATT_ROWS + threadIdx.x / 32;   /* the row within the chunk */
    if (r >= (size_t)nb * NH * T) return;                          /* a whole warp, no barrier below */
    size_t row = (size_t)b0 * NH * T + r;
    const float *s = S + r * T;
    const uint8_t *mk = mask + ((size_t)b0 + r / ((size_t)NH * T)) * T;
    float v[ATT_PER_LANE], mx = -INFINITY, sum = 0.0f;
#pragma unroll
    for (int k = 0; k < ATT_PER_LANE; k++) {
        int j = lane + 32 * k;
        if (j < T) { v[k] = s[j] / sq + (mk[j] ? 0.0f : -FLT_MAX); mx = fmaxf(mx, v[k]); }
    }
    mx = warp_max(mx);
#pragma unroll
    for (int k = 0; k < ATT_PER_LANE; k++)
        if (lane + 32 * k < T) { v[k] = expf(v[k] - mx); sum += v[k]; }
    sum = warp_sum(sum);
    OT *p = P + r * T;
#pragma unroll
    for (int k = 0; k < ATT_PER_LANE; k++) {
        int j = lane + 32 * k;
        if (j < T) store_as(p + j, dropout(v[k] / sum, d, row * T + j));
    }
    if (lane == 0) stats[row] = make_float2(mx, sum);
}

/* P' again (for dV) and dS / sqrt(hd) (for dQ and dK) from the recomputed S and dP' = dctx V^T. */
template <typename OT>
__global__ void softmax_backward_kernel(OT *Pd, OT *dS,         /* (nb, NH, T, T) */
                                        const float *S, const float *dPd, /* (nb, NH, T, T) */
                                        const float2 *stats,    /* (B, NH, T) */
                                        const uint8_t *mask,    /* (B, T) */
                                        int b0, int nb, int NH, int T, float sq, drop_t d) {
    int lane = threadIdx.x % 32;
    size_t r = (size_t)blockIdx.x * ATT_ROWS + threadIdx.x / 32;
    if (r >= (size_t)nb * NH * T) return;
    size_t row = (size_t)b0 * NH * T + r;
    const float *s = S + r * T, *dp = dPd + r * T;
    const uint8_t *mk = mask + ((size_t)b0 + r / ((size_t)NH * T)) * T;
    float2 st = stats[row];
    float pr[ATT_PER_LANE], g[ATT_PER_LANE], dot = 0.0f;
#pragma unroll
    for (int k = 0; k < ATT_PER_LANE; k++) {
        int j = lane + 32 * k;
        if (j < T) {
            pr[k] = expf(s[j] / sq + (mk[j] ? 0.0f : -FLT_MAX) - st.x) / st.y;   /* as the forward pass */
            float m = dropout(1.0f, d, row * T + j);
            store_as(Pd + r * T + j, pr[k] * m);
            g[k] = m * dp[j];                                                  /* dP */
            dot += g[k] * pr[k];
        }
    }
    dot = warp_sum(dot);
#pragma unroll
    for (int k = 0; k < ATT_PER_LANE; k++) {
        int j = lane + 32 * k;
        if (j < T) store_as(dS + r * T + j, pr[k] * (g[k] - dot) / sq);
    }
}

/* ============================================================================================
 * kernels: classification head and loss
 * ============================================================================================
 * HF's RobertaClassificationHead: x = dropout(features[:, 0]); x = tanh(dense(x)); x = dropout(x);
 * logits = out_proj(x). Loss: mean cross-entropy, or mean squared error when num_labels == 1. */

__global__ void gather_cls_kernel(float *out,                   /* (n, H) */
                                  const float *res,             /* (n*T, H): row b*T is token 0 */
                                  int n, int T, int H, drop_t d) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n * H) return;
    size_t b = i / H, c = i % H;
    out[i] = dropout(res[b * T * H + c], d, i);
}

/* dres = 0 except on token 0 of each row, which receives dropout'(din). */
__global__ void scatter_cls_kernel(float *dres,                 /* (n*T, H) */
                                   const float *din,            /* (n, H) */
                                   int n, int T, int H, drop_t d) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n * T * H) return;
    size_t r = i / H, c = i % H;
    dres[i] = r % T == 0 ? dropout(din[(r / T) * H + c], d, (r / T) * H + c) : 0.0f;
}

__global__ void bias_tanh_kernel(float *t, float *td,           /* (n, H): tanh, dropped tanh */
                                 const float *bias, int n, int H, drop_t d) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n * H) return;
    float y = tanhf(t[i] + bias[i % H]);
    t[i] = y;
    td[i] = dropout(y, d, i);
}

__global__ void tanh_backward_kernel(float *dz, const float *t, int n, int H, drop_t d) { /* dz in place */
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)n * H) return;
    dz[i] = dropout(dz[i], d, i) * (1.0f - t[i] * t[i]);
}

/* Per row b: loss_b and dlogits_b = d(mean loss)/dlogits_b. CE: (softmax - onehot) / n; MSE:
 * 2 (y - target) / n. Labels were validated on the host. */
__global__ void loss_kernel(float *loss,                        /* (n) */
                            float *dlogits,                     /* (n, C) or NULL */
                            const float *logits,                /* (n, C) */
                            const float *labels,                /* (n) */
                            int n, int C) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n) return;
    const float *l = logits + (size_t)b * C;
    if (C == 1) {
        float e = l[0] - labels[b];
        loss[b] = e * e;
        if (dlogits) dlogits[b] = 2.0f * e / n;
        return;
    }
    int y = (int)labels[b];
    float mx = -INFINITY, s = 0.0f;
    for (int c = 0; c < C; c++) mx = fmaxf(mx, l[c]);
    for (int c = 0; c < C; c++) s += expf(l[c] - mx);
    loss[b] = mx + logf(s) - l[y];
    if (dlogits)
        for (int c = 0; c < C; c++) dlogits[(size_t)b * C + c] = (expf(l[c] - mx) / s - (c == y)) / n;
}

__global__ void colsum_kernel(float *out, const float *in, int rows, int cols) { /* out (cols) */
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float s = 0.0f;
    for (int r = 0; r < rows; r++) s += in[(size_t)r * cols + c];
    out[c] = s;
}

/* ============================================================================================
 * kernels: VeRA's diagonal scalings
 * ============================================================================================ */

__global__ void scale_cols_kernel(float *out, const float *in, const float *vec, int rows, int cols) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;      /* out (rows, cols) = in * vec[col] */
    if (i < (size_t)rows * cols) out[i] = in[i] * vec[i % cols];
}
__global__ void scale_rows_kernel(float *out, const float *in, const float *vec, int rows, int cols) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;      /* out (rows, cols) = vec[row] * in */
    if (i < (size_t)rows * cols) out[i] = vec[i / cols] * in[i];
}
__global__ void rowdot_kernel(float *out, const float *a, const float *b, int rows, int cols) {
    int r = blockIdx.x * blockDim.x + threadIdx.x;                  /* out (rows) = sum_c a * b */
    if (r >= rows) return;
    float s = 0.0f;
    for (int c = 0; c < cols; c++) s += a[(size_t)r * cols + c] * b[(size_t)r * cols + c];
    out[r] = s;
}
/* out (cols) = sum over rows of a * b: one block per column (rows is B*T, large). */
__global__ void coldot_kernel(float *out, const float *a, const float *b, int rows, int cols) {
    __shared__ float part[THREADS];
    int c = blockIdx.x;
    float s = 0.0f;
    for (int r = threadIdx.x; r < rows; r += blockDim.x) s += a[(size_t)r * cols + c] * b[(size_t)r * cols + c];
    part[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) out[c] = part[0];
}

/* ============================================================================================
 * kernels: AdamW, residual, precision
 * ============================================================================================ */

/* torch.optim.AdamW, one element, in fx_adamw_update's order of operations:
 *   p *= 1 - lr wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
 *   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
 * with the scalars formed in double on the host. Elements whose upd flag is 0 (frozen tensors) are left
 * alone. */
typedef struct { float decay, b1, b2, c1, c2, eps, step, bc2s; } adamw_t;

__global__ void adamw_kernel(float *p, float *m, float *v, const float *grad, const uint8_t *upd, size_t n,
                             adamw_t a) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n || !upd[i]) return;
    /* Separately rounded products and sums (no fused multiply-add), as the C compiler evaluates
     * fx_adamw_update, so that equal gradients give equal parameters bit for bit. */
    float g = grad[i];
    float mi = __fadd_rn(__fmul_rn(m[i], a.b1), __fmul_rn(g, a.c1));
    float vi = __fadd_rn(__fmul_rn(v[i], a.b2), __fmul_rn(__fmul_rn(a.c2, g), g));
    float q = __fdiv_rn(mi, __fadd_rn(__fdiv_rn(sqrtf(vi), a.bc2s), a.eps));
    p[i] = __fadd_rn(__fmul_rn(p[i], a.decay), __fmul_rn(-a.step, q));
    m[i] = mi;
    v[i] = vi;
}

/* grad = w gm (accumulate 0) or grad + w gm (accumulate 1), separately rounded as the CPU client's
 * micro-batch loop computes it (acc = f * grad, then acc += f * grad). */
__global__ void accumulate_kernel(float *grad, const float *gm, float w, int accumulate, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float t = __fmul_rn(w, gm[i]);
    grad[i] = accumulate ? __fadd_rn(grad[i], t) : t;
}

__global__ void axpy_kernel(float *y, const float *x, float alpha, size_t n) { /* y += alpha x */
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += alpha * x[i];
}

__global__ void to_bf16_kernel(bf16 *out, const float *in, size_t n) {   /* round to nearest even */
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16_rn(in[i]);
}

/* ============================================================================================
 * the model's state on the device
 * ============================================================================================ */

/* One linear layer of an encoder layer: W (out, in) and bias (out) in the base, adapter index or -1. */
typedef struct { size_t w, b; int in, out, ad; } lin_t;
enum { L_Q = FX_TI_QUERY, L_K = FX_TI_KEY, L_V = FX_TI_VALUE, L_AO = FX_TI_ATTN_OUT, L_I = FX_TI_INTER,
       L_O = FX_TI_OUTPUT, NLIN = FX_NTARGETS };   /* adapter.c's target order */
typedef struct { lin_t lin[NLIN]; size_t ln1_w, ln1_b, ln2_w, ln2_b; } layer_t;

/* What one encoder layer keeps for its backward pass (all B*T rows). */
typedef struct {
    float *q, *k, *v;            /* (BT, H) projections with bias */
    float *ctx;                  /* (BT, H) attention output, heads merged */
    float2 *stats;               /* (B, NH, T) softmax row max and sum */
    float *h1, *mu1, *rs1;       /* (BT, H) attention LayerNorm input; (BT) its mean and 1/std */
    float *a1;                   /* (BT, H) attention LayerNorm output */
    float *f, *gl;               /* (BT, I) intermediate before and after GELU */
    float *h2, *mu2, *rs2;       /* (BT, H) output LayerNorm input; (BT) (BT) */
} layer_acts;

struct fx_gpu {
    int dev, prec;
    fx_config c;
    fx_adapter_cfg a;
    float scale;                 /* LoRA's s */
    int H, NH, hd, I, C, L;
    cudaStream_t st;
    cublasHandle_t blas;

    /* frozen weights: the model's base buffer as is (FedEx's residual is added into it), its bf16
     * twin when prec is bf16, VeRA's shared projections */
    size_t base_n;
    float *base;                 /* (base_n) */
    bf16 *base16;                /* (base_n) or NULL */
    size_t emb_word, emb_pos, emb_type, emb_ln_w, emb_ln_b;
    layer_t *layer;              /* host table (L) */
    int nad;
    fx_adapted *ad;              /* host copy of the model's table (nad) */
    int vin, vout;               /* VeRA: vera_A is (r, vin), vera_B (vout, r) */
    float *vA, *vB;
    bf16 *vA16, *vB16;

    /* trainable: the layout of fx_model.train */
    size_t train_n;
    float *train, *grad, *adam_m, *adam_v; /* (train_n) each */
    float *grad_mb;              /* (train_n) one micro-batch's gradient, when accumulating */
    float *gstep;                /* where backward() writes: grad, or grad_mb (fx_gpu_step_accum) */
    uint8_t *upd;                /* (train_n) 1 where AdamW updates */
    int adam_t;
    size_t head_dw, head_db, head_ow, head_ob;

    /* activations and scratch for up to bt_cap tokens in n_cap rows, and attention's scores for up
     * to att_cap elements of a chunk of sequences, one allocation */
    int bt_cap, n_cap;
    size_t att_cap;
    void *act_mem;
    int32_t *ids, *pos;          /* (BT) */
    uint8_t *mask;               /* (BT) */
    float *labels;               /* (n) */
    float *emb, *emb_mu, *emb_rs;/* (BT, H), (BT), (BT) */
    float **res;                 /* host array (L+1) of (BT, H): layer inputs; res[L] is the output */
    layer_acts *la;              /* host array (L) */
    float **u;                   /* host array (nad) of (BT, r): x A^T of each adapter */
    float *tmp;                  /* (BT, H) a sublayer's output before its LayerNorm */
    float *hd0, *ht, *htd;       /* (n, H) head: dropped token 0, tanh, dropped tanh */
    float *logits, *losses, *dlogits; /* (n, C), (n), (n, C) */
    float *dht, *dhd0;           /* (n, H) */
    float *dres, *dh, *dy, *dq, *dk, *dv; /* (BT, H) */
    float *dI;                   /* (BT, I) */
    float *att_s, *att_dp;       /* (att_cap): a chunk's S = Q K^T, and dP' = dctx V^T */
    void *att_p, *att_ds;        /* (att_cap) in the operand type (fp32, or bf16): P', and dS */
    bf16 *q16, *k16, *v16, *dc16;/* (BT, H) bf16 operands of attention's products, or NULL (fp32, tf32) */
    float *xd, *dxd;             /* (BT, max in) adapter input after dropout and its gradient */
    float *w, *dw;               /* (BT, r) */
    float *Bs, *G;               /* (max out, r) VeRA's diag(lambda_b) B, and dy^T w */

    /* bf16 operands rounded on the fly (activations, trainable tensors) */
    bf16 *cvt[2];
    size_t cvt_cap[2];

    /* host staging */
    int32_t *h_pos;
    float *h_losses;
    int h_cap;

    fx_rng rng;                  /* per-step dropout seeds */
    uint64_t step_seed;
};

static drop_t make_drop(const fx_gpu *g, float p, uint64_t site) {
    drop_t d;
    d.p = p > 0.0f ? p : 0.0f;
    d.scale = d.p > 0.0f ? 1.0f / (1.0f - d.p) : 1.0f;
    d.key = mix64(g->step_seed ^ mix64(site));
    return d;
}

static void *dmalloc(size_t bytes) {
    void *p = NULL;
    CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
    return p;
}
static void upload(fx_gpu *g, void *dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, g->st));
}
static void download(const fx_gpu *g, void *dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, g->st));
    CUDA_CHECK(cudaStreamSynchronize(g->st));
}
static void to_bf16(fx_gpu *g, bf16 *out, const float *in, size_t n) {
    if (n) LAUNCH(to_bf16_kernel, nblocks(n), THREADS, 0, out, in, n);
}

/* ============================================================================================
 * the matrix product
 * ============================================================================================
 * gemm() is fx_matmul on the device, row-major with the same arguments: C (M x N) = alpha op(A) op(B)
 * + beta C, fp32 accumulation and fp32 C. cuBLAS is column-major; a row-major C is a column-major C^T,
 * and C^T = op(B)^T op(A)^T, so B goes first. Precision: fp32 (CUBLAS_COMPUTE_32F, TF32 off), tf32
 * (inputs rounded to TF32 by the tensor cores), bf16 (A and B in bf16: frozen weights through their
 * bf16 twins, anything else rounded into a scratch copy first; products accumulate in fp32). */

static const bf16 *bf16_operand(fx_gpu *g, int slot, const float *x, int rows, int cols, int ld) {
    if (g->base16 && x >= g->base && x < g->base + g->base_n) return g->base16 + (x - g->base);
    if (g->vA16 && x >= g->vA && x < g->vA + (size_t)g->a.r * g->vin) return g->vA16 + (x - g->vA);
    if (g->vB16 && x >= g->vB && x < g->vB + (size_t)g->vout * g->a.r) return g->vB16 + (x - g->vB);
    size_t span = (size_t)(rows - 1) * ld + cols;     /* the stored rectangle, gaps included */
    if (span > g->cvt_cap[slot]) {
        /* Products queued on the stream may still read the old copy, and that cudaFree waits for a
         * non-blocking stream's queued work is nowhere documented: the stream drains first. Regrowth is
         * rare (the largest operand is seen in the first step). */
        if (g->cvt[slot]) {
            CUDA_CHECK(cudaStreamSynchronize(g->st));
            CUDA_CHECK(cudaFree(g->cvt[slot]));
        }
        g->cvt[slot] = (bf16 *)dmalloc(span * sizeof(bf16));
        g->cvt_cap[slot] = span;
    }
    to_bf16(g, g->cvt[slot], x, span);
    return g->cvt[slot];
}

static void gemm_prec(fx_gpu *g, int prec, int ta, int tb, int M, int N, int K, float alpha,
                      const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    cublasOperation_t opA = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opB = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (prec == FX_GPU_BF16 && K > 0) {
        const bf16 *A16 = bf16_operand(g, 0, A, ta ? K : M, ta ? M : K, lda);
        const bf16 *B16 = bf16_operand(g, 1, B, tb ? N : K, tb ? K : N, ldb);
        CUBLAS_CHECK(cublasGemmEx(g->blas, opB, opA, N, M, K, &alpha, B16, CUDA_R_16BF, ldb, A16,
                                  CUDA_R_16BF, lda, &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
        return;
    }
    cublasComputeType_t ct = prec == FX_GPU_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    CUBLAS_CHECK(cublasGemmEx(g->blas, opB, opA, N, M, K, &alpha, B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda,
                              &beta, C, CUDA_R_32F, ldc, ct, CUBLAS_GEMM_DEFAULT));
}

static void gemm(fx_gpu *g, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                 const float *B, int ldb, float beta, float *C, int ldc) {
    gemm_prec(g, g->prec, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* ============================================================================================
 * activations: one allocation carved by a moving offset
 * ============================================================================================ */

typedef struct { char *base; size_t off; } carver;
static void *carve(carver *cv, size_t bytes) {
    void *p = cv->base ? cv->base + cv->off : NULL;
    cv->off += (bytes + 255) / 256 * 256;             /* 256-byte aligned, as cudaMalloc's */
    return p;
}
#define CARVE(cv, ptr, count) ((ptr) = (__typeof__(ptr))carve((cv), (size_t)(count) * sizeof *(ptr)))

static void carve_acts(fx_gpu *g, carver *cv, int BT, int n) {
    int H = g->H, I = g->I, r = g->a.r, inmax = I > H ? I : H;
    CARVE(cv, g->ids, BT); CARVE(cv, g->pos, BT); CARVE(cv, g->mask, BT); CARVE(cv, g->labels, n);
    CARVE(cv, g->emb, (size_t)BT * H); CARVE(cv, g->emb_mu, BT); CARVE(cv, g->emb_rs, BT);
    for (int l = 0; l <= g->L; l++) CARVE(cv, g->res[l], (size_t)BT * H);
    for (int l = 0; l < g->L; l++) {
        layer_acts *a = &g->la[l];
        CARVE(cv, a->q, (size_t)BT * H); CARVE(cv, a->k, (size_t)BT * H); CARVE(cv, a->v, (size_t)BT * H);
        CARVE(cv, a->ctx, (size_t)BT * H); CARVE(cv, a->stats, (size_t)BT * g->NH);
        CARVE(cv, a->h1, (size_t)BT * H); CARVE(cv, a->mu1, BT); CARVE(cv, a->rs1, BT);
        CARVE(cv, a->a1, (size_t)BT * H);
        CARVE(cv, a->f, (size_t)BT * I); CARVE(cv, a->gl, (size_t)BT * I);
        CARVE(cv, a->h2, (size_t)BT * H); CARVE(cv, a->mu2, BT); CARVE(cv, a->rs2, BT);
    }
    for (int k = 0; k < g->nad; k++) CARVE(cv, g->u[k], (size_t)BT * r);
    CARVE(cv, g->tmp, (size_t)BT * H);
    CARVE(cv, g->hd0, (size_t)n * H); CARVE(cv, g->ht, (size_t)n * H); CARVE(cv, g->htd, (size_t)n * H);
    CARVE(cv, g->logits, (size_t)n * g->C); CARVE(cv, g->losses, n); CARVE(cv, g->dlogits, (size_t)n * g->C);
    CARVE(cv, g->dht, (size_t)n * H); CARVE(cv, g->dhd0, (size_t)n * H);
    CARVE(cv, g->dres, (size_t)BT * H); CARVE(cv, g->dh, (size_t)BT * H); CARVE(cv, g->dy, (size_t)BT * H);
    CARVE(cv, g->dq, (size_t)BT * H); CARVE(cv, g->dk, (size_t)BT * H); CARVE(cv, g->dv, (size_t)BT * H);
    CARVE(cv, g->dI, (size_t)BT * I);
    size_t es = g->prec == FX_GPU_BF16 ? sizeof(bf16) : sizeof(float);
    CARVE(cv, g->att_s, g->att_cap); CARVE(cv, g->att_dp, g->att_cap);
    g->att_p = carve(cv, g->att_cap * es); g->att_ds = carve(cv, g->att_cap * es);
    if (g->prec == FX_GPU_BF16) {
        CARVE(cv, g->q16, (size_t)BT * H); CARVE(cv, g->k16, (size_t)BT * H);
        CARVE(cv, g->v16, (size_t)BT * H); CARVE(cv, g->dc16, (size_t)BT * H);
    }
    CARVE(cv, g->xd, (size_t)BT * inmax); CARVE(cv, g->dxd, (size_t)BT * inmax);
    CARVE(cv, g->w, (size_t)BT * r); CARVE(cv, g->dw, (size_t)BT * r);
    CARVE(cv, g->Bs, (size_t)inmax * r); CARVE(cv, g->G, (size_t)inmax * r);
}

/* Grows the activations to hold BT tokens in n rows and ATT elements of attention scores per buffer
 * (they are reused, never shrunk). */
static void ensure_acts(fx_gpu *g, int BT, int n, size_t att) {
    if (BT <= g->bt_cap && n <= g->n_cap && att <= g->att_cap) return;
    if (BT < g->bt_cap) BT = g->bt_cap;
    if (n < g->n_cap) n = g->n_cap;
    if (att > g->att_cap) g->att_cap = att;           /* carve_acts reads it */
    if (g->act_mem) {
        CUDA_CHECK(cudaStreamSynchronize(g->st));
        CUDA_CHECK(cudaFree(g->act_mem));
    }
    carver cv = {NULL, 0};
    carve_acts(g, &cv, BT, n);                        /* first pass: the size */
    g->act_mem = dmalloc(cv.off);
    cv.base = (char *)g->act_mem;
    cv.off = 0;
    carve_acts(g, &cv, BT, n);                        /* second pass: the pointers */
    g->bt_cap = BT;
    g->n_cap = n;
    if (n > g->h_cap || BT > g->h_cap) {
        int cap = BT > n ? BT : n;
        free(g->h_pos);
        free(g->h_losses);
        g->h_pos = (int32_t *)fx_malloc((size_t)cap * sizeof(int32_t));
        g->h_losses = (float *)fx_malloc((size_t)cap * sizeof(float));
        g->h_cap = cap;
    }
}

/* ============================================================================================
 * forward and backward of the adapted linear layer
 * ============================================================================================
 * y = x W0^T (+ bias, added by the caller's fused kernel) + delta(x), with x' = dropout(x) and
 *   LoRA: delta = s (x' A^T) B^T                     A (r, in), B (out, r)
 *   VeRA: delta = lambda_b * ((lambda_d * (x' A_l^T)) B_l^T),  A_l = vera_A[:, :in], B_l = vera_B[:out, :]
 * Both end in one product accumulated into y (beta = 1): VeRA's lambda_b is folded into B_l's rows. */

static drop_t adapter_drop(const fx_gpu *g, int k, int train) {
    return make_drop(g, train ? g->a.dropout : 0.0f, SITE_ADAPTER + (uint64_t)k);
}

static void adapter_forward(fx_gpu *g, int k, const float *x /* (BT, in) */, float *y /* (BT, out) */,
                            int BT, int train) {
    const fx_adapted *ad = &g->ad[k];
    int in = ad->in, out = ad->out, r = g->a.r;
    drop_t d = adapter_drop(g, k, train);
    const float *xd = x;
    if (d.p > 0.0f) {
        LAUNCH(dropout_kernel, nblocks((size_t)BT * in), THREADS, 0, g->xd, x, (size_t)BT * in, d);
        xd = g->xd;
    }
    float *u = g->u[k];                                                   /* (BT, r) */
    if (g->a.kind == FX_LORA) {
        const float *A = g->train + ad->a_off, *B = g->train + ad->b_off;  /* (r, in), (out, r) */
        gemm(g, 0, 1, BT, r, in, 1.0f, xd, in, A, in, 0.0f, u, r);
        gemm(g, 0, 1, BT, out, r, g->scale, u, r, B, r, 1.0f, y, out);
    } else {
        const float *ld = g->train + ad->a_off, *lb = g->train + ad->b_off; /* (r), (out) */
        gemm(g, 0, 1, BT, r, in, 1.0f, xd, in, g->vA, g->vin, 0.0f, u, r);
        LAUNCH(scale_cols_kernel, nblocks((size_t)BT * r), THREADS, 0, g->w, u, ld, BT, r);
        LAUNCH(scale_rows_kernel, nblocks((size_t)out * r), THREADS, 0, g->Bs, g->vB, lb, out, r);
        gemm(g, 0, 1, BT, out, r, 1.0f, g->w, r, g->Bs, r, 1.0f, y, out);
    }
}

/* Gradients of the adapter's tensors (overwritten; frozen ones stay 0) and, when dx is not NULL,
 * dx += d delta / dx. dy (BT, out) is the gradient of y. */
static void adapter_backward(fx_gpu *g, int k, const float *x /* (BT, in) */, const float *dy /* (BT, out) */,
                             float *dx /* (BT, in) or NULL */, int BT) {
    const fx_adapted *ad = &g->ad[k];
    int in = ad->in, out = ad->out, r = g->a.r;
    drop_t d = adapter_drop(g, k, 1);
    const float *xd = x;
    if (d.p > 0.0f) {                                 /* the same mask as the forward pass */
        LAUNCH(dropout_kernel, nblocks((size_t)BT * in), THREADS, 0, g->xd, x, (size_t)BT * in, d);
        xd = g->xd;
    }
    const float *u = g->u[k];
    float *du = g->dw;                                                     /* (BT, r) */
    const float *Ain;                                 /* the (r, in) matrix that maps x' to u */
    int lda_in;
    if (g->a.kind == FX_LORA) {
        const float *A = g->train + ad->a_off, *B = g->train + ad->b_off;
        float *gA = g->gstep + ad->a_off, *gB = g->gstep + ad->b_off;
        gemm(g, 1, 0, out, r, BT, g->scale, dy, out, u, r, 0.0f, gB, r);  /* dB = s dy^T u */
        gemm(g, 0, 0, BT, r, out, g->scale, dy, out, B, r, 0.0f, du, r);  /* du = s dy B */
        if (!g->a.freeze_a) gemm(g, 1, 0, r, in, BT, 1.0f, du, r, xd, in, 0.0f, gA, in); /* dA = du^T x' */
        Ain = A;
        lda_in = in;
    } else {
        const float *ld = g->train + ad->a_off, *lb = g->train + ad->b_off;
        float *gd = g->gstep + ad->a_off, *gb = g->gstep + ad->b_off;
        LAUNCH(scale_cols_kernel, nblocks((size_t)BT * r), THREADS, 0, g->w, u, ld, BT, r); /* w = u ld */
        LAUNCH(scale_rows_kernel, nblocks((size_t)out * r), THREADS, 0, g->Bs, g->vB, lb, out, r);
        /* d lambda_b[j] = sum_i dy_ij (w B_l^T)_ij = sum_k B_l[j,k] (dy^T w)[j,k] */
        gemm(g, 1, 0, out, r, BT, 1.0f, dy, out, g->w, r, 0.0f, g->G, r);
        LAUNCH(rowdot_kernel, nblocks((size_t)out), THREADS, 0, gb, g->vB, g->G, out, r);
        gemm(g, 0, 0, BT, r, out, 1.0f, dy, out, g->Bs, r, 0.0f, du, r);   /* dw = dy diag(lb) B_l */
        if (!g->a.freeze_d) LAUNCH(coldot_kernel, r, THREADS, 0, gd, du, u, BT, r); /* d ld = sum dw u */
        LAUNCH(scale_cols_kernel, nblocks((size_t)BT * r), THREADS, 0, du, du, ld, BT, r); /* du = dw ld */
        Ain = g->vA;
        lda_in = g->vin;
    }
    if (!dx) return;
    if (d.p > 0.0f) {                                 /* dx += dropout'(du A) */
        gemm(g, 0, 0, BT, in, r, 1.0f, du, r, Ain, lda_in, 0.0f, g->dxd, in);
        LAUNCH(dropout_add_kernel, nblocks((size_t)BT * in), THREADS, 0, dx, g->dxd, (size_t)BT * in, d);
    } else {
        gemm(g, 0, 0, BT, in, r, 1.0f, du, r, Ain, lda_in, 1.0f, dx, in);
    }
}

/* y = x W^T + delta(x), bias not added. */
static void linear_forward(fx_gpu *g, const lin_t *li, const float *x, float *y, int BT, int train) {
    gemm(g, 0, 1, BT, li->out, li->in, 1.0f, x, li->in, g->base + li->w, li->in, 0.0f, y, li->out);
    if (li->ad >= 0) adapter_forward(g, li->ad, x, y, BT, train);
}

/* Adapter gradients, and dx = dy W (+ d delta/dx), written (accumulate 0) or added (accumulate 1).
 * dx NULL: the input's gradient is not needed (the first layer's input is frozen embeddings). */
static void linear_backward(fx_gpu *g, const lin_t *li, const float *x, const float *dy, float *dx, int BT,
                            int accumulate) {
    if (dx) gemm(g, 0, 0, BT, li->in, li->out, 1.0f, dy, li->out, g->base + li->w, li->in,
                 accumulate ? 1.0f : 0.0f, dx, li->in);
    if (li->ad >= 0) adapter_backward(g, li->ad, x, dy, dx, BT);
}

/* ============================================================================================
 * attention on the tensor cores
 * ============================================================================================
 * Attention's products (forward S = Q K^T and ctx = P' V; backward S again, recomputed rather than kept,
 * dP' = dctx V^T, dV = P'^T dctx, dQ = dS K, dK = dS^T Q) as strided-batched cuBLAS products, in the
 * step's precision like gemm(): fp32, tf32, or bf16 operands (Q, K, V and dctx rounded once per layer
 * into bf16 twins, P' and dS written in bf16 by the softmax kernels), fp32 accumulation and fp32 output.
 *
 * Q, K, V, ctx are (B*T, H) with the heads side by side: head h of sequence b is the (T, hd) block at
 * b T H + h hd with leading dimension H. A strided batch walks one stride per operand, so it can step
 * over sequences (stride T H) or over heads (stride hd) but not both: offset b T H + h hd is no multiple
 * of one index b NH + h. So each product is NH calls (one per head), each a batch over the chunk's
 * sequences, the larger of the two counts in training (n = 128 rows, 12 heads): 7 NH calls per layer
 * and training step.
 * (cublasGemmBatchedEx with an array of B NH pointers would make it one call; a head-major copy of Q,
 * K, V would make it one strided call at the price of the copies.)
 *
 * The scores of a chunk of sequences live in att_s, att_dp, att_p, att_ds, each (nb, NH, T, T); the
 * chunk is as many sequences as ATT_WS_ELEMS allows (at least one), so the workspace stays bounded
 * for any batch: 4 x 100 MB at 128 x 128 with 12 heads (bf16: P' and dS half that), and long rows
 * simply take more chunks. */

enum { ATT_WS_ELEMS = 1 << 25 };        /* 32 Mi scores per buffer: 128 MiB in fp32 */

static int att_chunk(const fx_gpu *g, int n, int T) {  /* sequences per chunk */
    size_t per = (size_t)g->NH * T * T, nc = ATT_WS_ELEMS / per;
    return nc < 1 ? 1 : nc > (size_t)n ? n : (int)nc;
}
static size_t att_elems(const fx_gpu *g, int n, int T) {
    return (size_t)att_chunk(g, n, T) * g->NH * T * T;
}

/* One operand of a per-head batched product: element (b, h) of the batch starts at p + b seq + h head
 * (elements of the operand type), rows ld apart. */
typedef struct { const void *p; int ld; long long seq, head; } bop;

static size_t op_size(const fx_gpu *g) { return g->prec == FX_GPU_BF16 ? sizeof(bf16) : sizeof(float); }
static const void *op_at(const fx_gpu *g, const void *p, size_t i) { return (const char *)p + i * op_size(g); }

/* The operand X (BT, H) of attention's products: itself, or its bf16 twin rounded now. */
static const void *att_operand(fx_gpu *g, bf16 *twin, const float *x, size_t n) {
    if (g->prec != FX_GPU_BF16) return x;
    to_bf16(g, twin, x, n);
    return twin;
}

/* For every head h and sequence b < nb: C_bh (M x N) = op(A_bh) op(B_bh), row-major as gemm(), C fp32 at
 * C + b cseq + h chead with rows ldc apart. */
static void gemm_heads(fx_gpu *g, int ta, int tb, int M, int N, int K, bop A, bop B, float *C, int ldc,
                       long long cseq, long long chead, int nb) {
    const float one = 1.0f, zero = 0.0f;
    cublasOperation_t opA = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opB = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cudaDataType_t t = g->prec == FX_GPU_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    cublasComputeType_t ct = g->prec == FX_GPU_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    for (int h = 0; h < g->NH; h++)
        CUBLAS_CHECK(cublasGemmStridedBatchedEx(g->blas, opB, opA, N, M, K, &one, op_at(g, B.p, h * B.head), t,
                                                B.ld, B.seq, op_at(g, A.p, h * A.head), t, A.ld, A.seq, &zero,
                                                C + h * chead, CUDA_R_32F, ldc, cseq, nb, ct, CUBLAS_GEMM_DEFAULT));
}

/* ctx (BT, H) of layer a from its q, k, v; a->stats for the backward pass. */
static void attention_forward(fx_gpu *g, layer_acts *a, int n, int T, drop_t d) {
    int H = g->H, NH = g->NH, hd = g->hd, nc = att_chunk(g, n, T);
    size_t BTH = (size_t)n * T * H;
    long long tt = (long long)T * T, ss = NH * tt, th = (long long)T * H;   /* strides: head, sequence */
    float sq = sqrtf((float)hd);
    const void *q = att_operand(g, g->q16, a->q, BTH), *k = att_operand(g, g->k16, a->k, BTH);
    const void *v = att_operand(g, g->v16, a->v, BTH);
    for (int b0 = 0; b0 < n; b0 += nc) {
        int nb = n - b0 < nc ? n - b0 : nc;
        size_t at = (size_t)b0 * T * H;                   /* the chunk's first element of q, k, v, ctx */
        bop Q = {op_at(g, q, at), H, th, hd}, K = {op_at(g, k, at), H, th, hd}, V = {op_at(g, v, at), H, th, hd};
        bop P = {g->att_p, T, ss, tt};
        gemm_heads(g, 0, 1, T, T, hd, Q, K, g->att_s, T, ss, tt, nb);                 /* S = Q K^T */
        unsigned blocks = (unsigned)(((size_t)nb * NH * T + ATT_ROWS - 1) / ATT_ROWS);
        if (g->prec == FX_GPU_BF16)
            LAUNCH(softmax_forward_kernel<bf16>, blocks, ATT_ROWS * 32, 0, (bf16 *)g->att_p, a->stats, g->att_s,
                   g->mask, b0, nb, NH, T, sq, d);
        else
            LAUNCH(softmax_forward_kernel<float>, blocks, ATT_ROWS * 32, 0, (float *)g->att_p, a->stats,
                   g->att_s, g->mask, b0, nb, NH, T, sq, d);
        gemm_heads(g, 0, 0, T, hd, T, P, V, a->ctx + at, H, th, hd, nb);              /* ctx = P' V */
    }
}

/* dq, dk, dv (BT, H) from dctx (BT, H) and layer a's q, k, v and softmax statistics. */
static void attention_backward(fx_gpu *g, const layer_acts *a, const float *dctx, float *dq, float *dk,
                               float *dv, int n, int T, drop_t d) {
    int H = g->H, NH = g->NH, hd = g->hd, nc = att_chunk(g, n, T);
    size_t BTH = (size_t)n * T * H;
    long long tt = (long long)T * T, ss = NH * tt, th = (long long)T * H;
    float sq = sqrtf((float)hd);
    const void *q = att_operand(g, g->q16, a->q, BTH), *k = att_operand(g, g->k16, a->k, BTH);
    const void *v = att_operand(g, g->v16, a->v, BTH), *dc = att_operand(g, g->dc16, dctx, BTH);
    for (int b0 = 0; b0 < n; b0 += nc) {
        int nb = n - b0 < nc ? n - b0 : nc;
        size_t at = (size_t)b0 * T * H;
        bop Q = {op_at(g, q, at), H, th, hd}, K = {op_at(g, k, at), H, th, hd}, V = {op_at(g, v, at), H, th, hd};
        bop DC = {op_at(g, dc, at), H, th, hd}, P = {g->att_p, T, ss, tt}, DS = {g->att_ds, T, ss, tt};
        gemm_heads(g, 0, 1, T, T, hd, Q, K, g->att_s, T, ss, tt, nb);                 /* S = Q K^T */
        gemm_heads(g, 0, 1, T, T, hd, DC, V, g->att_dp, T, ss, tt, nb);               /* dP' = dctx V^T */
        unsigned blocks = (unsigned)(((size_t)nb * NH * T + ATT_ROWS - 1) / ATT_ROWS);
        if (g->prec == FX_GPU_BF16)
            LAUNCH(softmax_backward_kernel<bf16>, blocks, ATT_ROWS * 32, 0, (bf16 *)g->att_p, (bf16 *)g->att_ds,
                   g->att_s, g->att_dp, a->stats, g->mask, b0, nb, NH, T, sq, d);
        else
            LAUNCH(softmax_backward_kernel<float>, blocks, ATT_ROWS * 32, 0, (float *)g->att_p,
                   (float *)g->att_ds, g->att_s, g->att_dp, a->stats, g->mask, b0, nb, NH, T, sq, d);
        gemm_heads(g, 1, 0, T, hd, T, P, DC, dv + at, H, th, hd, nb);                 /* dV = P'^T dctx */
        gemm_heads(g, 0, 0, T, hd, T, DS, K, dq + at, H, th, hd, nb);                 /* dQ = dS K */
        gemm_heads(g, 1, 0, T, hd, T, DS, Q, dk + at, H, th, hd, nb);                 /* dK = dS^T Q */
    }
}

/* ============================================================================================
 * the model: forward, backward
 * ============================================================================================ */

static drop_t layer_drop(const fx_gpu *g, int l, int which, float p, int train) {
    return make_drop(g, train ? p : 0.0f, SITE_LAYER + 4 * (uint64_t)l + which);
}

static void forward(fx_gpu *g, int n, int T, int train) {
    int BT = n * T, H = g->H, I = g->I;
    const float *W = g->base;
    float ph = g->c.hidden_dropout, pa = g->c.attention_dropout;
    unsigned ln_blocks = (unsigned)((BT + THREADS / 32 - 1) / (THREADS / 32));

    LAUNCH(embeddings_kernel, nblocks((size_t)BT * H), THREADS, 0, g->emb, g->ids, g->pos, W + g->emb_word,
           W + g->emb_pos, W + g->emb_type, BT, H);
    drop_t none = make_drop(g, 0.0f, 0);
    LAUNCH(layernorm_forward_kernel, ln_blocks, THREADS, 0, g->res[0], g->emb_mu, g->emb_rs, g->emb,
           (const float *)NULL, (const float *)NULL, (const float *)NULL, W + g->emb_ln_w, W + g->emb_ln_b,
           BT, H, g->c.layer_norm_eps, none);
    drop_t de = make_drop(g, train ? ph : 0.0f, SITE_EMB);
    if (de.p > 0.0f) LAUNCH(dropout_kernel, nblocks((size_t)BT * H), THREADS, 0, g->res[0], g->res[0],
                            (size_t)BT * H, de);

    for (int l = 0; l < g->L; l++) {
        const layer_t *ly = &g->layer[l];
        layer_acts *a = &g->la[l];
        const float *x = g->res[l];
        float *qkv[3] = {a->q, a->k, a->v};
        for (int j = L_Q; j <= L_V; j++) {
            linear_forward(g, &ly->lin[j], x, qkv[j], BT, train);
            LAUNCH(bias_add_kernel, nblocks((size_t)BT * H), THREADS, 0, qkv[j], W + ly->lin[j].b,
                   (size_t)BT * H, H);
        }
        attention_forward(g, a, n, T, layer_drop(g, l, LSITE_PROBS, pa, train));
        linear_forward(g, &ly->lin[L_AO], a->ctx, g->tmp, BT, train);
        LAUNCH(layernorm_forward_kernel, ln_blocks, THREADS, 0, a->a1, a->mu1, a->rs1, a->h1, g->tmp,
               W + ly->lin[L_AO].b, x, W + ly->ln1_w, W + ly->ln1_b, BT, H, g->c.layer_norm_eps,
               layer_drop(g, l, LSITE_ATTN_OUT, ph, train));
        linear_forward(g, &ly->lin[L_I], a->a1, a->f, BT, train);
        LAUNCH(bias_gelu_forward_kernel, nblocks((size_t)BT * I), THREADS, 0, a->f, a->gl, W + ly->lin[L_I].b,
               (size_t)BT * I, I);
        linear_forward(g, &ly->lin[L_O], a->gl, g->tmp, BT, train);
        LAUNCH(layernorm_forward_kernel, ln_blocks, THREADS, 0, g->res[l + 1], a->mu2, a->rs2, a->h2, g->tmp,
               W + ly->lin[L_O].b, a->a1, W + ly->ln2_w, W + ly->ln2_b, BT, H, g->c.layer_norm_eps,
               layer_drop(g, l, LSITE_FFN_OUT, ph, train));
    }

    /* head: token 0 -> dropout -> dense -> tanh -> dropout -> out_proj */
    const float *P = g->train;
    float pc = g->c.classifier_dropout;
    LAUNCH(gather_cls_kernel, nblocks((size_t)n * H), THREADS, 0, g->hd0, g->res[g->L], n, T, H,
           make_drop(g, train ? pc : 0.0f, SITE_HEAD_IN));
    gemm(g, 0, 1, n, H, H, 1.0f, g->hd0, H, P + g->head_dw, H, 0.0f, g->ht, H);
    LAUNCH(bias_tanh_kernel, nblocks((size_t)n * H), THREADS, 0, g->ht, g->htd, P + g->head_db, n, H,
           make_drop(g, train ? pc : 0.0f, SITE_HEAD_MID));
    gemm(g, 0, 1, n, g->C, H, 1.0f, g->htd, H, P + g->head_ow, H, 0.0f, g->logits, g->C);
    LAUNCH(bias_add_kernel, nblocks((size_t)n * g->C), THREADS, 0, g->logits, P + g->head_ob,
           (size_t)n * g->C, g->C);
}

static void backward(fx_gpu *g, int n, int T) {
    int BT = n * T, H = g->H, I = g->I, C = g->C;
    const float *P = g->train;
    float *G = g->gstep;
    float ph = g->c.hidden_dropout, pa = g->c.attention_dropout, pc = g->c.classifier_dropout;
    unsigned ln_blocks = (unsigned)((BT + THREADS / 32 - 1) / (THREADS / 32));

    /* head (trainable): dlogits -> out_proj -> tanh -> dense -> token 0 of the last layer */
    gemm(g, 1, 0, C, H, n, 1.0f, g->dlogits, C, g->htd, H, 0.0f, G + g->head_ow, H); /* dWo = dl^T td */
    LAUNCH(colsum_kernel, nblocks((size_t)C), THREADS, 0, G + g->head_ob, g->dlogits, n, C);
    gemm(g, 0, 0, n, H, C, 1.0f, g->dlogits, C, P + g->head_ow, H, 0.0f, g->dht, H);  /* d td = dl Wo */
    LAUNCH(tanh_backward_kernel, nblocks((size_t)n * H), THREADS, 0, g->dht, g->ht, n, H,
           make_drop(g, pc, SITE_HEAD_MID));
    gemm(g, 1, 0, H, H, n, 1.0f, g->dht, H, g->hd0, H, 0.0f, G + g->head_dw, H);     /* dWd = dz^T x */
    LAUNCH(colsum_kernel, nblocks((size_t)H), THREADS, 0, G + g->head_db, g->dht, n, H);
    gemm(g, 0, 0, n, H, H, 1.0f, g->dht, H, P + g->head_dw, H, 0.0f, g->dhd0, H);    /* dx = dz Wd */
    LAUNCH(scatter_cls_kernel, nblocks((size_t)BT * H), THREADS, 0, g->dres, g->dhd0, n, T, H,
           make_drop(g, pc, SITE_HEAD_IN));

    /* layers, last to first; dres holds d res[l+1] on entry and d res[l] on exit */
    for (int l = g->L - 1; l >= 0; l--) {
        const layer_t *ly = &g->layer[l];
        layer_acts *a = &g->la[l];
        const float *x = g->res[l];
        /* output LayerNorm: dh = d h2 (also the residual's share to a1), dy = d(output.dense) */
        LAUNCH(layernorm_backward_kernel, ln_blocks, THREADS, 0, g->dh, g->dy, g->dres, a->h2, a->mu2, a->rs2,
               g->base + ly->ln2_w, BT, H, layer_drop(g, l, LSITE_FFN_OUT, ph, 1));
        linear_backward(g, &ly->lin[L_O], a->gl, g->dy, g->dI, BT, 0);
        LAUNCH(gelu_backward_kernel, nblocks((size_t)BT * I), THREADS, 0, g->dI, a->f, (size_t)BT * I);
        linear_backward(g, &ly->lin[L_I], a->a1, g->dI, g->dh, BT, 1);    /* dh = d a1 */
        /* attention LayerNorm: dres = d h1 (the residual's share to x), dy = d(attention.output.dense) */
        LAUNCH(layernorm_backward_kernel, ln_blocks, THREADS, 0, g->dres, g->dy, g->dh, a->h1, a->mu1, a->rs1,
               g->base + ly->ln1_w, BT, H, layer_drop(g, l, LSITE_ATTN_OUT, ph, 1));
        linear_backward(g, &ly->lin[L_AO], a->ctx, g->dy, g->dh, BT, 0);  /* dh = d ctx */
        attention_backward(g, a, g->dh, g->dq, g->dk, g->dv, n, T, layer_drop(g, l, LSITE_PROBS, pa, 1));
        /* q, k, v read x: dres += dq Wq + dk Wk + dv Wv (+ adapters); layer 0 needs adapter grads only */
        float *dqkv[3] = {g->dq, g->dk, g->dv};
        for (int j = L_Q; j <= L_V; j++) linear_backward(g, &ly->lin[j], x, dqkv[j], l > 0 ? g->dres : NULL, BT, 1);
    }
}

/* ============================================================================================
 * public interface: probe, create, free
 * ============================================================================================ */

/* This build carries sm_90 code and compute_90 PTX: devices of compute capability 9.0 and later. */
enum { MIN_MAJOR = 9 };

int fx_gpu_probe(char *msg, size_t n) {
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        snprintf(msg, n, "no usable CUDA device (%s)", cudaGetErrorString(e));
        return 0;
    }
    int usable = 0;
    char first[sizeof(((cudaDeviceProp *)0)->name) + 64] = "";
    for (int d = 0; d < count; d++) {
        cudaDeviceProp p;
        if (cudaGetDeviceProperties(&p, d) != cudaSuccess) continue;
        if (p.major >= MIN_MAJOR) {
            if (!usable) snprintf(first, sizeof first, "%s (sm_%d%d)", p.name, p.major, p.minor);
            usable++;
        } else if (!first[0]) {
            snprintf(first, sizeof first, "%s is sm_%d%d", p.name, p.major, p.minor);
        }
    }
    if (!usable) {
        if (count) snprintf(msg, n, "no CUDA device of compute capability %d.0 or later (%s)", MIN_MAJOR, first);
        else snprintf(msg, n, "no CUDA device");
        return 0;
    }
    snprintf(msg, n, "%d CUDA device%s, device 0: %s", usable, usable > 1 ? "s" : "", first);
    return usable;
}

const char *fx_gpu_precision_name(int precision) {
    return precision == FX_GPU_FP32 ? "fp32" : precision == FX_GPU_TF32 ? "tf32"
         : precision == FX_GPU_BF16 ? "bf16" : "unknown";
}

int fx_gpu_precision_parse(const char *s, int *precision) {
    for (int p = FX_GPU_FP32; p <= FX_GPU_BF16; p++)
        if (!strcmp(s, fx_gpu_precision_name(p))) { *precision = p; return 0; }
    fx_seterr("precision \"%s\": expected fp32, tf32 or bf16", s);
    return -1;
}

/* The offsets of the model's views, resolved once by fx_model_create (no lookups by name here), checked
 * against the sizes this file's kernels assume. */
static int lookup_tables(fx_gpu *g, const fx_model *m) {
    if (!m->layer) { fx_seterr("gpu: the model has no layer views"); return -1; }
    g->emb_word = m->emb.word;
    g->emb_pos = m->emb.pos;
    g->emb_type = m->emb.type;
    g->emb_ln_w = m->emb.ln_w;
    g->emb_ln_b = m->emb.ln_b;
    for (int l = 0; l < g->L; l++) {
        layer_t *ly = &g->layer[l];
        const fx_layer_view *v = &m->layer[l];
        for (int j = 0; j < NLIN; j++) {
            lin_t *li = &ly->lin[j];
            int out, in;
            fx_target_dims(&g->c, j, &out, &in);
            if (v->lin[j].out != out || v->lin[j].in != in) {
                fx_seterr("gpu: layer %d, %s is (%d, %d), expected (%d, %d)", l, fx_targets[j].path, v->lin[j].out,
                          v->lin[j].in, out, in);
                return -1;
            }
            li->w = v->lin[j].w;
            li->b = v->lin[j].b;
            li->out = out;
            li->in = in;
            li->ad = -1;
        }
        ly->ln1_w = v->ln1_w;
        ly->ln1_b = v->ln1_b;
        ly->ln2_w = v->ln2_w;
        ly->ln2_b = v->ln2_b;
    }
    for (int k = 0; k < g->nad; k++) {
        const fx_adapted *ad = &g->ad[k];
        int j = 0;
        while (j < NLIN && ad->target != 1 << j) j++;
        if (ad->layer < 0 || ad->layer >= g->L || j == NLIN) {
            fx_seterr("gpu: adapted layer %d (%s) has layer %d, target 0x%x", k, ad->name, ad->layer, ad->target);
            return -1;
        }
        lin_t *li = &g->layer[ad->layer].lin[j];
        if (li->w != ad->w_off || li->in != ad->in || li->out != ad->out || m->layer[ad->layer].lin[j].ad != k) {
            fx_seterr("gpu: adapted layer %d (%s) does not match the base table", k, ad->name);
            return -1;
        }
        li->ad = k;
    }
    g->head_dw = m->head.dense_w;
    g->head_db = m->head.dense_b;
    g->head_ow = m->head.out_w;
    g->head_ob = m->head.out_b;
    return 0;
}

fx_gpu *fx_gpu_create(const fx_model *m, int device, int precision) {
    if (precision < FX_GPU_FP32 || precision > FX_GPU_BF16) {
        fx_seterr("gpu: unknown precision %d (0 fp32, 1 tf32, 2 bf16)", precision);
        return NULL;
    }
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || device < 0 || device >= count) {
        fx_seterr("gpu: no CUDA device %d (%s)", device,
                  e != cudaSuccess ? cudaGetErrorString(e) : count ? "index out of range" : "none present");
        return NULL;
    }
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    if (prop.major < MIN_MAJOR) {
        fx_seterr("gpu: device %d (%s) is sm_%d%d; this build runs on sm_%d0 and later", device, prop.name,
                  prop.major, prop.minor, MIN_MAJOR);
        return NULL;
    }
    if (m->c.heads < 1 || m->c.hidden % m->c.heads || m->c.num_labels < 1 || m->nadapted < 0 ||
        (m->nadapted && m->a.r < 1)) {
        fx_seterr("gpu: inconsistent model (hidden %d, heads %d, labels %d, rank %d)", m->c.hidden,
                  m->c.heads, m->c.num_labels, m->a.r);
        return NULL;
    }
    CUDA_CHECK(cudaSetDevice(device));

    fx_gpu *g = (fx_gpu *)fx_calloc(1, sizeof *g);
    g->dev = device;
    g->prec = precision;
    g->c = m->c;
    g->a = m->a;
    g->scale = m->scale;
    g->H = m->c.hidden;
    g->NH = m->c.heads;
    g->hd = g->H / g->NH;
    g->I = m->c.intermediate;
    g->C = m->c.num_labels;
    g->L = m->c.layers;
    g->nad = m->nadapted;
    g->ad = (fx_adapted *)fx_malloc((size_t)(g->nad ? g->nad : 1) * sizeof *g->ad);
    if (g->nad) memcpy(g->ad, m->ad, (size_t)g->nad * sizeof *g->ad);
    g->layer = (layer_t *)fx_calloc((size_t)g->L, sizeof *g->layer);
    g->res = (float **)fx_calloc((size_t)g->L + 1, sizeof *g->res);
    g->la = (layer_acts *)fx_calloc((size_t)g->L, sizeof *g->la);
    g->u = (float **)fx_calloc((size_t)(g->nad ? g->nad : 1), sizeof *g->u);
    if (lookup_tables(g, m) != 0) {
        free(g->ad); free(g->layer); free(g->res); free(g->la); free(g->u); free(g);
        return NULL;
    }
    CUDA_CHECK(cudaStreamCreateWithFlags(&g->st, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&g->blas));
    CUBLAS_CHECK(cublasSetStream(g->blas, g->st));
    CUBLAS_CHECK(cublasSetMathMode(g->blas, CUBLAS_DEFAULT_MATH)); /* TF32 only via the compute type */

    g->base_n = m->base.n;
    g->base = (float *)dmalloc(g->base_n * sizeof(float));
    upload(g, g->base, m->base.data, g->base_n * sizeof(float));
    if (precision == FX_GPU_BF16) {
        g->base16 = (bf16 *)dmalloc(g->base_n * sizeof(bf16));
        to_bf16(g, g->base16, g->base, g->base_n);
    }
    if (m->a.kind == FX_VERA && g->nad) {
        g->vin = m->vera_in;
        g->vout = m->vera_out;
        size_t na = (size_t)g->a.r * g->vin, nb = (size_t)g->vout * g->a.r;
        g->vA = (float *)dmalloc(na * sizeof(float));
        g->vB = (float *)dmalloc(nb * sizeof(float));
        upload(g, g->vA, m->vera_A, na * sizeof(float));
        upload(g, g->vB, m->vera_B, nb * sizeof(float));
        if (precision == FX_GPU_BF16) {
            g->vA16 = (bf16 *)dmalloc(na * sizeof(bf16));
            g->vB16 = (bf16 *)dmalloc(nb * sizeof(bf16));
            to_bf16(g, g->vA16, g->vA, na);
            to_bf16(g, g->vB16, g->vB, nb);
        }
    }

    g->train_n = m->train.n;
    size_t tb = g->train_n * sizeof(float);
    g->train = (float *)dmalloc(tb);
    g->grad = (float *)dmalloc(tb);
    g->grad_mb = (float *)dmalloc(tb);
    g->gstep = g->grad;
    g->adam_m = (float *)dmalloc(tb);
    g->adam_v = (float *)dmalloc(tb);
    g->upd = (uint8_t *)dmalloc(g->train_n);
    upload(g, g->train, m->train.data, tb);
    upload(g, g->adam_m, m->adam_m, tb);
    upload(g, g->adam_v, m->adam_v, tb);
    CUDA_CHECK(cudaMemsetAsync(g->grad, 0, tb, g->st));
    CUDA_CHECK(cudaMemsetAsync(g->grad_mb, 0, tb, g->st));
    g->adam_t = m->adam_t;
    uint8_t *upd = (uint8_t *)fx_malloc(g->train_n ? g->train_n : 1);
    for (int i = 0; i < m->train.nt; i++)
        memset(upd + m->train.t[i].off, !m->train.t[i].frozen, m->train.t[i].n);
    upload(g, g->upd, upd, g->train_n);
    CUDA_CHECK(cudaStreamSynchronize(g->st));        /* upd and the host buffers are freed/reused */
    free(upd);

    fx_rng_seed(&g->rng, m->a.seed ^ 0x6a09e667f3bcc909ULL);
    return g;
}

void fx_gpu_free(fx_gpu *g) {
    if (!g) return;
    CUDA_CHECK(cudaSetDevice(g->dev));
    CUDA_CHECK(cudaStreamSynchronize(g->st));
    void *dev[] = {g->base, g->base16, g->vA, g->vB, g->vA16, g->vB16, g->train, g->grad, g->grad_mb,
                   g->adam_m, g->adam_v, g->upd, g->act_mem, g->cvt[0], g->cvt[1]};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++)
        if (dev[i]) CUDA_CHECK(cudaFree(dev[i]));
    CUBLAS_CHECK(cublasDestroy(g->blas));
    CUDA_CHECK(cudaStreamDestroy(g->st));
    free(g->ad); free(g->layer); free(g->res); free(g->la); free(g->u);
    free(g->h_pos); free(g->h_losses);
    free(g);
}

/* ============================================================================================
 * public interface: one step
 * ============================================================================================ */

/* One step; a training step's gradient goes to GDST (g->grad, or g->grad_mb to be accumulated). *RAN is
 * 0 when the batch was refused (NAN, fx_err()), 1 once it runs (its loss may still be NAN: divergence). */
static float step(fx_gpu *g, const fx_batch *b, int train, float *logits, float *gdst, int *ran) {
    *ran = 0;
    const fx_config *c = &g->c;
    int n = b->n, T = b->T, C = g->C, wide = g->I > g->H ? g->I : g->H;
    /* The same checks and messages as fx_model_step, plus the softmax kernels' row length. */
    if (fx_batch_check(c, b, train, wide) != 0) return NAN;
    if (T > ATT_TMAX) {
        fx_seterr("batch: %d tokens per row exceed the GPU softmax kernels' %d (registers per lane)", T, ATT_TMAX);
        return NAN;
    }
    int BT = n * T;
    *ran = 1;
    CUDA_CHECK(cudaSetDevice(g->dev));
    ensure_acts(g, BT, n, att_elems(g, n, T));
    fx_batch_positions(c, b, g->h_pos);
    upload(g, g->ids, b->ids, (size_t)BT * sizeof(int32_t));
    upload(g, g->pos, g->h_pos, (size_t)BT * sizeof(int32_t));
    upload(g, g->mask, b->mask, (size_t)BT);
    if (b->labels) upload(g, g->labels, b->labels, (size_t)n * sizeof(float));
    if (train) {
        g->step_seed = fx_rng_u64(&g->rng);
        g->gstep = gdst;
        CUDA_CHECK(cudaMemsetAsync(gdst, 0, g->train_n * sizeof(float), g->st)); /* frozen stay 0 */
    }

    forward(g, n, T, train);
    if (b->labels)
        LAUNCH(loss_kernel, (unsigned)((n + THREADS - 1) / THREADS), THREADS, 0, g->losses,
               train ? g->dlogits : (float *)NULL, g->logits, g->labels, n, C);
    if (train) backward(g, n, T);

    if (logits) download(g, logits, g->logits, (size_t)n * C * sizeof(float));
    double loss = 0;
    if (b->labels) {
        download(g, g->h_losses, g->losses, (size_t)n * sizeof(float));
        for (int i = 0; i < n; i++) loss += g->h_losses[i];
        loss /= n;
    }
    CUDA_CHECK(cudaStreamSynchronize(g->st));         /* the host's ids, mask, labels may be reused */
    return (float)loss;
}

float fx_gpu_step(fx_gpu *g, const fx_batch *b, int train, float *logits) {
    int ran;
    return step(g, b, train, logits, g->grad, &ran);
}

/* Gradient accumulation over micro-batches, as the CPU client's loop: with weight un / bn for a
 * micro-batch of un of a batch's bn rows, the first call (accumulate 0) writes weight x its gradient and
 * the others add theirs, the product rounded before the sum; the loss is the micro-batch's mean. Weight 1
 * without accumulation is fx_gpu_step's training step itself. */
float fx_gpu_step_accum(fx_gpu *g, const fx_batch *b, float weight, int accumulate) {
    if (!isfinite(weight) || (accumulate != 0 && accumulate != 1)) {
        fx_seterr("gpu: gradient accumulation: weight %g, accumulate %d (expected a finite weight, 0 or 1)",
                  (double)weight, accumulate);
        return NAN;
    }
    int ran;
    if (!accumulate && weight == 1.0f) return step(g, b, 1, NULL, g->grad, &ran);
    float loss = step(g, b, 1, NULL, g->grad_mb, &ran);
    if (ran && g->train_n)                            /* a refused batch leaves the gradient as it was */
        LAUNCH(accumulate_kernel, nblocks(g->train_n), THREADS, 0, g->grad, g->grad_mb, weight, accumulate,
               g->train_n);
    return loss;
}

/* ============================================================================================
 * public interface: optimizer and state
 * ============================================================================================ */

void fx_gpu_adamw_reset(fx_gpu *g) {
    CUDA_CHECK(cudaSetDevice(g->dev));
    CUDA_CHECK(cudaMemsetAsync(g->adam_m, 0, g->train_n * sizeof(float), g->st));
    CUDA_CHECK(cudaMemsetAsync(g->adam_v, 0, g->train_n * sizeof(float), g->st));
    g->adam_t = 0;
}

/* The scalars exactly as fx_adamw_update forms them (double, then fp32). */
void fx_gpu_adamw(fx_gpu *g, float lr, float weight_decay) {
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    int t = ++g->adam_t;
    double bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
    adamw_t a;
    a.decay = weight_decay != 0 ? (float)(1 - (double)lr * weight_decay) : 1.0f;
    a.b1 = (float)b1;
    a.b2 = (float)b2;
    a.c1 = (float)(1 - b1);
    a.c2 = (float)(1 - b2);
    a.eps = (float)eps;
    a.step = (float)((double)lr / bc1);
    a.bc2s = (float)sqrt(bc2);
    CUDA_CHECK(cudaSetDevice(g->dev));
    if (g->train_n)
        LAUNCH(adamw_kernel, nblocks(g->train_n), THREADS, 0, g->train, g->adam_m, g->adam_v, g->grad, g->upd,
               g->train_n, a);
}

size_t fx_gpu_train_n(const fx_gpu *g) { return g->train_n; }

void fx_gpu_seed(fx_gpu *g, uint64_t seed) { fx_rng_seed(&g->rng, seed); }

void fx_gpu_get_train(fx_gpu *g, float *dst) {
    CUDA_CHECK(cudaSetDevice(g->dev));
    download(g, dst, g->train, g->train_n * sizeof(float));
}
void fx_gpu_set_train(fx_gpu *g, const float *src) {
    CUDA_CHECK(cudaSetDevice(g->dev));
    upload(g, g->train, src, g->train_n * sizeof(float));
    CUDA_CHECK(cudaStreamSynchronize(g->st));
}
void fx_gpu_get_grad(fx_gpu *g, float *dst) {
    CUDA_CHECK(cudaSetDevice(g->dev));
    download(g, dst, g->grad, g->train_n * sizeof(float));
}
void fx_gpu_get_base(fx_gpu *g, float *dst) {
    CUDA_CHECK(cudaSetDevice(g->dev));
    download(g, dst, g->base, g->base_n * sizeof(float));
}

/* ============================================================================================
 * public interface: the frozen weight of an adapted layer
 * ============================================================================================
 * The residual is accumulated on the host by agg.c (fx_residual_apply), exactly as the server does, and
 * the frozen weight fl(W0 + R_acc) is uploaded whole: a device copy that folded each round's residual
 * into W0 would round relative to |W0| every round and drift from the server's weight. */

int fx_gpu_set_frozen(fx_gpu *g, int k, const float *W) {
    if (k < 0 || k >= g->nad) {
        fx_seterr("gpu: frozen weight: no adapted layer %d (the model has %d)", k, g->nad);
        return -1;
    }
    const fx_adapted *ad = &g->ad[k];
    CUDA_CHECK(cudaSetDevice(g->dev));
    upload(g, g->base + ad->w_off, W, (size_t)ad->out * ad->in * sizeof(float));
    if (g->base16) to_bf16(g, g->base16 + ad->w_off, g->base + ad->w_off, (size_t)ad->out * ad->in);
    CUDA_CHECK(cudaStreamSynchronize(g->st));
    return 0;
}
