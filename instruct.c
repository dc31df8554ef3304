/* instruct.c: instruction data for causal LMs: strict JSON Lines reading (prompt/completion, Alpaca's
 * instruction/input/output, GSM8K's question/answer, multiple-choice rows), the prompt through the
 * model's chat template (jinja.c) or a plain format, the training sequences with the loss on the
 * completion only and GSM8K's final-answer extraction. It does not train, generate, score a choice
 * (generate.c's fx_loglik) or aggregate (client.c, generate.c, run.c do; instruct_run.c evaluates a run's rounds). */
#include "fedex.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Language-model tasks (no classes, no GLUE folder): the dev loss is the round's figure (lower is
 * better); gsm8k and mc add their test metric (instruct_run.c). */
const fx_task fx_instruct_task = {"instruct", NULL, NULL, 0, 0, 0, -1, -1, 0, {NULL, NULL, NULL}, {NULL, NULL, NULL},
                                  "dev_loss", FX_LM_INSTRUCT};
const fx_task fx_gsm8k_task = {"gsm8k", NULL, NULL, 0, 0, 0, -1, -1, 0, {NULL, NULL, NULL}, {NULL, NULL, NULL},
                               "dev_loss", FX_LM_GSM8K};
const fx_task fx_mc_task = {"mc", NULL, NULL, 0, 0, 0, -1, -1, 0, {NULL, NULL, NULL}, {NULL, NULL, NULL},
                            "dev_loss", FX_LM_MC};

int fx_inst_path(const char *data_dir, const char *split, const char *train_file, char *out, size_t cap) {
    if (strcmp(split, "train") && strcmp(split, "dev")) { fx_seterr("unknown split '%s' (train or dev)", split); return -1; }
    int k = !strcmp(split, "train") && train_file ? snprintf(out, cap, "%s", train_file)
                                                   : snprintf(out, cap, "%s/%s.jsonl", data_dir, split);
    if (k < 0 || (size_t)k >= cap) { fx_seterr("%s/%s.jsonl: path too long", data_dir, split); return -1; }
    return 0;
}

/* ============================================================================================
 * The prompt: the chat template, or the plain format
 * ============================================================================================
 * Without a template (no chat_template in tokenizer_config.json, or --chat-template none) a user message
 * becomes Stanford Alpaca's prompt (its "no input" form: the input, when there is one, is already part of
 * the message, after a blank line):
 *   Below is an instruction that describes a task. Write a response that appropriately completes the
 *   request.\n\n### Instruction:\n{message}\n\n### Response:\n */

static const char alpaca_head[] = "Below is an instruction that describes a task. Write a response that appropriately "
                                  "completes the request.\n\n### Instruction:\n";
static const char alpaca_tail[] = "\n\n### Response:\n";

void fx_chat_free(fx_chat *c) {
    fx_jinja_free(c->tpl);
    free(c->bos); free(c->eos);
    memset(c, 0, sizeof *c);
}

/* A special token as tokenizer_config.json writes it: a string, an AddedToken {"content": ...}, or null. */
static int special_text(const char *path, const fx_json *root, const char *key, char **out) {
    const fx_json *v = fx_json_get(root, key);
    if (v && v->type == FX_JOBJ) v = fx_json_get(v, "content");
    if (!v || v->type == FX_JNULL) { *out = fx_strdup(""); return 0; }
    if (v->type != FX_JSTR) { fx_seterr("%s: %s must be a string or {\"content\": string}", path, key); return -1; }
    *out = fx_strdup(v->str);
    return 0;
}

