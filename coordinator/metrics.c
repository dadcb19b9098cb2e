/*
 * metrics.c: the coordinator's Prometheus metrics (metrics.h).
 *
 * Series:
 *   ferry_rpc_requests_total{method,code}        counter, per finished call
 *   ferry_rpc_request_duration_seconds{method}   histogram, accepted to status sent
 *   ferry_rpc_in_flight{method}                  gauge; Watch's is the open streams
 *   ferry_etcd_requests_total{kind,result}       counter, per etcd request
 *   ferry_etcd_request_duration_seconds{kind}    histogram
 *   ferry_healthy                                gauge, 1 while etcd answers (Health)
 *   ferry_view_watch_live                        gauge, 1 while the view's etcd watch is up
 *   ferry_view_operations                        gauge, records in the view
 *   ferry_operations{state}                      gauge, records in the view by state
 *   ferry_watch_events_sent_total                counter, events queued on Watch streams
 *   ferry_parked_waits                           gauge, Lookup/Claim calls parked (wait_ms)
 *   ferry_watch_queued_bytes                     gauge, unsent bytes on Watch streams, together
 *   ferry_watch_streams_behind{lag}              gauge, Watch streams whose clients read 1s or
 *                                                10s or more behind live
 *   ferry_watch_memory_total{action}             counter, Watch streams ended or refused to
 *                                                bound them (evicted, ended, refused)
 *   ferry_peers_holding{kind}                    gauge, client hosts holding a Watch stream
 *                                                (watch), a parked wait (wait), a read
 *                                                (read), a write (write) or a lease renewal
 *                                                (renewal) waiting on etcd, or owning a record
 *                                                (stored)
 *   ferry_etcd_reads_held                        gauge, reads waiting on etcd (running and
 *                                                queued), all hosts
 *   ferry_peer_refusals_total{kind}              counter, Watch streams (watch), parked waits
 *                                                (wait), etcd reads (read), etcd writes
 *                                                (write), lease renewals (renewal) and
 *                                                Registers (stored) refused for their host's
 *                                                share
 *   ferry_view_events_total{type,state}          counter, changes the view applied
 *   ferry_lease_expiries_total                   counter, records whose lease ran out
 *   ferry_claim_expiries_total                   counter, claims whose lease ran out
 *   ferry_claim_ends_total{decided}              counter, claims whose key went, by where
 *                                                the expiry check was decided (view|transition)
 *   ferry_claim_ends_waiting                     gauge, a claim end's writes etcd refused, to be
 *                                                tried again (an expiry, a claim key's deletion)
 *   ferry_claim_ends_pending                     gauge, claim ends waiting for room in the
 *                                                etcd work queue (64 queued at most)
 *   ferry_limit_refusals_total{limit}            counter, calls refused for a bound of the
 *                                                whole replica, by its flag (request_memory_mib,
 *                                                request_size, max_waits, max_watches,
 *                                                watch_queue_kib, etcd_queue)
 *   ferry_limit{name}                            gauge, the bounds configured (max_waits,
 *                                                max_watches, request_memory_bytes,
 *                                                watch_memory_bytes, watch_queue_bytes)
 *   ferry_request_bytes_held                     gauge, requests' bytes calls in progress hold
 *   ferry_reply_bytes_held                       gauge, reads' replies not yet taken
 *   ferry_build_info{version,name}               gauge, always 1
 * method is the gRPC path ("/ferry.v1.Coordinator/Get", "unknown" for
 * methods not served); code the gRPC status name; kind the etcd gateway path
 * without /v3/ ("kv/txn"); result "ok" or the ferry status name.
 *
 * Series live in two fixed tables, found by name; names come only from the
 * server's method table and the etcd client's fixed paths, so they stay
 * few; past METRICS_MAX_SERIES, further names count under "other".
 *
 * The HTTP side is unauthenticated, so what a client can hold there is
 * bounded (METRICS_HTTP_*): each connection is a file descriptor of the
 * process that also accepts gRPC, and gRPC core 1.51 stops accepting for
 * good after one accept fails with EMFILE. It polls with epoll (or poll),
 * never select(), which drops any connection whose descriptor is past
 * FD_SETSIZE (1024), as a coordinator with many clients has.
 *
 * Locking: metrics->lock guards both tables; the hooks hold it for a few
 * increments (the rpc hook runs under a call's lock: call lock before
 * metrics->lock, and metrics->lock never calls out). The HTTP thread renders
 * under it.
 */
