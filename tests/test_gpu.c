/* tests/test_gpu.c: the CUDA backend (gpu.cu) against the CPU reference (model.c), tensor by tensor:
 * logits, loss, every gradient, the trainable buffer after AdamW, W0 after FedEx's residual (dense and
 * factored), in fp32, tf32 and bf16; and, with dropout on, the GPU's gradients against its own finite
 * differences. Without CUDA in the build, or without a usable device, it skips with a visible line. */
#include "../fedex.h"
#include "check.h"

#include <string.h>

#ifndef FEDEX_CUDA

int main(void) {
    printf("skipped: GPU tests (built without CUDA)\n");
    return check_done();
}

#else

/* ---------------------------------------------------------------- tolerances
 *
 * Each tensor is compared elementwise with |got - want| <= tol * max|want| + tol * |want|: its scale,
 * not each element's own size, sets the absolute part, as an element near zero is the sum of terms as
 * large as the tensor's largest.
 *
 *   precision  tol    why
 *   fp32       2e-5   Both sides round in fp32 (unit roundoff 6e-8); only the order of the sums differs
 *                     (cuBLAS's blocked K loop and warp reductions against sequential loops and double
 *                     moments on the CPU). Through two layers forward and back, with cancellation, that
 *                     stays near 1e-6 of the scale; 2e-5 leaves a margin of ten and still catches any
 *                     wrong term, which moves a tensor by > 1e-3 of its scale.
 *   tf32       1e-2   Tensor cores round both inputs of every product to 10 mantissa bits (unit
 *                     roundoff 4.9e-4); about ten chained products forward and back compound to ~5e-3.
 *   bf16       4e-2   Both inputs rounded to 7 mantissa bits (unit roundoff 3.9e-3), fp32 accumulation;
 *                     the same chain gives ~2e-2. A missing adapter or head term is still > 10% off.
 *
 *   AdamW: its first step moves each element by lr * g / (|g| + eps) ~ +-lr whatever the gradient's size,
 *   so parameters agree to ADAM_ATOL (fp32 rounding of p +- lr, |p| < 10) wherever the gradient's sign is
 *   certain, i.e. |g| exceeds the gradient tolerance; elsewhere they may differ by up to 2 lr.
 *   Residual: W0 + alpha U V formed by cuBLAS fp32 against fx_matmul: a few ulp of |W0| + |alpha U V|,
 *   RES_TOL of the scale.
 *   Finite differences (dropout on, GPU only, fp32): central differences with step FD_H on an fp32 loss
 *   of size ~1: rounding ~1e-6 / (2 h) = 5e-5, truncation h^2 |f'''| / 6 ~ 2e-5: FD_ATOL + FD_RTOL |fd|,
 *   as tests/test_model_core.c argues for the CPU. */
static const struct { int prec; double tol; } PRECS[] = {
    {FX_GPU_FP32, 2e-5}, {FX_GPU_TF32, 1e-2}, {FX_GPU_BF16, 4e-2}};
#define LOSS_FACTOR 0.5   /* the loss moves by about its logits' error: half the tensor tolerance */
#define ADAM_LR 1e-2f
#define ADAM_WD 0.01f
#define ADAM_ATOL 2e-6
#define RES_TOL 1e-6
#define FD_H 1e-2f
#define FD_ATOL 2e-4
#define FD_RTOL 2e-2
#define FD_PER_TENSOR 3

/* ---------------------------------------------------------------- cases */

typedef struct {
    const char *name;
    fx_adapter_kind kind;
    unsigned targets;
    int r;
    float alpha;
    int rslora, freeze_a, freeze_d, num_labels, hidden, heads;
    int residual;             /* dense residual on adapter 0, factored (q = 3) on adapter 1 */
} gcase;

