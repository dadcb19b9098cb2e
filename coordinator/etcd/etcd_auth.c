/*
 * etcd_auth.c: etcd's user/password auth. /v3/auth/authenticate gives a
 * token that every request sends raw in the Authorization header; etcd
 * forgets tokens after --auth-token-ttl (300 s by default) and then answers
 * code 16 / HTTP 401, on which etcd__call drops the token and comes here
 * again.
 *
 * States of client->token (guarded by client->auth_lock):
 *   NULL  no token yet, or the last one was rejected: authenticate first;
 *   ""    etcd said auth is not enabled: send requests without a token;
 *   text  the token to send.
 * token_gen counts new tokens, so that a thread whose old token was
 * rejected does not throw away a newer one another thread just fetched.
 *
 * Threads: any. Authentication itself runs under auth_lock, so a burst of
 * requests with an expired token authenticates once.
 */
#include "coordinator/etcd/etcd_int.h"

#include <stdlib.h>
#include <string.h>

#include "common/log.h"

/* Called with auth_lock held. */
static ferry_status_t etcd_authenticate(etcd_client_t *client, CURL *handle)
{
    cJSON *body = cJSON_CreateObject();
    if (body == NULL || cJSON_AddStringToObject(body, "name", client->username) == NULL ||
        cJSON_AddStringToObject(body, "password", client->password) == NULL) {
        cJSON_Delete(body);
        return FERRY_ERR_NO_MEMORY;
    }
    char *text = cJSON_PrintUnformatted(body);
    cJSON_Delete(body);
    if (text == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    cJSON *reply = NULL;
    ferry_status_t status = etcd__call_raw(client, handle, "/v3/auth/authenticate", text, NULL,
                                           ETCD_CALL_RETRY, &reply);
    free(text);
    const cJSON *token = cJSON_GetObjectItemCaseSensitive(reply, "token");
    if (status == FERRY_ERR_FAILED_PRECONDITION) {
        ferry_info("etcd: auth is not enabled on the server; sending no token");
        token = NULL;
        status = FERRY_OK;
    } else if (status == FERRY_ERR_INVALID_ARGUMENT) {
        ferry_error("etcd: authentication of user '%s' failed", client->username);
        status = FERRY_ERR_UNAUTHENTICATED;
    } else if (status == FERRY_OK && !cJSON_IsString(token)) {
        status = FERRY_ERR_PROTOCOL;
    }
    if (status == FERRY_OK) {
        free(client->token);
        client->token = strdup(token != NULL ? token->valuestring : "");
        client->token_gen++;
        status = client->token != NULL ? FERRY_OK : FERRY_ERR_NO_MEMORY;
    }
    cJSON_Delete(reply);
    return status;
}

ferry_status_t etcd__auth_token(etcd_client_t *client, CURL *handle, char **token_p,
                                unsigned long *gen_p)
{
    *token_p = NULL;
    *gen_p = 0;
    if (client->username == NULL) {
        return FERRY_OK;
    }
    pthread_mutex_lock(&client->auth_lock);
    ferry_status_t status = FERRY_OK;
    if (client->token == NULL) {
        status = etcd_authenticate(client, handle);
    }
    if (status == FERRY_OK) {
        *token_p = strdup(client->token);
        *gen_p = client->token_gen;
        status = *token_p != NULL ? FERRY_OK : FERRY_ERR_NO_MEMORY;
    }
    pthread_mutex_unlock(&client->auth_lock);
    return status;
}

void etcd__auth_invalidate(etcd_client_t *client, unsigned long gen)
{
    pthread_mutex_lock(&client->auth_lock);
    if (client->token_gen == gen) {
        free(client->token);
        client->token = NULL;
    }
    pthread_mutex_unlock(&client->auth_lock);
}
