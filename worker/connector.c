/*
 * connector.c: the connector, one per process: one UCX context, one UCX
 * worker, the progress loop, and the queues UCX callbacks feed.
 *
 * Threads: the public functions here run on the caller's thread and take
 * connector->lock around everything they touch. The progress loop runs on
 * the connector's own thread (FERRY_PROGRESS_THREAD) or on whichever thread
 * calls ferry_connector_progress / ferry_op_wait (FERRY_PROGRESS_CALLER); it
 * holds the lock while UCX progresses, so UCX callbacks (am_recv_cb, the
 * request and endpoint-error callbacks in peer.c) run with the lock held and
 * only copy, record and enqueue. ferry__connector_drain does the work; user
 * completion callbacks are delivered without the lock. One exception: a
 * CLAIM is decided and answered inside am_recv_cb, because the endpoint UCX
 * offers for the answer (reply_ep) is only guaranteed while the callback
 * runs, and answering on it is what lets the passive side never build an
 * endpoint from a stranger's bytes (ucp_ep_create on a malformed address
 * aborts inside UCX 1.13; it takes no length to check against). The
 * decision only reads the operation table, moves READY -> CLAIMED and, for
 * an admitted claim, queues its op on connector->watch (op_passive.c).
 *
 * Bounded: the inbox holds at most FERRY__INBOX_MAX messages and
 * FERRY__INBOX_MAX_BYTES (anyone who can reach the worker can send; past
 * the bound a message is dropped, counted and logged once; an admitted
 * claim's follow-up never waits there, see op_passive.c), and at most
 * FERRY__INBOX_PER_OP from the party to one operation (each holds a
 * reference to it until handled), so that one party cannot fill it and
 * crowd the others' messages out (a NOTICE that settles stale slots, which
 * names no live operation, takes a slot only when no copy of it waits
 * already: ferry__staged_stale_notice). A malformed message is dropped in the callback,
 * and so is one from no party to an operation of ours
 * (ferry__msg_from_a_party: it must name one and carry the nonce that party
 * was given, so a flood needs a key and a nonce to take a slot), and the
 * loop handles a queued item at least every FERRY__PROGRESS_BURST progress
 * calls, so that a flood can neither grow memory without bound nor keep
 * the loop from its work.
 *
 * Waiting: when UCX has gone quiet the loop first spins (keeps progressing
 * UCX, dropping the lock between rounds and yielding the CPU often) for
 * spin_ns after the last sign of activity, then arms the worker
 * (ucp_worker_arm) and polls its event fd. The spin matters because every
 * transfer is a chain of messages (CLAIM, ADMIT, data, flush, NOTICE) and on
 * host memory UCX 1.13 emulates put/get with active messages that the target
 * must progress: a loop that sleeps between them pays a wake-up per message.
 * Any thread that posts UCX work calls ferry__wake, which signals the worker
 * (ucp_worker_signal) only while the loop is armed (c->armed, under the
 * lock): a running or spinning loop finds the work itself. The poll also has
 * a short timeout, a safety net against a lost wake-up, never the mechanism
 * that makes progress. While staged copies are in flight (staged.c) the
 * loop never sleeps on the fd, which cannot tell when a copy ends: it
 * polls the copy engines on each pass and yields the CPU between passes.
 *
 * CUDA: the driver is loaded (once per process) when a connector is
 * created; where it cannot be, host memory still works and the reason is
 * logged at info. The progress thread makes device 0's primary context
 * current, as UCX's CUDA transports expect of the threads that progress it.
 */
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "worker/cuda.h"
#include "worker/ferry_int.h"
#include "worker/fork.h"

#define POLL_SAFETY_MS 100
/* ferry_connector_progress gives the caller's thread back after this long
 * even while work keeps coming (a flood of messages, say), with the fd left
 * readable, so that the caller's poll returns at once and it calls again:
 * its own work gets a turn between slices. */
#define PROGRESS_SLICE_NS (10u * 1000u * 1000u)

void ferry__lock(ferry_connector_t *c)
{
    if (pthread_mutex_lock(&c->lock) != 0) {
        abort();
    }
}

void ferry__unlock(ferry_connector_t *c)
{
    if (pthread_mutex_unlock(&c->lock) != 0) {
        abort();
    }
}

void ferry__wake(ferry_connector_t *c)
{
    /* In caller mode the caller may sleep on efd at any time. */
    if (c->armed || c->mode == FERRY_PROGRESS_CALLER) {
        ucp_worker_signal(c->worker);
    }
}

uint64_t ferry__now_ns(void)
{
    return (uint64_t)ferry__clock_ns(CLOCK_MONOTONIC);
}

void ferry__spin_pause(unsigned iteration)
{
    if (iteration % 16 == 15) {
        sched_yield();
    } else {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        __asm__ __volatile__("yield");
#endif
    }
}

/* A malformed message: anyone who can reach the worker can send these, so
 * warn once, not once per message of a flood. Lock held. */
static void note_malformed(ferry_connector_t *c)
{
    if (!c->warned_malformed) {
        c->warned_malformed = true;
        ferry_warn("connector %s: dropping a malformed message (later ones logged at debug): %s",
                   c->name, ferry_last_error_message());
    } else {
        ferry_debug("connector %s: dropping a message: %s", c->name, ferry_last_error_message());
    }
}

