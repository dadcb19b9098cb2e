/*
 * op.c: the operation object shared by the four kinds: its state, the one
 * function that changes it (ferry__op_move, which logs every change, in the
 * manner of curl's multistate()), references, the connector's operation
 * table, and the public calls that do not depend on the kind (status, error,
 * wait, cancel, fail, done callback, listeners, destroy). Where the passive
 * and the active side differ, an operation's role (ferry__op_role_t, the
 * two at the end of this file) says what to do, not a branch on its kind.
 *
 * Listeners are how a layer above (the coordinator client) follows an
 * operation without taking its done callback: this file tells them FINAL
 * (from the loop's delivery, see ferry__connector_deliver) and DESTROY (from
 * ferry_op_destroy) and never knows who they are.
 *
 * Threads: public calls run on the caller's thread and take connector->lock;
 * ferry__* functions expect the lock held. Waiters sleep on op->cond (with
 * connector->lock), or in caller progress mode drive the loop themselves.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"
#include "worker/ferry_int.h"

/* After ferry/ferry.h (via ferry_int.h): it gives ferry__op_state_status. */
#include "common/op_state.h"
#include "common/text.h"

#define CALLER_POLL_MAX_MS 100
#define QUIESCE_SPINS      1000 /* destroy's rounds of spinning before it sleeps */

const char *ferry__op_step_name(ferry__op_state_t state)
{
    switch (state) {
#define STEP_NAME(step, phase) \
    case FERRY__OP_##step:     \
        return #step;
        FERRY__FOREACH_OP_STEP(STEP_NAME)
#undef STEP_NAME
    }
    return "UNKNOWN";
}

/* The step's state in the one table (common/op_state.h). */
static ferry_op_state_t phase_of(ferry__op_state_t s)
{
    switch (s) {
#define PHASE(step, phase) \
    case FERRY__OP_##step: \
        return FERRY__V1__OPERATION_STATE__OPERATION_STATE_##phase;
        FERRY__FOREACH_OP_STEP(PHASE)
#undef PHASE
    }
    return FERRY__V1__OPERATION_STATE__OPERATION_STATE_UNSPECIFIED;
}

const char *ferry_op_status_name(ferry_op_status_t status)
{
    switch (status) {
    case FERRY_OP_STATUS_UNINITIALIZED:
        return "UNINITIALIZED";
    case FERRY_OP_STATUS_INITIALIZED:
        return "INITIALIZED";
    case FERRY_OP_STATUS_IN_PROGRESS:
        return "IN_PROGRESS";
    case FERRY_OP_STATUS_COMPLETE:
        return "COMPLETE";
    case FERRY_OP_STATUS_CANCELLED:
        return "CANCELLED";
    case FERRY_OP_STATUS_ERRORED:
        return "ERRORED";
    }
    return "UNKNOWN";
}

static bool state_is_final(ferry__op_state_t s)
{
    return ferry__op_state_is_final(phase_of(s));
}

bool ferry__op_is_final(const ferry_op_t *op)
{
    return state_is_final(op->state);
}

/* The two sides' steps (ferry__op_role_t), defined at the end. */
static const ferry__op_role_t passive_role, active_role;

/* The table in ferry_int.h, as code. */
static bool can_move(ferry__op_state_t from, ferry__op_state_t to, bool passive)
{
    if (state_is_final(from)) {
        return false;
    }
    switch (to) {
    case FERRY__OP_READY:
        return from == FERRY__OP_NEW;
    case FERRY__OP_CLAIMING:
        return !passive && from == FERRY__OP_READY;
    case FERRY__OP_CLAIMED:
        return passive && from == FERRY__OP_READY;
    case FERRY__OP_TRANSFERRING:
        return !passive && from == FERRY__OP_CLAIMING;
    case FERRY__OP_NOTIFYING:
        return !passive && from == FERRY__OP_TRANSFERRING;
    case FERRY__OP_COMPLETE:
        /* Passive: only the admitted peer's notice completes. */
        return passive ? from == FERRY__OP_CLAIMED : from == FERRY__OP_NOTIFYING;
    case FERRY__OP_CANCELLED:
    case FERRY__OP_ERRORED:
        return true;
    default:
        return false;
    }
}

