//! Checks of a replayed example pod. They cover the published set and its
//! file modes, each container's process and probes, and Prometheus's view of
//! the mTLS target before and after a forced renewal. They also cover the
//! alert rules and the refresher's peak memory.

use std::fs;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::replay::{self, PodReplay};
use super::{pod, sandbox, yaml};

/// The published set as read from the certificate volume.
struct PublishedSet {
    serial: String,
    spiffe_id: String,
}

/// Formats a certificate serial as nginx's `$ssl_client_serial` does:
/// upper-case hex without leading zeros.
fn serial_hex(raw: &[u8]) -> String {
    let hex: String = raw.iter().map(|byte| format!("{byte:02X}")).collect();
    hex.trim_start_matches('0').to_string()
}

fn read_published_set(dir: &Path) -> anyhow::Result<PublishedSet> {
    use anyhow::Context;
    use x509_parser::extensions::GeneralName;

    let chain = fs::read(dir.join("cert-chain.pem")).context("failed to read cert-chain.pem")?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&chain).context("cert-chain.pem is not PEM")?;
    let leaf = pem.parse_x509().context("the leaf is not a certificate")?;
    let spiffe_id = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|name| match name {
                GeneralName::URI(uri) => Some(uri.to_string()),
                _ => None,
            })
        })
        .context("the leaf has no URI SAN")?;
    Ok(PublishedSet {
        serial: serial_hex(leaf.raw_serial()),
        spiffe_id,
    })
}

/// Returns the client certificate serials of the successful mTLS requests
/// in the scrape target's access log, oldest first.
fn verified_client_serials(access_log: &Path) -> Vec<String> {
    fs::read_to_string(access_log)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            match (fields.next(), fields.next(), fields.next()) {
                (Some("SUCCESS"), Some(serial), Some("200")) => {
                    Some(serial.trim_start_matches('0').to_string())
                }
                _ => None,
            }
        })
        .collect()
}

/// Returns Prometheus's port, from its readiness probe.
fn prometheus_port(replay: &PodReplay) -> anyhow::Result<u64> {
    let spec = replay.container_spec("prometheus")?;
    spec.pointer("/readinessProbe/httpGet/port")
        .and_then(Value::as_u64)
        .ok_or_else(|| anyhow::anyhow!("the prometheus container has no readiness probe port"))
}

/// Calls a Prometheus HTTP API path with URL-encoded query parameters and
/// returns its `data`.
fn prometheus_api(
    replay: &PodReplay,
    path: &str,
    parameters: &[(&str, &str)],
) -> anyhow::Result<Value> {
    let mut extra = vec!["--get".to_string()];
    for (name, value) in parameters {
        extra.push("--data-urlencode".to_string());
        extra.push(format!("{name}={value}"));
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let url = format!("http://127.0.0.1:{}{path}", prometheus_port(replay)?);
    let (code, body) = replay.http("GET", &url, &extra)?;
    anyhow::ensure!(code == 200, "{url} returned {code}: {body}");
    let answer: Value = serde_json::from_str(&body)?;
    anyhow::ensure!(answer["status"] == "success", "{url} failed: {body}");
    Ok(answer["data"].clone())
}

/// Returns the active target of `job` if Prometheus scraped it successfully.
fn healthy_target(replay: &PodReplay, job: &str) -> anyhow::Result<Option<Value>> {
    let data = prometheus_api(replay, "/api/v1/targets", &[("state", "active")])?;
    let target = yaml::array_at(&data, "/activeTargets")
        .iter()
        .find(|target| target["labels"]["job"] == job)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("Prometheus has no target of job {job}"))?;
    match target["health"].as_str() {
        Some("up") => Ok(Some(target)),
        Some("down") => anyhow::bail!("target of job {job} is down: {}", target["lastError"]),
        _ => Ok(None),
    }
}

/// Returns two scrape intervals and a margin: the longest Prometheus can
/// take to scrape a target after a change.
fn scrape_timeout(resources: &[Value]) -> Duration {
    let config =
        pod::prometheus_config(resources).expect("the example has a Prometheus configuration");
    let interval = config["global"]["scrape_interval"].as_str().unwrap_or("1m");
    let interval = humantime::parse_duration(interval).expect("scrape_interval is a duration");
    interval * 2 + Duration::from_secs(5)
}

