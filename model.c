/* model.c: the transformer written once as calls on a backend's ops table: tensor tables and per-layer
 * views built once from the family's list, the workspace carve, the blocks forward and backward (RoBERTa's
 * encoder, GPT-2's and Llama's decoders), the heads and losses. It reads no activation or weight itself; no
 * file I/O, no family names; the optimizer step is optim.c's, the KV cache's bookkeeping decode.c's. */
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
    t->frozen = frozen;
    t->bf16 = p->bf16 && d1;
    size_t *at = t->bf16 ? &p->nbf : &p->n;
    t->off = *at;
    *at += t->n;
}

const fx_tensor *fx_params_find(const fx_params *p, const char *name) {
    for (int i = 0; i < p->nt; i++)
        if (strcmp(p->t[i].name, name) == 0) return &p->t[i];
    return NULL;
}

static int head_dim(const fx_config *c) { return c->head_dim ? c->head_dim : c->hidden / c->heads; }
/* A tensor of the list this config has: the untied LM head only when the config unties it, Llama's
 * biases only when attention_bias or mlp_bias turns them on. */
static int spec_present(const fx_config *c, const fx_tensor_spec *s) {
    return s->when == FX_WHEN_UNTIED ? c->untied_head : s->when == FX_WHEN_ATTENTION_BIAS ? c->attention_bias
         : s->when == FX_WHEN_MLP_BIAS ? c->mlp_bias : 1;
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
    case 'Q': return c->heads * head_dim(c);
    case 'K': return (c->kv_heads ? c->kv_heads : c->heads) * head_dim(c);
    default: return 0;
    }
}
static size_t spec_numel(const fx_config *c, const fx_tensor_spec *s, int n) {
    size_t total = 0;
    for (int i = 0; i < n; i++)
        if (spec_present(c, &s[i])) total += (size_t)spec_dim(c, s[i].d0) * (size_t)(s[i].d1 ? spec_dim(c, s[i].d1) : 1);
    return total;
}

size_t fx_base_numel(const fx_config *c) {
    const fx_family *f = fx_config_family(c);
    return spec_numel(c, f->embed, f->nembed) + (size_t)c->layers * spec_numel(c, f->layer, f->nlayer);
}

/* ============================================================================================
 * the base's storage under --precision
 * ============================================================================================ */

int fx_precision_parse(const char *s, int *prec) {
    if (s && !strcmp(s, "fp32")) { *prec = FX_PREC_FP32; return 0; }
    if (s && !strcmp(s, "bf16")) { *prec = FX_PREC_BF16; return 0; }
    fx_seterr("--precision must be fp32 or bf16 on the CPU, not \"%s\"", s ? s : "");
    return -1;
}

void fx_precision_note(int prec, FILE *f) {
    if (prec == FX_PREC_BF16 && strcmp(fx_matmul_bf16_kernel(), "avx512bf16"))
        fprintf(f, "fedex: --precision bf16: this CPU has no AVX-512 BF16 (or FEDEX_BF16_KERNEL=fallback), so the "
                   "bf16 products run by the fallback: the same products, widened to fp32, slower\n");
}

static size_t align64(size_t n) { return (n + 63) & ~(size_t)63; }
/* fp32 elements and bf16 elements of C's base (the vectors and the matrices under bf16). */
static void base_split(const fx_config *c, size_t *n32, size_t *n16) {
    *n32 = fx_base_numel(c);
    *n16 = 0;
    if (c->precision != FX_PREC_BF16) return;
    const fx_family *f = fx_config_family(c);
    for (int pass = 0; pass < 2; pass++) {
        const fx_tensor_spec *s = pass ? f->layer : f->embed;
        int n = pass ? f->nlayer : f->nembed;
        size_t times = pass ? (size_t)c->layers : 1;
        for (int i = 0; i < n; i++)
            if (s[i].d1 && spec_present(c, &s[i])) *n16 += times * spec_dim(c, s[i].d0) * spec_dim(c, s[i].d1);
    }
    *n32 -= *n16;
}

size_t fx_base_bytes(const fx_config *c) {
    size_t n32, n16;
    base_split(c, &n32, &n16);
    return n16 ? align64(n32 * sizeof(float)) + n16 * sizeof(uint16_t) : n32 * sizeof(float);
}

void fx_base_read(const fx_model *m, size_t off, size_t n, float *dst) {
    if (m->base.bf) fx_bf16_to_f32(dst, m->base.bf + off, n);
    else memcpy(dst, m->base.data + off, n * sizeof(float));
}

void fx_base_write(fx_model *m, size_t off, size_t n, const float *src) {
    if (m->base.bf) fx_bf16_from_f32(m->base.bf + off, src, n);
    else memcpy(m->base.data + off, src, n * sizeof(float));
}

/* ============================================================================================
 * workspace: activations kept for backward, and scratch; one buffer carved per step
 * ============================================================================================ */

typedef struct {                /* one layer, N = the batch's real tokens, packed row after row; a pruned
                                   last layer's from keep1 on (and its later targets' akeep, z): n rows */
    float *xn, *mean0, *rstd0;  /* pre-LN: (N, H) LayerNorm(x) before attention, its moments (N) */
    float *qkv;                 /* pre-LN: (N, 3H) the fused projection, q | k | v */
    float *q, *k, *v;           /* (N, H) projections; head h is columns [h*hd, (h+1)*hd). Llama: q (N, Hq),
                                   k, v (N, Hk) with Hq = heads hd, Hk = kv_heads hd, after RoPE */
    float *kf, *vf;             /* Llama: (N, Hq) k and v repeated to every query head (== k, v when
                                   kv_heads == heads), the attention's keys and values */
    uint64_t site;              /* attention dropout's site, drawn in forward, for backward's masks */
    float *att;                 /* (ops->attention_keep floats) what attention's backward needs: on the
                                   CPU the softmax's row maximum and 1 / sum per (token, head) */
    float *ctx;                 /* (N, H) attention output, heads side by side */
    uint8_t *keep1;             /* (N, H) hidden-dropout keep mask after attention.output.dense, or NULL */
    float *res1;                /* (N, H) dropout(dense(ctx)) + x: the first LayerNorm's input (post-LN),
                                   the second's (pre-LN) */
    float *mean1, *rstd1;       /* (N) */
    float *h1;                  /* (N, H) that LayerNorm's output: the MLP's input */
    float *pre;                 /* (N, I) intermediate.dense output, before GELU (Llama: gate_proj's) */
    float *up;                  /* (N, I) Llama's up_proj output */
    float *gelu;                /* (N, I) the activation's output (Llama: silu(gate) * up); RoBERTa's in
                                   training: the step's scratch w->gact, as erf holds what backward needs */
    float *erf;                 /* (N, I) RoBERTa in training: erf(pre / sqrt 2), its GELU's, for backward */
    uint8_t *keep2;             /* (N, H) hidden-dropout keep mask after output.dense, or NULL */
    float *res2;                /* (N, H) dropout(dense(gelu)) + h1: the second LayerNorm's input (post-LN) */
    float *mean2, *rstd2;       /* (N) */
    float *out;                 /* (N, H) the layer's output */
    uint8_t *akeep[FX_NTARGETS]; /* (N, in) adapter-dropout keep mask per adapted target, or NULL */
    float *z[FX_NTARGETS];      /* (N, r) dropout(x) A^T per adapted target (VeRA: the sliced A) */
} layer_acts;

