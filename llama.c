/* llama.c: the Llama family as data (LlamaForCausalLM; Mistral's config reads as the same family):
 * config.json's keys and writer, the tensor list with shapes and init rules, the block's shape (pre-norm
 * RMSNorm, separate q, k, v with grouped-query attention, rotary positions with rope_scaling's frequencies,
 * SwiGLU MLP, optional biases, model.norm, an LM head tied or not). No forward pass (model.c), no file I/O
 * (checkpoint.c), no tokenizer (tokenizer.c). */
#include "fedex.h"

#include <math.h>
#include <string.h>

/* ============================================================================================
 * config.json
 * ============================================================================================ */

/* A boolean KEY, false when absent or null. */
static int cfg_bool(const char *path, const fx_json *root, const char *key, int *out) {
    const fx_json *v = fx_json_get(root, key);
    *out = 0;
    if (!v || v->type == FX_JNULL) return 0;
    if (v->type != FX_JBOOL) { fx_seterr("%s: \"%s\" must be true or false", path, key); return -1; }
    *out = v->boolean;
    return 0;
}

/* A token id KEY: an integer, or a list whose first entry is one (Llama 3's eos_token_id); -1 absent. */
static int cfg_token(const char *path, const fx_json *root, const char *key, int *out) {
    const fx_json *v = fx_json_get(root, key);
    *out = -1;
    if (v && v->type == FX_JARR && v->n > 0) v = &v->kids[0];
    if (!v || v->type == FX_JNULL || (v->type == FX_JARR && v->n == 0)) return 0;
    if (v->type != FX_JNUM || !v->is_int || v->inum < 0 || v->inum >= (1 << 24)) {
        fx_seterr("%s: \"%s\" must be a token id (an integer, or a list of them)", path, key);
        return -1;
    }
    *out = (int)v->inum;
    return 0;
}

/* A number KEY of rope_scaling that its kind needs, in (LO, HI]. */
static int scaling_num(const char *path, const fx_json *rs, const char *kind, const char *key, double lo, double hi,
                       double *out) {
    const fx_json *v = fx_json_get(rs, key);
    if (!v || v->type != FX_JNUM || !(v->num > lo) || v->num > hi) {
        fx_seterr("%s: \"rope_scaling\" of kind \"%s\" needs \"%s\", a number in (%g, %g]", path, kind, key, lo, hi);
        return -1;
    }
    *out = v->num;
    return 0;
}

/* rope_scaling as transformers' rope_config_validation reads it: null or kind "default" is plain RoPE;
 * "linear" (factor) and "llama3" (factor, low_freq_factor, high_freq_factor, original_max_position_embeddings)
 * only rescale the inverse frequencies (fx_rope_inv_freq). The kind is "rope_type", or the older "type".
 * Refused by name: "dynamic" (HF recomputes its base from each forward's sequence length and keeps the
 * largest seen, a state between calls), "yarn", "longrope" and others (they also scale cos and sin). */
