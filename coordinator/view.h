/*
 * view.h: the coordinator's in-memory view of <prefix>ops/, fed by one etcd
 * watch. A hash map from request ID to the record as stored (protobuf bytes)
 * plus the few fields the registry decides on without decoding.
 *
 * Invariant: an entry's mod_revision only grows. view_upsert ignores a
 * record older than the one it holds, so the write-through of the
 * coordinator's own writes and the watch event for the same write can
 * arrive in either order.
 *
 * Not thread-safe: the registry guards a view with its own lock.
 */
#ifndef FERRY_COORD_VIEW_H
#define FERRY_COORD_VIEW_H

#include <stddef.h>
#include <stdint.h>

#include <ferry/status.h>

typedef struct view_entry {
    char *request_id;
    uint8_t *bytes; /* the stored Operation, packed */
    size_t len;
    int64_t mod_revision;
    struct view_entry *next;
} view_entry_t;

typedef struct {
    view_entry_t **buckets;
    size_t n_buckets; /* a power of two */
    size_t n_entries;
} view_t;

ferry_status_t view_init(view_t *view);
void view_cleanup(view_t *view);
void view_clear(view_t *view);

/* Copies bytes in. A record with mod_revision <= the held one is ignored. */
ferry_status_t view_upsert(view_t *view, const char *request_id, const uint8_t *bytes, size_t len,
                           int64_t mod_revision);

/* Removes the entry if its mod_revision is <= mod_revision. */
void view_remove(view_t *view, const char *request_id, int64_t mod_revision);

/* NULL when absent. Valid until the next change to the view. */
const view_entry_t *view_find(const view_t *view, const char *request_id);

#endif /* FERRY_COORD_VIEW_H */
