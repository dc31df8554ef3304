/* gpu.cu: the CUDA ops table (fx_gpu_ops): every layer op of model.c's block, forward and backward, as
 * CUDA kernels and cuBLAS products on device memory, and the fx_gpu API that runs model.c's step and
 * AdamW on a device twin of a model. It holds no model of its own: the block is model.c's. It does not
 * load files, tokenise or aggregate. */
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
 * checks, the current device context, small helpers
 * ============================================================================================
 * A failed CUDA or cuBLAS call is a broken device or a bug, not bad input: it ends the process with the
 * file, line and call, as running out of host memory does. Bad arguments from callers go to
 * fx_seterr() instead.
 *
 * fx_ops functions take no context, so the ops run against the file-static `cur`: the fx_gpu whose
 * public fx_gpu_* function is running (each sets it on entry, with cudaSetDevice). One process drives
 * one fx_gpu at a time (a client is a process), so there is never a second one in flight. */

struct fx_gpu;
static struct fx_gpu *cur;

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
/* Every kernel launch goes through LAUNCH, on the current context's stream, so a bad configuration is
 * reported where it happened. */
#define LAUNCH(kernel, grid, block, smem, ...)                                                   \
    do {                                                                                         \
        kernel<<<(grid), (block), (smem), cur->st>>>(__VA_ARGS__);                               \
        cuda_check(cudaGetLastError(), __FILE__, __LINE__, #kernel);                             \
    } while (0)

typedef __nv_bfloat16 bf16;

enum { THREADS = 256 };                  /* block size of the elementwise kernels */
static unsigned nblocks(size_t n) { return (unsigned)((n + THREADS - 1) / THREADS); }
static unsigned row_blocks(int rows) { return (unsigned)((rows + THREADS / 32 - 1) / (THREADS / 32)); }

/* Counter-based random numbers for dropout: splitmix64's output function applied to (site, element),
 * so a mask is one pass with no state. SITE is the value model.c draws from m->drop for the site; the
 * masks differ from the CPU's (per-row xoshiro streams), which is why parity tests run without dropout. */
__host__ __device__ static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}
/* 1 with probability 1 - p: element I of SITE is kept. */
__device__ static inline int keep_bit(uint64_t site, uint64_t i, float p) {
    uint64_t z = mix64(site + 0x9e3779b97f4a7c15ULL * (i + 1));
    return (float)(z >> 40) * 0x1.0p-24f >= p;          /* [0, 1), 24 bits */
}

__device__ static inline float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ static inline float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* Block-wide sums and maximum of V (every thread's value) through the shared array PART (blockDim.x
 * entries), a tree over the threads in a fixed order; returned to every thread, PART free again after. */
__device__ double block_sum(double v, double *part) {
    part[threadIdx.x] = v;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    double s = part[0];
    __syncthreads();
    return s;
}
__device__ float block_sum_f(float v, float *part) {
    part[threadIdx.x] = v;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    float s = part[0];
    __syncthreads();
    return s;
}
__device__ float block_max_f(float v, float *part) {
    part[threadIdx.x] = v;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if ((int)threadIdx.x < w) part[threadIdx.x] = fmaxf(part[threadIdx.x], part[threadIdx.x + w]);
        __syncthreads();
    }
    float m = part[0];
    __syncthreads();
    return m;
}

/* ============================================================================================
 * kernels: embeddings and LayerNorm (one warp per row)
 * ============================================================================================ */

/* x0 = (word[id] + type[0]) + pos[position], HF's order of the sums; without TYPE (GPT-2) word + pos;
 * without POSW as well (Llama, whose positions are rotations in attention) word alone. */
__global__ void embeddings_kernel(float *x0 /* (N, H) */, const int32_t *ids, const int32_t *pos /* (N) */,
                                  const float *word /* (V, H) */, const float *posw /* (P, H) */,
                                  const float *type /* (TV, H): row 0, or NULL */, int N, int H) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)N * H) return;
    size_t t = i / H, c = i % H;
    float w = word[(size_t)ids[t] * H + c];
    x0[i] = posw ? (type ? w + type[c] : w) + posw[(size_t)pos[t] * H + c] : w;
}

/* res = dropout(y) + x (Y NULL: RES already holds the input), out = (res - mean) rstd g + b with
 * rstd = 1/sqrt(var + eps), var biased, as torch; MEAN, RSTD (rows) kept when not NULL. OUT may be RES. */
__global__ void layernorm_forward_kernel(float *out, float *res /* (rows, C) */, float *mean, float *rstd,
                                         const float *y, const uint8_t *keep, float scale, const float *x,
                                         const float *g, const float *b, int rows, int C, float eps) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    size_t o = (size_t)row * C;
    float *hr = res + o;
    if (y)
        for (int c = lane; c < C; c += 32)
            hr[c] = (keep ? (keep[o + c] ? y[o + c] * scale : 0.0f) : y[o + c]) + x[o + c];
    float s = 0.0f;
    for (int c = lane; c < C; c += 32) s += hr[c];
    float mu = warp_sum(s) / C, v = 0.0f;
    for (int c = lane; c < C; c += 32) { float d = hr[c] - mu; v += d * d; }
    float rs = 1.0f / sqrtf(warp_sum(v) / C + eps);
    for (int c = lane; c < C; c += 32) out[o + c] = (hr[c] - mu) * rs * g[c] + b[c];
    if (lane == 0 && mean) { mean[row] = mu; rstd[row] = rs; }
}

/* g frozen: dx = rstd (dxh - mean(dxh) - xh mean(dxh xh)), dxh = dy g, xh = (x - mean) rstd. */
__global__ void layernorm_backward_kernel(float *dx, const float *dy, const float *x /* (rows, C) */,
                                          const float *mean, const float *rstd /* (rows) */,
                                          const float *g /* (C) */, int rows, int C) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    size_t o = (size_t)row * C;
    float mu = mean[row], rs = rstd[row], s1 = 0.0f, s2 = 0.0f;
    for (int c = lane; c < C; c += 32) {
        float gx = dy[o + c] * g[c];
        s1 += gx;
        s2 += gx * (x[o + c] - mu) * rs;
    }
    s1 = warp_sum(s1) / C;
    s2 = warp_sum(s2) / C;
    for (int c = lane; c < C; c += 32) dx[o + c] = rs * (dy[o + c] * g[c] - s1 - (x[o + c] - mu) * rs * s2);
}

/* RMSNorm (cpu.c's rmsnorm_forward): out = g (x rstd), rstd = 1 / sqrt(mean(x^2) + eps), one warp per
 * row; the mean of squares in fp32 here (a lane's partial sums, then the warp's tree), in double on the
 * CPU. OUT may be X. RSTD (rows) kept when not NULL. */
__global__ void rmsnorm_forward_kernel(float *out, float *rstd, const float *x /* (rows, C) */, const float *g,
                                       int rows, int C, float eps) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    size_t o = (size_t)row * C;
    float ss = 0.0f;
    for (int c = lane; c < C; c += 32) ss += x[o + c] * x[o + c];
    float rs = 1.0f / sqrtf(warp_sum(ss) / C + eps);
    for (int c = lane; c < C; c += 32) out[o + c] = g[c] * (x[o + c] * rs);
    if (lane == 0 && rstd) rstd[row] = rs;
}

/* g frozen: dx = rstd (dxh - xh mean(dxh xh)), dxh = dy g, xh = x rstd. DX may be DY. */
__global__ void rmsnorm_backward_kernel(float *dx, const float *dy, const float *x /* (rows, C) */,
                                        const float *rstd /* (rows) */, const float *g /* (C) */, int rows, int C) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    size_t o = (size_t)row * C;
    float rs = rstd[row], s = 0.0f;
    for (int c = lane; c < C; c += 32) s += dy[o + c] * g[c] * (x[o + c] * rs);
    s = warp_sum(s) / C;
    for (int c = lane; c < C; c += 32) dx[o + c] = rs * (dy[o + c] * g[c] - x[o + c] * rs * s);
}

/* ============================================================================================
 * kernels: Llama's rotary positions, SwiGLU, row sums
 * ============================================================================================ */

/* RoPE's inverse frequencies travel by value in the launch (no device buffer to keep in step with the
 * host's table): head_dim / 2 <= ROPE_MAX, which fx_gpu_create checks. */
enum { ROPE_MAX = 256 };
typedef struct { double f[ROPE_MAX]; } rope_freqs;

/* cpu.c's rope: per (token t, head h, pair i < hd/2), a = pos[t] inv_freq[i] in double, cos and sin in
 * double rounded to fp32, then the same four fp32 products; the same rotation, bit for bit up to the
 * device's cos/sin (correctly rounded in double to within 1 ulp, so fp32 results agree). SG -1: inverse. */
__global__ void rope_kernel(float *x /* (N, nh hd) */, const int32_t *pos /* (N) */, size_t npairs, int nh, int hd,
                            rope_freqs fr, float sg) {
    size_t k = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (k >= npairs) return;
    int half = hd / 2, i = (int)(k % half);
    size_t th = k / half, t = th / nh;                       /* th = t nh + h */
    double a = (double)pos[t] * fr.f[i];
    float c = (float)cos(a), sn = sg * (float)sin(a);
    float *xh = x + th * hd, x1 = xh[i], x2 = xh[i + half];
    xh[i] = x1 * c - x2 * sn;
    xh[i + half] = x2 * c + x1 * sn;
}

