/* tests/test_instruct_train.c: `fedex train --task instruct|gsm8k|mc` end to end through the command line
 * ($FEDEX), on a tiny random GPT-2 and a tiny random Llama (the byte-level vocabulary of 256 bytes and
 * <|endoftext|>) and a few JSON Lines rows: 3 clients, 2 rounds, every aggregation method with FedEx's
 * aggregation error at float rounding and the saved aggregation recomputed by tools/check_agg.py; the
 * per-round GSM8K exact match and multiple-choice accuracies in metrics.jsonl; the chat template in a
 * run; `fedex eval` on the tasks; and what is refused. Not the pieces' numerics (test_instruct). */
#include "fedex.h"
#include "check.h"

#include <string.h>

/* || global - mean of the clients || / || update ||: float rounding for FedEx and the methods without a
 * cross term (measured here 6e-10 to 1e-9 for FedEx, 5e-8 for FFA, 4.4e-6 for fedex-sorf-vera, whose
 * server refits through an SVD first); FedIT's deviation shows (measured 0.03 to 0.06). */
#define TOL_EXACT 1e-5
#define FEDIT_ERR_MIN 1e-3
/* tools/check_agg.py's worst relative errors (float32 files): means ~1e-7, differences of residuals ~1e-6. */
#define TOL_CHECK_AGG 1e-5
#define WAIT_LINE_S 120.0
#define WAIT_RUN_S 120.0

#include "run_harness.h"

static char gmodel[512], lmodel[512], d_inst[512], d_gsm[512], d_mc[512];

static const char gpt2_config[] =
    "{\"architectures\": [\"GPT2LMHeadModel\"], \"model_type\": \"gpt2\", \"vocab_size\": 257, \"n_positions\": 256, "
    "\"n_embd\": 16, \"n_layer\": 2, \"n_head\": 2, \"n_inner\": null, \"activation_function\": \"gelu_new\", "
    "\"layer_norm_epsilon\": 1e-05, \"resid_pdrop\": 0.0, \"embd_pdrop\": 0.0, \"attn_pdrop\": 0.0, "
    "\"initializer_range\": 0.02, \"bos_token_id\": 256, \"eos_token_id\": 256}\n";
static const char llama_config[] =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"vocab_size\": 257, "
    "\"hidden_size\": 16, \"intermediate_size\": 32, \"num_hidden_layers\": 2, \"num_attention_heads\": 4, "
    "\"num_key_value_heads\": 2, \"max_position_embeddings\": 512, \"rms_norm_eps\": 1e-5, "
    "\"tie_word_embeddings\": false, \"eos_token_id\": 256}\n";
/* A ChatML-like template on the vocabulary's one special token */
static const char chat_cfg[] =
    "{\"bos_token\": \"<|endoftext|>\", \"eos_token\": \"<|endoftext|>\", \"chat_template\": \"{{ bos_token }}"
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] | trim + '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}\"}\n";

static int write_rows(const char *dir, const char *split, const char *const *rows, int n) {
    char *buf = NULL; size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    for (int i = 0; i < n; i++) fprintf(f, "%s\n", rows[i]);
    return fx_write_memstream_atomic(f, &buf, &len, P("%s/%s.jsonl", dir, split));
}

