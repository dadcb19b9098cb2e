/*
 * descriptor.c: _Descriptor, one ferry_descriptor_t plus the object that
 * owns its memory. The package decides how an object becomes a region
 * (tensor, array, buffer, (ptr, size, device)); this type only holds the
 * result and keeps the owner alive, and turns lists of them into the
 * ferry_descriptor_t arrays the operation constructors take. A descriptor
 * made from a _Region (its owner) is checked and pinned around each
 * constructor (pyferry_descs_pin), so memory deregistered meanwhile is never
 * handed to libferry.
 *
 * A buffer's memory (_from_buffer: bytearray, numpy, memoryview) is held by
 * a buffer export kept here, out of Python's reach: no caller can release
 * it, so the exporter cannot resize or free that memory until the
 * descriptor is freed. `owner` is the object itself, never the export.
 *
 * Immutable after construction; no locking (the GIL guards the pins).
 */
#include "pyferry.h"

/* Converts an integer argument to [0, max]; else raises InvalidArgument
 * naming the argument and the value given (no silent wrap-around). */
static int desc_arg_u64(PyObject *arg, const char *what, unsigned long long max,
                        unsigned long long *out_p)
{
    PyObject *num = PyNumber_Index(arg), *repr;
    unsigned long long v = 0;
    bool ok;
    char msg[200];

    if (num == NULL) {
        return -1;
    }
    v = PyLong_AsUnsignedLongLong(num);
    ok = !(v == (unsigned long long)-1 && PyErr_Occurred()) && v <= max;
    if (ok) {
        Py_DECREF(num);
        *out_p = v;
        return 0;
    }
    if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_OverflowError)) {
        Py_DECREF(num); /* not an overflow or a negative value: pass it on */
        return -1;
    }
    PyErr_Clear();
    repr = PyObject_Repr(num);
    Py_DECREF(num);
    snprintf(msg, sizeof(msg), "descriptor: %s %.60s is out of range (0 to %llu)", what,
             repr != NULL ? PyUnicode_AsUTF8AndSize(repr, NULL) : "?", max);
    Py_XDECREF(repr);
    PyErr_Clear();
    pyferry_raise(FERRY_ERR_INVALID_ARGUMENT, msg);
    return -1;
}

static PyObject *desc_new(PyTypeObject *tp, PyObject *args, PyObject *kwargs)
{
    static char *kwlist[] = {"ptr", "size", "kind", "id", "owner", "readonly", NULL};
    unsigned long long ptr, size, id;
    int kind, readonly = 0;
    PyObject *owner = Py_None, *ptr_obj, *size_obj, *id_obj;
    pyferry_desc_t *self;
    char msg[160];

    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OOiO|Op:_Descriptor", kwlist, &ptr_obj,
                                     &size_obj, &kind, &id_obj, &owner, &readonly)) {
        return NULL;
    }
    /* Zero (a null pointer, an empty region) is libferry's to refuse, in
     * _validate; what cannot be represented is refused here (a device id
     * of 2**32 is not device 0). */
    if (desc_arg_u64(ptr_obj, "pointer", UINTPTR_MAX, &ptr) < 0 ||
        desc_arg_u64(size_obj, "size", PY_SSIZE_T_MAX, &size) < 0 ||
        desc_arg_u64(id_obj, "device id", UINT32_MAX, &id) < 0) {
        return NULL;
    }
    if (size > UINTPTR_MAX - ptr) {
        snprintf(msg, sizeof(msg),
                 "descriptor: pointer 0x%llx + size %llu wraps around the address space", ptr,
                 size);
        return pyferry_raise(FERRY_ERR_INVALID_ARGUMENT, msg);
    }
    if (kind != FERRY_DEVICE_HOST && kind != FERRY_DEVICE_CUDA) {
        return pyferry_raise(FERRY_ERR_INVALID_ARGUMENT, "descriptor: unknown device kind");
    }
    self = (pyferry_desc_t *)((allocfunc)PyType_GetSlot(tp, Py_tp_alloc))(tp, 0);
    if (self == NULL) {
        return NULL;
    }
    self->desc.ptr = (void *)(uintptr_t)ptr;
    self->desc.size = (size_t)size;
    self->desc.device.kind = (ferry_device_kind_t)kind;
    self->desc.device.id = kind == FERRY_DEVICE_HOST ? 0 : (uint32_t)id;
    Py_INCREF(owner);
    self->owner = owner;
    self->readonly = readonly != 0;
    return (PyObject *)self;
}

/* Whether a buffer's format (PEP 3118) holds Python object pointers ('O',
 * anywhere: a numpy array of dtype object, a struct with such a field, a
 * ctypes py_object array): a peer's bytes written there would be taken as
 * pointers by Python (memory corruption), and read from there, they hand
 * the peer heap addresses. Field names (":name:") are skipped. */
static bool format_holds_objects(const char *format)
{
    bool in_name = false;

    for (const char *p = format; p != NULL && *p != '\0'; p++) {
        if (*p == ':') {
            in_name = !in_name;
        } else if (!in_name && *p == 'O') {
            return true;
        }
    }
    return false;
}

