/*
 * ctl.h: ferryctl's parts. ferryctl.c parses flags and runs one command;
 * ctl_conn.c holds the coordinators it may talk to and tries them in order;
 * ctl_print.c writes what came back, as a table for people or as JSON for
 * scripts.
 *
 * Threads: one. In list and watch, SIGINT and SIGTERM set ctl_stop (list
 * looks at it between pages, watch polls it); every other command keeps
 * their default action, so it ends at once however long its call may wait.
 */
#ifndef FERRY_CTL_H
#define FERRY_CTL_H

#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "rpc/rpc.h"
#include "ferry/v1/coordinator.pb-c.h"

/* Exit codes (README's ferryctl section), named below by the gRPC code a
 * command meets. ctl_exit_code, the one place that decides, reads the
 * ferry_status_t that the rpc layer derived from that code (its
 * rpc_status_from_grpc, or the coordinator's own status beside it), so
 * nothing here classifies raw gRPC codes; err->grpc_code is for display. */
enum {
    CTL_EXIT_OK = 0,
    CTL_EXIT_FAILED = 1,       /* anything else (INTERNAL, UNKNOWN, a reply that breaks the
                                * protocol, local errors, output that could not be written) */
    CTL_EXIT_USAGE = 2,        /* bad flags, or INVALID_ARGUMENT from the coordinator */
    CTL_EXIT_NOT_FOUND = 3,    /* NOT_FOUND */
    CTL_EXIT_DENIED = 4,       /* PERMISSION_DENIED, UNAUTHENTICATED */
    CTL_EXIT_PRECONDITION = 5, /* FAILED_PRECONDITION, ALREADY_EXISTS */
    CTL_EXIT_UNAVAILABLE = 6,  /* no coordinator answered (UNAVAILABLE, DEADLINE_EXCEEDED) */
    CTL_EXIT_NOT_SERVING = 7,  /* health: a coordinator answered but is not SERVING */
    CTL_EXIT_INTERRUPTED = 130 /* list: SIGINT or SIGTERM before its last page, or it
                                * stopped at what one list holds */
};

/* Set by SIGINT and SIGTERM in list and watch. Atomic, not volatile
 * sig_atomic_t: the handler may run on one of gRPC's threads (they do not
 * block the signals), and the main thread reads it; a lock-free atomic is
 * signal-safe and defined across threads. */
extern atomic_bool ctl_stop;

/* --- coordinators (ctl_conn.c) ------------------------------------------ */

typedef struct {
    char **targets;         /* from --coordinator a,b,c; owned */
    size_t n_targets;       /* >= 1 */
    size_t current;         /* the target `channel` reaches */
    rpc_channel_t *channel; /* NULL until first used */
    rpc_tls_params_t tls;   /* used when use_tls */
    bool use_tls;
    int64_t timeout_ms; /* each unary call's deadline */
    int keepalive_ms;   /* FERRY_RPC_KEEPALIVE_MS; 0: rpc's default */
    int tls_refresh_s;  /* FERRY_TLS_REFRESH_S; 0: rpc's default */
} ctl_conn_t;

/* Splits `list` ("a,b") into targets, and takes the channels' keepalive
 * and TLS refresh from the environment. FERRY_ERR_INVALID_ARGUMENT (said on
 * stderr) for an empty entry. */
ferry_status_t ctl_conn_init(ctl_conn_t *conn, const char *list);
void ctl_conn_cleanup(ctl_conn_t *conn);
const char *ctl_conn_target(const ctl_conn_t *conn);

/* True for the statuses that mean "this coordinator did not answer;
 * another may": gRPC's UNAVAILABLE (FERRY_ERR_UNAVAILABLE or
 * FERRY_ERR_TRANSPORT) and DEADLINE_EXCEEDED (FERRY_ERR_TIMED_OUT). */
bool ctl_status_is_unreachable(ferry_status_t status);

/* Calls /ferry.v1.Coordinator/<method> (or any full path starting with '/')
 * on the current coordinator, then on the next ones in order while the
 * answer is ctl_status_is_unreachable and ctl_stop is not set; a coordinator
 * that answered becomes the current one. As rpc_unary otherwise. For reads:
 * asking again elsewhere changes nothing. */
ferry_status_t ctl_conn_unary(ctl_conn_t *conn, const char *method, const ProtobufCMessage *req,
                              const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp_p,
                              rpc_error_t *err);

/* As ctl_conn_unary for a write (Cancel, Release): it goes to the next
 * coordinator only while a connection to the current one cannot be made
 * within timeout_ms (rpc_channel_connect: nothing was sent). Once a call
 * went out, its outcome is the answer, DEADLINE_EXCEEDED and UNAVAILABLE
 * included: the first coordinator may have applied it, and a second would
 * then answer for a record that is no longer there (a release that
 * succeeded would exit 3, NOT_FOUND). The connection and the call share
 * timeout_ms. */
ferry_status_t ctl_conn_write(ctl_conn_t *conn, const char *method, const ProtobufCMessage *req,
                              const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp_p,
                              rpc_error_t *err);

