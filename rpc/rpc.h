/*
 * rpc.h: Ferry's one layer over gRPC C core 1.51.
 *
 * gRPC's C core API is documented as unstable across releases, so nothing
 * else in Ferry includes a <grpc/...> header: the coordinator, libferry and
 * the tests speak protobuf-c messages and ferry_status_t through this file,
 * and a future gRPC release touches only rpc/.
 *
 * Server: services are added from protoc-c service descriptors with a table
 * that names, per method, its handler and whether it streams (the descriptor
 * does not say). Completion-queue threads (params.n_threads) drive one state
 * machine per call. A handler receives the decoded request and must end the
 * call exactly once, with rpc_call_reply (unary), rpc_call_fail, or
 * rpc_call_finish (streaming), either before it returns or later from any
 * thread: that is how Lookup-with-wait and Watch hold calls without holding
 * a thread. Malformed requests (INVALID_ARGUMENT), unknown methods
 * (UNIMPLEMENTED) and oversized messages (RESOURCE_EXHAUSTED: over the
 * server's max_message_bytes, over their method's max_request_bytes, or
 * past what calls in progress may hold together, max_held_request_bytes) are
 * answered by this layer and never reach a handler. So are requests with a
 * string field that holds a NUL byte (protobuf-c would cut it there) or is
 * not UTF-8, or an enum field set to a value its enum does not define: those
 * end with INVALID_ARGUMENT and a message naming the field's path
 * ("metadata.descriptors[0].device.kind"), in every message and every field
 * of every service (rpc_wire.c).
 *
 * Client: channels are created once and reused; unary calls and
 * server-streaming reads take a timeout and return ferry_status_t plus the
 * exact gRPC code and message in an rpc_error_t.
 *
 * Status mapping: rpc_status_to_grpc / rpc_status_from_grpc are the only
 * place ferry_status_t and gRPC status codes meet. Several ferry codes share
 * a gRPC code (NOT_FOUND for an unknown ID, a gone lease, an expired one), so
 * every failed call a Ferry server ends also carries its ferry_status_t as
 * trailing metadata RPC_STATUS_MD ("ferry-status": "-21"), and the client
 * returns that code when it agrees with the gRPC one: callers branch on the
 * returned status, never on the message or the raw gRPC number.
 *
 * Threads: every function here may be called from any thread, except where
 * a comment restricts it. A call object stays valid until the call has ended
 * and the handler (or its cancel callback) can no longer run; see
 * rpc_call_ref / rpc_call_unref for handlers that keep a call past their
 * return.
 */
#ifndef FERRY_RPC_H
#define FERRY_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include <ferry/status.h>

/* --- status mapping ---------------------------------------------------- */

/* gRPC status codes are ints here, with their documented values
 * (0 OK, 1 CANCELLED, ..., 16 UNAUTHENTICATED). */
/* The trailing metadata key that carries a failed call's ferry_status_t. */
#define RPC_STATUS_MD "ferry-status"

int rpc_status_to_grpc(ferry_status_t status);
ferry_status_t rpc_status_from_grpc(int grpc_code);
/* "NOT_FOUND" for 5, ...; static. */
const char *rpc_grpc_code_name(int grpc_code);

/* --- TLS --------------------------------------------------------------- */

/* PEM file paths. A NULL params pointer means plaintext. */
typedef struct {
    const char *ca_file;      /* server: CA that signs client certs; client: CA of the server */
    const char *cert_file;    /* own certificate chain (server: required; client: optional) */
    const char *key_file;     /* own private key, with cert_file */
    bool require_client_cert; /* server only: refuse clients without a valid certificate */
    /* client only: the name to verify instead of the target host; NULL: the target's */
    const char *server_name;
} rpc_tls_params_t;

/* --- server ------------------------------------------------------------ */

typedef struct rpc_server rpc_server_t;
typedef struct rpc_call rpc_call_t;

typedef enum {
    RPC_UNARY,
    RPC_SERVER_STREAMING,
} rpc_method_kind_t;

/* The request is owned by the call and stays valid until the call is freed. */
typedef void (*rpc_handler_fn)(rpc_call_t *call, const ProtobufCMessage *request, void *arg);

/* One row of a service's method table. `name` is the method's name in the
 * service descriptor ("Register"). */
