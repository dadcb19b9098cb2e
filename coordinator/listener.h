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
 * So the coordinator looks at the kernel's table of TCP sockets
 * (/proc/self/net/tcp and tcp6, opened once at init and read from their
 * start at each look: a look must work while the process is out of
 * descriptors, which is when it matters). Its
 * own listeners are the listening sockets of its port whose inodes are
 * among its descriptors at init; a connection to one of their addresses
 * that waits in the accept queue (established or closed by its client,
 * and owned by no file: inode 0) at COORD_LISTENER_LOOKS looks in a row,
 * the same connection each time, has waited (COORD_LISTENER_LOOKS - 1) *
 * COORD_LISTENER_LOOK_MS, which a listener that accepts never leaves it.
 * Other processes' sockets on the same port (another address) do not
 * count. A look reads the listening sockets (listed first) and reads on
 * only while one of its own has connections waiting, so an idle
 * coordinator pays a few lines per look.
 *
 * Not thread-safe: one thread looks (main's).
 */
#ifndef FERRY_COORD_LISTENER_H
#define FERRY_COORD_LISTENER_H

#include <stdbool.h>
#include <stddef.h>

#include <ferry/status.h>

#define COORD_LISTENER_LOOK_MS 2000
#define COORD_LISTENER_LOOKS   5
/* Listening sockets of the port that are the coordinator's ("localhost:P"
 * binds two). */
#define COORD_LISTENER_MAX 4
/* Connections waiting that one look remembers: a stuck queue keeps its
 * connections, and the table lists them in the same order look after
 * look. */
#define COORD_LISTENER_TRACK 64

typedef struct {
    char addr[48]; /* the remote address and port, as the kernel's table writes it */
    int table;     /* 0: tcp, 1: tcp6 */
    int looks;     /* looks in a row that found it waiting */
} coord_listener_conn_t;

typedef struct {
    int tables[2]; /* descriptors of tcp, tcp6; -1: not there (no IPv6) */
    bool owns_tables;
    int port;
    struct {
        int table;
        unsigned long inode;
        char local[48]; /* its address and port, as the table writes it */
        bool wildcard;  /* bound to every address (0.0.0.0, ::) */
    } own[COORD_LISTENER_MAX];
    size_t n_own; /* 0: nothing to look at (a unix socket, or not found) */
    coord_listener_conn_t waiting[COORD_LISTENER_TRACK]; /* at the last look */
    size_t n_waiting;
} coord_listener_t;

/* Finds the process's listening sockets of `port` (0: none to look at, as
 * for a unix socket): FERRY_ERR_NOT_FOUND when there are none, or the
 * tables cannot be read (the look is then off, and the caller says so). */
ferry_status_t coord_listener_init(coord_listener_t *l, int port);

/* The same over tables given as descriptors (either may be -1; they stay
 * the caller's, read from their start at each look), with the process's
 * socket inodes given, for tests. */
ferry_status_t coord_listener_init_from(coord_listener_t *l, int port, int tcp, int tcp6,
                                        const unsigned long *inodes, size_t n_inodes);

/* One look. True when a connection has waited in one of the listeners'
 * accept queues at COORD_LISTENER_LOOKS looks in a row. */
bool coord_listener_stuck(coord_listener_t *l);

void coord_listener_close(coord_listener_t *l);

#endif /* FERRY_COORD_LISTENER_H */
