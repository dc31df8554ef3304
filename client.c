/* client.c: one client's local round: a job, the global state and the round's residual in; the trained
 * state and a report out. It knows no transport: no pipes, no shared-memory layout, no processes (shm.c
 * runs it in a forked process). The model's numerics are model.c's; the residual's arithmetic agg.c's. */
#include "fedex.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct fx_client {
    fx_model m;                  /* its base: the shared frozen weights, or its own copy */
    const fx_dataset *train;
    const int *rows; int nrows;  /* its shard */
    int pad_id;
    int *order;                  /* (nrows) this epoch's shuffle */
    float *acc;                  /* (P) gradient accumulated over micro-batches */
    fx_batch batch;
    fx_residual res;             /* its own W0 and R_acc, when it forms the frozen weights itself */
    int own_residual;            /* GPU clients, and CPU clients that check the shared weights */
    int check_frozen;
    float *wtmp;                 /* one adapted layer's frozen weight */
    double (*pace)(void *);      /* the transport's hook (its thread count), before each product */
    void *pace_ctx;
    fx_ops paced_ops;            /* the CPU ops whose products call it first (see pace_now) */
    double held, t_mark;         /* the cores it holds, since when (fx_now()) */
    int kill_round;              /* fault injection (tests): FEDEX_FAULT=kill:C:R kills it in round R, */
    int gone_round;              /* gone:C:R makes it leave after answering round R, open:C fails its start */
    int drift;                   /* FEDEX_FAULT=drift:C: its own R_acc moves a frozen weight by one ulp (the
                                    check must see it) */
#ifdef FEDEX_CUDA
    fx_gpu *g;                   /* its own CUDA context, created in its own process */
#endif
};

/* A stream of its own for each (seed, round, client, purpose), so that a client's shuffles and dropout
 * masks do not depend on the others or on the thread count. */
static uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
    fx_rng r;
    fx_rng_seed(&r, seed ^ (a * 0x9e3779b97f4a7c15ULL) ^ (b * 0xc2b2ae3d27d4eb4fULL) ^ (c * 0x165667b19e3779f9ULL));
    return fx_rng_u64(&r);
}

/* CPU seconds of this process, all its threads together. */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ============================================================================================
 * Pacing: the transport's hook, before every product of a step
 * ============================================================================================
 * OpenMP's thread count can change between parallel regions only, and a step of a large model is
 * long (seconds): so the hook runs before each of the step's products (the linear layers' products are
 * nearly all its time), through a copy of the CPU ops table whose product entries call it first. The
 * client whose round runs in this process is PACED; its report accumulates the cores it held. */
static struct { fx_client *cl; fx_report *rep; } paced;

static void pace_now(void) {
    fx_client *cl = paced.cl;
    if (!cl) return;
    double now = fx_now();
    paced.rep->core_seconds += cl->held * (now - cl->t_mark);
    cl->t_mark = now;
    cl->held = cl->pace(cl->pace_ctx);
}