bool ferry__inbox_push(ferry_connector_t *c, ferry_op_t *op, const void *data, size_t length)
{
    ferry__inmsg_t *msg;

    if (op != NULL && op->inbox_queued >= FERRY__INBOX_PER_OP) {
        c->inbox_dropped++;
        ferry_debug("%s: %u messages from its party wait for the loop: message dropped", op->label,
                    op->inbox_queued);
        return false;
    }
    if (c->inbox_len >= FERRY__INBOX_MAX || length > FERRY__INBOX_MAX_BYTES - c->inbox_bytes) {
        if (c->inbox_dropped++ == 0) {
            ferry_warn("connector %s: %zu messages (%zu bytes) wait for the loop: dropping more "
                       "(a peer floods this worker?); later drops are logged at debug",
                       c->name, c->inbox_len, c->inbox_bytes);
        } else {
            ferry_debug("connector %s: inbox full: message dropped", c->name);
        }
        return false;
    }
    msg = malloc(sizeof(*msg) + length);
    if (msg == NULL) {
        ferry_error("connector %s: out of memory for a %zu-byte message", c->name, length);
        return false;
    }
    msg->next = NULL;
    msg->op = op;
    if (op != NULL) {
        op->inbox_queued++;
        ferry__op_ref(op);
    }
    msg->len = length;
    memcpy(msg->data, data, length);
    *c->inbox_tail = msg;
    c->inbox_tail = &msg->next;
    c->inbox_len++;
    c->inbox_bytes += length;
    return true;
}

bool ferry__msg_from_a_party(ferry_connector_t *c, const ferry__msg_t *msg, ferry_op_t **op_p)
{
    ferry_op_t *op;

    *op_p = NULL;
    switch (msg->type) {
    case FERRY__MSG_ADMIT:
    case FERRY__MSG_CREDIT:
        op = ferry__op_find_active(c, msg->op_id);
        if (op != NULL && memcmp(msg->key, op->md->notification_key.data, FERRY__KEY_LEN) == 0 &&
            ferry__nonce_equal(msg->claim_nonce, op->claim_nonce)) {
            *op_p = op;
            return true;
        }
        return false;
    case FERRY__MSG_NOTICE:
    case FERRY__MSG_CHUNK:
        op = ferry__op_find_passive(c, msg->key);
        if (op != NULL && op->admitted && ferry__nonce_equal(msg->nonce, op->nonce)) {
            *op_p = op;
            return true;
        }
        return msg->type == FERRY__MSG_NOTICE && ferry__staged_stale_notice(c, msg);
    case FERRY__MSG_CLAIM:
        break;
    }
    return true;
}

/* UCX callback (lock held): decode; a CLAIM is decided and answered here
 * (see the file comment); what the loop must act on is queued, a
 * malformed message dropped here. */
static ucs_status_t am_recv_cb(void *arg, const void *header, size_t header_length, void *data,
                               size_t length, const ucp_am_recv_param_t *param)
{
    ferry_connector_t *c = arg;
    ferry__msg_t msg;
    ucp_ep_h reply_ep = NULL;
    ferry_op_t *op;

    (void)header;
    (void)header_length;
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
        ferry_warn("connector %s: dropping a %zu-byte rendezvous message", c->name, length);
        return UCS_OK;
    }
    if (ferry__msg_decode(data, length, &msg) != FERRY_OK) {
        note_malformed(c);
        return UCS_OK;
    }
    if (msg.type == FERRY__MSG_CLAIM) {
        if (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) {
            reply_ep = param->reply_ep;
        }
        /* What an admission leaves to the loop goes on connector->watch,
         * never into the inbox. */
        ferry__passive_on_claim(c, &msg, reply_ep);
        return UCS_OK;
    }
    /* Only a party's messages take an inbox slot: a flood from someone who
     * holds no key and nonce of ours cannot crowd an honest one out. */
    if (!ferry__msg_from_a_party(c, &msg, &op)) {
        if (msg.type == FERRY__MSG_NOTICE || msg.type == FERRY__MSG_CHUNK) {
            c->stats.notices_ignored++; /* as their handlers count them */
        }
        ferry_debug("connector %s: message from no party to an operation dropped", c->name);
        return UCS_OK;
    }
    ferry__inbox_push(c, op, data, length);
    return UCS_OK;
}

/* Frees a message taken off the inbox, with its count and reference. */
static void inmsg_free(ferry__inmsg_t *in)
{
    if (in->op != NULL) {
        in->op->inbox_queued--;
        ferry__op_unref(in->op);
    }
    free(in);
}

static void handle_inmsg(ferry_connector_t *c, const ferry__inmsg_t *in)
{
    ferry__msg_t msg;

    if (ferry__msg_decode(in->data, in->len, &msg) != FERRY_OK) {
        note_malformed(c); /* decoded in the callback already: never */
        return;
    }
    switch (msg.type) {
    case FERRY__MSG_CLAIM: /* decided in am_recv_cb, never queued */
        break;
    case FERRY__MSG_ADMIT:
        ferry__active_on_admit(c, &msg);
        break;
    case FERRY__MSG_NOTICE:
        ferry__passive_on_notice(c, &msg);
        break;
    case FERRY__MSG_CHUNK:
        ferry__staged_on_chunk(c, &msg);
        break;
    case FERRY__MSG_CREDIT:
        ferry__staged_on_credit(c, &msg);
        break;
    }
}

static void handle_failed_peer(ferry_connector_t *c, ferry__peer_t *peer)
{
    ferry_warn("connector %s: peer %llu %s: %s", c->name, (unsigned long long)peer->id,
               peer->forced ? "closed by force" : "failed", ucs_status_string(peer->failure));
    for (size_t b = 0; b < FERRY__OP_BUCKETS; b++) {
        ferry_op_t *next;
        for (ferry_op_t *op = c->ops[b]; op != NULL; op = next) {
            next = op->table_next; /* the call may free op */
            if (op->peer == peer || op->claimant == peer) {
                ferry__op_peer_failed(op, peer);
            }
        }
    }
    ferry__staged_stale_peer_failed(c, peer);
    ferry__peer_uncache(peer);
    ferry__peer_put(peer); /* the failed queue's reference */
}

static unsigned drain(ferry_connector_t *c);

/* With the direct path's device context current while UCX progresses:
 * its CUDA transports copy on the thread that progresses them, which is a
 * caller's (ferry_op_wait, ferry_connector_progress) as well as the
 * progress thread (bound to it already; a second push of the same context
 * costs nothing). */
