/* bench/bench_memory.c: peak memory of one LoRA training step (r 8 on q_proj and v_proj, one row of 256
 * tokens, the LM loss, AdamW) on a random Llama of Llama-3.2-1B's shapes (hidden 2048, 16 layers, 32 heads,
 * 8 key/value heads, intermediate 8192, vocabulary 128256, tied head), with the base held in bf16
 * (--precision bf16) and in fp32, each in its own process. The goal: peak RSS within 2.5 x the bf16 weight
 * bytes plus the step's activations. Usage: bench_memory [threads] [bf16 | fp32 | both] [tokens] */
#include "../fedex.h"

#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static fx_config llama_1b(int prec) {
    fx_config c = {.vocab_size = 128256, .hidden = 2048, .layers = 16, .heads = 32, .kv_heads = 8, .head_dim = 64,
                   .intermediate = 8192, .max_positions = 4096, .type_vocab_size = 1, .pad_id = 0, .num_labels = 1,
                   .layer_norm_eps = 1e-5f, .initializer_range = 0.02f, .rope_theta = 500000.0f,
                   .family = &fx_llama, .precision = prec};
    return c;
}

/* Weights drawn cheaply (a hash of the index, uniform in +-0.04; norms 1), a chunk at a time so that the
 * fill itself holds no fp32 copy of a bf16 matrix. */
static void fill(fx_model *m) {
    enum { CHUNK = 1 << 20 };
    float *tmp = fx_malloc(CHUNK * sizeof *tmp);
    for (int i = 0; i < m->base.nt; i++) {
        const fx_tensor *t = &m->base.t[i];
        for (size_t at = 0; at < t->n; at += CHUNK) {
            size_t n = t->n - at < CHUNK ? t->n - at : CHUNK;
            #pragma omp parallel for schedule(static)
            for (size_t j = 0; j < n; j++) {
                uint64_t h = (at + j + 1) * 0x9e3779b97f4a7c15ULL ^ (uint64_t)i << 50;
                h ^= h >> 31; h *= 0xbf58476d1ce4e5b9ULL; h ^= h >> 29;
                tmp[j] = t->ndim == 2 ? (float)((double)(h >> 40) / 16777216.0 - 0.5) * 0.08f : 1.0f;
            }
            if (t->ndim == 2) fx_base_write(m, t->off + at, n, tmp);
            else memcpy(m->base.data + t->off + at, tmp, n * sizeof *tmp);
        }
    }
    free(tmp);
}

static double peak_gb(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_maxrss * 1024.0 / 1e9;
}

/* One precision, in this process: prints its line, returns 0 when the peak is within the goal. */
static int run(int prec, int T) {
    fx_config c = llama_1b(prec), c16 = llama_1b(FX_PREC_BF16);
    fx_adapter_cfg a = {.kind = FX_LORA, .targets = FX_T_QUERY | FX_T_VALUE, .r = 8, .alpha = 16, .seed = 1};
    fx_model m;
    if (fx_model_create(&m, &c, &a, NULL) != 0) { fprintf(stderr, "bench_memory: %s\n", fx_err()); return 1; }
    fill(&m);
    fx_model_init_adapters(&m, 2);
    int32_t *ids = fx_malloc(sizeof(int32_t) * T), *tg = fx_malloc(sizeof(int32_t) * T);
    uint8_t *mask = fx_malloc((size_t)T);
    for (int t = 0; t < T; t++) { ids[t] = tg[t] = (int32_t)((t * 7919u + 13) % (unsigned)c.vocab_size); mask[t] = 1; }
    fx_batch b = {.n = 1, .T = T, .ids = ids, .mask = mask, .targets = tg};
    double before = peak_gb(), t0 = fx_now();
    float loss = fx_model_step(&m, &b, 1, NULL);
    fx_adamw_update(&m, 1e-4f, 0.0f);
    double secs = fx_now() - t0, peak = peak_gb();
    double wbf16 = (double)fx_base_bytes(&c16) / 1e9, base = (double)fx_base_bytes(&c) / 1e9;
    double act = (double)fx_model_workspace_bytes(&m) / 1e9;
    double goal = 2.5 * wbf16 + act;
    printf("llama-1B shapes, %s base (%.2f GB; bf16 weights %.2f GB), LoRA r 8 q,v, 1 x %d tokens: loss %.3f in %.1f s; "
           "peak RSS %.2f GB (%.2f GB before the step), activations %.2f GB; goal 2.5 x %.2f + %.2f = %.2f GB: %s\n",
           prec == FX_PREC_BF16 ? "bf16" : "fp32", base, wbf16, T, loss, secs, peak, before, act, wbf16, act, goal,
           peak <= goal ? "within" : "over");
    free(ids); free(tg); free(mask);
    fx_model_free(&m);
    fflush(stdout);
    return prec == FX_PREC_BF16 && peak > goal;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    const char *which = argc > 2 ? argv[2] : "both";
    int T = argc > 3 ? atoi(argv[3]) : 256;
    if (threads < 1 || T < 2) { fprintf(stderr, "usage: bench_memory [threads] [bf16 | fp32 | both] [tokens]\n"); return 2; }
    fx_set_threads(threads);
    printf("bf16 kernel: %s, %d threads\n", fx_matmul_bf16_kernel(), threads);
    int rc = 0;
    for (int p = 0; p < 2; p++) {
        int prec = p == 0 ? FX_PREC_BF16 : FX_PREC_FP32;
        if (strcmp(which, "both") && strcmp(which, prec == FX_PREC_BF16 ? "bf16" : "fp32")) continue;
        fflush(stdout);
        pid_t pid = fork(); /* each precision's peak in its own process */
        if (pid < 0) { perror("bench_memory: fork"); return 1; }
        if (pid == 0) _exit(run(prec, T));
        int st;
        if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) rc = 1;
    }
    return rc;
}
