/*
 * registry_unwrite.c: removing the record a failed Register may have left,
 * and the leases failed calls granted (or may have).
 *
 * A Register's create-if-absent transaction can fail after etcd applied it
 * (etcd unreachable once the request was sent, no answer in time, an
 * answer that could not be read). When the caller put the record on its
 * own lease (lease_id set: a worker's session lease, which it keeps alive
 * for its life) and the coordinator picked the access token, the record
 * may now sit in etcd under a token nobody was told: no one can Lookup,
 * Claim, Cancel or Release it, and the request ID stays taken for as long
 * as the worker keeps its lease. So coord_register hands the bytes it
 * wrote to registry_unwrite_later, which deletes <ops prefix><id> only if
 * its value is still exactly those bytes (an etcd VALUE compare). They hold
 * the hash of a fresh random token, so no other record can match: not a
 * retry's, not another caller's of the same ID. A record nobody holds the
 * token of cannot have changed since, so the compare fails only when the
 * failed transaction was not applied, or the record is already gone.
 *
 * Not applied yet is not never applied: a member that held the request
 * (frozen, a stuck disk) may hand it to the leader after the removal found
 * nothing, and the record then appeared for good (3 of 12 trials with a
 * follower frozen under the Register). So such a Register's transaction
 * also asks that a fence key of its own, "<prefix>fences/<random>", be
 * absent (registry_write_t.fence), and the removal puts that key, on the
 * caller's lease, in the same transaction as the delete, whichever way its
 * compare goes: once that is committed, the Register's transaction fails
 * whenever it comes. The fence goes with the lease; a lease already gone
 * took the record with it, and refuses the write too.
 *
 * Bounds: a removal runs on params.exec at once (COORD_EXEC_MUST, one per
 * failed Register, as a revoke after a failed call), off the caller's path,
 * whose answer must not wait for a second etcd timeout; while etcd cannot
 * commit (r->healthy false), not at once. One that cannot reach etcd, or
 * made then, waits in r->unwrites, and the maintenance thread queues it
 * again each time it finds etcd able to commit, REGISTRY_UNWRITE_TRIES
 * tries in all. At most REGISTRY_UNWRITE_BYTES of removals (each with the
 * record it compares) exist at once, queued or waiting: during an etcd
 * outage every failed Register makes one, and queued ones counted nowhere
 * could hold the queue's length in records. One that gives up, or finds
 * no room, is logged with its request ID and lease: the record then lives
 * as long as that lease.
 *
 * A lease a failed Register or Claim granted for itself, or a grant whose
 * answer never came (the coordinator picked its ID: registry_ops.c), goes
 * the same way with no record (value NULL): the removal is the lease's
 * revoke, done when etcd revokes it or says it has no such lease; for a
 * grant whose answer never came, only once it has said so on every try
 * (etcd may apply the grant after a first revoke). Else it lives its TTL
 * holding nothing (up to the hour a caller may ask for).
 *
 * Threads: any; r->lock guards r->unwrites and r->unwrite_bytes, and is
 * never held across etcd.
 */
#include "registry_int.h"

#include <stdio.h>
#include <stdlib.h>

#include <openssl/rand.h>

#include "common/log.h"
#include "common/text.h"

/* Tries of one removal: the first at once, the others each after the
 * maintenance thread found etcd able to commit (every MAINT_INTERVAL_MS
 * at most). */
#define REGISTRY_UNWRITE_TRIES 5

typedef struct registry_unwrite {
    coord_registry_t *r;
    struct registry_unwrite *next; /* in r->unwrites while it waits */
    int tries_left;
    bool counted;   /* in r->unwrite_bytes (unwrite_admit) */
    int64_t lease;  /* the caller's lease the record is on, for the log; or the lease to revoke */
    uint8_t *value; /* the record as the failed Register wrote it; NULL: revoke `lease` */
    bool unsure;    /* revoke of a grant whose answer never came: it may yet be applied */
    size_t value_len;
    registry_key_t key;
    registry_key_t fence; /* with value: the Register's fence */
    char id[COORD_REQUEST_ID_MAX + 1];
} registry_unwrite_t;

bool registry_fence_new(coord_registry_t *r, registry_key_t *fence)
{
    uint8_t raw[16];
    char text[2 * sizeof(raw) + 1];
    char msg[64];

    if (RAND_bytes(raw, sizeof(raw)) != 1) {
        return false;
    }
    ferry_hex(text, raw, sizeof(raw));
    /* "fences/" is as long as "claims/", for which REGISTRY_KEY_MAX has
     * room with the longest prefix, and the name is shorter than an ID. */
    char sub[COORD_PREFIX_MAX + sizeof("fences/")];
    snprintf(sub, sizeof(sub), "%sfences/", r->prefix);
    return registry_key(sub, text, fence, msg, sizeof(msg)) == FERRY_OK;
}

