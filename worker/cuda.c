/*
 * cuda.c: the CUDA driver, loaded at run time, and what libferry asks of it:
 * checking descriptors (driver pointer attributes), and the CUDA copy engine
 * of the staged path (copy_engine.h).
 *
 * Loading: dlopen("libcuda.so.1") once per process (pthread_once), then
 * dlsym for each function under the name cuda.h maps it to (cuMemAlloc is
 * cuMemAlloc_v2 in the ABI: SYM() stringizes after macro expansion, so the
 * symbol is exactly the one this header's prototypes describe), then cuInit
 * and a device count. Any failure leaves CUDA unavailable for the life of
 * the process with the reason kept (ferry__cuda_why); the library never
 * unloads the driver.
 *
 * Contexts: libferry uses each device's primary context (the one the CUDA
 * runtime and PyTorch use), retained on first use and never released. A
 * driver call that needs one pushes it on the calling thread and pops it
 * after (ctx_push, ctx_pop), so the caller's thread is left with the
 * context it had: an application thread that set another device (or its
 * own context) keeps it, and a process that never hands Ferry CUDA memory
 * never gets a context from it. Only the progress thread, Ferry's own,
 * keeps one current (ferry__cuda_bind_thread), and only for the direct
 * path, whose transports need it there.
 *
 * The engine: one stream, and per queued copy one event (recorded after
 * the copy) in a ring; a ticket is done when its event, and so every
 * earlier one, has completed. A failed query or copy makes the engine
 * failed for good (copy_engine.h). The stream is a blocking one (not
 * CU_STREAM_NON_BLOCKING): its copies wait for work queued before them on
 * the legacy default stream, where PyTorch and the runtime launch unless
 * told otherwise, so a tensor a kernel is still producing there is copied
 * once it is done. Work on other streams is the caller's to finish first
 * (ferry.h).
 *
 * Threads: the load is once; the context table is guarded by ctx_lock; an
 * engine is used under its connector's lock.
 */
#include "worker/cuda.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "worker/errors.h"

const char *ferry__cuda_test_driver;

#ifndef FERRY_HAVE_CUDA

/* Built without the toolkit's header (or with -DFERRY_CUDA=OFF). */
static const char no_cuda[] =
    "libferry was built without CUDA support (-DFERRY_CUDA=OFF, or no cuda.h at build time)";

ferry_status_t ferry__cuda_load(void)
{
    return ferry__fail(FERRY_ERR_UNIMPLEMENTED, "%s", no_cuda);
}

const char *ferry__cuda_why(void)
{
    return no_cuda;
}

ferry_status_t ferry__cuda_check_descriptors(const ferry_descriptor_t *descs, size_t n)
{
    (void)descs;
    (void)n;
    return ferry__cuda_load();
}

ferry_status_t ferry__cuda_engine_create(uint32_t device, ferry__copy_engine_t **engine_p)
{
    (void)device;
    (void)engine_p;
    return ferry__cuda_load();
}

int ferry__cuda_device_count(void)
{
    return 0;
}

ferry_status_t ferry__cuda_bind_thread(uint32_t device)
{
    (void)device;
    return ferry__cuda_load();
}

ferry_status_t ferry__cuda_mem_alloc(uint32_t device, size_t size, void **ptr_p)
{
    (void)device;
    (void)size;
    (void)ptr_p;
    return ferry__cuda_load();
}

ferry_status_t ferry__cuda_mem_zero(uint32_t device, void *ptr, size_t size)
{
    (void)device;
    (void)ptr;
    (void)size;
    return ferry__cuda_load();
}

void ferry__cuda_mem_free(uint32_t device, void *ptr)
{
    (void)device;
    (void)ptr;
}

ferry_status_t ferry__cuda_push(uint32_t device)
{
    (void)device;
    return ferry__cuda_load();
}

void ferry__cuda_pop(void)
{
}

ferry_status_t ferry__cuda_memcpy(uint32_t device, void *dst, const void *src, size_t size)
{
    (void)device;
    (void)dst;
    (void)src;
    (void)size;
    return ferry__cuda_load();
}

