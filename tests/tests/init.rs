//! End-to-end tests of `meshcert-init` against the real development CA over
//! TLS on loopback, writing to a real tmpfs when the tests run as root.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use meshcert_tests::{bin_path, DevCa, DevCaOptions, TokenOptions};
use tempfile::TempDir;

const NAMESPACE: &str = "monitoring";
const SERVICE_ACCOUNT: &str = "prometheus";
const SPIFFE_ID: &str = "spiffe://cluster.local/ns/monitoring/sa/prometheus";

fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A certificate directory on its own tmpfs when running as root (as an
/// emptyDir with `medium: Memory` is), otherwise a plain temporary directory.
struct CertVolume {
    dir: TempDir,
    mounted: bool,
}

impl CertVolume {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("meshcert-certs-")
            .tempdir()
            .expect("create a temporary directory");
        let mut mounted = false;
        if is_root() {
            let status = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=4m,mode=0777", "tmpfs"])
                .arg(dir.path())
                .status()
                .expect("run mount");
            assert!(status.success(), "mounting a tmpfs as root failed");
            mounted = true;
        }
        Self { dir, mounted }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for CertVolume {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount").arg(self.dir.path()).status();
        }
    }
}

/// One test's world: a dev CA, a token file and a certificate volume.
struct Pod {
    ca: DevCa,
    volume: CertVolume,
    secrets: TempDir,
}

impl Pod {
    fn start() -> Self {
        Self::start_with(DevCaOptions::default())
    }