/// Returns the value of a field of `/proc/PID/status`.
fn proc_status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Checks that a running container's process has the uid, gid, groups,
/// privileges and read-only root its manifest sets.
fn check_container_process(replay: &mut PodReplay, name: &str) -> anyhow::Result<()> {
    use anyhow::ensure;

    let spec = replay.container_spec(name)?;
    let pod_context = replay.pod.spec["securityContext"].clone();
    let pid = replay.process(name)?.pid();
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid = spec["securityContext"]["runAsUser"].to_string();
    let gid = spec["securityContext"]["runAsGroup"].to_string();
    ensure!(
        proc_status_field(&status, "Uid")
            .split_whitespace()
            .all(|id| id == uid),
        "{name} runs with uids {}, expected {uid}",
        proc_status_field(&status, "Uid")
    );
    ensure!(
        proc_status_field(&status, "Gid")
            .split_whitespace()
            .all(|id| id == gid),
        "{name} runs with gids {}, expected {gid}",
        proc_status_field(&status, "Gid")
    );
    let groups = proc_status_field(&status, "Groups");
    let fs_group = pod_context["fsGroup"].to_string();
    ensure!(
        groups.split_whitespace().any(|group| group == fs_group),
        "{name} is not in fsGroup {fs_group}: groups {groups}"
    );
    ensure!(
        proc_status_field(&status, "NoNewPrivs") == "1",
        "{name} may gain privileges"
    );
    ensure!(
        proc_status_field(&status, "CapEff")
            .trim_start_matches('0')
            .is_empty(),
        "{name} has capabilities {}",
        proc_status_field(&status, "CapEff")
    );

    // In mountinfo the fifth field is the mount point relative to the
    // process's root, and the sixth the mount options.
    let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    // Mounts stack in order, so the last mount on "/" is the one in effect.
    let root_options = mountinfo
        .lines()
        .rev()
        .map(|line| line.split_whitespace().collect::<Vec<_>>())
        .find(|fields| fields.len() > 5 && fields[4] == "/")
        .map(|fields| fields[5].to_string())
        .unwrap_or_default();
    ensure!(
        root_options.split(',').any(|option| option == "ro"),
        "{name}'s root filesystem is mounted {root_options}, expected read-only"
    );
    Ok(())
}

/// Starts the pod's containers, waits until their probes pass, and checks
/// each process against its manifest.
fn start_and_probe(replay: &mut PodReplay) -> anyhow::Result<()> {
    replay.start_containers()?;
    for name in ["meshcert-refresher", "prometheus"] {
        let spec = replay.container_spec(name)?;
        for probe in ["readinessProbe", "livenessProbe"] {
            replay.wait_for_probe(&spec, probe, Duration::from_secs(30))?;
        }
        check_container_process(replay, name)?;
    }
    Ok(())
}

/// Waits until Prometheus reports the mTLS target up and nginx logged a
/// verified client certificate with `serial`.
fn wait_for_mtls_scrape(replay: &PodReplay, serial: &str) -> anyhow::Result<Value> {
    let access_log = replay.targets()[0].access_log.clone();
    sandbox::wait_until(
        &format!("a scrape of job mtls-app with client certificate {serial}"),
        scrape_timeout(&replay.resources),
        || {
            // Checked first, so a failing scrape's error is what a timeout reports.
            let Some(target) = healthy_target(replay, "mtls-app")? else {
                return Ok(None);
            };
            let seen = verified_client_serials(&access_log);
            Ok(seen.iter().any(|seen| seen == serial).then_some(target))
        },
    )
}

