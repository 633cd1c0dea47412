#!/usr/bin/env bash
# Reproduces the figures in BENCHMARKS.md and prints a summary table.
#
#   scripts/bench.sh                 every section below except profiles (about 13 minutes
#                                    after the release build)
#   scripts/bench.sh init fleet      only the named sections
#   scripts/bench.sh profiles        binary size and speed per release-profile variant
#                                    (a full build per variant: about 5 minutes each)
#
# Sections: init refresher sizes micro openssl loadgen fleet profiles.
# Results go to $MESHCERT_BENCH_OUT (default target/bench) as JSON, the
# fleet plot to docs/benchmarks/fleet.png. Every server is a dev CA this
# script starts on 127.0.0.1; every loop is bounded in count and time.
# As root it installs Debian packages and mounts a tmpfs for the
# certificate directories; as another user it uses /dev/shm.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

OUT=$(mkdir -p "${MESHCERT_BENCH_OUT:-target/bench}" && cd "${MESHCERT_BENCH_OUT:-target/bench}" && pwd)
BIN=target/release
INIT_RUNS=${MESHCERT_BENCH_INIT_RUNS:-30}
ALL_SECTIONS=(init refresher sizes micro openssl loadgen fleet)
if [ $# -eq 0 ]; then
    SECTIONS=("${ALL_SECTIONS[@]}")
else
    SECTIONS=("$@")
fi

wants() {
    local section
    for section in "${SECTIONS[@]}"; do
        [ "$section" = "$1" ] && return 0
    done
    return 1
}

ensure_python_plotting() {
    python3 -c 'import matplotlib' 2>/dev/null && return 0
    echo "installing matplotlib from PyPI" >&2
    python3 -m pip install --quiet matplotlib
}

# Writes the machine description that every result is read against.
record_machine() {
    python3 - "$OUT/machine.json" <<'EOF'
import json, os, platform, subprocess, sys, datetime
def first(path, key):
    with open(path) as f:
        for line in f:
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return "unknown"
machine = {
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    "nproc": os.cpu_count(),
    "cpu": first("/proc/cpuinfo", "model name"),
    "memory": first("/proc/meminfo", "MemTotal"),
    "kernel": platform.release(),
    "load_average_at_start": open("/proc/loadavg").read().split()[:3],
    "rustc": subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip(),
}
json.dump(machine, open(sys.argv[1], "w"), indent=2)
print(f"machine: {machine['nproc']} cores, {machine['cpu']}, {machine['memory']}, load {' '.join(machine['load_average_at_start'])}")
EOF
}

# Mounts a tmpfs for the certificate directories, as a `medium: Memory`
# emptyDir is; falls back to /dev/shm without root.
TMPFS=/dev/shm
mount_tmpfs() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "not root: certificate directories go to /dev/shm" >&2
        return 0
    fi
    TMPFS="$OUT/tmpfs"
    mkdir -p "$TMPFS"
    if ! mountpoint -q "$TMPFS"; then
        mount -t tmpfs -o size=256m,mode=1777 meshcert-bench "$TMPFS"
        trap 'umount "$TMPFS" 2>/dev/null || true' EXIT
    fi
}

ensure_rust
ensure_packages python3:python3 openssl:openssl
ensure_python_plotting
record_machine
mount_tmpfs

echo "== cargo build --release (product binaries and benchmark tools)"
cargo build --release --locked --workspace --bins

if wants init; then
    for key_type in ecdsa-p256 rsa-2048; do
        echo "== init time to certificate, $key_type, $INIT_RUNS runs"
        "$BIN/meshcert-startbench" --runs "$INIT_RUNS" --key-type "$key_type" \
            --out-parent "$TMPFS" --json "$OUT/init-$key_type.json"
    done
fi

if wants refresher; then
    echo "== refresher footprint: 100 renewals, an idle minute, restores, SIGTERM"
    "$BIN/meshcert-refresherbench" --renewals 100 --idle 60s \
        --out-parent "$TMPFS" --json "$OUT/refresher.json"
fi

if wants sizes; then
    echo "== release binary sizes"
    python3 - "$OUT/sizes.json" "$BIN" <<'EOF'
import json, os, sys
out, bin_dir = sys.argv[1], sys.argv[2]
sizes = {name: os.path.getsize(os.path.join(bin_dir, name))
         for name in ("meshcert-init", "meshcert-refresher")}