int fx_chat_load(const char *model_dir, const char *mode, fx_chat *c) {
    memset(c, 0, sizeof *c);
    if (strcmp(mode, "auto") && strcmp(mode, "none")) { fx_seterr("--chat-template must be auto or none"); return -1; }
    char path[4096];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", model_dir);
    struct stat st;
    if (!strcmp(mode, "none") || stat(path, &st) != 0) return 0;
    fx_json j;
    if (fx_json_load(path, &j) != 0) return -1;
    int rc = -1;
    const fx_json *t = fx_json_get(&j, "chat_template");
    if (j.type != FX_JOBJ) { fx_seterr("%s: not a JSON object", path); goto done; }
    if (!t || t->type == FX_JNULL) { rc = 0; goto done; }
    if (t->type != FX_JSTR) {
        fx_seterr("%s: chat_template is not a string (a list of named templates is not supported)", path);
        goto done;
    }
    if (special_text(path, &j, "bos_token", &c->bos) != 0 || special_text(path, &j, "eos_token", &c->eos) != 0) goto done;
    char label[4200];
    snprintf(label, sizeof label, "%s: chat_template", path);
    if (!(c->tpl = fx_jinja_parse(t->str, t->slen, label))) goto done;
    rc = 0;
done:
    fx_json_free(&j);
    if (rc != 0) fx_chat_free(c);
    return rc;
}

char *fx_chat_prompt(const fx_chat *c, const char *user) {
    if (c->tpl) {
        fx_chat_msg m = {"user", user};
        return fx_jinja_render(c->tpl, &m, 1, c->bos, c->eos, 1);
    }
    size_t a = sizeof alpaca_head - 1, b = strlen(user), t = sizeof alpaca_tail;
    char *s = fx_malloc(a + b + t);
    memcpy(s, alpaca_head, a);
    memcpy(s + a, user, b);
    memcpy(s + a + b, alpaca_tail, t);
    return s;
}

/* ============================================================================================
 * Reading JSON Lines
 * ============================================================================================
 * One JSON object a line (LF or CRLF); lines of white space alone are skipped wherever they are. The
 * shapes, all values strings unless said otherwise, every key known and none twice:
 *   {"prompt": P, "completion": C}                   P as it is (no template), then C
 *   {"instruction": I, "input": X, "output": O}      the user message I, or I + "\n\n" + X when X is not
 *                                                    empty ("input" may be left out), then O
 *   {"question": Q, "answer": A}                     the user message Q, then A (GSM8K's files)
 *   mc: {"question" or "prompt": Q, "choices": [C0, C1, ...], "answer": K, "labels": [L0, ...]}
 *       Q as the user message (question) or as it is (prompt); K the 0-based index of the right choice
 *       (an integer), or a string: one of "labels" when given, else a letter A, B, ... The completion
 *       learnt is the right choice. */

void fx_inst_rows_free(fx_inst_rows *r) {
    for (int i = 0; i < r->n; i++) {
        free(r->prompt[i]); free(r->completion[i]);
        if (r->ref) free(r->ref[i]);
        if (r->choice) {
            for (int k = 0; k < r->nchoice[i]; k++) free(r->choice[i][k]);
            free(r->choice[i]);
        }
    }
    free(r->prompt); free(r->completion); free(r->raw); free(r->line); free(r->ref); free(r->choice); free(r->nchoice);
    free(r->answer);
    memset(r, 0, sizeof *r);
}

static const fx_json *key(const fx_json *o, const char *k) { return fx_json_get(o, k); }

/* A string field: present (or optional), a string without NUL; *s points into the JSON. */
static int str_field(const fx_json *o, const char *k, int required, const char **s, char *why, size_t n) {
    const fx_json *v = key(o, k);
    *s = NULL;
    if (!v) {
        if (required) snprintf(why, n, "missing key \"%s\"", k);
        return required ? -1 : 0;
    }
    if (v->type != FX_JSTR) { snprintf(why, n, "\"%s\" must be a string", k); return -1; }
    if (strlen(v->str) != v->slen) { snprintf(why, n, "\"%s\" holds a NUL character", k); return -1; }
    *s = v->str;
    return 0;
}

static char *join_message(const char *instr, const char *input) {
    if (!input || !*input) return fx_strdup(instr);
    size_t a = strlen(instr), b = strlen(input);
    char *s = fx_malloc(a + b + 3);
    memcpy(s, instr, a);
    memcpy(s + a, "\n\n", 2);
    memcpy(s + a + 2, input, b + 1);
    return s;
}

