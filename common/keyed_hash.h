/*
 * keyed_hash.h: the hash of the coordinator's tables whose keys clients
 * choose (request IDs in the view and the parked waits, client hosts in
 * peers.c): SipHash-1-3 under a secret key drawn once per process. With an
 * unkeyed hash (FNV-1a, whose low k bits depend only on the low k bits of
 * its state) a client can make any number of keys share one bucket, and
 * every insert and look-up under the table's lock then walks all of them
 * (review-s30b L1, audit-s33 H2). Without the key nobody outside the
 * process can tell which keys collide.
 *
 * Threads: any; the key is drawn once (pthread_once) and never changes, so
 * a hash stays the same for the process's life.
 */
#ifndef FERRY_COMMON_KEYED_HASH_H
#define FERRY_COMMON_KEYED_HASH_H

#include <stddef.h>
#include <stdint.h>

/* SipHash-1-3 of len bytes of data under the 16-byte key (its first 8
 * bytes k0, the next k1, little-endian, as the reference reads them). */
uint64_t ferry__siphash13(const uint8_t key[16], const void *data, size_t len);

/* The NUL-terminated s hashed under this process's secret key (from
 * getrandom; should that fail, from the clocks, the process ID and
 * addresses, which still differ between processes but are guessable). */
uint64_t ferry__keyed_hash_str(const char *s);

#endif /* FERRY_COMMON_KEYED_HASH_H */
