/* score.c: the E2E NLG metrics as e2e-metrics computes them: BLEU and NIST as its Python port of
 * mteval-v13a (measure_scores.py -p), ROUGE-L and CIDEr-D as the pycocoevalcap scorers it calls (on text
 * tokenised by ptb.c), and the readers of its hypothesis and reference files. It does not compute METEOR
 * (the official scorer needs Java and its paraphrase tables) and it does not generate text. */
#include "fedex.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ============================================================================================
 * Code points: properties, Python's lower(), Python's white space
 * ============================================================================================ */

int fx_cp_flags(uint32_t cp) {
    int lo = 0, hi = fx_case_nranges - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (cp < fx_case_ranges[mid].lo) hi = mid - 1;
        else if (cp > fx_case_ranges[mid].hi) lo = mid + 1;
        else return fx_case_ranges[mid].cls;
    }
    return 0;
}

static uint32_t lower1(uint32_t cp) {
    if (cp < 0x80) return cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
    int lo = 0, hi = fx_lower_nruns - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        const fx_case_run *r = &fx_lower_runs[mid];
        if (cp < r->lo) hi = mid - 1;
        else if (cp > r->hi) lo = mid + 1;
        else return (r->step == 0 ? cp == r->lo : (cp - r->lo) % r->step == 0) ? (uint32_t)((int32_t)cp + r->delta) : cp;
    }
    return cp;
}

/* The final-sigma rule: a capital sigma lowers to the final form when a cased letter comes before it
 * and none after it. Python (Unicode's Final_Sigma) looks past Case_Ignorable characters on each side;
 * Java looks through the rest of the word as its BreakIterator cuts words: letters, digits and marks,
 * with a dash, soft hyphen, ' " . or U+2027 inside a word between two letters. */
static int java_mid(uint32_t c) {
    return c == '-' || c == '\'' || c == '"' || c == '.' || c == 0xAD || c == 0x2027 || c == 0x58A || c == 0x5BE ||
           c == 0x1400 || c == 0x1806 || (c >= 0x2010 && c <= 0x2015) || c == 0x2E17 || c == 0x2E1A ||
           c == 0x2E3A || c == 0x2E3B || c == 0x2E40 || c == 0x301C || c == 0x3030 || c == 0x30A0 || c == 0xFE31 ||
           c == 0xFE32 || c == 0xFE58 || c == 0xFE63 || c == 0xFF0D;
}
static int java_letter(uint32_t c) {
    return fx_uni_class(c) != FX_UNI_OTHER && fx_uni_class(c) != FX_UNI_SPACE
               ? 1 : c > 0x7F && (fx_cp_flags(c) & FX_CP_IGNORABLE) && !java_mid(c) && c != 0xB7 && c != 0x387 &&
                     c != 0x55F && c != 0x5F4 && c != 0x2018 && c != 0x2019 && c != 0x2024 && c != 0xFE13 &&
                     c != 0xFE52 && c != 0xFE55 && c != 0xFF07 && c != 0xFF0E && c != 0xFF1A;
}
static int word_char(const uint32_t *s, int n, int i) {
    if (java_letter(s[i])) return 1;
    return java_mid(s[i]) && i > 0 && i + 1 < n && fx_uni_class(s[i - 1]) == FX_UNI_LETTER &&
           fx_uni_class(s[i + 1]) == FX_UNI_LETTER;
}
static int final_sigma(const uint32_t *s, int n, int i, int java) {
    int j = i - 1, cased = 0;
    if (java) {
        for (; j >= 0 && word_char(s, n, j) && !cased; j--) cased = fx_cp_flags(s[j]) & FX_CP_CASED;
        if (!cased) return 0;
        for (j = i + 1; j < n && word_char(s, n, j); j++) if (fx_cp_flags(s[j]) & FX_CP_CASED) return 0;
        return 1;
    }
    while (j >= 0 && (fx_cp_flags(s[j]) & FX_CP_IGNORABLE)) j--;
    if (j < 0 || !(fx_cp_flags(s[j]) & FX_CP_CASED)) return 0;
    j = i + 1;
    while (j < n && (fx_cp_flags(s[j]) & FX_CP_IGNORABLE)) j++;
    return j == n || !(fx_cp_flags(s[j]) & FX_CP_CASED);
}

int fx_lower_cps(const uint32_t *cp, int n, int java, uint32_t *out) {
    int k = 0;
    for (int i = 0; i < n; i++) {
        if (cp[i] == 0x130) { out[k++] = 'i'; out[k++] = 0x307; }
        else if (cp[i] == 0x3A3) out[k++] = final_sigma(cp, n, i, java) ? 0x3C2 : 0x3C3;
        else out[k++] = lower1(cp[i]);
    }
    return k;
}

