/*
 * config.c: flags and environment of ferry-coordinator (config.h).
 */
#include "config.h"

#include "etcd/etcd.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netdb.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "registry.h"
#include "rpc/rpc.h"
#include "validate.h"

/* The registry's own defaults and bounds, as text for env_number (one
 * owner: a bound lowered there cannot leave a value accepted here that the
 * registry would not use). */
#define CONFIG_STR_(x) #x
#define CONFIG_STR(x)  CONFIG_STR_(x)

#define UNSET INT_MIN

#define CONNECTION_AGE_MIN_MS 1000     /* when not 0 */
#define CONNECTION_AGE_MAX_MS 86400000 /* a day */

static const char usage[] =
    "usage: ferry-coordinator [options]\n"
    "\n"
    "Serves ferry.v1.Coordinator and grpc.health.v1.Health over gRPC, with all\n"
    "state in etcd. A flag that names a FERRY_* variable also reads from it\n"
    "(the flag wins); a flag or variable set but empty is refused (exit 2), not\n"
    "taken as unset.\n"
    "\n"
    "  --listen ADDR       address to serve on (FERRY_LISTEN; 127.0.0.1:7400; port 0..65535,\n"
    "                      0 picks one)\n"
    "  --etcd URL[,URL]    etcd endpoints (FERRY_ETCD): http://HOST:PORT,\n"
    "                      https://HOST:PORT or unix:///PATH; none: start a private\n"
    "                      etcd, on unix sockets in the state directory\n"
    "  --state-dir DIR     private etcd's data and sockets, one coordinator's at a\n"
    "                      time (FERRY_STATE_DIR; $XDG_STATE_HOME/ferry, else\n"
    "                      ~/.local/state/ferry, else /tmp/ferry-UID)\n"
    "  --prefix P          key prefix in etcd, ending in '/', at most 256 bytes\n"
    "                      (FERRY_PREFIX; /ferry/)\n"
    "  --ttl S             default lease TTL in seconds, 1..3600 (FERRY_TTL; 10)\n"
    "  --threads N         completion-queue threads, 1..256 (FERRY_THREADS; 16)\n"
    "  --etcd-inflight N   calls that wait on etcd writes at once, 1..1024\n"
    "                      (FERRY_ETCD_INFLIGHT; 64)\n"
    "  --etcd-queue N      calls queued beyond those; more are refused with\n"
    "                      RESOURCE_EXHAUSTED, 0..1000000 (FERRY_ETCD_QUEUE; 1024);\n"
    "                      KeepAlives queue apart, as many, at least --etcd-inflight\n"
    "  --etcd-reads-per-peer N  of the reads that need etcd, running and queued\n"
    "                      (--etcd-inflight + --etcd-queue), what one client host may\n"
    "                      hold while they fill half their room, 0..1000000, 0: no\n"
    "                      share (FERRY_ETCD_READS_PER_PEER; an eighth of those, at\n"
    "                      least 16)\n"
    "  --etcd-writes-per-peer N  of the writes that wait on etcd (Register, Claim,\n"
    "                      Complete, Cancel, Release, Revoke), running and queued, what\n"
    "                      one client host may hold while they fill half their room,\n"
    "                      and as many KeepAlives, 0..1000000, 0: no share\n"
    "                      (FERRY_ETCD_WRITES_PER_PEER; an eighth of --etcd-inflight +\n"
    "                      --etcd-queue, at least 16)\n"
    "  --stored-mib-per-peer N  MiB of records in etcd that the Registers of one\n"
    "                      client host may own, counted over every replica's records;\n"
    "                      a Register past it is refused with RESOURCE_EXHAUSTED,\n"
    "                      0..1048576, 0: no share (FERRY_STORED_MIB_PER_PEER; 128)\n"
    "  --etcd-load-page N  keys per etcd read when the view loads the records (at\n"
    "                      start, after compaction), 1..100000 (FERRY_ETCD_LOAD_PAGE;\n"
    "                      5000)\n"
    "  --register-batch N  Registers that may share one etcd transaction when they\n"
    "                      wait together, 1..128; 1: each its own\n"
    "                      (FERRY_REGISTER_BATCH; 64); a transaction holds at most\n"
    "                      128 compares, so at most 64 Registers on the caller's\n"
    "                      own lease without an access token (two compares each)\n"
    "  --name NAME         this replica's name in responses (FERRY_NAME; host name)\n"
    "  --grace-ms MS       drain time for in-flight calls on SIGTERM, 0..600000\n"
    "                      (FERRY_GRACE_MS; 5000); the exit takes a tail more:\n"
    "                      the calls' etcd work still running (5 s a request, but\n"
    "                      a call may make several in a row: bounded by the\n"
    "                      calls' own deadlines), then the step the maintenance\n"
    "                      thread began meanwhile (6 s); about 11 s when etcd\n"
    "                      answers at once or not at all\n"
    "  --handshake-timeout-ms MS  close a connection that has not finished its\n"
    "                      TLS and HTTP/2 handshake in this time, 1000..600000\n"
    "                      (FERRY_HANDSHAKE_TIMEOUT_MS; 10000)\n"
    "  --max-connection-age-ms MS  send a client's connection a GOAWAY once it\n"
    "                      is this old (+-10%), so that its new calls reconnect\n"
    "                      and a load balancer can spread clients over replicas\n"
    "                      added since, 0 or 1000..86400000\n"
    "                      (FERRY_MAX_CONNECTION_AGE_MS; 0: never)\n"
    "  --max-connection-age-grace-ms MS  then close it after this long; calls\n"
    "                      still on it fail UNAVAILABLE (libferry resumes watches\n"
    "                      and waits; a Claim cut so fails its writer: keep it\n"
    "                      above the clients' call timeout), 0..86400000\n"
    "                      (FERRY_MAX_CONNECTION_AGE_GRACE_MS; 30000)\n"
    "  --watch-queue-kib N unsent KiB a Watch stream may hold before it ends with\n"
    "                      RESOURCE_EXHAUSTED, 16..1048576 (FERRY_WATCH_QUEUE_KIB;\n"
    "                      4096)\n"
    "  --watch-memory-mib N  MiB of unsent changes all Watch streams may hold\n"
    "                      together; past it a stream further behind ends with\n"
    "                      RESOURCE_EXHAUSTED (streams alike share revisions up\n"
    "                      to twice it), 1..1048576\n"
    "                      (FERRY_WATCH_MEMORY_MIB; 256)\n"
    "  --max-waits N       Lookup/Claim calls parked (wait_ms) at once; more are\n"
    "                      refused with RESOURCE_EXHAUSTED, 1..1000000\n"
    "                      (FERRY_MAX_WAITS; 10000)\n"
    "  --max-watches N     Watch streams open at once; more are refused with\n"
    "                      RESOURCE_EXHAUSTED, 1..1000000 (FERRY_MAX_WATCHES; 10000)\n"
    "  --max-watches-per-peer N  of those, what one client host (its address,\n"
    "                      every connection and port of it) may hold, 0..1000000,\n"
    "                      0: no share (FERRY_MAX_WATCHES_PER_PEER; an eighth of\n"
    "                      --max-watches, at least 16)\n"
    "  --max-waits-per-peer N  of --max-waits, what one client host may hold,\n"
    "                      0..1000000, 0: no share (FERRY_MAX_WAITS_PER_PEER; an\n"
    "                      eighth of --max-waits, at least 16)\n"
    "  --request-memory-mib N  MiB of requests the calls in progress may hold\n"
    "                      together (a Register up to 4 MiB); more are refused with\n"
    "                      RESOURCE_EXHAUSTED, 4..1048576 (FERRY_REQUEST_MEMORY_MIB;\n"
    "                      1024)\n"
    "  --port-file PATH    write the bound port to PATH once serving\n"
    "  --metrics-listen A  serve Prometheus metrics on http://A/metrics\n"
    "                      (FERRY_METRICS_LISTEN; none: off; A is a numeric IPv4\n"
    "                      or [IPv6] host and a port 0..65535, or off: no metrics,\n"
    "                      as when unset)\n"
    "  --log-level L       off|error|warn|info|debug|trace (FERRY_LOG_LEVEL; info);\n"
    "                      FERRY_LOG_FORMAT=json: one JSON object per line\n"
    "  --tls-cert PEM      serve TLS with this certificate chain (FERRY_TLS_CERT)\n"
    "  --tls-key PEM       and this key (FERRY_TLS_KEY)\n"
    "  --tls-ca PEM        require client certificates signed by this CA (FERRY_TLS_CA)\n"
    "  --etcd-ca PEM       verify etcd with this CA (FERRY_ETCD_CA)\n"
    "  --etcd-cert PEM     client certificate for etcd (FERRY_ETCD_CERT)\n"
    "  --etcd-key PEM      its key (FERRY_ETCD_KEY)\n"
    "  --etcd-user USER    etcd user (FERRY_ETCD_USER); the password comes from\n"
    "                      FERRY_ETCD_PASSWORD\n"
    "  --etcd-kv-api API   grpc|gateway: key-value requests and watches over etcd's\n"
    "                      native gRPC API or its JSON gateway (FERRY_ETCD_KV_API;\n"
    "                      grpc); leases and auth always use the gateway\n"
    "  --help              this text\n"
    "\n"
    "Numbers without a flag (out of range: exit 2, naming it):\n"
    "  FERRY_RPC_KEEPALIVE_MS  ping etcd's gRPC channel this often while a call is\n"
    "                      open, 1000..2000000 (20000)\n"
    "  FERRY_TLS_REFRESH_S read the etcd TLS files again this often for that\n"
    "                      channel, 1..86400 (60)\n"
    "Other variables without a flag:\n"
    "  FERRY_ETCD_PASSWORD --etcd-user's password (read only with it, which\n"
    "                      refuses it unset or empty)\n"
    "  FERRY_ETCD_BIN      the private etcd's binary (etcd on PATH)\n";

