/* tests/test_generate.c: generate.c's greedy and beam search against tests/make_generate_fixtures.py, a
 * separate Python implementation of Hugging Face generate()'s search, over a toy model computed here as
 * the script computes it; token for token. Also the decoder contract (positions, cache slots), the
 * errors on bad settings and prompts, and the failures of a decoder passed through. */
#include "fedex.h"
#include "tests/check.h"

#include <math.h>
#include <string.h>

/* Scores: the script and generate.c evaluate the same float64 formulas in the same order; only exp, log
 * and pow of the two languages' libraries could differ, by an ulp or so. */
static const double SCORE_RTOL = 1e-12;

/* ============================================================================================
 * The toy decoder: logits from the row its slot holds (see the fixture script)
 * ============================================================================================ */

static uint64_t mix64(uint64_t x) {
    uint64_t z = x + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static double u01(uint64_t z) { return (double)(z >> 11) * (1.0 / 9007199254740992.0); }

typedef struct {
    uint64_t seed;
    int V, eos, slots, max_len;
    double bias, slope;
    int **row, *len;          /* each slot's tokens, the cache the decoder holds */
    int steps, reorders;
    int quantised;            /* whole-number logits (exact ties) */
    int fail_at;              /* fault injection: the call number that fails (0: none) */
    int calls;
} toy;

static void toy_logits(const toy *t, const int *row, int n, float *out) {
    uint64_t h = t->seed;
    for (int i = 0; i < n; i++) h = mix64(h ^ (uint64_t)(row[i] + 1));
    uint64_t a = (uint64_t)row[n - 1];
    for (int v = 0; v < t->V; v++) {
        double x = 5.0 * u01(mix64(t->seed * 0x100000001B3ULL + a * (uint64_t)t->V + (uint64_t)v)) +
                   1.5 * u01(mix64(h + (uint64_t)v));
        if (v == t->eos) x += t->bias + t->slope * n;
        out[v] = (float)(t->quantised ? floor(x) : x);
    }
}

static int toy_fault(toy *t) {
    if (t->fail_at && ++t->calls == t->fail_at) { fx_seterr("toy: injected failure"); return -1; }
    return 0;
}

static int toy_prefill(void *ctx, const int *ids, int n, float *logits) {
    toy *t = ctx;
    if (toy_fault(t)) return -1;
    if (n < 1 || n > t->max_len) { fx_seterr("toy: prefill of %d", n); return -1; }
    memcpy(t->row[0], ids, (size_t)n * sizeof *ids);
    t->len[0] = n;
    toy_logits(t, ids, n, logits);
    return 0;
}

static int toy_step(void *ctx, int ns, const int *tok, int pos, float *logits) {
    toy *t = ctx;
    if (toy_fault(t)) return -1;
    t->steps++;
    if (ns < 1 || ns > t->slots || pos >= t->max_len) { fx_seterr("toy: step of %d slots at %d", ns, pos); return -1; }
    for (int s = 0; s < ns; s++) {
        if (t->len[s] != pos) { fx_seterr("toy: slot %d holds %d positions, step at %d", s, t->len[s], pos); return -1; }
        if (tok[s] < 0 || tok[s] >= t->V) { fx_seterr("toy: token %d", tok[s]); return -1; }
        t->row[s][t->len[s]++] = tok[s];
        toy_logits(t, t->row[s], t->len[s], logits + (size_t)s * t->V);
    }
    return 0;
}

static int toy_reorder(void *ctx, int ns, const int *src, int len) {
    toy *t = ctx;
    if (toy_fault(t)) return -1;
    t->reorders++;
    int **copy = fx_malloc((size_t)ns * sizeof *copy);
    for (int s = 0; s < ns; s++) {
        if (src[s] < 0 || src[s] >= t->slots || t->len[src[s]] < len) {
            fx_seterr("toy: reorder from slot %d of %d positions, %d asked", src[s], t->len[src[s]], len);
            for (int k = 0; k < s; k++) free(copy[k]);
            free(copy);
            return -1;
        }
        copy[s] = fx_malloc((size_t)t->max_len * sizeof **copy);
        memcpy(copy[s], t->row[src[s]], (size_t)len * sizeof **copy);
    }
    for (int s = 0; s < ns; s++) { free(t->row[s]); t->row[s] = copy[s]; t->len[s] = len; }
    free(copy);
    return 0;
}

static void toy_open(toy *t, fx_decoder *d, uint64_t seed, int V, int eos, double bias, double slope, int slots,
                     int max_len) {
    memset(t, 0, sizeof *t);
    t->seed = seed; t->V = V; t->eos = eos; t->bias = bias; t->slope = slope; t->slots = slots;
    t->max_len = max_len;
    t->row = fx_malloc((size_t)slots * sizeof *t->row);
    t->len = fx_calloc((size_t)slots, sizeof *t->len);
    for (int s = 0; s < slots; s++) t->row[s] = fx_malloc((size_t)max_len * sizeof **t->row);
    *d = (fx_decoder){t, V, max_len, toy_prefill, toy_step, toy_reorder};
}

static void toy_close(toy *t) {
    for (int s = 0; s < t->slots; s++) free(t->row[s]);
    free(t->row); free(t->len);
}

/* ============================================================================================
 * The fixture cases
 * ============================================================================================ */

static int read_ids(char **p, int *ids, int cap) {
    char *end;
    long n = strtol(*p, &end, 10);
    if (end == *p || n < 0 || n > cap) return -1;
    *p = end;
    for (long i = 0; i < n; i++) {
        ids[i] = (int)strtol(*p, &end, 10);
        if (end == *p) return -1;
        *p = end;
    }
    return (int)n;
}

static void fixture_cases(void) {
    const char *path = "tests/fixtures/generate_toy.txt";
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "%s: cannot open (run tests/make_generate_fixtures.py)", path);
    if (!f) return;
    char line[8192], name[128];
    int ncase = 0, nbeam = 0, neos = 0, lines = 0;
    while (fgets(line, sizeof line, f)) {
        lines++;
        if (line[0] == '#') continue;
        unsigned long long seed;
        int V, eos, beams, max_new, early, nrep, genonly, q;
        double bias, slope, lp;
        if (sscanf(line, "case %127s %llu %d %d %lf %lf %d %d %lf %d %d %d %d", name, &seed, &V, &eos, &bias, &slope,
                   &beams, &max_new, &lp, &early, &nrep, &genonly, &q) != 13) {
            CHECK(0, "%s:%d: not a case line", path, lines);
            break;
        }
        int prompt[64], want[256], got[256], np = -1, nw = -1;
        double want_score = NAN;
        char *p;
        if (fgets(line, sizeof line, f) && !strncmp(line, "prompt ", 7)) { p = line + 7; np = read_ids(&p, prompt, 64); }
        if (fgets(line, sizeof line, f) && !strncmp(line, "want ", 5)) { p = line + 5; nw = read_ids(&p, want, 256); }
        if (fgets(line, sizeof line, f)) sscanf(line, "score %lf", &want_score);
        lines += 3;
        if (np < 1 || nw < 0 || isnan(want_score) || max_new > 256) { CHECK(0, "%s:%d: bad case %s", path, lines, name); break; }

        /* The decoder holds exactly the positions the search needs, so that one too many fails. */
        toy t;
        fx_decoder d;
        toy_open(&t, &d, seed, V, eos, bias, slope, beams, np + max_new - 1);
        t.quantised = q;
        fx_gen_cfg g = {beams, max_new, eos, lp, (fx_early_stop)early, nrep, genonly};
        int ng = -1;
        double score = NAN;
        int rc = fx_generate(&d, &g, prompt, np, got, &ng, &score);
        CHECK(rc == 0, "%s: fx_generate failed: %s", name, fx_err());
        int same = rc == 0 && ng == nw && !memcmp(got, want, (size_t)nw * sizeof *got);
        if (!same && rc == 0) {
            fprintf(stderr, "%s: got", name);
            for (int i = 0; i < ng; i++) fprintf(stderr, " %d", got[i]);
            fprintf(stderr, "\n%s: want", name);
            for (int i = 0; i < nw; i++) fprintf(stderr, " %d", want[i]);
            fputc('\n', stderr);
        }
        CHECK(same, "%s: tokens differ from the fixture", name);
        CHECK(score == want_score || fabs(score - want_score) <= SCORE_RTOL * fabs(want_score),
              "%s: score %.17g, want %.17g", name, score,
              want_score);
        /* Greedy runs one slot and never reorders; one step per new token but the last. */
        if (beams == 1) CHECK(t.reorders == 0 && t.steps == ng - 1, "%s: %d steps, %d reorders", name, t.steps, t.reorders);
        toy_close(&t);
        ncase++;
        nbeam += beams > 1;
        neos += nw > 0 && want[nw - 1] == eos;
    }
    fclose(f);
    printf("%d fixture cases (%d beam searches, %d ending with the end token)\n", ncase, nbeam, neos);
    CHECK(ncase >= 200 && nbeam >= 100 && neos >= 40, "the fixture covers too little");
}

