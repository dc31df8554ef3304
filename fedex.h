/* fedex.h: the one header of fedex, a C runtime for federated fine-tuning with exact (FedEx-LoRA)
 * aggregation. Every module's public interface is declared here, in sections in the order the modules
 * build on each other. It declares; it defines nothing but small inline helpers. */
#ifndef FEDEX_H
#define FEDEX_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define FX_VERSION "0.4.0"

/* ============================================================================================
 * util.c: errors, checked allocation, files, clock, random numbers
 * ============================================================================================
 * Library code never exits on bad input: it records one line with fx_seterr() (path, line, what is
 * wrong) and returns -1 (or NULL). The command line prints fx_err() and exits 1. Out of memory is the
 * one exception: fx_malloc() and friends print the size and exit, as nothing sensible can follow. */

/* fx_seterr formats the whole message before it replaces the last one, so fx_err() may be one of its
 * arguments: fx_seterr("%s:%d: %s", path, line, fx_err()) prefixes the error a callee recorded. */
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

/* Opens PATH read-only and checks it is a regular file: its descriptor and size, or -1 with fx_err(). */
int fx_open_regular(const char *path, int *fd, size_t *size);
/* Whole file into a NUL-terminated malloc'd buffer; fx_seterr names the path on failure. PATH "-" (or
 * "/dev/stdin") reads standard input to its end; any other path must be a regular file. */
int fx_read_file(const char *path, char **data, size_t *len);
/* Writes to a fresh PATH.tmp.XXXXXX (created exclusively: nothing planted there is followed), fsyncs,
 * renames over PATH: readers see the old file or the new, never half. */
#define FX_TMP_SUFFIX ".tmp."
int fx_write_file_atomic(const char *path, const void *data, size_t len);
/* Closes a memstream (open_memstream(buf, len)) and writes what it collected to PATH atomically; frees
 * the buffer. */
int fx_write_memstream_atomic(FILE *f, char **buf, size_t *len, const char *path);
int fx_mkdir_p(const char *dir);
double fx_now(void); /* seconds, monotonic */
/* S seconds as "45s", "3m20s", "2h05m" ("?" when not finite or negative) into BUF. */
const char *fx_duration_str(double s, char *buf, size_t n);
double fx_sort_median(double *x, int n); /* sorts X ascending (timings), returns x[n/2] */

/* Deterministic random numbers: splitmix64-seeded xoshiro256**. Same seed, same stream, any platform. */
typedef struct { uint64_t s[4]; } fx_rng;
void fx_rng_seed(fx_rng *r, uint64_t seed);
uint64_t fx_rng_u64(fx_rng *r);
double fx_rng_uniform(fx_rng *r);     /* [0, 1), 53 bits */
/* keep[j] = fx_rng_uniform(r) >= p for j < n, the same draws and the same test, done faster (dropout). */
void fx_rng_keep(fx_rng *r, uint8_t *keep, size_t n, float p);
/* Row i < NROWS of KEEP (row stride LD) = fx_rng_keep's N draws of a generator seeded by SEEDS[i]: several
 * rows' generators at once where the CPU has AVX-512, the same bits. */
void fx_rng_keep_rows(const uint64_t *seeds, int nrows, uint8_t *keep, size_t ld, size_t n, float p);
double fx_rng_normal(fx_rng *r);      /* N(0, 1), Box-Muller */
/* The stream as it is after K more fx_rng_u64 draws, in time independent of K (a normal is two draws). */
void fx_rng_jump(fx_rng *r, uint64_t k);
double fx_rng_gamma(fx_rng *r, double shape); /* Gamma(shape, 1), Marsaglia-Tsang */
/* MT19937, PyTorch's CPU generator: torch.Generator().manual_seed(seed) and Tensor.uniform_(lo, hi) on
 * float32, bit for bit (PEFT's VeRA projections; tests/make_vera_fixtures.py checks it against torch). */
typedef struct { uint32_t s[624]; int i; } fx_mt;
void fx_mt_seed(fx_mt *g, uint32_t seed);
uint32_t fx_mt_u32(fx_mt *g);
void fx_mt_uniform(fx_mt *g, float *x, size_t n, double lo, double hi);

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
const char *fx_json_duplicate_key(const fx_json *obj); /* a key the object holds twice, or NULL */
int fx_json_load(const char *path, fx_json *out); /* read + parse, errors prefixed with PATH */
char *fx_json_quote(const char *s); /* "S" with JSON escapes, malloc'd: the one JSON string writer */
void fx_json_num(FILE *f, double x); /* %.9g, or null when not finite (metrics, settings) */
void fx_json_put_float(FILE *f, float x); /* the shortest decimal that reads back as X */

/* UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF). fx_utf8_next decodes the
 * code point at S[0..len) into *cp and returns its length in bytes (1 to 4), or 0 when the bytes there
 * are not valid UTF-8 (or len is 0). fx_utf8_valid_prefix returns how many leading bytes are valid:
 * len itself when all of S is. */
int fx_utf8_next(const char *s, size_t len, uint32_t *cp);
size_t fx_utf8_valid_prefix(const char *s, size_t len);
/* Writes code point CP (a valid one: below U+110000, not a surrogate) as UTF-8 to OUT (room for 4);
 * returns the bytes written. */
int fx_utf8_put(char *out, uint32_t cp);

/* ============================================================================================
 * safetensors.c: read (mmap, validated) and write (atomic) the safetensors format
 * ============================================================================================ */

typedef enum { FX_F64, FX_F32, FX_F16, FX_BF16, FX_I64, FX_I32, FX_I16, FX_I8, FX_U8, FX_BOOL } fx_dtype;
#define FX_ST_MAX_DIMS 8

typedef struct {
    char *name;
    fx_dtype dtype;
    int ndim;
    int64_t shape[FX_ST_MAX_DIMS];
    size_t begin, end;           /* byte range within the data area */
} fx_st_tensor;

typedef struct {
    char *path;
    void *map; size_t map_len;   /* the whole file, mmap'ed read-only (NULL when parsed from memory) */
    void *owned;                 /* the file read from standard input ("-"), freed by fx_st_close */
    const uint8_t *data; size_t data_len; /* the data area after the header */
    int n; fx_st_tensor *t;      /* tensors in header order */
    int nmeta; char **meta_keys, **meta_vals; /* __metadata__ (string to string) */
} fx_st_file;

int fx_st_open(const char *path, fx_st_file *f);                 /* mmap + validate everything; "-": stdin */
int fx_st_parse(const uint8_t *buf, size_t len, const char *label, fx_st_file *f); /* validate in memory */
void fx_st_close(fx_st_file *f);
const fx_st_tensor *fx_st_find(const fx_st_file *f, const char *name);
const char *fx_st_meta(const fx_st_file *f, const char *key);    /* NULL if absent */
const char *fx_dtype_name(fx_dtype d);                            /* "F32", ... */
size_t fx_dtype_size(fx_dtype d);
size_t fx_st_numel(const fx_st_tensor *t);
/* "[2, 3]" into BUF (cut short when it does not fit); returns BUF. For messages and listings. */
const char *fx_shape_str(const int64_t *shape, int ndim, char *buf, size_t cap);
/* The tensor as fp32: a pointer into the mapping when it is F32 and 4-byte aligned (*owned = NULL),
 * otherwise a converted copy (F16/BF16 exactly, integers and F64 rounded) returned in *owned. */
const float *fx_st_f32(const fx_st_file *f, const fx_st_tensor *t, float **owned);

typedef struct {
    const char *name;
    fx_dtype dtype;
    int ndim;
    int64_t shape[FX_ST_MAX_DIMS];
    const void *data;            /* numel x dtype size bytes */
} fx_st_entry;
/* A model folder's weights: DIR/model.safetensors, or the shards that DIR/model.safetensors.index.json's
 * "weight_map" names (Hugging Face's layout for large checkpoints; the single file wins when both are
 * there, as in transformers). Every shard is opened and checked once; every mapped tensor must be in its
 * shard; shard names are plain file names inside DIR. */
typedef struct { char *name; int file; } fx_st_shard_entry;
typedef struct {
    int nfiles; fx_st_file *files; char **shard_names;
    char *index;                 /* the index's path (sharded), else NULL */
    int n; fx_st_shard_entry *names; /* the weight map, sorted by name (sharded) */
} fx_st_set;
int fx_st_set_exists(const char *dir);   /* 1: model.safetensors, 2: the index, 0: neither; -1 */
int fx_st_set_open(const char *dir, fx_st_set *s);
/* the tensor NAME and the file holding it (*FILE), or NULL */
const fx_st_tensor *fx_st_set_find(const fx_st_set *s, const char *name, const fx_st_file **file);
const char *fx_st_set_path(const fx_st_set *s); /* the file or index, for messages */
void fx_st_set_close(fx_st_set *s);
/* Writes N tensors (in the given order) and optional metadata (key, value, ..., NULL) atomically. */
int fx_st_write(const char *path, const fx_st_entry *e, int n, const char *const *meta);

/* ============================================================================================
 * tokenizer.c: byte-level BPE, exactly as Hugging Face's GPT-2 / RoBERTa / Llama-3 tokenizers
 * ============================================================================================ */

typedef struct fx_tokenizer fx_tokenizer;

/* Loads DIR/tokenizer.json when there is one (as Hugging Face's fast tokenizers prefer it), else
 * DIR/vocab.json and DIR/merges.txt. From vocab.json, RoBERTa's specials are <s>=bos/cls, </s>=eos/sep,
 * <pad>; GPT-2's <|endoftext|> serves as all three. A tokenizer.json must be byte-level BPE (GPT-2's
 * ByteLevel pre-tokenizer or Llama-3's Split pattern, ignore_merges, added tokens, TemplateProcessing /
 * RobertaProcessing / BertProcessing); its bos, eos and pad are those tokenizer_config.json (then
 * special_tokens_map.json, then config.json's ids) names, else the post-processor's, and pad falls back
 * to eos. SentencePiece-style files (tokenizer.model, byte_fallback, Metaspace) are refused by name.
 * Encoding writes to a cache of words inside the tokenizer: one tokenizer per thread. */
fx_tokenizer *fx_tok_load(const char *dir);
void fx_tok_free(fx_tokenizer *t);
int fx_tok_bos(const fx_tokenizer *t); /* -1 where a tokenizer.json folder names none */
int fx_tok_eos(const fx_tokenizer *t); /* -1 where a tokenizer.json folder names none */
int fx_tok_pad(const fx_tokenizer *t);
int fx_tok_vocab_size(const fx_tokenizer *t);
/* The id of token S: an added or special token's text ("<|eot_id|>", "<s>"), else the vocabulary token
 * whose bytes are exactly S (" world"); -1 if there is none. */
int fx_tok_token_id(const fx_tokenizer *t, const char *s);
/* 1 if ID is a special token (dropped by fx_tok_decode's skip_special). */
int fx_tok_is_special(const fx_tokenizer *t, int id);
/* Plain BPE of TEXT[0..len) (UTF-8, validated), no special tokens: appends to *ids (realloc'd, *cap
 * tracks capacity), sets *n to the new count. -1 on invalid UTF-8. */
int fx_tok_encode_text(fx_tokenizer *t, const char *text, size_t len, int32_t **ids, int *n, int *cap);
/* Where a family's template puts the specials around one text A or a pair A, B: bos tokens, A, eos
 * tokens, then (pair) eos tokens, bos tokens, B, eos tokens. RoBERTa: <s> A </s> and <s> A </s></s> B </s>,
 * {1, 1, 1, 1, 0}; BERT's [CLS] A [SEP] B [SEP] would be {1, 1, 0, 1, 0}; Llama-3's <|begin_of_text|> A and
 * <|begin_of_text|> A <|begin_of_text|> B is {1, 0, 0, 0, 1}. The family holds it (fx_family.text). */
typedef struct { int bos, eos_a, eos_b_lead, eos_b, bos_b; } fx_text_template;
/* The template's sequence appended to *ids (realloc'd, *cap tracks capacity; *n the new count), truncated
 * longest_first to max_len (0: no truncation; else room for the specials at least). As Hugging Face's
 * tokenize(), special tokens written in A or B ("<s>", "<mask>") become their ids. -1 on error. */
int fx_tok_encode_tpl(fx_tokenizer *t, const fx_text_template *tpl, const char *a, const char *b, int max_len,
                      int32_t **ids, int *n, int *cap);
/* The template Hugging Face's tokenizer of T's vocabulary applies: RoBERTa's (fx_roberta.text) for a
 * vocabulary with <s> and </s>; none for GPT-2's (add_bos_token is false: a text is its own ids, with
 * <|endoftext|> in it the special token; a pair is A's ids then B's); a tokenizer.json's post-processor
 * (or the one transformers' LlamaTokenizerFast builds from add_bos_token / add_eos_token). Its bos and eos
 * positions hold the post-processor's tokens. A template with no specials ({0}) encodes a text as
 * encode(add_special_tokens=False) does: special and added tokens written in it still become their ids. */
const fx_text_template *fx_tok_template(const fx_tokenizer *t);
/* The vocabulary's template (RoBERTa: <s> A </s> or <s> A </s></s> B </s>; B may be NULL), truncated
 * longest_first to max_len (> 0; room for the specials at least). OUT must hold max_len ids. Returns the
 * count, -1 on error. */
int fx_tok_encode(fx_tokenizer *t, const char *a, const char *b, int max_len, int32_t *out);
/* The same sequence appended to *ids as fx_tok_encode_tpl does; max_len 0 means no truncation. */
int fx_tok_encode_seq(fx_tokenizer *t, const char *a, const char *b, int max_len, int32_t **ids, int *n,
                      int *cap);
/* Text of IDS (specials dropped when skip_special); malloc'd. Bytes that do not form valid UTF-8 become
 * U+FFFD, as Python's decode(errors="replace"); no clean-up of spaces, so decode(encode(x)) == x. */
char *fx_tok_decode(const fx_tokenizer *t, const int32_t *ids, int n, int skip_special);
/* Pre-tokenisation alone (the GPT-2 pattern): the byte offset where each piece ends, appended to *ends
 * (realloc'd, *cap tracks capacity). -1 on invalid UTF-8. */
int fx_tok_pretokenize(const char *text, size_t len, size_t **ends, int *n, int *cap);
/* The same with T's own pre-tokenizer (GPT-2's pattern, or Llama-3's for such a tokenizer.json). */
int fx_tok_pieces(const fx_tokenizer *t, const char *text, size_t len, size_t **ends, int *n, int *cap);

/* unicode_tables.c, generated by tools/gen_unicode.py: the pre-tokenizer's character classes as sorted,
 * disjoint ranges; a code point in none is "other". */
enum { FX_UNI_OTHER, FX_UNI_LETTER, FX_UNI_NUMBER, FX_UNI_SPACE };
typedef struct { uint32_t lo, hi; int cls; } fx_uni_range;
extern const fx_uni_range fx_uni_ranges[];
extern const int fx_uni_nranges;
extern const char fx_unicode_version[];
int fx_uni_class(uint32_t cp);   /* FX_UNI_* (tokenizer.c) */

/* ============================================================================================
 * glue.c: GLUE tasks, tokenised datasets, batches, client splits, metrics
 * ============================================================================================ */

