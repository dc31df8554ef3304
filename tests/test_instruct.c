/* tests/test_instruct.c: the instruction tasks' pieces apart from a run: jinja.c's renders of real chat
 * templates against jinja2's (tests/fixtures/chat_templates.json, from tests/make_chat_fixtures.py) byte
 * for byte and what it refuses; the JSON Lines reader's shapes and errors; the training sequences'
 * prompt masking and truncation; GSM8K's answer extraction on a table of cases written from the dataset's
 * conventions; and a choice's log-likelihood against a float64 PyTorch model (tests/fixtures/mc_*,
 * from tests/make_mc_fixtures.py). */
#include "fedex.h"
#include "check.h"

/* A choice's log-likelihood, fp32 model against the float64 reference: a sum of up to 6 log-softmaxes
 * over 47-53 logits of a 2-layer model, each off by fp32 rounding (~1e-6 relative on logits of size ~10);
 * measured worst 3.7e-6 absolute, so 1e-4 leaves room while any wrong token or position (errors of 0.1
 * and more) fails. */
#define TOL_LOGLIK 1e-4
#define WAIT_LINE_S 60.0
#define WAIT_RUN_S 60.0
#include "run_harness.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmpdir[64];

static const char *tpath(const char *name) {
    static char ring[8][512];
    static int k;
    char *b = ring[k++ % 8];
    snprintf(b, sizeof ring[0], "%s/%s", tmpdir, name);
    return b;
}

static int write_text(const char *path, const char *s) { return fx_write_file_atomic(path, s, strlen(s)); }

/* ---------------------------------------------------------------- chat templates against jinja2 */

