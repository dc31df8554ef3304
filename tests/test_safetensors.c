/* tests/test_safetensors.c: the safetensors reader and writer. Reads a file written by hand in Python
 * (tests/make_st_fixtures.py) and matches torch's fp32 conversions; writes that same file byte for byte;
 * round-trips every dtype; refuses each kind of bad file with a clear message; checks `fedex inspect`. */
#include "fedex.h"
#include "tests/check.h"

#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

/* ============================================================================================
 * fixtures and scratch space
 * ============================================================================================ */

#define REF "tests/fixtures/st_ref.safetensors"          /* written by tests/make_st_fixtures.py */
#define REF_EXPECT "tests/fixtures/st_ref_expect.txt"    /* torch's fp32 bit patterns per tensor */
#define REF_INSPECT "tests/fixtures/st_ref_inspect.txt"  /* the words `fedex inspect` must print */

/* No tolerances: every conversion here is compared bit for bit (NaNs by NaN-ness, as references differ
 * in how they quiet a signalling NaN's payload). */

static char tmpdir[64];

static const char *tmp_path(const char *name) {
    static char buf[4][128];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", tmpdir, name);
    return buf[k];
}

static int same_f32(float a, float b) {
    uint32_t x, y;
    memcpy(&x, &a, 4);
    memcpy(&y, &b, 4);
    return (a != a && b != b) || x == y;
}

/* ============================================================================================
 * the Python-written reference file
 * ============================================================================================ */

static void test_reference(void) {
    fx_st_file f;
    if (fx_st_open(REF, &f) != 0) { CHECK(0, "cannot read the reference: %s", fx_err()); return; }
    CHECK(f.n == 14, "14 tensors, got %d", f.n);
    CHECK(f.nmeta == 2, "2 metadata entries, got %d", f.nmeta);
    CHECK(fx_st_meta(&f, "format") && !strcmp(fx_st_meta(&f, "format"), "pt"), "metadata format = pt");
    CHECK(fx_st_meta(&f, "note") && !strcmp(fx_st_meta(&f, "note"), "fixture \"quoted\" caf\xC3\xA9"),
          "metadata note decoded");
    CHECK(fx_st_meta(&f, "absent") == NULL, "absent metadata is NULL");
    CHECK(fx_st_find(&f, "absent") == NULL, "absent tensor is NULL");

    const fx_st_tensor *t = fx_st_find(&f, "f16");
    CHECK(t && t->dtype == FX_F16 && t->ndim == 2 && t->shape[0] == 4 && t->shape[1] == 4 && t->begin == 20 &&
          t->end == 52 && fx_st_numel(t) == 16, "f16 entry as written");
    t = fx_st_find(&f, "scalar");
    CHECK(t && t->ndim == 0 && fx_st_numel(t) == 1, "scalar has 0 dims and 1 element");
    t = fx_st_find(&f, "empty");
    CHECK(t && t->ndim == 2 && fx_st_numel(t) == 0 && t->begin == t->end, "empty tensor");
    CHECK(!strcmp(f.t[0].name, "u8") && !strcmp(f.t[13].name, "encoder.layer.0.attention.self.query.weight"),
          "tensors in header order");

    /* Every tensor's fp32 values against torch's. */
    FILE *ex = fopen(REF_EXPECT, "r");
    CHECK(ex != NULL, "cannot open %s", REF_EXPECT);
    char line[4096];
    int lines = 0;
    while (ex && fgets(line, sizeof line, ex)) {
        if (line[0] == '#') continue;
        char *save, *name = strtok_r(line, " \n", &save), *cnt = strtok_r(NULL, " \n", &save);
        if (!name || !cnt) continue;
        lines++;
        t = fx_st_find(&f, name);
        size_t n = strtoul(cnt, NULL, 10);
        CHECK(t && fx_st_numel(t) == n, "tensor %s with %zu elements", name, n);
        if (!t) continue;
        float *owned;
        const float *v = fx_st_f32(&f, t, &owned);
        CHECK(v != NULL, "%s: %s", name, fx_err());
        if (t->dtype != FX_F32) CHECK(owned == v, "%s: converted copy returned as owned", name);
        if (!strcmp(name, "f32.unaligned")) CHECK(owned == v, "unaligned F32 is copied, not aliased");
        int bad = 0;
        for (size_t i = 0; i < n && v; i++) {
            char *tok = strtok_r(NULL, " \n", &save);
            uint32_t bits = tok ? (uint32_t)strtoul(tok, NULL, 16) : 0;
            float want;
            memcpy(&want, &bits, 4);
            if ((!tok || !same_f32(v[i], want)) && !bad++) {
                uint32_t got;
                memcpy(&got, &v[i], 4);
                fprintf(stderr, "%s[%zu]: got %08x (%g), torch gives %08x (%g)\n", name, i, got, (double)v[i],
                        bits, (double)want);
            }
        }
        CHECK(v && !bad, "%s: %d of %zu elements differ from torch's", name, bad, n);
        free(owned);
    }
    if (ex) fclose(ex);
    CHECK(lines == 14, "expectations for 14 tensors, read %d", lines);
    fx_st_close(&f);
    CHECK(f.n == 0 && f.map == NULL, "close resets the handle");

    /* The same bytes from memory: same tensors, data pointing into the caller's buffer. */
    char *buf;
    size_t len;
    if (fx_read_file(REF, &buf, &len) != 0) { CHECK(0, "%s", fx_err()); return; }
    int rc = fx_st_parse((const uint8_t *)buf, len, "memory", &f);
    CHECK(rc == 0, "parse from memory: %s", fx_err());
    if (rc == 0) {
        t = fx_st_find(&f, "bf16");
        CHECK(f.n == 14 && f.map == NULL && !strcmp(f.path, "memory") && t && t->begin == 52 &&
              f.data + f.data_len == (const uint8_t *)buf + len, "memory parse matches the file");
        fx_st_close(&f);
    }
    free(buf);
}

