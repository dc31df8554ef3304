/* model.c: the transformer written once as calls on a backend's ops table: tensor tables and per-layer
 * views built once from the family's list, the workspace carve, the encoder and decoder blocks forward and
 * backward, the heads and losses, the KV-cache decoder. It reads no activation or weight itself; no file
 * I/O, no family names; the optimizer step is optim.c's. */
#include "fedex.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ============================================================================================
 * tensor tables: one flat buffer per kind of state, carved into named tensors
 * ============================================================================================ */

void fx_params_add(fx_params *p, const char *name, int d0, int d1, int frozen) {
    if (p->nt == 0 || (p->nt >= 64 && (p->nt & (p->nt - 1)) == 0)) /* capacity 64, doubled when full */
        p->t = fx_realloc(p->t, (size_t)(p->nt ? 2 * p->nt : 64) * sizeof *p->t);
    fx_tensor *t = &p->t[p->nt++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = d1 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->n = (size_t)d0 * (size_t)(d1 ? d1 : 1);
    t->off = p->n;
    t->frozen = frozen;
    p->n += t->n;
}

const fx_tensor *fx_params_find(const fx_params *p, const char *name) {
    for (int i = 0; i < p->nt; i++)
        if (strcmp(p->t[i].name, name) == 0) return &p->t[i];
    return NULL;
}

/* A dimension letter of the family's tensor list (fx_tensor_spec) as a size. */
static int spec_dim(const fx_config *c, char d) {
    switch (d) {
    case 'V': return c->vocab_size;
    case 'P': return c->max_positions;
    case 'T': return c->type_vocab_size;
    case 'H': return c->hidden;
    case 'I': return c->intermediate;
    case '3': return 3 * c->hidden;
    case 'L': return c->num_labels;
    default: return 0;
    }
}
static size_t spec_numel(const fx_config *c, const fx_tensor_spec *s, int n) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += (size_t)spec_dim(c, s[i].d0) * (size_t)(s[i].d1 ? spec_dim(c, s[i].d1) : 1);
    return total;
}

size_t fx_base_numel(const fx_config *c) {
    const fx_family *f = fx_config_family(c);
    return spec_numel(c, f->embed, f->nembed) + (size_t)c->layers * spec_numel(c, f->layer, f->nlayer);
}

/* ============================================================================================
 * workspace: activations kept for backward, and scratch; one buffer carved per step
 * ============================================================================================ */

typedef struct {                /* one layer, N = n*T tokens */
    float *xn, *mean0, *rstd0;  /* pre-LN: (N, H) LayerNorm(x) before attention, its moments (N) */
    float *qkv;                 /* pre-LN: (N, 3H) the fused projection, q | k | v */
    float *q, *k, *v;           /* (N, H) projections; head h is columns [h*hd, (h+1)*hd) */
    float *att;                 /* (n, nh, T, T) softmax probabilities */
    float *att_drop;            /* (n, nh, T, T) after attention dropout (== att without dropout) */
    float *ctx;                 /* (N, H) attention output, heads side by side */
    uint8_t *keep1;             /* (N, H) hidden-dropout keep mask after attention.output.dense, or NULL */
    float *res1;                /* (N, H) dropout(dense(ctx)) + x: the first LayerNorm's input (post-LN),
                                   the second's (pre-LN) */
    float *mean1, *rstd1;       /* (N) */
    float *h1;                  /* (N, H) that LayerNorm's output: the MLP's input */
    float *pre;                 /* (N, I) intermediate.dense output, before GELU */
    float *gelu;                /* (N, I) */
    uint8_t *keep2;             /* (N, H) hidden-dropout keep mask after output.dense, or NULL */
    float *res2;                /* (N, H) dropout(dense(gelu)) + h1: the second LayerNorm's input (post-LN) */
    float *mean2, *rstd2;       /* (N) */
    float *out;                 /* (N, H) the layer's output */
    uint8_t *akeep[FX_NTARGETS]; /* (N, in) adapter-dropout keep mask per adapted target, or NULL */
    float *z[FX_NTARGETS];      /* (N, r) dropout(x) A^T per adapted target (VeRA: the sliced A) */
} layer_acts;

typedef struct {
    char *mem; size_t cap;      /* the carved buffer (the backend's memory), grown on demand */
    int32_t *hpos; size_t hcap; /* (N) position ids formed on the host, then uploaded */
    int32_t *ids, *pos;         /* (N) token and position ids */
    uint8_t *mask;              /* (n, T) 1 on real tokens */
    float *labels;              /* (n) */
    float *x0;                  /* (N, H) embeddings output */
    layer_acts *L;              /* (layers): in training one slot per layer; in evaluation two slots
                                   used in turn, as nothing is kept for backward */
    float *y;                   /* (N, H) scratch: a dense layer's output before dropout + residual */
    fx_adapter_scratch as;      /* xd, dxd (N, in_max); u, dz, du (N, r); w (N, out_max) */
    float *cls;                 /* (n, H) token 0 of the last layer */
    uint8_t *hkeep1, *hkeep2;   /* (n, H) the head's dropout keep masks, or NULL */
    float *hx;                  /* (n, H) dropout(cls) */
    float *ht;                  /* (n, H) tanh(dense(hx)) */
    float *htd;                 /* (n, H) dropout(ht) */
    float *logits, *dlogits;    /* (n, L); a causal LM's (N, V), dlogits the same buffer */
    int32_t *targets;           /* (N) a causal LM's targets */
    float *xf, *meanf, *rstdf;  /* (N, H), (N), (N) the final LayerNorm (ln_f) and its moments */
    /* backward only */
    float *dout, *din;          /* (N, H) gradient at a layer's output and input */
    float *dres;                /* (N, H) gradient at a LayerNorm's input */
    float *dy;                  /* (N, H) gradient at a dense output (after dropout backward) */
    float *dh1;                 /* (N, H) */
    float *dI;                  /* (N, I) gradient at the GELU output, then at its input */
    float *dctx, *dq, *dk, *dv; /* (N, H) */
    float *dqkv;                /* (N, 3H) pre-LN's fused projection */
    float *datt;                /* (n, nh, T, T) */
    float *dhx, *dht;           /* (n, H) the head's */
} workspace;

/* The next 64-byte aligned block of BYTES; NULL while only measuring (MEM NULL). */
static void *take(char *mem, size_t *used, size_t bytes) {
    size_t off = (*used + 63) & ~(size_t)63;
    *used = off + bytes;
    return mem ? mem + off : NULL;
}
/* The one table of the workspace's sizes, for a batch of n rows of T tokens: each TAKE names a pointer
 * and its element count. With MEM NULL it only measures; the backend allocates what it returns. */
