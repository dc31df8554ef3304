/* jinja.c: the subset of Jinja2 that chat templates (tokenizer_config.json's chat_template) are written
 * in, rendered as Hugging Face's apply_chat_template renders them (trim_blocks, lstrip_blocks, the
 * template's one trailing newline dropped). It knows text, {{ expr }}, {% if/elif/else/endif %}, {% for x
 * in list %} with loop.index0/index/first/last/length, {% set name = expr %}, {# comments #}, whitespace
 * control ({%- -%} {{- -}} {%+), and expressions of string and integer literals, true/false/none, names,
 * x.attr, x['key'], x[i], + - * % ~, == != < > <= >=, and/or/not, parentheses, |trim, |length,
 * "is (not) defined/none/string", raise_exception(msg). Anything else is refused with the template's line
 * and the construct; nothing reads files or runs code. */
#include "fedex.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* ============================================================================================
 * Tokens
 * ============================================================================================ */

enum { T_TEXT, T_VAR, T_VAR_END, T_BLOCK, T_BLOCK_END, T_NAME, T_STR, T_INT, T_OP, T_EOF };
typedef struct { int kind, line; char *s; size_t n; long long i; } tok;

typedef struct {
    const char *label;
    tok *t; int nt, cap;
    char err[512];
} lexer;

static void push(lexer *L, int kind, int line, const char *s, size_t n, long long i) {
    if (L->nt == L->cap) { L->cap = L->cap ? 2 * L->cap : 64; L->t = fx_realloc(L->t, (size_t)L->cap * sizeof *L->t); }
    char *c = fx_malloc(n + 1);
    if (n) memcpy(c, s, n);
    c[n] = 0;
    L->t[L->nt++] = (tok){kind, line, c, n, i};
}

static int lerr(lexer *L, int line, const char *fmt, ...) {
    char m[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    snprintf(L->err, sizeof L->err, "%s: line %d: %s", L->label, line, m);
    return -1;
}

static int is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

/* A string literal's body S[0..n) with Python's escapes (the ones templates use) into OUT. */
static int unescape(lexer *L, int line, const char *s, size_t n, char *out, size_t *on) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\') { out[k++] = s[i]; continue; }
        if (++i >= n) return lerr(L, line, "a backslash ends the string");
        char c = s[i];
        switch (c) {
        case 'n': out[k++] = '\n'; break;
        case 't': out[k++] = '\t'; break;
        case 'r': out[k++] = '\r'; break;
        case '\\': case '\'': case '"': out[k++] = c; break;
        case 'x': case 'u': case 'U': {
            int w = c == 'x' ? 2 : c == 'u' ? 4 : 8;
            uint32_t cp = 0;
            for (int d = 0; d < w; d++) {
                char h = i + 1 + d < n ? s[i + 1 + d] : 0;
                int v = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10 : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                if (v < 0) return lerr(L, line, "\\%c needs %d hex digits", c, w);
                cp = cp * 16 + (uint32_t)v;
            }
            if (cp >= 0x110000 || (cp >= 0xD800 && cp < 0xE000) || cp == 0) return lerr(L, line, "\\%c escape of an invalid character", c);
            k += (size_t)fx_utf8_put(out + k, cp);
            i += (size_t)w;
            break;
        }
        default: return lerr(L, line, "the escape \\%c in a string is not supported", c);
        }
    }
    *on = k;
    return 0;
}

/* The tokens of one tag's inside, from P up to its closing delimiter (CLOSE "}}" or "%}"); *P past it,
 * *STRIP_AFTER when the delimiter had a '-', *PLUS a '+'. */
static int lex_tag(lexer *L, const char *src, size_t len, size_t *P, int *line, const char *close, int *strip_after,
                   int *plus) {
    size_t p = *P;
    *strip_after = *plus = 0;
    for (;;) {
        while (p < len && is_ws(src[p])) { if (src[p] == '\n') (*line)++; p++; }
        if (p >= len) return lerr(L, *line, "the tag is never closed (\"%s\")", close);
        if ((src[p] == '-' || src[p] == '+') && p + 2 < len && src[p + 1] == close[0] && src[p + 2] == close[1]) {
            *strip_after = src[p] == '-';
            *plus = src[p] == '+';
            *P = p + 3;
            return 0;
        }
        if (p + 1 < len && src[p] == close[0] && src[p + 1] == close[1]) { *P = p + 2; return 0; }
        char c = src[p];
        if (c == '\'' || c == '"') {
            size_t q = p + 1;
            while (q < len && src[q] != c) { if (src[q] == '\\') q++; q++; }
            if (q >= len) return lerr(L, *line, "a string is never closed");
            char *buf = fx_malloc(q - p + 4);
            size_t n = 0;
            int ln = *line;
            for (size_t k = p; k < q; k++) *line += src[k] == '\n';
            if (unescape(L, ln, src + p + 1, q - p - 1, buf, &n) != 0) { free(buf); return -1; }
            push(L, T_STR, ln, buf, n, 0);
            free(buf);
            p = q + 1;
        } else if (c >= '0' && c <= '9') {
            long long v = 0;
            size_t q = p;
            while (q < len && src[q] >= '0' && src[q] <= '9') {
                if (v > 100000000000LL) return lerr(L, *line, "an integer too large");
                v = v * 10 + (src[q++] - '0');
            }
            if (q < len && (src[q] == '.' || src[q] == '_' || (src[q] >= 'a' && src[q] <= 'z'))) return lerr(L, *line, "only integer numbers are supported");
            push(L, T_INT, *line, src + p, q - p, v);
            p = q;
        } else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') {
            size_t q = p;
            while (q < len && ((src[q] >= 'a' && src[q] <= 'z') || (src[q] >= 'A' && src[q] <= 'Z') || src[q] == '_' ||
                               (src[q] >= '0' && src[q] <= '9')))
                q++;
            push(L, T_NAME, *line, src + p, q - p, 0);
            p = q;
        } else {
            static const char *const ops2[] = {"==", "!=", "<=", ">=", "//", "**"};
            size_t n = 1;
            for (size_t k = 0; k < sizeof ops2 / sizeof *ops2; k++)
                if (p + 1 < len && src[p] == ops2[k][0] && src[p + 1] == ops2[k][1]) n = 2;
            if (n == 1 && !strchr("()[].,|+-*%~<>=:", c)) return lerr(L, *line, "unexpected character '%c' in a tag", c);
            push(L, T_OP, *line, src + p, n, 0);
            p += n;
        }
    }
}

