/* tests/test_llama.c: Llama (llama.c on model.c's Llama block) against a float64 PyTorch LlamaForCausalLM
 * (golden values made by tests/make_llama_fixtures.py) on three tiny shapes read from F32 and BF16
 * checkpoints in Hugging Face's layout: grouped-query and multi-head attention, tied and untied heads, a
 * head_dim of its own, a Mistral config; logits, the label-smoothed shifted loss, every adapter gradient,
 * AdamW steps with gradient clipping, and a greedy continuation through the KV-cache decoder. Then the
 * decoder against the full forward (steps, slots, reorder), the files (merged checkpoints with lm_head
 * outside the prefix, residual files, PEFT adapters with Llama's target names), the config keys and
 * refusals (rope_scaling kinds, biases, the sliding window). */
#include "fedex.h"
#include "check.h"

#include <ftw.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FIX "tests/fixtures/"

/* ============================================================================================
 * tolerances
 * ============================================================================================
 * The reference runs in float64 from the values the C model reads (fp32 adapters, the checkpoint's
 * dtype), so every difference is fp32 arithmetic in the C model. Gradient and parameter tolerances are
 * relative to the largest element of their tensor (atol = scale * max|want|). */
enum { T_LOGITS, T_LOSS, T_GRAD, T_NORM, T_LOSSES, T_FINAL, T_DECODE, T_MERGED, NTOL };
static const struct { double atol, rtol; const char *why; } tol[NTOL] = {
    /* measured (make_llama_fixtures.py prints PyTorch's own fp32 error): the C model's worst logit lands
     * 1.4e-6 of the largest |logit| from the float64 reference on shape a, PyTorch's fp32 1.8e-6; every
     * check below passes at a quarter of its tolerance */
    [T_LOGITS] = {4e-5, 0, "of the largest |logit|: fp32 through RMSNorm, RoPE, GQA and SwiGLU over up to 3 "
                           "layers; decoding's logits (one query row against the cache) land within it too"},
    [T_LOSS]   = {2e-6, 2e-5, "a mean of log-softmax over the logits above"},
    [T_GRAD]   = {2e-5, 1e-4, "fp32 backward through model.norm, the head and every layer (RoPE's inverse "
                              "rotation, repeat_kv's sum); atol scaled by the tensor's max"},
    [T_NORM]   = {0, 5e-5, "the 2-norm of the fp32 gradient above, whose elements carry ~1e-5 relative error"},
    [T_LOSSES] = {2e-5, 1e-4, "5 AdamW steps with clipping: the fp32 gradient error enters each update"},
    [T_FINAL]  = {1e-4, 1e-4, "params after 5 steps of lr 1e-2; m / sqrt(v) amplifies small-g noise, "
                              "atol scaled by the tensor's max"},
    [T_DECODE] = {1e-5, 1e-5, "the cache path and the full forward run the same fp32 ops on products of "
                              "other shapes (one query row against T): summation order only"},
    [T_MERGED] = {1e-5, 0, "of the largest |logit|: W0 + dW folded into the weight and rounded once, against "
                           "the adapter applied on the side: one rounding per weight, through 2 or 3 layers"},
};

static int close_tol(const char *what, const float *got, const float *want, size_t n, int k, int scaled,
                     const char *file, int line) {
    double atol = tol[k].atol;
    if (scaled) {
        double mx = 0;
        for (size_t i = 0; i < n; i++) mx = fmax(mx, fabs((double)want[i]));
        atol *= mx;
    }
    return check_close(what, got, want, n, atol, tol[k].rtol, file, line);
}
#define CLOSE(what, got, want, n, k) close_tol(what, got, want, n, k, 0, __FILE__, __LINE__)
#define CLOSE_SCALED(what, got, want, n, k) close_tol(what, got, want, n, k, 1, __FILE__, __LINE__)

/* ============================================================================================
 * fixtures
 * ============================================================================================ */

typedef struct {
    char name[16], dir[64];
    fx_st_file f;
    fx_config c;
    fx_adapter_cfg a;
    fx_batch b;
} gcase;

