/*
 * peer.c: the endpoint cache (one ucp_ep per remote worker address, so a
 * second transfer to the same peer costs no connection set-up), the remote
 * keys unpacked on each endpoint, and the plumbing that turns UCX request
 * completions into queue items.
 *
 * Invariants: a peer is in connector->peers while usable; the cache holds one
 * reference and each operation using it one more. A failed peer leaves the
 * cache at once (the next transfer builds a fresh endpoint) and is closed
 * when its last reference goes. A peer whose endpoint was closed by force
 * (an active operation's destroy found its data still moving: op.c) leaves
 * the cache at once and has no endpoint any more (ep NULL): it fails as if
 * the peer had, and a message sent on it fails NOT_CONNECTED. The cache is
 * bounded: it is kept in least-recently-used order, and a new entry beyond
 * peer_cache_max evicts the least recently used peers that only the cache
 * holds (their endpoints close); a peer an operation holds is never
 * evicted, so the cache may run over the bound while that many peers are in
 * use, never otherwise. Remote keys are reference counted by the operations
 * using them; unused ones stay cached, at most FERRY__RKEY_CACHE_MAX per
 * peer (the oldest unused go first).
 *
 * Threads: everything here runs with connector->lock held, either in the
 * progress loop or in a caller's thread. The callbacks (ep_err_cb,
 * req_done_cb) run inside ucp_worker_progress and only record and enqueue.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/shm.h>

#include "common/log.h"
#include "worker/copy_engine.h"
#include "worker/ferry_int.h"

/* UCX 1.13 reads a packed remote key (ucp_ep_rkey_unpack) and a worker
 * address (ucp_ep_create) with no length, trusting what the bytes say:
 * bytes it did not write make it read past the buffer, assert or crash
 * (measured: 16 bytes of 0xff as a key, a segfault; 8 as an address, an
 * assertion). Both come from a peer (metadata, a claim), so their framing
 * is checked first, against the layout UCX 1.13 writes. That stops
 * truncated and garbage bytes, not bytes crafted to be well framed, which
 * still reach the transports' own parsers (README, "Admission"). */

/* A packed key: u64 md_map (host order), u8 memory type, then per bit of
 * md_map a u8 size and that many bytes; what may follow (the memory's
 * system device) ucp_ep_rkey_unpack does not read. */
static bool rkey_framed(const uint8_t *packed, size_t len)
{
    uint64_t md_map;
    size_t off = sizeof(md_map) + 1;

    if (len < off || packed[sizeof(md_map)] >= UCS_MEMORY_TYPE_LAST) {
        return false;
    }
    memcpy(&md_map, packed, sizeof(md_map));
    for (; md_map != 0; md_map &= md_map - 1) {
        if (off >= len || packed[off] >= len - off) {
            return false;
        }
        off += 1u + packed[off];
    }
    return true;
}

/* UCX 1.13's sysv part of a key: the segment's id, then its owner's
 * address, packed (uct_sysv_packed_rkey_t). */
#define SYSV_KEY_PART_LEN 12

/* Same-host transports of UCX 1.13: a lane of one (or of TCP over the
 * loopback device) means the peer is on this host (and, for the
 * shared-memory ones, in this IPC namespace). */
static const char *const same_host_tls[] = {"sysv", "posix", "cma", "knem", "xpmem", "self"};

/* Reads the endpoint's lanes once: ucp_ep_print_info writes a line per
 * lane, "lane[0]:  3:sysv/memory.0 md[2]  -> md[2]/sysv/sysdev[255] ...",
 * the part after "-> " naming the peer's md index and component. Only lane
 * lines are read (the "peer:" line carries the peer's own name). */
