/*
 * op.c: _Operation, one ferry_op_t: status, error, metadata, wait, cancel,
 * close, publish, and the done callback that feeds the connector's
 * completion queue (connector.c).
 *
 * An operation closed before it completed parks its descriptors on its
 * connector (pyferry_connector_park) and is destroyed without waiting for
 * data in flight (ferry_op_destroy_nowait), so close() never blocks on a
 * peer that stopped answering: the memory stays held until libferry
 * releases it (no put or get of ours, nor of an admitted peer, can reach
 * it any more), or until the connector is destroyed; memory inside a
 * region is not parked, as libferry holds the region itself. Memory given
 * by address (no owner to hold) is waited for instead: a write or read
 * over it is destroyed waiting (ferry_op_destroy), which without peer
 * error handling waits for a stalled passive side with no bound, and
 * cannot be interrupted (audit-s32 L4); a writable or readable over it
 * waits, within FERRY_OP_DESTROY_FLUSH_MS, for libferry to release the
 * parked node, as ferry_op_destroy would wait for its admitted writer or
 * reader (audit-s32 M1); a close() from another thread meanwhile waits for
 * that one to end (wait_other_close). An operation is bound to a
 * coordinator only once publish() succeeded.
 *
 * Life: made by the connector (_create, _begin_by_id): the Python object
 * first (pyferry_op_make), so that the class's own code runs before any
 * libferry handle exists, then the handle (pyferry_op_attach). close() (or
 * dealloc) cancels it when unfinished, keeps its final status and error,
 * and destroys the handle. It first sets releasing and leaves the queue,
 * under done_lock, before it lets go of the GIL: a completion reported
 * meanwhile (the cancel's own) is not queued, so no other thread's
 * _drain() can take an operation being freed. ferry_op_destroy waits for a
 * running done callback and stops later ones, so once it returns nothing on
 * libferry's threads names the operation again.
 *
 * Threads: every function here runs with the GIL, except inside
 * Py_BEGIN/END_ALLOW_THREADS (where only the handle is used, and the call
 * counted in in_flight keeps close() from another thread away) and on_done,
 * which runs on libferry's progress thread and touches only the queue,
 * under done_lock.
 *
 * close() during a publish: libferry cannot cut a publish short (its
 * Register runs to the coordinator's answer or the client's timeout), and
 * refusing the close would leave the operation open, to be published a
 * moment later for a caller that gave up on it (an asyncio task cancelled
 * or timed out inside the operation's with block). So when a publish is
 * the only call in flight, close() takes the handle away from Python at
 * once (the operation reads as closed) and the publishing thread, which
 * holds the handle in its own variable, releases it when its call returns,
 * cancelling a registration just made, and raises Cancelled. Other calls in
 * flight (a wait, a cancel, arming) still make close() refuse (Busy): a
 * wait ends on cancel(), the others at once, so the caller can close after
 * them, and a handle freed by one thread while another's call used it
 * would be a use after free.
 */
#include "pyferry.h"

#include <stdint.h>
#include <time.h>
#include <unistd.h>

/* libferry's progress thread: append to the connector's queue, signal the
 * fd when the queue was empty. No Python API here. */
static void on_done(ferry_op_t *op, ferry_op_status_t status, void *arg)
{
    pyferry_op_t *self = arg;
    pyferry_connector_t *c = self->connector;
    bool was_empty;
    uint64_t one = 1;

    (void)op;
    (void)status;
    pthread_mutex_lock(&c->done_lock);
    if (self->releasing) {
        /* Being closed or freed (op_release): nobody may take it. */
        pthread_mutex_unlock(&c->done_lock);
        return;
    }
    was_empty = c->done_head == NULL;
    self->queued = true;
    self->done_next = NULL;
    *c->done_tail = self;
    c->done_tail = &self->done_next;
    pthread_mutex_unlock(&c->done_lock);
    if (was_empty) {
        /* Only fails when the counter would overflow: it is then readable. */
        (void)!write(c->efd, &one, sizeof(one));
    }
}

/* Stops reporting: removes self from the connector's queue if it is there,
 * and keeps on_done from queueing it again (close, dealloc). */
static void leave_queue(pyferry_op_t *self)
{
    pyferry_connector_t *c = self->connector;

    pthread_mutex_lock(&c->done_lock);
    self->releasing = true;
    if (self->queued) {
        pyferry_op_t **pp = &c->done_head;
        while (*pp != self) {
            pp = &(*pp)->done_next;
        }
        *pp = self->done_next;
        if (c->done_tail == &self->done_next) {
            c->done_tail = pp;
        }
        self->queued = false;
    }
    pthread_mutex_unlock(&c->done_lock);
}

