/*
 * test_etcd_auth.c: etcd user/password auth against a real etcd with auth
 * enabled (through etcdctl): requests and watches with a token, refusals
 * without one or with a bad password, a watch where the user may not read, and a new token fetched
 * by itself when etcd forgot the old one (simple tokens do not survive a restart) or made it old
 * (a user added: "revision of auth store is old"); against a frozen
 * member, concurrent requests share one authentication attempt (none is made while another is in
 * flight, and the lock is not held across it) instead of each trying in turn; and that attempt has
 * the client's whole timeout, whatever the deadline of the caller that makes it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "coordinator/etcd/etcd_int.h"
#include "etcd_fixture.h"

enum { WAIT_MS = 10000 };

/* Runs etcdctl with the arguments given (NULL-terminated, up to 5). */
static void etcdctl(fixture_t *fx, const char *a, ...)
{
    char endpoints[96];
    char log[4200];
    char *argv[8] = {"etcdctl", endpoints};
    int n = 2;
    va_list ap;
    va_start(ap, a);
    for (const char *arg = a; arg != NULL && n < 7; arg = va_arg(ap, const char *)) {
        argv[n++] = (char *)arg;
    }
    va_end(ap);
    argv[n] = NULL;
    snprintf(endpoints, sizeof(endpoints), "--endpoints=%s", fx->etcd.endpoint);
    snprintf(log, sizeof(log), "%s/etcdctl.log", fx->etcd.dir);
    test_proc_t proc;
    assert_int_equal(test_proc_start(&proc, argv, log), 0);
    assert_true(test_proc_wait(&proc, WAIT_MS));
    if (!WIFEXITED(proc.status) || WEXITSTATUS(proc.status) != 0) {
        test_proc_dump_log(&proc, 2000);
        fail_msg("etcdctl %s %s failed", a, argv[3] != NULL ? argv[3] : "");
    }
    test_proc_cleanup(&proc);
}

/* root may do anything; reader may read auth/open only. */
static int auth_setup(void **state)
{
    if (fixture_setup(state) != 0) {
        return -1;
    }
    fixture_t *fx = *state;
    etcdctl(fx, "user", "add", "root:secret", NULL);
    etcdctl(fx, "user", "add", "reader:pw", NULL);
    etcdctl(fx, "role", "add", "open-reader", NULL);
    etcdctl(fx, "role", "grant-permission", "open-reader", "read", "auth/open", NULL);
    etcdctl(fx, "user", "grant-role", "reader", "open-reader", NULL);
    etcdctl(fx, "auth", "enable", NULL);
    return 0;
}

static etcd_client_t *auth_client(fixture_t *fx, const char *user, const char *password)
{
    etcd_params_t params = {.endpoints = fx->etcd.endpoint,
                            .timeout_ms = 2000,
                            .username = user,
                            .password = password,
                            .kv_gateway = fixture_kv_gateway};
    etcd_client_t *client = NULL;
    assert_int_equal(etcd_client_create(&params, &client), FERRY_OK);
    return client;
}

static void test_requests_with_token(void **state)
{
    fixture_t *fx = *state;
    etcd_client_t *client = auth_client(fx, "root", "secret");
    fixture_put(client, "auth/a", "1", 0);
    etcd_range_t range;
    assert_int_equal(etcd_get(client, "auth/a", 6, NULL, 0, 0, 0, &range), FERRY_OK);
    assert_int_equal(range.n_kvs, 1);
    etcd_range_free(&range);
    etcd_client_destroy(client);
}

static void test_refused_without_credentials(void **state)
{
    fixture_t *fx = *state;
    /* fx->client has no credentials. */
    assert_int_equal(etcd_put(fx->client, "auth/b", 6, "1", 1, 0, NULL), FERRY_ERR_UNAUTHENTICATED);
    etcd_client_t *client = auth_client(fx, "root", "wrong");
    assert_int_equal(etcd_put(client, "auth/b", 6, "1", 1, 0, NULL), FERRY_ERR_UNAUTHENTICATED);
    assert_non_null(strstr(etcd_client_last_error(), "authentication failed"));
    etcd_client_destroy(client);
}

static void test_watch_with_token(void **state)
{
    fixture_t *fx = *state;
    etcd_client_t *client = auth_client(fx, "root", "secret");
    recorder_t rec;
    recorder_init(&rec);
    etcd_watch_params_t params = {.key = "auth/w", .key_len = 6};
    recorder_params(&rec, &params);
    etcd_watch_t *watch = NULL;
    assert_int_equal(etcd_watch_create(client, &params, &watch), FERRY_OK);
    fixture_put(client, "auth/w", "1", 0);
    assert_true(recorder_wait_events(&rec, 1, WAIT_MS));
    etcd_watch_destroy(watch);
    recorder_fini(&rec);
    etcd_client_destroy(client);
}