    fn start_with(options: DevCaOptions) -> Self {
        let ca = DevCa::start(options).expect("start the dev CA");
        let secrets = tempfile::Builder::new()
            .prefix("meshcert-secrets-")
            .tempdir()
            .expect("create a temporary directory");
        fs::set_permissions(secrets.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let pod = Self {
            ca,
            volume: CertVolume::new(),
            secrets,
        };
        pod.write_token(&TokenOptions::default());
        pod
    }

    fn token_path(&self) -> PathBuf {
        self.secrets.path().join("istio-token")
    }

    fn write_token(&self, options: &TokenOptions) {
        self.ca
            .write_token(&self.token_path(), NAMESPACE, SERVICE_ACCOUNT, options)
            .expect("write the token");
        fs::set_permissions(self.token_path(), fs::Permissions::from_mode(0o644)).unwrap();
    }

    fn out_dir(&self) -> PathBuf {
        self.volume.path().join("certs")
    }

    /// Returns a `meshcert-init` command with this pod's CA, token and output directory.
    fn init(&self) -> Command {
        let mut command = Command::new(bin_path("meshcert-init"));
        command
            .env_clear()
            .env("RUST_LOG", "info")
            .arg("--ca-addr")
            .arg(self.ca.addr().to_string())
            .arg("--ca-root")
            .arg(self.ca.root_pem_path())
            .arg("--token-file")
            .arg(self.token_path())
            .arg("--out-dir")
            .arg(self.out_dir())
            .args([
                "--retry-initial-backoff",
                "50ms",
                "--retry-max-backoff",
                "200ms",
            ]);
        command
    }

    fn file(&self, name: &str) -> PathBuf {
        self.out_dir().join(name)
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.file(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
    }

    /// Returns every entry of the output directory with its bytes or link target.
    fn snapshot(&self) -> Vec<(String, Vec<u8>)> {
        let mut entries = Vec::new();
        collect(&self.out_dir(), "", &mut entries);
        entries.sort();
        entries
    }
}

fn collect(dir: &Path, prefix: &str, entries: &mut Vec<(String, Vec<u8>)>) {
    let Ok(read_dir) = fs::read_dir(dir) else {
        return;
    };
    for entry in read_dir.map(Result::unwrap) {
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        let meta = fs::symlink_metadata(entry.path()).unwrap();
        if meta.is_symlink() {
            let target = fs::read_link(entry.path()).unwrap();
            entries.push((name, target.to_string_lossy().as_bytes().to_vec()));
        } else if meta.is_dir() {
            collect(&entry.path(), &format!("{name}/"), entries);
        } else {
            entries.push((name, fs::read(entry.path()).unwrap()));
        }
    }
}

fn run(command: &mut Command) -> Output {
    command.output().expect("run meshcert-init")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("run openssl (apt-get install openssl)")
}

fn openssl_stdout(args: &[&str]) -> String {
    let output = openssl(args);
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn pem_blocks(pem: &str) -> usize {
    pem.matches("-----BEGIN CERTIFICATE-----").count()
}

/// Publishes a first set with a short lifetime, so a later run with
/// `--renew-ratio 0.98` finds it due and calls the CA again.
fn publish_due_set(pod: &Pod) {
    pod.ca.set_fault("ttl=2m").unwrap();
    let output = run(&mut pod.init());
    assert!(
        output.status.success(),
        "first issuance failed: {}",
        stderr(&output)
    );
    pod.ca.set_fault("").unwrap();
}

#[test]
fn init_issues_valid_set() {
    let pod = Pod::start();
    let output = run(&mut pod.init());
    assert!(
        output.status.success(),
        "meshcert-init failed: {}",
        stderr(&output)
    );

    let mode = |name: &str| fs::metadata(pod.file(name)).unwrap().mode() & 0o777;
    assert_eq!(mode("key.pem"), 0o600, "key.pem mode");
    assert_eq!(mode("cert-chain.pem"), 0o644, "cert-chain.pem mode");
    assert_eq!(mode("root-cert.pem"), 0o644, "root-cert.pem mode");
    for name in ["key.pem", "cert-chain.pem", "root-cert.pem"] {
        let target = fs::read_link(pod.file(name)).unwrap();
        assert_eq!(
            target,
            Path::new("..data").join(name),
            "{name} links into ..data"
        );
    }

    let chain = pod.file("cert-chain.pem");
    let chain = chain.to_str().unwrap();
    let root = pod.file("root-cert.pem");
    let root = root.to_str().unwrap();
    let san = openssl_stdout(&["x509", "-in", chain, "-noout", "-ext", "subjectAltName"]);
    assert!(san.contains(&format!("URI:{SPIFFE_ID}")), "leaf SAN: {san}");
    let subject = openssl_stdout(&["x509", "-in", chain, "-noout", "-subject"]);
    assert_eq!(subject.trim(), "subject=", "leaf subject is empty");

    let verify = openssl_stdout(&["verify", "-CAfile", root, "-untrusted", chain, chain]);
    assert!(verify.contains(": OK"), "openssl verify: {verify}");

    let key_public = openssl_stdout(&[
        "pkey",
        "-in",
        pod.file("key.pem").to_str().unwrap(),
        "-pubout",
    ]);
    let leaf_public = openssl_stdout(&["x509", "-in", chain, "-noout", "-pubkey"]);
    assert_eq!(key_public, leaf_public, "key.pem matches the leaf");

    assert_eq!(
        pem_blocks(&pod.read("cert-chain.pem")),
        2,
        "leaf and intermediate"
    );
    assert_eq!(pem_blocks(&pod.read("root-cert.pem")), 1, "one root");
    assert_eq!(
        pod.read("root-cert.pem"),
        pod.ca.root_pem(),
        "root-cert.pem is the CA's root"
    );
    let first_ca = openssl_stdout(&["x509", "-in", chain, "-noout", "-ext", "basicConstraints"]);
    assert!(
        !first_ca.contains("CA:TRUE"),
        "first certificate is the leaf, not a CA"
    );
}

#[test]
fn init_reuses_valid_set_without_ca() {
    let mut pod = Pod::start();
    let output = run(&mut pod.init());
    assert!(output.status.success(), "first run: {}", stderr(&output));
    let before = pod.snapshot();

    pod.ca.stop().unwrap();
    let output = run(&mut pod.init());
    assert!(output.status.success(), "second run: {}", stderr(&output));
    assert!(stderr(&output).contains("reusing"), "{}", stderr(&output));
    assert_eq!(pod.snapshot(), before, "files unchanged");
}

#[test]
fn init_exits_3_when_ca_unreachable() {
    let pod = Pod::start();
    let closed_port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{closed_port}");
    let started = Instant::now();
    let output = run(pod.init().args(["--ca-addr", &addr, "--timeout", "2s"]));
    let elapsed = started.elapsed();

    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains(&addr), "names the address: {message}");
    assert!(
        message.contains("last error"),
        "names the last error: {message}"
    );
    assert!(
        elapsed >= Duration::from_millis(1500),
        "retried until --timeout: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "stopped at --timeout: {elapsed:?}"
    );
    let leftovers: Vec<_> = pod.snapshot().into_iter().map(|(name, _)| name).collect();
    assert!(leftovers.is_empty(), "no partial files: {leftovers:?}");
}

#[test]
fn init_rejects_leaf_for_other_key() {
    let pod = Pod::start();
    publish_due_set(&pod);
    let before = pod.snapshot();

    pod.ca.set_fault("leaf-other-key").unwrap();
    let output = run(pod.init().args(["--renew-ratio", "0.98"]));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("another public key"),
        "{}",
        stderr(&output)
    );
    assert_eq!(pod.snapshot(), before, "existing set byte-identical");
}

#[test]
fn init_rejects_leaf_for_other_san() {
    let pod = Pod::start();
    publish_due_set(&pod);
    let before = pod.snapshot();

    pod.ca.set_fault("other-san").unwrap();
    let output = run(pod.init().args(["--renew-ratio", "0.98"]));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(message.contains("URI SANs"), "{message}");
    assert!(
        message.contains(SPIFFE_ID),
        "names the expected identity: {message}"
    );
    assert_eq!(pod.snapshot(), before, "existing set byte-identical");
}

#[test]
fn init_rejects_other_san_with_empty_dir() {
    let pod = Pod::start_with(DevCaOptions {
        fault: Some("other-san".to_string()),
        ..DevCaOptions::default()
    });
    let output = run(&mut pod.init());
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        pod.snapshot().is_empty(),
        "nothing published: {:?}",
        pod.snapshot()
    );
}