/* The whole template into L's tokens, text pieces with the whitespace rules applied. */
static int lex(lexer *L, const char *src0, size_t len0) {
    /* newlines normalised to \n, one trailing newline dropped (keep_trailing_newline=False) */
    char *src = fx_malloc(len0 + 1);
    size_t len = 0;
    for (size_t i = 0; i < len0; i++) {
        if (src0[i] == '\r') { src[len++] = '\n'; if (i + 1 < len0 && src0[i + 1] == '\n') i++; }
        else src[len++] = src0[i];
    }
    if (len && src[len - 1] == '\n') len--;
    src[len] = 0;
    size_t p = 0;
    int line = 1, line_starting = 1, strip_next = 0, rc = 0;
    while (p <= len && rc == 0) {
        /* text up to the next tag start */
        size_t q = p;
        while (q + 1 < len && !(src[q] == '{' && (src[q + 1] == '{' || src[q + 1] == '%' || src[q + 1] == '#'))) q++;
        if (q + 1 >= len) q = len;
        size_t a = p, b = q;
        if (strip_next) while (a < b && is_ws(src[a])) a++;
        if (q < len) {
            char kind = src[q + 1], sign = q + 2 < len ? src[q + 2] : 0;
            if (sign == '-') while (b > a && is_ws(src[b - 1])) b--;
            else if (sign != '+' && kind != '{') { /* lstrip_blocks */
                size_t l = b;
                while (l > a && src[l - 1] != '\n') l--;
                int only_ws = 1;
                for (size_t k = l; k < b; k++) only_ws &= src[k] == ' ' || src[k] == '\t' || src[k] == '\f' || src[k] == '\v';
                if ((l > a || (l == a && line_starting)) && only_ws && b > l) b = l;
            }
        }
        int text_line = line;
        for (size_t k = p; k < q; k++) line += src[k] == '\n';
        if (b > a) push(L, T_TEXT, text_line, src + a, b - a, 0);
        if (q >= len) break;
        char kind = src[q + 1];
        p = q + 2;
        if (p < len && (src[p] == '-' || src[p] == '+')) p++;
        int strip_after = 0, plus = 0;
        if (kind == '#') {
            const char *e = strstr(src + p, "#}");
            if (!e) { rc = lerr(L, line, "a comment is never closed"); break; }
            size_t ep = (size_t)(e - src);
            strip_after = ep > p && src[ep - 1] == '-';
            plus = ep > p && src[ep - 1] == '+';
            for (size_t k = p; k < ep; k++) line += src[k] == '\n';
            p = ep + 2;
        } else {
            push(L, kind == '{' ? T_VAR : T_BLOCK, line, "", 0, 0);
            if (lex_tag(L, src, len, &p, &line, kind == '{' ? "}}" : "%}", &strip_after, &plus) != 0) { rc = -1; break; }
            push(L, kind == '{' ? T_VAR_END : T_BLOCK_END, line, "", 0, 0);
        }
        strip_next = strip_after;
        line_starting = 0;
        if (strip_after) { /* the whitespace is eaten now, so that line_starting sees its last character */
            while (p < len && is_ws(src[p])) { line_starting = src[p] == '\n'; line += src[p] == '\n'; p++; }
            strip_next = 0;
        } else if (kind != '{' && !plus && p < len && src[p] == '\n') { /* trim_blocks */
            p++; line++;
            line_starting = 1;
        }
    }
    push(L, T_EOF, line, "", 0, 0);
    free(src);
    return rc;
}

/* ============================================================================================
 * The tree
 * ============================================================================================ */

enum { E_STR, E_INT, E_BOOL, E_NONE, E_NAME, E_ATTR, E_ITEM, E_CALL, E_FILTER, E_TEST, E_NOT, E_NEG, E_BIN, E_AND,
       E_OR, E_LIST };
typedef struct expr { int kind, line, negate; char *s; size_t n; long long i; char op[3]; struct expr *a, *b;
                      struct expr **args; int nargs; } expr;
enum { S_TEXT, S_OUT, S_IF, S_FOR, S_SET };
typedef struct stmt stmt;
typedef struct { stmt **v; int n; } body;
struct stmt {
    int kind, line;
    char *s; size_t n;           /* S_TEXT; S_FOR / S_SET: the name */
    expr *e;                     /* S_OUT, S_FOR (the list), S_SET */
    expr **cond; body *branch; int nbranch; /* S_IF: cond[k] (NULL for else) and its branch; S_FOR: branch[0] */
};

struct fx_jinja { body top; char *label; };

