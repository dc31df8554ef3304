/* tests/test_cli.c: the command line as a user meets it, through $FEDEX: every command parsed by the one
 * option parser (`--opt value` and `--opt=value`, `--` ends the options, generated help, usage errors
 * exit 2 with one line naming the problem), and the parser itself on a table of its own. Not what the
 * commands compute (the other tests). */
#include "fedex.h"
#include "check.h"

#include <stddef.h>
#include <string.h>

static const char *fedex_bin;
static char out[65536];

/* Runs `$FEDEX ARGS 2>&1`; its exit status, output in OUT. */
static int fx(const char *args) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", fedex_bin, args);
    return check_run(cmd, out, sizeof out);
}

/* ---------------------------------------------------------------- the parser on its own table */

typedef struct { int n; double x; const char *s; int flag; long long seed; } toy;
static const fx_opt toy_opt[] = {
    {"--n", "--n_alias", FX_OPT_INT, offsetof(toy, n), "3", "an integer", 1, 10},
    {"--x", NULL, FX_OPT_REAL, offsetof(toy, x), "0.5", "a number", 0, 0},
    {"--s", NULL, FX_OPT_STR, offsetof(toy, s), NULL, "a string", 0, 0},
    {"--flag", NULL, FX_OPT_FLAG, offsetof(toy, flag), NULL, "a flag", 0, 0},
    {"--seed", NULL, FX_OPT_SEED, offsetof(toy, seed), "7", "a seed", 0, 0},
};
static const fx_cmdline toy_cl = {"toy", "[options] A [B]", "A toy.\n", sizeof(toy), toy_opt, 5, 1, 2, "arguments"};

static int parse(toy *t, const char **pos, int *np, int argc, const char **argv) {
    int set[5];
    return fx_opts_parse(&toy_cl, argc, (char **)argv, t, set, pos, np);
}

