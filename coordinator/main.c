/*
 * main.c: ferry-coordinator. Parses the configuration, starts a private etcd
 * when none is given, serves until SIGTERM or SIGINT, then stops taking
 * calls, ends waits and streams with UNAVAILABLE, drains in-flight calls for
 * the grace period and exits 0. It exits 1 when it cannot start: etcd,
 * the server, or the port file (whoever asked for one waits on it); and,
 * after draining, when its private etcd exits or its gRPC listener stops
 * accepting.
 *
 * Signals are blocked in every thread and taken with sigwait on the main
 * thread, so no handler runs inside gRPC or libcurl.
 *
 * It takes as many file descriptors as the hard limit allows: every client
 * connection is one, and gRPC core 1.51 stops accepting for good after an
 * accept fails with EMFILE, which the usual soft limit of 1024 invites.
 *
 * Every TRIM_INTERVAL_S the main thread gives freed heap memory back to
 * the system (give_back_free_memory): glibc keeps what its ~160 threads'
 * arenas freed, so one burst of large Registers left a replica's RSS at
 * its peak (hundreds of MB) for good, against a container's limit.
 *
 * Every COORD_LISTENER_LOOK_MS it looks whether the gRPC listener still
 * accepts (listener.h): one that stopped (gRPC core 1.51 gives up after
 * an accept fails) leaves the replica serving its open connections only,
 * each lost for good at its --max-connection-age-ms, while health over
 * them says SERVING. It then drains and exits 1, for a supervisor to
 * restart it, as when its private etcd is gone.
 */
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "config.h"
#include "etcd/etcd.h"
#include "etcd_child.h"
#include "exec.h"
#include "listener.h"
#include "metrics.h"
#include "registry.h"
#include "rpc/rpc.h"
#include "service.h"

/* libferry's call timeout when its caller sets none (ferry/coordinator.h,
 * timeout_ms): a connection's grace shorter than it can cut a call that a
 * client still waits for. */
#define LIBFERRY_CALL_TIMEOUT_MS 10000

typedef struct {
    coord_config_t config;
    coord_etcd_child_t child;
    etcd_client_t *etcd;
    coord_exec_t *exec;      /* etcd writes: stopped after the server, before the registry */
    coord_exec_t *read_exec; /* reads that need etcd: likewise */
    rpc_server_t *server;
    coord_service_t *service;
    coord_registry_t *registry;
    coord_metrics_t *metrics; /* NULL without --metrics-listen */
    rpc_observer_t rpc_observer;
    etcd_observer_t etcd_observer;
    int port;
} coordinator_t;

/* The registry's callbacks: its events go to the service, counted first
 * when metrics are on. */
static void on_registry_event(void *arg, coord_event_type_t type, const Ferry__V1__Operation *op,
                              int64_t revision)
{
    coordinator_t *c = arg;

    if (c->metrics != NULL) {
        coord_metrics_count_event(c->metrics, type == COORD_EVENT_DELETE, op->state,
                                  op->error_code);
    }
    coord_service_on_event(c->service, type, op, revision);
}

static void on_registry_events_done(void *arg)
{
    coordinator_t *c = arg;

    coord_service_on_events_done(c->service);
}

static void on_registry_reload(void *arg, int64_t revision)
{
    coordinator_t *c = arg;

    coord_service_on_reload(c->service, revision);
}

static void on_registry_synced(void *arg)
{
    coordinator_t *c = arg;

    coord_service_on_synced(c->service);
}

static void on_registry_health(void *arg, bool healthy)
{
    coordinator_t *c = arg;

    coord_service_on_health(c->service, healthy);
}

