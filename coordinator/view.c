/*
 * view.c: the chained hash map of view.h, doubling at load 1. Its keys are
 * request IDs, which any client picks through Register, so they are hashed
 * with the process's secret key (common/keyed_hash.h): with a hash known in
 * advance they could all be made to share one chain, and every upsert and
 * find under the registry's lock would walk it (audit-s33 H2). A
 * tombstone is an entry with bytes == NULL, also linked on view->tombs.
 * A record's state is counted in view->n_by_state, its length's size
 * class in view->n_by_size, and its cost (view_entry_cost) in view->by_host
 * under its host, while it is a record.
 */
#include "view.h"

#include <stdlib.h>
#include <string.h>

#include "common/keyed_hash.h"

#define VIEW_INITIAL_BUCKETS 256

/* The number of significant bits of len: 0 for 0, 64 at most. */
static unsigned size_class(size_t len)
{
    return len == 0 ? 0 : 64u - (unsigned)__builtin_clzll((unsigned long long)len);
}

size_t view_largest(const view_t *view)
{
    for (unsigned k = 64; k > 0; k--) {
        if (view->n_by_size[k] > 0) {
            return k >= 64 ? SIZE_MAX : ((size_t)1 << k) - 1;
        }
    }
    return 0;
}

ferry_status_t view_init(view_t *view)
{
    view->buckets = calloc(VIEW_INITIAL_BUCKETS, sizeof(*view->buckets));
    if (view->buckets == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    if (coord_peers_create(&view->by_host) != FERRY_OK) {
        free(view->buckets);
        view->buckets = NULL;
        return FERRY_ERR_NO_MEMORY;
    }
    view->n_buckets = VIEW_INITIAL_BUCKETS;
    view->n_entries = 0;
    memset(view->n_by_state, 0, sizeof(view->n_by_state));
    memset(view->n_by_size, 0, sizeof(view->n_by_size));
    view->tombs = NULL;
    view->tombs_last = NULL;
    view->n_tombs = 0;
    return FERRY_OK;
}

size_t view_entry_cost(const view_entry_t *e)
{
    return e->len + strlen(e->request_id) + VIEW_RECORD_OVERHEAD;
}

/* Takes e's cost back from its host's tally and forgets its host. */
static void host_drop(view_t *view, view_entry_t *e)
{
    if (e->host != NULL) {
        coord_peers_sub(view->by_host, e->host, view_entry_cost(e));
        free(e->host);
        e->host = NULL;
    }
}

static void entry_free(view_entry_t *e)
{
    free(e->request_id);
    free(e->bytes);
    free(e->host);
    free(e);
}

void view_clear(view_t *view)
{
    for (size_t i = 0; i < view->n_buckets; i++) {
        view_entry_t *e = view->buckets[i];
        while (e != NULL) {
            view_entry_t *next = e->next;
            host_drop(view, e);
            entry_free(e);
            e = next;
        }
        view->buckets[i] = NULL;
    }
    view->n_entries = 0;
    memset(view->n_by_state, 0, sizeof(view->n_by_state));
    memset(view->n_by_size, 0, sizeof(view->n_by_size));
    view->tombs = NULL;
    view->tombs_last = NULL;
    view->n_tombs = 0;
}

void view_cleanup(view_t *view)
{
    if (view->buckets == NULL) {
        return;
    }
    view_clear(view);
    free(view->buckets);
    view->buckets = NULL;
    coord_peers_destroy(view->by_host);
    view->by_host = NULL;
}

static view_entry_t **slot_of(const view_t *view, const char *id)
{
    view_entry_t **slot = &view->buckets[ferry__keyed_hash_str(id) & (view->n_buckets - 1)];
    while (*slot != NULL && strcmp((*slot)->request_id, id) != 0) {
        slot = &(*slot)->next;
    }
    return slot;
}

static void grow(view_t *view)
{
    size_t n = view->n_buckets * 2;
    view_entry_t **buckets = calloc(n, sizeof(*buckets));
    if (buckets == NULL) {
        return; /* keep the longer chains; still correct */
    }
    for (size_t i = 0; i < view->n_buckets; i++) {
        view_entry_t *e = view->buckets[i];
        while (e != NULL) {
            view_entry_t *next = e->next;
            size_t b = ferry__keyed_hash_str(e->request_id) & (n - 1);
            e->next = buckets[b];
            buckets[b] = e;
            e = next;
        }
    }
    free(view->buckets);
    view->buckets = buckets;
    view->n_buckets = n;
}

/* The tombstone list is doubly linked with its last entry kept: a delete
 * (view_bury) appends and a revived or dropped tombstone leaves in O(1),
 * not in a walk over up to VIEW_MAX_TOMBSTONES under the registry's lock. */
static void tomb_unlink(view_t *view, view_entry_t *e)
{
    if (e->tomb_prev != NULL) {
        e->tomb_prev->tomb_next = e->tomb_next;
    } else {
        view->tombs = e->tomb_next;
    }
    if (e->tomb_next != NULL) {
        e->tomb_next->tomb_prev = e->tomb_prev;
    } else {
        view->tombs_last = e->tomb_prev;
    }
    e->tomb_prev = e->tomb_next = NULL;
    view->n_tombs--;
}

static void tomb_append(view_t *view, view_entry_t *e)
{
    e->tomb_prev = view->tombs_last;
    e->tomb_next = NULL;
    if (view->tombs_last != NULL) {
        view->tombs_last->tomb_next = e;
    } else {
        view->tombs = e;
    }
    view->tombs_last = e;
    view->n_tombs++;
}

/* Unlinks e (at *slot) from the map and frees it. */
static void entry_drop(view_t *view, view_entry_t **slot)
{
    view_entry_t *e = *slot;

    *slot = e->next;
    if (e->bytes == NULL) {
        tomb_unlink(view, e);
    } else {
        view->n_entries--;
        view->n_by_state[e->state]--;
        view->n_by_size[size_class(e->len)]--;
        host_drop(view, e);
    }
    entry_free(e);
}

/* The entry for request_id, created empty (a tombstone-to-be, not yet
 * counted or listed) if absent. */
static view_entry_t *entry_get(const char *request_id, view_entry_t **slot)
{
    view_entry_t *e = *slot;

    if (e != NULL) {
        return e;
    }
    e = calloc(1, sizeof(*e));
    if (e == NULL || (e->request_id = strdup(request_id)) == NULL) {
        free(e);
        return NULL;
    }
    *slot = e;
    return e;
}

ferry_status_t view_upsert(view_t *view, const char *request_id, const uint8_t *bytes, size_t len,
                           int64_t mod_revision, ferry_op_state_t state, const char *host)
{
    view_entry_t **slot = slot_of(view, request_id);
    view_entry_t *e = *slot;
    uint8_t *copy;
    char *host_copy = NULL;

    if (e != NULL && e->mod_revision >= mod_revision) {
        return FERRY_OK; /* older than the record or tombstone held */
    }
    copy = malloc(len > 0 ? len : 1);
    if (copy == NULL || (host != NULL && host[0] != '\0' && (host_copy = strdup(host)) == NULL)) {
        free(copy);
        return FERRY_ERR_NO_MEMORY;
    }
    memcpy(copy, bytes, len);
    e = entry_get(request_id, slot);
    if (e == NULL) {
        free(copy);
        free(host_copy);
        return FERRY_ERR_NO_MEMORY;
    }
    if (e->bytes == NULL) {
        if (e->mod_revision != 0) {
            tomb_unlink(view, e); /* a tombstone comes back to life */
        }
        view->n_entries++;
    } else {
        view->n_by_state[e->state]--;
        view->n_by_size[size_class(e->len)]--;
        host_drop(view, e);
    }
    free(e->bytes);
    e->bytes = copy;
    e->len = len;
    /* No memory for the host's tally: the record is held all the same,
     * and counted short (view_t.by_host). */
    if (host_copy != NULL &&
        coord_peers_add(view->by_host, host_copy, view_entry_cost(e), 0) == FERRY_OK) {
        e->host = host_copy;
    } else {
        free(host_copy);
    }
    view->n_by_size[size_class(len)]++;
    e->mod_revision = mod_revision;
    e->state = (int)state >= 0 && (int)state < FERRY_OP_STATE_COUNT
                   ? state
                   : FERRY__V1__OPERATION_STATE__OPERATION_STATE_UNSPECIFIED;
    view->n_by_state[e->state]++;
    if (view->n_entries + view->n_tombs > view->n_buckets) {
        grow(view);
    }
    return FERRY_OK;
}

void view_remove(view_t *view, const char *request_id, int64_t mod_revision)
{
    view_entry_t **slot = slot_of(view, request_id);

    if (*slot == NULL || (*slot)->mod_revision > mod_revision) {
        return;
    }
    entry_drop(view, slot);
}

ferry_status_t view_bury(view_t *view, const char *request_id, int64_t mod_revision)
{
    view_entry_t **slot = slot_of(view, request_id);
    view_entry_t *e = *slot;

    if (e != NULL && e->mod_revision >= mod_revision) {
        return FERRY_OK;
    }
    e = entry_get(request_id, slot);
    if (e == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    if (e->bytes != NULL) {
        view->n_entries--;
        view->n_by_state[e->state]--;
        view->n_by_size[size_class(e->len)]--;
        host_drop(view, e);
        free(e->bytes);
        e->bytes = NULL;
        e->len = 0;
    } else if (e->mod_revision != 0) {
        tomb_unlink(view, e);
    }
    e->mod_revision = mod_revision;
    tomb_append(view, e);
    if (view->n_tombs > VIEW_MAX_TOMBSTONES) {
        view_remove(view, view->tombs->request_id, view->tombs->mod_revision);
    }
    if (view->n_entries + view->n_tombs > view->n_buckets) {
        grow(view);
    }
    return FERRY_OK;
}

void view_prune(view_t *view, int64_t mod_revision)
{
    view_entry_t *t = view->tombs;

    while (t != NULL) {
        view_entry_t *next = t->tomb_next;
        if (t->mod_revision <= mod_revision) {
            view_remove(view, t->request_id, t->mod_revision);
        }
        t = next;
    }
}

size_t view_host_bytes(const view_t *view, const char *host)
{
    return coord_peers_held(view->by_host, host);
}

size_t view_hosts(const view_t *view)
{
    return coord_peers_count(view->by_host);
}

const view_entry_t *view_find(const view_t *view, const char *request_id)
{
    const view_entry_t *e = *slot_of(view, request_id);
    return e != NULL && e->bytes != NULL ? e : NULL;
}

size_t view_max_chain(const view_t *view)
{
    size_t most = 0;

    for (size_t i = 0; i < view->n_buckets; i++) {
        size_t n = 0;
        for (const view_entry_t *e = view->buckets[i]; e != NULL; e = e->next) {
            n++;
        }
        most = n > most ? n : most;
    }
    return most;
}