/* str.isspace(): what Python's \s, strip() and split() treat as white space. */
static int py_space(uint32_t c) {
    return (c >= 9 && c <= 13) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* S (valid UTF-8, LEN bytes) as code points, malloc'd; -1 on invalid UTF-8. */
static int decode(const char *s, size_t len, uint32_t **out, int *n) {
    uint32_t *cp = fx_malloc((len + 1) * sizeof *cp);
    int k = 0;
    for (size_t i = 0; i < len;) {
        int b = fx_utf8_next(s + i, len - i, &cp[k]);
        if (b <= 0) { free(cp); return -1; }
        i += (size_t)b;
        k++;
    }
    *out = cp;
    *n = k;
    return 0;
}

void fx_cps_put(fx_cps *b, uint32_t c) {
    if (b->n == b->cap) { b->cap = b->cap ? b->cap * 2 : 256; b->v = fx_realloc(b->v, (size_t)b->cap * sizeof *b->v); }
    b->v[b->n++] = c;
}
void fx_cps_str(fx_cps *b, const char *s) { while (*s) fx_cps_put(b, (uint32_t)(unsigned char)*s++); }

void fx_cps_replace(fx_cps *b, fx_cps *scratch, const char *lit, const char *rep, int caseless) {
    int l = (int)strlen(lit);
    scratch->n = 0;
    for (int i = 0; i < b->n;) {
        int m = i + l <= b->n;
        for (int j = 0; m && j < l; j++) {
            uint32_t c = b->v[i + j];
            if (caseless && c >= 'A' && c <= 'Z') c += 32;
            m = c == (uint32_t)(unsigned char)lit[j];
        }
        if (m) { fx_cps_str(scratch, rep); i += l; }
        else fx_cps_put(scratch, b->v[i++]);
    }
    fx_cps t = *b; *b = *scratch; *scratch = t;
}

/* ============================================================================================
 * Interned sequences: tokens (as code points) and n-grams (as token ids) get dense ids
 * ============================================================================================ */

typedef struct {
    uint32_t *pool; size_t npool, cpool; /* every key's values, one after another */
    size_t *off; int *len;               /* key i: pool[off[i] .. off[i]+len[i]) */
    int *prefix;                         /* n-grams: the id of the key without its last value, or -1 */
    int n, cap;
    int *slot; size_t nslot;             /* open addressing: id + 1, 0 empty */
} seqtab;

static uint64_t seq_hash(const uint32_t *s, int len) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (uint64_t)len;
    for (int i = 0; i < len; i++) { h ^= s[i]; h *= 0x100000001B3ull; h ^= h >> 29; }
    return h;
}

static int seq_find(const seqtab *t, const uint32_t *s, int len, size_t *pos) {
    size_t m = t->nslot - 1, p = (size_t)seq_hash(s, len) & m;
    for (;; p = (p + 1) & m) {
        int id = t->slot[p] - 1;
        if (id < 0) { *pos = p; return -1; }
        if (t->len[id] == len && (!len || memcmp(t->pool + t->off[id], s, (size_t)len * sizeof *s) == 0)) return id;
    }
}

static void seq_grow(seqtab *t) {
    size_t ns = t->nslot ? t->nslot * 2 : 1024;
    int *slot = fx_calloc(ns, sizeof *slot);
    for (int id = 0; id < t->n; id++) {
        size_t p = (size_t)seq_hash(t->pool + t->off[id], t->len[id]) & (ns - 1);
        while (slot[p]) p = (p + 1) & (ns - 1);
        slot[p] = id + 1;
    }
    free(t->slot);
    t->slot = slot;
    t->nslot = ns;
}

static int seq_intern(seqtab *t, const uint32_t *s, int len, int prefix) {
    if ((size_t)(t->n + 1) * 2 > t->nslot) seq_grow(t);
    size_t pos;
    int id = seq_find(t, s, len, &pos);
    if (id >= 0) return id;
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 1024;
        t->off = fx_realloc(t->off, (size_t)t->cap * sizeof *t->off);
        t->len = fx_realloc(t->len, (size_t)t->cap * sizeof *t->len);
        t->prefix = fx_realloc(t->prefix, (size_t)t->cap * sizeof *t->prefix);
    }
    if (t->npool + (size_t)len > t->cpool) {
        t->cpool = (t->npool + (size_t)len) * 2;
        t->pool = fx_realloc(t->pool, t->cpool * sizeof *t->pool);
    }
    if (len) memcpy(t->pool + t->npool, s, (size_t)len * sizeof *s);
    t->off[t->n] = t->npool;
    t->len[t->n] = len;
    t->prefix[t->n] = prefix;
    t->npool += (size_t)len;
    t->slot[pos] = t->n + 1;
    return t->n++;
}

static void seq_free(seqtab *t) {
    free(t->pool); free(t->off); free(t->len); free(t->prefix); free(t->slot);
    memset(t, 0, sizeof *t);
}

/* A sentence: its token ids. */
typedef struct { uint32_t *id; int n; } sent;

/* Per-n-gram counters that grow with the table, zero for ids not touched. */
typedef struct { int *v; int cap; } counter;
static int *counter_at(counter *c, int need) {
    if (need > c->cap) {
        int cap = need * 2;
        c->v = fx_realloc(c->v, (size_t)cap * sizeof *c->v);
        memset(c->v + c->cap, 0, (size_t)(cap - c->cap) * sizeof *c->v);
        c->cap = cap;
    }
    return c->v;
}

