/* generate.c: decoding apart from the model: greedy and beam search over an fx_decoder (a KV cache of
 * slots that the decoder owns), with the semantics of Hugging Face's generate() (BeamSearchScorer, the
 * length penalty on the generated length since 4.35, no-repeat n-grams). It never sees a weight and
 * never tokenises; the model's decoder lives in its family file. */
#include "fedex.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ============================================================================================
 * Settings
 * ============================================================================================ */

/* The LoRA paper's E2E decoding (its gpt2_beam.py run): beam 10, length penalty 0.8, no 4-gram twice among
 * the generated tokens, 64 new tokens. HF's own early-stopping default (False, the heuristic). */
void fx_gen_e2e(fx_gen_cfg *g, int eos) {
    memset(g, 0, sizeof *g);
    g->num_beams = 10;
    g->max_new_tokens = 64;
    g->eos = eos;
    g->length_penalty = 0.8;
    g->early_stopping = FX_STOP_HEURISTIC;
    g->no_repeat_ngram = 4;
    g->no_repeat_generated = 1;
}

int fx_gen_check(const fx_gen_cfg *g, int vocab) {
    if (g->num_beams < 1 || g->num_beams > 1024) { fx_seterr("--num-beams must be between 1 and 1024"); return -1; }
    if (g->max_new_tokens < 1) { fx_seterr("--max-new-tokens must be at least 1"); return -1; }
    if (g->eos < -1 || g->eos >= vocab) {
        fx_seterr("end token %d is outside the vocabulary of %d (-1: none)", g->eos, vocab);
        return -1;
    }
    if (!isfinite(g->length_penalty)) { fx_seterr("--length-penalty must be a finite number"); return -1; }
    if (g->no_repeat_ngram < 0) { fx_seterr("--no-repeat-ngram-size must be 0 (off) or more"); return -1; }
    /* HF keeps 2 x beams candidates per step, of which at most one per beam is the end token. */
    if (vocab < 2) { fx_seterr("a vocabulary of %d cannot be searched", vocab); return -1; }
    return 0;
}

/* ============================================================================================
 * Scores of one step
 * ============================================================================================
 * log p(v) = x_v - m - log sum_u exp(x_u - m), m = max_u x_u, in float64 from the float32 logits. The
 * float64 sum makes the result independent of the order of summation to far below any gap between two
 * real candidates, so the same logits give the same search on every machine. */
static int log_softmax(const float *x, int V, double *lp) {
    double m = -INFINITY;
    for (int v = 0; v < V; v++) {
        if (isnan(x[v])) return -1;
        if (x[v] > m) m = x[v];
    }
    if (!isfinite(m)) return -1; /* +inf, or every logit -inf */
    double s = 0;
    for (int v = 0; v < V; v++) s += exp((double)x[v] - m);
    double ls = log(s);
    for (int v = 0; v < V; v++) lp[v] = (double)x[v] - m - ls;
    return 0;
}

/* No-repeat n-grams (HF's NoRepeatNGramLogitsProcessor): with ROW[0..len) so far, a token t is banned when
 * the n-gram (row[len-n+1..len), t) already occurs in ROW. Nothing is banned while len + 1 < n; n = 1
 * bans every token of ROW. SCORES[t] becomes -inf for each banned t. HF applies it to the whole row
 * (prompt included); the caller passes the generated tokens alone for the LoRA paper's rule. */
static void ban_ngrams(const int *row, int len, int n, double *scores) {
    if (n <= 0 || len + 1 < n) return;
    const int *prefix = row + len - (n - 1);
    for (int i = 0; i + n <= len; i++)
        if (!memcmp(row + i, prefix, (size_t)(n - 1) * sizeof *row)) scores[row[i + n - 1]] = -INFINITY;
}

/* ============================================================================================
 * Greedy search
 * ============================================================================================
 * HF's greedy search: the processed logits' argmax (the first index on ties, as torch.argmax), until
 * the end token (kept) or max_new_tokens. The n-gram rule is applied to the raw logits, which orders
 * tokens as the log-probabilities do. */
