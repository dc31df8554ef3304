/* tests/test_score.c: the E2E metrics (score.c, ptb.c) against e2e-metrics' own values, which
 * tests/make_score_fixtures.py computed with its code (pymteval, pycocoevalcap and the Stanford PTB
 * tokenizer 3.4.1) on the fixture files; the readers' errors; `fedex score` through $FEDEX. */
#include "check.h"
#include "fedex.h"

#include <string.h>
#include <unistd.h>

/* The tolerance asked of these metrics: e2e-metrics' values to 1e-6. Both sides sum the same terms in double
 * precision, in a different order (numpy's pairwise mean), so they agree far closer than this. */
#define TOL 1e-6

static const char *const cases[] = {"heldout", "perturbed", "edge", "single", "tokenized", "oneword"};

static int close_to(double got, const fx_json *want) {
    if (!want) return 0;
    if (want->type == FX_JNULL) return isnan(got);
    return want->type == FX_JNUM && fabs(got - want->num) <= TOL;
}

static void golden(void) {
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char path[256], hyp[256], refs[256];
        snprintf(path, sizeof path, "tests/fixtures/score_%s.json", cases[c]);
        fx_json j;
        if (fx_json_load(path, &j) != 0) { CHECK(0, "%s", fx_err()); continue; }
        snprintf(hyp, sizeof hyp, "tests/fixtures/%s", fx_json_get(&j, "hyp")->str);
        snprintf(refs, sizeof refs, "tests/fixtures/%s", fx_json_get(&j, "refs")->str);
        int tokenized = fx_json_get(&j, "tokenized")->boolean;
        fx_e2e_scores s;
        int rc = fx_e2e_score_files(hyp, refs, tokenized, &s);
        CHECK(rc == 0, "%s: %s", cases[c], fx_err());
        if (rc == 0) {
            const char *key[] = {"BLEU", "NIST", "ROUGE_L", "CIDEr"};
            double got[] = {s.bleu, s.nist, s.rouge_l, s.cider};
            for (int k = 0; k < 4; k++) {
                const fx_json *w = fx_json_get(&j, key[k]);
                CHECK(close_to(got[k], w), "%s %s: got %.9f want %.9f", cases[c], key[k], got[k],
                      w && w->type == FX_JNUM ? w->num : NAN);
            }
        }
        fx_json_free(&j);
    }
}

/* The tokenizer alone: captions made of pieces that hit its rules, tokenised in one run as e2e-metrics
 * runs the Java tokenizer, to the character. */
static void ptb(void) {
    char *buf;
    size_t len;
    if (fx_read_file("tests/fixtures/score_ptb.jsonl", &buf, &len) != 0) { CHECK(0, "%s", fx_err()); return; }
    int n = 0, cap = 0;
    fx_json *j = NULL;
    for (char *p = buf, *q; *p; p = q + 1) {
        q = strchr(p, '\n');
        if (!q) q = p + strlen(p);
        if (n == cap) { cap = cap ? cap * 2 : 256; j = fx_realloc(j, (size_t)cap * sizeof *j); }
        if (fx_json_parse(p, (size_t)(q - p), &j[n]) != 0) { CHECK(0, "score_ptb.jsonl:%d: %s", n + 1, fx_err()); break; }
        n++;
        if (!*q) break;
    }
    const char **text = fx_malloc((size_t)n * sizeof *text);
    char **out = fx_calloc((size_t)n, sizeof *out);
    for (int i = 0; i < n; i++) text[i] = fx_json_get(&j[i], "text")->str;
    CHECK(n >= 300 && fx_ptb_tokenize(n, text, out) == 0, "%d captions: %s", n, fx_err());
    int bad = 0;
    for (int i = 0; i < n; i++) {
        const char *want = fx_json_get(&j[i], "tokens")->str;
        if (out[i] && !strcmp(out[i], want)) continue;
        if (bad++ < 5) fprintf(stderr, "caption %d: got \"%s\" want \"%s\"\n", i + 1, out[i] ? out[i] : "(none)", want);
    }
    CHECK(bad == 0, "%d of %d captions tokenised otherwise than the Java tokenizer", bad, n);
    for (int i = 0; i < n; i++) { free(out[i]); fx_json_free(&j[i]); }
    free(out); free(text); free(j); free(buf);
}

/* The API on strings: the same item scored alone, errors for bad items. */
static void api(void) {
    char *hyp[] = {"The Eagle is a coffee shop."};
    char *r0[] = {"The Eagle is a coffee shop.", "The Eagle serves coffee."};
    char *const *refs[] = {r0};
    int nref[] = {2};
    fx_e2e_scores s;
    CHECK(fx_e2e_score(1, hyp, refs, nref, 0, &s) == 0, "%s", fx_err());
    CHECK(fabs(s.bleu - 1) < 1e-12, "an exact match's BLEU: %g", s.bleu);
    CHECK(fabs(s.rouge_l - 1) < 1e-12, "an exact match's ROUGE-L: %g", s.rouge_l);
    int none[] = {0};
    CHECK(fx_e2e_score(1, hyp, refs, none, 0, &s) == -1 && strstr(fx_err(), "no reference"), "%s", fx_err());
    char *bad[] = {"caf\xC3"};
    CHECK(fx_e2e_score(1, bad, refs, nref, 0, &s) == -1 && strstr(fx_err(), "not valid UTF-8"), "%s", fx_err());
    CHECK(fx_e2e_score(0, hyp, refs, nref, 0, &s) == -1, "no items");
}

