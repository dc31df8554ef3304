/* run.c: the server of a federated run: sets the run up (data, shards, model, resume), sends each round
 * over a transport, aggregates (agg.c), evaluates the global model, and writes metrics, adapters, the
 * residual and the checkpoint. It holds no process or pipe (that is the transport's) and trains nothing
 * itself (that is client.c's). */
#include "fedex.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static volatile sig_atomic_t interrupted;
static void on_signal(int sig) { interrupted = sig; }
int fx_run_interrupted(void) { return interrupted != 0; }
void fx_run_interrupt(int sig) { interrupted = sig; }

int fx_run_live(void) {
    const char *term = getenv("TERM");
    return isatty(2) && !(term && !strcmp(term, "dumb"));
}

/* ============================================================================================
 * Evaluating a split (fedex eval, and the server after each round)
 * ============================================================================================ */

float fx_eval_step_cpu(void *m, const fx_batch *b, float *logits) { return fx_model_step(m, b, 0, logits); }

static const fx_dataset *len_sort_data;
static int by_length(const void *a, const void *b) {
    int i = *(const int *)a, j = *(const int *)b;
    size_t li = len_sort_data->off[i + 1] - len_sort_data->off[i], lj = len_sort_data->off[j + 1] - len_sort_data->off[j];
    return li != lj ? (li < lj ? -1 : 1) : (i > j) - (i < j);
}

/* Tokens a batch's loss is the mean over: the per-token targets the model scores (position j's logits
 * against targets[j + 1], so a row's first target never counts). */
static int64_t scored_tokens(const fx_batch *b) {
    int64_t k = 0;
    for (int i = 0; i < b->n; i++)
        for (int j = 1; j < b->T; j++) k += b->targets[(size_t)i * b->T + j] != FX_IGNORE;
    return k;
}

double fx_eval_split(const fx_dataset *d, int bs, int pad, int L, fx_eval_step step, void *backend, float *logits) {
    int n = d->n;
    int *order = fx_malloc(sizeof(int) * (size_t)(n ? n : 1));
    float *out = L ? fx_malloc(sizeof(float) * (size_t)bs * (size_t)L) : NULL;
    for (int i = 0; i < n; i++) order[i] = i;
    len_sort_data = d;
    qsort(order, (size_t)n, sizeof *order, by_length);
    fx_batch b = {0};
    /* The split's loss: the mean over rows of GLUE's row losses; with per-token targets, the mean over
     * every scored token of the split (each batch's mean weighted by its scored tokens). */
    double loss = 0, weight = 0;
    for (int i = 0; i < n && !isnan(loss); i += bs) {
        int nb = n - i < bs ? n - i : bs;
        fx_batch_fill(d, order + i, nb, pad, &b);
        float l = step(backend, &b, out);
        if (isnan(l)) { fx_seterr("rows %d to %d (by length): %s", i, i + nb - 1, fx_err()); loss = NAN; }
        double w = b.targets ? (double)scored_tokens(&b) : nb;
        if (w > 0) loss += (double)l * w;
        weight += w;
        for (int j = 0; L && j < nb; j++) memcpy(logits + (size_t)order[i + j] * L, out + (size_t)j * L, sizeof(float) * L);
    }
    fx_batch_free(&b);
    free(out);
    free(order);
    return weight > 0 ? loss / weight : NAN;
}

#ifdef FEDEX_CUDA
static float gpu_eval_step(void *g, const fx_batch *b, float *logits) { return fx_gpu_step(g, b, 0, logits); }
#endif

/* The global model (the server's model with the global state) on the dev split, on the CPU or, with
 * --server-gpu, on a device copy that receives the frozen weights as the GPU clients do. */
static double evaluate(fx_run *R, fx_metrics *mt) {
    fx_model *m = &R->srv;
    memcpy(m->train.data, R->global, sizeof(float) * R->P);
    fx_eval_step step = fx_eval_step_cpu;
    void *backend = m;
#ifdef FEDEX_CUDA
    if (R->srv_gpu) {
        for (int k = 0; fx_agg_is_exact(R->cfg.agg) && k < m->nadapted; k++)
            fx_gpu_set_frozen(R->srv_gpu, k, m->base.data + m->ad[k].w_off);
        fx_gpu_set_train(R->srv_gpu, R->global);
        step = gpu_eval_step;
        backend = R->srv_gpu;
    }
#endif
    if (R->task->lm) { /* a language model: its dev loss is the round's figure (lower is better) */
        double loss = fx_eval_split(&R->dev, R->cfg.eval_batch, R->pad_id, 0, step, backend, NULL);
        *mt = (fx_metrics){NAN, NAN, NAN, NAN, NAN, loss, "dev_loss"};
        return loss;
    }
    int L = R->mc.num_labels;
    float *logits = fx_malloc(sizeof(float) * (size_t)(R->dev.n ? R->dev.n : 1) * L);
    double loss = fx_eval_split(&R->dev, R->cfg.eval_batch, R->pad_id, L, step, backend, logits);
    fx_task_metrics(R->task, logits, R->dev.labels, R->dev.n, mt);
    free(logits);
    return loss;
}

/* ============================================================================================
 * Aggregation: FedIT mean, then (FedEx) the residual, then the aggregation error of every layer
 * ============================================================================================ */

static void aggregate(fx_run *R, const int *done, double *err, double *dev, double *agg_seconds) {
    double t0 = fx_now();
    fx_model *m = &R->srv;
    const float *cl[256];
    double w[256], wsum = 0;
    int n = 0;
    for (int c = 0; c < R->n; c++)
        if (done[c]) { cl[n] = R->client[c]; w[n] = R->cfg.weighted ? (double)R->report[c].samples : 1.0; wsum += w[n]; n++; }
    for (int i = 0; i < n; i++) w[i] /= wsum;
    memcpy(R->prev_global, R->global, sizeof(float) * R->P);
    fx_agg_mean(R->global, cl, w, n, R->P);
    /* SORF-VeRA: the VeRA fork's server refits b, s, theta (the head and nothing else keeps the mean);
     * fedex-sorf-vera's residual below then makes the global model the exact mean again */
    if (fx_agg_is_sorf(R->cfg.agg))
        for (int k = 0; k < m->nadapted; k++) fx_sorf_refit(m, k, cl, w, n, R->global, !strcmp(R->cfg.sorf_refit, "polar"));
    int exact = fx_agg_is_exact(R->cfg.agg);
    if (exact) {
        /* The residual travels as R->msg; the server accumulates it with the same call as every client
         * that follows it, then forms the shared frozen weights from it. */
        int form = FX_RESIDUAL_AUTO;
        fx_residual_form_parse(R->cfg.residual, &form);
        fx_residual_make(m, form, cl, w, n, R->global, R->round_now, R->msg, R->payload, R->scratch);
        fx_residual_scale(m, R->msg, R->payload, fx_settings_residual_scale(&R->cfg));
        fx_residual_apply(&R->res, m, R->msg, R->payload);
        fx_residual_set_frozen(&R->res, m);
    }
    *agg_seconds = fx_now() - t0;
    for (int k = 0; k < m->nadapted; k++)
        err[k] = fx_agg_error(m, k, exact ? fx_settings_residual_scale(&R->cfg) : 0.0f, cl, w, n, R->global,
                              R->prev_global, R->err_work);
    /* The deviation: FedIT's error on this round's clients, || dW(B̄, Ā) - sum_i w_i dW_i || / || sum_i w_i dW_i
     * - dW(prev) ||, the error without a residual. For FedIT it is its error above; for FedEx, the residual
     * it added (what FedIT would have lost); FFA's shared A and a single client make it zero up to rounding. */
    for (int k = 0; k < m->nadapted; k++)
        dev[k] = fx_agg_error(m, k, 0.0f, cl, w, n, R->global, R->prev_global, R->err_work);
}

