/*
 * ferry/ferry.h: libferry, the data plane of Ferry (its public header; the
 * coordinator client is ferry/coordinator.h, the status codes ferry/status.h).
 *
 * The concepts are those of dynamo.connect, under C names:
 *
 *   connector   one per process: one UCX context and one UCX worker, an
 *               endpoint cache (one endpoint per peer worker) and a remote-key
 *               cache, and the thread that drives them.
 *   descriptor  one contiguous region {ptr, size, device}.
 *   operation   passive: a writable (a peer writes into my memory) or a
 *               readable (a peer reads my memory); active: a write or a read
 *               started from the passive side's metadata.
 *
 * The flow of one write:
 *
 *   receiver: ferry_writable_create(c, descs, n, &op); ferry_op_metadata(op, ...)
 *             hands the metadata to the sender by any channel, then
 *             ferry_op_wait(op, timeout_ms).
 *   sender:   ferry_write_begin(c, local, n, md, md_len, &op); ferry_op_wait(op, ...).
 *
 * On the wire the active side first asks the passive side to admit it (a
 * claim, answered at once); only an admitted writer touches the memory, so a
 * cancelled or destroyed operation, or a second writer, is refused before any
 * byte moves. Then UCX puts (or gets) for every pair, an endpoint flush, and
 * only then the completion notice, which carries the operation's notification
 * key. Without the flush the notice could overtake the data.
 *
 * Trust: admission holds the peers that follow this protocol (libferry's),
 * not a process that speaks UCX itself. Where a transport cannot put or get
 * in hardware (TCP; CMA and UCX's self transport on one host), UCX 1.13
 * serves a peer's puts and gets in this process, in handlers of its own that
 * copy to or from any address the peer names, with no key, registration or
 * bounds check and without calling libferry. So a peer that holds this
 * worker's UCX address (every metadata it published, every claim it sent,
 * carries it) can read and write any memory of the process, or crash it,
 * claim or no claim, and can make UCX allocate memory and hold descriptors
 * for it. Where keys are checked (RDMA NICs), a key opens its memory both
 * ways: UCX 1.13 registers for remote reads and writes alike, so a
 * readable's key lets its holder write, and a writable's read what the
 * memory held before. Run workers where every process that can reach them
 * is trusted as the workers are (README.md, "The data plane trusts its
 * peers").
 *
 * Ownership: every handle is created by a *_create / *_begin function and
 * released by its *_destroy, which accepts NULL. Operations must be destroyed
 * before their connector. Output arguments (ending _p) are written only on
 * success. Returned pointers say how long they stay valid.
 *
 * Errors: every fallible function returns a ferry_status_t (ferry/status.h).
 * When a call fails, ferry_last_error_message() gives this thread's detailed
 * message ("descriptor 2: local size 4096 != remote size 8192"). An operation
 * that ends ERRORED keeps its own code and message (ferry_op_error()).
 *
 * Threads: any thread may create, wait on, cancel and destroy operations,
 * concurrently with other threads doing the same on other operations. One
 * operation must not be destroyed while another thread still uses it.
 */
#ifndef FERRY_FERRY_H
#define FERRY_FERRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "ferry/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors ---------------------------------------------------------- */

/* The detailed message of the last call on this thread that failed; "" when
 * none failed yet. Valid until the next libferry call on this thread. */
FERRY_API const char *ferry_last_error_message(void);

/* ---- sizes ------------------------------------------------------------ */

/* Parses "4096", "4KiB", "64MiB", "1GiB", "2TiB" (binary), "1K", "1M", "1G"
 * (binary too), "1kB", "1MB", "1GB" (decimal), with an optional "B" for
 * bytes. Refuses empty input, junk, negative numbers and overflow. */
FERRY_API ferry_status_t ferry_parse_size(const char *text, uint64_t *size_p);

/* ---- devices ---------------------------------------------------------- */

typedef enum {
    FERRY_DEVICE_HOST = 1, /* "cpu" or "host" */
    FERRY_DEVICE_CUDA = 2, /* "cuda" (= "cuda:0") or "cuda:N" */
} ferry_device_kind_t;

typedef struct {
    ferry_device_kind_t kind;
    uint32_t id; /* CUDA ordinal; always 0 for HOST */
} ferry_device_t;

#define FERRY_DEVICE_HOST_INIT \
    {                          \
        FERRY_DEVICE_HOST, 0   \
    }

/* Parses "cpu", "host", "cuda", "cuda:N" (N a decimal ordinal, no sign, no
 * spaces). Anything else is FERRY_ERR_INVALID_ARGUMENT. */
FERRY_API ferry_status_t ferry_device_parse(const char *text, ferry_device_t *device_p);

/* Writes "cpu" or "cuda:N" into buf (always NUL-terminated when len > 0).
 * Returns FERRY_ERR_INVALID_ARGUMENT for an unknown kind or a too small
 * buffer (16 bytes always suffice). */
FERRY_API ferry_status_t ferry_device_to_string(ferry_device_t device, char *buf, size_t len);

/* ---- descriptors ------------------------------------------------------ */