#include "metrics.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "common/log.h"
#include "config.h"
#include "ferry/v1/types.pb-c.h"

#define METRICS_BUCKETS    14
#define METRICS_MAX_SERIES 48
#define METRICS_CODES      17 /* gRPC codes 0..16, fixed by gRPC */
/* Indexed by -status and by state: as many as their tables hold (both run
 * from 0 without a gap), so a code or state added there is counted here. */
#define FERRY__METRICS_STATUS_ONE(name, value, msg) +1
enum { METRICS_STATUSES = 0 FERRY_FOREACH_STATUS(FERRY__METRICS_STATUS_ONE) };
#define METRICS_STATES FERRY_OP_STATE_COUNT

/* Bounds on the HTTP side (see the header comment). A scrape is one short
 * request, and a few Prometheus servers keep one connection each: 32 in
 * all leaves room for them and for a person with curl. No one address may
 * hold more than 8, so one client cannot take the others' room; a
 * connection silent for 10 s is closed (longer than any scrape takes to
 * send its request, shorter than the usual scrape interval of 15 s to
 * 1 min, so a kept-alive connection is reopened per scrape, not held). */
#define METRICS_HTTP_MAX_CONNECTIONS 32
#define METRICS_HTTP_MAX_PER_ADDRESS 8
#define METRICS_HTTP_IDLE_TIMEOUT_S  10

static const double bucket_le[METRICS_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                                  0.1,    0.25,  0.5,    1,     2.5,  5,     10};

typedef struct {
    uint64_t buckets[METRICS_BUCKETS]; /* not cumulative; summed when rendered */
    uint64_t count;
    double sum_s;
} histogram_t;

typedef struct {
    char name[160];
    uint64_t by_code[METRICS_CODES];
    int64_t in_flight;
    histogram_t latency;
} rpc_series_t;

typedef struct {
    char name[64];
    uint64_t by_status[METRICS_STATUSES];
    histogram_t latency;
} etcd_series_t;

struct coord_metrics {
    pthread_mutex_t lock; /* guards rpc, n_rpc, etcd, n_etcd */
    rpc_series_t rpc[METRICS_MAX_SERIES];
    size_t n_rpc;
    etcd_series_t etcd[METRICS_MAX_SERIES];
    size_t n_etcd;
    uint64_t events[2][METRICS_STATES]; /* [is_delete][state] */
    uint64_t lease_expiries;
    uint64_t claim_expiries;

    /* Constant after create (sample_arg: after set_sample_arg). */
    char *listen;
    char *version; /* escaped for a label value */
    char *name;    /* likewise */
    void (*sample)(void *arg, coord_metrics_sample_t *out);
    void *sample_arg;
    struct MHD_Daemon *daemon;
};

static void histogram_observe(histogram_t *h, int64_t duration_ns)
{
    double s = (double)duration_ns / 1e9;

    for (int i = 0; i < METRICS_BUCKETS; i++) {
        if (s <= bucket_le[i]) {
            h->buckets[i]++;
            break;
        }
    }
    h->count++;
    h->sum_s += s;
}

/* The index of the series named `key` in a table of n names (each at
 * `stride` bytes from the last, name_size long), made if new; the last slot
 * ("other") once the table is full. Caller holds the lock. */
static size_t series_index(char *names, size_t stride, size_t name_size, size_t *n, const char *key)
{
    size_t i;

    for (i = 0; i < *n; i++) {
        if (strcmp(names + i * stride, key) == 0) {
            return i;
        }
    }
    if (*n == METRICS_MAX_SERIES) {
        return METRICS_MAX_SERIES - 1;
    }
    snprintf(names + i * stride, name_size, "%s", i == METRICS_MAX_SERIES - 1 ? "other" : key);
    (*n)++;
    return i;
}

static rpc_series_t *rpc_series(coord_metrics_t *m, const char *method)
{
    return &m->rpc[series_index(m->rpc[0].name, sizeof(m->rpc[0]), sizeof(m->rpc[0].name),
                                &m->n_rpc, method != NULL ? method : "unknown")];
}

