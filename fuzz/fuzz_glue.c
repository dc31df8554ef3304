/* fuzz/fuzz_glue.c: libFuzzer target for the GLUE TSV reader. The input is a file's bytes; the first
 * byte picks the task (so every column layout and label map is exercised). Any input must give rows
 * or a one-line error, never a crash. */
#include "fedex.h"

#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static const char *tasks[] = {"CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "MNLI-MM", "QNLI", "RTE", "WNLI"};
    if (size < 1) return 0;
    const fx_task *t = fx_task_find(tasks[data[0] % (sizeof tasks / sizeof tasks[0])]);
    int fd = memfd_create("glue", 0);
    if (fd < 0) return 0;
    if (write(fd, data + 1, size - 1) != (ssize_t)(size - 1)) { close(fd); return 0; }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    fx_rows rows;
    if (fx_glue_read(t, path, &rows) == 0) fx_rows_free(&rows);
    close(fd);
    return 0;
}
