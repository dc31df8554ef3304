/* tests/test_gpu.c: the CUDA backend (gpu.cu) against the CPU reference (model.c), tensor by tensor:
 * logits, loss, every gradient, AdamW fed the same gradient, the frozen weights fl(W0 + R_acc) uploaded
 * from the host, gradient accumulation over micro-batches, in fp32, tf32 and bf16, at small shapes and at
 * roberta-base's widths; with dropout on, the GPU's gradients against its own finite differences.
 * Before any of that, on the CPU alone, it checks its own tolerances: the CPU model run with every matrix
 * product's operands rounded as the GPU rounds them (emulation) must land inside the table below with
 * margin, and the finite-difference check must pass the CPU model's correct gradients. Without CUDA in
 * the build, or without a usable device, the GPU part skips with a visible line. Linked with
 * -Wl,--wrap=fx_matmul (the Makefile), which routes model.c's products through emu_matmul below. */
#include "../fedex.h"
#include "check.h"

#include <stdint.h>
#include <string.h>

/* ---------------------------------------------------------------- tolerances
 *
 * A tensor passes when its normwise error ||got - want|| / ||want|| is at most TOL[prec] and its worst
 * element |got - want| / max|want| at most ELEM x TOL[prec]. Normwise, because the error of a product is a
 * sum of many independent roundings (a random walk, not the worst case); the element bound, because the
 * largest of n such errors is a few standard deviations, not one.
 *
 * One product C = A B over K terms, fp32 accumulation. Its relative error, root mean square, for:
 *   fp32  the order of the sums only (cuBLAS's tiles against fx_matmul's K slices). Each order errs by at
 *         most K 2^-24 sum|terms| (the worst case: 1.8e-4 sum|terms| for K = 3072); with random signs
 *         and roundings, by ~ 2^-24 sqrt(K / 2) / sqrt(3) |C| = 6.8e-7 |C| for K = 768, the two sides
 *         independently: e1 = 9.6e-7. The elementwise kernels' exp, erf, sqrt and warp-tree sums differ
 *         from the CPU's (double sums) by an ulp or two, less than that.
 *   tf32  each input keeps 10 mantissa bits: error 2^-11 to nearest or up to 2^-10 truncated (cuBLAS
 *         does not say which; truncation assumed), rms 2^-10 / sqrt(3) per input, two inputs per term:
 *         e1 = 2^-10 sqrt(2/3) = 8.0e-4.
 *   bf16  8 bits (7 stored), round to nearest even: 2^-9 at most, rms 2^-9 / sqrt(3) per input:
 *         e1 = 2^-9 sqrt(2/3) = 1.6e-3.
 * Through the network: the deepest gradient (layer 0's adapters, 2 layers down) lies behind ~ 25
 * products whose errors add in quadrature (sqrt(25) = 5), and the subtractions of the softmax's and
 * LayerNorm's backward (dS = P (dP - rowsum), dh = g - mean(g) - xhat mean(g xhat)) and the small
 * adapter gradients (dA = du^T x' with du = s dy B, B ~ 0.1) cancel by a factor ~ 5: D e1 with D = 25 is
 * the expected worst tensor, and TOL = 2.5 D e1, rounded (the emulation's worst, measured, after it):
 *   fp32  2.5 x 25 x 9.6e-7 = 6e-5    emulated 3.0e-6 (a wrong term moves a tensor by >= 1e-2)
 *   tf32  2.5 x 25 x 8.0e-4 = 5e-2    emulated 1.1e-2
 *   bf16  2.5 x 25 x 1.6e-3 = 1e-1    emulated 4.1e-2 (bf16 against fp32 is that noisy; every code path
 *                                      is also held to the fp32 tolerance)
 * ELEM 4: the worst of n Gaussian errors is ~ sqrt(2 ln n) sigma, 4 to 5 sigma for 1e4 to 1e6 elements,
 * against the norm's one sigma; the scale max|want| is itself ~ 3 to 4 sigma of the tensor, so the worst
 * element over max|want| is ~ 1 to 1.5 x the normwise error; 4 is that with margin.
 * A gradient tensor whose CPU norm is below FLOOR x the largest gradient tensor's norm (one nearly zero)
 * is measured against that floor instead of its own norm: its relative error is rounding noise of the
 * larger terms that cancelled into it.
 * Emulation (emulate_tolerances below, no GPU needed) runs the CPU model with each product's operands
 * rounded to tf32 (truncated) or bf16 (nearest even), or its K slices summed in another order (fp32),
 * and requires the largest error over every tensor of every case to sit in [TOL / LOOSE, TOL / MARGIN]:
 * covered with margin, and not absurdly loose.
 *
 * AdamW: the GPU's update is fed the GPU's gradient, and so is the CPU's (fx_adamw_update on the same
 * state): every operation is one IEEE-rounded fp32 operation, in the same order on both sides (the
 * kernel spells its products and sums with __fmul_rn / __fadd_rn / __fdiv_rn and a correctly rounded
 * sqrtf; the C side is compiled -std=c11, hence -ffp-contract=off): bit-equal. ADAM_RTOL one ulp
 * (2^-23 relative) plus ADAM_ATOL one rounding of the step lr (2^-24 lr) near p = 0 allow one differently
 * rounded operation, no more: a different formula is off by far more.
 * Residual: the frozen weights are formed on the host and uploaded: bit for bit, no tolerance.
 * Accumulation: micro-batches against the whole batch, both on the GPU in fp32: the products differ in
 * shape (M = rows) and so in cuBLAS's order of sums only: TOL[fp32].
 * Finite differences (dropout on, fp32): the fourth-order central difference
 *   fd = (8 (L(+h) - L(-h)) - (L(+2h) - L(-2h))) / (12 h)
 * errs by 18 eps / (12 h) = 1.5 eps / h from a loss rounding error eps, plus h^4 |L^(5)| / 30. The loss of
 * ~ 1 carries eps = FD_EPS ~ 1e-6 (2^-24 x ~ 20 roundings on its path); h = FD_H x the tensor's largest
 * |element| (at least 0.05): atol = 3 x 1.5 eps / h per tensor; truncation and the fp32 noise of the
 * gradient itself: FD_RTOL 1e-2. The elements checked are each tensor's largest |gradient|, where the
 * difference resolves it. The CPU model's correct gradients pass the same check (fd_cpu_validation). */
enum { N_PRECS = 3 };
static const struct { const char *name; double tol; } PRECS[N_PRECS] = { /* FX_GPU_FP32, _TF32, _BF16 */
    {"fp32", 6e-5}, {"tf32", 5e-2}, {"bf16", 1e-1}};
#define ELEM 4.0
#define FLOOR 1e-3
#define MARGIN 2.0
#define LOOSE 30.0
#define LOSS_FACTOR 0.5   /* the loss moves by about its logits' error: half the tensor tolerance */
#define ADAM_LR 1e-2f
#define ADAM_WD 0.01f
#define ADAM_RTOL 0x1p-23
#define ADAM_ATOL (0x1p-24 * ADAM_LR)
#define FD_H 1e-2
#define FD_EPS 1e-6
#define FD_RTOL 1e-2
#define FD_PER_TENSOR 2

/* ---------------------------------------------------------------- emulation of the GPU's products */

enum { EMU_OFF, EMU_ORDER, EMU_TF32, EMU_BF16 };
static int emu_mode;

static float round_bf16(float x) {                /* to nearest even, 8 significant bits */
    uint32_t u;
    memcpy(&u, &x, 4);
    u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
    memcpy(&x, &u, 4);
    return x;
}
static float trunc_tf32(float x) {                /* 11 significant bits, the rest dropped */
    uint32_t u;
    memcpy(&u, &x, 4);
    u &= 0xffffe000u;
    memcpy(&x, &u, 4);
    return x;
}

