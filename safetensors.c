/* safetensors.c: reads safetensors files (mmap'ed; every header field checked against the file before
 * use) and writes them (atomically, laid out as Hugging Face's writer lays them out), and gives any
 * tensor as fp32. It knows the file format only: which tensors a model needs is model.c's business. */
#include "fedex.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors stores little-endian numbers and this file reads them in place: little-endian hosts only"
#endif

/* ============================================================================================
 * the format and its limits
 * ============================================================================================
 * A file is: u64 N (little-endian), N bytes of JSON header, then the data area. The header maps each
 * tensor name to {"dtype": "F32", "shape": [d0, ...], "data_offsets": [begin, end]}, offsets relative to
 * the data area, and may hold "__metadata__": {string: string}. The tensors tile the data area exactly:
 * sorted by offset, each begins where the previous ends, the last ends at the end of the file. */

/* Hugging Face's reader refuses headers above 100 MB; we refuse the same, so a hostile length never
 * makes us parse (or allocate for) more than that. */
#define ST_MAX_HEADER ((uint64_t)100 * 1000 * 1000)
#define ST_META_KEY "__metadata__"

static const struct { const char *name; size_t size; } dtypes[] = {
    [FX_F64] = {"F64", 8}, [FX_F32] = {"F32", 4}, [FX_F16] = {"F16", 2}, [FX_BF16] = {"BF16", 2},
    [FX_I64] = {"I64", 8}, [FX_I32] = {"I32", 4}, [FX_I16] = {"I16", 2}, [FX_I8] = {"I8", 1},
    [FX_U8] = {"U8", 1},   [FX_BOOL] = {"BOOL", 1},
};
#define NDTYPES ((int)(sizeof dtypes / sizeof dtypes[0]))

static int dtype_valid(fx_dtype d) { return (int)d >= 0 && (int)d < NDTYPES; }
const char *fx_dtype_name(fx_dtype d) { return dtype_valid(d) ? dtypes[d].name : "?"; }
size_t fx_dtype_size(fx_dtype d) { return dtype_valid(d) ? dtypes[d].size : 0; }

size_t fx_st_numel(const fx_st_tensor *t) {
    size_t n = 1; /* the reader checked the product for overflow */
    for (int i = 0; i < t->ndim; i++) n *= (size_t)t->shape[i];
    return n;
}

/* A name as it may appear inside a one-line message: control bytes escaped, long names cut. */
static const char *show(const char *s, char buf[96]) {
    size_t o = 0;
    for (size_t i = 0; s[i] && o < 80; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7F) o += (size_t)snprintf(buf + o, 96 - o, "\\x%02x", c);
        else buf[o++] = (char)c;
    }
    if (o >= 80) { memcpy(buf + o, "...", 3); o += 3; }
    buf[o] = 0;
    return buf;
}

const char *fx_shape_str(const int64_t *shape, int ndim, char *buf, size_t cap) {
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
    return buf;
}

/* ============================================================================================
 * reading: validation of the header
 * ============================================================================================ */

/* Sorts tensor indices by (begin, end): the order in which they must tile the data area. */
static int cmp_offsets(const void *a, const void *b, void *ctx) {
    const fx_st_tensor *t = ctx;
    const fx_st_tensor *x = &t[*(const int *)a], *y = &t[*(const int *)b];
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return (x->end > y->end) - (x->end < y->end);
}

static int read_metadata(const char *label, const fx_json *m, fx_st_file *f) {
    char b[96];
    if (m->type != FX_JOBJ) { fx_seterr("%s: " ST_META_KEY " is not an object", label); return -1; }
    const char *dup = fx_json_duplicate_key(m);
    if (dup) { fx_seterr("%s: " ST_META_KEY " names '%s' twice", label, show(dup, b)); return -1; }
    f->meta_keys = fx_calloc(m->n, sizeof *f->meta_keys);
    f->meta_vals = fx_calloc(m->n, sizeof *f->meta_vals);
    for (size_t i = 0; i < m->n; i++) {
        const fx_json *v = &m->kids[i];
        if (strlen(m->keys[i]) != m->klens[i]) {
            fx_seterr("%s: " ST_META_KEY " key '%s' contains a NUL byte", label, show(m->keys[i], b));
            return -1;
        }
        if (v->type != FX_JSTR) {
            fx_seterr("%s: " ST_META_KEY " value of '%s' is not a string", label, show(m->keys[i], b));
            return -1;
        }
        if (strlen(v->str) != v->slen) {
            fx_seterr("%s: " ST_META_KEY " value of '%s' contains a NUL byte", label, show(m->keys[i], b));
            return -1;
        }
        f->meta_keys[i] = fx_strdup(m->keys[i]);
        f->meta_vals[i] = fx_strdup(v->str);
        f->nmeta++;
    }
    return 0;
}