json.dump(sizes, open(out, "w"), indent=2)
for name, size in sizes.items():
    print(f"{name}: {size} bytes ({size / 2**20:.2f} MiB)")
EOF
fi

if wants micro; then
    echo "== criterion micro-benchmarks"
    # Named benches only: the library's own bench target is libtest, which
    # rejects criterion's options.
    MESHCERT_BENCH_DIR="$TMPFS" cargo bench --locked -p meshcert-common \
        --bench csr --bench validate --bench publish -- \
        --warm-up-time 1 --measurement-time 3 --noplot >"$OUT/criterion.log" 2>&1 ||
        { cat "$OUT/criterion.log"; exit 1; }
    grep -E '^[a-z_]+/|time:' "$OUT/criterion.log" || true
fi

if wants openssl; then
    # OpenSSL's RSA key generation on the same machine, as a yardstick for
    # the pure-Rust rsa crate that meshcert uses.
    echo "== openssl genpkey RSA for comparison"
    python3 - "$OUT/openssl-rsa.json" <<'EOF'
import json, statistics, subprocess, sys, time
runs = {2048: 20, 3072: 10, 4096: 5}
result = {"version": subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()}
for bits, count in runs.items():
    times = []
    for _ in range(count):
        started = time.perf_counter()
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}",
                        "-out", "/dev/null"], check=True, timeout=120, stderr=subprocess.DEVNULL)
        times.append((time.perf_counter() - started) * 1000)
    result[f"rsa-{bits}"] = {"n": count, "median_ms": statistics.median(times),
                             "min_ms": min(times), "max_ms": max(times)}
    print(f"openssl rsa-{bits}: median {statistics.median(times):.0f} ms over {count} keys (process start included)")
json.dump(result, open(sys.argv[1], "w"), indent=2)
EOF
fi

if wants loadgen; then
    echo "== dev CA throughput: 64 tasks over 4 reused channels for 20 s"
    "$BIN/meshcert-loadgen" --tasks 64 --channels 4 --duration 20s --json "$OUT/loadgen.json"
fi

if wants fleet; then
    echo "== fleet: 10,000 refreshers, a 60 s CA outage (5 minutes)"
    "$BIN/meshcert-fleet" --refreshers 10000 --csv "$OUT/fleet.csv" --json "$OUT/fleet.json" >/dev/null
    mkdir -p docs/benchmarks
    python3 - "$OUT/fleet.csv" "$OUT/fleet.json" docs/benchmarks/fleet.png <<'EOF'
import csv, json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
rows = list(csv.DictReader(open(sys.argv[1])))
report = json.load(open(sys.argv[2]))
second = [int(r["second"]) for r in rows]
reached = [int(r["issued"]) + int(r["failed"]) for r in rows]
refused = [int(r["connect_failed"]) for r in rows]
expired = [int(r["expired"]) for r in rows]
fig, ax = plt.subplots(figsize=(10, 4.5))
ax.plot(second, reached, label="requests that reached the CA", color="tab:blue", linewidth=1)
ax.plot(second, refused, label="attempts refused (CA down)", color="tab:gray", linewidth=0.8)
ax.axhline(report["steady_mean_per_s"], color="tab:green", linestyle="--", linewidth=0.8,
           label=f"steady mean {report['steady_mean_per_s']:.0f}/s")
ax.axhline(3 * report["steady_mean_per_s"], color="tab:red", linestyle=":", linewidth=0.8,
           label="3x steady mean")
ax.axvspan(*report["outage_window_s"], color="tab:red", alpha=0.08, label="CA stopped")
ax.set_xlabel("seconds since start")
ax.set_ylabel("per second")
ax2 = ax.twinx()
ax2.plot(second, expired, color="tab:orange", linewidth=0.8, label="refreshers with an expired set")
ax2.set_ylabel("refreshers with an expired set", color="tab:orange")
ax2.set_ylim(0, max(1, max(expired)) * 1.2)
lines = ax.get_legend_handles_labels()
lines2 = ax2.get_legend_handles_labels()
ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)
ax.set_title(f"{report['refreshers']} simulated refreshers, TTL {report['ttl_s']:.0f} s, one dev CA")
fig.tight_layout()
fig.savefig(sys.argv[3], dpi=110)
print(f"fleet: steady {report['steady_mean_per_s']:.0f}/s, peak after restart "
      f"{report['peak_after_recovery_per_s']}/s ({report['peak_over_steady']:.1f}x), plot {sys.argv[3]}")
