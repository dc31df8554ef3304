/* tests/test_e2e.c: the E2E data against tests/fixtures/e2e_cases.jsonl (Python's csv module and Hugging
 * Face's Rust tokenizer, tests/make_e2e_fixtures.py): GPT-2's ids with <|endoftext|>, the CSV reader on the
 * shipped files and on tricky small ones, the training sequences and their per-token targets; then the
 * reader's refusals (path:line), truncation, batches, client splits and the task's settings. */
#include "fedex.h"
#include "tests/check.h"

#include <string.h>
#include <unistd.h>

static int32_t *json_ids(const fx_json *a, int *n) {
    *n = (int)a->n;
    int32_t *v = fx_malloc((a->n ? a->n : 1) * sizeof *v);
    for (size_t i = 0; i < a->n; i++) v[i] = (int32_t)a->kids[i].inum;
    return v;
}

static int same_ids(const int32_t *a, int na, const int32_t *b, int nb) {
    return na == nb && (na == 0 || !memcmp(a, b, (size_t)na * sizeof *a));
}

static const char *write_tmp(const char *name, const char *data, size_t len) {
    static char path[256];
    snprintf(path, sizeof path, "/tmp/fedex-test-e2e-%d-%s", (int)getpid(), name);
    FILE *f = fopen(path, "wb");
    if (!f) return NULL;
    fwrite(data, 1, len, f);
    fclose(f);
    return path;
}

/* ============================================================================================
 * Against the fixture
 * ============================================================================================ */

