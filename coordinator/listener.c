/*
 * listener.c: whether the coordinator's gRPC listener still accepts, from
 * the kernel's TCP table (listener.h says why and how).
 */
#include "listener.h"

#include <stdlib.h>
#include <string.h>

/* The kernel's TCP states, as its table writes them (include/net/tcp_states.h). */
#define TCP_ESTABLISHED_HEX 0x01
#define TCP_CLOSE_WAIT_HEX  0x08
#define TCP_LISTEN_HEX      0x0A

void coord_listener_init(coord_listener_t *l, int port)
{
    memset(l, 0, sizeof(*l));
    l->port = port;
}

/* The port of a table's address ("0100007F:1CE8", hex), or -1. */
static long address_port(const char *address)
{
    const char *colon = strrchr(address, ':');
    char *end = NULL;
    long port;

    if (colon == NULL || colon[1] == '\0') {
        return -1;
    }
    port = strtol(colon + 1, &end, 16);
    return *end == '\0' ? port : -1;
}

/* Adds to now[] (*n_p of COORD_LISTENER_TRACK) the connections of l's port
 * that wait in the accept queue, per table f. The listening sockets come
 * first: when none of the port's has connections waiting, the rest is
 * not read. */
static void scan(const coord_listener_t *l, FILE *f, coord_listener_conn_t *now, size_t *n_p)
{
    char line[512];
    bool waiting = false;

    if (fgets(line, sizeof(line), f) == NULL) {
        return; /* not even the header */
    }
    while (fgets(line, sizeof(line), f) != NULL) {
        char local[80], remote[sizeof(now->addr)];
        unsigned state;
        unsigned long tx_queue, rx_queue, inode;

        if (sscanf(line, "%*s %79s %47s %x %lx:%lx %*s %*s %*s %*s %lu", local, remote, &state,
                   &tx_queue, &rx_queue, &inode) != 6) {
            continue;
        }
        if (state != TCP_LISTEN_HEX && !waiting) {
            return; /* past the listening sockets, and nothing waits on ours */
        }
        if (address_port(local) != l->port) {
            continue;
        }
        if (state == TCP_LISTEN_HEX) {
            waiting = waiting || rx_queue > 0; /* a listener's rx_queue: its accept queue */
        } else if ((state == TCP_ESTABLISHED_HEX || state == TCP_CLOSE_WAIT_HEX) && inode == 0 &&
                   *n_p < COORD_LISTENER_TRACK) {
            /* No file yet: not accepted. */
            snprintf(now[(*n_p)++].addr, sizeof(now->addr), "%s", remote);
        }
    }
}

bool coord_listener_stuck_in(coord_listener_t *l, FILE *tcp, FILE *tcp6)
{
    coord_listener_conn_t now[COORD_LISTENER_TRACK];
    size_t n = 0;
    bool again = false;

    if (l->port <= 0) {
        return false;
    }
    if (tcp != NULL) {
        scan(l, tcp, now, &n);
    }
    if (tcp6 != NULL) {
        scan(l, tcp6, now, &n);
    }
    for (size_t i = 0; i < n && !again; i++) {
        for (size_t j = 0; j < l->n_waiting && !again; j++) {
            again = strcmp(now[i].addr, l->waiting[j].addr) == 0;
        }
    }
    memcpy(l->waiting, now, n * sizeof(now[0]));
    l->n_waiting = n;
    l->strikes = again ? l->strikes + 1 : 0;
    return l->strikes >= COORD_LISTENER_STRIKES;
}

bool coord_listener_stuck(coord_listener_t *l)
{
    FILE *tcp = fopen("/proc/self/net/tcp", "r");
    FILE *tcp6 = fopen("/proc/self/net/tcp6", "r"); /* absent without IPv6 */
    bool stuck = coord_listener_stuck_in(l, tcp, tcp6);

    if (tcp != NULL) {
        fclose(tcp);
    }
    if (tcp6 != NULL) {
        fclose(tcp6);
    }
    return stuck;
}
