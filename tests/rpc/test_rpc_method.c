/*
 * test_rpc_method.c: the method table built from protoc-c service
 * descriptors: paths, message descriptors, kinds, and refusals (unknown
 * name, missing handler, duplicates, all-or-nothing adds).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <string.h>

#include "ferry/v1/coordinator.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "rpc/rpc_int.h"

static void handler(rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    (void)call;
    (void)request;
    (void)arg;
}

static void test_build_from_descriptor(void **state)
{
    const rpc_method_t methods[] = {
        {"Register", RPC_UNARY, handler},
        {"Watch", RPC_SERVER_STREAMING, handler},
    };
    rpc_method_table_t table = {0};
    rpc_method_entry_t *row;
    int arg;

    (void)state;
    assert_int_equal(
        rpc__method_table_add(&table, &ferry__v1__coordinator__descriptor, methods, 2, &arg),
        FERRY_OK);
    assert_int_equal(table.n_rows, 2);
    row = rpc__method_table_find(&table, "/ferry.v1.Coordinator/Register");
    assert_non_null(row);
    assert_ptr_equal(row->desc->input, &ferry__v1__register_request__descriptor);
    assert_ptr_equal(row->desc->output, &ferry__v1__register_response__descriptor);
    assert_int_equal(row->kind, RPC_UNARY);
    assert_ptr_equal(row->arg, &arg);
    row = rpc__method_table_find(&table, "/ferry.v1.Coordinator/Watch");
    assert_non_null(row);
    assert_int_equal(row->kind, RPC_SERVER_STREAMING);
    assert_null(rpc__method_table_find(&table, "/ferry.v1.Coordinator/Lookup"));
    assert_null(rpc__method_table_find(&table, "/ferry.v1.Coordinator/"));
    rpc__method_table_clear(&table);
    assert_int_equal(table.n_rows, 0);
}

static void test_two_services(void **state)
{
    const rpc_method_t coord[] = {{"Get", RPC_UNARY, handler}};
    const rpc_method_t health[] = {{"Check", RPC_UNARY, handler}};
    rpc_method_table_t table = {0};

    (void)state;
    assert_int_equal(
        rpc__method_table_add(&table, &ferry__v1__coordinator__descriptor, coord, 1, NULL),
        FERRY_OK);
    assert_int_equal(
        rpc__method_table_add(&table, &grpc__health__v1__health__descriptor, health, 1, NULL),
        FERRY_OK);
    assert_non_null(rpc__method_table_find(&table, "/grpc.health.v1.Health/Check"));
    assert_non_null(rpc__method_table_find(&table, "/ferry.v1.Coordinator/Get"));
    assert_null(rpc__method_table_find(&table, "/grpc.health.v1.Health/Get"));
    rpc__method_table_clear(&table);
}

static void test_unknown_name_rejected(void **state)
{
    const rpc_method_t methods[] = {
        {"Get", RPC_UNARY, handler},
        {"Frobnicate", RPC_UNARY, handler},
    };
    rpc_method_table_t table = {0};

    (void)state;
    assert_int_equal(
        rpc__method_table_add(&table, &ferry__v1__coordinator__descriptor, methods, 2, NULL),
        FERRY_ERR_INVALID_ARGUMENT);
    /* All or nothing: Get was not added either. */
    assert_int_equal(table.n_rows, 0);
    rpc__method_table_clear(&table);
}

static void test_bad_rows_rejected(void **state)
{
    const rpc_method_t no_handler[] = {{"Get", RPC_UNARY, NULL}};
    const rpc_method_t twice[] = {{"Get", RPC_UNARY, handler}, {"Get", RPC_UNARY, handler}};
    const rpc_method_t once[] = {{"Get", RPC_UNARY, handler}};
    rpc_method_table_t table = {0};

    (void)state;
    assert_int_equal(
        rpc__method_table_add(&table, &ferry__v1__coordinator__descriptor, no_handler, 1, NULL),
        FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(
        rpc__method_table_add(&table, &ferry__v1__coordinator__descriptor, twice, 2, NULL),
        FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(
        rpc__method_table_add(&table, &ferry__v1__coordinator__descriptor, once, 1, NULL),
        FERRY_OK);
    assert_int_equal(
        rpc__method_table_add(&table, &ferry__v1__coordinator__descriptor, once, 1, NULL),
        FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(table.n_rows, 1);
    rpc__method_table_clear(&table);
}

static void test_server_add_service(void **state)
{
    const rpc_method_t bad[] = {{"Nope", RPC_UNARY, handler}};
    const rpc_method_t good[] = {{"Get", RPC_UNARY, handler}};
    rpc_server_params_t params = {.listen_addr = "127.0.0.1:0"};
    rpc_server_t *server = NULL;

    (void)state;
    assert_int_equal(rpc_server_create(&params, &server), FERRY_OK);
    assert_int_equal(
        rpc_server_add_service(server, &ferry__v1__coordinator__descriptor, bad, 1, NULL),
        FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(
        rpc_server_add_service(server, &ferry__v1__coordinator__descriptor, good, 1, NULL),
        FERRY_OK);
    /* Never started: destroy alone cleans up. */
    rpc_server_destroy(server);
    rpc_server_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_build_from_descriptor), cmocka_unit_test(test_two_services),
        cmocka_unit_test(test_unknown_name_rejected), cmocka_unit_test(test_bad_rows_rejected),
        cmocka_unit_test(test_server_add_service),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
