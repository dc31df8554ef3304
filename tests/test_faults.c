/* tests/test_faults.c: faults and hostile conditions around a run, through $FEDEX and the library: a
 * symbolic link planted where outputs are written, a FIFO where inputs are read, standard input as a
 * file, a /dev/shm too small for the segment, clients that fail to start, die between rounds, stop, or
 * lose their server. Not the numerics (test_model, test_agg) nor a run's results (test_train). */
#include "fedex.h"
#include "check.h"

/* Bounded waits: a run's first client processes, and a whole run (one takes 1 to 5 s here). */
#define WAIT_LINE_S 120.0
#define WAIT_RUN_S 120.0
/* A client must be gone this soon after its server is killed (SIGKILL from the kernel: milliseconds). */
#define ORPHAN_S 1.0
/* --client-timeout in the test of a stopped client, and how long the whole run may take with it. */
#define STOP_TIMEOUT "2"
#define STOP_RUN_S 60.0

#include "run_harness.h"

#include <dirent.h>
#include <sys/stat.h>

/* ---------------------------------------------------------------- outputs and inputs */

/* A link planted at the name the atomic writer once used (PATH.tmp.PID) must not redirect the write. */
static void test_planted_link(void) {
    const char *victim = P("%s/victim", tmp), *out = P("%s/out.json", tmp);
    fx_write_file_atomic(victim, "keep", 4);
    symlink(victim, P("%s.tmp.%d", out, (int)getpid()));
    CHECK(fx_write_file_atomic(out, "{}\n", 3) == 0, "write past a planted link: %s", fx_err());
    char *v = slurp(victim), *o = slurp(out);
    CHECK(v && !strcmp(v, "keep"), "the link's target was overwritten: '%s'", v ? v : "(gone)");
    CHECK(o && !strcmp(o, "{}\n"), "the output holds what was written");
    struct stat st;
    CHECK(lstat(out, &st) == 0 && S_ISREG(st.st_mode), "the output is a regular file, not the link");
    free(v); free(o);
}

/* A FIFO where a file is expected is refused at once (no writer would ever come). */
static void test_fifo(void) {
    const char *f = P("%s/fifo.safetensors", tmp);
    if (mkfifo(f, 0600) != 0) { CHECK(0, "mkfifo: %s", strerror(errno)); return; }
    double t0 = fx_now();
    int rc = fedex("fifo", NULL, "inspect", f, NULL);
    CHECK(rc == 1 && err_has("fifo", "not a regular file") && fx_now() - t0 < 10,
          "inspect FIFO: exit %d after %.1f s, want 1 at once naming 'not a regular file'", rc, fx_now() - t0);
    char *d; size_t n;
    CHECK(fx_read_file(f, &d, &n) == -1 && strstr(fx_err(), "not a regular file"), "fx_read_file(FIFO): %s", fx_err());
}

/* "-" reads standard input where a file is expected: the same ids as from the file. */
static void test_stdin(void) {
    char cmd[4096], a[65536], b[65536];
    snprintf(cmd, sizeof cmd, "%s tokenize --model %s --task RTE --file %s/RTE/dev.tsv", fedex_bin, model, glue);
    int r1 = check_run(cmd, a, sizeof a);
    snprintf(cmd, sizeof cmd, "%s tokenize --model %s --task RTE --file - < %s/RTE/dev.tsv", fedex_bin, model, glue);
    int r2 = check_run(cmd, b, sizeof b);
    CHECK(r1 == 0 && r2 == 0 && strlen(a) > 100 && !strcmp(a, b), "--file - reads standard input: exit %d / %d", r1, r2);
    snprintf(cmd, sizeof cmd, "cat %s/RTE/dev.tsv | %s tokenize --model %s --task RTE --file /dev/stdin", glue, fedex_bin,
             model);
    r2 = check_run(cmd, b, sizeof b);
    CHECK(r2 == 0 && !strcmp(a, b), "--file /dev/stdin from a pipe: exit %d", r2);
    snprintf(cmd, sizeof cmd, "%s inspect %s/model.safetensors", fedex_bin, model);
    r1 = check_run(cmd, a, sizeof a);
    snprintf(cmd, sizeof cmd, "%s inspect - < %s/model.safetensors", fedex_bin, model);
    r2 = check_run(cmd, b, sizeof b);
    CHECK(r1 == 0 && r2 == 0 && strstr(a, "tensors,") && !strcmp(a, b), "inspect - reads standard input: exit %d / %d",
          r1, r2);
}

