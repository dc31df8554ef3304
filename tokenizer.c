/* tokenizer.c: byte-level BPE exactly as Hugging Face's GPT-2 / RoBERTa tokenizers: vocab.json and
 * merges.txt, the GPT-2 pre-tokenisation pattern (written out by hand), merges lowest rank first, RoBERTa's
 * special tokens and longest_first truncation, and decoding. It adds no prefix space and does no Unicode
 * normalisation (neither does the reference). */
#include "fedex.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ============================================================================================
 * limits
 * ============================================================================================ */

/* Largest id accepted from vocab.json: real vocabularies hold about 50k tokens; a larger id is a typo
 * that would otherwise make us allocate gigabytes. */
#define TOK_MAX_ID (1 << 24)
/* Words longer than this are not cached: they are rare, and an adversarial text of one huge word must not
 * grow the cache without bound. Their BPE is O(n log n) anyway. */
#define CACHE_MAX_WORD 256
/* The cache stops growing at this many distinct words, or this many bytes of words and ids: about 120 MB
 * at the worst with its hash table (GLUE's largest task has under 100k distinct words). Encoding stays
 * exact past it, only slower. */
#define CACHE_MAX_WORDS (1 << 20)
#define CACHE_MAX_BYTES ((size_t)64 << 20)

/* ============================================================================================
 * GPT-2's byte-to-unicode table
 * ============================================================================================
 * Every byte gets a printable character so that vocab.json can hold any byte string as text: the bytes
 * '!'..'~', 0xA1..0xAC and 0xAE..0xFF stand for themselves (as U+0021.. etc.), and the other 68 bytes, in
 * increasing order, take U+0100, U+0101, ... (so a space, byte 0x20, reads as U+0120 'Ġ'). */

#define BYTE_CP_END (0x100 + 68) /* every byte's character lies below this */

/* cp_of[b]: the character of byte b; byte_of[cp]: the byte of character cp < BYTE_CP_END, or -1. */
static void byte_tables(uint32_t cp_of[256], int byte_of[BYTE_CP_END]) {
    uint32_t next = 0x100;
    for (int c = 0; c < BYTE_CP_END; c++) byte_of[c] = -1;
    for (int b = 0; b < 256; b++) {
        int self = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        cp_of[b] = self ? (uint32_t)b : next++;
        byte_of[cp_of[b]] = b;
    }
}

/* ============================================================================================
 * hash tables
 * ============================================================================================
 * Two open-addressing tables with linear probing, both at most half full: byte strings to two ints (the
 * vocabulary while loading: token -> id; the word cache: word -> ids), and id pairs to a merge. */

static uint64_t hash_bytes(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ULL;
    return h ^ (h >> 29);
}

typedef struct {
    size_t cap, n;       /* slots (a power of two), used slots */
    uint64_t *hash;      /* (cap) 0 marks an empty slot */
    size_t *koff;        /* (cap) key offset in arena */
    uint32_t *klen;      /* (cap) */
    int32_t *v0, *v1;    /* (cap) the values */
    char *arena; size_t alen, acap; /* keys, back to back */
} strmap;

static void strmap_init(strmap *m, size_t cap) {
    memset(m, 0, sizeof *m);
    m->cap = cap;
    m->hash = fx_calloc(cap, sizeof *m->hash);
    m->koff = fx_malloc(cap * sizeof *m->koff);
    m->klen = fx_malloc(cap * sizeof *m->klen);
    m->v0 = fx_malloc(cap * sizeof *m->v0);
    m->v1 = fx_malloc(cap * sizeof *m->v1);
}

static void strmap_free(strmap *m) {
    free(m->hash); free(m->koff); free(m->klen); free(m->v0); free(m->v1); free(m->arena);
    memset(m, 0, sizeof *m);
}

static uint64_t strmap_h(const char *s, size_t n) { uint64_t h = hash_bytes(s, n); return h ? h : 1; }

/* Slot of key S[0..n) with hash H: where it is, or the empty slot where it would go. */
static size_t strmap_slot(const strmap *m, const char *s, size_t n, uint64_t h) {
    size_t i = (size_t)h & (m->cap - 1);
    while (m->hash[i] && !(m->hash[i] == h && m->klen[i] == n && !memcmp(m->arena + m->koff[i], s, n)))
        i = (i + 1) & (m->cap - 1);
    return i;
}

static int strmap_get(const strmap *m, const char *s, size_t n, int32_t *v0, int32_t *v1) {
    size_t i = strmap_slot(m, s, n, strmap_h(s, n));
    if (!m->hash[i]) return 0;
    *v0 = m->v0[i];
    if (v1) *v1 = m->v1[i];
    return 1;
}

static void strmap_grow(strmap *m) {
    strmap old = *m;
    m->cap *= 2;
    m->hash = fx_calloc(m->cap, sizeof *m->hash);
    m->koff = fx_malloc(m->cap * sizeof *m->koff);
    m->klen = fx_malloc(m->cap * sizeof *m->klen);
    m->v0 = fx_malloc(m->cap * sizeof *m->v0);
    m->v1 = fx_malloc(m->cap * sizeof *m->v1);
    for (size_t i = 0; i < old.cap; i++) {
        if (!old.hash[i]) continue;
        size_t j = (size_t)old.hash[i] & (m->cap - 1);
        while (m->hash[j]) j = (j + 1) & (m->cap - 1);
        m->hash[j] = old.hash[i]; m->koff[j] = old.koff[i]; m->klen[j] = old.klen[i];
        m->v0[j] = old.v0[i]; m->v1[j] = old.v1[i];
    }
    free(old.hash); free(old.koff); free(old.klen); free(old.v0); free(old.v1);
}

/* Inserts a new key; 0 if it was already there (nothing changed). */
static int strmap_put(strmap *m, const char *s, size_t n, int32_t v0, int32_t v1) {
    if (2 * (m->n + 1) > m->cap) strmap_grow(m);
    uint64_t h = strmap_h(s, n);
    size_t i = strmap_slot(m, s, n, h);
    if (m->hash[i]) return 0;
    if (m->alen + n > m->acap) {
        m->acap = 2 * m->acap + n + 4096;
        m->arena = fx_realloc(m->arena, m->acap);
    }
    memcpy(m->arena + m->alen, s, n);
    m->hash[i] = h; m->koff[i] = m->alen; m->klen[i] = (uint32_t)n; m->v0[i] = v0; m->v1[i] = v1;
    m->alen += n;
    m->n++;
    return 1;
}

/* Merges: the pair of ids (left, right) -> its rank (line order in merges.txt) and the merged id. */
typedef struct {
    size_t cap;          /* a power of two, at least twice the merge count */
    uint64_t *key;       /* (cap) (left << 32 | right) + 1; 0 marks an empty slot */
    int32_t *rank, *id;  /* (cap) */
} pairmap;