unsigned ferry__connector_drain(ferry_connector_t *c)
{
    int32_t device = atomic_load(&c->cuda_progress_device);
    bool pushed = device >= 0 && ferry__cuda_push((uint32_t)device) == FERRY_OK;
    unsigned work = drain(c);

    if (pushed) {
        ferry__cuda_pop();
    }
    return work;
}

static unsigned drain(ferry_connector_t *c)
{
    unsigned work = 0;

    for (unsigned items = 0;; work++, items++) {
        unsigned n;
        if (items == FERRY__DRAIN_ITEMS_MAX) {
            /* Bounded (FERRY__DRAIN_ITEMS_MAX): work is left; the caller
             * comes back once it has let the lock go. */
            c->drain_capped = true;
            ferry__active_claims_sweep(c);
            return work;
        }
        for (unsigned burst = 0;
             burst < FERRY__PROGRESS_BURST && (n = ucp_worker_progress(c->worker)) != 0; burst++) {
            work += n;
        }
        if (c->failed != NULL) {
            ferry__peer_t *peer = c->failed;
            c->failed = peer->failed_next;
            handle_failed_peer(c, peer);
        } else if (c->watch != NULL) {
            ferry_op_t *op = c->watch;
            c->watch = op->watch_next;
            ferry__passive_watch_claimant(op);
            ferry__op_unref(op); /* the watch list's */
        } else if (c->inbox != NULL) {
            ferry__inmsg_t *in = c->inbox;
            c->inbox = in->next;
            if (c->inbox == NULL) {
                c->inbox_tail = &c->inbox;
            }
            c->inbox_len--;
            c->inbox_bytes -= in->len;
            handle_inmsg(c, in);
            inmsg_free(in);
        } else if (c->reqs != NULL) {
            ferry__req_t *req = c->reqs;
            c->reqs = req->next;
            if (c->reqs == NULL) {
                c->reqs_tail = &c->reqs;
            }
            if (req->op != NULL) {
                ferry__active_on_req(req);
                ferry__op_unref(req->op);
            } else if (req->status != UCS_OK) { /* a CREDIT; an ADMIT never comes here */
                ferry_debug("connector %s: credit not sent: %s", c->name,
                            ucs_status_string(req->status));
            }
            free(req->buf);
            free(req);
        } else if (c->staged == NULL || (n = ferry__staged_progress(c)) == 0) {
            c->drain_capped = false;
            ferry__active_claims_sweep(c);
            return work;
        } else {
            work += n;
        }
    }
}

/* The FINAL owed to listeners: the first untold one and how many; lock
 * held. They are marked told here, before the calls, so each is told once. */
static ferry__listener_t *listeners_owed(ferry_op_t *op, unsigned *n_p)
{
    ferry__listener_t *l = op->listeners;

    *n_p = 0;
    if (op->destroying || op->user_released || op->n_final_told == op->n_listeners) {
        return NULL;
    }
    for (unsigned i = 0; i < op->n_final_told; i++) {
        l = l->next;
    }
    *n_p = op->n_listeners - op->n_final_told;
    op->n_final_told = op->n_listeners;
    return l;
}

/* The connector whose callbacks this thread is running, if any: destroy
 * refuses to run under them (it would free what the delivery goes on to
 * use, or join the progress thread from itself). */
static _Thread_local ferry_connector_t *delivering;

/* The operations whose callbacks this thread runs, innermost first (a
 * callback may drive progress, which delivers again). */
typedef struct cb_frame {
    const ferry_op_t *op;
    struct cb_frame *outer;
} cb_frame_t;
static _Thread_local cb_frame_t *cb_frames;

bool ferry__delivering_op(const ferry_op_t *op)
{
    for (const cb_frame_t *f = cb_frames; f != NULL; f = f->outer) {
        if (f->op == op) {
            return true;
        }
    }
    return false;
}

void ferry__connector_deliver(ferry_connector_t *c)
{
    ferry_connector_t *outer = delivering;

    delivering = c;
    for (;;) {
        ferry_op_t *op;
        ferry_op_done_cb_t cb = NULL;
        ferry__listener_t *l;
        unsigned n_listeners;
        void *arg = NULL;
        ferry_op_status_t status;

        ferry__lock(c);
        op = c->done;
        if (op == NULL) {
            ferry__unlock(c);
            delivering = outer;
            return;
        }
        c->done = op->done_next;
        if (c->done == NULL) {
            c->done_tail = &c->done;
        }
        op->done_queued = false;
        if (op->done_cb != NULL && !op->user_released && !op->done_delivered) {
            cb = op->done_cb;
            arg = op->done_arg;
            op->done_delivered = true;
        }
        l = listeners_owed(op, &n_listeners);
        if (cb != NULL || n_listeners > 0) {
            op->cbs_running++; /* destroy waits for us */
        }
        ferry__unlock(c);
        if (cb != NULL || n_listeners > 0) {
            cb_frame_t frame = {op, cb_frames};
            cb_frames = &frame;
            status = ferry_op_status(op);
            /* Listeners first: the layers below the caller learn the end
             * before the caller can act on it. */
            for (unsigned i = 0; i < n_listeners; i++) {
                l->cb(op, FERRY_OP_EVENT_FINAL, status, l->arg);
                /* The last one's next may be being appended to now. */
                l = i + 1 < n_listeners ? l->next : NULL;
            }
            if (cb != NULL) {
                cb(op, status, arg);
            }
            cb_frames = frame.outer;
        }
        ferry__lock(c);
        if (cb != NULL || n_listeners > 0) {
            op->cbs_running--;
            pthread_cond_broadcast(&op->cond);
        }
        if (op->destroy_deferred) {
            /* The callback destroyed it: done now that it has returned
             * (the done queue's reference keeps it until the unref). */
            op->destroy_deferred = false;
            ferry__unlock(c);
            ferry__op_destroy_resume(op);
            ferry__lock(c);
        }
        ferry__op_unref(op);
        ferry__unlock(c);
    }
}

