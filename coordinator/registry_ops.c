/*
 * registry_ops.c: what the RPCs do to the registry: register, read, and the
 * one transition function every state change goes through (keep-alive and
 * list are in registry_list.c). See registry.h.
 */
#include "registry_int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "common/clock.h"
#include "common/log.h"
#include "common/md_rules.h"
#include "common/op_state.h"
#include "common/text.h"

#define TRANSITION_ATTEMPTS 8

static int64_t ttl_or_default(const coord_registry_t *r, int64_t ttl_s)
{
    return ttl_s > 0 ? ttl_s : r->default_ttl_s;
}

/* SHA-256 of an access token; false only when OpenSSL fails (out of
 * memory), and then every caller fails closed. */
static bool token_hash(const coord_registry_t *r, const char *token,
                       uint8_t out[SHA256_DIGEST_LENGTH])
{
    size_t len = strlen(token);

    if (r->token_md != NULL && EVP_Digest(token, len, out, NULL, r->token_md, NULL) == 1) {
        return true;
    }
    return SHA256((const unsigned char *)token, len, out) != NULL;
}

static bool token_matches(const coord_registry_t *r, const Ferry__V1__Operation *op,
                          const char *token)
{
    uint8_t h[SHA256_DIGEST_LENGTH];

    if (op->token_sha256.len != SHA256_DIGEST_LENGTH || !token_hash(r, token, h)) {
        return false;
    }
    return CRYPTO_memcmp(h, op->token_sha256.data, sizeof(h)) == 0;
}

static ferry_status_t new_token(char *out, size_t cap)
{
    uint8_t raw[24];

    if (cap < 2 * sizeof(raw) + 1 || RAND_bytes(raw, sizeof(raw)) != 1) {
        return FERRY_ERR_INTERNAL;
    }
    ferry_hex(out, raw, sizeof(raw));
    return FERRY_OK;
}

/* The lease a record or claim goes on, and what its grantee is told. */
typedef struct {
    int64_t id;
    int64_t ttl_s; /* the granted TTL; 0 when it is the caller's own lease */
    char token[COORD_LEASE_TOKEN_LEN + 1];
} lease_t;

/* The caller's own lease, its token already checked (registry_lease_check
 * proved it equal to the one this replica would compute: it is echoed
 * instead of a second HMAC; OpenSSL 3's one-shot HMAC fetches its algorithm
 * on every call). */
static void own_lease(int64_t lease_id, const char *lease_token, lease_t *lease)
{
    lease->id = lease_id;
    lease->ttl_s = 0;
    snprintf(lease->token, sizeof(lease->token), "%s", lease_token);
}

/* A new lease's ID, 1..INT64_MAX, from the CSPRNG. */
static ferry_status_t new_lease_id(int64_t *id_p)
{
    uint64_t raw = 0;

    do {
        if (RAND_bytes((unsigned char *)&raw, sizeof(raw)) != 1) {
            return FERRY_ERR_INTERNAL;
        }
        raw &= (uint64_t)INT64_MAX;
    } while (raw == 0);
    *id_p = (int64_t)raw;
    return FERRY_OK;
}

/* Whether a grant that failed so may have been applied: no answer (in
 * time), or one that could not be read. etcd's refusals applied nothing. */
static bool grant_unknown(ferry_status_t status)
{
    return status == FERRY_ERR_UNAVAILABLE || status == FERRY_ERR_PROTOCOL ||
           status == FERRY_ERR_INTERNAL;
}

/* The lease a new record or claim goes on: the caller's own (lease_id != 0,
 * shown with its token; no etcd write) or a new one of ttl_s (0: the
 * default), for request ID `id`. The lease key is loaded before a grant,
 * so that no lease is made whose token cannot be handed out. The
 * coordinator picks the new lease's ID, so that a grant whose answer never
 * came (etcd slow past the call's time, a lost reply: it may have been
 * applied) is revoked by that ID (registry_revoke_later), rather than left
 * to live its TTL holding nothing; an ID that exists (FAILED_PRECONDITION)
 * is picked again. */
static ferry_status_t lease_for(coord_registry_t *r, const char *id_for, int64_t lease_id,
                                const char *lease_token, int64_t ttl_s, lease_t *lease, char *msg,
                                size_t cap)
{
    ferry_status_t status;
    int64_t id = 0;

    if (lease_id != 0) {
        status = registry_lease_check(r, "lease_id", lease_id, lease_token, msg, cap);
        if (status == FERRY_OK) {
            own_lease(lease_id, lease_token, lease);
        }
        return status;
    }
    status = registry_lease_ready(r, msg, cap);
    if (status != FERRY_OK) {
        return status;
    }
    if (etcd_get_deadline() != 0 && etcd_get_deadline() <= ferry__clock_ms(CLOCK_MONOTONIC)) {
        /* Nothing is sent, so there is nothing to revoke. */
        return registry_fail(FERRY_ERR_TIMED_OUT, msg, cap,
                             "the deadline passed while waiting for etcd; nothing was written");
    }
    status = FERRY_ERR_FAILED_PRECONDITION;
    for (int tries = 0; tries < 3 && status == FERRY_ERR_FAILED_PRECONDITION; tries++) {
        if (new_lease_id(&id) != FERRY_OK) {
            return registry_fail(FERRY_ERR_INTERNAL, msg, cap, "no randomness for a lease ID");
        }
        status = etcd_lease_grant(r->etcd, ttl_or_default(r, ttl_s), id, &lease->id, &lease->ttl_s);
    }
    if (status != FERRY_OK) {
        if (grant_unknown(status)) {
            registry_revoke_later(r, id_for, id, true); /* it may be applied later */
        }
        return registry_etcd_fail(r, status, msg, cap, "lease grant");
    }
    if (registry_lease_token(r, lease->id, lease->token) != FERRY_OK) {
        /* A lease nobody can renew or revoke: give it back. */
        registry_revoke_later(r, id_for, lease->id, false);
        return registry_fail(FERRY_ERR_UNAVAILABLE, msg, cap,
                             "cannot make the lease's token now (the coordinator is out of "
                             "memory); retry");
    }
    return FERRY_OK;
}

/* A write that named the caller's lease failed because etcd does not know
 * the lease any more: LEASE_NOT_FOUND, never NOT_FOUND, which would make a
 * Claim wait for a request ID that is there. */
static ferry_status_t lease_gone(int64_t lease_id, char *msg, size_t cap)
{
    return registry_fail(FERRY_ERR_LEASE_NOT_FOUND, msg, cap,
                         "lease_id %lld has expired or never existed", (long long)lease_id);
}

void coord_strip(Ferry__V1__Operation *op, bool keep_metadata)
{
    if (op->token_sha256.data != NULL) {
        free(op->token_sha256.data);
        op->token_sha256.data = NULL;
        op->token_sha256.len = 0;
    }
    /* Lease IDs are for expiry inside the store; their grantees learned
     * them from their own Register or Claim response. */
    op->lease_id = 0;
    op->claim_lease_id = 0;
    op->claim_id = 0;
    /* The owner's address is for this cluster's shares, not for whoever
     * reads the record. */
    if (op->owner_host != NULL && op->owner_host != protobuf_c_empty_string) {
        free(op->owner_host);
    }
    op->owner_host = (char *)protobuf_c_empty_string;
    if (!keep_metadata && op->metadata != NULL) {
        ferry__v1__rdma_metadata__free_unpacked(op->metadata, NULL);
        op->metadata = NULL;
    }
}

