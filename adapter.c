/* adapter.c: LoRA, FFA-LoRA, VeRA and SORF-VeRA: the one table of adaptable targets (fedex's and PEFT's names, dims),
 * the adapter tensors and their initialisation, each adapter's forward and backward as calls on the ops.
 * No file I/O (checkpoint.c), no dW (agg.c's fx_delta_w) and no SORF math beyond calling it (sorf.c). */
#include "fedex.h"

#include <math.h>
#include <string.h>

/* ============================================================================================
 * the target table
 * ============================================================================================ */

/* Index t is the bit's position: FX_T_QUERY is 1 << 0, ..., FX_T_GATE is 1 << 7. PEFT names the
 * attention projections by their last component and the dense layers by their path. The names here are
 * RoBERTa's (and GPT-2's c_attn); each family gives its own paths (fx_family.target_path). */
const fx_target fx_targets[FX_NTARGETS] = {
    {FX_T_QUERY, "query", NULL, "query", "attention.self.query", 'H', 'H', FX_LT_QW, FX_LT_QB},
    {FX_T_KEY, "key", NULL, "key", "attention.self.key", 'H', 'H', FX_LT_KW, FX_LT_KB},
    {FX_T_VALUE, "value", NULL, "value", "attention.self.value", 'H', 'H', FX_LT_VW, FX_LT_VB},
    {FX_T_ATTN_OUT, "attention.output.dense", "attn_out", "attention.output.dense", "attention.output.dense",
     'H', 'H', FX_LT_AOW, FX_LT_AOB},
    {FX_T_INTER, "intermediate.dense", "intermediate", "intermediate.dense", "intermediate.dense", 'I', 'H',
     FX_LT_IW, FX_LT_IB},
    {FX_T_OUTPUT, "output.dense", "output", "output.dense", "output.dense", 'H', 'I', FX_LT_OW, FX_LT_OB},
    {FX_T_QKV, "c_attn", NULL, "c_attn", "attn.c_attn", '3', 'H', FX_LT_QKVW, FX_LT_QKVB},
    {FX_T_GATE, "gate_proj", NULL, "gate_proj", "mlp.gate_proj", 'I', 'H', FX_LT_GATEW, FX_LT_GATEB},
};

/* GPT-2's and Llama's names for the targets they share with RoBERTa's slots. PEFT's "c_proj" is a suffix of both
 * attn.c_proj and mlp.c_proj, so it stands for the two. */
static const struct { const char *name; unsigned bits; } family_names[] = {
    {"c_proj", FX_T_ATTN_OUT | FX_T_OUTPUT}, {"attn.c_proj", FX_T_ATTN_OUT}, {"mlp.c_proj", FX_T_OUTPUT},
    {"c_fc", FX_T_INTER}, {"mlp.c_fc", FX_T_INTER}, {"attn.c_attn", FX_T_QKV},
    /* Llama's PEFT names (q, k, v, o_proj in self_attn; gate, up, down_proj in mlp) */
    {"q_proj", FX_T_QUERY}, {"k_proj", FX_T_KEY}, {"v_proj", FX_T_VALUE}, {"o_proj", FX_T_ATTN_OUT},
    {"up_proj", FX_T_INTER}, {"down_proj", FX_T_OUTPUT},
};

/* The table's 'H' is the hidden width for RoBERTa and GPT-2. With grouped-query attention and a head_dim
 * of its own (Llama), q is (heads hd, H), k and v (kv_heads hd, H) and the attention output (H, heads hd);
 * without them these are all H. */
void fx_target_dims(const fx_config *c, int t, int *out, int *in) {
    char o = fx_targets[t].out, i = fx_targets[t].in;
    int hd = c->head_dim ? c->head_dim : c->hidden / c->heads, kv = c->kv_heads ? c->kv_heads : c->heads;
    *out = o == 'I' ? c->intermediate : o == '3' ? 3 * c->hidden : c->hidden;
    *in = i == 'I' ? c->intermediate : c->hidden;
    if (t == FX_TI_QUERY) *out = c->heads * hd;
    if (t == FX_TI_KEY || t == FX_TI_VALUE) *out = kv * hd;
    if (t == FX_TI_ATTN_OUT) *in = c->heads * hd;
}