static bool queues_busy(const ferry_connector_t *c)
{
    return c->inbox != NULL || c->reqs != NULL || c->failed != NULL || c->watch != NULL;
}

/* Staged copies in flight: an engine has no fd, so the loop must not sleep
 * on the worker's; it yields the CPU between passes instead. Lock held; it
 * is dropped while yielding. */
static bool yield_for_copies(ferry_connector_t *c, unsigned *i)
{
    if (!ferry__staged_busy(c)) {
        return false;
    }
    ferry__unlock(c);
    ferry__spin_pause((*i)++);
    ferry__lock(c);
    return true;
}

/* Lock held on entry and exit. Keeps progressing UCX for spin_ns; true as
 * soon as there is work (the caller drains and spins afresh), false when
 * the time ran out quietly. Completion callbacks queued meanwhile are
 * delivered. The lock is dropped between rounds so that callers' threads
 * (begin, wait, destroy) get it. */
static bool spin_for_work(ferry_connector_t *c)
{
    uint64_t end = ferry__now_ns() + c->spin_ns;
    unsigned i = 0;

    while (!atomic_load(&c->stopping)) {
        bool deliver;
        if (ucp_worker_progress(c->worker) != 0 || queues_busy(c)) {
            return true;
        }
        deliver = c->done != NULL;
        ferry__unlock(c);
        if (deliver) {
            ferry__connector_deliver(c);
        }
        ferry__spin_pause(i++);
        ferry__lock(c);
        if (ferry__now_ns() >= end) {
            break;
        }
    }
    return false;
}

static void *progress_main(void *arg)
{
    ferry_connector_t *c = arg;
    struct pollfd pfd = {.fd = c->efd, .events = POLLIN};
    ucs_status_t status;
    unsigned yields = 0;

    int32_t bound = -1;

    ferry__lock(c);
    while (!atomic_load(&c->stopping)) {
        int32_t device = atomic_load(&c->cuda_progress_device);
        if (device != bound) {
            /* UCX's CUDA transports progress their copies here (the
             * direct path): their device's context, once one is known. */
            ferry__cuda_bind_thread((uint32_t)device);
            ferry__clear_error();
            bound = device;
        }
        ferry__connector_drain(c);
        if (c->done != NULL) {
            ferry__unlock(c);
            ferry__connector_deliver(c);
            ferry__lock(c);
            continue;
        }
        if (c->drain_capped) {
            /* Work is left in our own queues, which the fd does not
             * signal: let the others have the lock, then go on. */
            ferry__unlock(c);
            sched_yield();
            ferry__lock(c);
            continue;
        }
        if (yield_for_copies(c, &yields)) {
            continue;
        }
        if (c->spin_ns > 0 && spin_for_work(c)) {
            continue;
        }
        status = ucp_worker_arm(c->worker);
        if (status == UCS_ERR_BUSY) {
            continue;
        }
        c->armed = true;
        ferry__unlock(c);
        if (poll(&pfd, 1, POLL_SAFETY_MS) < 0 && errno != EINTR) {
            ferry_error("connector %s: poll: %s", c->name, strerror(errno));
        }
        ferry__lock(c);
        c->armed = false;
    }
    ferry__unlock(c);
    return NULL;
}

static ferry_status_t apply_spin(ferry_connector_t *c, const ferry_connector_params_t *params,
                                 uint64_t mask)
{
    unsigned long long us = FERRY_CONNECTOR_DEFAULT_SPIN_US;
    const char *env = getenv("FERRY_SPIN_US");

    if (mask & FERRY_CONNECTOR_PARAM_FIELD_SPIN_US) {
        us = params->spin_us;
    } else if (env != NULL && env[0] != '\0') {
        char *end;
        errno = 0;
        us = strtoull(env, &end, 10);
        if (errno != 0 || *end != '\0' || env[0] == '-') {
            return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                               "connector: FERRY_SPIN_US=%s is not a number of microseconds", env);
        }
    }
    if (us > FERRY_CONNECTOR_MAX_SPIN_US) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "connector: spin_us %llu is above %u", us,
                           FERRY_CONNECTOR_MAX_SPIN_US);
    }
    c->spin_ns = (uint64_t)us * 1000u;
    return FERRY_OK;
}

/* The params' claim_timeout_ms, else FERRY_CLAIM_TIMEOUT_MS when set:
 * milliseconds, 1..INT32_MAX. */
static ferry_status_t apply_claim_timeout(ferry_connector_t *c,
                                          const ferry_connector_params_t *params, uint64_t mask)
{
    const char *env = getenv("FERRY_CLAIM_TIMEOUT_MS");
    long long ms = FERRY__CLAIM_TIMEOUT_MS;

    if (mask & FERRY_CONNECTOR_PARAM_FIELD_CLAIM_TIMEOUT_MS) {
        ms = params->claim_timeout_ms;
        if (ms < 1 || ms > INT32_MAX) {
            return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                               "connector: claim_timeout_ms %lld is not from 1 to %d", ms,
                               INT32_MAX);
        }
    } else if (env != NULL && env[0] != '\0') {
        char *end;
        errno = 0;
        ms = strtoll(env, &end, 10);
        if (errno != 0 || *end != '\0' || ms < 1 || ms > INT32_MAX) {
            return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                               "connector: FERRY_CLAIM_TIMEOUT_MS=%s is not a number of "
                               "milliseconds from 1 to %d",
                               env, INT32_MAX);
        }
    }
    c->claim_timeout_ms = ms;
    return FERRY_OK;
}