const char *ferry_direction_name(ferry_direction_t direction)
{
    switch (direction) {
    case FERRY_DIRECTION_WRITE:
        return "write";
    case FERRY_DIRECTION_READ:
        return "read";
    case FERRY_DIRECTION_RECEIVED:
        return "received";
    case FERRY_DIRECTION_SERVED:
        return "served";
    case FERRY_DIRECTION_COUNT:
        break;
    }
    return "unknown";
}

const char *ferry_outcome_name(ferry_outcome_t outcome)
{
    switch (outcome) {
    case FERRY_OUTCOME_COMPLETE:
        return "complete";
    case FERRY_OUTCOME_CANCELLED:
        return "cancelled";
    case FERRY_OUTCOME_ERRORED:
        return "errored";
    case FERRY_OUTCOME_COUNT:
        break;
    }
    return "unknown";
}

/* Counts an operation that has just become final in the connector's
 * transfers[direction][outcome]; lock held. */
static void count_final(ferry_op_t *op)
{
    static const ferry_direction_t direction_of[] = {
        [FERRY__KIND_WRITABLE] = FERRY_DIRECTION_RECEIVED,
        [FERRY__KIND_READABLE] = FERRY_DIRECTION_SERVED,
        [FERRY__KIND_WRITE] = FERRY_DIRECTION_WRITE,
        [FERRY__KIND_READ] = FERRY_DIRECTION_READ,
    };
    ferry_op_status_t status = ferry__op_state_status(phase_of(op->state));
    ferry_outcome_t outcome = status == FERRY_OP_STATUS_COMPLETE    ? FERRY_OUTCOME_COMPLETE
                              : status == FERRY_OP_STATUS_CANCELLED ? FERRY_OUTCOME_CANCELLED
                                                                    : FERRY_OUTCOME_ERRORED;
    ferry_transfer_count_t *t = &op->connector->stats.transfers[direction_of[op->kind]][outcome];

    t->ops++;
    for (size_t i = 0; i < op->n; i++) {
        t->bytes += op->descs[i].size;
    }
}

static void queue_done(ferry_op_t *op)
{
    ferry_connector_t *c = op->connector;

    if (op->done_queued) {
        return;
    }
    op->done_queued = true;
    op->done_next = NULL;
    ferry__op_ref(op);
    *c->done_tail = op;
    c->done_tail = &op->done_next;
    ferry__wake(c);
}

bool ferry__op_move(ferry_op_t *op, ferry__op_state_t to, ferry_status_t code, const char *fmt, ...)
{
    ferry__op_state_t from = op->state;
    va_list ap;

    if (!can_move(from, to, op->role->passive)) {
        if (!state_is_final(from)) {
            ferry_error("%s: refused move %s -> %s", op->label, ferry__op_step_name(from),
                        ferry__op_step_name(to));
        }
        return false;
    }
    op->state = to;
    if (fmt != NULL) {
        op->error_code = code;
        va_start(ap, fmt);
        ferry_utf8_vformat(op->error_message, sizeof(op->error_message), fmt, ap);
        va_end(ap);
    }
    if (to == FERRY__OP_ERRORED) {
        ferry_warn("%s: %s -> ERRORED: %s (%s)", op->label, ferry__op_step_name(from),
                   op->error_message, ferry_status_name(op->error_code));
    } else {
        ferry_debug("%s: %s -> %s%s%s", op->label, ferry__op_step_name(from),
                    ferry__op_step_name(to), fmt != NULL ? ": " : "",
                    fmt != NULL ? op->error_message : "");
    }
    if (state_is_final(to)) {
        count_final(op);
        atomic_store(&op->final, true);
        op->role->on_final(op);
        pthread_cond_broadcast(&op->cond);
        queue_done(op);
    }
    /* Last: a final status read without the lock finds the move's effects
     * done (the counters, a passive side's unmap). */
    atomic_store_explicit(&op->public_state, (int)to, memory_order_release);
    return true;
}

