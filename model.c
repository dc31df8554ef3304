/* model.c: the CPU reference model: RoBERTa for sequence classification (Hugging Face semantics) with
 * LoRA, FFA-LoRA and VeRA adapters; forward, backward into the adapters and the classifier head, AdamW.
 * Plain fp32, written to be read; the GPU path is tested against it. No checkpoint I/O (checkpoint.c). */
#include "fedex.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Loops go parallel only above this many elements of work: a parallel region costs microseconds, and
 * the tiny models of the tests would spend their time in them. */
#define PAR_MIN 16384

/* ============================================================================================
 * config.json
 * ============================================================================================ */

/* Integer field KEY in [lo, hi]; absent or null takes DFLT, or is an error when REQUIRED. */
static int cfg_int(const char *path, const fx_json *root, const char *key, int required, int dflt,
                   int64_t lo, int64_t hi, int *out) {
    const fx_json *v = fx_json_get(root, key);
    if (!v || v->type == FX_JNULL) {
        if (required) { fx_seterr("%s: missing \"%s\"", path, key); return -1; }
        *out = dflt;
        return 0;
    }
    if (v->type != FX_JNUM || !v->is_int || v->inum < lo || v->inum > hi) {
        fx_seterr("%s: \"%s\" must be an integer in [%lld, %lld]", path, key, (long long)lo, (long long)hi);
        return -1;
    }
    *out = (int)v->inum;
    return 0;
}

/* Real field KEY in [lo, hi] (hi_open: hi excluded); absent or null takes DFLT. */
static int cfg_real(const char *path, const fx_json *root, const char *key, double dflt, double lo,
                    double hi, int hi_open, float *out) {
    const fx_json *v = fx_json_get(root, key);
    if (!v || v->type == FX_JNULL) { *out = (float)dflt; return 0; }
    if (v->type != FX_JNUM || !(v->num >= lo) || v->num > hi || (hi_open && v->num == hi)) {
        fx_seterr("%s: \"%s\" must be a number in [%g, %g%c", path, key, lo, hi, hi_open ? ')' : ']');
        return -1;
    }
    *out = (float)v->num;
    return 0;
}

/* A string field that, when present, must read WANT (the only variant this model implements). */
static int cfg_only(const char *path, const fx_json *root, const char *key, const char *want) {
    const fx_json *v = fx_json_get(root, key);
    if (!v || v->type == FX_JNULL) return 0;
    if (v->type != FX_JSTR || strcmp(v->str, want) != 0) {
        fx_seterr("%s: \"%s\" must be \"%s\" (the only one implemented)", path, key, want);
        return -1;
    }
    return 0;
}

int fx_config_load(const char *path, fx_config *c) {
    fx_json root;
    if (fx_json_load(path, &root) != 0) return -1;
    fx_config k = {0};
    int rc = -1;
    if (root.type != FX_JOBJ) { fx_seterr("%s: not a JSON object", path); goto out; }
    /* Architecture: required. Bounds keep every product of two sizes far inside size_t. */
    if (cfg_int(path, &root, "vocab_size", 1, 0, 1, 1 << 24, &k.vocab_size) ||
        cfg_int(path, &root, "hidden_size", 1, 0, 1, 1 << 16, &k.hidden) ||
        cfg_int(path, &root, "num_hidden_layers", 1, 0, 1, 1024, &k.layers) ||
        cfg_int(path, &root, "num_attention_heads", 1, 0, 1, 1 << 16, &k.heads) ||
        cfg_int(path, &root, "intermediate_size", 1, 0, 1, 1 << 18, &k.intermediate) ||
        cfg_int(path, &root, "max_position_embeddings", 1, 0, 3, 1 << 20, &k.max_positions) ||
        /* The rest: Hugging Face's RobertaConfig defaults when absent. */
        cfg_int(path, &root, "type_vocab_size", 0, 2, 1, 1 << 16, &k.type_vocab_size) ||
        cfg_int(path, &root, "pad_token_id", 0, 1, 0, (1 << 24) - 1, &k.pad_id) ||
        cfg_real(path, &root, "layer_norm_eps", 1e-12, 0, 1, 0, &k.layer_norm_eps) ||
        cfg_real(path, &root, "hidden_dropout_prob", 0.1, 0, 1, 1, &k.hidden_dropout) ||
        cfg_real(path, &root, "attention_probs_dropout_prob", 0.1, 0, 1, 1, &k.attention_dropout) ||
        cfg_real(path, &root, "initializer_range", 0.02, 0, 10, 0, &k.initializer_range) ||
        cfg_real(path, &root, "classifier_dropout", k.hidden_dropout, 0, 1, 1, &k.classifier_dropout) ||
        cfg_only(path, &root, "hidden_act", "gelu") ||
        cfg_only(path, &root, "position_embedding_type", "absolute"))
        goto out;
    if (!(k.layer_norm_eps > 0)) { fx_seterr("%s: \"layer_norm_eps\" must be > 0", path); goto out; }
    if (k.hidden % k.heads != 0) {
        fx_seterr("%s: \"hidden_size\" %d is not a multiple of \"num_attention_heads\" %d", path, k.hidden,
                  k.heads);
        goto out;
    }
    if (k.pad_id >= k.vocab_size || k.pad_id + 2 > k.max_positions) {
        fx_seterr("%s: \"pad_token_id\" %d must be below \"vocab_size\" %d and leave room for positions "
                  "under \"max_position_embeddings\" %d", path, k.pad_id, k.vocab_size, k.max_positions);
        goto out;
    }
    /* num_labels as HF's PretrainedConfig: explicit, else the size of id2label, else 2. */
    const fx_json *id2label = fx_json_get(&root, "id2label");
    if (fx_json_get(&root, "num_labels")) {
        if (cfg_int(path, &root, "num_labels", 1, 2, 1, 1 << 16, &k.num_labels)) goto out;
    } else if (id2label && id2label->type != FX_JNULL) {
        if (id2label->type != FX_JOBJ || id2label->n < 1 || id2label->n > (1 << 16)) {
            fx_seterr("%s: \"id2label\" must be an object with 1 to 65536 entries", path);
            goto out;
        }
        k.num_labels = (int)id2label->n;
    } else {
        k.num_labels = 2;
    }
    *c = k;
    rc = 0;
out:
    fx_json_free(&root);
    return rc;
}

/* ============================================================================================
 * adapter targets
 * ============================================================================================ */

#define NTARGETS 6
/* Index t of a target is its bit's position: FX_T_QUERY is 1 << 0, ..., FX_T_OUTPUT is 1 << 5. */
static const char *const target_path[NTARGETS] = {
    "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
    "intermediate.dense", "output.dense"};
static const char *const target_name[NTARGETS] = {
    "query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"};
static const char *const target_alias[NTARGETS] = {NULL, NULL, NULL, "attn_out", "intermediate", "output"};

int fx_targets_parse(const char *list, unsigned *mask) {
    unsigned m = 0;
    const char *s = list;
    for (;;) {
        while (*s == ' ') s++;
        size_t n = strcspn(s, ",");
        size_t e = n;
        while (e > 0 && s[e - 1] == ' ') e--;
        int found = -1;
        for (int t = 0; t < NTARGETS; t++) {
            if ((strlen(target_name[t]) == e && memcmp(s, target_name[t], e) == 0) ||
                (target_alias[t] && strlen(target_alias[t]) == e && memcmp(s, target_alias[t], e) == 0))
                found = t;
        }
        if (found < 0) {
            fx_seterr("target modules \"%s\": unknown target \"%.*s\" (known: query, key, value, "
                      "attention.output.dense or attn_out, intermediate.dense or intermediate, "
                      "output.dense or output)", list, (int)e, s);
            return -1;
        }
        m |= 1u << found;
        if (s[n] == 0) break;
        s += n + 1;
    }
    *mask = m;
    return 0;
}