static void test_templates(void) {
    fx_json j;
    if (fx_json_load("tests/fixtures/chat_templates.json", &j) != 0) { CHECK(0, "%s", fx_err()); return; }
    int cases = 0;
    for (size_t t = 0; t < j.n; t++) {
        const fx_json *T = &j.kids[t], *name = fx_json_get(T, "name"), *src = fx_json_get(T, "template");
        const char *bos = fx_json_get(T, "bos_token")->str, *eos = fx_json_get(T, "eos_token")->str;
        fx_jinja *tpl = fx_jinja_parse(src->str, src->slen, name->str);
        CHECK(tpl != NULL, "template %s: %s", name->str, fx_err());
        if (!tpl) continue;
        const fx_json *cs = fx_json_get(T, "cases");
        for (size_t c = 0; c < cs->n; c++) {
            const fx_json *C = &cs->kids[c], *ms = fx_json_get(C, "messages"), *want = fx_json_get(C, "output");
            fx_chat_msg m[8];
            for (size_t k = 0; k < ms->n; k++)
                m[k] = (fx_chat_msg){fx_json_get(&ms->kids[k], "role")->str, fx_json_get(&ms->kids[k], "content")->str};
            char *got = fx_jinja_render(tpl, m, (int)ms->n, bos, eos, fx_json_get(C, "add_generation_prompt")->boolean);
            if (want) CHECK(got && !strcmp(got, want->str), "template %s, case %zu: got [%s], jinja2 [%s]", name->str, c,
                            got ? got : fx_err(), want->str);
            else {
                const char *msg = fx_json_get(C, "error")->str;
                CHECK(!got && strstr(fx_err(), msg), "template %s, case %zu: want the exception '%s', got %s", name->str, c,
                      msg, got ? got : fx_err());
            }
            cases++;
            free(got);
        }
        fx_jinja_free(tpl);
    }
    CHECK(cases >= 60, "only %d template cases read", cases);
    fx_json_free(&j);

    /* what the subset refuses, with the line and the construct */
    static const struct { const char *src, *want; } bad[] = {
        {"{% macro x() %}{% endmacro %}", "line 1: the statement 'macro' is not supported"},
        {"a\n{{ x | upper }}", "line 2: the filter 'upper' is not supported"},
        {"{{ messages | tojson(indent=2) }}", "the filter 'tojson' is not supported"},
        {"{% for m in messages %}", "'endfor' is never closed"},
        {"{% if x %}a{% else %}b", "'endif' is never closed"},
        {"{{ 'a' if x else 'b' }}", "inline 'x if c else y' is not supported"},
        {"{{ x in y }}", "the operator 'in' is not supported"},
        {"{% set ns.a = 1 %}", "namespace"},
        {"{{ range(3) }}", "calling 'range' is not supported"},
        {"{{ 1.5 }}", "only integer numbers"},
        {"{{ 'abc }}", "a string is never closed"},
        {"\n\n{{ x", "line 3: the tag is never closed"},
        {"{{ x[1:2] }}", "slices are not supported"},
        {"{% for a, b in x %}{% endfor %}", "unpacking"},
        {"{{ 'a\\qb' }}", "the escape \\q"},
        {"{% set x %}y{% endset %}", "block 'set'"},
        {"{{ x is mapping }}", "the test 'mapping' is not supported"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        fx_jinja *t = fx_jinja_parse(bad[k].src, strlen(bad[k].src), "T");
        CHECK(!t && strstr(fx_err(), bad[k].want), "[%s]: want '%s', got %s", bad[k].src, bad[k].want, t ? "a template" : fx_err());
        fx_jinja_free(t);
    }
    /* errors of values, at render time */
    static const struct { const char *src, *want; } rbad[] = {
        {"{{ messages[0].role + 1 }}", "line 1: '+' between a string and a integer"},
        {"{{ nothing.attr }}", "'nothing' is undefined"},
        {"{{ messages }}", "printing a list"},
        {"\n{% for c in bos_token %}{% endfor %}", "line 2: a for loop over a string"},
        {"{{ raise_exception('no ' + 'way') }}", "the template raised an exception: no way"},
    };
    fx_chat_msg one = {"user", "hi"};
    for (size_t k = 0; k < sizeof rbad / sizeof *rbad; k++) {
        fx_jinja *t = fx_jinja_parse(rbad[k].src, strlen(rbad[k].src), "T");
        char *s = t ? fx_jinja_render(t, &one, 1, "<s>", "</s>", 0) : NULL;
        CHECK(t && !s && strstr(fx_err(), rbad[k].want), "[%s]: want '%s', got %s", rbad[k].src, rbad[k].want, s ? s : fx_err());
        free(s);
        fx_jinja_free(t);
    }
}

/* ---------------------------------------------------------------- GSM8K answers */

/* Written from GSM8K's conventions (its references end with "#### N", N an integer, possibly with
 * thousands commas or a minus) and the usual reading of a model's answer (lm-eval-harness: the text
 * after "####", else the last number; "$", "," and a trailing "." ignored). */
static void test_gsm8k(void) {
    static const struct { const char *text; int reference; const char *want; } cases[] = {
        {"Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 72", 1, "72"},
        {"He pays 1,000 + 200 = $1,200.\n#### 1,200", 1, "1200"},
        {"The temperature fell to -5.\n#### -5", 1, "-5"},
        {"no final line here: 42", 1, ""},
        {"#### 18.", 0, "18"},
        {"The answer is #### $18\nmore text 99", 0, "18"},
        {"First 3 apples, then 4, so 7 in all.", 0, "7"},
        {"It costs $1,234.", 0, "1234"},
        {"She has -3 left after 10 days", 0, "10"},
        {"The loss is -12.", 0, "-12"},
        {"0.5 of 10 is 5.0", 0, "5.0"},
        {"no number at all.", 0, ""},
        {"#### 5\n#### 6", 0, "6"},
        {"x #### 3,5", 1, "35"},
        {"Total: 1,000,000 dollars", 0, "1000000"},
        {"version 2.", 0, "2"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
        char out[64];
        int found = fx_gsm8k_extract(cases[k].text, cases[k].reference, out, sizeof out);
        CHECK(found == (cases[k].want[0] != 0) && !strcmp(out, cases[k].want), "gsm8k extract [%s]: got '%s' (%d), want '%s'",
              cases[k].text, out, found, cases[k].want);
    }
}

/* ---------------------------------------------------------------- JSON Lines */

static void test_reader(void) {
    fx_chat plain = {0};
    fx_inst_rows r;
    const char *p = tpath("ok.jsonl");
    write_text(p, "{\"prompt\": \"Q: 1+1?\\nA:\", \"completion\": \" 2\"}\n\n"
                  "  \r\n{\"instruction\": \"Add.\", \"input\": \"1 2\", \"output\": \"3\"}\r\n"
                  "{\"instruction\": \"Say hi.\", \"output\": \"hi\"}\n"
                  "{\"instruction\": \"Say hi.\", \"input\": \"\", \"output\": \"hi\"}\n"
                  "{\"question\": \"2*3?\", \"answer\": \"2*3=6\\n#### 6\"}");
    CHECK(fx_inst_read(p, &fx_instruct_task, &plain, &r) == 0 && r.n == 5, "ok.jsonl: %s", fx_err());
    if (r.n == 5) {
        CHECK(!strcmp(r.prompt[0], "Q: 1+1?\nA:") && r.raw[0] && !strcmp(r.completion[0], " 2") && r.line[0] == 1, "row 1");
        const char *alp = "Below is an instruction that describes a task. Write a response that appropriately completes "
                          "the request.\n\n### Instruction:\nAdd.\n\n1 2\n\n### Response:\n";
        CHECK(!strcmp(r.prompt[1], alp) && r.line[1] == 4 && !strcmp(r.completion[1], "3"), "row 2 (Alpaca): [%s]", r.prompt[1]);
        CHECK(!strcmp(r.prompt[2], r.prompt[3]), "an empty input is as no input");
        CHECK(strstr(r.prompt[4], "### Instruction:\n2*3?\n\n### Response:\n") && r.line[4] == 7, "question/answer");
        fx_inst_rows_free(&r);
    }
    if (fx_inst_read(p, &fx_gsm8k_task, &plain, &r) == 0) { CHECK(0, "gsm8k accepted rows without ####"); fx_inst_rows_free(&r); }
    else CHECK(strstr(fx_err(), "ok.jsonl:1: the answer has no final \"#### N\""), "gsm8k: %s", fx_err());

    static const struct { const char *text, *want; } bad[] = {
        {"{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"a\"}\n", "bad.jsonl:2: missing key \"completion\""},
        {"{\"prompt\": \"a\", \"completion\": \"b\", \"extra\": 1}", "bad.jsonl:1: unknown key \"extra\""},
        {"{\"prompt\": \"a\", \"completion\": 5}", "bad.jsonl:1: \"completion\" must be a string"},
        {"{\"prompt\": \"a\", \"completion\": \"b\", \"prompt\": \"c\"}", "bad.jsonl:1: key \"prompt\" given twice"},
        {"\n\n{\"prompt\": \"a\", \"completion\": \"\\xff\"}", "bad.jsonl:3: column"},
        {"{\"prompt\": \"a\", \"completion\": \"\xff\"}", "bad.jsonl:1: invalid UTF-8 (byte 0xFF at column 32)"},
        {"[1, 2]", "bad.jsonl:1: a line must hold one JSON object"},
        {"{\"prompt\": \"a\", \"completion\": \"\"}", "bad.jsonl:1: the completion is empty"},
        {"{\"prompt\": \"\", \"completion\": \"x\"}", "bad.jsonl:1: \"prompt\" is empty"},
        {"{\"instruction\": \"a\", \"output\": \"b\", \"answer\": \"c\"}", "take no other key"},
        {"{\"prompt\": \"a\", \"completion\": \"b\", \"output\": \"c\"}", "take no other key"},
        {"{\"text\": \"a\"}", "bad.jsonl:1: unknown key \"text\""},
        {"{}", "expected {\"prompt\", \"completion\"}"},
        {"{\"prompt\": \"a\\u0000b\", \"completion\": \"c\"}", "holds a NUL character"},
        {"\n  \n", "bad.jsonl: no rows"},
        {"{\"choices\": [\"a\", \"b\"], \"prompt\": \"a\", \"completion\": \"b\"}", "unknown key \"choices\""},
    };
    const char *b = tpath("bad.jsonl");
    for (size_t k = 0; k < sizeof bad / sizeof *bad; k++) {
        write_text(b, bad[k].text);
        int rc = fx_inst_read(b, &fx_instruct_task, &plain, &r);
        CHECK(rc == -1 && strstr(fx_err(), bad[k].want), "[%s]: want '%s', got %s", bad[k].text, bad[k].want,
              rc == 0 ? "rows" : fx_err());
        if (rc == 0) fx_inst_rows_free(&r);
    }
    CHECK(fx_inst_read(tpath("absent.jsonl"), &fx_instruct_task, &plain, &r) == -1 && strstr(fx_err(), "no such file"),
          "a missing file: %s", fx_err());

    /* multiple choice */
    write_text(p, "{\"question\": \"Sky?\", \"choices\": [\"blue\", \"green\"], \"answer\": 0}\n"
                  "{\"prompt\": \"Grass is\", \"choices\": [\" red\", \" green\", \" blue\"], \"answer\": \"B\"}\n"
                  "{\"prompt\": \"x\", \"choices\": [\"a\", \"b\"], \"answer\": \"2\", \"labels\": [\"1\", \"2\"]}\n");
    CHECK(fx_inst_read(p, &fx_mc_task, &plain, &r) == 0 && r.n == 3, "mc rows: %s", fx_err());
    if (r.n == 3) {
        CHECK(r.answer[0] == 0 && r.answer[1] == 1 && r.answer[2] == 1 && r.nchoice[1] == 3 &&
              !strcmp(r.completion[1], " green") && !strcmp(r.choice[1][2], " blue") && !r.raw[0] == 0, "mc fields");
        fx_inst_rows_free(&r);
    }
    static const struct { const char *text, *want; } mbad[] = {
        {"{\"prompt\": \"x\", \"choices\": [\"a\"], \"answer\": 0}", "2 or more strings"},
        {"{\"prompt\": \"x\", \"choices\": [\"a\", \"b\"], \"answer\": 2}", "not the index of a choice"},
        {"{\"prompt\": \"x\", \"choices\": [\"a\", \"b\"], \"answer\": \"C\"}", "not a choice's letter"},
        {"{\"prompt\": \"x\", \"choices\": [\"a\", \"b\"], \"answer\": \"z\", \"labels\": [\"x\", \"y\"]}", "none of \"labels\""},
        {"{\"prompt\": \"x\", \"choices\": [\"a\", 3], \"answer\": 0}", "choice 1 must be"},
        {"{\"prompt\": \"x\", \"question\": \"y\", \"choices\": [\"a\", \"b\"], \"answer\": 0}", "not both"},
        {"{\"prompt\": \"x\", \"choices\": [\"a\", \"b\"]}", "missing key \"answer\""},
        {"{\"prompt\": \"x\", \"choices\": [\"a\", \"b\"], \"answer\": 0.5}", "not the index"},
        {"{\"prompt\": \"x\", \"completion\": \"y\", \"choices\": [\"a\", \"b\"], \"answer\": 0}", "unknown key \"completion\""},
    };
    for (size_t k = 0; k < sizeof mbad / sizeof *mbad; k++) {
        write_text(b, mbad[k].text);
        int rc = fx_inst_read(b, &fx_mc_task, &plain, &r);
        CHECK(rc == -1 && strstr(fx_err(), mbad[k].want), "mc [%s]: want '%s', got %s", mbad[k].text, mbad[k].want,
              rc == 0 ? "rows" : fx_err());
        if (rc == 0) fx_inst_rows_free(&r);
    }
}

/* ---------------------------------------------------------------- sequences, targets, the template */

static void test_dataset(void) {
    const char *dir = tpath("tok");
    if (fx_mkdir_p(dir) != 0 || write_byte_vocab(dir) != 0) { CHECK(0, "vocab: %s", fx_err()); return; }
    fx_tokenizer *tok = fx_tok_load(dir);
    if (!tok) { CHECK(0, "%s", fx_err()); return; }
    /* a ChatML-like template whose specials are the vocabulary's one special token */
    const char *cfg = "{\"bos_token\": {\"content\": \"<|endoftext|>\"}, \"eos_token\": \"<|endoftext|>\", \"chat_template\": "
                      "\"{{ bos_token }}{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
                      "{% if add_generation_prompt %}<bot>{% endif %}\"}";
    write_text(tpath("tok/tokenizer_config.json"), cfg);
    fx_chat chat, none;
    CHECK(fx_chat_load(dir, "auto", &chat) == 0 && chat.tpl && !strcmp(chat.bos, "<|endoftext|>"), "chat load: %s", fx_err());
    CHECK(fx_chat_load(dir, "none", &none) == 0 && !none.tpl, "--chat-template none");
    const char *p = tpath("d.jsonl");
    write_text(p, "{\"instruction\": \"ab\", \"output\": \"xyz\"}\n{\"prompt\": \"pq\", \"completion\": \"r\"}\n");
    fx_inst_rows r;
    fx_dataset d;
    if (fx_inst_read(p, &fx_instruct_task, &chat, &r) != 0) { CHECK(0, "%s", fx_err()); goto out; }
    CHECK(!strcmp(r.prompt[0], "<|endoftext|><user>ab<bot>") && !r.raw[0] && r.raw[1], "templated prompt: [%s]", r.prompt[0]);
    if (fx_inst_dataset(&r, p, &fx_instruct_task, tok, 64, &d) == 0) {
        /* row 0: <|endoftext|> then 10 bytes "<user>ab<bot>" is 13 bytes: 1 + 13 prompt, "xyz", end token */
        int n0 = (int)(d.off[1] - d.off[0]), n1 = (int)(d.off[2] - d.off[1]);
        CHECK(n0 == 1 + 13 + 3 + 1 && d.ids[0] == 256 && d.ids[1] == '<' && d.ids[n0 - 1] == 256, "row 0's ids (%d)", n0);
        int ok = 1;
        for (int j = 0; j < n0; j++) ok &= d.targets[j] == (j < 14 ? FX_IGNORE : d.ids[j]);
        CHECK(ok, "row 0's targets: -100 on the prompt, the ids on the completion and the end token");
        CHECK(n1 == 2 + 1 + 1 && d.targets[d.off[1] + 1] == FX_IGNORE && d.targets[d.off[1] + 2] == 'r' &&
              d.targets[d.off[1] + 3] == 256, "row 1 (raw prompt, GPT-2 adds no BOS)");
        fx_dataset_free(&d);
    } else CHECK(0, "%s", fx_err());
    /* truncation keeps the completion's start; a prompt filling max_len is refused */
    if (fx_inst_dataset(&r, p, &fx_instruct_task, tok, 15, &d) == 0) {
        CHECK(d.off[1] == 15 && d.targets[14] == 'x' && d.off[2] - d.off[1] == 4, "cut on the right to 15 tokens");
        fx_dataset_free(&d);
    } else CHECK(0, "%s", fx_err());
    CHECK(fx_inst_dataset(&r, p, &fx_instruct_task, tok, 14, &d) == -1 &&
          strstr(fx_err(), "d.jsonl:1: the prompt alone takes 14 tokens, --max-seq-length is 14"), "prompt too long: %s", fx_err());
    fx_inst_rows_free(&r);
    /* a template that raises names the row */
    write_text(tpath("tok/tokenizer_config.json"), "{\"chat_template\": \"{{ raise_exception('roles!') }}\"}");
    fx_chat bad;
    if (fx_chat_load(dir, "auto", &bad) == 0) {
        CHECK(fx_inst_read(p, &fx_instruct_task, &bad, &r) == -1 && strstr(fx_err(), "d.jsonl:1:") && strstr(fx_err(), "roles!"),
              "a raising template: %s", fx_err());
        fx_chat_free(&bad);
    }
    write_text(tpath("tok/tokenizer_config.json"), "{\"chat_template\": \"{% while x %}\"}");
    CHECK(fx_chat_load(dir, "auto", &bad) == -1 && strstr(fx_err(), "tokenizer_config.json: chat_template: line 1: the statement 'while'"),
          "an unsupported template: %s", fx_err());
out:
    fx_chat_free(&chat);
    fx_chat_free(&none);
    fx_tok_free(tok);
}

/* ---------------------------------------------------------------- choices against float64 PyTorch */

static void test_mc_loglik(void) {
    fx_json j;
    if (fx_json_load("tests/fixtures/mc_cases.json", &j) != 0) { CHECK(0, "%s", fx_err()); return; }
    double worst = 0;
    int rows = 0;
    for (size_t m = 0; m < j.n; m++) {
        char dir[256];
        snprintf(dir, sizeof dir, "tests/fixtures/%s", j.keys[m]);
        fx_config c;
        fx_adapter_cfg a = {.kind = FX_LORA, .targets = 0, .r = 1, .alpha = 1};
        fx_model model;
        char cp[300];
        snprintf(cp, sizeof cp, "%s/config.json", dir);
        if (fx_config_load(cp, &c) != 0 || fx_model_create(&model, &c, &a, NULL) != 0) { CHECK(0, "%s: %s", dir, fx_err()); continue; }
        fx_model_init_base(&model, 0);
        fx_decoder d;
        if (fx_model_load(&model, dir) < 0 || fx_model_decoder(&model, 1, &d) != 0) {
            CHECK(0, "%s: %s", dir, fx_err());
            fx_model_free(&model);
            continue;
        }
        const fx_json *R = &j.kids[m];
        for (size_t i = 0; i < R->n; i++, rows++) {
            const fx_json *ctx = fx_json_get(&R->kids[i], "ctx"), *ch = fx_json_get(&R->kids[i], "choices");
            const fx_json *want = fx_json_get(&R->kids[i], "ll"), *chars = fx_json_get(&R->kids[i], "chars");
            int32_t x[64], y[64];
            double got[8], len[8];
            for (size_t k = 0; k < ctx->n; k++) x[k] = (int32_t)ctx->kids[k].inum;
            for (size_t k = 0; k < ch->n; k++) {
                const fx_json *cc = &ch->kids[k];
                for (size_t t = 0; t < cc->n; t++) y[t] = (int32_t)cc->kids[t].inum;
                got[k] = NAN;
                CHECK(fx_loglik(&d, x, (int)ctx->n, y, (int)cc->n, &got[k]) == 0, "%s row %zu: %s", dir, i, fx_err());
                double e = fabs(got[k] - want->kids[k].num);
                if (!(e <= worst)) worst = e;
                CHECK(e <= TOL_LOGLIK, "%s row %zu choice %zu: log-likelihood %.9g, float64 %.9g", dir, i, k, got[k],
                      want->kids[k].num);
                len[k] = chars->kids[k].num;
            }
            CHECK(fx_mc_pick(got, NULL, (int)ch->n) == (int)fx_json_get(&R->kids[i], "acc_pick")->inum &&
                  fx_mc_pick(got, len, (int)ch->n) == (int)fx_json_get(&R->kids[i], "norm_pick")->inum,
                  "%s row %zu: the picks (acc, acc_norm) differ from the reference's", dir, i);
        }
        /* a context and a choice longer than the model's positions are refused */
        int32_t big[64] = {0};
        double v;
        CHECK(fx_loglik(&d, big, d.max_len, big, 2, &v) == -1 && strstr(fx_err(), "do not fit"), "too long: %s", fx_err());
        fx_decoder_free(&d);
        fx_model_free(&model);
    }
    CHECK(rows >= 12, "only %d choice rows read", rows);
    printf("choice log-likelihoods: %d rows, worst error %.3g against float64 PyTorch\n", rows, worst);
    double tie[3] = {-1, -1, -2}, tl[3] = {1, 2, 1};
    CHECK(fx_mc_pick(tie, NULL, 3) == 0 && fx_mc_pick(tie, tl, 3) == 1, "ties go to the first choice");
    fx_json_free(&j);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/fedex_instruct_XXXXXX");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    test_templates();
    test_gsm8k();
    test_reader();
    test_dataset();
    test_mc_loglik();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return check_done();
}
