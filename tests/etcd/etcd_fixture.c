/*
 * etcd_fixture.c: see etcd_fixture.h. The recorder's callbacks run on the
 * watch thread and signal the condvar the test thread waits on.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "etcd_fixture.h"

#include "common/clock.h"

#ifdef FIXTURE_KV_GATEWAY
const bool fixture_kv_gateway = true;
#else
const bool fixture_kv_gateway = false;
#endif

int fixture_setup(void **state)
{
    fixture_t *fx = calloc(1, sizeof(*fx));
    if (fx == NULL || test_etcd_start(&fx->etcd, NULL) != 0) {
        free(fx);
        return -1;
    }
    fx->client = fixture_client(fx->etcd.endpoint, 10000);
    *state = fx;
    return 0;
}

int fixture_teardown(void **state)
{
    fixture_t *fx = *state;
    etcd_client_destroy(fx->client);
    test_etcd_stop(&fx->etcd);
    free(fx);
    return 0;
}

etcd_client_t *fixture_client(const char *endpoints, int timeout_ms)
{
    etcd_params_t params = {
        .endpoints = endpoints,
        .timeout_ms = timeout_ms,
        .kv_gateway = fixture_kv_gateway,
    };
    etcd_client_t *client = NULL;
    assert_int_equal(etcd_client_create(&params, &client), FERRY_OK);
    assert_non_null(client);
    return client;
}

int64_t fixture_put(etcd_client_t *client, const char *key, const char *value, int64_t lease)
{
    int64_t revision = 0;
    ferry_status_t status =
        etcd_put(client, key, strlen(key), value, strlen(value), lease, &revision);
    if (status != FERRY_OK) {
        print_error("put %s: %s: %s\n", key, ferry_status_name(status), etcd_client_last_error());
    }
    assert_int_equal(status, FERRY_OK);
    assert_true(revision > 0);
    return revision;
}

/* --- recorder ------------------------------------------------------------- */

/* --- a frozen member ------------------------------------------------------ */

/* Answers the first connection's request with first_reply, then nothing. */
static void *frozen_etcd_main(void *arg)
{
    frozen_etcd_t *f = arg;
    char request[4096];
    char head[256];
    f->conn_fd = accept(f->listen_fd, NULL, NULL);
    if (f->conn_fd < 0 || recv(f->conn_fd, request, sizeof(request), 0) <= 0) {
        return NULL;
    }
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n%zx\r\n",
                     strlen(f->first_reply));
    if (send(f->conn_fd, head, (size_t)n, MSG_NOSIGNAL) != n ||
        send(f->conn_fd, f->first_reply, strlen(f->first_reply), MSG_NOSIGNAL) < 0 ||
        send(f->conn_fd, "\r\n", 2, MSG_NOSIGNAL) != 2) {
        fprintf(stderr, "frozen etcd: send failed\n");
    }
    return NULL;
}

void frozen_etcd_start(frozen_etcd_t *f, const char *first_reply)
{
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(addr);
    memset(f, 0, sizeof(*f));
    f->conn_fd = -1;
    f->first_reply = first_reply;
    f->listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(f->listen_fd >= 0);
    assert_int_equal(bind(f->listen_fd, (struct sockaddr *)&addr, sizeof(addr)), 0);
    assert_int_equal(listen(f->listen_fd, 64), 0);
    assert_int_equal(getsockname(f->listen_fd, (struct sockaddr *)&addr, &len), 0);
    snprintf(f->url, sizeof(f->url), "http://127.0.0.1:%d", ntohs(addr.sin_port));
    if (first_reply != NULL) {
        assert_int_equal(pthread_create(&f->thread, NULL, frozen_etcd_main, f), 0);
        f->has_thread = true;
    }
}

void frozen_etcd_stop(frozen_etcd_t *f)
{
    /* Shutting the listener down ends an accept() still waiting. A dying
     * etcd's thread closes it itself (and sets listen_fd), so the modes go
     * first: listen_fd is read only where that thread leaves it alone. */
    if ((!f->has_thread || f->others_behind || f->ends_all) && f->listen_fd >= 0) {
        shutdown(f->listen_fd, SHUT_RDWR);
    }
    if (f->has_thread) {
        pthread_join(f->thread, NULL);
    }
    if (f->conn_fd >= 0) {
        close(f->conn_fd);
    }
    if (f->listen_fd >= 0) {
        close(f->listen_fd);
    }
}

