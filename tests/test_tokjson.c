/* tests/test_tokjson.c: tokenizer.c reading tokenizer.json, against Hugging Face's Rust tokenizer:
 * tests/fixtures/tokjson/{llama3,gpt2,roberta} and the ids, pre-tokens and decodings of
 * tests/fixtures/tokjson_cases.jsonl, both made by tests/make_tokjson_fixtures.js (the npm package
 * `tokenizers`). Also small tokenizer.json files worked by hand (ignore_merges, added-token flags, the
 * templates transformers builds from tokenizer_config.json), malformed and unsupported files, and the
 * command line. Needs nothing from ../shared. */
#include "fedex.h"
#include "check.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FIX "tests/fixtures/tokjson"

/* ============================================================================================
 * helpers
 * ============================================================================================ */

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

/* decode(ids) is exactly WANT[0..len) */
static int decodes_to(const fx_tokenizer *t, const int32_t *ids, int n, int skip, const char *want, size_t len) {
    char *d = fx_tok_decode(t, ids, n, skip);
    int ok = d && !memcmp(d, want, len) && d[len] == 0; /* WANT may hold a NUL (byte 0's token) */
    free(d);
    return ok;
}

/* S[0..n) in GPT-2's byte characters (as Hugging Face's pre-tokenizer reports pieces), into OUT (room for
 * 2n + 1): the bytes '!'..'~', 0xA1..0xAC, 0xAE..0xFF stand for themselves, the other 68 take U+0100 on. */
static size_t byte_chars(const char *s, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int b = (unsigned char)s[i];
        int self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        uint32_t cp = (uint32_t)b;
        if (!self) {
            int k = 0;
            for (int x = 0; x < b; x++) k += !((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE);
            cp = 0x100u + (uint32_t)k;
        }
        o += (size_t)fx_utf8_put(out + o, cp);
    }
    out[o] = 0;
    return o;
}

/* ============================================================================================
 * the golden cases
 * ============================================================================================ */

static const char *const names[3] = {"llama3", "gpt2", "roberta"};

