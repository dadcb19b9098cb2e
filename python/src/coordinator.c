/*
 * coordinator.c: _Coordinator, one ferry_coordinator_t (ferry/coordinator.h):
 * a gRPC client of ferry-coordinator, its session lease and threads.
 *
 * Operations published on it or begun through it hold a reference to it
 * and count in live_ops, so it is disconnected only after them (libferry
 * refuses with FERRY_ERR_BUSY otherwise).
 *
 * Threads: everything runs with the GIL. close() sets closing before it
 * lets go of the GIL to disconnect: another close() refuses (Busy) and
 * every use refuses (Misuse, pyferry_coordinator_check_open) until it is
 * over, so ferry_coordinator_disconnect runs once and nothing uses the
 * coordinator it frees.
 */
#include "pyferry.h"

#include <limits.h>
#include <unistd.h>

static PyObject *coordinator_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"target",        "timeout_ms",    "tls_ca_file",
                             "tls_cert_file", "tls_key_file",  "tls_server_name",
                             "keepalive_ms",  "tls_refresh_s", NULL};
    ferry_coordinator_params_t params = {.field_mask = 0};
    const char *ca = NULL, *cert = NULL, *key = NULL, *server_name = NULL;
    int timeout_ms = 0, keepalive_ms = INT_MIN, tls_refresh_s = INT_MIN;
    pyferry_coordinator_t *self;
    ferry_status_t status;

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s|izzzzii:_Coordinator", kwlist, &params.target,
                                     &timeout_ms, &ca, &cert, &key, &server_name, &keepalive_ms,
                                     &tls_refresh_s)) {
        return NULL;
    }
    /* A number left out (timeout_ms 0, the others INT_MIN) leaves its field
     * unset; libferry refuses any value it is given out of range. */
    if (timeout_ms != 0) {
        params.field_mask |= FERRY_COORDINATOR_PARAM_FIELD_TIMEOUT;
        params.timeout_ms = timeout_ms;
    }
    if (keepalive_ms != INT_MIN) {
        params.field_mask |= FERRY_COORDINATOR_PARAM_FIELD_KEEPALIVE_MS;
        params.keepalive_ms = keepalive_ms;
    }
    if (tls_refresh_s != INT_MIN) {
        params.field_mask |= FERRY_COORDINATOR_PARAM_FIELD_TLS_REFRESH_S;
        params.tls_refresh_s = tls_refresh_s;
    }
    if (ca != NULL || cert != NULL || key != NULL || server_name != NULL) {
        params.field_mask |= FERRY_COORDINATOR_PARAM_FIELD_TLS;
        params.tls_ca_file = ca;
        params.tls_cert_file = cert;
        params.tls_key_file = key;
        params.tls_server_name = server_name;
    }
    self = (pyferry_coordinator_t *)((allocfunc)PyType_GetSlot(tp, Py_tp_alloc))(tp, 0);
    if (self == NULL) {
        return NULL;
    }
    self->generation = pyferry_generation();
    self->pid = (long)getpid();
    Py_BEGIN_ALLOW_THREADS status = ferry_coordinator_connect(&params, &self->coord);
    Py_END_ALLOW_THREADS if (status != FERRY_OK)
    {
        pyferry_raise_last(status);
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

/* interruptible: a signal ends the wait for the last duties (close(); not
 * dealloc, where a handler's exception could not be raised). */
static ferry_status_t coordinator_disconnect(pyferry_coordinator_t *self, bool interruptible)
{
    ferry_coordinator_t *coord = self->coord;
    ferry_status_t status;

    if (coord == NULL || self->generation != pyferry_generation()) {
        self->coord = NULL; /* in a forked child: abandoned, its threads are the parent's */
        return FERRY_OK;
    }
    if (interruptible) {
        pyferry_wait_t w;
        pyferry_wait_begin(&w);
        status = ferry_coordinator_disconnect(coord);
        pyferry_wait_end(&w);
    } else {
        Py_BEGIN_ALLOW_THREADS status = ferry_coordinator_disconnect(coord);
        Py_END_ALLOW_THREADS
    }
    if (status == FERRY_OK) {
        self->coord = NULL;
    }
    return status;
}

int pyferry_coordinator_check_open(pyferry_coordinator_t *coord)
{
    if (pyferry_check_process(coord->generation, coord->pid, "coordinator") < 0) {
        return -1;
    }
    if (coord->coord == NULL) {
        pyferry_raise(FERRY_ERR_MISUSE, "coordinator: closed");
        return -1;
    }
    if (coord->closing) {
        pyferry_raise(FERRY_ERR_MISUSE, "coordinator: being closed by another thread");
        return -1;
    }
    return 0;
}

static void coordinator_dealloc(PyObject *obj)
{
    /* Bound operations hold references: none is alive here. */
    (void)coordinator_disconnect((pyferry_coordinator_t *)obj, false);
    pyferry_free_self(obj);
}

static PyObject *coordinator_close(PyObject *obj, PyObject *unused)
{
    pyferry_coordinator_t *self = (pyferry_coordinator_t *)obj;
    ferry_status_t status;

    (void)unused;
    if (self->generation != pyferry_generation()) {
        (void)coordinator_disconnect(self, false); /* abandoned, with what is bound to it */
        Py_RETURN_NONE;
    }
    if (self->closing) {
        return pyferry_raise(FERRY_ERR_BUSY, "coordinator: being closed by another thread");
    }
    if (self->live_ops > 0) {
        char msg[128];
        snprintf(msg, sizeof(msg), "coordinator: %zd operation(s) still bound; close them first",
                 self->live_ops);
        return pyferry_raise(FERRY_ERR_BUSY, msg);
    }
    self->closing = true;
    status = coordinator_disconnect(self, true);
    self->closing = false;
    if (PyErr_Occurred()) {
        return NULL; /* a signal handler raised (Ctrl-C): closed all the same */
    }
    if (status != FERRY_OK) {
        return pyferry_raise_last(status);
    }
    Py_RETURN_NONE;
}

static PyObject *coordinator_get_closed(PyObject *obj, void *closure)
{
    (void)closure;
    return PyBool_FromLong(((pyferry_coordinator_t *)obj)->coord == NULL);
}

static PyMethodDef coordinator_methods[] = {
    {"close", coordinator_close, METH_NOARGS,
     "close(): disconnects; FerryBusy while an operation is bound to it."},
    {NULL, NULL, 0, NULL},
};

static PyObject *coordinator_get_closing(PyObject *obj, void *closure)
{
    (void)closure;
    return PyBool_FromLong(((pyferry_coordinator_t *)obj)->closing);
}

static PyGetSetDef coordinator_getset[] = {
    {"closed", coordinator_get_closed, NULL, "True once close() succeeded.", NULL},
    {"_closing", coordinator_get_closing, NULL, "A close() in flight with the GIL released.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot coordinator_slots[] = {
    {Py_tp_new, coordinator_new},
    {Py_tp_dealloc, coordinator_dealloc},
    {Py_tp_methods, coordinator_methods},
    {Py_tp_getset, coordinator_getset},
    {Py_tp_doc, "_Coordinator(target, timeout_ms=0, tls_ca_file=None, tls_cert_file=None, "
                "tls_key_file=None, tls_server_name=None, keepalive_ms=None, tls_refresh_s=None)."},
    {0, NULL},
};

static PyType_Spec coordinator_spec = {
    "ferry._ferry._Coordinator",
    sizeof(pyferry_coordinator_t),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    coordinator_slots,
};

PyTypeObject *pyferry_coordinator_type_create(PyObject *module)
{
    return (PyTypeObject *)PyType_FromModuleAndSpec(module, &coordinator_spec, NULL);
}