/* --- register ------------------------------------------------------------ */

/* A record as read, from etcd or the view (read_record, below). */
typedef struct record record_t;
struct record {
    coord_record_t data; /* the record; its metadata as stored */
    int64_t mod_revision;
    int64_t revision; /* the revision the answer reflects */
    bool from_view;   /* read from this replica's view, which may lag etcd */
};

static void record_free(record_t *rec)
{
    coord_record_free(&rec->data);
}

static ferry_status_t read_record(coord_registry_t *r, const char *id, bool from_etcd,
                                  record_t *rec, char *msg, size_t cap);

/* The Register's create-if-absent. *unknown_p: it failed in a way that
 * may have come after etcd applied it (the record may be there). */
static ferry_status_t register_txn(coord_registry_t *r, const char *id, const uint8_t *bytes,
                                   size_t len, int64_t lease, const registry_key_t *fence,
                                   bool (*gone)(void *arg), void *gone_arg, int64_t *revision_p,
                                   bool *unknown_p, char *msg, size_t cap)
{
    registry_key_t key;
    registry_write_t w = {.value = bytes,
                          .value_len = len,
                          .lease = lease,
                          .fence = fence != NULL ? fence->bytes : NULL,
                          .fence_len = fence != NULL ? fence->len : 0,
                          .gone = gone,
                          .gone_arg = gone_arg,
                          .deadline_ms = etcd_get_deadline()};
    ferry_status_t status = registry_key(r->ops_prefix, id, &key, msg, cap);

    *unknown_p = false;
    if (status != FERRY_OK) {
        return status;
    }
    w.key = key.bytes;
    w.key_len = key.len;
    registry_write(r, &w); /* in a transaction shared with other Registers */
    /* etcd's refusal of the coordinator's credentials applied nothing
     * either. */
    *unknown_p = !w.late && !w.expired && w.status != FERRY_OK &&
                 !registry_refused_before_apply(w.status) && !registry_etcd_refused(w.status);
    if (w.late) {
        return registry_fail(FERRY_ERR_TIMED_OUT, msg, cap,
                             "the deadline passed while waiting for etcd; nothing was written");
    }
    if (w.expired) {
        return registry_fail(FERRY_ERR_UNAVAILABLE, msg, cap,
                             "etcd has not answered the Register transaction ahead of this one "
                             "before this call's deadline; nothing was written (retry)");
    }
    if (w.status == FERRY_ERR_NOT_FOUND) {
        return lease_gone(lease, msg, cap);
    }
    if (w.status != FERRY_OK) {
        /* Sent by whichever thread led its transaction: etcd_no_space is
         * that thread's. */
        return registry_etcd_fail_as(r, w.status, w.no_space, msg, cap, "registration transaction");
    }
    *revision_p = w.revision;
    if (!w.created) {
        return registry_fail(FERRY_ERR_ALREADY_EXISTS, msg, cap,
                             "request_id '%s' is already registered", id);
    }
    return FERRY_OK;
}

/* A Register that found its request ID taken is its caller's repeat of a
 * Register that was applied when the record in etcd is the one it would
 * write: on the caller's own lease (which it showed the token of), under
 * the caller's own access token, with the same metadata bytes (which hold
 * the operation's random notification key: the same operation) and owner.
 * A repeat is what a client sends when the answer to its first try never
 * came (a replica killed after etcd applied it, a reply lost): refused
 * ALREADY_EXISTS, it could neither use the record (a token it picked
 * itself is the only way in) nor register again while it kept its lease.
 * Answered as registered, at the record's revision, whatever its state now
 * (a writer may have claimed it since). Nothing is written. FERRY_OK: a
 * repeat; otherwise the status to answer, with msg. */
static ferry_status_t register_repeat(coord_registry_t *r, const Ferry__V1__RegisterRequest *req,
                                      const uint8_t *md, size_t md_len, const uint8_t *hash,
                                      int64_t *revision_p, char *msg, size_t cap)
{
    record_t rec;
    ferry_status_t status = read_record(r, req->request_id, true, &rec, msg, cap);
    bool same;

    if (status == FERRY_ERR_NOT_FOUND) {
        /* Gone since its transaction saw it: a Register again decides. */
        return registry_fail(FERRY_ERR_ALREADY_EXISTS, msg, cap,
                             "request_id '%s' was registered until a moment ago; retry",
                             req->request_id);
    }
    if (status != FERRY_OK) {
        return status;
    }
    const Ferry__V1__Operation *op = rec.data.op;
    same = op->lease_id == req->lease_id && op->token_sha256.len == SHA256_DIGEST_LENGTH &&
           CRYPTO_memcmp(op->token_sha256.data, hash, SHA256_DIGEST_LENGTH) == 0 &&
           rec.data.md_len == md_len && memcmp(rec.data.md, md, md_len) == 0 &&
           strcmp(op->owner, req->owner) == 0;
    if (same) {
        *revision_p = rec.revision;
        ferry_info("op %s: Register repeated by its owner (same lease, token and metadata); "
                   "answered as registered (%s)",
                   req->request_id, ferry__op_state_name(op->state));
    }
    record_free(&rec);
    return same ? FERRY_OK
                : registry_fail(FERRY_ERR_ALREADY_EXISTS, msg, cap,
                                "request_id '%s' is already registered", req->request_id);
}

/* What a record takes beside its metadata and its strings, at most: each
 * field's tag and length, the lease ID and times as 10-byte varints, the
 * token's hash. */
#define STORED_FIXED_MAX 96

/* What a Register's record will count for its host in the view, at most
 * (view_entry_cost: the record, its ID again, as its key, and
 * VIEW_RECORD_OVERHEAD). */
static size_t stored_bound(const Ferry__V1__RegisterRequest *req, size_t md_len, const char *host)
{
    return md_len + 2 * strlen(req->request_id) + strlen(req->owner) + strlen(host) +
           STORED_FIXED_MAX + VIEW_RECORD_OVERHEAD;
}

/* Counts `bytes` more for `host` among the Registers in flight, unless its
 * records (every replica's, in the view, and those this replica wrote
 * while the view was not live) and those in flight would pass its share
 * with them: RESOURCE_EXHAUSTED naming the flag then. Before any lease is
 * granted or anything written, so a refusal costs etcd nothing. Fed by one
 * etcd, every replica's view counts the same records: the share is the
 * cluster's, less what other replicas have in flight. A Register of an ID
 * the view holds from the same host is judged without that record: it is
 * its caller's repeat of it (answered as registered, nothing written), or
 * ALREADY_EXISTS, or, where the view lags a delete, the record again;
 * counted as any, so that a lagging view lets a host pass its share by no
 * more than the records it has not seen go. *counted_p: what it counted,
 * for stored_give. */
