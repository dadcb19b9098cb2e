/*
 * etcd.h: a client for etcd 3.4, the coordinator's only way to etcd.
 * Key-value requests (put, get, delete, txn: the coordinator's hot path) and
 * watches go over etcd's native gRPC API (KV and Watch services, gRPC core +
 * protobuf-c); leases, auth and the health ping over its JSON gateway
 * (/v3/..., libcurl and cJSON). Both are served on the same client URL, so
 * an endpoint list means the same to both. params.kv_gateway puts key-value
 * requests and watches on the gateway too (a proxy that speaks only
 * HTTP/1.1, or to compare).
 *
 * Keys and values are byte strings (pointer + length); this module does the
 * protobuf, base64 and JSON. 64-bit numbers (revisions, lease IDs) are
 * parsed as strings with strtoll on the gateway, never through a double.
 *
 * Endpoints: a comma-separated list of URLs. A request that cannot reach an
 * endpoint (connect refused, timeout) is retried on the next one; when none
 * answers the result is FERRY_ERR_UNAVAILABLE with the cause in the log and
 * in etcd_client_last_error(). A write that may have reached etcd is never
 * sent again (it fails FERRY_ERR_UNAVAILABLE); reads, keep-alives, revokes
 * and the ping give each endpoint a short time and move on. An endpoint that
 * failed is tried after the others for a while (etcd_client.c says how). Requests reuse connections
 * (no new TCP connection per request; over gRPC one HTTP/2 connection per endpoint carries all).
 * Every request has a timeout (params.timeout_ms; sooner where the calling thread has a deadline,
 * etcd_set_deadline). With username/password the client authenticates
 * and re-authenticates when the token expires.
 *
 * Status mapping (etcd -> ferry): unreachable -> FERRY_ERR_UNAVAILABLE;
 * HTTP 400 / gRPC code 3 -> FERRY_ERR_INVALID_ARGUMENT; unknown lease ->
 * FERRY_ERR_NOT_FOUND; compacted revision -> FERRY_ERR_OUT_OF_RANGE (a
 * future one -> FERRY_ERR_INVALID_ARGUMENT); etcd's own failure (gRPC
 * UNKNOWN, INTERNAL, DATA_LOSS) -> FERRY_ERR_INTERNAL; a method it lacks ->
 * FERRY_ERR_UNIMPLEMENTED; malformed reply -> FERRY_ERR_PROTOCOL.
 *
 * Threads: an etcd_client_t may be used from any number of threads at once.
 * Results belong to the caller and are freed with their _free functions.
 */
#ifndef FERRY_COORD_ETCD_H
#define FERRY_COORD_ETCD_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ferry/status.h>

typedef struct etcd_client etcd_client_t;

/* Told of every request the client makes (not the watch streams), for
 * metrics: the gateway path ("/v3/kv/txn"), its outcome and how long it took.
 * Runs on the calling thread after the request; must be quick. */
typedef struct {
    void (*request_done)(void *arg, const char *path, ferry_status_t status, int64_t duration_ns);
    void *arg;
} etcd_observer_t;

typedef struct {
    const char *endpoints; /* "http://127.0.0.1:2379[,https://...][,unix:///path]"; required */
    int timeout_ms;        /* per request; 0: 5000 */
    const char *ca_file;   /* TLS: CA bundle to verify etcd; NULL: system default */
    const char *cert_file; /* TLS client certificate; NULL: none */
    const char *key_file;  /* TLS client key, with cert_file */
    const char *username;  /* etcd auth; NULL: none */
    const char *password;
    const etcd_observer_t *observer; /* NULL: none; copied */
    /* Key-value requests (put, get, delete, txn) and watches over etcd's
     * JSON gateway instead of its native gRPC API (the default). Leases,
     * auth and the health ping always use the gateway. */
    bool kv_gateway;
    /* The gRPC channels' ping interval while a call or watch is open, and
     * how often their TLS files are read again: rpc_channel_params_t's
     * fields of those names (0: rpc's defaults, 20 s and 60 s). */
    int keepalive_ms;
    int tls_refresh_s;
    /* An etcd the operator runs (not the coordinator's private one): the
     * first health ping that answers checks its version, and a version
     * with a known defect that costs Ferry's records is warned of once
     * (etcd_version_revokes_live_leases). */
    bool check_version;
    /* The key the health ping reads (etcd_ping: linearizable, count only),
     * one the caller's user must be able to read (the coordinator's
     * prefix), so that a user etcd does not let read it fails the ping
     * (PERMISSION_DENIED). NULL: a key outside every prefix, whose
     * PERMISSION_DENIED still proves the quorum. */
    const char *health_key;
} etcd_params_t;