#else /* FERRY_HAVE_CUDA */

#include <cuda.h>
#include <dlfcn.h>
#include <inttypes.h>

#define SYM_STR(name) #name
#define SYM(name)     SYM_STR(name)

#define MAX_DEVICES        64
#define EVENT_RING         128
#define PINNED_CACHE       4
/* What the cache of pinned buffers may hold in all (one default slot set
 * is 16 MiB; a peer's metadata may ask for up to 256 MiB). */
#define PINNED_CACHE_BYTES ((size_t)64 << 20)

/* The driver functions libferry calls, each resolved by its ABI name. */
#define FOREACH_CU_FN(_)        \
    _(cuInit)                   \
    _(cuGetErrorName)           \
    _(cuDeviceGetCount)         \
    _(cuDeviceGet)              \
    _(cuDevicePrimaryCtxRetain) \
    _(cuCtxSetCurrent)          \
    _(cuCtxPushCurrent)         \
    _(cuCtxPopCurrent)          \
    _(cuPointerGetAttributes)   \
    _(cuStreamCreate)           \
    _(cuStreamDestroy)          \
    _(cuStreamSynchronize)      \
    _(cuEventCreate)            \
    _(cuEventRecord)            \
    _(cuEventQuery)             \
    _(cuEventDestroy)           \
    _(cuMemcpyAsync)            \
    _(cuMemcpy)                 \
    _(cuMemHostAlloc)           \
    _(cuMemFreeHost)            \
    _(cuMemHostRegister)        \
    _(cuMemHostUnregister)      \
    _(cuMemAlloc)               \
    _(cuMemsetD8)               \
    _(cuMemFree)

static struct {
#define CU_FN_FIELD(name) __typeof__(&name) name;
    FOREACH_CU_FN(CU_FN_FIELD)
#undef CU_FN_FIELD
} cu;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static ferry_status_t load_status = FERRY_ERR_UNIMPLEMENTED;
static char load_why[FERRY__MSG_LEN] = "the CUDA driver was not loaded yet";
static int device_count;

static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static CUcontext contexts[MAX_DEVICES];

static const char *cu_name(CUresult r)
{
    const char *name = NULL;

    if (cu.cuGetErrorName == NULL || cu.cuGetErrorName(r, &name) != CUDA_SUCCESS || name == NULL) {
        return "CUDA_ERROR_UNKNOWN";
    }
    return name;
}

static void load(void)
{
    const char *path = ferry__cuda_test_driver != NULL ? ferry__cuda_test_driver : "libcuda.so.1";
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    CUresult r;

    if (h == NULL) {
        snprintf(load_why, sizeof(load_why), "no CUDA driver: dlopen %s: %s", path, dlerror());
        return;
    }
#define CU_FN_LOAD(name)                                                                 \
    *(void **)&cu.name = dlsym(h, SYM(name));                                            \
    if (cu.name == NULL) {                                                               \
        snprintf(load_why, sizeof(load_why), "CUDA driver %s lacks %s (too old?)", path, \
                 SYM(name));                                                             \
        memset(&cu, 0, sizeof(cu));                                                      \
        return;                                                                          \
    }
    FOREACH_CU_FN(CU_FN_LOAD)
#undef CU_FN_LOAD
    r = cu.cuInit(0);
    if (r != CUDA_SUCCESS) {
        snprintf(load_why, sizeof(load_why), "CUDA driver present but cuInit failed: %s",
                 cu_name(r));
        return;
    }
    r = cu.cuDeviceGetCount(&device_count);
    if (r != CUDA_SUCCESS || device_count <= 0) {
        snprintf(load_why, sizeof(load_why), "CUDA driver present but no device (%s)",
                 r != CUDA_SUCCESS ? cu_name(r) : "count 0");
        return;
    }
    load_why[0] = '\0';
    load_status = FERRY_OK;
}

ferry_status_t ferry__cuda_load(void)
{
    pthread_once(&load_once, load);
    if (load_status != FERRY_OK) {
        return ferry__fail(load_status, "%s", load_why);
    }
    return FERRY_OK;
}

