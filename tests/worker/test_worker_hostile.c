/*
 * test_worker_hostile.c: the data plane's admission against a hostile peer.
 *
 * The victim is this executable re-executed (--victim CMD_FD RES_FD): a
 * connector with one writable at a time, answering the parent's commands
 * (new writable, status, wait, quit). The parent plays two parts: a hostile
 * peer, a raw UCX worker of its own that sends hand-built active messages
 * (the real AM id, payloads laid out byte by byte from the wire format in
 * worker/wire.c, never libferry's encoder), and an honest writer (a libferry
 * connector) that must still get its bytes through afterwards.
 *
 * What is checked: a forged NOTICE(OK) without admission and a stranger's
 * error NOTICE leave the operation in progress, and the rightful writer then
 * completes it with the right bytes; a CLAIM carrying a garbage worker
 * address does not bring the victim down and creates no endpoint; 10,000
 * bogus CLAIMs leave the victim's RSS and endpoint cache bounded; and the
 * endpoint cache itself is a bounded LRU that never closes a peer in use;
 * an ADMIT whose status is positive ends a write as PROTOCOL, and an ADMIT
 * or NOTICE whose status is outside the status table too (one about the
 * peer's own affairs as PEER_FAILED); and an ADMIT that does not carry the
 * claim's nonce back is ignored.
 *
 * Every read from the victim has a deadline; no sleep synchronizes anything.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pair.h"
#include "worker/ferry_int.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer) /* clang's; gcc defines the other */
#define FERRY_TEST_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(FERRY_TEST_ASAN)
#include <sanitizer/lsan_interface.h>
#define LSAN_IGNORE_BEGIN() __lsan_disable()
#define LSAN_IGNORE_END()   __lsan_enable()
#else
#define LSAN_IGNORE_BEGIN() ((void)0)
#define LSAN_IGNORE_END()   ((void)0)
#endif

#define WAIT_TIMEOUT_MS 20000
#define BUF_SIZE        4096
#define SEED            0x5eed
#define BOGUS_CLAIMS    10000
#define BOGUS_WARMUP    100
#define UNREAD_CLAIMS   200000
#define FLOOD_NOTICES   100000
#define RSS_BOUND       (50u << 20)

/* The wire format, written out here on purpose (see worker/wire.c). */
#define W_MAGIC      0x34595246u /* "FRY4" */
#define W_FIXED      72u
#define W_RANGE      16u /* a CLAIM's range: u64 address, u64 length */
#define W_RANGES     2u  /* the victim's: its descriptor, and its staging block */
#define W_CHUNK_TAIL 24u /* u32 slot, u32 descriptor, u64 offset, u64 length */
enum { W_CLAIM = 1, W_ADMIT = 2, W_NOTICE = 3, W_CHUNK = 4, W_CREDIT = 5 };
#define STAGED_CHUNK 1024u /* the victim's staged writables: 4 chunks, 2 slots */

typedef struct {
    int32_t op_status; /* ferry_op_status of the current writable */
    int32_t wait_status;
    int32_t bytes_ok;
    int32_t pad;
    uint64_t claims_refused;
    uint64_t notices_ignored;
    uint64_t notices_received;
    uint64_t peers_cached;
    uint64_t endpoints_created;
    uint64_t rss_bytes;
    uint64_t inbox_dropped; /* messages the loop's inbox had no room for */
} report_t;

/* ---- the victim ------------------------------------------------------- */

static uint64_t rss_bytes(void)
{
    unsigned long size = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");

    if (f != NULL) {
        if (fscanf(f, "%lu %lu", &size, &resident) != 2) {
            resident = 0;
        }
        fclose(f);
    }
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

static void victim_report(ferry_connector_t *c, ferry_op_t *op, int32_t wait_status,
                          const uint8_t *buf, int res_fd)
{
    ferry_connector_stats_t st;
    report_t rep = {0};

    ferry_connector_get_stats(c, &st);
    rep.op_status = op != NULL ? (int32_t)ferry_op_status(op) : -1;
    rep.wait_status = wait_status;
    rep.bytes_ok = pair_check(buf, BUF_SIZE, SEED, 0) == BUF_SIZE;
    rep.claims_refused = st.claims_refused;
    rep.notices_ignored = st.notices_ignored;
    rep.notices_received = st.notices_received;
    rep.peers_cached = st.peers_cached;
    rep.endpoints_created = st.endpoints_created;
    rep.rss_bytes = rss_bytes();
    ferry__lock(c);
    rep.inbox_dropped = c->inbox_dropped;
    ferry__unlock(c);
    pair_write(res_fd, &rep, sizeof(rep));
}

/* The victim and the honest writer run without peer error handling, as
 * the hostile peer's raw UCX endpoints do (UCX's default): every side must
 * agree on it. */
static int victim_main(int cmd_fd, int res_fd)
{
    ferry_connector_params_t params = {.field_mask =
                                           FERRY_CONNECTOR_PARAM_FIELD_NAME |
                                           FERRY_CONNECTOR_PARAM_FIELD_PEER_ERROR_HANDLING,
                                       .name = "victim",
                                       .peer_error_handling = false};
    static uint8_t buf[BUF_SIZE];
    ferry_descriptor_t d = {buf, sizeof(buf), FERRY_DEVICE_HOST_INIT};
    ferry_connector_t *c;
    ferry_op_t *op = NULL;
    const uint8_t *md;
    size_t md_len;
    char cmd;

    if (ferry_connector_create(&params, &c) != FERRY_OK) {
        return 2;
    }
    while (read(cmd_fd, &cmd, 1) == 1 && cmd != 'Q') {
        switch (cmd) {
        case 'N': /* a fresh writable; answers its metadata */
        case 'T': /* the same on the staged path */
            ferry_op_destroy(op);
            memset(buf, 0, sizeof(buf));
            atomic_store(&ferry__test_staging.force, cmd == 'T');
            atomic_store(&ferry__test_staging.chunk, STAGED_CHUNK);
            atomic_store(&ferry__test_staging.slots, 2);
            if (ferry_writable_create(c, &d, 1, &op) != FERRY_OK) {
                return 3;
            }
            atomic_store(&ferry__test_staging.force, false);
            ferry_op_metadata(op, &md, &md_len);
            pair_send_blob(res_fd, md, (uint32_t)md_len);
            break;
        case 'S': /* status now */
            victim_report(c, op, 0, buf, res_fd);
            break;
        case 'W': /* wait for the writable to end */
            victim_report(c, op, (int32_t)ferry_op_wait(op, WAIT_TIMEOUT_MS), buf, res_fd);
            break;
        default:
            return 4;
        }
    }
    ferry_op_destroy(op);
    ferry_connector_destroy(c);
    return 0;
}

/* ---- the parent: victim control --------------------------------------- */

/* The honest writer's connector: one per victim, gone before the victim is
 * (so no endpoint outlives the process it points at). */
static ferry_connector_t *honest;

typedef struct {
    pair_partner_t proc;
    uint8_t *md;
    uint32_t md_len;
    uint8_t key[FERRY__KEY_LEN];
    uint8_t *address; /* the victim's worker address, from the metadata */
    size_t address_len;
    /* The ranges its metadata names, as a CLAIM carries them. */
    uint8_t ranges[W_RANGES * W_RANGE];
    uint16_t n_ranges;
} victim_t;

static void victim_spawn(victim_t *v)
{
    memset(v, 0, sizeof(*v));
    v->proc = pair_spawn("/proc/self/exe", "--victim");
    assert_true(v->proc.pid > 0);
    ferry_connector_params_t off = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_PEER_ERROR_HANDLING,
                                    .peer_error_handling = false};

    assert_int_equal(ferry_connector_create(&off, &honest), FERRY_OK);
}

static void put_range(victim_t *v, uint64_t address, uint64_t length)
{
    uint8_t *p = v->ranges + v->n_ranges++ * W_RANGE;

    for (int i = 0; i < 8; i++) {
        p[i] = (uint8_t)(address >> (8 * i));
        p[8 + i] = (uint8_t)(length >> (8 * i));
    }
}

/* Asks for a fresh writable (what: 'N', or 'T' staged) and keeps its
 * metadata, key, address and ranges. */
static void victim_new_kind(victim_t *v, char what)
{
    Ferry__V1__RdmaMetadata *md;

    free(v->md);
    free(v->address);
    assert_int_equal(pair_write(v->proc.cmd_fd, &what, 1), 0);
    assert_int_equal(pair_recv_blob(v->proc.res_fd, &v->md, &v->md_len), 0);
    assert_int_equal(ferry__metadata_decode(v->md, v->md_len, &md), FERRY_OK);
    memcpy(v->key, md->notification_key.data, FERRY__KEY_LEN);
    v->address_len = md->worker_address.len;
    v->address = malloc(v->address_len);
    memcpy(v->address, md->worker_address.data, v->address_len);
    assert_in_range(md->n_descriptors + (md->staging != NULL), 1, W_RANGES);
    v->n_ranges = 0;
    for (size_t i = 0; i < md->n_descriptors; i++) {
        put_range(v, md->descriptors[i]->address, md->descriptors[i]->size);
    }
    if (md->staging != NULL) {
        put_range(v, md->staging->address, md->staging->slot_size * md->staging->slots);
    }
    ferry__metadata_free(md);
}

static void victim_new(victim_t *v)
{
    victim_new_kind(v, 'N');
}

static report_t victim_ask(victim_t *v, char what)
{
    report_t rep;

    assert_int_equal(pair_write(v->proc.cmd_fd, &what, 1), 0);
    /* A victim that died answers nothing: this is where a crash shows. */
    assert_int_equal(pair_read(v->proc.res_fd, &rep, sizeof(rep), PAIR_IO_TIMEOUT_MS), 0);
    return rep;
}

