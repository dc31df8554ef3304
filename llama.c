/* llama.c: the Llama family as data (LlamaForCausalLM; Mistral's config reads as the same family):
 * config.json's keys and writer, the tensor list with shapes and init rules, the block's shape (pre-norm
 * RMSNorm, separate q, k, v with grouped-query attention, rotary positions, SwiGLU MLP, model.norm, an
 * LM head tied or not). No forward pass (model.c), no file I/O (checkpoint.c), no tokenizer (tokenizer.c). */
#include "fedex.h"

#include <string.h>

/* ============================================================================================
 * config.json
 * ============================================================================================ */

/* A boolean KEY that, when present, must be false: what it turns on (biases) is not implemented. */
static int cfg_false(const char *path, const fx_json *root, const char *key) {
    const fx_json *v = fx_json_get(root, key);
    if (!v || v->type == FX_JNULL || (v->type == FX_JBOOL && !v->boolean)) return 0;
    fx_seterr("%s: \"%s\" must be false (biases on these linears are not implemented)", path, key);
    return -1;
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

/* rope_scaling: only null (plain RoPE) is implemented; every scaling kind is refused by its name. */
static int cfg_rope_scaling(const char *path, const fx_json *root) {
    const fx_json *v = fx_json_get(root, "rope_scaling");
    if (!v || v->type == FX_JNULL) return 0;
    const fx_json *k = v->type == FX_JOBJ ? fx_json_get(v, "rope_type") : NULL;
    if (!k && v->type == FX_JOBJ) k = fx_json_get(v, "type");
    if (k && k->type == FX_JSTR && !strcmp(k->str, "default")) return 0;
    fx_seterr("%s: \"rope_scaling\" of kind \"%s\" is not supported (only null, plain RoPE with rope_theta)", path,
              k && k->type == FX_JSTR ? k->str : "?");
    return -1;
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
        cfg_false(path, &root, "attention_bias") || cfg_false(path, &root, "mlp_bias") ||
        cfg_rope_scaling(path, &root) ||
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

/* config.json of a saved model, as LlamaConfig reads it back. */
static void llama_config_write(FILE *f, const fx_config *c, const char *const *names) {
    (void)names;
    fprintf(f, "{\n  \"architectures\": [\"LlamaForCausalLM\"],\n  \"model_type\": \"llama\",\n");
    fprintf(f, "  \"vocab_size\": %d,\n  \"hidden_size\": %d,\n  \"intermediate_size\": %d,\n", c->vocab_size,
            c->hidden, c->intermediate);
    fprintf(f, "  \"num_hidden_layers\": %d,\n  \"num_attention_heads\": %d,\n  \"num_key_value_heads\": %d,\n",
            c->layers, c->heads, c->kv_heads ? c->kv_heads : c->heads);
    fprintf(f, "  \"head_dim\": %d,\n  \"max_position_embeddings\": %d,\n", c->head_dim, c->max_positions);
    if (c->sliding_window) fprintf(f, "  \"sliding_window\": %d,\n", c->sliding_window);
    fprintf(f, "  \"hidden_act\": \"silu\",\n  \"rms_norm_eps\": "); fx_json_put_float(f, c->layer_norm_eps);
    fprintf(f, ",\n  \"rope_theta\": "); fx_json_put_float(f, c->rope_theta);
    fprintf(f, ",\n  \"rope_scaling\": null,\n  \"attention_bias\": false,\n  \"mlp_bias\": false,\n");
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
 * Linears and the embedding N(0, initializer_range), RMSNorm weights 1; no biases. lm_head.weight is its
 * own tensor only when tie_word_embeddings is false, and it sits outside the "model." prefix. */

#define LIN(path, w, out, in) {path ".weight", w, out, in, FX_INIT_NORMAL, 0, 0}
#define RMS(path, w) {path ".weight", w, 'H', 0, FX_INIT_ONE, 0, 0}

/* embed_tokens, and what follows the layers: model.norm and lm_head (the embedding list holds them). */
static const fx_tensor_spec llama_embed[] = {
    {"embed_tokens.weight", FX_EMB_WORD, 'V', 'H', FX_INIT_NORMAL, 0, 0},
    RMS("norm", FX_EMB_LNF_W),
    {"lm_head.weight", FX_EMB_HEAD, 'V', 'H', FX_INIT_NORMAL, 0, 1},
};

static const fx_tensor_spec llama_layer[] = {
    LIN("self_attn.q_proj", FX_LT_QW, 'Q', 'H'),
    LIN("self_attn.k_proj", FX_LT_KW, 'K', 'H'),
    LIN("self_attn.v_proj", FX_LT_VW, 'K', 'H'),
    LIN("self_attn.o_proj", FX_LT_AOW, 'H', 'Q'),
    LIN("mlp.gate_proj", FX_LT_GATEW, 'I', 'H'),
    LIN("mlp.up_proj", FX_LT_IW, 'I', 'H'),
    LIN("mlp.down_proj", FX_LT_OW, 'H', 'I'),
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
