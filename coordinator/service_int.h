/*
 * service_int.h: the service's insides, shared by service.c (handlers),
 * service_wait.c (waits) and service_watch.c (Watch streams).
 */
#ifndef FERRY_COORD_SERVICE_INT_H
#define FERRY_COORD_SERVICE_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "common/log.h"
#include "exec.h"
#include "peers.h"
#include "service.h"

typedef enum {
    WAIT_LOOKUP,
    WAIT_CLAIM,
} wait_kind_t;

typedef struct wait_entry {
    rpc_call_t *call; /* holds a reference */
    wait_kind_t kind;
    const ProtobufCMessage *request; /* owned by the call */
    const char *request_id;          /* inside request */
    const char *peer_host;           /* the call's; counted in wait_peers while parked */
    int64_t deadline_ms;             /* monotonic */
    bool ready;                      /* the operation changed: try again */
    size_t heap_at;                  /* its place in waits_heap */
    struct wait_entry *hprev;        /* in its bucket of waits_by_id */
    struct wait_entry *hnext;
    struct wait_entry *next; /* taken off: in the wait thread's list of due waits */
} wait_entry_t;

/* Wakes remembered (as request ID hashes, by wake number), so that a wait
 * parked after a look that missed looks again only when its own operation
 * changed since that look, not when any did. More wakes than this during
 * one look: it looks again. */
#define SERVICE_WAKE_HISTORY 4096

/* At most this much of the time left before a caller's deadline is kept
 * from its etcd requests for its answer to reach it (service_etcd_deadline). */
#define SERVICE_ANSWER_MARGIN_MS 100

/* The default bound of parked waits (--max-waits). */
#define SERVICE_MAX_WAITS   10000
#define SERVICE_MAX_WATCHES 10000

typedef struct sub_entry {
    rpc_call_t *call;       /* holds a reference */
    const char *request_id; /* exact match; NULL when prefix is used */
    const char *prefix;     /* "" matches all */
    int64_t start_revision; /* events below it are skipped */
    int64_t last_sent;      /* the last revision queued on it whole */
    /* Why it must end (FERRY_OK: it need not): a revision could not be
     * queued on it (RESOURCE_EXHAUSTED: it fell behind, or, when
     * over_budget, every stream together holds watch_budget's bound and
     * none was further behind). */
    ferry_status_t end_status;
    bool over_budget;
    /* Ended to make room in watch_budget (its call ended already): taken
     * off subs onto the ended list by whoever holds subs_lock next. */
    bool evicted;
    /* Counted in watch_peers (under its call's rpc_call_peer_host) from
     * its subscription until it is freed: as long as it counts against
     * max_watches. */
    bool peer_counted;
    /* On subs: the next, and the pointer that points at this one (the
     * previous one's next, or subs), so that a cancel, which finds s
     * through its call (rpc_call_parked, set while s is on subs), unlinks
     * it without a walk of every stream under the lock publishing needs
     * (audit-s33 L1). `next` also links the lists of streams to end that
     * a pass gathers. */
    struct sub_entry *next;
    struct sub_entry **pprev;
    /* Once unlinked from subs to be ended: on the service's `ended` list
     * (linked by ended_next) until its call is done, and `ending` while
     * the code that ends it still uses it. */
    bool ending;
    struct sub_entry *ended_next;
} sub_entry_t;

/* One published event, its WatchEvent packed once, kept in the history so
 * a Watch can resume from a revision. Messages carry a revision's events
 * (those a stream matches) together, built from these bytes
 * (rpc_msg_pack_repeated) without packing them again. */
typedef struct {
    int64_t revision;
    int64_t published_ms; /* CLOCK_MONOTONIC ms it was published (rpc_msg_set_born) */
    char *request_id;
    ProtobufCBinaryData event; /* a packed WatchEvent; owned */
    /* On a revision's first event only: the revision's messages, all of
     * its events, for every replay to a stream that matches all of it
     * (each stream's queue holds a reference, not a copy). Packed by the
     * first such replay (NULL until then: most revisions are never
     * replayed) and kept while the event is held; n_msgs of them. */
    rpc_msg_t **msgs;
    size_t n_msgs;
} hist_event_t;