/* The ids of S's n-grams (S->n - n + 1 of them, none when shorter) into OUT; interned in G. An n-gram's
 * prefix (its first n-1 tokens) is interned with it, which NIST's information weight needs. */
static int ngram_ids(seqtab *g, const sent *s, int n, int *out) {
    int k = 0;
    for (int i = 0; i + n <= s->n; i++) {
        int pre = n > 1 ? seq_intern(g, s->id + i, n - 1, -1) : -1;
        out[k++] = seq_intern(g, s->id + i, n, pre);
    }
    return k;
}

/* ============================================================================================
 * Tokenisation for BLEU and NIST: pymteval's tokenize(), then lower() per token
 * ============================================================================================ */

static int is_digit(uint32_t c) { return c >= '0' && c <= '9'; }
/* mteval's punctuation class [{-~[-` -&(-+:-@/]: ASCII punctuation but ' , - . */
static int mt_punct(uint32_t c) {
    return (c >= 0x7B && c <= 0x7E) || (c >= 0x5B && c <= 0x60) || (c >= 0x20 && c <= 0x26) ||
           (c >= 0x28 && c <= 0x2B) || (c >= 0x3A && c <= 0x40) || c == '/';
}

/* re.sub of a two-character pattern (A)(B), scanned left to right without overlap: MODE 0 writes
 * "a b " (\1 \2 ), mode 1 " a b" ( \1 \2), mode 2 "a b " for the digit-dash rule. */
static void sub_pair(fx_cps *in, fx_cps *out, int (*a)(uint32_t), int (*b)(uint32_t), int mode) {
    out->n = 0;
    for (int i = 0; i < in->n;) {
        if (i + 1 < in->n && a(in->v[i]) && b(in->v[i + 1])) {
            if (mode == 1) fx_cps_put(out, ' ');
            fx_cps_put(out, in->v[i]); fx_cps_put(out, ' '); fx_cps_put(out, in->v[i + 1]);
            if (mode != 1) fx_cps_put(out, ' ');
            i += 2;
        } else fx_cps_put(out, in->v[i++]);
    }
    fx_cps t = *in; *in = *out; *out = t;
}
static int not_digit(uint32_t c) { return !is_digit(c); }
static int dot_comma(uint32_t c) { return c == '.' || c == ','; }
static int dash(uint32_t c) { return c == '-'; }

/* The tokens of CP[0..n) as pymteval's tokenize() gives them (an empty text gives one empty token),
 * each lower-cased unless TOKENIZED, where the text is only split at spaces. Interned into V. */
static void mt_tokens(seqtab *v, const uint32_t *cp, int n, int tokenized, sent *s, fx_cps *a, fx_cps *b) {
    a->n = 0;
    for (int i = 0; i < n; i++) fx_cps_put(a, cp[i]);
    if (!tokenized) {
        /* In pymteval's order: <skipped>, hyphenated line ends, new lines, four SGML entities; the padding
         * spaces; punctuation (the padding included); period and comma unless beside a digit; the dash
         * after a digit. */
        fx_cps_replace(a, b, "<skipped>", "", 0);
        fx_cps_replace(a, b, "-\n", "", 0);
        fx_cps_replace(a, b, "\n", " ", 0);
        fx_cps_replace(a, b, "&quot;", "\"", 0);
        fx_cps_replace(a, b, "&amp;", "&", 0);
        fx_cps_replace(a, b, "&lt;", "<", 0);
        fx_cps_replace(a, b, "&gt;", ">", 0);
        b->n = 0;
        for (int i = -1; i <= a->n; i++) {
            uint32_t c = i < 0 || i == a->n ? ' ' : a->v[i];
            if (mt_punct(c)) { fx_cps_put(b, ' '); fx_cps_put(b, c); fx_cps_put(b, ' '); }
            else fx_cps_put(b, c);
        }
        fx_cps t = *a; *a = *b; *b = t;
        sub_pair(a, b, not_digit, dot_comma, 0);
        sub_pair(a, b, dot_comma, not_digit, 1);
        sub_pair(a, b, is_digit, dash, 2);
    }
    /* \s+ -> ' ', strip, split(' '): the runs between white space; an all-blank text is one empty token.
     * Tokenized text splits at spaces only. */
    s->n = 0;
    s->id = NULL;
    int cap = 0, any = 0;
    uint32_t *low = fx_malloc(((size_t)a->n * 2 + 1) * sizeof *low);
    for (int i = 0; i <= a->n;) {
        int j = i;
        while (j < a->n && !(tokenized ? a->v[j] == ' ' : py_space(a->v[j]))) j++;
        if (j > i) {
            int m = tokenized ? (memcpy(low, a->v + i, (size_t)(j - i) * sizeof *low), j - i)
                              : fx_lower_cps(a->v + i, j - i, 0, low);
            if (s->n == cap) { cap = cap ? cap * 2 : 32; s->id = fx_realloc(s->id, (size_t)cap * sizeof *s->id); }
            s->id[s->n++] = (uint32_t)seq_intern(v, low, m, -1);
            any = 1;
        }
        i = j + 1;
    }
    if (!any && !tokenized) { /* "".split(' ') is [''] */
        s->id = fx_malloc(sizeof *s->id);
        s->id[0] = (uint32_t)seq_intern(v, low, 0, -1);
        s->n = 1;
    }
    free(low);
}

