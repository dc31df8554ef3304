/* grid.c: the paper's experiment grid, every method on a list of tasks, each run a `fedex train` process
 * in OUT/runs/TASK/METHOD: runs already complete are skipped, interrupted ones resumed. It prints an
 * estimate of the time up front (the runs' arithmetic at this machine's measured matrix-product rate) and
 * a progress line per round with the time left (re-estimated from the rounds run so far), then writes the
 * table (OUT/table.md, OUT/table.csv) and one SVG per task (OUT/plots/TASK.svg). It trains nothing
 * itself, and is no scheduler: one run at a time, each with all the cores. */
#include "fedex.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ============================================================================================
 * The jobs
 * ============================================================================================ */

#define MAX_JOBS 512
#define MAX_ARGS 128

typedef struct {
    const char *task, *method;
    char dir[4096];
    int done_rounds, rounds;          /* rounds saved (0: none), rounds the run is to make */
    double seconds;                   /* the saved rounds' wall time */
    int has_state;                    /* a checkpoint to resume */
    double train_rows, dev_rows;      /* for the estimate */
    double flops_round;               /* one round's arithmetic, estimated */
} job;

/* The size of a quick grid: a few short rounds, short sequences, a small VeRA rank. Options given after
 * `--` take their place. */
static const char *const quick_args[][2] = {
    {"--rounds", "2"}, {"--local-epochs", "1"}, {"--batch-size", "16"}, {"--max-seq-length", "32"},
    {"--vera-r", "16"}, /* last: given to the VeRA methods only */
};
#define NQUICK ((int)(sizeof quick_args / sizeof quick_args[0]))

/* Options the grid sets itself for each run. */
static const char *const owned[] = {"--agg", "--task", "--model", "--data", "--out", "--resume", "--overwrite"};

static volatile sig_atomic_t grid_interrupted;
static void on_grid_signal(int sig) { grid_interrupted = sig; }

/* Data rows of a TSV file (lines, less the header when the task has one); -1 when it does not open. */
static double count_rows(const char *path, int header) {
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    double n = 0;
    int c, last = '\n';
    while ((c = getc(f)) != EOF) { if (c == '\n') n++; last = c; }
    if (last != '\n') n++;
    fclose(f);
    return header && n > 0 ? n - 1 : n;
}

/* The rows a task's run trains on and evaluates, for the estimate (synthetic: its fixed sizes). */
static void task_rows(const fx_grid_opts *o, const char *task, double *train, double *dev) {
    const fx_task *t = fx_task_find(task);
    *train = 1000; *dev = 300; /* a task whose files are not GLUE TSVs: a guess, corrected as rounds finish */
    if (!o->model || !t) { *train = FX_SYNTH_TRAIN; *dev = FX_SYNTH_DEV; return; }
    if (t->lm || !o->data) return;
    char p[4096];
    snprintf(p, sizeof p, "%s/%s/train.tsv", o->data, t->dir);
    double a = count_rows(p, t->header);
    snprintf(p, sizeof p, "%s/%s/%s.tsv", o->data, t->dir, t->dev_split);
    double b = count_rows(p, t->header);
    if (a >= 0) *train = a;
    if (b >= 0) *dev = b;
}

/* What a run of the grid has saved: rounds done and planned, and whether it has a checkpoint. */
static void job_state(job *j) {
    char p[4096 + 32];
    snprintf(p, sizeof p, "%s/state.safetensors", j->dir);
    j->has_state = access(p, F_OK) == 0;
    j->done_rounds = 0;
    j->seconds = 0;
    fx_runlog L;
    if (j->has_state && fx_runlog_read(j->dir, &L) == 0) {
        j->done_rounds = L.n ? L.r[L.n - 1].round : 0;
        for (int i = 0; i < L.n; i++) if (isfinite(L.r[i].seconds)) j->seconds += L.r[i].seconds;
        if (L.rounds_planned > 0 && L.rounds_planned != j->rounds) j->rounds = j->rounds > L.rounds_planned ? j->rounds : L.rounds_planned;
        fx_runlog_free(&L);
    }
}

