/*
 * region.c: _Region, memory registered with UCX once for any number of
 * operations (ferry_mem_alloc, ferry_mem_register, ferry_mem_deregister;
 * ferry/ferry.h says what a region's remote key covers). Made by the
 * connector (_allocate, _register in connector.c): the Python object first
 * (pyferry_region_make), so that the class's own code runs before any
 * libferry handle exists, then the handle (pyferry_region_attach).
 *
 * A region from Connector.allocate owns its memory (UCX allocated it, and
 * deregistering frees it); one from Connector.register_memory holds a
 * strong reference to what owns the caller's memory (a Descriptor, which
 * keeps its buffer alive and exported) until it is deregistered.
 *
 * Invariant: the memory is never freed or unregistered while anything can
 * still reach it.
 *   - Buffer exports (memoryview, numpy.frombuffer, torch.frombuffer) are
 *     counted: close() refuses with BufferError while one lives, as a
 *     bytearray refuses to resize, and each export holds a reference, so
 *     dealloc never runs under one.
 *   - A descriptor made from the region holds a reference to it; an
 *     operation on the descriptor of a closed region is refused (Misuse,
 *     pyferry_descs_pin), and while a constructor runs with the GIL
 *     released the region is pinned, so close() from another thread refuses
 *     (Busy) instead of deregistering under it.
 *   - libferry refuses to deregister while an operation holds the region
 *     (FERRY_ERR_BUSY, raised as Busy, nothing changed).
 *   - A region collected while libferry still holds it (an active operation
 *     closed mid-transfer, whose flush has not completed yet; an operation
 *     made from the bare address) is not freed: it becomes an orphan of its
 *     connector, deregistered later (pyferry_connector_reap), and keeps the
 *     connector alive until then.
 *
 * The region holds a strong reference to its connector and counts in its
 * live_regions until deregistered, so the connector is destroyed after it.
 *
 * Threads: everything runs with the GIL; ferry_mem_deregister runs with it
 * released and closing set, so no other thread exports, pins or closes
 * meanwhile.
 */
#include "pyferry.h"

#include <stdlib.h>
#include <unistd.h>

PyObject *pyferry_region_make(PyObject *cls, pyferry_connector_t *conn)
{
    PyObject *obj;
    pyferry_region_t *self;

    if (!PyType_Check(cls) || !PyType_IsSubtype((PyTypeObject *)cls, pyferry_region_type)) {
        PyErr_SetString(PyExc_TypeError, "region class must subclass _Region");
        return NULL;
    }
    obj = PyObject_CallNoArgs(cls);
    if (obj == NULL) {
        return NULL;
    }
    /* A __new__ may return any object, or a region in use: only a fresh
     * one gets the fields written below and by pyferry_region_attach. */
    self = (pyferry_region_t *)obj;
    if (!PyObject_TypeCheck(obj, pyferry_region_type) || self->connector != NULL) {
        PyErr_SetString(PyExc_TypeError, "region class: calling it must return a new _Region");
        Py_DECREF(obj);
        return NULL;
    }
    Py_INCREF((PyObject *)conn);
    self->connector = conn;
    return obj;
}

void pyferry_region_attach(PyObject *obj, ferry_region_t *handle, void *ptr, size_t size,
                           ferry_device_t device, bool allocated, PyObject *owner)
{
    pyferry_region_t *self = (pyferry_region_t *)obj;

    self->region = handle;
    Py_XINCREF(owner);
    self->owner = owner;
    self->ptr = ptr;
    self->size = size;
    self->device = device;
    self->allocated = allocated;
}

static PyObject *region_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    (void)args;
    (void)kwargs;
    return ((allocfunc)PyType_GetSlot(tp, Py_tp_alloc))(tp, 0);
}

/* Deregisters with the GIL released; on success the region is closed and
 * lets go of its owner. */