/* ============================================================================================
 * BLEU and NIST (pymteval's BLEUScore and NISTScore, accumulated over the corpus)
 * ============================================================================================ */

enum { BLEU_N = 4, NIST_N = 5 };

typedef struct {
    seqtab grams;
    counter cnt, maxref, total;         /* scratch counts; max over one item's references; NIST's totals */
    long bleu_len[BLEU_N], bleu_hits[BLEU_N], ref_len;
    long nist_len[NIST_N], ref_words;    /* ref_words: the 0-gram count, all reference words */
    double avg_ref_len;
    int *hit_id, *hit_n, *hit_cnt; int nhit, chit; /* NIST's clipped hits, weighed at the end */
    int *ids;                            /* scratch n-gram ids */
    int cids;
} mt_acc;

static void mt_add(mt_acc *m, const sent *hyp, const sent *refs, int nref) {
    int longest = hyp->n;
    for (int r = 0; r < nref; r++) if (refs[r].n > longest) longest = refs[r].n;
    if (longest > m->cids) { m->cids = longest; m->ids = fx_realloc(m->ids, (size_t)longest * sizeof *m->ids); }
    long ref_sum = 0;
    for (int r = 0; r < nref; r++) ref_sum += refs[r].n;
    for (int n = 1; n <= NIST_N; n++) {
        /* max count of each n-gram in any one reference; NIST's totals over all references */
        int *touched = NULL, nt = 0;
        for (int r = 0; r < nref; r++) {
            int k = ngram_ids(&m->grams, &refs[r], n, m->ids);
            int *cnt = counter_at(&m->cnt, m->grams.n), *mx = counter_at(&m->maxref, m->grams.n);
            int *tot = counter_at(&m->total, m->grams.n);
            for (int i = 0; i < k; i++) { cnt[m->ids[i]]++; tot[m->ids[i]]++; }
            touched = fx_realloc(touched, (size_t)(nt + k + 1) * sizeof *touched);
            for (int i = 0; i < k; i++) {
                int g = m->ids[i];
                if (cnt[g]) { if (cnt[g] > mx[g]) { if (!mx[g]) touched[nt++] = g; mx[g] = cnt[g]; } cnt[g] = 0; }
            }
        }
        int k = ngram_ids(&m->grams, hyp, n, m->ids);
        int *cnt = counter_at(&m->cnt, m->grams.n), *mx = counter_at(&m->maxref, m->grams.n);
        for (int i = 0; i < k; i++) cnt[m->ids[i]]++;
        long hits = 0;
        for (int i = 0; i < k; i++) {
            int g = m->ids[i];
            if (!cnt[g]) continue; /* counted already */
            int h = cnt[g] < mx[g] ? cnt[g] : mx[g];
            cnt[g] = 0;
            hits += h;
            if (h) { /* a hit is a reference's n-gram: its totals (and its prefix's) are counted */
                if (m->nhit == m->chit) {
                    m->chit = m->chit ? m->chit * 2 : 4096;
                    m->hit_id = fx_realloc(m->hit_id, (size_t)m->chit * sizeof *m->hit_id);
                    m->hit_n = fx_realloc(m->hit_n, (size_t)m->chit * sizeof *m->hit_n);
                    m->hit_cnt = fx_realloc(m->hit_cnt, (size_t)m->chit * sizeof *m->hit_cnt);
                }
                m->hit_id[m->nhit] = g; m->hit_n[m->nhit] = n; m->hit_cnt[m->nhit++] = h;
            }
        }
        for (int i = 0; i < nt; i++) mx[touched[i]] = 0;
        free(touched);
        if (n <= BLEU_N) { m->bleu_hits[n - 1] += hits; m->bleu_len[n - 1] += hyp->n - (n - 1); }
        m->nist_len[n - 1] += hyp->n - (n - 1);
    }
    /* BLEU's reference length: the closest to the hypothesis, the shorter of two as close */
    int best = refs[0].n;
    for (int r = 1; r < nref; r++) {
        int d = abs(refs[r].n - hyp->n), db = abs(best - hyp->n);
        if (d < db || (d == db && refs[r].n < best)) best = refs[r].n;
    }
    m->ref_len += best;
    m->ref_words += ref_sum;
    m->avg_ref_len += (double)ref_sum / nref;
}

/* BLEU = BP * exp(1/4 sum_n log(p_n)), p_n = hits_n / len_n with zeros floored at 1e-15 and 1e-9 as
 * pymteval does (no +1 smoothing); BP = exp(1 - r/c) when c <= r (c = 0 counts as 1e-5). */
