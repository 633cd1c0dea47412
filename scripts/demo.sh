#!/usr/bin/env bash
# Builds meshcert, starts the development CA on loopback, mints a
# service-account token, runs meshcert-init into ./demo/certs with the
# default settings, shows the published files, then stops the CA.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_rust
ensure_packages openssl:openssl

echo "== building meshcert"
cargo build --workspace --bins --locked --quiet
bin=target/debug

demo=demo
rm -rf "$demo/ca.addr" "$demo/certs"
mkdir -p "$demo"

echo "== starting the development CA on 127.0.0.1"
"$bin/meshcert-devca" serve --listen 127.0.0.1:0 --state-dir "$demo/ca" \
    --ready-file "$demo/ca.addr" 2>"$demo/devca.log" &
ca_pid=$!
trap 'kill "$ca_pid" 2>/dev/null; wait "$ca_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    [ -s "$demo/ca.addr" ] && break
    kill -0 "$ca_pid" 2>/dev/null || { cat "$demo/devca.log" >&2; exit 1; }
    sleep 0.1
done
[ -s "$demo/ca.addr" ] || { echo "the development CA did not start; see $demo/devca.log" >&2; exit 1; }
ca_addr=$(cat "$demo/ca.addr")
echo "   listening on $ca_addr"

echo "== minting a projected-style token for namespace demo, service account app"
"$bin/meshcert-devca" token --state-dir "$demo/ca" --namespace demo --service-account app >"$demo/token"

echo "== meshcert-init"
"$bin/meshcert-init" \
    --ca-addr "$ca_addr" \
    --ca-root "$demo/ca/root-cert.pem" \
    --token-file "$demo/token" \
    --out-dir "$demo/certs"

echo
echo "== published files ($demo/certs)"
ls -la "$demo/certs"
echo
echo "== current generation ($demo/certs/..data)"
ls -lL "$demo/certs/..data/"
echo
echo "== leaf certificate"
openssl x509 -in "$demo/certs/cert-chain.pem" -noout -subject -serial -startdate -enddate -ext subjectAltName
echo
echo "== chain check"
openssl verify -CAfile "$demo/certs/root-cert.pem" -untrusted "$demo/certs/cert-chain.pem" "$demo/certs/cert-chain.pem"
