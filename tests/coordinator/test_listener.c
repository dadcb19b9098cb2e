/*
 * test_listener.c: coord_listener over kernel TCP tables written here (the
 * format of /proc/net/tcp and tcp6) and over the process's own: the same
 * connection waiting in one of the coordinator's accept queues look after
 * look means a listener that no longer accepts; connections that come and
 * go, ones already accepted, and other processes' sockets on the same
 * port do not; and a look still works with every descriptor taken.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "listener.h"

#define PORT 0x1CE8 /* 7400 */
#define OWN  111    /* the coordinator's listening socket's inode */

static const char HEADER[] =
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode\n";

typedef struct {
    const char *local; /* address before the port: "0100007F" (127.0.0.1) */
    unsigned local_port, remote_port, state, rx;
    unsigned long inode;
} row_t;

/* A table of rows, as a descriptor of a memory file holding its text. */
static int table_of(const char *text, size_t len)
{
    int fd = memfd_create("table", MFD_CLOEXEC);

    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, len), (ssize_t)len);
    return fd;
}

static int table(const row_t *rows, size_t n)
{
    static char text[16384];
    size_t used = (size_t)snprintf(text, sizeof(text), "%s", HEADER);

    for (size_t i = 0; i < n; i++) {
        used += (size_t)snprintf(
            text + used, sizeof(text) - used,
            "%4zu: %s:%04X 0100007F:%04X %02X 00000000:%08X 00:00000000 00000000  1000        "
            "0 %lu 1 0000000000000000 20 4 0 10 -1\n",
            i, rows[i].local, rows[i].local_port, rows[i].remote_port, rows[i].state, rows[i].rx,
            rows[i].inode);
    }
    return table_of(text, used);
}

/* Looks at rows as they are now. */
static bool look(coord_listener_t *l, const row_t *rows, size_t n)
{
    int fd = table(rows, n);
    l->tables[0] = fd;
    bool stuck = coord_listener_stuck(l);
    l->tables[0] = -1;
    close(fd);
    return stuck;
}

static void init(coord_listener_t *l, const row_t *rows, size_t n)
{
    static const unsigned long own[] = {OWN};
    int fd = table(rows, n);

    assert_int_equal(coord_listener_init_from(l, PORT, fd, -1, own, 1), FERRY_OK);
    close(fd);
    l->tables[0] = -1;
}

static const row_t LISTENER = {"0100007F", PORT, 0, 0x0A, 0, OWN};

/* Two connections wait un-accepted (inode 0), one established, one closed
 * by its client: the fifth look in a row that finds them says stuck, and
 * a look with the queue empty starts over. */
static void test_connections_that_stay_in_the_queue(void **state)
{
    static const row_t rows[] = {
        {"0100007F", PORT, 0, 0x0A, 2, OWN},     /* the listener: 2 waiting */
        {"0100007F", PORT, 40001, 0x01, 0, 0},   /* established, not accepted */
        {"0100007F", PORT, 40002, 0x08, 0, 0},   /* closed by its client, not accepted */
        {"0100007F", PORT, 40003, 0x01, 0, 222}, /* accepted */
    };
    coord_listener_t l;
    (void)state;

    init(&l, &LISTENER, 1);
    for (int i = 1; i <= 6; i++) {
        assert_int_equal(look(&l, rows, 4), i >= COORD_LISTENER_LOOKS);
    }
    assert_int_equal(l.n_waiting, 2);
    assert_false(look(&l, &LISTENER, 1));
    assert_false(look(&l, rows, 4));
}

/* A queue never empty at a look, but of other connections each time (a
 * busy listener that accepts), or of one connection that stays a while
 * beside others that come and go: never stuck. */
static void test_connections_that_come_and_go(void **state)
{
    coord_listener_t l;
    (void)state;

    init(&l, &LISTENER, 1);
    for (unsigned i = 0; i < 20; i++) {
        const row_t rows[] = {
            {"0100007F", PORT, 0, 0x0A, 2, OWN},
            {"0100007F", PORT, 41000 + i, 0x01, 0, 0},
            {"0100007F", PORT, 42000 + i / (COORD_LISTENER_LOOKS - 1), 0x01, 0, 0},
        };
        assert_false(look(&l, rows, 3));
    }
}

/* Another process's listener on the same port at another address, with
 * connections waiting that it never accepts; other ports; accepted
 * connections; other states; and connections when the coordinator's
 * listener has none waiting (the table is not read past the listeners
 * then): none counts. */
static void test_what_does_not_count(void **state)
{
    static const row_t others[] = {
        {"0100007F", PORT, 0, 0x0A, 1, OWN},
        {"0200007F", PORT, 0, 0x0A, 9, 999},     /* 127.0.0.2:PORT, not ours */
        {"0100007F", PORT + 1, 0, 0x0A, 1, 333}, /* another port */
        {"0200007F", PORT, 40001, 0x01, 0, 0},   /* waiting on 127.0.0.2 */
        {"0100007F", PORT + 1, 40002, 0x01, 0, 0},
        {"0100007F", PORT, 40003, 0x01, 0, 444}, /* accepted */
        {"0100007F", PORT, 40004, 0x06, 0, 0},   /* TIME_WAIT */
        {"0100007F", PORT, 40005, 0x03, 0, 0},   /* SYN_RECV: not in the accept queue yet */
    };
    static const row_t idle[] = {
        {"0100007F", PORT, 0, 0x0A, 0, OWN},
        {"0200007F", PORT, 0, 0x0A, 9, 999},
        {"0100007F", PORT, 40006, 0x01, 0, 0},
    };
    coord_listener_t l;
    (void)state;

    init(&l, others, 8);
    assert_int_equal(l.n_own, 1);
    for (int i = 0; i < 2 * COORD_LISTENER_LOOKS; i++) {
        assert_false(look(&l, others, 8));
        assert_int_equal(l.n_waiting, 0);
    }
    for (int i = 0; i < 2 * COORD_LISTENER_LOOKS; i++) {
        assert_false(look(&l, idle, 3));
        assert_int_equal(l.n_waiting, 0);
    }
}