static size_t unwrite_bytes(const registry_unwrite_t *u)
{
    return sizeof(*u) + u->value_len;
}

/* Frees u, and what it counted in r->unwrite_bytes. */
static void unwrite_free(registry_unwrite_t *u)
{
    coord_registry_t *r = u->r;

    pthread_mutex_lock(&r->lock);
    r->unwrite_bytes -= unwrite_bytes(u);
    pthread_mutex_unlock(&r->lock);
    free(u->value);
    free(u);
}

/* Counts u in r->unwrite_bytes from now until it is freed, queued or
 * waiting; false, counting nothing, when that would pass
 * REGISTRY_UNWRITE_BYTES. */
static bool unwrite_admit(registry_unwrite_t *u)
{
    coord_registry_t *r = u->r;
    bool admitted = false;

    pthread_mutex_lock(&r->lock);
    if (r->unwrite_bytes + unwrite_bytes(u) <= REGISTRY_UNWRITE_BYTES) {
        r->unwrite_bytes += unwrite_bytes(u);
        admitted = u->counted = true;
    }
    pthread_mutex_unlock(&r->lock);
    return admitted;
}

/* Puts the Register's fence and deletes the key if it holds exactly
 * u->value, in one transaction. *removed_p: it deleted. A lease gone
 * (NOT_FOUND: etcd refused the fence's put) took the record with it and
 * refuses the Register's put too: done. */
static ferry_status_t unwrite_txn(registry_unwrite_t *u, bool *removed_p)
{
    etcd_compare_t cmp = {.target = ETCD_CMP_VALUE,
                          .result = ETCD_CMP_EQUAL,
                          .key = u->key.bytes,
                          .key_len = u->key.len,
                          .value = u->value,
                          .value_len = u->value_len};
    etcd_op_t fence = {.type = ETCD_OP_PUT,
                       .key = u->fence.bytes,
                       .key_len = u->fence.len,
                       .value = (const uint8_t *)"",
                       .value_len = 0,
                       .lease = u->lease};
    etcd_op_t success[2] = {fence,
                            {.type = ETCD_OP_DELETE, .key = u->key.bytes, .key_len = u->key.len}};
    etcd_txn_result_t res = {0};
    ferry_status_t status = etcd_txn(u->r->etcd, &cmp, 1, success, 2, &fence, 1, &res);

    *removed_p = status == FERRY_OK && res.succeeded;
    etcd_txn_result_free(&res);
    return status == FERRY_ERR_NOT_FOUND ? FERRY_OK : status;
}

/* Keeps u (counted since it was admitted) for the maintenance thread to
 * queue again. */
static void unwrite_park(registry_unwrite_t *u)
{
    coord_registry_t *r = u->r;

    pthread_mutex_lock(&r->lock);
    u->next = r->unwrites;
    r->unwrites = u;
    pthread_mutex_unlock(&r->lock);
}

/* What u removes, for the log: "the record its failed Register may have
 * left", "the lease its failed call granted". */
static const char *unwrite_what(const registry_unwrite_t *u)
{
    return u->value != NULL ? "the record its failed Register may have left"
                            : "the lease its failed call granted (or may have)";
}

/* Gives u up at shutdown, saying what stays behind. */
static void unwrite_drop(registry_unwrite_t *u)
{
    ferry_warn("op %s: shutting down before removing %s; it stays until lease %lld ends", u->id,
               unwrite_what(u), (long long)u->lease);
    unwrite_free(u);
}

/* Revokes u->lease; *removed_p: etcd had it. No such lease (never granted,
 * or already gone) is done too, except for a grant whose answer never came:
 * etcd may apply it after this revoke (a member held it), and the lease
 * would then live its TTL holding nothing, so such a revoke goes again
 * while it has tries left (FERRY_ERR_NOT_FOUND: not yet). */
static ferry_status_t unwrite_revoke(registry_unwrite_t *u, bool *removed_p)
{
    ferry_status_t status = etcd_lease_revoke(u->r->etcd, u->lease);

    *removed_p = status == FERRY_OK;
    if (status == FERRY_ERR_NOT_FOUND && !(u->unsure && u->tries_left > 1)) {
        return FERRY_OK;
    }
    return status;
}