/* SwiGLU, cpu.c's: out = silu(g) up, silu(g) = g sigmoid(g); backward dup = dout silu(g),
 * dgate = dout up sigmoid(g) (1 + g (1 - sigmoid(g))). DGATE may be DOUT. */
__global__ void swiglu_forward_kernel(float *out, const float *gate, const float *up, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];
}
__global__ void swiglu_backward_kernel(float *dgate, float *dup, const float *dout, const float *gate,
                                       const float *up, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = gate[i], sg = 1.0f / (1.0f + expf(-g)), d = dout[i];
    dup[i] = d * (g * sg);
    dgate[i] = d * up[i] * sg * (1.0f + g * (1.0f - sg));
}

/* dst[r, c] += src[r, c] for ROWS x COLS, rows ds and ss apart: one fp32 addition per element, as cpu.c's. */
__global__ void add_rows_kernel(float *dst, size_t ds, const float *src, size_t ss, size_t n, int cols) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    size_t r = i / cols, c = i % cols;
    dst[r * ds + c] += src[r * ss + c];
}

/* ============================================================================================
 * kernels: elementwise (bias, GELU, tanh, dropout, scalings) and column reductions
 * ============================================================================================ */

__global__ void bias_rows_kernel(float *y, const float *b, size_t n, int C) { /* y (n/C, C) = b per row */
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = b[i % C];
}

/* exact GELU x Phi(x) = 0.5 x (1 + erf(x / sqrt 2)); derivative Phi(x) + x phi(x) */
/* (erf: erf(x / sqrt 2) kept by the forward, or NULL; the backward takes it, or computes it when NULL) */
__global__ void gelu_forward_kernel(float *out, float *erf, const float *in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = in[i], e = erff(x * 0.70710678118654752f);
    if (erf) erf[i] = e;
    out[i] = x * 0.5f * (1.0f + e);
}
__global__ void gelu_backward_kernel(float *d, const float *in, const float *erf, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = in[i], e = erf ? erf[i] : erff(x * 0.70710678118654752f);
    float cdf = 0.5f * (1.0f + e), pdf = expf(-0.5f * x * x) * 0.3989422804014327f;
    d[i] *= cdf + x * pdf;
}
/* gelu_new: 0.5 x (1 + tanh(c (x + 0.044715 x^3))), c = sqrt(2 / pi); cpu.c's derivative */
#define GELU_TANH_C 0.7978845608028654f
#define GELU_TANH_K 0.044715f
__global__ void gelu_tanh_forward_kernel(float *out, const float *in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = in[i];
    out[i] = 0.5f * x * (1.0f + tanhf(GELU_TANH_C * (x + GELU_TANH_K * x * x * x)));
}
__global__ void gelu_tanh_backward_kernel(float *d, const float *in, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = in[i], t = tanhf(GELU_TANH_C * (x + GELU_TANH_K * x * x * x));
    d[i] *= 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * GELU_TANH_C * (1.0f + 3.0f * GELU_TANH_K * x * x);
}
__global__ void scale_kernel(float *x, float a, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] *= a;
}
/* sum of x^2 in double, one block (a gradient's clipping: small), a tree over the threads' sums */
__global__ void sumsq_kernel(double *out, const float *x, size_t n) {
    __shared__ double part[THREADS];
    double s = 0;
    for (size_t i = threadIdx.x; i < n; i += blockDim.x) s += (double)x[i] * x[i];
    s = block_sum(s, part);
    if (threadIdx.x == 0) *out = s;
}
__global__ void tanh_forward_kernel(float *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = tanhf(x[i]);
}
__global__ void tanh_backward_kernel(float *d, const float *y, size_t n) {       /* tanh' = 1 - tanh^2 */
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) d[i] *= 1.0f - y[i] * y[i];
}

__global__ void dropout_mask_kernel(uint8_t *keep, size_t n, float p, uint64_t site) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) keep[i] = (uint8_t)keep_bit(site, i, p);
}
__global__ void dropout_hash_kernel(float *x, size_t n, float p, float scale, uint64_t site) { /* in place */
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = keep_bit(site, i, p) ? x[i] * scale : 0.0f;
}
__global__ void dropout_apply_kernel(float *out, const float *in, const uint8_t *keep, float scale, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = keep[i] ? in[i] * scale : 0.0f;
}
__global__ void dropout_accumulate_kernel(float *dx, const float *d, const uint8_t *keep, float scale, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dx[i] += keep[i] ? d[i] * scale : 0.0f;
}

/* out[i] = s[i % cols] x[i] (VeRA's lambda scalings); ADD: y[i] += that. */
__global__ void scale_cols_kernel(float *out, const float *s, const float *x, size_t n, int cols, int add) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = s[i % cols] * x[i];
    out[i] = add ? out[i] + v : v;
}

__global__ void axpy_kernel(float *y, float alpha, const float *x, size_t n) {   /* y += alpha x */
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] += alpha * x[i];
}

/* --- SORF-VeRA (sorf.c is the specification) ---------------------------------------------
 * FWHT: one block per row, the greedy power-of-two blocks of the row one after another, one butterfly
 * level at a time between barriers, in place; then 1/sqrt(n). */
__global__ void fwht_kernel(float *x, int d) {
    float *row = x + (size_t)blockIdx.x * d;
    for (int o = 0; o < d;) {
        int n = 1;
        while (2 * n <= d - o) n *= 2;
        float *b = row + o;
        for (int h = 1; h < n; h *= 2) {
            for (int t = threadIdx.x; t < n / 2; t += blockDim.x) {
                int i = (t / h) * 2 * h + t % h;
                float u = b[i], v = b[i + h];
                b[i] = u + v;
                b[i + h] = u - v;
            }
            __syncthreads();
        }
        float f = (float)(1.0 / sqrt((double)n));
        for (int t = threadIdx.x; t < n; t += blockDim.x) b[t] *= f;
        __syncthreads();
        o += n;
    }
}
__global__ void permute_cols_kernel(float *out, const float *in, const int32_t *perm, size_t n, int d, int scatter) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    size_t row = i / d * d;
    int j = (int)(i % d);
    if (scatter) out[row + perm[j]] = in[i];
    else out[i] = in[row + perm[j]];
}
__global__ void gamma_kernel(float *out, const float *in, const float *b, size_t npairs, int d, float sg) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= npairs) return;
    int h = d / 2, j = (int)(i % h);
    float a = b[j], c = sg * b[h + j], u = in[2 * i], v = in[2 * i + 1];
    out[2 * i] = a * u - c * v;
    out[2 * i + 1] = c * u + a * v;
}
/* G(theta) in double, one thread per column: a rotation of rows p, q touches each column alone, so the
 * K rotations run down each column without barriers, applied from the last pair to the first. */
__device__ void givens_columns(double *G, const float *theta, int r) {
    for (int j = threadIdx.x; j < r; j += blockDim.x) {
        for (int i = 0; i < r; i++) G[(size_t)i * r + j] = i == j;
        int k = r * (r - 1) / 2;
        for (int p = r - 2; p >= 0; p--)
            for (int q = r - 1; q > p; q--) {
                double t = theta[--k], c = cos(t), s = sin(t), a = G[(size_t)p * r + j], b = G[(size_t)q * r + j];
                G[(size_t)p * r + j] = c * a - s * b;
                G[(size_t)q * r + j] = s * a + c * b;
            }
    }
    __syncthreads();
}
__global__ void givens_build_kernel(float *M, const float *sd, int r, double *G) {
    givens_columns(G, sd + 1, r);
    for (size_t i = threadIdx.x; i < (size_t)r * r; i += blockDim.x) M[i] = (float)((double)sd[0] * G[i]);
}
/* fx_cpu_givens_backward, one thread per column, one block sum per rotation. */
__global__ void givens_backward_kernel(float *gsd, const float *dM, const float *sd, int r, double *G) {
    __shared__ double part[THREADS];
    double *gG = G + (size_t)r * r;
    givens_columns(G, sd + 1, r);
    double ds = 0;
    for (size_t i = threadIdx.x; i < (size_t)r * r; i += blockDim.x) { ds += (double)dM[i] * G[i]; gG[i] = (double)sd[0] * dM[i]; }
    ds = block_sum(ds, part);
    if (threadIdx.x == 0) gsd[0] = (float)ds;
    int k = 0;
    for (int p = 0; p < r - 1; p++)
        for (int q = p + 1; q < r; q++, k++) {
            double t = sd[1 + k], c = cos(t), s = sin(t), dt = 0;
            for (int j = threadIdx.x; j < r; j += blockDim.x) {
                double *gp = G + (size_t)p * r + j, *gq = G + (size_t)q * r + j;
                double *hp = gG + (size_t)p * r + j, *hq = gG + (size_t)q * r + j;
                double a = c * *gp + s * *gq, b = -s * *gp + c * *gq;
                dt += *hp * (-s * a - c * b) + *hq * (c * a - s * b);
                *gp = a; *gq = b;
                double u = *hp, v = *hq;
                *hp = c * u + s * v; *hq = -s * u + c * v;
            }
            dt = block_sum(dt, part);
            if (threadIdx.x == 0) gsd[1 + k] = (float)dt;
        }
}