static const float *tensor(const fx_st_file *f, const char *name, size_t n, float **owned) {
    *owned = NULL;
    const fx_st_tensor *t = fx_st_find(f, name);
    CHECK(t && fx_st_numel(t) == n, "%s: tensor '%s' missing or not of %zu elements", f->path, name, n);
    if (!t || fx_st_numel(t) != n) return NULL;
    return fx_st_f32(f, t, owned);
}
static const void *raw(const fx_st_file *f, const char *name, fx_dtype dt) {
    const fx_st_tensor *t = fx_st_find(f, name);
    CHECK(t && t->dtype == dt, "%s: tensor '%s' missing or not %s", f->path, name, fx_dtype_name(dt));
    return t && t->dtype == dt ? f->data + t->begin : NULL;
}
static double meta_num(const fx_st_file *f, const char *k) { const char *v = fx_st_meta(f, k); return v ? atof(v) : -1; }

static int open_gcase(gcase *g, const char *name) {
    char path[256];
    memset(g, 0, sizeof *g);
    snprintf(g->name, sizeof g->name, "%s", name);
    snprintf(g->dir, sizeof g->dir, FIX "llama_%s", name);
    snprintf(path, sizeof path, FIX "llama_%s_case.safetensors", name);
    if (fx_st_open(path, &g->f) != 0) { CHECK(0, "%s", fx_err()); return -1; }
    snprintf(path, sizeof path, "%s/config.json", g->dir);
    if (fx_config_load(path, &g->c) != 0) { CHECK(0, "%s", fx_err()); fx_st_close(&g->f); return -1; }
    g->c.label_smoothing = (float)meta_num(&g->f, "label_smoothing");
    g->c.max_grad_norm = (float)meta_num(&g->f, "max_grad_norm");
    g->a.kind = FX_LORA;
    if (fx_targets_parse(fx_st_meta(&g->f, "targets"), &g->a.targets) != 0) { CHECK(0, "%s", fx_err()); return -1; }
    g->a.r = (int)meta_num(&g->f, "r");
    g->a.alpha = (float)meta_num(&g->f, "alpha");
    g->a.rslora = (int)meta_num(&g->f, "rslora");
    g->a.freeze_a = (int)meta_num(&g->f, "freeze_a");
    g->a.seed = 5;
    const fx_st_tensor *ids = fx_st_find(&g->f, "ids");
    if (!ids || ids->ndim != 2) { CHECK(0, "%s: no ids", path); return -1; }
    g->b.n = (int)ids->shape[0];
    g->b.T = (int)ids->shape[1];
    g->b.ids = (int32_t *)raw(&g->f, "ids", FX_I32);
    g->b.mask = (uint8_t *)raw(&g->f, "mask", FX_U8);
    g->b.targets = (int32_t *)raw(&g->f, "targets", FX_I32);
    return g->b.ids && g->b.mask && g->b.targets ? 0 : -1;
}

/* The case's model: the checkpoint through fx_model_load, the fixture's adapters. */
static int build(gcase *g, fx_model *m, const fx_adapter_cfg *a) {
    if (fx_model_create(m, &g->c, a ? a : &g->a, NULL) != 0) { CHECK(0, "%s: %s", g->name, fx_err()); return -1; }
    fx_model_init_base(m, 3);
    int rc = fx_model_load(m, g->dir);
    CHECK(rc >= 0, "%s: load: %s", g->name, fx_err());
    if (rc < 0) { fx_model_free(m); return -1; }
    for (int i = 0; i < m->train.nt; i++) {
        float *ow;
        const float *p = tensor(&g->f, m->train.t[i].name, m->train.t[i].n, &ow);
        if (p) memcpy(m->train.data + m->train.t[i].off, p, m->train.t[i].n * sizeof(float));
        free(ow);
        if (!p) { fx_model_free(m); return -1; }
    }
    return 0;
}

/* ============================================================================================
 * forward, loss, gradients, AdamW with clipping, greedy decoding against the reference
 * ============================================================================================ */