/* --clients-per-round M: M of the N clients, drawn each round from the run's seed and the round alone
 * (the same on every transport and on resume), as FedAvg's participation fraction; all of them without it. */
static void select_clients(fx_run *R, int round) {
    int n = R->n, m = R->cfg.clients_per_round > 0 ? R->cfg.clients_per_round : n;
    int *perm = fx_malloc(sizeof(int) * (size_t)n);
    for (int c = 0; c < n; c++) { perm[c] = c; R->selected[c] = m == n; }
    if (m < n) {
        fx_rng g;
        fx_rng_seed(&g, (uint64_t)R->cfg.seed ^ ((uint64_t)round * 0xd1342543de82ef95ULL) ^ 0x5851f42d4c957f2dULL);
        for (int i = 0; i < m; i++) { /* a partial Fisher-Yates shuffle: the first M of a uniform permutation */
            int j = i + (int)(fx_rng_u64(&g) % (uint64_t)(n - i));
            int t = perm[i]; perm[i] = perm[j]; perm[j] = t;
            R->selected[perm[i]] = 1;
        }
    }
    free(perm);
}

/* Which layers the residual sends factored and which dense, and what a round's message weighs, said once. */
static void log_residual_form(const fx_run *R) {
    const fx_model *m = &R->srv;
    int form = FX_RESIDUAL_AUTO, np = R->cfg.clients_per_round > 0 ? R->cfg.clients_per_round : R->n;
    fx_residual_form_parse(R->cfg.residual, &form);
    int q = fx_agg_residual_rank(m, np), nd = 0;
    for (int k = 0; k < m->nadapted; k++) nd += fx_residual_layer_dense(m, k, form, q);
    fx_residual_msg msg = {.round = 1, .q = form == FX_RESIDUAL_DENSE ? 0 : q, .form = form};
    fx_residual_msg dense = {.round = 1, .q = 0, .form = FX_RESIDUAL_DENSE};
    printf("residual (%s): %d layer%s factored (inner dimension %d), %d dense: %.2f MB a round per client (dense "
           "everywhere: %.2f MB)\n", R->cfg.residual, m->nadapted - nd, m->nadapted - nd == 1 ? "" : "s", q, nd,
           fx_residual_msg_bytes(m, &msg) / 1e6, fx_residual_msg_bytes(m, &dense) / 1e6);
}

/* Bytes that cross between server and client each round, from what travels: the trained tensors up
 * (FFA's frozen A or lambda_d stays home) with the report, the global ones down with the job and the
 * residual message (FedEx) as it was sent. */
static void comm_bytes(const fx_run *R, int64_t *up, int64_t *down) {
    if (R->tp->bytes) { R->tp->bytes(R, up, down); return; } /* the transport counted what it sent */
    const fx_model *m = &R->srv;
    int64_t trained = (int64_t)m->head_n, gamma = 0;
    for (int k = 0; k < m->nadapted; k++) {
        const fx_adapted *ad = &m->ad[k];
        /* SORF-VeRA: (s, theta) up and down; Gamma's b (out) only down, the server's (counted below) */
        int64_t a = m->a.kind == FX_LORA ? (int64_t)m->a.r * ad->in
                    : m->a.kind == FX_SORF ? 1 + (int64_t)m->a.r * (m->a.r - 1) / 2 : m->a.r;
        int64_t b = m->a.kind == FX_LORA ? (int64_t)ad->out * m->a.r : m->a.kind == FX_SORF ? 0 : ad->out;
        trained += b + (m->a.freeze_a || m->a.freeze_d ? 0 : a);
        if (m->a.kind == FX_SORF) gamma += ad->out;
    }
    *up = 4 * trained + (int64_t)sizeof(fx_report);
    *down = 4 * (trained + gamma) + (int64_t)sizeof(fx_job) +
            (fx_agg_is_exact(R->cfg.agg) ? (int64_t)fx_residual_msg_bytes(m, R->msg) : 0);
}

/* ============================================================================================
 * Progress, as the transports report it
 * ============================================================================================ */

/* Seconds left in the run while round ROUND is FRAC done: the rounds after it at the mean time of the
 * rounds this process has timed (before the first, this round's pace), and what is left of this one. */
double fx_run_remaining(const fx_run *R, int round, double frac) {
    double in_round = fx_now() - R->t_round, per_round;
    if (R->rounds_timed > 0) per_round = R->secs_rounds / R->rounds_timed;
    else if (frac > 0) per_round = in_round / frac;
    else return NAN;
    double rest = frac >= 1 ? 0 : (frac > 0 ? in_round / frac - in_round : per_round - in_round);
    return (rest > 0 ? rest : 0) + per_round * (R->cfg.rounds - round);
}