typedef struct {
    const char *name;            /* canonical: "CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "MNLI-MM",
                                    "QNLI", "RTE", "WNLI" */
    const char *dir;             /* folder under the data dir ("MNLI" for both MNLI entries) */
    const char *dev_split;       /* "dev", or "dev_matched" / "dev_mismatched" */
    int header;                  /* first line is a header (not CoLA) */
    int ncols;                   /* expected column count of train/dev rows; 0 = varies by split (MNLI) */
    int col_a, col_b;            /* 0-based text columns; col_b = -1 for single sentences */
    int col_label;               /* 0-based; -1 = the last column (MNLI) */
    int num_labels;              /* 1 = regression */
    const char *labels[3];       /* label strings in id order; NULL entries for numeric 0/1 labels */
    const char *names[3];        /* the labels' names in id order, as Hugging Face's glue dataset names them
                                    (what an exported config.json's id2label says); NULL: none (STS-B) */
    const char *metric;          /* the paper's headline, which picks the best round: "mcc" (CoLA), "pearson"
                                    (STS-B), "f1" (MRPC, accuracy beside it) or "accuracy" */
    int lm;                      /* FX_LM_*: language modelling on per-token targets (E2E: e2e.c's data;
                                    instruct, gsm8k, mc: instruct.c's), no classes; num_labels 0. 0: classes */
} fx_task;

const fx_task *fx_task_find(const char *name);   /* case-insensitive, "sst2" and "SST-2" alike */

/* Raw rows of one TSV split, validated (column count, label, UTF-8) with path:line errors. Texts are
 * the column strings byte for byte; b is NULL for single-sentence tasks; line[i] is row i's file line
 * (1-based). A missing file reads "PATH: no such file (this split is not in the data folder)". */
typedef struct { int n; char **a, **b; float *label; int *line; } fx_rows;
int fx_glue_read(const fx_task *t, const char *path, fx_rows *rows);
void fx_rows_free(fx_rows *r);
/* DATA_DIR/<task dir>/<split>.tsv, where split "train" or "dev" (dev maps to the task's dev_split). */
int fx_glue_path(const fx_task *t, const char *data_dir, const char *split, char *out, size_t outsz);

/* The label of a token that the loss ignores (Hugging Face's ignore_index). */
#define FX_IGNORE (-100)

/* A tokenised split, compact: row i's ids are ids[off[i] .. off[i+1]). */
typedef struct {
    const fx_task *task;
    int n;
    int32_t *ids;
    size_t *off;                 /* n + 1 offsets */
    float *labels;               /* class id as float, or the regression target; NULL for an lm task */
    int32_t *targets;            /* lm tasks: per-token labels aligned with ids (same offsets), Hugging Face's
                                    labels: the model scores position j's logits against targets[j + 1];
                                    FX_IGNORE where no loss is taken. NULL for row-labelled tasks */
    int *cls;                    /* (n) the class of each row for Dirichlet splits and the split report when
                                    labels are not classes (E2E: the MR's slot count); NULL: from labels */
    int nclass;                  /* classes in cls */
} fx_dataset;
int fx_dataset_build(const fx_task *t, const char *data_dir, const char *split, fx_tokenizer *tok,
                     int max_len, fx_dataset *d);
void fx_dataset_free(fx_dataset *d);

/* A padded batch: pad to the longest row in it (dynamic padding), mask 1 on real tokens. */
typedef struct {
    int n, T;
    int32_t *ids;                /* (n, T) */
    uint8_t *mask;               /* (n, T) */
    float *labels;               /* (n); 0 for a dataset without row labels */
    int32_t *targets;            /* (n, T) the dataset's per-token labels (Hugging Face's, aligned with ids:
                                    position t's logits are scored against targets[t + 1]), FX_IGNORE (-100)
                                    on padding; NULL when the dataset has none */
    int cap_rows, cap_tok;       /* allocation, managed by fx_batch_fill */
    int cap_targets;
} fx_batch;
void fx_batch_fill(const fx_dataset *d, const int *rows, int n, int pad_id, fx_batch *b);
void fx_batch_free(fx_batch *b);

/* Client splits, deterministic for a seed. spec: "iid" (each example to a uniformly random client) or
 * "dirichlet:ALPHA" (per class, proportions drawn from Dirichlet(ALPHA)). rows[c] is malloc'd. */
int fx_split_clients(const fx_dataset *d, int nclients, const char *spec, uint64_t seed,
                     int **rows, int *counts);
/* Client splits for an lm task (E2E) work on its rows as GLUE's do on theirs: iid gives each row (one MR
 * with one reference) a uniformly random client, as the reference code does; dirichlet:ALPHA skews the
 * clients by the dataset's cls (E2E: the MR's slot count). */
/* Regression targets are cut into this many quantile bins, which serve as classes for the Dirichlet
 * split and for the report. */
#define FX_SPLIT_BINS 5
/* One line per client: its size and its label (or bin) histogram. */
void fx_split_report(FILE *f, const fx_dataset *d, int nclients, int *const *rows, const int *counts);

/* Metrics, as the paper's code computes them (sklearn / scipy definitions). */
double fx_accuracy(const int *pred, const int *gold, int n);
double fx_f1(const int *pred, const int *gold, int n);         /* positive class 1 */
double fx_mcc(const int *pred, const int *gold, int n);
double fx_pearson(const double *x, const double *y, int n);
double fx_spearman(const double *x, const double *y, int n);   /* ties get average ranks */
typedef struct { double accuracy, f1, mcc, pearson, spearman, main; const char *main_name; } fx_metrics;
/* LOGITS (n, num_labels): argmax for classification, the value itself for regression. Fields a task does
 * not report are NAN. */
void fx_task_metrics(const fx_task *t, const float *logits, const float *labels, int n, fx_metrics *m);

/* The built-in synthetic task that `fedex demo` and model-less `fedex train` use (fx_task_find
 * ("synthetic"), 2 labels, accuracy): n rows <s>=0, body, </s>=2 with lengths in [8, max_len] and body
 * tokens from [4, vocab). Label 1 iff the body holds strictly more tokens from the lower half
 * [4, 4 + (vocab-4)/2) than from the upper half. Needs vocab >= 6, max_len >= 8. */
int fx_dataset_synthetic(int n, int vocab, int max_len, uint64_t seed, fx_dataset *d);

/* ============================================================================================
 * e2e.c: E2E NLG data: strict CSV reading, MR groups, training sequences with per-token targets
 * ============================================================================================ */

extern const fx_task fx_e2e_task;   /* fx_task_find("e2e"); lm: 1 */
/* Rows of one E2E CSV file (`mr,ref`), validated with path:line errors. Rows that share an MR are
 * adjacent; group g (one unique MR, in file order) is rows group[g] .. group[g+1]): its MR is
 * mr[group[g]], its references ref[group[g]] .. ref[group[g+1] - 1]. line[i] is where row i starts. */
typedef struct {
    int n;
    char **mr, **ref;            /* (n) the fields, unquoted, byte for byte */
    int *line;                   /* (n) 1-based */
    int ngroups;
    int *group;                  /* (ngroups + 1) */
} fx_e2e_rows;
int fx_e2e_read(const char *path, fx_e2e_rows *r);
void fx_e2e_rows_free(fx_e2e_rows *r);
/* DATA_DIR/trainset.csv, devset.csv or testset_w_refs.csv for split train, dev or test; TRAIN_FILE (when
 * not NULL) replaces the first. */
int fx_e2e_path(const char *data_dir, const char *split, const char *train_file, char *out, size_t cap);
int fx_e2e_slots(const char *mr);                /* attribute[value] items in an MR: its '[' count */
#define FX_E2E_CLASSES 9                         /* slot counts 0 .. 8 (more count as 8): the split's classes */
char *fx_e2e_prompt(const char *mr);             /* "{MR} ->", malloc'd: what generation starts from */
char *fx_e2e_text(const char *mr, const char *ref); /* "{MR} -> {ref} <|endoftext|>", malloc'd */
/* The training sequences of R's rows (PATH names the file in errors): the ids of fx_e2e_text under the
 * tokenizer (<|endoftext|> is its special token; the space before it is its own token), truncated to
 * MAX_LEN from the right; targets = ids on the reference, that space and the end token, FX_IGNORE on the
 * prompt (the ids of fx_e2e_prompt, which open the sequence's). cls: the slot count. A row whose prompt
 * fills MAX_LEN is refused (nothing would be learnt from it). */
int fx_e2e_dataset(const fx_e2e_rows *r, const char *path, fx_tokenizer *tok, int max_len, fx_dataset *d);
int fx_e2e_load(const char *path, fx_tokenizer *tok, int max_len, fx_dataset *d); /* read + dataset */

/* ============================================================================================
 * jinja.c, instruct.c: instruction data (JSON Lines) for causal LMs, chat templates, GSM8K, multiple choice
 * ============================================================================================ */

/* fx_task.lm: which language-model task. E2E is e2e.c's; the others read JSON Lines (instruct.c). */
enum { FX_LM_E2E = 1, FX_LM_INSTRUCT = 2, FX_LM_GSM8K = 3, FX_LM_MC = 4 };
extern const fx_task fx_instruct_task, fx_gsm8k_task, fx_mc_task; /* "instruct", "gsm8k", "mc" */

/* A chat template (Jinja2's subset that chat templates use; jinja.c's header lists it), parsed once. LABEL
 * names it in errors ("LABEL: line L: what is not supported"). Rendering: MSGS as `messages` (role,
 * content), bos_token, eos_token, add_generation_prompt; the text malloc'd, NULL with fx_err() (an
 * unsupported operation on the values, raise_exception). */
typedef struct fx_jinja fx_jinja;
typedef struct { const char *role, *content; } fx_chat_msg;
fx_jinja *fx_jinja_parse(const char *src, size_t len, const char *label);
char *fx_jinja_render(const fx_jinja *t, const fx_chat_msg *msgs, int n, const char *bos, const char *eos,
                      int add_generation_prompt);
void fx_jinja_free(fx_jinja *t);

/* The model's prompt format: DIR/tokenizer_config.json's chat_template (MODE "auto", when it has one) or
 * the plain format (Alpaca's; MODE "none", or no template). */
typedef struct { fx_jinja *tpl; char *bos, *eos; } fx_chat;
int fx_chat_load(const char *model_dir, const char *mode, fx_chat *c);
void fx_chat_free(fx_chat *c);
char *fx_chat_prompt(const fx_chat *c, const char *user); /* the prompt of one user message, malloc'd */

/* Rows of one JSON Lines file, validated with path:line errors (the shapes are in instruct.c). */
typedef struct {
    int n;
    char **prompt;               /* (n) the text the model continues (template or plain format applied) */
    int *raw;                    /* (n) 1: the prompt is plain text, opened by the tokenizer's BOS when it has one */
    char **completion;           /* (n) what is learnt: the completion, the output, the answer, the right choice */
    int *line;                   /* (n) 1-based */
    char **ref;                  /* gsm8k: (n) the reference's final answer, normalised; NULL otherwise */
    int *nchoice; char ***choice; int *answer; /* mc: (n) the choices and the right one's index; NULL otherwise */
} fx_inst_rows;
int fx_inst_read(const char *path, const fx_task *t, const fx_chat *chat, fx_inst_rows *r);
void fx_inst_rows_free(fx_inst_rows *r);
/* DATA_DIR/train.jsonl or dev.jsonl; TRAIN_FILE (when not NULL) replaces the first. */
int fx_inst_path(const char *data_dir, const char *split, const char *train_file, char *out, size_t cap);
/* Row I's prompt ids (appended to *ids; *n, *cap as fx_tok_encode_tpl), and TEXT's ids with no specials added. */
int fx_inst_prompt_ids(fx_tokenizer *tok, const fx_inst_rows *r, int i, int32_t **ids, int *n, int *cap);
int fx_inst_text_ids(fx_tokenizer *tok, const char *text, int32_t **ids, int *n, int *cap);
/* Training sequences: prompt ids, completion ids, the end token; targets FX_IGNORE on the prompt; cut on
 * the right to MAX_LEN; a prompt of MAX_LEN tokens or more is refused with its line. */
int fx_inst_dataset(const fx_inst_rows *r, const char *path, const fx_task *t, fx_tokenizer *tok, int max_len,
                    fx_dataset *d);
/* GSM8K's final answer of TEXT into OUT: after the last "####", else (REFERENCE 0) the last number; "$"
 * and "," removed, a trailing "." dropped. 1 when one was found, 0 otherwise (OUT ""). */
int fx_gsm8k_extract(const char *text, int reference, char *out, size_t cap);

/* ============================================================================================
 * matmul.c: the one matrix product of the CPU backend
 * ============================================================================================ */

/* C (M x N) = alpha * op(A) (M x K) * op(B) (K x N) + beta * C, all row-major, fp32 accumulation.
 * op(A) = A (lda >= K) or A^T when ta (A stored K x M, lda >= M); likewise op(B) with tb.
 * beta == 0 means C is written without being read (so it may hold NaN garbage). C must not overlap A
 * or B (A may be read after parts of C are written). Parallel with OpenMP;
 * the number of threads is omp's (set by fx_set_threads). Results do not depend on the thread count. */
void fx_matmul(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
               const float *B, int ldb, float beta, float *C, int ldc);
/* The same product with B in bf16 and A rounded to bf16 (fx_matmul_bf16's operands, alpha 1, op(A) = A):
 * B widened and A rounded as they are packed, so the sums are fx_matmul's on the rounded and widened
 * matrices, bit for bit (fx_matmul_bf16's fallback). */
void fx_matmul_b16(int tb, int M, int N, int K, const float *A, int lda, const uint16_t *B, int ldb, float beta,
                   float *C, int ldc);
/* A 16 x 16 block of 32-bit values transposed (fx_matmul's packing transpose, for matmul_bf16.c's
 * bf16 pairs): dst row k (at dst + k * dst_stride bytes, 16 values) = column k of the NROWS rows at
 * src + i * src_stride bytes, their first KN (<= 16) values read, rows past NROWS read as zeros. x86 with
 * AVX-512F only (callers check); the values are moved, never converted. */
void fx_transpose16_32(void *dst, size_t dst_stride, const void *src, size_t src_stride, int nrows, int kn);
void fx_set_threads(int n);
/* The micro-kernel in use: "avx512", "avx2" or "scalar", the best the CPU runs (chosen on first use).
 * fx_matmul_force(name) switches to another one (tests and benchmarks compare them); -1 with fx_seterr
 * when the name is unknown or this CPU cannot run it. Not to be called while a product is running. */
const char *fx_matmul_kernel(void);
int fx_matmul_force(const char *name);
/* A log of the products run, for benchmarks (bench/bench_step.c): between start and stop every
 * fx_matmul call counts against its shape; nested: called from inside a parallel region. Stop returns
 * the number of distinct shapes (up to max are copied) and ends the log. Thread-safe. */
typedef struct { int ta, tb, M, N, K, nested; long calls; } fx_matmul_shape;
void fx_matmul_log_start(void);
int fx_matmul_log_stop(fx_matmul_shape *out, int max);

/* ============================================================================================
 * matmul_bf16.c: products with bf16 frozen weights (--precision bf16), and bf16 numbers
 * ============================================================================================ */

/* bf16: the top 16 bits of an fp32. fx_bf16_round rounds to nearest, ties to even (torch's
 * .to(torch.bfloat16); NaN stays NaN); widening is exact. */