/* One header entry NAME: {"dtype": ..., "shape": [...], "data_offsets": [b, e]} into T. */
static int read_entry(const char *label, const char *name, const fx_json *e, size_t data_len, fx_st_tensor *t) {
    char b[96], sb[128];
    const char *nm = show(name, b);
    if (e->type != FX_JOBJ) { fx_seterr("%s: tensor '%s': entry is not an object", label, nm); return -1; }
    for (size_t i = 0; i < e->n; i++)
        if (strcmp(e->keys[i], "dtype") && strcmp(e->keys[i], "shape") && strcmp(e->keys[i], "data_offsets")) {
            char kb[96];
            fx_seterr("%s: tensor '%s': unknown field '%s' (expected dtype, shape, data_offsets)", label, nm,
                      show(e->keys[i], kb));
            return -1;
        }
    const fx_json *dt = fx_json_get(e, "dtype"), *sh = fx_json_get(e, "shape"), *off = fx_json_get(e, "data_offsets");
    if (!dt || !sh || !off) {
        fx_seterr("%s: tensor '%s': missing '%s'", label, nm, !dt ? "dtype" : !sh ? "shape" : "data_offsets");
        return -1;
    }

    if (dt->type != FX_JSTR) { fx_seterr("%s: tensor '%s': dtype is not a string", label, nm); return -1; }
    int d = 0;
    while (d < NDTYPES && strcmp(dt->str, dtypes[d].name)) d++;
    if (d == NDTYPES) {
        char db[96];
        fx_seterr("%s: tensor '%s': unknown dtype '%s' (readable: F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL)",
                  label, nm, show(dt->str, db));
        return -1;
    }
    t->dtype = (fx_dtype)d;

    if (sh->type != FX_JARR) { fx_seterr("%s: tensor '%s': shape is not an array", label, nm); return -1; }
    if (sh->n > FX_ST_MAX_DIMS) {
        fx_seterr("%s: tensor '%s': shape has %zu dimensions, at most %d are supported", label, nm, sh->n,
                  FX_ST_MAX_DIMS);
        return -1;
    }
    t->ndim = (int)sh->n;
    size_t numel = 1, bytes;
    for (size_t i = 0; i < sh->n; i++) {
        const fx_json *x = &sh->kids[i];
        if (x->type != FX_JNUM || !x->is_int || x->inum < 0) {
            fx_seterr("%s: tensor '%s': shape[%zu] is not a non-negative integer", label, nm, i);
            return -1;
        }
        t->shape[i] = x->inum;
        if (fx_mul_size(numel, (size_t)x->inum, &numel) != 0) {
            fx_seterr("%s: tensor '%s': shape %s has more elements than memory can address", label, nm,
                      fx_shape_str(t->shape, (int)i + 1, sb, sizeof sb));
            return -1;
        }
    }
    if (fx_mul_size(numel, dtypes[d].size, &bytes) != 0) {
        fx_seterr("%s: tensor '%s': %s %s is more bytes than memory can address", label, nm, dtypes[d].name,
                  fx_shape_str(t->shape, t->ndim, sb, sizeof sb));
        return -1;
    }

    if (off->type != FX_JARR || off->n != 2 || off->kids[0].type != FX_JNUM || !off->kids[0].is_int ||
        off->kids[0].inum < 0 || off->kids[1].type != FX_JNUM || !off->kids[1].is_int || off->kids[1].inum < 0) {
        fx_seterr("%s: tensor '%s': data_offsets is not [begin, end] with non-negative integers", label, nm);
        return -1;
    }
    t->begin = (size_t)off->kids[0].inum;
    t->end = (size_t)off->kids[1].inum;
    if (t->end < t->begin) {
        fx_seterr("%s: tensor '%s': data_offsets [%zu, %zu] end before they begin", label, nm, t->begin, t->end);
        return -1;
    }
    if (t->end > data_len) {
        fx_seterr("%s: tensor '%s': data_offsets [%zu, %zu] run past the data area (%zu bytes)", label, nm,
                  t->begin, t->end, data_len);
        return -1;
    }
    if (t->end - t->begin != bytes) {
        fx_seterr("%s: tensor '%s': data_offsets [%zu, %zu] hold %zu bytes but %s %s needs %zu", label, nm,
                  t->begin, t->end, t->end - t->begin, dtypes[d].name, fx_shape_str(t->shape, t->ndim, sb, sizeof sb),
                  bytes);
        return -1;
    }
    return 0;
}

