/*
 * tls_flags.h: the one rule set for the TLS flags of Ferry's client
 * programs, ferry-worker and ferryctl (--tls-ca, --tls-cert and --tls-key
 * with their FERRY_TLS_CA/CERT/KEY variables, and --tls-server-name, which
 * has no variable), which used to carry a copy each.
 *
 * The rules: a flag set but empty is refused (a template that left it
 * blank), as the coordinator refuses its own, rather than taken as unset
 * (plaintext) or as a file named ""; TLS is turned on by the CA, so a
 * certificate, key or server name without it, which would be dropped and
 * leave the program talking plaintext, is refused; a certificate and a key
 * go together.
 *
 * Threads: pure (writes to stderr).
 */
#ifndef FERRY_COMMON_TLS_FLAGS_H
#define FERRY_COMMON_TLS_FLAGS_H

#include <stdbool.h>

/* The flags as given; NULL where unset. */
typedef struct {
    const char *ca;
    const char *cert;
    const char *key;
    const char *server_name;
} ferry_tls_flags_t;

/* True when the flags keep the rules; false, having said which flag broke
 * which rule on stderr ("PROG: --tls-key (FERRY_TLS_KEY) is set but
 * empty"), otherwise. */
bool ferry_tls_flags_check(const char *prog, const ferry_tls_flags_t *f);

#endif /* FERRY_COMMON_TLS_FLAGS_H */
