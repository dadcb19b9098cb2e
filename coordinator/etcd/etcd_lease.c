/*
 * etcd_lease.c: lease grant, keep-alive and revoke.
 *
 * The gateway's /v3/lease/keepalive is a stream endpoint that answers one
 * request per POST inside {"result": ...}. For a lease etcd no longer has
 * it still answers HTTP 200, only without TTL: that is FERRY_ERR_NOT_FOUND.
 * Revoke of an unknown lease is HTTP 404 / code 5: FERRY_ERR_NOT_FOUND too.
 *
 * Threads: any; no state of its own.
 */
#include "coordinator/etcd/etcd_int.h"

#include <inttypes.h>

#include "common/log.h"

/* Sends {"<field>": "<number>"} to path; returns the reply. Keep-alive,
 * revoke and time-to-live may be sent twice (flags ETCD_CALL_RETRY): a
 * second keep-alive only renews again, and a second revoke finds the lease
 * gone; so may a grant with its ID (etcd_lease_grant). */
static ferry_status_t etcd_lease_call(etcd_client_t *client, const char *path, const char *field,
                                      int64_t number, unsigned flags, cJSON **reply_p)
{
    cJSON *body = cJSON_CreateObject();
    ferry_status_t status =
        body != NULL ? etcd__json_add_int64(body, field, number) : FERRY_ERR_NO_MEMORY;
    if (status == FERRY_OK) {
        status = etcd__call_flags(client, path, body, flags, reply_p);
    }
    cJSON_Delete(body);
    return status;
}

/* Whether lease `id` exists now with at least ttl_s granted (etcd may
 * grant more than asked, never less); *left_p: its TTL left. */
static bool lease_granted(etcd_client_t *client, int64_t id, int64_t ttl_s, int64_t *left_p)
{
    cJSON *reply = NULL;
    int64_t left = -1, granted = 0;
    bool ok = etcd_lease_call(client, "/v3/lease/timetolive", "ID", id, ETCD_CALL_RETRY, &reply) ==
                  FERRY_OK &&
              etcd__json_int64(reply, "TTL", &left) == FERRY_OK &&
              etcd__json_int64(reply, "grantedTTL", &granted) == FERRY_OK && left > 0 &&
              granted >= ttl_s;

    cJSON_Delete(reply);
    *left_p = left;
    return ok;
}

ferry_status_t etcd_lease_grant(etcd_client_t *client, int64_t ttl_s, int64_t id, int64_t *lease_p,
                                int64_t *granted_ttl_p)
{
    if (client == NULL || ttl_s <= 0 || id < 0 || lease_p == NULL) {
        return FERRY_ERR_MISUSE;
    }
    cJSON *reply = NULL;
    cJSON *body = cJSON_CreateObject();
    ferry_status_t status =
        body != NULL ? etcd__json_add_int64(body, "TTL", ttl_s) : FERRY_ERR_NO_MEMORY;
    if (status == FERRY_OK && id != 0) {
        status = etcd__json_add_int64(body, "ID", id);
    }
    /* With its ID chosen, a grant may be sent again: to the next member
     * when one does not answer within ETCD_ATTEMPT_MS (frozen, or a
     * follower whose leader died), as a read is, and by libcurl on a
     * connection that broke. A try that finds the ID taken has found an
     * earlier try's lease (the caller draws the ID at random from 2^63:
     * another's is not to be expected), which it takes when it has at
     * least the TTL asked. */
    if (status == FERRY_OK) {
        status = etcd__call_flags(client, "/v3/lease/grant", body, id != 0 ? ETCD_CALL_RETRY : 0,
                                  &reply);
    }
    cJSON_Delete(body);
    int64_t lease = 0;
    int64_t ttl = 0;
    if (status == FERRY_ERR_FAILED_PRECONDITION && id != 0 &&
        lease_granted(client, id, ttl_s, &ttl)) {
        *lease_p = id;
        if (granted_ttl_p != NULL) {
            *granted_ttl_p = ttl;
        }
        return FERRY_OK;
    }
    if (status == FERRY_OK) {
        status = etcd__json_int64(reply, "ID", &lease);
    }
    if (status == FERRY_OK) {
        status = etcd__json_int64(reply, "TTL", &ttl);
    }
    if (status == FERRY_OK && (lease == 0 || (id != 0 && lease != id))) {
        etcd__set_error("lease grant: reply without the ID asked for");
        status = FERRY_ERR_PROTOCOL;
    }
    if (status == FERRY_OK) {
        *lease_p = lease;
        if (granted_ttl_p != NULL) {
            *granted_ttl_p = ttl;
        }
    }
    cJSON_Delete(reply);
    return status;
}

ferry_status_t etcd_lease_keepalive(etcd_client_t *client, int64_t lease, int64_t *ttl_p)
{
    if (client == NULL || lease == 0) {
        return FERRY_ERR_MISUSE;
    }
    cJSON *reply = NULL;
    ferry_status_t status =
        etcd_lease_call(client, "/v3/lease/keepalive", "ID", lease, ETCD_CALL_RETRY, &reply);
    int64_t ttl = 0;
    if (status == FERRY_OK) {
        status = etcd__parse_keepalive(reply, &ttl);
    }
    if (status == FERRY_ERR_NOT_FOUND) {
        etcd__set_error("lease %" PRIx64 " is gone", (uint64_t)lease);
        ferry_debug("etcd: lease %" PRIx64 " is gone", (uint64_t)lease);
    }
    if (status == FERRY_OK && ttl_p != NULL) {
        *ttl_p = ttl;
    }
    cJSON_Delete(reply);
    return status;
}

ferry_status_t etcd_lease_revoke(etcd_client_t *client, int64_t lease)
{
    if (client == NULL || lease == 0) {
        return FERRY_ERR_MISUSE;
    }
    cJSON *reply = NULL;
    /* etcd 3.4 serves both /v3/lease/revoke and the older /v3/kv/lease/revoke. */
    ferry_status_t status =
        etcd_lease_call(client, "/v3/lease/revoke", "ID", lease, ETCD_CALL_RETRY, &reply);
    cJSON_Delete(reply);
    return status;
}
