/*
 * ferry_int.h: libferry's private structures, shared by the worker/ files.
 *
 * Locking: one mutex per connector, connector->lock, guards everything here
 * that can change: every ucp_* call on the connector's context and worker
 * (the worker is created UCS_THREAD_MODE_SERIALIZED: the lock is the
 * serialization), the peer (endpoint) cache and its remote keys, the
 * operation table, the four queues, the staged list (ops with copy-engine
 * work in flight, staged.c), and every field of every operation except
 * those set once before the operation is published. Operations' condition
 * variables wait on that mutex.
 *
 * Who runs what: the progress loop (the connector's thread, or the caller's
 * thread inside ferry_connector_progress / ferry_op_wait) calls
 * ucp_worker_progress with the lock held. UCX callbacks therefore run with
 * the lock held; they only record a status and push an item on a queue. The
 * loop then drains the queues (ferry__connector_drain): that is where
 * operations advance. Completion callbacks for users are delivered by the
 * loop after it drops the lock. Before it sleeps, the loop (and a caller-mode
 * ferry_op_wait) spins for spin_ns, dropping the lock between rounds; a
 * thread-mode ferry_op_wait spins on op->final (an atomic) before it sleeps
 * on op->cond, and drains the loop itself (never delivering callbacks)
 * whenever a trylock of the lock succeeds meanwhile. See connector.c for
 * why.
 *
 * Lifetime: an operation is reference counted (under the lock): the user's
 * handle, each UCX request in flight that names it, and a pending completion
 * callback each hold one. It is freed when the last goes, so a callback that
 * fires after the user destroyed the operation still finds valid memory.
 */
#ifndef FERRY_WORKER_FERRY_INT_H
#define FERRY_WORKER_FERRY_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <ucp/api/ucp.h>

#include "ferry/ferry.h"
#include "common/md_rules.h"
#include "ferry/v1/types.pb-c.h"
#include "worker/copy_engine.h"
#include "worker/errors.h"
#include "worker/op_cancel.h"

#define FERRY__AM_ID          0x4652u /* "FR": the one active-message id */
#define FERRY__KEY_LEN        FERRY_NOTIFICATION_KEY_LEN
#define FERRY__NAME_LEN       64
#define FERRY__HOST_LEN       256
#define FERRY__OP_BUCKETS     256
#define FERRY__RKEY_CACHE_MAX 256 /* unused remote keys kept per peer */
#define FERRY__PEER_CACHE_MAX 64  /* cached endpoints (least recently used go) */
/* How long a CLAIM may go unanswered (FERRY_CLAIM_TIMEOUT_MS overrides):
 * a live passive side answers inside its UCX callback. */
#define FERRY__CLAIM_TIMEOUT_MS 30000
#define FERRY__CLAIM_SWEEP_MS   100 /* how often the loop looks for them */
/* A claim that timed out still waits this many claim timeouts for a late
 * admission, which it answers with an error notice, so that the passive
 * side, which admitted it, does not wait for the writer's notice forever;
 * then its operation is freed. */
#define FERRY__LATE_ADMIT_FACTOR 10
/* Messages the loop may have waiting (anyone who can reach the worker can
 * send them); past either bound a message is dropped. */
#define FERRY__INBOX_MAX       4096
#define FERRY__INBOX_MAX_BYTES (16u << 20)
/* ... and at most this many for one operation, so that one party (who
 * holds that operation's key and nonce) cannot fill the inbox and have the
 * other parties' messages dropped: more than an honest party ever has
 * waiting for one operation (a CHUNK or CREDIT per staging slot, and its
 * NOTICE or ADMIT). */
#define FERRY__INBOX_PER_OP (FERRY_MD_SLOTS_MAX + 2)
/* Answers to claims (ADMIT) posted on reply endpoints and not yet sent
 * (the claimant does not read them): past this many, a refusal is dropped
 * (peer.c), so a peer that floods claims and never reads cannot make this
 * worker hold their answers without end. */
#define FERRY__REPLIES_MAX 1024
/* ucp_worker_progress calls before the loop handles one queued item, so
 * that a flood cannot keep it from ever handling one. */
#define FERRY__PROGRESS_BURST 64
/* Queued items (failed peers, watches, messages, requests, staged copies)
 * one ferry__connector_drain handles at most before it returns: a party
 * that keeps one message arriving per item handled keeps its queue from
 * ever emptying, and the drain must still let the lock go (API calls,
 * deliveries, the claims sweep, a caller's deadline). */
#define FERRY__DRAIN_ITEMS_MAX 4096
/* Free staging slot memory a connector keeps for later staged passive ops
 * (staged.c): four sets of the default 4 slots of 4 MiB. */
#define FERRY__SLOT_POOL_BYTES (64u << 20)
/* Remote slots a connector's cached keys may keep pinned (staged.c). */
#define FERRY__RKEY_PIN_MAX (256u << 20)
#define FERRY__NONCE_LEN    16 /* admission nonce, see wire.c */

/* ---- metadata (metadata.c): pure, no UCX ------------------------------ */

typedef enum {
    FERRY__KIND_WRITABLE = 0, /* passive, peer writes */
    FERRY__KIND_READABLE = 1, /* passive, peer reads */
    FERRY__KIND_WRITE = 2,    /* active put */
    FERRY__KIND_READ = 3,     /* active get */
} ferry__op_kind_t;

/* Decodes and checks RdmaMetadata bytes: every required field present and
 * valid, descriptors non-empty, of one device kind, each with an address,
 * size and rkey. On failure the message names the offending field. The
 * result is freed with ferry__metadata_free. */
ferry_status_t ferry__metadata_decode(const uint8_t *bytes, size_t len,
                                      Ferry__V1__RdmaMetadata **md_p);

/* The same checks on an already unpacked message. */
ferry_status_t ferry__metadata_validate(const Ferry__V1__RdmaMetadata *md);

void ferry__metadata_free(Ferry__V1__RdmaMetadata *md);

