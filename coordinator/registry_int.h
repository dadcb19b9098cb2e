/*
 * registry_int.h: the registry's insides, shared by its files: registry.c
 * (create, view, watch, health, maintenance), registry_ops.c (register,
 * reads, the transition), registry_batch.c (shared Register transactions),
 * registry_lease.c (lease tokens), registry_list.c (keep-alive, list),
 * registry_record.c (the stored record), registry_claim_end.c (claims that
 * end) and registry_unwrite.c (removals failed calls leave).
 */
#ifndef FERRY_COORD_REGISTRY_INT_H
#define FERRY_COORD_REGISTRY_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include <openssl/evp.h>

#include "registry.h"
#include "validate.h"
#include "view.h"

#define COORD_LEASE_KEY_LEN 32 /* bytes of the key lease tokens derive from */

/* The longest key: "<prefix>claims/<request_id>" with both at their limit. */
#define REGISTRY_KEY_MAX (COORD_PREFIX_MAX + sizeof("claims/") - 1 + COORD_REQUEST_ID_MAX)

/* A key the registry built: bytes[len] is NUL. */
typedef struct {
    char bytes[REGISTRY_KEY_MAX + 1];
    size_t len;
} registry_key_t;

/* Transactions of Registers in flight at once: normally one; Registers
 * that come while it is wait and go together in the next
 * (registry_batch.c). One batched most and cost the least CPU per Register
 * at 8 clients (bench/NOTES.md: against 2, 4, and no batching). Another
 * may start only while the youngest in flight has been out
 * REGISTRY_BATCH_STALL_MS (as long as the etcd client gives a read on one
 * member) and the etcd client suspects a member (one that holds writes for
 * etcd's whole timeout: frozen, or a follower whose leader died), up to
 * REGISTRY_BATCH_INFLIGHT_MAX in all, so that the Registers behind a held
 * transaction go to a member that answers rather than wait out its
 * timeout. */
#define REGISTRY_BATCH_STALL_MS     1000
#define REGISTRY_BATCH_INFLIGHT_MAX 4

/* The most bytes of keys and values one shared transaction carries (each
 * write counted as registry_write_bytes). etcd refuses a request over its
 * --max-request-bytes (1.5 MiB by default) and its gRPC server one over
 * that + 0.5 MiB; Register metadata may be 1 MiB, so 64 Registers of
 * 24 KiB each would already be refused. A write over the budget on its own
 * still goes, alone. */
#define REGISTRY_BATCH_BYTES (1u << 20)

/* One Register's create-if-absent write (registry_write). */
typedef struct registry_write {
    const void *key;
    size_t key_len;
    const uint8_t *value;
    size_t value_len;
    int64_t lease;
    /* A key that must be absent for the write to apply (NULL: none): the
     * fence a removal of the record puts first when the write's outcome was
     * unknown (registry_unwrite.c), so that etcd applying the write only
     * later (a member that held it, frozen) fails it then. */
    const void *fence;
    size_t fence_len;
    /* Whether the caller has stopped waiting for the answer (NULL: it
     * never does): a write still queued then is not sent. Asked every
     * REGISTRY_BATCH_POLL_MS while the write is queued, under batch_lock,
     * on the owner's thread or a leader's; true means late (below). */
    bool (*gone)(void *arg);
    void *gone_arg;
    /* When its caller's etcd requests must end (etcd_set_deadline; 0:
     * none): the transaction it goes in ends by the latest of its
     * members'. */
    int64_t deadline_ms;
    /* Out: etcd_txn's status (FERRY_ERR_TIMED_OUT with late, FERRY_ERR_UNAVAILABLE with
     * expired: never sent); created: the key was absent and now holds value (false with
     * FERRY_OK: it exists); revision: the transaction's. */
    ferry_status_t status;
    bool created;
    int64_t revision;
    bool no_space;    /* status is etcd out of space (etcd_no_space, of the thread that sent it) */
    bool answered;    /* found its key taken in a shared transaction */
    bool late;        /* its caller was gone while it was queued: not sent */
    bool expired;     /* its deadline_ms came while it was queued: not sent */
    bool done, alone; /* under batch_lock: ran; to run alone */
    /* A lease named in its shared transaction was gone, among several: it
     * goes again with the others of its lease (regroup, cleared when it is
     * queued again) in a transaction of that lease only (by_lease). */
    bool regroup, by_lease;
    struct registry_write *next;
} registry_write_t;