/* Polls the victim's status until pred holds or the deadline passes. */
static report_t victim_until(victim_t *v, bool (*pred)(const report_t *, uint64_t), uint64_t arg)
{
    int64_t deadline = pair_now_ms() + PAIR_IO_TIMEOUT_MS;
    report_t rep = victim_ask(v, 'S');

    while (!pred(&rep, arg) && pair_now_ms() < deadline) {
        poll(NULL, 0, 2); /* pacing the questions, not synchronizing */
        rep = victim_ask(v, 'S');
    }
    return rep;
}

/* Every notice sent so far was handled one way or the other. */
static bool notices_handled(const report_t *rep, uint64_t n)
{
    return rep->notices_ignored + rep->notices_received >= n;
}

static bool refused_at_least(const report_t *rep, uint64_t n)
{
    return rep->claims_refused >= n;
}

static void victim_quit(victim_t *v)
{
    int wstatus;

    ferry_connector_destroy(honest);
    honest = NULL;
    pair_write(v->proc.cmd_fd, "Q", 1);
    pair_close(&v->proc);
    wstatus = pair_reap(v->proc.pid); /* -1: it had to be killed */
    assert_true(WIFEXITED(wstatus));
    assert_int_equal(WEXITSTATUS(wstatus), 0);
    free(v->md);
    free(v->address);
}

/* ---- the parent: the hostile peer ------------------------------------- */

typedef struct {
    ucp_context_h context;
    ucp_worker_h worker;
    ucp_ep_h ep;
    ucp_address_t *own_address;
    size_t own_address_len;
    unsigned answers;             /* ADMIT messages received */
    uint8_t last_answer[W_FIXED]; /* the latest one */
    unsigned credits;             /* CREDIT messages received */
    int32_t credit_status;        /* the latest one's */
} hostile_t;

static ucs_status_t hostile_am_cb(void *arg, const void *header, size_t header_length, void *data,
                                  size_t length, const ucp_am_recv_param_t *param)
{
    hostile_t *h = arg;

    (void)header;
    (void)header_length;
    (void)param;
    if (length == W_FIXED) {
        memcpy(h->last_answer, data, W_FIXED);
        h->answers++;
    } else if (length == W_FIXED + W_CHUNK_TAIL && ((const uint8_t *)data)[4] == W_CREDIT) {
        memcpy(&h->credit_status, (const uint8_t *)data + 32, sizeof(h->credit_status));
        h->credits++;
    }
    return UCS_OK;
}

static void hostile_open(hostile_t *h, const victim_t *v)
{
    ucp_params_t params = {.field_mask = UCP_PARAM_FIELD_FEATURES, .features = UCP_FEATURE_AM};
    ucp_worker_params_t wparams = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                                   .thread_mode = UCS_THREAD_MODE_SINGLE};
    ucp_am_handler_param_t am = {0};
    ucp_ep_params_t ep = {0};

    memset(h, 0, sizeof(*h));
    assert_int_equal(ucp_init(&params, NULL, &h->context), UCS_OK);
    assert_int_equal(ucp_worker_create(h->context, &wparams, &h->worker), UCS_OK);
    assert_int_equal(ucp_worker_get_address(h->worker, &h->own_address, &h->own_address_len),
                     UCS_OK);
    am.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                    UCP_AM_HANDLER_PARAM_FIELD_ARG;
    am.id = FERRY__AM_ID;
    am.cb = hostile_am_cb;
    am.arg = h;
    assert_int_equal(ucp_worker_set_am_recv_handler(h->worker, &am), UCS_OK);
    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS;
    ep.address = (const ucp_address_t *)v->address;
    assert_int_equal(ucp_ep_create(h->worker, &ep, &h->ep), UCS_OK);
}

static void hostile_close(hostile_t *h)
{
    ucp_request_param_t param = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                                 .flags = UCP_EP_CLOSE_FLAG_FORCE};
    ucs_status_ptr_t req = ucp_ep_close_nbx(h->ep, &param);

    if (UCS_PTR_IS_PTR(req)) {
        while (ucp_request_check_status(req) == UCS_INPROGRESS) {
            ucp_worker_progress(h->worker);
        }
        ucp_request_free(req);
    }
    ucp_worker_release_address(h->worker, h->own_address);
    ucp_worker_destroy(h->worker);
    ucp_cleanup(h->context);
}

/* Sends one message and progresses until UCX is done with it. */
static void hostile_send(hostile_t *h, const uint8_t *msg, size_t len, bool ask_reply)
{
    ucp_request_param_t param = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                                 .flags = UCP_AM_SEND_FLAG_EAGER};
    ucs_status_ptr_t req;
    int64_t deadline = pair_now_ms() + PAIR_IO_TIMEOUT_MS;

    if (ask_reply) {
        param.flags |= UCP_AM_SEND_FLAG_REPLY;
    }
    req = ucp_am_send_nbx(h->ep, FERRY__AM_ID, NULL, 0, msg, len, &param);
    assert_false(UCS_PTR_IS_ERR(req));
    if (req != NULL) {
        while (ucp_request_check_status(req) == UCS_INPROGRESS && pair_now_ms() < deadline) {
            ucp_worker_progress(h->worker);
        }
        assert_int_equal(ucp_request_check_status(req), UCS_OK);
        ucp_request_free(req);
    }
}

/* Progresses until n answers have arrived (or the deadline). */
static void hostile_await_answers(hostile_t *h, unsigned n)
{
    int64_t deadline = pair_now_ms() + PAIR_IO_TIMEOUT_MS;

    while (h->answers < n && pair_now_ms() < deadline) {
        ucp_worker_progress(h->worker);
    }
    assert_true(h->answers >= n);
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) {
        p[i] = (uint8_t)(v >> (8 * i));
    }
}

/* Lays out one message as wire.c documents it; *len_p is its size. A
 * CLAIM names v's ranges (those of its latest operation). */
static uint8_t *hand_built(uint8_t type, const victim_t *v, const uint8_t *key, int32_t status,
                           const uint8_t *nonce, const uint8_t *address, size_t address_len,
                           size_t *len_p)
{
    size_t ranges = type == W_CLAIM ? v->n_ranges * W_RANGE : 0;
    uint8_t *m = calloc(1, W_FIXED + ranges + address_len);

    put32(m, W_MAGIC);
    m[4] = type;
    /* A claim says its claimant's peer_error_handling (0x40): off, as the
     * victim's and this hostile peer's endpoints. */
    m[5] = type == W_CLAIM ? FERRY__KIND_WRITE | 0x40 : 0;
    m[6] = type == W_CLAIM ? (uint8_t)v->n_ranges : 0;
    memcpy(m + 8, key, FERRY__KEY_LEN);
    m[24] = type == W_CLAIM ? 0x77 : 0; /* an active op id */
    put32(m + 32, (uint32_t)status);
    put32(m + 36, (uint32_t)(ranges + address_len));
    if (nonce != NULL) {
        memcpy(m + 40, nonce, FERRY__NONCE_LEN);
    }
    if (type == W_CLAIM) {
        memset(m + 56, 0xc1, FERRY__NONCE_LEN); /* a claim nonce */
        memcpy(m + W_FIXED, v->ranges, ranges);
    }
    if (address_len > 0) {
        memcpy(m + W_FIXED + ranges, address, address_len);
    }
    *len_p = W_FIXED + ranges + address_len;
    return m;
}

static void send_notice(hostile_t *h, const uint8_t *key, int32_t status, const uint8_t *nonce)
{
    size_t len;
    uint8_t *m = hand_built(W_NOTICE, NULL, key, status, nonce, NULL, 0, &len);

    hostile_send(h, m, len, false);
    free(m);
}

/* A CHUNK of descriptor 0 as wire.c lays it out, with the admission nonce. */
static void send_chunk(hostile_t *h, const uint8_t *key, const uint8_t *nonce, uint32_t slot,
                       uint64_t offset, uint64_t len)
{
    uint8_t m[W_FIXED + W_CHUNK_TAIL] = {0};

    put32(m, W_MAGIC);
    m[4] = W_CHUNK;
    memcpy(m + 8, key, FERRY__KEY_LEN);
    put32(m + 36, W_CHUNK_TAIL);
    memcpy(m + 40, nonce, FERRY__NONCE_LEN);
    put32(m + W_FIXED, slot);
    put32(m + W_FIXED + 8, (uint32_t)offset);
    put32(m + W_FIXED + 12, (uint32_t)(offset >> 32));
    put32(m + W_FIXED + 16, (uint32_t)len);
    put32(m + W_FIXED + 20, (uint32_t)(len >> 32));
    hostile_send(h, m, sizeof(m), false);
}

/* Progresses until n CREDITs have arrived (or the deadline). */
static void hostile_await_credits(hostile_t *h, unsigned n)
{
    int64_t deadline = pair_now_ms() + PAIR_IO_TIMEOUT_MS;

    while (h->credits < n && pair_now_ms() < deadline) {
        ucp_worker_progress(h->worker);
    }
    assert_true(h->credits >= n);
}

static void send_claim(hostile_t *h, const victim_t *v, const uint8_t *key, const uint8_t *address,
                       size_t address_len, bool ask_reply)
{
    size_t len;
    uint8_t *m = hand_built(W_CLAIM, v, key, 0, NULL, address, address_len, &len);

    hostile_send(h, m, len, ask_reply);
    free(m);
}

/* ---- the parent: the honest writer ------------------------------------ */

static void honest_write(const victim_t *v)
{
    static uint8_t src[BUF_SIZE];
    ferry_descriptor_t d = {src, sizeof(src), FERRY_DEVICE_HOST_INIT};
    ferry_op_t *op;

    pair_fill(src, sizeof(src), SEED, 0);
    assert_int_equal(ferry_write_begin(honest, &d, 1, v->md, v->md_len, &op), FERRY_OK);
    assert_int_equal(ferry_op_wait(op, WAIT_TIMEOUT_MS), FERRY_OK);
    ferry_op_destroy(op);
}

