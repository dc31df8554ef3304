/* tests/test_json.c: the strict JSON reader. Accepts what RFC 8259 accepts with the right values
 * (numbers, escapes, surrogate pairs), refuses every kind of malformed text with a line and column,
 * and parses a real 50k-key vocab.json fast. Does not test the readers built on top of it. */
#include "fedex.h"
#include "tests/check.h"

#include <string.h>
#include <sys/resource.h>

/* ============================================================================================
 * tolerances and limits
 * ============================================================================================ */

/* Time limit for parsing roberta-base's vocab.json (900 kB, 50265 keys). Measured here: 5 ms warm and
 * 20 ms cold at -O2, 150-200 ms under ASan (whose malloc is slow), 120 ms at -O0 with coverage. A
 * quadratic parser (copying the member arrays on each insertion) would move ~100 GB and take many
 * seconds, so the limits sit well above the measurements (busy machines) and well below that. */
#ifdef __SANITIZE_ADDRESS__
#define VOCAB_PARSE_MAX_S 2.0
#else
#define VOCAB_PARSE_MAX_S 0.5
#endif

/* ============================================================================================
 * helpers
 * ============================================================================================ */

static int parse_str(const char *text, fx_json *j) { return fx_json_parse(text, strlen(text), j); }

/* TEXT must be refused, with an error naming WHERE ("line L, column C") and containing WHAT. */
static void refuse(const char *text, size_t len, const char *where, const char *what) {
    fx_json j;
    int rc = fx_json_parse(text, len, &j);
    CHECK(rc == -1, "accepted invalid JSON %.*s", (int)len, text);
    if (rc == 0) { fx_json_free(&j); return; }
    CHECK(strstr(fx_err(), where) && strstr(fx_err(), what), "for %.*s: error '%s' lacks '%s' / '%s'",
          (int)len, text, fx_err(), where, what);
    CHECK(j.type == FX_JNULL && j.n == 0 && j.kids == NULL, "output not reset after an error");
}
#define REFUSE(text, where, what) refuse(text, sizeof(text) - 1, where, what)

/* ============================================================================================
 * accepted documents
 * ============================================================================================ */

static void test_values(void) {
    fx_json j;
    const char *doc = " {\"a\": 1, \"b\": [true, false, null, -0.5e2, \"x\"], \"c\": {}, \"d\": [], \"\": \"e\"}\n";
    CHECK(parse_str(doc, &j) == 0, "valid document refused: %s", fx_err());
    CHECK(j.type == FX_JOBJ && j.n == 5, "object with 5 members");
    const fx_json *a = fx_json_get(&j, "a"), *b = fx_json_get(&j, "b");
    CHECK(a && a->type == FX_JNUM && a->is_int && a->inum == 1 && a->num == 1.0, "a == 1");
    CHECK(b && b->type == FX_JARR && b->n == 5, "b has 5 elements");
    if (b && b->n == 5) {
        CHECK(b->kids[0].type == FX_JBOOL && b->kids[0].boolean == 1, "true");
        CHECK(b->kids[1].type == FX_JBOOL && b->kids[1].boolean == 0, "false");
        CHECK(b->kids[2].type == FX_JNULL, "null");
        CHECK(b->kids[3].type == FX_JNUM && !b->kids[3].is_int && b->kids[3].num == -50.0, "-0.5e2 = -50");
        CHECK(b->kids[4].type == FX_JSTR && b->kids[4].slen == 1 && !strcmp(b->kids[4].str, "x"), "\"x\"");
    }
    CHECK(fx_json_get(&j, "c") && fx_json_get(&j, "c")->type == FX_JOBJ && fx_json_get(&j, "c")->n == 0, "{}");
    CHECK(fx_json_get(&j, "d") && fx_json_get(&j, "d")->type == FX_JARR, "[]");
    CHECK(fx_json_get(&j, "") && !strcmp(fx_json_get(&j, "")->str, "e"), "empty key");
    CHECK(fx_json_get(&j, "zz") == NULL, "absent key gives NULL");
    CHECK(fx_json_get(b, "a") == NULL, "get on an array gives NULL");
    fx_json_free(&j);
    fx_json_free(&j); /* freeing twice is harmless: free resets the value */

    /* Scalars at top level (RFC 8259 allows any value). */
    CHECK(parse_str("\"s\"", &j) == 0 && j.type == FX_JSTR, "top-level string");
    fx_json_free(&j);
    CHECK(parse_str("  7  ", &j) == 0 && j.type == FX_JNUM && j.inum == 7, "top-level number");
    fx_json_free(&j);
}

