//! `meshcert-refresherbench`: measures the footprint of a running
//! `meshcert-refresher` against a dev CA on 127.0.0.1.
//!
//! One refresher publishes to `--out-parent` and then:
//! - renews `--renewals` times through `POST /renew` on its admin address,
//!   one at a time; CPU time per renewal is the growth of utime + stime in
//!   `/proc/PID/stat` divided by the count, so it includes serving the
//!   HTTP request;
//! - reports VmHWM (peak) and VmRSS (now) from `/proc/PID/status`, with
//!   VmRSS split into anonymous, file and shared-memory pages;
//! - stays idle for `--idle`, and the wakeups are the growth of voluntary
//!   plus nonvoluntary context switches summed over `/proc/PID/task/*`;
//! - has its `key.pem` link deleted `--restores` times, each timed until
//!   the link resolves to a file again;
//! - gets SIGTERM, timed until the process is reaped.
//!
//! Then `--restarts` fresh refreshers each publish and get SIGTERM, for
//! more samples of the exit time.

#[path = "bench_support/stats.rs"]
mod stats;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use meshcert_tests::{bin_path, DevCa, DevCaOptions, TokenOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;
use stats::{summarize, Summary};

const NAMESPACE: &str = "bench";
const SERVICE_ACCOUNT: &str = "refresher";
const START_TIMEOUT: Duration = Duration::from_secs(20);
const RENEW_TIMEOUT: Duration = Duration::from_secs(30);
const RESTORE_TIMEOUT: Duration = Duration::from_secs(20);
const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
const POLL_INTERVAL: Duration = Duration::from_millis(1);

/// Measure a running meshcert-refresher.
#[derive(Debug, Parser)]
#[command(name = "meshcert-refresherbench")]
struct Cli {
    /// Renewals forced through POST /renew; at most 10,000.
    #[arg(long, default_value_t = 100)]
    renewals: u32,
    /// Idle time over which wakeups are counted; at most 10m.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// Deletions of key.pem to time; at most 100.
    #[arg(long, default_value_t = 5)]
    restores: u32,
    /// Extra refreshers started and stopped to time SIGTERM; at most 100.
    #[arg(long, default_value_t = 5)]
    restarts: u32,
    /// Directory that receives the output directories; use a tmpfs.
    #[arg(long, default_value = "/dev/shm")]
    out_parent: PathBuf,
    /// File that receives the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Report {
    renewals: u32,
    cpu_ms_per_renewal: f64,
    renew_request_ms: Summary,
    memory_after_start: Memory,
    memory_after_renewals: Memory,
    threads_idle: usize,
    idle_seconds: f64,
    idle_wakeups: u64,
    idle_wakeups_by_thread: BTreeMap<String, u64>,
    restore_ms: Summary,
    sigterm_to_exit_ms: Summary,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.renewals > 10_000
        || cli.restores > 100
        || cli.restarts > 100
        || cli.idle > Duration::from_secs(600)
    {
        bail!("keep --renewals <= 10000, --restores and --restarts <= 100, --idle <= 10m");
    }
    let devca = DevCa::start(DevCaOptions::default())?;
    let token_file = devca.temp_dir().join("token");
    devca.write_token(
        &token_file,
        NAMESPACE,
        SERVICE_ACCOUNT,
        &TokenOptions {
            ttl: Duration::from_secs(3 * 3600),
            ..TokenOptions::default()
        },
    )?;
    let parent = tempfile::tempdir_in(&cli.out_parent)
        .with_context(|| format!("cannot create a directory in {}", cli.out_parent.display()))?;
    let setup = Setup {
        ca_addr: devca.addr().to_string(),
        ca_root: devca.root_pem_path(),
        token_file,
        parent: parent.path().to_path_buf(),
    };

    let mut refresher = setup.start("main")?;
    let pid = refresher.pid;
    let memory_after_start = memory_kib(pid)?;

