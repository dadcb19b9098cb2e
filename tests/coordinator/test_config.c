/*
 * test_config.c: ferry-coordinator's flags and FERRY_* variables: defaults,
 * a flag beats its variable, 0 is a value (not "unset"), bad numbers and
 * bad combinations are refused, numbers and the prefix at their limits, a
 * TLS file set but empty is refused, --metrics-listen by the rules the
 * metrics server binds with.
 * (tests/python/test_cli_flags.py runs the binary: exit 2 and the message.)
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "registry.h"

static int parse(coord_config_t *c, int argc, char **argv)
{
    return coord_config_parse(argc, argv, c);
}

static void test_defaults(void **state)
{
    coord_config_t c;
    char *argv[] = {"ferry-coordinator", NULL};
    (void)state;

    assert_int_equal(parse(&c, 1, argv), 0);
    assert_string_equal(c.listen, "127.0.0.1:7400");
    assert_null(c.etcd);
    assert_string_equal(c.prefix, "/ferry/");
    assert_int_equal(c.ttl_s, 10);
    assert_int_equal(c.threads, 16);
    assert_int_equal(c.grace_ms, 5000);
    assert_int_equal(c.watch_queue_kib, 4096);
    assert_int_equal(c.etcd_inflight, 64);
    assert_int_equal(c.etcd_queue, 1024);
    assert_int_equal(c.etcd_load_page, 5000);
    assert_int_equal(c.register_batch, 64);
    assert_int_equal(c.max_waits, 10000);
    assert_int_equal(c.max_watches, 10000);
    assert_false(c.etcd_kv_gateway);
}

static void test_etcd_kv_api(void **state)
{
    coord_config_t c;
    char *gateway[] = {"ferry-coordinator", "--etcd-kv-api", "gateway", NULL};
    char *grpc[] = {"ferry-coordinator", "--etcd-kv-api", "grpc", NULL};
    char *none[] = {"ferry-coordinator", NULL};
    char *bad[] = {"ferry-coordinator", "--etcd-kv-api", "http", NULL};
    (void)state;

    assert_int_equal(parse(&c, 3, gateway), 0);
    assert_true(c.etcd_kv_gateway);
    setenv("FERRY_ETCD_KV_API", "gateway", 1);
    assert_int_equal(parse(&c, 1, none), 0);
    assert_true(c.etcd_kv_gateway);
    assert_int_equal(parse(&c, 3, grpc), 0); /* the flag wins */
    assert_false(c.etcd_kv_gateway);
    unsetenv("FERRY_ETCD_KV_API");
    assert_int_equal(parse(&c, 3, bad), -1);
}

static void test_etcd_queue_flags(void **state)
{
    coord_config_t c;
    char *argv[] = {"ferry-coordinator", "--etcd-inflight", "4", "--etcd-queue", "0", NULL};
    (void)state;

    setenv("FERRY_ETCD_INFLIGHT", "9", 1);
    assert_int_equal(parse(&c, 5, argv), 0);
    assert_int_equal(c.etcd_inflight, 4);
    assert_int_equal(c.etcd_queue, 0);
    unsetenv("FERRY_ETCD_INFLIGHT");
}

static void test_max_waits(void **state)
{
    coord_config_t c;
    char *flag[] = {"ferry-coordinator", "--max-waits", "2", NULL};
    char *none[] = {"ferry-coordinator", NULL};
    char *zero[] = {"ferry-coordinator", "--max-waits", "0", NULL};
    char *over[] = {"ferry-coordinator", "--max-waits", "1000001", NULL};
    char *top[] = {"ferry-coordinator", "--max-waits", "1000000", NULL};
    (void)state;

    setenv("FERRY_MAX_WAITS", "7", 1);
    assert_int_equal(parse(&c, 3, flag), 0);
    assert_int_equal(c.max_waits, 2); /* the flag wins */
    assert_int_equal(parse(&c, 1, none), 0);
    assert_int_equal(c.max_waits, 7);
    setenv("FERRY_MAX_WAITS", "0", 1);
    assert_int_equal(parse(&c, 1, none), -1);
    unsetenv("FERRY_MAX_WAITS");
    assert_int_equal(parse(&c, 3, zero), -1);
    assert_int_equal(parse(&c, 3, over), -1);
    assert_int_equal(parse(&c, 3, top), 0);
    assert_int_equal(c.max_waits, 1000000);
}