void fx_run_progress(fx_run *R, int round, const int *pending, int tty, int *drawn) {
    if (!tty) return;
    if (*drawn) fprintf(stderr, "\033[%dA", *drawn);
    *drawn = 0;
    double frac = 1;
    for (int c = 0; c < R->n; c++) {
        if ((!R->alive[c] && !pending[c]) || !R->selected[c]) continue;
        fx_report *s = &R->report[c];
        int64_t done = s->steps_done, tot = s->steps_total > 0 ? s->steps_total : 1;
        char bar[21];
        int fill = (int)(20 * done / tot);
        for (int i = 0; i < 20; i++) bar[i] = i < fill ? '#' : '.';
        bar[20] = 0;
        double dt = fx_now() - s->t_start;
        fprintf(stderr, "\r\033[Kround %d client %d [%s] %3d%% %6.0f samples/s loss %.4f\n", round, c, bar,
                (int)(100 * done / tot), done && dt > 0 ? (double)s->samples_done / dt : 0.0,
                done ? s->loss_sum / (double)done : 0.0);
        if (pending[c] && (double)done / tot < frac) frac = (double)done / tot; /* the slowest client's pace */
        (*drawn)++;
    }
    char left[32];
    fx_duration_str(fx_run_remaining(R, round, frac), left, sizeof left);
    fprintf(stderr, "\r\033[Kround %d of %d: %s left in the run\n", round, R->cfg.rounds, left);
    (*drawn)++;
    fflush(stderr);
}

void fx_run_client_done(const fx_run *R, int round, int c, int tty) {
    if ((tty && isatty(1)) || R->quiet) return;
    const fx_report *s = &R->report[c];
    printf("round %d client %d: %lld samples x %d epochs in %.2f s (%.1f samples/s), loss %.4f\n", round, c,
           (long long)s->samples, R->cfg.local_epochs, s->seconds,
           (double)s->samples * R->cfg.local_epochs / s->seconds, s->train_loss);
}

/* ============================================================================================
 * Outputs: adapter, residual, metrics, checkpoint
 * ============================================================================================ */

/* One entry per adapted layer, pointing into the accumulated residual, named after the base weight it is
 * added to (the family's prefix, the layer, ".weight": "roberta.encoder.layer.0.attention.self.query.weight"),
 * in residual.safetensors and the checkpoint alike, and in that weight's orientation: a Conv1D layer's
 * (GPT-2) as (in, out), a transposed copy in OWNED[k] (freed by the caller). */
static void residual_entries(const fx_run *R, fx_st_entry *e, char (*names)[128], float **owned) {
    const fx_model *m = &R->srv;
    for (int k = 0; k < m->nadapted; k++) {
        const fx_adapted *ad = &m->ad[k];
        snprintf(names[k], sizeof names[k], "%s%s.weight", m->fam->prefix, ad->name);
        e[k].name = names[k]; e[k].dtype = FX_F32; e[k].ndim = 2;
        e[k].shape[0] = ad->out; e[k].shape[1] = ad->in; e[k].data = R->res.acc + R->res.off[k];
        owned[k] = NULL;
        if (ad->conv1d) {
            owned[k] = fx_malloc((size_t)ad->out * ad->in * sizeof(float));
            fx_transpose(owned[k], R->res.acc + R->res.off[k], ad->out, ad->in);
            e[k].shape[0] = ad->in; e[k].shape[1] = ad->out; e[k].data = owned[k];
        }
    }
}
static void free_owned(float **owned, int n) {
    for (int k = 0; k < n; k++) free(owned[k]);
    free(owned);
}

static int write_residual(const fx_run *R, const char *path) {
    int n = R->srv.nadapted;
    fx_st_entry *e = fx_calloc((size_t)n, sizeof *e);
    char (*names)[128] = fx_calloc((size_t)n, sizeof *names);
    float **owned = fx_calloc((size_t)n + 1, sizeof *owned);
    residual_entries(R, e, names, owned);
    const char *meta[] = {"format", "fedex-residual", "note", "merged weight = base weight + this tensor", NULL};
    int rc = fx_st_write(path, e, n, meta);
    free(names); free(e); free_owned(owned, n);
    return rc;
}

/* The checkpoint that --resume reads: the global state, the accumulated residual of every adapted layer
 * (under the names of residual.safetensors), and the round. It is written last, so a run stopped at any
 * point resumes from a complete round. */
static int write_state(const fx_run *R, int round) {
    const fx_model *m = &R->srv;
    fx_st_entry *e = fx_calloc((size_t)m->nadapted + 1, sizeof *e);
    char (*names)[128] = fx_calloc((size_t)m->nadapted, sizeof *names);
    e[0].name = "global"; e[0].dtype = FX_F32; e[0].ndim = 1; e[0].shape[0] = (int64_t)R->P; e[0].data = R->global;
    float **owned = fx_calloc((size_t)m->nadapted + 1, sizeof *owned);
    residual_entries(R, e + 1, names, owned);
    char rs[32], bs[64], br[32], path[4096];
    snprintf(rs, sizeof rs, "%d", round);
    snprintf(bs, sizeof bs, "%.17g", R->best);
    snprintf(br, sizeof br, "%d", R->best_round);
    char id[24], bh[24];
    fx_settings_id(&R->cfg, id, sizeof id);
    snprintf(bh, sizeof bh, "%016llx", (unsigned long long)R->base_hash);
    const char *meta[] = {"round", rs, "best", bs, "best_round", br, "settings_id", id, "base_hash", bh, NULL};
    snprintf(path, sizeof path, "%s/state.safetensors", R->cfg.out);
    int rc = fx_st_write(path, e, m->nadapted + 1, meta);
    free(names); free(e); free_owned(owned, m->nadapted);
    return rc;
}

static int save_adapter_from(fx_run *R, const float *state, const char *dir) {
    /* the server's model carries the layout; borrow it with STATE as its trainable buffer */
    float *keep = R->srv.train.data;
    R->srv.train.data = (float *)state;
    int rc = fx_mkdir_p(dir) == 0 ? fx_adapter_save(&R->srv, dir, R->cfg.model) : -1;
    R->srv.train.data = keep;
    return rc;
}

static int remove_one(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st; (void)flag; (void)ftw;
    return remove(p);
}