/* The stored rectangle (rows, cols, ld) of X rounded into a packed copy. */
static float *rounded(const float *x, int rows, int cols, int ld, int mode) {
    float *y = malloc(sizeof(float) * (size_t)rows * cols + 1);
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            float v = x[(size_t)i * ld + j];
            y[(size_t)i * cols + j] = mode == EMU_BF16 ? round_bf16(v) : trunc_tf32(v);
        }
    return y;
}

void __real_fx_matmul(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc);
void __wrap_fx_matmul(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc);

/* The product summed in another order: three K slices, the last first. */
static void other_order(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *C, int ldc) {
    for (int s = 2; s >= 0; s--) {
        int k0 = K * s / 3, k1 = K * (s + 1) / 3;
        const float *As = ta ? A + (size_t)k0 * lda : A + k0, *Bs = tb ? B + k0 : B + (size_t)k0 * ldb;
        __real_fx_matmul(ta, tb, M, N, k1 - k0, alpha, As, lda, Bs, ldb, s == 2 ? beta : 1.0f, C, ldc);
    }
}

/* model.c's products, in the mode set between steps. */
void __wrap_fx_matmul(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc) {
    int mode = emu_mode;                          /* read once: products may run on several threads */
    if (mode == EMU_OFF || K < 3 || M <= 0 || N <= 0) {
        __real_fx_matmul(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    } else if (mode == EMU_ORDER) {
        other_order(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    } else {
        int ar = ta ? K : M, ac = ta ? M : K, br = tb ? N : K, bc = tb ? K : N;
        float *Ar = rounded(A, ar, ac, lda, mode), *Br = rounded(B, br, bc, ldb, mode);
        __real_fx_matmul(ta, tb, M, N, K, alpha, Ar, ac, Br, bc, beta, C, ldc);
        free(Ar);
        free(Br);
    }
}

/* ---------------------------------------------------------------- cases */

typedef struct {
    const char *name;
    fx_adapter_kind kind;
    unsigned targets;
    int r;
    float alpha;
    int rslora, freeze_a, freeze_d, num_labels, hidden, heads, layers, n, T;
    int residual;             /* frozen weights W0 + R_acc uploaded before the step */
    int fp32_only;            /* large: the CPU reference once */
} gcase;

enum { ALL = 63 };
static const gcase CASES[] = {
    {"lora_qv", FX_LORA, FX_T_QUERY | FX_T_VALUE, 4, 8.0f, 0, 0, 0, 3, 64, 4, 2, 3, 37, 0, 0},
    {"lora_all_reg", FX_LORA, ALL, 4, 8.0f, 1, 0, 0, 1, 80, 2, 2, 3, 37, 0, 0},   /* head size 40 */
    {"ffa", FX_LORA, FX_T_QUERY | FX_T_VALUE, 4, 16.0f, 0, 1, 0, 3, 64, 4, 2, 3, 37, 0, 0},
    {"vera_all", FX_VERA, ALL, 8, 0.0f, 0, 0, 0, 3, 64, 4, 2, 3, 37, 0, 0},
    {"vera_ffa", FX_VERA, ALL, 8, 0.0f, 0, 0, 1, 2, 80, 2, 2, 3, 37, 0, 0},
    /* SORF-VeRA: widths 48 = 32 + 16 and 192 = 128 + 64, the mixers' FWHT, Gamma and Givens ops */
    {"sorf_qvi", FX_SORF, FX_T_QUERY | FX_T_VALUE | FX_T_INTER, 6, 0.0f, 0, 0, 0, 3, 48, 4, 2, 3, 37, 0, 0},
    {"residual", FX_LORA, FX_T_QUERY | FX_T_INTER, 2, 4.0f, 0, 0, 0, 3, 64, 4, 2, 3, 37, 1, 0},
    {"head_only", FX_LORA, 0, 4, 8.0f, 0, 0, 0, 3, 64, 4, 2, 3, 37, 0, 0},
    /* rows of 300 tokens: ten keys per lane in the softmax kernels */
    {"long_rows", FX_LORA, ALL, 4, 8.0f, 0, 0, 0, 2, 64, 4, 1, 2, 300, 0, 0},
    /* roberta-base's widths: hidden 768, 12 heads of 64, intermediate 3072, rows of 128; the paper's LoRA */
    {"roberta_width", FX_LORA, FX_T_QUERY | FX_T_VALUE, 4, 8.0f, 0, 0, 0, 2, 768, 12, 1, 2, 128, 0, 0},
    /* 33 rows of 512 tokens, 4 heads: 33 Mi scores per (n, nh, T, T) buffer, the softmax kernels' longest rows */
    {"chunked", FX_LORA, FX_T_QUERY | FX_T_KEY | FX_T_VALUE, 4, 8.0f, 0, 0, 0, 2, 32, 4, 1, 33, 512, 0, 1},
};
enum { N_CASES = sizeof CASES / sizeof CASES[0] };

/* Finite differences need a loss of size ~1 (cross-entropy; MSE against targets of a few units would
 * carry ten times the rounding noise). Every target adapted, so every dropout site is crossed. */
static const gcase FD_CASES[] = {
    {"lora_all", FX_LORA, ALL, 4, 8.0f, 0, 0, 0, 3, 64, 4, 2, 3, 37, 0, 0},
    {"vera_all", FX_VERA, ALL, 8, 0.0f, 0, 0, 0, 3, 80, 2, 2, 3, 37, 0, 0},
};

static fx_config case_config(const gcase *k, float drop) {
    fx_config c;
    memset(&c, 0, sizeof c);
    c.vocab_size = 50; c.hidden = k->hidden; c.layers = k->layers; c.heads = k->heads;
    c.intermediate = 4 * k->hidden; c.max_positions = k->T + 2; c.type_vocab_size = 1; c.pad_id = 1;
    c.num_labels = k->num_labels; c.layer_norm_eps = 1e-5f; c.initializer_range = 0.02f;
    c.hidden_dropout = c.attention_dropout = c.classifier_dropout = drop;
    return c;
}

static int case_model(fx_model *m, const gcase *k, float drop, uint64_t seed);

/* Realistic scales. Dense N(0, 1/in) (each output ~ N(0, 1): attention scores q.k / sqrt(hd) ~ 1, no
 * saturated softmax), embeddings N(0, 0.25), LayerNorm weight 1 + N(0, 0.01), vectors N(0, 0.01). LoRA
 * A as the runtime initialises it (kaiming-uniform, bound 1/sqrt(in)), B N(0, 0.01): the adapter term
 * s (x A^T) B^T ~ 0.2 of the base term, as after some training (B starts at 0). VeRA lambdas
 * 0.5 + N(0, 0.09): an adapter term ~ 0.1 of the base; SORF-VeRA's s, theta and b alike. */
static void randomize(fx_model *m, uint64_t seed) {
    fx_model_init_adapters(m, seed ^ 0x5bd1e995u);
    fx_rng g;
    fx_rng_seed(&g, seed);
    for (int which = 0; which < 2; which++) {
        fx_params *p = which ? &m->train : &m->base;
        for (int i = 0; i < p->nt; i++) {
            const fx_tensor *t = &p->t[i];
            int adapter = which && t->off < m->head_off;
            double sd = t->ndim == 2 ? (strstr(t->name, "embeddings") ? 0.5 : 1.0 / sqrt(t->shape[1])) : 0.1;
            double mean = strstr(t->name, "LayerNorm.weight") ? 1.0 : 0.0;
            int lora_a = adapter && m->a.kind == FX_LORA && strstr(t->name, "lora_A");
            if (lora_a) continue;                 /* the runtime's initialisation */
            if (adapter) { sd = m->a.kind != FX_LORA ? 0.3 : 0.1; mean = m->a.kind != FX_LORA ? 0.5 : 0.0; }
            for (size_t j = 0; j < t->n; j++) p->data[t->off + j] = (float)(mean + sd * fx_rng_normal(&g));
        }
    }
}

static int case_model(fx_model *m, const gcase *k, float drop, uint64_t seed) {
    fx_config c = case_config(k, drop);
    fx_adapter_cfg a;
    memset(&a, 0, sizeof a);
    a.kind = k->kind; a.targets = k->targets; a.r = k->r; a.alpha = k->alpha; a.rslora = k->rslora;
    a.freeze_a = k->freeze_a; a.freeze_d = k->freeze_d; a.d_initial = 0.1f; a.seed = 11; a.dropout = drop;
    if (fx_model_create(m, &c, &a, NULL) != 0) { CHECK(0, "%s: fx_model_create: %s", k->name, fx_err()); return -1; }
    randomize(m, seed);
    return 0;
}

/* n rows of T slots: row 0 full, the others shorter (padded on the right with pad_id 1), ids from 3. */
typedef struct { fx_batch b; int32_t *ids; uint8_t *mask; float *labels; } tbatch;
static void make_batch(tbatch *t, const gcase *k) {
    int n = k->n, T = k->T;
    t->ids = malloc(sizeof(int32_t) * (size_t)n * T);
    t->mask = malloc((size_t)n * T);
    t->labels = malloc(sizeof(float) * (size_t)n);
    fx_rng g;
    fx_rng_seed(&g, 7);
    for (int i = 0; i < n; i++) {
        int len = i == 0 ? T : 3 + (T - 3) * (n - i) / (n + 1);
        for (int j = 0; j < T; j++) {
            int32_t id = j == 0 ? 0 : j == len - 1 ? 2 : j < len ? 3 + (int32_t)(fx_rng_u64(&g) % 47) : 1;
            t->ids[(size_t)i * T + j] = id;
            t->mask[(size_t)i * T + j] = j < len;
        }
        /* regression targets above every prediction (~ N(0, 1)): the bias gradient, the mean residual,
         * then does not cancel into rounding noise */
        t->labels[i] = k->num_labels == 1 ? 2.5f + 0.5f * (float)(i % 4) : (float)(i % k->num_labels);
    }
    memset(&t->b, 0, sizeof t->b);
    t->b.n = n; t->b.T = T; t->b.ids = t->ids; t->b.mask = t->mask; t->b.labels = t->labels;
}
static void free_batch(tbatch *t) { free(t->ids); free(t->mask); free(t->labels); }

/* ---------------------------------------------------------------- the comparison */

typedef struct { double norm, elem; } terr;      /* normwise, and worst element over max|want| */

static terr tensor_err(const float *got, const float *want, size_t n, double ref_norm) {
    double d2 = 0, w2 = 0, dmax = 0, wmax = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)got[i] - want[i]);
        if (!(d == d)) d = INFINITY;
        d2 += d * d;
        w2 += (double)want[i] * want[i];
        if (d > dmax) dmax = d;
        if (fabs(want[i]) > wmax) wmax = fabs(want[i]);
    }
    double nw = sqrt(w2) > ref_norm ? sqrt(w2) : ref_norm;
    double sc = wmax > ref_norm / sqrt((double)(n ? n : 1)) ? wmax : ref_norm / sqrt((double)(n ? n : 1));
    terr e = {nw > 0 ? sqrt(d2) / nw : sqrt(d2), sc > 0 ? dmax / sc : dmax};
    if (!(e.norm == e.norm)) e.norm = INFINITY;
    return e;
}