/* One contiguous region. The memory is the caller's: it must stay allocated
 * for as long as an operation built on it exists. A "cuda:N" region must be
 * device memory of device N (cuMemAlloc / cudaMalloc), all of it inside one
 * allocation, and every region of a list on the same device; a "cpu"
 * region must not be device memory (managed memory may be either): where
 * a CUDA driver is loaded the operation constructors check that with it and
 * refuse a mismatch naming the descriptor.
 *
 * GPU memory must be ready when an operation is made on it: libferry's
 * staging copies wait for work queued before them on the legacy default
 * stream (stream 0, where the runtime and PyTorch launch unless told
 * otherwise), and nothing else; UCX's own CUDA transports (the direct path)
 * wait for nothing. Finish work on other streams first (cudaStreamSynchronize,
 * or an event), both for memory to be read and for memory to be written.
 * libferry leaves the calling thread's current CUDA context as it found it. */
typedef struct {
    void *ptr;
    size_t size;
    ferry_device_t device;
} ferry_descriptor_t;

/* Checks a list: n >= 1, no NULL pointer, no zero size, a valid device, all
 * of one device kind. The operation constructors call it too. */
FERRY_API ferry_status_t ferry_descriptors_validate(const ferry_descriptor_t *descs, size_t n);

/* ---- connector -------------------------------------------------------- */

typedef struct ferry_connector ferry_connector_t;

typedef enum {
    /* libferry starts a thread that drives UCX (the default). */
    FERRY_PROGRESS_THREAD = 0,
    /* The caller drives UCX: it polls ferry_connector_get_fd() for input and
     * then calls ferry_connector_progress(); ferry_op_wait() drives UCX
     * itself while it waits. For programs with their own event loop. */
    FERRY_PROGRESS_CALLER = 1,
} ferry_progress_mode_t;

typedef enum {
    FERRY_CONNECTOR_PARAM_FIELD_NAME = 1u << 0,
    FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE = 1u << 1,
    FERRY_CONNECTOR_PARAM_FIELD_PEER_ERROR_HANDLING = 1u << 2,
    FERRY_CONNECTOR_PARAM_FIELD_SPIN_US = 1u << 3,
    FERRY_CONNECTOR_PARAM_FIELD_LOG_LEVEL = 1u << 4,
    FERRY_CONNECTOR_PARAM_FIELD_LOG_CB = 1u << 5,
    FERRY_CONNECTOR_PARAM_FIELD_CLAIM_TIMEOUT_MS = 1u << 6,
    FERRY_CONNECTOR_PARAM_FIELD_CUDA_DIRECT = 1u << 7,
} ferry_connector_param_field_t;

/* libferry's log: nothing is logged unless the caller asks, through a
 * connector's params (FIELD_LOG_LEVEL, FIELD_LOG_CB). The log is one per
 * process (every connector's lines go to it; the last connector created
 * with the field sets it); the library reads no environment variable for it.
 * The libraries under it keep their own, which libferry does not take over
 * (they are the process's, shared with any other user of them): UCX writes
 * its warnings to stderr (UCX_LOG_LEVEL), and gRPC core, which the
 * coordinator client uses, its errors (a failed TLS handshake, say;
 * GRPC_VERBOSITY=NONE silences them). */
typedef enum {
    FERRY_LOGLEVEL_OFF = -1, /* the default */
    FERRY_LOGLEVEL_ERROR = 0,
    FERRY_LOGLEVEL_WARN = 1,
    FERRY_LOGLEVEL_INFO = 2,
    FERRY_LOGLEVEL_DEBUG = 3,
    FERRY_LOGLEVEL_TRACE = 4,
} ferry_loglevel_t;

/* Takes one line (without time stamp or newline) instead of stderr. It may
 * run on any libferry thread, with libferry locks held: it must not call
 * libferry, and should be quick. */
typedef void (*ferry_log_cb_t)(ferry_loglevel_t level, const char *message, void *arg);

/* The default of ferry_connector_params_t.spin_us. */
#define FERRY_CONNECTOR_DEFAULT_SPIN_US 50u
/* The largest spin_us accepted. */
#define FERRY_CONNECTOR_MAX_SPIN_US 100000u

