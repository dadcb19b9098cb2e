/*
 * test_keyed_hash.c: ferry__siphash13 is SipHash-1-3, byte for byte as
 * OpenSSL's SIPHASH MAC computes it with one compression and three
 * finalization rounds, for every length of tail; and the process's keyed
 * hash of a string is the same every time it is asked within the process.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <string.h>

#include "common/keyed_hash.h"

/* OpenSSL's SipHash-1-3 of in, as the 64-bit value whose little-endian
 * bytes its 8-byte output is. */
static uint64_t openssl_siphash13(const uint8_t key[16], const uint8_t *in, size_t len)
{
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "SIPHASH", NULL);
    EVP_MAC_CTX *ctx;
    unsigned int c = 1, d = 3;
    size_t size = 8, out_len = 0;
    uint8_t out[8];
    uint64_t v = 0;
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_size_t(OSSL_MAC_PARAM_SIZE, &size),
        OSSL_PARAM_construct_uint(OSSL_MAC_PARAM_C_ROUNDS, &c),
        OSSL_PARAM_construct_uint(OSSL_MAC_PARAM_D_ROUNDS, &d),
        OSSL_PARAM_construct_end(),
    };

    assert_non_null(mac);
    ctx = EVP_MAC_CTX_new(mac);
    assert_non_null(ctx);
    assert_int_equal(EVP_MAC_init(ctx, key, 16, params), 1);
    assert_int_equal(EVP_MAC_update(ctx, in, len), 1);
    assert_int_equal(EVP_MAC_final(ctx, out, &out_len, sizeof(out)), 1);
    assert_int_equal(out_len, 8);
    for (int i = 7; i >= 0; i--) {
        v = (v << 8) | out[i];
    }
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
    return v;
}

static void test_matches_openssl(void **state)
{
    uint8_t key[16], in[64];
    (void)state;

    for (int i = 0; i < 16; i++) {
        key[i] = (uint8_t)i;
    }
    for (int i = 0; i < 64; i++) {
        in[i] = (uint8_t)(i * 37 + 11);
    }
    for (size_t len = 0; len <= sizeof(in); len++) {
        assert_true(ferry__siphash13(key, in, len) == openssl_siphash13(key, in, len));
    }
    key[15] ^= 0x80; /* every key bit counts */
    assert_true(ferry__siphash13(key, in, 9) == openssl_siphash13(key, in, 9));
}

static void test_process_hash_is_stable(void **state)
{
    (void)state;
    assert_true(ferry__keyed_hash_str("op-1") == ferry__keyed_hash_str("op-1"));
    assert_true(ferry__keyed_hash_str("op-1") != ferry__keyed_hash_str("op-2"));
    assert_true(ferry__keyed_hash_str("") == ferry__keyed_hash_str(""));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_matches_openssl),
        cmocka_unit_test(test_process_hash_is_stable),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