static size_t ws_carve(const fx_model *m, workspace *w, int n, int T, int train, char *mem) {
    const fx_config *c = &m->c;
    size_t N = (size_t)n * T, H = c->hidden, I = c->intermediate, r = m->a.r, nL = c->num_labels;
    size_t att = (size_t)n * c->heads * T * T;
    int pre = m->fam->norm_place == FX_NORM_PRE, lm = m->fam->head_kind == FX_HEAD_LM;
    size_t in_max = H > I ? H : I, out_max = pre && 3 * H > in_max ? 3 * H : in_max; /* any adapted layer's fit */
    size_t nlog = lm ? N * (size_t)c->vocab_size : (size_t)n * nL;
    int drop_h = train && c->hidden_dropout > 0, drop_a = train && c->attention_dropout > 0;
    int drop_c = train && c->classifier_dropout > 0, drop_ad = train && m->a.dropout > 0;
    size_t used = 0;
#define TAKE(ptr, count) ((ptr) = take(mem, &used, (count) * sizeof *(ptr)))
#define TAKE_IF(cond, ptr, count) ((ptr) = (cond) ? take(mem, &used, (count) * sizeof *(ptr)) : NULL)
    TAKE(w->ids, N); TAKE(w->pos, N); TAKE(w->mask, N); TAKE(w->labels, (size_t)n);
    TAKE(w->x0, N * H);
    int slots = train ? c->layers : (c->layers < 2 ? c->layers : 2);
    for (int l = 0; l < c->layers; l++) {
        layer_acts *A = &w->L[l];
        if (l >= slots) { *A = w->L[l % 2]; continue; }
        TAKE_IF(pre, A->xn, N * H); TAKE_IF(pre, A->mean0, N); TAKE_IF(pre, A->rstd0, N);
        TAKE_IF(pre, A->qkv, N * 3 * H);
        TAKE(A->q, N * H); TAKE(A->k, N * H); TAKE(A->v, N * H);
        TAKE(A->att, att);
        TAKE_IF(drop_a, A->att_drop, att);
        if (!drop_a) A->att_drop = A->att;
        TAKE(A->ctx, N * H);
        TAKE_IF(drop_h, A->keep1, N * H);
        TAKE(A->res1, N * H); TAKE(A->mean1, N); TAKE(A->rstd1, N);
        TAKE(A->h1, N * H);
        TAKE(A->pre, N * I); TAKE(A->gelu, N * I);
        TAKE_IF(drop_h, A->keep2, N * H);
        TAKE_IF(!pre, A->res2, N * H); TAKE_IF(!pre, A->mean2, N); TAKE_IF(!pre, A->rstd2, N);
        TAKE(A->out, N * H);
        for (int t = 0; t < FX_NTARGETS; t++) {
            const fx_linear_view *lv = &m->layer[l].lin[t];
            TAKE_IF(lv->ad >= 0 && drop_ad, A->akeep[t], N * (size_t)lv->in);
            TAKE_IF(lv->ad >= 0, A->z[t], N * r);
        }
    }
    TAKE(w->y, N * H);
    TAKE(w->as.xd, N * in_max);
    TAKE(w->as.u, N * r); TAKE(w->as.w, N * out_max);
    int sorf = m->a.kind == FX_SORF;
    TAKE_IF(sorf, w->as.w2, N * out_max); TAKE_IF(sorf, w->as.lam, r * r); TAKE_IF(sorf && train, w->as.dlam, r * r);
    TAKE(w->cls, (size_t)n * H);
    TAKE_IF(drop_c, w->hkeep1, (size_t)n * H);
    TAKE_IF(drop_c, w->hkeep2, (size_t)n * H);
    TAKE(w->hx, (size_t)n * H); TAKE(w->ht, (size_t)n * H); TAKE(w->htd, (size_t)n * H);
    TAKE(w->logits, nlog);
    TAKE_IF(!lm, w->dlogits, nlog);
    if (lm) w->dlogits = w->logits;
    TAKE_IF(lm, w->targets, N);
    TAKE_IF(lm, w->xf, N * H); TAKE_IF(lm, w->meanf, N); TAKE_IF(lm, w->rstdf, N);
    TAKE_IF(train, w->dout, N * H); TAKE_IF(train, w->din, N * H);
    TAKE_IF(train, w->dres, N * H); TAKE_IF(train, w->dy, N * H); TAKE_IF(train, w->dh1, N * H);
    TAKE_IF(train, w->dI, N * I);
    TAKE_IF(train, w->dctx, N * H); TAKE_IF(train, w->dq, N * H);
    TAKE_IF(train, w->dk, N * H); TAKE_IF(train, w->dv, N * H);
    TAKE_IF(train && pre, w->dqkv, N * 3 * H);
    TAKE_IF(train, w->datt, att);
    TAKE_IF(train, w->as.dxd, N * in_max);
    TAKE_IF(train, w->as.dz, N * r); TAKE_IF(train, w->as.du, N * r);
    TAKE_IF(train, w->dhx, (size_t)n * H); TAKE_IF(train, w->dht, (size_t)n * H);
#undef TAKE
#undef TAKE_IF
    return used;
}

/* Lays the workspace out for this batch, growing the buffer when it is the largest seen. */
static void ws_prepare(fx_model *m, int n, int T, int train) {
    workspace *w = m->ws;
    size_t need = ws_carve(m, w, n, T, train, NULL);
    if (need > w->cap) {
        m->ops->release(w->mem);
        w->mem = m->ops->alloc(need);
        w->cap = need;
    }
    ws_carve(m, w, n, T, train, w->mem);
    if ((size_t)n * T > w->hcap) {
        w->hcap = (size_t)n * T;
        w->hpos = fx_realloc(w->hpos, w->hcap * sizeof *w->hpos);
    }
}

/* ============================================================================================
 * creation: tables and views from the family's list, then the adapters
 * ============================================================================================ */

/* Where a layer tensor of ROLE goes in the view, or NULL when this model.c does not run such a tensor. */
static size_t *layer_slot(fx_layer_view *v, int role) {
    for (int t = 0; t < FX_NTARGETS; t++) {
        if (role == fx_targets[t].w_role) return &v->lin[t].w;
        if (role == fx_targets[t].b_role) return &v->lin[t].b;
    }
    return role == FX_LT_LN1W ? &v->ln1_w : role == FX_LT_LN1B ? &v->ln1_b
         : role == FX_LT_LN2W ? &v->ln2_w : role == FX_LT_LN2B ? &v->ln2_b : NULL;
}
static size_t *embed_slot(fx_embed_view *v, int role) {
    return role == FX_EMB_WORD ? &v->word : role == FX_EMB_POS ? &v->pos : role == FX_EMB_TYPE ? &v->type
         : role == FX_EMB_LN_W ? &v->ln_w : role == FX_EMB_LN_B ? &v->ln_b
         : role == FX_EMB_LNF_W ? &v->lnf_w : role == FX_EMB_LNF_B ? &v->lnf_b : NULL;
}
static size_t *head_slot(fx_head_view *v, int role) {
    return role == FX_HEAD_DW ? &v->dense_w : role == FX_HEAD_DB ? &v->dense_b
         : role == FX_HEAD_OW ? &v->out_w : role == FX_HEAD_OB ? &v->out_b : NULL;
}