const char *ferry__cuda_why(void)
{
    pthread_once(&load_once, load);
    return load_why;
}

int ferry__cuda_device_count(void)
{
    return ferry__cuda_load() == FERRY_OK ? device_count : 0;
}

static ferry_status_t cu_fail(const char *what, CUresult r)
{
    ferry_error("cuda: %s: %s", what, cu_name(r));
    return ferry__fail(FERRY_ERR_IO, "cuda: %s: %s", what, cu_name(r));
}

/* device's primary context, retained on first use. */
static ferry_status_t device_context(uint32_t device, CUcontext *ctx_p)
{
    CUresult r = CUDA_SUCCESS;

    if (ferry__cuda_load() != FERRY_OK) {
        return FERRY_ERR_UNIMPLEMENTED;
    }
    if (device >= (uint32_t)device_count || device >= MAX_DEVICES) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "cuda:%" PRIu32 ": this host has %d devices",
                           device, device_count);
    }
    pthread_mutex_lock(&ctx_lock);
    if (contexts[device] == NULL) {
        CUdevice dev;
        r = cu.cuDeviceGet(&dev, (int)device);
        if (r == CUDA_SUCCESS) {
            r = cu.cuDevicePrimaryCtxRetain(&contexts[device], dev);
        }
    }
    *ctx_p = contexts[device];
    pthread_mutex_unlock(&ctx_lock);
    return r == CUDA_SUCCESS ? FERRY_OK : cu_fail("retaining the primary context", r);
}

/* Makes device's primary context current on this thread until ctx_pop,
 * which puts back the one the thread had (contexts module comment). */
static ferry_status_t make_current(uint32_t device, bool push)
{
    CUcontext ctx = NULL;
    ferry_status_t status = device_context(device, &ctx);
    CUresult r;

    if (status != FERRY_OK) {
        return status;
    }
    r = push ? cu.cuCtxPushCurrent(ctx) : cu.cuCtxSetCurrent(ctx);
    return r == CUDA_SUCCESS ? FERRY_OK : cu_fail(push ? "cuCtxPushCurrent" : "cuCtxSetCurrent", r);
}

static ferry_status_t ctx_push(uint32_t device)
{
    return make_current(device, true);
}

static void ctx_pop(void)
{
    CUcontext ctx;
    CUresult r = cu.cuCtxPopCurrent(&ctx);

    if (r != CUDA_SUCCESS) {
        ferry_error("cuda: cuCtxPopCurrent: %s", cu_name(r));
    }
}

ferry_status_t ferry__cuda_push(uint32_t device)
{
    return ctx_push(device);
}

void ferry__cuda_pop(void)
{
    ctx_pop();
}

/* Whether the driver says p is backed by memory (MAPPED): 1 or 0, or -1
 * where it cannot say (a driver that predates the attribute). In a
 * virtual-memory reservation (cuMemAddressReserve: PyTorch's expandable
 * segments, cudaMallocAsync's pools) the allocation's range is the whole
 * reservation, of which only parts may be mapped: a copy that touches the
 * rest faults on the device, and such a fault poisons the process's context
 * (the application's too). */
static int mapped_at(CUdeviceptr p)
{
    CUpointer_attribute attr = CU_POINTER_ATTRIBUTE_MAPPED;
    int mapped = 0;
    void *data = &mapped;

    return cu.cuPointerGetAttributes(1, &attr, &data, p) == CUDA_SUCCESS ? mapped != 0 : -1;
}