static ferry_status_t region_release(pyferry_region_t *self)
{
    ferry_region_t *region = self->region;
    ferry_status_t status;

    if (pyferry_connector_forked(self->connector)) {
        /* Abandoned in a forked child: the parent's threads may still use
         * the handle (leaked here), and this copy of its memory with it. */
        self->region = NULL;
        self->connector->live_regions--;
        Py_CLEAR(self->owner);
        return FERRY_OK;
    }
    self->closing = true;
    Py_BEGIN_ALLOW_THREADS status = ferry_mem_deregister(region);
    Py_END_ALLOW_THREADS self->closing = false;
    if (status != FERRY_OK) {
        return status;
    }
    self->region = NULL;
    self->connector->live_regions--;
    Py_CLEAR(self->owner);
    return FERRY_OK;
}

/* Hands a region libferry still holds to its connector (its memory, owner
 * and reference to the connector stay, owned by the orphan now); on no
 * memory, leaks all three rather than free them. */
static void region_orphan(pyferry_region_t *self)
{
    pyferry_orphan_t *o = malloc(sizeof(*o));

    if (o != NULL) {
        o->region = self->region;
        o->owner = self->owner;
        o->next = self->connector->orphans;
        self->connector->orphans = o;
    }
    self->owner = NULL;
    self->region = NULL;
    self->connector = NULL;
}

/* The collector's view of the C fields (op.c's op_traverse says why; no
 * tp_clear either). */
static int region_traverse(PyObject *obj, visitproc visit, void *arg)
{
    pyferry_region_t *self = (pyferry_region_t *)obj;

    Py_VISIT(Py_TYPE(obj));
    Py_VISIT((PyObject *)self->connector);
    Py_VISIT(self->owner);
    return 0;
}

static void region_dealloc(PyObject *obj)
{
    pyferry_region_t *self = (pyferry_region_t *)obj;
    PyObject *type, *value, *tb;

    PyObject_GC_UnTrack(obj);
    /* Dealloc may run while an exception is being raised. */
    PyErr_Fetch(&type, &value, &tb);
    if (self->region != NULL && region_release(self) != FERRY_OK) {
        region_orphan(self);
    }
    PyErr_Restore(type, value, tb);
    Py_CLEAR(self->owner);
    Py_CLEAR(self->connector);
    pyferry_free_self(obj);
}

static PyObject *region_close(PyObject *obj, PyObject *unused)
{
    pyferry_region_t *self = (pyferry_region_t *)obj;
    ferry_status_t status;
    char msg[200];

    (void)unused;
    if (self->region == NULL) {
        Py_RETURN_NONE;
    }
    if (self->closing) {
        return pyferry_raise(FERRY_ERR_BUSY, "region: being closed by another thread");
    }
    if (self->exports > 0) {
        PyErr_Format(PyExc_BufferError,
                     "region: %zd buffer export(s) (memoryview, numpy.frombuffer, "
                     "torch.frombuffer) still use its memory; release them first",
                     self->exports);
        return NULL;
    }
    if (self->pins > 0) {
        return pyferry_raise(FERRY_ERR_BUSY,
                             "region: another thread is creating an operation on it");
    }
    status = region_release(self);
    if (status != FERRY_OK) {
        snprintf(msg, sizeof(msg), "region close: %s", ferry_last_error_message());
        return pyferry_raise(status, msg);
    }
    Py_RETURN_NONE;
}

static int region_getbuffer(PyObject *obj, Py_buffer *view, int flags)
{
    pyferry_region_t *self = (pyferry_region_t *)obj;

    view->obj = NULL;
    if (self->region == NULL || self->closing) {
        PyErr_SetString(PyExc_BufferError, "region: closed");
        return -1;
    }
    if (self->device.kind != FERRY_DEVICE_HOST) {
        PyErr_SetString(PyExc_BufferError, "region: CUDA memory has no buffer interface");
        return -1;
    }
    if (pyferry_connector_forked(self->connector)) {
        /* The memory is the parent's registered memory, and UCX may have
         * allocated it shared: a view made here could write under the
         * parent's transfers. Views made before the fork are out of reach. */
        PyErr_Format(PyExc_BufferError,
                     "region: made in process %ld, before this process (%ld) was forked from "
                     "it; its memory stays the parent's, so no new view of it is made here",
                     self->connector->pid, (long)getpid());
        return -1;
    }
    if (PyBuffer_FillInfo(view, obj, self->ptr, (Py_ssize_t)self->size, 0, flags) < 0) {
        return -1;
    }
    self->exports++;
    return 0;
}