PyObject *pyferry_op_make(PyObject *cls, pyferry_connector_t *conn)
{
    PyObject *obj;
    pyferry_op_t *self;

    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, pyferry_op_type)) {
        PyErr_SetString(PyExc_TypeError, "operation class must subclass _Operation");
        return NULL;
    }
    obj = PyObject_CallNoArgs(cls);
    if (obj == NULL) {
        return NULL;
    }
    /* A __new__ may return any object, or an operation in use: only a
     * fresh one gets the fields written below and by pyferry_op_attach. */
    self = (pyferry_op_t *)obj;
    if (!PyObject_TypeCheck(obj, pyferry_op_type) || self->connector != NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "operation class: calling it must return a new _Operation");
        Py_DECREF(obj);
        return NULL;
    }
    Py_INCREF((PyObject *)conn);
    self->connector = conn;
    return obj;
}

void pyferry_op_attach(PyObject *obj, ferry_op_t *handle, int kind, PyObject *descs,
                       pyferry_coordinator_t *coord)
{
    pyferry_op_t *self = (pyferry_op_t *)obj;

    self->op = handle;
    self->kind = kind;
    self->connector->live_ops++;
    Py_INCREF(descs);
    self->descs = descs;
    if (coord != NULL) {
        Py_INCREF((PyObject *)coord);
        self->coordinator = coord;
        coord->live_ops++;
    }
}

static PyObject *op_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    pyferry_op_t *self;

    (void)args;
    (void)kwargs;
    self = (pyferry_op_t *)((allocfunc)PyType_GetSlot(tp, Py_tp_alloc))(tp, 0);
    if (self != NULL) {
        self->closed_status = FERRY_OP_STATUS_UNINITIALIZED;
    }
    return (PyObject *)self;
}

/* -1 with Misuse raised when the operation is open but was made before
 * this process was forked: libferry's threads that move it are the
 * parent's. */
static int check_process(pyferry_op_t *self)
{
    pyferry_connector_t *c = self->connector;

    return self->op != NULL ? pyferry_check_process(c->generation, c->pid, "operation") : 0;
}

static int check_open(pyferry_op_t *self)
{
    if (check_process(self) < 0) {
        return -1;
    }
    if (self->op == NULL) {
        pyferry_raise(FERRY_ERR_MISUSE, "operation: closed");
        return -1;
    }
    return 0;
}

/* In a forked child: lets go of the handle without a libferry call (it is
 * leaked: the parent's threads own it) and of what it held here. */
static void op_abandon(pyferry_op_t *self)
{
    self->op = NULL;
    self->closed_status = FERRY_OP_STATUS_ERRORED;
    self->closed_code = FERRY_ERR_MISUSE;
    Py_CLEAR(self->closed_message);
    self->closed_message = pyferry_text("operation: made before this process was forked; "
                                        "abandoned here, unfinished");
    if (self->closed_message == NULL) {
        PyErr_Clear();
    }
    self->connector->live_ops--;
    if (self->coordinator != NULL) {
        self->coordinator->live_ops--;
    }
    Py_CLEAR(self->descs);
}

/* Whether a descriptor of descs (a tuple of _Descriptor, in op's order)
 * gives memory by address only (no owner: nothing to park) outside every
 * region. */
static bool raw_memory(PyObject *descs, const ferry_op_t *op)
{
    for (Py_ssize_t i = 0; i < PyTuple_Size(descs); i++) {
        const pyferry_desc_t *d = (const pyferry_desc_t *)PyTuple_GetItem(descs, i);
        if (d->owner == Py_None && !ferry_op_in_region(op, (size_t)i)) {
            return true;
        }
    }
    return false;
}

/* Waits, with no GIL, until libferry releases parked (a destroyed passive
 * operation's admitted writer or reader has settled: it can no longer reach
 * the memory) or FERRY_OP_DESTROY_FLUSH_MS has passed, the bound within
 * which ferry_op_destroy waits for the same. libferry's progress thread
 * drives the connector meanwhile (over TCP or shared memory it applies the
 * writer's puts in this process), so this only looks, a millisecond a
 * round, as destroy's own wait does once it stops spinning. parked is not
 * freed meanwhile (its waited_on). */
