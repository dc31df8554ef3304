/* tests/test_llama.c: Llama (llama.c on model.c's Llama block) against a float64 PyTorch LlamaForCausalLM
 * (golden values made by tests/make_llama_fixtures.py) on six tiny shapes read from F32 and BF16
 * checkpoints in Hugging Face's layout: grouped-query and multi-head attention, tied and untied heads, a
 * head_dim of its own, Mistral configs (a sliding window shorter than the rows), llama3 and linear
 * rope_scaling, attention and MLP biases; logits, the label-smoothed shifted loss, every adapter
 * gradient, AdamW steps with gradient clipping, and a greedy continuation through the KV-cache decoder.
 * Then the decoder against the full forward (steps, slots, reorder; past the window), the files (merged
 * checkpoints with lm_head outside the prefix and the biases, residual files, PEFT adapters with Llama's
 * target names), the config keys (rope_scaling's, worked llama3 frequencies) and refusals. */
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

#define LM_NAME "llama"
#include "lm_golden.h"

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
              !fx_st_find(&f, "model.lm_head.weight") &&
              (fx_st_find(&f, "model.layers.0.self_attn.o_proj.bias") != NULL) == g.c.attention_bias &&
              (fx_st_find(&f, "model.layers.0.mlp.down_proj.bias") != NULL) == g.c.mlp_bias &&
              (fx_st_find(&f, "lm_head.weight") != NULL) == g.c.untied_head,
              "llama_%s: the saved names are not LlamaForCausalLM's (untied head %d, biases %d %d)", name,
              g.c.untied_head, g.c.attention_bias, g.c.mlp_bias);
        fx_st_close(&f);
    }
    fx_config c2;
    snprintf(path, sizeof path, "%s/config.json", dir);
    CHECK(fx_config_load(path, &c2) == 0 && c2.family == &fx_llama && c2.kv_heads == g.c.kv_heads &&
          c2.head_dim == g.c.head_dim && c2.untied_head == g.c.untied_head && c2.rope_theta == g.c.rope_theta &&
          c2.layer_norm_eps == g.c.layer_norm_eps && c2.sliding_window == g.c.sliding_window &&
          c2.max_positions == g.c.max_positions && c2.pad_id == g.c.pad_id && c2.rope_kind == g.c.rope_kind &&
          c2.rope_factor == g.c.rope_factor && c2.rope_low_freq == g.c.rope_low_freq &&
          c2.rope_high_freq == g.c.rope_high_freq && c2.rope_original_max == g.c.rope_original_max &&
          c2.attention_bias == g.c.attention_bias && c2.mlp_bias == g.c.mlp_bias,
          "llama_%s: saved config.json: %s", name, fx_err());
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
    CHECK(load_with("\"rope_scaling\": null, \"attention_bias\": false", &c) == 0 && c.rope_kind == FX_ROPE_DEFAULT &&
          !c.attention_bias, "rope_scaling null: %s", fx_err());
    CHECK(load_with("\"rope_scaling\": {\"rope_type\": \"default\"}", &c) == 0 && c.rope_kind == FX_ROPE_DEFAULT,
          "rope_scaling default: %s", fx_err());
    CHECK(load_with("\"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}, \"mlp_bias\": true", &c) == 0 &&
          c.rope_kind == FX_ROPE_LINEAR && c.rope_factor == 2.0f && c.mlp_bias && !c.attention_bias,
          "linear scaling under the older \"type\" key: %s", fx_err());
    CHECK(fx_config_load(FIX "llama_d/config.json", &c) == 0 && c.rope_kind == FX_ROPE_LLAMA3 && c.rope_factor == 8.0f &&
          c.rope_low_freq == 1.0f && c.rope_high_freq == 4.0f && c.rope_original_max == 64 && c.attention_bias &&
          c.mlp_bias, "llama_d: llama3 scaling and both biases: %s", fx_err());
    /* llama3's frequencies at head_dim 8, theta 10000, factor 8, L 64, low 1, high 4: wavelengths 2 pi,
     * 20 pi, 200 pi, 2000 pi; the second lies between L / high = 16 and L / low = 64, so s = 64 / (20 pi)
     * - 1 over 3 blends f / 8 and f (HF's _compute_llama3_parameters, worked by hand) */
    double f4[4], s1 = (64 / (20 * M_PI) - 1) / 3;
    fx_rope_inv_freq(&c, 8, f4);
    CHECK(fabs(f4[0] - 1) < 1e-15 && fabs(f4[1] - ((1 - s1) * 0.1 / 8 + s1 * 0.1)) < 1e-15 &&
          fabs(f4[2] - 0.01 / 8) < 1e-15 && fabs(f4[3] - 0.001 / 8) < 1e-15,
          "llama3 inv_freq %.17g %.17g %.17g %.17g", f4[0], f4[1], f4[2], f4[3]);
    /* refused, each by name */
    const struct { const char *extra, *says; } bad[] = {
        {"\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}", "low_freq_factor"},
        {"\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"low_freq_factor\": 4, "
         "\"high_freq_factor\": 4, \"original_max_position_embeddings\": 64}", "exceed"},
        {"\"rope_scaling\": {\"type\": \"linear\"}", "factor"},
        {"\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}", "yarn"},
        {"\"rope_scaling\": {\"rope_type\": \"dynamic\", \"factor\": 2.0}", "dynamic"},
        {"\"rope_scaling\": {\"rope_type\": \"longrope\"}", "longrope"},
        {"\"rope_scaling\": {\"factor\": 2.0}", "rope_type"},
        {"\"rope_scaling\": 2", "object"},
        {"\"attention_bias\": 1", "attention_bias"},
        {"\"mlp_bias\": \"yes\"", "mlp_bias"},
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

    /* the sliding window bounds nothing but attention: batches and prompts past it run */
    fx_adapter_cfg a = {.kind = FX_LORA, .targets = FX_T_QUERY, .r = 2, .alpha = 2};
    if (fx_model_create(&m, &c, &a, NULL) == 0) {
        int32_t ids[40] = {0}, tg[40];
        uint8_t mk[40];
        for (int i = 0; i < 40; i++) { tg[i] = i % 5; mk[i] = 1; }
        fx_batch b = {.n = 1, .T = c.sliding_window + 3, .ids = ids, .mask = mk, .targets = tg};
        CHECK(isfinite(fx_model_step(&m, &b, 1, NULL)), "a batch longer than the window: %s", fx_err());
        fx_decoder d;
        if (fx_model_decoder(&m, 1, &d) == 0) {
            CHECK(d.max_len == c.max_positions, "decoder max_len %d, the positions %d", d.max_len, c.max_positions);
            fx_decoder_free(&d);
        }
        fx_model_free(&m);
    }
}

int main(void) {
    snprintf(tmp_root, sizeof tmp_root, "/tmp/fedex_test_llama_XXXXXX");
    if (!mkdtemp(tmp_root)) { perror("mkdtemp"); return 1; }
    test_golden("a");
    test_golden("b");
    test_golden("c");
    test_golden("d");
    test_golden("e");
    test_golden("f");
    test_decoder("a");
    test_decoder("f"); /* a sliding window of 6: steps far past it */
    test_files("a");
    test_files("b");
    test_files("d");
    test_files("f");
    test_config();
    nftw(tmp_root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return check_done();
}
