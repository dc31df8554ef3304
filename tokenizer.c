/* tokenizer.c: byte-level BPE exactly as Hugging Face's GPT-2 / RoBERTa tokenizers: vocab.json and
 * merges.txt, the GPT-2 pre-tokenisation pattern (written out by hand), merges lowest rank first, RoBERTa's
 * special tokens and longest_first truncation, and decoding. It adds no prefix space and does no Unicode
 * normalisation (neither does the reference). */
#include "fedex.h"

#include <stdlib.h>
#include <string.h>

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
static const fx_text_template no_specials = {0, 0, 0, 0};

struct fx_tokenizer {
    int vocab_size;          /* largest id + 1 */
    char *dec;               /* the bytes every token stands for, back to back */
    size_t *dec_off;         /* (vocab_size + 1) token i is dec[dec_off[i] .. dec_off[i+1]) */
    uint8_t *present;        /* (vocab_size) 1 for ids vocab.json defines */
    uint8_t *special;        /* (vocab_size) 1 for <s>, </s>, <pad>, <unk>, <mask>, <|endoftext|> */
    int bos, eos, pad;
    const fx_text_template *tpl; /* what Hugging Face's tokenizer of this vocabulary puts around a text */
    /* The special tokens Hugging Face splits text on before BPE ("<s>" typed in a sentence becomes id 0):
     * RoBERTa's <s> </s> <unk> <pad> <mask>, or GPT-2's <|endoftext|>. Only <mask> is lstrip: the white
     * space before it goes with it. */
    int nsplit;
    struct { char text[16]; int len, id, lstrip; } split[5];
    int32_t byte_id[256];    /* id of the one-character token of each byte */
    pairmap merges;
    strmap cache;            /* word bytes -> (offset in cache_ids, count) */
    int32_t *cache_ids; size_t cache_n, cache_cap;
    /* scratch of one BPE run, grown to the longest word seen */
    int32_t *sym, *prev, *next; uint64_t *heap, *defer; int scratch_cap;
    /* scratch of one sequence: the two texts' ids before truncation */
    int32_t *ia, *ib; int na, nb, capa, capb;
};

static int load_vocab(fx_tokenizer *t, const char *path, strmap *vocab) {
    fx_json j;
    if (fx_json_load(path, &j) != 0) return -1;
    int rc = -1;
    if (j.type != FX_JOBJ || j.n == 0) {
        fx_seterr("%s:1: expected a JSON object of token -> id", path);
        goto done;
    }
    int maxid = -1;
    for (size_t i = 0; i < j.n; i++) {
        const fx_json *v = &j.kids[i];
        if (v->type != FX_JNUM || !v->is_int || v->inum < 0 || v->inum >= TOK_MAX_ID) {
            fx_seterr("%s: token \"%.40s\": id must be an integer in [0, %d)", path, j.keys[i], TOK_MAX_ID);
            goto done;
        }
        if (j.klens[i] == 0 || j.klens[i] > UINT32_MAX) {
            fx_seterr("%s: entry %zu: token of length %zu", path, i, j.klens[i]);
            goto done;
        }
        if (!strmap_put(vocab, j.keys[i], j.klens[i], (int32_t)v->inum, 0)) {
            fx_seterr("%s: token \"%.40s\" appears twice", path, j.keys[i]);
            goto done;
        }
        if ((int)v->inum > maxid) maxid = (int)v->inum;
    }
    t->vocab_size = maxid + 1;
    t->present = fx_calloc((size_t)t->vocab_size, 1);
    t->special = fx_calloc((size_t)t->vocab_size, 1);
    t->dec_off = fx_calloc((size_t)t->vocab_size + 1, sizeof *t->dec_off);
    const char **src = fx_calloc((size_t)t->vocab_size, sizeof *src);
    size_t *slen = fx_calloc((size_t)t->vocab_size, sizeof *slen);
    for (size_t i = 0; i < j.n; i++) {
        int id = (int)j.kids[i].inum;
        if (t->present[id]) {
            fx_seterr("%s: id %d is given to two tokens (\"%.40s\" and another)", path, id, j.keys[i]);
            free(src); free(slen);
            goto done;
        }
        t->present[id] = 1;
        src[id] = j.keys[i];
        slen[id] = j.klens[i];
    }
    /* A token's bytes: each character maps back through the byte table; a character outside it (none in
     * GPT-2's vocabulary) is kept as its own UTF-8, which is never more bytes than its text. */
    uint32_t cp_of[256];
    int byte_of[BYTE_CP_END];
    byte_tables(cp_of, byte_of);
    size_t total = 0;
    for (int id = 0; id < t->vocab_size; id++) total += slen[id];
    t->dec = fx_malloc(total + 1);
    size_t o = 0;
    for (int id = 0; id < t->vocab_size; id++) {
        t->dec_off[id] = o;
        size_t k = 0;
        while (k < slen[id]) {
            uint32_t cp;
            int m = fx_utf8_next(src[id] + k, slen[id] - k, &cp);
            if (m <= 0) {
                fx_seterr("%s: token \"%.40s\" is not valid UTF-8", path, src[id]);
                free(src); free(slen);
                goto done;
            }
            int b = cp < BYTE_CP_END ? byte_of[cp] : -1;
            if (b >= 0) t->dec[o++] = (char)b;
            else { memcpy(t->dec + o, src[id] + k, (size_t)m); o += (size_t)m; }
            k += (size_t)m;
        }
    }
    t->dec_off[t->vocab_size] = o;
    free(src); free(slen);
    rc = 0;
done:
    fx_json_free(&j);
    return rc;
}

