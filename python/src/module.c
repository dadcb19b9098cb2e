/*
 * module.c: ferry._ferry's module object: the exception factory, the small
 * functions over libferry's tables (status names, device and size parsing,
 * operation status names), the address of a buffer export, and module init.
 *
 * Module state is process-global (the module supports one interpreter):
 * the five types, the exception factory and the process generation.
 */
#include "pyferry.h"

#include <string.h>
#include <unistd.h>

PyTypeObject *pyferry_desc_type;
PyTypeObject *pyferry_connector_type;
PyTypeObject *pyferry_op_type;
PyTypeObject *pyferry_coordinator_type;
PyTypeObject *pyferry_region_type;

/* The package's callable (code, message) -> exception instance. */
static PyObject *error_factory;

PyObject *pyferry_text(const char *message)
{
    if (message == NULL) {
        message = "";
    }
    return PyUnicode_DecodeUTF8(message, (Py_ssize_t)strlen(message), "replace");
}

PyObject *pyferry_raise(ferry_status_t code, const char *message)
{
    PyObject *exc, *text;

    if (message == NULL || message[0] == '\0') {
        message = ferry_status_string(code);
    }
    if (error_factory == NULL) {
        PyErr_Format(PyExc_RuntimeError, "%s: %s", ferry_status_name(code), message);
        return NULL;
    }
    text = pyferry_text(message);
    if (text == NULL) {
        return NULL;
    }
    exc = PyObject_CallFunction(error_factory, "iN", (int)code, text);
    if (exc == NULL) {
        return NULL;
    }
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return NULL;
}

PyObject *pyferry_raise_last(ferry_status_t code)
{
    return pyferry_raise(code, ferry_last_error_message());
}

/* Written only in a forked child's handler, before any other thread of the
 * child exists. */
static unsigned generation;

static void on_fork_child(void)
{
    generation++;
}

unsigned pyferry_generation(void)
{
    return generation;
}

int pyferry_check_process(unsigned made_in_generation, long made_in, const char *what)
{
    char msg[256];

    if (made_in_generation == generation) {
        return 0;
    }
    snprintf(msg, sizeof(msg),
             "%s: made in process %ld, before this process (%ld) was forked from it; its "
             "threads stayed there, so it cannot be used here (make a new one in this process)",
             what, made_in, (long)getpid());
    pyferry_raise(FERRY_ERR_MISUSE, msg);
    return -1;
}

static _Thread_local pyferry_wait_t *current_wait;

static bool wait_check(void *arg)
{
    pyferry_wait_t *w = arg;
    bool stop;

    PyEval_RestoreThread(w->ts);
    stop = PyErr_Occurred() != NULL || PyErr_CheckSignals() < 0;
    if (!stop && w->cancel != NULL) {
        PyObject *set = PyObject_CallMethod(w->cancel, "is_set", NULL);
        stop = set == NULL || PyObject_IsTrue(set) != 0; /* an error: stop, and it stands */
        Py_XDECREF(set);
    }
    w->ts = PyEval_SaveThread();
    return stop;
}

void pyferry_wait_begin(pyferry_wait_t *w)
{
    pyferry_wait_begin_cancellable(w, NULL);
}

void pyferry_wait_begin_cancellable(pyferry_wait_t *w, PyObject *cancel)
{
    w->cancel = cancel;
    w->outer = current_wait;
    current_wait = w;
    ferry_interrupt_check_set(wait_check, w);
    w->ts = PyEval_SaveThread();
}

void pyferry_wait_end(pyferry_wait_t *w)
{
    PyEval_RestoreThread(w->ts);
    current_wait = w->outer;
    ferry_interrupt_check_set(w->outer != NULL ? wait_check : NULL, w->outer);
}

void pyferry_free_self(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    freefunc free_fn = (freefunc)PyType_GetSlot(tp, Py_tp_free);

    free_fn(self);
    /* Instances of heap types hold a reference to their type. */
    Py_DECREF((PyObject *)tp);
}

