/* tests/test_pack.c: packed batches. The CPU attention op against a direct double-precision reference
 * (rows of several lengths, longer than one query block, bidirectional and causal), its backward against
 * the reference's and, with dropout, against finite differences of its own forward (the masks drawn
 * again in backward must be the forward's); what it keeps per call (O(N nh), not O(n nh T^2)); and whole
 * models (RoBERTa with LoRA, GPT-2 with VeRA, Llama with grouped-query attention and SORF-VeRA, every
 * dropout on): the same rows padded to different widths give the same logits, loss and gradients, and a
 * batch gives each row what it gives that row alone. */
#include "../fedex.h"
#include "check.h"

#include <string.h>

/* ---------------------------------------------------------------- tolerances
 *
 *   what                               bound            why
 *   attention vs double reference      ATT_TOL abs      fp32 products over <= 600 keys of hd = 8 with
 *                                                       |q.k| ~ 3: each score and output ~1e-6 off; 1e-4
 *                                                       leaves room and catches a wrong block or key range
 *                                                       (errors ~0.1).
 *   attention gradient vs FD           ATT_FD_RTOL      central differences with h = 1e-2 of a double sum
 *                                      of |fd|, plus    of fp32 outputs: a perturbation moves <= 600 rows,
 *                                      ATT_FD_ATOL      rounding ~1e-6 * 600 / 2h ~ 3e-2 at worst, truncation
 *                                                       ~h^2; a mask not redrawn exactly moves the
 *                                                       derivative by O(1).
 *   padded to T vs to T + 9            bitwise equal    the packed layout, each op's shapes and every
 *                                                       dropout stream depend on the rows' real tokens,
 *                                                       never on T: no operation changes.
 *   batch vs each row alone            ROW_TOL x max    a row's per-token results take the same sums
 *                                      |value|          (matmul rows may take another micro-kernel path:
 *                                                       reordered fp32, ~1e-7 relative); the gradients'
 *                                                       sums over tokens change order (batch: one product
 *                                                       over all N tokens; alone: n products, then their
 *                                                       mean), ~1e-6 relative. 1e-4 of the tensor's largest
 *                                                       value leaves room; a wrong row is O(1).
 */
#define ATT_TOL 1e-4
#define ATT_FD_H 1e-2f
#define ATT_FD_RTOL 3e-2
#define ATT_FD_ATOL 3e-2
#define ROW_TOL 1e-4
#define PRUNE_TOL 1e-6

/* ---------------------------------------------------------------- the attention op */

/* The reference: per row and head, double precision, S = q k^T / sqrt(hd) over the row's keys (causal:
 * j <= i), P = softmax(S), ctx = P v; backward dP = dctx v^T, dS = P (dP - rowsum(dP P)) / sqrt(hd),
 * dq = dS k, dk = dS^T q, dv = P^T dctx. */
static void ref_attention(double *ctx, double *dq, double *dk, double *dv, const float *q, const float *k,
                          const float *v, const float *dctx, const int32_t *off, int n, int H, int nh, int causal) {
    int hd = H / nh;
    size_t N = (size_t)off[n];
    memset(dq, 0, N * H * sizeof *dq); memset(dk, 0, N * H * sizeof *dk); memset(dv, 0, N * H * sizeof *dv);
    for (int b = 0; b < n; b++) {
        int o = off[b], len = off[b + 1] - o;
        double *P = fx_malloc((size_t)len * sizeof *P), *dP = fx_malloc((size_t)len * sizeof *dP);
        for (int h = 0; h < nh; h++)
            for (int i = 0; i < len; i++) {
                int lim = causal ? i + 1 : len;
                const float *qi = q + (size_t)(o + i) * H + h * hd;
                double mx = -INFINITY, sum = 0, dot = 0;
                for (int j = 0; j < lim; j++) {
                    double s = 0;
                    for (int d = 0; d < hd; d++) s += (double)qi[d] * k[(size_t)(o + j) * H + h * hd + d];
                    P[j] = s / sqrt((double)hd);
                    if (P[j] > mx) mx = P[j];
                }
                for (int j = 0; j < lim; j++) { P[j] = exp(P[j] - mx); sum += P[j]; }
                for (int j = 0; j < lim; j++) P[j] /= sum;
                const float *gi = dctx + (size_t)(o + i) * H + h * hd;
                for (int d = 0; d < hd; d++) {
                    double c = 0;
                    for (int j = 0; j < lim; j++) c += P[j] * v[(size_t)(o + j) * H + h * hd + d];
                    ctx[(size_t)(o + i) * H + h * hd + d] = c;
                }
                for (int j = 0; j < lim; j++) {
                    double s = 0;
                    for (int d = 0; d < hd; d++) s += (double)gi[d] * v[(size_t)(o + j) * H + h * hd + d];
                    dP[j] = s;
                    dot += s * P[j];
                }
                for (int j = 0; j < lim; j++) {
                    double ds = P[j] * (dP[j] - dot) / sqrt((double)hd);
                    for (int d = 0; d < hd; d++) {
                        dq[(size_t)(o + i) * H + h * hd + d] += ds * k[(size_t)(o + j) * H + h * hd + d];
                        dk[(size_t)(o + j) * H + h * hd + d] += ds * qi[d];
                        dv[(size_t)(o + j) * H + h * hd + d] += P[j] * gi[d];
                    }
                }
            }
        free(P); free(dP);
    }
}

