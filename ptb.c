/* ptb.c: the tokenisation e2e-metrics applies before ROUGE-L and CIDEr: the Stanford PTB tokenizer of
 * CoreNLP 3.4.1 as its pycocoevalcap runs it (-preserveLines -lowerCase: PTB3 escaping, latex quotes,
 * currency and fraction normalisation, untokenizable characters deleted), then pycocoevalcap's removal of
 * punctuation tokens. The tokenizer's rules are restated below as patterns for a small longest-match
 * engine (Thompson NFA); JFlex's semantics are kept: the longest match wins, trailing context counted,
 * earlier rules win ties, literals are caseless and character classes are not. Java's UTF-16 shows here
 * once: a code point above U+FFFF is two untokenizable units, so it is deleted. It scores nothing. */
#include "fedex.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* ============================================================================================
 * The pattern engine
 * ============================================================================================
 * Syntax: literals (ASCII letters match either case), \x escapes a metacharacter, \uXXXX, [...] classes
 * with ranges and ^, \L letter (Java isLetter), \D decimal digit, \U upper case, \A any character;
 * ( ) | * + ? {m} {m,n}. */

enum { K_LIT, K_CAT, K_ALT, K_STAR, K_PLUS, K_OPT, K_REP };
typedef struct { int kind, a, b, lo, hi, cls; } ast;

enum { NAMED = 0x7FFFFF00 };               /* ranges from here on stand for \L \D \U \A */
typedef struct { int neg, n; uint32_t lo[48], hi[48]; uint8_t ascii[128]; } cclass;

enum { S_CHR, S_SPLIT, S_MATCH };
typedef struct { int type, out, out1, cls; } state;

typedef struct {
    ast *a; int na, ca;
    cclass *c; int nc, cc;
    state *s; int ns, cs;
    int start;
    int *first, nfirst;                     /* the character states the start reaches */
    uint8_t ascii[128];                     /* whether a match can begin with this ASCII character */
    const char *p;                          /* parse position */
} re;

static int new_ast(re *r, int kind, int a, int b) {
    if (r->na == r->ca) { r->ca = r->ca ? r->ca * 2 : 64; r->a = fx_realloc(r->a, (size_t)r->ca * sizeof *r->a); }
    r->a[r->na] = (ast){kind, a, b, 0, 0, -1};
    return r->na++;
}
static int new_class(re *r) {
    if (r->nc == r->cc) { r->cc = r->cc ? r->cc * 2 : 32; r->c = fx_realloc(r->c, (size_t)r->cc * sizeof *r->c); }
    memset(&r->c[r->nc], 0, sizeof r->c[r->nc]);
    return r->nc++;
}
static void class_add(cclass *c, uint32_t lo, uint32_t hi) {
    if (c->n == 48) fx_die("ptb.c: a character class has more than 48 ranges");
    c->lo[c->n] = lo; c->hi[c->n++] = hi;
}

static uint32_t parse_cp(re *r) {
    uint32_t cp;
    int k = fx_utf8_next(r->p, 4, &cp);
    r->p += k > 0 ? k : 1;
    return cp;
}
static int hexval(char c) { return c <= '9' ? c - '0' : (c | 32) - 'a' + 10; }

/* One character or escape; *named: 1 to 4 for \L \D \U \A. */
static uint32_t parse_char(re *r, int *named) {
    *named = 0;
    if (*r->p != '\\') return parse_cp(r);
    r->p++;
    char e = *r->p++;
    if (e == 'u') {
        uint32_t v = 0;
        for (int i = 0; i < 4; i++) v = v * 16 + (uint32_t)hexval(*r->p++);
        return v;
    }
    if (e == 'L') { *named = 1; return 0; }
    if (e == 'D') { *named = 2; return 0; }
    if (e == 'U') { *named = 3; return 0; }
    if (e == 'A') { *named = 4; return 0; }
    if (e == 't') return '\t';
    if (e == 'n') return '\n';
    if (e == 'r') return '\r';
    if (e == 'f') return '\f';
    return (uint32_t)(unsigned char)e;
}