/* Sorted by offset, the tensors must cover [0, data_len) exactly once. */
static int check_tiling(const char *label, const fx_st_file *f) {
    int *ord = fx_malloc((size_t)f->n * sizeof *ord);
    for (int i = 0; i < f->n; i++) ord[i] = i;
    qsort_r(ord, (size_t)f->n, sizeof *ord, cmp_offsets, f->t);
    size_t pos = 0;
    const fx_st_tensor *prev = NULL;
    char b[96], pb[96];
    int rc = 0;
    for (int k = 0; k < f->n && rc == 0; k++) {
        const fx_st_tensor *t = &f->t[ord[k]];
        if (t->begin < pos) {
            fx_seterr("%s: tensor '%s': data_offsets [%zu, %zu] overlap the previous tensor '%s' [%zu, %zu]",
                      label, show(t->name, b), t->begin, t->end, show(prev->name, pb), prev->begin, prev->end);
            rc = -1;
        } else if (t->begin > pos) {
            fx_seterr("%s: tensor '%s': data_offsets [%zu, %zu] leave bytes [%zu, %zu) of the data area unused",
                      label, show(t->name, b), t->begin, t->end, pos, t->begin);
            rc = -1;
        }
        pos = t->end;
        prev = t;
    }
    if (rc == 0 && pos != f->data_len) {
        fx_seterr("%s: the data area is %zu bytes but the tensors cover only [0, %zu)", label, f->data_len, pos);
        rc = -1;
    }
    free(ord);
    return rc;
}

static int parse_into(const uint8_t *buf, size_t len, const char *label, fx_st_file *f) {
    if (len < 8) {
        fx_seterr("%s: file is %zu bytes, too short for the 8-byte header length", label, len);
        return -1;
    }
    uint64_t hlen;
    memcpy(&hlen, buf, 8);
    if (hlen > ST_MAX_HEADER) {
        fx_seterr("%s: header length %llu is above the %llu-byte limit (not a safetensors file?)", label,
                  (unsigned long long)hlen, (unsigned long long)ST_MAX_HEADER);
        return -1;
    }
    if (hlen > len - 8) {
        fx_seterr("%s: header length %llu runs past the end of the file (%zu bytes)", label,
                  (unsigned long long)hlen, len);
        return -1;
    }
    f->data = buf + 8 + hlen;
    f->data_len = len - 8 - (size_t)hlen;

    fx_json h;
    if (fx_json_parse((const char *)buf + 8, (size_t)hlen, &h) != 0) {
        fx_seterr("%s: header: %s", label, fx_err());
        return -1;
    }
    int rc = -1;
    char b[96];
    if (h.type != FX_JOBJ) { fx_seterr("%s: header is not a JSON object", label); goto done; }

    /* Duplicate keys: JSON allows them, safetensors does not, and silently taking one would be wrong. */
    const char *dup = fx_json_duplicate_key(&h);
    if (dup) { fx_seterr("%s: header names '%s' twice", label, show(dup, b)); goto done; }

    f->t = fx_calloc(h.n, sizeof *f->t);
    for (size_t i = 0; i < h.n; i++) {
        const char *name = h.keys[i];
        if (!strcmp(name, ST_META_KEY) && h.klens[i] == strlen(ST_META_KEY)) {
            if (read_metadata(label, &h.kids[i], f) != 0) goto done;
            continue;
        }
        if (h.klens[i] == 0) { fx_seterr("%s: a tensor has an empty name", label); goto done; }
        if (strlen(name) != h.klens[i]) {
            fx_seterr("%s: tensor '%s': name contains a NUL byte", label, show(name, b));
            goto done;
        }
        fx_st_tensor *t = &f->t[f->n];
        t->name = fx_strdup(name);
        f->n++;
        if (read_entry(label, name, &h.kids[i], f->data_len, t) != 0) goto done;
    }
    rc = check_tiling(label, f);
done:
    fx_json_free(&h);
    return rc;
}