ferry_status_t ferry__op_alloc(ferry_connector_t *c, ferry__op_kind_t kind,
                               const ferry_descriptor_t *descs, size_t n, ferry_op_t **op_p)
{
    ferry_op_t *op;
    int rc;

    op = calloc(1, sizeof(*op));
    if (op == NULL || (op->descs = calloc(n, sizeof(*descs))) == NULL) {
        free(op);
        return ferry__fail(FERRY_ERR_NO_MEMORY, "operation: out of memory");
    }
    rc = ferry__cond_init_clock(&op->cond, CLOCK_MONOTONIC);
    if (rc != 0) {
        free(op->descs);
        free(op);
        return ferry__fail(FERRY_ERR_IO, "operation: pthread_cond_init: %s", strerror(rc));
    }
    memcpy(op->descs, descs, n * sizeof(*descs));
    op->n = n;
    op->connector = c;
    op->kind = kind;
    op->role =
        kind == FERRY__KIND_WRITABLE || kind == FERRY__KIND_READABLE ? &passive_role : &active_role;
    op->refs = 1;
    op->state = FERRY__OP_NEW;
    atomic_init(&op->public_state, (int)FERRY__OP_NEW);
    op->listeners_tail = &op->listeners;
    ferry__lock(c);
    op->id = c->next_op_id++;
    c->live_ops++;
    c->user_ops++;
    ferry__unlock(c);
    *op_p = op;
    return FERRY_OK;
}

void ferry__op_ref(ferry_op_t *op)
{
    op->refs++;
}

static void op_free_locked(ferry_op_t *op)
{
    ferry_connector_t *c = op->connector;

    if (op->in_table) {
        ferry__op_table_remove(op);
    }
    op->role->release(op);
    ferry_debug("%s: freed", op->label);
    while (op->listeners != NULL) {
        ferry__listener_t *l = op->listeners;
        op->listeners = l->next;
        free(l);
    }
    ferry__metadata_free(op->md);
    free(op->metadata);
    free(op->claimant_address);
    free(op->memh);
    free(op->regions);
    free(op->rkeys);
    free(op->descs);
    pthread_cond_destroy(&op->cond);
    c->live_ops--;
    if (!op->user_released) {
        c->user_ops--; /* a constructor's failure (ferry__op_free) */
    }
    if (op->released != NULL) {
        /* Not told at destroy: nothing of libferry or UCX reaches its
         * memory any more now (no request holds the op, its claimant has
         * settled, and it is unmapped). */
        op->released(op->released_arg);
    }
    free(op);
}

void ferry__op_free(ferry_op_t *op)
{
    ferry_connector_t *c = op->connector;

    ferry__lock(c);
    op_free_locked(op);
    ferry__unlock(c);
}

void ferry__op_unref(ferry_op_t *op)
{
    if (--op->refs == 0) {
        op_free_locked(op);
    }
}

static size_t bucket_of(const ferry_op_t *op)
{
    return ferry__op_is_passive(op) ? op->key[0] % FERRY__OP_BUCKETS : op->id % FERRY__OP_BUCKETS;
}

void ferry__op_table_add(ferry_op_t *op)
{
    ferry_connector_t *c = op->connector;
    size_t b = bucket_of(op);

    op->table_next = c->ops[b];
    c->ops[b] = op;
    op->in_table = true;
}

void ferry__op_table_remove(ferry_op_t *op)
{
    ferry_op_t **pp = &op->connector->ops[bucket_of(op)];

    while (*pp != NULL && *pp != op) {
        pp = &(*pp)->table_next;
    }
    if (*pp == op) {
        *pp = op->table_next;
    }
    op->in_table = false;
}