enum { ALL = 63 };
static const gcase CASES[] = {
    {"lora_qv", FX_LORA, FX_T_QUERY | FX_T_VALUE, 4, 8.0f, 0, 0, 0, 3, 64, 4, 0},
    {"lora_all_reg", FX_LORA, ALL, 4, 8.0f, 1, 0, 0, 1, 80, 2, 0},   /* head size 40 > one warp */
    {"ffa", FX_LORA, FX_T_QUERY | FX_T_VALUE, 4, 16.0f, 0, 1, 0, 3, 64, 4, 0},
    {"vera_all", FX_VERA, ALL, 8, 0.0f, 0, 0, 0, 3, 64, 4, 0},
    {"vera_ffa", FX_VERA, ALL, 8, 0.0f, 0, 0, 1, 2, 80, 2, 0},
    {"residual", FX_LORA, FX_T_QUERY | FX_T_INTER, 2, 4.0f, 0, 0, 0, 3, 64, 4, 1},
    {"head_only", FX_LORA, 0, 4, 8.0f, 0, 0, 0, 3, 64, 4, 0},
};

/* Finite differences need a loss of size ~1 (cross-entropy; MSE against targets of a few units would
 * carry ten times the rounding noise). Every target adapted, so every dropout site is crossed. */
static const gcase FD_CASES[] = {
    {"lora_all", FX_LORA, ALL, 4, 8.0f, 0, 0, 0, 3, 64, 4, 0},
    {"vera_all", FX_VERA, ALL, 8, 0.0f, 0, 0, 0, 3, 80, 2, 0},
};

static fx_config case_config(const gcase *k, float drop) {
    fx_config c;
    memset(&c, 0, sizeof c);
    c.vocab_size = 50; c.hidden = k->hidden; c.layers = 2; c.heads = k->heads; c.intermediate = 2 * k->hidden;
    c.max_positions = 64; c.type_vocab_size = 1; c.pad_id = 1; c.num_labels = k->num_labels;
    c.layer_norm_eps = 1e-5f; c.initializer_range = 0.02f;
    c.hidden_dropout = c.attention_dropout = c.classifier_dropout = drop;
    return c;
}

/* Weights large enough that every path moves the loss well above fp32 noise: dense N(0, 1/in),
 * embeddings N(0, 0.25), LayerNorm weight 1 + N(0, 0.01), vectors N(0, 0.01); LoRA A, B N(0, 0.16);
 * VeRA lambdas 0.5 + N(0, 0.09). */
static void randomize(fx_model *m, uint64_t seed) {
    fx_rng g;
    fx_rng_seed(&g, seed);
    for (int which = 0; which < 2; which++) {
        fx_params *p = which ? &m->train : &m->base;
        for (int i = 0; i < p->nt; i++) {
            const fx_tensor *t = &p->t[i];
            int adapter = which && t->off < m->head_off;
            double sd = t->ndim == 2 ? (strstr(t->name, "embeddings") ? 0.5 : 1.0 / sqrt(t->shape[1])) : 0.1;
            double mean = strstr(t->name, "LayerNorm.weight") ? 1.0 : 0.0;
            if (adapter) { sd = m->a.kind == FX_VERA ? 0.3 : 0.4; mean = m->a.kind == FX_VERA ? 0.5 : 0.0; }
            for (size_t j = 0; j < t->n; j++) p->data[t->off + j] = (float)(mean + sd * fx_rng_normal(&g));
        }
    }
}

/* Three rows of 37, 21 and 6 tokens (more than a warp's 32 keys), padded on the right with pad_id 1. */
enum { NB = 3, TB = 37 };
static void make_batch(fx_batch *b, int32_t *ids, uint8_t *mask, float *labels, int num_labels) {
    static const int len[NB] = {37, 21, 6};
    fx_rng g;
    fx_rng_seed(&g, 7);
    for (int i = 0; i < NB; i++)
        for (int t = 0; t < TB; t++) {
            int32_t id = t == 0 ? 0 : t == len[i] - 1 ? 2 : t < len[i] ? 3 + (int32_t)(fx_rng_u64(&g) % 47) : 1;
            ids[i * TB + t] = id;
            mask[i * TB + t] = t < len[i];
        }
    const float cls[NB] = {0, 2, 1}, reg[NB] = {0.5f, 3.25f, -1.75f};
    for (int i = 0; i < NB; i++) labels[i] = num_labels == 1 ? reg[i] : cls[i] < num_labels ? cls[i] : 1;
    memset(b, 0, sizeof *b);
    b->n = NB; b->T = TB; b->ids = ids; b->mask = mask; b->labels = labels;
}