/* ============================================================================================
 * The estimate
 * ============================================================================================
 * A round trains every row local_epochs times and evaluates the dev split once. With P the weights of the
 * encoder's products and T tokens a row, a training row costs about 4 P T flops (the forward product, and
 * backward the products that carry the gradient to the input: with LoRA the big weights get none) and a
 * dev row 2 P T. The rate is this machine's, measured on fx_matmul (which the CPU step runs at 1.4 to 1.6
 * times its bound, README: bench_step); the progress lines then use the grid's own measured pace. */

#define STEP_OVER_GEMM 1.5

static double matmul_rate(void) {
    enum { N = 512 };
    float *a = fx_malloc(sizeof(float) * N * N), *b = fx_malloc(sizeof(float) * N * N), *c = fx_malloc(sizeof(float) * N * N);
    for (int i = 0; i < N * N; i++) { a[i] = (float)(i % 7) * 0.1f; b[i] = (float)(i % 5) * 0.1f; }
    fx_matmul(0, 0, N, N, N, 1.0f, a, N, b, N, 0.0f, c, N); /* threads started, pages touched */
    double best = INFINITY, t0 = fx_now();
    do { /* the fastest of a few: what the machine does when it is not shared */
        double t = fx_now();
        fx_matmul(0, 0, N, N, N, 1.0f, a, N, b, N, 0.0f, c, N);
        t = fx_now() - t;
        if (t < best) best = t;
    } while (fx_now() - t0 < 0.3);
    free(a); free(b); free(c);
    return 2.0 * N * N * N / best;
}

static double round_flops(const fx_config *mc, const fx_settings *c, double train_rows, double dev_rows, int synthetic) {
    double h = mc->hidden, P = mc->layers * (4 * h * h + 2 * h * mc->intermediate);
    double T = synthetic ? FX_SYNTH_LEN : c->max_len;
    return (4 * P * T) * train_rows * c->local_epochs + (2 * P * T) * dev_rows;
}

/* ============================================================================================
 * Running one job
 * ============================================================================================ */

/* The runs' table and one SVG per task, from the runs that have rounds, in the grid's order. */
static int write_results(const fx_grid_opts *o, job *jobs, int nj, const char **tasks, int nt) {
    fx_runlog *runs = fx_calloc((size_t)nj + 1, sizeof *runs);
    int n = 0, rc = 0;
    for (int i = 0; i < nj; i++) {
        job_state(&jobs[i]);
        if (jobs[i].done_rounds > 0 && fx_runlog_read(jobs[i].dir, &runs[n]) == 0) n++;
    }
    char p[4096 + 64];
    if (n > 0) {
        snprintf(p, sizeof p, "%s/table.md", o->out);
        rc |= fx_runs_write(p, runs, n, "md");
        snprintf(p, sizeof p, "%s/table.csv", o->out);
        rc |= fx_runs_write(p, runs, n, "csv");
        snprintf(p, sizeof p, "%s/plots", o->out);
        rc |= fx_mkdir_p(p);
        for (int t = 0; t < nt && rc == 0; t++) {
            fx_runlog *sel = fx_calloc((size_t)n, sizeof *sel);
            int k = 0;
            for (int i = 0; i < n; i++) if (!strcmp(runs[i].task, tasks[t])) sel[k++] = runs[i];
            snprintf(p, sizeof p, "%s/plots/%s.svg", o->out, tasks[t]);
            if (k) rc |= fx_runs_write(p, sel, k, "svg");
            free(sel); /* the runs themselves belong to RUNS */
        }
        if (rc == 0) {
            snprintf(p, sizeof p, "%s/table.md", o->out);
            char *text; size_t len;
            if (fx_read_file(p, &text, &len) == 0) { fwrite(text, 1, len, stdout); free(text); }
            printf("wrote %s/table.md, %s/table.csv and %s/plots/TASK.svg\n", o->out, o->out, o->out);
        }
    }
    for (int i = 0; i < n; i++) fx_runlog_free(&runs[i]);
    free(runs);
    return rc ? -1 : 0;
}

