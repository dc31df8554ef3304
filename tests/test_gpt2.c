/* tests/test_gpt2.c: GPT-2 (gpt2.c on model.c's decoder path) against a float64 PyTorch GPT2LMHeadModel
 * (golden values made by tests/make_gpt2_fixtures.py) on three tiny shapes read from F32, BF16 and F16
 * checkpoints in Hugging Face's layout: logits, the label-smoothed shifted loss, every adapter gradient,
 * AdamW steps with gradient clipping, and a greedy continuation through the KV-cache decoder. Then the
 * decoder against the full forward (steps, slots, reorder), the Conv1D orientation at every file edge
 * (merged checkpoints, residual files, PEFT adapters; the untransposed residual shown wrong), the config
 * files, and refusals. */
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
    [T_LOGITS] = {4e-5, 0, "of the largest |logit|: PyTorch's own fp32 lands 1.6e-5 of it from the float64 "
                           "reference on shape b (3 layers, large adapters; the script prints it), 9e-7 on a"},
    [T_LOSS]   = {2e-6, 2e-5, "a mean of log-softmax over the logits above"},
    [T_GRAD]   = {2e-5, 1e-4, "fp32 backward through ln_f, the tied head and every layer; atol scaled by "
                              "the tensor's max"},
    [T_NORM]   = {0, 5e-5, "the 2-norm of the fp32 gradient above, whose elements carry ~1e-5 relative error "
                           "on shape b"},
    [T_LOSSES] = {2e-5, 1e-4, "5 AdamW steps with clipping: the fp32 gradient error enters each update"},
    [T_FINAL]  = {1e-4, 1e-4, "params after 5 steps of lr 1e-2; m / sqrt(v) amplifies small-g noise, "
                              "atol scaled by the tensor's max"},
    [T_DECODE] = {1e-5, 1e-5, "the cache path and the full forward run the same fp32 ops on products of "
                              "other shapes (one query row against T): summation order only"},
    [T_MERGED] = {1e-5, 0, "of the largest |logit|: W0 + dW folded into the weight and rounded once, against "
                           "the adapter applied on the side: one rounding per weight, through 2 layers"},
};

#define LM_NAME "gpt2"
#include "lm_golden.h"

/* ============================================================================================
 * Conv1D at the file edges: checkpoints, residual files, adapters
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
static double max_diff(const float *a, const float *b, size_t n) {
    double d = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

/* s B A of adapted layer K as (out, in), into R. */
static void lora_delta(const fx_model *m, const float *train, int k, float *R) {
    const fx_adapted *ad = &m->ad[k];
    const float *A = train + ad->a_off, *B = train + ad->b_off;
    for (int o = 0; o < ad->out; o++)
        for (int i = 0; i < ad->in; i++) {
            double s = 0;
            for (int j = 0; j < m->a.r; j++) s += (double)B[o * m->a.r + j] * A[j * ad->in + i];
            R[(size_t)o * ad->in + i] = (float)(m->scale * s);
        }
}