static void wait_released(const pyferry_parked_t *parked)
{
    const struct timespec round = {0, 1000000};
    struct timespec start, now;

    clock_gettime(CLOCK_MONOTONIC, &start);
    while (!atomic_load(&parked->released)) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        int64_t ns =
            (int64_t)(now.tv_sec - start.tv_sec) * 1000000000 + (now.tv_nsec - start.tv_nsec);
        if (ns >= (int64_t)FERRY_OP_DESTROY_FLUSH_MS * 1000000) {
            return; /* still parked: its owned memory stays held until released */
        }
        nanosleep(&round, NULL);
    }
}

/* Keeps op's status and error as the closed operation's. */
static void keep_outcome(pyferry_op_t *self, ferry_op_t *op)
{
    const char *msg = "";

    self->closed_status = ferry_op_status(op);
    self->closed_code = ferry_op_error(op, &msg);
    Py_CLEAR(self->closed_message);
    self->closed_message = pyferry_text(msg);
    if (self->closed_message == NULL) {
        PyErr_Clear();
    }
}

/* Cancels an unfinished operation, keeps its outcome, destroys the handle
 * and lets go of what it held. No call may be in flight on the handle. */
static void op_release(pyferry_op_t *self)
{
    ferry_op_t *op = self->op;

    if (op == NULL) {
        return;
    }
    if (pyferry_connector_forked(self->connector)) {
        op_abandon(self);
        return;
    }
    /* Closed from here on for every other thread (they run only while the
     * GIL is released below), with the status as it is now meanwhile; and
     * out of the queue, for good, before another thread's _drain() can run
     * (dealloc comes here with no reference left). */
    self->op = NULL;
    self->releaser = PyThread_get_thread_ident();
    self->closed_status = ferry_op_status(op);
    leave_queue(self);
    Py_BEGIN_ALLOW_THREADS ferry_op_cancel(op);
    Py_END_ALLOW_THREADS keep_outcome(self, op);
    /* Unless it completed, data may still move through its memory (our own
     * puts or gets, an admitted writer's puts into a writable), and a peer
     * that stopped answering would hold a waiting destroy for ever: the
     * memory outside every region is parked (before destroy, while libferry
     * still answers which memory lies in a region) and the operation
     * destroyed without waiting; libferry tells when the memory may go.
     * A write or read over memory given by address (no owner to keep)
     * keeps the waiting destroy, so that memory is the caller's to free
     * once close() returns. A passive destroy waits for an admitted peer
     * only within a bound (then it may still reach the memory), so a
     * writable's or readable's owned memory is parked whatever else it
     * has; its memory given by address is then waited for here, within
     * that destroy's bound (audit-s32 M1: close() returned at once, and an
     * admitted writer's puts went on landing in memory the caller was free
     * to free). The waiting destroy itself would not do: past its bound it
     * would let the owned memory go while the peer may still reach it. */
    bool active = self->kind != PYFERRY_WRITABLE && self->kind != PYFERRY_READABLE;
    bool raw = self->descs != NULL && raw_memory(self->descs, op);
    if (self->closed_status != FERRY_OP_STATUS_COMPLETE && self->descs != NULL &&
        !(active && raw)) {
        pyferry_parked_t *parked =
            pyferry_connector_park(self->connector, self->descs, op, !active && raw);
        if (parked == NULL && raw) {
            /* No memory for the node: the owned memory is leaked (park),
             * and the waiting destroy waits for the rest. */
            Py_BEGIN_ALLOW_THREADS ferry_op_destroy(op);
            Py_END_ALLOW_THREADS
        } else {
            Py_BEGIN_ALLOW_THREADS ferry_op_destroy_nowait(
                op, parked != NULL ? pyferry_parked_released : NULL, parked);
            if (raw) {
                wait_released(parked);
            }
            Py_END_ALLOW_THREADS
        }
        if (raw && parked != NULL) {
            parked->waited_on = false; /* the next reap may free it */
        }
    } else {
        Py_BEGIN_ALLOW_THREADS ferry_op_destroy(op);
        Py_END_ALLOW_THREADS
    }
    /* Before anything below can run Python code (a descriptor's last
     * reference), which may close this operation again on this thread. */
    self->releaser = 0;
    self->connector->live_ops--;
    if (self->coordinator != NULL) {
        self->coordinator->live_ops--;
    }
    Py_CLEAR(self->descs);
    /* A region the operation held may be free now. */
    pyferry_connector_reap(self->connector);
    /* The connector and coordinator stay referenced until dealloc: the
     * queue above is the connector's, and a closed operation is cheap. */
}

