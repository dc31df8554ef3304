/* bench/bench_pack.c: what packing saves. (1) Training steps of a roberta-base-shaped model (hidden 768,
 * 12 heads, intermediate 3072, LAYERS layers, random weights, LoRA r=8 on query/value, dropout 0.1) on
 * RTE's real training rows (../shared/data/glue/RTE/train.tsv through roberta-base's tokenizer,
 * max_length 128), in batches of ROWS consecutive rows padded to their longest as fx_batch_fill pads
 * them: seconds per step, and the real and padded token counts. (2) The peak memory (ru_maxrss) of one
 * training step of a small model (hidden 256, 4 layers, 4 heads, attention dropout 0.1) on 4 rows of T
 * tokens, in a child process of its own. Speed and memory only; correctness is the tests' job.
 * Usage: bench_pack [threads] [layers] [rows] [steps] [T] */
#include "../fedex.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* CPU seconds of the process (all threads): on a shared machine, steadier than the wall clock. */
static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static const char *shared(void) {
    const char *d = getenv("FEDEX_SHARED");
    return d ? d : "../shared";
}

static int make_model(fx_model *m, int hidden, int layers, int heads, int inter, int vocab, int maxpos) {
    fx_config c;
    memset(&c, 0, sizeof c);
    c.vocab_size = vocab; c.hidden = hidden; c.layers = layers; c.heads = heads; c.intermediate = inter;
    c.max_positions = maxpos; c.type_vocab_size = 1; c.pad_id = 1; c.num_labels = 2; c.layer_norm_eps = 1e-5f;
    c.hidden_dropout = c.attention_dropout = c.classifier_dropout = 0.1f; c.initializer_range = 0.02f;
    fx_adapter_cfg a;
    memset(&a, 0, sizeof a);
    a.kind = FX_LORA; a.targets = FX_T_QUERY | FX_T_VALUE; a.r = 8; a.alpha = 16; a.seed = 1;
    if (fx_model_create(m, &c, &a, NULL) != 0) { fprintf(stderr, "bench_pack: %s\n", fx_err()); return -1; }
    fx_model_init_base(m, 2);
    fx_model_init_adapters(m, 3);
    return 0;
}

/* (1) RTE-length steps. */
static int rte_steps(int layers, int rows, int steps) {
    char dir[512], data[512];
    snprintf(dir, sizeof dir, "%s/models/roberta-base", shared());
    snprintf(data, sizeof data, "%s/data/glue", shared());
    fx_tokenizer *tok = fx_tok_load(dir);
    if (!tok) { printf("skipped: RTE steps (%s)\n", fx_err()); return 0; }
    fx_dataset d;
    if (fx_dataset_build(fx_task_find("rte"), data, "train", tok, 128, &d) != 0) {
        printf("skipped: RTE steps (%s)\n", fx_err());
        fx_tok_free(tok);
        return 0;
    }
    fx_model m;
    if (make_model(&m, 768, layers, 12, 3072, 50265, 514) != 0) return -1;
    fx_batch b;
    memset(&b, 0, sizeof b);
    int *idx = fx_malloc((size_t)rows * sizeof *idx);
    long real = 0, padded = 0;
    double total = 0, cpu = 0;
    for (int s = 0; s <= steps; s++) {                    /* step 0 warms the workspace up, untimed */
        for (int i = 0; i < rows; i++) idx[i] = (s * rows + i) % d.n;
        fx_batch_fill(&d, idx, rows, 1, &b);
        double t0 = fx_now(), c0 = cpu_now();
        fx_model_step(&m, &b, 1, NULL);
        fx_adamw_update(&m, 1e-4f, 0.01f);
        double t = fx_now() - t0, c = cpu_now() - c0;
        if (s == 0) continue;
        total += t;
        cpu += c;
        padded += (long)b.n * b.T;
        for (int i = 0; i < b.n * b.T; i++) real += b.mask[i] != 0;
    }
    printf("RTE train rows, roberta-base shape with %d layers, %d rows a step, %d threads: %.3f s a step "
           "(%.3f CPU s; %ld real tokens, %ld padded: %.2fx)\n", layers, rows, omp_get_max_threads(), total / steps,
           cpu / steps, real,
           padded, (double)padded / (double)real);
    free(idx);
    fx_batch_free(&b);
    fx_model_free(&m);
    fx_dataset_free(&d);
    fx_tok_free(tok);
    return 0;
}

/* (2) The peak memory of a step on 4 rows of T tokens, in a child so that nothing else counts. */
static void long_rows(int T) {
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) { perror("bench_pack: fork"); return; }
    if (pid == 0) {
        fx_model m;
        if (make_model(&m, 256, 4, 4, 1024, 1000, T + 2) != 0) _exit(1);
        fx_batch b;
        memset(&b, 0, sizeof b);
        b.n = 4; b.T = T;
        b.ids = fx_malloc((size_t)4 * T * sizeof *b.ids);
        b.mask = fx_malloc((size_t)4 * T);
        b.labels = fx_calloc(4, sizeof *b.labels);
        fx_rng g;
        fx_rng_seed(&g, 9);
        for (int i = 0; i < 4 * T; i++) { b.ids[i] = 4 + (int32_t)(fx_rng_u64(&g) % 996); b.mask[i] = 1; }
        double t0 = fx_now(), c0 = cpu_now();
        fx_model_step(&m, &b, 1, NULL);
        double t = fx_now() - t0, c = cpu_now() - c0;
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        printf("4 rows of %d tokens, hidden 256, 4 layers, 4 heads: one training step %.2f s (%.2f CPU s), "
               "peak memory (ru_maxrss) %.0f MB\n", T, t, c, ru.ru_maxrss / 1024.0);
        fflush(stdout);
        _exit(0);
    }
    int st;
    waitpid(pid, &st, 0);
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2, layers = argc > 2 ? atoi(argv[2]) : 4;
    int rows = argc > 3 ? atoi(argv[3]) : 16, steps = argc > 4 ? atoi(argv[4]) : 3, T = argc > 5 ? atoi(argv[5]) : 1024;
    if (threads < 1 || layers < 1 || rows < 1 || steps < 1 || T < 8) {
        fprintf(stderr, "usage: bench_pack [threads] [layers] [rows] [steps] [T]\n");
        return 2;
    }
    fx_set_threads(threads);
    long_rows(T);
    return rte_steps(layers, rows, steps) != 0;
}