static void test_orientation(void) {
    gcase g;
    fx_model m, plain;
    if (open_gcase(&g, "a") != 0) return;
    if (build(&g, &m, NULL) != 0) { fx_st_close(&g.f); return; }
    size_t nl = (size_t)g.b.n * g.b.T * g.c.vocab_size;
    float *want = logits_of(&m, &g.b);
    fx_adapter_cfg none = {.kind = FX_LORA, .r = 1, .alpha = 1};

    /* a merged checkpoint: W0 + s (B A)^T in Conv1D's (in, out), loaded as a plain model */
    const char *dir = tmp_path("merged");
    CHECK(fx_model_export(&m, dir, 1, NULL) == 0, "merged export: %s", fx_err());
    char path[300];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    fx_st_file f;
    if (fx_st_open(path, &f) == 0) {
        const fx_st_tensor *t = fx_st_find(&f, "transformer.h.1.mlp.c_fc.weight");
        CHECK(t && t->shape[0] == g.c.hidden && t->shape[1] == g.c.intermediate, "c_fc is not saved (in, out)");
        CHECK(!fx_st_find(&f, "lm_head.weight") && fx_st_find(&f, "transformer.wte.weight") &&
              fx_st_find(&f, "transformer.ln_f.bias"), "the saved names are not GPT2LMHeadModel's (tied head)");
        fx_st_close(&f);
    }
    fx_config c2;
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK(fx_config_load(path, &c2) == 0 && c2.family == &fx_gpt2 && c2.intermediate == g.c.intermediate &&
          c2.max_positions == g.c.max_positions && c2.pad_id == g.c.pad_id, "saved config.json: %s", fx_err());
    if (fx_model_create(&plain, &g.c, &none, NULL) == 0) {
        CHECK(fx_model_load_init(&plain, dir, 9) >= 0, "%s", fx_err());
        float *got = logits_of(&plain, &g.b);
        CLOSE_SCALED("merged checkpoint = base + adapter", got, want, nl, T_MERGED);
        free(got);
        fx_model_free(&plain);
    }

    /* the residual file as a run writes it: each layer's tensor in its weight's orientation, (in, out)
     * for Conv1D; added to W0 it gives the adapter's model. The untransposed tensor (of the square
     * attn.c_proj, whose shape cannot tell) does not; the untransposed c_attn is refused by shape. */
    for (int way = 0; way < 3; way++) {
        if (fx_model_create(&plain, &g.c, &none, NULL) != 0) break;
        fx_model_init_base(&plain, 9);
        fx_model_load(&plain, g.dir);
        fx_st_entry e[64];
        char names[64][128];
        float *bufs[64];
        int ne = 0;
        for (int k = 0; k < m.nadapted && ne < 64; k++) {
            const fx_adapted *ad = &m.ad[k];
            if (way > 0 && ad->target != (way == 1 ? FX_T_ATTN_OUT : FX_T_QKV)) continue;
            float *R = fx_malloc((size_t)ad->out * ad->in * sizeof(float));
            bufs[ne] = fx_malloc((size_t)ad->out * ad->in * sizeof(float));
            lora_delta(&m, m.train.data, k, R);
            if (way == 0) fx_transpose(bufs[ne], R, ad->out, ad->in);
            else memcpy(bufs[ne], R, (size_t)ad->out * ad->in * sizeof(float));
            free(R);
            snprintf(names[ne], sizeof names[ne], "transformer.%s.weight", ad->name);
            e[ne] = (fx_st_entry){.name = names[ne], .dtype = FX_F32, .ndim = 2,
                                  .shape = {way ? ad->out : ad->in, way ? ad->in : ad->out}, .data = bufs[ne]};
            ne++;
        }
        const char *rp = tmp_path("residual.safetensors");
        CHECK(fx_st_write(rp, e, ne, NULL) == 0, "%s", fx_err());
        int rc = fx_residual_load(&plain, rp);
        if (way == 0) {
            CHECK(rc == 0, "residual (in, out): %s", fx_err());
            float *got = logits_of(&plain, &g.b);
            CLOSE_SCALED("W0 + residual (Conv1D orientation) = the adapter's model", got, want, nl, T_MERGED);
            free(got);
        } else if (way == 1) {
            CHECK(rc == 0, "square residual: %s", fx_err());
            fx_model ref; /* the adapter on attn.c_proj alone */
            fx_adapter_cfg ap = g.a;
            ap.targets = FX_T_ATTN_OUT;
            if (build(&g, &ref, &ap) == 0) {
                float *w2 = logits_of(&ref, &g.b), *got = logits_of(&plain, &g.b);
                double d = max_diff(got, w2, nl);
                CHECK(d > 1e-2, "the untransposed attn.c_proj residual reproduces the adapter's model (max diff %g)", d);
                free(w2); free(got);
                fx_model_free(&ref);
            }
        } else {
            CHECK(rc != 0 && strstr(fx_err(), "Conv1D"), "an untransposed c_attn residual accepted: %s", fx_err());
        }
        for (int i = 0; i < ne; i++) free(bufs[i]);
        fx_model_free(&plain);
    }

    /* the PEFT adapter: fan_in_fan_out, PEFT's keys and target names, and a round trip */
    dir = tmp_path("adapter");
    CHECK(fx_adapter_save(&m, dir, NULL) == 0, "adapter save: %s", fx_err());
    char *text = NULL; size_t len;
    snprintf(path, sizeof path, "%s/adapter_config.json", dir);
    if (fx_read_file(path, &text, &len) == 0) {
        CHECK(strstr(text, "\"fan_in_fan_out\": true") && strstr(text, "\"task_type\": \"CAUSAL_LM\"") &&
              strstr(text, "\"target_modules\": [\"c_attn\", \"c_proj\"]") && strstr(text, "\"modules_to_save\": null"),
              "adapter_config.json:\n%s", text);
        free(text);
    }
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", dir);
    if (fx_st_open(path, &f) == 0) {
        const fx_st_tensor *A = fx_st_find(&f, "base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"),
                           *B = fx_st_find(&f, "base_model.model.transformer.h.1.mlp.c_proj.lora_B.weight");
        CHECK(A && A->shape[0] == g.a.r && A->shape[1] == g.c.hidden && B && B->shape[0] == g.c.hidden &&
              B->shape[1] == g.a.r && f.n == 2 * m.nadapted, "PEFT's keys: lora_A (r, in), lora_B (out, r), nothing else");
        fx_st_close(&f);
    }
    fx_adapter_cfg a2;
    CHECK(fx_adapter_config_load(dir, &a2) == 0 && a2.targets == g.a.targets && a2.r == g.a.r, "adapter config: %s", fx_err());
    fx_model m2;
    if (fx_model_create(&m2, &g.c, &a2, NULL) == 0) {
        fx_model_init_base(&m2, 9);
        fx_model_load(&m2, g.dir);
        CHECK(fx_adapter_load(&m2, dir) == 0, "adapter load: %s", fx_err());
        CHECK(!memcmp(m2.train.data, m.train.data, m.train.n * sizeof(float)), "adapter round trip differs");
        fx_model_free(&m2);
    }
    /* a GPT-2 adapter is refused by a RoBERTa model, and the other way round */
    fx_config rc_;
    fx_config_load(FIX "model_config.json", &rc_);
    fx_adapter_cfg rq = {.kind = FX_LORA, .targets = FX_T_ATTN_OUT, .r = g.a.r, .alpha = g.a.alpha};
    if (fx_model_create(&m2, &rc_, &rq, NULL) == 0) {
        CHECK(fx_adapter_load(&m2, dir) != 0 && strstr(fx_err(), "fan_in_fan_out"), "a GPT-2 adapter on RoBERTa: %s", fx_err());
        fx_model_free(&m2);
    }
    free(want);
    fx_model_free(&m);
    fx_st_close(&g.f);
}

