/*
 * etcd_fixture.h: what the etcd integration tests share: a real etcd with
 * a client on it (cmocka group state), and a recorder of watch callbacks
 * that tests wait on with a deadline.
 */
#ifndef FERRY_TESTS_ETCD_FIXTURE_H
#define FERRY_TESTS_ETCD_FIXTURE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coordinator/etcd/etcd.h"
#include "testproc.h"

typedef struct {
    test_etcd_t etcd;
    etcd_client_t *client;
} fixture_t;

/* Whether the fixture's clients send key-value requests over etcd's JSON
 * gateway (built with FIXTURE_KV_GATEWAY) or over its native gRPC API (the
 * client's default). Tests of one transport's mechanics ask it. */
extern const bool fixture_kv_gateway;

/* cmocka group setup/teardown: starts etcd and a client (timeout 2 s). */
int fixture_setup(void **state);
int fixture_teardown(void **state);

/* A client on the given endpoints (asserts on failure). */
etcd_client_t *fixture_client(const char *endpoints, int timeout_ms);

/* Puts a text key/value and returns the revision (asserts success). */
int64_t fixture_put(etcd_client_t *client, const char *key, const char *value, int64_t lease);

/* --- a frozen member ---------------------------------------------------- */

/* A listener on a free loopback port that behaves like a SIGSTOPped etcd:
 * the kernel accepts connections and takes requests, nobody answers. With
 * first_reply, the first connection gets that as an HTTP 200 streamed body
 * (e.g. a watch's "created" line) and then silence. url is
 * "http://127.0.0.1:<port>". */
enum { ENDING_ETCD_TIMES = 16 };

typedef struct {
    int listen_fd;
    int conn_fd; /* the first connection, when first_reply; -1 otherwise */
    const char *first_reply;
    bool others_behind; /* dying_etcd_start's */
    atomic_int resent;  /* requests on later connections (others_behind) */
    bool ends_all;      /* ending_etcd_start's */
    long long times_ms[ENDING_ETCD_TIMES];
    pthread_mutex_t request_lock; /* ending_etcd_start's: guards last_request */
    char last_request[4096];      /* its last request's first bytes, headers and body */
    pthread_t thread;
    bool has_thread;
    char url[64];
} frozen_etcd_t;

void frozen_etcd_start(frozen_etcd_t *f, const char *first_reply);
void frozen_etcd_stop(frozen_etcd_t *f);

/* A member that dies with a request in flight: on one connection it answers
 * the first request with HTTP 200 `reply`, reads the second and closes the
 * connection without answering. Then its listener closes too, so a new
 * connection is refused; or, with `others_behind`, its address leads on to
 * another member, as a Service or a DNS name would: each later connection's
 * request is counted in f->resent and answered with `reply`. Stop joins
 * its thread. */
void dying_etcd_start(frozen_etcd_t *f, const char *reply, bool others_behind);

/* A member whose every stream ends as soon as it began: each connection's
 * request is answered with HTTP 200 and the chunked body `reply` (a
 * watch's "created" line and a line that does not parse, say), and the
 * connection closes. f->resent counts the connections (each counted once
 * its request has been read, into f->last_request under
 * f->request_lock), and f->times_ms (monotonic) keeps when the first
 * ENDING_ETCD_TIMES came. A request that is not a watch (the start check
 * of a reconnect, a range) is answered with an empty range and not
 * counted. */
void ending_etcd_start(frozen_etcd_t *f, const char *reply);

/* --- a scripted member --------------------------------------------------- */

/* A member that answers each request by its path, with what the test set
 * for it (scripted_etcd_answer; a path without one is answered HTTP 404),
 * one request per connection: replies no etcd gives (a member list that is
 * not one, a time-to-live without its TTL). Every request it answered is
 * counted by path. url is "http://127.0.0.1:<port>". */
enum { SCRIPTED_ETCD_PATHS = 8 };

typedef struct {
    const char *path;
    const char *body; /* the test's; it outlives the member */
    int http;
    int hits; /* requests answered with it */
} scripted_answer_t;

typedef struct {
    int listen_fd;
    pthread_mutex_t lock; /* guards answers and n_answers */
    scripted_answer_t answers[SCRIPTED_ETCD_PATHS];
    size_t n_answers;
    pthread_t thread;
    char url[64];
} scripted_etcd_t;

void scripted_etcd_start(scripted_etcd_t *s);
/* Requests for path are answered HTTP `http` with body from now on. */
void scripted_etcd_answer(scripted_etcd_t *s, const char *path, int http, const char *body);
/* How many requests for path have been answered. */
int scripted_etcd_hits(scripted_etcd_t *s, const char *path);
void scripted_etcd_stop(scripted_etcd_t *s);

/* --- watch recorder ------------------------------------------------------ */

enum { RECORDER_MAX = 256 };

typedef struct {
    etcd_event_type_t type;
    char key[64];
    char value[64];
    char prev_value[64];
    bool has_prev;
    int64_t mod_revision;
} recorded_event_t;

typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    recorded_event_t events[RECORDER_MAX];
    size_t n_events;
    size_t call_sizes[RECORDER_MAX]; /* events per on_events call */
    bool call_more[RECORDER_MAX];    /* each call's `more` */
    size_t n_calls;
    int n_up;   /* on_state(true) */
    int n_down; /* on_state(false) */
    ferry_status_t last_status;
} recorder_t;

void recorder_init(recorder_t *rec);
void recorder_fini(recorder_t *rec);
/* Fills the callbacks of params with the recorder's. */
void recorder_params(recorder_t *rec, etcd_watch_params_t *params);
/* Waits on the recorder's condvar until the counter reaches want. */
bool recorder_wait_events(recorder_t *rec, size_t want, int timeout_ms);
bool recorder_wait_up(recorder_t *rec, int want, int timeout_ms);
bool recorder_wait_down(recorder_t *rec, int want, int timeout_ms);

#endif /* FERRY_TESTS_ETCD_FIXTURE_H */