uint16_t fx_bf16_round(float x);
float fx_bf16_widen(uint16_t h);
void fx_bf16_from_f32(uint16_t *dst, const float *src, size_t n);
void fx_bf16_to_f32(float *dst, const uint16_t *src, size_t n);
/* C (M x N) = A (M x K) op(B) + beta C, row-major: A fp32 with each element rounded to bf16 (RNE) first,
 * B bf16, op(B) = B (K x N, ldb >= N) or B^T when tb (B stored N x K, ldb >= K); the products summed in
 * fp32. beta == 0 writes C without reading it. The results do not depend on the thread count; the two
 * kernels ("avx512bf16": VDPBF16PS, when the CPU has it; "fallback": fx_matmul_b16) agree up to the
 * order of the fp32 sums (and VDPBF16PS flushing subnormals). FEDEX_BF16_KERNEL=fallback, or
 * fx_matmul_bf16_force, picks the fallback; force returns -1 with fx_seterr on an unknown name or a CPU
 * without the instructions. */
void fx_matmul_bf16(int tb, int M, int N, int K, const float *A, int lda, const uint16_t *B, int ldb, float beta,
                    float *C, int ldc);
const char *fx_matmul_bf16_kernel(void);
int fx_matmul_bf16_force(const char *name);

/* ============================================================================================
 * vmath.c: erf and exp over float arrays (the CPU ops' GELU and SiLU)
 * ============================================================================================ */
/* y[i] = erf(x[i]) or exp(x[i]), within 1 ulp of libm's erff/expf (vmath.c says why); y == x allowed.
 * The first path the CPU runs of AVX-512, AVX2 + FMA and plain C; fx_vmath_force("avx512", "avx2" or "c")
 * switches (tests), -1 with fx_seterr when unknown or not runnable here. */
void fx_erf(float *y, const float *x, size_t n);
void fx_exp(float *y, const float *x, size_t n);
const char *fx_vmath_path(void);
int fx_vmath_force(const char *name);

/* ============================================================================================
 * cpu.c: the CPU ops table: every layer op's forward and backward in plain fp32 C (the specification)
 * ============================================================================================
 * model.c writes the transformer once as calls on a table of ops; a backend supplies the table. Every
 * pointer an op takes is the backend's memory: the workspace it allocated through alloc, and the weight
 * buffers at the offsets the model's views give. model.c reads no float behind these pointers. Shapes
 * are row-major; H hidden, nh heads, hd = H/nh. Activations are packed: a batch's n rows keep only their
 * real tokens (mask != 0), row after row, N = the sum of the rows' lengths (no padding anywhere), row b
 * being tokens off[b] .. off[b+1]) with off (n + 1) int32 in the backend's memory; T is the longest row.
 * Every op but attention is per token and sees N rows alone. Ops run one at a time in call order (a GPU
 * backend: on one stream). The CPU ops give the same bits for any thread count. */

/* AdamW's scalars for step t, formed once by model.c (fx_adamw_update) in double and used as fp32. */
typedef struct {
    float step;                  /* lr / (1 - b1^t) */
    float bc2s;                  /* sqrt(1 - b2^t) */
    float decay;                 /* 1 - lr wd, applied when decay_on */
    int decay_on;                /* weight decay != 0 */
    float b1, b2, c1, c2, eps;   /* b1, b2, 1 - b1, 1 - b2, eps */
} fx_adamw_scalars;

typedef struct fx_ops {
    const char *name;            /* "cpu", "cuda" */
    /* memory: alloc never returns NULL (it exits on failure), 64-byte aligned */
    void *(*alloc)(size_t bytes);
    void (*release)(void *p);
    void (*upload)(void *dst /* backend */, const void *src /* host */, size_t bytes);
    void (*download)(void *dst /* host */, const void *src /* backend */, size_t bytes);
    void (*zero)(float *x, size_t n);
    void (*copy)(float *dst, const float *src, size_t n);
    /* y (n) += alpha x (n) */
    void (*axpy)(float *y, float alpha, const float *x, size_t n);
    /* rows x cols floats from SRC (row stride ss) to DST (row stride ds): token 0 of every row */
    void (*copy_rows)(float *dst, size_t ds, const float *src, size_t ss, int rows, int cols);
    /* fx_matmul's contract: C (M, N) = alpha op(A) op(B) + beta C */
    void (*matmul)(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                   int ldb, float beta, float *C, int ldc);
    /* db (cols)[j] = sum_i a[i, j] (* b[i, j] when B is not NULL), rows summed in order */
    void (*column_dot)(float *db, const float *a, const float *b, int rows, int cols);
    /* out (n)[i] = s[i % cols] * x[i]; and y[i] += s[i % cols] * x[i] */
    void (*scale_cols)(float *out, const float *s /* (cols) */, const float *x, size_t n, int cols);
    void (*scale_cols_add)(float *y, const float *s /* (cols) */, const float *x, size_t n, int cols);
    /* dropout: keep (rows, cols) drawn for SITE (row r from its own stream: a packed token's mask depends on
     * its index among the real tokens, never on padding); out = in * keep / (1 - p),
     * or a copy when KEEP is NULL (in place allowed; also the backward); dx += dropout(d) with KEEP */
    void (*dropout_mask)(uint8_t *keep, size_t rows, size_t cols, float p, uint64_t site);
    /* keep (n, cols): row i as row ROWS[i] (host memory) of dropout_mask's for SITE. A backend without it
     * (NULL) runs a classifier's last layer on every token instead of on the n tokens its head reads */
    void (*dropout_mask_rows)(uint8_t *keep, const int32_t *rows, size_t n, size_t cols, float p, uint64_t site);
    void (*dropout_apply)(float *out, const float *in, const uint8_t *keep, float p, size_t n);
    void (*dropout_accumulate)(float *dx, const float *d, const uint8_t *keep, float p, size_t n);
    /* x0 (N, H) = dropout(LayerNorm((word[ids] + type[0]) + pos[pos])); p = 0: no dropout. TYPE NULL and
     * LN_W NULL (GPT-2): x0 = dropout(word[ids] + pos[pos]) */
    void (*embeddings_forward)(float *x0, const int32_t *ids /* (N) */, const int32_t *pos /* (N) */,
                               const float *word /* (V, H) */, const float *posw /* (P, H) */,
                               const float *type /* (TV, H) */, const float *ln_w, const float *ln_b /* (H) */,
                               int N, int H, float eps, float p, uint64_t site);
    /* frozen linear: y (N, out) = x (N, in) W^T + b, W (out, in); dx (N, in) = dy W + beta dx */
    void (*linear_forward)(float *y, const float *x, const float *W, const float *b, int N, int in, int out);
    void (*linear_backward)(float *dx, const float *dy, const float *W, int N, int in, int out, float beta);
    /* the same three with the frozen tables in bf16 (FX_PREC_BF16): products as fx_matmul_bf16 (x, dy
     * rounded to bf16), embedding rows widened; NULL where the backend has no bf16 base (the GPU's) */
    void (*linear_forward_bf16)(float *y, const float *x, const uint16_t *W, const float *b, int N, int in, int out);
    void (*linear_backward_bf16)(float *dx, const float *dy, const uint16_t *W, int N, int in, int out, float beta);
    void (*embeddings_forward_bf16)(float *x0, const int32_t *ids, const int32_t *pos, const uint16_t *word,
                                    const uint16_t *posw, const uint16_t *type, const float *ln_w, const float *ln_b,
                                    int N, int H, float eps, float p, uint64_t site);
    /* res (N, H) = dropout(y) + x, out = LayerNorm(res) with its mean, rstd (N); g, b (H) */
    void (*residual_layernorm_forward)(float *out, float *res, float *mean, float *rstd, const float *y,
                                       const uint8_t *keep, float p, const float *x, const float *g,
                                       const float *b, int N, int H, float eps);
    /* out (N, H) = LayerNorm(x) with its mean, rstd (N) (pre-LN blocks; in place allowed) */
    void (*layernorm_forward)(float *out, float *mean, float *rstd, const float *x, const float *g,
                              const float *b, int N, int H, float eps);
    /* dx (N, H) from dy at LayerNorm(x), g frozen */
    void (*layernorm_backward)(float *dx, const float *dy, const float *x, const float *mean, const float *rstd,
                               const float *g, int N, int H);
    /* exact (erf) GELU; ERF (n) or NULL receives erf(x / sqrt 2), which the backward then takes as it is
     * instead of computing it again (ERF NULL there: computed) */
    void (*gelu_forward)(float *out, float *erf, const float *in, size_t n);
    void (*gelu_backward)(float *d /* dout in, din out */, const float *in, const float *erf, size_t n);
    void (*gelu_tanh_forward)(float *out, const float *in, size_t n);     /* gelu_new (tanh form) */
    void (*gelu_tanh_backward)(float *d /* dout in, din out */, const float *in, size_t n);
    /* Llama's pieces. RMSNorm: out (N, H) = g * (x * rstd), rstd (N) = 1 / sqrt(mean(x^2) + eps), in
     * place allowed; its backward with g frozen */
    void (*rmsnorm_forward)(float *out, float *rstd, const float *x, const float *g, int N, int H, float eps);
    void (*rmsnorm_backward)(float *dx, const float *dy, const float *x, const float *rstd, const float *g,
                             int N, int H);
    /* RoPE in place on x (N, nh * hd) at positions pos (N), HF's rotate-half pairing (i, i + hd/2), angle
     * pos * inv_freq[i] (INV_FREQ (hd/2) in host memory, fx_rope_inv_freq's); INVERSE rotates by minus the
     * angle (the backward, as the rotation is orthogonal) */
    void (*rope)(float *x, const int32_t *pos, int N, int nh, int hd, const double *inv_freq, int inverse);
    /* SwiGLU: out (n) = silu(gate) * up; backward: dgate, dup (n) from dout (n) */
    void (*swiglu_forward)(float *out, const float *gate, const float *up, size_t n);
    void (*swiglu_backward)(float *dgate, float *dup, const float *dout, const float *gate, const float *up,
                            size_t n);
    /* rows x cols floats of SRC (row stride ss) added to DST (row stride ds): grouped-query attention's
     * key/value gradient summed over the query heads that share a key/value head */
    void (*add_rows)(float *dst, size_t ds, const float *src, size_t ss, int rows, int cols);
    void (*tanh_forward)(float *x, size_t n);                             /* in place */
    void (*tanh_backward)(float *d /* in place */, const float *y /* tanh(x) */, size_t n);
    /* Self-attention per sequence on the packed layout: for row b (tokens off[b] .. off[b+1]), head h,
     * ctx (N, H) = dropout(softmax(q k^T / sqrt(hd))) v over the row's own keys (no masked key is
     * computed). CAUSAL: key j > query i has probability 0 as well; WINDOW > 0 (Mistral's sliding window,
     * causal only): so has key j <= i - WINDOW. Dropout on the probabilities: query i
     * of row b, head h draws its keep mask from SITE's stream (off[b] + i) nh + h, independent of
     * padding; the backward, given the forward's CAUSAL, P and SITE, draws it again. KEEP (attention_keep(n, T, N, nh, p > 0) floats) receives
     * what the backward needs, its layout the backend's: the CPU keeps the softmax's row maximum and
     * 1 / sum per (token, head), (N, nh, 2), and recomputes the probabilities block by block in backward
     * (its score scratch per thread is O(T), no (n, nh, T, T) buffer). dq, dk, dv (N, H) are written. */
    size_t (*attention_keep)(int n, int T, int N, int nh, int drop);
    void (*attention_forward)(float *ctx, float *keep, const float *q, const float *k, const float *v,
                              const int32_t *off /* (n + 1) */, int n, int T, int H, int nh, int causal,
                              int window, float p, uint64_t site);
    void (*attention_backward)(float *dq, float *dk, float *dv, const float *dctx, const float *q,
                               const float *k, const float *v, const float *keep, const int32_t *off, int n,
                               int T, int H, int nh, int causal, int window, float p, uint64_t site);
    /* mean loss over n rows and dlogits (n, L): MSE when L == 1, else cross-entropy; labels (n) */
    double (*loss)(float *dlogits, const float *logits, const float *labels, int n, int L);
    /* The causal LM's loss over the packed tokens' logits (N, V) and targets (N), each the token the
     * position predicts (model.c shifts them: the padded row's next position's, -100 for none); COUNT
     * supervised positions (> 0) share the mean; with smoothing eps, (1 - eps) nll + eps mean_v(-log p).
     * dlogits (N, V) may be LOGITS itself (overwritten in place); positions predicting nothing get zeros. */
    double (*lm_loss)(float *dlogits, const float *logits, const int32_t *targets, int N, int V, float eps,
                      int count);
    /* sum of x^2 (accumulated in double), and x *= a: gradient clipping */
    double (*sumsq)(const float *x, size_t n);
    void (*scale)(float *x, float a, size_t n);
    /* One query per slot against its cache: ctx (ns, H) = softmax(q k^T / sqrt(hd)) v over the cached
     * positions 0 .. len-1 of slot s (WINDOW > 0: only the last WINDOW of them), per head; q (ns, H); kc, vc
     * (slots, max_len, H); scores (ns, nh, len) scratch */
    void (*attention_decode)(float *ctx, float *scores, const float *q, const float *kc, const float *vc, int ns,
                             int len, int max_len, int H, int nh, int window);
    /* one AdamW step on p, g, m, v (n) */
    void (*adamw)(float *p, const float *g, float *m, float *v, size_t n, const fx_adamw_scalars *s);
    /* SORF-VeRA (sorf.c has the math): x (rows, d) in place, each greedy power-of-two block of each row
     * times the normalised Walsh-Hadamard matrix; out (rows, d) = in with its columns scattered
     * (out[., perm[j]] = in[., j]) or gathered (out[., i] = in[., perm[i]]), out != in; out (rows, d) =
     * Gamma(b) in per row (Gamma^T with TRANSPOSE), b = (a (d/2), c (d/2)); M (r, r) = sd[0] G(sd[1..]) and
     * the gradient of sd (1 + r(r-1)/2) from dM */
    void (*fwht)(float *x, int rows, int d);
    void (*permute_cols)(float *out, const float *in, const int32_t *perm, int rows, int d, int scatter);
    void (*gamma_apply)(float *out, const float *in, const float *b, int rows, int d, int transpose);
    void (*givens_build)(float *M, const float *sd, int r);
    void (*givens_backward)(float *gsd, const float *dM, const float *sd, int r);
} fx_ops;

extern const fx_ops fx_cpu_ops;

/* ============================================================================================
 * roberta.c: the RoBERTa family as data: config keys, tensor list, block shape, positions, template
 * ============================================================================================
 * A family says what a checkpoint holds and how its block is wired; model.c reads these fields and
 * never a family's name. Only RoBERTa is implemented; the fields a GPT-2 (pre-LN, fused c_attn, Conv1D
 * weights, causal, learned positions from 0, gelu_new, tied LM head) or a Llama (RMSNorm, RoPE, SwiGLU,
 * grouped-query attention) would set are here so that they can be filled without changing model.c's
 * interface; fx_model_create refuses a value it does not implement. */