/* The victim's writable completes with every byte right. */
static void assert_honest_completes(victim_t *v)
{
    report_t rep;

    honest_write(v);
    rep = victim_ask(v, 'W');
    assert_int_equal(rep.wait_status, FERRY_OK);
    assert_int_equal(rep.op_status, FERRY_OP_STATUS_COMPLETE);
    assert_int_equal(rep.bytes_ok, 1);
}

/* ---- tests ------------------------------------------------------------ */

/* A NOTICE(OK) that carries the key but no admission is ignored: the buffer
 * nobody wrote is not COMPLETE, and the real writer then completes it. */
static void test_forged_notice_ignored(void **state)
{
    uint8_t guess[FERRY__NONCE_LEN];
    victim_t v;
    hostile_t h;
    report_t rep;
    (void)state;

    victim_spawn(&v);
    victim_new(&v);
    hostile_open(&h, &v);
    assert_int_equal(getrandom(guess, sizeof(guess), 0), (ssize_t)sizeof(guess));
    send_notice(&h, v.key, FERRY_OK, NULL);  /* a zero nonce */
    send_notice(&h, v.key, FERRY_OK, guess); /* a guessed one */
    rep = victim_until(&v, notices_handled, 2);
    assert_int_equal(rep.op_status, FERRY_OP_STATUS_INITIALIZED);
    assert_int_equal(rep.notices_received, 0);
    assert_int_equal(rep.notices_ignored, 2);
    assert_honest_completes(&v);
    hostile_close(&h);
    victim_quit(&v);
}

/* A stranger's error NOTICE does not cancel the operation, so the rightful
 * writer is not refused afterwards. */
static void test_stranger_error_notice_ignored(void **state)
{
    victim_t v;
    hostile_t h;
    report_t rep;
    (void)state;

    victim_spawn(&v);
    victim_new(&v);
    hostile_open(&h, &v);
    send_notice(&h, v.key, FERRY_ERR_CANCELLED, NULL);
    send_notice(&h, v.key, FERRY_ERR_PEER_FAILED, NULL);
    send_notice(&h, v.key, 12345, NULL); /* not even a status */
    rep = victim_until(&v, notices_handled, 3);
    assert_int_equal(rep.op_status, FERRY_OP_STATUS_INITIALIZED);
    assert_int_equal(rep.notices_ignored, 3);
    assert_honest_completes(&v);
    hostile_close(&h);
    victim_quit(&v);
}

/* A CLAIM with a garbage worker address (UCX 1.13 aborts in ucp_ep_create on
 * such bytes) neither crashes the victim nor creates an endpoint; with the
 * right key it is admitted through the reply endpoint, and only the nonce in
 * that ADMIT completes the operation. */
static void test_garbage_address_claim(void **state)
{
    uint8_t garbage[300], stranger_key[FERRY__KEY_LEN];
    victim_t v;
    hostile_t h;
    report_t rep;
    (void)state;

    victim_spawn(&v);
    victim_new(&v);
    hostile_open(&h, &v);
    memset(garbage, 0xa5, sizeof(garbage)); /* trips an assertion in UCX's address parser */
    assert_int_equal(getrandom(stranger_key, sizeof(stranger_key), 0),
                     (ssize_t)sizeof(stranger_key));
    send_claim(&h, &v, stranger_key, garbage, sizeof(garbage), true);
    send_claim(&h, &v, stranger_key, garbage, sizeof(garbage), false);
    send_claim(&h, &v, v.key, garbage, 1, false); /* right key, no reply endpoint */
    rep = victim_until(&v, refused_at_least, 3);
    assert_int_equal(rep.claims_refused, 3);
    assert_int_equal(rep.endpoints_created, 0);
    assert_int_equal(rep.peers_cached, 0);
    hostile_await_answers(&h, 1); /* the refusal, on the reply endpoint */
    assert_int_equal(h.last_answer[4], W_ADMIT);
    assert_int_equal((int32_t)(h.last_answer[32] | h.last_answer[33] << 8 |
                               h.last_answer[34] << 16 | (uint32_t)h.last_answer[35] << 24),
                     FERRY_ERR_NOT_FOUND);
    assert_honest_completes(&v);

    /* The right key with a garbage address: admitted, nothing built. */
    victim_new(&v);
    send_claim(&h, &v, v.key, garbage, sizeof(garbage), true);
    hostile_await_answers(&h, 2);
    assert_int_equal(h.last_answer[4], W_ADMIT);
    assert_int_equal(h.last_answer[32] | h.last_answer[33] | h.last_answer[34], 0);
    rep = victim_ask(&v, 'S');
    assert_int_equal(rep.op_status, FERRY_OP_STATUS_IN_PROGRESS);
    assert_int_equal(rep.endpoints_created, 0); /* admitted on the reply endpoint */
    send_notice(&h, v.key, FERRY_OK, NULL);     /* without the nonce: ignored */
    rep = victim_until(&v, notices_handled, 2);
    assert_int_equal(rep.op_status, FERRY_OP_STATUS_IN_PROGRESS);
    send_notice(&h, v.key, FERRY_OK, h.last_answer + 40); /* the admitted one's */
    rep = victim_ask(&v, 'W');
    assert_int_equal(rep.wait_status, FERRY_OK);
    assert_int_equal(rep.notices_received, 2);
    hostile_close(&h);
    victim_quit(&v);
}

/* The status of the latest answer h received. */
static int32_t answer_status(const hostile_t *h)
{
    const uint8_t *p = h->last_answer + 32;

    return (int32_t)(p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24);
}

/* A CLAIM with the right key whose ranges are not the operation's (its
 * metadata was edited: another address, a longer range, a range too many)
 * is refused INVALID_ARGUMENT and admits nobody; the rightful writer then
 * completes the operation. Before, any claim with the key was admitted, and
 * an honest writer holding edited metadata put wherever it said: over TCP
 * or CMA into the target's process outside the operation, over UCX's self
 * transport into its own. */
static void test_claim_naming_other_memory_refused(void **state)
{
    victim_t v;
    hostile_t h;
    report_t rep;
    uint8_t right[W_RANGE];
    (void)state;

    victim_spawn(&v);
    victim_new(&v);
    hostile_open(&h, &v);
    assert_int_equal(v.n_ranges, 1);
    memcpy(right, v.ranges, W_RANGE);
    for (unsigned i = 0; i < 3; i++) {
        memcpy(v.ranges, right, W_RANGE);
        v.n_ranges = 1;
        if (i == 0) {
            v.ranges[1] ^= 0x10; /* the address, 4 KiB off */
        } else if (i == 1) {
            v.ranges[8] += 1; /* the length, one byte longer */
        } else {
            memcpy(v.ranges + W_RANGE, right, W_RANGE); /* the range twice */
            v.n_ranges = 2;
        }
        send_claim(&h, &v, v.key, (const uint8_t *)h.own_address, h.own_address_len, true);
        hostile_await_answers(&h, i + 1);
        assert_int_equal(h.last_answer[4], W_ADMIT);
        assert_int_equal(answer_status(&h), FERRY_ERR_INVALID_ARGUMENT);
    }
    rep = victim_ask(&v, 'S');
    assert_int_equal(rep.claims_refused, 3);
    assert_int_equal(rep.op_status, FERRY_OP_STATUS_INITIALIZED); /* nobody admitted */
    assert_honest_completes(&v);
    hostile_close(&h);
    victim_quit(&v);
}

/* A CLAIM that says its claimant asks for peer failure detection, to a
 * passive side without it (the hostile peer's endpoint has none either), is
 * refused FAILED_PRECONDITION before the passive side opens anything to the
 * claimant, and admits nobody, as is one that does not say (an older
 * libferry); the same claim saying off is admitted.
 * An admission's endpoint back to a claimant whose own endpoint differs in
 * this made UCX 1.13 destroy the claimant's endpoint under its puts, and the
 * passive process abort. */
static void test_claim_with_other_peer_error_handling_refused(void **state)
{
    victim_t v;
    hostile_t h;
    report_t rep;
    size_t len;
    uint8_t *m;
    (void)state;

    victim_spawn(&v);
    victim_new(&v);
    hostile_open(&h, &v);
    m = hand_built(W_CLAIM, &v, v.key, 0, NULL, (const uint8_t *)h.own_address, h.own_address_len,
                   &len);
    m[5] = FERRY__KIND_WRITE | 0xc0; /* wire.c: said, and on */
    hostile_send(&h, m, len, true);
    hostile_await_answers(&h, 1);
    assert_int_equal(h.last_answer[4], W_ADMIT);
    assert_int_equal(answer_status(&h), FERRY_ERR_FAILED_PRECONDITION);
    m[5] = FERRY__KIND_WRITE; /* not said */
    hostile_send(&h, m, len, true);
    hostile_await_answers(&h, 2);
    assert_int_equal(answer_status(&h), FERRY_ERR_FAILED_PRECONDITION);
    rep = victim_ask(&v, 'S');
    assert_int_equal(rep.claims_refused, 2);
    assert_int_equal(rep.op_status, FERRY_OP_STATUS_INITIALIZED); /* nobody admitted */
    m[5] = FERRY__KIND_WRITE | 0x40;                              /* said, and off */
    hostile_send(&h, m, len, true);
    hostile_await_answers(&h, 3);
    assert_int_equal(answer_status(&h), FERRY_OK);
    rep = victim_ask(&v, 'S');
    assert_int_equal(rep.op_status, FERRY_OP_STATUS_IN_PROGRESS); /* admitted */
    free(m);
    hostile_close(&h);
    victim_quit(&v);
}

/* The admitted writer's error NOTICE ends the writable with a code a peer
 * may report: a number outside the status table as PROTOCOL, EXPIRED (the
 * writer's lease, not ours) as PEER_FAILED. Before, -1000 became the
 * writable's error code. TIMED_OUT (the writer's own deadline) ends it
 * PEER_FAILED too: before, the writable ended ERRORED with TIMED_OUT, which
 * its wait returned at once, the code of a wait whose time ran out, and
 * the Python binding and ferry-worker waited on it in a busy loop. */