/* db[c] = sum over rows of a (* b when not NULL): one block per column, a tree over its rows. */
__global__ void column_dot_kernel(float *db, const float *a, const float *b, int rows, int cols) {
    __shared__ float part[THREADS];
    int c = blockIdx.x;
    float s = 0.0f;
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
        size_t i = (size_t)r * cols + c;
        s += b ? a[i] * b[i] : a[i];
    }
    s = block_sum_f(s, part);
    if (threadIdx.x == 0) db[c] = s;
}

__global__ void to_bf16_kernel(bf16 *out, const float *in, size_t n) {   /* round to nearest even */
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16_rn(in[i]);
}

/* Attention runs on a padded copy of the packed rows (the products are batched over rows of one length):
 * PAD (n, T, H) from the packed X (N, H), row b's token t at off[b] + t, zeros past its length; UNPAD
 * back (padded positions dropped); MASK (n, T) 1 on real positions. One thread per padded element. */
__global__ void pad_rows_kernel(float *pad, const float *x, const int32_t *off, int T, int H, size_t total) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    size_t row = i / H;
    int j = (int)(i % H), b = (int)(row / T), t = (int)(row % T);
    pad[i] = t < off[b + 1] - off[b] ? x[((size_t)off[b] + t) * H + j] : 0.0f;
}
__global__ void unpad_rows_kernel(float *x, const float *pad, const int32_t *off, int T, int H, size_t total) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= total) return;
    size_t row = i / H;
    int j = (int)(i % H), b = (int)(row / T), t = (int)(row % T);
    if (t < off[b + 1] - off[b]) x[((size_t)off[b] + t) * H + j] = pad[i];
}
__global__ void pad_mask_kernel(uint8_t *mask, const int32_t *off, int T, size_t total) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < total) mask[i] = (int)(i % T) < off[i / T + 1] - off[i / T];
}

/* ============================================================================================
 * kernels: attention's softmax, forward and backward
 * ============================================================================================
 * Per (row b, head h), as cpu.c's attention: S = Q K^T, P = softmax(S / sqrt(hd) + M), P' = dropout(P),
 * ctx = P' V, M = finfo(float32).min on padded keys (HF's additive mask); causal rows see keys j <= i, and
 * with a sliding window W > 0 only i - W < j as well (the others probability 0, as cpu.c's). The products run on the
 * tensor cores (below); these kernels are the row-wise part between them, one warp per row of T scores,
 * lane j reading keys j, j + 32, ... (coalesced), the row in registers (T <= ATT_TMAX). Score row
 * r = (b nh + h) T + i of the (n, nh, T, T) buffers; dropout element r T + j. Backward, as cpu.c's:
 * dP = dP' keep / (1 - p) with keep = (P' != 0), dS = P (dP - rowsum(dP P)) / sqrt(hd). */

enum { ATT_TMAX = 512, ATT_PER_LANE = ATT_TMAX / 32, ATT_ROWS = 8 /* warps (rows) per block */ };

/* ATT holds S on entry and P on exit; ATT_DROP (== ATT without dropout) gets P'; P16, when not NULL,
 * a bf16 copy of P' for the product P' V. */
__global__ void softmax_forward_kernel(float *att, float *att_drop, bf16 *p16, const uint8_t *mask /* (n, T) */,
                                       size_t rows, int nh, int T, int causal, int window, float sq, float p,
                                       uint64_t site) {
    int lane = threadIdx.x % 32;
    size_t r = (size_t)blockIdx.x * ATT_ROWS + threadIdx.x / 32;
    if (r >= rows) return;                                         /* a whole warp, no barrier below */
    float *s = att + r * T;
    const uint8_t *mk = mask + r / ((size_t)nh * T) * T;
    float v[ATT_PER_LANE], mx = -INFINITY, sum = 0.0f, scale = 1.0f / (1.0f - p);
    int lim = causal ? (int)(r % T) + 1 : T;                       /* causal: keys after the query get 0 */
    int first = causal && window > 0 && lim > window ? lim - window : 0;   /* the window: keys before it too */
#pragma unroll
    for (int k = 0; k < ATT_PER_LANE; k++) {
        int j = lane + 32 * k;
        if (j < T) {
            v[k] = j >= first && j < lim ? s[j] / sq + (mk[j] ? 0.0f : -FLT_MAX) : -INFINITY;
            mx = fmaxf(mx, v[k]);
        }
    }
    mx = warp_max(mx);
#pragma unroll
    for (int k = 0; k < ATT_PER_LANE; k++)
        if (lane + 32 * k < T) { v[k] = expf(v[k] - mx); sum += v[k]; }
    sum = warp_sum(sum);
#pragma unroll
    for (int k = 0; k < ATT_PER_LANE; k++) {
        int j = lane + 32 * k;
        if (j >= T) continue;
        float pr = v[k] / sum, pd = pr;
        s[j] = pr;
        if (att_drop != att) att_drop[r * T + j] = pd = keep_bit(site, r * T + j, p) ? pr * scale : 0.0f;
        if (p16) p16[r * T + j] = __float2bfloat16_rn(pd);
    }
}

/* DS holds dP' = dctx V^T on entry and dS (already over sqrt(hd)) on exit; DS16 a bf16 copy, or NULL. */
__global__ void softmax_backward_kernel(float *ds, bf16 *ds16, const float *att, const float *att_drop,
                                        size_t rows, int T, float sq, float p) {
    int lane = threadIdx.x % 32;
    size_t r = (size_t)blockIdx.x * ATT_ROWS + threadIdx.x / 32;
    if (r >= rows) return;
    const float *pr = att + r * T, *pd = att_drop + r * T;
    float *d = ds + r * T, g[ATT_PER_LANE], dot = 0.0f, scale = 1.0f / (1.0f - p);
#pragma unroll
    for (int k = 0; k < ATT_PER_LANE; k++) {
        int j = lane + 32 * k;
        if (j >= T) continue;
        g[k] = att_drop != att ? (pd[j] != 0.0f ? d[j] * scale : 0.0f) : d[j];
        dot += g[k] * pr[j];
    }
    dot = warp_sum(dot);
#pragma unroll
    for (int k = 0; k < ATT_PER_LANE; k++) {
        int j = lane + 32 * k;
        if (j >= T) continue;
        float v = pr[j] * (g[k] - dot) / sq;
        d[j] = v;
        if (ds16) ds16[r * T + j] = __float2bfloat16_rn(v);
    }
}

/* ============================================================================================
 * kernels: loss, AdamW, accumulation
 * ============================================================================================ */

/* Per row b: loss[b] and dlogits = d(mean loss)/dlogits. L > 1: cross-entropy, (softmax - onehot) / n;
 * L == 1: MSE, 2 (z - y) / n. Labels were validated on the host (fx_batch_check). */
__global__ void loss_kernel(float *loss /* (n) */, float *dlogits, const float *logits /* (n, L) */,
                            const float *labels /* (n) */, int n, int L) {
    int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= n) return;
    const float *z = logits + (size_t)b * L;
    float *d = dlogits + (size_t)b * L;
    if (L == 1) {
        float e = z[0] - labels[b];
        loss[b] = e * e;
        d[0] = 2.0f * e / n;
        return;
    }
    int y = (int)labels[b];
    float mx = -INFINITY, s = 0.0f;
    for (int c = 0; c < L; c++) mx = fmaxf(mx, z[c]);
    for (int c = 0; c < L; c++) s += expf(z[c] - mx);
    loss[b] = mx + logf(s) - z[y];
    for (int c = 0; c < L; c++) d[c] = (expf(z[c] - mx) / s - (c == y)) / n;
}

/* The causal LM's loss (cpu.c's lm_loss), one block per packed position: LOSS[i] its share, dlogits in
 * place allowed. Position i predicts targets[i] (model.c shifted them). */
__global__ void lm_loss_kernel(float *loss /* (N) */, float *dlogits, const float *logits /* (N, V) */,
                               const int32_t *targets /* (N) */, int V, float eps, int count) {
    __shared__ float red[THREADS];
    size_t i = blockIdx.x;
    const float *z = logits + i * V;
    float *d = dlogits + i * V;
    int y = targets[i];
    if (y < 0) {
        for (int j = threadIdx.x; j < V; j += blockDim.x) d[j] = 0.0f;
        if (threadIdx.x == 0) loss[i] = 0.0f;
        return;
    }
    float mx = -INFINITY, s = 0.0f, zs = 0.0f;
    for (int j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, z[j]);
    mx = block_max_f(mx, red);
    for (int j = threadIdx.x; j < V; j += blockDim.x) { s += expf(z[j] - mx); zs += z[j]; }
    s = block_sum_f(s, red);
    zs = block_sum_f(zs, red);
    float lse = mx + logf(s), zy = z[y];
    __syncthreads();                                      /* every thread has read z[y] before d overwrites it */
    if (threadIdx.x == 0) loss[i] = (1.0f - eps) * (lse - zy) + eps * (lse - zs / V);
    float a = 1.0f - eps, e = eps / V;
    for (int j = threadIdx.x; j < V; j += blockDim.x) d[j] = (expf(z[j] - lse) - (j == y ? a : 0.0f) - e) / count;
}

/* The decode step's attention, one block per (slot, head): scores over the cached positions, softmax,
 * ctx = P V; SCORES (ns, nh, len) global scratch. */