typedef struct {
    const char *name;
    rpc_method_kind_t kind;
    rpc_handler_fn handler;
    /* The largest request the method accepts, in bytes; 0: the server's
     * max_message_bytes. A call holds its decoded request until it ends, and
     * a call may be held for minutes (a parked wait, a stream, a queue), so
     * a method whose requests are small says so: a larger one ends
     * RESOURCE_EXHAUSTED, as gRPC answers a message over the server's bound,
     * naming the method and the limit, before it is decoded. */
    size_t max_request_bytes;
    /* Keep the request's bytes as they arrived for rpc_call_request_bytes
     * as long as the call; false: freed once the request is decoded. */
    bool keep_request_bytes;
    /* A read: its reply counts, until its call is done, in a bound as
     * large as max_held_request_bytes of its own (the replies of reads in
     * progress), and is refused RESOURCE_EXHAUSTED, nothing done, past it
     * (rpc_call_reply). false: a write's, sent all the same, uncounted. */
    bool reply_refusable;
} rpc_method_t;

/* Told of every call the server accepts, for metrics. `method` is the
 * call's path ("/ferry.v1.Coordinator/Get"), or NULL for a method the
 * server does not serve. call_started runs once the call is accepted,
 * before its handler; call_ended once its final status has been sent (or
 * failed to), with that status's gRPC code and the time since it was
 * accepted. Both run on server threads, call_ended with the call's lock held:
 * they must be quick and must not call into rpc/. */
typedef struct {
    void (*call_started)(void *arg, const char *method);
    void (*call_ended)(void *arg, const char *method, int grpc_code, int64_t duration_ns);
    void *arg;
} rpc_observer_t;

/* The default of rpc_server_params_t.max_health_watches. */
#define RPC_DEFAULT_HEALTH_WATCHES 1024

/* The default of rpc_server_params_t.handshake_timeout_ms: a tenth of
 * gRPC's. Bare TCP connects that send nothing filled a coordinator's
 * descriptors at 1,000 a second, and gRPC core 1.51 stops accepting for
 * good after one accept fails with EMFILE (audit-s30-grpc F1; coordinator/
 * listener.h): this makes that twelve times dearer, and is ample for a
 * handshake unless the server's own threads are saturated (a reconnect
 * storm's handshakes queue behind each other: raise it there). */
#define RPC_DEFAULT_HANDSHAKE_TIMEOUT_MS 10000

/* The default of the server's and the channel's max_message_bytes (gRPC's
 * own default): the largest request a server accepts, the largest response
 * a channel accepts. */
#define RPC_DEFAULT_MAX_MESSAGE (4 * 1024 * 1024)

typedef struct {
    const char *listen_addr; /* "127.0.0.1:0" picks a free port */
    int n_threads;           /* completion-queue threads; 0: 2 */
    int calls_armed;         /* calls kept requested per method; 0: 8 */
    int max_message_bytes;   /* largest request accepted; 0: RPC_DEFAULT_MAX_MESSAGE */
    /* Bytes of requests the calls in progress may hold together: each
     * call's request as it arrived (twice for a method that keeps its
     * bytes, which its decoded copy doubles), from its dispatch until it is
     * done. A request that would pass it ends RESOURCE_EXHAUSTED before it
     * is decoded, saying so. gRPC's own buffers (requests not yet whole)
     * get a resource quota of this plus 32 MiB, past which gRPC resets
     * streams. 0: no bound, and no quota. */
    size_t max_held_request_bytes;
    /* What names max_held_request_bytes to an operator and a client in the
     * refusal's log line and message (the coordinator's flag,
     * "--request-memory-mib"), copied. NULL: "max_held_request_bytes". */
    const char *max_held_request_name;
    /* grpc.health.v1.Health Watch streams open at once; one more ends
     * RESOURCE_EXHAUSTED, saying so (Check is not bounded: it holds
     * nothing). 0: RPC_DEFAULT_HEALTH_WATCHES. */
    int max_health_watches;
    /* A connection older than max_connection_age_ms (gRPC adds +-10%
     * jitter) is sent a GOAWAY: its client makes new calls on a new
     * connection, which a load balancer in front of several servers may
     * send elsewhere. Calls still running on the old one have
     * max_connection_age_grace_ms to end before it is closed under them
     * (they fail UNAVAILABLE; a stream or a parked wait is then the
     * client's to resume). 0: no maximum age (gRPC's default); a grace of 0
     * with an age: calls are cut at once. */
    int max_connection_age_ms;
    int max_connection_age_grace_ms;
    /* A connection must finish its handshake (TLS, the HTTP/2 preface)
     * within this, or it is closed: each holds a descriptor until then.
     * 0: RPC_DEFAULT_HANDSHAKE_TIMEOUT_MS (gRPC's own is 120 s). */
    int handshake_timeout_ms;
    const rpc_tls_params_t *tls;    /* NULL: plaintext */
    const rpc_observer_t *observer; /* NULL: none; copied */
} rpc_server_params_t;