static void sample_metrics(void *arg, coord_metrics_sample_t *out)
{
    coordinator_t *c = arg;

    if (c->registry != NULL) {
        out->healthy = coord_registry_healthy(c->registry);
        coord_registry_view_stats(c->registry, &out->view_size, &out->view_live,
                                  out->view_by_state);
        coord_registry_claim_ends(c->registry, &out->claim_ends_on_view, &out->claim_ends_checked,
                                  &out->claim_ends_waiting, &out->claim_ends_pending);
        out->stored_peers = coord_registry_stored_hosts(c->registry);
        out->stored_peer_refusals = coord_registry_stored_refusals(c->registry);
    }
    if (c->service != NULL) {
        out->watch_events_sent = coord_service_watch_events_sent(c->service);
        out->parked_waits = coord_service_parked_waits(c->service);
        out->watch_queued_bytes = coord_service_watch_queued_bytes(c->service);
        coord_service_watch_behind(c->service, &out->watch_behind_1s, &out->watch_behind_10s);
        coord_service_watch_memory_ends(c->service, &out->watch_memory_evicted,
                                        &out->watch_memory_ended, &out->watch_memory_refused);
        out->watch_peers = coord_service_watch_peers(c->service);
        out->wait_peers = coord_service_wait_peers(c->service);
        out->watch_peer_refusals = coord_service_watch_peer_refusals(c->service);
        out->wait_peer_refusals = coord_service_wait_peer_refusals(c->service);
        coord_service_reads_held(c->service, &out->read_peers, &out->etcd_reads_held);
        out->read_peer_refusals = coord_service_read_peer_refusals(c->service);
        out->write_peers = coord_service_write_peers(c->service, false);
        out->write_peer_refusals = coord_service_write_peer_refusals(c->service, false);
        out->renewal_peers = coord_service_write_peers(c->service, true);
        out->renewal_peer_refusals = coord_service_write_peer_refusals(c->service, true);
        coord_service_refusals_t refused;
        coord_service_limits_t limits;
        coord_service_limit_refusals(c->service, &refused);
        coord_service_limits(c->service, &limits);
        out->refused_max_waits = refused.max_waits;
        out->refused_max_watches = refused.max_watches;
        out->refused_watch_queue = refused.watch_queue;
        out->refused_etcd_queue = refused.etcd_queue;
        out->limit_max_waits = limits.max_waits;
        out->limit_max_watches = limits.max_watches;
        out->limit_watch_queue_bytes = limits.watch_queue_bytes;
        out->limit_watch_memory_bytes = limits.watch_memory_bytes;
    }
    if (c->server != NULL) {
        rpc_server_stats_t stats;
        rpc_server_stats(c->server, &stats);
        out->refused_request_memory = stats.refused_over_budget;
        out->refused_request_size = stats.refused_oversized;
        out->request_bytes_held = stats.held_request_bytes;
        out->reply_bytes_held = stats.held_reply_bytes;
        out->limit_request_memory_bytes = stats.max_held_request_bytes;
    }
}

/* Metrics first: the etcd client and the server take its hooks. */
static ferry_status_t open_metrics(coordinator_t *c)
{
    coord_metrics_params_t params = {
        .listen = c->config.metrics_listen,
        .version = FERRY_VERSION,
        .name = c->config.name,
        .sample = sample_metrics,
    };
    ferry_status_t status;

    if (c->config.metrics_listen == NULL) {
        return FERRY_OK;
    }
    status = coord_metrics_create(&params, &c->metrics);
    if (status != FERRY_OK) {
        ferry_error("metrics: %s", ferry_status_string(status));
        return status;
    }
    c->rpc_observer = coord_metrics_rpc_observer(c->metrics);
    c->etcd_observer = coord_metrics_etcd_observer(c->metrics);
    return FERRY_OK;
}

