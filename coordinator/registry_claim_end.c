/*
 * registry_claim_end.c: the writes a claim's end leaves to the replicas
 * that see it, and their retries.
 *
 * Two kinds, each started by an event that does not come again:
 *   - an expiry: a claim key deleted by its lease's end (its claimant
 *     stopped renewing), or found missing by a load (an orphan), turns its
 *     record ERRORED (registry_expire_claim: the one transition);
 *   - a claim key whose record left etcd CLAIMED (its owner's lease ended
 *     mid-transfer) is deleted; it lives on the claimant's lease, which
 *     libferry keeps for as long as its process lives, so nothing else
 *     would delete it.
 * The key whose deletion (or the record whose) started one is gone, so a
 * write that fails once would never be tried again: the record stayed
 * CLAIMED by a dead claimant until a replica restarted (an etcd out of
 * space, an election, a member slower than the client's timeout, at that
 * moment on every replica alike). So a try that fails waits in
 * r->claim_ends_waiting and the maintenance thread submits it again, while
 * etcd can commit, CLAIM_END_RETRY_MIN_MS after the first try, the wait
 * doubling up to CLAIM_END_RETRY_MAX_MS, until it is done. Both writes are compares (the
 * claim's lease and end revision; the key's mod revision), so a repeat,
 * or another replica's, changes nothing.
 *
 * Bounds: each runs on params.exec (COORD_EXEC_MUST, one per claim that
 * ended, never holding the watch thread), at most
 * REGISTRY_CLAIM_ENDS_QUEUED_MAX there at once: the rest wait, in order, in
 * r->claim_ends_pending, and each one that leaves the queue lets the next
 * in. One revision can end every claim of a lease (a Revoke of a session
 * lease with 100,000 claims), and one job per claim queued at once would
 * go ahead of every write submitted after it (audit-s33 L2); now those take
 * turns with at most that many. What pending holds is one small job per
 * claim that ended, as the view holds a record per claim. At most
 * CLAIM_END_WAITING_MAX wait for a retry at once. One past it, or one still
 * waiting at shutdown, is given up with a warning: an expiry is then made
 * by the next load's orphan scan (a restart, a reload after compaction), a
 * claim key lives as long as its claimant's lease.
 *
 * Threads: any; r->lock guards the waiting and pending lists, their
 * counts and r->claim_ends_queued, and is never held across etcd or a
 * submit.
 */
#include "registry_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"

#define CLAIM_END_RETRY_MIN_MS 500
#define CLAIM_END_RETRY_MAX_MS 30000
#define CLAIM_END_WAITING_MAX  10000

typedef struct claim_end_job claim_end_job_t;

typedef struct {
    const char *what; /* for logs: "mark the expired claim" */
    ferry_status_t (*write)(claim_end_job_t *e, char *msg, size_t cap);
    const char *dropped; /* what happens to one given up */
} claim_end_kind_t;

struct claim_end_job {
    coord_registry_t *r;
    const claim_end_kind_t *kind;
    claim_end_job_t *next; /* in r->claim_ends_waiting while it waits */
    int64_t lease;         /* expiry: the claim's lease */
    /* expiry: the revision that deleted the claim's key (or a load's at
     * which it was gone); claim key: the Claim's revision, the key's mod
     * revision for as long as it is that claim's */
    int64_t revision;
    unsigned tries; /* failed so far */
    int retry_ms;   /* the wait before the next try */
    int64_t due_ms; /* CLOCK_MONOTONIC ms of the next try */
    char id[];      /* NUL-terminated */
};

static int64_t claim_end_now_ms(void)
{
    return ferry__clock_ms(CLOCK_MONOTONIC);
}

/* The claims whose key went are counted once each, by where the check was
 * decided (coord_registry_claim_ends), however many tries it takes. */
static ferry_status_t expiry_write(claim_end_job_t *e, char *msg, size_t cap)
{
    coord_registry_t *r = e->r;
    bool settled = registry_claim_end_settled(r, e->id, e->revision);

    if (e->tries == 0) {
        atomic_fetch_add(&r->claim_ends[!settled], 1);
    }
    return settled ? FERRY_OK : registry_expire_claim(r, e->id, e->lease, e->revision, msg, cap);
}

/* Deletes the claim key only if it is still that claim's (written with the
 * record's CLAIMED write, at e->revision): a key the ID was claimed with
 * again since, on the same session lease even, is left alone. Its mod
 * revision, not its create revision: a later Claim puts the key whether or
 * not it is there, and etcd keeps the create revision of a key put again
 * (the record gone and back while the old claim's lease lives, as a
 * session lease does). */