static void test_golden(const char *name) {
    gcase g;
    fx_model m;
    if (open_gcase(&g, name) != 0) return;
    if (build(&g, &m, NULL) != 0) { fx_st_close(&g.f); return; }
    int n = g.b.n, T = g.b.T, V = g.c.vocab_size;
    size_t nl = (size_t)n * T * V;
    float *logits = fx_calloc(nl, sizeof(float)), *ow;
    char what[200];
    const float *want;

    float loss0 = fx_model_step(&m, &g.b, 0, logits);
    snprintf(what, sizeof what, "llama_%s: logits (eval)", name);
    if ((want = tensor(&g.f, "expect.logits", nl, &ow))) CLOSE_SCALED(what, logits, want, nl, T_LOGITS);
    free(ow);
    memset(m.grad, 0xff, m.train.n * sizeof(float)); /* NaN: every gradient must be written */
    float loss = fx_model_step(&m, &g.b, 1, logits);
    snprintf(what, sizeof what, "llama_%s: logits (train)", name);
    if ((want = tensor(&g.f, "expect.logits", nl, &ow))) CLOSE_SCALED(what, logits, want, nl, T_LOGITS);
    free(ow);
    snprintf(what, sizeof what, "llama_%s: loss (label smoothing %g)", name, (double)g.c.label_smoothing);
    if ((want = tensor(&g.f, "expect.loss", 1, &ow))) { CLOSE(what, &loss, want, 1, T_LOSS); CLOSE(what, &loss0, want, 1, T_LOSS); }
    free(ow);
    for (int i = 0; i < m.train.nt; i++) {
        const fx_tensor *t = &m.train.t[i];
        char gname[160];
        snprintf(gname, sizeof gname, "grad.%s", t->name);
        snprintf(what, sizeof what, "llama_%s: %s", name, gname);
        if (t->frozen) {
            size_t nz = 0;
            for (size_t j = 0; j < t->n; j++) nz += m.grad[t->off + j] != 0;
            CHECK(nz == 0 && !fx_st_find(&g.f, gname), "%s: frozen, yet %zu non-zero elements", what, nz);
            continue;
        }
        if ((want = tensor(&g.f, gname, t->n, &ow))) CLOSE_SCALED(what, m.grad + t->off, want, t->n, T_GRAD);
        free(ow);
    }
    /* the total norm clip_grad_norm_ sees (clipping to a huge norm changes nothing) */
    float *keep = fx_malloc(m.train.n * sizeof(float));
    memcpy(keep, m.grad, m.train.n * sizeof(float));
    float norm = (float)fx_clip_grad_norm(&m, 1e30f);
    snprintf(what, sizeof what, "llama_%s: gradient norm", name);
    if ((want = tensor(&g.f, "expect.grad_norm", 1, &ow))) CLOSE(what, &norm, want, 1, T_NORM);
    free(ow);
    CHECK(!memcmp(keep, m.grad, m.train.n * sizeof(float)), "llama_%s: clipping above the norm changed the gradient", name);
    fx_clip_grad_norm(&m, norm / 4);
    float n2 = (float)fx_clip_grad_norm(&m, 1e30f);
    CHECK(fabsf(n2 - norm / 4) <= 1e-5f * norm, "llama_%s: clipped to %g, the norm is %g", name, (double)(norm / 4), (double)n2);
    free(keep);

    /* AdamW steps (lr 1e-2, 1 warmup step, weight decay 0.01), clipped at the case's max_grad_norm */
    int steps = (int)meta_num(&g.f, "adam_steps");
    float losses[16];
    fx_adamw_reset(&m);
    for (int s = 0; s < steps && s < 16; s++) {
        losses[s] = fx_model_step(&m, &g.b, 1, NULL);
        fx_adamw_update(&m, fx_linear_schedule(s, 1, steps, 1e-2f), 0.01f);
    }
    snprintf(what, sizeof what, "llama_%s: losses of %d AdamW steps (clip %g)", name, steps, (double)g.c.max_grad_norm);
    if ((want = tensor(&g.f, "expect.losses", (size_t)steps, &ow))) CLOSE(what, losses, want, (size_t)steps, T_LOSSES);
    free(ow);
    for (int i = 0; i < m.train.nt; i++) {
        const fx_tensor *t = &m.train.t[i];
        char fname[160];
        snprintf(fname, sizeof fname, "final.%s", t->name);
        snprintf(what, sizeof what, "llama_%s: %s", name, fname);
        if ((want = tensor(&g.f, fname, t->n, &ow))) CLOSE_SCALED(what, m.train.data + t->off, want, t->n, T_FINAL);
        free(ow);
    }
    fx_model_free(&m);

    /* greedy continuation with the initial adapters, through the cache */
    if (build(&g, &m, NULL) == 0) {
        const fx_st_tensor *gi = fx_st_find(&g.f, "greedy.ids");
        int total = gi ? (int)gi->shape[0] : 0, np = (int)meta_num(&g.f, "greedy_prompt"), nnew = total - np;
        const int32_t *seq = raw(&g.f, "greedy.ids", FX_I32);
        const float *wl = tensor(&g.f, "greedy.logits", (size_t)nnew * V, &ow);
        fx_decoder d;
        if (seq && wl && nnew > 0 && fx_model_decoder(&m, 1, &d) == 0) {
            float *z = fx_malloc((size_t)V * sizeof(float));
            int ids[64], ok = 1;
            for (int i = 0; i < np; i++) ids[i] = seq[i];
            ok = d.prefill(d.ctx, ids, np, z) == 0;
            for (int s = 0; ok && s < nnew; s++) {
                snprintf(what, sizeof what, "llama_%s: greedy step %d logits", name, s);
                CLOSE_SCALED(what, z, wl + (size_t)s * V, (size_t)V, T_LOGITS);
                int best = 0;
                for (int v = 1; v < V; v++) if (z[v] > z[best]) best = v;
                CHECK(best == seq[np + s], "llama_%s: greedy token %d is %d, the reference's %d", name, s, best, seq[np + s]);
                if (s + 1 < nnew) ok = d.step(d.ctx, 1, &best, np + s, z) == 0;
            }
            CHECK(ok, "llama_%s: decoding: %s", name, fx_err());
            free(z);
            fx_decoder_free(&d);
        }
        free(ow);
        fx_model_free(&m);
    }
    free(logits);
    fx_st_close(&g.f);
}

