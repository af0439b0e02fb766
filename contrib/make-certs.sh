#!/usr/bin/env bash
# Make a throwaway CA and certificates for fwd's mutual-TLS listener (a test or a first
# deployment; use your own PKI for production). Nothing here is ever committed.
#
#   contrib/make-certs.sh DIR [SERVER_NAME_OR_IP ...]
#
# Writes DIR/ca.pem (+ ca.key), DIR/server.pem/.key (SANs: the names given, default
# localhost and 127.0.0.1), DIR/admin.pem/.key (OU=admin: may change policy) and
# DIR/reader.pem/.key (OU=reader: read-only). Keys are ECDSA P-256, valid 30 days.
set -euo pipefail
dir=${1:?usage: make-certs.sh DIR [SERVER_NAME_OR_IP ...]}
shift || true
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(localhost 127.0.0.1)
mkdir -p "$dir"
umask 077
cd "$dir"

san=""
for n in "${names[@]}"; do
    if [[ "$n" =~ ^[0-9.]+$ || "$n" == *:* ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
san=${san%,}

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

key ca.key
openssl req -x509 -new -key ca.key -sha256 -days 30 -subj "/CN=fwd throwaway CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out ca.pem 2>/dev/null

issue() { # name subject extensions
    key "$1.key"
    openssl req -new -key "$1.key" -subj "$2" -out "$1.csr" 2>/dev/null
    printf '%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days 30 \
        -extfile "$1.ext" -out "$1.pem" 2>/dev/null
    rm -f "$1.csr" "$1.ext"
}
issue server "/CN=fwd agent" "subjectAltName=$san
extendedKeyUsage=serverAuth
keyUsage=critical,digitalSignature"
issue admin "/O=fwd/OU=admin/CN=fwd admin" "extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature"
issue reader "/O=fwd/OU=reader/CN=fwd reader" "extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature"
rm -f ca.srl
chmod 0644 ca.pem server.pem admin.pem reader.pem
echo "make-certs.sh: wrote $(pwd)/{ca,server,admin,reader}.{pem,key}"