static int setup_data(void) {
    static const char *const inst[] = {
        "{\"instruction\": \"Reverse the word.\", \"input\": \"abc\", \"output\": \"cba\"}",
        "{\"instruction\": \"Say hello.\", \"output\": \"Hello!\"}",
        "{\"prompt\": \"Q: capital of France?\\nA:\", \"completion\": \" Paris\"}",
        "{\"instruction\": \"Add the numbers.\", \"input\": \"2 and 3\", \"output\": \"5\"}",
        "{\"prompt\": \"The sky is\", \"completion\": \" blue.\"}",
        "{\"instruction\": \"Upper-case it.\", \"input\": \"fed\", \"output\": \"FED\"}",
        "{\"question\": \"What is 1+1?\", \"answer\": \"2\"}",
        "{\"instruction\": \"Count to three.\", \"input\": \"\", \"output\": \"1, 2, 3\"}",
        "{\"prompt\": \"Water boils at\", \"completion\": \" 100 degrees.\"}",
    };
    static const char *const gsm[] = {
        "{\"question\": \"Tom has 3 apples and buys 2. How many?\", \"answer\": \"3+2=5\\n#### 5\"}",
        "{\"question\": \"A pen costs $2. Cost of 4?\", \"answer\": \"4*2=8\\n#### 8\"}",
        "{\"question\": \"10 minus 7?\", \"answer\": \"10-7=3\\n#### 3\"}",
        "{\"question\": \"Half of 12?\", \"answer\": \"12/2=6\\n#### 6\"}",
        "{\"question\": \"1000 plus 234?\", \"answer\": \"1000+234=1234\\n#### 1,234\"}",
        "{\"question\": \"5 times 5?\", \"answer\": \"5*5=25\\n#### 25\"}",
    };
    static const char *const mc[] = {
        "{\"question\": \"Which is a color?\", \"choices\": [\"red\", \"run\", \"rock\"], \"answer\": 0}",
        "{\"prompt\": \"To open a jar,\", \"choices\": [\" twist the lid.\", \" paint it.\"], \"answer\": \"A\"}",
        "{\"question\": \"Is ice cold?\", \"choices\": [\"no\", \"yes\"], \"answer\": \"yes\", \"labels\": [\"no\", \"yes\"]}",
        "{\"question\": \"2+2?\", \"choices\": [\"3\", \"4\", \"5\", \"22\"], \"answer\": 1}",
        "{\"prompt\": \"Fish live in\", \"choices\": [\" trees\", \" water\"], \"answer\": 1}",
        "{\"question\": \"Opposite of up?\", \"choices\": [\"down\", \"left\"], \"answer\": \"A\"}",
    };
    snprintf(d_inst, sizeof d_inst, "%s/inst", tmp);
    snprintf(d_gsm, sizeof d_gsm, "%s/gsm", tmp);
    snprintf(d_mc, sizeof d_mc, "%s/mc", tmp);
    return fx_mkdir_p(d_inst) || fx_mkdir_p(d_gsm) || fx_mkdir_p(d_mc) || write_rows(d_inst, "train", inst, 9) ||
           write_rows(d_inst, "dev", inst + 5, 4) || write_rows(d_gsm, "train", gsm, 6) || write_rows(d_gsm, "dev", gsm + 2, 4) ||
           write_rows(d_mc, "train", mc, 6) || write_rows(d_mc, "dev", mc + 2, 4) ? -1 : 0;
}

static int setup_model(const char *cfg, const char *name, char *out, size_t cap, int template) {
    const char *c = P("%s/%s_cfg", tmp, name);
    snprintf(out, cap, "%s/%s", tmp, name);
    if (fx_mkdir_p(c) != 0 || fx_write_file_atomic(P("%s/config.json", c), cfg, strlen(cfg)) != 0 || write_byte_vocab(c) != 0)
        return -1;
    int rc = fedex(P("init_%s", name), NULL, "init", "--config", P("%s/config.json", c), "--out", out, "--seed", "1", NULL);
    CHECK(rc == 0, "fedex init (%s) exited %d", name, rc);
    if (rc != 0) { show_err(P("init_%s", name)); return -1; }
    if (template && fx_write_file_atomic(P("%s/tokenizer_config.json", out), chat_cfg, strlen(chat_cfg)) != 0) return -1;
    return 0;
}

static const char *gpt2_targets = "c_attn,c_proj,c_fc";
static const char *llama_targets = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj";

/* One run of 2 rounds; checks its lines (the clients, dev_loss, the task's test metric) and the
 * aggregation error; returns the worst agg_error, NAN when the run failed. */
