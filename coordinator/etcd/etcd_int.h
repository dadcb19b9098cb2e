/*
 * etcd_int.h: what the files of the etcd client share, and nothing else
 * includes. etcd.h is the public side.
 *
 * Files:
 *   etcd_json.c    base64, 64-bit numbers as JSON strings, reply parsing
 *                  (pure functions: the unit tests call them directly)
 *   etcd_client.c  the client: endpoints, the handle pool, one POST with
 *                  failover, status mapping, the thread-local last error
 *   etcd_auth.c    the etcd auth token: authenticate, refresh on code 16
 *   etcd_kv.c      put, range, delete-range, txn: their argument checks,
 *                  then the client's transport (etcd_kv_ops_t); and the
 *                  gateway's transport (etcd__kv_gateway_ops)
 *   etcd_grpc.c    the gRPC transport (etcd__kv_grpc_ops): the same four
 *                  over etcd's native gRPC API (KV service), a channel per
 *                  endpoint, one call with failover, the messages to and
 *                  from etcd.h's types
 *   etcd_lease.c   grant, keep-alive, revoke
 *   etcd_watch.c   a watch stream on its own thread, over either transport
 *
 * Names: etcd__ for what crosses files here, static for the rest.
 * Buffers decoded from base64 are always malloc'ed with one extra NUL byte
 * after the data, so a text key can be printed as a C string.
 */
#ifndef FERRY_COORD_ETCD_INT_H
#define FERRY_COORD_ETCD_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "coordinator/etcd/etcd.h"
#include "etcdserverpb/kv.pb-c.h"
#include "rpc/rpc.h"

/* Stand-in for the gRPC status codes etcd puts in "code". */
enum {
    ETCD_GRPC_CANCELLED = 1,
    ETCD_GRPC_UNKNOWN = 2,
    ETCD_GRPC_INVALID_ARGUMENT = 3,
    ETCD_GRPC_DEADLINE_EXCEEDED = 4,
    ETCD_GRPC_NOT_FOUND = 5,
    ETCD_GRPC_PERMISSION_DENIED = 7,
    ETCD_GRPC_RESOURCE_EXHAUSTED = 8,
    ETCD_GRPC_FAILED_PRECONDITION = 9,
    ETCD_GRPC_ABORTED = 10,
    ETCD_GRPC_OUT_OF_RANGE = 11,
    ETCD_GRPC_UNIMPLEMENTED = 12,
    ETCD_GRPC_INTERNAL = 13,
    ETCD_GRPC_UNAVAILABLE = 14,
    ETCD_GRPC_DATA_LOSS = 15,
    ETCD_GRPC_UNAUTHENTICATED = 16,
};

/* How a request may be sent (etcd__call_flags). */
enum {
    /* Safe to send twice (reads, status, keep-alive, revoke, authenticate):
     * an endpoint that gives no answer within ETCD_ATTEMPT_MS, or answers
     * "unavailable", is left for the next one. Without it a request that
     * may have reached etcd is never sent again. */
    ETCD_CALL_RETRY = 1u << 0,
    /* A health probe: the whole call within ETCD_PROBE_MS. */
    ETCD_CALL_PROBE = 1u << 1,
    /* /v3/maintenance/status: an answer from a member that knows no leader
     * (it cannot commit) counts as no answer. */
    ETCD_CALL_LEADER = 1u << 2,
    /* Made for another request (authenticate, for the token it needs),
     * whose caller logs the outcome: an unavailable etcd is logged here at
     * debug, not warned of twice (or, under a probe, at all). */
    ETCD_CALL_INNER = 1u << 3,
    /* Set by the call itself: the request has only the time left before
     * its caller's deadline (etcd__budget_ms cut it). An attempt cut to
     * under ETCD_ATTEMPT_MS that runs out of it says nothing of etcd
     * (etcd__ran_out). */
    ETCD_CALL_CUT = 1u << 4,
};

