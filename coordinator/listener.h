/*
 * listener.h: whether the coordinator's gRPC listener still accepts.
 *
 * gRPC core 1.51 stops accepting for good after one accept fails with
 * anything but EAGAIN or ECONNABORTED (EMFILE, ENFILE, ENOBUFS, ENOMEM:
 * tcp_server_posix.cc logs "Failed accept4" and does not listen again),
 * and nothing it offers says so: the kernel still completes handshakes
 * into the accept queue, calls on connections already open go on, and so
 * does health over them. Bare TCP connects that send nothing fill the
 * descriptors that take it there, without a token (audit-s30-grpc F1).
 *
 * So the coordinator looks at the kernel's table of its port's TCP
 * sockets (/proc/self/net/tcp and tcp6): a connection still in the accept
 * queue (established or closed by its client, and owned by no file: inode
 * 0) at two looks in a row has waited a whole interval there, which a
 * listener that accepts never leaves it. Looks that find that at
 * COORD_LISTENER_STRIKES times in a row mean it no longer accepts. A look
 * reads the listening sockets (listed first) and reads on only while one
 * of the port's has connections waiting, so an idle coordinator pays a few
 * lines per look.
 *
 * Not thread-safe: one thread looks (main's).
 */
#ifndef FERRY_COORD_LISTENER_H
#define FERRY_COORD_LISTENER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#define COORD_LISTENER_LOOK_MS 2000
#define COORD_LISTENER_STRIKES 3
/* Connections waiting that one look remembers; more are not needed to
 * tell a stuck queue, whose oldest stay at its head. */
#define COORD_LISTENER_TRACK 64

typedef struct {
    char addr[48]; /* the remote address and port, as the kernel's table writes it */
} coord_listener_conn_t;

typedef struct {
    int port;
    coord_listener_conn_t waiting[COORD_LISTENER_TRACK]; /* at the last look */
    size_t n_waiting;
    int strikes; /* looks in a row that found a connection waiting since the one before */
} coord_listener_t;

/* port: the gRPC port (0: nothing to look at, as for a unix socket). */
void coord_listener_init(coord_listener_t *l, int port);

/* One look at /proc/self/net/tcp and tcp6. True once COORD_LISTENER_STRIKES
 * looks in a row have found a connection that was waiting at the look
 * before. */
bool coord_listener_stuck(coord_listener_t *l);

/* The same over tables given as streams (either may be NULL), for tests. */
bool coord_listener_stuck_in(coord_listener_t *l, FILE *tcp, FILE *tcp6);

#endif /* FERRY_COORD_LISTENER_H */
