/*
 * registry_list.c: the registry's calls that are not about one operation:
 * keeping a lease alive or ending it (its grantee only: registry_lease.c), and listing
 * records (paged, filtered) straight from etcd, so a page is never older
 * than the store. See registry.h.
 *
 * A List is one snapshot. Its first etcd read is at the latest revision and
 * every later read, on this page and on the pages its tokens lead to, at
 * that read's revision, which the header reports: so a client that watches
 * from header.revision + 1 sees every change the List did not (a read at a
 * later revision would report changes it never showed). The page token
 * carries the revision (coord_page_token_t, validate.h); once etcd has
 * compacted it the List cannot go on and answers OUT_OF_RANGE, as Watch
 * does for a start_revision it no longer holds.
 */
#include "registry_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

/* What etcd answered a call on the lease: one it no longer knows is
 * LEASE_NOT_FOUND (a code of its own on the wire: libferry makes a new
 * session lease on it). */
static ferry_status_t lease_answer(coord_registry_t *r, ferry_status_t status, int64_t lease_id,
                                   const char *what, char *msg, size_t cap)
{
    if (status == FERRY_ERR_NOT_FOUND) {
        return registry_fail(FERRY_ERR_LEASE_NOT_FOUND, msg, cap,
                             "lease_id %lld has expired or never existed", (long long)lease_id);
    }
    if (status != FERRY_OK) {
        return registry_etcd_fail(r, status, msg, cap, what);
    }
    return FERRY_OK;
}

ferry_status_t coord_keepalive(coord_registry_t *r, int64_t lease_id, const char *lease_token,
                               int64_t *ttl_p, char *msg, size_t cap)
{
    ferry_status_t status = registry_lease_check(r, "lease_id", lease_id, lease_token, msg, cap);

    if (status != FERRY_OK) {
        return status; /* not the grantee: etcd never hears of it */
    }
    return lease_answer(r, etcd_lease_keepalive(r->etcd, lease_id, ttl_p), lease_id,
                        "lease keep-alive", msg, cap);
}

ferry_status_t coord_revoke(coord_registry_t *r, int64_t lease_id, const char *lease_token,
                            char *msg, size_t cap)
{
    ferry_status_t status = registry_lease_check(r, "lease_id", lease_id, lease_token, msg, cap);

    if (status != FERRY_OK) {
        return status; /* not the grantee: etcd never hears of it */
    }
    return lease_answer(r, etcd_lease_revoke(r->etcd, lease_id), lease_id, "lease revoke", msg,
                        cap);
}

