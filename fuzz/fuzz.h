/*
 * fuzz.h: the one entry point every fuzz target defines (libFuzzer's), and
 * the helpers the targets share.
 *
 * A target is built two ways (fuzz/CMakeLists.txt): with clang and
 * -fsanitize=fuzzer under FERRY_FUZZ=ON, where libFuzzer supplies main()
 * and explores; and in the normal build, linked with replay.c, whose main()
 * feeds it every file of its corpus once (a CTest test labelled `fuzz`).
 *
 * A target returns 0 for every input it is handed; a broken invariant is a
 * crash (fuzz_assert aborts), which is what both drivers report.
 */
#ifndef FERRY_FUZZ_FUZZ_H
#define FERRY_FUZZ_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Unlike assert(), active in every build type: an invariant a fuzz target
 * checks is the point of the target. */
#define fuzz_assert(cond)                                                                     \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", __FILE__, __LINE__, #cond); \
            abort();                                                                          \
        }                                                                                     \
    } while (0)

#endif /* FERRY_FUZZ_FUZZ_H */