static int names(const char *name, const char *s, size_t e) {
    return name && strlen(name) == e && memcmp(s, name, e) == 0;
}

int fx_targets_parse(const char *list, unsigned *mask) {
    unsigned m = 0;
    const char *s = list;
    for (;;) {
        while (*s == ' ') s++;
        size_t n = strcspn(s, ",");
        size_t e = n;
        while (e > 0 && s[e - 1] == ' ') e--;
        unsigned found = 0;
        for (int t = 0; t < FX_NTARGETS; t++)
            if (names(fx_targets[t].name, s, e) || names(fx_targets[t].alias, s, e)) found = fx_targets[t].bit;
        for (size_t g = 0; g < sizeof family_names / sizeof family_names[0]; g++)
            if (names(family_names[g].name, s, e)) found = family_names[g].bits;
        if (!found) {
            fx_seterr("target modules \"%s\": unknown target \"%.*s\" (known: query, key, value, "
                      "attention.output.dense or attn_out, intermediate.dense or intermediate, "
                      "output.dense or output; GPT-2's c_attn, c_proj, attn.c_proj, mlp.c_proj, c_fc; Llama's q_proj, "
                      "k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)", list,
                      (int)e, s);
            return -1;
        }
        m |= found;
        if (s[n] == 0) break;
        s += n + 1;
    }
    *mask = m;
    return 0;
}

/* ============================================================================================
 * tensors and initialisation
 * ============================================================================================ */

int fx_adapter_check(const fx_adapter_cfg *a) {
    if (a->kind != FX_LORA && a->kind != FX_VERA && a->kind != FX_SORF) { fx_seterr("adapter: unknown kind %d", (int)a->kind); return -1; }
    if (a->targets & ~((1u << FX_NTARGETS) - 1)) { fx_seterr("adapter: unknown target bits 0x%x", a->targets); return -1; }
    if (a->targets && (a->r < 1 || a->r > 65536)) { fx_seterr("adapter: rank %d must be in [1, 65536]", a->r); return -1; }
    if (!(a->dropout >= 0 && a->dropout < 1)) { fx_seterr("adapter: dropout %g must be in [0, 1)", a->dropout); return -1; }
    if (!isfinite(a->alpha) || !isfinite(a->d_initial)) { fx_seterr("adapter: alpha and d_initial must be finite"); return -1; }
    return 0;
}

