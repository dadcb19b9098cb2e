/*
 * connector.c: _Connector, one ferry_connector_t in progress-thread mode,
 * and the completion queue that hands finished operations to Python.
 *
 * The queue: an operation whose done callback is set (op.c, on_done) is
 * appended here by libferry's progress thread, under done_lock, and the
 * eventfd is signalled; the thread never takes the GIL. Python watches the
 * fd (loop.add_reader) and calls _drain(), which reads the fd and then takes
 * the whole list: reading before taking means a signal is never lost. The
 * list holds borrowed pointers: an operation being closed or freed leaves
 * it, and marks itself so that its done callback queues it no more, before
 * it lets go of the GIL to cancel and destroy (op.c), so neither the list
 * nor a _drain() ever names an object being freed.
 *
 * Operations created through here hold a strong reference to the connector,
 * so ferry_connector_destroy runs only after every operation is destroyed;
 * a constructor running with the GIL released counts in live_ops until it
 * returns, so close() from another thread refuses (Busy) meanwhile. The
 * constructors run every piece of Python code they call (the operation's
 * class, the collector) before they check that the connector is open, and
 * count themselves at once after that check. close() sets closing before it
 * lets go of the GIL (reaping, destroying): another close() refuses (Busy)
 * and every other use refuses (Misuse) until it is over.
 * Regions (region.c) made here do too, and count in live_regions from
 * before their libferry call until they are deregistered: close() refuses
 * while one remains. A region collected while libferry still held it is an
 * orphan here, holding a reference to the connector; reaping (at each
 * allocation or registration, at each operation's close, and at close)
 * deregisters the orphans libferry has let go and drops their references.
 *
 * The memory of an operation closed before it completed (its descriptors,
 * which hold it) is parked here until libferry releases it, or until
 * ferry_connector_destroy succeeded: such an operation is destroyed with
 * ferry_op_destroy_nowait, which waits for no data in flight (an admitted
 * writer's puts into a writable, a read's gets from a peer that stopped
 * answering) and calls pyferry_parked_released, on libferry's thread,
 * once none can land any more; the next reap drops the node. A close()
 * therefore never blocks on a peer for memory it can hold (op.c says how
 * long it waits for memory given by address). Memory libferry never
 * released (a peer that never settled) is leaked when the connector
 * closes, never freed.
 * Memory the operation reaches through a region (ferry_op_in_region: it
 * lies inside one, however the descriptor was made: the region, or a
 * memoryview, numpy array or tensor over it) is not parked: libferry holds
 * the region while data may move, so it is not deregistered and its memory
 * stays (region.c), and parking the descriptor would keep its object's
 * export on the region, which then could never close, nor the connector.
 */
#include "pyferry.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

/* Descriptors a constructor lists on its stack; longer lists are allocated. */
#define CONNECTOR_STACK_DESCS 16

static PyObject *connector_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"name",      "peer_error_handling", "spin_us",
                             "log_level", "claim_timeout_ms",    "cuda_direct",
                             NULL};
    const char *name = NULL;
    int peer_error_handling = -1, spin_us = -1, log_level = -2, claim_timeout_ms = -1;
    int cuda_direct = -1;
    ferry_connector_params_t params = {.field_mask = 0};
    pyferry_connector_t *self;
    ferry_status_t status;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|zpiiip:_Connector", kwlist, &name,
                                     &peer_error_handling, &spin_us, &log_level, &claim_timeout_ms,
                                     &cuda_direct)) {
        return NULL;
    }
    if (name != NULL) {
        params.field_mask |= FERRY_CONNECTOR_PARAM_FIELD_NAME;
        params.name = name;
    }
    if (peer_error_handling >= 0) {
        params.field_mask |= FERRY_CONNECTOR_PARAM_FIELD_PEER_ERROR_HANDLING;
        params.peer_error_handling = peer_error_handling != 0;
    }
    if (spin_us >= 0) {
        params.field_mask |= FERRY_CONNECTOR_PARAM_FIELD_SPIN_US;
        params.spin_us = (uint32_t)spin_us;
    }
    if (log_level >= -1) {
        params.field_mask |= FERRY_CONNECTOR_PARAM_FIELD_LOG_LEVEL;
        params.log_level = (ferry_loglevel_t)log_level;
    }
    if (claim_timeout_ms != -1) { /* libferry refuses what is not 1..INT32_MAX */
        params.field_mask |= FERRY_CONNECTOR_PARAM_FIELD_CLAIM_TIMEOUT_MS;
        params.claim_timeout_ms = claim_timeout_ms < 0 ? 0 : (uint32_t)claim_timeout_ms;
    }
    if (cuda_direct >= 0) {
        params.field_mask |= FERRY_CONNECTOR_PARAM_FIELD_CUDA_DIRECT;
        params.cuda_direct = cuda_direct != 0;
    }
    self = (pyferry_connector_t *)((allocfunc)PyType_GetSlot(tp, Py_tp_alloc))(tp, 0);
    if (self == NULL) {
        return NULL;
    }
    self->efd = -1;
    self->generation = pyferry_generation();
    self->pid = (long)getpid();
    self->done_tail = &self->done_head;
    pthread_mutex_init(&self->done_lock, NULL);
    self->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (self->efd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto err_self;
    }
    Py_BEGIN_ALLOW_THREADS status = ferry_connector_create(&params, &self->conn);
    Py_END_ALLOW_THREADS if (status != FERRY_OK)
    {
        pyferry_raise_last(status);
        goto err_self;
    }
    return (PyObject *)self;

