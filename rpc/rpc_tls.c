/*
 * rpc_tls.c: gRPC credentials from rpc_tls_params_t. PEM files are read
 * into memory here; gRPC copies what it keeps, so the buffers are freed
 * before returning. A NULL params pointer means plaintext.
 *
 * Threads: any; nothing shared.
 */
#include "rpc/rpc_int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"

/* Reads a whole PEM file, NUL-terminated. A NULL path gives NULL, FERRY_OK. */
static ferry_status_t read_pem(const char *path, char **text_p)
{
    FILE *f;
    char *text = NULL;
    size_t len = 0, cap = 0, n;

    *text_p = NULL;
    if (path == NULL) {
        return FERRY_OK;
    }
    f = fopen(path, "rb");
    if (f == NULL) {
        ferry_error("rpc: cannot open %s: %s", path, strerror(errno));
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    do {
        if (cap - len < 4096) {
            char *bigger = realloc(text, cap + 8192);
            if (bigger == NULL) {
                goto err_read;
            }
            text = bigger;
            cap += 8192;
        }
        n = fread(text + len, 1, cap - len - 1, f);
        len += n;
    } while (n > 0);
    if (ferror(f)) {
        ferry_error("rpc: cannot read %s", path);
        goto err_read;
    }
    fclose(f);
    text[len] = '\0';
    *text_p = text;
    return FERRY_OK;

err_read:
    free(text);
    fclose(f);
    return FERRY_ERR_IO;
}

/* Reads cert_file and key_file (both or neither). */
static ferry_status_t read_pair(const rpc_tls_params_t *tls, char **cert_p, char **key_p)
{
    ferry_status_t status;

    *cert_p = *key_p = NULL;
    if ((tls->cert_file == NULL) != (tls->key_file == NULL)) {
        ferry_error("rpc: tls needs both cert_file and key_file, or neither");
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    status = read_pem(tls->cert_file, cert_p);
    if (status != FERRY_OK) {
        return status;
    }
    status = read_pem(tls->key_file, key_p);
    if (status != FERRY_OK) {
        free(*cert_p);
        *cert_p = NULL;
    }
    return status;
}

static grpc_ssl_client_certificate_request_type client_cert_policy(const rpc_tls_params_t *tls,
                                                                   const char *ca)
{
    if (tls->require_client_cert) {
        return GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    /* With a CA, verify the certificates clients choose to present. */
    return ca != NULL ? GRPC_SSL_REQUEST_CLIENT_CERTIFICATE_AND_VERIFY
                      : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
}

ferry_status_t rpc__server_credentials(const rpc_tls_params_t *tls,
                                       grpc_server_credentials **creds_p)
{
    grpc_ssl_pem_key_cert_pair pair;
    char *ca = NULL, *cert = NULL, *key = NULL;
    ferry_status_t status;

    if (tls == NULL) {
        *creds_p = grpc_insecure_server_credentials_create();
        return FERRY_OK;
    }
    if (tls->cert_file == NULL || (tls->require_client_cert && tls->ca_file == NULL)) {
        ferry_error("rpc: a tls server needs cert_file and key_file, and ca_file to "
                    "require client certificates");
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    status = read_pair(tls, &cert, &key);
    if (status != FERRY_OK) {
        return status;
    }
    status = read_pem(tls->ca_file, &ca);
    if (status != FERRY_OK) {
        goto out;
    }
    pair.private_key = key;
    pair.cert_chain = cert;
    *creds_p =
        grpc_ssl_server_credentials_create_ex(ca, &pair, 1, client_cert_policy(tls, ca), NULL);
    if (*creds_p == NULL) {
        ferry_error("rpc: gRPC refused the server certificate %s", tls->cert_file);
        status = FERRY_ERR_INVALID_ARGUMENT;
    }
out:
    free(ca);
    free(cert);
    free(key);
    return status;
}

ferry_status_t rpc__channel_credentials(const rpc_tls_params_t *tls,
                                        grpc_channel_credentials **creds_p)
{
    grpc_ssl_pem_key_cert_pair pair;
    char *ca = NULL, *cert = NULL, *key = NULL;
    ferry_status_t status;

    if (tls == NULL) {
        *creds_p = grpc_insecure_credentials_create();
        return FERRY_OK;
    }
    status = read_pair(tls, &cert, &key);
    if (status != FERRY_OK) {
        return status;
    }
    status = read_pem(tls->ca_file, &ca);
    if (status != FERRY_OK) {
        goto out;
    }
    pair.private_key = key;
    pair.cert_chain = cert;
    *creds_p = grpc_ssl_credentials_create(ca, cert != NULL ? &pair : NULL, NULL, NULL);
    if (*creds_p == NULL) {
        ferry_error("rpc: gRPC refused the client tls settings");
        status = FERRY_ERR_INVALID_ARGUMENT;
    }
out:
    free(ca);
    free(cert);
    free(key);
    return status;
}