static void to_float(float *out, const double *x, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = (float)x[i];
}

/* L = sum(ctx * G) of the op's forward (dropout p at SITE). */
static double att_objective(const fx_ops *op, float *ctx, float *keep, const float *q, const float *k, const float *v,
                            const float *G, const int32_t *off, int n, int T, int H, int nh, int causal, float p,
                            uint64_t site) {
    op->attention_forward(ctx, keep, q, k, v, off, n, T, H, nh, causal, 0, p, site);
    double s = 0;
    for (size_t i = 0; i < (size_t)off[n] * H; i++) s += (double)ctx[i] * G[i];
    return s;
}

static void test_attention_op(void) {
    const fx_ops *op = &fx_cpu_ops;
    enum { n = 4, H = 16, nh = 2 };
    const int lens[n] = {600, 1, 300, 256};   /* blocks of 256 queries: two and a part, one token, one and a bit, one */
    int32_t off[n + 1] = {0};
    int T = 0;
    for (int b = 0; b < n; b++) { off[b + 1] = off[b] + lens[b]; if (lens[b] > T) T = lens[b]; }
    size_t N = (size_t)off[n], NH = N * H;
    CHECK(op->attention_keep(n, T, (int)N, nh, 1) == 2 * N * nh,
          "the CPU keeps the softmax's maximum and 1/sum per (token, head), not (n, nh, T, T)");
    float *q = fx_malloc(NH * sizeof *q), *k = fx_malloc(NH * sizeof *k), *v = fx_malloc(NH * sizeof *v);
    float *G = fx_malloc(NH * sizeof *G), *ctx = fx_malloc(NH * sizeof *ctx);
    float *dq = fx_malloc(NH * sizeof *dq), *dk = fx_malloc(NH * sizeof *dk), *dv = fx_malloc(NH * sizeof *dv);
    float *keep = fx_malloc(op->attention_keep(n, T, (int)N, nh, 1) * sizeof *keep), *want = fx_malloc(NH * sizeof *want);
    double *rc = fx_malloc(NH * sizeof *rc), *rq = fx_malloc(NH * sizeof *rq), *rk = fx_malloc(NH * sizeof *rk),
           *rv = fx_malloc(NH * sizeof *rv);
    fx_rng g;
    fx_rng_seed(&g, 77);
    for (size_t i = 0; i < NH; i++) {
        q[i] = (float)fx_rng_normal(&g); k[i] = (float)fx_rng_normal(&g);
        v[i] = (float)fx_rng_normal(&g); G[i] = (float)fx_rng_normal(&g);
    }
    for (int causal = 0; causal < 2; causal++) {
        ref_attention(rc, rq, rk, rv, q, k, v, G, off, n, H, nh, causal);
        op->attention_forward(ctx, keep, q, k, v, off, n, T, H, nh, causal, 0, 0.0f, 0);
        op->attention_backward(dq, dk, dv, G, q, k, v, keep, off, n, T, H, nh, causal, 0, 0.0f, 0);
        const char *kind = causal ? "causal" : "bidirectional";
        char what[96];
        struct { const char *name; const float *got; const double *ref; } outs[] = {
            {"ctx", ctx, rc}, {"dq", dq, rq}, {"dk", dk, rk}, {"dv", dv, rv}};
        for (int o = 0; o < 4; o++) {
            to_float(want, outs[o].ref, NH);
            snprintf(what, sizeof what, "attention %s: %s vs double reference", kind, outs[o].name);
            CHECK_CLOSE(what, outs[o].got, want, NH, ATT_TOL, 0);
        }
    }

    /* dropout: the backward's masks are the forward's, so its gradient is the derivative of the forward
     * (the same SITE); a few coordinates of q, k and v in rows 0 and 2, central differences */
    const float p = 0.3f;
    const uint64_t site = 0x1234567u;
    for (int causal = 0; causal < 2; causal++) {
        op->attention_forward(ctx, keep, q, k, v, off, n, T, H, nh, causal, 0, p, site);
        op->attention_backward(dq, dk, dv, G, q, k, v, keep, off, n, T, H, nh, causal, 0, p, site);
        float *xs[3] = {q, k, v}, *gs[3] = {dq, dk, dv};
        const size_t at[4] = {3, (size_t)599 * H + 11, (size_t)(601 + 5) * H + 2, (size_t)(601 + 299) * H + 15};
        for (int w = 0; w < 3; w++)
            for (int a = 0; a < 4; a++) {
                float *x = xs[w] + at[a], x0 = *x;
                *x = x0 + ATT_FD_H;
                double lp = att_objective(op, ctx, keep, q, k, v, G, off, n, T, H, nh, causal, p, site);
                *x = x0 - ATT_FD_H;
                double lm = att_objective(op, ctx, keep, q, k, v, G, off, n, T, H, nh, causal, p, site);
                *x = x0;
                double fd = (lp - lm) / (2 * ATT_FD_H), got = gs[w][at[a]];
                CHECK(fabs(got - fd) <= ATT_FD_ATOL + ATT_FD_RTOL * fabs(fd),
                      "attention dropout %s: d%c[%zu] = %.6g, finite differences %.6g", causal ? "causal" : "bidirectional",
                      "qkv"[w], at[a], got, fd);
            }
    }
    free(q); free(k); free(v); free(G); free(ctx); free(dq); free(dk); free(dv); free(keep); free(want);
    free(rc); free(rq); free(rk); free(rv);
}