int fx_adapter_build(fx_model *m) {
    const fx_config *c = &m->c;
    const fx_adapter_cfg *a = &m->a;
    char name[160], pre[32];
    m->ad = fx_calloc((size_t)c->layers * FX_NTARGETS, sizeof *m->ad);
    for (int l = 0; l < c->layers; l++)
        for (int t = 0; t < FX_NTARGETS; t++) {
            fx_linear_view *lv = &m->layer[l].lin[t];
            lv->ad = -1;
            if (!(a->targets & fx_targets[t].bit)) continue;
            fx_adapted *ad = &m->ad[m->nadapted];
            lv->ad = m->nadapted++;
            snprintf(pre, sizeof pre, m->fam->layer_fmt, l);
            snprintf(ad->name, sizeof ad->name, "%s%s", pre, m->fam->target_path[t]);
            for (int i = 0; i < m->fam->nlayer; i++)
                if (m->fam->layer[i].role == fx_targets[t].w_role) ad->conv1d = m->fam->layer[i].conv1d;
            ad->layer = l;
            ad->target = (int)fx_targets[t].bit;
            ad->out = lv->out;
            ad->in = lv->in;
            ad->w_off = lv->w;
            if (a->kind == FX_LORA) {
                snprintf(name, sizeof name, "%s.lora_A", ad->name);
                ad->a_off = m->train.n;
                fx_params_add(&m->train, name, a->r, ad->in, a->freeze_a);
                snprintf(name, sizeof name, "%s.lora_B", ad->name);
                ad->b_off = m->train.n;
                fx_params_add(&m->train, name, ad->out, a->r, 0);
            } else if (a->kind == FX_SORF) {
                /* the VeRA fork's names; b (Gamma's a, then c) is set by the server, frozen on clients */
                if (ad->out % 2 || a->r > ad->out || a->r > ad->in) {
                    fx_seterr("SORF-VeRA on %s (%d x %d): needs an even output width (Gamma's 2x2 blocks) and "
                              "r %d <= both widths (the server's refit)", ad->name, ad->out, ad->in, a->r);
                    return -1;
                }
                snprintf(name, sizeof name, "%s.sorf_d_scale", ad->name);
                ad->a_off = m->train.n;
                fx_params_add(&m->train, name, 1, 0, 0);
                snprintf(name, sizeof name, "%s.sorf_d_angles", ad->name);
                fx_params_add(&m->train, name, a->r * (a->r - 1) / 2, 0, 0);
                snprintf(name, sizeof name, "%s.sorf_b_real", ad->name);
                ad->b_off = m->train.n;
                fx_params_add(&m->train, name, ad->out / 2, 0, 1);
                snprintf(name, sizeof name, "%s.sorf_b_imag", ad->name);
                fx_params_add(&m->train, name, ad->out / 2, 0, 1);
                if (ad->in > m->vera_in) m->vera_in = ad->in;
                if (ad->out > m->vera_out) m->vera_out = ad->out;
                if (!fx_sorf_of(m, ad->out)) fx_sorf_mixer_build(&m->sorf[m->nsorf++], ad->out, a->sorf_seed);
            } else {
                snprintf(name, sizeof name, "%s.vera_lambda_d", ad->name);
                ad->a_off = m->train.n;
                fx_params_add(&m->train, name, a->r, 0, a->freeze_d);
                snprintf(name, sizeof name, "%s.vera_lambda_b", ad->name);
                ad->b_off = m->train.n;
                fx_params_add(&m->train, name, ad->out, 0, 0);
                if (ad->in > m->vera_in) m->vera_in = ad->in;
                if (ad->out > m->vera_out) m->vera_out = ad->out;
            }
        }
    if (a->kind != FX_LORA && m->nadapted) {
        /* PEFT's _init_vera_A_vera_B: one torch.Generator seeded with projection_prng_key draws vera_A
         * (r, in_max) then vera_B (out_max, r), each with PEFT's _kaiming_init, uniform in +-bound with
         * bound = sqrt(3) * sqrt(2) / sqrt(fan_in) = sqrt(6 / fan_in), fan_in = size(1): in_max for
         * vera_A, r for vera_B. fx_mt reproduces torch's CPU stream, so these are PEFT's projections bit
         * for bit, and every client holds the same ones, which VeRA's aggregation relies on. */
        size_t na = (size_t)m->a.r * m->vera_in, nb = (size_t)m->vera_out * m->a.r;
        m->vera_A = fx_malloc(na * sizeof(float));
        m->vera_B = fx_malloc(nb * sizeof(float));
        fx_mt g;
        fx_mt_seed(&g, a->proj_key);
        double ba = sqrt(3.0) * (sqrt(2.0) / sqrt((double)m->vera_in));
        double bb = sqrt(3.0) * (sqrt(2.0) / sqrt((double)m->a.r));
        fx_mt_uniform(&g, m->vera_A, na, -ba, ba);
        fx_mt_uniform(&g, m->vera_B, nb, -bb, bb);
    }
    return 0;
}

void fx_model_init_adapters(fx_model *m, uint64_t seed) {
    fx_rng g;
    fx_rng_seed(&g, seed);
    for (int k = 0; k < m->nadapted; k++) {
        const fx_adapted *ad = &m->ad[k];
        float *A = m->train.data + ad->a_off, *B = m->train.data + ad->b_off;
        if (m->a.kind == FX_LORA) {
            double bound = 1.0 / sqrt((double)ad->in); /* kaiming_uniform(a=sqrt(5)) on (r, in) */
            for (size_t j = 0; j < (size_t)m->a.r * ad->in; j++) A[j] = (float)((2 * fx_rng_uniform(&g) - 1) * bound);
            memset(B, 0, (size_t)ad->out * m->a.r * sizeof *B);
        } else if (m->a.kind == FX_SORF) {
            /* s = d_initial, theta = 0, Gamma = I: dW starts at d_initial S B_l A_l, not at zero */
            A[0] = m->a.d_initial;
            memset(A + 1, 0, sizeof *A * (size_t)(m->a.r * (m->a.r - 1) / 2));
            for (int j = 0; j < ad->out; j++) B[j] = j < ad->out / 2 ? 1.0f : 0.0f;
        } else {
            for (int j = 0; j < m->a.r; j++) A[j] = m->a.d_initial;
            memset(B, 0, (size_t)ad->out * sizeof *B);
        }
    }
}