/* ============================================================================================
 * Errors: settings, prompts, positions, a failing decoder
 * ============================================================================================ */

static void errors(void) {
    toy t;
    fx_decoder d;
    int prompt[4] = {1, 2, 3, 4}, out[32], n;
    toy_open(&t, &d, 7, 16, 3, -2, 0.2, 4, 8);
    fx_gen_cfg g;
    fx_gen_e2e(&g, 3);
    g.max_new_tokens = 5;
    g.num_beams = 4;
    CHECK(fx_generate(&d, &g, prompt, 4, out, &n, NULL) == 0, "4 + 5 - 1 positions fit in 8: %s", fx_err());
    g.max_new_tokens = 6;
    CHECK(fx_generate(&d, &g, prompt, 4, out, &n, NULL) != 0 && strstr(fx_err(), "positions"),
          "4 + 6 - 1 positions refused: %s", fx_err());
    g.max_new_tokens = 4;
    CHECK(fx_generate(&d, &g, prompt, 0, out, &n, NULL) != 0 && strstr(fx_err(), "empty"), "empty prompt: %s", fx_err());
    prompt[2] = 16;
    CHECK(fx_generate(&d, &g, prompt, 4, out, &n, NULL) != 0 && strstr(fx_err(), "token 3 is 16"), "%s", fx_err());
    prompt[2] = 3;
    fx_gen_cfg bad = g;
    bad.num_beams = 0;
    CHECK(fx_generate(&d, &bad, prompt, 4, out, &n, NULL) != 0 && strstr(fx_err(), "--num-beams"), "%s", fx_err());
    bad = g; bad.max_new_tokens = 0;
    CHECK(fx_generate(&d, &bad, prompt, 4, out, &n, NULL) != 0 && strstr(fx_err(), "--max-new-tokens"), "%s", fx_err());
    bad = g; bad.eos = 16;
    CHECK(fx_generate(&d, &bad, prompt, 4, out, &n, NULL) != 0 && strstr(fx_err(), "end token 16"), "%s", fx_err());
    bad = g; bad.length_penalty = NAN;
    CHECK(fx_generate(&d, &bad, prompt, 4, out, &n, NULL) != 0 && strstr(fx_err(), "--length-penalty"), "%s", fx_err());
    bad = g; bad.no_repeat_ngram = -1;
    CHECK(fx_generate(&d, &bad, prompt, 4, out, &n, NULL) != 0 && strstr(fx_err(), "--no-repeat"), "%s", fx_err());
    /* A decoder's failure at its first, second and third call comes back, for greedy and beam search. */
    for (int beams = 1; beams <= 4; beams += 3)
        for (int k = 1; k <= 3; k++) {
            g.num_beams = beams;
            t.fail_at = k; t.calls = 0;
            int rc = fx_generate(&d, &g, prompt, 4, out, &n, NULL);
            CHECK(rc != 0 && strstr(fx_err(), "injected"), "beams %d: failure at call %d not passed on", beams, k);
        }
    t.fail_at = 0;
    toy_close(&t);
}