/* Whether the thread's last request failed for want of its caller's time:
 * an attempt its caller's deadline cut to under ETCD_ATTEMPT_MS timed out,
 * or there was no time left to try, and no attempt before it that had the
 * time to be answered failed. Such a failure marks no endpoint
 * suspect, is logged at debug, not warned of, and reaches the observer
 * (metrics) as FERRY_ERR_TIMED_OUT: a caller with a short deadline neither
 * moves every request off a member that answers in its usual time nor
 * makes a healthy etcd look failing. Its caller still gets
 * FERRY_ERR_UNAVAILABLE. An attempt that had ETCD_ATTEMPT_MS or more and
 * got no answer is etcd's, whatever the caller's deadline. */
extern _Thread_local bool etcd__ran_out;

/* The calling thread's last request failed because etcd's reply passed
 * ETCD_REPLY_MAX (etcd_reply_too_large); cleared with the error. */
extern _Thread_local bool etcd__too_large;
/* Records that failure, naming the bound and what to do (both transports'
 * words, so that the log reads the same). */
void etcd__set_too_large(const char *url);
/* The calling thread's last request failed because etcd is out of space
 * (etcd_no_space); set by etcd__error_status, cleared with the error. */
extern _Thread_local bool etcd__no_space;

/* Fault budgets. A member that is frozen (SIGSTOP, a hung disk) still
 * accepts TCP connections, so only silence shows it. */
enum {
    ETCD_ATTEMPT_MS = 1000, /* one try of a RETRY request on one endpoint */
    ETCD_PROBE_MS = 3000,   /* a whole PROBE request */
    ETCD_SUSPECT_MS = 5000, /* a failed endpoint is tried after all others */
};

/* A transport for key-value requests and watches, as Redis's
 * ConnectionType: etcd__kv_grpc_ops (the default) or etcd__kv_gateway_ops
 * (params.kv_gateway). etcd_client_create picks one and the client keeps
 * it for its life; etcd.h's functions check their arguments
 * (FERRY_ERR_MISUSE) and then call through it, so no operation asks which
 * transport it is on. Leases, auth and the health ping go over the gateway
 * (etcd__call) with either. Every slot is set: a transport with nothing to
 * do in one (the gateway's open and close) has a no-op there. */
typedef struct etcd_kv_ops {
    const char *name; /* for messages: "gRPC", "the JSON gateway" */
    /* Makes the transport's per-client resources (gRPC: a channel per
     * endpoint and a poller), once the endpoints and TLS files are in
     * place. When it fails, close still runs (etcd_client_destroy), so
     * close undoes a partial open too. */
    ferry_status_t (*open)(etcd_client_t *client);
    void (*close)(etcd_client_t *client);
    /* etcd.h's etcd_put, etcd_get, etcd_delete and etcd_txn, with the
     * arguments checked; `del` because `delete` is a C++ keyword. */
    ferry_status_t (*put)(etcd_client_t *client, const void *key, size_t key_len, const void *value,
                          size_t value_len, int64_t lease, int64_t *revision_p);
    ferry_status_t (*get)(etcd_client_t *client, const void *key, size_t key_len,
                          const void *range_end, size_t range_end_len, int64_t limit,
                          int64_t revision, etcd_range_t *range_p);
    ferry_status_t (*del)(etcd_client_t *client, const void *key, size_t key_len,
                          const void *range_end, size_t range_end_len, int64_t *deleted_p,
                          int64_t *revision_p);
    ferry_status_t (*txn)(etcd_client_t *client, const etcd_compare_t *compares, size_t n_compares,
                          const etcd_op_t *success, size_t n_success, const etcd_op_t *failure,
                          size_t n_failure, etcd_txn_result_t *result_p);
    /* One stream of the watch on its current endpoint, with the token
     * (NULL or "": none), on the watch thread; returns why it ended
     * (etcd_watch.c). */
    ferry_status_t (*watch_stream)(etcd_watch_t *watch, const char *token);
} etcd_kv_ops_t;