/* ============================================================================================
 * forward and backward
 * ============================================================================================ */

/* Adapter K on one dense layer, added to its output y (N, out) for input x (N, in):
 *   LoRA: y += s * (xd A^T) B^T,                        A (r, in), B (out, r)
 *   VeRA: y += lambda_b * ((lambda_d * (xd A_l^T)) B_l^T), A_l = vera_A[:, :in], B_l = vera_B[:out, :]
 *   SORF-VeRA: y += (((xd A_l^T) Lambda^T) B_l^T) Gamma^T S^T, Lambda = s G(theta) (r, r)
 * with xd = dropout(x) and z = xd A^T (N, r) kept for backward. */
void fx_adapter_forward(fx_model *m, int k, float *y /* (N, out) */, const float *x /* (N, in) */,
                        uint8_t *keep /* (N, in) or NULL */, float *z /* (N, r) */, int N,
                        const int32_t *rows /* (N) or NULL */, const fx_adapter_scratch *w) {
    const fx_ops *op = m->ops;
    const fx_adapted *ad = &m->ad[k];
    int r = m->a.r, in = ad->in, out = ad->out;
    const float *xd = x;
    if (keep) {
        uint64_t site = fx_rng_u64(&m->drop);
        if (rows) op->dropout_mask_rows(keep, rows, (size_t)N, (size_t)in, m->a.dropout, site);
        else op->dropout_mask(keep, (size_t)N, (size_t)in, m->a.dropout, site);
        op->dropout_apply(w->xd, x, keep, m->a.dropout, (size_t)N * in);
        xd = w->xd;
    }
    if (m->a.kind == FX_LORA) {
        const float *A = m->train.data + ad->a_off, *B = m->train.data + ad->b_off;
        op->matmul(0, 1, N, r, in, 1.0f, xd, in, A, in, 0.0f, z, r);
        op->matmul(0, 1, N, out, r, m->scale, z, r, B, r, 1.0f, y, out);
    } else if (m->a.kind == FX_SORF) {
        const float *sd = m->train.data + ad->a_off, *b = m->train.data + ad->b_off;
        op->matmul(0, 1, N, r, in, 1.0f, xd, in, m->vera_A, m->vera_in, 0.0f, z, r);
        op->givens_build(w->lam, sd, r);
        op->matmul(0, 1, N, r, r, 1.0f, z, r, w->lam, r, 0.0f, w->u, r);
        op->matmul(0, 1, N, out, r, 1.0f, w->u, r, m->vera_B, r, 0.0f, w->w, out);
        op->gamma_apply(w->w2, w->w, b, N, out, 0);
        fx_sorf_mix(op, fx_sorf_of(m, out), w->w2, w->w, w->w2, N, 0);
        op->axpy(y, 1.0f, w->w2, (size_t)N * out);
    } else {
        const float *ld = m->train.data + ad->a_off, *lb = m->train.data + ad->b_off;
        op->matmul(0, 1, N, r, in, 1.0f, xd, in, m->vera_A, m->vera_in, 0.0f, z, r);
        op->scale_cols(w->u, ld, z, (size_t)N * r, r);
        op->matmul(0, 1, N, out, r, 1.0f, w->u, r, m->vera_B, r, 0.0f, w->w, out);
        op->scale_cols_add(y, lb, w->w, (size_t)N * out, out);
    }
}

int fx_adapter_backward_reads_x(const fx_model *m) { return m->a.kind == FX_LORA && !m->a.freeze_a; }