static double l2(const float *x, size_t n) {
    double s = 0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return sqrt(s);
}

static int check_err(const char *what, terr e, double tol) {
    int ok = e.norm <= tol && e.elem <= ELEM * tol;
    CHECK(ok, "%s: normwise error %.3g (tolerance %.3g), worst element %.3g of the scale (tolerance %.3g)",
          what, e.norm, tol, e.elem, ELEM * tol);
    return ok;
}

/* The worst errors of one step against a reference: logits, loss, every trainable tensor's gradient.
 * FLOOR: a gradient tensor is measured against max(its norm, FLOOR x the largest gradient tensor norm). */
typedef struct { terr logits, loss, grad; char worst[128]; } step_err;

static void worst_of(terr *acc, terr e) {
    if (e.norm > acc->norm) acc->norm = e.norm;
    if (e.elem > acc->elem) acc->elem = e.elem;
}

static step_err compare_step(const fx_model *m, const float *lg, const float *lc, size_t nl, float loss_g,
                             float loss_c, const float *gg, const float *gc, const char *name, double tol,
                             int check) {
    step_err s;
    memset(&s, 0, sizeof s);
    char what[256];
    s.logits = tensor_err(lg, lc, nl, 0);
    s.loss = tensor_err(&loss_g, &loss_c, 1, 0);
    if (check) {
        snprintf(what, sizeof what, "%s logits", name);
        check_err(what, s.logits, tol);
        snprintf(what, sizeof what, "%s loss", name);
        check_err(what, s.loss, tol * LOSS_FACTOR);
    }
    double big = 0;
    for (int i = 0; i < m->train.nt; i++) {
        double v = l2(gc + m->train.t[i].off, m->train.t[i].n);
        if (v > big) big = v;
    }
    for (int i = 0; i < m->train.nt; i++) {
        const fx_tensor *t = &m->train.t[i];
        snprintf(what, sizeof what, "%s grad %s", name, t->name);
        if (t->frozen) {
            if (check) {
                double mx = 0;
                for (size_t j = 0; j < t->n; j++) if (!(fabs(gg[t->off + j]) <= mx)) mx = fabs(gg[t->off + j]);
                CHECK(mx == 0, "%s: frozen, expected exact zeros (max %g)", what, mx);
            }
            continue;
        }
        terr e = tensor_err(gg + t->off, gc + t->off, t->n, FLOOR * big);
        if (e.norm > s.grad.norm) snprintf(s.worst, sizeof s.worst, "%s", t->name);
        worst_of(&s.grad, e);
        if (check) check_err(what, e, tol);
    }
    return s;
}

/* ---------------------------------------------------------------- emulation: the tolerances checked */

/* One training step of the CPU model, dropout off, with the products in MODE; logits, loss, gradient. */
static float cpu_step(fx_model *m, const fx_batch *b, int mode, float *logits, float *grad) {
    emu_mode = mode;
    float loss = fx_model_step(m, b, 1, logits);
    emu_mode = EMU_OFF;
    memcpy(grad, m->grad, sizeof(float) * m->train.n);
    return loss;
}

/* ---------------------------------------------------------------- the causal LMs' fixtures
 * A case of tests/make_gpt2_fixtures.py or tests/make_llama_fixtures.py (FIX "gpt2_a", "llama_d", ...):
 * the checkpoint, the adapters and settings of its metadata, its batch. Llama's cases run RMSNorm, RoPE
 * with rope_scaling (llama_d: llama3, every bias), grouped-query attention and the sliding window
 * (llama_f: 6 over 12 tokens), SwiGLU and an untied head. */
typedef struct { fx_model m; fx_st_file cf; fx_batch b; } lmcase;
static const char *const LM_CASES[] = {"gpt2_a", "llama_d", "llama_f"};
enum { N_LM = sizeof LM_CASES / sizeof LM_CASES[0] };