static uint64_t pair_key(int32_t a, int32_t b) { return (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1; }

static size_t pair_slot(const pairmap *m, uint64_t k) {
    uint64_t h = k * 0x9E3779B97F4A7C15ULL;
    size_t i = (size_t)(h >> 20) & (m->cap - 1);
    while (m->key[i] && m->key[i] != k) i = (i + 1) & (m->cap - 1);
    return i;
}

/* ============================================================================================
 * the tokenizer
 * ============================================================================================ */

/* GPT-2's tokenizer adds nothing around a text (add_bos_token is false): a text is its own ids, a pair
 * the two texts' ids one after the other. */
static const fx_text_template no_specials = {0, 0, 0, 0, 0};

/* A token Hugging Face matches in text before pre-tokenisation (tokenizer.json's added_tokens). */
typedef struct {
    char *text; int len, id;
    int special;             /* dropped by decoding with skip_special */
    int lstrip, rstrip;      /* the white space (\s) before / after it goes with it */
    int normalized;          /* matched in a second pass, on what the first pass left */
} added_tok;

struct fx_tokenizer {
    int vocab_size;          /* largest id + 1 */
    char *dec;               /* the bytes every token stands for, back to back */
    size_t *dec_off;         /* (vocab_size + 1) token i is dec[dec_off[i] .. dec_off[i+1]) */
    uint8_t *present;        /* (vocab_size) 1 for ids the files define */
    uint8_t *special;        /* (vocab_size) 1 for the special tokens (dropped by skip_special) */
    int bos, eos, pad;       /* -1 where the folder names none (bos, eos of a tokenizer.json) */
    int tbos, teos;          /* the tokens a template puts around texts (bos and eos unless a
                              * tokenizer.json's post-processor names others) */
    const fx_text_template *tpl; /* what Hugging Face's tokenizer of this vocabulary puts around a text */
    fx_text_template own;    /* tokenizer.json's post-processor as a template (tpl points here) */
    /* The special tokens Hugging Face splits text on before BPE ("<s>" typed in a sentence becomes id 0):
     * RoBERTa's <s> </s> <unk> <pad> <mask>, or GPT-2's <|endoftext|>. Only <mask> is lstrip: the white
     * space before it goes with it. (vocab.json only: a tokenizer.json lists its own, in added.) */
    int nsplit;
    struct { char text[16]; int len, id, lstrip; } split[5];
    /* tokenizer.json only */
    int json;                /* 1: read from tokenizer.json (added, its pre-tokenizer, merge order) */
    int llama3;              /* 1: Llama-3's Split pattern, else GPT-2's */
    int ignore_merges;       /* 1: a piece that is itself a vocabulary token is that token */
    added_tok *added; int nadded; /* longest first */
    uint8_t added_first[256];     /* 1 for a byte some added token starts with */
    strmap whole;            /* vocabulary tokens by their bytes (ignore_merges, fx_tok_token_id) */
    int32_t byte_id[256];    /* id of the one-character token of each byte */
    pairmap merges;
    strmap cache;            /* word bytes -> (offset in cache_ids, count) */
    int32_t *cache_ids; size_t cache_n, cache_cap;
    /* scratch of one BPE run, grown to the longest word seen */
    int32_t *sym, *prev, *next; uint64_t *heap, *defer; int scratch_cap;
    /* scratch of one sequence: the two texts' ids before truncation */
    int32_t *ia, *ib; int na, nb, capa, capb;
};

/* ============================================================================================
 * vocabulary and merges (vocab.json + merges.txt, or tokenizer.json's model)
 * ============================================================================================ */

/* VJ, an object token -> id, into VOCAB; *maxid the largest id. */
static int read_vocab(const fx_json *vj, const char *path, strmap *vocab, int *maxid) {
    if (!vj || vj->type != FX_JOBJ || vj->n == 0) {
        fx_seterr("%s: expected a JSON object of token -> id", path);
        return -1;
    }
    *maxid = -1;
    for (size_t i = 0; i < vj->n; i++) {
        const fx_json *v = &vj->kids[i];
        if (v->type != FX_JNUM || !v->is_int || v->inum < 0 || v->inum >= TOK_MAX_ID) {
            fx_seterr("%s: token \"%.40s\": id must be an integer in [0, %d)", path, vj->keys[i], TOK_MAX_ID);
            return -1;
        }
        if (vj->klens[i] == 0 || vj->klens[i] > UINT32_MAX) {
            fx_seterr("%s: entry %zu: token of length %zu", path, i, vj->klens[i]);
            return -1;
        }
        if (!strmap_put(vocab, vj->keys[i], vj->klens[i], (int32_t)v->inum, 0)) {
            fx_seterr("%s: token \"%.40s\" appears twice", path, vj->keys[i]);
            return -1;
        }
        if ((int)v->inum > *maxid) *maxid = (int)v->inum;
    }
    return 0;
}

/* The bytes of token S[0..n) into OUT (room for n), as Hugging Face's ByteLevel decoder gives them: every
 * character back through the byte table, or, when some character is outside it, the token's own UTF-8
 * unchanged (an added token such as "中文"). *mapped is 1 in the first case. -1 if S is not UTF-8. */
static long token_bytes(const char *s, size_t n, const int byte_of[BYTE_CP_END], char *out, int *mapped) {
    size_t k = 0, o = 0;
    *mapped = 1;
    while (k < n) {
        uint32_t cp;
        int m = fx_utf8_next(s + k, n - k, &cp);
        if (m <= 0) return -1;
        int b = cp < BYTE_CP_END ? byte_of[cp] : -1;
        if (b < 0) { *mapped = 0; memcpy(out, s, n); return (long)n; }
        out[o++] = (char)b;
        k += (size_t)m;
    }
    return (long)o;
}

/* The decoding tables from every id's token text (SRC[id], SLEN[id]; NULL for an id nothing defines),
 * and T->whole from the vocabulary's ids (those flagged in MODEL; every id when it is NULL). */
static int build_tokens(fx_tokenizer *t, const char *path, const char *const *src, const size_t *slen,
                        const uint8_t *model) {
    uint32_t cp_of[256];
    int byte_of[BYTE_CP_END];
    byte_tables(cp_of, byte_of);
    size_t total = 0;
    for (int id = 0; id < t->vocab_size; id++) total += slen[id];
    t->present = fx_calloc((size_t)t->vocab_size, 1);
    t->special = fx_calloc((size_t)t->vocab_size, 1);
    t->dec_off = fx_calloc((size_t)t->vocab_size + 1, sizeof *t->dec_off);
    t->dec = fx_malloc(total + 1);
    size_t o = 0;
    for (int id = 0; id < t->vocab_size; id++) {
        t->dec_off[id] = o;
        if (!src[id]) continue;
        t->present[id] = 1;
        int mapped;
        long n = token_bytes(src[id], slen[id], byte_of, t->dec + o, &mapped);
        if (n < 0) {
            fx_seterr("%s: token \"%.40s\" is not valid UTF-8", path, src[id]);
            return -1;
        }
        /* a piece of text is only ever looked up as bytes that all came through the table */
        if ((!model || model[id]) && mapped) strmap_put(&t->whole, t->dec + o, (size_t)n, id, 0);
        o += (size_t)n;
    }
    t->dec_off[t->vocab_size] = o;
    return 0;
}

static int vocab_id(const strmap *vocab, const char *tok) {
    int32_t id;
    return strmap_get(vocab, tok, strlen(tok), &id, NULL) ? id : -1;
}

static void merges_init(fx_tokenizer *t, size_t n) {
    t->merges.cap = 16;
    while (t->merges.cap < 2 * n + 2) t->merges.cap *= 2;
    t->merges.key = fx_calloc(t->merges.cap, sizeof *t->merges.key);
    t->merges.rank = fx_malloc(t->merges.cap * sizeof *t->merges.rank);
    t->merges.id = fx_malloc(t->merges.cap * sizeof *t->merges.id);
}

/* The merge of A[0..na) and B[0..nb) at RANK; both and their concatenation must be tokens. A pair given
 * twice keeps the rank of its last line, as Python's dict(zip(merges, range(n))) and Hugging Face's
 * HashMap both do. 0, or -1 (nothing said: the caller names the place). */
static int add_merge(fx_tokenizer *t, const strmap *vocab, const char *a, size_t na, const char *b, size_t nb,
                     int rank) {
    int32_t ia, ib, iab;
    char small[256], *ab = na + nb <= sizeof small ? small : fx_malloc(na + nb);
    memcpy(ab, a, na);
    memcpy(ab + na, b, nb);
    int ok = strmap_get(vocab, a, na, &ia, NULL) && strmap_get(vocab, b, nb, &ib, NULL) &&
             strmap_get(vocab, ab, na + nb, &iab, NULL);
    if (ab != small) free(ab);
    if (!ok) return -1;
    uint64_t k = pair_key(ia, ib);
    size_t s = pair_slot(&t->merges, k);
    t->merges.key[s] = k;
    t->merges.rank[s] = rank;
    t->merges.id[s] = iab;
    return 0;
}

static int load_merges(fx_tokenizer *t, const char *path, const strmap *vocab) {
    char *text;
    size_t len;
    if (fx_read_file(path, &text, &len) != 0) return -1;
    size_t lines = 1;
    for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
    merges_init(t, lines);
    int line = 0, rank = 0;
    size_t p = 0;
    while (p < len) {
        size_t e = p;
        while (e < len && text[e] != '\n') e++;
        size_t n = e, start = p;
        p = e + 1;
        line++;
        if (n > start && text[n - 1] == '\r') n--;
        if (line == 1 && n - start >= 8 && !memcmp(text + start, "#version", 8)) continue;
        if (n == start) continue; /* the empty last line */
        /* "LEFT RIGHT": two tokens, one space between them (the merged token is their concatenation) */
        size_t sp = start;
        while (sp < n && text[sp] != ' ') sp++;
        if (sp == start || sp + 1 >= n || memchr(text + sp + 1, ' ', n - sp - 1) || memchr(text + start, 0, n - start)) {
            fx_seterr("%s:%d: expected two tokens separated by one space", path, line);
            free(text);
            return -1;
        }
        if (add_merge(t, vocab, text + start, sp - start, text + sp + 1, n - sp - 1, rank++) != 0) {
            fx_seterr("%s:%d: merge of \"%.*s\" is not in the vocabulary", path, line, (int)(n - start),
                      text + start);
            free(text);
            return -1;
        }
    }
    free(text);
    return 0;
}

/* The id of each byte's one-character token; every byte must have one. */
static int find_byte_ids(fx_tokenizer *t, const strmap *vocab, const char *path) {
    uint32_t cp_of[256];
    int byte_of[BYTE_CP_END];
    byte_tables(cp_of, byte_of);
    for (int b = 0; b < 256; b++) {
        char s[4];
        int n = fx_utf8_put(s, cp_of[b]);
        int32_t id;
        if (!strmap_get(vocab, s, (size_t)n, &id, NULL)) {
            fx_seterr("%s: no token for byte 0x%02X (\"%.*s\"): not a byte-level vocabulary", path, b, n, s);
            return -1;
        }
        t->byte_id[b] = id;
    }
    return 0;
}

/* vocab.json + merges.txt, as GPT-2's and RoBERTa's slow tokenizers read them. */
static int load_vocab_merges(fx_tokenizer *t, const char *dir) {
    size_t dl = strlen(dir) + 16;
    char *vpath = fx_malloc(dl), *mpath = fx_malloc(dl);
    snprintf(vpath, dl, "%s/vocab.json", dir);
    snprintf(mpath, dl, "%s/merges.txt", dir);
    strmap vocab;
    strmap_init(&vocab, 1 << 16);
    fx_json j;
    int rc = -1, maxid;
    const char **src = NULL;
    size_t *slen = NULL;
    if (fx_json_load(vpath, &j) != 0) goto out_nojson;
    if (read_vocab(&j, vpath, &vocab, &maxid) != 0) goto out;
    t->vocab_size = maxid + 1;
    src = fx_calloc((size_t)t->vocab_size, sizeof *src);
    slen = fx_calloc((size_t)t->vocab_size, sizeof *slen);
    for (size_t i = 0; i < j.n; i++) {
        int id = (int)j.kids[i].inum;
        if (src[id]) {
            fx_seterr("%s: id %d is given to two tokens (\"%.40s\" and another)", vpath, id, j.keys[i]);
            goto out;
        }
        src[id] = j.keys[i];
        slen[id] = j.klens[i];
    }
    if (build_tokens(t, vpath, src, slen, NULL) != 0 || load_merges(t, mpath, &vocab) != 0 ||
        find_byte_ids(t, &vocab, vpath) != 0)
        goto out;
    static const char *const specials[] = {"<s>", "</s>", "<pad>", "<unk>", "<mask>", "<|endoftext|>"};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++) {
        int id = vocab_id(&vocab, specials[i]);
        if (id >= 0) t->special[id] = 1;
    }
    int s = vocab_id(&vocab, "<s>"), e = vocab_id(&vocab, "</s>"), eot = vocab_id(&vocab, "<|endoftext|>");
    int pad = vocab_id(&vocab, "<pad>");
    if (s >= 0 && e >= 0) { t->bos = s; t->eos = e; t->tpl = &fx_roberta.text; }
    else if (eot >= 0) { t->bos = t->eos = eot; t->tpl = &no_specials; }
    else {
        fx_seterr("%s: neither <s> and </s> (RoBERTa) nor <|endoftext|> (GPT-2) is in the vocabulary", vpath);
        goto out;
    }
    t->pad = pad >= 0 ? pad : t->eos;
    t->tbos = t->bos;
    t->teos = t->eos;
    static const char *const roberta[] = {"<s>", "</s>", "<unk>", "<pad>", "<mask>"};
    for (int i = 0; i < (s >= 0 ? 5 : 1); i++) {
        const char *str = s >= 0 ? roberta[i] : "<|endoftext|>";
        int id = vocab_id(&vocab, str);
        if (id < 0) continue;
        int k = t->nsplit++;
        snprintf(t->split[k].text, sizeof t->split[k].text, "%s", str);
        t->split[k].len = (int)strlen(str);
        t->split[k].id = id;
        t->split[k].lstrip = !strcmp(str, "<mask>");
    }
    rc = 0;
out:
    fx_json_free(&j);
out_nojson:
    free(src); free(slen);
    strmap_free(&vocab);
    free(vpath); free(mpath);
    return rc;
}