static void test_cases(void) {
    fx_tokenizer *tok[3];
    for (int m = 0; m < 3; m++) {
        char dir[256];
        snprintf(dir, sizeof dir, FIX "/%s", names[m]);
        tok[m] = fx_tok_load(dir);
        CHECK(tok[m] != NULL, "load %s: %s", dir, fx_err());
        if (!tok[m]) {
            for (int k = 0; k < m; k++) fx_tok_free(tok[k]);
            return;
        }
    }
    char *data;
    size_t len;
    if (fx_read_file("tests/fixtures/tokjson_cases.jsonl", &data, &len) != 0) {
        CHECK(0, "%s", fx_err());
        for (int m = 0; m < 3; m++) fx_tok_free(tok[m]);
        return;
    }
    /* per tokenizer: texts, pairs, decodings, pre-tokenised texts; and what differed */
    int ntext[3] = {0}, npair[3] = {0}, ndec[3] = {0}, npieces[3] = {0};
    int bad_ids = 0, bad_plain = 0, bad_pair = 0, bad_dec = 0, bad_pieces = 0, bad_round = 0, line = 0, whole = 0;
    int32_t *ids = NULL, *plain = NULL;
    size_t *ends = NULL;
    int cap = 0, pcap = 0, ecap = 0;
    static const fx_text_template none = {0, 0, 0, 0, 0};
    int bos3 = fx_tok_bos(tok[0]);
    for (char *p = data, *e; p < data + len; p = e + 1) {
        e = memchr(p, '\n', (size_t)(data + len - p));
        if (!e) e = data + len;
        line++;
        fx_json j;
        if (fx_json_parse(p, (size_t)(e - p), &j) != 0) { CHECK(0, "tokjson_cases.jsonl:%d: %s", line, fx_err()); continue; }
        const fx_json *tn = fx_json_get(&j, "tok"), *text = fx_json_get(&j, "text"), *pair = fx_json_get(&j, "pair");
        int m = 0;
        while (m < 3 && tn && strcmp(tn->str, names[m])) m++;
        if (m == 3) { CHECK(0, "tokjson_cases.jsonl:%d: unknown tokenizer", line); fx_json_free(&j); continue; }
        fx_tokenizer *t = tok[m];
        int nw, np;
        int32_t *want = json_ids(fx_json_get(&j, "ids"), &nw), *wplain = json_ids(fx_json_get(&j, "plain"), &np);
        if (!text) { /* a decoding of ids */
            int nd;
            int32_t *d = json_ids(fx_json_get(&j, "decode"), &nd);
            const fx_json *dec = fx_json_get(&j, "dec");
            ndec[m]++;
            if (!decodes_to(t, d, nd, (int)fx_json_get(&j, "skip")->inum, dec->str, dec->slen) && bad_dec++ < 5)
                CHECK(0, "tokjson_cases.jsonl:%d: %s: decoded text differs", line, names[m]);
            free(d);
        } else if (strlen(text->str) != text->slen) {
            CHECK(0, "tokjson_cases.jsonl:%d: a NUL in the text (C strings cannot carry it)", line);
        } else if (pair) {
            npair[m]++;
            int n = 0;
            if ((fx_tok_encode_seq(t, text->str, pair->str, 0, &ids, &n, &cap) != 0 || !same_ids(ids, n, want, nw)) &&
                bad_pair++ < 5)
                CHECK(0, "tokjson_cases.jsonl:%d: %s: pair ids differ (%d vs %d)", line, names[m], n, nw);
        } else {
            ntext[m]++;
            int n = 0, nplain = 0;
            int rc = fx_tok_encode_seq(t, text->str, NULL, 0, &ids, &n, &cap);
            if ((rc != 0 || !same_ids(ids, n, want, nw)) && bad_ids++ < 5)
                CHECK(0, "tokjson_cases.jsonl:%d: %s: ids differ (%d vs %d): %s", line, names[m], n, nw, rc ? fx_err() : "");
            if (m == 0)
                for (int i = 0; i < nw; i++) whole += want[i] >= bos3 - 300 && want[i] < bos3;
            if (fx_tok_encode_tpl(t, &none, text->str, NULL, 0, &plain, &nplain, &pcap) != 0) nplain = -1;
            if (wplain && !same_ids(plain, nplain, wplain, np) && bad_plain++ < 5)
                CHECK(0, "tokjson_cases.jsonl:%d: %s: ids without special tokens differ (%d vs %d)", line, names[m],
                      nplain, np);
            /* decodings: of the ids, of the ids without specials, skipping specials */
            const fx_json *dec = fx_json_get(&j, "dec"), *dp = fx_json_get(&j, "dec_plain"), *ds = fx_json_get(&j, "dec_skip");
            if (dec && !decodes_to(t, ids, n, 0, dec->str, dec->slen) && bad_round++ < 5)
                CHECK(0, "tokjson_cases.jsonl:%d: %s: decode(ids) differs", line, names[m]);
            if (!decodes_to(t, plain, nplain, 0, dp ? dp->str : text->str, dp ? dp->slen : text->slen) && bad_round++ < 5)
                CHECK(0, "tokjson_cases.jsonl:%d: %s: decode(plain ids) differs", line, names[m]);
            if (!decodes_to(t, ids, n, 1, ds ? ds->str : text->str, ds ? ds->slen : text->slen) && bad_round++ < 5)
                CHECK(0, "tokjson_cases.jsonl:%d: %s: decode(ids, skip_special) differs", line, names[m]);
            const fx_json *pieces = fx_json_get(&j, "pieces");
            if (pieces) {
                npieces[m]++;
                int k = 0;
                int ok = fx_tok_pieces(t, text->str, text->slen, &ends, &k, &ecap) == 0 && k == (int)pieces->n;
                size_t at = 0;
                char *buf = fx_malloc(2 * text->slen + 1);
                for (int i = 0; ok && i < k; i++) {
                    size_t bl = byte_chars(text->str + at, ends[i] - at, buf);
                    ok = bl == pieces->kids[i].slen && !memcmp(buf, pieces->kids[i].str, bl);
                    at = ends[i];
                }
                free(buf);
                if (!ok && bad_pieces++ < 5) CHECK(0, "tokjson_cases.jsonl:%d: %s: pre-tokens differ", line, names[m]);
            }
        }
        free(want);
        free(wplain);
        fx_json_free(&j);
    }
    CHECK(bad_ids == 0, "%d texts' ids differ from Hugging Face's", bad_ids);
    CHECK(bad_plain == 0, "%d texts' ids without special tokens differ", bad_plain);
    CHECK(bad_pair == 0, "%d pairs' ids differ", bad_pair);
    CHECK(bad_dec == 0 && bad_round == 0, "%d decodings of ids, %d of texts' ids differ", bad_dec, bad_round);
    CHECK(bad_pieces == 0, "%d texts' pre-tokens differ", bad_pieces);
    /* the fixture reaches what it is for */
    CHECK(ntext[0] > 2900 && ntext[1] > 450 && ntext[2] > 250, "texts: %d %d %d", ntext[0], ntext[1], ntext[2]);
    CHECK(npair[0] >= 150 && npieces[0] > 400 && ndec[0] >= 80, "llama3: %d pairs, %d pieces, %d decodings", npair[0],
          npieces[0], ndec[0]);
    /* the whole words sit just below <|begin_of_text|>, and only ignore_merges makes them */
    CHECK(whole > 500, "only %d golden ids are whole words that ignore_merges gives", whole);
    for (int m = 0; m < 3; m++)
        printf("%s: %d texts, %d pairs, %d decodings, %d pre-tokenised texts checked\n", names[m], ntext[m], npair[m],
               ndec[m], npieces[m]);
    free(ids); free(plain); free(ends); free(data);
    for (int m = 0; m < 3; m++) fx_tok_free(tok[m]);
}