static int parse_alt(re *r);
static int parse_atom(re *r) {
    int cls = -1;
    if (*r->p == '(') {
        r->p++;
        int x = parse_alt(r);
        if (*r->p++ != ')') fx_die("ptb.c: unbalanced pattern");
        return x;
    }
    cls = new_class(r);
    cclass *c = &r->c[cls];
    if (*r->p == '[') {
        r->p++;
        if (*r->p == '^') { c->neg = 1; r->p++; }
        while (*r->p != ']') {
            int named;
            uint32_t lo = parse_char(r, &named);
            c = &r->c[cls];
            if (named) { class_add(c, NAMED + (uint32_t)named, NAMED + (uint32_t)named); continue; }
            uint32_t hi = lo;
            if (r->p[0] == '-' && r->p[1] != ']') { r->p++; hi = parse_char(r, &named); }
            class_add(c, lo, hi);
        }
        r->p++;
    } else {
        int named;
        uint32_t ch = parse_char(r, &named);
        if (named) class_add(c, NAMED + (uint32_t)named, NAMED + (uint32_t)named);
        else {
            class_add(c, ch, ch);
            if (ch < 128 && ((ch | 32) >= 'a' && (ch | 32) <= 'z')) class_add(c, ch ^ 32, ch ^ 32); /* caseless */
        }
    }
    int x = new_ast(r, K_LIT, -1, -1);
    r->a[x].cls = cls;
    return x;
}
static int parse_rep(re *r) {
    int x = parse_atom(r);
    for (;;) {
        char q = *r->p;
        if (q == '*') { r->p++; x = new_ast(r, K_STAR, x, -1); }
        else if (q == '+') { r->p++; x = new_ast(r, K_PLUS, x, -1); }
        else if (q == '?') { r->p++; x = new_ast(r, K_OPT, x, -1); }
        else if (q == '{') {
            r->p++;
            int lo = 0, hi;
            while (*r->p >= '0' && *r->p <= '9') lo = lo * 10 + (*r->p++ - '0');
            hi = lo;
            if (*r->p == ',') { r->p++; hi = 0; while (*r->p >= '0' && *r->p <= '9') hi = hi * 10 + (*r->p++ - '0'); }
            r->p++; /* } */
            x = new_ast(r, K_REP, x, -1);
            r->a[x].lo = lo; r->a[x].hi = hi;
        } else return x;
    }
}
static int parse_cat(re *r) {
    int x = -1;
    while (*r->p && *r->p != '|' && *r->p != ')') {
        int y = parse_rep(r);
        x = x < 0 ? y : new_ast(r, K_CAT, x, y);
    }
    if (x < 0) fx_die("ptb.c: empty pattern branch");
    return x;
}
static int parse_alt(re *r) {
    int x = parse_cat(r);
    while (*r->p == '|') { r->p++; x = new_ast(r, K_ALT, x, parse_cat(r)); }
    return x;
}

static int new_state(re *r, int type, int out, int out1, int cls) {
    if (r->ns == r->cs) { r->cs = r->cs ? r->cs * 2 : 64; r->s = fx_realloc(r->s, (size_t)r->cs * sizeof *r->s); }
    r->s[r->ns] = (state){type, out, out1, cls};
    return r->ns++;
}

/* The NFA of AST node X followed by state NEXT; returns its start. */
static int build(re *r, int x, int next) {
    ast a = r->a[x];
    switch (a.kind) {
    case K_LIT: return new_state(r, S_CHR, next, -1, a.cls);
    case K_CAT: return build(r, a.a, build(r, a.b, next));
    case K_ALT: return new_state(r, S_SPLIT, build(r, a.a, next), build(r, a.b, next), -1);
    case K_OPT: return new_state(r, S_SPLIT, build(r, a.a, next), next, -1);
    case K_STAR: case K_PLUS: {
        int s = new_state(r, S_SPLIT, -1, next, -1);
        int body = build(r, a.a, s);
        r->s[s].out = body;
        return a.kind == K_STAR ? s : body;
    }
    default: { /* {lo,hi}: hi - lo optional copies nested, then lo required ones */
        int t = next;
        for (int i = a.lo; i < a.hi; i++) t = new_state(r, S_SPLIT, build(r, a.a, t), next, -1);
        for (int i = 0; i < a.lo; i++) t = build(r, a.a, t);
        return t;
    }
    }
}

static int named_match(uint32_t k, uint32_t cp);
static void re_compile(re *r, const char *pat) {
    memset(r, 0, sizeof *r);
    r->p = pat;
    int x = parse_alt(r);
    if (*r->p) fx_die("ptb.c: trailing text in pattern at '%s'", r->p);
    r->start = build(r, x, new_state(r, S_MATCH, -1, -1, -1));
    for (int k = 0; k < r->nc; k++) {
        cclass *c = &r->c[k];
        for (uint32_t ch = 0; ch < 128; ch++) {
            int in = 0;
            for (int i = 0; i < c->n && !in; i++)
                in = c->lo[i] >= NAMED ? named_match(c->lo[i] - NAMED, ch) : ch >= c->lo[i] && ch <= c->hi[i];
            c->ascii[ch] = (uint8_t)(in != c->neg);
        }
    }
    free(r->a);
    r->a = NULL;
}

static int named_match(uint32_t k, uint32_t cp) {
    if (k == 4) return 1;
    if (cp < 128) {
        if (k == 1) return (cp | 32) >= 'a' && (cp | 32) <= 'z';
        return k == 2 ? cp >= '0' && cp <= '9' : cp >= 'A' && cp <= 'Z';
    }
    if (cp > 0xFFFF) return 0;
    if (k == 1) return fx_uni_class(cp) == FX_UNI_LETTER;
    return fx_cp_flags(cp) & (k == 2 ? FX_CP_DIGIT : FX_CP_UPPER);
}
static int class_match(const cclass *c, uint32_t cp) {
    if (cp < 128) return c->ascii[cp];
    int in = 0;
    for (int i = 0; i < c->n && !in; i++)
        in = c->lo[i] >= NAMED ? named_match(c->lo[i] - NAMED, cp) : cp >= c->lo[i] && cp <= c->hi[i];
    return in != c->neg;
}

/* The scratch of a simulation: two state lists and a stamp per state. */
typedef struct { int *cur, *nxt, *mark, ncur, nnxt, stamp, cap; } sim;

