/* tests/check.h: the test harness shared by every tests/test_*.c. A check counts as passed or failed,
 * a failure prints file:line and why, and check_done() prints "N passed, M failed" last and returns the
 * exit status. Tolerances live in each test's own table, with the reason for their size. */
#ifndef FEDEX_CHECK_H
#define FEDEX_CHECK_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>

static int check_passed, check_failed;

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (cond) check_passed++;                                             \
        else {                                                                \
            check_failed++;                                                   \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);              \
            fprintf(stderr, __VA_ARGS__);                                     \
            fputc('\n', stderr);                                              \
        }                                                                     \
    } while (0)

/* |got - want| <= atol + rtol * |want|, elementwise; reports the worst element. */
static inline int check_close(const char *what, const float *got, const float *want, size_t n,
                              double atol, double rtol, const char *file, int line) {
    size_t worst = 0; double worst_excess = -1, worst_err = 0;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - (double)want[i]);
        double excess = err - (atol + rtol * fabs((double)want[i]));
        if (!(err == err) || excess > worst_excess) { worst_excess = err == err ? excess : INFINITY; worst = i; worst_err = err; }
    }
    int ok = n == 0 || worst_excess <= 0;
    if (ok) check_passed++;
    else {
        check_failed++;
        fprintf(stderr, "FAIL %s:%d: %s: element %zu of %zu: got %.9g want %.9g (err %.3g, atol %.1g rtol %.1g)\n",
                file, line, what, worst, n, (double)got[worst], (double)want[worst], worst_err, atol, rtol);
    }
    return ok;
}
#define CHECK_CLOSE(what, got, want, n, atol, rtol) check_close(what, got, want, n, atol, rtol, __FILE__, __LINE__)

/* The shared data folder beside the checkout (FEDEX_SHARED overrides). NULL, with a visible line, when
 * it is absent: the caller skips what needs it. */
static inline const char *shared_dir(const char *why) {
    const char *d = getenv("FEDEX_SHARED");
    if (!d) d = "../shared";
    struct stat st;
    if (stat(d, &st) != 0 || !S_ISDIR(st.st_mode)) {
        printf("skipped: %s (no %s beside the checkout)\n", why, d);
        return NULL;
    }
    return d;
}

/* Runs CMD through the shell; its standard output (what CMD does not redirect) into OUT; returns the exit
 * status, -1 if it could not run or was killed. */
static inline int check_run(const char *cmd, char *out, size_t cap) {
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, cap - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static inline int check_done(void) {
    printf("%d passed, %d failed\n", check_passed, check_failed);
    return check_failed ? 1 : 0;
}
#endif
