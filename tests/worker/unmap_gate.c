/*
 * unmap_gate.c: libferry_unmap_gate.so, an LD_PRELOAD library that holds a
 * ucp_mem_unmap until the test lets it go (python/tests/test_region.py,
 * test_lock_taking_calls_let_go_of_the_gil).
 *
 * libferry deregisters a region with the connector's lock held across
 * ucp_mem_unmap (region.c), which takes half a second for 2 GiB. A test
 * that must see what other threads do meanwhile needs that window held
 * open for as long as it looks, not for as long as the kernel happens to
 * take. Every ucp_mem_unmap of a mapping of exactly FERRY_TEST_GATE_BYTES
 * bytes writes one byte to the fd FERRY_TEST_GATE_ENTERED, then waits for
 * one byte on the fd FERRY_TEST_GATE_RELEASE (at most FERRY_TEST_GATE_MS,
 * default 10000), then unmaps, and says on stderr which ended the wait:
 *
 *   unmap-gate: released by the test
 *   unmap-gate: released by its deadline
 *
 * Without those variables it only forwards the call. It cannot be combined
 * with a sanitizer build (the tests skip there, as for free_order.c).
 */
#include <dlfcn.h>
#include <poll.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ucp/api/ucp.h>

#define SHIM_API __attribute__((visibility("default")))

static long env_long(const char *name, long fallback)
{
    const char *env = getenv(name);
    char *end;
    long v;

    if (env == NULL || env[0] == '\0') {
        return fallback;
    }
    v = strtol(env, &end, 10);
    return *end == '\0' ? v : fallback;
}

static void say(const char *line)
{
    ssize_t n = write(STDERR_FILENO, line, strlen(line));
    (void)n;
}

/* UCX's own symbol. Looked up in libucp itself, not with RTLD_NEXT: a
 * Python extension loads libferry, and so UCX, with RTLD_LOCAL, outside the
 * global scope that RTLD_NEXT searches. libucp is loaded by the time a
 * mapping is unmapped. */
static void *ucp_symbol(const char *name)
{
    void *ucp = dlopen("libucp.so.0", RTLD_LAZY | RTLD_NOLOAD);
    void *sym = ucp != NULL ? dlsym(ucp, name) : NULL;

    if (sym == NULL) {
        say("unmap-gate: libucp.so.0 is not loaded\n");
        abort();
    }
    return sym;
}

/* True when memh maps exactly the gated size. */
static bool gated(ucp_mem_h memh)
{
    static ucs_status_t (*query)(const ucp_mem_h, ucp_mem_attr_t *);
    ucp_mem_attr_t attr = {.field_mask = UCP_MEM_ATTR_FIELD_LENGTH};
    long bytes = env_long("FERRY_TEST_GATE_BYTES", 0);

    if (query == NULL) {
        *(void **)&query = ucp_symbol("ucp_mem_query");
    }
    return bytes > 0 && query != NULL && query(memh, &attr) == UCS_OK &&
           attr.length == (size_t)bytes;
}

SHIM_API ucs_status_t ucp_mem_unmap(ucp_context_h context, ucp_mem_h memh)
{
    static ucs_status_t (*real)(ucp_context_h, ucp_mem_h);
    int entered = (int)env_long("FERRY_TEST_GATE_ENTERED", -1);
    int release = (int)env_long("FERRY_TEST_GATE_RELEASE", -1);

    if (real == NULL) {
        *(void **)&real = ucp_symbol("ucp_mem_unmap");
    }
    if (entered >= 0 && release >= 0 && gated(memh)) {
        struct pollfd pfd = {.fd = release, .events = POLLIN};
        char byte = 'e';

        if (write(entered, &byte, 1) == 1 &&
            poll(&pfd, 1, (int)env_long("FERRY_TEST_GATE_MS", 10000)) == 1 &&
            read(release, &byte, 1) == 1) {
            say("unmap-gate: released by the test\n");
        } else {
            say("unmap-gate: released by its deadline\n");
        }
    }
    return real(context, memh);
}