/* Logits that are not numbers stop the search with a message, not a wrong answer. */
static float bad_value;
static int nan_prefill(void *ctx, const int *ids, int n, float *logits) {
    (void)ctx; (void)ids; (void)n;
    for (int v = 0; v < 8; v++) logits[v] = (float)v;
    logits[5] = bad_value;
    return 0;
}
static void not_finite(void) {
    fx_decoder d = {NULL, 8, 16, nan_prefill, NULL, NULL};
    int prompt[1] = {0}, out[4], n;
    fx_gen_cfg g = {1, 4, -1, 1.0, FX_STOP_HEURISTIC, 0, 0};
    float bad[2] = {NAN, INFINITY};
    for (int i = 0; i < 2; i++)
        for (int beams = 1; beams <= 2; beams++) {
            bad_value = bad[i];
            g.num_beams = beams;
            CHECK(fx_generate(&d, &g, prompt, 1, out, &n, NULL) != 0 && strstr(fx_err(), "not finite"),
                  "beams %d, logit %g: %s", beams, (double)bad[i], fx_err());
        }
}

/* The E2E setting as the LoRA paper decodes. */
static void e2e_defaults(void) {
    fx_gen_cfg g;
    fx_gen_e2e(&g, 50256);
    CHECK(g.num_beams == 10 && g.max_new_tokens == 64 && g.length_penalty == 0.8 && g.no_repeat_ngram == 4 &&
          g.no_repeat_generated == 1 && g.eos == 50256 && g.early_stopping == FX_STOP_HEURISTIC,
          "E2E defaults");
}

int main(void) {
    fixture_cases();
    errors();
    not_finite();
    e2e_defaults();
    return check_done();
}
