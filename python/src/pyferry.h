/*
 * pyferry.h: the C extension module ferry._ferry, the thin layer between
 * Python and libferry's public API (ferry/ferry.h, ferry/coordinator.h).
 *
 * Built against Python's stable ABI (Py_LIMITED_API 3.11), so one
 * _ferry.abi3.so loads in every CPython from 3.11 on. Every type is a heap
 * type made from a PyType_Spec; the package (ferry/__init__.py) subclasses
 * them to add the dynamo.connect surface (context managers, asyncio).
 *
 * Types and what they own:
 *   _Descriptor   one ferry_descriptor_t and a strong reference to the
 *                 object whose memory it names (a buffer, a tensor, a
 *                 region), so the memory outlives every operation on it; a
 *                 buffer's export is held privately (view), never exposed.
 *   _Connector    one ferry_connector_t (progress-thread mode), plus the
 *                 completion queue: a done callback, on libferry's progress
 *                 thread, appends the operation to a list under done_lock and
 *                 signals an eventfd; Python drains the list from the event
 *                 loop (loop.add_reader on the fd). The progress thread never
 *                 takes the GIL. Closing sets closing before the GIL is
 *                 released: other threads' close refuses (Busy) and every
 *                 other use refuses (Misuse) meanwhile.
 *   _Operation    one ferry_op_t, a strong reference to its connector (an
 *                 operation must be destroyed before its connector), to its
 *                 descriptors and, once bound, to its coordinator.
 *   _Region       one ferry_region_t (memory registered once: allocated by
 *                 ferry_mem_alloc, or the caller's by ferry_mem_register),
 *                 a strong reference to its connector and to what owns
 *                 registered memory; exports the memory (buffer protocol).
 *                 Regions collected while libferry still uses them move to
 *                 the connector's orphans (keeping the connector alive) and
 *                 are deregistered later.
 *   _Coordinator  one ferry_coordinator_t; closing as the connector's.
 *
 * GIL: held for every Python object access; released around every libferry
 * call that can block (create, begin, wait, cancel, destroy, publish,
 * coordinator calls) or takes the connector's lock (arming an operation's
 * done callback, stats: a region's close holds that lock across
 * ucp_mem_unmap). An operation that is in use with the GIL released
 * (in_flight) refuses to be closed from another thread, except during a
 * lone publish, whose thread releases it when the call returns (op.c); a
 * connector whose stats are being read (live_ops) refuses too.
 *
 * Collection: _Descriptor, _Connector, _Operation and _Region take part in
 * the cycle collector (tp_traverse reports the references their C fields
 * hold), so a cycle through one (a Connector subclass keeping its
 * operations, a buffer keeping its descriptor) is collected. None has a
 * tp_clear: a live handle keeps its fields until dealloc, and a cycle is
 * broken where it passes through a Python object's own dict.
 *
 * fork(): libferry's threads (the progress thread, the coordinator
 * client's) stay in the parent, and a child that used, closed or collected
 * what the parent made would wait on them for ever, or take the parent's
 * wake-ups from the shared eventfd. Connectors and coordinators record the
 * process generation they were made in (pyferry_generation, bumped in every
 * forked child); in another one every use refuses (Misuse, saying so), and
 * close or collection abandons the handle, with its operations and regions,
 * without a libferry call (the child's copy of their memory is leaked).
 *
 * Errors: libferry's status code and message become an exception through
 * one Python callable the package installs (_set_error_factory), so the
 * exception hierarchy lives in exactly one place (ferry/__init__.py).
 */
#ifndef PYFERRY_H
#define PYFERRY_H

#define PY_SSIZE_T_CLEAN
#define Py_LIMITED_API 0x030B0000
#include <Python.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdbool.h>

#include <ferry/coordinator.h>

/* The four kinds of operation, as the package names them. */
typedef enum {
    PYFERRY_WRITABLE = 0,
    PYFERRY_READABLE = 1,
    PYFERRY_WRITE = 2,
    PYFERRY_READ = 3,
} pyferry_kind_t;

typedef struct {
    PyObject_HEAD ferry_descriptor_t desc;
    PyObject *owner; /* strong: what keeps desc.ptr allocated; may be None */
    /* The buffer export that holds a buffer's memory (_from_buffer), from
     * construction to dealloc; view.obj is NULL when there is none. */
    Py_buffer view;
    bool readonly;
} pyferry_desc_t;