static void add_state(const re *r, sim *m, int *list, int *n, int s) {
    if (m->mark[s] == m->stamp) return;
    m->mark[s] = m->stamp;
    if (r->s[s].type == S_SPLIT) {
        add_state(r, m, list, n, r->s[s].out);
        add_state(r, m, list, n, r->s[s].out1);
    } else list[(*n)++] = s;
}

static void sim_fit(sim *m, int ns) {
    if (ns <= m->cap) return;
    m->cap = ns;
    m->cur = fx_realloc(m->cur, (size_t)ns * sizeof *m->cur);
    m->nxt = fx_realloc(m->nxt, (size_t)ns * sizeof *m->nxt);
    m->mark = fx_realloc(m->mark, (size_t)ns * sizeof *m->mark);
    memset(m->mark, 0, (size_t)ns * sizeof *m->mark);
    m->stamp = 0;
}

static int class_match(const cclass *c, uint32_t cp);
/* The start's character states, and which ASCII characters can begin a match: most rules are ruled
 * out by the first character without a simulation. */
static void re_prepare(re *r, sim *m) {
    sim_fit(m, r->ns);
    r->first = fx_malloc((size_t)r->ns * sizeof *r->first);
    r->nfirst = 0;
    m->stamp++;
    add_state(r, m, r->first, &r->nfirst, r->start);
    for (uint32_t c = 0; c < 128; c++) {
        r->ascii[c] = 0;
        for (int k = 0; k < r->nfirst && !r->ascii[c]; k++) {
            const state *st = &r->s[r->first[k]];
            r->ascii[c] = st->type == S_CHR && class_match(&r->c[st->cls], c);
        }
    }
}
static int re_can_start(const re *r, uint32_t c) {
    if (c < 128) return r->ascii[c];
    for (int k = 0; k < r->nfirst; k++) {
        const state *st = &r->s[r->first[k]];
        if (st->type == S_CHR && class_match(&r->c[st->cls], c)) return 1;
    }
    return 0;
}

/* Runs R on S[i..n): the lengths at which it matches, into ENDS (room for n - i + 1) when not NULL;
 * returns the longest, -1 for none. */
static int re_run(const re *r, sim *m, const uint32_t *s, int n, int i, int *ends, int *nends) {
    sim_fit(m, r->ns);
    int best = -1;
    if (nends) *nends = 0;
    m->ncur = 0;
    m->stamp++;
    add_state(r, m, m->cur, &m->ncur, r->start);
    for (int p = i;; p++) {
        for (int k = 0; k < m->ncur; k++)
            if (r->s[m->cur[k]].type == S_MATCH) {
                best = p - i;
                if (ends) ends[(*nends)++] = p - i;
                break;
            }
        if (p == n || m->ncur == 0) break;
        m->nnxt = 0;
        m->stamp++;
        for (int k = 0; k < m->ncur; k++) {
            const state *st = &r->s[m->cur[k]];
            if (st->type == S_CHR && class_match(&r->c[st->cls], s[p])) add_state(r, m, m->nxt, &m->nnxt, st->out);
        }
        int *t = m->cur; m->cur = m->nxt; m->nxt = t;
        m->ncur = m->nnxt;
    }
    return best;
}

/* ============================================================================================
 * The tokenizer's definitions (PTBLexer 3.4.1), restated
 * ============================================================================================ */

#define SPACE "[ \\t\\u00A0\\u2000-\\u200A\\u3000]"
#define NEWLINE "(\\r|\\r?\\n|\\u2028|\\u2029|\\u000B|\\u000C|\\u0085)"
#define SPACENL "(" SPACE "|" NEWLINE ")"
#define SGML_NAME "[A-Za-z][A-Za-z0-9_:.\\-]*"
#define SGML "<([!?][A-Za-z\\-][^>\\r\\n]*|" SGML_NAME "([ ]+(" SGML_NAME "|" SGML_NAME \
    "[ ]*=[ ]*('[^']*'|\"[^\"]*\")))*[ ]*/?|/" SGML_NAME ")[ ]*>"
#define DIGIT "[\\D\\u07C0-\\u07C9]"
#define LETTER "([\\L\\u00AD\\u0237-\\u024F\\u02C2-\\u02C5\\u02D2-\\u02DF\\u02E5-\\u02FF\\u0300-\\u036F" \
    "\\u0370-\\u037D\\u0384\\u0385\\u03CF\\u03F6\\u03FC-\\u03FF\\u0483-\\u0487\\u04CF\\u04F6-\\u04FF\\u0510-\\u0525" \
    "\\u055A-\\u055F\\u0591-\\u05BD\\u05BF\\u05C1\\u05C2\\u05C4\\u05C5\\u05C7\\u0615-\\u061A\\u063B-\\u063F" \
    "\\u064B-\\u065E\\u0670\\u06D6-\\u06EF\\u06FA-\\u06FF\\u070F\\u0711\\u0730-\\u074F\\u0750-\\u077F]|" \
    "[\\u07A6-\\u07B1\\u07CA-\\u07F5\\u07FA\\u0900-\\u0903\\u093C\\u093E-\\u094E\\u0951-\\u0955\\u0962-\\u0963" \
    "\\u0981-\\u0983\\u09BC-\\u09C4\\u09C7\\u09C8\\u09CB-\\u09CD\\u09D7\\u09E2\\u09E3\\u0A01-\\u0A03\\u0A3C" \
    "\\u0A3E-\\u0A4F\\u0A81-\\u0A83\\u0ABC-\\u0ACF\\u0B82\\u0BBE-\\u0BC2\\u0BC6-\\u0BC8\\u0BCA-\\u0BCD" \
    "\\u0C01-\\u0C03\\u0C3E-\\u0C56\\u0D3E-\\u0D44\\u0D46-\\u0D48\\u0E30-\\u0E3A\\u0E47-\\u0E4E\\u0EB1-\\u0EBC" \
    "\\u0EC8-\\u0ECD]|&[aeiouAEIOU](acute|grave|uml);)"
