/*
 * registry_lease.c: the lease secret. A lease is a capability (README,
 * "The API in brief", on lease tokens): whoever keeps it alive keeps its records alive, and a
 * claim's lease is the claimant's proof for Complete. So every use of a
 * lease the coordinator granted (KeepAlive, Register or Claim reusing it,
 * Complete on a claim) must present its lease token, which only the
 * grantee received (RegisterResponse, ClaimResponse).
 *
 *   lease_token = lowercase hex of HMAC-SHA256(K, "ferry-lease:<lease ID>")
 *
 * with the lease ID in decimal and K 32 random bytes that every replica of
 * one prefix shares, stored without a lease at <prefix>keys/lease. The
 * first replica to need K makes it with a create-if-absent transaction
 * (compare create_revision == 0); the others read the winner's in the
 * failure branch of the same transaction. Derived rather than stored, a
 * token costs no etcd read or write per call, any replica checks it, and it
 * outlives coordinator restarts for as long as its lease lives.
 *
 * Invariants: K never changes once this replica has read it; the
 * coordinator never writes <prefix>keys/lease again nor deletes it (an
 * operator who deletes it invalidates every outstanding lease token once
 * the replicas restart). Tokens are compared in constant time.
 *
 * Loading: at registry start, and again by the first call that needs K
 * while it is still missing (etcd was down at start); such calls answer
 * UNAVAILABLE until K is loaded.
 *
 * Cost: OpenSSL 3's one-shot HMAC() looks the algorithm up on every call;
 * a context keyed once when K is loaded and duplicated per token does not
 * (in isolation: 3.55 against 1.46 us a token on a quiet machine, 12.2
 * against 4.7 us on a busy one). One token per Register, Claim or
 * KeepAlive.
 *
 * Threads: any. One thread loads at a time, without `lease_key_lock` held
 * across the etcd transaction; others that need the key meanwhile wait on
 * `lease_key_cond` for that load's outcome (so a frozen etcd costs them one
 * timeout, not one each in turn), or until their own etcd deadline
 * (etcd_set_deadline) when that comes first. `lease_key_ready` (release/acquire)
 * publishes `lease_key` and `lease_mac`, which are never written after;
 * `lease_mac` is only duplicated (OpenSSL's const, read-only use, which
 * any number of threads may make at once).
 */
#include "registry_int.h"

#include <assert.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "common/log.h"
#include "common/text.h"

#define LEASE_KEY_SUFFIX "keys/lease"

/* One create-if-absent transaction: puts `fresh` unless the key exists,
 * and reads the key that is there otherwise. Copies the stored key into
 * `out`. */
static ferry_status_t lease_key_txn(coord_registry_t *r, const char *key,
                                    const uint8_t fresh[COORD_LEASE_KEY_LEN],
                                    uint8_t out[COORD_LEASE_KEY_LEN])
{
    size_t key_len = strlen(key);
    etcd_compare_t cmp = {.target = ETCD_CMP_CREATE,
                          .result = ETCD_CMP_EQUAL,
                          .key = key,
                          .key_len = key_len,
                          .number = 0};
    etcd_op_t put = {.type = ETCD_OP_PUT,
                     .key = key,
                     .key_len = key_len,
                     .value = fresh,
                     .value_len = COORD_LEASE_KEY_LEN};
    etcd_op_t get = {.type = ETCD_OP_GET, .key = key, .key_len = key_len};
    etcd_txn_result_t res = {0};
    ferry_status_t status = etcd_txn(r->etcd, &cmp, 1, &put, 1, &get, 1, &res);

    if (status != FERRY_OK) {
        return status;
    }
    if (res.succeeded) {
        memcpy(out, fresh, COORD_LEASE_KEY_LEN);
        ferry_info("registry: made the lease key %s", key);
    } else if (res.n_results == 1 && res.results[0].n_kvs == 1 &&
               res.results[0].kvs[0].value_len == COORD_LEASE_KEY_LEN) {
        memcpy(out, res.results[0].kvs[0].value, COORD_LEASE_KEY_LEN);
        ferry_info("registry: read the lease key %s", key);
    } else {
        ferry_error("registry: %s is not a %d-byte lease key; lease tokens cannot be checked", key,
                    COORD_LEASE_KEY_LEN);
        status = FERRY_ERR_PROTOCOL;
    }
    etcd_txn_result_free(&res);
    return status;
}