/* The same call on one target only (health asks each coordinator). */
ferry_status_t ctl_conn_unary_at(ctl_conn_t *conn, size_t target, const char *path,
                                 const ProtobufCMessage *req,
                                 const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp_p,
                                 rpc_error_t *err);

/* Opens a Watch on the current coordinator, or the next ones in order, and
 * reads its first (created) message into *first_p. Each try waits at most
 * timeout_ms for that message (less when ctl_stop is set: it returns
 * FERRY_ERR_CANCELLED). A coordinator is left for the next when it does not
 * answer (ctl_status_is_unreachable), is full (RESOURCE_EXHAUSTED: its
 * --max-watches; another replica may have room) or breaks the protocol
 * (DATA_LOSS: a message that does not decode, a created message whose
 * revision is negative or INT64_MAX, which watch's resume could not add one
 * to). */
ferry_status_t ctl_conn_watch(ctl_conn_t *conn, const Ferry__V1__WatchRequest *req,
                              rpc_stream_t **stream_p, Ferry__V1__WatchResponse **first_p,
                              rpc_error_t *err);

/* Moves to the next coordinator (after a stream ended). */
void ctl_conn_next(ctl_conn_t *conn);

/* True for what ends a Watch on one coordinator but not on the next:
 * ctl_status_is_unreachable, RESOURCE_EXHAUSTED (FERRY_ERR_RESOURCE_EXHAUSTED
 * or NO_MEMORY, which share that code) and DATA_LOSS (FERRY_ERR_PROTOCOL),
 * as in ctl_conn_watch. */
bool ctl_status_tries_next_watch(ferry_status_t status);

/* CLOCK_MONOTONIC in milliseconds. */
int64_t ctl_now_ms(void);

/* The exit code for a call's outcome. */
int ctl_exit_code(ferry_status_t status);

/* --- output (ctl_print.c) ----------------------------------------------- */

/* Text from a coordinator or a client (a status message, a page token, a
 * name) written where a person reads it: shown as common/text.h shows it,
 * so a control character in it prints as \xNN instead of acting on the
 * terminal. ctl_text_shown cuts it to fit buf[cap] and returns buf;
 * CTL_SHOWN_CAP(n) holds all of n bytes shown so. */
#define CTL_SHOWN_CAP(n) (4 * (n) + 1)
const char *ctl_text_shown(char *buf, size_t cap, const char *text);
void ctl_put_text(FILE *f, const char *text);

/* "REGISTERED" for OPERATION_STATE_REGISTERED; "?" for a value the enum
 * lacks. Static. */
const char *ctl_state_name(Ferry__V1__OperationState state);
const char *ctl_kind_name(Ferry__V1__OperationKind kind);
/* Parses "registered" or "OPERATION_STATE_REGISTERED" (any case). */
bool ctl_state_parse(const char *text, Ferry__V1__OperationState *state_p);
bool ctl_kind_parse(const char *text, Ferry__V1__OperationKind *kind_p);

/* A table of operations with a header row, columns as wide as their widest
 * cell. */
void ctl_print_table(Ferry__V1__Operation *const *ops, size_t n);
/* The JSON forms below return false, said on stderr, when there was no
 * memory to build the line (the command then exits CTL_EXIT_FAILED). Their
 * strings are valid UTF-8 (a byte sequence that is not becomes U+FFFD) and
 * their 64-bit numbers exact (not rounded to a double). */

/* One JSON object, on one line:
 * {"revision":R,"coordinator":C,"operations":[...],"next_page_token":T}
 * (next_page_token only when set). */
bool ctl_print_list_json(Ferry__V1__Operation *const *ops, size_t n, const char *next_page_token,
                         const Ferry__V1__ResponseHeader *header);
/* {"revision":R,"coordinator":C,"operation":{...}} on one line. */
bool ctl_print_get_json(const Ferry__V1__Operation *op, const Ferry__V1__ResponseHeader *header);
/* {"coordinator":T,"status":S} on one line: S is the serving status
 * ("SERVING") or the gRPC code of a failed check ("UNAVAILABLE"). */
bool ctl_print_health_json(const char *target, const char *status);
/* {"released":ID,"revision":R} on one line. */
bool ctl_print_released_json(const char *request_id, int64_t revision);
/* watch --json, when the replica it resumed on no longer held the changes
 * after the last one printed (OUT_OF_RANGE) and it watches from now:
 * {"revision":R,"coordinator":C,"type":"GAP","after_revision":A}: the
 * changes after A up to R were not printed (`list` shows their result).
 * Flushed; false as ctl_print_event. */
bool ctl_print_gap_json(const Ferry__V1__ResponseHeader *header, int64_t after_revision);
/* A watch event: one table row (the header row before the first), or one
 * JSON object per line: {"revision":R,"coordinator":C,"type":"PUT",
 * "operation":{...}}. Flushed; false when it could not be built or written
 * (stdout is full or gone: watching on would print into nothing). */
bool ctl_print_event(const Ferry__V1__WatchEvent *ev, const Ferry__V1__ResponseHeader *header,
                     bool json);

#endif /* FERRY_CTL_H */