static double mt_bleu(const mt_acc *m) {
    double bp = 1.0;
    if (m->bleu_len[0] <= m->ref_len)
        bp = exp(1.0 - (double)m->ref_len / (m->bleu_len[0] ? (double)m->bleu_len[0] : 1e-5));
    double s = 0;
    for (int n = 0; n < BLEU_N; n++) {
        double h = (double)m->bleu_hits[n], l = (double)m->bleu_len[n];
        s += log((h > 1e-15 ? h : 1e-15) / (l > 1e-9 ? l : 1e-9));
    }
    return bp * exp(s / BLEU_N);
}

/* NIST = BP * sum_n (sum over clipped hits of info(g) * hits) / len_n, info(g) = log2(count(g[:-1]) /
 * count(g)) over all references (the 0-gram counts all reference words); BP = exp(-beta log^2(L/Lref))
 * below ratio 1, beta = -log(0.5)/log(1.5)^2, Lref the sum of each item's mean reference length. */
static double mt_nist(const mt_acc *m) {
    double info[NIST_N] = {0};
    const int *tot = m->total.v;
    for (int i = 0; i < m->nhit; i++) {
        int g = m->hit_id[i], p = m->grams.prefix[g];
        double num = p < 0 ? (double)m->ref_words : (double)tot[p];
        info[m->hit_n[i] - 1] += log(num / (double)tot[g]) / log(2.0) * m->hit_cnt[i];
    }
    double sum = 0;
    for (int n = 0; n < NIST_N; n++) {
        if (m->nist_len[n] == 0) return NAN; /* the reference divides by zero here */
        sum += info[n] / (double)m->nist_len[n];
    }
    if (m->avg_ref_len == 0) return NAN; /* tokenised references without a token: a division by zero there */
    double ratio = (double)m->nist_len[0] / m->avg_ref_len, bp;
    if (ratio >= 1) bp = 1;
    else if (ratio <= 0) bp = 0;
    else {
        double beta = -log(0.5) / (log(1.5) * log(1.5)), l = log(ratio);
        bp = exp(-beta * l * l);
    }
    return bp * sum;
}

static void mt_free(mt_acc *m) {
    seq_free(&m->grams);
    free(m->cnt.v); free(m->maxref.v); free(m->total.v);
    free(m->hit_id); free(m->hit_n); free(m->hit_cnt); free(m->ids);
}

/* ============================================================================================
 * ROUGE-L and CIDEr-D (pycocoevalcap's Rouge and CiderScorer on the tokenised captions)
 * ============================================================================================ */

/* CAPTION split as ROUGE splits it (at every ' ', so "" is one empty token) or as CIDEr does (Python's
 * split(): runs between white space). */
static void split_caption(seqtab *v, const uint32_t *c, int n, int rouge, sent *s) {
    s->n = 0;
    s->id = fx_malloc(((size_t)n + 1) * sizeof *s->id);
    for (int i = 0; i <= n;) {
        int j = i;
        while (j < n && !(rouge ? c[j] == ' ' : py_space(c[j]))) j++;
        if (rouge || j > i) s->id[s->n++] = (uint32_t)seq_intern(v, c + i, j - i, -1);
        i = j + 1;
    }
}

static int lcs(const sent *a, const sent *b, int *row) {
    for (int j = 0; j <= b->n; j++) row[j] = 0;
    for (int i = 1; i <= a->n; i++) {
        int diag = 0;
        for (int j = 1; j <= b->n; j++) {
            int up = row[j];
            row[j] = a->id[i - 1] == b->id[j - 1] ? diag + 1 : (row[j] > row[j - 1] ? row[j] : row[j - 1]);
            diag = up;
        }
    }
    return row[b->n];
}

/* ROUGE-L of one item: P, R the best precision and recall of the LCS over its references,
 * F = (1 + b^2) P R / (R + b^2 P), b = 1.2. */
static double rouge_l(const sent *c, const sent *refs, int nref, int *row) {
    double pmax = 0, rmax = 0, b2 = 1.2 * 1.2;
    for (int r = 0; r < nref; r++) {
        int l = lcs(&refs[r], c, row);
        double p = (double)l / c->n, rc = (double)l / refs[r].n;
        if (p > pmax) pmax = p;
        if (rc > rmax) rmax = rc;
    }
    return pmax != 0 && rmax != 0 ? (1 + b2) * pmax * rmax / (rmax + b2 * pmax) : 0.0;
}

enum { CIDER_N = 4 };
#define CIDER_SIGMA 6.0

/* A caption's tf-idf vectors: per order n its distinct n-grams and weights tf * (log(N) - log(max(1,
 * df))), the norms, and its "length" as pycocoevalcap counts it: the number of bigrams. */
typedef struct { int *g, *ord; double *w; int k; double norm[CIDER_N]; int length; } tfidf;