typedef struct {
    /* Which fields below are set (ferry_connector_param_field_t bits). */
    uint64_t field_mask;
    /* The worker's name in metadata and logs (copied; at most 63 bytes).
     * Unset: "<hostname>:<pid>". */
    const char *name;
    /* Unset: FERRY_PROGRESS_THREAD. */
    ferry_progress_mode_t progress_mode;
    /* true: endpoints ask UCX for peer failure detection
     * (UCP_ERR_HANDLING_MODE_PEER), so a peer that dies turns the operations
     * using it ERRORED instead of waiting for their timeout, and a write or
     * read stuck on a stalled peer can be closed by force. UCX 1.13 would
     * then leave its shared-memory transports out (posix, sysv: TCP between
     * two processes of one host, 10x slower); libferry has them detect peer
     * failure too (UCX's MM_ERROR_HANDLING=y, unless the environment sets
     * UCX_{POSIX,SYSV,MM}_ERROR_HANDLING), which measures within noise here
     * (bench/NOTES.md). Both sides of a transfer must agree: UCX 1.13 cannot
     * connect two workers that differ here, and destroys an endpoint still in
     * use when it tries. Make it a deployment-wide setting: metadata carries
     * the passive side's, a write or read begun with metadata that differs
     * from its connector fails FERRY_ERR_FAILED_PRECONDITION before it
     * connects, and a claim that differs is refused the same way. Unset:
     * true. false: UCX's fastest setting, without failure detection: every
     * wait still has its timeout, but a transport error on such an endpoint
     * is not handled, which UCX 1.13 makes fatal to the process on
     * InfiniBand. Over TCP alone UCX 1.13 emulates puts and gets with
     * messages, and a peer that dies with some of them unanswered can abort
     * the other side whatever this says (README, "Peer failure"). */
    bool peer_error_handling;
    /* How long (microseconds) the progress loop keeps polling UCX after the
     * last sign of activity before it sleeps on the worker's event fd, and
     * how long ferry_op_wait polls for its operation to end before it sleeps
     * (in thread mode it also drives UCX meanwhile whenever the progress
     * thread is not, so its transfer's next message costs no hand-off; it
     * never delivers callbacks).
     * Each message of a transfer then finds its receiver awake instead of
     * costing a wake-up (a thread switch) on each side. The spin yields the
     * CPU (sched_yield) often, so it gives way to other runnable threads;
     * the price is CPU time while operations are in flight. 0: never spin
     * (every wait sleeps at once). Unset: the environment variable
     * FERRY_SPIN_US when set (for tuning a deployed program), else
     * FERRY_CONNECTOR_DEFAULT_SPIN_US; at most FERRY_CONNECTOR_MAX_SPIN_US. */
    uint32_t spin_us;
    /* FIELD_LOG_LEVEL: the most detailed level logged. Unset: unchanged
     * (FERRY_LOGLEVEL_OFF until a connector sets it). */
    ferry_loglevel_t log_level;
    /* FIELD_LOG_CB: where lines go (NULL: stderr) and its argument. Unset:
     * unchanged (stderr until a connector sets it). */
    ferry_log_cb_t log_cb;
    void *log_arg;
    /* FIELD_CLAIM_TIMEOUT_MS: how long a write or read waits for the
     * passive side to answer its claim (admit or refuse) before it fails
     * FERRY_ERR_TIMED_OUT, 1..INT32_MAX ms. Unset: the environment variable
     * FERRY_CLAIM_TIMEOUT_MS when set, else 30000. */
    uint32_t claim_timeout_ms;
    /* FIELD_CUDA_DIRECT: true takes the direct path for CUDA memory where
     * UCX reports CUDA among its memory types (README, "GPU"); false the
     * staged path. Unset: the environment variable FERRY_CUDA_DIRECT=1 turns
     * it on; off otherwise. */
    bool cuda_direct;
} ferry_connector_params_t;

/* Creates the process's connector (a NULL params means all defaults).
 * A connector, its operations and regions, and a coordinator client
 * belong to the process that made them: their threads and UCX's state
 * (whose file descriptors a forked child shares) stay in the parent. A
 * forked child must not use, destroy or deregister them (destroying would
 * remove the parent's UCX handlers from their shared epoll set); it leaves
 * them alone (the Python package enforces this). Nor can it make its own:
 * in a process forked after libferry started (a connector or coordinator
 * client made), creating either returns FERRY_ERR_MISUSE, since UCX's and
 * gRPC's state do not survive the fork (starting them again hung, and broke
 * the parent's session). Start libferry in a process that exec'd, or
 * before forking. */
FERRY_API ferry_status_t ferry_connector_create(const ferry_connector_params_t *params,
                                                ferry_connector_t **connector_p);

/* Stops the progress thread, closes the endpoints and releases UCX, once
 * every operation has been destroyed and every region deregistered: with
 * operations or regions still alive it
 * returns FERRY_ERR_BUSY and changes nothing (as uv_loop_close returns
 * UV_EBUSY); destroy them and call it again. From inside one of its own
 * callbacks (a done callback or a listener) it returns FERRY_ERR_MISUSE and
 * changes nothing. NULL is a no-op (FERRY_OK).
 * A destroyed operation's last message to a peer that never answers (a
 * claim or notice to a stopped process) can outlive it inside UCX; destroy
 * gives such messages about a second, then, with peer error handling,
 * closes their endpoints by force (UCX cancels them). Without peer error
 * handling UCX cannot cancel them, and destroying its worker under them
 * is what UCX forbids (it aborts the process over TCP): destroy then
 * stops the progress thread and returns FERRY_OK, but leaves the UCX
 * worker and what it holds allocated for the life of the process, with a
 * warning. No caller memory is held: such a message is in libferry's own
 * buffer. */
FERRY_API ferry_status_t ferry_connector_destroy(ferry_connector_t *connector);

/* The name and host name; valid as long as the connector. */
FERRY_API const char *ferry_connector_name(const ferry_connector_t *connector);
FERRY_API const char *ferry_connector_hostname(const ferry_connector_t *connector);
/* Its peer_error_handling, as set or defaulted (its metadata and claims say
 * it; the coordinator client sends it with a Claim). */
FERRY_API bool ferry_connector_peer_error_handling(const ferry_connector_t *connector);

