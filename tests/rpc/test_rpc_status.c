/*
 * test_rpc_status.c: the mapping between ferry_status_t and gRPC codes,
 * both ways, for every code (rpc/rpc_status.c documents the choices where
 * the mapping is not one to one).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "rpc/rpc.h"

static const ferry_status_t all_codes[] = {
#define ROW(name, value, msg) FERRY_##name,
    FERRY_FOREACH_STATUS(ROW)
#undef ROW
};
#define N_CODES (sizeof(all_codes) / sizeof(all_codes[0]))

/* Ferry codes that share a gRPC code with a closer match. */
static bool ferry_lossy(ferry_status_t s)
{
    return s == FERRY_ERR_EXPIRED || s == FERRY_ERR_LEASE_NOT_FOUND || s == FERRY_ERR_BUSY ||
           s == FERRY_ERR_NO_MEMORY || s == FERRY_ERR_TRANSPORT || s == FERRY_ERR_IO ||
           s == FERRY_ERR_MISUSE || s == FERRY_ERR_SIZE_MISMATCH || s == FERRY_ERR_KIND_MISMATCH;
}

static void test_every_ferry_code_maps(void **state)
{
    (void)state;
    for (size_t i = 0; i < N_CODES; i++) {
        int code = rpc_status_to_grpc(all_codes[i]);
        assert_in_range(code, 0, 16);
        assert_int_equal(code == 0, all_codes[i] == FERRY_OK);
        if (!ferry_lossy(all_codes[i])) {
            assert_int_equal(rpc_status_from_grpc(code), all_codes[i]);
        }
    }
}

static void test_lossy_choices(void **state)
{
    (void)state;
    assert_int_equal(rpc_status_to_grpc(FERRY_ERR_EXPIRED), 5);
    assert_int_equal(rpc_status_to_grpc(FERRY_ERR_LEASE_NOT_FOUND), 5);
    assert_int_equal(rpc_status_to_grpc(FERRY_ERR_NO_MEMORY), 8);
    assert_int_equal(rpc_status_to_grpc(FERRY_ERR_TRANSPORT), 14);
    assert_int_equal(rpc_status_to_grpc(FERRY_ERR_IO), 13);
    assert_int_equal(rpc_status_to_grpc(FERRY_ERR_MISUSE), 13);
}

static void test_documented_meanings(void **state)
{
    (void)state;
    assert_int_equal(rpc_status_to_grpc(FERRY_OK), 0);
    assert_int_equal(rpc_status_to_grpc(FERRY_ERR_CANCELLED), 1);
    assert_int_equal(rpc_status_to_grpc(FERRY_ERR_INVALID_ARGUMENT), 3);
    assert_int_equal(rpc_status_to_grpc(FERRY_ERR_TIMED_OUT), 4);
    assert_int_equal(rpc_status_to_grpc(FERRY_ERR_NOT_FOUND), 5);
    assert_int_equal(rpc_status_to_grpc(FERRY_ERR_ALREADY_EXISTS), 6);
    assert_int_equal(rpc_status_to_grpc(FERRY_ERR_PERMISSION_DENIED), 7);
    assert_int_equal(rpc_status_to_grpc(FERRY_ERR_RESOURCE_EXHAUSTED), 8);
    assert_int_equal(rpc_status_to_grpc(FERRY_ERR_FAILED_PRECONDITION), 9);
    assert_int_equal(rpc_status_to_grpc(FERRY_ERR_ABORTED), 10);
    assert_int_equal(rpc_status_to_grpc(FERRY_ERR_UNIMPLEMENTED), 12);
    assert_int_equal(rpc_status_to_grpc(FERRY_ERR_INTERNAL), 13);
    assert_int_equal(rpc_status_to_grpc(FERRY_ERR_UNAVAILABLE), 14);
    assert_int_equal(rpc_status_to_grpc(FERRY_ERR_UNAUTHENTICATED), 16);
    assert_int_equal(rpc_status_to_grpc(FERRY_ERR_OUT_OF_RANGE), 11);
    assert_int_equal(rpc_status_from_grpc(11), FERRY_ERR_OUT_OF_RANGE);
}

static void test_every_grpc_code_maps(void **state)
{
    (void)state;
    for (int code = 0; code <= 16; code++) {
        ferry_status_t s = rpc_status_from_grpc(code);
        assert_int_equal(s == FERRY_OK, code == 0);
        assert_string_not_equal(ferry_status_name(s), "FERRY_UNKNOWN_STATUS");
        assert_int_equal(rpc_status_to_grpc(s), code);
    }
}

static void test_out_of_range_grpc_codes(void **state)
{
    (void)state;
    assert_int_equal(rpc_status_from_grpc(-1), FERRY_ERR_PEER_FAILED);
    assert_int_equal(rpc_status_from_grpc(17), FERRY_ERR_PEER_FAILED);
    assert_int_equal(rpc_status_from_grpc(1000), FERRY_ERR_PEER_FAILED);
    assert_int_equal(rpc_status_to_grpc((ferry_status_t)-1000), 13);
}

static void test_code_names(void **state)
{
    (void)state;
    assert_string_equal(rpc_grpc_code_name(0), "OK");
    assert_string_equal(rpc_grpc_code_name(5), "NOT_FOUND");
    assert_string_equal(rpc_grpc_code_name(16), "UNAUTHENTICATED");
    assert_string_equal(rpc_grpc_code_name(17), "UNKNOWN_CODE");
    assert_string_equal(rpc_grpc_code_name(-1), "UNKNOWN_CODE");
    for (int code = 0; code <= 16; code++) {
        assert_string_not_equal(rpc_grpc_code_name(code), "UNKNOWN_CODE");
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_ferry_code_maps),   cmocka_unit_test(test_lossy_choices),
        cmocka_unit_test(test_documented_meanings),     cmocka_unit_test(test_every_grpc_code_maps),
        cmocka_unit_test(test_out_of_range_grpc_codes), cmocka_unit_test(test_code_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
