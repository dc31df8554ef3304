/* fuzz/fuzz_tokenizer.c: libFuzzer target for the tokenizer. Any bytes as text: invalid UTF-8 is refused,
 * valid UTF-8 is cut into pieces that cover it exactly and comes back unchanged from decode(encode(x)),
 * sequences respect max_len, and decoding arbitrary ids gives valid UTF-8. Never a crash.
 * The vocabulary is roberta-base's from $FEDEX_SHARED (default ../shared); without it only the pieces. */
#include "fedex.h"

#include <stdlib.h>
#include <string.h>

static fx_tokenizer *tok;
static int tried;

static void load(void) {
    tried = 1;
    const char *shared = getenv("FEDEX_SHARED");
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/models/roberta-base", shared ? shared : "../shared");
    tok = fx_tok_load(dir);
    if (!tok) fprintf(stderr, "fuzz_tokenizer: %s; fuzzing the pre-tokenizer only\n", fx_err());
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tried) load();
    const char *text = (const char *)data;
    int valid = fx_utf8_valid_prefix(text, size) == size;

    /* pieces: non-empty, in order, ending at the end; refused exactly when not UTF-8 */
    size_t *ends = NULL;
    int n = 0, cap = 0;
    int rc = fx_tok_pretokenize(text, size, &ends, &n, &cap);
    if (rc != (valid ? 0 : -1)) abort();
    for (int i = 0; rc == 0 && i < n; i++)
        if (ends[i] <= (i ? ends[i - 1] : 0)) abort();
    if (rc == 0 && (n ? ends[n - 1] : 0) != size) abort();
    free(ends);
    if (!tok) return 0;

    int32_t *ids = NULL;
    int nids = 0, icap = 0;
    rc = fx_tok_encode_text(tok, text, size, &ids, &nids, &icap);
    if (rc != (valid ? 0 : -1)) abort();
    if (rc == 0) {
        if (nids > (int)size) abort(); /* at most one id per byte */
        char *d = fx_tok_decode(tok, ids, nids, 0);
        if (!d || memcmp(d, text, size) != 0 || d[size] != 0) abort();
        free(d);
    }

    /* a pair: the text split at its first NUL, max_len from the last byte */
    if (valid && size > 0) {
        char *buf = fx_malloc(size + 1);
        memcpy(buf, text, size);
        buf[size] = 0;
        char *nul = memchr(buf, 0, size);
        const char *b = nul && nul + 1 < buf + size ? nul + 1 : NULL;
        int max_len = data[size - 1] % 40;
        nids = 0;
        rc = fx_tok_encode_seq(tok, buf, b, max_len, &ids, &nids, &icap);
        int room = b ? 4 : 2;
        if (rc != ((max_len == 0 || max_len >= room) ? 0 : -1)) abort();
        if (rc == 0 && ((max_len && nids > max_len) || nids < room || ids[0] != fx_tok_bos(tok) ||
                        ids[nids - 1] != fx_tok_eos(tok)))
            abort();
        free(buf);
    }

    /* decoding any ids: pairs of bytes as ids, most of them in range */
    int m = (int)(size / 2);
    int32_t *any = fx_malloc((size_t)(m + 1) * sizeof *any);
    for (int i = 0; i < m; i++) any[i] = (int32_t)((data[2 * i] | data[2 * i + 1] << 8) % 50300);
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