struct fx_family;
struct fx_model;
typedef struct {
    int vocab_size, hidden, layers, heads, intermediate, max_positions, type_vocab_size, pad_id;
    int num_labels;              /* 1 = regression (MSE loss) */
    float layer_norm_eps, hidden_dropout, attention_dropout, initializer_range;
    float classifier_dropout;    /* "classifier_dropout", or hidden_dropout when absent or null (as HF) */
    float embed_dropout;         /* GPT-2's embd_pdrop after wte + wpe (RoBERTa: hidden_dropout there) */
    /* Training settings a run puts here, so that every client's model carries them (0: off, RoBERTa's) */
    float label_smoothing;       /* the LM loss's epsilon, as transformers' LabelSmoother */
    float max_grad_norm;         /* clip the trainable gradient to this total 2-norm before AdamW */
    int kv_heads;                /* grouped-query attention's key/value heads; 0: = heads (RoBERTa) */
    int head_dim;                /* per-head width; 0: hidden / heads (Llama's "head_dim" may differ) */
    float rope_theta;            /* RoPE's base (Llama); unused by learned positions */
    /* rope_scaling (fx_rope_inv_freq has the math): FX_ROPE_DEFAULT, _LINEAR (factor), _LLAMA3 (factor,
     * low and high frequency factors, original_max_position_embeddings) */
    int rope_kind, rope_original_max;
    float rope_factor, rope_low_freq, rope_high_freq;
    int attention_bias, mlp_bias; /* Llama: q, k, v, o_proj carry biases; gate, up, down_proj do */
    int sliding_window;          /* Mistral's window: query i sees keys i - window < j <= i; 0 none */
    int untied_head;             /* the LM head has its own weight (lm_head.weight), not the embedding */
    int precision;               /* FX_PREC_*: how the base's matrices are held (--precision, CPU); 0 fp32 */
    const struct fx_family *family; /* NULL: RoBERTa (fx_roberta) */
} fx_config;
int fx_config_load(const char *path, fx_config *c); /* HF config.json; num_labels from id2label, else 2 */
int fx_id2label_index(const char *key, int n); /* an id2label key's label index 0..N-1, or -1 */

/* Roles of the tensors a family lists: the views (model.c) are filled by role, never by name. */
enum { FX_EMB_WORD, FX_EMB_POS, FX_EMB_TYPE, FX_EMB_LN_W, FX_EMB_LN_B,
       FX_EMB_LNF_W, FX_EMB_LNF_B, /* the final LayerNorm after the last layer (GPT-2's ln_f) */
       FX_EMB_HEAD,              /* an untied LM head's weight (Llama's lm_head.weight) */
       FX_EMB_COUNT };
enum { FX_LT_QW, FX_LT_QB, FX_LT_KW, FX_LT_KB, FX_LT_VW, FX_LT_VB, FX_LT_AOW, FX_LT_AOB, FX_LT_LN1W,
       FX_LT_LN1B, FX_LT_IW, FX_LT_IB, FX_LT_OW, FX_LT_OB, FX_LT_LN2W, FX_LT_LN2B,
       FX_LT_QKVW, FX_LT_QKVB,   /* fused q, k, v (GPT-2's c_attn) */
       FX_LT_GATEW, FX_LT_GATEB, /* SwiGLU's gate projection (Llama) */
       FX_LT_COUNT };
enum { FX_HEAD_DW, FX_HEAD_DB, FX_HEAD_OW, FX_HEAD_OB, FX_HEAD_COUNT };
/* _PAD: padding_idx row zero; _RESID: N(0, initializer_range / sqrt(2 layers)), GPT-2's c_proj */
enum { FX_INIT_NORMAL, FX_INIT_NORMAL_PAD, FX_INIT_ZERO, FX_INIT_ONE, FX_INIT_NORMAL_RESID };
typedef struct {
    const char *name;            /* Hugging Face's name, within a layer for the layer list (the embedding
                                    list also holds what follows the last layer: GPT-2's ln_f) */
    int role;                    /* FX_EMB_*, FX_LT_* or FX_HEAD_* */
    char d0, d1;                 /* dims: 'V' vocab, 'P' positions, 'T' token types, 'H' hidden,
                                    'I' intermediate, '3' 3 hidden, 'L' labels, 'Q' heads * head_dim,
                                    'K' kv_heads * head_dim; d1 0 for a vector */
    char init;                   /* FX_INIT_*: the family's _init_weights rule for it */
    char conv1d;                 /* stored (in, out) in checkpoints (GPT-2's Conv1D): transposed where
                                    files are read and written, never inside the model */
    char when;                   /* FX_WHEN_*: present only when the config has it. _UNTIED: the untied LM
                                    head (Llama's lm_head.weight), named outside the body's prefix in
                                    checkpoints; _ATTENTION_BIAS, _MLP_BIAS: Llama's optional biases */
} fx_tensor_spec;
enum { FX_WHEN_ALWAYS, FX_WHEN_UNTIED, FX_WHEN_ATTENTION_BIAS, FX_WHEN_MLP_BIAS };
enum { FX_ROPE_DEFAULT, FX_ROPE_LINEAR, FX_ROPE_LLAMA3 };

typedef enum { FX_NORM_POST, FX_NORM_PRE } fx_norm_place;     /* LayerNorm after / before the residual */
typedef enum { FX_NORM_LAYERNORM, FX_NORM_RMSNORM } fx_norm_kind;
typedef enum { FX_POS_PAD_CUMSUM, FX_POS_FROM_ZERO, FX_POS_ROPE } fx_pos_rule;
typedef enum { FX_ACT_GELU, FX_ACT_GELU_TANH, FX_ACT_SWIGLU } fx_act_kind;
typedef enum { FX_HEAD_CLS_TANH, FX_HEAD_LM } fx_head_kind;

/* The linear layers of one block that may carry an adapter (adapter.c's table); target t is bit 1 << t. */
#define FX_NTARGETS 8

typedef struct fx_family {
    const char *model_type;      /* config.json's "model_type" */
    const char *architecture;    /* config.json's "architectures" entry for the saved model */
    const char *prefix;          /* the body's tensors in a full checkpoint: "roberta." */
    const char *layer_fmt;       /* a layer's tensors and modules: "encoder.layer.%d." */
    const fx_tensor_spec *embed; int nembed;  /* base tensors before the layers, in file order */
    const fx_tensor_spec *layer; int nlayer;  /* base tensors of one layer, in file order */
    const fx_tensor_spec *head; int nhead;    /* trainable head tensors, after the adapters */
    fx_norm_place norm_place;
    fx_norm_kind norm;
    int fused_qkv;               /* q, k, v in one (3H, H) weight */
    int causal;                  /* attention masks future keys */
    fx_pos_rule positions;
    /* position ids (n, T) of a batch under the family's rule; NULL for RoPE */
    void (*position_ids)(const fx_config *c, const fx_batch *b, int32_t *pos);
    fx_act_kind act;
    fx_head_kind head_kind;
    int tied_head;               /* the LM head is the word embedding (an alias, not a copy) */
    fx_text_template text;       /* how one text or a pair becomes a sequence */
    /* Each adaptable target's module path within a layer and PEFT's target_modules entry, by FX_TI_*;
     * NULL where the family has no such layer. */
    const char *target_path[FX_NTARGETS], *target_peft[FX_NTARGETS];
    /* Every module of the model that is not an adaptable linear, for PEFT's target_modules selection:
     * the model's own (with the prefix) and a layer's ("" the layer itself); NULL-terminated. */
    const char *const *modules, *const *layer_modules;
    int (*config_load)(const char *path, fx_config *c);
    /* config.json's text for a saved model; id2label from NAMES (num_labels of them) or LABEL_i when NULL */
    void (*config_write)(FILE *f, const fx_config *c, const char *const *names);
    void (*tokenizer_config_write)(FILE *f, const fx_config *c); /* tokenizer_config.json beside it */
    void (*special_tokens_write)(FILE *f, const fx_config *c);   /* special_tokens_map.json beside it */
} fx_family;

extern const fx_family fx_roberta;
extern const fx_family fx_gpt2;  /* gpt2.c */
extern const fx_family fx_llama; /* llama.c */
/* RoPE's inverse frequencies (hd/2) under C's rope_scaling, as transformers' ROPE_INIT_FUNCTIONS (llama.c) */
void fx_rope_inv_freq(const fx_config *c, int hd, double *inv_freq);
/* The family of C (fx_roberta when c->family is NULL). */
const fx_family *fx_config_family(const fx_config *c);
/* As HF's _init_weights, by each tensor's init rule in the family's list: matrices N(0,
 * initializer_range) (padding_idx rows of the word and position embeddings zero), biases 0, LayerNorm
 * 1 / 0; one stream, table order; then the head likewise. */
void fx_model_init_base(struct fx_model *m, uint64_t seed);
/* fx_model_init_base leaving tensor i alone where KEEP[i] (base tensors in table order, then the head's;
 * NULL keeps none): what it does draw is what fx_model_init_base draws for that tensor. */
void fx_model_init_except(struct fx_model *m, uint64_t seed, const unsigned char *keep);
/* Hugging Face's RoBERTa position ids: pad + running count of non-pad tokens, pad on pad tokens. */
void fx_batch_positions(const fx_config *c, const fx_batch *b, int32_t *pos /* (n, T) */);
/* Config fields shared by the families' readers: KEY in [lo, hi] (absent or null: DFLT, or an error when
 * REQUIRED); a real in [lo, hi] (hi excluded when HI_OPEN); a string that must read WANT when present. */
int fx_cfg_int(const char *path, const fx_json *root, const char *key, int required, int dflt, int64_t lo,
               int64_t hi, int *out);
int fx_cfg_real(const char *path, const fx_json *root, const char *key, double dflt, double lo, double hi,
                int hi_open, float *out);
int fx_cfg_only(const char *path, const fx_json *root, const char *key, const char *want);

/* ============================================================================================
 * gpt2.c: the GPT-2 family as data (GPT2LMHeadModel): config keys, tensor list with Conv1D flags, block
 * ============================================================================================
 * Pre-LN blocks, fused c_attn, causal attention, gelu_new, learned positions from 0, ln_f, the LM head
 * tied to wte. Conv1D weights (c_attn, c_proj, c_fc) are (in, out) in checkpoints and (out, in) inside
 * fedex, like every other linear: checkpoint.c transposes them where files are read and written. */
/* Positions 0 .. T-1 on every row (GPT2Model without position_ids: padding goes on the right). */
void fx_positions_from_zero(const fx_config *c, const fx_batch *b, int32_t *pos /* (n, T) */);
/* DST (cols, rows) = SRC (rows, cols) transposed: a Conv1D weight between file and model orientation. */
void fx_transpose(float *dst, const float *src, int rows, int cols);

/* ============================================================================================
 * adapter.c: LoRA, FFA-LoRA and VeRA: the target table, tensors, initialisation, forward, backward
 * ============================================================================================ */

/* FX_NTARGETS (above, with the family): the adaptable linears of a block; target index t is bit 1 << t. */
/* GPT-2 uses ATTN_OUT (attn.c_proj), INTER (mlp.c_fc), OUTPUT (mlp.c_proj) and QKV (attn.c_attn, fused).
 * Llama uses QUERY..OUTPUT (q, k, v, o_proj, up_proj, down_proj) and GATE (gate_proj). */
enum { FX_TI_QUERY, FX_TI_KEY, FX_TI_VALUE, FX_TI_ATTN_OUT, FX_TI_INTER, FX_TI_OUTPUT, FX_TI_QKV, FX_TI_GATE };
enum { FX_T_QUERY = 1, FX_T_KEY = 2, FX_T_VALUE = 4, FX_T_ATTN_OUT = 8, FX_T_INTER = 16, FX_T_OUTPUT = 32,
       FX_T_QKV = 64, FX_T_GATE = 128 };
typedef struct {
    unsigned bit;                /* FX_T_* */
    const char *name, *alias;    /* fedex's --targets names ("attention.output.dense" or "attn_out") */
    const char *peft;            /* PEFT's target_modules entry */
    const char *path;            /* the module within a layer: "attention.self.query" (RoBERTa's; a family's
                                    own are fx_family.target_path) */
    char out, in;                /* W (out, in): 'H' hidden, 'I' intermediate, '3' 3 hidden */
    int w_role, b_role;          /* FX_LT_* of its weight and bias */
} fx_target;
extern const fx_target fx_targets[FX_NTARGETS];
void fx_target_dims(const fx_config *c, int t, int *out, int *in);
/* "query,value,key,attention.output.dense,..." (RoBERTa) or "c_attn,c_proj" (GPT-2: c_proj, a suffix,
 * is both attn.c_proj and mlp.c_proj; c_fc; attn.c_proj and mlp.c_proj alone). fx_model_create refuses
 * a target its family does not have. */
int fx_targets_parse(const char *list, unsigned *mask);

typedef enum { FX_LORA, FX_VERA, FX_SORF } fx_adapter_kind; /* FX_SORF: SORF-VeRA (sorf.c) */
typedef struct {
    fx_adapter_kind kind;
    unsigned targets;            /* FX_T_* bits */
    int r;                       /* LoRA or VeRA rank */
    float alpha;                 /* LoRA scale s = alpha / r (alpha / sqrt(r) with rslora); VeRA: unused */
    int rslora;
    float dropout;               /* on the adapter's input */
    int freeze_a;                /* FFA-LoRA: A stays at its initial value */
    int freeze_d;                /* FFA-VeRA: lambda_d stays at its initial value */
    float d_initial;             /* VeRA lambda_d initial value */
    uint64_t seed;               /* adapter initialisation and the dropout stream */
    uint32_t proj_key;           /* VeRA, SORF-VeRA: PEFT's projection_prng_key, the projections' seed */
    uint64_t sorf_seed;          /* SORF-VeRA: the mixer S's signs and permutations */
    int skip_projection;         /* VeRA: PEFT's save_projection=False (the adapter file holds no vera_A,
                                    vera_B; they are redrawn from proj_key) */
} fx_adapter_cfg;

/* One adapted linear layer y = x W^T + b with W (out, in). */
typedef struct {
    char name[96];               /* "encoder.layer.3.attention.self.query" */
    int layer, target;           /* encoder layer, FX_T_* bit */
    int in, out;
    size_t w_off;                /* W0 in base.data (out, in): FedEx's residual is added here */
    int conv1d;                  /* the checkpoint stores W as (in, out): files hold the residual so */
    size_t a_off, b_off;         /* in train.data. LoRA: A (r, in), B (out, r).
                                    VeRA: lambda_d (r), lambda_b (out).
                                    SORF-VeRA: (s, theta) (1 + r(r-1)/2), b = (a, c) (out, frozen) */
} fx_adapted;

/* 0, or -1 with fx_err() when A cannot be built (kind, target bits, rank, dropout, finite values). */
int fx_adapter_check(const fx_adapter_cfg *a);
/* Appends every adapter tensor to m->train (layer by layer, target by target) and fills m->ad; draws
 * VeRA's shared projections. Called by fx_model_create once the base table and views exist. */
int fx_adapter_build(struct fx_model *m); /* -1 with fx_err(): SORF-VeRA's shapes (even out, r <= in, out) */
/* LoRA: A ~ U(+-1/sqrt(in)) (row-major, tensors in table order, one stream), B = 0.
 * VeRA: lambda_d = d_initial, lambda_b = 0. The head is left alone. */