typedef struct {
    char *mem; size_t cap;      /* the carved buffer (the backend's memory), grown on demand */
    int32_t *hpad; size_t hcap; /* (n, T) position ids of the padded batch, formed on the host */
    int32_t *hids, *hpos, *htgt; /* (N) the packed ids, positions and shifted targets, formed on the host */
    int32_t *hoff; int ocap;    /* (n + 1) where each row starts among the packed tokens, on the host */
    int n, N, Tmax;             /* the step's rows, real tokens and longest row */
    int drop_a;                 /* attention dropout on in this step */
    double *rope_freq;          /* (head_dim / 2) RoPE's inverse frequencies (host), or NULL */
    int32_t *ids, *pos;         /* (N) token and position ids */
    int32_t *off;               /* (n + 1) hoff in the backend's memory, for attention */
    float *labels;              /* (n) */
    float *x0;                  /* (N, H) embeddings output */
    layer_acts *L;              /* (layers): in training one slot per layer; in evaluation two slots
                                   used in turn, as nothing is kept for backward */
    float *y;                   /* (N, H) scratch: a dense layer's output before dropout + residual */
    float *gact;                /* (N, I) RoBERTa in training: GELU's output, output.dense's input */
    fx_adapter_scratch as;      /* xd, dxd (N, in_max); u, dz, du (N, r); w (N, out_max) */
    float *cls;                 /* (n, H) token 0 of the last layer (NULL when it is pruned: its output) */
    float *pctx, *px;           /* (n, H) a pruned last layer's ctx and input on the rows the head reads */
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
    float *dctx, *dq, *dk, *dv; /* (N, H); Llama (N, Hq), dk and dv per query head */
    float *dks, *dvs;           /* Llama: (N, Hk) dk, dv summed over the heads sharing them (== dk, dv in MHA) */
    float *dup;                 /* (N, I) Llama: gradient at up_proj's output */
    float *dqkv;                /* (N, 3H) pre-LN's fused projection */
    float *dhx, *dht;           /* (n, H) the head's (dhx NULL when pruned: written into dout) */
} workspace;

/* A classifier's head reads each row's token 0 only, so its last layer runs the work after attention
 * (attention.output, the MLP, both LayerNorms, their dropouts) on those n tokens, "pruned": their queries
 * still attend to every token's keys and values. Exact: no other token's rows of those layers reach the
 * head, and the n tokens draw the dropout rows they would draw among all N (dropout_mask_rows). Sums over
 * tokens (the adapters' gradients) then add n rows instead of N rows of which N - n are zero, so their
 * order may differ. A backend without dropout_mask_rows runs the layer on every token. */
static int cls_pruned(const fx_model *m, int l) { return l == m->c.layers - 1 && m->ops->dropout_mask_rows; }

/* The next 64-byte aligned block of BYTES; NULL while only measuring (MEM NULL). */
static void *take(char *mem, size_t *used, size_t bytes) {
    size_t off = (*used + 63) & ~(size_t)63;
    *used = off + bytes;
    return mem ? mem + off : NULL;
}
/* The one table of the workspace's sizes, for a batch of n rows holding N real tokens, the longest T:
 * each TAKE names a pointer and its element count. With MEM NULL it only measures; the backend allocates
 * what it returns. Nothing is sized by padding: every per-token tensor has N rows, but a pruned last
 * layer's after attention (R = n in training; cls_pruned). */
static size_t ws_carve(const fx_model *m, workspace *w, int n, int Tmax, int Ntok, int train, char *mem) {
    const fx_config *c = &m->c;
    size_t N = (size_t)Ntok, H = c->hidden, I = c->intermediate, r = m->a.r, nL = c->num_labels;
    size_t att = m->ops->attention_keep(n, Tmax, Ntok, c->heads, train && c->attention_dropout > 0);
    int pre = m->fam->norm_place == FX_NORM_PRE, lm = m->fam->head_kind == FX_HEAD_LM;
    int llama = m->fam->norm == FX_NORM_RMSNORM, gqa = llama && c->kv_heads && c->kv_heads != c->heads;
    size_t Hq = (size_t)c->heads * head_dim(c), Hk = (size_t)(c->kv_heads ? c->kv_heads : c->heads) * head_dim(c);
    size_t in_max = H > I ? H : I;
    if (Hq > in_max) in_max = Hq;
    size_t out_max = pre && 3 * H > in_max ? 3 * H : in_max; /* any adapted layer's fit */
    size_t nlog = lm ? N * (size_t)c->vocab_size : (size_t)n * nL;
    int drop_h = train && c->hidden_dropout > 0, drop_a = train && c->attention_dropout > 0;
    int drop_c = train && c->classifier_dropout > 0, drop_ad = train && m->a.dropout > 0;
    w->drop_a = drop_a;
    size_t used = 0;
#define TAKE(ptr, count) ((ptr) = take(mem, &used, (count) * sizeof *(ptr)))
#define TAKE_IF(cond, ptr, count) ((ptr) = (cond) ? take(mem, &used, (count) * sizeof *(ptr)) : NULL)
    TAKE(w->ids, N); TAKE(w->pos, N); TAKE(w->off, (size_t)n + 1); TAKE(w->labels, (size_t)n);
    TAKE(w->x0, N * H);
    int slots = train ? c->layers : (c->layers < 2 ? c->layers : 2);
    int prune = !lm && cls_pruned(m, c->layers - 1);
    /* RoBERTa's GELU in training keeps erf per layer (its backward's), its output is scratch */
    int keep_erf = train && !pre && !llama;
    for (int l = 0; l < c->layers; l++) {
        layer_acts *A = &w->L[l];
        if (l >= slots) { *A = w->L[l % 2]; continue; }
        /* R: the rows after attention; a pruned last layer's own slot (training) holds the head's n only */
        size_t R = prune && train && l == c->layers - 1 ? (size_t)n : N;
        TAKE_IF(pre, A->xn, N * H); TAKE_IF(pre, A->mean0, N); TAKE_IF(pre, A->rstd0, N);
        TAKE_IF(pre, A->qkv, N * 3 * H);
        TAKE(A->q, N * Hq); TAKE(A->k, N * Hk); TAKE(A->v, N * Hk);
        TAKE_IF(gqa, A->kf, N * Hq); TAKE_IF(gqa, A->vf, N * Hq);
        if (!gqa) { A->kf = A->k; A->vf = A->v; }
        TAKE(A->att, att);
        TAKE(A->ctx, N * Hq);
        TAKE_IF(drop_h, A->keep1, R * H);
        TAKE(A->res1, R * H); TAKE(A->mean1, R); TAKE(A->rstd1, R);
        TAKE(A->h1, R * H);
        TAKE(A->pre, R * I); TAKE_IF(llama, A->up, N * I);
        TAKE_IF(keep_erf, A->erf, R * I); TAKE_IF(!keep_erf, A->gelu, R * I);
        TAKE_IF(drop_h, A->keep2, R * H);
        TAKE_IF(!pre, A->res2, R * H); TAKE_IF(!pre, A->mean2, R); TAKE_IF(!pre, A->rstd2, R);
        TAKE(A->out, R * H);
        for (int t = 0; t < FX_NTARGETS; t++) {
            const fx_linear_view *lv = &m->layer[l].lin[t];
            size_t rows = t == FX_TI_QUERY || t == FX_TI_KEY || t == FX_TI_VALUE || t == FX_TI_QKV ? N : R;
            TAKE_IF(lv->ad >= 0 && drop_ad, A->akeep[t], rows * (size_t)lv->in);
            TAKE_IF(lv->ad >= 0, A->z[t], rows * r);
        }
    }
    TAKE(w->y, N * H);
    TAKE_IF(keep_erf, w->gact, N * I);
    if (keep_erf)
        for (int l = 0; l < c->layers; l++) w->L[l].gelu = w->gact;
    TAKE(w->as.xd, N * in_max);
    TAKE(w->as.u, N * r); TAKE(w->as.w, N * out_max);
    int sorf = m->a.kind == FX_SORF;
    TAKE_IF(sorf, w->as.w2, N * out_max); TAKE_IF(sorf, w->as.lam, r * r); TAKE_IF(sorf && train, w->as.dlam, r * r);
    TAKE_IF(!prune, w->cls, (size_t)n * H); /* pruned: the last layer's output is those rows */
    TAKE_IF(prune, w->pctx, (size_t)n * H); TAKE_IF(prune, w->px, (size_t)n * H);
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
    TAKE_IF(train, w->dctx, N * Hq); TAKE_IF(train, w->dq, N * Hq);
    TAKE_IF(train, w->dk, N * Hq); TAKE_IF(train, w->dv, N * Hq);
    TAKE_IF(train && gqa, w->dks, N * Hk); TAKE_IF(train && gqa, w->dvs, N * Hk);
    if (!gqa) { w->dks = w->dk; w->dvs = w->dv; }
    TAKE_IF(train && llama, w->dup, N * I);
    TAKE_IF(train && pre, w->dqkv, N * 3 * H);
    TAKE_IF(train, w->as.dxd, N * in_max);
    TAKE_IF(train, w->as.dz, N * r); TAKE_IF(train, w->as.du, N * r);
    TAKE_IF(train && !prune, w->dhx, (size_t)n * H); TAKE_IF(train, w->dht, (size_t)n * H);
#undef TAKE
#undef TAKE_IF
    return used;
}

