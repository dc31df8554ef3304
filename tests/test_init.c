/* tests/test_init.c: initialising only what a checkpoint lacks. fx_rng_jump against the draws it stands
 * for; fx_model_load_init against fx_model_init_base + fx_model_load (what every command did before),
 * bit for bit, on checkpoints with and without a head, of each family. (test_model's F16/BF16 and
 * test_gpt2's merged checkpoint load through it too, against the PyTorch fixtures.) */
#include "fedex.h"
#include "check.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FIX "tests/fixtures/"

/* ============================================================================================
 * fx_rng_jump
 * ============================================================================================ */

/* The stream after a jump of K is the stream after K draws, for jumps below and above the stepping
 * threshold (512) and far past the state's 256 bits; jumps compose. */
static void test_jump(void) {
    static const uint64_t K[] = {0, 1, 2, 255, 256, 511, 512, 513, 1000, 4097, 100003, (1u << 20) + 7};
    for (uint64_t seed = 0; seed < 3; seed++)
        for (size_t i = 0; i < sizeof K / sizeof K[0]; i++) {
            fx_rng a, b;
            fx_rng_seed(&a, seed * 1000 + 17);
            b = a;
            for (uint64_t j = 0; j < K[i]; j++) fx_rng_u64(&a);
            fx_rng_jump(&b, K[i]);
            CHECK(!memcmp(&a, &b, sizeof a), "seed %llu: a jump of %llu is not %llu draws", (unsigned long long)seed,
                  (unsigned long long)K[i], (unsigned long long)K[i]);
            CHECK(fx_rng_u64(&a) == fx_rng_u64(&b), "seed %llu: the draw after a jump of %llu differs",
                  (unsigned long long)seed, (unsigned long long)K[i]);
        }
    fx_rng a, b;
    fx_rng_seed(&a, 5);
    b = a;
    fx_rng_jump(&a, 3000);
    fx_rng_jump(&a, 123456);
    fx_rng_jump(&b, 126456);
    CHECK(!memcmp(&a, &b, sizeof a), "a jump of 3000 then 123456 is not one of 126456");
}

/* ============================================================================================
 * fx_model_init_except, fx_model_load_init
 * ============================================================================================ */

static char tmp_root[64];

/* M's base tensors alone (no head: a masked-LM style checkpoint) as DIR/model.safetensors. */
static int save_base_only(const fx_model *m, const char *dir) {
    char path[256];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if (fx_mkdir_p(dir) != 0) return -1;
    fx_st_entry *e = fx_calloc((size_t)m->base.nt, sizeof *e);
    char (*names)[160] = fx_calloc((size_t)m->base.nt, sizeof *names);
    for (int i = 0; i < m->base.nt; i++) {
        const fx_tensor *t = &m->base.t[i];
        snprintf(names[i], sizeof names[i], "%s%s", m->fam->prefix, t->name);
        e[i].name = names[i]; e[i].dtype = FX_F32; e[i].ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) e[i].shape[d] = t->shape[d];
        e[i].data = m->base.data + t->off;
    }
    int rc = fx_st_write(path, e, m->base.nt, NULL);
    free(e); free(names);
    return rc;
}

/* A model of C loaded from DIR the old way (fx_model_init_base(SEED), then fx_model_load) and the new
 * (fx_model_load_init): the same return value, base and head bit for bit. */
static void same_as_before(const char *what, const fx_config *c, const char *dir, uint64_t seed, int want_head) {
    fx_adapter_cfg none = {.kind = FX_LORA};
    fx_model old, new;
    if (fx_model_create(&old, c, &none, NULL) != 0 || fx_model_create(&new, c, &none, NULL) != 0) {
        CHECK(0, "%s: %s", what, fx_err());
        return;
    }
    fx_model_init_base(&old, seed);
    int r_old = fx_model_load(&old, dir), r_new = fx_model_load_init(&new, dir, seed);
    CHECK(r_old == want_head && r_new == want_head, "%s: fx_model_load %d, fx_model_load_init %d, want %d: %s", what,
          r_old, r_new, want_head, fx_err());
    CHECK(!memcmp(old.base.data, new.base.data, old.base.n * sizeof(float)), "%s: base weights differ", what);
    CHECK(!memcmp(old.train.data, new.train.data, old.train.n * sizeof(float)),
          "%s: the head (or a trainable tensor) differs", what);
    fx_model_free(&old);
    fx_model_free(&new);
}