#[test]
fn init_expired_token_exits_1_at_once() {
    let pod = Pod::start();
    pod.write_token(&TokenOptions {
        expired: true,
        ..TokenOptions::default()
    });
    let started = Instant::now();
    let output = run(&mut pod.init());
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(started.elapsed() < Duration::from_secs(5), "fails at once");
    let message = stderr(&output);
    assert!(message.contains("expired at"), "{message}");
    assert!(
        message.contains(pod.token_path().to_str().unwrap()),
        "names the path: {message}"
    );
}

#[test]
fn init_missing_token_exits_2() {
    let pod = Pod::start();
    let missing = pod.secrets.path().join("no-such-token");
    let output = run(pod.init().arg("--token-file").arg(&missing));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(missing.to_str().unwrap()),
        "{}",
        stderr(&output)
    );
}

#[test]
fn init_empty_token_exits_2() {
    let pod = Pod::start();
    fs::write(pod.token_path(), "\n").unwrap();
    let output = run(&mut pod.init());
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("empty"), "{}", stderr(&output));
}

#[test]
fn init_invalid_root_exits_2() {
    let pod = Pod::start();
    let root = pod.secrets.path().join("root-cert.pem");
    fs::write(
        &root,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let output = run(pod.init().arg("--ca-root").arg(&root));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(root.to_str().unwrap()),
        "{}",
        stderr(&output)
    );
}

#[test]
fn init_unreadable_root_exits_2() {
    let pod = Pod::start();
    let root = pod.secrets.path().join("missing-root.pem");
    let output = run(pod.init().arg("--ca-root").arg(&root));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(root.to_str().unwrap()),
        "{}",
        stderr(&output)
    );
}

