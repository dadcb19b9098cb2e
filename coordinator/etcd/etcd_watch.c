/*
 * etcd_watch.c: one etcd watch, streamed on its own thread, over etcd's
 * native gRPC API (etcdserverpb.Watch, on the client's KV channels) or,
 * with params.kv_gateway, from the gateway's /v3/watch. Each stream goes
 * through the client's transport (client->kv->watch_stream, etcd_int.h),
 * whose tables name the two stream functions here: they need the watch's
 * fields, which no other file sees.
 *
 * Either way etcd sends the same messages: first {created}, then {events}
 * messages, and {canceled, compact_revision: N} when the start revision has
 * been compacted. The gateway writes one JSON object per line, each under
 * "result"; its transfer runs in a curl multi handle, so
 * etcd_watch_destroy can interrupt a wait at once with curl_multi_wakeup.
 * Over gRPC the request is sent and the client's side closed (etcd keeps
 * the watch until the stream ends), each message is a WatchResponse, and
 * etcd_watch_destroy cancels the stream (`stream`, under `lock`) to end a
 * wait at once. Both become an etcd_watch_msg_t, which one function acts
 * on.
 *
 * Life of the thread:
 *   connect -> created -> events ... -> drop -> wait (100 ms .. 1 s) -> connect
 * A drop (stream ended, connection lost, no "created" within the client
 * timeout) reconnects from the last delivered revision + 1 (or from the
 * created revision + 1 when the watch started "from now" and nothing came
 * yet, or from a progress notification's revision + 1 when that is later),
 * so no event is lost or repeated. A compacted revision ends the
 * thread's work with on_state(false, FERRY_ERR_OUT_OF_RANGE). A
 * reconnect's "created" is taken as connected only once a read at its
 * start revision has shown that etcd still has it (etcd_watch_on_created);
 * that read, on the watch thread, is bounded as any of the client's.
 *
 * The watch asks etcd to fragment: a response over etcd's
 * --max-request-bytes comes in several messages. One revision can be far
 * larger than any one request: a lease that ends deletes every key on it
 * at one revision, and with prev_kv each delete carries its value, so a
 * worker's session lease with 300 records of 1 MiB made one ~300 MB
 * message, over ETCD_REPLY_MAX; the stream failed on it and resumed at
 * the same revision for good. Each fragment's events are delivered as it
 * comes; a stream that ends between fragments resumes at the unfinished
 * revision and skips its events delivered already (part_rev).
 *
 * A hung member (SIGSTOP, a hung disk) keeps the connection open and just
 * says nothing, like an idle store. So the stream asks for progress
 * notifications (progress_notify), and after ETCD_WATCH_QUIET_MS without a
 * byte the thread asks that member for its status (etcd__endpoint_probe):
 * no answer within ETCD_ATTEMPT_MS, or an answer without a leader (a member
 * cut off from its quorum sees no new revisions either), is a dead stream,
 * which reconnects on the next endpoint that is not suspect. etcd sends
 * progress every 10 minutes by default (--experimental-watch-progress-
 * notify-interval), so on an idle store the probe is what runs.
 *
 * Threads: the creating thread waits for the first "created"; afterwards
 * only the watch thread touches the stream fields. `stop` is atomic; `lock`
 * guards the create handshake and `stream` (so that destroy cancels only a
 * stream that exists) and backs the condition variable that the backoff
 * waits on. Callbacks run on the watch thread only, and destroy
 * joins it, so none runs after destroy returns.
 */
#include "coordinator/etcd/etcd_int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"
#include "common/log.h"

enum {
    ETCD_WATCH_BACKOFF_MIN_MS = 100,
    ETCD_WATCH_BACKOFF_MAX_MS = 1000,
    ETCD_WATCH_POLL_MS = 500,
    /* Silence after which the member is probed. Until a hung member is
     * found out, the view it feeds is served as live while it misses every
     * change (a released record answered REGISTERED; a parked wait missing
     * its Register): at most this, a poll, and the probe's ETCD_ATTEMPT_MS.
     * At 3000 that was about 4 s; a probe a second on an idle store costs
     * etcd nothing to speak of. */
    ETCD_WATCH_QUIET_MS = 1000,
    /* A reconnect's start check (etcd_watch_on_created): two endpoints'
     * attempts. */
    ETCD_CHECK_MS = 2 * ETCD_ATTEMPT_MS,
};

/* Test seam (test_etcd_watch; never set in production): above 0, the
 * thread's idle wait and every backoff last this many ms, so that only
 * destroy's wakeup can end them in time. */
extern atomic_int ferry__etcd_watch_test_wait_ms;
atomic_int ferry__etcd_watch_test_wait_ms;

static int etcd_watch_wait_ms(int ms)
{
    int test_ms = atomic_load(&ferry__etcd_watch_test_wait_ms);
    return test_ms > 0 ? test_ms : ms;
}

