/*
 * ferry_bench_control.c: the control-path load generator (issue #5).
 *
 * A separate process on loopback that runs N client threads against one or
 * more ferry-coordinator replicas, or straight against etcd's JSON gateway
 * (the reference), for a bounded time and a bounded count, and prints one
 * JSON object per run on stdout (bench/run.sh collects them).
 *
 * Modes:
 *   populate        Register --records records "<ids>-<i>" (setup, not timed)
 *   lookup          Lookup of those records through the coordinator(s)
 *   etcd-get        the same records read from etcd (<prefix>ops/<id>) and
 *                   decoded, as a client without a coordinator would
 *   register        Register of new IDs through the coordinator(s), each
 *                   client thread on its own session lease (made by its
 *                   first, warm-up call), as a libferry client: one etcd write
 *   etcd-txn        the create-if-absent transaction alone, straight to etcd:
 *                   what Register asks of etcd (keys <prefix minus '/'>-direct/,
 *                   outside the coordinator's prefix, so its watch sees none)
 *   (etcd-get, etcd-txn and etcd-lease-txn go through the coordinator's etcd
 *   client, key-values over etcd's JSON gateway unless --etcd-kv-api grpc:
 *   the gateway is the reference, gRPC what the coordinator uses)
 *   etcd-lease-txn  lease grant + that transaction: what a Register without
 *                   a session lease (lease_id 0) asks of etcd
 *   etcd-grpc-get   the same records as etcd-get through etcd's native gRPC
 *                   KV.Range (proto/etcdserverpb, over rpc/: gRPC core
 *                   + protobuf-c), decoded: what a client would pick instead
 *                   of the coordinator (NIXL reads etcd through its gRPC API)
 *   echo            a bare unary call through rpc/ to an echo-server (--coord
 *                   names it): the reference for every RPC figure
 *   echo-server     serves ferry.bench.Echo on --listen with an empty handler
 *                   (it answers the request it got) on the coordinator's
 *                   default 16 completion-queue threads, writes the port to
 *                   --port-file and runs until SIGTERM/SIGINT
 *
 * Fairness: each thread is one client that waits for each answer before the
 * next call (closed loop). gRPC: --channels thread gives each thread its own
 * rpc channel, --channels shared one channel per coordinator. (gRPC C core
 * shares one subchannel, so one TCP connection, between channels to the same
 * target with the same arguments; both settings multiplex over HTTP/2.) etcd:
 * one etcd_client_t, whose pool gives every concurrent request its own
 * keep-alive HTTP/1.1 connection: the same as one client per thread.
 *
 * Threads: main sets up, starts the clients behind a barrier, joins them and
 * merges their samples; each client thread owns its samples.
 */
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_stats.h"
#include "etcd/etcd.h"
#include "common/log.h"
#include "etcdserverpb/kv.pb-c.h"
#include "ferry/v1/coordinator.pb-c.h"
#include "ferry_bench/echo.pb-c.h"
#include "rpc/rpc.h"

#define BENCH_TOKEN           "bench-access-token-0123456789abcdef"
#define BENCH_MAX_COORDS      8
#define BENCH_CALL_TIMEOUT_MS 10000
#define BENCH_ECHO_PAYLOAD    64 /* about a Lookup request's size */
#define BENCH_ECHO_THREADS    16 /* the coordinator's default --threads */

typedef enum {
    MODE_POPULATE,
    MODE_LOOKUP,
    MODE_ETCD_GET,
    MODE_REGISTER,
    MODE_ETCD_TXN,
    MODE_ETCD_LEASE_TXN,
    MODE_ETCD_GRPC_GET,
    MODE_ECHO,
    MODE_ECHO_SERVER,
} bench_mode_t;

static const char *const mode_names[] = {"populate",      "lookup",   "etcd-get",
                                         "register",      "etcd-txn", "etcd-lease-txn",
                                         "etcd-grpc-get", "echo",     "echo-server"};

typedef struct {
    bench_mode_t mode;
    char *coord_targets[BENCH_MAX_COORDS];
    int n_coords;
    const char *etcd_endpoint;
    const char *prefix;
    const char *ids;    /* record ID stem for populate/lookup/etcd-get */
    const char *run_id; /* ID stem for register/etcd-txn */
    int clients;
    double seconds;
    long max_ops; /* per client */
    long warmup_ops;
    long records;
    bool shared_channels;
    bool kv_grpc; /* --etcd-kv-api grpc: the etcd client's key-values over gRPC */
    const char *label;
    const char *listen;    /* echo-server */
    const char *port_file; /* echo-server */
    /* --server-pid: the servers the calls go to (coordinators, or the echo
     * server), whose CPU time over the measured window is reported per
     * call. */
    int server_pids[BENCH_MAX_COORDS];
    int n_server_pids;
} bench_config_t;

