/* tests/test_model_core.c: self-consistency of model.c on a tiny RoBERTa: zero adapters leave the base
 * logits bit for bit; gradients match central finite differences (LoRA, FFA-LoRA, VeRA, head, with and
 * without dropout); padding does not move a row's logits; FedEx's residual enters in W's orientation;
 * AdamW and the schedule against the formulas written here in double; config and target parsing.
 * The comparison with PyTorch is tests/test_model.c. */
#include "../fedex.h"
#include "check.h"

#include <float.h>
#include <omp.h>
#include <string.h>
#include <unistd.h>

/* ---------------------------------------------------------------- tolerances
 *
 *   what                          bound                          why
 *   zero adapter vs no adapter    bitwise equal                  y + s * (z 0^T) adds exact zeros.
 *   gradient vs central FD        |g - fd| <= FD_ATOL            FD step h = FD_H on an fp32 loss of size ~1:
 *                                   + FD_RTOL |fd|               rounding noise ~3e-7 / (2h) = 5e-5, truncation
 *                                                                h^2 |f'''| / 6 = 1.5e-6 |f'''| (measured: the
 *                                                                error falls 10x when h falls 3x, so it is
 *                                                                truncation, not a wrong term). A wrong term or
 *                                                                sign shows as an error ~|g| >> 2e-4.
 *   padded vs unpadded row        PAD_TOL abs on logits          padded keys get probability exactly 0; only a
 *                                                                reordered fp32 sum could differ, ~1e-7.
 *   residual vs equal adapter     RES_TOL abs on logits          s B A formed in double and rounded once, then
 *                                                                an fp32 network: ~1e-6. The transposed
 *                                                                residual moves logits by > RES_DIFF.
 *   AdamW vs double formula       ADAM_RTOL relative             fp32 moments over 3 steps: a few ulp.
 */
#define FD_H 3e-3f
#define FD_ATOL 2e-4
#define FD_RTOL 2e-2
#define PAD_TOL 1e-5
#define RES_TOL 2e-5
#define RES_DIFF 1e-3
#define ADAM_RTOL 1e-5

/* ---------------------------------------------------------------- a tiny model */

static fx_config tiny_config(int num_labels, float drop) {
    fx_config c = {.vocab_size = 50, .hidden = 16, .layers = 3, .heads = 2, .intermediate = 32,
                   .max_positions = 40, .type_vocab_size = 1, .pad_id = 1, .num_labels = num_labels,
                   .layer_norm_eps = 1e-5f, .hidden_dropout = drop, .attention_dropout = drop,
                   .initializer_range = 0.02f, .classifier_dropout = drop};
    return c;
}

/* Base and head weights larger than HF's N(0, 0.02), so every path moves the loss well above fp32
 * noise: dense weights N(0, 1/in), embeddings N(0, 0.25), LayerNorm 1 + N(0, 0.01) and N(0, 0.01). */
static void fill_random(fx_model *m, uint64_t seed) {
    fx_rng g;
    fx_rng_seed(&g, seed);
    fx_params *ps[2] = {&m->base, &m->train};
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < ps[k]->nt; i++) {
            fx_tensor *t = &ps[k]->t[i];
            if (k == 1 && t->off < m->head_off) continue;
            float *d = ps[k]->data + t->off;
            double sd = t->ndim == 2 ? (strstr(t->name, "embeddings") ? 0.5 : 1.0 / sqrt(t->shape[1])) : 0.1;
            double mean = strstr(t->name, "LayerNorm.weight") ? 1.0 : 0.0;
            for (size_t j = 0; j < t->n; j++) d[j] = (float)(mean + sd * fx_rng_normal(&g));
        }
}

/* Adapter tensors non-zero: A, B ~ N(0, 0.25^2) (s B A then ~ 0.2, against W ~ 0.25: the adapter matters
 * but the loss stays smooth enough for finite differences); lambda_d, lambda_b ~ 0.5 + N(0, 0.3^2). */
static void fill_adapters(fx_model *m, uint64_t seed) {
    fx_rng g;
    fx_rng_seed(&g, seed);
    for (int i = 0; i < m->train.nt; i++) {
        fx_tensor *t = &m->train.t[i];
        if (t->off >= m->head_off) continue;
        for (size_t j = 0; j < t->n; j++)
            m->train.data[t->off + j] = (float)(m->a.kind == FX_VERA ? 0.5 + 0.3 * fx_rng_normal(&g)
                                                                      : 0.25 * fx_rng_normal(&g));
    }
}