/* What the collector must see of an operation: the references in its C
 * fields (a cycle through op.connector, such as a Connector subclass that
 * keeps its operations, could never be collected otherwise). No tp_clear:
 * the fields of a live handle stay until dealloc; a cycle is broken where
 * it passes through a Python object's own dict. */
static int op_traverse(PyObject *obj, visitproc visit, void *arg)
{
    pyferry_op_t *self = (pyferry_op_t *)obj;

    Py_VISIT(Py_TYPE(obj));
    Py_VISIT((PyObject *)self->connector);
    Py_VISIT(self->descs);
    Py_VISIT((PyObject *)self->coordinator);
    Py_VISIT(self->closed_message);
    return 0;
}

static void op_dealloc(PyObject *obj)
{
    pyferry_op_t *self = (pyferry_op_t *)obj;
    PyObject *type, *value, *tb;

    PyObject_GC_UnTrack(obj);

    /* Dealloc may run while an exception is being raised. */
    PyErr_Fetch(&type, &value, &tb);
    op_release(self);
    PyErr_Restore(type, value, tb);
    Py_CLEAR(self->closed_message);
    Py_CLEAR(self->descs);
    Py_CLEAR(self->coordinator);
    Py_CLEAR(self->connector);
    pyferry_free_self(obj);
}

/* A close() that finds another thread's close releasing the handle (op
 * NULL already, the GIL released around libferry's calls and the wait for
 * an admitted writer or reader) waits, a millisecond a round without the
 * GIL, until that close ends: so long, and so bounded, as that one is. It
 * used to return at once, and a caller whose memory was given by address
 * could free it while the other close still waited for a writer that put
 * into it (review-s32b). A close on the releasing thread itself (Python
 * code that the collector runs there) returns at once, as before. */
static void wait_other_close(pyferry_op_t *self)
{
    const struct timespec round = {0, 1000000};

    /* In a child forked meanwhile, the releasing thread is not there, and
     * its close never ends (review-s33): the child's close returns, as its
     * other calls on the parent's connector do. */
    while (self->releaser != 0 && self->releaser != PyThread_get_thread_ident() &&
           !pyferry_connector_forked(self->connector)) {
        Py_BEGIN_ALLOW_THREADS nanosleep(&round, NULL);
        Py_END_ALLOW_THREADS
    }
}

/* What the calls in flight are: how many, and the name of one that is not
 * a publish (NULL when only publishes are). */
static int op_calls(const pyferry_op_t *self, const char **other_p)
{
    static const char *const names[PYFERRY_OP_CALLS] = {
        [PYFERRY_OP_CALL_WAIT] = "a wait",
        [PYFERRY_OP_CALL_CANCEL] = "a cancel",
        [PYFERRY_OP_CALL_ARM] = "arming its done callback",
        [PYFERRY_OP_CALL_PUBLISH] = "a publish",
        [PYFERRY_OP_CALL_TOKEN] = "reading its access token",
    };
    int n = 0;

    *other_p = NULL;
    for (int i = 0; i < PYFERRY_OP_CALLS; i++) {
        n += self->in_flight[i];
        if (self->in_flight[i] > 0 && i != PYFERRY_OP_CALL_PUBLISH && *other_p == NULL) {
            *other_p = names[i];
        }
    }
    return n;
}

/* close() while a publish is the only call in flight (see the file's
 * header): closed for Python from here on, with its outcome as it is now,
 * and out of the queue; the publishing thread releases the handle
 * (finish_deferred_close). */
static void defer_close(pyferry_op_t *self)
{
    keep_outcome(self, self->op);
    leave_queue(self);
    self->op = NULL;
    self->close_deferred = true;
}

/* The publishing thread's end of a deferred close: releases the handle (a
 * published operation is cancelled at the coordinator, and its record
 * released, by the destroy) and raises Cancelled for the publish. status is
 * the publish's. */
static PyObject *finish_deferred_close(pyferry_op_t *self, ferry_op_t *op, ferry_status_t status)
{
    char msg[512];

    if (status == FERRY_OK) {
        snprintf(msg, sizeof(msg),
                 "operation: closed while its publish was in flight; its registration is "
                 "cancelled");
    } else {
        snprintf(msg, sizeof(msg),
                 "operation: closed while its publish was in flight (which failed: %s)",
                 ferry_last_error_message());
    }
    self->close_deferred = false;
    self->op = op;
    op_release(self);
    return pyferry_raise(FERRY_ERR_CANCELLED, msg);
}

