/* tests/test_model.c: the CPU reference model against a float64 PyTorch RoBERTa (golden values made by
 * tests/make_model_fixtures.py): logits, loss, every gradient and 10 AdamW steps for LoRA, rsLoRA on all
 * six targets with regression, FFA-LoRA, VeRA and a FedEx residual. Then checkpoints and PEFT adapters
 * (round trips, key names, F16/BF16 loading, refusals) and `fedex init` + `fedex eval` end to end. */
#include "fedex.h"
#include "check.h"

#include <ftw.h>
#include <stdlib.h>
#include <limits.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define FIX "tests/fixtures/"

/* ============================================================================================
 * tolerances
 * ============================================================================================
 * The reference runs in float64 from the same fp32-rounded inputs, so every difference is fp32
 * arithmetic (and summation order) in the C model. Gradient and parameter tolerances are relative to the
 * largest element of their tensor (atol = scale * max|want|), as small elements carry the absolute
 * error of sums of large terms. */
enum { T_LOGITS, T_LOSS, T_GRAD, T_LOSSES, T_FINAL, T_LR, T_MERGE, T_F16, T_BF16, NTOL };
static const struct { double atol, rtol; const char *why; } tol[NTOL] = {
    [T_LOGITS] = {1e-5, 1e-5, "fp32 through 2 layers, 2 heads: ~1e-6 relative expected"},
    [T_LOSS]   = {1e-6, 1e-5, "a mean of log-softmax / squared error of the logits above"},
    [T_GRAD]   = {1e-5, 1e-4, "PyTorch's own fp32 lands within 2e-6 of each tensor's max on these "
                              "cases (the script prints it); atol scaled by that max"},
    [T_LOSSES] = {1e-5, 1e-4, "10 AdamW steps: the fp32 gradient error enters each update once"},
    [T_FINAL]  = {1e-4, 1e-4, "params after 10 steps of ~lr = 1e-2 each; m / sqrt(v) amplifies small-g "
                              "noise, atol scaled by the tensor's max"},
    [T_LR]     = {0, 1e-6, "the HF schedule formed in double, stored as fp32"},
    [T_MERGE]  = {2e-5, 2e-5, "W0 + dW folded in double, rounded once to fp32: summation order only"},
    [T_F16]    = {0x1p-25, 0x1p-11, "the script rounded to F16 (half an ulp, 2^-25 below F16's "
                                    "normals); the conversion itself must be exact"},
    [T_BF16]   = {1e-38, 0x1p-8, "the script rounded to BF16: half an ulp of an 8-bit significand"},
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

static fx_st_file base_f, batch_f;

/* A tensor of a fixture file as fp32 (pointer into the mapping or *owned copy); NULL + a FAIL if absent. */
static const float *fixture(const fx_st_file *f, const char *name, size_t n, float **owned) {
    *owned = NULL;
    const fx_st_tensor *t = fx_st_find(f, name);
    CHECK(t != NULL, "%s: no tensor '%s'", f->path, name);
    if (!t) return NULL;
    CHECK(fx_st_numel(t) == n, "%s: '%s' has %zu elements, the model %zu", f->path, name, fx_st_numel(t), n);
    if (fx_st_numel(t) != n) return NULL;
    const float *p = fx_st_f32(f, t, owned);
    CHECK(p != NULL, "%s", fx_err());
    return p;
}

/* Copies the fixture tensor NAME into DST (n floats); 0 on success. */
static int copy_in(const fx_st_file *f, const char *name, float *dst, size_t n) {
    float *owned;
    const float *p = fixture(f, name, n, &owned);
    if (!p) return -1;
    memcpy(dst, p, n * sizeof(float));
    free(owned);
    return 0;
}

typedef struct {
    const char *name;
    fx_st_file f;
    fx_config c;
    fx_adapter_cfg a;
    fx_batch b;
    float *labels; /* owned copy */
} fixture_case;

static int meta_int(const fx_st_file *f, const char *k) { const char *v = fx_st_meta(f, k); return v ? atoi(v) : -1; }

static int open_case(fixture_case *fc, const char *name) {
    char path[256];
    memset(fc, 0, sizeof *fc);
    fc->name = name;
    snprintf(path, sizeof path, FIX "model_case_%s.safetensors", name);
    if (fx_st_open(path, &fc->f) != 0) { CHECK(0, "%s", fx_err()); return -1; }
    const char *kind = fx_st_meta(&fc->f, "kind"), *targets = fx_st_meta(&fc->f, "targets"),
               *cfg = fx_st_meta(&fc->f, "config"), *alpha = fx_st_meta(&fc->f, "alpha"),
               *labels = fx_st_meta(&fc->f, "labels");
    if (!kind || !targets || !cfg || !alpha || !labels) { CHECK(0, "%s: metadata incomplete", path); return -1; }
    snprintf(path, sizeof path, FIX "%s", cfg);
    if (fx_config_load(path, &fc->c) != 0) { CHECK(0, "%s", fx_err()); return -1; }
    fc->a.kind = strcmp(kind, "vera") ? FX_LORA : FX_VERA;
    if (fx_targets_parse(targets, &fc->a.targets) != 0) { CHECK(0, "%s", fx_err()); return -1; }
    fc->a.r = meta_int(&fc->f, "r");
    fc->a.alpha = strtof(alpha, NULL);
    fc->a.rslora = meta_int(&fc->f, "rslora");
    fc->a.freeze_a = meta_int(&fc->f, "freeze_a");
    fc->a.d_initial = 0.1f;
    fc->a.seed = 7;

    const fx_st_tensor *ids = fx_st_find(&batch_f, "ids"), *mask = fx_st_find(&batch_f, "mask");
    if (!ids || !mask || ids->dtype != FX_I32 || mask->dtype != FX_U8 || ids->ndim != 2) {
        CHECK(0, "%s: ids (I32) and mask (U8) expected", batch_f.path);
        return -1;
    }
    fc->b.n = (int)ids->shape[0];
    fc->b.T = (int)ids->shape[1];
    fc->b.ids = (int32_t *)(batch_f.data + ids->begin); /* the writer aligns every tensor to 8 bytes */
    fc->b.mask = (uint8_t *)(batch_f.data + mask->begin);
    fc->labels = fx_malloc((size_t)fc->b.n * sizeof(float));
    if (copy_in(&batch_f, labels, fc->labels, (size_t)fc->b.n) != 0) return -1;
    fc->b.labels = fc->labels;
    return 0;
}

static void close_case(fixture_case *fc) {
    fx_st_close(&fc->f);
    free(fc->labels);
}

/* A model of the case's shapes holding the fixture's base weights, adapters, head, VeRA projections and
 * residuals (the frozen weight fl(W0 + R), as FedEx forms it). */
static int build_model(fixture_case *fc, fx_model *m, int with_residual) {
    if (fx_model_create(m, &fc->c, &fc->a, NULL) != 0) { CHECK(0, "%s: %s", fc->name, fx_err()); return -1; }
    for (int i = 0; i < m->base.nt; i++)
        if (copy_in(&base_f, m->base.t[i].name, m->base.data + m->base.t[i].off, m->base.t[i].n) != 0) return -1;
    for (int i = 0; i < m->train.nt; i++)
        if (copy_in(&fc->f, m->train.t[i].name, m->train.data + m->train.t[i].off, m->train.t[i].n) != 0) return -1;
    if (fc->a.kind == FX_VERA) {
        if (copy_in(&fc->f, "vera_A", m->vera_A, (size_t)m->a.r * m->vera_in) != 0 ||
            copy_in(&fc->f, "vera_B", m->vera_B, (size_t)m->vera_out * m->a.r) != 0)
            return -1;
    }
    for (int k = 0; with_residual && k < m->nadapted; k++) {
        char name[160];
        snprintf(name, sizeof name, "residual.%s", m->ad[k].name);
        if (!fx_st_find(&fc->f, name)) continue;
        float *owned;
        const float *R = fixture(&fc->f, name, (size_t)m->ad[k].out * m->ad[k].in, &owned);
        if (!R) return -1;
        float *W = m->base.data + m->ad[k].w_off; /* the frozen weight fl(W0 + R), as every party forms it */
        fx_frozen_weight(W, W, R, (size_t)m->ad[k].out * m->ad[k].in);
        free(owned);
    }
    return 0;
}

/* The fixture's expected logits (n, L) and their count. */
static const float *expected_logits(fixture_case *fc, float **owned) {
    return fixture(&fc->f, "expect.logits", (size_t)fc->b.n * fc->c.num_labels, owned);
}

/* M's logits on the case's batch (no training) against the fixture's, checked as WHAT. */
static void check_logits(fixture_case *fc, fx_model *m, const char *what) {
    int n = fc->b.n, L = fc->c.num_labels;
    float *logits = fx_calloc((size_t)n * L, sizeof(float)), *ow;
    fx_model_step(m, &fc->b, 0, logits);
    const float *want = expected_logits(fc, &ow);
    if (want) CLOSE(what, logits, want, (size_t)n * L, T_LOGITS);
    free(ow);
    free(logits);
}

/* ============================================================================================
 * forward, backward, AdamW against the reference
 * ============================================================================================ */

static void test_case(const char *name) {
    fixture_case fc;
    fx_model m;
    if (open_case(&fc, name) != 0) return;
    if (build_model(&fc, &m, 1) != 0) { close_case(&fc); return; }
    int n = fc.b.n, L = fc.c.num_labels;
    float *logits = fx_calloc((size_t)n * L, sizeof(float)), *owned, *owned2;
    char what[200];

    /* Evaluation and training forward passes agree (dropout is 0 in the fixture's config) */
    float loss0 = fx_model_step(&m, &fc.b, 0, logits);
    const float *want = expected_logits(&fc, &owned);
    snprintf(what, sizeof what, "%s: logits (eval)", name);
    if (want) CLOSE(what, logits, want, (size_t)n * L, T_LOGITS);
    free(owned);
    memset(m.grad, 0xff, m.train.n * sizeof(float)); /* NaN: every gradient must be written */
    float loss = fx_model_step(&m, &fc.b, 1, logits);
    want = expected_logits(&fc, &owned);
    snprintf(what, sizeof what, "%s: logits (train)", name);
    if (want) CLOSE(what, logits, want, (size_t)n * L, T_LOGITS);
    free(owned);
    want = fixture(&fc.f, "expect.loss", 1, &owned);
    snprintf(what, sizeof what, "%s: loss", name);
    if (want) { CLOSE(what, &loss, want, 1, T_LOSS); CLOSE(what, &loss0, want, 1, T_LOSS); }
    free(owned);

    for (int i = 0; i < m.train.nt; i++) {
        const fx_tensor *t = &m.train.t[i];
        char gname[160];
        snprintf(gname, sizeof gname, "grad.%s", t->name);
        snprintf(what, sizeof what, "%s: %s", name, gname);
        if (t->frozen) { /* FFA: no gradient in the file; model.c writes zeros */
            CHECK(!fx_st_find(&fc.f, gname), "%s: a frozen tensor has a reference gradient", what);
            size_t nz = 0;
            for (size_t j = 0; j < t->n; j++) nz += m.grad[t->off + j] != 0;
            CHECK(nz == 0, "%s: %zu non-zero gradient elements on a frozen tensor", what, nz);
            continue;
        }
        want = fixture(&fc.f, gname, t->n, &owned);
        if (want) CLOSE_SCALED(what, m.grad + t->off, want, t->n, T_GRAD);
        free(owned);
    }

    /* 10 AdamW steps, lr 1e-2 with 2 warmup steps of a 10-step linear schedule, weight decay 0.01 */
    float *init = fx_malloc(m.train.n * sizeof(float)), losses[10], lrs[10];
    memcpy(init, m.train.data, m.train.n * sizeof(float));
    fx_adamw_reset(&m);
    for (int s = 0; s < 10; s++) {
        lrs[s] = fx_linear_schedule(s, 2, 10, 1e-2f);
        losses[s] = fx_model_step(&m, &fc.b, 1, NULL);
        fx_adamw_update(&m, lrs[s], 0.01f);
    }
    want = fixture(&fc.f, "expect.lrs", 10, &owned);
    snprintf(what, sizeof what, "%s: learning rates", name);
    if (want) CLOSE(what, lrs, want, 10, T_LR);
    free(owned);
    want = fixture(&fc.f, "expect.losses", 10, &owned2);
    snprintf(what, sizeof what, "%s: losses of 10 AdamW steps", name);
    if (want) CLOSE(what, losses, want, 10, T_LOSSES);
    free(owned2);
    for (int i = 0; i < m.train.nt; i++) {
        const fx_tensor *t = &m.train.t[i];
        char fname[160];
        snprintf(fname, sizeof fname, "final.%s", t->name);
        snprintf(what, sizeof what, "%s: %s", name, fname);
        if (t->frozen)
            CHECK(!memcmp(m.train.data + t->off, init + t->off, t->n * sizeof(float)),
                  "%s: a frozen tensor moved", what);
        want = fixture(&fc.f, fname, t->n, &owned);
        if (want) CLOSE_SCALED(what, m.train.data + t->off, want, t->n, T_FINAL);
        free(owned);
    }
    free(init);
    free(logits);
    fx_model_free(&m);
    close_case(&fc);
}

/* ============================================================================================
 * checkpoints
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

/* Save, then load into a model initialised otherwise: base and head come back bit for bit, and the
 * file carries HF's names, its "pt" format tag and a config.json that reads back the same. */
static void test_save_load(void) {
    fixture_case fc;
    fx_model m, m2;
    if (open_case(&fc, "lora_qv") != 0) return;
    if (build_model(&fc, &m, 0) != 0) { close_case(&fc); return; }
    const char *dir = tmp_path("ckpt");
    CHECK(fx_model_save(&m, dir, 0) == 0, "save: %s", fx_err());
    CHECK(fx_model_create(&m2, &fc.c, &fc.a, NULL) == 0, "%s", fx_err());
    fx_model_init_base(&m2, 99);
    int rc = fx_model_load(&m2, dir);
    CHECK(rc == 1, "load: returned %d (1 = base and head): %s", rc, fx_err());
    CHECK(!memcmp(m.base.data, m2.base.data, m.base.n * sizeof(float)), "base weights differ after a round trip");
    CHECK(!memcmp(m.train.data + m.head_off, m2.train.data + m2.head_off, m.head_n * sizeof(float)),
          "head differs after a round trip");

    char path[300];
    fx_st_file f;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (fx_st_open(path, &f) == 0) {
        const fx_st_tensor *t = fx_st_find(&f, "roberta.encoder.layer.1.intermediate.dense.weight");
        CHECK(t && t->dtype == FX_F32 && t->ndim == 2 && t->shape[0] == 32 && t->shape[1] == 16,
              "roberta.encoder.layer.1.intermediate.dense.weight (32, 16) F32 expected");
        CHECK(fx_st_find(&f, "classifier.out_proj.bias") != NULL, "classifier.out_proj.bias expected");
        CHECK(f.n == m.base.nt + 4, "%d tensors, expected %d", f.n, m.base.nt + 4);
        const char *fmt = fx_st_meta(&f, "format");
        CHECK(fmt && !strcmp(fmt, "pt"), "metadata format must be \"pt\" for transformers");
        fx_st_close(&f);
    } else CHECK(0, "%s", fx_err());
    fx_config c2;
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK(fx_config_load(path, &c2) == 0, "%s", fx_err());
    CHECK(!memcmp(&c2, &fc.c, sizeof c2), "config.json does not read back as the model's config");
    fx_model_free(&m2);
    fx_model_free(&m);
    close_case(&fc);
}

/* Merged checkpoints: a model with no adapter, loading W0 + dW, gives the adapted model's logits. */
static void test_merged(const char *name) {
    fixture_case fc;
    fx_model m, plain;
    if (open_case(&fc, name) != 0) return;
    if (build_model(&fc, &m, 1) != 0) { close_case(&fc); return; }
    const char *dir = tmp_path("merged");
    CHECK(fx_model_save(&m, dir, 1) == 0, "%s: save merged: %s", name, fx_err());
    fx_adapter_cfg none = {.kind = FX_LORA};
    CHECK(fx_model_create(&plain, &fc.c, &none, NULL) == 0, "%s", fx_err());
    CHECK(fx_model_load(&plain, dir) == 1, "%s: load merged: %s", name, fx_err());
    int n = fc.b.n, L = fc.c.num_labels;
    float *logits = fx_calloc((size_t)n * L, sizeof(float)), *owned;
    fx_model_step(&plain, &fc.b, 0, logits);
    const float *want = expected_logits(&fc, &owned);
    char what[160];
    snprintf(what, sizeof what, "%s: logits of the merged checkpoint", name);
    if (want) CLOSE(what, logits, want, (size_t)n * L, T_MERGE);
    free(owned);
    free(logits);
    fx_model_free(&plain);
    fx_model_free(&m);
    close_case(&fc);
}

/* Half-precision checkpoints written by the script: F16 with "roberta." names, a classifier and a pooler
 * to ignore; BF16 without the prefix, masked-LM style (lm_head.*, no classifier: the head stays). */
static void test_half(void) {
    fixture_case fc;
    fx_model m;
    if (open_case(&fc, "lora_qv") != 0) return;
    fx_adapter_cfg none = {.kind = FX_LORA};
    for (int bf = 0; bf < 2; bf++) {
        if (fx_model_create(&m, &fc.c, &none, NULL) != 0) { CHECK(0, "%s", fx_err()); break; }
        fx_model_init_base(&m, 5);
        float *head0 = fx_malloc(m.head_n * sizeof(float));
        memcpy(head0, m.train.data + m.head_off, m.head_n * sizeof(float));
        int rc = fx_model_load_init(&m, bf ? FIX "model_bf16" : FIX "model_f16", 5); /* the head as seed 5 drew it */
        CHECK(rc == (bf ? 0 : 1), "%s: load returned %d: %s", bf ? "BF16" : "F16", rc, fx_err());
        char what[200];
        for (int i = 0; i < m.base.nt; i++) {
            const fx_tensor *t = &m.base.t[i];
            float *owned;
            const float *want = fixture(&base_f, t->name, t->n, &owned);
            snprintf(what, sizeof what, "%s: %s", bf ? "BF16" : "F16", t->name);
            if (want) CLOSE(what, m.base.data + t->off, want, t->n, bf ? T_BF16 : T_F16);
            free(owned);
        }
        if (bf) CHECK(!memcmp(head0, m.train.data + m.head_off, m.head_n * sizeof(float)),
                      "BF16: a checkpoint without classifier changed the head");
        else
            for (int i = 0; i < m.train.nt; i++) {
                const fx_tensor *t = &m.train.t[i];
                float *owned;
                const float *want = fixture(&fc.f, t->name, t->n, &owned);
                snprintf(what, sizeof what, "F16: %s", t->name);
                if (want) CLOSE(what, m.train.data + t->off, want, t->n, T_F16);
                free(owned);
            }
        free(head0);
        fx_model_free(&m);
    }
    close_case(&fc);
}

/* fx_err() contains NEEDLE. */
static int err_has(const char *needle) { return strstr(fx_err(), needle) != NULL; }

static void test_load_refusals(void) {
    fixture_case fc;
    fx_model m, small;
    if (open_case(&fc, "lora_qv") != 0) return;
    fx_adapter_cfg none = {.kind = FX_LORA};
    if (fx_model_create(&m, &fc.c, &none, NULL) != 0) { CHECK(0, "%s", fx_err()); close_case(&fc); return; }
    fx_model_init_base(&m, 1);

    CHECK(fx_model_load(&m, tmp_path("nowhere")) == -1 && err_has("nowhere/model.safetensors"),
          "missing checkpoint: %s", fx_err());
    /* a vocabulary of 49 rows where config.json says 50 */
    fx_config c49 = fc.c;
    c49.vocab_size = 49;
    const char *dir = tmp_path("vocab49");
    if (fx_model_create(&small, &c49, &none, NULL) == 0) {
        fx_model_init_base(&small, 1);
        CHECK(fx_model_save(&small, dir, 0) == 0, "%s", fx_err());
        fx_model_free(&small);
        CHECK(fx_model_load(&m, dir) == -1, "a checkpoint of the wrong shape was accepted");
        CHECK(err_has("tensor 'roberta.embeddings.word_embeddings.weight' has shape [49, 16], config.json says "
                      "[50, 16]"), "shape message: %s", fx_err());
    }
    /* one tensor only; an integer tensor; a non-finite weight */
    char path[300];
    snprintf(path, sizeof path, "%s/model.safetensors", tmp_path("bad"));
    fx_mkdir_p(tmp_path("bad"));
    float w[50 * 16];
    int64_t iw[16];
    for (int i = 0; i < 50 * 16; i++) w[i] = 0.5f;
    for (int i = 0; i < 16; i++) iw[i] = 1;
    fx_st_entry e = {.name = "roberta.embeddings.word_embeddings.weight", .dtype = FX_F32, .ndim = 2,
                     .shape = {50, 16}, .data = w};
    CHECK(fx_st_write(path, &e, 1, NULL) == 0, "%s", fx_err());
    CHECK(fx_model_load(&m, tmp_path("bad")) == -1 && err_has("no tensor 'roberta.embeddings.position_embeddings"),
          "missing tensor: %s", fx_err());
    w[7] = NAN; /* the first tensor the loader reads */
    CHECK(fx_st_write(path, &e, 1, NULL) == 0, "%s", fx_err());
    CHECK(fx_model_load(&m, tmp_path("bad")) == -1 && err_has("non-finite"), "NaN weight: %s", fx_err());
    fx_st_entry ei0 = {.name = "embeddings.word_embeddings.weight", .dtype = FX_I64, .ndim = 1, .shape = {16},
                       .data = iw};
    CHECK(fx_st_write(path, &ei0, 1, NULL) == 0, "%s", fx_err());
    CHECK(fx_model_load(&m, tmp_path("bad")) == -1 && err_has("is I64; expected F32, F16 or BF16"),
          "integer tensor: %s", fx_err());
    fx_model_free(&m);
    close_case(&fc);
}

/* ============================================================================================
 * PEFT adapters
 * ============================================================================================ */

static void test_adapter_case(const char *name) {
    fixture_case fc;
    fx_model m, m2;
    if (open_case(&fc, name) != 0) return;
    if (build_model(&fc, &m, 0) != 0) { close_case(&fc); return; }
    const char *dir = tmp_path(name);
    CHECK(fx_adapter_save(&m, dir, NULL) == 0, "%s: %s", name, fx_err());

    /* PEFT's key names and shapes */
    char path[300];
    fx_st_file f;
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (fx_st_open(path, &f) == 0) {
        const fx_adapted *ad = &m.ad[m.nadapted - 1];
        char key[256];
        int vera = fc.a.kind == FX_VERA;
        snprintf(key, sizeof key, "base_model.model.roberta.%s.%s", ad->name, vera ? "vera_lambda_b" : "lora_B.weight");
        const fx_st_tensor *t = fx_st_find(&f, key);
        CHECK(t && t->shape[0] == ad->out && t->ndim == (vera ? 1 : 2) && (vera || t->shape[1] == fc.a.r),
              "%s: %s with shape (%d%s) expected", name, key, ad->out, vera ? "" : ", r");
        snprintf(key, sizeof key, "base_model.model.roberta.%s.%s", ad->name, vera ? "vera_lambda_d" : "lora_A.weight");
        t = fx_st_find(&f, key);
        CHECK(t && t->shape[0] == fc.a.r && (vera || t->shape[1] == ad->in), "%s: %s expected", name, key);
        CHECK(fx_st_find(&f, "base_model.model.classifier.dense.weight") &&
              fx_st_find(&f, "base_model.model.classifier.out_proj.bias"), "%s: the head as PEFT saves it", name);
        if (vera) {
            t = fx_st_find(&f, "base_model.vera_A");
            CHECK(t && t->shape[0] == fc.a.r && t->shape[1] == m.vera_in, "%s: base_model.vera_A (r, in_max)", name);
            t = fx_st_find(&f, "base_model.vera_B");
            CHECK(t && t->shape[0] == m.vera_out && t->shape[1] == fc.a.r, "%s: base_model.vera_B (out_max, r)", name);
        }
        CHECK(f.n == 2 * m.nadapted + 4 + 2 * vera, "%s: %d tensors in the adapter file", name, f.n);
        fx_st_close(&f);
    } else CHECK(0, "%s", fx_err());

    /* adapter_config.json reads back as the model's adapter */
    fx_adapter_cfg a;
    CHECK(fx_adapter_config_load(dir, &a) == 0, "%s: %s", name, fx_err());
    CHECK(a.kind == fc.a.kind && a.r == fc.a.r && a.targets == fc.a.targets &&
          (a.kind == FX_VERA || (a.alpha == fc.a.alpha && a.rslora == fc.a.rslora)),
          "%s: adapter_config.json: kind %d r %d targets 0x%x alpha %g rslora %d", name, (int)a.kind, a.r,
          a.targets, (double)a.alpha, a.rslora);
    char *text;
    size_t len;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    if (fx_read_file(path, &text, &len) == 0) {
        fx_json j;
        if (fx_json_parse(text, len, &j) == 0) {
            const fx_json *pt = fx_json_get(&j, "peft_type"), *tt = fx_json_get(&j, "task_type"),
                          *ms = fx_json_get(&j, "modules_to_save");
            CHECK(pt && pt->type == FX_JSTR && !strcmp(pt->str, fc.a.kind == FX_VERA ? "VERA" : "LORA"), "%s: peft_type", name);
            CHECK(tt && tt->type == FX_JSTR && !strcmp(tt->str, "SEQ_CLS"), "%s: task_type", name);
            CHECK(ms && ms->type == FX_JARR && ms->n == 1 && !strcmp(ms->kids[0].str, "classifier"),
                  "%s: modules_to_save [\"classifier\"]", name);
            fx_json_free(&j);
        } else CHECK(0, "%s: %s", path, fx_err());
        free(text);
    } else CHECK(0, "%s", fx_err());

    /* load into a fresh model: every trainable tensor and VeRA's projections come back bit for bit */
    CHECK(fx_model_create(&m2, &fc.c, &fc.a, NULL) == 0, "%s", fx_err());
    if (fc.a.kind == FX_VERA) { /* other projections than the saved ones: the file must replace them */
        for (size_t i = 0; i < (size_t)m2.a.r * m2.vera_in; i++) m2.vera_A[i] = 0;
    }
    CHECK(fx_adapter_load(&m2, dir) == 0, "%s: load: %s", name, fx_err());
    CHECK(!memcmp(m.train.data, m2.train.data, m.train.n * sizeof(float)), "%s: trainable tensors differ", name);
    if (fc.a.kind == FX_VERA)
        CHECK(!memcmp(m.vera_A, m2.vera_A, (size_t)m.a.r * m.vera_in * sizeof(float)) &&
              !memcmp(m.vera_B, m2.vera_B, (size_t)m.vera_out * m.a.r * sizeof(float)), "%s: projections differ", name);
    /* the .safetensors path works as well as the folder */
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    CHECK(fx_adapter_load(&m2, path) == 0, "%s: load by file: %s", name, fx_err());
    fx_model_free(&m2);

    /* refusals: another rank; other targets; a LoRA scale that disagrees; nothing changes on refusal */
    fx_adapter_cfg other = fc.a;
    other.r = fc.a.r + 1;
    CHECK(fx_model_create(&m2, &fc.c, &other, NULL) == 0, "%s", fx_err());
    CHECK(fx_adapter_load(&m2, dir) == -1 && err_has("r is"), "%s: wrong rank: %s", name, fx_err());
    fx_model_free(&m2);
    other = fc.a;
    other.targets = FX_T_QUERY;
    CHECK(fx_model_create(&m2, &fc.c, &other, NULL) == 0, "%s", fx_err());
    float *before = fx_malloc(m2.train.n * sizeof(float));
    memcpy(before, m2.train.data, m2.train.n * sizeof(float));
    CHECK(fx_adapter_load(&m2, dir) == -1 && err_has("target_modules"), "%s: other targets: %s", name, fx_err());
    /* without adapter_config.json beside it, the tensors themselves give the mismatch away */
    char lone[300];
    snprintf(lone, sizeof lone, "%s/lone_%s.safetensors", tmp_root, name);
    char *data;
    if (fx_read_file(path, &data, &len) == 0) {
        CHECK(fx_write_file_atomic(lone, data, len) == 0, "%s", fx_err());
        free(data);
        /* (VeRA's projections shrink with the targets, so their shape is what gives it away there) */
        CHECK(fx_adapter_load(&m2, lone) == -1 && (err_has("is not part of the model's adapter") ||
                                                   (fc.a.kind == FX_VERA && err_has("has shape"))),
              "%s: lone file, other targets: %s", name, fx_err());
    }
    CHECK(!memcmp(before, m2.train.data, m2.train.n * sizeof(float)), "%s: a refused load changed the model", name);
    free(before);
    fx_model_free(&m2);
    if (fc.a.kind == FX_LORA) {
        other = fc.a;
        other.alpha = fc.a.alpha * 2;
        CHECK(fx_model_create(&m2, &fc.c, &other, NULL) == 0, "%s", fx_err());
        CHECK(fx_adapter_load(&m2, dir) == -1 && err_has("lora_alpha"), "%s: other alpha: %s", name, fx_err());
        fx_model_free(&m2);
    }
    fx_model_free(&m);
    close_case(&fc);
}

/* The layer's output.dense without attention.output.dense cannot be a PEFT list ("output.dense" is a
 * suffix of both): it goes out as a regular expression and must come back as the same set. */
static void test_adapter_targets(void) {
    fixture_case fc;
    fx_model m;
    if (open_case(&fc, "lora_qv") != 0) return;
    for (int both = 0; both < 2; both++) {
        fx_adapter_cfg a = fc.a;
        a.targets = FX_T_QUERY | FX_T_OUTPUT | (both ? FX_T_ATTN_OUT : 0);
        if (fx_model_create(&m, &fc.c, &a, NULL) != 0) { CHECK(0, "%s", fx_err()); break; }
        fx_model_init_base(&m, 3);
        fx_model_init_adapters(&m, 4);
        const char *dir = tmp_path(both ? "targets_list" : "targets_regex");
        CHECK(fx_adapter_save(&m, dir, NULL) == 0, "%s", fx_err());
        fx_adapter_cfg back;
        CHECK(fx_adapter_config_load(dir, &back) == 0 && back.targets == a.targets,
              "targets 0x%x came back as 0x%x: %s", a.targets, back.targets, fx_err());
        CHECK(fx_adapter_load(&m, dir) == 0, "%s", fx_err());
        fx_model_free(&m);
    }
    close_case(&fc);
}

/* base_model_name_or_path: a local folder is written absolute (valid from any directory), a hub name as given. */
static void test_base_model_path(void) {
    fixture_case fc;
    fx_model m;
    if (open_case(&fc, "lora_qv") != 0) return;
    if (fx_model_create(&m, &fc.c, &fc.a, NULL) != 0) { CHECK(0, "%s", fx_err()); close_case(&fc); return; }
    const char *dir = tmp_path("base_path");
    char want[PATH_MAX], path[300];
    CHECK(realpath("tests/fixtures", want) != NULL, "realpath tests/fixtures");
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    const char *given[2] = {"tests/fixtures", "FacebookAI/roberta-base"}, *expect[2] = {want, given[1]};
    for (int i = 0; i < 2; i++) {
        CHECK(fx_adapter_save(&m, dir, given[i]) == 0, "%s", fx_err());
        fx_json j;
        if (fx_json_load(path, &j) == 0) {
            const fx_json *b = fx_json_get(&j, "base_model_name_or_path");
            CHECK(b && b->type == FX_JSTR && !strcmp(b->str, expect[i]), "base_model_name_or_path for %s: %s, want %s",
                  given[i], b && b->type == FX_JSTR ? b->str : "(none)", expect[i]);
            fx_json_free(&j);
        } else CHECK(0, "%s", fx_err());
    }
    fx_model_free(&m);
    close_case(&fc);
}

/* adapter_config.json at DIR with the given r, lora_alpha, target_modules (JSON text) and pattern objects. */
static void write_adapter_cfg(const char *dir, int r, double alpha, const char *targets, const char *rank_pattern,
                              const char *alpha_pattern) {
    char path[300], text[2048];
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    int n = snprintf(text, sizeof text,
                     "{\"peft_type\": \"LORA\", \"task_type\": \"SEQ_CLS\", \"r\": %d, \"lora_alpha\": %.9g,\n"
                     " \"target_modules\": %s, \"modules_to_save\": [\"classifier\"], \"bias\": \"none\",\n"
                     " \"rank_pattern\": %s, \"alpha_pattern\": %s}\n", r, alpha, targets, rank_pattern,
                     alpha_pattern);
    CHECK(fx_write_file_atomic(path, text, (size_t)n) == 0, "%s", fx_err());
}

/* PEFT's alpha_pattern and rank_pattern: the first key whose (.*\.)?(KEY)$ matches a module's name gives
 * its alpha or r. One value for every adapted module is honoured (checked against the fixture's logits,
 * which PyTorch computed with that alpha); different values are refused by name, never ignored. */
static void test_adapter_patterns(void) {
    const char *dir = tmp_path("patterns");
    fixture_case fc;
    fx_model m, m2;
    if (open_case(&fc, "lora_qv") != 0) return;
    int r = fc.a.r, built = build_model(&fc, &m, 0) == 0;
    double A = fc.a.alpha;
    if (!built) { close_case(&fc); return; }
    CHECK(fx_adapter_save(&m, dir, NULL) == 0, "%s", fx_err());
    char pat[256];
    const char *qv = "[\"query\", \"value\"]";

    /* lora_alpha says 3A, the pattern gives every adapted module A: the model is the fixture's */
    snprintf(pat, sizeof pat, "{\"self\\\\.(query|value)\": %.9g}", A);
    write_adapter_cfg(dir, r, 3 * A, qv, "{}", pat);
    fx_adapter_cfg a;
    CHECK(fx_adapter_config_load(dir, &a) == 0 && a.alpha == fc.a.alpha, "uniform alpha_pattern: alpha %g, "
          "want %g: %s", (double)a.alpha, A, fx_err());
    if (fx_model_create(&m2, &fc.c, &a, NULL) == 0) {
        memcpy(m2.base.data, m.base.data, m.base.n * sizeof(float));
        CHECK(fx_adapter_load(&m2, dir) == 0, "uniform alpha_pattern: %s", fx_err());
        check_logits(&fc, &m2, "alpha_pattern: logits");
        fx_model_free(&m2);
    } else CHECK(0, "%s", fx_err());

    /* a pattern for query alone leaves value at lora_alpha: two scales, refused by name */
    snprintf(pat, sizeof pat, "{\"query\": %.9g}", 2 * A);
    write_adapter_cfg(dir, r, A, qv, "{}", pat);
    CHECK(fx_adapter_config_load(dir, &a) == -1 && err_has("alpha_pattern is not supported") &&
          err_has("attention.self.value"), "two alphas: %s", fx_err());
    /* a key that picks one layer: accepted for layer 0 alone, refused for the model's layers */
    if (fc.c.layers >= 2) {
        snprintf(pat, sizeof pat, "{\"layer.1.attention.self.query\": %.9g}", 2 * A);
        write_adapter_cfg(dir, r, A, qv, "{}", pat);
        CHECK(fx_adapter_config_load(dir, &a) == 0, "alpha_pattern for layer 1: %s", fx_err());
        CHECK(fx_model_create(&m2, &fc.c, &a, NULL) == 0, "%s", fx_err());
        CHECK(fx_adapter_load(&m2, dir) == -1 && err_has("alpha_pattern is not supported") &&
              err_has("layer.1.attention.self.query"), "one layer's alpha: %s", fx_err());
        fx_model_free(&m2);
    }
    /* rank_pattern: one rank for every module replaces r (the scale is lora_alpha over that rank), so the
     * file's r + 2 with a pattern of r is the fixture's adapter; two ranks are refused by name */
    snprintf(pat, sizeof pat, "{\"query\": %d, \"value\": %d}", r, r);
    write_adapter_cfg(dir, r + 2, A, qv, pat, "{}");
    CHECK(fx_adapter_config_load(dir, &a) == 0 && a.r == r, "uniform rank_pattern: r %d: %s", a.r, fx_err());
    if (fx_model_create(&m2, &fc.c, &a, NULL) == 0) {
        CHECK(fx_adapter_load(&m2, dir) == 0 && m2.scale == m.scale, "uniform rank_pattern: scale %g, want %g: %s",
              (double)m2.scale, (double)m.scale, fx_err());
        fx_model_free(&m2);
    } else CHECK(0, "%s", fx_err());
    snprintf(pat, sizeof pat, "{\"value\": %d}", r + 1);
    write_adapter_cfg(dir, r, A, qv, pat, "{}");
    CHECK(fx_adapter_config_load(dir, &a) == -1 && err_has("rank_pattern is not supported"), "two ranks: %s",
          fx_err());
    write_adapter_cfg(dir, r, A, qv, "{\"(?=query)\": 2}", "{}");
    CHECK(fx_adapter_config_load(dir, &a) == -1 && err_has("rank_pattern") && err_has("does not read"),
          "lookahead key: %s", fx_err());
    /* empty patterns and null stay accepted */
    write_adapter_cfg(dir, r, A, qv, "null", "{}");
    CHECK(fx_adapter_config_load(dir, &a) == 0 && a.r == r && a.alpha == fc.a.alpha, "empty patterns: %s",
          fx_err());
    fx_model_free(&m);
    close_case(&fc);
}

/* target_modules as PEFT reads it: list entries select a module they equal or end after a dot; a string
 * must match the whole module name (re.fullmatch). */
static void test_target_forms(void) {
    fixture_case fc;
    if (open_case(&fc, "lora_qv") != 0) return;
    const char *dir = tmp_path("target_forms");
    CHECK(fx_mkdir_p(dir) == 0, "%s", fx_err());
    const unsigned QV = FX_T_QUERY | FX_T_VALUE;
    const struct { const char *json; unsigned mask; const char *err; } cases[] = {
        {"[\"query\", \"value\"]", QV, NULL},
        {"[\"self.query\", \"attention.self.value\"]", QV, NULL},
        {"[\"attention.output.dense\"]", FX_T_ATTN_OUT, NULL},
        {"[\"output.dense\"]", FX_T_ATTN_OUT | FX_T_OUTPUT, NULL},
        {"[\"intermediate.dense\", \"key\"]", FX_T_INTER | FX_T_KEY, NULL},
        {"\".*\\\\.(query|value)\"", QV, NULL},
        {"\".*(query|value)\"", QV, NULL},
        {"\"roberta\\\\.encoder\\\\.layer\\\\.\\\\d+\\\\.(attention\\\\.self\\\\.query|output\\\\.dense)\"",
         FX_T_QUERY | FX_T_OUTPUT, NULL},
        {"\".*encoder.*dense\"", FX_T_ATTN_OUT | FX_T_INTER | FX_T_OUTPUT, NULL},
        {"\".*\\\\.(?:query|key)\"", FX_T_QUERY | FX_T_KEY, NULL},
        {"\".*[.]value\"", FX_T_VALUE, NULL},
        /* "dense" also names the classifier's dense, which PEFT would adapt too */
        {"[\"dense\"]", 0, "classifier.dense"},
        {"[\"output\"]", 0, "attention.output\""},
        {"\"(query|value)\"", 0, "selects none"},
        {"\".*(?<=self\\\\.)query\"", 0, "does not read"},
        {"\".*\\\\bquery\"", 0, "does not read"},
        {"[\"nothing\"]", 0, "selects none"},
        {"[]", 0, "non-empty"},
        {"[\"query\", 3]", 0, "not a string"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_adapter_cfg(dir, fc.a.r, fc.a.alpha, cases[i].json, "{}", "{}");
        fx_adapter_cfg a;
        int rc = fx_adapter_config_load(dir, &a);
        if (!cases[i].err)
            CHECK(rc == 0 && a.targets == cases[i].mask, "target_modules %s: mask 0x%x, want 0x%x: %s",
                  cases[i].json, rc ? 0 : a.targets, cases[i].mask, rc ? fx_err() : "");
        else
            CHECK(rc == -1 && err_has(cases[i].err), "target_modules %s: want a refusal with \"%s\": %s",
                  cases[i].json, cases[i].err, rc ? fx_err() : "accepted");
    }
    /* an expression that selects a module in some layers only: fedex adapts every layer */
    if (fc.c.layers >= 2) {
        write_adapter_cfg(dir, fc.a.r, fc.a.alpha, "\".*layer\\\\.[02-9]\\\\..*query\"", "{}", "{}");
        fx_adapter_cfg a;
        CHECK(fx_adapter_config_load(dir, &a) == 0 && a.targets == FX_T_QUERY, "layer 0's query: %s", fx_err());
        fx_model m;
        if (fx_model_create(&m, &fc.c, &a, NULL) == 0) {
            fx_model_init_adapters(&m, 1);
            const char *d2 = tmp_path("target_forms_layers");
            CHECK(fx_adapter_save(&m, d2, NULL) == 0, "%s", fx_err());
            write_adapter_cfg(d2, fc.a.r, fc.a.alpha, "\".*layer\\\\.[02-9]\\\\..*query\"", "{}", "{}");
            CHECK(fx_adapter_load(&m, d2) == -1 && err_has("of the") && err_has("layers"), "some layers: %s",
                  fx_err());
            fx_model_free(&m);
        }
    }
    close_case(&fc);
}

/* A residual kept in its own file: loading it onto the plain fixture model gives the residual case. */
static void test_residual_file(void) {
    fixture_case fc;
    fx_model m;
    if (open_case(&fc, "residual") != 0) return;
    if (build_model(&fc, &m, 0) != 0) { close_case(&fc); return; }
    fx_st_entry e[2];
    float *owned[2] = {NULL, NULL};
    char names[2][160];
    int ne = 0;
    for (int k = 0; k < m.nadapted && ne < 2; k++) {
        char rn[160];
        snprintf(rn, sizeof rn, "residual.%s", m.ad[k].name);
        if (!fx_st_find(&fc.f, rn)) continue;
        const float *R = fixture(&fc.f, rn, (size_t)m.ad[k].out * m.ad[k].in, &owned[ne]);
        if (!R) break;
        /* one name with HF's prefix, one without: both are accepted */
        snprintf(names[ne], sizeof names[ne], "%s%s.weight", ne ? "roberta." : "", m.ad[k].name);
        e[ne] = (fx_st_entry){.name = names[ne], .dtype = FX_F32, .ndim = 2,
                              .shape = {m.ad[k].out, m.ad[k].in}, .data = R};
        ne++;
    }
    CHECK(ne == 2, "the residual case should carry two residuals, found %d", ne);
    const char *path = tmp_path("residual.safetensors");
    CHECK(fx_st_write(path, e, ne, NULL) == 0, "%s", fx_err());
    CHECK(fx_residual_load(&m, path) == 0, "%s", fx_err());
    check_logits(&fc, &m, "residual file: logits");
    /* a residual of the wrong shape is refused */
    e[0].shape[1] = e[0].shape[1] / 2;
    CHECK(fx_st_write(path, e, 1, NULL) == 0, "%s", fx_err());
    CHECK(fx_residual_load(&m, path) == -1 && err_has("has shape"), "residual shape: %s", fx_err());
    free(owned[0]);
    free(owned[1]);
    fx_model_free(&m);
    close_case(&fc);
}

/* ============================================================================================
 * fedex init + fedex eval, end to end on real GLUE data
 * ============================================================================================ */

/* Runs a shell command; its exit status. */
static int run(const char *cmd) {
    int rc = system(cmd);
    return rc == -1 ? -1 : WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
}

static int file_has(const char *path, const char *needle) {
    char *text;
    size_t len;
    if (fx_read_file(path, &text, &len) != 0) return 0;
    int yes = strstr(text, needle) != NULL;
    free(text);
    return yes;
}

static void test_cli(void) {
    const char *fedex = getenv("FEDEX");
    if (!fedex || access(fedex, X_OK) != 0) {
        printf("skipped: fedex init/eval end to end (set FEDEX to the binary, as `make test` does)\n");
        return;
    }
    const char *shared = shared_dir("fedex init/eval on GLUE RTE with roberta-base's tokenizer");
    if (!shared) return;
    char cmd[2048], src[1024];
    /* A tiny RoBERTa with roberta-base's vocabulary, so the real tokenizer applies */
    const char *cfgdir = tmp_path("tiny");
    fx_mkdir_p(cfgdir);
    const char *cfg = "{\"model_type\": \"roberta\", \"vocab_size\": 50265, \"hidden_size\": 16, "
                      "\"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"intermediate_size\": 32, "
                      "\"max_position_embeddings\": 130, \"type_vocab_size\": 1, \"pad_token_id\": 1, "
                      "\"layer_norm_eps\": 1e-05, \"hidden_dropout_prob\": 0.1, "
                      "\"attention_probs_dropout_prob\": 0.1, \"initializer_range\": 0.02}\n";
    char cfgpath[300];
    snprintf(cfgpath, sizeof cfgpath, "%s/config.json", cfgdir);
    CHECK(fx_write_file_atomic(cfgpath, cfg, strlen(cfg)) == 0, "%s", fx_err());
    for (int k = 0; k < 2; k++) {
        const char *leaf = k ? "merges.txt" : "vocab.json";
        char dst[300];
        char cwd[256] = "";
        if (shared[0] != '/' && !getcwd(cwd, sizeof cwd)) cwd[0] = 0; /* links resolve from cfgdir */
        snprintf(src, sizeof src, "%s%s%s/models/roberta-base/%s", cwd, cwd[0] ? "/" : "", shared, leaf);
        snprintf(dst, sizeof dst, "%s/%s", cfgdir, leaf);
        CHECK(symlink(src, dst) == 0, "symlink %s", dst);
    }
    const char *model = tmp_path("tiny_model"), *out = tmp_path("out.txt"), *err = tmp_path("err.txt"),
               *logits = tmp_path("logits.safetensors");
    snprintf(cmd, sizeof cmd, "%s init --config %s --out %s --labels 2 --seed 11 >%s 2>%s", fedex, cfgpath, model,
             out, err);
    CHECK(run(cmd) == 0, "fedex init failed (see %s)", err);
    snprintf(cmd, sizeof cmd, "%s eval --model %s --task rte --data %s/data/glue --max-length 64 --batch-size 16 "
             "--logits %s --threads 2 >%s 2>%s", fedex, model, shared, logits, out, err);
    int rc = run(cmd);
    CHECK(rc == 0, "fedex eval exited %d", rc);
    CHECK(file_has(out, "RTE dev: n 277, loss ") && file_has(out, "accuracy "), "eval's line: see %s", out);

    /* The CLI's logits are the library's: the same model, adapter and first batch in process */
    fx_config c;
    char p[300];
    snprintf(p, sizeof p, "%s/config.json", model);
    fx_model m;
    fx_adapter_cfg a = {.kind = FX_LORA, .targets = FX_T_QUERY | FX_T_VALUE, .r = 2, .alpha = 4, .seed = 3};
    if (fx_config_load(p, &c) != 0 || fx_model_create(&m, &c, &a, NULL) != 0) { CHECK(0, "%s", fx_err()); return; }
    fx_model_init_base(&m, 0);
    CHECK(fx_model_load(&m, model) == 1, "%s", fx_err());
    fx_model_init_adapters(&m, 5);
    for (int k = 0; k < m.nadapted; k++) /* non-zero B, so the adapter matters */
        for (int j = 0; j < m.ad[k].out * a.r; j++) m.train.data[m.ad[k].b_off + j] = 0.05f * (float)((j % 7) - 3);
    const char *adir = tmp_path("tiny_adapter");
    CHECK(fx_adapter_save(&m, adir, NULL) == 0, "%s", fx_err());
    snprintf(cmd, sizeof cmd, "%s eval --model %s --adapter %s --task RTE --data %s/data/glue --max-length 64 "
             "--batch-size 16 --logits %s >%s 2>%s", fedex, model, adir, shared, logits, out, err);
    CHECK(run(cmd) == 0, "fedex eval --adapter failed (see %s)", err);
    fx_tokenizer *tok = fx_tok_load(model);
    fx_dataset d;
    fx_st_file lf;
    snprintf(p, sizeof p, "%s/data/glue", shared);
    if (tok && fx_dataset_build(fx_task_find("RTE"), p, "dev", tok, 64, &d) == 0) {
        if (fx_st_open(logits, &lf) == 0) {
            const fx_st_tensor *t = fx_st_find(&lf, "logits");
            CHECK(t && t->ndim == 2 && t->shape[0] == d.n && t->shape[1] == 2, "logits (%d, 2) expected", d.n);
            int rows[16];
            for (int i = 0; i < 16; i++) rows[i] = i;
            fx_batch b = {0};
            fx_batch_fill(&d, rows, 16, fx_tok_pad(tok), &b);
            float got[32], *owned;
            fx_model_step(&m, &b, 0, got);
            const float *cli = t ? fx_st_f32(&lf, t, &owned) : NULL;
            if (cli) {
                /* the same code on the same batch: equal bit for bit */
                CHECK(!memcmp(got, cli, sizeof got), "CLI logits of the first batch differ from the library's "
                      "(%g vs %g)", (double)got[0], (double)cli[0]);
                free(owned);
            }
            fx_batch_free(&b);
            fx_st_close(&lf);
        } else CHECK(0, "%s", fx_err());
        fx_dataset_free(&d);
    } else CHECK(0, "tokenizer or dataset: %s", fx_err());
    fx_tok_free(tok);
    fx_model_free(&m);

    /* bad input: one line "fedex: ...", exit 1 */
    snprintf(cmd, sizeof cmd, "%s eval --model %s --task STS-B --data %s/data/glue >%s 2>%s", fedex, model,
             shared, out, err);
    CHECK(run(cmd) == 1 && file_has(err, "fedex: eval: STS-B has 1 label (regression)"), "labels mismatch: see %s", err);
    snprintf(cmd, sizeof cmd, "%s eval --task RTE >%s 2>%s", fedex, out, err);
    CHECK(run(cmd) == 2 && file_has(err, "fedex eval: --model"), "missing --model (a usage error): see %s", err);
    snprintf(cmd, sizeof cmd, "%s init --config %s/none.json --out %s >%s 2>%s", fedex, cfgdir, model, out, err);
    CHECK(run(cmd) == 1 && file_has(err, "fedex: ") && file_has(err, "none.json"), "missing config: see %s", err);
    snprintf(cmd, sizeof cmd, "%s eval --help >%s 2>%s && %s init --help >>%s 2>>%s", fedex, out, err, fedex, out, err);
    CHECK(run(cmd) == 0 && file_has(out, "usage: fedex eval") && file_has(out, "usage: fedex init"), "--help");
}

/* ============================================================================================
 * main
 * ============================================================================================ */

int main(void) {
    if (fx_st_open(FIX "model_base.safetensors", &base_f) != 0 || fx_st_open(FIX "model_batch.safetensors", &batch_f) != 0) {
        CHECK(0, "fixtures (run from the repository root): %s", fx_err());
        return check_done();
    }
    snprintf(tmp_root, sizeof tmp_root, "/tmp/fedex_test_model.XXXXXX");
    if (!mkdtemp(tmp_root)) { CHECK(0, "mkdtemp failed"); return check_done(); }

    const char *cases[] = {"lora_qv", "lora_all", "ffa", "vera", "residual"};
    for (int i = 0; i < 5; i++) test_case(cases[i]);
    test_save_load();
    for (int i = 0; i < 5; i++) test_merged(cases[i]);
    test_half();
    test_load_refusals();
    for (int i = 0; i < 5; i++) test_adapter_case(cases[i]);
    test_adapter_targets();
    test_adapter_patterns();
    test_base_model_path();
    test_target_forms();
    test_residual_file();
    test_cli();

    if (check_failed == 0) nftw(tmp_root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    else printf("kept %s for inspection\n", tmp_root);
    fx_st_close(&base_f);
    fx_st_close(&batch_f);
    return check_done();
}