static double meta_of(const fx_st_file *f, const char *k) { const char *v = fx_st_meta(f, k); return v ? atof(v) : 0; }
static int lm_open(lmcase *L, const char *fix) {
    char path[256];
    fx_config c;
    fx_adapter_cfg a = {.kind = FX_LORA, .seed = 1};
    memset(L, 0, sizeof *L);
    snprintf(path, sizeof path, "tests/fixtures/%s_case.safetensors", fix);
    if (fx_st_open(path, &L->cf) != 0) { CHECK(0, "%s: %s", fix, fx_err()); return -1; }
    snprintf(path, sizeof path, "tests/fixtures/%s/config.json", fix);
    if (fx_config_load(path, &c) != 0 || fx_targets_parse(fx_st_meta(&L->cf, "targets"), &a.targets) != 0) {
        CHECK(0, "%s: %s", fix, fx_err());
        fx_st_close(&L->cf);
        return -1;
    }
    c.label_smoothing = (float)meta_of(&L->cf, "label_smoothing");
    c.max_grad_norm = (float)meta_of(&L->cf, "max_grad_norm");
    a.r = (int)meta_of(&L->cf, "r");
    a.alpha = (float)meta_of(&L->cf, "alpha");
    a.rslora = (int)meta_of(&L->cf, "rslora");
    a.freeze_a = (int)meta_of(&L->cf, "freeze_a");
    snprintf(path, sizeof path, "tests/fixtures/%s", fix);
    if (fx_model_create(&L->m, &c, &a, NULL) != 0 || fx_model_load(&L->m, path) < 0) {
        CHECK(0, "%s model: %s", fix, fx_err());
        fx_st_close(&L->cf);
        return -1;
    }
    for (int i = 0; i < L->m.train.nt; i++) {
        const fx_tensor *t = &L->m.train.t[i];
        const fx_st_tensor *st = fx_st_find(&L->cf, t->name);
        float *ow = NULL;
        const float *p = st && fx_st_numel(st) == t->n ? fx_st_f32(&L->cf, st, &ow) : NULL;
        CHECK(p != NULL, "%s fixture: %s", fix, t->name);
        if (p) memcpy(L->m.train.data + t->off, p, t->n * sizeof(float));
        free(ow);
    }
    const fx_st_tensor *ti = fx_st_find(&L->cf, "ids");
    L->b.n = (int)ti->shape[0];
    L->b.T = (int)ti->shape[1];
    L->b.ids = (int32_t *)(L->cf.data + ti->begin);
    L->b.mask = (uint8_t *)(L->cf.data + fx_st_find(&L->cf, "mask")->begin);
    L->b.targets = (int32_t *)(L->cf.data + fx_st_find(&L->cf, "targets")->begin);
    return 0;
}
static void lm_close(lmcase *L) {
    fx_model_free(&L->m);
    fx_st_close(&L->cf);
}

/* The LM cases' CPU step with the products emulated in fp32's order and tf32, against the plain CPU step:
 * their worst errors join the encoder cases' (*WORST, WHERE) that the tolerances must cover with margin.
 * The Llama block adds no deeper chain of products than the encoder's (2 layers, 7 products each way),
 * and its new elementwise ops (RMSNorm's sums, RoPE's rotation in double angles, SwiGLU) differ on the
 * GPU by an ulp or two, below the products' error: the same D holds. Not bf16: on these fixtures' tiny
 * widths (16 to 18) the emulated bf16 gradients err by up to 1.2e-1 (gpt2_a, llama_f: few terms per
 * adapter gradient, so less averaging), past bf16's tolerance; bf16 is held on the encoder cases. */
static void emulate_lm(const int *mode_of, terr *worst, char (*where)[256]) {
    for (int i = 0; i < N_LM; i++) {
        lmcase L;
        if (lm_open(&L, LM_CASES[i]) != 0) continue;
        size_t nl = (size_t)L.b.n * L.b.T * L.m.c.vocab_size, tn = L.m.train.n;
        float *lc = malloc(sizeof(float) * nl), *le = malloc(sizeof(float) * nl);
        float *gc = malloc(sizeof(float) * tn), *ge = malloc(sizeof(float) * tn);
        float loss_c = cpu_step(&L.m, &L.b, EMU_OFF, lc, gc);
        for (int p = 0; p <= 1; p++) {            /* PRECS[0], [1]: fp32, tf32 */
            float loss_e = cpu_step(&L.m, &L.b, mode_of[p], le, ge);
            step_err s = compare_step(&L.m, le, lc, nl, loss_e, loss_c, ge, gc, LM_CASES[i], PRECS[p].tol, 0);
            printf("emulated %-4s %-14s normwise error: logits %.2e, loss %.2e, worst gradient %.2e (%s); "
                   "worst element %.2e\n", PRECS[p].name, LM_CASES[i], s.logits.norm, s.loss.norm, s.grad.norm,
                   s.worst, s.grad.elem);
            terr all = s.grad;
            worst_of(&all, s.logits);
            if (all.norm > worst[p].norm) snprintf(where[p], sizeof where[p], "%s %s", LM_CASES[i], s.worst);
            worst_of(&worst[p], all);
        }
        free(lc); free(le); free(gc); free(ge);
        lm_close(&L);
    }
}

static void emulate_tolerances(void) {
    static const int mode_of[N_PRECS] = {EMU_ORDER, EMU_TF32, EMU_BF16};
    terr worst[N_PRECS];
    char where[N_PRECS][256];
    memset(worst, 0, sizeof worst);
    memset(where, 0, sizeof where);
    double t0 = fx_now();
    for (int i = 0; i < N_CASES; i++) {
        const gcase *k = &CASES[i];
        if (k->fp32_only) continue;               /* its shapes are covered by the others; too slow here */
        fx_model m;
        if (case_model(&m, k, 0.0f, 1234) != 0) continue;
        tbatch tb;
        make_batch(&tb, k);
        size_t nl = (size_t)k->n * m.c.num_labels, tn = m.train.n;
        float *lc = malloc(sizeof(float) * nl), *le = malloc(sizeof(float) * nl);
        float *gc = malloc(sizeof(float) * tn), *ge = malloc(sizeof(float) * tn);
        float loss_c = cpu_step(&m, &tb.b, EMU_OFF, lc, gc);
        for (int p = 0; p < N_PRECS; p++) {
            float loss_e = cpu_step(&m, &tb.b, mode_of[p], le, ge);
            step_err s = compare_step(&m, le, lc, nl, loss_e, loss_c, ge, gc, k->name, PRECS[p].tol, 0);
            printf("emulated %-4s %-14s normwise error: logits %.2e, loss %.2e, worst gradient %.2e (%s); "
                   "worst element %.2e\n", PRECS[p].name, k->name, s.logits.norm,
                   s.loss.norm, s.grad.norm, s.worst, s.grad.elem);
            terr all = s.grad;
            worst_of(&all, s.logits);
            if (all.norm > worst[p].norm) snprintf(where[p], sizeof where[p], "%s %s", k->name, s.worst);
            worst_of(&worst[p], all);
        }
        free(lc); free(le); free(gc); free(ge);
        free_batch(&tb);
        fx_model_free(&m);
    }
    emulate_lm(mode_of, worst, where);
    for (int p = 0; p < N_PRECS; p++) {
        double tol = PRECS[p].tol;
        const char *pn = PRECS[p].name;
        printf("emulated %s: worst normwise error %.2e (%s), worst element %.2e; tolerance %.1e: margin %.1f\n",
               pn, worst[p].norm, where[p], worst[p].elem, tol, tol / worst[p].norm);
        CHECK(worst[p].norm <= tol / MARGIN && worst[p].elem <= ELEM * tol / MARGIN,
              "emulated %s: worst error %.3g (element %.3g) leaves less than a margin of %.0f under %.3g", pn,
              worst[p].norm, worst[p].elem, MARGIN, tol);
        CHECK(worst[p].norm >= tol / LOOSE, "emulated %s: worst error %.3g: tolerance %.3g is over %.0f x looser",
              pn, worst[p].norm, tol, LOOSE);
    }
    printf("emulation: %.1f s\n", fx_now() - t0);
}