#define LD "(" LETTER "|" DIGIT ")"
#define WORD LETTER LD "*([.!?]" LETTER LD "*)*"
#define NUM "(" DIGIT "+|" DIGIT "*([.:,\\u00AD\\u066B\\u066C]" DIGIT "+)+)"
#define APOS "(['\\u0092\\u2019]|&apos;)"
#define APOSETC "(" APOS "|[`\\u0091\\u2018\\u201B])"
#define LETTER_OR_DIGIT "[\\L\\D]"
#define THING_PART "([dDoOlL]" APOSETC LETTER_OR_DIGIT ")?" LETTER_OR_DIGIT "+"
#define HYPHEN "[\\-_\\u058A\\u2010\\u2011]"
#define ACRO_SPECIAL "(Canada|Sino|Korean|EU|Japan|non)-U\\.S|U\\.S\\.-(U\\.K|U\\.S\\.S\\.R)"
#define ACRO "([A-Za-z](\\.[A-Za-z])*|" ACRO_SPECIAL ")"
#define ACRO2 "([A-Za-z](\\.[A-Za-z])+|" ACRO_SPECIAL ")"
#define REDAUX APOS "([msdMSD]|re|ve|ll)"
#define SREDAUX "n" APOSETC "t"
#define ABBREV1 "(Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec|Mon|Tue|Tues|Wed|Thu|Thurs|Fri|" \
    "Ala|Ariz|[A]z|[A]rk|Calif|Colo|Conn|Ct|Dak|[D]el|Fla|Ga|[I]ll|Ind|Kans?|Ky|[L]a|[M]ass|Md|Mich|Minn|" \
    "[M]iss|Mo|Mont|Neb|Nev|Okla|[O]re|[P]a|Penn|Tenn|[T]ex|Va|Vt|[W]ash|Wisc?|Wyo|" \
    "Inc|Cos?|Corp|Pp?t[ye]s?|Ltd|Plc|Rt|Bancorp|Bhd|Assn|Univ|Intl|Sys|tel|est|ext|sq|" \
    "Jr|Sr|Bros|(Ed|Ph)\\.D|Blvd|Rd|Esq|etc|al|seq|Bldg)\\."
#define ABBREV4 "(Mr|Mrs|Ms|[M]iss|Drs?|Profs?|Sens?|Reps?|Attys?|Lt|Col|Gen|Messrs|Govs?|Adm|Rev|Maj|Sgt|" \
    "Cpl|Pvt|Capt|Ste?|Ave|Pres|Lieut|Hon|Brig|Co?mdr|Pfc|Spc|Supts?|Det|Mt|Ft|Adj|Adv|Asst|Assoc|Ens|" \
    "Insp|Mlle|Mme|Msgr|Sfc|vs|Alex|Wm|Jos|Cie|a\\.k\\.a|cf|TREAS|Ph|" ACRO "|Invt|Elec|Natl|M[ft]g|Dept)"
#define HTHING "[A-Za-z0-9][A-Za-z0-9.,\\u00AD]*(-([A-Za-z0-9\\u00AD]+|" ACRO2 "\\.))+"
#define THING THING_PART "(" HYPHEN THING_PART ")*"
#define THINGA "[A-Z]+(([+&]|&amp;)[A-Z]+)+"
#define INSENTP "[,;:\\u3001]"
#define UPPER_WORDS "([A]bout|[A]ccording|[A]dditionally|[A]fter|[A]n|[A]|[A]s|[A]t|[B]ut|[E]arlier|[H]e|[H]er|" \
    "[H]ere|[H]owever|[I]f|[I]n|[I]t|[L]ast|[M]any|[M]ore|[M]r\\.|[M]s\\.|[N]ow|[O]nce|[O]ne|[O]ther|[O]ur|" \
    "[S]he|[S]ince|[S]o|[S]ome|[S]uch|[T]hat|[T]he|[T]heir|[T]hen|[T]here|[T]hese|[T]hey|[T]his|[W]e|[W]hen|" \
    "[W]hile|[W]hat|[Y]et|[Y]ou|" SGML ")"
#define FILENAME_EXT "(bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|" \
    "php|pl|png|ppt|ps|py|sql|tar|txt|wav|x|xml|zip)"
