/* shm.c: the transport of clients on this machine: forked processes sharing one POSIX shared-memory
 * segment, a job pipe down and an answer pipe up per client. It moves jobs and answers and notices dead
 * clients; what a client does in a round is client.c's, what the server does with the results run.c's.
 *
 * The segment holds everything that moves between the processes:
 *
 *   [ residual message | reports (N) | training flags (N) | base weights | global state | client states (N) | payload ]
 *
 * The frozen base weights live there once, so N clients cost one model plus N x (adapters, optimiser
 * state, activations). It is unlinked right after it is mapped: forked clients inherit the mapping, and
 * nothing is left in /dev/shm whatever happens to the processes. The server writes a job into a
 * client's pipe; the client answers one byte when its state is in its slot ('o') or it failed ('e',
 * the reason in its report). A client that dies closes its pipe, so the server sees end-of-file at once
 * (never a timeout). Nothing here may start an OpenMP team (nor a CUDA context) before the fork:
 * neither survives fork().
 *
 * Cores follow the work: the server raises a client's training flag before it sends the round's job and
 * the client lowers it when it has trained; before each step a client counts the flags raised and takes
 * its share of the cores (fx_thread_share), so the threads of a client that finished early go to those
 * still training. The thread count changes no result: every product and reduction gives the same bits
 * for any count (fx_matmul splits C, never a sum; tests/test_threads checks a training step).
 * FEDEX_FIXED_THREADS=1 keeps each client at cores / N threads for the whole run, as a comparison. */
#include "fedex.h"

#include <errno.h>
#include <stdatomic.h>
#include <math.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    void *seg; size_t len;
    pid_t *pid;
    int *cmd_fd, *res_fd;            /* the server's ends: jobs down, answers up */
    int *pending;                    /* sent this round's job, not answered yet */
    int64_t *steps_seen;             /* each client's steps when last seen to move ... */
    double *since;                   /* ... and since when (fx_now()), for --client-timeout */
    atomic_int *training;            /* (n) in the segment: 1 from the job sent to the round trained */
} shm_state;

/* A client's view of the training flags, for its pace hook. */
typedef struct {
    atomic_int *training;
    int n, me, cores, threads;       /* threads: the count it set last */
    int fixed;                       /* FEDEX_FIXED_THREADS=1: THREADS throughout */
} shm_pace;

/* How long a client that should be going (its pipe closed, or asked to stop) may take before it is killed. */
#define GRACE_S 2.0
#define STOP_GRACE_S 3.0 /* all clients together, once they were asked to stop (or signalled) */

/* Waits for PID for up to GRACE seconds, then kills it (SIGKILL also ends a stopped process). Returns
 * waitpid's result, the status in *ST. */