static ferry_status_t stored_take(coord_registry_t *r, const char *id, const char *host,
                                  size_t bytes, size_t *counted_p, char *msg, size_t cap)
{
    static ferry_log_limit_t log_limit;
    size_t max = r->params.max_stored_per_peer;
    const view_entry_t *e;
    size_t held, replaced = 0;
    char besides[96] = "";
    unsigned quiet;
    ferry_status_t status;

    pthread_mutex_lock(&r->lock);
    held = view_host_bytes(&r->view, host) + coord_peers_held(r->registering, host) +
           coord_peers_held(r->unseen, host);
    e = view_find(&r->view, id);
    if (e != NULL && e->host != NULL && strcmp(e->host, host) == 0) {
        size_t cost = view_entry_cost(e);
        replaced = cost < held ? cost : held;
        held -= replaced;
    }
    status = max != 0 && (bytes > max || held > max - bytes)
                 ? FERRY_ERR_RESOURCE_EXHAUSTED
                 : coord_peers_add(r->registering, host, bytes, 0);
    pthread_mutex_unlock(&r->lock);
    *counted_p = bytes;
    if (status == FERRY_ERR_NO_MEMORY) {
        return registry_fail(status, msg, cap, "no memory to count the Register");
    }
    if (status != FERRY_OK) {
        atomic_fetch_add(&r->stored_refusals, 1); /* for metrics */
        if (replaced > 0) { /* review-s36c L4: the total, less it, was said as the total */
            snprintf(besides, sizeof(besides),
                     " besides the one of this ID (%zu), which it replaces", replaced);
        }
        if (ferry_log_due(&log_limit, &quiet)) {
            ferry_info("Register from %s refused: the records of its host take %zu bytes in "
                       "etcd%s, and one of up to %zu more would pass its share, %zu MiB "
                       "(--stored-mib-per-peer); %u more refused since the last line",
                       host, held, besides, bytes, max >> 20, quiet);
        }
        return registry_fail(status, msg, cap,
                             "the records registered from %s take %zu bytes in etcd%s, and this "
                             "one (up to %zu) would pass the host's share, %zu MiB "
                             "(--stored-mib-per-peer); release, cancel or let expire some of "
                             "them, then retry",
                             host, held, besides, bytes, max >> 20);
    }
    return FERRY_OK;
}

static void stored_give(coord_registry_t *r, const char *host, size_t bytes)
{
    pthread_mutex_lock(&r->lock);
    coord_peers_sub(r->registering, host, bytes);
    pthread_mutex_unlock(&r->lock);
}

uint64_t coord_registry_stored_refusals(coord_registry_t *r)
{
    return atomic_load(&r->stored_refusals);
}

size_t coord_registry_stored_hosts(coord_registry_t *r)
{
    size_t n;

    pthread_mutex_lock(&r->lock);
    n = view_hosts(&r->view);
    pthread_mutex_unlock(&r->lock);
    return n;
}

static ferry_status_t register_counted(coord_registry_t *r, const Ferry__V1__RegisterRequest *req,
                                       const uint8_t *md, size_t md_len, const char *host,
                                       bool (*gone)(void *arg), void *gone_arg,
                                       coord_register_out_t *out, char *msg, size_t cap);

ferry_status_t coord_register(coord_registry_t *r, const Ferry__V1__RegisterRequest *req,
                              const uint8_t *md, size_t md_len, const char *host,
                              bool (*gone)(void *arg), void *gone_arg, coord_register_out_t *out,
                              char *msg, size_t cap)
{
    size_t bytes;
    ferry_status_t status;

    if (host == NULL) {
        host = "";
    }
    if (host[0] == '\0') {
        return register_counted(r, req, md, md_len, host, gone, gone_arg, out, msg, cap);
    }
    status =
        stored_take(r, req->request_id, host, stored_bound(req, md_len, host), &bytes, msg, cap);
    if (status != FERRY_OK) {
        return status;
    }
    /* Given back once the record is in the view, or counted as unseen
     * (registry_view_put), or not written: counted twice a moment, never
     * not at all. */
    status = register_counted(r, req, md, md_len, host, gone, gone_arg, out, msg, cap);
    stored_give(r, host, bytes);
    return status;
}

/* coord_register once the share let it through. */
static ferry_status_t register_counted(coord_registry_t *r, const Ferry__V1__RegisterRequest *req,
                                       const uint8_t *md, size_t md_len, const char *host,
                                       bool (*gone)(void *arg), void *gone_arg,
                                       coord_register_out_t *out, char *msg, size_t cap)
{
    Ferry__V1__Operation op = FERRY__V1__OPERATION__INIT;
    uint8_t hash[SHA256_DIGEST_LENGTH];
    uint8_t *bytes = NULL;
    size_t len = 0;
    lease_t lease;
    bool unknown = false;
    /* A record on the caller's lease under a token we pick is taken back
     * if the write's outcome is unknown (err_unwrite): it is fenced. */
    bool fenced = req->lease_id != 0 && req->access_token[0] == '\0';
    registry_key_t fence;
    ferry_status_t status;

    if (fenced && !registry_fence_new(r, &fence)) {
        return registry_fail(FERRY_ERR_INTERNAL, msg, cap, "no randomness for the write's fence");
    }
    if (req->access_token[0] != '\0') {
        snprintf(out->access_token, sizeof(out->access_token), "%s", req->access_token);
    } else if (new_token(out->access_token, sizeof(out->access_token)) != FERRY_OK) {
        return registry_fail(FERRY_ERR_INTERNAL, msg, cap, "no randomness for an access token");
    }
    status = lease_for(r, req->request_id, req->lease_id, req->lease_token, req->ttl_seconds,
                       &lease, msg, cap);
    if (status != FERRY_OK) {
        return status;
    }
    out->lease_id = lease.id;
    out->ttl_s = lease.ttl_s;
    memcpy(out->lease_token, lease.token, sizeof(out->lease_token));

    if (!token_hash(r, out->access_token, hash)) {
        status = registry_fail(FERRY_ERR_NO_MEMORY, msg, cap, "cannot hash the access token");
        goto err_revoke;
    }
    op.request_id = req->request_id;
    op.kind = req->metadata->kind;
    op.state = FERRY_OP_REGISTERED;
    op.owner = req->owner;
    op.owner_host = (char *)host;
    op.lease_id = out->lease_id;
    op.token_sha256.data = hash;
    op.token_sha256.len = sizeof(hash);
    op.created_unix_ms = registry_now_ms();
    op.updated_unix_ms = op.created_unix_ms;
    status = registry_record_pack(&op, md, md_len, &bytes, &len);
    if (status != FERRY_OK) {
        registry_fail(status, msg, cap, "no memory to store the record");
        goto err_revoke;
    }
    status = register_txn(r, req->request_id, bytes, len, out->lease_id, fenced ? &fence : NULL,
                          gone, gone_arg, &out->revision, &unknown, msg, cap);
    if (status == FERRY_ERR_ALREADY_EXISTS && req->lease_id != 0 && req->access_token[0] != '\0') {
        status = register_repeat(r, req, md, md_len, hash, &out->revision, msg, cap);
        if (status == FERRY_OK) {
            free(bytes);
            return FERRY_OK;
        }
    }
    if (status != FERRY_OK) {
        goto err_unwrite;
    }
    registry_view_put(r, req->request_id, bytes, len, out->revision, op.state, host, true);
    free(bytes);
    /* ttl_s 0: the caller's own lease, whose TTL its grant said. */
    char ttl[32] = "the caller's";
    if (lease.ttl_s > 0) {
        snprintf(ttl, sizeof(ttl), "ttl %llds", (long long)lease.ttl_s);
    }
    ferry_info("op %s: REGISTERED (%s, %zu descriptors, owner '%s', lease %lld, %s)",
               req->request_id,
               op.kind == FERRY__V1__OPERATION_KIND__OPERATION_KIND_READ ? "read" : "write",
               req->metadata->n_descriptors, req->owner, (long long)out->lease_id, ttl);
    return FERRY_OK;

err_unwrite:
    /* unknown: the record may be in etcd, and only the token in
     * out->access_token, which the caller is not told, reaches it. On a
     * lease of our own, revoking the lease (below) removes it. On the
     * caller's lease, with a token we picked, nobody could ever Lookup,
     * Claim, Cancel or Release it, and the request ID would stay taken
     * while the caller keeps its lease: remove it, if it is this call's
     * (registry_unwrite.c). With the caller's own token it is left: the
     * caller holds that token, so a Lookup finds the record and Cancel and
     * Release remove it. */
    if (unknown && fenced) {
        registry_unwrite_later(r, req->request_id, out->lease_id, bytes, len, &fence);
        bytes = NULL; /* the removal's now */
    }
    free(bytes);
err_revoke:
    if (req->lease_id == 0) {
        registry_revoke_later(r, req->request_id, out->lease_id, false); /* ours, now useless */
    }
    return status;
}

