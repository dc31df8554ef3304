/* tests/test_tokenizer.c: tokenizer.c against golden ids: every dev row of the six GLUE fixture files made
 * with Hugging Face's RobertaTokenizer (../shared), and tests/fixtures/tok_cases.jsonl made by
 * tests/make_tok_fixtures.py (Python's regex module + the reference BPE loop) for unusual Unicode,
 * truncation and decoding. Also the character tables, hand-worked truncation, errors and the CLI. */
#include "fedex.h"
#include "check.h"

#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ============================================================================================
 * helpers
 * ============================================================================================ */

/* ids of a JSON array of integers; NULL (and *n = -1) if it is not one. */
static int32_t *json_ids(const fx_json *a, int *n) {
    *n = -1;
    if (!a || a->type != FX_JARR) return NULL;
    int32_t *ids = fx_malloc((a->n + 1) * sizeof *ids);
    for (size_t i = 0; i < a->n; i++) {
        if (a->kids[i].type != FX_JNUM || !a->kids[i].is_int) { free(ids); return NULL; }
        ids[i] = (int32_t)a->kids[i].inum;
    }
    *n = (int)a->n;
    return ids;
}

static int same_ids(const int32_t *a, int na, const int32_t *b, int nb) {
    return na == nb && (na == 0 || !memcmp(a, b, (size_t)na * sizeof *a));
}

/* decode(ids) must give back TEXT[0..len) exactly. */
static int roundtrips(const fx_tokenizer *t, const int32_t *ids, int n, const char *text, size_t len) {
    char *d = fx_tok_decode(t, ids, n, 0);
    int ok = d && !memcmp(d, text, len) && d[len] == 0;
    free(d);
    return ok;
}

/* ============================================================================================
 * character classes
 * ============================================================================================ */