/* ============================================================================================
 * reading: open, parse, close, look up
 * ============================================================================================ */

int fx_st_parse(const uint8_t *buf, size_t len, const char *label, fx_st_file *f) {
    memset(f, 0, sizeof *f);
    f->path = fx_strdup(label);
    if (parse_into(buf, len, label, f) != 0) { fx_st_close(f); return -1; }
    return 0;
}

/* The mapping is private and read-only. Writers replace files by rename (fx_write_file_atomic), so the
 * inode we map never changes under us; a file truncated in place by someone else would SIGBUS. */
int fx_st_open(const char *path, fx_st_file *f) {
    memset(f, 0, sizeof *f);
    int fd;
    size_t len;
    if (!strcmp(path, "-") || !strcmp(path, "/dev/stdin")) { /* standard input, read whole and kept */
        char *buf;
        if (fx_read_file(path, &buf, &len) != 0) return -1;
        if (fx_st_parse((const uint8_t *)buf, len, "standard input", f) != 0) { free(buf); return -1; }
        f->owned = buf;
        return 0;
    }
    if (fx_open_regular(path, &fd, &len) != 0) return -1;
    if (len >= 8) { /* mmap refuses 0 bytes; shorter files are refused by the parser without reading */
        void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            fx_seterr("%s: cannot map %zu bytes: %s", path, len, strerror(errno));
            close(fd);
            return -1;
        }
        f->map = map;
        f->map_len = len;
    }
    close(fd);
    f->path = fx_strdup(path);
    if (parse_into(f->map, len, path, f) != 0) { fx_st_close(f); return -1; }
    return 0;
}

void fx_st_close(fx_st_file *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->map_len);
    free(f->owned);
    for (int i = 0; i < f->n; i++) free(f->t[i].name);
    for (int i = 0; i < f->nmeta; i++) { free(f->meta_keys[i]); free(f->meta_vals[i]); }
    free(f->t);
    free(f->meta_keys);
    free(f->meta_vals);
    free(f->path);
    memset(f, 0, sizeof *f);
}

const fx_st_tensor *fx_st_find(const fx_st_file *f, const char *name) {
    for (int i = 0; i < f->n; i++)
        if (!strcmp(f->t[i].name, name)) return &f->t[i];
    return NULL;
}

const char *fx_st_meta(const fx_st_file *f, const char *key) {
    for (int i = 0; i < f->nmeta; i++)
        if (!strcmp(f->meta_keys[i], key)) return f->meta_vals[i];
    return NULL;
}

/* ============================================================================================
 * reading: conversion to fp32
 * ============================================================================================ */

static float bits_f32(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

/* IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits. Every half is exactly a float. */
static float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1F, m = h & 0x3FF;
    if (e == 0x1F) return bits_f32(sign | 0x7F800000u | m << 13);      /* inf; NaN keeps its payload */
    if (e != 0) return bits_f32(sign | (e + 127 - 15) << 23 | m << 13); /* normal: rebias the exponent */
    /* zero or subnormal: value = m * 2^-24, exact in fp32 as m < 2^10 */
    float x = (float)m * 0x1p-24f;
    return sign ? -x : x;
}

/* bfloat16 is the top half of a float32: widening is a shift. */

