/*
 * segments.c: remote keys that UCX maps into this process, and the ranges
 * an active operation may put to or get from through them.
 *
 * UCX 1.13's shared-memory transports (posix, sysv) map the passive side's
 * segment into this process when its key is unpacked, and translate a
 * remote address by a fixed offset with no bounds check (uct_mm_rkey_ptr);
 * a put is then a memcpy to the translation. Metadata is the passive side's
 * word, so without a check here a hostile passive side on the same host
 * could make a writer write into its own memory (an address outside the
 * segment, or a key naming one of this process's own segments, which UCX
 * then maps a second time: an alias), and a reader read from it. So:
 *
 * - A key that translates addresses (ucp_rkey_ptr answers) is unpacked again
 *   between two reads of /proc/self/maps: exactly one new shared mapping
 *   must appear, and it is the key's segment. A key with two such
 *   transports, or maps that changed meanwhile, is tried again, then
 *   refused (FERRY_ERR_UNAVAILABLE).
 * - That segment's file must not be mapped here already, unless it belongs
 *   to the same worker: a process-wide table records, by file (device and
 *   inode), the segments mapped for remote keys and those Ferry allocated
 *   here (ferry_mem_alloc, slot memory), each with its worker's UCX address,
 *   compared whole. So a second key of the same passive side, and a passive
 *   side that is a connector of this process, pass; the writer's own
 *   segments and UCX's own do not. (The address is the metadata's word, and
 *   UCX accepts one with bytes appended: a 64-bit unkeyed hash of it, as
 *   the table once kept, let such a suffix pass for the writer itself,
 *   audit-s32 L2.)
 * - Every range is translated at both ends, and both must lie inside the
 *   key's segment, contiguously (ferry__rkey_range_check).
 *
 * Cost: two reads of /proc/self/maps per key UCX maps, once per key and
 * peer (keys are cached: peer.c), one per allocation of our own; a copy
 * of the worker's address (a few hundred bytes) per segment recorded; two
 * ucp_rkey_ptr calls per range. Keys UCX does not map here (TCP, RDMA, CMA:
 * the target resolves the address, in its own process) cost one
 * ucp_rkey_ptr call per range.
 *
 * What this does not stop: a hostile passive side can still name another
 * process's segment that this process may open (same user), which UCX then
 * maps as new; the bytes then land inside that segment's bounds. And a
 * segment's owner can shrink its file under us: our next access to it
 * faults (SIGBUS), as with any shared memory shared with a hostile owner.
 *
 * Locking: table_lock guards the table; it is taken under a connector's
 * lock, never the other way round.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>

#include "common/log.h"
#include "worker/ferry_int.h"

/* How often a key is unpacked again when the maps changed under it. */
#define CLASSIFY_TRIES 3

/* One shared mapping of /proc/self/maps. */
typedef struct {
    uintptr_t start, end;
    uint64_t dev, ino, offset;
} map_t;

typedef struct {
    uint64_t dev, ino;
    uint8_t *worker; /* the UCX address of the worker it belongs to (malloc'd) */
    size_t worker_len;
    uintptr_t own; /* allocated here: its address (ferry__segment_drop_own); else 0 */
    unsigned refs;
} seg_t;

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static seg_t *table;
static size_t table_len, table_cap;

static bool seg_of_worker(const seg_t *s, const uint8_t *worker, size_t len)
{
    return s->worker_len == len && memcmp(s->worker, worker, len) == 0;
}

/* The shared mappings of this process (malloc'd, *n_p of them); false when
 * /proc/self/maps cannot be read. */
static bool maps_read(map_t **maps_p, size_t *n_p)
{
    FILE *f = fopen("/proc/self/maps", "re");
    char *line = NULL;
    size_t line_cap = 0, n = 0, cap = 0;
    map_t *maps = NULL;
    bool ok = f != NULL;

    while (ok && getline(&line, &line_cap, f) > 0) {
        unsigned long start, end;
        unsigned long long offset, ino;
        unsigned major, minor;
        char perms[5];
        map_t *grown;

        if (sscanf(line, "%lx-%lx %4s %llx %x:%x %llu", &start, &end, perms, &offset, &major,
                   &minor, &ino) != 7) {
            ok = false;
            break;
        }
        if (perms[3] != 's') {
            continue;
        }
        if (n == cap) {
            cap = cap == 0 ? 64 : cap * 2;
            grown = realloc(maps, cap * sizeof(*maps));
            if (grown == NULL) {
                ok = false;
                break;
            }
            maps = grown;
        }
        maps[n++] = (map_t){start, end, makedev(major, minor), ino, offset};
    }
    free(line);
    if (f != NULL) {
        fclose(f);
    }
    if (!ok) {
        free(maps);
        return false;
    }
    *maps_p = maps;
    *n_p = n;
    return true;
}

static bool same_mapping(const map_t *a, const map_t *b)
{
    return a->start == b->start && a->end == b->end && a->dev == b->dev && a->ino == b->ino &&
           a->offset == b->offset;
}

/* The entry of a remote key's segment (own: false) or of one allocated
 * here at own; table_lock held. */
