/* fuzz/fuzz_safetensors.c: libFuzzer target for the safetensors header validation (fx_st_parse) and
 * fp32 conversion. Any input must be refused with a message or yield tensors that lie inside the buffer
 * and convert without reading outside it; never crash. */
#include "fedex.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* A copy, so that ASan sees the exact end of the buffer and any read past it. */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    fx_st_file f;
    if (fx_st_parse(buf, size, "fuzz", &f) == 0) {
        for (int i = 0; i < f.n; i++) {
            const fx_st_tensor *t = &f.t[i];
            if (t->end > f.data_len || t->begin > t->end || !t->name[0]) abort();
            if (fx_st_numel(t) * fx_dtype_size(t->dtype) != t->end - t->begin) abort();
            if (fx_st_find(&f, t->name) != t) abort(); /* names are unique */
            float *owned;
            const float *v = fx_st_f32(&f, t, &owned);
            volatile float sink = 0;
            for (size_t k = 0; v && k < fx_st_numel(t); k++) sink += v[k];
            (void)sink;
            free(owned);
        }
        for (int i = 0; i < f.nmeta; i++)
            if (fx_st_meta(&f, f.meta_keys[i]) != f.meta_vals[i]) abort();
        fx_st_close(&f);
    } else if (strncmp(fx_err(), "fuzz: ", 6) != 0) {
        abort(); /* every refusal names the file */
    }
    free(buf);
    return 0;
}
