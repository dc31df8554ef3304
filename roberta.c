/* roberta.c: the RoBERTa family as data: config.json's keys and writer, the tensor list with shapes and
 * init rules, the block's shape (post-LN, separate q/k/v, bidirectional, exact GELU), its position rule and
 * text template. No forward pass (model.c runs every family) and no file I/O (checkpoint.c). */
#include "fedex.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ============================================================================================
 * config.json
 * ============================================================================================ */

/* Integer field KEY in [lo, hi]; absent or null takes DFLT, or is an error when REQUIRED. */
int fx_cfg_int(const char *path, const fx_json *root, const char *key, int required, int dflt,
                   int64_t lo, int64_t hi, int *out) {
    const fx_json *v = fx_json_get(root, key);
    if (!v || v->type == FX_JNULL) {
        if (required) { fx_seterr("%s: missing \"%s\"", path, key); return -1; }
        *out = dflt;
        return 0;
    }
    if (v->type != FX_JNUM || !v->is_int || v->inum < lo || v->inum > hi) {
        fx_seterr("%s: \"%s\" must be an integer in [%lld, %lld]", path, key, (long long)lo, (long long)hi);
        return -1;
    }
    *out = (int)v->inum;
    return 0;
}

/* Real field KEY in [lo, hi] (hi_open: hi excluded); absent or null takes DFLT. */
int fx_cfg_real(const char *path, const fx_json *root, const char *key, double dflt, double lo, double hi,
                int hi_open, float *out) {
    const fx_json *v = fx_json_get(root, key);
    if (!v || v->type == FX_JNULL) { *out = (float)dflt; return 0; }
    if (v->type != FX_JNUM || !(v->num >= lo) || v->num > hi || (hi_open && v->num == hi)) {
        fx_seterr("%s: \"%s\" must be a number in [%g, %g%c", path, key, lo, hi, hi_open ? ')' : ']');
        return -1;
    }
    *out = (float)v->num;
    return 0;
}

/* A string field that, when present, must read WANT (the only variant this model implements). */
int fx_cfg_only(const char *path, const fx_json *root, const char *key, const char *want) {
    const fx_json *v = fx_json_get(root, key);
    if (!v || v->type == FX_JNULL) return 0;
    if (v->type != FX_JSTR || strcmp(v->str, want) != 0) {
        fx_seterr("%s: \"%s\" must be \"%s\" (the only one implemented)", path, key, want);
        return -1;
    }
    return 0;
}

/* An id2label key as the label index it names, 0 to N-1 (a decimal integer, as HF turns the keys into
 * ints), or -1. */
