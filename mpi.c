/* mpi.c: the transport of clients on other machines: the ranks of `mpirun -np K fedex train --transport mpi
 * ...`. Rank 0 is the server (run.c, over this transport); ranks 1..K-1 serve the clients, client c on
 * rank 1 + c mod (K-1), several per rank one after another. It moves the same things shm.c does, as
 * messages: at the start each rank's data shards (token ids, offsets, labels) and, on resume, the
 * accumulated residual; every round, by broadcast, the job, the participants, the global state and the
 * last round's residual message (factors or dense, as agg.c made it); back, point to point, each
 * participant's report and trained state. What a client does is client.c's, what the server does
 * run.c's. Built only where mpicc is found (FEDEX_MPI); elsewhere --transport mpi is refused.
 *
 * Every rank takes the server's settings (sent at the start), loads the model folder itself and forms its frozen weights fl(W0 + R_acc) from the messages
 * with agg.c's one function, so all ranks compute with the server's bits; a fingerprint of W0 (and VeRA's
 * projections) from every rank is compared with the server's before the first round.
 *
 * Faults: MPI cannot portably survive a dead rank. A rank that dies makes mpirun end the job; a rank that
 * sends nothing for --client-timeout seconds, a client's error, or Ctrl-C (mpirun signals every rank)
 * stops the server, which then aborts the job (MPI_Abort). The checkpoint is written whole after each
 * round, so the last complete round is intact whatever happens, and --resume continues it on either
 * transport. */
#include "fedex.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int fx_mpi_env_rank(void) {
    const char *names[] = {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"};
    for (int i = 0; i < 3; i++) {
        const char *v = getenv(names[i]);
        if (v && *v) return atoi(v);
    }
    return -1;
}

#ifdef FEDEX_MPI
#include <mpi.h>

int fx_mpi_built(void) { return 1; }

/* ============================================================================================
 * What travels
 * ============================================================================================
 * Every rank runs the same build (same sizes and byte order), so headers travel as bytes. */

enum { MSG_START = 1, MSG_ROUND = 2, MSG_STOP = 3 };
enum { TAG_SHARD = 1, TAG_ANSWER = 100 }; /* client c's answer: TAG_ANSWER + 2c, its state + 1 */

typedef struct {
    int32_t kind;                /* MSG_* */
    fx_job job;                  /* MSG_ROUND */
    fx_residual_msg msg;         /* the last round's residual (round 0: none) */
    int64_t payload_n;           /* floats of its payload, broadcast after the header */
    int32_t n, round0;           /* MSG_START: clients, rounds already done (resume: R_acc follows) */
    int64_t P, base_n, acc_n;    /* MSG_START: sizes every rank must agree with */
    int32_t pad_id;              /* MSG_START: the tokenizer's padding id */
} mpi_header;

typedef struct {                 /* a client rank's answer to the start */
    int32_t ok;
    uint64_t hash;               /* fx_frozen_hash of its frozen state */
    char host[64];
    char err[256];
} mpi_hello;

typedef struct {                 /* a client's answer to a round, then its state (P floats) */
    int32_t ok;
    fx_report rep;
} mpi_answer;

static int rank_of(int c, int size) { return 1 + c % (size - 1); }

static void hostname(char *buf, size_t n) {
    if (gethostname(buf, n) != 0) snprintf(buf, n, "?");
    buf[n - 1] = 0;
}

/* ============================================================================================
 * The server's side (rank 0): the fx_transport run.c drives
 * ============================================================================================ */

typedef struct {
    int size;                    /* ranks */
    int idle;                    /* every client rank waits for the next header: a clean stop is possible */
    int64_t down, up;            /* this round: bytes each client rank received, bytes sent up in all */
    int participants;
    mpi_answer *ans;             /* (n) */
    MPI_Request *req;            /* (2n): answer and state of each client */
    int *got;                    /* (n) parts of client c's answer arrived (2: whole) */
    double *heard;               /* (size) when each rank was last heard from */
} mpi_state;

static int released;             /* the client ranks were told to stop (or the job was aborted) */