/* --- reads ---------------------------------------------------------------- */

/* The message for a record that did not decode. */
static ferry_status_t record_decoded(ferry_status_t status, char *msg, size_t cap)
{
    if (status == FERRY_ERR_NO_MEMORY) {
        return registry_fail(status, msg, cap, "no memory to read the record");
    }
    if (status != FERRY_OK) {
        return registry_fail(FERRY_ERR_INTERNAL, msg, cap, "stored record is malformed");
    }
    return FERRY_OK;
}

/* Reads a record from the view. *hit_p false: the view cannot answer (it
 * lacks the record, or its watch is down while etcd answers, which is
 * newer), and only etcd can. The record's bytes are copied under r->lock
 * and decoded after it, with its revisions taken in the same hold: the
 * answer is one snapshot of the view all the same, and the decode, whose
 * cost the record's writer chose (every field of its metadata), holds up
 * no other reader or writer (audit-s33 H2). */
static ferry_status_t read_view(coord_registry_t *r, const char *id, record_t *rec, bool *hit_p,
                                char *msg, size_t cap)
{
    uint8_t *bytes = NULL;
    size_t len = 0;
    bool hit;

    pthread_mutex_lock(&r->lock);
    /* The view answers while its watch is live. While the watch is down and
     * etcd answers, etcd is read instead (it is newer). While etcd cannot
     * commit, nothing newer can be read anywhere this replica reaches: the
     * view answers what it last saw, rather than hold the call for an etcd
     * timeout and say UNAVAILABLE. Not while etcd refuses this replica
     * alone (its credentials, its prefix): other replicas write on. */
    const view_entry_t *e = r->synced || registry_etcd_stuck(r) ? view_find(&r->view, id) : NULL;
    ferry_status_t status = FERRY_OK;

    hit = e != NULL;
    if (e != NULL) {
        /* The entry may change or go once the lock is let go. */
        len = e->len;
        bytes = malloc(len > 0 ? len : 1);
        if (bytes != NULL) {
            memcpy(bytes, e->bytes, len);
        } else {
            status = FERRY_ERR_NO_MEMORY;
        }
        rec->from_view = true;
        rec->mod_revision = e->mod_revision;
        int64_t whole = registry_whole_revision_locked(r);
        rec->revision = whole > e->mod_revision ? whole : e->mod_revision;
    }
    pthread_mutex_unlock(&r->lock);
    if (hit && status == FERRY_OK) {
        status = registry_record_decode(bytes, len, &rec->data);
    }
    free(bytes);
    *hit_p = hit;
    return record_decoded(status, msg, cap);
}

/* Reads a record: from the view when it can answer, else from etcd.
 * FERRY_ERR_NOT_FOUND when absent. */
static ferry_status_t read_record(coord_registry_t *r, const char *id, bool from_etcd,
                                  record_t *rec, char *msg, size_t cap)
{
    registry_key_t key;
    etcd_range_t range = {0};
    ferry_status_t status;

    if (!from_etcd) {
        bool hit = false;
        status = read_view(r, id, rec, &hit, msg, cap);
        if (status != FERRY_OK || hit) {
            return status;
        }
        ferry_debug("op %s: not in the view; reading etcd", id);
    }
    status = registry_key(r->ops_prefix, id, &key, msg, cap);
    if (status != FERRY_OK) {
        return status;
    }
    status = etcd_get(r->etcd, key.bytes, key.len, NULL, 0, 0, 0, &range);
    if (status != FERRY_OK) {
        return registry_etcd_fail(r, status, msg, cap, "read");
    }
    if (range.n_kvs == 0) {
        etcd_range_free(&range);
        return registry_fail(FERRY_ERR_NOT_FOUND, msg, cap, "request_id '%s' is not registered",
                             id);
    }
    status = registry_record_decode(range.kvs[0].value, range.kvs[0].value_len, &rec->data);
    rec->from_view = false;
    rec->mod_revision = range.kvs[0].mod_revision;
    rec->revision = range.revision;
    etcd_range_free(&range);
    return record_decoded(status, msg, cap);
}

/* What Lookup and Get answer about a record read: the metadata's bytes
 * only to a caller with the token. */
static ferry_status_t lookup_answer(const coord_registry_t *r, record_t *rec, const char *id,
                                    const char *token, coord_record_t *out, int64_t *revision_p,
                                    char *msg, size_t cap)
{
    if (token != NULL && !token_matches(r, rec->data.op, token)) {
        coord_record_free(&rec->data);
        return registry_fail(FERRY_ERR_PERMISSION_DENIED, msg, cap,
                             "access_token does not grant access to request_id '%s'", id);
    }
    coord_strip(rec->data.op, false);
    if (token == NULL) {
        free(rec->data.md);
        rec->data.md = NULL;
        rec->data.md_len = 0;
    }
    *out = rec->data;
    *revision_p = rec->revision;
    return FERRY_OK;
}

ferry_status_t coord_lookup(coord_registry_t *r, const char *id, const char *token,
                            bool linearizable, coord_record_t *out, int64_t *revision_p, char *msg,
                            size_t cap)
{
    record_t rec;
    ferry_status_t status = read_record(r, id, linearizable, &rec, msg, cap);

    if (status == FERRY_OK && rec.from_view && token != NULL &&
        !token_matches(r, rec.data.op, token)) {
        /* The view may hold an older registration of the ID (released and
         * registered again with another token, on a replica this one has
         * not heard from yet): its refusal is confirmed by etcd, as a
         * write confirms one (answer_stands). */
        ferry_debug("op %s: lookup refused on the view; checking etcd", id);
        coord_record_free(&rec.data);
        status = read_record(r, id, true, &rec, msg, cap);
    }
    if (status != FERRY_OK) {
        return status;
    }
    return lookup_answer(r, &rec, id, token, out, revision_p, msg, cap);
}

ferry_status_t coord_lookup_view(coord_registry_t *r, const char *id, const char *token,
                                 bool linearizable, coord_record_t *out, int64_t *revision_p,
                                 bool *answered_p, char *msg, size_t cap)
{
    record_t rec;
    ferry_status_t status = FERRY_OK;

    *answered_p = false;
    if (!linearizable) {
        status = read_view(r, id, &rec, answered_p, msg, cap);
    }
    if (status != FERRY_OK) {
        *answered_p = true;
        return status;
    }
    if (!*answered_p) {
        return FERRY_OK;
    }
    if (token != NULL && !token_matches(r, rec.data.op, token)) {
        /* Not answered: coord_lookup confirms the refusal with etcd. */
        coord_record_free(&rec.data);
        *answered_p = false;
        return FERRY_OK;
    }
    return lookup_answer(r, &rec, id, token, out, revision_p, msg, cap);
}

/* --- transitions ---------------------------------------------------------- */