/* ---------------------------------------------------------------- finite differences, shared */

/* Loss of one training step at the current parameters with the dropout masks of SEED. */
typedef float (*loss_fn)(void *ctx, const float *p, uint64_t seed);

/* The FD_PER_TENSOR largest |grad| elements of every trainable tensor against the fourth-order central
 * difference of LOSS; GRAD was taken with the masks of SEED. SCALE multiplies the analytic gradient
 * (1; the self-test passes a wrong one). Returns the number of elements off. */
static int fd_check(const fx_model *m, const float *grad, float *p, loss_fn loss, void *ctx, uint64_t seed,
                    const char *name, double scale, int report) {
    int bad = 0, checked = 0;
    double worst = 0, gsum = 0;                   /* the worst |g - fd| / allowed; mean |g| checked */
    for (int i = 0; i < m->train.nt; i++) {
        const fx_tensor *t = &m->train.t[i];
        if (t->frozen) continue;
        double pmax = 0;
        for (size_t j = 0; j < t->n; j++) if (fabs(p[t->off + j]) > pmax) pmax = fabs(p[t->off + j]);
        double h = FD_H * (pmax > 0.05 ? pmax : 0.05);
        size_t pick[FD_PER_TENSOR];
        for (int s = 0; s < FD_PER_TENSOR; s++) {
            size_t best = t->off;
            double bv = -1;
            for (size_t j = t->off; j < t->off + t->n; j++) {
                int taken = 0;
                for (int q = 0; q < s; q++) taken |= pick[q] == j;
                if (!taken && fabs(grad[j]) > bv) { bv = fabs(grad[j]); best = j; }
            }
            pick[s] = best;
        }
        for (int s = 0; s < FD_PER_TENSOR && s < (int)t->n; s++) {
            size_t j = pick[s];
            float keep = p[j];
            double L[4];
            const double off[4] = {h, -h, 2 * h, -2 * h};
            for (int q = 0; q < 4; q++) {
                p[j] = (float)(keep + off[q]);
                L[q] = loss(ctx, p, seed);
            }
            p[j] = keep;
            double fd = (8 * (L[0] - L[1]) - (L[2] - L[3])) / (12 * h);
            double g = scale * grad[j], atol = 3 * 1.5 * FD_EPS / h;
            double ratio = fabs(g - fd) / (atol + FD_RTOL * fabs(fd));
            int ok = ratio <= 1;
            bad += !ok;
            checked++;
            gsum += fabs(g);
            if (!(ratio <= worst)) worst = ratio;
            if (report)
                CHECK(ok, "%s: d loss / d %s[%zu]: gradient %.7g, finite difference %.7g (atol %.2g, rtol %.0e)",
                      name, t->name, j - t->off, g, fd, atol, FD_RTOL);
        }
    }
    if (report)
        printf("%s: %d elements, mean |gradient| %.2e, worst |g - fd| at %.2f of its tolerance\n", name, checked,
               checked ? gsum / checked : 0.0, worst);
    return bad;
}

/* The CPU model: dropout's masks come from m->drop, reseeded. */
typedef struct { fx_model *m; const fx_batch *b; } cpu_ctx;
static float cpu_loss(void *ctx, const float *p, uint64_t seed) {
    cpu_ctx *c = ctx;
    memcpy(c->m->train.data, p, sizeof(float) * c->m->train.n);
    fx_rng_seed(&c->m->drop, seed);
    return fx_model_step(c->m, c->b, 1, NULL);
}

/* The procedure's own check: the CPU model's gradients (tested in test_model_core) must pass it at the
 * scales used here, and the same gradients 5% too large must not. */
static void fd_cpu_validation(void) {
    for (size_t i = 0; i < sizeof FD_CASES / sizeof FD_CASES[0]; i++) {
        const gcase *k = &FD_CASES[i];
        fx_model m;
        if (case_model(&m, k, 0.1f, 77) != 0) continue;
        tbatch tb;
        make_batch(&tb, k);
        size_t tn = m.train.n;
        float *p = malloc(sizeof(float) * tn), *grad = malloc(sizeof(float) * tn);
        memcpy(p, m.train.data, sizeof(float) * tn);
        cpu_ctx c = {&m, &tb.b};
        const uint64_t seed = 2024;
        cpu_loss(&c, p, seed);
        memcpy(grad, m.grad, sizeof(float) * tn);
        char name[96];
        snprintf(name, sizeof name, "%s dropout (CPU, the check's own validation)", k->name);
        fd_check(&m, grad, p, cpu_loss, &c, seed, name, 1.0, 1);
        int wrong = fd_check(&m, grad, p, cpu_loss, &c, seed, name, 1.05, 0);
        CHECK(wrong > 0, "%s: a gradient 5%% too large passed every finite difference", name);
        free(p); free(grad);
        free_batch(&tb);
        fx_model_free(&m);
    }
}

/* ---------------------------------------------------------------- the device twin, on the CPU ops */

/* gpu.cu runs model.c on a twin: fx_model_create's tables over the host model's base pointer, then every
 * data pointer replaced by the backend's memory (here fx_cpu_ops's, with copies of the host's data), and
 * freed by releasing those and calling fx_model_free with them NULL. With the same ops the twin must give
 * the host model's loss, gradient and AdamW update bit for bit, dropout on (the same m->drop stream). */
static float *twin_copy(const fx_ops *o, const float *src, size_t n) {
    float *p = o->alloc(n * sizeof *p);
    o->upload(p, src, n * sizeof *p);
    return p;
}
static void check_twin_on_cpu(const gcase *k) {
    fx_model m, t;
    if (case_model(&m, k, 0.1f, 21) != 0) return;
    if (fx_model_create(&t, &m.c, &m.a, m.base.data) != 0) { CHECK(0, "twin: %s", fx_err()); fx_model_free(&m); return; }
    const fx_ops *o = &fx_cpu_ops;
    size_t tn = t.train.n, na = (size_t)t.a.r * t.vera_in, nb = (size_t)t.vera_out * t.a.r;
    float **host[] = {&t.train.data, &t.grad, &t.adam_m, &t.adam_v, &t.vera_A, &t.vera_B};
    for (size_t i = 0; i < sizeof host / sizeof host[0]; i++) free(*host[i]);
    t.base.data = twin_copy(o, m.base.data, m.base.n);
    t.train.data = twin_copy(o, m.train.data, tn);
    t.grad = twin_copy(o, m.grad, tn);
    t.adam_m = twin_copy(o, m.adam_m, tn);
    t.adam_v = twin_copy(o, m.adam_v, tn);
    t.vera_A = m.vera_A ? twin_copy(o, m.vera_A, na) : NULL;
    t.vera_B = m.vera_B ? twin_copy(o, m.vera_B, nb) : NULL;
    tbatch tb;
    make_batch(&tb, k);
    for (int s = 0; s < 2; s++) {
        float lm = fx_model_step(&m, &tb.b, 1, NULL), lt = fx_model_step(&t, &tb.b, 1, NULL);
        CHECK(lm == lt && isfinite(lm), "%s twin, step %d: loss %.9g, host model %.9g", k->name, s, lt, lm);
        CHECK(memcmp(m.grad, t.grad, tn * sizeof(float)) == 0, "%s twin, step %d: gradients differ", k->name, s);
        fx_adamw_update(&m, 1e-3f, 0.01f);
        fx_adamw_update(&t, 1e-3f, 0.01f);
        CHECK(memcmp(m.train.data, t.train.data, tn * sizeof(float)) == 0, "%s twin, step %d: AdamW differs", k->name, s);
    }
    free_batch(&tb);
    float **dev[] = {&t.base.data, &t.train.data, &t.grad, &t.adam_m, &t.adam_v, &t.vera_A, &t.vera_B};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) { o->release(*dev[i]); *dev[i] = NULL; }
    fx_model_free(&t);
    fx_model_free(&m);
}
static void twin_on_cpu(void) {
    check_twin_on_cpu(&CASES[0]);                 /* LoRA */
    check_twin_on_cpu(&CASES[3]);                 /* VeRA */
    check_twin_on_cpu(&CASES[5]);                 /* SORF-VeRA */
}