static etcd_series_t *etcd_series(coord_metrics_t *m, const char *path)
{
    if (strncmp(path, "/v3/", 4) == 0) {
        path += 4;
    }
    return &m->etcd[series_index(m->etcd[0].name, sizeof(m->etcd[0]), sizeof(m->etcd[0].name),
                                 &m->n_etcd, path)];
}

static void on_call_started(void *arg, const char *method)
{
    coord_metrics_t *m = arg;

    pthread_mutex_lock(&m->lock);
    rpc_series(m, method)->in_flight++;
    pthread_mutex_unlock(&m->lock);
}

static void on_call_ended(void *arg, const char *method, int grpc_code, int64_t duration_ns)
{
    coord_metrics_t *m = arg;
    rpc_series_t *s;

    pthread_mutex_lock(&m->lock);
    s = rpc_series(m, method);
    s->in_flight--;
    s->by_code[grpc_code >= 0 && grpc_code < METRICS_CODES ? grpc_code : 2 /* UNKNOWN */]++;
    histogram_observe(&s->latency, duration_ns);
    pthread_mutex_unlock(&m->lock);
}

static void on_etcd_done(void *arg, const char *path, ferry_status_t status, int64_t duration_ns)
{
    coord_metrics_t *m = arg;
    etcd_series_t *s;
    int index = -(int)status;

    pthread_mutex_lock(&m->lock);
    s = etcd_series(m, path);
    s->by_status[index >= 0 && index < METRICS_STATUSES ? index : (int)-FERRY_ERR_INTERNAL]++;
    histogram_observe(&s->latency, duration_ns);
    pthread_mutex_unlock(&m->lock);
}

void coord_metrics_count_event(coord_metrics_t *m, bool is_delete, int state, int32_t error_code)
{
    pthread_mutex_lock(&m->lock);
    m->events[is_delete][state >= 0 && state < METRICS_STATES ? state : 0]++;
    if (is_delete && state == FERRY__V1__OPERATION_STATE__OPERATION_STATE_EXPIRED) {
        m->lease_expiries++;
    }
    if (!is_delete && state == FERRY__V1__OPERATION_STATE__OPERATION_STATE_ERRORED &&
        error_code == FERRY_ERR_EXPIRED) {
        m->claim_expiries++;
    }
    pthread_mutex_unlock(&m->lock);
}

rpc_observer_t coord_metrics_rpc_observer(coord_metrics_t *metrics)
{
    rpc_observer_t o = {
        .call_started = on_call_started, .call_ended = on_call_ended, .arg = metrics};
    return o;
}

etcd_observer_t coord_metrics_etcd_observer(coord_metrics_t *metrics)
{
    etcd_observer_t o = {.request_done = on_etcd_done, .arg = metrics};
    return o;
}

/* --- exposition ------------------------------------------------------------ */

static void histogram_render(FILE *f, const char *metric, const char *label, const char *value,
                             const histogram_t *h)
{
    uint64_t cumulative = 0;

    for (int i = 0; i < METRICS_BUCKETS; i++) {
        cumulative += h->buckets[i];
        fprintf(f, "%s_bucket{%s=\"%s\",le=\"%g\"} %" PRIu64 "\n", metric, label, value,
                bucket_le[i], cumulative);
    }
    fprintf(f, "%s_bucket{%s=\"%s\",le=\"+Inf\"} %" PRIu64 "\n", metric, label, value, h->count);
    fprintf(f, "%s_sum{%s=\"%s\"} %.9f\n", metric, label, value, h->sum_s);
    fprintf(f, "%s_count{%s=\"%s\"} %" PRIu64 "\n", metric, label, value, h->count);
}

/* "ok", or the status's name in lower case without its prefix
 * ("unavailable" for FERRY_ERR_UNAVAILABLE). */
static void status_label(ferry_status_t status, char *buf, size_t size)
{
    const char *name = ferry_status_name(status);
    size_t i;

    if (strncmp(name, "FERRY_", 6) == 0) {
        name += 6;
    }
    if (strncmp(name, "ERR_", 4) == 0) {
        name += 4;
    }
    for (i = 0; name[i] != '\0' && i + 1 < size; i++) {
        buf[i] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] - 'A' + 'a' : name[i]);
    }
    buf[i] = '\0';
}