static pid_t reap_within(pid_t pid, double grace, int *st) {
    double t0 = fx_now();
    pid_t w;
    while ((w = waitpid(pid, st, WNOHANG)) == 0) {
        if (fx_now() - t0 > grace) { kill(pid, SIGKILL); return waitpid(pid, st, 0); }
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
    return w;
}

/* Reaps a client whose pipe closed (it lives on past GRACE_S: killed) and says how it ended. */
/* Reaps PID and says how it ended; returns the signal that killed it, or 0. */
static int describe_death(pid_t pid, char *buf, size_t n) {
    int st = 0;
    pid_t w = reap_within(pid, GRACE_S, &st);
    if (w < 0) snprintf(buf, n, "vanished");
    else if (WIFSIGNALED(st)) snprintf(buf, n, "killed by signal %d (%s)", WTERMSIG(st), strsignal(WTERMSIG(st)));
    else snprintf(buf, n, "exited with status %d", WEXITSTATUS(st));
    return w > 0 && WIFSIGNALED(st) ? WTERMSIG(st) : 0;
}

static size_t align64(size_t x) { return (x + 63) & ~(size_t)63; }

/* ============================================================================================
 * The segment
 * ============================================================================================ */

static int shm_open_run(fx_run *R) {
    shm_state *S = fx_calloc(1, sizeof *S);
    R->tp_state = S;
    size_t off_rep = align64(sizeof(fx_residual_msg));
    size_t off_flags = align64(off_rep + sizeof(fx_report) * (size_t)R->n);
    size_t off_base = align64(off_flags + sizeof(atomic_int) * (size_t)R->n);
    size_t off_glob = align64(off_base + R->base_bytes);
    size_t off_cl = align64(off_glob + sizeof(float) * R->P);
    size_t cl_stride = align64(sizeof(float) * R->P);
    size_t off_pay = off_cl + cl_stride * (size_t)R->n;
    S->len = align64(off_pay + sizeof(float) * (R->payload_n ? R->payload_n : 1));
    char name[64];
    static int counter;
    snprintf(name, sizeof name, "/fedex-%d-%d", (int)getpid(), counter++);
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) { fx_seterr("shm_open %s: %s", name, strerror(errno)); return -1; }
    /* The pages are reserved now: a segment larger than what /dev/shm has free would otherwise map fine
     * and kill the first process that touches a missing page with SIGBUS, minutes into the run. */
    int err = ftruncate(fd, (off_t)S->len) != 0 ? errno : posix_fallocate(fd, 0, (off_t)S->len);
    S->seg = err == 0 ? mmap(NULL, S->len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) : MAP_FAILED;
    if (err == 0 && S->seg == MAP_FAILED) err = errno;
    shm_unlink(name); /* mapped here and, through fork, in every client: the name is no longer needed */
    close(fd);
    if (S->seg == MAP_FAILED) {
        S->seg = NULL;
        struct statvfs v;
        double avail = statvfs("/dev/shm", &v) == 0 ? (double)v.f_bavail * v.f_frsize / 1e6 : NAN;
        if (err == ENOSPC || err == EFBIG)
            fx_seterr("shared memory: the run needs %.1f MB in /dev/shm, which has %.1f MB free: give it more "
                      "(docker run --shm-size=%.0fm, or mount -o remount,size=%.0fm /dev/shm) or run fewer clients",
                      S->len / 1e6, avail, S->len / 1e6 * 1.25 + 64, S->len / 1e6 * 1.25 + 64);
        else
            fx_seterr("shared memory of %.1f MB: %s", S->len / 1e6, strerror(err));
        return -1;
    }
    char *s = S->seg;
    R->msg = (fx_residual_msg *)s;
    R->report = (fx_report *)(s + off_rep);
    S->training = (atomic_int *)(s + off_flags);
    for (int i = 0; i < R->n; i++) atomic_init(&S->training[i], 0);
    R->base = (float *)(s + off_base);
    R->global = (float *)(s + off_glob);
    R->client = fx_malloc(sizeof(float *) * (size_t)R->n);
    for (int i = 0; i < R->n; i++) R->client[i] = (float *)(s + off_cl + cl_stride * (size_t)i);
    R->payload = (float *)(s + off_pay);
    R->alive = fx_calloc((size_t)R->n, sizeof(int));
    S->pid = fx_calloc((size_t)R->n, sizeof(pid_t));
    S->cmd_fd = fx_calloc((size_t)R->n, sizeof(int));
    S->res_fd = fx_calloc((size_t)R->n, sizeof(int));
    S->pending = fx_calloc((size_t)R->n, sizeof(int));
    S->steps_seen = fx_calloc((size_t)R->n, sizeof(int64_t));
    S->since = fx_calloc((size_t)R->n, sizeof(double));
    return 0;
}

static void shm_close_run(fx_run *R) {
    shm_state *S = R->tp_state;
    if (!S) return;
    if (S->seg) munmap(S->seg, S->len);
    free(R->client); free(R->alive);
    free(S->pid); free(S->cmd_fd); free(S->res_fd); free(S->pending); free(S->steps_seen); free(S->since);
    free(S);
    R->tp_state = NULL;
    R->client = NULL; R->alive = NULL;
}

/* ============================================================================================
 * A client's process
 * ============================================================================================ */

int fx_thread_share(int cores, int running, int rank) {
    if (running <= 0) return cores > 0 ? cores : 1;
    int t = cores / running + (rank < cores % running);
    return t > 0 ? t : 1;
}

/* Before each step: this client's share of the cores among the clients still training (itself one).
 * Returns the cores it holds: its threads, scaled down when all the clients' threads outnumber the cores
 * (more clients than cores; fixed threads). */
static double pace(void *ctx) {
    shm_pace *p = ctx;
    int running = 0, rank = 0;
    for (int c = 0; c < p->n; c++)
        if (atomic_load_explicit(&p->training[c], memory_order_relaxed)) { running++; rank += c < p->me; }
    int total = p->threads * running; /* fixed: every one at THREADS */
    if (!p->fixed) {
        int t = fx_thread_share(p->cores, running, rank);
        if (t != p->threads) { fx_set_threads(t); p->threads = t; }
        total = running < p->cores ? p->cores : running;
    }
    return total > p->cores ? (double)p->threads * p->cores / total : p->threads;
}

