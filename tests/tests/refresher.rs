//! End-to-end tests of `meshcert-refresher`: the real binary against the
//! real development CA over TLS on loopback, with real files, real signals,
//! a real nginx and a real inotify watcher standing in for the app.
//!
//! Short lifetimes come from the CA's `ttl=` fault; the CA back-dates a
//! leaf's notBefore by a tenth of such a lifetime, so a `ttl=6s` leaf lives
//! 6.6 s and, with `--renew-ratio 0.5`, is renewed about 2.7 s after issuance.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshcert_tests::{bin_path, DevCa, DevCaOptions, TokenOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use notify::{RecursiveMode, Watcher};
use serde_json::Value;
use tempfile::TempDir;

const NAMESPACE: &str = "monitoring";
const SERVICE_ACCOUNT: &str = "prometheus";
const SPIFFE_ID: &str = "spiffe://cluster.local/ns/monitoring/sa/prometheus";

/// Maximum wait for the refresher to log its bound addresses.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Maximum wait for the first set after start.
const FIRST_SET_TIMEOUT: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Polls `probe` every [`POLL_INTERVAL`] until it returns `Some` or `timeout` passes.
fn wait_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// One test's world: a dev CA, a token file and a working directory.
struct Pod {
    ca: DevCa,
    dir: TempDir,
}

impl Pod {
    /// Starts a CA with the fault specification `fault` (such as `ttl=6s`).
    fn start(fault: &str) -> Self {
        let options = DevCaOptions {
            fault: (!fault.is_empty()).then(|| fault.to_string()),
            ..DevCaOptions::default()
        };
        let ca = DevCa::start(options)
            .unwrap_or_else(|error| panic!("starting the dev CA failed: {error:#}"));
        let dir = tempfile::Builder::new()
            .prefix("meshcert-refresher-test-")
            .tempdir()
            .expect("create a temporary directory");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        ca.write_token(
            &dir.path().join("istio-token"),
            NAMESPACE,
            SERVICE_ACCOUNT,
            &TokenOptions::default(),
        )
        .expect("write the token");
        Self { ca, dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn out_dir(&self) -> PathBuf {
        self.path("certs")
    }

    /// Returns a refresher command for this pod: ports picked by the
    /// kernel, JSON logs, short retry backoff and renewal at half the lifetime.
    fn refresher(&self) -> Command {
        let mut command = Command::new(bin_path("meshcert-refresher"));
        command
            .env_clear()
            .env("RUST_LOG", "info")
            .arg("--ca-addr")
            .arg(self.ca.addr().to_string())
            .arg("--ca-root")
            .arg(self.ca.root_pem_path())
            .arg("--token-file")
            .arg(self.path("istio-token"))
            .arg("--out-dir")
            .arg(self.out_dir())
            .args([
                "--log-format=json",
                "--probe-addr=127.0.0.1:0",
                "--admin-addr=127.0.0.1:0",
                "--renew-ratio=0.5",
                "--renew-jitter=0.05",
                "--retry-initial-backoff=200ms",
                "--retry-max-backoff=1s",
                "--request-timeout=3s",
            ]);
        command
    }

    /// Starts `command` with its log in this pod's directory and waits for
    /// its endpoints.
    fn spawn(&self, command: Command) -> Refresher {
        Refresher::spawn(command, self.path("refresher.log"))
    }

    /// Starts the refresher and waits until its first set is published and
    /// `/ready` reports it, so the public links exist too.
    fn spawn_with_set(&self, command: Command) -> Refresher {
        let refresher = self.spawn(command);
        let first = wait_until(FIRST_SET_TIMEOUT, || {
            let (status, _) = refresher.get("/ready");
            (status == 200).then(|| read_published(&self.out_dir()))?
        });
        assert!(
            first.is_some(),
            "no set was published within {FIRST_SET_TIMEOUT:?}; log:\n{}",
            refresher.log()
        );
        refresher
    }
}

/// A running `meshcert-refresher`; dropping it kills the process.
struct Refresher {
    child: Child,
    log_path: PathBuf,
    probe_addr: SocketAddr,
    admin_addr: SocketAddr,
}

impl Refresher {
    fn spawn(mut command: Command, log_path: PathBuf) -> Self {
        let log = fs::File::create(&log_path).expect("create the refresher log");
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        let child = command.spawn().expect("start meshcert-refresher");
        let mut refresher = Self {
            child,
            log_path,
            probe_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };

        let addresses = wait_until(START_TIMEOUT, || {
            if let Some(status) = refresher.child.try_wait().unwrap() {
                panic!(
                    "the refresher exited with {status} at start; log:\n{}",
                    refresher.log()
                );
            }
            let probe = refresher.logged_addr("serving probe endpoints")?;
            let admin = refresher.logged_addr("serving admin endpoints")?;
            Some((probe, admin))
        });
        let Some((probe_addr, admin_addr)) = addresses else {
            panic!(
                "the refresher did not log its addresses within {START_TIMEOUT:?}; log:\n{}",
                refresher.log()
            );
        };
        refresher.probe_addr = probe_addr;
        refresher.admin_addr = admin_addr;
        refresher
    }

    fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Returns the JSON log records whose message is `message`.
    fn records(&self, message: &str) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|record| record["message"] == message)
            .collect()
    }

    fn logged_addr(&self, message: &str) -> Option<SocketAddr> {
        let records = self.records(message);
        records.first()?["addr"].as_str()?.parse().ok()
    }

    /// Returns the generations of every "published a new certificate set" record.
    fn published_generations(&self) -> Vec<String> {
        self.records("published a new certificate set")
            .iter()
            .filter_map(|record| record["generation"].as_str().map(str::to_string))
            .collect()
    }

    fn get(&self, path: &str) -> (u16, String) {
        http(self.probe_addr, "GET", path)
    }