static void cider_vec(seqtab *grams, const sent *s, const double *logdf, double ref_len, counter *cnt, int *ids,
                      tfidf *v) {
    v->k = 0;
    int cap = 4 * s->n + 1;
    v->g = fx_malloc((size_t)cap * sizeof *v->g);
    v->ord = fx_malloc((size_t)cap * sizeof *v->ord);
    v->w = fx_malloc((size_t)cap * sizeof *v->w);
    for (int n = 1; n <= CIDER_N; n++) {
        double nn = 0;
        int k = ngram_ids(grams, s, n, ids), *c = counter_at(cnt, grams->n);
        for (int i = 0; i < k; i++) c[ids[i]]++;
        for (int i = 0; i < k; i++) {
            int g = ids[i];
            if (!c[g]) continue;
            double w = c[g] * (ref_len - logdf[g]);
            v->g[v->k] = g; v->ord[v->k] = n - 1; v->w[v->k++] = w;
            nn += w * w;
            if (n == 2) v->length += c[g];
            c[g] = 0;
        }
        v->norm[n - 1] = sqrt(nn);
    }
}

static void tfidf_free(tfidf *v) { free(v->g); free(v->ord); free(v->w); }

/* ============================================================================================
 * The corpus scores
 * ============================================================================================ */

/* A tokenised input's caption: its tokens joined by single spaces. */
static char *join_tokens(const char *s) {
    size_t n = strlen(s), k = 0;
    char *c = fx_malloc(n + 1);
    for (size_t i = 0; i < n;) {
        while (i < n && s[i] == ' ') i++;
        size_t j = i;
        while (j < n && s[j] != ' ') j++;
        if (j > i) { if (k) c[k++] = ' '; memcpy(c + k, s + i, j - i); k += j - i; }
        i = j;
    }
    c[k] = 0;
    return c;
}

int fx_e2e_score(int n, char *const *hyp, char *const *const *refs, const int *nref, int tokenized,
                 fx_e2e_scores *out) {
    if (n <= 0) { fx_seterr("score: no items to score"); return -1; }
    int total = n;
    for (int i = 0; i < n; i++) {
        if (nref[i] < 1) { fx_seterr("score: item %d has no reference", i + 1); return -1; }
        total += nref[i];
    }
    /* Every text: the hypotheses first (i), then the references item after item. */
    const char **text = fx_malloc((size_t)total * sizeof *text);
    int *owner = fx_malloc((size_t)total * sizeof *owner), t = 0;
    for (int i = 0; i < n; i++) { owner[t] = i; text[t++] = hyp[i]; }
    for (int i = 0; i < n; i++) for (int r = 0; r < nref[i]; r++) { owner[t] = i; text[t++] = refs[i][r]; }
    for (int k = 0; k < total; k++) {
        size_t len = strlen(text[k]), ok = fx_utf8_valid_prefix(text[k], len);
        if (ok != len) {
            fx_seterr("score: %s of item %d is not valid UTF-8 at byte %zu", k < n ? "the hypothesis" : "a reference",
                      owner[k] + 1, ok + 1);
            free(text); free(owner);
            return -1;
        }
    }
    free(owner);

    /* BLEU and NIST on mteval's tokens */
    seqtab vocab = {0};
    sent *mt = fx_calloc((size_t)total, sizeof *mt);
    fx_cps a = {0}, b = {0};
    for (int k = 0; k < total; k++) {
        uint32_t *cp; int m;
        decode(text[k], strlen(text[k]), &cp, &m); /* valid: checked above */
        mt_tokens(&vocab, cp, m, tokenized, &mt[k], &a, &b);
        free(cp);
    }
    free(a.v); free(b.v);
    mt_acc acc = {0};
    for (int i = 0, base = n; i < n; base += nref[i++]) mt_add(&acc, &mt[i], &mt[base], nref[i]);
    out->bleu = mt_bleu(&acc);
    out->nist = mt_nist(&acc);
    mt_free(&acc);
    for (int k = 0; k < total; k++) free(mt[k].id);
    free(mt);
    seq_free(&vocab);

    /* The captions ROUGE-L and CIDEr see: PTB-tokenised (hypotheses and references in two runs, as
     * there), or the given tokens. */
    char **cap = fx_calloc((size_t)total, sizeof *cap);
    int rc = 0;
    if (tokenized) {
        for (int k = 0; k < total; k++) cap[k] = join_tokens(text[k]);
    } else {
        rc = fx_ptb_tokenize(n, text, cap);
        if (rc == 0) rc = fx_ptb_tokenize(total - n, text + n, cap + n);
    }
    free(text);
    if (rc != 0) {
        for (int k = 0; k < total; k++) free(cap[k]);
        free(cap);
        return -1;
    }
    seqtab words = {0}, grams = {0};
    sent *rs = fx_calloc((size_t)total, sizeof *rs), *cs = fx_calloc((size_t)total, sizeof *cs);
    int longest = 1;
    for (int k = 0; k < total; k++) {
        uint32_t *cp; int m;
        decode(cap[k], strlen(cap[k]), &cp, &m);
        split_caption(&words, cp, m, 1, &rs[k]);
        split_caption(&words, cp, m, 0, &cs[k]);
        if (rs[k].n > longest) longest = rs[k].n;
        free(cp);
        free(cap[k]);
    }
    free(cap);

    double rsum = 0;
    int *row = fx_malloc(((size_t)longest + 1) * sizeof *row);
    for (int i = 0, base = n; i < n; base += nref[i++]) rsum += rouge_l(&rs[i], &rs[base], nref[i], row);
    free(row);
    out->rouge_l = rsum / n;

    /* CIDEr-D: document frequency of each n-gram over the items' reference sets */
    int *ids = fx_malloc(((size_t)longest + 1) * sizeof *ids);
    counter df = {0}, seen = {0}, cnt = {0};
    for (int i = 0, base = n; i < n; base += nref[i++])
        for (int r = 0; r < nref[i]; r++)
            for (int g = 1; g <= CIDER_N; g++) {
                int k = ngram_ids(&grams, &cs[base + r], g, ids);
                int *d = counter_at(&df, grams.n), *s = counter_at(&seen, grams.n);
                for (int j = 0; j < k; j++) if (s[ids[j]] != i + 1) { s[ids[j]] = i + 1; d[ids[j]]++; }
            }
    for (int i = 0; i < n; i++) for (int g = 1; g <= CIDER_N; g++) ngram_ids(&grams, &cs[i], g, ids);
    counter_at(&df, grams.n);
    double *logdf = fx_malloc(((size_t)grams.n + 1) * sizeof *logdf);
    for (int g = 0; g < grams.n; g++) logdf[g] = log(df.v[g] > 1 ? (double)df.v[g] : 1.0);
    double ref_len = log((double)n), csum = 0;
    double *wref = fx_calloc((size_t)grams.n + 1, sizeof *wref);
    for (int i = 0, base = n; i < n; base += nref[i++]) {
        tfidf h = {0};
        cider_vec(&grams, &cs[i], logdf, ref_len, &cnt, ids, &h);
        double score[CIDER_N] = {0};
        for (int r = 0; r < nref[i]; r++) {
            tfidf v = {0};
            cider_vec(&grams, &cs[base + r], logdf, ref_len, &cnt, ids, &v);
            for (int j = 0; j < v.k; j++) wref[v.g[j]] = v.w[j];
            double val[CIDER_N] = {0}, delta = (double)(h.length - v.length);
            for (int j = 0; j < h.k; j++) {
                double wr = wref[h.g[j]];
                val[h.ord[j]] += (h.w[j] < wr ? h.w[j] : wr) * wr; /* clipped */
            }
            for (int g = 0; g < CIDER_N; g++) {
                if (h.norm[g] != 0 && v.norm[g] != 0) val[g] /= h.norm[g] * v.norm[g];
                val[g] *= exp(-(delta * delta) / (2 * CIDER_SIGMA * CIDER_SIGMA));
                score[g] += val[g];
            }
            for (int j = 0; j < v.k; j++) wref[v.g[j]] = 0;
            tfidf_free(&v);
        }
        tfidf_free(&h);
        double mean = 0;
        for (int g = 0; g < CIDER_N; g++) mean += score[g];
        csum += mean / CIDER_N / nref[i] * 10.0;
    }
    out->cider = csum / n;
    free(wref); free(logdf); free(ids);
    free(df.v); free(seen.v); free(cnt.v);
    for (int k = 0; k < total; k++) { free(rs[k].id); free(cs[k].id); }
    free(rs); free(cs);
    seq_free(&words); seq_free(&grams);
    return 0;
}