/* The two blocks this file runs: the encoder (post-LN, separate q/k/v, bidirectional, exact GELU, a tanh
 * classifier on token 0) and the decoder (pre-LN, fused qkv, causal, gelu_new, ln_f and an LM head tied
 * to the word embedding), each with learned positions by the family's rule. Other values are refused. */
static int family_supported(const fx_family *f, const fx_config *c) {
    int enc = f->norm_place == FX_NORM_POST && !f->fused_qkv && !f->causal && f->act == FX_ACT_GELU &&
              f->head_kind == FX_HEAD_CLS_TANH && !f->tied_head;
    int dec = f->norm_place == FX_NORM_PRE && f->fused_qkv && f->causal && f->act == FX_ACT_GELU_TANH &&
              f->head_kind == FX_HEAD_LM && f->tied_head;
    /* what differs from the block of its norm placement, named */
    int pre = f->norm_place == FX_NORM_PRE;
    const char *what = f->norm != FX_NORM_LAYERNORM ? "RMSNorm"
                     : f->positions == FX_POS_ROPE || !f->position_ids ? "rotary positions"
                     : c->kv_heads && c->kv_heads != c->heads ? "grouped-query attention"
                     : enc || dec ? NULL
                     : f->fused_qkv != pre ? (pre ? "pre-LN blocks with separate q, k, v" : "a fused qkv projection")
                     : f->causal != pre ? (pre ? "bidirectional pre-LN blocks" : "causal attention")
                     : f->act != (pre ? FX_ACT_GELU_TANH : FX_ACT_GELU) ? "another activation"
                     : "another head";
    if (what) { fx_seterr("model: family \"%s\" needs %s, which model.c does not run yet", f->model_type, what); return -1; }
    return 0;
}

/* Appends SPEC's tensors to P (layer L's when L >= 0), each offset into the view slot its role names. */
static int add_specs(fx_params *p, const fx_config *c, const fx_tensor_spec *s, int n, int l, int frozen,
                     size_t *(*slot)(void *, int), void *view, const char *layer_fmt) {
    char name[160], pre[64] = "";
    if (l >= 0) snprintf(pre, sizeof pre, layer_fmt, l);
    for (int i = 0; i < n; i++) {
        size_t *dst = slot(view, s[i].role);
        if (!dst) {
            fx_seterr("model: tensor %s%s (unknown role) is not one this model.c runs", pre, s[i].name);
            return -1;
        }
        *dst = p->n;
        snprintf(name, sizeof name, "%s%s", pre, s[i].name);
        fx_params_add(p, name, spec_dim(c, s[i].d0), s[i].d1 ? spec_dim(c, s[i].d1) : 0, frozen);
        p->t[p->nt - 1].conv1d = s[i].conv1d;
    }
    return 0;
}
static size_t *layer_slot_v(void *v, int role) { return layer_slot(v, role); }
static size_t *embed_slot_v(void *v, int role) { return embed_slot(v, role); }
static size_t *head_slot_v(void *v, int role) { return head_slot(v, role); }

int fx_model_create(fx_model *m, const fx_config *c, const fx_adapter_cfg *a, float *base) {
    memset(m, 0, sizeof *m);
    if (c->hidden < 1 || c->heads < 1 || c->hidden % c->heads || c->layers < 1 || c->intermediate < 1 ||
        c->vocab_size < 1 || c->max_positions < 2 || c->type_vocab_size < 1 || c->num_labels < 1 ||
        c->pad_id < 0 || c->pad_id >= c->vocab_size) {
        fx_seterr("model config: inconsistent sizes (hidden %d, heads %d, layers %d, labels %d)", c->hidden,
                  c->heads, c->layers, c->num_labels);
        return -1;
    }
    if (fx_adapter_check(a) != 0) return -1;
    const fx_family *f = fx_config_family(c);
    if (family_supported(f, c) != 0) return -1;
    for (int t = 0; t < FX_NTARGETS; t++)
        if ((a->targets & fx_targets[t].bit) && !f->target_path[t]) {
            char known[256] = "";
            for (int u = 0; u < FX_NTARGETS; u++)
                if (f->target_path[u])
                    snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", *known ? ", " : "",
                             f->target_path[u]);
            fx_seterr("model: a %s has no layer \"%s\" to adapt (its layers: %s)", f->model_type, fx_targets[t].name,
                      known);
            return -1;
        }
    m->c = *c;
    m->a = *a;
    m->fam = f;
    m->ops = &fx_cpu_ops;
    if (!a->targets) m->a.r = 1; /* keeps workspace sizes positive; no adapter reads it */
    m->scale = a->kind != FX_LORA ? 1.0f
               : a->rslora ? (float)(a->alpha / sqrt((double)a->r)) : (float)((double)a->alpha / a->r);

    /* Base table and its views, the family's order; each linear's (out, in) from the target table. */
    m->layer = fx_calloc((size_t)c->layers, sizeof *m->layer);
    int rc = add_specs(&m->base, c, f->embed, f->nembed, -1, 1, embed_slot_v, &m->emb, NULL);
    for (int l = 0; rc == 0 && l < c->layers; l++) {
        rc = add_specs(&m->base, c, f->layer, f->nlayer, l, 1, layer_slot_v, &m->layer[l], f->layer_fmt);
        for (int t = 0; t < FX_NTARGETS; t++) fx_target_dims(c, t, &m->layer[l].lin[t].out, &m->layer[l].lin[t].in);
    }
    if (rc != 0) { fx_model_free(m); return -1; }
    if (m->base.n != fx_base_numel(c)) fx_die("model.c: base table (%zu) and fx_base_numel disagree", m->base.n);

    /* Trainable table: adapters layer by layer, target by target, then the head. */
    if (fx_adapter_build(m) != 0) { fx_model_free(m); return -1; }
    m->head_off = m->train.n;
    m->head.t = m->train.nt;
    if (add_specs(&m->train, c, f->head, f->nhead, -1, 0, head_slot_v, &m->head, NULL) != 0) {
        fx_model_free(m);
        return -1;
    }
    m->head_n = m->train.n - m->head_off;

    workspace *w = fx_calloc(1, sizeof *w);
    m->ws = w;
    w->L = fx_calloc((size_t)c->layers, sizeof *w->L);
    m->base_owned = base == NULL;
    m->base.data = base ? base : fx_calloc(m->base.n, sizeof(float));
    m->train.data = fx_calloc(m->train.n, sizeof(float));
    m->grad = fx_calloc(m->train.n, sizeof(float));
    m->adam_m = fx_calloc(m->train.n, sizeof(float));
    m->adam_v = fx_calloc(m->train.n, sizeof(float));
    fx_rng_seed(&m->drop, a->seed ^ 0xd50a0d50a0d50aULL);
    return 0;
}