/* Whether etcd `version` ("3.4.23") has the defect of etcd-io/etcd#15247:
 * a leader frozen longer than a lease's TTL revokes it on waking, though
 * its holder kept it alive through the new leader (fixed in 3.4.28 and
 * 3.5.11). Versions before 3.4 count as affected; text that is not a
 * version does not. */
bool etcd_version_revokes_live_leases(const char *version);

ferry_status_t etcd_client_create(const etcd_params_t *params, etcd_client_t **client_p);
/* Every watch made on the client must be destroyed first: a watch's thread
 * reads the client's endpoints and channels until etcd_watch_destroy has
 * joined it (the registry destroys its watch before the coordinator
 * destroys the client). */
void etcd_client_destroy(etcd_client_t *client);

/* One entry of an endpoint list (params.endpoints), [*start_p, +*len_p),
 * trimmed in place as the client reads it: spaces and tabs around it, and
 * a trailing '/'. */
void etcd_endpoint_trim(const char **start_p, size_t *len_p);

/* The last transport or server error seen by this thread, for messages
 * ("connect to http://127.0.0.1:2379 refused"); "" if none. */
const char *etcd_client_last_error(void);

/* The calling thread's requests end by deadline_ms (CLOCK_MONOTONIC
 * milliseconds) when that comes before params.timeout_ms would end them:
 * for requests made for a caller who stops waiting then, so that it hears
 * etcd's failure (FERRY_ERR_UNAVAILABLE) rather than its own deadline. A
 * request with no time left is not sent. 0: none, the timeout alone.
 * Returns the thread's previous deadline, for the caller to put back. */
int64_t etcd_set_deadline(int64_t deadline_ms);
/* Whether the calling thread's last request failed (then
 * FERRY_ERR_RESOURCE_EXHAUSTED) because etcd's reply was larger than the
 * client takes in one piece (ETCD_REPLY_MAX, 64 MiB): a read of fewer keys may go. */
bool etcd_reply_too_large(void);
/* Whether the calling thread's last request failed (then
 * FERRY_ERR_RESOURCE_EXHAUSTED) because etcd is out of space: its NOSPACE
 * alarm is raised, and it refuses every write of every client until an
 * operator frees space and disarms the alarm. Not one request's doing. */
bool etcd_no_space(void);

/* The calling thread's deadline (etcd_set_deadline); 0: none. */
int64_t etcd_get_deadline(void);
/* Waits on `cond` (made with CLOCK_MONOTONIC), `lock` held, until it is
 * signalled or the calling thread's deadline passes: for a call that waits
 * on another thread's request to etcd, which has no such deadline. False:
 * the deadline had passed (the caller gives up). Wakes spuriously, as
 * pthread_cond_wait: the caller checks its condition in a loop. */
bool etcd_cond_wait(pthread_cond_t *cond, pthread_mutex_t *lock);

/* Logs a warning naming the client certificate (params.cert_file) when it
 * has expired or is not valid yet, with the time, so that an etcd that
 * refuses the coordinator's handshakes for that reason says why (etcd and
 * the TLS libraries say only "bad certificate"); silent when it is valid,
 * when there is none, or when it cannot be read (etcd's answer says that).
 * True when it warned. */
bool etcd_client_check_cert(etcd_client_t *client);