static PyObject *set_error_factory(PyObject *module, PyObject *fn)
{
    (void)module;
    if (!PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "_set_error_factory: fn must be callable");
        return NULL;
    }
    Py_INCREF(fn);
    Py_XDECREF(error_factory);
    error_factory = fn;
    Py_RETURN_NONE;
}

/* [(code, "FERRY_ERR_NOT_FOUND", "not found"), ...]: every code libferry's
 * table holds (FERRY_FOREACH_STATUS). */
static PyObject *status_codes(PyObject *module, PyObject *unused)
{
    PyObject *list = PyList_New(0);

    (void)module;
    (void)unused;
    if (list == NULL) {
        return NULL;
    }
#define PYFERRY_STATUS_ITEM(name, value, msg)                                       \
    do {                                                                            \
        PyObject *item = Py_BuildValue("(iss)", (int)(value), "FERRY_" #name, msg); \
        if (item == NULL || PyList_Append(list, item) < 0) {                        \
            Py_XDECREF(item);                                                       \
            Py_DECREF(list);                                                        \
            return NULL;                                                            \
        }                                                                           \
        Py_DECREF(item);                                                            \
    } while (0);
    FERRY_FOREACH_STATUS(PYFERRY_STATUS_ITEM)
#undef PYFERRY_STATUS_ITEM
    return list;
}

/* An int argument that a C int holds (OverflowError otherwise), so that a
 * large value is not taken for a small one; -1 with the error set. */
static int int_arg(PyObject *arg, int *value_p)
{
    int overflow = 0;
    long value = PyLong_AsLongAndOverflow(arg, &overflow);

    if (value == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (overflow != 0 || value < INT_MIN || value > INT_MAX) {
        PyErr_SetString(PyExc_OverflowError, "the code does not fit a C int");
        return -1;
    }
    *value_p = (int)value;
    return 0;
}

static PyObject *status_name(PyObject *module, PyObject *arg)
{
    int code;

    (void)module;
    if (int_arg(arg, &code) < 0) {
        return NULL;
    }
    return PyUnicode_FromString(ferry_status_name((ferry_status_t)code));
}

static PyObject *op_status_name(PyObject *module, PyObject *arg)
{
    int status;

    (void)module;
    if (int_arg(arg, &status) < 0) {
        return NULL;
    }
    return PyUnicode_FromString(ferry_op_status_name((ferry_op_status_t)status));
}

/* The UTF-8 of a str argument with no NUL inside (InvalidArgument: the C
 * parser would stop there, and silently drop what follows); NULL with the
 * error set. */
static const char *text_arg(PyObject *arg, const char *what)
{
    Py_ssize_t len;
    const char *text = PyUnicode_AsUTF8AndSize(arg, &len);
    char msg[96];

    if (text != NULL && strlen(text) != (size_t)len) {
        snprintf(msg, sizeof(msg), "%s: a NUL character at offset %zu", what, strlen(text));
        pyferry_raise(FERRY_ERR_INVALID_ARGUMENT, msg);
        return NULL;
    }
    return text;
}

/* "cuda:1" -> (2, 1) through libferry's own parser. */
static PyObject *device_parse(PyObject *module, PyObject *arg)
{
    const char *text;
    ferry_device_t dev;
    ferry_status_t status;

    (void)module;
    text = text_arg(arg, "device");
    if (text == NULL) {
        return NULL;
    }
    status = ferry_device_parse(text, &dev);
    if (status != FERRY_OK) {
        return pyferry_raise_last(status);
    }
    return Py_BuildValue("(iI)", (int)dev.kind, (unsigned int)dev.id);
}

static PyObject *parse_size(PyObject *module, PyObject *arg)
{
    const char *text;
    uint64_t size;
    ferry_status_t status;

    (void)module;
    text = text_arg(arg, "size");
    if (text == NULL) {
        return NULL;
    }
    status = ferry_parse_size(text, &size);
    if (status != FERRY_OK) {
        return pyferry_raise_last(status);
    }
    return PyLong_FromUnsignedLongLong(size);
}

/* The address of a C-contiguous buffer export (a memoryview the caller
 * keeps: its export is what keeps the address valid). */
static PyObject *buffer_address(PyObject *module, PyObject *obj)
{
    Py_buffer view;
    PyObject *addr;

    (void)module;
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS) < 0) {
        return NULL;
    }
    addr = PyLong_FromVoidPtr(view.buf);
    PyBuffer_Release(&view);
    return addr;
}

