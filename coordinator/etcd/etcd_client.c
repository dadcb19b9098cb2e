/*
 * etcd_client.c: the client object and the one way a request goes out.
 *
 * A request takes an idle CURL easy handle from the pool (or makes one),
 * POSTs to the endpoint that answered last, and on a connection failure
 * tries the others in turn. The handle goes back to the pool with its
 * connections open, so the next request reuses them: no TCP connect per
 * request. A dead pooled connection (etcd restarted) is noticed by libcurl
 * and replaced, so nothing stays broken after etcd comes back.
 *
 * Only failures that prove the request never reached etcd (connect refused
 * or timed out, name not resolved, TLS handshake failed) move on to the next
 * endpoint; a timeout after sending could mean the write happened, so it
 * ends the request with FERRY_ERR_UNAVAILABLE.
 *
 * Faults. A frozen member (SIGSTOP, a hung disk) still accepts connections
 * and requests, so a request to it only ever times out. These keep one
 * such member from stalling every request:
 *   - An endpoint that failed (transport error, no answer in time, or "no
 *     leader" from a status) is suspect for ETCD_SUSPECT_MS: requests try
 *     it after every other endpoint, and `preferred` moves off it at once.
 *     So after a write times out (it fails: it may have been applied), the
 *     next request, a lease revoke included, goes to another member. Not
 *     for an attempt that its caller's deadline cut to under
 *     ETCD_ATTEMPT_MS (etcd__ran_out): that timeout is the caller's.
 *   - A request that is safe to send twice (ETCD_CALL_RETRY: reads, status,
 *     keep-alive, revoke, time-to-live, a grant with its ID) gives each
 *     endpoint ETCD_ATTEMPT_MS to answer and then tries the next, within
 *     the whole timeout.
 *   - A member that answers UNAVAILABLE (no leader, a request timed out,
 *     etcd's own "context deadline exceeded") is suspect as one that did
 *     not answer, whatever the request.
 * The health ping (etcd_ping) asks for status with a leader and then does a
 * linearizable read, which only a member in a quorum can serve: a cluster
 * that lost quorum fails the ping although its members still answer.
 *
 * Threads: any. The pool has its own mutex; endpoints and settings (the
 * transport `kv` among them) are read-only after create; `preferred` and
 * `n_connects` are atomics. The last error, etcd__ran_out and the deadline
 * (etcd_set_deadline) are thread-local.
 */
#include "coordinator/etcd/etcd_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>

#include <openssl/asn1.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include "common/clock.h"
#include "common/log.h"

enum {
    ETCD_DEFAULT_TIMEOUT_MS = 5000,
    ETCD_MAX_CONNECT_MS = 2000, /* loopback and LAN connect far faster */
    ETCD_POOL_MAX = 32,         /* idle handles kept; extra ones are closed */
};

static _Thread_local char etcd_last_error[512];
static _Thread_local int64_t etcd_deadline_ms; /* etcd_set_deadline's; 0: none */
_Thread_local bool etcd__ran_out;
_Thread_local bool etcd__too_large;
/* Health pings that may list the members, until one does (etcd_ping). */
#define ETCD_MEMBER_CHECKS 5

static int64_t etcd_now_ms(void);
static pthread_once_t etcd_curl_once = PTHREAD_ONCE_INIT;
static CURLcode etcd_curl_init_code;

static void etcd_curl_global_init(void)
{
    etcd_curl_init_code = curl_global_init(CURL_GLOBAL_DEFAULT);
}

const char *etcd_client_last_error(void)
{
    return etcd_last_error;
}

int64_t etcd_set_deadline(int64_t deadline_ms)
{
    int64_t prev = etcd_deadline_ms;

    etcd_deadline_ms = deadline_ms;
    return prev;
}

int64_t etcd_get_deadline(void)
{
    return etcd_deadline_ms;
}

bool etcd_cond_wait(pthread_cond_t *cond, pthread_mutex_t *lock)
{
    if (etcd_deadline_ms == 0) {
        pthread_cond_wait(cond, lock);
        return true;
    }
    int64_t left = etcd_deadline_ms - etcd_now_ms();
    if (left <= 0) {
        return false;
    }
    struct timespec until = ferry__clock_in_ms(CLOCK_MONOTONIC, left);
    pthread_cond_timedwait(cond, lock, &until);
    return true;
}

int64_t etcd__budget_ms(int64_t budget_ms, bool *cut_p)
{
    int64_t left = etcd_deadline_ms != 0 ? etcd_deadline_ms - etcd_now_ms() : INT64_MAX;

    *cut_p = left < budget_ms;
    return *cut_p ? left : budget_ms;
}

/* `t` as "2026-12-06 01:00:04 UTC" into buf; false if it cannot be read. */
static bool asn1_time_text(const ASN1_TIME *t, char *buf, size_t cap)
{
    struct tm tm;

    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1) {
        return false;
    }
    return strftime(buf, cap, "%Y-%m-%d %H:%M:%S UTC", &tm) > 0;
}

bool etcd_client_check_cert(etcd_client_t *client)
{
    FILE *f = client->cert_file != NULL ? fopen(client->cert_file, "r") : NULL;
    X509 *cert = f != NULL ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    const ASN1_TIME *not_after = cert != NULL ? X509_get0_notAfter(cert) : NULL;
    const ASN1_TIME *not_before = cert != NULL ? X509_get0_notBefore(cert) : NULL;
    char when[64];
    bool warned = false;

    if (f != NULL) {
        fclose(f);
    }
    if (not_after != NULL && X509_cmp_current_time(not_after) < 0 &&
        asn1_time_text(not_after, when, sizeof(when))) {
        ferry_warn(
            "etcd: the client certificate %s (--etcd-cert) expired at %s, and etcd "
            "refuses it; a renewed one at that path is read within FERRY_TLS_REFRESH_S (60 s)",
            client->cert_file, when);
        warned = true;
    } else if (not_before != NULL && X509_cmp_current_time(not_before) > 0 &&
               asn1_time_text(not_before, when, sizeof(when))) {
        ferry_warn("etcd: the client certificate %s (--etcd-cert) is not valid until %s "
                   "(is this host's clock right?), and etcd refuses it",
                   client->cert_file, when);
        warned = true;
    }
    X509_free(cert);
    return warned;
}