static _Noreturn void client_process(fx_run *R, int c, int in, int out, int threads, int cores, pid_t server) {
    /* A client dies with its server, whatever kills the server (kill -9 included): the kernel sends
     * SIGKILL when the parent goes; if it went before this line, the parent is no longer SERVER. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != server) _exit(1);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    fx_set_threads(threads);
    fx_report *rep = &R->report[c];
    fx_client_setup setup;
    fx_run_client_setup(R, c, &setup);
    const char *fixed = getenv("FEDEX_FIXED_THREADS");
    shm_pace pc = {((shm_state *)R->tp_state)->training, R->n, c, cores, threads, fixed && !strcmp(fixed, "1")};
    setup.pace = pace;
    setup.pace_ctx = &pc;
    fx_client *cl = fx_client_open(&setup);
    char answer = 'e';
    if (!cl) {
        snprintf(rep->err, sizeof rep->err, "%s", fx_err());
        if (write(out, &answer, 1) != 1) { /* the server is gone; nothing to tell */ }
        _exit(1);
    }
    for (;;) {
        fx_job job;
        ssize_t k = read(in, &job, sizeof job);
        if (k != (ssize_t)sizeof job || job.round < 0) _exit(0);
        int rc = job.local_epochs == 0 ? fx_client_follow(cl, R->msg, R->payload)
                                       : fx_client_round(cl, &job, R->global, R->msg, R->payload, R->client[c], rep);
        if (rc != 0 && job.local_epochs == 0) snprintf(rep->err, sizeof rep->err, "%s", fx_err());
        atomic_store(&pc.training[c], 0); /* its cores go to the others from their next step */
        answer = rc == 0 ? 'o' : 'e';
        if (write(out, &answer, 1) != 1 || rc != 0) _exit(1);
        if (fx_client_leaves(cl, job.round)) _exit(0);
    }
}

static int shm_start(fx_run *R, int threads_total) {
    shm_state *S = R->tp_state;
    int per = threads_total / R->n > 0 ? threads_total / R->n : 1;
    pid_t server = getpid();
    for (int c = 0; c < R->n; c++) {
        int cmd[2], res[2];
        if (pipe(cmd) != 0 || pipe(res) != 0) { fx_seterr("pipe: %s", strerror(errno)); return -1; }
        fflush(stdout); fflush(stderr);
        pid_t p = fork();
        if (p < 0) { fx_seterr("fork: %s (client %d)", strerror(errno), c); return -1; }
        if (p == 0) {
            /* keep only this client's ends, so that every other pipe sees EOF when its owner dies */
            for (int o = 0; o < c; o++) { close(S->cmd_fd[o]); close(S->res_fd[o]); }
            close(cmd[1]); close(res[0]);
            client_process(R, c, cmd[0], res[1], per, threads_total, server);
        }
        close(cmd[0]); close(res[1]);
        S->pid[c] = p; S->cmd_fd[c] = cmd[1]; S->res_fd[c] = res[0]; R->alive[c] = 1;
    }
    R->client_cores = threads_total;
    return 0;
}

/* ============================================================================================
 * Rounds
 * ============================================================================================ */

/* Client C is gone (end-of-file on its pipe, or a failed write to it): reaped and reported. -1 when that
 * must stop the run (--strict), or when it left an error message (it failed rather than died). */
static int client_gone(fx_run *R, int c, int round, const char *when) {
    shm_state *S = R->tp_state;
    char ch = 0;
    int failed = read(S->res_fd[c], &ch, 1) == 1 && ch == 'e';
    char why[160];
    int sig = describe_death(S->pid[c], why, sizeof why);
    R->alive[c] = 0;
    S->pending[c] = 0;
    atomic_store(&S->training[c], 0);
    close(S->cmd_fd[c]); close(S->res_fd[c]);
    /* A client killed by SIGINT was hit by the terminal's Ctrl-C, which signals the whole process group:
     * the server's own copy may not have arrived yet, so it counts as the interrupt, not as a death. */
    if (sig == SIGINT) { fx_run_interrupt(SIGINT); return -1; }
    if (failed) { fx_seterr("client %d failed %s round %d: %s", c, when, round, R->report[c].err); return -1; }
    if (fx_run_interrupted()) return -1; /* Ctrl-C reached the clients too: the run stops, no death to report */
    fprintf(stderr, "fedex: client %d (pid %d) died %s round %d: %s\n", c, (int)S->pid[c], when, round, why);
    if (R->cfg.strict) {
        fx_seterr("client %d died %s round %d (--strict): stopping; the last complete round is saved", c, when, round);
        return -1;
    }
    return 0;
}

static int shm_send_round(fx_run *R, const fx_job *job) {
    shm_state *S = R->tp_state;
    /* every flag before any job, so that the first to start does not take the cores of those to come */
    for (int c = 0; c < R->n; c++) atomic_store(&S->training[c], R->alive[c] && R->selected[c] && job->local_epochs > 0);
    for (int c = 0; c < R->n; c++) {
        fx_job j = *job;
        j.client = c;
        S->pending[c] = 0;
        if (!R->alive[c]) continue;
        if (!R->selected[c]) j.local_epochs = 0; /* it sits the round out, but follows the residual */
        if (write(S->cmd_fd[c], &j, sizeof j) == (ssize_t)sizeof j) { S->pending[c] = 1; continue; }
        if (client_gone(R, c, job->round, "before") != 0) return -1;
    }
    return 0;
}