/* Checks an active operation's local list against decoded metadata: the
 * kind (a write pairs with a writable), then the pairing rule of
 * common/md_rules.h (count, each pair's size), the one the coordinator's
 * Claim checks. */
ferry_status_t ferry__metadata_match(const Ferry__V1__RdmaMetadata *md, ferry__op_kind_t kind,
                                     const ferry_descriptor_t *local, size_t n);

/* Builds and packs metadata; *bytes_p is malloc'd. */
typedef struct {
    ferry__op_kind_t kind; /* WRITABLE or READABLE */
    const uint8_t *worker_address;
    size_t worker_address_len;
    const ferry_descriptor_t *descs;
    size_t n;
    const void *const *rkeys; /* n packed remote keys (NULL with staging) */
    const size_t *rkey_lens;
    const Ferry__V1__Staging *staging; /* the staged path; NULL: direct */
    const uint8_t *key;                /* FERRY__KEY_LEN bytes */
    const char *worker_name;
    const char *hostname;
    bool peer_error_handling; /* the connector's (metadata field 9) */
} ferry__metadata_build_t;

ferry_status_t ferry__metadata_encode(const ferry__metadata_build_t *build, uint8_t **bytes_p,
                                      size_t *len_p);

/* ---- wire messages (wire.c): the active messages between connectors -- */

typedef enum {
    FERRY__MSG_CLAIM = 1,  /* active -> passive: admit me (carries my address) */
    FERRY__MSG_ADMIT = 2,  /* passive -> active: the answer to a claim */
    FERRY__MSG_NOTICE = 3, /* active -> passive: transfer done, with a status */
    FERRY__MSG_CHUNK = 4,  /* active -> passive (staged): a chunk in / for a slot */
    FERRY__MSG_CREDIT = 5, /* passive -> active (staged): slot free / full, or stop */
} ferry__msg_type_t;

/* A range of the passive side's memory as its metadata names it: a
 * descriptor, or the staging block (slots * slot_size bytes). */
typedef struct {
    uint64_t address;
    uint64_t length;
} ferry__range_t;

/* At most this many ranges in a CLAIM: every descriptor, and the staging
 * block. */
#define FERRY__CLAIM_RANGES_MAX (FERRY_MD_DESCRIPTORS_MAX + 1)

typedef struct {
    ferry__msg_type_t type;
    uint8_t key[FERRY__KEY_LEN];           /* the passive operation */
    uint64_t op_id;                        /* the active operation (CLAIM, ADMIT) */
    uint8_t op_kind;                       /* CLAIM: FERRY__KIND_WRITE or _READ */
    bool peer_errors_said;                 /* CLAIM: the claimant says peer_errors */
    bool peer_errors;                      /* CLAIM: the claimant's peer_error_handling */
    ferry_status_t status;                 /* ADMIT, NOTICE, CREDIT; decoded:
                                            * ferry__msg_peer_status's */
    uint8_t nonce[FERRY__NONCE_LEN];       /* ADMIT (admitted), NOTICE, CHUNK: the admission */
    uint8_t claim_nonce[FERRY__NONCE_LEN]; /* CLAIM, and echoed: ADMIT, CREDIT */
    const uint8_t *address;                /* CLAIM: the claimant's worker address */
    size_t address_len;
    /* CLAIM: the ranges the claimant will write or read, as its metadata
     * names them (every descriptor, then the staging block if any), so
     * that the passive side admits only metadata that names its own
     * memory. Encoding reads ranges, or ranges_wire where set; decoding
     * sets ranges_wire (n_ranges records inside the buffer), read with
     * ferry__msg_range. */
    const ferry__range_t *ranges;
    const uint8_t *ranges_wire;
    uint32_t n_ranges;
    uint32_t slot;   /* CHUNK, CREDIT: the staging slot */
    uint32_t desc;   /* CHUNK: the descriptor index */
    uint64_t offset; /* CHUNK: where in the descriptor */
    uint64_t len;    /* CHUNK: how many bytes */
} ferry__msg_t;

/* Encodes into a malloc'd buffer. */
ferry_status_t ferry__msg_encode(const ferry__msg_t *msg, uint8_t **buf_p, size_t *len_p);

/* Decodes; msg->address points into buf. FERRY_ERR_PROTOCOL when malformed. */
ferry_status_t ferry__msg_decode(const uint8_t *buf, size_t len, ferry__msg_t *msg);

/* A decoded CLAIM's range i (i < msg->n_ranges). */
ferry__range_t ferry__msg_range(const ferry__msg_t *msg, uint32_t i);

/* The code a peer's status number stands for here, the one mapping of it
 * (the decoder applies it): FERRY_OK and the codes a peer may report about
 * a transfer as they are; another code of the status table (one about the
 * peer's own lease, coordinator or caller) FERRY_ERR_PEER_FAILED; any other
 * number FERRY_ERR_PROTOCOL. */
ferry_status_t ferry__msg_peer_status(int32_t status);

/* Nonces equal, in time that does not depend on where they differ. */
bool ferry__nonce_equal(const uint8_t *a, const uint8_t *b);
bool ferry__nonce_is_zero(const uint8_t *nonce);

/* ---- connector internals (connector.c, peer.c) ------------------------ */

/* Queues a copy of one decoded-valid message from a party to op (NULL: to
 * no operation) for the loop, unless the inbox is at its bound, or op has
 * FERRY__INBOX_PER_OP waiting (then drops it: false). Lock held (the AM
 * callback). */
bool ferry__inbox_push(ferry_connector_t *c, struct ferry_op *op, const void *data, size_t length);
/* Whether a decoded ADMIT, CREDIT, NOTICE or CHUNK could come from a party
 * to one of c's operations: it names one (by key, or by op id and key) and
 * carries the nonce that party was given (the claim nonce for an ADMIT or
 * CREDIT, the admission nonce for a NOTICE or CHUNK), or, a NOTICE, settles
 * stale staging slots. Only those are queued (connector.c), counted
 * against the operation (*op_p; NULL for stale slots); the handlers check
 * again. Lock held. */