static void test_notice_status_outside_the_table(void **state)
{
    static const struct {
        int32_t sent;
        ferry_status_t taken;
    } cases[] = {
        {-1000, FERRY_ERR_PROTOCOL},
        {FERRY_ERR_EXPIRED, FERRY_ERR_PEER_FAILED},
        {FERRY_ERR_TIMED_OUT, FERRY_ERR_PEER_FAILED},
        {FERRY_ERR_CANCELLED, FERRY_ERR_CANCELLED}, /* what a writer may report */
    };
    victim_t v;
    hostile_t h;
    report_t rep;
    (void)state;

    victim_spawn(&v);
    victim_new(&v);
    hostile_open(&h, &v);
    for (unsigned i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        if (i > 0) {
            victim_new(&v);
        }
        send_claim(&h, &v, v.key, (const uint8_t *)h.own_address, h.own_address_len, true);
        hostile_await_answers(&h, i + 1);
        assert_int_equal(h.last_answer[32] | h.last_answer[33] | h.last_answer[34], 0); /* OK */
        send_notice(&h, v.key, cases[i].sent, h.last_answer + 40); /* the admitted one's */
        rep = victim_ask(&v, 'W');
        assert_int_equal(rep.wait_status, cases[i].taken);
        assert_int_equal(rep.op_status, FERRY_OP_STATUS_ERRORED);
    }
    hostile_close(&h);
    victim_quit(&v);
}

/* Claims the victim's staged writable as h (with h's own address: the
 * victim sends CREDITs there) and keeps the admission nonce. */
static void claim_staged(victim_t *v, hostile_t *h, uint8_t *nonce)
{
    unsigned answers = h->answers;

    victim_new_kind(v, 'T');
    send_claim(h, v, v->key, (const uint8_t *)h->own_address, h->own_address_len, true);
    hostile_await_answers(h, answers + 1);
    assert_int_equal(h->last_answer[32] | h->last_answer[33] | h->last_answer[34], 0); /* OK */
    memcpy(nonce, h->last_answer + 40, FERRY__NONCE_LEN);
}

/* An admitted writer of a staged writable is held to the chunks the
 * writable is cut into, each once. One that sends the first chunk as often
 * as there are chunks (the landed bytes add up to the writable's size) and
 * then NOTICE(OK) ends it PROTOCOL; before, it ended COMPLETE with three
 * quarters of it never written. One that sends a short chunk ends it
 * PROTOCOL at once; before, the writable never completed. */
static void test_staged_chunks_each_once(void **state)
{
    uint8_t nonce[FERRY__NONCE_LEN];
    victim_t v;
    hostile_t h;
    report_t rep;
    (void)state;

    victim_spawn(&v);
    victim_new(&v);
    hostile_open(&h, &v);

    claim_staged(&v, &h, nonce);
    for (unsigned i = 0; i < BUF_SIZE / STAGED_CHUNK && h.credit_status == FERRY_OK; i++) {
        send_chunk(&h, v.key, nonce, 0, 0, STAGED_CHUNK); /* the first chunk, again */
        hostile_await_credits(&h, i + 1);                 /* slot 0 is free again */
    }
    send_notice(&h, v.key, FERRY_OK, nonce);
    rep = victim_ask(&v, 'W');
    assert_int_equal(rep.wait_status, FERRY_ERR_PROTOCOL);
    assert_int_equal(rep.op_status, FERRY_OP_STATUS_ERRORED);

    claim_staged(&v, &h, nonce);
    send_chunk(&h, v.key, nonce, 0, 0, STAGED_CHUNK / 2);
    send_notice(&h, v.key, FERRY_OK, nonce);
    rep = victim_ask(&v, 'W');
    assert_int_equal(rep.wait_status, FERRY_ERR_PROTOCOL);
    hostile_close(&h);
    victim_quit(&v);
}

/* Sends claims first..first+n-1 for unknown keys, each with an address of
 * its own (the peer's real address plus the claim's number, which UCX
 * would accept), and waits for all n refusals. */
static report_t send_bogus_claims(hostile_t *h, victim_t *v, uint32_t first, uint32_t n)
{
    uint8_t key[FERRY__KEY_LEN];
    uint8_t *address = malloc(h->own_address_len + sizeof(uint32_t));
    report_t rep;

    assert_non_null(address);
    memcpy(address, h->own_address, h->own_address_len);
    for (uint32_t i = first; i < first + n; i++) {
        assert_int_equal(getrandom(key, sizeof(key), 0), (ssize_t)sizeof(key));
        memcpy(address + h->own_address_len, &i, sizeof(i));
        send_claim(h, v, key, address, h->own_address_len + sizeof(i), true);
        ucp_worker_progress(h->worker); /* take the refusals as they come */
    }
    hostile_await_answers(h, first + n);
    rep = victim_until(v, refused_at_least, first + n);
    assert_int_equal(rep.claims_refused, first + n);
    free(address);
    return rep;
}

/* Sends one message and progresses only if UCX has not taken it at once:
 * a peer that does not read what comes back. */
static void hostile_send_unread(hostile_t *h, const uint8_t *msg, size_t len)
{
    ucp_request_param_t param = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                                 .flags = UCP_AM_SEND_FLAG_EAGER | UCP_AM_SEND_FLAG_REPLY};
    ucs_status_ptr_t req = ucp_am_send_nbx(h->ep, FERRY__AM_ID, NULL, 0, msg, len, &param);
    int64_t deadline = pair_now_ms() + PAIR_IO_TIMEOUT_MS;

    assert_false(UCS_PTR_IS_ERR(req));
    if (req != NULL) {
        while (ucp_request_check_status(req) == UCS_INPROGRESS && pair_now_ms() < deadline) {
            ucp_worker_progress(h->worker);
        }
        assert_int_equal(ucp_request_check_status(req), UCS_OK);
        ucp_request_free(req);
    }
}

/* UNREAD_CLAIMS claims for unknown keys from a peer that reads the
 * refusals only at the end: the victim holds at most FERRY__REPLIES_MAX
 * refusals unsent (the rest are dropped, and those claimants wait out
 * their claim timeout), so its RSS stays bounded; once the peer reads,
 * what was held drains, and a real transfer still works. */
static void test_unread_refusals_bounded(void **state)
{
    uint8_t key[FERRY__KEY_LEN] = {0};
    victim_t v;
    hostile_t h;
    report_t before, after;
    uint8_t *m;
    size_t len;
    (void)state;

    victim_spawn(&v);
    victim_new(&v);
    hostile_open(&h, &v);
    send_bogus_claims(&h, &v, 0, BOGUS_WARMUP);
    before = victim_ask(&v, 'S');
    m = hand_built(W_CLAIM, &v, key, 0, NULL, (const uint8_t *)h.own_address, h.own_address_len,
                   &len);
    for (uint32_t i = 0; i < UNREAD_CLAIMS; i++) {
        memcpy(m + 8, &i, sizeof(i)); /* a key of its own (never a live one) */
        hostile_send_unread(&h, m, len);
    }
    free(m);
    after = victim_until(&v, refused_at_least, BOGUS_WARMUP + UNREAD_CLAIMS);
    print_message("victim RSS: %llu bytes before %u unread claims, %llu after\n",
                  (unsigned long long)before.rss_bytes, (unsigned)UNREAD_CLAIMS,
                  (unsigned long long)after.rss_bytes);
    assert_in_range(after.rss_bytes, 0, before.rss_bytes + RSS_BOUND - 1);
    hostile_await_answers(&h, BOGUS_WARMUP + 1);
    assert_honest_completes(&v);
    hostile_close(&h);
    victim_quit(&v);
}

/* FLOOD_NOTICES forged NOTICEs (random keys, no nonce of ours), sent as
 * fast as UCX takes them, never take a slot of the victim's inbox: each is
 * dropped in the AM callback (counted as ignored), so none of the victim's
 * own messages could be crowded out, and its transfer completes. Before,
 * every one was queued for the loop, and a flood filled the inbox
 * (FERRY__INBOX_MAX) and dropped whatever came next, honest or not. */
static void test_forged_flood_takes_no_inbox_slot(void **state)
{
    uint8_t key[FERRY__KEY_LEN] = {0};
    victim_t v;
    hostile_t h;
    report_t rep;
    uint8_t *m;
    size_t len;
    (void)state;

    victim_spawn(&v);
    victim_new(&v);
    hostile_open(&h, &v);
    m = hand_built(W_NOTICE, NULL, key, FERRY_OK, NULL, NULL, 0, &len);
    for (uint32_t i = 0; i < FLOOD_NOTICES; i++) {
        memcpy(m + 8, &i, sizeof(i)); /* a key of its own (never a live one) */
        hostile_send_unread(&h, m, len);
    }
    free(m);
    rep = victim_until(&v, notices_handled, FLOOD_NOTICES);
    assert_int_equal(rep.notices_ignored, FLOOD_NOTICES);
    assert_int_equal(rep.inbox_dropped, 0);
    assert_honest_completes(&v);
    hostile_close(&h);
    victim_quit(&v);
}

/* 10,000 bogus CLAIMs leave the victim's RSS and endpoint cache bounded,
 * and a real transfer still works. RSS is taken after BOGUS_WARMUP claims:
 * what the first ones start once (on a GPU machine, UCX's CUDA support
 * initialising the driver: about 100 MB, measured on an H200) is no growth. */
