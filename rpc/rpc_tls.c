/*
 * rpc_tls.c: gRPC credentials from rpc_tls_params_t. PEM files are read
 * into memory here; gRPC copies what it keeps, so the buffers are freed
 * before returning. A NULL params pointer means plaintext. A server's
 * files are read again when they change (rpc_tls_reload_t, below); a
 * client's by gRPC's file watcher, every tls_refresh_s seconds of its
 * channel params (60 by default), so a channel takes renewed ones at its
 * next handshake.
 *
 * Threads: any; a server's reload state is guarded by its own lock (gRPC
 * fetches from its handshake threads).
 */
#include "rpc/rpc_int.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

/* What a TLS server reads its credentials from, and what it last read.
 * gRPC asks (reload_fetch) at start and before every handshake; the files
 * are read again only when one of them changed (by stat: device, inode,
 * size, mtime; a Kubernetes Secret's update swaps a link, which changes
 * them all), so a renewed certificate is served to the next connection
 * without a restart. A file that cannot be read keeps the previous
 * certificates (logged here), and so does a set gRPC cannot use (logged by
 * gRPC), until the files change again. */
typedef struct {
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
    bool present;
} file_sig_t;

struct rpc_tls_reload {
    pthread_mutex_t lock;
    char *files[3]; /* cert, key, CA (NULL: none) */
    file_sig_t sigs[3];
    bool loaded; /* gRPC holds a config read from the files as sigs says */
};

static void file_sig(const char *path, file_sig_t *sig)
{
    struct stat st;

    memset(sig, 0, sizeof(*sig));
    if (path != NULL && stat(path, &st) == 0) {
        *sig = (file_sig_t){.dev = st.st_dev,
                            .ino = st.st_ino,
                            .size = st.st_size,
                            .mtime = st.st_mtim,
                            .present = true};
    }
}