int fx_id2label_index(const char *key, int n) {
    char *end;
    long v = strtol(key, &end, 10);
    return *key && !*end && v >= 0 && v < n ? (int)v : -1;
}
static int roberta_config_load(const char *path, fx_config *c) {
    fx_json root;
    if (fx_json_load(path, &root) != 0) return -1;
    fx_config k = {0};
    int rc = -1;
    if (root.type != FX_JOBJ) { fx_seterr("%s: not a JSON object", path); goto out; }
    /* Architecture: required. Bounds keep every product of two sizes far inside size_t. */
    if (fx_cfg_int(path, &root, "vocab_size", 1, 0, 1, 1 << 24, &k.vocab_size) ||
        fx_cfg_int(path, &root, "hidden_size", 1, 0, 1, 1 << 16, &k.hidden) ||
        fx_cfg_int(path, &root, "num_hidden_layers", 1, 0, 1, 1024, &k.layers) ||
        fx_cfg_int(path, &root, "num_attention_heads", 1, 0, 1, 1 << 16, &k.heads) ||
        fx_cfg_int(path, &root, "intermediate_size", 1, 0, 1, 1 << 18, &k.intermediate) ||
        fx_cfg_int(path, &root, "max_position_embeddings", 1, 0, 3, 1 << 20, &k.max_positions) ||
        /* The rest: Hugging Face's RobertaConfig defaults when absent. */
        fx_cfg_int(path, &root, "type_vocab_size", 0, 2, 1, 1 << 16, &k.type_vocab_size) ||
        fx_cfg_int(path, &root, "pad_token_id", 0, 1, 0, (1 << 24) - 1, &k.pad_id) ||
        fx_cfg_real(path, &root, "layer_norm_eps", 1e-12, 0, 1, 0, &k.layer_norm_eps) ||
        fx_cfg_real(path, &root, "hidden_dropout_prob", 0.1, 0, 1, 1, &k.hidden_dropout) ||
        fx_cfg_real(path, &root, "attention_probs_dropout_prob", 0.1, 0, 1, 1, &k.attention_dropout) ||
        fx_cfg_real(path, &root, "initializer_range", 0.02, 0, 10, 0, &k.initializer_range) ||
        fx_cfg_real(path, &root, "classifier_dropout", k.hidden_dropout, 0, 1, 1, &k.classifier_dropout) ||
        fx_cfg_only(path, &root, "hidden_act", "gelu") ||
        fx_cfg_only(path, &root, "position_embedding_type", "absolute"))
        goto out;
    if (!(k.layer_norm_eps > 0)) { fx_seterr("%s: \"layer_norm_eps\" must be > 0", path); goto out; }
    if (k.hidden % k.heads != 0) {
        fx_seterr("%s: \"hidden_size\" %d is not a multiple of \"num_attention_heads\" %d", path, k.hidden,
                  k.heads);
        goto out;
    }
    if (k.pad_id >= k.vocab_size || k.pad_id + 2 > k.max_positions) {
        fx_seterr("%s: \"pad_token_id\" %d must be below \"vocab_size\" %d and leave room for positions "
                  "under \"max_position_embeddings\" %d", path, k.pad_id, k.vocab_size, k.max_positions);
        goto out;
    }
    /* num_labels as HF's PretrainedConfig: explicit, else the size of id2label, else 2. */
    const fx_json *id2label = fx_json_get(&root, "id2label");
    if (fx_json_get(&root, "num_labels")) {
        if (fx_cfg_int(path, &root, "num_labels", 1, 2, 1, 1 << 16, &k.num_labels)) goto out;
    } else if (id2label && id2label->type != FX_JNULL) {
        if (id2label->type != FX_JOBJ || id2label->n < 1 || id2label->n > (1 << 16)) {
            fx_seterr("%s: \"id2label\" must be an object with 1 to 65536 entries", path);
            goto out;
        }
        k.num_labels = (int)id2label->n;
        /* its keys are the classifier's output indices, 0 to N-1, each once (as HF turns them into ints) */
        char *seen = fx_calloc((size_t)k.num_labels, 1);
        for (size_t i = 0; i < id2label->n; i++) {
            const char *key = id2label->keys[i];
            int v = fx_id2label_index(key, k.num_labels);
            if (v < 0 || seen[v]) {
                fx_seterr("%s: \"id2label\" key \"%s\": the keys must be the label indices 0 to %d, each once", path,
                          key, k.num_labels - 1);
                free(seen);
                goto out;
            }
            seen[v] = 1;
        }
        free(seen);
    } else {
        k.num_labels = 2;
    }
    k.family = &fx_roberta;
    *c = k;
    rc = 0;
out:
    fx_json_free(&root);
    return rc;
}

/* The config.json a saved model carries, as transformers' RobertaConfig reads it back. */
static void roberta_config_write(FILE *f, const fx_config *c, const char *const *names) {
    fprintf(f, "{\n  \"architectures\": [\"RobertaForSequenceClassification\"],\n");
    fprintf(f, "  \"model_type\": \"roberta\",\n");
    fprintf(f, "  \"vocab_size\": %d,\n  \"hidden_size\": %d,\n  \"num_hidden_layers\": %d,\n",
            c->vocab_size, c->hidden, c->layers);
    fprintf(f, "  \"num_attention_heads\": %d,\n  \"intermediate_size\": %d,\n", c->heads, c->intermediate);
    fprintf(f, "  \"max_position_embeddings\": %d,\n  \"type_vocab_size\": %d,\n",
            c->max_positions, c->type_vocab_size);
    /* RoBERTa's specials: <s> 0, <pad> 1, </s> 2 */
    fprintf(f, "  \"pad_token_id\": %d,\n  \"bos_token_id\": 0,\n  \"eos_token_id\": 2,\n", c->pad_id);
    fprintf(f, "  \"hidden_act\": \"gelu\",\n  \"position_embedding_type\": \"absolute\",\n");
    fprintf(f, "  \"layer_norm_eps\": "); fx_json_put_float(f, c->layer_norm_eps);
    fprintf(f, ",\n  \"hidden_dropout_prob\": "); fx_json_put_float(f, c->hidden_dropout);
    fprintf(f, ",\n  \"attention_probs_dropout_prob\": "); fx_json_put_float(f, c->attention_dropout);
    fprintf(f, ",\n  \"initializer_range\": "); fx_json_put_float(f, c->initializer_range);
    /* HF counts labels by id2label; one label means regression (MSE). */
    fprintf(f, ",\n  \"problem_type\": \"%s\",\n",
            c->num_labels == 1 ? "regression" : "single_label_classification");
    /* id2label then label2id: the same names (the task's, else LABEL_i), mapped both ways */
    for (int way = 0; way < 2; way++) {
        fprintf(f, way ? "},\n  \"label2id\": {" : "  \"id2label\": {");
        for (int i = 0; i < c->num_labels; i++) {
            char dflt[24];
            snprintf(dflt, sizeof dflt, "LABEL_%d", i);
            char *q = fx_json_quote(names ? names[i] : dflt);
            if (way) fprintf(f, "%s%s: %d", i ? ", " : "", q, i);
            else fprintf(f, "%s\"%d\": %s", i ? ", " : "", i, q);
            free(q);
        }
    }
    fprintf(f, "}\n}\n");
}

