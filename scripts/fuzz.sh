#!/usr/bin/env bash
# Builds meshcert's fuzz targets with libFuzzer on stable Rust and runs each
# one for a bounded time from a seed corpus made with openssl.
#
#   scripts/fuzz.sh [TARGET...]
#
# MESHCERT_FUZZ_SECONDS sets the run time of each target (default 20, or
# 600 with MESHCERT_LONG_TESTS=1). Inputs that crash a target are saved in
# fuzz/artifacts/TARGET/ and make the script fail, with the log in
# fuzz/logs/TARGET.log. The corpus grows in fuzz/corpus/TARGET/ across
# runs. The instrumented build goes to MESHCERT_FUZZ_TARGET_DIR (default
# ~/.cache/meshcert/fuzz-target), outside the work tree, so a fresh clone
# on the same machine reuses it: the first build takes about 6 minutes on
# 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_rust
ensure_packages openssl:openssl

if [ "${MESHCERT_LONG_TESTS:-0}" = 1 ]; then
    seconds=${MESHCERT_FUZZ_SECONDS:-600}
else
    seconds=${MESHCERT_FUZZ_SECONDS:-20}
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(validate_answer pem_certificates token_claims)
fi

# cargo-fuzz would set these flags itself but needs a nightly toolchain for
# its sanitizer flags; sanitizer coverage alone works on stable rustc.
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing"
# An explicit --target keeps the flags away from build scripts and proc
# macros, which run on the host without the libFuzzer runtime.
host=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=${MESHCERT_FUZZ_TARGET_DIR:-$HOME/.cache/meshcert/fuzz-target}
echo "== building fuzz targets (release, debug assertions on) in $CARGO_TARGET_DIR"
# Not --locked: fuzz/Cargo.lock picks up a dependency added to common on
# the next build instead of failing it.
cargo build --manifest-path fuzz/Cargo.toml --release --bins --target "$host"
bin_dir=$CARGO_TARGET_DIR/$host/release

make_seeds() {
    local seeds=$1 work
    work=$(mktemp -d)
    mkdir -p "$seeds/validate_answer" "$seeds/pem_certificates" "$seeds/token_claims"

    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 36500 \
        -subj "/O=fuzz/CN=fuzz root" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$work/root.key" -out "$work/root.pem" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/O=fuzz/CN=fuzz intermediate" -keyout "$work/int.key" -out "$work/int.csr" 2>/dev/null
    printf 'basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n' >"$work/int.ext"
    openssl x509 -req -in "$work/int.csr" -CA "$work/root.pem" -CAkey "$work/root.key" \
        -CAcreateserial -days 36500 -extfile "$work/int.ext" -out "$work/int.pem" 2>/dev/null
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/" \
        -keyout "$work/leaf.key" -out "$work/leaf.csr" 2>/dev/null
    printf '%s\n' "basicConstraints=critical,CA:FALSE" \
        "keyUsage=critical,digitalSignature,keyEncipherment" \
        "extendedKeyUsage=serverAuth,clientAuth" \
        "subjectAltName=URI:spiffe://cluster.local/ns/fuzz/sa/fuzz" >"$work/leaf.ext"
    openssl x509 -req -in "$work/leaf.csr" -CA "$work/int.pem" -CAkey "$work/int.key" \
        -CAcreateserial -days 36500 -extfile "$work/leaf.ext" -out "$work/leaf.pem" 2>/dev/null

    local leaf int root
    leaf=$(cat "$work/leaf.pem")
    int=$(cat "$work/int.pem")
    root=$(cat "$work/root.pem")
    local dir=$seeds/validate_answer
    # Flag byte: bit 0 takes the expected key from the leaf, bits 1-2 pick
    # the clock, bit 3 allows clock skew (see fuzz/src/lib.rs).
    printf '\x01%s\0%s\0%s' "$leaf" "$int" "$root" >"$dir/in-order"
    printf '\x01%s\0%s\0%s' "$root" "$int" "$leaf" >"$dir/reversed"
    printf '\x01%s\n%s\0%s' "$leaf" "$int" "$root" >"$dir/leaf-and-intermediate-joined"
    printf '\x00%s\0%s\0%s' "$leaf" "$int" "$root" >"$dir/other-key"
    printf '\x03%s\0%s\0%s' "$leaf" "$int" "$root" >"$dir/before-validity"
    printf '\x07%s\0%s\0%s' "$leaf" "$int" "$root" >"$dir/after-validity"
    printf '\x09%s\0%s' "$leaf" "$root" >"$dir/missing-intermediate"
    printf '\x01%s' "$leaf" >"$dir/leaf-alone"

    dir=$seeds/pem_certificates
    cp "$work/leaf.pem" "$dir/leaf"
    cat "$work/leaf.pem" "$work/int.pem" "$work/root.pem" >"$dir/chain"
    cat "$work/leaf.key" "$work/leaf.pem" >"$dir/key-and-certificate"
    printf -- '-----BEGIN CERTIFICATE-----\nnot base64!!\n-----END CERTIFICATE-----\n' >"$dir/garbage"

    dir=$seeds/token_claims
    b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
    local header
    header=$(printf '{"alg":"RS256","kid":"fuzz"}' | b64url)
    local claims=(
        '{"aud":["istio-ca"],"exp":4102444800,"iat":1700000000,"iss":"https://kubernetes.default.svc","kubernetes.io":{"namespace":"fuzz","pod":{"name":"p","uid":"u"},"serviceaccount":{"name":"fuzz","uid":"u"}},"nbf":1700000000,"sub":"system:serviceaccount:fuzz:fuzz"}'
        '{"sub":"system:serviceaccount:ns:sa","exp":-1}'
        '{"kubernetes.io":{"namespace":"Bad/Name"}}'
        '{"exp":9223372036854775807}'
    )
    local index=0 payload
    for payload in "${claims[@]}"; do
        printf '%s.%s.c2lnbmF0dXJl' "$header" "$(printf '%s' "$payload" | b64url)" >"$dir/token-$index"
        index=$((index + 1))
    done
    rm -rf "$work"
}

seeds=$(mktemp -d)
trap 'rm -rf "$seeds"' EXIT
make_seeds "$seeds"

failed=0
for target in "${targets[@]}"; do
    corpus=fuzz/corpus/$target
    artifacts=fuzz/artifacts/$target
    mkdir -p "$corpus" "$artifacts"
    cp "$seeds/$target/"* "$corpus/"
    # Logs stay in this work tree: clones that share the build directory
    # may fuzz at the same time.
    log=fuzz/logs/$target.log
    mkdir -p fuzz/logs
    echo "== fuzzing $target for ${seconds}s"
    status=0
    "$bin_dir/$target" "$corpus" \
        -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=1024 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    coverage=$(grep -a -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n 1)
    corpus_size=$(find "$corpus" -type f | wc -l)
    echo "$target: ${execs:-?} executions (${speed:-?}/s), ${coverage:-no coverage line}," \
        "corpus $corpus_size inputs, exit $status"
    if [ "$status" -ne 0 ]; then
        failed=1
        grep -a -E -A 20 'panicked|ERROR: libFuzzer' "$log" | head -n 40 >&2 || true
        echo "$target: crashing input saved under $artifacts/ (full log: $log)" >&2
    fi
done
exit "$failed"