err_self:
    Py_DECREF(self);
    return NULL;
}

bool pyferry_connector_forked(const pyferry_connector_t *self)
{
    return self->generation != pyferry_generation();
}

/* Destroys the connector; FERRY_ERR_BUSY (nothing changed) while an
 * operation lives. In a forked child it is abandoned instead. */
static ferry_status_t connector_close_handle(pyferry_connector_t *self)
{
    ferry_status_t status = FERRY_OK;
    ferry_connector_t *conn = self->conn;

    if (conn == NULL || pyferry_connector_forked(self)) {
        self->conn = NULL;
        return FERRY_OK;
    }
    Py_BEGIN_ALLOW_THREADS status = ferry_connector_destroy(conn);
    Py_END_ALLOW_THREADS if (status == FERRY_OK)
    {
        self->conn = NULL;
    }
    return status;
}

void pyferry_parked_released(void *node)
{
    atomic_store(&((pyferry_parked_t *)node)->released, true);
}

/* Frees the parked nodes libferry released, letting go of their
 * descriptors; a node a close() still waits on (waited_on) stays for a
 * later reap, even with destroyed: that close() reads it without the GIL,
 * and sets waited_on back with it. With destroyed (the libferry connector
 * is gone), the others
 * are left too, but never freed: libferry never said that nothing reaches
 * them (a peer that never settled; a UCX worker left behind with their
 * transfers, which on RDMA hardware a NIC could still complete), so their
 * memory is leaked rather than freed under a transfer. GIL held. */
static void parked_free(pyferry_connector_t *self, bool destroyed)
{
    pyferry_parked_t **pp = &self->parked, *go = NULL;

    /* Unlinked first, then let go: a descriptor's last reference can run
     * Python code (a finalizer, the collector, another thread once the GIL
     * is dropped) that reaps or closes this connector too. */
    while (*pp != NULL) {
        pyferry_parked_t *p = *pp;
        if (!p->waited_on && (atomic_load(&p->released) || destroyed)) {
            *pp = p->next;
            p->next = go;
            go = p;
        } else {
            pp = &p->next;
        }
    }
    while (go != NULL) {
        pyferry_parked_t *p = go;
        go = p->next;
        if (atomic_load(&p->released)) {
            Py_DECREF(p->descs);
            free(p);
        }
    }
}

void pyferry_connector_reap(pyferry_connector_t *self)
{
    pyferry_orphan_t *o = self->orphans;
    ferry_status_t status;

    if (pyferry_connector_forked(self)) {
        return; /* the parent's: left to it */
    }
    parked_free(self, false);
    /* Taken whole: another thread reaping while the GIL is released below
     * sees an empty list, never a node in use here. */
    self->orphans = NULL;
    while (o != NULL) {
        pyferry_orphan_t *next = o->next;
        Py_BEGIN_ALLOW_THREADS status = ferry_mem_deregister(o->region);
        Py_END_ALLOW_THREADS if (status == FERRY_OK)
        {
            Py_XDECREF(o->owner);
            free(o);
            self->live_regions--;
            /* The orphan's reference; the caller holds another. */
            Py_DECREF((PyObject *)self);
        }
        else
        {
            o->next = self->orphans;
            self->orphans = o;
        }
        o = next;
    }
}

