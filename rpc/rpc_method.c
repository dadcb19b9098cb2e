/*
 * rpc_method.c: the method table, gRPC path -> handler.
 *
 * Rows come from a protoc-c service descriptor plus the caller's table:
 * the descriptor gives the path ("/" + full service name + "/" + method
 * name) and the message descriptors, the caller's table gives the handler
 * and whether the method streams (the descriptor does not say).
 *
 * Threads: filled before the server starts, read-only afterwards, so
 * lookups need no lock.
 */
#include "rpc/rpc_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

static char *method_path(const ProtobufCServiceDescriptor *service, const char *name)
{
    size_t len = strlen(service->name) + strlen(name) + 3;
    char *path = malloc(len);
    if (path != NULL) {
        snprintf(path, len, "/%s/%s", service->name, name);
    }
    return path;
}

/* Checks one row of the caller's table without changing anything. */
static ferry_status_t method_check(const rpc_method_table_t *table,
                                   const ProtobufCServiceDescriptor *service,
                                   const rpc_method_t *method)
{
    char *path;
    bool dup;

    if (method->name == NULL || method->handler == NULL) {
        ferry_error("rpc: service %s: method row without name or handler", service->name);
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    if (protobuf_c_service_descriptor_get_method_by_name(service, method->name) == NULL) {
        ferry_error("rpc: service %s has no method %s", service->name, method->name);
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    path = method_path(service, method->name);
    if (path == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    dup = rpc__method_table_find(table, path) != NULL;
    if (dup) {
        ferry_error("rpc: method %s added twice", path);
    }
    free(path);
    return dup ? FERRY_ERR_INVALID_ARGUMENT : FERRY_OK;
}

static rpc_method_entry_t *method_entry_new(const ProtobufCServiceDescriptor *service,
                                            const rpc_method_t *method, void *arg)
{
    rpc_method_entry_t *row = calloc(1, sizeof(*row));
    if (row == NULL) {
        return NULL;
    }
    row->path = method_path(service, method->name);
    if (row->path == NULL) {
        free(row);
        return NULL;
    }
    row->desc = protobuf_c_service_descriptor_get_method_by_name(service, method->name);
    row->kind = method->kind;
    row->handler = method->handler;
    row->max_request_bytes = method->max_request_bytes;
    row->keep_request_bytes = method->keep_request_bytes;
    row->reply_refusable = method->reply_refusable;
    row->arg = arg;
    return row;
}

ferry_status_t rpc__method_table_add(rpc_method_table_t *table,
                                     const ProtobufCServiceDescriptor *service,
                                     const rpc_method_t *methods, size_t n_methods, void *arg)
{
    rpc_method_entry_t **rows;
    ferry_status_t status;
    size_t i;

    for (i = 0; i < n_methods; i++) {
        status = method_check(table, service, &methods[i]);
        if (status != FERRY_OK) {
            return status;
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(methods[j].name, methods[i].name) == 0) {
                ferry_error("rpc: method %s/%s listed twice", service->name, methods[i].name);
                return FERRY_ERR_INVALID_ARGUMENT;
            }
        }
    }
    rows = realloc(table->rows, (table->n_rows + n_methods) * sizeof(*rows));
    if (rows == NULL && table->n_rows + n_methods > 0) {
        return FERRY_ERR_NO_MEMORY;
    }
    table->rows = rows;
    for (i = 0; i < n_methods; i++) {
        rows[table->n_rows + i] = method_entry_new(service, &methods[i], arg);
        if (rows[table->n_rows + i] == NULL) {
            goto err_rows;
        }
    }
    table->n_rows += n_methods;
    return FERRY_OK;

err_rows:
    while (i-- > 0) {
        free(rows[table->n_rows + i]->path);
        free(rows[table->n_rows + i]);
    }
    return FERRY_ERR_NO_MEMORY;
}

rpc_method_entry_t *rpc__method_table_find(const rpc_method_table_t *table, const char *path)
{
    for (size_t i = 0; i < table->n_rows; i++) {
        if (strcmp(table->rows[i]->path, path) == 0) {
            return table->rows[i];
        }
    }
    return NULL;
}

void rpc__method_table_clear(rpc_method_table_t *table)
{
    for (size_t i = 0; i < table->n_rows; i++) {
        free(table->rows[i]->path);
        free(table->rows[i]);
    }
    free(table->rows);
    table->rows = NULL;
    table->n_rows = 0;
}