/* tokenizer_config.json as transformers' RobertaTokenizer saves it: the specials, byte-level BPE without
 * a prefix space, and model_max_length, the tokens a row may hold (positions start after pad_token_id,
 * so max_position_embeddings - pad_token_id - 1: 512 for roberta-base). Without it transformers knows no
 * limit for the folder and lets longer rows through to an index error in the position embeddings. */
static void roberta_tokenizer_config_write(FILE *f, const fx_config *c) {
    fprintf(f, "{\n  \"tokenizer_class\": \"RobertaTokenizer\",\n  \"model_max_length\": %d,\n",
            c->max_positions - c->pad_id - 1);
    fprintf(f, "  \"bos_token\": \"<s>\",\n  \"eos_token\": \"</s>\",\n  \"unk_token\": \"<unk>\",\n"
               "  \"sep_token\": \"</s>\",\n  \"cls_token\": \"<s>\",\n  \"pad_token\": \"<pad>\",\n"
               "  \"mask_token\": \"<mask>\",\n");
    fprintf(f, "  \"add_prefix_space\": false,\n  \"errors\": \"replace\",\n  \"trim_offsets\": true\n}\n");
}

/* special_tokens_map.json as save_pretrained writes it: each special as an AddedToken, <mask> taking the
 * space before it (lstrip) as RoBERTa's tokenizer declares. */
static void roberta_special_tokens_write(FILE *f, const fx_config *c) {
    (void)c;
    static const char *const keys[7] = {"bos_token", "cls_token", "eos_token", "mask_token", "pad_token",
                                        "sep_token", "unk_token"};
    static const char *const toks[7] = {"<s>", "<s>", "</s>", "<mask>", "<pad>", "</s>", "<unk>"};
    fprintf(f, "{\n");
    for (int i = 0; i < 7; i++) {
        int mask = i == 3;
        fprintf(f, "  \"%s\": {\"content\": \"%s\", \"lstrip\": %s, \"normalized\": %s, \"rstrip\": false, "
                   "\"single_word\": false}%s\n", keys[i], toks[i], mask ? "true" : "false", mask ? "false" : "true",
                i < 6 ? "," : "");
    }
    fprintf(f, "}\n");
}

/* The family is config.json's "model_type": "gpt2", "llama" (or "mistral"), "roberta" (or a name of its
 * architecture below), or none at all
 * (RoBERTa: older fedex folders named none); any other is refused, as is a key given twice at the top
 * (which of the two would count is a guess: Python's json takes the last, fedex's reader the first). */
int fx_config_load(const char *path, fx_config *c) {
    fx_json root;
    if (fx_json_load(path, &root) != 0) return -1;
    if (root.type != FX_JOBJ) { fx_json_free(&root); fx_seterr("%s: not a JSON object", path); return -1; }
    const char *dup = fx_json_duplicate_key(&root);
    if (dup) {
        fx_seterr("%s: \"%s\" is given twice", path, dup);
        fx_json_free(&root);
        return -1;
    }
    const fx_json *t = fx_json_get(&root, "model_type");
    if (t && t->type != FX_JSTR) { fx_json_free(&root); fx_seterr("%s: \"model_type\" is not a string", path); return -1; }
    int gpt2 = t && !strcmp(t->str, fx_gpt2.model_type);
    int llama = t && (!strcmp(t->str, fx_llama.model_type) || !strcmp(t->str, "mistral"));
    /* XLM-R and CamemBERT are RoBERTa's architecture under other names (transformers subclasses it) */
    if (t && !gpt2 && !llama && strcmp(t->str, fx_roberta.model_type) && strcmp(t->str, "xlm-roberta") &&
        strcmp(t->str, "camembert")) {
        fx_seterr("%s: model_type \"%s\" is not a family fedex runs (roberta, xlm-roberta, camembert, gpt2, llama, "
                  "mistral)", path, t->str);
        fx_json_free(&root);
        return -1;
    }
    fx_json_free(&root);
    return gpt2 ? fx_gpt2.config_load(path, c) : llama ? fx_llama.config_load(path, c) : roberta_config_load(path, c);
}