static seg_t *table_find(uint64_t dev, uint64_t ino, uintptr_t own)
{
    for (size_t i = 0; i < table_len; i++) {
        if (table[i].dev == dev && table[i].ino == ino && table[i].own == own) {
            return &table[i];
        }
    }
    return NULL;
}

/* Whether the table has (dev, ino) for a worker other than the one at
 * worker[0..len) (*own_p: allocated here), and whether it has it at all
 * (*known_p); table_lock held. */
static bool table_other_worker(uint64_t dev, uint64_t ino, const uint8_t *worker, size_t len,
                               bool *known_p, bool *own_p)
{
    *known_p = false;
    for (size_t i = 0; i < table_len; i++) {
        if (table[i].dev == dev && table[i].ino == ino) {
            *known_p = true;
            if (!seg_of_worker(&table[i], worker, len)) {
                *own_p = table[i].own != 0;
                return true;
            }
        }
    }
    return false;
}

/* One more reference to (dev, ino) for the worker at worker[0..len) (a
 * remote key's entry is that worker's: table_other_worker passed);
 * table_lock held. */
static bool table_add(uint64_t dev, uint64_t ino, const uint8_t *worker, size_t len, uintptr_t own)
{
    seg_t *s = own == 0 ? table_find(dev, ino, 0) : NULL;
    uint8_t *copy;

    if (s != NULL) {
        s->refs++;
        return true;
    }
    if (table_len == table_cap) {
        size_t cap = table_cap == 0 ? 16 : table_cap * 2;
        seg_t *grown = realloc(table, cap * sizeof(*table));
        if (grown == NULL) {
            return false;
        }
        table = grown;
        table_cap = cap;
    }
    copy = malloc(len > 0 ? len : 1);
    if (copy == NULL) {
        return false;
    }
    memcpy(copy, worker, len);
    table[table_len++] = (seg_t){dev, ino, copy, len, own, 1};
    return true;
}

static void table_remove(seg_t *s)
{
    if (--s->refs == 0) {
        free(s->worker);
        *s = table[--table_len];
    }
}

/* Admits the segment (dev, ino) that a key of the worker at
 * worker[0..len) maps here (alias: the file was mapped here before the
 * key's unpack), or refuses it; table_lock held. */
static ferry_status_t table_take(uint64_t dev, uint64_t ino, const uint8_t *worker, size_t len,
                                 bool alias)
{
    bool known = false, own = false;

    if (table_other_worker(dev, ino, worker, len, &known, &own) || (alias && !known)) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "it names a shared-memory segment this process maps already, "
                           "%s, not one of the passive side's",
                           own ? "one of its own" : "another worker's or UCX's own");
    }
    if (!table_add(dev, ino, worker, len, 0)) {
        return ferry__fail(FERRY_ERR_NO_MEMORY, "out of memory for the segment table");
    }
    return FERRY_OK;
}

ferry_status_t ferry__segment_take(uint64_t dev, uint64_t ino, const uint8_t *worker, size_t len,
                                   bool alias)
{
    ferry_status_t status;

    pthread_mutex_lock(&table_lock);
    status = table_take(dev, ino, worker, len, alias);
    pthread_mutex_unlock(&table_lock);
    return status;
}

void ferry__segment_add_own(ferry_connector_t *c, const void *address)
{
    uintptr_t a = (uintptr_t)address;
    map_t *maps = NULL;
    size_t n = 0;

    if (!maps_read(&maps, &n)) {
        ferry_warn("connector %s: /proc/self/maps unreadable: keys of this process's own "
                   "segment at %p will be refused",
                   c->name, address);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (maps[i].start <= a && a < maps[i].end) {
            pthread_mutex_lock(&table_lock);
            if (!table_add(maps[i].dev, maps[i].ino, (const uint8_t *)c->address, c->address_len,
                           a)) {
                ferry_warn("connector %s: out of memory for the segment table", c->name);
            }
            pthread_mutex_unlock(&table_lock);
            break;
        }
    }
    free(maps);
}

void ferry__segment_drop_own(const void *address)
{
    pthread_mutex_lock(&table_lock);
    for (size_t i = 0; i < table_len; i++) {
        if (table[i].own != 0 && table[i].own == (uintptr_t)address) {
            table_remove(&table[i]);
            break;
        }
    }
    pthread_mutex_unlock(&table_lock);
}

void ferry__segment_release(ferry__rkey_t *rk)
{
    if (!rk->mapped) {
        return;
    }
    pthread_mutex_lock(&table_lock);
    seg_t *s = table_find(rk->seg_dev, rk->seg_ino, 0);
    if (s != NULL) {
        table_remove(s);
    }
    pthread_mutex_unlock(&table_lock);
    rk->mapped = false;
}

/* Unpacks rk again between two reads of the maps; the one shared mapping
 * that appeared, in *seg_p, and whether another mapping of its file was
 * there before (*alias_p). The key as first unpacked stays until the second
 * is: its attachment keeps the segment alive meanwhile (one its owner
 * removes in that moment would otherwise fail UCX's second attach, whose
 * error path kills the process: peer.c, sysv_part_attachable), and its
 * mapping, around `probe`, is in both reads, so neither new nor an alias.
 * table_lock held (so that no other connector's key of this process is
 * classified meanwhile). */