extern const etcd_kv_ops_t etcd__kv_gateway_ops; /* etcd_kv.c */
extern const etcd_kv_ops_t etcd__kv_grpc_ops;    /* etcd_grpc.c */

struct etcd_client {
    char **endpoints; /* owned; "http://host:port", "https://host:port" or
                       * "unix:///path", without a trailing '/' */
    size_t n_endpoints;
    atomic_size_t preferred; /* index of the endpoint that last answered */
    /* Per endpoint: CLOCK_MONOTONIC ms until which it is suspect (it gave
     * no answer or a transport error): requests try it after the others,
     * and it is never `preferred`. 0: not suspect. */
    atomic_llong *suspect_until;
    int timeout_ms;
    bool check_version;            /* params' */
    char *health_key;              /* params'; NULL: none */
    atomic_bool version_checked;   /* the first answered ping looked */
    atomic_int member_checks_left; /* tries of the member list left (ETCD_MEMBER_CHECKS) */
    int keepalive_ms;              /* params' for the gRPC channels (0: rpc's default) */
    int tls_refresh_s;             /* likewise */
    char *ca_file;                 /* owned copies of the params; NULL when absent */
    char *cert_file;
    char *key_file;
    char *username;
    char *password;

    pthread_mutex_t pool_lock; /* guards pool and n_pool */
    CURL **pool;               /* idle easy handles, each with live connections */
    size_t n_pool;

    /* auth_lock guards token, token_gen and the auth_* fields below; it
     * is never held across network I/O (etcd_auth.c). */
    pthread_mutex_t auth_lock;
    pthread_cond_t auth_cond;   /* with auth_lock: an authentication ended */
    char *token;                /* NULL: not authenticated (yet) */
    unsigned long token_gen;    /* bumped on every new token */
    bool auth_busy;             /* a thread is authenticating */
    unsigned long auth_round;   /* authentications ended so far */
    ferry_status_t auth_status; /* how the last one ended */
    char auth_error[512];       /* and its etcd_client_last_error() */

    /* KV requests and watches go through kv; set once by create (NULL
     * only while create fails before picking one). */
    const etcd_kv_ops_t *kv;
    rpc_channel_t **channels; /* per endpoint, made by etcd__kv_grpc_ops' open; else NULL */
    rpc_poller_t *poller;     /* with channels: reads them while no call is in flight */

    atomic_long n_connects;   /* new TCP connections made, for tests */
    etcd_observer_t observer; /* constant; all NULL: none */
};

/* Whether etcd could have sent this revision (header.revision,
 * create_revision, mod_revision), whichever API it came over: they start at
 * 1 (0: none) and only grow, and INT64_MAX is refused so that callers may
 * add one (a watch resumes at the last revision + 1) without overflow. */
static inline bool etcd__revision_ok(int64_t revision)
{
    return revision >= 0 && revision < INT64_MAX;
}

/* The most bytes one reply from etcd may take: a gateway reply body, one
 * watch line, one gRPC message. Without a bound a faulty member or proxy
 * that streams a body without end took GBs before the request's timeout.
 * What etcd legitimately sends is far smaller: a value is at most etcd's
 * --max-request-bytes (1.5 MiB by default); a watch message is about that
 * too, since the watch asks etcd to fragment larger ones (one revision may
 * carry any number of values: the deletes of a lease that ended, each with
 * its value); a List reads about 2 MiB of records at a time, at least 2
 * (LIST_READ_BYTES, registry_list.c). The largest reply is a view load's
 * page, --etcd-load-page keys (5000 by default): 64 MiB holds one of
 * records averaging 10 KiB as the gateway's base64 JSON, several times what
 * Ferry's records take; a page that passes it is read again in halves
 * (read_pages, registry.c), so a store of larger records loads too. A reply
 * is held two or three times over while it is parsed, so the bound keeps
 * one within the coordinator's container limit (512 MiB in deploy/k8s;
 * 256 MiB took a replica to 770 MiB). */