struct etcd_watch {
    etcd_client_t *client;
    etcd_watch_params_t params; /* key and range_end point into owned copies */
    uint8_t *key;
    uint8_t *range_end;
    pthread_t thread;
    CURLM *multi; /* created before the thread; destroy wakes it */
    atomic_bool stop;

    pthread_mutex_t lock; /* guards create_done, create_status, create_error, stream */
    pthread_cond_t cond;  /* signals create_done and stop */
    bool create_done;
    ferry_status_t create_status;
    char create_error[512];
    rpc_stream_t *stream; /* the gRPC stream being read; NULL between streams */

    /* Watch thread only. */
    CURL *easy;
    etcd_buf_t line;  /* bytes of the line not yet complete */
    int64_t next_rev; /* where a reconnect starts; 0: from now */
    /* A response that came in fragments and ended before its last: its
     * last revision so far, part_rev, may have more events, so a reconnect
     * starts at it (next_rev == part_rev), and of the events etcd sends
     * again from that revision's first, the part_n delivered already are
     * skipped (`skip` counts them down on each new stream): events of one
     * revision always come in the same order (by their sub-revision). */
    int64_t part_rev;
    size_t part_n;
    size_t skip;
    bool created;                 /* the current stream said "created" */
    int64_t heard_ms;             /* CLOCK_MONOTONIC ms of the last byte or probe */
    bool connected;               /* as last told to on_state */
    bool ever_created;            /* some stream was created (create returned) */
    ferry_status_t stream_status; /* why the stream was ended from the inside */
    size_t endpoint;              /* index of the endpoint in use */
};

/* --- helpers ------------------------------------------------------------ */

static struct timespec etcd_deadline(int ms)
{
    return ferry__clock_in_ms(CLOCK_MONOTONIC, ms);
}

static int64_t etcd_now_ms(void)
{
    return ferry__clock_ms(CLOCK_MONOTONIC);
}

/* Every change of `connected` goes through here: it logs and tells the
 * owner. */
static void etcd_watch_set_connected(etcd_watch_t *watch, bool connected, ferry_status_t status)
{
    if (watch->connected == connected && status != FERRY_ERR_OUT_OF_RANGE) {
        return;
    }
    watch->connected = connected;
    ferry_info("etcd: watch %p %s (%s), next revision %" PRId64, (void *)watch,
               connected ? "connected" : "disconnected", ferry_status_name(status),
               watch->next_rev);
    if (watch->params.on_state != NULL) {
        watch->params.on_state(watch->params.arg, connected, status);
    }
}

/* Ends the create handshake (the first stream only). */
static void etcd_watch_created(etcd_watch_t *watch, ferry_status_t status)
{
    if (watch->ever_created) {
        return;
    }
    pthread_mutex_lock(&watch->lock);
    watch->create_done = true;
    watch->create_status = status;
    snprintf(watch->create_error, sizeof(watch->create_error), "%s", etcd_client_last_error());
    pthread_cond_broadcast(&watch->cond);
    pthread_mutex_unlock(&watch->lock);
    watch->ever_created = status == FERRY_OK;
}

/* etcd 3.4 answers a watch from a compacted revision with "created" first
 * and "canceled" right after, so "created" alone does not prove the start
 * revision is still there. A one-key read does. It reads at the revision
 * before the start (the caller's last read, so etcd has reached it): the
 * start itself is in the future when nothing was written since, which etcd
 * refuses as a read (INVALID_ARGUMENT, a request error in the metrics at
 * every watch start) though a watch from it is fine (it waits). Only when
 * the revision before is compacted ("compacted", FERRY_ERR_OUT_OF_RANGE)
 * does the start decide: a compaction at exactly the start leaves it, and
 * the watch, good. A point read of the watch's first key: etcd checks the
 * revision before the key (a range would walk its whole index first). */
static ferry_status_t etcd_watch_check_start(etcd_client_t *client,
                                             const etcd_watch_params_t *params, int64_t start)
{
    if (start <= 1) {
        return FERRY_OK;
    }
    etcd_range_t range;
    ferry_status_t status = FERRY_ERR_OUT_OF_RANGE;
    for (int64_t at = start - 1; status == FERRY_ERR_OUT_OF_RANGE && at <= start; at++) {
        status = etcd_get(client, params->key, params->key_len, NULL, 0, 1, at, &range);
        if (status == FERRY_OK) {
            etcd_range_free(&range);
        }
    }
    if (status == FERRY_ERR_INVALID_ARGUMENT) {
        etcd__clear_error(); /* a future start after all (etcd went back?) */
        return FERRY_OK;
    }
    return status;
}

/* --- one message --------------------------------------------------------- */