static PyObject *op_close(PyObject *obj, PyObject *unused)
{
    pyferry_op_t *self = (pyferry_op_t *)obj;
    const char *other;
    int calls = op_calls(self, &other);

    (void)unused;
    /* In a forked child the calls counted are the parent's threads', which
     * this process does not have: op_release lets go at once. */
    if (calls > 0 && self->op != NULL && !pyferry_connector_forked(self->connector)) {
        if (other != NULL) {
            char msg[256];
            snprintf(msg, sizeof(msg),
                     "operation: in use by another thread (%s in flight); close it once that "
                     "returns (cancel() ends a wait)",
                     other);
            return pyferry_raise(FERRY_ERR_BUSY, msg);
        }
        defer_close(self);
        Py_RETURN_NONE;
    }
    if (self->op == NULL) {
        wait_other_close(self);
    }
    op_release(self);
    Py_RETURN_NONE;
}

static PyObject *op_get_status(PyObject *obj, void *closure)
{
    pyferry_op_t *self = (pyferry_op_t *)obj;

    (void)closure;
    if (check_process(self) < 0) {
        return NULL;
    }
    return PyLong_FromLong(self->op != NULL ? (long)ferry_op_status(self->op)
                                            : (long)self->closed_status);
}

static PyObject *op_get_closed(PyObject *obj, void *closure)
{
    (void)closure;
    return PyBool_FromLong(((pyferry_op_t *)obj)->op == NULL);
}

static PyObject *op_get_busy(PyObject *obj, void *closure)
{
    const char *other;

    (void)closure;
    return PyLong_FromLong(op_calls((pyferry_op_t *)obj, &other));
}

static PyObject *op_get_kind(PyObject *obj, void *closure)
{
    (void)closure;
    return PyLong_FromLong(((pyferry_op_t *)obj)->kind);
}

static PyObject *op_get_connector(PyObject *obj, void *closure)
{
    PyObject *conn = (PyObject *)((pyferry_op_t *)obj)->connector;

    (void)closure;
    if (conn == NULL) {
        Py_RETURN_NONE;
    }
    Py_INCREF((PyObject *)conn);
    return conn;
}

static PyObject *op_get_descriptors(PyObject *obj, void *closure)
{
    pyferry_op_t *self = (pyferry_op_t *)obj;

    (void)closure;
    if (self->descs == NULL) {
        return PyTuple_New(0);
    }
    Py_INCREF(self->descs);
    return self->descs;
}

/* (code, message): FERRY_OK and "" unless the operation failed. */
static PyObject *op_error(PyObject *obj, PyObject *unused)
{
    pyferry_op_t *self = (pyferry_op_t *)obj;
    const char *msg = "";
    ferry_status_t code;

    (void)unused;
    if (check_process(self) < 0) {
        return NULL;
    }
    if (self->op == NULL) {
        return Py_BuildValue("(iO)", (int)self->closed_code,
                             self->closed_message != NULL ? self->closed_message : Py_None);
    }
    code = ferry_op_error(self->op, &msg);
    return Py_BuildValue("(iN)", (int)code, pyferry_text(msg));
}

/* Raises the exception for an unsuccessful wait result: the wait's own
 * timeout while the operation goes on, else the operation's outcome. */
static PyObject *raise_outcome(pyferry_op_t *self, ferry_status_t status)
{
    const char *msg = "";

    if (self->op == NULL ||
        (status == FERRY_ERR_TIMED_OUT && !ferry_op_status_is_final(ferry_op_status(self->op)))) {
        return pyferry_raise(status, "operation: the wait timed out (the operation goes on)");
    }
    ferry_op_error(self->op, &msg);
    return pyferry_raise(status, msg != NULL && msg[0] != '\0' ? msg : NULL);
}

static PyObject *op_outcome(PyObject *obj, PyObject *unused);

/* _wait(timeout_ms): -1 waits without limit. Returns None on COMPLETE,
 * raises on CANCELLED / ERRORED / timeout. The wait is cut into slices so
 * that signals (Ctrl-C) are seen. */
