/*
 * registry.h: the operation registry, the coordinator's whole state, kept in
 * etcd under these keys:
 *
 *   <prefix>ops/<request_id>     ferry.v1.Operation, on the owner's lease;
 *                                its metadata the bytes the passive worker
 *                                registered, never packed again
 *                                (registry_record.c)
 *   <prefix>claims/<request_id>  the claim lease ID, on the claim's lease
 *   <prefix>keys/lease           the key lease tokens derive from (no lease;
 *                                registry_lease.c)
 *
 * Registration is a create-if-absent transaction. Every state change goes
 * through one function (registry_transition in registry_ops.c): read, check the
 * state machine (common/op_state.h), write back in a transaction on the
 * record's mod_revision, retry on conflict, so two replicas never overwrite
 * each other.
 *
 * Reads are served from a view of ops/ (view.h) fed by one etcd watch on the
 * whole prefix. The coordinator's own writes go into the view as soon as
 * etcd acknowledges them, so the view is never older than what this replica
 * has acknowledged; a miss, or any read while the watch is down and etcd
 * answers, goes to etcd. While etcd cannot commit the view answers what it
 * holds, as last seen (nothing newer can be read).
 *
 * Events: the watch thread reports each change to the params' callbacks, in
 * revision order, after the view has applied it, with the change's own
 * revision:
 *   - a deleted record that was not final is reported as EXPIRED (its owner's
 *     lease ran out);
 *   - a deleted claim whose operation is still CLAIMED by that claim turns the
 *     operation ERRORED (claim expired), a transaction that params.exec runs so the
 *     watch thread never waits on an etcd write; so does, at each (re)load, a
 *     CLAIMED operation whose claim key is already gone (its lease ended
 *     while no replica was watching).
 *
 * Threads: all functions may be called from any thread. `lock` guards the
 * view, `revision` and `synced`. Callbacks run on the watch thread without
 * `lock` held. A maintenance thread pings etcd (health), reloads the view
 * when the watch cannot resume (compaction, or etcd down at start), and
 * queues again the removals of failed Registers' records that could not
 * reach etcd (registry_unwrite.c).
 */
#ifndef FERRY_COORD_REGISTRY_H
#define FERRY_COORD_REGISTRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <ferry/status.h>

#include "common/op_state.h"
#include "ferry/v1/coordinator.pb-c.h"
#include "etcd/etcd.h"
#include "exec.h"

typedef struct coord_registry coord_registry_t;

/* The longest key prefix, in bytes with its trailing '/' (--prefix). With
 * it and the longest request_id (validate.h) every key the registry builds
 * fits a fixed buffer; coord_registry_create refuses a longer one. */
#define COORD_PREFIX_MAX 256

/* Keys per etcd read when the view loads the store (--etcd-load-page). */
#define COORD_LOAD_PAGE 5000

/* Registers per etcd transaction (--register-batch): the default, and the
 * most. A Register is one compare and one put, or two compares when it is
 * fenced (registry_unwrite.c); etcd refuses a transaction of more than
 * --max-txn-ops, 128 by default, of either, so a transaction also holds at
 * most COORD_REGISTER_BATCH_MAX compares (registry_batch.c, take_batch). */
#define COORD_REGISTER_BATCH     64
#define COORD_REGISTER_BATCH_MAX 128

typedef enum {
    COORD_EVENT_PUT,
    COORD_EVENT_DELETE,
} coord_event_type_t;