/* A watch on keys the user may not read: etcd cancels it, and the
 * creator hears PERMISSION_DENIED (not UNAVAILABLE: trying again elsewhere
 * cannot help). Where the user may read, the watch works. */
static void test_watch_without_permission(void **state)
{
    fixture_t *fx = *state;
    etcd_client_t *client = auth_client(fx, "reader", "pw");
    recorder_t rec;
    recorder_init(&rec);
    etcd_watch_params_t params = {.key = "auth/w", .key_len = 6};
    recorder_params(&rec, &params);
    etcd_watch_t *watch = NULL;
    assert_int_equal(etcd_watch_create(client, &params, &watch), FERRY_ERR_PERMISSION_DENIED);
    assert_null(watch);
    assert_non_null(strstr(etcd_client_last_error(), "permission denied"));

    params.key = "auth/open";
    params.key_len = 9;
    assert_int_equal(etcd_watch_create(client, &params, &watch), FERRY_OK);
    etcd_client_t *root = auth_client(fx, "root", "secret");
    fixture_put(root, "auth/open", "1", 0);
    assert_true(recorder_wait_events(&rec, 1, WAIT_MS));
    etcd_watch_destroy(watch);
    etcd_client_destroy(root);
    recorder_fini(&rec);
    etcd_client_destroy(client);
}

/* The health ping reads params.health_key: a user that may not read it
 * (a role on another prefix) fails the ping PERMISSION_DENIED, so that its
 * coordinator says NOT_SERVING rather than failing every call while
 * saying SERVING; one that may, passes. Without a health key the ping
 * reads a key outside every prefix, and its refusal still proves the
 * quorum. A bad password fails it UNAUTHENTICATED. */
static void test_health_ping_reads_the_health_key(void **state)
{
    fixture_t *fx = *state;
    etcd_params_t params = {.endpoints = fx->etcd.endpoint,
                            .timeout_ms = 2000,
                            .username = "reader",
                            .password = "pw",
                            .kv_gateway = fixture_kv_gateway};
    etcd_client_t *client = NULL;

    assert_int_equal(etcd_client_create(&params, &client), FERRY_OK);
    assert_int_equal(etcd_ping(client, NULL), FERRY_OK);
    etcd_client_destroy(client);

    params.health_key = "auth/open";
    assert_int_equal(etcd_client_create(&params, &client), FERRY_OK);
    assert_int_equal(etcd_ping(client, NULL), FERRY_OK);
    etcd_client_destroy(client);

    params.health_key = "ferry/";
    assert_int_equal(etcd_client_create(&params, &client), FERRY_OK);
    assert_int_equal(etcd_ping(client, NULL), FERRY_ERR_PERMISSION_DENIED);
    assert_non_null(strstr(etcd_client_last_error(), "permission denied"));
    etcd_client_destroy(client);

    params.health_key = "auth/open";
    params.password = "wrong";
    assert_int_equal(etcd_client_create(&params, &client), FERRY_OK);
    assert_int_equal(etcd_ping(client, NULL), FERRY_ERR_UNAUTHENTICATED);
    etcd_client_destroy(client);
}

static void test_token_renewed_after_restart(void **state)
{
    fixture_t *fx = *state;
    etcd_client_t *client = auth_client(fx, "root", "secret");
    fixture_put(client, "auth/c", "1", 0);
    test_etcd_down(&fx->etcd);
    assert_int_equal(test_etcd_up(&fx->etcd), 0);
    /* The old token means nothing to the new process: the client gets
     * "invalid auth token", authenticates again, and retries. */
    fixture_put(client, "auth/c", "2", 0);
    etcd_client_destroy(client);
}

/* With JWT tokens (--auth-token jwt), which carry the auth revision they
 * were made at, a change to etcd's users or roles makes every token made
 * before it "old" (etcd: "revision of auth store is old", as
 * INVALID_ARGUMENT; simple tokens take the current revision, so never):
 * the client authenticates again and the request goes through. It failed
 * INVALID_ARGUMENT until the token expired: every write of the
 * coordinator, after an operator added a user. */
