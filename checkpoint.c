/* checkpoint.c: reads and writes Hugging Face checkpoints (config.json + model.safetensors, as
 * RobertaForSequenceClassification loads them) and PEFT adapters (adapter_config.json +
 * adapter_model.safetensors, LoRA and VeRA, with PEFT's key names). It moves tensors between files and the
 * model's named buffers; it computes nothing but the merge W0 + dW, which agg.c's fx_delta_w defines. */
#include "fedex.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <regex.h>
#include <unistd.h>
#include <sys/stat.h>

/* ============================================================================================
 * names and small text helpers
 * ============================================================================================
 * A full checkpoint prefixes the encoder's tensors with "roberta." (masked-LM checkpoints may carry them
 * without it); a PEFT adapter prefixes every module path with "base_model.model.", drops its adapter name
 * ("default") from the keys, and saves modules_to_save (our classifier head) under the module's own path. */

#define PEFT_PREFIX "base_model.model."
#define PATH_MAX_LEN 4096

/* Head tensor J of M (its name in both files and the model): the family's head, after the adapters. */
static const fx_tensor *head_tensor(const fx_model *m, int j) { return &m->train.t[m->head.t + j]; }

/* snprintf into a fixed buffer; -1 (with an error naming WHAT) if it did not fit. */
static int fmt(char *buf, size_t cap, const char *what, const char *f, ...) __attribute__((format(printf, 4, 5)));
static int fmt(char *buf, size_t cap, const char *what, const char *f, ...) {
    va_list ap;
    va_start(ap, f);
    int k = vsnprintf(buf, cap, f, ap);
    va_end(ap);
    if (k < 0 || (size_t)k >= cap) { fx_seterr("%s: name too long (%d characters)", what, k); return -1; }
    return 0;
}

static void shape_text(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t k = 0;
    k += (size_t)snprintf(buf + k, cap - k, "[");
    for (int d = 0; d < ndim && k < cap; d++)
        k += (size_t)snprintf(buf + k, cap - k, "%s%lld", d ? ", " : "", (long long)shape[d]);
    if (k < cap) snprintf(buf + k, cap - k, "]");
}

/* ============================================================================================
 * reading one tensor into a buffer
 * ============================================================================================ */

/* Checks that T is a float tensor (F32, F16 or BF16) of exactly SHAPE (ndim 1 or 2). WHO says where the
 * expected shape comes from, for the message ("config.json says", "the model has"). */
static int check_shape(const char *path, const fx_st_tensor *t, int ndim, const int *shape, const char *who) {
    if (t->dtype != FX_F32 && t->dtype != FX_F16 && t->dtype != FX_BF16) {
        fx_seterr("%s: tensor '%s' is %s; expected F32, F16 or BF16", path, t->name, fx_dtype_name(t->dtype));
        return -1;
    }
    int same = t->ndim == ndim;
    for (int d = 0; same && d < ndim; d++) same = t->shape[d] == shape[d];
    if (!same) {
        char got[128], want[128];
        int64_t w[2] = {shape[0], ndim > 1 ? shape[1] : 0};
        shape_text(got, sizeof got, t->ndim, t->shape);
        shape_text(want, sizeof want, ndim, w);
        fx_seterr("%s: tensor '%s' has shape %s, %s %s", path, t->name, got, who, want);
        return -1;
    }
    return 0;
}

/* The shape a base tensor has in a file: GPT-2's Conv1D weights are stored (in, out). */
static void file_shape(const fx_tensor *bt, int *shape) {
    shape[0] = bt->conv1d ? bt->shape[1] : bt->shape[0];
    shape[1] = bt->conv1d ? bt->shape[0] : bt->shape[1];
}

/* T as fp32 into DST (numel floats), refusing NaN and infinities. */
static int read_into(const fx_st_file *f, const fx_st_tensor *t, float *dst) {
    float *owned = NULL;
    const float *src = fx_st_f32(f, t, &owned);
    if (!src) return -1;
    size_t n = fx_st_numel(t);
    int rc = 0;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(src[i])) {
            fx_seterr("%s: tensor '%s' holds %g at element %zu: a non-finite weight would poison every "
                      "output", f->path, t->name, (double)src[i], i);
            rc = -1;
            break;
        }
    if (rc == 0) memcpy(dst, src, n * sizeof(float));
    free(owned);
    return rc;
}

/* read_into for base tensor BT: a Conv1D weight read (in, out) and stored (out, in). */
static int read_base(const fx_st_file *f, const fx_st_tensor *t, const fx_tensor *bt, float *dst) {
    if (!bt->conv1d) return read_into(f, t, dst);
    float *tmp = fx_malloc(bt->n * sizeof(float));
    int rc = read_into(f, t, tmp);
    if (rc == 0) fx_transpose(dst, tmp, bt->shape[1], bt->shape[0]);
    free(tmp);
    return rc;
}

/* read_base for a base tensor held in bf16 (--precision bf16): a BF16 tensor of the file is copied as it
 * is, never widened into an fp32 copy; another dtype is read as fp32 and rounded (nearest even). Non-finite
 * weights are refused alike. */
static int read_base_bf16(const fx_st_file *f, const fx_st_tensor *t, const fx_tensor *bt, uint16_t *dst) {
    if (t->dtype != FX_BF16) {
        float *tmp = fx_malloc(bt->n * sizeof(float));
        int rc = read_base(f, t, bt, tmp);
        if (rc == 0) fx_bf16_from_f32(dst, tmp, bt->n);
        free(tmp);
        return rc;
    }
    uint16_t *h = bt->conv1d ? fx_malloc(bt->n * sizeof *h) : dst;
    memcpy(h, f->data + t->begin, bt->n * sizeof *h);
    int rc = 0;
    for (size_t i = 0; i < bt->n; i++)
        if ((h[i] & 0x7f80) == 0x7f80) {
            fx_seterr("%s: tensor '%s' holds %g at element %zu: a non-finite weight would poison every "
                      "output", f->path, t->name, (double)fx_bf16_widen(h[i]), i);
            rc = -1;
            break;
        }
    if (bt->conv1d) { /* (in, out) in the file, (out, in) here */
        int out = bt->shape[0], in = bt->shape[1];
        for (int i = 0; rc == 0 && i < in; i++)
            for (int o = 0; o < out; o++) dst[(size_t)o * in + i] = h[(size_t)i * out + o];
        free(h);
    }
    return rc;
}

/* ============================================================================================
 * config.json
 * ============================================================================================ */

/* One of the folder's JSON files, DIR/NAME, from the family's writer (config.json with NAMES for its
 * labels, or a tokenizer file). */
static int write_family_file(const fx_config *c, const char *dir, const char *name, const char *const *names) {
    char path[PATH_MAX_LEN];
    if (fmt(path, sizeof path, dir, "%s/%s", dir, name) != 0) return -1;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) { fx_seterr("%s: cannot format the file: %s", path, strerror(errno)); return -1; }
    const fx_family *fam = fx_config_family(c);
    if (!strcmp(name, "config.json")) fam->config_write(f, c, names);
    else if (!strcmp(name, "tokenizer_config.json")) fam->tokenizer_config_write(f, c);
    else fam->special_tokens_write(f, c);
    return fx_write_memstream_atomic(f, &buf, &len, path);
}

/* ============================================================================================
 * full checkpoints: model.safetensors
 * ============================================================================================ */

int fx_model_has_weights(const char *dir) {
    int kind = fx_st_set_exists(dir);
    if (kind > 0) return 0;
    if (kind == 0)
        fx_seterr("%s/model.safetensors: no such file (nor model.safetensors.index.json): the folder has no "
                  "weights (download them, or make random ones of its shapes with `fedex init --config "
                  "%s/config.json --out NEWDIR`)", dir, dir);
    return -1;
}

