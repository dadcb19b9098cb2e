#!/bin/sh
# make_certs.sh DIR: a throwaway CA, a server certificate for "ferry.test"
# and a client certificate, for the rpc TLS test. Needs openssl(1).
set -eu
cd "$1"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key ca.key
openssl req -x509 -new -key ca.key -out ca.pem -days 2 -subj "/CN=ferry test ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign"
for who in server client; do
    key "$who.key"
    openssl req -new -key "$who.key" -out "$who.csr" -subj "/CN=ferry $who"
done
printf 'subjectAltName=DNS:ferry.test\nextendedKeyUsage=serverAuth\n' >server.ext
printf 'extendedKeyUsage=clientAuth\n' >client.ext
for who in server client; do
    openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out "$who.pem" -days 2 -extfile "$who.ext" 2>/dev/null
done