/* Reads one HTTP request (headers and a Content-Length body); false when
 * the connection ends first. With `copy`, keeps its first cap - 1 bytes
 * there, NUL-terminated. */
static bool request_read(int fd, char *copy, size_t cap)
{
    char buf[8192];
    size_t len = 0, kept = 0;
    char *end = NULL;
    while (end == NULL) {
        ssize_t n = recv(fd, buf + len, sizeof(buf) - 1 - len, 0);
        if (n <= 0) {
            return false;
        }
        len += (size_t)n;
        buf[len] = '\0';
        end = strstr(buf, "\r\n\r\n");
    }
    const char *cl = strcasestr(buf, "content-length:");
    size_t body = cl != NULL ? strtoul(cl + 15, NULL, 10) : 0;
    size_t have = len - (size_t)(end + 4 - buf);
    size_t n_got = len;
    for (;;) {
        if (copy != NULL && kept + 1 < cap) {
            size_t take = n_got < cap - 1 - kept ? n_got : cap - 1 - kept;
            memcpy(copy + kept, buf, take);
            kept += take;
            copy[kept] = '\0';
        }
        if (have >= body) {
            return true;
        }
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0) {
            return false;
        }
        n_got = (size_t)n;
        have += (size_t)n;
    }
}

static bool dying_etcd_read(int fd)
{
    return request_read(fd, NULL, 0);
}

static void *dying_etcd_main(void *arg)
{
    frozen_etcd_t *f = arg;
    char head[256];
    f->conn_fd = accept(f->listen_fd, NULL, NULL);
    if (f->conn_fd < 0 || !dying_etcd_read(f->conn_fd)) {
        return NULL;
    }
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\n\r\n%s",
                     strlen(f->first_reply), f->first_reply);
    if (send(f->conn_fd, head, (size_t)n, MSG_NOSIGNAL) != n) {
        fprintf(stderr, "dying etcd: send failed\n");
    }
    dying_etcd_read(f->conn_fd);
    if (f->others_behind) {
        /* Gone, with the second request unanswered; what connects next
         * reaches another member, until stop shuts the listener down. */
        close(f->conn_fd);
        f->conn_fd = -1;
        for (;;) {
            int fd = accept(f->listen_fd, NULL, NULL);
            if (fd < 0) {
                return NULL;
            }
            if (dying_etcd_read(fd)) {
                atomic_fetch_add(&f->resent, 1);
                if (send(fd, head, (size_t)n, MSG_NOSIGNAL) != n) {
                    fprintf(stderr, "dying etcd: send failed\n");
                }
            }
            close(fd);
        }
    }
    /* Gone, with the second request unanswered. */
    shutdown(f->listen_fd, SHUT_RDWR);
    close(f->listen_fd);
    close(f->conn_fd);
    f->listen_fd = -1;
    f->conn_fd = -1;
    return NULL;
}

void dying_etcd_start(frozen_etcd_t *f, const char *reply, bool others_behind)
{
    frozen_etcd_start(f, NULL);
    f->first_reply = reply;
    f->others_behind = others_behind;
    assert_int_equal(pthread_create(&f->thread, NULL, dying_etcd_main, f), 0);
    f->has_thread = true;
}

/* Answers a request that is not a watch, a reconnect's start check (a
 * range), with an empty range: the member has every revision. */
static void ending_etcd_range(int fd)
{
    static const char reply[] = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                "Content-Length: 27\r\n\r\n{\"header\":{\"revision\":\"1\"}}";
    if (send(fd, reply, sizeof(reply) - 1, MSG_NOSIGNAL) != (ssize_t)sizeof(reply) - 1) {
        fprintf(stderr, "ending etcd: send failed\n");
    }
}

