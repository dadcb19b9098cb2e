/*
 * rpc_int.h: what the files of rpc/ share and nothing outside rpc/ sees
 * (tests of this component excepted).
 *
 * Pieces:
 *   - the method table (rpc_method.c): path -> handler rows built from
 *     protoc-c service descriptors;
 *   - the server (rpc_server.c) and its calls (rpc_call.c): every in-flight
 *     gRPC call is one heap rpc_call_t whose embedded rpc_tag_t members are
 *     the completion-queue tags of its operations;
 *   - health (rpc_health.c): grpc.health.v1.Health on top of the same server;
 *   - drain deadlines (rpc_drain.c): a call ended with a reply or messages
 *     its client does not take is cancelled RPC_DRAIN_MS later;
 *   - helpers for byte buffers, deadlines, PEM files and credentials
 *     (rpc_buf.c, rpc_tls.c);
 *   - the encoding, walked field by field: the request checks (rpc_wire.c)
 *     and one field taken as it came (rpc_field.c).
 *
 * Locking order, outer first: server->lock, health->lock, call->lock,
 * server->drain.lock. No lock is held while a handler or a cancel callback
 * runs.
 */
#ifndef FERRY_RPC_INT_H
#define FERRY_RPC_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "common/pb_wire.h"
#include "rpc/rpc.h"

/* --- method table (rpc_method.c) --------------------------------------- */

typedef struct {
    char *path;                            /* "/ferry.v1.Coordinator/Get"; owned */
    const ProtobufCMethodDescriptor *desc; /* input and output descriptors */
    rpc_method_kind_t kind;
    rpc_handler_fn handler;
    size_t max_request_bytes; /* 0: the server's max_message_bytes */
    bool keep_request_bytes;
    bool reply_refusable;
    void *arg;
    void *registered; /* grpc_server_register_method's handle, once started */
    int arms_owed;    /* re-arms that failed, retried later; server->lock */
} rpc_method_entry_t;

/* Rows are allocated one by one so a row's address never changes. */
typedef struct {
    rpc_method_entry_t **rows;
    size_t n_rows;
} rpc_method_table_t;

/* Adds all of `methods` or nothing: FERRY_ERR_INVALID_ARGUMENT for a name
 * missing from `service`, a NULL handler or a path already present. */
ferry_status_t rpc__method_table_add(rpc_method_table_t *table,
                                     const ProtobufCServiceDescriptor *service,
                                     const rpc_method_t *methods, size_t n_methods, void *arg);
/* NULL when no row has this path. */
rpc_method_entry_t *rpc__method_table_find(const rpc_method_table_t *table, const char *path);
void rpc__method_table_clear(rpc_method_table_t *table);

/* --- byte buffers, deadlines, files (rpc_buf.c) -------------------------- */

/* NULL on allocation failure. */
grpc_byte_buffer *rpc__pack(const ProtobufCMessage *msg);
grpc_byte_buffer *rpc__pack_raw(const void *data, size_t len);
/* NULL for a NULL buffer or bytes that do not decode as `desc`. */
ProtobufCMessage *rpc__unpack(const ProtobufCMessageDescriptor *desc, grpc_byte_buffer *buf);
/* A request as its handler may see it: decoded, and past rpc__wire_check;
 * *bytes_p gets the bytes it was decoded from, in one slice (a reference
 * for the caller). FERRY_ERR_INVALID_ARGUMENT (or NO_MEMORY) otherwise,
 * with a message for the client in why (cap bytes): "malformed request for
 * <path>" when the bytes do not decode, the check's message when they do. */
ferry_status_t rpc__unpack_request(const ProtobufCMessageDescriptor *desc, grpc_byte_buffer *buf,
                                   const char *path, ProtobufCMessage **msg_p, grpc_slice *bytes_p,
                                   char *why, size_t cap);
/* Copies the buffer's bytes into a malloc'd block (*data_p NULL for 0 bytes). */
ferry_status_t rpc__unpack_raw(grpc_byte_buffer *buf, void **data_p, size_t *len_p);
/* timeout_ms <= 0: infinitely far. Monotonic clock. */
gpr_timespec rpc__deadline_after_ms(int64_t timeout_ms);
/* Milliseconds from now until `deadline` (0 when passed, INT64_MAX if infinite). */
int64_t rpc__ms_until(gpr_timespec deadline);
/* Copies a slice into a NUL-terminated string of at most cap bytes. */
void rpc__slice_to_str(grpc_slice slice, char *out, size_t cap);