#define ETCD_REPLY_MAX ((size_t)64 << 20)

/* A growing byte buffer for reply bodies, of ETCD_REPLY_MAX bytes at most. */
typedef struct {
    char *data;
    size_t len;
    size_t cap;
    bool too_large; /* a write would have passed ETCD_REPLY_MAX */
} etcd_buf_t;

/* Appends n bytes, keeping a NUL after them: FERRY_ERR_PROTOCOL (and
 * too_large) past ETCD_REPLY_MAX, FERRY_ERR_NO_MEMORY. */
ferry_status_t etcd__buf_append(etcd_buf_t *buf, const char *data, size_t n);

/* --- etcd_json.c ------------------------------------------------------ */

/* NUL-terminated base64 of the bytes (malloc'ed), NULL when out of memory. */
char *etcd__b64_encode(const void *data, size_t len);
/* Decodes standard base64 with padding; *out_p is malloc'ed (len + 1). */
ferry_status_t etcd__b64_decode(const char *text, uint8_t **out_p, size_t *len_p);

/* Adds "name": "<base64>" / "name": "<decimal>" to obj. */
ferry_status_t etcd__json_add_bytes(cJSON *obj, const char *name, const void *data, size_t len);
ferry_status_t etcd__json_add_int64(cJSON *obj, const char *name, int64_t value);

/* A 64-bit number that etcd sent as a string (or a small JSON number).
 * A missing field is 0 (etcd leaves defaults out); a malformed one is
 * FERRY_ERR_PROTOCOL. */
ferry_status_t etcd__json_int64(const cJSON *obj, const char *name, int64_t *value_p);
/* Missing field: an empty buffer (still malloc'ed). */
ferry_status_t etcd__json_bytes(const cJSON *obj, const char *name, uint8_t **data_p,
                                size_t *len_p);
/* header.revision of a reply, 0 when missing; FERRY_ERR_PROTOCOL outside
 * [0, INT64_MAX), as for the kvs' create_revision and mod_revision. */
ferry_status_t etcd__json_revision(const cJSON *reply, int64_t *revision_p);

ferry_status_t etcd__parse_kv(const cJSON *json, etcd_kv_t *kv);
void etcd__kv_clear(etcd_kv_t *kv);
/* A RangeResponse (also a txn's response_range). */
ferry_status_t etcd__parse_range(const cJSON *json, etcd_range_t *range);
ferry_status_t etcd__parse_txn(const cJSON *json, etcd_txn_result_t *result);
/* The body of a keep-alive answer: FERRY_ERR_NOT_FOUND without TTL. */
ferry_status_t etcd__parse_keepalive(const cJSON *json, int64_t *ttl_p);
ferry_status_t etcd__parse_event(const cJSON *json, etcd_event_t *event);
void etcd__event_clear(etcd_event_t *event);

/* One message (one line) of a watch stream, parsed; etcd_watch.c acts on it. */
typedef struct {
    int64_t revision; /* header.revision */
    bool created;
    bool canceled;
    int64_t compact_revision;  /* canceled: > 0 when the start was compacted */
    const char *cancel_reason; /* canceled: points into the JSON; "" if absent */
    etcd_event_t *events;      /* malloc'ed, n_events of them, all parsed */
    size_t n_events;
    bool fragment; /* more of this response's events follow (etcd split it) */
} etcd_watch_msg_t;

/* A line without "result" is etcd's error ({"error": {"grpc_code",
 * "message"}}): returns the status its code maps to, with *error_p set to
 * its message (static or pointing into json). Malformed fields and events
 * are FERRY_ERR_PROTOCOL, *error_p NULL. On success, free with
 * etcd__watch_msg_clear. */
ferry_status_t etcd__parse_watch_msg(const cJSON *json, etcd_watch_msg_t *msg,
                                     const char **error_p);