ferry_status_t rpc_server_create(const rpc_server_params_t *params, rpc_server_t **server_p);

/* Adds every method of `service` listed in `methods` (each name must exist
 * in the descriptor: FERRY_ERR_INVALID_ARGUMENT otherwise). `arg` is passed to
 * each handler. Before rpc_server_start only. */
ferry_status_t rpc_server_add_service(rpc_server_t *server,
                                      const ProtobufCServiceDescriptor *service,
                                      const rpc_method_t *methods, size_t n_methods, void *arg);

/* Binds and starts serving. grpc.health.v1.Health is always served: the
 * overall status ("") and each added service start SERVING. *port_p gets
 * the bound port. */
ferry_status_t rpc_server_start(rpc_server_t *server, int *port_p);

/* Sets what Health.Check answers for `service` ("" is the server as a
 * whole) and tells Health.Watch streams. */
void rpc_server_set_serving(rpc_server_t *server, const char *service, bool serving);

/* Stops accepting calls, lets in-flight calls finish for up to grace_ms,
 * then cancels what is left (cancel callbacks run, streams end with
 * UNAVAILABLE) and joins the threads. Health.Watch streams are told
 * NOT_SERVING and ended with UNAVAILABLE at once. Idempotent. Not from a
 * handler or cancel callback: it joins the threads they run on. Calls that
 * handlers still hold references to stay valid (ended) until unref'd. */
void rpc_server_shutdown(rpc_server_t *server, int grace_ms);

/* Shuts down (grace 0) if needed and frees. NULL is a no-op. */
void rpc_server_destroy(rpc_server_t *server);

/* What the server's bounds on requests did since start, for metrics: the
 * requests refused for being larger than their method accepts
 * (max_request_bytes), those refused because the calls in progress held
 * max_held_request_bytes, and the bytes they hold now against that bound
 * (0: none). Any thread. */
typedef struct {
    uint64_t refused_oversized;
    uint64_t refused_over_budget;
    size_t held_request_bytes;
    size_t held_reply_bytes; /* reads' replies not yet taken (reply_refusable) */
    size_t max_held_request_bytes;
} rpc_server_stats_t;
void rpc_server_stats(rpc_server_t *server, rpc_server_stats_t *out);

/* --- a call, as its handler sees it ------------------------------------- */

/* Unary: sends `response` with status OK and ends the call. */
void rpc_call_reply(rpc_call_t *call, const ProtobufCMessage *response);

/* Unary: as rpc_call_reply, with the response already packed (len bytes,
 * copied): a message built with rpc_pack_with_field, say. */
void rpc_call_reply_packed(rpc_call_t *call, const void *response, size_t len);

/* How long a call ended (rpc_call_reply, rpc_call_fail, rpc_call_finish)
 * may wait for its client to take its reply or the messages still queued:
 * the status goes out after the last of them, so a client that reads gets
 * every message and then the status, but one that does not read (its
 * flow-control window stays shut) would hold the call, its queue and its
 * request's bytes (max_held_request_bytes) for ever. A call still waiting
 * RPC_DRAIN_MS after its end is cancelled: its queue is freed and its
 * client sees CANCELLED. */
enum { RPC_DRAIN_MS = 10000 };

/* Ends the call (unary or streaming) with the gRPC code that `status` maps
 * to and a message (printf format; name the offending field). A streaming
 * call's queued messages go out first (see RPC_DRAIN_MS). */