void fx_model_init_adapters(struct fx_model *m, uint64_t seed);
/* Scratch an adapter's forward and backward use, carved by model.c's workspace. */
typedef struct {
    float *xd, *dxd;             /* (N, in_max) dropout(x) and its gradient */
    float *u, *dz, *du;          /* (N, r) */
    float *w, *w2;               /* (N, out_max) */
    float *lam, *dlam;           /* (r, r) SORF-VeRA's Lambda_d and its gradient */
} fx_adapter_scratch;
/* SORF-VeRA's mixer S (d, d): per stage t of 3 the diagonals D1, D2, D3 (signs[(3t + k) d ..], k = 0, 1, 2)
 * and the permutation perm[t d ..]. Host memory in a model, device memory in its GPU twin. */
typedef struct { int d; float *signs; int32_t *perm; } fx_sorf_mixer;
/* Adapted layer K on y (N, out) for input x (N, in): y += adapter(dropout(x)); z (N, r) kept. ROWS (host,
 * N) or NULL: x's row i is token ROWS[i] of the step (its dropout row, as dropout_mask_rows), else token i. */
void fx_adapter_forward(struct fx_model *m, int k, float *y, const float *x, uint8_t *keep /* (N, in) or NULL */,
                        float *z, int N, const int32_t *rows, const fx_adapter_scratch *s);
/* Gradients of K's tensors from dy (N, out) into m->grad, and dx (N, in) += its input share (DX NULL:
 * skipped). X is read only when fx_adapter_backward_reads_x (LoRA with A trained: dA = dz^T x). */
int fx_adapter_backward_reads_x(const struct fx_model *m);
void fx_adapter_backward(struct fx_model *m, int k, float *dx, const float *dy, const float *x,
                         const uint8_t *keep, const float *z, int N, const fx_adapter_scratch *s);

/* ============================================================================================
 * model.c: the transformer written once on an ops table; tensor tables, views, workspace, head, AdamW
 * ============================================================================================ */

/* A named tensor inside one flat buffer. The tables' order (one buffer each, no gaps):
 *   base:  the family's embedding tensors, then per layer i its layer tensors ("encoder.layer.i." +
 *          attention.self.{query,key,value}.{weight,bias}, ... for RoBERTa), Hugging Face's order.
 *   train: per layer, per target in FX_T_* order: "<layer>.lora_A" (r, in), "<layer>.lora_B" (out, r),
 *          or "<layer>.vera_lambda_d" (r), "<layer>.vera_lambda_b" (out); then the family's head:
 *          classifier.dense.weight (H, H), classifier.dense.bias, classifier.out_proj.weight (L, H),
 *          classifier.out_proj.bias.
 *   grad, adam_m, adam_v: train's layout. */
typedef struct {
    char name[112]; int ndim; int shape[2]; size_t off, n;
    int frozen;                  /* no gradient, no update: every base tensor, lora_A under freeze_a,
                                    vera_lambda_d under freeze_d */
    int conv1d;                  /* a (out, in) weight the checkpoint stores as (in, out) (GPT-2) */
    int untied;                  /* named without the family's prefix in checkpoints (lm_head.weight) */
    int bf16;                    /* held in bf16: off counts in fx_params.bf, not data */
} fx_tensor;
/* BF16 set before the table is built (FX_PREC_BF16): every 2-D tensor is held in bf16, in BF (NBF
 * elements); vectors stay fp32 in DATA (N floats). Views keep one size_t offset into whichever buffer. */
typedef struct { float *data; size_t n; int nt; fx_tensor *t; int bf16; uint16_t *bf; size_t nbf; } fx_params;
/* Lookup by name: for files (checkpoints, residuals, tests), never for a step. */
const fx_tensor *fx_params_find(const fx_params *p, const char *name);
/* Appends a tensor (d1 0: a vector) at the end of P's layout (P starts zeroed). */
void fx_params_add(fx_params *p, const char *name, int d0, int d1, int frozen);

/* Per-layer weight views, resolved once by fx_model_create: offsets into base.data (head: train.data). */
typedef struct { size_t w, b; int in, out, ad; } fx_linear_view; /* W (out, in), bias (out); ad: index in
                                                                    m->ad, or -1 */
typedef struct {
    fx_linear_view lin[FX_NTARGETS]; /* by FX_TI_*: query, key, value (H, H); attention.output.dense
                                        (H, H); intermediate.dense (I, H); output.dense (H, I) */
    size_t ln1_w, ln1_b;         /* (H) attention.output.LayerNorm */
    size_t ln2_w, ln2_b;         /* (H) output.LayerNorm */
} fx_layer_view;
typedef struct {
    size_t word;                 /* (V, H) */
    size_t pos;                  /* (P, H) */
    size_t type;                 /* (TV, H) */
    size_t ln_w, ln_b;           /* (H) */
    size_t lnf_w, lnf_b;         /* (H) the final LayerNorm (GPT-2's ln_f; Llama's model.norm, no bias) */
    size_t head;                 /* (V, H) an untied LM head (Llama's lm_head.weight) */
} fx_embed_view;
typedef struct {
    size_t dense_w, dense_b;     /* (H, H), (H) classifier.dense */
    size_t out_w, out_b;         /* (L, H), (L) classifier.out_proj */
    int t;                       /* train.t index of the head's first tensor; the rest follow in order */
} fx_head_view;

typedef struct fx_model {
    fx_config c;
    fx_adapter_cfg a;
    const fx_family *fam;        /* c's family */
    const fx_ops *ops;           /* the backend the step runs on (fx_cpu_ops; gpu.cu's twin: fx_gpu_ops) */
    float scale;                 /* LoRA's s; 1 for VeRA */
    fx_params base;              /* frozen weights, HF names without the "roberta." prefix; may live in
                                    shared memory owned by someone else */
    int base_owned;
    fx_params train;             /* trainable: every adapter tensor, then the classifier head */
    size_t head_off, head_n;     /* the head's range in train.data */
    fx_embed_view emb;
    fx_layer_view *layer;        /* (layers) */
    fx_head_view head;
    float *grad;                 /* same layout as train.data */
    float *adam_m, *adam_v;      /* AdamW moments, same layout */
    int adam_t;
    int nadapted;
    fx_adapted *ad;
    float *vera_A, *vera_B;      /* VeRA's frozen shared projections (r, in_max), (out_max, r), drawn in
                                    fx_model_create as PEFT draws them from a.proj_key: vera_A ~
                                    U(+-sqrt(6/in_max)), then vera_B ~ U(+-sqrt(6/r)), row-major */
    int vera_in, vera_out;       /* in_max, out_max over the adapted layers (0 without VeRA) */
    fx_sorf_mixer sorf[FX_NTARGETS]; /* SORF-VeRA: one mixer S per output width of the adapted layers */
    int nsorf;
    fx_rng drop;                 /* dropout stream, seeded from a.seed by fx_model_create */
    void *ws;                    /* activations and scratch, private to model.c */
} fx_model;

size_t fx_base_numel(const fx_config *c);
/* --precision on the CPU. FX_PREC_BF16: the base's matrices (every linear's weight, the embeddings, an
 * untied LM head) held in bf16, once, and every product with them run by fx_matmul_bf16 (activations rounded
 * to bf16, fp32 sums); norms' weights and biases, adapters, gradients, optimizer state and the residual stay
 * fp32. The frozen weight of an adapted layer is then bf16(fl(W0 + R_acc)) for every party. */
enum { FX_PREC_FP32 = 0, FX_PREC_BF16 = 1 };
int fx_precision_parse(const char *s, int *prec);   /* "fp32" | "bf16"; -1 with fx_err() */
/* One line on F when PREC is bf16 and this CPU lacks AVX-512 BF16 (the products then run by the fallback). */
void fx_precision_note(int prec, FILE *f);
/* Bytes of the buffer fx_model_create takes as BASE: the fp32 vectors, then (bf16) the matrices at the next
 * 64-byte boundary. fp32: fx_base_numel() floats. */
size_t fx_base_bytes(const fx_config *c);
/* A 2-D base tensor's elements [OFF, OFF + N) (OFF: its fx_tensor.off, or an adapted layer's w_off) as
 * fp32 into DST (widened from bf16 where it is held so), and back from SRC (rounded to bf16, nearest even). */
void fx_base_read(const struct fx_model *m, size_t off, size_t n, float *dst);
void fx_base_write(struct fx_model *m, size_t off, size_t n, const float *src);
/* heads' width: head_dim, or hidden / heads when the config gives none */
int fx_model_head_dim(const fx_config *c);
/* What one layer's attention reads and writes while decoding (decode.c keeps the caches). */
typedef struct {
    float *kc, *vc;              /* (slots, cap, heads * head_dim) the layer's keys and values */
    int cap, pos;                /* positions each slot holds; the step's position (-1: prefill of slot 0) */
    float *scores;               /* (ns, heads, pos + 1) attention scratch */
} fx_decode_at;
/* The forward decode.c runs: NS rows of T tokens (host ids, positions, mask all 1; no dropout) through every
 * layer, layer l's keys and values also into AT[l]'s cache and, when AT[l].pos >= 0, its attention over
 * the cache (AT NULL: neither); then the final norm and the LM head on ROWS rows from FIRST, LOGITS
 * (rows, vocab) on the host. */
void fx_model_decode_forward(fx_model *m, const int32_t *ids, const int32_t *pos, const uint8_t *mask, int ns,
                             int T, const fx_decode_at *at, size_t first, int rows, float *logits);
/* Builds the tables. BASE: NULL to allocate it here, or fx_base_bytes() bytes used in place. */
int fx_model_create(fx_model *m, const fx_config *c, const fx_adapter_cfg *a, float *base);
void fx_model_free(fx_model *m);
size_t fx_model_workspace_bytes(const fx_model *m); /* activations and scratch of the largest step so far */
/* Checks a batch against a model's configuration (rows and tokens, WIDE = the widest activation row,
 * token ids in the vocabulary, positions within max_positions, labels valid for the head; TRAIN needs
 * labels): 0, or -1 with fx_err(). Both backends call it, so they refuse the same batches alike. */
int fx_batch_check(const fx_config *c, const fx_batch *b, int train, int wide);
/* Forward (and backward into grad when TRAIN, dropout on) over a batch; returns the mean loss. The
 * batch's real tokens (mask != 0) are packed row after row and only they are computed: padding changes
 * no result beyond fp32 summation order (README, "Packed batches"); every row needs a real token (the
 * classifier reads its first), a causal LM's batch one at least.
 * LOGITS (n, num_labels) may be NULL; a causal LM's are (n, T, vocab), zero on padding, its loss the mean
 * over the real positions that predict a target (b->targets, shifted by one as GPT2LMHeadModel does;
 * label smoothing c.label_smoothing), 0 when none does. Labels may be NULL when !TRAIN (loss 0). Bad input (a token id
 * out of range, a position past max_positions, a class label not in [0, num_labels)) returns NAN with
 * fx_err() set. TRAIN overwrites grad for every trainable tensor (zero for frozen ones). Dropout masks
 * come from m->drop, one draw per dropout site, each packed token of a site from its own stream (and each
 * (token, head) of attention's), so they depend neither on the thread count nor on the padding. */
float fx_model_step(fx_model *m, const fx_batch *b, int train, float *logits);
/* optim.c: the optimizer step on the model's ops */
void fx_adamw_reset(fx_model *m);
/* torch.nn.utils.clip_grad_norm_ over the trainable gradient (p = 2): scales it by min(1, max_norm /
 * (norm + 1e-6)); returns the norm before. fx_adamw_update calls it first when c.max_grad_norm > 0. */
double fx_clip_grad_norm(fx_model *m, float max_norm);
/* torch.optim.AdamW: betas 0.9, 0.999, eps 1e-8, p *= 1 - lr wd first; every non-frozen trainable
 * tensor (biases and head included) decays; adam_t counts steps from 1. */
void fx_adamw_update(fx_model *m, float lr, float weight_decay);
float fx_linear_schedule(int step, int warmup, int total, float lr); /* HF linear warmup then decay */

/* ============================================================================================
 * generation: the decoder interface (model side: decode.c's KV cache; search: generate.c)
 * ============================================================================================
 * A decoder runs a causal LM one position at a time over NSLOTS key/value caches (one per beam). The
 * search sees only this table, so it can be tested against a toy decoder as well as a model. Every
 * function returns 0, or -1 with fx_err(). */
typedef struct {
    void *ctx;
    int vocab, max_len;   /* max_len: positions the model holds (n_positions) */
    /* run ids[0..n-1] at positions 0..n-1 into slot 0's cache; write the last position's logits (vocab floats) */
    int (*prefill)(void *ctx, const int *ids, int n, float *logits);
    /* one new token per slot: tok[s] at position pos for slots 0..ns-1; logits (ns, vocab) */
    int (*step)(void *ctx, int ns, const int *tok, int pos, float *logits);
    /* slot s's cache becomes a copy of slot src[s]'s (positions < len), s = 0..ns-1 (src may repeat) */
    int (*reorder)(void *ctx, int ns, const int *src, int len);
} fx_decoder;
/* A decoder over causal LM M (GPT-2, adapters included, dropout off) with NSLOTS caches, which grow to
 * max_len positions as needed. M must outlive it; they share M's workspace, which every call lays out
 * anew, so steps of M and decoder calls may alternate. The logits are the full forward's (fx_model_step)
 * at the same positions, to rounding. -1 with fx_err() when M is no causal LM. */
int fx_model_decoder(struct fx_model *m, int nslots, fx_decoder *d);
void fx_decoder_free(fx_decoder *d);
/* log p(CONT | CTX) on D's slot 0, the sum of the continuation tokens' float64 log-softmaxes. */
int fx_loglik(const fx_decoder *d, const int32_t *ctx, int nctx, const int32_t *cont, int ncont, double *ll);

/* ============================================================================================
 * checkpoint.c: Hugging Face checkpoints and PEFT adapters on disk
 * ============================================================================================
 * fx_model_load accepts F32, F16 or BF16 tensors, names with or without the family's prefix ("roberta."),
 * and ignores tensors it does not need (lm_head.*, pooler.*); it returns 1 when it also loaded a classifier
 * head of the model's shape, 0 when the head was left as initialised, -1 on error. fx_model_save writes
 * prefixed F32 tensors, the head and config.json (the family's writer); MERGED folds each adapter's dW into
 * its weight. */

/* 0 if DIR/model.safetensors exists, else -1 with an error that says how to make random weights. */
int fx_model_has_weights(const char *dir);
int fx_model_load(fx_model *m, const char *dir);         /* DIR/model.safetensors: base, and head if any */
/* fx_model_init_base(SEED) then fx_model_load, without drawing what the file then overwrites: the tensors
 * DIR lacks (a head) come out as fx_model_init_base(SEED) draws them. Returns as fx_model_load. */
int fx_model_load_init(fx_model *m, const char *dir, uint64_t seed);
int fx_model_save(const fx_model *m, const char *dir, int merged); /* HF checkpoint (+ config.json) */
/* fx_model_save (unmerged) with config.json's id2label and label2id naming the labels LABEL_NAMES[i]
 * (num_labels of them; NULL: LABEL_i) */
int fx_model_save_labels(const fx_model *m, const char *dir, const char *const *label_names);
/* fx_model_save for a task's model as transformers loads it whole: config.json's id2label and label2id
 * with TASK's names (LABEL_i when it has none, as STS-B), tokenizer_config.json (its model_max_length
 * from the positions) and special_tokens_map.json. */
int fx_model_export(const fx_model *m, const char *dir, int merged, const fx_task *task);