/* Events the history keeps (at about 600 bytes each, a few MiB; twice
 * that at most with the messages replays share). A Watch
 * whose start_revision is older than the oldest one held ends with
 * OUT_OF_RANGE. */
#define SERVICE_WATCH_HISTORY 8192

/* The default bound of each Watch stream's unsent bytes (its client stopped
 * reading, or reads slower than changes come). */
#define SERVICE_WATCH_QUEUE_BYTES (4u << 20)

/* The default bound of every Watch stream's unsent bytes together
 * (--watch-memory-mib): a replica's Watch memory is this, not
 * --max-watches x --watch-queue-kib (40 GiB at their defaults). */
#define SERVICE_WATCH_MEMORY_BYTES ((size_t)256 << 20)

/* The most bytes of events one WatchResponse carries (a quarter of the
 * stream's bound when that is less): a revision with more (a lease that
 * held thousands of records ended) goes in several messages, each but the
 * last marked `fragment`. Well under gRPC's default 4 MiB receive limit. */
#define SERVICE_WATCH_MSG_BYTES (1u << 20)

/* A client host's share of an etcd pool (share_take, service.c): the calls
 * submitted to `exec` through it and not yet run out, by client host
 * (peers.h). One past max_per_peer (constant; 0: none) from one host is
 * refused while the calls counted (held) fill half of exec's room or
 * more, so that one client's calls cannot fill the queue the others share
 * (a Lookup, Cancel, Release or Claim of an unknown ID is an etcd read,
 * and needs no valid token: audit-s30-grpc F4, audit-s33 M1), while a
 * host's honest burst (many workers at once) goes through when there is
 * room. A host's renewals have a share of their own, as they have a lane
 * of their own in exec (COORD_EXEC_URGENT): neither another host nor the
 * host's own writes get them refused. */
typedef struct {
    const char *what;   /* "reads", "writes", "lease renewals": for messages */
    const char *flag;   /* what sets max_per_peer: for messages */
    coord_exec_t *exec; /* whose room (coord_exec_capacity) it shares */
    unsigned flags;     /* the lane of exec its calls go to (exec.h) */
    size_t max_per_peer;
    pthread_mutex_t lock; /* guards peers and held */
    coord_peers_t *peers;
    size_t held;                   /* all hosts' together */
    atomic_uint_fast64_t refusals; /* for metrics */
    ferry_log_limit_t log_limit;   /* a host past its share may ask at any rate */
} service_share_t;

struct coord_service {
    char *name;
    rpc_server_t *server;
    coord_registry_t *registry;
    coord_exec_t *exec;      /* runs every call that waits on an etcd write */
    coord_exec_t *read_exec; /* runs reads that need etcd (view misses, List) */
    /* Each host's share of them: of the reads (--etcd-reads-per-peer), of
     * the writes and of the lease renewals, each lane of exec its own
     * (--etcd-writes-per-peer). */
    service_share_t reads, writes, renewals;
    atomic_uint_fast64_t watch_events_sent; /* events queued on Watch streams, for metrics */
    /* Streams ended to make room in watch_budget (evict_locked),
     * ended because their own revision did not fit, and refused because
     * their `created` did not, for metrics. */
    atomic_uint_fast64_t watch_memory_evicted, watch_memory_ended, watch_memory_refused;
    /* Watch streams and waits refused for their host's share, for metrics. */
    atomic_uint_fast64_t watch_peer_refusals, wait_peer_refusals;
    /* Calls refused, or streams ended, for a bound of the whole replica,
     * for metrics (coord_service_limit_refusals_t). */
    atomic_uint_fast64_t max_waits_refusals, max_watches_refusals, watch_queue_ends,
        etcd_queue_refusals;