ferry_op_t *ferry__op_find_passive(ferry_connector_t *c, const uint8_t *key)
{
    for (ferry_op_t *op = c->ops[key[0] % FERRY__OP_BUCKETS]; op != NULL; op = op->table_next) {
        if (ferry__op_is_passive(op) && memcmp(op->key, key, FERRY__KEY_LEN) == 0) {
            return op;
        }
    }
    return NULL;
}

ferry_op_t *ferry__op_find_active(ferry_connector_t *c, uint64_t id)
{
    for (ferry_op_t *op = c->ops[id % FERRY__OP_BUCKETS]; op != NULL; op = op->table_next) {
        if (!ferry__op_is_passive(op) && op->id == id) {
            return op;
        }
    }
    return NULL;
}

/* ---- public ----------------------------------------------------------- */

static ferry_op_status_t public_status(ferry__op_state_t s)
{
    return ferry__op_state_status(phase_of(s));
}

/* The state as last moved, without the lock (public_state). */
static ferry__op_state_t published_state(const ferry_op_t *op)
{
    return (ferry__op_state_t)atomic_load_explicit(&op->public_state, memory_order_acquire);
}

ferry_op_status_t ferry_op_status(const ferry_op_t *op)
{
    return public_status(published_state(op));
}

ferry_status_t ferry_op_error(const ferry_op_t *op, const char **message_p)
{
    ferry__op_state_t state = published_state(op);
    ferry_status_t code = FERRY_OK;

    /* Final: error_code and error_message were written before, and never
     * are again. */
    if (state == FERRY__OP_ERRORED || state == FERRY__OP_CANCELLED) {
        code = op->error_code;
    }
    if (message_p != NULL) {
        *message_p = code == FERRY_OK ? "" : op->error_message;
    }
    return code;
}

/* The result of a final operation, lock held. */
static ferry_status_t final_result(const ferry_op_t *op)
{
    switch (op->state) {
    case FERRY__OP_COMPLETE:
        return FERRY_OK;
    case FERRY__OP_CANCELLED:
        return ferry__fail(FERRY_ERR_CANCELLED, "%s: cancelled: %s", op->label, op->error_message);
    default:
        return ferry__fail(op->error_code, "%s: %s", op->label, op->error_message);
    }
}

static int64_t now_ms(void)
{
    return ferry__clock_ms(CLOCK_MONOTONIC);
}

static ferry_status_t timed_out(const ferry_op_t *op, int timeout_ms)
{
    return ferry__fail(FERRY_ERR_TIMED_OUT, "%s: not final after %d ms (status %s)", op->label,
                       timeout_ms, ferry_op_status_name(public_status(op->state)));
}

/* Caller progress mode: this thread drives the loop while it waits. Like
 * the progress thread it spins (progresses without sleeping) for spin_ns
 * after the last sign of activity, then arms the worker and polls. Lock
 * held on entry and exit; *result_p is set when the wait is over. */
static bool drive_once(ferry_op_t *op, int timeout_ms, int64_t deadline, uint64_t *spin_end_p,
                       ferry_status_t *result_p)
{
    ferry_connector_t *c = op->connector;
    ucs_status_t armed;

    if (ferry__connector_drain(c) > 0) {
        *spin_end_p = ferry__now_ns() + c->spin_ns;
    }
    if (ferry__op_is_final(op)) {
        *result_p = final_result(op);
        return true;
    }
    if (timeout_ms >= 0 && now_ms() >= deadline) {
        *result_p = timed_out(op, timeout_ms);
        return true;
    }
    if (ferry__now_ns() < *spin_end_p || ferry__staged_busy(c)) {
        return false; /* staged copies in flight: the fd cannot tell their end */
    }
    armed = ucp_worker_arm(c->worker);
    if (armed == UCS_ERR_BUSY) {
        return false;
    }
    if (armed != UCS_OK) {
        ferry_error("connector %s: ucp_worker_arm: %s", c->name, ucs_status_string(armed));
        *result_p = ferry__fail(FERRY_ERR_TRANSPORT, "connector %s: ucp_worker_arm: %s", c->name,
                                ucs_status_string(armed));
        return true;
    }
    *spin_end_p = 0; /* armed: sleep */
    return false;
}