typedef struct pyferry_op pyferry_op_t;

/* The calls that use an operation's handle with the GIL released. */
typedef enum {
    PYFERRY_OP_CALL_WAIT = 0,
    PYFERRY_OP_CALL_CANCEL = 1,
    PYFERRY_OP_CALL_ARM = 2,
    PYFERRY_OP_CALL_PUBLISH = 3,
    PYFERRY_OP_CALL_TOKEN = 4,
    PYFERRY_OP_CALLS = 5,
} pyferry_op_call_t;

/* A region whose Python object went away while libferry still used it
 * (FERRY_ERR_BUSY: an operation cancelled mid-transfer whose flush has not
 * completed, or one made from the bare address). Its memory stays valid;
 * the connector deregisters it later (pyferry_connector_reap). */
typedef struct pyferry_orphan {
    ferry_region_t *region;
    PyObject *owner; /* strong: registered memory's owner; NULL when allocated */
    /* The orphan also owns the region's reference to its connector (the
     * connector whose list holds it): the connector cannot be collected, and
     * its libferry connector leak as Busy, while an orphan remains. */
    struct pyferry_orphan *next;
} pyferry_orphan_t;

/* The memory of an operation closed before it completed, kept for libferry
 * (ferry_op_destroy_nowait) until it is released: the connector's parked
 * list owns the node. */
typedef struct pyferry_parked {
    PyObject *descs;             /* strong: tuple of the _Descriptors kept (GIL) */
    atomic_bool released;        /* set by libferry (pyferry_parked_released), any thread */
    bool waited_on;              /* GIL: a close() reads released with the GIL released: kept */
    struct pyferry_parked *next; /* GIL */
} pyferry_parked_t;

/* The process generation: 0 where the module was loaded, one more in each
 * forked child (pthread_atfork). */
unsigned pyferry_generation(void);

/* 0 when `generation` is this process's; else -1 with Misuse raised, naming
 * `what` and the process it was made in. */
int pyferry_check_process(unsigned generation, long made_in, const char *what);

/* A wait on the coordinator (a publish, a by-ID begin, a close), made with
 * the GIL released between pyferry_wait_begin and pyferry_wait_end, that a
 * signal ends: libferry calls this thread's interrupt check
 * (ferry_interrupt_check_set) every 100 ms or so, which takes the GIL back
 * to run the signal handlers (in the main thread; Ctrl-C's
 * KeyboardInterrupt) and ends the wait when one raised. A handler's exception is
 * set when pyferry_wait_end returns: it stands over the call's status
 * (CANCELLED, "interrupted"). Nested waits (a handler's own call) restore
 * the outer one's check. */
typedef struct pyferry_wait {
    PyThreadState *ts;
    struct pyferry_wait *outer;
    /* Borrowed, or NULL: an object whose is_set() (a threading.Event)
     * also ends the wait when true, read at each check: an asyncio task's
     * cancellation reaches its wait on an executor's thread so, where no
     * signal handler runs (pyferry_wait_begin_cancellable). */
    PyObject *cancel;
} pyferry_wait_t;

void pyferry_wait_begin(pyferry_wait_t *w);
void pyferry_wait_begin_cancellable(pyferry_wait_t *w, PyObject *cancel);
void pyferry_wait_end(pyferry_wait_t *w);

typedef struct {
    PyObject_HEAD ferry_connector_t *conn; /* NULL once closed (or abandoned after fork) */
    unsigned generation;                   /* pyferry_generation() at creation */
    long pid;                              /* the process it was made in, for messages */
    bool closing;                          /* close() running with the GIL released (GIL) */
    int efd;                               /* eventfd: readable when done_head is not empty */
    pthread_mutex_t done_lock;
    pyferry_op_t *done_head; /* guarded by done_lock */
    pyferry_op_t **done_tail;
    Py_ssize_t live_ops;       /* operations not closed yet (GIL) */
    Py_ssize_t live_regions;   /* regions registered, orphans and ones being made included (GIL) */
    pyferry_orphan_t *orphans; /* GIL; each holds a reference to this connector */
    /* The _Descriptors of operations closed before they completed, one
     * node per operation (GIL). They are destroyed without waiting for data
     * in flight (ferry_op_destroy_nowait: an admitted writer's puts, our
     * own gets from a peer that stopped answering), so their memory is held
     * until libferry releases it (reaping frees those nodes); what it never
     * released is leaked when the connector is destroyed, not freed.
     * Descriptors whose memory lies inside a region
     * (ferry_op_in_region, by address: made from a _Region, or over a
     * memoryview, numpy array or tensor of it) are not parked: libferry
     * holds the region while data may move (deregistering it is refused
     * meanwhile, so its memory stays), and parking them would keep their
     * exports on the region, which could then never close, nor the
     * connector. */
    pyferry_parked_t *parked;
} pyferry_connector_t;