/* ============================================================================================
 * the fixtures' specials and API
 * ============================================================================================ */

static void test_specials(void) {
    fx_tokenizer *t = fx_tok_load(FIX "/llama3");
    if (!t) { CHECK(0, "%s", fx_err()); return; }
    int bot = fx_tok_token_id(t, "<|begin_of_text|>"), eot = fx_tok_token_id(t, "<|eot_id|>");
    CHECK(bot > 5000 && fx_tok_bos(t) == bot && fx_tok_eos(t) == eot && fx_tok_pad(t) == eot,
          "llama3: bos %d eos %d pad %d (<|begin_of_text|> %d, <|eot_id|> %d: tokenizer_config.json's)", fx_tok_bos(t),
          fx_tok_eos(t), fx_tok_pad(t), bot, eot);
    CHECK(fx_tok_is_special(t, eot) && !fx_tok_is_special(t, fx_tok_token_id(t, "[[x]]")) &&
          fx_tok_token_id(t, "[[x]]") > eot && !fx_tok_is_special(t, fx_tok_token_id(t, "a")),
          "special flags");
    CHECK(fx_tok_token_id(t, "a") == 64 && fx_tok_token_id(t, " the") > 255 && fx_tok_token_id(t, "\xc4\xa0the") < 0 &&
          fx_tok_token_id(t, "<|nope|>") < 0, "token ids by text (bytes, not GPT-2's characters)");
    const fx_text_template *tpl = fx_tok_template(t);
    CHECK(tpl->bos == 1 && tpl->eos_a == 0 && tpl->eos_b_lead == 0 && tpl->bos_b == 1 && tpl->eos_b == 0,
          "llama3 template {%d %d %d %d %d}", tpl->bos, tpl->eos_a, tpl->eos_b_lead, tpl->bos_b, tpl->eos_b);
    /* truncation: the template's two <|begin_of_text|> are kept */
    int32_t out[8];
    int n = fx_tok_encode(t, "a a a a", "b b b", 6, out);
    CHECK(n == 6 && out[0] == bot && out[3] == bot && out[1] == 64 && out[4] == 65,
          "pair truncated to 6: %d ids, %d %d %d", n, out[0], out[3], out[4]);
    CHECK(fx_tok_encode(t, "a", "b", 1, out) == -1, "a pair in 1 id was accepted");
    fx_tok_free(t);

    t = fx_tok_load(FIX "/gpt2");
    if (!t) { CHECK(0, "%s", fx_err()); return; }
    int eos = fx_tok_token_id(t, "<|endoftext|>");
    CHECK(eos > 0 && fx_tok_bos(t) == eos && fx_tok_eos(t) == eos && fx_tok_pad(t) == eos, "gpt2: config.json's ids");
    tpl = fx_tok_template(t);
    CHECK(tpl->bos + tpl->eos_a + tpl->eos_b_lead + tpl->bos_b + tpl->eos_b == 0, "gpt2 adds no token");
    fx_tok_free(t);

    t = fx_tok_load(FIX "/roberta");
    if (!t) { CHECK(0, "%s", fx_err()); return; }
    tpl = fx_tok_template(t);
    CHECK(fx_tok_bos(t) == fx_tok_token_id(t, "<s>") && fx_tok_pad(t) == fx_tok_token_id(t, "<pad>") &&
          fx_tok_eos(t) == fx_tok_token_id(t, "</s>") && fx_tok_bos(t) > 255 && tpl->bos == 1 && tpl->eos_a == 1 &&
          tpl->eos_b_lead == 1 && tpl->eos_b == 1 && tpl->bos_b == 0, "roberta specials and template");
    fx_tok_free(t);
}