/* ============================================================================================
 * the decoder against the full forward
 * ============================================================================================ */

/* Full-forward logits of the last position of SEQ[0..n). */
static void full_last(fx_model *m, const int *seq, int n, float *out) {
    int32_t ids[64]; uint8_t mask[64];
    for (int i = 0; i < n; i++) { ids[i] = seq[i]; mask[i] = 1; }
    fx_batch b = {.n = 1, .T = n, .ids = ids, .mask = mask};
    float *all = fx_malloc((size_t)n * m->c.vocab_size * sizeof(float));
    fx_model_step(m, &b, 0, all);
    memcpy(out, all + (size_t)(n - 1) * m->c.vocab_size, (size_t)m->c.vocab_size * sizeof(float));
    free(all);
}

/* Three slots grown from one prompt, diverging, reordered (a repeated source, a permutation), each step's
 * logits against the full forward of that slot's sequence. */
static void test_decoder(void) {
    gcase g;
    fx_model m;
    if (open_gcase(&g, "a") != 0) return;
    if (build(&g, &m, NULL) != 0) { fx_st_close(&g.f); return; }
    int V = g.c.vocab_size, S = 3, np = 5;
    fx_decoder d;
    CHECK(fx_model_decoder(&m, S, &d) == 0 && d.vocab == V && d.max_len == g.c.max_positions, "decoder: %s", fx_err());
    int seq[3][64], len = np;
    float *z = fx_malloc((size_t)S * V * sizeof(float)), *want = fx_malloc((size_t)V * sizeof(float));
    for (int i = 0; i < np; i++) seq[0][i] = g.b.ids[i];
    CHECK(d.prefill(d.ctx, seq[0], np, z) == 0, "prefill: %s", fx_err());
    full_last(&m, seq[0], np, want);
    CLOSE("decoder: prefill logits", z, want, (size_t)V, T_DECODE);
    int src0[3] = {0, 0, 0};
    CHECK(d.reorder(d.ctx, S, src0, len) == 0, "reorder: %s", fx_err());
    for (int s = 1; s < S; s++) memcpy(seq[s], seq[0], sizeof seq[0]);
    for (int step = 0; step < 12; step++) { /* past 16 positions: the cache grows at step 11 */
        int tok[3];
        for (int s = 0; s < S; s++) seq[s][len] = tok[s] = (7 * step + 11 * s + 3) % V;
        CHECK(d.step(d.ctx, S, tok, len, z) == 0, "step: %s", fx_err());
        len++;
        for (int s = 0; s < S; s++) {
            char what[80];
            full_last(&m, seq[s], len, want);
            snprintf(what, sizeof what, "decoder: step %d slot %d logits", step, s);
            CLOSE(what, z + (size_t)s * V, want, (size_t)V, T_DECODE);
        }
        if (step == 3 || step == 5 || step == 11) { /* beams: slot 0 twice and slot 2, then a rotation */
            int src[3][3] = {{0, 0, 2}, {1, 2, 0}}, *sr = src[step != 3];
            int copy[3][64];
            for (int s = 0; s < S; s++) memcpy(copy[s], seq[sr[s]], sizeof copy[s]);
            memcpy(seq, copy, sizeof copy);
            CHECK(d.reorder(d.ctx, S, sr, len) == 0, "reorder: %s", fx_err());
        }
    }
    /* a step of fewer slots than the decoder holds, and bad arguments refused */
    int one = 1;
    seq[0][len] = one;
    CHECK(d.step(d.ctx, 1, &one, len, z) == 0, "step of one slot: %s", fx_err());
    full_last(&m, seq[0], len + 1, want);
    CLOSE("decoder: one-slot step logits", z, want, (size_t)V, T_DECODE);
    int bad = V;
    CHECK(d.step(d.ctx, 1, &bad, len, z) != 0 && strstr(fx_err(), "vocabulary"), "a token outside the vocabulary: %s", fx_err());
    CHECK(d.step(d.ctx, S + 1, src0, len, z) != 0, "more slots than the decoder holds accepted");
    CHECK(d.step(d.ctx, 1, &one, g.c.max_positions, z) != 0, "a position past max_position_embeddings accepted");
    int far[1] = {S};
    CHECK(d.reorder(d.ctx, 1, far, len) != 0, "a reorder from a slot that does not exist accepted");
    int longp[64] = {0};
    CHECK(d.prefill(d.ctx, longp, g.c.max_positions + 1, z) != 0, "a prompt longer than max_position_embeddings accepted");
    fx_decoder_free(&d);
    free(z); free(want);
    fx_model_free(&m);
    fx_st_close(&g.f);

    fx_config c = {0};
    fx_config_load(FIX "model_config.json", &c);
    fx_adapter_cfg a = {.kind = FX_LORA, .r = 1, .alpha = 1};
    if (fx_model_create(&m, &c, &a, NULL) == 0) {
        CHECK(fx_model_decoder(&m, 1, &d) != 0 && strstr(fx_err(), "causal"), "a RoBERTa decoder: %s", fx_err());
        fx_model_free(&m);
    }
}