/* Why health says NOT_SERVING, as the maintenance thread last found. */
typedef enum {
    REGISTRY_ETCD_CANNOT_COMMIT, /* unreachable, its TLS refused, no leader or quorum */
    REGISTRY_ETCD_REFUSES_USER,  /* the coordinator's credentials (UNAUTHENTICATED) */
    REGISTRY_ETCD_CANNOT_READ,   /* the coordinator's user may not read its prefix */
    REGISTRY_ETCD_CANNOT_WRITE,  /* ... may read its prefix but not write it */
} registry_unhealthy_t;

struct coord_registry {
    etcd_client_t *etcd;
    char *prefix;        /* "/ferry/" */
    char *ops_prefix;    /* "/ferry/ops/" */
    char *claims_prefix; /* "/ferry/claims/" */
    int64_t default_ttl_s;
    coord_registry_params_t params;

    pthread_mutex_t lock; /* guards view, registering, unseen, revision, synced,
                           * unwrites, claim_ends_waiting */
    view_t view;
    /* Registers this replica let past their host's share
     * (params.max_stored_per_peer) and has not yet seen in the view, by
     * host: the bytes each will store (registry_ops.c stored_take). */
    coord_peers_t *registering;
    /* Records this replica wrote while its view was not live (their
     * write-through skipped: a lost watch, a reload), by host: their
     * bytes, counted for the share until the view has applied
     * unseen_revision, the last of their revisions (0: none). */
    coord_peers_t *unseen;
    int64_t unseen_revision;
    _Atomic uint64_t stored_refusals; /* Registers refused by that share */
    /* The last revision the view applied (the load's, then each watch
     * event's): every change up to it is in the view. Write-throughs at or
     * below it are dropped (registry_view_put). */
    int64_t revision;
    /* The watch is applying `revision` (its events come one at a time, and
     * a revision etcd sent in fragments over several calls): reads of the
     * view answer `whole`, the last revision applied whole, as their
     * header (registry_whole_revision_locked), so that a client that
     * watches from after it still gets the rest of `revision`. */
    bool partial;
    int64_t whole;
    bool synced; /* the view is loaded and its watch is connected */
    bool reload; /* the watch cannot resume: reload the view */
    /* on_watch_state ran since load_view started the current watch: it, not
     * load_view, says whether the view is synced (the first stream's
     * "created" calls no on_state, so the first call is a loss). */
    bool watch_state_seen;

    etcd_watch_t *watch; /* touched by the maintenance thread only */
    /* etcd can take the coordinator's writes, as the maintenance thread
     * last found (health's SERVING). While not, the removals failed calls
     * leave wait (registry_unwrite.c), and calls that etcd fails say why
     * (registry_etcd_fail): unhealthy_cause, since unhealthy_since_ms
     * (CLOCK_REALTIME ms). */
    atomic_bool healthy;
    _Atomic int64_t unhealthy_since_ms;
    _Atomic int unhealthy_cause; /* registry_unhealthy_t */
    /* Until a write probe passes (probe_write: that etcd lets this
     * coordinator's user write its prefix), health checks send one every
     * WRITE_PROBE_MS (write_probe_at_ms, CLOCK_MONOTONIC), and one that
     * etcd refused (write_refused) makes them fail. Create's thread, then
     * the maintenance thread's only. */
    bool write_unproven, write_refused;
    int64_t write_probe_at_ms;
    /* Claims whose key went, by where the expiry check was decided: [0] on
     * the view (finished: nothing to expire), [1] by the transition (an
     * expiry, or a view that could not tell). */
    _Atomic uint64_t claim_ends[2];

    pthread_t maint_thread;
    pthread_cond_t maint_cond; /* with lock; wakes the maintenance thread */
    bool stopping;             /* guarded by lock */