/* The C writer, given the reference file's tensors and metadata in the same order, must reproduce the
 * Python-written file byte for byte: same header JSON, same padding, same data layout. */
static void test_write_matches_python(void) {
    fx_st_file f;
    if (fx_st_open(REF, &f) != 0) { CHECK(0, "%s", fx_err()); return; }
    fx_st_entry *e = fx_calloc((size_t)f.n, sizeof *e);
    for (int i = 0; i < f.n; i++) {
        e[i].name = f.t[i].name;
        e[i].dtype = f.t[i].dtype;
        e[i].ndim = f.t[i].ndim;
        memcpy(e[i].shape, f.t[i].shape, sizeof e[i].shape);
        e[i].data = f.data + f.t[i].begin;
    }
    const char *meta[] = {"format", fx_st_meta(&f, "format"), "note", fx_st_meta(&f, "note"), NULL};
    const char *out = tmp_path("rewrite.safetensors");
    CHECK(fx_st_write(out, e, f.n, meta) == 0, "write: %s", fx_err());
    char *a = NULL, *b = NULL;
    size_t la = 0, lb = 0;
    CHECK(fx_read_file(REF, &a, &la) == 0 && fx_read_file(out, &b, &lb) == 0, "%s", fx_err());
    CHECK(a && b && la == lb && !memcmp(a, b, la), "C-written file differs from the Python-written one "
          "(%zu vs %zu bytes)", lb, la);
    free(a);
    free(b);
    free(e);
    fx_st_close(&f);
}

/* ============================================================================================
 * round trips
 * ============================================================================================ */