static void render_rpc(FILE *f, const coord_metrics_t *m)
{
    fputs("# HELP ferry_rpc_requests_total gRPC calls finished, by method and status code.\n"
          "# TYPE ferry_rpc_requests_total counter\n",
          f);
    for (size_t i = 0; i < m->n_rpc; i++) {
        for (int c = 0; c < METRICS_CODES; c++) {
            if (m->rpc[i].by_code[c] != 0) {
                fprintf(f, "ferry_rpc_requests_total{method=\"%s\",code=\"%s\"} %" PRIu64 "\n",
                        m->rpc[i].name, rpc_grpc_code_name(c), m->rpc[i].by_code[c]);
            }
        }
    }
    fputs("# HELP ferry_rpc_in_flight gRPC calls accepted and not yet finished (Watch: open "
          "streams).\n# TYPE ferry_rpc_in_flight gauge\n",
          f);
    for (size_t i = 0; i < m->n_rpc; i++) {
        fprintf(f, "ferry_rpc_in_flight{method=\"%s\"} %" PRId64 "\n", m->rpc[i].name,
                m->rpc[i].in_flight);
    }
    fputs("# HELP ferry_rpc_request_duration_seconds gRPC call latency, accepted to status "
          "sent.\n# TYPE ferry_rpc_request_duration_seconds histogram\n",
          f);
    for (size_t i = 0; i < m->n_rpc; i++) {
        histogram_render(f, "ferry_rpc_request_duration_seconds", "method", m->rpc[i].name,
                         &m->rpc[i].latency);
    }
}

static void render_etcd(FILE *f, const coord_metrics_t *m)
{
    char result[48];

    fputs("# HELP ferry_etcd_requests_total etcd requests (gRPC or JSON gateway), by kind and "
          "result.\n"
          "# TYPE ferry_etcd_requests_total counter\n",
          f);
    for (size_t i = 0; i < m->n_etcd; i++) {
        for (int s = 0; s < METRICS_STATUSES; s++) {
            if (m->etcd[i].by_status[s] != 0) {
                status_label((ferry_status_t)-s, result, sizeof(result));
                fprintf(f, "ferry_etcd_requests_total{kind=\"%s\",result=\"%s\"} %" PRIu64 "\n",
                        m->etcd[i].name, result, m->etcd[i].by_status[s]);
            }
        }
    }
    fputs("# HELP ferry_etcd_request_duration_seconds etcd request latency (gRPC or JSON "
          "gateway).\n"
          "# TYPE ferry_etcd_request_duration_seconds histogram\n",
          f);
    for (size_t i = 0; i < m->n_etcd; i++) {
        histogram_render(f, "ferry_etcd_request_duration_seconds", "kind", m->etcd[i].name,
                         &m->etcd[i].latency);
    }
}

static void render_events(FILE *f, const coord_metrics_t *m)
{
    fputs("# HELP ferry_view_events_total Changes this replica's view applied, by type and the "
          "operation's state after it.\n# TYPE ferry_view_events_total counter\n",
          f);
    for (int d = 0; d < 2; d++) {
        for (int s = 0; s < METRICS_STATES; s++) {
            const ProtobufCEnumValue *v =
                protobuf_c_enum_descriptor_get_value(&ferry__v1__operation_state__descriptor, s);

            if (m->events[d][s] != 0 && v != NULL) {
                fprintf(f, "ferry_view_events_total{type=\"%s\",state=\"%s\"} %" PRIu64 "\n",
                        d ? "delete" : "put", v->name + strlen("OPERATION_STATE_"),
                        m->events[d][s]);
            }
        }
    }
    fprintf(f,
            "# HELP ferry_lease_expiries_total Operations whose owner's lease ran out.\n"
            "# TYPE ferry_lease_expiries_total counter\nferry_lease_expiries_total %" PRIu64
            "\n# HELP ferry_claim_expiries_total Claims whose lease ran out (operation "
            "ERRORED).\n# TYPE ferry_claim_expiries_total counter\n"
            "ferry_claim_expiries_total %" PRIu64 "\n",
            m->lease_expiries, m->claim_expiries);
}

