/* gpt2.c: the GPT-2 family as data (GPT2LMHeadModel): config.json's keys and writer, the tensor list with
 * shapes, init rules and Conv1D flags, the block's shape (pre-LN, fused c_attn, causal, gelu_new, ln_f, LM
 * head tied to wte), positions from 0, the tokenizer files. No forward pass (model.c) and no file I/O
 * (checkpoint.c, which transposes the Conv1D weights where files are read and written). */
#include "fedex.h"

#include <string.h>

/* ============================================================================================
 * config.json
 * ============================================================================================ */

/* A boolean KEY that, when present, must be WANT (the only variant implemented). */
static int cfg_bool_only(const char *path, const fx_json *root, const char *key, int want) {
    const fx_json *v = fx_json_get(root, key);
    if (!v || v->type == FX_JNULL) return 0;
    if (v->type != FX_JBOOL || v->boolean != want) {
        fx_seterr("%s: \"%s\" must be %s (the only one implemented)", path, key, want ? "true" : "false");
        return -1;
    }
    return 0;
}

/* As transformers' GPT2Config reads it; the architecture keys are required, the rest take its defaults. */
static int gpt2_config_load(const char *path, fx_config *c) {
    fx_json root;
    if (fx_json_load(path, &root) != 0) return -1;
    fx_config k = {0};
    int rc = -1, eos = 0, inner = 0;
    if (root.type != FX_JOBJ) { fx_seterr("%s: not a JSON object", path); goto out; }
    if (fx_cfg_int(path, &root, "vocab_size", 1, 0, 1, 1 << 24, &k.vocab_size) ||
        fx_cfg_int(path, &root, "n_embd", 1, 0, 1, 1 << 16, &k.hidden) ||
        fx_cfg_int(path, &root, "n_layer", 1, 0, 1, 1024, &k.layers) ||
        fx_cfg_int(path, &root, "n_head", 1, 0, 1, 1 << 16, &k.heads) ||
        fx_cfg_int(path, &root, "n_positions", 1, 0, 2, 1 << 20, &k.max_positions) ||
        fx_cfg_int(path, &root, "n_inner", 0, 0, 1, 1 << 18, &inner) ||
        fx_cfg_int(path, &root, "eos_token_id", 0, 50256, 0, (1 << 24) - 1, &eos) ||
        fx_cfg_real(path, &root, "layer_norm_epsilon", 1e-5, 0, 1, 0, &k.layer_norm_eps) ||
        fx_cfg_real(path, &root, "resid_pdrop", 0.1, 0, 1, 1, &k.hidden_dropout) ||
        fx_cfg_real(path, &root, "attn_pdrop", 0.1, 0, 1, 1, &k.attention_dropout) ||
        fx_cfg_real(path, &root, "embd_pdrop", 0.1, 0, 1, 1, &k.embed_dropout) ||
        fx_cfg_real(path, &root, "initializer_range", 0.02, 0, 10, 0, &k.initializer_range) ||
        fx_cfg_only(path, &root, "activation_function", "gelu_new") ||
        cfg_bool_only(path, &root, "scale_attn_weights", 1) ||
        cfg_bool_only(path, &root, "scale_attn_by_inverse_layer_idx", 0) ||
        cfg_bool_only(path, &root, "add_cross_attention", 0) ||
        cfg_bool_only(path, &root, "tie_word_embeddings", 1))
        goto out;
    if (!(k.layer_norm_eps > 0)) { fx_seterr("%s: \"layer_norm_epsilon\" must be > 0", path); goto out; }
    if (k.hidden % k.heads != 0) {
        fx_seterr("%s: \"n_embd\" %d is not a multiple of \"n_head\" %d", path, k.hidden, k.heads);
        goto out;
    }
    k.intermediate = inner ? inner : 4 * k.hidden; /* n_inner null: 4 n_embd */
    /* GPT-2 has no padding token; batches pad with <|endoftext|> (the end token), which nothing attends to
     * on the right and the loss ignores. A tiny vocabulary without that id pads with its last token. */
    k.pad_id = eos < k.vocab_size ? eos : k.vocab_size - 1;
    k.type_vocab_size = 1;
    k.num_labels = k.vocab_size; /* the head's width: logits over the vocabulary at every position */
    k.family = &fx_gpt2;
    *c = k;
    rc = 0;
out:
    fx_json_free(&root);
    return rc;
}