/* Row I of R from object O; -1 with WHY. */
static int read_row(const fx_task *t, const fx_chat *chat, const fx_json *o, fx_inst_rows *r, int i, char *why,
                    size_t wn) {
    static const char *const allowed[] = {"prompt", "completion", "instruction", "input", "output", "question",
                                          "answer", "choices", "labels"};
    int mc = t->lm == FX_LM_MC;
    for (size_t k = 0; k < o->n; k++) {
        int known = 0;
        for (size_t a = 0; a < sizeof allowed / sizeof *allowed; a++) known |= !strcmp(o->keys[k], allowed[a]);
        if (mc && (!strcmp(o->keys[k], "completion") || !strcmp(o->keys[k], "instruction") ||
                   !strcmp(o->keys[k], "input") || !strcmp(o->keys[k], "output")))
            known = 0;
        if (!mc && (!strcmp(o->keys[k], "choices") || !strcmp(o->keys[k], "labels"))) known = 0;
        if (!known) { snprintf(why, wn, "unknown key \"%s\"", o->keys[k]); return -1; }
        for (size_t m = 0; m < k; m++)
            if (!strcmp(o->keys[k], o->keys[m])) { snprintf(why, wn, "key \"%s\" given twice", o->keys[k]); return -1; }
    }
    const char *p = NULL, *q = NULL, *ins = NULL, *inp = NULL, *out = NULL, *comp = NULL, *ans = NULL;
    if (mc) {
        if (key(o, "prompt") && key(o, "question")) { snprintf(why, wn, "give \"question\" or \"prompt\", not both"); return -1; }
        if (str_field(o, key(o, "prompt") ? "prompt" : "question", 1, key(o, "prompt") ? &p : &q, why, wn) != 0) return -1;
        const fx_json *ch = key(o, "choices"), *lb = key(o, "labels"), *an = key(o, "answer");
        if (!ch) { snprintf(why, wn, "missing key \"choices\""); return -1; }
        if (ch->type != FX_JARR || ch->n < 2) { snprintf(why, wn, "\"choices\" must be a list of 2 or more strings"); return -1; }
        if (lb && (lb->type != FX_JARR || lb->n != ch->n)) {
            snprintf(why, wn, "\"labels\" must be a list of as many strings as \"choices\" (%zu)", ch->n);
            return -1;
        }
        for (size_t k = 0; k < ch->n; k++) {
            if (ch->kids[k].type != FX_JSTR || !ch->kids[k].slen || strlen(ch->kids[k].str) != ch->kids[k].slen) {
                snprintf(why, wn, "choice %zu must be a non-empty string without NUL", k);
                return -1;
            }
            if (lb && lb->kids[k].type != FX_JSTR) { snprintf(why, wn, "label %zu must be a string", k); return -1; }
        }
        if (!an) { snprintf(why, wn, "missing key \"answer\""); return -1; }
        int idx = -1;
        if (an->type == FX_JNUM) {
            if (!an->is_int || an->inum < 0 || an->inum >= (int64_t)ch->n) {
                snprintf(why, wn, "\"answer\" %g is not the index of a choice (0 to %zu)", an->num, ch->n - 1);
                return -1;
            }
            idx = (int)an->inum;
        } else if (an->type == FX_JSTR) {
            for (size_t k = 0; lb && k < lb->n; k++)
                if (!strcmp(lb->kids[k].str, an->str)) { idx = (int)k; break; }
            if (!lb && an->slen == 1 && an->str[0] >= 'A' && an->str[0] < 'A' + (int)ch->n) idx = an->str[0] - 'A';
            if (idx < 0) {
                snprintf(why, wn, lb ? "\"answer\" \"%.40s\" is none of \"labels\""
                                     : "\"answer\" \"%.40s\" is not a choice's letter (A for the first; or give \"labels\")",
                         an->str);
                return -1;
            }
        } else { snprintf(why, wn, "\"answer\" must be a choice's index or label"); return -1; }
        r->nchoice[i] = (int)ch->n;
        r->choice[i] = fx_malloc(ch->n * sizeof(char *));
        for (size_t k = 0; k < ch->n; k++) r->choice[i][k] = fx_strdup(ch->kids[k].str);
        r->answer[i] = idx;
        comp = ch->kids[idx].str;
    } else if (key(o, "prompt") || key(o, "completion")) {
        if (key(o, "instruction") || key(o, "input") || key(o, "output") || key(o, "question") || key(o, "answer")) {
            snprintf(why, wn, "\"prompt\"/\"completion\" rows take no other key");
            return -1;
        }
        if (str_field(o, "prompt", 1, &p, why, wn) != 0 || str_field(o, "completion", 1, &comp, why, wn) != 0) return -1;
    } else if (key(o, "instruction") || key(o, "output") || key(o, "input")) {
        if (key(o, "question") || key(o, "answer")) {
            snprintf(why, wn, "\"instruction\"/\"input\"/\"output\" rows take no other key");
            return -1;
        }
        if (str_field(o, "instruction", 1, &ins, why, wn) != 0 || str_field(o, "input", 0, &inp, why, wn) != 0 ||
            str_field(o, "output", 1, &out, why, wn) != 0)
            return -1;
        comp = out;
    } else if (key(o, "question") || key(o, "answer")) {
        if (str_field(o, "question", 1, &q, why, wn) != 0 || str_field(o, "answer", 1, &ans, why, wn) != 0) return -1;
        comp = ans;
    } else {
        snprintf(why, wn, "expected {\"prompt\", \"completion\"}, {\"instruction\", \"input\", \"output\"} or "
                          "{\"question\", \"answer\"}");
        return -1;
    }
    if (!*comp) { snprintf(why, wn, "the completion is empty: nothing to learn"); return -1; }
    if (p) {
        if (!*p) { snprintf(why, wn, "\"prompt\" is empty"); return -1; }
        r->prompt[i] = fx_strdup(p);
        r->raw[i] = 1;
    } else {
        const char *msg = ins ? ins : q;
        if (!*msg) { snprintf(why, wn, "\"%s\" is empty", ins ? "instruction" : "question"); return -1; }
        char *user = join_message(msg, inp);
        r->prompt[i] = fx_chat_prompt(chat, user);
        free(user);
        if (!r->prompt[i]) { snprintf(why, wn, "%s", fx_err()); return -1; }
        r->raw[i] = !chat->tpl;
    }
    r->completion[i] = fx_strdup(comp);
    if (t->lm == FX_LM_GSM8K) {
        char a[128];
        if (!fx_gsm8k_extract(comp, 1, a, sizeof a)) {
            snprintf(why, wn, "the answer has no final \"#### N\" (GSM8K's convention)");
            return -1;
        }
        r->ref[i] = fx_strdup(a);
    }
    return 0;
}