static void shm_lanes_read(ferry__peer_t *peer)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f;

    peer->sysv_md = -1;
    peer->same_host = true; /* until the lanes say: every sysv-sized part is checked */
    peer->lanes_read = true;
    if (peer->ep == NULL || (f = open_memstream(&buf, &len)) == NULL) {
        return;
    }
    peer->same_host = false;
    ucp_ep_print_info(peer->ep, f);
    fclose(f);
    for (char *save = NULL, *line = strtok_r(buf, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save)) {
        const char *to = strstr(line, "-> ");
        const char *md = to != NULL ? strstr(to, "md[") : NULL;
        char *end;
        long index;

        if (strstr(line, "lane[") == NULL || md == NULL) {
            continue;
        }
        if (strstr(line, ":tcp/lo.") != NULL && strstr(line, ":tcp/lo.") < to) {
            peer->same_host = true; /* TCP over the loopback device */
        }
        index = strtol(md + 3, &end, 10);
        if (end == md + 3 || strncmp(end, "]/", 2) != 0) {
            continue;
        }
        end += 2;
        for (size_t i = 0; i < sizeof(same_host_tls) / sizeof(same_host_tls[0]); i++) {
            size_t n = strlen(same_host_tls[i]);
            if (strncmp(end, same_host_tls[i], n) == 0 && end[n] == '/') {
                peer->same_host = true;
                if (i == 0 && index >= 0 && index < 64) {
                    peer->sysv_md = (int)index;
                }
            }
        }
    }
    free(buf);
    ferry_debug("connector %s: peer %llu: %s host, sysv md %d", peer->connector->name,
                (unsigned long long)peer->id, peer->same_host ? "same" : "another", peer->sysv_md);
}

/* The System V segment of a key's sysv part, attached as UCX 1.13 attaches
 * it while it unpacks the key (shmat, read-write), and let go at once:
 * when UCX's attach fails (the segment is gone: its owner deregistered the
 * memory, as a passive side that gave up and freed its pool does, and the
 * metadata came late; or a passive side named a dead one),
 * ucp_ep_rkey_unpack's error path releases the key's parts it never
 * unpacked, and the process dies (SIGSEGV, audit-s35-python H1). */
static ferry_status_t sysv_attachable(const uint8_t *part)
{
    int32_t shmid;
    void *at;

    memcpy(&shmid, part, sizeof(shmid));
    at = shmat(shmid, NULL, 0);
    if (at == (void *)-1) {
        int err = errno;
        return ferry__fail(err == EACCES ? FERRY_ERR_PERMISSION_DENIED : FERRY_ERR_NOT_FOUND,
                           "the System V shared-memory segment it names (id %d) cannot be "
                           "attached (%s): the passive side has deregistered that memory, or "
                           "the key is not its own",
                           (int)shmid, strerror(err));
    }
    shmdt(at);
    return FERRY_OK;
}

/* Checks a framed key's sysv part before UCX unpacks it, where UCX would
 * attach it: where the endpoint reaches the peer's sysv transport (the
 * part at that md index: it must be UCX 1.13's 12 bytes, which UCX reads
 * whole), and where a lane shows the peer on this host without naming its
 * sysv md (the environment turned shared-memory error handling off, and
 * TCP over the loopback device carries the lanes: UCX still attaches a
 * reachable sysv part) or the lanes could not be read, every part of 12
 * bytes, the size only sysv's has in UCX 1.13 (a peer on this host in
 * another IPC namespace may then be refused). Elsewhere (another host) UCX leaves
 * that part alone, and so does this: checked there, it refused honest
 * writers (review-s35c). Tried and let go at once (an attachment kept would
 * read as an alias in segments.c's check); a segment that goes in the
 * moment between this and UCX's attach still kills the process (README,
 * "Known limit"). */
static ferry_status_t sysv_part_attachable(ferry__peer_t *peer, const uint8_t *packed, size_t len)
{
    uint64_t md_map;
    size_t off = sizeof(md_map) + 1;
    bool every;

    if (!peer->lanes_read) {
        shm_lanes_read(peer);
    }
    every = peer->sysv_md < 0 && peer->same_host;
    if (peer->sysv_md < 0 && !every) {
        return FERRY_OK;
    }
    memcpy(&md_map, packed, sizeof(md_map));
    for (; md_map != 0 && off < len; md_map &= md_map - 1) {
        size_t part = packed[off];
        bool sysv = (int)__builtin_ctzll(md_map) == peer->sysv_md;
        ferry_status_t status = FERRY_OK;

        if (sysv && part != SYSV_KEY_PART_LEN) {
            return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                               "its System V part is %zu bytes, not UCX 1.13's %d", part,
                               SYSV_KEY_PART_LEN);
        }
        if (sysv || (every && part == SYSV_KEY_PART_LEN)) {
            status = sysv_attachable(packed + off + 1);
        }
        if (status != FERRY_OK) {
            return status;
        }
        off += 1u + part;
    }
    return FERRY_OK;
}