void fx_model_free(fx_model *m) {
    if (m->base_owned) free(m->base.data);
    free(m->base.t);
    free(m->train.data);
    free(m->train.t);
    free(m->grad);
    free(m->adam_m);
    free(m->adam_v);
    free(m->ad);
    free(m->layer);
    free(m->vera_A);
    free(m->vera_B);
    for (int i = 0; i < m->nsorf; i++) fx_sorf_mixer_free(&m->sorf[i]);
    workspace *w = m->ws;
    if (w) {
        free(w->L);
        free(w->hpos);
        m->ops->release(w->mem);
        free(w);
    }
    memset(m, 0, sizeof *m);
}

/* ============================================================================================
 * the block, forward and backward, on the model's ops
 * ============================================================================================ */

/* A weight of the base (frozen) and of the trainable buffer at a view's offset. */
static const float *W(const fx_model *m, size_t off) { return m->base.data + off; }
static const float *P(const fx_model *m, size_t off) { return m->train.data + off; }

/* --- embeddings: x0 = dropout(LayerNorm((word[id] + type[0]) + pos[position])); pre-LN blocks (GPT-2)
 * take x0 = dropout(word[id] + pos[position]) with their own embedding dropout. Nothing before them is
 * trainable, so backward stops at the first layer's input. */
static void embeddings_forward(fx_model *m, int N, int train) {
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    const fx_embed_view *e = &m->emb;
    int pre = m->fam->norm_place == FX_NORM_PRE;
    float p = pre ? c->embed_dropout : c->hidden_dropout;
    int drop = train && p > 0;
    m->ops->embeddings_forward(w->x0, w->ids, w->pos, W(m, e->word), W(m, e->pos), pre ? NULL : W(m, e->type),
                               pre ? NULL : W(m, e->ln_w), pre ? NULL : W(m, e->ln_b), N, c->hidden,
                               c->layer_norm_eps, drop ? p : 0.0f, drop ? fx_rng_u64(&m->drop) : 0);
}

/* A dense layer of encoder layer L, target T: frozen y = x W^T + b, plus the adapter when there is one. */
static void dense_forward(fx_model *m, int l, int t, float *y, const float *x, layer_acts *A, int N) {
    const fx_linear_view *lv = &m->layer[l].lin[t];
    m->ops->linear_forward(y, x, W(m, lv->w), W(m, lv->b), N, lv->in, lv->out);
    if (lv->ad >= 0) fx_adapter_forward(m, lv->ad, y, x, A->akeep[t], A->z[t], N, &((workspace *)m->ws)->as);
}
/* dx = dy W (+ dx when ACC) plus the adapter's share; adapter gradients. DX NULL: adapter gradients only. */
static void dense_backward(fx_model *m, int l, int t, float *dx, const float *dy, const float *x,
                           const layer_acts *A, int N, int acc) {
    const fx_linear_view *lv = &m->layer[l].lin[t];
    if (dx) m->ops->linear_backward(dx, dy, W(m, lv->w), N, lv->in, lv->out, acc ? 1.0f : 0.0f);
    if (lv->ad >= 0) fx_adapter_backward(m, lv->ad, dx, dy, x, A->akeep[t], A->z[t], N, &((workspace *)m->ws)->as);
}

/* --- one encoder layer (RobertaLayer, post-LN):
 *   q, k, v = x Wq^T + bq, ...  (+ adapters)
 *   ctx = attention(q, k, v);   h1 = LayerNorm(dropout(ctx Wao^T + bao) + x)
 *   g = GELU(h1 Wi^T + bi);     out = LayerNorm(dropout(g Wo^T + bo) + h1) */
static void layer_forward(fx_model *m, int l, const float *x /* (N, H) */, int n, int T) {
    const fx_ops *op = m->ops;
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    const fx_layer_view *V = &m->layer[l];
    layer_acts *A = &w->L[l];
    int N = n * T, H = c->hidden, I = c->intermediate;
    dense_forward(m, l, FX_TI_QUERY, A->q, x, A, N);
    dense_forward(m, l, FX_TI_KEY, A->k, x, A, N);
    dense_forward(m, l, FX_TI_VALUE, A->v, x, A, N);
    uint64_t site = A->att_drop != A->att ? fx_rng_u64(&m->drop) : 0;
    op->attention_forward(A->ctx, A->att, A->att_drop, A->q, A->k, A->v, w->mask, n, T, H, c->heads, 0,
                          c->attention_dropout, site);
    dense_forward(m, l, FX_TI_ATTN_OUT, w->y, A->ctx, A, N);
    if (A->keep1) op->dropout_mask(A->keep1, (size_t)N, (size_t)H, c->hidden_dropout, fx_rng_u64(&m->drop));
    op->residual_layernorm_forward(A->h1, A->res1, A->mean1, A->rstd1, w->y, A->keep1, c->hidden_dropout, x,
                                   W(m, V->ln1_w), W(m, V->ln1_b), N, H, c->layer_norm_eps);
    dense_forward(m, l, FX_TI_INTER, A->pre, A->h1, A, N);
    op->gelu_forward(A->gelu, A->pre, (size_t)N * I);
    dense_forward(m, l, FX_TI_OUTPUT, w->y, A->gelu, A, N);
    if (A->keep2) op->dropout_mask(A->keep2, (size_t)N, (size_t)H, c->hidden_dropout, fx_rng_u64(&m->drop));
    op->residual_layernorm_forward(A->out, A->res2, A->mean2, A->rstd2, w->y, A->keep2, c->hidden_dropout, A->h1,
                                   W(m, V->ln2_w), W(m, V->ln2_b), N, H, c->layer_norm_eps);
}

/* The same layer backwards from dout (N, H). dx (N, H) receives the gradient at the layer's input, or is
 * NULL for the first layer (nothing before it is trainable). */
static void layer_backward(fx_model *m, int l, float *dx /* (N, H) or NULL */, const float *dout /* (N, H) */,
                           const float *x /* (N, H) */, int n, int T) {
    const fx_ops *op = m->ops;
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    const fx_layer_view *V = &m->layer[l];
    const layer_acts *A = &w->L[l];
    int N = n * T, H = c->hidden, I = c->intermediate;
    size_t NH = (size_t)N * H;
    /* out = LayerNorm(res2), res2 = dropout(y2) + h1, y2 = dense(gelu) */
    op->layernorm_backward(w->dres, dout, A->res2, A->mean2, A->rstd2, W(m, V->ln2_w), N, H);
    op->dropout_apply(w->dy, w->dres, A->keep2, c->hidden_dropout, NH);
    dense_backward(m, l, FX_TI_OUTPUT, w->dI, w->dy, A->gelu, A, N, 0);
    op->gelu_backward(w->dI, A->pre, (size_t)N * I);
    op->copy(w->dh1, w->dres, NH); /* the residual's share */
    dense_backward(m, l, FX_TI_INTER, w->dh1, w->dI, A->h1, A, N, 1);
    /* h1 = LayerNorm(res1), res1 = dropout(y1) + x, y1 = dense(ctx) */
    op->layernorm_backward(w->dres, w->dh1, A->res1, A->mean1, A->rstd1, W(m, V->ln1_w), N, H);
    op->dropout_apply(w->dy, w->dres, A->keep1, c->hidden_dropout, NH);
    dense_backward(m, l, FX_TI_ATTN_OUT, w->dctx, w->dy, A->ctx, A, N, 0);
    op->attention_backward(w->dq, w->dk, w->dv, w->datt, w->dctx, A->q, A->k, A->v, A->att, A->att_drop, n, T, H,
                           c->heads, c->attention_dropout);
    /* x feeds the residual and the three projections */
    if (dx) op->copy(dx, w->dres, NH);
    dense_backward(m, l, FX_TI_QUERY, dx, w->dq, x, A, N, 1);
    dense_backward(m, l, FX_TI_KEY, dx, w->dk, x, A, N, 1);
    dense_backward(m, l, FX_TI_VALUE, dx, w->dv, x, A, N, 1);
}