static int cfg_rope_scaling(const char *path, const fx_json *root, fx_config *c) {
    const fx_json *v = fx_json_get(root, "rope_scaling");
    c->rope_kind = FX_ROPE_DEFAULT;
    if (!v || v->type == FX_JNULL) return 0;
    if (v->type != FX_JOBJ) { fx_seterr("%s: \"rope_scaling\" must be null or an object", path); return -1; }
    const fx_json *k = fx_json_get(v, "rope_type");
    if (!k || k->type == FX_JNULL) k = fx_json_get(v, "type");
    if (!k || k->type != FX_JSTR) { fx_seterr("%s: \"rope_scaling\" names no \"rope_type\" (or \"type\")", path); return -1; }
    if (!strcmp(k->str, "default")) return 0;
    double factor, low, high, orig;
    if (!strcmp(k->str, "linear")) {
        if (scaling_num(path, v, k->str, "factor", 0, 1e6, &factor)) return -1;
        c->rope_kind = FX_ROPE_LINEAR;
        c->rope_factor = (float)factor;
        return 0;
    }
    if (!strcmp(k->str, "llama3")) {
        if (scaling_num(path, v, k->str, "factor", 0, 1e6, &factor) ||
            scaling_num(path, v, k->str, "low_freq_factor", 0, 1e6, &low) ||
            scaling_num(path, v, k->str, "high_freq_factor", 0, 1e6, &high) ||
            scaling_num(path, v, k->str, "original_max_position_embeddings", 0, 1 << 24, &orig))
            return -1;
        if (!(high > low)) {
            fx_seterr("%s: \"rope_scaling\" llama3's high_freq_factor %g must exceed low_freq_factor %g", path, high, low);
            return -1;
        }
        if (orig != (double)(int)orig) {
            fx_seterr("%s: \"rope_scaling\" llama3's original_max_position_embeddings must be an integer", path);
            return -1;
        }
        c->rope_kind = FX_ROPE_LLAMA3;
        c->rope_factor = (float)factor;
        c->rope_low_freq = (float)low;
        c->rope_high_freq = (float)high;
        c->rope_original_max = (int)orig;
        return 0;
    }
    fx_seterr("%s: \"rope_scaling\" of kind \"%s\" is not supported (null, \"default\", \"linear\" and \"llama3\" are%s)",
              path, k->str, !strcmp(k->str, "dynamic") ? "; dynamic NTK rescales by each call's sequence length" : "");
    return -1;
}

/* The rotation's inverse frequencies, as transformers' ROPE_INIT_FUNCTIONS compute them (in double here):
 *   default  f_i = theta^(-2i/hd), i < hd/2;
 *   linear   f_i / factor (positions divided by the factor);
 *   llama3   with wavelength w_i = 2 pi / f_i, L = original_max_position_embeddings:
 *            w_i > L / low_freq_factor (low frequencies):   f_i / factor,
 *            w_i < L / high_freq_factor (high frequencies): f_i,
 *            between: (1 - s) f_i / factor + s f_i,  s = (L / w_i - low_freq_factor) / (high - low). */
void fx_rope_inv_freq(const fx_config *c, int hd, double *inv_freq) {
    for (int i = 0; i < hd / 2; i++) {
        double f = pow((double)c->rope_theta, -2.0 * i / hd);
        if (c->rope_kind == FX_ROPE_LINEAR) f /= c->rope_factor;
        if (c->rope_kind == FX_ROPE_LLAMA3) {
            double L = c->rope_original_max, lo = c->rope_low_freq, hi = c->rope_high_freq, wl = 2 * M_PI / f;
            if (wl > L / lo) f /= c->rope_factor;
            else if (!(wl < L / hi)) {
                double s = (L / wl - lo) / (hi - lo);
                f = (1 - s) * f / c->rope_factor + s * f;
            }
        }
        inv_freq[i] = f;
    }
}

/* As transformers' LlamaConfig (and MistralConfig) read it: the architecture keys are required, the rest
 * take its defaults. */