__global__ void attention_decode_kernel(float *ctx, float *scores, const float *q, const float *kc, const float *vc,
                                        int len, int max_len, int H, int nh) {
    __shared__ float red[THREADS];
    int sh = blockIdx.x, sl = sh / nh, h = sh % nh, hd = H / nh;
    size_t co = (size_t)sl * max_len * H + (size_t)h * hd, qo = (size_t)sl * H + (size_t)h * hd;
    float *sc = scores + (size_t)sh * len, sq = sqrtf((float)hd), mx = -INFINITY, sum = 0.0f;
    for (int j = threadIdx.x; j < len; j += blockDim.x) {
        const float *kr = kc + co + (size_t)j * H;
        float dot = 0.0f;
        for (int c = 0; c < hd; c++) dot += q[qo + c] * kr[c];
        sc[j] = dot / sq;
        mx = fmaxf(mx, sc[j]);
    }
    mx = block_max_f(mx, red);
    for (int j = threadIdx.x; j < len; j += blockDim.x) { sc[j] = expf(sc[j] - mx); sum += sc[j]; }
    sum = block_sum_f(sum, red);                          /* its barriers: the scores are complete before they are read */
    for (int c = threadIdx.x; c < hd; c += blockDim.x) {
        float acc = 0.0f;
        for (int j = 0; j < len; j++) acc += sc[j] * vc[co + (size_t)j * H + c];
        ctx[qo + c] = acc / sum;
    }
}

/* cpu.c's adamw, element by element, each operation one separately rounded IEEE fp32 operation in the
 * C code's order (no fused multiply-add), so equal gradients give equal parameters bit for bit. */
__global__ void adamw_kernel(float *p, const float *g, float *m, float *v, size_t n, fx_adamw_scalars s) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float gi = g[i], pi = s.decay_on ? __fmul_rn(p[i], s.decay) : p[i];
    float mi = __fadd_rn(__fmul_rn(m[i], s.b1), __fmul_rn(gi, s.c1));
    float vi = __fadd_rn(__fmul_rn(v[i], s.b2), __fmul_rn(__fmul_rn(s.c2, gi), gi));
    float q = __fdiv_rn(mi, __fadd_rn(__fdiv_rn(sqrtf(vi), s.bc2s), s.eps));
    p[i] = __fadd_rn(pi, __fmul_rn(-s.step, q));
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

/* ============================================================================================
 * the device context and the twin model
 * ============================================================================================
 * The twin is an fx_model built by fx_model_create from the host model's config and adapter settings
 * (so its tables, views and adapter list are model.c's own), whose data pointers are then replaced by
 * device buffers: base.data, train.data, grad, adam_m, adam_v, vera_A, vera_B, and the workspace, which
 * model.c allocates itself through ops->alloc. Its ops is &fx_gpu_ops. */

enum { SCR_A, SCR_B, SCR_Q, SCR_K, SCR_V, SCR_DC, SCR_P, NSCR }; /* bf16 scratch slots */

struct fx_gpu {
    int dev, prec;
    cudaStream_t st;
    cublasHandle_t blas;
    fx_model m;                  /* the device twin */
    float *grad_mb;              /* (train.n) a micro-batch's gradient (fx_gpu_step_accum) */
    bf16 *base16;                /* (base.n) bf16 twin of the frozen weights (bf16 only), else NULL */
    bf16 *vA16, *vB16;           /* bf16 twins of VeRA's projections (bf16 only), else NULL */
    bf16 *scr[NSCR];             /* bf16 operands rounded on the fly: SCR_A, SCR_B for matmul, the rest
                                    attention's Q, K, V, dctx and P' / dS */
    size_t scr_cap[NSCR];
    float *losses, *h_losses;    /* (loss_cap) per-row losses, device and host */
    int loss_cap;
    double *gscr;                /* SORF-VeRA's Lambda_d scratch (gscr_cap bytes) */
    size_t gscr_cap;
    float *apad;                 /* attention's padded copies of the packed rows and dS (apad_cap bytes) */
    size_t apad_cap;
};

static void *dmalloc(size_t bytes) {
    void *p = NULL;
    CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 1));
    return p;
}
/* Device memory whose queued users may still run: the stream drains first (that cudaFree waits for a
 * non-blocking stream's work is nowhere documented). */
static void dfree(void *p) {
    if (!p) return;
    CUDA_CHECK(cudaStreamSynchronize(cur->st));
    CUDA_CHECK(cudaFree(p));
}
static void to_bf16(bf16 *out, const float *in, size_t n) {
    if (n) LAUNCH(to_bf16_kernel, nblocks(n), THREADS, 0, out, in, n);
}
/* Scratch slot S of at least N bf16 elements, grown (rarely: the largest operand comes in the first
 * step) and never shrunk. */
static bf16 *scratch16(int s, size_t n) {
    if (n > cur->scr_cap[s]) {
        dfree(cur->scr[s]);
        cur->scr[s] = (bf16 *)dmalloc(n * sizeof(bf16));
        cur->scr_cap[s] = n;
    }
    return cur->scr[s];
}

/* ============================================================================================
 * the matrix product
 * ============================================================================================
 * gemm() is fx_matmul on the device, row-major with the same arguments: C (M x N) = alpha op(A) op(B)
 * + beta C, fp32 accumulation and fp32 C (beta 0: C is not read, cuBLAS's contract). cuBLAS is
 * column-major; a row-major C is a column-major C^T, and C^T = op(B)^T op(A)^T, so B goes first.
 * Precision: fp32 (CUBLAS_COMPUTE_32F, TF32 off), tf32 (inputs rounded to TF32 by the tensor cores),
 * bf16 (A and B in bf16, fp32 accumulation). In bf16 an operand that lies inside the twin's frozen base
 * buffer or VeRA's projections is read from their bf16 twin, made once at creation (and by
 * fx_gpu_set_frozen), since model.c passes frozen weights as pointers into base.data; anything else
 * (activations, trainable tensors) is rounded into a scratch copy first. */

static const bf16 *bf16_operand(int slot, const float *x, int rows, int cols, int ld) {
    const fx_model *m = &cur->m;
    if (cur->base16 && x >= m->base.data && x < m->base.data + m->base.n) return cur->base16 + (x - m->base.data);
    if (cur->vA16 && x >= m->vera_A && x < m->vera_A + (size_t)m->a.r * m->vera_in) return cur->vA16 + (x - m->vera_A);
    if (cur->vB16 && x >= m->vera_B && x < m->vera_B + (size_t)m->vera_out * m->a.r) return cur->vB16 + (x - m->vera_B);
    size_t span = (size_t)(rows - 1) * ld + cols;     /* the stored rectangle, gaps included */
    bf16 *s = scratch16(slot, span);
    to_bf16(s, x, span);
    return s;
}

static void gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                 int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    cublasOperation_t opA = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opB = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (cur->prec == FX_GPU_BF16 && K > 0) {
        const bf16 *A16 = bf16_operand(SCR_A, A, ta ? K : M, ta ? M : K, lda);
        const bf16 *B16 = bf16_operand(SCR_B, B, tb ? N : K, tb ? K : N, ldb);
        CUBLAS_CHECK(cublasGemmEx(cur->blas, opB, opA, N, M, K, &alpha, B16, CUDA_R_16BF, ldb, A16,
                                  CUDA_R_16BF, lda, &beta, C, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F,
                                  CUBLAS_GEMM_DEFAULT));
        return;
    }
    cublasComputeType_t ct = cur->prec == FX_GPU_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    CUBLAS_CHECK(cublasGemmEx(cur->blas, opB, opA, N, M, K, &alpha, B, CUDA_R_32F, ldb, A, CUDA_R_32F, lda,
                              &beta, C, CUDA_R_32F, ldc, ct, CUBLAS_GEMM_DEFAULT));
}

/* ============================================================================================
 * attention on the tensor cores
 * ============================================================================================
 * The products (forward S = Q K^T, ctx = P' V; backward dP' = dctx V^T, dV = P'^T dctx, dQ = dS K,
 * dK = dS^T Q) as strided-batched cuBLAS products in the step's precision like gemm(): fp32, tf32, or
 * bf16 operands (Q, K, V, dctx rounded into scratch per call, P' and dS written in bf16 by the softmax
 * kernels or rounded), fp32 accumulation and output. model.c keeps P and P' (att, att_drop) for the
 * backward pass, so S is not recomputed there.
 *
 * Q, K, V, ctx are (N, H) with the heads side by side: head h of row b is the (T, hd) block at
 * b T H + h hd with leading dimension H. A strided batch walks one stride per operand, so it can step
 * over rows (stride T H) or over heads (stride hd) but not both: offset b T H + h hd is no multiple of
 * one index b nh + h. So each product is nh calls (one per head), each a batch over the n rows. The
 * scores (n, nh, T, T) have stride T T per head and nh T T per row. */

/* One operand of a per-head batched product: element (b, h) starts at p + b seq + h head (elements of
 * the operand type), rows ld apart. */
typedef struct { const void *p; int ld; long long seq, head; } bop;

static size_t op_size(void) { return cur->prec == FX_GPU_BF16 ? sizeof(bf16) : sizeof(float); }
static const void *op_at(const void *p, size_t i) { return (const char *)p + i * op_size(); }

/* The operand X (n elements) of attention's products: itself, or a bf16 copy in scratch slot S. */
static const void *att_operand(int s, const float *x, size_t n) {
    if (cur->prec != FX_GPU_BF16) return x;
    bf16 *t = scratch16(s, n);
    to_bf16(t, x, n);
    return t;
}

