/* bench/bench_gpu.c: one LoRA training step of RoBERTa-base on the GPU (fx_gpu_step with train=1, then
 * fx_gpu_adamw), random weights, LoRA r=4 alpha 8 on query/value, batch 128 x 128 tokens, in bf16, tf32
 * and fp32; the step's matrix-product FLOPs counted from the shapes and set against the device's bf16
 * GEMM rate and copy bandwidth, both measured in the same run. It measures speed only: tests/test_gpu.c
 * checks correctness. Without FEDEX_CUDA or a usable device it prints one "skipped:" line and exits 0.
 *
 * usage: bench_gpu [CONFIG] [--steps N] [--warmup N] [--batch N] [--tokens T] [--data DIR] [--quick]
 *   CONFIG     a config.json of RoBERTa-base's shapes (default ../shared/models/roberta-base/config.json;
 *              bench/gpu_check.sh passes the copy it carries in gpu-carry/)
 *   --data DIR a GLUE folder holding RTE/train.tsv: also time real RTE batches, tokenised with the
 *              vocab.json and merges.txt beside CONFIG
 *   --quick    one training step and one evaluation in bf16 at the given size, no ceilings: for
 *              compute-sanitizer, whose tools slow every kernel a hundredfold */
#include "../fedex.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifndef FEDEX_CUDA

int main(void) {
    printf("skipped: bench_gpu (built without CUDA)\n");
    return 0;
}

#else

#include <cublas_v2.h>
#include <cuda_runtime.h>

/* ---------------------------------------------------------------- checks and options */

/* This file's own CUDA calls (the ceilings); gpu.cu checks its own. A failure is a broken device. */
#define CK(call) ck_cuda((call), __LINE__, #call)
#define CKB(call) ck_blas((call), __LINE__, #call)
static void ck_cuda(cudaError_t e, int line, const char *call) {
    if (e != cudaSuccess) fx_die("bench/bench_gpu.c:%d: %s failed: %s", line, call, cudaGetErrorString(e));
}
static void ck_blas(cublasStatus_t s, int line, const char *call) {
    if (s != CUBLAS_STATUS_SUCCESS) fx_die("bench/bench_gpu.c:%d: %s failed: status %d", line, call, (int)s);
}

enum { RANK = 4, ROTATE = 4 };       /* LoRA rank; batches the timed steps cycle through */
#define LORA_ALPHA 8.0f
#define LR 1e-3f                      /* the paper's peak learning rate and weight decay */
#define WD 0.01f

typedef struct {
    const char *config, *data;
    int steps, warmup, batch, tokens, quick;
} opts;

static int parse_int(const char *flag, const char *s, int lo, int hi, int *out) {
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "bench_gpu: %s '%s': expected an integer in [%d, %d]\n", flag, s, lo, hi);
        return -1;
    }
    *out = (int)v;
    return 0;
}