static int llama_config_load(const char *path, fx_config *c) {
    fx_json root;
    if (fx_json_load(path, &root) != 0) return -1;
    fx_config k = {0};
    int rc = -1, pad = -1, eos = -1, bos = -1, tied = 0, tp = 1;
    if (root.type != FX_JOBJ) { fx_seterr("%s: not a JSON object", path); goto out; }
    if (fx_cfg_int(path, &root, "vocab_size", 0, 32000, 1, 1 << 24, &k.vocab_size) ||
        fx_cfg_int(path, &root, "hidden_size", 1, 0, 1, 1 << 16, &k.hidden) ||
        fx_cfg_int(path, &root, "intermediate_size", 1, 0, 1, 1 << 18, &k.intermediate) ||
        fx_cfg_int(path, &root, "num_hidden_layers", 1, 0, 1, 1024, &k.layers) ||
        fx_cfg_int(path, &root, "num_attention_heads", 1, 0, 1, 1 << 12, &k.heads) ||
        fx_cfg_int(path, &root, "num_key_value_heads", 0, 0, 0, 1 << 12, &k.kv_heads) ||
        fx_cfg_int(path, &root, "head_dim", 0, 0, 0, 1 << 12, &k.head_dim) ||
        fx_cfg_int(path, &root, "max_position_embeddings", 0, 2048, 2, 1 << 24, &k.max_positions) ||
        fx_cfg_int(path, &root, "sliding_window", 0, 0, 0, 1 << 24, &k.sliding_window) ||
        fx_cfg_int(path, &root, "pretraining_tp", 0, 1, 1, 1, &tp) ||
        fx_cfg_real(path, &root, "rms_norm_eps", 1e-6, 0, 1, 0, &k.layer_norm_eps) ||
        fx_cfg_real(path, &root, "rope_theta", 10000, 1, 1e12, 0, &k.rope_theta) ||
        fx_cfg_real(path, &root, "attention_dropout", 0, 0, 1, 1, &k.attention_dropout) ||
        fx_cfg_real(path, &root, "initializer_range", 0.02, 0, 10, 0, &k.initializer_range) ||
        fx_cfg_only(path, &root, "hidden_act", "silu") ||
        cfg_bool(path, &root, "attention_bias", &k.attention_bias) || cfg_bool(path, &root, "mlp_bias", &k.mlp_bias) ||
        cfg_rope_scaling(path, &root, &k) ||
        cfg_token(path, &root, "pad_token_id", &pad) || cfg_token(path, &root, "eos_token_id", &eos) ||
        cfg_token(path, &root, "bos_token_id", &bos))
        goto out;
    const fx_json *tw = fx_json_get(&root, "tie_word_embeddings");
    if (tw && tw->type != FX_JNULL) {
        if (tw->type != FX_JBOOL) { fx_seterr("%s: \"tie_word_embeddings\" must be true or false", path); goto out; }
        tied = tw->boolean;
    }
    if (!(k.layer_norm_eps > 0)) { fx_seterr("%s: \"rms_norm_eps\" must be > 0", path); goto out; }
    if (!k.kv_heads) k.kv_heads = k.heads; /* LlamaConfig: num_key_value_heads None means MHA */
    if (k.heads % k.kv_heads != 0) {
        fx_seterr("%s: \"num_attention_heads\" %d is not a multiple of \"num_key_value_heads\" %d", path, k.heads,
                  k.kv_heads);
        goto out;
    }
    if (!k.head_dim) {
        if (k.hidden % k.heads != 0) {
            fx_seterr("%s: \"hidden_size\" %d is not a multiple of \"num_attention_heads\" %d (and no \"head_dim\")",
                      path, k.hidden, k.heads);
            goto out;
        }
        k.head_dim = k.hidden / k.heads;
    }
    if (k.head_dim % 2) { fx_seterr("%s: head_dim %d is odd: RoPE rotates pairs", path, k.head_dim); goto out; }
    /* Llama has no padding token as a rule; batches pad with pad_token_id when given, else the end token
     * (nothing attends to right padding and the loss ignores it), else 0. */
    k.pad_id = pad >= 0 ? pad : eos >= 0 ? eos : 0;
    if (k.pad_id >= k.vocab_size) k.pad_id = k.vocab_size - 1;
    k.untied_head = !tied;
    k.type_vocab_size = 1;
    k.num_labels = k.vocab_size; /* the head's width: logits over the vocabulary at every position */
    k.family = &fx_llama;
    *c = k;
    rc = 0;
out:
    fx_json_free(&root);
    return rc;
}

/* config.json of a saved model, as LlamaConfig reads it back; MistralConfig's when there is a sliding
 * window (LlamaConfig has none and would attend past it) and no bias (MistralConfig has none). */