static int write_outputs(fx_run *R, int round, const int *done) {
    char path[4096];
    if (!R->settings_written) {
        /* A run that replaces another (--overwrite) leaves the old one whole, and resumable, until its own
         * first round is saved: then the old per-round folders go, and its settings come with its state. */
        snprintf(path, sizeof path, "%s/rounds", R->cfg.out);
        if (R->cfg.overwrite && access(path, F_OK) == 0 && nftw(path, remove_one, 16, FTW_DEPTH | FTW_PHYS) != 0) {
            fx_seterr("%s: cannot remove the replaced run's rounds: %s", path, strerror(errno));
            return -1;
        }
    }
    if (R->cfg.save_clients) {
        for (int c = 0; c < R->n; c++) {
            if (!done[c]) continue;
            snprintf(path, sizeof path, "%s/rounds/%d/client_%d", R->cfg.out, round, c);
            if (save_adapter_from(R, R->client[c], path) != 0) return -1;
        }
        snprintf(path, sizeof path, "%s/rounds/%d/global", R->cfg.out, round);
        if (save_adapter_from(R, R->global, path) != 0) return -1;
        snprintf(path, sizeof path, "%s/rounds/%d/global/residual.safetensors", R->cfg.out, round);
        if (write_residual(R, path) != 0) return -1;
    }
    if (save_adapter_from(R, R->global, R->cfg.out) != 0) return -1;
    snprintf(path, sizeof path, "%s/residual.safetensors", R->cfg.out);
    if (write_residual(R, path) != 0) return -1;
    size_t len = 0;
    for (int i = 0; i < R->nlines; i++) len += strlen(R->lines[i]) + 1;
    char *text = fx_malloc(len + 1), *p = text;
    for (int i = 0; i < R->nlines; i++) p += sprintf(p, "%s\n", R->lines[i]);
    snprintf(path, sizeof path, "%s/metrics.jsonl", R->cfg.out);
    int rc = fx_write_file_atomic(path, text, len);
    free(text);
    if (rc != 0) return -1;
    if (!R->settings_written && fx_settings_write(&R->cfg, R->cfg.out) != 0) return -1;
    R->settings_written = 1;
    return write_state(R, round);
}

/* {"max": .., "mean": .., "layers": {"encoder.layer.0.attention.self.query": .., ...}}: one value per
 * adapted layer, keyed by the layer's name, with their maximum and mean. */
static void layer_values(FILE *f, const fx_run *R, const double *v) {
    double mx = 0, mean = 0;
    for (int k = 0; k < R->srv.nadapted; k++) { if (v[k] > mx || isnan(v[k])) mx = v[k]; mean += v[k]; }
    mean = R->srv.nadapted ? mean / R->srv.nadapted : 0;
    fprintf(f, "{\"max\": ");
    fx_json_num(f, mx);
    fprintf(f, ", \"mean\": ");
    fx_json_num(f, mean);
    fprintf(f, ", \"layers\": {");
    for (int k = 0; k < R->srv.nadapted; k++) {
        fprintf(f, "%s\"%s\": ", k ? ", " : "", R->srv.ad[k].name); /* names are [a-z0-9._]: no escapes */
        fx_json_num(f, v[k]);
    }
    fprintf(f, "}}");
}

/* The share of the client phase's core-seconds (cores x its wall time) that no training client held:
 * 1 - sum_c core_seconds_c / (cores x wall), client c holding its threads through each of its steps
 * (scaled down while the clients' threads outnumber the cores). A client that has finished holds
 * nothing, so with fixed threads its cores count as idle until the last one ends. NAN when the
 * transport does not know the cores (MPI). Each client's CPU time (seconds_cpu) says how much of what it
 * held it used, which a machine busy with other work lowers. */
static double client_idle(const fx_run *R, const int *done, double wall) {
    if (R->client_cores <= 0 || !(wall > 0)) return NAN;
    double held = 0;
    for (int c = 0; c < R->n; c++) if (done[c]) held += R->report[c].core_seconds;
    return 1.0 - held / ((double)R->client_cores * wall);
}

static char *metrics_line(fx_run *R, int round, const int *done, const fx_metrics *mt, double dev_loss,
                          const double *err, const double *dev, double secs, double agg_s, double eval_s, double clients_s) {
    char *buf = NULL; size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) fx_die("open_memstream: %s", strerror(errno));
    int64_t up, down;
    comm_bytes(R, &up, &down);
    fprintf(f, "{\"round\": %d, \"agg\": \"%s\", \"clients\": [", round, fx_agg_name(R->cfg.agg));
    int first = 1;
    for (int c = 0; c < R->n; c++) {
        if (!done[c]) continue;
        fprintf(f, "%s{\"id\": %d, \"samples\": %lld, \"train_loss\": ", first ? "" : ", ", c, (long long)R->report[c].samples);
        fx_json_num(f, R->report[c].train_loss);
        fprintf(f, ", \"seconds\": %.3f, \"seconds_cpu\": %.3f, \"seconds_cores\": %.3f}", R->report[c].seconds,
                R->report[c].cpu_seconds, R->report[c].core_seconds);
        first = 0;
    }
    fprintf(f, "], \"dead_clients\": [");
    first = 1;
    for (int c = 0; c < R->n; c++) if (R->selected[c] && !done[c]) { fprintf(f, "%s%d", first ? "" : ", ", c); first = 0; }
    if (R->cfg.clients_per_round > 0) {
        fprintf(f, "], \"participants\": [");
        first = 1;
        for (int c = 0; c < R->n; c++) if (R->selected[c]) { fprintf(f, "%s%d", first ? "" : ", ", c); first = 0; }
    }
    fprintf(f, "], \"dev\": {");
    const char *names[] = {"accuracy", "f1", "mcc", "pearson", "spearman"};
    double vals[] = {mt->accuracy, mt->f1, mt->mcc, mt->pearson, mt->spearman};
    first = 1;
    for (int i = 0; i < 5; i++) {
        if (isnan(vals[i])) continue;
        fprintf(f, "%s\"%s\": ", first ? "" : ", ", names[i]);
        fx_json_num(f, vals[i]);
        first = 0;
    }
    fprintf(f, "}, \"dev_loss\": ");
    fx_json_num(f, dev_loss);
    fprintf(f, ", \"metric\": \"%s\", \"value\": ", mt->main_name);
    fx_json_num(f, mt->main);
    fprintf(f, ", \"best\": ");
    fx_json_num(f, R->best);
    fprintf(f, ", \"best_round\": %d", R->best_round);
    fx_run_e2e_json(R, f);
    fx_run_inst_json(R, f);
    fprintf(f, ", \"agg_error\": ");
    layer_values(f, R, err);
    fprintf(f, ", \"deviation\": ");
    layer_values(f, R, dev);
    fprintf(f, ", \"bytes_up\": %lld, \"bytes_down\": %lld, \"residual\": \"%s\", ", (long long)up,
            (long long)down, fx_agg_is_exact(R->cfg.agg) ? R->cfg.residual : "none");
    fprintf(f, "\"memory_mb\": ");
    fx_json_num(f, R->tp->memory_mb(R));
    fprintf(f, ", \"seconds\": %.3f, \"seconds_clients\": %.3f, \"seconds_aggregate\": %.3f, \"seconds_eval\": %.3f",
            secs, clients_s, agg_s, eval_s);
    fprintf(f, ", \"client_idle\": ");
    fx_json_num(f, client_idle(R, done, clients_s));
    fprintf(f, "}");
    fclose(f);
    return buf;
}