bool ferry__msg_from_a_party(ferry_connector_t *c, const ferry__msg_t *msg, struct ferry_op **op_p);

typedef struct ferry__rkey {
    struct ferry__rkey *next;
    uint8_t *packed;
    size_t packed_len;
    ucp_rkey_h rkey;
    unsigned refs; /* operations using it */
    /* Staged (staged.c): the remote slots as mapped here (ucp_rkey_ptr),
     * pinned by an engine for its copies, or empty. Undone before the key
     * is destroyed; counted in connector->rkeys_pinned_bytes. */
    ferry__pin_t pin;
    bool pin_refused; /* an engine could not pin them: not tried again */
    /* segments.c: UCX maps the key's segment here, at [seg_start, seg_end),
     * a mapping of file (seg_dev, seg_ino), counted in its table. */
    bool mapped;
    uintptr_t seg_start, seg_end;
    uint64_t seg_dev, seg_ino;
} ferry__rkey_t;

/* One remote worker: a cached endpoint and the remote keys unpacked on it.
 * The cache is a list in least-recently-used order (most recent first),
 * at most connector->peer_cache_max long counting only peers nobody else
 * holds: eviction never closes an endpoint an operation uses. */
typedef struct ferry__peer {
    struct ferry__peer *next;        /* cache chain, most recently used first */
    struct ferry__peer *failed_next; /* failed-peer queue */
    ferry_connector_t *connector;
    uint8_t *address;
    size_t address_len;
    ucp_ep_h ep;
    uint64_t id;          /* for logs */
    ucs_status_t failure; /* UCS_OK while usable */
    bool in_cache;
    bool closing;
    /* This side closed the endpoint by force (ep NULL from then on): says
     * nothing of the peer's own endpoint to us, which may still carry its
     * writes into a passive op's memory. */
    bool forced;
    unsigned refs; /* the cache's and each operation's */
    ferry__rkey_t *rkeys;
    unsigned n_rkeys;
    /* Read from the endpoint's lanes once (peer.c, shm_lanes_read): the
     * peer's md index of UCX's sysv transport where a lane uses it, else
     * -1; and whether any lane is a same-host transport (shared memory,
     * cma, self). */
    int sysv_md;
    bool same_host;
    bool lanes_read;
} ferry__peer_t;

typedef enum {
    FERRY__REQ_FLUSH = 1,  /* the puts/gets of an active op are done */
    FERRY__REQ_CLAIM = 2,  /* a claim was sent */
    FERRY__REQ_NOTICE = 3, /* a notice was sent */
    FERRY__REQ_ADMIT = 4,  /* an admit answer was sent */
    FERRY__REQ_LANE = 5,   /* staged: one lane's put/get and flush are done */
    FERRY__REQ_CHUNK = 6,  /* staged: a CHUNK was sent */
    FERRY__REQ_CREDIT = 7, /* staged: a CREDIT was sent (op NULL) */
} ferry__req_type_t;

/* One UCX request in flight, owned by the request's callback until it is
 * queued, then by the loop. */
typedef struct ferry__req {
    struct ferry__req *next;
    ferry__req_type_t type;
    ferry_connector_t *connector;
    struct ferry_op *op; /* holds a reference; NULL for ADMIT */
    ucs_status_t status;
    uint8_t *buf;  /* message bytes, freed with the request */
    unsigned lane; /* LANE: which lane of the staged pipeline */
} ferry__req_t;

/* A received active message, copied out of the UCX callback. */
typedef struct ferry__inmsg {
    struct ferry__inmsg *next;
    /* The operation whose party sent it (a reference, counted in its
     * inbox_queued), or NULL (a NOTICE that settles stale slots). */
    struct ferry_op *op;
    size_t len;
    uint8_t data[];
} ferry__inmsg_t;

struct ferry_connector {
    char name[FERRY__NAME_LEN];
    char hostname[FERRY__HOST_LEN];
    ferry_progress_mode_t mode;
    bool peer_error_handling;
    bool cuda_available;   /* the CUDA driver loaded and has a device */
    bool ucx_reports_cuda; /* UCX reports CUDA among its memory types */
    bool ucx_cuda;         /* ... and cuda_direct: the direct path (connector.c) */
    bool cuda_direct;      /* params' FIELD_CUDA_DIRECT, else FERRY_CUDA_DIRECT=1 */
    /* The device whose context the progress thread makes current: the
     * first a direct-path operation's CUDA memory is on; -1 until one is
     * (set once, by ferry__cuda_admit; read by the progress thread). */
    _Atomic int32_t cuda_progress_device;

    ucp_context_h context;
    ucp_worker_h worker;
    ucp_address_t *address;
    size_t address_len;
    int efd;

    uint64_t spin_ns; /* see ferry_connector_params_t.spin_us */

    pthread_mutex_t lock;
    pthread_t thread;
    bool thread_started;
    atomic_bool stopping;