/* DIR/adapter_model.safetensors (PEFT's keys, the head as modules_to_save, VeRA's projections) and
 * DIR/adapter_config.json, which PEFT's PeftModel.from_pretrained can load. */
/* BASE_MODEL: the base model's folder (written as its absolute path) or hub name for adapter_config.json's
 * base_model_name_or_path (NULL: null). */
int fx_adapter_save(const fx_model *m, const char *dir, const char *base_model);
/* PATH: a folder as fx_adapter_save writes it, or the .safetensors file itself. adapter_config.json beside
 * it, when present, must match the model's kind, r, targets and LoRA scale. Nothing is changed on error. */
int fx_adapter_load(fx_model *m, const char *path);
/* PEFT's adapter_config.json into A (kind, r, lora_alpha, use_rslora, dropout, targets, d_initial); the
 * fields PEFT has and fedex does not (bias, DoRA, layers_to_transform, exclude_modules, ...) must be at
 * their defaults. target_modules selects modules as PEFT does (a list by name or dotted suffix, a string
 * as a regular expression over the whole name); rank_pattern and alpha_pattern are honoured when they
 * give every adapted module one value (resolved here for layer 0, by fx_adapter_load for every layer).
 * PATH: the adapter's folder, its .safetensors file (the config is read from beside it) or the .json. */
int fx_adapter_config_load(const char *path, fx_adapter_cfg *a);
/* Adds every tensor of PATH into the base weight of the same name ("roberta." optional, same shape): a
 * FedEx residual kept apart from the checkpoint. All are checked before any is added. */
int fx_residual_load(fx_model *m, const char *path);

/* ============================================================================================
 * sorf.c: SORF-VeRA: the mixer S, Gamma, Givens rotations, their CPU ops, dW, the server's refit
 * ============================================================================================
 * dW = S Gamma(b) B_l Lambda_d A_l, Lambda_d = s G(theta); the equations are in sorf.c. */
void fx_sorf_mixer_build(fx_sorf_mixer *S, int d, uint64_t seed);
void fx_sorf_mixer_free(fx_sorf_mixer *S);
const fx_sorf_mixer *fx_sorf_of(const fx_model *m, int d);      /* the model's mixer of width D, or NULL */
/* y (N, d) = x S^T (S^T: x S) on OP, TMP (N, d) scratch; y may be x. S's pointers are OP's memory. */
void fx_sorf_mix(const fx_ops *op, const fx_sorf_mixer *S, float *y, float *tmp, const float *x, int N, int transpose);
void fx_sorf_mix_d(const fx_sorf_mixer *S, double *v, double *tmp, int transpose); /* v (d) = S v, host, double */
void fx_sorf_givens_d(double *G, const float *theta, int r);    /* G(theta) (r, r), double */
void fx_cpu_fwht(float *x, int rows, int d);
void fx_cpu_permute_cols(float *out, const float *in, const int32_t *perm, int rows, int d, int scatter);
void fx_cpu_gamma_apply(float *out, const float *in, const float *b, int rows, int d, int transpose);
void fx_cpu_givens_build(float *M, const float *sd, int r);
void fx_cpu_givens_backward(float *gsd, const float *dM, const float *sd, int r);
void fx_sorf_delta_w(const fx_model *m, int k, const float *train, double *dW /* (out, in) */);
/* U (out, r), U A_l = mean_i dW_i - dW(GLOBAL), the clients sharing client 0's b. */
void fx_sorf_residual_d(const fx_model *m, int k, const float *const *clients, const double *w, int n,
                        const float *global, double *U);
/* The VeRA fork's server: b, s, theta of layer K in GLOBAL refitted from the SVD of the clients' mean dW;
 * POLAR: b kept, s, theta the scaled rotation nearest the mean Lambda_d. */
void fx_sorf_refit(const fx_model *m, int k, const float *const *clients, const double *w, int n, float *global,
                   int polar);

/* ============================================================================================
 * agg.c: aggregation math (FedIT mean, FedEx residual, VeRA, aggregation error); the residual's owner
 * ============================================================================================ */

typedef enum { FX_AGG_FEDEX, FX_AGG_FEDIT, FX_AGG_FFA, FX_AGG_FEDEX_VERA, FX_AGG_FEDIT_VERA,
               FX_AGG_FFA_VERA, FX_AGG_CENTRAL, FX_AGG_SORF_VERA, FX_AGG_FEDEX_SORF_VERA } fx_agg_method;
int fx_agg_parse(const char *s, fx_agg_method *m);  /* also the reference code's ours/normal/ffa/ours_vera */
const char *fx_agg_name(fx_agg_method m);
int fx_agg_is_vera(fx_agg_method m);  /* fedex-vera, fedit-vera, ffa-vera */
int fx_agg_is_sorf(fx_agg_method m);  /* sorf-vera, fedex-sorf-vera */
int fx_agg_is_exact(fx_agg_method m);              /* adds the residual into W0 */
int fx_agg_freezes(fx_agg_method m);               /* FFA: A (or lambda_d) frozen */

void fx_agg_mean(float *out, const float *const *x, const double *w, int n, size_t len);
void fx_delta_w(const fx_model *m, int k, const float *train, double *dW);
/* q, the inner dimension of the residual's factors U (out, q), V (q, in) for N clients: (N+2) r for LoRA's
 * centred factors, r for VeRA. Message sizes and byte counts all follow from it. */
int fx_agg_residual_rank(const fx_model *m, int n);
int fx_agg_residual_factors(const fx_model *m, int k, const float *const *clients, const double *w,
                            int n, const float *global, float *U, float *V);
/* The aggregation error of adapted layer K: || W_global - sum_i w_i W_i || / || sum_i w_i W_i - W_prev ||,
 * with this round's residual as its factors carry it, times RESIDUAL (1: FedEx; the VeRA fork's lr or
 * alpha/r; 0: no residual), computed from the factors (agg.c has the equations). WORK:
 * fx_agg_error_work(m, n) doubles. */
double fx_agg_error(const fx_model *m, int k, float residual, const float *const *clients, const double *w, int n,
                    const float *global, const float *prev_global, double *work);
size_t fx_agg_error_work(const fx_model *m, int nclients);
/* ||sum_j u_j v_j^T||_F for Q outer products, u_j = UC[j] (OUT), v_j = VR[j] (IN), in double; both are
 * overwritten. HOW: FX_NORM_TRIANGULAR (Householder factors of U and V^T, cost (out + in) q^2 + q^3),
 * FX_NORM_DENSE (the product row by row, out in q), or FX_NORM_AUTO (the cheaper). */
enum { FX_NORM_AUTO, FX_NORM_DENSE, FX_NORM_TRIANGULAR };
double fx_agg_norm_uv(double *Uc, double *Vr, int q, int out, int in, int how);

/* The residual's one owner. Every party that computes with the global model holds an fx_residual: the
 * adapted layers' original W0 and the accumulated residual R_acc (layer k at off[k], (out, in) each),
 * accumulates each round's message with fx_residual_apply, and forms the frozen weight with
 * fx_frozen_weight, W = fl(W0 + R_acc): the server, every CPU and GPU client, resume, evaluation and
 * export alike, so all of them compute with the same bits. */
typedef struct {
    int n;                       /* adapted layers */
    size_t *off;                 /* (n + 1) */
    float *w0;                   /* original frozen weights, concatenated */
    float *acc;                  /* R_acc, same layout */
    int round;                   /* the last round applied (0: none) */
} fx_residual;
/* One round's residual as it travels: this header, then per adapted layer in order the payload
 * (q > 0: U (out, q) and V (q, in) for LoRA, U alone for VeRA whose V is the shared projection;
 * q == 0: the dense R (out, in)). */
typedef struct {
    int32_t round;               /* the round whose aggregation produced it; 0: none yet */
    int32_t q;                   /* inner dimension of the factors, 0 = dense */
    int32_t form;                /* FX_RESIDUAL_*: with AUTO, each layer in the smaller of its two forms */
} fx_residual_msg;
/* How the residual travels (--residual): factors for every layer, the dense matrix for every layer, or per
 * layer whichever is smaller (fx_residual_layer_dense says which, from the shapes and q alone). */
enum { FX_RESIDUAL_FACTORED = 0, FX_RESIDUAL_DENSE = 1, FX_RESIDUAL_AUTO = 2 };
int fx_residual_form_parse(const char *s, int *form); /* auto | factored | dense; -1 with fx_err() */
int fx_residual_layer_dense(const fx_model *m, int k, int form, int q);
void fx_frozen_weight(float *W, const float *W0, const float *R, size_t n); /* W = fl(W0 + R) */
void fx_frozen_weight_bf16(uint16_t *W, const float *W0, const float *R, size_t n); /* bf16(fl(W0 + R)) */
int fx_residual_init(fx_residual *r, const fx_model *m); /* W0 from M's base, R_acc = 0 */
void fx_residual_copy(fx_residual *dst, const fx_residual *src); /* a deep copy: a receiver's own */
void fx_residual_free(fx_residual *r);
void fx_residual_frozen(const fx_residual *r, int k, float *W /* (out, in) */);
void fx_residual_set_frozen(const fx_residual *r, fx_model *m); /* every adapted layer of M's base */
size_t fx_residual_msg_capacity(const fx_model *m, int nclients); /* payload floats, either form */
size_t fx_residual_msg_bytes(const fx_model *m, const fx_residual_msg *msg); /* header + payload sent */
/* The round's residual of every adapted layer (fx_agg_residual_factors; a dense layer multiplies them out)
 * into PAYLOAD, in FORM (FX_RESIDUAL_*). SCRATCH holds one layer's factors (dense layers only). */
void fx_residual_make(const fx_model *m, int form, const float *const *clients, const double *w, int n,
                      const float *global, int round, fx_residual_msg *msg, float *payload, float *scratch);
/* A fingerprint of the frozen state every party must share: M's base weights with the adapted layers'
 * original W0 from R (not W0 + R_acc), and VeRA's projections. */
uint64_t fx_frozen_hash(const fx_model *m, const fx_residual *r);
/* R_acc += the message's residual, the same arithmetic for every receiver. */
/* VeRA's residual in MSG times FACTOR (the VeRA fork's inexact scalings; 1 leaves it exact). */
void fx_residual_scale(const struct fx_model *m, const fx_residual_msg *msg, float *payload, float factor);
void fx_residual_apply(fx_residual *r, const fx_model *m, const fx_residual_msg *msg, const float *payload);

/* ============================================================================================
 * settings.c: the option parser of every command; a federated run's settings and their file
 * ============================================================================================ */

typedef enum { FX_OPT_INT, FX_OPT_REAL, FX_OPT_STR, FX_OPT_FLAG, FX_OPT_SEED } fx_opt_kind;
typedef struct {
    const char *name, *alias;    /* "--lr"; the reference code's spelling, or NULL */
    fx_opt_kind kind;            /* INT: int, REAL: double, STR: const char *, FLAG: int, SEED: long long */
    size_t off;                  /* offset of the field in the command's settings struct */
    const char *def;             /* default, as text (NULL: none, the field stays zero) */
    const char *help;
    long long lo, hi;            /* INT: the accepted range, when lo < hi */
} fx_opt;
/* A command's line: its options and how many positional arguments it takes. */
typedef struct {
    const char *cmd, *synopsis, *about;
    size_t size;                 /* of the settings struct, zeroed before the defaults are set */
    const fx_opt *opt; int nopt;
    int npos_min, npos_max; const char *pos_name; /* e.g. 1, 1, "FILE" */
} fx_cmdline;
int fx_is_help(const char *a);                             /* -h or --help */
int fx_opts_wants_help(int argc, char **argv);             /* -h/--help before any `--` */
/* Parses ARGV[1..ARGC) into DST (defaults first): `--opt value`, `--opt=value`, flags, `--` ends the
 * options, a lone `-` is positional. SET[i] tells whether option i was given; POS gets the positional
 * arguments (npos_max of them at most), *NPOS their count. -1 with fx_err() on a usage error. */
int fx_opts_parse(const fx_cmdline *cl, int argc, char **argv, void *dst, int *set, const char **pos, int *npos);
int fx_opts_defaults(const fx_cmdline *cl, void *dst);
int fx_opts_find(const fx_cmdline *cl, const char *name); /* index by either spelling, or -1 */
void fx_opts_help(const fx_cmdline *cl, FILE *f);          /* generated from the table */

typedef struct {
    const char *model, *task, *data, *out, *resume, *split, *targets, *agg_name, *residual;
    const char *device, *precision, *client_gpus, *transport;
    const char *train_file;      /* E2E: the training CSV in place of DATA/trainset.csv */
    int clients_per_round;       /* 0: all */
    int num_clients, rounds, local_epochs, batch_size, max_len, lora_r, vera_r, threads;
    int micro_batch, eval_batch, server_gpu;
    double lr, lora_alpha, lora_dropout, d_initial, warmup_ratio, weight_decay, client_timeout;
    double label_smoothing;      /* eps of the LM loss: (1 - eps) nll + eps mean_v(-log p_v); 0: none */
    double max_grad_norm;        /* each step's gradient clipped to this total L2 norm; 0: no clipping */
    long long seed;
    int rslora, weighted, strict, save_clients, overwrite;
    /* VeRA as PEFT names it, and the VeRA fork's spellings */
    double vera_dropout;
    long long projection_prng_key, sorf_seed;
    const char *save_projection, *vera_scale, *fork_client_gpus;
    const char *fan_in_fan_out, *bias, *modules_to_save, *init_weights, *layers_to_transform, *layers_pattern;
    int vera, r_any, rsvera, fork_vera_scale, parallel_clients, fork_server_gpu;
    const char *sorf_refit;      /* svd (the VeRA fork's) | polar */
    /* E2E: generation on the test MRs, scored every eval_every rounds and at the last (generate.c) */
    const char *test_file, *early_stopping, *no_repeat_scope;
    int eval_every, test_mrs, num_beams, no_repeat_ngram, max_new_tokens;
    /* instruct, gsm8k, mc (instruct.c): the prompt format; the dev rows generated (gsm8k) or scored (mc) */
    const char *chat_template;
    int eval_rows;
    double length_penalty;
    fx_agg_method agg;           /* parsed from agg_name (and --vera) by fx_settings_check */
} fx_settings;
#define FX_SETTINGS_FILE "fedex_run.json"     /* a run's settings, beside its outputs */
extern const fx_cmdline fx_train_cmdline;                  /* train's table: every setting of a run */
#define FX_SETTINGS_MAX 96    /* room for its SET flags: settings.c checks the table fits at compile time */
int fx_settings_opt(const char *name);                     /* index in fx_train_cmdline */
/* Ranges and contradictions (SET: which options were given); parses agg. A new run (no --resume) first
 * takes its task's defaults for the options not given (fx_settings_task_defaults). -1 with fx_err(). */
int fx_settings_check(fx_settings *c, const int *set);
/* What the run says once about options it accepts but does not need (--parallel_clients, the VeRA fork's
 * GPU ids on the CPU). */
void fx_settings_notes(const fx_settings *c, const int *set, FILE *f);
/* The task's own defaults (E2E: the reference's GPT-2 recipe) for every option SET says was not given;
 * returns how many it changed, -1 on an unknown value in the table. */
