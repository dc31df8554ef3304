/* fuzz/fuzz_json.c: libFuzzer target for the strict JSON reader. Any input must either parse into a
 * tree that can be walked and freed, or be refused with a "line L, column C: " message; never crash. */
#include "fedex.h"

#include <stdlib.h>
#include <string.h>

/* Touches every value so that a tree with bad pointers or lengths shows up under ASan. */
static size_t walk(const fx_json *j) {
    size_t n = 1;
    if (j->type == FX_JSTR && (j->str[j->slen] != 0 || fx_utf8_valid_prefix(j->str, j->slen) != j->slen)) abort();
    for (size_t i = 0; i < j->n; i++) {
        if (j->type == FX_JOBJ) {
            if (j->keys[i][j->klens[i]] != 0) abort();
            if (fx_json_get(j, j->keys[i]) == NULL && strlen(j->keys[i]) == j->klens[i]) abort();
        }
        n += walk(&j->kids[i]);
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fx_json j;
    if (fx_json_parse((const char *)data, size, &j) == 0) {
        walk(&j);
        fx_json_free(&j);
    } else if (strncmp(fx_err(), "line ", 5) != 0) {
        abort(); /* every refusal says where */
    }
    return 0;
}