/* A change to one record: `apply` checks the record and edits it in place.
 * It returns FERRY_OK to write the edit, or an error. When the record
 * already says what the caller asked (an idempotent repeat), it returns
 * FERRY_OK and sets *unchanged_p, which the caller cleared, and nothing is
 * written. "Nothing changed" travels beside the status, not inside it: it
 * is no answer a client sees, so it has no place in the public
 * ferry_status_t, and an int carrying both would let any code through
 * unchecked (STYLE.md item 17). */
typedef struct transition transition_t;
struct transition {
    const char *what;  /* for logs: "claim", "complete", ... */
    const char *token; /* NULL: internal change, no token check */
    ferry_status_t (*apply)(transition_t *t, Ferry__V1__Operation *op, bool *unchanged_p, char *msg,
                            size_t cap);
    /* Extra operation in the same transaction (claims/ key); type 0 with
     * key NULL: none. */
    etcd_op_t extra;
    /* Complete: the write also compares that the record's claim is alive:
     * its key (extra's) is there. The Claim wrote both in one transaction,
     * a CLAIMED record moves only to final states, and a later Claim writes
     * both again; so while the record is the Claim's write (its own
     * compare), the key is that claim's, there until Complete, Cancel or
     * the claim's lease's end deletes it. Its existence, not its revision:
     * a key copied apart from its record (etcdctl make-mirror) keeps no
     * revision, and the record's compare already names the claim
     * (review-s33 L1). */
    bool claim_held;
    /* Set by a write that lost on claim_held: the revision at which the
     * claim key was gone; 0 otherwise. */
    int64_t claim_gone_at;
    void *arg;
    /* The record's metadata and mod_revision as read, for apply (set
     * before each call). */
    const uint8_t *md;
    size_t md_len;
    int64_t mod_revision;
};

/* Whether a write that lost on t->claim_held found the claim key gone:
 * its failure branch read the key. A key there lost on the record's own
 * compare: a lost race. */
static bool claim_key_gone(const transition_t *t, const etcd_txn_result_t *res)
{
    return t->claim_held && !res->succeeded && res->n_results == 1 && res->results[0].n_kvs == 0;
}

static ferry_status_t write_transition(coord_registry_t *r, const record_t *rec, transition_t *t,
                                       int64_t *revision_p, bool *won_p, char *msg, size_t cap)
{
    registry_key_t key;
    uint8_t *bytes = NULL;
    size_t len = 0;
    etcd_compare_t cmp[2] = {
        {.target = ETCD_CMP_MOD, .result = ETCD_CMP_EQUAL, .number = rec->mod_revision},
        {.target = ETCD_CMP_VERSION,
         .result = ETCD_CMP_GREATER,
         .key = t->extra.key,
         .key_len = t->extra.key_len,
         .number = 0},
    };
    etcd_op_t get = {.type = ETCD_OP_GET, .key = t->extra.key, .key_len = t->extra.key_len};
    etcd_op_t ops[2];
    etcd_txn_result_t res = {0};
    ferry_status_t status = registry_key(r->ops_prefix, rec->data.op->request_id, &key, msg, cap);

    t->claim_gone_at = 0;
    if (status == FERRY_OK) {
        status = registry_record_pack(rec->data.op, rec->data.md, rec->data.md_len, &bytes, &len);
        if (status != FERRY_OK) {
            registry_fail(status, msg, cap, "no memory to store the record");
        }
    }
    if (status != FERRY_OK) {
        return status;
    }
    cmp[0].key = key.bytes;
    cmp[0].key_len = key.len;
    /* The put names the owner's lease again: a put without it would detach
     * the record from the lease and outlive a dead owner. */
    ops[0] = (etcd_op_t){.type = ETCD_OP_PUT,
                         .key = key.bytes,
                         .key_len = key.len,
                         .value = bytes,
                         .value_len = len,
                         .lease = rec->data.op->lease_id};
    ops[1] = t->extra;
    status = etcd_txn(r->etcd, cmp, t->claim_held ? 2 : 1, ops, t->extra.key != NULL ? 2 : 1,
                      t->claim_held ? &get : NULL, t->claim_held ? 1 : 0, &res);
    if (status != FERRY_OK) {
        free(bytes);
        return status == FERRY_ERR_NOT_FOUND
                   ? lease_gone(t->extra.lease != 0 ? t->extra.lease : rec->data.op->lease_id, msg,
                                cap)
                   : registry_etcd_fail(r, status, msg, cap, "state change transaction");
    }
    *won_p = res.succeeded;
    *revision_p = res.revision;
    t->claim_gone_at = claim_key_gone(t, &res) ? res.revision : 0;
    if (res.succeeded) {
        registry_view_put(r, rec->data.op->request_id, bytes, len, res.revision,
                          rec->data.op->state, rec->data.op->owner_host, false);
    }
    etcd_txn_result_free(&res);
    free(bytes);
    return FERRY_OK;
}

/* Whether a write may answer from what it read without writing: a refusal,
 * or nothing to change. Only from etcd: the view may lag a change another
 * replica made (a Claim there, then a Complete here), and a write must
 * reflect every change acknowledged before it. A view that said yes costs
 * nothing (the write's compare on mod_revision catches a stale one); a view
 * that said no costs one etcd read. Frees the record when the answer must
 * wait for that read. */
static bool answer_stands(record_t *rec, const char *id, const char *what)
{
    if (!rec->from_view) {
        return true;
    }
    ferry_debug("op %s: %s decided on the view; checking etcd", id, what);
    coord_record_free(&rec->data);
    return false;
}

/* A write that needed the record's claim alive (claim_held) found its key
 * gone at revision `gone_at`: the claim's lease ended, and its expiry is
 * not written yet (registry_expire_claim_later runs it off the watch
 * thread, maybe much later). It is written now, through the one transition,
 * so the write reads it again and answers as it would after the expiry:
 * the claim is over, and the record ERRORED ("claim expired"). Only the
 * record CLAIMED before gone_at is that claim's: one claimed again since is
 * left alone. */
static ferry_status_t claim_gone(coord_registry_t *r, const char *id, int64_t claim_lease,
                                 int64_t gone_at, const char *what, char *msg, size_t cap)
{
    /* Debug: the key also goes with a Cancel or Complete on another
     * replica, whose write changed the record too (then the expiry finds
     * it no longer CLAIMED and writes nothing). */
    ferry_debug("op %s: %s found the claim of lease %lld gone (its lease ended, or it was "
                "ended elsewhere); writing its expiry first",
                id, what, (long long)claim_lease);
    return registry_expire_claim(r, id, claim_lease, gone_at, msg, cap);
}

/* The one function every state change goes through: read, check, write on
 * mod_revision, retry with a fresh read from etcd on conflict, or when the
 * view's copy refused the change or left nothing to do (answer_stands). */
