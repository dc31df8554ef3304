/* fedex.h: the one header of fedex, a C runtime for federated fine-tuning with exact (FedEx-LoRA)
 * aggregation. Every module's public interface is declared here, in sections in the order the modules
 * build on each other. It declares; it defines nothing but small inline helpers. */
#ifndef FEDEX_H
#define FEDEX_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* ============================================================================================
 * util.c: errors, checked allocation, files, clock, random numbers
 * ============================================================================================
 * Library code never exits on bad input: it records one line with fx_seterr() (path, line, what is
 * wrong) and returns -1 (or NULL). The command line prints fx_err() and exits 1. Out of memory is the
 * one exception: fx_malloc() and friends print the size and exit, as nothing sensible can follow. */

void fx_seterr(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *fx_err(void);                                                     /* last message */
_Noreturn void fx_die(const char *fmt, ...) __attribute__((format(printf, 1, 2))); /* "fedex: ..." */

void *fx_malloc(size_t n);
void *fx_calloc(size_t count, size_t size);
void *fx_realloc(void *p, size_t n);
char *fx_strdup(const char *s);

/* Overflow-checked size arithmetic: 0 on success, -1 (and nothing written) on overflow. */
int fx_mul_size(size_t a, size_t b, size_t *out);
int fx_add_size(size_t a, size_t b, size_t *out);

/* Whole file into a NUL-terminated malloc'd buffer; fx_seterr names the path on failure. */
int fx_read_file(const char *path, char **data, size_t *len);
/* Writes to PATH.tmp.PID, fsyncs, renames over PATH: readers see the old file or the new, never half. */
int fx_write_file_atomic(const char *path, const void *data, size_t len);
int fx_mkdir_p(const char *dir);
double fx_now(void); /* seconds, monotonic */

/* Deterministic random numbers: splitmix64-seeded xoshiro256**. Same seed, same stream, any platform. */
typedef struct { uint64_t s[4]; } fx_rng;
void fx_rng_seed(fx_rng *r, uint64_t seed);
uint64_t fx_rng_u64(fx_rng *r);
double fx_rng_uniform(fx_rng *r);     /* [0, 1), 53 bits */
double fx_rng_normal(fx_rng *r);      /* N(0, 1), Box-Muller */
double fx_rng_gamma(fx_rng *r, double shape); /* Gamma(shape, 1), Marsaglia-Tsang */

/* ============================================================================================
 * json.c: a strict RFC 8259 reader (config.json, vocab.json, safetensors headers)
 * ============================================================================================ */

typedef enum { FX_JNULL, FX_JBOOL, FX_JNUM, FX_JSTR, FX_JARR, FX_JOBJ } fx_jtype;

typedef struct fx_json {
    fx_jtype type;
    int boolean;              /* FX_JBOOL */
    double num;               /* FX_JNUM */
    int is_int; int64_t inum; /* FX_JNUM written as an integer that fits int64 exactly */
    char *str; size_t slen;   /* FX_JSTR: decoded UTF-8 (may hold NUL bytes), NUL-terminated */
    size_t n;                 /* FX_JARR / FX_JOBJ: number of children */
    struct fx_json *kids;     /* children, in document order */
    char **keys; size_t *klens; /* FX_JOBJ: decoded keys, parallel to kids */
} fx_json;

/* Parses TEXT[0..len) strictly (one value, nothing but whitespace after it, no duplicate keys checked
 * here). On error returns -1 and fx_err() reads "line L, column C: what is wrong". */
int fx_json_parse(const char *text, size_t len, fx_json *out);
void fx_json_free(fx_json *j);
const fx_json *fx_json_get(const fx_json *obj, const char *key); /* NULL if absent or not an object */

/* ============================================================================================
 * safetensors.c: read (mmap, validated) and write (atomic) the safetensors format
 * ============================================================================================ */

/* (filled in by safetensors.c's author) */

/* ============================================================================================
 * tokenizer.c: byte-level BPE, exactly as Hugging Face's GPT-2 / RoBERTa tokenizers
 * ============================================================================================ */

/* (filled in by tokenizer.c's author) */

/* ============================================================================================
 * glue.c: GLUE tasks, tokenised datasets, batches, client splits, metrics
 * ============================================================================================ */

/* (filled in by glue.c's author) */

/* ============================================================================================
 * matmul.c: the one matrix product of the CPU backend
 * ============================================================================================ */

/* C (M x N) = alpha * op(A) (M x K) * op(B) (K x N) + beta * C, all row-major, fp32 accumulation.
 * op(A) = A (lda >= K) or A^T when ta (A stored K x M, lda >= M); likewise op(B) with tb.
 * beta == 0 means C is written without being read (so it may hold NaN garbage). Parallel with OpenMP;
 * the number of threads is omp's (set by fx_set_threads). Results do not depend on the thread count. */
void fx_matmul(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc);
void fx_set_threads(int n);

/* ============================================================================================
 * model.c: the CPU reference model (RoBERTa + LoRA / VeRA / residual), forward, backward, AdamW
 * ============================================================================================ */

/* (filled in by model.c's author) */

#endif