static void test_bogus_claims_bounded(void **state)
{
    victim_t v;
    hostile_t h;
    report_t before, after;
    (void)state;

    victim_spawn(&v);
    victim_new(&v);
    hostile_open(&h, &v);
    before = send_bogus_claims(&h, &v, 0, BOGUS_WARMUP);
    after = send_bogus_claims(&h, &v, BOGUS_WARMUP, BOGUS_CLAIMS);
    assert_int_equal(after.endpoints_created, 0);
    assert_true(after.peers_cached <= FERRY__PEER_CACHE_MAX);
    print_message("victim RSS: %llu bytes after %u claims, %llu after %u more\n",
                  (unsigned long long)before.rss_bytes, (unsigned)BOGUS_WARMUP,
                  (unsigned long long)after.rss_bytes, (unsigned)BOGUS_CLAIMS);
    assert_in_range(after.rss_bytes, 0, before.rss_bytes + RSS_BOUND - 1);
    assert_honest_completes(&v);
    hostile_close(&h);
    victim_quit(&v);
}

/* The endpoint cache in one process: a bound of 2, four peers; the least
 * recently used idle peer goes, a peer an operation holds never does. */
static void test_peer_cache_lru(void **state)
{
    ucp_params_t params = {.field_mask = UCP_PARAM_FIELD_FEATURES, .features = UCP_FEATURE_AM};
    ucp_worker_params_t wparams = {0};
    ucp_context_h ctx;
    ucp_worker_h workers[4];
    ucp_address_t *addrs[4];
    size_t lens[4];
    ferry_connector_t *c;
    ferry__peer_t *held, *p;
    ferry_connector_stats_t st;
    (void)state;

    assert_int_equal(ucp_init(&params, NULL, &ctx), UCS_OK);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(ucp_worker_create(ctx, &wparams, &workers[i]), UCS_OK);
        assert_int_equal(ucp_worker_get_address(workers[i], &addrs[i], &lens[i]), UCS_OK);
    }
    assert_int_equal(ferry_connector_create(NULL, &c), FERRY_OK);
    ferry__lock(c);
    c->peer_cache_max = 2;
    assert_int_equal(ferry__peer_get(c, (uint8_t *)addrs[0], lens[0], &held), FERRY_OK);
    for (int i = 1; i < 4; i++) {
        assert_int_equal(ferry__peer_get(c, (uint8_t *)addrs[i], lens[i], &p), FERRY_OK);
        ferry__peer_put(p);
        assert_true(c->n_peers <= 2);
        assert_true(held->in_cache); /* in use: never evicted */
    }
    /* The newest idle one stayed; getting it again is a hit. */
    assert_int_equal(ferry__peer_get(c, (uint8_t *)addrs[3], lens[3], &p), FERRY_OK);
    ferry__peer_put(p);
    ferry__peer_put(held);
    ferry__unlock(c);
    ferry_connector_get_stats(c, &st);
    assert_int_equal(st.endpoints_created, 4);
    assert_int_equal(st.endpoint_cache_hits, 1);
    assert_int_equal(st.peers_cached, 2);
    ferry_connector_destroy(c);
    for (int i = 0; i < 4; i++) {
        ucp_worker_release_address(workers[i], addrs[i]);
        ucp_worker_destroy(workers[i]);
    }
    ucp_cleanup(ctx);
}

/* A hostile passive side: answers every CLAIM, from inside the callback on
 * the reply endpoint, with an ADMIT whose status is admit_status; with
 * forge_first, first with one that does not carry the claim's nonce back
 * (what a third party who knows the key and guesses the op id can send),
 * whose status is forged_status. */
typedef struct {
    ucp_worker_h worker;
    int32_t admit_status;
    bool silent; /* answers nothing (a passive side that is gone) */
    /* The writer under test runs without peer error handling: the
     * metadata says the same, as writers refuse metadata that differs. (A
     * fake never opens an endpoint back, so it may say either.) */
    bool writer_off;
    bool abandon; /* the writer cancels and destroys its op at once */
    bool forge_first;
    int32_t forged_status;
    uint8_t answer[W_FIXED], forged[W_FIXED];
    ucs_status_ptr_t req, forged_req;
    unsigned claims;
    /* Set by fake_open: its UCX side, its exposed memory and metadata. */
    ucp_context_h ctx;
    ucp_address_t *addr;
    size_t addr_len;
    ucp_mem_h memh;
    void *rkey;
    uint8_t *md;
    size_t md_len;
    uint8_t target[BUF_SIZE];
} fake_passive_t;

static ucs_status_t fake_passive_am_cb(void *arg, const void *header, size_t header_length,
                                       void *data, size_t length, const ucp_am_recv_param_t *param)
{
    fake_passive_t *f = arg;
    ucp_request_param_t send = {.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS,
                                .flags = UCP_AM_SEND_FLAG_EAGER};
    const uint8_t *claim = data;

    (void)header;
    (void)header_length;
    if (length < W_FIXED || claim[4] != W_CLAIM ||
        !(param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) || f->claims++ > 0 || f->silent) {
        return UCS_OK;
    }
    memcpy(f->answer, claim, W_FIXED); /* magic, key, op id, claim nonce */
    f->answer[4] = W_ADMIT;
    f->answer[5] = 0;
    f->answer[6] = f->answer[7] = 0; /* the claim's range count */
    put32(f->answer + 32, (uint32_t)f->admit_status);
    put32(f->answer + 36, 0);
    if (f->forge_first) {
        memcpy(f->forged, f->answer, W_FIXED);
        put32(f->forged + 32, (uint32_t)f->forged_status);
        f->forged[56] ^= 0xff; /* right key and op id, not the claim's nonce */
        f->forged_req =
            ucp_am_send_nbx(param->reply_ep, FERRY__AM_ID, NULL, 0, f->forged, W_FIXED, &send);
    }
    f->req = ucp_am_send_nbx(param->reply_ep, FERRY__AM_ID, NULL, 0, f->answer, W_FIXED, &send);
    return UCS_OK;
}

static void fake_request_free(fake_passive_t *f, ucs_status_ptr_t req)
{
    if (UCS_PTR_IS_PTR(req)) {
        while (ucp_request_check_status(req) == UCS_INPROGRESS) {
            ucp_worker_progress(f->worker);
        }
        ucp_request_free(req);
    }
}

/* Opens f's UCX side: a worker answering claims (fake_passive_am_cb) and
 * f->target registered, described by f->md as a writable or a readable. */
static void fake_open(fake_passive_t *f, ferry__op_kind_t kind)
{
    ucp_params_t params = {.field_mask = UCP_PARAM_FIELD_FEATURES,
                           .features = UCP_FEATURE_AM | UCP_FEATURE_RMA};
    ucp_worker_params_t wparams = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
                                   .thread_mode = UCS_THREAD_MODE_SINGLE};
    ucp_mem_map_params_t mparams = {0};
    ucp_am_handler_param_t am = {0};
    ferry_descriptor_t remote = {f->target, sizeof(f->target), FERRY_DEVICE_HOST_INIT};
    ferry__metadata_build_t build = {0};
    uint8_t key[FERRY__KEY_LEN] = {1, 2, 3};
    size_t rkey_len;
    ucp_config_t *config;

    /* As libferry with peer error handling: shared memory that detects a
     * dead peer, without which the writer's UCX finds no transport that
     * does on this host (not under UCX_TLS=tcp, as libferry: UCX warns of a
     * setting no transport takes). */
    assert_int_equal(ucp_config_read(NULL, NULL, &config), UCS_OK);
    if (!f->writer_off && getenv("UCX_TLS") == NULL) {
        assert_int_equal(ucp_config_modify(config, "MM_ERROR_HANDLING", "y"), UCS_OK);
    }
    assert_int_equal(ucp_init(&params, config, &f->ctx), UCS_OK);
    ucp_config_release(config);
    assert_int_equal(ucp_worker_create(f->ctx, &wparams, &f->worker), UCS_OK);
    assert_int_equal(ucp_worker_get_address(f->worker, &f->addr, &f->addr_len), UCS_OK);
    am.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                    UCP_AM_HANDLER_PARAM_FIELD_ARG;
    am.id = FERRY__AM_ID;
    am.cb = fake_passive_am_cb;
    am.arg = f;
    assert_int_equal(ucp_worker_set_am_recv_handler(f->worker, &am), UCS_OK);
    mparams.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH;
    mparams.address = f->target;
    mparams.length = sizeof(f->target);
    assert_int_equal(ucp_mem_map(f->ctx, &mparams, &f->memh), UCS_OK);
    assert_int_equal(ucp_rkey_pack(f->ctx, f->memh, &f->rkey, &rkey_len), UCS_OK);
    build.kind = kind;
    build.worker_address = (const uint8_t *)f->addr;
    build.worker_address_len = f->addr_len;
    build.descs = &remote;
    build.n = 1;
    build.rkeys = (const void *const *)&f->rkey;
    build.rkey_lens = &rkey_len;
    build.key = key;
    build.worker_name = "fake";
    build.hostname = "fake";
    build.peer_error_handling = !f->writer_off;
    assert_int_equal(ferry__metadata_encode(&build, &f->md, &f->md_len), FERRY_OK);
}

static void fake_close(fake_passive_t *f)
{
    fake_request_free(f, f->forged_req);
    fake_request_free(f, f->req);
    free(f->md);
    ucp_rkey_buffer_release(f->rkey);
    ucp_mem_unmap(f->ctx, f->memh);
    ucp_worker_release_address(f->worker, f->addr);
    ucp_worker_destroy(f->worker);
    ucp_cleanup(f->ctx);
}

/* Begins a write into memory the fake passive side f exposes, lets f answer
 * the claim, and returns how the write ended (FERRY_ERR_TIMED_OUT if it did
 * not within WAIT_TIMEOUT_MS); *error_p gets ferry_op_error's code. With
 * f->abandon the write is cancelled and destroyed at once, and the result
 * is FERRY_OK once the connector holds no operation any more. */