static ferry_status_t wait_driving(ferry_op_t *op, int timeout_ms)
{
    ferry_connector_t *c = op->connector;
    int64_t deadline = now_ms() + timeout_ms;
    struct pollfd pfd = {.fd = c->efd, .events = POLLIN};
    uint64_t spin_end = ferry__now_ns() + c->spin_ns;
    ferry_status_t status;
    unsigned i = 0;
    bool done, deliver;

    for (;;) {
        ferry__lock(c);
        done = drive_once(op, timeout_ms, deadline, &spin_end, &status);
        deliver = c->done != NULL;
        ferry__unlock(c);
        if (deliver) {
            ferry__connector_deliver(c);
        }
        if (done) {
            return status;
        }
        if (spin_end != 0) {
            ferry__spin_pause(i++);
            continue;
        }
        int64_t left = timeout_ms < 0 ? CALLER_POLL_MAX_MS : deadline - now_ms();
        if (left > 0) {
            poll(&pfd, 1, (int)(left < CALLER_POLL_MAX_MS ? left : CALLER_POLL_MAX_MS));
        }
        spin_end = ferry__now_ns() + c->spin_ns;
    }
}

/* Thread mode: poll the operation's final flag for up to spin_ns before
 * sleeping on its condition variable; an operation that ends meanwhile
 * costs no wake-up. While it polls, the waiter also drives the loop
 * whenever the lock is free (trylock: it never waits for the progress
 * thread): the next message of its transfer (an ADMIT, a flush, a NOTICE)
 * is then handled on this thread, which is running anyway, instead of
 * costing a hand-off to the progress thread and back. It only drains;
 * completion callbacks stay the progress thread's to deliver. */
static void wait_spin(ferry_op_t *op, int timeout_ms)
{
    ferry_connector_t *c = op->connector;
    uint64_t budget = c->spin_ns;
    uint64_t end;

    if (timeout_ms >= 0 && (uint64_t)timeout_ms * 1000000u < budget) {
        budget = (uint64_t)timeout_ms * 1000000u;
    }
    end = ferry__now_ns() + budget;
    for (unsigned i = 0; budget > 0 && !atomic_load(&op->final); i++) {
        if (ferry__now_ns() >= end) {
            break;
        }
        if (pthread_mutex_trylock(&c->lock) == 0) {
            ferry__connector_drain(c);
            ferry__unlock(c);
        }
        ferry__spin_pause(i);
    }
}

ferry_status_t ferry_op_wait(ferry_op_t *op, int timeout_ms)
{
    ferry_connector_t *c = op->connector;
    struct timespec deadline;
    ferry_status_t status;
    int rc = 0;

    ferry__clear_error();
    if (timeout_ms < -1) {
        /* A computed `deadline - now` gone negative is a bug of the
         * caller's, not "no limit" (which waited for ever). */
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "timeout_ms: %d is neither -1 (no limit) nor >= 0", timeout_ms);
    }
    if (c->mode == FERRY_PROGRESS_CALLER) {
        return wait_driving(op, timeout_ms);
    }
    wait_spin(op, timeout_ms);
    deadline = ferry__clock_in_ms(CLOCK_MONOTONIC, timeout_ms > 0 ? timeout_ms : 0);
    ferry__lock(c);
    while (!ferry__op_is_final(op) && rc != ETIMEDOUT) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&op->cond, &c->lock);
        } else {
            rc = pthread_cond_timedwait(&op->cond, &c->lock, &deadline);
        }
    }
    status = ferry__op_is_final(op) ? final_result(op) : timed_out(op, timeout_ms);
    ferry__unlock(c);
    return status;
}