enum {
    OPT_LISTEN = 256,
    OPT_ETCD,
    OPT_STATE_DIR,
    OPT_PREFIX,
    OPT_TTL,
    OPT_THREADS,
    OPT_ETCD_INFLIGHT,
    OPT_ETCD_LOAD_PAGE,
    OPT_REGISTER_BATCH,
    OPT_ETCD_QUEUE,
    OPT_NAME,
    OPT_GRACE,
    OPT_MAX_CONNECTION_AGE,
    OPT_MAX_CONNECTION_AGE_GRACE,
    OPT_HANDSHAKE_TIMEOUT,
    OPT_WATCH_QUEUE,
    OPT_WATCH_MEMORY,
    OPT_MAX_WAITS,
    OPT_REQUEST_MEMORY,
    OPT_MAX_WATCHES,
    OPT_MAX_WATCHES_PER_PEER,
    OPT_MAX_WAITS_PER_PEER,
    OPT_ETCD_READS_PER_PEER,
    OPT_ETCD_WRITES_PER_PEER,
    OPT_STORED_MIB_PER_PEER,
    OPT_PORT_FILE,
    OPT_LOG_LEVEL,
    OPT_TLS_CERT,
    OPT_TLS_KEY,
    OPT_TLS_CA,
    OPT_ETCD_CA,
    OPT_ETCD_CERT,
    OPT_ETCD_KEY,
    OPT_ETCD_USER,
    OPT_ETCD_KV_API,
    OPT_METRICS_LISTEN,
    OPT_HELP,
};

