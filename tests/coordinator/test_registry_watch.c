/*
 * test_registry_watch.c: what the registry's watch handler
 * (registry_on_watch_events, coordinator/registry.c) reports for the
 * events etcd sends, fed to it directly on a registry built by hand (its
 * view, lock and prefixes; no etcd). A DELETE whose previous record etcd
 * did not send (compacted, for a lagging watch) is still reported: from the
 * view's copy when it has one, else by its request ID alone. A read from
 * the view decodes its record after letting the registry's lock go
 * (registry_record_decode through --wrap).
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "registry_int.h"

#define OPS_PREFIX "/ferry/ops/"

/* The events the registry reported, copied. */
typedef struct {
    int n;
    coord_event_type_t type;
    char request_id[64];
    char owner[64];
    int state;
    int64_t revision;
} seen_t;

static void on_event(void *arg, coord_event_type_t type, const Ferry__V1__Operation *op,
                     int64_t revision)
{
    seen_t *seen = arg;

    seen->n++;
    seen->type = type;
    strncpy(seen->request_id, op->request_id, sizeof(seen->request_id) - 1);
    strncpy(seen->owner, op->owner != NULL ? op->owner : "", sizeof(seen->owner) - 1);
    seen->state = op->state;
    seen->revision = revision;
}

typedef struct {
    coord_registry_t r;
    seen_t seen;
} fixture_t;

/* Decodes of a record, and those made with *decode_lock held (NULL: not
 * looked at). */
static pthread_mutex_t *decode_lock;
static int decodes, decodes_locked;

ferry_status_t __real_registry_record_decode(const uint8_t *bytes, size_t len, coord_record_t *rec);
ferry_status_t __wrap_registry_record_decode(const uint8_t *bytes, size_t len, coord_record_t *rec);

ferry_status_t __wrap_registry_record_decode(const uint8_t *bytes, size_t len, coord_record_t *rec)
{
    if (decode_lock != NULL) {
        if (pthread_mutex_trylock(decode_lock) == 0) {
            pthread_mutex_unlock(decode_lock);
        } else {
            decodes_locked++;
        }
    }
    decodes++;
    return __real_registry_record_decode(bytes, len, rec);
}

static int setup(void **state)
{
    fixture_t *f = calloc(1, sizeof(*f));

    assert_non_null(f);
    assert_int_equal(pthread_mutex_init(&f->r.lock, NULL), 0);
    assert_int_equal(view_init(&f->r.view), FERRY_OK);
    f->r.ops_prefix = OPS_PREFIX;
    f->r.claims_prefix = "/ferry/claims/";
    f->r.params.on_event = on_event;
    f->r.params.arg = &f->seen;
    f->r.synced = true;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture_t *f = *state;

    view_cleanup(&f->r.view);
    pthread_mutex_destroy(&f->r.lock);
    free(f);
    return 0;
}

/* A PUT of id's record, in state, at revision: as the watch sends it. */
static void put(fixture_t *f, const char *id, int state, int64_t revision)
{
    Ferry__V1__Operation op = FERRY__V1__OPERATION__INIT;
    char key[64] = OPS_PREFIX;
    etcd_event_t ev = {.type = ETCD_EVENT_PUT};
    uint8_t *bytes;
    size_t len;

    op.request_id = (char *)id;
    op.owner = "owner-1";
    op.state = state;
    op.lease_id = 7;
    len = ferry__v1__operation__get_packed_size(&op);
    bytes = malloc(len);
    assert_non_null(bytes);
    ferry__v1__operation__pack(&op, bytes);
    strcat(key, id);
    ev.kv = (etcd_kv_t){.key = (uint8_t *)key,
                        .key_len = strlen(key),
                        .value = bytes,
                        .value_len = len,
                        .mod_revision = revision};
    ev.prev_kv = ev.kv;
    ev.prev_kv.key_len = 0;
    registry_on_watch_events(&f->r, &ev, 1, revision, false);
    free(bytes);
}

/* A DELETE of id at revision, without its previous record. */
static void delete_bare(fixture_t *f, const char *id, int64_t revision)
{
    char key[64] = OPS_PREFIX;
    etcd_event_t ev = {.type = ETCD_EVENT_DELETE};

    strcat(key, id);
    ev.kv = (etcd_kv_t){.key = (uint8_t *)key, .key_len = strlen(key), .mod_revision = revision};
    registry_on_watch_events(&f->r, &ev, 1, revision, false);
}

/* The view held the record: its delete is reported from that copy, a
 * record not yet final turned EXPIRED, as with etcd's previous record. */