const float *fx_st_f32(const fx_st_file *f, const fx_st_tensor *t, float **owned) {
    *owned = NULL;
    const uint8_t *p = f->data + t->begin;
    size_t n = fx_st_numel(t), bytes;
    if (t->dtype == FX_F32 && ((uintptr_t)p & 3) == 0) return (const float *)p;
    if (fx_mul_size(n, sizeof(float), &bytes) != 0) {
        fx_seterr("%s: tensor '%s': %zu elements do not fit in memory as fp32", f->path, t->name, n);
        return NULL;
    }
    float *o = fx_malloc(bytes);
    /* Unaligned reads go through memcpy: the data area gives no alignment guarantee per tensor. */
    switch (t->dtype) {
    case FX_F32: memcpy(o, p, bytes); break;
    case FX_F64: for (size_t i = 0; i < n; i++) { double v; memcpy(&v, p + 8 * i, 8); o[i] = (float)v; } break;
    case FX_F16: for (size_t i = 0; i < n; i++) { uint16_t v; memcpy(&v, p + 2 * i, 2); o[i] = f16_to_f32(v); } break;
    case FX_BF16: for (size_t i = 0; i < n; i++) { uint16_t v; memcpy(&v, p + 2 * i, 2); o[i] = fx_bf16_widen(v); } break;
    case FX_I64: for (size_t i = 0; i < n; i++) { int64_t v; memcpy(&v, p + 8 * i, 8); o[i] = (float)v; } break;
    case FX_I32: for (size_t i = 0; i < n; i++) { int32_t v; memcpy(&v, p + 4 * i, 4); o[i] = (float)v; } break;
    case FX_I16: for (size_t i = 0; i < n; i++) { int16_t v; memcpy(&v, p + 2 * i, 2); o[i] = (float)v; } break;
    case FX_I8: for (size_t i = 0; i < n; i++) o[i] = (float)(int8_t)p[i]; break;
    case FX_U8: for (size_t i = 0; i < n; i++) o[i] = (float)p[i]; break;
    case FX_BOOL:
        for (size_t i = 0; i < n; i++) {
            if (p[i] > 1) {
                fx_seterr("%s: tensor '%s': BOOL element %zu is %u, not 0 or 1", f->path, t->name, i, p[i]);
                free(o);
                return NULL;
            }
            o[i] = (float)p[i];
        }
        break;
    }
    *owned = o;
    return o;
}

/* ============================================================================================
 * writing
 * ============================================================================================ */

typedef struct { char *p; size_t n, cap; } strbuf;

static void sb_put(strbuf *s, const char *x, size_t len) {
    if (s->n + len + 1 > s->cap) {
        s->cap = 2 * (s->n + len + 1);
        s->p = fx_realloc(s->p, s->cap);
    }
    memcpy(s->p + s->n, x, len);
    s->n += len;
    s->p[s->n] = 0;
}
static void sb_str(strbuf *s, const char *x) { sb_put(s, x, strlen(x)); }

/* A JSON string literal (input is valid UTF-8, checked by the caller). */
static void sb_json_str(strbuf *s, const char *x) {
    char *q = fx_json_quote(x);
    sb_str(s, q);
    free(q);
}

