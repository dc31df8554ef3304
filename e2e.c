/* e2e.c: the E2E NLG data: strict reading of its CSV files (RFC 4180), the groups of references that share
 * a meaning representation, and the training sequences "{MR} -> {ref} <|endoftext|>" with per-token
 * targets as Hugging Face's language-modelling labels. It does not generate, score or train (generate.c,
 * the scorer and client.c do). */
#include "fedex.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Not a classification task: no label columns, no GLUE folder; its rows come from e2e.c. The dev loss is
 * its per-round figure (lower is better). */
const fx_task fx_e2e_task = {"e2e", NULL, NULL, 1, 2, 0, 1, -1, 0, {NULL, NULL, NULL}, {NULL, NULL, NULL},
                             "dev_loss", 1};

/* The files as the dataset ships them, in a folder given by --data. */
static const char *const e2e_files[3][2] = {
    {"train", "trainset.csv"}, {"dev", "devset.csv"}, {"test", "testset_w_refs.csv"}};

int fx_e2e_path(const char *data_dir, const char *split, const char *train_file, char *out, size_t cap) {
    for (int i = 0; i < 3; i++) {
        if (strcmp(split, e2e_files[i][0])) continue;
        int k = !strcmp(split, "train") && train_file ? snprintf(out, cap, "%s", train_file)
                                                       : snprintf(out, cap, "%s/%s", data_dir, e2e_files[i][1]);
        if (k < 0 || (size_t)k >= cap) { fx_seterr("%s/%s: path too long", data_dir, e2e_files[i][1]); return -1; }
        return 0;
    }
    fx_seterr("unknown split '%s' (train, dev or test)", split);
    return -1;
}

/* ============================================================================================
 * Reading a CSV file
 * ============================================================================================
 * RFC 4180 as the E2E files use it: a header `mr,ref` (each name may be quoted), then records of exactly
 * two fields. A field is either quoted, "...", with "" standing for one quote and commas and line breaks
 * inside it kept byte for byte, or unquoted, with no quote, comma or line break in it. Records end with
 * LF or CRLF; the last may end at the end of the file. A UTF-8 byte-order mark at the start is dropped.
 * Everything else is refused with the path and the line: invalid UTF-8, NUL bytes, a quote inside an
 * unquoted field, text after a closing quote, a quote never closed, a stray carriage return, a record
 * of another field count, an empty MR or reference, and an MR that comes back after other MRs (rows
 * that share an MR are adjacent in these files, and the groups are read from that). */

void fx_e2e_rows_free(fx_e2e_rows *r) {
    for (int i = 0; i < r->n; i++) { free(r->mr[i]); free(r->ref[i]); }
    free(r->mr); free(r->ref); free(r->line); free(r->group);
    memset(r, 0, sizeof *r);
}

/* Line and column (1-based, in bytes) of offset AT in DATA. */
static void where(const char *data, size_t at, int *line, size_t *col) {
    int l = 1;
    size_t start = 0;
    for (size_t i = 0; i < at; i++)
        if (data[i] == '\n') { l++; start = i + 1; }
    *line = l;
    *col = at - start + 1;
}

/* One field at data[*pos..len): its bytes into a malloc'd string; *pos moves past it (to the ',' or the
 * line end that follows); *line counts the line breaks inside a quoted field. */
static char *read_field(const char *path, const char *data, size_t len, size_t *pos, int *line) {
    size_t p = *pos;
    if (p < len && data[p] == '"') {
        int open_line = *line;
        char *out = fx_malloc(len - p + 1);
        size_t k = 0;
        for (p++;; p++) {
            if (p >= len) {
                fx_seterr("%s:%d: the quoted field opened here is never closed", path, open_line);
                free(out);
                return NULL;
            }
            if (data[p] == '"') {
                if (p + 1 < len && data[p + 1] == '"') { out[k++] = '"'; p++; continue; }
                p++;
                break;
            }
            if (data[p] == '\n') (*line)++;
            out[k++] = data[p];
        }
        if (p < len && data[p] != ',' && data[p] != '\n' && !(data[p] == '\r' && p + 1 < len && data[p + 1] == '\n')) {
            fx_seterr("%s:%d: text after the closing quote of a field (a quote inside a quoted field is "
                      "written \"\")", path, *line);
            free(out);
            return NULL;
        }
        out[k] = 0;
        *pos = p;
        return out;
    }
    size_t start = p;
    for (; p < len && data[p] != ',' && data[p] != '\n'; p++) {
        if (data[p] == '"') {
            fx_seterr("%s:%d: a quote inside an unquoted field (RFC 4180 quotes the whole field and doubles "
                      "the quotes in it)", path, *line);
            return NULL;
        }
        if (data[p] == '\r' && !(p + 1 < len && data[p + 1] == '\n')) {
            fx_seterr("%s:%d: a carriage return that does not end the line", path, *line);
            return NULL;
        }
        if (data[p] == '\r') break;
    }
    char *out = fx_malloc(p - start + 1);
    memcpy(out, data + start, p - start);
    out[p - start] = 0;
    *pos = p;
    return out;
}