static void test_numbers(void) {
    /* Expected doubles written as C literals: the compiler's own correctly rounded conversion. */
    static const struct { const char *text; double num; int is_int; int64_t inum; } cases[] = {
        {"0", 0.0, 1, 0},
        {"-0", -0.0, 1, 0},
        {"123", 123.0, 1, 123},
        {"-7", -7.0, 1, -7},
        {"9223372036854775807", 9223372036854775807.0, 1, INT64_MAX},
        {"-9223372036854775808", -9223372036854775808.0, 1, INT64_MIN},
        {"9223372036854775808", 9223372036854775808.0, 0, 0},  /* one past int64: a double only */
        {"1.5", 1.5, 0, 0},
        {"1e3", 1000.0, 0, 0},
        {"1E+3", 1000.0, 0, 0},
        {"2.5e-3", 2.5e-3, 0, 0},
        {"1e-400", 0.0, 0, 0},                                  /* underflows to zero: allowed */
        {"0.1", 0.1, 0, 0},
        {"1.7976931348623157e308", 1.7976931348623157e308, 0, 0},
        {"1e-12", 1e-12, 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fx_json j;
        int rc = parse_str(cases[i].text, &j);
        CHECK(rc == 0, "%s refused: %s", cases[i].text, fx_err());
        if (rc) continue;
        CHECK(j.type == FX_JNUM && j.num == cases[i].num && signbit(j.num) == signbit(cases[i].num),
              "%s: got %.17g", cases[i].text, j.num);
        CHECK(j.is_int == cases[i].is_int, "%s: is_int %d", cases[i].text, j.is_int);
        if (cases[i].is_int) CHECK(j.inum == cases[i].inum, "%s: inum %lld", cases[i].text, (long long)j.inum);
        fx_json_free(&j);
    }
}

static void test_strings(void) {
    static const struct { const char *text; const char *want; size_t wlen; } cases[] = {
        {"\"\"", "", 0},
        {"\"a\\\"b\\\\c\\/d\"", "a\"b\\c/d", 7},
        {"\"\\b\\f\\n\\r\\t\"", "\b\f\n\r\t", 5},
        {"\"\\u0041\\u00e9\\u20AC\"", "A\xC3\xA9\xE2\x82\xAC", 6},                  /* A, e-acute, euro */
        {"\"\\ud83d\\ude00\"", "\xF0\x9F\x98\x80", 4},                                 /* U+1F600 pair */
        {"\"\\uDBFF\\uDFFF\"", "\xF4\x8F\xBF\xBF", 4},                                 /* U+10FFFF */
        {"\"a\\u0000b\"", "a\0b", 3},                                                  /* NUL kept */
        {"\"\xC4\xA0hello\xF0\x9F\x98\x80\"", "\xC4\xA0hello\xF0\x9F\x98\x80", 11},    /* raw UTF-8 */
        {"\"\x7F\"", "\x7F", 1},                                                       /* DEL is legal */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        fx_json j;
        int rc = parse_str(cases[i].text, &j);
        CHECK(rc == 0, "%s refused: %s", cases[i].text, fx_err());
        if (rc) continue;
        CHECK(j.type == FX_JSTR && j.slen == cases[i].wlen && !memcmp(j.str, cases[i].want, j.slen) &&
              j.str[j.slen] == 0, "string %s decoded wrong (len %zu)", cases[i].text, j.slen);
        fx_json_free(&j);
    }
    /* Keys are decoded too, and fx_json_get compares whole keys (an embedded NUL never matches). */
    fx_json j;
    CHECK(parse_str("{\"\\u0041b\": 1, \"a\\u0000\": 2}", &j) == 0, "escaped keys: %s", fx_err());
    CHECK(fx_json_get(&j, "Ab") && fx_json_get(&j, "Ab")->inum == 1, "escaped key found");
    CHECK(fx_json_get(&j, "a") == NULL, "key with NUL does not match its prefix");
    fx_json_free(&j);
}

static void test_utf8(void) {
    static const struct { const char *s; size_t len, valid; } cases[] = {
        {"abc", 3, 3},
        {"\xC3\xA9", 2, 2},
        {"\xC0\xAF", 2, 0},             /* overlong '/' */
        {"\xE0\x80\xAF", 3, 0},         /* overlong, 3 bytes */
        {"\xED\xA0\x80", 3, 0},         /* encoded surrogate U+D800 */
        {"\xF4\x90\x80\x80", 4, 0},     /* U+110000 */
        {"a\xE2\x82", 3, 1},            /* truncated */
        {"a\x80", 2, 1},                /* stray continuation byte */
        {"\xF0\x9F\x98\x80z", 5, 5},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        CHECK(fx_utf8_valid_prefix(cases[i].s, cases[i].len) == cases[i].valid, "utf8 case %zu", i);
    uint32_t cp = 0;
    CHECK(fx_utf8_next("\xE2\x82\xAC", 3, &cp) == 3 && cp == 0x20AC, "euro sign decodes to U+20AC");
    CHECK(fx_utf8_next("", 0, &cp) == 0, "empty input decodes nothing");
    /* Encoding, checked by decoding: every length class and its boundaries. */
    static const uint32_t cps[] = {0, 0x7F, 0x80, 0x7FF, 0x800, 0xD7FF, 0xE000, 0xFFFF, 0x10000, 0x10FFFF};
    for (size_t i = 0; i < sizeof cps / sizeof cps[0]; i++) {
        char b[4];
        int k = fx_utf8_put(b, cps[i]), want = cps[i] < 0x80 ? 1 : cps[i] < 0x800 ? 2 : cps[i] < 0x10000 ? 3 : 4;
        CHECK(k == want && fx_utf8_next(b, (size_t)k, &cp) == k && cp == cps[i], "U+%04X encodes and decodes", cps[i]);
    }
}

/* ============================================================================================
 * refused documents
 * ============================================================================================ */

static void test_refusals(void) {
    REFUSE("", "line 1, column 1", "end of input");
    REFUSE("   ", "line 1, column 4", "end of input");
    REFUSE("[1, 2,]", "line 1, column 7", "trailing comma");
    REFUSE("{\"a\": 1,}", "line 1, column 9", "trailing comma");
    REFUSE("{\"a\": 1 // c\n}", "line 1, column 9", "expected ',' or '}'");
    REFUSE("// c\n{}", "line 1, column 1", "comments");
    REFUSE("/* c */ {}", "line 1, column 1", "comments");
    REFUSE("[01]", "line 1, column 2", "leading zero");
    REFUSE("-01", "line 1, column 1", "leading zero");
    REFUSE("[NaN]", "line 1, column 2", "NaN");
    REFUSE("[Infinity]", "line 1, column 2", "NaN and Infinity");
    REFUSE("[-Infinity]", "line 1, column 3", "digit after '-'");
    REFUSE("[1.]", "line 1, column 4", "after the decimal point");
    REFUSE("[.5]", "line 1, column 2", "unexpected '.'");
    REFUSE("[1e]", "line 1, column 4", "exponent");
    REFUSE("[1e+]", "line 1, column 5", "exponent");
    REFUSE("[+1]", "line 1, column 2", "unexpected '+'");
    REFUSE("[1e999]", "line 1, column 2", "out of the range");
    REFUSE("[-1e999]", "line 1, column 2", "out of the range");
    REFUSE("{\"a\":\n  \"x\ty\"}", "line 2, column 5", "control character 0x09");
    REFUSE("\"a\nb\"", "line 1, column 3", "control character 0x0a");
    REFUSE("\"\\x\"", "line 1, column 2", "invalid escape");
    REFUSE("\"\\u12\"", "line 1, column 2", "four hex digits");
    REFUSE("\"\\u12G4\"", "line 1, column 2", "four hex digits");
    REFUSE("\"\\ud83d\"", "line 1, column 2", "not followed by a low surrogate");
    REFUSE("\"\\ud83dx\"", "line 1, column 2", "not followed by a low surrogate");
    REFUSE("\"\\ud83d\\u0041\"", "line 1, column 2", "not followed by a low surrogate");
    REFUSE("\"\\ude00\"", "line 1, column 2", "lone low surrogate");
    REFUSE("\"\xC0\xAF\"", "line 1, column 2", "invalid UTF-8");
    REFUSE("\"\xED\xA0\x80\"", "line 1, column 2", "invalid UTF-8");
    REFUSE("\"\xF8\x88\x80\x80\x80\"", "line 1, column 2", "invalid UTF-8");
    REFUSE("\"\xC3\xA9\xFF\"", "line 1, column 3", "invalid UTF-8");      /* columns count characters */
    REFUSE("\"abc", "line 1, column 1", "unterminated string");
    REFUSE("\"abc\\\"", "line 1, column 1", "unterminated string");
    REFUSE("[1, 2", "line 1, column 1", "never closed");
    REFUSE("{\"a\": 1", "line 1, column 1", "never closed");
    REFUSE("{\"a\" 1}", "line 1, column 6", "expected ':'");
    REFUSE("{a: 1}", "line 1, column 2", "expected a string key");
    REFUSE("{'a': 1}", "line 1, column 2", "expected a string key");
    REFUSE("['a']", "line 1, column 2", "double quotes");
    REFUSE("[1 2]", "line 1, column 4", "expected ',' or ']'");
    REFUSE("[tru]", "line 1, column 2", "expected 'true'");
    REFUSE("[True]", "line 1, column 2", "unexpected 'T'");
    REFUSE("{} {}", "line 1, column 4", "after the JSON value");
    REFUSE("{}\n\n  x", "line 3, column 3", "after the JSON value");
    REFUSE("[1]\0", "line 1, column 4", "byte 0x00");
    REFUSE("\xEF\xBB\xBF{}", "line 1, column 1", "byte order mark");
    REFUSE("[\f1]", "line 1, column 2", "byte 0x0c");  /* form feed is not JSON whitespace */

    /* Nesting: 512 levels are fine, 513 are refused (without a stack overflow). */
    char deep[2 * 600 + 1];
    for (int d = 512; d <= 600; d += 88) {
        memset(deep, '[', (size_t)d);
        memset(deep + d, ']', (size_t)d);
        fx_json j;
        int rc = fx_json_parse(deep, 2 * (size_t)d, &j);
        if (d == 512) { CHECK(rc == 0, "512 levels refused: %s", fx_err()); fx_json_free(&j); }
        else CHECK(rc == -1 && strstr(fx_err(), "nesting deeper than 512"), "600 levels: %s", fx_err());
    }
}

/* ============================================================================================
 * a real vocab.json
 * ============================================================================================ */

static void test_vocab(void) {
    const char *sh = shared_dir("parsing roberta-base/vocab.json");
    if (!sh) return;
    char path[512], *text;
    size_t len;
    snprintf(path, sizeof path, "%s/models/roberta-base/vocab.json", sh);
    if (fx_read_file(path, &text, &len) != 0) { printf("skipped: %s\n", fx_err()); return; }
    fx_json j;
    double t0 = fx_now();
    int rc = fx_json_parse(text, len, &j);
    double dt = fx_now() - t0;
    CHECK(rc == 0, "vocab.json refused: %s", fx_err());
    printf("parsed %s (%zu bytes, %zu keys) in %.2f ms\n", path, len, j.n, 1e3 * dt);
    CHECK(dt < VOCAB_PARSE_MAX_S, "parse took %.3f s, limit %.3f s", dt, VOCAB_PARSE_MAX_S);
    /* Known entries of RoBERTa's vocabulary (its special tokens and the byte-level space marker). */
    CHECK(j.type == FX_JOBJ && j.n == 50265, "roberta-base has 50265 entries, got %zu", j.n);
    const fx_json *s = fx_json_get(&j, "<s>"), *pad = fx_json_get(&j, "<pad>"), *e = fx_json_get(&j, "</s>");
    CHECK(s && s->inum == 0 && pad && pad->inum == 1 && e && e->inum == 2, "<s>=0 <pad>=1 </s>=2");
    const fx_json *the = fx_json_get(&j, "\xC4\xA0the"); /* "Gthe": space then "the" */
    CHECK(the && the->is_int && the->inum == 5, "'\\u0120the' = 5");
    fx_json_free(&j);
    free(text);
}

/* Memory stays bounded whatever the input: 20M values in 40 MB of text would take ~2-4 GB as a tree. */
static void test_bounded(void) {
    size_t n = 20u << 20, len = 2 * n + 1;
    char *t = fx_malloc(len + 1);
    t[0] = '[';
    for (size_t i = 0; i < n; i++) { t[1 + 2 * i] = '0'; t[2 + 2 * i] = ','; }
    t[len - 1] = ']';
    t[len] = 0;
    struct rusage r0, r1;
    getrusage(RUSAGE_SELF, &r0);
    fx_json j;
    int rc = fx_json_parse(t, len, &j);
    getrusage(RUSAGE_SELF, &r1);
    double grew_mb = (double)(r1.ru_maxrss - r0.ru_maxrss) / 1024;
    CHECK(rc == -1 && strstr(fx_err(), "more than") && strstr(fx_err(), "values"), "20M values refused: %s", fx_err());
    CHECK(grew_mb < 1024, "parsing 40 MB of JSON grew the peak memory by %.0f MB (bound: 1 GB)", grew_mb);
    free(t);
}

int main(void) {
    test_bounded();
    test_values();
    test_numbers();
    test_strings();
    test_utf8();
    test_refusals();
    test_vocab();
    return check_done();
}