static int cmp_str_ptr(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

/* The first pair of equal strings among N, or NULL. */
static const char *find_duplicate(const char **names, size_t n) {
    qsort(names, n, sizeof *names, cmp_str_ptr);
    for (size_t i = 1; i < n; i++)
        if (!strcmp(names[i - 1], names[i])) return names[i];
    return NULL;
}

static int valid_utf8(const char *s) { size_t n = strlen(s); return fx_utf8_valid_prefix(s, n) == n; }

/* Checks every entry and works out its byte size; -1 with a message naming the bad entry. */
static int check_entries(const char *path, const fx_st_entry *e, int n, const char *const *meta,
                         size_t *sizes, size_t *total) {
    char b[96], sb[128];
    if (n < 0 || (n > 0 && !e)) { fx_seterr("%s: %d tensors to write", path, n); return -1; }
    *total = 0;
    for (int i = 0; i < n; i++) {
        if (!e[i].name || !e[i].name[0]) { fx_seterr("%s: tensor %d has no name", path, i); return -1; }
        const char *nm = show(e[i].name, b);
        if (!valid_utf8(e[i].name)) { fx_seterr("%s: tensor '%s': name is not valid UTF-8", path, nm); return -1; }
        if (!strcmp(e[i].name, ST_META_KEY)) {
            fx_seterr("%s: tensor '%s': this name is reserved for metadata", path, nm);
            return -1;
        }
        if (!dtype_valid(e[i].dtype)) { fx_seterr("%s: tensor '%s': dtype %d unknown", path, nm, (int)e[i].dtype); return -1; }
        if (e[i].ndim < 0 || e[i].ndim > FX_ST_MAX_DIMS) {
            fx_seterr("%s: tensor '%s': ndim %d outside [0, %d]", path, nm, e[i].ndim, FX_ST_MAX_DIMS);
            return -1;
        }
        size_t bytes = dtypes[e[i].dtype].size;
        for (int k = 0; k < e[i].ndim; k++) {
            if (e[i].shape[k] < 0) {
                fx_seterr("%s: tensor '%s': shape %s has a negative dimension", path, nm,
                          fx_shape_str(e[i].shape, e[i].ndim, sb, sizeof sb));
                return -1;
            }
            if (fx_mul_size(bytes, (size_t)e[i].shape[k], &bytes) != 0) {
                fx_seterr("%s: tensor '%s': shape %s is more bytes than memory can address", path, nm,
                          fx_shape_str(e[i].shape, e[i].ndim, sb, sizeof sb));
                return -1;
            }
        }
        if (bytes && !e[i].data) { fx_seterr("%s: tensor '%s': no data for %zu bytes", path, nm, bytes); return -1; }
        if (fx_add_size(*total, bytes, total) != 0) { fx_seterr("%s: tensors add up to too many bytes", path); return -1; }
        sizes[i] = bytes;
    }
    const char **names = fx_malloc((size_t)n * sizeof *names);
    for (int i = 0; i < n; i++) names[i] = e[i].name;
    const char *dup = find_duplicate(names, (size_t)n);
    if (dup) fx_seterr("%s: tensor '%s' is given twice", path, show(dup, b));
    free(names);
    if (dup) return -1;

    size_t nmeta = 0;
    for (; meta && meta[2 * nmeta]; nmeta++) {
        const char *k = meta[2 * nmeta], *v = meta[2 * nmeta + 1];
        if (!v) { fx_seterr("%s: metadata '%s' has no value (the list is key, value, ..., NULL)", path, show(k, b)); return -1; }
        if (!valid_utf8(k) || !valid_utf8(v)) {
            fx_seterr("%s: metadata '%s': key or value is not valid UTF-8", path, show(k, b));
            return -1;
        }
    }
    const char **keys = fx_malloc(nmeta * sizeof *keys);
    for (size_t i = 0; i < nmeta; i++) keys[i] = meta[2 * i];
    dup = find_duplicate(keys, nmeta);
    if (dup) fx_seterr("%s: metadata '%s' is given twice", path, show(dup, b));
    free(keys);
    return dup ? -1 : 0;
}

/* Header as Hugging Face's writer produces it: compact JSON, metadata first, tensors in data order,
 * padded with spaces so that the data area starts 8-byte aligned. */
int fx_st_write(const char *path, const fx_st_entry *e, int n, const char *const *meta) {
    size_t *sizes = fx_malloc((size_t)(n > 0 ? n : 0) * sizeof *sizes), total;
    if (check_entries(path, e, n, meta, sizes, &total) != 0) { free(sizes); return -1; }

    strbuf h = {0};
    char num[64];
    sb_str(&h, "{");
    if (meta && meta[0]) {
        sb_str(&h, "\"" ST_META_KEY "\":{");
        for (size_t i = 0; meta[2 * i]; i++) {
            if (i) sb_str(&h, ",");
            sb_json_str(&h, meta[2 * i]);
            sb_str(&h, ":");
            sb_json_str(&h, meta[2 * i + 1]);
        }
        sb_str(&h, "}");
    }
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        if (i || (meta && meta[0])) sb_str(&h, ",");
        sb_json_str(&h, e[i].name);
        sb_str(&h, ":{\"dtype\":\"");
        sb_str(&h, dtypes[e[i].dtype].name);
        sb_str(&h, "\",\"shape\":[");
        for (int k = 0; k < e[i].ndim; k++) {
            snprintf(num, sizeof num, "%s%lld", k ? "," : "", (long long)e[i].shape[k]);
            sb_str(&h, num);
        }
        snprintf(num, sizeof num, "],\"data_offsets\":[%zu,%zu]}", off, off + sizes[i]);
        sb_str(&h, num);
        off += sizes[i];
    }
    sb_str(&h, "}");
    while (h.n % 8) sb_str(&h, " ");
    if ((uint64_t)h.n > ST_MAX_HEADER) {
        fx_seterr("%s: header would be %zu bytes, above the %llu-byte limit", path, h.n,
                  (unsigned long long)ST_MAX_HEADER);
        free(h.p); free(sizes);
        return -1;
    }

    size_t len;
    if (fx_add_size(8 + h.n, total, &len) != 0) {
        fx_seterr("%s: file would be larger than memory can address", path);
        free(h.p); free(sizes);
        return -1;
    }
    uint8_t *buf = fx_malloc(len);
    uint64_t hlen = h.n;
    memcpy(buf, &hlen, 8);
    memcpy(buf + 8, h.p, h.n);
    off = 8 + h.n;
    for (int i = 0; i < n; i++) {
        if (sizes[i]) memcpy(buf + off, e[i].data, sizes[i]);
        off += sizes[i];
    }
    int rc = fx_write_file_atomic(path, buf, len);
    free(buf); free(h.p); free(sizes);
    return rc;
}

