/*
 * pattern.c: see pattern.h. Word k is (k + 1) * golden-ratio constant; the
 * tail shorter than a word takes the low bytes of its word.
 */
#include "pattern.h"

#include <string.h>

static uint64_t word_at(uint64_t k)
{
    return (k + 1) * 0x9E3779B97F4A7C15ULL;
}

void ferry_pattern_fill(uint8_t *buf, uint64_t size)
{
    uint64_t words = size / 8;
    for (uint64_t k = 0; k < words; k++) {
        uint64_t w = word_at(k);
        memcpy(buf + 8 * k, &w, 8);
    }
    if (size % 8 != 0) {
        uint64_t w = word_at(words);
        memcpy(buf + 8 * words, &w, size % 8);
    }
}

uint64_t ferry_pattern_first_mismatch(const uint8_t *buf, uint64_t size)
{
    for (uint64_t off = 0; off < size; off += 8) {
        uint64_t w = word_at(off / 8);
        uint64_t n = size - off < 8 ? size - off : 8;
        if (memcmp(buf + off, &w, n) != 0) {
            for (uint64_t i = 0; i < n; i++) {
                if (buf[off + i] != ((const uint8_t *)&w)[i]) {
                    return off + i;
                }
            }
        }
    }
    return size;
}

bool ferry_pattern_check(const uint8_t *buf, uint64_t size)
{
    return ferry_pattern_first_mismatch(buf, size) == size;
}