    /* Everything below: under lock. */
    bool armed;        /* the loop sleeps (or is about to) on efd: wakes must signal */
    bool drain_capped; /* the last drain stopped at FERRY__DRAIN_ITEMS_MAX */
    ferry__peer_t *peers;
    unsigned n_peers;        /* peers in the cache */
    unsigned peer_cache_max; /* FERRY__PEER_CACHE_MAX; tests lower it */
    bool warned_malformed;   /* a malformed message was logged at warn */
    uint64_t next_peer_id;
    struct ferry_op *ops[FERRY__OP_BUCKETS];
    uint64_t next_op_id;
    unsigned live_ops;           /* allocated, the user's or not */
    int64_t claim_timeout_ms;    /* FERRY__CLAIM_TIMEOUT_MS or FERRY_CLAIM_TIMEOUT_MS */
    int64_t next_claim_sweep_ms; /* monotonic: when the loop next looks */
    unsigned user_ops;           /* not yet destroyed by the user (destroy refuses) */
    /* Queues, FIFO: head and tail pointer-to-next. */
    ferry__req_t *reqs, **reqs_tail;
    ferry__inmsg_t *inbox, **inbox_tail;
    size_t inbox_len, inbox_bytes; /* bounded: FERRY__INBOX_MAX(_BYTES) */
    unsigned replies_in_flight;    /* ADMITs posted, not done: FERRY__REPLIES_MAX */
    unsigned reqs_in_ucx;          /* other requests UCX holds: posted, callback not yet run */
    uint64_t replies_dropped;      /* refusals dropped at that bound */
    uint64_t inbox_dropped;        /* messages dropped at the bound */
    ferry__peer_t *failed;
    /* Passive ops whose admitted claimant the loop is to open an endpoint
     * to (watch_next; each holds a reference): apart from the inbox, so
     * that a flood that fills the inbox cannot undo an admission. At most
     * one per passive op, so the caller's ops bound it. */
    struct ferry_op *watch;
    struct ferry_op *done, **done_tail;
    struct ferry_op *staged; /* staged ops with copies in flight (stage_next) */
    /* Slots of passive staged ops that ended before their claimant settled
     * (staged.c): kept until its notice comes, its endpoint fails, or
     * destroy. */
    struct ferry__stage *stale;
    /* Free passive slot memory kept for the next staged op of its size
     * (staged.c), at most FERRY__SLOT_POOL_BYTES in all. */
    struct ferry__slot_mem *slot_pool;
    size_t slot_pool_bytes;
    size_t rkeys_pinned_bytes; /* remote slots pinned here: FERRY__RKEY_PIN_MAX */
    ferry_connector_stats_t stats;
    /* Registered regions (region.c), unordered, never overlapping. */
    struct ferry_region *regions;
    uint64_t next_region_id;
    uint64_t mem_maps; /* ucp_mem_map calls made (ferry__mem_map); in the stats */
    struct ferry_connector *abandoned_next; /* connector.c: left behind by destroy */
};

/* How many connectors ferry_connector_destroy left behind (connector.c,
 * abandon), for tests. */
unsigned ferry__connectors_abandoned(void);

/* Lock helpers (abort on a broken mutex: that is a programmer error). */
void ferry__lock(ferry_connector_t *c);
void ferry__unlock(ferry_connector_t *c);

/* Wakes the progress loop (after posting work from another thread); lock
 * held. Signals the worker only when the loop sleeps or is about to (armed):
 * a loop that runs or spins finds the work without it. */
void ferry__wake(ferry_connector_t *c);

/* Monotonic clock, nanoseconds. */
uint64_t ferry__now_ns(void);

/* The CPU hint for a spin loop; every 16th call yields the CPU instead, so a
 * spinning thread gives way to runnable threads on an oversubscribed host. */
void ferry__spin_pause(unsigned iteration);

/* One pass of the loop, lock held: progress UCX until idle, drain queues.
 * Returns how much it did (0: nothing happened). */
unsigned ferry__connector_drain(ferry_connector_t *c);

/* Delivers queued completion callbacks; lock NOT held. */
void ferry__connector_deliver(ferry_connector_t *c);
/* Whether this thread runs op's done callback or listeners now (destroy
 * from there is finished by the delivery, once they return). */
bool ferry__delivering_op(const ferry_op_t *op);

/* Peer cache, lock held. _get returns a peer with a reference taken. */
ferry_status_t ferry__peer_get(ferry_connector_t *c, const uint8_t *address, size_t len,
                               ferry__peer_t **peer_p);
void ferry__peer_put(ferry__peer_t *peer);
void ferry__peer_ref(ferry__peer_t *peer); /* one more reference, put with _put */
void ferry__peer_ref_for_failure(ferry__peer_t *peer);
/* Peers (endpoints) open in this process, every connector's, for tests:
 * none is left once its connector is destroyed. */
unsigned ferry__peers_open(void);
/* The key, unpacked on the peer's endpoint or found in its cache. A key
 * UCX maps into this process is checked once, when it is unpacked
 * (ferry__rkey_classify, with probe, an address the metadata names in it);
 * FERRY_ERR_INVALID_ARGUMENT or FERRY_ERR_UNAVAILABLE, caching nothing,
 * when that check refuses it. */
ferry_status_t ferry__peer_rkey_get(ferry__peer_t *peer, const uint8_t *packed, size_t len,
                                    uint64_t probe, ferry__rkey_t **rkey_p);
void ferry__peer_rkey_put(ferry__peer_t *peer, ferry__rkey_t *rkey);
/* Drops every cached peer (connector destroy), closing endpoints. */
void ferry__peer_cache_clear(ferry_connector_t *c);
/* Connector destroy: closes by force every cached endpoint an operation
 * still holds (ferry__peer_force_close: UCX cancels what waits on it, and
 * the loop ends its operations). False, doing nothing, without peer error
 * handling. Lock held. */
bool ferry__peer_cache_force_close(ferry_connector_t *c);
/* Takes a peer out of the cache (it failed) and drops the cache's
 * reference; no-op when it is not cached. */
void ferry__peer_uncache(ferry__peer_t *peer);
/* Closes the peer's endpoint by force (UCX cancels its outstanding
 * requests, with UCS_ERR_CANCELED, and releases their buffers), takes it
 * out of the cache and queues it as failed, so that the loop ends its other
 * operations. False, doing nothing, without peer error handling: UCX 1.13
 * refuses a forced close on such an endpoint. Lock held. */
bool ferry__peer_force_close(ferry__peer_t *peer);

/* Sends a wire message on a peer; req_type and op (ref taken) as for
 * ferry__req_t. Lock held. Failure to post is reported through the queue
 * like a failed completion, so callers handle one path. */
void ferry__send_msg(ferry__peer_t *peer, const ferry__msg_t *msg, ferry__req_type_t req_type,
                     struct ferry_op *op);