/* ---------------------------------------------------------------- whole models */

typedef struct {
    const char *name;
    const fx_family *fam;
    fx_adapter_kind kind;
    unsigned targets;
    int kv_heads;
} mcase;

static int model_layers = 2; /* the models' depth */
static int make_model(fx_model *m, const mcase *k, float drop) {
    fx_config c;
    memset(&c, 0, sizeof c);
    c.family = k->fam;
    c.vocab_size = 40; c.hidden = 16; c.layers = model_layers; c.heads = 4; c.intermediate = 32;
    c.max_positions = 48; c.type_vocab_size = 1; c.pad_id = 1; c.layer_norm_eps = 1e-5f;
    c.initializer_range = 0.02f; c.kv_heads = k->kv_heads; c.rope_theta = 10000.0f;
    c.num_labels = k->fam == &fx_roberta ? 3 : 1;
    c.hidden_dropout = c.classifier_dropout = c.embed_dropout = k->fam == &fx_llama ? 0.0f : drop;
    c.attention_dropout = drop;
    c.label_smoothing = 0.1f;
    c.untied_head = k->fam == &fx_llama;
    fx_adapter_cfg a;
    memset(&a, 0, sizeof a);
    a.kind = k->kind; a.targets = k->targets; a.r = 4; a.alpha = 8.0f; a.dropout = drop; a.d_initial = 0.1f;
    a.seed = 5; a.proj_key = 11; a.sorf_seed = 13;
    if (fx_model_create(m, &c, &a, NULL) != 0) { CHECK(0, "%s: %s", k->name, fx_err()); return -1; }
    fx_model_init_base(m, 21);
    fx_model_init_adapters(m, 23);
    /* adapters and head away from their zero start, so every path carries a gradient */
    fx_rng g;
    fx_rng_seed(&g, 29);
    for (size_t i = 0; i < m->train.n; i++) m->train.data[i] += 0.2f * (float)fx_rng_normal(&g);
    for (size_t i = 0; i < m->base.n; i++) m->base.data[i] += 0.05f * (float)fx_rng_normal(&g);
    return 0;
}