static ferry_status_t registry_transition(coord_registry_t *r, const char *id, transition_t *t,
                                          coord_change_out_t *out, char *msg, size_t cap)
{
    for (int attempt = 0; attempt < TRANSITION_ATTEMPTS; attempt++) {
        record_t rec;
        ferry_op_state_t from;
        int64_t claim_lease;
        bool won = false;
        bool unchanged = false;
        ferry_status_t status = read_record(r, id, attempt > 0, &rec, msg, cap);

        if (status != FERRY_OK) {
            return status;
        }
        from = rec.data.op->state;
        if (t->token != NULL && !token_matches(r, rec.data.op, t->token)) {
            status = registry_fail(FERRY_ERR_PERMISSION_DENIED, msg, cap,
                                   "access_token does not grant access to request_id '%s'", id);
        } else {
            t->md = rec.data.md;
            t->md_len = rec.data.md_len;
            t->mod_revision = rec.mod_revision;
            status = t->apply(t, rec.data.op, &unchanged, msg, cap);
        }
        if (status == FERRY_OK && !unchanged &&
            !ferry__op_state_can_move(from, rec.data.op->state)) {
            status = registry_fail(
                FERRY_ERR_FAILED_PRECONDITION, msg, cap, "request_id '%s' cannot go from %s to %s",
                id, ferry__op_state_name(from), ferry__op_state_name(rec.data.op->state));
        }
        /* A refusal and "nothing to change" both answer without a write,
         * so either one decided on the view waits for etcd's (answer_stands). */
        if ((status != FERRY_OK || unchanged) && !answer_stands(&rec, id, t->what)) {
            continue;
        }
        if (status != FERRY_OK) {
            coord_record_free(&rec.data);
            return status;
        }
        if (unchanged) {
            out->rec = rec.data;
            out->revision = rec.revision;
            return FERRY_OK;
        }
        rec.data.op->updated_unix_ms = registry_now_ms();
        status = write_transition(r, &rec, t, &out->revision, &won, msg, cap);
        if (status == FERRY_OK && won) {
            ferry_info("op %s: %s -> %s (%s)", id, ferry__op_state_name(from),
                       ferry__op_state_name(rec.data.op->state), t->what);
            out->rec = rec.data;
            return FERRY_OK;
        }
        claim_lease = rec.data.op->claim_lease_id;
        coord_record_free(&rec.data);
        if (status == FERRY_OK && t->claim_gone_at > 0) {
            status = claim_gone(r, id, claim_lease, t->claim_gone_at, t->what, msg, cap);
        }
        if (status != FERRY_OK) {
            return status;
        }
        ferry_debug("op %s: %s lost a race (attempt %d); rereading", id, t->what, attempt + 1);
    }
    return registry_fail(FERRY_ERR_ABORTED, msg, cap, "request_id '%s' changed %d times during %s",
                         id, TRANSITION_ATTEMPTS, t->what);
}

static void set_string(char **field, const char *value)
{
    char *copy = strdup(value);
    if (copy == NULL) {
        return; /* keep the old value rather than lose the record */
    }
    if (*field != NULL && *field != protobuf_c_empty_string) {
        free(*field);
    }
    *field = copy;
}

static const char *kind_name(Ferry__V1__OperationKind kind)
{
    switch (kind) {
    case FERRY__V1__OPERATION_KIND__OPERATION_KIND_READ:
        return "READ";
    case FERRY__V1__OPERATION_KIND__OPERATION_KIND_WRITE:
        return "WRITE";
    default:
        return "UNSPECIFIED";
    }
}

static const char *peer_errors_name(Ferry__V1__PeerErrorHandling v)
{
    switch (v) {
    case FERRY__V1__PEER_ERROR_HANDLING__PEER_ERROR_HANDLING_ON:
        return "on";
    case FERRY__V1__PEER_ERROR_HANDLING__PEER_ERROR_HANDLING_OFF:
        return "off";
    default:
        return "not said (a libferry before the field)";
    }
}

/* Whether the claimant pairs with the operation's metadata md[md_len]: its
 * descriptor sizes (ClaimRequest.descriptor_sizes), by the pairing rule of
 * common/md_rules.h, and its peer_error_handling, which UCX 1.13 needs
 * alike on both sides; libferry checks both too when it is handed metadata
 * directly. The stored metadata passed ferry_md_check at Register. */
static ferry_status_t claim_pairs(const Ferry__V1__ClaimRequest *req, const char *id,
                                  const uint8_t *md, size_t md_len, char *msg, size_t cap)
{
    Ferry__V1__RdmaMetadata *m;
    char rule[256];
    ferry_status_t status = FERRY_OK;

    if (req->n_descriptor_sizes == 0 &&
        req->peer_error_handling ==
            FERRY__V1__PEER_ERROR_HANDLING__PEER_ERROR_HANDLING_UNSPECIFIED) {
        return FERRY_OK;
    }
    m = md != NULL ? ferry__v1__rdma_metadata__unpack(NULL, md_len, md) : NULL;
    if (m == NULL) {
        return registry_fail(FERRY_ERR_INTERNAL, msg, cap,
                             "request_id '%s': stored metadata is malformed", id);
    }
    if (req->n_descriptor_sizes > 0 &&
        ferry_md_sizes_pair(m, req->descriptor_sizes, req->n_descriptor_sizes, rule,
                            sizeof(rule)) != FERRY_OK) {
        status = registry_fail(FERRY_ERR_SIZE_MISMATCH, msg, cap,
                               "descriptor_sizes: %s (request_id '%s')", rule, id);
    } else if (req->peer_error_handling != m->peer_error_handling &&
               (req->peer_error_handling !=
                    FERRY__V1__PEER_ERROR_HANDLING__PEER_ERROR_HANDLING_UNSPECIFIED ||
                req->n_descriptor_sizes > 0)) {
        /* Unsaid is not checked for a client that is no libferry (it sends
         * no sizes either); a libferry that does not say is one from before
         * the field, whose claim the passive side would refuse after it was
         * granted, ending the operation ERRORED. */
        status = registry_fail(
            FERRY_ERR_FAILED_PRECONDITION, msg, cap,
            "peer_error_handling: the claimant's is %s, the passive side's of request_id '%s' "
            "is %s; UCX 1.13 cannot connect the two (set peer_error_handling alike on every "
            "worker, and upgrade together the workers that transfer to each other)",
            peer_errors_name(req->peer_error_handling), id,
            peer_errors_name(m->peer_error_handling));
    }
    ferry__v1__rdma_metadata__free_unpacked(m, NULL);
    return status;
}

static ferry_status_t apply_claim(transition_t *t, Ferry__V1__Operation *op, bool *unchanged_p,
                                  char *msg, size_t cap)
{
    const Ferry__V1__ClaimRequest *req = t->arg;
    ferry_status_t status;

    /* Never set: Claim has no idempotent repeat. A Claim on a CLAIMED
     * record is refused, one from the same claimant too. */
    (void)unchanged_p;
    if (req->kind != FERRY__V1__OPERATION_KIND__OPERATION_KIND_UNSPECIFIED &&
        req->kind != op->kind) {
        return registry_fail(
            FERRY_ERR_KIND_MISMATCH, msg, cap,
            "kind %s does not match request_id '%s', a %s operation (a write pairs only "
            "with a writable, a read with a readable)",
            kind_name(req->kind), op->request_id, kind_name(op->kind));
    }
    if (op->state == FERRY_OP_CLAIMED) {
        return registry_fail(FERRY_ERR_FAILED_PRECONDITION, msg, cap,
                             "request_id '%s' is already claimed by '%s'", op->request_id,
                             op->claimant);
    }
    if (op->state != FERRY_OP_REGISTERED) {
        return registry_fail(FERRY_ERR_FAILED_PRECONDITION, msg, cap, "request_id '%s' is %s",
                             op->request_id, ferry__op_state_name(op->state));
    }
    status = claim_pairs(req, op->request_id, t->md, t->md_len, msg, cap);
    if (status != FERRY_OK) {
        return status;
    }
    /* The caller's pick when it made one (it then knows the claim even if
     * this answer is lost: ClaimRequest.claim_id). */
    op->claim_id = req->claim_id;
    while (op->claim_id == 0) {
        if (RAND_bytes((unsigned char *)&op->claim_id, sizeof(op->claim_id)) != 1) {
            return registry_fail(FERRY_ERR_UNAVAILABLE, msg, cap,
                                 "no randomness for the claim's identity; retry");
        }
    }
    op->state = FERRY_OP_CLAIMED;
    op->claim_lease_id = t->extra.lease;
    set_string(&op->claimant, req->claimant);
    return FERRY_OK;
}