/* ============================================================================================
 * a folder's weights: one file, or Hugging Face's shards
 * ============================================================================================
 * save_pretrained writes DIR/model.safetensors, or, above its max_shard_size, shards named in
 * DIR/model.safetensors.index.json: {"metadata": {...}, "weight_map": {tensor name: shard file name}}.
 * As transformers does, the single file wins when both are there. Every shard the map names is opened
 * (mmap'ed, validated) once, and every tensor the map names must be in its shard; shard names are plain
 * file names inside DIR (no '/', no "..") so an index can never reach outside its folder. */

#define ST_SINGLE "model.safetensors"
#define ST_INDEX "model.safetensors.index.json"

static int dir_file(char *buf, size_t cap, const char *dir, const char *name) {
    if ((size_t)snprintf(buf, cap, "%s/%s", dir, name) < cap) return 0;
    fx_seterr("%s: path too long", dir);
    return -1;
}

static int by_name(const void *a, const void *b) {
    return strcmp(((const fx_st_shard_entry *)a)->name, ((const fx_st_shard_entry *)b)->name);
}

int fx_st_set_exists(const char *dir) {
    char path[4096];
    if (dir_file(path, sizeof path, dir, ST_SINGLE) != 0) return -1;
    if (access(path, F_OK) == 0) return 1;
    if (dir_file(path, sizeof path, dir, ST_INDEX) != 0) return -1;
    return access(path, F_OK) == 0 ? 2 : 0;
}

static int shard_of(fx_st_set *s, const char *dir, const char *index, const char *key, const fx_json *v) {
    if (v->type != FX_JSTR || v->slen == 0 || strlen(v->str) != v->slen || strchr(v->str, '/') ||
        !strcmp(v->str, ".") || !strcmp(v->str, "..")) {
        fx_seterr("%s: weight_map['%s'] must name a shard file in the folder (a plain file name)", index, key);
        return -1;
    }
    for (int i = 0; i < s->nfiles; i++)
        if (!strcmp(s->shard_names[i], v->str)) return i;
    char path[4096];
    if (dir_file(path, sizeof path, dir, v->str) != 0) return -1;
    s->files = realloc(s->files, (size_t)(s->nfiles + 1) * sizeof *s->files);
    s->shard_names = realloc(s->shard_names, (size_t)(s->nfiles + 1) * sizeof *s->shard_names);
    if (!s->files || !s->shard_names) { fx_seterr("%s: out of memory", index); return -1; }
    if (fx_st_open(path, &s->files[s->nfiles]) != 0) {
        fx_seterr("%s: shard of weight_map['%s']: %s", index, key, fx_err());
        return -1;
    }
    s->shard_names[s->nfiles] = fx_strdup(v->str);
    return s->nfiles++;
}

