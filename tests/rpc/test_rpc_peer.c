/*
 * test_rpc_peer.c: a call's peer as gRPC names it, without its port
 * (rpc__peer_host), the key by which the coordinator counts what one
 * client host holds.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "rpc/rpc_int.h"

static void host_is(const char *peer, const char *want)
{
    char out[64];

    rpc__peer_host(peer, out, sizeof(out));
    assert_string_equal(out, want);
}

static void test_ports_go(void **state)
{
    (void)state;
    host_is("ipv4:127.0.0.1:53124", "127.0.0.1");
    host_is("ipv4:10.1.2.3:1", "10.1.2.3");
    host_is("ipv6:[::1]:53124", "::/64");
    host_is("ipv6:%5B::1%5D:53124", "::/64");
    host_is("ipv6:[fd00:1::7]:7400", "fd00:1::/64");
}

/* An IPv6 client is its /64: every address in it is one host (review-s30b
 * M2: by the whole address, one client with a /64 was 2^64 hosts). */
static void test_ipv6_by_its_64(void **state)
{
    (void)state;
    host_is("ipv6:[2001:db8:1:2:aaaa:bbbb:cccc:dddd]:1", "2001:db8:1:2::/64");
    host_is("ipv6:[2001:db8:1:2::1]:2", "2001:db8:1:2::/64");
    host_is("ipv6:[2001:db8:1:3::1]:2", "2001:db8:1:3::/64");
    host_is("ipv6:[fe80::1%eth0]:9", "fe80::/64");       /* a zone id */
    host_is("ipv6:%5Bfe80::1%25eth0%5D:9", "fe80::/64"); /* escaped */
    host_is("ipv6:[not-an-address]:9", "not-an-address");
}

static void test_ipv4_mapped_is_ipv4(void **state)
{
    (void)state;
    host_is("ipv6:[::ffff:10.0.0.7]:53124", "10.0.0.7");
    host_is("ipv6:%5B::ffff:127.0.0.2%5D:9", "127.0.0.2");
    host_is("ipv6:[::ffff:a:b]:9", "0.10.0.11");              /* the same address, hex */
    host_is("ipv6:[::ffff:1.2.3.4:5]:9", "::ffff:1.2.3.4:5"); /* not an address */
}

static void test_others(void **state)
{
    char out[8];

    (void)state;
    host_is("unix:/run/ferry.sock", "unix");
    host_is("unix-abstract:ferry", "unix-abstract");
    host_is("unknown", "unknown");
    host_is("", "");
    rpc__peer_host("ipv4:192.168.100.200:1", out, sizeof(out)); /* cut, terminated */
    assert_string_equal(out, "192.168");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ports_go),
        cmocka_unit_test(test_ipv4_mapped_is_ipv4),
        cmocka_unit_test(test_ipv6_by_its_64),
        cmocka_unit_test(test_others),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