static int greedy(const fx_decoder *d, const fx_gen_cfg *g, const int *prompt, int n, int *out, int *nout,
                  double *score) {
    int V = d->vocab, L = n + g->max_new_tokens, rc = -1, len = n;
    float *logits = fx_malloc((size_t)V * sizeof *logits);
    double *x = fx_malloc((size_t)V * sizeof *x), *lp = fx_malloc((size_t)V * sizeof *lp), sum = 0;
    int *row = fx_malloc((size_t)L * sizeof *row);
    memcpy(row, prompt, (size_t)n * sizeof *row);
    *nout = 0;
    if (d->prefill(d->ctx, prompt, n, logits) != 0) goto done;
    for (;;) {
        for (int v = 0; v < V; v++) x[v] = logits[v];
        if (log_softmax(logits, V, lp) != 0) {
            fx_seterr("generate: the model's logits after %d tokens are not finite", len);
            goto done;
        }
        if (g->no_repeat_generated) ban_ngrams(row + n, len - n, g->no_repeat_ngram, x);
        else ban_ngrams(row, len, g->no_repeat_ngram, x);
        int t = 0;
        for (int v = 1; v < V; v++)
            if (x[v] > x[t]) t = v;
        row[len++] = t;
        sum += lp[t];
        if (t == g->eos || len - n == g->max_new_tokens) break;
        if (d->step(d->ctx, 1, &t, len - 1, logits) != 0) goto done;
    }
    *nout = len - n;
    memcpy(out, row + n, (size_t)*nout * sizeof *out);
    if (score) *score = sum;
    rc = 0;
done:
    free(logits); free(x); free(lp); free(row);
    return rc;
}

/* ============================================================================================
 * Beam search
 * ============================================================================================
 * HF's BeamSearchScorer for one prompt with B beams. Every step:
 *   s_b(t) = S_b + log p(t | row_b)          (S_b: the beam's sum of log-probabilities; -inf if banned)
 * over all (b, t), the 2B best candidates in order (ties: lower b*V + t first). Walking them in order,
 * an end token among the first B ranks finishes its beam as a hypothesis of score
 *   h = s_b(eos) / G^lp,   G = the generated length, the end token counted,
 * kept when fewer than B are kept or h beats the worst kept one (which is then dropped); an end token
 * below rank B is skipped; any other candidate becomes the next running beam, until B are running.
 * The prompt is done when B hypotheses are kept and
 *   early_stopping True:    at once;
 *   False (the heuristic):  worst kept h >= s_best / G^lp, s_best the step's best candidate;
 *   "never":                the same with G replaced by max_new_tokens when lp > 0 (the longest a
 *                           running beam may still grow: its best attainable score when sums are < 0).
 * At max_new_tokens, still running beams join the hypotheses with h = S_b / G^lp. The result is the
 * kept hypothesis of highest h, the latest kept of equals, with its end token when it has one.
 * At the first step every beam is the prompt; beams 1..B-1 start at S = -1e9, so the 2B candidates
 * come from beam 0 whenever the vocabulary allows it (HF's own start). */

typedef struct { double s; long idx; } cand; /* idx = b * V + t */

static int cand_better(const cand *a, const cand *b) { return a->s > b->s || (a->s == b->s && a->idx < b->idx); }

/* Offers C to the K best so far, TOP[0..*n) kept best first. */
static void cand_offer(cand *top, int *n, int K, cand c) {
    if (*n == K && !cand_better(&c, &top[K - 1])) return;
    int i = *n < K ? (*n)++ : K - 1;
    while (i > 0 && cand_better(&c, &top[i - 1])) { top[i] = top[i - 1]; i--; }
    top[i] = c;
}

typedef struct { double h; int *tok; int ntok, eos; } hyp; /* tok: the generated ids, the end token not stored */
typedef struct { hyp *h; int n, cap; double worst; } hyps;

/* HF's BeamHypotheses.add: the kept list in the order added; when it grows past B the lowest (the first
 * added of equals) goes, and the worst is the lowest of the rest. */
static void hyps_add(hyps *H, int B, const int *tok, int ntok, int eos, double sum, double lp) {
    double h = sum / pow((double)(ntok + eos), lp); /* G = ntok + 1 with the end token */
    if (H->n >= B && !(h > H->worst)) return;
    hyp *e = &H->h[H->n++];
    e->h = h; e->ntok = ntok; e->eos = eos;
    memcpy(e->tok, tok, (size_t)ntok * sizeof *tok);
    if (H->n <= B) { if (h < H->worst) H->worst = h; return; }
    int lo = 0;
    for (int i = 1; i < H->n; i++)
        if (H->h[i].h < H->h[lo].h) lo = i;
    int *spare = H->h[lo].tok;
    memmove(&H->h[lo], &H->h[lo + 1], (size_t)(H->n - lo - 1) * sizeof *H->h);
    H->n--;
    H->h[H->n].tok = spare; /* the dropped entry's buffer serves the next addition */
    H->worst = H->h[0].h;
    for (int i = 1; i < H->n; i++)
        if (H->h[i].h < H->worst) H->worst = H->h[i].h;
}