char *coord_metrics_render(coord_metrics_t *m)
{
    coord_metrics_sample_t sample = {0};
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);

    if (f == NULL) {
        return NULL;
    }
    if (m->sample != NULL) {
        m->sample(m->sample_arg, &sample);
    }
    pthread_mutex_lock(&m->lock);
    render_rpc(f, m);
    render_etcd(f, m);
    render_events(f, m);
    pthread_mutex_unlock(&m->lock);
    fprintf(f,
            "# HELP ferry_healthy 1 while this replica reaches etcd (Health SERVING).\n"
            "# TYPE ferry_healthy gauge\nferry_healthy %d\n",
            sample.healthy ? 1 : 0);
    fprintf(f,
            "# HELP ferry_view_watch_live 1 while the view is loaded and its etcd watch "
            "connected.\n# TYPE ferry_view_watch_live gauge\nferry_view_watch_live %d\n",
            sample.view_live ? 1 : 0);
    fprintf(f,
            "# HELP ferry_view_operations Operation records in this replica's view.\n"
            "# TYPE ferry_view_operations gauge\nferry_view_operations %zu\n",
            sample.view_size);
    fputs("# HELP ferry_operations Operation records in this replica's view, by state (a record "
          "whose owner's lease ended is deleted, so EXPIRED stays 0 here; see "
          "ferry_lease_expiries_total).\n# TYPE ferry_operations gauge\n",
          f);