/* A worker address: its first byte's low four bits are the format's
 * version, 0 or 1 in UCX 1.13 (UCP_OBJECT_VERSION_V1, _V2), which it
 * asserts before it reads on. */
static bool address_version_known(const uint8_t *address, size_t len)
{
    return len >= 2 && (address[0] & 0xfu) <= 1u;
}

static atomic_uint peers_open; /* ferry__peers_open */

unsigned ferry__peers_open(void)
{
    return atomic_load(&peers_open);
}

/* UCX callback (lock held): remember the failure; the loop handles it. */
static void ep_err_cb(void *arg, ucp_ep_h ep, ucs_status_t status)
{
    ferry__peer_t *peer = arg;

    (void)ep;
    if (peer->failure == UCS_OK && !peer->closing) {
        peer->failure = status;
        ferry__peer_ref_for_failure(peer);
        peer->failed_next = peer->connector->failed;
        peer->connector->failed = peer;
    }
}

static ferry_status_t peer_open(ferry_connector_t *c, const uint8_t *address, size_t len,
                                ferry__peer_t **peer_p)
{
    ucp_ep_params_t params = {0};
    ferry__peer_t *peer;
    ucs_status_t status;

    if (!address_version_known(address, len)) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "connector %s: %zu bytes that are no UCX worker address (version %u)",
                           c->name, len, len > 0 ? address[0] & 0xfu : 0u);
    }
    peer = calloc(1, sizeof(*peer));
    if (peer == NULL || (peer->address = malloc(len)) == NULL) {
        free(peer);
        return ferry__fail(FERRY_ERR_NO_MEMORY, "connector %s: out of memory for a peer", c->name);
    }
    memcpy(peer->address, address, len);
    peer->address_len = len;
    peer->connector = c;
    peer->id = c->next_peer_id++;
    params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE;
    params.address = (const ucp_address_t *)peer->address;
    params.err_mode = UCP_ERR_HANDLING_MODE_NONE;
    if (c->peer_error_handling) {
        params.field_mask |= UCP_EP_PARAM_FIELD_ERR_HANDLER;
        params.err_mode = UCP_ERR_HANDLING_MODE_PEER;
        params.err_handler.cb = ep_err_cb;
        params.err_handler.arg = peer;
    }
    status = ucp_ep_create(c->worker, &params, &peer->ep);
    if (status != UCS_OK) {
        ferry_error("connector %s: ucp_ep_create: %s", c->name, ucs_status_string(status));
        free(peer->address);
        free(peer);
        return ferry__fail(FERRY_ERR_UNAVAILABLE, "connector %s: cannot reach the peer: %s",
                           c->name, ucs_status_string(status));
    }
    c->stats.endpoints_created++;
    atomic_fetch_add(&peers_open, 1);
    ferry_debug("connector %s: peer %llu: endpoint created", c->name, (unsigned long long)peer->id);
    *peer_p = peer;
    return FERRY_OK;
}

/* Evicts least recently used peers nobody else holds while the cache is over
 * its bound. The list is most recent first, so the last idle one goes. */
static void peer_cache_trim(ferry_connector_t *c)
{
    while (c->n_peers > c->peer_cache_max) {
        ferry__peer_t **victim = NULL;
        for (ferry__peer_t **pp = &c->peers; *pp != NULL; pp = &(*pp)->next) {
            if ((*pp)->refs == 1) {
                victim = pp;
            }
        }
        if (victim == NULL) {
            return; /* every cached peer is in use: never close those */
        }
        ferry_debug("connector %s: peer %llu: evicted from the endpoint cache", c->name,
                    (unsigned long long)(*victim)->id);
        ferry__peer_uncache(*victim);
    }
}

void ferry__peer_uncache(ferry__peer_t *peer)
{
    ferry_connector_t *c = peer->connector;
    ferry__peer_t **pp = &c->peers;

    if (!peer->in_cache) {
        return;
    }
    while (*pp != peer) {
        pp = &(*pp)->next;
    }
    *pp = peer->next;
    peer->in_cache = false;
    c->n_peers--;
    ferry__peer_put(peer);
}