static double run_task(const char *tag, const char *model, const char *task, const char *data, const char *targets,
                       const char *agg, int nclients, const char *extra1, const char *extra2) {
    const char *out = P("%s/run_%s", tmp, tag);
    int vera = strstr(agg, "vera") != NULL;
    const char *args[40];
    int k = 0;
    const char *fixed[] = {"train", "--model", model, "--task", task, "--data", data, "--targets", targets, "--agg", agg,
                           "--rounds", "2", "--local-epochs", "1", "--lr", "5e-3", "--batch-size", "2",
                           "--micro-batch", "2", "--threads", "2", "--max-seq-length", "256", "--out", out, "--save-clients", "--max-new-tokens", "6"};
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++) {
        if (strcmp(task, "gsm8k") && !strcmp(fixed[i], "--max-new-tokens")) { i++; continue; }
        args[k++] = fixed[i];
    }
    if (vera) { args[k++] = "--vera-r"; args[k++] = "8"; }
    if (strcmp(agg, "centralized")) { args[k++] = "--num-clients"; args[k++] = nclients == 3 ? "3" : "1"; }
    if (extra1) args[k++] = extra1;
    if (extra2) args[k++] = extra2;
    args[k] = NULL;
    int rc = run_argv(tag, NULL, args);
    CHECK(rc == 0, "%s: exit status %d", tag, rc);
    if (rc != 0) { show_err(tag); return NAN; }
    metrics m;
    if (metrics_load(out, &m) != 0 || m.n != 2) { CHECK(0, "%s: metrics.jsonl is not 2 JSON lines", tag); return NAN; }
    double worst = 0;
    for (int r = 0; r < 2; r++) {
        const fx_json *l = &m.line[r], *cl = arr(l, "clients"), *mt = fx_json_get(l, "metric");
        CHECK(num(l, "round") == r + 1 && cl && (int)cl->n == nclients && mt && !strcmp(mt->str, "dev_loss") &&
              num(l, "value") > 0 && num(l, "value") == num(l, "dev_loss"), "%s: round %d's line", tag, r + 1);
        double e = num(fx_json_get(l, "agg_error"), "max");
        if (!(e <= worst)) worst = e;
        const fx_json *t = fx_json_get(l, task);
        if (!strcmp(task, "gsm8k")) {
            double em = t ? num(t, "exact_match") : NAN;
            CHECK(t && em >= 0 && em <= 1 && num(t, "rows") == 4 && num(l, "best_exact_match") >= em &&
                  num(l, "best_exact_match_round") >= 1, "%s: round %d's gsm8k exact match", tag, r + 1);
            /* the predictions file agrees with the figure */
            char *pf = slurp(P("%s/gsm8k_predictions_round%d.jsonl", out, r + 1));
            int rows = 0, right = 0;
            for (char *p = pf; p && *p; rows++) {
                char *nl = strchr(p, '\n');
                if (nl) *nl = 0;
                fx_json pj;
                if (fx_json_parse(p, strlen(p), &pj) == 0) {
                    const fx_json *g = fx_json_get(&pj, "generation"), *a = fx_json_get(&pj, "answer"), *c = fx_json_get(&pj, "correct");
                    char want[128];
                    fx_gsm8k_extract(g->str, 0, want, sizeof want);
                    right += c->boolean;
                    CHECK(!strcmp(want, a->str), "%s: the answer extracted from '%s'", tag, g->str);
                    fx_json_free(&pj);
                }
                p = nl ? nl + 1 : p + strlen(p);
            }
            CHECK(pf && rows == 4 && fabs((double)right / 4 - em) < 1e-12, "%s: predictions file (%d rows)", tag, rows);
            free(pf);
        } else if (!strcmp(task, "mc")) {
            double acc = t ? num(t, "acc") : NAN, an = t ? num(t, "acc_norm") : NAN;
            /* 4 rows: accuracies are quarters */
            CHECK(t && acc >= 0 && acc <= 1 && an >= 0 && an <= 1 && acc * 4 == (int)(acc * 4) && num(t, "rows") == 4 &&
                  num(l, "best_acc_round") >= 1, "%s: round %d's mc accuracies", tag, r + 1);
        } else CHECK(!t, "%s: an instruct run has no test metric", tag);
    }
    metrics_free(&m);
    return worst;
}

static void check_exact(const char *tag, double worst, int exact) {
    if (isnan(worst)) return;
    printf("%s: agg_error max %.3g\n", tag, worst);
    if (exact) CHECK(worst < TOL_EXACT, "%s: agg_error max %.3g, want < %.0e", tag, worst, TOL_EXACT);
    else CHECK(worst > FEDIT_ERR_MIN, "%s: agg_error max %.3g, want > %.0e", tag, worst, FEDIT_ERR_MIN);
    double em, er;
    if (exact && !strstr(tag, "centralized") && check_agg(P("%s/run_%s", tmp, tag), tag, &em, &er))
        CHECK(em < TOL_CHECK_AGG && er < TOL_CHECK_AGG, "%s: check_agg.py: global %.3g, residual %.3g", tag, em, er);
}