/* Host room for a padded batch of n rows of T tokens: its positions, and the packed arrays. */
static void ws_host(workspace *w, int n, int T) {
    if ((size_t)n * T > w->hcap) {
        w->hcap = (size_t)n * T;
        w->hpad = fx_realloc(w->hpad, w->hcap * sizeof *w->hpad);
        w->hids = fx_realloc(w->hids, w->hcap * sizeof *w->hids);
        w->hpos = fx_realloc(w->hpos, w->hcap * sizeof *w->hpos);
        w->htgt = fx_realloc(w->htgt, w->hcap * sizeof *w->htgt);
    }
    if (n + 1 > w->ocap) {
        w->ocap = n + 1;
        w->hoff = fx_realloc(w->hoff, (size_t)w->ocap * sizeof *w->hoff);
    }
}

/* Packs a padded batch (n, T) of IDS, positions w->hpad and TARGETS (or NULL) into its real tokens
 * (mask != 0) row after row: w->hids, w->hpos, w->hoff, n, N, Tmax; w->htgt[p] the target packed token p
 * predicts (the padded row's next position's; FX_IGNORE past the row's end). Returns how many predict
 * one. The packed layout depends on the rows' real tokens only, not on T. */
static int ws_pack(workspace *w, const int32_t *ids, const uint8_t *mask, const int32_t *targets, int n, int T) {
    int N = 0, Tmax = 0, count = 0;
    for (int b = 0; b < n; b++) {
        w->hoff[b] = N;
        for (int t = 0; t < T; t++) {
            size_t i = (size_t)b * T + t;
            if (!mask[i]) continue;
            int32_t y = targets && t + 1 < T ? targets[i + 1] : FX_IGNORE;
            w->hids[N] = ids[i];
            w->hpos[N] = w->hpad[i];
            w->htgt[N++] = y;
            count += y != FX_IGNORE;
        }
        if (N - w->hoff[b] > Tmax) Tmax = N - w->hoff[b];
    }
    w->hoff[n] = N;
    w->n = n; w->N = N; w->Tmax = Tmax;
    return count;
}

/* Lays the workspace out for the packed batch (ws_pack's n, N, Tmax), growing the buffer when it is the
 * largest seen, and uploads the packed ids, positions and row offsets. */
static void ws_prepare(fx_model *m, int train) {
    workspace *w = m->ws;
    size_t need = ws_carve(m, w, w->n, w->Tmax, w->N, train, NULL);
    if (need > w->cap) {
        m->ops->release(w->mem);
        w->mem = m->ops->alloc(need);
        w->cap = need;
    }
    ws_carve(m, w, w->n, w->Tmax, w->N, train, w->mem);
    m->ops->upload(w->ids, w->hids, (size_t)w->N * sizeof *w->ids);
    m->ops->upload(w->pos, w->hpos, (size_t)w->N * sizeof *w->pos);
    m->ops->upload(w->off, w->hoff, ((size_t)w->n + 1) * sizeof *w->off);
}

/* ============================================================================================
 * creation: tables and views from the family's list, then the adapters
 * ============================================================================================ */

/* Where a layer tensor of ROLE goes in the view, or NULL when this model.c does not run such a tensor. */
#define NO_BIAS ((size_t)-1) /* a linear view's b when the linear has no bias */
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
         : role == FX_EMB_LNF_W ? &v->lnf_w : role == FX_EMB_LNF_B ? &v->lnf_b
         : role == FX_EMB_HEAD ? &v->head : NULL;
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
    /* Llama's: pre-norm RMSNorm, separate q, k, v (grouped-query), RoPE, SwiGLU, an LM head tied or not */
    int llama = f->norm_place == FX_NORM_PRE && f->norm == FX_NORM_RMSNORM && !f->fused_qkv && f->causal &&
                f->positions == FX_POS_ROPE && f->position_ids && f->act == FX_ACT_SWIGLU && f->head_kind == FX_HEAD_LM;
    if (llama) return 0;
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
        if (!spec_present(c, &s[i])) continue;
        size_t *dst = slot(view, s[i].role);
        if (!dst) {
            fx_seterr("model: tensor %s%s (unknown role) is not one this model.c runs", pre, s[i].name);
            return -1;
        }
        snprintf(name, sizeof name, "%s%s", pre, s[i].name);
        fx_params_add(p, name, spec_dim(c, s[i].d0), s[i].d1 ? spec_dim(c, s[i].d1) : 0, frozen);
        *dst = p->t[p->nt - 1].off;
        p->t[p->nt - 1].conv1d = s[i].conv1d;
        p->t[p->nt - 1].untied = s[i].when == FX_WHEN_UNTIED;
    }
    return 0;
}
static size_t *layer_slot_v(void *v, int role) { return layer_slot(v, role); }
static size_t *embed_slot_v(void *v, int role) { return embed_slot(v, role); }
static size_t *head_slot_v(void *v, int role) { return head_slot(v, role); }