static ferry_status_t unpack_watched(ferry__peer_t *peer, ferry__rkey_t *rk, uint64_t probe,
                                     map_t *seg_p, bool *alias_p)
{
    map_t *before = NULL, *after = NULL;
    size_t n_before = 0, n_after = 0, fresh = 0;
    ucp_rkey_h first = rk->rkey;
    uintptr_t held = 0;
    void *local;
    ucs_status_t us;

    if (first != NULL && ucp_rkey_ptr(first, probe, &local) == UCS_OK) {
        held = (uintptr_t)local;
    }
    rk->rkey = NULL;
    if (!maps_read(&before, &n_before)) {
        rk->rkey = first;
        return ferry__fail(FERRY_ERR_UNAVAILABLE,
                           "its shared-memory segment cannot be checked: /proc/self/maps is "
                           "unreadable");
    }
    us = ucp_ep_rkey_unpack(peer->ep, rk->packed, &rk->rkey);
    if (us != UCS_OK) {
        rk->rkey = NULL;
        if (first != NULL) {
            ucp_rkey_destroy(first);
        }
        free(before);
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT, "remote key rejected by UCX: %s",
                           ucs_status_string(us));
    }
    if (!maps_read(&after, &n_after)) {
        if (first != NULL) {
            ucp_rkey_destroy(first);
        }
        free(before);
        return ferry__fail(FERRY_ERR_UNAVAILABLE,
                           "its shared-memory segment cannot be checked: /proc/self/maps is "
                           "unreadable");
    }
    if (first != NULL) {
        ucp_rkey_destroy(first);
    }
    for (size_t i = 0; i < n_after; i++) {
        bool old = false;
        for (size_t j = 0; j < n_before && !old; j++) {
            old = same_mapping(&after[i], &before[j]);
        }
        if (!old && fresh++ == 0) {
            *seg_p = after[i];
        }
    }
    *alias_p = false;
    for (size_t j = 0; fresh == 1 && j < n_before; j++) {
        bool first_mapping = held >= before[j].start && held < before[j].end;
        *alias_p = *alias_p ||
                   (!first_mapping && before[j].dev == seg_p->dev && before[j].ino == seg_p->ino);
    }
    free(before);
    free(after);
    return fresh == 1 ? FERRY_OK
                      : ferry__fail(FERRY_ERR_UNAVAILABLE,
                                    "UCX maps it here, but %zu shared mappings appeared as it "
                                    "was unpacked, not one",
                                    fresh);
}

ferry_status_t ferry__rkey_classify(ferry__peer_t *peer, ferry__rkey_t *rk, uint64_t probe)
{
    ferry_status_t status = FERRY_OK;
    bool alias = false;
    map_t seg = {0};
    void *local;

    if (ucp_rkey_ptr(rk->rkey, probe, &local) != UCS_OK) {
        return FERRY_OK; /* not mapped here: the target resolves addresses */
    }
    pthread_mutex_lock(&table_lock);
    for (int i = 0; i < CLASSIFY_TRIES; i++) {
        status = unpack_watched(peer, rk, probe, &seg, &alias);
        if (status != FERRY_ERR_UNAVAILABLE || rk->rkey == NULL) {
            break; /* retried: maps that changed meanwhile; not: what will not change */
        }
    }
    if (status == FERRY_OK) {
        status = table_take(seg.dev, seg.ino, peer->address, peer->address_len, alias);
    }
    pthread_mutex_unlock(&table_lock);
    if (status == FERRY_OK) {
        rk->mapped = true;
        rk->seg_start = seg.start;
        rk->seg_end = seg.end;
        rk->seg_dev = seg.dev;
        rk->seg_ino = seg.ino;
    }
    return status;
}

ferry_status_t ferry__rkey_range_check(const ferry__rkey_t *rk, uint64_t address, uint64_t length)
{
    void *first = NULL, *last = NULL;
    bool first_ok, last_ok;

    if (length == 0) {
        return FERRY_OK;
    }
    if (address + (length - 1) < address) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "[0x%" PRIx64 ", +%" PRIu64 ") wraps around the address space", address,
                           length);
    }
    first_ok = ucp_rkey_ptr(rk->rkey, address, &first) == UCS_OK;
    last_ok = ucp_rkey_ptr(rk->rkey, address + (length - 1), &last) == UCS_OK;
    if (!rk->mapped && !first_ok && !last_ok) {
        return FERRY_OK; /* not mapped here */
    }
    if (!rk->mapped || !first_ok || !last_ok || (uintptr_t)first < rk->seg_start ||
        (uintptr_t)last >= rk->seg_end || (uintptr_t)last - (uintptr_t)first != length - 1) {
        return ferry__fail(FERRY_ERR_INVALID_ARGUMENT,
                           "[0x%" PRIx64 ", +%" PRIu64 ") lies outside the shared-memory "
                           "segment its key maps here",
                           address, length);
    }
    return FERRY_OK;
}