/* ============================================================================================
 * small files worked by hand, and malformed ones
 * ============================================================================================ */

static char tmpdir[] = "/tmp/fedex-tokjson-XXXXXX";

static void put(const char *name, const char *text) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    if (!text) { unlink(path); return; }
    CHECK(fx_write_file_atomic(path, text, strlen(text)) == 0, "%s", fx_err());
}

/* A tokenizer.json: the 256 byte characters (ids 0..255 in byte order) + "ab" (256) + "abc" (257, no merge
 * makes it) + EXTRA_VOCAB; merges MERGES; added tokens ADDED; pre-tokenizer, post-processor and the rest
 * as given. */
static char *toy_json(const char *pre, const char *post, const char *merges, const char *added, const char *model_extra,
                      const char *normalizer, const char *decoder) {
    size_t cap = 65536, o = 0;
    char *j = fx_malloc(cap);
    o += (size_t)snprintf(j + o, cap - o, "{\"version\": \"1.0\", \"truncation\": null, \"padding\": null, "
                          "\"added_tokens\": [%s], \"normalizer\": %s, \"pre_tokenizer\": %s, \"post_processor\": %s, "
                          "\"decoder\": %s, \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": null, "
                          "%s \"vocab\": {\"ab\": 256, \"abc\": 257",
                          added, normalizer, pre, post, decoder, model_extra);
    for (int b = 0; b < 256; b++) {
        char c[8];
        byte_chars((const char *)&(unsigned char){(unsigned char)b}, 1, c);
        uint32_t cp;
        fx_utf8_next(c, strlen(c), &cp);
        o += (size_t)snprintf(j + o, cap - o, ", \"\\u%04x\": %d", (unsigned)cp, b);
    }
    o += (size_t)snprintf(j + o, cap - o, "}, \"merges\": [%s]}}", merges);
    return j;
}

static const char LLAMA_PRE[] =
    "{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": "
    "\"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}{1,3}| ?[^\\\\s\\\\p{L}\\\\p{N}]+"
    "[\\\\r\\\\n]*|\\\\s*[\\\\r\\\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"}, \"behavior\": \"Isolated\", \"invert\": false}, "
    "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"trim_offsets\": true, \"use_regex\": false}]}";
static const char GPT2_PRE[] = "{\"type\": \"ByteLevel\", \"add_prefix_space\": false, \"use_regex\": true}";
static const char BL[] = "{\"type\": \"ByteLevel\"}";
static const char TPL[] =
    "{\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<B>\", \"type_id\": 0}}, "
    "{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}], \"pair\": [{\"SpecialToken\": {\"id\": \"<B>\", \"type_id\": 0}}, "
    "{\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}, {\"SpecialToken\": {\"id\": \"<B>\", \"type_id\": 1}}, "
    "{\"Sequence\": {\"id\": \"B\", \"type_id\": 1}}], \"special_tokens\": {\"<B>\": {\"id\": \"<B>\", \"ids\": [258], "
    "\"tokens\": [\"<B>\"]}}}";