int fx_settings_task_defaults(fx_settings *c, const int *set);
void fx_settings_adapter(const fx_settings *c, fx_adapter_cfg *a);
/* The factor on the VeRA residual: 1 (exact), or the VeRA fork's lr or alpha/r (--vera-scale). */
float fx_settings_residual_scale(const fx_settings *c);
/* FX_PREC_BF16 for --precision bf16 on the CPU (the base held in bf16), else FX_PREC_FP32 (the GPU's
 * precision is its own: fx_gpu_precision_parse). */
int fx_settings_precision(const fx_settings *c);
/* The model's configuration: the folder's config.json with the task's label count, or the embedded one;
 * its precision from fx_settings_precision. */
int fx_settings_model(const fx_settings *c, fx_config *mc, const fx_task **task);
/* The embedded model (no --model): a small random RoBERTa for the built-in synthetic task. */
#define FX_SYNTH_TRAIN 1200
#define FX_SYNTH_DEV 400
#define FX_SYNTH_LEN 32
void fx_embedded_config(fx_config *c);
/* DIR/fedex_run.json: every setting but --resume, --threads, --out, --overwrite and --transport, and the run id. Read
 * back (from DIR/config.json for runs saved under that name before), strings point into J. */
int fx_settings_find(const char *dir, char *path, size_t cap); /* 1 when DIR holds a run's settings (PATH) */
/* What names a run in its checkpoint: a hash of its saved settings but --rounds, so that a checkpoint is
 * never resumed under the settings of the run that replaced it (16 hex digits). */
void fx_settings_id(const fx_settings *c, char *out, size_t cap);
int fx_settings_write(const fx_settings *c, const char *dir);
char *fx_settings_text(const fx_settings *c, size_t *len);  /* the file's text, malloc'd */
/* Settings from TEXT as fx_settings_text writes it (LABEL names it in errors); strings point into J. */
int fx_settings_parse(const char *text, size_t len, const char *label, fx_settings *c, fx_json *j);
int fx_settings_read(const char *dir, fx_settings *c, fx_json *j);

/* ============================================================================================
 * client.c: one client's local round, with no transport in it
 * ============================================================================================
 * A job in (the round, its hyper-parameters and seed), the global state and the round's residual
 * message in; the client's trained state and its report out. The same code runs in a forked process
 * (shm.c) or wherever a transport puts it. */

typedef struct {
    int32_t round, client;       /* round >= 1; a negative round tells the client to stop */
    int32_t local_epochs;        /* 0: the client sits this round out (fx_client_follow) */
    int32_t batch_size, micro_batch;
    double lr, warmup_ratio, weight_decay;
    uint64_t seed;
} fx_job;
/* The client's report; while a round runs its progress fields are updated in place (the server shows
 * them live when the report lives in memory it can see). */
typedef struct {
    int64_t samples;                 /* size of the client's shard */
    int64_t steps_done, steps_total; /* progress of the current round */
    int64_t samples_done;            /* rows trained on so far this round */
    double t_start;                  /* fx_now() when the round began (CLOCK_MONOTONIC: one clock for all) */
    double loss_sum;                 /* sum of batch losses so far this round */
    double train_loss, seconds;      /* of the finished round */
    double cpu_seconds;              /* CPU time its process (all its threads) spent in the round */
    double core_seconds;             /* sum over its steps of the cores it held x the step's wall time (0
                                        when the transport gives no pace hook) */
    char err[256];                   /* why the client failed */
} fx_report;
typedef struct {
    int id;                      /* the client's number (fault injection: FEDEX_FAULT=kill:ID:ROUND) */
    const fx_config *mc; const fx_adapter_cfg *ac;
    float *base;                 /* the frozen weights fl(W0 + R_acc), kept current by the server */
    const fx_residual *residual; /* the residual at the start (copied): W0 and R_acc */
    uint64_t seed;               /* the run's seed: VeRA's shared projections */
    const fx_dataset *train; const int *rows; int nrows; int pad_id;
    const char *device, *precision; int gpu;
    int check_frozen;            /* also rebuild the frozen weights from the messages and compare them
                                    bit for bit with BASE every round (FEDEX_CHECK_FROZEN=1) */
    double (*pace)(void *ctx);   /* NULL, or called before each CPU training step (micro-batch): where the
                                    transport sets the client's thread count (shm.c: its share of the cores);
                                    returns the cores the step holds (its threads, less when the clients
                                    together run more threads than there are cores) */
    void *pace_ctx;
} fx_client_setup;
typedef struct fx_client fx_client;
fx_client *fx_client_open(const fx_client_setup *s);      /* NULL with fx_err() */
/* One local round: resets the adapters to GLOBAL, applies MSG (when newer than what it holds), trains
 * its epochs with a fresh AdamW and schedule, writes its trainable state to STATE and fills REP.
 * -1 with fx_err() (and REP->err) on failure. */
int fx_client_round(fx_client *cl, const fx_job *job, const float *global, const fx_residual_msg *msg,
                    const float *payload, float *state, fx_report *rep);
/* Another client's shard for the rounds that follow (a process that runs several clients in turn: the
 * state that survives a round, frozen weights and residual, is the same for all of them). */
void fx_client_set_shard(fx_client *cl, int id, const int *rows, int nrows);
/* A round the client sits out (--clients-per-round): only MSG, applied when newer than what it holds, so
 * that a client forming its frozen weights itself (GPU, check_frozen) misses no round's residual. */
int fx_client_follow(fx_client *cl, const fx_residual_msg *msg, const float *payload);
void fx_client_close(fx_client *cl);
int fx_client_leaves(const fx_client *cl, int round); /* fault injection: leave after ROUND (tests) */

/* ============================================================================================
 * gpu.cu: the CUDA backend (built when nvcc is found; FEDEX_CUDA is then defined for every file)
 * ============================================================================================
 * The GPU ops table, and model.c's step and AdamW run on it over a device twin of a model (the host
 * model's tables and views, device data: base, train, grad, AdamW moments, VeRA's projections, the
 * workspace), fp32 master weights. Dropout masks come from a counter-based hash keyed by the site value
 * model.c draws from m->drop: with dropout on, GPU and CPU steps differ in their masks; with it off they
 * agree to rounding. The ops act on the fx_gpu whose fx_gpu_* call is running (one at a time). */
#ifdef FEDEX_CUDA
enum { FX_GPU_FP32 = 0, FX_GPU_TF32 = 1, FX_GPU_BF16 = 2 }; /* matrix products; everything else fp32 */
extern const fx_ops fx_gpu_ops;  /* "cuda": device pointers only, valid inside an fx_gpu_* call */
typedef struct fx_gpu fx_gpu;
/* Usable devices (compute capability 9.0 and later, as built), 0 with the reason in MSG. It initialises
 * the CUDA driver, after which fork() must not be used to run CUDA: call it in the process that will
 * use the GPU (a client, a single-process command), never in a parent before it forks. */
int fx_gpu_probe(char *msg, size_t n);
const char *fx_gpu_precision_name(int precision);          /* "fp32", "tf32", "bf16" */
int fx_gpu_precision_parse(const char *s, int *precision);
/* Uploads M's base weights, trainable buffer, AdamW state and VeRA projections to DEVICE. M is not kept
 * (it may be freed). NULL with fx_err() on a bad device, precision or model. CUDA failures exit. */
fx_gpu *fx_gpu_create(const fx_model *m, int device, int precision);
void fx_gpu_free(fx_gpu *g);
/* fx_model_step's contract: mean loss (labels may be NULL when !TRAIN: loss 0), LOGITS (n, num_labels)
 * or NULL, TRAIN overwrites the gradient (zero for frozen tensors), NAN with fx_err() on bad input. */
float fx_gpu_step(fx_gpu *g, const fx_batch *b, int train, float *logits);
/* A training step whose gradient, times WEIGHT, overwrites (ACCUMULATE 0) or is added to (ACCUMULATE 1)
 * the device's gradient; returns the micro-batch's mean loss. For a batch of bn rows in micro-batches of
 * un rows: weight un / bn, accumulate 0 for the first and 1 for the rest, the batch's loss the sum of
 * weight x loss, as fx_model_step's caller does on the CPU. Weight 1, accumulate 0 is fx_gpu_step(train
 * 1). NAN with fx_err() on bad input or arguments; the gradient is then left as it was. */
float fx_gpu_step_accum(fx_gpu *g, const fx_batch *b, float weight, int accumulate);
void fx_gpu_adamw(fx_gpu *g, float lr, float weight_decay); /* fx_adamw_update on the device */
void fx_gpu_adamw_reset(fx_gpu *g);
/* The dropout stream: training steps after this draw the same masks for the same SEED. */
void fx_gpu_seed(fx_gpu *g, uint64_t seed);
size_t fx_gpu_train_n(const fx_gpu *g);                     /* == fx_model.train.n */
void fx_gpu_get_train(fx_gpu *g, float *dst);               /* (train.n) */
void fx_gpu_set_train(fx_gpu *g, const float *src);
void fx_gpu_get_grad(fx_gpu *g, float *dst);                /* (train.n) */
void fx_gpu_get_base(fx_gpu *g, float *dst);                /* (base.n), residuals included */
/* Adapted layer K's frozen weight W (out, in), as fx_residual_frozen forms it, into the device's base
 * (and its bf16 twin). -1 on a bad K. */
int fx_gpu_set_frozen(fx_gpu *g, int k, const float *W);
/* fx_model_decoder on the device twin (a GPT-2): the same decoder interface, caches in device memory,
 * prompts up to the softmax kernels' 512 tokens. Freed with fx_gpu_decoder_free (not fx_decoder_free),
 * before G. */
int fx_gpu_decoder(fx_gpu *g, int nslots, fx_decoder *d);
void fx_gpu_decoder_free(fx_decoder *d);
#endif

/* ============================================================================================
 * generate.c: greedy and beam search over an fx_decoder, with Hugging Face generate()'s semantics
 * ============================================================================================
 * Deterministic: scores are float64 log-softmaxes of the decoder's float32 logits; equal scores are
 * ordered by (beam, token), lower first. */

typedef enum { FX_STOP_HEURISTIC, FX_STOP_EARLY, FX_STOP_NEVER } fx_early_stop; /* HF early_stopping False, True, "never" */
typedef struct {
    int num_beams;              /* 1: greedy */
    int max_new_tokens;         /* 1 or more */
    int eos;                    /* end token; -1: none (every hypothesis runs to max_new_tokens) */
    double length_penalty;      /* a finished hypothesis scores sum log p / generated_len^length_penalty */
    fx_early_stop early_stopping;
    int no_repeat_ngram;        /* 0: off; N: no N-gram occurs twice */
    int no_repeat_generated;    /* 1: the N-grams of the generated tokens only (the prompt's may recur) */
} fx_gen_cfg;
void fx_gen_e2e(fx_gen_cfg *g, int eos); /* the LoRA paper's E2E decoding: beam 10, lp 0.8, no-repeat 4 over generated, 64 new */
int fx_gen_check(const fx_gen_cfg *g, int vocab); /* -1 with fx_err() on a setting that cannot be run */
/* Continues PROMPT[0..n) (n >= 1, n + max_new_tokens - 1 <= d->max_len): the generated ids into OUT
 * (room for max_new_tokens), the end token included when a hypothesis ended with it, their count in
 * *nout. *score (may be NULL): the chosen hypothesis's score (beam: length-penalised; greedy: sum log p).
 * -1 with fx_err() when the decoder fails or its logits are not finite. */
int fx_generate(const fx_decoder *d, const fx_gen_cfg *g, const int *prompt, int n, int *out, int *nout,
                double *score);
int fx_gen_stop_parse(const char *s, fx_early_stop *out);  /* "false", "true", "never" */
int fx_gen_scope_parse(const char *s, int *generated_only); /* "generated" (the LoRA paper's), "row" (HF's) */
/* The text of generated IDS, malloc'd: special tokens dropped, line breaks made spaces (one generation, one
 * line), spaces at either end trimmed. */
char *fx_gen_text(const fx_tokenizer *tok, const int *ids, int n);
/* E2E NLG (R from fx_e2e_read; the first NGROUPS of its MRs): the continuation of each MR's prompt
 * (fx_e2e_prompt, not padded) as text, one malloc'd string per MR into PRED. -1 with fx_err() naming the
 * MR's line, nothing left allocated. */
int fx_e2e_generate(const fx_decoder *d, fx_tokenizer *tok, const fx_gen_cfg *g, const fx_e2e_rows *r, int ngroups,
                    char **pred);
/* The files e2e-metrics' measure_scores.py reads (each written atomically; either path may be NULL):
 * PRED_PATH one prediction a line, in MR order; REFS_PATH each MR's references one a line, the MRs'
 * groups separated by a blank line. Line breaks inside a text become spaces. */
int fx_e2e_write_outputs(const char *pred_path, const char *refs_path, const fx_e2e_rows *r, int ngroups,
                         char *const *pred);

/* ============================================================================================
 * run.c: the server (rounds over a transport, aggregation, evaluation, outputs, checkpoint, resume)
 * ============================================================================================
 * A transport moves jobs and the global state to the clients and their states and reports back. It
 * owns the run's buffers, so that forked clients can share them in place; another transport (MPI) gives
 * the same pointers plain memory and sends their contents. */

typedef struct fx_run fx_run;
typedef struct {
    const char *name;
    int (*open)(fx_run *R);                    /* the buffers below, sized from R's P, base_n, payload_n */
    int (*start)(fx_run *R, int threads);      /* launch the clients, THREADS cores in all */
    int (*send_round)(fx_run *R, const fx_job *job); /* the job (client id filled in) to every live selected client */
    /* Waits for the clients the round was sent to: done[c] = 1 when its state and report are in
     * client[c] and report[c]. -1 on interrupt, a client's error, or a death under --strict. */
    int (*collect)(fx_run *R, int round, int *done);
    void (*stop)(fx_run *R, int abort);        /* abort: signal them; otherwise ask them to finish */
    void (*close)(fx_run *R);                  /* frees the buffers */
    double (*memory_mb)(const fx_run *R);      /* all the run's processes on this machine (PSS), or NAN */
    /* The round's bytes per participant, as sent (NULL: run.c counts what travels from the sizes) */
    void (*bytes)(const fx_run *R, int64_t *up, int64_t *down);
} fx_transport;