/* Whether etcd can commit: FERRY_OK when some member answers its status
 * (/v3/maintenance/status) with a leader and a linearizable read goes
 * through; FERRY_ERR_UNAVAILABLE when no member answers, none knows a
 * leader, or the quorum is lost; PERMISSION_DENIED when the user may not
 * read params.health_key, UNAUTHENTICATED when etcd refuses its password.
 * Takes at most a few seconds whatever etcd does. *revision_p (may be
 * NULL) gets the store revision. */
ferry_status_t etcd_ping(etcd_client_t *client, int64_t *revision_p);

/* Whether the client suspects one of its endpoints now (it gave no answer
 * in time, or a transport error, lately: requests try it last) and not
 * another, which a request would try first. False for NULL. */
bool etcd_suspects_a_member(etcd_client_t *client);

/* Makes the client's user, which must be "root", etcd's root with the
 * client's password, and turns etcd's auth on; each step is a no-op where
 * it was done before, so a restart may call it again. For an etcd this
 * process owns (the private etcd, etcd_child.c): it changes root's
 * password to the client's. */
ferry_status_t etcd_auth_enable_root(etcd_client_t *client);

/* FERRY_ERR_PERMISSION_DENIED, with the other names in `others` (cut to
 * cap), when etcd has users besides root: for an etcd whose auth this
 * process turned on, they can only have been added while it was off. */
ferry_status_t etcd_auth_only_root(etcd_client_t *client, char *others, size_t cap);

/* --- key-values --------------------------------------------------------- */

typedef struct {
    uint8_t *key;
    size_t key_len;
    uint8_t *value;
    size_t value_len;
    int64_t create_revision;
    int64_t mod_revision;
    int64_t version;
    int64_t lease;
} etcd_kv_t;

typedef struct {
    int64_t revision; /* store revision of the answer */
    etcd_kv_t *kvs;
    size_t n_kvs;
    bool more;     /* more keys matched than limit allowed */
    int64_t count; /* keys in the range (all of them, not just returned) */
} etcd_range_t;

void etcd_range_free(etcd_range_t *range); /* frees the contents, not the struct */

/* The end of the range of every key that starts with `prefix` (prefix with
 * its last byte incremented). *end_p is malloc'ed. */
ferry_status_t etcd_prefix_end(const void *prefix, size_t prefix_len, uint8_t **end_p,
                               size_t *end_len_p);

ferry_status_t etcd_put(etcd_client_t *client, const void *key, size_t key_len, const void *value,
                        size_t value_len, int64_t lease, int64_t *revision_p);

/* range_end NULL: the one key. limit 0: no limit. revision 0: latest. */
ferry_status_t etcd_get(etcd_client_t *client, const void *key, size_t key_len,
                        const void *range_end, size_t range_end_len, int64_t limit,
                        int64_t revision, etcd_range_t *range_p);

ferry_status_t etcd_delete(etcd_client_t *client, const void *key, size_t key_len,
                           const void *range_end, size_t range_end_len, int64_t *deleted_p,
                           int64_t *revision_p);

/* --- transactions ----------------------------------------------------- */

typedef enum {
    ETCD_CMP_VERSION,
    ETCD_CMP_CREATE, /* create_revision */
    ETCD_CMP_MOD,    /* mod_revision */
    ETCD_CMP_VALUE,
    ETCD_CMP_LEASE,
} etcd_cmp_target_t;

typedef enum {
    ETCD_CMP_EQUAL,
    ETCD_CMP_GREATER,
    ETCD_CMP_LESS,
    ETCD_CMP_NOT_EQUAL,
} etcd_cmp_result_t;

typedef struct {
    etcd_cmp_target_t target;
    etcd_cmp_result_t result;
    const void *key;
    size_t key_len;
    int64_t number;    /* for VERSION, CREATE, MOD, LEASE */
    const void *value; /* for VALUE */
    size_t value_len;
} etcd_compare_t;

typedef enum {
    ETCD_OP_PUT,
    ETCD_OP_GET,
    ETCD_OP_DELETE,
} etcd_op_type_t;