static const struct option options[] = {
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"etcd", required_argument, NULL, OPT_ETCD},
    {"state-dir", required_argument, NULL, OPT_STATE_DIR},
    {"prefix", required_argument, NULL, OPT_PREFIX},
    {"ttl", required_argument, NULL, OPT_TTL},
    {"threads", required_argument, NULL, OPT_THREADS},
    {"etcd-inflight", required_argument, NULL, OPT_ETCD_INFLIGHT},
    {"etcd-load-page", required_argument, NULL, OPT_ETCD_LOAD_PAGE},
    {"register-batch", required_argument, NULL, OPT_REGISTER_BATCH},
    {"etcd-queue", required_argument, NULL, OPT_ETCD_QUEUE},
    {"name", required_argument, NULL, OPT_NAME},
    {"grace-ms", required_argument, NULL, OPT_GRACE},
    {"max-connection-age-ms", required_argument, NULL, OPT_MAX_CONNECTION_AGE},
    {"max-connection-age-grace-ms", required_argument, NULL, OPT_MAX_CONNECTION_AGE_GRACE},
    {"handshake-timeout-ms", required_argument, NULL, OPT_HANDSHAKE_TIMEOUT},
    {"watch-queue-kib", required_argument, NULL, OPT_WATCH_QUEUE},
    {"watch-memory-mib", required_argument, NULL, OPT_WATCH_MEMORY},
    {"max-waits", required_argument, NULL, OPT_MAX_WAITS},
    {"request-memory-mib", required_argument, NULL, OPT_REQUEST_MEMORY},
    {"max-watches", required_argument, NULL, OPT_MAX_WATCHES},
    {"max-watches-per-peer", required_argument, NULL, OPT_MAX_WATCHES_PER_PEER},
    {"max-waits-per-peer", required_argument, NULL, OPT_MAX_WAITS_PER_PEER},
    {"etcd-reads-per-peer", required_argument, NULL, OPT_ETCD_READS_PER_PEER},
    {"etcd-writes-per-peer", required_argument, NULL, OPT_ETCD_WRITES_PER_PEER},
    {"stored-mib-per-peer", required_argument, NULL, OPT_STORED_MIB_PER_PEER},
    {"port-file", required_argument, NULL, OPT_PORT_FILE},
    {"metrics-listen", required_argument, NULL, OPT_METRICS_LISTEN},
    {"log-level", required_argument, NULL, OPT_LOG_LEVEL},
    {"tls-cert", required_argument, NULL, OPT_TLS_CERT},
    {"tls-key", required_argument, NULL, OPT_TLS_KEY},
    {"tls-ca", required_argument, NULL, OPT_TLS_CA},
    {"etcd-ca", required_argument, NULL, OPT_ETCD_CA},
    {"etcd-cert", required_argument, NULL, OPT_ETCD_CERT},
    {"etcd-key", required_argument, NULL, OPT_ETCD_KEY},
    {"etcd-user", required_argument, NULL, OPT_ETCD_USER},
    {"etcd-kv-api", required_argument, NULL, OPT_ETCD_KV_API},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

/* The settings given as text, from a flag or its variable. One of these
 * set but empty is refused (check_set_but_empty), never taken as unset:
 * FERRY_ETCD="" in a templated env file would start a private etcd, a
 * replica of its own that reports SERVING to nobody else's workers;
 * FERRY_PREFIX="" would put a tenant in the default prefix;
 * FERRY_METRICS_LISTEN="" would turn metrics off without a word;
 * FERRY_TLS_CA="" client-certificate checking, and an empty certificate
 * and key all of TLS. The numbers (env_number) and FERRY_RPC_KEEPALIVE_MS
 * and FERRY_TLS_REFRESH_S are refused so too, and FERRY_ETCD_BIN (check).
 * Not FERRY_ETCD_PASSWORD
 * (read only with --etcd-user, which refuses it empty) nor
 * FERRY_LOG_FORMAT (main.c; empty is text, as in every Ferry program). */
static const struct {
    const char *flag;
    const char *env;
    const char *what; /* what to name instead, for the message */
    size_t offset;    /* of the const char * in coord_config_t */
} text_settings[] = {
    {"--listen", "FERRY_LISTEN", "an address", offsetof(coord_config_t, listen)},
    {"--etcd", "FERRY_ETCD", "etcd's endpoints", offsetof(coord_config_t, etcd)},
    {"--state-dir", "FERRY_STATE_DIR", "a directory", offsetof(coord_config_t, state_dir)},
    {"--prefix", "FERRY_PREFIX", "a prefix", offsetof(coord_config_t, prefix)},
    {"--name", "FERRY_NAME", "the replica's name", offsetof(coord_config_t, name)},
    {"--log-level", "FERRY_LOG_LEVEL", "a level", offsetof(coord_config_t, log_level)},
    {"--etcd-user", "FERRY_ETCD_USER", "a user", offsetof(coord_config_t, etcd_user)},
    {"--etcd-kv-api", "FERRY_ETCD_KV_API", "grpc or gateway",
     offsetof(coord_config_t, etcd_kv_api)},
    {"--metrics-listen", "FERRY_METRICS_LISTEN", "an address",
     offsetof(coord_config_t, metrics_listen)},
    {"--tls-cert", "FERRY_TLS_CERT", "a PEM file", offsetof(coord_config_t, tls_cert)},
    {"--tls-key", "FERRY_TLS_KEY", "a PEM file", offsetof(coord_config_t, tls_key)},
    {"--tls-ca", "FERRY_TLS_CA", "a PEM file", offsetof(coord_config_t, tls_ca)},
    {"--etcd-ca", "FERRY_ETCD_CA", "a PEM file", offsetof(coord_config_t, etcd_ca)},
    {"--etcd-cert", "FERRY_ETCD_CERT", "a PEM file", offsetof(coord_config_t, etcd_cert)},
    {"--etcd-key", "FERRY_ETCD_KEY", "a PEM file", offsetof(coord_config_t, etcd_key)},
};