void etcd__set_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(etcd_last_error, sizeof(etcd_last_error), fmt, ap);
    va_end(ap);
}

/* While etcd is down every request made for a client fails: a warning
 * each flooded the log (about 40 lines a second at 270 calls a second, the
 * soak of audit-s26). One a period, the others at debug and counted in it. */
void etcd__warn_unavailable(void)
{
    static ferry_log_limit_t limit;
    unsigned quiet;

    if (!ferry_log_due(&limit, &quiet)) {
        ferry_debug("etcd: unavailable: %s", etcd_last_error);
        return;
    }
    if (quiet > 0) {
        ferry_warn("etcd: unavailable: %s (and %u more failed so since the last such line, "
                   "logged at debug)",
                   etcd_last_error, quiet);
    } else {
        ferry_warn("etcd: unavailable: %s", etcd_last_error);
    }
}

bool etcd__tries_end(ferry_status_t status, bool cut, bool etcds)
{
    char was[sizeof(etcd_last_error)];

    if (status != FERRY_ERR_UNAVAILABLE) {
        etcd__ran_out = false;
        return false;
    }
    if (cut) {
        snprintf(was, sizeof(was), "%s", etcd_last_error);
        etcd__set_error("%s (the time left before the caller's deadline)", was);
    }
    etcd__ran_out = etcd__ran_out && !etcds;
    if (etcd__ran_out) {
        ferry_debug("etcd: no answer in the caller's time: %s", etcd_last_error);
    }
    return !etcd__ran_out;
}

void etcd__clear_error(void)
{
    etcd_last_error[0] = '\0';
    etcd__ran_out = false;
    etcd__too_large = false;
    etcd__no_space = false;
}

void etcd__set_too_large(const char *url)
{
    etcd__set_error("%s: etcd's reply passed %zu MiB (ETCD_REPLY_MAX); if it is a page of "
                    "large records, a smaller --etcd-load-page reads fewer at a time",
                    url, ETCD_REPLY_MAX >> 20);
    etcd__too_large = true;
}

bool etcd_reply_too_large(void)
{
    return etcd__too_large;
}

bool etcd_no_space(void)
{
    return etcd__no_space;
}

long etcd__client_connects(etcd_client_t *client)
{
    return atomic_load(&client->n_connects);
}

/* --- create / destroy ---------------------------------------------------- */

static char *etcd_strdup_or_null(const char *text)
{
    return text != NULL ? strdup(text) : NULL;
}

/* One endpoint of the comma-separated list, trimmed of spaces and a
 * trailing '/': http://, https://, or unix:// and a socket's absolute path
 * that fits a sockaddr_un and has no '%', '?' or '#' (gRPC decodes the
 * first and ends the path at the others, libcurl takes them as they are:
 * the two APIs would reach different files). */
void etcd_endpoint_trim(const char **start_p, size_t *len_p)
{
    const char *start = *start_p;
    size_t len = *len_p;

    while (len > 0 && (*start == ' ' || *start == '\t')) {
        start++;
        len--;
    }
    while (len > 0 && (start[len - 1] == ' ' || start[len - 1] == '\t' || start[len - 1] == '/')) {
        len--;
    }
    *start_p = start;
    *len_p = len;
}

static char *etcd_endpoint_dup(const char *start, size_t len)
{
    etcd_endpoint_trim(&start, &len);
    if (len > ETCD_UNIX_PREFIX_LEN && strncmp(start, ETCD_UNIX_PREFIX, ETCD_UNIX_PREFIX_LEN) == 0) {
        size_t path_len = len - ETCD_UNIX_PREFIX_LEN;
        if (start[ETCD_UNIX_PREFIX_LEN] != '/' ||
            path_len >= sizeof(((struct sockaddr_un *)NULL)->sun_path) ||
            strcspn(start + ETCD_UNIX_PREFIX_LEN, "%?#") < path_len) {
            return NULL;
        }
    } else if (len == 0 ||
               (strncmp(start, "http://", 7) != 0 && strncmp(start, "https://", 8) != 0)) {
        return NULL;
    }
    return strndup(start, len);
}