/* ============================================================================================
 * Setting a run up, resuming one
 * ============================================================================================ */

int fx_run_init_weights(const fx_settings *c, fx_model *m) {
    if (!c->model) fx_model_init_base(m, (uint64_t)c->seed);
    else if (fx_model_load_init(m, c->model, (uint64_t)c->seed) < 0) return -1;
    fx_model_init_adapters(m, (uint64_t)c->seed);
    return 0;
}

/* A whole number in [lo, hi] written in decimal digits alone, or -1. */
static long long meta_int(const char *s, long long lo, long long hi) {
    if (!s || !*s || strspn(s, "0123456789") != strlen(s) || strlen(s) > 12) return -1;
    long long v = strtoll(s, NULL, 10);
    return v < lo || v > hi ? -1 : v;
}

/* Copies N floats from P to DST, refusing any that is not finite. */
static int copy_finite(float *dst, const float *p, size_t n, const char *path, const char *name) {
    for (size_t j = 0; j < n; j++)
        if (!isfinite(p[j])) {
            fx_seterr("%s: tensor '%s' holds %g at element %zu: the checkpoint is damaged", path, name, p[j], j);
            return -1;
        }
    memcpy(dst, p, sizeof(float) * n);
    return 0;
}

int fx_run_load_state(const char *dir, fx_model *m, float *global, fx_residual *res, double *best, int *best_round,
                      const char *want, const uint64_t *base_hash) {
    char path[4096];
    snprintf(path, sizeof path, "%s/state.safetensors", dir);
    fx_st_file f;
    if (fx_st_open(path, &f) != 0) return -1;
    int rc = -1;
    const fx_st_tensor *g = fx_st_find(&f, "global");
    const char *rs = fx_st_meta(&f, "round"), *id = fx_st_meta(&f, "settings_id"), *bh = fx_st_meta(&f, "base_hash");
    const char *b = fx_st_meta(&f, "best"), *br = fx_st_meta(&f, "best_round");
    long long round = meta_int(rs, 1, 1000000000), bround = br ? meta_int(br, 0, round) : 0;
    char *end = NULL;
    double bv = b ? strtod(b, &end) : -INFINITY;
    if (!g || g->dtype != FX_F32 || fx_st_numel(g) != m->train.n) {
        fx_seterr("%s: not a checkpoint of this run (global state missing or of another size)", path);
        goto out;
    }
    if (round < 0 || bround < 0 || (b && (end == b || *end || isnan(bv)))) {
        fx_seterr("%s: damaged metadata (round '%s', best '%s', best_round '%s'): not a checkpoint fedex wrote", path,
                  rs ? rs : "missing", b ? b : "missing", br ? br : "missing");
        goto out;
    }
    /* checkpoints written before the base's fingerprint carry an id of another recipe: not compared */
    if (want && id && bh && strcmp(want, id)) {
        fx_seterr("%s is the checkpoint of other settings than those beside it: the run that replaced it "
                  "stopped before its first round was saved (start it again with --overwrite)", path);
        goto out;
    }
    if (bh) { /* the base the run trained on (checkpoints of older versions carry no fingerprint) */
        char mine[24];
        snprintf(mine, sizeof mine, "%016llx", (unsigned long long)(base_hash ? *base_hash : fx_frozen_hash(m, res)));
        if (strcmp(bh, mine)) {
            fx_seterr("%s: the base model's weights differ from those this run trained on (fingerprint %s, the run's "
                      "%s): resume and export need the same model folder as the run had", path, mine, bh);
            goto out;
        }
    }
    float *owned;
    const float *p = fx_st_f32(&f, g, &owned);
    int bad = copy_finite(global, p, m->train.n, path, "global");
    free(owned);
    if (bad) goto out;
    for (int k = 0; k < m->nadapted; k++) {
        /* named as in residual.safetensors; checkpoints written before carry "residual.<layer>" */
        char name[160], old[160];
        snprintf(name, sizeof name, "%s%s.weight", m->fam->prefix, m->ad[k].name);
        snprintf(old, sizeof old, "residual.%s", m->ad[k].name);
        const fx_st_tensor *t = fx_st_find(&f, name);
        if (!t) t = fx_st_find(&f, old);
        if (!t || t->dtype != FX_F32 || fx_st_numel(t) != (size_t)m->ad[k].out * m->ad[k].in) {
            fx_seterr("%s: tensor '%s' missing or of the wrong size", path, name);
            goto out;
        }
        p = fx_st_f32(&f, t, &owned);
        bad = copy_finite(res->acc + res->off[k], p, fx_st_numel(t), path, t->name);
        free(owned);
        if (bad) goto out;
        if (m->ad[k].conv1d) { /* stored (in, out), as the Conv1D weight it is added to */
            size_t nw = (size_t)m->ad[k].out * m->ad[k].in;
            float *tmp = fx_malloc(nw * sizeof *tmp);
            memcpy(tmp, res->acc + res->off[k], nw * sizeof *tmp);
            fx_transpose(res->acc + res->off[k], tmp, m->ad[k].in, m->ad[k].out);
            free(tmp);
        }
    }
    fx_residual_set_frozen(res, m);
    rc = (int)round;
    res->round = rc;
    *best = bv;
    *best_round = (int)bround;
out:
    fx_st_close(&f);
    return rc;
}

/* Keeps the metrics.jsonl lines of rounds up to ROUND (a resumed run rewrites what came after). */
static void load_lines(fx_run *R, int round) {
    char path[4096], *text; size_t len;
    snprintf(path, sizeof path, "%s/metrics.jsonl", R->cfg.out);
    if (fx_read_file(path, &text, &len) != 0) return;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        fx_json j;
        if (fx_json_parse(line, strlen(line), &j) != 0) continue;
        const fx_json *r = fx_json_get(&j, "round");
        if (r && r->type == FX_JNUM && r->inum <= round) {
            R->lines = fx_realloc(R->lines, sizeof(char *) * (size_t)(R->nlines + 1));
            R->lines[R->nlines++] = fx_strdup(line);
        }
        fx_json_free(&j);
    }
    free(text);
}

/* Every token id of D within the model's vocabulary. */
static int check_ids(const fx_run *R, const fx_dataset *d, const char *split) {
    for (int i = 0; i < d->n; i++)
        for (size_t j = d->off[i]; j < d->off[i + 1]; j++)
            if (d->ids[j] < 0 || d->ids[j] >= R->mc.vocab_size) {
                fx_seterr("%s: row %d of %s has token id %d, outside the model's vocabulary of %d (is the "
                          "tokenizer the model's?)", R->cfg.model, i + 1, split, d->ids[j], R->mc.vocab_size);
                return -1;
            }
    return 0;
}