static void *ending_etcd_main(void *arg)
{
    frozen_etcd_t *f = arg;
    char head[256];
    char request[sizeof(f->last_request)];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n%zx\r\n",
                     strlen(f->first_reply));
    for (;;) {
        int fd = accept(f->listen_fd, NULL, NULL);
        if (fd < 0) {
            return NULL;
        }
        long long accepted_ms = test_now_ms();
        request[0] = '\0';
        bool read = request_read(fd, request, sizeof(request));
        if (read && strncmp(request, "POST /v3/watch ", 15) != 0) {
            ending_etcd_range(fd);
            close(fd);
            continue;
        }
        int i = atomic_load(&f->resent);
        if (i < ENDING_ETCD_TIMES) {
            f->times_ms[i] = accepted_ms;
        }
        pthread_mutex_lock(&f->request_lock);
        memcpy(f->last_request, request, sizeof(request));
        pthread_mutex_unlock(&f->request_lock);
        atomic_fetch_add(&f->resent, 1);
        if (read && (send(fd, head, (size_t)n, MSG_NOSIGNAL) != n ||
                     send(fd, f->first_reply, strlen(f->first_reply), MSG_NOSIGNAL) < 0 ||
                     send(fd, "\r\n0\r\n\r\n", 7, MSG_NOSIGNAL) != 7)) {
            fprintf(stderr, "ending etcd: send failed\n");
        }
        close(fd);
    }
}

void ending_etcd_start(frozen_etcd_t *f, const char *reply)
{
    frozen_etcd_start(f, NULL);
    pthread_mutex_init(&f->request_lock, NULL);
    f->first_reply = reply;
    f->ends_all = true;
    assert_int_equal(pthread_create(&f->thread, NULL, ending_etcd_main, f), 0);
    f->has_thread = true;
}

/* --- a scripted member --------------------------------------------------- */

/* The answer set for path, or NULL. Caller holds s->lock. */
static scripted_answer_t *scripted_find(scripted_etcd_t *s, const char *path, size_t len)
{
    for (size_t i = 0; i < s->n_answers; i++) {
        if (strlen(s->answers[i].path) == len && strncmp(s->answers[i].path, path, len) == 0) {
            return &s->answers[i];
        }
    }
    return NULL;
}

static bool send_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, data, len, MSG_NOSIGNAL);
        if (n <= 0) {
            return false;
        }
        data += n;
        len -= (size_t)n;
    }
    return true;
}

/* Answers one request on fd by its path ("POST <path> HTTP/1.1"). */
static void scripted_etcd_serve(scripted_etcd_t *s, int fd)
{
    static const char not_found[] = "404 page not found";
    char request[512];
    char head[256];
    const char *body = not_found;
    int http = 404;

    if (!request_read(fd, request, sizeof(request))) {
        return;
    }
    const char *path = strchr(request, ' ');
    path = path != NULL ? path + 1 : request;
    pthread_mutex_lock(&s->lock);
    scripted_answer_t *a = scripted_find(s, path, strcspn(path, " "));
    if (a != NULL) {
        a->hits++;
        body = a->body;
        http = a->http;
    }
    pthread_mutex_unlock(&s->lock);
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     http, http == 200 ? "OK" : "Error", strlen(body));
    if (!send_all(fd, head, (size_t)n) || !send_all(fd, body, strlen(body))) {
        fprintf(stderr, "scripted etcd: send failed\n");
    }
}

static void *scripted_etcd_main(void *arg)
{
    scripted_etcd_t *s = arg;
    for (;;) {
        int fd = accept(s->listen_fd, NULL, NULL);
        if (fd < 0) {
            return NULL;
        }
        scripted_etcd_serve(s, fd);
        close(fd);
    }
}

void scripted_etcd_start(scripted_etcd_t *s)
{
    frozen_etcd_t f;

    frozen_etcd_start(&f, NULL); /* its listener */
    memset(s, 0, sizeof(*s));
    s->listen_fd = f.listen_fd;
    memcpy(s->url, f.url, sizeof(s->url));
    assert_int_equal(pthread_mutex_init(&s->lock, NULL), 0);
    assert_int_equal(pthread_create(&s->thread, NULL, scripted_etcd_main, s), 0);
}

void scripted_etcd_answer(scripted_etcd_t *s, const char *path, int http, const char *body)
{
    pthread_mutex_lock(&s->lock);
    scripted_answer_t *a = scripted_find(s, path, strlen(path));
    if (a == NULL) {
        assert_true(s->n_answers < SCRIPTED_ETCD_PATHS);
        a = &s->answers[s->n_answers++];
        a->path = path;
    }
    a->http = http;
    a->body = body;
    pthread_mutex_unlock(&s->lock);
}