int fx_model_create(fx_model *m, const fx_config *c, const fx_adapter_cfg *a, float *base) {
    memset(m, 0, sizeof *m);
    if (c->hidden < 1 || c->heads < 1 || (!c->head_dim && c->hidden % c->heads) || c->head_dim < 0 ||
        c->kv_heads < 0 || (c->kv_heads && c->heads % c->kv_heads) || c->layers < 1 || c->intermediate < 1 ||
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
    for (int l = 0; l < c->layers; l++)
        for (int t = 0; t < FX_NTARGETS; t++) m->layer[l].lin[t].b = NO_BIAS; /* until the list gives one */
    if (c->precision != FX_PREC_FP32 && c->precision != FX_PREC_BF16) {
        fx_seterr("model config: unknown precision %d", c->precision);
        fx_model_free(m);
        return -1;
    }
    m->base.bf16 = c->precision == FX_PREC_BF16;
    int rc = add_specs(&m->base, c, f->embed, f->nembed, -1, 1, embed_slot_v, &m->emb, NULL);
    for (int l = 0; rc == 0 && l < c->layers; l++) {
        rc = add_specs(&m->base, c, f->layer, f->nlayer, l, 1, layer_slot_v, &m->layer[l], f->layer_fmt);
        for (int t = 0; t < FX_NTARGETS; t++) fx_target_dims(c, t, &m->layer[l].lin[t].out, &m->layer[l].lin[t].in);
    }
    if (rc != 0) { fx_model_free(m); return -1; }
    size_t n32, n16;
    base_split(c, &n32, &n16);
    if (m->base.n != n32 || m->base.nbf != n16)
        fx_die("model.c: base table (%zu + %zu) and fx_base_numel disagree", m->base.n, m->base.nbf);

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
    if (f->positions == FX_POS_ROPE) {
        w->rope_freq = fx_malloc((size_t)(head_dim(c) / 2 + 1) * sizeof *w->rope_freq);
        fx_rope_inv_freq(c, head_dim(c), w->rope_freq);
    }
    m->base_owned = base == NULL;
    m->base.data = base ? base : fx_calloc(fx_base_bytes(c), 1);
    if (m->base.bf16) m->base.bf = (uint16_t *)((char *)m->base.data + align64(m->base.n * sizeof(float)));
    m->train.data = fx_calloc(m->train.n, sizeof(float));
    m->grad = fx_calloc(m->train.n, sizeof(float));
    m->adam_m = fx_calloc(m->train.n, sizeof(float));
    m->adam_v = fx_calloc(m->train.n, sizeof(float));
    fx_rng_seed(&m->drop, a->seed ^ 0xd50a0d50a0d50aULL);
    return 0;
}

size_t fx_model_workspace_bytes(const fx_model *m) { return m->ws ? ((const workspace *)m->ws)->cap : 0; }

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
        free(w->hpad); free(w->hids); free(w->hpos); free(w->htgt); free(w->hoff);
        free(w->rope_freq);
        m->ops->release(w->mem);
        free(w);
    }
    memset(m, 0, sizeof *m);
}

/* ============================================================================================
 * the block, forward and backward, on the model's ops
 * ============================================================================================ */

/* A weight of the base (frozen) and of the trainable buffer at a view's offset; a linear's bias, or NULL
 * for a linear without one (Llama's). */
static const float *W(const fx_model *m, size_t off) { return m->base.data + off; }
static const float *Bias(const fx_model *m, size_t off) { return off == NO_BIAS ? NULL : m->base.data + off; }
static const float *P(const fx_model *m, size_t off) { return m->train.data + off; }
/* A base matrix held in bf16 (FX_PREC_BF16), or NULL when the base is fp32. */
static const uint16_t *W16(const fx_model *m, size_t off) { return m->base.bf ? m->base.bf + off : NULL; }

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
    int rope = m->fam->positions == FX_POS_ROPE; /* RoPE: positions in attention */
    if (m->base.bf) {
        m->ops->embeddings_forward_bf16(w->x0, w->ids, w->pos, W16(m, e->word), rope ? NULL : W16(m, e->pos),
                                        pre ? NULL : W16(m, e->type), pre ? NULL : W(m, e->ln_w),
                                        pre ? NULL : W(m, e->ln_b), N, c->hidden, c->layer_norm_eps,
                                        drop ? p : 0.0f, drop ? fx_rng_u64(&m->drop) : 0);
        return;
    }
    const float *posw = rope ? NULL : W(m, e->pos);
    m->ops->embeddings_forward(w->x0, w->ids, w->pos, W(m, e->word), posw, pre ? NULL : W(m, e->type),
                               pre ? NULL : W(m, e->ln_w), pre ? NULL : W(m, e->ln_b), N, c->hidden,
                               c->layer_norm_eps, drop ? p : 0.0f, drop ? fx_rng_u64(&m->drop) : 0);
}

/* A dense layer of encoder layer L, target T: frozen y = x W^T + b, plus the adapter when there is one. */
static void dense_forward_rows(fx_model *m, int l, int t, float *y, const float *x, layer_acts *A, int N,
                              const int32_t *rows /* (N) host: x's tokens, or NULL for 0 .. N-1 */) {
    const fx_linear_view *lv = &m->layer[l].lin[t];
    if (m->base.bf) m->ops->linear_forward_bf16(y, x, W16(m, lv->w), Bias(m, lv->b), N, lv->in, lv->out);
    else m->ops->linear_forward(y, x, W(m, lv->w), Bias(m, lv->b), N, lv->in, lv->out);
    if (lv->ad >= 0) fx_adapter_forward(m, lv->ad, y, x, A->akeep[t], A->z[t], N, rows, &((workspace *)m->ws)->as);
}
static void dense_forward(fx_model *m, int l, int t, float *y, const float *x, layer_acts *A, int N) {
    dense_forward_rows(m, l, t, y, x, A, N, NULL);
}
/* dx = dy W (+ dx when ACC) plus the adapter's share; adapter gradients. DX NULL: adapter gradients only. */
static void dense_backward(fx_model *m, int l, int t, float *dx, const float *dy, const float *x,
                           const layer_acts *A, int N, int acc) {
    const fx_linear_view *lv = &m->layer[l].lin[t];
    if (dx && m->base.bf) m->ops->linear_backward_bf16(dx, dy, W16(m, lv->w), N, lv->in, lv->out, acc ? 1.0f : 0.0f);
    else if (dx) m->ops->linear_backward(dx, dy, W(m, lv->w), N, lv->in, lv->out, acc ? 1.0f : 0.0f);
    if (lv->ad >= 0) fx_adapter_backward(m, lv->ad, dx, dy, x, A->akeep[t], A->z[t], N, &((workspace *)m->ws)->as);
}

/* Hidden dropout's mask for R rows: ROWS (host) their tokens, or NULL for tokens 0 .. R-1. */
static void hidden_mask(fx_model *m, uint8_t *keep, const int32_t *rows, int R) {
    uint64_t site = fx_rng_u64(&m->drop);
    size_t H = (size_t)m->c.hidden;
    if (rows) m->ops->dropout_mask_rows(keep, rows, (size_t)R, H, m->c.hidden_dropout, site);
    else m->ops->dropout_mask(keep, (size_t)R, H, m->c.hidden_dropout, site);
}
/* The n rows the head reads (each row's token 0, at w->hoff) of X (N, H) into DST (n, H), and back into
 * DST (N, H), zero elsewhere. */
static void gather_heads(fx_model *m, float *dst, const float *x) {
    workspace *w = m->ws;
    size_t H = (size_t)m->c.hidden;
    for (int b = 0; b < w->n; b++) m->ops->copy_rows(dst + b * H, H, x + (size_t)w->hoff[b] * H, H, 1, (int)H);
}
static void scatter_heads(fx_model *m, float *dst, const float *x) {
    workspace *w = m->ws;
    size_t H = (size_t)m->c.hidden;
    m->ops->zero(dst, (size_t)w->N * H);
    for (int b = 0; b < w->n; b++) m->ops->copy_rows(dst + (size_t)w->hoff[b] * H, H, x + b * H, H, 1, (int)H);
}