static void test_request_memory(void **state)
{
    coord_config_t c;
    char *flag[] = {"ferry-coordinator", "--request-memory-mib", "64", NULL};
    char *none[] = {"ferry-coordinator", NULL};
    char *under[] = {"ferry-coordinator", "--request-memory-mib", "3", NULL};
    char *over[] = {"ferry-coordinator", "--request-memory-mib", "1048577", NULL};
    char *low[] = {"ferry-coordinator", "--request-memory-mib", "4", NULL};
    (void)state;

    assert_int_equal(parse(&c, 1, none), 0);
    assert_int_equal(c.request_memory_mib, 1024);
    setenv("FERRY_REQUEST_MEMORY_MIB", "7", 1);
    assert_int_equal(parse(&c, 3, flag), 0);
    assert_int_equal(c.request_memory_mib, 64); /* the flag wins */
    assert_int_equal(parse(&c, 1, none), 0);
    assert_int_equal(c.request_memory_mib, 7);
    setenv("FERRY_REQUEST_MEMORY_MIB", "2", 1); /* a Register would not fit */
    assert_int_equal(parse(&c, 1, none), -1);
    unsetenv("FERRY_REQUEST_MEMORY_MIB");
    assert_int_equal(parse(&c, 3, under), -1);
    assert_int_equal(parse(&c, 3, over), -1);
    assert_int_equal(parse(&c, 3, low), 0);
    assert_int_equal(c.request_memory_mib, 4);
}

static void test_max_watches(void **state)
{
    coord_config_t c;
    char *flag[] = {"ferry-coordinator", "--max-watches", "2", NULL};
    char *none[] = {"ferry-coordinator", NULL};
    char *zero[] = {"ferry-coordinator", "--max-watches", "0", NULL};
    char *over[] = {"ferry-coordinator", "--max-watches", "1000001", NULL};
    char *top[] = {"ferry-coordinator", "--max-watches", "1000000", NULL};
    (void)state;

    setenv("FERRY_MAX_WATCHES", "7", 1);
    assert_int_equal(parse(&c, 3, flag), 0);
    assert_int_equal(c.max_watches, 2); /* the flag wins */
    assert_int_equal(parse(&c, 1, none), 0);
    assert_int_equal(c.max_watches, 7);
    setenv("FERRY_MAX_WATCHES", "0", 1);
    assert_int_equal(parse(&c, 1, none), -1);
    unsetenv("FERRY_MAX_WATCHES");
    assert_int_equal(parse(&c, 3, zero), -1);
    assert_int_equal(parse(&c, 3, over), -1);
    assert_int_equal(parse(&c, 3, top), 0);
    assert_int_equal(c.max_watches, 1000000);
}

/* The per-peer shares: an eighth of their bound, at least 16 (all of a
 * smaller bound), unless a flag or variable says (0: none); the flag wins. */