static PyMethodDef module_methods[] = {
    {"_set_error_factory", set_error_factory, METH_O,
     "_set_error_factory(fn): fn(code, message) returns the exception to raise."},
    {"status_codes", status_codes, METH_NOARGS,
     "status_codes() -> [(code, name, text)]: every status code libferry defines."},
    {"status_name", status_name, METH_O, "status_name(code) -> 'FERRY_ERR_...'."},
    {"op_status_name", op_status_name, METH_O,
     "op_status_name(status) -> 'COMPLETE' etc. (libferry's names)."},
    {"device_parse", device_parse, METH_O,
     "device_parse(text) -> (kind, id): libferry's parser of 'cpu', 'cuda:N'."},
    {"parse_size", parse_size, METH_O, "parse_size('64MiB') -> 67108864 (libferry's parser)."},
    {"_buffer_address", buffer_address, METH_O,
     "_buffer_address(memoryview) -> int: the address of a C-contiguous export."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "ferry._ferry",
    "libferry's public API for Python (the package ferry builds on it).",
    -1,
    module_methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

static int add_type(PyObject *m, const char *name, PyTypeObject *tp)
{
    if (tp == NULL) {
        return -1;
    }
    Py_INCREF((PyObject *)tp);
    if (PyModule_AddObject(m, name, (PyObject *)tp) < 0) {
        Py_DECREF((PyObject *)tp);
        return -1;
    }
    return 0;
}

PyMODINIT_FUNC PyInit__ferry(void);

PyMODINIT_FUNC PyInit__ferry(void)
{
    static bool fork_handler;
    PyObject *m = PyModule_Create(&module_def);

    if (m == NULL) {
        return NULL;
    }
    if (!fork_handler) {
        if (pthread_atfork(NULL, NULL, on_fork_child) != 0) {
            PyErr_SetString(PyExc_RuntimeError, "ferry: pthread_atfork failed");
            goto err_module;
        }
        fork_handler = true;
    }
    pyferry_desc_type = pyferry_desc_type_create(m);
    if (add_type(m, "_Descriptor", pyferry_desc_type) < 0) {
        goto err_module;
    }
    pyferry_connector_type = pyferry_connector_type_create(m);
    if (add_type(m, "_Connector", pyferry_connector_type) < 0) {
        goto err_module;
    }
    pyferry_op_type = pyferry_op_type_create(m);
    if (add_type(m, "_Operation", pyferry_op_type) < 0) {
        goto err_module;
    }
    pyferry_coordinator_type = pyferry_coordinator_type_create(m);
    if (add_type(m, "_Coordinator", pyferry_coordinator_type) < 0) {
        goto err_module;
    }
    pyferry_region_type = pyferry_region_type_create(m);
    if (add_type(m, "_Region", pyferry_region_type) < 0) {
        goto err_module;
    }
    if (PyModule_AddIntConstant(m, "DEVICE_HOST", FERRY_DEVICE_HOST) < 0 ||
        PyModule_AddIntConstant(m, "DEVICE_CUDA", FERRY_DEVICE_CUDA) < 0 ||
        PyModule_AddIntConstant(m, "NOTIFICATION_KEY_LEN", FERRY_NOTIFICATION_KEY_LEN) < 0) {
        goto err_module;
    }
    return m;

err_module:
    Py_DECREF(m);
    return NULL;
}
