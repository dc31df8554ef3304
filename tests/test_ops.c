/* tests/test_ops.c: the pieces model.c is assembled from, checked against what they stand for: the CPU
 * ops table is complete; the per-layer views point where the tensor table says; RoBERTa's family
 * descriptor holds what Hugging Face's RobertaModel does (names written out here from its state dict);
 * the target table maps each target to PEFT's module name and its dims; the text template. The model's
 * numbers are tests/test_model_core.c's and tests/test_model.c's. */
#include "../fedex.h"
#include "check.h"

#include <math.h>
#include <string.h>
#include <unistd.h>

/* ---------------------------------------------------------------- dropout draws */

/* fx_rng_keep (the dropout masks' draws) is fx_rng_uniform(r) >= p, draw for draw, for any p: the
 * usual rates, both ends, p just either side of a 2^-53 step, out of range and NaN; and it leaves the
 * stream where as many fx_rng_uniform calls would. */
static void check_rng_keep(void) {
    static const float P[] = {0.1f, 0.5f, 0.0f, 1.0f, 0.3f, 1e-8f, 0.99999994f, -0.5f, 2.0f, NAN};
    for (size_t i = 0; i < sizeof P / sizeof P[0]; i++) {
        fx_rng a, b;
        fx_rng_seed(&a, 42 + i);
        b = a;
        uint8_t keep[1000];
        fx_rng_keep(&a, keep, sizeof keep, P[i]);
        int same = 1;
        for (size_t j = 0; j < sizeof keep; j++) same &= keep[j] == (fx_rng_uniform(&b) >= P[i]);
        CHECK(same && fx_rng_u64(&a) == fx_rng_u64(&b), "fx_rng_keep(p = %g) differs from fx_rng_uniform >= p",
              (double)P[i]);
    }
}

/* fx_rng_keep_rows (several streams at once where the CPU has AVX-512) gives each row exactly what
 * fx_rng_keep gives from the same seed: row counts either side of the 8 streams a vector holds, lengths
 * either side of 8 draws, a row stride wider than the rows (the gap left untouched), the rates above. */
static void check_rng_keep_rows(void) {
    static const int ROWS[] = {1, 3, 8, 9, 17};
    static const size_t LEN[] = {0, 1, 7, 8, 13, 128, 771};
    static const float P[] = {0.1f, 0.5f, 0.0f, 1.0f, 1e-8f, 0.99999994f, NAN};
    enum { LD_PAD = 5, MAXR = 17, MAXN = 771 };
    static uint8_t got[MAXR * (MAXN + LD_PAD)], want[MAXN];
    int bad = 0, cases = 0;
    for (size_t r = 0; r < sizeof ROWS / sizeof ROWS[0]; r++)
        for (size_t l = 0; l < sizeof LEN / sizeof LEN[0]; l++)
            for (size_t q = 0; q < sizeof P / sizeof P[0]; q++) {
                int nr = ROWS[r];
                size_t n = LEN[l], ld = n + LD_PAD;
                uint64_t seeds[MAXR];
                for (int i = 0; i < nr; i++) seeds[i] = 0x9e3779b97f4a7c15ULL * (uint64_t)(i + 1) ^ (uint64_t)(r * 131 + l * 7 + q);
                memset(got, 0xAB, sizeof got);
                fx_rng_keep_rows(seeds, nr, got, ld, n, P[q]);
                cases++;
                for (int i = 0; i < nr && !bad; i++) {
                    fx_rng g;
                    fx_rng_seed(&g, seeds[i]);
                    fx_rng_keep(&g, want, n, P[q]);
                    if (memcmp(got + (size_t)i * ld, want, n) != 0) bad = 1;
                    for (size_t j = n; j < ld; j++) bad |= got[(size_t)i * ld + j] != 0xAB;
                    if (bad) CHECK(0, "fx_rng_keep_rows: %d rows of %zu, p %g: row %d differs from fx_rng_keep (or wrote past it)",
                                   nr, n, (double)P[q], i);
                }
            }
    if (!bad) CHECK(1, "fx_rng_keep_rows: %d cases", cases);
}

/* Every tensor of a tiny RoBERTa with all six targets adapted. */
static fx_config tiny(void) {
    fx_config c = {.vocab_size = 50, .hidden = 16, .layers = 3, .heads = 2, .intermediate = 32,
                   .max_positions = 40, .type_vocab_size = 1, .pad_id = 1, .num_labels = 3,
                   .layer_norm_eps = 1e-5f, .initializer_range = 0.02f};
    return c;
}