int fx_model_load(fx_model *m, const char *dir) {
    char name[160];
    if (fx_model_has_weights(dir) != 0) return -1;
    fx_st_set set;
    if (fx_st_set_open(dir, &set) != 0) return -1;
    const char *path = fx_st_set_path(&set);
    const fx_st_file *f;
    int rc = -1;
    for (int i = 0; i < m->base.nt; i++) {
        const fx_tensor *bt = &m->base.t[i];
        if (fmt(name, sizeof name, path, "%s%s", m->fam->prefix, bt->name) != 0) goto done;
        const fx_st_tensor *t = fx_st_set_find(&set, name, &f);
        if (!t) t = fx_st_set_find(&set, bt->name, &f);
        if (!t) {
            fx_seterr("%s: no tensor '%s' (nor '%s'): not a %s checkpoint of config.json's shape",
                      path, name, bt->name, m->fam->architecture);
            goto done;
        }
        int shape[2];
        file_shape(bt, shape);
        if (check_shape(path, t, bt->ndim, shape, bt->conv1d ? "config.json says (Conv1D: in, out)"
                                                             : "config.json says") != 0) goto done;
        if ((bt->bf16 ? read_base_bf16(f, t, bt, m->base.bf + bt->off)
                      : read_base(f, t, bt, m->base.data + bt->off)) != 0) goto done;
    }
    /* The head, when the checkpoint has one of this model's shape (a fine-tuned classifier); a masked-LM
     * checkpoint (lm_head.*) or one fine-tuned for another label count keeps the fresh head. GPT-2's
     * head is wte itself (lm_head.weight, when a file carries it, is the same tensor and is not read), as
     * are older files' attn.bias / attn.masked_bias buffers. */
    const fx_st_tensor *ht[FX_HEAD_COUNT];
    const fx_st_file *hf[FX_HEAD_COUNT];
    const fx_tensor *mt[FX_HEAD_COUNT];
    int head = 1;
    for (int j = 0; j < m->fam->nhead; j++) {
        mt[j] = head_tensor(m, j);
        ht[j] = fx_st_set_find(&set, mt[j]->name, &hf[j]);
        if (!ht[j] || check_shape(path, ht[j], mt[j]->ndim, mt[j]->shape, "the model has") != 0)
            head = 0;
    }
    if (head)
        for (int j = 0; j < m->fam->nhead; j++)
            if (read_into(hf[j], ht[j], m->train.data + mt[j]->off) != 0) goto done;
    rc = head;
done:
    fx_st_set_close(&set);
    return rc;
}

int fx_model_load_init(fx_model *m, const char *dir, uint64_t seed) {
    int head = fx_model_load(m, dir);
    if (head < 0) return -1;
    /* every base tensor was read (a missing one is an error); the head when HEAD */
    unsigned char *keep = fx_malloc((size_t)m->base.nt + (size_t)m->fam->nhead + 1);
    memset(keep, 1, (size_t)m->base.nt);
    memset(keep + m->base.nt, head, (size_t)m->fam->nhead);
    fx_model_init_except(m, seed, keep);
    free(keep);
    return head;
}

/* model.safetensors and config.json (id2label from LABEL_NAMES, or LABEL_i when NULL). */
static int model_save(const fx_model *m, const char *dir, int merged, const char *const *label_names) {
    char path[PATH_MAX_LEN];
    if (fmt(path, sizeof path, dir, "%s/model.safetensors", dir) != 0) return -1;
    if (fx_mkdir_p(dir) != 0) return -1;
    int n = m->base.nt + m->fam->nhead, rc = -1;
    fx_st_entry *e = fx_calloc((size_t)n, sizeof *e);
    char **names = fx_calloc((size_t)n, sizeof *names);
    void **merged_w = fx_calloc((size_t)m->base.nt, sizeof *merged_w); /* tensors written from copies */
    double *dW = NULL;
    for (int i = 0; i < m->base.nt; i++) {
        const fx_tensor *bt = &m->base.t[i];
        const char *pre = bt->untied ? "" : m->fam->prefix; /* lm_head.weight sits outside "model." */
        names[i] = fx_malloc(strlen(pre) + strlen(bt->name) + 1);
        strcpy(names[i], pre);
        strcat(names[i], bt->name);
        e[i].name = names[i];
        e[i].dtype = bt->bf16 ? FX_BF16 : FX_F32; /* --precision bf16: written as held */
        e[i].ndim = bt->ndim;
        for (int d = 0; d < bt->ndim; d++) e[i].shape[d] = bt->shape[d];
        e[i].data = bt->bf16 ? (const void *)(m->base.bf + bt->off) : (const void *)(m->base.data + bt->off);
        if (bt->conv1d) { e[i].shape[0] = bt->shape[1]; e[i].shape[1] = bt->shape[0]; }
    }
    /* Merged: W = W0 + dW for each adapted layer (W0 already holds any FedEx residual), so the folder is a
     * plain fine-tuned model that needs no adapter code to run. */
    for (int k = 0; merged && k < m->nadapted; k++) {
        const fx_adapted *ad = &m->ad[k];
        int i = 0;
        while (i < m->base.nt && (m->base.t[i].off != ad->w_off || m->base.t[i].ndim != 2)) i++;
        if (i == m->base.nt) { fx_seterr("%s: no base tensor at the offset of %s's weight", path, ad->name); goto done; }
        size_t nw = (size_t)ad->out * (size_t)ad->in;
        dW = fx_realloc(dW, nw * sizeof *dW);
        fx_delta_w(m, k, m->train.data, dW);
        float *W = fx_malloc(nw * sizeof(float));
        fx_base_read(m, ad->w_off, nw, W); /* W0 */
        for (size_t j = 0; j < nw; j++) W[j] = (float)((double)W[j] + dW[j]);
        merged_w[i] = W;
        e[i].data = W;
        e[i].dtype = FX_F32;
    }
    /* Conv1D weights go out (in, out): transposed copies (of the merged weight where there is one). */
    for (int i = 0; i < m->base.nt; i++) {
        const fx_tensor *bt = &m->base.t[i];
        if (!bt->conv1d) continue;
        void *tw;
        if (e[i].dtype == FX_BF16) {
            const uint16_t *src = e[i].data;
            uint16_t *th = fx_malloc(bt->n * sizeof *th);
            for (int o = 0; o < bt->shape[0]; o++)
                for (int c = 0; c < bt->shape[1]; c++) th[(size_t)c * bt->shape[0] + o] = src[(size_t)o * bt->shape[1] + c];
            tw = th;
        } else {
            float *tf = fx_malloc(bt->n * sizeof(float));
            fx_transpose(tf, e[i].data, bt->shape[0], bt->shape[1]);
            tw = tf;
        }
        free(merged_w[i]);
        merged_w[i] = tw;
        e[i].data = tw;
    }
    for (int j = 0; j < m->fam->nhead; j++) {
        const fx_tensor *t = head_tensor(m, j);
        fx_st_entry *x = &e[m->base.nt + j];
        x->name = t->name;
        x->dtype = FX_F32;
        x->ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) x->shape[d] = t->shape[d];
        x->data = m->train.data + t->off;
    }
    const char *meta[] = {"format", "pt", NULL}; /* transformers refuses safetensors of other formats */
    if (fx_st_write(path, e, n, meta) != 0) goto done;
    rc = write_family_file(&m->c, dir, "config.json", label_names);
done:
    for (int i = 0; i < m->base.nt; i++) { free(names[i]); free(merged_w[i]); }
    free(names); free(merged_w); free(e); free(dW);
    return rc;
}

int fx_model_save(const fx_model *m, const char *dir, int merged) { return model_save(m, dir, merged, NULL); }
int fx_model_save_labels(const fx_model *m, const char *dir, const char *const *label_names) {
    return model_save(m, dir, 0, label_names);
}

