/*
 * free_order.c: libferry_free_order.so, an LD_PRELOAD library that says
 * whether a program frees its transfer buffer only after UCX is gone
 * (tests/python/test_workers.py, BufferLifetime).
 *
 * libferry does not wait for data in flight when an operation is destroyed
 * (ferry.h, ferry_op_destroy): an admitted peer's puts, or our own gets
 * cancelled midway, may still land in the memory until the connector is
 * destroyed. So a program must not free that memory before
 * ferry_connector_destroy, which calls ucp_cleanup last. This library
 * watches the first aligned_alloc of exactly FERRY_TEST_WATCH_BYTES bytes
 * (ferry-worker's buffer, rounded up to a page), notes when ucp_cleanup has
 * returned, and when the watched block is freed writes one line to stderr:
 *
 *   free-order: buffer freed after ucp_cleanup
 *   free-order: buffer freed while UCX is up
 *
 * The order is what is tested, not a race: it holds or not on every run.
 * Allocation and free go to glibc's own (__libc_memalign, __libc_free); it
 * cannot be combined with a sanitizer, which replaces them.
 *
 * Threads: any; the watched pointer and the flag are atomics.
 */
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ucp/api/ucp.h>

#define SHIM_API __attribute__((visibility("default")))

extern void *__libc_memalign(size_t alignment, size_t size);
extern void __libc_free(void *ptr);

static _Atomic uintptr_t watched;
static atomic_bool ucx_gone;

static void say(const char *line)
{
    ssize_t n = write(STDERR_FILENO, line, strlen(line));
    (void)n;
}

/* The size to watch; 0 (watch nothing) when unset or not a number. */
static size_t watch_bytes(void)
{
    const char *env = getenv("FERRY_TEST_WATCH_BYTES");
    char *end;
    unsigned long long v;

    if (env == NULL || env[0] == '\0') {
        return 0;
    }
    v = strtoull(env, &end, 10);
    return *end == '\0' ? (size_t)v : 0;
}

SHIM_API void *aligned_alloc(size_t alignment, size_t size)
{
    void *p = __libc_memalign(alignment, size);
    uintptr_t none = 0;

    if (p != NULL && size != 0 && size == watch_bytes()) {
        atomic_compare_exchange_strong(&watched, &none, (uintptr_t)p);
    }
    return p;
}

SHIM_API void free(void *ptr)
{
    uintptr_t p = (uintptr_t)ptr;

    if (ptr != NULL && atomic_compare_exchange_strong(&watched, &p, 0)) {
        say(atomic_load(&ucx_gone) ? "free-order: buffer freed after ucp_cleanup\n"
                                   : "free-order: buffer freed while UCX is up\n");
    }
    __libc_free(ptr);
}

SHIM_API void ucp_cleanup(ucp_context_h context)
{
    static void (*real)(ucp_context_h);

    if (real == NULL) {
        *(void **)&real = dlsym(RTLD_NEXT, "ucp_cleanup");
    }
    real(context);
    atomic_store(&ucx_gone, true);
}
