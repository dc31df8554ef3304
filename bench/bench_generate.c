/* bench/bench_generate.c: generation speed on gpt2-small shapes (../shared/models/gpt2/config.json, random
 * weights, LoRA r 4 on c_attn and c_proj as in an E2E run): beam search with 10 beams over the model's KV
 * cache (fx_generate on fx_model_decoder), a 24-token prompt, no end token so that every run makes the
 * same steps, no 4-gram twice among the generated tokens. Its peer is the same decode loop in PyTorch
 * (bench/torch_generate.py), run in the same process tree, paired and interleaved (fedex, torch, fedex,
 * torch ...): it prints each pair, the medians and the ratio. Speed only; correctness is the tests'.
 * Usage: bench_generate [threads] [pairs] [new tokens] */
#include "../fedex.h"

#include <stdlib.h>
#include <string.h>

enum { BEAMS = 10, PROMPT = 24 };

static const char *shared(void) {
    const char *d = getenv("FEDEX_SHARED");
    return d ? d : "../shared";
}

/* One timed run of bench/torch_generate.py: seconds per prompt, or -1 with the reason printed. */
static double torch_seconds(const char *config, int threads, int new_tokens) {
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 bench/torch_generate.py '%s' --beams %d --prompt %d --new %d "
             "--threads %d 2>&1", config, BEAMS, PROMPT, new_tokens, threads);
    FILE *p = popen(cmd, "r");
    if (!p) { printf("skipped: PyTorch peer (cannot run /usr/bin/python3)\n"); return -1; }
    char line[512], last[512] = "";
    double s = -1;
    while (fgets(line, sizeof line, p))
        if (sscanf(line, "torch_generate_s %lf", &s) != 1) snprintf(last, sizeof last, "%s", line);
    int rc = pclose(p);
    if (s <= 0 || rc != 0) {
        last[strcspn(last, "\n")] = 0;
        printf("skipped: PyTorch peer (torch_generate.py exited %d: %s)\n", rc, last);
        return -1;
    }
    return s;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2, pairs = argc > 2 ? atoi(argv[2]) : 3;
    int new_tokens = argc > 3 ? atoi(argv[3]) : 16;
    if (threads < 1) threads = 1;
    if (pairs < 1) pairs = 1;
    if (new_tokens < 2) new_tokens = 2;
    char config[512];
    snprintf(config, sizeof config, "%s/models/gpt2/config.json", shared());
    fx_config c;
    if (fx_config_load(config, &c) != 0) { printf("skipped: bench_generate (%s)\n", fx_err()); return 0; }
    fx_set_threads(threads);
    fx_adapter_cfg a = {.kind = FX_LORA, .targets = FX_T_QKV | FX_T_ATTN_OUT | FX_T_OUTPUT, .r = 4, .alpha = 32, .seed = 1};
    fx_model m;
    fx_decoder d;
    if (fx_model_create(&m, &c, &a, NULL) != 0) { fprintf(stderr, "bench_generate: %s\n", fx_err()); return 1; }
    fx_model_init_base(&m, 1);
    fx_model_init_adapters(&m, 2);
    if (fx_model_decoder(&m, BEAMS, &d) != 0) { fprintf(stderr, "bench_generate: %s\n", fx_err()); return 1; }
    int prompt[PROMPT], *out = fx_malloc((size_t)new_tokens * sizeof *out), nout;
    fx_rng r;
    fx_rng_seed(&r, 3);
    for (int i = 0; i < PROMPT; i++) prompt[i] = (int)(fx_rng_u64(&r) % (uint64_t)c.vocab_size);
    fx_gen_cfg g;
    fx_gen_e2e(&g, -1);
    g.max_new_tokens = new_tokens;

    printf("gpt2-small shapes, LoRA r 4 on c_attn and c_proj, beam %d, prompt %d, %d new tokens, %d threads\n",
           BEAMS, PROMPT, new_tokens, threads);
    g.max_new_tokens = 2; /* warm-up: workspace, caches, page faults */
    if (fx_generate(&d, &g, prompt, PROMPT, out, &nout, NULL) != 0) { fprintf(stderr, "bench_generate: %s\n", fx_err()); return 1; }
    g.max_new_tokens = new_tokens;
    double *tf = fx_malloc((size_t)pairs * sizeof *tf), *tt = fx_malloc((size_t)pairs * sizeof *tt);
    double *ratio = fx_malloc((size_t)pairs * sizeof *ratio);
    int have_torch = 1;
    for (int p = 0; p < pairs; p++) {
        double t0 = fx_now();
        if (fx_generate(&d, &g, prompt, PROMPT, out, &nout, NULL) != 0) { fprintf(stderr, "bench_generate: %s\n", fx_err()); return 1; }
        tf[p] = fx_now() - t0;
        tt[p] = have_torch ? torch_seconds(config, threads, new_tokens) : -1;
        have_torch = tt[p] > 0;
        ratio[p] = have_torch ? tf[p] / tt[p] : 0;
        printf("pair %d: fedex %.3f s (%.1f beam tokens/s)", p + 1, tf[p], BEAMS * new_tokens / tf[p]);
        if (have_torch) printf(", torch %.3f s (%.1f beam tokens/s), fedex/torch %.2f", tt[p], BEAMS * new_tokens / tt[p], ratio[p]);
        printf("\n");
    }
    double mf = fx_sort_median(tf, pairs);
    printf("median: fedex %.3f s a prompt, %.1f beam tokens/s (%.2f new tokens/s)", mf, BEAMS * new_tokens / mf,
           new_tokens / mf);
    if (have_torch) {
        double mt = fx_sort_median(tt, pairs);
        printf("; torch %.3f s, %.1f beam tokens/s; fedex/torch time %.2f (median of the pairs' ratios)", mt,
               BEAMS * new_tokens / mt, fx_sort_median(ratio, pairs));
    }
    printf("\n");
    free(tf); free(tt); free(ratio); free(out);
    fx_decoder_free(&d);
    fx_model_free(&m);
    return 0;
}
