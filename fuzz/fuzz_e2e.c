/* fuzz/fuzz_e2e.c: libFuzzer target for the E2E CSV reader. The input is a file's bytes; any input must
 * give rows whose groups tile them, or a one-line error, never a crash. */
#include "fedex.h"

#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int fd = memfd_create("e2e", 0);
    if (fd < 0) return 0;
    if (write(fd, data, size) != (ssize_t)size) { close(fd); return 0; }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    fx_e2e_rows r;
    if (fx_e2e_read(path, &r) == 0) {
        if (r.ngroups < 1 || r.group[0] != 0 || r.group[r.ngroups] != r.n) abort();
        for (int g = 0; g < r.ngroups; g++)
            if (r.group[g] >= r.group[g + 1]) abort();
        fx_e2e_rows_free(&r);
    }
    close(fd);
    return 0;
}