static void test_token_renewed_after_an_auth_change(void **state)
{
    fixture_t *fx = *state;
    etcd_client_t *client = auth_client(fx, "root", "secret");
    etcd_range_t range;

    fixture_put(client, "auth/d", "1", 0);
    etcdctl(fx, "--user=root:secret", "user", "add", "late:pw", NULL);
    fixture_put(client, "auth/d", "2", 0);
    assert_int_equal(etcd_get(client, "auth/d", 6, NULL, 0, 0, 0, &range), FERRY_OK);
    assert_int_equal(range.n_kvs, 1);
    assert_memory_equal(range.kvs[0].value, "2", 1);
    etcd_range_free(&range);
    etcdctl(fx, "--user=root:secret", "user", "delete", "late", NULL);
    etcd_client_destroy(client);
}

enum { N_AUTH_THREADS = 4 };

typedef struct {
    etcd_client_t *client;
    pthread_barrier_t *start;
    ferry_status_t status;
} auth_thread_t;

static void *auth_get(void *arg)
{
    auth_thread_t *t = arg;
    etcd_range_t range;
    pthread_barrier_wait(t->start);
    t->status = etcd_get(t->client, "auth/x", 6, NULL, 0, 0, 0, &range);
    if (t->status == FERRY_OK) {
        etcd_range_free(&range);
    }
    return NULL;
}

/* A request's authentication is every waiting thread's (they take its
 * outcome), so it has the client's whole timeout, not what is left of one
 * caller's deadline (etcd_set_deadline): a caller with a millisecond left
 * does not fail it for the others, where etcd checks the password with
 * bcrypt for tens of milliseconds. The request itself gets what is left. */
static void test_authentication_has_the_clients_time(void **state)
{
    fixture_t *fx = *state;
    etcd_client_t *client = auth_client(fx, "root", "secret");

    etcd_set_deadline(test_now_ms() + 1);
    (void)etcd_put(client, "auth/short", 10, "1", 1, 0, NULL);
    etcd_set_deadline(0);
    pthread_mutex_lock(&client->auth_lock);
    assert_int_equal(client->auth_status, FERRY_OK);
    assert_non_null(client->token);
    pthread_mutex_unlock(&client->auth_lock);
    fixture_put(client, "auth/short", "2", 0);
    etcd_client_destroy(client);
}

static void test_frozen_member_authenticates_once(void **state)
{
    frozen_etcd_t frozen;
    pthread_barrier_t start;
    pthread_t threads[N_AUTH_THREADS];
    auth_thread_t args[N_AUTH_THREADS];
    (void)state;

    frozen_etcd_start(&frozen, NULL);
    etcd_params_t params = {.endpoints = frozen.url,
                            .timeout_ms = 2000,
                            .username = "root",
                            .password = "secret",
                            .kv_gateway = fixture_kv_gateway};
    etcd_client_t *client = NULL;
    assert_int_equal(etcd_client_create(&params, &client), FERRY_OK);
    pthread_barrier_init(&start, NULL, N_AUTH_THREADS);
    for (int i = 0; i < N_AUTH_THREADS; i++) {
        args[i] = (auth_thread_t){.client = client, .start = &start};
        assert_int_equal(pthread_create(&threads[i], NULL, auth_get, &args[i]), 0);
    }
    for (int i = 0; i < N_AUTH_THREADS; i++) {
        pthread_join(threads[i], NULL);
        assert_int_equal(args[i].status, FERRY_ERR_UNAVAILABLE);
    }
    /* One authentication went out and the others took its outcome. Each
     * thread taking the lock in turn and trying itself made one connection
     * per thread. */
    assert_true(etcd__client_connects(client) < N_AUTH_THREADS);
    pthread_barrier_destroy(&start);
    etcd_client_destroy(client);
    frozen_etcd_stop(&frozen);
}

static void *auth_get_alone(void *arg)
{
    auth_thread_t *t = arg;
    etcd_range_t range;

    t->status = etcd_get(t->client, "auth/x", 6, NULL, 0, 0, 0, &range);
    if (t->status == FERRY_OK) {
        etcd_range_free(&range);
    }
    return NULL;
}

/* A request that needs a token while another thread authenticates waits
 * for that one's outcome only until its own deadline: here the login
 * would take the client's whole 30 s (a frozen member), and the second
 * request ends with the login still going on, UNAVAILABLE and counted as
 * the caller's time (etcd__ran_out), not etcd's failure. It used to wait
 * for the login's end. */