static void etcd_watch_events(etcd_watch_t *watch, const etcd_watch_msg_t *msg)
{
    const etcd_event_t *events = msg->events;
    size_t n = msg->n_events;

    if (n == 0) {
        return;
    }
    /* Again from the first of a revision some of whose events were
     * delivered before the last stream ended: those are skipped. */
    while (n > 0 && watch->skip > 0 && events->kv.mod_revision == watch->part_rev) {
        events++;
        n--;
        watch->skip--;
    }
    if (n > 0 || !msg->fragment) {
        watch->skip = 0;
        watch->params.on_events(watch->params.arg, events, n, msg->revision, msg->fragment);
    }
    /* Parsed revisions are below INT64_MAX (etcd_json.c). */
    int64_t last = msg->events[msg->n_events - 1].kv.mod_revision;
    if (!msg->fragment) {
        watch->next_rev = last + 1;
        watch->part_rev = 0;
        watch->part_n = 0;
        watch->skip = 0;
        return;
    }
    size_t of_last = 0; /* delivered now, of revision `last` */
    for (size_t i = n; i > 0 && events[i - 1].kv.mod_revision == last; i--) {
        of_last++;
    }
    watch->part_n = watch->part_rev == last ? watch->part_n + of_last : of_last;
    watch->part_rev = last;
    watch->next_rev = last;
}

/* A canceled watch: compaction (its revision), or the status etcd wrote
 * into the reason (auth, permission, anything else). */
static ferry_status_t etcd_watch_canceled(const etcd_watch_msg_t *msg)
{
    const char *text = msg->cancel_reason;
    etcd__set_error("watch canceled by etcd: %s%s", text,
                    msg->compact_revision > 0 ? "required revision has been compacted" : "");
    if (msg->compact_revision > 0) {
        return FERRY_ERR_OUT_OF_RANGE;
    }
    return etcd__cancel_reason_status(text);
}

/* A reconnect's "created" is not yet "connected": from a compacted
 * revision etcd 3.4 sends "canceled" only up to ~100 ms after it (when it
 * first syncs the new watcher), and the owner told "connected" would serve
 * as live a view that missed the gap's changes until then (audit-s29-etcd2
 * F5). So the start is checked as create checks the first one, but after
 * "created" rather than before the stream: a compaction etcd applied before
 * the check, even one that came while the stream was being opened, fails
 * it. A check that cannot be made ends the stream, as a lost one would.
 * It has ETCD_CHECK_MS, not the client's whole timeout: destroy cannot
 * interrupt it (a call of its own), and a reload or a stop waits for it. */
static ferry_status_t etcd_watch_on_created(etcd_watch_t *watch, int64_t revision)
{
    watch->created = true;
    if (watch->next_rev == 0) {
        watch->next_rev = revision + 1;
    }
    if (!watch->ever_created) {
        /* The first stream is create's result, not a state change; create
         * checked its start. */
        watch->connected = true;
        etcd_watch_created(watch, FERRY_OK);
        return FERRY_OK;
    }
    int64_t caller = etcd_set_deadline(ferry__clock_ms(CLOCK_MONOTONIC) + ETCD_CHECK_MS);
    ferry_status_t status = etcd_watch_check_start(watch->client, &watch->params, watch->next_rev);
    etcd_set_deadline(caller);
    if (status != FERRY_OK) {
        return status == FERRY_ERR_OUT_OF_RANGE ? status : FERRY_ERR_UNAVAILABLE;
    }
    etcd_watch_set_connected(watch, true, FERRY_OK);
    return FERRY_OK;
}

/* Acts on one message of either API. Anything but FERRY_OK ends the
 * stream. */
static ferry_status_t etcd_watch_handle(etcd_watch_t *watch, const etcd_watch_msg_t *msg)
{
    if (msg->canceled) {
        return etcd_watch_canceled(msg);
    }
    if (msg->created) {
        ferry_status_t status = etcd_watch_on_created(watch, msg->revision);
        if (status != FERRY_OK) {
            return status;
        }
    } else if (msg->n_events == 0 && msg->revision >= watch->next_rev) {
        /* Progress: etcd notifies only a watcher it has sent every event
         * up to the header's revision, so a reconnect may start after it.
         * On a prefix nobody writes, in an etcd others write to, the last
         * event's revision would otherwise fall behind compaction, and a
         * mere reconnect would find it compacted and reload the view. */
        watch->next_rev = msg->revision + 1;
        watch->part_rev = 0; /* etcd sent every event up to the revision */
        watch->part_n = 0;
        watch->skip = 0;
        ferry_debug("etcd watch: progress; resumes at revision %" PRId64, watch->next_rev);
    }
    etcd_watch_events(watch, msg);
    return FERRY_OK;
}

/* Handles one line of the stream (parsed by etcd__parse_watch_msg).
 * Anything but FERRY_OK ends the stream. */
static ferry_status_t etcd_watch_message(etcd_watch_t *watch, const cJSON *json)
{
    etcd_watch_msg_t msg;
    const char *error;
    ferry_status_t status = etcd__parse_watch_msg(json, &msg, &error);

    if (status != FERRY_OK) {
        etcd__set_error("watch: %s%s", error != NULL ? "etcd error: " : "",
                        error != NULL ? error : "malformed message from etcd");
        return status;
    }
    status = etcd_watch_handle(watch, &msg);
    etcd__watch_msg_clear(&msg);
    return status;
}