/* ============================================================================================
 * tokenizer.json
 * ============================================================================================
 * Hugging Face's one-file format, read as its Rust library reads it, for byte-level BPE: the model BPE
 * (merges as "a b" strings or ["a", "b"] pairs, ignore_merges), no normalizer, the ByteLevel
 * pre-tokenizer (GPT-2's pattern) or Llama-3's Split pattern then ByteLevel without a pattern of its own,
 * the ByteLevel decoder, added tokens (lstrip, rstrip, normalized), and a post-processor that is none,
 * ByteLevel, RobertaProcessing, BertProcessing, TemplateProcessing or a Sequence of these. Anything else
 * is refused by name: in particular SentencePiece-style files (byte_fallback, Metaspace, the Replace and
 * Prepend normalizers, Unigram) as Llama 2's and Mistral's. */

static const char LLAMA3_PATTERN[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char GPT2_PATTERN[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char SP_HINT[] = " (a SentencePiece-style tokenizer, as Llama 2's or Mistral's: not supported; "
                              "fedex reads byte-level BPE)";

/* The "type" of object V, or "" when it has none. */
static const char *jtype(const fx_json *v) {
    const fx_json *ty = fx_json_get(v, "type");
    return ty && ty->type == FX_JSTR ? ty->str : "";
}

static int jnull(const fx_json *v) { return !v || v->type == FX_JNULL; }

/* OBJ.KEY as a boolean: DFLT when absent or null. */
static int jbool(const fx_json *obj, const char *key, int dflt, int *out, const char *path, const char *where) {
    const fx_json *v = fx_json_get(obj, key);
    if (jnull(v)) { *out = dflt; return 0; }
    if (v->type != FX_JBOOL) { fx_seterr("%s: %s: \"%s\" must be true or false", path, where, key); return -1; }
    *out = v->boolean;
    return 0;
}

/* A ByteLevel pre-tokenizer; *use_regex its use_regex (true by default). */
static int byte_level_pretok(const fx_json *p, const char *path, int *use_regex) {
    int aps;
    if (jbool(p, "add_prefix_space", 0, &aps, path, "pre_tokenizer ByteLevel") != 0 ||
        jbool(p, "use_regex", 1, use_regex, path, "pre_tokenizer ByteLevel") != 0)
        return -1;
    if (aps) {
        fx_seterr("%s: pre_tokenizer ByteLevel with add_prefix_space true is not supported", path);
        return -1;
    }
    return 0;
}

static int parse_pretok(fx_tokenizer *t, const fx_json *p, const char *path) {
    if (jnull(p)) {
        fx_seterr("%s: pre_tokenizer is null: a byte-level BPE needs ByteLevel (or Split then ByteLevel)", path);
        return -1;
    }
    const char *ty = jtype(p);
    int use_regex;
    if (!strcmp(ty, "ByteLevel")) {
        if (byte_level_pretok(p, path, &use_regex) != 0) return -1;
        if (!use_regex) {
            fx_seterr("%s: pre_tokenizer ByteLevel with use_regex false and no Split before it is not supported", path);
            return -1;
        }
        return 0;
    }
    const fx_json *seq = fx_json_get(p, "pretokenizers");
    if (!strcmp(ty, "Sequence") && seq && seq->type == FX_JARR && seq->n == 1 && !strcmp(jtype(&seq->kids[0]), "ByteLevel"))
        return parse_pretok(t, &seq->kids[0], path);
    if (!strcmp(ty, "Sequence") && seq && seq->type == FX_JARR && seq->n == 2 && !strcmp(jtype(&seq->kids[0]), "Split") &&
        !strcmp(jtype(&seq->kids[1]), "ByteLevel")) {
        const fx_json *sp = &seq->kids[0], *pat = fx_json_get(sp, "pattern"), *beh = fx_json_get(sp, "behavior");
        const fx_json *re = fx_json_get(pat, "Regex");
        int invert;
        if (jbool(sp, "invert", 0, &invert, path, "pre_tokenizer Split") != 0) return -1;
        if (!re || re->type != FX_JSTR || !beh || beh->type != FX_JSTR || strcmp(beh->str, "Isolated") || invert) {
            fx_seterr("%s: pre_tokenizer Split: only a {\"Regex\": ...} pattern, behavior Isolated, invert false are "
                      "supported", path);
            return -1;
        }
        if (!strcmp(re->str, LLAMA3_PATTERN)) t->llama3 = 1;
        else if (strcmp(re->str, GPT2_PATTERN)) {
            fx_seterr("%s: pre_tokenizer Split: pattern \"%.60s...\" is not supported (only Llama-3's and GPT-2's)",
                      path, re->str);
            return -1;
        }
        if (byte_level_pretok(&seq->kids[1], path, &use_regex) != 0) return -1;
        if (use_regex) {
            fx_seterr("%s: pre_tokenizer: ByteLevel after Split must have use_regex false", path);
            return -1;
        }
        return 0;
    }
    if (!strcmp(ty, "Metaspace")) { fx_seterr("%s: pre_tokenizer Metaspace%s", path, SP_HINT); return -1; }
    fx_seterr("%s: pre_tokenizer \"%s\" is not supported (only ByteLevel, or Sequence [Split, ByteLevel])", path, ty);
    return -1;
}

/* One template of TemplateProcessing (SINGLE or PAIR) as ids: -1 for $A, -2 for $B, else a token id. */
static int tpl_pieces(const fx_json *arr, const fx_json *specials, const char *path, const char *which, int *out,
                      int *n) {
    if (!arr || arr->type != FX_JARR || arr->n > 16) {
        fx_seterr("%s: post_processor TemplateProcessing: \"%s\" must be a list of at most 16 pieces", path, which);
        return -1;
    }
    for (size_t i = 0; i < arr->n; i++) {
        const fx_json *st = fx_json_get(&arr->kids[i], "SpecialToken"), *sq = fx_json_get(&arr->kids[i], "Sequence");
        const fx_json *id = fx_json_get(st ? st : sq, "id");
        if (!id || id->type != FX_JSTR) {
            fx_seterr("%s: post_processor TemplateProcessing: %s piece %zu is neither SpecialToken nor Sequence", path,
                      which, i);
            return -1;
        }
        if (sq) {
            if (strcmp(id->str, "A") && strcmp(id->str, "B")) {
                fx_seterr("%s: post_processor TemplateProcessing: %s sequence \"%s\" is neither A nor B", path, which,
                          id->str);
                return -1;
            }
            out[i] = id->str[0] == 'A' ? -1 : -2;
            continue;
        }
        const fx_json *ids = fx_json_get(fx_json_get(specials, id->str), "ids");
        if (!ids || ids->type != FX_JARR || ids->n != 1 || ids->kids[0].type != FX_JNUM || !ids->kids[0].is_int ||
            ids->kids[0].inum < 0 || ids->kids[0].inum >= TOK_MAX_ID) {
            fx_seterr("%s: post_processor TemplateProcessing: special token \"%.40s\" needs \"ids\" of one id in "
                      "special_tokens", path, id->str);
            return -1;
        }
        out[i] = (int)ids->kids[0].inum;
    }
    *n = (int)arr->n;
    return 0;
}

/* SINGLE = BOS^b $A EOS^e and PAIR = BOS^b $A EOS^e EOS^l BOS^c $B EOS^f into T->own, T->tbos, T->teos.
 * Between $A and $B a token is taken as EOS while it can be (the single's EOS, or any token but BOS when
 * the single has none). */
static int tpl_fit(fx_tokenizer *t, const int *s, int ns, const int *p, int np, const char *path) {
    fx_text_template x = {0, 0, 0, 0, 0};
    int bos = -1, eos = -1, i = 0, ne = 0;
    for (; i < ns && s[i] >= 0; i++, x.bos++) { if (bos >= 0 && s[i] != bos) goto bad; bos = s[i]; }
    if (i == ns || s[i] != -1) goto bad;
    for (i++; i < ns && s[i] >= 0; i++, x.eos_a++) { if (eos >= 0 && s[i] != eos) goto bad; eos = s[i]; }
    if (i != ns) goto bad;
    for (i = 0; i < x.bos; i++) if (i >= np || p[i] != bos) goto bad;
    if (i >= np || p[i] != -1) goto bad;
    for (i++; i < np && p[i] >= 0 && (eos >= 0 ? p[i] == eos : bos < 0 || p[i] != bos); i++, ne++) eos = p[i];
    for (; i < np && p[i] >= 0; i++, x.bos_b++) { if (bos >= 0 && p[i] != bos) goto bad; bos = p[i]; }
    if (ne < x.eos_a || i >= np || p[i] != -2) goto bad;
    x.eos_b_lead = ne - x.eos_a;
    for (i++; i < np && p[i] >= 0; i++, x.eos_b++) { if (eos >= 0 && p[i] != eos) goto bad; eos = p[i]; }
    if (i != np) goto bad;
    t->own = x;
    t->tbos = bos;
    t->teos = eos;
    return 0;
bad:
    fx_seterr("%s: post_processor TemplateProcessing: the templates are not of the form BOS* $A EOS* and "
              "BOS* $A EOS* BOS* $B EOS* with one BOS and one EOS token, which is all fedex supports", path);
    return -1;
}

/* ["</s>", 2] of RobertaProcessing / BertProcessing */
static int proc_token(const fx_json *p, const char *key, const char *path, int *id) {
    const fx_json *v = fx_json_get(p, key);
    if (!v || v->type != FX_JARR || v->n != 2 || v->kids[1].type != FX_JNUM || !v->kids[1].is_int ||
        v->kids[1].inum < 0 || v->kids[1].inum >= TOK_MAX_ID) {
        fx_seterr("%s: post_processor %s: \"%s\" must be [token, id]", path, jtype(p), key);
        return -1;
    }
    *id = (int)v->kids[1].inum;
    return 0;
}

/* The post-processor into T->own (what encoding with special tokens puts around the texts); *is_tpl is 1
 * for a TemplateProcessing. */
static int parse_post(fx_tokenizer *t, const fx_json *p, const char *path, int *have, int *is_tpl) {
    if (jnull(p)) return 0;
    const char *ty = jtype(p);
    if (!strcmp(ty, "ByteLevel")) return 0; /* offsets only */
    if (!strcmp(ty, "Sequence")) {
        const fx_json *ps = fx_json_get(p, "processors");
        if (!ps || ps->type != FX_JARR) { fx_seterr("%s: post_processor Sequence: no \"processors\" list", path); return -1; }
        for (size_t i = 0; i < ps->n; i++)
            if (parse_post(t, &ps->kids[i], path, have, is_tpl) != 0) return -1;
        return 0;
    }
    if (*have) { fx_seterr("%s: post_processor: two processors add special tokens", path); return -1; }
    *have = 1;
    if (!strcmp(ty, "RobertaProcessing") || !strcmp(ty, "BertProcessing")) {
        if (proc_token(p, "cls", path, &t->tbos) != 0 || proc_token(p, "sep", path, &t->teos) != 0) return -1;
        /* RoBERTa: <s> A </s></s> B </s>; BERT: [CLS] A [SEP] B [SEP] */
        fx_text_template x = {1, 1, ty[0] == 'R', 1, 0};
        t->own = x;
        return 0;
    }
    if (!strcmp(ty, "TemplateProcessing")) {
        int s[16], ns, q[16], nq;
        const fx_json *sp = fx_json_get(p, "special_tokens");
        if (tpl_pieces(fx_json_get(p, "single"), sp, path, "single", s, &ns) != 0 ||
            tpl_pieces(fx_json_get(p, "pair"), sp, path, "pair", q, &nq) != 0 || tpl_fit(t, s, ns, q, nq, path) != 0)
            return -1;
        *is_tpl = 1;
        return 0;
    }
    fx_seterr("%s: post_processor \"%s\" is not supported", path, ty);
    return -1;
}

/* The model: BPE, byte-level, with no unknown-token, dropout or subword affixes in play. */
static int check_model(fx_tokenizer *t, const fx_json *m, const char *path) {
    const char *ty = jtype(m);
    if (!m || m->type != FX_JOBJ) { fx_seterr("%s: no \"model\" object", path); return -1; }
    if (strcmp(ty, "BPE")) {
        fx_seterr("%s: model type \"%s\" is not supported (only byte-level BPE)%s", path, ty,
                  !strcmp(ty, "Unigram") ? SP_HINT : "");
        return -1;
    }
    int fallback;
    if (jbool(m, "byte_fallback", 0, &fallback, path, "model") != 0 ||
        jbool(m, "ignore_merges", 0, &t->ignore_merges, path, "model") != 0)
        return -1;
    if (fallback) { fx_seterr("%s: model BPE with byte_fallback true%s", path, SP_HINT); return -1; }
    const fx_json *d = fx_json_get(m, "dropout");
    if (!jnull(d) && !(d->type == FX_JNUM && d->num == 0)) {
        fx_seterr("%s: model: BPE dropout is not supported (it is for training a tokenizer)", path);
        return -1;
    }
    static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        const fx_json *a = fx_json_get(m, affixes[i]);
        if (!jnull(a) && !(a->type == FX_JSTR && a->slen == 0)) {
            fx_seterr("%s: model: %s is not supported in a byte-level BPE", path, affixes[i]);
            return -1;
        }
    }
    return 0;
}

static int parse_merges(fx_tokenizer *t, const fx_json *ms, const strmap *vocab, const char *path) {
    if (!ms || ms->type != FX_JARR) { fx_seterr("%s: model: \"merges\" must be a list", path); return -1; }
    merges_init(t, ms->n);
    for (size_t i = 0; i < ms->n; i++) {
        const fx_json *m = &ms->kids[i];
        const char *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        if (m->type == FX_JSTR) { /* "a b": split at its one space */
            const char *sp = memchr(m->str, ' ', m->slen);
            if (sp && sp > m->str && !memchr(sp + 1, ' ', m->slen - (size_t)(sp - m->str) - 1) &&
                sp + 1 < m->str + m->slen) {
                a = m->str; na = (size_t)(sp - m->str); b = sp + 1; nb = m->slen - na - 1;
            }
        } else if (m->type == FX_JARR && m->n == 2 && m->kids[0].type == FX_JSTR && m->kids[1].type == FX_JSTR) {
            a = m->kids[0].str; na = m->kids[0].slen; b = m->kids[1].str; nb = m->kids[1].slen;
        }
        if (!a || !na || !nb) {
            fx_seterr("%s: model: merge %zu is neither \"a b\" (one space) nor [\"a\", \"b\"]", path, i);
            return -1;
        }
        if (add_merge(t, vocab, a, na, b, nb, (int)i) != 0) {
            fx_seterr("%s: model: merge %zu (\"%.*s\" + \"%.*s\") is not in the vocabulary", path, i, (int)na, a,
                      (int)nb, b);
            return -1;
        }
    }
    return 0;
}

/* added_tokens: checked, into T->added (longest first) and the id tables SRC / SLEN / SPECIAL. Each id
 * must be the one Hugging Face gives the token when it reads the file: the vocabulary's own id for a
 * token in it, else the next after the vocabulary (NVOCAB entries) and the added tokens before it. */
static int parse_added(fx_tokenizer *t, const fx_json *at, const strmap *vocab, size_t nvocab, const char *path) {
    if (jnull(at)) return 0;
    if (at->type != FX_JARR) { fx_seterr("%s: \"added_tokens\" must be a list", path); return -1; }
    t->added = fx_calloc(at->n + 1, sizeof *t->added);
    long maxid = -1;
    for (size_t i = 0; i < at->n; i++) {
        const fx_json *e = &at->kids[i], *id = fx_json_get(e, "id"), *c = fx_json_get(e, "content");
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%zu]", i);
        if (!id || id->type != FX_JNUM || !id->is_int || id->inum < 0 || id->inum >= TOK_MAX_ID || !c ||
            c->type != FX_JSTR || c->slen == 0 || c->slen > 1024) {
            fx_seterr("%s: %s: needs an \"id\" in [0, %d) and a \"content\" of 1 to 1024 bytes", path, where, TOK_MAX_ID);
            return -1;
        }
        int special, single, lstrip, rstrip, normalized;
        if (jbool(e, "special", 0, &special, path, where) != 0 || jbool(e, "single_word", 0, &single, path, where) != 0 ||
            jbool(e, "lstrip", 0, &lstrip, path, where) != 0 || jbool(e, "rstrip", 0, &rstrip, path, where) != 0 ||
            jbool(e, "normalized", !special, &normalized, path, where) != 0)
            return -1;
        if (single) {
            fx_seterr("%s: %s \"%.40s\": single_word true is not supported", path, where, c->str);
            return -1;
        }
        for (int k = 0; k < t->nadded; k++)
            if (t->added[k].len == (int)c->slen && !memcmp(t->added[k].text, c->str, c->slen)) {
                fx_seterr("%s: %s: \"%.40s\" is listed twice", path, where, c->str);
                return -1;
            }
        int32_t vid;
        long want = strmap_get(vocab, c->str, c->slen, &vid, NULL) ? vid
                    : maxid < 0 || maxid < (long)nvocab ? (long)nvocab : maxid + 1;
        if (id->inum != want) {
            fx_seterr("%s: %s \"%.40s\" has id %lld, but reading the file gives it %ld", path, where, c->str,
                      (long long)id->inum, want);
            return -1;
        }
        if (want > maxid) maxid = want;
        added_tok *a = &t->added[t->nadded++];
        a->text = fx_malloc(c->slen + 1);
        memcpy(a->text, c->str, c->slen + 1);
        a->len = (int)c->slen;
        a->id = (int)want;
        a->special = special;
        a->lstrip = lstrip;
        a->rstrip = rstrip;
        a->normalized = normalized;
        t->added_first[(unsigned char)c->str[0]] = 1;
    }
    /* longest first (insertion sort: a few hundred at most), so the first that matches is the longest */
    for (int i = 1; i < t->nadded; i++) {
        added_tok x = t->added[i];
        int k = i;
        while (k > 0 && t->added[k - 1].len < x.len) { t->added[k] = t->added[k - 1]; k--; }
        t->added[k] = x;
    }
    return 0;
}