/* ---------------------------------------------------------------- /dev/shm too small */

static void test_small_shm(void) {
    char cmd[4096], out[8192];
    if (check_run("unshare -m sh -c 'mount -t tmpfs -o size=1m tmpfs /dev/shm' 2>/dev/null", out, sizeof out) != 0) {
        printf("skipped: /dev/shm too small (cannot mount a small /dev/shm in a mount namespace here)\n");
        return;
    }
    /* 4 clients of the tiny model: the segment holds its 804k-weight base once, 3.2 MB; /dev/shm has 1 MB */
    snprintf(cmd, sizeof cmd, "unshare -m sh -c 'mount -t tmpfs -o size=1m tmpfs /dev/shm && exec %s train --model %s "
             "--task RTE --data %s --max-seq-length 32 --rounds 1 --num-clients 4' 2>&1", fedex_bin, model, glue);
    int rc = check_run(cmd, out, sizeof out);
    CHECK(rc == 1 && strstr(out, "in /dev/shm, which has") && strstr(out, "--shm-size"),
          "a run larger than /dev/shm: exit %d (want 1, the size needed and how to get it): %s", rc, out);
}

/* ---------------------------------------------------------------- clients that fail, die or stop */

static void test_start_failure(void) {
    int all = 1;
    for (int k = 0; k < 10; k++) {
        int rc = train(P("open_%d", k), "open:1", "--rounds", "1", NULL);
        all &= rc == 1 && err_has(P("open_%d", k), "client 1 failed") && err_has(P("open_%d", k), "injected start-up failure");
    }
    CHECK(all, "a client's start-up error reaches the user, every time of 10");
}

static void test_gone_between_rounds(void) {
    const char *out = P("%s/run_gone", tmp);
    int rc = train("gone_strict", "gone:1:1", "--rounds", "3", "--strict", NULL);
    CHECK(rc == 1 && err_has("gone_strict", "client 1 died before round 2 (--strict)"),
          "--strict, a client gone between rounds: exit %d, want 1 naming it", rc);
    rc = train("gone", "gone:1:1", "--rounds", "3", "--out", out, NULL);
    metrics m;
    int ok = rc == 0 && err_has("gone", "client 1") && err_has("gone", "died before round 2") &&
             metrics_load(out, &m) == 0 && m.n == 3;
    if (ok) {
        const fx_json *d = arr(&m.line[1], "dead_clients");
        ok = d && d->n == 1 && d->kids[0].num == 1;
        metrics_free(&m);
    }
    CHECK(ok, "a client gone between rounds is reported and the run goes on without it: exit %d", rc);
}

/* The server's children (the clients), read from /proc. */
static int children(pid_t p, pid_t *kids, int max) {
    FILE *f = fopen(P("/proc/%d/task/%d/children", (int)p, (int)p), "r"); /* size 0: read it as a stream */
    int n = 0;
    long v;
    while (f && n < max && fscanf(f, "%ld", &v) == 1) kids[n++] = (pid_t)v;
    if (f) fclose(f);
    return n;
}

/* Is PID still running (a zombie, dead but not yet reaped by whoever adopted it, is not)? */
static int running(pid_t pid) {
    FILE *f = fopen(P("/proc/%d/stat", (int)pid), "r");
    if (!f) return 0;
    char state = 'X';
    int ok = fscanf(f, "%*d (%*[^)]) %c", &state) == 1;
    fclose(f);
    return ok && state != 'Z' && state != 'X';
}

