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


/* ============================================================================================
 * The tiny random GPT-2s and Llamas: the model's KV-cache decoder under the search, against the
 * float64 reference's full forward with the same Python search (tests/make_gpt2_generate_fixtures.py,
 * tests/make_llama_generate_fixtures.py: llama3 rope_scaling with biases, and a sliding window that
 * the decoded rows pass)
 * ============================================================================================ */

static int load_lm(const char *dir, fx_model *m) {
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    fx_config c;
    fx_adapter_cfg a = {.kind = FX_LORA, .targets = 0, .r = 1, .alpha = 1};
    if (fx_config_load(path, &c) != 0 || fx_model_create(m, &c, &a, NULL) != 0) return -1;
    fx_model_init_base(m, 0);
    if (fx_model_load(m, dir) < 0) { fx_model_free(m); return -1; }
    return 0;
}

/* FAMILY's cases (tests/fixtures/FAMILY_generate.txt), at least MIN_CASES of which MIN_BEAMS beam searches. */
static void lm_cases(const char *family, int min_cases, int min_beams) {
    char path[128];
    snprintf(path, sizeof path, "tests/fixtures/%s_generate.txt", family);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "%s: cannot open (run tests/make_%s_generate_fixtures.py)", path, family);
    if (!f) return;
    char line[4096], name[128], shape[8], loaded[8] = "";
    fx_model m;
    int have = 0, ncase = 0, nbeam = 0;
    const char *bin = getenv("FEDEX");
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        int beams, max_new, early, nrep, genonly, eos;
        double lp;
        if (sscanf(line, "case %127s %7s %d %d %lf %d %d %d %d", name, shape, &beams, &max_new, &lp, &early, &nrep,
                   &genonly, &eos) != 9) { CHECK(0, "%s: not a case line: %s", path, line); break; }
        int prompt[64], want[64], got[64], np = -1, nw = -1;
        char *p;
        if (fgets(line, sizeof line, f) && !strncmp(line, "prompt ", 7)) { p = line + 7; np = read_ids(&p, prompt, 64); }
        if (fgets(line, sizeof line, f) && !strncmp(line, "want ", 5)) { p = line + 5; nw = read_ids(&p, want, 64); }
        if (!fgets(line, sizeof line, f) || np < 1 || nw < 0 || max_new > 64) { CHECK(0, "%s: bad case %s", path, name); break; }
        char dir[64];
        snprintf(dir, sizeof dir, "tests/fixtures/%s_%s", family, shape);
        if (strcmp(loaded, shape)) {
            if (have) fx_model_free(&m);
            have = load_lm(dir, &m) == 0;
            CHECK(have, "%s: %s", dir, fx_err());
            if (!have) break;
            snprintf(loaded, sizeof loaded, "%s", shape);
        }
        fx_decoder d;
        if (fx_model_decoder(&m, beams, &d) != 0) { CHECK(0, "%s: decoder: %s", name, fx_err()); break; }
        fx_gen_cfg g = {beams, max_new, eos, lp, (fx_early_stop)early, nrep, genonly};
        int ng = -1, rc = fx_generate(&d, &g, prompt, np, got, &ng, NULL);
        CHECK(rc == 0 && ng == nw && !memcmp(got, want, (size_t)nw * sizeof *got), "%s: tokens differ (%s)", name,
              rc ? fx_err() : "");
        fx_decoder_free(&d);
        /* The same through the command line, for one case of every shape and setting kind. */
        if (bin && (ncase % 3 == 0)) {
            static const char *stop[] = {"false", "true", "never"};
            char cmd[2048], outbuf[4096], ids[512] = "", wants[512] = "";
            for (int i = 0; i < np; i++) snprintf(ids + strlen(ids), sizeof ids - strlen(ids), "%s%d", i ? " " : "", prompt[i]);
            for (int i = 0; i < nw; i++) snprintf(wants + strlen(wants), sizeof wants - strlen(wants), "%s%d", i ? " " : "", want[i]);
            snprintf(cmd, sizeof cmd, "%s generate --model %s --prompt-ids --ids --num-beams %d --max-new-tokens %d "
                     "--length-penalty %.17g --early-stopping %s --no-repeat-ngram-size %d --no-repeat-scope %s --eos %d '%s' 2>&1",
                     bin, dir, beams, max_new, lp, stop[early], nrep, genonly ? "generated" : "row", eos, ids);
            int st = check_run(cmd, outbuf, sizeof outbuf);
            strcat(wants, "\n");
            CHECK(st == 0 && !strcmp(outbuf, wants), "%s: fedex generate printed '%s' (exit %d), want '%s'", name, outbuf,
                  st, wants);
        }
        ncase++;
        nbeam += beams > 1;
    }
    if (have) fx_model_free(&m);
    fclose(f);
    printf("%d %s cases (%d beam searches)%s\n", ncase, family, nbeam,
           bin ? "" : "; skipped: the command line (FEDEX is not set: run `make test`)");
    CHECK(ncase >= min_cases && nbeam >= min_beams, "the %s fixture covers too little", family);
}