/* The id of token text S: an added token's content, else a vocabulary token as written (in GPT-2's
 * byte characters). -1 if neither. */
static int named_id(const fx_tokenizer *t, const strmap *vocab, const char *s) {
    for (int k = 0; k < t->nadded; k++)
        if (!strcmp(t->added[k].text, s)) return t->added[k].id;
    return vocab_id(vocab, s);
}

/* tokenizer_config.json's / special_tokens_map.json's KEY (a string, {"content": ...}, or null) into *id. */
static int config_token(const fx_tokenizer *t, const strmap *vocab, const fx_json *cfg, const char *key,
                        const char *path, int *id) {
    const fx_json *v = fx_json_get(cfg, key);
    if (v && v->type == FX_JOBJ) v = fx_json_get(v, "content");
    if (jnull(v)) return 0;
    if (v->type != FX_JSTR) { fx_seterr("%s: \"%s\" must be a token string", path, key); return -1; }
    int k = named_id(t, vocab, v->str);
    if (k < 0) { fx_seterr("%s: %s \"%.40s\" is not a token of tokenizer.json", path, key, v->str); return -1; }
    *id = k;
    return 0;
}

/* config.json's KEY: an id, a list of ids (the first), or null. */
static int config_id(const fx_tokenizer *t, const fx_json *cfg, const char *key, const char *path, int *id) {
    const fx_json *v = fx_json_get(cfg, key);
    if (v && v->type == FX_JARR && v->n > 0) v = &v->kids[0];
    if (jnull(v)) return 0;
    if (v->type != FX_JNUM || !v->is_int || v->inum < 0 || v->inum >= t->vocab_size || !t->present[v->inum]) {
        fx_seterr("%s: \"%s\" must be a token id of tokenizer.json", path, key);
        return -1;
    }
    *id = (int)v->inum;
    return 0;
}

