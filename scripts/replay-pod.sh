#!/usr/bin/env bash
# Replays the example pods of deploy/kubernetes on this machine and prints
# every container's log: the pod as written (meshcert-init, then the
# meshcert-refresher sidecar and Prometheus) and its native-sidecar variant.
# Needs root, for network and mount namespaces, tmpfs and switching uids.
#
#   scripts/replay-pod.sh                  # both pods
#   scripts/replay-pod.sh example          # the pod of deploy/kubernetes
#   scripts/replay-pod.sh native-sidecar   # the pod of deploy/kubernetes/native-sidecar
#
# The replay is the test tests/tests/deploy.rs (replay_example_pod and
# replay_native_sidecar_pod). It renders the kustomization and runs each
# container's command, arguments and environment unchanged, as the uid, gid
# and groups the manifest names, in its own mount namespace inside one new
# network namespace for the pod. What the manifests name that cannot run
# here is mapped as follows:
#
#   image registry.example.com/meshcert   /usr/local/bin/meshcert-{init,refresher}
#                                         are target/debug's builds, bind-mounted
#                                         read-only where the Dockerfile copies them
#   image quay.io/prometheus/prometheus   /bin/prometheus is Debian's
#                                         /usr/bin/prometheus (2.42 on bookworm)
#   istiod.istio-system.svc:15012         meshcert-devca serve on 127.0.0.1:15012,
#                                         the name resolved by the pod's /etc/hosts
#   ConfigMap istio-ca-root-cert          the dev CA's root-cert.pem
#   projected istio-ca token              meshcert-devca token for the pod's
#                                         namespace (monitoring) and service account
#   scrape target mtls-app.apps.svc:8443  nginx on 127.0.0.1:8443 with a dev CA
#                                         certificate, requiring client certificates
#
# Not replayed: seccomp profiles, cgroup resource limits, probe periods and
# failure thresholds, the kubelet's token rotation, image pulls.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

case "${1:-all}" in
    all) filter=replay_ ;;
    example) filter=replay_example_pod ;;
    native-sidecar) filter=replay_native_sidecar_pod ;;
    *) echo "unknown pod $1; usage: $0 [all|example|native-sidecar]" >&2; exit 2 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/replay-pod.sh needs root (network and mount namespaces, tmpfs, switching uids); run it with sudo" >&2
    exit 1
fi

ensure_rust
ensure_packages prometheus:prometheus nginx:nginx curl:curl nsenter:util-linux ip:iproute2

echo "== building meshcert"
cargo build --workspace --bins --locked --quiet

echo "== replaying ($filter)"
MESHCERT_REPLAY_LOGS=1 cargo test --locked -p meshcert-tests --test deploy -- "$filter" --nocapture