static void llama_config_write(FILE *f, const fx_config *c, const char *const *names) {
    (void)names;
    int mistral = c->sliding_window && !c->attention_bias && !c->mlp_bias;
    fprintf(f, "{\n  \"architectures\": [\"%s\"],\n  \"model_type\": \"%s\",\n",
            mistral ? "MistralForCausalLM" : "LlamaForCausalLM", mistral ? "mistral" : "llama");
    fprintf(f, "  \"vocab_size\": %d,\n  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n", c->vocab_size,
            c->hidden, c->intermediate);
    fprintf(f, "  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n",
            c->layers, c->heads, c->kv_heads ? c->kv_heads : c->heads);
    fprintf(f, "  \"head_dim\": %d,\n  \"max_position_embeddings\": %d,\n", c->head_dim, c->max_positions);
    if (c->sliding_window) fprintf(f, "  \"sliding_window\": %d,\n", c->sliding_window);
    fprintf(f, "  \"hidden_act\": \"silu\",\n  \"rms_norm_eps\": "); fx_json_put_float(f, c->layer_norm_eps);
    fprintf(f, ",\n  \"rope_theta\": "); fx_json_put_float(f, c->rope_theta);
    if (c->rope_kind == FX_ROPE_LINEAR) {
        fprintf(f, ",\n  \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": ");
        fx_json_put_float(f, c->rope_factor);
        fprintf(f, "}");
    } else if (c->rope_kind == FX_ROPE_LLAMA3) {
        fprintf(f, ",\n  \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": ");
        fx_json_put_float(f, c->rope_factor);
        fprintf(f, ", \"low_freq_factor\": ");
        fx_json_put_float(f, c->rope_low_freq);
        fprintf(f, ", \"high_freq_factor\": ");
        fx_json_put_float(f, c->rope_high_freq);
        fprintf(f, ", \"original_max_position_embeddings\": %d}", c->rope_original_max);
    } else {
        fprintf(f, ",\n  \"rope_scaling\": null");
    }
    fprintf(f, ",\n  \"attention_bias\": %s,\n  \"mlp_bias\": %s,\n", c->attention_bias ? "true" : "false",
            c->mlp_bias ? "true" : "false");
    fprintf(f, "  \"attention_dropout\": "); fx_json_put_float(f, c->attention_dropout);
    fprintf(f, ",\n  \"initializer_range\": "); fx_json_put_float(f, c->initializer_range);
    fprintf(f, ",\n  \"pad_token_id\": %d,\n  \"eos_token_id\": %d,\n", c->pad_id, c->pad_id);
    fprintf(f, "  \"tie_word_embeddings\": %s,\n  \"use_cache\": true\n}\n", c->untied_head ? "false" : "true");
}

/* A saved Llama folder names only its length here; the tokenizer files of the model it came from
 * (tokenizer.json and its tokenizer_config.json, which `fedex export` and `fedex init` copy) replace this. */
static void llama_tokenizer_config_write(FILE *f, const fx_config *c) {
    fprintf(f, "{\n  \"tokenizer_class\": \"PreTrainedTokenizerFast\",\n  \"model_max_length\": %d\n}\n",
            c->max_positions);
}
static void llama_special_tokens_write(FILE *f, const fx_config *c) {
    (void)c;
    fprintf(f, "{}\n");
}

/* ============================================================================================
 * tensors: LlamaForCausalLM's state dict and LlamaPreTrainedModel._init_weights's rule
 * ============================================================================================
 * Linears and the embedding N(0, initializer_range), biases 0, RMSNorm weights 1. The biases are there
 * only with attention_bias (q, k, v, o_proj) or mlp_bias (gate, up, down_proj), each right after its
 * weight as nn.Linear registers it; frozen like the weights (adapters target the weights). lm_head.weight
 * is its own tensor only when tie_word_embeddings is false, and it sits outside the "model." prefix. */

#define LIN(path, w, out, in) {path ".weight", w, out, in, FX_INIT_NORMAL, 0, 0}
#define BIAS(path, b, out, when) {path ".bias", b, out, 0, FX_INIT_ZERO, 0, when}
#define RMS(path, w) {path ".weight", w, 'H', 0, FX_INIT_ONE, 0, 0}

/* embed_tokens, and what follows the layers: model.norm and lm_head (the embedding list holds them). */
static const fx_tensor_spec llama_embed[] = {
    {"embed_tokens.weight", FX_EMB_WORD, 'V', 'H', FX_INIT_NORMAL, 0, 0},
    RMS("norm", FX_EMB_LNF_W),
    {"lm_head.weight", FX_EMB_HEAD, 'V', 'H', FX_INIT_NORMAL, 0, FX_WHEN_UNTIED},
};

static const fx_tensor_spec llama_layer[] = {
    LIN("self_attn.q_proj", FX_LT_QW, 'Q', 'H'), BIAS("self_attn.q_proj", FX_LT_QB, 'Q', FX_WHEN_ATTENTION_BIAS),
    LIN("self_attn.k_proj", FX_LT_KW, 'K', 'H'), BIAS("self_attn.k_proj", FX_LT_KB, 'K', FX_WHEN_ATTENTION_BIAS),
    LIN("self_attn.v_proj", FX_LT_VW, 'K', 'H'), BIAS("self_attn.v_proj", FX_LT_VB, 'K', FX_WHEN_ATTENTION_BIAS),
    LIN("self_attn.o_proj", FX_LT_AOW, 'H', 'Q'), BIAS("self_attn.o_proj", FX_LT_AOB, 'H', FX_WHEN_ATTENTION_BIAS),
    LIN("mlp.gate_proj", FX_LT_GATEW, 'I', 'H'), BIAS("mlp.gate_proj", FX_LT_GATEB, 'I', FX_WHEN_MLP_BIAS),
    LIN("mlp.up_proj", FX_LT_IW, 'I', 'H'), BIAS("mlp.up_proj", FX_LT_IB, 'I', FX_WHEN_MLP_BIAS),
    LIN("mlp.down_proj", FX_LT_OW, 'H', 'I'), BIAS("mlp.down_proj", FX_LT_OB, 'H', FX_WHEN_MLP_BIAS),
    RMS("input_layernorm", FX_LT_LN1W),
    RMS("post_attention_layernorm", FX_LT_LN2W),
};

/* LlamaForCausalLM's modules other than the seven adaptable linears of each layer (PEFT's selection). */
static const char *const llama_modules[] = {
    "", "model", "model.embed_tokens", "model.layers", "model.norm", "model.rotary_emb", "lm_head", NULL};
static const char *const llama_layer_modules[] = {
    "", "self_attn", "mlp", "mlp.act_fn", "input_layernorm", "post_attention_layernorm", NULL};

const fx_family fx_llama = {
    .model_type = "llama",
    .architecture = "LlamaForCausalLM",
    .prefix = "model.",
    .layer_fmt = "layers.%d.",
    .embed = llama_embed, .nembed = (int)(sizeof llama_embed / sizeof llama_embed[0]),
    .layer = llama_layer, .nlayer = (int)(sizeof llama_layer / sizeof llama_layer[0]),
    .head = NULL, .nhead = 0,
    .norm_place = FX_NORM_PRE,
    .norm = FX_NORM_RMSNORM,
    .fused_qkv = 0,
    .causal = 1,
    .positions = FX_POS_ROPE,
    .position_ids = fx_positions_from_zero, /* the rotation's positions, 0 .. T-1 (right padding) */
    .act = FX_ACT_SWIGLU,
    .head_kind = FX_HEAD_LM,
    .tied_head = 0, /* by the config: fx_config.untied_head */
    .text = {0, 0, 0, 0, 0},
    .target_path = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.up_proj",
                    "mlp.down_proj", NULL, "mlp.gate_proj"},
    .target_peft = {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", NULL, "gate_proj"},
    .modules = llama_modules, .layer_modules = llama_layer_modules,
    .config_load = llama_config_load,
    .config_write = llama_config_write,
    .tokenizer_config_write = llama_tokenizer_config_write,
    .special_tokens_write = llama_special_tokens_write,
};