/* ============================================================================================
 * tensor tables: one flat buffer per kind of state, carved into named tensors
 * ============================================================================================ */

/* Base tensors of one encoder layer, in Hugging Face's order; 'H' hidden, 'I' intermediate. */
enum { QW, QB, KW, KB, VW, VB, AOW, AOB, LN1W, LN1B, IW, IB, OW, OB, LN2W, LN2B, NLT };
static const struct { const char *name; char d0, d1; } layer_tensor[NLT] = {
    {"attention.self.query.weight", 'H', 'H'},   {"attention.self.query.bias", 'H', 0},
    {"attention.self.key.weight", 'H', 'H'},     {"attention.self.key.bias", 'H', 0},
    {"attention.self.value.weight", 'H', 'H'},   {"attention.self.value.bias", 'H', 0},
    {"attention.output.dense.weight", 'H', 'H'}, {"attention.output.dense.bias", 'H', 0},
    {"attention.output.LayerNorm.weight", 'H', 0}, {"attention.output.LayerNorm.bias", 'H', 0},
    {"intermediate.dense.weight", 'I', 'H'},     {"intermediate.dense.bias", 'I', 0},
    {"output.dense.weight", 'H', 'I'},           {"output.dense.bias", 'H', 0},
    {"output.LayerNorm.weight", 'H', 0},         {"output.LayerNorm.bias", 'H', 0}};
/* The embedding tensors come first. */
enum { WORD, POS, TYPE, ELNW, ELNB, NET };
/* Target t's weight and bias within a layer, and its (out, in). */
static const int target_w[NTARGETS] = {QW, KW, VW, AOW, IW, OW};
static void target_dims(const fx_config *c, int t, int *out, int *in) {
    *out = t == 4 ? c->intermediate : c->hidden;
    *in = t == 5 ? c->intermediate : c->hidden;
}

static void table_add(fx_params *p, int *cap, const char *name, int d0, int d1, int frozen) {
    if (p->nt == *cap) {
        *cap = *cap ? 2 * *cap : 64;
        p->t = fx_realloc(p->t, (size_t)*cap * sizeof *p->t);
    }
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

size_t fx_base_numel(const fx_config *c) {
    size_t H = (size_t)c->hidden, I = (size_t)c->intermediate;
    size_t emb = ((size_t)c->vocab_size + (size_t)c->max_positions + (size_t)c->type_vocab_size) * H + 2 * H;
    size_t layer = 4 * (H * H + H) + 2 * H + (I * H + I) + (H * I + H) + 2 * H;
    return emb + (size_t)c->layers * layer;
}

const fx_tensor *fx_params_find(const fx_params *p, const char *name) {
    for (int i = 0; i < p->nt; i++)
        if (strcmp(p->t[i].name, name) == 0) return &p->t[i];
    return NULL;
}

/* Layer L's base tensor K (an enum above) and the embeddings' tensor E. */
static float *layer_w(const fx_model *m, int l, int k) {
    return m->base.data + m->base.t[NET + l * NLT + k].off;
}
static float *emb_w(const fx_model *m, int e) { return m->base.data + m->base.t[e].off; }

/* ============================================================================================
 * workspace: activations kept for backward, and scratch; one buffer carved per step
 * ============================================================================================ */

typedef struct {                /* one encoder layer, N = n*T tokens */
    float *q, *k, *v;           /* (N, H) projections; head h is columns [h*hd, (h+1)*hd) */
    float *att;                 /* (n, nh, T, T) softmax probabilities */
    float *att_drop;            /* (n, nh, T, T) after attention dropout (== att without dropout) */
    float *ctx;                 /* (N, H) attention output, heads side by side */
    uint8_t *keep1;             /* (N, H) hidden-dropout keep mask after attention.output.dense, or NULL */
    float *res1;                /* (N, H) dropout(dense(ctx)) + x: the first LayerNorm's input */
    float *mean1, *rstd1;       /* (N) */
    float *h1;                  /* (N, H) first LayerNorm's output */
    float *pre;                 /* (N, I) intermediate.dense output, before GELU */
    float *gelu;                /* (N, I) */
    uint8_t *keep2;             /* (N, H) hidden-dropout keep mask after output.dense, or NULL */
    float *res2;                /* (N, H) dropout(dense(gelu)) + h1: the second LayerNorm's input */
    float *mean2, *rstd2;       /* (N) */
    float *out;                 /* (N, H) the layer's output */
    uint8_t *akeep[NTARGETS];   /* (N, in) adapter-dropout keep mask per adapted target, or NULL */
    float *z[NTARGETS];         /* (N, r) dropout(x) A^T per adapted target (VeRA: the sliced A) */
} layer_acts;

typedef struct {
    int *adx;                   /* (layers, NTARGETS): index into m->ad, -1 where nothing is adapted */
    char *mem; size_t cap;      /* the carved buffer, grown on demand */
    int32_t *pos;               /* (N) position ids */
    float *x0;                  /* (N, H) embeddings output */
    layer_acts *L;              /* (layers): in training one slot per layer; in evaluation two slots
                                   used in turn, as nothing is kept for backward */
    float *y;                   /* (N, H) scratch: a dense layer's output before dropout + residual */
    float *xd;                  /* (N, in_max) scratch: dropout(x), an adapter's input */
    float *u, *w;               /* (N, r), (N, out_max) scratch: VeRA's lambda_d * z and u B^T */
    float *cls;                 /* (n, H) token 0 of the last layer */
    uint8_t *hkeep1, *hkeep2;   /* (n, H) the head's dropout keep masks, or NULL */
    float *hx;                  /* (n, H) dropout(cls) */
    float *ht;                  /* (n, H) tanh(dense(hx)) */
    float *htd;                 /* (n, H) dropout(ht) */
    float *logits, *dlogits;    /* (n, L) */
    /* backward only */
    float *dout, *din;          /* (N, H) gradient at a layer's output and input */
    float *dres;                /* (N, H) gradient at a LayerNorm's input */
    float *dy;                  /* (N, H) gradient at a dense output (after dropout backward) */
    float *dh1;                 /* (N, H) */
    float *dI;                  /* (N, I) gradient at the GELU output, then at its input */
    float *dctx, *dq, *dk, *dv; /* (N, H) */
    float *datt;                /* (n, nh, T, T) */
    float *dxd;                 /* (N, in_max) an adapter's gradient at dropout(x) */
    float *dz, *du;             /* (N, r) */
    float *dhx, *dht;           /* (n, H) the head's */
} workspace;

/* The next 64-byte aligned block of BYTES; NULL while only measuring (MEM NULL). */
static void *take(char *mem, size_t *used, size_t bytes) {
    size_t off = (*used + 63) & ~(size_t)63;
    *used = off + bytes;
    return mem ? mem + off : NULL;
}
/* Carves the workspace for a batch of n rows of T tokens. With MEM NULL it only measures. */
static size_t ws_carve(const fx_model *m, workspace *w, int n, int T, int train, char *mem) {
    const fx_config *c = &m->c;
    size_t N = (size_t)n * T, H = c->hidden, I = c->intermediate, r = m->a.r, nL = c->num_labels;
    size_t att = (size_t)n * c->heads * T * T;
    size_t in_max = H > I ? H : I, out_max = in_max; /* any adapted layer's in and out fit */
    int drop_h = train && c->hidden_dropout > 0, drop_a = train && c->attention_dropout > 0;
    int drop_c = train && c->classifier_dropout > 0, drop_ad = train && m->a.dropout > 0;
    size_t used = 0;
#define TAKE(ptr, count) ((ptr) = take(mem, &used, (count) * sizeof *(ptr)))
#define TAKE_IF(cond, ptr, count) ((ptr) = (cond) ? take(mem, &used, (count) * sizeof *(ptr)) : NULL)
    TAKE(w->pos, N);
    TAKE(w->x0, N * H);
    int slots = train ? c->layers : (c->layers < 2 ? c->layers : 2);
    for (int l = 0; l < c->layers; l++) {
        layer_acts *A = &w->L[l];
        if (l >= slots) { *A = w->L[l % 2]; continue; }
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
        TAKE(A->res2, N * H); TAKE(A->mean2, N); TAKE(A->rstd2, N);
        TAKE(A->out, N * H);
        for (int t = 0; t < NTARGETS; t++) {
            int k = w->adx[l * NTARGETS + t], out, in;
            target_dims(c, t, &out, &in);
            TAKE_IF(k >= 0 && drop_ad, A->akeep[t], N * (size_t)in);
            TAKE_IF(k >= 0, A->z[t], N * r);
        }
    }
    TAKE(w->y, N * H);
    TAKE(w->xd, N * in_max);
    TAKE(w->u, N * r); TAKE(w->w, N * out_max);
    TAKE(w->cls, (size_t)n * H);
    TAKE_IF(drop_c, w->hkeep1, (size_t)n * H);
    TAKE_IF(drop_c, w->hkeep2, (size_t)n * H);
    TAKE(w->hx, (size_t)n * H); TAKE(w->ht, (size_t)n * H); TAKE(w->htd, (size_t)n * H);
    TAKE(w->logits, n * nL); TAKE(w->dlogits, n * nL);
    TAKE_IF(train, w->dout, N * H); TAKE_IF(train, w->din, N * H);
    TAKE_IF(train, w->dres, N * H); TAKE_IF(train, w->dy, N * H); TAKE_IF(train, w->dh1, N * H);
    TAKE_IF(train, w->dI, N * I);
    TAKE_IF(train, w->dctx, N * H); TAKE_IF(train, w->dq, N * H);
    TAKE_IF(train, w->dk, N * H); TAKE_IF(train, w->dv, N * H);
    TAKE_IF(train, w->datt, att);
    TAKE_IF(train, w->dxd, N * in_max);
    TAKE_IF(train, w->dz, N * r); TAKE_IF(train, w->du, N * r);
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
        free(w->mem);
        if (posix_memalign((void **)&w->mem, 64, need) != 0) fx_die("out of memory allocating %zu bytes", need);
        w->cap = need;
    }
    ws_carve(m, w, n, T, train, w->mem);
}