typedef struct {
    etcd_client_t *etcd;
    const char *prefix;    /* "/ferry/"; ends with '/', at most COORD_PREFIX_MAX bytes */
    int64_t default_ttl_s; /* leases of Register and Claim when the caller says 0 */
    /* Keys per etcd read when the view loads claims/ and ops/; 0:
     * COORD_LOAD_PAGE. Every read is small and quick however large the
     * store, so none runs into the etcd client's timeout. */
    int64_t load_page;
    /* Registers per etcd transaction at most (registry_batch.c), up to
     * COORD_REGISTER_BATCH_MAX; 0: COORD_REGISTER_BATCH; 1: each alone. */
    int64_t register_batch;
    /* Bytes of records in etcd that one client host may own
     * (--stored-mib-per-peer): a Register that would take its host past
     * it is refused RESOURCE_EXHAUSTED. Counted over the view (every
     * replica's Registers) plus this replica's Registers in flight. 0: no
     * share. */
    size_t max_stored_per_peer;
    /* Runs claim-expiry transactions (off the watch thread), the revoke
     * of a lease a failed call made and the removal of a record a failed
     * Register may have left (off the caller's path); NULL: they run
     * inline. Stop it (coord_exec_stop) before the registry is destroyed,
     * and destroy it after: the jobs it drops as it stops use the
     * registry, and the watch submits to it until the registry's end. */
    coord_exec_t *exec;
    /* A record changed (PUT) or left (DELETE). `op` is stripped of metadata,
     * token hash and lease IDs; valid during the call. */
    void (*on_event)(void *arg, coord_event_type_t type, const Ferry__V1__Operation *op,
                     int64_t revision);
    /* The events reported since the last call hold every change of their
     * revisions: called after each etcd watch message, and etcd sends a
     * revision's events in one (a lease's end deletes every key on it at
     * one revision). May be NULL. */
    void (*on_events_done)(void *arg);
    /* The view was (re)loaded at `revision`, before its watch starts: changes
     * up to it are in the view but may never have been reported (the watch
     * could not resume: compaction). May be NULL. */
    void (*on_reload)(void *arg, int64_t revision);
    /* After on_reload, once the view answers reads again (its watch is
     * running, `synced`): records written while it did not (etcd down at
     * start, a reload after compaction; a Register's write-through is
     * skipped then) are in the view but were never reported as events, so
     * whoever waits for one looks again now. Like on_reload, on the thread
     * that loads (the maintenance thread, or coord_registry_create's
     * caller). May be NULL. */
    void (*on_synced)(void *arg);
    /* etcd became reachable (true) or unreachable (false). */
    void (*on_health)(void *arg, bool healthy);
    void *arg;
    /* Test seams (main.c fills them from FERRY_TEST_WRITE_THROUGH_GATE and
     * FERRY_TEST_LOAD_FAILS; NULL and 0 otherwise). test_write_through_gate:
     * a path; every write-through to the view waits (at most 30 s) until it
     * exists, so a test can let the watch apply later changes first.
     * test_load_fails: so many view loads fail first. */
    const char *test_write_through_gate;
    int test_load_fails;
} coord_registry_params_t;

ferry_status_t coord_registry_create(const coord_registry_params_t *params,
                                     coord_registry_t **registry_p);
void coord_registry_destroy(coord_registry_t *registry);

bool coord_registry_healthy(coord_registry_t *registry);

/* The last revision the view applied whole (or of its load): every change
 * up to it, none missing; 0 before the first load. */
int64_t coord_registry_revision(coord_registry_t *registry);

/* Whether the view holds a record of `request_id` (deleted ones not), as
 * last loaded or watched, live or not: it may have come without an event
 * (on_synced), so a wait for it should look again; the look decides. */
bool coord_registry_view_holds(coord_registry_t *registry, const char *request_id);

/* For metrics: the records the view holds, whether it is loaded with its
 * etcd watch connected, and the records by state (indexed by
 * ferry_op_state_t, as the state their last write gave them). */
void coord_registry_view_stats(coord_registry_t *registry, size_t *n_records_p, bool *live_p,
                               size_t n_by_state[FERRY_OP_STATE_COUNT]);

/* For metrics: the claims whose key went (finished, cancelled or expired)
 * whose end the view settled (the record was past CLAIMED at that revision:
 * no etcd read), and those checked by a transition (an expiry, or a view
 * that could not tell). Counted once the check is made. *waiting_p: the
 * writes a claim's end left (an expiry, a claim key's deletion) that etcd
 * refused, waiting to be tried again. *pending_p: the claim ends waiting
 * for room in params.exec (at most REGISTRY_CLAIM_ENDS_QUEUED_MAX are queued
 * there; one Revoke of a lease holding many claims ends them all at once). */
void coord_registry_claim_ends(coord_registry_t *registry, uint64_t *on_view_p, uint64_t *checked_p,
                               size_t *waiting_p, size_t *pending_p);

/* Every call below writes a message naming the cause into msg (cap bytes)
 * when it fails. */

/* A lease token: 64 lowercase hex characters (registry_lease.c). */
#define COORD_LEASE_TOKEN_LEN 64

typedef struct {
    int64_t revision;
    int64_t lease_id;
    int64_t ttl_s;
    char access_token[257];                      /* the caller's, or a new random one */
    char lease_token[COORD_LEASE_TOKEN_LEN + 1]; /* lease_id's */
} coord_register_out_t;

/* md: the request's metadata field as it arrived (md_len bytes; see
 * coord_validate_register_bytes), stored byte for byte; req->metadata is
 * its decoded copy, for the record's kind and the log. gone(gone_arg):
 * whether the caller has stopped waiting (NULL: it never does); a Register
 * still queued for a shared transaction then is not written
 * (FERRY_ERR_TIMED_OUT). host: the caller's host (rpc_call_peer_host),
 * stored as the record's owner_host and counted against
 * params.max_stored_per_peer. */
ferry_status_t coord_register(coord_registry_t *registry, const Ferry__V1__RegisterRequest *req,
                              const uint8_t *md, size_t md_len, const char *host,
                              bool (*gone)(void *arg), void *gone_arg, coord_register_out_t *out,
                              char *msg, size_t cap);