static int hyps_done(const hyps *H, const fx_gen_cfg *g, double best, int G) {
    if (H->n < g->num_beams) return 0;
    if (g->early_stopping == FX_STOP_EARLY) return 1;
    double len = g->early_stopping == FX_STOP_NEVER && g->length_penalty > 0 ? g->max_new_tokens : G;
    return H->worst >= best / pow(len, g->length_penalty);
}

static int beam(const fx_decoder *d, const fx_gen_cfg *g, const int *prompt, int n, int *out, int *nout,
                double *score) {
    const int B = g->num_beams, V = d->vocab, K = 2 * B, M = g->max_new_tokens, W = n + M;
    int rc = -1;
    float *logits = fx_malloc((size_t)B * V * sizeof *logits);
    double *lp = fx_malloc((size_t)V * sizeof *lp), *S = fx_malloc((size_t)B * sizeof *S);
    double *S2 = fx_malloc((size_t)B * sizeof *S2);
    int *rows = fx_malloc((size_t)B * W * sizeof *rows), *rows2 = fx_malloc((size_t)B * W * sizeof *rows2);
    int *src = fx_malloc((size_t)B * sizeof *src), *tok = fx_malloc((size_t)B * sizeof *tok);
    cand *top = fx_malloc((size_t)K * sizeof *top);
    hyps H = {fx_malloc((size_t)(B + 1) * sizeof(hyp)), 0, B + 1, 1e9};
    for (int i = 0; i <= B; i++) H.h[i].tok = fx_malloc((size_t)M * sizeof(int));
    for (int b = 0; b < B; b++) { memcpy(rows + (size_t)b * W, prompt, (size_t)n * sizeof *rows); S[b] = b ? -1e9 : 0; }
    *nout = 0;

    int G = 0, done = 0; /* G: tokens generated by every running beam */
    if (d->prefill(d->ctx, prompt, n, logits) != 0) goto out;
    for (;;) {
        int ntop = 0;
        for (int b = 0; b < B; b++) {
            const int *row = rows + (size_t)b * W;
            /* At the first step every beam holds the prompt's logits, computed once. */
            if (log_softmax(logits + (size_t)(G ? b : 0) * V, V, lp) != 0) {
                fx_seterr("generate: the model's logits after %d tokens are not finite", n + G);
                goto out;
            }
            if (g->no_repeat_generated) ban_ngrams(row + n, G, g->no_repeat_ngram, lp);
            else ban_ngrams(row, n + G, g->no_repeat_ngram, lp);
            for (int t = 0; t < V; t++) cand_offer(top, &ntop, K, (cand){S[b] + lp[t], (long)b * V + t});
        }
        int nrun = 0;
        for (int r = 0; r < ntop && nrun < B; r++) {
            int b = (int)(top[r].idx / V), t = (int)(top[r].idx % V);
            if (t == g->eos) {
                if (r < B) hyps_add(&H, B, rows + (size_t)b * W + n, G, 1, top[r].s, g->length_penalty);
                continue;
            }
            int *dst = rows2 + (size_t)nrun * W;
            memcpy(dst, rows + (size_t)b * W, (size_t)(n + G) * sizeof *dst);
            dst[n + G] = t;
            S2[nrun] = top[r].s;
            src[nrun] = G ? b : 0;
            tok[nrun++] = t;
        }
        if (nrun < B) { fx_seterr("generate: fewer than %d candidates to continue with", B); goto out; }
        done = hyps_done(&H, g, top[0].s, G + 1);
        { int *tr = rows; rows = rows2; rows2 = tr; double *ts = S; S = S2; S2 = ts; }
        G++;
        if (done || G == M) break;
        /* Beam j continues beam src[j]: its cache holds the positions < n + G - 1 (the new token's
         * position is n + G - 1, run next). */
        int same = 1;
        for (int b = 0; b < B; b++) same &= src[b] == b;
        if (!same && d->reorder(d->ctx, B, src, n + G - 1) != 0) goto out;
        if (d->step(d->ctx, B, tok, n + G - 1, logits) != 0) goto out;
    }
    if (!done)
        for (int b = 0; b < B; b++) hyps_add(&H, B, rows + (size_t)b * W + n, G, 0, S[b], g->length_penalty);
    int best = 0;
    for (int i = 1; i < H.n; i++)
        if (H.h[i].h >= H.h[best].h) best = i;
    const hyp *e = &H.h[best];
    /* A finished hypothesis is stored without its end token; HF appends it to the result. */
    int len = e->ntok;
    memcpy(out, e->tok, (size_t)len * sizeof *out);
    if (e->eos) out[len++] = g->eos;
    *nout = len;
    if (score) *score = e->h;
    rc = 0;
out:
    for (int i = 0; i <= B; i++) free(H.h[i].tok);
    free(H.h); free(logits); free(lp); free(S); free(S2); free(rows); free(rows2); free(src); free(tok); free(top);
    return rc;
}

