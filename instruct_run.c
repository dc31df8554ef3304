/* instruct_run.c: the instruction tasks in a run and in `fedex eval`: their train and dev data (the model's
 * prompt format), and the test metric of the global model at the rounds due: GSM8K's exact match of greedy
 * answers, multiple choice's accuracy by log-likelihood (acc and acc_norm), in metrics.jsonl with the best
 * round. It trains nothing and aggregates nothing. */
#include "fedex.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct fx_inst_eval {
    fx_chat chat;
    fx_inst_rows dev;            /* the dev rows, kept for gsm8k and mc */
    int nrows;                   /* those generated or scored: all, or the first --eval-rows */
    int active;                  /* gsm8k or mc with --eval-every >= 0 */
    int scored;                  /* this round's scores below are fresh */
    fx_inst_scores s;
    double seconds, best;
    int best_round;              /* 0: none yet */
};

/* ============================================================================================
 * The scores of a model (a decoder) on rows
 * ============================================================================================
 * gsm8k: a greedy answer per row (up to MAX_NEW tokens, fewer where the model's positions end), its final
 * answer against the reference's, exact match of the normalised strings. mc: each choice's
 * log-likelihood given the prompt; acc picks the largest sum, acc_norm the largest sum divided by the
 * choice's length in characters (lm-eval-harness's acc_norm); ties go to the first choice, as argmax. */

int fx_mc_pick(const double *ll, const double *len, int n) {
    int best = 0;
    for (int k = 1; k < n; k++)
        if ((len ? ll[k] / len[k] : ll[k]) > (len ? ll[best] / len[best] : ll[best])) best = k;
    return best;
}

int fx_inst_evaluate(const fx_decoder *d, fx_tokenizer *tok, const fx_task *t, const fx_inst_rows *r, int n, int max_new,
                     FILE *pred, double *ll, fx_inst_scores *s) {
    memset(s, 0, sizeof *s);
    s->rows = n;
    int32_t *ids = NULL, *cont = NULL;
    int cap = 0, ccap = 0, rc = 0, hit = 0, hit_norm = 0, *out = NULL;
    size_t lk = 0;
    if (t->lm == FX_LM_GSM8K) out = fx_malloc(sizeof(int) * (size_t)(max_new > 0 ? max_new : 1));
    for (int i = 0; i < n && rc == 0; i++) {
        int np = 0;
        rc = fx_inst_prompt_ids(tok, r, i, &ids, &np, &cap);
        if (rc == 0 && t->lm == FX_LM_GSM8K) {
            fx_gen_cfg g = {.num_beams = 1, .max_new_tokens = max_new, .eos = fx_tok_eos(tok), .length_penalty = 1};
            if (np + g.max_new_tokens - 1 > d->max_len) g.max_new_tokens = d->max_len - np + 1;
            int nout = 0;
            if (g.max_new_tokens < 1) { fx_seterr("the prompt's %d tokens fill the model's %d positions", np, d->max_len); rc = -1; }
            int *prompt = rc == 0 ? fx_malloc(sizeof(int) * (size_t)np) : NULL;
            for (int k = 0; rc == 0 && k < np; k++) prompt[k] = ids[k];
            if (rc == 0) rc = fx_generate(d, &g, prompt, np, out, &nout, NULL);
            free(prompt);
            if (rc == 0) {
                char *text = fx_tok_decode(tok, out, nout, 1), a[128];
                fx_gsm8k_extract(text, 0, a, sizeof a);
                int ok = !strcmp(a, r->ref[i]);
                hit += ok;
                if (pred) {
                    char *qt = fx_json_quote(text), *qa = fx_json_quote(a), *qr = fx_json_quote(r->ref[i]);
                    fprintf(pred, "{\"line\": %d, \"generation\": %s, \"answer\": %s, \"reference\": %s, \"correct\": %s}\n",
                            r->line[i], qt, qa, qr, ok ? "true" : "false");
                    free(qt); free(qa); free(qr);
                }
                free(text);
            }
        } else if (rc == 0) { /* mc */
            int k = r->nchoice[i];
            double *v = fx_malloc(sizeof(double) * 2 * (size_t)k), *chars = v + k;
            for (int j = 0; j < k && rc == 0; j++) {
                int nc = 0;
                rc = fx_inst_text_ids(tok, r->choice[i][j], &cont, &nc, &ccap);
                if (rc == 0) rc = fx_loglik(d, ids, np, cont, nc, &v[j]);
                chars[j] = 0;
                for (const char *p = r->choice[i][j]; *p; p++) chars[j] += ((unsigned char)*p & 0xC0) != 0x80;
                if (rc == 0 && ll) ll[lk++] = v[j];
            }
            hit += rc == 0 && fx_mc_pick(v, NULL, k) == r->answer[i];
            hit_norm += rc == 0 && fx_mc_pick(v, chars, k) == r->answer[i];
            free(v);
        }
        if (rc != 0) {
            char m[512];
            snprintf(m, sizeof m, "%s", fx_err());
            fx_seterr("the dev row of line %d: %s", r->line[i], m);
        }
    }
    free(ids); free(cont); free(out);
    if (rc != 0) return -1;
    if (t->lm == FX_LM_GSM8K) s->exact_match = n ? (double)hit / n : NAN;
    else { s->acc = n ? (double)hit / n : NAN; s->acc_norm = n ? (double)hit_norm / n : NAN; }
    return 0;
}

/* ============================================================================================
 * In a run
 * ============================================================================================ */