typedef struct bench_shared bench_shared_t;

typedef struct {
    bench_shared_t *shared;
    int index;
    rpc_channel_t *channel;
    bench_samples_t samples;
    int64_t lease;         /* the session lease, as a libferry client holds one */
    char lease_token[129]; /* its lease token, shown with it */
    long errors;
    char first_error[768];
} bench_client_t;

struct bench_shared {
    const bench_config_t *config;
    etcd_client_t *etcd;
    rpc_channel_t *channels[BENCH_MAX_COORDS]; /* shared mode */
    char etcd_target[256];                     /* etcd-grpc-get: host:port */
    pthread_barrier_t start;
    uint64_t deadline_ns;
    uint8_t *record; /* a packed Operation, for direct etcd writes */
    size_t record_len;
    Ferry__V1__RdmaMetadata *metadata;
};

/* --- the record a registration carries --------------------------------- */

static uint8_t md_address[64], md_rkey[32], md_key[16];
static Ferry__V1__Device md_device = FERRY__V1__DEVICE__INIT;
static Ferry__V1__Descriptor md_desc = FERRY__V1__DESCRIPTOR__INIT;
static Ferry__V1__Descriptor *md_descs[1] = {&md_desc};
static Ferry__V1__RdmaMetadata md = FERRY__V1__RDMA_METADATA__INIT;

/* A metadata of the size a real 4 KiB writable publishes (worker address and
 * rkey sizes as UCX 1.13 packs them for shared memory and TCP). */
static Ferry__V1__RdmaMetadata *bench_metadata(void)
{
    memset(md_address, 0xa5, sizeof(md_address));
    memset(md_rkey, 0x5a, sizeof(md_rkey));
    memset(md_key, 0x3c, sizeof(md_key));
    md_device.kind = FERRY__V1__DEVICE_KIND__DEVICE_KIND_HOST;
    md_desc.address = 0x100000;
    md_desc.size = 4096;
    md_desc.device = &md_device;
    md_desc.rkey.data = md_rkey;
    md_desc.rkey.len = sizeof(md_rkey);
    md.version = 1;
    md.kind = FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE;
    md.worker_address.data = md_address;
    md.worker_address.len = sizeof(md_address);
    md.n_descriptors = 1;
    md.descriptors = md_descs;
    md.notification_key.data = md_key;
    md.notification_key.len = sizeof(md_key);
    md.worker_name = "bench-worker";
    return &md;
}

/* The Operation record as the coordinator stores it, for direct writes. */
static int bench_pack_record(bench_shared_t *sh)
{
    Ferry__V1__Operation op = FERRY__V1__OPERATION__INIT;
    uint8_t hash[32];

    memset(hash, 0x11, sizeof(hash));
    op.request_id = "bench-direct-000000000";
    op.kind = FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE;
    op.state = FERRY__V1__OPERATION_STATE__OPERATION_STATE_REGISTERED;
    op.metadata = sh->metadata;
    op.owner = "bench";
    op.lease_id = 0x1234567812345678ll;
    op.token_sha256.data = hash;
    op.token_sha256.len = sizeof(hash);
    op.created_unix_ms = 1700000000000ll;
    op.updated_unix_ms = op.created_unix_ms;
    sh->record_len = ferry__v1__operation__get_packed_size(&op);
    sh->record = malloc(sh->record_len);
    if (sh->record == NULL) {
        return -1;
    }
    ferry__v1__operation__pack(&op, sh->record);
    return 0;
}

/* --- one call of each mode ---------------------------------------------- */

static void note_error(bench_client_t *cl, const char *what, ferry_status_t status,
                       const rpc_error_t *err)
{
    cl->errors++;
    if (cl->first_error[0] == '\0') {
        snprintf(cl->first_error, sizeof(cl->first_error), "%s: %s (%.500s)", what,
                 ferry_status_name(status), err != NULL ? err->message : etcd_client_last_error());
    }
}

static rpc_channel_t *client_channel(bench_client_t *cl)
{
    const bench_config_t *cfg = cl->shared->config;
    return cfg->shared_channels ? cl->shared->channels[cl->index % cfg->n_coords] : cl->channel;
}