/* ============================================================================================
 * configuration, targets, refusals
 * ============================================================================================ */

static void test_config(void) {
    fx_config c;
    CHECK(fx_config_load(FIX "gpt2_b/config.json", &c) == 0, "%s", fx_err());
    CHECK(c.family == &fx_gpt2 && c.vocab_size == 41 && c.hidden == 24 && c.layers == 3 && c.heads == 3 &&
          c.intermediate == 40 && c.max_positions == 16 && c.pad_id == 40 && c.num_labels == 41 &&
          fabsf(c.layer_norm_eps - 1e-5f) < 1e-12f, "gpt2_b config fields");
    const char *sh = shared_dir("GPT-2's real config.json");
    if (sh) {
        char path[256];
        snprintf(path, sizeof path, "%s/models/gpt2/config.json", sh);
        if (access(path, R_OK) != 0) printf("skipped: %s absent\n", path);
        else {
            CHECK(fx_config_load(path, &c) == 0 && c.vocab_size == 50257 && c.hidden == 768 && c.layers == 12 &&
                  c.heads == 12 && c.intermediate == 3072 && c.max_positions == 1024 && c.pad_id == 50256 &&
                  fabsf(c.hidden_dropout - 0.1f) < 1e-7f && fabsf(c.embed_dropout - 0.1f) < 1e-7f,
                  "gpt2 config.json: %s", fx_err());
            fx_adapter_cfg a = {.kind = FX_LORA, .targets = FX_T_QKV | FX_T_ATTN_OUT | FX_T_OUTPUT, .r = 4, .alpha = 32};
            CHECK(fx_base_numel(&c) == 124439808, "gpt2-small has %zu base floats, not 124439808", fx_base_numel(&c));
            fx_model m;
            if (fx_model_create(&m, &c, &a, NULL) == 0) {
                CHECK(m.train.n == 12 * (4 * (768 + 2304) + 2 * 4 * (768 + 768) + 4 * (3072 + 768)) - 12 * 4 * (768 + 768),
                      "gpt2-small LoRA r 4 on c_attn, c_proj: %zu trainable floats", m.train.n);
                fx_model_free(&m);
            }
        }
    }
    /* target names */
    unsigned mask;
    CHECK(fx_targets_parse("c_attn,c_proj", &mask) == 0 && mask == (FX_T_QKV | FX_T_ATTN_OUT | FX_T_OUTPUT), "c_attn,c_proj");
    CHECK(fx_targets_parse("attn.c_proj, c_fc", &mask) == 0 && mask == (FX_T_ATTN_OUT | FX_T_INTER), "attn.c_proj,c_fc");
    fx_config_load(FIX "gpt2_c/config.json", &c);
    fx_adapter_cfg q = {.kind = FX_LORA, .targets = FX_T_QUERY, .r = 2, .alpha = 2};
    fx_model m;
    CHECK(fx_model_create(&m, &c, &q, NULL) != 0 && strstr(fx_err(), "c_attn"), "query on GPT-2: %s", fx_err());
    fx_config rc_;
    fx_config_load(FIX "model_config.json", &rc_);
    q.targets = FX_T_QKV;
    CHECK(fx_model_create(&m, &rc_, &q, NULL) != 0 && strstr(fx_err(), "c_attn"), "c_attn on RoBERTa: %s", fx_err());
    /* unsupported variants of GPT2Config */
    const char *bad[] = {"\"activation_function\": \"relu\"", "\"scale_attn_weights\": false",
                         "\"tie_word_embeddings\": false", "\"scale_attn_by_inverse_layer_idx\": true"};
    for (int i = 0; i < 4; i++) {
        char text[512];
        snprintf(text, sizeof text, "{\"model_type\": \"gpt2\", \"vocab_size\": 20, \"n_embd\": 8, \"n_layer\": 1, "
                 "\"n_head\": 4, \"n_positions\": 8, %s}", bad[i]);
        const char *p = tmp_path("bad_config.json");
        fx_write_file_atomic(p, text, strlen(text));
        int rc = fx_config_load(p, &c);
        CHECK(rc != 0, "config with %s accepted", bad[i]);
    }
    /* a family fedex does not run, and a key given twice, are refused by name (not read as RoBERTa, nor
     * one of the two values picked) */
    const struct { const char *text, *want; } refused[] = {
        {"{\"model_type\": \"bert\", \"vocab_size\": 20, \"hidden_size\": 8}", "model_type \"bert\" is not a family"},
        {"{\"model_type\": 7, \"vocab_size\": 20}", "\"model_type\" is not a string"},
        {"{\"model_type\": \"gpt2\", \"vocab_size\": 20, \"n_embd\": 8, \"n_layer\": 1, \"n_head\": 4, "
         "\"n_positions\": 8, \"n_embd\": 16}", "\"n_embd\" is given twice"},
        {"[1, 2]", "not a JSON object"},
        {"{\"model_type\": \"roberta\", \"vocab_size\": 20, \"hidden_size\": 8, \"num_hidden_layers\": 1, "
         "\"num_attention_heads\": 2, \"intermediate_size\": 16, \"max_position_embeddings\": 12, "
         "\"id2label\": {\"0\": \"a\", \"5\": \"b\"}}", "\"id2label\" key \"5\""},
    };
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        const char *p = tmp_path("bad_config.json");
        fx_write_file_atomic(p, refused[i].text, strlen(refused[i].text));
        int rc = fx_config_load(p, &c);
        CHECK(rc != 0 && strstr(fx_err(), refused[i].want) && strstr(fx_err(), p), "config %s: rc %d, '%s'",
              refused[i].text, rc, rc ? fx_err() : "");
    }
    /* batches: a target outside the vocabulary, more tokens than n_positions, training without targets */
    fx_config_load(FIX "gpt2_c/config.json", &c);
    fx_adapter_cfg a = {.kind = FX_LORA, .targets = FX_T_QKV, .r = 2, .alpha = 2};
    if (fx_model_create(&m, &c, &a, NULL) == 0) {
        int32_t ids[40] = {0}, tg[40];
        uint8_t mk[40];
        for (int i = 0; i < 40; i++) { tg[i] = -100; mk[i] = 1; }
        tg[3] = c.vocab_size;
        fx_batch b = {.n = 1, .T = 8, .ids = ids, .mask = mk, .targets = tg};
        CHECK(isnan(fx_model_step(&m, &b, 1, NULL)) && strstr(fx_err(), "target"), "target id %d: %s", c.vocab_size, fx_err());
        tg[3] = -100;
        CHECK(fx_model_step(&m, &b, 1, NULL) == 0.0f, "no supervised token: loss %g", (double)fx_model_step(&m, &b, 1, NULL));
        b.T = c.max_positions + 1;
        CHECK(isnan(fx_model_step(&m, &b, 0, NULL)) && strstr(fx_err(), "n_positions"), "too long: %s", fx_err());
        b.T = 8;
        b.targets = NULL;
        CHECK(isnan(fx_model_step(&m, &b, 1, NULL)) && strstr(fx_err(), "targets"), "no targets: %s", fx_err());
        fx_model_free(&m);
    }
}