/* Starts a long run and waits until its three clients exist; their pids in KIDS. */
static pid_t start_long(const char *tag, pid_t *kids, const char *extra) {
    const char *args[] = {"train", "--model", model, "--task", "RTE", "--data", glue, "--max-seq-length", "32",
                          "--batch-size", "8", "--local-epochs", "100000", "--rounds", "2", "--threads", "2",
                          extra, extra ? STOP_TIMEOUT : NULL, NULL};
    pid_t p = spawn(tag, NULL, args);
    double t0 = fx_now();
    while (p > 0 && fx_now() - t0 < WAIT_LINE_S && children(p, kids, 8) < 3) {
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    return p;
}

static void test_orphans(void) {
    pid_t kids[8];
    pid_t p = start_long("orphans", kids, NULL);
    int n = children(p, kids, 8);
    CHECK(n == 3, "a long run has 3 clients, found %d", n);
    struct timespec ts = {0, 300000000};
    nanosleep(&ts, NULL); /* training now */
    kill(p, SIGKILL);
    waitpid(p, NULL, 0);
    double t0 = fx_now();
    int left = n;
    while (left && fx_now() - t0 < 10) {
        left = 0;
        for (int i = 0; i < n; i++) left += running(kids[i]);
        if (left) nanosleep(&(struct timespec){0, 10000000}, NULL);
    }
    double dt = fx_now() - t0;
    CHECK(left == 0 && dt < ORPHAN_S, "clients of a killed server: %d left after %.2f s (want none within %.1f s)",
          left, dt, ORPHAN_S);
    if (left) kill(-p, SIGKILL);
}

static void test_stopped_client(void) {
    pid_t kids[8];
    /* a stopped client counts as dead after --client-timeout; the others finish the round */
    pid_t p = start_long("stopped", kids, "--client-timeout");
    if (children(p, kids, 8) < 3) { CHECK(0, "stopped: no clients"); kill(-p, SIGKILL); return; }
    kill(kids[1], SIGSTOP);
    double t0 = fx_now();
    /* the others train 100000 epochs: interrupt after the stopped one was dealt with */
    while (fx_now() - t0 < STOP_RUN_S && !err_has("stopped", "made no progress"))
        nanosleep(&(struct timespec){0, 50000000}, NULL);
    CHECK(err_has("stopped", "client 1") && err_has("stopped", "made no progress"),
          "a stopped client is named as stuck within %.0f s", STOP_RUN_S);
    /* Ctrl-C now ends the run, and a client stopped again does not hold it up */
    kill(kids[2], SIGSTOP);
    kill(-p, SIGINT);
    t0 = fx_now();
    int rc = finish("stopped", p);
    CHECK(rc == 130 && fx_now() - t0 < 15, "Ctrl-C with a stopped client: exit %d after %.1f s, want 130 at once", rc,
          fx_now() - t0);
    if (kill(-p, 0) == 0) { kill(-p, SIGKILL); CHECK(0, "stopped: a process outlived the run"); }
}

/* ---------------------------------------------------------------- the run folder */

/* A copy of RUN's checkpoint with metadata KEY set to VALUE (NULL: unchanged) and, when POISON, a NaN
 * as the first element of the global state. */
static int damage_state(const char *run, const char *key, const char *value, int poison) {
    const char *path = P("%s/state.safetensors", run);
    fx_st_file f;
    if (fx_st_open(path, &f) != 0) return -1;
    fx_st_entry e[64];
    float *copy = NULL;
    int n = f.n < 64 ? f.n : 64;
    for (int i = 0; i < n; i++) {
        const fx_st_tensor *t = &f.t[i];
        e[i] = (fx_st_entry){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = f.data + t->begin};
        memcpy(e[i].shape, t->shape, sizeof t->shape);
        if (poison && !strcmp(t->name, "global")) {
            copy = fx_malloc(t->end - t->begin);
            memcpy(copy, f.data + t->begin, t->end - t->begin);
            copy[0] = NAN;
            e[i].data = copy;
        }
    }
    const char *meta[32];
    int k = 0;
    for (int i = 0; i < f.nmeta && k < 28; i++) {
        meta[k++] = f.meta_keys[i];
        meta[k++] = key && !strcmp(f.meta_keys[i], key) ? value : f.meta_vals[i];
    }
    meta[k] = NULL;
    char *tmpf = fx_strdup(P("%s/state.new", run));
    int rc = fx_st_write(tmpf, e, n, meta) == 0 && rename(tmpf, path) == 0 ? 0 : -1;
    free(tmpf); free(copy);
    fx_st_close(&f);
    return rc;
}

static void test_run_folder(void) {
    const char *run = P("%s/run_folder", tmp);
    char *run_s = fx_strdup(run);
    int rc = train("folder", NULL, "--rounds", "2", "--out", run_s, NULL);
    CHECK(rc == 0, "a first run: exit %d", rc);
    char *metrics0 = slurp(P("%s/metrics.jsonl", run_s)), *settings0 = slurp(P("%s/" FX_SETTINGS_FILE, run_s));
    /* an existing run is not replaced silently */
    rc = train("again", NULL, "--rounds", "1", "--out", run_s, NULL);
    char *metrics1 = slurp(P("%s/metrics.jsonl", run_s));
    CHECK(rc == 1 && err_has("again", "holds a run already") && metrics0 && metrics1 && !strcmp(metrics0, metrics1),
          "a second run into a run's folder: exit %d, want 1 naming --resume and --overwrite, the run untouched", rc);
    free(metrics1);
    /* --resume asking for fewer rounds than were done: refused, nothing rewritten */
    rc = fedex("fewer", NULL, "train", "--resume", run_s, "--rounds", "1", NULL);
    char *settings1 = slurp(P("%s/" FX_SETTINGS_FILE, run_s));
    CHECK(rc == 1 && err_has("fewer", "completed 2 rounds") && settings1 && !strcmp(settings0, settings1),
          "--resume --rounds 1 after 2 rounds: exit %d, want 1 naming the rounds done, settings unchanged", rc);
    free(settings1);
    /* settings that do not read back, or do not pass the checks: refused with the reason (and, under the
     * sanitizers, without a leak, which would change the exit status) */
    char *bad1 = fx_strdup(settings0), *at = strstr(bad1, "\"lora-r\": 4");
    if (at) memcpy(at, "\"lora-r\": 0", 11);
    fx_write_file_atomic(P("%s/" FX_SETTINGS_FILE, run_s), bad1, strlen(bad1));
    rc = fedex("bad_settings", NULL, "train", "--resume", run_s, "--rounds", "3", NULL);
    CHECK(at && rc == 2 && err_has("bad_settings", "--lora-r must be"), "--resume with settings that fail the checks: "
          "exit %d", rc);
    at = strstr(bad1, "\"lora-r\": 0");
    if (at) memcpy(at, "\"lora-r\": \"", 11);
    fx_write_file_atomic(P("%s/" FX_SETTINGS_FILE, run_s), bad1, strlen(bad1));
    rc = fedex("bad_settings2", NULL, "train", "--resume", run_s, "--rounds", "3", NULL);
    CHECK(rc == 2 && err_has("bad_settings2", FX_SETTINGS_FILE), "--resume with unreadable settings: exit %d", rc);
    fx_write_file_atomic(P("%s/" FX_SETTINGS_FILE, run_s), settings0, strlen(settings0));
    free(bad1);
    /* settings beside the checkpoint that are not the ones it was saved under (another seed): refused */
    char *other = fx_strdup(settings0), *sd = strstr(other, "\"seed\": ");
    if (sd) sd[8] = sd[8] == '9' ? '8' : '9';
    fx_write_file_atomic(P("%s/" FX_SETTINGS_FILE, run_s), other, strlen(other));
    rc = fedex("other_settings", NULL, "train", "--resume", run_s, "--rounds", "3", NULL);
    CHECK(sd && rc == 1 && err_has("other_settings", "checkpoint of other settings"),
          "--resume of a checkpoint under settings it was not saved with: exit %d", rc);
    fx_write_file_atomic(P("%s/" FX_SETTINGS_FILE, run_s), settings0, strlen(settings0));
    free(other);
    /* export into the run's own folder would overwrite what makes it resumable */
    rc = fedex("export_self", NULL, "export", "--run", run_s, "--out", run_s, NULL);
    CHECK(rc == 2 && err_has("export_self", "is a run's folder"), "export --out RUN: exit %d, want 2", rc);
    /* a replacing run that dies before its first round is saved leaves the old run resumable */
    rc = train("replace_dies", "kill:0:1", "--rounds", "2", "--out", run_s, "--overwrite", "--strict", "--lr", "2e-3", NULL);
    CHECK(rc == 1, "--overwrite, a client killed in round 1 under --strict: exit %d", rc);
    /* temporary files a killed run left go at the next start */
    fx_write_file_atomic(P("%s/metrics.jsonl.tmp.123456", run_s), "x", 1);
    fx_write_file_atomic(P("%s/state.safetensors.tmp.AbCdEf", run_s), "x", 1);
    fx_mkdir_p(P("%s/rounds/1/global", run_s));
    fx_write_file_atomic(P("%s/rounds/1/global/residual.safetensors.tmp.x1Y2z3", run_s), "x", 1);
    /* ... and nothing else: a user's files that merely look like them stay, at the top and below */
    static const char *const keep[] = {"report.tmp.v1", "notes.tmp.abc123", "metrics.jsonl.tmp.1234567",
                                       "photos/2023/holiday.tmp.jpg2", "photos/state.safetensors.tmp.AbCdEf"};
    fx_mkdir_p(P("%s/photos/2023", run_s));
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++) fx_write_file_atomic(P("%s/%s", run_s, keep[i]), "x", 1);
    rc = fedex("resume_old", NULL, "train", "--resume", run_s, "--rounds", "3", NULL);
    metrics m;
    CHECK(rc == 0 && metrics_load(run_s, &m) == 0 && m.n == 3, "the old run resumes after the replacing run died: "
          "exit %d", rc);
    if (rc == 0) metrics_free(&m);
    CHECK(!exists(P("%s/metrics.jsonl.tmp.123456", run_s)) && !exists(P("%s/state.safetensors.tmp.AbCdEf", run_s)),
          "stale temporary files are removed when the run starts again");
    CHECK(!exists(P("%s/rounds/1/global/residual.safetensors.tmp.x1Y2z3", run_s)), "... under rounds/ too");
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++)
        CHECK(exists(P("%s/%s", run_s, keep[i])), "a user's file %s is left alone by the run's cleanup", keep[i]);
    /* a replacing run that completes a round takes the folder over */
    rc = train("replace", NULL, "--rounds", "1", "--out", run_s, "--overwrite", "--lr", "2e-3", NULL);
    CHECK(rc == 0 && metrics_load(run_s, &m) == 0 && m.n == 1, "--overwrite replaces the run: exit %d", rc);
    if (rc == 0) metrics_free(&m);
    /* two runs at once into one folder: the second is refused while the first holds it */
    pid_t kids[8];
    const char *args[] = {"train", "--model", model, "--task", "RTE", "--data", glue, "--max-seq-length", "32",
                          "--local-epochs", "100000", "--rounds", "1", "--out", P("%s/run_busy", tmp), NULL};
    pid_t p = spawn("busy", NULL, args);
    double t0 = fx_now();
    while (fx_now() - t0 < WAIT_LINE_S && children(p, kids, 8) < 3) nanosleep(&(struct timespec){0, 20000000}, NULL);
    rc = train("busy2", NULL, "--rounds", "1", "--out", P("%s/run_busy", tmp), "--overwrite", NULL);
    CHECK(rc == 1 && err_has("busy2", "in use by another fedex run"), "a second run into a busy folder: exit %d", rc);
    kill(-p, SIGINT);
    finish("busy", p);
    free(metrics0); free(settings0); free(run_s);
}