static int call_register(bench_client_t *cl, const char *id)
{
    Ferry__V1__RegisterRequest req = FERRY__V1__REGISTER_REQUEST__INIT;
    Ferry__V1__RegisterResponse *resp = NULL;
    rpc_error_t err;
    ferry_status_t status;

    req.request_id = (char *)id;
    req.metadata = cl->shared->metadata;
    req.access_token = BENCH_TOKEN;
    req.ttl_seconds = 3600;
    req.owner = "bench";
    /* Each client thread is one libferry session: its first Register makes
     * the session lease, every later one names it (one etcd write). */
    req.lease_id = cl->lease;
    req.lease_token = cl->lease_token;
    status = rpc_unary(client_channel(cl), "/ferry.v1.Coordinator/Register", &req.base,
                       &ferry__v1__register_response__descriptor, BENCH_CALL_TIMEOUT_MS,
                       (ProtobufCMessage **)&resp, &err);
    if (status != FERRY_OK) {
        note_error(cl, "Register", status, &err);
        return -1;
    }
    if (cl->lease == 0) {
        cl->lease = resp->lease_id;
        snprintf(cl->lease_token, sizeof(cl->lease_token), "%s", resp->lease_token);
    }
    ferry__v1__register_response__free_unpacked(resp, NULL);
    return 0;
}

static int call_lookup(bench_client_t *cl, const char *id)
{
    Ferry__V1__LookupRequest req = FERRY__V1__LOOKUP_REQUEST__INIT;
    Ferry__V1__LookupResponse *resp = NULL;
    rpc_error_t err;
    ferry_status_t status;

    req.request_id = (char *)id;
    req.access_token = BENCH_TOKEN;
    status = rpc_unary(client_channel(cl), "/ferry.v1.Coordinator/Lookup", &req.base,
                       &ferry__v1__lookup_response__descriptor, BENCH_CALL_TIMEOUT_MS,
                       (ProtobufCMessage **)&resp, &err);
    if (status != FERRY_OK) {
        note_error(cl, "Lookup", status, &err);
        return -1;
    }
    if (resp->operation == NULL || resp->operation->metadata == NULL) {
        note_error(cl, "Lookup without metadata", FERRY_ERR_PROTOCOL, NULL);
        status = FERRY_ERR_PROTOCOL;
    }
    ferry__v1__lookup_response__free_unpacked(resp, NULL);
    return status == FERRY_OK ? 0 : -1;
}

static int call_etcd_get(bench_client_t *cl, const char *id)
{
    char key[256];
    int len = snprintf(key, sizeof(key), "%sops/%s", cl->shared->config->prefix, id);
    etcd_range_t range = {0};
    Ferry__V1__Operation *op;
    ferry_status_t status = etcd_get(cl->shared->etcd, key, (size_t)len, NULL, 0, 0, 0, &range);

    if (status != FERRY_OK) {
        note_error(cl, "etcd get", status, NULL);
        return -1;
    }
    if (range.n_kvs != 1) {
        etcd_range_free(&range);
        note_error(cl, "etcd get: no record", FERRY_ERR_NOT_FOUND, NULL);
        return -1;
    }
    /* A client without a coordinator still has to decode the record. */
    op = ferry__v1__operation__unpack(NULL, range.kvs[0].value_len, range.kvs[0].value);
    etcd_range_free(&range);
    if (op == NULL || op->metadata == NULL) {
        note_error(cl, "etcd get: bad record", FERRY_ERR_PROTOCOL, NULL);
        if (op != NULL) {
            ferry__v1__operation__free_unpacked(op, NULL);
        }
        return -1;
    }
    ferry__v1__operation__free_unpacked(op, NULL);
    return 0;
}