/* Rows of lengths 7, 5 and 3 padded to T = 7: <s> x ... </s> with pad_id 1. */
enum { NB = 3, TB = 7 };
static const int row_len[NB] = {7, 5, 3};
static void make_batch(fx_batch *b, int32_t *ids, uint8_t *mask, float *labels, int num_labels) {
    fx_rng g;
    fx_rng_seed(&g, 99);
    for (int i = 0; i < NB; i++) {
        for (int t = 0; t < TB; t++) {
            int real = t < row_len[i];
            ids[i * TB + t] = !real ? 1 : t == 0 ? 0 : t == row_len[i] - 1 ? 2 : 4 + (int)(fx_rng_u64(&g) % 46);
            mask[i * TB + t] = (uint8_t)real;
        }
        labels[i] = num_labels == 1 ? (float)(2 * fx_rng_uniform(&g) - 1) : (float)(i % num_labels);
    }
    memset(b, 0, sizeof *b);
    b->n = NB; b->T = TB; b->ids = ids; b->mask = mask; b->labels = labels;
}

static void make_model(fx_model *m, const fx_config *c, fx_adapter_kind kind, unsigned targets, int freeze) {
    fx_adapter_cfg a = {.kind = kind, .targets = targets, .r = 2, .alpha = 4, .dropout = c->hidden_dropout,
                        .freeze_a = freeze && kind == FX_LORA, .freeze_d = freeze && kind == FX_VERA,
                        .d_initial = 0.1f, .seed = 7};
    int rc = fx_model_create(m, c, &a, NULL);
    CHECK(rc == 0, "fx_model_create: %s", fx_err());
    fill_random(m, 1);
    fx_model_init_adapters(m, 3);
    fill_adapters(m, 5);
}

/* ---------------------------------------------------------------- checks */

static void check_zero_adapter(fx_adapter_kind kind) {
    fx_config c = tiny_config(3, 0);
    fx_model plain, ad;
    make_model(&plain, &c, FX_LORA, 0, 0);
    make_model(&ad, &c, kind, 63, 0);
    memcpy(ad.base.data, plain.base.data, plain.base.n * sizeof(float));
    memcpy(ad.train.data + ad.head_off, plain.train.data + plain.head_off, plain.head_n * sizeof(float));
    fx_model_init_adapters(&ad, 11); /* B = 0, or lambda_b = 0 */
    int32_t ids[NB * TB]; uint8_t mask[NB * TB]; float labels[NB]; fx_batch b;
    make_batch(&b, ids, mask, labels, 3);
    float l0[NB * 3], l1[NB * 3];
    float loss0 = fx_model_step(&plain, &b, 0, l0), loss1 = fx_model_step(&ad, &b, 0, l1);
    CHECK(memcmp(l0, l1, sizeof l0) == 0 && loss0 == loss1, "%s with a zero adapter: logits differ from the base",
          kind == FX_LORA ? "LoRA" : "VeRA");
    float sum = 0;
    for (int i = 0; i < NB * 3; i++) sum += fabsf(l0[i]);
    CHECK(sum > 0.1f && isfinite(loss0), "base logits look degenerate (sum |logit| %g)", sum);
    fx_model_free(&plain);
    fx_model_free(&ad);
}

/* Every trainable tensor's gradient (12 elements or so, spread over it) against central differences
 * of the loss, with the dropout stream rewound so every evaluation sees the same masks. */