/* Whether CUDA descriptors ("cuda:N") are accepted: libferry was built with
 * CUDA support and the CUDA driver (libcuda.so.1, loaded at run time)
 * initialized and has a device. When
 * false, the reason is logged (at info) when the connector is created, and
 * CUDA descriptors are refused with it. Where it is true, CUDA memory moves
 * on the staged path through pinned host buffers, or directly (UCX registers
 * it) where FERRY_CUDA_DIRECT=1 and UCX reports CUDA among its memory types
 * (never judged from a trial registration); the passive side's metadata says
 * which, for writables and readables alike. */
FERRY_API bool ferry_connector_is_cuda_available(const ferry_connector_t *connector);

/* FERRY_PROGRESS_CALLER only: a file descriptor that becomes readable when
 * ferry_connector_progress() has work. FERRY_ERR_MISUSE in thread mode. */
FERRY_API ferry_status_t ferry_connector_get_fd(ferry_connector_t *connector, int *fd_p);

/* FERRY_PROGRESS_CALLER only: does all pending UCX and operation work, and
 * returns once the fd is armed (waiting on it is then safe), or after about
 * 10 ms while work keeps coming, with the fd left readable (so a flood
 * cannot keep the caller's thread: its poll returns at once and it calls
 * again). Completion callbacks run from here. FERRY_ERR_MISUSE in thread
 * mode. */
FERRY_API ferry_status_t ferry_connector_progress(ferry_connector_t *connector);

/* Which way an operation moved bytes, seen from this connector: as the
 * active side (WRITE: ucp_put to a peer; READ: ucp_get from one) or as the
 * passive side (RECEIVED: a peer wrote into a writable; SERVED: a peer read
 * a readable). */
typedef enum {
    FERRY_DIRECTION_WRITE = 0,
    FERRY_DIRECTION_READ = 1,
    FERRY_DIRECTION_RECEIVED = 2,
    FERRY_DIRECTION_SERVED = 3,
    FERRY_DIRECTION_COUNT = 4
} ferry_direction_t;

/* How an operation ended (its final ferry_op_status_t). */
typedef enum {
    FERRY_OUTCOME_COMPLETE = 0,
    FERRY_OUTCOME_CANCELLED = 1,
    FERRY_OUTCOME_ERRORED = 2,
    FERRY_OUTCOME_COUNT = 3
} ferry_outcome_t;

/* Operations that ended one way, and their bytes: the total size of their
 * descriptors (for COMPLETE, the bytes moved; otherwise what the operation
 * was to move, since a failed transfer's partial progress is unknown). */
typedef struct {
    uint64_t ops;
    uint64_t bytes;
} ferry_transfer_count_t;

/* Appending fields changes sizeof: an application built against an older
 * ferry.h must be rebuilt (the soname's major version says when). */
typedef struct {
    uint64_t endpoints_created;   /* ucp_ep_create calls that succeeded */
    uint64_t endpoint_cache_hits; /* transfers that reused a cached endpoint */
    uint64_t rkeys_unpacked;      /* ucp_ep_rkey_unpack calls that succeeded */
    uint64_t rkey_cache_hits;     /* remote keys found in the cache */
    uint64_t notices_received;    /* completion notices from the admitted peer */
    uint64_t claims_refused;      /* claims answered with a refusal or dropped */
    uint64_t notices_ignored;     /* notices not from an admitted peer, or late */
    uint64_t peers_cached;        /* endpoints in the cache now (bounded) */
    /* Every operation of this connector that reached a final status, once,
     * by [direction][outcome]; an operation destroyed before it ended counts
     * as CANCELLED. */
    ferry_transfer_count_t transfers[FERRY_DIRECTION_COUNT][FERRY_OUTCOME_COUNT];
    /* ucp_mem_map calls made: one per descriptor of a passive operation in
     * no region, one per region (operations inside a region make none). */
    uint64_t mem_maps;
    /* Messages from a party to an operation that the loop's bounded inbox
     * dropped: past its room for all, or for that one operation (a flood,
     * or a loop that cannot keep up). */
    uint64_t messages_dropped;
} ferry_connector_stats_t;

/* "write", "read", "received", "served"; "unknown" otherwise. Static. */
FERRY_API const char *ferry_direction_name(ferry_direction_t direction);

/* "complete", "cancelled", "errored"; "unknown" otherwise. Static. */
FERRY_API const char *ferry_outcome_name(ferry_outcome_t outcome);

/* A snapshot of the connector's counters (for tests and metrics). */
FERRY_API void ferry_connector_get_stats(ferry_connector_t *connector,
                                         ferry_connector_stats_t *stats_p);

/* ---- registered memory ------------------------------------------------ */