/* --- request checks (rpc_wire.c) ----------------------------------------- */

/* The encoding's varints, wire types and fields: common/pb_wire.h. */

/* The packed bytes of m (rpc_msg_size of them). */
const uint8_t *rpc__msg_bytes(const rpc_msg_t *m);

/* Walks the encoded message `data` of type `desc`, nested messages
 * included, and refuses (FERRY_ERR_INVALID_ARGUMENT, with a message naming
 * the field's path, e.g. "metadata.hostname", written into msg) a string
 * field that holds a NUL byte or is not UTF-8, and an enum field whose value
 * its enum does not define. Fields the descriptor does not know are
 * skipped, up to RPC_WIRE_UNKNOWN_MAX in all; the request may hold up to
 * RPC_WIRE_VALUES_MAX strings, bytes and messages (each decodes into an
 * allocation of its own; Ferry's largest request, a Register of 1024
 * descriptors, holds about 3,100), and up to RPC_WIRE_FIELDS_MAX field
 * occurrences of any kind (protobuf-c scans each into a record of its own
 * before it builds the message; that Register holds about 7,200). A
 * malformed encoding is refused too, and
 * then *malformed_p (unless NULL) is true: the message names a place in the
 * encoding, which a caller may replace with the method's name. */
enum {
    RPC_WIRE_UNKNOWN_MAX = 64,
    RPC_WIRE_VALUES_MAX = 16384,
    RPC_WIRE_FIELDS_MAX = 32768,
};
#define RPC_WIRE_MALFORMED "malformed request" /* how a bad encoding's message starts */
ferry_status_t rpc__wire_check(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
                               size_t len, char *msg, size_t cap, bool *malformed_p);

/* --- peers (rpc_peer.c) ------------------------------------------------- */

/* gRPC's peer string ("ipv4:10.0.0.7:53124") as the client's address
 * without its port ("10.0.0.7"; "fd00::7" for IPv6, an IPv4-mapped one as
 * IPv4; "unix" for a unix socket), cut to cap bytes. */
void rpc__peer_host(const char *peer, char *out, size_t cap);

/* --- send budgets (rpc_budget.c) ----------------------------------------- */

/* A message packed once (rpc.h). */
struct rpc_msg {
    atomic_int refs;
    grpc_slice slice; /* the packed bytes; each send refs it */
    /* The one budget that counts these bytes once for all the queue
     * entries holding them (rpc_budget.c): set by the first budgeted entry,
     * then constant; an entry under another budget counts them as a copy.
     * holders: those entries, guarded by counted_in's lock; mine: of them,
     * a call's, while rpc_call_sole_bytes counts them, likewise. */
    _Atomic(rpc_send_budget_t *) counted_in;
    size_t holders, mine;
    int64_t born_ms; /* rpc_msg_set_born's; 0: none */
};

/* A message queued on a streaming call, or in flight. */
typedef struct rpc_outmsg {
    grpc_byte_buffer *buf;
    size_t len;        /* bytes in buf */
    rpc_msg_t *shared; /* what buf was made from (a reference), or NULL */
    bool counted;      /* in the call's queued_bytes (not the end message) */
    bool holds;        /* a holder of shared in the call's budget */
    int64_t queued_ms; /* CLOCK_MONOTONIC ms it was queued (rpc_call_lag_ms) */
    struct rpc_outmsg *next;
} rpc_outmsg_t;

/* What a counted entry costs beside its bytes: the entry and the byte
 * buffer gRPC sends from (320 bytes in 1.51), and their two allocations.
 * Watch events are often a few hundred bytes, so a bound on the payload
 * alone would let several times as much memory through. */
#define RPC_OUTMSG_OVERHEAD (sizeof(rpc_outmsg_t) + sizeof(grpc_byte_buffer) + 2 * 16)

struct rpc_send_budget {
    atomic_int refs;      /* the creator's, and one per call given it */
    pthread_mutex_t lock; /* guards the counts and its messages' holders */
    size_t max;           /* constant; 0: no bound */
    size_t used;
};

rpc_send_budget_t *rpc__budget_ref(rpc_send_budget_t *budget);
/* Counts the entries of the list `head` (all of it or none): each its
 * overhead, and its bytes unless another entry holding the same shared
 * message counts them already. False, and nothing counted, when that
 * would take the count past max; but a unit goes in when the count is 0,
 * and one whose messages are all counted already may pass max by their
 * bytes: a revision larger than the room left (or than the bound) still
 * goes to every stream that keeps up, and the count stays within max
 * plus the largest revision held. past: within twice max, and still any
 * unit into a count of 0 (RPC_SEND_PAST_BUDGET). */