static void check_gradients(const char *what, fx_adapter_kind kind, int num_labels, float drop, int freeze) {
    fx_config c = tiny_config(num_labels, drop);
    fx_model m;
    make_model(&m, &c, kind, 63, freeze);
    int32_t ids[NB * TB]; uint8_t mask[NB * TB]; float labels[NB]; fx_batch b;
    make_batch(&b, ids, mask, labels, num_labels);
    fx_rng start = m.drop;
    float loss = fx_model_step(&m, &b, 1, NULL);
    CHECK(isfinite(loss), "%s: loss %g: %s", what, loss, fx_err());
    float *g = fx_malloc(m.train.n * sizeof(float));
    memcpy(g, m.grad, m.train.n * sizeof(float));
    int bad = 0, checked = 0, nonzero = 0;
    double worst = 0;
    for (int i = 0; i < m.train.nt; i++) {
        const fx_tensor *t = &m.train.t[i];
        if (t->frozen) {
            int zero = 1;
            for (size_t j = 0; j < t->n; j++) zero &= g[t->off + j] == 0.0f;
            CHECK(zero, "%s: frozen %s has a gradient", what, t->name);
            continue;
        }
        size_t stride = t->n > 12 ? t->n / 12 : 1;
        for (size_t j = 0; j < t->n; j += stride) {
            float *p = m.train.data + t->off + j, keep = *p;
            *p = keep + FD_H; m.drop = start;
            double lp = fx_model_step(&m, &b, 1, NULL);
            *p = keep - FD_H; m.drop = start;
            double lm = fx_model_step(&m, &b, 1, NULL);
            *p = keep;
            double fd = (lp - lm) / (2.0 * FD_H), got = g[t->off + j];
            double excess = fabs(got - fd) - (FD_ATOL + FD_RTOL * fabs(fd));
            if (excess > 0 && bad++ < 5)
                fprintf(stderr, "  %s: %s[%zu]: gradient %.6g, finite difference %.6g\n", what, t->name, j, got, fd);
            if (fabs(got - fd) > worst) worst = fabs(got - fd);
            nonzero += fabs(got) > 1e-3;
            checked++;
        }
    }
    CHECK(bad == 0, "%s: %d of %d gradients disagree with finite differences", what, bad, checked);
    CHECK(nonzero > checked / 2, "%s: only %d of %d gradients are non-zero: the check would be vacuous", what,
          nonzero, checked);
    printf("%s: %d gradients checked, worst |g - fd| %.2g\n", what, checked, worst);
    free(g);
    fx_model_free(&m);
}

/* The same logits for a row alone (unpadded) and inside a padded batch with longer rows. */
static void check_padding(void) {
    fx_config c = tiny_config(3, 0);
    fx_model m;
    make_model(&m, &c, FX_LORA, 63, 0);
    int32_t ids[NB * TB]; uint8_t mask[NB * TB]; float labels[NB]; fx_batch b;
    make_batch(&b, ids, mask, labels, 3);
    float all[NB * 3];
    fx_model_step(&m, &b, 0, all);
    for (int i = 1; i < NB; i++) {
        fx_batch one = b;
        one.n = 1; one.T = row_len[i]; one.ids = ids + i * TB; one.mask = mask + i * TB; one.labels = labels + i;
        float alone[3];
        fx_model_step(&m, &one, 0, alone);
        CHECK_CLOSE("padded row vs the row alone", all + i * 3, alone, 3, PAD_TOL, 0);
    }
    fx_model_free(&m);
}

/* W0 += R equals the adapter whose delta W is R; W0 += R^T does not (for a non-symmetric R). */
static void check_residual(fx_adapter_kind kind) {
    fx_config c = tiny_config(3, 0);
    unsigned targets = FX_T_QUERY | FX_T_INTER;
    fx_model ad, res;
    make_model(&ad, &c, kind, targets, 0);
    make_model(&res, &c, kind, targets, 0);
    fx_model_init_adapters(&res, 1); /* zero adapter: only the residual acts */
    int32_t ids[NB * TB]; uint8_t mask[NB * TB]; float labels[NB]; fx_batch b;
    make_batch(&b, ids, mask, labels, 3);
    float la[NB * 3], lr[NB * 3], lt[NB * 3];
    fx_model_step(&ad, &b, 0, la);
    for (int k = 0; k < ad.nadapted; k++) {
        const fx_adapted *a = &ad.ad[k];
        int r = ad.a.r;
        const float *A = ad.train.data + a->a_off, *B = ad.train.data + a->b_off;
        float *R = fx_malloc((size_t)a->out * a->in * sizeof(float));
        for (int o = 0; o < a->out; o++)
            for (int i = 0; i < a->in; i++) {
                double s = 0;
                for (int j = 0; j < r; j++)
                    s += kind == FX_LORA ? (double)ad.scale * B[o * r + j] * A[j * a->in + i]
                                         /* diag(lambda_b) B_l diag(lambda_d) A_l */
                                         : (double)B[o] * ad.vera_B[o * r + j] * A[j] * ad.vera_A[j * ad.vera_in + i];
                R[(size_t)o * a->in + i] = (float)s;
            }
        float *W = res.base.data + a->w_off; /* the frozen weight fl(W0 + R), as every party forms it */
        fx_frozen_weight(W, W, R, (size_t)a->out * a->in);
        free(R);
    }
    fx_model_step(&res, &b, 0, lr);
    CHECK_CLOSE(kind == FX_LORA ? "LoRA as a residual" : "VeRA as a residual", lr, la, NB * 3, RES_TOL, 0);
    /* Transpose the (square) query residual: subtract R, add R^T. */
    const fx_adapted *q = &ad.ad[0];
    float *W = res.base.data + q->w_off, *W0 = ad.base.data + q->w_off;
    int n = q->in;
    float *D = fx_malloc((size_t)n * n * sizeof(float));
    for (int i = 0; i < n * n; i++) D[i] = W[i] - W0[i];
    for (int o = 0; o < n; o++)
        for (int i = 0; i < n; i++) W[o * n + i] = W0[o * n + i] + D[i * n + o];
    free(D);
    fx_model_step(&res, &b, 0, lt);
    double diff = 0;
    for (int i = 0; i < NB * 3; i++) diff = fmax(diff, fabs(lt[i] - la[i]));
    CHECK(diff > RES_DIFF, "a transposed residual gives the same logits (max diff %g)", diff);
    fx_model_free(&ad);
    fx_model_free(&res);
}