/* --- one decoder layer (GPT2Block, pre-LN), x the residual stream:
 *   xn = LN1(x);  q | k | v = xn Wc^T + bc  (c_attn, fused; + adapter);  ctx = causal attention(q, k, v)
 *   x1 = x + dropout(ctx Wp^T + bp)  (attn.c_proj);  h1 = LN2(x1)
 *   out = x1 + dropout(gelu_new(h1 Wfc^T + bfc) Wp2^T + bp2)  (mlp.c_fc, mlp.c_proj)
 * DEC (decoding, dropout off): k and v also go into the layer's cache; a step's queries attend to it. */
typedef struct {
    float *kc, *vc;             /* (slots, cap, H) this layer's cache */
    int cap, pos;               /* positions each slot holds; the step's position (-1: prefill of slot 0) */
    float *scores;              /* (ns, nh, pos + 1) */
} decode_at;
static void layer_forward_pre(fx_model *m, int l, const float *x /* (N, H) */, int n, int T, const decode_at *dec) {
    const fx_ops *op = m->ops;
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    const fx_layer_view *V = &m->layer[l];
    layer_acts *A = &w->L[l];
    int N = n * T, H = c->hidden, I = c->intermediate;
    size_t NH = (size_t)N * H;
    op->layernorm_forward(A->xn, A->mean0, A->rstd0, x, W(m, V->ln1_w), W(m, V->ln1_b), N, H, c->layer_norm_eps);
    dense_forward(m, l, FX_TI_QKV, A->qkv, A->xn, A, N);
    op->copy_rows(A->q, (size_t)H, A->qkv, 3 * (size_t)H, N, H);
    op->copy_rows(A->k, (size_t)H, A->qkv + H, 3 * (size_t)H, N, H);
    op->copy_rows(A->v, (size_t)H, A->qkv + 2 * H, 3 * (size_t)H, N, H);
    if (dec && dec->pos >= 0) { /* one token per slot at dec->pos */
        size_t stride = (size_t)dec->cap * H;
        op->copy_rows(dec->kc + (size_t)dec->pos * H, stride, A->k, (size_t)H, n, H);
        op->copy_rows(dec->vc + (size_t)dec->pos * H, stride, A->v, (size_t)H, n, H);
        op->attention_decode(A->ctx, dec->scores, A->q, dec->kc, dec->vc, n, dec->pos + 1, dec->cap, H, c->heads);
    } else {
        if (dec) { op->copy(dec->kc, A->k, NH); op->copy(dec->vc, A->v, NH); } /* slot 0, positions 0 .. T-1 */
        uint64_t site = A->att_drop != A->att ? fx_rng_u64(&m->drop) : 0;
        op->attention_forward(A->ctx, A->att, A->att_drop, A->q, A->k, A->v, w->mask, n, T, H, c->heads, 1,
                              c->attention_dropout, site);
    }
    dense_forward(m, l, FX_TI_ATTN_OUT, w->y, A->ctx, A, N);
    if (A->keep1) op->dropout_mask(A->keep1, (size_t)N, (size_t)H, c->hidden_dropout, fx_rng_u64(&m->drop));
    op->residual_layernorm_forward(A->h1, A->res1, A->mean1, A->rstd1, w->y, A->keep1, c->hidden_dropout, x,
                                   W(m, V->ln2_w), W(m, V->ln2_b), N, H, c->layer_norm_eps);
    dense_forward(m, l, FX_TI_INTER, A->pre, A->h1, A, N);
    op->gelu_tanh_forward(A->gelu, A->pre, (size_t)N * I);
    dense_forward(m, l, FX_TI_OUTPUT, w->y, A->gelu, A, N);
    if (A->keep2) op->dropout_mask(A->keep2, (size_t)N, (size_t)H, c->hidden_dropout, fx_rng_u64(&m->drop));
    op->dropout_apply(A->out, w->y, A->keep2, c->hidden_dropout, NH);
    op->axpy(A->out, 1.0f, A->res1, NH); /* x1 + dropout(y): one fp32 addition, as PyTorch's */
}

/* Its backward from dout (N, H), the gradient at the residual stream after the layer; dx as above. */
static void layer_backward_pre(fx_model *m, int l, float *dx /* (N, H) or NULL */, const float *dout /* (N, H) */,
                               const float *x /* (N, H) */, int n, int T) {
    const fx_ops *op = m->ops;
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    const fx_layer_view *V = &m->layer[l];
    const layer_acts *A = &w->L[l];
    int N = n * T, H = c->hidden, I = c->intermediate;
    size_t NH = (size_t)N * H;
    /* out = x1 + dropout(y2), y2 = dense(gelu(dense(h1))), h1 = LN2(x1) */
    op->dropout_apply(w->dy, dout, A->keep2, c->hidden_dropout, NH);
    dense_backward(m, l, FX_TI_OUTPUT, w->dI, w->dy, A->gelu, A, N, 0);
    op->gelu_tanh_backward(w->dI, A->pre, (size_t)N * I);
    dense_backward(m, l, FX_TI_INTER, w->dh1, w->dI, A->h1, A, N, 0);
    op->layernorm_backward(w->dres, w->dh1, A->res1, A->mean1, A->rstd1, W(m, V->ln2_w), N, H);
    op->axpy(w->dres, 1.0f, dout, NH); /* dx1: the LayerNorm's share plus the residual's */
    /* x1 = x + dropout(y1), y1 = dense(ctx) */
    op->dropout_apply(w->dy, w->dres, A->keep1, c->hidden_dropout, NH);
    dense_backward(m, l, FX_TI_ATTN_OUT, w->dctx, w->dy, A->ctx, A, N, 0);
    op->attention_backward(w->dq, w->dk, w->dv, w->datt, w->dctx, A->q, A->k, A->v, A->att, A->att_drop, n, T, H,
                           c->heads, c->attention_dropout);
    op->copy_rows(w->dqkv, 3 * (size_t)H, w->dq, (size_t)H, N, H);
    op->copy_rows(w->dqkv + H, 3 * (size_t)H, w->dk, (size_t)H, N, H);
    op->copy_rows(w->dqkv + 2 * H, 3 * (size_t)H, w->dv, (size_t)H, N, H);
    /* xn = LN1(x) feeds c_attn; x also feeds x1 directly */
    dense_backward(m, l, FX_TI_QKV, dx ? w->dh1 : NULL, w->dqkv, A->xn, A, N, 0);
    if (!dx) return;
    op->layernorm_backward(dx, w->dh1, x, A->mean0, A->rstd0, W(m, V->ln1_w), N, H);
    op->axpy(dx, 1.0f, w->dres, NH);
}