static void test_roundtrip(void) {
    /* Every dtype, filled with random bytes (so floats include NaNs and subnormals): bits must survive.
     * The F32 tensor comes first, so it sits at offset 0 of an 8-aligned data area: read zero-copy. */
    static const fx_dtype order[] = {FX_F32, FX_F64, FX_F16, FX_BF16, FX_I64, FX_I32, FX_I16, FX_I8, FX_U8, FX_BOOL};
    enum { N = sizeof order / sizeof order[0] };
    fx_st_entry e[N];
    char names[N][32];
    uint8_t *data[N];
    fx_rng r;
    fx_rng_seed(&r, 7);
    for (int i = 0; i < N; i++) {
        memset(&e[i], 0, sizeof e[i]);
        snprintf(names[i], sizeof names[i], "t%d.%s", i, fx_dtype_name(order[i]));
        e[i].name = names[i];
        e[i].dtype = order[i];
        e[i].ndim = 1 + i % 3;
        for (int k = 0; k < e[i].ndim; k++) e[i].shape[k] = 1 + (int64_t)(fx_rng_u64(&r) % 5);
        size_t n = 1;
        for (int k = 0; k < e[i].ndim; k++) n *= (size_t)e[i].shape[k];
        size_t bytes = n * fx_dtype_size(order[i]);
        data[i] = fx_malloc(bytes);
        for (size_t k = 0; k < bytes; k++) data[i][k] = (uint8_t)fx_rng_u64(&r);
        if (order[i] == FX_BOOL) for (size_t k = 0; k < bytes; k++) data[i][k] &= 1;
        e[i].data = data[i];
    }
    const char *meta[] = {"k", "v", "empty", "", "quote\"\\\n", "tab\there", NULL};
    const char *path = tmp_path("all.safetensors");
    CHECK(fx_st_write(path, e, N, meta) == 0, "write: %s", fx_err());
    fx_st_file f;
    if (fx_st_open(path, &f) != 0) { CHECK(0, "read back: %s", fx_err()); goto out; }
    CHECK(f.n == N, "%d tensors read back", f.n);
    CHECK(f.nmeta == 3 && fx_st_meta(&f, "empty") && !strcmp(fx_st_meta(&f, "empty"), "") &&
          fx_st_meta(&f, "quote\"\\\n") && !strcmp(fx_st_meta(&f, "quote\"\\\n"), "tab\there"),
          "metadata with escapes survives");
    CHECK((f.data - (const uint8_t *)f.map) % 8 == 0, "data area starts 8-byte aligned");
    for (int i = 0; i < N && i < f.n; i++) {
        const fx_st_tensor *t = &f.t[i];
        size_t bytes = fx_st_numel(t) * fx_dtype_size(t->dtype);
        int same = !strcmp(t->name, names[i]) && t->dtype == order[i] && t->ndim == e[i].ndim &&
                   !memcmp(t->shape, e[i].shape, (size_t)t->ndim * sizeof t->shape[0]) &&
                   t->end - t->begin == bytes && !memcmp(f.data + t->begin, data[i], bytes);
        CHECK(same, "tensor %s does not round-trip bit for bit", names[i]);
    }
    float *owned = (float *)1;
    const float *v = fx_st_f32(&f, &f.t[0], &owned);
    CHECK(v == (const float *)f.data && owned == NULL, "aligned F32 is read in place");
    fx_st_close(&f);

    /* No tensors, no metadata: "{}" padded to 8 bytes. */
    path = tmp_path("empty.safetensors");
    CHECK(fx_st_write(path, NULL, 0, NULL) == 0, "write empty: %s", fx_err());
    char *buf;
    size_t len;
    if (fx_read_file(path, &buf, &len) == 0) {
        CHECK(len == 16 && !memcmp(buf, "\x08\0\0\0\0\0\0\0{}      ", 16), "empty file layout");
        free(buf);
    }
    CHECK(fx_st_open(path, &f) == 0 && f.n == 0 && f.nmeta == 0, "empty file reads back: %s", fx_err());
    fx_st_close(&f);
out:
    for (int i = 0; i < N; i++) free(data[i]);
}

/* ============================================================================================
 * conversions against independent references
 * ============================================================================================ */