static void test_parser(void) {
    toy t;
    const char *pos[2];
    int np;
    const char *a1[] = {"toy", "--n=4", "--x", "2e-3", "--s=a=b", "--flag", "p", "--", "--n", NULL};
    CHECK(parse(&t, pos, &np, 9, a1) == 0 && t.n == 4 && t.x == 2e-3 && !strcmp(t.s, "a=b") && t.flag &&
          t.seed == 7 && np == 2 && !strcmp(pos[0], "p") && !strcmp(pos[1], "--n"),
          "--opt=value, --opt value, a flag, defaults, and `--` ending the options: %s", fx_err());
    const char *a2[] = {"toy", "-", "--n_alias", "5", NULL};
    CHECK(parse(&t, pos, &np, 4, a2) == 0 && np == 1 && !strcmp(pos[0], "-") && t.n == 5 && t.x == 0.5 && !t.flag &&
          !t.s, "a lone '-' is positional; the alias spelling; a second parse starts from the defaults");
    struct { const char *argv[4]; int argc; const char *want; } bad[] = {
        {{"toy", "--n=11", "p"}, 3, "[1, 10]"},
        {{"toy", "--n", "x", "p"}, 4, "not a whole number"},
        {{"toy", "--x=1e999", "p"}, 3, "not a number"},
        {{"toy", "--flag=1", "p"}, 3, "takes no value"},
        {{"toy", "p", "--s"}, 3, "needs a value"},
        {{"toy", "--bogus", "p"}, 3, "unknown option '--bogus'"},
        {{"toy", "--n", "2", "--n"}, 4, "given twice"},
        {{"toy"}, 1, "needs arguments"},
        {{"toy", "a", "b", "c"}, 4, "at most 2"},
        {{"toy", "--seed=-1", "p"}, 3, "not a seed"},
        {{"toy", "--s=", "p"}, 3, "--s: an empty value"},
        {{"toy", "--n=99999999999", "p"}, 3, "[1, 10]"},               /* past int: still the range it must be in */
        {{"toy", "--seed=9223372036854775808", "p"}, 3, "from 0 to 9223372036854775807"},
        {{"toy", "--s", "", "p"}, 4, "--s: an empty value"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = parse(&t, pos, &np, bad[i].argc, bad[i].argv);
        CHECK(rc == -1 && strstr(fx_err(), bad[i].want), "bad input %zu refused naming '%s': rc %d, '%s'", i,
              bad[i].want, rc, fx_err());
    }
    const char *h[] = {"toy", "--", "--help", NULL};
    CHECK(!fx_opts_wants_help(3, (char **)h), "--help after `--` is an argument");
    char *buf = NULL; size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    fx_opts_help(&toy_cl, f);
    fclose(f);
    CHECK(strstr(buf, "usage: fedex toy [options] A [B]") && strstr(buf, "--n N") && strstr(buf, "[default 3]") &&
          strstr(buf, "(--n_alias)") && strstr(buf, "--flag ") && strstr(buf, "`--` ends the options"),
          "generated help lists every option: %s", buf);
    free(buf);
}

/* ---------------------------------------------------------------- every command */

static void test_commands(const char *shared) {
    static const char *const cmds[] = {"inspect", "tokenize", "init", "eval", "train", "demo", "export"};
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++) {
        char a[256];
        snprintf(a, sizeof a, "help %s", cmds[i]);
        int rc = fx(a);
        char want[64];
        snprintf(want, sizeof want, "usage: fedex %s", cmds[i]);
        CHECK(rc == 0 && strstr(out, want), "fedex help %s: exit %d, '%.200s'", cmds[i], rc, out);
        snprintf(a, sizeof a, "%s --no-such-option", cmds[i]);
        rc = fx(a);
        CHECK(rc == 2 && strstr(out, "--no-such-option") && !strchr(strchr(out, '\n') ? strchr(out, '\n') + 1 : "", '\n'),
              "fedex %s --no-such-option: exit %d (want 2, one line naming it): '%s'", cmds[i], rc, out);
    }
    /* missing what a command needs is a usage error too */
    static const char *const missing[] = {"inspect", "tokenize hello", "init --out x", "eval --task RTE",
                                          "export --run x", "train --model x", "demo --agg fedit"};
    for (size_t i = 0; i < sizeof missing / sizeof missing[0]; i++) {
        int rc = fx(missing[i]);
        CHECK(rc == 2, "fedex %s: exit %d, want 2: '%s'", missing[i], rc, out);
    }
    /* the demo trains LoRA methods: --vera would be saved into its runs' settings and read back as VeRA */
    CHECK(fx("demo --vera --rounds 1") == 2 && strstr(out, "--vera"), "demo --vera: '%s'", out);
    CHECK(fx("tokenize --model=. --max-length=x hi") == 2 && strstr(out, "--max-length"), "--opt=value is parsed and "
          "checked: '%s'", out);
    /* values no run can use are usage errors before anything starts: an empty path, a thread count past
     * what any machine runs */
    CHECK(fx("init --config x --out ''") == 2 && strstr(out, "--out: an empty value"), "init --out '': '%s'", out);
    CHECK(fx("train --threads 100000 --rounds 1") == 2 && strstr(out, "--threads must be between 0"),
          "train --threads 100000: '%s'", out);
    if (!shared) return;
    char model[1024], a[2048];
    snprintf(model, sizeof model, "%s/models/roberta-base", shared);
    /* `--` ends the options: a text that starts with dashes is tokenised, the same ids as the library's */
    fx_tokenizer *tok = fx_tok_load(model);
    if (!tok) { CHECK(0, "%s", fx_err()); return; }
    int32_t *ids = NULL;
    int n = 0, cap = 0;
    fx_tok_encode_seq(tok, "--b", "-x", 128, &ids, &n, &cap);
    char want[512] = "";
    for (int i = 0; i < n; i++) snprintf(want + strlen(want), sizeof want - strlen(want), "%s%d", i ? " " : "", ids[i]);
    snprintf(a, sizeof a, "tokenize --model=%s -- --b -x", model);
    int rc = fx(a);
    CHECK(rc == 0 && !strncmp(out, want, strlen(want)) && out[strlen(want)] == '\n',
          "tokenize -- --b -x: exit %d, '%s', want '%s'", rc, out, want);
    n = 0;
    fx_tok_encode_seq(tok, "a b c d e f", NULL, 5, &ids, &n, &cap);
    snprintf(a, sizeof a, "tokenize --max-length=5 --model %s 'a b c d e f'", model);
    rc = fx(a);
    int ok = rc == 0 && n == 5;
    char *p = out;
    for (int i = 0; ok && i < n; i++) { long v = strtol(p, &p, 10); ok = v == ids[i]; }
    CHECK(ok, "tokenize --max-length=5: exit %d, '%s'", rc, out);
    free(ids);
    fx_tok_free(tok);
}

/* Progress on a terminal: TERM=dumb gets no cursor movement; a terminal whose standard output goes to a
 * pipe (`| tee log`) still gets the per-client lines on it. `script` gives the run a terminal. */
static void test_terminal(void) {
    if (check_run("command -v script >/dev/null", out, sizeof out) != 0) {
        printf("skipped: progress on a terminal (no `script` here to make one)\n");
        return;
    }
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "script -qc 'TERM=dumb %s train --rounds 1 --local-epochs 1 --threads 2' /dev/null",
             fedex_bin);
    int rc = check_run(cmd, out, sizeof out);
    CHECK(rc == 0 && !strchr(out, '\033') && strstr(out, "round 1 client 0: "),
          "TERM=dumb: exit %d, plain per-client lines and no escape sequences: '%.300s'", rc, out);
    snprintf(cmd, sizeof cmd, "script -qc 'TERM=xterm %s train --rounds 1 --local-epochs 1 --threads 2 | cat' "
             "/dev/null", fedex_bin);
    rc = check_run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "round 1 client 0: ") && strstr(out, "samples x 1 epochs"),
          "a terminal with standard output piped: exit %d, the per-client lines reach the pipe", rc);
}

int main(void) {
    test_parser();
    fedex_bin = getenv("FEDEX");
    if (!fedex_bin || !*fedex_bin) {
        printf("skipped: the command line through the fedex binary (FEDEX is not set: run `make test`)\n");
        return check_done();
    }
    CHECK(fx("--version") == 0 && !strncmp(out, "fedex " FX_VERSION " (", strlen("fedex " FX_VERSION " (")),
          "--version: '%s'", out);
    test_terminal();
    test_commands(shared_dir("tokenize through the command line needs roberta-base's vocabulary"));
    return check_done();
}
