/*
 * config.h: ferry-coordinator's settings, from flags and FERRY_* environment
 * variables (a flag wins over its variable).
 */
#ifndef FERRY_COORD_CONFIG_H
#define FERRY_COORD_CONFIG_H

#include <stdbool.h>

#include "common/log.h"

typedef struct {
    const char *listen;     /* --listen, FERRY_LISTEN; default 127.0.0.1:7400 */
    const char *etcd;       /* --etcd, FERRY_ETCD; NULL: private etcd */
    const char *prefix;     /* --prefix, FERRY_PREFIX; default /ferry/ */
    int ttl_s;              /* --ttl, FERRY_TTL; default 10 */
    int threads;            /* --threads, FERRY_THREADS; default 16 */
    int etcd_inflight;      /* --etcd-inflight, FERRY_ETCD_INFLIGHT; default 64 */
    int etcd_queue;         /* --etcd-queue, FERRY_ETCD_QUEUE; default 1024 */
    int etcd_load_page;     /* --etcd-load-page, FERRY_ETCD_LOAD_PAGE; default 5000 */
    int register_batch;     /* --register-batch, FERRY_REGISTER_BATCH; default 64 */
    const char *name;       /* --name, FERRY_NAME; default host name */
    const char *state_dir;  /* --state-dir, FERRY_STATE_DIR */
    const char *port_file;  /* --port-file: write the bound port there */
    int grace_ms;           /* --grace-ms, FERRY_GRACE_MS; default 5000 */
    int watch_queue_kib;    /* --watch-queue-kib, FERRY_WATCH_QUEUE_KIB; default 4096 */
    int watch_memory_mib;   /* --watch-memory-mib, FERRY_WATCH_MEMORY_MIB; default 256 */
    int max_waits;          /* --max-waits, FERRY_MAX_WAITS; default 10000 */
    int request_memory_mib; /* --request-memory-mib, FERRY_REQUEST_MEMORY_MIB; 1024 */
    int max_watches;        /* --max-watches, FERRY_MAX_WATCHES; default 10000 */
    /* --max-watches-per-peer, --max-waits-per-peer and their FERRY_*; 0: none;
     * default an eighth of --max-watches, --max-waits (at least 16, or all
     * of a smaller bound) */
    int max_watches_per_peer;
    int max_waits_per_peer;
    /* --etcd-reads-per-peer, FERRY_ETCD_READS_PER_PEER; 0: none; default an
     * eighth of --etcd-inflight + --etcd-queue (at least 16, or all) */
    int etcd_reads_per_peer;
    /* --etcd-writes-per-peer, FERRY_ETCD_WRITES_PER_PEER; 0: none; default
     * as --etcd-reads-per-peer's: of the writes, and of the renewals, each */
    int etcd_writes_per_peer;
    /* --stored-mib-per-peer, FERRY_STORED_MIB_PER_PEER: MiB of records in
     * etcd one client host's Registers may own; 0: none; default 128 (an
     * eighth of the manifests' 1 GiB etcd quota) */
    int stored_mib_per_peer;
    const char *log_level;      /* --log-level, FERRY_LOG_LEVEL; default info */
    const char *tls_cert;       /* --tls-cert, FERRY_TLS_CERT */
    const char *tls_key;        /* --tls-key, FERRY_TLS_KEY */
    const char *tls_ca;         /* --tls-ca, FERRY_TLS_CA: require client certs signed by it */
    const char *etcd_ca;        /* --etcd-ca, FERRY_ETCD_CA */
    const char *etcd_cert;      /* --etcd-cert, FERRY_ETCD_CERT */
    const char *etcd_key;       /* --etcd-key, FERRY_ETCD_KEY */
    const char *etcd_user;      /* --etcd-user, FERRY_ETCD_USER */
    const char *etcd_kv_api;    /* --etcd-kv-api, FERRY_ETCD_KV_API: grpc (default) | gateway */
    bool etcd_kv_gateway;       /* etcd_kv_api is "gateway" */
    const char *metrics_listen; /* --metrics-listen, FERRY_METRICS_LISTEN; NULL: no metrics */
    const char *etcd_password;  /* FERRY_ETCD_PASSWORD only: never on a command line */

    /* --max-connection-age-ms (FERRY_MAX_CONNECTION_AGE_MS; default 0: none)
     * and --max-connection-age-grace-ms (..._GRACE_MS; default 30000) */
    int max_connection_age_ms;
    int max_connection_age_grace_ms;
    int handshake_timeout_ms; /* --handshake-timeout-ms, FERRY_HANDSHAKE_TIMEOUT_MS; 10000 */
    /* FERRY_RPC_KEEPALIVE_MS and FERRY_TLS_REFRESH_S (no flags), for the
     * gRPC channel to etcd; 0: unset, rpc's default */
    int rpc_keepalive_ms;
    int tls_refresh_s;
    ferry_log_level_t log_level_value; /* the level log_level names */
} coord_config_t;

/* 0: run; 1: exit 0 (--help was printed); -1: exit 2 (bad usage, said).
 * A flag or FERRY_* variable set but empty is refused, not taken as unset
 * (FERRY_ETCD="" would start a private etcd); FERRY_ETCD_PASSWORD is
 * refused so only with --etcd-user. */
int coord_config_parse(int argc, char **argv, coord_config_t *config);

/* 0, or -1 (exit 2, said) when a certificate and key pair given
 * (--tls-cert/--tls-key, --etcd-cert/--etcd-key; an --etcd-cert alone
 * whose file holds the key too, which then becomes --etcd-key as well)
 * cannot be read or do not match: every handshake would fail, the replica running on, NOT_SERVING,
 * with the cause in a TLS library's words or none (a refused client
 * certificate reads as "failed to connect"). Reads the files: after
 * coord_config_parse, at start. */
int coord_config_check_tls_pairs(coord_config_t *config);

struct addrinfo;

/* The one rule for a --metrics-listen address: a numeric IPv4 host or a
 * bracketed IPv6 one ("[::1]"), ':', a port 0..65535; no names, nothing is
 * looked up. NULL when it is one, with *ai_p its socket address (the
 * caller freeaddrinfo()s it); otherwise what is wrong, for a message, with
 * *ai_p NULL. coord_config_parse checks with it, metrics.c binds with it. */
const char *coord_config_metrics_addr(const char *listen, struct addrinfo **ai_p);

#endif /* FERRY_COORD_CONFIG_H */