#define N_TEXT_SETTINGS (sizeof(text_settings) / sizeof(text_settings[0]))

static const char **text_setting(coord_config_t *c, size_t i)
{
    return (const char **)((char *)c + text_settings[i].offset);
}

/* Parses an int in [lo, hi] (lo >= 0), written in decimal digits only;
 * -1, said, when it is not one. strtol alone took a leading space or sign
 * (FERRY_RPC_KEEPALIVE_MS=" 20000", "+20000"), which the clients warn of. */
static int parse_int(const char *flag, const char *text, int lo, int hi)
{
    char *end;
    long v = strtol(text, &end, 10);
    if (*text == '\0' || text[strspn(text, "0123456789")] != '\0' || *end != '\0' || v < lo ||
        v > hi) {
        fprintf(stderr, "ferry-coordinator: %s must be an integer from %d to %d, not '%s'\n", flag,
                lo, hi, text);
        return -1;
    }
    return (int)v;
}

static const char *default_state_dir(void)
{
    static char buf[PATH_MAX];
    const char *xdg = getenv("XDG_STATE_HOME");
    const char *home = getenv("HOME");

    if (xdg != NULL && xdg[0] != '\0') {
        snprintf(buf, sizeof(buf), "%s/ferry", xdg);
    } else if (home != NULL && home[0] != '\0') {
        snprintf(buf, sizeof(buf), "%s/.local/state/ferry", home);
    } else {
        snprintf(buf, sizeof(buf), "/tmp/ferry-%d", (int)getuid());
    }
    return buf;
}

static const char *default_name(void)
{
    static char host[256];
    if (gethostname(host, sizeof(host) - 1) != 0) {
        snprintf(host, sizeof(host), "coordinator");
    }
    return host;
}

static void config_defaults(coord_config_t *c)
{
    memset(c, 0, sizeof(*c));
    c->ttl_s = UNSET;
    c->threads = UNSET;
    c->etcd_inflight = UNSET;
    c->etcd_load_page = UNSET;
    c->register_batch = UNSET;
    c->etcd_queue = UNSET;
    c->grace_ms = UNSET;
    c->max_connection_age_ms = UNSET;
    c->max_connection_age_grace_ms = UNSET;
    c->handshake_timeout_ms = UNSET;
    c->watch_queue_kib = UNSET;
    c->watch_memory_mib = UNSET;
    c->max_waits = UNSET;
    c->request_memory_mib = UNSET;
    c->max_watches = UNSET;
    c->max_watches_per_peer = UNSET;
    c->max_waits_per_peer = UNSET;
    c->etcd_reads_per_peer = UNSET;
    c->etcd_writes_per_peer = UNSET;
    c->stored_mib_per_peer = UNSET;
    for (size_t i = 0; i < N_TEXT_SETTINGS; i++) {
        *text_setting(c, i) = getenv(text_settings[i].env); /* "" kept: refused */
    }
    /* The defaults, for a variable that is unset (not one set but empty). */
    c->listen = c->listen != NULL ? c->listen : "127.0.0.1:7400";
    c->state_dir = c->state_dir != NULL ? c->state_dir : default_state_dir();
    c->prefix = c->prefix != NULL ? c->prefix : "/ferry/";
    c->name = c->name != NULL ? c->name : default_name();
    c->etcd_kv_api = c->etcd_kv_api != NULL ? c->etcd_kv_api : "grpc";
    c->etcd_password = getenv("FERRY_ETCD_PASSWORD"); /* check() refuses it empty with a user */
}