/* Sends an ADMIT answer on the endpoint UCX gave with a received message
 * (ucp_am_recv_param_t.reply_ep). Only from inside the AM callback, while
 * UCX guarantees that endpoint; nothing is created or cached. A refusal
 * is dropped while FERRY__REPLIES_MAX answers wait to be sent. Lock held. */
void ferry__send_reply(ferry_connector_t *c, ucp_ep_h reply_ep, const ferry__msg_t *msg);

/* UCX request callback plumbing: queue a finished request for the loop
 * (an ADMIT's ends here: nothing is left to do for it). Lock held. */
void ferry__req_finish(ferry__req_t *req, ucs_status_t status);
/* Handles a ucs_status_ptr_t from an *_nbx call made with ferry__req_param. */
void ferry__req_posted(ferry__req_t *req, ucs_status_ptr_t sp);
void ferry__req_param(ferry__req_t *req, ucp_request_param_t *param);

/* ---- operations (op.c, op_passive.c, op_active.c) --------------------- */

/* The life of one operation. Every change goes through ferry__op_move,
 * which logs it. These are the data plane's own finer steps; each belongs
 * to one state of the one table (common/op_state.h), its phase, and takes
 * from there whether it is final and the public status it reports
 * (FERRY__FOREACH_OP_STEP below).
 *
 *   NEW -> READY                 created (passive: memory registered;
 *                                active: metadata checked)
 *   READY -> CLAIMING            active: claim sent
 *   READY -> CLAIMED             passive: one writer/reader admitted
 *   CLAIMING -> TRANSFERRING     active: admitted; puts/gets and flush
 *                                are posted next
 *   TRANSFERRING -> NOTIFYING    active: flush done; notice posted
 *   NOTIFYING -> COMPLETE        active: notice sent
 *   CLAIMED -> COMPLETE          passive: the admitted peer's notice arrived
 *   any non-final -> CANCELLED | ERRORED
 */
/* _(STEP, PHASE): a data-plane state and its state in common/op_state.h. */
#define FERRY__FOREACH_OP_STEP(_) \
    _(NEW, UNSPECIFIED)           \
    _(READY, REGISTERED)          \
    _(CLAIMING, CLAIMED)          \
    _(CLAIMED, CLAIMED)           \
    _(TRANSFERRING, CLAIMED)      \
    _(NOTIFYING, CLAIMED)         \
    _(COMPLETE, COMPLETE)         \
    _(CANCELLED, CANCELLED)       \
    _(ERRORED, ERRORED)

typedef enum {
#define FERRY__OP_STEP_ENUM(step, phase) FERRY__OP_##step,
    FERRY__FOREACH_OP_STEP(FERRY__OP_STEP_ENUM)
#undef FERRY__OP_STEP_ENUM
} ferry__op_state_t;

typedef struct ferry__listener {
    struct ferry__listener *next;
    ferry_op_listener_cb_t cb;
    void *arg;
} ferry__listener_t;

/* What differs between an operation's two sides (STYLE.md 15: kinds
 * behind an ops table, not is-passive chains): op.c holds the passive
 * side's and the active side's, and ferry__op_alloc gives each operation
 * the one its kind names. Each runs with the connector's lock held. */
typedef struct ferry__op_role {
    bool passive; /* WRITABLE or READABLE: it exposes memory and admits */
    /* Its owner ends it before it is final (cancel, or destroy); why goes
     * to the log and to ferry_op_error. */
    void (*cancel)(struct ferry_op *op, const char *why);
    /* It has just become final (ferry__op_move). */
    void (*on_final)(struct ferry_op *op);
    /* Its owner has destroyed it (after cancel): returns once no peer can
     * be let in and nothing of it touches the owner's memory any more; may
     * drop the lock meanwhile. */
    void (*on_destroy)(struct ferry_op *op);
    /* Its last reference has gone: what it holds is let go. */
    void (*release)(struct ferry_op *op);
} ferry__op_role_t;

struct ferry_op {
    struct ferry_op *table_next; /* chain in connector->ops */
    struct ferry_op *done_next;  /* done queue */
    ferry_connector_t *connector;
    ferry__op_kind_t kind;
    const ferry__op_role_t *role; /* by kind: passive or active */
    uint64_t id;
    char label[48]; /* "writable 7 key 3f2a1b4c" for logs */

    /* Set (under connector->lock) when state becomes final; read without
     * the lock by a waiter that spins before it sleeps on cond. */
    atomic_bool final;
    /* `state` as last moved (release, after error_code and error_message),
     * for ferry_op_status and ferry_op_error, which read it without the
     * lock: the lock may be held across a long ucp_mem_map or unmap (a
     * large region's), and a caller polling the status (Python, with the
     * GIL held) would wait that long. A final state is the last. */
    _Atomic int public_state;

    /* Under connector->lock. */
    ferry__op_state_t state;
    unsigned refs;
    bool user_released;
    bool in_table;
    pthread_cond_t cond;
    ferry_status_t error_code;
    char error_message[FERRY__MSG_LEN];
    ferry_op_done_cb_t done_cb;
    void *done_arg;
    bool done_queued;
    bool done_delivered;
    /* Deliveries of its done callback or listeners running now, on any
     * threads (in caller mode every thread that calls progress delivers);
     * destroy waits for none to run. */
    unsigned cbs_running;
    /* The done callback destroyed its own operation: delivery finishes the
     * destroy once the callback has returned. */
    bool destroy_deferred;
    /* Destroyed by ferry_op_destroy_nowait: destroy waits for no data in
     * flight, and released(released_arg) runs when the op is freed. */
    bool destroy_nowait;
    ferry_op_released_cb_t released;
    void *released_arg;
    unsigned inbox_queued; /* its party's messages in the inbox: FERRY__INBOX_PER_OP */

    ferry_descriptor_t *descs;
    size_t n;

