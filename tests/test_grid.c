/* tests/test_grid.c: `fedex grid` end to end through the command line ($FEDEX) on the embedded model and
 * the synthetic task (tiny shapes, a few short rounds): the estimate before the first run, progress lines
 * with the time left, the table and plots written, complete runs skipped, an interrupted grid resumed by the
 * same command, and bad input refused. Not the runs' numerics (test_train) nor the plots' (test_plot). */
#include "fedex.h"
#include "check.h"

#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WAIT_LINE_S 120.0
#define WAIT_RUN_S 300.0

#include "run_harness.h"

static char grid[1024];

/* `fedex grid` on fedex and fedit, quick, ROUNDS rounds. */
static pid_t start_grid(const char *tag, const char *rounds) {
    const char *args[] = {"grid", "--out", grid, "--methods", "fedex,fedit", "--quick", "--", "--rounds", rounds,
                          "--threads", "2", NULL};
    return spawn(tag, NULL, args);
}

static int lines_of(const char *path) {
    char *t = slurp(path);
    int n = 0;
    for (const char *p = t; p && *p; p++) n += *p == '\n';
    free(t);
    return n;
}

static void test_interrupted_then_resumed(void) {
    /* interrupted once the first run has saved a round */
    pid_t p = start_grid("g1", "3");
    const char *m = P("%s/runs/synthetic/fedex/metrics.jsonl", grid);
    char mpath[1024];
    snprintf(mpath, sizeof mpath, "%s", m);
    double t0 = fx_now();
    while (lines_of(mpath) < 1 && fx_now() - t0 < WAIT_LINE_S) {
        struct timespec ts = {0, 20000000};
        nanosleep(&ts, NULL);
    }
    CHECK(lines_of(mpath) >= 1, "the grid's first run saved no round in %.0f s", WAIT_LINE_S);
    kill(-p, SIGINT);
    int rc = finish("g1", p);
    char *o = slurp(P("%s/g1.out", tmp));
    CHECK(rc == 130 || rc == 0, "interrupted grid: exit %d, want 130 (or 0 had it finished)", rc);
    if (rc == 130) CHECK(o && strstr(o, "interrupted; the same command resumes it"), "the interrupted grid does not say how to resume");
    const char *est = o ? strstr(o, "estimated time: ") : NULL, *first = o ? strstr(o, "[1/2] synthetic fedex: starting") : NULL;
    CHECK(est && first && est < first, "the estimated time is not printed before the first run");
    free(o);

    /* the same command again: whatever was saved continues, nothing is redone */
    rc = run_argv("g2", NULL, (const char *[]){"grid", "--out", grid, "--methods", "fedex,fedit", "--quick", "--", "--rounds", "3",
                                               "--threads", "2", NULL});
    CHECK(rc == 0, "resumed grid: exit %d", rc);
    if (rc) show_err("g2");
    o = slurp(P("%s/g2.out", tmp));
    CHECK(o && strstr(o, "synthetic fedex: resuming after round") && !strstr(o, "synthetic fedex: starting"),
          "the interrupted run was not resumed");
    CHECK(o && strstr(o, "the pace of the rounds already saved here"), "the resumed grid's estimate is not from its saved rounds");
    CHECK(o && strstr(o, "round 3/3") && strstr(o, "% of the grid, ") && strstr(o, " left\n"),
          "no progress line with the grid's share done and the time left");
    free(o);
    for (int k = 0; k < 2; k++) {
        const char *dir = P("%s/runs/synthetic/%s", grid, k ? "fedit" : "fedex");
        metrics mt;
        CHECK(metrics_load(dir, &mt) == 0 && mt.n == 3, "%s: not 3 rounds after the resumed grid", dir);
        for (int r = 0; r < mt.n; r++) CHECK(num(&mt.line[r], "round") == r + 1, "%s: line %d is round %g", dir, r + 1, num(&mt.line[r], "round"));
        metrics_free(&mt);
    }
    char *md = slurp(P("%s/table.md", grid)), *csv = slurp(P("%s/table.csv", grid)), *svg = slurp(P("%s/plots/synthetic.svg", grid));
    CHECK(md && strstr(md, "| fedex |") && strstr(md, "| fedit |") && strstr(md, "synthetic (accuracy)"), "table.md lacks a row or the task");
    CHECK(md && strstr(md, "| fedex |") < strstr(md, "| fedit |"), "table.md's rows are not in the grid's method order");
    CHECK(csv && !strncmp(csv, "method,synthetic accuracy,synthetic round,average\n", 50), "table.csv's header");
    CHECK(svg && strstr(svg, "<svg") && strstr(svg, "class=\"cell\"") && strstr(svg, "fedit \xc2\xb7 synthetic"),
          "plots/synthetic.svg lacks the runs or the heat map");
    free(md); free(csv); free(svg);
    char *log = slurp(P("%s/runs/synthetic/fedit/train.log", grid));
    CHECK(log && strstr(log, "round   3  dev accuracy") && strstr(log, " left\n"), "train's round lines do not say the time left");
    free(log);

    /* and once more: every run complete, none started */
    rc = run_argv("g3", NULL, (const char *[]){"grid", "--out", grid, "--methods", "fedex,fedit", "--quick", "--", "--rounds", "3",
                                               "--threads", "2", NULL});
    o = slurp(P("%s/g3.out", tmp));
    CHECK(rc == 0 && o && strstr(o, "2 complete, 0 to resume, 0 to start") && !strstr(o, "[1/"),
          "a complete grid: exit %d, runs started again or not counted complete", rc);
    free(o);
}