/* ============================================================================================
 * the files: merged checkpoints, residual files, adapters
 * ============================================================================================ */

static char tmp_root[64];
static const char *tmp_path(const char *leaf) {
    static char buf[8][256];
    static int next;
    char *p = buf[next++ % 8];
    snprintf(p, 256, "%s/%s", tmp_root, leaf);
    return p;
}
static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st; (void)flag; (void)ftw;
    return remove(p);
}

static float *logits_of(fx_model *m, const fx_batch *b) {
    float *z = fx_malloc((size_t)b->n * b->T * m->c.vocab_size * sizeof(float));
    fx_model_step(m, b, 0, z);
    return z;
}

/* s B A of adapted layer K as (out, in), into R. */
static void lora_delta(const fx_model *m, int k, float *R) {
    const fx_adapted *ad = &m->ad[k];
    const float *A = m->train.data + ad->a_off, *B = m->train.data + ad->b_off;
    for (int o = 0; o < ad->out; o++)
        for (int i = 0; i < ad->in; i++) {
            double s = 0;
            for (int j = 0; j < m->a.r; j++) s += (double)B[o * m->a.r + j] * A[j * ad->in + i];
            R[(size_t)o * ad->in + i] = (float)(m->scale * s);
        }
}

/* Case NAME's merged checkpoint (Hugging Face's names, lm_head.weight outside "model." when untied), its
 * config.json read back, the residual file a run writes, and the PEFT adapter round trip. */