int fx_st_set_open(const char *dir, fx_st_set *s) {
    memset(s, 0, sizeof *s);
    int kind = fx_st_set_exists(dir);
    if (kind < 0) return -1;
    char path[4096];
    if (kind == 0) {
        fx_seterr("%s/%s: no such file (nor %s): the folder has no weights", dir, ST_SINGLE, ST_INDEX);
        return -1;
    }
    if (kind == 1) {
        if (dir_file(path, sizeof path, dir, ST_SINGLE) != 0) return -1;
        s->files = fx_malloc(sizeof *s->files);
        if (fx_st_open(path, &s->files[0]) != 0) { free(s->files); s->files = NULL; return -1; }
        s->nfiles = 1;
        return 0;
    }
    if (dir_file(path, sizeof path, dir, ST_INDEX) != 0) return -1;
    s->index = fx_strdup(path);
    fx_json j;
    if (fx_json_load(path, &j) != 0) { fx_st_set_close(s); return -1; }
    const fx_json *map = fx_json_get(&j, "weight_map");
    int rc = -1;
    if (j.type != FX_JOBJ) fx_seterr("%s: not a JSON object", path);
    else if (!map || map->type != FX_JOBJ) fx_seterr("%s: no \"weight_map\" object (tensor name to shard file)", path);
    else if (map->n == 0) fx_seterr("%s: \"weight_map\" is empty", path);
    else {
        s->n = (int)map->n;
        s->names = fx_calloc(map->n, sizeof *s->names);
        rc = 0;
        for (size_t i = 0; i < map->n && rc == 0; i++) {
            const char *key = map->keys[i];
            if (strlen(key) != map->klens[i]) { fx_seterr("%s: weight_map key %zu holds a NUL byte", path, i); rc = -1; break; }
            int f = shard_of(s, dir, path, key, &map->kids[i]);
            if (f < 0) { rc = -1; break; }
            s->names[i].name = fx_strdup(key);
            s->names[i].file = f;
            if (!fx_st_find(&s->files[f], key)) {
                fx_seterr("%s: weight_map puts '%s' in %s, which has no such tensor", path, key, s->shard_names[f]);
                rc = -1;
            }
        }
        if (rc == 0) { /* sorted by name for lookups; JSON objects may repeat a key, an index may not */
            qsort(s->names, (size_t)s->n, sizeof *s->names, by_name);
            for (int i = 1; i < s->n && rc == 0; i++)
                if (!strcmp(s->names[i - 1].name, s->names[i].name)) {
                    fx_seterr("%s: weight_map names '%s' twice", path, s->names[i].name);
                    rc = -1;
                }
        }
    }
    fx_json_free(&j);
    if (rc != 0) fx_st_set_close(s);
    return rc;
}

const fx_st_tensor *fx_st_set_find(const fx_st_set *s, const char *name, const fx_st_file **file) {
    if (!s->index) {
        *file = s->nfiles ? &s->files[0] : NULL;
        return *file ? fx_st_find(*file, name) : NULL;
    }
    fx_st_shard_entry key = {.name = (char *)name};
    const fx_st_shard_entry *e = bsearch(&key, s->names, (size_t)s->n, sizeof *s->names, by_name);
    *file = e ? &s->files[e->file] : NULL;
    return e ? fx_st_find(*file, name) : NULL;
}

const char *fx_st_set_path(const fx_st_set *s) {
    return s->index ? s->index : s->nfiles ? s->files[0].path : "";
}

void fx_st_set_close(fx_st_set *s) {
    for (int i = 0; i < s->nfiles; i++) {
        fx_st_close(&s->files[i]);
        if (s->shard_names) free(s->shard_names[i]);
    }
    for (int i = 0; i < s->n; i++) if (s->names) free(s->names[i].name);
    free(s->files); free(s->shard_names); free(s->names); free(s->index);
    memset(s, 0, sizeof *s);
}