int fx_model_export(const fx_model *m, const char *dir, int merged, const fx_task *task) {
    const char *const *names = task && task->names[0] && task->num_labels == m->c.num_labels ? task->names : NULL;
    if (model_save(m, dir, merged, names) != 0 ||
        write_family_file(&m->c, dir, "tokenizer_config.json", NULL) != 0 ||
        write_family_file(&m->c, dir, "special_tokens_map.json", NULL) != 0)
        return -1;
    return 0;
}

/* ============================================================================================
 * PEFT adapters: adapter_config.json
 * ============================================================================================
 * target_modules is PEFT's list of module-name suffixes. "output.dense" is a suffix of both
 * "attention.output.dense" and the layer's "output.dense", so a set holding the second without the first
 * cannot be a list: it is written as the regular expression PEFT full-matches against module names. */

/* S as a regular expression into BUF at *K: dots escaped, the layer number's "%d" as \d+. */
static void regex_put(char *buf, size_t cap, size_t *k, const char *s) {
    for (const char *p = s; *p && *k + 4 < cap; p++) {
        if (p[0] == '%' && p[1] == 'd') { memcpy(buf + *k, "\\d+", 3); *k += 3; p++; continue; }
        if (*p == '.') buf[(*k)++] = '\\';
        buf[(*k)++] = *p;
    }
    buf[*k] = 0;
}

/* The family's layers ("roberta\.encoder\.layer\.\d+\.") then the targets' paths as alternatives. */
static void targets_regex(const fx_family *fam, unsigned mask, char *buf, size_t cap) {
    size_t k = 0;
    regex_put(buf, cap, &k, fam->prefix);
    regex_put(buf, cap, &k, fam->layer_fmt);
    k += (size_t)snprintf(buf + k, cap - k, "(");
    int first = 1;
    for (int t = 0; t < FX_NTARGETS && k < cap; t++) {
        if (!(mask & fx_targets[t].bit)) continue;
        k += (size_t)snprintf(buf + k, cap - k, "%s", first ? "" : "|");
        first = 0;
        regex_put(buf, cap, &k, fam->target_path[t]);
    }
    if (k < cap) snprintf(buf + k, cap - k, ")");
}

static void put_targets(FILE *f, const fx_family *fam, unsigned mask) {
    if (fam->tied_head) { /* GPT-2: PEFT's names; "c_proj", a suffix, stands for attn.c_proj and mlp.c_proj */
        const unsigned both = FX_T_ATTN_OUT | FX_T_OUTPUT;
        int first = 1;
        fputc('[', f);
        for (int t = FX_NTARGETS - 1; t >= 0; t--) { /* c_attn first, as PEFT's default list */
            if (!(mask & fx_targets[t].bit) || ((mask & both) == both && fx_targets[t].bit == FX_T_OUTPUT)) continue;
            const char *name = (mask & both) == both && fx_targets[t].bit == FX_T_ATTN_OUT ? "c_proj" : fam->target_peft[t];
            fprintf(f, "%s\"%s\"", first ? "" : ", ", name);
            first = 0;
        }
        fputc(']', f);
        return;
    }
    if ((mask & FX_T_OUTPUT) && !(mask & FX_T_ATTN_OUT)) {
        char re[512];
        targets_regex(fam, mask, re, sizeof re);
        { char *q = fx_json_quote(re); fputs(q, f); free(q); }
        return;
    }
    fputc('[', f);
    int first = 1;
    for (int t = 0; t < FX_NTARGETS; t++) {
        if (!(mask & fx_targets[t].bit)) continue;
        fprintf(f, "%s\"%s\"", first ? "" : ", ", fam->target_peft[t]);
        first = 0;
    }
    fputc(']', f);
}

static int write_adapter_config(const fx_model *m, const char *dir, const char *base_model) {
    char path[PATH_MAX_LEN];
    if (fmt(path, sizeof path, dir, "%s/adapter_config.json", dir) != 0) return -1;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) { fx_seterr("%s: cannot format the file: %s", path, strerror(errno)); return -1; }
    const fx_adapter_cfg *a = &m->a;
    int lora = a->kind == FX_LORA;
    int lm = m->fam->head_kind == FX_HEAD_LM, fifo = 0;
    for (int k = 0; k < m->nadapted; k++) fifo |= m->ad[k].conv1d;
    /* SORF-VeRA is no PEFT type (the VeRA fork builds it by patching PEFT's VeRA): fedex's own name */
    fprintf(f, "{\n  \"peft_type\": \"%s\",\n  \"task_type\": \"%s\",\n",
            lora ? "LORA" : a->kind == FX_SORF ? "SORF_VERA" : "VERA", lm ? "CAUSAL_LM" : "SEQ_CLS");
    /* A local folder as an absolute path, so the file means the same from any directory; anything else
     * (a hub name such as "roberta-base") as given. */
    char abs[PATH_MAX];
    struct stat st;
    if (base_model && stat(base_model, &st) == 0 && S_ISDIR(st.st_mode) && realpath(base_model, abs)) base_model = abs;
    fprintf(f, "  \"base_model_name_or_path\": ");
    if (base_model) { char *q = fx_json_quote(base_model); fputs(q, f); free(q); }
    else fputs("null", f);
    fprintf(f, ",\n  \"revision\": null,\n  \"inference_mode\": true,\n");
    fprintf(f, "  \"r\": %d,\n  \"target_modules\": ", a->r);
    put_targets(f, m->fam, a->targets);
    fprintf(f, ",\n  \"modules_to_save\": %s,\n  \"bias\": \"none\",\n", lm ? "null" : "[\"classifier\"]");
    /* Conv1D layers (GPT-2) hold W as (in, out): PEFT applies (B A)^T to them */
    fprintf(f, "  \"fan_in_fan_out\": %s,\n  \"layers_to_transform\": null,\n  \"layers_pattern\": null,\n",
            fifo ? "true" : "false");
    if (lora) {
        fprintf(f, "  \"lora_alpha\": "); fx_json_put_float(f, a->alpha);
        fprintf(f, ",\n  \"lora_dropout\": "); fx_json_put_float(f, a->dropout);
        fprintf(f, ",\n  \"use_rslora\": %s,\n  \"use_dora\": false,\n", a->rslora ? "true" : "false");
        fprintf(f, "  \"init_lora_weights\": true,\n  \"rank_pattern\": {},\n  \"alpha_pattern\": {}\n}\n");
    } else {
        /* fedex draws vera_A and vera_B as PEFT does from projection_prng_key, so with save_projection
         * false PEFT redraws the same ones (on its CPU generator); by default they travel in the file. */
        fprintf(f, "  \"vera_dropout\": "); fx_json_put_float(f, a->dropout);
        fprintf(f, ",\n  \"d_initial\": "); fx_json_put_float(f, a->d_initial);
        fprintf(f, ",\n  \"projection_prng_key\": %u,\n  \"save_projection\": %s,\n", (unsigned)a->proj_key,
                a->skip_projection && a->kind == FX_VERA ? "false" : "true");
        if (a->kind == FX_SORF) fprintf(f, "  \"sorf_seed\": %llu,\n", (unsigned long long)a->sorf_seed);
        fprintf(f, "  \"init_weights\": true\n}\n");
    }
    return fx_write_memstream_atomic(f, &buf, &len, path);
}