static void test_methods(void) {
    static const struct { const char *agg; int exact, nclients; } methods[] = {
        {"fedex", 1, 3}, {"fedit", 0, 3}, {"ffa", 1, 3}, {"fedex-vera", 1, 3}, {"fedit-vera", 0, 3}, {"ffa-vera", 1, 3},
        {"fedex-sorf-vera", 1, 3}, {"centralized", 1, 1},
    };
    for (size_t k = 0; k < sizeof methods / sizeof *methods; k++) {
        const char *tag = P("gpt2_instruct_%s", methods[k].agg);
        check_exact(tag, run_task(tag, gmodel, "instruct", d_inst, gpt2_targets, methods[k].agg, methods[k].nclients, NULL, NULL),
                    methods[k].exact);
    }
    /* the Llama with its chat template, every task */
    check_exact("llama_instruct_fedex", run_task("llama_instruct_fedex", lmodel, "instruct", d_inst, llama_targets, "fedex", 3, NULL, NULL), 1);
    check_exact("llama_gsm8k_fedex", run_task("llama_gsm8k_fedex", lmodel, "gsm8k", d_gsm, llama_targets, "fedex", 3, NULL, NULL), 1);
    check_exact("llama_mc_fedex", run_task("llama_mc_fedex", lmodel, "mc", d_mc, llama_targets, "fedex", 3, NULL, NULL), 1);
    check_exact("llama_mc_fedit", run_task("llama_mc_fedit", lmodel, "mc", d_mc, llama_targets, "fedit", 3, NULL, NULL), 0);
    check_exact("gpt2_gsm8k_fedex-vera", run_task("gpt2_gsm8k_fedex-vera", gmodel, "gsm8k", d_gsm, gpt2_targets, "fedex-vera", 3, NULL, NULL), 1);
    check_exact("gpt2_mc_ffa", run_task("gpt2_mc_ffa", gmodel, "mc", d_mc, gpt2_targets, "ffa", 3, "--chat-template", "none"), 1);
    char *o = slurp(P("%s/llama_instruct_fedex.out", tmp));
    CHECK(o && strstr(o, "instruct prompts: the model's chat template"), "the Llama run uses its chat template");
    free(o);
    o = slurp(P("%s/gpt2_mc_ffa.out", tmp));
    CHECK(o && strstr(o, "mc prompts: the plain (Alpaca) format"), "--chat-template none");
    free(o);
}

/* One round, then --resume to two: the same metrics (the test metric and its best round included) as the
 * two rounds in one go; --eval-rows limits the rows scored. */
static void test_resume(void) {
    const char *a = P("%s/run_llama_mc_fedex", tmp), *b = P("%s/run_llama_mc_res", tmp);
    int rc = fedex("res1", NULL, "train", "--model", lmodel, "--task", "mc", "--data", d_mc, "--targets", llama_targets,
                   "--agg", "fedex", "--rounds", "1", "--local-epochs", "1", "--lr", "5e-3", "--batch-size", "2",
                   "--micro-batch", "2", "--threads", "2", "--max-seq-length", "256", "--out", b, "--save-clients",
                   "--num-clients", "3", NULL);
    int rc2 = rc == 0 ? fedex("res2", NULL, "train", "--resume", b, "--rounds", "2", "--threads", "2", NULL) : -1;
    CHECK(rc == 0 && rc2 == 0, "mc resume: exit statuses %d, %d", rc, rc2);
    if (rc2) show_err(rc ? "res1" : "res2");
    char *ma = metrics_untimed(a), *mb = metrics_untimed(b);
    CHECK(ma && mb && !strcmp(ma, mb), "a resumed mc run's metrics differ from an uninterrupted one's");
    free(ma); free(mb);

    const char *e = P("%s/run_gsm_rows", tmp);
    rc = fedex("rows", NULL, "train", "--model", gmodel, "--task", "gsm8k", "--data", d_gsm, "--targets", "c_attn",
               "--rounds", "1", "--local-epochs", "1", "--threads", "2", "--max-seq-length", "256", "--eval-rows", "3",
               "--max-new-tokens", "3", "--out", e, NULL);
    metrics m;
    CHECK(rc == 0 && metrics_load(e, &m) == 0 && m.n == 1 && num(fx_json_get(&m.line[0], "gsm8k"), "rows") == 3,
          "--eval-rows 3: exit %d", rc);
    if (rc == 0) metrics_free(&m);
}