static ferry_status_t open_etcd(coordinator_t *c)
{
    etcd_params_t params = {
        .endpoints = c->config.etcd,
        .ca_file = c->config.etcd_ca,
        .cert_file = c->config.etcd_cert,
        .key_file = c->config.etcd_key,
        .username = c->config.etcd_user,
        .password = c->config.etcd_password,
        .timeout_ms = 5000,
        .observer = c->metrics != NULL ? &c->etcd_observer : NULL,
        .kv_gateway = c->config.etcd_kv_gateway,
        .keepalive_ms = c->config.rpc_keepalive_ms, /* checked by config.c, not warned of */
        .tls_refresh_s = c->config.tls_refresh_s,
        .check_version = c->config.etcd != NULL, /* a private etcd is one member */
        .health_key = c->config.prefix,          /* every role Ferry needs reads it */
    };
    ferry_status_t status;

    if (params.endpoints == NULL) {
        ferry_info("no --etcd given: starting a private etcd under %s", c->config.state_dir);
        status = coord_etcd_child_start(c->config.state_dir, &c->child);
        if (status != FERRY_OK) {
            ferry_error("could not start a private etcd (no --etcd or FERRY_ETCD given): %s; "
                        "the line above says why",
                        ferry_status_string(status));
            return status;
        }
        params.endpoints = c->child.endpoint;
        params.username = COORD_ETCD_CHILD_USER;
        params.password = c->child.password;
    }
    status = etcd_client_create(&params, &c->etcd);
    if (status != FERRY_OK) {
        ferry_error("etcd client for %s: %s", params.endpoints, ferry_status_string(status));
    }
    return status;
}

/* A test seam's count from the environment: 0 when unset, or (with a
 * warning) when not a number from 0 to 1000. */
static int test_count(const char *name)
{
    const char *text = getenv(name);
    char *end = NULL;
    long n = text != NULL ? strtol(text, &end, 10) : 0;

    if (text == NULL) {
        return 0;
    }
    if (end == text || *end != '\0' || n < 0 || n > 1000) {
        ferry_warn("%s='%.32s' is not a count from 0 to 1000: ignored", name, text);
        return 0;
    }
    return (int)n;
}

static ferry_status_t open_server(coordinator_t *c)
{
    rpc_tls_params_t tls = {
        .cert_file = c->config.tls_cert,
        .key_file = c->config.tls_key,
        .ca_file = c->config.tls_ca,
        .require_client_cert = c->config.tls_ca != NULL,
    };
    rpc_server_params_t params = {
        .listen_addr = c->config.listen,
        /* A Register's metadata is at most 1 MiB (md_rules.h): nothing
         * larger is worth decoding. Every other request is small, and its
         * method accepts less (service.c, SERVICE_REQUEST_MAX). */
        .max_message_bytes = 2 << 20,
        /* What the calls held for minutes (queued Registers, parked waits,
         * streams) may hold together; each method's own bound is below it. */
        .max_held_request_bytes = (size_t)c->config.request_memory_mib << 20,
        .max_held_request_name = "--request-memory-mib",
        .n_threads = c->config.threads,
        .max_connection_age_ms = c->config.max_connection_age_ms,
        .max_connection_age_grace_ms = c->config.max_connection_age_grace_ms,
        .handshake_timeout_ms = c->config.handshake_timeout_ms,
        .tls = c->config.tls_cert != NULL ? &tls : NULL,
        .observer = c->metrics != NULL ? &c->rpc_observer : NULL,
    };
    coord_exec_params_t eparams = {
        .n_workers = c->config.etcd_inflight,
        .max_queued = c->config.etcd_queue,
    };
    coord_service_params_t sparams = {
        .name = c->config.name,
        .watch_queue_bytes = (size_t)c->config.watch_queue_kib * 1024,
        .watch_memory_bytes = (size_t)c->config.watch_memory_mib << 20,
        .max_waits = (size_t)c->config.max_waits,
        .max_watches = (size_t)c->config.max_watches,
        .max_watches_per_peer = (size_t)c->config.max_watches_per_peer,
        .max_waits_per_peer = (size_t)c->config.max_waits_per_peer,
        .max_reads_per_peer = (size_t)c->config.etcd_reads_per_peer,
        .max_writes_per_peer = (size_t)c->config.etcd_writes_per_peer,
    };
    coord_registry_params_t rparams = {
        .prefix = c->config.prefix,
        .default_ttl_s = c->config.ttl_s,
        .load_page = c->config.etcd_load_page,
        .register_batch = c->config.register_batch,
        .max_stored_per_peer = (size_t)c->config.stored_mib_per_peer << 20,
        .on_event = on_registry_event,
        .on_events_done = on_registry_events_done,
        .on_reload = on_registry_reload,
        .on_synced = on_registry_synced,
        .on_health = on_registry_health,
        .test_write_through_gate = getenv("FERRY_TEST_WRITE_THROUGH_GATE"),
        .test_load_fails = test_count("FERRY_TEST_LOAD_FAILS"),
    };
    ferry_status_t status = coord_exec_create(&eparams, &c->exec);

    if (status == FERRY_OK) {
        status = coord_exec_create(&eparams, &c->read_exec);
    }
    if (status != FERRY_OK) {
        return status;
    }
    status = rpc_server_create(&params, &c->server);
    if (status != FERRY_OK) {
        return status;
    }
    sparams.exec = c->exec;
    sparams.read_exec = c->read_exec;
    status = coord_service_create(&sparams, c->server, &c->service);
    if (status != FERRY_OK) {
        return status;
    }
    rparams.etcd = c->etcd;
    rparams.exec = c->exec;
    rparams.arg = c;
    status = coord_registry_create(&rparams, &c->registry);
    if (status != FERRY_OK) {
        return status;
    }
    coord_service_attach(c->service, c->registry);
    if (c->metrics != NULL) {
        coord_metrics_set_sample_arg(c->metrics, c);
        status = coord_metrics_start(c->metrics, NULL);
        if (status != FERRY_OK) {
            return status;
        }
    }
    status = rpc_server_start(c->server, &c->port);
    if (status != FERRY_OK) {
        ferry_error("cannot serve on %s: %s", c->config.listen, ferry_status_string(status));
        return status;
    }
    coord_service_on_health(c->service, coord_registry_healthy(c->registry));
    /* "liveness": SERVING for as long as gRPC answers, whatever etcd does,
     * for a liveness probe. A TCP probe passes on a server that no longer
     * accepts (gRPC core stops accepting for good after an EMFILE, and the
     * kernel still completes handshakes into the backlog), and "" follows
     * etcd, whose outage a restart does not cure. */
    rpc_server_set_serving(c->server, "liveness", true);
    return FERRY_OK;
}