/* bos, eos and pad as transformers' tokenizer names them: tokenizer_config.json, then
 * special_tokens_map.json, then config.json's ids where neither names one; and the template
 * transformers' LlamaTokenizerFast rebuilds from add_bos_token / add_eos_token. */
static int read_configs(fx_tokenizer *t, const strmap *vocab, const char *dir, int is_tpl) {
    static const char *const files[] = {"tokenizer_config.json", "special_tokens_map.json", "config.json"};
    static const char *const tokens[] = {"bos_token", "eos_token", "pad_token"};
    static const char *const ids[] = {"bos_token_id", "eos_token_id", "pad_token_id"};
    int got[3] = {-1, -1, -1};
    size_t dl = strlen(dir) + 32;
    char *path = fx_malloc(dl);
    int rc = -1;
    for (int f = 0; f < 3; f++) {
        snprintf(path, dl, "%s/%s", dir, files[f]);
        if (access(path, F_OK) != 0) continue;
        fx_json j;
        if (fx_json_load(path, &j) != 0) goto out;
        int ok = j.type == FX_JOBJ;
        if (!ok) fx_seterr("%s: expected a JSON object", path);
        for (int k = 0; ok && k < 3; k++)
            if (got[k] < 0)
                ok = (f < 2 ? config_token(t, vocab, &j, tokens[k], path, &got[k])
                            : config_id(t, &j, ids[k], path, &got[k])) == 0;
        if (ok && f == 0) { /* add_bos_token / add_eos_token */
            const fx_json *cls = fx_json_get(&j, "tokenizer_class");
            int llama = cls && cls->type == FX_JSTR && !strncmp(cls->str, "LlamaTokenizer", 14);
            int add_bos, add_eos;
            ok = jbool(&j, "add_bos_token", 1, &add_bos, path, "tokenizer_config") == 0 &&
                 jbool(&j, "add_eos_token", 0, &add_eos, path, "tokenizer_config") == 0;
            int named = fx_json_get(&j, "add_bos_token") || fx_json_get(&j, "add_eos_token");
            if (ok && (llama || (named && is_tpl))) {
                /* update_post_processor: single = bos? $A eos?, pair = single bos? $B eos? */
                fx_text_template x = {add_bos, add_eos, 0, add_eos, add_bos};
                t->own = x;
                t->tbos = add_bos ? got[0] : -1;
                t->teos = add_eos ? got[1] : -1;
                if ((add_bos && got[0] < 0) || (add_eos && got[1] < 0)) {
                    fx_seterr("%s: add_%s_token is true but no %s_token is named", path, add_bos && got[0] < 0 ? "bos" : "eos",
                              add_bos && got[0] < 0 ? "bos" : "eos");
                    ok = 0;
                }
            }
        }
        fx_json_free(&j);
        if (!ok) goto out;
    }
    /* fedex needs a bos and a pad where transformers may have none: the template's, then eos */
    t->bos = got[0] >= 0 ? got[0] : t->tbos;
    t->eos = got[1] >= 0 ? got[1] : t->teos;
    t->pad = got[2] >= 0 ? got[2] : t->eos >= 0 ? t->eos : t->bos >= 0 ? t->bos : 0;
    if (t->tbos < 0) t->tbos = t->bos;
    if (t->teos < 0) t->teos = t->eos;
    rc = 0;
out:
    free(path);
    return rc;
}

static int load_tokenizer_json(fx_tokenizer *t, const char *dir, const char *path) {
    fx_json j;
    if (fx_json_load(path, &j) != 0) return -1;
    t->json = 1;
    t->tbos = t->teos = -1;
    strmap vocab;
    strmap_init(&vocab, 1 << 16);
    const char **src = NULL;
    size_t *slen = NULL;
    uint8_t *model = NULL;
    int rc = -1, maxid, have = 0, is_tpl = 0;
    const fx_json *m = fx_json_get(&j, "model"), *norm = fx_json_get(&j, "normalizer");
    const fx_json *dec = fx_json_get(&j, "decoder"), *vj = fx_json_get(m, "vocab");
    if (j.type != FX_JOBJ) { fx_seterr("%s: expected a JSON object", path); goto out; }
    if (!jnull(norm)) {
        const char *ty = jtype(norm);
        fx_seterr("%s: normalizer \"%s\" is not supported (only null)%s", path, ty,
                  !strcmp(ty, "Sequence") || !strcmp(ty, "Replace") || !strcmp(ty, "Prepend") ? SP_HINT : "");
        goto out;
    }
    if (jnull(dec) || strcmp(jtype(dec), "ByteLevel")) {
        fx_seterr("%s: decoder \"%s\" is not supported (only ByteLevel)%s", path, jnull(dec) ? "null" : jtype(dec),
                  !strcmp(jtype(dec), "Sequence") || !strcmp(jtype(dec), "Metaspace") ? SP_HINT : "");
        goto out;
    }
    if (check_model(t, m, path) != 0 || parse_pretok(t, fx_json_get(&j, "pre_tokenizer"), path) != 0 ||
        read_vocab(vj, path, &vocab, &maxid) != 0 || parse_merges(t, fx_json_get(m, "merges"), &vocab, path) != 0 ||
        find_byte_ids(t, &vocab, path) != 0 || parse_added(t, fx_json_get(&j, "added_tokens"), &vocab, vj->n, path) != 0 ||
        parse_post(t, fx_json_get(&j, "post_processor"), path, &have, &is_tpl) != 0)
        goto out;
    for (int k = 0; k < t->nadded; k++) if (t->added[k].id > maxid) maxid = t->added[k].id;
    t->vocab_size = maxid + 1;
    src = fx_calloc((size_t)t->vocab_size, sizeof *src);
    slen = fx_calloc((size_t)t->vocab_size, sizeof *slen);
    model = fx_calloc((size_t)t->vocab_size, 1);
    for (size_t i = 0; i < vj->n; i++) {
        int id = (int)vj->kids[i].inum;
        if (src[id]) {
            fx_seterr("%s: model: id %d is given to two tokens (\"%.40s\" and another)", path, id, vj->keys[i]);
            goto out;
        }
        src[id] = vj->keys[i];
        slen[id] = vj->klens[i];
        model[id] = 1;
    }
    for (int k = 0; k < t->nadded; k++) {
        const added_tok *a = &t->added[k];
        if (!model[a->id]) { src[a->id] = a->text; slen[a->id] = (size_t)a->len; }
    }
    if (build_tokens(t, path, src, slen, model) != 0) goto out;
    for (int k = 0; k < t->nadded; k++) t->special[t->added[k].id] = (uint8_t)t->added[k].special;
    for (int k = 0; k < 2; k++) { /* ids the post-processor names must exist */
        int id = k ? t->teos : t->tbos;
        if (id >= t->vocab_size || (id >= 0 && !t->present[id])) {
            fx_seterr("%s: post_processor: token id %d is not in the vocabulary", path, id);
            goto out;
        }
    }
    if (read_configs(t, &vocab, dir, is_tpl) != 0) goto out;
    t->tpl = &t->own;
    rc = 0;
out:
    free(src); free(slen); free(model);
    strmap_free(&vocab);
    fx_json_free(&j);
    return rc;
}