/* One record of exactly two fields into F[0], F[1]; *pos past its line end. -1 with fx_err(). */
static int read_record(const char *path, const char *data, size_t len, size_t *pos, int *line, char **f) {
    int rec_line = *line, nf = 0;
    f[0] = f[1] = NULL;
    for (;;) {
        char *s = read_field(path, data, len, pos, line);
        if (!s) goto fail;
        if (nf < 2) f[nf] = s;
        else free(s);
        nf++;
        if (*pos < len && data[*pos] == ',') { (*pos)++; continue; }
        break;
    }
    if (*pos < len) { /* the line end: \n or \r\n */
        *pos += data[*pos] == '\r' ? 2 : 1;
        (*line)++;
    }
    if (nf != 2) {
        fx_seterr("%s:%d: %d field%s, expected 2 (mr, ref)", path, rec_line, nf, nf == 1 ? "" : "s");
        goto fail;
    }
    return 0;
fail:
    free(f[0]); free(f[1]);
    f[0] = f[1] = NULL;
    return -1;
}

/* Sorts group indices by their MR (ties by index), so that an MR in two groups sits in two neighbours. */
static const fx_e2e_rows *sort_rows;
static int by_mr(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    int c = strcmp(sort_rows->mr[sort_rows->group[i]], sort_rows->mr[sort_rows->group[j]]);
    return c ? c : (i > j) - (i < j);
}

int fx_e2e_read(const char *path, fx_e2e_rows *r) {
    memset(r, 0, sizeof *r);
    struct stat st;
    if (strcmp(path, "-") && strcmp(path, "/dev/stdin") && stat(path, &st) != 0 && errno == ENOENT) {
        fx_seterr("%s: no such file (this split is not in the data folder)", path);
        return -1;
    }
    char *data; size_t len;
    if (fx_read_file(path, &data, &len) != 0) return -1;
    size_t ok = fx_utf8_valid_prefix(data, len), col;
    int line;
    if (ok != len) {
        where(data, ok, &line, &col);
        fx_seterr("%s:%d: invalid UTF-8 (byte 0x%02X at column %zu)", path, line, (unsigned char)data[ok], col);
        free(data);
        return -1;
    }
    const char *nul = memchr(data, 0, len);
    if (nul) {
        where(data, (size_t)(nul - data), &line, &col);
        fx_seterr("%s:%d: NUL byte at column %zu", path, line, col);
        free(data);
        return -1;
    }
    size_t pos = len >= 3 && !memcmp(data, "\xEF\xBB\xBF", 3) ? 3 : 0;
    line = 1;
    char *f[2];
    if (pos >= len) { fx_seterr("%s: empty file (expected the header mr,ref)", path); free(data); return -1; }
    if (read_record(path, data, len, &pos, &line, f) != 0) goto fail;
    int header_ok = !strcmp(f[0], "mr") && !strcmp(f[1], "ref");
    free(f[0]); free(f[1]);
    if (!header_ok) { fx_seterr("%s:1: the header must be mr,ref", path); goto fail; }

    int cap = 0, gcap = 0;
    while (pos < len) {
        int at = line;
        if (read_record(path, data, len, &pos, &line, f) != 0) goto fail;
        if (!f[0][0] || !f[1][0]) {
            fx_seterr("%s:%d: empty %s", path, at, !f[0][0] ? "meaning representation (mr)" : "reference (ref)");
            free(f[0]); free(f[1]);
            goto fail;
        }
        if (r->n == cap) {
            cap = cap ? 2 * cap : 1024;
            r->mr = fx_realloc(r->mr, (size_t)cap * sizeof *r->mr);
            r->ref = fx_realloc(r->ref, (size_t)cap * sizeof *r->ref);
            r->line = fx_realloc(r->line, (size_t)cap * sizeof *r->line);
        }
        if (r->n == 0 || strcmp(f[0], r->mr[r->n - 1])) { /* a new group starts here */
            if (r->ngroups + 2 > gcap) {
                gcap = gcap ? 2 * gcap : 256;
                r->group = fx_realloc(r->group, (size_t)gcap * sizeof *r->group);
            }
            r->group[r->ngroups++] = r->n;
        }
        r->mr[r->n] = f[0];
        r->ref[r->n] = f[1];
        r->line[r->n] = at;
        r->n++;
    }
    free(data);
    data = NULL;
    if (r->n == 0) { fx_seterr("%s: no rows after the header", path); goto fail; }
    r->group[r->ngroups] = r->n;

    int *idx = fx_malloc((size_t)r->ngroups * sizeof *idx);
    for (int g = 0; g < r->ngroups; g++) idx[g] = g;
    sort_rows = r;
    qsort(idx, (size_t)r->ngroups, sizeof *idx, by_mr);
    for (int k = 1; k < r->ngroups; k++) {
        int a = idx[k - 1], b = idx[k];
        if (!strcmp(r->mr[r->group[a]], r->mr[r->group[b]])) {
            fx_seterr("%s:%d: this MR already had its rows at lines %d to %d (rows that share an MR must be "
                      "adjacent)", path, r->line[r->group[b]], r->line[r->group[a]], r->line[r->group[a + 1] - 1]);
            free(idx);
            goto fail;
        }
    }
    free(idx);
    return 0;
fail:
    free(data);
    fx_e2e_rows_free(r);
    return -1;
}

