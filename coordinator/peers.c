/*
 * peers.c: counts per client host (peers.h): a chained hash table of
 * host -> count, its buckets a power of two, doubled to keep about one
 * entry a bucket and never shrunk below what the most hosts at once
 * needed (a bucket is a pointer). The hash is keyed by the process's
 * secret key (common/keyed_hash.h): hosts are the clients' to pick (an
 * IPv6 client has many /64s from a /48), and with a hash known in advance
 * they could all be made to share one chain, every take and give under the
 * owner's lock then a walk of it (review-s30b L1).
 */
#include "peers.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/keyed_hash.h"

#define PEERS_MIN_BUCKETS 16

typedef struct peer_entry {
    struct peer_entry *next;
    size_t count; /* above 0 */
    char host[];
} peer_entry_t;

struct coord_peers {
    peer_entry_t **buckets;
    size_t n_buckets; /* a power of two */
    size_t n_entries;
};

static peer_entry_t **slot_of(const coord_peers_t *peers, const char *host)
{
    peer_entry_t **p = &peers->buckets[ferry__keyed_hash_str(host) & (peers->n_buckets - 1)];

    while (*p != NULL && strcmp((*p)->host, host) != 0) {
        p = &(*p)->next;
    }
    return p;
}

ferry_status_t coord_peers_create(coord_peers_t **peers_p)
{
    coord_peers_t *peers = calloc(1, sizeof(*peers));

    if (peers == NULL ||
        (peers->buckets = calloc(PEERS_MIN_BUCKETS, sizeof(*peers->buckets))) == NULL) {
        free(peers);
        return FERRY_ERR_NO_MEMORY;
    }
    peers->n_buckets = PEERS_MIN_BUCKETS;
    *peers_p = peers;
    return FERRY_OK;
}

void coord_peers_clear(coord_peers_t *peers)
{
    for (size_t i = 0; i < peers->n_buckets; i++) {
        while (peers->buckets[i] != NULL) {
            peer_entry_t *e = peers->buckets[i];
            peers->buckets[i] = e->next;
            free(e);
        }
    }
    peers->n_entries = 0;
}

void coord_peers_destroy(coord_peers_t *peers)
{
    if (peers == NULL) {
        return;
    }
    coord_peers_clear(peers);
    free(peers->buckets);
    free(peers);
}

/* Doubles the buckets when the entries outnumber them; keeps the old ones
 * (longer chains, still right) when there is no memory. */
static void grow(coord_peers_t *peers)
{
    size_t n = peers->n_buckets * 2;
    peer_entry_t **buckets;

    if (peers->n_entries <= peers->n_buckets || (buckets = calloc(n, sizeof(*buckets))) == NULL) {
        return;
    }
    for (size_t i = 0; i < peers->n_buckets; i++) {
        while (peers->buckets[i] != NULL) {
            peer_entry_t *e = peers->buckets[i];
            peer_entry_t **b = &buckets[ferry__keyed_hash_str(e->host) & (n - 1)];
            peers->buckets[i] = e->next;
            e->next = *b;
            *b = e;
        }
    }
    free(peers->buckets);
    peers->buckets = buckets;
    peers->n_buckets = n;
}

ferry_status_t coord_peers_add(coord_peers_t *peers, const char *host, size_t n, size_t max)
{
    peer_entry_t **p = slot_of(peers, host);
    size_t len;

    if (*p != NULL) {
        if (max != 0 && (n > max || (*p)->count > max - n)) {
            return FERRY_ERR_RESOURCE_EXHAUSTED;
        }
        (*p)->count += n;
        return FERRY_OK;
    }
    if (n == 0) {
        return FERRY_OK; /* an entry holds more than 0 */
    }
    if (max != 0 && n > max) {
        return FERRY_ERR_RESOURCE_EXHAUSTED;
    }
    len = strlen(host);
    *p = malloc(sizeof(**p) + len + 1);
    if (*p == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    (*p)->next = NULL;
    (*p)->count = n;
    memcpy((*p)->host, host, len + 1);
    peers->n_entries++;
    grow(peers);
    return FERRY_OK;
}

void coord_peers_sub(coord_peers_t *peers, const char *host, size_t n)
{
    peer_entry_t **p = slot_of(peers, host);
    peer_entry_t *e = *p;

    if (e == NULL) {
        return; /* never counted: a caller's bug, or an add that had no memory */
    }
    e->count -= n < e->count ? n : e->count;
    if (e->count == 0) {
        *p = e->next;
        free(e);
        peers->n_entries--;
    }
}

ferry_status_t coord_peers_take(coord_peers_t *peers, const char *host, size_t max)
{
    return coord_peers_add(peers, host, 1, max);
}

void coord_peers_give(coord_peers_t *peers, const char *host)
{
    coord_peers_sub(peers, host, 1);
}

size_t coord_peers_held(const coord_peers_t *peers, const char *host)
{
    const peer_entry_t *e = *slot_of(peers, host);

    return e != NULL ? e->count : 0;
}

size_t coord_peers_count(const coord_peers_t *peers)
{
    return peers->n_entries;
}