bool rpc__budget_take(rpc_send_budget_t *budget, rpc_outmsg_t *head, bool past);
/* Gives back what rpc__budget_take counted for m. */
void rpc__budget_give(rpc_send_budget_t *budget, rpc_outmsg_t *m);

/* --- credentials (rpc_tls.c) --------------------------------------------- */

/* A TLS server's credentials read their files again when any of them
 * changed (rpc_tls.c): *reload_p is what they read with, to free with
 * rpc__tls_reload_free once the gRPC server is destroyed (NULL for
 * plaintext). */
typedef struct rpc_tls_reload rpc_tls_reload_t;

ferry_status_t rpc__server_credentials(const rpc_tls_params_t *tls,
                                       grpc_server_credentials **creds_p,
                                       rpc_tls_reload_t **reload_p);
void rpc__tls_reload_free(rpc_tls_reload_t *reload);
/* A client's credentials; a TLS one's files are read again every
 * refresh_s seconds. */
ferry_status_t rpc__channel_credentials(const rpc_tls_params_t *tls, unsigned refresh_s,
                                        grpc_channel_credentials **creds_p);

/* --- health (rpc_health.c) ----------------------------------------------- */

typedef struct rpc_health_watcher rpc_health_watcher_t;

typedef struct {
    char *service; /* owned; "" is the server as a whole */
    bool serving;
} rpc_health_entry_t;

typedef struct {
    pthread_mutex_t lock;
    rpc_health_entry_t *entries; /* guarded by lock */
    size_t n_entries;
    rpc_health_watcher_t *watchers; /* Watch calls, each holding a call ref */
    size_t n_watchers, max_watchers;
    bool closed; /* shutting down: no new watchers */
} rpc_health_t;

/* The largest Health request (a service name) accepted, in bytes. */
enum { RPC_HEALTH_REQUEST_MAX = 4096 };

ferry_status_t rpc__health_init(rpc_health_t *health);
void rpc__health_destroy(rpc_health_t *health);
/* Adds `service` as SERVING unless present. */
ferry_status_t rpc__health_add(rpc_health_t *health, const char *service);
void rpc__health_set(rpc_health_t *health, const char *service, bool serving);
/* Marks everything NOT_SERVING, tells watchers, then ends their streams. */
void rpc__health_close(rpc_health_t *health);
/* Adds grpc.health.v1.Health to the server's method table. */
ferry_status_t rpc__health_add_service(rpc_server_t *server);

/* --- client (rpc_client.c, used by rpc_stream.c) ------------------------- */

/* A call on `channel` bound to `cq`, with a deadline timeout_ms from now
 * (<= 0: none). On a channel in TRANSIENT_FAILURE it first makes a fresh
 * connection attempt (rpc_client.c), so that a server back from an outage
 * is reached by the next call, not at the end of gRPC's backoff. */
grpc_call *rpc__channel_call(rpc_channel_t *channel, const char *path, grpc_completion_queue *cq,
                             int64_t timeout_ms);
/* Fills `err` (may be NULL) from a call's final status; returns the mapped
 * status. */
ferry_status_t rpc__client_status(grpc_status_code code, grpc_slice details,
                                  const grpc_metadata_array *trailing, const char *path,
                                  rpc_error_t *err);
void rpc__error_set(rpc_error_t *err, int code, const char *msg);

/* --- drain deadlines (rpc_drain.c) --------------------------------------- */

/* Calls ended whose final status has not gone out yet, oldest first (each
 * deadline is RPC_DRAIN_MS after its listing, so this order is the
 * deadlines' order). */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;     /* CLOCK_MONOTONIC; a listing, or stop */
    rpc_call_t *head, *tail; /* linked both ways; each holds a call ref */
    bool started;            /* the thread runs: calls are listed */
    bool stopping;           /* no more listings; the thread ends */
    int64_t last_at_ms;      /* the last listing's deadline */
    bool idle;               /* the thread waits with no deadline */
    uint64_t wakes;          /* the thread's waits ended (tests) */
    pthread_t thread;
} rpc_drain_t;

ferry_status_t rpc__drain_init(rpc_drain_t *drain);
void rpc__drain_destroy(rpc_drain_t *drain);
ferry_status_t rpc__drain_start(rpc_drain_t *drain);
/* Joins the thread and drops the references of the calls still listed.
 * After the server's calls have all ended; idempotent. */