static void test_per_peer_shares(void **state)
{
    coord_config_t c;
    char *none[] = {"ferry-coordinator", NULL};
    char *hundred[] = {"ferry-coordinator", "--max-watches", "100", "--max-waits", "200", NULL};
    char *two[] = {"ferry-coordinator", "--max-watches", "2", "--max-waits", "15", NULL};
    char *flags[] = {
        "ferry-coordinator", "--max-watches-per-peer", "0", "--max-waits-per-peer", "5", NULL};
    char *over[] = {"ferry-coordinator", "--max-waits-per-peer", "1000001", NULL};
    char *reads[] = {"ferry-coordinator", "--etcd-inflight", "8", "--etcd-queue", "8", NULL};
    char *no_reads[] = {"ferry-coordinator", "--etcd-reads-per-peer", "0", NULL};
    (void)state;

    assert_int_equal(parse(&c, 1, none), 0);
    assert_int_equal(c.max_watches_per_peer, 1250);
    assert_int_equal(c.max_waits_per_peer, 1250);
    assert_int_equal(c.etcd_reads_per_peer, (64 + 1024) / 8);
    assert_int_equal(parse(&c, 5, reads), 0);
    assert_int_equal(c.etcd_reads_per_peer, 16); /* all of a bound of 16 */
    assert_int_equal(parse(&c, 3, no_reads), 0);
    assert_int_equal(c.etcd_reads_per_peer, 0);
    setenv("FERRY_ETCD_READS_PER_PEER", "3", 1);
    assert_int_equal(parse(&c, 1, none), 0);
    assert_int_equal(c.etcd_reads_per_peer, 3);
    assert_int_equal(parse(&c, 3, no_reads), 0); /* the flag wins */
    assert_int_equal(c.etcd_reads_per_peer, 0);
    unsetenv("FERRY_ETCD_READS_PER_PEER");
    /* The writes' share (and the renewals'): the reads' rule. */
    char *writes[] = {"ferry-coordinator", "--etcd-writes-per-peer", "7", NULL};
    char *no_writes[] = {"ferry-coordinator", "--etcd-writes-per-peer", "0", NULL};
    assert_int_equal(parse(&c, 1, none), 0);
    assert_int_equal(c.etcd_writes_per_peer, (64 + 1024) / 8);
    assert_int_equal(parse(&c, 5, reads), 0);
    assert_int_equal(c.etcd_writes_per_peer, 16);
    assert_int_equal(parse(&c, 3, writes), 0);
    assert_int_equal(c.etcd_writes_per_peer, 7);
    assert_int_equal(c.etcd_reads_per_peer, (64 + 1024) / 8);
    setenv("FERRY_ETCD_WRITES_PER_PEER", "3", 1);
    assert_int_equal(parse(&c, 1, none), 0);
    assert_int_equal(c.etcd_writes_per_peer, 3);
    assert_int_equal(parse(&c, 3, no_writes), 0); /* the flag wins */
    assert_int_equal(c.etcd_writes_per_peer, 0);
    unsetenv("FERRY_ETCD_WRITES_PER_PEER");
    /* The stored bytes' share: 128 MiB, the flag, else the variable. */
    char *stored[] = {"ferry-coordinator", "--stored-mib-per-peer", "2", NULL};
    assert_int_equal(parse(&c, 1, none), 0);
    assert_int_equal(c.stored_mib_per_peer, 128);
    setenv("FERRY_STORED_MIB_PER_PEER", "0", 1);
    assert_int_equal(parse(&c, 1, none), 0);
    assert_int_equal(c.stored_mib_per_peer, 0);
    assert_int_equal(parse(&c, 3, stored), 0); /* the flag wins */
    assert_int_equal(c.stored_mib_per_peer, 2);
    unsetenv("FERRY_STORED_MIB_PER_PEER");
    assert_int_equal(parse(&c, 5, hundred), 0);
    assert_int_equal(c.max_watches_per_peer, 16);
    assert_int_equal(c.max_waits_per_peer, 25);
    assert_int_equal(parse(&c, 5, two), 0);
    assert_int_equal(c.max_watches_per_peer, 2);
    assert_int_equal(c.max_waits_per_peer, 15);
    setenv("FERRY_MAX_WATCHES_PER_PEER", "9", 1);
    setenv("FERRY_MAX_WAITS_PER_PEER", "7", 1);
    assert_int_equal(parse(&c, 5, flags), 0);
    assert_int_equal(c.max_watches_per_peer, 0); /* the flag wins; 0: no share */
    assert_int_equal(c.max_waits_per_peer, 5);
    assert_int_equal(parse(&c, 1, none), 0);
    assert_int_equal(c.max_watches_per_peer, 9);
    assert_int_equal(c.max_waits_per_peer, 7);
    unsetenv("FERRY_MAX_WATCHES_PER_PEER");
    unsetenv("FERRY_MAX_WAITS_PER_PEER");
    assert_int_equal(parse(&c, 3, over), -1);
}

/* How long a connection may take to finish its handshake (review-s30 L3:
 * a fixed 10 s). */
static void test_handshake_timeout(void **state)
{
    coord_config_t c;
    char *none[] = {"ferry-coordinator", NULL};
    char *two[] = {"ferry-coordinator", "--handshake-timeout-ms", "2000", NULL};
    char *short_[] = {"ferry-coordinator", "--handshake-timeout-ms", "999", NULL};
    (void)state;

    assert_int_equal(parse(&c, 1, none), 0);
    assert_int_equal(c.handshake_timeout_ms, 10000);
    setenv("FERRY_HANDSHAKE_TIMEOUT_MS", "3000", 1);
    assert_int_equal(parse(&c, 1, none), 0);
    assert_int_equal(c.handshake_timeout_ms, 3000);
    assert_int_equal(parse(&c, 3, two), 0); /* the flag wins */
    assert_int_equal(c.handshake_timeout_ms, 2000);
    unsetenv("FERRY_HANDSHAKE_TIMEOUT_MS");
    assert_int_equal(parse(&c, 3, short_), -1);
}