/* PATH names an adapter folder, its .safetensors file or its adapter_config.json: both files' paths. */
static int adapter_paths(const char *path, char file[PATH_MAX_LEN], char cfg[PATH_MAX_LEN]) {
    struct stat st;
    if (stat(path, &st) != 0) { fx_seterr("%s: cannot open: %s", path, strerror(errno)); return -1; }
    if (S_ISDIR(st.st_mode))
        return fmt(file, PATH_MAX_LEN, path, "%s/adapter_model.safetensors", path) |
               fmt(cfg, PATH_MAX_LEN, path, "%s/adapter_config.json", path);
    const char *slash = strrchr(path, '/');
    int dl = slash ? (int)(slash - path) : 1;
    size_t n = strlen(path);
    if (n >= 5 && !strcmp(path + n - 5, ".json"))
        return fmt(cfg, PATH_MAX_LEN, path, "%s", path) |
               fmt(file, PATH_MAX_LEN, path, "%.*s/adapter_model.safetensors", dl, slash ? path : ".");
    return fmt(file, PATH_MAX_LEN, path, "%s", path) |
           fmt(cfg, PATH_MAX_LEN, path, "%.*s/adapter_config.json", dl, slash ? path : ".");
}

static int json_flag(const fx_json *j, const char *key, int *out, const char *path) {
    const fx_json *v = fx_json_get(j, key);
    if (!v || v->type == FX_JNULL) return 0;
    if (v->type != FX_JBOOL) { fx_seterr("%s: \"%s\" must be true or false", path, key); return -1; }
    *out = v->boolean;
    return 0;
}

/* adapter_config.json names no family of its own: fan_in_fan_out true says GPT-2 (PEFT sets it for
 * Conv1D layers), false RoBERTa. PEFT walks every module of the model (named_modules()) and adapts those
 * that target_modules selects: a list selects a module when one entry equals its name or is a suffix of
 * it after a dot (key == t or key.endswith("." + t)); a single string is a regular expression that must
 * match the whole name (re.fullmatch). fedex adapts the family's linear layers of every layer, so any
 * other module selected (the classifier's dense, a LayerNorm, a container) or a layer adapted in some
 * layers only is refused with the module's name. The family lists those other modules (fx_family.modules,
 * layer_modules). (RoBERTa's classifier is modules_to_save, trained whole; a LoRA inside it is something
 * PEFT's versions treat differently, and fedex does not attempt.) */

/* Python's re syntax as POSIX extended syntax, for the subset whose meaning is the same in both: literals,
 * ".", escaped punctuation, \d \w \s, classes [...], groups ( ) and (?: ), |, * + ? {m,n}, ^ $. Anything
 * else (lookarounds, named groups, backreferences, lazy quantifiers, \b) is refused: -1 and *WHY. Python
 * picks the leftmost alternative and POSIX the longest, but anchored at both ends the two match the same
 * names, which is all PEFT asks of them. */
static int py_regex_to_ere(const char *py, char *out, size_t cap, const char **why) {
    size_t k = 0;
#define PUT(s) do { size_t l_ = strlen(s); if (k + l_ + 1 > cap) { *why = "too long"; return -1; } \
                    memcpy(out + k, s, l_); k += l_; } while (0)
    for (const char *p = py; *p; p++) {
        char c = *p, one[3] = {c, 0, 0};
        if (c == '\\') {
            char e = p[1];
            if (e == 'd') PUT("[0-9]");
            else if (e == 'w') PUT("[A-Za-z0-9_]");
            else if (e == 's') PUT("[[:space:]]");
            else if (e && strchr(".^$|?*+()[]{}\\-/", e)) { one[0] = '\\'; one[1] = e; PUT(one); }
            else { *why = "an escape other than \\. \\d \\w \\s or escaped punctuation"; return -1; }
            p++;
        } else if (c == '(') {
            if (p[1] == '?') {
                if (p[2] != ':') { *why = "a (?...) group other than (?:...)"; return -1; }
                p += 2;
            }
            PUT("(");
        } else if (c == '[') { /* copied to its closing ']'; only \. \- \d escapes inside */
            PUT("[");
            p++;
            if (*p == '^') { PUT("^"); p++; }
            if (*p == ']') { PUT("]"); p++; }
            for (; *p && *p != ']'; p++) {
                if (*p == '\\') {
                    if (p[1] == 'd') { PUT("0-9"); p++; continue; }
                    if (p[1] == '.' || p[1] == '_') { one[0] = p[1]; one[1] = 0; PUT(one); p++; continue; }
                    *why = "an escape inside [...] other than \\. \\_ \\d";
                    return -1;
                }
                if (*p == '[') { *why = "a '[' inside [...]"; return -1; }
                one[0] = *p; one[1] = 0;
                PUT(one);
            }
            if (*p != ']') { *why = "an unclosed '['"; return -1; }
            PUT("]");
        } else if ((c == '*' || c == '+' || c == '?' || c == '}') && (p[1] == '?' || p[1] == '+')) {
            *why = "a lazy or possessive quantifier";
            return -1;
        } else {
            PUT(one);
        }
    }
    out[k] = 0;
    return 0;
#undef PUT
}

/* Compiles ^(PY)$ (PREFIX before it, when given) into RE; -1 with an error naming WHAT. */
static int compile_py_regex(regex_t *re, const char *prefix, const char *py, const char *what, const char *path) {
    char ere[1024], full[1100];
    const char *why = NULL;
    if (py_regex_to_ere(py, ere, sizeof ere, &why) != 0 ||
        (size_t)snprintf(full, sizeof full, "^%s(%s)$", prefix ? prefix : "", ere) >= sizeof full) {
        fx_seterr("%s: %s \"%s\" is a regular expression fedex does not read (%s); list the modules instead "
                  "(query, key, value, attention.output.dense, intermediate.dense, output.dense)", path, what, py,
                  why ? why : "too long");
        return -1;
    }
    if (regcomp(re, full, REG_EXTENDED | REG_NOSUB) != 0) {
        fx_seterr("%s: %s \"%s\" is not a valid regular expression", path, what, py);
        return -1;
    }
    return 0;
}

typedef struct {
    const fx_json *list;         /* a list of names and suffixes, or NULL */
    regex_t re;                  /* else the expression */
} target_matcher;

static int selects(const target_matcher *tm, const char *name) {
    if (!tm->list) return regexec(&tm->re, name, 0, NULL, 0) == 0;
    size_t n = strlen(name);
    for (size_t i = 0; i < tm->list->n; i++) {
        const char *t = tm->list->kids[i].str;
        size_t e = strlen(t);
        if (!strcmp(name, t) || (n > e && name[n - e - 1] == '.' && !strcmp(name + n - e, t))) return 1;
    }
    return 0;
}

/* Module name of target T in layer L: "roberta.encoder.layer.3.attention.self.query" (T -1: SUB). */
static void module_name(const fx_family *fam, char *buf, size_t cap, int l, int t, const char *sub) {
    char pre[64];
    snprintf(pre, sizeof pre, fam->layer_fmt, l);
    const char *s = t >= 0 ? fam->target_path[t] : sub;
    size_t k = (size_t)snprintf(buf, cap, "%s%s%s", fam->prefix, pre, s);
    if (!*s && k > 0 && k < cap) buf[k - 1] = 0; /* the layer itself: no trailing dot */
}