/* Training-mode forward without dropout (one activation slot per layer) equals evaluation (two slots
 * in turn); grads do not depend on the thread count, with dropout on. */
static void check_modes_and_threads(void) {
    fx_config c = tiny_config(3, 0);
    fx_model m;
    make_model(&m, &c, FX_LORA, 63, 0);
    int32_t ids[NB * TB]; uint8_t mask[NB * TB]; float labels[NB]; fx_batch b;
    make_batch(&b, ids, mask, labels, 3);
    float le[NB * 3], lt[NB * 3];
    fx_model_step(&m, &b, 0, le);
    fx_model_step(&m, &b, 1, lt);
    CHECK(memcmp(le, lt, sizeof le) == 0, "train (no dropout) and eval logits differ");
    fx_model_free(&m);

    /* Large enough that every loop of model.c goes parallel (PAR_MIN there). */
    c = tiny_config(3, 0.2f);
    c.hidden = 64; c.heads = 4; c.intermediate = 256; c.max_positions = 64;
    make_model(&m, &c, FX_VERA, 63, 0);
    enum { NBIG = 8, TBIG = 40 };
    int32_t *bids = fx_malloc(NBIG * TBIG * sizeof *bids);
    uint8_t *bmask = fx_malloc(NBIG * TBIG);
    float blabels[NBIG];
    for (int i = 0; i < NBIG; i++) {
        int len = TBIG - 3 * i;
        for (int t = 0; t < TBIG; t++) {
            bids[i * TBIG + t] = t >= len ? 1 : 4 + (i * 7 + t * 3) % 46;
            bmask[i * TBIG + t] = t < len;
        }
        blabels[i] = (float)(i % 3);
    }
    b.n = NBIG; b.T = TBIG; b.ids = bids; b.mask = bmask; b.labels = blabels;
    float *g1 = fx_malloc(m.train.n * sizeof(float));
    int nt = omp_get_max_threads();
    fx_rng start = m.drop;
    fx_set_threads(1);
    fx_model_step(&m, &b, 1, NULL);
    memcpy(g1, m.grad, m.train.n * sizeof(float));
    fx_set_threads(3);
    m.drop = start;
    fx_model_step(&m, &b, 1, NULL);
    CHECK(memcmp(g1, m.grad, m.train.n * sizeof(float)) == 0, "gradients depend on the thread count");
    fx_set_threads(nt);
    free(g1); free(bids); free(bmask);
    fx_model_free(&m);
}

