/*
 * tls_flags.c: the client programs' TLS flag rules (tls_flags.h).
 */
#include "common/tls_flags.h"

#include <stdio.h>

#define CA_FLAG     "--tls-ca (FERRY_TLS_CA)"
#define CERT_FLAG   "--tls-cert (FERRY_TLS_CERT)"
#define KEY_FLAG    "--tls-key (FERRY_TLS_KEY)"
#define SERVER_FLAG "--tls-server-name"

static bool set_but_empty(const char *value)
{
    return value != NULL && value[0] == '\0';
}

/* The first flag set but empty, or NULL. */
static const char *empty_flag(const ferry_tls_flags_t *f)
{
    return set_but_empty(f->ca)            ? CA_FLAG
           : set_but_empty(f->cert)        ? CERT_FLAG
           : set_but_empty(f->key)         ? KEY_FLAG
           : set_but_empty(f->server_name) ? SERVER_FLAG
                                           : NULL;
}

bool ferry_tls_flags_check(const char *prog, const ferry_tls_flags_t *f)
{
    const char *empty = empty_flag(f);
    const char *without_ca = f->cert != NULL          ? CERT_FLAG
                             : f->key != NULL         ? KEY_FLAG
                             : f->server_name != NULL ? SERVER_FLAG
                                                      : NULL;

    if (empty != NULL) {
        fprintf(stderr, "%s: %s is set but empty\n", prog, empty);
        return false;
    }
    if (f->ca == NULL && without_ca != NULL) {
        fprintf(stderr,
                "%s: %s needs " CA_FLAG ", the CA that signed the coordinator's certificate; "
                "without it %s would not use TLS\n",
                prog, without_ca, prog);
        return false;
    }
    if ((f->cert == NULL) != (f->key == NULL)) {
        fprintf(stderr, "%s: " CERT_FLAG " and " KEY_FLAG " go together\n", prog);
        return false;
    }
    return true;
}
