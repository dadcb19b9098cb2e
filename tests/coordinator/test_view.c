/*
 * test_view.c: the view's map keeps the newest record per request ID, in
 * whatever order write-through and watch events arrive, across growth.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "view.h"

static void test_newer_wins(void **state)
{
    view_t v;
    const view_entry_t *e;
    (void)state;

    assert_int_equal(view_init(&v), FERRY_OK);
    assert_int_equal(view_upsert(&v, "a", (const uint8_t *)"new", 3, 10), FERRY_OK);
    assert_int_equal(view_upsert(&v, "a", (const uint8_t *)"old", 3, 9), FERRY_OK);
    e = view_find(&v, "a");
    assert_non_null(e);
    assert_memory_equal(e->bytes, "new", 3);
    assert_int_equal(e->mod_revision, 10);
    /* A delete older than the record leaves it; a newer one removes it. */
    view_remove(&v, "a", 9);
    assert_non_null(view_find(&v, "a"));
    view_remove(&v, "a", 11);
    assert_null(view_find(&v, "a"));
    view_cleanup(&v);
}

static void test_many_entries(void **state)
{
    view_t v;
    char id[32];
    (void)state;

    assert_int_equal(view_init(&v), FERRY_OK);
    for (int i = 0; i < 5000; i++) {
        snprintf(id, sizeof(id), "op-%d", i);
        assert_int_equal(view_upsert(&v, id, (const uint8_t *)id, strlen(id), i + 1), FERRY_OK);
    }
    assert_int_equal(v.n_entries, 5000);
    assert_true(v.n_buckets >= 4096);
    for (int i = 0; i < 5000; i++) {
        snprintf(id, sizeof(id), "op-%d", i);
        const view_entry_t *e = view_find(&v, id);
        assert_non_null(e);
        assert_memory_equal(e->bytes, id, strlen(id));
    }
    assert_null(view_find(&v, "op-5000"));
    view_clear(&v);
    assert_int_equal(v.n_entries, 0);
    assert_null(view_find(&v, "op-1"));
    view_cleanup(&v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_newer_wins),
        cmocka_unit_test(test_many_entries),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