pyferry_parked_t *pyferry_connector_park(pyferry_connector_t *self, PyObject *keep,
                                         const ferry_op_t *op, bool waited_on)
{
    Py_ssize_t n = PyTuple_Size(keep), kept = 0;
    pyferry_parked_t *p;
    PyObject *descs;

    for (Py_ssize_t i = 0; i < n; i++) {
        pyferry_desc_t *d = (pyferry_desc_t *)PyTuple_GetItem(keep, i);
        kept += d->owner != Py_None && !ferry_op_in_region(op, (size_t)i);
    }
    if (kept == 0 && !waited_on) {
        return NULL; /* no memory to hold, or libferry holds its region */
    }
    p = calloc(1, sizeof(*p));
    descs = PyTuple_New(kept);
    if (p == NULL || descs == NULL) {
        PyErr_Clear();
        free(p);
        Py_XDECREF(descs);
        p = NULL;
        descs = NULL;
    }
    kept = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PyTuple_GetItem(keep, i);
        pyferry_desc_t *d = (pyferry_desc_t *)item;
        if (d->owner != Py_None && !ferry_op_in_region(op, (size_t)i)) {
            Py_INCREF(item); /* with no node: leaked rather than freed under a transfer */
            if (p != NULL && descs != NULL) {
                PyTuple_SetItem(descs, kept++, item); /* steals it */
            }
        }
    }
    if (p == NULL || descs == NULL) {
        return NULL;
    }
    p->descs = descs;
    atomic_init(&p->released, false);
    p->waited_on = waited_on;
    p->next = self->parked;
    self->parked = p;
    return p;
}

/* The collector's view of the C fields (op.c's op_traverse says why; no
 * tp_clear either). */
static int connector_traverse(PyObject *obj, visitproc visit, void *arg)
{
    pyferry_connector_t *self = (pyferry_connector_t *)obj;

    Py_VISIT(Py_TYPE(obj));
    for (pyferry_parked_t *p = self->parked; p != NULL; p = p->next) {
        Py_VISIT(p->descs);
    }
    for (pyferry_orphan_t *o = self->orphans; o != NULL; o = o->next) {
        Py_VISIT(o->owner);
    }
    return 0;
}

static void connector_dealloc(PyObject *obj)
{
    pyferry_connector_t *self = (pyferry_connector_t *)obj;

    PyObject_GC_UnTrack(obj);
    /* Every operation, region and orphan holds a reference: none is alive
     * here. Parked memory goes only once libferry's connector is gone (else
     * it is leaked with it rather than freed under a transfer). */
    (void)connector_close_handle(self);
    if (self->conn == NULL) {
        parked_free(self, true);
    }
    if (self->efd >= 0) {
        close(self->efd);
    }
    if (!pyferry_connector_forked(self)) {
        /* A child's copy may be locked by a thread it does not have. */
        pthread_mutex_destroy(&self->done_lock);
    }
    pyferry_free_self(obj);
}

/* close() past its first checks: reaps the orphans, then destroys. Both
 * let go of the GIL, so the caller sets closing around this. Returns -1
 * with an exception set. */
static int connector_release(pyferry_connector_t *self)
{
    ferry_status_t status;
    char msg[160];

    pyferry_connector_reap(self);
    if (self->live_regions > 0) {
        snprintf(msg, sizeof(msg),
                 "connector: %zd region(s) still registered (or still used by a transfer); "
                 "close them first",
                 self->live_regions);
        pyferry_raise(FERRY_ERR_BUSY, msg);
        return -1;
    }
    status = connector_close_handle(self);
    if (status != FERRY_OK) {
        pyferry_raise_last(status);
        return -1;
    }
    return 0;
}

