//! Secrets stay secret: with `RUST_LOG=trace` no log line of either binary
//! contains the private key (the base64 body of `key.pem`), the bearer
//! token or the PKCS#12 password, and no file that holds a key is readable
//! by anyone but its owner, or its owner and group with `--group`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use meshcert_tests::reliability::{
    check_published_set, is_root, wait_until, RefresherProcess, Workload,
};

const PKCS12_PASSWORD: &str = "correct-horse-battery-staple";
/// Files of a set that hold the private key: the standard key and the two
/// extra outputs the tests ask for.
const KEY_FILES: [&str; 3] = ["key.pem", "tls.pem", "keystore.p12"];

/// Adds the extra outputs that hold the key, with a password file.
fn with_key_outputs(workload: &Workload, command: &mut Command) {
    let password_file = workload.scratch_dir().join("pkcs12-password");
    fs::write(&password_file, PKCS12_PASSWORD).unwrap();
    command
        .args(["--bundle-file=tls.pem", "--pkcs12=keystore.p12"])
        .arg("--pkcs12-password-file")
        .arg(password_file);
}

/// Returns the base64 body of the published `key.pem`, joined into one line.
fn key_body(out_dir: &Path) -> String {
    let pem = fs::read_to_string(out_dir.join("key.pem")).unwrap();
    let body: String = pem
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    assert!(body.len() > 100, "key.pem has no base64 body: {body:?}");
    body
}

/// Fails if `log` contains any secret or any 64-character line of a key body.
fn assert_no_secrets(binary: &str, log: &str, key_bodies: &[String], token: &str) {
    assert!(
        log.lines().count() > 20,
        "{binary}: the trace log has only {} lines; is RUST_LOG=trace applied?",
        log.lines().count()
    );
    for (index, body) in key_bodies.iter().enumerate() {
        assert!(
            !log.contains(body.as_str()),
            "{binary}: key {index} is in the log"
        );
        for chunk in body.as_bytes().chunks(64).filter(|chunk| chunk.len() >= 32) {
            let chunk = std::str::from_utf8(chunk).unwrap();
            assert!(
                !log.contains(chunk),
                "{binary}: part of key {index} is in the log"
            );
        }
    }
    let signature = token.rsplit('.').next().unwrap_or_default();
    assert!(!log.contains(token), "{binary}: the token is in the log");
    assert!(
        !log.contains(signature),
        "{binary}: the token's signature is in the log"
    );
    assert!(
        !log.contains(PKCS12_PASSWORD),
        "{binary}: the PKCS#12 password is in the log"
    );
}

/// Checks that every key file under `out_dir`, in every generation, is
/// owner-only, or owner and group `group` without write for the group.
fn assert_key_modes(out_dir: &Path, group: Option<u32>) {
    let mut checked = 0;
    for entry in fs::read_dir(out_dir).unwrap().filter_map(Result::ok) {
        let path = entry.path();
        if !path.is_dir() || fs::symlink_metadata(&path).unwrap().is_symlink() {
            continue;
        }
        for name in KEY_FILES {
            let file = path.join(name);
            let meta = fs::metadata(&file).unwrap();
            let mode = meta.mode() & 0o777;
            match group {
                None => assert_eq!(mode, 0o600, "{}: mode {mode:o}", file.display()),
                Some(gid) => {
                    assert_eq!(mode, 0o640, "{}: mode {mode:o}", file.display());
                    assert_eq!(meta.gid(), gid, "{}: group", file.display());
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= KEY_FILES.len(), "no key file was checked");
}

#[test]
fn init_logs_no_secrets_at_trace() {
    let workload = Workload::start("");
    let mut command = workload.init();
    command.env("RUST_LOG", "trace");
    with_key_outputs(&workload, &mut command);
    let text = command.output().unwrap();
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    let first_key = key_body(&workload.out_dir());

    // A second run on an emptied directory issues again, logging JSON this time.
    fs::remove_dir_all(workload.out_dir()).unwrap();
    let mut command = workload.init();
    command.env("RUST_LOG", "trace").arg("--log-format=json");
    with_key_outputs(&workload, &mut command);
    let json = command.output().unwrap();
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let second_key = key_body(&workload.out_dir());

    let mut log = String::new();
    for output in [&text, &json] {
        log.push_str(&String::from_utf8_lossy(&output.stdout));
        log.push_str(&String::from_utf8_lossy(&output.stderr));
    }
    assert_no_secrets(
        "meshcert-init",
        &log,
        &[first_key, second_key],
        &workload.token(),
    );
    assert_key_modes(&workload.out_dir(), None);
}

#[test]
fn refresher_logs_no_secrets_at_trace() {
    let workload = Workload::start("");
    let mut command = workload.refresher();
    command.env("RUST_LOG", "trace");
    with_key_outputs(&workload, &mut command);
    let refresher =
        RefresherProcess::spawn(command, &workload.scratch_dir().join("refresher.log")).unwrap();
    let published = wait_until(Duration::from_secs(20), || {
        check_published_set(&workload.out_dir()).ok()
    });
    assert!(
        published.is_some(),
        "no first set; log:\n{}",
        refresher.log()
    );

    let mut keys = vec![key_body(&workload.out_dir())];
    for _ in 0..2 {
        let (status, body) = refresher.renew().unwrap();
        assert_eq!(status, 200, "POST /renew: {body}");
        keys.push(key_body(&workload.out_dir()));
    }
    let (status, _) = refresher.get("/metrics").unwrap();
    assert_eq!(status, 200);
    assert_no_secrets(
        "meshcert-refresher",
        &refresher.log(),
        &keys,
        &workload.token(),
    );
    assert_key_modes(&workload.out_dir(), None);
}

#[test]
fn refresher_group_keys_stay_in_group() {
    if !is_root() {
        eprintln!("skipped: giving files to a group needs root");
        return;
    }
    const GROUP: u32 = 5151;
    let workload = Workload::start("");
    let mut command = workload.refresher();
    command.arg(format!("--group={GROUP}"));
    with_key_outputs(&workload, &mut command);
    let refresher = RefresherProcess::spawn(command, &workload.scratch_dir().join("log")).unwrap();
    let published = wait_until(Duration::from_secs(20), || {
        check_published_set(&workload.out_dir()).ok()
    });
    assert!(
        published.is_some(),
        "no first set; log:\n{}",
        refresher.log()
    );
    let (status, body) = refresher.renew().unwrap();
    assert_eq!(status, 200, "POST /renew: {body}");

    assert_key_modes(&workload.out_dir(), Some(GROUP));
    for entry in fs::read_dir(workload.out_dir())
        .unwrap()
        .filter_map(Result::ok)
    {
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        if meta.is_dir() {
            let mode = meta.permissions().mode() & 0o777;
            assert_eq!(mode, 0o750, "{}: generation mode", entry.path().display());
        }
    }
}

#[test]
fn init_group_keys_stay_in_group() {
    if !is_root() {
        eprintln!("skipped: giving files to a group needs root");
        return;
    }
    const GROUP: u32 = 5152;
    let workload = Workload::start("");
    let mut command = workload.init();
    command.arg(format!("--group={GROUP}"));
    with_key_outputs(&workload, &mut command);
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_key_modes(&workload.out_dir(), Some(GROUP));
}