/* ============================================================================================
 * the causal LM head (tied to the word embedding) and its loss
 * ============================================================================================ */

/* xf = ln_f(xL) for ROWS rows from FIRST, logits (rows, V) = xf wte^T: the head is the embedding itself. */
static void lm_head_forward(fx_model *m, const float *xL /* (N, H) */, size_t first, int rows) {
    const fx_ops *op = m->ops;
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    int H = c->hidden, V = c->vocab_size;
    const float *xs = xL + first * H;
    float *xf = w->xf + first * H;
    op->layernorm_forward(xf, w->meanf + first, w->rstdf + first, xs, W(m, m->emb.lnf_w), W(m, m->emb.lnf_b), rows,
                          H, c->layer_norm_eps);
    op->matmul(0, 1, rows, V, H, 1.0f, xf, H, W(m, m->emb.word), H, 0.0f, w->logits, V);
}
/* From dlogits (N, V): dout (N, H) at the last layer's output (wte is frozen: no gradient of its own). */
static void lm_head_backward(fx_model *m, int N, const float *xL, float *dout) {
    const fx_ops *op = m->ops;
    workspace *w = m->ws;
    int H = m->c.hidden, V = m->c.vocab_size;
    op->matmul(0, 0, N, H, V, 1.0f, w->dlogits, V, W(m, m->emb.word), H, 0.0f, w->dres, H);
    op->layernorm_backward(dout, w->dres, xL, w->meanf, w->rstdf, W(m, m->emb.lnf_w), N, H);
}

/* Positions that predict a token: t < T-1 whose next target is not -100. */
static int lm_count(const fx_batch *b) {
    int count = 0;
    for (int i = 0; i < b->n; i++)
        for (int t = 0; t + 1 < b->T; t++) count += b->targets[(size_t)i * b->T + t + 1] != -100;
    return count;
}

/* ============================================================================================
 * the classification head and its loss
 * ============================================================================================ */

/* --- RobertaClassificationHead on token 0:
 *   hx = dropout(cls), ht = tanh(hx Wd^T + bd), logits = dropout(ht) Wp^T + bp. */
static void head_forward(fx_model *m, int n, int T, const float *xL /* (N, H) */) {
    const fx_ops *op = m->ops;
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    int H = c->hidden, L = c->num_labels;
    op->copy_rows(w->cls, (size_t)H, xL, (size_t)T * H, n, H);
    if (w->hkeep1) op->dropout_mask(w->hkeep1, (size_t)n, (size_t)H, c->classifier_dropout, fx_rng_u64(&m->drop));
    op->dropout_apply(w->hx, w->cls, w->hkeep1, c->classifier_dropout, (size_t)n * H);
    op->linear_forward(w->ht, w->hx, P(m, m->head.dense_w), P(m, m->head.dense_b), n, H, H);
    op->tanh_forward(w->ht, (size_t)n * H);
    if (w->hkeep2) op->dropout_mask(w->hkeep2, (size_t)n, (size_t)H, c->classifier_dropout, fx_rng_u64(&m->drop));
    op->dropout_apply(w->htd, w->ht, w->hkeep2, c->classifier_dropout, (size_t)n * H);
    op->linear_forward(w->logits, w->htd, P(m, m->head.out_w), P(m, m->head.out_b), n, H, L);
}
/* From dlogits (n, L): the head's gradients, and dout (N, H) of the last layer (zero but on token 0). */
static void head_backward(fx_model *m, int n, int T, float *dout /* (N, H) */) {
    const fx_ops *op = m->ops;
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    int H = c->hidden, L = c->num_labels;
    const float *Wd = P(m, m->head.dense_w), *Wp = P(m, m->head.out_w);
    float *gWd = m->grad + m->head.dense_w, *gbd = m->grad + m->head.dense_b;
    float *gWp = m->grad + m->head.out_w, *gbp = m->grad + m->head.out_b;
    op->matmul(1, 0, L, H, n, 1.0f, w->dlogits, L, w->htd, H, 0.0f, gWp, H);
    op->column_dot(gbp, w->dlogits, NULL, n, L);
    op->matmul(0, 0, n, H, L, 1.0f, w->dlogits, L, Wp, H, 0.0f, w->dht, H);
    op->dropout_apply(w->dht, w->dht, w->hkeep2, c->classifier_dropout, (size_t)n * H);
    op->tanh_backward(w->dht, w->ht, (size_t)n * H);
    op->matmul(1, 0, H, H, n, 1.0f, w->dht, H, w->hx, H, 0.0f, gWd, H);
    op->column_dot(gbd, w->dht, NULL, n, H);
    op->matmul(0, 0, n, H, H, 1.0f, w->dht, H, Wd, H, 0.0f, w->dhx, H);
    op->dropout_apply(w->dhx, w->dhx, w->hkeep1, c->classifier_dropout, (size_t)n * H);
    op->zero(dout, (size_t)n * T * H);
    op->copy_rows(dout, (size_t)T * H, w->dhx, (size_t)H, n, H);
}

/* ============================================================================================
 * batch checks (shared by both backends, so they refuse the same batches alike)
 * ============================================================================================ */

/* A causal LM's batch: ids in the vocabulary, T within the positions (they start at 0), targets (needed
 * to train) each -100 or a token id. */
static int lm_batch_check(const fx_config *c, const fx_batch *b, int train) {
    if (b->T > c->max_positions) {
        fx_seterr("batch: %d tokens exceed n_positions %d", b->T, c->max_positions);
        return -1;
    }
    if (train && !b->targets) { fx_seterr("batch: training a causal LM needs per-token targets"); return -1; }
    for (size_t i = 0; i < (size_t)b->n * b->T; i++) {
        int32_t id = b->ids[i], y = b->targets ? b->targets[i] : -100;
        if (id < 0 || id >= c->vocab_size || (y != -100 && (y < 0 || y >= c->vocab_size))) {
            fx_seterr("batch: row %zu, token %zu: %s %d outside the vocabulary [0, %d)", i / b->T, i % b->T,
                      id < 0 || id >= c->vocab_size ? "id" : "target", id < 0 || id >= c->vocab_size ? (int)id : (int)y,
                      c->vocab_size);
            return -1;
        }
    }
    return 0;
}