static void test_f16_exhaustive(void) {
#ifdef __FLT16_MAX__
    /* Every one of the 65536 halves, through the file, against the compiler's own _Float16 widening. */
    uint16_t *h = fx_malloc(65536 * sizeof *h);
    for (uint32_t i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    fx_st_entry e = {.name = "all", .dtype = FX_F16, .ndim = 1, .shape = {65536}, .data = h};
    const char *path = tmp_path("f16.safetensors");
    fx_st_file f;
    if (fx_st_write(path, &e, 1, NULL) != 0 || fx_st_open(path, &f) != 0) { CHECK(0, "%s", fx_err()); free(h); return; }
    float *owned;
    const float *v = fx_st_f32(&f, &f.t[0], &owned);
    int bad = 0;
    for (uint32_t i = 0; i < 65536 && v; i++) {
        _Float16 x;
        memcpy(&x, &h[i], 2);
        if (!same_f32(v[i], (float)x) && !bad++)
            CHECK(0, "half 0x%04x: got %g, compiler gives %g", i, (double)v[i], (double)(float)x);
    }
    CHECK(v && !bad, "all 65536 halves convert exactly (%d wrong)", bad);
    free(owned);
    fx_st_close(&f);
    free(h);
#else
    printf("skipped: exhaustive F16 check (this compiler has no _Float16)\n");
#endif
}

/* ============================================================================================
 * bad files
 * ============================================================================================ */

/* Writes u64 header length, HEADER, then DATA_LEN zero bytes, to PATH. */
static void write_raw(const char *path, const char *header, size_t data_len) {
    size_t hl = strlen(header), len = 8 + hl + data_len;
    uint8_t *buf = fx_calloc(len, 1);
    uint64_t h64 = hl;
    memcpy(buf, &h64, 8);
    memcpy(buf + 8, header, hl);
    if (fx_write_file_atomic(path, buf, len) != 0) CHECK(0, "%s", fx_err());
    free(buf);
}

/* The file must be refused by fx_st_open and by fx_st_parse, with one line naming the file and WHAT. */
static void refuse_bytes(const char *what_file, const uint8_t *buf, size_t len, const char *what) {
    const char *path = tmp_path("bad.safetensors");
    if (fx_write_file_atomic(path, buf, len) != 0) { CHECK(0, "%s", fx_err()); return; }
    fx_st_file f;
    int rc = fx_st_open(path, &f);
    CHECK(rc == -1, "%s: accepted", what_file);
    if (rc == 0) { fx_st_close(&f); return; }
    const char *err = fx_err();
    CHECK(!strncmp(err, path, strlen(path)) && strstr(err, what) && !strchr(err, '\n'),
          "%s: error '%s' lacks the path or '%s'", what_file, err, what);
    CHECK(f.n == 0 && f.t == NULL && f.map == NULL, "%s: handle not reset after refusal", what_file);
    rc = fx_st_parse(buf, len, "mem", &f);
    CHECK(rc == -1 && !strncmp(fx_err(), "mem: ", 5) && strstr(fx_err(), what), "%s in memory: '%s'",
          what_file, fx_err());
    if (rc == 0) fx_st_close(&f);
}

static void refuse_header(const char *header, size_t data_len, const char *what) {
    size_t hl = strlen(header), len = 8 + hl + data_len;
    uint8_t *buf = fx_calloc(len, 1);
    uint64_t h64 = hl;
    memcpy(buf, &h64, 8);
    memcpy(buf + 8, header, hl);
    refuse_bytes(header, buf, len, what);
    free(buf);
}

#define T1(body) "{\"x\":{" body "}}"
#define F32_3 "\"dtype\":\"F32\",\"shape\":[3]"

static void test_refusals(void) {
    /* The container. */
    refuse_bytes("empty file", (const uint8_t *)"", 0, "0 bytes, too short");
    refuse_bytes("7 bytes", (const uint8_t *)"\x02\0\0\0\0\0\0", 7, "7 bytes, too short");
    refuse_bytes("header 1e8 + 1", (const uint8_t *)"\x01\xe1\xf5\x05\0\0\0\0{}", 10,
                 "header length 100000001 is above the 100000000-byte limit");
    refuse_bytes("header 1e8", (const uint8_t *)"\x00\xe1\xf5\x05\0\0\0\0{}", 10,
                 "header length 100000000 runs past the end");
    refuse_bytes("header past end", (const uint8_t *)"\x10\0\0\0\0\0\0\0{}", 10, "runs past the end of the file (10 bytes)");
    refuse_bytes("max u64", (const uint8_t *)"\xff\xff\xff\xff\xff\xff\xff\xff{}", 10, "above the");
    refuse_header("{\"x\":1,}", 0, "header: line 1, column 8: trailing comma");
    refuse_header("{\"x\":NaN}", 0, "header: line 1, column 6: NaN");
    refuse_header("{\"\xC0\xAF\":{}}", 0, "invalid UTF-8");
    refuse_header("[]", 0, "header is not a JSON object");
    refuse_bytes("NUL padding", (const uint8_t *)"\x03\0\0\0\0\0\0\0{}", 11,
                 "after the JSON value"); /* NUL padding is not whitespace */

    /* One entry's fields. */
    refuse_header("{\"x\":[]}", 0, "tensor 'x': entry is not an object");
    refuse_header(T1("\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[0,1]"), 1, "tensor 'x': unknown dtype 'F8_E4M3'");
    refuse_header(T1("\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]"), 4, "unknown dtype 'f32'");
    refuse_header(T1("\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]"), 4, "dtype is not a string");
    refuse_header(T1("\"shape\":[1],\"data_offsets\":[0,4]"), 4, "tensor 'x': missing 'dtype'");
    refuse_header(T1("\"dtype\":\"F32\",\"data_offsets\":[0,4]"), 4, "missing 'shape'");
    refuse_header(T1(F32_3), 12, "missing 'data_offsets'");
    refuse_header(T1(F32_3 ",\"data_offsets\":[0,12],\"offset\":0"), 12, "unknown field 'offset'");
    refuse_header(T1("\"dtype\":\"F32\",\"shape\":3,\"data_offsets\":[0,12]"), 12, "shape is not an array");
    refuse_header(T1("\"dtype\":\"F32\",\"shape\":[-3],\"data_offsets\":[0,12]"), 12, "shape[0] is not a non-negative integer");
    refuse_header(T1("\"dtype\":\"F32\",\"shape\":[1,1.5],\"data_offsets\":[0,12]"), 12, "shape[1] is not a non-negative");
    refuse_header(T1("\"dtype\":\"F32\",\"shape\":[3e0],\"data_offsets\":[0,12]"), 12, "shape[0] is not a non-negative");
    refuse_header(T1("\"dtype\":\"F32\",\"shape\":[\"3\"],\"data_offsets\":[0,12]"), 12, "shape[0]");
    refuse_header(T1("\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]"), 1,
                  "shape has 9 dimensions, at most 8");
    refuse_header(T1("\"dtype\":\"U8\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,1]"), 1,
                  "shape [4294967296, 4294967296] has more elements than memory can address");
    refuse_header(T1("\"dtype\":\"F64\",\"shape\":[4611686018427387904],\"data_offsets\":[0,1]"), 1,
                  "F64 [4611686018427387904] is more bytes than memory can address");
    refuse_header(T1(F32_3 ",\"data_offsets\":[0]"), 12, "data_offsets is not [begin, end]");
    refuse_header(T1(F32_3 ",\"data_offsets\":[0,12,12]"), 12, "data_offsets is not [begin, end]");
    refuse_header(T1(F32_3 ",\"data_offsets\":[-1,11]"), 12, "data_offsets is not [begin, end]");
    refuse_header(T1(F32_3 ",\"data_offsets\":[0,1.2e1]"), 12, "data_offsets is not [begin, end]");
    refuse_header(T1(F32_3 ",\"data_offsets\":{}"), 12, "data_offsets is not [begin, end]");
    refuse_header(T1(F32_3 ",\"data_offsets\":[12,0]"), 12, "tensor 'x': data_offsets [12, 0] end before they begin");
    refuse_header(T1(F32_3 ",\"data_offsets\":[0,12]"), 8, "tensor 'x': data_offsets [0, 12] run past the data area (8 bytes)");
    refuse_header(T1(F32_3 ",\"data_offsets\":[0,9223372036854775807]"), 12, "run past the data area");
    refuse_header(T1(F32_3 ",\"data_offsets\":[0,18446744073709551615]"), 12, "data_offsets is not [begin, end]");
    refuse_header(T1(F32_3 ",\"data_offsets\":[0,8]"), 8, "tensor 'x': data_offsets [0, 8] hold 8 bytes but F32 [3] needs 12");

    /* Names. */
    refuse_header("{\"\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0, "a tensor has an empty name");
    refuse_header("{\"a\\u0000b\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0, "tensor 'a': name contains a NUL");
    refuse_header("{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},"
                  "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[2,3]}}", 3, "header names 'a' twice");
    refuse_header("{\"a\\n\":[]}", 0, "tensor 'a\\x0a': entry"); /* a control byte is shown escaped */

    /* How the tensors tile the data area. */
    refuse_header("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]}}", 6,
                  "tensor 'b': data_offsets [2, 6] overlap the previous tensor 'a' [0, 4]");
    refuse_header("{\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[2,6]},"
                  "\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 6,
                  "tensor 'b': data_offsets [2, 6] overlap the previous tensor 'a' [0, 4]"); /* any header order */
    refuse_header("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4, "overlap the previous tensor");
    refuse_header("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[2,2]}}", 4, "tensor 'b': data_offsets [2, 2] overlap");
    refuse_header("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]},"
                  "\"b\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[8,12]}}", 12,
                  "tensor 'b': data_offsets [8, 12] leave bytes [4, 8) of the data area unused");
    refuse_header("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[4,8]}}", 8,
                  "tensor 'a': data_offsets [4, 8] leave bytes [0, 4) of the data area unused");
    refuse_header("{\"a\":{\"dtype\":\"U8\",\"shape\":[4],\"data_offsets\":[0,4]}}", 6,
                  "the data area is 6 bytes but the tensors cover only [0, 4)");
    refuse_header("{}", 1, "the data area is 1 bytes but the tensors cover only [0, 0)");

    /* Metadata. */
    refuse_header("{\"__metadata__\":[]}", 0, "__metadata__ is not an object");
    refuse_header("{\"__metadata__\":{\"a\":1}}", 0, "__metadata__ value of 'a' is not a string");
    refuse_header("{\"__metadata__\":{\"a\":{}}}", 0, "__metadata__ value of 'a' is not a string");
    refuse_header("{\"__metadata__\":{\"a\":\"x\",\"a\":\"y\"}}", 0, "__metadata__ names 'a' twice");
    refuse_header("{\"__metadata__\":{\"a\":\"x\\u0000\"}}", 0, "value of 'a' contains a NUL");
    refuse_header("{\"__metadata__\":{\"a\\u0000\":\"x\"}}", 0, "key 'a' contains a NUL");
    refuse_header("{\"__metadata__\":{},\"__metadata__\":{}}", 0, "header names '__metadata__' twice");

    /* Not files at all. */
    fx_st_file f;
    CHECK(fx_st_open(tmpdir, &f) == -1 && strstr(fx_err(), "not a regular file"), "directory: %s", fx_err());
    CHECK(fx_st_open(tmp_path("absent"), &f) == -1 && strstr(fx_err(), "cannot open"), "absent: %s", fx_err());

    /* A valid header whose BOOL data holds a 2: listing works, conversion refuses. */
    const char *path = tmp_path("bool.safetensors");
    write_raw(path, "{\"b\":{\"dtype\":\"BOOL\",\"shape\":[2],\"data_offsets\":[0,2]}}", 2);
    uint8_t twos[2] = {1, 2};
    char *raw;
    size_t len;
    if (fx_read_file(path, &raw, &len) == 0) {
        memcpy(raw + len - 2, twos, 2);
        fx_write_file_atomic(path, raw, len);
        free(raw);
    }
    if (fx_st_open(path, &f) == 0) {
        float *owned;
        CHECK(fx_st_f32(&f, &f.t[0], &owned) == NULL && owned == NULL &&
              strstr(fx_err(), "tensor 'b': BOOL element 1 is 2, not 0 or 1"), "bad BOOL: %s", fx_err());
        fx_st_close(&f);
    } else CHECK(0, "%s", fx_err());
}

static void refuse_write(const fx_st_entry *e, int n, const char *const *meta, const char *what) {
    const char *path = tmp_path("refused.safetensors");
    unlink(path);
    int rc = fx_st_write(path, e, n, meta);
    CHECK(rc == -1 && !strncmp(fx_err(), path, strlen(path)) && strstr(fx_err(), what),
          "writer: want '%s', got rc %d '%s'", what, rc, fx_err());
    CHECK(access(path, F_OK) != 0, "a refused write left %s behind", path);
}

static void test_writer_refusals(void) {
    float x[4] = {0};
    fx_st_entry ok = {.name = "a", .dtype = FX_F32, .ndim = 1, .shape = {4}, .data = x};
    fx_st_entry e[2] = {ok, ok};
    refuse_write(e, 2, NULL, "tensor 'a' is given twice");
    e[1].name = "";
    refuse_write(e, 2, NULL, "tensor 1 has no name");
    e[1].name = NULL;
    refuse_write(e, 2, NULL, "tensor 1 has no name");
    e[1] = ok; e[1].name = "__metadata__";
    refuse_write(e, 2, NULL, "reserved for metadata");
    e[1] = ok; e[1].name = "bad\xff";
    refuse_write(e, 2, NULL, "not valid UTF-8");
    e[1] = ok; e[1].name = "b"; e[1].shape[0] = -4;
    refuse_write(e, 2, NULL, "tensor 'b': shape [-4] has a negative dimension");
    e[1] = ok; e[1].name = "b"; e[1].ndim = 9;
    refuse_write(e, 2, NULL, "tensor 'b': ndim 9 outside [0, 8]");
    e[1] = ok; e[1].name = "b"; e[1].ndim = -1;
    refuse_write(e, 2, NULL, "ndim -1 outside");
    e[1] = ok; e[1].name = "b"; e[1].dtype = (fx_dtype)99;
    refuse_write(e, 2, NULL, "dtype 99 unknown");
    e[1] = ok; e[1].name = "b"; e[1].ndim = 2; e[1].shape[0] = e[1].shape[1] = (int64_t)1 << 40;
    refuse_write(e, 2, NULL, "more bytes than memory can address");
    e[1] = ok; e[1].name = "b"; e[1].data = NULL;
    refuse_write(e, 2, NULL, "tensor 'b': no data for 16 bytes");
    refuse_write(NULL, 1, NULL, "1 tensors to write");
    refuse_write(e, -1, NULL, "-1 tensors to write");
    const char *odd[] = {"k", NULL, NULL};
    refuse_write(&ok, 1, odd, "metadata 'k' has no value");
    const char *dup[] = {"k", "1", "j", "2", "k", "3", NULL};
    refuse_write(&ok, 1, dup, "metadata 'k' is given twice");
    const char *badu[] = {"k", "\xc0\xaf", NULL};
    refuse_write(&ok, 1, badu, "metadata 'k': key or value is not valid UTF-8");
    /* A zero-element tensor needs no data. */
    fx_st_entry z = {.name = "z", .dtype = FX_BF16, .ndim = 2, .shape = {0, 5}, .data = NULL};
    CHECK(fx_st_write(tmp_path("z.safetensors"), &z, 1, NULL) == 0, "empty tensor without data: %s", fx_err());
}

/* ============================================================================================
 * the command line
 * ============================================================================================ */

/* Same whitespace-separated words? */
static int same_words(const char *a, const char *b) {
    for (;;) {
        while (*a == ' ' || *a == '\t' || *a == '\n') a++;
        while (*b == ' ' || *b == '\t' || *b == '\n') b++;
        if (!*a || !*b) return !*a && !*b;
        while (*a && *a == *b && *a != ' ' && *a != '\t' && *a != '\n') a++, b++;
        if ((*a == ' ' || *a == '\t' || *a == '\n' || !*a) != (*b == ' ' || *b == '\t' || *b == '\n' || !*b)) return 0;
        if (*a && *a != ' ' && *a != '\t' && *a != '\n') return 0;
    }
}

static void test_cli(void) {
    const char *fedex = getenv("FEDEX");
    if (!fedex) { printf("skipped: fedex inspect (FEDEX, the path of the binary, is unset; `make test` sets it)\n"); return; }
    static char out[1 << 16], cmd[1024];
    char *want;
    size_t wl;
    if (fx_read_file(REF_INSPECT, &want, &wl) != 0) { CHECK(0, "%s", fx_err()); return; }
    snprintf(cmd, sizeof cmd, "%s inspect %s 2>&1", fedex, REF);
    int rc = check_run(cmd, out, sizeof out);
    CHECK(rc == 0, "inspect exited %d: %s", rc, out);
    CHECK(same_words(out, want), "inspect printed:\n%s\nwanted (as words):\n%s", out, want);
    free(want);

    write_raw(tmp_path("bad.safetensors"), "{\"x\":1,}", 0);
    snprintf(cmd, sizeof cmd, "%s inspect %s 2>&1 >/dev/null", fedex, tmp_path("bad.safetensors"));
    rc = check_run(cmd, out, sizeof out);
    CHECK(rc == 1 && !strncmp(out, "fedex: ", 7) && strstr(out, "trailing comma") && strchr(out, '\n') == out + strlen(out) - 1,
          "inspect of a bad file: exit %d, stderr '%s'", rc, out);
    snprintf(cmd, sizeof cmd, "%s inspect 2>&1 >/dev/null", fedex);
    rc = check_run(cmd, out, sizeof out);
    CHECK(rc != 0 && strstr(out, "usage"), "inspect without a file: exit %d, '%s'", rc, out);
    snprintf(cmd, sizeof cmd, "%s inspect --help 2>&1", fedex);
    rc = check_run(cmd, out, sizeof out);
    CHECK(rc == 0 && strstr(out, "usage: fedex inspect"), "inspect --help: exit %d, '%s'", rc, out);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/fedex-st-XXXXXX");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    test_reference();
    test_write_matches_python();
    test_roundtrip();
    test_f16_exhaustive();
    test_refusals();
    test_writer_refusals();
    test_cli();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) printf("note: could not remove %s\n", tmpdir);
    return check_done();
}