/* The public and the internal log levels are the same numbers. */
_Static_assert((int)FERRY_LOGLEVEL_OFF == (int)FERRY_LOG_OFF &&
                   (int)FERRY_LOGLEVEL_ERROR == (int)FERRY_LOG_ERROR &&
                   (int)FERRY_LOGLEVEL_TRACE == (int)FERRY_LOG_TRACE,
               "ferry_loglevel_t and ferry_log_level_t differ");

/* The caller's log callback (process-wide, as the log is), behind the
 * common log's sink; set only through connector params. log_cb_lock makes
 * two connectors created at once swap the pair one after the other (a
 * callback never gets another's argument); a line being logged reads the
 * pair under the sink's lock, and the pair changes only while no sink is
 * set. */
static pthread_mutex_t log_cb_lock = PTHREAD_MUTEX_INITIALIZER;
static ferry_log_cb_t log_cb;
static void *log_arg;

static void log_to_cb(ferry_log_level_t level, const char *msg, void *arg)
{
    (void)arg;
    log_cb((ferry_loglevel_t)level, msg, log_arg);
}

static void set_log_cb(ferry_log_cb_t cb, void *arg)
{
    pthread_mutex_lock(&log_cb_lock);
    ferry_log_set_sink(NULL, NULL); /* no line reaches the old one from here */
    log_cb = cb;
    log_arg = arg;
    if (cb != NULL) {
        ferry_log_set_sink(log_to_cb, NULL);
    }
    pthread_mutex_unlock(&log_cb_lock);
}

/* The direct path, where the params' cuda_direct (or, unset,
 * FERRY_CUDA_DIRECT=1) asks for it: CUDA memory moves by UCX RMA straight
 * into and out of GPU memory where UCX reports CUDA among its memory types.
 * Off by default, and then CUDA memory takes the staged path: UCX 1.13's
 * default protocols have no RMA lane that reaches CUDA memory in another
 * process (cuda_ipc serves rendezvous, never ucp_put_nbx or ucp_get_nbx),
 * so UCX emulates such a put over shared memory with a CPU copy out of or
 * into GPU memory, and the process dies of SIGSEGV inside UCX. Measured on
 * an H200 (bench/NOTES.md, "GPU"): Ferry's direct path and ucx_perftest -m
 * cuda alike; with UCX_PROTO_ENABLE=y both complete, at 0.05-0.6 GB/s. For
 * a UCX that can (a newer one, or GPUDirect RDMA on InfiniBand), and then
 * on every worker: a passive side's metadata tells its writers which path
 * to take. */
static bool cuda_direct_wanted(void)
{
    const char *env = getenv("FERRY_CUDA_DIRECT");

    return env != NULL && strcmp(env, "1") == 0;
}

/* Every field this libferry knows: a caller built against a newer ferry.h
 * that sets one it lacks is refused, not given the default silently. */
#define CONNECTOR_FIELDS                                                                       \
    ((uint64_t)(FERRY_CONNECTOR_PARAM_FIELD_NAME | FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE | \
                FERRY_CONNECTOR_PARAM_FIELD_PEER_ERROR_HANDLING |                              \
                FERRY_CONNECTOR_PARAM_FIELD_SPIN_US | FERRY_CONNECTOR_PARAM_FIELD_LOG_LEVEL |  \
                FERRY_CONNECTOR_PARAM_FIELD_LOG_CB |                                           \
                FERRY_CONNECTOR_PARAM_FIELD_CLAIM_TIMEOUT_MS |                                 \
                FERRY_CONNECTOR_PARAM_FIELD_CUDA_DIRECT))

static ferry_status_t apply_params(ferry_connector_t *c, const ferry_connector_params_t *params)
{
    uint64_t mask = params != NULL ? params->field_mask : 0;

    if (mask & ~CONNECTOR_FIELDS) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "params.field_mask: unknown bits 0x%llx",
                           (unsigned long long)(mask & ~CONNECTOR_FIELDS));
    }

    if (gethostname(c->hostname, sizeof(c->hostname) - 1) != 0) {
        snprintf(c->hostname, sizeof(c->hostname), "unknown");
    }
    snprintf(c->name, sizeof(c->name), "%.40s:%d", c->hostname, (int)getpid());
    c->mode = FERRY_PROGRESS_THREAD;
    c->peer_error_handling = true;
    if (mask & FERRY_CONNECTOR_PARAM_FIELD_NAME) {
        if (params->name == NULL || params->name[0] == '\0' ||
            strlen(params->name) >= sizeof(c->name)) {
            return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "connector: name must be 1 to %zu bytes",
                               sizeof(c->name) - 1);
        }
        snprintf(c->name, sizeof(c->name), "%s", params->name);
    }
    if (mask & FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE) {
        if (params->progress_mode != FERRY_PROGRESS_THREAD &&
            params->progress_mode != FERRY_PROGRESS_CALLER) {
            return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "connector: unknown progress mode %d",
                               (int)params->progress_mode);
        }
        c->mode = params->progress_mode;
    }
    if (mask & FERRY_CONNECTOR_PARAM_FIELD_PEER_ERROR_HANDLING) {
        c->peer_error_handling = params->peer_error_handling;
    }
    if (mask & FERRY_CONNECTOR_PARAM_FIELD_LOG_LEVEL) {
        if (params->log_level < FERRY_LOGLEVEL_OFF || params->log_level > FERRY_LOGLEVEL_TRACE) {
            return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "connector: unknown log_level %d",
                               (int)params->log_level);
        }
        ferry_log_set_level((ferry_log_level_t)params->log_level);
    }
    if (mask & FERRY_CONNECTOR_PARAM_FIELD_LOG_CB) {
        set_log_cb(params->log_cb, params->log_arg);
    }
    if (apply_spin(c, params, mask) != FERRY_OK) {
        return FERRY_ERR_INVALID_ARGUMENT; /* apply_spin said why */
    }
    c->cuda_direct = (mask & FERRY_CONNECTOR_PARAM_FIELD_CUDA_DIRECT) ? params->cuda_direct
                                                                      : cuda_direct_wanted();
    return apply_claim_timeout(c, params, mask);
}

