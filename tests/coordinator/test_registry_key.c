/*
 * test_registry_key.c: the keys the registry builds in etcd are never
 * truncated. The longest prefix (COORD_PREFIX_MAX) with the longest
 * request_id fits; anything longer is refused with INVALID_ARGUMENT naming
 * request_id, and a registry over a longer prefix is refused before it
 * touches etcd. (tests/python/test_limits.py drives a real coordinator at
 * those limits.)
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "registry_int.h"

/* len bytes of c, NUL-terminated, with '/' first and last when slashes. */
static char *filled(size_t len, char c, bool slashes)
{
    char *s = malloc(len + 1);
    assert_non_null(s);
    memset(s, c, len);
    if (slashes) {
        s[0] = '/';
        s[len - 1] = '/';
    }
    s[len] = '\0';
    return s;
}

static void test_longest_key_fits(void **state)
{
    char *prefix = filled(COORD_PREFIX_MAX, 'p', true);
    char *claims = malloc(COORD_PREFIX_MAX + sizeof("claims/"));
    char *id = filled(COORD_REQUEST_ID_MAX, 'i', false);
    registry_key_t key;
    char msg[256];
    (void)state;

    assert_non_null(claims);
    strcpy(claims, prefix);
    strcat(claims, "claims/");
    assert_int_equal(registry_key(claims, id, &key, msg, sizeof(msg)), FERRY_OK);
    assert_int_equal(key.len, strlen(claims) + COORD_REQUEST_ID_MAX);
    assert_int_equal(key.len, REGISTRY_KEY_MAX);
    assert_memory_equal(key.bytes, claims, strlen(claims));
    assert_memory_equal(key.bytes + strlen(claims), id, COORD_REQUEST_ID_MAX + 1);
    free(id);
    free(claims);
    free(prefix);
}

static void test_longer_key_is_refused(void **state)
{
    char *prefix = filled(REGISTRY_KEY_MAX, 'p', true);
    registry_key_t key;
    char msg[256] = "";
    (void)state;

    /* Exactly full fits; one byte over, or far over (past the 512-byte
     * buffers of old), is refused rather than cut. */
    assert_int_equal(registry_key(prefix, "", &key, msg, sizeof(msg)), FERRY_OK);
    assert_int_equal(key.len, REGISTRY_KEY_MAX);
    assert_int_equal(registry_key(prefix, "x", &key, msg, sizeof(msg)), FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(msg, "request_id"));
    free(prefix);
    prefix = filled(600, 'p', true);
    assert_int_equal(registry_key(prefix, "id", &key, msg, sizeof(msg)),
                     FERRY_ERR_INVALID_ARGUMENT);
    free(prefix);
}

static void test_registry_refuses_long_prefix(void **state)
{
    char *prefix = filled(COORD_PREFIX_MAX + 1, 'p', true);
    coord_registry_params_t params = {.prefix = prefix, .default_ttl_s = 10};
    coord_registry_t *r = NULL;
    (void)state;

    /* Refused before etcd is touched (params.etcd is NULL). */
    assert_int_equal(coord_registry_create(&params, &r), FERRY_ERR_INVALID_ARGUMENT);
    assert_null(r);
    params.prefix = "/no-slash";
    assert_int_equal(coord_registry_create(&params, &r), FERRY_ERR_INVALID_ARGUMENT);
    free(prefix);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_longest_key_fits),
        cmocka_unit_test(test_longer_key_is_refused),
        cmocka_unit_test(test_registry_refuses_long_prefix),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
