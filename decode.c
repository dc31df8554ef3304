/* decode.c: the model side of fx_decoder: each layer's key/value cache over a number of slots (one per
 * beam), prefill, one token per slot, reorder. The forward it runs is model.c's (fx_model_decode_forward),
 * so a step's logits are the full forward's; the search over them is generate.c's. */
#include "fedex.h"

#include <stdlib.h>
#include <string.h>

/* ============================================================================================
 * the caches
 * ============================================================================================
 * Each layer keeps K and V of every slot, (slots, cap, heads hd), cap growing by doubling up to n_positions. A
 * step runs the same layer code as the full forward on one token per slot (N = ns), with attention
 * reading the cache; so its logits are the full forward's at that position, to the rounding of products
 * of other shapes. reorder copies slots into a spare cache and swaps the two. */

typedef struct {
    fx_model *m;
    int nslots, cap;
    float **kc, **vc, **sk, **sv;    /* (layers) caches and their spares, (nslots, cap, heads hd) each */
    float *scores; size_t scap;      /* (ns, nh, len) attention scratch */
    fx_decode_at *at;                /* (layers) what each layer's attention reads and writes */
    int32_t *ids, *pos; uint8_t *mask; int hcap; /* host batch of the call */
} decoder;

/* A cached position's width: every query head's key (GPT-2: H; Llama: heads hd, keys repeated). */
static size_t dec_width(const fx_model *m) { return (size_t)m->c.heads * fx_model_head_dim(&m->c); }

/* Room for NEED positions per slot, keeping what the slots hold. */
static void dec_reserve(decoder *d, int need) {
    fx_model *m = d->m;
    const fx_ops *op = m->ops;
    if (need <= d->cap) return;
    int cap = d->cap ? d->cap : 16;
    while (cap < need) cap *= 2;
    if (cap > m->c.max_positions) cap = m->c.max_positions;
    size_t H = dec_width(m), bytes = (size_t)d->nslots * cap * H * sizeof(float);
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

/* Runs ns rows of T tokens (ids, positions already in d's host arrays) through the model at POS (-1:
 * prefill of slot 0), the head on ROWS rows from FIRST, logits (rows, V). */
static void dec_forward(decoder *d, int ns, int T, int pos, size_t first, int rows, float *logits) {
    fx_model *m = d->m;
    size_t need = (size_t)ns * m->c.heads * (size_t)(pos + 1);
    if (pos >= 0 && need > d->scap) {
        m->ops->release(d->scores);
        d->scores = m->ops->alloc(need * sizeof(float));
        d->scap = need;
    }
    for (int l = 0; l < m->c.layers; l++) d->at[l] = (fx_decode_at){d->kc[l], d->vc[l], d->cap, pos, d->scores};
    fx_model_decode_forward(m, d->ids, d->pos, d->mask, ns, T, d->at, first, rows, logits);
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

/* Positions a sequence may hold: n_positions (a sliding window only narrows what each query reads). */
static int dec_limit(const fx_model *m) { return m->c.max_positions; }

/* ============================================================================================
 * the fx_decoder table
 * ============================================================================================ */

static int dec_prefill(void *ctx, const int *ids, int n, float *logits) {
    decoder *d = ctx;
    fx_model *m = d->m;
    if (n < 1 || n > dec_limit(m)) {
        fx_seterr("decode: a prompt of %d tokens (the model holds 1 to %d)", n, dec_limit(m));
        return -1;
    }
    if (dec_host(d, n, ids, 0, 0) != 0) return -1;
    dec_reserve(d, n);
    dec_forward(d, 1, n, -1, (size_t)n - 1, 1, logits);
    return 0;
}

static int dec_step(void *ctx, int ns, const int *tok, int pos, float *logits) {
    decoder *d = ctx;
    fx_model *m = d->m;
    if (ns < 1 || ns > d->nslots || pos < 1 || pos >= dec_limit(m)) {
        fx_seterr("decode: step of %d slots at position %d (slots 1 to %d, positions 1 to %d)", ns, pos, d->nslots,
                  dec_limit(m) - 1);
        return -1;
    }
    if (dec_host(d, ns, tok, pos, 1) != 0) return -1;
    dec_reserve(d, pos + 1);
    dec_forward(d, ns, 1, pos, 0, ns, logits);
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
    size_t H = dec_width(m), stride = (size_t)d->cap * H, n = (size_t)len * H;
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
    d->at = fx_calloc((size_t)L, sizeof *d->at);
    *out = (fx_decoder){.ctx = d, .vocab = m->c.vocab_size, .max_len = dec_limit(m),
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
        free(d->kc); free(d->vc); free(d->sk); free(d->sv); free(d->at);
        free(d->ids); free(d->pos); free(d->mask);
        free(d);
    }
    memset(fd, 0, sizeof *fd);
}