static void test_tables(void) {
    int sorted = 1;
    for (int i = 0; i < fx_uni_nranges; i++) {
        if (fx_uni_ranges[i].lo > fx_uni_ranges[i].hi) sorted = 0;
        if (i && fx_uni_ranges[i].lo <= fx_uni_ranges[i - 1].hi) sorted = 0;
    }
    CHECK(sorted, "unicode ranges are not sorted and disjoint");
    CHECK(fx_uni_nranges > 500, "only %d unicode ranges", fx_uni_nranges);
    /* Python regex's \s is White_Space: U+85 and U+A0 are space, U+1C..1F (str.isspace) and U+FEFF
     * (a format character) and U+200B and U+180E are not. */
    static const struct { uint32_t cp; int cls; } want[] = {
        {'a', FX_UNI_LETTER}, {'Z', FX_UNI_LETTER}, {'5', FX_UNI_NUMBER}, {' ', FX_UNI_SPACE},
        {'\t', FX_UNI_SPACE}, {'\r', FX_UNI_SPACE}, {0x0B, FX_UNI_SPACE}, {'\'', FX_UNI_OTHER}, {'_', FX_UNI_OTHER},
        {0x00, FX_UNI_OTHER}, {0x1C, FX_UNI_OTHER}, {0x1F, FX_UNI_OTHER}, {0x85, FX_UNI_SPACE},
        {0xA0, FX_UNI_SPACE}, {0x1680, FX_UNI_SPACE}, {0x2000, FX_UNI_SPACE}, {0x200A, FX_UNI_SPACE},
        {0x200B, FX_UNI_OTHER}, {0x180E, FX_UNI_OTHER}, {0x2028, FX_UNI_SPACE}, {0x202F, FX_UNI_SPACE},
        {0x205F, FX_UNI_SPACE}, {0x3000, FX_UNI_SPACE}, {0xFEFF, FX_UNI_OTHER},
        {0xB2, FX_UNI_NUMBER}, {0xBD, FX_UNI_NUMBER}, {0x2163, FX_UNI_NUMBER}, {0x0663, FX_UNI_NUMBER},
        {0xFF11, FX_UNI_NUMBER}, {0x1D7CE, FX_UNI_NUMBER}, {0xAA, FX_UNI_LETTER}, {0xB5, FX_UNI_LETTER},
        {0x02B0, FX_UNI_LETTER}, {0x01C5, FX_UNI_LETTER}, {0x0301, FX_UNI_OTHER}, {0x094D, FX_UNI_OTHER},
        {0x4E00, FX_UNI_LETTER}, {0x9FFF, FX_UNI_LETTER}, {0xAC00, FX_UNI_LETTER}, {0xD7A3, FX_UNI_LETTER},
        {0x20000, FX_UNI_LETTER}, {0x2A6DF, FX_UNI_LETTER}, {0x1F600, FX_UNI_OTHER}, {0xE000, FX_UNI_OTHER},
        {0x0378, FX_UNI_OTHER}, {0x10FFFF, FX_UNI_OTHER},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECK(fx_uni_class(want[i].cp) == want[i].cls, "class of U+%04X: got %d want %d", (unsigned)want[i].cp,
              fx_uni_class(want[i].cp), want[i].cls);

    /* every code point against the classes Python's regex module gives (its own Unicode tables) */
    char *data;
    size_t len;
    if (fx_read_file("tests/fixtures/tok_classes.txt", &data, &len) != 0) { CHECK(0, "%s", fx_err()); return; }
    uint8_t *cls = fx_calloc(0x110000, 1);
    int nr = 0, bad_line = 0;
    for (char *p = data; p && p < data + len; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        unsigned lo, hi;
        int c;
        if (*p == '#' || *p == '\n') continue;
        if (sscanf(p, "%x %x %d", &lo, &hi, &c) != 3 || lo > hi || hi >= 0x110000 || c < 1 || c > 3) {
            bad_line++;
            continue;
        }
        memset(cls + lo, c, hi - lo + 1);
        nr++;
    }
    int bad = 0;
    uint32_t first_bad = 0;
    for (uint32_t cp = 0; cp < 0x110000; cp++)
        if (fx_uni_class(cp) != cls[cp] && bad++ == 0) first_bad = cp;
    CHECK(bad_line == 0 && nr > 500, "tok_classes.txt: %d ranges, %d bad lines", nr, bad_line);
    CHECK(bad == 0, "%d code points differ from Python regex, first U+%04X (table %d, regex %d)", bad,
          (unsigned)first_bad, fx_uni_class(first_bad), cls[first_bad]);
    free(cls);
    free(data);
}

/* ============================================================================================
 * pre-tokenisation on tricky strings (worked by hand from the pattern)
 * ============================================================================================ */

static void test_pretokenize(void) {
    static const struct { const char *text; const char *pieces[16]; } cases[] = {
        {"Hello world", {"Hello", " world"}},
        {"it's I'll we're you've I'm he'd don't", {"it", "'s", " I", "'ll", " we", "'re", " you", "'ve", " I",
                                                   "'m", " he", "'d", " don", "'t"}},
        {"IT'S", {"IT", "'", "S"}},                    /* contractions are lower case only */
        {" 's", {" '", "s"}},                          /* the space goes with the punctuation */
        {"?'s", {"?'", "s"}},                          /* the punctuation run swallows the apostrophe */
        {"'sss", {"'s", "ss"}},                        /* no word boundary after a contraction */
        {"a  b", {"a", " ", " b"}},                    /* \s+(?!\S) leaves the last space for " b" */
        {"a   ", {"a", "   "}},                        /* at the end the whole run */
        {"a\t\tb", {"a", "\t", "\t", "b"}},            /* a tab is no optional space */
        {"a \tb", {"a", " ", "\t", "b"}},
        {"a\t b", {"a", "\t", " b"}},
        {"x12y", {"x", "12", "y"}},
        {" 12 ab!? ", {" 12", " ab", "!?", " "}},
        {"a\xc2\xa0" "b", {"a", "\xc2\xa0", "b"}},     /* no-break space is \s but not the optional space */
        {"a\xef\xbb\xbf" "b", {"a", "\xef\xbb\xbf", "b"}}, /* U+FEFF is not space: other */
        {"e\xcc\x81t\xc3\xa9", {"e", "\xcc\x81", "t\xc3\xa9"}}, /* a combining mark is neither L nor N */
        {"x\xc2\xb2", {"x", "\xc2\xb2"}},              /* superscript two is N (No) */
        {"", {NULL}},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t *ends = NULL;
        int n = 0, cap = 0;
        const char *s = cases[c].text;
        int rc = fx_tok_pretokenize(s, strlen(s), &ends, &n, &cap);
        int want = 0;
        while (want < 16 && cases[c].pieces[want]) want++;
        int ok = rc == 0 && n == want;
        size_t at = 0;
        for (int i = 0; ok && i < n; i++) {
            size_t l = strlen(cases[c].pieces[i]);
            ok = ends[i] == at + l && !memcmp(s + at, cases[c].pieces[i], l);
            at = ends[i];
        }
        CHECK(ok, "pre-tokenisation of \"%s\": rc %d, %d pieces, want %d", s, rc, n, want);
        free(ends);
    }
    size_t *ends = NULL;
    int n = 0, cap = 0;
    CHECK(fx_tok_pretokenize("ab\xff", 3, &ends, &n, &cap) == -1, "invalid UTF-8 was accepted");
    CHECK(fx_tok_pretokenize("\xed\xa0\x80", 3, &ends, &n, &cap) == -1, "a surrogate was accepted");
    free(ends);
}

/* ============================================================================================
 * golden cases from tests/make_tok_fixtures.py
 * ============================================================================================ */

static void test_cases(const char *shared) {
    char *data;
    size_t len;
    if (fx_read_file("tests/fixtures/tok_cases.jsonl", &data, &len) != 0) {
        CHECK(0, "%s", fx_err());
        return;
    }
    fx_tokenizer *tok[2] = {NULL, NULL}; /* roberta-base, gpt2 */
    if (shared) {
        const char *names[2] = {"roberta-base", "gpt2"};
        for (int m = 0; m < 2; m++) {
            char dir[512];
            snprintf(dir, sizeof dir, "%s/models/%s", shared, names[m]);
            tok[m] = fx_tok_load(dir);
            CHECK(tok[m] != NULL, "load %s: %s", dir, fx_err());
        }
    }
    int line = 0, nkind[3] = {0, 0, 0}, bad[3] = {0, 0, 0}, bad_pieces = 0, bad_round = 0;
    int32_t *ids = NULL, *out = NULL;
    size_t *ends = NULL;
    int cap = 0, ecap = 0;
    for (char *p = data, *e; p < data + len; p = e + 1) {
        e = memchr(p, '\n', (size_t)(data + len - p));
        if (!e) e = data + len;
        line++;
        fx_json j;
        if (fx_json_parse(p, (size_t)(e - p), &j) != 0) {
            CHECK(0, "tok_cases.jsonl:%d: %s", line, fx_err());
            continue;
        }
        const fx_json *kind = fx_json_get(&j, "kind"), *model = fx_json_get(&j, "model");
        fx_tokenizer *t = tok[strcmp(model->str, "gpt2") == 0];
        int nw;
        int32_t *want = json_ids(fx_json_get(&j, "ids"), &nw);
        if (!strcmp(kind->str, "text")) {
            const fx_json *text = fx_json_get(&j, "text"), *pieces = fx_json_get(&j, "pieces");
            int n = 0;
            int ok = fx_tok_pretokenize(text->str, text->slen, &ends, &n, &ecap) == 0 && n == (int)pieces->n;
            size_t at = 0;
            for (int i = 0; ok && i < n; i++) {
                const fx_json *pc = &pieces->kids[i];
                ok = ends[i] == at + pc->slen && !memcmp(text->str + at, pc->str, pc->slen);
                at = ends[i];
            }
            if (!ok && bad_pieces++ < 5) CHECK(0, "tok_cases.jsonl:%d: pieces differ", line);
            if (t) {
                nkind[0]++;
                int nids = 0;
                if (fx_tok_encode_text(t, text->str, text->slen, &ids, &nids, &cap) != 0 ||
                    !same_ids(ids, nids, want, nw)) {
                    if (bad[0]++ < 5) CHECK(0, "tok_cases.jsonl:%d: ids differ (%d vs %d)", line, nids, nw);
                } else if (!roundtrips(t, ids, nids, text->str, text->slen) && bad_round++ < 5)
                    CHECK(0, "tok_cases.jsonl:%d: decode(encode(x)) != x", line);
            }
        } else if (!strcmp(kind->str, "seq") && t) {
            nkind[1]++;
            const fx_json *a = fx_json_get(&j, "a"), *b = fx_json_get(&j, "b");
            int max_len = (int)fx_json_get(&j, "max_len")->inum, nids = 0;
            int rc = fx_tok_encode_seq(t, a->str, b->type == FX_JSTR ? b->str : NULL, max_len, &ids, &nids, &cap);
            int ok = rc == 0 && same_ids(ids, nids, want, nw);
            if (ok && max_len > 0) { /* the fixed-size entry point gives the same */
                out = fx_realloc(out, (size_t)max_len * sizeof *out);
                int k = fx_tok_encode(t, a->str, b->type == FX_JSTR ? b->str : NULL, max_len, out);
                ok = same_ids(out, k, want, nw);
            }
            if (!ok && bad[1]++ < 5) CHECK(0, "tok_cases.jsonl:%d: sequence ids differ (max_len %d)", line, max_len);
        } else if (!strcmp(kind->str, "decode") && t) {
            nkind[2]++;
            const fx_json *text = fx_json_get(&j, "text");
            char *d = fx_tok_decode(t, want, nw, (int)fx_json_get(&j, "skip_special")->inum);
            int ok = d && !memcmp(d, text->str, text->slen) && d[text->slen] == 0;
            if (!ok && bad[2]++ < 5) CHECK(0, "tok_cases.jsonl:%d: decoded text differs", line);
            free(d);
        }
        free(want);
        fx_json_free(&j);
    }
    CHECK(line > 500 && bad_pieces == 0, "%d lines, %d with other pieces", line, bad_pieces);
    if (shared) {
        CHECK(bad[0] == 0 && nkind[0] > 300, "text ids: %d of %d differ", bad[0], nkind[0]);
        CHECK(bad[1] == 0 && nkind[1] > 100, "sequence ids: %d of %d differ", bad[1], nkind[1]);
        CHECK(bad[2] == 0 && nkind[2] > 50, "decodings: %d of %d differ", bad[2], nkind[2]);
        CHECK(bad_round == 0, "%d texts do not survive decode(encode(x))", bad_round);
        printf("tok_cases.jsonl: %d lines; ids of %d texts, %d sequences, %d decodings checked\n", line,
               nkind[0], nkind[1], nkind[2]);
    } else printf("tok_cases.jsonl: %d lines; pieces only\n", line);
    free(ids); free(out); free(ends); free(data);
    fx_tok_free(tok[0]);
    fx_tok_free(tok[1]);
}

/* ============================================================================================
 * every dev row of the six reference files
 * ============================================================================================ */

static void test_glue(const char *shared, fx_tokenizer *t) {
    static const char *const tasks[] = {"CoLA", "SST-2", "MRPC", "STS-B", "QNLI", "RTE"};
    int32_t *ids = NULL;
    int cap = 0;
    for (size_t k = 0; k < sizeof tasks / sizeof tasks[0]; k++) {
        char tsv[512], fix[512];
        snprintf(tsv, sizeof tsv, "%s/data/glue/%s/dev.tsv", shared, tasks[k]);
        snprintf(fix, sizeof fix, "%s/fixtures/tokenizer/roberta-base/%s.dev.L128.jsonl", shared, tasks[k]);
        const fx_task *task = fx_task_find(tasks[k]);
        fx_rows rows;
        char *data;
        size_t len;
        if (!task || fx_glue_read(task, tsv, &rows) != 0) { CHECK(0, "%s: %s", tsv, fx_err()); continue; }
        if (fx_read_file(fix, &data, &len) != 0) { CHECK(0, "%s", fx_err()); fx_rows_free(&rows); continue; }
        int line = 0, bad = 0, bad_round = 0;
        for (char *p = data, *e; p < data + len; p = e + 1) {
            e = memchr(p, '\n', (size_t)(data + len - p));
            if (!e) e = data + len;
            fx_json j;
            if (fx_json_parse(p, (size_t)(e - p), &j) != 0) { CHECK(0, "%s:%d: %s", fix, line + 1, fx_err()); break; }
            int nw;
            int32_t *want = json_ids(fx_json_get(&j, "ids"), &nw);
            const fx_json *i = fx_json_get(&j, "i");
            if (line < rows.n && i && i->inum == line) {
                int n = 0;
                const char *b = rows.b ? rows.b[line] : NULL;
                if (fx_tok_encode_seq(t, rows.a[line], b, 128, &ids, &n, &cap) != 0 || !same_ids(ids, n, want, nw)) {
                    if (bad++ < 3) CHECK(0, "%s: row %d (line %d) differs", tsv, line, rows.line[line]);
                }
                n = 0; /* and the untruncated text comes back from its ids */
                if (fx_tok_encode_text(t, rows.a[line], strlen(rows.a[line]), &ids, &n, &cap) != 0 ||
                    !roundtrips(t, ids, n, rows.a[line], strlen(rows.a[line])))
                    bad_round++;
            } else bad++;
            free(want);
            fx_json_free(&j);
            line++;
        }
        CHECK(bad == 0 && line == rows.n, "%s: %d of %d rows differ (%d fixture lines)", tasks[k], bad, rows.n, line);
        CHECK(bad_round == 0, "%s: %d rows do not survive decode(encode(x))", tasks[k], bad_round);
        printf("%s dev: %d rows compared\n", tasks[k], line);
        free(data);
        fx_rows_free(&rows);
    }
    free(ids);
}

/* ============================================================================================
 * truncation worked by hand, specials, errors
 * ============================================================================================ */

/* Lengths of A and B in <s> A </s></s> B </s>. */
static void pair_lengths(fx_tokenizer *t, const char *a, const char *b, int max_len, int *la, int *lb) {
    int32_t out[64];
    int n = fx_tok_encode(t, a, b, max_len, out);
    *la = *lb = -1;
    for (int i = 1; i + 1 < n; i++)
        if (out[i] == fx_tok_eos(t) && out[i + 1] == fx_tok_eos(t)) { *la = i - 1; *lb = n - i - 3; break; }
}

static void test_rules(fx_tokenizer *t) {
    CHECK(fx_tok_bos(t) == 0 && fx_tok_eos(t) == 2 && fx_tok_pad(t) == 1 && fx_tok_vocab_size(t) == 50265,
          "roberta specials %d %d %d, vocab %d", fx_tok_bos(t), fx_tok_eos(t), fx_tok_pad(t), fx_tok_vocab_size(t));
    /* "a" + 5 x " a" is 6 tokens, "b b b" 3; full pair 13. n removed -> (A, B) by the rule: first the
     * longer one down by min(n, 3), then the rest split, B taking the odd one. */
    static const struct { int max_len, la, lb; } cases[] = {
        {13, 6, 3}, {12, 5, 3}, {11, 4, 3}, {10, 3, 3}, {9, 3, 2}, {8, 2, 2}, {7, 2, 1}, {4, 0, 0}, {100, 6, 3},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int la, lb;
        pair_lengths(t, "a a a a a a", "b b b", cases[i].max_len, &la, &lb);
        CHECK(la == cases[i].la && lb == cases[i].lb, "max_len %d: A %d B %d, want %d %d", cases[i].max_len, la,
              lb, cases[i].la, cases[i].lb);
    }
    int la, lb;
    pair_lengths(t, "b b b", "a a a a a a", 9, &la, &lb); /* B the longer: it loses the first 3 */
    CHECK(la == 3 && lb == 2, "B longer, max_len 9: A %d B %d, want 3 2", la, lb);
    pair_lengths(t, "a a a", "b b b", 8, &la, &lb);        /* a tie: 2 to remove, 1 each */
    CHECK(la == 2 && lb == 2, "tie, max_len 8: A %d B %d, want 2 2", la, lb);
    pair_lengths(t, "a a a", "b b b", 7, &la, &lb);        /* 3 to remove: B takes the odd one */
    CHECK(la == 2 && lb == 1, "tie, max_len 7: A %d B %d, want 2 1", la, lb);

    int32_t out[8];
    CHECK(fx_tok_encode(t, "a a a a a a", NULL, 4, out) == 4 && out[0] == 0 && out[3] == 2 && out[1] == 102 &&
          out[2] == 10, "single truncated to 4");
    CHECK(fx_tok_encode(t, "", NULL, 4, out) == 2 && out[0] == 0 && out[1] == 2, "empty text is <s></s>");
    /* special tokens written in the text are their ids; <mask> takes the space before it */
    CHECK(fx_tok_encode(t, "a <mask>", "</s>", 8, out) == 7 && out[1] == 102 && out[2] == 50264 && out[5] == 2,
          "specials in text");
    CHECK(fx_tok_encode(t, "a", "b", 3, out) == -1, "a pair in 3 ids was accepted");
    CHECK(fx_tok_encode(t, "a", NULL, 1, out) == -1, "a single in 1 id was accepted");
    CHECK(fx_tok_encode(t, "a\xc3", NULL, 8, out) == -1, "truncated UTF-8 was accepted");
    CHECK(fx_tok_encode(t, "\xc0\x80", NULL, 8, out) == -1, "an overlong NUL was accepted");

    int32_t ids[] = {0, 31414, 2, 1};
    char *d = fx_tok_decode(t, ids, 4, 1);
    CHECK(d && !strcmp(d, "Hello"), "decode skipping specials: \"%s\"", d ? d : "(null)");
    free(d);
    d = fx_tok_decode(t, ids, 4, 0);
    CHECK(d && !strcmp(d, "<s>Hello</s><pad>"), "decode with specials: \"%s\"", d ? d : "(null)");
    free(d);
    int32_t badid[] = {5, 50265};
    CHECK(fx_tok_decode(t, badid, 2, 0) == NULL, "id 50265 was decoded");
}

/* A model folder with a broken merges.txt must be refused with path and line. */
static void test_bad_files(void) {
    char dir[] = "/tmp/fedex-tok-XXXXXX";
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp failed"); return; }
    char vp[64], mp[64];
    snprintf(vp, sizeof vp, "%s/vocab.json", dir);
    snprintf(mp, sizeof mp, "%s/merges.txt", dir);
    CHECK(fx_tok_load(dir) == NULL && strstr(fx_err(), "vocab.json"), "missing vocab: %s", fx_err());
    /* the 256 byte characters, "ab" and <|endoftext|> */
    char json[8192];
    size_t o = (size_t)snprintf(json, sizeof json, "{\"<|endoftext|>\": 258, \"ab\": 256");
    for (int b = 0; b < 256; b++) {
        uint32_t cp = (uint32_t)b; /* GPT-2's byte table, worked out: printable Latin-1 stands for itself */
        int printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        if (!printable) {
            int k = 0;
            for (int x = 0; x < b; x++) k += !((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE);
            cp = 0x100u + (uint32_t)k;
        }
        o += (size_t)snprintf(json + o, sizeof json - o, ", \"\\u%04x\": %d", (unsigned)cp, b);
    }
    o += (size_t)snprintf(json + o, sizeof json - o, "}");
    CHECK(fx_write_file_atomic(vp, json, o) == 0, "%s", fx_err());
    const char *good = "#version: 0.2\na b\n", *bad = "#version: 0.2\na b\nb  c\n", *unknown = "#version: 0.2\nb c\n";
    CHECK(fx_write_file_atomic(mp, good, strlen(good)) == 0, "%s", fx_err());
    fx_tokenizer *t = fx_tok_load(dir);
    CHECK(t != NULL, "toy model: %s", fx_err());
    if (t) {
        int32_t *ids = NULL;
        int n = 0, cap = 0;
        CHECK(fx_tok_encode_text(t, "abab a", 6, &ids, &n, &cap) == 0 && n == 4 && ids[0] == 256 && ids[1] == 256,
              "toy BPE: %d ids", n);
        CHECK(fx_tok_bos(t) == 258 && fx_tok_eos(t) == 258 && fx_tok_pad(t) == 258, "GPT-2 style specials");
        free(ids);
        fx_tok_free(t);
    }
    CHECK(fx_write_file_atomic(mp, bad, strlen(bad)) == 0, "%s", fx_err());
    CHECK(fx_tok_load(dir) == NULL && strstr(fx_err(), "merges.txt:3:"), "bad merge line: %s", fx_err());
    CHECK(fx_write_file_atomic(mp, unknown, strlen(unknown)) == 0, "%s", fx_err());
    CHECK(fx_tok_load(dir) == NULL && strstr(fx_err(), "merges.txt:2:"), "unknown merge: %s", fx_err());
    CHECK(fx_write_file_atomic(vp, "{\"a\": -1}", 9) == 0, "%s", fx_err());
    CHECK(fx_tok_load(dir) == NULL && strstr(fx_err(), "vocab.json"), "negative id: %s", fx_err());
    unlink(vp);
    unlink(mp);
    rmdir(dir);
}

/* ============================================================================================
 * the command line ($FEDEX)
 * ============================================================================================ */

static void test_cli(const char *shared) {
    const char *fedex = getenv("FEDEX");
    if (!fedex) { printf("skipped: command line checks (FEDEX not set; `make test` sets it)\n"); return; }
    char cmd[1024], out[4096];
    snprintf(cmd, sizeof cmd, "%s tokenize --model %s/models/roberta-base 'Hello world' 'it'\\''s'", fedex, shared);
    CHECK(check_run(cmd, out, sizeof out) == 0 && !strcmp(out, "0 31414 232 2 2 405 18 2\n"), "tokenize pair: %s", out);
    snprintf(cmd, sizeof cmd, "%s tokenize --model %s/models/gpt2 --max-length 0 'Hello world'", fedex, shared);
    CHECK(check_run(cmd, out, sizeof out) == 0 && !strcmp(out, "15496 995\n"), "tokenize gpt2 (no special tokens, as Hugging Face): %s", out);
    snprintf(cmd, sizeof cmd, "%s tokenize --model %s/models/roberta-base --max-length 3 'a b c'", fedex, shared);
    CHECK(check_run(cmd, out, sizeof out) == 0 && !strcmp(out, "0 102 2\n"), "tokenize truncated: %s", out);
    snprintf(cmd, sizeof cmd, "%s tokenize --help", fedex);
    CHECK(check_run(cmd, out, sizeof out) == 0 && strstr(out, "usage: fedex tokenize"), "--help: %s", out);

    const char *tsv = "/tmp/fedex-tok-bad.tsv";
    FILE *f = fopen(tsv, "w");
    if (!f) { CHECK(0, "cannot write %s", tsv); return; }
    fputs("sentence\tlabel\ngood row\t1\nbad \xff row\t0\n", f);
    fclose(f);
    snprintf(cmd, sizeof cmd, "%s tokenize --model %s/models/roberta-base --task sst2 --file %s 2>&1", fedex, shared,
             tsv);
    CHECK(check_run(cmd, out, sizeof out) == 1 && strstr(out, "fedex: ") && strstr(out, "bad.tsv:3"),
          "bad row must fail with path:line: %s", out);
    snprintf(cmd, sizeof cmd, "%s tokenize --model /nonexistent 'a' 2>&1", fedex);
    CHECK(check_run(cmd, out, sizeof out) == 1 && strstr(out, "fedex: /nonexistent/vocab.json"), "bad model: %s", out);
    unlink(tsv);
}

int main(void) {
    test_tables();
    test_pretokenize();
    test_bad_files();
    const char *shared = shared_dir("tokenizer ids against the reference files");
    test_cases(shared);
    if (shared) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/models/roberta-base", shared);
        fx_tokenizer *t = fx_tok_load(dir);
        CHECK(t != NULL, "load %s: %s", dir, fx_err());
        if (t) {
            test_glue(shared, t);
            test_rules(t);
            fx_tok_free(t);
        }
        test_cli(shared);
    }
    return check_done();
}