/* Rows [first, first + n) of the case's fixed rows, padded to T (>= the longest). */
enum { NROWS = 5 };
static const int ROW_LEN[NROWS] = {7, 12, 3, 9, 12};
static void make_batch(fx_batch *b, const fx_model *m, int first, int n, int T) {
    memset(b, 0, sizeof *b);
    b->n = n; b->T = T;
    b->ids = fx_calloc((size_t)n * T, sizeof *b->ids);
    b->mask = fx_calloc((size_t)n * T, 1);
    b->labels = fx_calloc((size_t)n, sizeof *b->labels);
    int lm = m->fam->head_kind == FX_HEAD_LM;
    if (lm) b->targets = fx_calloc((size_t)n * T, sizeof *b->targets);
    for (int i = 0; i < n; i++) {
        int r = first + i;
        fx_rng g;
        fx_rng_seed(&g, 100 + (uint64_t)r);
        for (int t = 0; t < T; t++) {
            size_t x = (size_t)i * T + t;
            int real = t < ROW_LEN[r];
            b->ids[x] = real ? (t == 0 ? 0 : 3 + (int32_t)(fx_rng_u64(&g) % (uint64_t)(m->c.vocab_size - 3))) : m->c.pad_id;
            b->mask[x] = (uint8_t)real;
            if (lm) b->targets[x] = real && t >= 2 ? b->ids[x] : FX_IGNORE; /* a two-token prompt unscored */
        }
        b->labels[i] = (float)(r % 3);
    }
}
static void free_batch(fx_batch *b) { free(b->ids); free(b->mask); free(b->labels); free(b->targets); }

/* The logits of row i of a step's output (n, L) or (n, T, V), its real positions only, into OUT. */
static size_t row_logits(const fx_model *m, const float *z, int i, int T, int len, float *out) {
    if (m->fam->head_kind != FX_HEAD_LM) {
        memcpy(out, z + (size_t)i * m->c.num_labels, (size_t)m->c.num_labels * sizeof *out);
        return (size_t)m->c.num_labels;
    }
    size_t V = (size_t)m->c.vocab_size;
    memcpy(out, z + (size_t)i * T * V, (size_t)len * V * sizeof *out);
    return (size_t)len * V;
}

static void check_scaled(const char *what, const float *got, const float *want, size_t n) {
    double mx = 0;
    for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs((double)want[i]));
    CHECK_CLOSE(what, got, want, n, ROW_TOL * mx, 0);
}