/* Starts `fedex train ARGS` with its output appended to DIR/train.log; the child's pid, or -1. */
static pid_t start_train(const char *exe, const char *dir, char **args) {
    char log[4096 + 16];
    if (fx_mkdir_p(dir) != 0) return -1;
    snprintf(log, sizeof log, "%s/train.log", dir);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) { fx_seterr("%s: %s", log, strerror(errno)); return -1; }
    fflush(stdout); fflush(stderr);
    pid_t p = fork();
    if (p < 0) { close(fd); fx_seterr("fork: %s", strerror(errno)); return -1; }
    if (p == 0) {
        signal(SIGINT, SIG_DFL);
        if (dup2(fd, 1) < 0 || dup2(fd, 2) < 0) _exit(126);
        execv(exe, args);
        _exit(127);
    }
    close(fd);
    return p;
}

/* ============================================================================================
 * The grid
 * ============================================================================================ */

/* Splits a comma-separated LIST into ITEMS (pointers into a copy kept in *KEEP). */
static int split_list(const char *list, const char **items, int cap, char **keep) {
    *keep = fx_strdup(list);
    int n = 0;
    for (char *save = NULL, *t = strtok_r(*keep, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        if (n == cap) return -1;
        items[n++] = t;
    }
    return n;
}

/* The `fedex train` arguments (from "train" on) of job J: its method, task and folder, then COMMON (the
 * quick size, its VeRA rank for the VeRA methods only, then the options after `--`); a job with a
 * checkpoint resumes it instead. Returns how many were written to ARGS. */
static int job_args(const fx_grid_opts *o, const job *j, const char **common, int nc, int nquick, const int *set,
                    char *rounds, char *threads, char **args) {
    int na = 0;
    args[na++] = "train";
    if (j->has_state) {
        /* a resumed run keeps its own settings: only the rounds and the threads may be given */
        args[na++] = "--resume"; args[na++] = (char *)j->dir; args[na++] = "--rounds"; args[na++] = rounds;
        if (set[fx_settings_opt("--threads")]) { args[na++] = "--threads"; args[na++] = threads; }
        return na;
    }
    char sp[4096];
    args[na++] = "--agg"; args[na++] = (char *)j->method;
    if (o->model) {
        args[na++] = "--model"; args[na++] = (char *)o->model; args[na++] = "--task"; args[na++] = (char *)j->task;
        args[na++] = "--data"; args[na++] = (char *)o->data;
    }
    args[na++] = "--out"; args[na++] = (char *)j->dir;
    if (fx_settings_find(j->dir, sp, sizeof sp)) args[na++] = "--overwrite"; /* settings, but no round saved */
    fx_agg_method am;
    fx_agg_parse(j->method, &am);
    for (int c = 0; c < nc; c++) {
        /* train refuses VeRA's options for the other methods */
        if (c < nquick && !strcmp(common[c], "--vera-r") && !fx_agg_is_vera(am) && !fx_agg_is_sorf(am)) { c++; continue; }
        args[na++] = (char *)common[c];
    }
    return na;
}

int fx_grid_run(const fx_grid_opts *o) {
    const char *tasks[64], *methods[64];
    char *tkeep = NULL, *mkeep = NULL;
    int nt, nm, rc = -2;                         /* -2 until the options are checked: a usage error */
    job *jobs = NULL;
    /* every method agg.c knows, centralized (the upper bound) first: the table's rows */
    if (o->methods) nm = split_list(o->methods, methods, 64, &mkeep);
    else {
        nm = 0;
        methods[nm++] = fx_agg_name(FX_AGG_CENTRAL);
        for (int i = 0; i < 64; i++) {
            const char *name = fx_agg_name((fx_agg_method)i);
            if (!strcmp(name, "?")) break;
            if ((fx_agg_method)i != FX_AGG_CENTRAL) methods[nm++] = name;
        }
    }
    const char *def_tasks = !o->model ? "synthetic" : o->quick ? "RTE,MRPC,CoLA,STS-B" : "CoLA,SST-2,MRPC,STS-B,QNLI,RTE";
    nt = split_list(o->tasks ? o->tasks : def_tasks, tasks, 64, &tkeep);
    if (nm <= 0 || nt <= 0) { fx_seterr("--tasks and --methods take up to 64 names separated by commas"); goto out; }
    fx_agg_method ams[64];
    for (int m = 0; m < nm; m++) {
        if (fx_agg_parse(methods[m], &ams[m]) != 0) goto out;
        for (int k = 0; k < m; k++)
            if (ams[k] == ams[m]) {
                fx_seterr("--methods names %s twice (%s, %s): give each method once", fx_agg_name(ams[m]), methods[k],
                          methods[m]);
                goto out;
            }
    }
    const fx_task *tks[64];
    for (int t = 0; t < nt; t++) {
        const fx_task *tk = tks[t] = fx_task_find(tasks[t]);
        if (!tk) { fx_seterr("unknown task '%s'", tasks[t]); goto out; }
        for (int k = 0; k < t; k++)
            if (tks[k] == tk) {
                fx_seterr("--tasks names %s twice (%s, %s): give each task once", tk->name, tasks[k], tasks[t]);
                goto out;
            }
        if (!o->model && strcmp(tasks[t], "synthetic")) {
            fx_seterr("task %s needs --model (or --config for a random-weight model) and --data", tasks[t]);
            goto out;
        }
        if (o->model && !strcmp(tasks[t], "synthetic")) { fx_seterr("the synthetic task runs on the embedded model: leave out --model (and --config)"); goto out; }
    }
    if (o->model && !o->data) { fx_seterr("--model (or --config) needs --data (the folder holding the task folders)"); goto out; }

    /* The train options every run shares: the quick size, then those after `--` (checked as train checks
     * them, before anything runs). */
    fx_settings cfg;
    int set[FX_SETTINGS_MAX] = {0};
    {
        char *argv[MAX_ARGS + 1];
        int argc = 0;
        argv[argc++] = "train";
        for (int i = 0; i < o->nextra && argc < MAX_ARGS; i++) argv[argc++] = (char *)o->extra[i];
        if (fx_opts_parse(&fx_train_cmdline, argc, argv, &cfg, set, NULL, NULL) != 0) goto out;
        for (size_t k = 0; k < sizeof owned / sizeof owned[0]; k++)
            if (set[fx_settings_opt(owned[k])]) { fx_seterr("%s is the grid's to set for each run: leave it out", owned[k]); goto out; }
    }
    const char *common[MAX_ARGS];
    int nc = 0, nquick = 0;
    for (int q = 0; o->quick && q < NQUICK; q++)
        if (!set[fx_settings_opt(quick_args[q][0])]) { common[nc++] = quick_args[q][0]; common[nc++] = quick_args[q][1]; }
    nquick = nc;
    for (int i = 0; i < o->nextra && nc < MAX_ARGS - 16; i++) common[nc++] = o->extra[i];
    {
        char *argv[MAX_ARGS + 1];
        int argc = 0;
        argv[argc++] = "train";
        for (int i = 0; i < nc; i++) argv[argc++] = (char *)common[i];
        if (fx_opts_parse(&fx_train_cmdline, argc, argv, &cfg, set, NULL, NULL) != 0) goto out;
    }
    rc = -1;
    fx_config mc;
    const fx_task *task0;
    {
        fx_settings c = cfg;
        c.model = o->model;
        c.task = o->model ? tasks[0] : NULL;
        if (o->config_file) { /* --config, its model not made yet: the file's shapes */
            if (fx_config_load(o->config_file, &mc) != 0) goto out;
            task0 = fx_task_find(c.task);
            if (!task0->lm) mc.num_labels = task0->num_labels;
        } else if (fx_settings_model(&c, &mc, &task0) != 0) goto out;
    }

    /* The jobs, method-major (the table's rows in order), with what each has saved. */
    int nj = nm * nt;
    if (nj > MAX_JOBS) { fx_seterr("%d runs: at most %d in one grid", nj, MAX_JOBS); goto out; }
    jobs = fx_calloc((size_t)nj, sizeof *jobs);
    double flops_left = 0, flops_saved = 0, secs_saved = 0;
    int todo = 0, resume = 0;
    for (int m = 0; m < nm; m++)
        for (int t = 0; t < nt; t++) {
            job *j = &jobs[m * nt + t];
            j->task = tasks[t];
            j->method = methods[m];
            snprintf(j->dir, sizeof j->dir, "%s/runs/%s/%s", o->out, tasks[t], methods[m]);
            j->rounds = cfg.rounds;
            job_state(j);
            task_rows(o, tasks[t], &j->train_rows, &j->dev_rows);
            j->flops_round = round_flops(&mc, &cfg, j->train_rows, j->dev_rows, !o->model);
            flops_saved += j->flops_round * j->done_rounds;
            secs_saved += j->seconds;
            if (j->done_rounds < j->rounds) {
                todo++;
                resume += j->has_state;
                flops_left += j->flops_round * (j->rounds - j->done_rounds);
            }
        }
    /* each run that starts afresh: its own arguments checked as train checks them, before anything runs */
    for (int i = 0; i < nj; i++) {
        if (jobs[i].has_state) continue;
        char *args[MAX_ARGS + 16], rounds[16], threads[16];
        snprintf(rounds, sizeof rounds, "%d", jobs[i].rounds);
        snprintf(threads, sizeof threads, "%d", cfg.threads);
        int na = job_args(o, &jobs[i], common, nc, nquick, set, rounds, threads, args);
        args[na] = NULL;
        fx_settings c;
        int cset[FX_SETTINGS_MAX] = {0};
        if (fx_opts_parse(&fx_train_cmdline, na, args, &c, cset, NULL, NULL) != 0 || fx_settings_check(&c, cset) != 0) {
            char why[512];
            snprintf(why, sizeof why, "%s", fx_err());
            fx_seterr("the %s run on %s: %s", jobs[i].method, jobs[i].task, why);
            rc = -2;
            goto out;
        }
    }
    if (o->check_only) { rc = 0; goto out; }
    /* the pace of the rounds this grid has saved already, when it has some: it counts what the arithmetic
     * leaves out (processes, tokenising, aggregation, evaluation's padding) */
    double rate = flops_saved > 0 && secs_saved > 0 ? flops_saved / secs_saved : matmul_rate() / STEP_OVER_GEMM;
    char est[32];
    printf("fedex grid: %d method%s x %d task%s = %d runs of %d rounds (%s); %d complete, %d to resume, %d to start\n", nm,
           nm > 1 ? "s" : "", nt, nt > 1 ? "s" : "", nj, cfg.rounds, o->quick ? "quick" : "the paper's settings", nj - todo,
           resume, todo - resume);
    if (flops_saved > 0 && secs_saved > 0)
        printf("estimated time: %s (%.3g Tflop at %.2f Gflop/s, the pace of the rounds already saved here)\n",
               fx_duration_str(flops_left / rate, est, sizeof est), flops_left / 1e12, rate / 1e9);
    else
        printf("estimated time: %s (%.3g Tflop at %.1f Gflop/s, this machine's matrix-product rate / %.1f; "
               "arithmetic only)\n", fx_duration_str(flops_left / rate, est, sizeof est), flops_left / 1e12, rate / 1e9,
               STEP_OVER_GEMM);
    fflush(stdout);
    if (o->dry_run) { rc = 0; goto out; }
    if (fx_mkdir_p(o->out) != 0) goto out;

    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_grid_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    double t_start = fx_now(), flops_done = 0;
    int k = 0, failed = 0;
    for (int i = 0; i < nj && !grid_interrupted && !failed; i++) {
        job *j = &jobs[i];
        if (j->done_rounds >= j->rounds) continue;
        k++;
        char *args[MAX_ARGS + 16];
        int na = 0;
        char rounds[16], threads[16];
        snprintf(rounds, sizeof rounds, "%d", j->rounds);
        snprintf(threads, sizeof threads, "%d", cfg.threads);
        args[na++] = (char *)o->exe;
        na += job_args(o, j, common, nc, nquick, set, rounds, threads, args + na);
        args[na] = NULL;
        if (j->has_state) printf("[%d/%d] %s %s: resuming after round %d\n", k, todo, j->task, j->method, j->done_rounds);
        else printf("[%d/%d] %s %s: starting\n", k, todo, j->task, j->method);
        fflush(stdout);
        pid_t p = start_train(o->exe, j->dir, args);
        if (p < 0) { failed = 1; break; }
        int seen = j->done_rounds, st = 0;
        char mpath[4096 + 16];
        snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", j->dir);
        off_t last_size = -1;
        for (;;) {
            pid_t w = waitpid(p, &st, WNOHANG);
            struct stat sb;
            if (stat(mpath, &sb) == 0 && sb.st_size != last_size) {
                last_size = sb.st_size;
                fx_runlog L;
                if (fx_runlog_read(j->dir, &L) == 0) {
                    int now = L.n ? L.r[L.n - 1].round : 0;
                    if (now > seen) {
                        flops_done += j->flops_round * (now - seen);
                        flops_left -= j->flops_round * (now - seen);
                        seen = now;
                        double pace = (fx_now() - t_start) / flops_done; /* seconds a flop, as measured */
                        const fx_log_round *r = &L.r[L.n - 1];
                        printf("[%d/%d] %s %s: round %d/%d, dev %s %.4f (best %.4f @ %d), %.0f%% of the grid, %s left\n",
                               k, todo, j->task, j->method, now, j->rounds, L.metric, r->value, r->best, r->best_round,
                               100 * flops_done / (flops_done + flops_left), fx_duration_str(flops_left * pace, est, sizeof est));
                        fflush(stdout);
                    }
                    fx_runlog_free(&L);
                }
            }
            if (w == p) break;
            if (w < 0 && errno != EINTR) { fx_seterr("waitpid: %s", strerror(errno)); failed = 1; break; }
            struct timespec ts = {0, 200000000};
            nanosleep(&ts, NULL);
        }
        if (failed) break;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            if (grid_interrupted || (WIFEXITED(st) && WEXITSTATUS(st) == 130)) { grid_interrupted = 1; break; }
            fx_seterr("the run %s %s failed (%s %d): see %s/train.log", j->task, j->method,
                      WIFEXITED(st) ? "exit status" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st), j->dir);
            failed = 1;
        }
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (grid_interrupted) {
        printf("fedex grid: interrupted; the same command resumes it (complete runs are skipped, the stopped one resumed)\n");
    }
    printf("fedex grid: %s in %s\n", failed ? "stopped" : grid_interrupted ? "interrupted" : "done",
           fx_duration_str(fx_now() - t_start, est, sizeof est));
    int wrc = write_results(o, jobs, nj, tasks, nt);
    rc = failed || wrc ? -1 : grid_interrupted ? 1 : 0;
out:
    free(jobs); free(tkeep); free(mkeep);
    return rc;
}