static ferry_status_t check_one(size_t i, const ferry_descriptor_t *d, uint32_t device)
{
    CUpointer_attribute attrs[] = {
        CU_POINTER_ATTRIBUTE_MEMORY_TYPE, CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL,
        CU_POINTER_ATTRIBUTE_RANGE_START_ADDR, CU_POINTER_ATTRIBUTE_RANGE_SIZE};
    unsigned int type = 0;
    int ordinal = -1;
    CUdeviceptr start = 0;
    size_t range = 0;
    void *data[] = {&type, &ordinal, &start, &range};
    CUdeviceptr p = (CUdeviceptr)(uintptr_t)d->ptr;
    CUresult r;

    if (d->device.id != device) {
        /* One device per list: the copy engine, the slots and the
         * progress thread's context are the first descriptor's. */
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "descriptor %zu: cuda:%" PRIu32 " in a list of cuda:%" PRIu32
                           " memory: one operation's descriptors are all on one device",
                           i, d->device.id, device);
    }
    r = cu.cuPointerGetAttributes(4, attrs, data, p);
    if (r != CUDA_SUCCESS) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "descriptor %zu: cuda:%" PRIu32 " claimed, but the driver cannot "
                           "describe the pointer: %s",
                           i, d->device.id, cu_name(r));
    }
    if (type != CU_MEMORYTYPE_DEVICE) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "descriptor %zu: cuda:%" PRIu32 " claimed, but %p is %s memory, not "
                           "device memory",
                           i, d->device.id, d->ptr,
                           type == CU_MEMORYTYPE_HOST ? "pinned host" : "host (or unknown)");
    }
    if (ordinal < 0 || (uint32_t)ordinal != d->device.id) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "descriptor %zu: cuda:%" PRIu32 " claimed, but %p is memory of cuda:%d",
                           i, d->device.id, d->ptr, ordinal);
    }
    if (range != 0 && (p < start || p - start > range || d->size > range - (p - start))) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "descriptor %zu: %zu bytes at %p run past the end of its allocation "
                           "(%zu bytes from %p)",
                           i, d->size, d->ptr, range, (void *)(uintptr_t)start);
    }
    /* Both ends: a descriptor longer than its tensor reaches past what is
     * mapped. A hole between mapped pieces is not looked for. */
    if (d->size > 0 && (mapped_at(p) == 0 || mapped_at(p + d->size - 1) == 0)) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "descriptor %zu: %zu bytes at %p reach device address space that is "
                           "reserved but not mapped to memory (a virtual-memory allocation's "
                           "range, as PyTorch's expandable segments use): describe only memory "
                           "that was allocated",
                           i, d->size, d->ptr);
    }
    return FERRY_OK;
}

/* A host descriptor must not be device memory: UCX's host transports would
 * read or write it with the CPU, and the process would die of SIGSEGV.
 * Managed memory (which the CPU may touch) and memory the driver does not
 * know pass. */
static ferry_status_t check_host(size_t i, const ferry_descriptor_t *d)
{
    CUpointer_attribute attrs[] = {CU_POINTER_ATTRIBUTE_MEMORY_TYPE,
                                   CU_POINTER_ATTRIBUTE_IS_MANAGED,
                                   CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL};
    unsigned int type = 0, managed = 0;
    int ordinal = -1;
    void *data[] = {&type, &managed, &ordinal};
    CUresult r = cu.cuPointerGetAttributes(3, attrs, data, (CUdeviceptr)(uintptr_t)d->ptr);

    if (r == CUDA_SUCCESS && type == CU_MEMORYTYPE_DEVICE && !managed) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "descriptor %zu: cpu claimed, but %p is device memory of cuda:%d: "
                           "describe it as cuda:%d",
                           i, d->ptr, ordinal, ordinal);
    }
    return FERRY_OK;
}

ferry_status_t ferry__cuda_bind_thread(uint32_t device)
{
    return make_current(device, false); /* left current: Ferry's own thread */
}

ferry_status_t ferry__cuda_check_descriptors(const ferry_descriptor_t *descs, size_t n)
{
    ferry_status_t status = ferry__cuda_load();
    bool cuda = n > 0 && descs[0].device.kind == FERRY_DEVICE_CUDA;

    for (size_t i = 0; status == FERRY_OK && i < n; i++) {
        status = cuda ? check_one(i, &descs[i], descs[0].device.id) : check_host(i, &descs[i]);
    }
    return status;
}