/* Registers refused because their host owned its share of the records
 * (max_stored_per_peer), and the hosts that own a record now. */
uint64_t coord_registry_stored_refusals(coord_registry_t *registry);
size_t coord_registry_stored_hosts(coord_registry_t *registry);

/* An operation as the registry hands it out: the record decoded but for
 * its metadata, which stays the bytes stored (those the passive worker
 * registered): op->metadata is always NULL; md holds the bytes where they
 * are shown, and is NULL (md_len 0) elsewhere. */
typedef struct {
    Ferry__V1__Operation *op;
    uint8_t *md;
    size_t md_len;
} coord_record_t;

/* Frees op and md and clears them. */
void coord_record_free(coord_record_t *rec);

/* Reads a record. token != NULL: it must match (PERMISSION_DENIED otherwise,
 * confirmed by etcd when the view's copy refused it) and rec->md is kept; token == NULL: rec->md is
 * NULL. Token hash and lease IDs are stripped always. linearizable: read etcd (a quorum read:
 * reflects every change acknowledged anywhere before the call) instead of the view. Free *rec with
 * coord_record_free. */
ferry_status_t coord_lookup(coord_registry_t *registry, const char *request_id, const char *token,
                            bool linearizable, coord_record_t *rec, int64_t *revision_p, char *msg,
                            size_t cap);

/* coord_lookup from the view alone, never waiting on etcd. *answered_p
 * false (and FERRY_OK): the view cannot answer (it lacks the record, its
 * watch is down while etcd answers, linearizable, or its copy refuses the
 * token, which may be an older registration's), and only coord_lookup can,
 * which may wait on etcd. */
ferry_status_t coord_lookup_view(coord_registry_t *registry, const char *request_id,
                                 const char *token, bool linearizable, coord_record_t *rec,
                                 int64_t *revision_p, bool *answered_p, char *msg, size_t cap);

typedef struct {
    coord_record_t rec; /* after the change, metadata bytes included */
    int64_t revision;
    int64_t claim_lease_id;
    int64_t ttl_s;
    char lease_token[COORD_LEASE_TOKEN_LEN + 1]; /* claim_lease_id's (Claim only) */
} coord_change_out_t;

ferry_status_t coord_claim(coord_registry_t *registry, const Ferry__V1__ClaimRequest *req,
                           coord_change_out_t *out, char *msg, size_t cap);
ferry_status_t coord_complete(coord_registry_t *registry, const Ferry__V1__CompleteRequest *req,
                              coord_change_out_t *out, char *msg, size_t cap);
ferry_status_t coord_cancel(coord_registry_t *registry, const Ferry__V1__CancelRequest *req,
                            coord_change_out_t *out, char *msg, size_t cap);

/* Deletes a final record (the owner is done with it). */
ferry_status_t coord_release(coord_registry_t *registry, const Ferry__V1__ReleaseRequest *req,
                             int64_t *revision_p, char *msg, size_t cap);

/* Renews a lease whose token the caller presents (PERMISSION_DENIED, with
 * no etcd call, otherwise). */
ferry_status_t coord_keepalive(coord_registry_t *registry, int64_t lease_id,
                               const char *lease_token, int64_t *ttl_p, char *msg, size_t cap);

/* Ends a lease whose token the caller presents (PERMISSION_DENIED, with no
 * etcd call, otherwise): every key on it goes, as at its expiry. */
ferry_status_t coord_revoke(coord_registry_t *registry, int64_t lease_id, const char *lease_token,
                            char *msg, size_t cap);

/* The token check of coord_keepalive and coord_revoke alone, without
 * waiting on anything: FERRY_OK when the token grants lease_id, or when the
 * lease key is not loaded yet (they check then); PERMISSION_DENIED
 * otherwise. For a completion-queue thread. */
ferry_status_t coord_lease_precheck(coord_registry_t *registry, int64_t lease_id,
                                    const char *lease_token, char *msg, size_t cap);

/* One page of records (stripped), filtered; out->next_page_token is set
 * when more may follow. Every page of one List is read at its first page's
 * revision (out->header->revision), carried in the token. Free with
 * ferry__v1__list_response__free_unpacked is NOT right: use coord_list_free. */
ferry_status_t coord_list(coord_registry_t *registry, const Ferry__V1__ListRequest *req,
                          Ferry__V1__ListResponse *out, char *msg, size_t cap);
void coord_list_free(Ferry__V1__ListResponse *out);

/* Removes what the response must never carry: the token hash and the lease
 * IDs (lease_id, claim_lease_id) always, the metadata unless
 * keep_metadata. */
void coord_strip(Ferry__V1__Operation *op, bool keep_metadata);

#endif /* FERRY_COORD_REGISTRY_H */