/* A region of memory registered with UCX once, for any number of
 * operations (NIXL's registerMem, Mooncake's registerLocalMemory).
 *
 * Without a region every passive operation registers its own descriptors
 * (one ucp_mem_map and one remote key per descriptor, undone when the
 * operation ends). A descriptor that lies wholly inside a region instead
 * reuses the region's memory handle and its remote key, packed once at
 * registration: creating a writable or readable, or beginning a write or
 * read, on it calls no ucp_mem_map at all, and the peer's remote-key cache
 * finds the same key again (no ucp_ep_rkey_unpack after the first). A
 * descriptor that only partly overlaps a region (it straddles the region's
 * edge) is refused with FERRY_ERR_INVALID_ARGUMENT naming the descriptor
 * and the region: it must lie wholly inside one region or wholly outside
 * every region. Regions of one connector never overlap.
 *
 * What a remote key covers. UCX 1.13 packs a key for a whole registration,
 * so the key in an operation's metadata covers the whole region, not only
 * that operation's descriptors, and it stays valid until the region is
 * deregistered, not only until the operation ends. The metadata still
 * names only the operation's descriptors and Ferry's active side writes (or
 * reads) only those, and only once the passive side admitted its claim:
 * admission, not the key, is what keeps Ferry's writers out. That was
 * already so on shared memory and TCP, where UCX does not enforce keys on
 * host memory (see ferry_op_destroy; against a peer that skips Ferry's
 * protocol nothing holds there, see "Trust" above). On transports that do
 * enforce keys (RDMA NICs), a peer that holds an operation's metadata and
 * skips Ferry's protocol could reach the rest of the region, after the
 * operation ended too; Ferry-allocated memory on shared memory is likewise
 * mapped whole by every peer that unpacked its key. So put into one region
 * only memory that every holder of any of its operations' metadata may
 * reach, and keep memory that needs per-operation revocation out of regions
 * (its operations then register it themselves, as before).
 *
 * Threads: any thread; a region must not be deregistered while another
 * thread still creates operations on it (deregistration refuses while
 * operations hold it, see below). */
typedef struct ferry_region ferry_region_t;

/* Registers [ptr, ptr + size) of the caller's memory (ucp_mem_map of that
 * range, its key packed once). The memory stays the caller's: it must stay
 * allocated until ferry_mem_deregister. FERRY_ERR_ALREADY_EXISTS when the
 * range overlaps a region of this connector; FERRY_ERR_UNIMPLEMENTED, with
 * the reason, for CUDA memory where the process has no CUDA driver, this UCX
 * build no CUDA transports, or FERRY_CUDA_DIRECT is not 1 (as
 * ferry_mem_alloc). */
FERRY_API ferry_status_t ferry_mem_register(ferry_connector_t *connector, void *ptr, size_t size,
                                            ferry_device_t device, ferry_region_t **region_p);

/* Allocates size bytes through UCX (ucp_mem_map with UCP_MEM_MAP_ALLOCATE,
 * as ucx_perftest allocates its buffers) and registers them as one region;
 * *ptr_p is the memory, zeroed, valid until ferry_mem_deregister, which
 * frees it. UCX 1.13 takes such memory from a shared-memory segment (sysv
 * or posix) when it can, and its shared-memory transports then write and
 * read it directly (one copy) instead of through bounce buffers: the fast
 * path for host memory. FERRY_ERR_NO_MEMORY, before UCX is asked, for a
 * size not less than the machine's physical memory or the process's cgroup
 * memory limit (a container's; UCX would fill /dev/shm with it until the
 * OOM killer struck). On a CUDA device: device memory
 * (cuMemAlloc on its primary context), zeroed, which UCX's CUDA transports
 * read and write directly; FERRY_ERR_UNIMPLEMENTED, with the reason, where
 * the process has no CUDA driver, this UCX build no CUDA transports, or
 * FERRY_CUDA_DIRECT is not 1 (the staged path, the default for CUDA memory,
 * moves it through host buffers and registers none: README, GPU),
 * FERRY_ERR_NO_MEMORY when the device has not that much free.
 * Known limit (UCX 1.13): a writer or reader that begins with metadata of
 * an operation in such a region after the region was deregistered is
 * refused FERRY_ERR_NOT_FOUND (libferry tries the System V segment its key
 * names first); but a segment that goes in the moment between that check
 * and UCX's own attach, or a POSIX one, kills it in ucp_ep_rkey_unpack
 * (UCX's error path releases key parts it never unpacked): deregister only
 * once every holder of its operations' metadata is done (README, "Known
 * limit"). */
FERRY_API ferry_status_t ferry_mem_alloc(ferry_connector_t *connector, size_t size,
                                         ferry_device_t device, ferry_region_t **region_p,
                                         void **ptr_p);

/* Deregisters the region (and frees its memory when ferry_mem_alloc made
 * it). FERRY_ERR_BUSY, changing nothing, while operations still use it or
 * a peer's data may still move through it: a passive operation until it is
 * final or destroyed, and, when it ended (cancelled, failed, destroyed)
 * after admitting a writer or reader that has not settled, until that peer
 * settles: its completion notice arrives (a peer cancelled or failed midway
 * still sends one once its puts or gets are flushed) or, with peer error
 * handling, its endpoint fails; an active one until it is final and its
 * data has stopped moving (an active operation cancelled mid-transfer holds
 * the region until the flush of its puts or gets, on the staged path every
 * lane's, completes). Destroy or finish them and call it again. Without
 * peer error handling, a peer that dies between its admission and its
 * notice keeps the region busy for the life of the process. NULL is a
 * no-op (FERRY_OK). Every region must be deregistered before its connector
 * is destroyed (ferry_connector_destroy returns FERRY_ERR_BUSY otherwise). */
FERRY_API ferry_status_t ferry_mem_deregister(ferry_region_t *region);

/* ---- operations ------------------------------------------------------- */