    /// Sends SIGTERM and waits up to 5 s; returns the exit status and the time taken.
    fn terminate(&mut self) -> (Option<ExitStatus>, Duration) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let started = Instant::now();
        kill(pid, Signal::SIGTERM).expect("send SIGTERM to the refresher");
        let status = wait_until(Duration::from_secs(5), || self.child.try_wait().unwrap());
        (status, started.elapsed())
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one HTTP/1.1 request and returns the status code and body.
fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|error| panic!("connecting to {addr} failed: {error}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .unwrap_or_else(|error| panic!("{method} {path} on {addr} failed: {error}"));
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// One published set, read through a single resolution of `..data`.
#[derive(Debug, Clone)]
struct PublishedSet {
    /// When the set was read, so it can be verified at that time later.
    read_at: SystemTime,
    generation: String,
    serial: String,
    key_pem: String,
    chain_pem: String,
    root_pem: String,
}

fn read_published(out_dir: &Path) -> Option<PublishedSet> {
    let generation = fs::read_link(out_dir.join("..data")).ok()?;
    let generation_dir = out_dir.join(&generation);
    let chain_pem = fs::read_to_string(generation_dir.join("cert-chain.pem")).ok()?;
    Some(PublishedSet {
        read_at: SystemTime::now(),
        generation: generation.to_string_lossy().into_owned(),
        serial: leaf_serial(&chain_pem)?,
        key_pem: fs::read_to_string(generation_dir.join("key.pem")).ok()?,
        root_pem: fs::read_to_string(generation_dir.join("root-cert.pem")).ok()?,
        chain_pem,
    })
}

/// Returns the serial of the first certificate in `pem` as lowercase hex without leading zeros.
fn leaf_serial(pem: &str) -> Option<String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let certificate = block.parse_x509().ok()?;
    Some(normalize_serial(&format!("{:x}", certificate.serial)))
}

fn normalize_serial(hex: &str) -> String {
    let trimmed = hex.trim().trim_start_matches('0').to_ascii_lowercase();
    if trimmed.is_empty() {
        "0".to_string()
    } else {
        trimmed
    }
}

/// Waits until the published serial differs from `previous` and returns the new set.
fn wait_for_new_set(out_dir: &Path, previous: &str, timeout: Duration) -> Option<PublishedSet> {
    wait_until(timeout, || {
        read_published(out_dir).filter(|set| set.serial != previous)
    })
}

/// Runs a command to completion, killing it after `timeout`.
fn run_with_timeout(command: &mut Command, timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("starting {command:?} failed: {error}"));
    let finished = wait_until(timeout, || child.try_wait().unwrap());
    if finished.is_none() {
        let _ = child.kill();
    }
    child
        .wait_with_output()
        .expect("collect the command output")
}

fn openssl(args: &[&str], dir: &Path) -> Output {
    run_with_timeout(
        Command::new("openssl").args(args).current_dir(dir),
        Duration::from_secs(10),
    )
}