#define URLCH "[^ \\t\\n\\f\\r\"<>|(){}"
#define PHONE_SEP "[\\- \\u00A0]"
#define MISCSYMBOL "[+%&~\\^|\\\\\\u00A6\\u00A7\\u00A8\\u00A9\\u00AC\\u00AE\\u00AF\\u00B0-\\u00B3\\u00B4-\\u00BA" \
    "\\u00D7\\u00F7\\u0387\\u05BE\\u05C0\\u05C3\\u05C6\\u05F3\\u05F4\\u0600-\\u0603\\u0606-\\u060A\\u060C" \
    "\\u0614\\u061B\\u061E\\u066A\\u066D\\u0703-\\u070D\\u07F6\\u07F7\\u07F8\\u0964\\u0965\\u0E4F\\u1FBD]|" \
    "[\\u2016\\u2017\\u2020-\\u2023\\u2030-\\u2038\\u203B\\u203E-\\u2042\\u2044\\u207A-\\u207F\\u208A-\\u208E" \
    "\\u2100-\\u214F\\u2190-\\u21FF\\u2200-\\u2BFF\\u3012\\u30FB\\uFF01-\\uFF0F\\uFF1A-\\uFF20\\uFF3B-\\uFF40" \
    "\\uFF5B-\\uFF65]"

/* What a rule does with its text. */
enum {
    A_KEEP, A_BACK2, A_BACK3, A_SGML, A_DASH, A_AMP, A_WORD, A_QUOTE_R, A_QUOTE_L, A_FRAC, A_FRAC2,
    A_CURRENCY, A_ACRONYM, A_ABBREV_END, A_PHONE, A_LT, A_GT, A_SMILEY, A_LCB, A_RCB, A_LSB, A_RSB, A_LRB,
    A_RRB, A_HYPHENS, A_ELLIPSIS, A_SKIP, A_NEWLINE, A_DELETE
};

typedef struct { const char *body, *look; int action; } rule;

