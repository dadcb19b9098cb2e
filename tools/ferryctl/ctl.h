/*
 * ctl.h: ferryctl's parts. ferryctl.c parses flags and runs one command;
 * ctl_conn.c holds the coordinators it may talk to and tries them in order;
 * ctl_print.c writes what came back, as a table for people or as JSON for
 * scripts.
 *
 * Threads: one. Signals only set ctl_stop (watch polls it).
 */
#ifndef FERRY_CTL_H
#define FERRY_CTL_H

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rpc/rpc.h"
#include "ferry/v1/coordinator.pb-c.h"

/* Exit codes (README's ferryctl section). Each gRPC code a command can meet
 * maps to one of them in ctl_exit_code, the one place that decides. */
enum {
    CTL_EXIT_OK = 0,
    CTL_EXIT_FAILED = 1,       /* anything else (INTERNAL, UNKNOWN, local errors) */
    CTL_EXIT_USAGE = 2,        /* bad flags, or INVALID_ARGUMENT from the coordinator */
    CTL_EXIT_NOT_FOUND = 3,    /* NOT_FOUND */
    CTL_EXIT_DENIED = 4,       /* PERMISSION_DENIED, UNAUTHENTICATED */
    CTL_EXIT_PRECONDITION = 5, /* FAILED_PRECONDITION, ALREADY_EXISTS */
    CTL_EXIT_UNAVAILABLE = 6,  /* no coordinator answered (UNAVAILABLE, DEADLINE_EXCEEDED) */
    CTL_EXIT_NOT_SERVING = 7,  /* health: a coordinator answered but is not SERVING */
    CTL_EXIT_INTERRUPTED = 130 /* list: SIGINT or SIGTERM before its last page */
};

/* Set by SIGINT and SIGTERM. */
extern volatile sig_atomic_t ctl_stop;

/* --- coordinators (ctl_conn.c) ------------------------------------------ */

typedef struct {
    char **targets;         /* from --coordinator a,b,c; owned */
    size_t n_targets;       /* >= 1 */
    size_t current;         /* the target `channel` reaches */
    rpc_channel_t *channel; /* NULL until first used */
    rpc_tls_params_t tls;   /* used when use_tls */
    bool use_tls;
    int64_t timeout_ms; /* each unary call's deadline */
} ctl_conn_t;

/* Splits `list` ("a,b") into targets. FERRY_ERR_INVALID_ARGUMENT (said on
 * stderr) for an empty entry. */
ferry_status_t ctl_conn_init(ctl_conn_t *conn, const char *list);
void ctl_conn_cleanup(ctl_conn_t *conn);
const char *ctl_conn_target(const ctl_conn_t *conn);

/* True for the codes that mean "this coordinator did not answer; another
 * may": UNAVAILABLE and DEADLINE_EXCEEDED. */
bool ctl_code_is_unreachable(int grpc_code);

/* Calls /ferry.v1.Coordinator/<method> (or any full path starting with '/')
 * on the current coordinator, then on the next ones in order while the
 * answer is ctl_code_is_unreachable; a coordinator that answered becomes the
 * current one. As rpc_unary otherwise. */
ferry_status_t ctl_conn_unary(ctl_conn_t *conn, const char *method, const ProtobufCMessage *req,
                              const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp_p,
                              rpc_error_t *err);

/* The same call on one target only (health asks each coordinator). */
ferry_status_t ctl_conn_unary_at(ctl_conn_t *conn, size_t target, const char *path,
                                 const ProtobufCMessage *req,
                                 const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp_p,
                                 rpc_error_t *err);

/* Opens a Watch on the current coordinator, or the next ones in order, and
 * reads its first (created) message into *first_p. Each try waits at most
 * timeout_ms for that message. */
ferry_status_t ctl_conn_watch(ctl_conn_t *conn, const Ferry__V1__WatchRequest *req,
                              rpc_stream_t **stream_p, Ferry__V1__WatchResponse **first_p,
                              rpc_error_t *err);

/* Moves to the next coordinator (after a stream ended). */
void ctl_conn_next(ctl_conn_t *conn);

/* The exit code for a call's outcome. */
int ctl_exit_code(ferry_status_t status, const rpc_error_t *err);

/* --- output (ctl_print.c) ----------------------------------------------- */

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
/* One JSON object, on one line:
 * {"revision":R,"coordinator":C,"operations":[...],"next_page_token":T}
 * (next_page_token only when set). */
void ctl_print_list_json(Ferry__V1__Operation *const *ops, size_t n, const char *next_page_token,
                         const Ferry__V1__ResponseHeader *header);
/* {"revision":R,"coordinator":C,"operation":{...}} on one line. */
void ctl_print_get_json(const Ferry__V1__Operation *op, const Ferry__V1__ResponseHeader *header);
/* {"coordinator":T,"status":S} on one line: S is the serving status
 * ("SERVING") or the gRPC code of a failed check ("UNAVAILABLE"). */
void ctl_print_health_json(const char *target, const char *status);
/* {"released":ID,"revision":R} on one line. */
void ctl_print_released_json(const char *request_id, int64_t revision);
/* A watch event: one table row (the header row before the first), or one
 * JSON object per line: {"revision":R,"coordinator":C,"type":"PUT",
 * "operation":{...}}. */
void ctl_print_event(const Ferry__V1__WatchEvent *ev, const Ferry__V1__ResponseHeader *header,
                     bool json);

#endif /* FERRY_CTL_H */