static int vocab_id(const strmap *vocab, const char *tok) {
    int32_t id;
    return strmap_get(vocab, tok, strlen(tok), &id, NULL) ? id : -1;
}

static int load_merges(fx_tokenizer *t, const char *path, const strmap *vocab) {
    char *text;
    size_t len;
    if (fx_read_file(path, &text, &len) != 0) return -1;
    size_t lines = 1;
    for (size_t i = 0; i < len; i++) lines += text[i] == '\n';
    t->merges.cap = 16;
    while (t->merges.cap < 2 * lines) t->merges.cap *= 2;
    t->merges.key = fx_calloc(t->merges.cap, sizeof *t->merges.key);
    t->merges.rank = fx_malloc(t->merges.cap * sizeof *t->merges.rank);
    t->merges.id = fx_malloc(t->merges.cap * sizeof *t->merges.id);

    char buf[1024];
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
        if (sp == start || sp + 1 >= n || memchr(text + sp + 1, ' ', n - sp - 1) || n - start >= sizeof buf ||
            memchr(text + start, 0, n - start)) {
            fx_seterr("%s:%d: expected two tokens separated by one space", path, line);
            free(text);
            return -1;
        }
        memcpy(buf, text + start, sp - start);
        buf[sp - start] = 0;
        int a = vocab_id(vocab, buf);
        memcpy(buf, text + sp + 1, n - sp - 1);
        buf[n - sp - 1] = 0;
        int b = vocab_id(vocab, buf);
        memcpy(buf, text + start, sp - start);
        memcpy(buf + (sp - start), text + sp + 1, n - sp - 1);
        buf[n - start - 1] = 0;
        int ab = vocab_id(vocab, buf);
        if (a < 0 || b < 0 || ab < 0) {
            fx_seterr("%s:%d: merge of \"%.*s\" is not in the vocabulary", path, line, (int)(n - start),
                      text + start);
            free(text);
            return -1;
        }
        /* A pair listed twice keeps the rank of its last line, as Python's dict(zip(merges, range(n))). */
        uint64_t k = pair_key(a, b);
        size_t s = pair_slot(&t->merges, k);
        t->merges.key[s] = k;
        t->merges.rank[s] = rank++;
        t->merges.id[s] = ab;
    }
    free(text);
    return 0;
}