#ifndef FEDEX_CUDA

int main(void) {
    twin_on_cpu();
    emulate_tolerances();
    fd_cpu_validation();
    printf("skipped: GPU tests (built without CUDA)\n");
    return check_done();
}

#else

/* ---------------------------------------------------------------- GPU against CPU, one case */

_Static_assert(FX_GPU_FP32 == 0 && FX_GPU_TF32 == 1 && FX_GPU_BF16 == 2, "PRECS is indexed by precision");

/* ---------------------------------------------------------------- the GPU ops table, without a device */

/* Every entry of fx_gpu_ops is set but dropout_mask_rows, optional (without it a classifier's last layer
 * runs on every token): RoBERTa's, GPT-2's and Llama's blocks call them all. The assertion keeps the list
 * below complete (a new entry must be added here). */
_Static_assert(sizeof(fx_ops) == 52 * sizeof(void *), "fx_ops changed: update check_gpu_ops");
static void check_gpu_ops(void) {
    const fx_ops *o = &fx_gpu_ops;
    CHECK(o->name && strcmp(o->name, "cuda") == 0, "fx_gpu_ops.name is %s", o->name ? o->name : "NULL");
#define OP(f) CHECK(o->f != NULL, "fx_gpu_ops." #f " is NULL")
    OP(alloc); OP(release); OP(upload); OP(download); OP(zero); OP(copy); OP(axpy); OP(copy_rows);
    OP(matmul); OP(column_dot); OP(scale_cols); OP(scale_cols_add); OP(dropout_mask); OP(dropout_apply);
    OP(dropout_accumulate); OP(embeddings_forward); OP(linear_forward); OP(linear_backward);
    OP(residual_layernorm_forward); OP(layernorm_backward); OP(gelu_forward); OP(gelu_backward);
    OP(tanh_forward); OP(tanh_backward); OP(attention_keep); OP(attention_forward); OP(attention_backward);
    OP(loss); OP(adamw);
    OP(layernorm_forward); OP(gelu_tanh_forward); OP(gelu_tanh_backward); OP(lm_loss); OP(sumsq); OP(scale);
    OP(attention_decode);
    OP(fwht); OP(permute_cols); OP(gamma_apply); OP(givens_build); OP(givens_backward);
    OP(rmsnorm_forward); OP(rmsnorm_backward); OP(rope); OP(swiglu_forward); OP(swiglu_backward); OP(add_rows);
#undef OP
    /* the GPU takes fp32 host models only (its bf16 is its own --precision): no bf16-base ops */
    CHECK(!o->linear_forward_bf16 && !o->linear_backward_bf16 && !o->embeddings_forward_bf16,
          "fx_gpu_ops has bf16-base ops, yet fx_gpu_create refuses a bf16 host model");
}

static void poison(float *x, size_t n) { for (size_t i = 0; i < n; i++) x[i] = NAN; }

/* A case's model (dropout DROP, weights from SEED), its copy on the GPU in PREC, and its batch; 0, with a
 * failed check, when the model or its GPU copy cannot be made. */
typedef struct { fx_model m; fx_gpu *g; tbatch tb; } fixture;
static int fixture_open(fixture *f, const gcase *k, float drop, uint64_t seed, int prec) {
    if (case_model(&f->m, k, drop, seed) != 0) return 0;
    f->g = fx_gpu_create(&f->m, 0, prec);
    if (!f->g) {
        CHECK(0, "%s: fx_gpu_create: %s", k->name, fx_err());
        fx_model_free(&f->m);
        return 0;
    }
    make_batch(&f->tb, k);
    return 1;
}
static void fixture_close(fixture *f) {
    free_batch(&f->tb);
    fx_gpu_free(f->g);
    fx_model_free(&f->m);
}

/* FedEx's frozen weights fl(W0 + R_acc), formed on the host by agg.c and uploaded whole: the device then
 * holds the host's weights bit for bit (the bf16 twin follows them), and the steps compared below run
 * on them. */
static void check_residual(fx_model *m, fx_gpu *g, const gcase *k, const char *pn) {
    fx_residual res;
    fx_residual_init(&res, m);
    fx_rng r;
    fx_rng_seed(&r, 99);
    for (size_t i = 0; i < res.off[res.n]; i++) res.acc[i] = (float)(0.02 * fx_rng_normal(&r));
    fx_residual_set_frozen(&res, m);
    for (int j = 0; j < m->nadapted; j++)
        CHECK(fx_gpu_set_frozen(g, j, m->base.data + m->ad[j].w_off) == 0, "%s: set_frozen: %s", k->name, fx_err());
    CHECK(fx_gpu_set_frozen(g, m->nadapted, m->base.data) == -1, "%s: adapter %d does not exist", k->name, m->nadapted);
    float *base = malloc(sizeof(float) * m->base.n);
    poison(base, m->base.n);
    fx_gpu_get_base(g, base);
    CHECK(!memcmp(base, m->base.data, sizeof(float) * m->base.n), "%s/%s: the device's frozen weights are the "
          "host's, bit for bit", k->name, pn);
    free(base);
    fx_residual_free(&res);
}