static int load_data(fx_run *R) {
    fx_settings *c = &R->cfg;
    if (c->model) {
        if (fx_model_has_weights(c->model) != 0) return -1; /* say so before minutes of tokenising */
        const fx_family *fam = fx_config_family(&R->mc);
        if ((R->task->lm != 0) != (fam->head_kind == FX_HEAD_LM)) {
            fx_seterr(R->task->lm ? "--task %s trains a language model: %s is a %s, not a causal LM (GPT-2, Llama)"
                                  : "--task %s classifies: %s is a %s language model", R->task->name, c->model,
                      fam->model_type);
            return -1;
        }
        if (fam->positions == FX_POS_FROM_ZERO || fam->positions == FX_POS_ROPE) {
            if (c->max_len > R->mc.max_positions) {
                fx_seterr("--max-seq-length %d exceeds %s's %d positions", c->max_len, c->model, R->mc.max_positions);
                return -1;
            }
        }
        /* RoBERTa's positions start after pad_id, so a row of T tokens needs pad_id + T < max_positions */
        else if (c->max_len > R->mc.max_positions - R->mc.pad_id - 1) {
            fx_seterr("--max-seq-length %d exceeds %s's %d positions (at most %d tokens)", c->max_len, c->model,
                      R->mc.max_positions, R->mc.max_positions - R->mc.pad_id - 1);
            return -1;
        }
        R->tok = fx_tok_load(c->model);
        if (!R->tok) return -1;
        R->pad_id = fx_tok_pad(R->tok);
        printf("tokenising %s train and dev (max length %d)...\n", R->task->name, c->max_len);
        fflush(stdout);
        if (R->task->lm && R->task->lm != FX_LM_E2E) {
            if (fx_run_inst_load(R) != 0) return -1;
        } else if (R->task->lm) {
            char path[4096];
            if (fx_e2e_path(c->data, "train", c->train_file, path, sizeof path) != 0 ||
                fx_e2e_load(path, R->tok, c->max_len, &R->train) != 0 ||
                fx_e2e_path(c->data, "dev", NULL, path, sizeof path) != 0 ||
                fx_e2e_load(path, R->tok, c->max_len, &R->dev) != 0)
                return -1;
        } else {
            if (fx_dataset_build(R->task, c->data, "train", R->tok, c->max_len, &R->train) != 0) return -1;
            if (fx_dataset_build(R->task, c->data, "dev", R->tok, c->max_len, &R->dev) != 0) return -1;
        }
        if (check_ids(R, &R->train, "train") != 0 || check_ids(R, &R->dev, "dev") != 0) return -1;
    } else {
        R->pad_id = R->mc.pad_id;
        if (fx_dataset_synthetic(FX_SYNTH_TRAIN, R->mc.vocab_size, FX_SYNTH_LEN, (uint64_t)c->seed, &R->train) != 0 ||
            fx_dataset_synthetic(FX_SYNTH_DEV, R->mc.vocab_size, FX_SYNTH_LEN, (uint64_t)c->seed + 1, &R->dev) != 0)
            return -1;
    }
    if (R->train.n < R->n) { fx_seterr("%d training rows cannot feed %d clients", R->train.n, R->n); return -1; }
    return 0;
}

static int split_shards(fx_run *R) {
    fx_settings *c = &R->cfg;
    R->rows = fx_calloc((size_t)R->n, sizeof(int *));
    R->counts = fx_calloc((size_t)R->n, sizeof(int));
    if (R->n == 1) {
        R->rows[0] = fx_malloc(sizeof(int) * (size_t)R->train.n);
        for (int i = 0; i < R->train.n; i++) R->rows[0][i] = i;
        R->counts[0] = R->train.n;
    } else if (fx_split_clients(&R->train, R->n, c->split, (uint64_t)c->seed, R->rows, R->counts) != 0) {
        return -1;
    }
    for (int i = 0; i < R->n; i++)
        if (R->counts[i] == 0) {
            fx_seterr("client %d got no training rows (split %s, %d rows for %d clients): use fewer clients%s", i, c->split,
                      R->train.n, R->n, strncmp(c->split, "dirichlet:", 10) ? "" : " or a larger alpha");
            return -1;
        }
    if (!R->quiet) fx_split_report(stdout, &R->train, R->n, R->rows, R->counts);
    return 0;
}

/* --client-gpus: one device for all, or one per client. */
static int client_gpus(fx_run *R) {
    const char *list = R->cfg.client_gpus;
    R->gpu_of = fx_calloc((size_t)R->n, sizeof(int));
    if (!list) return 0;
    const char *p = list;
    int k = 0;
    while (*p) {
        char *end;
        long d = strtol(p, &end, 10);
        if (end == p || d < 0 || d > 255 || k >= R->n || (*end && *end != ',')) {
            fx_seterr("--client-gpus '%s': expected %d device numbers separated by commas (or one for all)", list, R->n);
            return -1;
        }
        R->gpu_of[k++] = (int)d;
        p = *end ? end + 1 : end;
    }
    if (k == 1) for (int i = 1; i < R->n; i++) R->gpu_of[i] = R->gpu_of[0];
    else if (k != R->n && strcmp(R->cfg.transport, "mpi")) { /* under MPI: a device per client rank of a host */
        fx_seterr("--client-gpus '%s' names %d devices for %d clients", list, k, R->n);
        return -1;
    }
    return 0;
}

/* The run folder: made, locked for this run alone, refused when it holds another run (unless resumed or
 * replaced), cleared of temporary files that a killed run left. Only fedex's own are removed: a name
 * fx_write_file_atomic makes (an output's name, FX_TMP_SUFFIX, then mkstemp's 6 letters or digits), of
 * an output kind fedex writes, at the folder's top or under its rounds/; anything else a user keeps
 * there, at any depth, is left alone. */
static size_t tmp_root_len;                      /* strlen of the run folder, for remove_tmp */

static int is_own_tmp(const char *name) {
    static const char *const kinds[] = {".safetensors", ".json", ".jsonl", ".txt"};
    const char *t = strstr(name, FX_TMP_SUFFIX);
    if (!t || t == name) return 0;
    const char *x = t + strlen(FX_TMP_SUFFIX);
    if (strlen(x) != 6) return 0;
    for (int i = 0; i < 6; i++)
        if (!isalnum((unsigned char)x[i])) return 0;
    size_t stem = (size_t)(t - name);
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        size_t n = strlen(kinds[k]);
        if (stem > n && !memcmp(t - n, kinds[k], n)) return 1;
    }
    return 0;
}