int fx_batch_check(const fx_config *c, const fx_batch *b, int train, int wide) {
    int n = b->n, T = b->T, L = c->num_labels;
    if (n < 1 || T < 1 || (size_t)n * T > (size_t)INT32_MAX / (size_t)wide) {
        fx_seterr("batch: %d rows of %d tokens is empty or too large", n, T);
        return -1;
    }
    if (fx_config_family(c)->head_kind == FX_HEAD_LM) return lm_batch_check(c, b, train);
    if (train && !b->labels) { fx_seterr("batch: training needs labels"); return -1; }
    if (b->labels)
        for (int i = 0; i < n; i++) {
            float y = b->labels[i];
            if (!isfinite(y) || (L > 1 && (y != floorf(y) || y < 0 || y >= L))) {
                fx_seterr("batch: row %d: label %g is not %s", i, y, L > 1 ? "a class id in [0, num_labels)" : "finite");
                return -1;
            }
        }
    /* token ids in the vocabulary, and positions (pad + count of non-pad tokens) within the table */
    for (int i = 0; i < n; i++) {
        int count = 0;
        for (int t = 0; t < T; t++) {
            int32_t id = b->ids[(size_t)i * T + t];
            if (id < 0 || id >= c->vocab_size) {
                fx_seterr("batch: row %d, token %d: id %d outside the vocabulary [0, %d)", i, t, (int)id, c->vocab_size);
                return -1;
            }
            if (id != c->pad_id && c->pad_id + ++count >= c->max_positions) {
                fx_seterr("batch: row %d: %d tokens exceed max_position_embeddings %d", i, count, c->max_positions);
                return -1;
            }
        }
    }
    return 0;
}

/* ============================================================================================
 * one step: validate, forward, loss, backward
 * ============================================================================================ */

/* The causal LM's step: embeddings, pre-LN layers, ln_f and the tied head, the smoothed loss over the
 * shifted targets; backward through the same. LOGITS (n, T, V). */
static float lm_step(fx_model *m, const fx_batch *b, int train, float *logits) {
    const fx_ops *op = m->ops;
    const fx_config *c = &m->c;
    int n = b->n, T = b->T, N = n * T, V = c->vocab_size;
    ws_prepare(m, n, T, train);
    workspace *w = m->ws;
    m->fam->position_ids(c, b, w->hpos);
    op->upload(w->ids, b->ids, (size_t)N * sizeof *w->ids);
    op->upload(w->pos, w->hpos, (size_t)N * sizeof *w->pos);
    op->upload(w->mask, b->mask, (size_t)N * sizeof *w->mask);
    if (b->targets) op->upload(w->targets, b->targets, (size_t)N * sizeof *w->targets);
    embeddings_forward(m, N, train);
    for (int l = 0; l < c->layers; l++) layer_forward_pre(m, l, l ? w->L[l - 1].out : w->x0, n, T, NULL);
    const float *xL = w->L[c->layers - 1].out;
    lm_head_forward(m, xL, 0, N);
    if (logits) op->download(logits, w->logits, (size_t)N * V * sizeof(float));
    int count = b->targets ? lm_count(b) : 0;
    /* no position predicts anything: loss 0 and no gradient (transformers would give 0/0) */
    double loss = count ? op->lm_loss(w->dlogits, w->logits, w->targets, n, T, V, c->label_smoothing, count) : 0;
    if (!train) return (float)loss;
    if (!count) op->zero(w->dlogits, (size_t)N * V);
    op->zero(m->grad, m->train.n);
    lm_head_backward(m, N, xL, w->dout);
    for (int l = c->layers - 1; l >= 0; l--) {
        layer_backward_pre(m, l, l ? w->din : NULL, w->dout, l ? w->L[l - 1].out : w->x0, n, T);
        float *t = w->dout; w->dout = w->din; w->din = t;
    }
    return (float)loss;
}

float fx_model_step(fx_model *m, const fx_batch *b, int train, float *logits) {
    const fx_ops *op = m->ops;
    const fx_config *c = &m->c;
    int n = b->n, T = b->T, H = c->hidden, L = c->num_labels, N = n * T;
    int wide = H > c->intermediate ? H : c->intermediate;
    if (m->fam->fused_qkv && 3 * H > wide) wide = 3 * H;
    if (fx_batch_check(c, b, train, wide) != 0) return NAN;
    if (m->fam->head_kind == FX_HEAD_LM) return lm_step(m, b, train, logits);
    ws_prepare(m, n, T, train);
    workspace *w = m->ws;
    m->fam->position_ids(c, b, w->hpos);
    op->upload(w->ids, b->ids, (size_t)N * sizeof *w->ids);
    op->upload(w->pos, w->hpos, (size_t)N * sizeof *w->pos);
    op->upload(w->mask, b->mask, (size_t)N * sizeof *w->mask);
    if (b->labels) op->upload(w->labels, b->labels, (size_t)n * sizeof *w->labels);
    embeddings_forward(m, N, train);
    for (int l = 0; l < c->layers; l++) layer_forward(m, l, l ? w->L[l - 1].out : w->x0, n, T);
    head_forward(m, n, T, w->L[c->layers - 1].out);
    double loss = b->labels ? op->loss(w->dlogits, w->logits, w->labels, n, L) : 0;
    if (logits) op->download(logits, w->logits, (size_t)n * L * sizeof(float));
    if (!train) return (float)loss;

    op->zero(m->grad, m->train.n);
    head_backward(m, n, T, w->dout);
    for (int l = c->layers - 1; l >= 0; l--) {
        layer_backward(m, l, l ? w->din : NULL, w->dout, l ? w->L[l - 1].out : w->x0, n, T);
        float *t = w->dout; w->dout = w->din; w->din = t;
    }
    return (float)loss;
}

/* ============================================================================================
 * decoding with a key/value cache (the model side of fx_decoder)
 * ============================================================================================
 * Each layer keeps K and V of every slot, (slots, cap, H), cap growing by doubling up to n_positions. A
 * step runs the same layer code as the full forward on one token per slot (N = ns), with attention
 * reading the cache; so its logits are the full forward's at that position, to the rounding of products
 * of other shapes. reorder copies slots into a spare cache and swaps the two. */

typedef struct {
    fx_model *m;
    int nslots, cap;
    float **kc, **vc, **sk, **sv;    /* (layers) caches and their spares, (nslots, cap, H) each */
    float *scores; size_t scap;      /* (ns, nh, len) attention scratch */
    int32_t *ids, *pos; uint8_t *mask; int hcap; /* host batch of the call */
} decoder;

/* Room for NEED positions per slot, keeping what the slots hold. */
static void dec_reserve(decoder *d, int need) {
    fx_model *m = d->m;
    const fx_ops *op = m->ops;
    if (need <= d->cap) return;
    int cap = d->cap ? d->cap : 16;
    while (cap < need) cap *= 2;
    if (cap > m->c.max_positions) cap = m->c.max_positions;
    size_t H = m->c.hidden, bytes = (size_t)d->nslots * cap * H * sizeof(float);
    for (int l = 0; l < m->c.layers; l++) {
        float *k = op->alloc(bytes), *v = op->alloc(bytes);
        if (d->cap) {
            op->copy_rows(k, (size_t)cap * H, d->kc[l], (size_t)d->cap * H, d->nslots, (int)((size_t)d->cap * H));
            op->copy_rows(v, (size_t)cap * H, d->vc[l], (size_t)d->cap * H, d->nslots, (int)((size_t)d->cap * H));
        }
        op->release(d->kc[l]); op->release(d->vc[l]); op->release(d->sk[l]); op->release(d->sv[l]);
        d->kc[l] = k; d->vc[l] = v;
        d->sk[l] = op->alloc(bytes); d->sv[l] = op->alloc(bytes);
    }
    d->cap = cap;
}