/* config.json of a saved model, as GPT2Config reads it back. */
static void gpt2_config_write(FILE *f, const fx_config *c, const char *const *names) {
    (void)names;
    fprintf(f, "{\n  \"architectures\": [\"GPT2LMHeadModel\"],\n  \"model_type\": \"gpt2\",\n");
    fprintf(f, "  \"vocab_size\": %d,\n  \"n_positions\": %d,\n  \"n_embd\": %d,\n  \"n_layer\": %d,\n",
            c->vocab_size, c->max_positions, c->hidden, c->layers);
    fprintf(f, "  \"n_head\": %d,\n", c->heads);
    if (c->intermediate == 4 * c->hidden) fprintf(f, "  \"n_inner\": null,\n");
    else fprintf(f, "  \"n_inner\": %d,\n", c->intermediate);
    fprintf(f, "  \"activation_function\": \"gelu_new\",\n  \"resid_pdrop\": "); fx_json_put_float(f, c->hidden_dropout);
    fprintf(f, ",\n  \"embd_pdrop\": "); fx_json_put_float(f, c->embed_dropout);
    fprintf(f, ",\n  \"attn_pdrop\": "); fx_json_put_float(f, c->attention_dropout);
    fprintf(f, ",\n  \"layer_norm_epsilon\": "); fx_json_put_float(f, c->layer_norm_eps);
    fprintf(f, ",\n  \"initializer_range\": "); fx_json_put_float(f, c->initializer_range);
    fprintf(f, ",\n  \"bos_token_id\": %d,\n  \"eos_token_id\": %d,\n", c->pad_id, c->pad_id);
    fprintf(f, "  \"scale_attn_weights\": true,\n  \"tie_word_embeddings\": true,\n  \"use_cache\": true\n}\n");
}

/* tokenizer_config.json as GPT2Tokenizer saves it: <|endoftext|> for bos, eos and unk, no BOS added, no
 * prefix space; model_max_length the positions (they start at 0). */
static void gpt2_tokenizer_config_write(FILE *f, const fx_config *c) {
    fprintf(f, "{\n  \"tokenizer_class\": \"GPT2Tokenizer\",\n  \"model_max_length\": %d,\n", c->max_positions);
    fprintf(f, "  \"bos_token\": \"<|endoftext|>\",\n  \"eos_token\": \"<|endoftext|>\",\n"
               "  \"unk_token\": \"<|endoftext|>\",\n  \"add_bos_token\": false,\n  \"add_prefix_space\": false,\n"
               "  \"errors\": \"replace\"\n}\n");
}

static void gpt2_special_tokens_write(FILE *f, const fx_config *c) {
    (void)c;
    static const char *const keys[3] = {"bos_token", "eos_token", "unk_token"};
    fprintf(f, "{\n");
    for (int i = 0; i < 3; i++)
        fprintf(f, "  \"%s\": {\"content\": \"<|endoftext|>\", \"lstrip\": false, \"normalized\": true, "
                   "\"rstrip\": false, \"single_word\": false}%s\n", keys[i], i < 2 ? "," : "");
    fprintf(f, "}\n");
}

/* ============================================================================================
 * positions and the Conv1D orientation
 * ============================================================================================ */

void fx_positions_from_zero(const fx_config *c, const fx_batch *b, int32_t *pos) {
    (void)c;
    for (int i = 0; i < b->n; i++)
        for (int t = 0; t < b->T; t++) pos[(size_t)i * b->T + t] = t;
}

void fx_transpose(float *dst, const float *src, int rows, int cols) {
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) dst[(size_t)j * rows + i] = src[(size_t)i * cols + j];
}