const fx_family *fx_config_family(const fx_config *c) { return c->family ? c->family : &fx_roberta; }

/* ============================================================================================
 * position ids
 * ============================================================================================ */

/* Positions as HF's create_position_ids_from_input_ids: pad + running count of non-pad tokens; pad
 * tokens get pad itself. */
void fx_batch_positions(const fx_config *c, const fx_batch *b, int32_t *pos /* (n, T) */) {
    for (int i = 0; i < b->n; i++) {
        int count = 0;
        for (int t = 0; t < b->T; t++) {
            int32_t id = b->ids[(size_t)i * b->T + t];
            pos[(size_t)i * b->T + t] = id != c->pad_id ? c->pad_id + ++count : c->pad_id;
        }
    }
}

/* ============================================================================================
 * tensors: Hugging Face's state-dict order, shapes, and RobertaPreTrainedModel._init_weights's rule
 * ============================================================================================
 * Linear and Embedding weights N(0, initializer_range), the padding_idx row of the word and position
 * embeddings zeroed, biases 0, LayerNorm 1 and 0. The head (a new classifier in HF) follows the same. */

/* A linear layer's weight (out, in) and bias (out); a LayerNorm's weight and bias (H). */
#define LINEAR(path, w, b, out, in) {path ".weight", w, out, in, FX_INIT_NORMAL, 0, 0}, {path ".bias", b, out, 0, FX_INIT_ZERO, 0, 0}
#define NORM(path, w, b) {path ".weight", w, 'H', 0, FX_INIT_ONE, 0, 0}, {path ".bias", b, 'H', 0, FX_INIT_ZERO, 0, 0}

static const fx_tensor_spec roberta_embed[] = {
    {"embeddings.word_embeddings.weight", FX_EMB_WORD, 'V', 'H', FX_INIT_NORMAL_PAD, 0, 0},
    {"embeddings.position_embeddings.weight", FX_EMB_POS, 'P', 'H', FX_INIT_NORMAL_PAD, 0, 0},
    {"embeddings.token_type_embeddings.weight", FX_EMB_TYPE, 'T', 'H', FX_INIT_NORMAL, 0, 0},
    NORM("embeddings.LayerNorm", FX_EMB_LN_W, FX_EMB_LN_B),
};

static const fx_tensor_spec roberta_layer[] = {
    LINEAR("attention.self.query", FX_LT_QW, FX_LT_QB, 'H', 'H'),
    LINEAR("attention.self.key", FX_LT_KW, FX_LT_KB, 'H', 'H'),
    LINEAR("attention.self.value", FX_LT_VW, FX_LT_VB, 'H', 'H'),
    LINEAR("attention.output.dense", FX_LT_AOW, FX_LT_AOB, 'H', 'H'),
    NORM("attention.output.LayerNorm", FX_LT_LN1W, FX_LT_LN1B),
    LINEAR("intermediate.dense", FX_LT_IW, FX_LT_IB, 'I', 'H'),
    LINEAR("output.dense", FX_LT_OW, FX_LT_OB, 'H', 'I'),
    NORM("output.LayerNorm", FX_LT_LN2W, FX_LT_LN2B),
};

/* RobertaClassificationHead: dense (H, H) + tanh on token 0, then out_proj (L, H). */
static const fx_tensor_spec roberta_head[] = {
    LINEAR("classifier.dense", FX_HEAD_DW, FX_HEAD_DB, 'H', 'H'),
    LINEAR("classifier.out_proj", FX_HEAD_OW, FX_HEAD_OB, 'L', 'H'),
};

/* The spec of base tensor I of M's table: the embeddings' first, then each layer's in turn. */
static const fx_tensor_spec *base_spec(const fx_family *f, int i) {
    return i < f->nembed ? &f->embed[i] : &f->layer[(i - f->nembed) % f->nlayer];
}