static void test_files(const char *name) {
    gcase g;
    fx_model m, plain;
    if (open_gcase(&g, name) != 0) return;
    if (build(&g, &m, NULL) != 0) { fx_st_close(&g.f); return; }
    size_t nl = (size_t)g.b.n * g.b.T * g.c.vocab_size;
    float *want = logits_of(&m, &g.b);
    fx_adapter_cfg none = {.kind = FX_LORA, .r = 1, .alpha = 1};
    char what[200], path[300];

    const char *dir = tmp_path(name);
    CHECK(fx_model_export(&m, dir, 1, NULL) == 0, "llama_%s: merged export: %s", name, fx_err());
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    fx_st_file f;
    if (fx_st_open(path, &f) == 0) {
        const fx_st_tensor *k = fx_st_find(&f, "model.layers.0.self_attn.k_proj.weight");
        int hd = g.c.head_dim, kv = g.c.kv_heads;
        CHECK(k && k->shape[0] == kv * hd && k->shape[1] == g.c.hidden, "llama_%s: k_proj is not (kv_heads hd, H)", name);
        CHECK(fx_st_find(&f, "model.embed_tokens.weight") && fx_st_find(&f, "model.norm.weight") &&
              !fx_st_find(&f, "model.lm_head.weight") && !fx_st_find(&f, "model.layers.0.self_attn.q_proj.bias") &&
              (fx_st_find(&f, "lm_head.weight") != NULL) == g.c.untied_head,
              "llama_%s: the saved names are not LlamaForCausalLM's (untied head %d)", name, g.c.untied_head);
        fx_st_close(&f);
    }
    fx_config c2;
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK(fx_config_load(path, &c2) == 0 && c2.family == &fx_llama && c2.kv_heads == g.c.kv_heads &&
          c2.head_dim == g.c.head_dim && c2.untied_head == g.c.untied_head && c2.rope_theta == g.c.rope_theta &&
          c2.layer_norm_eps == g.c.layer_norm_eps && c2.sliding_window == g.c.sliding_window &&
          c2.max_positions == g.c.max_positions && c2.pad_id == g.c.pad_id, "llama_%s: saved config.json: %s", name,
          fx_err());
    if (fx_model_create(&plain, &g.c, &none, NULL) == 0) {
        fx_model_init_base(&plain, 9);
        CHECK(fx_model_load(&plain, dir) >= 0, "%s", fx_err());
        float *got = logits_of(&plain, &g.b);
        snprintf(what, sizeof what, "llama_%s: merged checkpoint = base + adapter", name);
        CLOSE_SCALED(what, got, want, nl, T_MERGED);
        free(got);
        fx_model_free(&plain);
    }

    /* the residual file as a run writes it, (out, in) per adapted weight: W0 + R is the adapter's model */
    if (fx_model_create(&plain, &g.c, &none, NULL) == 0) {
        fx_model_init_base(&plain, 9);
        fx_model_load(&plain, g.dir);
        fx_st_entry e[64];
        char names[64][128];
        float *bufs[64];
        int ne = 0;
        for (int k = 0; k < m.nadapted && ne < 64; k++, ne++) {
            const fx_adapted *ad = &m.ad[k];
            bufs[ne] = fx_malloc((size_t)ad->out * ad->in * sizeof(float));
            lora_delta(&m, k, bufs[ne]);
            snprintf(names[ne], sizeof names[ne], "model.%s.weight", ad->name);
            e[ne] = (fx_st_entry){.name = names[ne], .dtype = FX_F32, .ndim = 2, .shape = {ad->out, ad->in},
                                  .data = bufs[ne]};
        }
        const char *rp = tmp_path("residual.safetensors");
        CHECK(fx_st_write(rp, e, ne, NULL) == 0, "%s", fx_err());
        CHECK(fx_residual_load(&plain, rp) == 0, "llama_%s: residual: %s", name, fx_err());
        float *got = logits_of(&plain, &g.b);
        snprintf(what, sizeof what, "llama_%s: W0 + residual = the adapter's model", name);
        CLOSE_SCALED(what, got, want, nl, T_MERGED);
        free(got);
        for (int i = 0; i < ne; i++) free(bufs[i]);
        fx_model_free(&plain);
    }

    /* the PEFT adapter: Llama's target names, PEFT's keys, and a round trip */
    dir = tmp_path("adapter");
    CHECK(fx_adapter_save(&m, dir, NULL) == 0, "adapter save: %s", fx_err());
    char *text = NULL;
    size_t len;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    if (fx_read_file(path, &text, &len) == 0) {
        CHECK(strstr(text, "\"fan_in_fan_out\": false") && strstr(text, "\"task_type\": \"CAUSAL_LM\"") &&
              strstr(text, "_proj\""), "llama_%s: adapter_config.json:\n%s", name, text);
        free(text);
    }
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (fx_st_open(path, &f) == 0) {
        char key[160];
        snprintf(key, sizeof key, "base_model.model.model.%s.lora_B.weight", m.ad[0].name);
        const fx_st_tensor *B = fx_st_find(&f, key);
        CHECK(B && B->shape[0] == m.ad[0].out && B->shape[1] == g.a.r && f.n == 2 * m.nadapted,
              "llama_%s: PEFT's keys (%s): lora_A (r, in), lora_B (out, r), nothing else", name, key);
        fx_st_close(&f);
    }
    fx_adapter_cfg a2;
    CHECK(fx_adapter_config_load(dir, &a2) == 0 && a2.targets == g.a.targets && a2.r == g.a.r,
          "llama_%s: adapter config: %s", name, fx_err());
    fx_model m2;
    if (fx_model_create(&m2, &g.c, &a2, NULL) == 0) {
        fx_model_init_base(&m2, 9);
        fx_model_load(&m2, g.dir);
        CHECK(fx_adapter_load(&m2, dir) == 0, "llama_%s: adapter load: %s", name, fx_err());
        CHECK(!memcmp(m2.train.data, m.train.data, m.train.n * sizeof(float)), "llama_%s: adapter round trip differs", name);
        fx_model_free(&m2);
    }
    free(want);
    fx_model_free(&m);
    fx_st_close(&g.f);
}