ferry_status_t ferry__cuda_mem_alloc(uint32_t device, size_t size, void **ptr_p)
{
    CUdeviceptr p;
    CUresult r;
    ferry_status_t status = ctx_push(device);

    if (status != FERRY_OK) {
        return status;
    }
    r = cu.cuMemAlloc(&p, size);
    ctx_pop();
    if (r == CUDA_ERROR_OUT_OF_MEMORY) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "cuda:%" PRIu32 ": cannot allocate %zu bytes: %s",
                           device, size, cu_name(r));
    }
    if (r != CUDA_SUCCESS) {
        return cu_fail("cuMemAlloc", r);
    }
    *ptr_p = (void *)(uintptr_t)p;
    return FERRY_OK;
}

ferry_status_t ferry__cuda_mem_zero(uint32_t device, void *ptr, size_t size)
{
    CUresult r;
    ferry_status_t status = ctx_push(device);

    if (status != FERRY_OK) {
        return status;
    }
    /* Asynchronous to the host for device memory: wait for it. */
    r = cu.cuMemsetD8((CUdeviceptr)(uintptr_t)ptr, 0, size);
    if (r == CUDA_SUCCESS) {
        r = cu.cuStreamSynchronize(NULL);
    }
    ctx_pop();
    return r == CUDA_SUCCESS ? FERRY_OK : cu_fail("cuMemsetD8", r);
}

void ferry__cuda_mem_free(uint32_t device, void *ptr)
{
    if (ptr != NULL && load_status == FERRY_OK && ctx_push(device) == FERRY_OK) {
        cu.cuMemFree((CUdeviceptr)(uintptr_t)ptr);
        ctx_pop();
    }
}

ferry_status_t ferry__cuda_memcpy(uint32_t device, void *dst, const void *src, size_t size)
{
    CUresult r;
    ferry_status_t status = ctx_push(device);

    if (status != FERRY_OK) {
        return status;
    }
    /* cuMemcpy may return before the bytes land (from pageable host
     * memory, and device to device): wait, so that another process's
     * transport (cuda_ipc) that reads or writes them next sees them. */
    r = cu.cuMemcpy((CUdeviceptr)(uintptr_t)dst, (CUdeviceptr)(uintptr_t)src, size);
    if (r == CUDA_SUCCESS) {
        r = cu.cuStreamSynchronize(NULL);
    }
    ctx_pop();
    return r == CUDA_SUCCESS ? FERRY_OK : cu_fail("cuMemcpy", r);
}

/* ---- the engine ---------------------------------------------------------- */

typedef struct {
    ferry__copy_engine_t base;
    uint32_t device;
    CUstream stream;
    CUevent ring[EVENT_RING]; /* events of tickets done+1 .. queued */
    uint64_t queued;          /* last ticket handed out */
    uint64_t done;            /* every ticket <= done has finished */
    CUresult error;           /* first failure; CUDA_SUCCESS while healthy */
} cuda_engine_t;

static ferry_status_t engine_failed(cuda_engine_t *e)
{
    return ferry__fail(FERRY_ERR_IO, "cuda:%" PRIu32 ": staging copy failed: %s", e->device,
                       cu_name(e->error));
}

static ferry_status_t engine_copy(ferry__copy_engine_t *base, void *dst, const void *src, size_t n,
                                  uint64_t *ticket_p)
{
    cuda_engine_t *e = (cuda_engine_t *)base;
    CUevent *ev;
    CUresult r;

    if (e->error != CUDA_SUCCESS) {
        return engine_failed(e);
    }
    if (e->queued - e->done >= EVENT_RING) {
        return ferry__fail(FERRY_ERR_RESOURCE_EXHAUSTED, "cuda:%" PRIu32 ": %d copies in flight",
                           e->device, EVENT_RING);
    }
    if (ctx_push(e->device) != FERRY_OK) {
        return FERRY_ERR_IO;
    }
    ev = &e->ring[(e->queued + 1) % EVENT_RING];
    r = cu.cuMemcpyAsync((CUdeviceptr)(uintptr_t)dst, (CUdeviceptr)(uintptr_t)src, n, e->stream);
    if (r == CUDA_SUCCESS) {
        r = cu.cuEventCreate(ev, CU_EVENT_DISABLE_TIMING);
    }
    if (r == CUDA_SUCCESS) {
        r = cu.cuEventRecord(*ev, e->stream);
        if (r != CUDA_SUCCESS) {
            cu.cuEventDestroy(*ev);
        }
    }
    ctx_pop();
    if (r != CUDA_SUCCESS) {
        e->error = r;
        ferry_error("cuda:%" PRIu32 ": queueing a %zu-byte copy: %s", e->device, n, cu_name(r));
        return engine_failed(e);
    }
    *ticket_p = ++e->queued;
    return FERRY_OK;
}