static ferry_status_t ucx_fail(ferry_connector_t *c, const char *what, ucs_status_t status)
{
    ferry_error("connector %s: %s: %s", c->name, what, ucs_status_string(status));
    return ferry__fail(FERRY_ERR_TRANSPORT, "connector %s: %s: %s", c->name, what,
                       ucs_status_string(status));
}

/* The framing checks of peers' addresses and keys (peer.c) know UCX
 * 1.13's layout: another UCX, loaded at run time, may write another, and
 * honest peers' metadata would then be refused as malformed. Said once. */
static void check_ucx_version(void)
{
    static atomic_bool said;
    unsigned major = 0, minor = 0, release = 0;

    ucp_get_version(&major, &minor, &release);
    if ((major != 1 || minor != 13) && !atomic_exchange(&said, true)) {
        ferry_warn("UCX %u.%u.%u: libferry checks peers' UCX addresses and keys against UCX "
                   "1.13's layout, which this UCX may not write; metadata of honest peers may "
                   "be refused as malformed",
                   major, minor, release);
    }
}

/* Whether UCX_TLS (a list, or "^" and the ones left out) names a token. */
static bool tls_names(const char *tls, const char *name)
{
    size_t n = strlen(name);

    for (const char *p = tls; *p != '\0'; p += strcspn(p, ",")) {
        p += *p == ',' || *p == '^';
        if (strncmp(p, name, n) == 0 && (p[n] == '\0' || p[n] == ',' || p[n] == ':')) {
            return true;
        }
    }
    return false;
}

/* Whether to have UCX 1.13's shared-memory transports (posix, sysv) offer
 * peer failure detection: with peer error handling they are otherwise left
 * out, and a transfer between two processes of one host goes over TCP (10x
 * slower here: bench/NOTES.md). Their keepalive checks the peer's pid and
 * its start time. Not where the environment decides
 * (UCX_{POSIX,SYSV,MM}_ERROR_HANDLING; a ucx.conf is not read here) or
 * UCX_TLS leaves them out: UCX warns about a setting no transport took. */
static bool shm_error_handling_wanted(const ferry_connector_t *c)
{
    const char *tls = getenv("UCX_TLS");
    bool shm_named;

    if (!c->peer_error_handling || getenv("UCX_POSIX_ERROR_HANDLING") != NULL ||
        getenv("UCX_SYSV_ERROR_HANDLING") != NULL || getenv("UCX_MM_ERROR_HANDLING") != NULL) {
        return false;
    }
    if (tls == NULL || tls[0] == '\0') {
        return true;
    }
    shm_named = tls_names(tls, "sm") || tls_names(tls, "shm") || tls_names(tls, "mm");
    if (tls[0] == '^') {
        return !shm_named && !(tls_names(tls, "posix") && tls_names(tls, "sysv"));
    }
    return shm_named || tls_names(tls, "all") || tls_names(tls, "posix") || tls_names(tls, "sysv");
}