/* The targets V selects in a FAM model of LAYERS layers, as PEFT selects them. */
static int parse_targets(const fx_family *fam, const fx_json *v, int layers, unsigned *mask, const char *path) {
    target_matcher tm = {0};
    char name[256];
    int rc = -1, count[FX_NTARGETS] = {0};
    *mask = 0;
    if (v && v->type == FX_JSTR) {
        if (compile_py_regex(&tm.re, NULL, v->str, "target_modules", path) != 0) return -1;
    } else if (v && v->type == FX_JARR && v->n > 0) {
        for (size_t i = 0; i < v->n; i++)
            if (v->kids[i].type != FX_JSTR) {
                fx_seterr("%s: target_modules entry %zu is not a string", path, i);
                return -1;
            }
        tm.list = v;
    } else {
        fx_seterr("%s: target_modules must be a non-empty list of module names or a regular expression", path);
        return -1;
    }
    for (int g = 0; fam->modules[g]; g++)
        if (selects(&tm, fam->modules[g])) {
            const char *m = fam->modules[g];
            if (fam == &fx_llama)
                fx_seterr("%s: target_modules selects the module \"%s\", which fedex does not adapt: it adapts "
                          "Llama's q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj and down_proj", path, m);
            else if (fam->tied_head)
                fx_seterr("%s: target_modules selects the module \"%s\", which fedex does not adapt: it adapts "
                          "GPT-2's c_attn, c_proj (attn.c_proj and mlp.c_proj) and c_fc", path, m);
            else
                fx_seterr("%s: target_modules selects the module \"%s\"%s, which fedex does not adapt: it adapts "
                          "the encoder's query, key, value, attention.output.dense, intermediate.dense and "
                          "output.dense (name those, e.g. \"attention.output.dense\" rather than \"dense\")", path, m,
                          !strncmp(m, "classifier", 10) ? " (part of the classifier head, which fedex trains whole "
                                                          "as modules_to_save)" : "");
            goto done;
        }
    for (int l = 0; l < layers; l++) {
        for (int s = 0; fam->layer_modules[s]; s++) {
            module_name(fam, name, sizeof name, l, -1, fam->layer_modules[s]);
            if (selects(&tm, name)) {
                fx_seterr("%s: target_modules selects the module \"%s\", which is not a linear layer fedex can "
                          "adapt", path, name);
                goto done;
            }
        }
        for (int t = 0; t < FX_NTARGETS; t++) {
            if (!fam->target_path[t]) continue;
            module_name(fam, name, sizeof name, l, t, NULL);
            count[t] += selects(&tm, name);
        }
    }
    for (int t = 0; t < FX_NTARGETS; t++) {
        if (count[t] && count[t] != layers) {
            fx_seterr("%s: target_modules selects %s in %d of the %d layers: fedex adapts a module in every "
                      "layer or in none", path, fam->target_path[t], count[t], layers);
            goto done;
        }
        if (count[t]) *mask |= fx_targets[t].bit;
    }
    if (!*mask) {
        fx_seterr("%s: target_modules selects none of the model's modules", path);
        goto done;
    }
    rc = 0;
done:
    if (!tm.list) regfree(&tm.re);
    return rc;
}

/* PEFT's rank_pattern and alpha_pattern override r and lora_alpha per module: the first key K (in the
 * file's order) for which (.*\.)?(K)$ matches the module's whole name gives its value (PEFT's
 * get_pattern_key), other modules keep the default. fedex holds one rank and one scale for every adapted
 * layer, so a pattern is honoured when it gives every adapted module the same value, which then replaces
 * the default, and refused by name when it does not. */
static int resolve_pattern(const fx_family *fam, const fx_json *j, const char *key, int layers, unsigned mask,
                           double dflt, int integer, double *out, const char *path) {
    const fx_json *p = fx_json_get(j, key);
    *out = dflt;
    if (!p || p->type == FX_JNULL) return 0;
    if (p->type != FX_JOBJ) { fx_seterr("%s: %s must be an object", path, key); return -1; }
    if (p->n == 0) return 0;
    regex_t *re = fx_calloc(p->n, sizeof *re);
    size_t ncomp = 0;
    int rc = -1, have = 0;
    char name[256], first[256] = "";
    for (; ncomp < p->n; ncomp++) {
        const fx_json *v = &p->kids[ncomp];
        if (v->type != FX_JNUM || !isfinite(v->num) || v->num < 0 || v->num > 1e6 ||
            (integer && (!v->is_int || v->inum < 1 || v->inum > 65536))) {
            fx_seterr("%s: %s[\"%s\"] must be %s", path, key, p->keys[ncomp],
                      integer ? "an integer from 1 to 65536" : "a number in [0, 1e6)");
            goto done;
        }
        if (compile_py_regex(&re[ncomp], "(.*\\.)?", p->keys[ncomp], key, path) != 0) goto done;
    }
    for (int l = 0; l < layers; l++)
        for (int t = 0; t < FX_NTARGETS; t++) {
            if (!(mask & fx_targets[t].bit)) continue;
            module_name(fam, name, sizeof name, l, t, NULL);
            double val = dflt;
            for (size_t i = 0; i < p->n; i++)
                if (regexec(&re[i], name, 0, NULL, 0) == 0) { val = p->kids[i].num; break; }
            if (!have) { *out = val; have = 1; snprintf(first, sizeof first, "%s", name); continue; }
            if (val != *out) {
                fx_seterr("%s: %s is not supported: it gives %s %s %g and %s %g, and fedex uses one %s for "
                          "every adapted layer", path, key, first, integer ? "r" : "lora_alpha", *out, name, val,
                          integer ? "rank" : "scale");
                goto done;
            }
        }
    rc = 0;
done:
    for (size_t i = 0; i < ncomp; i++) regfree(&re[i]);
    free(re);
    return rc;
}

/* A file names no model type, so the family is told by fan_in_fan_out (GPT-2's Conv1D) and, for
 * nn.Linear models, by the target names: Llama's all end in "_proj" (a list entry, or the regex). */
static int names_llama(const fx_json *v) {
    if (v && v->type == FX_JSTR) return strstr(v->str, "_proj") != NULL;
    for (size_t i = 0; v && v->type == FX_JARR && i < v->n; i++) {
        const fx_json *e = &v->kids[i];
        if (e->type == FX_JSTR && e->slen >= 5 && !strcmp(e->str + e->slen - 5, "_proj")) return 1;
    }
    return 0;
}

/* adapter_config.json at WHERE as the adapter of a model of LAYERS layers (its patterns and
 * target_modules are resolved for that many); *FAM the family it names by fan_in_fan_out. */
