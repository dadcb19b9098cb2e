/*
 * stats_json.c: see stats_json.h. Built with cJSON; 64-bit counters go in as
 * raw numbers, since cJSON's numbers are doubles and would round them past
 * 2^53.
 */
#include "stats_json.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

static bool add_u64(cJSON *obj, const char *name, uint64_t value)
{
    char text[24];

    snprintf(text, sizeof(text), "%" PRIu64, value);
    return cJSON_AddRawToObject(obj, name, text) != NULL;
}

static cJSON *transfers_json(const ferry_connector_stats_t *st)
{
    cJSON *all = cJSON_CreateObject();
    bool ok = all != NULL;

    for (int d = 0; ok && d < FERRY_DIRECTION_COUNT; d++) {
        cJSON *dir = cJSON_AddObjectToObject(all, ferry_direction_name((ferry_direction_t)d));
        ok = dir != NULL;
        for (int o = 0; ok && o < FERRY_OUTCOME_COUNT; o++) {
            cJSON *cell = cJSON_AddObjectToObject(dir, ferry_outcome_name((ferry_outcome_t)o));
            ok = cell != NULL && add_u64(cell, "ops", st->transfers[d][o].ops) &&
                 add_u64(cell, "bytes", st->transfers[d][o].bytes);
        }
    }
    if (!ok) {
        cJSON_Delete(all);
        return NULL;
    }
    return all;
}

static cJSON *stats_json(ferry_connector_t *conn, const char *command, const char *request_id,
                         int exit_code)
{
    ferry_connector_stats_t st;
    cJSON *root = cJSON_CreateObject();
    cJSON *transfers;

    ferry_connector_get_stats(conn, &st);
    if (root == NULL || cJSON_AddStringToObject(root, "command", command) == NULL ||
        cJSON_AddStringToObject(root, "request_id", request_id) == NULL ||
        cJSON_AddNumberToObject(root, "exit_code", exit_code) == NULL ||
        !add_u64(root, "endpoints_created", st.endpoints_created) ||
        !add_u64(root, "endpoint_cache_hits", st.endpoint_cache_hits) ||
        !add_u64(root, "rkeys_unpacked", st.rkeys_unpacked) ||
        !add_u64(root, "rkey_cache_hits", st.rkey_cache_hits) ||
        !add_u64(root, "notices_received", st.notices_received) ||
        !add_u64(root, "claims_refused", st.claims_refused) ||
        !add_u64(root, "notices_ignored", st.notices_ignored) ||
        !add_u64(root, "peers_cached", st.peers_cached) ||
        !add_u64(root, "mem_maps", st.mem_maps) ||
        !add_u64(root, "messages_dropped", st.messages_dropped) ||
        (transfers = transfers_json(&st)) == NULL) {
        cJSON_Delete(root);
        return NULL;
    }
    cJSON_AddItemToObject(root, "transfers", transfers);
    return root;
}

int ferry_worker_write_stats_json(const char *path, ferry_connector_t *conn, const char *command,
                                  const char *request_id, int exit_code)
{
    cJSON *root = stats_json(conn, command, request_id, exit_code);
    char *text = root != NULL ? cJSON_PrintUnformatted(root) : NULL;
    bool to_stdout = strcmp(path, "-") == 0;
    FILE *f;
    int rc = 0;

    cJSON_Delete(root);
    if (text == NULL) {
        fprintf(stderr, "ferry-worker: --stats-json: no memory\n");
        return -1;
    }
    f = to_stdout ? stdout : fopen(path, "w");
    if (f == NULL) {
        fprintf(stderr, "ferry-worker: --stats-json %s: %s\n", path, strerror(errno));
        free(text);
        return -1;
    }
    if (fprintf(f, "%s\n", text) < 0 || fflush(f) != 0) {
        fprintf(stderr, "ferry-worker: --stats-json %s: %s\n", path, strerror(errno));
        rc = -1;
    }
    if (!to_stdout && fclose(f) != 0 && rc == 0) {
        fprintf(stderr, "ferry-worker: --stats-json %s: %s\n", path, strerror(errno));
        rc = -1;
    }
    free(text);
    return rc;
}