typedef struct ferry_op ferry_op_t;

/* dynamo.connect's OperationStatus, same values. Final: COMPLETE, CANCELLED,
 * ERRORED. */
typedef enum {
    FERRY_OP_STATUS_UNINITIALIZED = 0,
    FERRY_OP_STATUS_INITIALIZED = 1, /* created; no peer has touched it yet */
    FERRY_OP_STATUS_IN_PROGRESS = 2, /* a transfer is under way */
    FERRY_OP_STATUS_COMPLETE = 3,    /* the data moved and the notice arrived */
    FERRY_OP_STATUS_CANCELLED = 4,   /* cancelled on this side */
    FERRY_OP_STATUS_ERRORED = 5,     /* failed: see ferry_op_error() */
} ferry_op_status_t;

/* Whether a status is final (COMPLETE, CANCELLED or ERRORED): the operation
 * ended, and its outcome will not change. */
static inline bool ferry_op_status_is_final(ferry_op_status_t status)
{
    return status == FERRY_OP_STATUS_COMPLETE || status == FERRY_OP_STATUS_CANCELLED ||
           status == FERRY_OP_STATUS_ERRORED;
}

/* "UNINITIALIZED" ... "ERRORED"; static. */
FERRY_API const char *ferry_op_status_name(ferry_op_status_t status);

/* Passive: registers the descriptors (ucp_mem_map of exactly that memory;
 * none for a descriptor inside a registered region, see ferry_mem_register)
 * so that the holder of this operation's metadata may write into them
 * (writable) or read them (readable). The memory must stay allocated until
 * destroy. At most 1024 descriptors, the metadata's bound
 * (FERRY_ERR_INVALID_ARGUMENT past it, before anything is mapped). */
FERRY_API ferry_status_t ferry_writable_create(ferry_connector_t *connector,
                                               const ferry_descriptor_t *descs, size_t n,
                                               ferry_op_t **op_p);
FERRY_API ferry_status_t ferry_readable_create(ferry_connector_t *connector,
                                               const ferry_descriptor_t *descs, size_t n,
                                               ferry_op_t **op_p);

/* Passive: the serialized metadata (a ferry.v1.RdmaMetadata message) to hand
 * to the active side. It is a capability: whoever holds it can reach this
 * memory. The bytes belong to the operation and stay valid until destroy.
 * FERRY_ERR_MISUSE on an active operation. */
FERRY_API ferry_status_t ferry_op_metadata(const ferry_op_t *op, const uint8_t **bytes_p,
                                           size_t *len_p);

#define FERRY_NOTIFICATION_KEY_LEN 16

/* Passive: the 16 random bytes that name this operation in the completion
 * notice. Valid until destroy. FERRY_ERR_MISUSE on an active operation. */
FERRY_API ferry_status_t ferry_op_notification_key(const ferry_op_t *op, const uint8_t **key_p);

/* Active: writes local regions into a writable's memory, or reads a
 * readable's memory into local regions. The metadata is decoded and checked
 * at once (a write needs a writable's metadata, a read a readable's; the
 * lists must match one to one with equal sizes); failures return here with
 * no operation. The transfer then runs in the background: ferry_op_wait().
 *
 * The metadata is the passive side's word, and UCX 1.13's shared-memory
 * transports, which map a same-host peer's segment into this process,
 * translate its addresses without a bounds check. So, before the claim,
 * every remote range is checked against the segment its key maps here:
 * FERRY_ERR_INVALID_ARGUMENT naming the descriptor for a range outside it,
 * or for a key naming a segment this process already maps for itself or
 * another worker (ferry_mem_alloc memory of its own, UCX's own); nothing is
 * then written or read. FERRY_ERR_UNAVAILABLE in the rare case that the
 * process's mappings kept changing while the key was unpacked: try again. */
FERRY_API ferry_status_t ferry_write_begin(ferry_connector_t *connector,
                                           const ferry_descriptor_t *local, size_t n,
                                           const uint8_t *metadata, size_t metadata_len,
                                           ferry_op_t **op_p);
FERRY_API ferry_status_t ferry_read_begin(ferry_connector_t *connector,
                                          const ferry_descriptor_t *local, size_t n,
                                          const uint8_t *metadata, size_t metadata_len,
                                          ferry_op_t **op_p);

/* The checks of ferry_write_begin (write true) or ferry_read_begin on this
 * metadata and local list (decoding, the metadata's own rules, the kind,
 * the count and each pair's size), with nothing started: for a caller that
 * must know a transfer would be accepted before it commits to it (the
 * coordinator client, before its Claim). Same errors and messages:
 * FERRY_ERR_INVALID_ARGUMENT for metadata that breaks its rules,
 * FERRY_ERR_KIND_MISMATCH for a write on a readable's metadata (or a read
 * on a writable's), FERRY_ERR_SIZE_MISMATCH when the lists differ in count
 * or a pair in size. */
FERRY_API ferry_status_t ferry_metadata_check(const uint8_t *metadata, size_t metadata_len,
                                              bool write, const ferry_descriptor_t *local,
                                              size_t n);

/* The current status. Takes no lock, so it answers at once while another
 * thread registers or deregisters a large region (and ferry_op_error). */
