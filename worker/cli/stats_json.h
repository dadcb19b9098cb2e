/*
 * stats_json.h: ferry-worker's --stats-json: the connector's counters
 * (ferry_connector_get_stats) as one JSON object.
 */
#ifndef FERRY_WORKER_CLI_STATS_JSON_H
#define FERRY_WORKER_CLI_STATS_JSON_H

#include <ferry/ferry.h>

/* Writes one JSON object and a newline to path ("-": stdout):
 *   {"command": ..., "request_id": ..., "exit_code": N,
 *    "endpoints_created": N, ... (every scalar counter by its field name),
 *    "transfers": {"write"|"read"|"received"|"served":
 *                  {"complete"|"cancelled"|"errored": {"ops": N, "bytes": N}}}}
 * Counters are written as exact integers. Returns 0, or -1 with a message on
 * stderr naming the path. */
int ferry_worker_write_stats_json(const char *path, ferry_connector_t *conn, const char *command,
                                  const char *request_id, int exit_code);

#endif /* FERRY_WORKER_CLI_STATS_JSON_H */