/* ============================================================================================
 * configuration, targets, refusals
 * ============================================================================================ */

/* A config.json of a tiny Llama with EXTRA keys; fx_config_load's return. */
static int load_with(const char *extra, fx_config *c) {
    char text[768];
    snprintf(text, sizeof text, "{\"model_type\": \"llama\", \"vocab_size\": 20, \"hidden_size\": 8, "
             "\"intermediate_size\": 12, \"num_hidden_layers\": 1, \"num_attention_heads\": 4%s%s}", *extra ? ", " : "",
             extra);
    const char *p = tmp_path("config.json");
    fx_write_file_atomic(p, text, strlen(text));
    return fx_config_load(p, c);
}

static void test_config(void) {
    fx_config c;
    CHECK(fx_config_load(FIX "llama_a/config.json", &c) == 0, "%s", fx_err());
    CHECK(c.family == &fx_llama && c.vocab_size == 47 && c.hidden == 16 && c.layers == 2 && c.heads == 4 &&
          c.kv_heads == 2 && c.head_dim == 4 && c.intermediate == 28 && c.max_positions == 24 && c.pad_id == 46 &&
          c.untied_head && c.rope_theta == 10000.0f && fabsf(c.layer_norm_eps - 1e-5f) < 1e-12f && !c.sliding_window,
          "llama_a config fields (eos_token_id a list)");
    CHECK(fx_config_load(FIX "llama_b/config.json", &c) == 0 && c.kv_heads == 2 && c.head_dim == 10 && !c.untied_head,
          "llama_b: num_key_value_heads absent is multi-head, head_dim 10: %s", fx_err());
    CHECK(fx_config_load(FIX "llama_c/config.json", &c) == 0 && c.family == &fx_llama && c.sliding_window == 14 &&
          c.kv_heads == 1, "llama_c: a Mistral config reads as the Llama family: %s", fx_err());
    /* defaults: LlamaConfig's */
    CHECK(load_with("", &c) == 0 && c.kv_heads == 4 && c.head_dim == 2 && c.max_positions == 2048 && c.untied_head &&
          c.rope_theta == 10000.0f && fabsf(c.layer_norm_eps - 1e-6f) < 1e-12f, "LlamaConfig's defaults: %s", fx_err());
    CHECK(load_with("\"rope_scaling\": null, \"attention_bias\": false", &c) == 0, "rope_scaling null: %s", fx_err());
    /* refused, each by name */
    const struct { const char *extra, *says; } bad[] = {
        {"\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}", "llama3"},
        {"\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}", "linear"},
        {"\"rope_scaling\": {\"rope_type\": \"yarn\"}", "yarn"},
        {"\"attention_bias\": true", "attention_bias"},
        {"\"mlp_bias\": true", "mlp_bias"},
        {"\"hidden_act\": \"gelu\"", "hidden_act"},
        {"\"num_key_value_heads\": 3", "num_key_value_heads"},
        {"\"head_dim\": 3", "odd"},
        {"\"pretraining_tp\": 2", "pretraining_tp"},
        {"\"tie_word_embeddings\": 1", "tie_word_embeddings"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(load_with(bad[i].extra, &c) != 0 && strstr(fx_err(), bad[i].says), "config with %s: %s", bad[i].extra,
              fx_err());

    /* target names: PEFT's seven; GPT-2's c_attn is no Llama layer */
    unsigned mask;
    CHECK(fx_targets_parse("q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj", &mask) == 0 &&
          mask == (FX_T_QUERY | FX_T_KEY | FX_T_VALUE | FX_T_ATTN_OUT | FX_T_GATE | FX_T_INTER | FX_T_OUTPUT),
          "Llama's seven targets: %s", fx_err());
    fx_config_load(FIX "llama_c/config.json", &c);
    fx_adapter_cfg q = {.kind = FX_LORA, .targets = FX_T_QKV, .r = 2, .alpha = 2};
    fx_model m;
    CHECK(fx_model_create(&m, &c, &q, NULL) != 0 && strstr(fx_err(), "q_proj"), "c_attn on Llama: %s", fx_err());
    fx_config rc_;
    fx_config_load(FIX "model_config.json", &rc_);
    q.targets = FX_T_GATE;
    CHECK(fx_model_create(&m, &rc_, &q, NULL) != 0 && strstr(fx_err(), "gate_proj"), "gate_proj on RoBERTa: %s", fx_err());

    /* the sliding window: longer batches and prompts refused; max_position_embeddings likewise */
    fx_adapter_cfg a = {.kind = FX_LORA, .targets = FX_T_QUERY, .r = 2, .alpha = 2};
    if (fx_model_create(&m, &c, &a, NULL) == 0) {
        int32_t ids[40] = {0}, tg[40];
        uint8_t mk[40];
        for (int i = 0; i < 40; i++) { tg[i] = i % 5; mk[i] = 1; }
        fx_batch b = {.n = 1, .T = c.sliding_window, .ids = ids, .mask = mk, .targets = tg};
        CHECK(isfinite(fx_model_step(&m, &b, 1, NULL)), "a batch as long as the window: %s", fx_err());
        b.T = c.sliding_window + 1;
        CHECK(isnan(fx_model_step(&m, &b, 1, NULL)) && strstr(fx_err(), "sliding_window"), "past the window: %s", fx_err());
        fx_decoder d;
        float *z = fx_malloc((size_t)c.vocab_size * sizeof(float));
        int p[40] = {0};
        if (fx_model_decoder(&m, 1, &d) == 0) {
            CHECK(d.max_len == c.sliding_window, "decoder max_len %d, the window %d", d.max_len, c.sliding_window);
            CHECK(d.prefill(d.ctx, p, c.sliding_window + 1, z) != 0, "a prompt past the window accepted");
            CHECK(d.prefill(d.ctx, p, c.sliding_window - 1, z) == 0, "prefill: %s", fx_err());
            CHECK(d.step(d.ctx, 1, p, c.sliding_window, z) != 0, "a step past the window accepted");
            fx_decoder_free(&d);
        }
        free(z);
        fx_model_free(&m);
    }
}

int main(void) {
    snprintf(tmp_root, sizeof tmp_root, "/tmp/fedex_test_llama_XXXXXX");
    if (!mkdtemp(tmp_root)) { perror("mkdtemp"); return 1; }
    test_golden("a");
    test_golden("b");
    test_golden("c");
    test_decoder();
    test_files("a");
    test_files("b");
    test_config();
    nftw(tmp_root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return check_done();
}