/* In the lexer's order, which breaks ties between matches of one length. */
static const rule rules[] = {
    {"c[+][+]|(c|f)#", NULL, A_KEEP},
    {"cannot|'twas", NULL, A_BACK3},
    {"'tis|gonna|gotta|lemme|gimme|wanna", NULL, A_BACK2},
    {SGML, NULL, A_SGML},
    {"&(MD|mdash|ndash);|[\\u0096\\u0097\\u2013\\u2014\\u2015]", NULL, A_DASH},
    {"&amp;", NULL, A_AMP},
    {"&(HT|TL|UR|LR|QC|QL|QR|odq|cdq|#[0-9]+);", NULL, A_KEEP},
    {WORD, REDAUX, A_WORD},
    {"[A-Za-z\\u00AD]*[A-MO-Za-mo-z]\\u00AD*", SREDAUX, A_WORD},
    {WORD, NULL, A_WORD},
    {APOS "n" APOS "?|[lLdDjJ]" APOS "|Dunkin" APOS "|somethin" APOS "|ol" APOS "|" APOS "em|[A-HJ-XZn]" APOSETC
     "\\L\\L\\L*|" APOS "[2-9]0s|" APOS "till?|\\L\\L*[aeiouyAEIOUY]" APOSETC "[aeiouA-Z]\\L*|" APOS
     "cause|cont'd\\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l|O" APOSETC "o", NULL, A_KEEP},
    {"y" APOS, "\\L", A_KEEP},
    {"https?://" URLCH "]+[^ \\t\\n\\f\\r\"<>|.!?(){},\\-]", NULL, A_KEEP},
    {"((www\\.(" URLCH ".!?,]+\\.)+[a-zA-Z]{2,4})|(([^ \\t\\n\\f\\r\"`'<>|.!?(){},-_$]+\\.)+(com|net|org|edu)))"
     "(/[^ \\t\\n\\f\\r\"<>|()]+[^ \\t\\n\\f\\r\"<>|.!?(){},\\-])?", NULL, A_KEEP},
    {"(&lt;|<)?[a-zA-Z0-9][^ \\t\\n\\f\\r\"<>|()\\u00A0{}]*@([^ \\t\\n\\f\\r\"<>|(){}.\\u00A0]+\\.)*"
     "([^ \\t\\n\\f\\r\"<>|(){}.\\u00A0]+)(&gt;|>)?", NULL, A_KEEP},
    {"@[a-zA-Z_][a-zA-Z_0-9]*|#" LETTER "+", NULL, A_KEEP},
    {REDAUX, "[^A-Za-z]", A_QUOTE_R},
    {SREDAUX, "[^A-Za-z]", A_QUOTE_R},
    {DIGIT DIGIT "?[\\-/]" DIGIT DIGIT "?[\\-/]" DIGIT "{2,4}", NULL, A_KEEP},
    {"[\\-+]?" NUM, NULL, A_WORD},
    {"[\\u207A\\u207B\\u208A\\u208B]?([\\u2070\\u00B9\\u00B2\\u00B3\\u2074-\\u2079]+|[\\u2080-\\u2089]+)", NULL, A_KEEP},
    {"(" DIGIT "{1,4}[\\- \\u00A0])?" DIGIT "{1,4}(\\\\?/|\\u2044)" DIGIT "{1,4}", NULL, A_FRAC},
    {"[\\u00BC\\u00BD\\u00BE\\u2153-\\u215E]", NULL, A_FRAC2},
    {"-(RRB|LRB|RCB|LCB|RSB|LSB)-|C\\.D\\.s|pro-|anti-|S(&|&amp;)P-500|S(&|&amp;)Ls|Cap" APOS "n|c" APOS "est",
     NULL, A_AMP},
    {"[A-Za-z0-9]+(-[A-Za-z]+){0,2}(\\\\?/[A-Za-z0-9]+(-[A-Za-z]+){0,2}){1,2}", NULL, A_KEEP},
    {"[A-Z]*\\$|#", NULL, A_KEEP},
    {"[\\u00A2\\u00A3\\u00A4\\u00A5\\u0080\\u20A0\\u20AC\\u060B\\u0E3F\\u20A4\\uFFE0\\uFFE1\\uFFE5\\uFFE6]", NULL,
     A_CURRENCY},
    {ACRO "\\.", "(" SPACENL ")+" UPPER_WORDS SPACENL, A_ACRONYM},
    {"(ca|figs?|prop|nos?|art|bldg|prop|pp|op)\\.", SPACENL "?[\\D]", A_KEEP},
    {"(pt[eyEY]|co)\\.", SPACE "(ltd|lim)", A_KEEP},
    {ABBREV1, SPACENL "(" SPACENL "|[\\U]|" SGML ")", A_ABBREV_END},
    {ABBREV1, "\\A\\A", A_KEEP},
    {ABBREV1, NULL, A_ABBREV_END},
    {ABBREV4 "\\.", NULL, A_KEEP},
    {ABBREV4, SPACE, A_KEEP},
    {ACRO, SPACENL, A_KEEP},
    {APOS "[0-9][0-9]", SPACENL, A_KEEP},
    {LD "+([.]" LD "+)*([.]" FILENAME_EXT ")", "(" SPACENL "|[.?!,])", A_KEEP},
    {WORD "\\.", INSENTP, A_WORD},
    {"(\\([0-9]{2,3}\\)[ \\u00A0]?|(\\+\\+?)?([0-9]{2,4}" PHONE_SEP ")?[0-9]{2,4}" PHONE_SEP ")[0-9]{3,4}" PHONE_SEP
     "?[0-9]{3,5}|((\\+\\+?)?[0-9]{2,4}\\.)?[0-9]{2,4}\\.[0-9]{3,4}\\.[0-9]{3,5}", NULL, A_PHONE},
    {"\"|&quot;", "[A-Za-z0-9$]", A_QUOTE_L},
    {"\"|&quot;", NULL, A_QUOTE_R},
    {"\\u007F", NULL, A_SKIP},
    {"<|&lt;", NULL, A_LT},
    {">|&gt;", NULL, A_GT},
    {"[<>]?[:;=][\\-o*']?[()DPdpO\\\\{@|\\[\\]]", "[^A-Za-z0-9]", A_SMILEY},
    {"[\\^x=~<>]\\.\\[\\^x=~<>\\]|[\\-\\^x=~<>']_[\\-\\^x=~<>']|\\([\\-\\^x=~<>'][_.]?[\\-\\^x=~<>']\\)|"
     "\\([\\^x=~<>']-[\\^x=~<>'`]\\)", NULL, A_SMILEY},
    {"\\{", NULL, A_LCB},
    {"\\}", NULL, A_RCB},
    {"\\[", NULL, A_LSB},
    {"\\]", NULL, A_RSB},
    {"\\(", NULL, A_LRB},
    {"\\)", NULL, A_RRB},
    {"\\-+", NULL, A_HYPHENS},
    {"\\.\\.\\.(\\.\\.?)?|(\\.[ \\u00A0]){2,4}\\.|[\\u0085\\u2026]", NULL, A_ELLIPSIS},
    {"@+|#+|_+", NULL, A_KEEP},
    {"\\*+|(\\\\\\*){1,3}", NULL, A_KEEP},
    {INSENTP, NULL, A_KEEP},
    {"[?!]+", NULL, A_KEEP},
    {"[.\\u00A1\\u00BF\\u037E\\u0589\\u061F\\u06D4\\u0700-\\u0702\\u07FA\\u3002]", NULL, A_KEEP},
    {"=", NULL, A_KEEP},
    {"/", NULL, A_KEEP},
    {HTHING "\\.", INSENTP, A_WORD},
    {HTHING, NULL, A_WORD},
    {THING "\\.", INSENTP, A_KEEP},
    {THING, NULL, A_KEEP},
    {THINGA "\\.", INSENTP, A_AMP},
    {THINGA, NULL, A_AMP},
    {"'", "[A-Za-z][^ \\t\\n\\r\\u00A0]", A_QUOTE_L},
    {REDAUX, NULL, A_QUOTE_R},
    {SREDAUX, NULL, A_QUOTE_R},
    {APOS "|''|[`\\u2018\\u2019\\u201A\\u201B\\u201C\\u201D\\u0091\\u0092\\u0093\\u0094\\u201E\\u201F\\u2039\\u203A"
     "\\u00AB\\u00BB][`\\u2018\\u2019\\u201A\\u201B\\u201C\\u201D\\u0091\\u0092\\u0093\\u0094\\u201E\\u201F\\u2039"
     "\\u203A\\u00AB\\u00BB]?", NULL, A_QUOTE_R},
    {"<<|>>", NULL, A_KEEP},
    {MISCSYMBOL, NULL, A_KEEP},
    {"\\u0000|" SPACE "+|[\\u200B\\u200E\\u200F\\uFEFF]", NULL, A_SKIP},
    {NEWLINE, NULL, A_NEWLINE},
    {"&nbsp;", NULL, A_SKIP},
};
enum { NRULES = (int)(sizeof rules / sizeof rules[0]) };