static void paced_matmul(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                         int ldb, float beta, float *C, int ldc) {
    pace_now();
    fx_cpu_ops.matmul(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
static void paced_linear_forward(float *y, const float *x, const float *W, const float *b, int N, int in, int out) {
    pace_now();
    fx_cpu_ops.linear_forward(y, x, W, b, N, in, out);
}
static void paced_linear_backward(float *dx, const float *dy, const float *W, int N, int in, int out, float beta) {
    pace_now();
    fx_cpu_ops.linear_backward(dx, dy, W, N, in, out, beta);
}
/* FEDEX_FAULT's injected faults that concern client ID (tests). */
static void faults(fx_client *cl, int id) {
    const char *f = getenv("FEDEX_FAULT");
    int fc, fr;
    cl->kill_round = -1;
    if (f && sscanf(f, "kill:%d:%d", &fc, &fr) == 2 && fc == id) cl->kill_round = fr;
    cl->drift = f && sscanf(f, "drift:%d", &fc) == 1 && fc == id;
    cl->gone_round = f && sscanf(f, "gone:%d:%d", &fc, &fr) == 2 && fc == id ? fr : -1;
}

void fx_client_set_shard(fx_client *cl, int id, const int *rows, int nrows) {
    if (nrows > cl->nrows) cl->order = fx_realloc(cl->order, sizeof(int) * (size_t)nrows);
    cl->rows = rows; cl->nrows = nrows;
    faults(cl, id);
}

fx_client *fx_client_open(const fx_client_setup *s) {
    fx_client *cl = fx_calloc(1, sizeof *cl);
    if (fx_model_create(&cl->m, s->mc, s->ac, s->base) != 0) { free(cl); return NULL; }
    fx_model_init_adapters(&cl->m, s->seed); /* VeRA's shared projections, as the server's */
    cl->train = s->train; cl->rows = s->rows; cl->nrows = s->nrows; cl->pad_id = s->pad_id;
    cl->order = fx_malloc(sizeof(int) * (size_t)(s->nrows ? s->nrows : 1));
    cl->acc = fx_malloc(sizeof(float) * cl->m.train.n);
    cl->check_frozen = s->check_frozen;
    cl->pace = s->pace; cl->pace_ctx = s->pace_ctx;
    if (cl->pace && cl->m.ops == &fx_cpu_ops) {
        cl->paced_ops = fx_cpu_ops;
        cl->paced_ops.matmul = paced_matmul;
        cl->paced_ops.linear_forward = paced_linear_forward;
        cl->paced_ops.linear_backward = paced_linear_backward;
        cl->m.ops = &cl->paced_ops;
    }
    faults(cl, s->id);
    const char *f = getenv("FEDEX_FAULT");
    int fc;
    if (f && sscanf(f, "open:%d", &fc) == 1 && fc == s->id) {
        fx_seterr("injected start-up failure (FEDEX_FAULT=%s)", f);
        fx_client_close(cl);
        return NULL;
    }
    int gpu = s->device && !strcmp(s->device, "cuda");
    cl->own_residual = gpu || s->check_frozen;
    if (cl->own_residual) {
        fx_residual_copy(&cl->res, s->residual);
        size_t wmax = 1;
        for (int k = 0; k < cl->res.n; k++)
            if (cl->res.off[k + 1] - cl->res.off[k] > wmax) wmax = cl->res.off[k + 1] - cl->res.off[k];
        cl->wtmp = fx_malloc(sizeof(float) * wmax);
    }
    if (gpu) {
#ifdef FEDEX_CUDA
        char why[512];
        int prec;
        if (fx_gpu_probe(why, sizeof why) <= 0) { fx_seterr("%s", why); fx_client_close(cl); return NULL; }
        if (fx_gpu_precision_parse(s->precision, &prec) != 0 || !(cl->g = fx_gpu_create(&cl->m, s->gpu, prec))) {
            fx_client_close(cl);
            return NULL;
        }
#else
        fx_seterr("--device cuda needs the CUDA build (fedex-cuda)");
        fx_client_close(cl);
        return NULL;
#endif
    }
    return cl;
}

int fx_client_leaves(const fx_client *cl, int round) { return round == cl->gone_round; }

void fx_client_close(fx_client *cl) {
    if (!cl) return;
#ifdef FEDEX_CUDA
    if (cl->g) fx_gpu_free(cl->g);
#endif
    fx_model_free(&cl->m);
    if (cl->own_residual) fx_residual_free(&cl->res);
    free(cl->wtmp); free(cl->order); free(cl->acc);
    fx_batch_free(&cl->batch);
    free(cl);
}

/* The round's residual into its own R_acc, then its frozen weights: onto the device (GPU clients), or
 * compared bit for bit with the shared ones the server formed (check_frozen). */
static int follow_residual(fx_client *cl, const fx_residual_msg *msg, const float *payload) {
    int fresh = msg && msg->round > cl->res.round;
    if (fresh) {
        fx_residual_apply(&cl->res, &cl->m, msg, payload);
        if (cl->drift && cl->res.n) { /* one ulp of the first frozen weight */
            float W = cl->res.w0[0] + cl->res.acc[0];
            cl->res.acc[0] += nextafterf(W, INFINITY) - W;
        }
    }
    /* the device holds the weights it was created with, or the last ones uploaded: only a new message
     * changes them (fedit, ffa: never) */
    if (!fresh && !cl->check_frozen) return 0;
    for (int k = 0; k < cl->res.n; k++) {
        const fx_adapted *ad = &cl->m.ad[k];
        fx_residual_frozen(&cl->res, k, cl->wtmp);
        size_t len = (size_t)ad->out * ad->in;
#ifdef FEDEX_CUDA
        if (cl->g) {
            if (fx_gpu_set_frozen(cl->g, k, cl->wtmp) != 0) return -1;
            continue;
        }
#endif
        int same = 1;
        if (cl->m.base.bf) /* --precision bf16: the shared weight is bf16(fl(W0 + R_acc)) */
            for (size_t j = 0; same && j < len; j++) same = fx_bf16_round(cl->wtmp[j]) == cl->m.base.bf[ad->w_off + j];
        else same = memcmp(cl->wtmp, cl->m.base.data + ad->w_off, sizeof(float) * len) == 0;
        if (cl->check_frozen && !same) {
            fx_seterr("the frozen weight of %s rebuilt from the residual messages differs from the server's "
                      "(round %d)", ad->name, cl->res.round);
            return -1;
        }
    }
    return 0;
}

int fx_client_follow(fx_client *cl, const fx_residual_msg *msg, const float *payload) {
    return cl->own_residual ? follow_residual(cl, msg, payload) : 0;
}

int fx_client_round(fx_client *cl, const fx_job *job, const float *global, const fx_residual_msg *msg,
                    const float *payload, float *state, fx_report *rep) {
    fx_model *m = &cl->m;
    size_t P = m->train.n;
    double t0 = fx_now(), cpu0 = cpu_now();
    void *g = NULL;
#ifdef FEDEX_CUDA
    g = cl->g;
#endif
    if (cl->own_residual && follow_residual(cl, msg, payload) != 0) goto fail;
    uint64_t seed = (uint64_t)job->seed;
    if (g) {
#ifdef FEDEX_CUDA
        fx_gpu_set_train(cl->g, global);
        fx_gpu_adamw_reset(cl->g);
        fx_gpu_seed(cl->g, mix_seed(seed, (uint64_t)job->round, (uint64_t)job->client, 1));
#endif
    } else {
        memcpy(m->train.data, global, sizeof(float) * P);
        fx_adamw_reset(m);
        fx_rng_seed(&m->drop, mix_seed(seed, (uint64_t)job->round, (uint64_t)job->client, 1));
    }
    int bs = job->batch_size, nrows = cl->nrows;
    int mb = job->micro_batch > 0 && job->micro_batch < bs ? job->micro_batch : bs;
    int per_epoch = (nrows + bs - 1) / bs;
    int total = per_epoch * job->local_epochs;
    int warmup = (int)ceil(job->warmup_ratio * total);
    rep->samples = nrows; rep->steps_done = 0; rep->steps_total = total; rep->loss_sum = 0; rep->cpu_seconds = 0;
    rep->core_seconds = 0;
    cl->t_mark = t0;
    cl->held = cl->pace && !g ? cl->pace(cl->pace_ctx) : 0;
    if (cl->pace && !g) { paced.cl = cl; paced.rep = rep; }
    rep->samples_done = 0; rep->t_start = t0; rep->err[0] = 0;
    int step = 0;
    for (int e = 0; e < job->local_epochs; e++) {
        /* a fresh shuffle of the shard every epoch, seeded by (seed, round, client, epoch) */
        fx_rng sh;
        fx_rng_seed(&sh, mix_seed(seed, (uint64_t)job->round, (uint64_t)job->client, 100 + (uint64_t)e));
        memcpy(cl->order, cl->rows, sizeof(int) * (size_t)nrows);
        for (int i = nrows - 1; i > 0; i--) {
            int j = (int)(fx_rng_u64(&sh) % (uint64_t)(i + 1));
            int t = cl->order[i]; cl->order[i] = cl->order[j]; cl->order[j] = t;
        }
        for (int b0 = 0; b0 < nrows; b0 += bs) {
            int bn = nrows - b0 < bs ? nrows - b0 : bs;
            float lr = fx_linear_schedule(step, warmup, total, (float)job->lr);
            /* gradient of the mean loss over the batch = sum over micro-batches of (rows/bn) x theirs */
            double loss = 0;
            for (int u = 0; u < bn; u += mb) {
                int un = bn - u < mb ? bn - u : mb;
                fx_batch_fill(cl->train, cl->order + b0 + u, un, cl->pad_id, &cl->batch);
#ifdef FEDEX_CUDA
                if (g) { /* the device accumulates f x each micro-batch's gradient itself */
                    float f = (float)un / (float)bn;
                    loss += (double)f * fx_gpu_step_accum(cl->g, &cl->batch, f, u > 0);
                    continue;
                }
#endif
                pace_now(); /* the thread count may change between products; results do not */
                loss += (double)un / bn * fx_model_step(m, &cl->batch, 1, NULL);
                if (un == bn) break;
                float f = (float)un / (float)bn;
                if (u == 0) for (size_t j = 0; j < P; j++) cl->acc[j] = f * m->grad[j];
                else for (size_t j = 0; j < P; j++) cl->acc[j] += f * m->grad[j];
                if (u + un >= bn) memcpy(m->grad, cl->acc, sizeof(float) * P);
            }
            if (!isfinite(loss)) { fx_seterr("training loss is not finite (lower --lr?)"); goto fail; }
#ifdef FEDEX_CUDA
            if (g) fx_gpu_adamw(cl->g, lr, (float)job->weight_decay);
            else
#endif
            fx_adamw_update(m, lr, (float)job->weight_decay);
            step++;
            rep->loss_sum += loss;
            rep->steps_done = step;
            rep->samples_done += bn;
            if (job->round == cl->kill_round) raise(SIGKILL);
        }
    }
#ifdef FEDEX_CUDA
    if (g) fx_gpu_get_train(cl->g, state);
    else
#endif
    memcpy(state, m->train.data, sizeof(float) * P);
    rep->train_loss = step ? rep->loss_sum / step : NAN;
    double t1 = fx_now();
    rep->seconds = t1 - t0;
    if (paced.cl) rep->core_seconds += cl->held * (t1 - cl->t_mark);
    paced.cl = NULL;
    rep->cpu_seconds = cpu_now() - cpu0;
    return 0;
fail:
    paced.cl = NULL;
    snprintf(rep->err, sizeof rep->err, "%s", fx_err());
    return -1;
}