/* The soft RLIMIT_NOFILE up to the hard one (the file header says why). A
 * failure is logged and the coordinator runs with what it has. */
/* What a launcher may have left. A closed 0, 1 or 2 would be the next
 * file opened (the state directory's lock, say), which the private etcd's
 * stdout and stderr then replace: they get /dev/null. An ignored SIGTERM,
 * SIGINT or SIGCHLD (a script's `cmd &` ignores SIGINT) is discarded
 * before sigwait can take it, and an ignored SIGCHLD has the kernel reap
 * the private etcd unseen: back to their defaults. */
static void sane_process_state(void)
{
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) == -1 && errno == EBADF) {
            int null = open("/dev/null", O_RDWR);
            if (null >= 0 && null != fd) {
                close(null); /* a lower one was free after all */
            }
        }
    }
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGCHLD, SIG_DFL);
}

static void raise_fd_limit(void)
{
    struct rlimit rl;
    unsigned long long soft;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) {
        ferry_warn("getrlimit(RLIMIT_NOFILE): %s", strerror(errno));
        return;
    }
    soft = (unsigned long long)rl.rlim_cur;
    if (rl.rlim_cur == rl.rlim_max) {
        ferry_debug("open files: at most %llu (the hard limit)", soft);
        return;
    }
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        ferry_warn("open files: cannot raise the soft limit %llu to the hard limit %llu: %s", soft,
                   (unsigned long long)rl.rlim_max, strerror(errno));
        return;
    }
    ferry_info("open files: soft limit raised from %llu to the hard limit %llu", soft,
               (unsigned long long)rl.rlim_max);
}

/* Says what --max-connection-age-ms does, and warns of a grace that cuts
 * calls libferry does not repeat. */
static void log_connection_age(const coord_config_t *config)
{
    if (config->max_connection_age_ms == 0) {
        return;
    }
    ferry_info("a client connection gets a GOAWAY after %d ms (+-10%%) and is closed %d ms later",
               config->max_connection_age_ms, config->max_connection_age_grace_ms);
    if (config->max_connection_age_grace_ms < LIBFERRY_CALL_TIMEOUT_MS) {
        ferry_warn("--max-connection-age-grace-ms %d is below libferry's call timeout (%d ms): "
                   "a call still running then is cut, and a writer whose Claim is cut fails "
                   "(a Claim is never sent twice)",
                   config->max_connection_age_grace_ms, LIBFERRY_CALL_TIMEOUT_MS);
    }
}