    /* Parked waits, each in two places: waits_heap, a binary min-heap by
     * when it is due (the ready first, then by deadline), so the wait thread
     * finds the due ones without a walk; and waits_by_id, a hash of
     * request IDs (chained, a power of two buckets, grown to keep one wait
     * a bucket), so a wake finds its ID's waits without a walk. */
    pthread_mutex_t waits_lock; /* guards the waits, stopping, wake_* */
    pthread_cond_t waits_cond;
    wait_entry_t **waits_heap; /* [0, n_waits); heap_cap allocated */
    size_t heap_cap;
    wait_entry_t **waits_by_id;
    size_t n_id_buckets;
    size_t n_waits;   /* parked; for metrics and the bound */
    size_t max_waits; /* constant: a wait past it is refused */
    /* Parked waits by client host (peers.h); one past max_waits_per_peer
     * (constant; 0: none) from one host is refused. */
    coord_peers_t *wait_peers;
    size_t max_waits_per_peer;
    /* constant: the longest the wait thread sleeps with nothing due
     * (0: WAIT_IDLE_MS, service_wait.c; tests set more) */
    int64_t wait_idle_ms;
    bool stopping;
    uint64_t wake_seq; /* bumped by every wake; see service_wait_add */
    /* The wake number of the last time the view came back (on_synced): a
     * look before it may have missed a record that came with no event. */
    uint64_t synced_seq;
    /* wake_hash[n % SERVICE_WAKE_HISTORY]: the request ID of wake n. */
    uint64_t wake_hash[SERVICE_WAKE_HISTORY];
    pthread_t wait_thread;

    /* Guards subs, subs_stopping, pending and the history. Publishing a
     * revision, recording it and sending it to every subscriber happen
     * under it, and so do a new stream's `created` message, its replay and
     * its joining the subscribers: no stream misses an event or sees one
     * twice. */
    pthread_mutex_t subs_lock;
    sub_entry_t *subs;
    size_t n_subs; /* on subs, those evicted included */
    /* Streams ended whose calls are not done yet: their last messages and
     * status may still wait for the client (up to RPC_DRAIN_MS). They hold
     * a call reference and count against max_watches until then. */
    sub_entry_t *ended;
    bool subs_stopping;
    hist_event_t *hist; /* ring of SERVICE_WATCH_HISTORY; allocated on first use */
    size_t hist_head;   /* index of the oldest */
    size_t hist_len;
    /* Every event after hist_floor is in hist or still to come: a Watch may
     * start at any revision above it. */
    int64_t hist_floor;
    int64_t watch_rev;        /* the last revision published, or the last reload */
    size_t watch_queue_bytes; /* constant: each stream's bound */
    /* constant: every stream's unsent bytes together (--watch-memory-mib),
     * counted by the rpc layer as each stream's queue is (rpc.h) */
    rpc_send_budget_t *watch_budget;
    size_t max_watches; /* constant: streams open at once */
    /* What the pass (a flush, a subscribe) learnt of the streams, for
     * evict_locked: since it began or its last eviction, the last walk
     * that ended none was for a stream `floor` bytes behind (SIZE_MAX:
     * none), and found none further behind that could be ended; the most
     * any subscribed stream (it included) was behind was `top`, and
     * `top_n` were that far. */
    struct {
        size_t floor, top, top_n;
    } evict;
    /* Streams counted against max_watches, by client host (peers.h); one
     * past max_watches_per_peer (constant; 0: none) from one host is
     * refused. */
    coord_peers_t *watch_peers;
    size_t max_watches_per_peer;
    size_t watch_msg_bytes; /* constant: events per message, in bytes */
    /* The events of the revision being gathered (all of pending_rev); sent
     * when the registry says its watch message ended, or a later revision
     * comes. */
    hist_event_t *pending;
    size_t n_pending, cap_pending;
};

int64_t service_now_ms(void);

/* Fills a response header. */
void service_header(coord_service_t *svc, Ferry__V1__ResponseHeader *header, int64_t revision);

/* When a wait of wait_ms that starts at now_ms ends, for a caller with
 * left_ms until its deadline (INT64_MAX: none): 0 for no wait (wait_ms <= 0),
 * INT64_MAX when nothing bounds it; never overflows. */