static PyObject *op_wait(PyObject *obj, PyObject *arg)
{
    pyferry_op_t *self = (pyferry_op_t *)obj;
    long timeout_ms = PyLong_AsLong(arg);
    ferry_status_t status;

    if ((timeout_ms == -1 && PyErr_Occurred()) || check_process(self) < 0) {
        return NULL;
    }
    for (;;) {
        int slice = timeout_ms < 0 || timeout_ms > 200 ? 200 : (int)timeout_ms;
        /* Read again at each slice: between slices (signal handlers, other
         * threads taking the GIL) the operation may have been closed. While
         * a slice runs it counts in in_flight, so close() refuses. */
        ferry_op_t *op = self->op;

        if (op == NULL) {
            return op_outcome(obj, NULL); /* closed: final, its outcome kept */
        }
        self->in_flight[PYFERRY_OP_CALL_WAIT]++;
        Py_BEGIN_ALLOW_THREADS status = ferry_op_wait(op, slice);
        Py_END_ALLOW_THREADS self->in_flight[PYFERRY_OP_CALL_WAIT]--;
        if (status != FERRY_ERR_TIMED_OUT) {
            break;
        }
        if (ferry_op_status_is_final(ferry_op_status(op))) {
            /* Ended, with TIMED_OUT as its own code or just after the
             * slice ran out: its outcome, not the slice's. */
            return op_outcome(obj, NULL);
        }
        if (timeout_ms >= 0) {
            timeout_ms -= slice;
            if (timeout_ms <= 0) {
                break;
            }
        }
        if (PyErr_CheckSignals() < 0) {
            return NULL;
        }
    }
    if (status == FERRY_OK) {
        Py_RETURN_NONE;
    }
    return raise_outcome(self, status);
}

/* _outcome(): None when COMPLETE, raises for CANCELLED / ERRORED, after a
 * completion came through the queue (or on a closed operation). */
static PyObject *op_outcome(PyObject *obj, PyObject *unused)
{
    pyferry_op_t *self = (pyferry_op_t *)obj;
    const char *msg = NULL;
    ferry_op_status_t st;

    (void)unused;
    if (check_process(self) < 0) {
        return NULL;
    }
    if (self->op == NULL) {
        if (self->closed_status == FERRY_OP_STATUS_COMPLETE) {
            Py_RETURN_NONE;
        }
        return pyferry_raise(self->closed_code < 0 ? self->closed_code : FERRY_ERR_CANCELLED,
                             self->closed_message != NULL
                                 ? PyUnicode_AsUTF8AndSize(self->closed_message, NULL)
                                 : NULL);
    }
    st = ferry_op_status(self->op);
    if (st == FERRY_OP_STATUS_COMPLETE) {
        Py_RETURN_NONE;
    }
    if (st != FERRY_OP_STATUS_CANCELLED && st != FERRY_OP_STATUS_ERRORED) {
        return pyferry_raise(FERRY_ERR_MISUSE, "operation: not final yet");
    }
    if (st == FERRY_OP_STATUS_CANCELLED) {
        return raise_outcome(self, FERRY_ERR_CANCELLED);
    }
    return raise_outcome(self, ferry_op_error(self->op, &msg));
}

static PyObject *op_cancel(PyObject *obj, PyObject *unused)
{
    pyferry_op_t *self = (pyferry_op_t *)obj;
    ferry_op_t *op = self->op;

    (void)unused;
    if (check_process(self) < 0) {
        return NULL;
    }
    if (op == NULL) {
        Py_RETURN_NONE; /* closed: final already */
    }
    self->in_flight[PYFERRY_OP_CALL_CANCEL]++;
    Py_BEGIN_ALLOW_THREADS ferry_op_cancel(op);
    Py_END_ALLOW_THREADS self->in_flight[PYFERRY_OP_CALL_CANCEL]--;
    Py_RETURN_NONE;
}

/* Sets the done callback once, so that the completion reaches the queue. */
static PyObject *op_arm(PyObject *obj, PyObject *unused)
{
    pyferry_op_t *self = (pyferry_op_t *)obj;
    ferry_status_t status;

    (void)unused;
    if (check_open(self) < 0) {
        return NULL;
    }
    if (!self->armed) {
        /* It takes the connector's lock, which a region's close holds
         * across ucp_mem_unmap: without the GIL, so that the other threads
         * (an event loop) run meanwhile, and close() refuses. */
        ferry_op_t *op = self->op;
        self->armed = true; /* before: another thread's _arm has nothing to do */
        self->in_flight[PYFERRY_OP_CALL_ARM]++;
        Py_BEGIN_ALLOW_THREADS status = ferry_op_set_done_callback(op, on_done, self);
        Py_END_ALLOW_THREADS self->in_flight[PYFERRY_OP_CALL_ARM]--;
        if (status != FERRY_OK) {
            self->armed = false;
            return pyferry_raise_last(status);
        }
    }
    Py_RETURN_NONE;
}