static ferry_status_t claim_key_write(claim_end_job_t *e, char *msg, size_t cap)
{
    coord_registry_t *r = e->r;
    registry_key_t key;
    ferry_status_t status = registry_key(r->claims_prefix, e->id, &key, msg, cap);

    if (status != FERRY_OK) {
        return status;
    }
    etcd_compare_t cmp = {.target = ETCD_CMP_MOD,
                          .result = ETCD_CMP_EQUAL,
                          .key = key.bytes,
                          .key_len = key.len,
                          .number = e->revision};
    etcd_op_t del = {.type = ETCD_OP_DELETE, .key = key.bytes, .key_len = key.len};
    etcd_txn_result_t res = {0};

    status = etcd_txn(r->etcd, &cmp, 1, &del, 1, NULL, 0, &res);
    if (status != FERRY_OK) {
        return registry_etcd_fail(r, status, msg, cap, "claim key deletion");
    }
    if (res.succeeded) {
        ferry_info("op %s: deleted the claim key its expired owner left", e->id);
    }
    etcd_txn_result_free(&res);
    return FERRY_OK;
}

static const claim_end_kind_t expiry_kind = {
    .what = "mark the expired claim",
    .write = expiry_write,
    .dropped = "the next load finds it CLAIMED without its claim (a restart)",
};

static const claim_end_kind_t claim_key_kind = {
    .what = "delete the claim key its expired owner left",
    .write = claim_key_write,
    .dropped = "the key lives as long as its claimant's lease",
};

static void claim_end_drop(claim_end_job_t *e, const char *why)
{
    ferry_warn("op %s: gave up trying to %s (%s): %s", e->id, e->kind->what, why, e->kind->dropped);
    free(e);
}

/* Keeps e for the maintenance thread, after its backoff; false when
 * CLAIM_END_WAITING_MAX wait already. */
static bool claim_end_park(claim_end_job_t *e)
{
    coord_registry_t *r = e->r;
    bool parked = false;

    e->retry_ms = e->retry_ms == 0 ? CLAIM_END_RETRY_MIN_MS : e->retry_ms * 2;
    e->retry_ms = e->retry_ms < CLAIM_END_RETRY_MAX_MS ? e->retry_ms : CLAIM_END_RETRY_MAX_MS;
    e->due_ms = claim_end_now_ms() + e->retry_ms;
    pthread_mutex_lock(&r->lock);
    if (r->n_claim_ends_waiting < CLAIM_END_WAITING_MAX) {
        e->next = r->claim_ends_waiting;
        r->claim_ends_waiting = e;
        r->n_claim_ends_waiting++;
        parked = true;
    }
    pthread_mutex_unlock(&r->lock);
    return parked;
}

static void claim_end_run(void *arg, bool run)
{
    claim_end_job_t *e = arg;
    char msg[256];
    ferry_status_t status;

    if (!run) {
        claim_end_drop(e, "shutting down");
        return;
    }
    status = e->kind->write(e, msg, sizeof(msg));
    if (status == FERRY_OK) {
        if (e->tries > 0) {
            ferry_info("op %s: did %s, after %u failed tries", e->id, e->kind->what, e->tries);
        }
        free(e);
        return;
    }
    /* The first failure is news; the tries after it, while etcd still
     * refuses, are not. */
    if (e->tries++ == 0) {
        ferry_warn("op %s: could not %s: %s; trying again while etcd can commit", e->id,
                   e->kind->what, msg);
    } else {
        ferry_debug("op %s: could not %s (try %u): %s", e->id, e->kind->what, e->tries, msg);
    }
    if (!claim_end_park(e)) {
        char why[64];
        snprintf(why, sizeof(why), "%d others wait already", CLAIM_END_WAITING_MAX);
        claim_end_drop(e, why);
    }
}

static void claim_end_job(void *arg, bool run);

/* Submits pending claim ends, oldest first, while fewer than
 * REGISTRY_CLAIM_ENDS_QUEUED_MAX are in params.exec. One the queue refuses
 * for want of memory goes back to the head for the maintenance thread's
 * next pass (registry_claim_ends_retry); once the queue stops, each is
 * given up. A loop, not a recursion. */
static void claim_ends_feed(coord_registry_t *r)
{
    for (;;) {
        claim_end_job_t *e;
        ferry_status_t status;

        pthread_mutex_lock(&r->lock);
        e = r->claim_ends_pending;
        if (e == NULL || r->claim_ends_queued >= REGISTRY_CLAIM_ENDS_QUEUED_MAX) {
            pthread_mutex_unlock(&r->lock);
            return;
        }
        r->claim_ends_pending = e->next;
        if (r->claim_ends_pending == NULL) {
            r->claim_ends_pending_tail = NULL;
        }
        r->n_claim_ends_pending--;
        r->claim_ends_queued++;
        pthread_mutex_unlock(&r->lock);
        e->next = NULL;
        status = coord_exec_submit(r->params.exec, claim_end_job, e, COORD_EXEC_MUST);
        if (status == FERRY_OK) {
            continue;
        }
        pthread_mutex_lock(&r->lock);
        r->claim_ends_queued--;
        if (status == FERRY_ERR_NO_MEMORY) {
            e->next = r->claim_ends_pending;
            r->claim_ends_pending = e;
            if (r->claim_ends_pending_tail == NULL) {
                r->claim_ends_pending_tail = e;
            }
            r->n_claim_ends_pending++;
            pthread_mutex_unlock(&r->lock);
            return;
        }
        pthread_mutex_unlock(&r->lock);
        claim_end_run(e, false); /* the queue is stopping: given up */
    }
}

