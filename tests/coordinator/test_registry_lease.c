/*
 * test_registry_lease.c: a lease token that OpenSSL cannot compute (out of
 * memory: HMAC and EVP_MAC_CTX_dup fail, through --wrap) fails closed and
 * retryable. registry_lease_check answers UNAVAILABLE, never "does not
 * grant" for a token that does (a worker told that would give up a lease it
 * holds); before, the comparison ran against whatever the stack held, and a
 * new lease could be handed out with such a token. A call that waits for
 * another thread's load of the lease key waits no longer than its own etcd
 * deadline.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "common/clock.h"
#include "coordinator/etcd/etcd.h"
#include "registry_int.h"

static bool openssl_fails;

unsigned char *__real_HMAC(const EVP_MD *md, const void *key, int key_len, const unsigned char *d,
                           size_t n, unsigned char *md_out, unsigned int *md_len);
EVP_MAC_CTX *__real_EVP_MAC_CTX_dup(const EVP_MAC_CTX *src);
unsigned char *__wrap_HMAC(const EVP_MD *md, const void *key, int key_len, const unsigned char *d,
                           size_t n, unsigned char *md_out, unsigned int *md_len);
EVP_MAC_CTX *__wrap_EVP_MAC_CTX_dup(const EVP_MAC_CTX *src);

unsigned char *__wrap_HMAC(const EVP_MD *md, const void *key, int key_len, const unsigned char *d,
                           size_t n, unsigned char *md_out, unsigned int *md_len)
{
    return openssl_fails ? NULL : __real_HMAC(md, key, key_len, d, n, md_out, md_len);
}

EVP_MAC_CTX *__wrap_EVP_MAC_CTX_dup(const EVP_MAC_CTX *src)
{
    return openssl_fails ? NULL : __real_EVP_MAC_CTX_dup(src);
}

static void test_token_openssl_cannot_compute_fails_closed(void **state)
{
    static coord_registry_t r; /* only the lease key's fields are used */
    char token[COORD_LEASE_TOKEN_LEN + 1], again[COORD_LEASE_TOKEN_LEN + 1];
    char msg[256];
    (void)state;

    r.prefix = "/ferry/";
    memset(r.lease_key, 0x5a, sizeof(r.lease_key));
    atomic_store(&r.lease_key_ready, true);
    openssl_fails = false;
    assert_int_equal(registry_lease_token(&r, 42, token), FERRY_OK);
    assert_int_equal(strlen(token), COORD_LEASE_TOKEN_LEN);
    assert_int_equal(registry_lease_check(&r, "lease_id", 42, token, msg, sizeof(msg)), FERRY_OK);
    assert_int_equal(registry_lease_check(&r, "lease_id", 43, token, msg, sizeof(msg)),
                     FERRY_ERR_PERMISSION_DENIED);

    openssl_fails = true;
    memset(again, 'x', sizeof(again));
    assert_int_equal(registry_lease_token(&r, 42, again), FERRY_ERR_NO_MEMORY);
    assert_string_equal(again, "");
    assert_int_equal(registry_lease_check(&r, "lease_id", 42, token, msg, sizeof(msg)),
                     FERRY_ERR_UNAVAILABLE);
    assert_non_null(strstr(msg, "lease_token"));
    assert_non_null(strstr(msg, "retry"));
    openssl_fails = false;
    assert_int_equal(registry_lease_check(&r, "lease_id", 42, token, msg, sizeof(msg)), FERRY_OK);
}

typedef struct {
    coord_registry_t *r;
    int64_t deadline_ms; /* the caller's etcd deadline */
    ferry_status_t status;
    char msg[256];
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
} key_waiter_t;

static void *key_waiter_run(void *arg)
{
    key_waiter_t *w = arg;

    etcd_set_deadline(w->deadline_ms);
    w->status = registry_lease_ready(w->r, w->msg, sizeof(w->msg));
    pthread_mutex_lock(&w->lock);
    w->done = true;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

/* Another thread's load of the lease key never ends here (as with a frozen
 * etcd, for the client's whole timeout): a call waiting for it ends by its
 * own deadline, UNAVAILABLE and retryable, where it used to wait for the
 * load however long that took. */
static void test_wait_for_anothers_load_ends_by_the_deadline(void **state)
{
    static coord_registry_t r; /* only the lease key's fields are used */
    key_waiter_t w = {.r = &r, .deadline_ms = ferry__clock_ms(CLOCK_MONOTONIC) + 100};
    pthread_t thread;
    (void)state;

    r.prefix = "/ferry/";
    assert_int_equal(pthread_mutex_init(&r.lease_key_lock, NULL), 0);
    assert_int_equal(ferry__cond_init_clock(&r.lease_key_cond, CLOCK_MONOTONIC), 0);
    r.lease_key_loading = true; /* the other thread's load, in flight */
    pthread_mutex_init(&w.lock, NULL);
    ferry__cond_init_clock(&w.cond, CLOCK_MONOTONIC);
    assert_int_equal(pthread_create(&thread, NULL, key_waiter_run, &w), 0);

    struct timespec until = ferry__clock_in_ms(CLOCK_MONOTONIC, 10000);
    pthread_mutex_lock(&w.lock);
    while (!w.done && pthread_cond_timedwait(&w.cond, &w.lock, &until) == 0) {
    }
    bool done = w.done;
    pthread_mutex_unlock(&w.lock);
    /* Let a waiter that did not give up go, so that the thread can be
     * joined either way. */
    pthread_mutex_lock(&r.lease_key_lock);
    r.lease_key_loading = false;
    r.lease_key_round++;
    r.lease_key_status = FERRY_ERR_UNAVAILABLE;
    pthread_cond_broadcast(&r.lease_key_cond);
    pthread_mutex_unlock(&r.lease_key_lock);
    pthread_join(thread, NULL);

    assert_true(done); /* in 10 s, where its deadline was 100 ms away */
    assert_int_equal(w.status, FERRY_ERR_UNAVAILABLE);
    assert_non_null(strstr(w.msg, "lease key"));
    assert_non_null(strstr(w.msg, "deadline"));
    assert_non_null(strstr(w.msg, "retry"));
    pthread_cond_destroy(&w.cond);
    pthread_mutex_destroy(&w.lock);
    pthread_cond_destroy(&r.lease_key_cond);
    pthread_mutex_destroy(&r.lease_key_lock);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_token_openssl_cannot_compute_fails_closed),
        cmocka_unit_test(test_wait_for_anothers_load_ends_by_the_deadline),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