/* ---------------------------------------------------------------- the ops table */

static void check_ops_complete(void) {
    const fx_ops *o = &fx_cpu_ops;
    /* One entry per member; the size check below fails when a member is added without being listed. */
    const void *entry[] = {
        o->name, (void *)o->alloc, (void *)o->release, (void *)o->upload, (void *)o->download, (void *)o->zero,
        (void *)o->copy, (void *)o->axpy, (void *)o->copy_rows, (void *)o->matmul, (void *)o->column_dot,
        (void *)o->scale_cols, (void *)o->scale_cols_add, (void *)o->dropout_mask, (void *)o->dropout_mask_rows, (void *)o->dropout_apply,
        (void *)o->dropout_accumulate, (void *)o->embeddings_forward, (void *)o->linear_forward,
        (void *)o->linear_backward, (void *)o->linear_forward_bf16, (void *)o->linear_backward_bf16,
        (void *)o->embeddings_forward_bf16, (void *)o->residual_layernorm_forward, (void *)o->layernorm_forward,
        (void *)o->layernorm_backward, (void *)o->gelu_forward, (void *)o->gelu_backward, (void *)o->gelu_tanh_forward,
        (void *)o->gelu_tanh_backward, (void *)o->rmsnorm_forward, (void *)o->rmsnorm_backward, (void *)o->rope,
        (void *)o->swiglu_forward, (void *)o->swiglu_backward, (void *)o->add_rows, (void *)o->tanh_forward, (void *)o->tanh_backward,
        (void *)o->attention_keep, (void *)o->attention_forward, (void *)o->attention_backward, (void *)o->loss,
        (void *)o->lm_loss,
        (void *)o->sumsq, (void *)o->scale, (void *)o->attention_decode, (void *)o->adamw, (void *)o->fwht,
        (void *)o->permute_cols, (void *)o->gamma_apply, (void *)o->givens_build, (void *)o->givens_backward};
    int n = (int)(sizeof entry / sizeof entry[0]);
    CHECK(sizeof(fx_ops) == (size_t)n * sizeof(void *), "fx_ops has %zu bytes, the list here %d entries",
          sizeof(fx_ops), n);
    for (int i = 0; i < n; i++) CHECK(entry[i] != NULL, "fx_cpu_ops entry %d is NULL", i);
    CHECK(!strcmp(o->name, "cpu"), "name %s", o->name);

    /* GELU's kept erf: erf(x / sqrt 2) to libm's erff within 1 ulp (vmath's bound), and the backward
     * given it gives the bits it gives computing it anew (the same value, the same operations) */
    enum { NG = 3000 };
    const float ulp_rel = 0x1p-23f; /* one ulp of a float is at most 2^-23 of its magnitude */
    float gx[NG], gy[NG], ge[NG], d1[NG], d2[NG];
    fx_rng gr;
    fx_rng_seed(&gr, 91);
    for (int i = 0; i < NG; i++) { gx[i] = (float)(6.0 * fx_rng_normal(&gr)); d1[i] = d2[i] = (float)fx_rng_normal(&gr); }
    o->gelu_forward(gy, ge, gx, NG);
    int close = 1;
    for (int i = 0; i < NG; i++) close &= fabsf(ge[i] - erff(gx[i] * (float)M_SQRT1_2)) <= ulp_rel * fabsf(ge[i]);
    CHECK(close, "gelu_forward's kept erf is not erff(x / sqrt 2) to 1 ulp");
    o->gelu_backward(d1, gx, ge, NG);
    o->gelu_backward(d2, gx, NULL, NG);
    CHECK(memcmp(d1, d2, sizeof d1) == 0, "gelu_backward with the kept erf differs from computing it");

    /* dropout_mask_rows draws exactly dropout_mask's rows it names, in any order, repeated or not */
    enum { MR = 10, MC = 37 };
    uint8_t full[MR * MC], some[4 * MC];
    const int32_t pick[4] = {3, 0, 9, 3};
    o->dropout_mask(full, MR, MC, 0.3f, 77);
    o->dropout_mask_rows(some, pick, 4, MC, 0.3f, 77);
    int same = 1, kept = 0;
    for (int i = 0; i < 4; i++) same &= memcmp(some + i * MC, full + pick[i] * MC, MC) == 0;
    for (int i = 0; i < MR * MC; i++) kept += full[i];
    CHECK(same && kept > 0 && kept < MR * MC, "dropout_mask_rows differs from dropout_mask's rows (%d kept)", kept);

    /* The small ops against their definitions, exactly (each is one fp32 operation per element). */
    float y[6] = {1, 2, 3, 4, 5, 6}, x[6] = {0.5f, -1, 2, 0.25f, 3, -2}, s[3] = {2, -1, 0.5f}, out[6];
    o->scale_cols(out, s, x, 6, 3);
    int ok = 1;
    for (int i = 0; i < 6; i++) ok &= out[i] == s[i % 3] * x[i];
    CHECK(ok, "scale_cols");
    o->scale_cols_add(y, s, x, 6, 3);
    ok = 1;
    for (int i = 0; i < 6; i++) ok &= y[i] == (float)(i + 1) + s[i % 3] * x[i];
    CHECK(ok, "scale_cols_add");
    float a[6] = {1, 2, 3, 4, 5, 6};
    o->axpy(a, 0.5f, x, 6);
    ok = 1;
    for (int i = 0; i < 6; i++) ok &= a[i] == (float)(i + 1) + 0.5f * x[i];
    CHECK(ok, "axpy");
    float db[3];
    o->column_dot(db, x, NULL, 2, 3);
    CHECK(db[0] == x[0] + x[3] && db[1] == x[1] + x[4] && db[2] == x[2] + x[5], "column_dot");
    float rows[4];
    o->copy_rows(rows, 2, x, 3, 2, 2);
    CHECK(rows[0] == x[0] && rows[1] == x[1] && rows[2] == x[3] && rows[3] == x[4], "copy_rows");
    uint8_t keep[4] = {1, 0, 1, 1};
    float acc[4] = {1, 1, 1, 1}, d[4] = {2, 2, 2, 2};
    o->dropout_accumulate(acc, d, keep, 0.5f, 4);
    CHECK(acc[0] == 5 && acc[1] == 1 && acc[2] == 5 && acc[3] == 5, "dropout_accumulate: %g %g", acc[0], acc[1]);
    float t[2] = {0.5f, -2};
    o->tanh_forward(t, 2);
    CHECK(t[0] == tanhf(0.5f) && t[1] == tanhf(-2), "tanh_forward");
}

