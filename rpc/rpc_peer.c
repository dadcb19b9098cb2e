/*
 * rpc_peer.c: a call's peer as an address without its port, so that what
 * one client host holds can be counted however many connections and ports
 * it uses (rpc_call_peer_host, rpc.h).
 *
 * gRPC core 1.51 names a peer as a URI: "ipv4:10.0.0.7:53124",
 * "ipv6:[fd00::7]:53124" (brackets possibly escaped as %5B and %5D),
 * "unix:/run/ferry.sock". An IPv4 client of a dual-stack listener comes as
 * "ipv6:[::ffff:10.0.0.7]:53124", and is the same host as "ipv4:10.0.0.7".
 * An IPv6 host is its /64: the smallest prefix a site or a Kubernetes node
 * is given, and any address in it is the holder's to pick, so counting by
 * the address would make one client 2^64 hosts (review-s30b M2).
 */
#include "rpc/rpc_int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

/* The part of s (len bytes) before its last ':', which is the port's. */
static size_t without_port(const char *s, size_t len)
{
    for (size_t i = len; i > 0; i--) {
        if (s[i - 1] == ':') {
            return i - 1;
        }
    }
    return len;
}

/* The IPv6 address p (len bytes, a zone id after '%' allowed) as the host
 * that holds it: its /64, or the IPv4 address it maps; false when it is
 * not an address. */
static bool ipv6_host(const char *p, size_t len, char *out, size_t cap)
{
    char addr[INET6_ADDRSTRLEN], text[INET6_ADDRSTRLEN];
    struct in6_addr a;

    len = strcspn(p, "%") < len ? strcspn(p, "%") : len;
    if (len >= sizeof(addr)) {
        return false;
    }
    memcpy(addr, p, len);
    addr[len] = '\0';
    if (inet_pton(AF_INET6, addr, &a) != 1) {
        return false;
    }
    if (IN6_IS_ADDR_V4MAPPED(&a)) { /* an IPv4 client of a dual-stack listener */
        inet_ntop(AF_INET, &a.s6_addr[12], text, sizeof(text));
        snprintf(out, cap, "%s", text);
        return true;
    }
    memset(&a.s6_addr[8], 0, 8);
    inet_ntop(AF_INET6, &a, text, sizeof(text));
    snprintf(out, cap, "%s/64", text);
    return true;
}

void rpc__peer_host(const char *peer, char *out, size_t cap)
{
    const char *p;
    size_t len;

    if (strncmp(peer, "ipv4:", 5) == 0) {
        p = peer + 5;
        len = without_port(p, strlen(p));
    } else if (strncmp(peer, "ipv6:", 5) == 0) {
        const char *end;
        p = peer + 5;
        if (*p == '[') {
            p++;
            end = strchr(p, ']');
        } else if (strncmp(p, "%5B", 3) == 0 || strncmp(p, "%5b", 3) == 0) {
            p += 3;
            end = strchr(p, '%');
        } else {
            end = NULL;
        }
        len = end != NULL ? (size_t)(end - p) : without_port(p, strlen(p));
        if (ipv6_host(p, len, out, cap)) {
            return;
        }
    } else {
        /* unix:PATH and others: every client of the socket is this host. */
        p = peer;
        len = strcspn(peer, ":");
    }
    snprintf(out, cap, "%.*s", (int)len, p);
}