/* Three AdamW steps against the torch.optim.AdamW formulas in double; frozen A untouched. */
static void check_adamw(void) {
    fx_config c = tiny_config(2, 0);
    fx_model m;
    make_model(&m, &c, FX_LORA, FX_T_VALUE, 1);
    size_t n = m.train.n;
    double *p = malloc(n * sizeof *p), *mm = calloc(n, sizeof *mm), *vv = calloc(n, sizeof *vv);
    float *p0 = fx_malloc(n * sizeof(float));
    memcpy(p0, m.train.data, n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = m.train.data[i];
    fx_rng g;
    fx_rng_seed(&g, 4);
    const float lr = 1e-2f, wd = 0.1f;
    for (int t = 1; t <= 3; t++) {
        for (size_t i = 0; i < n; i++) m.grad[i] = (float)fx_rng_normal(&g);
        fx_adamw_update(&m, lr, wd);
        for (int k = 0; k < m.train.nt; k++) {
            const fx_tensor *tt = &m.train.t[k];
            if (tt->frozen) continue;
            for (size_t i = tt->off; i < tt->off + tt->n; i++) {
                double gi = m.grad[i];
                p[i] *= 1 - (double)lr * wd;
                mm[i] = 0.9 * mm[i] + 0.1 * gi;
                vv[i] = 0.999 * vv[i] + 0.001 * gi * gi;
                double mh = mm[i] / (1 - pow(0.9, t)), vh = vv[i] / (1 - pow(0.999, t));
                p[i] -= lr * mh / (sqrt(vh) + 1e-8);
            }
        }
    }
    float *pf = fx_malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) pf[i] = (float)p[i];
    CHECK_CLOSE("AdamW, 3 steps", m.train.data, pf, n, 1e-7, ADAM_RTOL);
    const fx_tensor *A = fx_params_find(&m.train, "encoder.layer.0.attention.self.value.lora_A");
    CHECK(A && A->frozen && memcmp(m.train.data + A->off, p0 + A->off, A->n * sizeof(float)) == 0,
          "FFA-LoRA: the frozen A moved");
    CHECK(m.adam_t == 3, "adam_t %d after 3 steps", m.adam_t);
    fx_adamw_reset(&m);
    CHECK(m.adam_t == 0 && m.adam_m[n - 1] == 0 && m.adam_v[n - 1] == 0, "fx_adamw_reset left state behind");
    free(p); free(mm); free(vv); free(p0); free(pf);
    fx_model_free(&m);
}

static void check_schedule(void) {
    /* warmup 2, total 10: 0, 1/2 during warm-up, then (10 - step) / 8, never below 0. */
    const int steps[] = {0, 1, 2, 6, 10, 12};
    const float want[] = {0, 0.5f, 1, 0.5f, 0, 0};
    for (int i = 0; i < 6; i++) {
        float got = fx_linear_schedule(steps[i], 2, 10, 1.0f);
        CHECK(fabsf(got - want[i]) < 1e-7f, "schedule step %d: %g, want %g", steps[i], got, want[i]);
    }
    CHECK(fx_linear_schedule(0, 0, 10, 2.0f) == 2.0f, "no warm-up: step 0 takes the full rate");
}

static void check_targets(void) {
    unsigned m = 0;
    CHECK(fx_targets_parse("query,value", &m) == 0 && m == (FX_T_QUERY | FX_T_VALUE), "query,value -> %u", m);
    CHECK(fx_targets_parse("attn_out, intermediate,output", &m) == 0 && m == (FX_T_ATTN_OUT | FX_T_INTER | FX_T_OUTPUT),
          "aliases -> %u", m);
    CHECK(fx_targets_parse("key,attention.output.dense,intermediate.dense,output.dense", &m) == 0 &&
          m == (FX_T_KEY | FX_T_ATTN_OUT | FX_T_INTER | FX_T_OUTPUT), "full names -> %u", m);
    CHECK(fx_targets_parse("query,dense", &m) == -1 && strstr(fx_err(), "\"dense\""), "unknown target: %s", fx_err());
    CHECK(fx_targets_parse("", &m) == -1, "an empty list is refused");
}

static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