static void compare_case(const gcase *k, int prec, double tol) {
    fixture f;
    if (!fixture_open(&f, k, 0.0f, 1234, prec)) return;
    char name[96], what[256];
    const char *pn = fx_gpu_precision_name(prec);
    snprintf(name, sizeof name, "%s/%s", k->name, pn);
    size_t tn = f.m.train.n;
    CHECK(fx_gpu_train_n(f.g) == tn, "%s: train_n %zu, model %zu", name, fx_gpu_train_n(f.g), tn);
    if (k->residual) check_residual(&f.m, f.g, k, pn);

    size_t nl = (size_t)k->n * f.m.c.num_labels;
    float *lc = malloc(sizeof(float) * nl), *lg = malloc(sizeof(float) * nl);
    float *gg = malloc(sizeof(float) * tn), *pg = malloc(sizeof(float) * tn), *p0 = malloc(sizeof(float) * tn);
    memcpy(p0, f.m.train.data, sizeof(float) * tn);
    poison(lc, nl);
    poison(lg, nl);
    poison(gg, tn);
    float loss_c = fx_model_step(&f.m, &f.tb.b, 1, lc);
    float loss_g = fx_gpu_step(f.g, &f.tb.b, 1, lg);
    fx_gpu_get_grad(f.g, gg);
    step_err s = compare_step(&f.m, lg, lc, nl, loss_g, loss_c, gg, f.m.grad, name, tol, 1);
    printf("%-22s normwise error: logits %.2e, loss %.2e, worst gradient %.2e (%s); tolerance %.0e\n", name,
           s.logits.norm, s.loss.norm, s.grad.norm, s.worst, tol);

    /* AdamW on both sides from the same state, fed the GPU's gradient: bit-equal up to one rounding. */
    memcpy(f.m.grad, gg, sizeof(float) * tn);
    fx_adamw_update(&f.m, ADAM_LR, ADAM_WD);
    fx_gpu_adamw(f.g, ADAM_LR, ADAM_WD);
    poison(pg, tn);
    fx_gpu_get_train(f.g, pg);
    size_t equal = 0;
    for (size_t j = 0; j < tn; j++) equal += pg[j] == f.m.train.data[j];
    snprintf(what, sizeof what, "%s AdamW fed the GPU's gradient (%zu of %zu bit-equal)", name, equal, tn);
    CHECK_CLOSE(what, pg, f.m.train.data, tn, ADAM_ATOL, ADAM_RTOL);
    for (int i = 0; i < f.m.train.nt; i++)
        if (f.m.train.t[i].frozen)
            CHECK(memcmp(pg + f.m.train.t[i].off, p0 + f.m.train.t[i].off, sizeof(float) * f.m.train.t[i].n) == 0,
                  "%s: frozen %s moved under AdamW", name, f.m.train.t[i].name);

    /* The updated state, in evaluation: the CPU's parameters on both sides, so only the step differs. */
    fx_gpu_set_train(f.g, f.m.train.data);
    poison(lc, nl);
    poison(lg, nl);
    loss_c = fx_model_step(&f.m, &f.tb.b, 0, lc);
    loss_g = fx_gpu_step(f.g, &f.tb.b, 0, lg);
    snprintf(what, sizeof what, "%s eval logits after AdamW", name);
    check_err(what, tensor_err(lg, lc, nl, 0), tol);
    snprintf(what, sizeof what, "%s eval loss", name);
    check_err(what, tensor_err(&loss_g, &loss_c, 1, 0), tol * LOSS_FACTOR);

    /* Bad input gets NAN and a message, as on the CPU. */
    f.tb.ids[5] = f.m.c.vocab_size;
    CHECK(isnan(fx_gpu_step(f.g, &f.tb.b, 1, NULL)) && strstr(fx_err(), "outside the vocabulary"),
          "%s: token id out of range: %s", name, fx_err());
    f.tb.ids[5] = 3;
    float keep = f.tb.labels[0];
    f.tb.labels[0] = f.m.c.num_labels > 1 ? (float)f.m.c.num_labels : NAN;
    CHECK(isnan(fx_gpu_step(f.g, &f.tb.b, 1, NULL)) && strstr(fx_err(), "label"), "%s: bad label: %s", name, fx_err());
    f.tb.labels[0] = keep;

    free(lc); free(lg); free(gg); free(pg); free(p0);
    fixture_close(&f);
}

/* ---------------------------------------------------------------- gradient accumulation
 * Micro-batches of MB rows of one batch (the same T: the rows as they are), weighted un / bn and
 * accumulated, against the whole batch in one step: the mean loss and its gradient are the same sums. */

static void check_accumulation(const gcase *k, int mb) {
    fixture f;
    if (!fixture_open(&f, k, 0.0f, 4321, FX_GPU_FP32)) return;
    size_t tn = f.m.train.n;
    int bn = k->n, T = k->T;
    float *full = malloc(sizeof(float) * tn), *acc = malloc(sizeof(float) * tn), *one = malloc(sizeof(float) * tn);
    char name[96], what[256];
    snprintf(name, sizeof name, "%s accumulation of %d-row micro-batches of %d", k->name, mb, bn);

    float loss_full = fx_gpu_step(f.g, &f.tb.b, 1, NULL);
    poison(full, tn);
    fx_gpu_get_grad(f.g, full);
    /* weight 1 without accumulation is the plain training step, bit for bit */
    CHECK(fx_gpu_step_accum(f.g, &f.tb.b, 1.0f, 0) == loss_full, "%s: weight 1, accumulate 0: another loss", name);
    poison(one, tn);
    fx_gpu_get_grad(f.g, one);
    CHECK(memcmp(one, full, sizeof(float) * tn) == 0, "%s: weight 1, accumulate 0: another gradient", name);

    double loss = 0;
    for (int u = 0; u < bn; u += mb) {
        int un = bn - u < mb ? bn - u : mb;
        fx_batch b = f.tb.b;
        b.n = un;
        b.ids = f.tb.ids + (size_t)u * T;
        b.mask = f.tb.mask + (size_t)u * T;
        b.labels = f.tb.labels + u;
        float w = (float)un / (float)bn;
        loss += (double)w * fx_gpu_step_accum(f.g, &b, w, u > 0);
    }
    poison(acc, tn);
    fx_gpu_get_grad(f.g, acc);
    float lacc = (float)loss;
    snprintf(what, sizeof what, "%s: loss", name);
    check_err(what, tensor_err(&lacc, &loss_full, 1, 0), PRECS[0].tol * LOSS_FACTOR);
    double big = l2(full, tn);
    for (int i = 0; i < f.m.train.nt; i++) {
        const fx_tensor *t = &f.m.train.t[i];
        snprintf(what, sizeof what, "%s: grad %s", name, t->name);
        check_err(what, tensor_err(acc + t->off, full + t->off, t->n, FLOOR * big), PRECS[0].tol);
    }

    /* refused input and arguments leave the gradient as it was */
    f.tb.ids[1] = f.m.c.vocab_size;
    CHECK(isnan(fx_gpu_step_accum(f.g, &f.tb.b, 0.5f, 1)), "%s: a bad token id was accepted", name);
    f.tb.ids[1] = 3;
    CHECK(isnan(fx_gpu_step_accum(f.g, &f.tb.b, NAN, 1)), "%s: weight NAN was accepted", name);
    CHECK(isnan(fx_gpu_step_accum(f.g, &f.tb.b, 0.5f, 2)), "%s: accumulate 2 was accepted", name);
    poison(one, tn);
    fx_gpu_get_grad(f.g, one);
    CHECK(memcmp(one, acc, sizeof(float) * tn) == 0, "%s: a refused call changed the gradient", name);

    free(full); free(acc); free(one);
    fixture_close(&f);
}

/* ---------------------------------------------------------------- dropout: GPU gradients vs its own FD
 * fx_gpu_seed fixes the masks of the next training step, so a loss at perturbed parameters sees the
 * masks the gradient was taken with. */

typedef struct { fx_gpu *g; const fx_batch *b; } gpu_ctx;
static float gpu_loss(void *ctx, const float *p, uint64_t seed) {
    gpu_ctx *c = ctx;
    fx_gpu_set_train(c->g, p);
    fx_gpu_seed(c->g, seed);
    return fx_gpu_step(c->g, c->b, 1, NULL);
}

static void finite_differences(const gcase *k) {
    fixture f;
    if (!fixture_open(&f, k, 0.1f, 77, FX_GPU_FP32)) return;
    size_t tn = f.m.train.n;
    float *p = malloc(sizeof(float) * tn), *grad = malloc(sizeof(float) * tn);
    memcpy(p, f.m.train.data, sizeof(float) * tn);
    const uint64_t seed = 2024;
    fx_gpu_seed(f.g, seed);
    float l0 = fx_gpu_step(f.g, &f.tb.b, 1, NULL);
    poison(grad, tn);
    fx_gpu_get_grad(f.g, grad);
    fx_gpu_seed(f.g, seed);                      /* same masks again: same loss, bit for bit */
    float l1 = fx_gpu_step(f.g, &f.tb.b, 1, NULL);
    CHECK(l0 == l1 && isfinite(l0), "%s: dropout with the same seed: loss %.9g then %.9g", k->name, l0, l1);
    fx_gpu_seed(f.g, seed + 1);
    float l2v = fx_gpu_step(f.g, &f.tb.b, 1, NULL);
    CHECK(l2v != l0, "%s: another seed should drop other units (loss %.9g both times)", k->name, l0);
    float le = fx_gpu_step(f.g, &f.tb.b, 0, NULL), lc = fx_model_step(&f.m, &f.tb.b, 0, NULL);
    check_err("evaluation has no dropout: loss", tensor_err(&le, &lc, 1, 0), PRECS[0].tol * LOSS_FACTOR);
    gpu_ctx c = {f.g, &f.tb.b};
    char name[96];
    snprintf(name, sizeof name, "%s dropout (GPU fp32)", k->name);
    fd_check(&f.m, grad, p, gpu_loss, &c, seed, name, 1.0, 1);
    free(p);
    free(grad);
    fixture_close(&f);
}