FERRY_API ferry_op_status_t ferry_op_status(const ferry_op_t *op);

/* On ERRORED (or CANCELLED): the code and a message; the message is valid
 * until destroy. FERRY_OK and "" while the operation has not failed. */
FERRY_API ferry_status_t ferry_op_error(const ferry_op_t *op, const char **message_p);

/* Waits until the operation is final or timeout_ms passes (-1: no limit; 0:
 * just look; below -1: FERRY_ERR_INVALID_ARGUMENT, at once). Returns FERRY_OK for COMPLETE,
 * FERRY_ERR_CANCELLED for CANCELLED, the operation's error code for ERRORED, and
 * FERRY_ERR_TIMED_OUT when the time ran out (the operation goes on; wait again or cancel).
 *
 * libferry never ends an operation with FERRY_ERR_TIMED_OUT itself (a
 * peer's TIMED_OUT arrives as FERRY_ERR_PEER_FAILED, and its own timeouts
 * end an operation FERRY_ERR_UNAVAILABLE), but its owner may, through
 * ferry_op_fail. So a caller that gets FERRY_ERR_TIMED_OUT and must tell
 * "still going" from "ended with that code" asks ferry_op_status: the wait
 * timed out only while the status is not final
 * (ferry_op_status_is_final). A caller that waits in slices decides from the status to stop,
 * never from the return code alone. */
FERRY_API ferry_status_t ferry_op_wait(ferry_op_t *op, int timeout_ms);

/* Cancels. Passive: the memory is released at once and any later writer is
 * refused (memory in a region stays held while an admitted writer or
 * reader has not settled: see ferry_mem_deregister). Active: no new
 * transfer starts and the passive side is told; a notice already sent
 * cannot be taken back. FERRY_OK also when the operation was already final
 * (nothing changes then). */
FERRY_API ferry_status_t ferry_op_cancel(ferry_op_t *op);

/* Ends the operation ERRORED with this code and message (copied), unless it
 * is final already (then FERRY_ERR_FAILED_PRECONDITION). For coordinator glue
 * that learns of a failure elsewhere: a lease that expired
 * (FERRY_ERR_EXPIRED), a peer the coordinator saw die. A passive operation
 * releases its memory as on cancel. code must be an error (< 0). With
 * FERRY_ERR_TIMED_OUT, the operation's waiters get the code ferry_op_wait
 * also returns when its own time runs out: see there how they tell. */
FERRY_API ferry_status_t ferry_op_fail(ferry_op_t *op, ferry_status_t code, const char *message);

/* Called once when the operation becomes final, from the connector's
 * progress thread (or inside ferry_connector_progress / ferry_op_wait in
 * caller mode), never with a libferry lock held. It may call ferry_op_status
 * and ferry_op_error, and ferry_op_destroy on its own operation: destroy then
 * returns at once, and the operation is destroyed on this thread as soon as
 * the callback returns (not to be used after the call, nor waited on by
 * another thread meanwhile). Setting it on an operation that is already
 * final still delivers one call. Not called once the op is destroyed. The
 * callback is the caller's alone: libferry's own layers use listeners. */
typedef void (*ferry_op_done_cb_t)(ferry_op_t *op, ferry_op_status_t status, void *arg);

FERRY_API ferry_status_t ferry_op_set_done_callback(ferry_op_t *op, ferry_op_done_cb_t cb,
                                                    void *arg);

/* ---- listeners: observing an operation's end from another layer ------- */

/* What a listener is told. FINAL: the operation became final (once, from the
 * same place and under the same rules as the done callback; a listener added
 * to an operation that is final already still gets it, unless destroy has
 * begun). DESTROY: ferry_op_destroy was called; delivered on the destroying
 * thread, with no libferry lock held, before the operation is cancelled or
 * released (status is still the one it had), and always the last event. A
 * listener may call ferry_op_status, ferry_op_error, ferry_op_fail and
 * ferry_op_cancel, never destroy. */
typedef enum {
    FERRY_OP_EVENT_FINAL = 1,
    FERRY_OP_EVENT_DESTROY = 2,
} ferry_op_event_t;

typedef void (*ferry_op_listener_cb_t)(ferry_op_t *op, ferry_op_event_t event,
                                       ferry_op_status_t status, void *arg);

/* Adds a listener: any number, each told in the order added, beside (never
 * instead of) the done callback, which stays the caller's. This is how a
 * layer above the data plane (the coordinator client) follows an operation:
 * the data plane never names it. FERRY_ERR_MISUSE once destroy has begun. */
FERRY_API ferry_status_t ferry_op_add_listener(ferry_op_t *op, ferry_op_listener_cb_t cb,
                                               void *arg);

/* The arg of the first listener added with cb; FERRY_ERR_NOT_FOUND when cb
 * listens on no such listener. Lets the layer that added it find its own
 * state from the operation. */
FERRY_API ferry_status_t ferry_op_listener_arg(const ferry_op_t *op, ferry_op_listener_cb_t cb,
                                               void **arg_p);

/* The connector the operation belongs to. */
FERRY_API ferry_connector_t *ferry_op_connector(const ferry_op_t *op);

