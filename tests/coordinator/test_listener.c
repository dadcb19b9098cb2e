/*
 * test_listener.c: coord_listener_stuck_in over kernel TCP tables written
 * here (the format of /proc/net/tcp and tcp6): a connection that waits
 * in the port's accept queue look after look means a listener that no
 * longer accepts; connections that come and go, ones already accepted,
 * and other ports' do not.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "listener.h"

#define PORT 0x1CE8 /* 7400 */

static const char HEADER[] =
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode\n";

/* One table line: local port, remote port, state, accept queue (for a
 * listener), inode. */
static size_t line(char *out, size_t cap, unsigned local, unsigned remote, unsigned state,
                   unsigned rx, unsigned long inode)
{
    return (size_t)snprintf(out, cap,
                            "   0: 0100007F:%04X 0100007F:%04X %02X 00000000:%08X 00:00000000 "
                            "00000000  1000        0 %lu 1 0000000000000000 20 4 0 10 -1\n",
                            local, remote, state, rx, inode);
}

/* A look at a table of n lines, given as (local, remote, state, rx, inode). */
static bool look(coord_listener_t *l, const unsigned (*rows)[5], size_t n)
{
    char table[8192];
    size_t used = (size_t)snprintf(table, sizeof(table), "%s", HEADER);

    for (size_t i = 0; i < n; i++) {
        used += line(table + used, sizeof(table) - used, rows[i][0], rows[i][1], rows[i][2],
                     rows[i][3], rows[i][4]);
    }
    FILE *f = fmemopen(table, used, "r");
    assert_non_null(f);
    bool stuck = coord_listener_stuck_in(l, f, NULL);
    fclose(f);
    return stuck;
}

/* Two connections wait un-accepted (inode 0), one established, one closed
 * by its client: the fourth look (three in a row that find one again)
 * says stuck, and a look with the queue empty starts over. */
static void test_connections_that_stay_in_the_queue(void **state)
{
    static const unsigned rows[][5] = {
        {PORT, 0, 0x0A, 2, 111},     /* the listener: 2 waiting */
        {PORT, 40001, 0x01, 0, 0},   /* established, not accepted */
        {PORT, 40002, 0x08, 0, 0},   /* closed by its client, not accepted */
        {PORT, 40003, 0x01, 0, 222}, /* accepted */
    };
    static const unsigned empty[][5] = {{PORT, 0, 0x0A, 0, 111}};
    coord_listener_t l;
    (void)state;

    coord_listener_init(&l, PORT);
    assert_false(look(&l, rows, 4));
    assert_false(look(&l, rows, 4));
    assert_false(look(&l, rows, 4));
    assert_true(look(&l, rows, 4));
    assert_true(look(&l, rows, 4));
    assert_false(look(&l, empty, 1));
    assert_false(look(&l, rows, 4));
}

/* A queue that is never empty at a look, but of new connections each time
 * (a busy listener that accepts): never stuck. */
static void test_connections_that_come_and_go(void **state)
{
    coord_listener_t l;
    (void)state;

    coord_listener_init(&l, PORT);
    for (unsigned i = 0; i < 10; i++) {
        const unsigned rows[][5] = {{PORT, 0, 0x0A, 1, 111}, {PORT, 41000 + i, 0x01, 0, 0}};
        assert_false(look(&l, rows, 2));
    }
}

/* Other ports' connections, accepted ones, and connections in other
 * states do not count; nor do connections when the port's listener has
 * none waiting (the table is not read past the listeners then). */
static void test_what_does_not_count(void **state)
{
    static const unsigned others[][5] = {
        {PORT, 0, 0x0A, 3, 111},       {PORT + 1, 0, 0x0A, 1, 333},
        {PORT + 1, 40001, 0x01, 0, 0}, /* another port's queue */
        {PORT, 40002, 0x01, 0, 444},   /* accepted */
        {PORT, 40003, 0x06, 0, 0},     /* TIME_WAIT */
        {PORT, 40004, 0x03, 0, 0},     /* SYN_RECV: not yet in the accept queue */
    };
    static const unsigned idle[][5] = {
        {PORT, 0, 0x0A, 0, 111},
        {PORT, 40005, 0x01, 0, 0},
    };
    coord_listener_t l;
    (void)state;

    coord_listener_init(&l, PORT);
    for (int i = 0; i < 5; i++) {
        assert_false(look(&l, others, 6));
    }
    assert_int_equal(l.n_waiting, 0);
    for (int i = 0; i < 5; i++) {
        assert_false(look(&l, idle, 2));
    }
    assert_int_equal(l.n_waiting, 0);
}

/* IPv6 addresses (tcp6), and no port at all (a unix socket): nothing to
 * look at. */
static void test_tcp6_and_no_port(void **state)
{
    char table[2048];
    size_t used = (size_t)snprintf(table, sizeof(table), "%s", HEADER);
    coord_listener_t l;
    (void)state;

    used += (size_t)snprintf(table + used, sizeof(table) - used,
                             "   0: 00000000000000000000000000000000:%04X "
                             "00000000000000000000000000000000:0000 0A 00000000:00000001 "
                             "00:00000000 00000000  1000        0 555 1\n"
                             "   1: 0000000000000000FFFF00000100007F:%04X "
                             "0000000000000000FFFF00000100007F:9C41 01 00000000:00000000 "
                             "00:00000000 00000000  1000        0 0 1\n",
                             PORT, PORT);
    coord_listener_init(&l, PORT);
    for (int i = 0; i < 4; i++) {
        FILE *f = fmemopen(table, used, "r");
        bool stuck = coord_listener_stuck_in(&l, NULL, f);
        fclose(f);
        assert_int_equal(stuck, i == 3);
    }
    assert_string_equal(l.waiting[0].addr, "0000000000000000FFFF00000100007F:9C41");

    coord_listener_init(&l, 0);
    assert_false(coord_listener_stuck(&l));
}

/* The process's own table: a listener of this test's that accepts none
 * of its three connections is found stuck on the fourth look. */
static void test_own_table(void **state)
{
    (void)state;
    int fds[4];
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(addr);
    coord_listener_t l;

    fds[0] = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fds[0] >= 0);
    assert_int_equal(bind(fds[0], (struct sockaddr *)&addr, sizeof(addr)), 0);
    assert_int_equal(listen(fds[0], 8), 0);
    assert_int_equal(getsockname(fds[0], (struct sockaddr *)&addr, &len), 0);
    for (int i = 1; i < 4; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        assert_int_equal(connect(fds[i], (struct sockaddr *)&addr, sizeof(addr)), 0);
    }
    coord_listener_init(&l, ntohs(addr.sin_port));
    for (int i = 0; i < 4; i++) {
        assert_int_equal(coord_listener_stuck(&l), i == 3);
    }
    assert_int_equal(l.n_waiting, 3);
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
        cmocka_unit_test(test_tcp6_and_no_port),
        cmocka_unit_test(test_own_table),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