/* Fills one tensor by its rule, drawing from G only for the normal ones (row-major). */
static void init_tensor(float *d, const fx_tensor *t, int init, double sd, const fx_config *c, fx_rng *g) {
    if (init == FX_INIT_NORMAL_RESID) sd /= sqrt(2.0 * c->layers);
    if (init == FX_INIT_NORMAL || init == FX_INIT_NORMAL_PAD || init == FX_INIT_NORMAL_RESID) {
        for (size_t j = 0; j < t->n; j++) d[j] = (float)(sd * fx_rng_normal(g));
        if (init == FX_INIT_NORMAL_PAD) memset(d + (size_t)c->pad_id * c->hidden, 0, (size_t)c->hidden * sizeof *d);
    } else {
        for (size_t j = 0; j < t->n; j++) d[j] = init == FX_INIT_ONE ? 1.0f : 0.0f;
    }
}

/* One stream from SEED, tensors in table order; the head follows the base. A kept tensor is left as it
 * is and the stream jumps over the draws it would have taken (two per element of a normal one), so the
 * tensors drawn are those fx_model_init_base draws, bit for bit. */
void fx_model_init_except(fx_model *m, uint64_t seed, const unsigned char *keep) {
    fx_rng g;
    fx_rng_seed(&g, seed);
    double sd = m->c.initializer_range;
    uint64_t skip = 0; /* draws of the kept tensors since the last drawn one */
    float *tmp = NULL;   /* --precision bf16: a matrix drawn in fp32, then rounded */
    for (int i = 0; i < m->base.nt + m->fam->nhead; i++) {
        int head = i >= m->base.nt;
        const fx_tensor *t = head ? &m->train.t[m->head.t + i - m->base.nt] : &m->base.t[i];
        int init = head ? m->fam->head[i - m->base.nt].init : base_spec(m->fam, i)->init;
        if (keep && keep[i]) {
            if (init == FX_INIT_NORMAL || init == FX_INIT_NORMAL_PAD || init == FX_INIT_NORMAL_RESID) skip += 2 * (uint64_t)t->n;
            continue;
        }
        fx_rng_jump(&g, skip);
        skip = 0;
        if (!head && t->bf16) {
            tmp = fx_realloc(tmp, t->n * sizeof *tmp);
            init_tensor(tmp, t, init, sd, &m->c, &g);
            fx_base_write(m, t->off, t->n, tmp);
            continue;
        }
        init_tensor((head ? m->train.data : m->base.data) + t->off, t, init, sd, &m->c, &g);
    }
    free(tmp);
}

void fx_model_init_base(fx_model *m, uint64_t seed) { fx_model_init_except(m, seed, NULL); }

#define COUNT(a) ((int)(sizeof a / sizeof a[0]))

/* Every module of RobertaForSequenceClassification but the layers' six linears, for PEFT's selection. */
static const char *const roberta_modules[] = {
    "", "roberta", "roberta.embeddings", "roberta.embeddings.word_embeddings",
    "roberta.embeddings.position_embeddings", "roberta.embeddings.token_type_embeddings",
    "roberta.embeddings.LayerNorm", "roberta.embeddings.dropout", "roberta.encoder", "roberta.encoder.layer",
    "classifier", "classifier.dense", "classifier.dropout", "classifier.out_proj", NULL};
static const char *const roberta_layer_modules[] = {
    "", "attention", "attention.self", "attention.self.dropout", "attention.output", "attention.output.LayerNorm",
    "attention.output.dropout", "intermediate", "intermediate.intermediate_act_fn", "output", "output.LayerNorm",
    "output.dropout", NULL};

const fx_family fx_roberta = {
    .model_type = "roberta",
    .architecture = "RobertaForSequenceClassification",
    .prefix = "roberta.",
    .layer_fmt = "encoder.layer.%d.",
    .embed = roberta_embed, .nembed = COUNT(roberta_embed),
    .layer = roberta_layer, .nlayer = COUNT(roberta_layer),
    .head = roberta_head, .nhead = COUNT(roberta_head),
    .norm_place = FX_NORM_POST,
    .norm = FX_NORM_LAYERNORM,
    .fused_qkv = 0,
    .causal = 0,
    .positions = FX_POS_PAD_CUMSUM,
    .position_ids = fx_batch_positions,
    .act = FX_ACT_GELU,
    .head_kind = FX_HEAD_CLS_TANH,
    .tied_head = 0,
    .text = {.bos = 1, .eos_a = 1, .eos_b_lead = 1, .eos_b = 1}, /* <s> A </s></s> B </s> */
    .target_path = {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                    "intermediate.dense", "output.dense", NULL},
    .target_peft = {"query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense", NULL},
    .modules = roberta_modules, .layer_modules = roberta_layer_modules,
    .config_load = roberta_config_load,
    .config_write = roberta_config_write,
    .tokenizer_config_write = roberta_tokenizer_config_write,
    .special_tokens_write = roberta_special_tokens_write,
};
