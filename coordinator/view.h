/*
 * view.h: the coordinator's in-memory view of <prefix>ops/, fed by one etcd
 * watch. A hash map from request ID to the record as stored (protobuf bytes,
 * its metadata the bytes the passive worker registered: registry_record.c)
 * plus the few fields the registry decides on without decoding, and what
 * each client host's records take (the bytes stored, by the host its
 * Register came from: --stored-mib-per-peer).
 *
 * Invariant: an entry's mod_revision only grows, deletes included. view_upsert
 * ignores a record older than the one it holds, so the write-through of the
 * coordinator's own writes and the watch event for the same write can
 * arrive in either order. A delete the coordinator itself made leaves a
 * tombstone (view_bury: an entry without bytes, at the delete's revision)
 * so that an older PUT arriving later from the watch cannot bring the
 * record back; the registry drops tombstones (view_prune) once its watch has
 * applied their revision, and at most VIEW_MAX_TOMBSTONES are kept (the
 * oldest goes first), so they cost little memory. Deletes seen by the watch
 * itself need no tombstone: the registry drops a write-through at a revision
 * the watch has already applied (registry_view_put).
 *
 * Not thread-safe: the registry guards a view with its own lock.
 */
#ifndef FERRY_COORD_VIEW_H
#define FERRY_COORD_VIEW_H

#include <stddef.h>
#include <stdint.h>

#include <ferry/status.h>

#include "common/op_state.h"
#include "peers.h"

typedef struct view_entry {
    char *request_id;
    uint8_t *bytes; /* the stored Operation, packed */
    size_t len;
    int64_t mod_revision;
    ferry_op_state_t state;       /* the record's state, as its writer said */
    char *host;                   /* its owner_host; NULL when it has none (or a tombstone) */
    struct view_entry *next;      /* in its bucket */
    struct view_entry *tomb_prev; /* in view->tombs, when a tombstone */
    struct view_entry *tomb_next;
} view_entry_t;

/* What etcd keeps for a record beside its value and request ID, about: its
 * key's prefix, the revisions, version and lease of its KeyValue, the
 * revision that keys it in the database. A host's records are counted
 * with it (view_host_bytes), so that many small records count near what
 * they cost etcd. */
#define VIEW_RECORD_OVERHEAD 96

/* Tombstones kept at most; beyond it the oldest is dropped. */
#define VIEW_MAX_TOMBSTONES 4096

typedef struct {
    view_entry_t **buckets;
    size_t n_buckets;                        /* a power of two */
    size_t n_entries;                        /* records, tombstones not counted */
    size_t n_by_state[FERRY_OP_STATE_COUNT]; /* records by state; sums to n_entries */
    view_entry_t *tombs;                     /* tombstones, oldest first (doubly linked) */
    view_entry_t *tombs_last;                /* the newest */
    size_t n_tombs;
    /* Records by size class: [k] counts those of k significant bits of
     * length (view_largest). */
    size_t n_by_size[65];
    /* The bytes of the records of each owner_host, with their IDs and
     * VIEW_RECORD_OVERHEAD (records without one are not counted). A host whose entry could not be
     * made (no memory) is counted short: the share it feeds then lets more through, never less. */
    coord_peers_t *by_host;
} view_t;

ferry_status_t view_init(view_t *view);
void view_cleanup(view_t *view);
void view_clear(view_t *view);

/* Copies bytes in. A record with mod_revision <= the held one is ignored.
 * state and host are the record's state and owner_host (the caller has
 * decoded it; a state outside the table counts as UNSPECIFIED; host NULL
 * or empty: none). */
ferry_status_t view_upsert(view_t *view, const char *request_id, const uint8_t *bytes, size_t len,
                           int64_t mod_revision, ferry_op_state_t state, const char *host);

/* Removes the entry (record or tombstone) if its mod_revision is <=
 * mod_revision. */
void view_remove(view_t *view, const char *request_id, int64_t mod_revision);

/* A delete at mod_revision: leaves a tombstone there, unless the view holds
 * something newer. */
ferry_status_t view_bury(view_t *view, const char *request_id, int64_t mod_revision);

/* Drops the tombstones at or below mod_revision. */
void view_prune(view_t *view, int64_t mod_revision);

/* An upper bound on the largest record the view holds now (its length
 * rounded up to a power of two, at most twice it); 0 when it holds none. */
size_t view_largest(const view_t *view);

/* The bytes of the records whose owner_host is `host`, each with its
 * request ID and VIEW_RECORD_OVERHEAD. */
size_t view_host_bytes(const view_t *view, const char *host);
/* What the record e counts in its host's tally: its bytes, its ID and
 * VIEW_RECORD_OVERHEAD. */
size_t view_entry_cost(const view_entry_t *e);
/* The hosts that own a record. */
size_t view_hosts(const view_t *view);

/* The record, or NULL when absent or deleted. Valid until the next change to
 * the view. */
const view_entry_t *view_find(const view_t *view, const char *request_id);

/* The longest bucket's entries, tombstones counted: what a find or an
 * upsert may walk (for tests). */
size_t view_max_chain(const view_t *view);

#endif /* FERRY_COORD_VIEW_H */