/* For every head h and row b < n: C_bh (M x N) = op(A_bh) op(B_bh), row-major as gemm(), C fp32 at
 * C + b cseq + h chead with rows ldc apart. */
static void gemm_heads(int ta, int tb, int M, int N, int K, bop A, bop B, float *C, int ldc, long long cseq,
                       long long chead, int n, int nh) {
    const float one = 1.0f, zero = 0.0f;
    cublasOperation_t opA = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opB = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    cudaDataType_t t = cur->prec == FX_GPU_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    cublasComputeType_t ct = cur->prec == FX_GPU_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    for (int h = 0; h < nh; h++)
        CUBLAS_CHECK(cublasGemmStridedBatchedEx(cur->blas, opB, opA, N, M, K, &one, op_at(B.p, h * B.head), t,
                                                B.ld, B.seq, op_at(A.p, h * A.head), t, A.ld, A.seq, &zero,
                                                C + h * chead, CUDA_R_32F, ldc, cseq, n, ct, CUBLAS_GEMM_DEFAULT));
}

/* The padded scratch of one attention call: NPAD (n, T, H) blocks, then the (n, T) mask and, with DS,
 * an (n, nh, T, T) score buffer; grown (rarely) and never shrunk. */
static float *att_scratch(int npad, size_t nth, size_t ds, uint8_t **mask, const int32_t *off, int n, int T) {
    size_t bytes = (npad * nth + ds) * sizeof(float) + (size_t)n * T;
    if (bytes > cur->apad_cap) {
        dfree(cur->apad);
        cur->apad = (float *)dmalloc(bytes);
        cur->apad_cap = bytes;
    }
    *mask = (uint8_t *)(cur->apad + npad * nth + ds);
    size_t nt = (size_t)n * T;
    LAUNCH(pad_mask_kernel, nblocks(nt), THREADS, 0, *mask, off, T, nt);
    return cur->apad;
}
static void pad_rows(float *pad, const float *x, const int32_t *off, int n, int T, int H) {
    size_t total = (size_t)n * T * H;
    LAUNCH(pad_rows_kernel, nblocks(total), THREADS, 0, pad, x, off, T, H, total);
}
static void unpad_rows(float *x, const float *pad, const int32_t *off, int n, int T, int H) {
    size_t total = (size_t)n * T * H;
    LAUNCH(unpad_rows_kernel, nblocks(total), THREADS, 0, x, pad, off, T, H, total);
}

/* What the backward reads: P and, with dropout, P' ((n, nh, T, T) each, T the longest row). */
static size_t gpu_attention_keep(int n, int T, int N, int nh, int drop) {
    (void)N;
    return (size_t)n * nh * T * T * (drop ? 2 : 1);
}

/* The packed rows are padded to T (the longest row) and run as before on (n, T) with the mask; the
 * padded queries' results are dropped again. */
static void gpu_attention_forward(float *ctx, float *keep, const float *q_, const float *k_, const float *v_,
                                  const int32_t *off, int n, int T, int H, int nh, int causal, int window,
                                  float p, uint64_t site) {
    if (T > ATT_TMAX) fx_die("gpu.cu: attention over %d tokens (the softmax kernels hold %d)", T, ATT_TMAX);
    int hd = H / nh;
    size_t NH = (size_t)n * T * H, rows = (size_t)n * nh * T;
    uint8_t *mask;
    float *sc = att_scratch(4, NH, 0, &mask, off, n, T);
    float *q = sc, *k = sc + NH, *v = sc + 2 * NH, *cp = sc + 3 * NH;
    pad_rows(q, q_, off, n, T, H); pad_rows(k, k_, off, n, T, H); pad_rows(v, v_, off, n, T, H);
    float *att = keep, *att_drop = p > 0 ? keep + rows * T : keep;
    long long tt = (long long)T * T, ss = nh * tt, th = (long long)T * H;   /* strides: head, row */
    const void *q16 = att_operand(SCR_Q, q, NH), *k16 = att_operand(SCR_K, k, NH), *v16 = att_operand(SCR_V, v, NH);
    bf16 *p16 = cur->prec == FX_GPU_BF16 ? scratch16(SCR_P, rows * T) : NULL;
    bop Q = {q16, H, th, hd}, K = {k16, H, th, hd}, V = {v16, H, th, hd};
    bop P = {p16 ? (const void *)p16 : (const void *)att_drop, T, ss, tt};
    gemm_heads(0, 1, T, T, hd, Q, K, att, T, ss, tt, n, nh);                        /* S = Q K^T */
    LAUNCH(softmax_forward_kernel, (unsigned)((rows + ATT_ROWS - 1) / ATT_ROWS), ATT_ROWS * 32, 0, att, att_drop,
           p16, mask, rows, nh, T, causal, window, sqrtf((float)hd), p, site);
    gemm_heads(0, 0, T, hd, T, P, V, cp, H, th, hd, n, nh);                         /* ctx = P' V */
    unpad_rows(ctx, cp, off, n, T, H);
}

static void gpu_attention_backward(float *dq_, float *dk_, float *dv_, const float *dctx_, const float *q_,
                                   const float *k_, const float *v_, const float *keep, const int32_t *off, int n,
                                   int T, int H, int nh, int causal, int window, float p, uint64_t site) {
    (void)causal; (void)window; (void)site;            /* P and P' are kept: nothing is drawn again */
    if (T > ATT_TMAX) fx_die("gpu.cu: attention over %d tokens (the softmax kernels hold %d)", T, ATT_TMAX);
    int hd = H / nh;
    size_t NH = (size_t)n * T * H, rows = (size_t)n * nh * T;
    uint8_t *mask;
    float *sc = att_scratch(7, NH, rows * T, &mask, off, n, T);
    float *q = sc, *k = sc + NH, *v = sc + 2 * NH, *dctx = sc + 3 * NH, *dq = sc + 4 * NH, *dk = sc + 5 * NH,
          *dv = sc + 6 * NH, *datt = sc + 7 * NH;
    pad_rows(q, q_, off, n, T, H); pad_rows(k, k_, off, n, T, H); pad_rows(v, v_, off, n, T, H);
    pad_rows(dctx, dctx_, off, n, T, H);
    const float *att = keep, *att_drop = p > 0 ? keep + rows * T : keep;
    long long tt = (long long)T * T, ss = nh * tt, th = (long long)T * H;
    const void *q16 = att_operand(SCR_Q, q, NH), *k16 = att_operand(SCR_K, k, NH), *v16 = att_operand(SCR_V, v, NH);
    const void *dc = att_operand(SCR_DC, dctx, NH), *pd = att_operand(SCR_P, att_drop, rows * T);
    bf16 *ds16 = cur->prec == FX_GPU_BF16 ? cur->scr[SCR_P] : NULL;     /* P' there is read before dS */
    bop Q = {q16, H, th, hd}, K = {k16, H, th, hd}, V = {v16, H, th, hd}, DC = {dc, H, th, hd};
    bop P = {pd, T, ss, tt}, DS = {ds16 ? (const void *)ds16 : (const void *)datt, T, ss, tt};
    gemm_heads(0, 1, T, T, hd, DC, V, datt, T, ss, tt, n, nh);                      /* dP' = dctx V^T */
    gemm_heads(1, 0, T, hd, T, P, DC, dv, H, th, hd, n, nh);                        /* dV = P'^T dctx */
    LAUNCH(softmax_backward_kernel, (unsigned)((rows + ATT_ROWS - 1) / ATT_ROWS), ATT_ROWS * 32, 0, datt, ds16,
           att, att_drop, rows, T, sqrtf((float)hd), p);
    gemm_heads(0, 0, T, hd, T, DS, K, dq, H, th, hd, n, nh);                        /* dQ = dS K */
    gemm_heads(1, 0, T, hd, T, DS, Q, dk, H, th, hd, n, nh);                        /* dK = dS^T Q */
    unpad_rows(dq_, dq, off, n, T, H); unpad_rows(dk_, dk, off, n, T, H); unpad_rows(dv_, dv, off, n, T, H);
}

/* ============================================================================================
 * the ops table
 * ============================================================================================ */

static void *gpu_alloc(size_t bytes) { return dmalloc(bytes); }  /* 256-byte aligned, as cudaMalloc's */
static void gpu_release(void *p) { dfree(p); }
/* The host side may be pageable and is reused by the caller at once: each copy completes before return. */
static void gpu_upload(void *dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, cur->st));
    CUDA_CHECK(cudaStreamSynchronize(cur->st));
}
static void gpu_download(void *dst, const void *src, size_t bytes) {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, cur->st));
    CUDA_CHECK(cudaStreamSynchronize(cur->st));
}
static void gpu_zero(float *x, size_t n) { CUDA_CHECK(cudaMemsetAsync(x, 0, n * sizeof *x, cur->st)); }
static void gpu_copy(float *dst, const float *src, size_t n) {
    if (dst != src) CUDA_CHECK(cudaMemcpyAsync(dst, src, n * sizeof *dst, cudaMemcpyDeviceToDevice, cur->st));
}
static void gpu_axpy(float *y, float alpha, const float *x, size_t n) {
    if (n) LAUNCH(axpy_kernel, nblocks(n), THREADS, 0, y, alpha, x, n);
}
static void gpu_copy_rows(float *dst, size_t ds, const float *src, size_t ss, int rows, int cols) {
    if (rows > 0 && cols > 0)
        CUDA_CHECK(cudaMemcpy2DAsync(dst, ds * sizeof(float), src, ss * sizeof(float), (size_t)cols * sizeof(float),
                                     (size_t)rows, cudaMemcpyDeviceToDevice, cur->st));
}
/* Any order of the rows' sum (a tree per column): equal to cpu.c's in-order double sum within the fp32
 * tolerance, not bit for bit. */