    /* Passive. */
    uint8_t key[FERRY__KEY_LEN];
    ucp_mem_h *memh;
    bool mapped;
    uint8_t *metadata;
    size_t metadata_len;
    ferry__peer_t *claimant;         /* the admitted peer's endpoint (for its failure) */
    bool admitted;                   /* a claim was admitted; nonce is set */
    uint8_t nonce[FERRY__NONCE_LEN]; /* passive: drawn at admission;
                                      * active: from the ADMIT, echoed */
    /* Active: drawn for the CLAIM, required back on ADMIT and CREDIT;
     * passive: the admitted claim's, sent back on CREDITs (wire.c). */
    uint8_t claim_nonce[FERRY__NONCE_LEN];

    /* Passive: the active side's op id (from the claim, for CREDITs). */
    uint64_t claim_op_id;
    /* Passive: the admitted claim's worker address, copied before the
     * ADMIT went out, for the loop to open claimant from (while the op is
     * on connector->watch, by watch_next); freed once it has. */
    uint8_t *claimant_address;
    size_t claimant_address_len;
    struct ferry_op *watch_next;
    /* Passive: the admitted claimant settled (its notice came, or its
     * endpoint failed): nothing of it is on the wire any more. */
    bool claimant_settled;
    /* Passive: the op ended before its admitted claimant settled, so it
     * keeps its region references, its claimant (for its failure), its
     * table entry (destroyed: claims still find NOT_FOUND) and one op
     * reference until the claimant settles (op_passive.c). */
    bool claimant_hold;

    /* The staged path (staged.c); NULL on the direct path. */
    struct ferry__stage *stage;
    struct ferry_op *stage_next; /* connector->staged, while in_staged */
    bool in_staged;
    /* The region each descriptor lies in (NULL: none, the operation maps
     * it itself); each non-NULL entry holds one of the region's op
     * references while regions_held (region.c). */
    struct ferry_region **regions;
    bool regions_held;

    /* Active. */
    Ferry__V1__RdmaMetadata *md;
    bool data_in_flight; /* puts/gets posted, their flush not yet done (staged:
                          * any lane's, see ferry__staged_in_xfer) */
    bool notice_held;    /* ferry__test_hold_notice held this op's notice */
    ferry__peer_t *peer;
    ferry__rkey_t **rkeys;
    bool awaiting_admit;       /* a claim is out; holds a reference until answered */
    bool claim_expired;        /* it timed out: waits for a late answer, to notify */
    int64_t claim_deadline_ms; /* monotonic: the timeout, then (expired) the late wait's end */

    /* Listeners (ferry_op_add_listener), in the order added; appended under
     * the lock, freed with the operation. n_final_told of them have had
     * FINAL; destroying: destroy has begun (no FINAL from then on). */
    struct ferry__listener *listeners, **listeners_tail;
    unsigned n_listeners;
    unsigned n_final_told;
    bool destroying;
};

/* Allocates an operation in state NEW with one (the user's) reference. */
ferry_status_t ferry__op_alloc(ferry_connector_t *c, ferry__op_kind_t kind,
                               const ferry_descriptor_t *descs, size_t n, ferry_op_t **op_p);

/* Frees an operation that was never published (constructor failure). */
void ferry__op_free(ferry_op_t *op);

/* The destroy a done callback deferred (destroy_deferred), as its caller
 * asked for it (ferry_op_destroy or _nowait); no lock held. */
void ferry__op_destroy_resume(ferry_op_t *op);

/* The one state-change function; lock held. code/fmt only for ERRORED and
 * CANCELLED (code FERRY_OK and fmt NULL otherwise). Logs every change; on a
 * final state wakes waiters and queues the completion callback. Returns
 * false (and changes nothing) when the op is final already. */