/* ============================================================================================
 * The command line's errors
 * ============================================================================================ */

static void cli_errors(void) {
    const char *bin = getenv("FEDEX");
    if (!bin) { printf("skipped: fedex generate's errors (FEDEX is not set: run `make test`)\n"); return; }
    struct { const char *args, *want; int status; } cases[] = {
        {"--prompt-ids --ids '1 2'", "--model DIR is required", 2},
        {"--model tests/fixtures/gpt2_a --prompt-ids --ids", "no prompt: give prompts", 2},
        {"--model tests/fixtures/gpt2_a --prompt-ids --ids --file - '1 2' </dev/null", "not both", 2},
        {"--model tests/fixtures/gpt2_a --prompt-ids --ids --max-new-tokens 4 '1 x 2'", "prompt 1: 'x' is not a token id", 1},
        {"--model tests/fixtures/gpt2_a --prompt-ids --ids --max-new-tokens 4 '1 2' '53'", "prompt 2: token id 53 is outside the vocabulary of 53", 1},
        {"--model tests/fixtures/gpt2_a --prompt-ids --ids --max-new-tokens 4 ' '", "prompt 1: no token ids", 1},
        {"--model tests/fixtures/gpt2_a --prompt-ids --ids '1 2'", "need 65 positions; the model holds 24", 1},
        {"--model tests/fixtures/gpt2_a --prompt-ids --ids --early-stopping maybe '1'", "--early-stopping must be false, true or never", 2},
        {"--model tests/fixtures/gpt2_a --prompt-ids --ids --no-repeat-scope all '1'", "--no-repeat-scope must be generated or row", 2},
        {"--model tests/fixtures/gpt2_a --prompt-ids --ids --num-beams 0 '1'", "--num-beams", 2},
        {"--model tests/fixtures/gpt2_a --prompt-ids --ids --eos 99 --max-new-tokens 4 '1'", "end token 99 is outside", 1},
        {"--model tests/fixtures/gpt2_a --prompt-ids 'x'", "vocab.json", 1},
        {"--model tests/fixtures/nowhere --prompt-ids --ids '1'", "tests/fixtures/nowhere", 1},
        {"--model tests/fixtures/gpt2_a --prompt-ids --ids --max-new-tokens 4 --file tests/fixtures/nowhere.txt", "nowhere.txt", 1},
        {"train --num-beams 3", "the generation options apply to --task e2e", 2},
        {"train --task e2e --model M --data D --eval-every -2", "--eval-every must be -1 (never)", 2},
        {"train --task e2e --model M --data D --early-stopping soon", "--early-stopping must be false, true or never", 2},
        {"train --task e2e --model M --data D --num-beams 0", "--num-beams must be between 1 and 1024", 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char cmd[2048], outbuf[4096];
        snprintf(cmd, sizeof cmd, "%s generate %s 2>&1", bin, cases[i].args);
        if (!strncmp(cases[i].args, "train ", 6)) snprintf(cmd, sizeof cmd, "%s %s 2>&1", bin, cases[i].args);
        int st = check_run(cmd, outbuf, sizeof outbuf);
        CHECK(st == cases[i].status && strstr(outbuf, cases[i].want), "`fedex generate %s`: exit %d, '%s' (want %d, '%s')",
              cases[i].args, st, outbuf, cases[i].status, cases[i].want);
    }
    /* --file, from standard input: a line per prompt, a line per result, CRLF accepted; a bad line named. */
    char cmd[2048], a[4096], b[4096];
    snprintf(cmd, sizeof cmd, "printf '1 2\\r\\n5\\n' | %s generate --model tests/fixtures/gpt2_a --prompt-ids --ids "
             "--max-new-tokens 5 --file - 2>&1", bin);
    int st = check_run(cmd, a, sizeof a);
    snprintf(cmd, sizeof cmd, "%s generate --model tests/fixtures/gpt2_a --prompt-ids --ids --max-new-tokens 5 '1 2' 5 2>&1", bin);
    int st2 = check_run(cmd, b, sizeof b);
    CHECK(st == 0 && st2 == 0 && !strcmp(a, b) && strchr(a, '\n') != strrchr(a, '\n'), "--file - gave '%s', arguments '%s'", a, b);
    snprintf(cmd, sizeof cmd, "printf '1 2\\n\\n' | %s generate --model tests/fixtures/gpt2_a --prompt-ids --ids "
             "--max-new-tokens 5 --file - 2>&1", bin);
    st = check_run(cmd, a, sizeof a);
    CHECK(st == 1 && strstr(a, "-:2: no token ids"), "an empty line of --file: exit %d, '%s'", st, a);
}


/* ============================================================================================
 * An E2E run's test generation: the tiny GPT-2 of DIR/m on a few rows of ../shared's E2E files
 * ============================================================================================
 * Two rounds, generating every round: metrics.jsonl carries each round's scores and the best round by
 * BLEU; the predictions are what `fedex generate` gives with the run's adapter and residual, one line per
 * MR; the references come grouped per MR; the scores are `fedex score`'s of those files. */
static void e2e_run(const char *bin, const char *sh, const char *dir) {
    char cmd[8192], a[65536], b[65536];
    snprintf(cmd, sizeof cmd, "mkdir %s/d && head -13 %s/data/e2e/devset.csv > %s/d/trainset.csv && "
             "head -5 %s/data/e2e/devset.csv > %s/d/devset.csv && head -8 %s/data/e2e/testset_w_refs.csv > %s/d/testset_w_refs.csv && "
             "%s train --model %s/m --task e2e --data %s/d --rounds 2 --local-epochs 1 --batch-size 4 --max-seq-length 64 "
             "--eval-every 1 --num-beams 3 --max-new-tokens 8 --threads 2 --out %s/run > %s/log 2>&1",
             dir, sh, dir, sh, dir, sh, dir, bin, dir, dir, dir, dir);
    int st = system(cmd);
    CHECK(st == 0, "the E2E run failed: see %s/log", dir);
    if (st) return;
    /* The test MRs of those rows, as prompts. */
    fx_e2e_rows r;
    snprintf(cmd, sizeof cmd, "%s/d/testset_w_refs.csv", dir);
    CHECK(fx_e2e_read(cmd, &r) == 0 && r.ngroups >= 2, "%s: %s", cmd, fx_err());
    snprintf(cmd, sizeof cmd, "%s/prompts.txt", dir);
    FILE *f = fopen(cmd, "w");
    for (int k = 0; f && k < r.ngroups; k++) { char *p = fx_e2e_prompt(r.mr[r.group[k]]); fprintf(f, "%s\n", p); free(p); }
    if (f) fclose(f);
    snprintf(cmd, sizeof cmd, "%s generate --model %s/m --adapter %s/run --residual %s/run/residual.safetensors "
             "--num-beams 3 --max-new-tokens 8 --file %s/prompts.txt 2>&1", bin, dir, dir, dir, dir);
    CHECK(check_run(cmd, a, sizeof a) == 0, "fedex generate: %s", a);
    char path[512];
    size_t n;
    char *pred = NULL, *refs = NULL, *metrics = NULL;
    snprintf(path, sizeof path, "%s/run/e2e_predictions_round2.txt", dir);
    CHECK(fx_read_file(path, &pred, &n) == 0 && !strcmp(pred, a), "%s:\n%s\nfedex generate:\n%s", path, pred ? pred : "", a);
    int lines = 0;
    for (char *p = pred; p && *p; p++) lines += *p == '\n';
    CHECK(lines == r.ngroups, "%d predictions for %d MRs", lines, r.ngroups);
    snprintf(path, sizeof path, "%s/run/e2e_references.txt", dir);
    CHECK(fx_read_file(path, &refs, &n) == 0, "%s", fx_err());
    int blank = 0, nref = 0;
    for (char *p = refs; p && *p; p++) if (*p == '\n') { if (p[1] == '\n') blank++; else nref++; }
    CHECK(blank == r.ngroups - 1 && nref == r.n, "references: %d blank lines, %d references (want %d, %d)", blank, nref,
          r.ngroups - 1, r.n);
    /* Both rounds scored, the best by BLEU named; the last round's BLEU is fedex score's of the files. */
    snprintf(path, sizeof path, "%s/run/metrics.jsonl", dir);
    CHECK(fx_read_file(path, &metrics, &n) == 0, "%s", fx_err());
    char *second = metrics ? strchr(metrics, '\n') : NULL;
    CHECK(second && strstr(metrics, "\"test\": {\"BLEU\": ") && strstr(second, "\"test\": {\"BLEU\": ") &&
          strstr(second, "\"best_bleu_round\": "), "metrics.jsonl lacks the test scores:\n%s", metrics ? metrics : "");
    snprintf(cmd, sizeof cmd, "%s score --hyp %s/run/e2e_predictions_round2.txt --refs %s/run/e2e_references.txt --json 2>/dev/null",
             bin, dir, dir);
    CHECK(check_run(cmd, b, sizeof b) == 0, "fedex score: %s", b);
    fx_json j, jm;
    if (second && fx_json_parse(b, strlen(b), &j) == 0) {
        if (fx_json_parse(second + 1, strlen(second + 1) - 1, &jm) == 0) {
            const fx_json *t = fx_json_get(&jm, "test");
            const char *keys[] = {"BLEU", "NIST", "ROUGE_L", "CIDEr"};
            for (int k = 0; k < 4; k++) {
                const fx_json *x = t ? fx_json_get(t, keys[k]) : NULL, *y = fx_json_get(&j, keys[k]);
                /* metrics.jsonl and fedex score both print %.9g of the same double */
                CHECK(x && y && x->num == y->num, "%s: metrics.jsonl %g, fedex score %g", keys[k], x ? x->num : NAN,
                      y ? y->num : NAN);
            }
            fx_json_free(&jm);
        } else CHECK(0, "metrics.jsonl's second line is not JSON: %s", fx_err());
        fx_json_free(&j);
    } else CHECK(0, "fedex score --json printed '%s'", b);
    free(pred); free(refs); free(metrics);
    fx_e2e_rows_free(&r);
}

/* ============================================================================================
 * Text in and out: a tiny random GPT-2 with GPT-2's own tokenizer (../shared/models/gpt2)
 * ============================================================================================ */

static void text_mode(void) {
    const char *sh = shared_dir("text prompts with GPT-2's tokenizer");
    if (!sh) return;
    char vocab[512];
    snprintf(vocab, sizeof vocab, "%s/models/gpt2", sh);
    fx_tokenizer *tok = fx_tok_load(vocab);
    CHECK(tok != NULL, "%s: %s", vocab, fx_err());
    if (!tok) return;
    /* fx_gen_text: specials dropped, line breaks as spaces, the ends trimmed. */
    int32_t *ids = NULL;
    int n = 0, cap = 0;
    static const fx_text_template plain = {0, 0, 0, 0, 0};
    CHECK(fx_tok_encode_tpl(tok, &plain, " The Eagle\nis a pub.<|endoftext|>", NULL, 0, &ids, &n, &cap) == 0, "%s", fx_err());
    CHECK(n > 2 && ids[n - 1] == 50256, "<|endoftext|> is the end token");
    char *s = fx_gen_text(tok, ids, n);
    CHECK(!strcmp(s, "The Eagle is a pub."), "fx_gen_text gave '%s'", s);
    free(s);
    free(ids);
    fx_tok_free(tok);

    const char *bin = getenv("FEDEX");
    if (!bin) { printf("skipped: text through fedex generate (FEDEX is not set: run `make test`)\n"); return; }
    char dir[] = "/tmp/fedex_test_generate.XXXXXX";
    CHECK(mkdtemp(dir) != NULL, "mkdtemp");
    char cmd[4096], a[8192], b[8192], c[8192];
    snprintf(cmd, sizeof cmd, "sed 's/\"n_embd\": 768/\"n_embd\": 8/; s/\"n_layer\": 12/\"n_layer\": 1/; "
             "s/\"n_head\": 12/\"n_head\": 2/; s/\"n_positions\": 1024/\"n_positions\": 96/' %s/config.json > %s/config.json && "
             "cp %s/vocab.json %s/merges.txt %s/ && %s init --config %s/config.json --out %s/m >/dev/null 2>&1",
             vocab, dir, vocab, vocab, dir, bin, dir, dir);
    CHECK(system(cmd) == 0, "fedex init of a tiny GPT-2 failed: %s", cmd);
    const char *prompt = "name[The Eagle], food[Indian] ->";
    snprintf(cmd, sizeof cmd, "%s generate --model %s/m --max-new-tokens 12 '%s' 2>&1", bin, dir, prompt);
    int st1 = check_run(cmd, a, sizeof a);
    snprintf(cmd, sizeof cmd, "%s generate --model %s/m --max-new-tokens 12 --ids '%s' 2>&1", bin, dir, prompt);
    int st2 = check_run(cmd, b, sizeof b);
    CHECK(st1 == 0 && st2 == 0, "fedex generate: '%s' '%s'", a, b);
    /* The text is the decoded ids; the prompt's ids as --prompt-ids give the same ids. */
    tok = fx_tok_load(vocab);
    int gen[64], ng = 0;
    for (char *p = b, *e; ng < 64; p = e) {
        long v = strtol(p, &e, 10);
        if (e == p) break;
        gen[ng++] = (int)v;
    }
    s = fx_gen_text(tok, gen, ng);
    size_t la = strlen(a);
    if (la && a[la - 1] == '\n') a[la - 1] = 0;
    CHECK(ng > 0 && !strcmp(s, a), "text '%s', decoded ids '%s'", a, s);
    free(s);
    ids = NULL; n = 0; cap = 0;
    fx_tok_encode_tpl(tok, &plain, prompt, NULL, 0, &ids, &n, &cap);
    char list[1024] = "";
    for (int i = 0; i < n; i++) snprintf(list + strlen(list), sizeof list - strlen(list), "%s%d", i ? " " : "", ids[i]);
    snprintf(cmd, sizeof cmd, "%s generate --model %s/m --max-new-tokens 12 --ids --prompt-ids '%s' 2>&1", bin, dir, list);
    CHECK(check_run(cmd, c, sizeof c) == 0 && !strcmp(b, c), "--prompt-ids '%s' gave '%s', the text prompt '%s'", list, c, b);
    free(ids);
    fx_tok_free(tok);
    e2e_run(bin, sh, dir);
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    CHECK(system(cmd) == 0, "%s", cmd);
}

int main(void) {
    fixture_cases();
    errors();
    not_finite();
    e2e_defaults();
    lm_cases("gpt2", 20, 12);
    lm_cases("llama", 20, 12);
    cli_errors();
    text_mode();
    return check_done();
}