static int load_adapter_config(const char *where, int layers, fx_adapter_cfg *a, const fx_family **fam) {
    char file[PATH_MAX_LEN], path[PATH_MAX_LEN];
    fx_json j;
    int rc = -1;
    if (adapter_paths(where, file, path) != 0 || fx_json_load(path, &j) != 0) return -1;
    memset(a, 0, sizeof *a);
    const fx_json *pt = fx_json_get(&j, "peft_type"), *r = fx_json_get(&j, "r");
    if (!pt || pt->type != FX_JSTR || (strcmp(pt->str, "LORA") && strcmp(pt->str, "VERA") && strcmp(pt->str, "SORF_VERA"))) {
        fx_seterr("%s: peft_type must be \"LORA\", \"VERA\" or fedex's \"SORF_VERA\"", path);
        goto done;
    }
    a->kind = !strcmp(pt->str, "LORA") ? FX_LORA : !strcmp(pt->str, "VERA") ? FX_VERA : FX_SORF;
    int sorf = a->kind == FX_SORF;
    if (sorf) a->kind = FX_VERA; /* read as VeRA's fields, then marked */
    if (!r || r->type != FX_JNUM || !r->is_int || r->inum < 1 || r->inum > 65536) {
        fx_seterr("%s: r must be an integer from 1 to 65536", path);
        goto done;
    }
    a->r = (int)r->inum;
    int fifo = 0, dora = 0;
    if (json_flag(&j, "fan_in_fan_out", &fifo, path) != 0 || json_flag(&j, "use_dora", &dora, path) != 0 ||
        json_flag(&j, "use_rslora", &a->rslora, path) != 0)
        goto done;
    if (dora) { fx_seterr("%s: use_dora is not supported", path); goto done; }
    *fam = fifo ? &fx_gpt2 : names_llama(fx_json_get(&j, "target_modules")) ? &fx_llama : &fx_roberta;
    if (parse_targets(*fam, fx_json_get(&j, "target_modules"), layers, &a->targets, path) != 0) goto done;
    const fx_json *ex = fx_json_get(&j, "exclude_modules");
    if (ex && ex->type != FX_JNULL && !(ex->type == FX_JARR && ex->n == 0)) {
        fx_seterr("%s: exclude_modules is not supported: list the modules to adapt in target_modules", path);
        goto done;
    }
    const fx_json *bias = fx_json_get(&j, "bias"), *ltt = fx_json_get(&j, "layers_to_transform");
    if (bias && !(bias->type == FX_JSTR && !strcmp(bias->str, "none"))) {
        fx_seterr("%s: bias must be \"none\": trained biases are not supported", path);
        goto done;
    }
    if (ltt && ltt->type != FX_JNULL) {
        fx_seterr("%s: layers_to_transform must be null: fedex adapts every layer", path);
        goto done;
    }
    const char *numkeys[3] = {a->kind == FX_LORA ? "lora_alpha" : "d_initial",
                              a->kind == FX_LORA ? "lora_dropout" : "vera_dropout", NULL};
    float *dst[2] = {a->kind == FX_LORA ? &a->alpha : &a->d_initial, &a->dropout};
    for (int k = 0; numkeys[k]; k++) {
        const fx_json *v = fx_json_get(&j, numkeys[k]);
        if (!v || v->type == FX_JNULL) continue;
        if (v->type != FX_JNUM || !isfinite(v->num) || v->num < 0 || v->num > 1e6 ||
            (k == 1 && v->num >= 1)) {
            fx_seterr("%s: %s must be a number in [0, %s)", path, numkeys[k], k == 1 ? "1" : "1e6");
            goto done;
        }
        *dst[k] = (float)v->num;
    }
    if (a->kind == FX_LORA && !fx_json_get(&j, "lora_alpha")) a->alpha = 8; /* PEFT's default */
    if (a->kind == FX_VERA && !fx_json_get(&j, "d_initial")) a->d_initial = 0.1f;
    if (a->kind == FX_VERA) {
        const fx_json *key = fx_json_get(&j, "projection_prng_key");
        int save = 1;
        if (key && (key->type != FX_JNUM || !key->is_int || key->inum < 0 || key->inum > 0xffffffffLL)) {
            fx_seterr("%s: projection_prng_key must be an integer in [0, 4294967295]", path);
            goto done;
        }
        a->proj_key = key ? (uint32_t)key->inum : 0; /* PEFT's default */
        if (json_flag(&j, "save_projection", &save, path) != 0) goto done;
        if (!fx_json_get(&j, "save_projection")) save = 1;
        a->skip_projection = !save;
    }
    double r_all, alpha_all;
    if (resolve_pattern(*fam, &j, "rank_pattern", layers, a->targets, a->r, 1, &r_all, path) != 0 ||
        resolve_pattern(*fam, &j, "alpha_pattern", layers, a->targets, a->alpha, 0, &alpha_all, path) != 0)
        goto done;
    if (a->kind == FX_VERA && (r_all != a->r || alpha_all != a->alpha)) {
        fx_seterr("%s: rank_pattern and alpha_pattern are LoRA's; a VeRA adapter has one rank", path);
        goto done;
    }
    a->r = (int)r_all;
    if (a->kind == FX_LORA) a->alpha = (float)alpha_all;
    if (sorf) {
        const fx_json *ss = fx_json_get(&j, "sorf_seed");
        if (!ss || ss->type != FX_JNUM || !ss->is_int || ss->inum < 0) { fx_seterr("%s: sorf_seed must be an integer", path); goto done; }
        a->sorf_seed = (uint64_t)ss->inum;
        a->kind = FX_SORF;
        a->skip_projection = 0;
    }
    rc = 0;
done:
    fx_json_free(&j);
    return rc;
}

/* Without the model, the patterns are resolved for one layer; fx_adapter_load checks them again for every
 * layer of the model it loads into. */
int fx_adapter_config_load(const char *where, fx_adapter_cfg *a) {
    const fx_family *fam;
    return load_adapter_config(where, 1, a, &fam);
}

/* ============================================================================================
 * PEFT adapters: adapter_model.safetensors
 * ============================================================================================
 * LoRA:  base_model.model.roberta.<layer>.lora_A.weight (r, in), ...lora_B.weight (out, r)
 * VeRA:  base_model.model.roberta.<layer>.vera_lambda_d (r), ...vera_lambda_b (out),
 *        base_model.vera_A (r, in_max), base_model.vera_B (out_max, r)
 * head:  base_model.model.classifier.{dense,out_proj}.{weight,bias}                              */

static int adapter_key(const fx_model *m, int k, int second, char *buf, size_t cap) {
    const char *suffix = m->a.kind == FX_LORA ? (second ? "lora_B.weight" : "lora_A.weight")
                                              : (second ? "vera_lambda_b" : "vera_lambda_d");
    return fmt(buf, cap, m->ad[k].name, PEFT_PREFIX "%s%s.%s", m->fam->prefix, m->ad[k].name, suffix);
}

/* The shape of adapted layer K's first (A or lambda_d) or second (B or lambda_b) tensor. */
static int adapter_shape(const fx_model *m, int k, int second, int *shape) {
    int r = m->a.r, in = m->ad[k].in, out = m->ad[k].out;
    if (m->a.kind == FX_VERA) { shape[0] = second ? out : r; shape[1] = 0; return 1; }
    shape[0] = second ? out : r;
    shape[1] = second ? r : in;
    return 2;
}

/* SORF-VeRA's file: every trainable tensor by its model.c name under PEFT's prefixes (the VeRA fork's
 * sorf_d_scale, sorf_d_angles, sorf_b_real, sorf_b_imag, then the head), vera_A and vera_B, and each
 * mixer's signs (3, 3, d) and permutations (3, d) as base_model.sorf_S_<d>.signs / .perm, so that the
 * file alone gives dW (tools/check_agg.py rebuilds S from them). */
static int sorf_save(const fx_model *m, const char *path) {
    int n = m->train.nt + 2 + 2 * m->nsorf, rc;
    fx_st_entry *e = fx_calloc((size_t)n, sizeof *e);
    char (*names)[192] = fx_calloc((size_t)n, sizeof *names);
    int i = 0;
    for (int t = 0; t < m->train.nt; t++, i++) {
        const fx_tensor *tt = &m->train.t[t];
        snprintf(names[i], sizeof names[i], PEFT_PREFIX "%s%s", t < m->head.t ? m->fam->prefix : "", tt->name);
        e[i] = (fx_st_entry){.name = names[i], .dtype = FX_F32, .ndim = tt->ndim, .data = m->train.data + tt->off};
        for (int d = 0; d < tt->ndim; d++) e[i].shape[d] = tt->shape[d];
    }
    e[i++] = (fx_st_entry){.name = "base_model.vera_A", .dtype = FX_F32, .ndim = 2, .shape = {m->a.r, m->vera_in}, .data = m->vera_A};
    e[i++] = (fx_st_entry){.name = "base_model.vera_B", .dtype = FX_F32, .ndim = 2, .shape = {m->vera_out, m->a.r}, .data = m->vera_B};
    for (int k = 0; k < m->nsorf; k++) {
        const fx_sorf_mixer *S = &m->sorf[k];
        snprintf(names[i], sizeof names[i], "base_model.sorf_S_%d.signs", S->d);
        e[i] = (fx_st_entry){.name = names[i], .dtype = FX_F32, .ndim = 3, .shape = {3, 3, S->d}, .data = S->signs};
        i++;
        snprintf(names[i], sizeof names[i], "base_model.sorf_S_%d.perm", S->d);
        e[i] = (fx_st_entry){.name = names[i], .dtype = FX_I32, .ndim = 2, .shape = {3, S->d}, .data = S->perm};
        i++;
    }
    const char *meta[] = {"format", "pt", NULL};
    rc = fx_st_write(path, e, n, meta);
    free(e); free(names);
    return rc;
}