static int set_option(coord_config_t *c, int opt, const char *arg)
{
    switch (opt) {
    case OPT_LISTEN:
        c->listen = arg;
        break;
    case OPT_ETCD:
        c->etcd = arg;
        break;
    case OPT_STATE_DIR:
        c->state_dir = arg;
        break;
    case OPT_PREFIX:
        c->prefix = arg;
        break;
    case OPT_TTL:
        return (c->ttl_s = parse_int("--ttl", arg, 1, COORD_TTL_MAX)) < 0 ? -1 : 0;
    case OPT_THREADS:
        return (c->threads = parse_int("--threads", arg, 1, 256)) < 0 ? -1 : 0;
    case OPT_ETCD_INFLIGHT:
        return (c->etcd_inflight = parse_int("--etcd-inflight", arg, 1, 1024)) < 0 ? -1 : 0;
    case OPT_ETCD_LOAD_PAGE:
        return (c->etcd_load_page = parse_int("--etcd-load-page", arg, 1, 100000)) < 0 ? -1 : 0;
    case OPT_REGISTER_BATCH:
        return (c->register_batch =
                    parse_int("--register-batch", arg, 1, COORD_REGISTER_BATCH_MAX)) < 0
                   ? -1
                   : 0;
    case OPT_ETCD_QUEUE:
        return (c->etcd_queue = parse_int("--etcd-queue", arg, 0, 1000000)) < 0 ? -1 : 0;
    case OPT_GRACE:
        return (c->grace_ms = parse_int("--grace-ms", arg, 0, 600000)) < 0 ? -1 : 0;
    case OPT_MAX_CONNECTION_AGE:
        return (c->max_connection_age_ms =
                    parse_int("--max-connection-age-ms", arg, 0, CONNECTION_AGE_MAX_MS)) < 0
                   ? -1
                   : 0;
    case OPT_HANDSHAKE_TIMEOUT:
        c->handshake_timeout_ms = parse_int("--handshake-timeout-ms", arg, 1000, 600000);
        return c->handshake_timeout_ms < 0 ? -1 : 0;
    case OPT_MAX_CONNECTION_AGE_GRACE:
        return (c->max_connection_age_grace_ms =
                    parse_int("--max-connection-age-grace-ms", arg, 0, CONNECTION_AGE_MAX_MS)) < 0
                   ? -1
                   : 0;
    case OPT_MAX_WAITS:
        return (c->max_waits = parse_int("--max-waits", arg, 1, 1000000)) < 0 ? -1 : 0;
    case OPT_REQUEST_MEMORY:
        return (c->request_memory_mib = parse_int("--request-memory-mib", arg, 4, 1048576)) < 0 ? -1
                                                                                                : 0;
    case OPT_MAX_WATCHES:
        return (c->max_watches = parse_int("--max-watches", arg, 1, 1000000)) < 0 ? -1 : 0;
    case OPT_MAX_WATCHES_PER_PEER:
        return (c->max_watches_per_peer = parse_int("--max-watches-per-peer", arg, 0, 1000000)) < 0
                   ? -1
                   : 0;
    case OPT_MAX_WAITS_PER_PEER:
        return (c->max_waits_per_peer = parse_int("--max-waits-per-peer", arg, 0, 1000000)) < 0 ? -1
                                                                                                : 0;
    case OPT_ETCD_READS_PER_PEER:
        c->etcd_reads_per_peer = parse_int("--etcd-reads-per-peer", arg, 0, 1000000);
        return c->etcd_reads_per_peer < 0 ? -1 : 0;
    case OPT_ETCD_WRITES_PER_PEER:
        c->etcd_writes_per_peer = parse_int("--etcd-writes-per-peer", arg, 0, 1000000);
        return c->etcd_writes_per_peer < 0 ? -1 : 0;
    case OPT_STORED_MIB_PER_PEER:
        c->stored_mib_per_peer = parse_int("--stored-mib-per-peer", arg, 0, 1048576);
        return c->stored_mib_per_peer < 0 ? -1 : 0;
    case OPT_WATCH_QUEUE:
        return (c->watch_queue_kib = parse_int("--watch-queue-kib", arg, 16, 1 << 20)) < 0 ? -1 : 0;
    case OPT_WATCH_MEMORY:
        return (c->watch_memory_mib = parse_int("--watch-memory-mib", arg, 1, 1 << 20)) < 0 ? -1
                                                                                            : 0;
    case OPT_NAME:
        c->name = arg;
        break;
    case OPT_PORT_FILE:
        c->port_file = arg;
        break;
    case OPT_LOG_LEVEL:
        c->log_level = arg;
        break;
    case OPT_TLS_CERT:
        c->tls_cert = arg;
        break;
    case OPT_TLS_KEY:
        c->tls_key = arg;
        break;
    case OPT_TLS_CA:
        c->tls_ca = arg;
        break;
    case OPT_ETCD_CA:
        c->etcd_ca = arg;
        break;
    case OPT_ETCD_CERT:
        c->etcd_cert = arg;
        break;
    case OPT_ETCD_KEY:
        c->etcd_key = arg;
        break;
    case OPT_ETCD_KV_API:
        c->etcd_kv_api = arg;
        break;
    case OPT_ETCD_USER:
        c->etcd_user = arg;
        break;
    case OPT_METRICS_LISTEN:
        c->metrics_listen = arg;
        break;
    default:
        return -1;
    }
    return 0;
}

/* Numbers from the environment, read after the flags so a flag wins. A
 * number no flag set is UNSET (a grace of 0 is a real value). A variable
 * set but empty is refused, as the text settings are (FERRY_REQUEST_
 * MEMORY_MIB="" would otherwise be the default, 1 GiB, over a container's
 * limit). */
static int env_number(int *field, const char *name, const char *fallback, int lo, int hi)
{
    const char *v = getenv(name);

    if (*field != UNSET) {
        return 0;
    }
    if (v != NULL && v[0] == '\0') {
        fprintf(stderr, "ferry-coordinator: %s is set but empty: give it a number or unset it\n",
                name);
        return -1;
    }
    *field = parse_int(name, v != NULL ? v : fallback, lo, hi);
    return *field < 0 ? -1 : 0;
}

/* A number only a variable sets (FERRY_RPC_KEEPALIVE_MS,
 * FERRY_TLS_REFRESH_S), whose unset is 0: the layer's own default. Out of
 * range it is refused, as every setting is, where libferry's clients
 * (rpc_env_keepalive_ms) warn and take the default. */
static int env_optional(int *field, const char *name, int lo, int hi)
{
    *field = UNSET;
    if (getenv(name) == NULL) {
        *field = 0;
        return 0;
    }
    return env_number(field, name, NULL, lo, hi);
}

/* A per-peer share (--max-watches-per-peer, --max-waits-per-peer,
 * --etcd-reads-per-peer, --etcd-writes-per-peer): the
 * flag, else the variable, else an eighth of the bound it shares, but at
 * least CONFIG_SHARE_MIN (all of a smaller bound): one host may not take
 * the whole bound, while a host running a thousand workers (one Watch, a
 * wait or two each) is not refused at the defaults, nor a small one
 * (tests, a dev box) under a small bound. */
#define CONFIG_SHARE_MIN 16

static int env_share(int *field, const char *name, int bound)
{
    int share = bound / 8 > CONFIG_SHARE_MIN ? bound / 8 : CONFIG_SHARE_MIN;
    char fallback[16];

    snprintf(fallback, sizeof(fallback), "%d", share < bound ? share : bound);
    return env_number(field, name, fallback, 0, 1000000);
}