static int parse_opts(int argc, char **argv, opts *o) {
    *o = (opts){.config = NULL, .data = NULL, .steps = 20, .warmup = 3, .batch = 128, .tokens = 128};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int *num = !strcmp(a, "--steps") ? &o->steps : !strcmp(a, "--warmup") ? &o->warmup
                 : !strcmp(a, "--batch") ? &o->batch : !strcmp(a, "--tokens") ? &o->tokens : NULL;
        if (!strcmp(a, "--quick")) { o->quick = 1; continue; }
        if ((num || !strcmp(a, "--data")) && !v) { fprintf(stderr, "bench_gpu: %s needs a value\n", a); return -1; }
        if (num) {
            int lo = num == &o->warmup ? 0 : num == &o->tokens ? 8 : 1;
            int hi = num == &o->batch || num == &o->tokens ? 1024 : 100000;  /* tokens: max_positions decides */
            if (parse_int(a, v, lo, hi, num) != 0) return -1;
            i++;
        } else if (!strcmp(a, "--data")) {
            o->data = v;
            i++;
        } else if (a[0] != '-' && !o->config) {
            o->config = a;
        } else {
            fprintf(stderr, "bench_gpu: unknown argument '%s' (usage at the top of bench/bench_gpu.c)\n", a);
            return -1;
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- the step's FLOPs
 *
 * Matrix products only, 2 M N K each, for n rows of T tokens (BT = n T), hidden H, intermediate I, L
 * layers, head C labels, rank r:
 *   frozen linears  forward 2 BT (4 H^2 + 2 H I) per layer; backward only dX (no dW), the same again,
 *                   less layer 0's query/key/value dX (their input is the frozen embeddings)
 *   attention       per layer: forward Q K^T and P V, 2 * 2 n T^2 H; backward dP = dctx V^T, dV = P^T dctx,
 *                   dQ = dS K, dK = dS^T Q, 4 * 2 n T^2 H (model.c keeps P and P', so gpu.cu's backward
 *                   does not recompute Q K^T)
 *   LoRA (in, out)  forward x A^T, u B^T: 2 BT r (in + out); backward dB, du: 2 * 2 BT r out, dA and dX:
 *                   2 * 2 BT r in (dX skipped where the input needs no gradient, as for dense layers)
 *   head            dense (n, H) x (H, H) and out_proj (n, H) x (H, C); backward dW and dX of each
 * The embeddings, LayerNorms, GELU, softmax and AdamW are no products; they count in the bytes. */

typedef struct { double lin_f, lin_b, att_f, att_b, lora_f, lora_b, head_f, head_b; } flops_t;

static flops_t step_flops(const fx_model *m, int n, int T) {
    const fx_config *c = &m->c;
    double BT = (double)n * T, H = c->hidden, I = c->intermediate, L = c->layers, r = m->a.r;
    flops_t f = {0};
    f.lin_f = 2 * BT * (4 * H * H + 2 * H * I) * L;
    f.lin_b = f.lin_f - 2 * BT * 3 * H * H;
    f.att_f = 2 * 2.0 * n * T * (double)T * H * L;
    f.att_b = 4 * 2.0 * n * T * (double)T * H * L;
    for (int k = 0; k < m->nadapted; k++) {
        const fx_adapted *ad = &m->ad[k];
        int first_qkv = ad->layer == 0 && (ad->target & (FX_T_QUERY | FX_T_KEY | FX_T_VALUE));
        f.lora_f += 2 * BT * r * (ad->in + ad->out);
        f.lora_b += 2 * 2 * BT * r * ad->out + 2 * BT * r * ad->in * (m->a.freeze_a ? 0 : 1)
                  + (first_qkv ? 0 : 2 * BT * r * ad->in);
    }
    f.head_f = 2.0 * n * H * H + 2.0 * n * H * c->num_labels;
    f.head_b = 2 * f.head_f;
    return f;
}
static double flops_train(const flops_t *f) {
    return f->lin_f + f->lin_b + f->att_f + f->att_b + f->lora_f + f->lora_b + f->head_f + f->head_b;
}
static double flops_eval(const flops_t *f) { return f->lin_f + f->att_f + f->lora_f + f->head_f; }

/* ---------------------------------------------------------------- batches */

/* A dataset of N rows of exactly T tokens (<s>, random body from [4, vocab), </s>) and random binary
 * labels: full batches with no padding. */
static void dataset_full(fx_dataset *d, int nrows, int T, int vocab, uint64_t seed) {
    fx_rng r;
    fx_rng_seed(&r, seed);
    memset(d, 0, sizeof *d);
    d->n = nrows;
    d->ids = fx_malloc((size_t)nrows * T * sizeof *d->ids);
    d->off = fx_malloc(((size_t)nrows + 1) * sizeof *d->off);
    d->labels = fx_malloc((size_t)nrows * sizeof *d->labels);
    for (int i = 0; i < nrows; i++) {
        int32_t *row = d->ids + (size_t)i * T;
        row[0] = 0;
        for (int j = 1; j < T - 1; j++) row[j] = 4 + (int32_t)(fx_rng_u64(&r) % (uint64_t)(vocab - 4));
        row[T - 1] = 2;
        d->off[i] = (size_t)i * T;
        d->labels[i] = (float)(fx_rng_u64(&r) & 1);
    }
    d->off[nrows] = (size_t)nrows * T;
}

/* ROTATE batches of n consecutive rows of D, each padded to its longest row by fx_batch_fill. */
static void fill_batches(const fx_dataset *d, int n, int pad, fx_batch *b) {
    int *rows = fx_malloc((size_t)n * sizeof *rows);
    for (int k = 0; k < ROTATE; k++) {
        memset(&b[k], 0, sizeof b[k]);
        for (int i = 0; i < n; i++) rows[i] = (k * n + i) % d->n;
        fx_batch_fill(d, rows, n, pad, &b[k]);
    }
    free(rows);
}

/* Real tokens over padded slots, and the longest batch, of the ROTATE batches. */
static void batch_fill_stats(const fx_batch *b, double *real, int *tmax) {
    double ones = 0, slots = 0;
    *tmax = 0;
    for (int k = 0; k < ROTATE; k++) {
        for (size_t i = 0; i < (size_t)b[k].n * b[k].T; i++) ones += b[k].mask[i];
        slots += (double)b[k].n * b[k].T;
        if (b[k].T > *tmax) *tmax = b[k].T;
    }
    *real = ones / slots;
}

static void free_batches(fx_batch *b) {
    for (int k = 0; k < ROTATE; k++) fx_batch_free(&b[k]);
}

/* ---------------------------------------------------------------- timing */

typedef struct { double med, lo, hi; } timing; /* seconds: median, fastest, slowest */

static timing summarise(double *t, int n) {
    double med = fx_sort_median(t, n);
    return (timing){med, t[0], t[n - 1]};
}

/* fx_gpu_step synchronises its stream before it returns (it reads the loss back); AdamW runs after it
 * on the same stream, so the device is synchronised before the clock is read. The host's share (the
 * batch's upload, position ids) is part of a real step and stays in. A non-finite loss ends the run:
 * speed of a broken step means nothing. */
static timing time_steps(fx_gpu *g, const fx_batch *b, int train, float *logits, int warmup, int steps) {
    double *t = fx_malloc((size_t)steps * sizeof *t);
    for (int i = 0; i < warmup + steps; i++) {
        double t0 = fx_now();
        float loss = fx_gpu_step(g, &b[i % ROTATE], train, logits);
        if (train) fx_gpu_adamw(g, LR, WD);
        CK(cudaDeviceSynchronize());
        double dt = fx_now() - t0;
        if (!isfinite(loss)) fx_die("bench_gpu: step %d: loss %g (%s)", i, loss, fx_err());
        if (i >= warmup) t[i - warmup] = dt;
    }
    timing r = summarise(t, steps);
    free(t);
    return r;
}

/* ---------------------------------------------------------------- the device's ceilings
 *
 * Two ceilings, measured in the same run as the step. One large product through cuBLAS (8192^3, fp32
 * accumulation and fp32 output, as gpu.cu's products) on random data (never zeros: they run faster), and one
 * large device-to-device copy, counting bytes read plus bytes written. Timed with events on a stream of
 * this file's own, median of REPS after WARM. */

enum { GEMM_N = 8192, CEIL_WARM = 3, CEIL_REPS = 10 };
#define COPY_BYTES ((size_t)1 << 30)

/* Random operands in place: fp32 uniform in [-1, 1), or bf16 bit patterns of +-[0.5, 2) (sign, exponent
 * 126 or 127, random mantissa), which need no conversion on the host. */
static void *random_operand(size_t n, int bf16, fx_rng *r) {
    size_t es = bf16 ? 2 : 4;
    void *h = fx_malloc(n * es), *d = NULL;
    for (size_t i = 0; i < n; i++) {
        uint64_t z = fx_rng_u64(r);
        if (bf16) ((uint16_t *)h)[i] = (uint16_t)((z & 0x807f) | ((126 + ((z >> 16) & 1)) << 7));
        else ((float *)h)[i] = (float)((double)(z >> 11) * 0x1.0p-52 - 1.0);
    }
    CK(cudaMalloc(&d, n * es));
    CK(cudaMemcpy(d, h, n * es, cudaMemcpyHostToDevice));
    free(h);
    return d;
}

/* Median seconds of OP on stream ST over CEIL_REPS runs after CEIL_WARM, timed with device events. */
typedef struct { cublasHandle_t blas; cudaDataType_t in; cublasComputeType_t ct; const void *A, *B; void *C;
                 const void *src; void *dst; } ceil_op;
static double event_seconds(cudaStream_t st, void (*op)(const ceil_op *, cudaStream_t), const ceil_op *o) {
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    double t[CEIL_REPS];
    for (int i = 0; i < CEIL_WARM + CEIL_REPS; i++) {
        CK(cudaEventRecord(e0, st));
        op(o, st);
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (i >= CEIL_WARM) t[i - CEIL_WARM] = ms * 1e-3;
    }
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    return summarise(t, CEIL_REPS).med;
}

static void gemm_op(const ceil_op *o, cudaStream_t st) {
    (void)st;
    float one = 1.0f, zero = 0.0f;
    CKB(cublasGemmEx(o->blas, CUBLAS_OP_N, CUBLAS_OP_N, GEMM_N, GEMM_N, GEMM_N, &one, o->A, o->in, GEMM_N, o->B,
                     o->in, GEMM_N, &zero, o->C, CUDA_R_32F, GEMM_N, o->ct, CUBLAS_GEMM_DEFAULT));
}

static void copy_op(const ceil_op *o, cudaStream_t st) {
    CK(cudaMemcpyAsync(o->dst, o->src, COPY_BYTES, cudaMemcpyDeviceToDevice, st));
}

/* Median seconds of one 8192^3 product: PREC as gpu.cu's (bf16 operands, or fp32 with or without tf32). */
static double gemm_seconds(cublasHandle_t blas, cudaStream_t st, int prec) {
    size_t n = (size_t)GEMM_N * GEMM_N;
    fx_rng r;
    fx_rng_seed(&r, 77);
    int bf16 = prec == FX_GPU_BF16;
    void *A = random_operand(n, bf16, &r), *B = random_operand(n, bf16, &r), *C = NULL;
    CK(cudaMalloc(&C, n * sizeof(float)));
    cudaDataType_t in = bf16 ? CUDA_R_16BF : CUDA_R_32F;
    cublasComputeType_t ct = prec == FX_GPU_TF32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    ceil_op o = {.blas = blas, .in = in, .ct = ct, .A = A, .B = B, .C = C};
    double sec = event_seconds(st, gemm_op, &o);
    CK(cudaFree(A));
    CK(cudaFree(B));
    CK(cudaFree(C));
    return sec;
}

/* Bytes per second of a 1 GiB device-to-device copy, read plus written. The source holds a non-zero
 * pattern; a copy's speed does not depend on the values, only on their being real memory. */
static double copy_rate(cudaStream_t st) {
    void *src = NULL, *dst = NULL;
    CK(cudaMalloc(&src, COPY_BYTES));
    CK(cudaMalloc(&dst, COPY_BYTES));
    CK(cudaMemsetAsync(src, 0x5a, COPY_BYTES, st));
    ceil_op o = {.src = src, .dst = dst};
    double sec = event_seconds(st, copy_op, &o);
    CK(cudaFree(src));
    CK(cudaFree(dst));
    return 2.0 * COPY_BYTES / sec;
}

/* ---------------------------------------------------------------- runs */

typedef struct {
    char name[48];
    int prec, train, n, T;
    double real;                     /* real tokens / padded slots */
    timing t;
    double flops;                    /* per step, at the padded shape the device runs */
} result;

/* Device memory in use now (all processes), bytes. */
static double device_used(void) {
    size_t free_b, total_b;
    CK(cudaMemGetInfo(&free_b, &total_b));
    return (double)(total_b - free_b);
}

static void print_result(const result *r, double bf16_rate) {
    double sps = r->n / r->t.med, rate = r->flops / r->t.med;
    printf("%-24s %-4s %5s %4d %4d %5.2f %9.2f %9.2f %9.2f %10.0f %8.1f %6.3f\n", r->name,
           fx_gpu_precision_name(r->prec), r->train ? "train" : "eval", r->n, r->T, r->real, r->t.med * 1e3,
           r->t.lo * 1e3, r->t.hi * 1e3, sps, rate * 1e-12, bf16_rate > 0 ? rate / bf16_rate : NAN);
}

/* One line per result that bench/gpu_check.sh greps: "bench_gpu NAME PREC MODE n T samples/s ms". */
static void print_parse_line(const result *r) {
    printf("bench_gpu %s %s %s %d %d samples_per_s %.1f ms %.3f\n", r->name, fx_gpu_precision_name(r->prec),
           r->train ? "train" : "eval", r->n, r->T, r->n / r->t.med, r->t.med * 1e3);
}

static result run(fx_gpu *g, const fx_model *m, const char *name, int prec, int train, const fx_batch *b,
                  const opts *o) {
    result r = {.prec = prec, .train = train, .n = b[0].n};
    snprintf(r.name, sizeof r.name, "%s", name);
    batch_fill_stats(b, &r.real, &r.T);
    float *logits = train ? NULL : fx_malloc((size_t)r.n * m->c.num_labels * sizeof *logits);
    r.t = time_steps(g, b, train, logits, o->warmup, o->steps);
    free(logits);
    /* Batches of one run may differ in T (real data): FLOPs of the mean batch, close enough for a rate. */
    double fl = 0;
    for (int k = 0; k < ROTATE; k++) {
        flops_t f = step_flops(m, b[k].n, b[k].T);
        fl += train ? flops_train(&f) : flops_eval(&f);
    }
    r.flops = fl / ROTATE;
    return r;
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv) {
    opts o;
    if (parse_opts(argc, argv, &o) != 0) return 2;
    char why[512];
    if (fx_gpu_probe(why, sizeof why) <= 0) {
        printf("skipped: bench_gpu (%s)\n", why);
        return 0;
    }
    const char *config = o.config ? o.config : "../shared/models/roberta-base/config.json";
    fx_config c;
    if (fx_config_load(config, &c) != 0) {
        if (o.config) { fprintf(stderr, "bench_gpu: %s\n", fx_err()); return 1; }
        printf("skipped: bench_gpu (%s; pass a config.json, e.g. gpu-carry/roberta-base/config.json)\n", fx_err());
        return 0;
    }
    c.num_labels = 2;                /* RTE's, and the paper's binary tasks' */
    fx_adapter_cfg a = {.kind = FX_LORA, .targets = FX_T_QUERY | FX_T_VALUE, .r = RANK, .alpha = LORA_ALPHA,
                        .dropout = 0.1f, .seed = 1};
    fx_model m;
    if (fx_model_create(&m, &c, &a, NULL) != 0) { fprintf(stderr, "bench_gpu: %s\n", fx_err()); return 1; }
    fx_model_init_base(&m, 1);
    fx_model_init_adapters(&m, 2);
    /* B = 0 makes LoRA's forward delta zero whatever A is; one step of AdamW (below, in the warm-up)
     * moves it off zero, so the timed steps multiply real numbers throughout. */

    printf("gpu: %s\n", why);
    printf("model: %s: hidden %d, layers %d, heads %d, intermediate %d; LoRA r=%d alpha %.0f dropout %.1f on "
           "query,value; %zu trainable\n", config, c.hidden, c.layers, c.heads, c.intermediate, RANK,
           (double)LORA_ALPHA, (double)a.dropout, m.train.n);
    int n = o.batch, T = o.tokens;
    flops_t f = step_flops(&m, n, T);
    printf("FLOPs per training step at %d x %d (matrix products, 2MNK): %.1f G = frozen linears %.1f fwd + "
           "%.1f dX, attention %.1f fwd + %.1f bwd, LoRA %.2f fwd + %.2f bwd, head %.2f\n", n, T,
           flops_train(&f) * 1e-9, f.lin_f * 1e-9, f.lin_b * 1e-9, f.att_f * 1e-9, f.att_b * 1e-9,
           f.lora_f * 1e-9, f.lora_b * 1e-9, (f.head_f + f.head_b) * 1e-9);
    printf("FLOPs per evaluation batch at %d x %d: %.1f G\n", n, T, flops_eval(&f) * 1e-9);
    fflush(stdout);

    cudaStream_t st;
    cublasHandle_t blas;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    CKB(cublasCreate(&blas));
    CKB(cublasSetStream(blas, st));
    double gemm_rate[3] = {0, 0, 0}, copy = 0;
    if (!o.quick) {
        double gflop = 2.0 * GEMM_N * (double)GEMM_N * GEMM_N;
        for (int p = FX_GPU_BF16; p >= FX_GPU_FP32; p--) {
            gemm_rate[p] = gflop / gemm_seconds(blas, st, p);
            printf("ceiling: cuBLAS %d^3 %s product, fp32 accumulation and output: %.1f TFLOP/s\n", GEMM_N,
                   fx_gpu_precision_name(p), gemm_rate[p] * 1e-12);
            fflush(stdout);
        }
        copy = copy_rate(st);
        printf("ceiling: 1 GiB device-to-device copy: %.0f GB/s (read + written)\n", copy * 1e-9);
    }
    CKB(cublasDestroy(blas));
    CK(cudaStreamDestroy(st));

    fx_dataset full, padded, rte;
    dataset_full(&full, 2 * ROTATE * n, T, c.vocab_size, 3);
    if (fx_dataset_synthetic(ROTATE * n, c.vocab_size, T, 4, &padded) != 0) fx_die("bench_gpu: %s", fx_err());
    int have_rte = 0;
    if (o.data) {
        char dir[1024];
        snprintf(dir, sizeof dir, "%s", config);
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0; else snprintf(dir, sizeof dir, ".");
        fx_tokenizer *tok = fx_tok_load(dir);
        if (!tok || fx_dataset_build(fx_task_find("RTE"), o.data, "train", tok, T, &rte) != 0) {
            fprintf(stderr, "bench_gpu: RTE batches: %s\n", fx_err());
            return 1;
        }
        fx_tok_free(tok);
        have_rte = 1;
    }
    fx_batch bfull[ROTATE], bhalf[ROTATE], bpad[ROTATE], brte[ROTATE], beval[ROTATE];
    fill_batches(&full, n, c.pad_id, bfull);
    fill_batches(&padded, n, c.pad_id, bpad);
    fill_batches(&full, n / 2 > 0 ? n / 2 : 1, c.pad_id, beval);
    if (have_rte) fill_batches(&rte, n, c.pad_id, brte);
    /* The same tokens as full batches in rows of half the length: the linears' work is unchanged and
     * attention's halves, so the difference of the two times is half the attention's time. */
    fx_dataset half;
    dataset_full(&half, 2 * ROTATE * n, T / 2, c.vocab_size, 5);
    fill_batches(&half, 2 * n, c.pad_id, bhalf);

    result res[16];
    int nres = 0, i_half = -1;
    char nm[48];
    int precs[3] = {FX_GPU_BF16, FX_GPU_TF32, FX_GPU_FP32};
    for (int pi = 0; pi < (o.quick ? 1 : 3); pi++) {
        int p = precs[pi];
        double before = device_used();
        fx_gpu *g = fx_gpu_create(&m, 0, p);
        if (!g) { fprintf(stderr, "bench_gpu: %s\n", fx_err()); return 1; }
        snprintf(nm, sizeof nm, "full_%dx%d", n, T);
        res[nres++] = run(g, &m, nm, p, 1, bfull, &o);
        double used = device_used() - before;
        if (p == FX_GPU_BF16) {
            snprintf(nm, sizeof nm, "eval_%dx%d", n, T);
            res[nres++] = run(g, &m, nm, p, 0, bfull, &o);
            if (!o.quick) {
                snprintf(nm, sizeof nm, "eval_%dx%d", beval[0].n, T);
                res[nres++] = run(g, &m, nm, p, 0, beval, &o);
                snprintf(nm, sizeof nm, "half_len_%dx%d", 2 * n, T / 2);
                i_half = nres;
                res[nres++] = run(g, &m, nm, p, 1, bhalf, &o);
                snprintf(nm, sizeof nm, "padded_synthetic_%d", n);
                res[nres++] = run(g, &m, nm, p, 1, bpad, &o);
                if (have_rte) {
                    snprintf(nm, sizeof nm, "rte_train_%d", n);
                    res[nres++] = run(g, &m, nm, p, 1, brte, &o);
                }
            }
        }
        printf("device memory of the %s model and its %d x %d step: %.2f GB\n", fx_gpu_precision_name(p), n, T,
               used * 1e-9);
        fflush(stdout);
        fx_gpu_free(g);
    }

    printf("\nmedian of %d steps after %d warm-up, host clock after a device synchronise; T = longest batch; "
           "real = real tokens / padded slots; frac = achieved FLOP rate / measured bf16 GEMM rate\n",
           o.steps, o.warmup);
    printf("%-24s %-4s %5s %4s %4s %5s %9s %9s %9s %10s %8s %6s\n", "run", "prec", "mode", "n", "T", "real",
           "median ms", "min ms", "max ms", "samples/s", "TFLOP/s", "frac");
    for (int i = 0; i < nres; i++) print_result(&res[i], gemm_rate[FX_GPU_BF16]);
    for (int i = 0; i < nres; i++) print_parse_line(&res[i]);
    if (!o.quick) {
        const result *full_r = &res[0], *half_r = &res[i_half];   /* the bf16 runs come first */
        /* t(n, T) - t(2n, T/2) = attention(n, T) / 2, everything else being equal per token */
        double att = 2 * (full_r->t.med - half_r->t.med);
        printf("attention's share of the %d x %d bf16 step (from the half-length run): %.1f ms of %.1f ms\n", n, T,
               att * 1e3, full_r->t.med * 1e3);
        printf("bf16 step: %.1f samples/s, %.1f TFLOP/s = %.3f of the measured bf16 GEMM rate (goal >= 0.40)\n",
               full_r->n / full_r->t.med, full_r->flops / full_r->t.med * 1e-12,
               full_r->flops / full_r->t.med / gemm_rate[FX_GPU_BF16]);
        printf("bench_gpu ceiling gemm_bf16_tflops %.1f gemm_tf32_tflops %.1f gemm_fp32_tflops %.1f copy_gbps %.0f\n",
               gemm_rate[FX_GPU_BF16] * 1e-12, gemm_rate[FX_GPU_TF32] * 1e-12, gemm_rate[FX_GPU_FP32] * 1e-12,
               copy * 1e-9);
        printf("bench_gpu fraction %.3f\n", full_r->flops / full_r->t.med / gemm_rate[FX_GPU_BF16]);
    }

    free_batches(bfull); free_batches(bhalf); free_batches(bpad); free_batches(beval);
    if (have_rte) { free_batches(brte); fx_dataset_free(&rte); }
    fx_dataset_free(&full); fx_dataset_free(&half); fx_dataset_free(&padded);
    fx_model_free(&m);
    return 0;
}

#endif