static ferry_status_t write_against_fake(fake_passive_t *f, ferry_status_t *error_p)
{
    static uint8_t src[BUF_SIZE];
    ferry_descriptor_t local = {src, sizeof(src), FERRY_DEVICE_HOST_INIT};
    ferry_connector_t *c;
    ferry_op_t *op;
    ferry_status_t st = FERRY_ERR_TIMED_OUT;
    const char *msg;
    int64_t deadline;

    fake_open(f, FERRY__KIND_WRITABLE);
    /* A connector of its own, gone before the fake side is. */
    assert_int_equal(ferry_connector_create(NULL, &c), FERRY_OK);
    assert_int_equal(ferry_write_begin(c, &local, 1, f->md, f->md_len, &op), FERRY_OK);
    deadline = pair_now_ms() + WAIT_TIMEOUT_MS;
    if (f->abandon) {
        assert_int_equal(ferry_op_cancel(op), FERRY_OK);
        *error_p = ferry_op_error(op, &msg);
        ferry_op_destroy(op);
        while (pair_live_ops(c) > 0 && pair_now_ms() < deadline) {
            ucp_worker_progress(f->worker);
            struct timespec pause = {0, 1000000};
            nanosleep(&pause, NULL); /* polling the condition, with a deadline */
        }
        st = pair_live_ops(c) == 0 ? FERRY_OK : FERRY_ERR_TIMED_OUT;
        op = NULL;
    }
    while (op != NULL && st == FERRY_ERR_TIMED_OUT && pair_now_ms() < deadline) {
        ucp_worker_progress(f->worker); /* the fake passive side runs here */
        st = ferry_op_wait(op, 1);
    }
    if (op != NULL) {
        *error_p = ferry_op_error(op, &msg);
        ferry_op_destroy(op);
    }
    ferry_connector_destroy(c);
    fake_close(f);
    return st;
}

/* active_on_admit takes a refusal only as a negative status: a positive one
 * from a broken or hostile peer ends the write as PROTOCOL, never as a
 * "status" that is not one. */
static void test_admit_positive_status_is_protocol_error(void **state)
{
    fake_passive_t f = {.admit_status = 7};
    ferry_status_t error;
    (void)state;

    assert_int_equal(write_against_fake(&f, &error), FERRY_ERR_PROTOCOL);
    assert_int_equal(f.claims, 1);
    assert_int_equal(error, FERRY_ERR_PROTOCOL);
}

/* An ADMIT that does not carry the claim's nonce back is not the passive
 * side's answer: a refusal forged by someone who knows the key and guessed
 * the op id, arriving first, is ignored, and the write ends with the real
 * answer's status. (Before the claim nonce it ended with the forged one.) */
static void test_admit_without_the_claim_nonce_is_ignored(void **state)
{
    fake_passive_t f = {.admit_status = FERRY_ERR_FAILED_PRECONDITION,
                        .forge_first = true,
                        .forged_status = FERRY_ERR_NOT_FOUND};
    ferry_status_t error;
    (void)state;

    assert_int_equal(write_against_fake(&f, &error), FERRY_ERR_FAILED_PRECONDITION);
    assert_int_equal(f.claims, 1);
    assert_int_equal(error, FERRY_ERR_FAILED_PRECONDITION);
}

/* A peer's status is a number it chose: one outside the status table ends
 * the write as PROTOCOL, and a real code about the peer's own affairs (its
 * lease expired, its caller misused the API, its deadline passed) as
 * PEER_FAILED, never as itself (the coordinator client would report and
 * store it as this side's, and a TIMED_OUT would pass for a wait whose time
 * ran out). Before, any negative number became the operation's error
 * code. */
static void test_admit_status_outside_the_table(void **state)
{
    static const struct {
        int32_t sent;
        ferry_status_t taken;
    } cases[] = {
        {-1000, FERRY_ERR_PROTOCOL},
        {INT32_MIN, FERRY_ERR_PROTOCOL},
        {FERRY_ERR_EXPIRED, FERRY_ERR_PEER_FAILED},
        {FERRY_ERR_MISUSE, FERRY_ERR_PEER_FAILED},
        {FERRY_ERR_TIMED_OUT, FERRY_ERR_PEER_FAILED},
        {FERRY_ERR_NOT_FOUND, FERRY_ERR_NOT_FOUND}, /* a refusal it may give */
    };
    (void)state;

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        fake_passive_t f = {.admit_status = cases[i].sent};
        ferry_status_t error;
        assert_int_equal(write_against_fake(&f, &error), cases[i].taken);
        assert_int_equal(f.claims, 1);
        assert_int_equal(error, cases[i].taken);
    }
}

/* A passive side that never answers the claim (its process is gone, and
 * nothing tells the writer): the write fails UNAVAILABLE once
 * FERRY_CLAIM_TIMEOUT_MS has passed, instead of waiting for ever; and one
 * its owner cancelled and destroyed meanwhile is freed then (before, the
 * claim's reference kept it, its metadata and its peer, for good). */
static void test_unanswered_claim_ends(void **state)
{
    fake_passive_t waits = {.silent = true}, abandoned = {.silent = true, .abandon = true};
    ferry_status_t error;
    (void)state;

    assert_int_equal(setenv("FERRY_CLAIM_TIMEOUT_MS", "300", 1), 0);
    assert_int_equal(write_against_fake(&waits, &error), FERRY_ERR_UNAVAILABLE);
    assert_int_equal(waits.claims, 1);
    assert_int_equal(error, FERRY_ERR_UNAVAILABLE);
    assert_int_equal(write_against_fake(&abandoned, &error), FERRY_OK);
    assert_int_equal(abandoned.claims, 1);
    assert_int_equal(error, FERRY_ERR_CANCELLED);
    assert_int_equal(unsetenv("FERRY_CLAIM_TIMEOUT_MS"), 0);
}

typedef struct {
    unsigned warns, errors;
} log_count_t;

static void count_log(ferry_loglevel_t level, const char *message, void *arg)
{
    log_count_t *n = arg;

    (void)message;
    n->warns += level == FERRY_LOGLEVEL_WARN;
    n->errors += level == FERRY_LOGLEVEL_ERROR;
}

/* The checks of stopped_peer_case: the line of the first that fails. */
#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
            return __LINE__;                                                         \
        }                                                                            \
    } while (0)

/* A writer's claim to a passive side that never runs its loop (a stopped
 * process) waits inside UCX, on the endpoint's wireup, holding the write.
 * The write is cancelled and destroyed, then its connector. With peer
 * error handling destroy closes the endpoint by force, UCX cancels the
 * send, and everything is freed. Without, UCX cannot cancel it, and
 * destroying the worker under it is what UCX forbids (over TCP UCX 1.13
 * asserted and aborted the process here; on shared memory the operation,
 * its peer and key leaked): the worker is left behind, with a warning,
 * and destroy returns. 0 when every check held. */
static int stopped_peer_case(bool peer_errors)
{
    static log_count_t logged; /* static: the callback outlives a failed check */
    ferry_connector_params_t params = {
        .field_mask = FERRY_CONNECTOR_PARAM_FIELD_LOG_LEVEL | FERRY_CONNECTOR_PARAM_FIELD_LOG_CB |
                      FERRY_CONNECTOR_PARAM_FIELD_PEER_ERROR_HANDLING,
        .log_level = FERRY_LOGLEVEL_WARN,
        .log_cb = count_log,
        .log_arg = &logged,
        .peer_error_handling = peer_errors};
    ferry_connector_params_t quiet = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_LOG_LEVEL |
                                                    FERRY_CONNECTOR_PARAM_FIELD_LOG_CB,
                                      .log_level = FERRY_LOGLEVEL_OFF};
    fake_passive_t f = {.silent = true, .writer_off = !peer_errors};
    static uint8_t src[BUF_SIZE];
    ferry_descriptor_t local = {src, sizeof(src), FERRY_DEVICE_HOST_INIT};
    unsigned abandoned = ferry__connectors_abandoned();
    ferry_connector_t *c;
    ferry_op_t *op;

    logged = (log_count_t){0};
    fake_open(&f, FERRY__KIND_WRITABLE);
    CHECK(ferry_connector_create(&params, &c) == FERRY_OK);
    CHECK(ferry_write_begin(c, &local, 1, f.md, f.md_len, &op) == FERRY_OK);
    CHECK(ferry_op_cancel(op) == FERRY_OK);
    ferry_op_destroy(op);
    CHECK(pair_live_ops(c) == 1); /* the claim's send holds it */
    CHECK(ferry_connector_destroy(c) == FERRY_OK);
    CHECK(logged.errors == 0);
    CHECK(logged.warns == 1); /* the endpoint forced, or the worker left behind */
    CHECK(ferry__connectors_abandoned() == abandoned + !peer_errors);
    CHECK(f.claims == 0);                                  /* the fake never ran */
    CHECK(ferry_connector_create(&quiet, &c) == FERRY_OK); /* the log level is global */
    CHECK(ferry_connector_destroy(c) == FERRY_OK);
    /* The fake's worker runs now, until idle: over TCP UCX asserts when a
     * worker is destroyed with a wireup message it never got to send. It
     * answers the wireup of the connector destroyed above with an endpoint
     * back, whose shared-memory FIFO is gone: UCX 1.13's mm endpoint then
     * fails its init and leaks the segment hash its attach grew (100 bytes
     * in libuct, uct_mm_ep_t's init returning without kh_destroy), which
     * LeakSanitizer is not told of; what is allocated elsewhere is. */
    LSAN_IGNORE_BEGIN();
    while (ucp_worker_progress(f.worker) != 0) {
    }
    LSAN_IGNORE_END();
    fake_close(&f);
    return 0;
}

static void test_destroy_with_claim_to_stopped_peer_forced(void **state)
{
    (void)state;
    assert_int_equal(stopped_peer_case(true), 0);
}

/* Without peer error handling, in a process of its own: the worker it
 * leaves behind stays allocated on purpose, so LeakSanitizer is told to
 * ignore what UCX's own libraries allocated there (ours is still
 * checked). */