/* ============================================================================================
 * The lexer
 * ============================================================================================ */

/* latexQuotes: ' and &apos; to ` (probably left) or '; " and &quot; to `` or ''; the curly and cp1252
 * quotes to their latex forms. */
static void latex_quotes(fx_cps *t, fx_cps *w, int left) {
    fx_cps_replace(t, w, "&apos;", "'", 0);
    fx_cps_replace(t, w, "&quot;", "\"", 0);
    w->n = 0;
    for (int i = 0; i < t->n; i++) {
        uint32_t c = t->v[i];
        if (c == '\'') fx_cps_put(w, left ? '`' : '\'');
        else if (c == '"') fx_cps_str(w, left ? "``" : "''");
        else if (c == 0x91 || c == 0x2018 || c == 0x201B || c == 0x2039) fx_cps_put(w, '`');
        else if (c == 0x92 || c == 0x2019 || c == 0x203A) fx_cps_put(w, '\'');
        else if (c == 0x93 || c == 0x201C || c == 0xAB) fx_cps_str(w, "``");
        else if (c == 0x94 || c == 0x201D || c == 0xBB) fx_cps_str(w, "''");
        else fx_cps_put(w, c);
    }
    fx_cps x = *t; *t = *w; *w = x;
}

/* T set to the ASCII S. */
static void set(fx_cps *t, const char *s) { t->n = 0; fx_cps_str(t, s); }

/* The token for rule action A on T, in place (W: scratch); 0, or -1 for no token. */
static int act(int a, fx_cps *t, fx_cps *w) {
    switch (a) {
    case A_SGML: case A_FRAC: case A_PHONE: case A_SMILEY:
        if (a != A_SMILEY) for (int i = 0; i < t->n; i++) if (t->v[i] == ' ') t->v[i] = 0xA0;
        if (a == A_PHONE || a == A_SMILEY) {
            fx_cps_replace(t, w, "(", "-LRB-", 0);
            fx_cps_replace(t, w, ")", "-RRB-", 0);
        }
        return 0;
    case A_DASH: set(t, "--"); return 0;
    case A_AMP: fx_cps_replace(t, w, "&amp;", "&", 1); return 0;
    case A_WORD: { /* soft hyphens removed; a token of soft hyphens only is "-" */
        int k = 0;
        for (int i = 0; i < t->n; i++) if (t->v[i] != 0xAD) t->v[k++] = t->v[i];
        t->n = k;
        if (k == 0) set(t, "-");
        return 0;
    }
    case A_QUOTE_R: case A_QUOTE_L: latex_quotes(t, w, a == A_QUOTE_L); return 0;
    case A_FRAC2: {
        static const char *const frac[] = {"1/4", "1/2", "3/4"};
        uint32_t c = t->v[0];
        const char *f = c >= 0xBC && c <= 0xBE ? frac[c - 0xBC] : c == 0x2153 ? "1/3" : c == 0x2154 ? "2/3" : NULL;
        if (f) set(t, f);
        return 0;
    }
    case A_CURRENCY: {
        uint32_t c = t->v[0];
        if (c == 0xA2) set(t, "cents");
        else if (c == 0xA3) set(t, "#");
        else if (c == 0x80 || c == 0xA4 || c == 0x20A0 || c == 0x20AC) set(t, "$");
        return 0;
    }
    case A_LT: set(t, "<"); return 0;
    case A_GT: set(t, ">"); return 0;
    case A_LCB: set(t, "-LCB-"); return 0;
    case A_RCB: set(t, "-RCB-"); return 0;
    case A_LSB: set(t, "-LSB-"); return 0;
    case A_RSB: set(t, "-RSB-"); return 0;
    case A_LRB: set(t, "-LRB-"); return 0;
    case A_RRB: set(t, "-RRB-"); return 0;
    case A_HYPHENS: if (t->n >= 3 && t->n <= 4) set(t, "--"); return 0;
    case A_ELLIPSIS: set(t, "..."); return 0;
    case A_SKIP: case A_DELETE: case A_NEWLINE: return -1;
    default: return 0;
    }
}

/* pycocoevalcap's PUNCTUATIONS, compared with the lower-cased tokens (so the bracket tokens, upper case
 * there, never match and stay). */
static int is_punct(const uint32_t *t, int n) {
    static const char *const p[] = {"''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"};
    for (size_t k = 0; k < sizeof p / sizeof p[0]; k++) {
        int l = (int)strlen(p[k]), m = l == n;
        for (int i = 0; m && i < l; i++) m = t[i] == (uint32_t)(unsigned char)p[k][i];
        if (m) return 1;
    }
    return 0;
}