/* HMAC-SHA256 keyed with `key`, ready to be duplicated; NULL when OpenSSL
 * cannot make it. */
static EVP_MAC_CTX *lease_mac_new(const uint8_t key[COORD_LEASE_KEY_LEN])
{
    OSSL_PARAM params[] = {
        OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, "SHA256", 0),
        OSSL_PARAM_construct_end(),
    };
    EVP_MAC *mac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    EVP_MAC_CTX *ctx = mac != NULL ? EVP_MAC_CTX_new(mac) : NULL;

    EVP_MAC_free(mac); /* the context holds its own reference */
    if (ctx != NULL && EVP_MAC_init(ctx, key, COORD_LEASE_KEY_LEN, params) != 1) {
        EVP_MAC_CTX_free(ctx);
        ctx = NULL;
    }
    if (ctx == NULL) {
        ferry_warn("registry: no keyed HMAC context; lease tokens use the one-shot HMAC");
    }
    return ctx;
}

void registry_lease_cleanup(coord_registry_t *r)
{
    EVP_MAC_CTX_free(r->lease_mac);
    r->lease_mac = NULL;
    OPENSSL_cleanse(r->lease_key, sizeof(r->lease_key));
}

ferry_status_t registry_lease_key_load(coord_registry_t *r)
{
    uint8_t fresh[COORD_LEASE_KEY_LEN], key[COORD_LEASE_KEY_LEN];
    size_t path_len = strlen(r->prefix) + sizeof(LEASE_KEY_SUFFIX);
    char *path;
    ferry_status_t status = FERRY_OK;

    if (atomic_load_explicit(&r->lease_key_ready, memory_order_acquire)) {
        return FERRY_OK;
    }
    if (RAND_bytes(fresh, sizeof(fresh)) != 1) {
        ferry_error("registry: no randomness for the lease key");
        return FERRY_ERR_INTERNAL;
    }
    path = malloc(path_len);
    if (path == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    snprintf(path, path_len, "%s%s", r->prefix, LEASE_KEY_SUFFIX);
    pthread_mutex_lock(&r->lease_key_lock);
    if (r->lease_key_loading) {
        /* Another thread is asking etcd: take its outcome. */
        unsigned long round = r->lease_key_round;
        bool waited = true;
        while (r->lease_key_loading && r->lease_key_round == round && waited) {
            waited = etcd_cond_wait(&r->lease_key_cond, &r->lease_key_lock);
        }
        if (!waited) {
            /* The load goes on for the others; this caller stops waiting. */
            status = FERRY_ERR_TIMED_OUT;
        } else if (!atomic_load_explicit(&r->lease_key_ready, memory_order_acquire)) {
            status = r->lease_key_status != FERRY_OK ? r->lease_key_status : FERRY_ERR_UNAVAILABLE;
        }
    } else if (!atomic_load_explicit(&r->lease_key_ready, memory_order_acquire)) {
        /* The outcome is every waiting thread's: the load has etcd's
         * whole timeout, not what is left of this caller's. */
        int64_t caller = etcd_set_deadline(0);

        r->lease_key_loading = true;
        pthread_mutex_unlock(&r->lease_key_lock);
        status = lease_key_txn(r, path, fresh, key);
        etcd_set_deadline(caller);
        if (status == FERRY_OK) {
            memcpy(r->lease_key, key, sizeof(key));
            r->lease_mac = lease_mac_new(key);
            atomic_store_explicit(&r->lease_key_ready, true, memory_order_release);
        }
        pthread_mutex_lock(&r->lease_key_lock);
        r->lease_key_loading = false;
        r->lease_key_round++;
        r->lease_key_status = status;
        pthread_cond_broadcast(&r->lease_key_cond);
    }
    pthread_mutex_unlock(&r->lease_key_lock);
    OPENSSL_cleanse(fresh, sizeof(fresh));
    OPENSSL_cleanse(key, sizeof(key));
    free(path);
    return status;
}

ferry_status_t registry_lease_ready(coord_registry_t *r, char *msg, size_t cap)
{
    ferry_status_t status = registry_lease_key_load(r);

    if (status == FERRY_ERR_UNAVAILABLE || registry_etcd_refused(status)) {
        return registry_etcd_fail(r, status, msg, cap, "read of the lease key");
    }
    if (status == FERRY_ERR_TIMED_OUT) {
        return registry_fail(FERRY_ERR_UNAVAILABLE, msg, cap,
                             "etcd read of the lease key (another call's) did not end in the time "
                             "left before this call's deadline; retry");
    }
    if (status != FERRY_OK) {
        return registry_fail(FERRY_ERR_UNAVAILABLE, msg, cap,
                             "lease tokens cannot be checked yet: the lease key is not "
                             "loaded (%s)",
                             ferry_status_string(status));
    }
    return FERRY_OK;
}

ferry_status_t registry_lease_token(coord_registry_t *r, int64_t lease_id,
                                    char token[COORD_LEASE_TOKEN_LEN + 1])
{
    uint8_t mac[EVP_MAX_MD_SIZE];
    size_t mac_len = 0;
    char data[48];
    int n = snprintf(data, sizeof(data), "ferry-lease:%" PRId64, lease_id);
    EVP_MAC_CTX *ctx;

    assert(atomic_load_explicit(&r->lease_key_ready, memory_order_acquire));
    token[0] = '\0';
    ctx = r->lease_mac != NULL ? EVP_MAC_CTX_dup(r->lease_mac) : NULL;
    if (ctx == NULL || EVP_MAC_update(ctx, (const unsigned char *)data, (size_t)n) != 1 ||
        EVP_MAC_final(ctx, mac, &mac_len, sizeof(mac)) != 1) {
        unsigned int len = 0;
        mac_len = HMAC(EVP_sha256(), r->lease_key, COORD_LEASE_KEY_LEN, (const unsigned char *)data,
                       (size_t)n, mac, &len) != NULL
                      ? len
                      : 0;
    }
    EVP_MAC_CTX_free(ctx);
    if (mac_len * 2 != COORD_LEASE_TOKEN_LEN) {
        /* OpenSSL out of memory: no token, never a stale or partial one. */
        ferry_error("lease token: HMAC-SHA256 failed (%zu bytes)", mac_len);
        return FERRY_ERR_NO_MEMORY;
    }
    ferry_hex(token, mac, mac_len);
    OPENSSL_cleanse(mac, sizeof(mac));
    return FERRY_OK;
}

ferry_status_t registry_lease_check(coord_registry_t *r, const char *field, int64_t lease_id,
                                    const char *token, char *msg, size_t cap)
{
    char want[COORD_LEASE_TOKEN_LEN + 1];
    ferry_status_t status = registry_lease_ready(r, msg, cap);
    bool ok;

    if (status != FERRY_OK) {
        return status;
    }
    if (token == NULL || token[0] == '\0') {
        return registry_fail(FERRY_ERR_PERMISSION_DENIED, msg, cap,
                             "lease_token is required with %s", field);
    }
    if (registry_lease_token(r, lease_id, want) != FERRY_OK) {
        /* Not the caller's fault: a retry may pass, a "does not grant"
         * would tell it to give up a lease it holds. */
        return registry_fail(FERRY_ERR_UNAVAILABLE, msg, cap,
                             "cannot check lease_token now (the coordinator is out of memory); "
                             "retry");
    }
    ok = strlen(token) == COORD_LEASE_TOKEN_LEN &&
         CRYPTO_memcmp(want, token, COORD_LEASE_TOKEN_LEN) == 0;
    OPENSSL_cleanse(want, sizeof(want));
    if (!ok) {
        return registry_fail(FERRY_ERR_PERMISSION_DENIED, msg, cap,
                             "lease_token does not grant %s %lld", field, (long long)lease_id);
    }
    return FERRY_OK;
}