static ferry_status_t etcd_split_endpoints(etcd_client_t *client, const char *list)
{
    size_t n = 1;
    for (const char *p = list; *p != '\0'; p++) {
        n += *p == ',';
    }
    client->endpoints = calloc(n, sizeof(char *));
    if (client->endpoints == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    const char *start = list;
    for (size_t i = 0; i < n; i++) {
        const char *comma = strchr(start, ',');
        size_t len = comma != NULL ? (size_t)(comma - start) : strlen(start);
        client->endpoints[i] = etcd_endpoint_dup(start, len);
        if (client->endpoints[i] == NULL) {
            ferry_error("etcd: bad endpoint '%.*s' in '%s' (http://HOST:PORT, https://HOST:PORT "
                        "or unix:///ABSOLUTE/PATH of fewer than %zu bytes, without %%, ? or #)",
                        (int)len, start, list, sizeof(((struct sockaddr_un *)NULL)->sun_path));
            return FERRY_ERR_INVALID_ARGUMENT;
        }
        client->n_endpoints++;
        start = comma != NULL ? comma + 1 : start;
    }
    return FERRY_OK;
}

static ferry_status_t etcd_copy_params(etcd_client_t *client, const etcd_params_t *params)
{
    client->timeout_ms = params->timeout_ms > 0 ? params->timeout_ms : ETCD_DEFAULT_TIMEOUT_MS;
    client->keepalive_ms = params->keepalive_ms;
    client->tls_refresh_s = params->tls_refresh_s;
    if (params->observer != NULL) {
        client->observer = *params->observer;
    }
    client->ca_file = etcd_strdup_or_null(params->ca_file);
    client->cert_file = etcd_strdup_or_null(params->cert_file);
    client->key_file = etcd_strdup_or_null(params->key_file);
    client->username = etcd_strdup_or_null(params->username);
    client->password = etcd_strdup_or_null(params->password != NULL ? params->password : "");
    client->health_key = etcd_strdup_or_null(params->health_key);
    if ((params->health_key != NULL && client->health_key == NULL) ||
        (params->ca_file != NULL && client->ca_file == NULL) ||
        (params->cert_file != NULL && client->cert_file == NULL) ||
        (params->key_file != NULL && client->key_file == NULL) ||
        (params->username != NULL && client->username == NULL) || client->password == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    return etcd_split_endpoints(client, params->endpoints);
}

ferry_status_t etcd_client_create(const etcd_params_t *params, etcd_client_t **client_p)
{
    if (params == NULL || params->endpoints == NULL || client_p == NULL) {
        return FERRY_ERR_MISUSE;
    }
    pthread_once(&etcd_curl_once, etcd_curl_global_init);
    if (etcd_curl_init_code != CURLE_OK) {
        ferry_error("etcd: curl_global_init failed: %s", curl_easy_strerror(etcd_curl_init_code));
        return FERRY_ERR_INTERNAL;
    }
    etcd_client_t *client = calloc(1, sizeof(*client));
    if (client == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    if (pthread_mutex_init(&client->pool_lock, NULL) != 0) {
        free(client);
        return FERRY_ERR_NO_MEMORY;
    }
    if (pthread_mutex_init(&client->auth_lock, NULL) != 0) {
        pthread_mutex_destroy(&client->pool_lock);
        free(client);
        return FERRY_ERR_NO_MEMORY;
    }
    if (ferry__cond_init_clock(&client->auth_cond, CLOCK_MONOTONIC) != 0) {
        pthread_mutex_destroy(&client->auth_lock);
        pthread_mutex_destroy(&client->pool_lock);
        free(client);
        return FERRY_ERR_NO_MEMORY;
    }
    ferry_status_t status = etcd_copy_params(client, params);
    if (status != FERRY_OK) {
        goto err_client;
    }
    client->pool = calloc(ETCD_POOL_MAX, sizeof(CURL *));
    client->suspect_until = calloc(client->n_endpoints, sizeof(*client->suspect_until));
    if (client->pool == NULL || client->suspect_until == NULL) {
        status = FERRY_ERR_NO_MEMORY;
        goto err_client;
    }
    /* Picked before open, so that destroy's close undoes an open that
     * failed halfway. */
    client->check_version = params->check_version;
    atomic_init(&client->member_checks_left, ETCD_MEMBER_CHECKS);
    client->kv = params->kv_gateway ? &etcd__kv_gateway_ops : &etcd__kv_grpc_ops;
    status = client->kv->open(client);
    if (status != FERRY_OK) {
        goto err_client;
    }
    ferry_debug("etcd: client for %s (%zu endpoints, timeout %d ms, KV and watches over %s)",
                params->endpoints, client->n_endpoints, client->timeout_ms, client->kv->name);
    *client_p = client;
    return FERRY_OK;

err_client:
    etcd_client_destroy(client);
    return status;
}

void etcd_client_destroy(etcd_client_t *client)
{
    if (client == NULL) {
        return;
    }
    for (size_t i = 0; i < client->n_pool; i++) {
        curl_easy_cleanup(client->pool[i]);
    }
    free(client->pool);
    if (client->kv != NULL) { /* NULL: create failed before picking one */
        client->kv->close(client);
    }
    free(client->suspect_until);
    for (size_t i = 0; i < client->n_endpoints; i++) {
        free(client->endpoints[i]);
    }
    free(client->endpoints);
    free(client->ca_file);
    free(client->cert_file);
    free(client->key_file);
    free(client->username);
    free(client->password);
    free(client->health_key);
    free(client->token);
    pthread_mutex_destroy(&client->pool_lock);
    pthread_cond_destroy(&client->auth_cond);
    pthread_mutex_destroy(&client->auth_lock);
    free(client);
}

/* --- the handle pool --------------------------------------------------- */

CURL *etcd__pool_get(etcd_client_t *client)
{
    CURL *handle = NULL;
    pthread_mutex_lock(&client->pool_lock);
    if (client->n_pool > 0) {
        handle = client->pool[--client->n_pool];
    }
    pthread_mutex_unlock(&client->pool_lock);
    return handle != NULL ? handle : curl_easy_init();
}

void etcd__pool_put(etcd_client_t *client, CURL *handle)
{
    pthread_mutex_lock(&client->pool_lock);
    if (client->n_pool < ETCD_POOL_MAX) {
        client->pool[client->n_pool++] = handle;
        handle = NULL;
    }
    pthread_mutex_unlock(&client->pool_lock);
    if (handle != NULL) {
        curl_easy_cleanup(handle);
    }
}

/* --- endpoint health ------------------------------------------------------ */

static int64_t etcd_now_ms(void)
{
    return ferry__clock_ms(CLOCK_MONOTONIC);
}

static bool etcd_is_suspect(etcd_client_t *client, size_t index, int64_t now)
{
    return atomic_load(&client->suspect_until[index]) > now;
}

bool etcd_suspects_a_member(etcd_client_t *client)
{
    int64_t now = etcd_now_ms();
    bool suspect = false, trusted = false;

    for (size_t i = 0; client != NULL && i < client->n_endpoints; i++) {
        if (etcd_is_suspect(client, i, now)) {
            suspect = true;
        } else {
            trusted = true;
        }
    }
    return suspect && trusted;
}

size_t etcd__endpoint_next(etcd_client_t *client, size_t index)
{
    int64_t now = etcd_now_ms();
    size_t preferred = atomic_load(&client->preferred);
    if (preferred != index && !etcd_is_suspect(client, preferred, now)) {
        return preferred;
    }
    for (size_t i = 1; i < client->n_endpoints; i++) {
        size_t next = (index + i) % client->n_endpoints;
        if (!etcd_is_suspect(client, next, now)) {
            return next;
        }
    }
    return (index + 1) % client->n_endpoints;
}

/* The endpoint failed: try it last for a while, and prefer another. */
void etcd__endpoint_suspect(etcd_client_t *client, size_t index)
{
    int64_t now = etcd_now_ms();
    int64_t before = atomic_exchange(&client->suspect_until[index], now + ETCD_SUSPECT_MS);
    if (before <= now && client->n_endpoints > 1) {
        ferry_warn("etcd: %s is suspect, trying other endpoints first: %s",
                   client->endpoints[index], etcd_last_error);
    }
    size_t expected = index;
    atomic_compare_exchange_strong(&client->preferred, &expected,
                                   etcd__endpoint_next(client, index));
}

void etcd__endpoint_answered(etcd_client_t *client, size_t index)
{
    atomic_store(&client->suspect_until[index], 0);
    atomic_store(&client->preferred, index);
}

/* The order in which a request tries the endpoints: the preferred one,
 * then the others in list order, suspect ones after all the rest. */
void etcd__endpoint_order(etcd_client_t *client, size_t *order)
{
    int64_t now = etcd_now_ms();
    size_t first = atomic_load(&client->preferred);
    size_t n = 0;
    for (int suspect = 0; suspect <= 1; suspect++) {
        for (size_t i = 0; i < client->n_endpoints; i++) {
            size_t index = (first + i) % client->n_endpoints;
            if (etcd_is_suspect(client, index, now) == (suspect != 0)) {
                order[n++] = index;
            }
        }
    }
}

/* --- one POST ------------------------------------------------------------- */

const char *etcd__unix_path(const char *endpoint)
{
    return strncmp(endpoint, ETCD_UNIX_PREFIX, ETCD_UNIX_PREFIX_LEN) == 0
               ? endpoint + ETCD_UNIX_PREFIX_LEN
               : NULL;
}

void etcd__curl_target(etcd_client_t *client, CURL *handle, size_t index, const char *path,
                       char *shown, size_t size)
{
    const char *endpoint = client->endpoints[index];
    const char *socket_path = etcd__unix_path(endpoint);

    snprintf(shown, size, "%s%s", endpoint, path);
    if (socket_path != NULL) {
        char url[512];
        /* Without the socket (a libcurl built without unix sockets, no
         * memory), http://localhost would go to TCP port 80, with the
         * token: a URL no handle may fetch fails the request instead. */
        bool unix_ok = curl_easy_setopt(handle, CURLOPT_UNIX_SOCKET_PATH, socket_path) == CURLE_OK;
        snprintf(url, sizeof(url), "%s://localhost%s", unix_ok ? "http" : "no-unix-socket", path);
        curl_easy_setopt(handle, CURLOPT_URL, url); /* curl copies it */
    } else {
        curl_easy_setopt(handle, CURLOPT_URL, shown);
    }
}

void etcd__curl_common(etcd_client_t *client, CURL *handle)
{
    long connect_ms =
        client->timeout_ms < ETCD_MAX_CONNECT_MS ? client->timeout_ms : ETCD_MAX_CONNECT_MS;
    curl_easy_setopt(handle, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(handle, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
    curl_easy_setopt(handle, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(handle, CURLOPT_TCP_KEEPIDLE, 5L);
    curl_easy_setopt(handle, CURLOPT_TCP_KEEPINTVL, 2L);
    curl_easy_setopt(handle, CURLOPT_PROTOCOLS_STR, "http,https");
    if (client->ca_file != NULL) {
        curl_easy_setopt(handle, CURLOPT_CAINFO, client->ca_file);
    }
    if (client->cert_file != NULL) {
        curl_easy_setopt(handle, CURLOPT_SSLCERT, client->cert_file);
    }
    if (client->key_file != NULL) {
        curl_easy_setopt(handle, CURLOPT_SSLKEY, client->key_file);
    }
}

struct curl_slist *etcd__headers(const char *token)
{
    struct curl_slist *headers = curl_slist_append(NULL, "Content-Type: application/json");
    struct curl_slist *more = headers != NULL ? curl_slist_append(headers, "Expect:") : NULL;
    if (more != NULL && token != NULL && token[0] != '\0') {
        char line[1024];
        snprintf(line, sizeof(line), "Authorization: %s", token);
        more = curl_slist_append(more, line);
    }
    if (more == NULL) {
        curl_slist_free_all(headers);
    }
    return more;
}

ferry_status_t etcd__buf_append(etcd_buf_t *buf, const char *data, size_t n)
{
    if (n > ETCD_REPLY_MAX - buf->len) {
        buf->too_large = true;
        return FERRY_ERR_PROTOCOL;
    }
    if (buf->len + n + 1 > buf->cap) {
        size_t cap = buf->cap > 0 ? buf->cap : 4096;
        while (cap < buf->len + n + 1) {
            cap *= 2;
        }
        char *grown = realloc(buf->data, cap);
        if (grown == NULL) {
            return FERRY_ERR_NO_MEMORY;
        }
        buf->data = grown;
        buf->cap = cap;
    }
    memcpy(buf->data + buf->len, data, n);
    buf->len += n;
    buf->data[buf->len] = '\0';
    return FERRY_OK;
}

static size_t etcd_buf_write(char *data, size_t size, size_t nmemb, void *arg)
{
    size_t n = size * nmemb;

    /* A short count ends the transfer with CURLE_WRITE_ERROR. */
    return etcd__buf_append(arg, data, n) == FERRY_OK ? n : 0;
}

/* A request body that libcurl reads once and cannot rewind. */
typedef struct {
    const char *data;
    size_t len, off;
} etcd_body_t;

static size_t etcd_body_read(char *dest, size_t size, size_t nmemb, void *arg)
{
    etcd_body_t *body = arg;
    size_t n = body->len - body->off;
    if (n > size * nmemb) {
        n = size * nmemb;
    }
    memcpy(dest, body->data + body->off, n);
    body->off += n;
    return n;
}

static int etcd_body_seek(void *arg, curl_off_t offset, int origin)
{
    etcd_body_t *body = arg;
    /* Sent already: never again (the request may have been applied). */
    if (body->off > 0 || offset != 0 || origin != SEEK_SET) {
        return CURL_SEEKFUNC_FAIL;
    }
    return CURL_SEEKFUNC_OK;
}

/* POSTs body to `path` on the endpoint at `index`; url (url_size) gets
 * the endpoint and path, for messages. The handle keeps its connections
 * across reset. detail (CURL_ERROR_SIZE) is always set: "" when curl said
 * nothing more. Unless `resend`, libcurl may not send it twice: on a reused
 * connection that dies without an answer it would send the request again
 * on a new one, to the same URL, which behind a Service or a DNS name
 * reaches another member and applies a write a second time (the first
 * member may have committed it). The body is then read through a callback
 * that cannot rewind, and such a request fails instead
 * (CURLE_SEND_FAIL_REWIND). */
static CURLcode etcd_post(etcd_client_t *client, CURL *handle, size_t index, const char *path,
                          char *url, size_t url_size, const char *body_text, bool resend,
                          const char *token, long timeout_ms, etcd_buf_t *out, long *http_p,
                          char *detail)
{
    etcd_body_t body = {.data = body_text, .len = strlen(body_text)};

    detail[0] = '\0';
    curl_easy_reset(handle);
    etcd__curl_common(client, handle);
    etcd__curl_target(client, handle, index, path, url, url_size);
    struct curl_slist *headers = etcd__headers(token);
    if (headers == NULL) {
        return CURLE_OUT_OF_MEMORY;
    }
    curl_easy_setopt(handle, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(handle, CURLOPT_HTTPHEADER, headers);
    if (resend) {
        curl_easy_setopt(handle, CURLOPT_POSTFIELDS, body_text);
    } else {
        curl_easy_setopt(handle, CURLOPT_POST, 1L);
        curl_easy_setopt(handle, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body.len);
        curl_easy_setopt(handle, CURLOPT_READFUNCTION, etcd_body_read);
        curl_easy_setopt(handle, CURLOPT_READDATA, &body);
        curl_easy_setopt(handle, CURLOPT_SEEKFUNCTION, etcd_body_seek);
        curl_easy_setopt(handle, CURLOPT_SEEKDATA, &body);
    }
    curl_easy_setopt(handle, CURLOPT_WRITEFUNCTION, etcd_buf_write);
    curl_easy_setopt(handle, CURLOPT_WRITEDATA, out);
    curl_easy_setopt(handle, CURLOPT_ERRORBUFFER, detail);
    detail[0] = '\0';
    out->len = 0;
    CURLcode code = curl_easy_perform(handle);
    long connects = 0;
    curl_easy_getinfo(handle, CURLINFO_NUM_CONNECTS, &connects);
    atomic_fetch_add(&client->n_connects, connects);
    curl_easy_getinfo(handle, CURLINFO_RESPONSE_CODE, http_p);
    curl_easy_setopt(handle, CURLOPT_ERRORBUFFER, NULL);
    curl_slist_free_all(headers);
    return code;
}

/* True when the failure proves the request never reached the endpoint,
 * so trying the next one cannot apply a write twice. The code alone does
 * not prove it: on a reused connection that dies without an answer (the
 * member died with the request in hand, maybe after forwarding it to the
 * leader) libcurl tries to send the request again on a new connection
 * (which etcd_post lets it do only for requests safe to send twice), and
 * that one's "connect refused" is the code we see. CURLINFO_REQUEST_SIZE
 * counts the request bytes written over both tries. */
static bool etcd_never_sent(CURL *handle, CURLcode code)
{
    long sent = 0;
    switch (code) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_OPERATION_TIMEDOUT:
        curl_easy_getinfo(handle, CURLINFO_REQUEST_SIZE, &sent);
        return sent == 0;
    default:
        return false;
    }
}

ferry_status_t etcd__transport_error(const char *what, const char *url, CURLcode code,
                                     const char *detail)
{
    if (code == CURLE_COULDNT_CONNECT &&
        strncmp(url, ETCD_UNIX_PREFIX, ETCD_UNIX_PREFIX_LEN) == 0) {
        /* libcurl says "Failed to connect to localhost port 80", which
         * reads as TCP: the request never left for any port. */
        detail = "cannot connect to the socket (none there, or nothing listens on it)";
    }
    etcd__set_error("%s %s: %s", what, url,
                    detail != NULL && detail[0] != '\0' ? detail : curl_easy_strerror(code));
    ferry_debug("etcd: %s", etcd_last_error);
    return FERRY_ERR_UNAVAILABLE;
}

/* Turns a reply body into JSON or into the status of etcd's error. */
static ferry_status_t etcd_reply_status(const char *url, long http, const etcd_buf_t *buf,
                                        cJSON **reply_p)
{
    cJSON *reply = buf->data != NULL ? cJSON_ParseWithLength(buf->data, buf->len) : NULL;
    /* Unary errors are {"error": text, "message", "code"}; errors of the
     * stream endpoints (keepalive) nest {"grpc_code", "message"} in "error". */
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(reply, "error");
    const cJSON *source = cJSON_IsObject(error) ? error : reply;
    const cJSON *message = cJSON_GetObjectItemCaseSensitive(source, "message");
    const char *text = cJSON_IsString(message) ? message->valuestring : NULL;
    int64_t code = 0;
    if (http == 200 && cJSON_IsObject(reply) && error == NULL) {
        *reply_p = reply;
        return FERRY_OK;
    }
    etcd__json_int64(source, cJSON_IsObject(error) ? "grpc_code" : "code", &code);
    ferry_status_t status = etcd__error_status(http, (int)code, text);
    etcd__set_error("%s: http %ld, code %d: %s", url, http, (int)code,
                    text != NULL ? text : "malformed reply");
    ferry_debug("etcd: %s", etcd_last_error);
    cJSON_Delete(reply);
    return status;
}

/* True when a status reply says the member knows a leader: etcd 3.4
 * answers status without one, with no leader (or "0") and "etcdserver: no
 * leader" in errors. */
static bool etcd_has_leader(const cJSON *reply)
{
    /* A member ID is a uint64 (often above INT64_MAX): compare the text. */
    const cJSON *leader = cJSON_GetObjectItemCaseSensitive(reply, "leader");
    const cJSON *errors = cJSON_GetObjectItemCaseSensitive(reply, "errors");
    return cJSON_IsString(leader) && leader->valuestring[0] != '\0' &&
           strcmp(leader->valuestring, "0") != 0 &&
           (errors == NULL || cJSON_GetArraySize(errors) == 0);
}

/* One POST to the endpoint at `index` within timeout_ms. *next_p says
 * whether the request may go on to the next endpoint. */
static ferry_status_t etcd_attempt(etcd_client_t *client, CURL *handle, size_t index,
                                   const char *path, const char *body, const char *token,
                                   unsigned flags, long timeout_ms, bool *next_p, cJSON **reply_p)
{
    etcd_buf_t buf = {0};
    char detail[CURL_ERROR_SIZE] = "";
    char url[512];
    long http = 0;
    bool cut_short = (flags & ETCD_CALL_CUT) != 0 && timeout_ms < ETCD_ATTEMPT_MS;
    etcd__ran_out = false;
    CURLcode code =
        etcd_post(client, handle, index, path, url, sizeof(url), body,
                  (flags & ETCD_CALL_RETRY) != 0, token, timeout_ms, &buf, &http, detail);
    ferry_status_t status;
    *next_p = false;
    if (code != CURLE_OK && buf.too_large) {
        /* Not a transport fault: another member would likely send as much
         * (a page of large records), so the request fails here. */
        etcd__set_too_large(url);
        ferry_warn("etcd: %s", etcd_last_error);
        free(buf.data);
        return FERRY_ERR_RESOURCE_EXHAUSTED;
    }
    if (code != CURLE_OK) {
        status = etcd__transport_error("post", url, code, detail);
        *next_p = (flags & ETCD_CALL_RETRY) != 0 || etcd_never_sent(handle, code);
        etcd__ran_out = cut_short && code == CURLE_OPERATION_TIMEDOUT;
        if (code != CURLE_OUT_OF_MEMORY && code != CURLE_WRITE_ERROR && !etcd__ran_out) {
            etcd__endpoint_suspect(client, index);
        }
        free(buf.data);
        return status;
    }
    status = etcd_reply_status(url, http, &buf, reply_p);
    free(buf.data);
    if (status == FERRY_OK && (flags & ETCD_CALL_LEADER) != 0 && !etcd_has_leader(*reply_p)) {
        cJSON_Delete(*reply_p);
        *reply_p = NULL;
        etcd__set_error("%s: etcd member has no leader", url);
        status = FERRY_ERR_UNAVAILABLE;
    }
    if (status == FERRY_ERR_UNAVAILABLE) {
        /* "no leader", "request timed out", "context deadline exceeded":
         * another member may do better (a write is still not sent twice). */
        etcd__endpoint_suspect(client, index);
        *next_p = (flags & ETCD_CALL_RETRY) != 0;
    } else {
        etcd__endpoint_answered(client, index);
    }
    return status;
}

ferry_status_t etcd__call_raw(etcd_client_t *client, CURL *handle, const char *path,
                              const char *body, const char *token, unsigned flags, cJSON **reply_p)
{
    size_t *order = malloc(client->n_endpoints * sizeof(*order));
    if (order == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    etcd__endpoint_order(client, order);
    bool cut;
    int64_t budget = etcd__budget_ms(
        (flags & ETCD_CALL_PROBE) != 0 && client->timeout_ms > ETCD_PROBE_MS ? ETCD_PROBE_MS
                                                                             : client->timeout_ms,
        &cut);
    flags |= cut ? ETCD_CALL_CUT : 0;
    int64_t deadline = etcd_now_ms() + budget;
    ferry_status_t status = FERRY_ERR_UNAVAILABLE;
    bool next = true;
    bool etcds = false; /* an attempt that had the time to be answered failed */
    etcd__ran_out = false;
    for (size_t i = 0; i < client->n_endpoints && next; i++) {
        int64_t left = deadline - etcd_now_ms();
        if (left <= 0) {
            etcd__set_error("no etcd endpoint answered %s within %lld ms", path,
                            (long long)(budget > 0 ? budget : 0));
            etcd__ran_out = cut;
            break;
        }
        /* The last endpoint gets all the time that is left. */
        bool last = i + 1 == client->n_endpoints;
        long attempt_ms = (flags & ETCD_CALL_RETRY) != 0 && !last && left > ETCD_ATTEMPT_MS
                              ? ETCD_ATTEMPT_MS
                              : (long)left;
        status = etcd_attempt(client, handle, order[i], path, body, token, flags, attempt_ms, &next,
                              reply_p);
        etcds = etcds || (status != FERRY_OK && !etcd__ran_out);
    }
    if (etcd__tries_end(status, cut, etcds)) {
        /* A health probe's caller logs when health changes: a warning per
         * probe would repeat it every interval while etcd is down. An inner
         * call's request logs its own outcome. */
        if ((flags & (ETCD_CALL_PROBE | ETCD_CALL_INNER)) != 0) {
            ferry_debug("etcd: unavailable: %s", etcd_last_error);
        } else {
            etcd__warn_unavailable();
        }
    }
    free(order);
    return status;
}

ferry_status_t etcd__endpoint_probe(etcd_client_t *client, size_t index)
{
    CURL *handle = etcd__pool_get(client);
    if (handle == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    char *token = NULL;
    unsigned long gen = 0;
    ferry_status_t status = etcd__auth_token(client, handle, &token, &gen);
    cJSON *reply = NULL;
    bool next = false;
    if (status == FERRY_OK) {
        status = etcd_attempt(client, handle, index, "/v3/maintenance/status", "{}", token,
                              ETCD_CALL_RETRY | ETCD_CALL_LEADER, ETCD_ATTEMPT_MS, &next, &reply);
    }
    cJSON_Delete(reply);
    free(token);
    etcd__pool_put(client, handle);
    return status;
}

/* One attempt with the current token. *gen_p gets the token's generation;
 * *sent_p says whether the request itself went out (false when getting a
 * token failed, which a retry would only repeat). */
static ferry_status_t etcd_call_once(etcd_client_t *client, CURL *handle, const char *path,
                                     const char *body, unsigned flags, unsigned long *gen_p,
                                     bool *sent_p, cJSON **reply_p)
{
    char *token = NULL;
    *sent_p = false;
    ferry_status_t status = etcd__auth_token(client, handle, &token, gen_p);
    if (status != FERRY_OK) {
        return status;
    }
    *sent_p = true;
    status = etcd__call_raw(client, handle, path, body, token, flags, reply_p);
    free(token);
    return status;
}

static ferry_status_t etcd_call_unobserved(etcd_client_t *client, const char *path,
                                           const cJSON *body, unsigned flags, cJSON **reply_p);

ferry_status_t etcd__call(etcd_client_t *client, const char *path, const cJSON *body,
                          cJSON **reply_p)
{
    return etcd__call_flags(client, path, body, 0, reply_p);
}

int64_t etcd__now_ns(void)
{
    return ferry__clock_ns(CLOCK_MONOTONIC);
}

void etcd__observe(etcd_client_t *client, const char *path, ferry_status_t status, int64_t start_ns)
{
    if (client->observer.request_done != NULL) {
        client->observer.request_done(client->observer.arg, path, status,
                                      etcd__now_ns() - start_ns);
    }
}

/* Every gateway request goes through here (and every gRPC one through
 * etcd__grpc_call), so the observer (metrics) sees each. The health
 * probe's count apart, as "/v3/probe/kv/range": about four a second that
 * succeed whatever the load does would dilute the failure rate of the
 * requests made for clients (a replica whose every write failed at a low
 * rate stayed under FerryEtcdErrors' 5%). */
ferry_status_t etcd__call_flags(etcd_client_t *client, const char *path, const cJSON *body,
                                unsigned flags, cJSON **reply_p)
{
    int64_t start = etcd__now_ns();
    ferry_status_t status = etcd_call_unobserved(client, path, body, flags, reply_p);
    char probe[64];

    if ((flags & ETCD_CALL_PROBE) != 0 && strncmp(path, "/v3/", 4) == 0) {
        snprintf(probe, sizeof(probe), "/v3/probe/%s", path + 4);
        path = probe;
    }
    etcd__observe(client, path, etcd__ran_out ? FERRY_ERR_TIMED_OUT : status, start);
    return status;
}

static ferry_status_t etcd_call_unobserved(etcd_client_t *client, const char *path,
                                           const cJSON *body, unsigned flags, cJSON **reply_p)
{
    etcd__clear_error();
    char *text = cJSON_PrintUnformatted(body);
    CURL *handle = text != NULL ? etcd__pool_get(client) : NULL;
    if (handle == NULL) {
        free(text);
        return FERRY_ERR_NO_MEMORY;
    }
    unsigned long gen = 0;
    bool sent = false;
    ferry_status_t status = etcd_call_once(client, handle, path, text, flags, &gen, &sent, reply_p);
    if (status == FERRY_ERR_UNAUTHENTICATED && client->username != NULL && sent) {
        /* The token expired (etcd's default TTL is 300 s) or etcd restarted
         * and forgot it: get a new one and try once more. */
        ferry_debug("etcd: token rejected on %s, authenticating again", path);
        etcd__auth_invalidate(client, gen);
        status = etcd_call_once(client, handle, path, text, flags, &gen, &sent, reply_p);
    }
    etcd__pool_put(client, handle);
    free(text);
    return status;
}

/* A linearizable read of one key, count only: etcd serves it only after
 * the leader has confirmed it still leads a quorum (ReadIndex), so it
 * proves that the cluster can commit. etcd checks that before the
 * permission, so PERMISSION_DENIED proves it as well: for the key outside
 * every prefix read without params.health_key (a user limited to its
 * prefix) it passes; for the caller's own key it fails, the user being
 * unable to read where it must (a role on another prefix, a grant
 * revoked), which nothing else would show before every call failed. */
static ferry_status_t etcd_ping_quorum(etcd_client_t *client, int64_t *revision_p)
{
    static const uint8_t probe_key[] = "\0ferry-health-probe";
    const uint8_t *key =
        client->health_key != NULL ? (const uint8_t *)client->health_key : probe_key;
    size_t key_len =
        client->health_key != NULL ? strlen(client->health_key) : sizeof(probe_key) - 1;
    cJSON *body = cJSON_CreateObject();
    ferry_status_t status =
        body != NULL ? etcd__json_add_bytes(body, "key", key, key_len) : FERRY_ERR_NO_MEMORY;
    if (status == FERRY_OK && cJSON_AddTrueToObject(body, "count_only") == NULL) {
        status = FERRY_ERR_NO_MEMORY;
    }
    cJSON *reply = NULL;
    if (status == FERRY_OK) {
        status = etcd__call_flags(client, "/v3/kv/range", body, ETCD_CALL_RETRY | ETCD_CALL_PROBE,
                                  &reply);
    }
    if (status == FERRY_OK) {
        status = etcd__json_revision(reply, revision_p);
    } else if (status == FERRY_ERR_PERMISSION_DENIED && client->health_key == NULL) {
        status = FERRY_OK;
    }
    cJSON_Delete(reply);
    cJSON_Delete(body);
    return status;
}

bool etcd_version_revokes_live_leases(const char *version)
{
    unsigned major, minor, patch;

    if (version == NULL || sscanf(version, "%u.%u.%u", &major, &minor, &patch) != 3) {
        return false;
    }
    if (major != 3) {
        return major < 3;
    }
    return minor < 4 || (minor == 4 && patch < 28) || (minor == 5 && patch < 11);
}

/* Whether url (a member's client URL) is one of the client's endpoints, as
 * text (another spelling of the same address is another URL). */
static bool etcd_names_url(const etcd_client_t *client, const char *url)
{
    size_t len = strlen(url);

    while (len > 0 && url[len - 1] == '/') {
        len--;
    }
    for (size_t i = 0; i < client->n_endpoints; i++) {
        if (strlen(client->endpoints[i]) == len && strncmp(client->endpoints[i], url, len) == 0) {
            return true;
        }
    }
    return false;
}

/* Once, with the version check: warns when the cluster has members none of
 * whose client URLs the endpoints name. A replica keeps its workers' leases
 * alive only through the members it names: where those fail, every lease
 * kept through it expires although the others keep etcd's quorum (one
 * endpoint is one member, unless it is a load balancer over them all). */
static bool etcd_check_members(etcd_client_t *client)
{
    cJSON *body = cJSON_CreateObject();
    cJSON *reply = NULL;
    ferry_status_t status = body != NULL
                                ? etcd__call_flags(client, "/v3/cluster/member/list", body,
                                                   ETCD_CALL_RETRY | ETCD_CALL_PROBE, &reply)
                                : FERRY_ERR_NO_MEMORY;
    const cJSON *members = cJSON_GetObjectItemCaseSensitive(reply, "members");
    const cJSON *list = cJSON_IsArray(members) ? members : NULL;
    const cJSON *m;
    char unnamed[256] = "";
    size_t used = 0;
    int started = 0, missing = 0;

    cJSON_ArrayForEach(m, list)
    {
        const cJSON *urls = cJSON_GetObjectItemCaseSensitive(m, "clientURLs");
        const cJSON *url_list = cJSON_IsArray(urls) ? urls : NULL;
        const cJSON *u;
        const char *first = NULL;
        bool named = false;

        cJSON_ArrayForEach(u, url_list)
        {
            if (cJSON_IsString(u)) {
                first = first != NULL ? first : u->valuestring;
                named = named || etcd_names_url(client, u->valuestring);
            }
        }
        if (first == NULL || cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m, "isLearner"))) {
            continue; /* not started yet (no client URL), or a learner (no vote, no leases) */
        }
        started++;
        if (!named) {
            missing++;
            if (used < sizeof(unnamed)) {
                int n = snprintf(unnamed + used, sizeof(unnamed) - used, "%s%.100s",
                                 missing > 1 ? ", " : "", first);
                used += n > 0 ? (size_t)n : 0;
            }
        }
    }
    if (status != FERRY_OK) {
        ferry_debug("etcd: member list: %s", etcd_last_error);
    } else if (missing > 0 && started > 1) {
        ferry_warn("etcd: the cluster has %d members and --etcd (FERRY_ETCD) names %d of them "
                   "(not %s): unless an endpoint is a load balancer over them all, the workers "
                   "whose leases this replica keeps lose them when the members it names fail, "
                   "though etcd keeps its quorum; name every member",
                   started, started - missing, unnamed);
    }
    cJSON_Delete(reply);
    cJSON_Delete(body);
    return status == FERRY_OK;
}

/* Once, from the first status an etcd the operator runs answered: warns of
 * a version that revokes live leases (etcd_version_revokes_live_leases).
 * And from each status, until the member list has answered (at most
 * ETCD_MEMBER_CHECKS tries): of members the endpoints do not name
 * (etcd_check_members). */
static void etcd_check_version(etcd_client_t *client, const cJSON *status)
{
    const cJSON *version = cJSON_GetObjectItemCaseSensitive(status, "version");

    if (client->check_version && atomic_load(&client->member_checks_left) > 0) {
        atomic_store(&client->member_checks_left,
                     etcd_check_members(client) ? 0 : atomic_load(&client->member_checks_left) - 1);
    }
    if (!client->check_version || !cJSON_IsString(version) ||
        atomic_exchange(&client->version_checked, true)) {
        return;
    }
    if (etcd_version_revokes_live_leases(version->valuestring)) {
        ferry_warn("etcd: version %.32s revokes live leases when a leader frozen longer than "
                   "their TTL (a VM pause, a stuck disk) wakes (etcd-io/etcd#15247, fixed in "
                   "3.4.28 and 3.5.11): every record of workers alive through the stall goes; "
                   "run a fixed etcd, or a --ttl above the stalls you expect",
                   version->valuestring);
    } else {
        ferry_debug("etcd: version %.32s", version->valuestring);
    }
}

ferry_status_t etcd_ping(etcd_client_t *client, int64_t *revision_p)
{
    if (client == NULL) {
        return FERRY_ERR_MISUSE;
    }
    cJSON *body = cJSON_CreateObject();
    cJSON *reply = NULL;
    ferry_status_t status =
        body != NULL
            ? etcd__call_flags(client, "/v3/maintenance/status", body,
                               ETCD_CALL_RETRY | ETCD_CALL_PROBE | ETCD_CALL_LEADER, &reply)
            : FERRY_ERR_NO_MEMORY;
    int64_t revision = 0;
    if (status == FERRY_OK) {
        etcd_check_version(client, reply);
        status = etcd__json_revision(reply, &revision);
    }
    if (status == FERRY_OK) {
        status = etcd_ping_quorum(client, &revision);
    }
    if (status == FERRY_OK && revision_p != NULL) {
        *revision_p = revision;
    }
    cJSON_Delete(reply);
    cJSON_Delete(body);
    return status;
}