static ferry_status_t open_context(ferry_connector_t *c)
{
    ucp_params_t params = {0};
    ucp_context_attr_t attr = {0};
    ucp_config_t *config = NULL;
    ucs_status_t status;

    check_ucx_version();

    params.field_mask = UCP_PARAM_FIELD_FEATURES;
    params.features = UCP_FEATURE_RMA | UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
    status = ucp_config_read(NULL, NULL, &config);
    if (status != UCS_OK) {
        return ucx_fail(c, "ucp_config_read", status);
    }
    if (shm_error_handling_wanted(c)) {
        /* A UCT setting, for every transport that has it: posix and sysv. */
        status = ucp_config_modify(config, "MM_ERROR_HANDLING", "y");
        if (status != UCS_OK) {
            ucp_config_release(config);
            return ucx_fail(c, "ucp_config_modify MM_ERROR_HANDLING", status);
        }
    }
    status = ucp_init(&params, config, &c->context);
    ucp_config_release(config);
    if (status != UCS_OK) {
        return ucx_fail(c, "ucp_init", status);
    }
    attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
    status = ucp_context_query(c->context, &attr);
    if (status != UCS_OK) {
        ucp_cleanup(c->context);
        return ucx_fail(c, "ucp_context_query", status);
    }
    c->ucx_reports_cuda = (attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
    c->ucx_cuda = c->ucx_reports_cuda && c->cuda_direct;
    return FERRY_OK;
}

/* The CUDA driver, loaded once per process (cuda.c); its absence is no
 * error: host memory works, CUDA descriptors are refused with the reason. */
static void open_cuda(ferry_connector_t *c)
{
    c->cuda_available = ferry__cuda_load() == FERRY_OK;
    ferry__clear_error();
    if (!c->cuda_available) {
        ferry_info("connector %s: CUDA unavailable: %s", c->name, ferry__cuda_why());
    } else if (!c->ucx_cuda) {
        ferry_info("connector %s: CUDA memory moves on the staged path (%s)", c->name,
                   c->ucx_reports_cuda ? "the direct path is off (the cuda_direct param, or "
                                         "FERRY_CUDA_DIRECT=1 where it is unset)"
                                       : "this UCX reports no CUDA memory type");
    }
}

static ferry_status_t open_worker(ferry_connector_t *c)
{
    ucp_worker_params_t params = {0};
    ucp_am_handler_param_t am = {0};
    ucs_status_t status;

    params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    params.thread_mode = UCS_THREAD_MODE_SERIALIZED;
    status = ucp_worker_create(c->context, &params, &c->worker);
    if (status != UCS_OK) {
        return ucx_fail(c, "ucp_worker_create", status);
    }
    status = ucp_worker_get_address(c->worker, &c->address, &c->address_len);
    if (status != UCS_OK) {
        ucx_fail(c, "ucp_worker_get_address", status);
        goto err_destroy_worker;
    }
    status = ucp_worker_get_efd(c->worker, &c->efd);
    if (status != UCS_OK) {
        ucx_fail(c, "ucp_worker_get_efd", status);
        goto err_release_address;
    }
    am.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                    UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
    am.id = FERRY__AM_ID;
    am.flags = UCP_AM_FLAG_WHOLE_MSG;
    am.cb = am_recv_cb;
    am.arg = c;
    status = ucp_worker_set_am_recv_handler(c->worker, &am);
    if (status != UCS_OK) {
        ucx_fail(c, "ucp_worker_set_am_recv_handler", status);
        goto err_release_address;
    }
    return FERRY_OK;

err_release_address:
    ucp_worker_release_address(c->worker, c->address);
err_destroy_worker:
    ucp_worker_destroy(c->worker);
    return FERRY_ERR_TRANSPORT;
}

ferry_status_t ferry_connector_create(const ferry_connector_params_t *params,
                                      ferry_connector_t **connector_p)
{
    ferry_connector_t *c;
    ferry_status_t status;

    ferry__clear_error();
    status = ferry__fork_start("connector");
    if (status != FERRY_OK) {
        return status;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "connector: out of memory");
    }
    atomic_init(&c->cuda_progress_device, -1);
    c->reqs_tail = &c->reqs;
    c->inbox_tail = &c->inbox;
    c->done_tail = &c->done;
    c->next_op_id = 1;
    c->next_peer_id = 1;
    c->peer_cache_max = FERRY__PEER_CACHE_MAX;
    status = apply_params(c, params);
    if (status != FERRY_OK) {
        goto err_free;
    }
    status = open_context(c);
    if (status != FERRY_OK) {
        goto err_free;
    }
    open_cuda(c);
    status = open_worker(c);
    if (status != FERRY_OK) {
        goto err_cleanup_context;
    }
    if (pthread_mutex_init(&c->lock, NULL) != 0) {
        status = ferry__fail(FERRY_ERR_INTERNAL, "connector %s: pthread_mutex_init", c->name);
        goto err_close_worker;
    }
    if (c->mode == FERRY_PROGRESS_THREAD) {
        if (pthread_create(&c->thread, NULL, progress_main, c) != 0) {
            status = ferry__fail(FERRY_ERR_INTERNAL, "connector %s: pthread_create", c->name);
            ferry_error("%s", ferry_last_error_message());
            goto err_destroy_mutex;
        }
        c->thread_started = true;
    }
    ferry_info(
        "connector %s: up on %s (%zu-byte worker address, cuda %s, %s progress, spin %llu us)",
        c->name, c->hostname, c->address_len,
        !c->cuda_available ? "no" : (c->ucx_cuda ? "direct" : "staged"),
        c->mode == FERRY_PROGRESS_THREAD ? "thread" : "caller",
        (unsigned long long)(c->spin_ns / 1000u));
    *connector_p = c;
    return FERRY_OK;

err_destroy_mutex:
    pthread_mutex_destroy(&c->lock);
err_close_worker:
    ucp_worker_release_address(c->worker, c->address);
    ucp_worker_destroy(c->worker);
err_cleanup_context:
    ucp_cleanup(c->context);
err_free:
    free(c);
    return status;
}

/* Lets requests of released operations finish, for at most about a second. */
static void drain_for_destroy(ferry_connector_t *c)
{
    for (int i = 0; i < 1000 && (c->reqs != NULL || c->live_ops > 0); i++) {
        ferry__connector_drain(c);
        if (c->live_ops == 0) {
            break;
        }
        ferry__unlock(c);
        poll(NULL, 0, 1);
        ferry__lock(c);
    }
}

/* Destroy, lock held, after the cache is cleared: peers whose failure came
 * after the last drain (closing one endpoint progresses the worker, and
 * another's error can come then, say that of a peer whose process went
 * first) still hold the failed queue's reference. The operations have gone
 * (or are lost, logged above): the references go, and with the last one the
 * endpoint. */
static void failed_drop(ferry_connector_t *c)
{
    while (c->failed != NULL) {
        ferry__peer_t *peer = c->failed;
        c->failed = peer->failed_next;
        ferry__peer_uncache(peer);
        ferry__peer_put(peer); /* the failed queue's */
    }
}

/* Connectors that destroy left behind (abandon), reachable from here and
 * never freed. */
static pthread_mutex_t abandoned_lock = PTHREAD_MUTEX_INITIALIZER;
static ferry_connector_t *abandoned;

/* Destroy, lock held, when requests of ours outlived the drain: UCX holds
 * them, and they cannot end without their peer (a claim or notice waiting
 * on the wireup of an endpoint to a process that stopped), and without
 * peer error handling UCX has no way to cancel them. ucp_worker_destroy would
 * then purge requests UCX says must be flushed first (UCX 1.13 asserts on
 * a connecting TCP endpoint's, aborting the process; on shared memory it
 * completes them after our last drain, and the operations leak), so the
 * worker, the context and what they hold are left as they are, never
 * freed; the progress thread has stopped. */
static void abandon(ferry_connector_t *c)
{
    ferry_warn("connector %s: %u messages or transfers wait on peers that never answered, and "
               "without peer error handling UCX cannot cancel them: the connector's UCX worker is "
               "left behind (not freed) instead of destroyed",
               c->name, c->reqs_in_ucx);
    pthread_mutex_lock(&abandoned_lock);
    c->abandoned_next = abandoned;
    abandoned = c;
    pthread_mutex_unlock(&abandoned_lock);
}

unsigned ferry__connectors_abandoned(void)
{
    unsigned n = 0;

    pthread_mutex_lock(&abandoned_lock);
    for (const ferry_connector_t *c = abandoned; c != NULL; c = c->abandoned_next) {
        n++;
    }
    pthread_mutex_unlock(&abandoned_lock);
    return n;
}