static void gpu_column_dot(float *db, const float *a, const float *b, int rows, int cols) {
    if (cols > 0) LAUNCH(column_dot_kernel, (unsigned)cols, THREADS, 0, db, a, b, rows, cols);
}
static void gpu_scale_cols(float *out, const float *s, const float *x, size_t n, int cols) {
    if (n) LAUNCH(scale_cols_kernel, nblocks(n), THREADS, 0, out, s, x, n, cols, 0);
}
static void gpu_scale_cols_add(float *y, const float *s, const float *x, size_t n, int cols) {
    if (n) LAUNCH(scale_cols_kernel, nblocks(n), THREADS, 0, y, s, x, n, cols, 1);
}
static void gpu_dropout_mask(uint8_t *keep, size_t rows, size_t cols, float p, uint64_t site) {
    if (rows && cols) LAUNCH(dropout_mask_kernel, nblocks(rows * cols), THREADS, 0, keep, rows * cols, p, site);
}
static void gpu_dropout_apply(float *out, const float *in, const uint8_t *keep, float p, size_t n) {
    if (!keep) { gpu_copy(out, in, n); return; }
    if (n) LAUNCH(dropout_apply_kernel, nblocks(n), THREADS, 0, out, in, keep, 1.0f / (1.0f - p), n);
}
static void gpu_dropout_accumulate(float *dx, const float *d, const uint8_t *keep, float p, size_t n) {
    if (n) LAUNCH(dropout_accumulate_kernel, nblocks(n), THREADS, 0, dx, d, keep, 1.0f / (1.0f - p), n);
}
static void gpu_embeddings_forward(float *x0, const int32_t *ids, const int32_t *pos, const float *word,
                                   const float *posw, const float *type, const float *ln_w, const float *ln_b,
                                   int N, int H, float eps, float p, uint64_t site) {
    size_t n = (size_t)N * H;
    LAUNCH(embeddings_kernel, nblocks(n), THREADS, 0, x0, ids, pos, word, posw, type, N, H);
    if (ln_w)
        LAUNCH(layernorm_forward_kernel, row_blocks(N), THREADS, 0, x0, x0, (float *)NULL, (float *)NULL,
               (const float *)NULL, (const uint8_t *)NULL, 1.0f, (const float *)NULL, ln_w, ln_b, N, H, eps);
    if (p > 0) LAUNCH(dropout_hash_kernel, nblocks(n), THREADS, 0, x0, n, p, 1.0f / (1.0f - p), site);
}
/* y = b, then y += x W^T: the bias first, as cpu.c and PyTorch's addmm; B NULL (Llama's bias-free
 * linears): y = x W^T. */
static void gpu_linear_forward(float *y, const float *x, const float *W, const float *b, int N, int in, int out) {
    if (b) LAUNCH(bias_rows_kernel, nblocks((size_t)N * out), THREADS, 0, y, b, (size_t)N * out, out);
    gemm(0, 1, N, out, in, 1.0f, x, in, W, in, b ? 1.0f : 0.0f, y, out);
}
static void gpu_linear_backward(float *dx, const float *dy, const float *W, int N, int in, int out, float beta) {
    gemm(0, 0, N, in, out, 1.0f, dy, out, W, in, beta, dx, in);
}
static void gpu_residual_layernorm_forward(float *out, float *res, float *mean, float *rstd, const float *y,
                                           const uint8_t *keep, float p, const float *x, const float *g,
                                           const float *b, int N, int H, float eps) {
    LAUNCH(layernorm_forward_kernel, row_blocks(N), THREADS, 0, out, res, mean, rstd, y, keep,
           keep ? 1.0f / (1.0f - p) : 1.0f, x, g, b, N, H, eps);
}
/* LayerNorm alone: the kernel with no residual reads its input from RES (X, not written). */
static void gpu_layernorm_forward(float *out, float *mean, float *rstd, const float *x, const float *g,
                                  const float *b, int N, int H, float eps) {
    LAUNCH(layernorm_forward_kernel, row_blocks(N), THREADS, 0, out, (float *)x, mean, rstd, (const float *)NULL,
           (const uint8_t *)NULL, 1.0f, (const float *)NULL, g, b, N, H, eps);
}
static void gpu_layernorm_backward(float *dx, const float *dy, const float *x, const float *mean,
                                   const float *rstd, const float *g, int N, int H) {
    LAUNCH(layernorm_backward_kernel, row_blocks(N), THREADS, 0, dx, dy, x, mean, rstd, g, N, H);
}
static void gpu_gelu_forward(float *out, float *erf, const float *in, size_t n) {
    if (n) LAUNCH(gelu_forward_kernel, nblocks(n), THREADS, 0, out, erf, in, n);
}
static void gpu_gelu_backward(float *d, const float *in, const float *erf, size_t n) {
    if (n) LAUNCH(gelu_backward_kernel, nblocks(n), THREADS, 0, d, in, erf, n);
}
static void gpu_gelu_tanh_forward(float *out, const float *in, size_t n) {
    if (n) LAUNCH(gelu_tanh_forward_kernel, nblocks(n), THREADS, 0, out, in, n);
}
static void gpu_gelu_tanh_backward(float *d, const float *in, size_t n) {
    if (n) LAUNCH(gelu_tanh_backward_kernel, nblocks(n), THREADS, 0, d, in, n);
}
static void gpu_tanh_forward(float *x, size_t n) {
    if (n) LAUNCH(tanh_forward_kernel, nblocks(n), THREADS, 0, x, n);
}
static void gpu_tanh_backward(float *d, const float *y, size_t n) {
    if (n) LAUNCH(tanh_backward_kernel, nblocks(n), THREADS, 0, d, y, n);
}
/* Per-row losses on the device, summed on the host in row order in double (n is a batch: small). */
static double gpu_loss(float *dlogits, const float *logits, const float *labels, int n, int L) {
    if (n > cur->loss_cap) {
        dfree(cur->losses);
        free(cur->h_losses);
        cur->losses = (float *)dmalloc((size_t)n * sizeof(float));
        cur->h_losses = (float *)fx_malloc((size_t)n * sizeof(float));
        cur->loss_cap = n;
    }
    LAUNCH(loss_kernel, (unsigned)((n + THREADS - 1) / THREADS), THREADS, 0, cur->losses, dlogits, logits, labels,
           n, L);
    gpu_download(cur->h_losses, cur->losses, (size_t)n * sizeof(float));
    double total = 0;
    for (int i = 0; i < n; i++) total += cur->h_losses[i];
    return total / n;
}
/* Per-position shares on the device, summed on the host in position order in double. */
static double gpu_lm_loss(float *dlogits, const float *logits, const int32_t *targets, int N, int V, float eps,
                          int count) {
    if (N > cur->loss_cap) {
        dfree(cur->losses);
        free(cur->h_losses);
        cur->losses = (float *)dmalloc((size_t)N * sizeof(float));
        cur->h_losses = (float *)fx_malloc((size_t)N * sizeof(float));
        cur->loss_cap = N;
    }
    LAUNCH(lm_loss_kernel, (unsigned)N, THREADS, 0, cur->losses, dlogits, logits, targets, V, eps, count);
    gpu_download(cur->h_losses, cur->losses, (size_t)N * sizeof(float));
    double total = 0;
    for (int i = 0; i < N; i++) total += cur->h_losses[i];
    return total / count;
}
static double gpu_sumsq(const float *x, size_t n) {
    double *d = (double *)dmalloc(sizeof(double)), h = 0;
    LAUNCH(sumsq_kernel, 1, THREADS, 0, d, x, n);
    gpu_download(&h, d, sizeof h);
    dfree(d);
    return h;
}
static void gpu_scale(float *x, float a, size_t n) {
    if (n) LAUNCH(scale_kernel, nblocks(n), THREADS, 0, x, a, n);
}
/* A sliding window reads the cache's last WINDOW positions alone, from FIRST (as cpu.c's). */
static void gpu_attention_decode(float *ctx, float *scores, const float *q, const float *kc, const float *vc, int ns,
                                 int len, int max_len, int H, int nh, int window) {
    int first = window > 0 && len > window ? len - window : 0;
    LAUNCH(attention_decode_kernel, (unsigned)(ns * nh), THREADS, 0, ctx, scores, q, kc + (size_t)first * H,
           vc + (size_t)first * H, len - first, max_len, H, nh);
}
static void gpu_rmsnorm_forward(float *out, float *rstd, const float *x, const float *g, int N, int H, float eps) {
    if (N > 0) LAUNCH(rmsnorm_forward_kernel, row_blocks(N), THREADS, 0, out, rstd, x, g, N, H, eps);
}
static void gpu_rmsnorm_backward(float *dx, const float *dy, const float *x, const float *rstd, const float *g, int N,
                                 int H) {
    if (N > 0) LAUNCH(rmsnorm_backward_kernel, row_blocks(N), THREADS, 0, dx, dy, x, rstd, g, N, H);
}
static void gpu_rope(float *x, const int32_t *pos, int N, int nh, int hd, const double *inv_freq, int inverse) {
    if (hd / 2 > ROPE_MAX) fx_die("gpu.cu: RoPE over head_dim %d (the launch carries %d frequencies)", hd, ROPE_MAX);
    rope_freqs fr;
    memset(&fr, 0, sizeof fr);
    memcpy(fr.f, inv_freq, (size_t)(hd / 2) * sizeof *inv_freq);
    size_t n = (size_t)N * nh * (hd / 2);
    if (n) LAUNCH(rope_kernel, nblocks(n), THREADS, 0, x, pos, n, nh, hd, fr, inverse ? -1.0f : 1.0f);
}
static void gpu_swiglu_forward(float *out, const float *gate, const float *up, size_t n) {
    if (n) LAUNCH(swiglu_forward_kernel, nblocks(n), THREADS, 0, out, gate, up, n);
}
static void gpu_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                                size_t n) {
    if (n) LAUNCH(swiglu_backward_kernel, nblocks(n), THREADS, 0, dgate, dup, dout, gate, up, n);
}
static void gpu_add_rows(float *dst, size_t ds, const float *src, size_t ss, int rows, int cols) {
    size_t n = (size_t)rows * cols;
    if (rows > 0 && cols > 0) LAUNCH(add_rows_kernel, nblocks(n), THREADS, 0, dst, ds, src, ss, n, cols);
}
static void gpu_adamw(float *p, const float *g, float *m, float *v, size_t n, const fx_adamw_scalars *s) {
    if (n) LAUNCH(adamw_kernel, nblocks(n), THREADS, 0, p, g, m, v, n, *s);
}