static PyObject *op_metadata(PyObject *obj, PyObject *unused)
{
    pyferry_op_t *self = (pyferry_op_t *)obj;
    const uint8_t *bytes;
    size_t len;
    ferry_status_t status;

    (void)unused;
    if (check_open(self) < 0) {
        return NULL;
    }
    status = ferry_op_metadata(self->op, &bytes, &len);
    if (status != FERRY_OK) {
        return pyferry_raise_last(status);
    }
    return PyBytes_FromStringAndSize((const char *)bytes, (Py_ssize_t)len);
}

static PyObject *op_notification_key(PyObject *obj, PyObject *unused)
{
    pyferry_op_t *self = (pyferry_op_t *)obj;
    const uint8_t *key;
    ferry_status_t status;

    (void)unused;
    if (check_open(self) < 0) {
        return NULL;
    }
    status = ferry_op_notification_key(self->op, &key);
    if (status != FERRY_OK) {
        return pyferry_raise_last(status);
    }
    return PyBytes_FromStringAndSize((const char *)key, FERRY_NOTIFICATION_KEY_LEN);
}

/* _publish(coordinator, request_id, token or None, ttl_s) -> token */
static PyObject *op_publish(PyObject *obj, PyObject *args)
{
    pyferry_op_t *self = (pyferry_op_t *)obj;
    PyObject *coord_obj;
    pyferry_coordinator_t *coord;
    ferry_publish_params_t params = {.field_mask = 0};
    const char *request_id, *token, *published = NULL;
    ferry_op_t *op = self->op;
    ferry_status_t status;
    PyObject *result;
    pyferry_wait_t w;
    int ttl_s;

    if (!PyArg_ParseTuple(args, "O!szi:_publish", pyferry_coordinator_type, &coord_obj, &request_id,
                          &token, &ttl_s)) {
        return NULL;
    }
    coord = (pyferry_coordinator_t *)coord_obj;
    if (check_open(self) < 0 || pyferry_coordinator_check_open(coord) < 0) {
        return NULL;
    }
    if (self->coordinator != NULL && self->coordinator != coord) {
        return pyferry_raise(FERRY_ERR_MISUSE, "operation: bound to another coordinator");
    }
    /* Decided here, with the GIL, as the binding above: libferry's own
     * "already published" check and its update are apart, so two publishes
     * at once both went through (one operation under two request IDs), and
     * a close deferred to a publish has one thread to finish it. */
    if (self->in_flight[PYFERRY_OP_CALL_PUBLISH] > 0) {
        return pyferry_raise(FERRY_ERR_MISUSE, "operation: a publish is already in flight");
    }
    params.request_id = request_id;
    params.access_token = token;
    if (ttl_s > 0) {
        params.field_mask |= FERRY_PUBLISH_PARAM_FIELD_TTL;
        params.ttl_s = ttl_s;
    }
    /* The call counts as one of the coordinator's operations while it
     * runs, so the coordinator does not close under it; the operation is
     * bound to it only once published, so a failed publish (AlreadyExists,
     * Unavailable) leaves it free for another coordinator, and the
     * coordinator free to close. */
    coord->live_ops++;
    self->in_flight[PYFERRY_OP_CALL_PUBLISH]++;
    /* A signal ends the wait (Ctrl-C). A close() from another thread does
     * not: the publish finishes it (close_deferred), and the destroy then
     * cancels the registration the publish made, which a publish cut short
     * with the caller's token could leave (ferry_op_publish). */
    pyferry_wait_begin(&w);
    status = ferry_op_publish(op, coord->coord, &params);
    /* The token takes the connector's lock too: read without the GIL. */
    published = status == FERRY_OK ? ferry_op_access_token(op) : NULL;
    pyferry_wait_end(&w);
    self->in_flight[PYFERRY_OP_CALL_PUBLISH]--;
    if (status == FERRY_OK && self->coordinator == NULL) {
        Py_INCREF((PyObject *)coord);
        self->coordinator = coord;
        coord->live_ops++;
    }
    if (self->close_deferred) {
        /* Released while the call still counts as the coordinator's; a
         * signal handler's exception stands over Cancelled. */
        PyObject *type, *value, *tb;
        PyErr_Fetch(&type, &value, &tb);
        result = finish_deferred_close(self, op, status);
        if (type != NULL) {
            PyErr_Clear();
            PyErr_Restore(type, value, tb);
        }
    } else if (PyErr_Occurred()) {
        result = NULL; /* a signal handler raised (Ctrl-C) */
    } else if (status != FERRY_OK) {
        result = pyferry_raise_last(status);
    } else {
        result = PyUnicode_FromString(published != NULL ? published : "");
    }
    coord->live_ops--;
    return result;
}