/* ============================================================================================
 * The files: measure_scores.py's read_lines()
 * ============================================================================================ */

/* Where a line ends for Python's splitlines(), which its codecs reader splits at: the length of the
 * break at S[i] (0 if none). */
static int line_break(const char *s, size_t len, size_t i) {
    unsigned char c = (unsigned char)s[i];
    if (c == '\r') return i + 1 < len && s[i + 1] == '\n' ? 2 : 1;
    if (c == '\n' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E) return 1;
    if (c == 0xC2 && i + 1 < len && (unsigned char)s[i + 1] == 0x85) return 2;
    if (c == 0xE2 && i + 2 < len && (unsigned char)s[i + 1] == 0x80 &&
        ((unsigned char)s[i + 2] == 0xA8 || (unsigned char)s[i + 2] == 0xA9)) return 3;
    return 0;
}

/* The file's lines, each stripped of Python's white space and NUL-terminated in place. LINENO[k]: the
 * line's number as an editor counts it (at \n, \r\n and \r), for messages. */
static int read_lines(const char *path, char **buf, char ***line, int **lineno, int *nline) {
    size_t len;
    if (fx_read_file(path, buf, &len) != 0) return -1;
    char *s = *buf;
    size_t ok = fx_utf8_valid_prefix(s, len);
    int ln = 1;
    if (ok != len) {
        size_t col = 0;
        for (size_t i = 0; i < ok; i++) { if (s[i] == '\n') { ln++; col = 0; } else col++; }
        fx_seterr("%s:%d: not valid UTF-8 (byte %zu of the line)", path, ln, col + 1);
        free(s);
        return -1;
    }
    if (len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) {
        fx_seterr("%s:1: starts with a UTF-8 byte-order mark, which e2e-metrics would score as part of the first "
                  "word; remove it", path);
        free(s);
        return -1;
    }
    const char *nul = memchr(s, 0, len);
    if (nul) {
        for (const char *p = s; p < nul; p++) ln += *p == '\n';
        fx_seterr("%s:%d: holds a NUL byte", path, ln);
        free(s);
        return -1;
    }
    int cap = 0;
    ln = 1;
    *nline = 0;
    *line = NULL;
    *lineno = NULL;
    for (size_t i = 0; i < len;) {
        size_t j = i;
        int br = 0;
        while (j < len && !(br = line_break(s, len, j))) j++;
        /* strip() */
        size_t a = i, e = j;
        uint32_t cp;
        int k;
        while (a < e && (k = fx_utf8_next(s + a, e - a, &cp)) > 0 && py_space(cp)) a += (size_t)k;
        while (e > a) {
            size_t p = e - 1;
            while (p > a && ((unsigned char)s[p] & 0xC0) == 0x80) p--;
            if (fx_utf8_next(s + p, e - p, &cp) > 0 && py_space(cp)) e = p;
            else break;
        }
        if (*nline == cap) {
            cap = cap ? cap * 2 : 1024;
            *line = fx_realloc(*line, (size_t)cap * sizeof **line);
            *lineno = fx_realloc(*lineno, (size_t)cap * sizeof **lineno);
        }
        (*line)[*nline] = s + a;
        (*lineno)[(*nline)++] = ln;
        if (br && (s[j] == '\n' || s[j] == '\r')) ln++;
        s[e] = 0; /* e <= j: the break (or the buffer's NUL) is there */
        i = j + (size_t)br;
        if (br == 0) break;
    }
    return 0;
}