static void unwrite_run(void *arg, bool run)
{
    registry_unwrite_t *u = arg;
    bool removed = false;
    ferry_status_t status;

    if (!run) {
        unwrite_drop(u);
        return;
    }
    status = u->value != NULL ? unwrite_txn(u, &removed) : unwrite_revoke(u, &removed);
    if (status == FERRY_OK && u->value == NULL) {
        ferry_debug("op %s: lease %lld of its failed call %s", u->id, (long long)u->lease,
                    removed ? "revoked" : "was not in etcd");
        unwrite_free(u);
        return;
    }
    if (status == FERRY_OK) {
        if (removed) {
            ferry_info("op %s: removed the record its failed Register left on lease %lld", u->id,
                       (long long)u->lease);
        } else {
            ferry_debug("op %s: its failed Register left no record of its own", u->id);
        }
        unwrite_free(u);
        return;
    }
    if (--u->tries_left > 0) {
        unwrite_park(u);
        if (status == FERRY_ERR_NOT_FOUND) {
            ferry_debug("op %s: lease %lld of its failed call is not in etcd (yet?); revoking it "
                        "again later",
                        u->id, (long long)u->lease);
            return;
        }
        ferry_info("op %s: cannot remove %s yet: %s (%s); trying again once etcd can commit", u->id,
                   unwrite_what(u), ferry_status_string(status), etcd_client_last_error());
        return;
    }
    ferry_warn("op %s: gave up removing %s: %s (%s); it stays until lease %lld ends", u->id,
               unwrite_what(u), ferry_status_string(status), etcd_client_last_error(),
               (long long)u->lease);
    unwrite_free(u);
}

static void unwrite_submit(registry_unwrite_t *u)
{
    coord_exec_t *exec = u->r->params.exec;

    if (!u->counted && !unwrite_admit(u)) {
        ferry_warn("op %s: no room to remove %s (%zu MiB of removals wait already); it stays "
                   "until lease %lld ends",
                   u->id, unwrite_what(u), (size_t)REGISTRY_UNWRITE_BYTES >> 20,
                   (long long)u->lease);
        free(u->value);
        free(u);
        return;
    }
    if (!atomic_load(&u->r->healthy)) {
        /* etcd cannot commit (a quorum loss, where every failed Register
         * makes one): a try now would hold an etcd worker for etcd's whole
         * timeout and fail. It waits for the maintenance thread to find
         * etcd able to commit, without spending a try. */
        unwrite_park(u);
        return;
    }
    if (exec == NULL) {
        /* No queue (tests): here, with etcd's whole time, not what is
         * left of the failed call's. */
        int64_t caller = etcd_set_deadline(0);
        unwrite_run(u, true);
        etcd_set_deadline(caller);
    } else if (coord_exec_submit(exec, unwrite_run, u, COORD_EXEC_MUST) != FERRY_OK) {
        unwrite_run(u, false); /* the queue is stopping */
    }
}

void registry_unwrite_later(coord_registry_t *r, const char *id, int64_t lease, uint8_t *value,
                            size_t value_len, const registry_key_t *fence)
{
    registry_unwrite_t *u = calloc(1, sizeof(*u));
    char msg[256];

    /* The Register built the same key from the same ID, so only memory
     * can fail here. */
    if (u == NULL || registry_key(r->ops_prefix, id, &u->key, msg, sizeof(msg)) != FERRY_OK) {
        ferry_warn("op %s: cannot remove the record its failed Register may have left (no "
                   "memory); it stays until lease %lld ends",
                   id, (long long)lease);
        free(u);
        free(value);
        return;
    }
    u->r = r;
    u->tries_left = REGISTRY_UNWRITE_TRIES;
    u->lease = lease;
    u->value = value;
    u->value_len = value_len;
    u->fence = *fence;
    snprintf(u->id, sizeof(u->id), "%s", id);
    unwrite_submit(u);
}

void registry_revoke_later(coord_registry_t *r, const char *id, int64_t lease, bool unsure)
{
    registry_unwrite_t *u = calloc(1, sizeof(*u));

    if (u == NULL) {
        ferry_warn("op %s: cannot revoke lease %lld of its failed call (no memory); it lives "
                   "its TTL",
                   id, (long long)lease);
        return;
    }
    u->r = r;
    u->tries_left = REGISTRY_UNWRITE_TRIES;
    u->lease = lease;
    u->unsure = unsure;
    snprintf(u->id, sizeof(u->id), "%s", id);
    unwrite_submit(u);
}

void registry_unwrites_retry(coord_registry_t *r)
{
    registry_unwrite_t *u;

    pthread_mutex_lock(&r->lock);
    u = r->unwrites;
    r->unwrites = NULL;
    pthread_mutex_unlock(&r->lock);
    while (u != NULL) {
        registry_unwrite_t *next = u->next;
        u->next = NULL;
        unwrite_submit(u); /* may wait in r->unwrites again */
        u = next;
    }
}

void registry_unwrites_free(coord_registry_t *r)
{
    while (r->unwrites != NULL) {
        registry_unwrite_t *u = r->unwrites;
        r->unwrites = u->next;
        unwrite_drop(u);
    }
}