ferry_status_t ferry_connector_destroy(ferry_connector_t *c)
{
    unsigned alive;
    bool regions;

    ferry__clear_error();
    if (c == NULL) {
        return FERRY_OK;
    }
    if (delivering == c) {
        return ferry__fail(FERRY_ERR_MISUSE,
                           "connector %s: destroy from inside one of its own callbacks; call it "
                           "after they have returned",
                           c->name);
    }
    ferry__lock(c);
    alive = c->user_ops;
    regions = c->regions != NULL;
    ferry__unlock(c);
    if (alive > 0) {
        return ferry__fail(FERRY_ERR_BUSY,
                           "connector %s: %u operations not destroyed; destroy them first", c->name,
                           alive);
    }
    if (regions) {
        return ferry__fail(FERRY_ERR_BUSY,
                           "connector %s: registered regions remain; ferry_mem_deregister them "
                           "first",
                           c->name);
    }
    if (c->thread_started) {
        atomic_store(&c->stopping, true);
        ucp_worker_signal(c->worker); /* armed or not */
        pthread_join(c->thread, NULL);
    }
    ferry__connector_deliver(c);
    ferry__lock(c);
    ferry__active_late_claims_drop(c); /* no answer is coming that they would notify */
    drain_for_destroy(c);
    if (c->live_ops > 0 && ferry__peer_cache_force_close(c)) {
        drain_for_destroy(c); /* their peers failed: they end, and what UCX held */
    }
    if (c->reqs_in_ucx > 0) {
        abandon(c);
        ferry__unlock(c);
        return FERRY_OK;
    }
    if (c->live_ops > 0) {
        /* Held by no request of ours in UCX: a passive operation waiting
         * for its writer's notice, say. The worker goes; they are lost. */
        ferry_error("connector %s: destroyed with %u operations still alive", c->name, c->live_ops);
    }
    ferry__peer_cache_clear(c);
    ferry__staged_stale_free(c); /* its endpoints' closes may see failures too */
    /* Messages that came after the last drain, and failed peers: freeing a
     * message can drop a peer's last reference, and closing an endpoint
     * progresses the worker, where another's failure or a message can
     * come. Until neither is left. */
    while (c->inbox != NULL || c->failed != NULL) {
        while (c->inbox != NULL) { /* popped as drain pops: one may come meanwhile */
            ferry__inmsg_t *in = c->inbox;
            c->inbox = in->next;
            if (c->inbox == NULL) {
                c->inbox_tail = &c->inbox;
            }
            c->inbox_len--;
            c->inbox_bytes -= in->len;
            inmsg_free(in);
        }
        failed_drop(c);
    }
    ferry__unlock(c);
    ferry__connector_deliver(c);
    pthread_mutex_destroy(&c->lock);
    ucp_worker_release_address(c->worker, c->address);
    ucp_worker_destroy(c->worker);
    ucp_cleanup(c->context);
    ferry_info("connector %s: down", c->name);
    free(c);
    return FERRY_OK;
}

const char *ferry_connector_name(const ferry_connector_t *c)
{
    return c->name;
}

const char *ferry_connector_hostname(const ferry_connector_t *c)
{
    return c->hostname;
}

bool ferry_connector_peer_error_handling(const ferry_connector_t *c)
{
    return c->peer_error_handling;
}

bool ferry_connector_is_cuda_available(const ferry_connector_t *c)
{
    return c->cuda_available;
}

ferry_status_t ferry_connector_get_fd(ferry_connector_t *c, int *fd_p)
{
    ferry__clear_error();
    if (c->mode != FERRY_PROGRESS_CALLER) {
        return ferry__fail(FERRY_ERR_MISUSE, "connector %s: get_fd needs caller progress mode",
                           c->name);
    }
    *fd_p = c->efd;
    return FERRY_OK;
}

ferry_status_t ferry_connector_progress(ferry_connector_t *c)
{
    uint64_t end = ferry__now_ns() + PROGRESS_SLICE_NS;
    const char *what = "ucp_worker_arm";
    ucs_status_t status;

    ferry__clear_error();
    if (c->mode != FERRY_PROGRESS_CALLER) {
        return ferry__fail(FERRY_ERR_MISUSE, "connector %s: progress needs caller progress mode",
                           c->name);
    }
    ferry__lock(c);
    do {
        unsigned yields = 0;
        if (ferry__now_ns() >= end) {
            what = "ucp_worker_signal";
            status = ucp_worker_signal(c->worker); /* the fd reads as work left */
            break;
        }
        ferry__connector_drain(c);
        if (c->drain_capped) {
            /* Work is left (a flood, say): let other threads have the lock
             * and the callbacks run before the next round. */
            ferry__unlock(c);
            ferry__connector_deliver(c);
            ferry__lock(c);
            status = UCS_ERR_BUSY;
            continue;
        }
        if (yield_for_copies(c, &yields)) {
            status = UCS_ERR_BUSY; /* the fd cannot tell when a copy ends */
            continue;
        }
        status = ucp_worker_arm(c->worker);
    } while (status == UCS_ERR_BUSY);
    ferry__unlock(c);
    ferry__connector_deliver(c);
    if (status != UCS_OK) {
        ferry_error("connector %s: %s: %s", c->name, what, ucs_status_string(status));
        return ferry__fail(FERRY_ERR_TRANSPORT, "connector %s: %s: %s", c->name, what,
                           ucs_status_string(status));
    }
    return FERRY_OK;
}

void ferry_connector_get_stats(ferry_connector_t *c, ferry_connector_stats_t *stats_p)
{
    ferry__lock(c);
    *stats_p = c->stats;
    stats_p->peers_cached = c->n_peers;
    stats_p->mem_maps = c->mem_maps;
    stats_p->messages_dropped = c->inbox_dropped;
    ferry__unlock(c);
}