/* Everything read back from a checkpoint is validated. */
/* init writes its folder whole or not at all: a name it must write being a folder fails it before any
 * file lands, and no temporary folder stays beside; into a folder that holds other files, they stay. */
static void test_init_whole(void) {
    char *cfg = fx_strdup(P("%s/config.json", cfgdir)), *o = fx_strdup(P("%s/init_o", tmp)); /* P's buffers rotate */
    fx_mkdir_p(P("%s/config.json", o));
    int rc = fedex("init_blocked", NULL, "init", "--config", cfg, "--out", o, NULL);
    CHECK(rc == 1 && err_has("init_blocked", "is a folder") && !exists(P("%s/model.safetensors", o)) &&
          !exists(P("%s/vocab.json", o)), "init where config.json is a folder: exit %d, or files written", rc);
    char *ls = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&ls, &n);
    const char *where[2] = {tmp, o};
    for (int w = 0; w < 2; w++) {
        DIR *d = opendir(where[w]);
        for (struct dirent *e; d && (e = readdir(d));) fprintf(f, "%s\n", e->d_name);
        if (d) closedir(d);
    }
    fclose(f);
    CHECK(!strstr(ls, "init_o" FX_TMP_SUFFIX) && !strstr(ls, ".fedex-init"), "a failed init left its temporary folder");
    free(ls);
    char o2[1024];
    snprintf(o2, sizeof o2, "%s/init_kept", tmp);
    fx_mkdir_p(o2);
    fx_write_file_atomic(P("%s/notes.txt", o2), "x", 1);
    chmod(o2, 02750);                            /* a folder's own mode and group stay its own */
    rc = fedex("init_kept", NULL, "init", "--config", cfg, "--out", o2, "--seed", "2", NULL);
    struct stat k;
    CHECK(rc == 0 && exists(P("%s/notes.txt", o2)) && exists(P("%s/model.safetensors", o2)) && stat(o2, &k) == 0 &&
          (k.st_mode & 07777) == 02750, "init into a folder with other files: exit %d, mode %o", rc, (unsigned)(k.st_mode & 07777));
    /* a fresh folder gets a folder's usual mode (not the temporary folder's 0700) */
    char *o3 = fx_strdup(P("%s/init_fresh", tmp)), *ref = fx_strdup(P("%s/init_ref", tmp));
    rc = fedex("init_fresh", NULL, "init", "--config", cfg, "--out", o3, NULL);
    mkdir(ref, 0755);
    struct stat a, b;
    CHECK(rc == 0 && stat(o3, &a) == 0 && stat(ref, &b) == 0 && (a.st_mode & 0777) == (b.st_mode & 0777),
          "init's fresh folder: exit %d, mode %o, mkdir's %o", rc, (unsigned)(a.st_mode & 0777), (unsigned)(b.st_mode & 0777));
    free(cfg); free(o); free(o3); free(ref);
}