/* Warns of a bound on every Watch stream's unsent bytes that a few
 * streams' own fill: streams behind end each other well before any is at
 * its own bound, and a stream's revisions of its own (a prefix) may not
 * fit at all. */
static void log_watch_memory(const coord_config_t *config)
{
    if ((long long)config->watch_memory_mib * 1024 < 4LL * config->watch_queue_kib) {
        ferry_warn("--watch-memory-mib %d holds fewer than four streams' --watch-queue-kib (%d "
                   "KiB): streams behind will end each other before any is at its own bound",
                   config->watch_memory_mib, config->watch_queue_kib);
    }
}

/* What a parked Lookup or Claim holds at most: its request, bounded by
 * service.c's SERVICE_REQUEST_MAX. */
#define PARKED_REQUEST_MAX_KIB 16

/* Warns of a bound on the requests held that parked waits alone can fill:
 * at --max-waits of them, the Register they wait for is refused
 * RESOURCE_EXHAUSTED (README, --request-memory-mib). */
static void log_request_memory(const coord_config_t *config)
{
    long long parked_kib = (long long)config->max_waits * PARKED_REQUEST_MAX_KIB;

    if ((long long)config->request_memory_mib * 1024 <= parked_kib) {
        ferry_warn("--request-memory-mib %d is not above --max-waits (%d) x %d KiB (%lld MiB): "
                   "parked Lookups and Claims alone can fill it and refuse the Register they "
                   "wait for; raise it or lower --max-waits",
                   config->request_memory_mib, config->max_waits, PARKED_REQUEST_MAX_KIB,
                   (parked_kib + 1023) / 1024);
    }
}

/* Said once at startup, so a setting that turned TLS off does not go
 * unnoticed (config.c refuses an empty one). */
static void log_tls_mode(const coord_config_t *config)
{
    if (config->tls_cert == NULL) {
        ferry_info("tls: plaintext (no --tls-cert/--tls-key)");
    } else if (config->tls_ca == NULL) {
        ferry_info("tls: TLS with %s, client certificates not required (no --tls-ca)",
                   config->tls_cert);
    } else {
        ferry_info("tls: mutual TLS with %s, client certificates signed by %s required",
                   config->tls_cert, config->tls_ca);
    }
}

/* Write then rename, so a reader never sees a half-written file. Every
 * step is checked: a full disk shows at fclose, a directory in the way at
 * rename. */
static ferry_status_t write_port_file(const char *path, int port)
{
    char tmp[4096];
    FILE *f;
    int failed;

    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= sizeof(tmp)) {
        ferry_error("port file %s: path too long", path);
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    f = fopen(tmp, "w");
    if (f == NULL) {
        ferry_error("cannot write port file %s: %s", tmp, strerror(errno));
        return FERRY_ERR_IO;
    }
    failed = fprintf(f, "%d\n", port) < 0;
    if (fclose(f) != 0 || failed) {
        ferry_error("cannot write port file %s: %s", tmp, strerror(errno));
        goto err_unlink;
    }
    if (rename(tmp, path) != 0) {
        ferry_error("cannot rename port file %s to %s: %s", tmp, path, strerror(errno));
        goto err_unlink;
    }
    return FERRY_OK;

err_unlink:
    unlink(tmp);
    return FERRY_ERR_IO;
}