ferry_status_t coord_lease_precheck(coord_registry_t *r, int64_t lease_id, const char *lease_token,
                                    char *msg, size_t cap)
{
    if (!atomic_load_explicit(&r->lease_key_ready, memory_order_acquire)) {
        return FERRY_OK; /* loading it means etcd: the worker's job */
    }
    return registry_lease_check(r, "lease_id", lease_id, lease_token, msg, cap);
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

/* Where the next range read starts: on the heap, grown to fit any key etcd
 * returns, so that a key longer than any the registry builds (written by
 * something else under the prefix) still moves the page on. */
typedef struct {
    uint8_t *bytes;
    size_t len;
    size_t cap;
} list_start_t;

/* Sets start to key, or with after to the first key after it (key + NUL). */
static ferry_status_t list_start_set(list_start_t *start, const void *key, size_t len, bool after)
{
    size_t need = len + 1;

    if (need > start->cap) {
        uint8_t *bytes = realloc(start->bytes, need);
        if (bytes == NULL) {
            return FERRY_ERR_NO_MEMORY;
        }
        start->bytes = bytes;
        start->cap = need;
    }
    memcpy(start->bytes, key, len);
    start->len = len;
    if (after) {
        start->bytes[start->len++] = '\0';
    }
    return FERRY_OK;
}

/* The first key to read: just after page_token's request ID when it lies
 * in scope, else the start of scope; *revision_p the revision to read at
 * (0 without a token: the latest). */
static ferry_status_t list_first(coord_registry_t *r, const Ferry__V1__ListRequest *req,
                                 const registry_key_t *scope, list_start_t *start,
                                 int64_t *revision_p, char *msg, size_t cap)
{
    coord_page_token_t token;
    registry_key_t after;
    ferry_status_t status;

    *revision_p = 0;
    if (req->page_token[0] == '\0') {
        return list_start_set(start, scope->bytes, scope->len, false);
    }
    status = coord_validate_page_token("page_token", req->page_token, &token, msg, cap);
    if (status == FERRY_OK) {
        status = registry_key(r->ops_prefix, token.after, &after, msg, cap);
    }
    if (status != FERRY_OK) {
        return status;
    }
    *revision_p = token.revision;
    if (after.len < scope->len || memcmp(after.bytes, scope->bytes, scope->len) != 0) {
        return list_start_set(start, scope->bytes, scope->len, false);
    }
    return list_start_set(start, after.bytes, after.len, true);
}

/* The message for a range read at `revision` that etcd refused. A revision
 * from page_token that etcd has compacted, or has not reached (a forged
 * token, or one from another etcd), is the client's to fix by starting
 * again; one this call took from its own first read can only have been
 * compacted meanwhile. */
static ferry_status_t list_read_fail(coord_registry_t *r, ferry_status_t status, int64_t revision,
                                     bool from_token, char *msg, size_t cap)
{
    if (status == FERRY_ERR_OUT_OF_RANGE) {
        return registry_fail(FERRY_ERR_OUT_OF_RANGE, msg, cap,
                             "%s revision %lld has been compacted in etcd; start the List "
                             "again with an empty page_token",
                             from_token ? "page_token's" : "this List's", (long long)revision);
    }
    if (status == FERRY_ERR_INVALID_ARGUMENT && from_token) {
        return registry_fail(status, msg, cap,
                             "page_token's revision %lld is past etcd's current revision: not "
                             "a token a List returned; start the List again with an empty "
                             "page_token",
                             (long long)revision);
    }
    return registry_etcd_fail(r, status, msg, cap, "list range");
}

/* "<revision>@<last request ID listed>", as validate.h describes it. */
static char *list_token(int64_t revision, const char *after)
{
    int len = snprintf(NULL, 0, "%lld%c%s", (long long)revision, COORD_PAGE_TOKEN_SEP, after);
    char *token = len < 0 ? NULL : malloc((size_t)len + 1);

    if (token != NULL) {
        snprintf(token, (size_t)len + 1, "%lld%c%s", (long long)revision, COORD_PAGE_TOKEN_SEP,
                 after);
    }
    return token;
}

/* Appends the wanted records of one range to out, moves start past the
 * last key read, and keeps the request ID of the last record read in
 * last_id (a page token may go on from it). */
static ferry_status_t list_take(const Ferry__V1__ListRequest *req, const etcd_range_t *range,
                                uint32_t page, Ferry__V1__ListResponse *out, list_start_t *start,
                                char last_id[COORD_REQUEST_ID_MAX + 1], bool *more_p)
{
    for (size_t i = 0; i < range->n_kvs; i++) {
        Ferry__V1__Operation *op;
        if (out->n_operations == page) {
            *more_p = true;
            break;
        }
        op = ferry__v1__operation__unpack(NULL, range->kvs[i].value_len, range->kvs[i].value);
        if (op != NULL && strlen(op->request_id) <= COORD_REQUEST_ID_MAX) {
            memcpy(last_id, op->request_id, strlen(op->request_id) + 1);
        }
        if (op == NULL || !list_wants(req, op) || list_append(out, op) != FERRY_OK) {
            if (op != NULL) {
                ferry__v1__operation__free_unpacked(op, NULL);
            }
        }
        if (list_start_set(start, range->kvs[i].key, range->kvs[i].key_len, true) != FERRY_OK) {
            return FERRY_ERR_NO_MEMORY;
        }
    }
    return FERRY_OK;
}

/* Records one List reads from etcd at a time, so that the bytes it holds
 * (etcd's answer, which gRPC and the decoder each copy, then each record
 * decoded before its metadata is dropped) stay a few times LIST_READ_BYTES
 * whatever page_size asks: a page of 1000 records of 1 MiB of metadata each
 * was one 1 GB read, held three times over, times the reads in flight. From
 * the largest record the view holds now (the largest a record can be while
 * the view is not live); small records are still read a page at a time. At
 * least 2, so that a page still moves on. */
#define LIST_READ_BYTES ((size_t)2 << 20)

/* etcd reads one List call makes at most. A filter that skips most
 * records (or large records, read a few at a time) would otherwise make
 * one call scan the whole store, long after its caller's deadline, on a
 * read worker every other read waits for: past the bound the page goes
 * back as it is, shorter than page_size or even empty, with a token that
 * goes on from the last record read. */
#define LIST_READS_MAX 64

static int64_t list_read_keys(coord_registry_t *r)
{
    size_t largest = COORD_METADATA_MAX + 4096; /* the record around it */
    size_t n;

    pthread_mutex_lock(&r->lock);
    if (r->synced) {
        largest = view_largest(&r->view);
    }
    pthread_mutex_unlock(&r->lock);
    if (largest == 0) {
        largest = 1;
    }
    n = LIST_READ_BYTES / largest;
    return n < 2 ? 2 : n > COORD_PAGE_SIZE_MAX + 1 ? COORD_PAGE_SIZE_MAX + 1 : (int64_t)n;
}

ferry_status_t coord_list(coord_registry_t *r, const Ferry__V1__ListRequest *req,
                          Ferry__V1__ListResponse *out, char *msg, size_t cap)
{
    uint32_t page = req->page_size == 0 ? 100 : req->page_size;
    registry_key_t scope;
    list_start_t start = {0};
    uint8_t *end = NULL;
    size_t end_len;
    bool more = true;
    int64_t at;      /* the revision every read is at; 0 until the first */
    bool from_token; /* at came from page_token: the client's to check */
    ferry_status_t status = registry_key(r->ops_prefix, req->request_id_prefix, &scope, msg, cap);

    if (status != FERRY_OK) {
        return status;
    }
    status = etcd_prefix_end(scope.bytes, scope.len, &end, &end_len);
    if (status != FERRY_OK) {
        return registry_fail(status, msg, cap, "request_id_prefix cannot be ranged");
    }
    status = list_first(r, req, &scope, &start, &at, msg, cap);
    if (status == FERRY_ERR_NO_MEMORY) {
        registry_fail(status, msg, cap, "no memory for a list");
    }
    from_token = at != 0;
    int64_t read_keys = list_read_keys(r);
    char last_id[COORD_REQUEST_ID_MAX + 1] = "";
    for (int reads = 0; status == FERRY_OK && more && out->n_operations < page; reads++) {
        etcd_range_t range = {0};
        if (reads == LIST_READS_MAX) {
            break; /* more is still true: a token goes on from last_id */
        }
        /* One past what the page still takes tells whether there is more. */
        int64_t want = (int64_t)(page - out->n_operations) + 1;
        status = etcd_get(r->etcd, start.bytes, start.len, end, end_len,
                          want < read_keys ? want : read_keys, at, &range);
        if (status != FERRY_OK) {
            status = list_read_fail(r, status, at, from_token, msg, cap);
            break;
        }
        if (at == 0) {
            at = range.revision; /* the snapshot every later read uses */
        }
        out->header->revision = at;
        more = range.more;
        status = list_take(req, &range, page, out, &start, last_id, &more);
        if (status != FERRY_OK) {
            registry_fail(status, msg, cap, "no memory for a list");
        }
        etcd_range_free(&range);
    }
    free(start.bytes);
    free(end);
    if (status == FERRY_OK && more && last_id[0] != '\0') {
        out->next_page_token = list_token(at, last_id);
        if (out->next_page_token == NULL) {
            out->next_page_token = (char *)protobuf_c_empty_string;
            status = registry_fail(FERRY_ERR_NO_MEMORY, msg, cap, "no memory for a list");
        }
    }
    return status;
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