/* What Claim checks before it grants a lease: the access token, then kind
 * and state, on the record as read now (the transition checks them again on
 * the record it writes). A refused Claim so costs no etcd write; a refusal
 * read from the view is read again from etcd (answer_stands). */
static ferry_status_t claim_precheck(coord_registry_t *r, const Ferry__V1__ClaimRequest *req,
                                     char *msg, size_t cap)
{
    transition_t t = {.what = "claim", .apply = apply_claim, .arg = (void *)req};

    for (int attempt = 0; attempt < 2; attempt++) {
        record_t rec;
        ferry_status_t status = read_record(r, req->request_id, attempt > 0, &rec, msg, cap);

        if (status != FERRY_OK) {
            return status;
        }
        if (!token_matches(r, rec.data.op, req->access_token)) {
            status = registry_fail(FERRY_ERR_PERMISSION_DENIED, msg, cap,
                                   "access_token does not grant access to request_id '%s'",
                                   req->request_id);
        } else {
            bool unchanged = false; /* never set: see apply_claim */

            t.md = rec.data.md;
            t.md_len = rec.data.md_len;
            status = apply_claim(&t, rec.data.op, &unchanged, msg, cap); /* our copy only */
        }
        if (status == FERRY_OK || answer_stands(&rec, req->request_id, "claim")) {
            coord_record_free(&rec.data);
            return status;
        }
    }
    return FERRY_OK; /* unreachable: the second read is etcd's, whose answer stands */
}

ferry_status_t coord_claim(coord_registry_t *r, const Ferry__V1__ClaimRequest *req,
                           coord_change_out_t *out, char *msg, size_t cap)
{
    registry_key_t key;
    char lease_str[32];
    lease_t lease;
    transition_t t = {.what = "claim", .token = req->access_token, .apply = apply_claim};
    ferry_status_t status = registry_key(r->claims_prefix, req->request_id, &key, msg, cap);

    if (status == FERRY_OK && req->lease_id != 0) {
        /* Before the record is read: a Claim for a request ID not yet
         * registered waits for it (wait_ms), and a forged token must not. */
        status = registry_lease_check(r, "lease_id", req->lease_id, req->lease_token, msg, cap);
    }
    if (status != FERRY_OK) {
        return status;
    }
    status = claim_precheck(r, req, msg, cap);
    if (status != FERRY_OK) {
        return status;
    }
    if (req->lease_id != 0) {
        own_lease(req->lease_id, req->lease_token, &lease); /* checked above */
    } else {
        status = lease_for(r, req->request_id, 0, NULL, req->ttl_seconds, &lease, msg, cap);
        if (status != FERRY_OK) {
            return status;
        }
    }
    snprintf(lease_str, sizeof(lease_str), "%" PRId64, lease.id);
    t.extra = (etcd_op_t){.type = ETCD_OP_PUT,
                          .key = key.bytes,
                          .key_len = key.len,
                          .value = lease_str,
                          .value_len = strlen(lease_str),
                          .lease = lease.id};
    t.arg = (void *)req;
    status = registry_transition(r, req->request_id, &t, out, msg, cap);
    if (status != FERRY_OK) {
        if (req->lease_id == 0) {
            registry_revoke_later(r, req->request_id, lease.id, false); /* ours, now useless */
        }
        return status;
    }
    out->claim_lease_id = lease.id;
    out->ttl_s = lease.ttl_s;
    memcpy(out->lease_token, lease.token, sizeof(out->lease_token));
    return FERRY_OK;
}

static ferry_status_t apply_complete(transition_t *t, Ferry__V1__Operation *op, bool *unchanged_p,
                                     char *msg, size_t cap)
{
    const Ferry__V1__CompleteRequest *req = t->arg;
    ferry_op_state_t want = req->error_code == 0 ? FERRY_OP_COMPLETE : FERRY_OP_ERRORED;

    if (op->state != FERRY_OP_REGISTERED && op->claim_lease_id != req->claim_lease_id) {
        return registry_fail(FERRY_ERR_PERMISSION_DENIED, msg, cap,
                             "claim_lease_id %lld does not hold the claim on request_id '%s'",
                             (long long)req->claim_lease_id, op->request_id);
    }
    if (req->claim_id != 0 && op->state != FERRY_OP_REGISTERED && op->claim_id != req->claim_id) {
        /* The same lease, another claim_id: this Complete was for a claim
         * that ended (sent again after it went through, and the request ID
         * was claimed again since on the same lease), or its claim_id is
         * wrong. Nothing here tells the two apart, so the message names
         * both rather than say the claim ended. */
        return registry_fail(FERRY_ERR_FAILED_PRECONDITION, msg, cap,
                             "claim_id %llu is not the current claim on request_id '%s' (the "
                             "request ID was claimed again since, or claim_id is wrong)",
                             (unsigned long long)req->claim_id, op->request_id);
    }
    if (op->state == want) {
        *unchanged_p = true;
        return FERRY_OK;
    }
    if (op->state != FERRY_OP_CLAIMED) {
        return registry_fail(FERRY_ERR_FAILED_PRECONDITION, msg, cap,
                             "request_id '%s' is %s, not CLAIMED", op->request_id,
                             ferry__op_state_name(op->state));
    }
    op->state = want;
    op->error_code = req->error_code;
    set_string(&op->error_message, req->error_message);
    return FERRY_OK;
}

ferry_status_t coord_complete(coord_registry_t *r, const Ferry__V1__CompleteRequest *req,
                              coord_change_out_t *out, char *msg, size_t cap)
{
    registry_key_t key;
    transition_t t = {.what = req->error_code == 0 ? "complete" : "complete with error",
                      .token = req->access_token,
                      .apply = apply_complete,
                      .arg = (void *)req};
    /* Only the claimant holds the claim lease's token; apply_complete then
     * checks that this lease holds the claim. */
    ferry_status_t status =
        registry_lease_check(r, "claim_lease_id", req->claim_lease_id, req->lease_token, msg, cap);

    if (status == FERRY_OK) {
        status = registry_key(r->claims_prefix, req->request_id, &key, msg, cap);
    }
    if (status != FERRY_OK) {
        return status;
    }
    if (req->claim_id == 0) {
        ferry_info("op %s: Complete without claim_id (a client from before it, or one that "
                   "never heard its Claim's answer): its lease alone is checked",
                   req->request_id);
    }
    t.extra = (etcd_op_t){.type = ETCD_OP_DELETE, .key = key.bytes, .key_len = key.len};
    /* The claim key leaves with the transaction. Its lease is not revoked:
     * it may be the claimant's own, shared with its other work; a lease of
     * this claim alone expires once nobody keeps it alive. The key must
     * still be there: a claim whose lease ended is over, even before its
     * expiry is written (claim_gone), or a claimant stopped past its TTL
     * could still complete it. */
    t.claim_held = true;
    return registry_transition(r, req->request_id, &t, out, msg, cap);
}

