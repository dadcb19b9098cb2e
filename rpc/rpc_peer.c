/*
 * rpc_peer.c: a call's peer as an address without its port, so that what
 * one client host holds can be counted however many connections and ports
 * it uses (rpc_call_peer_host, rpc.h).
 *
 * gRPC core 1.51 names a peer as a URI: "ipv4:10.0.0.7:53124",
 * "ipv6:[fd00::7]:53124" (brackets possibly escaped as %5B and %5D),
 * "unix:/run/ferry.sock". An IPv4 client of a dual-stack listener comes as
 * "ipv6:[::ffff:10.0.0.7]:53124", and is the same host as "ipv4:10.0.0.7".
 */
#include "rpc/rpc_int.h"

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
        if (len > 7 && strncmp(p, "::ffff:", 7) == 0 && strchr(p + 7, '.') != NULL &&
            strchr(p + 7, '.') < p + len) {
            p += 7; /* an IPv4 client of a dual-stack listener */
            len -= 7;
        }
    } else {
        /* unix:PATH and others: every client of the socket is this host. */
        p = peer;
        len = strcspn(peer, ":");
    }
    snprintf(out, cap, "%.*s", (int)len, p);
}