/* --- one encoder layer (RobertaLayer, post-LN):
 *   q, k, v = x Wq^T + bq, ...  (+ adapters)
 *   ctx = attention(q, k, v);   h1 = LayerNorm(dropout(ctx Wao^T + bao) + x)
 *   g = GELU(h1 Wi^T + bi);     out = LayerNorm(dropout(g Wo^T + bo) + h1)
 * From attention.output on, a pruned layer (cls_pruned) holds the head's n rows, in batch order (ctx keeps
 * N; its n rows are gathered into w->pctx). */
static void layer_forward(fx_model *m, int l, const float *x /* (N, H) */) {
    const fx_ops *op = m->ops;
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    const fx_layer_view *V = &m->layer[l];
    layer_acts *A = &w->L[l];
    int N = w->N, H = c->hidden, I = c->intermediate;
    dense_forward(m, l, FX_TI_QUERY, A->q, x, A, N);
    dense_forward(m, l, FX_TI_KEY, A->k, x, A, N);
    dense_forward(m, l, FX_TI_VALUE, A->v, x, A, N);
    uint64_t site = A->site = w->drop_a ? fx_rng_u64(&m->drop) : 0;
    op->attention_forward(A->ctx, A->att, A->q, A->k, A->v, w->off, w->n, w->Tmax, H, c->heads, 0, 0,
                          w->drop_a ? c->attention_dropout : 0.0f, site);
    int R = N;                      /* the rows from here on */
    const int32_t *rows = NULL;     /* their tokens (NULL: all, in order) */
    const float *ctx = A->ctx, *xr = x;
    if (cls_pruned(m, l)) {
        R = w->n; rows = w->hoff;
        gather_heads(m, w->pctx, A->ctx); gather_heads(m, w->px, x);
        ctx = w->pctx; xr = w->px;
    }
    dense_forward_rows(m, l, FX_TI_ATTN_OUT, w->y, ctx, A, R, rows);
    if (A->keep1) hidden_mask(m, A->keep1, rows, R);
    op->residual_layernorm_forward(A->h1, A->res1, A->mean1, A->rstd1, w->y, A->keep1, c->hidden_dropout, xr,
                                   W(m, V->ln1_w), W(m, V->ln1_b), R, H, c->layer_norm_eps);
    dense_forward_rows(m, l, FX_TI_INTER, A->pre, A->h1, A, R, rows);
    op->gelu_forward(A->gelu, A->erf, A->pre, (size_t)R * I);
    dense_forward_rows(m, l, FX_TI_OUTPUT, w->y, A->gelu, A, R, rows);
    if (A->keep2) hidden_mask(m, A->keep2, rows, R);
    op->residual_layernorm_forward(A->out, A->res2, A->mean2, A->rstd2, w->y, A->keep2, c->hidden_dropout, A->h1,
                                   W(m, V->ln2_w), W(m, V->ln2_b), R, H, c->layer_norm_eps);
}

/* The same layer backwards from dout (N, H). dx (N, H) receives the gradient at the layer's input, or is
 * NULL for the first layer (nothing before it is trainable). */
static void layer_backward(fx_model *m, int l, float *dx /* (N, H) or NULL */, const float *dout /* (N or n, H) */,
                           const float *x /* (N, H) */) {
    const fx_ops *op = m->ops;
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    const fx_layer_view *V = &m->layer[l];
    const layer_acts *A = &w->L[l];
    int N = w->N, H = c->hidden, I = c->intermediate;
    int pruned = cls_pruned(m, l), R = pruned ? w->n : N; /* DOUT has R rows, as the layer's output */
    size_t NH = (size_t)N * H, RH = (size_t)R * H;
    /* out = LayerNorm(res2), res2 = dropout(y2) + h1, y2 = dense(gelu) */
    op->layernorm_backward(w->dres, dout, A->res2, A->mean2, A->rstd2, W(m, V->ln2_w), R, H);
    op->dropout_apply(w->dy, w->dres, A->keep2, c->hidden_dropout, RH);
    /* output.dense's adapter may read its input, GELU's output: in the scratch of a later layer by now */
    if (A->erf && V->lin[FX_TI_OUTPUT].ad >= 0 && fx_adapter_backward_reads_x(m))
        op->gelu_forward(A->gelu, NULL, A->pre, (size_t)R * I);
    dense_backward(m, l, FX_TI_OUTPUT, w->dI, w->dy, A->gelu, A, R, 0);
    op->gelu_backward(w->dI, A->pre, A->erf, (size_t)R * I);
    op->copy(w->dh1, w->dres, RH); /* the residual's share */
    dense_backward(m, l, FX_TI_INTER, w->dh1, w->dI, A->h1, A, R, 1);
    /* h1 = LayerNorm(res1), res1 = dropout(y1) + x, y1 = dense(ctx) */
    op->layernorm_backward(w->dres, w->dh1, A->res1, A->mean1, A->rstd1, W(m, V->ln1_w), R, H);
    op->dropout_apply(w->dy, w->dres, A->keep1, c->hidden_dropout, RH);
    if (pruned) { /* back to every token: zero but on the head's rows */
        dense_backward(m, l, FX_TI_ATTN_OUT, w->dh1, w->dy, w->pctx, A, R, 0);
        scatter_heads(m, w->dctx, w->dh1);
    } else {
        dense_backward(m, l, FX_TI_ATTN_OUT, w->dctx, w->dy, A->ctx, A, N, 0);
    }
    op->attention_backward(w->dq, w->dk, w->dv, w->dctx, A->q, A->k, A->v, A->att, w->off, w->n, w->Tmax, H,
                           c->heads, 0, 0, w->drop_a ? c->attention_dropout : 0.0f, A->site);
    /* x feeds the residual and the three projections */
    if (dx && pruned) scatter_heads(m, dx, w->dres);
    else if (dx) op->copy(dx, w->dres, NH);
    dense_backward(m, l, FX_TI_QUERY, dx, w->dq, x, A, N, 1);
    dense_backward(m, l, FX_TI_KEY, dx, w->dk, x, A, N, 1);
    dense_backward(m, l, FX_TI_VALUE, dx, w->dv, x, A, N, 1);
}

/* --- one decoder layer (GPT2Block, pre-LN), x the residual stream:
 *   xn = LN1(x);  q | k | v = xn Wc^T + bc  (c_attn, fused; + adapter);  ctx = causal attention(q, k, v)
 *   x1 = x + dropout(ctx Wp^T + bp)  (attn.c_proj);  h1 = LN2(x1)
 *   out = x1 + dropout(gelu_new(h1 Wfc^T + bfc) Wp2^T + bp2)  (mlp.c_fc, mlp.c_proj)
 * DEC (decoding, dropout off): k and v also go into the layer's cache; a step's queries attend to it. */