/* ============================================================================================
 * model tables, creation, initialisation
 * ============================================================================================ */

int fx_model_create(fx_model *m, const fx_config *c, const fx_adapter_cfg *a, float *base) {
    memset(m, 0, sizeof *m);
    if (c->hidden < 1 || c->heads < 1 || c->hidden % c->heads || c->layers < 1 || c->intermediate < 1 ||
        c->vocab_size < 1 || c->max_positions < 2 || c->type_vocab_size < 1 || c->num_labels < 1 ||
        c->pad_id < 0 || c->pad_id >= c->vocab_size) {
        fx_seterr("model config: inconsistent sizes (hidden %d, heads %d, layers %d, labels %d)", c->hidden,
                  c->heads, c->layers, c->num_labels);
        return -1;
    }
    if (a->kind != FX_LORA && a->kind != FX_VERA) { fx_seterr("adapter: unknown kind %d", (int)a->kind); return -1; }
    if (a->targets & ~63u) { fx_seterr("adapter: unknown target bits 0x%x", a->targets); return -1; }
    if (a->targets && (a->r < 1 || a->r > 65536)) { fx_seterr("adapter: rank %d must be in [1, 65536]", a->r); return -1; }
    if (!(a->dropout >= 0 && a->dropout < 1)) { fx_seterr("adapter: dropout %g must be in [0, 1)", a->dropout); return -1; }
    if (!isfinite(a->alpha) || !isfinite(a->d_initial)) { fx_seterr("adapter: alpha and d_initial must be finite"); return -1; }
    m->c = *c;
    m->a = *a;
    if (!a->targets) m->a.r = 1; /* keeps workspace sizes positive; no adapter reads it */
    m->scale = a->kind == FX_VERA ? 1.0f
               : a->rslora ? (float)(a->alpha / sqrt((double)a->r)) : (float)((double)a->alpha / a->r);

    /* Base table, Hugging Face's order. */
    int cap = 0;
    char name[160];
    table_add(&m->base, &cap, "embeddings.word_embeddings.weight", c->vocab_size, c->hidden, 1);
    table_add(&m->base, &cap, "embeddings.position_embeddings.weight", c->max_positions, c->hidden, 1);
    table_add(&m->base, &cap, "embeddings.token_type_embeddings.weight", c->type_vocab_size, c->hidden, 1);
    table_add(&m->base, &cap, "embeddings.LayerNorm.weight", c->hidden, 0, 1);
    table_add(&m->base, &cap, "embeddings.LayerNorm.bias", c->hidden, 0, 1);
    for (int l = 0; l < c->layers; l++)
        for (int k = 0; k < NLT; k++) {
            int d[2];
            for (int j = 0; j < 2; j++) {
                char ch = j ? layer_tensor[k].d1 : layer_tensor[k].d0;
                d[j] = ch == 'H' ? c->hidden : ch == 'I' ? c->intermediate : 0;
            }
            snprintf(name, sizeof name, "encoder.layer.%d.%s", l, layer_tensor[k].name);
            table_add(&m->base, &cap, name, d[0], d[1], 1);
        }
    if (m->base.n != fx_base_numel(c)) fx_die("model.c: base table (%zu) and fx_base_numel disagree", m->base.n);

    /* Trainable table: adapters layer by layer, target by target, then the head. */
    cap = 0;
    m->ad = fx_calloc((size_t)c->layers * NTARGETS, sizeof *m->ad);
    workspace *w = fx_calloc(1, sizeof *w);
    m->ws = w;
    w->adx = fx_malloc((size_t)c->layers * NTARGETS * sizeof *w->adx);
    w->L = fx_calloc((size_t)c->layers, sizeof *w->L);
    for (int l = 0; l < c->layers; l++)
        for (int t = 0; t < NTARGETS; t++) {
            w->adx[l * NTARGETS + t] = -1;
            if (!(a->targets & (1u << t))) continue;
            fx_adapted *ad = &m->ad[m->nadapted];
            w->adx[l * NTARGETS + t] = m->nadapted++;
            snprintf(ad->name, sizeof ad->name, "encoder.layer.%d.%s", l, target_path[t]);
            ad->layer = l;
            ad->target = 1 << t;
            target_dims(c, t, &ad->out, &ad->in);
            ad->w_off = m->base.t[NET + l * NLT + target_w[t]].off;
            if (a->kind == FX_LORA) {
                snprintf(name, sizeof name, "%s.lora_A", ad->name);
                ad->a_off = m->train.n;
                table_add(&m->train, &cap, name, a->r, ad->in, a->freeze_a);
                snprintf(name, sizeof name, "%s.lora_B", ad->name);
                ad->b_off = m->train.n;
                table_add(&m->train, &cap, name, ad->out, a->r, 0);
            } else {
                snprintf(name, sizeof name, "%s.vera_lambda_d", ad->name);
                ad->a_off = m->train.n;
                table_add(&m->train, &cap, name, a->r, 0, a->freeze_d);
                snprintf(name, sizeof name, "%s.vera_lambda_b", ad->name);
                ad->b_off = m->train.n;
                table_add(&m->train, &cap, name, ad->out, 0, 0);
                if (ad->in > m->vera_in) m->vera_in = ad->in;
                if (ad->out > m->vera_out) m->vera_out = ad->out;
            }
        }
    m->head_off = m->train.n;
    table_add(&m->train, &cap, "classifier.dense.weight", c->hidden, c->hidden, 0);
    table_add(&m->train, &cap, "classifier.dense.bias", c->hidden, 0, 0);
    table_add(&m->train, &cap, "classifier.out_proj.weight", c->num_labels, c->hidden, 0);
    table_add(&m->train, &cap, "classifier.out_proj.bias", c->num_labels, 0, 0);
    m->head_n = m->train.n - m->head_off;

    m->base_owned = base == NULL;
    m->base.data = base ? base : fx_calloc(m->base.n, sizeof(float));
    m->train.data = fx_calloc(m->train.n, sizeof(float));
    m->grad = fx_calloc(m->train.n, sizeof(float));
    m->adam_m = fx_calloc(m->train.n, sizeof(float));
    m->adam_v = fx_calloc(m->train.n, sizeof(float));
    if (a->kind == FX_VERA && m->nadapted) {
        /* PEFT's kaiming_uniform(a=sqrt(5)) bound 1/sqrt(fan_in), fan_in = size(1). Every client with
         * the same seed holds the same projections, which VeRA's aggregation relies on. */
        size_t na = (size_t)m->a.r * m->vera_in, nb = (size_t)m->vera_out * m->a.r;
        m->vera_A = fx_malloc(na * sizeof(float));
        m->vera_B = fx_malloc(nb * sizeof(float));
        fx_rng g;
        fx_rng_seed(&g, a->seed);
        double ba = 1.0 / sqrt((double)m->vera_in), bb = 1.0 / sqrt((double)m->a.r);
        for (size_t i = 0; i < na; i++) m->vera_A[i] = (float)((2 * fx_rng_uniform(&g) - 1) * ba);
        for (size_t i = 0; i < nb; i++) m->vera_B[i] = (float)((2 * fx_rng_uniform(&g) - 1) * bb);
    }
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
    free(m->vera_A);
    free(m->vera_B);
    workspace *w = m->ws;
    if (w) {
        free(w->adx);
        free(w->L);
        free(w->mem);
        free(w);
    }
    memset(m, 0, sizeof *m);
}