/* ============================================================================================
 * The entry point
 * ============================================================================================ */

int fx_generate(const fx_decoder *d, const fx_gen_cfg *g, const int *prompt, int n, int *out, int *nout,
                double *score) {
    *nout = 0;
    if (fx_gen_check(g, d->vocab) != 0) return -1;
    if (n < 1) { fx_seterr("generate: the prompt is empty"); return -1; }
    for (int i = 0; i < n; i++)
        if (prompt[i] < 0 || prompt[i] >= d->vocab) {
            fx_seterr("generate: prompt token %d is %d, outside the vocabulary of %d", i + 1, prompt[i], d->vocab);
            return -1;
        }
    if ((long)n + g->max_new_tokens - 1 > d->max_len) {
        fx_seterr("generate: a prompt of %d tokens and %d new ones need %ld positions; the model holds %d",
                  n, g->max_new_tokens, (long)n + g->max_new_tokens - 1, d->max_len);
        return -1;
    }
    return g->num_beams == 1 ? greedy(d, g, prompt, n, out, nout, score) : beam(d, g, prompt, n, out, nout, score);
}

/* ============================================================================================
 * Settings as the command line spells them, and text out
 * ============================================================================================ */

int fx_gen_stop_parse(const char *s, fx_early_stop *out) {
    if (!strcmp(s, "false")) *out = FX_STOP_HEURISTIC;
    else if (!strcmp(s, "true")) *out = FX_STOP_EARLY;
    else if (!strcmp(s, "never")) *out = FX_STOP_NEVER;
    else { fx_seterr("--early-stopping must be false, true or never, not '%s'", s); return -1; }
    return 0;
}

int fx_gen_scope_parse(const char *s, int *generated_only) {
    if (!strcmp(s, "generated")) *generated_only = 1;
    else if (!strcmp(s, "row")) *generated_only = 0;
    else { fx_seterr("--no-repeat-scope must be generated or row, not '%s'", s); return -1; }
    return 0;
}