static void test_model_case(const mcase *k) {
    fx_model m;
    if (make_model(&m, k, 0.1f) != 0) return;
    int lm = m.fam->head_kind == FX_HEAD_LM, Tmax = 12;
    size_t per = lm ? (size_t)m.c.vocab_size : (size_t)m.c.num_labels;
    char what[320];

    /* padding: T = 12 and T = 21, dropout on, the stream restarted at the same state */
    const int widths[2] = {Tmax, Tmax + 9};
    float *z[2], loss[2], *grad[2];
    fx_rng start = m.drop;
    for (int w = 0; w < 2; w++) {
        fx_batch b;
        make_batch(&b, &m, 0, NROWS, widths[w]);
        z[w] = fx_calloc((size_t)NROWS * (lm ? (size_t)widths[w] : 1) * per, sizeof(float));
        m.drop = start;
        loss[w] = fx_model_step(&m, &b, 1, z[w]);
        grad[w] = fx_malloc(m.train.n * sizeof(float));
        memcpy(grad[w], m.grad, m.train.n * sizeof(float));
        free_batch(&b);
    }
    CHECK(isfinite(loss[0]) && loss[0] == loss[1], "%s: loss padded to %d %.9g, to %d %.9g", k->name, widths[0],
          (double)loss[0], widths[1], (double)loss[1]);
    int same = 1;
    float *a = fx_malloc((size_t)Tmax * per * sizeof *a), *bz = fx_malloc((size_t)Tmax * per * sizeof *bz);
    for (int i = 0; i < NROWS; i++) {
        size_t cnt = row_logits(&m, z[0], i, widths[0], ROW_LEN[i], a);
        row_logits(&m, z[1], i, widths[1], ROW_LEN[i], bz);
        same &= memcmp(a, bz, cnt * sizeof *a) == 0;
    }
    CHECK(same, "%s: logits differ between padding to %d and to %d (dropout on)", k->name, widths[0], widths[1]);
    CHECK(memcmp(grad[0], grad[1], m.train.n * sizeof(float)) == 0, "%s: gradients differ between padding to %d and %d",
          k->name, widths[0], widths[1]);
    if (lm) {
        int zero = 1;
        for (int i = 0; i < NROWS; i++)
            for (size_t x = (size_t)ROW_LEN[i] * per; x < (size_t)widths[1] * per; x++)
                zero &= z[1][(size_t)i * widths[1] * per + x] == 0.0f;
        CHECK(zero, "%s: logits on padding are not zero", k->name);
    }
    for (int w = 0; w < 2; w++) { free(z[w]); free(grad[w]); }
    fx_model_free(&m);

    /* a batch against its rows alone, dropout off: each row's logits, and the batch's gradient against
     * the rows' gradients weighted as the batch's mean weighs them */
    if (make_model(&m, k, 0.0f) != 0) { free(a); free(bz); return; }
    fx_batch b;
    make_batch(&b, &m, 0, NROWS, Tmax + 3);
    float *zb = fx_calloc((size_t)NROWS * (lm ? (size_t)(Tmax + 3) : 1) * per, sizeof(float));
    fx_model_step(&m, &b, 1, zb);
    float *gb = fx_malloc(m.train.n * sizeof *gb), *gsum = fx_calloc(m.train.n, sizeof *gsum);
    memcpy(gb, m.grad, m.train.n * sizeof *gb);
    double total = 0;                     /* the batch's weights: rows (classifier), scored tokens (LM) */
    int count[NROWS];
    for (int i = 0; i < NROWS; i++) { count[i] = lm ? ROW_LEN[i] - 2 : 1; total += count[i]; }
    for (int i = 0; i < NROWS; i++) {
        fx_batch one;
        make_batch(&one, &m, i, 1, ROW_LEN[i]);
        float *z1 = fx_calloc((size_t)(lm ? ROW_LEN[i] : 1) * per, sizeof(float));
        fx_model_step(&m, &one, 1, z1);
        for (size_t j = 0; j < m.train.n; j++) gsum[j] += (float)(m.grad[j] * (count[i] / total));
        size_t cnt = row_logits(&m, zb, i, Tmax + 3, ROW_LEN[i], a);
        snprintf(what, sizeof what, "%s: row %d's logits in the batch vs alone", k->name, i);
        check_scaled(what, a, z1, cnt);
        free(z1);
        free_batch(&one);
    }
    for (int t = 0; t < m.train.nt; t++) {
        const fx_tensor *ts = &m.train.t[t];
        if (ts->frozen) continue;
        snprintf(what, sizeof what, "%s: gradient %s of the batch vs the rows' weighted sum", k->name, ts->name);
        check_scaled(what, gb + ts->off, gsum + ts->off, ts->n);
    }
    free(zb); free(gb); free(gsum); free(a); free(bz);
    free_batch(&b);
    fx_model_free(&m);
}

/* A classifier's last layer runs on the rows its head reads (cls_pruned in model.c): against the same
 * model on a table without dropout_mask_rows, which runs that layer on every token, every dropout on and
 * every target adapted, 1 and 2 layers, LoRA, VeRA and SORF-VeRA. The same dropout rows are drawn, so
 * the logits and loss agree to PRUNE_TOL and every gradient to PRUNE_TOL of its tensor's largest value;
 * the pruned step's workspace is smaller (the pruning took place). */