#define METRICS_RENDER_STATE(name, final, status, moves)      \
    fprintf(f, "ferry_operations{state=\"" #name "\"} %zu\n", \
            sample.view_by_state[FERRY__V1__OPERATION_STATE__OPERATION_STATE_##name]);
    FERRY_FOREACH_OP_STATE(METRICS_RENDER_STATE)
#undef METRICS_RENDER_STATE
    fprintf(f,
            "# HELP ferry_watch_events_sent_total Events queued on Watch streams (one per stream "
            "per event, replays included).\n# TYPE ferry_watch_events_sent_total counter\n"
            "ferry_watch_events_sent_total %" PRIu64 "\n",
            sample.watch_events_sent);
    fprintf(f,
            "# HELP ferry_parked_waits Lookup and Claim calls parked until their operation "
            "appears (bounded by --max-waits).\n# TYPE ferry_parked_waits gauge\n"
            "ferry_parked_waits %zu\n",
            sample.parked_waits);
    fprintf(
        f,
        "# HELP ferry_watch_queued_bytes Memory held by messages queued on Watch streams "
        "that their clients have not taken, all streams together (a message shared by "
        "streams once, with each queue entry's overhead; at most twice --watch-memory-mib, or it "
        "plus the largest revision streams share).\n"
        "# TYPE ferry_watch_queued_bytes gauge\nferry_watch_queued_bytes %zu\n"
        "# HELP ferry_watch_streams_behind Watch streams whose clients read a second (1s) or "
        "ten seconds (10s) or more behind live (the oldest message not taken was queued that "
        "long ago): they do not keep up, and --watch-memory-mib ends them first for room (at "
        "1s those alone holding some bytes, at 10s any).\n"
        "# TYPE ferry_watch_streams_behind gauge\n"
        "ferry_watch_streams_behind{lag=\"1s\"} %zu\n"
        "ferry_watch_streams_behind{lag=\"10s\"} %zu\n"
        "# HELP ferry_watch_memory_total Watch streams that --watch-memory-mib ended or "
        "refused: evicted (further behind than the stream a unit went to, alone holding some "
        "bytes or ten seconds behind live, what its client had not read dropped, to make room "
        "for another's revision or first message), ended (its own revision did not fit, none "
        "further "
        "behind to end), refused (its first message did not fit).\n"
        "# TYPE ferry_watch_memory_total counter\n"
        "ferry_watch_memory_total{action=\"evicted\"} %" PRIu64 "\n"
        "ferry_watch_memory_total{action=\"ended\"} %" PRIu64 "\n"
        "ferry_watch_memory_total{action=\"refused\"} %" PRIu64 "\n",
        sample.watch_queued_bytes, sample.watch_behind_1s, sample.watch_behind_10s,
        sample.watch_memory_evicted, sample.watch_memory_ended, sample.watch_memory_refused);
    fprintf(f,
            "# HELP ferry_peers_holding Client hosts (addresses without the port; IPv6 by "
            "/64) holding a Watch stream, a parked Lookup/Claim, a read, a write or a lease "
            "renewal waiting on "
            "etcd, each host bounded by --max-watches-per-peer, --max-waits-per-peer, "
            "--etcd-reads-per-peer and --etcd-writes-per-peer; and (stored) those whose "
            "Registers own a record in etcd, bounded by --stored-mib-per-peer.\n"
            "# TYPE ferry_peers_holding gauge\n"
            "ferry_peers_holding{kind=\"watch\"} %zu\nferry_peers_holding{kind=\"wait\"} %zu\n"
            "ferry_peers_holding{kind=\"read\"} %zu\nferry_peers_holding{kind=\"write\"} %zu\n"
            "ferry_peers_holding{kind=\"renewal\"} %zu\n"
            "ferry_peers_holding{kind=\"stored\"} %zu\n"
            "# HELP ferry_etcd_reads_held Reads waiting on etcd (a Lookup or Get the view does "
            "not hold, a linearizable one, List), running and queued, all hosts: a host's "
            "--etcd-reads-per-peer binds while they fill half of --etcd-inflight + "
            "--etcd-queue.\n# TYPE ferry_etcd_reads_held gauge\nferry_etcd_reads_held %zu\n"
            "# HELP ferry_peer_refusals_total Watch streams, parked Lookup/Claim calls, reads "
            "and writes and lease renewals (KeepAlive) that need etcd refused because their client "
            "host "
            "held its share (--max-watches-per-peer, --max-waits-per-peer, "
            "--etcd-reads-per-peer, --etcd-writes-per-peer), and Registers (stored) refused "
            "because its records would pass its share of etcd (--stored-mib-per-peer).\n"
            "# TYPE ferry_peer_refusals_total counter\n"
            "ferry_peer_refusals_total{kind=\"watch\"} %" PRIu64 "\n"
            "ferry_peer_refusals_total{kind=\"wait\"} %" PRIu64 "\n"
            "ferry_peer_refusals_total{kind=\"read\"} %" PRIu64 "\n"
            "ferry_peer_refusals_total{kind=\"write\"} %" PRIu64 "\n"
            "ferry_peer_refusals_total{kind=\"renewal\"} %" PRIu64 "\n"
            "ferry_peer_refusals_total{kind=\"stored\"} %" PRIu64 "\n",
            sample.watch_peers, sample.wait_peers, sample.read_peers, sample.write_peers,
            sample.renewal_peers, sample.stored_peers, sample.etcd_reads_held,
            sample.watch_peer_refusals, sample.wait_peer_refusals, sample.read_peer_refusals,
            sample.write_peer_refusals, sample.renewal_peer_refusals, sample.stored_peer_refusals);
    fprintf(f,
            "# HELP ferry_claim_ends_total Claims whose key went (finished, cancelled or "
            "expired), by where the expiry check was decided: on the view (the record was past "
            "CLAIMED, no etcd read) or by a transition (an expiry, or a view that could not "
            "tell).\n# TYPE ferry_claim_ends_total counter\n"
            "ferry_claim_ends_total{decided=\"view\"} %" PRIu64 "\n"
            "ferry_claim_ends_total{decided=\"transition\"} %" PRIu64 "\n",
            sample.claim_ends_on_view, sample.claim_ends_checked);
    fprintf(f,
            "# HELP ferry_claim_ends_waiting Writes a claim's end left (marking an expired claim "
            "ERRORED, deleting a claim key an expired owner left) that etcd refused, waiting to "
            "be tried again.\n# TYPE ferry_claim_ends_waiting gauge\n"
            "ferry_claim_ends_waiting %zu\n"
            "# HELP ferry_claim_ends_pending Claims that ended (a Revoke of a lease holding many "
            "ends them at once) whose check waits for room in the etcd work queue, where at most "
            "64 go at a time.\n# TYPE ferry_claim_ends_pending gauge\n"
            "ferry_claim_ends_pending %zu\n",
            sample.claim_ends_waiting, sample.claim_ends_pending);
    fprintf(f,
            "# HELP ferry_limit_refusals_total Calls refused (for watch_queue_kib, Watch streams "
            "ended) because a bound of the whole replica was reached, by the flag to raise: "
            "request_memory_mib (the bytes of requests calls in progress hold), request_size (a "
            "method's own bound on one request, fixed), max_waits, max_watches, watch_queue_kib "
            "(a stream's client did not read), etcd_queue (--etcd-inflight and --etcd-queue "
            "full). Per-host shares are in ferry_peer_refusals_total, --watch-memory-mib in "
            "ferry_watch_memory_total.\n"
            "# TYPE ferry_limit_refusals_total counter\n"
            "ferry_limit_refusals_total{limit=\"request_memory_mib\"} %" PRIu64 "\n"
            "ferry_limit_refusals_total{limit=\"request_size\"} %" PRIu64 "\n"
            "ferry_limit_refusals_total{limit=\"max_waits\"} %" PRIu64 "\n"
            "ferry_limit_refusals_total{limit=\"max_watches\"} %" PRIu64 "\n"
            "ferry_limit_refusals_total{limit=\"watch_queue_kib\"} %" PRIu64 "\n"
            "ferry_limit_refusals_total{limit=\"etcd_queue\"} %" PRIu64 "\n",
            sample.refused_request_memory, sample.refused_request_size, sample.refused_max_waits,
            sample.refused_max_watches, sample.refused_watch_queue, sample.refused_etcd_queue);
    fprintf(f,
            "# HELP ferry_limit The bounds this replica was started with, by name: max_waits "
            "(--max-waits), max_watches (--max-watches), request_memory_bytes "
            "(--request-memory-mib), watch_memory_bytes (--watch-memory-mib), "
            "watch_queue_bytes (--watch-queue-kib); for rules relative to them.\n"
            "# TYPE ferry_limit gauge\n"
            "ferry_limit{name=\"max_waits\"} %zu\nferry_limit{name=\"max_watches\"} %zu\n"
            "ferry_limit{name=\"request_memory_bytes\"} %zu\n"
            "ferry_limit{name=\"watch_memory_bytes\"} %zu\n"
            "ferry_limit{name=\"watch_queue_bytes\"} %zu\n"
            "# HELP ferry_request_bytes_held Bytes of requests the calls in progress hold, "
            "bounded by --request-memory-mib (ferry_limit{name=\"request_memory_bytes\"}).\n"
            "# TYPE ferry_request_bytes_held gauge\nferry_request_bytes_held %zu\n"
            "# HELP ferry_reply_bytes_held Bytes of the replies of reads in progress (Lookup, "
            "Get, List) their clients have not taken, bounded apart by as much as "
            "--request-memory-mib.\n"
            "# TYPE ferry_reply_bytes_held gauge\nferry_reply_bytes_held %zu\n",
            sample.limit_max_waits, sample.limit_max_watches, sample.limit_request_memory_bytes,
            sample.limit_watch_memory_bytes, sample.limit_watch_queue_bytes,
            sample.request_bytes_held, sample.reply_bytes_held);
    fprintf(f,
            "# HELP ferry_build_info The running ferry-coordinator.\n"
            "# TYPE ferry_build_info gauge\nferry_build_info{version=\"%s\",name=\"%s\"} 1\n",
            m->version, m->name);
    if (fclose(f) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

/* --- HTTP ------------------------------------------------------------------ */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    static const char not_found[] = "not found: try GET /metrics\n";
    coord_metrics_t *m = cls;
    struct MHD_Response *resp;
    enum MHD_Result rc;
    char *text = NULL;

    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)con_cls;
    if (strcmp(method, "GET") == 0 && strcmp(url, "/metrics") == 0) {
        text = coord_metrics_render(m);
    }
    if (text != NULL) {
        resp = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    } else {
        resp = MHD_create_response_from_buffer(sizeof(not_found) - 1, (void *)not_found,
                                               MHD_RESPMEM_PERSISTENT);
    }
    if (resp == NULL) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type",
                            text != NULL ? "text/plain; version=0.0.4; charset=utf-8"
                                         : "text/plain; charset=utf-8");
    rc = MHD_queue_response(conn, text != NULL ? MHD_HTTP_OK : MHD_HTTP_NOT_FOUND, resp);
    MHD_destroy_response(resp);
    return rc;
}