/// Verifies with openssl a generation's chain to its roots, at the time the
/// set was read, and its key against its leaf.
fn assert_set_verifies(set: &PublishedSet, scratch: &Path) {
    let read_at = set
        .read_at
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    fs::write(scratch.join("key.pem"), &set.key_pem).unwrap();
    fs::write(scratch.join("cert-chain.pem"), &set.chain_pem).unwrap();
    fs::write(scratch.join("root-cert.pem"), &set.root_pem).unwrap();

    let verify = openssl(
        &[
            "verify",
            "-attime",
            &read_at,
            "-CAfile",
            "root-cert.pem",
            "-untrusted",
            "cert-chain.pem",
            "cert-chain.pem",
        ],
        scratch,
    );
    assert!(
        verify.status.success(),
        "openssl verify failed for serial {}: {}{}",
        set.serial,
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );

    let key_public = openssl(&["pkey", "-in", "key.pem", "-pubout"], scratch);
    let leaf_public = openssl(
        &["x509", "-in", "cert-chain.pem", "-noout", "-pubkey"],
        scratch,
    );
    assert!(key_public.status.success(), "openssl pkey failed");
    assert_eq!(
        key_public.stdout, leaf_public.stdout,
        "key.pem does not match the leaf of serial {}",
        set.serial
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a free port")
        .port()
}

/// A `sh` child that appends a line to a file on each SIGHUP, for at most 60 s.
struct HupRecorder {
    child: Child,
    record: PathBuf,
}

impl HupRecorder {
    fn start(record: PathBuf) -> Self {
        let script = format!(
            "trap 'echo hup >> {}' HUP; i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done",
            record.display()
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .spawn()
            .expect("start sh");
        // Give sh time to install the trap; an earlier SIGHUP would end it.
        std::thread::sleep(Duration::from_millis(200));
        Self { child, record }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn count(&self) -> usize {
        fs::read_to_string(&self.record)
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }
}

impl Drop for HupRecorder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_pid_file(path: &Path, pid: u32) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{pid}\n")).unwrap();
    fs::rename(&tmp, path).unwrap();
}

#[test]
fn refresher_rotates_on_schedule() {
    let pod = Pod::start("ttl=6s");
    let refresher = pod.spawn_with_set(pod.refresher());
    let scratch = pod.path("scratch");
    fs::create_dir(&scratch).unwrap();

    let mut sets = vec![read_published(&pod.out_dir()).unwrap()];
    let mut published_at = vec![Instant::now()];
    for round in 1..=3 {
        let previous = sets.last().unwrap().serial.clone();
        let next = wait_for_new_set(&pod.out_dir(), &previous, Duration::from_secs(10));
        let Some(next) = next else {
            panic!(
                "renewal {round} did not happen within 10s; log:\n{}",
                refresher.log()
            );
        };
        published_at.push(Instant::now());
        sets.push(next);
    }

    let serials: BTreeSet<&str> = sets.iter().map(|set| set.serial.as_str()).collect();
    let keys: BTreeSet<&str> = sets.iter().map(|set| set.key_pem.as_str()).collect();
    assert_eq!(serials.len(), 4, "serials were reused: {serials:?}");
    assert_eq!(keys.len(), 4, "a key was reused across renewals");
    for set in &sets {
        assert_set_verifies(set, &scratch);
    }

    // A 6.6 s lifetime renewed when 45 to 55 % of it remains is renewed
    // 2.4 to 3.0 s after issuance. The bounds leave room for a slow machine.
    for pair in published_at.windows(2).skip(1) {
        let interval = pair[1] - pair[0];
        assert!(
            interval >= Duration::from_millis(1500),
            "renewed after only {interval:?}: earlier than scheduled"
        );
        assert!(
            interval <= Duration::from_millis(5000),
            "renewed after {interval:?}: later than scheduled"
        );
    }

    let issued = refresher.records("published a new certificate set");
    assert!(
        issued.len() >= 4,
        "expected at least 4 publish records, found {}",
        issued.len()
    );
    for record in &issued {
        assert_eq!(record["spiffe_id"], SPIFFE_ID, "{record}");
        assert!(record["serial"].is_string(), "no serial in {record}");
        assert!(record["expires_at"].is_string(), "no expiry in {record}");
    }
}

/// nginx serving TLS from the published files, reloaded by SIGHUP.
struct Nginx {
    child: Child,
    pid_file: PathBuf,
    port: u16,
}

impl Nginx {
    fn start(dir: &Path, out_dir: &Path) -> Self {
        let nginx = Path::new("/usr/sbin/nginx");
        assert!(
            nginx.exists(),
            "nginx is not installed; scripts/test.sh installs it, or run apt-get install -y nginx"
        );
        let port = free_port();
        let prefix = dir.join("nginx");
        fs::create_dir_all(prefix.join("logs")).unwrap();
        let pid_file = prefix.join("nginx.pid");
        let config = format!(
            "worker_processes 1;\n\
             pid {pid};\n\
             error_log {prefix}/logs/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {prefix}/client_body;\n\
               proxy_temp_path {prefix}/proxy;\n\
               fastcgi_temp_path {prefix}/fastcgi;\n\
               uwsgi_temp_path {prefix}/uwsgi;\n\
               scgi_temp_path {prefix}/scgi;\n\
               server {{\n\
                 listen 127.0.0.1:{port} ssl;\n\
                 ssl_certificate {out}/cert-chain.pem;\n\
                 ssl_certificate_key {out}/key.pem;\n\
                 location / {{ return 200 \"ok\\n\"; }}\n\
               }}\n\
             }}\n",
            pid = pid_file.display(),
            prefix = prefix.display(),
            out = out_dir.display(),
        );
        let config_path = prefix.join("nginx.conf");
        fs::write(&config_path, config).unwrap();

        let child = Command::new(nginx)
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(prefix.join("logs/error.log"))
            .arg("-c")
            .arg(&config_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nginx");
        let nginx = Self {
            child,
            pid_file,
            port,
        };
        let listening = wait_until(Duration::from_secs(10), || {
            let pid_written = nginx.pid_file.exists();
            let accepting = TcpStream::connect(("127.0.0.1", port)).is_ok();
            (pid_written && accepting).then_some(())
        });
        assert!(
            listening.is_some(),
            "nginx did not start within 10s; error log:\n{}",
            fs::read_to_string(prefix.join("logs/error.log")).unwrap_or_default()
        );
        nginx
    }

    /// Returns the serial of the certificate nginx presents now.
    fn served_serial(&self) -> Option<String> {
        let output = run_with_timeout(
            Command::new("openssl").args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{}", self.port),
                "-servername",
                "localhost",
            ]),
            Duration::from_secs(5),
        );
        let text = String::from_utf8_lossy(&output.stdout);
        let begin = text.find("-----BEGIN CERTIFICATE-----")?;
        let end = text.find("-----END CERTIFICATE-----")? + "-----END CERTIFICATE-----".len();
        leaf_serial(&text[begin..end])
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        if wait_until(Duration::from_secs(5), || self.child.try_wait().unwrap()).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn refresher_reloads_nginx_with_sighup() {
    let pod = Pod::start("ttl=10s");
    let pid_file = pod.path("nginx/nginx.pid");
    let mut command = pod.refresher();
    command.arg("--signal=HUP").arg("--pid-file").arg(&pid_file);
    let refresher = pod.spawn_with_set(command);
    let nginx = Nginx::start(pod.dir.path(), &pod.out_dir());

    let mut previous = read_published(&pod.out_dir()).unwrap().serial;
    for round in 1..=3 {
        let next = wait_for_new_set(&pod.out_dir(), &previous, Duration::from_secs(15));
        let Some(next) = next else {
            panic!(
                "renewal {round} did not happen within 15s; log:\n{}",
                refresher.log()
            );
        };
        let served = wait_until(Duration::from_secs(5), || {
            nginx
                .served_serial()
                .filter(|serial| *serial == next.serial)
        });
        assert_eq!(
            served.as_deref(),
            Some(next.serial.as_str()),
            "nginx did not serve serial {} of renewal {round} within 5s; last served {:?}; log:\n{}",
            next.serial,
            nginx.served_serial(),
            refresher.log()
        );
        previous = next.serial;
    }

    let (_, metrics) = refresher.get("/metrics");
    assert!(
        metrics.contains("meshcert_notifications_total{method=\"signal\",result=\"success\"}"),
        "no successful signal notification counted:\n{metrics}"
    );
}

#[test]
fn refresher_swaps_seen_by_dir_watcher() {
    let pod = Pod::start("ttl=6s");
    let out_dir = pod.out_dir();
    fs::create_dir_all(&out_dir).unwrap();

    // The app: an inotify watch on the directory that resolves ..data on
    // each event and reads the set from that generation.
    let seen: Arc<Mutex<Vec<PublishedSet>>> = Arc::default();
    let mut watcher = {
        let seen = Arc::clone(&seen);
        let out_dir = out_dir.clone();
        notify::recommended_watcher(move |_event: notify::Result<notify::Event>| {
            let Some(set) = read_published(&out_dir) else {
                return;
            };
            let mut seen = seen.lock().unwrap();
            if seen.last().map(|last| &last.generation) != Some(&set.generation) {
                seen.push(set);
            }
        })
        .expect("create the watcher")
    };
    watcher
        .watch(&out_dir, RecursiveMode::NonRecursive)
        .expect("watch the output directory");

    let refresher = pod.spawn_with_set(pod.refresher());
    let mut serial = read_published(&out_dir).unwrap().serial;
    for round in 1..=3 {
        let next = wait_for_new_set(&out_dir, &serial, Duration::from_secs(10));
        let Some(next) = next else {
            panic!(
                "renewal {round} did not happen within 10s; log:\n{}",
                refresher.log()
            );
        };
        serial = next.serial;
    }
    // Let the watcher handle the last swap's events.
    std::thread::sleep(Duration::from_millis(300));
    drop(watcher);

    let published = refresher.published_generations();
    let seen = seen.lock().unwrap().clone();
    let seen_generations: Vec<&str> = seen.iter().map(|set| set.generation.as_str()).collect();
    assert!(
        published.len() >= 4,
        "expected at least 4 swaps, log has {published:?}"
    );
    for generation in &published {
        assert!(
            seen_generations.contains(&generation.as_str()),
            "the watcher missed swap to {generation}; it saw {seen_generations:?}"
        );
    }
    let scratch = pod.path("scratch");
    fs::create_dir(&scratch).unwrap();
    for set in &seen {
        assert_set_verifies(set, &scratch);
    }
}

#[test]
fn refresher_keeps_set_while_ca_down() {
    let pod = Pod::start("ttl=8s");
    let refresher = pod.spawn_with_set(pod.refresher());
    let first = read_published(&pod.out_dir()).unwrap();
    let first_seen = Instant::now();
    pod.ca.set_fault("unavailable").unwrap();

    let retried = wait_until(Duration::from_secs(10), || {
        let records = refresher.records(
            "requesting a certificate failed; the published set stays and the request is retried",
        );
        (!records.is_empty()).then_some(records)
    });
    let Some(retries) = retried else {
        panic!("no retry was logged within 10s; log:\n{}", refresher.log());
    };
    assert_eq!(retries[0]["level"], "WARN", "{}", retries[0]);
    assert_eq!(retries[0]["reason"], "unavailable", "{}", retries[0]);

    let during = read_published(&pod.out_dir()).unwrap();
    assert_eq!(
        during.serial, first.serial,
        "the published set changed while the CA was down"
    );
    let (status, body) = refresher.get("/ready");
    if first_seen.elapsed() < Duration::from_secs(7) {
        assert_eq!(status, 200, "/ready failed before expiry: {body}");
    }

    let expired = wait_until(Duration::from_secs(12), || {
        let (status, body) = refresher.get("/ready");
        (status == 503).then_some(body)
    });
    let Some(body) = expired else {
        panic!(
            "/ready did not turn 503 after the set expired; log:\n{}",
            refresher.log()
        );
    };
    assert!(body.contains("expired"), "503 body names no expiry: {body}");
    let after_expiry = read_published(&pod.out_dir()).unwrap();
    assert_eq!(
        after_expiry.serial, first.serial,
        "the expired set was not left in place"
    );
    assert!(
        !refresher
            .records("the published certificate set has expired; TLS with it fails until a renewal succeeds")
            .is_empty(),
        "the expiry was not logged; log:\n{}",
        refresher.log()
    );
    let (_, metrics) = refresher.get("/metrics");
    assert!(
        metrics.contains("meshcert_renewal_failures_total{reason=\"unavailable\"}"),
        "failures by reason not counted:\n{metrics}"
    );

    pod.ca.set_fault("").unwrap();
    let recovered = wait_until(Duration::from_secs(5), || {
        let (status, _) = refresher.get("/ready");
        (status == 200).then_some(())
    });
    assert!(
        recovered.is_some(),
        "/ready did not return to 200 within 5s of the CA's return; log:\n{}",
        refresher.log()
    );
    let renewed = read_published(&pod.out_dir()).unwrap();
    assert_ne!(
        renewed.serial, first.serial,
        "no new set after the CA returned"
    );
}

#[test]
fn refresher_restores_removed_or_altered_set() {
    let pod = Pod::start("");
    let refresher = pod.spawn_with_set(pod.refresher());
    let original = read_published(&pod.out_dir()).unwrap();
    let out_dir = pod.out_dir();

    type Damage = fn(&Path);
    let cases: [(&str, Damage); 5] = [
        ("key.pem removed", |dir| {
            fs::remove_file(dir.join("key.pem")).unwrap()
        }),
        ("..data removed", |dir| {
            fs::remove_file(dir.join("..data")).unwrap()
        }),
        ("cert-chain.pem rewritten", |dir| {
            fs::write(dir.join("cert-chain.pem"), "garbage").unwrap()
        }),
        ("generation directory removed", |dir| {
            let generation = fs::read_link(dir.join("..data")).unwrap();
            fs::remove_dir_all(dir.join(generation)).unwrap()
        }),
        ("output directory removed", |dir| {
            fs::remove_dir_all(dir).unwrap()
        }),
    ];
    for (name, damage) in cases {
        damage(&out_dir);
        let restored = wait_until(Duration::from_secs(10), || {
            let (status, _) = refresher.get("/ready");
            let set = read_published(&out_dir)?;
            let intact =
                status == 200 && fs::read_to_string(out_dir.join("key.pem")).ok()? == set.key_pem;
            intact.then_some(set)
        });
        let Some(restored) = restored else {
            panic!(
                "{name}: the set was not restored within 10s; log:\n{}",
                refresher.log()
            );
        };
        assert_eq!(
            restored.serial, original.serial,
            "{name}: restored a different certificate"
        );
        assert_eq!(
            restored.key_pem, original.key_pem,
            "{name}: restored a different key"
        );
        assert_eq!(
            restored.chain_pem, original.chain_pem,
            "{name}: restored a different chain"
        );
    }

    let warnings = refresher
        .records("the published set was removed or altered; publishing the set in memory again");
    assert!(
        warnings.len() >= 5,
        "expected a warning per damage, found {}; log:\n{}",
        warnings.len(),
        refresher.log()
    );
    assert!(
        warnings.iter().all(|record| record["level"] == "WARN"),
        "restoration not logged at warn"
    );
}

#[test]
fn refresher_follows_ca_root_configmap_swap() {
    let pod = Pod::start("");

    // A ConfigMap-style volume: the file links through ..data to a generation.
    let configmap = pod.path("istio-ca-root-cert");
    fs::create_dir_all(configmap.join("..gen1")).unwrap();
    fs::write(configmap.join("..gen1/root-cert.pem"), pod.ca.root_pem()).unwrap();
    std::os::unix::fs::symlink("..gen1", configmap.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/root-cert.pem", configmap.join("root-cert.pem")).unwrap();

    let mut command = pod.refresher();
    command
        .arg("--ca-root")
        .arg(configmap.join("root-cert.pem"));
    let refresher = pod.spawn_with_set(command);
    let before = read_published(&pod.out_dir()).unwrap();

    pod.ca
        .rotate_root()
        .unwrap_or_else(|error| panic!("rotating the CA root failed: {error:#}"));
    let rotated_bundle = pod.ca.root_pem();
    let new_root_end = rotated_bundle.find("-----END CERTIFICATE-----").unwrap()
        + "-----END CERTIFICATE-----".len();
    let new_root = rotated_bundle[..new_root_end].to_string();
    assert!(
        !before.root_pem.contains(&new_root),
        "the first set already contains the rotated root"
    );

    fs::create_dir_all(configmap.join("..gen2")).unwrap();
    fs::write(configmap.join("..gen2/root-cert.pem"), &rotated_bundle).unwrap();
    std::os::unix::fs::symlink("..gen2", configmap.join("..data_tmp")).unwrap();
    fs::rename(configmap.join("..data_tmp"), configmap.join("..data")).unwrap();

    let renewed = wait_until(Duration::from_secs(10), || {
        read_published(&pod.out_dir()).filter(|set| set.root_pem.contains(&new_root))
    });
    let Some(renewed) = renewed else {
        panic!(
            "root-cert.pem did not get the rotated root within 10s; log:\n{}",
            refresher.log()
        );
    };
    assert_ne!(
        renewed.serial, before.serial,
        "the root changed without a renewal"
    );
    assert!(
        !refresher
            .records("the CA root file changed; reloaded it and renewing now")
            .is_empty(),
        "the root reload was not logged; log:\n{}",
        refresher.log()
    );
    let scratch = pod.path("scratch");
    fs::create_dir(&scratch).unwrap();
    assert_set_verifies(&renewed, &scratch);
}

#[test]
fn refresher_signals_pid_from_rewritten_file() {
    let pod = Pod::start("ttl=6s");
    let first_app = HupRecorder::start(pod.path("first.hups"));
    let second_app = HupRecorder::start(pod.path("second.hups"));
    let pid_file = pod.path("app.pid");
    write_pid_file(&pid_file, first_app.pid());

    let mut command = pod.refresher();
    command
        .arg("--signal=SIGHUP")
        .arg("--pid-file")
        .arg(&pid_file);
    let refresher = pod.spawn_with_set(command);

    let first_signalled = wait_until(Duration::from_secs(10), || {
        (first_app.count() >= 1).then_some(())
    });
    assert!(
        first_signalled.is_some(),
        "the first app got no SIGHUP after the first swap; log:\n{}",
        refresher.log()
    );
    write_pid_file(&pid_file, second_app.pid());
    let first_count = first_app.count();

    let second_signalled = wait_until(Duration::from_secs(10), || {
        (second_app.count() >= 1).then_some(())
    });
    assert!(
        second_signalled.is_some(),
        "the process in the rewritten pid file got no SIGHUP; log:\n{}",
        refresher.log()
    );
    assert_eq!(
        first_app.count(),
        first_count,
        "the first app was signalled after the pid file named another process"
    );
}

#[test]
fn refresher_signals_process_by_name() {
    let pod = Pod::start("");
    // A copy of sh under a name no other process has, so only it matches.
    let name = format!("mcapp{:08}", std::process::id() % 100_000_000);
    let program = pod.path(&name);
    fs::copy("/bin/sh", &program).expect("copy /bin/sh");
    let script = format!(
        "trap 'echo hup >> {}' HUP; i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done",
        pod.path("named.hups").display()
    );
    let mut app = Command::new(&program)
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .spawn()
        .expect("start the named app");
    std::thread::sleep(Duration::from_millis(200));

    let mut command = pod.refresher();
    command.arg("--signal=HUP").arg("--process-name").arg(&name);
    let refresher = pod.spawn_with_set(command);
    let signalled = wait_until(Duration::from_secs(10), || {
        let hups = fs::read_to_string(pod.path("named.hups")).ok()?;
        (hups.lines().count() >= 1).then_some(())
    });
    let _ = app.kill();
    let _ = app.wait();
    assert!(
        signalled.is_some(),
        "the process named {name} got no SIGHUP; log:\n{}",
        refresher.log()
    );
}

#[test]
fn refresher_holds_set_valid_soon() {
    let pod = Pod::start("");
    let refresher = pod.spawn_with_set(pod.refresher());
    let before = read_published(&pod.out_dir()).unwrap();
    pod.ca.set_fault("not-yet-valid=2s").unwrap();

    let (status, body) = http(refresher.admin_addr, "POST", "/renew");
    assert_eq!(status, 202, "POST /renew with a leaf valid in 2s: {body}");
    let held = read_published(&pod.out_dir()).unwrap();
    assert_eq!(
        held.serial, before.serial,
        "the new set was published before its notBefore"
    );
    let (status, body) = refresher.get("/ready");
    assert_eq!(status, 200, "/ready while a set is held: {body}");

    let published = wait_for_new_set(&pod.out_dir(), &before.serial, Duration::from_secs(6));
    assert!(
        published.is_some(),
        "the held set was not published within 6s; log:\n{}",
        refresher.log()
    );
    let skew_logged = refresher.records(
        "the new certificate is not valid yet because the CA's clock runs ahead of ours; the current set stays published until it is",
    );
    assert_eq!(skew_logged.len(), 1, "the skew was not logged once");
    assert!(skew_logged[0]["skew"].is_string(), "{}", skew_logged[0]);
    let (status, body) = refresher.get("/ready");
    assert_eq!(
        status, 200,
        "/ready after the held set was published: {body}"
    );
}

#[test]
fn refresher_backs_off_when_new_set_due() {
    // An intermediate that expires in 30 s makes every new set due at once.
    let pod = Pod::start("intermediate-expires=30s");
    let refresher = pod.spawn_with_set(pod.refresher());
    std::thread::sleep(Duration::from_secs(3));

    let due = refresher.records(
        "the new set is already due for renewal, so a certificate in its chain (such as the intermediate) expires soon; retrying with backoff",
    );
    assert!(
        !due.is_empty(),
        "no warning for a due set; log:\n{}",
        refresher.log()
    );
    assert_eq!(due[0]["level"], "WARN", "{}", due[0]);
    let attempts = refresher.records("requesting a new certificate").len();
    assert!(
        attempts >= 2,
        "the due set was not renewed again: {attempts} attempt(s)"
    );
    // Backoff from 200 ms capped at 1 s averages about 7 attempts in 3 s; a
    // loop without backoff would make hundreds.
    assert!(
        attempts <= 30,
        "{attempts} attempts in 3 s: renewal loops without backoff"
    );
    let (status, body) = refresher.get("/ready");
    assert_eq!(status, 200, "/ready with a valid but due set: {body}");

    pod.ca.set_fault("none").unwrap();
    let scheduled = wait_until(Duration::from_secs(5), || {
        let records = refresher.records("scheduled the next renewal");
        (!records.is_empty()).then_some(())
    });
    assert!(
        scheduled.is_some(),
        "no normal renewal was scheduled after the CA sent a long-lived chain; log:\n{}",
        refresher.log()
    );
}

#[test]
fn refresher_exits_promptly_on_sigterm() {
    let pod = Pod::start("");
    let mut refresher = pod.spawn_with_set(pod.refresher());
    let before = read_published(&pod.out_dir()).unwrap();

    let (status, elapsed) = refresher.terminate();
    let Some(status) = status else {
        panic!("the refresher did not exit within 5s of SIGTERM");
    };
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        elapsed < Duration::from_secs(1),
        "exit took {elapsed:?} after SIGTERM"
    );
    let after = read_published(&pod.out_dir());
    assert_eq!(
        after.map(|set| set.serial),
        Some(before.serial),
        "the published set did not stay in place"
    );
}

#[test]
fn refresher_exits_during_stalled_request() {
    let pod = Pod::start("stall");
    let mut command = pod.refresher();
    command.arg("--request-timeout=30s");
    let mut refresher = pod.spawn(command);
    let requested = wait_until(Duration::from_secs(5), || {
        let records = refresher.records("requesting a new certificate");
        (!records.is_empty()).then_some(())
    });
    assert!(
        requested.is_some(),
        "no CA request was started; log:\n{}",
        refresher.log()
    );
    std::thread::sleep(Duration::from_millis(500));

    let (status, elapsed) = refresher.terminate();
    let Some(status) = status else {
        panic!("the refresher did not exit within 5s of SIGTERM during a stalled request");
    };
    assert_eq!(status.code(), Some(0), "exit status {status}");
    assert!(
        elapsed < Duration::from_secs(1),
        "exit took {elapsed:?} after SIGTERM during a CA request"
    );
}

#[test]
fn refresher_endpoints_and_exec() {
    let pod = Pod::start("");
    let exec_record = pod.path("exec.record");
    let mut command = pod.refresher();
    command.arg("--exec").arg(format!(
        "sh -c 'echo \"swapped $0\" >> {}' reload",
        exec_record.display()
    ));
    let refresher = pod.spawn_with_set(command);
    let probe = refresher.probe_addr;
    let admin = refresher.admin_addr;

    let (status, body) = http(probe, "GET", "/healthz");
    assert_eq!(status, 200, "/healthz: {body}");
    let (status, body) = http(probe, "GET", "/ready");
    assert_eq!(status, 200, "/ready: {body}");
    assert!(body.contains("serial"), "/ready body: {body}");
    let (status, metrics) = http(probe, "GET", "/metrics");
    assert_eq!(status, 200, "/metrics");
    for name in [
        "meshcert_certificate_expiry_timestamp_seconds",
        "meshcert_next_renewal_seconds",
        "meshcert_renewals_total{result=\"success\"}",
        "meshcert_ca_request_duration_seconds_bucket",
        "meshcert_notifications_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }

    let (status, _) = http(probe, "POST", "/ready");
    assert_eq!(status, 405, "POST /ready on the probe address");
    let (status, _) = http(probe, "GET", "/nothing");
    assert_eq!(status, 404, "GET /nothing on the probe address");
    let (status, _) = http(probe, "POST", "/renew");
    assert_eq!(status, 404, "POST /renew on the probe address");
    let (status, _) = http(admin, "GET", "/renew");
    assert_eq!(status, 405, "GET /renew on the admin address");
    let (status, body) = http(admin, "GET", "/ready");
    assert_eq!(status, 200, "GET /ready on the admin address: {body}");

    let before = read_published(&pod.out_dir()).unwrap();
    let (status, body) = http(admin, "POST", "/renew");
    assert_eq!(status, 200, "POST /renew: {body}");
    let after = read_published(&pod.out_dir()).unwrap();
    assert_ne!(
        after.serial, before.serial,
        "POST /renew published no new set"
    );
    assert!(
        body.contains(&after.serial),
        "POST /renew body does not name serial {}: {body}",
        after.serial
    );

    let executed = wait_until(Duration::from_secs(5), || {
        let lines = fs::read_to_string(&exec_record).ok()?.lines().count();
        (lines >= 2).then_some(lines)
    });
    assert!(
        executed.is_some(),
        "--exec did not run after both swaps; log:\n{}",
        refresher.log()
    );
    let record = fs::read_to_string(&exec_record).unwrap();
    assert!(
        record.lines().all(|line| line == "swapped reload"),
        "--exec arguments were not passed as words: {record:?}"
    );
}

#[test]
fn probe_subcommand_reports_published_set() {
    let pod = Pod::start("");
    let probe = |out_dir: &Path| {
        run_with_timeout(
            Command::new(bin_path("meshcert-refresher"))
                .env_clear()
                .arg("probe")
                .arg("--out-dir")
                .arg(out_dir)
                .arg("--token-file")
                .arg(pod.path("istio-token")),
            Duration::from_secs(10),
        )
    };

    let empty = probe(&pod.out_dir());
    assert_eq!(empty.status.code(), Some(1), "probe without a set");
    let message = String::from_utf8_lossy(&empty.stderr);
    assert!(message.contains("not ready"), "stderr: {message}");

    let refresher = pod.spawn_with_set(pod.refresher());
    let ready = probe(&pod.out_dir());
    assert_eq!(
        ready.status.code(),
        Some(0),
        "probe with a set: {}; log:\n{}",
        String::from_utf8_lossy(&ready.stderr),
        refresher.log()
    );
    let summary = String::from_utf8_lossy(&ready.stdout);
    assert!(summary.contains(SPIFFE_ID), "stdout: {summary}");
}

#[test]
fn refresher_rejects_bad_signal_flags() {
    let cases: [(&[&str], &str); 3] = [
        (
            &["--signal", "BOGUS", "--pid-file", "/run/app.pid"],
            "--signal",
        ),
        (&["--signal", "HUP"], "--pid-file"),
        (&["--pid-file", "/run/app.pid"], "--signal"),
    ];
    for (args, flag) in cases {
        let output = run_with_timeout(
            Command::new(bin_path("meshcert-refresher"))
                .env_clear()
                .args(args),
            Duration::from_secs(10),
        );
        let message = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {message}");
        assert!(
            message.contains(flag),
            "{args:?}: the message does not name {flag}: {message}"
        );
    }
}

/// A real Prometheus from Debian with its lifecycle API, as the app to reload.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Prometheus {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        fs::write(&config, "global:\n  scrape_interval: 1m\n").unwrap();
        let port = free_port();
        let log = fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-lifecycle")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start prometheus (apt-get install prometheus)");
        let prometheus = Self {
            child,
            port,
            _dir: dir,
        };
        let ready = wait_until(Duration::from_secs(30), || {
            TcpStream::connect(("127.0.0.1", port)).ok()?;
            (http(prometheus.addr(), "GET", "/-/ready").0 == 200).then_some(())
        });
        assert!(ready.is_some(), "prometheus did not become ready");
        prometheus
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn reload_url(&self) -> String {
        format!("http://127.0.0.1:{}/-/reload", self.port)
    }

    /// Returns `prometheus_config_last_reload_success_timestamp_seconds`.
    fn last_reload(&self) -> Option<f64> {
        let (_, body) = http(self.addr(), "GET", "/metrics");
        body.lines()
            .find(|line| {
                line.starts_with("prometheus_config_last_reload_success_timestamp_seconds ")
            })?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Forces a renewal through the admin address and returns the new set.
fn force_renewal(refresher: &Refresher, out_dir: &Path) -> PublishedSet {
    let before = read_published(out_dir).expect("a set is published");
    let (status, body) = http(refresher.admin_addr, "POST", "/renew");
    assert_eq!(status, 200, "POST /renew: {body}");
    wait_for_new_set(out_dir, &before.serial, Duration::from_secs(10))
        .expect("a new set after POST /renew")
}

#[test]
fn refresher_reloads_prometheus_over_http() {
    let prometheus = Prometheus::start();
    let pod = Pod::start("");
    let mut command = pod.refresher();
    command.arg("--reload-url").arg(prometheus.reload_url());
    let refresher = pod.spawn_with_set(command);

    for swap in 1..=2 {
        let before = wait_until(Duration::from_secs(10), || prometheus.last_reload())
            .expect("prometheus reports its last reload");
        // The reload timestamp has one-second resolution.
        std::thread::sleep(Duration::from_millis(1_100));
        force_renewal(&refresher, &pod.out_dir());
        let after = wait_until(Duration::from_secs(10), || {
            prometheus.last_reload().filter(|&at| at > before)
        });
        assert!(
            after.is_some(),
            "swap {swap}: prometheus was not reloaded; log:\n{}",
            refresher.log()
        );
    }
    let (_, metrics) = refresher.get("/metrics");
    assert!(
        metrics.contains(r#"meshcert_notifications_total{method="http",result="success"} "#),
        "successful reloads counted: {metrics}"
    );
}

#[test]
fn refresher_wrong_reload_url_counts_failure() {
    let pod = Pod::start("");
    let mut command = pod.refresher();
    command
        .arg(format!(
            "--reload-url=http://127.0.0.1:{}/-/reload",
            free_port()
        ))
        .args(["--reload-attempts=2", "--reload-timeout=1s"]);
    let refresher = pod.spawn_with_set(command);
    let first = force_renewal(&refresher, &pod.out_dir());
    let failed = wait_until(Duration::from_secs(10), || {
        let (_, metrics) = refresher.get("/metrics");
        metrics
            .contains(r#"meshcert_notifications_total{method="http",result="failure"} "#)
            .then_some(())
    });
    assert!(
        failed.is_some(),
        "failed reload counted; log:\n{}",
        refresher.log()
    );
    assert!(
        refresher.log().contains("--reload-url failed"),
        "failure logged: {}",
        refresher.log()
    );
    let second = force_renewal(&refresher, &pod.out_dir());
    assert_ne!(
        first.serial, second.serial,
        "the refresher carries on renewing"
    );
}

/// Returns the public key, in PEM, of the private key inside a PKCS#12 file.
fn pkcs12_public_key(keystore: &Path, password_file: &Path, scratch: &Path) -> String {
    let extracted = scratch.join("from-p12.pem");
    let output = openssl(
        &[
            "pkcs12",
            "-in",
            keystore.to_str().unwrap(),
            "-passin",
            &format!("file:{}", password_file.display()),
            "-nodes",
            "-nocerts",
            "-out",
            extracted.to_str().unwrap(),
        ],
        scratch,
    );
    assert!(
        output.status.success(),
        "openssl pkcs12: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let public = openssl(
        &["pkey", "-in", extracted.to_str().unwrap(), "-pubout"],
        scratch,
    );
    String::from_utf8_lossy(&public.stdout).into_owned()
}

#[test]
fn refresher_pkcs12_swaps_with_pem_files() {
    let pod = Pod::start("");
    let password_file = pod.path("p12-password");
    fs::write(&password_file, "changeit\n").unwrap();
    let mut command = pod.refresher();
    command
        .args(["--pkcs12", "keystore.p12", "--bundle-file", "tls.pem"])
        .arg("--pkcs12-password-file")
        .arg(&password_file);
    let refresher = pod.spawn_with_set(command);
    let scratch = tempfile::tempdir().unwrap();
    let out_dir = pod.out_dir();

    // A reader that resolves ..data once and compares the keystore's key
    // with key.pem of the same generation, while renewals happen.
    let stop = Arc::new(Mutex::new(false));
    let reader = {
        let stop = Arc::clone(&stop);
        let out_dir = out_dir.clone();
        let password_file = password_file.clone();
        std::thread::spawn(move || {
            let scratch = tempfile::tempdir().unwrap();
            let mut checked = 0;
            while !*stop.lock().unwrap() && checked < 200 {
                let generation = out_dir.join(fs::read_link(out_dir.join("..data")).unwrap());
                let (Ok(key), Ok(_)) = (
                    fs::read(generation.join("key.pem")),
                    fs::metadata(generation.join("keystore.p12")),
                ) else {
                    continue;
                };
                fs::write(scratch.path().join("key.pem"), key).unwrap();
                let from_key = openssl(&["pkey", "-in", "key.pem", "-pubout"], scratch.path());
                let from_keystore = pkcs12_public_key(
                    &generation.join("keystore.p12"),
                    &password_file,
                    scratch.path(),
                );
                assert_eq!(
                    String::from_utf8_lossy(&from_key.stdout),
                    from_keystore,
                    "keystore and key.pem of {} differ",
                    generation.display()
                );
                checked += 1;
            }
            checked
        })
    };

    for renewal in 1..=2 {
        let set = force_renewal(&refresher, &out_dir);
        let keystore = out_dir.join("keystore.p12");
        let from_keystore = pkcs12_public_key(&keystore, &password_file, scratch.path());
        fs::write(scratch.path().join("key.pem"), &set.key_pem).unwrap();
        let from_key = openssl(&["pkey", "-in", "key.pem", "-pubout"], scratch.path());
        assert_eq!(
            String::from_utf8_lossy(&from_key.stdout),
            from_keystore,
            "renewal {renewal}: keystore key matches key.pem"
        );
        let bundle = fs::read_to_string(out_dir.join("tls.pem")).unwrap();
        assert!(
            bundle.starts_with(&set.key_pem),
            "renewal {renewal}: bundle starts with the new key"
        );
    }
    *stop.lock().unwrap() = true;
    let checked = reader
        .join()
        .expect("the reader saw a mismatched generation");
    assert!(checked > 0, "the reader compared at least one generation");
}

#[test]
fn refresher_status_subcommand() {
    let pod = Pod::start("");
    let refresher = pod.spawn_with_set(pod.refresher());
    let set = read_published(&pod.out_dir()).unwrap();
    let output = Command::new(bin_path("meshcert-refresher"))
        .args(["status", "--json", "--out-dir"])
        .arg(pod.out_dir())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "status exits 0: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_slice(&output.stdout).expect("status --json parses");
    let serial = json["serial"].as_str().map(normalize_serial);
    assert_eq!(serial.as_deref(), Some(set.serial.as_str()), "serial");
    assert_eq!(json["spiffe_id"], SPIFFE_ID, "identity");
    drop(refresher);
}