/* ============================================================================================
 * Texts, sequences and targets
 * ============================================================================================ */

int fx_e2e_slots(const char *mr) {
    int n = 0;
    for (; *mr; mr++) n += *mr == '[';
    return n;
}

char *fx_e2e_prompt(const char *mr) {
    size_t n = strlen(mr);
    char *s = fx_malloc(n + 4);
    memcpy(s, mr, n);
    memcpy(s + n, " ->", 4);
    return s;
}

char *fx_e2e_text(const char *mr, const char *ref) {
    size_t a = strlen(mr), b = strlen(ref);
    static const char mid[] = " -> ", end[] = " <|endoftext|>";
    char *s = fx_malloc(a + b + sizeof mid + sizeof end);
    memcpy(s, mr, a);
    memcpy(s + a, mid, sizeof mid - 1);
    memcpy(s + a + sizeof mid - 1, ref, b);
    memcpy(s + a + sizeof mid - 1 + b, end, sizeof end);
    return s;
}

/* The training sequence of one row: the ids of "{MR} -> {ref} <|endoftext|>" (truncated to MAX_LEN from
 * the right, as truncation=True does), and its prompt length: the ids of "{MR} ->" alone. Hugging Face's
 * labels are the ids themselves (the model shifts them), -100 on the prompt's positions and on padding;
 * so the reference, the space before the end token (its own token, 220) and the end token are learnt. */
static int row_sequence(fx_tokenizer *tok, const char *mr, const char *ref, int max_len, int32_t **ids, int *n,
                        int *cap, int *prompt) {
    static const fx_text_template none = {0, 0, 0, 0, 0};
    char *text = fx_e2e_text(mr, ref), *p = fx_e2e_prompt(mr);
    int start = *n, rc = fx_tok_encode_tpl(tok, &none, text, NULL, 0, ids, n, cap);
    int full = *n - start;
    if (rc == 0) rc = fx_tok_encode_tpl(tok, &none, p, NULL, 0, ids, n, cap);
    int plen = *n - start - full;
    /* The prompt's ids open the full sequence's: " ->" is a piece of its own before " {ref}". */
    if (rc == 0 && (plen > full || memcmp(*ids + start, *ids + start + full, (size_t)plen * sizeof **ids))) {
        fx_seterr("the ids of \"{MR} ->\" do not open those of the training text");
        rc = -1;
    }
    *n = start + (full < max_len ? full : max_len);
    *prompt = plen < max_len ? plen : max_len;
    free(text); free(p);
    return rc;
}

int fx_e2e_dataset(const fx_e2e_rows *r, const char *path, fx_tokenizer *tok, int max_len, fx_dataset *d) {
    memset(d, 0, sizeof *d);
    if (max_len < 2) { fx_seterr("max_len %d: must be at least 2", max_len); return -1; }
    d->task = &fx_e2e_task;
    d->off = fx_malloc(((size_t)r->n + 1) * sizeof *d->off);
    d->cls = fx_malloc((size_t)(r->n ? r->n : 1) * sizeof *d->cls);
    d->nclass = FX_E2E_CLASSES;
    int *prompt = fx_malloc((size_t)(r->n ? r->n : 1) * sizeof *prompt); /* (n) */
    int n = 0, cap = 0;
    d->off[0] = 0;
    for (int i = 0; i < r->n; i++) {
        int rc = row_sequence(tok, r->mr[i], r->ref[i], max_len, &d->ids, &n, &cap, &prompt[i]);
        if (rc == 0 && n - (int)d->off[i] <= prompt[i]) {
            fx_seterr("the prompt alone fills the %d tokens of --max-seq-length: no reference token is left to "
                      "learn", max_len);
            rc = -1;
        }
        if (rc != 0) {
            fx_seterr("%s:%d: %s", path, r->line[i], fx_err());
            free(prompt);
            fx_dataset_free(d);
            return -1;
        }
        d->off[i + 1] = (size_t)n;
        int slots = fx_e2e_slots(r->mr[i]);
        d->cls[i] = slots < FX_E2E_CLASSES ? slots : FX_E2E_CLASSES - 1;
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

int fx_e2e_load(const char *path, fx_tokenizer *tok, int max_len, fx_dataset *d) {
    fx_e2e_rows r;
    memset(d, 0, sizeof *d);
    if (fx_e2e_read(path, &r) != 0) return -1;
    int rc = fx_e2e_dataset(&r, path, tok, max_len, d);
    fx_e2e_rows_free(&r);
    return rc;
}