static bool sig_equal(const file_sig_t *a, const file_sig_t *b)
{
    return a->present == b->present && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* The certificate config the files hold now, or NULL (logged). */
static grpc_ssl_server_certificate_config *read_config(const rpc_tls_reload_t *r)
{
    grpc_ssl_server_certificate_config *config = NULL;
    grpc_ssl_pem_key_cert_pair pair;
    char *cert = NULL, *key = NULL, *ca = NULL;

    if (read_pem(r->files[0], &cert) == FERRY_OK && read_pem(r->files[1], &key) == FERRY_OK &&
        read_pem(r->files[2], &ca) == FERRY_OK) {
        pair.private_key = key;
        pair.cert_chain = cert;
        /* gRPC 1.51 asserts that a fetched config has root certificates
         * (ssl_security_connector.cc), and a server without a CA aborted at
         * start. Without one it requests no client certificate, so the
         * roots are never used: its own chain stands in, a PEM it takes. */
        config = grpc_ssl_server_certificate_config_create(ca != NULL ? ca : cert, &pair, 1);
    }
    free(cert);
    free(key);
    free(ca);
    return config;
}

static grpc_ssl_certificate_config_reload_status
reload_fetch(void *arg, grpc_ssl_server_certificate_config **config_p)
{
    rpc_tls_reload_t *r = arg;
    grpc_ssl_certificate_config_reload_status status = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_UNCHANGED;
    file_sig_t now[3];
    bool changed = false;

    pthread_mutex_lock(&r->lock);
    for (int i = 0; i < 3; i++) {
        file_sig(r->files[i], &now[i]);
        changed = changed || !sig_equal(&now[i], &r->sigs[i]);
    }
    if (!r->loaded || changed) {
        /* Taken as read either way: a half-written set is read again when
         * its last file lands, not on every handshake meanwhile. */
        memcpy(r->sigs, now, sizeof(now));
        *config_p = read_config(r);
        if (*config_p != NULL) {
            if (r->loaded) {
                ferry_info("rpc: tls: %s or its key or CA changed: read again for new "
                           "connections (should gRPC refuse them, it logs why and keeps the "
                           "previous ones)",
                           r->files[0]);
            }
            r->loaded = true;
            status = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_NEW;
        } else if (!r->loaded) {
            status = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_FAIL;
        } else {
            ferry_warn("rpc: tls: %s or its key or CA changed but cannot be used; serving the "
                       "certificates read before",
                       r->files[0]);
        }
    }
    pthread_mutex_unlock(&r->lock);
    return status;
}

void rpc__tls_reload_free(rpc_tls_reload_t *r)
{
    if (r == NULL) {
        return;
    }
    for (int i = 0; i < 3; i++) {
        free(r->files[i]);
    }
    pthread_mutex_destroy(&r->lock);
    free(r);
}

static rpc_tls_reload_t *reload_new(const rpc_tls_params_t *tls)
{
    rpc_tls_reload_t *r = calloc(1, sizeof(*r));
    const char *paths[3] = {tls->cert_file, tls->key_file, tls->ca_file};

    if (r == NULL) {
        return NULL;
    }
    pthread_mutex_init(&r->lock, NULL);
    for (int i = 0; i < 3; i++) {
        if (paths[i] != NULL && (r->files[i] = strdup(paths[i])) == NULL) {
            rpc__tls_reload_free(r);
            return NULL;
        }
    }
    return r;
}

ferry_status_t rpc__server_credentials(const rpc_tls_params_t *tls,
                                       grpc_server_credentials **creds_p,
                                       rpc_tls_reload_t **reload_p)
{
    grpc_ssl_server_certificate_config *check;
    grpc_ssl_server_credentials_options *options;
    rpc_tls_reload_t *r;

    *reload_p = NULL;
    if (tls == NULL) {
        *creds_p = grpc_insecure_server_credentials_create();
        return FERRY_OK;
    }
    if (tls->cert_file == NULL || tls->key_file == NULL ||
        (tls->require_client_cert && tls->ca_file == NULL)) {
        ferry_error("rpc: a tls server needs cert_file and key_file, and ca_file to "
                    "require client certificates");
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    r = reload_new(tls);
    if (r == NULL) {
        return FERRY_ERR_NO_MEMORY;
    }
    /* Read once here, so that a file that cannot be read fails the start,
     * named (read_pem says which); gRPC's first fetch reads them again. */
    check = read_config(r);
    if (check == NULL) {
        ferry_error("rpc: cannot use the server certificate %s, its key or its CA", tls->cert_file);
        rpc__tls_reload_free(r);
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    grpc_ssl_server_certificate_config_destroy(check);
    options = grpc_ssl_server_credentials_create_options_using_config_fetcher(
        client_cert_policy(tls, tls->ca_file), reload_fetch, r);
    *creds_p = options != NULL ? grpc_ssl_server_credentials_create_with_options(options) : NULL;
    if (*creds_p == NULL) {
        ferry_error("rpc: gRPC refused the server tls settings (%s)", tls->cert_file);
        rpc__tls_reload_free(r);
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    *reload_p = r;
    return FERRY_OK;
}

ferry_status_t rpc__channel_credentials(const rpc_tls_params_t *tls, unsigned refresh_s,
                                        grpc_channel_credentials **creds_p)
{
    grpc_tls_certificate_provider *provider;
    grpc_tls_credentials_options *options;
    char *ca = NULL, *cert = NULL, *key = NULL;
    ferry_status_t status;

    if (tls == NULL) {
        *creds_p = grpc_insecure_credentials_create();
        return FERRY_OK;
    }
    /* Read once here, so that a file that cannot be read fails now, named;
     * gRPC's watcher reads them again, then every refresh_s. */
    status = read_pair(tls, &cert, &key);
    if (status == FERRY_OK) {
        status = read_pem(tls->ca_file, &ca);
    }
    free(ca);
    free(cert);
    free(key);
    if (status != FERRY_OK) {
        return status;
    }
    if (tls->ca_file == NULL && tls->cert_file == NULL) {
        /* No file to watch: the server is checked against the system's
         * roots (gRPC's default store: /etc/ssl/certs first), as the etcd
         * gateway's curl does. gRPC 1.51's file watcher must not be made
         * here: with neither a key nor a CA path it asserts, and the whole
         * process aborts. */
        *creds_p = grpc_ssl_credentials_create(NULL, NULL, NULL, NULL);
        if (*creds_p == NULL) {
            ferry_error("rpc: gRPC refused the client tls settings (system roots)");
            return FERRY_ERR_INVALID_ARGUMENT;
        }
        return FERRY_OK;
    }
    /* A renewed certificate, key or CA (a Secret's update, cert-manager) is
     * taken by the next handshake after the watcher saw it; one that cannot
     * be used leaves the previous ones in use (gRPC logs it). The server's
     * certificate is checked against the CA and the target's (or
     * server_name's) host name: the default verifier. */
    provider = grpc_tls_certificate_provider_file_watcher_create(tls->key_file, tls->cert_file,
                                                                 tls->ca_file, refresh_s);
    options = provider != NULL ? grpc_tls_credentials_options_create() : NULL;
    if (options == NULL) {
        if (provider != NULL) {
            grpc_tls_certificate_provider_release(provider);
        }
        ferry_error("rpc: gRPC refused the client tls settings");
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    grpc_tls_credentials_options_set_certificate_provider(options, provider);
    grpc_tls_certificate_provider_release(provider); /* options hold their own */
    if (tls->ca_file != NULL) {
        grpc_tls_credentials_options_watch_root_certs(options); /* else the system's */
    }
    if (tls->cert_file != NULL) {
        grpc_tls_credentials_options_watch_identity_key_cert_pairs(options);
    }
    grpc_tls_credentials_options_set_verify_server_cert(options, 1);
    *creds_p = grpc_tls_credentials_create(options); /* takes the options */
    if (*creds_p == NULL) {
        ferry_error("rpc: gRPC refused the client tls settings");
        return FERRY_ERR_INVALID_ARGUMENT;
    }
    return FERRY_OK;
}