/* params.exec's job: the claim end; then, its place in the queue free, the
 * next pending one goes in. */
static void claim_end_job(void *arg, bool run)
{
    claim_end_job_t *e = arg;
    coord_registry_t *r = e->r;

    claim_end_run(e, run); /* frees e */
    pthread_mutex_lock(&r->lock);
    r->claim_ends_queued--;
    pthread_mutex_unlock(&r->lock);
    claim_ends_feed(r);
}

/* Into the queue after those pending, in order. */
static void claim_end_submit(claim_end_job_t *e)
{
    coord_registry_t *r = e->r;

    if (r->params.exec == NULL) {
        claim_end_run(e, true); /* no queue (tests) */
        return;
    }
    pthread_mutex_lock(&r->lock);
    e->next = NULL;
    if (r->claim_ends_pending_tail != NULL) {
        r->claim_ends_pending_tail->next = e;
    } else {
        r->claim_ends_pending = e;
    }
    r->claim_ends_pending_tail = e;
    r->n_claim_ends_pending++;
    pthread_mutex_unlock(&r->lock);
    claim_ends_feed(r);
}

static void claim_end_later(coord_registry_t *r, const claim_end_kind_t *kind, const char *id,
                            int64_t lease, int64_t revision)
{
    size_t len = strlen(id);
    claim_end_job_t *e = calloc(1, sizeof(*e) + len + 1);

    if (e == NULL) {
        ferry_warn("op %s: no memory to %s: %s", id, kind->what, kind->dropped);
        return;
    }
    e->r = r;
    e->kind = kind;
    e->lease = lease;
    e->revision = revision;
    memcpy(e->id, id, len + 1);
    claim_end_submit(e);
}

void registry_expire_claim_later(coord_registry_t *r, const char *id, int64_t claim_lease,
                                 int64_t ended)
{
    claim_end_later(r, &expiry_kind, id, claim_lease, ended);
}

void registry_delete_claim_key_later(coord_registry_t *r, const char *id, int64_t claimed)
{
    claim_end_later(r, &claim_key_kind, id, 0, claimed);
}

void registry_claim_ends_retry(coord_registry_t *r)
{
    int64_t now = claim_end_now_ms();
    claim_end_job_t *due = NULL;

    pthread_mutex_lock(&r->lock);
    for (claim_end_job_t **p = &r->claim_ends_waiting; *p != NULL;) {
        claim_end_job_t *e = *p;
        if (e->due_ms > now) {
            p = &e->next;
            continue;
        }
        *p = e->next;
        r->n_claim_ends_waiting--;
        e->next = due;
        due = e;
    }
    pthread_mutex_unlock(&r->lock);
    while (due != NULL) {
        claim_end_job_t *next = due->next;
        due->next = NULL;
        claim_end_submit(due); /* may wait in r->claim_ends_waiting again */
        due = next;
    }
    if (r->params.exec != NULL) {
        claim_ends_feed(r); /* those a queue short of memory sent back */
    }
}

size_t registry_claim_ends_waiting(coord_registry_t *r)
{
    size_t n;

    pthread_mutex_lock(&r->lock);
    n = r->n_claim_ends_waiting;
    pthread_mutex_unlock(&r->lock);
    return n;
}

size_t registry_claim_ends_pending(coord_registry_t *r)
{
    size_t n;

    pthread_mutex_lock(&r->lock);
    n = r->n_claim_ends_pending;
    pthread_mutex_unlock(&r->lock);
    return n;
}

void registry_claim_ends_free(coord_registry_t *r)
{
    while (r->claim_ends_waiting != NULL) {
        claim_end_job_t *e = r->claim_ends_waiting;
        r->claim_ends_waiting = e->next;
        r->n_claim_ends_waiting--;
        claim_end_drop(e, "shutting down");
    }
    /* None should be left: a job that leaves params.exec feeds the next
     * in, and a stopped queue gives each up at once. */
    while (r->claim_ends_pending != NULL) {
        claim_end_job_t *e = r->claim_ends_pending;
        r->claim_ends_pending = e->next;
        r->n_claim_ends_pending--;
        claim_end_drop(e, "shutting down");
    }
    r->claim_ends_pending_tail = NULL;
}
