/* json.c: a strict RFC 8259 reader that turns text into a tree of fx_json values, and the UTF-8 decoder
 * the rest of fedex shares. It refuses what the RFC refuses (comments, trailing commas, NaN, leading
 * zeros, raw control characters, lone surrogates, invalid UTF-8). It does not write JSON. */
#include "fedex.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ============================================================================================
 * limits
 * ============================================================================================ */

/* The parser recurses once per level of nesting. No file fedex reads nests deeper than 4; 512 levels of
 * a few hundred bytes of stack each stay far below any thread's stack, sanitizers included. */
#define JSON_MAX_DEPTH 512
/* A bound on the values of one document, so that memory stays bounded whatever the input: a value costs
 * sizeof(fx_json) (~90 bytes, up to twice that in a growing array) against as little as 2 bytes of text,
 * so a 100 MB array of zeros would take ~9 GB. 4M values (at most ~0.7 GB) hold the largest files fedex
 * reads: a safetensors header of 100k tensors (~1M values), a 256k-token tokenizer.json (~2M). */
#define JSON_MAX_VALUES (4u << 20)

/* ============================================================================================
 * UTF-8
 * ============================================================================================ */

int fx_utf8_next(const char *s, size_t len, uint32_t *cp) {
    if (len == 0) return 0;
    const unsigned char *u = (const unsigned char *)s;
    unsigned c = u[0];
    if (c < 0x80) { *cp = c; return 1; }
    /* Lead bytes 0x80-0xC1 are continuation bytes or overlong 2-byte forms; 0xF5-0xFF would start code
     * points above U+10FFFF. The minimum per length catches the remaining overlong forms. */
    int n;
    uint32_t v, min;
    if (c >= 0xC2 && c <= 0xDF)      { n = 2; v = c & 0x1F; min = 0x80; }
    else if ((c & 0xF0) == 0xE0)     { n = 3; v = c & 0x0F; min = 0x800; }
    else if (c >= 0xF0 && c <= 0xF4) { n = 4; v = c & 0x07; min = 0x10000; }
    else return 0;
    if (len < (size_t)n) return 0;
    for (int i = 1; i < n; i++) {
        if ((u[i] & 0xC0) != 0x80) return 0;
        v = (v << 6) | (u[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
    *cp = v;
    return n;
}

size_t fx_utf8_valid_prefix(const char *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        if ((unsigned char)s[i] < 0x80) { i++; continue; }
        uint32_t cp;
        int k = fx_utf8_next(s + i, len - i, &cp);
        if (!k) break;
        i += (size_t)k;
    }
    return i;
}

int fx_utf8_put(char *o, uint32_t cp) {
    if (cp < 0x80) { o[0] = (char)cp; return 1; }
    if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* ============================================================================================
 * parser state and errors
 * ============================================================================================ */

typedef struct {
    const char *s; /* the text, not NUL-terminated */
    size_t len, pos;
    int depth;
    size_t values;
} parser;

/* Line and column are counted here, on the error path only, so that parsing pays nothing for them.
 * Columns count characters: UTF-8 continuation bytes do not advance them. */
__attribute__((format(printf, 3, 4)))
static int fail_at(const parser *p, size_t at, const char *fmt, ...) {
    size_t line = 1, col = 1;
    for (size_t i = 0; i < at && i < p->len; i++) {
        unsigned char c = (unsigned char)p->s[i];
        if (c == '\n') { line++; col = 1; }
        else if ((c & 0xC0) != 0x80) col++;
    }
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fx_seterr("line %zu, column %zu: %s", line, col, msg);
    return -1;
}

/* "'x'" for a printable character, "byte 0xNN" otherwise. */
static const char *describe(char c, char buf[16]) {
    unsigned char u = (unsigned char)c;
    if (u >= 0x20 && u < 0x7F) snprintf(buf, 16, "'%c'", c);
    else snprintf(buf, 16, "byte 0x%02x", u);
    return buf;
}

static void skip_ws(parser *p) {
    while (p->pos < p->len) {
        char c = p->s[p->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        p->pos++;
    }
}

static int is_digit(char c) { return c >= '0' && c <= '9'; }

static int hex_val(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* ============================================================================================
 * values
 * ============================================================================================
 * Invariant: whatever a parse_* function returns, the value it filled can be given to fx_json_free,
 * so an error deep inside a document frees everything built so far from the root. */

static int parse_value(parser *p, fx_json *v);

/* Four hex digits at S[i..i+4) within [.., end) into *u; -1 if absent or not hex. */
static int read_hex4(const parser *p, size_t i, size_t end, uint32_t *u) {
    if (end - i < 4) return -1;
    uint32_t x = 0;
    for (int k = 0; k < 4; k++) {
        int h = hex_val(p->s[i + (size_t)k]);
        if (h < 0) return -1;
        x = x << 4 | (uint32_t)h;
    }
    *u = x;
    return 0;
}

/* A string starting at the opening quote at p->pos. Two passes: the first finds the closing quote (an
 * escape never grows when decoded, so that bounds the output); the second decodes and validates. */
static int parse_string(parser *p, char **out, size_t *outlen) {
    const char *s = p->s;
    size_t open = p->pos, end = open + 1;
    while (end < p->len && s[end] != '"') end += s[end] == '\\' ? 2 : 1;
    if (end >= p->len) return fail_at(p, open, "unterminated string");

    char *o = fx_malloc(end - open), *start = o;
    *out = start; /* owned by the caller from here on, so an error below frees it */
    *outlen = 0;
    size_t i = open + 1;
    while (i < end) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\') {
            char e = s[i + 1];
            switch (e) {
            case '"': *o++ = '"'; break;
            case '\\': *o++ = '\\'; break;
            case '/': *o++ = '/'; break;
            case 'b': *o++ = '\b'; break;
            case 'f': *o++ = '\f'; break;
            case 'n': *o++ = '\n'; break;
            case 'r': *o++ = '\r'; break;
            case 't': *o++ = '\t'; break;
            case 'u': {
                uint32_t u, lo;
                if (read_hex4(p, i + 2, end, &u) != 0)
                    return fail_at(p, i, "\\u must be followed by four hex digits");
                size_t next = i + 6;
                if (u >= 0xDC00 && u <= 0xDFFF)
                    return fail_at(p, i, "lone low surrogate \\u%04X", (unsigned)u);
                if (u >= 0xD800 && u <= 0xDBFF) {
                    /* UTF-16 surrogate pair: the code point is 0x10000 + (hi - 0xD800) * 0x400 + (lo - 0xDC00). */
                    if (end - next < 6 || s[next] != '\\' || s[next + 1] != 'u' ||
                        read_hex4(p, next + 2, end, &lo) != 0 || lo < 0xDC00 || lo > 0xDFFF)
                        return fail_at(p, i, "high surrogate \\u%04X is not followed by a low surrogate",
                                       (unsigned)u);
                    u = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00);
                    next += 6;
                }
                o += fx_utf8_put(o, u);
                i = next;
                continue;
            }
            default: {
                char b[16];
                return fail_at(p, i, "invalid escape \\ followed by %s", describe(e, b));
            }
            }
            i += 2;
        } else if (c < 0x20) {
            return fail_at(p, i, "control character 0x%02x in a string must be escaped", c);
        } else if (c < 0x80) {
            *o++ = (char)c;
            i++;
        } else {
            uint32_t cp;
            int k = fx_utf8_next(s + i, end - i, &cp);
            if (!k) return fail_at(p, i, "invalid UTF-8 (byte 0x%02x) in a string", c);
            memcpy(o, s + i, (size_t)k);
            o += k;
            i += (size_t)k;
        }
    }
    *o = 0;
    *outlen = (size_t)(o - start);
    p->pos = end + 1;
    return 0;
}

/* RFC 8259 number: -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)? */
static int parse_number(parser *p, fx_json *v) {
    const char *s = p->s;
    size_t n = p->len, start = p->pos, i = start;
    int neg = 0, integral = 1;
    if (s[i] == '-') { neg = 1; i++; }
    if (i >= n || !is_digit(s[i])) return fail_at(p, i, "expected a digit after '-'");
    if (s[i] == '0') {
        i++;
        if (i < n && is_digit(s[i])) return fail_at(p, start, "number with a leading zero");
    } else {
        while (i < n && is_digit(s[i])) i++;
    }
    size_t int_end = i;
    if (i < n && s[i] == '.') {
        integral = 0;
        i++;
        if (i >= n || !is_digit(s[i])) return fail_at(p, i, "expected a digit after the decimal point");
        while (i < n && is_digit(s[i])) i++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        integral = 0;
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-')) i++;
        if (i >= n || !is_digit(s[i])) return fail_at(p, i, "expected a digit in the exponent");
        while (i < n && is_digit(s[i])) i++;
    }

    /* strtod needs a NUL-terminated copy; it rounds correctly to nearest. */
    size_t tlen = i - start;
    char small[64], *buf = tlen < sizeof small ? small : fx_malloc(tlen + 1);
    memcpy(buf, s + start, tlen);
    buf[tlen] = 0;
    errno = 0;
    double d = strtod(buf, NULL);
    if (buf != small) free(buf);
    if (isinf(d)) return fail_at(p, start, "number %.*s is out of the range of a double",
                                 (int)(tlen < 40 ? tlen : 40), s + start);
    v->type = FX_JNUM;
    v->num = d;

    /* Integers that fit int64 are kept exactly too (the double rounds above 2^53). */
    if (integral) {
        uint64_t mag = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
        int fits = 1;
        for (size_t k = start + (size_t)neg; k < int_end && fits; k++) {
            uint64_t dgt = (uint64_t)(s[k] - '0');
            if (mag > (limit - dgt) / 10) fits = 0;
            else mag = mag * 10 + dgt;
        }
        if (fits) {
            v->is_int = 1;
            v->inum = neg ? (mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag) : (int64_t)mag;
        }
    }
    p->pos = i;
    return 0;
}

static int parse_literal(parser *p, const char *word, fx_json *v, fx_jtype type, int boolean) {
    size_t wl = strlen(word);
    if (p->len - p->pos < wl || memcmp(p->s + p->pos, word, wl) != 0)
        return fail_at(p, p->pos, "invalid literal (expected '%s')", word);
    v->type = type;
    v->boolean = boolean;
    p->pos += wl;
    return 0;
}

/* Both containers grow their child arrays by doubling: O(n) over a 50k-key vocab.json. */
static int parse_array(parser *p, fx_json *v) {
    size_t open = p->pos, cap = 0;
    v->type = FX_JARR;
    if (++p->depth > JSON_MAX_DEPTH) return fail_at(p, open, "nesting deeper than %d levels", JSON_MAX_DEPTH);
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == ']') { p->pos++; p->depth--; return 0; }
    for (;;) {
        skip_ws(p);
        if (p->pos < p->len && p->s[p->pos] == ']') return fail_at(p, p->pos, "trailing comma before ']'");
        if (v->n == cap) {
            cap = cap ? 2 * cap : 4;
            v->kids = fx_realloc(v->kids, cap * sizeof *v->kids);
        }
        v->n++;
        if (parse_value(p, &v->kids[v->n - 1]) != 0) return -1;
        skip_ws(p);
        if (p->pos >= p->len) return fail_at(p, open, "array is never closed");
        char c = p->s[p->pos++];
        if (c == ']') break;
        if (c != ',') {
            char b[16];
            return fail_at(p, p->pos - 1, "expected ',' or ']' in an array, found %s", describe(c, b));
        }
    }
    p->depth--;
    return 0;
}

static int parse_object(parser *p, fx_json *v) {
    size_t open = p->pos, cap = 0;
    v->type = FX_JOBJ;
    if (++p->depth > JSON_MAX_DEPTH) return fail_at(p, open, "nesting deeper than %d levels", JSON_MAX_DEPTH);
    p->pos++;
    skip_ws(p);
    if (p->pos < p->len && p->s[p->pos] == '}') { p->pos++; p->depth--; return 0; }
    for (;;) {
        skip_ws(p);
        if (p->pos >= p->len) return fail_at(p, open, "object is never closed");
        if (p->s[p->pos] == '}') return fail_at(p, p->pos, "trailing comma before '}'");
        if (p->s[p->pos] != '"') {
            char b[16];
            return fail_at(p, p->pos, "expected a string key in an object, found %s", describe(p->s[p->pos], b));
        }
        if (v->n == cap) {
            cap = cap ? 2 * cap : 4;
            v->kids = fx_realloc(v->kids, cap * sizeof *v->kids);
            v->keys = fx_realloc(v->keys, cap * sizeof *v->keys);
            v->klens = fx_realloc(v->klens, cap * sizeof *v->klens);
        }
        size_t k = v->n++;
        memset(&v->kids[k], 0, sizeof v->kids[k]);
        v->keys[k] = NULL;
        v->klens[k] = 0;
        if (parse_string(p, &v->keys[k], &v->klens[k]) != 0) return -1;
        skip_ws(p);
        if (p->pos >= p->len || p->s[p->pos] != ':') return fail_at(p, p->pos, "expected ':' after an object key");
        p->pos++;
        if (parse_value(p, &v->kids[k]) != 0) return -1;
        skip_ws(p);
        if (p->pos >= p->len) return fail_at(p, open, "object is never closed");
        char c = p->s[p->pos++];
        if (c == '}') break;
        if (c != ',') {
            char b[16];
            return fail_at(p, p->pos - 1, "expected ',' or '}' in an object, found %s", describe(c, b));
        }
    }
    p->depth--;
    return 0;
}

static int parse_value(parser *p, fx_json *v) {
    memset(v, 0, sizeof *v);
    if (++p->values > JSON_MAX_VALUES)
        return fail_at(p, p->pos, "more than %u values: too large for any file fedex reads", JSON_MAX_VALUES);
    skip_ws(p);
    if (p->pos >= p->len) return fail_at(p, p->pos, "unexpected end of input, expected a value");
    char c = p->s[p->pos], b[16];
    switch (c) {
    case '{': return parse_object(p, v);
    case '[': return parse_array(p, v);
    case '"': v->type = FX_JSTR; return parse_string(p, &v->str, &v->slen);
    case 't': return parse_literal(p, "true", v, FX_JBOOL, 1);
    case 'f': return parse_literal(p, "false", v, FX_JBOOL, 0);
    case 'n': return parse_literal(p, "null", v, FX_JNULL, 0);
    case 'N': case 'I': return fail_at(p, p->pos, "NaN and Infinity are not JSON numbers");
    case '/': return fail_at(p, p->pos, "comments are not allowed in JSON");
    case '\'': return fail_at(p, p->pos, "strings must be in double quotes");
    default:
        if (c == '-' || is_digit(c)) return parse_number(p, v);
        return fail_at(p, p->pos, "unexpected %s, expected a value", describe(c, b));
    }
}

/* ============================================================================================
 * public interface
 * ============================================================================================ */

int fx_json_parse(const char *text, size_t len, fx_json *out) {
    parser p = {text, len, 0, 0, 0};
    memset(out, 0, sizeof *out);
    if (len >= 3 && memcmp(text, "\xEF\xBB\xBF", 3) == 0)
        return fail_at(&p, 0, "byte order mark before the JSON text is not allowed");
    if (parse_value(&p, out) != 0) { fx_json_free(out); return -1; }
    skip_ws(&p);
    if (p.pos < len) {
        char b[16];
        fail_at(&p, p.pos, "unexpected %s after the JSON value", describe(text[p.pos], b));
        fx_json_free(out);
        return -1;
    }
    return 0;
}

void fx_json_free(fx_json *j) {
    if (!j) return;
    free(j->str);
    for (size_t i = 0; i < j->n; i++) {
        if (j->kids) fx_json_free(&j->kids[i]);
        if (j->keys) free(j->keys[i]);
    }
    free(j->kids);
    free(j->keys);
    free(j->klens);
    memset(j, 0, sizeof *j);
}

/* Sorts member indices of an object by key, to find duplicates in O(n log n). */
static int cmp_keys(const void *a, const void *b, void *ctx) {
    const fx_json *h = ctx;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    size_t li = h->klens[i], lj = h->klens[j];
    int c = memcmp(h->keys[i], h->keys[j], li < lj ? li : lj);
    return c ? c : (li > lj) - (li < lj);
}

const char *fx_json_duplicate_key(const fx_json *obj) {
    if (obj->type != FX_JOBJ || obj->n < 2) return NULL;
    size_t *ord = fx_malloc(obj->n * sizeof *ord);
    for (size_t i = 0; i < obj->n; i++) ord[i] = i;
    qsort_r(ord, obj->n, sizeof *ord, cmp_keys, (void *)obj);
    const char *dup = NULL;
    for (size_t i = 1; i < obj->n && !dup; i++)
        if (cmp_keys(&ord[i - 1], &ord[i], (void *)obj) == 0) dup = obj->keys[ord[i]];
    free(ord);
    return dup;
}

const fx_json *fx_json_get(const fx_json *obj, const char *key) {
    if (!obj || obj->type != FX_JOBJ) return NULL;
    size_t kl = strlen(key);
    for (size_t i = 0; i < obj->n; i++)
        if (obj->klens[i] == kl && memcmp(obj->keys[i], key, kl) == 0) return &obj->kids[i];
    return NULL;
}

/* ---------------------------------------------------------------- writing */

/* A JSON string literal of S (valid UTF-8, copied as is): quotes, backslashes and control bytes escaped.
 * Every file fedex writes JSON into quotes its strings with this. */
char *fx_json_quote(const char *s) {
    size_t n = 3;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) n += *p < 0x20 ? 6 : (*p == '"' || *p == '\\') ? 2 : 1;
    char *out = fx_malloc(n), *o = out;
    *o++ = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') { *o++ = '\\'; *o++ = (char)*p; }
        else if (*p < 0x20) o += sprintf(o, "\\u%04x", *p);
        else *o++ = (char)*p;
    }
    *o++ = '"';
    *o = 0;
    return out;
}

/* The shortest decimal that reads back as the same float, so config files say 1e-05, not 1.00000001e-05. */
void fx_json_num(FILE *f, double x) {
    if (isfinite(x)) fprintf(f, "%.9g", x);
    else fputs("null", f);
}

void fx_json_put_float(FILE *f, float x) {
    char buf[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, sizeof buf, "%.*g", p, (double)x);
        if (strtof(buf, NULL) == x) break;
    }
    fputs(buf, f);
}

/* PATH's text parsed; errors read "PATH: line L, column C: what is wrong". */
int fx_json_load(const char *path, fx_json *out) {
    char *text;
    size_t len;
    if (fx_read_file(path, &text, &len) != 0) return -1;
    int rc = fx_json_parse(text, len, out);
    free(text);
    if (rc != 0) fx_seterr("%s: %s", path, fx_err());
    return rc;
}
