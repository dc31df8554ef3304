/* e2e_run.c: the server's test generation in an E2E run: the test MRs, one beam search per MR with the
 * global model at the rounds due, the outputs e2e-metrics reads, their scores (score.c) and the best round
 * by BLEU for metrics.jsonl. It trains nothing and aggregates nothing; the search is generate.c's, the
 * decoder the model's. */
#include "fedex.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct fx_e2e_test {
    fx_e2e_rows rows;
    int ngroups;                 /* the MRs generated: all, or the first --test-mrs */
    fx_gen_cfg gen;
    int scored;                  /* this round's scores below are fresh */
    double bleu, nist, rouge_l, cider, seconds;
    double best_bleu;
    int best_round;              /* 0: none yet */
};

/* The best BLEU of the metrics lines a resumed run keeps. */
static void resume_best(fx_run *R, struct fx_e2e_test *t) {
    for (int i = 0; i < R->nlines; i++) {
        fx_json j;
        if (fx_json_parse(R->lines[i], strlen(R->lines[i]), &j) != 0) continue;
        const fx_json *r = fx_json_get(&j, "round"), *test = fx_json_get(&j, "test");
        const fx_json *b = test ? fx_json_get(test, "BLEU") : NULL;
        if (r && r->type == FX_JNUM && b && b->type == FX_JNUM && (t->best_round == 0 || b->num > t->best_bleu)) {
            t->best_bleu = b->num;
            t->best_round = (int)r->inum;
        }
        fx_json_free(&j);
    }
}

int fx_run_e2e_open(fx_run *R) {
    const fx_settings *c = &R->cfg;
    R->e2e = NULL;
    if (R->task->lm != FX_LM_E2E || c->eval_every < 0) return 0;
    struct fx_e2e_test *t = fx_calloc(1, sizeof *t);
    char path[4096];
    if (c->test_file) snprintf(path, sizeof path, "%s", c->test_file);
    else if (fx_e2e_path(c->data, "test", NULL, path, sizeof path) != 0) { free(t); return -1; }
    /* The default (the last round only) asks for no test file: without one the run trains and says so. */
    if (!c->test_file && c->eval_every == 0 && access(path, F_OK) != 0) {
        printf("no test generation: %s is absent (--test-file F names one)\n", path);
        free(t);
        return 0;
    }
    if (fx_e2e_read(path, &t->rows) != 0) { free(t); return -1; }
    t->ngroups = c->test_mrs > 0 && c->test_mrs < t->rows.ngroups ? c->test_mrs : t->rows.ngroups;
    if (t->ngroups == 0) {
        fx_seterr("%s holds no MR to generate for", path);
        fx_e2e_rows_free(&t->rows);
        free(t);
        return -1;
    }
    /* The settings were checked (fx_settings_check); the end token is the tokenizer's. */
    fx_gen_cfg *g = &t->gen;
    fx_gen_e2e(g, fx_tok_eos(R->tok));
    g->num_beams = c->num_beams;
    g->max_new_tokens = c->max_new_tokens;
    g->length_penalty = c->length_penalty;
    g->no_repeat_ngram = c->no_repeat_ngram;
    if (fx_gen_stop_parse(c->early_stopping, &g->early_stopping) != 0 ||
        fx_gen_scope_parse(c->no_repeat_scope, &g->no_repeat_generated) != 0 ||
        fx_gen_check(g, R->mc.vocab_size) != 0) {
        fx_e2e_rows_free(&t->rows);
        free(t);
        return -1;
    }
    resume_best(R, t);
    R->e2e = t;
    printf("test generation: %d MRs of %s, beam %d, length penalty %g, no-repeat %d (%s), up to %d new tokens, %s\n",
           t->ngroups, path, g->num_beams, g->length_penalty, g->no_repeat_ngram, c->no_repeat_scope,
           g->max_new_tokens, c->eval_every > 0 ? "every few rounds and the last" : "at the last round");
    return 0;
}

int fx_run_e2e_round(fx_run *R, int round) {
    struct fx_e2e_test *t = R->e2e;
    if (!t) return 0;
    t->scored = 0;
    const fx_settings *c = &R->cfg;
    if (round != c->rounds && !(c->eval_every > 0 && round % c->eval_every == 0)) return 0;
    double t0 = fx_now();
    /* The server's model holds the global state and the frozen weights (evaluate() put them there). */
    fx_decoder d;
    if (fx_model_decoder(&R->srv, t->gen.num_beams, &d) != 0) return -1;
    char **pred = fx_malloc((size_t)t->ngroups * sizeof *pred);
    int rc = fx_e2e_generate(&d, R->tok, &t->gen, &t->rows, t->ngroups, pred);
    fx_decoder_free(&d);
    if (rc != 0) { free(pred); return -1; }
    fx_e2e_scores s;
    rc = fx_e2e_score_rows(&t->rows, t->ngroups, pred, &s);
    if (rc == 0 && c->out) {
        char pp[4096], rp[4096];
        snprintf(pp, sizeof pp, "%s/e2e_predictions_round%d.txt", c->out, round);
        snprintf(rp, sizeof rp, "%s/e2e_references.txt", c->out);
        rc = fx_e2e_write_outputs(pp, rp, &t->rows, t->ngroups, pred);
    }
    for (int k = 0; k < t->ngroups; k++) free(pred[k]);
    free(pred);
    if (rc != 0) return -1;
    t->bleu = s.bleu; t->nist = s.nist; t->rouge_l = s.rouge_l; t->cider = s.cider;
    t->seconds = fx_now() - t0;
    t->scored = 1;
    if (t->best_round == 0 || s.bleu > t->best_bleu) { t->best_bleu = s.bleu; t->best_round = round; }
    printf("round %3d  test BLEU %.4f  NIST %.4f  ROUGE-L %.4f  CIDEr %.4f  (best BLEU %.4f @ %d)  %.1f s\n", round,
           s.bleu, s.nist, s.rouge_l, s.cider, t->best_bleu, t->best_round, t->seconds);
    fflush(stdout);
    return 0;
}

void fx_run_e2e_json(const fx_run *R, FILE *f) {
    const struct fx_e2e_test *t = R->e2e;
    if (!t) return;
    if (t->scored) {
        fprintf(f, ", \"test\": {\"BLEU\": ");
        fx_json_num(f, t->bleu);
        fprintf(f, ", \"NIST\": ");
        fx_json_num(f, t->nist);
        fprintf(f, ", \"ROUGE_L\": ");
        fx_json_num(f, t->rouge_l);
        fprintf(f, ", \"CIDEr\": ");
        fx_json_num(f, t->cider);
        fprintf(f, ", \"mrs\": %d, \"seconds\": %.3f}", t->ngroups, t->seconds);
    }
    if (t->best_round) {
        fprintf(f, ", \"best_bleu\": ");
        fx_json_num(f, t->best_bleu);
        fprintf(f, ", \"best_bleu_round\": %d", t->best_round);
    }
}

void fx_run_e2e_close(fx_run *R) {
    if (!R->e2e) return;
    fx_e2e_rows_free(&R->e2e->rows);
    free(R->e2e);
    R->e2e = NULL;
}
