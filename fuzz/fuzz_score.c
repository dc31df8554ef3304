/* fuzz/fuzz_score.c: libFuzzer target for the E2E scorer: the input, cut at its first NUL byte into a
 * hypotheses file and a references file, goes through the readers and, where they accept it, through
 * BLEU, NIST, ROUGE-L, CIDEr and the PTB tokenizer (both modes). Any input must give scores or a
 * one-line error, never a crash. */
#include "fedex.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static int memfile(const uint8_t *d, size_t n, char *path, size_t cap) {
    int fd = memfd_create("score", 0);
    if (fd < 0) return -1;
    if (write(fd, d, n) != (ssize_t)n) { close(fd); return -1; }
    snprintf(path, cap, "/proc/self/fd/%d", fd);
    return fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *cut = memchr(data, 0, size);
    size_t nh = cut ? (size_t)(cut - data) : size;
    char hp[64], rp[64];
    int fh = memfile(data, nh, hp, sizeof hp);
    int fr = cut ? memfile(cut + 1, size - nh - 1, rp, sizeof rp) : memfile(data, nh, rp, sizeof rp);
    if (fh >= 0 && fr >= 0) {
        fx_e2e_scores s;
        fx_e2e_score_files(hp, rp, 0, &s);
        fx_e2e_score_files(hp, rp, 1, &s);
    }
    if (fh >= 0) close(fh);
    if (fr >= 0) close(fr);
    return 0;
}