static void test_eval_and_refusals(void) {
    /* fedex eval on the tasks, the base model and the saved adapter */
    int rc = fedex("eval_gsm", NULL, "eval", "--model", lmodel, "--task", "gsm8k", "--data", d_gsm, "--max-new-tokens", "4",
                   "--adapter", P("%s/run_llama_gsm8k_fedex", tmp), "--residual",
                   P("%s/run_llama_gsm8k_fedex/residual.safetensors", tmp), NULL);
    char *o = slurp(P("%s/eval_gsm.out", tmp));
    CHECK(rc == 0 && o && strstr(o, "gsm8k dev: exact_match") && strstr(o, "on 4 rows"), "fedex eval --task gsm8k: %d", rc);
    if (rc) show_err("eval_gsm");
    free(o);
    rc = fedex("eval_mc", NULL, "eval", "--model", lmodel, "--task", "mc", "--data", d_mc, NULL);
    o = slurp(P("%s/eval_mc.out", tmp));
    CHECK(rc == 0 && o && strstr(o, "mc dev: acc ") && strstr(o, "acc_norm"), "fedex eval --task mc: %d", rc);
    free(o);

    /* refusals: a bad line, options of other tasks, no data */
    const char *bad = P("%s/bad", tmp);
    fx_mkdir_p(bad);
    fx_write_file_atomic(P("%s/train.jsonl", bad), "{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": 3}\n", 50);
    fx_write_file_atomic(P("%s/dev.jsonl", bad), "{\"prompt\": \"a\", \"completion\": \"b\"}\n", 36);
    rc = fedex("bad", NULL, "train", "--model", gmodel, "--task", "instruct", "--data", bad, "--targets", "c_attn", "--rounds", "1", NULL);
    CHECK(rc == 1 && err_has("bad", "train.jsonl:2: \"prompt\" must be a string"), "a bad row: exit %d", rc);
    rc = fedex("beam", NULL, "train", "--model", gmodel, "--task", "gsm8k", "--data", d_gsm, "--targets", "c_attn",
               "--num-beams", "4", "--rounds", "1", NULL);
    CHECK(rc != 0 && err_has("beam", "apply to --task e2e"), "--num-beams on gsm8k: exit %d", rc);
    rc = fedex("ct", NULL, "train", "--model", gmodel, "--task", "e2e", "--data", d_gsm, "--targets", "c_attn",
               "--chat-template", "none", "--rounds", "1", NULL);
    CHECK(rc != 0 && err_has("ct", "--chat-template and --eval-rows apply to --task instruct"), "--chat-template on e2e: exit %d", rc);
    rc = fedex("nodev", NULL, "train", "--model", gmodel, "--task", "mc", "--data", tmp, "--targets", "c_attn", "--rounds", "1", NULL);
    CHECK(rc == 1 && err_has("nodev", "train.jsonl: no such file"), "no train.jsonl: exit %d", rc);
    rc = fedex("long", NULL, "train", "--model", gmodel, "--task", "instruct", "--data", d_inst, "--targets", "c_attn",
               "--max-seq-length", "8", "--rounds", "1", NULL);
    CHECK(rc == 1 && err_has("long", "train.jsonl:1: the prompt alone takes"), "a prompt over --max-seq-length: exit %d", rc);
}

int main(void) {
    if (run_harness_start("instruct_train") != 0) {
        if (!fedex_bin || !*fedex_bin)
            printf("skipped: fedex train --task instruct/gsm8k/mc end to end (FEDEX is not set: run `make test`)\n");
        return check_done();
    }
    double t0 = fx_now();
    if (setup_data() != 0 || setup_model(gpt2_config, "gpt2", gmodel, sizeof gmodel, 0) != 0 ||
        setup_model(llama_config, "llama", lmodel, sizeof lmodel, 1) != 0)
        CHECK(0, "setting up the models and data in %s failed: %s", tmp, fx_err());
    else {
        test_methods();
        test_resume();
        test_eval_and_refusals();
    }
    printf("fedex train --task instruct/gsm8k/mc end to end: %.1f s\n", fx_now() - t0);
    run_harness_end();
    return check_done();
}