static ferry_status_t etcd_watch_line(etcd_watch_t *watch, const char *line, size_t len)
{
    cJSON *msg = cJSON_ParseWithLength(line, len);
    if (msg == NULL) {
        etcd__set_error("watch: malformed line from etcd");
        return FERRY_ERR_PROTOCOL;
    }
    ferry_status_t status = etcd_watch_message(watch, msg);
    cJSON_Delete(msg);
    return status;
}

/* Handles each complete line that has arrived and keeps the rest. The
 * first `kept` bytes are what an earlier call kept, with no newline: the
 * search starts after them, or a long line, arriving a few KiB a write,
 * would be scanned from its start on each (quadratic). */
static ferry_status_t etcd_watch_lines(etcd_watch_t *watch, size_t kept)
{
    etcd_buf_t *buf = &watch->line;
    size_t done = 0;
    ferry_status_t status = FERRY_OK;
    while (status == FERRY_OK) {
        char *line = buf->data + done;
        size_t from = done == 0 ? kept : 0;
        char *newline = memchr(line + from, '\n', buf->len - done - from);
        if (newline == NULL) {
            break;
        }
        status = etcd_watch_line(watch, line, (size_t)(newline - line));
        done = (size_t)(newline + 1 - buf->data);
    }
    memmove(buf->data, buf->data + done, buf->len - done);
    buf->len -= done;
    if (buf->len == 0 && buf->cap > ((size_t)1 << 20)) {
        /* One large message must not keep its buffer for the watch's life:
         * the next write starts a small one. */
        free(buf->data);
        buf->data = NULL;
        buf->cap = 0;
    }
    return status;
}

static size_t etcd_watch_write(char *data, size_t size, size_t nmemb, void *arg)
{
    etcd_watch_t *watch = arg;
    size_t n = size * nmemb;
    if (atomic_load(&watch->stop) || watch->stream_status != FERRY_OK) {
        return 0;
    }
    etcd_buf_t *line = &watch->line;
    size_t kept = line->len;
    watch->heard_ms = etcd_now_ms();
    watch->stream_status = etcd__buf_append(line, data, n);
    if (watch->stream_status == FERRY_ERR_PROTOCOL) {
        /* Bytes keep the stream alive, so without the bound a member that
         * never ends a line would grow it until malloc failed. The watch
         * thread starts a new stream, as after any other error. */
        etcd__set_error("watch: a line from etcd passed %zu MiB (ETCD_REPLY_MAX)",
                        ETCD_REPLY_MAX >> 20);
        ferry_warn("etcd: %s", etcd_client_last_error());
    }
    if (watch->stream_status != FERRY_OK) {
        return 0;
    }
    watch->stream_status = etcd_watch_lines(watch, kept);
    /* A short count ends the transfer. */
    return watch->stream_status == FERRY_OK && !atomic_load(&watch->stop) ? n : 0;
}

/* --- one stream ----------------------------------------------------------- */

static char *etcd_watch_body(const etcd_watch_t *watch)
{
    cJSON *body = cJSON_CreateObject();
    cJSON *req = cJSON_AddObjectToObject(body, "create_request");
    ferry_status_t status = req != NULL ? FERRY_OK : FERRY_ERR_NO_MEMORY;
    if (status == FERRY_OK) {
        status = etcd__json_add_bytes(req, "key", watch->key, watch->params.key_len);
    }
    if (status == FERRY_OK && watch->range_end != NULL) {
        status =
            etcd__json_add_bytes(req, "range_end", watch->range_end, watch->params.range_end_len);
    }
    if (status == FERRY_OK && watch->next_rev > 0) {
        status = etcd__json_add_int64(req, "start_revision", watch->next_rev);
    }
    if (status == FERRY_OK && watch->params.prev_kv) {
        status = cJSON_AddTrueToObject(req, "prev_kv") != NULL ? FERRY_OK : FERRY_ERR_NO_MEMORY;
    }
    if (status == FERRY_OK) {
        status =
            cJSON_AddTrueToObject(req, "progress_notify") != NULL ? FERRY_OK : FERRY_ERR_NO_MEMORY;
    }
    if (status == FERRY_OK) {
        status = cJSON_AddTrueToObject(req, "fragment") != NULL ? FERRY_OK : FERRY_ERR_NO_MEMORY;
    }
    char *text = status == FERRY_OK ? cJSON_PrintUnformatted(body) : NULL;
    cJSON_Delete(body);
    return text;
}

/* False when the stream has been silent for ETCD_WATCH_QUIET_MS and its
 * member does not answer a status probe with a leader (the probe marks
 * it suspect, so the reconnect goes elsewhere). Other answers (an auth
 * error) say the member is alive. */