ferry_status_t ferry_op_cancel(ferry_op_t *op)
{
    ferry__clear_error();
    ferry__op_cancel_why(op, "cancelled by its owner");
    return FERRY_OK;
}

void ferry__op_cancel_why(ferry_op_t *op, const char *why)
{
    ferry_connector_t *c = op->connector;

    ferry__lock(c);
    if (!ferry__op_is_final(op)) {
        op->role->cancel(op, why);
    }
    ferry__unlock(c);
}

ferry_status_t ferry_op_fail(ferry_op_t *op, ferry_status_t code, const char *message)
{
    ferry_connector_t *c = op->connector;
    ferry_status_t status = FERRY_OK;

    ferry__clear_error();
    if (code >= 0) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "%s: fail needs an error code, got %d",
                           op->label, (int)code);
    }
    ferry__lock(c);
    if (ferry__op_is_final(op)) {
        status = ferry__fail(FERRY_ERR_FAILED_PRECONDITION, "%s: already %s", op->label,
                             ferry__op_step_name(op->state));
    } else {
        ferry__op_move(op, FERRY__OP_ERRORED, code, "%s",
                       message != NULL ? message : ferry_status_string(code));
    }
    ferry__unlock(c);
    return status;
}

ferry_status_t ferry_op_set_done_callback(ferry_op_t *op, ferry_op_done_cb_t cb, void *arg)
{
    ferry_connector_t *c = op->connector;

    ferry__clear_error();
    ferry__lock(c);
    op->done_cb = cb;
    op->done_arg = arg;
    if (ferry__op_is_final(op)) {
        queue_done(op);
    }
    ferry__unlock(c);
    return FERRY_OK;
}

ferry_status_t ferry_op_add_listener(ferry_op_t *op, ferry_op_listener_cb_t cb, void *arg)
{
    ferry_connector_t *c = op->connector;
    ferry__listener_t *l;

    ferry__clear_error();
    if (cb == NULL) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "%s: listener: cb is required", op->label);
    }
    l = calloc(1, sizeof(*l));
    if (l == NULL) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "%s: listener: out of memory", op->label);
    }
    l->cb = cb;
    l->arg = arg;
    ferry__lock(c);
    if (op->destroying) {
        ferry__unlock(c);
        free(l);
        return ferry__fail(FERRY_ERR_MISUSE, "%s: listener added during destroy", op->label);
    }
    *op->listeners_tail = l;
    op->listeners_tail = &l->next;
    op->n_listeners++;
    if (ferry__op_is_final(op)) {
        queue_done(op);
    }
    ferry__unlock(c);
    return FERRY_OK;
}

ferry_status_t ferry_op_listener_arg(const ferry_op_t *op, ferry_op_listener_cb_t cb, void **arg_p)
{
    ferry_connector_t *c = op->connector;
    ferry_status_t status = FERRY_ERR_NOT_FOUND;

    ferry__lock(c);
    for (const ferry__listener_t *l = op->listeners; l != NULL; l = l->next) {
        if (l->cb == cb) {
            *arg_p = l->arg;
            status = FERRY_OK;
            break;
        }
    }
    ferry__unlock(c);
    return status;
}

ferry_connector_t *ferry_op_connector(const ferry_op_t *op)
{
    return op->connector;
}

/* One round of waiting in destroy: this thread drives the loop itself (in
 * caller progress mode nobody else does, and destroy may be running on the
 * progress thread), then lets go of the lock for a moment so that the
 * progress thread and other callers get it: spinning first, then sleeping
 * a millisecond a round. Lock held on entry and exit. */
