/*
 * ferry/coordinator.h: the coordinator client of libferry, a layer on the
 * public data-plane API (ferry/ferry.h) and nothing else: it binds
 * operations to ferry-coordinator records through ferry_op_add_listener,
 * never through the data plane's internals, and the data plane never names
 * it.
 */
#ifndef FERRY_COORDINATOR_H
#define FERRY_COORDINATOR_H

#include "ferry/ferry.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- coordinator ------------------------------------------------------ */

/* A client of ferry-coordinator (ferry.v1.Coordinator over gRPC). One per
 * process is plenty: it holds one channel, one session lease (made by its
 * first Register or Claim; every record and claim of the client goes on it,
 * so a registration is one etcd write), one thread that keeps the lease
 * alive and does nothing else (no other call holds a renewal back), one
 * session thread that reports operations' ends and releases their records,
 * and one Watch stream (its own
 * thread) that follows the records of bound operations. When the process dies, the lease expires,
 * and with it all of its records and claims: their peers learn EXPIRED or ERRORED within the TTL.
 */
typedef struct ferry_coordinator ferry_coordinator_t;

typedef enum {
    FERRY_COORDINATOR_PARAM_FIELD_TIMEOUT = 1u << 0,
    FERRY_COORDINATOR_PARAM_FIELD_TLS = 1u << 1,
    FERRY_COORDINATOR_PARAM_FIELD_KEEPALIVE_MS = 1u << 2,
    FERRY_COORDINATOR_PARAM_FIELD_TLS_REFRESH_S = 1u << 3,
} ferry_coordinator_param_field_t;

/* A field's bit unset takes its default; a value out of range with its bit
 * set is refused (FERRY_ERR_INVALID_ARGUMENT, naming the field). */
typedef struct {
    uint64_t field_mask; /* ferry_coordinator_param_field_t bits */
    /* One gRPC target, required: "127.0.0.1:7400", "dns:///ferry:7400", or
     * "ipv4:10.0.0.1:7400,10.0.0.2:7400" (addresses tried in order); a list
     * without the ipv4:/ipv6: scheme ("a:7400,b:7400") is refused. */
    const char *target;
    int timeout_ms;              /* per call, >= 1; unset: 10000 */
    const char *tls_ca_file;     /* TLS: PEM of the CA that signed the coordinator */
    const char *tls_cert_file;   /* TLS: client certificate (optional) */
    const char *tls_key_file;    /* TLS: its key */
    const char *tls_server_name; /* TLS: name to verify instead of the target's host */
    /* While a call (the Watch stream included) is open, the channel pings
     * every keepalive_ms and drops a connection whose ping goes unanswered
     * for 10 s (or keepalive_ms, if shorter), so a coordinator whose host
     * vanished or froze is left within that, not after TCP gives up. 1000
     * to 2000000; unset: FERRY_RPC_KEEPALIVE_MS when it holds such a
     * number, else 20000. */
    int keepalive_ms;
    /* With TLS: how often the certificate, key and CA files are read again
     * (a renewed one is used from the next handshake). 1 to 86400; unset:
     * FERRY_TLS_REFRESH_S when it holds such a number, else 60. */
    int tls_refresh_s;
} ferry_coordinator_params_t;

FERRY_API ferry_status_t ferry_coordinator_connect(const ferry_coordinator_params_t *params,
                                                   ferry_coordinator_t **coordinator_p);

/* Closes the client once every operation bound to it has been destroyed
 * and no other thread is inside ferry_op_publish or a by-ID begin with it:
 * otherwise it returns FERRY_ERR_BUSY and changes nothing (a call made
 * once disconnect began is refused, FERRY_ERR_MISUSE; one made after it
 * returned uses freed memory, as with any freed handle). The
 * last duties of destroyed operations (a release, a report) each get their
 * try first (a received operation's release waits for its writer's report,
 * at most a third of the session TTL) and, if refused, one more, all
 * within one timeout_ms; what is left then leaves with the session lease
 * when it expires (at once when the thread's interrupt check stops the
 * wait: ferry_interrupt_check_set). NULL is a no-op (FERRY_OK). */
FERRY_API ferry_status_t ferry_coordinator_disconnect(ferry_coordinator_t *coordinator);