int fx_adapter_save(const fx_model *m, const char *dir, const char *base_model) {
    char path[PATH_MAX_LEN];
    if (fmt(path, sizeof path, dir, "%s/adapter_model.safetensors", dir) != 0) return -1;
    if (fx_mkdir_p(dir) != 0) return -1;
    if (m->a.kind == FX_SORF) return sorf_save(m, path) != 0 ? -1 : write_adapter_config(m, dir, base_model);
    int vera = m->a.kind == FX_VERA && !m->a.skip_projection, n = 2 * m->nadapted + m->fam->nhead + 2 * vera;
    int rc = -1, i = 0;
    fx_st_entry *e = fx_calloc((size_t)n, sizeof *e);
    char (*names)[192] = fx_calloc((size_t)n, sizeof *names);
    for (int k = 0; k < m->nadapted; k++)
        for (int s = 0; s < 2; s++, i++) {
            int shape[2];
            if (adapter_key(m, k, s, names[i], sizeof names[i]) != 0) goto done;
            e[i].name = names[i];
            e[i].dtype = FX_F32;
            e[i].ndim = adapter_shape(m, k, s, shape);
            for (int d = 0; d < e[i].ndim; d++) e[i].shape[d] = shape[d];
            e[i].data = m->train.data + (s ? m->ad[k].b_off : m->ad[k].a_off);
        }
    for (int j = 0; j < m->fam->nhead; j++, i++) {
        const fx_tensor *t = head_tensor(m, j);
        snprintf(names[i], sizeof names[i], PEFT_PREFIX "%s", t->name);
        e[i].name = names[i];
        e[i].dtype = FX_F32;
        e[i].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) e[i].shape[d] = t->shape[d];
        e[i].data = m->train.data + t->off;
    }
    if (vera) {
        int in_max = m->vera_in, out_max = m->vera_out;
        e[i] = (fx_st_entry){.name = "base_model.vera_A", .dtype = FX_F32, .ndim = 2,
                             .shape = {m->a.r, in_max}, .data = m->vera_A};
        e[i + 1] = (fx_st_entry){.name = "base_model.vera_B", .dtype = FX_F32, .ndim = 2,
                                 .shape = {out_max, m->a.r}, .data = m->vera_B};
    }
    const char *meta[] = {"format", "pt", NULL};
    if (fx_st_write(path, e, n, meta) != 0) goto done;
    rc = write_adapter_config(m, dir, base_model);
done:
    free(e);
    free(names);
    return rc;
}

static const char *kind_name(fx_adapter_kind k) { return k == FX_LORA ? "LoRA" : k == FX_VERA ? "VeRA" : "SORF-VeRA"; }

/* adapter_config.json beside the tensors must describe the adapter the model was built for: the kind, the
 * rank, the adapted layers and (LoRA) the scale s, which the tensors alone do not reveal. */
static int check_adapter_config(const fx_model *m, const char *cfg_path) {
    fx_adapter_cfg a;
    const fx_family *fam;
    if (load_adapter_config(cfg_path, m->c.layers, &a, &fam) != 0) return -1;
    if (fam != m->fam) {
        fx_seterr("%s: fan_in_fan_out is %s and target_modules are %s's: the adapter is for a %s, the model is a %s",
                  cfg_path, fam == &fx_gpt2 ? "true" : "false", fam->model_type, fam->model_type, m->fam->model_type);
        return -1;
    }
    if (a.kind != m->a.kind) {
        fx_seterr("%s: the adapter is %s, the model was built for %s", cfg_path, kind_name(a.kind), kind_name(m->a.kind));
        return -1;
    }
    if (a.r != m->a.r) { fx_seterr("%s: r is %d, the model was built with r %d", cfg_path, a.r, m->a.r); return -1; }
    if (a.targets != m->a.targets) {
        fx_seterr("%s: target_modules name other layers than the model adapts (mask 0x%x, model 0x%x)",
                  cfg_path, a.targets, m->a.targets);
        return -1;
    }
    if (a.kind == FX_SORF && (a.sorf_seed != m->a.sorf_seed || a.proj_key != m->a.proj_key)) {
        fx_seterr("%s: sorf_seed %llu and projection_prng_key %u, the model's %llu and %u", cfg_path,
                  (unsigned long long)a.sorf_seed, (unsigned)a.proj_key, (unsigned long long)m->a.sorf_seed,
                  (unsigned)m->a.proj_key);
        return -1;
    }
    if (a.kind == FX_VERA && a.skip_projection && a.proj_key != m->a.proj_key) {
        fx_seterr("%s: the adapter's projections come from projection_prng_key %u (not saved), the model's from %u",
                  cfg_path, (unsigned)a.proj_key, (unsigned)m->a.proj_key);
        return -1;
    }
    if (a.kind == FX_LORA) {
        float s = a.rslora ? a.alpha / sqrtf((float)a.r) : a.alpha / (float)a.r;
        if (fabsf(s - m->scale) > 1e-6f * fabsf(m->scale)) {
            fx_seterr("%s: lora_alpha %g%s gives scale %g, the model uses %g", cfg_path, (double)a.alpha,
                      a.rslora ? " (rslora)" : "", (double)s, (double)m->scale);
            return -1;
        }
    }
    return 0;
}

/* SORF-VeRA's file as sorf_save writes it: every tensor present with its shape, the projections and mixers
 * equal to the model's own (drawn from the same projection_prng_key and sorf_seed), then copied. */
static int sorf_load(fx_model *m, const char *file) {
    fx_st_file f;
    if (fx_st_open(file, &f) != 0) return -1;
    int rc = -1, nt = m->train.nt;
    float *scratch = fx_malloc(sizeof(float) * (m->train.n + (size_t)m->a.r * m->vera_in + (size_t)m->vera_out * m->a.r + 1));
    char key[256];
    size_t used = 0;
    for (int t = 0; t < nt; t++) {
        const fx_tensor *tt = &m->train.t[t];
        snprintf(key, sizeof key, PEFT_PREFIX "%s%s", t < m->head.t ? m->fam->prefix : "", tt->name);
        const fx_st_tensor *x = fx_st_find(&f, key);
        if (!x) { fx_seterr("%s: no tensor '%s', which the model's SORF-VeRA adapter has", file, key); goto done; }
        if (check_shape(file, x, tt->ndim, tt->shape, "the model's has") != 0 || read_into(&f, x, scratch + tt->off) != 0) goto done;
        used++;
    }
    const char *vn[2] = {"base_model.vera_A", "base_model.vera_B"};
    const float *mine[2] = {m->vera_A, m->vera_B};
    size_t vsz[2] = {(size_t)m->a.r * m->vera_in, (size_t)m->vera_out * m->a.r};
    for (int v = 0; v < 2; v++) {
        const fx_st_tensor *x = fx_st_find(&f, vn[v]);
        if (!x || fx_st_numel(x) != vsz[v] || read_into(&f, x, scratch + m->train.n) != 0 ||
            memcmp(scratch + m->train.n, mine[v], sizeof(float) * vsz[v])) {
            fx_seterr("%s: '%s' is missing or not the model's (projection_prng_key %u)", file, vn[v], (unsigned)m->a.proj_key);
            goto done;
        }
        used++;
    }
    for (int k = 0; k < m->nsorf; k++) {
        const fx_sorf_mixer *S = &m->sorf[k];
        snprintf(key, sizeof key, "base_model.sorf_S_%d.signs", S->d);
        const fx_st_tensor *sg = fx_st_find(&f, key);
        snprintf(key, sizeof key, "base_model.sorf_S_%d.perm", S->d);
        const fx_st_tensor *pm = fx_st_find(&f, key);
        if (!sg || !pm || sg->dtype != FX_F32 || pm->dtype != FX_I32 || fx_st_numel(sg) != (size_t)9 * S->d ||
            fx_st_numel(pm) != (size_t)3 * S->d || memcmp(f.data + sg->begin, S->signs, sizeof(float) * 9 * S->d) ||
            memcmp(f.data + pm->begin, S->perm, sizeof(int32_t) * 3 * S->d)) {
            fx_seterr("%s: the mixer S of width %d is missing or not the model's (sorf_seed %llu)", file, S->d,
                      (unsigned long long)m->a.sorf_seed);
            goto done;
        }
        used += 2;
    }
    if (used != (size_t)f.n) { fx_seterr("%s: %zu tensors that are not the model's SORF-VeRA adapter", file, (size_t)f.n - used); goto done; }
    memcpy(m->train.data, scratch, sizeof(float) * m->train.n);
    rc = 0;
done:
    free(scratch);
    fx_st_close(&f);
    return rc;
}

