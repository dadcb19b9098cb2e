/*
 * fake_cuda.c: a CUDA driver over host memory (libferry_fakecuda.so), for
 * CI machines without a GPU. libferry loads it instead of libcuda.so.1 when
 * a test sets ferry__cuda_test_driver, and then runs its CUDA code for real:
 * the descriptor checks, the CUDA copy engine (streams, events), the staged
 * path with cuda:N descriptors end to end.
 *
 * What it models: FAKE_DEVICES devices; cuMemAlloc returns page-aligned host
 * memory it remembers as device memory of the current context's device, so
 * cuPointerGetAttributes answers as the driver does (memory type, ordinal,
 * allocation range, whether mapped; zeros for memory it does not know);
 * fake_cuda_map_only(base, n) leaves only an allocation's first n bytes
 * mapped, as a virtual-memory reservation larger than what is mapped into
 * it (PyTorch's expandable segments), whose other attributes are still the
 * reservation's everywhere in it; cuMemHostAlloc is
 * "pinned host" memory; cuMemHostRegister pins host memory allocated
 * elsewhere (remembered, so that a second registration of it fails as the
 * driver's does, and fake_cuda_registered() counts what is still pinned;
 * fake_cuda_refuse_pins(1) makes it fail, fake_cuda_pin_calls() counts
 * calls);
 * an asynchronous copy is queued on its stream and made only when an event
 * recorded after it is found complete (each reports NOT_READY to its first
 * query, so the engine's polling path runs), the stream is synchronized or
 * destroyed, or a synchronous call (cuMemcpy, cuMemsetD8, a free) waits for
 * every stream, as the device makes it later: a caller that takes a copy
 * as done before its event says so sees the old bytes.
 * fake_cuda_fail_copy(N) (found with dlsym) makes the Nth cuMemcpyAsync
 * from then on fail (CUDA_ERROR_LAUNCH_FAILED), and fake_cuda_fail_event(N)
 * the Nth event query that would have found its copies done (a copy that
 * failed on the device: CUDA_ERROR_ILLEGAL_ADDRESS), for the engine's two
 * error paths; 0 turns either off. The thread's context stack, the
 * primary contexts retained (fake_cuda_retains), the current device
 * (fake_cuda_current, fake_cuda_set_current) and the last stream's flags
 * (fake_cuda_stream_flags) are there for tests to look at.
 * FERRY_FAKE_CUDA_NO_DEVICE makes cuInit fail.
 *
 * Only the functions libferry resolves exist (worker/cuda.c's list), under
 * their ABI names (cuda.h's macros map cuMemAlloc to cuMemAlloc_v2 here
 * too). Its soname is not libcuda.so.1, so it never stands in for the real
 * driver in anything else (UCX's CUDA modules).
 *
 * Threads: the allocation table is guarded by a mutex; the current context
 * is per thread, as in the driver.
 */
#include <cuda.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define FAKE_DEVICES 2
#define FAKE_ALLOCS  4096
#define FAKE_PINS    256

#define FAKE_API __attribute__((visibility("default")))

typedef struct {
    uintptr_t base;
    size_t size;   /* the address range: RANGE_SIZE */
    size_t mapped; /* the bytes from base backed by memory: MAPPED */
    int device;    /* -1: pinned host memory */
} alloc_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static alloc_t allocs[FAKE_ALLOCS];
/* The calling thread's context stack, as the driver keeps one: its top
 * (a device, or -1 for none) is the current context. */
#define FAKE_STACK 16
static _Thread_local int stack[FAKE_STACK];
static _Thread_local int depth;
#define current (depth > 0 ? stack[depth - 1] : -1)
static atomic_uint retains[FAKE_DEVICES];
static atomic_uint stream_flags;
static atomic_uint copies;
static atomic_uint fail_at;
static uintptr_t pins[FAKE_PINS]; /* cuMemHostRegister'd bases (lock) */
static atomic_bool refuse_pins;
static atomic_uint pin_calls;

FAKE_API void fake_cuda_fail_copy(unsigned nth);
FAKE_API int fake_cuda_current(void);
FAKE_API void fake_cuda_set_current(int device);
FAKE_API unsigned fake_cuda_retains(int device);
FAKE_API unsigned fake_cuda_stream_flags(void);
FAKE_API size_t fake_cuda_host_alloc_bytes(void);
FAKE_API unsigned fake_cuda_registered(void);
FAKE_API void fake_cuda_refuse_pins(int on);
FAKE_API unsigned fake_cuda_pin_calls(void);
FAKE_API int fake_cuda_map_only(void *base, size_t bytes);