void rpc__drain_stop(rpc_drain_t *drain);
/* Lists `call` (with a reference of its own) to be expired RPC_DRAIN_MS
 * from now; a no-op once stopping (the server cancels every call then).
 * Caller holds call->lock. */
void rpc__drain_add(rpc_drain_t *drain, rpc_call_t *call);
/* Takes `call` off the list if it is there: true if it was, and the
 * caller then drops the list's reference. Caller holds call->lock. */
bool rpc__drain_remove(rpc_drain_t *drain, rpc_call_t *call);

/* --- server and calls (rpc_server.c, rpc_call.c) ------------------------- */

typedef enum {
    RPC_TAG_REQUEST,  /* a requested call arrived, or failed at shutdown */
    RPC_TAG_CLOSE,    /* RECV_CLOSE_ON_SERVER completed: the call is over */
    RPC_TAG_SEND,     /* a send batch (message and/or status) completed */
    RPC_TAG_SHUTDOWN, /* grpc_server_shutdown_and_notify completed */
} rpc_tag_kind_t;

/* What the completion queue hands back; embedded in its owner. */
typedef struct {
    rpc_tag_kind_t kind;
    void *owner; /* rpc_call_t for call tags, rpc_server_t for SHUTDOWN */
} rpc_tag_t;

typedef enum {
    RPC_SERVER_CREATED,  /* methods may be added */
    RPC_SERVER_RUNNING,  /* started; calls armed and re-armed */
    RPC_SERVER_STOPPING, /* shutdown began: nothing re-armed */
    RPC_SERVER_STOPPED,  /* threads joined, grpc objects destroyed */
} rpc_server_state_t;

struct rpc_server {
    pthread_mutex_t lock;          /* guards state, notified; re-arming holds it */
    pthread_cond_t cond;           /* signalled when notified becomes true */
    pthread_mutex_t shutdown_lock; /* serializes rpc_server_shutdown */
    rpc_server_state_t state;
    atomic_bool stopping; /* state >= STOPPING, readable without the lock */
    bool notified;        /* the shutdown tag came back */

    grpc_server *server;
    grpc_completion_queue *cq;
    grpc_server_credentials *creds; /* until bound */
    rpc_tls_reload_t *tls_reload;   /* the credentials' files; freed on destroy */
    pthread_t *threads;
    int n_threads;
    int n_threads_started;

    char *listen_addr;
    rpc_observer_t observer; /* constant; all NULL: none */
    int calls_armed;
    int max_message_bytes;
    size_t max_held_request_bytes;    /* 0: none */
    atomic_size_t held_request_bytes; /* by calls dispatched, not yet done */
    atomic_size_t held_reply_bytes;   /* reads' replies made, calls not yet done */
    char max_held_request_name[48];   /* names it in refusals (rpc.h) */
    /* Requests refused by their method's bound and by
     * max_held_request_bytes since start, for rpc_server_stats. */
    atomic_uint_fast64_t refused_oversized, refused_over_budget;
    int max_connection_age_ms; /* 0: none */
    int max_connection_age_grace_ms;
    int handshake_timeout_ms;

    rpc_method_table_t methods; /* frozen once running */
    rpc_health_t health;
    rpc_tag_t shutdown_tag;
    atomic_uint_fast64_t next_call_id;
    atomic_int live_calls; /* delivered and not yet done */

    /* A failed re-arm is owed, not lost: the method's pool would shrink
     * for good. Owed arms are paid on the next delivery and, while any are
     * owed, every RPC_REARM_RETRY_MS on an idle queue. unknown_arms_owed
     * (server->lock) is for unregistered methods; arms_owed totals all of
     * them, read without the lock; arm_failures counts failed arms. */
    int unknown_arms_owed;
    atomic_int arms_owed;
    atomic_uint_fast64_t arm_failures;

    /* Batches start only while the queue is open: a call ended late (a
     * handler that answers after the grace period) must not start a batch
     * on a queue already shut down, which gRPC treats as a fatal bug.
     * Readers: every grpc_call_start_batch; the writer: server_stop_threads. */
    pthread_rwlock_t cq_lock;
    bool cq_open; /* guarded by cq_lock */

    rpc_drain_t drain; /* runs while the server's threads do */
};

/* grpc_call_start_batch on a server call, or
 * GRPC_CALL_ERROR_COMPLETION_QUEUE_SHUTDOWN once the queue is shut down. */