/* As HF's RobertaPreTrainedModel._init_weights: Linear and Embedding weights N(0, initializer_range)
 * (the padding_idx row of the word and position embeddings zeroed), biases 0, LayerNorm 1 and 0. One
 * stream from SEED, tensors in table order, row-major; the head (a new classifier in HF) follows. */
void fx_model_init_base(fx_model *m, uint64_t seed) {
    fx_rng g;
    fx_rng_seed(&g, seed);
    double sd = m->c.initializer_range;
    fx_params *p = &m->base;
    for (int i = 0; i < p->nt; i++) {
        fx_tensor *t = &p->t[i];
        float *d = p->data + t->off;
        int is_ln_w = strstr(t->name, "LayerNorm.weight") != NULL;
        if (t->ndim == 2) {
            for (size_t j = 0; j < t->n; j++) d[j] = (float)(sd * fx_rng_normal(&g));
            if (i == WORD || i == POS)
                memset(d + (size_t)m->c.pad_id * m->c.hidden, 0, (size_t)m->c.hidden * sizeof *d);
        } else {
            for (size_t j = 0; j < t->n; j++) d[j] = is_ln_w ? 1.0f : 0.0f;
        }
    }
    for (int i = 0; i < m->train.nt; i++) {
        fx_tensor *t = &m->train.t[i];
        if (t->off < m->head_off) continue;
        float *d = m->train.data + t->off;
        for (size_t j = 0; j < t->n; j++) d[j] = t->ndim == 2 ? (float)(sd * fx_rng_normal(&g)) : 0.0f;
    }
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
        } else {
            for (int j = 0; j < m->a.r; j++) A[j] = m->a.d_initial;
            memset(B, 0, (size_t)ad->out * sizeof *B);
        }
    }
}

void fx_model_add_residual(fx_model *m, int k, const float *R /* (out, in) */, float alpha) {
    const fx_adapted *ad = &m->ad[k];
    float *W = m->base.data + ad->w_off; /* (out, in) */
    long n = (long)ad->out * ad->in;
    #pragma omp parallel for schedule(static) if (n >= PAR_MIN)
    for (long i = 0; i < n; i++) W[i] += alpha * R[i];
}

/* ============================================================================================
 * layers: forward / backward pairs
 * ============================================================================================ */

/* --- dropout. Row r of a site draws from its own stream seeded by (site, r): the mask does not depend on
 * how rows are shared among threads. keep = 1 with probability 1 - p; kept values scale by 1/(1-p). */
static void dropout_row(uint8_t *keep /* (cols) */, uint64_t site, size_t row, size_t cols, float p) {
    fx_rng g;
    fx_rng_seed(&g, site ^ (0x9e3779b97f4a7c15ULL * (row + 1)));
    for (size_t j = 0; j < cols; j++) keep[j] = fx_rng_uniform(&g) >= p;
}
static void dropout_mask(uint8_t *keep /* (rows, cols) */, size_t rows, size_t cols, float p, uint64_t site) {
    #pragma omp parallel for schedule(static) if ((long)(rows * cols) >= PAR_MIN)
    for (long r = 0; r < (long)rows; r++) dropout_row(keep + r * cols, site, (size_t)r, cols, p);
}
/* out = in * keep / (1 - p), or a copy when KEEP is NULL. In place allowed. Also the backward. */
static void dropout_apply(float *out, const float *in, const uint8_t *keep, float p, size_t n) {
    float scale = keep ? 1.0f / (1.0f - p) : 1.0f;
    #pragma omp parallel for schedule(static) if ((long)n >= PAR_MIN)
    for (long i = 0; i < (long)n; i++) out[i] = keep ? (keep[i] ? in[i] * scale : 0.0f) : in[i];
}

/* --- frozen dense layer: y = x W^T + b. The bias goes in first and the product is added to it, as in
 * PyTorch's addmm. */
static void linear_forward(float *y /* (N, out) */, const float *x /* (N, in) */, const float *W /* (out, in) */,
                           const float *b /* (out) */, int N, int in, int out) {
    #pragma omp parallel for schedule(static) if ((long)N * out >= PAR_MIN)
    for (long i = 0; i < N; i++) memcpy(y + i * out, b, (size_t)out * sizeof *y);
    fx_matmul(0, 1, N, out, in, 1.0f, x, in, W, in, 1.0f, y, out);
}
/* dx = dy W (beta 0) or dx += dy W (beta 1). W and b are frozen: no dW, no db. */
static void linear_backward(float *dx /* (N, in) */, const float *dy /* (N, out) */, const float *W /* (out, in) */,
                            int N, int in, int out, float beta) {
    fx_matmul(0, 0, N, in, out, 1.0f, dy, out, W, in, beta, dx, in);
}