typedef struct { lexer *L; int p; } parser;

static tok *cur(parser *P) { return &P->L->t[P->p]; }
static int is_op(parser *P, const char *op) { return cur(P)->kind == T_OP && !strcmp(cur(P)->s, op); }
static int is_name(parser *P, const char *n) { return cur(P)->kind == T_NAME && !strcmp(cur(P)->s, n); }
static int perr(parser *P, const char *fmt, ...) {
    char m[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    return lerr(P->L, cur(P)->line, "%s", m);
}
static const char *tok_text(const tok *t) {
    switch (t->kind) {
    case T_VAR_END: return "}}";
    case T_BLOCK_END: return "%}";
    case T_EOF: return "the end of the template";
    default: return t->s;
    }
}

static expr *new_expr(int kind, int line) { expr *e = fx_calloc(1, sizeof *e); e->kind = kind; e->line = line; return e; }
static void free_expr(expr *e) {
    if (!e) return;
    free(e->s); free_expr(e->a); free_expr(e->b);
    for (int k = 0; k < e->nargs; k++) free_expr(e->args[k]);
    free(e->args);
    free(e);
}
static void free_body(body *b);
static void free_stmt(stmt *s) {
    free(s->s); free_expr(s->e);
    for (int k = 0; k < s->nbranch; k++) { if (s->cond) free_expr(s->cond[k]); free_body(&s->branch[k]); }
    free(s->cond); free(s->branch);
    free(s);
}
static void free_body(body *b) { for (int k = 0; k < b->n; k++) free_stmt(b->v[k]); free(b->v); b->v = NULL; b->n = 0; }

static expr *parse_expr(parser *P);

static expr *parse_primary(parser *P) {
    tok *t = cur(P);
    expr *e = NULL;
    if (t->kind == T_STR) { e = new_expr(E_STR, t->line); e->s = fx_malloc(t->n + 1); memcpy(e->s, t->s, t->n + 1); e->n = t->n; P->p++; }
    else if (t->kind == T_INT) { e = new_expr(E_INT, t->line); e->i = t->i; P->p++; }
    else if (t->kind == T_NAME) {
        static const char *const kw[] = {"and", "or", "not", "is", "in", "if", "else", "elif", "endif", "for", "endfor", "set"};
        for (size_t k = 0; k < sizeof kw / sizeof *kw; k++)
            if (!strcmp(t->s, kw[k])) { perr(P, "unexpected '%s'", t->s); return NULL; }
        if (!strcmp(t->s, "true") || !strcmp(t->s, "True") || !strcmp(t->s, "false") || !strcmp(t->s, "False")) {
            e = new_expr(E_BOOL, t->line);
            e->i = t->s[0] == 't' || t->s[0] == 'T';
        } else if (!strcmp(t->s, "none") || !strcmp(t->s, "None")) e = new_expr(E_NONE, t->line);
        else { e = new_expr(E_NAME, t->line); e->s = fx_strdup(t->s); }
        P->p++;
    } else if (t->kind == T_OP && !strcmp(t->s, "(")) {
        P->p++;
        e = parse_expr(P);
        if (!e) return NULL;
        if (!is_op(P, ")")) { perr(P, "expected ')' but found '%s'", tok_text(cur(P))); free_expr(e); return NULL; }
        P->p++;
    } else if (t->kind == T_OP && !strcmp(t->s, "[")) {
        P->p++;
        e = new_expr(E_LIST, t->line);
        while (!is_op(P, "]")) {
            expr *x = parse_expr(P);
            if (!x) { free_expr(e); return NULL; }
            e->args = fx_realloc(e->args, sizeof *e->args * (size_t)(e->nargs + 1));
            e->args[e->nargs++] = x;
            if (is_op(P, ",")) P->p++;
            else if (!is_op(P, "]")) { perr(P, "expected ',' or ']' in a list"); free_expr(e); return NULL; }
        }
        P->p++;
    } else { perr(P, "unexpected '%s'", tok_text(t)); return NULL; }
    /* postfix: .attr, [index], (call) */
    for (;;) {
        if (is_op(P, ".")) {
            P->p++;
            if (cur(P)->kind != T_NAME) { perr(P, "expected a name after '.'"); free_expr(e); return NULL; }
            expr *x = new_expr(E_ATTR, cur(P)->line);
            x->a = e; x->s = fx_strdup(cur(P)->s);
            e = x; P->p++;
        } else if (is_op(P, "[")) {
            int line = cur(P)->line;
            P->p++;
            if (is_op(P, ":")) { perr(P, "slices are not supported"); free_expr(e); return NULL; }
            expr *k = parse_expr(P);
            if (!k) { free_expr(e); return NULL; }
            if (!is_op(P, "]")) { perr(P, is_op(P, ":") ? "slices are not supported" : "expected ']'"); free_expr(e); free_expr(k); return NULL; }
            P->p++;
            expr *x = new_expr(E_ITEM, line);
            x->a = e; x->b = k;
            e = x;
        } else if (is_op(P, "(")) {
            if (e->kind != E_NAME || strcmp(e->s, "raise_exception")) {
                perr(P, "calling '%s' is not supported (raise_exception(...) is the one function)", e->kind == E_NAME ? e->s : "an expression");
                free_expr(e);
                return NULL;
            }
            P->p++;
            expr *x = new_expr(E_CALL, e->line);
            x->a = e;
            while (!is_op(P, ")")) {
                expr *arg = parse_expr(P);
                if (!arg) { free_expr(x); return NULL; }
                x->args = fx_realloc(x->args, sizeof *x->args * (size_t)(x->nargs + 1));
                x->args[x->nargs++] = arg;
                if (is_op(P, ",")) P->p++;
                else if (!is_op(P, ")")) { perr(P, "expected ',' or ')' in a call"); free_expr(x); return NULL; }
            }
            P->p++;
            e = x;
        } else break;
    }
    return e;
}

/* unary level: primary with postfix, then filters and tests (Jinja binds x|f and x is t tightest) */
static expr *parse_unary(parser *P) {
    if (is_op(P, "-")) {
        int line = cur(P)->line;
        P->p++;
        expr *a = parse_unary(P);
        if (!a) return NULL;
        expr *x = new_expr(E_NEG, line);
        x->a = a;
        return x;
    }
    expr *e = parse_primary(P);
    while (e) {
        if (is_op(P, "|")) {
            P->p++;
            if (cur(P)->kind != T_NAME || (strcmp(cur(P)->s, "trim") && strcmp(cur(P)->s, "length"))) {
                perr(P, "the filter '%s' is not supported (trim and length are)", tok_text(cur(P)));
                free_expr(e);
                return NULL;
            }
            expr *x = new_expr(E_FILTER, cur(P)->line);
            x->a = e; x->s = fx_strdup(cur(P)->s);
            e = x; P->p++;
            if (is_op(P, "(")) { perr(P, "filter arguments are not supported"); free_expr(e); return NULL; }
        } else if (is_name(P, "is")) {
            P->p++;
            int neg = 0;
            if (is_name(P, "not")) { neg = 1; P->p++; }
            if (cur(P)->kind != T_NAME || (strcmp(cur(P)->s, "defined") && strcmp(cur(P)->s, "undefined") &&
                                          strcmp(cur(P)->s, "none") && strcmp(cur(P)->s, "string"))) {
                perr(P, "the test '%s' is not supported (defined, undefined, none and string are)", tok_text(cur(P)));
                free_expr(e);
                return NULL;
            }
            expr *x = new_expr(E_TEST, cur(P)->line);
            x->a = e; x->s = fx_strdup(cur(P)->s); x->negate = neg;
            e = x; P->p++;
        } else break;
    }
    return e;
}

static expr *bin(expr *a, expr *b, const char *op, int line) {
    expr *x = new_expr(E_BIN, line);
    x->a = a; x->b = b;
    snprintf(x->op, sizeof x->op, "%s", op);
    return x;
}

static expr *parse_mul(parser *P) {
    expr *a = parse_unary(P);
    while (a && (is_op(P, "*") || is_op(P, "%") || is_op(P, "/") || is_op(P, "//") || is_op(P, "**"))) {
        if (!is_op(P, "*") && !is_op(P, "%")) { perr(P, "the operator '%s' is not supported", cur(P)->s); free_expr(a); return NULL; }
        tok *t = cur(P);
        P->p++;
        expr *b = parse_unary(P);
        if (!b) { free_expr(a); return NULL; }
        a = bin(a, b, t->s, t->line);
    }
    return a;
}
static expr *parse_concat(parser *P) {
    expr *a = parse_mul(P);
    while (a && is_op(P, "~")) {
        tok *t = cur(P);
        P->p++;
        expr *b = parse_mul(P);
        if (!b) { free_expr(a); return NULL; }
        a = bin(a, b, "~", t->line);
    }
    return a;
}
static expr *parse_add(parser *P) {
    expr *a = parse_concat(P);
    while (a && (is_op(P, "+") || is_op(P, "-"))) {
        tok *t = cur(P);
        P->p++;
        expr *b = parse_concat(P);
        if (!b) { free_expr(a); return NULL; }
        a = bin(a, b, t->s, t->line);
    }
    return a;
}
static expr *parse_compare(parser *P) {
    expr *a = parse_add(P);
    while (a && (is_op(P, "==") || is_op(P, "!=") || is_op(P, "<") || is_op(P, ">") || is_op(P, "<=") || is_op(P, ">=") ||
                 is_name(P, "in"))) {
        if (is_name(P, "in")) { perr(P, "the operator 'in' is not supported"); free_expr(a); return NULL; }
        tok *t = cur(P);
        P->p++;
        expr *b = parse_add(P);
        if (!b) { free_expr(a); return NULL; }
        a = bin(a, b, t->s, t->line);
    }
    return a;
}
static expr *parse_not(parser *P) {
    if (is_name(P, "not")) {
        int line = cur(P)->line;
        P->p++;
        expr *a = parse_not(P);
        if (!a) return NULL;
        expr *x = new_expr(E_NOT, line);
        x->a = a;
        return x;
    }
    return parse_compare(P);
}
static expr *parse_and(parser *P) {
    expr *a = parse_not(P);
    while (a && is_name(P, "and")) {
        int line = cur(P)->line;
        P->p++;
        expr *b = parse_not(P);
        if (!b) { free_expr(a); return NULL; }
        expr *x = new_expr(E_AND, line);
        x->a = a; x->b = b; a = x;
    }
    return a;
}
static expr *parse_expr(parser *P) {
    expr *a = parse_and(P);
    while (a && is_name(P, "or")) {
        int line = cur(P)->line;
        P->p++;
        expr *b = parse_and(P);
        if (!b) { free_expr(a); return NULL; }
        expr *x = new_expr(E_OR, line);
        x->a = a; x->b = b; a = x;
    }
    if (a && is_name(P, "if")) { perr(P, "inline 'x if c else y' is not supported"); free_expr(a); return NULL; }
    return a;
}

static void add_stmt(body *b, stmt *s) {
    b->v = fx_realloc(b->v, sizeof *b->v * (size_t)(b->n + 1));
    b->v[b->n++] = s;
}

/* Statements until a block tag whose keyword is one of STOPS (left unread: P at its T_BLOCK), or the end
 * when STOPS is NULL. */
static int parse_body(parser *P, body *b, const char *const *stops) {
    for (;;) {
        tok *t = cur(P);
        if (t->kind == T_EOF) {
            if (stops) return perr(P, "'%s' is never closed", stops[0]);
            return 0;
        }
        if (t->kind == T_TEXT) {
            stmt *s = fx_calloc(1, sizeof *s);
            s->kind = S_TEXT; s->line = t->line; s->s = fx_malloc(t->n + 1); memcpy(s->s, t->s, t->n + 1); s->n = t->n;
            add_stmt(b, s);
            P->p++;
            continue;
        }
        if (t->kind == T_VAR) {
            P->p++;
            expr *e = parse_expr(P);
            if (!e) return -1;
            if (cur(P)->kind != T_VAR_END) { free_expr(e); return perr(P, "expected '}}' but found '%s'", tok_text(cur(P))); }
            P->p++;
            stmt *s = fx_calloc(1, sizeof *s);
            s->kind = S_OUT; s->line = t->line; s->e = e;
            add_stmt(b, s);
            continue;
        }
        /* a block tag */
        tok *k = &P->L->t[P->p + 1];
        if (k->kind != T_NAME) { P->p++; return perr(P, "a block tag starts with a keyword"); }
        for (int s = 0; stops && stops[s]; s++)
            if (!strcmp(k->s, stops[s])) return 0;
        P->p += 2;
        stmt *s = fx_calloc(1, sizeof *s);
        s->line = k->line;
        add_stmt(b, s);
        if (!strcmp(k->s, "if")) {
            static const char *const if_stops[] = {"elif", "else", "endif", NULL};
            s->kind = S_IF;
            for (int els = 0;;) {
                s->cond = fx_realloc(s->cond, sizeof *s->cond * (size_t)(s->nbranch + 1));
                s->branch = fx_realloc(s->branch, sizeof *s->branch * (size_t)(s->nbranch + 1));
                s->cond[s->nbranch] = NULL;
                s->branch[s->nbranch] = (body){NULL, 0};
                s->nbranch++;
                if (!els) {
                    if (!(s->cond[s->nbranch - 1] = parse_expr(P))) return -1;
                }
                if (cur(P)->kind != T_BLOCK_END) return perr(P, "expected '%%}' but found '%s'", tok_text(cur(P)));
                P->p++;
                if (parse_body(P, &s->branch[s->nbranch - 1], els ? (const char *const[]){"endif", NULL} : if_stops) != 0) return -1;
                const char *kw = P->L->t[P->p + 1].s;
                P->p += 2;
                if (!strcmp(kw, "endif")) break;
                if (!strcmp(kw, "else")) els = 1;
            }
            if (cur(P)->kind != T_BLOCK_END) return perr(P, "expected '%%}' after endif");
            P->p++;
        } else if (!strcmp(k->s, "for")) {
            s->kind = S_FOR;
            if (cur(P)->kind != T_NAME) return perr(P, "expected the loop variable's name after 'for'");
            s->s = fx_strdup(cur(P)->s);
            P->p++;
            if (is_op(P, ",")) return perr(P, "unpacking in a for loop is not supported");
            if (!is_name(P, "in")) return perr(P, "expected 'in' in the for loop");
            P->p++;
            if (!(s->e = parse_expr(P))) return -1;
            if (is_name(P, "if") || is_name(P, "recursive")) return perr(P, "'for ... %s' is not supported", cur(P)->s);
            if (cur(P)->kind != T_BLOCK_END) return perr(P, "expected '%%}' but found '%s'", tok_text(cur(P)));
            P->p++;
            s->branch = fx_calloc(1, sizeof *s->branch);
            s->nbranch = 1;
            if (parse_body(P, &s->branch[0], (const char *const[]){"endfor", "else", NULL}) != 0) return -1;
            if (!strcmp(P->L->t[P->p + 1].s, "else")) { P->p++; return perr(P, "'for ... else' is not supported"); }
            P->p += 2;
            if (cur(P)->kind != T_BLOCK_END) return perr(P, "expected '%%}' after endfor");
            P->p++;
        } else if (!strcmp(k->s, "set")) {
            s->kind = S_SET;
            if (cur(P)->kind != T_NAME) return perr(P, "expected a name after 'set'");
            s->s = fx_strdup(cur(P)->s);
            P->p++;
            if (is_op(P, ".")) return perr(P, "setting an attribute (namespace) is not supported");
            if (!is_op(P, "=")) return perr(P, "block 'set' (without '=') is not supported");
            P->p++;
            if (!(s->e = parse_expr(P))) return -1;
            if (cur(P)->kind != T_BLOCK_END) return perr(P, "expected '%%}' but found '%s'", tok_text(cur(P)));
            P->p++;
        } else {
            P->p--;
            return perr(P, "the statement '%s' is not supported (if, for, set are)", k->s);
        }
    }
}

void fx_jinja_free(fx_jinja *t) {
    if (!t) return;
    free_body(&t->top);
    free(t->label);
    free(t);
}

fx_jinja *fx_jinja_parse(const char *src, size_t len, const char *label) {
    lexer L = {label, NULL, 0, 0, {0}};
    fx_jinja *t = fx_calloc(1, sizeof *t);
    t->label = fx_strdup(label);
    int rc = lex(&L, src, len);
    if (rc == 0) {
        parser P = {&L, 0};
        rc = parse_body(&P, &t->top, NULL);
    }
    if (rc != 0) fx_seterr("%s", L.err);
    for (int k = 0; k < L.nt; k++) free(L.t[k].s);
    free(L.t);
    if (rc != 0) { fx_jinja_free(t); return NULL; }
    return t;
}

/* ============================================================================================
 * Values and rendering
 * ============================================================================================
 * Values live in an arena freed after the render; strings are byte strings with their length. */

enum { V_UNDEF, V_NONE, V_BOOL, V_INT, V_STR, V_LIST, V_DICT };
typedef struct val { int t; long long i; const char *s; size_t n; struct val *items; const char **keys; int len; } val;

typedef struct arena_blk { struct arena_blk *next; } arena_blk;
typedef struct { const char *name; val v; int scope; } var;
typedef struct {
    const fx_jinja *T;
    arena_blk *blocks;
    var *vars; int nvars, cap, scope;
    char *out; size_t on, ocap;
    char err[600];
} render;

static void *amalloc(render *R, size_t n) {
    arena_blk *b = fx_malloc(sizeof *b + n + 1);
    b->next = R->blocks;
    R->blocks = b;
    return b + 1;
}
static int rerr(render *R, int line, const char *fmt, ...) {
    char m[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m, sizeof m, fmt, ap);
    va_end(ap);
    if (!R->err[0]) snprintf(R->err, sizeof R->err, "%s: line %d: %s", R->T->label, line, m);
    return -1;
}
static val vstr(render *R, const char *s, size_t n) {
    char *c = amalloc(R, n + 1);
    if (n) memcpy(c, s, n);
    c[n] = 0;
    return (val){V_STR, 0, c, n, NULL, NULL, 0};
}
static const char *type_name(int t) {
    static const char *const names[] = {"undefined", "none", "boolean", "integer", "string", "list", "dict"};
    return names[t];
}
static int truthy(const val *v) {
    switch (v->t) {
    case V_BOOL: case V_INT: return v->i != 0;
    case V_STR: return v->n != 0;
    case V_LIST: case V_DICT: return v->len != 0;
    default: return 0;
    }
}
static val *lookup(render *R, const char *name) {
    for (int k = R->nvars - 1; k >= 0; k--) if (!strcmp(R->vars[k].name, name)) return &R->vars[k].v;
    return NULL;
}
static void set_var(render *R, const char *name, val v) {
    for (int k = R->nvars - 1; k >= 0 && R->vars[k].scope == R->scope; k--)
        if (!strcmp(R->vars[k].name, name)) { R->vars[k].v = v; return; }
    if (R->nvars == R->cap) { R->cap = R->cap ? 2 * R->cap : 32; R->vars = fx_realloc(R->vars, sizeof *R->vars * (size_t)R->cap); }
    R->vars[R->nvars++] = (var){name, v, R->scope};
}
static val dict_get(const val *d, const char *k) {
    for (int j = 0; j < d->len; j++) if (!strcmp(d->keys[j], k)) return d->items[j];
    return (val){V_UNDEF, 0, NULL, 0, NULL, NULL, 0};
}
/* Python's str() of a scalar, as {{ }} prints it; -1 for lists and dicts */
static int to_text(render *R, const val *v, int line, val *out) {
    char b[32];
    switch (v->t) {
    case V_UNDEF: *out = vstr(R, "", 0); return 0;
    case V_NONE: *out = vstr(R, "None", 4); return 0;
    case V_BOOL: *out = vstr(R, v->i ? "True" : "False", v->i ? 4 : 5); return 0;
    case V_INT: snprintf(b, sizeof b, "%lld", v->i); *out = vstr(R, b, strlen(b)); return 0;
    case V_STR: *out = *v; return 0;
    default: return rerr(R, line, "printing a %s is not supported", type_name(v->t));
    }
}
static int equal(const val *a, const val *b) {
    int an = a->t == V_BOOL || a->t == V_INT, bn = b->t == V_BOOL || b->t == V_INT;
    if (an && bn) return a->i == b->i;
    if (a->t != b->t) return 0;
    if (a->t == V_STR) return a->n == b->n && !memcmp(a->s, b->s, a->n);
    if (a->t == V_NONE || a->t == V_UNDEF) return 1;
    return 0; /* lists and dicts are not compared */
}
/* Python's str.strip(): white space as str.isspace() says (ASCII, U+001C-U+001F, U+0085, U+00A0, ...) */
static int py_space(uint32_t c) {
    return c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

static int eval(render *R, const expr *e, val *out);

static int eval(render *R, const expr *e, val *out) {
    val a, b;
    switch (e->kind) {
    case E_STR: *out = (val){V_STR, 0, e->s, e->n, NULL, NULL, 0}; return 0;
    case E_INT: *out = (val){V_INT, e->i, NULL, 0, NULL, NULL, 0}; return 0;
    case E_BOOL: *out = (val){V_BOOL, e->i, NULL, 0, NULL, NULL, 0}; return 0;
    case E_NONE: *out = (val){V_NONE, 0, NULL, 0, NULL, NULL, 0}; return 0;
    case E_NAME: {
        val *v = lookup(R, e->s);
        *out = v ? *v : (val){V_UNDEF, 0, e->s, 0, NULL, NULL, 0};
        return 0;
    }
    case E_LIST: {
        val *items = amalloc(R, sizeof(val) * (size_t)(e->nargs ? e->nargs : 1));
        for (int k = 0; k < e->nargs; k++) if (eval(R, e->args[k], &items[k]) != 0) return -1;
        *out = (val){V_LIST, 0, NULL, 0, items, NULL, e->nargs};
        return 0;
    }
    case E_ATTR: case E_ITEM:
        if (eval(R, e->a, &a) != 0) return -1;
        if (e->kind == E_ATTR) b = (val){V_STR, 0, e->s, strlen(e->s), NULL, NULL, 0};
        else if (eval(R, e->b, &b) != 0) return -1;
        if (a.t == V_UNDEF) return rerr(R, e->line, "'%s' is undefined", a.s ? a.s : "the value");
        if (a.t == V_DICT && b.t == V_STR) { *out = dict_get(&a, b.s); if (out->t == V_UNDEF) out->s = b.s; return 0; }
        if (a.t == V_LIST && b.t == V_INT) {
            long long i = b.i < 0 ? b.i + a.len : b.i;
            *out = i >= 0 && i < a.len ? a.items[i] : (val){V_UNDEF, 0, "the item", 0, NULL, NULL, 0};
            return 0;
        }
        return rerr(R, e->line, "a %s cannot be indexed by a %s", type_name(a.t), type_name(b.t));
    case E_CALL: {
        val m = {V_STR, 0, "", 0, NULL, NULL, 0};
        if (e->nargs != 1 || eval(R, e->args[0], &a) != 0 || to_text(R, &a, e->line, &m) != 0)
            return R->err[0] ? -1 : rerr(R, e->line, "raise_exception takes one message");
        return rerr(R, e->line, "the template raised an exception: %.*s", (int)(m.n < 300 ? m.n : 300), m.s);
    }
    case E_FILTER:
        if (eval(R, e->a, &a) != 0) return -1;
        if (!strcmp(e->s, "length")) {
            if (a.t == V_LIST || a.t == V_DICT) { *out = (val){V_INT, a.len, NULL, 0, NULL, NULL, 0}; return 0; }
            if (a.t != V_STR) return rerr(R, e->line, "|length of a %s", type_name(a.t));
            long long n = 0;
            for (size_t k = 0; k < a.n; k++) n += ((unsigned char)a.s[k] & 0xC0) != 0x80;
            *out = (val){V_INT, n, NULL, 0, NULL, NULL, 0};
            return 0;
        }
        if (a.t != V_STR) { /* Jinja's trim makes a string of anything: here only of scalars */
            if (to_text(R, &a, e->line, &a) != 0) return -1;
        }
        {
            size_t s = 0, end = 0, k = 0;
            int seen = 0;
            while (k < a.n) {
                uint32_t cp;
                int w = fx_utf8_next(a.s + k, a.n - k, &cp);
                if (w <= 0) { w = 1; cp = 0xFFFD; }
                if (!py_space(cp)) { if (!seen) s = k; seen = 1; end = k + (size_t)w; }
                k += (size_t)w;
            }
            *out = seen ? vstr(R, a.s + s, end - s) : vstr(R, "", 0);
        }
        return 0;
    case E_TEST: {
        if (eval(R, e->a, &a) != 0) return -1;
        int r = !strcmp(e->s, "defined") ? a.t != V_UNDEF : !strcmp(e->s, "undefined") ? a.t == V_UNDEF
              : !strcmp(e->s, "none") ? a.t == V_NONE : a.t == V_STR;
        *out = (val){V_BOOL, r != e->negate, NULL, 0, NULL, NULL, 0};
        return 0;
    }
    case E_NOT:
        if (eval(R, e->a, &a) != 0) return -1;
        *out = (val){V_BOOL, !truthy(&a), NULL, 0, NULL, NULL, 0};
        return 0;
    case E_NEG:
        if (eval(R, e->a, &a) != 0) return -1;
        if (a.t != V_INT && a.t != V_BOOL) return rerr(R, e->line, "unary minus of a %s", type_name(a.t));
        *out = (val){V_INT, -a.i, NULL, 0, NULL, NULL, 0};
        return 0;
    case E_AND: case E_OR:
        if (eval(R, e->a, &a) != 0) return -1;
        if ((e->kind == E_AND) != truthy(&a)) { *out = a; return 0; } /* Python: the deciding operand */
        return eval(R, e->b, out);
    case E_BIN: {
        if (eval(R, e->a, &a) != 0 || eval(R, e->b, &b) != 0) return -1;
        const char *op = e->op;
        if (!strcmp(op, "==") || !strcmp(op, "!=")) {
            *out = (val){V_BOOL, equal(&a, &b) == (op[0] == '='), NULL, 0, NULL, NULL, 0};
            return 0;
        }
        if (!strcmp(op, "~")) {
            val x, y;
            if (to_text(R, &a, e->line, &x) != 0 || to_text(R, &b, e->line, &y) != 0) return -1;
            a = x; b = y; op = "+";
        }
        int ai = a.t == V_INT || a.t == V_BOOL, bi = b.t == V_INT || b.t == V_BOOL;
        if (!strcmp(op, "+") && a.t == V_STR && b.t == V_STR) {
            char *c = amalloc(R, a.n + b.n + 1);
            memcpy(c, a.s, a.n);
            memcpy(c + a.n, b.s, b.n);
            c[a.n + b.n] = 0;
            *out = (val){V_STR, 0, c, a.n + b.n, NULL, NULL, 0};
            return 0;
        }
        if (a.t == V_STR && b.t == V_STR && op[0] != '+' && op[0] != '-' && op[0] != '*' && op[0] != '%') {
            size_t m = a.n < b.n ? a.n : b.n;
            int c = memcmp(a.s, b.s, m);
            if (!c) c = (a.n > b.n) - (a.n < b.n);
            int r = !strcmp(op, "<") ? c < 0 : !strcmp(op, ">") ? c > 0 : !strcmp(op, "<=") ? c <= 0 : c >= 0;
            *out = (val){V_BOOL, r, NULL, 0, NULL, NULL, 0};
            return 0;
        }
        if (!ai || !bi) return rerr(R, e->line, "'%s' between a %s and a %s is not supported", op, type_name(a.t), type_name(b.t));
        long long x = a.i, y = b.i, r;
        if (!strcmp(op, "+")) r = x + y;
        else if (!strcmp(op, "-")) r = x - y;
        else if (!strcmp(op, "*")) r = x * y;
        else if (!strcmp(op, "%")) {
            if (y == 0) return rerr(R, e->line, "modulo by zero");
            r = x % y;
            if (r != 0 && ((r < 0) != (y < 0))) r += y; /* Python's floor modulo */
        } else {
            int c = !strcmp(op, "<") ? x < y : !strcmp(op, ">") ? x > y : !strcmp(op, "<=") ? x <= y : x >= y;
            *out = (val){V_BOOL, c, NULL, 0, NULL, NULL, 0};
            return 0;
        }
        *out = (val){V_INT, r, NULL, 0, NULL, NULL, 0};
        return 0;
    }
    }
    return rerr(R, e->line, "unknown expression");
}

static void emit(render *R, const char *s, size_t n) {
    if (R->on + n + 1 > R->ocap) { R->ocap = 2 * (R->on + n + 1); R->out = fx_realloc(R->out, R->ocap); }
    memcpy(R->out + R->on, s, n);
    R->on += n;
}

static int run_body(render *R, const body *b) {
    for (int k = 0; k < b->n; k++) {
        const stmt *s = b->v[k];
        val v;
        switch (s->kind) {
        case S_TEXT: emit(R, s->s, s->n); break;
        case S_OUT:
            if (eval(R, s->e, &v) != 0 || to_text(R, &v, s->line, &v) != 0) return -1;
            emit(R, v.s, v.n);
            break;
        case S_SET:
            if (eval(R, s->e, &v) != 0) return -1;
            set_var(R, s->s, v);
            break;
        case S_IF:
            for (int j = 0; j < s->nbranch; j++) {
                if (s->cond[j]) {
                    if (eval(R, s->cond[j], &v) != 0) return -1;
                    if (!truthy(&v)) continue;
                }
                if (run_body(R, &s->branch[j]) != 0) return -1;
                break;
            }
            break;
        case S_FOR: {
            if (eval(R, s->e, &v) != 0) return -1;
            if (v.t != V_LIST) return rerr(R, s->line, "a for loop over a %s is not supported", type_name(v.t));
            static const char *const lk[] = {"index0", "index", "first", "last", "length", "revindex", "revindex0"};
            for (int i = 0; i < v.len; i++) {
                val *li = amalloc(R, sizeof(val) * 7);
                long long n = v.len;
                long long x[7] = {i, i + 1, i == 0, i == n - 1, n, n - i, n - i - 1};
                for (int j = 0; j < 7; j++) li[j] = (val){j == 2 || j == 3 ? V_BOOL : V_INT, x[j], NULL, 0, NULL, NULL, 0};
                val loop = {V_DICT, 0, NULL, 0, li, (const char **)lk, 7};
                int saved = R->nvars;
                R->scope++;
                set_var(R, "loop", loop);
                set_var(R, s->s, v.items[i]);
                int rc = run_body(R, &s->branch[0]);
                R->scope--;
                R->nvars = saved;
                if (rc != 0) return -1;
            }
            break;
        }
        }
    }
    return 0;
}

char *fx_jinja_render(const fx_jinja *t, const fx_chat_msg *msgs, int n, const char *bos, const char *eos,
                      int add_generation_prompt) {
    render R;
    memset(&R, 0, sizeof R);
    R.T = t;
    static const char *const mk[] = {"role", "content"};
    val *items = amalloc(&R, sizeof(val) * (size_t)(n ? n : 1));
    for (int i = 0; i < n; i++) {
        val *kv = amalloc(&R, sizeof(val) * 2);
        kv[0] = vstr(&R, msgs[i].role, strlen(msgs[i].role));
        kv[1] = vstr(&R, msgs[i].content, strlen(msgs[i].content));
        items[i] = (val){V_DICT, 0, NULL, 0, kv, (const char **)mk, 2};
    }
    set_var(&R, "messages", (val){V_LIST, 0, NULL, 0, items, NULL, n});
    set_var(&R, "bos_token", vstr(&R, bos ? bos : "", bos ? strlen(bos) : 0));
    set_var(&R, "eos_token", vstr(&R, eos ? eos : "", eos ? strlen(eos) : 0));
    set_var(&R, "add_generation_prompt", (val){V_BOOL, add_generation_prompt != 0, NULL, 0, NULL, NULL, 0});
    R.scope = 1;
    int rc = run_body(&R, &t->top);
    while (R.blocks) { arena_blk *b = R.blocks; R.blocks = b->next; free(b); }
    free(R.vars);
    if (rc != 0) { fx_seterr("%s", R.err); free(R.out); return NULL; }
    emit(&R, "", 0);
    R.out[R.on] = 0;
    return R.out;
}