fx_tokenizer *fx_tok_load(const char *dir) {
    fx_tokenizer *t = fx_calloc(1, sizeof *t);
    strmap_init(&t->whole, 1 << 12);
    strmap_init(&t->cache, 1 << 12);
    size_t dl = strlen(dir) + 32;
    char *tj = fx_malloc(dl), *vj = fx_malloc(dl), *sp = fx_malloc(dl);
    snprintf(tj, dl, "%s/tokenizer.json", dir);
    snprintf(vj, dl, "%s/vocab.json", dir);
    snprintf(sp, dl, "%s/tokenizer.model", dir);
    int rc;
    /* Hugging Face's fast tokenizers prefer tokenizer.json where both are present */
    if (access(tj, F_OK) == 0) rc = load_tokenizer_json(t, dir, tj);
    else if (access(vj, F_OK) != 0 && access(sp, F_OK) == 0) {
        fx_seterr("%s: a SentencePiece model%s; give a folder with tokenizer.json or vocab.json + merges.txt", sp,
                  SP_HINT);
        rc = -1;
    } else rc = load_vocab_merges(t, dir);
    free(tj); free(vj); free(sp);
    if (rc != 0) { fx_tok_free(t); return NULL; }
    return t;
}

void fx_tok_free(fx_tokenizer *t) {
    if (!t) return;
    free(t->dec); free(t->dec_off); free(t->present); free(t->special);
    free(t->merges.key); free(t->merges.rank); free(t->merges.id);
    for (int k = 0; k < t->nadded; k++) free(t->added[k].text);
    free(t->added);
    strmap_free(&t->whole);
    strmap_free(&t->cache);
    free(t->cache_ids);
    free(t->sym); free(t->prev); free(t->next); free(t->heap); free(t->defer);
    free(t->ia); free(t->ib);
    free(t);
}

int fx_tok_token_id(const fx_tokenizer *t, const char *s) {
    for (int k = 0; k < t->nadded; k++)
        if (!strcmp(t->added[k].text, s)) return t->added[k].id;
    if (!t->json)
        for (int k = 0; k < t->nsplit; k++)
            if (!strcmp(t->split[k].text, s)) return t->split[k].id;
    int32_t id;
    return strmap_get(&t->whole, s, strlen(s), &id, NULL) ? id : -1;
}

int fx_tok_is_special(const fx_tokenizer *t, int id) {
    return id >= 0 && id < t->vocab_size && t->special[id];
}

int fx_tok_bos(const fx_tokenizer *t) { return t->bos; }
const fx_text_template *fx_tok_template(const fx_tokenizer *t) { return t->tpl; }
int fx_tok_eos(const fx_tokenizer *t) { return t->eos; }
int fx_tok_pad(const fx_tokenizer *t) { return t->pad; }
int fx_tok_vocab_size(const fx_tokenizer *t) { return t->vocab_size; }

/* ============================================================================================
 * pre-tokenisation: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 * ============================================================================================
 * Under Python regex semantics: at each position the first alternative that matches wins, and findall
 * moves on past it. \p{L} and \p{N} are the general categories L* and N*; \s is the White_Space property
 * (so U+1C..U+1F and U+FEFF are not space, U+85 and U+A0 are). Only U+0020 can be the optional space.
 * Since every character is letter, number, space or other, some alternative always matches: the text is
 * cut into pieces with nothing left over. The classes come from Unicode 15.0 (unicode_tables.c), the
 * version of Debian's regex module they were checked against; a character assigned later is "other". */

int fx_uni_class(uint32_t cp) {
    if (cp < 0x80) {
        if ((cp | 0x20) >= 'a' && (cp | 0x20) <= 'z') return FX_UNI_LETTER;
        if (cp >= '0' && cp <= '9') return FX_UNI_NUMBER;
        if (cp == ' ' || (cp >= 0x09 && cp <= 0x0D)) return FX_UNI_SPACE;
        return FX_UNI_OTHER;
    }
    int lo = 0, hi = fx_uni_nranges - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < fx_uni_ranges[mid].lo) hi = mid - 1;
        else if (cp > fx_uni_ranges[mid].hi) lo = mid + 1;
        else return fx_uni_ranges[mid].cls;
    }
    return FX_UNI_OTHER;
}

/* Class and byte length of the character at S[i] (the text is valid UTF-8, i < len). */
static int char_at(const char *s, size_t len, size_t i, int *nbytes) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x80) { *nbytes = 1; return fx_uni_class(c); }
    uint32_t cp = 0;
    *nbytes = fx_utf8_next(s + i, len - i, &cp);
    return fx_uni_class(cp);
}

/* End of the run of characters of class CLS starting at I. */
static size_t run_end(const char *s, size_t len, size_t i, int cls) {
    while (i < len) {
        int nb, c = char_at(s, len, i, &nb);
        if (c != cls) break;
        i += (size_t)nb;
    }
    return i;
}

/* End of the piece that starts at I < len. */
static size_t next_piece(const char *s, size_t len, size_t i) {
    /* 's 't 're 've 'm 'll 'd: lower case only, and no word boundary needed after them */
    if (s[i] == '\'' && i + 1 < len) {
        char c = s[i + 1], d = i + 2 < len ? s[i + 2] : 0;
        if (c == 's' || c == 't' || c == 'm' || c == 'd') return i + 2;
        if ((c == 'r' && d == 'e') || (c == 'v' && d == 'e') || (c == 'l' && d == 'l')) return i + 3;
    }
    int nb, cls = char_at(s, len, i, &nb);
    /* " ?X+" for X letter, number or other: the optional space is taken only if an X follows it */
    if (s[i] == ' ' && i + 1 < len) {
        int nb1, c1 = char_at(s, len, i + 1, &nb1);
        if (c1 != FX_UNI_SPACE) return run_end(s, len, i + 1, c1);
    }
    if (cls != FX_UNI_SPACE) return run_end(s, len, i, cls);
    /* \s+(?!\S): the whole run if text ends after it, else the run minus its last character (which then
     * starts the next piece, and may be the space of " ?X+"); a single space before a non-space is the
     * last alternative \s+ alone. */
    size_t last = i, j = i;
    while (j < len) {
        int c = char_at(s, len, j, &nb);
        if (c != FX_UNI_SPACE) break;
        last = j;
        j += (size_t)nb;
    }
    if (j == len || last == i) return j;
    return last;
}

/* ============================================================================================
 * pre-tokenisation: Llama-3's pattern
 * ============================================================================================
 * (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|
 * \s+(?!\S)|\s+ under Oniguruma, which Hugging Face runs it with: the first alternative that matches at
 * a position wins. The contractions ignore ASCII case only ('S and 'LL are contractions; "'\u017f" is not,
 * as Hugging Face's results show). The optional character before a letter run is any one character but
 * \r, \n, a letter or a number (a space, a tab, punctuation, a combining mark). Numbers go in runs of at
 * most three. The classes are those of the GPT-2 pattern (Oniguruma's \s is the same White_Space set). */

static int is_nl(char c) { return c == '\r' || c == '\n'; }

static size_t next_piece_llama3(const char *s, size_t len, size_t i) {
    if (s[i] == '\'' && i + 1 < len) {
        char c = s[i + 1], d = i + 2 < len ? s[i + 2] : 0;
        if (c >= 'A' && c <= 'Z') c = (char)(c + 32);
        if (d >= 'A' && d <= 'Z') d = (char)(d + 32);
        if (c == 's' || c == 't' || c == 'm' || c == 'd') return i + 2;
        if ((c == 'r' && d == 'e') || (c == 'v' && d == 'e') || (c == 'l' && d == 'l')) return i + 3;
    }
    int nb, cls = char_at(s, len, i, &nb);
    size_t i1 = i + (size_t)nb;
    int nb1 = 0, c1 = i1 < len ? char_at(s, len, i1, &nb1) : -1;
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    if (cls == FX_UNI_LETTER) return run_end(s, len, i, FX_UNI_LETTER);
    if (cls != FX_UNI_NUMBER && !is_nl(s[i]) && c1 == FX_UNI_LETTER) return run_end(s, len, i1, FX_UNI_LETTER);
    /* \p{N}{1,3} */
    if (cls == FX_UNI_NUMBER) {
        size_t j = i;
        for (int k = 0; k < 3 && j < len; k++) {
            int m, c = char_at(s, len, j, &m);
            if (c != FX_UNI_NUMBER) break;
            j += (size_t)m;
        }
        return j;
    }
    /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
    if (cls == FX_UNI_OTHER || (s[i] == ' ' && c1 == FX_UNI_OTHER)) {
        size_t j = run_end(s, len, cls == FX_UNI_OTHER ? i : i1, FX_UNI_OTHER);
        while (j < len && is_nl(s[j])) j++;
        return j;
    }
    /* A run of white space: \s*[\r\n]+ takes it up to its last line break, if it has one; else
     * \s+(?!\S) the whole run at the end of the text, or the run but its last character before a
     * non-space; else (a single space before a non-space) \s+. */
    size_t j = i, last = i, after_nl = 0;
    while (j < len) {
        int m, c = char_at(s, len, j, &m);
        if (c != FX_UNI_SPACE) break;
        last = j;
        j += (size_t)m;
        if (is_nl(s[last])) after_nl = j;
    }
    if (after_nl) return after_nl;
    if (j == len || last == i) return j;
    return last;
}

/* End of the piece of T's pre-tokenizer that starts at I < len. */
static size_t piece_end(const fx_tokenizer *t, const char *s, size_t len, size_t i) {
    return t->llama3 ? next_piece_llama3(s, len, i) : next_piece(s, len, i);
}