ferry_status_t ferry__peer_get(ferry_connector_t *c, const uint8_t *address, size_t len,
                               ferry__peer_t **peer_p)
{
    ferry__peer_t *peer;
    ferry_status_t status;

    for (ferry__peer_t **pp = &c->peers; (peer = *pp) != NULL; pp = &peer->next) {
        if (peer->address_len == len && memcmp(peer->address, address, len) == 0) {
            if (peer->failure != UCS_OK) {
                /* Failed, and the loop has not handled it yet (it holds
                 * its own reference): out of the cache now, and a fresh
                 * endpoint for this operation. */
                ferry__peer_uncache(peer);
                break;
            }
            c->stats.endpoint_cache_hits++;
            *pp = peer->next; /* most recently used: to the front */
            peer->next = c->peers;
            c->peers = peer;
            peer->refs++;
            *peer_p = peer;
            return FERRY_OK;
        }
    }
    status = peer_open(c, address, len, &peer);
    if (status != FERRY_OK) {
        return status;
    }
    peer->in_cache = true;
    peer->refs = 2; /* the cache's and the caller's */
    peer->next = c->peers;
    c->peers = peer;
    c->n_peers++;
    peer_cache_trim(c);
    *peer_p = peer;
    return FERRY_OK;
}

void ferry__peer_ref(ferry__peer_t *peer)
{
    peer->refs++;
}

void ferry__peer_ref_for_failure(ferry__peer_t *peer)
{
    peer->refs++; /* the failed queue's; dropped by the loop */
}

static void rkey_destroy(ferry_connector_t *c, ferry__rkey_t *rk)
{
    c->rkeys_pinned_bytes -= rk->pin.len;
    ferry__unpin(&rk->pin); /* before the unmap */
    if (rk->rkey != NULL) {
        ucp_rkey_destroy(rk->rkey);
    }
    ferry__segment_release(rk);
    free(rk->packed);
    free(rk);
}

/* Closes the endpoint (force: UCX cancels what is outstanding on it) and
 * waits, bounded, for the close; the peer has no endpoint from here on. */
static void ep_close(ferry__peer_t *peer, bool force)
{
    ferry_connector_t *c = peer->connector;
    ucp_request_param_t param = {0};
    ucs_status_ptr_t req;

    peer->closing = true;
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
    req = ucp_ep_close_nbx(peer->ep, &param);
    peer->ep = NULL;
    if (UCS_PTR_IS_ERR(req)) {
        ferry_error("connector %s: peer %llu: ucp_ep_close_nbx: %s", c->name,
                    (unsigned long long)peer->id, ucs_status_string(UCS_PTR_STATUS(req)));
    } else if (req != NULL) {
        /* Bounded: a peer that does not answer the close is forced. */
        for (int i = 0; i < 100000 && ucp_request_check_status(req) == UCS_INPROGRESS; i++) {
            ucp_worker_progress(c->worker);
        }
        if (ucp_request_check_status(req) == UCS_INPROGRESS) {
            ucp_request_cancel(c->worker, req);
        }
        ucp_request_free(req);
    }
    ferry_debug("connector %s: peer %llu: endpoint closed%s", c->name, (unsigned long long)peer->id,
                force ? " by force" : "");
}

static void peer_close(ferry__peer_t *peer)
{
    peer->closing = true;
    while (peer->rkeys != NULL) {
        ferry__rkey_t *rk = peer->rkeys;
        peer->rkeys = rk->next;
        rkey_destroy(peer->connector, rk);
    }
    if (peer->ep != NULL) {
        ep_close(peer, peer->failure != UCS_OK);
    }
    free(peer->address);
    free(peer);
    atomic_fetch_sub(&peers_open, 1);
}

bool ferry__peer_force_close(ferry__peer_t *peer)
{
    ferry_connector_t *c = peer->connector;

    if (!c->peer_error_handling) {
        return false; /* UCX 1.13 refuses to force an endpoint without it */
    }
    if (peer->ep == NULL) {
        return true;
    }
    peer->forced = true;
    if (peer->failure == UCS_OK) {
        /* The loop ends the peer's other operations as on its failure. */
        peer->failure = UCS_ERR_CANCELED;
        ferry__peer_ref_for_failure(peer);
        peer->failed_next = c->failed;
        c->failed = peer;
    }
    ferry__peer_uncache(peer); /* the next operation opens a new endpoint */
    ep_close(peer, true);
    return true;
}