static int call_etcd_grpc_get(bench_client_t *cl, const char *id)
{
    char key[256];
    int len = snprintf(key, sizeof(key), "%sops/%s", cl->shared->config->prefix, id);
    Etcdserverpb__RangeRequest req = ETCDSERVERPB__RANGE_REQUEST__INIT;
    Etcdserverpb__RangeResponse *resp = NULL;
    Ferry__V1__Operation *op = NULL;
    rpc_error_t err;
    ferry_status_t status;

    /* Linearizable (serializable false), as the gateway read above. */
    req.key.data = (uint8_t *)key;
    req.key.len = (size_t)len;
    status = rpc_unary(cl->channel, "/etcdserverpb.KV/Range", &req.base,
                       &etcdserverpb__range_response__descriptor, BENCH_CALL_TIMEOUT_MS,
                       (ProtobufCMessage **)&resp, &err);
    if (status != FERRY_OK) {
        note_error(cl, "etcd KV.Range", status, &err);
        return -1;
    }
    if (resp->n_kvs != 1 || resp->kvs[0]->key.len != (size_t)len ||
        memcmp(resp->kvs[0]->key.data, key, (size_t)len) != 0) {
        note_error(cl, "etcd KV.Range: not the one record asked for", FERRY_ERR_NOT_FOUND, NULL);
        goto err_resp;
    }
    /* A client without a coordinator still has to decode the record. */
    op = ferry__v1__operation__unpack(NULL, resp->kvs[0]->value.len, resp->kvs[0]->value.data);
    if (op == NULL || op->metadata == NULL || strcmp(op->request_id, id) != 0) {
        note_error(cl, "etcd KV.Range: bad record", FERRY_ERR_PROTOCOL, NULL);
        goto err_op;
    }
    ferry__v1__operation__free_unpacked(op, NULL);
    etcdserverpb__range_response__free_unpacked(resp, NULL);
    return 0;

err_op:
    if (op != NULL) {
        ferry__v1__operation__free_unpacked(op, NULL);
    }
err_resp:
    etcdserverpb__range_response__free_unpacked(resp, NULL);
    return -1;
}

static int call_echo(bench_client_t *cl)
{
    static uint8_t payload[BENCH_ECHO_PAYLOAD];
    Ferry__Bench__EchoMessage req = FERRY__BENCH__ECHO_MESSAGE__INIT;
    Ferry__Bench__EchoMessage *resp = NULL;
    rpc_error_t err;
    ferry_status_t status;

    req.payload.data = payload;
    req.payload.len = sizeof(payload);
    status = rpc_unary(client_channel(cl), "/ferry.bench.Echo/Echo", &req.base,
                       &ferry__bench__echo_message__descriptor, BENCH_CALL_TIMEOUT_MS,
                       (ProtobufCMessage **)&resp, &err);
    if (status != FERRY_OK) {
        note_error(cl, "Echo", status, &err);
        return -1;
    }
    status = resp->payload.len == sizeof(payload) ? FERRY_OK : FERRY_ERR_PROTOCOL;
    if (status != FERRY_OK) {
        note_error(cl, "Echo: payload changed", status, NULL);
    }
    ferry__bench__echo_message__free_unpacked(resp, NULL);
    return status == FERRY_OK ? 0 : -1;
}

static int call_etcd_txn(bench_client_t *cl, const char *id, bool with_lease)
{
    /* Beside the coordinator's prefix, not in it ("/ferry/" -> "/ferry-direct/"):
     * its view watches the whole prefix, and would pay for every reference
     * write while the reference is measured. */
    const char *prefix = cl->shared->config->prefix;
    size_t plen = strlen(prefix);
    char key[256];
    int len = snprintf(key, sizeof(key), "%.*s-direct/%s",
                       (int)(plen > 0 && prefix[plen - 1] == '/' ? plen - 1 : plen), prefix, id);
    int64_t lease = 0, ttl = 0;
    etcd_compare_t cmp = {.target = ETCD_CMP_CREATE,
                          .result = ETCD_CMP_EQUAL,
                          .key = key,
                          .key_len = (size_t)len,
                          .number = 0};
    etcd_op_t put = {.type = ETCD_OP_PUT,
                     .key = key,
                     .key_len = (size_t)len,
                     .value = cl->shared->record,
                     .value_len = cl->shared->record_len};
    etcd_txn_result_t res = {0};
    ferry_status_t status;

    if (with_lease) {
        status = etcd_lease_grant(cl->shared->etcd, 3600, 0, &lease, &ttl);
        if (status != FERRY_OK) {
            note_error(cl, "etcd lease grant", status, NULL);
            return -1;
        }
        put.lease = lease;
    }
    status = etcd_txn(cl->shared->etcd, &cmp, 1, &put, 1, NULL, 0, &res);
    if (status != FERRY_OK || !res.succeeded) {
        note_error(cl, "etcd txn", status != FERRY_OK ? status : FERRY_ERR_ALREADY_EXISTS, NULL);
        etcd_txn_result_free(&res);
        return -1;
    }
    etcd_txn_result_free(&res);
    return 0;
}

