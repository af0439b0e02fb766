#!/usr/bin/env bash
# Make a throwaway CA and the certificates of fwd's cluster mode against etcd (mutual TLS with
# --client-cert-auth: etcd takes the user name from the client certificate's CN). For a test or
# a first deployment; use your own PKI in production. Nothing here is ever committed.
#
#   contrib/make-etcd-certs.sh DIR [--days N | --seconds N] [--server NAME_OR_IP]... [--node NODE]... [--user NAME]...
#
# Writes into DIR (reusing DIR/ca.pem + ca.key if they exist, so it can be run again to add a
# node or to rotate one certificate):
#   ca.pem, ca.key          the CA that etcd trusts (--trusted-ca-file) and clients verify etcd with
#   server.pem/.key         etcd's serving certificate (SANs: the --server names, default
#                           localhost and 127.0.0.1)
#   root.pem/.key           CN=root: etcd's root user, for `fwd cluster init` only
#   fwd-admin.pem/.key      CN=fwd-admin: may write policies and labels (the fwd-admin role)
#   node-NODE.pem/.key      CN=NODE: one per --node, the agent's identity (its role fwd-node-NODE)
#   USER.pem/.key           CN=USER: one per --user (e.g. a second admin, a proxy)
# Keys are ECDSA P-256; certificates are valid --days days (default 30), or --seconds seconds
# (short-lived node certificates, as a rotation test or a strict PKI issues them).
set -euo pipefail
dir=${1:?usage: make-etcd-certs.sh DIR [--days N] [--server NAME]... [--node NODE]... [--user NAME]...}
shift
days=30
seconds=""
servers=()
nodes=()
users=()
while [ $# -gt 0 ]; do
    case "$1" in
        --days) days=${2:?--days N}; shift 2 ;;
        --seconds) seconds=${2:?--seconds N}; shift 2 ;;
        --server) servers+=("${2:?--server NAME}"); shift 2 ;;
        --node) nodes+=("${2:?--node NODE}"); shift 2 ;;
        --user) users+=("${2:?--user NAME}"); shift 2 ;;
        *) echo "make-etcd-certs.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
explicit=${#servers[@]}
[ ${#servers[@]} -gt 0 ] || servers=(localhost 127.0.0.1)
for n in "${nodes[@]}" "${users[@]}"; do
    # The CN becomes an etcd user name and, for nodes, part of a key: keep it to fwd's node names.
    if ! [[ "$n" =~ ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$ ]]; then
        echo "make-etcd-certs.sh: invalid name $n (letters, digits, _ . -; 63 at most)" >&2
        exit 2
    fi
done
mkdir -p "$dir"
umask 077
cd "$dir"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [ ! -f ca.pem ] || [ ! -f ca.key ]; then
    key ca.key
    openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/CN=fwd etcd throwaway CA $RANDOM" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -out ca.pem 2>/dev/null
fi

sign() { # csr ext out: `openssl x509 -req` knows only days; `openssl ca` takes exact dates
    if [ -z "$seconds" ]; then
        openssl x509 -req -in "$1" -CA ca.pem -CAkey ca.key -CAcreateserial -sha256 -days "$days" \
            -extfile "$2" -out "$3" 2>/dev/null
        return
    fi
    local db
    db=$(mktemp -d)
    touch "$db/index.txt"
    openssl rand -hex 16 > "$db/serial"
    printf '%s\n' "[ca]" "default_ca=d" "[d]" "database=$db/index.txt" "new_certs_dir=$db" \
        "serial=$db/serial" "default_md=sha256" "policy=p" "unique_subject=no" \
        "[p]" "commonName=supplied" "organizationName=optional" > "$db/ca.cnf"
    openssl ca -batch -notext -config "$db/ca.cnf" -cert ca.pem -keyfile ca.key -in "$1" \
        -extfile "$2" -out "$3" -startdate "$(date -u -d '-60 seconds' +%y%m%d%H%M%SZ)" \
        -enddate "$(date -u -d "+$seconds seconds" +%y%m%d%H%M%SZ)" 2>/dev/null
    rm -rf "$db"
}

issue() { # name subject extensions: written to a temporary name, then renamed (rotation is atomic)
    key "$1.key.new"
    openssl req -new -key "$1.key.new" -subj "$2" -out "$1.csr" 2>/dev/null
    printf '%s\n' "$3" > "$1.ext"
    sign "$1.csr" "$1.ext" "$1.pem.new"
    rm -f "$1.csr" "$1.ext"
    chmod 0644 "$1.pem.new"
    mv -f "$1.key.new" "$1.key"
    mv -f "$1.pem.new" "$1.pem"
}
client() { issue "$1" "/O=fwd/CN=$2" "extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature"; }

san=""
for n in "${servers[@]}"; do
    if [[ "$n" =~ ^[0-9.]+$ || "$n" == *:* ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
if [ ! -f server.pem ] || [ "$explicit" -gt 0 ]; then
    issue server "/O=fwd/CN=etcd" "subjectAltName=${san%,}
extendedKeyUsage=serverAuth,clientAuth
keyUsage=critical,digitalSignature"
fi
[ -f root.pem ] || client root root
[ -f fwd-admin.pem ] || client fwd-admin fwd-admin
for n in "${nodes[@]}"; do client "node-$n" "$n"; done
for n in "${users[@]}"; do client "$n" "$n"; done
rm -f ca.srl
chmod 0644 ca.pem
made=(ca server root fwd-admin)
for n in "${nodes[@]}"; do made+=("node-$n"); done
made+=("${users[@]}")
echo "make-etcd-certs.sh: $(pwd): ${made[*]}"