    /* The lease secret (registry_lease.c). lease_key_lock guards the
     * lease_key_loading/round/status below and is never held across the
     * etcd transaction that loads the key; lease_key is written once, by
     * the one loader, before lease_key_ready is set. */
    pthread_mutex_t lease_key_lock;
    pthread_cond_t lease_key_cond;   /* with lease_key_lock: a load ended */
    bool lease_key_loading;          /* a thread is loading the key */
    unsigned long lease_key_round;   /* loads ended so far */
    ferry_status_t lease_key_status; /* how the last one ended */
    atomic_bool lease_key_ready;
    uint8_t lease_key[COORD_LEASE_KEY_LEN];
    /* HMAC-SHA256 keyed with lease_key, set up once with it (NULL: could
     * not be made; tokens then use the one-shot HMAC); only duplicated
     * (a const use) after. */
    EVP_MAC_CTX *lease_mac;
    /* SHA-256 for access tokens, fetched once at create (OpenSSL 3's
     * one-shot SHA256() looks the algorithm up on every call: 5% of a
     * Lookup's CPU); NULL: SHA256() is used. Only read after create. */
    EVP_MD *token_md;

    /* Registers waiting for a transaction (registry_batch.c). */
    pthread_mutex_t batch_lock;
    pthread_cond_t batch_cond; /* a transaction ended */
    registry_write_t *batch_head, **batch_tail;
    /* When each transaction in flight was led (CLOCK_MONOTONIC ms, never 0
     * on Linux, which counts from boot; 0: a free slot). */
    int64_t batch_led[REGISTRY_BATCH_INFLIGHT_MAX];
    int64_t batch_stall_ms; /* REGISTRY_BATCH_STALL_MS (tests set their own) */

    /* Removals of records failed Registers may have left, waiting for etcd
     * to answer again (registry_unwrite.c); guarded by lock. unwrite_bytes:
     * what they hold, at most REGISTRY_UNWRITE_BYTES. */
    struct registry_unwrite *unwrites;
    size_t unwrite_bytes;

    /* Claim ends whose write failed, waiting to be tried again
     * (registry_claim_end.c); guarded by lock. */
    struct claim_end_job *claim_ends_waiting;
    size_t n_claim_ends_waiting;
    /* Claim ends in params.exec (queued or running), at most
     * REGISTRY_CLAIM_ENDS_QUEUED_MAX, and those waiting for room there,
     * oldest first; guarded by lock. */
    size_t claim_ends_queued;
    struct claim_end_job *claim_ends_pending, *claim_ends_pending_tail;
    size_t n_claim_ends_pending;

    int test_load_fails; /* params'; the maintenance thread counts it down */
};

/* Builds "<sub_prefix><id>" (sub_prefix: r->ops_prefix or r->claims_prefix)
 * into *key. FERRY_ERR_INVALID_ARGUMENT, with a message naming request_id,
 * when it does not fit: never a truncated key. */
ferry_status_t registry_key(const char *sub_prefix, const char *id, registry_key_t *key, char *msg,
                            size_t cap);

/* --- the record's encoding (registry_record.c) --- */

/* Packs op (its metadata NULL) with md_len bytes of md as its metadata
 * field, as they are: every write of a record goes through here, so the
 * metadata keeps the bytes Register stored. *bytes_p is malloc'd. */
ferry_status_t registry_record_pack(const Ferry__V1__Operation *op, const uint8_t *md,
                                    size_t md_len, uint8_t **bytes_p, size_t *len_p);

/* Decodes a stored record: rec->op without its metadata, rec->md a copy of
 * the metadata's bytes (NULL when the record has none).
 * FERRY_ERR_INVALID_ARGUMENT for a malformed record (its metadata field
 * repeated, among others). */
ferry_status_t registry_record_decode(const uint8_t *bytes, size_t len, coord_record_t *rec);

/* The last revision the view holds whole: `revision`, or the one before
 * while it is partial. Caller holds r->lock. */
int64_t registry_whole_revision_locked(const coord_registry_t *r);