/* One call of the configured mode; `seq` numbers the client's calls. */
static int client_call(bench_client_t *cl, long seq)
{
    const bench_config_t *cfg = cl->shared->config;
    char id[160];

    switch (cfg->mode) {
    case MODE_POPULATE:
        snprintf(id, sizeof(id), "%s-%ld", cfg->ids, seq * cfg->clients + cl->index);
        return call_register(cl, id);
    case MODE_LOOKUP:
    case MODE_ETCD_GET:
    case MODE_ETCD_GRPC_GET:
        /* Spread the clients over the records, each walking its own way. */
        snprintf(id, sizeof(id), "%s-%ld", cfg->ids,
                 ((long)cl->index * 7919 + seq * 13) % cfg->records);
        return cfg->mode == MODE_LOOKUP     ? call_lookup(cl, id)
               : cfg->mode == MODE_ETCD_GET ? call_etcd_get(cl, id)
                                            : call_etcd_grpc_get(cl, id);
    case MODE_ECHO:
        return call_echo(cl);
    case MODE_ECHO_SERVER:
        break;
    case MODE_REGISTER:
    case MODE_ETCD_TXN:
    case MODE_ETCD_LEASE_TXN:
        snprintf(id, sizeof(id), "%s-%d-%ld", cfg->run_id, cl->index, seq);
        return cfg->mode == MODE_REGISTER ? call_register(cl, id)
                                          : call_etcd_txn(cl, id, cfg->mode == MODE_ETCD_LEASE_TXN);
    }
    return -1;
}

static void *client_main(void *arg)
{
    bench_client_t *cl = arg;
    const bench_config_t *cfg = cl->shared->config;
    long seq = 0;

    if (cfg->mode == MODE_POPULATE) {
        pthread_barrier_wait(&cl->shared->start);
        pthread_barrier_wait(&cl->shared->start);
        for (seq = 0; seq * cfg->clients + cl->index < cfg->records; seq++) {
            client_call(cl, seq);
        }
        return NULL;
    }
    for (; seq < cfg->warmup_ops; seq++) {
        client_call(cl, seq);
    }
    /* Twice: everyone is warm; then main has set the deadline. */
    pthread_barrier_wait(&cl->shared->start);
    pthread_barrier_wait(&cl->shared->start);
    for (long n = 0; n < cfg->max_ops && bench_now_ns() < cl->shared->deadline_ns; n++, seq++) {
        uint64_t t0 = bench_now_ns();
        if (client_call(cl, seq) == 0 && bench_samples_add(&cl->samples, bench_now_ns() - t0)) {
            cl->errors++;
        }
    }
    return NULL;
}

/* --- setup, run, report -------------------------------------------------- */

static void usage(void)
{
    fprintf(stderr, "usage: ferry_bench_control --mode M [--coord HOST:PORT[,HOST:PORT]] "
                    "[--etcd URL]\n"
                    "  [--clients N] [--seconds S] [--max-ops N] [--warmup-ops N] [--records N]\n"
                    "  [--ids STEM] [--run-id STEM] [--prefix /ferry/] [--channels thread|shared]\n"
                    "  [--label TEXT] [--listen HOST:PORT --port-file FILE]\n"
                    "  [--etcd-kv-api gateway|grpc]  (etcd-* modes; gateway)\n"
                    "  [--server-pid PID[,PID]]  (report the servers' CPU per call)\n"
                    "modes: populate lookup etcd-get register etcd-txn etcd-lease-txn\n"
                    "       etcd-grpc-get echo echo-server\n");
}

static int parse_mode(const char *text, bench_mode_t *mode_p)
{
    for (size_t i = 0; i < sizeof(mode_names) / sizeof(mode_names[0]); i++) {
        if (strcmp(text, mode_names[i]) == 0) {
            *mode_p = (bench_mode_t)i;
            return 0;
        }
    }
    return -1;
}