static void test_load_init(void) {
    fx_config c;
    if (fx_config_load(FIX "model_config.json", &c) != 0) { CHECK(0, "%s", fx_err()); return; }
    fx_adapter_cfg none = {.kind = FX_LORA};
    fx_model m;
    if (fx_model_create(&m, &c, &none, NULL) != 0) { CHECK(0, "%s", fx_err()); return; }
    fx_model_init_base(&m, 3);
    char with[128], without[128];
    snprintf(with, sizeof with, "%s/with_head", tmp_root);
    snprintf(without, sizeof without, "%s/no_head", tmp_root);
    CHECK(fx_model_save(&m, with, 0) == 0 && save_base_only(&m, without) == 0, "saving: %s", fx_err());

    same_as_before("RoBERTa with a head", &c, with, 11, 1);
    same_as_before("RoBERTa without a head", &c, without, 11, 0);
    same_as_before("F16 checkpoint with a head", &c, FIX "model_f16", 5, 1);
    same_as_before("BF16 checkpoint without a head", &c, FIX "model_bf16", 5, 0);

    /* the missing head is the seed's: another seed draws another one, the same seed the same one */
    fx_model a, b;
    if (fx_model_create(&a, &c, &none, NULL) == 0 && fx_model_create(&b, &c, &none, NULL) == 0) {
        fx_model_load_init(&a, without, 11);
        fx_model_load_init(&b, without, 12);
        CHECK(memcmp(a.train.data + a.head_off, b.train.data + b.head_off, a.head_n * sizeof(float)) != 0,
              "seeds 11 and 12 drew the same head");
        fx_model_load_init(&b, without, 11);
        CHECK(!memcmp(a.train.data + a.head_off, b.train.data + b.head_off, a.head_n * sizeof(float)),
              "seed 11 drew two different heads");
        fx_model_free(&a);
        fx_model_free(&b);
    }

    /* keeping a tensor in the middle of the table leaves it, and draws the others as before */
    fx_model k;
    if (fx_model_create(&k, &c, &none, NULL) == 0) {
        int nt = k.base.nt + k.fam->nhead, mid = k.base.nt / 2;
        unsigned char *keep = fx_calloc((size_t)nt, 1);
        keep[mid] = 1;
        const fx_tensor *t = &k.base.t[mid];
        for (size_t j = 0; j < t->n; j++) k.base.data[t->off + j] = 7.0f;
        fx_model_init_except(&k, 3, keep);
        int kept = 1;
        for (size_t j = 0; j < t->n; j++) kept &= k.base.data[t->off + j] == 7.0f;
        CHECK(kept, "a kept tensor (%s) was overwritten", t->name);
        for (size_t j = 0; j < t->n; j++) k.base.data[t->off + j] = m.base.data[t->off + j];
        CHECK(!memcmp(k.base.data, m.base.data, m.base.n * sizeof(float)) &&
              !memcmp(k.train.data + k.head_off, m.train.data + m.head_off, m.head_n * sizeof(float)),
              "the tensors around a kept one are not fx_model_init_base's");
        free(keep);
        fx_model_free(&k);
    }
    fx_model_free(&m);
}

/* GPT-2 (its head is wte, Conv1D weights stored transposed) and Llama (an untied lm_head in the base). */
static void test_other_families(void) {
    static const char *const dirs[] = {FIX "gpt2_a", FIX "llama_a"};
    for (int i = 0; i < 2; i++) {
        char path[256];
        snprintf(path, sizeof path, "%s/config.json", dirs[i]);
        fx_config c;
        if (fx_config_load(path, &c) != 0) { CHECK(0, "%s", fx_err()); continue; }
        same_as_before(dirs[i], &c, dirs[i], 9, 1); /* no separate head: nothing missing */
    }
}

int main(void) {
    snprintf(tmp_root, sizeof tmp_root, "/tmp/fedex_test_init_XXXXXX");
    if (!mkdtemp(tmp_root)) { fprintf(stderr, "mkdtemp failed\n"); return 1; }
    test_jump();
    test_load_init();
    test_other_families();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmp_root);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmp_root);
    return check_done();
}