#[test]
fn init_bad_ca_addr_exits_2() {
    let pod = Pod::start();
    let output = run(pod.init().args(["--ca-addr", "istiod-without-port"]));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("istiod-without-port"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn init_out_dir_file_exits_2() {
    let pod = Pod::start();
    let file = pod.secrets.path().join("a-file");
    fs::write(&file, "x").unwrap();
    let output = run(pod.init().arg("--out-dir").arg(&file));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        stderr(&output).contains(file.to_str().unwrap()),
        "{}",
        stderr(&output)
    );
}

#[test]
fn init_retries_unavailable() {
    let pod = Pod::start_with(DevCaOptions {
        fault: Some("unavailable-first=3".to_string()),
        ..DevCaOptions::default()
    });
    let output = run(&mut pod.init());
    assert!(output.status.success(), "{}", stderr(&output));
    let retries = stderr(&output).matches("retrying").count();
    assert_eq!(retries, 3, "three retries logged: {}", stderr(&output));
    assert!(pod.file("cert-chain.pem").exists(), "set published");
}

#[test]
fn init_rejected_identity_names_it() {
    let pod = Pod::start();
    let output = run(pod
        .init()
        .args(["--namespace", "other-ns", "--service-account", "other-sa"]));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let message = stderr(&output);
    assert!(
        message.contains("other-ns"),
        "names the namespace: {message}"
    );
    assert!(
        message.contains("other-sa"),
        "names the service account: {message}"
    );
    assert!(
        message.contains("cluster.local"),
        "names the trust domain: {message}"
    );
}

#[test]
fn init_group_lets_app_read_key() {
    if !is_root() {
        eprintln!("skipped: switching uids needs root");
        return;
    }
    const INIT_UID: &str = "4242";
    const APP_UID: &str = "4343";
    const OTHER_UID: &str = "4444";
    const GROUP: &str = "5151";
    let pod = Pod::start();
    fs::set_permissions(
        pod.ca.root_pem_path().parent().unwrap(),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    fs::set_permissions(pod.ca.temp_dir(), fs::Permissions::from_mode(0o755)).unwrap();

    let init = pod.init();
    let program = init.get_program().to_owned();
    let args: Vec<_> = init.get_args().map(ToOwned::to_owned).collect();
    let output = Command::new("setpriv")
        .args(["--reuid", INIT_UID, "--regid", INIT_UID, "--groups", GROUP])
        .arg(program)
        .args(args)
        .args(["--group", GROUP])
        .env_clear()
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "init as uid {INIT_UID}: {}",
        stderr(&output)
    );

    let key = fs::metadata(pod.file("key.pem")).unwrap();
    assert_eq!(key.mode() & 0o777, 0o640, "key.pem mode with --group");
    assert_eq!(key.gid().to_string(), GROUP, "key.pem group");
    assert_eq!(key.uid().to_string(), INIT_UID, "key.pem owner");

    let read_as = |uid: &str, groups: &[&str]| {
        let mut command = Command::new("setpriv");
        command.args(["--reuid", uid, "--regid", uid]);
        if groups.is_empty() {
            command.arg("--clear-groups");
        } else {
            command.args(["--groups", &groups.join(",")]);
        }
        command
            .arg("cat")
            .arg(pod.file("key.pem"))
            .output()
            .unwrap()
    };
    assert!(
        read_as(APP_UID, &[GROUP]).status.success(),
        "app in the group reads the key"
    );
    assert!(
        !read_as(OTHER_UID, &[]).status.success(),
        "uid outside the group cannot"
    );
    drop(init);
}

#[test]
fn init_rejects_invalid_answers() {
    let cases = [
        ("short-chain", "at least 2"),
        ("garbage-pem", "not valid PEM"),
        ("expired-leaf", "expired at"),
        ("not-yet-valid=1h", "--max-clock-skew"),
        ("broken-chain", "does not verify"),
        ("huge=8388608", "OutOfRange"),
    ];
    let pod = Pod::start();
    publish_due_set(&pod);
    let before = pod.snapshot();
    for (fault, expected) in cases {
        pod.ca.set_fault(fault).unwrap();
        let output = run(pod.init().args(["--renew-ratio", "0.98"]));
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(1), "{fault}: {message}");
        assert!(
            message.contains(expected),
            "{fault}: expected {expected:?} in {message}"
        );
        assert_eq!(
            pod.snapshot(),
            before,
            "{fault}: existing set byte-identical"
        );
    }
}

#[test]
fn init_accepts_reversed_chain() {
    let pod = Pod::start_with(DevCaOptions {
        fault: Some("reverse-chain".to_string()),
        ..DevCaOptions::default()
    });
    let output = run(&mut pod.init());
    assert!(output.status.success(), "{}", stderr(&output));
    let chain = pod.file("cert-chain.pem");
    let chain = chain.to_str().unwrap();
    let first = openssl_stdout(&["x509", "-in", chain, "-noout", "-ext", "subjectAltName"]);
    assert!(
        first.contains(SPIFFE_ID),
        "published chain is leaf first: {first}"
    );
    let root = pod.file("root-cert.pem");
    let verify = openssl_stdout(&[
        "verify",
        "-CAfile",
        root.to_str().unwrap(),
        "-untrusted",
        chain,
        chain,
    ]);
    assert!(verify.contains(": OK"), "{verify}");
}

#[test]
fn init_holds_leaf_valid_soon() {
    let pod = Pod::start_with(DevCaOptions {
        fault: Some("not-yet-valid=3s".to_string()),
        ..DevCaOptions::default()
    });
    let started = Instant::now();
    let output = run(&mut pod.init());
    let elapsed = started.elapsed();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("not valid yet"),
        "skew logged: {}",
        stderr(&output)
    );
    assert!(
        elapsed >= Duration::from_secs(2),
        "held until valid: {elapsed:?}"
    );
    let chain = pod.file("cert-chain.pem");
    let check = openssl(&[
        "x509",
        "-in",
        chain.to_str().unwrap(),
        "-noout",
        "-checkend",
        "0",
    ]);
    assert!(check.status.success(), "published leaf is valid now");
}