int fx_tok_pieces(const fx_tokenizer *t, const char *text, size_t len, size_t **ends, int *n, int *cap) {
    size_t ok = fx_utf8_valid_prefix(text, len);
    if (ok != len) { fx_seterr("invalid UTF-8 at byte %zu", ok); return -1; }
    size_t i = 0;
    while (i < len) {
        i = piece_end(t, text, len, i);
        if (*n == *cap) {
            *cap = *cap ? 2 * *cap : 64;
            *ends = fx_realloc(*ends, (size_t)*cap * sizeof **ends);
        }
        (*ends)[(*n)++] = i;
    }
    return 0;
}

int fx_tok_pretokenize(const char *text, size_t len, size_t **ends, int *n, int *cap) {
    size_t ok = fx_utf8_valid_prefix(text, len);
    if (ok != len) { fx_seterr("invalid UTF-8 at byte %zu", ok); return -1; }
    size_t i = 0;
    while (i < len) {
        i = next_piece(text, len, i);
        if (*n == *cap) {
            *cap = *cap ? 2 * *cap : 64;
            *ends = fx_realloc(*ends, (size_t)*cap * sizeof **ends);
        }
        (*ends)[(*n)++] = i;
    }
    return 0;
}

/* ============================================================================================
 * BPE
 * ============================================================================================
 * Hugging Face's reference loop repeats: find the adjacent pair of lowest rank, merge every occurrence of
 * it left to right. Here the word is a linked list of symbols and the candidate pairs sit in a min-heap
 * keyed (rank, position), so each step costs O(log n) instead of a scan. Pairs that a merge creates are
 * held back until every occurrence of the current rank is done, which keeps the reference's order even
 * for a merges file where a newer pair outranks the one that made it. Entries made stale by a merge are
 * recognised when popped: the pair at their position no longer has their rank. A tokenizer.json is merged
 * as Hugging Face's Rust library does it: new pairs go straight into the heap (the two orders differ only
 * for such a merges file). */

static void heap_push(uint64_t *h, int *n, uint64_t v) {
    int i = (*n)++;
    while (i > 0 && h[(i - 1) / 2] > v) { h[i] = h[(i - 1) / 2]; i = (i - 1) / 2; }
    h[i] = v;
}

static uint64_t heap_pop(uint64_t *h, int *n) {
    uint64_t top = h[0], v = h[--(*n)];
    int i = 0;
    for (;;) {
        int c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && h[c + 1] < h[c]) c++;
        if (h[c] >= v) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = v;
    return top;
}

/* Rank and merged id of the pair (a, b); 0 when it is no merge. */
static int find_merge(const fx_tokenizer *t, int32_t a, int32_t b, int32_t *rank, int32_t *id) {
    size_t s = pair_slot(&t->merges, pair_key(a, b));
    if (!t->merges.key[s]) return 0;
    *rank = t->merges.rank[s];
    if (id) *id = t->merges.id[s];
    return 1;
}

/* BPE of the word W[0..n) (n >= 1); writes its ids to OUT (n at most), returns their count. */
static int bpe_word(fx_tokenizer *t, const unsigned char *w, int n, int32_t *out) {
    if (n > t->scratch_cap) {
        t->scratch_cap = n > 2 * t->scratch_cap ? n : 2 * t->scratch_cap;
        size_t c = (size_t)t->scratch_cap;
        t->sym = fx_realloc(t->sym, c * sizeof *t->sym);
        t->prev = fx_realloc(t->prev, c * sizeof *t->prev);
        t->next = fx_realloc(t->next, c * sizeof *t->next);
        t->heap = fx_realloc(t->heap, 2 * c * sizeof *t->heap);
        t->defer = fx_realloc(t->defer, 2 * c * sizeof *t->defer);
    }
    int32_t *sym = t->sym, *prev = t->prev, *next = t->next; /* (n) each; sym -1 once merged away */
    uint64_t *heap = t->heap, *defer = t->defer;              /* (2n) (rank << 32 | position) */
    int nh = 0, nd = 0;
    for (int k = 0; k < n; k++) {
        sym[k] = t->byte_id[w[k]];
        prev[k] = k - 1;
        next[k] = k + 1 < n ? k + 1 : -1;
    }
    int32_t r, id;
    for (int k = 0; k + 1 < n; k++)
        if (find_merge(t, sym[k], sym[k + 1], &r, NULL)) heap_push(heap, &nh, (uint64_t)r << 32 | (uint32_t)k);
    /* Sizes: the heap starts with at most n - 1 entries; each of the at most n - 1 merges pops one and
     * adds at most two (via defer or not), so neither the heap nor defer ever holds 2n entries. */
    while (nh > 0) {
        uint64_t top = heap_pop(heap, &nh);
        int32_t rank = (int32_t)(top >> 32);
        int k = (int)(uint32_t)top, nx = next[k];
        if (sym[k] >= 0 && nx >= 0 && find_merge(t, sym[k], sym[nx], &r, &id) && r == rank) {
            sym[k] = id;
            sym[nx] = -1;
            next[k] = next[nx];
            if (next[nx] >= 0) prev[next[nx]] = k;
            if (prev[k] >= 0 && find_merge(t, sym[prev[k]], sym[k], &r, NULL)) {
                uint64_t v = (uint64_t)r << 32 | (uint32_t)prev[k];
                if (t->json) heap_push(heap, &nh, v);
                else defer[nd++] = v;
            }
            if (next[k] >= 0 && find_merge(t, sym[k], sym[next[k]], &r, NULL)) {
                uint64_t v = (uint64_t)r << 32 | (uint32_t)k;
                if (t->json) heap_push(heap, &nh, v);
                else defer[nd++] = v;
            }
        }
        if (nh == 0 || (int32_t)(heap[0] >> 32) != rank) { /* this rank is done everywhere */
            for (int d = 0; d < nd; d++) heap_push(heap, &nh, defer[d]);
            nd = 0;
        }
    }
    int m = 0;
    for (int k = 0; k >= 0; k = next[k]) out[m++] = sym[k];
    return m;
}

/* ============================================================================================
 * encoding
 * ============================================================================================ */

static void ids_reserve(int32_t **ids, int *cap, int need) {
    if (need <= *cap) return;
    int c = *cap ? *cap : 64;
    while (c < need) c = c > INT32_MAX / 2 ? need : 2 * c;
    *ids = fx_realloc(*ids, (size_t)c * sizeof **ids);
    *cap = c;
}

/* Appends the ids of one piece W[0..n), from the cache when it was seen before. */
static void encode_piece(fx_tokenizer *t, const char *w, int n, int32_t **ids, int *nids, int *cap) {
    int32_t off, cnt;
    if (t->ignore_merges && strmap_get(&t->whole, w, (size_t)n, &off, NULL)) { /* a token as it stands */
        ids_reserve(ids, cap, *nids + 1);
        (*ids)[(*nids)++] = off;
        return;
    }
    if (n <= CACHE_MAX_WORD && strmap_get(&t->cache, w, (size_t)n, &off, &cnt)) {
        ids_reserve(ids, cap, *nids + cnt);
        memcpy(*ids + *nids, t->cache_ids + off, (size_t)cnt * sizeof **ids);
        *nids += cnt;
        return;
    }
    ids_reserve(ids, cap, *nids + n); /* BPE never yields more ids than bytes */
    int m = bpe_word(t, (const unsigned char *)w, n, *ids + *nids);
    if (n <= CACHE_MAX_WORD && t->cache.n < CACHE_MAX_WORDS &&
        t->cache.alen + t->cache_n * sizeof *t->cache_ids < CACHE_MAX_BYTES) {
        if (t->cache_n + (size_t)m > t->cache_cap) {
            t->cache_cap = 2 * t->cache_cap + (size_t)m + 4096;
            t->cache_ids = fx_realloc(t->cache_ids, t->cache_cap * sizeof *t->cache_ids);
        }
        memcpy(t->cache_ids + t->cache_n, *ids + *nids, (size_t)m * sizeof *t->cache_ids);
        strmap_put(&t->cache, w, (size_t)n, (int32_t)t->cache_n, m);
        t->cache_n += (size_t)m;
    }
    *nids += m;
}

int fx_tok_encode_text(fx_tokenizer *t, const char *text, size_t len, int32_t **ids, int *n, int *cap) {
    size_t ok = fx_utf8_valid_prefix(text, len);
    if (ok != len) { fx_seterr("invalid UTF-8 at byte %zu", ok); return -1; }
    if (len > (size_t)(INT32_MAX / 2) - (size_t)*n) {
        fx_seterr("text of %zu bytes is too long to tokenise", len);
        return -1;
    }
    size_t i = 0;
    while (i < len) {
        size_t e = piece_end(t, text, len, i);
        encode_piece(t, text + i, (int)(e - i), ids, n, cap);
        i = e;
    }
    return 0;
}

/* Python's str.isspace(): White_Space and also U+1C..U+1F (which the pattern's \s leaves out). */
static int py_isspace(uint32_t cp) { return (cp >= 0x1C && cp <= 0x1F) || fx_uni_class(cp) == FX_UNI_SPACE; }

/* TEXT as Hugging Face's tokenize() sees it: cut at the special tokens' strings, each chunk between them
 * pre-tokenised and BPE'd on its own, each special string its id; before an lstrip token (<mask>) the
 * chunk loses its trailing white space (str.rstrip()). */
static int encode_added(fx_tokenizer *t, const char *s, size_t n, int pass, int32_t **ids, int *nids, int *cap);