typedef struct {
    PyObject_HEAD ferry_region_t *region; /* NULL before creation and once closed */
    pyferry_connector_t *connector;       /* strong once made */
    PyObject *owner; /* strong while registered: what owns registered memory; NULL when allocated */
    void *ptr;
    size_t size;
    ferry_device_t device;
    bool allocated;     /* made by ferry_mem_alloc: deregistering frees the memory */
    bool closing;       /* ferry_mem_deregister running with the GIL released (GIL) */
    Py_ssize_t exports; /* buffer exports alive: memoryview, numpy, torch.frombuffer (GIL) */
    Py_ssize_t pins;    /* operation constructors using it with the GIL released (GIL) */
} pyferry_region_t;

typedef struct {
    PyObject_HEAD ferry_coordinator_t *coord; /* NULL once closed (or abandoned after fork) */
    unsigned generation;                      /* pyferry_generation() at creation */
    long pid;                                 /* the process it was made in */
    bool closing;                             /* close() running, GIL released (GIL) */
    Py_ssize_t live_ops;                      /* operations bound to it, not closed (GIL) */
} pyferry_coordinator_t;

struct pyferry_op {
    PyObject_HEAD ferry_op_t *op;       /* NULL before creation and once closed */
    pyferry_connector_t *connector;     /* strong; set by pyferry_op_make */
    PyObject *descs;                    /* strong: tuple of _Descriptor */
    pyferry_coordinator_t *coordinator; /* strong once published or claimed */
    int kind;                           /* pyferry_kind_t */
    /* Calls in flight with the GIL released, by pyferry_op_call_t (GIL). */
    int in_flight[PYFERRY_OP_CALLS];
    /* close() came during a publish: op is NULL already, and the thread of
     * that publish releases the handle when its call returns (GIL). */
    bool close_deferred;
    /* The thread whose close (op_release) runs with the GIL released, op
     * NULL already (PyThread_get_thread_ident; 0: none): a close() from
     * another thread meanwhile waits for it to end (GIL). */
    unsigned long releaser;
    /* Done callback set (GIL). It holds no reference to self: op_release
     * sets releasing before it lets go of the GIL, so the callback never
     * queues an operation being closed or freed. */
    bool armed;
    bool releasing;          /* closed or being freed: on_done queues it no more (done_lock) */
    bool queued;             /* on the connector's done list (done_lock) */
    pyferry_op_t *done_next; /* done_lock */
    /* The outcome kept at close, for status and error afterwards. */
    ferry_op_status_t closed_status;
    ferry_status_t closed_code;
    PyObject *closed_message; /* str or NULL */
};

/* The types, made at module init (module.c). */
extern PyTypeObject *pyferry_desc_type;
extern PyTypeObject *pyferry_connector_type;
extern PyTypeObject *pyferry_op_type;
extern PyTypeObject *pyferry_coordinator_type;
extern PyTypeObject *pyferry_region_type;

/* Sets the Python exception for a libferry status and message (the
 * package's factory; a RuntimeError before one is installed). Returns NULL
 * for `return pyferry_raise(...)`. */
PyObject *pyferry_raise(ferry_status_t code, const char *message);
/* A message from libferry or a peer as str (new reference; NULL with an
 * exception set). libferry cuts its messages to a fixed size, which may
 * fall inside a UTF-8 character, and a peer's text is its own: what does
 * not decode becomes U+FFFD, never a UnicodeDecodeError in place of the
 * error the message explains. */
PyObject *pyferry_text(const char *message);
/* pyferry_raise with this thread's ferry_last_error_message(). */
PyObject *pyferry_raise_last(ferry_status_t code);

/* Fills out[0..n) from a sequence of _Descriptor; *keep_p gets a tuple of
 * them (new reference). need_writable: every region must be writable (the
 * operation writes into local memory). out must hold n entries; n comes
 * from pyferry_descs_count. Returns -1 with an exception set. */