static int parse_coords(bench_config_t *cfg, char *list)
{
    char *save = NULL;
    for (char *t = strtok_r(list, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
        if (cfg->n_coords == BENCH_MAX_COORDS) {
            return -1;
        }
        cfg->coord_targets[cfg->n_coords++] = t;
    }
    return cfg->n_coords > 0 ? 0 : -1;
}

static int parse_pids(bench_config_t *cfg, char *list)
{
    char *save = NULL;
    for (char *t = strtok_r(list, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
        if (cfg->n_server_pids == BENCH_MAX_COORDS || atoi(t) <= 0) {
            return -1;
        }
        cfg->server_pids[cfg->n_server_pids++] = atoi(t);
    }
    return cfg->n_server_pids > 0 ? 0 : -1;
}

/* CPU time the --server-pid processes have used so far, in microseconds;
 * -1 when one cannot be read. */
static double servers_cpu_us(const bench_config_t *cfg)
{
    double total = 0;

    for (int i = 0; i < cfg->n_server_pids; i++) {
        double us = bench_proc_cpu_us(cfg->server_pids[i]);
        if (us < 0) {
            return -1;
        }
        total += us;
    }
    return total;
}

static int parse_args(int argc, char **argv, bench_config_t *cfg)
{
    static const struct option opts[] = {
        {"mode", required_argument, NULL, 'm'},       {"coord", required_argument, NULL, 'c'},
        {"etcd", required_argument, NULL, 'e'},       {"clients", required_argument, NULL, 'n'},
        {"seconds", required_argument, NULL, 's'},    {"max-ops", required_argument, NULL, 'o'},
        {"warmup-ops", required_argument, NULL, 'w'}, {"records", required_argument, NULL, 'r'},
        {"ids", required_argument, NULL, 'i'},        {"run-id", required_argument, NULL, 'u'},
        {"prefix", required_argument, NULL, 'p'},     {"channels", required_argument, NULL, 'h'},
        {"label", required_argument, NULL, 'l'},      {"listen", required_argument, NULL, 'L'},
        {"port-file", required_argument, NULL, 'P'},  {"etcd-kv-api", required_argument, NULL, 'k'},
        {"server-pid", required_argument, NULL, 'S'}, {NULL, 0, NULL, 0}};
    bool have_mode = false;
    int c;

    *cfg = (bench_config_t){.prefix = "/ferry/",
                            .ids = "bench-rec",
                            .run_id = "bench-reg",
                            .clients = 1,
                            .seconds = 5.0,
                            .max_ops = 200000,
                            .warmup_ops = 20,
                            .records = 1000,
                            .label = ""};
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            if (parse_mode(optarg, &cfg->mode) != 0) {
                return -1;
            }
            have_mode = true;
            break;
        case 'c':
            if (parse_coords(cfg, optarg) != 0) {
                return -1;
            }
            break;
        case 'e':
            cfg->etcd_endpoint = optarg;
            break;
        case 'n':
            cfg->clients = atoi(optarg);
            break;
        case 's':
            cfg->seconds = atof(optarg);
            break;
        case 'o':
            cfg->max_ops = atol(optarg);
            break;
        case 'w':
            cfg->warmup_ops = atol(optarg);
            break;
        case 'r':
            cfg->records = atol(optarg);
            break;
        case 'i':
            cfg->ids = optarg;
            break;
        case 'u':
            cfg->run_id = optarg;
            break;
        case 'p':
            cfg->prefix = optarg;
            break;
        case 'h':
            cfg->shared_channels = strcmp(optarg, "shared") == 0;
            break;
        case 'l':
            cfg->label = optarg;
            break;
        case 'L':
            cfg->listen = optarg;
            break;
        case 'P':
            cfg->port_file = optarg;
            break;
        case 'k':
            if (strcmp(optarg, "grpc") != 0 && strcmp(optarg, "gateway") != 0) {
                return -1;
            }
            cfg->kv_grpc = strcmp(optarg, "grpc") == 0;
            break;
        case 'S':
            if (parse_pids(cfg, optarg) != 0) {
                return -1;
            }
            break;
        default:
            return -1;
        }
    }
    if (!have_mode || cfg->clients < 1 || cfg->records < 1 || cfg->seconds <= 0) {
        return -1;
    }
    return 0;
}

/* Modes whose --coord targets are rpc/ servers (the echo server too). */
static bool mode_uses_coord(bench_mode_t mode)
{
    return mode == MODE_POPULATE || mode == MODE_LOOKUP || mode == MODE_REGISTER ||
           mode == MODE_ECHO;
}

static int open_channel(const char *target, rpc_channel_t **channel_p)
{
    rpc_channel_params_t params = {.target = target,
                                   .keepalive_ms = rpc_env_keepalive_ms(),
                                   .tls_refresh_s = rpc_env_tls_refresh_s()};
    if (rpc_channel_create(&params, channel_p) != FERRY_OK) {
        fprintf(stderr, "cannot open a channel to %s\n", target);
        return -1;
    }
    return 0;
}