int scripted_etcd_hits(scripted_etcd_t *s, const char *path)
{
    pthread_mutex_lock(&s->lock);
    scripted_answer_t *a = scripted_find(s, path, strlen(path));
    int hits = a != NULL ? a->hits : 0;
    pthread_mutex_unlock(&s->lock);
    return hits;
}

void scripted_etcd_stop(scripted_etcd_t *s)
{
    shutdown(s->listen_fd, SHUT_RDWR); /* ends its accept() */
    pthread_join(s->thread, NULL);
    close(s->listen_fd);
    pthread_mutex_destroy(&s->lock);
}

static void recorder_copy(char *out, size_t cap, const uint8_t *data, size_t len)
{
    size_t n = len < cap - 1 ? len : cap - 1;
    if (n > 0) {
        memcpy(out, data, n);
    }
    out[n] = '\0';
}

static void recorder_on_events(void *arg, const etcd_event_t *events, size_t n_events,
                               int64_t revision, bool more)
{
    recorder_t *rec = arg;
    (void)revision;
    if (rec->n_calls < RECORDER_MAX) {
        rec->call_more[rec->n_calls] = more;
    }
    pthread_mutex_lock(&rec->lock);
    for (size_t i = 0; i < n_events && rec->n_events < RECORDER_MAX; i++) {
        recorded_event_t *out = &rec->events[rec->n_events++];
        out->type = events[i].type;
        out->mod_revision = events[i].kv.mod_revision;
        recorder_copy(out->key, sizeof(out->key), events[i].kv.key, events[i].kv.key_len);
        recorder_copy(out->value, sizeof(out->value), events[i].kv.value, events[i].kv.value_len);
        out->has_prev = events[i].prev_kv.key_len > 0;
        recorder_copy(out->prev_value, sizeof(out->prev_value), events[i].prev_kv.value,
                      events[i].prev_kv.value_len);
    }
    if (rec->n_calls < RECORDER_MAX) {
        rec->call_sizes[rec->n_calls++] = n_events;
    }
    pthread_cond_broadcast(&rec->cond);
    pthread_mutex_unlock(&rec->lock);
}

static void recorder_on_state(void *arg, bool connected, ferry_status_t status)
{
    recorder_t *rec = arg;
    pthread_mutex_lock(&rec->lock);
    if (connected) {
        rec->n_up++;
    } else {
        rec->n_down++;
    }
    rec->last_status = status;
    pthread_cond_broadcast(&rec->cond);
    pthread_mutex_unlock(&rec->lock);
}

void recorder_init(recorder_t *rec)
{
    memset(rec, 0, sizeof(*rec));
    assert_int_equal(ferry__cond_init_clock(&rec->cond, CLOCK_MONOTONIC), 0);
    assert_int_equal(pthread_mutex_init(&rec->lock, NULL), 0);
}

void recorder_fini(recorder_t *rec)
{
    pthread_cond_destroy(&rec->cond);
    pthread_mutex_destroy(&rec->lock);
}

void recorder_params(recorder_t *rec, etcd_watch_params_t *params)
{
    params->on_events = recorder_on_events;
    params->on_state = recorder_on_state;
    params->arg = rec;
}

/* Waits until *counter >= want; counter is read under the lock. */
static bool recorder_wait(recorder_t *rec, const void *counter, bool is_size, long want,
                          int timeout_ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += timeout_ms / 1000;
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&rec->lock);
    int rc = 0;
    long have;
    while ((have = is_size ? (long)*(const size_t *)counter : (long)*(const int *)counter) < want &&
           rc == 0) {
        rc = pthread_cond_timedwait(&rec->cond, &rec->lock, &deadline);
    }
    pthread_mutex_unlock(&rec->lock);
    return have >= want;
}

bool recorder_wait_events(recorder_t *rec, size_t want, int timeout_ms)
{
    return recorder_wait(rec, &rec->n_events, true, (long)want, timeout_ms);
}

bool recorder_wait_up(recorder_t *rec, int want, int timeout_ms)
{
    return recorder_wait(rec, &rec->n_up, false, want, timeout_ms);
}

bool recorder_wait_down(recorder_t *rec, int want, int timeout_ms)
{
    return recorder_wait(rec, &rec->n_down, false, want, timeout_ms);
}