static PyObject *connector_close(PyObject *obj, PyObject *unused)
{
    pyferry_connector_t *self = (pyferry_connector_t *)obj;
    int rc;

    (void)unused;
    if (pyferry_connector_forked(self)) {
        /* Abandoned, with what is open on it (each abandons its own). */
        self->conn = NULL;
        Py_RETURN_NONE;
    }
    if (self->closing) {
        return pyferry_raise(FERRY_ERR_BUSY, "connector: being closed by another thread");
    }
    if (self->live_ops > 0) {
        char msg[128];
        snprintf(msg, sizeof(msg),
                 "connector: %zd operation(s) still open or calls in flight; close them first",
                 self->live_ops);
        return pyferry_raise(FERRY_ERR_BUSY, msg);
    }
    self->closing = true;
    rc = connector_release(self);
    self->closing = false;
    if (rc < 0) {
        return NULL;
    }
    /* The memory of operations closed unfinished goes, but what libferry
     * never released is leaked (parked_free). */
    parked_free(self, true);
    Py_RETURN_NONE;
}

static int connector_check_open(pyferry_connector_t *self)
{
    if (pyferry_check_process(self->generation, self->pid, "connector") < 0) {
        return -1;
    }
    if (self->conn == NULL) {
        pyferry_raise(FERRY_ERR_MISUSE, "connector: closed");
        return -1;
    }
    if (self->closing) {
        pyferry_raise(FERRY_ERR_MISUSE, "connector: being closed by another thread");
        return -1;
    }
    return 0;
}

static PyObject *connector_get_name(PyObject *obj, void *closure)
{
    pyferry_connector_t *self = (pyferry_connector_t *)obj;

    (void)closure;
    if (connector_check_open(self) < 0) {
        return NULL;
    }
    return PyUnicode_FromString(ferry_connector_name(self->conn));
}

static PyObject *connector_get_hostname(PyObject *obj, void *closure)
{
    pyferry_connector_t *self = (pyferry_connector_t *)obj;

    (void)closure;
    if (connector_check_open(self) < 0) {
        return NULL;
    }
    return PyUnicode_FromString(ferry_connector_hostname(self->conn));
}

static PyObject *connector_get_cuda(PyObject *obj, void *closure)
{
    pyferry_connector_t *self = (pyferry_connector_t *)obj;

    (void)closure;
    if (connector_check_open(self) < 0) {
        return NULL;
    }
    return PyBool_FromLong(ferry_connector_is_cuda_available(self->conn));
}

static PyObject *connector_get_fd(PyObject *obj, void *closure)
{
    (void)closure;
    return PyLong_FromLong(((pyferry_connector_t *)obj)->efd);
}

static PyObject *connector_get_closed(PyObject *obj, void *closure)
{
    (void)closure;
    return PyBool_FromLong(((pyferry_connector_t *)obj)->conn == NULL);
}

static PyObject *connector_get_live_ops(PyObject *obj, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(((pyferry_connector_t *)obj)->live_ops);
}

static PyObject *connector_get_live_regions(PyObject *obj, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(((pyferry_connector_t *)obj)->live_regions);
}

static PyObject *connector_stats(PyObject *obj, PyObject *unused)
{
    pyferry_connector_t *self = (pyferry_connector_t *)obj;
    ferry_connector_stats_t s;

    (void)unused;
    if (connector_check_open(self) < 0) {
        return NULL;
    }
    /* Counted as an operation while the GIL is let go (close() refuses
     * meanwhile): the read takes the connector's lock, which a region's
     * close holds across ucp_mem_unmap. */
    self->live_ops++;
    Py_BEGIN_ALLOW_THREADS ferry_connector_get_stats(self->conn, &s);
    Py_END_ALLOW_THREADS self->live_ops--;
    return Py_BuildValue("{sKsKsKsKsKsKsKsKsKsK}", "mem_maps", (unsigned long long)s.mem_maps,
                         "messages_dropped", (unsigned long long)s.messages_dropped,
                         "endpoints_created", (unsigned long long)s.endpoints_created,
                         "endpoint_cache_hits", (unsigned long long)s.endpoint_cache_hits,
                         "rkeys_unpacked", (unsigned long long)s.rkeys_unpacked, "rkey_cache_hits",
                         (unsigned long long)s.rkey_cache_hits, "notices_received",
                         (unsigned long long)s.notices_received, "claims_refused",
                         (unsigned long long)s.claims_refused, "notices_ignored",
                         (unsigned long long)s.notices_ignored, "peers_cached",
                         (unsigned long long)s.peers_cached);
}