void etcd__watch_msg_clear(etcd_watch_msg_t *msg);
/* etcd's error object {"error","message","code"} and the HTTP status to a
 * ferry status. */
ferry_status_t etcd__error_status(long http_status, int grpc_code, const char *message);
/* Whether a gRPC call's (code, message) says the reply was over the
 * channel's max_message_bytes: the one place, beside etcd__error_status,
 * that reads gRPC's text for it. */
bool etcd__grpc_too_large(int grpc_code, const char *message);
/* Why etcd cancelled a watch, from its cancel_reason: etcd writes a gRPC
 * status there as text ("rpc error: code = PermissionDenied desc =
 * etcdserver: permission denied"), mapped as etcd__error_status maps that
 * code and description; a reason without a code is FERRY_ERR_UNAVAILABLE
 * (the watch tries again). A compaction is told by compact_revision, not
 * here. */
ferry_status_t etcd__cancel_reason_status(const char *reason);

/* --- etcd_client.c ---------------------------------------------------- */

/* Records the cause of a failure for etcd_client_last_error(). Clearing
 * it, at the start of a request, clears etcd__ran_out too. */
void etcd__set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void etcd__clear_error(void);

/* POSTs body to path (e.g. "/v3/kv/put") on the first endpoint that
 * answers, with authentication (re-authenticating once on an expired
 * token). On FERRY_OK *reply_p is the parsed reply, which the caller
 * deletes; on error the cause is logged and recorded. Sent once: a write. */
ferry_status_t etcd__call(etcd_client_t *client, const char *path, const cJSON *body,
                          cJSON **reply_p);

/* The same with ETCD_CALL_* flags. */
ferry_status_t etcd__call_flags(etcd_client_t *client, const char *path, const cJSON *body,
                                unsigned flags, cJSON **reply_p);

/* The same with a given token (NULL: none) and handle, no auth retry. */
ferry_status_t etcd__call_raw(etcd_client_t *client, CURL *handle, const char *path,
                              const char *body, const char *token, unsigned flags, cJSON **reply_p);

/* Whether the member at endpoint `index` answers a status request within
 * ETCD_ATTEMPT_MS and knows a leader; marks it suspect when not. For a
 * watch that has heard nothing for a while. */
ferry_status_t etcd__endpoint_probe(etcd_client_t *client, size_t index);

/* The endpoint a stream should move to after `index`: the preferred one
 * when that is another and not suspect, else the next one in list order
 * that is not suspect (the next one when all are). */
size_t etcd__endpoint_next(etcd_client_t *client, size_t index);

/* Sets the options every request and watch shares: timeouts, TLS, no
 * signals, TCP keep-alive. */
void etcd__curl_common(etcd_client_t *client, CURL *handle);

/* An endpoint "unix:///path" is etcd's client socket at /path (gRPC's form
 * too); both of etcd's APIs are served there. */
#define ETCD_UNIX_PREFIX     "unix://"
#define ETCD_UNIX_PREFIX_LEN 7

/* The socket's path of a unix endpoint; NULL for another. */
const char *etcd__unix_path(const char *endpoint);

/* Points handle at `path` on the endpoint at `index` (over its socket for a
 * unix endpoint, as http://localhost); shown (size) gets the endpoint and
 * path, for messages. */
void etcd__curl_target(etcd_client_t *client, CURL *handle, size_t index, const char *path,
                       char *shown, size_t size);

/* Builds the request headers (JSON body, no Expect, the token if any). */
struct curl_slist *etcd__headers(const char *token);

/* Maps a failed transfer: records and logs "what: url: cause". */
ferry_status_t etcd__transport_error(const char *what, const char *url, CURLcode code,
                                     const char *detail);

/* New TCP connections the client has made so far (tests check reuse). */
long etcd__client_connects(etcd_client_t *client);

/* An idle CURL handle (NULL: out of memory), and back into the pool. */
CURL *etcd__pool_get(etcd_client_t *client);
void etcd__pool_put(etcd_client_t *client, CURL *handle);