static void layer_forward_pre(fx_model *m, int l, const float *x /* (N, H) */, const fx_decode_at *dec) {
    const fx_ops *op = m->ops;
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    const fx_layer_view *V = &m->layer[l];
    layer_acts *A = &w->L[l];
    int N = w->N, H = c->hidden, I = c->intermediate;
    size_t NH = (size_t)N * H;
    op->layernorm_forward(A->xn, A->mean0, A->rstd0, x, W(m, V->ln1_w), W(m, V->ln1_b), N, H, c->layer_norm_eps);
    dense_forward(m, l, FX_TI_QKV, A->qkv, A->xn, A, N);
    op->copy_rows(A->q, (size_t)H, A->qkv, 3 * (size_t)H, N, H);
    op->copy_rows(A->k, (size_t)H, A->qkv + H, 3 * (size_t)H, N, H);
    op->copy_rows(A->v, (size_t)H, A->qkv + 2 * H, 3 * (size_t)H, N, H);
    if (dec && dec->pos >= 0) { /* one token per slot at dec->pos */
        size_t stride = (size_t)dec->cap * H;
        op->copy_rows(dec->kc + (size_t)dec->pos * H, stride, A->k, (size_t)H, N, H);
        op->copy_rows(dec->vc + (size_t)dec->pos * H, stride, A->v, (size_t)H, N, H);
        op->attention_decode(A->ctx, dec->scores, A->q, dec->kc, dec->vc, N, dec->pos + 1, dec->cap, H, c->heads, 0);
    } else {
        if (dec) { op->copy(dec->kc, A->k, NH); op->copy(dec->vc, A->v, NH); } /* slot 0, positions 0 .. T-1 */
        uint64_t site = A->site = w->drop_a ? fx_rng_u64(&m->drop) : 0;
        op->attention_forward(A->ctx, A->att, A->q, A->k, A->v, w->off, w->n, w->Tmax, H, c->heads, 1, 0,
                              w->drop_a ? c->attention_dropout : 0.0f, site);
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
                               const float *x /* (N, H) */) {
    const fx_ops *op = m->ops;
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    const fx_layer_view *V = &m->layer[l];
    const layer_acts *A = &w->L[l];
    int N = w->N, H = c->hidden, I = c->intermediate;
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
    op->attention_backward(w->dq, w->dk, w->dv, w->dctx, A->q, A->k, A->v, A->att, w->off, w->n, w->Tmax, H,
                           c->heads, 1, 0, w->drop_a ? c->attention_dropout : 0.0f, A->site);
    op->copy_rows(w->dqkv, 3 * (size_t)H, w->dq, (size_t)H, N, H);
    op->copy_rows(w->dqkv + H, 3 * (size_t)H, w->dk, (size_t)H, N, H);
    op->copy_rows(w->dqkv + 2 * H, 3 * (size_t)H, w->dv, (size_t)H, N, H);
    /* xn = LN1(x) feeds c_attn; x also feeds x1 directly */
    dense_backward(m, l, FX_TI_QKV, dx ? w->dh1 : NULL, w->dqkv, A->xn, A, N, 0);
    if (!dx) return;
    op->layernorm_backward(dx, w->dh1, x, A->mean0, A->rstd0, W(m, V->ln1_w), N, H);
    op->axpy(dx, 1.0f, w->dres, NH);
}

/* --- one Llama decoder layer (LlamaDecoderLayer), x the residual stream, Hq = heads hd, Hk = kv_heads hd:
 *   xn = RMSNorm1(x);  q = xn Wq^T, k = xn Wk^T, v = xn Wv^T  (+ adapters);  q, k = RoPE(q, k)
 *   k, v repeated to every query head (HF's repeat_kv: query head h reads key/value head h / (nh / nkv))
 *   x1 = x + causal attention(q, k, v) Wo^T;  h1 = RMSNorm2(x1)
 *   out = x1 + (silu(h1 Wg^T) * (h1 Wu^T)) Wd^T  (gate_proj, up_proj, down_proj)
 * Biases where the config has them, no dropout but attention's, Mistral's sliding window in its mask. DEC as
 * layer_forward_pre's (the cache holds repeated, rotated keys: (slots, cap, Hq)). */
static void repeat_kv(const fx_model *m, float *full /* (N, Hq) */, const float *kv /* (N, Hk) */, int N) {
    int hd = head_dim(&m->c), nh = m->c.heads, nkv = m->c.kv_heads, rep = nh / nkv;
    for (int h = 0; h < nh; h++)
        m->ops->copy_rows(full + (size_t)h * hd, (size_t)nh * hd, kv + (size_t)(h / rep) * hd, (size_t)nkv * hd, N, hd);
}
/* Its backward: d (N, Hk) = the sum over the query heads sharing each key/value head, in head order. */
static void repeat_kv_backward(const fx_model *m, float *d /* (N, Hk) */, const float *dfull /* (N, Hq) */, int N) {
    int hd = head_dim(&m->c), nh = m->c.heads, nkv = m->c.kv_heads, rep = nh / nkv;
    for (int h = 0; h < nh; h++) {
        float *dst = d + (size_t)(h / rep) * hd;
        const float *src = dfull + (size_t)h * hd;
        if (h % rep == 0) m->ops->copy_rows(dst, (size_t)nkv * hd, src, (size_t)nh * hd, N, hd);
        else m->ops->add_rows(dst, (size_t)nkv * hd, src, (size_t)nh * hd, N, hd);
    }
}
static void layer_forward_llama(fx_model *m, int l, const float *x /* (N, H) */, const fx_decode_at *dec) {
    const fx_ops *op = m->ops;
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    const fx_layer_view *V = &m->layer[l];
    layer_acts *A = &w->L[l];
    int N = w->N, H = c->hidden, I = c->intermediate, hd = head_dim(c), nh = c->heads;
    int nkv = c->kv_heads ? c->kv_heads : nh, Hq = nh * hd;
    size_t NH = (size_t)N * H;
    op->rmsnorm_forward(A->xn, A->rstd0, x, W(m, V->ln1_w), N, H, c->layer_norm_eps);
    dense_forward(m, l, FX_TI_QUERY, A->q, A->xn, A, N);
    dense_forward(m, l, FX_TI_KEY, A->k, A->xn, A, N);
    dense_forward(m, l, FX_TI_VALUE, A->v, A->xn, A, N);
    op->rope(A->q, w->pos, N, nh, hd, w->rope_freq, 0);
    op->rope(A->k, w->pos, N, nkv, hd, w->rope_freq, 0);
    if (A->kf != A->k) { repeat_kv(m, A->kf, A->k, N); repeat_kv(m, A->vf, A->v, N); }
    if (dec && dec->pos >= 0) { /* one token per slot at dec->pos */
        size_t stride = (size_t)dec->cap * Hq;
        op->copy_rows(dec->kc + (size_t)dec->pos * Hq, stride, A->kf, (size_t)Hq, N, Hq);
        op->copy_rows(dec->vc + (size_t)dec->pos * Hq, stride, A->vf, (size_t)Hq, N, Hq);
        op->attention_decode(A->ctx, dec->scores, A->q, dec->kc, dec->vc, N, dec->pos + 1, dec->cap, Hq, nh,
                             c->sliding_window);
    } else {
        if (dec) { op->copy(dec->kc, A->kf, (size_t)N * Hq); op->copy(dec->vc, A->vf, (size_t)N * Hq); }
        uint64_t site = A->site = w->drop_a ? fx_rng_u64(&m->drop) : 0;
        op->attention_forward(A->ctx, A->att, A->q, A->kf, A->vf, w->off, w->n, w->Tmax, Hq, nh, 1,
                              c->sliding_window, w->drop_a ? c->attention_dropout : 0.0f, site);
    }
    dense_forward(m, l, FX_TI_ATTN_OUT, A->res1, A->ctx, A, N);
    op->axpy(A->res1, 1.0f, x, NH); /* x1 = x + o_proj(ctx): one fp32 addition */
    op->rmsnorm_forward(A->h1, A->rstd1, A->res1, W(m, V->ln2_w), N, H, c->layer_norm_eps);
    dense_forward(m, l, FX_TI_GATE, A->pre, A->h1, A, N);
    dense_forward(m, l, FX_TI_INTER, A->up, A->h1, A, N);
    op->swiglu_forward(A->gelu, A->pre, A->up, (size_t)N * I);
    dense_forward(m, l, FX_TI_OUTPUT, A->out, A->gelu, A, N);
    op->axpy(A->out, 1.0f, A->res1, NH);
}

/* Its backward from dout (N, H); dx as layer_backward's. RoPE is a rotation, so its backward rotates the
 * gradient back (by minus the angle). */
static void layer_backward_llama(fx_model *m, int l, float *dx /* (N, H) or NULL */, const float *dout /* (N, H) */,
                                 const float *x /* (N, H) */) {
    const fx_ops *op = m->ops;
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    const fx_layer_view *V = &m->layer[l];
    const layer_acts *A = &w->L[l];
    int N = w->N, H = c->hidden, I = c->intermediate, hd = head_dim(c), nh = c->heads;
    int nkv = c->kv_heads ? c->kv_heads : nh, Hq = nh * hd;
    size_t NH = (size_t)N * H;
    /* out = x1 + down(silu(gate(h1)) * up(h1)), h1 = RMSNorm2(x1) */
    dense_backward(m, l, FX_TI_OUTPUT, w->dI, dout, A->gelu, A, N, 0);
    op->swiglu_backward(w->dI, w->dup, w->dI, A->pre, A->up, (size_t)N * I);
    dense_backward(m, l, FX_TI_GATE, w->dh1, w->dI, A->h1, A, N, 0);
    dense_backward(m, l, FX_TI_INTER, w->dh1, w->dup, A->h1, A, N, 1);
    op->rmsnorm_backward(w->dres, w->dh1, A->res1, A->rstd1, W(m, V->ln2_w), N, H);
    op->axpy(w->dres, 1.0f, dout, NH); /* dx1: the norm's share plus the residual's */
    /* x1 = x + o_proj(attention(RoPE(q), RoPE(k), v)) */
    dense_backward(m, l, FX_TI_ATTN_OUT, w->dctx, w->dres, A->ctx, A, N, 0);
    op->attention_backward(w->dq, w->dk, w->dv, w->dctx, A->q, A->kf, A->vf, A->att, w->off, w->n, w->Tmax, Hq,
                           nh, 1, c->sliding_window, w->drop_a ? c->attention_dropout : 0.0f, A->site);
    if (w->dks != w->dk) { repeat_kv_backward(m, w->dks, w->dk, N); repeat_kv_backward(m, w->dvs, w->dv, N); }
    op->rope(w->dq, w->pos, N, nh, hd, w->rope_freq, 1);
    op->rope(w->dks, w->pos, N, nkv, hd, w->rope_freq, 1);
    /* xn = RMSNorm1(x) feeds q, k, v; x also feeds x1 directly */
    float *dxn = dx ? w->dh1 : NULL;
    dense_backward(m, l, FX_TI_QUERY, dxn, w->dq, A->xn, A, N, 0);
    dense_backward(m, l, FX_TI_KEY, dxn, w->dks, A->xn, A, N, 1);
    dense_backward(m, l, FX_TI_VALUE, dxn, w->dvs, A->xn, A, N, 1);
    if (!dx) return;
    op->rmsnorm_backward(dx, w->dh1, x, A->rstd0, W(m, V->ln1_w), N, H);
    op->axpy(dx, 1.0f, w->dres, NH);
}

/* The decoder layer of the model's family. */
static void block_forward(fx_model *m, int l, const float *x, const fx_decode_at *dec) {
    if (m->fam->norm == FX_NORM_RMSNORM) layer_forward_llama(m, l, x, dec);
    else layer_forward_pre(m, l, x, dec);
}
static void block_backward(fx_model *m, int l, float *dx, const float *dout, const float *x) {
    if (m->fam->norm == FX_NORM_RMSNORM) layer_backward_llama(m, l, dx, dout, x);
    else layer_backward_pre(m, l, dx, dout, x);
}

/* ============================================================================================
 * the causal LM head (tied to the word embedding) and its loss
 * ============================================================================================ */

/* xf = ln_f(xL) for ROWS rows from FIRST, logits (rows, V) = xf wte^T: the head is the embedding itself.
 * Llama: xf = RMSNorm(xL) (model.norm), the head lm_head.weight unless tied to embed_tokens. */
static void lm_head_forward(fx_model *m, const float *xL /* (N, H) */, size_t first, int rows) {
    const fx_ops *op = m->ops;
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    int H = c->hidden, V = c->vocab_size;
    const float *xs = xL + first * H;
    float *xf = w->xf + first * H;
    if (m->fam->norm == FX_NORM_RMSNORM)
        op->rmsnorm_forward(xf, w->rstdf + first, xs, W(m, m->emb.lnf_w), rows, H, c->layer_norm_eps);
    else
        op->layernorm_forward(xf, w->meanf + first, w->rstdf + first, xs, W(m, m->emb.lnf_w), W(m, m->emb.lnf_b),
                              rows, H, c->layer_norm_eps);
    size_t head = c->untied_head ? m->emb.head : m->emb.word;
    if (m->base.bf) op->linear_forward_bf16(w->logits, xf, W16(m, head), NULL, rows, H, V);
    else op->matmul(0, 1, rows, V, H, 1.0f, xf, H, W(m, head), H, 0.0f, w->logits, V);
}
/* From dlogits (N, V): dout (N, H) at the last layer's output (wte is frozen: no gradient of its own). */
static void lm_head_backward(fx_model *m, int N, const float *xL, float *dout) {
    const fx_ops *op = m->ops;
    workspace *w = m->ws;
    int H = m->c.hidden, V = m->c.vocab_size;
    size_t head = m->c.untied_head ? m->emb.head : m->emb.word;
    if (m->base.bf) op->linear_backward_bf16(w->dres, w->dlogits, W16(m, head), N, H, V, 0.0f);
    else op->matmul(0, 0, N, H, V, 1.0f, w->dlogits, V, W(m, head), H, 0.0f, w->dres, H);
    if (m->fam->norm == FX_NORM_RMSNORM) op->rmsnorm_backward(dout, w->dres, xL, w->rstdf, W(m, m->emb.lnf_w), N, H);
    else op->layernorm_backward(dout, w->dres, xL, w->meanf, w->rstdf, W(m, m->emb.lnf_w), N, H);
}


/* ============================================================================================
 * the classification head and its loss
 * ============================================================================================ */

/* --- RobertaClassificationHead on token 0 (each row's first real token, at its packed offset):
 *   hx = dropout(cls), ht = tanh(hx Wd^T + bd), logits = dropout(ht) Wp^T + bp. */
static void head_forward(fx_model *m, const float *xL /* (N, H), or (n, H) when pruned */) {
    const fx_ops *op = m->ops;
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    int n = w->n, H = c->hidden, L = c->num_labels;
    const float *cls = xL; /* a pruned last layer holds those rows only */
    if (!cls_pruned(m, c->layers - 1)) { gather_heads(m, w->cls, xL); cls = w->cls; }
    if (w->hkeep1) op->dropout_mask(w->hkeep1, (size_t)n, (size_t)H, c->classifier_dropout, fx_rng_u64(&m->drop));
    op->dropout_apply(w->hx, cls, w->hkeep1, c->classifier_dropout, (size_t)n * H);
    op->linear_forward(w->ht, w->hx, P(m, m->head.dense_w), P(m, m->head.dense_b), n, H, H);
    op->tanh_forward(w->ht, (size_t)n * H);
    if (w->hkeep2) op->dropout_mask(w->hkeep2, (size_t)n, (size_t)H, c->classifier_dropout, fx_rng_u64(&m->drop));
    op->dropout_apply(w->htd, w->ht, w->hkeep2, c->classifier_dropout, (size_t)n * H);
    op->linear_forward(w->logits, w->htd, P(m, m->head.out_w), P(m, m->head.out_b), n, H, L);
}
/* From dlogits (n, L): the head's gradients, and dout of the last layer: (N, H), zero but on each row's
 * token 0, or (n, H) when that layer is pruned. */
static void head_backward(fx_model *m, float *dout /* (N, H), or (n, H) when pruned */) {
    const fx_ops *op = m->ops;
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    int n = w->n, H = c->hidden, L = c->num_labels;
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
    int pruned = cls_pruned(m, c->layers - 1);
    float *dhx = pruned ? dout : w->dhx; /* a pruned last layer takes the n rows as they are */
    op->matmul(0, 0, n, H, H, 1.0f, w->dht, H, Wd, H, 0.0f, dhx, H);
    op->dropout_apply(dhx, dhx, w->hkeep1, c->classifier_dropout, (size_t)n * H);
    if (!pruned) scatter_heads(m, dout, dhx);
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
    /* rows are packed to their real tokens (mask != 0): the classifier reads each row's first, and a batch
     * needs one at least */
    int lm = fx_config_family(c)->head_kind == FX_HEAD_LM, real = 0;
    for (int i = 0; i < n; i++) {
        int k = 0;
        for (int t = 0; t < T; t++) k += b->mask[(size_t)i * T + t] != 0;
        if (!k && !lm) { fx_seterr("batch: row %d has no real token (mask all 0)", i); return -1; }
        real += k;
    }
    if (!real) { fx_seterr("batch: no real token (mask all 0)"); return -1; }
    if (lm) return lm_batch_check(c, b, train);
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

/* The batch's positions by the family's rule on the padded rows, then its real tokens packed (ws_pack);
 * returns the number of positions that predict a target. */
static int pack_batch(fx_model *m, const fx_batch *b) {
    workspace *w = m->ws;
    ws_host(w, b->n, b->T);
    m->fam->position_ids(&m->c, b, w->hpad);
    return ws_pack(w, b->ids, b->mask, b->targets, b->n, b->T);
}
/* X holds the packed rows (N, cols) on entry and the padded batch's (n, T, cols) on exit, zero on padding:
 * moved from the last token to the first, as a packed token never lies after its padded place. */
static void unpack_rows(float *x, const fx_batch *b, size_t cols) {
    size_t p = 0;
    for (size_t i = 0; i < (size_t)b->n * b->T; i++) p += b->mask[i] != 0;
    for (size_t i = (size_t)b->n * b->T; i-- > 0;) {
        float *dst = x + i * cols;
        if (b->mask[i]) { p--; if (p != i) memmove(dst, x + p * cols, cols * sizeof *x); }
        else memset(dst, 0, cols * sizeof *x);
    }
}

/* The causal LM's step: embeddings, pre-LN layers, ln_f and the tied head, the smoothed loss over the
 * shifted targets; backward through the same. LOGITS (n, T, V). */
static float lm_step(fx_model *m, const fx_batch *b, int train, float *logits) {
    const fx_ops *op = m->ops;
    const fx_config *c = &m->c;
    int V = c->vocab_size;
    workspace *w = m->ws;
    int count = pack_batch(m, b);
    ws_prepare(m, train);
    int N = w->N;
    if (b->targets) op->upload(w->targets, w->htgt, (size_t)N * sizeof *w->targets);
    embeddings_forward(m, N, train);
    for (int l = 0; l < c->layers; l++) block_forward(m, l, l ? w->L[l - 1].out : w->x0, NULL);
    const float *xL = w->L[c->layers - 1].out;
    lm_head_forward(m, xL, 0, N);
    if (logits) {
        op->download(logits, w->logits, (size_t)N * V * sizeof(float));
        unpack_rows(logits, b, (size_t)V);
    }
    /* no position predicts anything: loss 0 and no gradient (transformers would give 0/0) */
    double loss = count ? op->lm_loss(w->dlogits, w->logits, w->targets, N, V, c->label_smoothing, count) : 0;
    if (!train) return (float)loss;
    if (!count) op->zero(w->dlogits, (size_t)N * V);
    op->zero(m->grad, m->train.n);
    lm_head_backward(m, N, xL, w->dout);
    for (int l = c->layers - 1; l >= 0; l--) {
        block_backward(m, l, l ? w->din : NULL, w->dout, l ? w->L[l - 1].out : w->x0);
        float *t = w->dout; w->dout = w->din; w->din = t;
    }
    return (float)loss;
}

float fx_model_step(fx_model *m, const fx_batch *b, int train, float *logits) {
    const fx_ops *op = m->ops;
    const fx_config *c = &m->c;
    int n = b->n, H = c->hidden, L = c->num_labels;
    int wide = H > c->intermediate ? H : c->intermediate;
    if (m->fam->fused_qkv && 3 * H > wide) wide = 3 * H;
    if (c->heads * head_dim(c) > wide) wide = c->heads * head_dim(c);
    if (fx_batch_check(c, b, train, wide) != 0) return NAN;
    if (m->fam->head_kind == FX_HEAD_LM) return lm_step(m, b, train, logits);
    workspace *w = m->ws;
    pack_batch(m, b);
    ws_prepare(m, train);
    if (b->labels) op->upload(w->labels, b->labels, (size_t)n * sizeof *w->labels);
    embeddings_forward(m, w->N, train);
    for (int l = 0; l < c->layers; l++) layer_forward(m, l, l ? w->L[l - 1].out : w->x0);
    head_forward(m, w->L[c->layers - 1].out);
    double loss = b->labels ? op->loss(w->dlogits, w->logits, w->labels, n, L) : 0;
    if (logits) op->download(logits, w->logits, (size_t)n * L * sizeof(float));
    if (!train) return (float)loss;

    op->zero(m->grad, m->train.n);
    head_backward(m, w->dout);
    for (int l = c->layers - 1; l >= 0; l--) {
        layer_backward(m, l, l ? w->din : NULL, w->dout, l ? w->L[l - 1].out : w->x0);
        float *t = w->dout; w->dout = w->din; w->din = t;
    }
    return (float)loss;
}

/* ============================================================================================
 * the forward the KV-cache decoder runs (decode.c)
 * ============================================================================================ */

int fx_model_head_dim(const fx_config *c) { return head_dim(c); }

void fx_model_decode_forward(fx_model *m, const int32_t *ids, const int32_t *pos, const uint8_t *mask, int ns, int T,
                             const fx_decode_at *at, size_t first, int rows, float *logits) {
    const fx_ops *op = m->ops;
    workspace *w = m->ws;
    ws_host(w, ns, T);
    memcpy(w->hpad, pos, (size_t)ns * T * sizeof *pos);
    ws_pack(w, ids, mask, NULL, ns, T);
    if (w->N != ns * T) fx_die("model.c: the decoder's batch is padded (%d of %d tokens real)", w->N, ns * T);
    ws_prepare(m, 0);
    embeddings_forward(m, w->N, 0);
    for (int l = 0; l < m->c.layers; l++) block_forward(m, l, l ? w->L[l - 1].out : w->x0, at ? &at[l] : NULL);
    lm_head_forward(m, w->L[m->c.layers - 1].out, first, rows);
    op->download(logits, w->logits, (size_t)rows * m->c.vocab_size * sizeof(float));
}