/* The registry's watch handler (etcd_watch_params_t.on_events): applies
 * each event to the view and reports it (params.on_event), a DELETE whose
 * previous record etcd did not send included. Runs on the watch thread;
 * takes r->lock. Not static so that tests can feed it events. */
void registry_on_watch_events(void *arg, const etcd_event_t *events, size_t n_events,
                              int64_t revision, bool more);

/* Writes w->value at w->key if the key is absent, in a transaction shared
 * with the Registers that wait beside it (params.register_batch at most);
 * fills w's out fields. */
void registry_write(coord_registry_t *r, registry_write_t *w);

/* Whether etcd refused a write before applying any of it (registry_batch.c
 * says which failures are); any other failure of a write that was sent may
 * have come after etcd applied it. */
bool registry_refused_before_apply(ferry_status_t status);

/* --- a failed Register's record (registry_unwrite.c) --- */

/* The most that removals waiting for etcd may hold (their records' bytes
 * and themselves): a record may be 1 MiB. */
#define REGISTRY_UNWRITE_BYTES (16u << 20)

/* Removes the record at <ops prefix><id> if it still holds exactly `value`,
 * the bytes a Register wrote on the caller's lease `lease` before its
 * transaction failed in a way that may have been applied. Off the caller's
 * path (params.exec; inline without one), tried again a bounded number of
 * times while etcd cannot be reached. Takes `value` (malloc'd). */
void registry_unwrite_later(coord_registry_t *r, const char *id, int64_t lease, uint8_t *value,
                            size_t value_len, const registry_key_t *fence);

/* A new fence key, "<prefix>fences/<32 hex digits, random>", for a Register
 * whose record a removal may have to take back (registry_write_t.fence).
 * False: no randomness. */
bool registry_fence_new(coord_registry_t *r, registry_key_t *fence);

/* Revokes `lease`, which the failed call for request ID `id` granted for
 * itself, or may have (unsure: a grant whose answer never came, which etcd
 * may still apply, so a "no such lease" is tried again too), the same way:
 * off the caller's path, tried again while etcd cannot be reached. */
void registry_revoke_later(coord_registry_t *r, const char *id, int64_t lease, bool unsure);

/* Queues again the removals that could not reach etcd; the maintenance
 * thread calls it while etcd can commit. */
void registry_unwrites_retry(coord_registry_t *r);

/* Frees the removals still waiting (registry destroy, once nothing can
 * queue them again). */
void registry_unwrites_free(coord_registry_t *r);

/* Applies a record the coordinator itself just wrote (write-through); host:
 * its owner_host; created: the write made it (a Register), so while the
 * view is not live it counts for its host in r->unseen (a rewrite's
 * record is counted already, and a delete does not say). */
void registry_view_put(coord_registry_t *r, const char *id, const uint8_t *bytes, size_t len,
                       int64_t mod_revision, ferry_op_state_t state, const char *host,
                       bool created);

/* Removes a record the coordinator itself just deleted (write-through). */
void registry_view_remove(coord_registry_t *r, const char *id, int64_t mod_revision);

/* Turns an operation ERRORED when its claim (lease `claim_lease`) expired;
 * `ended`: the revision that deleted the claim's key, or one at which it
 * was already gone (a load's snapshot); only a record CLAIMED before it is
 * that claim (one written since was claimed again). 0: not known.
 * FERRY_OK when nothing is left to do: marked, or not that claim's record
 * any more, or the record (or its owner's lease) gone; otherwise the
 * failure, with msg. */
ferry_status_t registry_expire_claim(coord_registry_t *r, const char *id, int64_t claim_lease,
                                     int64_t ended, char *msg, size_t cap);

/* Whether the view settles a claim key's deletion at revision `ended`
 * without etcd (registry_ops.c says when). */
bool registry_claim_end_settled(coord_registry_t *r, const char *id, int64_t ended);

/* --- what a claim's end leaves to do (registry_claim_end.c) --- */

/* registry_expire_claim, off the caller's thread (params.exec; inline
 * without one), tried again until it is done. */
void registry_expire_claim_later(coord_registry_t *r, const char *id, int64_t claim_lease,
                                 int64_t ended);