static bool etcd_watch_alive(etcd_watch_t *watch)
{
    int64_t quiet = etcd_now_ms() - watch->heard_ms;
    if (quiet < ETCD_WATCH_QUIET_MS) {
        return true;
    }
    if (etcd__endpoint_probe(watch->client, watch->endpoint) == FERRY_ERR_UNAVAILABLE) {
        char cause[512];
        snprintf(cause, sizeof(cause), "%s", etcd_client_last_error());
        etcd__set_error("watch %s: silent for %lld ms and the member does not answer: %s",
                        watch->client->endpoints[watch->endpoint], (long long)quiet, cause);
        ferry_warn("etcd: %s", etcd_client_last_error());
        return false;
    }
    watch->heard_ms = etcd_now_ms();
    return true;
}

/* Drives the transfer until it ends, stop is asked, or "created" does not
 * come in time. Returns the CURLcode of the end (CURLE_OK: etcd closed). */
static CURLcode etcd_watch_drive(etcd_watch_t *watch)
{
    int64_t created_by = etcd_now_ms() + watch->client->timeout_ms;
    CURLcode result = CURLE_OK;
    for (;;) {
        int running = 0;
        curl_multi_perform(watch->multi, &running);
        int left = 0;
        CURLMsg *msg = curl_multi_info_read(watch->multi, &left);
        if (msg != NULL && msg->msg == CURLMSG_DONE) {
            return msg->data.result;
        }
        if (atomic_load(&watch->stop)) {
            return CURLE_ABORTED_BY_CALLBACK;
        }
        if (!watch->created && etcd_now_ms() > created_by) {
            etcd__set_error("watch: no answer from etcd within %d ms", watch->client->timeout_ms);
            return CURLE_OPERATION_TIMEDOUT;
        }
        if (watch->created && !etcd_watch_alive(watch)) {
            return CURLE_OPERATION_TIMEDOUT;
        }
        curl_multi_poll(watch->multi, NULL, 0, etcd_watch_wait_ms(ETCD_WATCH_POLL_MS), NULL);
    }
    return result;
}