/* _from_buffer(data): the whole of a C-contiguous buffer, on the host. The
 * export taken here lives as long as the descriptor (desc_dealloc). */
static PyObject *desc_from_buffer(PyObject *cls, PyObject *data)
{
    allocfunc alloc = (allocfunc)PyType_GetSlot((PyTypeObject *)cls, Py_tp_alloc);
    pyferry_desc_t *self = (pyferry_desc_t *)alloc((PyTypeObject *)cls, 0);

    if (self == NULL) {
        return NULL;
    }
    /* Writable when the exporter allows it: view.readonly says which. */
    if (PyObject_GetBuffer(data, &self->view, PyBUF_FULL_RO) < 0) {
        goto err_self;
    }
    if (!PyBuffer_IsContiguous(&self->view, 'C')) {
        pyferry_raise(FERRY_ERR_INVALID_ARGUMENT,
                      "descriptor: the buffer is not contiguous; Ferry refuses it rather than "
                      "copy it");
        goto err_self;
    }
    if (format_holds_objects(self->view.format)) {
        pyferry_raise(FERRY_ERR_INVALID_ARGUMENT,
                      "descriptor: the buffer holds Python objects (its format has 'O'): "
                      "Ferry moves raw bytes, which would be taken as object pointers");
        goto err_self;
    }
    /* Empty: a null pointer, which libferry's _validate refuses. */
    self->desc.ptr = self->view.len > 0 ? self->view.buf : NULL;
    self->desc.size = (size_t)self->view.len;
    self->desc.device.kind = FERRY_DEVICE_HOST;
    self->desc.device.id = 0;
    self->readonly = self->view.readonly != 0;
    Py_INCREF(data);
    self->owner = data;
    return (PyObject *)self;

err_self:
    Py_DECREF((PyObject *)self); /* releases the export, if taken */
    return NULL;
}

/* The collector's view of the C fields: the owner and the buffer export's
 * object (op.c's op_traverse says why; no tp_clear either). */
static int desc_traverse(PyObject *obj, visitproc visit, void *arg)
{
    pyferry_desc_t *self = (pyferry_desc_t *)obj;

    Py_VISIT(Py_TYPE(obj));
    Py_VISIT(self->owner);
    Py_VISIT(self->view.obj);
    return 0;
}

static void desc_dealloc(PyObject *obj)
{
    pyferry_desc_t *self = (pyferry_desc_t *)obj;

    PyObject_GC_UnTrack(obj);
    /* A no-op when no export was taken (view.obj NULL). */
    PyBuffer_Release(&self->view);
    Py_CLEAR(self->owner);
    pyferry_free_self(obj);
}

static PyObject *desc_get_ptr(PyObject *obj, void *closure)
{
    (void)closure;
    return PyLong_FromVoidPtr(((pyferry_desc_t *)obj)->desc.ptr);
}

static PyObject *desc_get_size(PyObject *obj, void *closure)
{
    (void)closure;
    return PyLong_FromSize_t(((pyferry_desc_t *)obj)->desc.size);
}

static PyObject *desc_get_device_kind(PyObject *obj, void *closure)
{
    (void)closure;
    return PyLong_FromLong(((pyferry_desc_t *)obj)->desc.device.kind);
}

static PyObject *desc_get_device_id(PyObject *obj, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLong(((pyferry_desc_t *)obj)->desc.device.id);
}

static PyObject *desc_get_owner(PyObject *obj, void *closure)
{
    PyObject *owner = ((pyferry_desc_t *)obj)->owner;

    (void)closure;
    Py_INCREF(owner);
    return owner;
}

static PyObject *desc_get_readonly(PyObject *obj, void *closure)
{
    (void)closure;
    return PyBool_FromLong(((pyferry_desc_t *)obj)->readonly);
}

/* libferry's own checks on this one region (null pointer, zero size,
 * device): the one validator, run at construction. */
static PyObject *desc_validate(PyObject *obj, PyObject *unused)
{
    ferry_status_t status = ferry_descriptors_validate(&((pyferry_desc_t *)obj)->desc, 1);

    (void)unused;
    if (status != FERRY_OK) {
        return pyferry_raise_last(status);
    }
    Py_RETURN_NONE;
}