static int is_break(uint32_t c) {
    return c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x85 || c == 0x2028 || c == 0x2029;
}

static char *to_utf8(const uint32_t *v, int n) {
    char *s = fx_malloc((size_t)n * 4 + 1), *o = s;
    for (int i = 0; i < n; i++) o += fx_utf8_put(o, v[i]);
    *o = 0;
    return s;
}

/* The rules compiled once, shared read-only by every call (and thread). */
static re body[NRULES], look[NRULES];
static int maxstates;
static pthread_once_t rules_once = PTHREAD_ONCE_INIT;
static void compile_rules(void) {
    sim m = {0};
    for (int r = 0; r < NRULES; r++) {
        re_compile(&body[r], rules[r].body);
        re_prepare(&body[r], &m);
        if (body[r].ns > maxstates) maxstates = body[r].ns;
        if (rules[r].look) {
            re_compile(&look[r], rules[r].look);
            re_prepare(&look[r], &m);
            if (look[r].ns > maxstates) maxstates = look[r].ns;
        }
    }
    free(m.cur); free(m.nxt); free(m.mark);
}

int fx_ptb_tokenize(int n, const char *const *captions, char **out) {
    /* The text the tokenizer reads: the captions joined by new lines; a line break inside one is a space. */
    fx_cps text = {0};
    for (int i = 0; i < n; i++) {
        const char *c = captions[i];
        size_t len = strlen(c);
        for (size_t k = 0; k < len;) {
            uint32_t cp;
            int b = fx_utf8_next(c + k, len - k, &cp);
            if (b <= 0) {
                fx_seterr("ptb: caption %d is not valid UTF-8 at byte %zu", i + 1, k + 1);
                free(text.v);
                return -1;
            }
            fx_cps_put(&text, is_break(cp) ? ' ' : cp);
            k += (size_t)b;
        }
        if (i + 1 < n) fx_cps_put(&text, '\n');
    }
    pthread_once(&rules_once, compile_rules);
    sim m = {0};
    sim_fit(&m, maxstates);
    int *ends = fx_malloc(((size_t)text.n + 2) * sizeof *ends);
    fx_cps tok = {0}, scratch = {0}, cur = {0};
    uint32_t *low = NULL;
    int lowcap = 0, line = 0;
    const uint32_t *s = text.v;
    for (int i = 0; i < text.n;) {
        int best = 0, brule = -1, blen = 0;
        for (int r = 0; r < NRULES; r++) {
            if (!re_can_start(&body[r], s[i])) continue;
            if (!rules[r].look) {
                int l = re_run(&body[r], &m, s, text.n, i, NULL, NULL);
                if (l > best) { best = l; brule = r; blen = l; }
                continue;
            }
            int ne, tot = 0, len = 0;
            if (re_run(&body[r], &m, s, text.n, i, ends, &ne) <= 0) continue;
            for (int k = ne - 1; k >= 0; k--) {
                int e = ends[k];
                if (e <= 0 || e + (text.n - i - e) <= tot) continue;
                if (i + e >= text.n || !re_can_start(&look[r], s[i + e])) continue;
                int l2 = re_run(&look[r], &m, s, text.n, i + e, NULL, NULL);
                if (l2 >= 0 && e + l2 > tot) { tot = e + l2; len = e; }
            }
            if (tot > best) { best = tot; brule = r; blen = len; }
        }
        if (brule < 0) { i++; continue; } /* untokenizable: deleted */
        int a = rules[brule].action, adv = blen, tl = blen;
        if (a == A_BACK3 || a == A_BACK2) { tl = adv = blen - (a == A_BACK3 ? 3 : 2); a = A_KEEP; }
        else if (a == A_ACRONYM) { if (blen == 2) tl = adv = 1; else adv = blen - 1; }
        else if (a == A_ABBREV_END) adv = blen - 1;
        if (a == A_NEWLINE) {
            if (!out[line]) out[line] = to_utf8(cur.v, cur.n);
            if (line < n - 1) line++;
            cur.n = 0;
            i += adv;
            continue;
        }
        tok.n = 0;
        for (int j = 0; j < tl; j++) fx_cps_put(&tok, s[i + j]);
        i += adv;
        if (act(a, &tok, &scratch) < 0) continue;
        if (2 * tok.n > lowcap) { lowcap = 2 * tok.n + 16; low = fx_realloc(low, (size_t)lowcap * sizeof *low); }
        int lk = fx_lower_cps(tok.v, tok.n, 1, low);
        if (is_punct(low, lk)) continue;
        if (cur.n) fx_cps_put(&cur, ' ');
        for (int j = 0; j < lk; j++) fx_cps_put(&cur, low[j]);
    }
    if (!out[line]) out[line] = to_utf8(cur.v, cur.n);
    for (int i = 0; i < n; i++) if (!out[i]) out[i] = fx_strdup("");
    free(m.cur); free(m.nxt); free(m.mark);
    free(ends); free(tok.v); free(scratch.v); free(low); free(cur.v); free(text.v);
    return 0;
}