/* ---------------------------------------------------------------- views against the tables */

static const fx_tensor *base_named(const fx_model *m, const char *fmt, int l) {
    char name[160];
    snprintf(name, sizeof name, fmt, l);
    const fx_tensor *t = fx_params_find(&m->base, name);
    CHECK(t != NULL, "no base tensor %s", name);
    return t;
}

static void check_views(fx_adapter_kind kind) {
    fx_config c = tiny();
    fx_adapter_cfg a = {.kind = kind, .targets = FX_T_QUERY | FX_T_VALUE | FX_T_INTER | FX_T_OUTPUT, .r = 2,
                        .alpha = 4, .d_initial = 0.1f, .seed = 1};
    fx_model m;
    if (fx_model_create(&m, &c, &a, NULL) != 0) { CHECK(0, "create: %s", fx_err()); return; }
    CHECK(m.fam == &fx_roberta && m.ops == &fx_cpu_ops, "family and ops of a config without one");
    const fx_tensor *t;
    const char *emb[5] = {"embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                          "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight",
                          "embeddings.LayerNorm.bias"};
    size_t eo[5] = {m.emb.word, m.emb.pos, m.emb.type, m.emb.ln_w, m.emb.ln_b};
    for (int i = 0; i < 5; i++) CHECK((t = base_named(&m, emb[i], 0)) && t->off == eo[i], "view of %s", emb[i]);
    /* (out, in) of query, key, value, attention.output.dense, intermediate.dense, output.dense */
    const int dims[FX_NTARGETS][2] = {{16, 16}, {16, 16}, {16, 16}, {16, 16}, {32, 16}, {16, 32}};
    int k = 0;
    for (int l = 0; l < c.layers; l++) {
        const fx_layer_view *v = &m.layer[l];
        for (int j = 0; j < FX_NTARGETS; j++) {
            if (!fx_roberta.target_path[j]) continue; /* GPT-2's fused c_attn */
            char w[160], b[160];
            snprintf(w, sizeof w, "encoder.layer.%%d.%s.weight", fx_targets[j].path);
            snprintf(b, sizeof b, "encoder.layer.%%d.%s.bias", fx_targets[j].path);
            const fx_tensor *tw = base_named(&m, w, l), *tb = base_named(&m, b, l);
            if (!tw || !tb) continue;
            CHECK(tw->off == v->lin[j].w && tb->off == v->lin[j].b, "layer %d %s: view off %zu/%zu, table %zu/%zu", l,
                  fx_targets[j].path, v->lin[j].w, v->lin[j].b, tw->off, tb->off);
            CHECK(v->lin[j].out == dims[j][0] && v->lin[j].in == dims[j][1] && tw->shape[0] == dims[j][0] &&
                  tw->shape[1] == dims[j][1] && tb->n == (size_t)dims[j][0], "layer %d %s dims", l, fx_targets[j].path);
            int adapted = (a.targets & fx_targets[j].bit) != 0;
            CHECK(adapted ? v->lin[j].ad == k : v->lin[j].ad == -1, "layer %d %s: ad %d", l, fx_targets[j].path,
                  v->lin[j].ad);
            if (adapted && k < m.nadapted) {
                const fx_adapted *ad = &m.ad[k];
                char name[96];
                snprintf(name, sizeof name, "encoder.layer.%d.%s", l, fx_targets[j].path);
                CHECK(ad->w_off == tw->off && ad->layer == l && ad->target == (int)fx_targets[j].bit &&
                      !strcmp(ad->name, name) && ad->out == dims[j][0] && ad->in == dims[j][1],
                      "adapted %d: %s at %zu", k, ad->name, ad->w_off);
                snprintf(name, sizeof name, "encoder.layer.%d.%s.%s", l, fx_targets[j].path,
                         kind == FX_LORA ? "lora_A" : "vera_lambda_d");
                const fx_tensor *ta = fx_params_find(&m.train, name);
                CHECK(ta && ta->off == ad->a_off, "%s at %zu", name, ad->a_off);
                k++;
            }
        }
        const char *ln[4] = {"encoder.layer.%d.attention.output.LayerNorm.weight",
                             "encoder.layer.%d.attention.output.LayerNorm.bias",
                             "encoder.layer.%d.output.LayerNorm.weight", "encoder.layer.%d.output.LayerNorm.bias"};
        size_t lo[4] = {v->ln1_w, v->ln1_b, v->ln2_w, v->ln2_b};
        for (int i = 0; i < 4; i++) CHECK((t = base_named(&m, ln[i], l)) && t->off == lo[i], "layer %d %s", l, ln[i]);
    }
    CHECK(k == m.nadapted && k == 4 * c.layers, "%d adapted layers seen, model has %d", k, m.nadapted);
    const char *head[4] = {"classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
                           "classifier.out_proj.bias"};
    size_t ho[4] = {m.head.dense_w, m.head.dense_b, m.head.out_w, m.head.out_b};
    for (int i = 0; i < 4; i++) {
        t = fx_params_find(&m.train, head[i]);
        CHECK(t && t->off == ho[i] && t == &m.train.t[m.head.t + i], "head %s", head[i]);
    }
    CHECK(m.head.dense_w == m.head_off && m.head_off + m.head_n == m.train.n, "head range");
    CHECK(m.base.n == fx_base_numel(&c), "base %zu floats, fx_base_numel %zu", m.base.n, fx_base_numel(&c));
    fx_model_free(&m);
}