char *fx_gen_text(const fx_tokenizer *tok, const int *ids, int n) {
    char *s = fx_tok_decode(tok, ids, n, 1);
    for (char *p = s; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
    size_t a = 0, b = strlen(s);
    while (a < b && (s[a] == ' ' || s[a] == '\t')) a++;
    while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t')) b--;
    memmove(s, s + a, b - a);
    s[b - a] = 0;
    return s;
}

/* ============================================================================================
 * A continuation's log-likelihood (multiple choice)
 * ============================================================================================
 * log p(cont | ctx) = sum_j log_softmax(logits after ctx and cont[0..j))[cont[j]], each in float64 as the
 * search scores its steps. Slot 0 of D is used. */

int fx_loglik(const fx_decoder *d, const int32_t *ctx, int nctx, const int32_t *cont, int ncont, double *ll) {
    if (nctx < 1 || ncont < 1 || nctx + ncont - 1 > d->max_len) {
        fx_seterr("a context of %d and a continuation of %d tokens do not fit the model's %d positions", nctx, ncont,
                  d->max_len);
        return -1;
    }
    for (int j = 0; j < ncont; j++)
        if (cont[j] < 0 || cont[j] >= d->vocab) { fx_seterr("token %d outside the vocabulary of %d", cont[j], d->vocab); return -1; }
    float *logits = fx_malloc(sizeof(float) * (size_t)d->vocab);
    double *lp = fx_malloc(sizeof(double) * (size_t)d->vocab), sum = 0;
    int *ids = fx_malloc(sizeof(int) * (size_t)nctx);
    for (int k = 0; k < nctx; k++) ids[k] = ctx[k];
    int rc = d->prefill(d->ctx, ids, nctx, logits);
    for (int j = 0; j < ncont && rc == 0; j++) {
        if (log_softmax(logits, d->vocab, lp) != 0) { fx_seterr("the model's logits are not finite"); rc = -1; break; }
        sum += lp[cont[j]];
        int tok = cont[j];
        if (j + 1 < ncont) rc = d->step(d->ctx, 1, &tok, nctx + j, logits);
    }
    free(logits); free(lp); free(ids);
    if (rc == 0) *ll = sum;
    return rc;
}

/* ============================================================================================
 * E2E NLG: one generation per unique MR, the files e2e-metrics reads, their scores
 * ============================================================================================ */

int fx_e2e_generate(const fx_decoder *d, fx_tokenizer *tok, const fx_gen_cfg *g, const fx_e2e_rows *r, int ngroups,
                    char **pred) {
    static const fx_text_template plain = {0, 0, 0, 0, 0};
    int32_t *ids = NULL;
    int cap = 0, rc = 0, *out = fx_malloc((size_t)g->max_new_tokens * sizeof *out);
    for (int k = 0; k < ngroups; k++) pred[k] = NULL;
    for (int k = 0; k < ngroups && rc == 0; k++) {
        const char *mr = r->mr[r->group[k]];
        char *prompt = fx_e2e_prompt(mr);
        int n = 0, nout;
        rc = fx_tok_encode_tpl(tok, &plain, prompt, NULL, 0, &ids, &n, &cap);
        if (rc == 0) rc = fx_generate(d, g, ids, n, out, &nout, NULL);
        if (rc == 0) pred[k] = fx_gen_text(tok, out, nout);
        else {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", fx_err());
            fx_seterr("the MR of line %d: %s", r->line[r->group[k]], msg);
        }
        free(prompt);
    }
    if (rc != 0)
        for (int k = 0; k < ngroups; k++) { free(pred[k]); pred[k] = NULL; }
    free(ids);
    free(out);
    return rc;
}

/* One line of the output: TEXT with line breaks as spaces, so that a line is one item. */
static void put_line(FILE *f, const char *text) {
    for (const char *p = text; *p; p++) fputc(*p == '\n' || *p == '\r' ? ' ' : *p, f);
    fputc('\n', f);
}

int fx_e2e_write_outputs(const char *pred_path, const char *refs_path, const fx_e2e_rows *r, int ngroups,
                         char *const *pred) {
    char *buf = NULL;
    size_t len = 0;
    FILE *f;
    if (pred_path) {
        if (!(f = open_memstream(&buf, &len))) { fx_seterr("open_memstream failed"); return -1; }
        for (int k = 0; k < ngroups; k++) put_line(f, pred[k]);
        if (fx_write_memstream_atomic(f, &buf, &len, pred_path) != 0) return -1;
    }
    if (refs_path) {
        if (!(f = open_memstream(&buf, &len))) { fx_seterr("open_memstream failed"); return -1; }
        for (int k = 0; k < ngroups; k++) {
            if (k) fputc('\n', f);
            for (int i = r->group[k]; i < r->group[k + 1]; i++) put_line(f, r->ref[i]);
        }
        if (fx_write_memstream_atomic(f, &buf, &len, refs_path) != 0) return -1;
    }
    return 0;
}

int fx_e2e_score_rows(const fx_e2e_rows *r, int ngroups, char *const *pred, fx_e2e_scores *s) {
    char **refs[1];
    char ***rp = ngroups ? fx_malloc((size_t)ngroups * sizeof *rp) : refs;
    int *nref = fx_malloc((size_t)(ngroups ? ngroups : 1) * sizeof *nref);
    for (int k = 0; k < ngroups; k++) { rp[k] = r->ref + r->group[k]; nref[k] = r->group[k + 1] - r->group[k]; }
    int rc = fx_e2e_score(ngroups, pred, (char *const *const *)rp, nref, 0, s);
    if (ngroups) free(rp);
    free(nref);
    return rc;
}