static void region_releasebuffer(PyObject *obj, Py_buffer *view)
{
    (void)view;
    ((pyferry_region_t *)obj)->exports--;
}

static PyObject *region_get_ptr(PyObject *obj, void *closure)
{
    pyferry_region_t *self = (pyferry_region_t *)obj;

    (void)closure;
    if (self->region == NULL) {
        return pyferry_raise(FERRY_ERR_MISUSE, "region: closed");
    }
    return PyLong_FromVoidPtr(self->ptr);
}

static PyObject *region_get_size(PyObject *obj, void *closure)
{
    (void)closure;
    return PyLong_FromSize_t(((pyferry_region_t *)obj)->size);
}

static PyObject *region_get_device_kind(PyObject *obj, void *closure)
{
    (void)closure;
    return PyLong_FromLong(((pyferry_region_t *)obj)->device.kind);
}

static PyObject *region_get_device_id(PyObject *obj, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLong(((pyferry_region_t *)obj)->device.id);
}

static PyObject *region_get_closed(PyObject *obj, void *closure)
{
    (void)closure;
    return PyBool_FromLong(((pyferry_region_t *)obj)->region == NULL);
}

static PyObject *region_get_allocated(PyObject *obj, void *closure)
{
    (void)closure;
    return PyBool_FromLong(((pyferry_region_t *)obj)->allocated);
}

static PyObject *region_get_connector(PyObject *obj, void *closure)
{
    PyObject *conn = (PyObject *)((pyferry_region_t *)obj)->connector;

    (void)closure;
    if (conn == NULL) {
        Py_RETURN_NONE;
    }
    Py_INCREF(conn);
    return conn;
}

static PyObject *region_get_exports(PyObject *obj, void *closure)
{
    (void)closure;
    return PyLong_FromSsize_t(((pyferry_region_t *)obj)->exports);
}

static PyMethodDef region_methods[] = {
    {"close", region_close, METH_NOARGS,
     "close(): deregisters the region (and frees allocated memory). BufferError while a buffer "
     "export lives, Busy while an operation uses it; idempotent."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef region_getset[] = {
    {"ptr", region_get_ptr, NULL, "The memory's address (Misuse once closed).", NULL},
    {"size", region_get_size, NULL, "The region's size in bytes.", NULL},
    {"_device_kind", region_get_device_kind, NULL, "1: host, 2: CUDA (ferry_device_kind_t).", NULL},
    {"_device_id", region_get_device_id, NULL, "The CUDA ordinal (0 for host).", NULL},
    {"closed", region_get_closed, NULL, "True once close() deregistered it.", NULL},
    {"allocated", region_get_allocated, NULL,
     "True when Ferry allocated the memory (Connector.allocate).", NULL},
    {"connector", region_get_connector, NULL, "The Connector it is registered with.", NULL},
    {"_exports", region_get_exports, NULL, "Buffer exports alive.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot region_slots[] = {
    {Py_tp_new, region_new},
    {Py_tp_dealloc, region_dealloc},
    {Py_tp_traverse, region_traverse},
    {Py_tp_methods, region_methods},
    {Py_tp_getset, region_getset},
    {Py_bf_getbuffer, region_getbuffer},
    {Py_bf_releasebuffer, region_releasebuffer},
    {Py_tp_doc, "_Region: memory registered once (made by a Connector)."},
    {0, NULL},
};

static PyType_Spec region_spec = {
    "ferry._ferry._Region",
    sizeof(pyferry_region_t),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    region_slots,
};

PyTypeObject *pyferry_region_type_create(PyObject *module)
{
    return (PyTypeObject *)PyType_FromModuleAndSpec(module, &region_spec, NULL);
}