static ferry_status_t apply_cancel(transition_t *t, Ferry__V1__Operation *op, bool *unchanged_p,
                                   char *msg, size_t cap)
{
    const Ferry__V1__CancelRequest *req = t->arg;

    if (op->state == FERRY_OP_CANCELLED) {
        *unchanged_p = true;
        return FERRY_OK;
    }
    if (ferry__op_state_is_final(op->state)) {
        return registry_fail(FERRY_ERR_FAILED_PRECONDITION, msg, cap,
                             "request_id '%s' is already %s", op->request_id,
                             ferry__op_state_name(op->state));
    }
    op->state = FERRY_OP_CANCELLED;
    set_string(&op->error_message, req->reason[0] != '\0' ? req->reason : "cancelled");
    return FERRY_OK;
}

ferry_status_t coord_cancel(coord_registry_t *r, const Ferry__V1__CancelRequest *req,
                            coord_change_out_t *out, char *msg, size_t cap)
{
    registry_key_t key;
    transition_t t = {
        .what = "cancel", .token = req->access_token, .apply = apply_cancel, .arg = (void *)req};

    ferry_status_t status = registry_key(r->claims_prefix, req->request_id, &key, msg, cap);

    if (status != FERRY_OK) {
        return status;
    }
    t.extra = (etcd_op_t){.type = ETCD_OP_DELETE, .key = key.bytes, .key_len = key.len};
    /* The claim key leaves with the transaction; the claimant learns of the
     * cancel from the record (its lease may be shared: never revoked). */
    return registry_transition(r, req->request_id, &t, out, msg, cap);
}

/* Deletes a final record, on its mod_revision so that a concurrent change
 * is not lost; the watch reports the DELETE with the final state. */
ferry_status_t coord_release(coord_registry_t *r, const Ferry__V1__ReleaseRequest *req,
                             int64_t *revision_p, char *msg, size_t cap)
{
    for (int attempt = 0; attempt < TRANSITION_ATTEMPTS; attempt++) {
        registry_key_t key;
        etcd_compare_t cmp = {.target = ETCD_CMP_MOD, .result = ETCD_CMP_EQUAL};
        etcd_op_t del = {.type = ETCD_OP_DELETE};
        etcd_txn_result_t res = {0};
        record_t rec;
        ferry_status_t status = registry_key(r->ops_prefix, req->request_id, &key, msg, cap);

        if (status == FERRY_OK) {
            status = read_record(r, req->request_id, attempt > 0, &rec, msg, cap);
        }

        if (status != FERRY_OK) {
            return status;
        }
        if (!token_matches(r, rec.data.op, req->access_token)) {
            status = registry_fail(FERRY_ERR_PERMISSION_DENIED, msg, cap,
                                   "access_token does not grant access to request_id '%s'",
                                   req->request_id);
        } else if (!ferry__op_state_is_final(rec.data.op->state)) {
            status = registry_fail(FERRY_ERR_FAILED_PRECONDITION, msg, cap,
                                   "request_id '%s' is %s; cancel it before releasing it",
                                   req->request_id, ferry__op_state_name(rec.data.op->state));
        }
        if (status != FERRY_OK && !answer_stands(&rec, req->request_id, "release")) {
            continue;
        }
        coord_record_free(&rec.data);
        if (status != FERRY_OK) {
            return status;
        }
        cmp.key = del.key = key.bytes;
        cmp.key_len = del.key_len = key.len;
        cmp.number = rec.mod_revision;
        status = etcd_txn(r->etcd, &cmp, 1, &del, 1, NULL, 0, &res);
        if (status != FERRY_OK) {
            return registry_etcd_fail(r, status, msg, cap, "release transaction");
        }
        bool released = res.succeeded;
        *revision_p = res.revision;
        etcd_txn_result_free(&res);
        if (released) {
            registry_view_remove(r, req->request_id, *revision_p);
            ferry_info("op %s: released", req->request_id);
            return FERRY_OK;
        }
    }
    return registry_fail(FERRY_ERR_ABORTED, msg, cap,
                         "request_id '%s' kept changing during release", req->request_id);
}

/* Which claim ended: its lease, and the revision that deleted its key. */
typedef struct {
    int64_t lease;
    int64_t ended;
} claim_end_t;

/* Longest claimant quoted in the expiry's text (a claimant may be
 * COORD_NAME_MAX bytes; the text stays whole UTF-8 either way). */
#define EXPIRY_CLAIMANT_MAX 256

static ferry_status_t apply_claim_expiry(transition_t *t, Ferry__V1__Operation *op,
                                         bool *unchanged_p, char *msg, size_t cap)
{
    const claim_end_t *end = t->arg;
    char text[EXPIRY_CLAIMANT_MAX + 64];

    (void)msg;
    (void)cap;
    if (op->state != FERRY_OP_CLAIMED || op->claim_lease_id != end->lease) {
        *unchanged_p = true;
        return FERRY_OK;
    }
    /* A record written at or after the revision that deleted the claim's
     * key is not the claim that ended: CLAIMED moves only to final states,
     * so it was claimed again since (a request ID used again, often on the
     * same session lease), and that claim is alive. */
    if (end->ended > 0 && t->mod_revision >= end->ended) {
        *unchanged_p = true;
        return FERRY_OK;
    }
    op->state = FERRY_OP_ERRORED;
    op->error_code = FERRY_ERR_EXPIRED;
    /* Get, List and Watch show this text to anyone: never the lease's ID,
     * which only its grantee may know. The claimant is cut whole
     * (ferry_utf8_cut): stored cut inside a character, the text would make
     * every List page and Watch message carrying it undecodable for
     * clients that check UTF-8. */
    snprintf(text, sizeof(text), "claim expired: claimant '%.*s' stopped keeping its claim alive",
             (int)ferry_utf8_cut(op->claimant, EXPIRY_CLAIMANT_MAX), op->claimant);
    set_string(&op->error_message, text);
    return FERRY_OK;
}

/* Whether the view settles a claim key's deletion at revision `ended`
 * without etcd: it holds the record as written at or after that revision,
 * and not CLAIMED. Complete and Cancel delete the claim key in the
 * transaction that moves the record on, so after every finished operation
 * the view already shows its record past CLAIMED at that revision; only a
 * claim whose lease ran out leaves its record CLAIMED at an older one.
 * Anything else (the view lags or lacks the record, CLAIMED again since, no
 * revision known) goes to the transition, whose refusal on the view costs
 * an etcd read: one per finished operation on every replica, before this. */
bool registry_claim_end_settled(coord_registry_t *r, const char *id, int64_t ended)
{
    bool settled = false;

    if (ended <= 0) {
        return false;
    }
    pthread_mutex_lock(&r->lock);
    const view_entry_t *e = r->synced ? view_find(&r->view, id) : NULL;
    settled = e != NULL && e->mod_revision >= ended && e->state != FERRY_OP_CLAIMED;
    pthread_mutex_unlock(&r->lock);
    return settled;
}

ferry_status_t registry_expire_claim(coord_registry_t *r, const char *id, int64_t claim_lease,
                                     int64_t ended, char *msg, size_t cap)
{
    claim_end_t end = {.lease = claim_lease, .ended = ended};
    transition_t t = {.what = "claim expired", .apply = apply_claim_expiry, .arg = &end};
    coord_change_out_t out = {0};
    ferry_status_t status = registry_transition(r, id, &t, &out, msg, cap);

    if (status == FERRY_OK) {
        coord_record_free(&out.rec);
    }
    /* The record is gone, or its owner's lease (which took the record). */
    return status == FERRY_ERR_NOT_FOUND || status == FERRY_ERR_LEASE_NOT_FOUND ? FERRY_OK : status;
}