static void gpu_fwht(float *x, int rows, int d) {
    if (rows > 0) LAUNCH(fwht_kernel, (unsigned)rows, THREADS, 0, x, d);
}
static void gpu_permute_cols(float *out, const float *in, const int32_t *perm, int rows, int d, int scatter) {
    size_t n = (size_t)rows * d;
    if (n) LAUNCH(permute_cols_kernel, nblocks(n), THREADS, 0, out, in, perm, n, d, scatter);
}
static void gpu_gamma_apply(float *out, const float *in, const float *b, int rows, int d, int transpose) {
    size_t n = (size_t)rows * (d / 2);
    if (n) LAUNCH(gamma_kernel, nblocks(n), THREADS, 0, out, in, b, n, d, transpose ? -1.0f : 1.0f);
}
/* Lambda_d's double scratch (2 r x r), grown on demand. */
static double *givens_scratch(int r) {
    size_t need = (size_t)2 * r * r * sizeof(double);
    if (need > cur->gscr_cap) {
        dfree(cur->gscr);
        cur->gscr = (double *)dmalloc(need);
        cur->gscr_cap = need;
    }
    return cur->gscr;
}
static void gpu_givens_build(float *M, const float *sd, int r) {
    LAUNCH(givens_build_kernel, 1, THREADS, 0, M, sd, r, givens_scratch(r));
}
static void gpu_givens_backward(float *gsd, const float *dM, const float *sd, int r) {
    LAUNCH(givens_backward_kernel, 1, THREADS, 0, gsd, dM, sd, r, givens_scratch(r));
}

/* In fx_ops's order, grouped as fedex.h groups them. */
const fx_ops fx_gpu_ops = {
    .name = "cuda",
    .alloc = gpu_alloc, .release = gpu_release, .upload = gpu_upload, .download = gpu_download,
    .zero = gpu_zero, .copy = gpu_copy, .axpy = gpu_axpy, .copy_rows = gpu_copy_rows,
    .matmul = gemm, .column_dot = gpu_column_dot, .scale_cols = gpu_scale_cols, .scale_cols_add = gpu_scale_cols_add,
    .dropout_mask = gpu_dropout_mask, .dropout_mask_rows = NULL /* the classifier's last layer on every token */, .dropout_apply = gpu_dropout_apply, .dropout_accumulate = gpu_dropout_accumulate,
    .embeddings_forward = gpu_embeddings_forward,
    .linear_forward = gpu_linear_forward, .linear_backward = gpu_linear_backward,
    .linear_forward_bf16 = NULL, .linear_backward_bf16 = NULL, .embeddings_forward_bf16 = NULL, /* no bf16 host base */
    .residual_layernorm_forward = gpu_residual_layernorm_forward, .layernorm_forward = gpu_layernorm_forward,
    .layernorm_backward = gpu_layernorm_backward,
    .gelu_forward = gpu_gelu_forward, .gelu_backward = gpu_gelu_backward,
    .gelu_tanh_forward = gpu_gelu_tanh_forward, .gelu_tanh_backward = gpu_gelu_tanh_backward,
    .rmsnorm_forward = gpu_rmsnorm_forward, .rmsnorm_backward = gpu_rmsnorm_backward, .rope = gpu_rope,
    .swiglu_forward = gpu_swiglu_forward, .swiglu_backward = gpu_swiglu_backward, .add_rows = gpu_add_rows,
    .tanh_forward = gpu_tanh_forward, .tanh_backward = gpu_tanh_backward,
    .attention_keep = gpu_attention_keep, .attention_forward = gpu_attention_forward, .attention_backward = gpu_attention_backward,
    .loss = gpu_loss, .lm_loss = gpu_lm_loss, .sumsq = gpu_sumsq, .scale = gpu_scale,
    .attention_decode = gpu_attention_decode, .adamw = gpu_adamw,
    .fwht = gpu_fwht, .permute_cols = gpu_permute_cols, .gamma_apply = gpu_gamma_apply,
    .givens_build = gpu_givens_build, .givens_backward = gpu_givens_backward,
};

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

/* Makes G the current context (see the top of this file) on its device. */
static void enter(fx_gpu *g) {
    cur = g;
    CUDA_CHECK(cudaSetDevice(g->dev));
}

/* Replaces the host buffer *P (allocated by fx_model_create, N floats) by a device copy of SRC (NULL:
 * zeros). */
static void to_device(float **p, const float *src, size_t n) {
    free(*p);
    *p = (float *)dmalloc(n * sizeof(float));
    if (src) gpu_upload(*p, src, n * sizeof(float));
    else gpu_zero(*p, n);
}

fx_gpu *fx_gpu_create(const fx_model *m, int device, int precision) {
    if (m->base.bf) { /* the twin uploads an fp32 base; --precision is the device's own there */
        fx_seterr("gpu: this model's base is held in bf16 on the host (--precision bf16 --device cpu); "
                  "the GPU takes an fp32 host model and its own --precision");
        return NULL;
    }
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
    if (fx_config_family(&m->c)->positions == FX_POS_ROPE && fx_model_head_dim(&m->c) / 2 > ROPE_MAX) {
        fx_seterr("gpu: head_dim %d: the RoPE kernel carries at most %d frequencies (head_dim %d); use --device cpu",
                  fx_model_head_dim(&m->c), ROPE_MAX, 2 * ROPE_MAX);
        return NULL;
    }
    fx_gpu *g = (fx_gpu *)fx_calloc(1, sizeof *g);
    /* The twin's tables from model.c itself; the host base is passed so that none is allocated. */
    if (fx_model_create(&g->m, &m->c, &m->a, m->base.data) != 0) { free(g); return NULL; }
    fx_model *t = &g->m;
    if (t->base.n != m->base.n || t->train.n != m->train.n || t->nadapted != m->nadapted ||
        t->vera_in != m->vera_in || t->vera_out != m->vera_out) {
        fx_seterr("gpu: the model's tables (base %zu, train %zu, %d adapted) are not its configuration's", m->base.n,
                  m->train.n, m->nadapted);
        fx_model_free(t);
        free(g);
        return NULL;
    }
    g->dev = device;
    g->prec = precision;
    enter(g);
    CUDA_CHECK(cudaStreamCreateWithFlags(&g->st, cudaStreamNonBlocking));
    CUBLAS_CHECK(cublasCreate(&g->blas));
    CUBLAS_CHECK(cublasSetStream(g->blas, g->st));
    CUBLAS_CHECK(cublasSetMathMode(g->blas, CUBLAS_DEFAULT_MATH)); /* TF32 only via the compute type */

    t->ops = &fx_gpu_ops;
    t->base.data = (float *)dmalloc(t->base.n * sizeof(float));   /* base_owned is 0: freed here */
    gpu_upload(t->base.data, m->base.data, t->base.n * sizeof(float));
    to_device(&t->train.data, m->train.data, t->train.n);
    to_device(&t->grad, NULL, t->train.n);
    to_device(&t->adam_m, m->adam_m, t->train.n);
    to_device(&t->adam_v, m->adam_v, t->train.n);
    t->adam_t = m->adam_t;
    g->grad_mb = (float *)dmalloc(t->train.n * sizeof(float));
    size_t na = (size_t)t->a.r * t->vera_in, nb = (size_t)t->vera_out * t->a.r;
    if (t->vera_A) {
        to_device(&t->vera_A, m->vera_A, na);
        to_device(&t->vera_B, m->vera_B, nb);
    }
    for (int i = 0; i < t->nsorf; i++) { /* SORF-VeRA's mixers: the host's signs and permutations */
        fx_sorf_mixer *S = &t->sorf[i];
        size_t ns = (size_t)3 * 3 * S->d, np = (size_t)3 * S->d;
        float *signs = (float *)dmalloc(ns * sizeof(float));
        int32_t *perm = (int32_t *)dmalloc(np * sizeof(int32_t));
        gpu_upload(signs, fx_sorf_of(m, S->d)->signs, ns * sizeof(float));
        gpu_upload(perm, fx_sorf_of(m, S->d)->perm, np * sizeof(int32_t));
        free(S->signs); free(S->perm);
        S->signs = signs; S->perm = perm;
    }
    if (precision == FX_GPU_BF16) {
        g->base16 = (bf16 *)dmalloc(t->base.n * sizeof(bf16));
        to_bf16(g->base16, t->base.data, t->base.n);
        if (t->vera_A) {
            g->vA16 = (bf16 *)dmalloc(na * sizeof(bf16));
            g->vB16 = (bf16 *)dmalloc(nb * sizeof(bf16));
            to_bf16(g->vA16, t->vera_A, na);
            to_bf16(g->vB16, t->vera_B, nb);
        }
    }
    CUDA_CHECK(cudaStreamSynchronize(g->st));
    return g;
}