/* The order in which a request tries the endpoints (n_endpoints indices). */
void etcd__endpoint_order(etcd_client_t *client, size_t *order);
/* The endpoint failed: tried last for a while. It answered: preferred. */
void etcd__endpoint_suspect(etcd_client_t *client, size_t index);
void etcd__endpoint_answered(etcd_client_t *client, size_t index);

/* CLOCK_MONOTONIC ns, and the observer told of a request begun at start_ns. */
int64_t etcd__now_ns(void);
void etcd__observe(etcd_client_t *client, const char *path, ferry_status_t status,
                   int64_t start_ns);

/* budget_ms, a request's time, cut to what is left of the calling
 * thread's deadline (etcd_set_deadline) when that is sooner: <= 0 when
 * nothing is, and the request is not sent. *cut_p: it was cut. */
int64_t etcd__budget_ms(int64_t budget_ms, bool *cut_p);
/* Ends a request's tries with `status`: when it is FERRY_ERR_UNAVAILABLE,
 * adds to the thread's error that the request had only the time left before
 * its caller's deadline (cut: etcd__budget_ms cut it), and settles
 * etcd__ran_out (its last attempt ran out of that time, and no attempt that
 * had the time to be answered failed: `etcds` false), logging such a
 * failure at debug. True when the failure is etcd's, for the caller to warn
 * of; false for success, any other status, or the caller's time. */
bool etcd__tries_end(ferry_status_t status, bool cut, bool etcds);
/* "etcd: unavailable: <the thread's error>" at warn, at most once every
 * FERRY_LOG_REPEAT_MS in the process (ferry_log_due). */
void etcd__warn_unavailable(void);

/* --- etcd_grpc.c ------------------------------------------------------ */

/* Calls `method` ("/etcdserverpb.KV/Txn") with `request` on the first
 * endpoint that answers, as etcd__call_flags does over the gateway (same
 * failover, auth and error rules; `path` names the request to the observer
 * and in messages, "/v3/kv/txn"). On FERRY_OK *reply_p is the decoded
 * reply (protobuf_c_message_free_unpacked). */
ferry_status_t etcd__grpc_call(etcd_client_t *client, const char *path, const char *method,
                               const ProtobufCMessage *request,
                               const ProtobufCMessageDescriptor *reply_desc, unsigned flags,
                               ProtobufCMessage **reply_p);

/* A gRPC status that says the connection failed or no answer came in time
 * (CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE), not what etcd answered. */
bool etcd__grpc_transport_code(int code);

/* A WatchResponse as etcd_watch.c acts on it (what etcd__parse_watch_msg
 * makes of a gateway line): cancel_reason points into `in`. Negative
 * revisions, an event without kv or of an unknown type are
 * FERRY_ERR_PROTOCOL. On success, free with etcd__watch_msg_clear. */
ferry_status_t etcd__grpc_watch_msg(const Etcdserverpb__WatchResponse *in, etcd_watch_msg_t *msg);

/* --- etcd_watch.c ---------------------------------------------------- */

/* The watch_stream of each transport: one stream from /v3/watch, or over
 * gRPC on the client's channel to the watch's endpoint. */
ferry_status_t etcd__watch_stream_gateway(etcd_watch_t *watch, const char *token);
ferry_status_t etcd__watch_stream_grpc(etcd_watch_t *watch, const char *token);

/* --- etcd_auth.c ------------------------------------------------------ */

/* A copy of the current token and its generation; authenticates first
 * when there is none (over `handle`; NULL: a pooled one). *token_p is NULL
 * without auth, else malloc'ed. */
ferry_status_t etcd__auth_token(etcd_client_t *client, CURL *handle, char **token_p,
                                unsigned long *gen_p);
/* Drops the token of generation gen (a newer one is kept). */
void etcd__auth_invalidate(etcd_client_t *client, unsigned long gen);

#endif /* FERRY_COORD_ETCD_INT_H */