fx_tokenizer *fx_tok_load(const char *dir) {
    size_t dl = strlen(dir) + 16;
    char *vpath = fx_malloc(dl), *mpath = fx_malloc(dl);
    snprintf(vpath, dl, "%s/vocab.json", dir);
    snprintf(mpath, dl, "%s/merges.txt", dir);
    fx_tokenizer *t = fx_calloc(1, sizeof *t);
    strmap vocab;
    strmap_init(&vocab, 1 << 16);
    if (load_vocab(t, vpath, &vocab) != 0 || load_merges(t, mpath, &vocab) != 0) goto fail;

    uint32_t cp_of[256];
    int byte_of[BYTE_CP_END];
    byte_tables(cp_of, byte_of);
    for (int b = 0; b < 256; b++) {
        char s[4];
        int n = fx_utf8_put(s, cp_of[b]);
        int32_t id;
        if (!strmap_get(&vocab, s, (size_t)n, &id, NULL)) {
            fx_seterr("%s: no token for byte 0x%02X (\"%.*s\"): not a byte-level vocabulary", vpath, b, n, s);
            goto fail;
        }
        t->byte_id[b] = id;
    }
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
        goto fail;
    }
    t->pad = pad >= 0 ? pad : t->eos;
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
    strmap_init(&t->cache, 1 << 12);
    strmap_free(&vocab);
    free(vpath); free(mpath);
    return t;
fail:
    strmap_free(&vocab);
    free(vpath); free(mpath);
    fx_tok_free(t);
    return NULL;
}

void fx_tok_free(fx_tokenizer *t) {
    if (!t) return;
    free(t->dec); free(t->dec_off); free(t->present); free(t->special);
    free(t->merges.key); free(t->merges.rank); free(t->merges.id);
    strmap_free(&t->cache);
    free(t->cache_ids);
    free(t->sym); free(t->prev); free(t->next); free(t->heap); free(t->defer);
    free(t->ia); free(t->ib);
    free(t);
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
 * recognised when popped: the pair at their position no longer has their rank. */

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
     * adds at most two (via defer), so neither the heap nor defer ever holds 2n entries. */
    while (nh > 0) {
        uint64_t top = heap_pop(heap, &nh);
        int32_t rank = (int32_t)(top >> 32);
        int k = (int)(uint32_t)top, nx = next[k];
        if (sym[k] >= 0 && nx >= 0 && find_merge(t, sym[k], sym[nx], &r, &id) && r == rank) {
            sym[k] = id;
            sym[nx] = -1;
            next[k] = next[nx];
            if (next[nx] >= 0) prev[next[nx]] = k;
            if (prev[k] >= 0 && find_merge(t, sym[prev[k]], sym[k], &r, NULL))
                defer[nd++] = (uint64_t)r << 32 | (uint32_t)prev[k];
            if (next[k] >= 0 && find_merge(t, sym[k], sym[next[k]], &r, NULL))
                defer[nd++] = (uint64_t)r << 32 | (uint32_t)k;
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
        size_t e = next_piece(text, len, i);
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
static int encode_with_specials(fx_tokenizer *t, const char *text, int32_t **ids, int *n, int *cap) {
    size_t len = strlen(text), start = 0, i = 0;
    size_t ok = fx_utf8_valid_prefix(text, len);
    if (ok != len) { fx_seterr("invalid UTF-8 at byte %zu", ok); return -1; }
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
    int room = tpl->bos + tpl->eos_a + (b ? tpl->eos_b_lead + tpl->eos_b : 0);
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
    for (int i = 0; i < tpl->bos; i++) *o++ = t->bos;
    memcpy(o, t->ia, (size_t)la * sizeof *o);
    o += la;
    for (int i = 0; i < tpl->eos_a; i++) *o++ = t->eos;
    if (b) {
        for (int i = 0; i < tpl->eos_b_lead; i++) *o++ = t->eos;
        memcpy(o, t->ib, (size_t)lb * sizeof *o);
        o += lb;
        for (int i = 0; i < tpl->eos_b; i++) *o++ = t->eos;
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