void fx_gpu_free(fx_gpu *g) {
    if (!g) return;
    enter(g);
    fx_model *t = &g->m;
    float **dev[] = {&t->base.data, &t->train.data, &t->grad, &t->adam_m, &t->adam_v, &t->vera_A, &t->vera_B};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) { dfree(*dev[i]); *dev[i] = NULL; }
    for (int i = 0; i < t->nsorf; i++) { dfree(t->sorf[i].signs); dfree(t->sorf[i].perm); t->sorf[i].signs = NULL; t->sorf[i].perm = NULL; }
    dfree(g->gscr);
    dfree(g->apad);
    fx_model_free(t);                     /* the host tables, and the workspace through gpu_release */
    void *more[] = {g->grad_mb, g->base16, g->vA16, g->vB16, g->losses};
    for (size_t i = 0; i < sizeof more / sizeof more[0]; i++) dfree(more[i]);
    for (int s = 0; s < NSCR; s++) dfree(g->scr[s]);
    free(g->h_losses);
    CUBLAS_CHECK(cublasDestroy(g->blas));
    CUDA_CHECK(cudaStreamDestroy(g->st));
    cur = NULL;
    free(g);
}

/* ============================================================================================
 * public interface: one step (model.c's, on the twin)
 * ============================================================================================ */

/* fx_model_step on the twin; GDST receives a training step's gradient (the twin's grad, or grad_mb to be
 * accumulated). *RAN is 0 when the batch was refused (NAN, fx_err()), 1 once it runs (its loss may still
 * be NAN: divergence). */
static float step(fx_gpu *g, const fx_batch *b, int train, float *logits, float *gdst, int *ran) {
    *ran = 0;
    enter(g);
    fx_model *t = &g->m;
    /* fx_model_step's own checks first, so that the softmax kernels' limit is only the last reason */
    int wide = t->c.hidden > t->c.intermediate ? t->c.hidden : t->c.intermediate;
    if (t->fam->fused_qkv && 3 * t->c.hidden > wide) wide = 3 * t->c.hidden;
    int hq = t->c.heads * fx_model_head_dim(&t->c);                 /* Llama's query width may be wider */
    if (hq > wide) wide = hq;
    if (fx_batch_check(&t->c, b, train, wide) != 0) return NAN;
    if (b->T > ATT_TMAX) {
        fx_seterr("batch: %d tokens per row exceed the GPU softmax kernels' %d (registers per lane)", b->T, ATT_TMAX);
        return NAN;
    }
    *ran = 1;
    float *grad = t->grad;
    t->grad = gdst;
    float loss = fx_model_step(t, b, train, logits);
    t->grad = grad;
    CUDA_CHECK(cudaStreamSynchronize(g->st));
    return loss;
}

float fx_gpu_step(fx_gpu *g, const fx_batch *b, int train, float *logits) {
    int ran;
    return step(g, b, train, logits, g->m.grad, &ran);
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
    if (!accumulate && weight == 1.0f) return step(g, b, 1, NULL, g->m.grad, &ran);
    float loss = step(g, b, 1, NULL, g->grad_mb, &ran);
    size_t n = g->m.train.n;
    if (ran && n) {                                   /* a refused batch leaves the gradient as it was */
        LAUNCH(accumulate_kernel, nblocks(n), THREADS, 0, g->m.grad, g->grad_mb, weight, accumulate, n);
        CUDA_CHECK(cudaStreamSynchronize(g->st));
    }
    return loss;
}

/* ============================================================================================
 * public interface: decoding (model.c's KV-cache decoder on the twin)
 * ============================================================================================ */

/* Each call makes G current, runs model.c's decoder on the twin and drains the stream. */
typedef struct { fx_gpu *g; fx_decoder inner; } gpu_decoder;
static int gd_prefill(void *ctx, const int *ids, int n, float *logits) {
    gpu_decoder *d = (gpu_decoder *)ctx;
    enter(d->g);
    if (n > ATT_TMAX) { fx_seterr("decode: a prompt of %d tokens exceeds the GPU softmax kernels' %d", n, ATT_TMAX); return -1; }
    int rc = d->inner.prefill(d->inner.ctx, ids, n, logits);
    CUDA_CHECK(cudaStreamSynchronize(d->g->st));
    return rc;
}
static int gd_step(void *ctx, int ns, const int *tok, int pos, float *logits) {
    gpu_decoder *d = (gpu_decoder *)ctx;
    enter(d->g);
    int rc = d->inner.step(d->inner.ctx, ns, tok, pos, logits);
    CUDA_CHECK(cudaStreamSynchronize(d->g->st));
    return rc;
}
static int gd_reorder(void *ctx, int ns, const int *src, int len) {
    gpu_decoder *d = (gpu_decoder *)ctx;
    enter(d->g);
    int rc = d->inner.reorder(d->inner.ctx, ns, src, len);
    CUDA_CHECK(cudaStreamSynchronize(d->g->st));
    return rc;
}

int fx_gpu_decoder(fx_gpu *g, int nslots, fx_decoder *d) {
    enter(g);
    gpu_decoder *x = (gpu_decoder *)fx_calloc(1, sizeof *x);
    x->g = g;
    if (fx_model_decoder(&g->m, nslots, &x->inner) != 0) { free(x); memset(d, 0, sizeof *d); return -1; }
    *d = x->inner;
    d->ctx = x;
    d->prefill = gd_prefill;
    d->step = gd_step;
    d->reorder = gd_reorder;
    return 0;
}

void fx_gpu_decoder_free(fx_decoder *d) {
    gpu_decoder *x = (gpu_decoder *)d->ctx;
    if (x) {
        enter(x->g);
        fx_decoder_free(&x->inner);
        free(x);
    }
    memset(d, 0, sizeof *d);
}

/* ============================================================================================
 * public interface: optimizer and state
 * ============================================================================================ */

void fx_gpu_adamw_reset(fx_gpu *g) {
    enter(g);
    fx_adamw_reset(&g->m);
}

/* model.c's fx_adamw_update on the twin: its scalars, the tensors it updates, the gpu_adamw kernel. */
void fx_gpu_adamw(fx_gpu *g, float lr, float weight_decay) {
    enter(g);
    fx_adamw_update(&g->m, lr, weight_decay);
}

size_t fx_gpu_train_n(const fx_gpu *g) { return g->m.train.n; }

/* The twin's m->drop draws every dropout site's value, as on the CPU. */
void fx_gpu_seed(fx_gpu *g, uint64_t seed) { fx_rng_seed(&g->m.drop, seed); }

void fx_gpu_get_train(fx_gpu *g, float *dst) {
    enter(g);
    gpu_download(dst, g->m.train.data, g->m.train.n * sizeof(float));
}
void fx_gpu_set_train(fx_gpu *g, const float *src) {
    enter(g);
    gpu_upload(g->m.train.data, src, g->m.train.n * sizeof(float));
}
void fx_gpu_get_grad(fx_gpu *g, float *dst) {
    enter(g);
    gpu_download(dst, g->m.grad, g->m.train.n * sizeof(float));
}
void fx_gpu_get_base(fx_gpu *g, float *dst) {
    enter(g);
    gpu_download(dst, g->m.base.data, g->m.base.n * sizeof(float));
}

/* ============================================================================================
 * public interface: the frozen weight of an adapted layer
 * ============================================================================================
 * The residual is accumulated on the host by agg.c (fx_residual_apply), exactly as the server does, and
 * the frozen weight fl(W0 + R_acc) is uploaded whole: a device copy that folded each round's residual
 * into W0 would round relative to |W0| every round and drift from the server's weight. */

int fx_gpu_set_frozen(fx_gpu *g, int k, const float *W) {
    if (k < 0 || k >= g->m.nadapted) {
        fx_seterr("gpu: frozen weight: no adapted layer %d (the model has %d)", k, g->m.nadapted);
        return -1;
    }
    enter(g);
    const fx_adapted *ad = &g->m.ad[k];
    size_t n = (size_t)ad->out * ad->in;
    gpu_upload(g->m.base.data + ad->w_off, W, n * sizeof(float));
    if (g->base16) to_bf16(g->base16 + ad->w_off, g->m.base.data + ad->w_off, n);
    CUDA_CHECK(cudaStreamSynchronize(g->st));
    return 0;
}