static double max_abs(const float *x, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) if (fabs(x[i]) > m) m = fabs(x[i]);
    return m;
}

static void poison(float *x, size_t n) { for (size_t i = 0; i < n; i++) x[i] = NAN; }

static void check_tensor(const char *what, const float *got, const float *want, size_t n, double tol) {
    CHECK_CLOSE(what, got, want, n, tol * max_abs(want, n), tol);
}

/* ---------------------------------------------------------------- GPU against CPU, one case */

static void compare_case(const gcase *k, int prec, double tol) {
    fx_config c = case_config(k, 0.0f);
    fx_adapter_cfg a;
    memset(&a, 0, sizeof a);
    a.kind = k->kind; a.targets = k->targets; a.r = k->r; a.alpha = k->alpha; a.rslora = k->rslora;
    a.freeze_a = k->freeze_a; a.freeze_d = k->freeze_d; a.d_initial = 0.1f; a.seed = 11;
    fx_model m;
    if (fx_model_create(&m, &c, &a, NULL) != 0) { CHECK(0, "%s: fx_model_create: %s", k->name, fx_err()); return; }
    randomize(&m, 1234);
    fx_gpu *g = fx_gpu_create(&m, 0, prec);
    if (!g) { CHECK(0, "%s: fx_gpu_create: %s", k->name, fx_err()); fx_model_free(&m); return; }
    char what[256];
    const char *pn = fx_gpu_precision_name(prec);
    size_t tn = m.train.n;
    CHECK(fx_gpu_train_n(g) == tn, "%s: train_n %zu, model %zu", k->name, fx_gpu_train_n(g), tn);

    if (k->residual) { /* FedEx's frozen weights fl(W0 + R_acc), formed on the host, uploaded whole */
        fx_residual res;
        fx_residual_init(&res, &m);
        fx_rng r;
        fx_rng_seed(&r, 99);
        for (size_t i = 0; i < res.off[res.n]; i++) res.acc[i] = (float)(0.02 * fx_rng_normal(&r));
        fx_residual_set_frozen(&res, &m);
        for (int j = 0; j < m.nadapted; j++)
            CHECK(fx_gpu_set_frozen(g, j, m.base.data + m.ad[j].w_off) == 0, "%s: set_frozen: %s", k->name, fx_err());
        CHECK(fx_gpu_set_frozen(g, m.nadapted, m.base.data) == -1, "%s: adapter %d does not exist", k->name,
              m.nadapted);
        float *base = malloc(sizeof(float) * m.base.n);
        poison(base, m.base.n);
        fx_gpu_get_base(g, base);
        CHECK(!memcmp(base, m.base.data, sizeof(float) * m.base.n), "%s/%s: the device's frozen weights are "
              "the host's, bit for bit", k->name, pn);
        free(base);
        fx_residual_free(&res);
    }

    fx_batch b;
    int32_t ids[NB * TB];
    uint8_t mask[NB * TB];
    float labels[NB];
    make_batch(&b, ids, mask, labels, c.num_labels);
    size_t nl = (size_t)NB * c.num_labels;
    float *lc = malloc(sizeof(float) * nl), *lg = malloc(sizeof(float) * nl);
    float *gg = malloc(sizeof(float) * tn), *pg = malloc(sizeof(float) * tn);
    poison(lc, nl);
    poison(lg, nl);
    poison(gg, tn);
    float loss_c = fx_model_step(&m, &b, 1, lc);
    float loss_g = fx_gpu_step(g, &b, 1, lg);
    fx_gpu_get_grad(g, gg);
    snprintf(what, sizeof what, "%s/%s logits", k->name, pn);
    check_tensor(what, lg, lc, nl, tol);
    snprintf(what, sizeof what, "%s/%s loss", k->name, pn);
    CHECK_CLOSE(what, &loss_g, &loss_c, 1, 0, tol * LOSS_FACTOR);
    for (int i = 0; i < m.train.nt; i++) {
        const fx_tensor *t = &m.train.t[i];
        snprintf(what, sizeof what, "%s/%s grad %s", k->name, pn, t->name);
        if (t->frozen) {
            CHECK(max_abs(gg + t->off, t->n) == 0, "%s: frozen, expected exact zeros", what);
            continue;
        }
        check_tensor(what, gg + t->off, m.grad + t->off, t->n, tol);
    }

    /* AdamW: agreement to rounding where the gradient's sign is certain, within 2 lr elsewhere. */
    fx_adamw_update(&m, ADAM_LR, ADAM_WD);
    fx_gpu_adamw(g, ADAM_LR, ADAM_WD);
    poison(pg, tn);
    fx_gpu_get_train(g, pg);
    for (int i = 0; i < m.train.nt; i++) {
        const fx_tensor *t = &m.train.t[i];
        double gs = max_abs(m.grad + t->off, t->n);
        size_t bad = 0, worst = 0;
        double worst_err = 0;
        for (size_t j = t->off; j < t->off + t->n; j++) {
            double gc = fabs((double)m.grad[j]), err = fabs((double)pg[j] - m.train.data[j]);
            double bound = gc > tol * gs + tol * gc ? ADAM_ATOL : 2.0 * ADAM_LR + ADAM_ATOL;
            if (!(err <= bound)) { bad++; if (!(err <= worst_err)) { worst_err = err; worst = j; } }
        }
        CHECK(bad == 0, "%s/%s AdamW %s: %zu of %zu elements off, worst %zu: gpu %.9g cpu %.9g", k->name, pn,
              t->name, bad, t->n, worst - t->off, pg[worst], m.train.data[worst]);
    }

    /* The updated state, in evaluation: the CPU's parameters on both sides, so only the step differs. */
    fx_gpu_set_train(g, m.train.data);
    poison(lc, nl);
    poison(lg, nl);
    loss_c = fx_model_step(&m, &b, 0, lc);
    loss_g = fx_gpu_step(g, &b, 0, lg);
    snprintf(what, sizeof what, "%s/%s eval logits after AdamW", k->name, pn);
    check_tensor(what, lg, lc, nl, tol);
    snprintf(what, sizeof what, "%s/%s eval loss", k->name, pn);
    CHECK_CLOSE(what, &loss_g, &loss_c, 1, 0, tol * LOSS_FACTOR);

    /* Bad input gets NAN and a message, as on the CPU. */
    ids[5] = c.vocab_size;
    CHECK(isnan(fx_gpu_step(g, &b, 1, NULL)) && strstr(fx_err(), "outside the vocabulary"),
          "%s: token id out of range: %s", k->name, fx_err());
    ids[5] = 3;
    labels[0] = c.num_labels > 1 ? (float)c.num_labels : NAN;
    CHECK(isnan(fx_gpu_step(g, &b, 1, NULL)) && strstr(fx_err(), "label"), "%s: bad label: %s", k->name, fx_err());

    free(lc); free(lg); free(gg); free(pg);
    fx_gpu_free(g);
    fx_model_free(&m);
}