static int mpi_open_run(fx_run *R) {
    mpi_state *S = fx_calloc(1, sizeof *S);
    R->tp_state = S;
    MPI_Comm_size(MPI_COMM_WORLD, &S->size);
    R->msg = fx_calloc(1, sizeof *R->msg);
    R->report = fx_calloc((size_t)R->n, sizeof *R->report);
    R->base = fx_calloc(R->base_bytes ? R->base_bytes : 1, 1);
    R->global = fx_calloc(R->P, sizeof(float));
    R->client = fx_malloc(sizeof(float *) * (size_t)R->n);
    for (int c = 0; c < R->n; c++) R->client[c] = fx_calloc(R->P, sizeof(float));
    R->payload = fx_calloc(R->payload_n ? R->payload_n : 1, sizeof(float));
    R->alive = fx_calloc((size_t)R->n, sizeof(int));
    S->ans = fx_calloc((size_t)R->n, sizeof *S->ans);
    S->req = fx_malloc(sizeof(MPI_Request) * 2 * (size_t)R->n);
    for (int i = 0; i < 2 * R->n; i++) S->req[i] = MPI_REQUEST_NULL;
    S->got = fx_calloc((size_t)R->n, sizeof(int));
    S->heard = fx_calloc((size_t)S->size, sizeof(double));
    return 0;
}

static void mpi_close_run(fx_run *R) {
    mpi_state *S = R->tp_state;
    if (!S) return;
    for (int c = 0; R->client && c < R->n; c++) free(R->client[c]);
    free(R->client); free(R->msg); free(R->report); free(R->base); free(R->global); free(R->payload); free(R->alive);
    free(S->ans); free(S->req); free(S->got); free(S->heard);
    free(S);
    R->tp_state = NULL;
    R->client = NULL; R->alive = NULL; R->msg = NULL; R->report = NULL; R->base = NULL; R->global = NULL;
    R->payload = NULL;
}

static void bcast_stop(void) {
    mpi_header h = {.kind = MSG_STOP};
    MPI_Bcast(&h, (int)sizeof h, MPI_BYTE, 0, MPI_COMM_WORLD);
    released = 1;
}

/* The rows of the clients of rank RK: their ids, row counts, then the rows' tokens, offsets, labels. */
static void send_shards(const fx_run *R, int rk, int size) {
    int32_t nmine = 0;
    int64_t nrows = 0, ntok = 0;
    for (int c = 0; c < R->n; c++)
        if (rank_of(c, size) == rk) {
            nmine++;
            nrows += R->counts[c];
            for (int i = 0; i < R->counts[c]; i++) {
                int row = R->rows[c][i];
                ntok += (int64_t)(R->train.off[row + 1] - R->train.off[row]);
            }
        }
    int32_t *ids = fx_malloc(sizeof(int32_t) * (size_t)(2 * nmine + 1)), *cnt = ids + nmine;
    int32_t *tok = fx_malloc(sizeof(int32_t) * (size_t)(ntok + 1));
    uint64_t *off = fx_malloc(sizeof(uint64_t) * (size_t)(nrows + 1));
    float *lab = fx_malloc(sizeof(float) * (size_t)(nrows + 1));
    int k = 0;
    int64_t r = 0, t = 0;
    off[0] = 0;
    for (int c = 0; c < R->n; c++) {
        if (rank_of(c, size) != rk) continue;
        ids[k] = c; cnt[k] = R->counts[c]; k++;
        for (int i = 0; i < R->counts[c]; i++) {
            int row = R->rows[c][i];
            size_t a = R->train.off[row], b = R->train.off[row + 1];
            memcpy(tok + t, R->train.ids + a, sizeof(int32_t) * (b - a));
            t += (int64_t)(b - a);
            lab[r] = R->train.labels[row];
            off[++r] = (uint64_t)t;
        }
    }
    int64_t sizes[3] = {nmine, nrows, ntok};
    MPI_Send(sizes, 3, MPI_INT64_T, rk, TAG_SHARD, MPI_COMM_WORLD);
    MPI_Send(ids, 2 * nmine, MPI_INT32_T, rk, TAG_SHARD, MPI_COMM_WORLD);
    MPI_Send(tok, (int)ntok, MPI_INT32_T, rk, TAG_SHARD, MPI_COMM_WORLD);
    MPI_Send(off, (int)(nrows + 1), MPI_UINT64_T, rk, TAG_SHARD, MPI_COMM_WORLD);
    MPI_Send(lab, (int)nrows, MPI_FLOAT, rk, TAG_SHARD, MPI_COMM_WORLD);
    free(ids); free(tok); free(off); free(lab);
}

