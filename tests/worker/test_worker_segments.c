/*
 * test_worker_segments.c: the segment table's decision (worker/segments.c)
 * on its own, over a shared mapping this test makes itself: whose segment
 * a key may name is decided by the worker's whole UCX address. No UCX.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "worker/ferry_int.h"

/* Two 8-byte strings with one 64-bit FNV-1a hash (found by a parallel rho
 * search, about a minute on two cores): a worker id made of that hash
 * cannot tell these two addresses apart. */
static const uint8_t own_address[8] = {0xd4, 0x8b, 0xb9, 0x3f, 0xc3, 0x2b, 0x0f, 0xfe};
static const uint8_t same_fnv[8] = {0x99, 0x45, 0x2a, 0xa5, 0xcb, 0xfb, 0x74, 0x85};

static uint64_t fnv1a(const uint8_t *p, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull;

    for (size_t i = 0; i < len; i++) {
        h = (h ^ p[i]) * 0x100000001b3ull;
    }
    return h;
}

/* A Ferry-allocated segment of a connector at own_address, as
 * ferry__mem_map records it, and keys of it claimed by other addresses: a
 * hostile passive side on this host whose metadata gives an address that is
 * not the writer's (audit-s32 L2). Only the writer's own address may name
 * it: its passive side is a connector of this process. */
static void test_only_the_whole_address_is_the_worker(void **state)
{
    ferry_connector_t *c = calloc(1, sizeof(*c));
    uint8_t suffixed[sizeof(own_address) + 4] = {0};
    ferry__rkey_t rk = {0};
    struct stat st;
    void *seg;
    int fd;
    (void)state;

    assert_non_null(c);
    assert_int_equal(fnv1a(own_address, sizeof(own_address)), fnv1a(same_fnv, sizeof(same_fnv)));
    memcpy(suffixed, own_address, sizeof(own_address)); /* UCX accepts bytes appended */
    snprintf(c->name, sizeof(c->name), "own");
    c->address = (ucp_address_t *)own_address;
    c->address_len = sizeof(own_address);
    fd = memfd_create("ferry-segment", 0);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, 4096), 0);
    seg = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    assert_true(seg != MAP_FAILED);
    assert_int_equal(fstat(fd, &st), 0);
    ferry__segment_add_own(c, seg);

    assert_int_equal(ferry__segment_take(st.st_dev, st.st_ino, same_fnv, sizeof(same_fnv), true),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_non_null(strstr(ferry_last_error_message(), "one of its own"));
    assert_int_equal(ferry__segment_take(st.st_dev, st.st_ino, suffixed, sizeof(suffixed), true),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(ferry__segment_take(st.st_dev, st.st_ino, own_address, 7, true),
                     FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(
        ferry__segment_take(st.st_dev, st.st_ino, own_address, sizeof(own_address), true),
        FERRY_OK);
    rk.mapped = true;
    rk.seg_dev = st.st_dev;
    rk.seg_ino = st.st_ino;
    ferry__segment_release(&rk);

    ferry__segment_drop_own(seg);
    /* Its record gone, the file is known to no worker: a key that maps it
     * again is refused (UCX's own segments are such), one that maps it
     * fresh passes. */
    assert_int_equal(
        ferry__segment_take(st.st_dev, st.st_ino, own_address, sizeof(own_address), true),
        FERRY_ERR_INVALID_ARGUMENT);
    assert_int_equal(ferry__segment_take(st.st_dev, st.st_ino, same_fnv, sizeof(same_fnv), false),
                     FERRY_OK);
    rk.mapped = true;
    ferry__segment_release(&rk);
    munmap(seg, 4096);
    close(fd);
    free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_only_the_whole_address_is_the_worker),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