/* ---------------------------------------------------------------- dropout: GPU gradients vs its own FD
 * fx_gpu_seed fixes the masks of the next training step, so a loss at perturbed parameters sees the
 * masks the gradient was taken with. */

static void finite_differences(const gcase *k) {
    fx_config c = case_config(k, 0.1f);
    fx_adapter_cfg a;
    memset(&a, 0, sizeof a);
    a.kind = k->kind; a.targets = k->targets; a.r = k->r; a.alpha = k->alpha; a.rslora = k->rslora;
    a.dropout = 0.1f; a.d_initial = 0.1f; a.seed = 5;
    fx_model m;
    if (fx_model_create(&m, &c, &a, NULL) != 0) { CHECK(0, "%s: fx_model_create: %s", k->name, fx_err()); return; }
    randomize(&m, 77);
    fx_gpu *g = fx_gpu_create(&m, 0, FX_GPU_FP32);
    if (!g) { CHECK(0, "%s: fx_gpu_create: %s", k->name, fx_err()); fx_model_free(&m); return; }
    fx_batch b;
    int32_t ids[NB * TB];
    uint8_t mask[NB * TB];
    float labels[NB];
    make_batch(&b, ids, mask, labels, c.num_labels);
    size_t tn = m.train.n;
    float *p = malloc(sizeof(float) * tn), *grad = malloc(sizeof(float) * tn);
    memcpy(p, m.train.data, sizeof(float) * tn);
    const uint64_t seed = 2024;
    fx_gpu_seed(g, seed);
    float l0 = fx_gpu_step(g, &b, 1, NULL);
    poison(grad, tn);
    fx_gpu_get_grad(g, grad);
    fx_gpu_seed(g, seed);                      /* same masks again: same loss, bit for bit */
    float l1 = fx_gpu_step(g, &b, 1, NULL);
    CHECK(l0 == l1 && isfinite(l0), "%s: dropout with the same seed: loss %.9g then %.9g", k->name, l0, l1);
    fx_gpu_seed(g, seed + 1);
    float l2 = fx_gpu_step(g, &b, 1, NULL);
    CHECK(l2 != l0, "%s: another seed should drop other units (loss %.9g both times)", k->name, l0);
    float le = fx_gpu_step(g, &b, 0, NULL), lc = fx_model_step(&m, &b, 0, NULL);
    CHECK(fabsf(le - lc) <= 1e-4f * fabsf(lc), "%s: evaluation has no dropout: gpu %.9g cpu %.9g", k->name, le, lc);

    fx_rng r;
    fx_rng_seed(&r, 3);
    for (int i = 0; i < m.train.nt; i++) {
        const fx_tensor *t = &m.train.t[i];
        for (int s = 0; s < FD_PER_TENSOR; s++) {
            size_t j = t->off + (size_t)(fx_rng_u64(&r) % t->n);
            float keep = p[j], lp, lm;
            p[j] = keep + FD_H;
            fx_gpu_set_train(g, p);
            fx_gpu_seed(g, seed);
            lp = fx_gpu_step(g, &b, 1, NULL);
            p[j] = keep - FD_H;
            fx_gpu_set_train(g, p);
            fx_gpu_seed(g, seed);
            lm = fx_gpu_step(g, &b, 1, NULL);
            p[j] = keep;
            float fd = (lp - lm) / (2 * FD_H);
            char what[192];
            snprintf(what, sizeof what, "%s dropout: d loss / d %s[%zu] vs central difference", k->name, t->name,
                     j - t->off);
            CHECK_CLOSE(what, &grad[j], &fd, 1, FD_ATOL, FD_RTOL);
        }
    }
    free(p);
    free(grad);
    fx_gpu_free(g);
    fx_model_free(&m);
}

int main(void) {
    char why[512];
    int nd = fx_gpu_probe(why, sizeof why);
    if (nd <= 0) {
        printf("skipped: GPU tests (%s)\n", why);
        return check_done();
    }
    printf("gpu: %s\n", why);
    for (size_t p = 0; p < sizeof PRECS / sizeof PRECS[0]; p++)
        for (size_t i = 0; i < sizeof CASES / sizeof CASES[0]; i++) compare_case(&CASES[i], PRECS[p].prec, PRECS[p].tol);
    for (size_t i = 0; i < sizeof FD_CASES / sizeof FD_CASES[0]; i++) finite_differences(&FD_CASES[i]);
    return check_done();
}

#endif
