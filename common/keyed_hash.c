/*
 * keyed_hash.c: SipHash-1-3 (Aumasson and Bernstein, with the round counts
 * Rust's and CPython's hash tables use: one per block, three to finish) and
 * the process's key (keyed_hash.h).
 */
#include "keyed_hash.h"

#include <pthread.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

#define SIPROUND           \
    do {                   \
        v0 += v1;          \
        v1 = ROTL(v1, 13); \
        v1 ^= v0;          \
        v0 = ROTL(v0, 32); \
        v2 += v3;          \
        v3 = ROTL(v3, 16); \
        v3 ^= v2;          \
        v0 += v3;          \
        v3 = ROTL(v3, 21); \
        v3 ^= v0;          \
        v2 += v1;          \
        v1 = ROTL(v1, 17); \
        v1 ^= v2;          \
        v2 = ROTL(v2, 32); \
    } while (0)

static uint64_t load_le64(const uint8_t *p)
{
    uint64_t v = 0;

    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | p[i];
    }
    return v;
}

uint64_t ferry__siphash13(const uint8_t key[16], const void *data, size_t len)
{
    const uint8_t *in = data;
    uint64_t k0 = load_le64(key), k1 = load_le64(key + 8);
    uint64_t v0 = 0x736f6d6570736575ull ^ k0, v1 = 0x646f72616e646f6dull ^ k1;
    uint64_t v2 = 0x6c7967656e657261ull ^ k0, v3 = 0x7465646279746573ull ^ k1;
    uint64_t b = (uint64_t)len << 56;
    size_t whole = len - len % 8;

    for (size_t i = 0; i < whole; i += 8) {
        uint64_t m = load_le64(in + i);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    for (size_t i = len % 8; i > 0; i--) {
        b |= (uint64_t)in[whole + i - 1] << (8 * (i - 1));
    }
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static uint8_t process_key[16]; /* written once, by draw_key */
static pthread_once_t key_once = PTHREAD_ONCE_INIT;

static void draw_key(void)
{
    uint64_t k[2];

    if (getrandom(process_key, sizeof(process_key), 0) == (ssize_t)sizeof(process_key)) {
        return;
    }
    /* getrandom failed (ENOSYS under an old seccomp policy): the tables
     * stay right, and their chains only lose most of their defence. */
    k[0] = (uint64_t)ferry__clock_ns(CLOCK_REALTIME) ^ ((uint64_t)getpid() << 32);
    k[1] = (uint64_t)ferry__clock_ns(CLOCK_MONOTONIC) ^ (uint64_t)(uintptr_t)&k;
    memcpy(process_key, k, sizeof(process_key));
}

uint64_t ferry__keyed_hash_str(const char *s)
{
    pthread_once(&key_once, draw_key);
    return ferry__siphash13(process_key, s, strlen(s));
}