static int env_numbers(coord_config_t *c)
{
    if (env_number(&c->ttl_s, "FERRY_TTL", "10", 1, COORD_TTL_MAX) != 0 ||
        env_number(&c->threads, "FERRY_THREADS", "16", 1, 256) != 0 ||
        env_number(&c->etcd_inflight, "FERRY_ETCD_INFLIGHT", "64", 1, 1024) != 0 ||
        env_number(&c->etcd_queue, "FERRY_ETCD_QUEUE", "1024", 0, 1000000) != 0 ||
        env_number(&c->etcd_load_page, "FERRY_ETCD_LOAD_PAGE", CONFIG_STR(COORD_LOAD_PAGE), 1,
                   100000) != 0 ||
        env_number(&c->register_batch, "FERRY_REGISTER_BATCH", CONFIG_STR(COORD_REGISTER_BATCH), 1,
                   COORD_REGISTER_BATCH_MAX) != 0 ||
        env_number(&c->grace_ms, "FERRY_GRACE_MS", "5000", 0, 600000) != 0 ||
        env_number(&c->max_connection_age_ms, "FERRY_MAX_CONNECTION_AGE_MS", "0", 0,
                   CONNECTION_AGE_MAX_MS) != 0 ||
        env_number(&c->max_connection_age_grace_ms, "FERRY_MAX_CONNECTION_AGE_GRACE_MS", "30000", 0,
                   CONNECTION_AGE_MAX_MS) != 0 ||
        env_number(&c->handshake_timeout_ms, "FERRY_HANDSHAKE_TIMEOUT_MS", "10000", 1000, 600000) !=
            0 ||
        env_number(&c->watch_queue_kib, "FERRY_WATCH_QUEUE_KIB", "4096", 16, 1 << 20) != 0 ||
        env_number(&c->watch_memory_mib, "FERRY_WATCH_MEMORY_MIB", "256", 1, 1 << 20) != 0 ||
        env_number(&c->max_waits, "FERRY_MAX_WAITS", "10000", 1, 1000000) != 0 ||
        env_number(&c->request_memory_mib, "FERRY_REQUEST_MEMORY_MIB", "1024", 4, 1048576) != 0 ||
        env_number(&c->max_watches, "FERRY_MAX_WATCHES", "10000", 1, 1000000) != 0 ||
        env_share(&c->max_watches_per_peer, "FERRY_MAX_WATCHES_PER_PEER", c->max_watches) != 0 ||
        env_share(&c->max_waits_per_peer, "FERRY_MAX_WAITS_PER_PEER", c->max_waits) != 0 ||
        env_share(&c->etcd_reads_per_peer, "FERRY_ETCD_READS_PER_PEER",
                  c->etcd_inflight + c->etcd_queue) != 0 ||
        env_share(&c->etcd_writes_per_peer, "FERRY_ETCD_WRITES_PER_PEER",
                  c->etcd_inflight + c->etcd_queue) != 0 ||
        env_number(&c->stored_mib_per_peer, "FERRY_STORED_MIB_PER_PEER", "128", 0, 1048576) != 0 ||
        env_optional(&c->rpc_keepalive_ms, "FERRY_RPC_KEEPALIVE_MS", RPC_KEEPALIVE_MIN_MS,
                     RPC_KEEPALIVE_MAX_MS) != 0 ||
        env_optional(&c->tls_refresh_s, "FERRY_TLS_REFRESH_S", 1, RPC_TLS_REFRESH_MAX_S) != 0) {
        return -1;
    }
    return 0;
}

/* The port of a host:port address is 0..65535. Other forms (unix:PATH,
 * "[v6]" or a host without a port) are left to gRPC. Named as the flag, or
 * as FERRY_LISTEN when the address came from it (config_defaults keeps
 * getenv's own pointer, which no flag's argument is). */
static int check_listen(const char *listen)
{
    const char *colon = strrchr(listen, ':');
    const char *name = listen == getenv("FERRY_LISTEN") ? "FERRY_LISTEN port" : "--listen port";

    if (strncmp(listen, "unix", 4) == 0 || colon == NULL || strchr(colon, ']') != NULL) {
        return 0;
    }
    return parse_int(name, colon + 1, 0, 65535) < 0 ? -1 : 0;
}

static int check_prefix(const char *prefix)
{
    size_t plen = strlen(prefix);

    if (plen == 0 || prefix[plen - 1] != '/') {
        fprintf(stderr, "ferry-coordinator: --prefix must end with '/', not '%s'\n", prefix);
        return -1;
    }
    if (plen > COORD_PREFIX_MAX) {
        fprintf(stderr, "ferry-coordinator: --prefix must be 1 to %d bytes, not %zu\n",
                COORD_PREFIX_MAX, plen);
        return -1;
    }
    return 0;
}

const char *coord_config_metrics_addr(const char *listen, struct addrinfo **ai_p)
{
    struct addrinfo hints = {.ai_flags = AI_PASSIVE | AI_NUMERICSERV | AI_NUMERICHOST,
                             .ai_socktype = SOCK_STREAM};
    const char *colon = strrchr(listen, ':');
    const char *port;
    char host[64];
    size_t hlen;
    char *end;
    long number;

    *ai_p = NULL;
    if (colon == NULL || colon == listen) {
        return "must be HOST:PORT with a numeric host (0.0.0.0 for every address)";
    }
    port = colon + 1;
    number = strtol(port, &end, 10);
    if (*port < '0' || *port > '9' || *end != '\0' || number > 65535) {
        return "port must be an integer from 0 to 65535";
    }
    hlen = (size_t)(colon - listen);
    if (listen[0] == '[') {
        if (hlen < 2 || listen[hlen - 1] != ']') {
            return "an IPv6 host goes in brackets: [::1]:9400";
        }
        listen++;
        hlen -= 2;
    } else if (memchr(listen, ':', hlen) != NULL) {
        return "an IPv6 host goes in brackets: [::1]:9400";
    }
    if (hlen >= sizeof(host)) {
        return "host must be a numeric IPv4 or [IPv6] address, not a name";
    }
    memcpy(host, listen, hlen);
    host[hlen] = '\0';
    if (getaddrinfo(host, port, &hints, ai_p) != 0) {
        *ai_p = NULL;
        return "host must be a numeric IPv4 or [IPv6] address, not a name";
    }
    return NULL;
}