static void test_register_batch(void **state)
{
    coord_config_t c;
    char *one[] = {"ferry-coordinator", "--register-batch", "1", NULL};
    char *most[] = {"ferry-coordinator", "--register-batch", "128", NULL};
    char *none[] = {"ferry-coordinator", NULL};
    char *zero[] = {"ferry-coordinator", "--register-batch", "0", NULL};
    char *over[] = {"ferry-coordinator", "--register-batch", "129", NULL};
    (void)state;

    assert_int_equal(parse(&c, 3, one), 0);
    assert_int_equal(c.register_batch, 1);
    assert_int_equal(parse(&c, 3, most), 0);
    assert_int_equal(c.register_batch, 128);
    setenv("FERRY_REGISTER_BATCH", "8", 1);
    assert_int_equal(parse(&c, 1, none), 0);
    assert_int_equal(c.register_batch, 8);
    assert_int_equal(parse(&c, 3, one), 0); /* the flag wins */
    assert_int_equal(c.register_batch, 1);
    setenv("FERRY_REGISTER_BATCH", "200", 1);
    assert_int_equal(parse(&c, 1, none), -1);
    unsetenv("FERRY_REGISTER_BATCH");
    assert_int_equal(parse(&c, 3, zero), -1);
    assert_int_equal(parse(&c, 3, over), -1);
}

static void test_etcd_load_page(void **state)
{
    coord_config_t c;
    char *one[] = {"ferry-coordinator", "--etcd-load-page", "1", NULL};
    char *none[] = {"ferry-coordinator", NULL};
    char *zero[] = {"ferry-coordinator", "--etcd-load-page", "0", NULL};
    char *huge[] = {"ferry-coordinator", "--etcd-load-page", "100001", NULL};
    (void)state;

    assert_int_equal(parse(&c, 3, one), 0);
    assert_int_equal(c.etcd_load_page, 1);
    setenv("FERRY_ETCD_LOAD_PAGE", "250", 1);
    assert_int_equal(parse(&c, 1, none), 0);
    assert_int_equal(c.etcd_load_page, 250);
    assert_int_equal(parse(&c, 3, one), 0); /* the flag wins */
    assert_int_equal(c.etcd_load_page, 1);
    unsetenv("FERRY_ETCD_LOAD_PAGE");
    assert_int_equal(parse(&c, 3, zero), -1);
    assert_int_equal(parse(&c, 3, huge), -1);
}

static void test_flag_beats_variable_and_zero_is_a_value(void **state)
{
    coord_config_t c;
    char *argv[] = {"ferry-coordinator", "--threads", "3", "--grace-ms", "0", NULL};
    (void)state;

    setenv("FERRY_THREADS", "7", 1);
    setenv("FERRY_TTL", "42", 1);
    assert_int_equal(parse(&c, 5, argv), 0);
    assert_int_equal(c.threads, 3);
    assert_int_equal(c.ttl_s, 42);
    assert_int_equal(c.grace_ms, 0);
    unsetenv("FERRY_THREADS");
    unsetenv("FERRY_TTL");
}

static void test_refusals(void **state)
{
    coord_config_t c;
    char *bad_ttl[] = {"ferry-coordinator", "--ttl", "0", NULL};
    char *bad_prefix[] = {"ferry-coordinator", "--prefix", "/ferry", NULL};
    char *half_tls[] = {"ferry-coordinator", "--tls-cert", "c.pem", NULL};
    char *stray[] = {"ferry-coordinator", "extra", NULL};
    char *tiny_queue[] = {"ferry-coordinator", "--watch-queue-kib", "1", NULL};
    char *signed_ttl[] = {"ferry-coordinator", "--ttl", "+5", NULL};
    char *spaced_ttl[] = {"ferry-coordinator", "--ttl", " 5", NULL};
    (void)state;

    assert_int_equal(parse(&c, 3, bad_ttl), -1);
    assert_int_equal(parse(&c, 3, bad_prefix), -1);
    assert_int_equal(parse(&c, 3, half_tls), -1);
    assert_int_equal(parse(&c, 2, stray), -1);
    assert_int_equal(parse(&c, 3, tiny_queue), -1);
    assert_int_equal(parse(&c, 3, signed_ttl), -1); /* digits only, as written */
    assert_int_equal(parse(&c, 3, spaced_ttl), -1);
    setenv("FERRY_GRACE_MS", "soon", 1);
    char *plain[] = {"ferry-coordinator", NULL};
    assert_int_equal(parse(&c, 1, plain), -1);
    unsetenv("FERRY_GRACE_MS");
}

/* FERRY_TLS_CA="" once meant "unset" and turned client-certificate checks
 * off; an empty certificate and key turned TLS off. Each TLS file, from a
 * flag or its variable, set but empty is refused. */
