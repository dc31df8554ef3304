/* tests/test_shards.c: sharded checkpoints (Hugging Face's model.safetensors.index.json). The tiny Llama
 * that tests/make_llama_fixtures.py wrote as one file is split here into shards with an index, as
 * save_pretrained lays them out; loading the shards must give the same base and head bit for bit as loading
 * the single file, `fedex generate` must continue a prompt the same way from either folder, and every kind
 * of bad index is refused with its path and what is wrong. */
#include "fedex.h"
#include "check.h"

#include <ftw.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FIX "tests/fixtures/"
#define SRC FIX "llama_a"

static char tmpdir[64];
static char first[160]; /* the first tensor of SRC, which split() puts in the first shard */

static const char *tmp_path(const char *name) {
    static char buf[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "%s: cannot write", path);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static void copy_file(const char *from, const char *to) {
    char *buf;
    size_t len;
    CHECK(fx_read_file(from, &buf, &len) == 0, "%s", fx_err());
    FILE *f = fopen(to, "w");
    if (f) { fwrite(buf, 1, len, f); fclose(f); }
    free(buf);
}

/* DIR gets config.json and SRC's tensors in NSHARDS shards (tensor i into shard i % NSHARDS), named as
 * save_pretrained names them, with the index mapping each tensor to its shard. */
static int split(const char *dir, int nshards) {
    char path[512];
    if (mkdir(dir, 0755) != 0) return -1;
    snprintf(path, sizeof path, "%s/config.json", dir);
    copy_file(SRC "/config.json", path);
    fx_st_file f;
    if (fx_st_open(SRC "/model.safetensors", &f) != 0) { CHECK(0, "%s", fx_err()); return -1; }
    fx_st_entry *e = fx_calloc((size_t)f.n, sizeof *e);
    snprintf(first, sizeof first, "%s", f.t[0].name);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *ix = fopen(path, "w");
    fprintf(ix, "{\n  \"metadata\": {\"total_size\": %zu},\n  \"weight_map\": {", f.data_len);
    for (int s = 0; s < nshards; s++) {
        int n = 0;
        char shard[96];
        snprintf(shard, sizeof shard, "model-%05d-of-%05d.safetensors", s + 1, nshards);
        for (int i = s; i < f.n; i += nshards) {
            const fx_st_tensor *t = &f.t[i];
            e[n] = (fx_st_entry){.name = t->name, .dtype = t->dtype, .ndim = t->ndim, .data = f.data + t->begin};
            memcpy(e[n].shape, t->shape, sizeof t->shape);
            n++;
            fprintf(ix, "%s\n    \"%s\": \"%s\"", i == 0 ? "" : ",", t->name, shard);
        }
        char sp[700];
        snprintf(sp, sizeof sp, "%s/%s", dir, shard);
        const char *meta[] = {"format", "pt", NULL};
        CHECK(fx_st_write(sp, e, n, meta) == 0, "%s", fx_err());
    }
    fprintf(ix, "\n  }\n}\n");
    fclose(ix);
    free(e);
    fx_st_close(&f);
    return 0;
}

/* Loads DIR into a fresh model of SRC's config; 1 with the model on success. */
static int load(const char *dir, const fx_config *c, fx_model *m) {
    fx_adapter_cfg none = {.kind = FX_LORA, .targets = 0, .r = 1, .alpha = 1};
    if (fx_model_create(m, c, &none, NULL) != 0) { CHECK(0, "%s", fx_err()); return 0; }
    fx_model_init_base(m, 7);
    if (fx_model_load(m, dir) >= 0) return 1;
    fx_model_free(m); /* fx_err() still says why */
    return 0;
}

static void test_same_as_single(void) {
    fx_config c;
    if (fx_config_load(SRC "/config.json", &c) != 0) { CHECK(0, "%s", fx_err()); return; }
    fx_model one, sh;
    if (!load(SRC, &c, &one)) { CHECK(0, "single file: %s", fx_err()); return; }
    for (int n = 1; n <= 3; n++) {
        char name[32];
        snprintf(name, sizeof name, "sharded%d", n);
        const char *dir = tmp_path(name);
        if (split(dir, n) != 0) continue;
        CHECK(fx_model_has_weights(dir) == 0, "%s: %s", dir, fx_err());
        if (!load(dir, &c, &sh)) { CHECK(0, "%d shards: %s", n, fx_err()); continue; }
        CHECK(!memcmp(one.base.data, sh.base.data, one.base.n * sizeof(float)),
              "%d shards: the base differs from the single file's", n);
        CHECK(!memcmp(one.train.data, sh.train.data, one.train.n * sizeof(float)),
              "%d shards: the trainable part differs", n);
        fx_model_free(&sh);
    }
    fx_model_free(&one);

    /* the CLI: the same greedy continuation from the single file and from three shards */
    const char *fedex = getenv("FEDEX") ? getenv("FEDEX") : "./fedex";
    char cmd[1024], a[4096], b[4096];
    snprintf(cmd, sizeof cmd, "%s generate --model %s --prompt-ids --ids --num-beams 1 --max-new-tokens 6 \"1 2 3\" 2>&1", fedex, SRC);
    int ra = check_run(cmd, a, sizeof a);
    snprintf(cmd, sizeof cmd, "%s generate --model %s --prompt-ids --ids --num-beams 1 --max-new-tokens 6 \"1 2 3\" 2>&1", fedex,
             tmp_path("sharded3"));
    int rb = check_run(cmd, b, sizeof b);
    CHECK(ra == 0 && rb == 0 && !strcmp(a, b), "generate: single file (%d) '%s' vs shards (%d) '%s'", ra, a, rb, b);
}

/* A copy of the three-shard folder with its index replaced by TEXT must be refused with WANT in the error. */
static void refused(const char *what, const char *text, const char *want) {
    static int k;
    char name[32];
    snprintf(name, sizeof name, "bad%d", k++);
    const char *dir = tmp_path(name);
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp -r %s %s", tmp_path("sharded3"), dir);
    if (system(cmd) != 0) { CHECK(0, "%s", cmd); return; }
    char ix[512];
    snprintf(ix, sizeof ix, "%s/model.safetensors.index.json", dir);
    write_text(ix, text);
    fx_config c;
    fx_model m;
    if (fx_config_load(SRC "/config.json", &c) != 0) return;
    int ok = load(dir, &c, &m);
    CHECK(!ok && strstr(fx_err(), want) && strstr(fx_err(), dir), "%s: want an error naming %s and '%s', got '%s'",
          what, dir, want, ok ? "(loaded)" : fx_err());
    if (ok) fx_model_free(&m);
}

static void test_refusals(void) {
    refused("not JSON", "{\"weight_map\": ", "line");
    refused("no weight_map", "{\"metadata\": {}}", "weight_map");
    refused("empty weight_map", "{\"weight_map\": {}}", "empty");
    refused("a path outside the folder", "{\"weight_map\": {\"model.norm.weight\": \"../x.safetensors\"}}",
            "plain file name");
    refused("a shard name that is not a string", "{\"weight_map\": {\"model.norm.weight\": 3}}", "plain file name");
    refused("a missing shard", "{\"weight_map\": {\"model.norm.weight\": \"model-00009-of-00009.safetensors\"}}",
            "model-00009-of-00009.safetensors");
    char text[1024];
    snprintf(text, sizeof text, "{\"weight_map\": {\"%s\": \"model-00001-of-00003.safetensors\","
             " \"no.such.tensor\": \"model-00001-of-00003.safetensors\"}}", first);
    refused("a tensor not in its shard", text, "no such tensor");
    snprintf(text, sizeof text, "{\"weight_map\": {\"%s\": \"model-00001-of-00003.safetensors\","
             " \"%s\": \"model-00001-of-00003.safetensors\"}}", first, first);
    refused("a tensor named twice", text, "twice");
    snprintf(text, sizeof text, "{\"weight_map\": {\"%s\": \"model-00001-of-00003.safetensors\"}}", first);
    refused("a model tensor the map lacks", text, "no tensor");

    /* the single file wins over an index beside it (transformers' order): a broken index is never read */
    const char *dir = tmp_path("both");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "cp -r %s %s && cp %s/model.safetensors %s/", tmp_path("sharded3"), dir, SRC, dir);
    if (system(cmd) == 0) {
        char ix[512];
        snprintf(ix, sizeof ix, "%s/model.safetensors.index.json", dir);
        write_text(ix, "not json");
        fx_config c;
        fx_model m;
        if (fx_config_load(SRC "/config.json", &c) == 0) {
            int ok = load(dir, &c, &m);
            CHECK(ok, "model.safetensors beside a broken index: %s", fx_err());
            if (ok) fx_model_free(&m);
        }
    }
    const char *none = tmp_path("none");
    mkdir(none, 0755);
    CHECK(fx_model_has_weights(none) != 0 && strstr(fx_err(), "model.safetensors.index.json"),
          "a folder without weights: '%s'", fx_err());
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st; (void)flag; (void)ftw;
    return remove(p);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/fx_shards_XXXXXX");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    test_same_as_single();
    test_refusals();
    nftw(tmpdir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
    return check_done();
}