static void test_refusals(void) {
    /* usage errors exit 2 and run nothing */
    int rc = fedex("bad1", NULL, "grid", "--out", grid, "--methods", "fedex,bogus", NULL);
    CHECK(rc == 2 && err_has("bad1", "unknown aggregation 'bogus'"), "an unknown method: exit %d", rc);
    rc = fedex("bad2", NULL, "grid", "--out", grid, "--", "--agg", "fedit", NULL);
    CHECK(rc == 2 && err_has("bad2", "--agg is the grid's to set"), "--agg among the train options: exit %d", rc);
    rc = fedex("bad3", NULL, "grid", "--out", grid, "--tasks", "RTE", NULL);
    CHECK(rc == 2 && err_has("bad3", "needs --model"), "a GLUE task without a model: exit %d", rc);
    const char *fresh = P("%s/never", tmp);
    rc = fedex("dup_m", NULL, "grid", "--out", fresh, "--methods", "fedex,fedit,ours", "--quick", NULL);
    CHECK(rc == 2 && err_has("dup_m", "names fedex twice") && !exists(fresh), "a method named twice (once by its alias): exit %d", rc);
    rc = fedex("dup_t", NULL, "grid", "--out", fresh, "--tasks", "synthetic,SYNTHETIC", "--quick", NULL);
    CHECK(rc == 2 && err_has("dup_t", "names synthetic twice") && !exists(fresh), "a task named twice: exit %d", rc);
    rc = fedex("rounds0", NULL, "grid", "--out", fresh, "--methods", "fedex", "--", "--rounds", "0", NULL);
    CHECK(rc == 2 && err_has("rounds0", "--rounds must be at least 1") && !exists(fresh),
          "a train option train refuses (--rounds 0): exit %d, or something ran", rc);
    rc = fedex("lora_vera", NULL, "grid", "--out", fresh, "--methods", "fedex,fedex-vera", "--quick", "--", "--lora-r", "8", NULL);
    CHECK(rc == 2 && err_has("lora_vera", "the fedex-vera run on synthetic") && !exists(fresh),
          "an option one method's run refuses is refused before any run starts: exit %d", rc);
    rc = fedex("bad4", NULL, "grid", NULL);
    CHECK(rc == 2 && err_has("bad4", "--out DIR is required"), "no --out: exit %d", rc);
    rc = fedex("dry", NULL, "grid", "--out", P("%s/dry", tmp), "--quick", "--dry-run", NULL);
    char *o = slurp(P("%s/dry.out", tmp));
    CHECK(rc == 0 && o && strstr(o, "estimated time: ") && !exists(P("%s/dry", tmp)), "--dry-run: exit %d, or it ran something", rc);
    free(o);
    /* --dry-run --config FILE reads FILE itself, whatever its name and whatever lies beside it */
    const char *cdir = P("%s/cfgx", tmp);
    fx_mkdir_p(cdir);
    fx_write_file_atomic(P("%s/tiny.json", cdir), tiny_config, strlen(tiny_config));
    rc = fedex("dry_cfg", NULL, "grid", "--out", P("%s/dry2", tmp), "--config", P("%s/tiny.json", cdir), "--data", tmp,
               "--tasks", "RTE", "--methods", "fedex", "--quick", "--dry-run", NULL);
    o = slurp(P("%s/dry_cfg.out", tmp));
    CHECK(rc == 0 && o && strstr(o, "estimated time: ") && !exists(P("%s/dry2", tmp)),
          "--dry-run --config FILE: exit %d, or it ran something", rc);
    if (rc) show_err("dry_cfg");
    free(o);
    /* ... and a usage error is found before --config's model is made */
    rc = fedex("cfg_dup", NULL, "grid", "--out", P("%s/cfg_dup", tmp), "--config", P("%s/tiny.json", cdir), "--data", tmp,
               "--tasks", "RTE", "--methods", "fedex,ours", "--quick", NULL);
    CHECK(rc == 2 && err_has("cfg_dup", "names fedex twice") && !exists(P("%s/cfg_dup", tmp)),
          "--config with a method named twice: exit %d, or the model was made first", rc);
}

/* Every method of the default list, one quick round each: all complete and all in the table (the VeRA and
 * SORF-VeRA methods take the quick VeRA rank, which the tiny model's widths allow). */
static void test_every_method(void) {
    const char *dir = P("%s/every", tmp);
    char d[1024];
    snprintf(d, sizeof d, "%s", dir);
    int rc = fedex("every", NULL, "grid", "--out", d, "--quick", "--", "--rounds", "1", "--threads", "2", NULL);
    CHECK(rc == 0, "a quick grid of every method: exit %d", rc);
    if (rc != 0) show_err("every");
    char *t = slurp(P("%s/table.md", d));
    const char *methods[] = {"centralized", "fedex", "fedit", "ffa", "fedex-vera", "fedit-vera", "ffa-vera",
                             "sorf-vera", "fedex-sorf-vera"};
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++) {
        char row[64];
        snprintf(row, sizeof row, "| %s |", methods[i]);
        CHECK(t && strstr(t, row), "the every-method grid's table has no row for %s", methods[i]);
    }
    free(t);
}

int main(void) {
    if (run_harness_start("grid") != 0) {
        printf("skipped: fedex grid end to end (FEDEX, the path of the fedex binary, is not set: run `make test`)\n");
        return check_done();
    }
    snprintf(grid, sizeof grid, "%s/grid", tmp);
    test_interrupted_then_resumed();
    test_refusals();
    test_every_method();
    run_harness_end();
    return check_done();
}