/* ============================================================================================
 * fedex init + fedex eval --logits on a tiny GPT-2 of the real vocabulary, end to end
 * ============================================================================================ */

static void test_eval_cli(void) {
    const char *fedex = getenv("FEDEX"), *sh = shared_dir("fedex eval on a GPT-2 (GPT-2's tokenizer)");
    if (!fedex) { printf("skipped: fedex eval on a GPT-2 (FEDEX, the fedex binary, is not set: run `make test`)\n"); return; }
    if (!sh) return;
    char cmd[2048], out[4096], dir[256], data[256];
    snprintf(dir, sizeof dir, "%s", tmp_path("g2"));
    snprintf(data, sizeof data, "%s", tmp_path("e2e"));
    /* a tiny GPT-2 with the real vocabulary; E2E rows with a repeated MR */
    const char *cfg = "{\"model_type\": \"gpt2\", \"vocab_size\": 50257, \"n_embd\": 8, \"n_layer\": 1, "
                      "\"n_head\": 2, \"n_positions\": 64}";
    const char *csv = "mr,ref\n\"name[Aromi], eatType[pub]\",\"Aromi is a pub.\"\n"
                      "\"name[Aromi], eatType[pub]\",The pub Aromi.\n\"name[Bibimbap House], food[Chinese]\","
                      "\"Bibimbap House serves Chinese food, it's cheap.\"\n";
    char p1[300], p2[300];
    snprintf(p1, sizeof p1, "%s.json", dir);
    fx_mkdir_p(data);
    snprintf(p2, sizeof p2, "%s/devset.csv", data);
    CHECK(fx_write_file_atomic(p1, cfg, strlen(cfg)) == 0 && fx_write_file_atomic(p2, csv, strlen(csv)) == 0, "%s", fx_err());
    snprintf(cmd, sizeof cmd, "%s init --config %s --out %s --seed 4 >/dev/null 2>&1 && cp %s/models/gpt2/vocab.json "
             "%s/models/gpt2/merges.txt %s/ && %s eval --model %s --task e2e --data %s --max-length 64 --batch-size 2 "
             "--logits %s/logits.safetensors 2>&1", fedex, p1, dir, sh, sh, dir, fedex, dir, data, dir);
    int rc = check_run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "e2e dev: n 3, loss"), "fedex eval on a GPT-2: %d: %s", rc, out);
    if (rc != 0) return;
    /* the file's logits are the model's, row by row */
    fx_config c;
    snprintf(p1, sizeof p1, "%s/config.json", dir);
    fx_adapter_cfg a = {.kind = FX_LORA, .r = 1, .alpha = 1};
    fx_model m;
    fx_tokenizer *tok = fx_tok_load(dir);
    fx_dataset d;
    fx_st_file f;
    snprintf(p1, sizeof p1, "%s/config.json", dir);
    snprintf(cmd, sizeof cmd, "%s/logits.safetensors", dir);
    if (fx_config_load(p1, &c) != 0 || fx_model_create(&m, &c, &a, NULL) != 0) { CHECK(0, "%s", fx_err()); return; }
    if (tok && fx_model_load(&m, dir) >= 0 && fx_e2e_load(p2, tok, 64, &d) == 0 && fx_st_open(cmd, &f) == 0) {
        const fx_st_tensor *lt = fx_st_find(&f, "logits"), *ot = fx_st_find(&f, "offsets");
        CHECK(lt && ot && ot->dtype == FX_I64 && ot->shape[0] == d.n + 1 && lt->shape[0] == (int64_t)d.off[d.n] &&
              lt->shape[1] == c.vocab_size, "the logits file's shapes");
        if (lt && lt->shape[0] == (int64_t)d.off[d.n]) {
            float *ow;
            const float *got = fx_st_f32(&f, lt, &ow);
            for (int i = 0; i < d.n; i++) {
                int len = (int)(d.off[i + 1] - d.off[i]);
                int32_t ids[64]; uint8_t mk[64];
                for (int t = 0; t < len; t++) { ids[t] = d.ids[d.off[i] + t]; mk[t] = 1; }
                fx_batch b = {.n = 1, .T = len, .ids = ids, .mask = mk};
                float *z = logits_of(&m, &b);
                char what[64];
                snprintf(what, sizeof what, "eval --logits row %d", i);
                CLOSE_SCALED(what, got + d.off[i] * c.vocab_size, z, (size_t)len * c.vocab_size, T_DECODE);
                free(z);
            }
            free(ow);
        }
        fx_st_close(&f);
        fx_dataset_free(&d);
    } else CHECK(0, "%s", fx_err());
    fx_tok_free(tok);
    fx_model_free(&m);
}

int main(void) {
    snprintf(tmp_root, sizeof tmp_root, "/tmp/fedex_test_gpt2_XXXXXX");
    if (!mkdtemp(tmp_root)) { perror("mkdtemp"); return 1; }
    test_golden("a");
    test_golden("b");
    test_golden("c");
    test_decoder("a");
    test_orientation();
    test_config();
    test_eval_cli();
    nftw(tmp_root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return check_done();
}