#[test]
fn init_stalled_ca_exits_3() {
    let pod = Pod::start_with(DevCaOptions {
        fault: Some("stall".to_string()),
        ..DevCaOptions::default()
    });
    let started = Instant::now();
    let output = run(pod
        .init()
        .args(["--request-timeout", "500ms", "--timeout", "2s"]));
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("did not answer within"),
        "{}",
        stderr(&output)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by --timeout"
    );
    assert!(pod.snapshot().is_empty(), "nothing published");
}

#[test]
fn init_retries_internal() {
    let pod = Pod::start_with(DevCaOptions {
        fault: Some("internal-first=2".to_string()),
        ..DevCaOptions::default()
    });
    let output = run(&mut pod.init());
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(
        stderr(&output).matches("retrying").count(),
        2,
        "{}",
        stderr(&output)
    );
}

#[test]
fn init_rsa_key_type() {
    let pod = Pod::start();
    let output = run(pod.init().args(["--key-type", "rsa-2048"]));
    assert!(output.status.success(), "{}", stderr(&output));
    let text = openssl_stdout(&[
        "pkey",
        "-in",
        pod.file("key.pem").to_str().unwrap(),
        "-noout",
        "-text",
    ]);
    assert!(
        text.contains("2048 bit"),
        "RSA 2048 key: {}",
        text.lines().next().unwrap_or_default()
    );
}

#[test]
fn init_malformed_flags_exit_2() {
    let cases = [
        (vec!["--ttl", "0s"], "--ttl"),
        (vec!["--ttl=-1h"], "--ttl"),
        (vec!["--renew-ratio", "1.5"], "--renew-ratio"),
        (vec!["--key-type", "dsa"], "--key-type"),
        (vec!["--timeout", "soon"], "--timeout"),
        (
            vec!["--renew-ratio", "0.5", "--renew-jitter", "0.6"],
            "--renew-jitter",
        ),
    ];
    for (args, flag) in cases {
        let output = Command::new(bin_path("meshcert-init"))
            .env_clear()
            .args(&args)
            .output()
            .unwrap();
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {message}");
        assert!(message.contains(flag), "{args:?}: names {flag}: {message}");
    }
}

#[test]
fn init_retries_until_timeout() {
    let pod = Pod::start_with(DevCaOptions {
        fault: Some("unavailable".to_string()),
        ..DevCaOptions::default()
    });
    let started = Instant::now();
    let output = run(pod.init().args([
        "--timeout",
        "3s",
        "--retry-initial-backoff",
        "1s",
        "--retry-max-backoff",
        "8s",
    ]));
    let elapsed = started.elapsed();
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("Unavailable"),
        "last error named: {}",
        stderr(&output)
    );
    assert!(
        elapsed >= Duration::from_millis(2_900),
        "kept retrying until --timeout: {elapsed:?}"
    );
}

#[test]
fn init_rejects_set_already_due() {
    let pod = Pod::start_with(DevCaOptions {
        fault: Some("intermediate-expires=2s".to_string()),
        ..DevCaOptions::default()
    });
    let output = run(pod.init().args(["--timeout", "2s"]));
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("already due"),
        "{}",
        stderr(&output)
    );
    assert!(
        pod.snapshot().is_empty(),
        "nothing published: {:?}",
        pod.snapshot()
    );
}

#[test]
fn concurrent_inits_keep_a_valid_set() {
    let pod = Pod::start();
    publish_due_set(&pod);
    for round in 0..5 {
        let children: Vec<_> = (0..4)
            .map(|_| {
                pod.init()
                    .args(["--renew-ratio", "0.98"])
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let output = child.wait_with_output().unwrap();
            assert!(
                output.status.success(),
                "round {round}: {}",
                stderr(&output)
            );
        }
        let chain = pod.file("cert-chain.pem");
        let chain = chain.to_str().unwrap();
        let root = pod.file("root-cert.pem");
        let verify = openssl(&[
            "verify",
            "-CAfile",
            root.to_str().unwrap(),
            "-untrusted",
            chain,
            chain,
        ]);
        assert!(
            verify.status.success(),
            "round {round}: the published set is valid"
        );
        let key_public = openssl_stdout(&[
            "pkey",
            "-in",
            pod.file("key.pem").to_str().unwrap(),
            "-pubout",
        ]);
        let leaf_public = openssl_stdout(&["x509", "-in", chain, "-noout", "-pubkey"]);
        assert_eq!(
            key_public, leaf_public,
            "round {round}: key matches the leaf"
        );
    }
}