    let cpu_before = cpu_ticks(pid)?;
    let mut renew_ms = Vec::new();
    for _ in 0..cli.renewals {
        let started = Instant::now();
        post_renew(refresher.admin_addr)?;
        renew_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    let cpu_after = cpu_ticks(pid)?;
    let cpu_ms_per_renewal = (cpu_after - cpu_before) as f64 * 1000.0
        / clock_ticks_per_second()
        / f64::from(cli.renewals.max(1));
    // Let the last attempt's thread finish before reading memory.
    std::thread::sleep(Duration::from_millis(500));
    let memory_after_renewals = memory_kib(pid)?;

    let before = context_switches(pid)?;
    let idle_started = Instant::now();
    std::thread::sleep(cli.idle);
    let after = context_switches(pid)?;
    let idle_seconds = idle_started.elapsed().as_secs_f64();
    let mut idle_wakeups_by_thread = BTreeMap::new();
    for (thread, count) in &after {
        let earlier = before.get(thread).copied().unwrap_or(0);
        idle_wakeups_by_thread.insert(thread.clone(), count.saturating_sub(earlier));
    }
    let idle_wakeups = idle_wakeups_by_thread.values().sum();

    let mut restore_ms = Vec::new();
    for _ in 0..cli.restores {
        restore_ms.push(time_restore(&refresher.out_dir)?);
        // Let the watcher's debounce settle before the next deletion.
        std::thread::sleep(Duration::from_millis(500));
    }

    let mut exit_ms = vec![refresher.stop()?];
    for index in 0..cli.restarts {
        let mut extra = setup.start(&format!("restart-{index}"))?;
        exit_ms.push(extra.stop()?);
    }

    let report = Report {
        renewals: cli.renewals,
        cpu_ms_per_renewal,
        renew_request_ms: summarize(&renew_ms),
        memory_after_start,
        memory_after_renewals,
        threads_idle: after.len(),
        idle_seconds,
        idle_wakeups,
        idle_wakeups_by_thread,
        restore_ms: summarize(&restore_ms),
        sigterm_to_exit_ms: summarize(&exit_ms),
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

struct Setup {
    ca_addr: String,
    ca_root: PathBuf,
    token_file: PathBuf,
    parent: PathBuf,
}

impl Setup {
    /// Starts a refresher that publishes to `parent/name` and waits until
    /// it has published and logged its admin address.
    fn start(&self, name: &str) -> Result<Refresher> {
        let out_dir = self.parent.join(name);
        let log_path = self.parent.join(format!("{name}.log"));
        let log = File::create(&log_path)?;
        let child = Command::new(bin_path("meshcert-refresher"))
            .arg("--ca-addr")
            .arg(&self.ca_addr)
            .arg("--ca-root")
            .arg(&self.ca_root)
            .arg("--token-file")
            .arg(&self.token_file)
            .arg(format!("--namespace={NAMESPACE}"))
            .arg(format!("--service-account={SERVICE_ACCOUNT}"))
            .arg("--out-dir")
            .arg(&out_dir)
            .arg("--probe-addr=127.0.0.1:0")
            .arg("--admin-addr=127.0.0.1:0")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("cannot start meshcert-refresher")?;
        let pid = i32::try_from(child.id())?;
        let mut refresher = Refresher {
            child,
            pid,
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            out_dir,
        };

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let admin = text
                .lines()
                .find(|line| line.contains("serving admin endpoints"))
                .and_then(|line| field(line, "addr"));
            if let (Some(admin), true) = (admin, text.contains("published a new certificate set")) {
                refresher.admin_addr = admin.parse().context("invalid admin address in the log")?;
                return Ok(refresher);
            }
            if let Some(status) = refresher.child.try_wait()? {
                bail!("meshcert-refresher exited with {status}; log:\n{text}");
            }
            if Instant::now() >= deadline {
                bail!("meshcert-refresher did not publish within {START_TIMEOUT:?}; log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

struct Refresher {
    child: Child,
    pid: i32,
    admin_addr: SocketAddr,
    out_dir: PathBuf,
}

impl Refresher {
    /// Sends SIGTERM and returns the milliseconds until the process is reaped.
    fn stop(&mut self) -> Result<f64> {
        let started = Instant::now();
        kill(Pid::from_raw(self.pid), Signal::SIGTERM)?;
        while started.elapsed() < EXIT_TIMEOUT {
            if self.child.try_wait()?.is_some() {
                return Ok(started.elapsed().as_secs_f64() * 1000.0);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("meshcert-refresher did not exit within {EXIT_TIMEOUT:?} of SIGTERM")
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Returns the value of `name=value` in a text log line.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let prefix = format!("{name}=");
    line.split_whitespace()
        .find_map(|item| item.strip_prefix(prefix.as_str()))
}

/// Sends `POST /renew` and waits for a 200 response.
fn post_renew(addr: SocketAddr) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&addr, RENEW_TIMEOUT)?;
    stream.set_read_timeout(Some(RENEW_TIMEOUT))?;
    stream.write_all(
        b"POST /renew HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if !response.starts_with("HTTP/1.1 200") {
        bail!(
            "POST /renew failed: {}",
            response.lines().next().unwrap_or("")
        );
    }
    Ok(())
}

/// Deletes the `key.pem` link and returns the milliseconds until it
/// resolves to a file again.
fn time_restore(out_dir: &Path) -> Result<f64> {
    let key = out_dir.join("key.pem");
    std::fs::remove_file(&key).with_context(|| format!("cannot delete {}", key.display()))?;
    let started = Instant::now();
    while started.elapsed() < RESTORE_TIMEOUT {
        if std::fs::metadata(&key).is_ok() {
            return Ok(started.elapsed().as_secs_f64() * 1000.0);
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    bail!(
        "{} was not restored within {RESTORE_TIMEOUT:?}",
        key.display()
    )
}

/// Returns utime + stime of the process, in clock ticks, from /proc/PID/stat.
fn cpu_ticks(pid: i32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); the state (field 3) is fields[0].
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// USER_HZ, the unit of utime and stime in /proc, which Linux fixes at 100
/// on x86 and arm64 whatever the kernel's tick rate.
fn clock_ticks_per_second() -> f64 {
    100.0
}

/// Resident memory of a process from /proc/PID/status, in KiB.
#[derive(Debug, Clone, Copy, Serialize)]
struct Memory {
    /// Peak resident set, VmHWM.
    vm_hwm_kib: u64,
    /// Resident set now, VmRSS: the sum of the three below.
    vm_rss_kib: u64,
    /// Anonymous pages: heap, stacks, and what the process allocated.
    rss_anon_kib: u64,
    /// File pages mapped: the binary's and the shared libraries' code and data.
    rss_file_kib: u64,
    /// Shared memory pages, such as a binary run from a tmpfs.
    rss_shmem_kib: u64,
}

/// Reads the memory figures of `pid`.
fn memory_kib(pid: i32) -> Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let value = |name: &str| -> Result<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|number| number.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    Ok(Memory {
        vm_hwm_kib: value("VmHWM:")?,
        vm_rss_kib: value("VmRSS:")?,
        rss_anon_kib: value("RssAnon:")?,
        rss_file_kib: value("RssFile:")?,
        rss_shmem_kib: value("RssShmem:")?,
    })
}

/// Returns voluntary plus nonvoluntary context switches of each thread,
/// keyed by `tid/name`.
fn context_switches(pid: i32) -> Result<BTreeMap<String, u64>> {
    let mut counts = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let entry = entry?;
        let tid = entry.file_name().to_string_lossy().into_owned();
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let mut name = String::new();
        let mut switches = 0;
        for line in status.lines() {
            if let Some(value) = line.strip_prefix("Name:") {
                name = value.trim().to_string();
            }
            for key in ["voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"] {
                if let Some(value) = line.strip_prefix(key) {
                    switches += value.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
        counts.insert(format!("{tid}/{name}"), switches);
    }
    Ok(counts)
}
