/*
 * registry_list.c: the registry's reads that are not about one operation:
 * keeping a lease alive (its grantee only: registry_lease.c), and listing
 * records (paged, filtered) straight from etcd, so a page is never older
 * than the store. See registry.h.
 */
#include "registry_int.h"

#include <stdlib.h>
#include <string.h>

#include "common/log.h"

#define KEY_MAX 512

ferry_status_t coord_keepalive(coord_registry_t *r, int64_t lease_id, const char *lease_token,
                               int64_t *ttl_p, char *msg, size_t cap)
{
    ferry_status_t status = registry_lease_check(r, "lease_id", lease_id, lease_token, msg, cap);

    if (status != FERRY_OK) {
        return status; /* not the grantee: etcd never hears of it */
    }
    status = etcd_lease_keepalive(r->etcd, lease_id, ttl_p);
    if (status == FERRY_ERR_NOT_FOUND) {
        return registry_fail(FERRY_ERR_LEASE_NOT_FOUND, msg, cap,
                             "lease_id %lld has expired or never existed", (long long)lease_id);
    }
    if (status != FERRY_OK) {
        return registry_etcd_fail(status, msg, cap, "lease keep-alive");
    }
    return FERRY_OK;
}

static bool list_wants(const Ferry__V1__ListRequest *req, const Ferry__V1__Operation *op)
{
    return (req->state == 0 || (int)req->state == (int)op->state) &&
           (req->kind == 0 || (int)req->kind == (int)op->kind);
}

static ferry_status_t list_append(Ferry__V1__ListResponse *out, Ferry__V1__Operation *op)
{
    Ferry__V1__Operation **ops =
        realloc(out->operations, (out->n_operations + 1) * sizeof(*out->operations));
    if (ops == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    coord_strip(op, false);
    ops[out->n_operations++] = op;
    out->operations = ops;
    return FERRY_OK;
}

ferry_status_t coord_list(coord_registry_t *r, const Ferry__V1__ListRequest *req,
                          Ferry__V1__ListResponse *out, char *msg, size_t cap)
{
    uint32_t page = req->page_size == 0 ? 100 : req->page_size;
    char start[KEY_MAX], scope[KEY_MAX];
    size_t start_len, scope_len;
    uint8_t *end = NULL;
    size_t end_len;
    bool more = true;
    ferry_status_t status;

    scope_len = registry_key(r, r->ops_prefix, req->request_id_prefix, scope, sizeof(scope));
    status = etcd_prefix_end(scope, scope_len, &end, &end_len);
    if (status != FERRY_OK) {
        return registry_fail(status, msg, cap, "request_id_prefix cannot be ranged");
    }
    start_len = registry_key(r, r->ops_prefix, req->page_token, start, sizeof(start));
    if (start_len < scope_len || memcmp(start, scope, scope_len) != 0) {
        memcpy(start, scope, scope_len + 1);
        start_len = scope_len;
    } else if (req->page_token[0] != '\0') {
        start[start_len++] = '\0'; /* the first key after the token */
    }
    while (more && out->n_operations < page) {
        etcd_range_t range = {0};
        status = etcd_get(r->etcd, start, start_len, end, end_len, page + 1, 0, &range);
        if (status != FERRY_OK) {
            free(end);
            return registry_etcd_fail(status, msg, cap, "list range");
        }
        out->header->revision = range.revision;
        more = range.more;
        for (size_t i = 0; i < range.n_kvs; i++) {
            Ferry__V1__Operation *op;
            if (out->n_operations == page) {
                more = true;
                break;
            }
            op = ferry__v1__operation__unpack(NULL, range.kvs[i].value_len, range.kvs[i].value);
            if (op == NULL || !list_wants(req, op) || list_append(out, op) != FERRY_OK) {
                if (op != NULL) {
                    ferry__v1__operation__free_unpacked(op, NULL);
                }
            }
            if (range.kvs[i].key_len + 1 < sizeof(start)) {
                memcpy(start, range.kvs[i].key, range.kvs[i].key_len);
                start[range.kvs[i].key_len] = '\0';
                start_len = range.kvs[i].key_len + 1;
            }
        }
        etcd_range_free(&range);
    }
    free(end);
    if (more && out->n_operations > 0) {
        out->next_page_token = strdup(out->operations[out->n_operations - 1]->request_id);
    }
    return FERRY_OK;
}

void coord_list_free(Ferry__V1__ListResponse *out)
{
    for (size_t i = 0; i < out->n_operations; i++) {
        ferry__v1__operation__free_unpacked(out->operations[i], NULL);
    }
    free(out->operations);
    out->operations = NULL;
    out->n_operations = 0;
    if (out->next_page_token != protobuf_c_empty_string) {
        free(out->next_page_token);
        out->next_page_token = (char *)protobuf_c_empty_string;
    }
}