int fx_inst_read(const char *path, const fx_task *t, const fx_chat *chat, fx_inst_rows *r) {
    memset(r, 0, sizeof *r);
    struct stat st;
    if (strcmp(path, "-") && strcmp(path, "/dev/stdin") && stat(path, &st) != 0 && errno == ENOENT) {
        fx_seterr("%s: no such file (this split is not in the data folder)", path);
        return -1;
    }
    char *data; size_t len;
    if (fx_read_file(path, &data, &len) != 0) return -1;
    int cap = 0, line = 0, rc = 0;
    for (size_t pos = 0; pos < len && rc == 0;) {
        line++;
        const char *nl = memchr(data + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - data) : len, ll = end - pos;
        const char *s = data + pos;
        pos = nl ? end + 1 : len;
        size_t ok = fx_utf8_valid_prefix(s, ll);
        if (ok != ll) {
            fx_seterr("%s:%d: invalid UTF-8 (byte 0x%02X at column %zu)", path, line, (unsigned char)s[ok], ok + 1);
            rc = -1;
            break;
        }
        if (memchr(s, 0, ll)) { fx_seterr("%s:%d: NUL byte", path, line); rc = -1; break; }
        size_t k = 0;
        while (k < ll && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r')) k++;
        if (k == ll) continue;
        fx_json j;
        if (fx_json_parse(s, ll, &j) != 0) {
            const char *e = fx_err(), *c = strstr(e, "column");
            fx_seterr("%s:%d: %s", path, line, c ? c : e);
            rc = -1;
            break;
        }
        if (j.type != FX_JOBJ) {
            fx_seterr("%s:%d: a line must hold one JSON object", path, line);
            fx_json_free(&j);
            rc = -1;
            break;
        }
        if (r->n == cap) {
            cap = cap ? 2 * cap : 256;
            r->prompt = fx_realloc(r->prompt, (size_t)cap * sizeof *r->prompt);
            r->completion = fx_realloc(r->completion, (size_t)cap * sizeof *r->completion);
            r->raw = fx_realloc(r->raw, (size_t)cap * sizeof *r->raw);
            r->line = fx_realloc(r->line, (size_t)cap * sizeof *r->line);
            if (t->lm == FX_LM_GSM8K) r->ref = fx_realloc(r->ref, (size_t)cap * sizeof *r->ref);
            if (t->lm == FX_LM_MC) {
                r->choice = fx_realloc(r->choice, (size_t)cap * sizeof *r->choice);
                r->nchoice = fx_realloc(r->nchoice, (size_t)cap * sizeof *r->nchoice);
                r->answer = fx_realloc(r->answer, (size_t)cap * sizeof *r->answer);
            }
        }
        int i = r->n;
        r->prompt[i] = r->completion[i] = NULL;
        if (r->ref) r->ref[i] = NULL;
        if (r->choice) { r->choice[i] = NULL; r->nchoice[i] = 0; }
        r->line[i] = line;
        r->n++; /* counted before it is filled, so that a half-read row is freed with the rest */
        char why[512];
        if (read_row(t, chat, &j, r, i, why, sizeof why) != 0) {
            fx_seterr("%s:%d: %s", path, line, why);
            rc = -1;
        }
        fx_json_free(&j);
    }
    free(data);
    if (rc == 0 && r->n == 0) { fx_seterr("%s: no rows (one JSON object a line)", path); rc = -1; }
    if (rc != 0) fx_inst_rows_free(r);
    return rc;
}

/* ============================================================================================
 * Token sequences and targets
 * ============================================================================================
 * The prompt and the completion are tokenised apart and joined, so that the prompt's ids are the same in
 * training, in generation and in scoring. A raw prompt (the "prompt" key, or the plain format) opens with
 * the tokenizer's BOS when its template puts one first (Llama's add_bos_token); a templated prompt opens
 * with whatever the template writes (its bos_token), and special tokens written in it become their ids.
 * The completion is followed by the end token. Targets, as Hugging Face's labels: the ids on the
 * completion and the end token, FX_IGNORE (-100) on the prompt. Longer than max_len, the sequence is cut
 * on the right: the completion keeps its start (and loses its end, end token first). A prompt that leaves
 * no completion token inside max_len is refused with its line. */

int fx_inst_prompt_ids(fx_tokenizer *tok, const fx_inst_rows *r, int i, int32_t **ids, int *n, int *cap) {
    fx_text_template t = {r->raw[i] ? fx_tok_template(tok)->bos : 0, 0, 0, 0, 0};
    return fx_tok_encode_tpl(tok, &t, r->prompt[i], NULL, 0, ids, n, cap);
}

int fx_inst_text_ids(fx_tokenizer *tok, const char *text, int32_t **ids, int *n, int *cap) {
    static const fx_text_template none = {0, 0, 0, 0, 0};
    return fx_tok_encode_tpl(tok, &none, text, NULL, 0, ids, n, cap);
}

int fx_inst_dataset(const fx_inst_rows *r, const char *path, const fx_task *t, fx_tokenizer *tok, int max_len,
                    fx_dataset *d) {
    memset(d, 0, sizeof *d);
    if (max_len < 2) { fx_seterr("max_len %d: must be at least 2", max_len); return -1; }
    d->task = t;
    d->off = fx_malloc(((size_t)r->n + 1) * sizeof *d->off);
    d->cls = fx_calloc((size_t)(r->n ? r->n : 1), sizeof *d->cls);
    d->nclass = 1;
    int *prompt = fx_malloc((size_t)(r->n ? r->n : 1) * sizeof *prompt);
    int n = 0, cap = 0, eos = fx_tok_eos(tok);
    if (eos < 0) { /* a tokenizer.json folder whose configs name no eos_token */
        fx_seterr("%s: the tokenizer names no end token (eos_token in tokenizer_config.json) to end completions", path);
        free(prompt);
        fx_dataset_free(d);
        return -1;
    }
    d->off[0] = 0;
    for (int i = 0; i < r->n; i++) {
        int start = n, rc = fx_inst_prompt_ids(tok, r, i, &d->ids, &n, &cap);
        prompt[i] = n - start;
        if (rc == 0) rc = fx_inst_text_ids(tok, r->completion[i], &d->ids, &n, &cap);
        if (rc == 0) {
            if (n == cap) { cap = 2 * cap + 16; d->ids = fx_realloc(d->ids, (size_t)cap * sizeof *d->ids); }
            d->ids[n++] = eos;
            if (prompt[i] >= max_len) {
                fx_seterr("the prompt alone takes %d tokens, --max-seq-length is %d: no completion token is left to "
                          "learn", prompt[i], max_len);
                rc = -1;
            }
        }
        if (rc != 0) {
            fx_seterr("%s:%d: %s", path, r->line[i], fx_err());
            free(prompt);
            fx_dataset_free(d);
            return -1;
        }
        if (n - start > max_len) n = start + max_len;
        d->off[i + 1] = (size_t)n;
    }
    d->n = r->n;
    if (!d->ids) d->ids = fx_malloc(sizeof *d->ids);
    d->targets = fx_malloc((size_t)(n ? n : 1) * sizeof *d->targets);
    for (int i = 0; i < r->n; i++)
        for (size_t j = d->off[i]; j < d->off[i + 1]; j++)
            d->targets[j] = (int)(j - d->off[i]) < prompt[i] ? FX_IGNORE : d->ids[j];
    free(prompt);
    return 0;
}

/* ============================================================================================
 * GSM8K's final answer
 * ============================================================================================
 * GSM8K's references end with "#### N". The answer of a text: the token after its last "####" (spaces
 * skipped, up to the next white space); a generation without "####" answers with its last number (an
 * optional minus, then digits, commas and at most one decimal point, starting with a digit or "$").
 * Normalised: "$" and "," removed, a trailing "." dropped. References need their "####". */

static int is_num_char(char c) { return (c >= '0' && c <= '9') || c == ',' || c == '.' || c == '$'; }

static void normalise(const char *s, size_t n, char *out, size_t cap) {
    size_t k = 0;
    for (size_t i = 0; i < n && k + 1 < cap; i++)
        if (s[i] != '$' && s[i] != ',') out[k++] = s[i];
    while (k > 0 && out[k - 1] == '.') k--;
    out[k] = 0;
}

int fx_gsm8k_extract(const char *text, int reference, char *out, size_t cap) {
    const char *hash = NULL;
    for (const char *p = strstr(text, "####"); p; p = strstr(p + 1, "####")) hash = p;
    if (hash) {
        const char *p = hash + 4;
        while (*p == ' ' || *p == '\t') p++;
        size_t n = 0;
        while (p[n] && p[n] != ' ' && p[n] != '\t' && p[n] != '\n' && p[n] != '\r') n++;
        normalise(p, n, out, cap);
        return out[0] != 0;
    }
    if (reference) { out[0] = 0; return 0; }
    /* the last number: scan every run of number characters holding a digit */
    const char *best = NULL;
    size_t best_n = 0;
    for (const char *p = text; *p;) {
        if (!is_num_char(*p) && *p != '-') { p++; continue; }
        const char *s = p;
        if (*p == '-') p++;
        const char *q = p;
        while (is_num_char(*q)) q++;
        int digit = 0;
        for (const char *c = p; c < q; c++) digit |= *c >= '0' && *c <= '9';
        if (digit && (*p == '$' || (*p >= '0' && *p <= '9'))) { best = s; best_n = (size_t)(q - s); }
        p = q > s ? q : s + 1;
    }
    if (!best) { out[0] = 0; return 0; }
    normalise(best, best_n, out, cap);
    /* "$-5" and "-$5" alike; a lone "-" cannot survive (a digit was seen) */
    return out[0] != 0;
}