static const char ADDED[] =
    "{\"id\": 258, \"content\": \"<B>\", \"special\": true}, {\"id\": 259, \"content\": \"<E>\", \"special\": true}, "
    "{\"id\": 260, \"content\": \"<L>\", \"special\": true, \"lstrip\": true}, "
    "{\"id\": 261, \"content\": \"<R>\", \"special\": true, \"rstrip\": true}, "
    "{\"id\": 262, \"content\": \"b<\", \"special\": false}";

/* TEXT's ids (with specials when SPECIAL) are exactly WANT (N of them, -1 ends early) */
static int ids_are(fx_tokenizer *t, const char *a, const char *b, int special, const int *want, int n) {
    static const fx_text_template none = {0, 0, 0, 0, 0};
    int32_t *ids = NULL;
    int k = 0, cap = 0;
    int rc = special ? fx_tok_encode_seq(t, a, b, 0, &ids, &k, &cap) : fx_tok_encode_tpl(t, &none, a, b, 0, &ids, &k, &cap);
    int ok = rc == 0 && k == n;
    for (int i = 0; ok && i < n; i++) ok = ids[i] == want[i];
    if (!ok) {
        fprintf(stderr, "  \"%s\": got", a);
        for (int i = 0; i < k; i++) fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n");
    }
    free(ids);
    return ok;
}

static void test_hand(void) {
    if (!mkdtemp(tmpdir)) { CHECK(0, "mkdtemp failed"); return; }
    /* merges: a b -> ab; ab c is not one, so "abc" comes only from ignore_merges */
    char *j = toy_json(LLAMA_PRE, TPL, "\"a b\"", ADDED, "\"ignore_merges\": true,", "null", BL);
    put("tokenizer.json", j);
    free(j);
    put("tokenizer_config.json", "{\"bos_token\": {\"content\": \"<B>\"}, \"eos_token\": \"<E>\"}");
    fx_tokenizer *t = fx_tok_load(tmpdir);
    CHECK(t != NULL, "toy llama3: %s", fx_err());
    if (t) {
        CHECK(fx_tok_bos(t) == 258 && fx_tok_eos(t) == 259 && fx_tok_pad(t) == 259 && fx_tok_vocab_size(t) == 263,
              "toy specials %d %d %d, vocab %d", fx_tok_bos(t), fx_tok_eos(t), fx_tok_pad(t), fx_tok_vocab_size(t));
        /* "abc" is a token as it stands; "abcc" is BPE'd: ab c c; " abc" is not in the vocabulary */
        CHECK(ids_are(t, "abc abcc", NULL, 1, (int[]){258, 257, 32, 256, 99, 99}, 6), "ignore_merges");
        /* 'S is a contraction, in any case; numbers in threes */
        CHECK(ids_are(t, "A'S1234", NULL, 0, (int[]){65, 39, 83, 49, 50, 51, 52}, 7), "contraction, digits");
        /* <L> takes the spaces before it, <R> those after; b< is matched only in what the specials left:
         * "ab<E>" is ab <E>, not a b< E> */
        CHECK(ids_are(t, "a  <L>  b", NULL, 0, (int[]){97, 260, 32, 32, 98}, 5), "lstrip");
        CHECK(ids_are(t, "a  <R>  b", NULL, 0, (int[]){97, 32, 32, 261, 98}, 5), "rstrip");
        CHECK(ids_are(t, "ab<E>b<x", NULL, 0, (int[]){256, 259, 262, 120}, 4), "added-token passes");
        CHECK(ids_are(t, "a", "b", 1, (int[]){258, 97, 258, 98}, 4), "pair template");
        int32_t d[] = {258, 256, 262, 260};
        char *s = fx_tok_decode(t, d, 4, 1);
        CHECK(s && !strcmp(s, "abb<"), "decode skipping specials: %s", s ? s : "(null)");
        free(s);
        fx_tok_free(t);
    }
    /* transformers' LlamaTokenizerFast rebuilds the template from add_bos_token / add_eos_token */
    put("tokenizer_config.json", "{\"bos_token\": \"<B>\", \"eos_token\": \"<E>\", \"add_eos_token\": true, "
        "\"tokenizer_class\": \"LlamaTokenizerFast\"}");
    t = fx_tok_load(tmpdir);
    CHECK(t != NULL, "LlamaTokenizerFast: %s", fx_err());
    if (t) {
        CHECK(ids_are(t, "a", "b", 1, (int[]){258, 97, 259, 258, 98, 259}, 6), "bos A eos bos B eos");
        fx_tok_free(t);
    }
    put("tokenizer_config.json", NULL);
    /* without a tokenizer_config.json: bos from the template, no eos (-1), pad falls back to bos */
    t = fx_tok_load(tmpdir);
    CHECK(t && fx_tok_bos(t) == 258 && fx_tok_eos(t) == -1 && fx_tok_pad(t) == 258, "template's bos only");
    if (t) {
        int32_t *ids = NULL;
        int k = 0, cap = 0;
        CHECK(fx_tok_encode_tpl(t, &fx_roberta.text, "a", NULL, 0, &ids, &k, &cap) == -1 && strstr(fx_err(), "eos"),
              "a template needing eos was accepted: %s", fx_err());
        free(ids);
        fx_tok_free(t);
    }
    /* GPT-2's pattern, merges as pairs, no ignore_merges: "abc" is ab c */
    j = toy_json(GPT2_PRE, "null", "[\"a\", \"b\"]", "", "", "null", BL);
    put("tokenizer.json", j);
    free(j);
    t = fx_tok_load(tmpdir);
    CHECK(t != NULL, "toy gpt2: %s", fx_err());
    if (t) {
        CHECK(ids_are(t, "abc A'S", NULL, 1, (int[]){256, 99, 32, 65, 39, 83}, 6), "GPT-2 pattern, no ignore_merges");
        fx_tok_free(t);
    }
}