static void test_waiting_for_a_login_ends_by_the_deadline(void **state)
{
    frozen_etcd_t frozen;
    pthread_t first;
    auth_thread_t arg;
    etcd_range_t range;
    (void)state;

    frozen_etcd_start(&frozen, NULL);
    etcd_params_t params = {.endpoints = frozen.url,
                            .timeout_ms = 30000,
                            .username = "root",
                            .password = "secret",
                            .kv_gateway = fixture_kv_gateway};
    etcd_client_t *client = NULL;
    assert_int_equal(etcd_client_create(&params, &client), FERRY_OK);
    arg = (auth_thread_t){.client = client};
    assert_int_equal(pthread_create(&first, NULL, auth_get_alone, &arg), 0);
    long long until = test_now_ms() + WAIT_MS;
    bool busy = false;
    while (!busy && test_now_ms() < until) {
        pthread_mutex_lock(&client->auth_lock);
        busy = client->auth_busy;
        pthread_mutex_unlock(&client->auth_lock);
        if (!busy) {
            poll(NULL, 0, 5); /* waiting for the condition, with a deadline */
        }
    }
    assert_true(busy);

    etcd_set_deadline(test_now_ms() + 200);
    ferry_status_t status = etcd_get(client, "auth/x", 6, NULL, 0, 0, 0, &range);
    etcd_set_deadline(0);
    pthread_mutex_lock(&client->auth_lock);
    busy = client->auth_busy;
    pthread_mutex_unlock(&client->auth_lock);
    assert_int_equal(status, FERRY_ERR_UNAVAILABLE);
    assert_true(busy); /* the first thread's login goes on */
    assert_true(etcd__ran_out);
    assert_non_null(strstr(etcd_client_last_error(), "deadline"));

    frozen_etcd_stop(&frozen); /* resets the login's connection */
    pthread_join(first, NULL);
    assert_int_equal(arg.status, FERRY_ERR_UNAVAILABLE);
    etcd_client_destroy(client);
}

/* Runs a program (argv NULL-terminated); asserts it exits 0. */
static void run_ok(char *const argv[], const char *log)
{
    test_proc_t proc;
    assert_int_equal(test_proc_start(&proc, argv, log), 0);
    assert_true(test_proc_wait(&proc, WAIT_MS));
    if (!WIFEXITED(proc.status) || WEXITSTATUS(proc.status) != 0) {
        test_proc_dump_log(&proc, 2000);
        fail_msg("%s failed", argv[0]);
    }
    test_proc_cleanup(&proc);
}

static char *jwt_keys; /* the JWT group's key directory */

/* As auth_setup, on an etcd whose tokens are JWTs (RS256, a key pair made
 * here with openssl(1)). */
static int jwt_auth_setup(void **state)
{
    char priv[512], pub[512], log[600], token_flag[1200];
    fixture_t *fx = calloc(1, sizeof(*fx));

    jwt_keys = test_tmpdir_create("jwt");
    if (fx == NULL || jwt_keys == NULL) {
        return -1;
    }
    snprintf(priv, sizeof(priv), "%s/jwt.key", jwt_keys);
    snprintf(pub, sizeof(pub), "%s/jwt.pub", jwt_keys);
    snprintf(log, sizeof(log), "%s/openssl.log", jwt_keys);
    run_ok((char *const[]){"openssl", "genrsa", "-out", priv, "2048", NULL}, log);
    run_ok((char *const[]){"openssl", "rsa", "-in", priv, "-pubout", "-out", pub, NULL}, log);
    snprintf(token_flag, sizeof(token_flag),
             "--auth-token=jwt,pub-key=%s,priv-key=%s,sign-method=RS256,ttl=10m", pub, priv);
    const char *extra[] = {token_flag, NULL};
    if (test_etcd_start(&fx->etcd, extra) != 0) {
        free(fx);
        return -1;
    }
    fx->client = fixture_client(fx->etcd.endpoint, 10000);
    *state = fx;
    etcdctl(fx, "user", "add", "root:secret", NULL);
    etcdctl(fx, "auth", "enable", NULL);
    return 0;
}

static int jwt_auth_teardown(void **state)
{
    int rc = fixture_teardown(state);
    test_tmpdir_remove(jwt_keys);
    free(jwt_keys);
    return rc;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_requests_with_token),
        cmocka_unit_test(test_refused_without_credentials),
        cmocka_unit_test(test_watch_with_token),
        cmocka_unit_test(test_watch_without_permission),
        cmocka_unit_test(test_health_ping_reads_the_health_key),
        cmocka_unit_test(test_token_renewed_after_restart),
        cmocka_unit_test(test_frozen_member_authenticates_once),
        cmocka_unit_test(test_authentication_has_the_clients_time),
        cmocka_unit_test(test_waiting_for_a_login_ends_by_the_deadline),
    };
    const struct CMUnitTest jwt_tests[] = {
        cmocka_unit_test(test_token_renewed_after_an_auth_change),
    };
    int failed = cmocka_run_group_tests(tests, auth_setup, fixture_teardown);
    return failed + cmocka_run_group_tests(jwt_tests, jwt_auth_setup, jwt_auth_teardown);
}