static void test_fixture(const char *shared, fx_tokenizer *tok) {
    char *data; size_t len;
    if (fx_read_file("tests/fixtures/e2e_cases.jsonl", &data, &len) != 0) { CHECK(0, "%s", fx_err()); return; }
    const char *files[2] = {"devset.csv", "testset_w_refs.csv"};
    fx_e2e_rows rows[2];
    fx_dataset ds[2];
    int have[2] = {0, 0};
    for (int f = 0; f < 2 && shared; f++) {
        char path[512];
        snprintf(path, sizeof path, "%s/data/e2e/%s", shared, files[f]);
        have[f] = fx_e2e_read(path, &rows[f]) == 0;
        CHECK(have[f], "read %s: %s", path, fx_err());
        if (have[f]) CHECK(fx_e2e_dataset(&rows[f], path, tok, 512, &ds[f]) == 0, "dataset %s: %s", path, fx_err());
    }
    int line = 0, n[4] = {0, 0, 0, 0}, bad[4] = {0, 0, 0, 0};
    int32_t *ids = NULL;
    int cap = 0;
    for (char *p = data, *e; p < data + len; p = e + 1) {
        e = memchr(p, '\n', (size_t)(data + len - p));
        if (!e) e = data + len;
        line++;
        fx_json j;
        if (fx_json_parse(p, (size_t)(e - p), &j) != 0) { CHECK(0, "e2e_cases.jsonl:%d: %s", line, fx_err()); continue; }
        const char *kind = fx_json_get(&j, "kind")->str;
        int nw = 0;
        int32_t *want = fx_json_get(&j, "ids") ? json_ids(fx_json_get(&j, "ids"), &nw) : NULL;
        if (!strcmp(kind, "text") && tok) {
            const fx_json *t = fx_json_get(&j, "text"), *pair = fx_json_get(&j, "pair");
            int k = 0;
            n[0]++;
            int ok = fx_tok_encode_seq(tok, t->str, pair->type == FX_JSTR ? pair->str : NULL, 0, &ids, &k, &cap) == 0 &&
                     same_ids(ids, k, want, nw);
            if (!ok && bad[0]++ < 5) CHECK(0, "e2e_cases.jsonl:%d: ids of \"%s\" differ", line, t->str);
        } else if (!strcmp(kind, "file") && shared) {
            int f = !strcmp(fx_json_get(&j, "file")->str, files[1]);
            const fx_json *g = fx_json_get(&j, "group");
            n[1]++;
            int ok = have[f] && rows[f].n == (int)fx_json_get(&j, "rows")->inum && rows[f].ngroups + 1 == (int)g->n;
            for (int k = 0; ok && k <= rows[f].ngroups; k++) ok = rows[f].group[k] == (int)g->kids[k].inum;
            if (!ok) bad[1]++;
            CHECK(ok, "%s: rows or MR groups differ from the csv module's", files[f]);
        } else if (!strcmp(kind, "row") && shared) {
            int f = !strcmp(fx_json_get(&j, "file")->str, files[1]);
            int i = (int)fx_json_get(&j, "i")->inum, prompt = (int)fx_json_get(&j, "prompt")->inum;
            n[2]++;
            int ok = have[f] && i < rows[f].n && !strcmp(rows[f].mr[i], fx_json_get(&j, "mr")->str) &&
                     !strcmp(rows[f].ref[i], fx_json_get(&j, "ref")->str);
            if (ok && tok) {
                const fx_dataset *d = &ds[f];
                size_t o = d->off[i];
                ok = same_ids(d->ids + o, (int)(d->off[i + 1] - o), want, nw);
                for (int k = 0; ok && k < nw; k++) ok = d->targets[o + k] == (k < prompt ? FX_IGNORE : want[k]);
                ok = ok && nw >= 2 && d->ids[o + nw - 2] == 220 && d->ids[o + nw - 1] == 50256;
            }
            if (!ok && bad[2]++ < 5) CHECK(0, "e2e_cases.jsonl:%d: %s row %d differs (text, ids or targets)", line, files[f], i);
        } else if (!strcmp(kind, "csv")) {
            const fx_json *d = fx_json_get(&j, "data"), *want_rows = fx_json_get(&j, "rows");
            const char *path = write_tmp("case.csv", d->str, d->slen);
            fx_e2e_rows r;
            n[3]++;
            int ok = path && fx_e2e_read(path, &r) == 0;
            if (!ok) CHECK(0, "e2e_cases.jsonl:%d: refused: %s", line, fx_err());
            else {
                ok = r.n == (int)want_rows->n;
                for (int k = 0; ok && k < r.n; k++)
                    ok = !strcmp(r.mr[k], want_rows->kids[k].kids[0].str) && !strcmp(r.ref[k], want_rows->kids[k].kids[1].str);
                if (!ok) bad[3]++;
                CHECK(ok, "e2e_cases.jsonl:%d: rows differ from the csv module's", line);
                fx_e2e_rows_free(&r);
            }
            if (path) unlink(path);
        }
        free(want);
        fx_json_free(&j);
    }
    free(ids);
    free(data);
    if (tok) CHECK(n[0] >= 30 && bad[0] == 0, "GPT-2 texts: %d of %d differ", bad[0], n[0]);
    if (shared) CHECK(n[1] == 2 && n[2] > 300 && bad[2] == 0, "rows: %d of %d differ", bad[2], n[2]);
    CHECK(n[3] >= 5 && bad[3] == 0, "small CSV files: %d of %d differ", bad[3], n[3]);
    printf("e2e_cases.jsonl: %d lines; %d texts, %d files, %d rows, %d small CSV files checked\n", line, n[0], n[1],
           n[2], n[3]);
    for (int f = 0; f < 2; f++)
        if (have[f]) {
            if (tok) fx_dataset_free(&ds[f]);
            fx_e2e_rows_free(&rows[f]);
        }
}

/* ============================================================================================
 * The reader's refusals
 * ============================================================================================ */