static void test_destroy_with_claim_to_stopped_peer(void **state)
{
    char supp[] = "/tmp/ferry-lsan-XXXXXX", opts[64];
    const char *old = getenv("LSAN_OPTIONS");
    char *saved = old != NULL ? strdup(old) : NULL;
    pair_partner_t child;
    int fd, wstatus;
    FILE *fp;
    (void)state;

    assert_true((fd = mkstemp(supp)) >= 0);
    assert_non_null(fp = fdopen(fd, "w"));
    fputs("leak:libucs.so\nleak:libuct.so\nleak:libucp.so\n", fp);
    assert_int_equal(fclose(fp), 0);
    snprintf(opts, sizeof(opts), "suppressions=%s", supp);
    assert_int_equal(setenv("LSAN_OPTIONS", opts, 1), 0);
    child = pair_spawn("/proc/self/exe", "--stopped-peer");
    if (saved != NULL) {
        assert_int_equal(setenv("LSAN_OPTIONS", saved, 1), 0);
    } else {
        assert_int_equal(unsetenv("LSAN_OPTIONS"), 0);
    }
    free(saved);
    assert_true(child.pid > 0);
    wstatus = pair_reap(child.pid);
    pair_close(&child);
    unlink(supp);
    assert_true(WIFEXITED(wstatus));
    assert_int_equal(WEXITSTATUS(wstatus), 0);
}

/* ---- destroy while a get is in flight ------------------------------- */

#define STALL_LOCAL       0xaa /* what the reader's buffer holds after destroy */
#define STALL_TARGET      0x5c /* what the fake passive side serves */
#define STALL_AFTER_MS    1000 /* how long the fake runs after destroy */
#define DESTROY_BLOCKS_MS 300  /* destroy has not returned this long after */

typedef struct {
    ferry_op_t *op;
    atomic_bool done;
} destroyer_t;

static void *destroyer_main(void *arg)
{
    destroyer_t *d = arg;

    ferry_op_destroy(d->op);
    atomic_store(&d->done, true);
    return NULL;
}

static bool all_bytes(const uint8_t *buf, size_t len, uint8_t value)
{
    for (size_t i = 0; i < len; i++) {
        if (buf[i] != value) {
            return false;
        }
    }
    return true;
}

/* A reader's passive side admits the read and then stops progressing. Over
 * TCP UCX emulates the get with a request the target must answer, so the
 * read cannot finish: the reader's wait times out and it destroys the op,
 * then frees (here: overwrites) its buffer. Once the fake side runs again
 * and answers, its late reply must not land in that buffer: ferry_op_destroy
 * returns only once UCX can no longer write there. With peer_errors, destroy
 * closes the stalled endpoint by force (after FERRY_OP_DESTROY_FLUSH_MS),
 * which ends another operation on it as a transport error and takes it out
 * of the cache; without, UCX cannot, and destroy (on a thread of its own
 * here) waits until the fake side has answered, so the bytes have landed
 * before it returns. Before, destroy returned at once and the reply landed
 * in the freed buffer. */
/* ferry_op_destroy_nowait's released callback: counts its calls. */
static void note_released(void *arg)
{
    atomic_fetch_add((atomic_uint *)arg, 1);
}

static void read_from_stalled_peer(bool peer_errors, ferry_progress_mode_t mode, bool nowait)
{
    ferry_connector_params_t params = {.field_mask =
                                           FERRY_CONNECTOR_PARAM_FIELD_PEER_ERROR_HANDLING |
                                           FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE,
                                       .peer_error_handling = peer_errors,
                                       .progress_mode = mode};
    static uint8_t local[BUF_SIZE];
    ferry_descriptor_t ld = {local, sizeof(local), FERRY_DEVICE_HOST_INIT};
    fake_passive_t f = {.admit_status = FERRY_OK, .writer_off = !peer_errors};
    destroyer_t d = {0};
    const char *tls = getenv("UCX_TLS");
    char *saved_tls = tls != NULL ? strdup(tls) : NULL;
    static uint8_t other[BUF_SIZE];
    ferry_descriptor_t od = {other, sizeof(other), FERRY_DEVICE_HOST_INIT};
    ferry_op_t *second = NULL;
    ferry_connector_stats_t st;
    ferry_connector_t *c;
    pthread_t thread;
    int64_t deadline;
    atomic_uint released = 0;

    assert_int_equal(setenv("UCX_TLS", "tcp", 1), 0); /* the get needs the target */
    fake_open(&f, FERRY__KIND_READABLE);
    memset(f.target, STALL_TARGET, sizeof(f.target));
    memset(local, 0, sizeof(local));
    assert_int_equal(ferry_connector_create(&params, &c), FERRY_OK);
    assert_int_equal(ferry_read_begin(c, &ld, 1, f.md, f.md_len, &d.op), FERRY_OK);

    /* The fake side runs until it has admitted the read and its ADMIT is
     * out, and the reader has posted its get; then it stops. */
    deadline = pair_now_ms() + WAIT_TIMEOUT_MS;
    while ((f.claims == 0 ||
            (UCS_PTR_IS_PTR(f.req) && ucp_request_check_status(f.req) == UCS_INPROGRESS)) &&
           pair_now_ms() < deadline) {
        ucp_worker_progress(f.worker);
        if (mode == FERRY_PROGRESS_CALLER) {
            assert_int_equal(ferry_connector_progress(c), FERRY_OK);
        }
    }
    assert_int_equal(f.claims, 1);
    while (ferry_op_wait(d.op, 1) == FERRY_ERR_TIMED_OUT && !d.op->data_in_flight &&
           pair_now_ms() < deadline) {
    }
    assert_true(d.op->data_in_flight);
    assert_int_equal(ferry_op_wait(d.op, 200), FERRY_ERR_TIMED_OUT);

    if (peer_errors) {
        /* Another read on the same endpoint, its claim unanswered (the
         * fake answers one): the forced close ends it (below). */
        assert_int_equal(ferry_read_begin(c, &od, 1, f.md, f.md_len, &second), FERRY_OK);
        ferry_op_destroy(d.op);
    } else if (nowait) {
        /* Returns at once; the memory is the caller's to keep until
         * released, which comes once the get has settled, not before. */
        ferry_op_destroy_nowait(d.op, note_released, &released);
        deadline = pair_now_ms() + DESTROY_BLOCKS_MS;
        while (atomic_load(&released) == 0 && pair_now_ms() < deadline) {
            poll(NULL, 0, 1);
            if (mode == FERRY_PROGRESS_CALLER) {
                assert_int_equal(ferry_connector_progress(c), FERRY_OK);
            }
        }
        assert_int_equal(atomic_load(&released), 0);
        assert_int_equal(pair_live_ops(c), 1); /* the get's flush holds it */
        deadline = pair_now_ms() + WAIT_TIMEOUT_MS;
        while (atomic_load(&released) == 0 && pair_now_ms() < deadline) {
            ucp_worker_progress(f.worker); /* the fake side answers now */
            if (mode == FERRY_PROGRESS_CALLER) {
                assert_int_equal(ferry_connector_progress(c), FERRY_OK);
            }
        }
        assert_int_equal(atomic_load(&released), 1);
        assert_int_equal(pair_live_ops(c), 0);
        assert_true(all_bytes(local, sizeof(local), STALL_TARGET)); /* landed before */
    } else {
        assert_int_equal(pthread_create(&thread, NULL, destroyer_main, &d), 0);
        /* It does not return while the fake side stays silent. */
        deadline = pair_now_ms() + DESTROY_BLOCKS_MS;
        while (!atomic_load(&d.done) && pair_now_ms() < deadline) {
            poll(NULL, 0, 1);
        }
        assert_false(atomic_load(&d.done));
        deadline = pair_now_ms() + WAIT_TIMEOUT_MS;
        while (!atomic_load(&d.done) && pair_now_ms() < deadline) {
            ucp_worker_progress(f.worker); /* the fake side answers now */
        }
        assert_int_equal(pthread_join(thread, NULL), 0);
        assert_true(all_bytes(local, sizeof(local), STALL_TARGET)); /* landed before */
    }
    memset(local, STALL_LOCAL, sizeof(local)); /* the caller's to reuse or free */
    deadline = pair_now_ms() + STALL_AFTER_MS;
    while (all_bytes(local, sizeof(local), STALL_LOCAL) && pair_now_ms() < deadline) {
        ucp_worker_progress(f.worker); /* a late reply would land now */
        if (mode == FERRY_PROGRESS_CALLER) {
            assert_int_equal(ferry_connector_progress(c), FERRY_OK);
        }
    }
    assert_true(all_bytes(local, sizeof(local), STALL_LOCAL));
    assert_true(atomic_load(&released) == (nowait ? 1 : 0)); /* once */
    if (peer_errors) {
        assert_int_equal(ferry_op_wait(second, WAIT_TIMEOUT_MS), FERRY_ERR_TRANSPORT);
        ferry_op_destroy(second);
        ferry_connector_get_stats(c, &st);
        assert_int_equal(st.peers_cached, 0); /* the forced endpoint left the cache */
    }
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
    fake_close(&f);
    if (saved_tls != NULL) {
        assert_int_equal(setenv("UCX_TLS", saved_tls, 1), 0);
    } else {
        assert_int_equal(unsetenv("UCX_TLS"), 0);
    }
    free(saved_tls);
}

static void test_destroy_read_from_stalled_peer_forced(void **state)
{
    (void)state;
    read_from_stalled_peer(true, FERRY_PROGRESS_THREAD, false);
}

/* The same in caller progress mode: destroy drives the connector itself
 * while it waits, and then closes the endpoint by force. */
static void test_destroy_read_from_stalled_peer_forced_caller(void **state)
{
    (void)state;
    read_from_stalled_peer(true, FERRY_PROGRESS_CALLER, false);
}