static void test_tls_file_set_but_empty_is_refused(void **state)
{
    coord_config_t c;
    char *tls[] = {"ferry-coordinator", "--tls-cert", "c.pem", "--tls-key", "k.pem", NULL};
    char *none[] = {"ferry-coordinator", NULL};
    char *empty_ca_flag[] = {"ferry-coordinator", "--tls-cert", "c.pem", "--tls-key", "k.pem",
                             "--tls-ca",          "",           NULL};
    static const char *vars[] = {"FERRY_TLS_CERT", "FERRY_TLS_KEY",   "FERRY_TLS_CA",
                                 "FERRY_ETCD_CA",  "FERRY_ETCD_CERT", "FERRY_ETCD_KEY"};
    (void)state;

    setenv("FERRY_ETCD", "https://127.0.0.1:2379", 1); /* the etcd ones need an etcd */
    /* All six set from the environment, then each in turn empty. */
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        setenv(vars[i], "f.pem", 1);
    }
    assert_int_equal(parse(&c, 1, none), 0);
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        setenv(vars[i], "", 1);
        assert_int_equal(parse(&c, 1, none), -1);
        setenv(vars[i], "f.pem", 1);
    }
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        unsetenv(vars[i]);
    }
    /* A flag still wins over its variable, an empty one included. */
    setenv("FERRY_TLS_CERT", "", 1);
    assert_int_equal(parse(&c, 5, tls), 0);
    assert_string_equal(c.tls_cert, "c.pem");
    unsetenv("FERRY_TLS_CERT");
    assert_int_equal(parse(&c, 7, empty_ca_flag), -1);
    setenv("FERRY_TLS_CERT", "", 1);
    setenv("FERRY_TLS_KEY", "", 1);
    assert_int_equal(parse(&c, 1, none), -1);
    unsetenv("FERRY_TLS_CERT");
    unsetenv("FERRY_TLS_KEY");
    /* Set and not empty, or unset: as before. */
    setenv("FERRY_TLS_CA", "ca.pem", 1);
    assert_int_equal(parse(&c, 5, tls), 0);
    assert_string_equal(c.tls_ca, "ca.pem");
    unsetenv("FERRY_TLS_CA");
    assert_int_equal(parse(&c, 5, tls), 0);
    assert_null(c.tls_ca);
    assert_int_equal(parse(&c, 1, none), 0);
    assert_null(c.tls_cert);
    assert_null(c.etcd_ca);
    unsetenv("FERRY_ETCD");
}

/* An empty variable was taken as unset: FERRY_ETCD="" started a private
 * etcd (a replica of its own, SERVING to nobody else's workers),
 * FERRY_PREFIX="" put a tenant in /ferry/, FERRY_METRICS_LISTEN="" turned
 * metrics off, FERRY_REQUEST_MEMORY_MIB="" meant 1 GiB. Each setting's
 * variable set but empty is refused; its flag still wins over it. */
static void test_set_but_empty_is_refused(void **state)
{
    coord_config_t c;
    char *none[] = {"ferry-coordinator", NULL};
    static const struct {
        const char *env;
        const char *flag;
        const char *value;
    } settings[] = {
        {"FERRY_ETCD", "--etcd", "http://127.0.0.1:2379"},
        {"FERRY_PREFIX", "--prefix", "/t/"},
        {"FERRY_LISTEN", "--listen", "127.0.0.1:0"},
        {"FERRY_METRICS_LISTEN", "--metrics-listen", "127.0.0.1:0"},
        {"FERRY_STATE_DIR", "--state-dir", "/tmp/s"},
        {"FERRY_NAME", "--name", "r1"},
        {"FERRY_LOG_LEVEL", "--log-level", "warn"},
        {"FERRY_ETCD_KV_API", "--etcd-kv-api", "gateway"},
        {"FERRY_TTL", "--ttl", "5"},
        {"FERRY_REQUEST_MEMORY_MIB", "--request-memory-mib", "64"},
        {"FERRY_MAX_WAITS", "--max-waits", "100"},
        {"FERRY_GRACE_MS", "--grace-ms", "0"},
    };
    (void)state;

    for (size_t i = 0; i < sizeof(settings) / sizeof(settings[0]); i++) {
        char *flag[] = {"ferry-coordinator", (char *)settings[i].flag, (char *)settings[i].value,
                        NULL};

        setenv(settings[i].env, "", 1);
        assert_int_equal(parse(&c, 1, none), -1);
        assert_int_equal(parse(&c, 3, flag), 0); /* the flag wins */
        unsetenv(settings[i].env);
    }
    /* FERRY_ETCD_USER empty needs an etcd to be refused for itself. */
    setenv("FERRY_ETCD", "http://127.0.0.1:2379", 1);
    setenv("FERRY_ETCD_USER", "", 1);
    assert_int_equal(parse(&c, 1, none), -1);
    unsetenv("FERRY_ETCD_USER");
    assert_int_equal(parse(&c, 1, none), 0);
    unsetenv("FERRY_ETCD");
    /* FERRY_ETCD_BIN, read where the private etcd starts: empty, its exec
     * of "" failed after the start; refused as the others now. */
    setenv("FERRY_ETCD_BIN", "", 1);
    assert_int_equal(parse(&c, 1, none), -1);
    setenv("FERRY_ETCD_BIN", "/usr/bin/etcd", 1);
    assert_int_equal(parse(&c, 1, none), 0);
    unsetenv("FERRY_ETCD_BIN");
    /* The password is read only with a user (and refused empty then). */
    setenv("FERRY_ETCD_PASSWORD", "", 1);
    assert_int_equal(parse(&c, 1, none), 0);
    unsetenv("FERRY_ETCD_PASSWORD");
    /* Unset: the defaults. */
    assert_int_equal(parse(&c, 1, none), 0);
    assert_null(c.etcd);
    assert_null(c.metrics_listen);
    assert_string_equal(c.prefix, "/ferry/");
}

