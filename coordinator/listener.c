/*
 * listener.c: whether the coordinator's gRPC listener still accepts, from
 * the kernel's TCP table (listener.h says why and how).
 */
#include "listener.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The kernel's TCP states, as its table writes them (include/net/tcp_states.h). */
#define TCP_ESTABLISHED_HEX 0x01
#define TCP_CLOSE_WAIT_HEX  0x08
#define TCP_LISTEN_HEX      0x0A

/* Inodes of the process's sockets that init looks at: its descriptors
 * when the server has just started are a few dozen. */
#define LISTENER_INODES_MAX 4096

typedef struct {
    char local[48], remote[48];
    unsigned state;
    unsigned long rx_queue, inode;
} table_line_t;

/* Reads a table from its start, a line at a time, straight from its
 * descriptor: stdio would answer a second look from what it buffered at
 * the first. */
typedef struct {
    int fd;
    char buf[65536];
    size_t len, pos; /* buf[pos..len) not yet taken */
    bool eof;
} table_reader_t;

static table_reader_t readers[2]; /* main's thread only */

static bool reader_start(table_reader_t *r, int fd)
{
    r->fd = fd;
    r->len = r->pos = 0;
    r->eof = false;
    return fd >= 0 && lseek(fd, 0, SEEK_SET) == 0;
}

/* The next line (without its newline), or NULL at the end. A line longer
 * than the buffer, which the kernel never writes, is skipped. */
static char *reader_line(table_reader_t *r)
{
    for (;;) {
        char *nl = memchr(r->buf + r->pos, '\n', r->len - r->pos);
        if (nl != NULL) {
            char *line = r->buf + r->pos;
            *nl = '\0';
            r->pos = (size_t)(nl - r->buf) + 1;
            return line;
        }
        if (r->eof) {
            return NULL; /* a last line without its newline is not whole */
        }
        if (r->pos > 0) {
            memmove(r->buf, r->buf + r->pos, r->len - r->pos);
            r->len -= r->pos;
            r->pos = 0;
        }
        if (r->len == sizeof(r->buf)) {
            r->len = 0; /* drop a line too long to hold */
        }
        ssize_t got = read(r->fd, r->buf + r->len, sizeof(r->buf) - r->len);
        if (got <= 0) {
            r->eof = true;
        } else {
            r->len += (size_t)got;
        }
    }
}

/* One line of a table; false at its end. *ok_p false for a line that does
 * not read as one (the header among them). */