Py_ssize_t pyferry_descs_count(PyObject *seq);
int pyferry_descs_fill(PyObject *seq, bool need_writable, ferry_descriptor_t *out, Py_ssize_t n,
                       PyObject **keep_p);

/* Around a libferry call with the GIL released that takes the descriptors
 * of keep (a tuple of _Descriptor) for connector `conn`: refuses (Misuse,
 * naming the descriptor) when one's region is closed, and (InvalidArgument)
 * when it is another connector's, or any region's where `conn` is to
 * register the memory as a region of its own: libferry holds a region only
 * for its own connector's operations, so the other's close() would free the
 * memory under them. Else pins every region so that close() from another
 * thread refuses meanwhile. Returns -1 with an exception set, and then pins
 * nothing. */
int pyferry_descs_pin(PyObject *keep, pyferry_connector_t *conn, bool to_register);
void pyferry_descs_unpin(PyObject *keep);

/* Spec-building entry points, one per file. */
PyTypeObject *pyferry_desc_type_create(PyObject *module);
PyTypeObject *pyferry_connector_type_create(PyObject *module);
PyTypeObject *pyferry_op_type_create(PyObject *module);
PyTypeObject *pyferry_coordinator_type_create(PyObject *module);
PyTypeObject *pyferry_region_type_create(PyObject *module);

/* op.c: a new, empty operation of class cls for conn (increfed), made
 * before its libferry handle: the class's Python code (__new__, __init__)
 * runs, and may fail, while there is nothing to undo. TypeError unless cls
 * subclasses _Operation and gives a fresh one. */
PyObject *pyferry_op_make(PyObject *cls, pyferry_connector_t *conn);
/* op.c: hands handle to op (from pyferry_op_make) with what it uses:
 * increfs descs and coord (may be NULL), counts in their live_ops. */
void pyferry_op_attach(PyObject *op, ferry_op_t *handle, int kind, PyObject *descs,
                       pyferry_coordinator_t *coord);

/* region.c: a new, empty region of class cls for conn (increfed), made
 * before its libferry handle, as pyferry_op_make. */
PyObject *pyferry_region_make(PyObject *cls, pyferry_connector_t *conn);
/* region.c: hands handle to region (from pyferry_region_make); the caller
 * counted it in conn->live_regions before making it. owner (may be NULL)
 * is increfed. */
void pyferry_region_attach(PyObject *region, ferry_region_t *handle, void *ptr, size_t size,
                           ferry_device_t device, bool allocated, PyObject *owner);

/* coordinator.c: Misuse unless the coordinator is open and not being
 * closed by another thread. */
int pyferry_coordinator_check_open(pyferry_coordinator_t *coord);

/* connector.c: lets go of the parked memory libferry has released, and
 * deregisters the connector's orphans that libferry lets go now (dropping
 * each one's reference to conn); the others stay. The caller must hold its
 * own reference to conn. */
void pyferry_connector_reap(pyferry_connector_t *conn);

/* Whether conn was made before this process was forked from its maker. */
bool pyferry_connector_forked(const pyferry_connector_t *conn);

/* connector.c: keeps the descriptors of keep (a tuple of _Descriptor, in
 * the order given to libferry) of op, closed before it completed and not
 * destroyed yet, until libferry releases them (pyferry_parked_released) or
 * conn is destroyed; those libferry holds through a region
 * (ferry_op_in_region) and those that own nothing are not kept. Returns
 * the node to hand to ferry_op_destroy_nowait, or NULL when nothing is
 * kept. With waited_on, a node comes back even when nothing is kept, and
 * is not freed until the caller clears its waited_on (with the GIL): the
 * caller waits for its release. Cannot fail: on no memory they are leaked
 * rather than freed (and NULL returned). */
pyferry_parked_t *pyferry_connector_park(pyferry_connector_t *conn, PyObject *keep,
                                         const ferry_op_t *op, bool waited_on);

/* libferry's released callback for a parked node (ferry_op_destroy_nowait):
 * marks it, for the next reap. Any thread, no GIL, no Python API. */
void pyferry_parked_released(void *node);

/* Allocation and release common to the heap types. */
void pyferry_free_self(PyObject *self);

#endif /* PYFERRY_H */