static ferry_status_t engine_poll(ferry__copy_engine_t *base, uint64_t ticket, bool *done_p)
{
    cuda_engine_t *e = (cuda_engine_t *)base;
    bool pushed = false;

    while (e->error == CUDA_SUCCESS && e->done < ticket && e->done < e->queued) {
        CUevent ev = e->ring[(e->done + 1) % EVENT_RING];
        CUresult r;
        if (!pushed && ctx_push(e->device) != FERRY_OK) {
            return FERRY_ERR_IO;
        }
        pushed = true;
        r = cu.cuEventQuery(ev);
        if (r == CUDA_ERROR_NOT_READY) {
            break;
        }
        cu.cuEventDestroy(ev);
        e->done++;
        if (r != CUDA_SUCCESS) {
            e->error = r;
            ferry_error("cuda:%" PRIu32 ": a staging copy failed: %s", e->device, cu_name(r));
        }
    }
    if (pushed) {
        ctx_pop();
    }
    if (e->error != CUDA_SUCCESS) {
        return engine_failed(e);
    }
    *done_p = ticket <= e->done;
    return FERRY_OK;
}

static void engine_sync(ferry__copy_engine_t *base)
{
    cuda_engine_t *e = (cuda_engine_t *)base;

    /* Nothing in flight, unless a copy was queued and its event could not
     * be (the engine failed then): that copy has no ticket to wait for. */
    if ((e->done == e->queued && e->error == CUDA_SUCCESS) || ctx_push(e->device) != FERRY_OK) {
        return;
    }
    cu.cuStreamSynchronize(e->stream);
    while (e->done < e->queued) {
        cu.cuEventDestroy(e->ring[(e->done + 1) % EVENT_RING]);
        e->done++;
    }
    ctx_pop();
}

/* Pinned buffers are slow to get (cuMemHostAlloc maps and locks pages:
 * milliseconds for the default 16 MiB) and every staged operation needs
 * one, so a few freed ones, PINNED_CACHE_BYTES in all, are kept for the
 * next operation of that size (active sides' only: see copy_engine.h). */
static struct {
    void *ptr;
    size_t size;
} pinned_cache[PINNED_CACHE];

static size_t pinned_cache_bytes; /* ctx_lock */

static void *pinned_cache_take(size_t size)
{
    void *p = NULL;

    pthread_mutex_lock(&ctx_lock);
    for (int i = 0; p == NULL && i < PINNED_CACHE; i++) {
        if (pinned_cache[i].ptr != NULL && pinned_cache[i].size == size) {
            p = pinned_cache[i].ptr;
            pinned_cache[i].ptr = NULL;
            pinned_cache_bytes -= size;
        }
    }
    pthread_mutex_unlock(&ctx_lock);
    return p;
}

static bool pinned_cache_keep(void *ptr, size_t size)
{
    bool kept = false;

    pthread_mutex_lock(&ctx_lock);
    for (int i = 0; !kept && size <= PINNED_CACHE_BYTES - pinned_cache_bytes && i < PINNED_CACHE;
         i++) {
        if (pinned_cache[i].ptr == NULL) {
            pinned_cache[i].ptr = ptr;
            pinned_cache[i].size = size;
            pinned_cache_bytes += size;
            kept = true;
        }
    }
    pthread_mutex_unlock(&ctx_lock);
    return kept;
}

static ferry_status_t engine_alloc_pinned(ferry__copy_engine_t *base, size_t size, void **ptr_p)
{
    cuda_engine_t *e = (cuda_engine_t *)base;
    CUresult r;

    if ((*ptr_p = pinned_cache_take(size)) != NULL) {
        return FERRY_OK;
    }
    if (ctx_push(e->device) != FERRY_OK) {
        return FERRY_ERR_IO;
    }
    r = cu.cuMemHostAlloc(ptr_p, size, CU_MEMHOSTALLOC_PORTABLE);
    ctx_pop();
    return r == CUDA_SUCCESS ? FERRY_OK : cu_fail("cuMemHostAlloc", r);
}

