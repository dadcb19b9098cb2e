/*
 * peers.h: how many of something each client host holds (the Watch
 * streams, the parked waits), so that one host cannot take every slot of a
 * bound all clients share (--max-watches-per-peer, --max-waits-per-peer;
 * audit-s30-grpc F3), or the bytes of the records each stores (the view's
 * tally, --stored-mib-per-peer).
 *
 * A host is the client's address without its port (rpc_call_peer_host):
 * every connection and source port of one host counts together, and
 * clients behind one NAT or proxy address count as one host.
 *
 * Invariant: a host has an entry exactly while its count is above 0, so
 * the table holds at most as many entries as things counted, however many
 * hosts came and went.
 *
 * Threads: not locked; its owner's lock guards it (the service's subs_lock
 * for Watch streams, waits_lock for waits, the registry's lock for the
 * view's and the Registers in flight).
 */
#ifndef FERRY_COORD_PEERS_H
#define FERRY_COORD_PEERS_H

#include <stddef.h>

#include <ferry/status.h>

typedef struct coord_peers coord_peers_t;

ferry_status_t coord_peers_create(coord_peers_t **peers_p);
/* NULL is a no-op. */
void coord_peers_destroy(coord_peers_t *peers);

/* Counts n more (above 0) for `host`, unless that takes it past `max` (0:
 * no bound): FERRY_ERR_RESOURCE_EXHAUSTED then, FERRY_ERR_NO_MEMORY for a
 * new entry that cannot be made; nothing is counted on failure. */
ferry_status_t coord_peers_add(coord_peers_t *peers, const char *host, size_t n, size_t max);
/* Takes back n that coord_peers_add counted for `host` (what it holds, at
 * most); its entry goes at 0. */
void coord_peers_sub(coord_peers_t *peers, const char *host, size_t n);
/* coord_peers_add and coord_peers_sub of one. */
ferry_status_t coord_peers_take(coord_peers_t *peers, const char *host, size_t max);
void coord_peers_give(coord_peers_t *peers, const char *host);
/* Forgets every host. */
void coord_peers_clear(coord_peers_t *peers);
/* What `host` holds (0 when it has no entry). */
size_t coord_peers_held(const coord_peers_t *peers, const char *host);
/* The hosts that hold any. */
size_t coord_peers_count(const coord_peers_t *peers);

#endif /* FERRY_COORD_PEERS_H */