/* FERRY_RPC_KEEPALIVE_MS and FERRY_TLS_REFRESH_S (the coordinator's
 * channel to etcd) out of range were warned of and replaced by the
 * default, where every other setting is refused: refused now, by name. */
static void test_rpc_variables_out_of_range_are_refused(void **state)
{
    coord_config_t c;
    char *none[] = {"ferry-coordinator", NULL};
    static const struct {
        const char *env;
        const char *bad[6];
    } cases[] = {
        /* A space or a sign before the digits, which strtol took. */
        {"FERRY_RPC_KEEPALIVE_MS", {"999", "2000001", "soon", "", " 20000", "+20000"}},
        {"FERRY_TLS_REFRESH_S", {"0", "86401", "-1", "", "+60", "60 "}},
    };
    (void)state;

    assert_int_equal(parse(&c, 1, none), 0);
    assert_int_equal(c.rpc_keepalive_ms, 0); /* rpc's default */
    assert_int_equal(c.tls_refresh_s, 0);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        for (size_t j = 0; j < 6; j++) {
            print_message("%s='%s'\n", cases[i].env, cases[i].bad[j]);
            setenv(cases[i].env, cases[i].bad[j], 1);
            assert_int_equal(parse(&c, 1, none), -1);
        }
        unsetenv(cases[i].env);
    }
    setenv("FERRY_RPC_KEEPALIVE_MS", "1000", 1);
    setenv("FERRY_TLS_REFRESH_S", "86400", 1);
    assert_int_equal(parse(&c, 1, none), 0);
    assert_int_equal(c.rpc_keepalive_ms, 1000);
    assert_int_equal(c.tls_refresh_s, 86400);
    setenv("FERRY_RPC_KEEPALIVE_MS", "2000000", 1);
    setenv("FERRY_TLS_REFRESH_S", "1", 1);
    assert_int_equal(parse(&c, 1, none), 0);
    assert_int_equal(c.rpc_keepalive_ms, 2000000);
    assert_int_equal(c.tls_refresh_s, 1);
    unsetenv("FERRY_RPC_KEEPALIVE_MS");
    unsetenv("FERRY_TLS_REFRESH_S");
}

/* The etcd credentials are for the etcd --etcd names: without one the
 * private etcd starts with credentials of its own, and these were silently
 * ignored. Refused, by flag or variable; with --etcd, taken. */
static void test_etcd_credentials_without_etcd_are_refused(void **state)
{
    coord_config_t c;
    char *user[] = {"ferry-coordinator", "--etcd-user", "ferry", NULL};
    char *ca[] = {"ferry-coordinator", "--etcd-ca", "ca.pem", NULL};
    char *with[] = {"ferry-coordinator",
                    "--etcd",
                    "https://127.0.0.1:2379",
                    "--etcd-user",
                    "ferry",
                    "--etcd-ca",
                    "ca.pem",
                    NULL};
    char *none[] = {"ferry-coordinator", NULL};
    static const char *vars[] = {"FERRY_ETCD_USER", "FERRY_ETCD_CA", "FERRY_ETCD_CERT",
                                 "FERRY_ETCD_KEY"};
    (void)state;

    assert_int_equal(parse(&c, 3, user), -1);
    assert_int_equal(parse(&c, 3, ca), -1);
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++) {
        setenv(vars[i], "x", 1);
        assert_int_equal(parse(&c, 1, none), -1);
        unsetenv(vars[i]);
    }
    assert_int_equal(parse(&c, 1, none), 0);
    /* A user needs its password (FERRY_ETCD_PASSWORD): without it every
     * authentication failed, the replica never ready. */
    assert_int_equal(parse(&c, 7, with), -1);
    setenv("FERRY_ETCD_PASSWORD", "pw", 1);
    assert_int_equal(parse(&c, 7, with), 0);
    unsetenv("FERRY_ETCD_PASSWORD");
    assert_string_equal(c.etcd_user, "ferry");
    assert_string_equal(c.etcd_ca, "ca.pem");
}