static int setup(bench_shared_t *sh, bench_client_t *clients)
{
    const bench_config_t *cfg = sh->config;

    sh->metadata = bench_metadata();
    if (bench_pack_record(sh) != 0) {
        return -1;
    }
    if (cfg->mode == MODE_ETCD_GRPC_GET) {
        /* etcd serves gRPC and its gateway on the same client URL. */
        const char *hostport = cfg->etcd_endpoint;
        if (hostport == NULL) {
            fprintf(stderr, "this mode needs --etcd URL\n");
            return -1;
        }
        if (strncmp(hostport, "http://", 7) == 0) {
            hostport += 7;
        }
        snprintf(sh->etcd_target, sizeof(sh->etcd_target), "%s", hostport);
        for (int i = 0; i < cfg->clients; i++) {
            if (open_channel(sh->etcd_target, &clients[i].channel) != 0) {
                return -1;
            }
        }
        return 0;
    }
    if (!mode_uses_coord(cfg->mode)) {
        etcd_params_t ep = {.endpoints = cfg->etcd_endpoint,
                            .timeout_ms = BENCH_CALL_TIMEOUT_MS,
                            .kv_gateway = !cfg->kv_grpc,
                            .keepalive_ms = rpc_env_keepalive_ms(),
                            .tls_refresh_s = rpc_env_tls_refresh_s()};
        if (cfg->etcd_endpoint == NULL || etcd_client_create(&ep, &sh->etcd) != FERRY_OK) {
            fprintf(stderr, "this mode needs --etcd URL\n");
            return -1;
        }
        return 0;
    }
    if (cfg->n_coords == 0) {
        fprintf(stderr, "this mode needs --coord HOST:PORT\n");
        return -1;
    }
    for (int i = 0; i < cfg->n_coords && cfg->shared_channels; i++) {
        if (open_channel(cfg->coord_targets[i], &sh->channels[i]) != 0) {
            return -1;
        }
    }
    for (int i = 0; i < cfg->clients && !cfg->shared_channels; i++) {
        if (open_channel(cfg->coord_targets[i % cfg->n_coords], &clients[i].channel) != 0) {
            return -1;
        }
    }
    return 0;
}

static void teardown(bench_shared_t *sh, bench_client_t *clients)
{
    for (int i = 0; i < sh->config->clients; i++) {
        rpc_channel_destroy(clients[i].channel);
        bench_samples_free(&clients[i].samples);
    }
    for (int i = 0; i < BENCH_MAX_COORDS; i++) {
        rpc_channel_destroy(sh->channels[i]);
    }
    etcd_client_destroy(sh->etcd);
    free(sh->record);
}

/* server_cpu_us: the servers' CPU over the measured window (< 0: not
 * measured). */
static void report(const bench_config_t *cfg, bench_client_t *clients, double wall_s,
                   double server_cpu_us)
{
    bench_samples_t all = {0};
    long errors = 0;
    const char *first_error = "";

    for (int i = 0; i < cfg->clients; i++) {
        bench_samples_merge(&all, &clients[i].samples);
        errors += clients[i].errors;
        if (first_error[0] == '\0') {
            first_error = clients[i].first_error;
        }
    }
    bench_samples_sort(&all);
    printf("{\"bench\":\"control\",\"mode\":\"%s\",\"label\":\"%s\",\"clients\":%d,"
           "\"coordinators\":%d,\"channels\":\"%s\",\"ops\":%zu,\"errors\":%ld,"
           "\"seconds\":%.3f,\"ops_per_s\":%.1f,\"mean_us\":%.1f,\"p50_us\":%.1f,"
           "\"p90_us\":%.1f,\"p99_us\":%.1f,\"max_us\":%.1f",
           mode_names[cfg->mode], cfg->label, cfg->clients,
           mode_uses_coord(cfg->mode) && cfg->mode != MODE_ECHO ? cfg->n_coords : 0,
           cfg->shared_channels ? "shared" : "thread", all.n, errors, wall_s,
           (double)all.n / wall_s, bench_samples_mean_us(&all), bench_samples_pct_us(&all, 50),
           bench_samples_pct_us(&all, 90), bench_samples_pct_us(&all, 99),
           bench_samples_pct_us(&all, 100));
    if (server_cpu_us >= 0 && all.n > 0) {
        /* From the window's start (after the warm-up) to the last
         * client's return, in the kernel's clock ticks (10 ms): over a 5 s
         * run of thousands of calls, a fraction of a microsecond a call. */
        printf(",\"server_cpu_us_per_call\":%.2f", server_cpu_us / (double)all.n);
    }
    printf("}\n");
    if (errors > 0) {
        fprintf(stderr, "ferry_bench_control %s: %ld errors; first: %s\n", mode_names[cfg->mode],
                errors, first_error);
    }
    bench_samples_free(&all);
}

/* --- the echo server ------------------------------------------------------ */

static void echo_handler(rpc_call_t *call, const ProtobufCMessage *request, void *arg)
{
    (void)arg;
    rpc_call_reply(call, request);
}