/* A listener bound to every address: a connection to any of the host's
 * addresses is its own. */
static void test_a_wildcard_listener(void **state)
{
    static const row_t rows[] = {
        {"00000000", PORT, 0, 0x0A, 1, OWN},
        {"0A000005", PORT, 40001, 0x01, 0, 0}, /* to 10.0.0.5 */
    };
    coord_listener_t l;
    (void)state;

    init(&l, rows, 1);
    assert_true(l.own[0].wildcard);
    for (int i = 1; i <= COORD_LISTENER_LOOKS; i++) {
        assert_int_equal(look(&l, rows, 2), i == COORD_LISTENER_LOOKS);
    }
}

/* IPv6 (a dual-stack listener, an IPv4 client as ::ffff:127.0.0.1), and
 * no listener of the process's on the port. */
static void test_tcp6_and_not_found(void **state)
{
    static const unsigned long own[] = {555};
    char text[2048];
    size_t used = (size_t)snprintf(text, sizeof(text), "%s", HEADER);
    coord_listener_t l;
    (void)state;

    used += (size_t)snprintf(text + used, sizeof(text) - used,
                             "   0: 00000000000000000000000000000000:%04X "
                             "00000000000000000000000000000000:0000 0A 00000000:00000001 "
                             "00:00000000 00000000  1000        0 555 1\n"
                             "   1: 0000000000000000FFFF00000100007F:%04X "
                             "0000000000000000FFFF00000100007F:9C41 01 00000000:00000000 "
                             "00:00000000 00000000  1000        0 0 1\n",
                             PORT, PORT);
    int fd = table_of(text, used);
    assert_int_equal(coord_listener_init_from(&l, PORT, -1, fd, own, 1), FERRY_OK);
    for (int i = 1; i <= COORD_LISTENER_LOOKS; i++) {
        assert_int_equal(coord_listener_stuck(&l), i == COORD_LISTENER_LOOKS);
    }
    assert_string_equal(l.waiting[0].addr, "0000000000000000FFFF00000100007F:9C41");
    close(fd);

    int g = table(&LISTENER, 1);
    static const unsigned long none[] = {112};
    assert_int_equal(coord_listener_init_from(&l, PORT, g, -1, none, 1), FERRY_ERR_NOT_FOUND);
    assert_false(coord_listener_stuck(&l));
    close(g);
    assert_int_equal(coord_listener_init(&l, 0), FERRY_ERR_NOT_FOUND);
    assert_false(coord_listener_stuck(&l));
}

/* The process's own table: a listener of this test's is found, then,
 * accepting none of the connections that come after a first look, found
 * stuck on the fifth look after them (each look reads the table anew),
 * also with every descriptor taken (when it matters: the tables were
 * opened at init). */
static void test_own_table_out_of_descriptors(void **state)
{
    (void)state;
    int fds[4], spare[256], n_spare = 0;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(addr);
    struct rlimit saved, low;
    coord_listener_t l;

    fds[0] = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fds[0] >= 0);
    assert_int_equal(bind(fds[0], (struct sockaddr *)&addr, sizeof(addr)), 0);
    assert_int_equal(listen(fds[0], 8), 0);
    assert_int_equal(getsockname(fds[0], (struct sockaddr *)&addr, &len), 0);
    assert_int_equal(coord_listener_init(&l, ntohs(addr.sin_port)), FERRY_OK);
    assert_int_equal(l.n_own, 1);
    assert_false(coord_listener_stuck(&l)); /* nothing waits yet: later looks read anew */
    for (int i = 1; i < 4; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        assert_int_equal(connect(fds[i], (struct sockaddr *)&addr, sizeof(addr)), 0);
    }

    assert_int_equal(getrlimit(RLIMIT_NOFILE, &saved), 0);
    low = saved;
    low.rlim_cur = 64;
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
    int fd;
    while (n_spare < 256 && (fd = open("/dev/null", O_RDONLY)) >= 0) {
        spare[n_spare++] = fd;
    }
    assert_int_equal(errno, EMFILE);
    for (int i = 1; i <= COORD_LISTENER_LOOKS; i++) {
        assert_int_equal(coord_listener_stuck(&l), i == COORD_LISTENER_LOOKS);
    }
    assert_int_equal(l.n_waiting, 3);
    while (n_spare > 0) {
        close(spare[--n_spare]);
    }
    assert_int_equal(setrlimit(RLIMIT_NOFILE, &saved), 0);
    coord_listener_close(&l);
    for (int i = 0; i < 4; i++) {
        close(fds[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_connections_that_stay_in_the_queue),
        cmocka_unit_test(test_connections_that_come_and_go),
        cmocka_unit_test(test_what_does_not_count),
        cmocka_unit_test(test_a_wildcard_listener),
        cmocka_unit_test(test_tcp6_and_not_found),
        cmocka_unit_test(test_own_table_out_of_descriptors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