/* ---------------------------------------------------------------- the causal LMs: the decoders' ops
 *
 * A causal-LM fixture on the device in PREC against the CPU: logits (causal attention, the family's
 * norms, activation and positions, the head), the LM loss, every gradient; AdamW with the case's
 * clipping (the device's norm); and, in fp32, the KV-cache decoder (prefill, steps of two slots, a
 * reorder) step by step. gpt2_a: 2 pre-LN layers, LoRA on c_attn and both c_proj, label smoothing 0.1,
 * clipping at 1.0, gelu_new, ln_f, the tied head. llama_d: RMSNorm, llama3-scaled RoPE, every bias,
 * grouped-query attention (add_rows' sums), SwiGLU, all seven targets, an untied head. llama_f: the
 * sliding window of 6 over 12 tokens, and decoding 11 positions, past it. The tolerances are the
 * encoder cases' (the emulation above covers these cases too): the blocks are as deep, their products
 * no longer. */
static void lm_parity(const char *fix, int prec) {
    lmcase L;
    if (lm_open(&L, fix) != 0) return;
    fx_model *m = &L.m;
    const fx_batch *b = &L.b;
    double tol = PRECS[prec].tol;
    char name[64], what[128];
    snprintf(name, sizeof name, "%s %s", fix, fx_gpu_precision_name(prec));
    size_t nl = (size_t)b->n * b->T * m->c.vocab_size, tn = m->train.n;
    float *lc = malloc(sizeof(float) * nl), *lg = malloc(sizeof(float) * nl), *gc = malloc(sizeof(float) * tn);
    float *gg = malloc(sizeof(float) * tn), *pc = malloc(sizeof(float) * tn), *pg = malloc(sizeof(float) * tn);
    float loss_c = fx_model_step(m, b, 1, lc);
    memcpy(gc, m->grad, sizeof(float) * tn);
    fx_gpu *g = fx_gpu_create(m, 0, prec);
    CHECK(g != NULL, "%s: fx_gpu_create: %s", name, fx_err());
    if (g) {
        poison(lg, nl);
        poison(gg, tn);
        float loss_g = fx_gpu_step(g, b, 1, lg);
        fx_gpu_get_grad(g, gg);
        step_err s = compare_step(m, lg, lc, nl, loss_g, loss_c, gg, gc, name, tol, 1);
        printf("%-22s normwise error: logits %.2e, loss %.2e, worst gradient %.2e (%s); tolerance %.0e\n", name,
               s.logits.norm, s.loss.norm, s.grad.norm, s.worst, tol);
        /* AdamW with clipping, both fed the GPU's gradient: the norms' sums differ in order only */
        memcpy(m->grad, gg, sizeof(float) * tn);
        fx_adamw_update(m, 1e-2f, 0.01f);
        fx_gpu_adamw(g, 1e-2f, 0.01f);
        memcpy(pc, m->train.data, sizeof(float) * tn);
        fx_gpu_get_train(g, pg);
        snprintf(what, sizeof what, "%s AdamW after clipping", name);
        check_err(what, tensor_err(pg, pc, tn, 0), tol);
        /* the decoder: prefill, two slots from one, steps, a swap */
        fx_gpu_set_train(g, m->train.data);
        fx_decoder dc = {0}, dg = {0};
        int V = m->c.vocab_size, ok = 0;
        if (prec == FX_GPU_FP32) {
            ok = fx_model_decoder(m, 2, &dc) == 0 && fx_gpu_decoder(g, 2, &dg) == 0;
            CHECK(ok, "%s decoders: %s", name, fx_err());
        }
        if (ok) {
            float *zc = malloc(sizeof(float) * 2 * V), *zg = malloc(sizeof(float) * 2 * V);
            int prompt[5] = {3, 17, 4, 30, 9}, len = 5, src[2] = {0, 0}, swap[2] = {1, 0};
            ok = dc.prefill(dc.ctx, prompt, len, zc) == 0 && dg.prefill(dg.ctx, prompt, len, zg) == 0;
            snprintf(what, sizeof what, "%s decode: prefill logits", name);
            check_err(what, tensor_err(zg, zc, (size_t)V, 0), tol);
            ok = ok && dc.reorder(dc.ctx, 2, src, len) == 0 && dg.reorder(dg.ctx, 2, src, len) == 0;
            for (int s = 0; ok && s < 6; s++, len++) {
                int tok[2] = {(5 * s + 1) % V, (7 * s + 2) % V};
                ok = dc.step(dc.ctx, 2, tok, len, zc) == 0 && dg.step(dg.ctx, 2, tok, len, zg) == 0;
                snprintf(what, sizeof what, "%s decode: step %d logits", name, s);
                check_err(what, tensor_err(zg, zc, (size_t)2 * V, 0), tol);
                if (s == 2) ok = dc.reorder(dc.ctx, 2, swap, len + 1) == 0 && dg.reorder(dg.ctx, 2, swap, len + 1) == 0;
            }
            CHECK(ok, "%s decoding: %s", name, fx_err());
            free(zc); free(zg);
        }
        fx_decoder_free(&dc);
        fx_gpu_decoder_free(&dg);
        fx_gpu_free(g);
    }
    free(lc); free(lg); free(gc); free(gg); free(pc); free(pg);
    lm_close(&L);
}

/* FEDEX_GPU_QUICK=1 (for compute-sanitizer, which slows every kernel a hundredfold): the GPU checks of
 * the small cases only, without the CPU-side checks, the large cases and the finite differences. */
int main(void) {
    const char *q = getenv("FEDEX_GPU_QUICK");
    int quick = q && *q && strcmp(q, "0");
    check_gpu_ops();
    twin_on_cpu();
    if (!quick) {
        emulate_tolerances();
        fd_cpu_validation();
    }
    char why[512];
    int nd = fx_gpu_probe(why, sizeof why);
    if (nd <= 0) {
        printf("skipped: GPU tests (%s)\n", why);
        return check_done();
    }
    printf("gpu: %s%s\n", why, quick ? " (quick: small cases only)" : "");
    double t0 = fx_now();
    for (int p = 0; p < N_PRECS; p++)
        for (int i = 0; i < N_CASES; i++) {
            const gcase *k = &CASES[i];
            if (quick && (long)k->n * k->T * k->hidden > 10000) continue;
            if (!k->fp32_only || p == FX_GPU_FP32) compare_case(k, p, PRECS[p].tol);
        }
    printf("parity: %.1f s\n", fx_now() - t0);
    lm_parity("gpt2_a", FX_GPU_FP32);
    for (int p = FX_GPU_FP32; p <= FX_GPU_TF32; p++) { /* the precisions the emulation covers on them */
        lm_parity("llama_d", p);
        lm_parity("llama_f", p);
    }
    check_accumulation(&CASES[0], 2);             /* 3 rows: 2 + 1 */
    check_accumulation(&CASES[3], 1);             /* VeRA, one row at a time */
    for (size_t i = 0; !quick && i < sizeof FD_CASES / sizeof FD_CASES[0]; i++) finite_differences(&FD_CASES[i]);
    printf("gpu tests: %.1f s\n", fx_now() - t0);
    return check_done();
}

#endif