/* Whether libferry keeps the memory of the operation's descriptor index
 * valid for as long as data may move through it: true when the operation
 * reaches that memory through a region (the descriptor lies inside one
 * registered before the operation was made, ferry_mem_register or
 * ferry_mem_alloc), which it holds until no put or get of its own, nor of a
 * writer or reader it admitted, can touch the memory any more, after
 * ferry_op_destroy too (ferry_mem_deregister refuses meanwhile). false
 * otherwise (memory in no region; a passive operation on the staged path,
 * whose copies end at destroy): that memory is the caller's to keep
 * allocated until ferry_op_destroy returns (which waits for data in flight
 * within its bound) or ferry_op_destroy_nowait's released is called. false
 * for an index out of range. Fixed when the operation is made; ask before
 * destroying it. Any thread. */
FERRY_API bool ferry_op_in_region(const ferry_op_t *op, size_t index);

/* Passive: unregisters the memory (its own registrations; a region it used
 * stays registered, and only lets go of it, once an admitted writer or
 * reader has settled: see ferry_mem_deregister) and forgets the notification
 * key (from the call on, while its listeners are told DESTROY too, any
 * claim is refused with FERRY_ERR_NOT_FOUND; note that
 * on host memory UCX's shm and TCP transports do not enforce remote keys,
 * so the claim step, not the unmap, is what keeps Ferry's writers out;
 * "Trust" above says what does not), cancelling
 * the operation if it is not final. A writer or reader it admitted that has
 * not settled (its notice has not come: its puts or gets may still be in
 * flight, and over TCP or shared memory UCX applies them in this process)
 * is waited for, driving the connector's progress, for at most
 * FERRY_OP_DESTROY_FLUSH_MS, when any descriptor lies in no region (a
 * region's memory libferry holds itself). One that has settled cannot reach
 * the memory any more: the memory may be freed once destroy returns. One
 * that has not settled by then (it died unseen without peer error handling,
 * stopped answering, or its transfer takes longer) is let go with a
 * warning ("has not settled"), and may still reach the memory in no
 * region, which the caller should then keep (ferry_op_destroy_nowait's
 * released says exactly when it may go). Its endpoint is not closed: that
 * would fail every other transfer with that peer. Before this wait, destroy
 * returned at once, and an admitted writer's puts landed in memory its
 * caller had freed.
 * Active: cancels if not final, and returns only once UCX can no longer
 * read or write the local memory: puts or gets already posted are waited
 * for (their flush), since a get cancelled midway still writes into that
 * memory until then, and on TCP, where UCX emulates them, only when the
 * passive side answers. A passive side that has not let them finish within
 * FERRY_OP_DESTROY_FLUSH_MS: with peer error handling on, the endpoint to it
 * is closed by force (UCX cancels what was outstanding on it), so this
 * connector's other operations with that peer end ERRORED
 * (FERRY_ERR_TRANSPORT) and the next operation opens a new endpoint;
 * without peer error handling UCX 1.13 cannot close an endpoint by force,
 * and destroy keeps waiting for the passive side (a peer that never answers
 * blocks it; ferry_op_destroy_nowait never blocks). Either way, the memory
 * may be freed once destroy returns. It drives the connector's progress
 * itself while it waits (in caller progress mode too). From the operation's
 * own done callback it returns at once and the destroy completes when the
 * callback returns (see ferry_op_set_done_callback). NULL is a no-op. */
#define FERRY_OP_DESTROY_FLUSH_MS 1000
FERRY_API void ferry_op_destroy(ferry_op_t *op);

/* Told that nothing can touch an operation's memory any more (see
 * ferry_op_destroy_nowait). */
typedef void (*ferry_op_released_cb_t)(void *arg);

/* ferry_op_destroy for a caller that must not block on a peer: it does all
 * that ferry_op_destroy does, but never waits for data in flight, and
 * released(arg) tells when the memory of the operation's descriptors that
 * lie in no region (a region's is held by libferry, as ferry_op_in_region
 * says) may be freed or reused. Until then the caller keeps it allocated:
 * an active operation's puts or gets may still read or write it (a passive
 * side that stopped answering holds them in UCX), and a passive
 * operation's admitted writer or reader may, until it settles (its notice
 * came, or with peer error handling its endpoint failed). released is
 * called once, when the last of them has settled: from inside this call
 * when none was in flight or admitted, else later on whichever thread
 * drives the connector then (its progress thread, a ferry_op_wait or a
 * blocking ferry_op_destroy that drives it meanwhile, a caller of
 * ferry_connector_progress, ferry_connector_destroy), with the connector's
 * lock held: it must not call libferry nor block.
 * It is never called when the peer never settles (it died unseen, without
 * peer error handling) and the connector is destroyed first. Nothing of
 * this process moves data through the memory once ferry_connector_destroy
 * has returned, but a peer that has not settled is not known to have
 * stopped: keeping such memory (leaking it) is the safe choice, which the
 * Python package makes. released may be NULL. A destroyed operation no
 * longer counts against ferry_connector_destroy. From the operation's own
 * done callback, as ferry_op_destroy. NULL op is a no-op. */
FERRY_API void ferry_op_destroy_nowait(ferry_op_t *op, ferry_op_released_cb_t released, void *arg);

#ifdef __cplusplus
}
#endif

#endif /* FERRY_FERRY_H */