/* With the rules metrics.c binds by, so a value it would refuse is refused
 * here, before a private etcd starts. "off" is no metrics, as unset: with
 * empty refused, an overlay that turns off the metrics its base sets needs
 * a value for it (and not a JSON patch that removes the variable). */
static int check_metrics_listen(const char **listen_p)
{
    const char *listen = *listen_p;
    struct addrinfo *ai;
    const char *why;

    if (listen == NULL) {
        return 0;
    }
    if (strcmp(listen, "off") == 0) {
        *listen_p = NULL;
        return 0;
    }
    why = coord_config_metrics_addr(listen, &ai);
    if (why != NULL) {
        fprintf(stderr, "ferry-coordinator: --metrics-listen (FERRY_METRICS_LISTEN) '%s': %s\n",
                listen, why);
        return -1;
    }
    freeaddrinfo(ai);
    return 0;
}

static int check_set_but_empty(coord_config_t *c)
{
    for (size_t i = 0; i < N_TEXT_SETTINGS; i++) {
        const char *v = *text_setting(c, i);

        if (v != NULL && v[0] == '\0') {
            fprintf(stderr, "ferry-coordinator: %s (%s) is set but empty: give it %s or unset it\n",
                    text_settings[i].flag, text_settings[i].env, text_settings[i].what);
            return -1;
        }
    }
    return 0;
}

/* The etcd TLS files are used for https:// endpoints only: with an
 * http:// or unix:// one in the list, the coordinator would talk to it in
 * plaintext (the lease key included) while its operator, having set them,
 * believes otherwise. Refused, naming the flag and the endpoint. */
static int check_etcd_tls(coord_config_t *c)
{
    const char *start = c->etcd;
    const char *file = c->etcd_ca != NULL     ? "--etcd-ca (FERRY_ETCD_CA)"
                       : c->etcd_cert != NULL ? "--etcd-cert (FERRY_ETCD_CERT)"
                       : c->etcd_key != NULL  ? "--etcd-key (FERRY_ETCD_KEY)"
                                              : NULL;

    if (file == NULL || start == NULL) {
        return 0;
    }
    while (*start != '\0') {
        size_t len = strcspn(start, ",");
        const char *entry = start;
        size_t entry_len = len;

        etcd_endpoint_trim(&entry, &entry_len); /* as the client reads it */
        if (entry_len > 0 && strncmp(entry, "https://", 8) != 0) {
            fprintf(stderr,
                    "ferry-coordinator: %s is for https:// etcd endpoints, and '%.*s' in "
                    "--etcd (FERRY_ETCD) is not one: it would be plaintext (name it https://, or "
                    "unset the etcd TLS files)\n",
                    file, (int)entry_len, entry);
            return -1;
        }
        start += len + (start[len] == ',');
    }
    return 0;
}

static int check(coord_config_t *c)
{
    const char *etcd_bin = getenv("FERRY_ETCD_BIN"); /* etcd_child.c reads it */

    if (check_set_but_empty(c) != 0 || check_prefix(c->prefix) != 0 ||
        check_listen(c->listen) != 0) {
        return -1;
    }
    if (etcd_bin != NULL && etcd_bin[0] == '\0') {
        /* As the other settings: the private etcd would fail to exec "". */
        fprintf(stderr, "ferry-coordinator: FERRY_ETCD_BIN is set but empty: give it the etcd "
                        "binary's path or unset it (etcd on PATH)\n");
        return -1;
    }
    if (c->max_connection_age_ms > 0 && c->max_connection_age_ms < CONNECTION_AGE_MIN_MS) {
        /* Every client would reconnect (a TLS handshake too) all the time. */
        fprintf(stderr,
                "ferry-coordinator: --max-connection-age-ms (FERRY_MAX_CONNECTION_AGE_MS) must "
                "be 0 (never) or from %d to %d, not %d\n",
                CONNECTION_AGE_MIN_MS, CONNECTION_AGE_MAX_MS, c->max_connection_age_ms);
        return -1;
    }
    if (strcmp(c->etcd_kv_api, "grpc") != 0 && strcmp(c->etcd_kv_api, "gateway") != 0) {
        fprintf(stderr, "ferry-coordinator: --etcd-kv-api must be grpc or gateway, not '%s'\n",
                c->etcd_kv_api);
        return -1;
    }
    c->etcd_kv_gateway = strcmp(c->etcd_kv_api, "gateway") == 0;
    c->log_level_value = FERRY_LOG_INFO;
    if (c->log_level != NULL && ferry_log_level_parse(c->log_level, &c->log_level_value) != 0) {
        fprintf(stderr,
                "ferry-coordinator: --log-level (FERRY_LOG_LEVEL) must be off, error, warn, info, "
                "debug or trace, not '%s'\n",
                c->log_level);
        return -1;
    }
    if (check_metrics_listen(&c->metrics_listen) != 0) {
        return -1;
    }
    if (c->etcd == NULL && (c->etcd_user != NULL || c->etcd_ca != NULL || c->etcd_cert != NULL ||
                            c->etcd_key != NULL)) {
        /* The private etcd has credentials of its own (etcd_child.c). */
        fprintf(stderr,
                "ferry-coordinator: %s is for the etcd named by --etcd (FERRY_ETCD), "
                "and none is given (a private etcd would start)\n",
                c->etcd_user != NULL   ? "--etcd-user (FERRY_ETCD_USER)"
                : c->etcd_ca != NULL   ? "--etcd-ca (FERRY_ETCD_CA)"
                : c->etcd_cert != NULL ? "--etcd-cert (FERRY_ETCD_CERT)"
                                       : "--etcd-key (FERRY_ETCD_KEY)");
        return -1;
    }
    if (c->etcd_user != NULL && (c->etcd_password == NULL || c->etcd_password[0] == '\0')) {
        /* Authentication would fail on every start, the replica serving
         * nothing and never ready, with the cause only in its log. */
        fprintf(stderr, "ferry-coordinator: --etcd-user (FERRY_ETCD_USER) needs its password in "
                        "FERRY_ETCD_PASSWORD, which is empty or unset\n");
        return -1;
    }
    if (check_etcd_tls(c) != 0) {
        return -1;
    }
    if (c->etcd_key != NULL && c->etcd_cert == NULL) {
        fprintf(stderr, "ferry-coordinator: --etcd-key (FERRY_ETCD_KEY) needs --etcd-cert "
                        "(FERRY_ETCD_CERT)\n");
        return -1;
    }
    if ((c->tls_cert == NULL) != (c->tls_key == NULL)) {
        fprintf(stderr, "ferry-coordinator: --tls-cert and --tls-key go together\n");
        return -1;
    }
    if (c->tls_ca != NULL && c->tls_cert == NULL) {
        fprintf(stderr, "ferry-coordinator: --tls-ca needs --tls-cert and --tls-key\n");
        return -1;
    }
    return 0;
}