static void quiesce_round(ferry_connector_t *c, unsigned *round)
{
    ferry__connector_drain(c);
    ferry__unlock(c);
    if (*round < QUIESCE_SPINS) {
        ferry__spin_pause(*round);
    } else {
        poll(NULL, 0, 1);
    }
    (*round)++;
    ferry__lock(c);
}

/* Returns once UCX can no longer touch an active op's local memory (the
 * guarantee in ferry.h): its puts or gets are flushed (data_in_flight
 * clears), or, past FERRY_OP_DESTROY_FLUSH_MS, their endpoint is closed by
 * force and UCX has completed them as cancelled. Without peer error
 * handling that close is refused, and this waits for the passive side for
 * as long as it takes: returning would let a late reply write into memory
 * the caller frees next. Lock held; dropped between rounds. */
static void active_quiesce(ferry_op_t *op)
{
    ferry_connector_t *c = op->connector;
    int64_t deadline = now_ms() + FERRY_OP_DESTROY_FLUSH_MS;
    unsigned round = 0;

    while (op->data_in_flight && now_ms() < deadline) {
        quiesce_round(c, &round);
    }
    if (!op->data_in_flight) {
        return;
    }
    if (op->peer != NULL && ferry__peer_force_close(op->peer)) {
        ferry_warn("%s: its %ss did not finish within %d ms of destroy: the endpoint to the "
                   "passive side was closed by force",
                   op->label, op->kind == FERRY__KIND_WRITE ? "put" : "get",
                   FERRY_OP_DESTROY_FLUSH_MS);
    } else {
        ferry_warn("%s: its %ss did not finish within %d ms of destroy; without peer error "
                   "handling UCX cannot cancel them: destroy waits for the passive side",
                   op->label, op->kind == FERRY__KIND_WRITE ? "put" : "get",
                   FERRY_OP_DESTROY_FLUSH_MS);
    }
    while (op->data_in_flight) {
        quiesce_round(c, &round);
    }
}

/* Returns once an admitted claimant that has not settled can no longer
 * reach a destroyed passive op's memory in no region (the guarantee in
 * ferry.h): its notice came, or its endpoint failed. UCX applies a put into
 * user memory over TCP or shared memory in this process's worker (emulated
 * over active messages), so this thread drives the loop for it, as a
 * flush would. Past FERRY_OP_DESTROY_FLUSH_MS the op is let go with a
 * warning: a claimant that died unseen (no peer error handling) or stopped
 * answering would otherwise hold destroy for ever. Its endpoint is not
 * closed by force, as an active destroy's is: that would not settle it
 * (the notice it owes would never come), and every other transfer with that
 * peer would fail. An op whose every descriptor lies in a region is not
 * waited for: libferry holds the regions itself. Lock held; dropped between
 * rounds. */
static void passive_quiesce(ferry_op_t *op)
{
    ferry_connector_t *c = op->connector;
    int64_t deadline = now_ms() + FERRY_OP_DESTROY_FLUSH_MS;
    unsigned round = 0;

    if (!op->claimant_hold || ferry__passive_all_in_regions(op)) {
        return;
    }
    while (op->claimant_hold && now_ms() < deadline) {
        quiesce_round(c, &round);
    }
    if (op->claimant_hold) {
        ferry_warn("%s: its admitted writer or reader has not settled %d ms after destroy; it "
                   "may still reach the memory of the descriptors in no region",
                   op->label, FERRY_OP_DESTROY_FLUSH_MS);
        ferry__passive_hold_drop(op); /* a region's hold stays */
    }
}

/* ferry_op_destroy and _nowait, as op->destroy_nowait says; from the
 * deferred destroy too. */