void ferry__peer_put(ferry__peer_t *peer)
{
    if (--peer->refs == 0) {
        peer_close(peer);
    }
}

void ferry__peer_cache_clear(ferry_connector_t *c)
{
    while (c->peers != NULL) {
        ferry__peer_uncache(c->peers);
    }
}

bool ferry__peer_cache_force_close(ferry_connector_t *c)
{
    ferry__peer_t *next;

    if (!c->peer_error_handling) {
        return false;
    }
    for (ferry__peer_t *peer = c->peers; peer != NULL; peer = next) {
        next = peer->next; /* the close takes it out of the cache */
        if (peer->refs > 1) {
            ferry__peer_force_close(peer);
        }
    }
    return true;
}

/* Evicts the oldest unused keys beyond the cap (the list is newest first). */
static void rkey_trim(ferry__peer_t *peer)
{
    ferry__rkey_t **pp = &peer->rkeys;
    unsigned seen = 0;

    while (*pp != NULL) {
        ferry__rkey_t *rk = *pp;
        if (++seen > FERRY__RKEY_CACHE_MAX && rk->refs == 0) {
            *pp = rk->next;
            peer->n_rkeys--;
            rkey_destroy(peer->connector, rk);
        } else {
            pp = &rk->next;
        }
    }
}

ferry_status_t ferry__peer_rkey_get(ferry__peer_t *peer, const uint8_t *packed, size_t len,
                                    uint64_t probe, ferry__rkey_t **rkey_p)
{
    ferry_connector_t *c = peer->connector;
    ferry__rkey_t *rk;
    ucs_status_t status;
    ferry_status_t refused;

    for (rk = peer->rkeys; rk != NULL; rk = rk->next) {
        if (rk->packed_len == len && memcmp(rk->packed, packed, len) == 0) {
            c->stats.rkey_cache_hits++;
            rk->refs++;
            *rkey_p = rk;
            return FERRY_OK;
        }
    }
    rk = calloc(1, sizeof(*rk));
    if (rk == NULL || (rk->packed = malloc(len)) == NULL) {
        free(rk);
        return ferry__fail(FERRY_ERR_NO_MEMORY, "connector %s: out of memory for a remote key",
                           c->name);
    }
    memcpy(rk->packed, packed, len);
    rk->packed_len = len;
    if (!rkey_framed(rk->packed, len)) {
        free(rk->packed);
        free(rk);
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "remote key: %zu bytes not framed as a UCX remote key", len);
    }
    refused = sysv_part_attachable(peer, rk->packed, len);
    if (refused != FERRY_OK) {
        free(rk->packed);
        free(rk);
        return refused;
    }
    status = ucp_ep_rkey_unpack(peer->ep, rk->packed, &rk->rkey);
    if (status != UCS_OK) {
        free(rk->packed);
        free(rk);
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "remote key rejected by UCX: %s",
                           ucs_status_string(status));
    }
    refused = ferry__rkey_classify(peer, rk, probe);
    if (refused != FERRY_OK) {
        rkey_destroy(c, rk); /* the message stays this thread's */
        return refused;
    }
    c->stats.rkeys_unpacked++;
    rk->refs = 1;
    rk->next = peer->rkeys;
    peer->rkeys = rk;
    peer->n_rkeys++;
    rkey_trim(peer);
    *rkey_p = rk;
    return FERRY_OK;
}

void ferry__peer_rkey_put(ferry__peer_t *peer, ferry__rkey_t *rkey)
{
    (void)peer;
    rkey->refs--;
}

/* UCX callback (lock held): queue the finished request. */
static void req_done_cb(void *request, ucs_status_t status, void *user_data)
{
    ferry__req_t *req = user_data;

    if (req->type != FERRY__REQ_ADMIT) {
        req->connector->reqs_in_ucx--;
    }
    ferry__req_finish(req, status);
    ucp_request_free(request);
}