/* --- bias gradient and friends: column sums with the rows summed in order, one column per thread, so
 * the result does not depend on the thread count. db[j] = sum_i a[i,j] (* b[i,j] when B is given). */
static void column_dot(float *db /* (cols) */, const float *a /* (rows, cols) */, const float *b /* (rows, cols) or NULL */,
                       int rows, int cols) {
    #pragma omp parallel for schedule(static) if ((long)rows * cols >= PAR_MIN)
    for (long j = 0; j < cols; j++) {
        double s = 0;
        for (long i = 0; i < rows; i++) s += b ? (double)a[i * cols + j] * b[i * cols + j] : a[i * cols + j];
        db[j] = (float)s;
    }
}

/* --- adapter on one dense layer, added to its output y (N, out) for input x (N, in):
 *   LoRA: y += s * (xd A^T) B^T,                        A (r, in), B (out, r)
 *   VeRA: y += lambda_b * ((lambda_d * (xd A_l^T)) B_l^T), A_l = vera_A[:, :in], B_l = vera_B[:out, :]
 * with xd = dropout(x) and z = xd A^T (N, r) kept for backward. */
static void adapter_forward(fx_model *m, int k, float *y /* (N, out) */, const float *x /* (N, in) */,
                            uint8_t *keep /* (N, in) or NULL */, float *z /* (N, r) */, int N) {
    workspace *w = m->ws;
    const fx_adapted *ad = &m->ad[k];
    int r = m->a.r, in = ad->in, out = ad->out;
    const float *xd = x;
    if (keep) {
        dropout_mask(keep, (size_t)N, (size_t)in, m->a.dropout, fx_rng_u64(&m->drop));
        dropout_apply(w->xd, x, keep, m->a.dropout, (size_t)N * in);
        xd = w->xd;
    }
    if (m->a.kind == FX_LORA) {
        const float *A = m->train.data + ad->a_off, *B = m->train.data + ad->b_off;
        fx_matmul(0, 1, N, r, in, 1.0f, xd, in, A, in, 0.0f, z, r);
        fx_matmul(0, 1, N, out, r, m->scale, z, r, B, r, 1.0f, y, out);
    } else {
        const float *ld = m->train.data + ad->a_off, *lb = m->train.data + ad->b_off;
        fx_matmul(0, 1, N, r, in, 1.0f, xd, in, m->vera_A, m->vera_in, 0.0f, z, r);
        #pragma omp parallel for schedule(static) if ((long)N * r >= PAR_MIN)
        for (long i = 0; i < (long)N * r; i++) w->u[i] = ld[i % r] * z[i];
        fx_matmul(0, 1, N, out, r, 1.0f, w->u, r, m->vera_B, r, 0.0f, w->w, out);
        #pragma omp parallel for schedule(static) if ((long)N * out >= PAR_MIN)
        for (long i = 0; i < (long)N * out; i++) y[i] += lb[i % out] * w->w[i];
    }
}

/* Gradients of the adapter's trainable tensors from dy (N, out), and dx (N, in) += its share of the
 * input gradient (skipped when DX is NULL). LoRA: dB = s dy^T z, dz = s dy B, dA = dz^T xd,
 * dxd = dz A. VeRA: with u = lambda_d * z, v = u B_l^T: dlambda_b = colsum(dy * v), du = (dy * lambda_b) B_l,
 * dlambda_d = colsum(du * z), dz = du * lambda_d, dxd = dz A_l. dx += dropout backward of dxd. */
static void adapter_backward(fx_model *m, int k, float *dx /* (N, in) or NULL */, const float *dy /* (N, out) */,
                             const float *x /* (N, in) */, const uint8_t *keep /* (N, in) or NULL */,
                             const float *z /* (N, r) */, int N) {
    workspace *w = m->ws;
    const fx_adapted *ad = &m->ad[k];
    int r = m->a.r, in = ad->in, out = ad->out;
    const float *A; /* (r, in) with row stride lda */
    int lda;
    float *gA = m->grad + ad->a_off, *gB = m->grad + ad->b_off;
    if (m->a.kind == FX_LORA) {
        const float *B = m->train.data + ad->b_off;
        A = m->train.data + ad->a_off;
        lda = in;
        fx_matmul(1, 0, out, r, N, m->scale, dy, out, z, r, 0.0f, gB, r);
        fx_matmul(0, 0, N, r, out, m->scale, dy, out, B, r, 0.0f, w->dz, r);
        if (!m->a.freeze_a) {
            const float *xd = x;
            if (keep) { dropout_apply(w->xd, x, keep, m->a.dropout, (size_t)N * in); xd = w->xd; }
            fx_matmul(1, 0, r, in, N, 1.0f, w->dz, r, xd, in, 0.0f, gA, in);
        }
    } else {
        const float *ld = m->train.data + ad->a_off, *lb = m->train.data + ad->b_off;
        A = m->vera_A;
        lda = m->vera_in;
        #pragma omp parallel for schedule(static) if ((long)N * r >= PAR_MIN)
        for (long i = 0; i < (long)N * r; i++) w->u[i] = ld[i % r] * z[i];
        fx_matmul(0, 1, N, out, r, 1.0f, w->u, r, m->vera_B, r, 0.0f, w->w, out);
        column_dot(gB, dy, w->w, N, out);
        #pragma omp parallel for schedule(static) if ((long)N * out >= PAR_MIN)
        for (long i = 0; i < (long)N * out; i++) w->w[i] = dy[i] * lb[i % out];
        fx_matmul(0, 0, N, r, out, 1.0f, w->w, out, m->vera_B, r, 0.0f, w->du, r);
        if (!m->a.freeze_d) column_dot(gA, w->du, z, N, r);
        #pragma omp parallel for schedule(static) if ((long)N * r >= PAR_MIN)
        for (long i = 0; i < (long)N * r; i++) w->dz[i] = w->du[i] * ld[i % r];
    }
    if (!dx) return;
    if (!keep) { fx_matmul(0, 0, N, in, r, 1.0f, w->dz, r, A, lda, 1.0f, dx, in); return; }
    fx_matmul(0, 0, N, in, r, 1.0f, w->dz, r, A, lda, 0.0f, w->dxd, in);
    float scale = 1.0f / (1.0f - m->a.dropout);
    #pragma omp parallel for schedule(static) if ((long)N * in >= PAR_MIN)
    for (long i = 0; i < (long)N * in; i++) dx[i] += keep[i] ? w->dxd[i] * scale : 0.0f;
}

