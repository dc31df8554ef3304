/* tests/test_vera.c: VeRA as PEFT defines it and the VeRA fork's command line. The shared projections
 * against PyTorch's own draws (tests/make_vera_fixtures.py: PEFT's _kaiming_init on torch's CPU generator),
 * vera_dropout's default, save_projection false round-tripping through the adapter files, the fork's README
 * command end to end ($FEDEX), its flags honoured or refused by name, and --vera-scale's cost in the
 * aggregation error. SORF-VeRA's math is tests/test_sorf.c's. */
#include "fedex.h"
#include "check.h"

#define WAIT_LINE_S 120.0
#define WAIT_RUN_S 120.0
#include "run_harness.h"

#define FIX "tests/fixtures/"

/* The tiny shapes of make_model_fixtures.py (hidden 16, intermediate 32), every target adapted. */
static void small_config(fx_config *c) {
    memset(c, 0, sizeof *c);
    c->vocab_size = 50; c->hidden = 16; c->layers = 2; c->heads = 2; c->intermediate = 32;
    c->max_positions = 40; c->type_vocab_size = 1; c->pad_id = 1; c->num_labels = 2;
    c->layer_norm_eps = 1e-5f; c->initializer_range = 0.02f;
}

static void test_projections(void) {
    fx_st_file f;
    if (fx_st_open(FIX "vera_projections.safetensors", &f) != 0) { CHECK(0, "%s", fx_err()); return; }
    static const uint32_t keys[] = {0, 7, 4294967295u};
    fx_config c;
    small_config(&c);
    for (int i = 0; i < 3; i++) {
        fx_adapter_cfg a = {.kind = FX_VERA, .targets = 63, .r = 8, .d_initial = 0.1f, .seed = 3, .proj_key = keys[i]};
        fx_model m;
        if (fx_model_create(&m, &c, &a, NULL) != 0) { CHECK(0, "%s", fx_err()); continue; }
        CHECK(m.vera_in == 32 && m.vera_out == 32, "in_max %d, out_max %d: PEFT's _find_dim gives 32, 32", m.vera_in, m.vera_out);
        char na[32], nb[32];
        snprintf(na, sizeof na, "vera_A_%u", keys[i]);
        snprintf(nb, sizeof nb, "vera_B_%u", keys[i]);
        const fx_st_tensor *ta = fx_st_find(&f, na), *tb = fx_st_find(&f, nb);
        CHECK(ta && tb && fx_st_numel(ta) == 8 * 32 && fx_st_numel(tb) == 32 * 8, "fixture lacks %s or %s", na, nb);
        if (ta && tb) {
            float *oa, *ob;
            const float *ea = fx_st_f32(&f, ta, &oa), *eb = fx_st_f32(&f, tb, &ob);
            /* bit for bit: the same generator, the same float rounding */
            CHECK(!memcmp(ea, m.vera_A, 8 * 32 * sizeof(float)), "key %u: vera_A differs from PEFT's", keys[i]);
            CHECK(!memcmp(eb, m.vera_B, 32 * 8 * sizeof(float)), "key %u: vera_B differs from PEFT's", keys[i]);
            float amax = 0, bmax = 0;
            for (int j = 0; j < 256; j++) { amax = fmaxf(amax, fabsf(m.vera_A[j])); bmax = fmaxf(bmax, fabsf(m.vera_B[j])); }
            CHECK(amax <= sqrtf(6.0f / 32) && amax > 0.9f * sqrtf(6.0f / 32) && bmax <= sqrtf(6.0f / 8) &&
                  bmax > 0.9f * sqrtf(6.0f / 8), "bounds: |vera_A| %g (sqrt(6/32) %g), |vera_B| %g (sqrt(6/8) %g)",
                  (double)amax, sqrt(6.0 / 32), (double)bmax, sqrt(6.0 / 8));
            free(oa); free(ob);
        }
        fx_model_free(&m);
    }
    fx_st_close(&f);
}

/* The train table's defaults and spellings, parsed in process. */
static int parse_train(fx_settings *s, int *set, const char *const *args) {
    char *argv[64];
    int n = 0;
    argv[n++] = "train";
    for (int i = 0; args[i]; i++) argv[n++] = (char *)args[i];
    return fx_opts_parse(&fx_train_cmdline, n, argv, s, set, NULL, NULL) == 0 ? fx_settings_check(s, set) : -1;
}