/* ---------------------------------------------------------------- the RoBERTa family */

/* transformers' RobertaModel state dict: embeddings, then per layer (RobertaLayer), in this order. */
static const char *const hf_embed[] = {"embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight",
                                       "embeddings.token_type_embeddings.weight", "embeddings.LayerNorm.weight",
                                       "embeddings.LayerNorm.bias"};
static const char *const hf_layer[] = {
    "attention.self.query.weight", "attention.self.query.bias", "attention.self.key.weight",
    "attention.self.key.bias", "attention.self.value.weight", "attention.self.value.bias",
    "attention.output.dense.weight", "attention.output.dense.bias", "attention.output.LayerNorm.weight",
    "attention.output.LayerNorm.bias", "intermediate.dense.weight", "intermediate.dense.bias",
    "output.dense.weight", "output.dense.bias", "output.LayerNorm.weight", "output.LayerNorm.bias"};

static void check_family(void) {
    const fx_family *f = &fx_roberta;
    CHECK(!strcmp(f->model_type, "roberta") && !strcmp(f->prefix, "roberta.") &&
          !strcmp(f->layer_fmt, "encoder.layer.%d.") && !strcmp(f->architecture, "RobertaForSequenceClassification"),
          "names");
    /* RobertaLayer: LayerNorm after each residual; separate q, k, v Linear (out, in); no causal mask;
     * hidden_act "gelu" is the erf form; RobertaClassificationHead; create_position_ids_from_input_ids. */
    CHECK(f->norm_place == FX_NORM_POST && f->norm == FX_NORM_LAYERNORM && !f->fused_qkv && !f->causal &&
          f->act == FX_ACT_GELU && f->head_kind == FX_HEAD_CLS_TANH && !f->tied_head &&
          f->positions == FX_POS_PAD_CUMSUM && f->position_ids == fx_batch_positions, "block shape");
    CHECK(f->text.bos == 1 && f->text.eos_a == 1 && f->text.eos_b_lead == 1 && f->text.eos_b == 1,
          "template <s> A </s></s> B </s>");
    CHECK(f->nembed == 5 && f->nlayer == 16 && f->nhead == 4, "%d / %d / %d tensors", f->nembed, f->nlayer, f->nhead);
    for (int i = 0; i < f->nembed && i < 5; i++) CHECK(!strcmp(f->embed[i].name, hf_embed[i]), "embed %d %s", i, f->embed[i].name);
    for (int i = 0; i < f->nlayer && i < 16; i++) {
        const fx_tensor_spec *s = &f->layer[i];
        CHECK(!strcmp(s->name, hf_layer[i]) && !s->conv1d, "layer tensor %d %s", i, s->name);
        int ln = strstr(s->name, "LayerNorm") != NULL, w = strstr(s->name, ".weight") != NULL;
        int init = ln && w ? FX_INIT_ONE : w ? FX_INIT_NORMAL : FX_INIT_ZERO;
        CHECK(s->init == init && (w && !ln) == (s->d1 != 0), "%s: init %d, d1 %d", s->name, s->init, s->d1);
    }
    CHECK(f->embed[0].init == FX_INIT_NORMAL_PAD && f->embed[1].init == FX_INIT_NORMAL_PAD &&
          f->embed[2].init == FX_INIT_NORMAL, "padding_idx rows of word and position embeddings");

    /* positions: padding_idx + cumsum over non-pad tokens, pad where padded */
    fx_config c = tiny();
    int32_t ids[8] = {0, 7, 8, 2, 0, 9, 2, 1}, pos[8];
    fx_batch b = {.n = 2, .T = 4, .ids = ids};
    f->position_ids(&c, &b, pos);
    const int32_t want[8] = {2, 3, 4, 5, 2, 3, 4, 1};
    CHECK(!memcmp(pos, want, sizeof want), "positions %d %d %d %d %d %d %d %d", pos[0], pos[1], pos[2], pos[3],
          pos[4], pos[5], pos[6], pos[7]);

    /* config.json written by the family reads back as the same configuration */
    char path[64];
    snprintf(path, sizeof path, "/tmp/fedex_ops_%ld.json", (long)getpid());
    c.hidden_dropout = c.attention_dropout = c.classifier_dropout = 0.1f;
    FILE *fp = fopen(path, "w");
    CHECK(fp != NULL, "open %s", path);
    if (fp) {
        f->config_write(fp, &c, NULL);
        fclose(fp);
        fx_config back;
        CHECK(fx_config_load(path, &back) == 0, "%s", fx_err());
        CHECK(back.hidden == c.hidden && back.layers == c.layers && back.heads == c.heads &&
              back.intermediate == c.intermediate && back.vocab_size == c.vocab_size &&
              back.max_positions == c.max_positions && back.num_labels == c.num_labels &&
              back.layer_norm_eps == c.layer_norm_eps && back.family == &fx_roberta, "config round trip");
        unlink(path);
    }

    /* a family whose block model.c does not run is refused by name of the feature */
    fx_family causal = fx_roberta;
    causal.causal = 1;
    c.family = &causal;
    fx_adapter_cfg a = {.kind = FX_LORA, .r = 1, .alpha = 1};
    fx_model m;
    CHECK(fx_model_create(&m, &c, &a, NULL) == -1 && strstr(fx_err(), "causal"), "causal family: %s", fx_err());
}