void rpc_call_fail(rpc_call_t *call, ferry_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Streaming: packs `msg` now and queues it; messages go out in order, one
 * outstanding send at a time. FERRY_ERR_CANCELLED once the client has gone
 * away or the call has ended; the message is dropped then. */
ferry_status_t rpc_call_send(rpc_call_t *call, const ProtobufCMessage *msg);

/* A message packed once, to be sent on many streams (a Watch event goes to
 * every matching subscriber): each send shares the one buffer. Reference
 * counted, safe to share between threads; rpc_msg_pack returns it with one
 * reference (NULL: no memory). rpc_msg_unref(NULL) is a no-op. */
typedef struct rpc_msg rpc_msg_t;
rpc_msg_t *rpc_msg_pack(const ProtobufCMessage *msg);
rpc_msg_t *rpc_msg_ref(rpc_msg_t *m);
void rpc_msg_unref(rpc_msg_t *m);
size_t rpc_msg_size(const rpc_msg_t *m); /* packed bytes */
/* When what m carries happened (CLOCK_MONOTONIC ms; 0, unset: when it is
 * queued): a message queued with it by rpc_call_send_msgs counts in
 * rpc_call_lag_ms from then, so that a replay of old changes is as far
 * behind live as they are (rpc_call_send_msg does not look). Set before m
 * is first sent. */
void rpc_msg_set_born(rpc_msg_t *m, int64_t born_ms);

/* As rpc_msg_pack, with one occurrence of the repeated length-delimited
 * field `number` appended per value, each value's bytes as they are (for a
 * message field: that message, packed). Protobuf reads the occurrences in
 * order as the field's elements, so a message of any subset of elements
 * packed once each (a Watch event goes into several streams' messages) is
 * built without packing them again. The field must be repeated and empty in
 * msg. NULL: no memory, or a field that is not so. */
rpc_msg_t *rpc_msg_pack_repeated(const ProtobufCMessage *msg, uint32_t number,
                                 const ProtobufCBinaryData *values, size_t n_values);

/* Streaming: as rpc_call_send, with a message packed once; the call takes
 * its own reference to the bytes (the caller keeps its own). */
ferry_status_t rpc_call_send_msg(rpc_call_t *call, rpc_msg_t *m);

/* rpc_call_send_msgs's flags. */
enum {
    /* The messages go to other calls under the budget too (a Watch
     * revision to every stream that matches all of it), and the budget
     * counts their bytes once; without it they are packed for this call
     * alone, and count as its own (rpc_call_behind_bytes). */
    RPC_SEND_SHARED = 1 << 0,
    /* The unit may take the budget past its max_bytes, up to twice it: the
     * caller found no other call to end for room (review-s32 M1). */
    RPC_SEND_PAST_BUDGET = 1 << 1,
};

/* Streaming: queues msgs[0..n) as one unit, all or none (a Watch revision
 * in fragments): the send limit is checked once, before the first, and
 * while the queued bytes are under it the whole unit goes in, past it if
 * need be, so the queue holds at most the limit plus one unit, and a unit
 * larger than the limit still goes to a client that keeps up. Each
 * message counts its bytes and RPC_OUTMSG_OVERHEAD against the limit. The
 * call's budget (rpc_call_set_send_budget), unlike its limit, must hold
 * the whole unit. flags: RPC_SEND_*. FERRY_ERR_RESOURCE_EXHAUSTED when
 * the queue is at or over the limit or the unit would pass the budget
 * (then *over_budget_p, unless NULL, is true; false in every other case),
 * FERRY_ERR_NO_MEMORY, FERRY_ERR_CANCELLED as rpc_call_send_msg; nothing
 * is queued then. */
ferry_status_t rpc_call_send_msgs(rpc_call_t *call, rpc_msg_t *const *msgs, size_t n,
                                  unsigned flags, bool *over_budget_p);

/* Streaming: at most max_queued_bytes (0: no limit) of messages queued and
 * not yet taken by the transport; a send past it is refused with
 * FERRY_ERR_RESOURCE_EXHAUSTED and dropped (the caller ends the stream).
 * gRPC's transport takes a message only as the peer's flow-control window
 * allows, so a peer that stops reading fills this queue. */
void rpc_call_set_send_limit(rpc_call_t *call, size_t max_queued_bytes);

/* A bound on what many streaming calls queue together (every Watch stream
 * of a server, say), where each one's send limit bounds only its own. A
 * call given the budget counts in it each message it queues, as it is
 * queued, given back as the transport takes it or as the queue is dropped
 * (the client went away, the call was cancelled or freed): its bytes and
 * RPC_OUTMSG_OVERHEAD (the entry and gRPC's byte buffer), the bytes once
 * for every call under the budget that holds the same rpc_msg_t. So the
 * budget holds what its calls' unsent messages take in memory, and comes
 * back to 0 once none holds any. A send that would take it past max_bytes
 * is refused (RESOURCE_EXHAUSTED, *over_budget_p of rpc_call_send_msgs)
 * and dropped, unless the budget holds nothing; the caller makes room
 * (rpc_call_fail_now on the call furthest behind) or ends the stream.
 * Reference counted: each call given it holds a reference until it is
 * freed, so the creator may release its own at any time. Any thread. */
typedef struct rpc_send_budget rpc_send_budget_t;
/* max_bytes 0: no bound (only counted). FERRY_ERR_NO_MEMORY. */
ferry_status_t rpc_send_budget_create(size_t max_bytes, rpc_send_budget_t **budget_p);
/* Drops the creator's reference; NULL is a no-op. */
void rpc_send_budget_release(rpc_send_budget_t *budget);
size_t rpc_send_budget_used(rpc_send_budget_t *budget); /* bytes counted now */
size_t rpc_send_budget_max(const rpc_send_budget_t *budget);

/* Streaming: counts the call's unsent messages in `budget` (NULL: none)
 * too, from its next send on. Before the call queues anything: on a call
 * with messages queued it is ignored (and logged), since they were not
 * counted there. */
void rpc_call_set_send_budget(rpc_call_t *call, rpc_send_budget_t *budget);

/* Streaming: how far behind its client is, in what the call alone holds
 * (each message's RPC_OUTMSG_OVERHEAD, and its bytes unless it shares them
 * with other calls under its budget; so what ending the call frees): the
 * messages queued behind the one in flight, but not what waits of the
 * newest unit (a client that keeps up has that much queued at most); and
 * once the one in flight has been for RPC_STUCK_MS (a client that keeps
 * up takes it within a round trip), that one and all the rest. 0 once the call is cancelled,
 * or its status has gone out. */
enum { RPC_STUCK_MS = 1000 };
size_t rpc_call_behind_bytes(rpc_call_t *call);

/* Streaming: the bytes of messages (not the entries' overhead) that ending
 * the call now (rpc_call_fail_now) gives back to its budget: its own
 * messages', and a shared message's where no other call holds it any more
 * (the last holder of a revision every other stream has read holds all of
 * it, though behind counts its entry only), each once, queued or in flight
 * (that one is given back as the cancel completes, a moment after). 0: its
 * end frees its entries only. A walk of its queue; 0 without a budget, or
 * where behind is 0 for its end. */
size_t rpc_call_sole_bytes(rpc_call_t *call);

/* Streaming: milliseconds since the oldest message its client has not
 * taken (the one in flight, else the queue's head) was queued, or since
 * what it carries happened where that was set (rpc_msg_set_born): how far
 * behind live its client reads, however steadily it takes messages. 0
 * when none waits. */
int64_t rpc_call_lag_ms(rpc_call_t *call);

/* Streaming: as rpc_call_fail, but what the client has not taken is
 * dropped, not drained: the queue at once, and the message in flight as
 * the call is cancelled with this status (its client sees it, without the
 * ferry-status trailer: the code says the same). Also on a call ended
 * already whose status has not gone out (an ending stream's drain): its
 * status becomes this one. A no-op once the status is out. For a budget
 * that must make room now. No cancel callback runs for it. */
void rpc_call_fail_now(rpc_call_t *call, ferry_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Streaming: ends the stream with OK after the queued messages are sent
 * (within RPC_DRAIN_MS). */
void rpc_call_finish(rpc_call_t *call);

/* Milliseconds left until the client's deadline; INT64_MAX without one. */
int64_t rpc_call_deadline_left_ms(const rpc_call_t *call);

/* True once the client went away, the deadline passed or the server is
 * shutting down. */
bool rpc_call_is_cancelled(const rpc_call_t *call);

/* True once the call is over: its final status has gone out, or it was
 * cancelled (by its client, its deadline, the server, or RPC_DRAIN_MS), and
 * none of its messages is queued any more. A handler that counts its calls
 * (against a limit, say) counts an ended one until then. */
bool rpc_call_is_done(const rpc_call_t *call);

/* True once the server serving the call is shutting down (its grace period
 * has begun): then rpc_call_is_cancelled is true for that reason, whatever
 * the deadline, and a handler that gives up on the call should say so
 * (UNAVAILABLE: retry on another replica), not that the deadline passed. */
bool rpc_call_is_stopping(const rpc_call_t *call);

/* Registers `cb`, run once (on a server thread) when the call is cancelled
 * (client gone, deadline, shutdown) before the handler ended it. If the call
 * is already cancelled or has already ended (a cancellation seen before the
 * registration, say while the call was handed between threads), runs it at
 * once, on the caller's thread: the caller must not hold a lock the callback
 * takes. A later registration replaces an earlier one (and, on a call
 * already cancelled, runs too). The callback should end the call;
 * if neither it nor the handler does, this layer ends it (CANCELLED, or
 * UNAVAILABLE at shutdown) once the handler has returned, so a handler that
 * keeps the call past its return must hold a reference (rpc_call_ref). */
void rpc_call_on_cancel(rpc_call_t *call, void (*cb)(rpc_call_t *call, void *arg), void *arg);

/* Handlers that keep a call past their return hold a reference; the call's
 * memory lives until the last reference is dropped and the call has ended. */
void rpc_call_ref(rpc_call_t *call);
void rpc_call_unref(rpc_call_t *call);

/* The request's bytes as they arrived, which the handler's request was
 * decoded from (len 0: every field at its default); valid as long as the
 * call. For a handler that keeps a field exactly as the client sent it
 * (rpc_field_find), of a method whose row sets keep_request_bytes: for any
 * other the bytes are freed once decoded, and len is 0. */
void rpc_call_request_bytes(const rpc_call_t *call, const uint8_t **data_p, size_t *len_p);

/* The client's address ("ipv4:127.0.0.1:53124"), for logs; static per call. */
const char *rpc_call_peer(const rpc_call_t *call);

/* The client's address without its port ("127.0.0.1", "fd00::7"; an IPv4
 * client of a dual-stack listener as IPv4; "unix" for a unix socket), to
 * count what one client host holds however many connections it opens;
 * static per call. */
const char *rpc_call_peer_host(const rpc_call_t *call);

/* The call's path ("/ferry.v1.Coordinator/Get"), for logs; static per call. */
const char *rpc_call_path(const rpc_call_t *call);

/* A pointer the handler's side keeps with the call (NULL until set): where
 * it parked the call, say, so that its cancel callback finds that entry at
 * once rather than by a walk. This layer never reads it; whoever sets it
 * reads and writes it under a lock of its own. */
void rpc_call_set_parked(rpc_call_t *call, void *entry);
void *rpc_call_parked(const rpc_call_t *call);

/* --- client ------------------------------------------------------------ */

typedef struct rpc_channel rpc_channel_t;
typedef struct rpc_stream rpc_stream_t;

/* What the server said, for callers that need the exact code. */
typedef struct {
    int grpc_code;         /* 0 on success */
    ferry_status_t status; /* what the call returned (see RPC_STATUS_MD) */
    char message[512];     /* the status message; "" on success, for people */
} rpc_error_t;

/* A channel's ping interval while a call is open, and how often a TLS
 * channel reads its files again (rpc_client.c, rpc_tls.c): 0 in the params
 * takes the default, another value out of range is refused. */
enum {
    RPC_KEEPALIVE_MIN_MS = 1000, /* also the shortest rpc_server.c permits */
    RPC_KEEPALIVE_DEFAULT_MS = 20000,
    RPC_KEEPALIVE_MAX_MS = 100 * RPC_KEEPALIVE_DEFAULT_MS,
    RPC_TLS_REFRESH_DEFAULT_S = 60,
    RPC_TLS_REFRESH_MAX_S = 86400
};

typedef struct {
    const char *target;          /* "127.0.0.1:7400", "dns:///ferry:7400" */
    const rpc_tls_params_t *tls; /* NULL: plaintext */
    int max_message_bytes;       /* largest response accepted; 0: RPC_DEFAULT_MAX_MESSAGE */
    int keepalive_ms;            /* 0: RPC_KEEPALIVE_DEFAULT_MS; else MIN..MAX */
    int tls_refresh_s;           /* 0: RPC_TLS_REFRESH_DEFAULT_S; else 1..MAX */
} rpc_channel_params_t;

/* FERRY_RPC_KEEPALIVE_MS and FERRY_TLS_REFRESH_S, for a program (or
 * libferry, for a field its caller left unset) to put in the params: the
 * value when it is a whole number in range, else 0 (the default), with a
 * warning naming the variable when it is set. rpc_channel_create itself
 * reads no environment. */
int rpc_env_keepalive_ms(void);
int rpc_env_tls_refresh_s(void);

ferry_status_t rpc_channel_create(const rpc_channel_params_t *params, rpc_channel_t **channel_p);
void rpc_channel_destroy(rpc_channel_t *channel);

/* Calls `path` ("/ferry.v1.Coordinator/Lookup") with `request` and waits up
 * to timeout_ms (<= 0: no deadline). On OK, *response_p is the decoded
 * response (free with protobuf_c_message_free_unpacked(m, NULL)). Otherwise
 * returns the status mapped from the gRPC code; `err` (may be NULL) gets the
 * exact code and message. On a channel whose last connection attempt
 * failed, this call (and every other, streams too) first makes one fresh
 * attempt, 250 ms of its time at most, rather than fail at once until
 * gRPC's reconnect backoff runs out. */
ferry_status_t rpc_unary(rpc_channel_t *channel, const char *path, const ProtobufCMessage *request,
                         const ProtobufCMessageDescriptor *response_desc, int64_t timeout_ms,
                         ProtobufCMessage **response_p, rpc_error_t *err);

/* Interrupting a thread's wait. A thread may name a check
 * (rpc_interrupt_set, per thread): while it waits for a unary call (every
 * rpc_unary*), it polls the call every RPC_INTERRUPT_POLL_MS and calls the
 * check, holding no lock of this layer. The first time the check returns
 * true the thread is interrupted: the call in flight is cancelled and ends
 * FERRY_ERR_CANCELLED ("interrupted"), and so does at once every unary call
 * the thread makes until its check is set again. A thread without a check
 * waits as before, with no poll. The check of libferry's callers
 * (ferry_interrupt_check_set) and of its own threads at disconnect are
 * these. */
enum { RPC_INTERRUPT_POLL_MS = 100 };

typedef bool (*rpc_interrupt_fn)(void *arg);

/* Names this thread's check (fn NULL: none) and clears its trip. */
void rpc_interrupt_set(rpc_interrupt_fn fn, void *arg);

/* Clears this thread's trip, keeping its check: a caller's next call is
 * not interrupted by the last one's check. */
void rpc_interrupt_rearm(void);

/* Whether this thread is interrupted: tripped before, or its check says so
 * now (which trips it). False without a check. */
bool rpc_interrupted(void);

/* Whether this thread has a check, and whether it tripped (no new poll). */
bool rpc_interrupt_armed(void);
bool rpc_interrupt_tripped(void);

/* Sleeps ms, polling the check as a call does; false when interrupted
 * (at once, or during the sleep). */
bool rpc_interrupt_sleep(int64_t ms);

/* Metadata sent with a call: key in lower case, value text. */
typedef struct {
    const char *key;
    const char *value;
} rpc_md_t;

enum { RPC_MAX_MD = 4 }; /* pairs rpc_unary_md and rpc_stream_open_md send at most */

/* As rpc_unary, sending the n_md pairs of `md` (an etcd auth token, say) as
 * the call's metadata. */
ferry_status_t rpc_unary_md(rpc_channel_t *channel, const char *path,
                            const ProtobufCMessage *request, const rpc_md_t *md, size_t n_md,
                            const ProtobufCMessageDescriptor *response_desc, int64_t timeout_ms,
                            ProtobufCMessage **response_p, rpc_error_t *err);

/* Waits at most timeout_ms until the channel has a connection (READY); a
 * channel whose last attempt failed tries again at once (its reconnect
 * backoff is reset), so one call sees one fresh attempt, as a new TCP
 * connection would. FERRY_OK: connected. FERRY_ERR_UNAVAILABLE: the
 * attempt failed (refused, TLS handshake); FERRY_ERR_TIMED_OUT: no answer
 * within timeout_ms. Either way no call has gone out on the channel, which
 * is what lets a caller send a non-idempotent request elsewhere. `err`
 * (may be NULL) says which in words. */
ferry_status_t rpc_channel_connect(rpc_channel_t *channel, int64_t timeout_ms, rpc_error_t *err);

/* A thread that keeps gRPC's I/O going while no call is in flight. gRPC
 * core reads a connection's socket only while some thread polls (a call or
 * a server waiting), so in a process that is otherwise quiet a channel
 * learns that its server went away only when the next call writes into the
 * dead connection, and that call may or may not have left. With the
 * poller, the channel sees the close at once and the next call makes a new
 * connection. (gRPC's default engine on Linux, epoll1, lets any polling
 * thread read every socket.) */
typedef struct rpc_poller rpc_poller_t;

ferry_status_t rpc_poller_start(rpc_poller_t **poller_p);
void rpc_poller_stop(rpc_poller_t *poller); /* NULL: no-op */

/* As rpc_unary, with the request already packed (request_len bytes): a
 * message built with rpc_pack_with_field, say. */
ferry_status_t rpc_unary_packed(rpc_channel_t *channel, const char *path, const void *request,
                                size_t request_len, const ProtobufCMessageDescriptor *response_desc,
                                int64_t timeout_ms, ProtobufCMessage **response_p,
                                rpc_error_t *err);

/* As rpc_unary, with the request and response as raw bytes (for tools and
 * tests that must send what protobuf-c would not, such as malformed
 * requests). On OK, *response_p is a malloc'd copy of the response bytes
 * (NULL when empty; free with free()) and *response_len_p its length. */
ferry_status_t rpc_unary_raw(rpc_channel_t *channel, const char *path, const void *request,
                             size_t request_len, int64_t timeout_ms, void **response_p,
                             size_t *response_len_p, rpc_error_t *err);

/* Starts a server-streaming call; timeout_ms bounds the whole stream
 * (<= 0: none). */
ferry_status_t rpc_stream_open(rpc_channel_t *channel, const char *path,
                               const ProtobufCMessage *request,
                               const ProtobufCMessageDescriptor *response_desc, int64_t timeout_ms,
                               rpc_stream_t **stream_p);

/* As rpc_stream_open, sending the n_md pairs of `md` (at most RPC_MAX_MD;
 * more is FERRY_ERR_MISUSE, nothing sent) as the call's metadata.
 * The request is sent and the client's side closed at once: for a method
 * that the server declares bidirectional (etcd's Watch) this is one
 * request, then the server's messages. */
ferry_status_t rpc_stream_open_md(rpc_channel_t *channel, const char *path,
                                  const ProtobufCMessage *request, const rpc_md_t *md, size_t n_md,
                                  const ProtobufCMessageDescriptor *response_desc,
                                  int64_t timeout_ms, rpc_stream_t **stream_p);

/* Waits up to timeout_ms (<= 0: until the stream's deadline) for the next
 * message. FERRY_OK with *msg_p set: a message (free it as above).
 * FERRY_OK with *msg_p NULL: the stream ended with OK. FERRY_ERR_TIMED_OUT
 * with err->grpc_code 0 (rpc_stream_idle): nothing arrived within
 * timeout_ms; the stream goes on. Any other status: the stream ended with that status (err says the
 * exact code and message). */
ferry_status_t rpc_stream_read(rpc_stream_t *stream, int64_t timeout_ms, ProtobufCMessage **msg_p,
                               rpc_error_t *err);

/* Whether rpc_stream_read's (status, err) says "nothing arrived within
 * timeout_ms; the stream goes on", rather than an end: the one place that
 * tells that from a stream that ended on its deadline (TIMED_OUT with a
 * nonzero grpc_code). */
static inline bool rpc_stream_idle(ferry_status_t status, const rpc_error_t *err)
{
    return status == FERRY_ERR_TIMED_OUT && err->grpc_code == 0;
}

/* Cancels the stream from any thread: a read waiting in another thread
 * returns (the stream ended, CANCELLED). The stream must still exist: the
 * caller orders this against rpc_stream_destroy. */
void rpc_stream_cancel(rpc_stream_t *stream);

/* Cancels the stream (the server sees the client go away) and frees it.
 * NULL is a no-op. */
void rpc_stream_destroy(rpc_stream_t *stream);

/* --- one field's bytes as they came (rpc_field.c) ----------------------- */

/* Protobuf lets a length-delimited field (message, string, bytes) stand
 * anywhere in a message, so a message can travel as "its other fields,
 * packed" followed by one field whose bytes are taken as they came, never
 * decoded and packed again. Ferry carries the RdmaMetadata a passive worker
 * packed this way, byte for byte, from Register to etcd to the writer's
 * data plane. */

/* The value of field `number` (length-delimited) at the top level of the
 * encoded message data[len]: *value_p points into data. FERRY_ERR_NOT_FOUND
 * when the field is absent; FERRY_ERR_INVALID_ARGUMENT when it occurs more
 * than once (protobuf would merge the occurrences, so no one span holds the
 * value), has another wire type, or data is not a valid encoding. */
ferry_status_t rpc_field_find(const uint8_t *data, size_t len, uint32_t number,
                              const uint8_t **value_p, size_t *value_len_p);

/* Packs `msg` followed by field `number` with `value` as its bytes (tag,
 * length, value); value NULL: the field is left out. The field must be a
 * singular length-delimited field of msg's type, unset in msg (a message
 * field NULL): FERRY_ERR_MISUSE otherwise. *data_p is malloc'd (free it);
 * FERRY_ERR_NO_MEMORY. */
ferry_status_t rpc_pack_with_field(const ProtobufCMessage *msg, uint32_t number,
                                   const uint8_t *value, size_t value_len, uint8_t **data_p,
                                   size_t *len_p);

/* The number of the field called `name` in `desc` (0 when none): for
 * rpc_field_find and rpc_pack_with_field without numbers written twice. */
uint32_t rpc_field_number(const ProtobufCMessageDescriptor *desc, const char *name);

#endif /* FERRY_RPC_H */