static void test_bad(void) {
    static const struct { const char *pre, *post, *merges, *added, *model, *norm, *dec, *want; } cases[] = {
        {LLAMA_PRE, TPL, "\"a c\"", ADDED, "", "null", BL, "merge 0 (\"a\" + \"c\") is not in the vocabulary"},
        {LLAMA_PRE, TPL, "\"a  b\"", ADDED, "", "null", BL, "merge 0 is neither"},
        {LLAMA_PRE, TPL, "[\"a\"]", ADDED, "", "null", BL, "merge 0 is neither"},
        {LLAMA_PRE, TPL, "", ADDED, "\"byte_fallback\": true,", "null", BL, "byte_fallback"},
        {LLAMA_PRE, TPL, "", ADDED, "\"continuing_subword_prefix\": \"##\",", "null", BL, "continuing_subword_prefix"},
        {LLAMA_PRE, TPL, "", ADDED, "\"ignore_merges\": 1,", "null", BL, "\"ignore_merges\" must be true or false"},
        {LLAMA_PRE, TPL, "", ADDED, "", "{\"type\": \"Sequence\", \"normalizers\": []}", BL, "normalizer \"Sequence\""},
        {LLAMA_PRE, TPL, "", ADDED, "", "{\"type\": \"NFKC\"}", BL, "normalizer \"NFKC\" is not supported"},
        {LLAMA_PRE, TPL, "", ADDED, "", "null", "null", "decoder \"null\""},
        {LLAMA_PRE, TPL, "", ADDED, "", "null", "{\"type\": \"Metaspace\"}", "SentencePiece"},
        {"{\"type\": \"Metaspace\", \"replacement\": \"_\"}", TPL, "", ADDED, "", "null", BL, "pre_tokenizer Metaspace"},
        {"{\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": \"Split\", \"pattern\": {\"Regex\": \"\\\\s+\"}, "
         "\"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", \"use_regex\": false}]}",
         TPL, "", ADDED, "", "null", BL, "pattern \"\\s+...\" is not supported"},
        {"{\"type\": \"ByteLevel\", \"add_prefix_space\": true}", TPL, "", ADDED, "", "null", BL, "add_prefix_space"},
        {"{\"type\": \"Whitespace\"}", TPL, "", ADDED, "", "null", BL, "pre_tokenizer \"Whitespace\" is not supported"},
        {LLAMA_PRE, TPL, "", "{\"id\": 300, \"content\": \"<B>\", \"special\": true}", "", "null", BL,
         "\"<B>\" has id 300, but reading the file gives it 258"},
        {LLAMA_PRE, TPL, "", "{\"id\": 258, \"content\": \"<B>\", \"single_word\": true}", "", "null", BL, "single_word"},
        {LLAMA_PRE, TPL, "", "{\"id\": 258, \"content\": \"\"}", "", "null", BL, "added_tokens[0]: needs"},
        {LLAMA_PRE, "{\"type\": \"TemplateProcessing\", \"single\": [{\"Sequence\": {\"id\": \"A\"}}, {\"SpecialToken\": "
         "{\"id\": \"<B>\"}}, {\"Sequence\": {\"id\": \"A\"}}], \"pair\": [], \"special_tokens\": {\"<B>\": {\"ids\": [258]}}}",
         "", ADDED, "", "null", BL, "not of the form"},
        {LLAMA_PRE, "{\"type\": \"TemplateProcessing\", \"single\": [{\"SpecialToken\": {\"id\": \"<X>\"}}], "
         "\"pair\": [], \"special_tokens\": {}}", "", ADDED, "", "null", BL, "special token \"<X>\" needs"},
        {LLAMA_PRE, "{\"type\": \"BertProcessing\", \"sep\": [\"<E>\"], \"cls\": [\"<B>\", 258]}", "", ADDED, "", "null",
         BL, "\"sep\" must be [token, id]"},
        {LLAMA_PRE, "{\"type\": \"RobertaProcessing\", \"sep\": [\"<E>\", 9999], \"cls\": [\"<B>\", 258]}", "", ADDED, "",
         "null", BL, "token id 9999 is not in the vocabulary"},
        {LLAMA_PRE, "{\"type\": \"Foo\"}", "", ADDED, "", "null", BL, "post_processor \"Foo\" is not supported"},
    };
    char path[256];
    snprintf(path, sizeof path, "%s/tokenizer.json", tmpdir);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *j = toy_json(cases[i].pre, cases[i].post, cases[i].merges, cases[i].added, cases[i].model, cases[i].norm,
                           cases[i].dec);
        put("tokenizer.json", j);
        free(j);
        fx_tokenizer *t = fx_tok_load(tmpdir);
        CHECK(!t && strstr(fx_err(), path) && strstr(fx_err(), cases[i].want), "case %zu: want \"%s\", got: %s", i,
              cases[i].want, t ? "(loaded)" : fx_err());
        fx_tok_free(t);
    }
    /* not byte-level: a byte without its token; model Unigram; bad JSON */
    put("tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {\"a\": 0}, \"merges\": []}, "
        "\"pre_tokenizer\": {\"type\": \"ByteLevel\"}, \"decoder\": {\"type\": \"ByteLevel\"}}");
    CHECK(!fx_tok_load(tmpdir) && strstr(fx_err(), "no token for byte 0x00"), "missing byte: %s", fx_err());
    put("tokenizer.json", "{\"model\": {\"type\": \"Unigram\", \"vocab\": []}, \"decoder\": {\"type\": \"ByteLevel\"}}");
    CHECK(!fx_tok_load(tmpdir) && strstr(fx_err(), "model type \"Unigram\"") && strstr(fx_err(), "SentencePiece"),
          "Unigram: %s", fx_err());
    put("tokenizer.json", "{\"model\": {\"type\": \"BPE\",\n \"vocab\": {\"a\": 0,}}}");
    CHECK(!fx_tok_load(tmpdir) && strstr(fx_err(), path) && strstr(fx_err(), "line 2"), "bad JSON: %s", fx_err());
    /* a config naming a token tokenizer.json lacks */
    char *j = toy_json(LLAMA_PRE, TPL, "", ADDED, "", "null", BL);
    put("tokenizer.json", j);
    free(j);
    put("tokenizer_config.json", "{\"eos_token\": \"</s>\"}");
    CHECK(!fx_tok_load(tmpdir) && strstr(fx_err(), "tokenizer_config.json: eos_token \"</s>\""), "config: %s", fx_err());
    put("tokenizer_config.json", NULL);
    put("config.json", "{\"eos_token_id\": [5000, 1]}");
    CHECK(!fx_tok_load(tmpdir) && strstr(fx_err(), "config.json: \"eos_token_id\""), "config.json: %s", fx_err());
    put("config.json", "{\"eos_token_id\": [259, 1]}");
    fx_tokenizer *t = fx_tok_load(tmpdir);
    CHECK(t && fx_tok_eos(t) == 259, "config.json's first eos id");
    fx_tok_free(t);
    put("config.json", NULL);
    /* a SentencePiece model alone */
    put("tokenizer.json", NULL);
    put("tokenizer.model", "\x0a\x0b");
    CHECK(!fx_tok_load(tmpdir) && strstr(fx_err(), "tokenizer.model") && strstr(fx_err(), "SentencePiece"),
          "tokenizer.model: %s", fx_err());
    put("tokenizer.model", NULL);
    rmdir(tmpdir);
}