grpc_call_error rpc__server_start_batch(rpc_server_t *server, grpc_call *call, const grpc_op *ops,
                                        size_t n, void *tag);

typedef enum {
    RPC_CALL_REQUESTED, /* armed: waiting for gRPC to deliver a call */
    RPC_CALL_ACTIVE,    /* delivered: the handler owes one ending */
    RPC_CALL_ENDING,    /* ended: final status queued or in flight */
    RPC_CALL_DONE,      /* status sent and close received; grpc_call released */
} rpc_call_state_t;

struct rpc_call {
    pthread_mutex_t lock; /* guards everything below but the constants */
    atomic_int refs;
    rpc_call_state_t state;

    /* Constant once delivered. */
    rpc_server_t *server;
    rpc_method_entry_t *method; /* NULL: armed for unregistered methods */
    size_t held_bytes;          /* counted in server->held_request_bytes until done */
    size_t held_reply_bytes;    /* counted in server->held_reply_bytes until done */
    uint64_t id;
    grpc_call *gcall;
    gpr_timespec deadline;
    grpc_metadata_array request_md;
    grpc_call_details details; /* unregistered methods only */
    grpc_byte_buffer *payload; /* the request as it arrived, until decoded */
    ProtobufCMessage *request;
    /* What request was decoded from (rpc_call_request_bytes), if the
     * method keeps it; empty otherwise. */
    grpc_slice request_bytes;
    char peer[128];
    char peer_host[64]; /* peer without its port (rpc__peer_host) */
    char path[160];
    int64_t accepted_ns; /* CLOCK_MONOTONIC, for the observer */

    rpc_tag_t tag_request, tag_close, tag_send;
    int close_cancelled; /* RECV_CLOSE_ON_SERVER's out argument */

    bool in_handler;     /* the handler is running */
    bool cancelled;      /* client gone, deadline passed, or server cancelled */
    bool md_sent;        /* initial metadata is in a started batch */
    bool send_in_flight; /* one send batch outstanding at most */
    bool status_started; /* the final status is in a started batch */
    bool status_done;    /* ... and that batch completed */
    bool close_done;
    rpc_outmsg_t *inflight;    /* the message of the send in flight, if any */
    int64_t inflight_since_ms; /* when it left the queue (CLOCK_MONOTONIC) */
    rpc_outmsg_t *queue_head, *queue_tail;
    /* What the queue (not the message in flight) holds that no other call
     * under the budget does: each entry's overhead, and its bytes unless
     * shared (outmsg_own). And the same of what of the newest unit queued
     * still waits (newest: its first entry still queued, the unit running
     * to the tail; else NULL and 0). For rpc_call_behind_bytes. */
    size_t waiting_own;
    rpc_outmsg_t *newest;
    size_t newest_own;
    /* Bytes queued and in flight, each entry with RPC_OUTMSG_OVERHEAD; a
     * send that would take them past max_queued (0: no limit) is refused
     * (rpc_call_set_send_limit). The same entries count in budget (NULL:
     * none; a reference held until the call is freed), added in
     * call_enqueue and given back in call_queued_sub. */
    size_t queued_bytes, max_queued;
    rpc_send_budget_t *budget;
    grpc_status_code final_code;
    char final_msg[512];
    /* The ferry_status_t behind a failed final_code, sent as the trailing
     * metadata RPC_STATUS_MD ("ferry-status": its decimal value). */
    char final_ferry[16];
    void (*cancel_cb)(rpc_call_t *call, void *arg);
    void *cancel_arg;
    void *parked; /* rpc_call_set_parked: the handler side's, under its lock */
    bool cancel_cb_ran;

    /* On server->drain's list (guarded by drain.lock, not call->lock). */
    int64_t drain_at_ms; /* CLOCK_MONOTONIC */
    rpc_call_t *drain_prev, *drain_next;
    bool drain_listed; /* on the list now: taken off at DONE or expiry */
};

/* Allocates an armed call and requests it from gRPC (the server's lock is
 * held by the caller). */
ferry_status_t rpc__call_arm(rpc_server_t *server, rpc_method_entry_t *method);
/* Completion handlers, on a server thread. */
void rpc__call_on_request(rpc_call_t *call, bool ok);
void rpc__call_on_close(rpc_call_t *call, bool ok);
void rpc__call_on_send(rpc_call_t *call, bool ok);
/* On the drain thread: the call's drain deadline passed. Cancels it unless
 * its status has gone out. */
void rpc__call_drain_expired(rpc_call_t *call);

#endif /* FERRY_RPC_INT_H */