/* Deletes the claim key of a record that left etcd CLAIMED, if the key was
 * last written at `claimed` (that claim's), the same way. */
void registry_delete_claim_key_later(coord_registry_t *r, const char *id, int64_t claimed);

/* Submits again the claim ends whose wait has passed; the maintenance
 * thread calls it while etcd can commit. */
void registry_claim_ends_retry(coord_registry_t *r);

/* How many claim ends wait to be tried again. */
size_t registry_claim_ends_waiting(coord_registry_t *r);
/* Claim ends waiting for room in params.exec (tests). */
size_t registry_claim_ends_pending(coord_registry_t *r);
/* How many claim ends params.exec holds at once (queued or running): one
 * Revoke of a lease with many claims must not queue one job per claim ahead
 * of every write submitted after it (audit-s33 L2). */
#define REGISTRY_CLAIM_ENDS_QUEUED_MAX 64

/* Gives up those still waiting (registry destroy, once nothing can submit
 * them again), with a warning each. */
void registry_claim_ends_free(coord_registry_t *r);

int64_t registry_now_ms(void);

/* --- the lease secret (registry_lease.c) --- */

/* Loads (or, first of all replicas, makes) the key lease tokens derive from.
 * FERRY_OK at once when it is loaded; FERRY_ERR_UNAVAILABLE while etcd is
 * unreachable; FERRY_ERR_TIMED_OUT when the thread's etcd deadline passed
 * while it waited for another thread's load. */
ferry_status_t registry_lease_key_load(coord_registry_t *r);

/* registry_lease_key_load for a call that needs the key: UNAVAILABLE with a
 * message when it cannot be loaded. */
ferry_status_t registry_lease_ready(coord_registry_t *r, char *msg, size_t cap);

/* Frees what the lease key holds (registry destroy). */
void registry_lease_cleanup(coord_registry_t *r);

/* The token of lease_id. Only after registry_lease_ready said FERRY_OK.
 * FERRY_ERR_NO_MEMORY (logged; token "") when OpenSSL cannot compute it. */
ferry_status_t registry_lease_token(coord_registry_t *r, int64_t lease_id,
                                    char token[COORD_LEASE_TOKEN_LEN + 1]);

/* FERRY_ERR_PERMISSION_DENIED, with a message naming lease_token and
 * `field` (the request field that carries lease_id), unless `token` is
 * lease_id's; UNAVAILABLE when the key cannot be loaded. Touches etcd only
 * to load the key. */
ferry_status_t registry_lease_check(coord_registry_t *r, const char *field, int64_t lease_id,
                                    const char *token, char *msg, size_t cap);

/* Writes the message into msg (cap bytes) and returns status, so a failure
 * reads as one step: return registry_fail(FERRY_ERR_X, msg, cap, "..."). */
ferry_status_t registry_fail(ferry_status_t status, char *msg, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The same for a failed etcd call: names etcd and what failed, without
 * internal detail (endpoints), which goes to the log; an UNAVAILABLE while
 * the maintenance thread's last check found etcd unable to take writes
 * (health NOT_SERVING) also says why and since when. */
ferry_status_t registry_etcd_fail(coord_registry_t *r, ferry_status_t status, char *msg, size_t cap,
                                  const char *what);
/* registry_etcd_fail for a call another thread sent (a shared
 * transaction's): no_space is that thread's etcd_no_space(). */
ferry_status_t registry_etcd_fail_as(coord_registry_t *r, ferry_status_t status, bool no_space,
                                     char *msg, size_t cap, const char *what);
/* etcd refused the coordinator's own user, role or certificate
 * (PERMISSION_DENIED, UNAUTHENTICATED): nothing of the call was applied,
 * and it is not the client's doing. */
bool registry_etcd_refused(ferry_status_t status);
/* True while the maintenance thread's last check found that etcd cannot
 * commit for anyone (unreachable, no leader or quorum); false while healthy
 * and while etcd refuses this replica alone (its credentials, its prefix),
 * when other replicas write on. */
bool registry_etcd_stuck(coord_registry_t *r);

#endif /* FERRY_COORD_REGISTRY_INT_H */