/* Gradients of the adapter's trainable tensors from dy (N, out), and dx (N, in) += its share of the
 * input gradient (skipped when DX is NULL). LoRA: dB = s dy^T z, dz = s dy B, dA = dz^T xd,
 * dxd = dz A. VeRA: with u = lambda_d * z, v = u B_l^T: dlambda_b = colsum(dy * v), du = (dy * lambda_b) B_l,
 * dlambda_d = colsum(du * z), dz = du * lambda_d, dxd = dz A_l. dx += dropout backward of dxd. */
void fx_adapter_backward(fx_model *m, int k, float *dx /* (N, in) or NULL */, const float *dy /* (N, out) */,
                         const float *x /* (N, in) */, const uint8_t *keep /* (N, in) or NULL */,
                         const float *z /* (N, r) */, int N, const fx_adapter_scratch *w) {
    const fx_ops *op = m->ops;
    const fx_adapted *ad = &m->ad[k];
    int r = m->a.r, in = ad->in, out = ad->out;
    const float *A; /* (r, in) with row stride lda */
    int lda;
    float *gA = m->grad + ad->a_off, *gB = m->grad + ad->b_off;
    if (m->a.kind == FX_LORA) {
        const float *B = m->train.data + ad->b_off;
        A = m->train.data + ad->a_off;
        lda = in;
        op->matmul(1, 0, out, r, N, m->scale, dy, out, z, r, 0.0f, gB, r);
        op->matmul(0, 0, N, r, out, m->scale, dy, out, B, r, 0.0f, w->dz, r);
        if (!m->a.freeze_a) {
            const float *xd = x;
            if (keep) { op->dropout_apply(w->xd, x, keep, m->a.dropout, (size_t)N * in); xd = w->xd; }
            op->matmul(1, 0, r, in, N, 1.0f, w->dz, r, xd, in, 0.0f, gA, in);
        }
    } else if (m->a.kind == FX_SORF) {
        /* g = S^T dy, dw = Gamma^T g, du = dw B_l, dLambda = du^T z, dz = du Lambda; (s, theta) from dLambda */
        const float *sd = m->train.data + ad->a_off, *b = m->train.data + ad->b_off;
        A = m->vera_A;
        lda = m->vera_in;
        fx_sorf_mix(op, fx_sorf_of(m, out), w->w2, w->w, dy, N, 1);
        op->gamma_apply(w->w, w->w2, b, N, out, 1);
        op->matmul(0, 0, N, r, out, 1.0f, w->w, out, m->vera_B, r, 0.0f, w->du, r);
        op->matmul(1, 0, r, r, N, 1.0f, w->du, r, z, r, 0.0f, w->dlam, r);
        op->givens_backward(gA, w->dlam, sd, r);
        op->givens_build(w->lam, sd, r);
        op->matmul(0, 0, N, r, r, 1.0f, w->du, r, w->lam, r, 0.0f, w->dz, r);
    } else {
        const float *ld = m->train.data + ad->a_off, *lb = m->train.data + ad->b_off;
        A = m->vera_A;
        lda = m->vera_in;
        op->scale_cols(w->u, ld, z, (size_t)N * r, r);
        op->matmul(0, 1, N, out, r, 1.0f, w->u, r, m->vera_B, r, 0.0f, w->w, out);
        op->column_dot(gB, dy, w->w, N, out);
        op->scale_cols(w->w, lb, dy, (size_t)N * out, out);
        op->matmul(0, 0, N, r, out, 1.0f, w->w, out, m->vera_B, r, 0.0f, w->du, r);
        if (!m->a.freeze_d) op->column_dot(gA, w->du, z, N, r);
        op->scale_cols(w->dz, ld, w->du, (size_t)N * r, r);
    }
    if (!dx) return;
    if (!keep) { op->matmul(0, 0, N, in, r, 1.0f, w->dz, r, A, lda, 1.0f, dx, in); return; }
    op->matmul(0, 0, N, in, r, 1.0f, w->dz, r, A, lda, 0.0f, w->dxd, in);
    op->dropout_accumulate(dx, w->dxd, keep, m->a.dropout, (size_t)N * in);
}