/* init writes the config's label names into the folder's config.json (id2label and label2id, as
 * transformers reads them), and LABEL_i where --labels gives another count. */
static void test_init_names(void) {
    char *dir = fx_strdup(P("%s/cfg_named", tmp));
    size_t n = strlen(tiny_config);
    char *text = fx_malloc(n + 128);
    memcpy(text, tiny_config, n);
    snprintf(text + n - 2, 128, ",\n  \"id2label\": {\"1\": \"not_entailment\", \"0\": \"entail\\\"ment\"}\n}\n");
    int rc = fx_mkdir_p(dir) != 0 || fx_write_file_atomic(P("%s/config.json", dir), text, strlen(text)) != 0;
    CHECK(rc == 0, "cannot write %s/config.json: %s", dir, fx_err());
    rc = rc ? rc : fedex("init_named", NULL, "init", "--config", P("%s/config.json", dir), "--out", P("%s/m_named", tmp), NULL);
    char *c = rc ? NULL : slurp(P("%s/m_named/config.json", tmp));
    CHECK(c && strstr(c, "\"id2label\": {\"0\": \"entail\\\"ment\", \"1\": \"not_entailment\"}") &&
          strstr(c, "\"label2id\": {\"entail\\\"ment\": 0, \"not_entailment\": 1}"),
          "init from a config naming its labels: exit %d, config.json %s", rc, c ? c : "(none)");
    free(c);
    rc = fedex("init_named3", NULL, "init", "--config", P("%s/config.json", dir), "--out", P("%s/m_named3", tmp), "--labels",
               "3", NULL);
    c = rc ? NULL : slurp(P("%s/m_named3/config.json", tmp));
    CHECK(c && strstr(c, "\"id2label\": {\"0\": \"LABEL_0\", \"1\": \"LABEL_1\", \"2\": \"LABEL_2\"}"),
          "init --labels 3 from a config naming 2: exit %d, config.json %s", rc, c ? c : "(none)");
    free(c);
    /* with num_labels given, the config loader leaves id2label's keys alone: a key past the labels (or
     * not a number) names nothing, and every label is LABEL_i */
    static const char *const bad_keys[] = {"\"100000\": \"b\"", "\"-1\": \"b\"", "\"x\": \"b\"", "\"0\": \"b\""};
    for (int i = 0; i < 4; i++) {
        memcpy(text, tiny_config, n);
        snprintf(text + n - 2, 128, ",\n  \"num_labels\": 2, \"id2label\": {\"0\": \"a\", %s}\n}\n", bad_keys[i]);
        char cfg[1024], o[1024];                 /* copies: P's buffers rotate */
        snprintf(cfg, sizeof cfg, "%s/config_bad%d.json", dir, i);
        snprintf(o, sizeof o, "%s/m_badkey%d", tmp, i);
        rc = fx_write_file_atomic(cfg, text, strlen(text)) != 0 ? -1 : fedex("init_badkey", NULL, "init", "--config", cfg, "--out", o, NULL);
        c = rc ? NULL : slurp(P("%s/config.json", o));
        CHECK(c && strstr(c, "\"id2label\": {\"0\": \"LABEL_0\", \"1\": \"LABEL_1\"}"),
              "init, num_labels 2 and id2label key %s: exit %d, config.json %s", bad_keys[i], rc, c ? c : "(none)");
        free(c);
    }
    free(text); free(dir);
}

