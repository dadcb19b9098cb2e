/*
 * fnv_collide.h: request IDs made to share one bucket of a table hashed
 * with plain (unkeyed) FNV-1a, as a client that knows the hash would make
 * them (audit-s33 H2). FNV-1a's low k bits depend only on the low k bits of
 * its state and of the input, and each step is invertible on them, so a
 * table of 4-character suffixes run backwards from the wanted low bits
 * gives, for any prefix, a suffix that lands it there: no search per ID.
 */
#ifndef FERRY_TESTS_FNV_COLLIDE_H
#define FERRY_TESTS_FNV_COLLIDE_H

#include <stddef.h>
#include <stdint.h>

/* The low bits the IDs share: every table of up to 2^20 buckets. */
#define FNV_COLLIDE_BITS 20

/* The standard 64-bit FNV-1a offset basis, and the one-digit-short one
 * coordinator/view.c used (audit-s33 N3). */
#define FNV_OFFSET_STANDARD 14695981039346656037ull
#define FNV_OFFSET_VIEW_OLD 1469598103934665603ull

/* 64-bit FNV-1a of s from `offset`. */
uint64_t fnv1a_from(uint64_t offset, const char *s);

/* n distinct IDs ("h-<i>-XXXX") whose FNV-1a from `offset` all end in the
 * same FNV_COLLIDE_BITS bits; malloc'd, each and the array (fnv_ids_free).
 * NULL: no memory. */
char **fnv_colliding_ids(uint64_t offset, size_t n);
void fnv_ids_free(char **ids, size_t n);

#endif /* FERRY_TESTS_FNV_COLLIDE_H */