static int load_split(fx_run *R, const char *split, fx_dataset *d, fx_inst_rows *keep) {
    const fx_settings *c = &R->cfg;
    char path[4096];
    fx_inst_rows r;
    if (fx_inst_path(c->data, split, c->train_file, path, sizeof path) != 0 ||
        fx_inst_read(path, R->task, &R->inst->chat, &r) != 0)
        return -1;
    int rc = fx_inst_dataset(&r, path, R->task, R->tok, c->max_len, d);
    if (keep && rc == 0) *keep = r;
    else fx_inst_rows_free(&r);
    return rc;
}

int fx_run_inst_load(fx_run *R) {
    R->inst = fx_calloc(1, sizeof *R->inst);
    if (fx_chat_load(R->cfg.model, R->cfg.chat_template, &R->inst->chat) != 0) return -1;
    printf("%s prompts: %s\n", R->task->name, R->inst->chat.tpl ? "the model's chat template" : "the plain (Alpaca) format");
    return load_split(R, "train", &R->train, NULL) != 0 || load_split(R, "dev", &R->dev, &R->inst->dev) != 0 ? -1 : 0;
}

static const char *metric_key(const fx_task *t) { return t->lm == FX_LM_GSM8K ? "exact_match" : "acc"; }

int fx_run_inst_open(fx_run *R) {
    struct fx_inst_eval *e = R->inst;
    if (!e) return 0;
    const fx_settings *c = &R->cfg;
    if ((R->task->lm != FX_LM_GSM8K && R->task->lm != FX_LM_MC) || c->eval_every < 0) return 0;
    e->active = 1;
    e->nrows = c->eval_rows > 0 && c->eval_rows < e->dev.n ? c->eval_rows : e->dev.n;
    /* a resumed run keeps the best of the rounds it has */
    for (int i = 0; i < R->nlines; i++) {
        fx_json j;
        if (fx_json_parse(R->lines[i], strlen(R->lines[i]), &j) != 0) continue;
        const fx_json *r = fx_json_get(&j, "round"), *t = fx_json_get(&j, R->task->name);
        const fx_json *v = t ? fx_json_get(t, metric_key(R->task)) : NULL;
        if (r && r->type == FX_JNUM && v && v->type == FX_JNUM && (e->best_round == 0 || v->num > e->best)) {
            e->best = v->num;
            e->best_round = (int)r->inum;
        }
        fx_json_free(&j);
    }
    printf("%s: %d dev rows %s %s\n", R->task->name, e->nrows,
           R->task->lm == FX_LM_GSM8K ? "answered greedily (exact match)" : "scored by log-likelihood (acc, acc_norm)",
           c->eval_every > 0 ? "every few rounds and the last" : "at the last round");
    return 0;
}

int fx_run_inst_round(fx_run *R, int round) {
    struct fx_inst_eval *e = R->inst;
    if (!e || !e->active) return 0;
    e->scored = 0;
    const fx_settings *c = &R->cfg;
    if (round != c->rounds && !(c->eval_every > 0 && round % c->eval_every == 0)) return 0;
    double t0 = fx_now();
    fx_decoder d;
    if (fx_model_decoder(&R->srv, 1, &d) != 0) return -1;
    char *buf = NULL;
    size_t len = 0;
    FILE *pred = R->task->lm == FX_LM_GSM8K && c->out ? open_memstream(&buf, &len) : NULL;
    int rc = fx_inst_evaluate(&d, R->tok, R->task, &e->dev, e->nrows, c->max_new_tokens, pred, NULL, &e->s);
    fx_decoder_free(&d);
    if (pred) {
        char path[4096];
        snprintf(path, sizeof path, "%s/gsm8k_predictions_round%d.jsonl", c->out, round);
        if (rc == 0) rc = fx_write_memstream_atomic(pred, &buf, &len, path);
        else { fclose(pred); free(buf); }
    }
    if (rc != 0) return -1;
    e->seconds = fx_now() - t0;
    e->scored = 1;
    double v = R->task->lm == FX_LM_GSM8K ? e->s.exact_match : e->s.acc;
    if (e->best_round == 0 || v > e->best) { e->best = v; e->best_round = round; }
    if (R->task->lm == FX_LM_GSM8K)
        printf("round %3d  gsm8k exact match %.4f on %d rows  (best %.4f @ %d)  %.1f s\n", round, v, e->nrows, e->best,
               e->best_round, e->seconds);
    else
        printf("round %3d  mc acc %.4f  acc_norm %.4f on %d rows  (best acc %.4f @ %d)  %.1f s\n", round, v, e->s.acc_norm,
               e->nrows, e->best, e->best_round, e->seconds);
    fflush(stdout);
    return 0;
}

void fx_run_inst_json(const fx_run *R, FILE *f) {
    const struct fx_inst_eval *e = R->inst;
    if (!e || !e->active) return;
    const char *k = metric_key(R->task);
    if (e->scored) {
        fprintf(f, ", \"%s\": {\"%s\": ", R->task->name, k);
        fx_json_num(f, R->task->lm == FX_LM_GSM8K ? e->s.exact_match : e->s.acc);
        if (R->task->lm == FX_LM_MC) { fprintf(f, ", \"acc_norm\": "); fx_json_num(f, e->s.acc_norm); }
        fprintf(f, ", \"rows\": %d, \"seconds\": %.3f}", e->nrows, e->seconds);
    }
    if (e->best_round) {
        fprintf(f, ", \"best_%s\": ", k);
        fx_json_num(f, e->best);
        fprintf(f, ", \"best_%s_round\": %d", k, e->best_round);
    }
}

void fx_run_inst_close(fx_run *R) {
    if (!R->inst) return;
    fx_chat_free(&R->inst->chat);
    fx_inst_rows_free(&R->inst->dev);
    free(R->inst);
    R->inst = NULL;
}