static void test_refusals(void) {
    static const struct { const char *data, *want; } cases[] = {
        {"", ":" /* empty file */},
        {"mr,text\nname[A],x\n", ":1: the header must be mr,ref"},
        {"mr,ref\n", "no rows"},
        {"mr,ref\nname[A],x,y\n", ":2: 3 fields, expected 2"},
        {"mr,ref\nname[A]\n", ":2: 1 field, expected 2"},
        {"mr,ref\nname[A],x\n\nname[B],y\n", ":3: 1 field, expected 2"},
        {"mr,ref\nname[A],a\"b\n", ":2: a quote inside an unquoted field"},
        {"mr,ref\nname[A],\"ab\"c\n", ":2: text after the closing quote"},
        {"mr,ref\nname[A],x\nname[B],\"open\nstill\n", ":3: the quoted field opened here is never closed"},
        {"mr,ref\nname[A],x\rname[B],y\n", ":2: a carriage return that does not end the line"},
        {"mr,ref\nname[A],x\nname[B],\xff\n", ":3: invalid UTF-8"},
        {"mr,ref\nname[A],x\n\"\",y\n", ":3: empty meaning representation"},
        {"mr,ref\nname[A],\"\"\n", ":2: empty reference"},
        {"mr,ref\nname[A],x\nname[B],y\n\"multi\nline\",z\nname[A],w\n", ":6: this MR already had its rows at lines 2 to 2"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = write_tmp("bad.csv", cases[i].data, strlen(cases[i].data));
        fx_e2e_rows r;
        int rc = fx_e2e_read(path, &r);
        CHECK(rc == -1 && strstr(fx_err(), path) && strstr(fx_err(), cases[i].want), "case %zu: %s", i,
              rc ? fx_err() : "accepted");
        unlink(path);
    }
    /* NUL bytes, which a C string cannot hold */
    const char nul[] = "mr,ref\nname[A],a\0b\n";
    const char *path = write_tmp("nul.csv", nul, sizeof nul - 1);
    fx_e2e_rows r;
    CHECK(fx_e2e_read(path, &r) == -1 && strstr(fx_err(), ":2: NUL byte at column 10"), "NUL: %s", fx_err());
    unlink(path);
    CHECK(fx_e2e_read("/nonexistent/devset.csv", &r) == -1 && strstr(fx_err(), "no such file"), "missing: %s", fx_err());
    char p[256];
    CHECK(fx_e2e_path("D", "train", NULL, p, sizeof p) == 0 && !strcmp(p, "D/trainset.csv"), "%s", p);
    CHECK(fx_e2e_path("D", "train", "T.csv", p, sizeof p) == 0 && !strcmp(p, "T.csv"), "%s", p);
    CHECK(fx_e2e_path("D", "dev", "T.csv", p, sizeof p) == 0 && !strcmp(p, "D/devset.csv"), "%s", p);
    CHECK(fx_e2e_path("D", "test", NULL, p, sizeof p) == 0 && !strcmp(p, "D/testset_w_refs.csv"), "%s", p);
    CHECK(fx_e2e_path("D", "valid", NULL, p, sizeof p) == -1, "unknown split accepted");
    CHECK(fx_task_find("e2e") == &fx_e2e_task && fx_task_find("E2E_NLG") == &fx_e2e_task && fx_e2e_task.lm &&
          fx_task_find("sst2") && !fx_task_find("sst2")->lm, "task lookup");
}

/* ============================================================================================
 * Sequences, truncation, batches and splits on a small file
 * ============================================================================================ */

static const char small_csv[] =
    "mr,ref\n"
    "\"name[A], food[Thai]\",A serves Thai food.\n"
    "\"name[A], food[Thai]\",\"Thai food at A, \"\"really\"\".\"\n"
    "\"name[B], area[riverside], near[C]\",B is by the river near C.\n"
    "name[D],D.\n"
    "name[D],D it is.\n"
    "name[D],Just D.\n";

static void test_sequences(fx_tokenizer *tok) {
    const char *path = write_tmp("small.csv", small_csv, sizeof small_csv - 1);
    fx_e2e_rows r;
    if (fx_e2e_read(path, &r) != 0) { CHECK(0, "%s", fx_err()); unlink(path); return; }
    CHECK(r.n == 6 && r.ngroups == 3 && r.group[0] == 0 && r.group[1] == 2 && r.group[2] == 3 && r.group[3] == 6 &&
          r.line[1] == 3 && r.line[5] == 7, "groups of the small file");
    CHECK(!strcmp(r.ref[1], "Thai food at A, \"really\"."), "doubled quotes: %s", r.ref[1]);
    char *pr = fx_e2e_prompt(r.mr[0]), *tx = fx_e2e_text(r.mr[3], r.ref[3]);
    CHECK(!strcmp(pr, "name[A], food[Thai] ->") && !strcmp(tx, "name[D] -> D. <|endoftext|>"), "%s | %s", pr, tx);
    free(pr); free(tx);
    CHECK(fx_e2e_slots(r.mr[0]) == 2 && fx_e2e_slots(r.mr[2]) == 3 && fx_e2e_slots("x") == 0, "slot counts");
    if (!tok) { fx_e2e_rows_free(&r); unlink(path); return; }

    fx_dataset d;
    CHECK(fx_e2e_dataset(&r, path, tok, 512, &d) == 0, "%s", fx_err());
    CHECK(d.n == 6 && d.labels == NULL && d.targets && d.cls && d.cls[0] == 2 && d.cls[2] == 3 && d.cls[3] == 1 &&
          d.nclass == FX_E2E_CLASSES, "dataset shape");
    /* "name[D] -> D. <|endoftext|>": name [ D ] -> | D . (220) <|endoftext|> */
    int32_t want[] = {3672, 58, 35, 60, 4613, 360, 13, 220, 50256};
    size_t o = d.off[3];
    CHECK(same_ids(d.ids + o, (int)(d.off[4] - o), want, 9), "ids of row 3");
    int tg_ok = 1;
    for (int k = 0; k < 9; k++) tg_ok &= d.targets[o + k] == (k < 5 ? FX_IGNORE : want[k]);
    CHECK(tg_ok, "targets of row 3: -100 on the prompt, the ids after it");

    /* Truncation from the right keeps the prompt and what fits of the reference */
    fx_dataset t;
    fx_e2e_rows sub = r; /* the rows of name[D] alone, whose prompts are short */
    sub.mr += 3; sub.ref += 3; sub.line += 3; sub.n = 3;
    CHECK(fx_e2e_dataset(&sub, path, tok, 7, &t) == 0, "max_len 7: %s", fx_err());
    CHECK(t.off[1] == 7 && !memcmp(t.ids, want, 7 * sizeof *want) && t.targets[4] == FX_IGNORE && t.targets[6] == 13,
          "row 3 truncated to 7");
    fx_dataset_free(&t);
    CHECK(fx_e2e_dataset(&sub, path, tok, 5, &t) == -1 && strstr(fx_err(), ":5: the prompt alone fills the 5 tokens"),
          "a prompt that fills max_len: %s", fx_err());

    /* Batches: padded with the pad id, mask 0 and targets -100 past each row's end; labels 0 */
    fx_batch b = {0};
    int rows[3] = {3, 0, 5};
    fx_batch_fill(&d, rows, 3, 50256, &b);
    int T = b.T, ok = b.n == 3 && b.targets != NULL;
    for (int i = 0; ok && i < 3; i++) {
        int len = (int)(d.off[rows[i] + 1] - d.off[rows[i]]);
        for (int j = 0; j < T; j++) {
            size_t at = (size_t)i * T + j;
            if (j < len) ok &= b.ids[at] == d.ids[d.off[rows[i]] + j] && b.mask[at] == 1 && b.targets[at] == d.targets[d.off[rows[i]] + j];
            else ok &= b.ids[at] == 50256 && b.mask[at] == 0 && b.targets[at] == FX_IGNORE;
        }
        ok &= b.labels[i] == 0.0f;
    }
    CHECK(ok, "batch of rows 3, 0, 5 (T %d)", T);
    /* The same batch reused for a dataset with row labels and no targets */
    fx_dataset syn;
    CHECK(fx_dataset_synthetic(4, 24, 16, 1, &syn) == 0, "%s", fx_err());
    int srow[2] = {0, 1};
    fx_batch_fill(&syn, srow, 2, 1, &b);
    CHECK(b.targets == NULL && b.labels[0] == syn.labels[0], "a dataset without targets leaves none in the batch");
    fx_batch_fill(&d, rows, 3, 50256, &b);
    CHECK(b.targets && b.targets[0] == FX_IGNORE, "targets back for the next E2E batch");
    fx_batch_free(&b);
    fx_dataset_free(&syn);

    /* Splits: iid over rows, every row once, deterministic; Dirichlet by slot count */
    int *cr[2], cnt[2], *cr2[2], cnt2[2];
    CHECK(fx_split_clients(&d, 2, "iid", 7, cr, cnt) == 0 && fx_split_clients(&d, 2, "iid", 7, cr2, cnt2) == 0,
          "%s", fx_err());
    int seen[6] = {0}, same = cnt[0] == cnt2[0];
    for (int c = 0; c < 2; c++)
        for (int i = 0; i < cnt[c]; i++) { seen[cr[c][i]]++; same &= i < cnt2[c] && cr[c][i] == cr2[c][i]; }
    int once = 1;
    for (int i = 0; i < 6; i++) once &= seen[i] == 1;
    CHECK(once && same && cnt[0] + cnt[1] == 6, "iid split: every row once, the same for the same seed");
    for (int c = 0; c < 2; c++) { free(cr[c]); free(cr2[c]); }
    CHECK(fx_split_clients(&d, 2, "dirichlet:0.5", 3, cr, cnt) == 0, "dirichlet: %s", fx_err());
    char *rep = NULL; size_t rl = 0;
    FILE *f = open_memstream(&rep, &rl);
    fx_split_report(f, &d, 2, cr, cnt);
    fclose(f);
    CHECK(strstr(rep, "MR slot counts") && strstr(rep, "| 1:") && strstr(rep, " 3:") && !strstr(rep, "| 0:") &&
          !strstr(rep, " 4:"), "split report lists the slot counts the data hold: %s", rep);
    free(rep);
    for (int c = 0; c < 2; c++) free(cr[c]);
    fx_dataset_free(&d);
    fx_e2e_rows_free(&r);
    unlink(path);
}

/* ============================================================================================
 * Settings: the task's defaults, what it refuses
 * ============================================================================================ */

static int parse(fx_settings *c, int *set, const char **argv, int argc) {
    return fx_opts_parse(&fx_train_cmdline, argc, (char **)argv, c, set, NULL, NULL);
}

static void test_settings(void) {
    fx_settings c;
    int set[FX_SETTINGS_MAX];
    const char *a1[] = {"train", "--model", "M", "--task", "e2e", "--data", "D", "--batch-size", "16"};
    CHECK(parse(&c, set, a1, 9) == 0, "%s", fx_err());
    CHECK(fx_settings_task_defaults(&c, set) >= 10, "e2e defaults applied");
    CHECK(c.lora_r == 4 && c.lora_alpha == 32 && c.lora_dropout == 0.1 && !strcmp(c.targets, "c_attn,c_proj") &&
          c.batch_size == 16 && c.weight_decay == 0.01 && c.warmup_ratio == 0.1 && c.num_clients == 3 &&
          c.local_epochs == 5 && c.lr == 1e-3 && c.max_len == 512 && c.label_smoothing == 0.1 &&
          c.max_grad_norm == 1.0, "e2e defaults, --batch-size kept as given");
    const char *a2[] = {"train", "--model", "M", "--task", "sst2", "--data", "D"};
    CHECK(parse(&c, set, a2, 7) == 0 && fx_settings_task_defaults(&c, set) == 0 && c.batch_size == 128 &&
          c.label_smoothing == 0 && c.max_grad_norm == 0 && !strcmp(c.targets, "query,value") && c.lora_alpha == 8,
          "GLUE keeps the table's defaults");
    const char *a3[] = {"train", "--model", "M", "--task", "sst2", "--data", "D", "--train-file", "x.csv"};
    CHECK(parse(&c, set, a3, 9) == 0 && fx_settings_check(&c, set) == -1 && strstr(fx_err(), "--train-file applies"),
          "--train-file refused for GLUE: %s", fx_err());
    const char *a4[] = {"train", "--model", "M", "--task", "e2e"};
    CHECK(parse(&c, set, a4, 5) == 0 && fx_settings_check(&c, set) == -1 && strstr(fx_err(), "devset.csv"),
          "e2e without --data: %s", fx_err());
    const char *a5[] = {"train", "--label-smoothing", "1"};
    CHECK(parse(&c, set, a5, 3) == 0 && fx_settings_check(&c, set) == -1 && strstr(fx_err(), "--label-smoothing"),
          "label smoothing 1: %s", fx_err());
    const char *a6[] = {"train", "--max-grad-norm", "-1"};
    CHECK(parse(&c, set, a6, 3) == 0 && fx_settings_check(&c, set) == -1 && strstr(fx_err(), "--max-grad-norm"),
          "negative clip norm: %s", fx_err());
    /* The new options at their defaults leave a run's id as it was before they existed */
    const char *a7[] = {"train"};
    char id1[32], id2[32];
    CHECK(parse(&c, set, a7, 1) == 0, "%s", fx_err());
    fx_settings_id(&c, id1, sizeof id1);
    c.max_grad_norm = 1;
    fx_settings_id(&c, id2, sizeof id2);
    CHECK(strcmp(id1, id2) != 0, "a clip norm changes the run's id");
}

int main(void) {
    const char *shared = shared_dir("E2E files and GPT-2's tokenizer");
    fx_tokenizer *tok = NULL;
    if (shared) {
        char dir[512];
        snprintf(dir, sizeof dir, "%s/models/gpt2", shared);
        tok = fx_tok_load(dir);
        CHECK(tok != NULL, "load %s: %s", dir, fx_err());
    }
    test_fixture(shared, tok);
    test_refusals();
    test_sequences(tok);
    test_settings();
    fx_tok_free(tok);
    return check_done();
}