/* ---------------------------------------------------------------- the target table */

static void check_targets(void) {
    /* PEFT's target_modules names for RoBERTa (its TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
     * gives ["query", "value"]; the dense layers go by their paths) */
    const struct { unsigned bit; const char *peft, *path; char out, in; } want[FX_NTARGETS] = {
        {FX_T_QUERY, "query", "attention.self.query", 'H', 'H'},
        {FX_T_KEY, "key", "attention.self.key", 'H', 'H'},
        {FX_T_VALUE, "value", "attention.self.value", 'H', 'H'},
        {FX_T_ATTN_OUT, "attention.output.dense", "attention.output.dense", 'H', 'H'},
        {FX_T_INTER, "intermediate.dense", "intermediate.dense", 'I', 'H'},
        {FX_T_OUTPUT, "output.dense", "output.dense", 'H', 'I'},
        {FX_T_QKV, "c_attn", "attn.c_attn", '3', 'H'}, /* GPT-2's fused q, k, v */
        {FX_T_GATE, "gate_proj", "mlp.gate_proj", 'I', 'H'}}; /* Llama's SwiGLU gate */
    fx_config c = tiny();
    for (int t = 0; t < FX_NTARGETS; t++) {
        const fx_target *g = &fx_targets[t];
        CHECK(g->bit == 1u << t && g->bit == want[t].bit && !strcmp(g->peft, want[t].peft) &&
              !strcmp(g->path, want[t].path) && g->out == want[t].out && g->in == want[t].in,
              "target %d: %s / %s", t, g->peft, g->path);
        int out, in;
        fx_target_dims(&c, t, &out, &in);
        CHECK(out == (want[t].out == 'I' ? 32 : want[t].out == '3' ? 48 : 16) && in == (want[t].in == 'I' ? 32 : 16),
              "%s dims", g->path);
        /* its weight and bias are the family's tensors of the same path */
        const fx_family *fam = fx_roberta.target_path[t] ? &fx_roberta : fx_gpt2.target_path[t] ? &fx_gpt2 : &fx_llama;
        char w[160];
        snprintf(w, sizeof w, "%s.weight", g->path);
        int found = 0;
        for (int i = 0; i < fam->nlayer; i++)
            if (fam->layer[i].role == g->w_role)
                found = !strcmp(fam->layer[i].name, w) &&
                        (fam == &fx_llama || fam->layer[i + 1].role == g->b_role); /* Llama: no biases */
        CHECK(found, "%s: roles do not name %s", g->path, w);
        unsigned mask;
        CHECK(fx_targets_parse(g->name, &mask) == 0 && mask == g->bit, "parse %s", g->name);
        if (g->alias) CHECK(fx_targets_parse(g->alias, &mask) == 0 && mask == g->bit, "parse %s", g->alias);
    }
}