void ferry__req_finish(ferry__req_t *req, ucs_status_t status)
{
    ferry_connector_t *c = req->connector;

    if (req->type == FERRY__REQ_ADMIT) {
        /* An answer to a claim leaves nothing for the loop to do: it ends
         * here, so that a flood of claims never queues its answers. */
        c->replies_in_flight--;
        if (status != UCS_OK) {
            ferry_debug("connector %s: admit answer not sent: %s", c->name,
                        ucs_status_string(status));
        }
        free(req->buf);
        free(req);
        return;
    }
    req->status = status;
    req->next = NULL;
    *c->reqs_tail = req;
    c->reqs_tail = &req->next;
}

void ferry__req_param(ferry__req_t *req, ucp_request_param_t *param)
{
    memset(param, 0, sizeof(*param));
    param->op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    param->cb.send = req_done_cb;
    param->user_data = req;
}

void ferry__req_posted(ferry__req_t *req, ucs_status_ptr_t sp)
{
    if (sp == NULL) {
        ferry__req_finish(req, UCS_OK);
    } else if (UCS_PTR_IS_ERR(sp)) {
        ferry__req_finish(req, UCS_PTR_STATUS(sp));
    } else if (req->type != FERRY__REQ_ADMIT) {
        req->connector->reqs_in_ucx++; /* until req_done_cb */
    }
    /* Otherwise req_done_cb queues it later. */
}

static void send_on_ep(ferry_connector_t *c, ucp_ep_h ep, const ferry__msg_t *msg,
                       ferry__req_type_t req_type, ferry_op_t *op)
{
    ucp_request_param_t param;
    ferry__req_t *req;
    size_t len = 0;

    req = calloc(1, sizeof(*req));
    if (req == NULL) {
        ferry_error("connector %s: out of memory for a request", c->name);
        if (op != NULL) {
            ferry__op_move(op, FERRY__OP_ERRORED, FERRY_ERR_NO_MEMORY, "out of memory");
        }
        return;
    }
    req->type = req_type;
    req->op = op;
    req->connector = c;
    if (req_type == FERRY__REQ_ADMIT) {
        c->replies_in_flight++; /* until ferry__req_finish */
    }
    if (op != NULL) {
        ferry__op_ref(op);
    }
    if (ferry__msg_encode(msg, &req->buf, &len) != FERRY_OK) {
        ferry__req_finish(req, UCS_ERR_NO_MEMORY);
        return;
    }
    if (ep == NULL) {
        ferry__req_finish(req, UCS_ERR_NOT_CONNECTED); /* closed by force */
        return;
    }
    ferry__req_param(req, &param);
    param.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
    param.flags = UCP_AM_SEND_FLAG_EAGER;
    if (msg->type == FERRY__MSG_CLAIM) {
        /* The passive side answers on the endpoint this names (reply_ep)
         * and never builds one from the address in the claim. */
        param.flags |= UCP_AM_SEND_FLAG_REPLY;
    }
    ferry__req_posted(req, ucp_am_send_nbx(ep, FERRY__AM_ID, NULL, 0, req->buf, len, &param));
}

void ferry__send_msg(ferry__peer_t *peer, const ferry__msg_t *msg, ferry__req_type_t req_type,
                     ferry_op_t *op)
{
    send_on_ep(peer->connector, peer->ep, msg, req_type, op);
}

void ferry__send_reply(ferry_connector_t *c, ucp_ep_h reply_ep, const ferry__msg_t *msg)
{
    /* An admission always goes (one per passive op: the caller's ops bound
     * them); a refusal past the bound does not, and that claimant's wait
     * ends at its claim timeout. */
    if (msg->status != FERRY_OK && c->replies_in_flight >= FERRY__REPLIES_MAX) {
        if (c->replies_dropped++ == 0) {
            ferry_warn("connector %s: %u answers to claims wait to be sent (a claimant does not "
                       "read them?): refusals past that are dropped; later drops are logged at "
                       "debug",
                       c->name, c->replies_in_flight);
        } else {
            ferry_debug("connector %s: refusal of a claim dropped", c->name);
        }
        return;
    }
    send_on_ep(c, reply_ep, msg, FERRY__REQ_ADMIT, NULL);
}