/* The etcd TLS files are used for https:// endpoints only: with an http://
 * (or unix://) one in --etcd the coordinator talked to it in plaintext, the
 * files ignored without a word. Refused, by flag or variable; an https://
 * list takes them. */
static void test_etcd_tls_files_need_https(void **state)
{
    coord_config_t c;
    char *http_ca[] = {"ferry-coordinator", "--etcd", "http://127.0.0.1:2379",
                       "--etcd-ca",         "ca.pem", NULL};
    char *mixed_cert[] = {"ferry-coordinator",
                          "--etcd",
                          "https://10.0.0.1:2379,http://10.0.0.2:2379",
                          "--etcd-cert",
                          "c.pem",
                          "--etcd-key",
                          "c.key",
                          NULL};
    char *unix_ca[] = {"ferry-coordinator", "--etcd", "unix:///run/etcd.sock",
                       "--etcd-ca",         "ca.pem", NULL};
    char *https_all[] = {"ferry-coordinator",
                         "--etcd",
                         "https://10.0.0.1:2379,https://10.0.0.2:2379",
                         "--etcd-cert",
                         "c.pem",
                         "--etcd-key",
                         "c.key",
                         "--etcd-ca",
                         "ca.pem",
                         NULL};
    char *http_only[] = {"ferry-coordinator", "--etcd", "http://127.0.0.1:2379", NULL};
    /* Spaces and tabs around an entry, and a trailing '/', as the etcd
     * client reads the list: all https://, so taken (it was refused, exit
     * 2, "would be plaintext", a crash loop on upgrade). */
    char *https_spaced[] = {
        "ferry-coordinator", "--etcd", " https://10.0.0.1:2379/, \thttps://10.0.0.2:2379 ,",
        "--etcd-ca",         "ca.pem", NULL};
    char *http_spaced[] = {"ferry-coordinator", "--etcd", "https://10.0.0.1:2379,  http://10.0.0.2",
                           "--etcd-ca",         "ca.pem", NULL};
    (void)state;

    assert_int_equal(parse(&c, 5, http_ca), -1);
    assert_int_equal(parse(&c, 7, mixed_cert), -1);
    assert_int_equal(parse(&c, 5, unix_ca), -1);
    setenv("FERRY_ETCD_KEY", "c.key", 1);
    assert_int_equal(parse(&c, 3, http_only), -1);
    unsetenv("FERRY_ETCD_KEY");
    assert_int_equal(parse(&c, 3, http_only), 0);
    assert_int_equal(parse(&c, 9, https_all), 0);
    assert_string_equal(c.etcd_cert, "c.pem");
    assert_int_equal(parse(&c, 5, https_spaced), 0);
    assert_int_equal(parse(&c, 5, http_spaced), -1);
}

/* What the metrics server would refuse to bind (after a private etcd had
 * started, exit 1) is refused here, exit 2. */
static void test_metrics_listen(void **state)
{
    coord_config_t c;
    char *none[] = {"ferry-coordinator", NULL};
    const char *good[] = {"127.0.0.1:9400", "0.0.0.0:0", "[::1]:9400", "[::]:65535"};
    const char *bad[] = {":9400",       "localhost:9400", "::1:9400",        "[::1]9400",
                         "[::1:9400",   "127.0.0.1:",     "127.0.0.1:65536", "127.0.0.1:-1",
                         "127.0.0.1:x", "127.0.0.1:+80",  "nohost",          "[]:9400"};
    (void)state;

    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        char *argv[] = {"ferry-coordinator", "--metrics-listen", (char *)good[i], NULL};
        assert_int_equal(parse(&c, 3, argv), 0);
        assert_string_equal(c.metrics_listen, good[i]);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *argv[] = {"ferry-coordinator", "--metrics-listen", (char *)bad[i], NULL};
        print_message("--metrics-listen %s\n", bad[i]);
        assert_int_equal(parse(&c, 3, argv), -1);
        setenv("FERRY_METRICS_LISTEN", bad[i], 1);
        assert_int_equal(parse(&c, 1, none), -1);
        unsetenv("FERRY_METRICS_LISTEN");
    }
    assert_int_equal(parse(&c, 1, none), 0);
    assert_null(c.metrics_listen);
}