/* While on, cuMemHostRegister fails (CUDA_ERROR_NOT_PERMITTED); calls are
 * counted either way. */
FAKE_API void fake_cuda_refuse_pins(int on)
{
    atomic_store(&refuse_pins, on != 0);
}

FAKE_API unsigned fake_cuda_pin_calls(void)
{
    return atomic_load(&pin_calls);
}

FAKE_API void fake_cuda_fail_copy(unsigned nth)
{
    atomic_store(&copies, 0);
    atomic_store(&fail_at, nth);
}

/* Copies are queued on their stream and made when an event recorded after
 * them is found complete (or the stream is synchronized, or a synchronous
 * call waits for every stream), as the device would make them later: a
 * caller that reuses a buffer before the event says so sees the old bytes.
 * Streams and their queues are guarded by lock. */
#define FAKE_STREAMS 64
#define FAKE_QUEUE   512

typedef struct {
    void *dst;
    const void *src;
    size_t n;
} copy_t;

struct CUstream_st {
    int device;
    copy_t queue[FAKE_QUEUE];
    unsigned long long queued, made; /* copies queued, and made, ever */
};

struct CUevent_st {
    CUstream stream;
    unsigned long long upto; /* the stream's copies before it */
    int queries;             /* NOT_READY until queried once */
};

static CUstream streams[FAKE_STREAMS]; /* lock */
static atomic_uint event_queries;
static atomic_uint event_fail_at;

/* Makes s's queued copies up to upto; lock held. */
static void make_copies(CUstream s, unsigned long long upto)
{
    while (s->made < upto && s->made < s->queued) {
        copy_t *c = &s->queue[s->made % FAKE_QUEUE];
        memmove(c->dst, c->src, c->n);
        s->made++;
    }
}

/* What a synchronous call does first: every stream's copies made. */
static void make_all_copies(void)
{
    pthread_mutex_lock(&lock);
    for (int i = 0; i < FAKE_STREAMS; i++) {
        if (streams[i] != NULL) {
            make_copies(streams[i], streams[i]->queued);
        }
    }
    pthread_mutex_unlock(&lock);
}

FAKE_API void fake_cuda_fail_event(unsigned nth);

/* The nth event query from now on that would find its copies done reports
 * CUDA_ERROR_ILLEGAL_ADDRESS instead (a copy that failed on the device,
 * after it was queued); 0 turns that off. */
FAKE_API void fake_cuda_fail_event(unsigned nth)
{
    atomic_store(&event_queries, 0);
    atomic_store(&event_fail_at, nth);
}

FAKE_API CUresult CUDAAPI cuInit(unsigned int flags)
{
    (void)flags;
    return getenv("FERRY_FAKE_CUDA_NO_DEVICE") != NULL ? CUDA_ERROR_NO_DEVICE : CUDA_SUCCESS;
}

FAKE_API CUresult CUDAAPI cuGetErrorName(CUresult error, const char **name)
{
    switch (error) {
    case CUDA_SUCCESS:
        *name = "CUDA_SUCCESS";
        break;
    case CUDA_ERROR_NO_DEVICE:
        *name = "CUDA_ERROR_NO_DEVICE";
        break;
    case CUDA_ERROR_LAUNCH_FAILED:
        *name = "CUDA_ERROR_LAUNCH_FAILED";
        break;
    case CUDA_ERROR_ILLEGAL_ADDRESS:
        *name = "CUDA_ERROR_ILLEGAL_ADDRESS";
        break;
    case CUDA_ERROR_NOT_READY:
        *name = "CUDA_ERROR_NOT_READY";
        break;
    default:
        *name = "CUDA_ERROR_INVALID_VALUE";
        break;
    }
    return CUDA_SUCCESS;
}

FAKE_API CUresult CUDAAPI cuDeviceGetCount(int *count)
{
    *count = FAKE_DEVICES;
    return CUDA_SUCCESS;
}