/* Interrupting a wait on the coordinator. The calling thread's check
 * (check NULL: none; per thread, as ferry_last_error_message): while the
 * thread waits on the coordinator in ferry_op_publish,
 * ferry_write_begin_by_id, ferry_read_begin_by_id or
 * ferry_coordinator_disconnect, libferry calls check(arg) on it every
 * 100 ms or so, holding none of its locks. When it returns true the wait
 * ends: the call in flight is cancelled, and the function returns
 * FERRY_ERR_CANCELLED ("interrupted"), except disconnect, which then stops
 * waiting for the last duties of destroyed operations (they leave with the
 * session lease), stops its threads within about as long, and returns
 * FERRY_OK (the client is gone). What an interrupted publish or claim may
 * have left at the coordinator is handled as for a timeout (see those).
 * Without a check a call waits up to timeout_ms. A signal handler cannot
 * cancel a call, but it can set a flag the check reads (Ctrl-C in the
 * Python binding is this). The check should not call libferry. */
typedef bool (*ferry_interrupt_check_t)(void *arg);

FERRY_API void ferry_interrupt_check_set(ferry_interrupt_check_t check, void *arg);

/* Which optional fields of ferry_publish_params_t are set; request_id and
 * access_token are always read. Unset fields take their defaults; a bit
 * this header does not name is refused (FERRY_ERR_INVALID_ARGUMENT). */
typedef enum {
    FERRY_PUBLISH_PARAM_FIELD_TTL = 1u << 0,
} ferry_publish_param_field_t;

/* A request ID or token that breaks its rule (below) is refused at once,
 * FERRY_ERR_INVALID_ARGUMENT naming the field, as the coordinator would
 * refuse it, by publish and a by-ID begin alike. */
typedef struct {
    uint64_t field_mask;      /* ferry_publish_param_field_t bits */
    const char *request_id;   /* 1..128 bytes of [A-Za-z0-9._:-]; required */
    const char *access_token; /* 16..256 printable bytes; NULL: libferry draws one ("":
                                 FERRY_ERR_INVALID_ARGUMENT) */
    /* FIELD_TTL: TTL of the session lease when this call makes it. Unset
     * (or 0): the coordinator's. Negative: FERRY_ERR_INVALID_ARGUMENT. */
    int ttl_s;
} ferry_publish_params_t;

/* Passive: registers the operation's metadata at the coordinator under
 * params->request_id, and keeps the registration alive while the operation
 * lives. The operation then also learns from the coordinator when its writer
 * failed (ERRORED, FERRY_ERR_PEER_FAILED), cancelled (CANCELLED), or its own
 * registration expired (ERRORED, FERRY_ERR_EXPIRED), within the TTL.
 * Cancelling it, or destroying it unfinished, cancels it at the coordinator,
 * and the writer learns it; destroying it releases its record (tried again
 * while the coordinator refuses, because the writer has not reported yet,
 * or does not answer; a record still open 2 x TTL after the destroy is
 * cancelled, then released). The client's own thread sends both, so
 * destroy waits for no coordinator call (not even one of that thread
 * on this operation already in flight: only while the thread applies what
 * it learned to the operation). FERRY_ERR_ALREADY_EXISTS when the
 * request ID is taken; FERRY_ERR_FAILED_PRECONDITION for an operation that
 * is final already (cancelled, say). The done callback stays the caller's (the client listens).
 * A Register whose answer is UNAVAILABLE (a replica that went mid-call, a
 * coordinator rollout), or the server's CANCELLED (a replica shutting down
 * cancels the calls that reach it late), is sent again within the client's
 * timeout, pausing
 * 20 ms doubling to 500 ms; a try whose answer never came may have been
 * applied, and the coordinator answers the next one, which carries the same
 * access token, lease and metadata, as registered (coordinator.proto,
 * Register). So the access token is the caller's, or one libferry draws
 * (never the coordinator's pick, which a lost answer would take with it).
 * When publish still fails without knowing whether the record was written
 * (UNAVAILABLE, FERRY_ERR_TIMED_OUT, or CANCELLED by the thread's interrupt
 * check: FERRY_ERR_CANCELLED means only that; a server's is UNAVAILABLE),
 * the record it may have left is taken
 * back by the client's thread (Cancel, Release) when libferry drew the
 * token; with the caller's token it is the caller's: publishing the
 * operation again with that token takes it over, and it is taken back when
 * the operation is destroyed without having done so (or at disconnect). One publish of an
 * operation at a time: two at once from two threads may both register it
 * (the Python binding refuses the second). */