static int shm_collect(fx_run *R, int round, int *done) {
    shm_state *S = R->tp_state;
    int *pending = S->pending;
    int tty = fx_run_live(), drawn = 0;
    for (int c = 0; c < R->n; c++) { done[c] = 0; S->since[c] = 0; }
    for (;;) {
        struct pollfd pf[256];
        int map[256], np = 0;
        for (int c = 0; c < R->n; c++)
            if (pending[c]) { pf[np].fd = S->res_fd[c]; pf[np].events = POLLIN; map[np++] = c; }
        if (fx_run_interrupted()) return -1;
        if (np == 0) break;
        fx_run_progress(R, round, pending, tty, &drawn);
        int r = poll(pf, (nfds_t)np, tty ? 250 : 1000);
        if (fx_run_interrupted()) return -1;
        if (r < 0) {
            if (errno == EINTR) continue;
            fx_seterr("poll: %s", strerror(errno));
            return -1;
        }
        for (int i = 0; i < np; i++) {
            if (!pf[i].revents) continue;
            int c = map[i];
            char ch = 0;
            ssize_t k = read(S->res_fd[c], &ch, 1);
            pending[c] = 0;
            if (k == 1 && ch == 'o') {
                done[c] = R->selected[c];
                if (done[c]) fx_run_client_done(R, round, c, tty);
                continue;
            }
            if (k == 1 && ch == 'e') {
                fx_seterr("client %d failed in round %d: %s", c, round, R->report[c].err);
                int st;
                reap_within(S->pid[c], GRACE_S, &st);
                R->alive[c] = 0;
                atomic_store(&S->training[c], 0);
                return -1;
            }
            if (client_gone(R, c, round, "in") != 0) return -1;
        }
        /* a client that makes no progress for --client-timeout seconds (stopped, or stuck) is dead */
        double now = fx_now();
        for (int c = 0; c < R->n; c++) {
            if (!pending[c]) continue;
            int64_t steps = R->report[c].steps_done;
            if (steps != S->steps_seen[c] || S->since[c] == 0) { S->steps_seen[c] = steps; S->since[c] = now; continue; }
            if (now - S->since[c] < R->cfg.client_timeout) continue;
            fprintf(stderr, "fedex: client %d (pid %d) made no progress for %.0f s (--client-timeout): killing it\n",
                    c, (int)S->pid[c], now - S->since[c]);
            kill(S->pid[c], SIGKILL);
            if (client_gone(R, c, round, "in") != 0) return -1;
        }
    }
    fx_run_progress(R, round, pending, tty, &drawn);
    return 0;
}

/* Ends every client: asked to finish (a stop job), or on ABORT signalled; SIGCONT wakes a stopped one so
 * that SIGTERM acts, and whichever has not gone within a grace period is killed. */
static void shm_stop(fx_run *R, int abort) {
    shm_state *S = R->tp_state;
    if (!S || !R->alive) return;
    for (int c = 0; c < R->n; c++) {
        if (!R->alive[c]) continue;
        fx_job q = {.round = -1};
        if (abort || write(S->cmd_fd[c], &q, sizeof q) < 0) kill(S->pid[c], SIGTERM);
        kill(S->pid[c], SIGCONT);
    }
    double t0 = fx_now();
    for (int c = 0; c < R->n; c++)
        if (R->alive[c]) {
            double left = STOP_GRACE_S - (fx_now() - t0);
            int st;
            reap_within(S->pid[c], left > 0 ? left : 0, &st);
            R->alive[c] = 0;
            close(S->cmd_fd[c]); close(S->res_fd[c]);
        }
}

/* Memory of the whole run (server + clients), proportional set size so the shared base counts once. */
static double shm_memory_mb(const fx_run *R) {
    const shm_state *S = R->tp_state;
    double kb = 0;
    for (int c = -1; c < R->n; c++) {
        if (c >= 0 && !R->alive[c]) continue;
        char path[64], line[256];
        snprintf(path, sizeof path, "/proc/%d/smaps_rollup", c < 0 ? (int)getpid() : (int)S->pid[c]);
        FILE *f = fopen(path, "r");
        if (!f) return NAN;
        while (fgets(line, sizeof line, f)) {
            long v;
            if (sscanf(line, "Pss: %ld kB", &v) == 1) kb += v;
        }
        fclose(f);
    }
    return kb / 1024.0;
}

const fx_transport fx_transport_shm = {"shm", shm_open_run, shm_start, shm_send_round, shm_collect, shm_stop,
                                       shm_close_run, shm_memory_mb, NULL};