static int remove_tmp(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st;
    const char *rel = p + tmp_root_len;          /* the path inside the run folder */
    while (*rel == '/') rel++;
    int where = ftw->level == 1 || !strncmp(rel, "rounds/", 7);
    if (flag == FTW_F && where && is_own_tmp(p + ftw->base)) remove(p);
    return 0;
}

static int claim_folder(fx_run *R) {
    const fx_settings *c = &R->cfg;
    char path[4096];
    if (fx_mkdir_p(c->out) != 0) return -1;
    snprintf(path, sizeof path, "%s/.fedex.lock", c->out);
    R->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (R->lock_fd < 0) { fx_seterr("%s: cannot create: %s", path, strerror(errno)); return -1; }
    if (flock(R->lock_fd, LOCK_EX | LOCK_NB) != 0) {
        char pid[32] = "";
        ssize_t n = pread(R->lock_fd, pid, sizeof pid - 1, 0);
        pid[n > 0 ? n : 0] = 0;
        pid[strcspn(pid, "\n")] = 0;
        fx_seterr("%s is in use by another fedex run (pid %s): one run per folder", c->out, *pid ? pid : "unknown");
        return -1;
    }
    char me[32];
    int n = snprintf(me, sizeof me, "%d\n", (int)getpid());
    if (ftruncate(R->lock_fd, 0) != 0 || pwrite(R->lock_fd, me, (size_t)n, 0) != n) { /* only informative */ }
    snprintf(path, sizeof path, "%s/state.safetensors", c->out);
    char sp[4096];
    int has = access(path, F_OK) == 0 || fx_settings_find(c->out, sp, sizeof sp);
    if (has && !c->resume && !c->overwrite) {
        fx_seterr("%s holds a run already: --resume %s continues it, --overwrite replaces it", c->out, c->out);
        return -1;
    }
    tmp_root_len = strlen(c->out);
    nftw(c->out, remove_tmp, 16, FTW_PHYS);
    return 0;
}

static int setup_run(fx_run *R) {
    fx_settings *c = &R->cfg;
    R->n = c->num_clients;
    if (c->out && claim_folder(R) != 0) return -1;
    if (fx_settings_model(c, &R->mc, &R->task) != 0 || load_data(R) != 0) return -1;
    fx_settings_adapter(c, &R->ac);

    /* Sizes first, from a model whose base is never touched (calloc'ed pages cost nothing). */
    fx_model probe;
    if (fx_model_create(&probe, &R->mc, &R->ac, NULL) != 0) return -1;
    R->P = probe.train.n;
    R->base_n = fx_base_numel(&R->mc);
    R->base_bytes = fx_base_bytes(&R->mc);
    R->payload_n = fx_residual_msg_capacity(&probe, R->n);
    size_t smax = 1;
    int q = fx_agg_residual_rank(&probe, R->n);
    for (int k = 0; k < probe.nadapted; k++) {
        size_t out = (size_t)probe.ad[k].out, in = (size_t)probe.ad[k].in;
        if ((out + in) * (size_t)q > smax) smax = (out + in) * (size_t)q;
    }
    R->err_work = fx_malloc(sizeof(double) * fx_agg_error_work(&probe, R->n));
    fx_model_free(&probe);
    R->scratch = fx_malloc(sizeof(float) * smax);
    R->selected = fx_calloc((size_t)R->n, sizeof(int));
    R->prev_global = fx_malloc(sizeof(float) * R->P);

    if (R->tp->open(R) != 0) return -1;
    if (fx_model_create(&R->srv, &R->mc, &R->ac, R->base) != 0) return -1;
    if (fx_run_init_weights(c, &R->srv) != 0) return -1;
    memcpy(R->global, R->srv.train.data, sizeof(float) * R->P);
    fx_residual_init(&R->res, &R->srv);
    fx_residual_set_frozen(&R->res, &R->srv);
    if (c->out) R->base_hash = fx_frozen_hash(&R->srv, &R->res); /* for the checkpoints alone */
    R->best = -INFINITY;
    if (c->resume) {
        char id[24];
        fx_settings_id(c, id, sizeof id);
        R->round0 = fx_run_load_state(c->out, &R->srv, R->global, &R->res, &R->best, &R->best_round, id,
                                      &R->base_hash); /* c->out is the run resumed, so setup hashed the base */
        if (R->round0 < 0) return -1;
        if (R->round0 >= c->rounds) {
            fx_seterr("%s has completed %d round%s already: give --rounds more than that to continue it", c->out,
                      R->round0, R->round0 == 1 ? "" : "s");
            return -1;
        }
        load_lines(R, R->round0);
        printf("resuming %s after round %d\n", c->out, R->round0);
    }
    if (fx_run_e2e_open(R) != 0 || fx_run_inst_open(R) != 0) return -1;
    return split_shards(R) != 0 || client_gpus(R) != 0 ? -1 : 0;
}

void fx_run_client_setup(const fx_run *R, int c, fx_client_setup *s) {
    const char *check = getenv("FEDEX_CHECK_FROZEN");
    *s = (fx_client_setup){
        .id = c, .mc = &R->mc, .ac = &R->ac, .base = R->base, .residual = &R->res,
        .seed = (uint64_t)R->cfg.seed, .train = &R->train, .rows = R->rows[c], .nrows = R->counts[c],
        .pad_id = R->pad_id, .device = R->cfg.device, .precision = R->cfg.precision, .gpu = R->gpu_of[c],
        .check_frozen = check && !strcmp(check, "1"),
    };
}

static void teardown_run(fx_run *R) {
#ifdef FEDEX_CUDA
    if (R->srv_gpu) fx_gpu_free(R->srv_gpu);
#endif
    fx_run_e2e_close(R);
    fx_run_inst_close(R);
    fx_model_free(&R->srv);
    if (R->res.off) fx_residual_free(&R->res);
    R->tp->close(R);
    for (int i = 0; R->rows && i < R->n; i++) free(R->rows[i]);
    free(R->rows); free(R->counts); free(R->selected); free(R->err_work); free(R->prev_global); free(R->scratch);
    free(R->gpu_of);
    for (int i = 0; i < R->nlines; i++) free(R->lines[i]);
    free(R->lines);
    fx_dataset_free(&R->train); fx_dataset_free(&R->dev);
    if (R->tok) fx_tok_free(R->tok);
    if (R->lock_fd >= 0) close(R->lock_fd);
}

/* ============================================================================================
 * The rounds
 * ============================================================================================ */