/* ---------------------------------------------------------------- the text template */

static void check_template(void) {
    const char *shared = shared_dir("text templates on roberta-base's tokenizer");
    if (!shared) return;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/models/roberta-base", shared);
    fx_tokenizer *t = fx_tok_load(dir);
    if (!t) { CHECK(0, "load %s: %s", dir, fx_err()); return; }
    int32_t *ids = NULL, out[32];
    int n = 0, cap = 0;
    int k = fx_tok_encode(t, "a b", "c", 32, out);
    CHECK(fx_tok_encode_tpl(t, &fx_roberta.text, "a b", "c", 32, &ids, &n, &cap) == 0 && n == k &&
          !memcmp(ids, out, (size_t)k * sizeof *ids), "RoBERTa's template is fx_tok_encode's");
    CHECK(k >= 6 && out[0] == 0 && out[k - 1] == 2 && out[k - 3] == 2 && out[k - 4] == 2, "<s> a b </s></s> c </s>");
    /* a BERT-like template: one separator between the texts */
    fx_text_template bert = {1, 1, 0, 1, 0};
    n = 0;
    CHECK(fx_tok_encode_tpl(t, &bert, "a b", "c", 32, &ids, &n, &cap) == 0 && n == k - 1 && ids[0] == 0 &&
          ids[n - 3] == 2 && ids[n - 3 - 1] != 2 && ids[n - 1] == 2, "<s> a b </s> c </s>: %d ids", n);
    n = 0;
    CHECK(fx_tok_encode_tpl(t, &bert, "a", "b", 2, &ids, &n, &cap) == -1 && strstr(fx_err(), "3 special"),
          "room for 3 specials: %s", fx_err());
    free(ids);
    fx_tok_free(t);
}

int main(void) {
    check_rng_keep();
    check_rng_keep_rows();
    check_ops_complete();
    check_views(FX_LORA);
    check_views(FX_VERA);
    check_family();
    check_targets();
    check_template();
    return check_done();
}