pub(crate) fn check_example_pod(replay: &mut PodReplay) -> anyhow::Result<()> {
    use anyhow::{ensure, Context};
    use std::os::unix::fs::MetadataExt;

    replay.run_init_containers()?;
    let init = replay.container_spec("meshcert-init")?;
    let out_dir = pod::literal_env(&init)["OUTPUT_CERTS"].clone();
    let certs = replay.volume_dir("meshcert-init", &out_dir)?;
    let first = read_published_set(&certs)?;
    let expected_id = format!(
        "spiffe://cluster.local/ns/{}/sa/prometheus",
        replay::NAMESPACE
    );
    ensure!(
        first.spiffe_id == expected_id,
        "published SPIFFE ID {}, expected {expected_id}",
        first.spiffe_id
    );

    // key.pem: 0640 with the pod's fsGroup, readable by Prometheus's uid
    // through that group and by no one outside it.
    let fs_group = replay.pod.spec["securityContext"]["fsGroup"]
        .as_u64()
        .context("fsGroup")?;
    let key = certs.join("key.pem");
    let metadata = fs::metadata(&key)?;
    ensure!(
        metadata.mode() & 0o777 == 0o640,
        "key.pem has mode {:o}, expected 640",
        metadata.mode() & 0o777
    );
    ensure!(
        u64::from(metadata.gid()) == fs_group,
        "key.pem has gid {}, expected fsGroup {fs_group}",
        metadata.gid()
    );
    let prometheus = replay.container_spec("prometheus")?;
    let uid = prometheus["securityContext"]["runAsUser"]
        .as_u64()
        .context("Prometheus's runAsUser")?;
    let gid = prometheus["securityContext"]["runAsGroup"]
        .as_u64()
        .context("Prometheus's runAsGroup")?;
    ensure!(
        replay.can_read_as(&key, uid, &[gid, fs_group])?,
        "Prometheus's uid {uid} cannot read key.pem through fsGroup {fs_group}"
    );
    ensure!(
        !replay.can_read_as(&key, uid, &[gid])?,
        "uid {uid} reads key.pem without being in fsGroup {fs_group}"
    );

    start_and_probe(replay)?;
    let target = wait_for_mtls_scrape(replay, &first.serial)?;
    ensure!(
        target["scrapeUrl"]
            .as_str()
            .is_some_and(|url| url.starts_with("https://")),
        "the target is not scraped over TLS: {}",
        target["scrapeUrl"]
    );
    let port = replay.targets()[0].port;
    let (code, _) = replay.http(
        "GET",
        &format!("https://127.0.0.1:{port}/metrics"),
        &["--insecure"],
    )?;
    ensure!(
        code == 400,
        "the target returned {code} to a request without a client certificate, so it does not require one"
    );

    // A forced renewal publishes a new set, which the next scrape presents.
    let refresher = replay.container_spec("meshcert-refresher")?;
    let admin = pod::literal_env(&refresher)["ADMIN_ADDR"].clone();
    let (code, body) = replay.http("POST", &format!("http://{admin}/renew"), &["--data", ""])?;
    ensure!(code == 200, "POST /renew returned {code}: {body}");
    let renewed = read_published_set(&certs)?;
    ensure!(
        renewed.serial != first.serial,
        "POST /renew did not publish a new certificate"
    );
    wait_for_mtls_scrape(replay, &renewed.serial)?;

    check_alert_rules(replay)?;

    let limit = refresher["resources"]["limits"]["memory"]
        .as_str()
        .context("refresher memory limit")?;
    let limit_kib = yaml::parse_quantity_bytes(limit)? / 1024;
    let pid = replay.process("meshcert-refresher")?.pid();
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let peak_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc status")?;
    println!(
        "meshcert-refresher (debug build) peak RSS after a renewal: {peak_kib} KiB; limit {limit}"
    );
    ensure!(
        peak_kib < limit_kib,
        "the refresher's peak RSS {peak_kib} KiB exceeds its limit {limit}"
    );
    Ok(())
}

/// Checks the example alert rules against what Prometheus scraped from the
/// refresher: every metric they use exists, and no rule fires on a healthy pod.
fn check_alert_rules(replay: &PodReplay) -> anyhow::Result<()> {
    sandbox::wait_until(
        "Prometheus scrapes the refresher",
        scrape_timeout(&replay.resources),
        || healthy_target(replay, "meshcert"),
    )?;
    for rule in pod::prometheus_rules() {
        for metric in pod::metric_names(&rule.expr) {
            let series = prometheus_api(replay, "/api/v1/series", &[("match[]", &metric)])?;
            anyhow::ensure!(
                series.as_array().is_some_and(|series| !series.is_empty()),
                "alert {} uses {metric}, which the refresher does not export",
                rule.alert
            );
        }
        let result = prometheus_api(replay, "/api/v1/query", &[("query", &rule.expr)])?;
        anyhow::ensure!(
            yaml::array_at(&result, "/result").is_empty(),
            "alert {} fires on a healthy pod: {result}",
            rule.alert
        );
    }
    Ok(())
}

pub(crate) fn check_native_sidecar_pod(replay: &mut PodReplay) -> anyhow::Result<()> {
    let refresher = replay.container_spec("meshcert-refresher")?;
    let out_dir = pod::literal_env(&refresher)["OUTPUT_CERTS"].clone();
    let certs = replay.volume_dir("meshcert-refresher", &out_dir)?;

    // run_init_containers returns once the startup probe passed, before any
    // container starts: the set must be published by then.
    replay.run_init_containers()?;
    let published = read_published_set(&certs)?;
    start_and_probe(replay)?;
    wait_for_mtls_scrape(replay, &published.serial)?;
    Ok(())
}