static void put_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    fputs(text, f);
    fclose(f);
}

/* Reader errors name the file and line; a count mismatch names both counts. */
static void readers(void) {
    char dir[] = "/tmp/fedex_score_XXXXXX", h[64], r[64];
    if (!mkdtemp(dir)) { CHECK(0, "mkdtemp"); return; }
    snprintf(h, sizeof h, "%s/h", dir);
    snprintf(r, sizeof r, "%s/r", dir);
    fx_e2e_scores s;
    struct { const char *hyp, *refs, *want; } bad[] = {
        {"", "a\n", "/h: empty"},
        {"a\n", "", "/r: no references"},
        {"a\nb\n", "x\n\ny\n\nz\n", "has 2 hypotheses but"},
        {"a\n", "x\n", NULL},
        {"ok\nbad \xFF byte\n", "x\n\ny\n", "/h:2: not valid UTF-8"},
        {"a\n", "x\n\n\ny\n", "/r:3: a blank line with no reference"},
        {"\xEF\xBB\xBF" "a\n", "x\n", "/h:1: starts with a UTF-8 byte-order mark"},
        {"a\n\n", "x\n\ny\n", NULL}, /* a trailing blank line is an empty hypothesis, as there */
        {"a\r\nb\r\n", "x\r\n\r\ny\r\n", NULL},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        put_file(h, bad[k].hyp);
        put_file(r, bad[k].refs);
        int rc = fx_e2e_score_files(h, r, 0, &s);
        if (bad[k].want) CHECK(rc == -1 && strstr(fx_err(), bad[k].want), "case %zu: %s", k, rc ? fx_err() : "accepted");
        else CHECK(rc == 0, "case %zu: %s", k, fx_err());
    }
    /* an empty hypothesis line is scored (against e2e-metrics' rule: one empty token), not refused */
    put_file(h, "\nThe Eagle\n");
    put_file(r, "The Eagle is here.\n\nThe Eagle\n");
    CHECK(fx_e2e_score_files(h, r, 0, &s) == 0 && s.rouge_l > 0.4 && s.rouge_l < 0.6, "empty line: %g", s.rouge_l);
    unlink(h); unlink(r); rmdir(dir);
}

static void cli(void) {
    const char *bin = getenv("FEDEX");
    if (!bin) { printf("skipped: fedex score through the binary (FEDEX is not set: run `make test`)\n"); return; }
    char cmd[512], out[4096];
    snprintf(cmd, sizeof cmd, "%s score --hyp tests/fixtures/score_edge.hyp --refs tests/fixtures/score_edge.refs "
             "--json 2>/dev/null", bin);
    fx_json j, w;
    CHECK(check_run(cmd, out, sizeof out) == 0, "%s", cmd);
    if (fx_json_parse(out, strlen(out), &j) != 0) { CHECK(0, "--json printed %s", out); return; }
    if (fx_json_load("tests/fixtures/score_edge.json", &w) == 0) {
        const char *key[] = {"BLEU", "NIST", "ROUGE_L", "CIDEr"};
        for (int k = 0; k < 4; k++) {
            const fx_json *g = fx_json_get(&j, key[k]);
            CHECK(g && g->type == FX_JNUM && close_to(g->num, fx_json_get(&w, key[k])), "--json %s", key[k]);
        }
        CHECK(j.n == 4, "--json has %zu keys", j.n);
        fx_json_free(&w);
    }
    fx_json_free(&j);
    snprintf(cmd, sizeof cmd, "%s score --hyp tests/fixtures/score_edge.hyp --refs tests/fixtures/score_edge.refs", bin);
    CHECK(check_run(cmd, out, sizeof out) == 0 && strstr(out, "BLEU ") && strstr(out, "METEOR is not computed") &&
          strstr(out, "measure_scores.py"), "table: %s", out);
    snprintf(cmd, sizeof cmd, "%s score --hyp tests/fixtures/score_edge.hyp --refs tests/fixtures/score_heldout.refs 2>&1",
             bin);
    CHECK(check_run(cmd, out, sizeof out) == 1 && strstr(out, "14 hypotheses but"), "mismatch: %s", out);
    snprintf(cmd, sizeof cmd, "%s score --hyp /nonexistent 2>&1", bin);
    CHECK(check_run(cmd, out, sizeof out) == 2, "usage: %s", out);
}

int main(void) {
    golden();
    ptb();
    api();
    readers();
    cli();
    return check_done();
}