EOF
fi

if wants profiles; then
    # Each variant overrides settings of [profile.release] with --config and
    # builds into one shared target directory, so a rerun only relinks.
    echo "== release-profile variants (slow: a full build per variant)"
    crypto_at_3="profile.release.package.rsa.opt-level=3 profile.release.package.num-bigint-dig.opt-level=3 profile.release.package.ring.opt-level=3"
    variants=(
        "current:"
        "opt-s:profile.release.opt-level=\"s\""
        "opt-z:profile.release.opt-level=\"z\""
        "opt-s-crypto-3:profile.release.opt-level=\"s\" $crypto_at_3"
        "opt-z-crypto-3:profile.release.opt-level=\"z\" $crypto_at_3"
        "thin-lto:profile.release.lto=\"thin\""
        "no-lto:profile.release.lto=false"
        "cgu-16:profile.release.codegen-units=16"
        "unwind:profile.release.panic=\"unwind\""
    )
    : >"$OUT/profiles.jsonl"
    for variant in "${variants[@]}"; do
        name=${variant%%:*} settings=${variant#*:}
        # MESHCERT_BENCH_VARIANTS="opt-s opt-z" limits the run to those variants.
        case " ${MESHCERT_BENCH_VARIANTS:-$name} " in
            *" $name "*) ;;
            *) continue ;;
        esac
        config=()
        for setting in $settings; do
            config+=(--config "$setting")
        done
        echo "-- $name ${settings:-(as in Cargo.toml)}"
        CARGO_TARGET_DIR=target/profiles cargo build --release --locked \
            -p meshcert-init -p meshcert-refresher "${config[@]}" 2>&1 | tail -1
        # Time the variant's binaries with the release dev CA and floor client.
        variant_bin="$OUT/profile-$name"
        mkdir -p "$variant_bin"
        cp target/profiles/release/meshcert-init target/profiles/release/meshcert-refresher "$variant_bin/"
        cp "$BIN/meshcert-devca" "$BIN/meshcert-floor" "$variant_bin/"
        for key_type in ecdsa-p256 rsa-2048; do
            MESHCERT_BIN_DIR="$variant_bin" "$BIN/meshcert-startbench" --runs 15 \
                --key-type "$key_type" --out-parent "$TMPFS" \
                --json "$variant_bin/init-$key_type.json" >/dev/null
        done
        MESHCERT_BIN_DIR="$variant_bin" "$BIN/meshcert-refresherbench" --renewals 20 --idle 1s \
            --restores 1 --restarts 0 --out-parent "$TMPFS" --json "$variant_bin/refresher.json" >/dev/null
        python3 - "$name" "$settings" "$variant_bin" >>"$OUT/profiles.jsonl" <<'EOF2'
import json, os, sys
name, settings, bin_dir = sys.argv[1:4]
row = {"variant": name, "settings": settings}
for binary in ("meshcert-init", "meshcert-refresher"):
    row[binary] = os.path.getsize(os.path.join(bin_dir, binary))
for key_type in ("ecdsa-p256", "rsa-2048"):
    report = json.load(open(os.path.join(bin_dir, f"init-{key_type}.json")))
    row[f"init_{key_type}_ms"] = report["init_ms"]["total"]["median"]
    row[f"key_{key_type}_ms"] = report["init_ms"]["key_and_csr"]["median"]
memory = json.load(open(os.path.join(bin_dir, "refresher.json")))["memory_after_renewals"]
row["refresher_rss_kib"] = memory["vm_rss_kib"]
row["refresher_rss_anon_kib"] = memory["rss_anon_kib"]
print(json.dumps(row))
EOF2
        tail -1 "$OUT/profiles.jsonl"
    done
fi

echo
echo "== summary (medians; spread in brackets)"
python3 - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None
rows = []
def row(figure, value, target="", verdict=""):
    rows.append((figure, value, target, verdict))
def check(ok):
    return "met" if ok else "MISSED"