static void close_all(coordinator_t *c)
{
    if (c->service != NULL) {
        coord_service_stop(c->service);
    }
    if (c->server != NULL) {
        rpc_server_set_serving(c->server, "", false);
        rpc_server_shutdown(c->server, c->config.grace_ms);
    }
    coord_metrics_stop(c->metrics); /* its HTTP thread samples the registry */
    /* Calls still queued for etcd end UNAVAILABLE; running ones finish.
     * Jobs use the registry, the service and their calls: stop them first. */
    if (c->exec != NULL) {
        coord_exec_stop(c->exec);
    }
    if (c->read_exec != NULL) {
        coord_exec_stop(c->read_exec);
    }
    coord_registry_destroy(c->registry);
    coord_service_destroy(c->service);
    rpc_server_destroy(c->server);
    coord_exec_destroy(c->exec);
    coord_exec_destroy(c->read_exec);
    etcd_client_destroy(c->etcd);
    coord_metrics_destroy(c->metrics); /* after everything whose hooks count into it */
    coord_etcd_child_stop(&c->child);
}

#define TRIM_INTERVAL_S  10
#define TRIM_ABOVE_BYTES ((size_t)32 << 20) /* free in the arenas */

/* The process's resident bytes (/proc/self/statm); 0 if unreadable. */
static size_t resident_bytes(void)
{
    unsigned long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");

    if (f != NULL) {
        if (fscanf(f, "%lu %lu", &size, &resident) != 2) {
            resident = 0;
        }
        fclose(f);
    }
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

/* Hands the heap's free pages back (malloc_trim) when the arenas hold more
 * than TRIM_ABOVE_BYTES free and, since the last trim, either the free
 * bytes grew by as much (memory freed: records that went) or the process
 * did (free memory touched again and freed, which leaves the free bytes
 * where they were): a few milliseconds, at most every TRIM_INTERVAL_S,
 * where a burst of 1 MiB Registers had left 600-750 MB resident after every
 * record was gone, and thousands of parked waits whose clients died 100 MB.
 * The free bytes alone do not tell: a trim gives the pages back but keeps
 * the chunks free, so they stayed over the mark and every interval trimmed
 * again for nothing; resident growth alone missed records freed after a
 * trim that ran while they were held. */
static void give_back_free_memory(void)
{
    static size_t rss_after, free_after; /* as the last trim left them */
    struct mallinfo2 info = mallinfo2();
    size_t before;

    if (info.fordblks < free_after) {
        free_after = info.fordblks; /* used again: what is freed next counts */
    }
    if (info.fordblks <= TRIM_ABOVE_BYTES) {
        return;
    }
    before = resident_bytes();
    if (info.fordblks <= free_after + TRIM_ABOVE_BYTES && before != 0 &&
        before <= rss_after + TRIM_ABOVE_BYTES) {
        return;
    }
    malloc_trim(0);
    rss_after = resident_bytes();
    free_after = mallinfo2().fordblks;
    if (rss_after < before) {
        ferry_debug("memory: gave back %zu MiB of free heap pages (%zu MiB free in the arenas)",
                    (before - rss_after) >> 20, info.fordblks >> 20);
    }
}

/* What ended wait_for_signal when no signal did (signal numbers are
 * positive). */
enum {
    WAIT_ETCD_GONE = 0,      /* the private etcd exited */
    WAIT_NOT_ACCEPTING = -1, /* the gRPC listener no longer accepts */
};

/* Waits for SIGTERM, SIGINT or SIGHUP (returns it; a closed terminal or a
 * supervisor's reload signal drains as SIGTERM does, where SIGHUP's
 * default killed the process mid-call; one started ignoring it, as nohup
 * does, keeps ignoring it), for the private etcd to exit
 * (WAIT_ETCD_GONE): a coordinator without its etcd can only answer
 * UNAVAILABLE, so it stops, and its supervisor starts both again; or for
 * the listener to stop accepting (WAIT_NOT_ACCEPTING), which a restart
 * cures. Between signals it looks at the listener every
 * COORD_LISTENER_LOOK_MS, and every TRIM_INTERVAL_S gives free memory
 * back. */
static int wait_for_signal(coordinator_t *c)
{
    const struct timespec look = {.tv_sec = COORD_LISTENER_LOOK_MS / 1000,
                                  .tv_nsec = (COORD_LISTENER_LOOK_MS % 1000) * 1000000L};
    int64_t trim_at = ferry__clock_ms(CLOCK_MONOTONIC) + TRIM_INTERVAL_S * 1000;
    coord_listener_t listener;
    sigset_t set;
    int sig;

    /* gRPC gives a unix socket's listener port 1: nothing to look at. */
    bool tcp = strncmp(c->config.listen, "unix", 4) != 0;
    if (coord_listener_init(&listener, tcp ? c->port : 0) != FERRY_OK && tcp) {
        ferry_warn("cannot find the gRPC listener of port %d in /proc/self/net/tcp: a listener "
                   "that stops accepting will not be noticed",
                   c->port);
    }
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGCHLD);
    for (;;) {
        sig = sigtimedwait(&set, NULL, &look);
        if (sig < 0) { /* EAGAIN: the interval passed (EINTR: soon again) */
            if (coord_listener_stuck(&listener)) {
                coord_listener_close(&listener);
                return WAIT_NOT_ACCEPTING;
            }
            if (ferry__clock_ms(CLOCK_MONOTONIC) >= trim_at) {
                give_back_free_memory();
                trim_at = ferry__clock_ms(CLOCK_MONOTONIC) + TRIM_INTERVAL_S * 1000;
            }
            continue;
        }
        if (sig != SIGCHLD) {
            coord_listener_close(&listener);
            return sig;
        }
        if (coord_etcd_child_exited(&c->child)) {
            coord_listener_close(&listener);
            return WAIT_ETCD_GONE;
        }
    }
}