/* A label value in the text format: backslash, double quote and newline
 * escaped (\\, \", \n), so any --name leaves the exposition parseable.
 * Malloc'd; NULL without memory. */
static char *label_value(const char *text)
{
    char *out = malloc(2 * strlen(text) + 1);
    char *p = out;

    if (out == NULL) {
        return NULL;
    }
    for (; *text != '\0'; text++) {
        if (*text == '\\' || *text == '"' || *text == '\n') {
            *p++ = '\\';
            *p++ = *text == '\n' ? 'n' : *text;
        } else {
            *p++ = *text;
        }
    }
    *p = '\0';
    return out;
}

ferry_status_t coord_metrics_create(const coord_metrics_params_t *params,
                                    coord_metrics_t **metrics_p)
{
    coord_metrics_t *m;
    int rc;

    if (params == NULL || params->listen == NULL || metrics_p == NULL) {
        return FERRY_ERR_MISUSE;
    }
    m = calloc(1, sizeof(*m));
    if (m == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    rc = pthread_mutex_init(&m->lock, NULL);
    if (rc != 0) {
        ferry_error("metrics: pthread_mutex_init: %s", strerror(rc));
        free(m);
        return FERRY_ERR_IO;
    }
    m->listen = strdup(params->listen);
    m->version = label_value(params->version != NULL ? params->version : "");
    m->name = label_value(params->name != NULL ? params->name : "");
    m->sample = params->sample;
    m->sample_arg = params->sample_arg;
    if (m->listen == NULL || m->version == NULL || m->name == NULL) {
        coord_metrics_destroy(m);
        return FERRY_ERR_NO_MEMORY;
    }
    *metrics_p = m;
    return FERRY_OK;
}

void coord_metrics_set_sample_arg(coord_metrics_t *metrics, void *arg)
{
    metrics->sample_arg = arg;
}

ferry_status_t coord_metrics_start(coord_metrics_t *m, int *port_p)
{
    struct addrinfo *ai;
    const union MHD_DaemonInfo *info;
    unsigned int flags = MHD_USE_AUTO_INTERNAL_THREAD;
    const char *why = coord_config_metrics_addr(m->listen, &ai);

    if (why != NULL) {
        ferry_error("metrics: --metrics-listen '%s': %s", m->listen, why);
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    /* MHD_USE_AUTO takes epoll, else poll, else select: refuse the last. */
    if (MHD_is_feature_supported(MHD_FEATURE_EPOLL) != MHD_YES &&
        MHD_is_feature_supported(MHD_FEATURE_POLL) != MHD_YES) {
        ferry_error("metrics: this libmicrohttpd has neither epoll nor poll");
        freeaddrinfo(ai);
        return FERRY_ERR_IO;
    }
    if (ai->ai_family == AF_INET6) {
        flags |= MHD_USE_IPv6;
    }
    m->daemon = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, m, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned int)METRICS_HTTP_MAX_CONNECTIONS,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned int)METRICS_HTTP_MAX_PER_ADDRESS,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int)METRICS_HTTP_IDLE_TIMEOUT_S, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (m->daemon == NULL) {
        ferry_error("metrics: cannot serve on %s", m->listen);
        return FERRY_ERR_IO;
    }
    info = MHD_get_daemon_info(m->daemon, MHD_DAEMON_INFO_BIND_PORT);
    ferry_info("metrics on http://%s/metrics (port %d; at most %d connections, %d per address, "
               "closed after %d s idle)",
               m->listen, info != NULL ? info->port : 0, METRICS_HTTP_MAX_CONNECTIONS,
               METRICS_HTTP_MAX_PER_ADDRESS, METRICS_HTTP_IDLE_TIMEOUT_S);
    if (port_p != NULL) {
        *port_p = info != NULL ? info->port : 0;
    }
    return FERRY_OK;
}

void coord_metrics_stop(coord_metrics_t *m)
{
    if (m != NULL && m->daemon != NULL) {
        MHD_stop_daemon(m->daemon);
        m->daemon = NULL;
    }
}

void coord_metrics_destroy(coord_metrics_t *m)
{
    if (m == NULL) {
        return;
    }
    coord_metrics_stop(m);
    pthread_mutex_destroy(&m->lock);
    free(m->listen);
    free(m->version);
    free(m->name);
    free(m);
}