machine = load("machine.json")
for key_type in ("ecdsa-p256", "rsa-2048"):
    r = load(f"init-{key_type}.json")
    if not r:
        continue
    t, f = r["init_ms"]["total"], r["floor_ms"]["total"]
    row(f"init time to certificate, {key_type}", f"{t['median']:.1f} ms [p10 {t['p10']:.1f}, p90 {t['p90']:.1f}]",
        "<= 15 ms" if key_type == "ecdsa-p256" else "", check(t["median"] <= 15) if key_type == "ecdsa-p256" else "")
    row(f"floor client, {key_type}", f"{f['median']:.1f} ms [p10 {f['p10']:.1f}, p90 {f['p90']:.1f}]")
    row(f"init / floor, {key_type}", f"{r['ratio_of_medians']:.2f}",
        "<= 2" if key_type == "ecdsa-p256" else "", check(r["ratio_of_medians"] <= 2) if key_type == "ecdsa-p256" else "")
r = load("refresher.json")
if r:
    m = r["memory_after_renewals"]
    row("refresher VmHWM after 100 renewals", f"{m['vm_hwm_kib'] / 1024:.2f} MiB", "<= 4 MiB", check(m["vm_hwm_kib"] <= 4096))
    row("refresher VmRSS after 100 renewals", f"{m['vm_rss_kib'] / 1024:.2f} MiB (anon {m['rss_anon_kib'] / 1024:.2f}, file {m['rss_file_kib'] / 1024:.2f})",
        "<= 4 MiB", check(m["vm_rss_kib"] <= 4096))
    row("refresher CPU per renewal", f"{r['cpu_ms_per_renewal']:.1f} ms")
    row("refresher wakeups in an idle minute", f"{r['idle_wakeups']} over {r['threads_idle']} thread(s)", "<= 1", check(r["idle_wakeups"] <= 1))
    s = r["sigterm_to_exit_ms"]
    row("refresher SIGTERM to exit", f"{s['median']:.1f} ms [{s['min']:.1f}, {s['max']:.1f}]")
    s = r["restore_ms"]
    row("refresher restores a deleted key.pem", f"{s['median']:.1f} ms [{s['min']:.1f}, {s['max']:.1f}]")
r = load("sizes.json")
if r:
    for name, size in r.items():
        row(f"{name} size", f"{size / 2**20:.2f} MiB", "<= 5 MiB", check(size <= 5 * 2**20))
r = load("loadgen.json")
if r:
    row("dev CA issuances/s, 64 clients, 4 channels", f"{r['issued_per_second']:.0f}/s ({r['failed']} failed)", ">= 1000/s",
        check(r["issued_per_second"] >= 1000))
r = load("fleet.json")
if r:
    row("fleet steady CA requests/s", f"{r['steady_mean_per_s']:.0f}/s")
    row("fleet peak after 60 s outage (1 s bins)", f"{r['peak_after_recovery_per_s']}/s = {r['peak_over_steady']:.1f}x steady",
        "<= 3x", check(r["peak_over_steady"] <= 3))
criterion = os.path.join("target", "criterion")
# Criterion names a benchmark's directory after its id, with "/" as "_"
# for ids given to bench_function.
for bench in ("key_and_csr/ecdsa-p256", "key_and_csr/ecdsa-p384", "key_and_csr/rsa-2048",
              "rsa_key_generation/rsa-2048", "rsa_key_generation/rsa-3072", "rsa_key_generation/rsa-4096",
              "validate_answer_leaf_intermediate_root", "publish_three_files"):
    path = os.path.join(criterion, bench, "new", "estimates.json")
    if not os.path.exists(path):
        continue
    median = json.load(open(path))["median"]
    ns, low, high = median["point_estimate"], median["confidence_interval"]["lower_bound"], median["confidence_interval"]["upper_bound"]
    unit, scale = ("ms", 1e6) if ns >= 1e6 else ("us", 1e3)
    row(f"criterion {bench}", f"{ns / scale:.1f} {unit} [{low / scale:.1f}, {high / scale:.1f}]")
width = max(len(r[0]) for r in rows) if rows else 10
vwidth = max(len(r[1]) for r in rows) if rows else 10
lines = [f"| {'figure':<{width}} | {'value':<{vwidth}} | target | verdict |",
         f"|{'-' * (width + 2)}|{'-' * (vwidth + 2)}|--------|---------|"]
lines += [f"| {f:<{width}} | {v:<{vwidth}} | {t} | {c} |" for f, v, t, c in rows]
print("\n".join(lines))
if machine:
    print(f"\n{machine['date']}: {machine['nproc']} cores, {machine['cpu']}, {machine['memory']}, "
          f"load at start {' '.join(machine['load_average_at_start'])}")
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
EOF