bool ferry__op_move(ferry_op_t *op, ferry__op_state_t to, ferry_status_t code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

bool ferry__op_is_final(const ferry_op_t *op);
const char *ferry__op_step_name(ferry__op_state_t state);

/* WRITABLE or READABLE (op->role->passive). */
static inline bool ferry__op_is_passive(const ferry_op_t *op)
{
    return op->role->passive;
}

/* References, lock held. _unref frees at zero. */
void ferry__op_ref(ferry_op_t *op);
void ferry__op_unref(ferry_op_t *op);

/* Operation table, lock held. */
void ferry__op_table_add(ferry_op_t *op);
void ferry__op_table_remove(ferry_op_t *op);
ferry_op_t *ferry__op_find_passive(ferry_connector_t *c, const uint8_t *key);
ferry_op_t *ferry__op_find_active(ferry_connector_t *c, uint64_t id);

/* Kind-specific steps, lock held. */
void ferry__passive_release(ferry_op_t *op); /* unmap memory, drop claimant */
/* At a blocking destroy whose claimant did not settle in time: a hold
 * kept only for the caller's own memory (no region), which nobody is to be
 * told about, ends now. Lock held; op not freed (the caller's reference). */
void ferry__passive_hold_drop(ferry_op_t *op);
/* Whether the op holds a region for every one of its descriptors (nothing
 * of its memory is the caller's to keep). Lock held. */
bool ferry__passive_all_in_regions(const ferry_op_t *op);
/* The memory limit of this process's cgroups (v2 memory.max, v1
 * memory.limit_in_bytes; the smallest), read from proc_cgroup
 * ("/proc/self/cgroup") and the hierarchy under root ("/sys/fs/cgroup"); 0
 * when none is set or known. region.c, for ferry_mem_alloc. */
uint64_t ferry__cgroup_memory_limit(const char *proc_cgroup, const char *root);
/* Runs inside the AM callback (the reply endpoint lives only that long):
 * decides admission from the key alone and answers on reply_ep. An
 * admitted claim whose claimant the loop must reach (peer error handling,
 * or the staged path's CREDITs) goes on connector->watch with a copy of its
 * address, made before the ADMIT: a claim that cannot be copied is
 * refused, never admitted and then forgotten. */
void ferry__passive_on_claim(ferry_connector_t *c, const ferry__msg_t *msg, ucp_ep_h reply_ep);
/* In the loop, for an op taken off connector->watch: the endpoint to its
 * admitted claimant (for the claimant's failure, and the staged path's
 * CREDITs), opened even when the op ended meanwhile, for as long as the
 * claimant may still touch what the op kept for it. */
void ferry__passive_watch_claimant(ferry_op_t *op);
void ferry__passive_on_notice(ferry_connector_t *c, const ferry__msg_t *msg);
void ferry__active_on_admit(ferry_connector_t *c, const ferry__msg_t *msg);
void ferry__active_on_req(ferry__req_t *req);
void ferry__active_release(ferry_op_t *op); /* drop peer and rkeys */
void ferry__active_cancel(ferry_op_t *op, const char *why);
/* Ends the claims past their deadline (the passive side never answered):
 * the operation fails UNAVAILABLE; its claim's reference stays for
 * FERRY__LATE_ADMIT_FACTOR - 1 more timeouts, so that a late admission is
 * answered with a notice (the operation is final), then goes, and a
 * cancelled or destroyed operation is freed. Lock held; the loop calls it. */
void ferry__active_claims_sweep(ferry_connector_t *c);
/* Connector destroy: the claims that timed out stop waiting for a late
 * answer (their references go). Lock held. */
void ferry__active_late_claims_drop(ferry_connector_t *c);
void ferry__op_peer_failed(ferry_op_t *op, ferry__peer_t *peer);

/* ---- the staged path (staged.c) --------------------------------------- */

/* The CUDA admission of a local list: CUDA descriptors need a driver
 * (FERRY_ERR_UNIMPLEMENTED with the reason) and must be what they claim
 * (cuda.h: ferry__cuda_check_descriptors); host descriptors must not be
 * device memory, where a driver can tell. On the direct path, the first
 * CUDA list admitted names the progress thread's device. */
ferry_status_t ferry__cuda_admit(ferry_connector_t *c, const ferry_descriptor_t *descs, size_t n);
/* The active side's check of the path the metadata declares: CUDA memory
 * registered directly needs this UCX's CUDA transports too. */
ferry_status_t ferry__staged_check_remote(const ferry_connector_t *c,
                                          const Ferry__V1__RdmaMetadata *md);
/* Whether memory on these descriptors moves through pinned host buffers:
 * CUDA memory where UCX cannot register it (or ferry__test_staging.force). */
bool ferry__staged_wanted(const ferry_connector_t *c, const ferry_descriptor_t *descs);
/* Passive create (lock held): slots that UCX allocated and the engine
 * pinned (from the connector's pool when one of that size is free), an
 * engine; fills the staging block of the metadata being built. *rkey_p:
 * the slots' packed key, the stage's until release. */
ferry_status_t ferry__staged_passive_create(ferry_op_t *op, Ferry__V1__Staging *staging,
                                            const void **rkey_p, size_t *rkey_len_p);
/* Passive, lock held: the staging block its metadata names (a claim must
 * name the same). */
ferry__range_t ferry__staged_passive_block(const ferry_op_t *op);
/* Passive, lock held: a CHUNK from the admitted writer; the NOTICE (true:
 * the op completes now; false: it completes when the last copy lands). */
void ferry__staged_on_chunk(ferry_connector_t *c, const ferry__msg_t *msg);
bool ferry__staged_notice_ok(ferry_op_t *op);
/* Active begin, lock held, after connect: local engine and slots, the
 * remote staging key. */
ferry_status_t ferry__staged_active_prepare(ferry_op_t *op, bool local_staged);
/* Active, lock held: the pipeline starts (after ADMIT); a LANE or CHUNK
 * request finished; a CREDIT arrived; the op became final (cancel, error). */
void ferry__staged_start(ferry_op_t *op);
void ferry__staged_on_req(ferry__req_t *req);
void ferry__staged_on_credit(ferry_connector_t *c, const ferry__msg_t *msg);
void ferry__staged_settle(ferry_op_t *op);
/* Lock held: polls every engine with copies in flight; returns how many
 * copies finished. busy: whether any are in flight (the loop must not
 * sleep on the UCX fd then: an engine has no fd). */
unsigned ferry__staged_progress(ferry_connector_t *c);
bool ferry__staged_busy(const ferry_connector_t *c);
/* Active, lock held: lanes whose put or get (and its flush) is in flight;
 * 0 without a stage. While it is not 0, data_in_flight is set. */
unsigned ferry__staged_in_xfer(const ferry_op_t *op);
/* Active, at destroy, lock held: waits for (or drops) the engine's copies,
 * which read or write the caller's memory, so that none runs after
 * ferry_op_destroy returns; the op's lanes forget them. */
void ferry__staged_stop(ferry_op_t *op);
/* Releases the stage (engine synced first), lock held. Passive: also tells
 * an admitted writer to stop unless the op completed. */
void ferry__staged_release(ferry_op_t *op);
/* A notice for no live passive op: frees the stale slots it settles (true
 * if any); lock held. */
bool ferry__staged_stale_settled(ferry_connector_t *c, const ferry__msg_t *msg);
/* Whether a notice would settle stale slots and is the first such notice
 * to reach the inbox (nothing freed; the stale stage remembers it, so its
 * claimant's copies cannot crowd the inbox: the first one settles it);
 * lock held. */
bool ferry__staged_stale_notice(ferry_connector_t *c, const ferry__msg_t *msg);
/* Frees the stale stages whose claimant was peer, whose endpoint failed:
 * nothing more of it reaches their slots. */
void ferry__staged_stale_peer_failed(ferry_connector_t *c, const ferry__peer_t *peer);
/* Frees every stale stage and the slot pool (connector destroy). */
void ferry__staged_stale_free(ferry_connector_t *c);
/* The admitted claimant settled (its notice came): nothing of it will
 * reach the slots again. */
void ferry__staged_claimant_settled(ferry_op_t *op);
/* Whether op ended and left slots (stale) for a claimant that the loop
 * had no endpoint to yet, so release could not tell it to stop. */
bool ferry__staged_stale_unwatched(const ferry_op_t *op);
/* The loop has now opened op->claimant for them: tells the claimant to stop
 * and gives those slots its endpoint (a reference), whose failure frees
 * them. */
void ferry__staged_claimant_late(ferry_op_t *op);

/* Tests, lock held: the slots of a passive staged op (NULL if it has
 * none), and how many slot sets c's pool holds. */
const void *ferry__staged_slots(const ferry_op_t *op);
/* Tests, lock held: whether an active staged op copies straight into (or
 * out of) the passive side's slots, mapped here. */
bool ferry__staged_mapped(const ferry_op_t *op);
unsigned ferry__staged_pooled(const ferry_connector_t *c);

/* Tests only: stage host descriptors too (with the host engine), and CUDA
 * ones even where UCX could register them; chunk (slot) size and slot count
 * (0: the defaults, 4 MiB and 4). Set before connectors are created. */
typedef struct {
    atomic_bool force;
    atomic_size_t chunk;
    atomic_uint slots;
    atomic_bool no_map;    /* never copy straight into the peer's slots */
    atomic_bool top_lanes; /* an active side takes its highest idle lane first, as a peer may */
} ferry__test_staging_t;
extern ferry__test_staging_t ferry__test_staging;
/* ---- registered regions (region.c) ------------------------------------ */

/* One ferry_mem_register / ferry_mem_alloc. Set once before it is
 * published in connector->regions, except ops and next (under the lock). */
struct ferry_region {
    struct ferry_region *next; /* connector->regions */
    ferry_connector_t *connector;
    uint64_t id; /* for logs */
    uint8_t *base;
    size_t size;
    ferry_device_t device;
    bool allocated;  /* ferry_mem_alloc of host memory: ucp_mem_unmap frees it */
    bool cuda_owned; /* ferry_mem_alloc of CUDA memory: deregister cuMemFrees it */
    ucp_mem_h memh;
    void *rkey; /* packed once (ucp_rkey_pack); every operation's key */
    size_t rkey_len;
    unsigned ops; /* operations holding it (deregister refuses while > 0) */
};

/* ucp_mem_map on the connector's context, counted in c->mem_maps (so tests
 * see that operations on registered memory map nothing); memory it
 * allocates (UCP_MEM_MAP_ALLOCATE) is recorded as this worker's
 * (ferry__segment_add_own). Lock held. */
ucs_status_t ferry__mem_map(ferry_connector_t *c, const ucp_mem_map_params_t *params,
                            ucp_mem_h *memh_p);
/* ucp_mem_unmap, and the record of memory it allocated dropped: for a
 * handle that may have allocated its memory (regions, slot memory; an
 * operation's own map of the caller's memory needs none). Lock held. */
void ferry__mem_unmap(ferry_connector_t *c, ucp_mem_h memh);

/* segments.c: remote keys that UCX maps into this process (see there). */
/* Records the shared-memory segment at address (UCX allocated it for c) as
 * c's, so that a key of it passes only on c's endpoints; nothing where it
 * is no shared mapping. */
void ferry__segment_add_own(ferry_connector_t *c, const void *address);
void ferry__segment_drop_own(const void *address);
/* A freshly unpacked key of peer: where UCX maps it into this process,
 * unpacks it again to find its segment (rk->mapped and seg_*), and refuses
 * it (FERRY_ERR_INVALID_ARGUMENT) when that segment is one this process
 * maps already for another worker or itself. probe: an address the
 * metadata names in it. Lock held; on failure rk->rkey may be NULL. */
ferry_status_t ferry__rkey_classify(ferry__peer_t *peer, ferry__rkey_t *rk, uint64_t probe);
/* Undoes the classification's record (the key is destroyed). */
void ferry__segment_release(ferry__rkey_t *rk);
/* The classification's decision on its own, for a segment a test maps
 * itself: records the file (dev, ino) as mapped for a key of the worker at
 * worker[0..len) (undo with ferry__segment_release on an rkey whose seg_dev
 * and seg_ino name it and mapped is set), or refuses it
 * (FERRY_ERR_INVALID_ARGUMENT) when the table has it for another worker, or
 * (alias: it was mapped here before) not at all. */
ferry_status_t ferry__segment_take(uint64_t dev, uint64_t ino, const uint8_t *worker, size_t len,
                                   bool alias);
/* FERRY_ERR_INVALID_ARGUMENT, with the range in the message, unless
 * [address, address + length) translates through rk into its segment (or
 * rk is not mapped here, where the target resolves addresses itself).
 * Every range an active operation puts to or gets from passes it first. */
ferry_status_t ferry__rkey_range_check(const ferry__rkey_t *rk, uint64_t address, uint64_t length);

/* Finds the region of each of op's descriptors (op->regions) and takes a
 * reference on each found. FERRY_ERR_INVALID_ARGUMENT, holding nothing, for
 * a descriptor that straddles a region's edge or names another device than
 * the region it lies in. Lock held. */
ferry_status_t ferry__op_regions_attach(ferry_op_t *op);

/* Drops the references attach took (idempotent). Lock held. */
void ferry__op_regions_detach(ferry_op_t *op);

/* ---- fault simulation (tests only) ------------------------------------ */

/* When set, an active operation whose flush completed holds its notice
 * (stays TRANSFERRING) and sets ferry__test_notice_held: lets a test kill a
 * writer after the data moved and before the notice. Cancelling such an
 * operation sends the notice it owes (CANCELLED), which releases it. */
extern atomic_bool ferry__test_hold_notice;
extern atomic_bool ferry__test_notice_held;

/* When set, the next active operation to start its transfer finds no memory
 * for its flush (and clears it). */
extern atomic_bool ferry__test_fail_flush_alloc;

#endif /* FERRY_WORKER_FERRY_INT_H */