/* Serves ferry.bench.Echo until SIGTERM or SIGINT; 0 on a clean stop. */
static int echo_server_main(const bench_config_t *cfg)
{
    static const rpc_method_t methods[] = {{"Echo", RPC_UNARY, echo_handler}};
    rpc_server_params_t params = {.listen_addr = cfg->listen, .n_threads = BENCH_ECHO_THREADS};
    rpc_server_t *server = NULL;
    sigset_t stop;
    FILE *f;
    int port = 0, sig = 0;

    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    /* Blocked before any thread starts, so every thread inherits it. */
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    if (cfg->listen == NULL || cfg->port_file == NULL) {
        fprintf(stderr, "echo-server needs --listen and --port-file\n");
        return 2;
    }
    if (rpc_server_create(&params, &server) != FERRY_OK ||
        rpc_server_add_service(server, &ferry__bench__echo__descriptor, methods, 1, NULL) !=
            FERRY_OK ||
        rpc_server_start(server, &port) != FERRY_OK) {
        fprintf(stderr, "echo-server: cannot serve on %s\n", cfg->listen);
        goto err_server;
    }
    f = fopen(cfg->port_file, "w");
    if (f == NULL) {
        fprintf(stderr, "echo-server: cannot write %s\n", cfg->port_file);
        goto err_server;
    }
    fprintf(f, "%d\n", port);
    if (fclose(f) != 0) {
        fprintf(stderr, "echo-server: cannot write %s\n", cfg->port_file);
        goto err_server;
    }
    sigwait(&stop, &sig);
    rpc_server_destroy(server);
    return 0;

err_server:
    rpc_server_destroy(server);
    return 1;
}

int main(int argc, char **argv)
{
    bench_config_t cfg;
    bench_shared_t sh = {0};
    bench_client_t *clients;
    pthread_t *threads;
    uint64_t t0;
    double cpu0;
    long errors = 0;
    int rc = 1;

    (void)ferry_log_init_from_env("ferry_bench_control", FERRY_LOG_WARN);

    if (parse_args(argc, argv, &cfg) != 0) {
        usage();
        return 2;
    }
    if (cfg.mode == MODE_ECHO_SERVER) {
        return echo_server_main(&cfg);
    }
    sh.config = &cfg;
    clients = calloc((size_t)cfg.clients, sizeof(*clients));
    threads = calloc((size_t)cfg.clients, sizeof(*threads));
    if (clients == NULL || threads == NULL || setup(&sh, clients) != 0) {
        goto out;
    }
    if (pthread_barrier_init(&sh.start, NULL, (unsigned)cfg.clients + 1) != 0) {
        fprintf(stderr, "ferry-bench-control: pthread_barrier_init failed\n");
        goto out;
    }
    for (int i = 0; i < cfg.clients; i++) {
        int err;
        clients[i].shared = &sh;
        clients[i].index = i;
        err = pthread_create(&threads[i], NULL, client_main, &clients[i]);
        if (err != 0) {
            /* The clients started wait on a barrier for all of them: no
             * way to call it off, so stop here. */
            fprintf(stderr, "ferry-bench-control: cannot start client %d of %d: %s\n", i,
                    cfg.clients, strerror(err));
            exit(1);
        }
    }
    /* The clients read the deadline only after the second barrier. */
    pthread_barrier_wait(&sh.start);
    cpu0 = cfg.n_server_pids > 0 ? servers_cpu_us(&cfg) : -1;
    t0 = bench_now_ns();
    sh.deadline_ns = t0 + (uint64_t)(cfg.seconds * 1e9);
    pthread_barrier_wait(&sh.start);
    for (int i = 0; i < cfg.clients; i++) {
        pthread_join(threads[i], NULL);
        errors += clients[i].errors;
    }
    if (cfg.mode == MODE_POPULATE) {
        rc = errors == 0 ? 0 : 1;
        if (errors > 0) {
            fprintf(stderr, "populate: %ld errors; first: %s\n", errors, clients[0].first_error);
        }
    } else {
        double cpu1 = cpu0 >= 0 ? servers_cpu_us(&cfg) : -1;
        report(&cfg, clients, (double)(bench_now_ns() - t0) / 1e9,
               cpu0 >= 0 && cpu1 >= 0 ? cpu1 - cpu0 : -1);
        rc = 0;
    }
    pthread_barrier_destroy(&sh.start);
out:
    if (clients != NULL) {
        teardown(&sh, clients);
    }
    free(clients);
    free(threads);
    return rc;
}