/* A run's base model folder written again with other weights: resume and export refuse it (the checkpoint
 * carries the fingerprint of the base it trained on), and say so; the same weights again pass. */
static void test_base_changed(void) {
    const char *cfg = P("%s/config.json", cfgdir), *mdir = P("%s/model_b", tmp), *run = P("%s/run_b", tmp);
    char *m = fx_strdup(mdir), *r = fx_strdup(run);
    int rc = fedex("base_init", NULL, "init", "--config", cfg, "--out", m, "--seed", "4", NULL);
    rc = rc ? rc : fedex("base_train", NULL, "train", "--model", m, "--task", "RTE", "--data", glue, "--max-seq-length", "32",
                         "--batch-size", "32", "--local-epochs", "1", "--threads", "2", "--rounds", "1", "--out", r, NULL);
    CHECK(rc == 0, "a run on its own model: exit %d", rc);
    rc = fedex("base_init2", NULL, "init", "--config", cfg, "--out", m, "--seed", "5", NULL);
    int r1 = fedex("base_resume", NULL, "train", "--resume", r, "--rounds", "2", NULL);
    int r2 = fedex("base_export", NULL, "export", "--run", r, "--out", P("%s/export_b", tmp), NULL);
    CHECK(rc == 0 && r1 == 1 && err_has("base_resume", "differ from those this run trained on"),
          "--resume on a re-drawn base: exit %d, want 1 naming the change", r1);
    CHECK(r2 == 1 && err_has("base_export", "differ from those this run trained on"),
          "export on a re-drawn base: exit %d, want 1 naming the change", r2);
    rc = fedex("base_init3", NULL, "init", "--config", cfg, "--out", m, "--seed", "4", NULL);
    r1 = fedex("base_resume2", NULL, "train", "--resume", r, "--rounds", "2", NULL);
    CHECK(rc == 0 && r1 == 0, "--resume on the same base drawn again: exit %d", r1);
    free(m); free(r);
}

