//! Every malformed setting stops both binaries at start with exit code 2
//! and a message that names the flag and the accepted form.
//!
//! `tests/tests/init.rs` covers the first handful of init flags; this file
//! covers the rest for init and every flag for the refresher.

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use meshcert_tests::bin_path;
use meshcert_tests::reliability::{wait_until, RefresherProcess, Workload};

/// One malformed setting: the arguments, the flag the message must name,
/// and a fragment of the accepted form the message must show.
struct Case {
    args: Vec<String>,
    flag: &'static str,
    accepted: &'static str,
}

fn case(args: &[&str], flag: &'static str, accepted: &'static str) -> Case {
    Case {
        args: args.iter().map(|arg| (*arg).to_string()).collect(),
        flag,
        accepted,
    }
}

/// Cases that hold for both binaries, since both take the shared settings.
fn shared_cases() -> Vec<Case> {
    vec![
        case(&["--ttl", "0s"], "--ttl", "such as 24h"),
        case(&["--ttl=-1h"], "--ttl", "such as 90s"),
        case(&["--ttl", "30s"], "--ttl", "at least 1m"),
        case(&["--ttl", "24"], "--ttl", "with a unit"),
        case(&["--renew-ratio", "0"], "--renew-ratio", "between 0 and 1"),
        case(&["--renew-ratio=-0.5"], "--renew-ratio", "between 0 and 1"),
        case(&["--renew-ratio", "1"], "--renew-ratio", "between 0 and 1"),
        case(
            &["--renew-ratio", "half"],
            "--renew-ratio",
            "between 0 and 1",
        ),
        case(&["--renew-jitter", "1"], "--renew-jitter", "up to 1"),
        case(
            &["--renew-ratio", "0.1", "--renew-jitter", "0.2"],
            "--renew-jitter",
            "ratio - jitter must be above 0",
        ),
        case(&["--key-type", "dsa"], "--key-type", "ecdsa-p256"),
        case(
            &["--request-timeout", "0s"],
            "--request-timeout",
            "above zero",
        ),
        case(
            &["--connect-timeout=-5s"],
            "--connect-timeout",
            "such as 90s",
        ),
        case(
            &["--max-clock-skew", "soon"],
            "--max-clock-skew",
            "such as 90s",
        ),
        case(
            &["--retry-initial-backoff", "0s"],
            "--retry-initial-backoff",
            "above zero",
        ),
        case(
            &["--retry-initial-backoff", "2m", "--retry-max-backoff", "1m"],
            "--retry-initial-backoff",
            "must not exceed --retry-max-backoff",
        ),
        case(&["--log-format", "xml"], "--log-format", "json"),
        case(
            &["--group", "no-such-group-meshcert"],
            "--group",
            "numeric GID",
        ),
        case(
            &["--ca-addr", "https://istiod:15012"],
            "--ca-addr",
            "host:port",
        ),
        case(&["--ca-addr", "istiod:0"], "--ca-addr", "host:port"),
    ]
}

fn refresher_only_cases() -> Vec<Case> {
    vec![
        case(
            &["--signal", "RELOAD", "--pid-file", "/run/app.pid"],
            "--signal",
            "SIGHUP",
        ),
        case(
            &["--probe-addr", "localhost"],
            "--probe-addr",
            "such as 127.0.0.1:9852",
        ),
        case(
            &["--admin-addr", "127.0.0.1:99999"],
            "--admin-addr",
            "such as 127.0.0.1:9852",
        ),
        case(&["--exec-timeout", "0s"], "--exec-timeout", "above zero"),
        case(&["--exec", "nginx -s 'reload"], "--exec", "quote"),
    ]
}

/// Runs `binary` with a malformed setting and returns what is wrong with
/// its exit, or `None`. A binary that does not exit within 10 s is killed.
fn check(binary: &str, case: &Case) -> Option<String> {
    let mut child = Command::new(bin_path(binary))
        .env_clear()
        .args(&case.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("starting {binary} failed: {error}"));
    let exited = wait_until(Duration::from_secs(10), || child.try_wait().unwrap());
    if exited.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap();
    let message = String::from_utf8_lossy(&output.stderr);
    let args = &case.args;
    if output.status.code() != Some(2) {
        return Some(format!(
            "{binary} {args:?}: exit {:?} instead of 2; stderr: {message}",
            output.status.code()
        ));
    }
    if !message.contains(case.flag) {
        return Some(format!(
            "{binary} {args:?}: the message does not name {}: {message}",
            case.flag
        ));
    }
    if !message.contains(case.accepted) {
        return Some(format!(
            "{binary} {args:?}: the message does not show the accepted form {:?}: {message}",
            case.accepted
        ));
    }
    None
}

/// Checks every case and fails with the list of cases that went wrong.
fn check_all(binary: &str, cases: &[Case]) {
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| check(binary, case))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn init_rejects_every_malformed_setting() {
    let mut cases = shared_cases();
    cases.push(case(&["--timeout", "0s"], "--timeout", "above zero"));
    check_all("meshcert-init", &cases);
}

#[test]
fn refresher_rejects_every_malformed_setting() {
    let mut cases = shared_cases();
    cases.extend(refresher_only_cases());
    check_all("meshcert-refresher", &cases);
}

#[test]
fn refresher_rejects_out_dir_that_is_a_file() {
    let workload = Workload::start("");
    let a_file = workload.scratch_dir().join("a-file");
    fs::write(&a_file, "x").unwrap();
    let mut command = workload.refresher();
    command.arg("--out-dir").arg(&a_file);
    let Err(error) = RefresherProcess::spawn(command, &workload.scratch_dir().join("log")) else {
        panic!("the refresher started with a file as --out-dir");
    };
    let message = error.to_string();
    assert!(
        message.contains(a_file.to_str().unwrap()),
        "the message does not name the path: {message}"
    );
    assert!(
        message.contains("set --out-dir to a directory"),
        "the message does not name the flag: {message}"
    );
    assert!(message.contains("exit status: 2"), "exit code: {message}");
}