/* Reads the eventfd, then takes the list: [op, ...] finished since the last
 * drain, each at most once. */
static PyObject *connector_drain(PyObject *obj, PyObject *unused)
{
    pyferry_connector_t *self = (pyferry_connector_t *)obj;
    pyferry_op_t *head;
    PyObject *list;
    uint64_t count;

    (void)unused;
    if (pyferry_check_process(self->generation, self->pid, "connector") < 0) {
        return NULL; /* the eventfd and the list are the parent's */
    }
    if (read(self->efd, &count, sizeof(count)) < 0 && errno != EAGAIN) {
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    list = PyList_New(0);
    if (list == NULL) {
        return NULL;
    }
    pthread_mutex_lock(&self->done_lock);
    head = self->done_head;
    self->done_head = NULL;
    self->done_tail = &self->done_head;
    for (pyferry_op_t *op = head; op != NULL; op = op->done_next) {
        op->queued = false;
    }
    pthread_mutex_unlock(&self->done_lock);
    /* With the GIL held no operation can be freed meanwhile. */
    for (pyferry_op_t *op = head; op != NULL; op = op->done_next) {
        if (PyList_Append(list, (PyObject *)op) < 0) {
            Py_DECREF(list);
            return NULL;
        }
    }
    return list;
}

/* A constructor's local list: counted, filled into *descs_p (the caller's
 * array of stack_n when it holds them, else one PyMem_Malloc'd in its place,
 * which the caller frees) and pinned, *keep_p getting the tuple of
 * descriptors. Returns -1 with an exception set, having pinned nothing. */
static int connector_descs_take(pyferry_connector_t *self, PyObject *seq, bool need_writable,
                                Py_ssize_t stack_n, ferry_descriptor_t **descs_p, Py_ssize_t *n_p,
                                PyObject **keep_p)
{
    Py_ssize_t n = pyferry_descs_count(seq);

    if (n < 0) {
        return -1;
    }
    if (n > stack_n) {
        *descs_p = PyMem_Malloc((size_t)n * sizeof(**descs_p));
        if (*descs_p == NULL) {
            PyErr_NoMemory();
            return -1;
        }
    }
    if (pyferry_descs_fill(seq, need_writable, *descs_p, n, keep_p) < 0) {
        return -1;
    }
    if (pyferry_descs_pin(*keep_p, self, false) < 0) {
        Py_CLEAR(*keep_p);
        return -1;
    }
    *n_p = n;
    return 0;
}

/* Makes the operation's object, builds the local list, then calls the
 * constructor with the GIL released and hands the handle to the object. */
static PyObject *connector_create(PyObject *obj, PyObject *args)
{
    pyferry_connector_t *self = (pyferry_connector_t *)obj;
    int kind;
    PyObject *seq, *cls, *keep = NULL, *result = NULL;
    Py_buffer md = {.buf = NULL};
    ferry_descriptor_t stack[CONNECTOR_STACK_DESCS], *descs = stack;
    ferry_op_t *op = NULL;
    ferry_status_t status;
    Py_ssize_t n = 0;

    if (!PyArg_ParseTuple(args, "iOO|y*:_create", &kind, &seq, &cls, &md)) {
        return NULL;
    }
    if (connector_check_open(self) < 0) {
        goto out;
    }
    if (kind < PYFERRY_WRITABLE || kind > PYFERRY_READ ||
        (kind >= PYFERRY_WRITE) != (md.buf != NULL)) {
        PyErr_SetString(PyExc_ValueError, "_create: bad kind or metadata");
        goto out;
    }
    result = pyferry_op_make(cls, self);
    if (result == NULL ||
        connector_descs_take(self, seq, kind == PYFERRY_WRITABLE || kind == PYFERRY_READ,
                             CONNECTOR_STACK_DESCS, &descs, &n, &keep) < 0) {
        goto err_result;
    }
    /* Checked again after every piece of Python code above (the class's,
     * finalizers the collector ran), then counted at once: close() from
     * another thread refuses (Busy) rather than destroy the connector under
     * the call. */
    if (connector_check_open(self) < 0) {
        goto err_unpin;
    }
    self->live_ops++;
    Py_BEGIN_ALLOW_THREADS switch (kind)
    {
    case PYFERRY_WRITABLE:
        status = ferry_writable_create(self->conn, descs, (size_t)n, &op);
        break;
    case PYFERRY_READABLE:
        status = ferry_readable_create(self->conn, descs, (size_t)n, &op);
        break;
    case PYFERRY_WRITE:
        status = ferry_write_begin(self->conn, descs, (size_t)n, md.buf, (size_t)md.len, &op);
        break;
    default:
        status = ferry_read_begin(self->conn, descs, (size_t)n, md.buf, (size_t)md.len, &op);
        break;
    }
    Py_END_ALLOW_THREADS self->live_ops--;
    pyferry_descs_unpin(keep);
    if (status != FERRY_OK) {
        pyferry_raise_last(status);
        goto err_result;
    }
    pyferry_op_attach(result, op, kind, keep, NULL);
    goto out;

err_unpin:
    pyferry_descs_unpin(keep);
err_result:
    Py_CLEAR(result);
out:
    Py_XDECREF(keep);
    if (descs != stack) {
        PyMem_Free(descs);
    }
    if (md.buf != NULL) {
        PyBuffer_Release(&md);
    }
    return result;
}

/* One ferry_write_begin_by_id or ferry_read_begin_by_id, the GIL let go,
 * ended by a signal or by cancel.is_set() (pyferry_wait_begin_cancellable;
 * cancel NULL: by a signal only). */
static ferry_status_t begin_by_id_once(int kind, pyferry_connector_t *self,
                                       pyferry_coordinator_t *coord,
                                       const ferry_claim_params_t *params,
                                       const ferry_descriptor_t *descs, size_t n, PyObject *cancel,
                                       ferry_op_t **op_p)
{
    ferry_status_t status;
    pyferry_wait_t w;

    pyferry_wait_begin_cancellable(&w, cancel);
    if (kind == PYFERRY_WRITE) {
        status = ferry_write_begin_by_id(self->conn, coord->coord, params, descs, n, op_p);
    } else {
        status = ferry_read_begin_by_id(self->conn, coord->coord, params, descs, n, op_p);
    }
    pyferry_wait_end(&w);
    return status;
}

/* _begin_by_id(kind, coordinator, request_id, token, wait_ms, ttl_s, descs, cls
 * [, cancel]): cancel, an object with is_set() (a threading.Event), ends
 * the lookup or claim under way once it is set (Cancelled). */
static PyObject *connector_begin_by_id(PyObject *obj, PyObject *args)
{
    pyferry_connector_t *self = (pyferry_connector_t *)obj;
    int kind, wait_ms, ttl_s;
    const char *request_id, *token;
    PyObject *coord_obj, *seq, *cls, *cancel = Py_None, *keep = NULL, *result = NULL;
    pyferry_coordinator_t *coord;
    ferry_claim_params_t params = {.field_mask = 0};
    ferry_descriptor_t stack[CONNECTOR_STACK_DESCS], *descs = stack;
    ferry_op_t *op = NULL;
    ferry_status_t status;
    Py_ssize_t n = 0;

    if (!PyArg_ParseTuple(args, "iO!ssiiOO|O:_begin_by_id", &kind, pyferry_coordinator_type,
                          &coord_obj, &request_id, &token, &wait_ms, &ttl_s, &seq, &cls, &cancel)) {
        return NULL;
    }
    coord = (pyferry_coordinator_t *)coord_obj;
    if (connector_check_open(self) < 0 || pyferry_coordinator_check_open(coord) < 0) {
        return NULL;
    }
    if (kind != PYFERRY_WRITE && kind != PYFERRY_READ) {
        PyErr_SetString(PyExc_ValueError, "_begin_by_id: kind must be write or read");
        return NULL;
    }
    result = pyferry_op_make(cls, self);
    if (result == NULL || connector_descs_take(self, seq, kind == PYFERRY_READ,
                                               CONNECTOR_STACK_DESCS, &descs, &n, &keep) < 0) {
        goto err_result;
    }
    params.request_id = request_id;
    params.access_token = token;
    if (ttl_s > 0) {
        params.field_mask |= FERRY_CLAIM_PARAM_FIELD_TTL;
        params.ttl_s = ttl_s;
    }
    if (wait_ms > 0) {
        params.field_mask |= FERRY_CLAIM_PARAM_FIELD_WAIT;
        params.wait_ms = wait_ms;
    }
    /* Neither the connector nor the coordinator can be closed meanwhile
     * (the lookup and claim may wait for seconds): both are checked again
     * after the Python code above, and the call counts at once in each's
     * live_ops until it returns, so that closing either refuses. */
    if (connector_check_open(self) < 0 || pyferry_coordinator_check_open(coord) < 0) {
        goto err_unpin;
    }
    self->live_ops++;
    coord->live_ops++;
    status = begin_by_id_once(kind, self, coord, &params, descs, (size_t)n,
                              cancel != Py_None ? cancel : NULL, &op);
    coord->live_ops--;
    self->live_ops--;
    pyferry_descs_unpin(keep);
    if (PyErr_Occurred()) {
        /* A signal handler raised during the wait (Ctrl-C): its exception
         * stands. An operation begun as it came is closed as any other
         * when result goes (its memory parked while it may still move). */
        if (status == FERRY_OK) {
            pyferry_op_attach(result, op, kind, keep, coord);
        }
        goto err_result;
    }
    if (status != FERRY_OK) {
        pyferry_raise_last(status);
        goto err_result;
    }
    pyferry_op_attach(result, op, kind, keep, coord);
    goto out;

err_unpin:
    pyferry_descs_unpin(keep);
err_result:
    Py_CLEAR(result);
out:
    Py_XDECREF(keep);
    if (descs != stack) {
        PyMem_Free(descs);
    }
    return result;
}

/* _allocate(size, cls): host memory from ferry_mem_alloc, as a region of
 * class cls. Errors name the argument. */
static PyObject *connector_allocate(PyObject *obj, PyObject *args)
{
    pyferry_connector_t *self = (pyferry_connector_t *)obj;
    ferry_device_t host = FERRY_DEVICE_HOST_INIT;
    ferry_region_t *region = NULL;
    PyObject *size_obj, *cls, *result;
    ferry_status_t status;
    void *ptr = NULL;
    char msg[320];
    size_t size;

    if (!PyArg_ParseTuple(args, "O!O:_allocate", &PyLong_Type, &size_obj, &cls)) {
        return NULL;
    }
    size = PyLong_AsSize_t(size_obj);
    if (size == (size_t)-1 && PyErr_Occurred()) {
        return NULL;
    }
    if (connector_check_open(self) < 0) {
        return NULL;
    }
    result = pyferry_region_make(cls, self);
    if (result == NULL) {
        return NULL;
    }
    pyferry_connector_reap(self);
    /* Checked again after the Python code and the GIL let go of above, then
     * counted at once: close() from another thread must refuse. */
    if (connector_check_open(self) < 0) {
        Py_DECREF(result);
        return NULL;
    }
    self->live_regions++;
    Py_BEGIN_ALLOW_THREADS status = ferry_mem_alloc(self->conn, size, host, &region, &ptr);
    Py_END_ALLOW_THREADS if (status != FERRY_OK)
    {
        self->live_regions--;
        snprintf(msg, sizeof(msg), "allocate(size=%zu): %s", size, ferry_last_error_message());
        Py_DECREF(result);
        return pyferry_raise(status, msg);
    }
    pyferry_region_attach(result, region, ptr, size, host, true, NULL);
    return result;
}

/* _register(descriptor, cls): the descriptor's memory registered once
 * (ferry_mem_register), as a region of class cls holding the descriptor
 * (and so its owner) until deregistered. */
static PyObject *connector_register(PyObject *obj, PyObject *args)
{
    pyferry_connector_t *self = (pyferry_connector_t *)obj;
    ferry_region_t *region = NULL;
    PyObject *desc_obj, *cls, *keep, *result;
    pyferry_desc_t *d;
    ferry_status_t status;
    char msg[320];

    if (!PyArg_ParseTuple(args, "O!O:_register", pyferry_desc_type, &desc_obj, &cls)) {
        return NULL;
    }
    d = (pyferry_desc_t *)desc_obj;
    if (connector_check_open(self) < 0) {
        return NULL;
    }
    if (d->readonly) {
        return pyferry_raise(FERRY_ERR_INVALID_ARGUMENT,
                             "register_memory(buffer): the buffer is read-only (a region's "
                             "memory must be writable)");
    }
    result = pyferry_region_make(cls, self);
    if (result == NULL) {
        return NULL;
    }
    keep = PyTuple_Pack(1, desc_obj);
    if (keep == NULL) {
        goto err_result;
    }
    pyferry_connector_reap(self);
    /* Checked again after the Python code and the GIL let go of above, then
     * pinned and counted at once. */
    if (connector_check_open(self) < 0 || pyferry_descs_pin(keep, self, true) < 0) {
        goto err_keep;
    }
    self->live_regions++;
    Py_BEGIN_ALLOW_THREADS status =
        ferry_mem_register(self->conn, d->desc.ptr, d->desc.size, d->desc.device, &region);
    Py_END_ALLOW_THREADS pyferry_descs_unpin(keep);
    Py_DECREF(keep);
    if (status != FERRY_OK) {
        self->live_regions--;
        snprintf(msg, sizeof(msg), "register_memory(buffer): %s", ferry_last_error_message());
        pyferry_raise(status, msg);
        goto err_result;
    }
    pyferry_region_attach(result, region, d->desc.ptr, d->desc.size, d->desc.device, false,
                          desc_obj);
    return result;

err_keep:
    Py_DECREF(keep);
err_result:
    Py_DECREF(result);
    return NULL;
}

static PyMethodDef connector_methods[] = {
    {"close", connector_close, METH_NOARGS,
     "close(): destroys the connector, then lets go of the memory of operations closed "
     "unfinished; Busy while an operation (one being made included) or a region is open."},
    {"stats", connector_stats, METH_NOARGS, "stats() -> dict: the connector's counters."},
    {"_drain", connector_drain, METH_NOARGS, "_drain() -> [op]: operations finished since."},
    {"_create", connector_create, METH_VARARGS, "_create(kind, descs, cls[, metadata])."},
    {"_begin_by_id", connector_begin_by_id, METH_VARARGS,
     "_begin_by_id(kind, coordinator, request_id, token, wait_ms, ttl_s, descs, cls[, cancel])."},
    {"_allocate", connector_allocate, METH_VARARGS, "_allocate(size, cls) -> region."},
    {"_register", connector_register, METH_VARARGS, "_register(descriptor, cls) -> region."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef connector_getset[] = {
    {"name", connector_get_name, NULL, "The worker's name (metadata and logs).", NULL},
    {"hostname", connector_get_hostname, NULL, "The host's name.", NULL},
    {"is_cuda_available", connector_get_cuda, NULL,
     "Whether CUDA descriptors are accepted: libferry has CUDA support and the CUDA "
     "driver loaded and has a device. When false they are refused (Unimplemented).",
     NULL},
    {"closed", connector_get_closed, NULL, "True once close() succeeded.", NULL},
    {"_fd", connector_get_fd, NULL, "The completion queue's eventfd.", NULL},
    {"_live_ops", connector_get_live_ops, NULL, "Operations not closed yet.", NULL},
    {"_live_regions", connector_get_live_regions, NULL,
     "Regions not deregistered yet (orphans included).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot connector_slots[] = {
    {Py_tp_new, connector_new},
    {Py_tp_dealloc, connector_dealloc},
    {Py_tp_traverse, connector_traverse},
    {Py_tp_methods, connector_methods},
    {Py_tp_getset, connector_getset},
    {Py_tp_doc, "_Connector(name=None, peer_error_handling=None, spin_us=-1, log_level=-2, "
                "claim_timeout_ms=-1, cuda_direct=None)."},
    {0, NULL},
};

static PyType_Spec connector_spec = {
    "ferry._ferry._Connector",
    sizeof(pyferry_connector_t),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    connector_slots,
};

PyTypeObject *pyferry_connector_type_create(PyObject *module)
{
    return (PyTypeObject *)PyType_FromModuleAndSpec(module, &connector_spec, NULL);
}