/* No passphrase: an encrypted key, which neither curl nor gRPC is given
 * one for, is refused here rather than asked for on the terminal. */
static int no_passphrase(char *buf, int size, int rwflag, void *arg)
{
    (void)buf, (void)size, (void)rwflag, (void)arg;
    return 0;
}

/* The first PEM certificate (key false) or private key (key true) in
 * `path`, or NULL with *why_p saying why. */
static void *read_pem_first(const char *path, bool key, const char **why_p)
{
    FILE *f = fopen(path, "r");
    void *out = NULL;

    if (f == NULL) {
        *why_p = strerror(errno);
        return NULL;
    }
    out = key ? (void *)PEM_read_PrivateKey(f, NULL, no_passphrase, NULL)
              : (void *)PEM_read_X509(f, NULL, no_passphrase, NULL);
    fclose(f);
    ERR_clear_error();
    *why_p = out != NULL ? NULL
             : key       ? "holds no PEM private key (or an encrypted one: give it unencrypted)"
                         : "holds no PEM certificate";
    return out;
}

/* cert_file and key_file, named by their flags for messages: both read,
 * and the key the certificate's. key_in_cert: key_file is cert_file, named
 * alone, so a key missing from it is the missing flag's fault. */
static int check_tls_pair(const char *cert_flag, const char *cert_file, const char *key_flag,
                          const char *key_file, bool key_in_cert)
{
    const char *cert_why = NULL, *key_why = NULL;
    X509 *cert;
    EVP_PKEY *key;
    int rc = -1;

    if (cert_file == NULL || key_file == NULL) {
        return 0;
    }
    cert = read_pem_first(cert_file, false, &cert_why);
    key = read_pem_first(key_file, true, &key_why);
    if (cert == NULL) {
        fprintf(stderr, "ferry-coordinator: %s '%s': %s\n", cert_flag, cert_file, cert_why);
    } else if (key == NULL && key_in_cert) {
        fprintf(stderr,
                "ferry-coordinator: %s '%s' holds no private key and no %s is given: they go "
                "together (a file that holds both may be named alone)\n",
                cert_flag, cert_file, key_flag);
    } else if (key == NULL) {
        fprintf(stderr, "ferry-coordinator: %s '%s': %s\n", key_flag, key_file, key_why);
    } else if (X509_check_private_key(cert, key) != 1) {
        fprintf(stderr,
                "ferry-coordinator: %s '%s' is not the key of %s '%s': every handshake would "
                "fail\n",
                key_flag, key_file, cert_flag, cert_file);
    } else {
        rc = 0;
    }
    ERR_clear_error();
    X509_free(cert);
    EVP_PKEY_free(key);
    return rc;
}

int coord_config_check_tls_pairs(coord_config_t *c)
{
    /* One file that holds both, as curl takes it: named as the key too,
     * so that gRPC's channels read it as well. */
    bool etcd_key_in_cert = c->etcd_cert != NULL && c->etcd_key == NULL;

    if (etcd_key_in_cert) {
        c->etcd_key = c->etcd_cert;
    }
    if (check_tls_pair("--tls-cert (FERRY_TLS_CERT)", c->tls_cert, "--tls-key (FERRY_TLS_KEY)",
                       c->tls_key, false) != 0 ||
        check_tls_pair("--etcd-cert (FERRY_ETCD_CERT)", c->etcd_cert, "--etcd-key (FERRY_ETCD_KEY)",
                       c->etcd_key, etcd_key_in_cert) != 0) {
        return -1;
    }
    return 0;
}

int coord_config_parse(int argc, char **argv, coord_config_t *c)
{
    int opt;

    config_defaults(c);
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
        if (opt == OPT_HELP) {
            fputs(usage, stdout);
            return 1;
        }
        if (opt == '?' || set_option(c, opt, optarg) != 0) {
            fputs(usage, stderr);
            return -1;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ferry-coordinator: unexpected argument '%s'\n", argv[optind]);
        return -1;
    }
    if (env_numbers(c) != 0 || check(c) != 0) {
        return -1;
    }
    return 0;
}