static void test_settings(void) {
    fx_settings s;
    int set[FX_SETTINGS_MAX];
    fx_adapter_cfg a;
    const char *vera[] = {"--agg_type", "ours", "--vera", "--r", "128", NULL};
    CHECK(parse_train(&s, set, vera) == 0 && s.agg == FX_AGG_FEDEX_VERA && s.vera_r == 128, "--agg_type ours --vera --r 128: %s", fx_err());
    fx_settings_adapter(&s, &a);
    CHECK(a.kind == FX_VERA && a.r == 128 && a.dropout == 0.0f && a.proj_key == 0 && !a.skip_projection,
          "VeRA defaults as PEFT's: vera_dropout 0, projection_prng_key 0, save_projection true");
    CHECK(fx_settings_residual_scale(&s) == 1.0f, "the residual is exact by default");
    const char *lora[] = {"--r", "8", NULL};
    CHECK(parse_train(&s, set, lora) == 0 && s.agg == FX_AGG_FEDEX && s.lora_r == 8, "--r 8 without --vera: LoRA's rank");
    fx_settings_adapter(&s, &a);
    CHECK(a.kind == FX_LORA && fabsf(a.dropout - 0.1f) < 1e-7f, "LoRA's dropout default stays 0.1");
    const char *fork[] = {"--agg_type=ours_vera", "--vera", "--vera_dropout=0.2", "--projection_prng_key=5",
                          "--save_projection", "False", "--vera_scale", "--rsvera", "--lora_alpha", "16", "--vera_r", "64",
                          "--fan_in_fan_out", "False", "--bias", "none", "--init_weights", "True",
                          "--modules_to_save", "classifier", "--layers_to_transform", "None", NULL};
    CHECK(parse_train(&s, set, fork) == 0, "the fork's VeRA flags: %s", fx_err());
    fx_settings_adapter(&s, &a);
    CHECK(a.kind == FX_VERA && fabsf(a.dropout - 0.2f) < 1e-7f && a.proj_key == 5 && a.skip_projection,
          "--vera_dropout, --projection_prng_key, --save_projection False are honoured");
    CHECK(fabsf(fx_settings_residual_scale(&s) - 2.0f) < 1e-6f, "--vera_scale --rsvera: alpha / sqrt(r) = 16 / 8, got %g",
          (double)fx_settings_residual_scale(&s));
    const char *lr[] = {"--agg", "fedex-vera", "--vera-scale", "lr", "--lr", "2e-3", NULL};
    CHECK(parse_train(&s, set, lr) == 0 && fabsf(fx_settings_residual_scale(&s) - 2e-3f) < 1e-9f, "--vera-scale lr");
    struct { const char *args[6]; const char *want; } bad[] = {
        {{"--vera", "--bias", "all", NULL}, "--bias all"},
        {{"--vera", "--fan_in_fan_out", "yes", NULL}, "--fan_in_fan_out"},
        {{"--vera", "--init_weights", "False", NULL}, "--init_weights False"},
        {{"--vera", "--modules_to_save", "dense", NULL}, "--modules_to_save dense"},
        {{"--vera", "--layers_to_transform", "0,1", NULL}, "--layers_to_transform 0,1"},
        {{"--vera", "--layers_pattern", "layer", NULL}, "--layers_pattern layer"},
        {{"--vera", "--agg", "centralized", NULL}, "--vera"},
        {{"--r", "4", "--lora-r", "4", NULL}, "--r"},
        {{"--vera-dropout", "0.1", NULL}, "--vera-dropout"},
        {{"--agg", "fedit-vera", "--vera-scale", "lr", NULL}, "--vera-scale"},
        {{"--vera", "--vera-scale", "2", NULL}, "--vera-scale"},
        {{"--vera", "--projection_prng_key", "4294967296", NULL}, "--projection-prng-key"},
        {{"--vera", "--save_projection", "maybe", NULL}, "--save-projection"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECK(parse_train(&s, set, bad[i].args) != 0 && strstr(fx_err(), bad[i].want),
              "%s %s: refused naming '%s', got '%s'", bad[i].args[0], bad[i].args[1], bad[i].want, fx_err());
}

/* save_projection false: the file holds no vera_A / vera_B, its config records the key, and loading draws
 * the same projections again. */
static void test_save_projection(void) {
    fx_config c;
    small_config(&c);
    fx_adapter_cfg a = {.kind = FX_VERA, .targets = FX_T_QUERY | FX_T_VALUE, .r = 4, .d_initial = 0.1f, .seed = 3,
                        .proj_key = 123, .skip_projection = 1};
    fx_model m, back;
    if (fx_model_create(&m, &c, &a, NULL) != 0) { CHECK(0, "%s", fx_err()); return; }
    fx_model_init_adapters(&m, 5);
    for (size_t j = 0; j < m.train.n; j++) m.train.data[j] = (float)j * 1e-3f;
    const char *dir = P("%s/noproj", tmp);
    CHECK(fx_adapter_save(&m, dir, NULL) == 0, "%s", fx_err());
    fx_st_file f;
    if (fx_st_open(P("%s/adapter_model.safetensors", dir), &f) == 0) {
        CHECK(!fx_st_find(&f, "base_model.vera_A") && !fx_st_find(&f, "base_model.vera_B"),
              "save_projection false wrote the projections");
        fx_st_close(&f);
    }
    fx_adapter_cfg b;
    CHECK(fx_adapter_config_load(dir, &b) == 0 && b.proj_key == 123 && b.skip_projection,
          "adapter_config.json: projection_prng_key 123, save_projection false: %s", fx_err());
    if (fx_model_create(&back, &c, &b, NULL) == 0) {
        CHECK(fx_adapter_load(&back, dir) == 0, "loading without projections: %s", fx_err());
        CHECK(!memcmp(back.vera_A, m.vera_A, sizeof(float) * (size_t)m.a.r * m.vera_in) &&
              !memcmp(back.train.data, m.train.data, sizeof(float) * m.train.n), "the redrawn adapter differs");
        fx_model_free(&back);
    }
    b.proj_key = 124;
    if (fx_model_create(&back, &c, &b, NULL) == 0) {
        CHECK(fx_adapter_load(&back, dir) != 0 && strstr(fx_err(), "projection_prng_key"),
              "a model of another key loaded the adapter: %s", fx_err());
        fx_model_free(&back);
    }
    fx_model_free(&m);
}

/* The largest aggregation error over the rounds of the run in DIR (every line's "agg_error": {"max": X});
 * NAN when there is none. */
static double max_err(const char *dir) {
    char *t = slurp(P("%s/metrics.jsonl", dir));
    double e = NAN;
    for (char *p = t; p && (p = strstr(p, "\"agg_error\": {\"max\": ")); p++) {
        double v = strtod(p + 22, NULL);
        e = isnan(e) || v > e ? v : e;
    }
    free(t);
    return e;
}

/* The fork's README command as written, with a local model path, from a folder whose data/glue holds
 * RTE; 24 training and 12 dev rows and --max-seq-length 16 keep its 51 rounds of 5 epochs to seconds. */
static void test_fork_command(const char *shared) {
    const char *rte = P("%s/data/glue/RTE", shared);
    if (fx_mkdir_p(P("%s/data/glue/RTE", tmp)) != 0 ||
        copy_lines(P("%s/train.tsv", rte), P("%s/data/glue/RTE/train.tsv", tmp), 1 + 24) != 0 ||
        copy_lines(P("%s/dev.tsv", rte), P("%s/data/glue/RTE/dev.tsv", tmp), 1 + 12) != 0) {
        CHECK(0, "cannot make the RTE slice: %s", fx_err());
        return;
    }
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd) || chdir(tmp) != 0) { CHECK(0, "chdir %s", tmp); return; }
    int rc = fedex("fork", NULL, "train", P("--model=%s", model), "--task=rte", "--agg_type=ours_vera", "--vera",
                   "--num_clients=3", "--r=128", "--rounds=51", "--lr=1e-3", "--local_epochs=5", "--parallel_clients",
                   "--server_gpu", "0", "--client_gpus", "1,2,3", "--max-seq-length", "16", "--out", P("%s/fork", tmp),
                   "--threads", "2", NULL);
    CHECK(rc == 0, "the VeRA fork's README command exited %d", rc);
    if (rc != 0) show_err("fork");
    char *o = slurp(P("%s/fork.out", tmp));
    CHECK(o && strstr(o, "--parallel_clients") && strstr(o, "--client_gpus") && strstr(o, "round  51"),
          "the run says once what it does with --parallel_clients and the GPU ids, and runs 51 rounds");
    free(o);
    double e = max_err(P("%s/fork", tmp));
    CHECK(e < 1e-6, "fedex-vera's aggregation error %g: float rounding expected", e);
    char *cfg = slurp(P("%s/fork/adapter_config.json", tmp));
    CHECK(cfg && strstr(cfg, "\"r\": 128") && strstr(cfg, "\"projection_prng_key\": 0") &&
          strstr(cfg, "\"vera_dropout\": 0,") && strstr(cfg, "\"save_projection\": true"),
          "adapter_config.json: r 128, projection_prng_key 0, vera_dropout 0, save_projection true");
    free(cfg);
    /* --vera_scale (alpha/r, 8/128 here) is the fork's inexact residual: the error column shows it */
    rc = fedex("scaled", NULL, "train", P("--model=%s", model), "--task=rte", "--agg_type=ours_vera", "--vera",
               "--r=128", "--rounds=2", "--local_epochs=5", "--vera_scale", "--max-seq-length", "16", "--out",
               P("%s/scaled", tmp), "--threads", "2", NULL);
    e = max_err(P("%s/scaled", tmp));
    CHECK(rc == 0 && e > 1e-3, "--vera_scale: exit %d, aggregation error %g (the residual's missing 15/16 expected)", rc, e);
    /* --vera on a LoRA method and --r: the saved settings keep those spellings, and export (which reads
     * them back) builds the VeRA model the run trained, of rank 8, not LoRA's default */
    rc = fedex("spelled", NULL, "train", P("--model=%s", model), "--task=rte", "--agg_type=ours", "--vera", "--r=8",
               "--rounds=1", "--local_epochs=1", "--max-seq-length", "16", "--out", P("%s/spelled", tmp), "--threads",
               "2", NULL);
    CHECK(rc == 0, "--agg_type ours --vera --r 8: exit %d", rc);
    rc = rc ? rc : fedex("spelled_export", NULL, "export", "--run", P("%s/spelled", tmp), "--out", P("%s/spelled_hf", tmp), NULL);
    cfg = rc ? NULL : slurp(P("%s/spelled_hf/adapter_config.json", tmp));
    CHECK(rc == 0 && cfg && strstr(cfg, "\"peft_type\": \"VERA\"") && strstr(cfg, "\"r\": 8,"),
          "export of a run trained with --vera --r 8: exit %d, its adapter_config.json a VeRA of rank 8", rc);
    if (rc) show_err("spelled_export");
    free(cfg);
    if (chdir(cwd) != 0) CHECK(0, "chdir back to %s", cwd);
}