int64_t service_wait_deadline(int64_t now_ms, int64_t wait_ms, int64_t left_ms);

/* The deadline for the etcd requests of a call with left_ms until its
 * deadline (INT64_MAX: none), at now_ms: a tenth of the time left before
 * the caller's deadline, at most SERVICE_ANSWER_MARGIN_MS, is kept for the
 * answer to reach it, so that a caller hears etcd's failure (UNAVAILABLE:
 * retry) and not its own deadline. 0 (etcd_set_deadline's "none") when the
 * caller has none; never 0 otherwise. */
int64_t service_etcd_deadline(int64_t now_ms, int64_t left_ms);

/* Runs Lookup or Claim once; on NOT_FOUND with time left, parks the call as a
 * wait (the call keeps its reference) instead of answering. */
void service_lookup_once(coord_service_t *svc, rpc_call_t *call,
                         const Ferry__V1__LookupRequest *req, int64_t deadline_ms);
void service_claim_once(coord_service_t *svc, rpc_call_t *call, const Ferry__V1__ClaimRequest *req,
                        int64_t deadline_ms);

/* A write RPC's work, run on an etcd worker (exec.h): it calls the
 * registry and ends the call. */
typedef void (*service_work_fn)(coord_service_t *svc, rpc_call_t *call,
                                const ProtobufCMessage *request, int64_t deadline_ms);

/* Hands `fn` to an etcd worker and returns at once, so that no
 * completion-queue thread (nor the wait thread) waits on etcd. The call
 * keeps a reference until fn has run. When the queue is full the call ends
 * with RESOURCE_EXHAUSTED, when it is stopping with UNAVAILABLE; a call
 * whose deadline passed while it waited ends with DEADLINE_EXCEEDED and
 * writes nothing, one still waiting when this replica begins to shut down
 * with UNAVAILABLE (retry on another replica) and writes nothing. */
void service_submit(coord_service_t *svc, rpc_call_t *call, const ProtobufCMessage *request,
                    service_work_fn fn, int64_t deadline_ms);

/* service_claim_once as a service_work_fn (request: a ClaimRequest). */
void service_claim_work(coord_service_t *svc, rpc_call_t *call, const ProtobufCMessage *request,
                        int64_t deadline_ms);

/* Parks `call` until its operation changes or deadline_ms passes.
 * seen_seq is service_waits_seq() taken before the look that missed: a wake
 * for the same request ID after it makes the wait look again at once, so no
 * event is lost between the miss and the parking (a wake for another ID
 * does not). Past max_waits parked, the call ends RESOURCE_EXHAUSTED; a
 * call already cancelled is never left parked. */
void service_wait_add(coord_service_t *svc, rpc_call_t *call, wait_kind_t kind,
                      const ProtobufCMessage *request, const char *request_id, int64_t deadline_ms,
                      uint64_t seen_seq);
uint64_t service_waits_seq(coord_service_t *svc);
void service_waits_wake(coord_service_t *svc, const char *request_id);
/* The view came back (coord_service_on_synced): every parked wait whose
 * record the view holds looks again, and so does every wait that parks
 * after a look from before this (its seen_seq). Takes the registry's lock
 * under waits_lock: the registry never calls the service with it held. */
void service_waits_recheck(coord_service_t *svc);
ferry_status_t service_waits_start(coord_service_t *svc);
void service_waits_stop(coord_service_t *svc);

void service_watch(rpc_call_t *call, const ProtobufCMessage *request, void *arg);
void service_watch_publish(coord_service_t *svc, coord_event_type_t type,
                           const Ferry__V1__Operation *op, int64_t revision);
void service_watch_flush(coord_service_t *svc);
void service_watch_reload(coord_service_t *svc, int64_t revision);
void service_watch_stop(coord_service_t *svc);
/* Frees the ended streams; after the server's shutdown. */
void service_watch_destroy(coord_service_t *svc);

#endif /* FERRY_COORD_SERVICE_INT_H */