int fx_e2e_read_hyps(const char *path, fx_e2e_lines *out) {
    memset(out, 0, sizeof *out);
    int *lineno, n;
    if (read_lines(path, &out->buf, &out->text, &lineno, &n) != 0) return -1;
    free(lineno);
    if (n == 0) {
        fx_seterr("%s: empty: no hypotheses (one a line)", path);
        fx_e2e_lines_free(out);
        return -1;
    }
    out->n = n;
    return 0;
}

int fx_e2e_read_refs(const char *path, fx_e2e_lines *out) {
    memset(out, 0, sizeof *out);
    int *lineno, nl;
    char **line;
    if (read_lines(path, &out->buf, &line, &lineno, &nl) != 0) return -1;
    /* Groups: a blank line closes one; a trailing blank line opens none. */
    int ngroup = 0, nref = 0, open = 0;
    for (int k = 0; k < nl; k++) {
        if (line[k][0]) { nref++; if (!open) { open = 1; ngroup++; } }
        else {
            if (!open) {
                fx_seterr("%s:%d: a blank line with no reference before it (an item without references; "
                          "e2e-metrics fails on it)", path, lineno[k]);
                free(line); free(lineno); fx_e2e_lines_free(out);
                return -1;
            }
            open = 0;
        }
    }
    if (nref == 0) {
        fx_seterr("%s: no references", path);
        free(line); free(lineno); fx_e2e_lines_free(out);
        return -1;
    }
    out->text = fx_malloc((size_t)nref * sizeof *out->text);
    if (ngroup == 1) { /* no blank line: one reference per item */
        out->n = nref;
        out->refs = fx_malloc((size_t)nref * sizeof *out->refs);
        out->nref = fx_malloc((size_t)nref * sizeof *out->nref);
        for (int k = 0, r = 0; k < nl; k++)
            if (line[k][0]) { out->text[r] = line[k]; out->refs[r] = &out->text[r]; out->nref[r] = 1; r++; }
    } else {
        out->n = ngroup;
        out->refs = fx_malloc((size_t)ngroup * sizeof *out->refs);
        out->nref = fx_calloc((size_t)ngroup, sizeof *out->nref);
        int g = -1, r = 0;
        open = 0;
        for (int k = 0; k < nl; k++) {
            if (!line[k][0]) { open = 0; continue; }
            if (!open) { open = 1; out->refs[++g] = &out->text[r]; }
            out->text[r++] = line[k];
            out->nref[g]++;
        }
    }
    free(line);
    free(lineno);
    return 0;
}

void fx_e2e_lines_free(fx_e2e_lines *l) {
    free(l->text); free(l->refs); free(l->nref); free(l->buf);
    memset(l, 0, sizeof *l);
}

int fx_e2e_score_files(const char *hyp_path, const char *ref_path, int tokenized, fx_e2e_scores *out) {
    fx_e2e_lines h, r;
    if (fx_e2e_read_hyps(hyp_path, &h) != 0) return -1;
    if (fx_e2e_read_refs(ref_path, &r) != 0) { fx_e2e_lines_free(&h); return -1; }
    int rc = -1;
    if (h.n != r.n)
        fx_seterr("%s has %d hypotheses but %s has %d items of references (groups separated by blank lines, or "
                  "one reference a line)", hyp_path, h.n, ref_path, r.n);
    else
        rc = fx_e2e_score(h.n, h.text, (char *const *const *)r.refs, r.nref, tokenized, out);
    fx_e2e_lines_free(&h);
    fx_e2e_lines_free(&r);
    return rc;
}
