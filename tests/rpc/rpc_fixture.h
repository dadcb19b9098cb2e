/*
 * rpc_fixture.h: a real rpc server on 127.0.0.1:0 serving a test table of
 * ferry.v1.Coordinator handlers, and a real channel to it.
 *
 * Get (unary), by request_id:
 *   "missing"  fails NOT_FOUND ("operation missing not found");
 *   "later"    is answered from another thread after the handler returned;
 *   "hold..."  (any ID that starts so) is kept (fixture.held_unary, with a
 *              reference) until it is cancelled: the cancel callback fails
 *              it and counts;
 *   otherwise  replies with operation.request_id = request_id,
 *              owner "echo", header.revision 7.
 * Watch (stream):
 *   request_id_prefix "count:N" sends N messages (header.revision 1..N,
 *   created on the first) and finishes;
 *   request_id_prefix "fail:N" queues N messages of FIXTURE_FAT_BYTES
 *   (header.coordinator a run of 'x', header.revision 1..N) and fails
 *   RESOURCE_EXHAUSTED, all before its client can have read any;
 *   request_id_prefix "fill:N" queues up to N messages of
 *   FIXTURE_FAT_BYTES, one unit each (rpc_call_send_msgs), until one is
 *   refused; it records how many went in and whether the budget refused
 *   (fixture.fill_sent, fill_over_budget), then fails RESOURCE_EXHAUSTED
 *   if one was refused, else finishes;
 *   request_id "hold" is kept (fixture.held_stream) until cancelled; its
 *   cancel callback records what rpc_call_send answers then;
 *   request_id "share:N" queues fixture.shared (a message of
 *   FIXTURE_FAT_BYTES packed once) N times, one unit each, "own:N" N
 *   messages like it packed for the call alone, "pair" a small message
 *   and one of FIXTURE_FAT_BYTES as one unit, packed for the call alone,
 *   and is kept (in
 *   fixture.kept, FIXTURE_KEPT at most) until cancelled, or until the test
 *   takes it from there.
 *   Every Watch counts its unsent messages in fixture.budget
 *   (FIXTURE_WATCH_BUDGET bytes, rpc_call_set_send_budget).
 *   A Watch request may be FIXTURE_WATCH_MAX_REQUEST bytes at most (its
 *   row's max_request_bytes); Get takes the server's FIXTURE_MAX_MESSAGE.
 *
 * Requests held together are bounded: FIXTURE_MAX_HELD bytes; Health.Watch
 * streams open at once: FIXTURE_HEALTH_WATCHES.
 *
 * The server's observer counts the calls that ended (fixture.calls_ended)
 * and keeps the last one's code (fixture.last_code).
 *
 * Threads: handlers run on server threads; the fields below are guarded by
 * fixture.lock and changes are signalled on fixture.cond.
 */
#ifndef FERRY_TESTS_RPC_FIXTURE_H
#define FERRY_TESTS_RPC_FIXTURE_H

#include <pthread.h>
#include <stdbool.h>

#include "rpc/rpc.h"

#define FIXTURE_MAX_MESSAGE       (64 * 1024)
#define FIXTURE_WATCH_MAX_REQUEST 1024
#define FIXTURE_FAT_BYTES         1024
#define FIXTURE_MAX_HELD          (96 * 1024)
#define FIXTURE_HEALTH_WATCHES    12
#define FIXTURE_WATCH_BUDGET      (512 * 1024)
#define FIXTURE_KEPT              4

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    rpc_server_t *server;
    rpc_channel_t *channel;
    int port;

    int cancels;             /* cancel callbacks run */
    int calls_ended;         /* calls whose final status went out (the observer) */
    int last_code;           /* the gRPC code the last of them ended with */
    rpc_call_t *held_unary;  /* a reference, until cancelled */
    rpc_call_t *held_stream; /* a reference, until cancelled */
    ferry_status_t send_after_cancel;
    rpc_send_budget_t *budget;      /* every Watch's; constant */
    rpc_msg_t *shared;              /* "share:N"'s message; constant */
    rpc_call_t *kept[FIXTURE_KEPT]; /* "share:N" streams, a reference each */
    int fill_sent;                  /* "fill:N": messages queued */
    bool fill_over_budget;          /* "fill:N": the budget refused the next */
    bool fill_done;
    pthread_t later_thread;
    bool later_started;
} fixture_t;

/* Starts a server (calls_armed as given; 0: default) and a channel. */
int fixture_start(fixture_t *f, int calls_armed);
/* Destroys the channel and the server (if not already shut down). */
void fixture_stop(fixture_t *f);
/* cmocka's setup and teardown: a fixture started (default calls armed) in
 * *state; stopped and freed. */
int fixture_setup(void **state);
int fixture_teardown(void **state);

/* Waits until pred(f) holds (checked under f->lock) or timeout_ms passes. */
bool fixture_wait(fixture_t *f, bool (*pred)(const fixture_t *f), int timeout_ms);

/* Milliseconds on a monotonic clock. */
long long fixture_now_ms(void);

/* The service's handlers, for servers built by hand. */
extern const rpc_method_t fixture_methods[];
extern const size_t fixture_n_methods;

#endif /* FERRY_TESTS_RPC_FIXTURE_H */
