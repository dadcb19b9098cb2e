/*
 * test_rpc_tls.c: TLS on both ends: a server that requires client
 * certificates, one that does not, the name override, and refusals (no
 * client certificate, plaintext, wrong name, missing files); a client with
 * neither a CA nor a certificate checks the server against gRPC's default
 * roots. Certificates are made at test time by make_certs.sh in a
 * temporary directory.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "rpc/rpc.h"

#define CHECK_PATH "/grpc.health.v1.Health/Check"

static char dir[64];
static char ca[128], server_cert[128], server_key[128], client_cert[128], client_key[128];
static char other_ca[128]; /* another throwaway CA's (make_certs.sh run again) */

static int make_certs(void **state)
{
    const char *src = getenv("FERRY_SOURCE_DIR");
    char cmd[512];

    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/ferry-rpc-tls-XXXXXX");
    if (src == NULL || mkdtemp(dir) == NULL) {
        return -1;
    }
    snprintf(cmd, sizeof(cmd), "'%s/tests/rpc/make_certs.sh' '%s'", src, dir);
    snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
    snprintf(server_cert, sizeof(server_cert), "%s/server.pem", dir);
    snprintf(server_key, sizeof(server_key), "%s/server.key", dir);
    snprintf(client_cert, sizeof(client_cert), "%s/client.pem", dir);
    snprintf(client_key, sizeof(client_key), "%s/client.key", dir);
    if (system(cmd) != 0) {
        return -1;
    }
    snprintf(cmd, sizeof(cmd), "mkdir '%s/other' && '%s/tests/rpc/make_certs.sh' '%s/other'", dir,
             src, dir);
    snprintf(other_ca, sizeof(other_ca), "%s/other/ca.pem", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static int remove_certs(void **state)
{
    char cmd[128];

    (void)state;
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static rpc_server_t *start_server_ca(const char *server_ca, bool require_client_cert, int *port_p)
{
    rpc_tls_params_t tls = {.ca_file = server_ca,
                            .cert_file = server_cert,
                            .key_file = server_key,
                            .require_client_cert = require_client_cert};
    rpc_server_params_t params = {.listen_addr = "127.0.0.1:0", .tls = &tls};
    rpc_server_t *server = NULL;

    assert_int_equal(rpc_server_create(&params, &server), FERRY_OK);
    assert_int_equal(rpc_server_start(server, port_p), FERRY_OK);
    return server;
}

static rpc_server_t *start_server(bool require_client_cert, int *port_p)
{
    return start_server_ca(ca, require_client_cert, port_p);
}

/* Health.Check("") through a new channel; returns the gRPC code. */
static int check(int port, const rpc_tls_params_t *tls)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    rpc_channel_params_t params = {.tls = tls};
    rpc_channel_t *channel = NULL;
    ProtobufCMessage *resp = NULL;
    rpc_error_t err;
    char target[64];

    snprintf(target, sizeof(target), "127.0.0.1:%d", port);
    params.target = target;
    assert_int_equal(rpc_channel_create(&params, &channel), FERRY_OK);
    if (rpc_unary(channel, CHECK_PATH, &req.base,
                  &grpc__health__v1__health_check_response__descriptor, 5000, &resp,
                  &err) == FERRY_OK) {
        assert_int_equal(((Grpc__Health__V1__HealthCheckResponse *)resp)->status, 1);
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    rpc_channel_destroy(channel);
    return err.grpc_code;
}

static void test_mutual_tls(void **state)
{
    rpc_tls_params_t full = {.ca_file = ca,
                             .cert_file = client_cert,
                             .key_file = client_key,
                             .server_name = "ferry.test"};
    rpc_tls_params_t no_cert = {.ca_file = ca, .server_name = "ferry.test"};
    rpc_tls_params_t wrong_name = full, no_name = full, stranger_ca = full;
    int port;
    rpc_server_t *server = start_server(true, &port);

    (void)state;
    wrong_name.server_name = "not.ferry.test";
    no_name.server_name = NULL; /* the target, 127.0.0.1: not in the certificate */
    stranger_ca.ca_file = other_ca;
    assert_int_equal(check(port, &full), 0);
    assert_int_not_equal(check(port, &no_cert), 0);
    assert_int_not_equal(check(port, NULL), 0);
    /* The client checks the server: its CA, and its name. */
    assert_int_not_equal(check(port, &wrong_name), 0);
    assert_int_not_equal(check(port, &no_name), 0);
    assert_int_not_equal(check(port, &stranger_ca), 0);
    rpc_server_destroy(server);
}

static void test_server_only_tls(void **state)
{
    rpc_tls_params_t client = {.ca_file = ca, .server_name = "ferry.test"};
    int port;
    rpc_server_t *server = start_server(false, &port);

    (void)state;
    assert_int_equal(check(port, &client), 0);
    assert_int_not_equal(check(port, NULL), 0);
    rpc_server_destroy(server);
}

/* A server with its certificate and key and no CA (--tls-cert/--tls-key
 * without --tls-ca: clients' certificates not asked for) serves, to a
 * client that presents one and to one that does not; it aborted at its
 * first handshake (gRPC asserts that a fetched config has roots). */
static void test_server_without_a_ca(void **state)
{
    rpc_tls_params_t client = {.ca_file = ca, .server_name = "ferry.test"};
    rpc_tls_params_t with_cert = {.ca_file = ca,
                                  .cert_file = client_cert,
                                  .key_file = client_key,
                                  .server_name = "ferry.test"};
    int port;
    rpc_server_t *server = start_server_ca(NULL, false, &port);

    (void)state;
    assert_int_equal(check(port, &client), 0);
    assert_int_equal(check(port, &with_cert), 0);
    assert_int_not_equal(check(port, NULL), 0);
    rpc_server_destroy(server);
}

/* TLS with no file at all (an https etcd with no --etcd-ca, libferry with
 * FERRY_COORDINATOR_PARAM_FIELD_TLS and no CA): the default roots, which
 * gRPC reads from GRPC_DEFAULT_SSL_ROOTS_FILE_PATH first, then the
 * system's. gRPC 1.51's file watcher, made with no path, aborted the
 * process instead. Runs first: gRPC reads the default roots once. */
static void test_no_files_uses_the_default_roots(void **state)
{
    rpc_tls_params_t none = {.server_name = "ferry.test"};
    int port;
    rpc_server_t *server = start_server(false, &port);

    (void)state;
    assert_int_equal(setenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", ca, 1), 0);
    assert_int_equal(check(port, &none), 0);
    rpc_server_destroy(server);
}

static void test_bad_settings(void **state)
{
    rpc_tls_params_t missing = {.cert_file = "/nonexistent.pem", .key_file = server_key};
    rpc_tls_params_t no_cert = {.ca_file = ca};
    rpc_tls_params_t half = {.ca_file = ca, .cert_file = client_cert};
    rpc_server_params_t sp = {.listen_addr = "127.0.0.1:0", .tls = &missing};
    rpc_channel_params_t cp = {.target = "127.0.0.1:1", .tls = &half};
    rpc_server_t *server = NULL;
    rpc_channel_t *channel = NULL;

    (void)state;
    assert_int_equal(rpc_server_create(&sp, &server), FERRY_ERR_INVALID_ARGUMENT);
    sp.tls = &no_cert;
    assert_int_equal(rpc_server_create(&sp, &server), FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(rpc_channel_create(&cp, &channel), FERRY_ERR_INVALID_ARGUMENT);
    assert_null(server);
    assert_null(channel);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_no_files_uses_the_default_roots),
        cmocka_unit_test(test_mutual_tls),
        cmocka_unit_test(test_server_only_tls),
        cmocka_unit_test(test_server_without_a_ca),
        cmocka_unit_test(test_bad_settings),
    };
    return cmocka_run_group_tests(tests, make_certs, remove_certs);
}