/* ============================================================================================
 * the command line ($FEDEX)
 * ============================================================================================ */

static void test_cli(void) {
    const char *fedex = getenv("FEDEX");
    if (!fedex) { printf("skipped: command line checks (FEDEX not set; `make test` sets it)\n"); return; }
    fx_tokenizer *t = fx_tok_load(FIX "/llama3");
    if (!t) { CHECK(0, "%s", fx_err()); return; }
    int32_t *ids = NULL;
    int n = 0, cap = 0;
    char want[512] = "", cmd[1024], out[4096];
    CHECK(fx_tok_encode_seq(t, "Hello world<|eot_id|>", "it's", 0, &ids, &n, &cap) == 0, "%s", fx_err());
    for (int i = 0, o = 0; i < n; i++) o += snprintf(want + o, sizeof want - (size_t)o, i ? " %d" : "%d", ids[i]);
    strcat(want, "\n");
    snprintf(cmd, sizeof cmd, "%s tokenize --model " FIX "/llama3 'Hello world<|eot_id|>' 'it'\\''s'", fedex);
    CHECK(check_run(cmd, out, sizeof out) == 0 && !strcmp(out, want), "tokenize llama3 pair: %s want %s", out, want);
    snprintf(cmd, sizeof cmd, "%s tokenize --model " FIX "/llama3 --max-length 1 'a' 'b' 2>&1", fedex);
    CHECK(check_run(cmd, out, sizeof out) == 2 && strstr(out, "no room for 2 special tokens"), "room: %s", out);
    /* fedex init copies tokenizer.json and its tokenizer_config.json beside the new model */
    char dir[] = "/tmp/fedex-tokjson-init-XXXXXX";
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp failed"); free(ids); fx_tok_free(t); return; }
    snprintf(cmd, sizeof cmd, "cp " FIX "/llama3/tokenizer.json " FIX "/llama3/tokenizer_config.json %s/ && "
             "printf '{\"model_type\": \"llama\", \"vocab_size\": %d, \"hidden_size\": 8, \"intermediate_size\": 16, "
             "\"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"num_key_value_heads\": 1, "
             "\"max_position_embeddings\": 64, \"rms_norm_eps\": 1e-5, \"rope_theta\": 10000.0, "
             "\"tie_word_embeddings\": true}' > %s/config.json && %s init --config %s/config.json --out %s/m > /dev/null && "
             "%s tokenize --model %s/m 'Hello world<|eot_id|>' 'it'\\''s'", dir, fx_tok_vocab_size(t), dir, fedex, dir, dir,
             fedex, dir);
    CHECK(check_run(cmd, out, sizeof out) == 0 && !strcmp(out, want), "init copies the tokenizer: %s", out);
    snprintf(cmd, sizeof cmd, "rm -r %s", dir);
    CHECK(system(cmd) == 0, "rm %s", dir);
    free(ids);
    fx_tok_free(t);
}

int main(void) {
    test_cases();
    test_specials();
    test_hand();
    test_bad();
    test_cli();
    return check_done();
}