/* "off" turns the metrics off, from the flag or the variable: with empty
 * refused, an overlay could turn off the metrics its base sets only with a
 * patch that removes the variable (review-s33b L3). Flags win. */
static void test_metrics_listen_off(void **state)
{
    coord_config_t c;
    char *none[] = {"ferry-coordinator", NULL};
    char *off[] = {"ferry-coordinator", "--metrics-listen", "off", NULL};
    char *on[] = {"ferry-coordinator", "--metrics-listen", "127.0.0.1:9400", NULL};
    char *upper[] = {"ferry-coordinator", "--metrics-listen", "OFF", NULL};
    (void)state;

    setenv("FERRY_METRICS_LISTEN", "0.0.0.0:9400", 1);
    assert_int_equal(parse(&c, 3, off), 0);
    assert_null(c.metrics_listen);
    setenv("FERRY_METRICS_LISTEN", "off", 1);
    assert_int_equal(parse(&c, 1, none), 0);
    assert_null(c.metrics_listen);
    assert_int_equal(parse(&c, 3, on), 0);
    assert_string_equal(c.metrics_listen, "127.0.0.1:9400");
    unsetenv("FERRY_METRICS_LISTEN");
    assert_int_equal(parse(&c, 3, upper), -1);
}

/* A prefix of len bytes: "/" then 'p's then "/". */
static char *prefix_of(size_t len)
{
    char *p = malloc(len + 1);
    assert_non_null(p);
    memset(p, 'p', len);
    p[0] = '/';
    p[len - 1] = '/';
    p[len] = '\0';
    return p;
}

static void test_limits(void **state)
{
    coord_config_t c;
    char *longest = prefix_of(COORD_PREFIX_MAX);
    char *too_long = prefix_of(COORD_PREFIX_MAX + 1);
    char *at_limits[] = {"ferry-coordinator", "--prefix", longest,      "--ttl",  "3600",
                         "--threads",         "256",      "--grace-ms", "600000", "--listen",
                         "127.0.0.1:65535",   NULL};
    char *low[] = {"ferry-coordinator", "--ttl",   "1", "--threads", "1",
                   "--listen",          "[::1]:0", NULL};
    char *long_prefix[] = {"ferry-coordinator", "--prefix", too_long, NULL};
    char *bad[][3] = {
        {"--ttl", "3601"},
        {"--ttl", "-1"},
        {"--threads", "0"},
        {"--threads", "257"},
        {"--grace-ms", "-1"},
        {"--grace-ms", "600001"},
        {"--ttl", "99999999999999999999"},
        {"--listen", "127.0.0.1:65536"},
        {"--listen", "127.0.0.1:-1"},
        {"--listen", "127.0.0.1:x"},
    };
    (void)state;

    assert_int_equal(parse(&c, 11, at_limits), 0);
    assert_int_equal(strlen(c.prefix), COORD_PREFIX_MAX);
    assert_int_equal(c.ttl_s, 3600);
    assert_int_equal(c.threads, 256);
    assert_int_equal(c.grace_ms, 600000);
    assert_int_equal(parse(&c, 7, low), 0);
    assert_int_equal(parse(&c, 3, long_prefix), -1);
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *argv[] = {"ferry-coordinator", bad[i][0], bad[i][1], NULL};
        assert_int_equal(parse(&c, 3, argv), -1);
    }
    free(longest);
    free(too_long);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_max_waits),
        cmocka_unit_test(test_per_peer_shares),
        cmocka_unit_test(test_request_memory),
        cmocka_unit_test(test_max_watches),
        cmocka_unit_test(test_etcd_kv_api),
        cmocka_unit_test(test_flag_beats_variable_and_zero_is_a_value),
        cmocka_unit_test(test_etcd_queue_flags),
        cmocka_unit_test(test_etcd_load_page),
        cmocka_unit_test(test_handshake_timeout),
        cmocka_unit_test(test_register_batch),
        cmocka_unit_test(test_refusals),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_tls_file_set_but_empty_is_refused),
        cmocka_unit_test(test_set_but_empty_is_refused),
        cmocka_unit_test(test_rpc_variables_out_of_range_are_refused),
        cmocka_unit_test(test_etcd_credentials_without_etcd_are_refused),
        cmocka_unit_test(test_etcd_tls_files_need_https),
        cmocka_unit_test(test_metrics_listen),
        cmocka_unit_test(test_metrics_listen_off),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