static PyObject *op_get_access_token(PyObject *obj, void *closure)
{
    pyferry_op_t *self = (pyferry_op_t *)obj;
    const char *token;
    ferry_op_t *op;

    (void)closure;
    if (check_process(self) < 0) {
        return NULL;
    }
    if (self->op == NULL) {
        Py_RETURN_NONE;
    }
    /* It takes the connector's lock, which a region's close holds across
     * ucp_mem_unmap: without the GIL, counted so that close() refuses
     * meanwhile (as _arm). The token is the op's, valid while it is open. */
    op = self->op;
    self->in_flight[PYFERRY_OP_CALL_TOKEN]++;
    Py_BEGIN_ALLOW_THREADS token = ferry_op_access_token(op);
    Py_END_ALLOW_THREADS self->in_flight[PYFERRY_OP_CALL_TOKEN]--;
    if (token == NULL) {
        Py_RETURN_NONE;
    }
    return PyUnicode_FromString(token);
}

static PyMethodDef op_methods[] = {
    {"close", op_close, METH_NOARGS,
     "close(): cancels the operation if unfinished, then releases it (and, for a passive one, "
     "its memory registration). Memory given by address has nothing to hold: a write or read "
     "waits for its own puts or gets (without peer error handling, for as long as a stalled "
     "passive side takes, uninterruptibly); a writable or readable waits, at most 1 s "
     "(FERRY_OP_DESTROY_FLUSH_MS), until its admitted writer or reader can no longer reach it. "
     "Idempotent: a close() while another thread's runs returns once that one does."},
    {"error", op_error, METH_NOARGS, "error() -> (code, message): why it failed, if it did."},
    {"cancel", op_cancel, METH_NOARGS, "cancel(): cancels; no-op when final."},
    {"_wait", op_wait, METH_O, "_wait(timeout_ms)."},
    {"_outcome", op_outcome, METH_NOARGS, "_outcome(): raise unless COMPLETE."},
    {"_arm", op_arm, METH_NOARGS, "_arm(): report completion to the connector's queue."},
    {"_metadata", op_metadata, METH_NOARGS, "_metadata() -> bytes."},
    {"_notification_key", op_notification_key, METH_NOARGS, "_notification_key() -> bytes."},
    {"_publish", op_publish, METH_VARARGS, "_publish(coordinator, request_id, token, ttl_s)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef op_getset[] = {
    {"_status", op_get_status, NULL, "The status as an int (OperationStatus values).", NULL},
    {"closed", op_get_closed, NULL, "True once close() released the operation.", NULL},
    {"_busy", op_get_busy, NULL, "Calls in flight with the GIL released.", NULL},
    {"_kind", op_get_kind, NULL, "0 writable, 1 readable, 2 write, 3 read.", NULL},
    {"connector", op_get_connector, NULL, "The Connector that made it.", NULL},
    {"descriptors", op_get_descriptors, NULL, "The descriptors it holds (until closed).", NULL},
    {"access_token", op_get_access_token, NULL, "The access token once published (None before).",
     NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot op_slots[] = {
    {Py_tp_new, op_new},
    {Py_tp_dealloc, op_dealloc},
    {Py_tp_traverse, op_traverse},
    {Py_tp_methods, op_methods},
    {Py_tp_getset, op_getset},
    {Py_tp_doc, "_Operation: one libferry operation (made by a Connector)."},
    {0, NULL},
};

static PyType_Spec op_spec = {
    "ferry._ferry._Operation",
    sizeof(pyferry_op_t),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    op_slots,
};

PyTypeObject *pyferry_op_type_create(PyObject *module)
{
    return (PyTypeObject *)PyType_FromModuleAndSpec(module, &op_spec, NULL);
}