typedef struct {
    etcd_op_type_t type;
    const void *key;
    size_t key_len;
    const void *value; /* PUT */
    size_t value_len;
    int64_t lease;         /* PUT; 0: none */
    const void *range_end; /* GET, DELETE; NULL: one key */
    size_t range_end_len;
} etcd_op_t;

typedef struct {
    bool succeeded;
    int64_t revision;
    /* One per op of the branch that ran, in order; for GET ops the range,
     * for others an empty range. */
    etcd_range_t *results;
    size_t n_results;
} etcd_txn_result_t;

void etcd_txn_result_free(etcd_txn_result_t *result); /* contents only */

ferry_status_t etcd_txn(etcd_client_t *client, const etcd_compare_t *compares, size_t n_compares,
                        const etcd_op_t *success, size_t n_success, const etcd_op_t *failure,
                        size_t n_failure, etcd_txn_result_t *result_p);

/* --- leases ------------------------------------------------------------ */

/* A lease of ttl_s seconds. id 0: etcd picks its ID; otherwise the lease
 * gets `id` (1..INT64_MAX; draw it at random), the grant may be sent again
 * (to the next endpoint when one does not answer in ETCD_ATTEMPT_MS), and
 * a lease of that ID found existing is taken as an earlier try's: granted,
 * with the TTL it has left, when it has at least ttl_s, else
 * FERRY_ERR_FAILED_PRECONDITION. A caller that picks the ID can revoke a
 * grant whose answer never came (it may have been applied). */
ferry_status_t etcd_lease_grant(etcd_client_t *client, int64_t ttl_s, int64_t id, int64_t *lease_p,
                                int64_t *granted_ttl_p);
/* FERRY_ERR_NOT_FOUND when the lease is gone (expired or revoked). */
ferry_status_t etcd_lease_keepalive(etcd_client_t *client, int64_t lease, int64_t *ttl_p);
ferry_status_t etcd_lease_revoke(etcd_client_t *client, int64_t lease);

/* --- watches ----------------------------------------------------------- */

typedef enum {
    ETCD_EVENT_PUT,
    ETCD_EVENT_DELETE,
} etcd_event_type_t;

typedef struct {
    etcd_event_type_t type;
    etcd_kv_t kv;      /* for DELETE: key and mod_revision only */
    etcd_kv_t prev_kv; /* the value before the event, when prev_kv was asked; key_len 0 otherwise */
} etcd_event_t;

typedef struct etcd_watch etcd_watch_t;

typedef struct {
    const void *key;
    size_t key_len;
    const void *range_end; /* NULL: the one key */
    size_t range_end_len;
    int64_t start_revision; /* first revision to deliver; 0: from now */
    bool prev_kv;
    /* Events, in revision order; one call per etcd watch message (a
     * transaction touching two keys arrives as one call). `revision` is the
     * message's header revision. `more`: etcd split a large message
     * (fragments) and more of it follows, maybe of the last event's
     * revision: a caller that acts once per revision (whole) waits for the
     * call without `more`, which may carry no events. Runs on the watch's
     * own thread; the arrays are valid only during the call. */
    void (*on_events)(void *arg, const etcd_event_t *events, size_t n_events, int64_t revision,
                      bool more);
    /* The watch lost or regained its stream (connected false/true). After a
     * drop it reconnects by itself from the last delivered revision + 1.
     * `status` is FERRY_ERR_OUT_OF_RANGE when that revision has been compacted:
     * the caller must reread and restart. May be NULL. */
    void (*on_state)(void *arg, bool connected, ferry_status_t status);
    void *arg;
} etcd_watch_params_t;

/* Starts a watch on its own thread. Returns once the first stream is
 * created (FERRY_OK) or could not be (the status); on error nothing runs. */
ferry_status_t etcd_watch_create(etcd_client_t *client, const etcd_watch_params_t *params,
                                 etcd_watch_t **watch_p);

/* Stops the watch and joins its thread; no callback runs after it returns.
 * Must not be called from a callback. NULL is a no-op. */
void etcd_watch_destroy(etcd_watch_t *watch);

#endif /* FERRY_COORD_ETCD_H */