/* The start: sizes and (resume) R_acc to every rank, each rank's shards, then every rank's fingerprint of
 * its frozen state against the server's. A refused start tells the ranks to stop. */
static int mpi_start(fx_run *R, int threads) {
    (void)threads; /* each rank takes its host's share itself (fx_mpi_train) */
    mpi_state *S = R->tp_state;
    size_t acc_n = R->round0 > 0 ? R->res.off[R->res.n] : 0;
    mpi_header h = {.kind = MSG_START, .n = R->n, .round0 = R->round0, .P = (int64_t)R->P,
                    .base_n = (int64_t)R->base_n, .acc_n = (int64_t)acc_n, .pad_id = R->pad_id};
    MPI_Bcast(&h, (int)sizeof h, MPI_BYTE, 0, MPI_COMM_WORLD);
    /* the run's settings: the ranks compute with the server's (on --resume, those saved in its folder) */
    size_t slen;
    char *text = fx_settings_text(&R->cfg, &slen);
    int64_t sl = (int64_t)slen;
    MPI_Bcast(&sl, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
    MPI_Bcast(text, (int)sl, MPI_CHAR, 0, MPI_COMM_WORLD);
    free(text);
    if (acc_n) MPI_Bcast(R->res.acc, (int)acc_n, MPI_FLOAT, 0, MPI_COMM_WORLD);
    for (int rk = 1; rk < S->size; rk++) send_shards(R, rk, S->size);
    mpi_hello mine = {.ok = 1, .hash = fx_frozen_hash(&R->srv, &R->res)};
    hostname(mine.host, sizeof mine.host);
    mpi_hello *all = fx_calloc((size_t)S->size, sizeof *all);
    MPI_Gather(&mine, (int)sizeof mine, MPI_BYTE, all, (int)sizeof mine, MPI_BYTE, 0, MPI_COMM_WORLD);
    S->idle = 1;
    int rc = 0;
    for (int rk = 1; rk < S->size && rc == 0; rk++) {
        mpi_hello *o = &all[rk];
        o->host[sizeof o->host - 1] = 0; o->err[sizeof o->err - 1] = 0;
        if (!o->ok) {
            fx_seterr("rank %d (host %s) cannot run its clients: %s", rk, o->host, o->err);
            rc = -1;
        } else if (o->hash != mine.hash) {
            fx_seterr("rank %d (host %s) holds other frozen weights than the server (host %s): fingerprint "
                      "%016llx, the server's %016llx. Exact aggregation needs the same W0 everywhere: give every "
                      "host the same model folder (the same model.safetensors and config.json) at the --model path",
                      rk, o->host, mine.host, (unsigned long long)o->hash, (unsigned long long)mine.hash);
            rc = -1;
        }
    }
    free(all);
    if (rc != 0) { bcast_stop(); return -1; }
    for (int c = 0; c < R->n; c++) R->alive[c] = 1;
    printf("mpi: %d client rank%s on %d client%s, frozen state fingerprint %016llx on every rank\n", S->size - 1,
           S->size > 2 ? "s" : "", R->n, R->n > 1 ? "s" : "", (unsigned long long)mine.hash);
    return 0;
}

static int mpi_send_round(fx_run *R, const fx_job *job) {
    mpi_state *S = R->tp_state;
    mpi_header h = {.kind = MSG_ROUND, .job = *job, .msg = *R->msg};
    if (R->msg->round > 0) h.payload_n = (int64_t)((fx_residual_msg_bytes(&R->srv, R->msg) - sizeof *R->msg) / sizeof(float));
    uint8_t *sel = fx_malloc((size_t)R->n);
    S->participants = 0;
    for (int c = 0; c < R->n; c++) { sel[c] = (uint8_t)(R->selected[c] != 0); S->participants += sel[c]; }
    MPI_Bcast(&h, (int)sizeof h, MPI_BYTE, 0, MPI_COMM_WORLD);
    MPI_Bcast(sel, R->n, MPI_BYTE, 0, MPI_COMM_WORLD);
    MPI_Bcast(R->global, (int)R->P, MPI_FLOAT, 0, MPI_COMM_WORLD);
    if (h.payload_n) MPI_Bcast(R->payload, (int)h.payload_n, MPI_FLOAT, 0, MPI_COMM_WORLD);
    S->down = (int64_t)sizeof h + R->n + 4 * (int64_t)R->P + 4 * h.payload_n;
    S->up = 0;
    S->idle = 0;
    double now = fx_now();
    for (int rk = 0; rk < S->size; rk++) S->heard[rk] = now;
    for (int c = 0; c < R->n; c++) {
        S->got[c] = 0;
        if (!sel[c]) continue;
        int rk = rank_of(c, S->size);
        MPI_Irecv(&S->ans[c], (int)sizeof S->ans[c], MPI_BYTE, rk, TAG_ANSWER + 2 * c, MPI_COMM_WORLD, &S->req[2 * c]);
        MPI_Irecv(R->client[c], (int)R->P, MPI_FLOAT, rk, TAG_ANSWER + 2 * c + 1, MPI_COMM_WORLD, &S->req[2 * c + 1]);
    }
    free(sel);
    return 0;
}

/* Polls the round's answers (never blocks inside MPI, so Ctrl-C and the timeout are seen). */
static int mpi_collect(fx_run *R, int round, int *done) {
    mpi_state *S = R->tp_state;
    int n2 = 2 * R->n, left = 0;
    int *idx = fx_malloc(sizeof(int) * (size_t)n2);
    for (int c = 0; c < R->n; c++) { done[c] = 0; left += R->selected[c] ? 2 : 0; }
    int rc = 0;
    while (left > 0) {
        if (fx_run_interrupted()) { rc = -1; break; }
        int outc = 0;
        MPI_Testsome(n2, S->req, &outc, idx, MPI_STATUSES_IGNORE);
        double now = fx_now();
        for (int i = 0; outc != MPI_UNDEFINED && i < outc; i++) {
            int c = idx[i] / 2;
            left--;
            S->heard[rank_of(c, S->size)] = now;
            if (++S->got[c] < 2) continue;
            mpi_answer *a = &S->ans[c];
            a->rep.err[sizeof a->rep.err - 1] = 0;
            R->report[c] = a->rep;
            if (!a->ok) {
                fx_seterr("client %d (rank %d) failed in round %d: %s", c, rank_of(c, S->size), round, a->rep.err);
                rc = -1;
                break;
            }
            S->up += (int64_t)sizeof *a + 4 * (int64_t)R->P;
            done[c] = 1;
            fx_run_client_done(R, round, c, 0);
        }
        if (rc != 0) break;
        if (outc == 0 || outc == MPI_UNDEFINED) {
            for (int c = 0; c < R->n; c++) {
                int rk = rank_of(c, S->size);
                if (!R->selected[c] || S->got[c] == 2 || now - S->heard[rk] < R->cfg.client_timeout) continue;
                fx_seterr("rank %d (client %d) sent nothing for %.0f s (--client-timeout): unreachable or stuck", rk, c,
                          now - S->heard[rk]);
                rc = -1;
                break;
            }
            if (rc != 0) break;
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
    free(idx);
    if (rc == 0) S->idle = 1;
    return rc;
}

/* A clean stop while the client ranks wait for the next round; otherwise (an error or an interrupt in a
 * round, some rank busy or gone) the whole job is aborted, after the server's last checkpoint. */
static void mpi_stop(fx_run *R, int abort) {
    mpi_state *S = R->tp_state;
    if (released || !S) return;
    if (abort || !S->idle) {
        fflush(stdout); fflush(stderr);
        released = 1;
        MPI_Abort(MPI_COMM_WORLD, fx_run_interrupted() ? 130 : 1);
    }
    bcast_stop();
}

static double mpi_memory_mb(const fx_run *R) { (void)R; return NAN; /* the ranks' memory is on their hosts */ }

static void mpi_bytes(const fx_run *R, int64_t *up, int64_t *down) {
    const mpi_state *S = R->tp_state;
    *down = S->down;
    *up = S->participants ? S->up / S->participants : 0;
}

const fx_transport fx_transport_mpi = {"mpi", mpi_open_run, mpi_start, mpi_send_round, mpi_collect, mpi_stop,
                                       mpi_close_run, mpi_memory_mb, mpi_bytes};

/* ============================================================================================
 * A client rank (1..K-1): its model, its shards, its clients one after another every round
 * ============================================================================================ */

static int recv_shards(fx_dataset *d, const fx_task *task, int32_t **ids, int **rows, int *nmine) {
    int64_t sizes[3];
    MPI_Recv(sizes, 3, MPI_INT64_T, 0, TAG_SHARD, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    *nmine = (int)sizes[0];
    int64_t nrows = sizes[1], ntok = sizes[2];
    *ids = fx_malloc(sizeof(int32_t) * (size_t)(2 * sizes[0] + 1));
    MPI_Recv(*ids, (int)(2 * sizes[0]), MPI_INT32_T, 0, TAG_SHARD, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    memset(d, 0, sizeof *d);
    d->task = task;
    d->n = (int)nrows;
    d->ids = fx_malloc(sizeof(int32_t) * (size_t)(ntok + 1));
    d->off = fx_malloc(sizeof(size_t) * (size_t)(nrows + 1));
    d->labels = fx_malloc(sizeof(float) * (size_t)(nrows + 1));
    uint64_t *off = fx_malloc(sizeof(uint64_t) * (size_t)(nrows + 1));
    MPI_Recv(d->ids, (int)ntok, MPI_INT32_T, 0, TAG_SHARD, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    MPI_Recv(off, (int)(nrows + 1), MPI_UINT64_T, 0, TAG_SHARD, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    MPI_Recv(d->labels, (int)nrows, MPI_FLOAT, 0, TAG_SHARD, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    for (int64_t i = 0; i <= nrows; i++) d->off[i] = (size_t)off[i];
    free(off);
    /* client k's rows are the next counts[k] rows of the rank's dataset, in the server's order */
    int *all = fx_malloc(sizeof(int) * (size_t)(nrows + 1));
    for (int64_t i = 0; i < nrows; i++) all[i] = (int)i;
    *rows = all;
    return 0;
}

/* --client-gpus under MPI: the device of each client rank on a host, by its place among that host's client
 * ranks (one number: all of them). */
static int local_gpu(const char *list, int local) {
    if (!list) return 0;
    int k = 0, last = 0;
    for (const char *p = list; *p;) {
        char *end;
        long d = strtol(p, &end, 10);
        if (end == p) break;
        last = (int)d;
        if (k++ == local) return last;
        p = *end ? end + 1 : end;
    }
    return k == 1 ? last : -1;
}

static int client_rank(int rank, int local, int threads) {
    mpi_header h;
    MPI_Bcast(&h, (int)sizeof h, MPI_BYTE, 0, MPI_COMM_WORLD);
    if (h.kind != MSG_START) return 0; /* the server stopped before the first round */
    int64_t sl;
    MPI_Bcast(&sl, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
    char *text = fx_malloc((size_t)sl + 1);
    MPI_Bcast(text, (int)sl, MPI_CHAR, 0, MPI_COMM_WORLD);
    text[sl] = 0;
    fx_settings server;
    fx_json sj = {0};
    const fx_settings *cfg = &server;
    int bad_settings = fx_settings_parse(text, (size_t)sl, "the server's settings", &server, &sj) != 0;
    free(text);
    float *acc = NULL;
    if (h.acc_n) {
        acc = fx_malloc(sizeof(float) * (size_t)h.acc_n);
        MPI_Bcast(acc, (int)h.acc_n, MPI_FLOAT, 0, MPI_COMM_WORLD);
    }
    fx_set_threads(threads);
    fx_config mc;
    fx_adapter_cfg ac;
    const fx_task *task = NULL;
    fx_model m;
    int have_model = 0;
    fx_residual res = {0};
    fx_client *cl = NULL;
    mpi_hello hello = {.ok = 0};
    hostname(hello.host, sizeof hello.host);
    fx_dataset d = {0};
    int32_t *ids = NULL;
    int *rows = NULL, nmine = 0;
    if (bad_settings || fx_settings_model(cfg, &mc, &task) != 0) task = NULL; /* said in the answer below */
    recv_shards(&d, task, &ids, &rows, &nmine);
    const char *fault = getenv("FEDEX_FAULT");
    int frank;
    if (!task) {
        snprintf(hello.err, sizeof hello.err, "%s", fx_err());
    } else {
        fx_settings_adapter(cfg, &ac);
        if (fx_model_create(&m, &mc, &ac, NULL) != 0 || (have_model = 1, fx_run_init_weights(cfg, &m)) != 0) {
            snprintf(hello.err, sizeof hello.err, "%s", fx_err());
        } else if ((int64_t)m.train.n != h.P || (int64_t)fx_base_numel(&mc) != h.base_n) {
            snprintf(hello.err, sizeof hello.err, "its model has %zu trainable and %zu frozen values, the server's %lld "
                     "and %lld: not the same model or settings", m.train.n, fx_base_numel(&mc), (long long)h.P,
                     (long long)h.base_n);
        } else {
            /* FEDEX_FAULT=frozen:RANK (tests): this rank's W0 is off by one ulp in one weight */
            if (fault && sscanf(fault, "frozen:%d", &frank) == 1 && frank == rank)
                m.base.data[0] = nextafterf(m.base.data[0], INFINITY);
            fx_residual_init(&res, &m);
            hello.hash = fx_frozen_hash(&m, &res);
            if (acc && (size_t)h.acc_n == res.off[res.n]) memcpy(res.acc, acc, sizeof(float) * (size_t)h.acc_n);
            res.round = h.round0;
            fx_residual_set_frozen(&res, &m);
            const char *check = getenv("FEDEX_CHECK_FROZEN");
            int gpu = local_gpu(cfg->client_gpus, local);
            fx_client_setup s = {.id = nmine ? ids[0] : 0, .mc = &mc, .ac = &ac, .base = m.base.data, .residual = &res,
                                 .seed = (uint64_t)cfg->seed, .train = &d, .rows = rows, .nrows = nmine ? ids[nmine] : 0,
                                 .pad_id = h.pad_id, .device = cfg->device, .precision = cfg->precision, .gpu = gpu < 0 ? 0 : gpu,
                                 .check_frozen = check && !strcmp(check, "1")};
            if (gpu < 0) snprintf(hello.err, sizeof hello.err, "--client-gpus '%s' names no device for client rank %d "
                                  "of this host", cfg->client_gpus, local);
            else if (!(cl = fx_client_open(&s))) snprintf(hello.err, sizeof hello.err, "%s", fx_err());
            else hello.ok = 1;
        }
    }
    free(acc);
    MPI_Gather(&hello, (int)sizeof hello, MPI_BYTE, NULL, 0, MPI_BYTE, 0, MPI_COMM_WORLD);
    float *global = fx_malloc(sizeof(float) * (size_t)(h.P ? h.P : 1)), *state = fx_malloc(sizeof(float) * (size_t)(h.P ? h.P : 1));
    float *payload = NULL;
    size_t payload_cap = 0;
    uint8_t *sel = fx_malloc((size_t)(h.n ? h.n : 1));
    int n = h.n;
    for (;;) {
        mpi_header r;
        MPI_Bcast(&r, (int)sizeof r, MPI_BYTE, 0, MPI_COMM_WORLD);
        if (r.kind != MSG_ROUND) break;
        MPI_Bcast(sel, n, MPI_BYTE, 0, MPI_COMM_WORLD);
        MPI_Bcast(global, (int)h.P, MPI_FLOAT, 0, MPI_COMM_WORLD);
        if ((size_t)r.payload_n > payload_cap) {
            payload_cap = (size_t)r.payload_n;
            payload = fx_realloc(payload, sizeof(float) * payload_cap);
        }
        if (r.payload_n) MPI_Bcast(payload, (int)r.payload_n, MPI_FLOAT, 0, MPI_COMM_WORLD);
        if (!cl) continue; /* the server refused the start and is stopping */
        /* the rank's frozen weights follow every round's residual, whether its clients take part or not */
        if (r.msg.round > res.round) {
            fx_residual_apply(&res, &m, &r.msg, payload);
            fx_residual_set_frozen(&res, &m);
        }
        int follow = fx_client_follow(cl, &r.msg, payload);
        int at = 0;
        for (int k = 0; k < nmine; k++) {
            int c = ids[k], cnt = ids[nmine + k];
            int first = at;
            at += cnt;
            if (c < 0 || c >= n || !sel[c]) continue;
            fx_client_set_shard(cl, c, rows + first, cnt);
            fx_job job = r.job;
            job.client = c;
            mpi_answer a = {.ok = 0};
            if (follow == 0 && fx_client_round(cl, &job, global, &r.msg, payload, state, &a.rep) == 0) a.ok = 1;
            else if (follow != 0) snprintf(a.rep.err, sizeof a.rep.err, "%s", fx_err());
            MPI_Send(&a, (int)sizeof a, MPI_BYTE, 0, TAG_ANSWER + 2 * c, MPI_COMM_WORLD);
            MPI_Send(state, (int)h.P, MPI_FLOAT, 0, TAG_ANSWER + 2 * c + 1, MPI_COMM_WORLD);
        }
    }
    fx_client_close(cl);
    if (res.off) fx_residual_free(&res);
    if (have_model) fx_model_free(&m);
    fx_dataset_free(&d);
    free(ids); free(rows); free(global); free(state); free(payload); free(sel);
    fx_json_free(&sj);
    return 0;
}

/* ============================================================================================
 * fedex train --transport mpi
 * ============================================================================================ */

int fx_mpi_train(fx_run *R) {
    int provided, rank, size;
    if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) {
        fprintf(stderr, "fedex train: MPI_Init failed\n");
        return 1;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    /* the ranks on this host share its cores */
    MPI_Comm node;
    int local = 0, nlocal = 1;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
    MPI_Comm_rank(node, &local);
    MPI_Comm_size(node, &nlocal);
    int lowest; /* 0 when the server runs on this host: it comes first among its ranks */
    MPI_Allreduce(&rank, &lowest, 1, MPI_INT, MPI_MIN, node);
    MPI_Comm_free(&node);
    int client_local = lowest == 0 ? local - 1 : local; /* this rank's place among the host's client ranks */
    int cores = R->cfg.threads > 0 ? R->cfg.threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    int threads = cores / nlocal > 0 ? cores / nlocal : 1;
    int status = 0;
    /* rank 0's settings decide (a client rank's may be the defaults, on --resume) */
    int too_many = size - 1 > R->cfg.num_clients;
    MPI_Bcast(&too_many, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (size < 2 || too_many) {
        if (rank == 0)
            fprintf(stderr, "fedex train: --transport mpi runs as %s (rank 0 the server, every other rank clients): "
                    "give mpirun -np between 2 and --num-clients + 1 (%d)\n",
                    size < 2 ? "the ranks of `mpirun -np K fedex train --transport mpi ...`, K >= 2"
                             : "the ranks of mpirun, at most one client rank per client", R->cfg.num_clients + 1);
        MPI_Finalize();
        return 2;
    }
    if (rank == 0) {
        R->tp = &fx_transport_mpi;
        R->cfg.threads = threads;
        status = fx_run_federated(R);
        if (!released) bcast_stop(); /* it stopped before the first round: the ranks wait for the start */
    } else {
        /* a client rank ends with the job: mpirun's signals take their default course */
        status = client_rank(rank, client_local, threads);
    }
    MPI_Finalize();
    return status;
}

#else /* no MPI in this build */

int fx_mpi_built(void) { return 0; }

int fx_mpi_train(fx_run *R) {
    (void)R;
    fprintf(stderr, "fedex train: --transport mpi needs fedex built with MPI, and mpicc was not found when it was "
            "built: install an MPI (Debian: apt-get install openmpi-bin libopenmpi-dev) and run make again\n");
    return 2;
}

#endif
