#!/usr/bin/env bash
# Runs every check of meshcert: formatting, clippy with warnings denied,
# and all unit and end-to-end tests against the real development CA.
# Installs what the tests need (Debian packages as root) first.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_rust
ensure_packages openssl:openssl nginx:nginx keytool:default-jdk-headless

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo build (binaries used by the end-to-end tests)"
cargo build --workspace --bins --locked

echo "== cargo test"
cargo test --workspace --locked -- --test-threads="${MESHCERT_TEST_THREADS:-2}"