FAKE_API CUresult CUDAAPI cuDeviceGet(CUdevice *device, int ordinal)
{
    if (ordinal < 0 || ordinal >= FAKE_DEVICES) {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    *device = ordinal;
    return CUDA_SUCCESS;
}

FAKE_API CUresult CUDAAPI cuDevicePrimaryCtxRetain(CUcontext *ctx, CUdevice dev)
{
    if (dev < 0 || dev >= FAKE_DEVICES) {
        return CUDA_ERROR_INVALID_DEVICE;
    }
    atomic_fetch_add(&retains[dev], 1);
    *ctx = (CUcontext)(uintptr_t)(dev + 1);
    return CUDA_SUCCESS;
}

/* Replaces the top of the stack (pushes onto an empty one), as the
 * driver's does. */
FAKE_API CUresult CUDAAPI cuCtxSetCurrent(CUcontext ctx)
{
    int device = (int)(uintptr_t)ctx - 1;

    if (depth == 0) {
        depth = 1;
    }
    stack[depth - 1] = device;
    return CUDA_SUCCESS;
}

FAKE_API CUresult CUDAAPI cuCtxPushCurrent(CUcontext ctx)
{
    if (ctx == NULL || depth == FAKE_STACK) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    stack[depth++] = (int)(uintptr_t)ctx - 1;
    return CUDA_SUCCESS;
}

FAKE_API CUresult CUDAAPI cuCtxPopCurrent(CUcontext *ctx)
{
    if (depth == 0) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    depth--;
    if (ctx != NULL) {
        *ctx = (CUcontext)(uintptr_t)(stack[depth] + 1);
    }
    return CUDA_SUCCESS;
}

/* The calling thread's current device (-1: none), for tests that check
 * libferry leaves it as it found it. */
FAKE_API int fake_cuda_current(void)
{
    return current;
}

/* What an application's cudaSetDevice does to the driver's state. */
FAKE_API void fake_cuda_set_current(int device)
{
    cuCtxSetCurrent(device < 0 ? NULL : (CUcontext)(uintptr_t)(device + 1));
}

/* Primary contexts retained on device (each activates it: device memory). */
FAKE_API unsigned fake_cuda_retains(int device)
{
    return device >= 0 && device < FAKE_DEVICES ? atomic_load(&retains[device]) : 0;
}

/* The flags of the last stream created. */
FAKE_API unsigned fake_cuda_stream_flags(void)
{
    return atomic_load(&stream_flags);
}

static const alloc_t *find(uintptr_t p)
{
    for (int i = 0; i < FAKE_ALLOCS; i++) {
        if (allocs[i].size != 0 && p >= allocs[i].base && p - allocs[i].base < allocs[i].size) {
            return &allocs[i];
        }
    }
    return NULL;
}

FAKE_API CUresult CUDAAPI cuPointerGetAttributes(unsigned int n, CUpointer_attribute *attrs,
                                                 void **data, CUdeviceptr ptr)
{
    const alloc_t *a;

    pthread_mutex_lock(&lock);
    a = find((uintptr_t)ptr);
    for (unsigned int i = 0; i < n; i++) {
        switch (attrs[i]) {
        case CU_POINTER_ATTRIBUTE_MEMORY_TYPE:
            *(unsigned int *)data[i] = a == NULL       ? 0
                                       : a->device < 0 ? CU_MEMORYTYPE_HOST
                                                       : CU_MEMORYTYPE_DEVICE;
            break;
        case CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL:
            *(int *)data[i] = a == NULL ? -2 : (a->device < 0 ? 0 : a->device);
            break;
        case CU_POINTER_ATTRIBUTE_RANGE_START_ADDR:
            *(CUdeviceptr *)data[i] = a == NULL ? 0 : (CUdeviceptr)a->base;
            break;
        case CU_POINTER_ATTRIBUTE_RANGE_SIZE:
            *(size_t *)data[i] = a == NULL ? 0 : a->size;
            break;
        case CU_POINTER_ATTRIBUTE_IS_MANAGED:
            *(unsigned int *)data[i] = 0;
            break;
        case CU_POINTER_ATTRIBUTE_MAPPED:
            *(int *)data[i] = a != NULL && (uintptr_t)ptr - a->base < a->mapped;
            break;
        default:
            pthread_mutex_unlock(&lock);
            return CUDA_ERROR_INVALID_VALUE;
        }
    }
    pthread_mutex_unlock(&lock);
    return CUDA_SUCCESS;
}

static CUresult remember(void *p, size_t size, int device)
{
    pthread_mutex_lock(&lock);
    for (int i = 0; i < FAKE_ALLOCS; i++) {
        if (allocs[i].size == 0) {
            allocs[i] = (alloc_t){(uintptr_t)p, size, size, device};
            pthread_mutex_unlock(&lock);
            return CUDA_SUCCESS;
        }
    }
    pthread_mutex_unlock(&lock);
    return CUDA_ERROR_OUT_OF_MEMORY;
}

static CUresult forget(uintptr_t p)
{
    pthread_mutex_lock(&lock);
    for (int i = 0; i < FAKE_ALLOCS; i++) {
        if (allocs[i].size != 0 && allocs[i].base == p) {
            munmap((void *)p, allocs[i].size);
            allocs[i].size = 0;
            pthread_mutex_unlock(&lock);
            return CUDA_SUCCESS;
        }
    }
    pthread_mutex_unlock(&lock);
    return CUDA_ERROR_INVALID_VALUE;
}

/* Leaves the first bytes of the allocation at base mapped (the rest only
 * reserved address space); CUDA_ERROR_INVALID_VALUE if base is none. */
FAKE_API int fake_cuda_map_only(void *base, size_t bytes)
{
    CUresult r = CUDA_ERROR_INVALID_VALUE;

    pthread_mutex_lock(&lock);
    for (int i = 0; i < FAKE_ALLOCS; i++) {
        if (allocs[i].size != 0 && allocs[i].base == (uintptr_t)base && bytes <= allocs[i].size) {
            allocs[i].mapped = bytes;
            r = CUDA_SUCCESS;
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    return r;
}

static void *map(size_t size)
{
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

FAKE_API CUresult CUDAAPI cuMemAlloc(CUdeviceptr *dptr, size_t size)
{
    void *p;

    if (current < 0) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    if (size == 0 || (p = map(size)) == NULL) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    *dptr = (CUdeviceptr)(uintptr_t)p;
    return remember(p, size, current);
}

FAKE_API CUresult CUDAAPI cuMemsetD8(CUdeviceptr dptr, unsigned char value, size_t n)
{
    make_all_copies();
    if (current < 0) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    memset((void *)(uintptr_t)dptr, value, n);
    return CUDA_SUCCESS;
}

FAKE_API CUresult CUDAAPI cuMemFree(CUdeviceptr dptr)
{
    make_all_copies(); /* the driver's synchronizes, and copies may name it */
    return forget((uintptr_t)dptr);
}

FAKE_API CUresult CUDAAPI cuMemHostAlloc(void **pp, size_t size, unsigned int flags)
{
    (void)flags;
    if (current < 0) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    if (size == 0 || (*pp = map(size)) == NULL) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return remember(*pp, size, -1);
}

FAKE_API CUresult CUDAAPI cuMemFreeHost(void *p)
{
    make_all_copies();
    return forget((uintptr_t)p);
}

FAKE_API CUresult CUDAAPI cuMemHostRegister(void *p, size_t size, unsigned int flags)
{
    CUresult r = CUDA_ERROR_OUT_OF_MEMORY;
    int free_at = -1;

    (void)flags;
    atomic_fetch_add(&pin_calls, 1);
    if (current < 0) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    if (p == NULL || size == 0) {
        return CUDA_ERROR_INVALID_VALUE;
    }
    if (atomic_load(&refuse_pins)) {
        return CUDA_ERROR_NOT_PERMITTED;
    }
    pthread_mutex_lock(&lock);
    for (int i = 0; i < FAKE_PINS; i++) {
        if (pins[i] == (uintptr_t)p) {
            pthread_mutex_unlock(&lock);
            return CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED;
        }
        free_at = free_at < 0 && pins[i] == 0 ? i : free_at;
    }
    if (free_at >= 0) {
        pins[free_at] = (uintptr_t)p;
        r = CUDA_SUCCESS;
    }
    pthread_mutex_unlock(&lock);
    return r;
}

FAKE_API CUresult CUDAAPI cuMemHostUnregister(void *p)
{
    CUresult r = CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED;

    if (current < 0) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    pthread_mutex_lock(&lock);
    for (int i = 0; i < FAKE_PINS && r != CUDA_SUCCESS; i++) {
        if (pins[i] == (uintptr_t)p) {
            pins[i] = 0;
            r = CUDA_SUCCESS;
        }
    }
    pthread_mutex_unlock(&lock);
    return r;
}

/* Bytes of cuMemHostAlloc'd memory not freed yet. */
FAKE_API size_t fake_cuda_host_alloc_bytes(void)
{
    size_t n = 0;

    pthread_mutex_lock(&lock);
    for (int i = 0; i < FAKE_ALLOCS; i++) {
        n += allocs[i].size != 0 && allocs[i].device < 0 ? allocs[i].size : 0;
    }
    pthread_mutex_unlock(&lock);
    return n;
}

FAKE_API unsigned fake_cuda_registered(void)
{
    unsigned n = 0;

    pthread_mutex_lock(&lock);
    for (int i = 0; i < FAKE_PINS; i++) {
        n += pins[i] != 0;
    }
    pthread_mutex_unlock(&lock);
    return n;
}

FAKE_API CUresult CUDAAPI cuMemcpy(CUdeviceptr dst, CUdeviceptr src, size_t n)
{
    make_all_copies(); /* the legacy default stream waits for blocking ones */
    memmove((void *)(uintptr_t)dst, (const void *)(uintptr_t)src, n);
    return CUDA_SUCCESS;
}

FAKE_API CUresult CUDAAPI cuMemcpyAsync(CUdeviceptr dst, CUdeviceptr src, size_t n, CUstream s)
{
    unsigned nth = atomic_fetch_add(&copies, 1) + 1;

    if (s == NULL || current < 0) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    if (atomic_load(&fail_at) == nth) {
        return CUDA_ERROR_LAUNCH_FAILED;
    }
    pthread_mutex_lock(&lock);
    if (s->queued - s->made == FAKE_QUEUE) {
        make_copies(s, s->made + 1); /* the device got to the oldest */
    }
    s->queue[s->queued % FAKE_QUEUE] =
        (copy_t){(void *)(uintptr_t)dst, (const void *)(uintptr_t)src, n};
    s->queued++;
    pthread_mutex_unlock(&lock);
    return CUDA_SUCCESS;
}

FAKE_API CUresult CUDAAPI cuStreamCreate(CUstream *s, unsigned int flags)
{
    int slot = -1;

    atomic_store(&stream_flags, flags);
    if (current < 0) {
        return CUDA_ERROR_INVALID_CONTEXT;
    }
    *s = calloc(1, sizeof(**s));
    if (*s == NULL) {
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    (*s)->device = current;
    pthread_mutex_lock(&lock);
    for (int i = 0; slot < 0 && i < FAKE_STREAMS; i++) {
        slot = streams[i] == NULL ? i : slot;
    }
    if (slot >= 0) {
        streams[slot] = *s;
    }
    pthread_mutex_unlock(&lock);
    if (slot < 0) {
        free(*s);
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    return CUDA_SUCCESS;
}

/* Its queued copies still happen, as the driver's do. */
FAKE_API CUresult CUDAAPI cuStreamDestroy(CUstream s)
{
    pthread_mutex_lock(&lock);
    make_copies(s, s->queued);
    for (int i = 0; i < FAKE_STREAMS; i++) {
        streams[i] = streams[i] == s ? NULL : streams[i];
    }
    pthread_mutex_unlock(&lock);
    free(s);
    return CUDA_SUCCESS;
}

FAKE_API CUresult CUDAAPI cuStreamSynchronize(CUstream s)
{
    if (s == NULL) {
        make_all_copies();
        return CUDA_SUCCESS;
    }
    pthread_mutex_lock(&lock);
    make_copies(s, s->queued);
    pthread_mutex_unlock(&lock);
    return CUDA_SUCCESS;
}

FAKE_API CUresult CUDAAPI cuEventCreate(CUevent *e, unsigned int flags)
{
    (void)flags;
    *e = calloc(1, sizeof(**e));
    return *e != NULL ? CUDA_SUCCESS : CUDA_ERROR_OUT_OF_MEMORY;
}

FAKE_API CUresult CUDAAPI cuEventRecord(CUevent e, CUstream s)
{
    pthread_mutex_lock(&lock);
    e->stream = s;
    e->upto = s != NULL ? s->queued : 0;
    e->queries = 0;
    pthread_mutex_unlock(&lock);
    return CUDA_SUCCESS;
}

/* NOT_READY to its first query; then the copies before it are made and it
 * is complete (or fails, fake_cuda_fail_event). */
FAKE_API CUresult CUDAAPI cuEventQuery(CUevent e)
{
    if (e->queries++ == 0) {
        return CUDA_ERROR_NOT_READY;
    }
    if (atomic_load(&event_fail_at) == atomic_fetch_add(&event_queries, 1) + 1) {
        return CUDA_ERROR_ILLEGAL_ADDRESS;
    }
    if (e->stream != NULL) {
        pthread_mutex_lock(&lock);
        make_copies(e->stream, e->upto);
        pthread_mutex_unlock(&lock);
    }
    return CUDA_SUCCESS;
}

FAKE_API CUresult CUDAAPI cuEventDestroy(CUevent e)
{
    free(e);
    return CUDA_SUCCESS;
}