static PyMethodDef desc_methods[] = {
    {"_from_buffer", desc_from_buffer, METH_O | METH_CLASS,
     "_from_buffer(data): the whole of a C-contiguous buffer, exported until the descriptor "
     "is freed."},
    {"_validate", desc_validate, METH_NOARGS, "_validate(): libferry's checks on the region."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef desc_getset[] = {
    {"ptr", desc_get_ptr, NULL, "The region's address.", NULL},
    {"size", desc_get_size, NULL, "The region's size in bytes.", NULL},
    {"_device_kind", desc_get_device_kind, NULL, "1: host, 2: CUDA (ferry_device_kind_t).", NULL},
    {"_device_id", desc_get_device_id, NULL, "The CUDA ordinal (0 for host).", NULL},
    {"owner", desc_get_owner, NULL, "The object kept alive for the region (or None).", NULL},
    {"readonly", desc_get_readonly, NULL, "True when the region must not be written.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot desc_slots[] = {
    {Py_tp_new, desc_new},
    {Py_tp_dealloc, desc_dealloc},
    {Py_tp_traverse, desc_traverse},
    {Py_tp_getset, desc_getset},
    {Py_tp_methods, desc_methods},
    {Py_tp_doc, "_Descriptor(ptr, size, kind, id, owner=None, readonly=False): one region."},
    {0, NULL},
};

static PyType_Spec desc_spec = {
    "ferry._ferry._Descriptor",
    sizeof(pyferry_desc_t),
    0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    desc_slots,
};

PyTypeObject *pyferry_desc_type_create(PyObject *module)
{
    return (PyTypeObject *)PyType_FromModuleAndSpec(module, &desc_spec, NULL);
}

Py_ssize_t pyferry_descs_count(PyObject *seq)
{
    Py_ssize_t n;

    if (PyObject_TypeCheck(seq, pyferry_desc_type)) {
        return 1;
    }
    if (!PyTuple_Check(seq) && !PyList_Check(seq)) {
        PyErr_SetString(PyExc_TypeError, "descriptors: expected a Descriptor or a list of them");
        return -1;
    }
    /* The list's or tuple's own storage: a subclass's __len__ and
     * __getitem__ are not called (no Python code between the constructors'
     * checks and their libferry call). */
    n = PyList_Check(seq) ? PyList_Size(seq) : PyTuple_Size(seq);
    if (n == 0) {
        pyferry_raise(FERRY_ERR_INVALID_ARGUMENT, "descriptors: the list is empty");
        return -1;
    }
    return n;
}

int pyferry_descs_fill(PyObject *seq, bool need_writable, ferry_descriptor_t *out, Py_ssize_t n,
                       PyObject **keep_p)
{
    PyObject *keep = PyTuple_New(n);

    if (keep == NULL) {
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = seq;
        pyferry_desc_t *d;
        char msg[160];

        /* Borrowed; NULL (IndexError) if a finalizer run by the collector
         * meanwhile shortened the list. */
        if (!PyObject_TypeCheck(seq, pyferry_desc_type)) {
            item = PyList_Check(seq) ? PyList_GetItem(seq, i) : PyTuple_GetItem(seq, i);
        }
        if (item == NULL) {
            goto err_keep;
        }
        Py_INCREF(item);
        if (!PyObject_TypeCheck(item, pyferry_desc_type)) {
            PyErr_Format(PyExc_TypeError, "descriptors[%zd]: expected a Descriptor, got %s", i,
                         "another type");
            Py_DECREF(item);
            goto err_keep;
        }
        d = (pyferry_desc_t *)item;
        if (need_writable && d->readonly) {
            snprintf(msg, sizeof(msg),
                     "descriptor %zd: the buffer is read-only, and this operation writes into "
                     "local memory",
                     i);
            Py_DECREF(item);
            pyferry_raise(FERRY_ERR_INVALID_ARGUMENT, msg);
            goto err_keep;
        }
        out[i] = d->desc;
        PyTuple_SetItem(keep, i, item); /* steals item */
    }
    *keep_p = keep;
    return 0;

err_keep:
    Py_DECREF(keep);
    return -1;
}

/* The region whose memory the descriptor names, when it was made from one
 * (its owner is a _Region), else NULL. */
static pyferry_region_t *desc_region(PyObject *item)
{
    PyObject *owner = ((pyferry_desc_t *)item)->owner;

    return PyObject_TypeCheck(owner, pyferry_region_type) ? (pyferry_region_t *)owner : NULL;
}

int pyferry_descs_pin(PyObject *keep, pyferry_connector_t *conn, bool to_register)
{
    Py_ssize_t n = PyTuple_Size(keep);
    char msg[320];

    for (Py_ssize_t i = 0; i < n; i++) {
        pyferry_region_t *r = desc_region(PyTuple_GetItem(keep, i));
        if (r != NULL && (r->region == NULL || r->closing)) {
            snprintf(msg, sizeof(msg),
                     "descriptor %zd: its region is closed (its memory is deregistered)", i);
            pyferry_raise(FERRY_ERR_MISUSE, msg);
            return -1;
        }
        if (r != NULL && (r->connector != conn || to_register)) {
            snprintf(msg, sizeof(msg),
                     "descriptor %zd: its memory is a Region of %s Connector; pass a view of "
                     "the region (memoryview(region)), which keeps it open while in use",
                     i, r->connector != conn ? "another" : "this");
            pyferry_raise(FERRY_ERR_INVALID_ARGUMENT, msg);
            return -1;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        pyferry_region_t *r = desc_region(PyTuple_GetItem(keep, i));
        if (r != NULL) {
            r->pins++;
        }
    }
    return 0;
}

void pyferry_descs_unpin(PyObject *keep)
{
    Py_ssize_t n = PyTuple_Size(keep);

    for (Py_ssize_t i = 0; i < n; i++) {
        pyferry_region_t *r = desc_region(PyTuple_GetItem(keep, i));
        if (r != NULL) {
            r->pins--;
        }
    }
}