static void test_pruned_last_layer(void) {
    const fx_adapter_kind kinds[3] = {FX_LORA, FX_VERA, FX_SORF};
    const char *names[3] = {"LoRA", "VeRA", "SORF-VeRA"};
    fx_ops full_ops = fx_cpu_ops;
    full_ops.dropout_mask_rows = NULL;
    for (int layers = 1; layers <= 2; layers++)
        for (int k = 0; k < 3; k++) {
            mcase mc = {names[k], &fx_roberta, kinds[k],
                        FX_T_QUERY | FX_T_KEY | FX_T_VALUE | FX_T_ATTN_OUT | FX_T_INTER | FX_T_OUTPUT, 0};
            fx_model m[2];
            model_layers = layers;
            int bad = make_model(&m[0], &mc, 0.1f) != 0 || make_model(&m[1], &mc, 0.1f) != 0;
            model_layers = 2;
            if (bad) return;
            m[1].ops = &full_ops;
            float z[2][NROWS * 3], loss[2];
            for (int s = 0; s < 2; s++) {
                fx_batch b;
                make_batch(&b, &m[s], 0, NROWS, 14);
                loss[s] = fx_model_step(&m[s], &b, 1, z[s]);
                free_batch(&b);
            }
            char what[320];
            snprintf(what, sizeof what, "%s, %d layer(s): logits of the pruned last layer", names[k], layers);
            CHECK_CLOSE(what, z[0], z[1], NROWS * 3, PRUNE_TOL, 0);
            CHECK(isfinite(loss[0]) && fabs(loss[0] - loss[1]) <= PRUNE_TOL, "%s, %d layer(s): loss %.9g, unpruned %.9g",
                  names[k], layers, (double)loss[0], (double)loss[1]);
            for (int t = 0; t < m[0].train.nt; t++) {
                const fx_tensor *ts = &m[0].train.t[t];
                if (ts->frozen) continue;
                double mx = 0;
                for (size_t i = 0; i < ts->n; i++) mx = fmax(mx, fabs((double)m[1].grad[ts->off + i]));
                snprintf(what, sizeof what, "%s, %d layer(s): gradient %s, pruned vs every token", names[k], layers,
                         ts->name);
                CHECK(mx > 0, "%s is zero", what);
                CHECK_CLOSE(what, m[0].grad + ts->off, m[1].grad + ts->off, ts->n, PRUNE_TOL * mx, 0);
            }
            CHECK(fx_model_workspace_bytes(&m[0]) < fx_model_workspace_bytes(&m[1]),
                  "%s, %d layer(s): the pruned step's workspace (%zu bytes) is not below the full one's (%zu)", names[k],
                  layers, fx_model_workspace_bytes(&m[0]), fx_model_workspace_bytes(&m[1]));
            fx_model_free(&m[0]);
            fx_model_free(&m[1]);
        }
}

/* A batch whose row has no real token is refused (the classifier reads each row's first). */
static void test_refusals(void) {
    mcase k = {"roberta", &fx_roberta, FX_LORA, FX_T_QUERY | FX_T_VALUE, 0};
    fx_model m;
    if (make_model(&m, &k, 0.0f) != 0) return;
    fx_batch b;
    make_batch(&b, &m, 0, 2, 12);
    memset(b.mask + 12, 0, 12);
    CHECK(isnan(fx_model_step(&m, &b, 0, NULL)) && strstr(fx_err(), "no real token"), "empty row: %s", fx_err());
    free_batch(&b);
    fx_model_free(&m);
}

int main(void) {
    test_attention_op();
    const mcase cases[] = {
        {"roberta + LoRA", &fx_roberta, FX_LORA, FX_T_QUERY | FX_T_VALUE | FX_T_INTER | FX_T_OUTPUT, 0},
        {"gpt2 + VeRA", &fx_gpt2, FX_VERA, FX_T_QKV | FX_T_ATTN_OUT | FX_T_INTER, 0},
        {"llama (GQA) + SORF-VeRA", &fx_llama, FX_SORF, FX_T_QUERY | FX_T_VALUE | FX_T_GATE, 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) test_model_case(&cases[i]);
    test_pruned_last_layer();
    test_refusals();
    return check_done();
}
