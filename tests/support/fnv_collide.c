/*
 * fnv_collide.c: see fnv_collide.h. by_start[s] is a suffix that takes the
 * low bits of FNV-1a's state from s to TARGET (UINT32_MAX: none found);
 * 62^4 suffixes cover all but about e^-14 of the 2^20 states.
 */
#include "fnv_collide.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FNV_PRIME  1099511628211ull
#define LOW_MASK   ((1ull << FNV_COLLIDE_BITS) - 1)
#define TARGET     0x5a5a5ull
#define SUFFIX_LEN 4
#define ALPHABET   "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
#define ALPHABET_N (sizeof(ALPHABET) - 1)
#define ID_CAP     48

uint64_t fnv1a_from(uint64_t offset, const char *s)
{
    uint64_t h = offset;

    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        h = (h ^ *p) * FNV_PRIME;
    }
    return h;
}

/* The inverse of the (odd) prime modulo 2^64, by Newton's iteration. */
static uint64_t prime_inverse(void)
{
    uint64_t inv = FNV_PRIME;

    for (int i = 0; i < 6; i++) {
        inv *= 2 - FNV_PRIME * inv;
    }
    return inv;
}

static void suffix_of(uint32_t x, char out[SUFFIX_LEN + 1])
{
    for (int j = 0; j < SUFFIX_LEN; j++) {
        out[j] = ALPHABET[x % ALPHABET_N];
        x /= (uint32_t)ALPHABET_N;
    }
    out[SUFFIX_LEN] = '\0';
}

/* For every suffix, the low state it must start from to end at TARGET. */
static uint32_t *suffix_table(void)
{
    uint32_t *by_start = malloc((LOW_MASK + 1) * sizeof(*by_start));
    uint64_t inv = prime_inverse();
    uint32_t n = 1;
    char sfx[SUFFIX_LEN + 1];

    if (by_start == NULL) {
        return NULL;
    }
    memset(by_start, 0xff, (LOW_MASK + 1) * sizeof(*by_start));
    for (int j = 0; j < SUFFIX_LEN; j++) {
        n *= (uint32_t)ALPHABET_N;
    }
    for (uint32_t x = 0; x < n; x++) {
        uint64_t s = TARGET;
        suffix_of(x, sfx);
        for (int j = SUFFIX_LEN - 1; j >= 0; j--) {
            s = ((s * inv) ^ (unsigned char)sfx[j]) & LOW_MASK;
        }
        by_start[s] = x;
    }
    return by_start;
}

char **fnv_colliding_ids(uint64_t offset, size_t n)
{
    uint32_t *by_start = suffix_table();
    char **ids = calloc(n > 0 ? n : 1, sizeof(*ids));
    char prefix[32], sfx[SUFFIX_LEN + 1];
    size_t got = 0;

    if (by_start == NULL || ids == NULL) {
        goto err;
    }
    for (size_t i = 0; got < n; i++) {
        snprintf(prefix, sizeof(prefix), "h-%zu-", i);
        uint32_t x = by_start[fnv1a_from(offset, prefix) & LOW_MASK];
        if (x == UINT32_MAX) {
            continue;
        }
        if ((ids[got] = malloc(ID_CAP)) == NULL) {
            goto err;
        }
        suffix_of(x, sfx);
        snprintf(ids[got++], ID_CAP, "%s%s", prefix, sfx);
    }
    free(by_start);
    return ids;

err:
    free(by_start);
    if (ids != NULL) {
        fnv_ids_free(ids, got);
    }
    return NULL;
}

void fnv_ids_free(char **ids, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(ids[i]);
    }
    free(ids);
}
