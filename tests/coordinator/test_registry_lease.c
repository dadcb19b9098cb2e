/*
 * test_registry_lease.c: a lease token that OpenSSL cannot compute (out of
 * memory: HMAC and EVP_MAC_CTX_dup fail, through --wrap) fails closed and
 * retryable. registry_lease_check answers UNAVAILABLE, never "does not
 * grant" for a token that does (a worker told that would give up a lease it
 * holds); before, the comparison ran against whatever the stack held, and a
 * new lease could be handed out with such a token.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdatomic.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "registry_int.h"

static bool openssl_fails;

unsigned char *__real_HMAC(const EVP_MD *md, const void *key, int key_len, const unsigned char *d,
                           size_t n, unsigned char *md_out, unsigned int *md_len);
EVP_MAC_CTX *__real_EVP_MAC_CTX_dup(const EVP_MAC_CTX *src);
unsigned char *__wrap_HMAC(const EVP_MD *md, const void *key, int key_len, const unsigned char *d,
                           size_t n, unsigned char *md_out, unsigned int *md_len);
EVP_MAC_CTX *__wrap_EVP_MAC_CTX_dup(const EVP_MAC_CTX *src);

unsigned char *__wrap_HMAC(const EVP_MD *md, const void *key, int key_len, const unsigned char *d,
                           size_t n, unsigned char *md_out, unsigned int *md_len)
{
    return openssl_fails ? NULL : __real_HMAC(md, key, key_len, d, n, md_out, md_len);
}

EVP_MAC_CTX *__wrap_EVP_MAC_CTX_dup(const EVP_MAC_CTX *src)
{
    return openssl_fails ? NULL : __real_EVP_MAC_CTX_dup(src);
}

static void test_token_openssl_cannot_compute_fails_closed(void **state)
{
    static coord_registry_t r; /* only the lease key's fields are used */
    char token[COORD_LEASE_TOKEN_LEN + 1], again[COORD_LEASE_TOKEN_LEN + 1];
    char msg[256];
    (void)state;

    r.prefix = "/ferry/";
    memset(r.lease_key, 0x5a, sizeof(r.lease_key));
    atomic_store(&r.lease_key_ready, true);
    openssl_fails = false;
    assert_int_equal(registry_lease_token(&r, 42, token), FERRY_OK);
    assert_int_equal(strlen(token), COORD_LEASE_TOKEN_LEN);
    assert_int_equal(registry_lease_check(&r, "lease_id", 42, token, msg, sizeof(msg)), FERRY_OK);
    assert_int_equal(registry_lease_check(&r, "lease_id", 43, token, msg, sizeof(msg)),
                     FERRY_ERR_PERMISSION_DENIED);

    openssl_fails = true;
    memset(again, 'x', sizeof(again));
    assert_int_equal(registry_lease_token(&r, 42, again), FERRY_ERR_NO_MEMORY);
    assert_string_equal(again, "");
    assert_int_equal(registry_lease_check(&r, "lease_id", 42, token, msg, sizeof(msg)),
                     FERRY_ERR_UNAVAILABLE);
    assert_non_null(strstr(msg, "lease_token"));
    assert_non_null(strstr(msg, "retry"));
    openssl_fails = false;
    assert_int_equal(registry_lease_check(&r, "lease_id", 42, token, msg, sizeof(msg)), FERRY_OK);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token_openssl_cannot_compute_fails_closed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