static void test_destroy_read_from_stalled_peer_waits(void **state)
{
    (void)state;
    read_from_stalled_peer(false, FERRY_PROGRESS_THREAD, false);
}

/* ferry_op_destroy_nowait, without peer error handling: it returns at
 * once, and tells when the get has settled (the fake side answered, the
 * bytes landed): from then on nothing writes into the memory. Before it,
 * the only destroy blocked until the stalled peer answered, for ever if
 * it never did. */
static void test_destroy_nowait_read_from_stalled_peer(void **state)
{
    (void)state;
    read_from_stalled_peer(false, FERRY_PROGRESS_THREAD, true);
}

/* The same in caller progress mode: released comes from the caller's own
 * ferry_connector_progress. */
static void test_destroy_nowait_read_from_stalled_peer_caller(void **state)
{
    (void)state;
    read_from_stalled_peer(false, FERRY_PROGRESS_CALLER, true);
}

static size_t inbox_len(ferry_connector_t *c)
{
    size_t n;
    ferry__lock(c);
    n = c->inbox_len;
    ferry__unlock(c);
    return n;
}

/* The loop's inbox is bounded: with the loop held off (the lock), the
 * messages a flood would queue stop at FERRY__INBOX_MAX, the rest are
 * dropped and counted, and the loop then handles every one it kept (each a
 * NOTICE for no operation: counted as ignored). Large ones stop at
 * FERRY__INBOX_MAX_BYTES. (Queued through the AM callback's own push.) */
static void test_inbox_bounded(void **state)
{
    ferry__msg_t notice = {.type = FERRY__MSG_NOTICE, .status = FERRY_OK};
    ferry_connector_stats_t st;
    ferry_connector_t *c;
    uint8_t *buf, *big;
    size_t len, big_len = 60 * 1024, kept = 0;
    int64_t deadline;
    (void)state;

    assert_int_equal(ferry_connector_create(NULL, &c), FERRY_OK);
    assert_int_equal(getrandom(notice.key, sizeof(notice.key), 0), (ssize_t)sizeof(notice.key));
    assert_int_equal(ferry__msg_encode(&notice, &buf, &len), FERRY_OK);
    ferry__lock(c);
    for (unsigned i = 0; i < FERRY__INBOX_MAX + 100; i++) {
        kept += ferry__inbox_push(c, NULL, buf, len);
    }
    assert_int_equal(kept, FERRY__INBOX_MAX);
    assert_int_equal(c->inbox_len, FERRY__INBOX_MAX);
    assert_int_equal(c->inbox_dropped, 100);
    ferry__unlock(c);
    deadline = pair_now_ms() + WAIT_TIMEOUT_MS;
    while (inbox_len(c) > 0 && pair_now_ms() < deadline) {
        poll(NULL, 0, 1); /* the loop thread drains it: polling, with a deadline */
    }
    ferry_connector_get_stats(c, &st);
    assert_int_equal(inbox_len(c), 0);
    assert_int_equal(st.notices_ignored, FERRY__INBOX_MAX);

    /* By bytes: 60 KiB messages stop short of 16 MiB. */
    big = calloc(1, big_len);
    assert_non_null(big);
    kept = 0;
    ferry__lock(c);
    for (unsigned i = 0; i < 400; i++) {
        kept += ferry__inbox_push(c, NULL, big, big_len);
    }
    assert_int_equal(kept, FERRY__INBOX_MAX_BYTES / big_len);
    assert_true(c->inbox_bytes <= FERRY__INBOX_MAX_BYTES);
    ferry__unlock(c);
    deadline = pair_now_ms() + WAIT_TIMEOUT_MS;
    while (inbox_len(c) > 0 && pair_now_ms() < deadline) {
        poll(NULL, 0, 1);
    }
    assert_int_equal(inbox_len(c), 0);
    free(big);
    free(buf);
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
}

/* One party cannot take the inbox from the others: the messages counted
 * against one operation (its party's: they carry its key and nonce) stop
 * at FERRY__INBOX_PER_OP, the rest dropped and counted, while a message to
 * another operation, and one to none, still find room; once the loop has
 * handled them the counts are back to zero. Before, one admitted writer
 * could fill all FERRY__INBOX_MAX slots and have every other writer's
 * NOTICE dropped. (Queued through the AM callback's own push, the loop
 * held off: caller progress mode.) */
static void test_inbox_bounded_per_party(void **state)
{
    ferry_connector_params_t caller = {.field_mask = FERRY_CONNECTOR_PARAM_FIELD_PROGRESS_MODE,
                                       .progress_mode = FERRY_PROGRESS_CALLER};
    ferry__msg_t notice = {.type = FERRY__MSG_NOTICE, .status = FERRY_OK};
    static uint8_t mem_a[64], mem_b[64];
    ferry_descriptor_t da = {mem_a, sizeof(mem_a), FERRY_DEVICE_HOST_INIT};
    ferry_descriptor_t db = {mem_b, sizeof(mem_b), FERRY_DEVICE_HOST_INIT};
    const unsigned flood = 1000;
    ferry_connector_stats_t st;
    ferry_connector_t *c;
    ferry_op_t *a, *b;
    uint8_t *buf;
    size_t len, kept = 0;
    int64_t deadline;
    (void)state;

    assert_int_equal(ferry_connector_create(&caller, &c), FERRY_OK);
    assert_int_equal(ferry_writable_create(c, &da, 1, &a), FERRY_OK);
    assert_int_equal(ferry_writable_create(c, &db, 1, &b), FERRY_OK);
    assert_int_equal(getrandom(notice.key, sizeof(notice.key), 0), (ssize_t)sizeof(notice.key));
    assert_int_equal(ferry__msg_encode(&notice, &buf, &len), FERRY_OK);
    ferry__lock(c);
    for (unsigned i = 0; i < flood; i++) {
        kept += ferry__inbox_push(c, a, buf, len);
    }
    assert_int_equal(kept, FERRY__INBOX_PER_OP);
    assert_int_equal(a->inbox_queued, FERRY__INBOX_PER_OP);
    assert_int_equal(c->inbox_dropped, flood - FERRY__INBOX_PER_OP);
    assert_true(ferry__inbox_push(c, b, buf, len));
    assert_true(ferry__inbox_push(c, NULL, buf, len));
    assert_int_equal(c->inbox_len, FERRY__INBOX_PER_OP + 2);
    ferry__unlock(c);
    deadline = pair_now_ms() + WAIT_TIMEOUT_MS;
    while (inbox_len(c) > 0 && pair_now_ms() < deadline) {
        assert_int_equal(ferry_connector_progress(c), FERRY_OK);
    }
    assert_int_equal(inbox_len(c), 0);
    ferry__lock(c);
    assert_int_equal(a->inbox_queued, 0);
    assert_int_equal(b->inbox_queued, 0);
    ferry__unlock(c);
    ferry_connector_get_stats(c, &st);
    assert_int_equal(st.messages_dropped, flood - FERRY__INBOX_PER_OP);
    free(buf);
    ferry_op_destroy(a);
    ferry_op_destroy(b);
    deadline = pair_now_ms() + WAIT_TIMEOUT_MS;
    while (pair_live_ops(c) > 0 && pair_now_ms() < deadline) {
        assert_int_equal(ferry_connector_progress(c), FERRY_OK); /* delivers their ends */
    }
    assert_int_equal(pair_live_ops(c), 0); /* the queued messages' references are gone */
    assert_int_equal(ferry_connector_destroy(c), FERRY_OK);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_forged_notice_ignored),
        cmocka_unit_test(test_stranger_error_notice_ignored),
        cmocka_unit_test(test_garbage_address_claim),
        cmocka_unit_test(test_claim_naming_other_memory_refused),
        cmocka_unit_test(test_claim_with_other_peer_error_handling_refused),
        cmocka_unit_test(test_notice_status_outside_the_table),
        cmocka_unit_test(test_staged_chunks_each_once),
        cmocka_unit_test(test_bogus_claims_bounded),
        cmocka_unit_test(test_unread_refusals_bounded),
        cmocka_unit_test(test_forged_flood_takes_no_inbox_slot),
        cmocka_unit_test(test_peer_cache_lru),
        cmocka_unit_test(test_admit_positive_status_is_protocol_error),
        cmocka_unit_test(test_admit_without_the_claim_nonce_is_ignored),
        cmocka_unit_test(test_admit_status_outside_the_table),
        cmocka_unit_test(test_unanswered_claim_ends),
        cmocka_unit_test(test_destroy_with_claim_to_stopped_peer),
        cmocka_unit_test(test_destroy_with_claim_to_stopped_peer_forced),
        cmocka_unit_test(test_destroy_read_from_stalled_peer_forced),
        cmocka_unit_test(test_destroy_read_from_stalled_peer_forced_caller),
        cmocka_unit_test(test_destroy_read_from_stalled_peer_waits),
        cmocka_unit_test(test_destroy_nowait_read_from_stalled_peer),
        cmocka_unit_test(test_destroy_nowait_read_from_stalled_peer_caller),
        cmocka_unit_test(test_inbox_bounded),
        cmocka_unit_test(test_inbox_bounded_per_party),
    };

    if (argc == 4 && strcmp(argv[1], "--victim") == 0) {
        return victim_main(atoi(argv[2]), atoi(argv[3]));
    }
    if (argc == 4 && strcmp(argv[1], "--stopped-peer") == 0) {
        return stopped_peer_case(false) != 0;
    }
    signal(SIGPIPE, SIG_IGN); /* a dead victim shows as a failed read */
    /* FERRY_TEST_FILTER="test_destroy_*" runs only the matching tests
     * (cmocka's pattern), to repeat one case. */
    if (getenv("FERRY_TEST_FILTER") != NULL) {
        cmocka_set_test_filter(getenv("FERRY_TEST_FILTER"));
    }
    return cmocka_run_group_tests(tests, NULL, NULL);
}