static void test_delete_without_prev_kv_is_reported_from_the_view(void **state)
{
    fixture_t *f = *state;

    put(f, "op-1", FERRY_OP_CLAIMED, 10);
    assert_int_equal(f->seen.n, 1);
    assert_non_null(view_find(&f->r.view, "op-1"));

    delete_bare(f, "op-1", 11);
    assert_int_equal(f->seen.n, 2);
    assert_int_equal(f->seen.type, COORD_EVENT_DELETE);
    assert_string_equal(f->seen.request_id, "op-1");
    assert_string_equal(f->seen.owner, "owner-1");
    assert_int_equal(f->seen.state, FERRY_OP_EXPIRED);
    assert_int_equal(f->seen.revision, 11);
    assert_null(view_find(&f->r.view, "op-1"));
    assert_int_equal(f->r.revision, 11);
}

/* A final record keeps its state when it leaves, as with prev_kv. */
static void test_delete_without_prev_kv_keeps_a_final_state(void **state)
{
    fixture_t *f = *state;

    put(f, "op-2", FERRY_OP_COMPLETE, 20);
    delete_bare(f, "op-2", 21);
    assert_int_equal(f->seen.n, 2);
    assert_int_equal(f->seen.type, COORD_EVENT_DELETE);
    assert_int_equal(f->seen.state, FERRY_OP_COMPLETE);
}

/* Neither etcd nor the view has the record: the delete is still reported,
 * by its request ID, EXPIRED. */
static void test_delete_unknown_to_the_view_is_reported_by_id(void **state)
{
    fixture_t *f = *state;

    delete_bare(f, "op-3", 30);
    assert_int_equal(f->seen.n, 1);
    assert_int_equal(f->seen.type, COORD_EVENT_DELETE);
    assert_string_equal(f->seen.request_id, "op-3");
    assert_int_equal(f->seen.state, FERRY_OP_EXPIRED);
    assert_int_equal(f->seen.revision, 30);
}

/* A revision etcd sent in fragments (more) is in the view only in part
 * until its last: a read of the view meanwhile answers the revision
 * before it as its header, so a client that reads a record that revision
 * deletes in a later fragment, then watches from after the header, still
 * gets that delete. (It answered the partial revision: the client's Watch
 * started after it and missed the delete for good.) */
static void test_a_partial_revision_is_not_a_reads_header(void **state)
{
    fixture_t *f = *state;
    coord_record_t rec;
    int64_t header = 0;
    bool answered = false;
    char msg[256];

    put(f, "op-a", FERRY_OP_REGISTERED, 40);
    put(f, "op-b", FERRY_OP_REGISTERED, 41);
    assert_int_equal(coord_registry_revision(&f->r), 41);

    /* A lease's end at 42: op-a's delete in a first fragment, op-b's to come. */
    char key[64] = OPS_PREFIX "op-a";
    etcd_event_t ev = {.type = ETCD_EVENT_DELETE};
    ev.kv = (etcd_kv_t){.key = (uint8_t *)key, .key_len = strlen(key), .mod_revision = 42};
    registry_on_watch_events(&f->r, &ev, 1, 42, true);
    assert_int_equal(f->r.revision, 42);
    assert_int_equal(coord_registry_revision(&f->r), 41);
    assert_int_equal(
        coord_lookup_view(&f->r, "op-b", NULL, false, &rec, &header, &answered, msg, sizeof(msg)),
        FERRY_OK);
    assert_true(answered);
    assert_int_equal(header, 41); /* watching from 42 gets op-b's delete */
    coord_record_free(&rec);

    char key_b[64] = OPS_PREFIX "op-b";
    ev.kv = (etcd_kv_t){.key = (uint8_t *)key_b, .key_len = strlen(key_b), .mod_revision = 42};
    registry_on_watch_events(&f->r, &ev, 1, 42, false);
    assert_int_equal(coord_registry_revision(&f->r), 42);
    assert_null(view_find(&f->r.view, "op-b"));
}

/* A read from the view copies the record under r->lock and decodes it
 * after: a decode, whose cost the record's writer chose (all its metadata),
 * holds up no other reader or writer (audit-s33 H2). The answer is still
 * the record and revision the view held. */
static void test_a_view_read_decodes_outside_the_lock(void **state)
{
    fixture_t *f = *state;
    coord_record_t rec;
    int64_t header = 0;
    bool answered = false;
    char msg[256];

    put(f, "op-d", FERRY_OP_REGISTERED, 50);
    decode_lock = &f->r.lock;
    decodes = decodes_locked = 0;
    assert_int_equal(
        coord_lookup_view(&f->r, "op-d", NULL, false, &rec, &header, &answered, msg, sizeof(msg)),
        FERRY_OK);
    decode_lock = NULL;
    assert_true(answered);
    assert_int_equal(decodes, 1);
    assert_int_equal(decodes_locked, 0);
    assert_string_equal(rec.op->request_id, "op-d");
    assert_int_equal(rec.op->state, FERRY_OP_REGISTERED);
    assert_int_equal(header, 50);
    coord_record_free(&rec);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_delete_without_prev_kv_is_reported_from_the_view,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_delete_without_prev_kv_keeps_a_final_state, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_delete_unknown_to_the_view_is_reported_by_id, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_partial_revision_is_not_a_reads_header, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_a_view_read_decodes_outside_the_lock, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