/* Runs N = ns * T tokens (ids, positions already in d's host arrays) through the layers; POS as
 * decode_at's. The last layer's output stays in the workspace. */
static const float *dec_layers(decoder *d, int ns, int T, int pos) {
    fx_model *m = d->m;
    const fx_ops *op = m->ops;
    int N = ns * T;
    ws_prepare(m, ns, T, 0);
    workspace *w = m->ws;
    op->upload(w->ids, d->ids, (size_t)N * sizeof *w->ids);
    op->upload(w->pos, d->pos, (size_t)N * sizeof *w->pos);
    op->upload(w->mask, d->mask, (size_t)N);
    size_t need = (size_t)ns * m->c.heads * (size_t)(pos + 1);
    if (pos >= 0 && need > d->scap) {
        op->release(d->scores);
        d->scores = op->alloc(need * sizeof(float));
        d->scap = need;
    }
    embeddings_forward(m, N, 0);
    for (int l = 0; l < m->c.layers; l++) {
        decode_at at = {d->kc[l], d->vc[l], d->cap, pos, d->scores};
        layer_forward_pre(m, l, l ? w->L[l - 1].out : w->x0, ns, T, &at);
    }
    return w->L[m->c.layers - 1].out;
}

static int dec_host(decoder *d, int n, const int *ids, int pos0, int step) {
    const fx_config *c = &d->m->c;
    if (n > d->hcap) {
        d->ids = fx_realloc(d->ids, (size_t)n * sizeof *d->ids);
        d->pos = fx_realloc(d->pos, (size_t)n * sizeof *d->pos);
        d->mask = fx_realloc(d->mask, (size_t)n);
        d->hcap = n;
    }
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= c->vocab_size) {
            fx_seterr("decode: token %d of %d is %d, outside the vocabulary [0, %d)", i, n, ids[i], c->vocab_size);
            return -1;
        }
        d->ids[i] = ids[i];
        d->pos[i] = step ? pos0 : pos0 + i;
        d->mask[i] = 1;
    }
    return 0;
}

static int dec_prefill(void *ctx, const int *ids, int n, float *logits) {
    decoder *d = ctx;
    fx_model *m = d->m;
    if (n < 1 || n > m->c.max_positions) {
        fx_seterr("decode: a prompt of %d tokens (the model holds 1 to %d)", n, m->c.max_positions);
        return -1;
    }
    if (dec_host(d, n, ids, 0, 0) != 0) return -1;
    dec_reserve(d, n);
    const float *xL = dec_layers(d, 1, n, -1);
    lm_head_forward(m, xL, (size_t)n - 1, 1);
    m->ops->download(logits, ((workspace *)m->ws)->logits, (size_t)m->c.vocab_size * sizeof(float));
    return 0;
}

static int dec_step(void *ctx, int ns, const int *tok, int pos, float *logits) {
    decoder *d = ctx;
    fx_model *m = d->m;
    if (ns < 1 || ns > d->nslots || pos < 1 || pos >= m->c.max_positions) {
        fx_seterr("decode: step of %d slots at position %d (slots 1 to %d, positions 1 to %d)", ns, pos, d->nslots,
                  m->c.max_positions - 1);
        return -1;
    }
    if (dec_host(d, ns, tok, pos, 1) != 0) return -1;
    dec_reserve(d, pos + 1);
    const float *xL = dec_layers(d, ns, 1, pos);
    lm_head_forward(m, xL, 0, ns);
    m->ops->download(logits, ((workspace *)m->ws)->logits, (size_t)ns * m->c.vocab_size * sizeof(float));
    return 0;
}

static int dec_reorder(void *ctx, int ns, const int *src, int len) {
    decoder *d = ctx;
    fx_model *m = d->m;
    const fx_ops *op = m->ops;
    if (ns < 1 || ns > d->nslots || len < 0 || len > d->cap) {
        fx_seterr("decode: reorder of %d slots over %d positions (slots 1 to %d, %d positions held)", ns, len,
                  d->nslots, d->cap);
        return -1;
    }
    for (int s = 0; s < ns; s++)
        if (src[s] < 0 || src[s] >= d->nslots) {
            fx_seterr("decode: reorder: slot %d's source %d is not a slot", s, src[s]);
            return -1;
        }
    size_t H = m->c.hidden, stride = (size_t)d->cap * H, n = (size_t)len * H;
    for (int l = 0; l < m->c.layers; l++) {
        for (int s = 0; s < d->nslots; s++) { /* slots past ns keep their own */
            size_t from = (size_t)(s < ns ? src[s] : s) * stride;
            op->copy(d->sk[l] + (size_t)s * stride, d->kc[l] + from, n);
            op->copy(d->sv[l] + (size_t)s * stride, d->vc[l] + from, n);
        }
        float *t = d->kc[l]; d->kc[l] = d->sk[l]; d->sk[l] = t;
        t = d->vc[l]; d->vc[l] = d->sv[l]; d->sv[l] = t;
    }
    return 0;
}

int fx_model_decoder(fx_model *m, int nslots, fx_decoder *out) {
    memset(out, 0, sizeof *out);
    if (m->fam->head_kind != FX_HEAD_LM || !m->fam->causal) {
        fx_seterr("decode: a %s is not a causal LM", m->fam->model_type);
        return -1;
    }
    if (nslots < 1 || nslots > 4096) { fx_seterr("decode: %d slots (1 to 4096)", nslots); return -1; }
    decoder *d = fx_calloc(1, sizeof *d);
    d->m = m;
    d->nslots = nslots;
    int L = m->c.layers;
    d->kc = fx_calloc((size_t)L, sizeof *d->kc); d->vc = fx_calloc((size_t)L, sizeof *d->vc);
    d->sk = fx_calloc((size_t)L, sizeof *d->sk); d->sv = fx_calloc((size_t)L, sizeof *d->sv);
    *out = (fx_decoder){.ctx = d, .vocab = m->c.vocab_size, .max_len = m->c.max_positions,
                        .prefill = dec_prefill, .step = dec_step, .reorder = dec_reorder};
    return 0;
}

void fx_decoder_free(fx_decoder *fd) {
    decoder *d = fd->ctx;
    if (d) {
        const fx_ops *op = d->m->ops;
        for (int l = 0; l < d->m->c.layers; l++) {
            op->release(d->kc[l]); op->release(d->vc[l]); op->release(d->sk[l]); op->release(d->sv[l]);
        }
        op->release(d->scores);
        free(d->kc); free(d->vc); free(d->sk); free(d->sv);
        free(d->ids); free(d->pos); free(d->mask);
        free(d);
    }
    memset(fd, 0, sizeof *fd);
}