struct fx_run {
    /* settings */
    fx_settings cfg;
    fx_config mc;
    fx_adapter_cfg ac;
    const fx_task *task;
    int n;                           /* clients */
    /* data */
    fx_tokenizer *tok;
    fx_dataset train, dev;
    int **rows, *counts;             /* each client's shard */
    int pad_id;
    int *gpu_of;                     /* (n) device of each client (--client-gpus) */
    /* sizes of the buffers */
    size_t P, base_n, payload_n;     /* trainable floats, base floats, residual payload floats */
    size_t base_bytes;               /* fx_base_bytes: the base buffer (bf16 matrices under --precision bf16) */
    /* the transport and the buffers it owns */
    const fx_transport *tp;
    void *tp_state;
    float *base;                     /* (base_n) frozen weights fl(W0 + R_acc) */
    float *global;                   /* (P) global trainable state */
    float **client;                  /* n x (P) each client's trained state */
    fx_report *report;               /* (n) */
    fx_residual_msg *msg;            /* the last round's residual */
    float *payload;                  /* (payload_n) its factors or dense matrices */
    int *alive;                      /* (n) */
    int *selected;                   /* (n) this round's participants (--clients-per-round), set by run.c */
    int client_cores;                /* the cores the clients share (shm: the run's threads); 0: unknown (MPI),
                                        and metrics.jsonl's client_idle is null */
    /* server */
    fx_model srv;                    /* base = the buffer above; evaluates the global model */
    fx_residual res;                 /* W0 and R_acc of every adapted layer */
    float *prev_global, *scratch;
    double *err_work;
    void *srv_gpu;                   /* --server-gpu: fx_gpu, the server's device copy for evaluation */
    /* results */
    int round0;                      /* rounds already done (resume) */
    int round_now;
    double best; int best_round;
    char **lines; int nlines;        /* metrics.jsonl */
    double *hist_metric, *hist_err;  /* per round, for `fedex demo` */
    int quiet;                       /* `fedex demo`: one line per round, no per-client lines */
    int lock_fd;                     /* the run folder's lock, held for the run */
    int settings_written;            /* with the first round's outputs */
    uint64_t base_hash;              /* fx_frozen_hash of the base: in the checkpoint, checked on resume and export */
    /* E2E: the test MRs the global model continues (e2e_run.c) */
    struct fx_e2e_test *e2e;         /* NULL: no test generation (not an lm task, or --eval-every -1) */
    struct fx_inst_eval *inst;       /* gsm8k, mc: the dev rows generated or scored (instruct_run.c); NULL otherwise */
    double t_round, secs_rounds;     /* the current round's start; seconds of the rounds timed so far */
    int rounds_timed;                /* rounds this process ran to the end (the estimate of time left) */
};
/* Runs R (cfg set and checked) to the end; returns the exit status: 0, 1 (error), 130 (interrupted). */
int fx_run_federated(fx_run *R);
int fx_run_interrupted(void);        /* SIGINT/SIGTERM seen by the server */
void fx_run_interrupt(int sig);      /* as if the server had seen SIG (a client died of the group's Ctrl-C) */
int fx_run_live(void);               /* live progress lines: standard error is a terminal, TERM is not dumb */
/* For the transports while they wait: the live per-client lines (TTY: fx_run_live()), and the line for
 * a client that finished (on standard output, unless the live lines show it on a terminal). */
void fx_run_progress(fx_run *R, int round, const int *pending, int tty, int *drawn);
void fx_run_client_done(const fx_run *R, int round, int c, int tty);
/* Seconds left in the run while round ROUND is FRAC (0..1) done, from the rounds timed so far; NAN when
 * nothing is known yet. */
double fx_run_remaining(const fx_run *R, int round, double frac);
/* What a client needs to run: its setup from the run (shared base or not). */
void fx_run_client_setup(const fx_run *R, int c, fx_client_setup *s);
/* Restores a run's checkpoint DIR/state.safetensors into M (whose base holds the original W0): the
 * global state into GLOBAL, R_acc into RES (fx_residual_init'ed from M), M's adapted weights set to
 * fl(W0 + R_acc). Everything read is validated (metadata, sizes, finite values). Returns the round, -1
 * with fx_err(). */
int fx_run_load_state(const char *dir, fx_model *m, float *global, fx_residual *res, double *best, int *best_round,
                      const char *id /* fx_settings_id of the settings beside it, checked when the checkpoint has one */,
                      const uint64_t *base_hash /* fx_frozen_hash(M, RES) when the caller has it, or NULL */);
/* e2e_run.c: the server's test generation for E2E runs: the test MRs read once (fx_run_e2e_open; nothing
 * for other tasks or --eval-every -1), then at the rounds due (every --eval-every and the last) one beam
 * search per MR with the global model, scored (BLEU, NIST, ROUGE-L, CIDEr), OUT/e2e_predictions_round<N>.txt
 * and OUT/e2e_references.txt written; fx_run_e2e_json adds the round's scores and the best round by BLEU
 * to its metrics line. */
int fx_run_e2e_open(fx_run *R);
int fx_run_e2e_round(fx_run *R, int round);      /* generates and scores when ROUND is due; -1 with fx_err() */
void fx_run_e2e_json(const fx_run *R, FILE *f);  /* `, "test": {...}, "best_bleu": x, "best_bleu_round": r` */
void fx_run_e2e_close(fx_run *R);
/* instruct_run.c: the instruction tasks in a run: train and dev from DATA/train.jsonl (or --train-file) and
 * DATA/dev.jsonl in the model's prompt format (fx_run_inst_load, from load_data); for gsm8k and mc the
 * dev rows' test metric at the rounds due (every --eval-every and the last), with the best round, in the
 * round's metrics line as "gsm8k": {"exact_match"} or "mc": {"acc", "acc_norm"}; gsm8k's answers in
 * OUT/gsm8k_predictions_round<N>.jsonl. */
int fx_run_inst_load(fx_run *R);
int fx_run_inst_open(fx_run *R);
int fx_run_inst_round(fx_run *R, int round);
void fx_run_inst_json(const fx_run *R, FILE *f);
void fx_run_inst_close(fx_run *R);
/* The test metric of the model behind D on the first N rows of R (task T): gsm8k's exact match of greedy
 * answers of up to MAX_NEW tokens (each answer a JSON line into PRED when not NULL), or mc's acc and
 * acc_norm (every choice's log-likelihood, row by row, into LL when not NULL). -1 with fx_err() naming
 * the row's line. */
typedef struct { int rows; double exact_match, acc, acc_norm; } fx_inst_scores;
/* The choice picked among N by their log-likelihoods LL: the largest LL (LEN NULL: acc) or LL / LEN
 * (acc_norm, LEN the choices' lengths in characters); the first of equals. */
int fx_mc_pick(const double *ll, const double *len, int n);
int fx_inst_evaluate(const fx_decoder *d, fx_tokenizer *tok, const fx_task *t, const fx_inst_rows *r, int n, int max_new,
                     FILE *pred, double *ll, fx_inst_scores *s);
/* Base weights as a run starts: random (seeded, HF's initialisation) then the folder's checkpoint. */
int fx_run_init_weights(const fx_settings *c, fx_model *m);
/* LOGITS (n, L) of every row of D, in D's order, and the mean loss (NAN with fx_err() on a bad batch).
 * Rows go in batches of BS in order of length, so a batch pads little; the model ignores padding. */
typedef float (*fx_eval_step)(void *backend, const fx_batch *b, float *logits);
float fx_eval_step_cpu(void *model, const fx_batch *b, float *logits);
double fx_eval_split(const fx_dataset *d, int bs, int pad, int L, fx_eval_step step, void *backend, float *logits);

/* ============================================================================================
 * score.c, ptb.c, case_tables.c: the E2E NLG metrics as e2e-metrics computes them
 * ============================================================================================
 * BLEU and NIST as its Python port of mteval-v13a (measure_scores.py -p): mteval's tokenisation, case
 * folded, BLEU's brevity penalty against the closest reference length, NIST's information weights
 * counted over all references. ROUGE-L (beta 1.2) and CIDEr-D (n 4, sigma 6, idf from the evaluated
 * references) as the pycocoevalcap scorers it calls, on text tokenised as its Stanford PTB tokenizer
 * 3.4.1 (-preserveLines -lowerCase) does, punctuation tokens dropped. METEOR is not computed. */

typedef struct { double bleu, nist, rouge_l, cider; } fx_e2e_scores;
/* n items: hyp[i] one hypothesis (UTF-8); refs[i][0..nref[i]-1] its references (nref[i] >= 1).
 * tokenized: inputs already tokenised (split on spaces only, no case folding or mteval/PTB
 * tokenisation). An empty hypothesis is scored as e2e-metrics scores an empty line. NIST is NAN where
 * the reference's NIST divides by zero (some n <= 5 with the hypotheses' n-gram slots summing to zero).
 * 0, or -1 with fx_seterr (invalid UTF-8, an item without references). */
int fx_e2e_score(int n, char *const *hyp, char *const *const *refs, const int *nref, int tokenized,
                 fx_e2e_scores *out);

/* The files e2e-metrics' measure_scores.py reads in its default mode: hypotheses one a line; references
 * grouped per item, groups separated by blank lines (a file without blank lines holds one reference per
 * item). Lines are stripped of white space as it strips them. Errors name path:line. */
typedef struct {
    int n;           /* items */
    char **text;     /* hypotheses: n; references: all of them, group after group */
    char ***refs;    /* references: refs[i] points into text, nref[i] of them; NULL for hypotheses */
    int *nref;
    char *buf;       /* the file's bytes, which text[] points into */
} fx_e2e_lines;
int fx_e2e_read_hyps(const char *path, fx_e2e_lines *out);
int fx_e2e_read_refs(const char *path, fx_e2e_lines *out);
void fx_e2e_lines_free(fx_e2e_lines *l);
/* Reads both files, checks the item counts agree, scores. */
int fx_e2e_score_files(const char *hyp_path, const char *ref_path, int tokenized, fx_e2e_scores *out);
/* fx_e2e_score of PRED (one per MR, the first NGROUPS of R's) against each MR's references in R (generate.c). */
int fx_e2e_score_rows(const fx_e2e_rows *r, int ngroups, char *const *pred, fx_e2e_scores *s);

/* ptb.c: the Stanford PTB tokenizer 3.4.1's rules as e2e-metrics runs it (-preserveLines -lowerCase) on
 * CAPTIONS[0..n-1], which it joins with newlines (a rule's look-ahead sees the next caption, as there).
 * OUT[i]: caption i's tokens, lower-cased, joined by single spaces, punctuation tokens removed as
 * pycocoevalcap removes them (malloc'd). 0, or -1 with fx_seterr on invalid UTF-8. */
int fx_ptb_tokenize(int n, const char *const *captions, char **out);

/* case_tables.c, generated by tools/gen_case.py: str.lower()'s mapping and a few properties. */
typedef struct { uint32_t lo, hi; int32_t delta; uint32_t step; } fx_case_run;
extern const fx_case_run fx_lower_runs[];
extern const int fx_lower_nruns;
enum { FX_CP_CASED = 1, FX_CP_IGNORABLE = 2, FX_CP_DIGIT = 4, FX_CP_UPPER = 8 };
extern const fx_uni_range fx_case_ranges[];
extern const int fx_case_nranges;
int fx_cp_flags(uint32_t cp);                       /* FX_CP_* of CP (score.c) */
/* A growing buffer of code points (score.c). fx_cps_replace: every non-overlapping ASCII LIT (caseless:
 * its letters in either case) replaced by REP, left to right, as re.sub and Java's replaceAll do;
 * SCRATCH's storage is swapped in. */
typedef struct { uint32_t *v; int n, cap; } fx_cps;
void fx_cps_put(fx_cps *b, uint32_t c);
void fx_cps_str(fx_cps *b, const char *ascii);
void fx_cps_replace(fx_cps *b, fx_cps *scratch, const char *lit, const char *rep, int caseless);
/* Lower-cases CP[0..n-1] as Python's str.lower (JAVA 0) or Java's toLowerCase (JAVA 1) does: U+0130 to
 * two code points, the final-sigma rule each its way. OUT has room for 2n; returns its length (score.c). */
int fx_lower_cps(const uint32_t *cp, int n, int java, uint32_t *out);

/* ============================================================================================
 * shm.c: the transport of forked clients on this machine, sharing one POSIX shared-memory segment
 * ============================================================================================ */

extern const fx_transport fx_transport_shm;    /* the default */
/* The threads of client RANK (0-based, among the RUNNING clients still training this round) when they
 * share CORES: cores / running, the first cores % running one more, so that they add up to CORES; at
 * least 1 (more clients than cores: one each). RUNNING <= 0: all CORES. */
int fx_thread_share(int cores, int running, int rank);

/* ============================================================================================
 * mpi.c: the transport of clients on other machines, the ranks of mpirun (built where mpicc is found)
 * ============================================================================================ */

extern const fx_transport fx_transport_mpi;    /* rank 0's side (only in an MPI build) */
int fx_mpi_built(void);                        /* 1 when this build has MPI */
/* `fedex train --transport mpi` on every rank: initialises MPI; rank 0 runs R (settings checked) over
 * fx_transport_mpi, the other ranks serve its clients. Returns the exit status; without MPI in the build,
 * says how to get it and returns 2. */
int fx_mpi_train(fx_run *R);
/* This process's rank as mpirun's environment gives it before MPI starts (OpenMPI, PMIx, PMI), or -1. */
int fx_mpi_env_rank(void);

/* ============================================================================================
 * report.c: a run read back from its folder; the paper-style table. plot.c: the SVG charts.
 * grid.c: every method on a list of tasks, skipping finished runs and resuming stopped ones.
 * ============================================================================================ */

typedef struct {
    int round;
    double value, best;              /* the task's dev metric this round, the best so far */
    int best_round;
    double dev_loss, train_loss;     /* train: the clients' mean weighted by samples */
    double err_max, dev_max;         /* the method's aggregation error and the deviation, max over layers */
    double seconds;                  /* the round's wall time */
} fx_log_round;
typedef struct {
    char *dir, *method, *task, *metric; /* method as metrics.jsonl names it; task "synthetic" without one */
    int n;                           /* rounds read */
    fx_log_round *r;                 /* (n) */
    int nlayers;
    char **layer;                    /* (nlayers) the adapted layers' names, in metrics.jsonl's order */
    double *dev;                     /* (nlayers, n) deviation of layer k in round i at [k * n + i]; NAN where absent */
    double best; int best_round;     /* from the last round read */
    int rounds_planned;              /* the settings' --rounds */
} fx_runlog;
int fx_runlog_read(const char *dir, fx_runlog *L);  /* -1 with fx_err() naming the file and line */
void fx_runlog_free(fx_runlog *L);
/* The layer's depth, the first all-digit component of its name ("encoder.layer.3.attention.self.query"
 * -> 3, TARGET "attention.self.query"); -1 (TARGET the whole name) when it has none. */
int fx_layer_depth(const char *name, const char **target);
/* Method rows, task columns: best dev metric (round), average. FORMAT "md" or "csv". */
int fx_table_write(const fx_runlog *runs, int n, const char *format, FILE *f);
/* One SVG of the runs: dev metric per round, train and dev loss per round, and for each run with a
 * deviation its layer x round heat map and its deviation by depth. Deterministic for the same input. */
int fx_plot_svg(const fx_runlog *runs, int n, FILE *f);
/* The runs as WHAT ("svg", "md" or "csv") into PATH, atomically (NULL or "-": standard output). */
int fx_runs_write(const char *path, const fx_runlog *runs, int n, const char *what);

typedef struct {
    const char *out;                 /* the grid's folder: runs/TASK/METHOD, table.md, table.csv, plots/ */
    const char *model, *data;        /* NULL model: the embedded one and the synthetic task */
    const char *tasks, *methods;     /* comma-separated; NULL: the paper's tasks, every method agg.c knows */
    int quick, dry_run;              /* quick: a few short rounds; dry_run: the plan and the estimate only */
    const char *config_file;         /* --config before its model is made: the shapes (the estimate, the checks) */
    int check_only;                  /* check the lists and every run's options, then return 0 (nothing printed) */
    const char *exe;                 /* the fedex program that runs each `fedex train` */
    const char *const *extra; int nextra; /* train options for every run (after `--`) */
} fx_grid_opts;
/* 0 when every run is complete and the results are written, 1 when interrupted (resumable), -1 with
 * fx_err() on an error, -2 with fx_err() on a usage error (the lists or a run's options; nothing ran). */
int fx_grid_run(const fx_grid_opts *o);

#endif