int fx_adapter_load(fx_model *m, const char *path) {
    char file[PATH_MAX_LEN], cfg[PATH_MAX_LEN], key[192];
    struct stat st;
    if (adapter_paths(path, file, cfg) != 0) return -1;
    if (stat(cfg, &st) == 0 && check_adapter_config(m, cfg) != 0) return -1;
    fx_adapter_cfg saved = {0};
    const fx_family *saved_fam;
    int redraw = m->a.kind == FX_VERA && stat(cfg, &st) == 0 &&
                 load_adapter_config(cfg, m->c.layers, &saved, &saved_fam) == 0 &&
                 saved.skip_projection; /* save_projection false: the model's own, from the same key */
    if (m->a.kind == FX_SORF) return sorf_load(m, file);

    fx_st_file f;
    if (fx_st_open(file, &f) != 0) return -1;
    int rc = -1, njobs = 0;
    /* Validate everything first, then copy: a refused file leaves the model as it was. */
    int maxjobs = 2 * m->nadapted + m->fam->nhead + 2; /* + VeRA's two projections */
    const fx_st_tensor **src = fx_calloc((size_t)maxjobs, sizeof *src);
    float **dst = fx_calloc((size_t)maxjobs, sizeof *dst);
    char *used = fx_calloc((size_t)f.n + 1, 1);
    char what[96];
    snprintf(what, sizeof what, "the model's %s r %d has", kind_name(m->a.kind), m->a.r);
    for (int k = 0; k < m->nadapted; k++)
        for (int s = 0; s < 2; s++) {
            int shape[2], nd = adapter_shape(m, k, s, shape);
            if (adapter_key(m, k, s, key, sizeof key) != 0) goto done;
            const fx_st_tensor *t = fx_st_find(&f, key);
            if (!t) {
                fx_seterr("%s: no tensor '%s': the adapter does not cover %s, which the model adapts", file, key,
                          m->ad[k].name);
                goto done;
            }
            if (check_shape(file, t, nd, shape, what) != 0) goto done;
            used[t - f.t] = 1;
            src[njobs] = t;
            dst[njobs++] = m->train.data + (s ? m->ad[k].b_off : m->ad[k].a_off);
        }
    if (m->a.kind == FX_VERA) {
        int in_max = m->vera_in, out_max = m->vera_out;
        const char *vn[2] = {"base_model.vera_A", "base_model.vera_B"};
        int vs[2][2] = {{m->a.r, in_max}, {out_max, m->a.r}};
        for (int s = 0; s < 2; s++) {
            const fx_st_tensor *t = fx_st_find(&f, vn[s]);
            if (!t && redraw) continue;
            if (!t) {
                fx_seterr("%s: no tensor '%s', and adapter_config.json beside it does not say save_projection false",
                          file, vn[s]);
                goto done;
            }
            if (check_shape(file, t, 2, vs[s], what) != 0) goto done;
            used[t - f.t] = 1;
            src[njobs] = t;
            dst[njobs++] = s ? m->vera_B : m->vera_A;
        }
    }
    /* The head travels as PEFT's modules_to_save; an adapter without one keeps the model's head. */
    int nhead = 0;
    for (int j = 0; j < m->fam->nhead; j++) {
        const fx_tensor *mt = head_tensor(m, j);
        snprintf(key, sizeof key, PEFT_PREFIX "%s", mt->name);
        const fx_st_tensor *t = fx_st_find(&f, key);
        if (!t) continue;
        if (check_shape(file, t, mt->ndim, mt->shape, "the model's head has") != 0) goto done;
        used[t - f.t] = 1;
        src[njobs] = t;
        dst[njobs++] = m->train.data + mt->off;
        nhead++;
    }
    if (nhead != 0 && nhead != m->fam->nhead) {
        fx_seterr("%s: the classifier head is incomplete (%d of its %d tensors)", file, nhead, m->fam->nhead);
        goto done;
    }
    for (int i = 0; i < f.n; i++)
        if (!used[i]) {
            fx_seterr("%s: tensor '%s' is not part of the model's adapter (%s, r %d): was it trained for other "
                      "target modules?", file, f.t[i].name, kind_name(m->a.kind), m->a.r);
            goto done;
        }
    /* All checked; non-finite values are the last refusal, found while converting into scratch copies. */
    size_t total = 0;
    for (int i = 0; i < njobs; i++) total += fx_st_numel(src[i]);
    float *scratch = fx_malloc(total * sizeof(float)), *p = scratch;
    for (int i = 0; i < njobs; i++) {
        if (read_into(&f, src[i], p) != 0) { free(scratch); goto done; }
        p += fx_st_numel(src[i]);
    }
    p = scratch;
    for (int i = 0; i < njobs; i++) {
        size_t n = fx_st_numel(src[i]);
        memcpy(dst[i], p, n * sizeof(float));
        p += n;
    }
    free(scratch);
    rc = 0;
done:
    free(src); free(dst); free(used);
    fx_st_close(&f);
    return rc;
}

/* ============================================================================================
 * residual files
 * ============================================================================================ */

int fx_residual_load(fx_model *m, const char *path) {
    fx_st_file f;
    if (fx_st_open(path, &f) != 0) return -1;
    int rc = -1;
    const fx_tensor **dst = fx_calloc((size_t)f.n + 1, sizeof *dst);
    float *R = NULL;
    for (int i = 0; i < f.n; i++) { /* check all before adding any */
        const char *nm = f.t[i].name;
        size_t np = strlen(m->fam->prefix);
        if (!strncmp(nm, m->fam->prefix, np)) nm += np;
        dst[i] = fx_params_find(&m->base, nm);
        if (!dst[i]) { fx_seterr("%s: tensor '%s' names no base weight of the model", path, f.t[i].name); goto done; }
        int shape[2];
        file_shape(dst[i], shape);
        if (check_shape(path, &f.t[i], dst[i]->ndim, shape, dst[i]->conv1d ? "the model's Conv1D weight (in, out) has"
                                                                           : "the model's weight has") != 0)
            goto done;
    }
    size_t total = 0;
    for (int i = 0; i < f.n; i++) total += dst[i]->n;
    R = fx_malloc(total * sizeof(float));
    float *p = R;
    for (int i = 0; i < f.n; i++) { /* in the checkpoint's orientation, as the weight it is added to */
        if (read_base(&f, &f.t[i], dst[i], p) != 0) goto done;
        p += dst[i]->n;
    }
    p = R;
    for (int i = 0; i < f.n; i++) { /* W holds W0: the frozen weight fl(W0 + R), as every party forms it */
        if (dst[i]->bf16) { /* --precision bf16: bf16(fl(W0 + R)) */
            float *W0 = fx_malloc(dst[i]->n * sizeof(float));
            fx_base_read(m, dst[i]->off, dst[i]->n, W0);
            fx_frozen_weight_bf16(m->base.bf + dst[i]->off, W0, p, dst[i]->n);
            free(W0);
        } else {
            float *W = m->base.data + dst[i]->off;
            fx_frozen_weight(W, W, p, dst[i]->n);
        }
        p += dst[i]->n;
    }
    rc = 0;
done:
    free(R);
    free(dst);
    fx_st_close(&f);
    return rc;
}