/* SORF-VeRA end to end: fedex-sorf-vera keeps the global model the clients' mean (the aggregation error at
 * the fp32 rounding of its residual, which the fork's refit makes large next to the round's move), sorf-vera
 * does not, and tools/check_agg.py recomputes the saved rounds (refit included) independently. */
static void test_sorf_runs(void) {
    const char *dirs[2] = {P("%s/sorf_exact", tmp), P("%s/sorf_fork", tmp)};
    const char *aggs[2] = {"fedex-sorf-vera", "sorf_vera"};
    for (int i = 0; i < 2; i++) {
        int rc = train(aggs[i], NULL, "--agg", aggs[i], "--vera-r", "4", "--rounds", "2", "--save-clients", "--out", dirs[i], NULL);
        CHECK(rc == 0, "%s exited %d", aggs[i], rc);
        if (rc != 0) { show_err(aggs[i]); return; }
        double e = max_err(dirs[i]);
        CHECK(i == 0 ? e < 1e-4 : e > 1e-2, "%s: aggregation error %g (%s)", aggs[i], e,
              i == 0 ? "exact: fp32 rounding of the residual expected" : "the fork's refit is approximate");
    }
    if (access("/usr/bin/python3", X_OK) != 0 || system("/usr/bin/python3 -c 'import numpy' 2>/dev/null") != 0) {
        printf("SKIP tools/check_agg.py on SORF-VeRA runs: /usr/bin/python3 with numpy is not installed\n");
        return;
    }
    for (int i = 0; i < 2; i++) {
        char cmd[1024], out[8192];
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 tools/check_agg.py %s 2>&1", dirs[i]);
        int rc = check_run(cmd, out, sizeof out);
        const char *w = strstr(out, "worst: global adapter "), *f = strstr(out, "refit: ");
        double gm = w ? strtod(w + 22, NULL) : NAN, res = w && strstr(w, "residual ") ? strtod(strstr(w, "residual ") + 9, NULL) : NAN;
        double fit = f ? strtod(f + 7, NULL) : NAN;
        CHECK(rc == 0 && gm < 1e-6 && res < 1e-5 && fit < 1e-5,
              "check_agg.py %s: exit %d, head %g, residual %g, refit %g (float32 rounding expected)\n%s", aggs[i], rc, gm,
              res, fit, out);
    }
}

int main(void) {
    test_projections();
    test_settings();
    if (run_harness_start("vera") != 0) {
        if (!fedex_bin || !*fedex_bin)
            printf("skipped: the VeRA fork's command end to end (FEDEX, the path of the fedex binary, is not set: run `make test`)\n");
        return check_done();
    }
    test_save_projection();
    const char *shared = shared_dir("the VeRA fork's command needs roberta-base's tokenizer and GLUE RTE");
    if (shared && setup(shared) == 0) { test_fork_command(shared); test_sorf_runs(); }
    else if (shared) CHECK(0, "setting up the model and data in %s failed: %s", tmp, fx_err());
    run_harness_end();
    return check_done();
}