static void test_damaged_checkpoint(void) {
    struct { const char *key, *value; int poison; const char *want; } cases[] = {
        {"round", "-1", 0, "damaged metadata"},     {"round", "abc", 0, "damaged metadata"},
        {"round", "99999", 0, "completed 99999"},   {"best_round", "7", 0, "damaged metadata"},
        {"best", "x", 0, "damaged metadata"},       {NULL, NULL, 1, "holds nan at element 0"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *run = P("%s/run_damaged_%zu", tmp, i);
        char *run_s = fx_strdup(run);
        int rc = train(P("damaged_%zu", i), NULL, "--rounds", "2", "--out", run_s, NULL);
        if (rc != 0 || damage_state(run_s, cases[i].key, cases[i].value, cases[i].poison) != 0) {
            CHECK(0, "damaged checkpoint %zu: setup failed", i);
            free(run_s);
            continue;
        }
        rc = fedex(P("resume_damaged_%zu", i), NULL, "train", "--resume", run_s, "--rounds", "3", NULL);
        CHECK(rc == 1 && err_has(P("resume_damaged_%zu", i), cases[i].want),
              "resume from a checkpoint with %s = %s%s: exit %d, want 1 naming '%s'", cases[i].key ? cases[i].key : "global",
              cases[i].value ? cases[i].value : "NaN", "", rc, cases[i].want);
        free(run_s);
    }
}

/* What the model cannot take is refused before any client starts. */
static void test_model_limits(void) {
    int rc = fedex("positions", NULL, "train", "--model", model, "--task", "RTE", "--data", glue, "--rounds", "1",
                   "--max-seq-length", "129", NULL);
    CHECK(rc == 1 && err_has("positions", "exceeds") && err_has("positions", "positions (at most 128 tokens)"),
          "--max-seq-length past the position table: exit %d", rc);
    const char *dir = P("%s/small_vocab", tmp);
    char *dir_s = fx_strdup(dir);
    char *cfg = slurp(P("%s/config.json", model));
    char *at = cfg ? strstr(cfg, "50265") : NULL;
    if (!at) { CHECK(0, "small vocab: no vocab_size in the config"); free(cfg); free(dir_s); return; }
    memcpy(at, " 1000", 5);
    fx_mkdir_p(dir_s);
    fx_write_file_atomic(P("%s/config.json", dir_s), cfg, strlen(cfg));
    copy_lines(P("%s/vocab.json", model), P("%s/vocab.json", dir_s), -1);
    copy_lines(P("%s/merges.txt", model), P("%s/merges.txt", dir_s), -1);
    rc = fedex("small_init", NULL, "init", "--config", P("%s/config.json", dir_s), "--out", dir_s, NULL);
    rc = rc ? rc : fedex("small_vocab", NULL, "train", "--model", dir_s, "--task", "RTE", "--data", glue, "--rounds", "1",
                         "--max-seq-length", "32", NULL);
    CHECK(rc == 1 && err_has("small_vocab", "outside the model's vocabulary of 1000"),
          "token ids past the model's vocabulary: exit %d", rc);
    free(cfg); free(dir_s);
}

/* ---------------------------------------------------------------- what Hugging Face does */

/* A stock masked-LM base (no classifier) evaluates on a regression task: the head is created with the
 * task's label count, as Hugging Face creates it. */
static void test_headless_regression(const char *shared) {
    fx_mkdir_p(P("%s/STS-B", glue));
    copy_lines(P("%s/data/glue/STS-B/dev.tsv", shared), P("%s/STS-B/dev.tsv", glue), 1 + 20);
    int rc = fedex("stsb", NULL, "eval", "--model", model, "--task", "STS-B", "--data", glue, "--max-length", "32", NULL);
    char *o = slurp(P("%s/stsb.out", tmp));
    CHECK(rc == 0 && o && strstr(o, "STS-B dev: n 20") && strstr(o, "pearson") && err_has("stsb", "the head is random"),
          "eval STS-B on a base without a classifier: exit %d, '%s'", rc, o ? o : "");
    free(o);
}

int main(void) {
    if (run_harness_start("faults") != 0) {
        if (!fedex_bin || !*fedex_bin) printf("skipped: faults through the fedex binary (FEDEX is not set: run `make test`)\n");
        return check_done();
    }
    test_planted_link();
    test_fifo();
    const char *shared = shared_dir("faults during runs need roberta-base's tokenizer and GLUE RTE");
    if (shared && setup(shared) == 0) {
        test_stdin();
        test_small_shm();
        test_start_failure();
        test_gone_between_rounds();
        test_orphans();
        test_stopped_client();
        test_run_folder();
        test_damaged_checkpoint();
        test_init_whole();
        test_init_names();
        test_base_changed();
        test_model_limits();
        test_headless_regression(shared);
    } else if (shared) CHECK(0, "setting up the model and data in %s failed: %s", tmp, fx_err());
    run_harness_end();
    return check_done();
}
