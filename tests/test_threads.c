/* tests/test_threads.c: cores that follow the work. fx_thread_share's arithmetic; a training step whose
 * results do not depend on the thread count (what lets a client change it between steps); and `fedex
 * train` with 3 clients, their threads rebalanced as they finish or fixed (FEDEX_FIXED_THREADS=1): the
 * same run, bit for bit, with client_idle in metrics.jsonl, lower when the cores follow the work. */
#include "fedex.h"
#include "check.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define WAIT_LINE_S 120.0
#define WAIT_RUN_S 120.0
#include "run_harness.h"

#define FIX "tests/fixtures/"

/* ============================================================================================
 * fx_thread_share
 * ============================================================================================ */

static void test_share(void) {
    /* by hand: 16 cores for 3 clients, 2 cores for 3, 5 for 2, 7 for 7, and no client running */
    static const struct { int cores, running, want[8]; } cases[] = {
        {16, 3, {6, 5, 5}}, {2, 3, {1, 1, 1}}, {5, 2, {3, 2}}, {7, 7, {1, 1, 1, 1, 1, 1, 1}}, {16, 1, {16}},
        {8, 5, {2, 2, 2, 1, 1}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (int r = 0; r < cases[i].running; r++)
            CHECK(fx_thread_share(cases[i].cores, cases[i].running, r) == cases[i].want[r],
                  "%d cores, %d running: rank %d gets %d threads, want %d", cases[i].cores, cases[i].running, r,
                  fx_thread_share(cases[i].cores, cases[i].running, r), cases[i].want[r]);
    CHECK(fx_thread_share(12, 0, 0) == 12, "no client running: all 12 cores");
    /* in general: at least one each, within one of each other, adding up to the cores (when there are
     * at least as many cores as clients) */
    int bad = 0;
    for (int cores = 1; cores <= 40; cores++)
        for (int running = 1; running <= 40; running++) {
            int sum = 0, lo = 1 << 30, hi = 0;
            for (int r = 0; r < running; r++) {
                int t = fx_thread_share(cores, running, r);
                sum += t;
                if (t < lo) lo = t;
                if (t > hi) hi = t;
            }
            bad += lo < 1 || hi - lo > 1 || sum != (running <= cores ? cores : running);
        }
    CHECK(bad == 0, "%d (cores, running) pairs whose shares are not balanced or do not add up", bad);
}

/* ============================================================================================
 * A training step, with 1, 2 and 3 threads
 * ============================================================================================ */

/* A RoBERTa large enough that every kind of parallel loop runs on several threads (products of
 * 512 x 512 x 128 and more, elementwise loops over 64k values): a training step's loss, logits and
 * gradient, and the AdamW update after it, are the same bits with any thread count. */
static void test_step_threads(void) {
    fx_config c;
    if (fx_config_load(FIX "model_config.json", &c) != 0) { CHECK(0, "%s", fx_err()); return; }
    c.hidden = 128; c.heads = 4; c.intermediate = 512; c.max_positions = 80; c.vocab_size = 300;
    c.hidden_dropout = 0.1f; c.attention_dropout = 0.1f; c.classifier_dropout = 0.1f;
    fx_adapter_cfg a = {.kind = FX_LORA, .r = 8, .alpha = 16, .seed = 3};
    if (fx_targets_parse("query,key,value,attention.output.dense,intermediate.dense,output.dense", &a.targets) != 0) {
        CHECK(0, "%s", fx_err());
        return;
    }
    enum { N = 8, T = 64 };
    fx_batch b = {.n = N, .T = T};
    b.ids = fx_malloc(sizeof(int32_t) * N * T);
    b.mask = fx_malloc(N * T);
    b.labels = fx_malloc(sizeof(float) * N);
    fx_rng r;
    fx_rng_seed(&r, 1);
    for (int i = 0; i < N; i++) {
        int len = T - 3 * i; /* rows of several lengths: padding too */
        for (int t = 0; t < T; t++) {
            b.ids[i * T + t] = t < len ? 3 + (int32_t)(fx_rng_u64(&r) % 290) : c.pad_id;
            b.mask[i * T + t] = t < len;
        }
        b.labels[i] = (float)(i % 3);
    }
    float *ref_grad = NULL, *ref_train = NULL, ref_logits[N * 3], ref_loss = 0;
    for (int threads = 1; threads <= 3; threads++) {
        fx_model m;
        if (fx_model_create(&m, &c, &a, NULL) != 0) { CHECK(0, "%s", fx_err()); break; }
        fx_model_init_base(&m, 2);
        fx_model_init_adapters(&m, 3);
        fx_rng_seed(&m.drop, 4);
        fx_set_threads(threads);
        float logits[N * 3];
        float loss = fx_model_step(&m, &b, 1, logits);
        fx_adamw_update(&m, 1e-3f, 0.01f);
        if (threads == 1) {
            ref_loss = loss;
            memcpy(ref_logits, logits, sizeof logits);
            ref_grad = fx_malloc(sizeof(float) * m.train.n);
            ref_train = fx_malloc(sizeof(float) * m.train.n);
            memcpy(ref_grad, m.grad, sizeof(float) * m.train.n);
            memcpy(ref_train, m.train.data, sizeof(float) * m.train.n);
        } else {
            CHECK(loss == ref_loss && !memcmp(logits, ref_logits, sizeof logits),
                  "%d threads: loss or logits differ from 1 thread's (%.9g vs %.9g)", threads, loss, ref_loss);
            CHECK(!memcmp(m.grad, ref_grad, sizeof(float) * m.train.n), "%d threads: the gradient differs from 1 thread's",
                  threads);
            CHECK(!memcmp(m.train.data, ref_train, sizeof(float) * m.train.n),
                  "%d threads: the adapters after AdamW differ from 1 thread's", threads);
        }
        fx_model_free(&m);
    }
    fx_set_threads(2);
    free(ref_grad); free(ref_train); free(b.ids); free(b.mask); free(b.labels);
}

/* ============================================================================================
 * 3 clients, rebalanced and fixed
 * ============================================================================================ */

static void test_run(void) {
    const char *out[2] = {P("%s/rebalanced", tmp), P("%s/fixed", tmp)};
    double idle[2][2] = {{NAN, NAN}, {NAN, NAN}};
    for (int fixed = 0; fixed < 2; fixed++) {
        if (fixed) setenv("FEDEX_FIXED_THREADS", "1", 1);
        int rc = fedex(fixed ? "fixed" : "rebalanced", NULL, "train", "--model", model, "--task", "RTE", "--data", glue,
                       "--max-seq-length", "32", "--batch-size", "8", "--local-epochs", "1", "--num-clients", "3",
                       "--rounds", "2", "--threads", "4", "--out", out[fixed], NULL);
        unsetenv("FEDEX_FIXED_THREADS");
        CHECK(rc == 0, "%s run exited %d", fixed ? "fixed" : "rebalanced", rc);
        if (rc != 0) { show_err(fixed ? "fixed" : "rebalanced"); return; }
        metrics m;
        if (metrics_load(out[fixed], &m) != 0 || m.n != 2) { CHECK(0, "%s: metrics.jsonl is not 2 lines", out[fixed]); continue; }
        for (int k = 0; k < 2; k++) {
            CHECK(line_ok(&m.line[k], k + 1, 3), "%s: round %d's line is incomplete", out[fixed], k + 1);
            idle[fixed][k] = num(&m.line[k], "client_idle");
            const fx_json *cl = arr(&m.line[k], "clients");
            for (size_t i = 0; cl && i < cl->n; i++)
                CHECK(num(&cl->kids[i], "seconds_cores") > 0 && num(&cl->kids[i], "seconds_cpu") > 0,
                      "%s round %d client %zu: seconds_cores %g, seconds_cpu %g", out[fixed], k + 1, i,
                      num(&cl->kids[i], "seconds_cores"), num(&cl->kids[i], "seconds_cpu"));
            CHECK(idle[fixed][k] >= 0 && idle[fixed][k] < 1, "%s round %d: client_idle %g, want a fraction in [0, 1)", out[fixed], k + 1,
                  idle[fixed][k]);
        }
        metrics_free(&m);
    }
    /* Fixed: 4 / 3 = 1 thread each, a core never held: at least a quarter idle. Rebalanced: 2 + 1 + 1,
     * then 2 + 2, then 4 as clients finish: idle only in the moments no client is training (the job on
     * its way, the last answer on its way back). Round 2 (round 1 also waits for the clients to start). */
    CHECK(idle[1][1] >= 0.25, "fixed threads: client_idle %g in round 2, want at least 0.25 (a core unused)", idle[1][1]);
    CHECK(idle[0][1] < idle[1][1], "rebalanced threads: client_idle %g in round 2, not below the fixed run's %g",
          idle[0][1], idle[1][1]);
    char *a = metrics_untimed(out[0]), *b = metrics_untimed(out[1]);
    CHECK(a && b && !strcmp(a, b), "the rebalanced and fixed runs' metrics differ (times aside)");
    free(a); free(b);
    CHECK(same_bytes(P("%s/adapter_model.safetensors", out[0]), P("%s/adapter_model.safetensors", out[1])) &&
          same_bytes(P("%s/residual.safetensors", out[0]), P("%s/residual.safetensors", out[1])),
          "the rebalanced and fixed runs' adapters or residuals differ");
}

int main(void) {
    test_share();
    test_step_threads();
    if (run_harness_start("threads") != 0) {
        if (!fedex_bin || !*fedex_bin) printf("skipped: 3 clients through the fedex binary (FEDEX is not set: run `make test`)\n");
        return check_done();
    }
    const char *shared = shared_dir("3 clients need roberta-base's tokenizer and GLUE RTE");
    if (shared && setup(shared) == 0) test_run();
    else if (shared) CHECK(0, "setting up the model and data in %s failed: %s", tmp, fx_err());
    run_harness_end();
    return check_done();
}
