/* fuzz/fuzz_tokjson.c: libFuzzer target for tokenizer.json tokenizers, on the committed Llama-3-style
 * folder (tests/fixtures/tokjson/llama3: Split pattern, ignore_merges, added tokens with lstrip and rstrip).
 * Any bytes as text: invalid UTF-8 is refused, valid UTF-8 is cut by Llama-3's pattern into pieces that
 * cover it exactly and comes back unchanged from decode(encode(x)); sequences with their special tokens
 * respect max_len and start with <|begin_of_text|>; decoding any ids gives valid UTF-8. Never a crash.
 * Run from the repository root (as `make fuzz` does). */
#include "fedex.h"

#include <stdlib.h>
#include <string.h>

static fx_tokenizer *tok;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tok && !(tok = fx_tok_load("tests/fixtures/tokjson/llama3"))) {
        fprintf(stderr, "fuzz_tokjson: %s\n", fx_err());
        abort();
    }
    const char *text = (const char *)data;
    int valid = fx_utf8_valid_prefix(text, size) == size;

    size_t *ends = NULL;
    int n = 0, cap = 0;
    int rc = fx_tok_pieces(tok, text, size, &ends, &n, &cap);
    if (rc != (valid ? 0 : -1)) abort();
    for (int i = 0; rc == 0 && i < n; i++)
        if (ends[i] <= (i ? ends[i - 1] : 0)) abort();
    if (rc == 0 && (n ? ends[n - 1] : 0) != size) abort();
    free(ends);

    int32_t *ids = NULL;
    int nids = 0, icap = 0;
    rc = fx_tok_encode_text(tok, text, size, &ids, &nids, &icap);
    if (rc != (valid ? 0 : -1)) abort();
    if (rc == 0) {
        if (nids > (int)size) abort();
        char *d = fx_tok_decode(tok, ids, nids, 0);
        if (!d || memcmp(d, text, size) != 0 || d[size] != 0) abort();
        free(d);
    }

    /* a pair with the special tokens written in it: the text split at its first NUL, max_len from the
     * last byte; <|begin_of_text|> A <|begin_of_text|> B */
    if (valid && size > 0) {
        char *buf = fx_malloc(size + 1);
        memcpy(buf, text, size);
        buf[size] = 0;
        char *nul = memchr(buf, 0, size);
        const char *b = nul && nul + 1 < buf + size ? nul + 1 : NULL;
        int max_len = data[size - 1] % 40, room = b ? 2 : 1, bos = fx_tok_bos(tok);
        nids = 0;
        rc = fx_tok_encode_seq(tok, buf, b, max_len, &ids, &nids, &icap);
        if (rc != ((max_len == 0 || max_len >= room) ? 0 : -1)) abort();
        if (rc == 0 && ((max_len && nids > max_len) || nids < room || ids[0] != bos)) abort();
        for (int i = 0; rc == 0 && i < nids; i++)
            if (ids[i] < 0 || ids[i] >= fx_tok_vocab_size(tok)) abort();
        free(buf);
    }

    int m = (int)(size / 2);
    int32_t *any = fx_malloc((size_t)(m + 1) * sizeof *any);
    for (int i = 0; i < m; i++) any[i] = (int32_t)((data[2 * i] | data[2 * i + 1] << 8) % (fx_tok_vocab_size(tok) + 8));
    char *d = fx_tok_decode(tok, any, m, size & 1);
    if (d && fx_utf8_valid_prefix(d, strlen(d)) != strlen(d)) abort();
    int all_in = 1;
    for (int i = 0; i < m; i++) all_in &= any[i] < fx_tok_vocab_size(tok);
    if (!d != !all_in) abort();
    free(d);
    free(any);
    free(ids);
    return 0;
}
