/* tests/lm_golden.h: the golden checks a causal-LM family's test runs against its fixture script's float64
 * reference (tests/make_gpt2_fixtures.py, tests/make_llama_fixtures.py write the same case layout):
 * loading a case, logits, loss, every adapter gradient, clipping, AdamW steps, greedy decoding, and the
 * decoder against the full forward. Included once by test_gpt2.c and test_llama.c, each defining first
 * LM_NAME (the fixtures' prefix, "gpt2" or "llama"), FIX and its own tolerance table `tol` (T_* indices),
 * whose reasons are the family's. Not the family's files, configs or refusals (the tests themselves). */
#ifndef LM_NAME
#error "define LM_NAME (the fixtures' prefix) before including lm_golden.h"
#endif

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
    snprintf(g->dir, sizeof g->dir, FIX LM_NAME "_%s", name);
    snprintf(path, sizeof path, FIX LM_NAME "_%s_case.safetensors", name);
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

/* The case's model: the checkpoint through fx_model_load (the family's file quirks: GPT-2's Conv1D
 * transposed, prefix or not, buffers and lm_head skipped), the fixture's adapters. */
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

/* The reference's logits (n, T, V) with its padded positions zeroed: fx_model_step computes only the
 * real tokens and leaves zeros on padding (Hugging Face's logits there are of pad queries, which no loss
 * reads). Malloc'd. */
static float *real_logits(const float *want, const fx_batch *b, int V) {
    size_t nl = (size_t)b->n * b->T * V;
    float *w = fx_malloc(nl * sizeof *w);
    for (size_t i = 0; i < (size_t)b->n * b->T; i++)
        for (int v = 0; v < V; v++) w[i * V + v] = b->mask[i] ? want[i * V + v] : 0.0f;
    return w;
}

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
    snprintf(what, sizeof what, LM_NAME "_%s: logits (eval; zero on padding)", name);
    if ((want = tensor(&g.f, "expect.logits", nl, &ow))) {
        float *wr = real_logits(want, &g.b, V);
        CLOSE_SCALED(what, logits, wr, nl, T_LOGITS);
        free(wr);
    }
    free(ow);
    memset(m.grad, 0xff, m.train.n * sizeof(float)); /* NaN: every gradient must be written */
    float loss = fx_model_step(&m, &g.b, 1, logits);
    snprintf(what, sizeof what, LM_NAME "_%s: logits (train; zero on padding)", name);
    if ((want = tensor(&g.f, "expect.logits", nl, &ow))) {
        float *wr = real_logits(want, &g.b, V);
        CLOSE_SCALED(what, logits, wr, nl, T_LOGITS);
        free(wr);
    }
    free(ow);
    snprintf(what, sizeof what, LM_NAME "_%s: loss (label smoothing %g)", name, (double)g.c.label_smoothing);
    if ((want = tensor(&g.f, "expect.loss", 1, &ow))) { CLOSE(what, &loss, want, 1, T_LOSS); CLOSE(what, &loss0, want, 1, T_LOSS); }
    free(ow);
    for (int i = 0; i < m.train.nt; i++) {
        const fx_tensor *t = &m.train.t[i];
        char gname[160];
        snprintf(gname, sizeof gname, "grad.%s", t->name);
        snprintf(what, sizeof what, LM_NAME "_%s: %s", name, gname);
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
    snprintf(what, sizeof what, LM_NAME "_%s: gradient norm", name);
    if ((want = tensor(&g.f, "expect.grad_norm", 1, &ow))) CLOSE(what, &norm, want, 1, T_NORM);
    free(ow);
    CHECK(!memcmp(keep, m.grad, m.train.n * sizeof(float)), LM_NAME "_%s: clipping above the norm changed the gradient", name);
    fx_clip_grad_norm(&m, norm / 4);
    float n2 = (float)fx_clip_grad_norm(&m, 1e30f);
    CHECK(fabsf(n2 - norm / 4) <= 1e-5f * norm, LM_NAME "_%s: clipped to %g, the norm is %g", name, (double)(norm / 4), (double)n2);
    free(keep);

    /* AdamW steps (lr 1e-2, 1 warmup step, weight decay 0.01), clipped at the case's max_grad_norm */
    int steps = (int)meta_num(&g.f, "adam_steps");
    float losses[16];
    fx_adamw_reset(&m);
    for (int s = 0; s < steps && s < 16; s++) {
        losses[s] = fx_model_step(&m, &g.b, 1, NULL);
        fx_adamw_update(&m, fx_linear_schedule(s, 1, steps, 1e-2f), 0.01f);
    }
    snprintf(what, sizeof what, LM_NAME "_%s: losses of %d AdamW steps (clip %g)", name, steps, (double)g.c.max_grad_norm);
    if ((want = tensor(&g.f, "expect.losses", (size_t)steps, &ow))) CLOSE(what, losses, want, (size_t)steps, T_LOSSES);
    free(ow);
    for (int i = 0; i < m.train.nt; i++) {
        const fx_tensor *t = &m.train.t[i];
        char fname[160];
        snprintf(fname, sizeof fname, "final.%s", t->name);
        snprintf(what, sizeof what, LM_NAME "_%s: %s", name, fname);
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
                snprintf(what, sizeof what, LM_NAME "_%s: greedy step %d logits", name, s);
                CLOSE_SCALED(what, z, wl + (size_t)s * V, (size_t)V, T_LOGITS);
                int best = 0;
                for (int v = 1; v < V; v++) if (z[v] > z[best]) best = v;
                CHECK(best == seq[np + s], LM_NAME "_%s: greedy token %d is %d, the reference's %d", name, s, best, seq[np + s]);
                if (s + 1 < nnew) ok = d.step(d.ctx, 1, &best, np + s, z) == 0;
            }
            CHECK(ok, LM_NAME "_%s: decoding: %s", name, fx_err());
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
static void test_decoder(const char *name) {
    gcase g;
    fx_model m;
    if (open_gcase(&g, name) != 0) return;
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
    CHECK(d.step(d.ctx, 1, &one, g.c.max_positions, z) != 0, "a position past the model's positions accepted");
    int far[1] = {S};
    CHECK(d.reorder(d.ctx, 1, far, len) != 0, "a reorder from a slot that does not exist accepted");
    int longp[64] = {0};
    CHECK(d.prefill(d.ctx, longp, g.c.max_positions + 1, z) != 0, "a prompt longer than the model's positions accepted");
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