static bool read_line(table_reader_t *r, table_line_t *out, bool *ok_p)
{
    const char *line = reader_line(r);
    unsigned long tx_queue;

    if (line == NULL) {
        return false;
    }
    *ok_p = sscanf(line, "%*s %47s %47s %x %lx:%lx %*s %*s %*s %*s %lu", out->local, out->remote,
                   &out->state, &tx_queue, &out->rx_queue, &out->inode) == 6;
    return true;
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

/* Bound to every address: all zeros before the port. */
static bool address_wildcard(const char *address)
{
    const char *colon = strrchr(address, ':');

    for (const char *p = address; p < colon; p++) {
        if (*p != '0') {
            return false;
        }
    }
    return colon != NULL;
}

ferry_status_t coord_listener_init_from(coord_listener_t *l, int port, int tcp, int tcp6,
                                        const unsigned long *inodes, size_t n_inodes)
{
    memset(l, 0, sizeof(*l));
    l->port = port;
    l->tables[0] = tcp;
    l->tables[1] = tcp6;
    for (int t = 0; t < 2 && port > 0; t++) {
        table_reader_t *r = &readers[t];
        table_line_t line;
        bool ok;

        if (!reader_start(r, l->tables[t])) {
            continue;
        }
        while (l->n_own < COORD_LISTENER_MAX && read_line(r, &line, &ok)) {
            if (!ok) {
                continue; /* the header */
            }
            if (line.state != TCP_LISTEN_HEX) {
                break; /* past the listening sockets */
            }
            bool own = false;
            for (size_t i = 0; i < n_inodes && !own; i++) {
                own = inodes[i] == line.inode;
            }
            if (own && address_port(line.local) == port) {
                l->own[l->n_own].table = t;
                l->own[l->n_own].inode = line.inode;
                snprintf(l->own[l->n_own].local, sizeof(l->own[0].local), "%s", line.local);
                l->own[l->n_own].wildcard = address_wildcard(line.local);
                l->n_own++;
            }
        }
    }
    return l->n_own > 0 ? FERRY_OK : FERRY_ERR_NOT_FOUND;
}

/* The inodes of the process's sockets ("socket:[N]" descriptors). */
static size_t own_socket_inodes(unsigned long *inodes, size_t cap)
{
    DIR *dir = opendir("/proc/self/fd");
    struct dirent *entry;
    size_t n = 0;

    if (dir == NULL) {
        return 0;
    }
    while (n < cap && (entry = readdir(dir)) != NULL) {
        char path[64], target[64];
        ssize_t len;

        snprintf(path, sizeof(path), "/proc/self/fd/%.32s", entry->d_name);
        len = readlink(path, target, sizeof(target) - 1);
        if (len > 0) {
            target[len] = '\0';
            if (sscanf(target, "socket:[%lu]", &inodes[n]) == 1) {
                n++;
            }
        }
    }
    closedir(dir);
    return n;
}

ferry_status_t coord_listener_init(coord_listener_t *l, int port)
{
    static unsigned long inodes[LISTENER_INODES_MAX]; /* main's thread only */
    int tcp = port > 0 ? open("/proc/self/net/tcp", O_RDONLY | O_CLOEXEC) : -1;
    int tcp6 = port > 0 ? open("/proc/self/net/tcp6", O_RDONLY | O_CLOEXEC) : -1; /* no IPv6 */
    size_t n = port > 0 ? own_socket_inodes(inodes, LISTENER_INODES_MAX) : 0;
    ferry_status_t status = coord_listener_init_from(l, port, tcp, tcp6, inodes, n);

    l->owns_tables = true;
    if (status != FERRY_OK) {
        coord_listener_close(l);
    }
    return status;
}

void coord_listener_close(coord_listener_t *l)
{
    for (int t = 0; t < 2; t++) {
        if (l->owns_tables && l->tables[t] >= 0) {
            close(l->tables[t]);
        }
        l->tables[t] = -1;
    }
    l->n_own = 0;
}

/* Which of l's listeners a table line's socket belongs to (its local
 * address), or -1. */
static int own_listener(const coord_listener_t *l, int table, const char *local)
{
    for (size_t i = 0; i < l->n_own; i++) {
        if (l->own[i].table == table && (strcmp(l->own[i].local, local) == 0 ||
                                         (l->own[i].wildcard && address_port(local) == l->port))) {
            return (int)i;
        }
    }
    return -1;
}

/* Adds to now[] (*n_p of COORD_LISTENER_TRACK) the connections waiting in
 * the accept queues of l's listeners in table t. The listening sockets
 * come first: when none of l's has connections waiting, the rest is not
 * read. */
static void scan(const coord_listener_t *l, int t, coord_listener_conn_t *now, size_t *n_p)
{
    table_reader_t *r = &readers[t];
    table_line_t line;
    bool waiting = false, ok;

    if (!reader_start(r, l->tables[t])) {
        return;
    }
    while (read_line(r, &line, &ok)) {
        if (!ok) {
            continue;
        }
        if (line.state == TCP_LISTEN_HEX) {
            for (size_t i = 0; i < l->n_own; i++) {
                /* A listener's rx_queue: its accept queue. */
                waiting = waiting || (l->own[i].inode == line.inode && line.rx_queue > 0);
            }
            continue;
        }
        if (!waiting) {
            return; /* past the listening sockets, and nothing waits on ours */
        }
        if ((line.state == TCP_ESTABLISHED_HEX || line.state == TCP_CLOSE_WAIT_HEX) &&
            line.inode == 0 && own_listener(l, t, line.local) >= 0 && *n_p < COORD_LISTENER_TRACK) {
            /* No file yet: not accepted. */
            snprintf(now[*n_p].addr, sizeof(now->addr), "%s", line.remote);
            now[*n_p].table = t;
            now[*n_p].looks = 1;
            (*n_p)++;
        }
    }
}

bool coord_listener_stuck(coord_listener_t *l)
{
    coord_listener_conn_t now[COORD_LISTENER_TRACK];
    size_t n = 0;
    bool stuck = false;

    if (l->n_own == 0) {
        return false;
    }
    for (int t = 0; t < 2; t++) {
        scan(l, t, now, &n);
    }
    for (size_t i = 0; i < n; i++) {
        for (size_t j = 0; j < l->n_waiting; j++) {
            if (now[i].table == l->waiting[j].table &&
                strcmp(now[i].addr, l->waiting[j].addr) == 0) {
                now[i].looks = l->waiting[j].looks + 1;
                break;
            }
        }
        stuck = stuck || now[i].looks >= COORD_LISTENER_LOOKS;
    }
    memcpy(l->waiting, now, n * sizeof(now[0]));
    l->n_waiting = n;
    return stuck;
}