/* A dense layer of encoder layer L, target T: frozen y = x W^T + b, plus the adapter when there is one. */
static void dense_forward(fx_model *m, int l, int t, float *y, const float *x, layer_acts *A, int N) {
    int out, in, k = ((workspace *)m->ws)->adx[l * NTARGETS + t];
    target_dims(&m->c, t, &out, &in);
    linear_forward(y, x, layer_w(m, l, target_w[t]), layer_w(m, l, target_w[t] + 1), N, in, out);
    if (k >= 0) adapter_forward(m, k, y, x, A->akeep[t], A->z[t], N);
}
/* dx = dy W (+ dx when ACC) plus the adapter's share; adapter gradients. DX NULL: adapter gradients only. */
static void dense_backward(fx_model *m, int l, int t, float *dx, const float *dy, const float *x,
                           const layer_acts *A, int N, int acc) {
    int out, in, k = ((workspace *)m->ws)->adx[l * NTARGETS + t];
    target_dims(&m->c, t, &out, &in);
    if (dx) linear_backward(dx, dy, layer_w(m, l, target_w[t]), N, in, out, acc ? 1.0f : 0.0f);
    if (k >= 0) adapter_backward(m, k, dx, dy, x, A->akeep[t], A->z[t], N);
}

/* --- LayerNorm over the last dimension: out = (x - mean) * rstd * g + b, rstd = 1/sqrt(var + eps),
 * var the biased variance. Moments in double. */
static void layernorm_row(float *out, float *mean, float *rstd, const float *x, const float *g, const float *b,
                          int H, float eps) {
    double s = 0, ss = 0;
    for (int j = 0; j < H; j++) s += x[j];
    double mu = s / H;
    for (int j = 0; j < H; j++) ss += (x[j] - mu) * (x[j] - mu);
    float mf = (float)mu, rs = (float)(1.0 / sqrt(ss / H + eps));
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
    #pragma omp parallel for schedule(static) if ((long)N * H >= PAR_MIN)
    for (long i = 0; i < N; i++) {
        size_t o = (size_t)i * H;
        for (int j = 0; j < H; j++)
            res[o + j] = (keep ? (keep[o + j] ? y[o + j] * scale : 0.0f) : y[o + j]) + x[o + j];
        layernorm_row(out + o, mean + i, rstd + i, res + o, g, b, H, eps);
    }
}
/* With g frozen: dx = rstd * (dxh - mean(dxh) - xh * mean(dxh * xh)), dxh = dy * g,
 * xh = (x - mean) * rstd. */