/* ============================================================================================
 * tensors: GPT2LMHeadModel's state dict (inside fedex every weight is (out, in); conv1d marks those the
 * checkpoint stores as (in, out)) and GPT2PreTrainedModel._init_weights's rule
 * ============================================================================================
 * Weights and embeddings N(0, initializer_range), c_proj weights N(0, initializer_range / sqrt(2 n_layer)),
 * biases 0, LayerNorm 1 and 0. lm_head.weight is wte itself, so it is no tensor of its own. */

#define CONV1D(path, w, b, out, in, init) {path ".weight", w, out, in, init, 1, 0}, {path ".bias", b, out, 0, FX_INIT_ZERO, 0, 0}
#define NORM(path, w, b) {path ".weight", w, 'H', 0, FX_INIT_ONE, 0, 0}, {path ".bias", b, 'H', 0, FX_INIT_ZERO, 0, 0}

/* wte, wpe, and ln_f (after the layers in the file; here with the embeddings, as nothing else is). */
static const fx_tensor_spec gpt2_embed[] = {
    {"wte.weight", FX_EMB_WORD, 'V', 'H', FX_INIT_NORMAL, 0, 0},
    {"wpe.weight", FX_EMB_POS, 'P', 'H', FX_INIT_NORMAL, 0, 0},
    NORM("ln_f", FX_EMB_LNF_W, FX_EMB_LNF_B),
};

static const fx_tensor_spec gpt2_layer[] = {
    NORM("ln_1", FX_LT_LN1W, FX_LT_LN1B),
    CONV1D("attn.c_attn", FX_LT_QKVW, FX_LT_QKVB, '3', 'H', FX_INIT_NORMAL),
    CONV1D("attn.c_proj", FX_LT_AOW, FX_LT_AOB, 'H', 'H', FX_INIT_NORMAL_RESID),
    NORM("ln_2", FX_LT_LN2W, FX_LT_LN2B),
    CONV1D("mlp.c_fc", FX_LT_IW, FX_LT_IB, 'I', 'H', FX_INIT_NORMAL),
    CONV1D("mlp.c_proj", FX_LT_OW, FX_LT_OB, 'H', 'I', FX_INIT_NORMAL_RESID),
};

/* GPT2LMHeadModel's modules other than the four adaptable linears of each block (PEFT's selection). */
static const char *const gpt2_modules[] = {
    "", "transformer", "transformer.wte", "transformer.wpe", "transformer.drop", "transformer.h", "transformer.ln_f",
    "lm_head", NULL};
static const char *const gpt2_layer_modules[] = {
    "", "ln_1", "attn", "attn.attn_dropout", "attn.resid_dropout", "ln_2", "mlp", "mlp.act", "mlp.dropout", NULL};

const fx_family fx_gpt2 = {
    .model_type = "gpt2",
    .architecture = "GPT2LMHeadModel",
    .prefix = "transformer.",
    .layer_fmt = "h.%d.",
    .embed = gpt2_embed, .nembed = (int)(sizeof gpt2_embed / sizeof gpt2_embed[0]),
    .layer = gpt2_layer, .nlayer = (int)(sizeof gpt2_layer / sizeof gpt2_layer[0]),
    .head = NULL, .nhead = 0,
    .norm_place = FX_NORM_PRE,
    .norm = FX_NORM_LAYERNORM,
    .fused_qkv = 1,
    .causal = 1,
    .positions = FX_POS_FROM_ZERO,
    .position_ids = fx_positions_from_zero,
    .act = FX_ACT_GELU_TANH,
    .head_kind = FX_HEAD_LM,
    .tied_head = 1,
    .text = {0, 0, 0, 0, 0}, /* GPT-2's tokenizer adds no special tokens */
    .target_path = {NULL, NULL, NULL, "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "attn.c_attn"},
    .target_peft = {NULL, NULL, NULL, "attn.c_proj", "c_fc", "mlp.c_proj", "c_attn"},
    .modules = gpt2_modules, .layer_modules = gpt2_layer_modules,
    .config_load = gpt2_config_load,
    .config_write = gpt2_config_write,
    .tokenizer_config_write = gpt2_tokenizer_config_write,
    .special_tokens_write = gpt2_special_tokens_write,
};