static void etcd_watch_setup(etcd_watch_t *watch, char *url, size_t url_size, const char *body,
                             struct curl_slist *headers, char *detail)
{
    curl_easy_reset(watch->easy);
    etcd__curl_common(watch->client, watch->easy);
    etcd__curl_target(watch->client, watch->easy, watch->endpoint, "/v3/watch", url, url_size);
    curl_easy_setopt(watch->easy, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(watch->easy, CURLOPT_COPYPOSTFIELDS, body);
    curl_easy_setopt(watch->easy, CURLOPT_WRITEFUNCTION, etcd_watch_write);
    curl_easy_setopt(watch->easy, CURLOPT_WRITEDATA, watch);
    curl_easy_setopt(watch->easy, CURLOPT_ERRORBUFFER, detail);
    detail[0] = '\0';
}

/* Runs one stream on the current endpoint (etcd__kv_gateway_ops).
 * Returns why it ended. */
ferry_status_t etcd__watch_stream_gateway(etcd_watch_t *watch, const char *token)
{
    char url[512];
    char detail[CURL_ERROR_SIZE];
    char *body = etcd_watch_body(watch);
    struct curl_slist *headers = etcd__headers(token);
    if (body == NULL || headers == NULL) {
        free(body);
        curl_slist_free_all(headers);
        return FERRY_ERR_NO_MEMORY;
    }
    etcd_watch_setup(watch, url, sizeof(url), body, headers, detail);
    free(body);
    watch->created = false;
    watch->skip = watch->part_n; /* resent from part_rev's first event */
    watch->heard_ms = etcd_now_ms();
    watch->stream_status = FERRY_OK;
    watch->line.len = 0;
    CURLMcode added = curl_multi_add_handle(watch->multi, watch->easy);
    if (added != CURLM_OK) {
        /* Not driven, the stream would only time out; say why instead
         * (the watch thread retries after its backoff). */
        curl_easy_setopt(watch->easy, CURLOPT_ERRORBUFFER, NULL);
        curl_slist_free_all(headers);
        etcd__set_error("watch %s: curl_multi_add_handle: %s", url, curl_multi_strerror(added));
        ferry_warn("etcd: %s", etcd_client_last_error());
        return FERRY_ERR_INTERNAL;
    }
    CURLcode code = etcd_watch_drive(watch);
    curl_multi_remove_handle(watch->multi, watch->easy);
    curl_easy_setopt(watch->easy, CURLOPT_ERRORBUFFER, NULL);
    curl_slist_free_all(headers);
    if (watch->stream_status != FERRY_OK) {
        ferry_debug("etcd: watch %p stream ended: %s", (void *)watch, etcd_client_last_error());
        return watch->stream_status;
    }
    if (code != CURLE_OK && code != CURLE_OPERATION_TIMEDOUT) {
        return etcd__transport_error("watch", url, code, detail);
    }
    if (code == CURLE_OK) {
        etcd__set_error("watch %s: etcd closed the stream", url);
    }
    return FERRY_ERR_UNAVAILABLE;
}

/* --- one stream over gRPC ---------------------------------------------------- */

/* Makes `stream` the one destroy cancels; false (and nothing changed) when
 * destroy has begun. NULL: none any more. */
static bool etcd_watch_set_stream(etcd_watch_t *watch, rpc_stream_t *stream)
{
    pthread_mutex_lock(&watch->lock);
    bool ok = stream == NULL || !atomic_load(&watch->stop);
    if (ok) {
        watch->stream = stream;
    }
    pthread_mutex_unlock(&watch->lock);
    return ok;
}

/* One message from the gRPC stream. */
static ferry_status_t etcd_watch_grpc_message(etcd_watch_t *watch,
                                              const Etcdserverpb__WatchResponse *resp)
{
    etcd_watch_msg_t msg;
    ferry_status_t status = etcd__grpc_watch_msg(resp, &msg);
    if (status != FERRY_OK) {
        etcd__set_error("watch: malformed message from etcd");
        return status;
    }
    status = etcd_watch_handle(watch, &msg);
    etcd__watch_msg_clear(&msg);
    return status;
}

/* Reads the stream until it ends, stop is asked, "created" does not come
 * in time or the member falls silent (etcd_watch_drive's rules). Returns
 * why it ended. */
static ferry_status_t etcd_watch_grpc_read(etcd_watch_t *watch, rpc_stream_t *stream,
                                           const char *url)
{
    int64_t created_by = etcd_now_ms() + watch->client->timeout_ms;
    for (;;) {
        ProtobufCMessage *msg = NULL;
        rpc_error_t err = {0};
        ferry_status_t status =
            rpc_stream_read(stream, etcd_watch_wait_ms(ETCD_WATCH_POLL_MS), &msg, &err);
        if (atomic_load(&watch->stop)) {
            if (msg != NULL) {
                protobuf_c_message_free_unpacked(msg, NULL);
            }
            return FERRY_ERR_CANCELLED;
        }
        if (status == FERRY_OK && msg != NULL) {
            watch->heard_ms = etcd_now_ms();
            status = etcd_watch_grpc_message(watch, (Etcdserverpb__WatchResponse *)msg);
            protobuf_c_message_free_unpacked(msg, NULL);
            if (status != FERRY_OK) {
                return status;
            }
            continue;
        }
        if (rpc_stream_idle(status, &err)) {
            /* Nothing yet: the stream goes on. */
            if (!watch->created && etcd_now_ms() > created_by) {
                etcd__set_error("watch: no answer from etcd within %d ms",
                                watch->client->timeout_ms);
                return FERRY_ERR_UNAVAILABLE;
            }
            if (watch->created && !etcd_watch_alive(watch)) {
                return FERRY_ERR_UNAVAILABLE;
            }
            continue;
        }
        if (status == FERRY_OK) {
            etcd__set_error("watch %s: etcd closed the stream", url);
            return FERRY_ERR_UNAVAILABLE;
        }
        etcd__set_error("watch %s (gRPC): %s: %s", url, rpc_grpc_code_name(err.grpc_code),
                        err.message);
        if (etcd__grpc_transport_code(err.grpc_code)) {
            return FERRY_ERR_UNAVAILABLE;
        }
        status = etcd__error_status(0, err.grpc_code, err.message);
        return status != FERRY_ERR_OUT_OF_RANGE && status != FERRY_ERR_UNAUTHENTICATED &&
                       status != FERRY_ERR_PERMISSION_DENIED
                   ? FERRY_ERR_UNAVAILABLE
                   : status;
    }
}

/* Runs one stream over gRPC on the current endpoint (etcd__kv_grpc_ops).
 * Returns why it ended. */
ferry_status_t etcd__watch_stream_grpc(etcd_watch_t *watch, const char *token)
{
    etcd_client_t *client = watch->client;
    const char *url = client->endpoints[watch->endpoint];
    rpc_channel_t *channel = client->channels[watch->endpoint];
    Etcdserverpb__WatchCreateRequest create = ETCDSERVERPB__WATCH_CREATE_REQUEST__INIT;
    Etcdserverpb__WatchRequest req = ETCDSERVERPB__WATCH_REQUEST__INIT;
    rpc_md_t md = {.key = "token", .value = token};
    rpc_stream_t *stream = NULL;
    rpc_error_t err = {0};

    create.key = (ProtobufCBinaryData){.len = watch->params.key_len, .data = watch->key};
    if (watch->range_end != NULL) {
        create.range_end =
            (ProtobufCBinaryData){.len = watch->params.range_end_len, .data = watch->range_end};
    }
    create.start_revision = watch->next_rev > 0 ? watch->next_rev : 0;
    create.progress_notify = true;
    create.prev_kv = watch->params.prev_kv;
    create.fragment = true;
    req.request_union_case = ETCDSERVERPB__WATCH_REQUEST__REQUEST_UNION_CREATE_REQUEST;
    req.create_request = &create;
    watch->created = false;
    watch->skip = watch->part_n; /* resent from part_rev's first event */
    watch->heard_ms = etcd_now_ms();

    /* A channel whose last attempt failed would fail the stream at once
     * until gRPC's reconnect backoff (up to minutes) ran out: connect as
     * the key-value calls do (etcd_grpc.c), one fresh attempt. */
    int connect_ms = client->timeout_ms < ETCD_ATTEMPT_MS ? client->timeout_ms : ETCD_ATTEMPT_MS;
    if (rpc_channel_connect(channel, connect_ms, &err) != FERRY_OK) {
        etcd__set_error("watch %s: connect (gRPC): %s", url, err.message);
        etcd__endpoint_suspect(client, watch->endpoint);
        return FERRY_ERR_UNAVAILABLE;
    }
    ferry_status_t status = rpc_stream_open_md(
        channel, "/etcdserverpb.Watch/Watch", &req.base, &md, token != NULL && token[0] != '\0',
        &etcdserverpb__watch_response__descriptor, 0, &stream);
    if (status != FERRY_OK) {
        etcd__set_error("watch %s: cannot open the stream: %s", url, ferry_status_name(status));
        return status;
    }
    if (!etcd_watch_set_stream(watch, stream)) {
        rpc_stream_destroy(stream);
        return FERRY_ERR_CANCELLED;
    }
    status = etcd_watch_grpc_read(watch, stream, url);
    etcd_watch_set_stream(watch, NULL);
    rpc_stream_destroy(stream);
    if (status != FERRY_OK) {
        ferry_debug("etcd: watch %p stream ended: %s", (void *)watch, etcd_client_last_error());
    }
    return status;
}

/* One connection attempt, with a token when auth is on. */
static ferry_status_t etcd_watch_attempt(etcd_watch_t *watch)
{
    char *token = NULL;
    unsigned long gen = 0;
    ferry_status_t status = etcd__auth_token(watch->client, watch->easy, &token, &gen);
    if (status == FERRY_OK) {
        status = watch->client->kv->watch_stream(watch, token);
    }
    free(token);
    if (status == FERRY_ERR_UNAUTHENTICATED) {
        etcd__auth_invalidate(watch->client, gen);
    }
    return status;
}

/* --- the thread ----------------------------------------------------------- */

/* Waits ms or until stop; returns false when stopping. */
static bool etcd_watch_backoff(etcd_watch_t *watch, int ms)
{
    struct timespec deadline = etcd_deadline(etcd_watch_wait_ms(ms));
    pthread_mutex_lock(&watch->lock);
    int rc = 0;
    while (!atomic_load(&watch->stop) && rc == 0) {
        rc = pthread_cond_timedwait(&watch->cond, &watch->lock, &deadline);
    }
    pthread_mutex_unlock(&watch->lock);
    return !atomic_load(&watch->stop);
}

/* Before the first "created": try each endpoint once (and re-authenticate
 * once); the creator gets the status of the last try. */
static ferry_status_t etcd_watch_first(etcd_watch_t *watch)
{
    ferry_status_t status = FERRY_ERR_UNAVAILABLE;
    size_t tries = watch->client->n_endpoints + (watch->client->username != NULL);
    for (size_t i = 0; i < tries && !atomic_load(&watch->stop); i++) {
        status = etcd_watch_attempt(watch);
        if (watch->ever_created ||
            (status != FERRY_ERR_UNAVAILABLE && status != FERRY_ERR_UNAUTHENTICATED)) {
            break;
        }
        watch->endpoint = etcd__endpoint_next(watch->client, watch->endpoint);
    }
    return status;
}

static void *etcd_watch_main(void *arg)
{
    etcd_watch_t *watch = arg;
    ferry_status_t status = etcd_watch_first(watch);
    if (!watch->ever_created) {
        etcd_watch_created(watch, status != FERRY_OK ? status : FERRY_ERR_UNAVAILABLE);
        return NULL;
    }
    int backoff = ETCD_WATCH_BACKOFF_MIN_MS;
    while (!atomic_load(&watch->stop)) {
        if (status == FERRY_ERR_OUT_OF_RANGE) {
            etcd_watch_set_connected(watch, false, FERRY_ERR_OUT_OF_RANGE);
            break;
        }
        etcd_watch_set_connected(watch, false, FERRY_ERR_UNAVAILABLE);
        if (!etcd_watch_backoff(watch, backoff)) {
            break;
        }
        watch->endpoint = etcd__endpoint_next(watch->client, watch->endpoint);
        int64_t started = etcd_now_ms();
        status = etcd_watch_attempt(watch);
        /* Only a stream that lasted starts the backoff over: one that a
         * member (or a proxy) ends as soon as it is created, by a message
         * that does not parse, say, counts as a failed try, or the watch
         * would reconnect every ETCD_WATCH_BACKOFF_MIN_MS for ever. */
        bool lasted = watch->created && etcd_now_ms() - started >= ETCD_WATCH_BACKOFF_MAX_MS;
        backoff = lasted ? ETCD_WATCH_BACKOFF_MIN_MS
                         : (backoff * 2 > ETCD_WATCH_BACKOFF_MAX_MS ? ETCD_WATCH_BACKOFF_MAX_MS
                                                                    : backoff * 2);
    }
    return NULL;
}

/* --- create / destroy ------------------------------------------------------ */

static void etcd_watch_free(etcd_watch_t *watch)
{
    curl_easy_cleanup(watch->easy);
    curl_multi_cleanup(watch->multi);
    pthread_cond_destroy(&watch->cond);
    pthread_mutex_destroy(&watch->lock);
    free(watch->line.data);
    free(watch->key);
    free(watch->range_end);
    free(watch);
}

static uint8_t *etcd_memdup(const void *data, size_t len)
{
    uint8_t *copy = malloc(len > 0 ? len : 1);
    if (copy != NULL && len > 0) {
        memcpy(copy, data, len);
    }
    return copy;
}

static ferry_status_t etcd_watch_alloc(etcd_client_t *client, const etcd_watch_params_t *params,
                                       etcd_watch_t **watch_p)
{
    etcd_watch_t *watch = calloc(1, sizeof(*watch));
    if (watch == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    if (ferry__cond_init_clock(&watch->cond, CLOCK_MONOTONIC) != 0) {
        free(watch);
        return FERRY_ERR_NO_MEMORY;
    }
    if (pthread_mutex_init(&watch->lock, NULL) != 0) {
        pthread_cond_destroy(&watch->cond);
        free(watch);
        return FERRY_ERR_NO_MEMORY;
    }
    watch->client = client;
    watch->params = *params;
    watch->next_rev = params->start_revision;
    watch->endpoint = atomic_load(&client->preferred);
    watch->key = etcd_memdup(params->key, params->key_len);
    watch->range_end =
        params->range_end != NULL ? etcd_memdup(params->range_end, params->range_end_len) : NULL;
    watch->multi = curl_multi_init();
    watch->easy = curl_easy_init();
    if (watch->key == NULL || (params->range_end != NULL && watch->range_end == NULL) ||
        watch->multi == NULL || watch->easy == NULL) {
        etcd_watch_free(watch);
        return FERRY_ERR_NO_MEMORY;
    }
    *watch_p = watch;
    return FERRY_OK;
}

/* Waits for the first stream's "created" (or its failure) with the client
 * timeout plus a margin for the connect attempts. */
static ferry_status_t etcd_watch_wait_created(etcd_watch_t *watch)
{
    int ms = watch->client->timeout_ms * (int)(watch->client->n_endpoints + 1);
    struct timespec deadline = etcd_deadline(ms);
    pthread_mutex_lock(&watch->lock);
    int rc = 0;
    while (!watch->create_done && rc == 0) {
        rc = pthread_cond_timedwait(&watch->cond, &watch->lock, &deadline);
    }
    ferry_status_t status = watch->create_done ? watch->create_status : FERRY_ERR_UNAVAILABLE;
    if (watch->create_done) {
        etcd__set_error("%s", watch->create_error);
    } else {
        etcd__set_error("watch: not created within %d ms", ms);
    }
    pthread_mutex_unlock(&watch->lock);
    return status;
}

ferry_status_t etcd_watch_create(etcd_client_t *client, const etcd_watch_params_t *params,
                                 etcd_watch_t **watch_p)
{
    if (client == NULL || params == NULL || watch_p == NULL || params->key == NULL ||
        params->key_len == 0 || params->on_events == NULL || params->start_revision < 0) {
        return FERRY_ERR_MISUSE;
    }
    etcd__clear_error();
    ferry_status_t status = etcd_watch_check_start(client, params, params->start_revision);
    if (status != FERRY_OK) {
        return status;
    }
    etcd_watch_t *watch;
    status = etcd_watch_alloc(client, params, &watch);
    if (status != FERRY_OK) {
        return status;
    }
    if (pthread_create(&watch->thread, NULL, etcd_watch_main, watch) != 0) {
        etcd_watch_free(watch);
        return FERRY_ERR_RESOURCE_EXHAUSTED;
    }
    status = etcd_watch_wait_created(watch);
    if (status != FERRY_OK) {
        ferry_warn("etcd: watch not created: %s", etcd_client_last_error());
        etcd_watch_destroy(watch);
        return status;
    }
    *watch_p = watch;
    return FERRY_OK;
}

void etcd_watch_destroy(etcd_watch_t *watch)
{
    if (watch == NULL) {
        return;
    }
    pthread_mutex_lock(&watch->lock);
    atomic_store(&watch->stop, true);
    pthread_cond_broadcast(&watch->cond);
    if (watch->stream != NULL) {
        rpc_stream_cancel(watch->stream);
    }
    pthread_mutex_unlock(&watch->lock);
    curl_multi_wakeup(watch->multi);
    pthread_join(watch->thread, NULL);
    etcd_watch_free(watch);
}