static void op_destroy(ferry_op_t *op)
{
    ferry_connector_t *c = op->connector;
    ferry_op_status_t status;

    /* No done callback or FINAL starts from here on, and one that is
     * running ends before destroy goes on: what it was given (a listener's
     * state, the user's arg) may be freed once destroy returns. */
    ferry__lock(c);
    op->done_cb = NULL;
    if (op->cbs_running > 0 && ferry__delivering_op(op)) {
        /* From its own done callback (or a listener's FINAL): waiting for
         * the callback to end would never end. Delivery finishes the
         * destroy once the callback has returned. */
        op->destroy_deferred = true;
        ferry__unlock(c);
        return;
    }
    op->destroying = true;
    while (op->cbs_running > 0) { /* other threads' deliveries */
        pthread_cond_wait(&op->cond, &c->lock);
    }
    status = public_status(op->state);
    ferry__unlock(c);
    /* Then, with no lock held and the status still as it was: DESTROY to
     * every listener. The list only grows before destroying was set, and
     * nodes are freed with the operation, so it is walked without the lock. */
    for (ferry__listener_t *l = op->listeners; l != NULL; l = l->next) {
        l->cb(op, FERRY_OP_EVENT_DESTROY, status, l->arg);
    }
    ferry__lock(c);
    if (!ferry__op_is_final(op)) {
        op->role->cancel(op, "destroyed by its owner");
    }
    op->role->on_destroy(op);
    op->user_released = true;
    c->user_ops--;
    if (op->released != NULL && !op->data_in_flight && !op->claimant_hold) {
        /* Nothing reaches its memory any more (no put or get of its own in
         * flight, no admitted claimant to wait for): told now, not when
         * the op is freed, which a queued delivery may put off. */
        ferry_op_released_cb_t released = op->released;
        op->released = NULL;
        released(op->released_arg);
    }
    ferry__op_unref(op);
    ferry__unlock(c);
}

void ferry_op_destroy(ferry_op_t *op)
{
    if (op == NULL) {
        return;
    }
    op_destroy(op);
}

void ferry_op_destroy_nowait(ferry_op_t *op, ferry_op_released_cb_t released, void *arg)
{
    if (op == NULL) {
        return;
    }
    /* Set before destroy drops the lock anywhere: from here on the op may
     * be freed on another thread, which then calls released. */
    ferry__lock(op->connector);
    op->destroy_nowait = true;
    op->released = released;
    op->released_arg = arg;
    ferry__unlock(op->connector);
    op_destroy(op);
}

void ferry__op_destroy_resume(ferry_op_t *op)
{
    op_destroy(op);
}

/* ---- the two sides' roles --------------------------------------------- */

static void passive_cancel(ferry_op_t *op, const char *why)
{
    ferry__op_move(op, FERRY__OP_CANCELLED, FERRY_ERR_CANCELLED, "%s", why);
}

/* Later claims for this key find nothing and are refused (an op whose
 * claimant has not settled stays in the table, answering NOT_FOUND too,
 * until it settles: op_passive.c). */
static void passive_destroyed(ferry_op_t *op)
{
    ferry__passive_release(op);
    if (!op->destroy_nowait) {
        passive_quiesce(op); /* else its caller keeps the memory until released */
    }
    if (op->in_table && !op->claimant_hold) {
        ferry__op_table_remove(op);
    }
}

static void active_final(ferry_op_t *op)
{
    if (!op->data_in_flight) {
        ferry__op_regions_detach(op); /* else when its flush completes */
    }
}

/* No staging copy, put or get touches the caller's memory once it
 * returns. */
static void active_destroyed(ferry_op_t *op)
{
    ferry__staged_stop(op);
    if (!op->destroy_nowait) {
        active_quiesce(op); /* else its caller keeps the memory until released */
    }
}

static const ferry__op_role_t passive_role = {
    .passive = true,
    .cancel = passive_cancel,
    .on_final = ferry__passive_release,
    .on_destroy = passive_destroyed,
    .release = ferry__passive_release,
};

static const ferry__op_role_t active_role = {
    .passive = false,
    .cancel = ferry__active_cancel,
    .on_final = active_final,
    .on_destroy = active_destroyed,
    .release = ferry__active_release,
};