static void check_config(void) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/fedex_cfg_%ld.json", (long)getpid());
    const char *good = "{\"vocab_size\": 50265, \"hidden_size\": 768, \"num_hidden_layers\": 12,"
                       " \"num_attention_heads\": 12, \"intermediate_size\": 3072, \"max_position_embeddings\": 514,"
                       " \"type_vocab_size\": 1, \"pad_token_id\": 1, \"layer_norm_eps\": 1e-05,"
                       " \"hidden_dropout_prob\": 0.1, \"attention_probs_dropout_prob\": 0.1, \"classifier_dropout\": null,"
                       " \"initializer_range\": 0.02, \"hidden_act\": \"gelu\","
                       " \"id2label\": {\"0\": \"a\", \"1\": \"b\", \"2\": \"c\"}}";
    fx_config c;
    CHECK(write_text(path, good) == 0, "cannot write %s", path);
    int rc = fx_config_load(path, &c);
    CHECK(rc == 0, "roberta-base config: %s", fx_err());
    if (rc == 0)
        CHECK(c.hidden == 768 && c.layers == 12 && c.heads == 12 && c.intermediate == 3072 && c.pad_id == 1 &&
              c.num_labels == 3 && c.layer_norm_eps == 1e-5f && c.classifier_dropout == 0.1f,
              "roberta-base config read wrong");
    CHECK(write_text(path, "{\"vocab_size\": 50, \"hidden_size\": 10, \"num_hidden_layers\": 1,"
                           " \"num_attention_heads\": 3, \"intermediate_size\": 8, \"max_position_embeddings\": 20}") == 0,
          "write");
    CHECK(fx_config_load(path, &c) == -1 && strstr(fx_err(), path) && strstr(fx_err(), "num_attention_heads"),
          "hidden not a multiple of heads: %s", fx_err());
    CHECK(write_text(path, "{\"vocab_size\": 50, \"hidden_size\": 16, \"num_hidden_layers\": 1,"
                           " \"num_attention_heads\": 2, \"intermediate_size\": 8, \"max_position_embeddings\": 20,"
                           " \"hidden_act\": \"relu\"}") == 0, "write");
    CHECK(fx_config_load(path, &c) == -1 && strstr(fx_err(), "hidden_act"), "relu refused: %s", fx_err());
    CHECK(write_text(path, "{\"vocab_size\": 50, \"hidden_size\": 16, \"num_hidden_layers\": 1,"
                           " \"num_attention_heads\": 2, \"intermediate_size\": 8}") == 0, "write");
    CHECK(fx_config_load(path, &c) == -1 && strstr(fx_err(), "max_position_embeddings"), "missing field: %s", fx_err());
    CHECK(write_text(path, "{\"vocab_size\": 50, \"hidden_size\": 16, \"num_hidden_layers\": 1,"
                           " \"num_attention_heads\": 2, \"intermediate_size\": 8, \"max_position_embeddings\": 20,"
                           " \"hidden_dropout_prob\": 1.0}") == 0, "write");
    CHECK(fx_config_load(path, &c) == -1 && strstr(fx_err(), "hidden_dropout_prob"), "dropout 1: %s", fx_err());
    CHECK(write_text(path, "{\"vocab_size\": 50,") == 0, "write");
    CHECK(fx_config_load(path, &c) == -1 && strstr(fx_err(), path), "bad JSON: %s", fx_err());
    unlink(path);
}

static void check_bad_batch(void) {
    fx_config c = tiny_config(3, 0);
    fx_model m;
    make_model(&m, &c, FX_LORA, 63, 0);
    int32_t ids[NB * TB]; uint8_t mask[NB * TB]; float labels[NB]; fx_batch b;
    make_batch(&b, ids, mask, labels, 3);
    ids[3] = 50;
    CHECK(isnan(fx_model_step(&m, &b, 0, NULL)) && strstr(fx_err(), "vocabulary"), "id out of range: %s", fx_err());
    ids[3] = 5;
    labels[1] = 3;
    CHECK(isnan(fx_model_step(&m, &b, 1, NULL)) && strstr(fx_err(), "label"), "label out of range: %s", fx_err());
    fx_model_free(&m);
}

int main(void) {
    check_targets();
    check_config();
    check_schedule();
    check_zero_adapter(FX_LORA);
    check_zero_adapter(FX_VERA);
    check_padding();
    check_residual(FX_LORA);
    check_residual(FX_VERA);
    check_modes_and_threads();
    check_bad_batch();
    check_gradients("LoRA, 3 classes", FX_LORA, 3, 0, 0);
    check_gradients("LoRA, regression", FX_LORA, 1, 0, 0);
    check_gradients("FFA-LoRA, 2 classes, dropout 0.1", FX_LORA, 2, 0.1f, 1);
    check_gradients("VeRA, 3 classes", FX_VERA, 3, 0, 0);
    check_gradients("VeRA frozen d, dropout 0.1", FX_VERA, 2, 0.1f, 1);
    check_adamw();
    return check_done();
}