FERRY_API ferry_status_t ferry_op_publish(ferry_op_t *op, ferry_coordinator_t *coordinator,
                                          const ferry_publish_params_t *params);

/* The access token of a published operation (the caller's or the one the
 * one libferry drew); NULL when not published. Valid until destroy. */
FERRY_API const char *ferry_op_access_token(const ferry_op_t *op);

/* Which optional fields of ferry_claim_params_t are set; request_id and
 * access_token are always read. As for publish, unknown bits are refused. */
typedef enum {
    FERRY_CLAIM_PARAM_FIELD_WAIT = 1u << 0,
    FERRY_CLAIM_PARAM_FIELD_TTL = 1u << 1,
} ferry_claim_param_field_t;

typedef struct {
    uint64_t field_mask;      /* ferry_claim_param_field_t bits */
    const char *request_id;   /* required */
    const char *access_token; /* required */
    /* FIELD_WAIT: wait this long for the passive side to register. Unset
     * (or 0): do not wait. Negative: FERRY_ERR_INVALID_ARGUMENT. */
    int wait_ms;
    /* FIELD_TTL: TTL of the session lease when this call makes it. Unset
     * (or 0): the coordinator's. Negative: FERRY_ERR_INVALID_ARGUMENT. */
    int ttl_s;
} ferry_claim_params_t;

/* Active, by request ID: claims the operation at the coordinator (its
 * Claim, on the client's session lease: the one admission decision, see
 * coordinator.proto), one round trip that waits up to wait_ms for the
 * operation to appear (while the client has no session lease yet, the wait
 * is a Lookup's and the Claim follows it: the call that makes the lease
 * holds the client's other Registers and Claims until it is answered),
 * refuses it unless it is still open and pairs with
 * local (kind, count, sizes, as ferry_metadata_check), and answers its
 * metadata; only then starts the transfer, as ferry_write_begin /
 * ferry_read_begin do. A refused or failed Claim returns here with nothing
 * written; a Claim is never sent twice, and one whose answer did not come
 * (FERRY_ERR_TIMED_OUT, FERRY_ERR_UNAVAILABLE, which is also what a
 * server's CANCELLED becomes) may have been granted and is given up in the
 * background. Complete goes out from the session thread when
 * the operation ends (or is destroyed), tried again while the coordinator
 * cannot be reached (or cancels it, shutting down), so destroy does not wait for it. Errors: those
 * of the coordinator (FERRY_ERR_NOT_FOUND, FERRY_ERR_PERMISSION_DENIED,
 * FERRY_ERR_FAILED_PRECONDITION when the operation is taken or no longer
 * open, FERRY_ERR_KIND_MISMATCH, FERRY_ERR_SIZE_MISMATCH,
 * FERRY_ERR_TIMED_OUT, FERRY_ERR_UNAVAILABLE, and FERRY_ERR_RESOURCE_EXHAUSTED
 * when the replica's bounds on waits refused the last look of wait_ms: the
 * wait asks again after UNAVAILABLE and RESOURCE_EXHAUSTED, with pauses,
 * until wait_ms runs out), and those of the begin calls. The done callback
 * stays the caller's. */
FERRY_API ferry_status_t ferry_write_begin_by_id(ferry_connector_t *connector,
                                                 ferry_coordinator_t *coordinator,
                                                 const ferry_claim_params_t *params,
                                                 const ferry_descriptor_t *local, size_t n,
                                                 ferry_op_t **op_p);
FERRY_API ferry_status_t ferry_read_begin_by_id(ferry_connector_t *connector,
                                                ferry_coordinator_t *coordinator,
                                                const ferry_claim_params_t *params,
                                                const ferry_descriptor_t *local, size_t n,
                                                ferry_op_t **op_p);

#ifdef __cplusplus
}
#endif

#endif /* FERRY_COORDINATOR_H */