static int encode_with_specials(fx_tokenizer *t, const char *text, int32_t **ids, int *n, int *cap) {
    size_t len = strlen(text), start = 0, i = 0;
    size_t ok = fx_utf8_valid_prefix(text, len);
    if (ok != len) { fx_seterr("invalid UTF-8 at byte %zu", ok); return -1; }
    if (t->json) return encode_added(t, text, len, 0, ids, n, cap);
    while (i < len) {
        int k = -1;
        if (text[i] == '<')
            for (int j = 0; j < t->nsplit && k < 0; j++)
                if (!strncmp(text + i, t->split[j].text, (size_t)t->split[j].len)) k = j;
        if (k < 0) { i++; continue; }
        size_t end = i;
        while (t->split[k].lstrip && end > start) {
            size_t c = end - 1; /* back to the first byte of the last character */
            while (c > start && ((unsigned char)text[c] & 0xC0) == 0x80) c--;
            uint32_t cp;
            fx_utf8_next(text + c, end - c, &cp);
            if (!py_isspace(cp)) break;
            end = c;
        }
        if (fx_tok_encode_text(t, text + start, end - start, ids, n, cap) != 0) return -1;
        ids_reserve(ids, cap, *n + 1);
        (*ids)[(*n)++] = t->split[k].id;
        i += (size_t)t->split[k].len;
        start = i;
    }
    return fx_tok_encode_text(t, text + start, len - start, ids, n, cap);
}

/* Start of the white space (\s, as Rust's regex crate: White_Space) that ends S[0..end). */
static size_t space_before(const char *s, size_t end) {
    while (end > 0) {
        size_t c = end - 1; /* back to the first byte of the last character */
        while (c > 0 && ((unsigned char)s[c] & 0xC0) == 0x80) c--;
        uint32_t cp;
        fx_utf8_next(s + c, end - c, &cp);
        if (fx_uni_class(cp) != FX_UNI_SPACE) break;
        end = c;
    }
    return end;
}

/* End of the white space that starts S[from..n). */
static size_t space_after(const char *s, size_t from, size_t n) {
    while (from < n) {
        int nb, c = char_at(s, n, from, &nb);
        if (c != FX_UNI_SPACE) break;
        from += (size_t)nb;
    }
    return from;
}

/* A tokenizer.json's added tokens in S[0..n), as Hugging Face's AddedVocabulary finds them: pass 0 the
 * tokens with normalized false over the whole text, then pass 1 the normalized ones over each stretch
 * pass 0 left; each match the leftmost, and the longest there (aho-corasick's LeftmostLongest); an
 * lstrip token takes the white space before it (not past the previous match), an rstrip one the white
 * space after it. What is left is pre-tokenised and BPE'd. */
static int encode_added(fx_tokenizer *t, const char *s, size_t n, int pass, int32_t **ids, int *nids, int *cap) {
    size_t done = 0, i = 0;
    while (i < n) {
        const added_tok *a = NULL;
        if (t->added_first[(unsigned char)s[i]])
            for (int k = 0; k < t->nadded && !a; k++) {
                const added_tok *c = &t->added[k];
                if (c->normalized == pass && (size_t)c->len <= n - i && !memcmp(s + i, c->text, (size_t)c->len)) a = c;
            }
        if (!a) { i++; continue; }
        size_t start = i, stop = i + (size_t)a->len;
        i = stop; /* the search goes on after the match itself, whatever rstrip takes */
        if (a->lstrip) {
            size_t b = space_before(s, start);
            start = b > done ? b : done;
        }
        if (a->rstrip) stop = space_after(s, stop, n);
        if (done < start) {
            int rc = pass == 0 ? encode_added(t, s + done, start - done, 1, ids, nids, cap)
                               : fx_tok_encode_text(t, s + done, start - done, ids, nids, cap);
            if (rc != 0) return -1;
        }
        ids_reserve(ids, cap, *nids + 1);
        (*ids)[(*nids)++] = a->id;
        done = stop;
    }
    if (done >= n) return 0;
    return pass == 0 ? encode_added(t, s + done, n - done, 1, ids, nids, cap)
                     : fx_tok_encode_text(t, s + done, n - done, ids, nids, cap);
}

/* longest_first truncation of a pair to NREMOVE fewer tokens (Hugging Face's rule): first take
 * k = min(n, |la - lb|) from the longer one (from B on a tie), then split the other n - k evenly between
 * A and B, B taking the odd one; always from the right end. */
static void truncate_pair(int *la, int *lb, int nremove) {
    int diff = *la > *lb ? *la - *lb : *lb - *la;
    int k = nremove < diff ? nremove : diff, rest = nremove - k;
    if (*la > *lb) *la -= k;
    else *lb -= k;
    *la -= rest / 2;
    *lb -= rest - rest / 2;
}

int fx_tok_encode_tpl(fx_tokenizer *t, const fx_text_template *tpl, const char *a, const char *b, int max_len,
                      int32_t **ids, int *n, int *cap) {
    int room = tpl->bos + tpl->eos_a + (b ? tpl->eos_b_lead + tpl->bos_b + tpl->eos_b : 0);
    if ((tpl->bos + (b ? tpl->bos_b : 0) > 0 && t->tbos < 0) ||
        (tpl->eos_a + (b ? tpl->eos_b_lead + tpl->eos_b : 0) > 0 && t->teos < 0)) {
        fx_seterr("the template needs a %s token, and the tokenizer names none", t->tbos < 0 ? "bos" : "eos");
        return -1;
    }
    if (max_len < 0 || (max_len > 0 && max_len < room)) {
        fx_seterr("max length %d leaves no room for the %d special tokens", max_len, room);
        return -1;
    }
    t->na = t->nb = 0;
    if (encode_with_specials(t, a, &t->ia, &t->na, &t->capa) != 0) return -1;
    if (b && encode_with_specials(t, b, &t->ib, &t->nb, &t->capb) != 0) return -1;
    int la = t->na, lb = t->nb;
    if (max_len > 0 && la + lb + room > max_len) {
        if (b) truncate_pair(&la, &lb, la + lb + room - max_len);
        else la = max_len - room;
    }
    ids_reserve(ids, cap, *n + la + lb + room);
    int32_t *o = *ids + *n;
    for (int i = 0; i < tpl->bos; i++) *o++ = t->tbos;
    memcpy(o, t->ia, (size_t)la * sizeof *o);
    o += la;
    for (int i = 0; i < tpl->eos_a; i++) *o++ = t->teos;
    if (b) {
        for (int i = 0; i < tpl->eos_b_lead; i++) *o++ = t->teos;
        for (int i = 0; i < tpl->bos_b; i++) *o++ = t->tbos;
        memcpy(o, t->ib, (size_t)lb * sizeof *o);
        o += lb;
        for (int i = 0; i < tpl->eos_b; i++) *o++ = t->teos;
    }
    *n += la + lb + room;
    return 0;
}

int fx_tok_encode_seq(fx_tokenizer *t, const char *a, const char *b, int max_len, int32_t **ids, int *n,
                      int *cap) {
    return fx_tok_encode_tpl(t, t->tpl, a, b, max_len, ids, n, cap);
}

int fx_tok_encode(fx_tokenizer *t, const char *a, const char *b, int max_len, int32_t *out) {
    if (max_len <= 0) { fx_seterr("max length %d must be positive", max_len); return -1; }
    int32_t *ids = NULL;
    int n = 0, cap = 0;
    if (fx_tok_encode_seq(t, a, b, max_len, &ids, &n, &cap) != 0) { free(ids); return -1; }
    memcpy(out, ids, (size_t)n * sizeof *out);
    free(ids);
    return n;
}

/* ============================================================================================
 * decoding
 * ============================================================================================ */

/* Length of the bad stretch at S[0..len) that one U+FFFD replaces, as Python's UTF-8 decoder counts it:
 * the longest start of a well-formed sequence (the "maximal subpart"), or 1 byte. */
static size_t bad_utf8_len(const unsigned char *s, size_t len) {
    unsigned c = s[0];
    int need;
    unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) need = 1;
    else if (c >= 0xE0 && c <= 0xEF) { need = 2; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
    else if (c >= 0xF0 && c <= 0xF4) { need = 3; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
    else return 1;
    size_t k = 1;
    for (int i = 0; i < need && k < len; i++, k++) {
        unsigned x = s[k];
        if (i == 0 ? (x < lo || x > hi) : (x & 0xC0) != 0x80) break;
    }
    return k;
}

char *fx_tok_decode(const fx_tokenizer *t, const int32_t *ids, int n, int skip_special) {
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->vocab_size || !t->present[ids[i]]) {
            fx_seterr("token id %d (at %d) is not in the vocabulary", (int)ids[i], i);
            return NULL;
        }
        total += t->dec_off[ids[i] + 1] - t->dec_off[ids[i]];
    }
    char *raw = fx_malloc(total + 1);
    size_t o = 0;
    for (int i = 0; i < n; i++) {
        if (skip_special && t->special[ids[i]]) continue;
        size_t b = t->dec_off[ids[i]], e = t->dec_off[ids[i] + 1];
        memcpy(raw + o, t->dec + b, e - b);
        o += e - b;
    }
    /* Replace what is not UTF-8: one U+FFFD (3 bytes) per bad stretch of at least 1 byte, so 3x bounds it. */
    char *out = fx_malloc(3 * o + 1);
    size_t i = 0, w = 0;
    while (i < o) {
        size_t good = fx_utf8_valid_prefix(raw + i, o - i);
        memcpy(out + w, raw + i, good);
        w += good;
        i += good;
        if (i < o) {
            i += bad_utf8_len((const unsigned char *)raw + i, o - i);
            w += (size_t)fx_utf8_put(out + w, 0xFFFD);
        }
    }
    out[w] = 0;
    free(raw);
    return out;
}