int main(int argc, char **argv)
{
    coordinator_t c;
    sigset_t set;
    bool bad_format;
    int rc;

    memset(&c, 0, sizeof(c));
    sane_process_state();
    /* The level: with the other settings, below. */
    bad_format = ferry_log_format_from_env() != 0;
    rc = coord_config_parse(argc, argv, &c.config);
    if (rc != 0) {
        return rc > 0 ? 0 : 2;
    }
    if (coord_config_check_tls_pairs(&c.config) != 0) {
        return 2;
    }
    if (bad_format) {
        fprintf(stderr, "ferry-coordinator: FERRY_LOG_FORMAT must be json or text, not '%s'\n",
                getenv("FERRY_LOG_FORMAT"));
        return 2;
    }
    ferry_log_set_level(c.config.log_level_value);
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGPIPE);
    sigaddset(&set, SIGCHLD); /* the private etcd's end, taken by wait_for_signal */
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    raise_fd_limit();
    log_tls_mode(&c.config);
    log_connection_age(&c.config);
    log_watch_memory(&c.config);
    log_request_memory(&c.config);

    if (open_metrics(&c) != FERRY_OK || open_etcd(&c) != FERRY_OK || open_server(&c) != FERRY_OK) {
        close_all(&c);
        return 1;
    }
    ferry_info("ferry-coordinator '%s' serving on %s (port %d), prefix %s, ttl %ds, %d threads",
               c.config.name, c.config.listen, c.port, c.config.prefix, c.config.ttl_s,
               c.config.threads);
    if (c.config.port_file != NULL && write_port_file(c.config.port_file, c.port) != FERRY_OK) {
        close_all(&c);
        return 1;
    }
    rc = wait_for_signal(&c);
    if (rc == WAIT_ETCD_GONE) {
        ferry_error("stopping: the private etcd is gone (exit 1, for a supervisor to restart)");
    } else if (rc == WAIT_NOT_ACCEPTING) {
        ferry_error("stopping: the gRPC listener on port %d no longer accepts connections "
                    "(a connection has waited in its accept queue for %d s; gRPC core gives up "
                    "after an accept fails, as with too many open files: see its 'Failed accept4' "
                    "line); draining the open ones, then exit 1, for a supervisor to restart",
                    c.port, COORD_LISTENER_LOOK_MS * (COORD_LISTENER_LOOKS - 1) / 1000);
    } else {
        ferry_info("signal %d: draining in-flight calls (up to %d ms)", rc, c.config.grace_ms);
    }
    close_all(&c);
    ferry_info("stopped");
    return rc == WAIT_ETCD_GONE || rc == WAIT_NOT_ACCEPTING ? 1 : 0;
}