static void layernorm_backward(float *dx /* (N, H) */, const float *dy /* (N, H) */, const float *x /* (N, H) */,
                               const float *mean, const float *rstd, const float *g, int N, int H) {
    #pragma omp parallel for schedule(static) if ((long)N * H >= PAR_MIN)
    for (long i = 0; i < N; i++) {
        const float *xi = x + (size_t)i * H, *dyi = dy + (size_t)i * H;
        float *dxi = dx + (size_t)i * H;
        double s1 = 0, s2 = 0;
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

/* --- exact GELU: x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)); derivative Phi(x) + x phi(x). */
static void gelu_forward(float *out, const float *in, size_t n) {
    #pragma omp parallel for schedule(static) if ((long)n >= PAR_MIN)
    for (long i = 0; i < (long)n; i++) {
        float x = in[i];
        out[i] = x * 0.5f * (1.0f + erff(x * (float)M_SQRT1_2));
    }
}
static void gelu_backward(float *d /* in: dL/dout, out: dL/din */, const float *in, size_t n) {
    const float inv_sqrt_2pi = 0.3989422804014327f;
    #pragma omp parallel for schedule(static) if ((long)n >= PAR_MIN)
    for (long i = 0; i < (long)n; i++) {
        float x = in[i];
        float cdf = 0.5f * (1.0f + erff(x * (float)M_SQRT1_2)), pdf = expf(-0.5f * x * x) * inv_sqrt_2pi;
        d[i] *= cdf + x * pdf;
    }
}

/* --- self-attention, per row b and head h (Q, K, V the (T, hd) column block h of row b):
 *   S = Q K^T / sqrt(hd) + (mask == 0 ? -FLT_MAX : 0),  P = softmax(S),  Pd = dropout(P),  ctx = Pd V.
 * -FLT_MAX is torch.finfo(float32).min, which Hugging Face adds on padded keys. */
static void attention_forward(float *ctx /* (N, H) */, float *att /* (n, nh, T, T) */,
                              float *att_drop /* (n, nh, T, T), == att without dropout */,
                              const float *q, const float *k, const float *v /* (N, H) each */,
                              const uint8_t *mask /* (n, T) */, int n, int T, int H, int nh, float p,
                              uint64_t site) {
    int hd = H / nh;
    float inv = sqrtf((float)hd), scale = 1.0f / (1.0f - p);
    #pragma omp parallel for schedule(static) if ((long)n * nh * T * T >= PAR_MIN)
    for (long bh = 0; bh < (long)n * nh; bh++) {
        long b = bh / nh, h = bh % nh;
        size_t o = (size_t)b * T * H + (size_t)h * hd;
        float *S = att + (size_t)bh * T * T, *Pd = att_drop + (size_t)bh * T * T;
        fx_matmul(0, 1, T, T, hd, 1.0f, q + o, H, k + o, H, 0.0f, S, T);
        uint8_t keep[T];
        for (int i = 0; i < T; i++) {
            float *s = S + (size_t)i * T, mx = -INFINITY;
            for (int j = 0; j < T; j++) {
                s[j] = s[j] / inv + (mask[b * T + j] ? 0.0f : -FLT_MAX);
                if (s[j] > mx) mx = s[j];
            }
            double sum = 0;
            for (int j = 0; j < T; j++) { s[j] = expf(s[j] - mx); sum += s[j]; }
            float rs = (float)(1.0 / sum);
            for (int j = 0; j < T; j++) s[j] *= rs;
            if (Pd != S) {
                dropout_row(keep, site, (size_t)bh * T + i, (size_t)T, p);
                for (int j = 0; j < T; j++) Pd[(size_t)i * T + j] = keep[j] ? s[j] * scale : 0.0f;
            }
        }
        fx_matmul(0, 0, T, hd, T, 1.0f, Pd, T, v + o, H, 0.0f, ctx + o, H);
    }
}
/* dPd = dctx V^T, dV = Pd^T dctx; dP = dPd * keep / (1 - p), where keep is Pd != 0 (exact: where P is 0
 * the softmax gradient below is 0 whatever dP is); dS = P * (dP - rowsum(dP * P)) / sqrt(hd);
 * dQ = dS K, dK = dS^T Q. */
static void attention_backward(float *dq, float *dk, float *dv /* (N, H) each */, float *datt /* (n, nh, T, T) */,
                               const float *dctx /* (N, H) */, const float *q, const float *k, const float *v,
                               const float *att, const float *att_drop, int n, int T, int H, int nh, float p) {
    int hd = H / nh;
    float inv = sqrtf((float)hd), scale = 1.0f / (1.0f - p);
    #pragma omp parallel for schedule(static) if ((long)n * nh * T * T >= PAR_MIN)
    for (long bh = 0; bh < (long)n * nh; bh++) {
        long b = bh / nh, h = bh % nh;
        size_t o = (size_t)b * T * H + (size_t)h * hd;
        const float *P = att + (size_t)bh * T * T, *Pd = att_drop + (size_t)bh * T * T;
        float *dS = datt + (size_t)bh * T * T;
        fx_matmul(0, 1, T, T, hd, 1.0f, dctx + o, H, v + o, H, 0.0f, dS, T);
        fx_matmul(1, 0, T, hd, T, 1.0f, Pd, T, dctx + o, H, 0.0f, dv + o, H);
        for (int i = 0; i < T; i++) {
            float *ds = dS + (size_t)i * T;
            const float *pr = P + (size_t)i * T, *pd = Pd + (size_t)i * T;
            if (Pd != P)
                for (int j = 0; j < T; j++) ds[j] = pd[j] != 0.0f ? ds[j] * scale : 0.0f;
            double dot = 0;
            for (int j = 0; j < T; j++) dot += (double)ds[j] * pr[j];
            for (int j = 0; j < T; j++) ds[j] = pr[j] * (ds[j] - (float)dot) / inv;
        }
        fx_matmul(0, 0, T, hd, T, 1.0f, dS, T, k + o, H, 0.0f, dq + o, H);
        fx_matmul(1, 0, T, hd, T, 1.0f, dS, T, q + o, H, 0.0f, dk + o, H);
    }
}

/* --- embeddings: x0 = dropout(LayerNorm((word[id] + type[0]) + pos[position])). Nothing before them
 * is trainable, so backward stops at the first layer's input and no LayerNorm state is kept. */
static void embeddings_forward(fx_model *m, const fx_batch *b, int train) {
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    int H = c->hidden, N = b->n * b->T;
    const float *we = emb_w(m, WORD), *pe = emb_w(m, POS), *te = emb_w(m, TYPE);
    #pragma omp parallel for schedule(static) if ((long)N * H >= PAR_MIN)
    for (long i = 0; i < N; i++) {
        float *x = w->x0 + (size_t)i * H;
        const float *wr = we + (size_t)b->ids[i] * H, *pr = pe + (size_t)w->pos[i] * H;
        for (int j = 0; j < H; j++) x[j] = (wr[j] + te[j]) + pr[j];
        layernorm_row(x, NULL, NULL, x, emb_w(m, ELNW), emb_w(m, ELNB), H, c->layer_norm_eps);
    }
    if (train && c->hidden_dropout > 0) {
        uint64_t site = fx_rng_u64(&m->drop);
        float scale = 1.0f / (1.0f - c->hidden_dropout);
        #pragma omp parallel for schedule(static) if ((long)N * H >= PAR_MIN)
        for (long i = 0; i < N; i++) {
            uint8_t keep[H];
            dropout_row(keep, site, (size_t)i, (size_t)H, c->hidden_dropout);
            for (int j = 0; j < H; j++) w->x0[(size_t)i * H + j] = keep[j] ? w->x0[(size_t)i * H + j] * scale : 0.0f;
        }
    }
}

/* --- one encoder layer (RobertaLayer):
 *   q, k, v = x Wq^T + bq, ...  (+ adapters)
 *   ctx = attention(q, k, v);   h1 = LayerNorm(dropout(ctx Wao^T + bao) + x)
 *   g = GELU(h1 Wi^T + bi);     out = LayerNorm(dropout(g Wo^T + bo) + h1) */
static void layer_forward(fx_model *m, int l, const float *x /* (N, H) */, const fx_batch *b) {
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    layer_acts *A = &w->L[l];
    int n = b->n, T = b->T, N = n * T, H = c->hidden, I = c->intermediate;
    dense_forward(m, l, 0, A->q, x, A, N);
    dense_forward(m, l, 1, A->k, x, A, N);
    dense_forward(m, l, 2, A->v, x, A, N);
    uint64_t site = A->att_drop != A->att ? fx_rng_u64(&m->drop) : 0;
    attention_forward(A->ctx, A->att, A->att_drop, A->q, A->k, A->v, b->mask, n, T, H, c->heads,
                      c->attention_dropout, site);
    dense_forward(m, l, 3, w->y, A->ctx, A, N);
    if (A->keep1) dropout_mask(A->keep1, (size_t)N, (size_t)H, c->hidden_dropout, fx_rng_u64(&m->drop));
    residual_layernorm_forward(A->h1, A->res1, A->mean1, A->rstd1, w->y, A->keep1, c->hidden_dropout, x,
                               layer_w(m, l, LN1W), layer_w(m, l, LN1B), N, H, c->layer_norm_eps);
    dense_forward(m, l, 4, A->pre, A->h1, A, N);
    gelu_forward(A->gelu, A->pre, (size_t)N * I);
    dense_forward(m, l, 5, w->y, A->gelu, A, N);
    if (A->keep2) dropout_mask(A->keep2, (size_t)N, (size_t)H, c->hidden_dropout, fx_rng_u64(&m->drop));
    residual_layernorm_forward(A->out, A->res2, A->mean2, A->rstd2, w->y, A->keep2, c->hidden_dropout, A->h1,
                               layer_w(m, l, LN2W), layer_w(m, l, LN2B), N, H, c->layer_norm_eps);
}

/* The same layer backwards from dout (N, H). dx (N, H) receives the gradient at the layer's input, or is
 * NULL for the first layer (nothing before it is trainable). */
static void layer_backward(fx_model *m, int l, float *dx /* (N, H) or NULL */, const float *dout /* (N, H) */,
                           const float *x /* (N, H) */, const fx_batch *b) {
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    const layer_acts *A = &w->L[l];
    int n = b->n, T = b->T, N = n * T, H = c->hidden, I = c->intermediate;
    size_t NH = (size_t)N * H;
    /* out = LayerNorm(res2), res2 = dropout(y2) + h1, y2 = dense(gelu) */
    layernorm_backward(w->dres, dout, A->res2, A->mean2, A->rstd2, layer_w(m, l, LN2W), N, H);
    dropout_apply(w->dy, w->dres, A->keep2, c->hidden_dropout, NH);
    dense_backward(m, l, 5, w->dI, w->dy, A->gelu, A, N, 0);
    gelu_backward(w->dI, A->pre, (size_t)N * I);
    memcpy(w->dh1, w->dres, NH * sizeof(float)); /* the residual's share */
    dense_backward(m, l, 4, w->dh1, w->dI, A->h1, A, N, 1);
    /* h1 = LayerNorm(res1), res1 = dropout(y1) + x, y1 = dense(ctx) */
    layernorm_backward(w->dres, w->dh1, A->res1, A->mean1, A->rstd1, layer_w(m, l, LN1W), N, H);
    dropout_apply(w->dy, w->dres, A->keep1, c->hidden_dropout, NH);
    dense_backward(m, l, 3, w->dctx, w->dy, A->ctx, A, N, 0);
    attention_backward(w->dq, w->dk, w->dv, w->datt, w->dctx, A->q, A->k, A->v, A->att, A->att_drop, n, T, H,
                       c->heads, c->attention_dropout);
    /* x feeds the residual and the three projections */
    if (dx) memcpy(dx, w->dres, NH * sizeof(float));
    dense_backward(m, l, 0, dx, w->dq, x, A, N, 1);
    dense_backward(m, l, 1, dx, w->dk, x, A, N, 1);
    dense_backward(m, l, 2, dx, w->dv, x, A, N, 1);
}

/* --- classification head (RobertaClassificationHead) on token 0:
 *   hx = dropout(cls), ht = tanh(hx Wd^T + bd), logits = dropout(ht) Wp^T + bp. */
static void head_forward(fx_model *m, const fx_batch *b, const float *xL /* (N, H) */) {
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    int n = b->n, H = c->hidden, L = c->num_labels;
    const float *Wd = m->train.data + m->head_off, *bd = Wd + (size_t)H * H, *Wp = bd + H, *bp = Wp + (size_t)L * H;
    for (int i = 0; i < n; i++) memcpy(w->cls + (size_t)i * H, xL + (size_t)i * b->T * H, (size_t)H * sizeof(float));
    if (w->hkeep1) dropout_mask(w->hkeep1, (size_t)n, (size_t)H, c->classifier_dropout, fx_rng_u64(&m->drop));
    dropout_apply(w->hx, w->cls, w->hkeep1, c->classifier_dropout, (size_t)n * H);
    linear_forward(w->ht, w->hx, Wd, bd, n, H, H);
    for (size_t i = 0; i < (size_t)n * H; i++) w->ht[i] = tanhf(w->ht[i]);
    if (w->hkeep2) dropout_mask(w->hkeep2, (size_t)n, (size_t)H, c->classifier_dropout, fx_rng_u64(&m->drop));
    dropout_apply(w->htd, w->ht, w->hkeep2, c->classifier_dropout, (size_t)n * H);
    linear_forward(w->logits, w->htd, Wp, bp, n, H, L);
}
/* From dlogits (n, L): the head's gradients, and dout (N, H) of the last layer (zero but on token 0). */
static void head_backward(fx_model *m, const fx_batch *b, float *dout /* (N, H) */) {
    workspace *w = m->ws;
    const fx_config *c = &m->c;
    int n = b->n, H = c->hidden, L = c->num_labels;
    const float *Wd = m->train.data + m->head_off, *Wp = Wd + (size_t)H * H + H;
    float *gWd = m->grad + m->head_off, *gbd = gWd + (size_t)H * H, *gWp = gbd + H, *gbp = gWp + (size_t)L * H;
    fx_matmul(1, 0, L, H, n, 1.0f, w->dlogits, L, w->htd, H, 0.0f, gWp, H);
    column_dot(gbp, w->dlogits, NULL, n, L);
    fx_matmul(0, 0, n, H, L, 1.0f, w->dlogits, L, Wp, H, 0.0f, w->dht, H);
    dropout_apply(w->dht, w->dht, w->hkeep2, c->classifier_dropout, (size_t)n * H);
    for (size_t i = 0; i < (size_t)n * H; i++) w->dht[i] *= 1.0f - w->ht[i] * w->ht[i]; /* tanh' */
    fx_matmul(1, 0, H, H, n, 1.0f, w->dht, H, w->hx, H, 0.0f, gWd, H);
    column_dot(gbd, w->dht, NULL, n, H);
    fx_matmul(0, 0, n, H, H, 1.0f, w->dht, H, Wd, H, 0.0f, w->dhx, H);
    dropout_apply(w->dhx, w->dhx, w->hkeep1, c->classifier_dropout, (size_t)n * H);
    memset(dout, 0, (size_t)n * b->T * H * sizeof(float));
    for (int i = 0; i < n; i++) memcpy(dout + (size_t)i * b->T * H, w->dhx + (size_t)i * H, (size_t)H * sizeof(float));
}

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

/* ============================================================================================
 * batch checks and position ids (shared by both backends, so they refuse the same batches alike)
 * ============================================================================================ */

int fx_batch_check(const fx_config *c, const fx_batch *b, int train, int wide) {
    int n = b->n, T = b->T, L = c->num_labels;
    if (n < 1 || T < 1 || (size_t)n * T > (size_t)INT32_MAX / (size_t)wide) {
        fx_seterr("batch: %d rows of %d tokens is empty or too large", n, T);
        return -1;
    }
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

/* Positions as HF's create_position_ids_from_input_ids: pad + running count of non-pad tokens; pad
 * tokens get pad itself. */
void fx_batch_positions(const fx_config *c, const fx_batch *b, int32_t *pos /* (n, T) */) {
    for (int i = 0; i < b->n; i++) {
        int count = 0;
        for (int t = 0; t < b->T; t++) {
            int32_t id = b->ids[(size_t)i * b->T + t];
            pos[(size_t)i * b->T + t] = id != c->pad_id ? c->pad_id + ++count : c->pad_id;
        }
    }
}

/* ============================================================================================
 * one step: validate, forward, loss, backward
 * ============================================================================================ */

float fx_model_step(fx_model *m, const fx_batch *b, int train, float *logits) {
    const fx_config *c = &m->c;
    int n = b->n, T = b->T, H = c->hidden, L = c->num_labels;
    if (fx_batch_check(c, b, train, H > c->intermediate ? H : c->intermediate) != 0) return NAN;
    ws_prepare(m, n, T, train);
    workspace *w = m->ws;
    fx_batch_positions(c, b, w->pos);
    embeddings_forward(m, b, train);
    for (int l = 0; l < c->layers; l++) layer_forward(m, l, l ? w->L[l - 1].out : w->x0, b);
    head_forward(m, b, w->L[c->layers - 1].out);
    double loss = b->labels ? loss_forward_backward(w->dlogits, w->logits, b->labels, n, L) : 0;
    if (logits) memcpy(logits, w->logits, (size_t)n * L * sizeof(float));
    if (!train) return (float)loss;

    memset(m->grad, 0, m->train.n * sizeof(float));
    head_backward(m, b, w->dout);
    for (int l = c->layers - 1; l >= 0; l--) {
        layer_backward(m, l, l ? w->din : NULL, w->dout, l ? w->L[l - 1].out : w->x0, b);
        float *t = w->dout; w->dout = w->din; w->din = t;
    }
    return (float)loss;
}

/* ============================================================================================
 * AdamW and the learning-rate schedule
 * ============================================================================================ */

void fx_adamw_reset(fx_model *m) {
    memset(m->adam_m, 0, m->train.n * sizeof(float));
    memset(m->adam_v, 0, m->train.n * sizeof(float));
    m->adam_t = 0;
}

/* torch.optim.AdamW (torch 1.13, single-tensor path), step t counted from 1:
 *   p *= 1 - lr wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
 *   p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps).
 * Scalars are formed in double (Python floats) and used as fp32, as PyTorch does. */
void fx_adamw_update(fx_model *m, float lr, float weight_decay) {
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    int t = ++m->adam_t;
    double bc1 = 1 - pow(b1, t), bc2 = 1 - pow(b2, t);
    float step = (float)((double)lr / bc1), bc2s = (float)sqrt(bc2), decay = (float)(1 - (double)lr * weight_decay);
    float fb1 = (float)b1, fb2 = (float)b2, c1 = (float)(1 - b1), c2 = (float)(1 - b2), feps = (float)eps;
    for (int i = 0; i < m->train.nt; i++) {
        const fx_tensor *tt = &m->train.t[i];
        if (tt->frozen) continue;
        float *p = m->train.data + tt->off, *g = m->grad + tt->off, *mm = m->adam_m + tt->off, *vv = m->adam_v + tt->off;
        #pragma omp parallel for schedule(static) if ((long)tt->n >= PAR_MIN)
        for (long j = 0; j < (long)tt->n; j++) {
            if (weight_decay != 0) p[j] *= decay;
            mm[j] = mm[j] * fb1 + g[j] * c1;
            vv[j] = vv[j] * fb2 + c2 * g[j] * g[j];
            p[j] += -step * (mm[j] / (sqrtf(vv[j]) / bc2s + feps));
        }
    }
}

/* transformers.get_linear_schedule_with_warmup; STEP = optimizer steps already taken. */
float fx_linear_schedule(int step, int warmup, int total, float lr) {
    if (step < warmup) return (float)((double)lr * step / (warmup > 1 ? warmup : 1));
    double f = (double)(total - step) / (total - warmup > 1 ? total - warmup : 1);
    return (float)((double)lr * (f > 0 ? f : 0));
}