static int open_server_gpu(fx_run *R) {
#ifdef FEDEX_CUDA
    fx_settings *c = &R->cfg;
    if (strcmp(c->device, "cuda") || c->server_gpu < 0) return 0;
    char why[512];
    int prec;
    if (fx_gpu_probe(why, sizeof why) <= 0) { fx_seterr("--server-gpu %d: %s", c->server_gpu, why); return -1; }
    if (fx_gpu_precision_parse(c->precision, &prec) != 0 || !(R->srv_gpu = fx_gpu_create(&R->srv, c->server_gpu, prec))) {
        fx_seterr("--server-gpu %d: %s", c->server_gpu, fx_err());
        return -1;
    }
#else
    (void)R;
#endif
    return 0;
}

int fx_run_federated(fx_run *R) {
    fx_settings *c = &R->cfg;
    int quiet = R->quiet;
    if (!R->tp) R->tp = &fx_transport_shm;
    R->lock_fd = -1;
    if (setup_run(R) != 0) {
        fprintf(stderr, "fedex: %s\n", fx_err());
        teardown_run(R);
        return 1;
    }
    int threads = c->threads > 0 ? c->threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns EINTR and the loop notices */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* No OpenMP team or CUDA context exists yet in this process: the transport may fork now. */
    if (R->tp->start(R, threads) != 0 || (fx_set_threads(threads), open_server_gpu(R)) != 0) {
        fprintf(stderr, "fedex: %s\n", fx_err());
        R->tp->stop(R, 1);
        teardown_run(R);
        return 1;
    }
    if (!quiet) {
        printf("%s: %d client%s, %d rounds x %d local epochs, %d trainable parameters, %d threads\n",
               fx_agg_name(c->agg), R->n, R->n > 1 ? "s" : "", c->rounds, c->local_epochs, (int)R->P, threads);
        if (c->clients_per_round > 0)
            printf("%d of the %d clients train each round, drawn with the seed\n", c->clients_per_round, R->n);
        if (fx_agg_is_exact(c->agg)) log_residual_form(R);
    }
    fflush(stdout);
    int status = 0;
    int *done = fx_calloc((size_t)R->n, sizeof(int));
    double *err = fx_calloc((size_t)(R->srv.nadapted ? R->srv.nadapted : 1), sizeof(double));
    double *dev = fx_calloc((size_t)(R->srv.nadapted ? R->srv.nadapted : 1), sizeof(double));
    fx_metrics last = {0};
    int last_round = R->round0;
    for (int round = R->round0 + 1; round <= c->rounds; round++) {
        double t0 = fx_now();
        R->t_round = t0;
        fx_job job = {.round = round, .local_epochs = c->local_epochs, .batch_size = c->batch_size,
                      .micro_batch = c->micro_batch, .lr = c->lr, .warmup_ratio = c->warmup_ratio,
                      .weight_decay = c->weight_decay, .seed = (uint64_t)c->seed};
        select_clients(R, round);
        if (R->tp->send_round(R, &job) != 0 || R->tp->collect(R, round, done) != 0) {
            if (interrupted) {
                fprintf(stderr, "\nfedex: interrupted in round %d; %s%s%s\n", round,
                        c->out && round > 1 ? "the last complete round is saved: --resume " : "nothing of this round was saved",
                        c->out && round > 1 ? c->out : "", c->out && round > 1 ? " continues it" : "");
                status = 130;
            } else {
                fprintf(stderr, "fedex: %s\n", fx_err());
                if (c->out && round > 1)
                    fprintf(stderr, "fedex: stopped in round %d; the last complete round is saved: --resume %s continues it\n",
                            round, c->out);
                status = 1;
            }
            break;
        }
        int ndone = 0;
        for (int i = 0; i < R->n; i++) ndone += done[i];
        if (ndone == 0) { fprintf(stderr, "fedex: no client finished round %d\n", round); status = 1; break; }
        double tc = fx_now() - t0, agg_s, te;
        R->round_now = round;
        aggregate(R, done, err, dev, &agg_s);
        te = fx_now();
        fx_metrics mt;
        double dev_loss = evaluate(R, &mt);
        if (fx_run_e2e_round(R, round) != 0) { fprintf(stderr, "fedex: test generation: %s\n", fx_err()); status = 1; break; }
        if (fx_run_inst_round(R, round) != 0) { fprintf(stderr, "fedex: %s evaluation: %s\n", R->task->name, fx_err()); status = 1; break; }
        double eval_s = fx_now() - te;
        if ((R->task->lm ? mt.main < R->best : mt.main > R->best) || R->best_round == 0) { R->best = mt.main; R->best_round = round; }
        double mx = 0;
        for (int k = 0; k < R->srv.nadapted; k++) if (err[k] > mx) mx = err[k];
        if (R->hist_metric) { R->hist_metric[round - 1] = mt.main; R->hist_err[round - 1] = mx; }
        char *line = metrics_line(R, round, done, &mt, dev_loss, err, dev, fx_now() - t0, agg_s, eval_s, tc);
        R->lines = fx_realloc(R->lines, sizeof(char *) * (size_t)(R->nlines + 1));
        R->lines[R->nlines++] = line;
        R->secs_rounds += fx_now() - t0;
        R->rounds_timed++;
        char left[32];
        fx_duration_str(fx_run_remaining(R, round, 1.0), left, sizeof left);
        if (!quiet)
            printf("round %3d  dev %s %.4f  (best %.4f @ %d)  agg error max %.2e  %.1f s, %s left\n", round,
                   mt.main_name, mt.main, R->best, R->best_round, mx, fx_now() - t0, left);
        else
            printf("  %-6s round %d/%d: dev %s %.4f, aggregation error %.2e\n", fx_agg_name(c->agg), round,
                   c->rounds, mt.main_name, mt.main, mx);
        fflush(stdout);
        if (c->out && write_outputs(R, round, done) != 0) { fprintf(stderr, "fedex: %s\n", fx_err()); status = 1; break; }
        last = mt;
        last_round = round;
        if (interrupted) { /* after this round's checkpoint: it is complete */
            fprintf(stderr, "\nfedex: interrupted after round %d; it is %s\n", round, c->out ? "saved" : "not saved (no --out)");
            status = 130;
            break;
        }
    }
    R->tp->stop(R, status != 0);
    if (status == 0 && !quiet && last_round > 0 && last.main_name)
        printf("best dev %s %.4f at round %d; last %.4f (round %d)%s%s\n", last.main_name, R->best,
               R->best_round, last.main, last_round, c->out ? "; results in " : "", c->out ? c->out : "");
    free(done); free(err); free(dev);
    teardown_run(R);
    return status;
}