/* A device whose context this process retained already: the first, or
 * device when it has one. */
static uint32_t retained_device(uint32_t device)
{
    uint32_t d = device;

    pthread_mutex_lock(&ctx_lock);
    for (uint32_t i = 0; contexts[d] == NULL && i < MAX_DEVICES; i++) {
        d = contexts[i] != NULL ? i : d;
    }
    pthread_mutex_unlock(&ctx_lock);
    return d;
}

/* Without an engine (the slot pool frees memory after its engine is gone)
 * any context this process retained serves: the memory is portable, and
 * it was allocated under one, so this retains none. */
static void engine_free_pinned(ferry__copy_engine_t *base, void *ptr, size_t size, bool keep)
{
    uint32_t device = base != NULL ? ((cuda_engine_t *)base)->device : retained_device(0);

    if (ptr != NULL && !(keep && pinned_cache_keep(ptr, size)) && ctx_push(device) == FERRY_OK) {
        cu.cuMemFreeHost(ptr);
        ctx_pop();
    }
}

static ferry_status_t engine_pin(ferry__copy_engine_t *base, void *ptr, size_t size, bool *undo_p)
{
    cuda_engine_t *e = (cuda_engine_t *)base;
    CUresult r;

    *undo_p = false;
    if (ctx_push(e->device) != FERRY_OK) {
        return FERRY_ERR_IO;
    }
    r = cu.cuMemHostRegister(ptr, size, CU_MEMHOSTREGISTER_PORTABLE);
    ctx_pop();
    if (r == CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED) {
        return FERRY_OK; /* by UCX's CUDA support, which undoes it */
    }
    if (r != CUDA_SUCCESS) {
        return cu_fail("cuMemHostRegister", r);
    }
    *undo_p = true;
    return FERRY_OK;
}

static void engine_unpin(uint32_t device, void *ptr)
{
    CUresult r;

    if (ctx_push(device) != FERRY_OK) {
        return;
    }
    if ((r = cu.cuMemHostUnregister(ptr)) != CUDA_SUCCESS) {
        ferry_error("cuda: cuMemHostUnregister: %s", cu_name(r));
    }
    ctx_pop();
}

static void engine_destroy(ferry__copy_engine_t *base)
{
    cuda_engine_t *e = (cuda_engine_t *)base;

    if (ctx_push(e->device) == FERRY_OK) {
        cu.cuStreamDestroy(e->stream);
        ctx_pop();
    }
    free(e);
}

static const ferry__copy_engine_ops_t cuda_engine_ops = {
    .name = "cuda",
    .copy_async = engine_copy,
    .poll = engine_poll,
    .sync = engine_sync,
    .alloc_pinned = engine_alloc_pinned,
    .free_pinned = engine_free_pinned,
    .pin = engine_pin,
    .unpin = engine_unpin,
    .destroy = engine_destroy,
};

ferry_status_t ferry__cuda_engine_create(uint32_t device, ferry__copy_engine_t **engine_p)
{
    cuda_engine_t *e;
    ferry_status_t status = ctx_push(device);
    CUresult r;

    if (status != FERRY_OK) {
        return status;
    }
    e = calloc(1, sizeof(*e));
    if (e == NULL) {
        ctx_pop();
        return ferry__fail(FERRY_ERR_NO_MEMORY, "cuda: out of memory for an engine");
    }
    e->base.ops = &cuda_engine_ops;
    e->device = device;
    /* Blocking: ordered after the legacy default stream (module comment). */
    r = cu.cuStreamCreate(&e->stream, CU_STREAM_DEFAULT);
    ctx_pop();
    if (r != CUDA_SUCCESS) {
        free(e);
        return cu_fail("cuStreamCreate", r);
    }
    *engine_p = &e->base;
    return FERRY_OK;
}

#endif /* FERRY_HAVE_CUDA */
