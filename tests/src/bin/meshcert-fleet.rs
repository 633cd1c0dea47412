//! `meshcert-fleet`: thousands of simulated refreshers in one process
//! against one dev CA, through a CA outage, to see how the renewal load
//! behaves when the CA comes back.
//!
//! Each refresher is a task that follows `meshcert-refresher`'s schedule
//! with the shared code. Every attempt is `Issuer::issue` (fresh key, new
//! TLS connection, validation). After a success the next attempt is at
//! `RenewPolicy::renew_at`, and after a failure `Backoff::next_delay`
//! later, capped at the current set's expiry as the refresher caps it.
//! Nothing is written to disk. First issuances are spread evenly over one
//! renewal period, as pods of a cluster start at different times.
//!
//! Timeline: warm-up, steady window, outage (the CA gets SIGTERM), restart
//! on the same port and state directory, recovery window. Attempts are
//! counted per second by outcome; `--csv` receives the series and `--json`
//! the summary.

#[path = "bench_support/stats.rs"]
mod stats;

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use meshcert_common::ca::{CaConfig, CaError};
use meshcert_common::csr::KeyType;
use meshcert_common::identity::SpiffeId;
use meshcert_common::issue::{IssueError, Issuer};
use meshcert_common::schedule::{Backoff, RenewPolicy};
use meshcert_tests::atomic_file::write_atomic;
use meshcert_tests::bin_path;
use meshcert_tests::devca::state::{self, TRUST_BUNDLE_FILE};
use meshcert_tests::devca::token::TokenRequest;
use serde::Serialize;

const NAMESPACE: &str = "bench";
const SERVICE_ACCOUNT: &str = "fleet";
/// Upper bound of the whole run, so a typo cannot run for hours.
const MAX_RUN: Duration = Duration::from_secs(30 * 60);
/// Upper bound of `--refreshers`.
const MAX_REFRESHERS: usize = 100_000;
const CA_START_TIMEOUT: Duration = Duration::from_secs(20);
const CA_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Simulate a fleet of refreshers through a CA outage.
#[derive(Debug, Parser)]
#[command(name = "meshcert-fleet")]
struct Cli {
    /// Simulated refreshers.
    #[arg(long, default_value_t = 10_000)]
    refreshers: usize,
    /// Requested certificate lifetime.
    #[arg(long, default_value = "2m", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Renew when this share of the lifetime remains, as --renew-ratio.
    #[arg(long, default_value_t = 0.5)]
    renew_ratio: f64,
    /// Spread of the renewal point, as --renew-jitter.
    #[arg(long, default_value_t = 0.01)]
    renew_jitter: f64,
    /// First retry delay, as --retry-initial-backoff.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    retry_initial_backoff: Duration,
    /// Cap of the retry delay, as --retry-max-backoff.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    retry_max_backoff: Duration,
    /// Time before the steady window, while first issuances spread out.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    warm_up: Duration,
    /// Length of the steady window whose mean is the baseline.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    steady: Duration,
    /// How long the CA is down.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    outage: Duration,
    /// How long to observe after the CA is back.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    recovery: Duration,
    /// Worker threads of the refreshers' runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// File that receives the per-second series as CSV.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// File that receives the summary as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Outcomes of an attempt, the columns of the series.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// A validated certificate set.
    Issued,
    /// The TCP connection was refused or failed: the request never reached the CA.
    ConnectFailed,
    /// The CA was reached but the attempt failed (status, timeout, invalid response).
    Failed,
}

/// Attempts per second since the start, by outcome.
struct Series {
    started: Instant,
    issued: Vec<AtomicU64>,
    connect_failed: Vec<AtomicU64>,
    failed: Vec<AtomicU64>,
    /// Refreshers without a valid set, sampled once per second.
    expired: Vec<AtomicU64>,
}

impl Series {
    fn new(started: Instant, seconds: usize) -> Self {
        let column = || (0..seconds).map(|_| AtomicU64::new(0)).collect();
        Self {
            started,
            issued: column(),
            connect_failed: column(),
            failed: column(),
            expired: column(),
        }
    }

    fn second(&self, at: Instant) -> usize {
        at.saturating_duration_since(self.started).as_secs() as usize
    }

    fn record(&self, sent_at: Instant, outcome: Outcome) {
        let column = match outcome {
            Outcome::Issued => &self.issued,
            Outcome::ConnectFailed => &self.connect_failed,
            Outcome::Failed => &self.failed,
        };
        if let Some(slot) = column.get(self.second(sent_at)) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Attempts that reached the CA in second `index`.
    fn reached(&self, index: usize) -> u64 {
        self.issued[index].load(Ordering::Relaxed) + self.failed[index].load(Ordering::Relaxed)
    }
}

#[derive(Debug, Serialize)]
struct Report {
    refreshers: usize,
    ttl_s: f64,
    steady_window_s: [f64; 2],
    outage_window_s: [f64; 2],
    /// Mean requests per second that reached the CA in the steady window.
    steady_mean_per_s: f64,
    /// Highest one-second count of requests that reached the CA after the restart.
    peak_after_recovery_per_s: u64,
    /// Seconds after the restart at which that peak happened.
    peak_at_s_after_restart: usize,
    peak_over_steady: f64,
    /// Highest five-second mean after the restart, per second.
    peak_5s_mean_after_recovery_per_s: f64,
    /// Most refreshers without a valid set at once.
    max_expired: u64,
    /// Seconds from the restart until every refresher had a valid set again.
    seconds_to_all_valid: Option<usize>,
    steady_latency_ms: stats::Summary,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let total = cli.warm_up + cli.steady + cli.outage + cli.recovery;
    if total > MAX_RUN {
        bail!("the run would take {total:?}; keep warm-up, steady, outage and recovery under 30m in all");
    }
    if cli.refreshers == 0 || cli.refreshers > MAX_REFRESHERS {
        bail!("invalid --refreshers: expected 1 to {MAX_REFRESHERS}");
    }
    let work = tempfile::Builder::new()
        .prefix("meshcert-fleet-")
        .tempdir()?;
    let mut ca = CaProcess::start(work.path(), "127.0.0.1:0".parse()?)?;
    eprintln!(
        "meshcert-fleet: dev CA on {}, {} refreshers, ttl {}",
        ca.addr,
        cli.refreshers,
        humantime::format_duration(cli.ttl)
    );

    let token_file = work.path().join("token");
    let token = state::load_token_key(&ca.state_dir)?.mint(&TokenRequest {
        ttl: total + Duration::from_secs(600),
        ..TokenRequest::new(NAMESPACE, SERVICE_ACCOUNT)
    })?;
    write_atomic(&token_file, token.as_bytes(), 0o600)?;
    let issuer = Arc::new(Issuer {
        ca: CaConfig {
            addr: ca.addr.to_string(),
            server_name: ca.addr.ip().to_string(),
            root_pem: std::fs::read_to_string(ca.state_dir.join(TRUST_BUNDLE_FILE))?,
            cluster_id: "Kubernetes".to_string(),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        },
        ca_root_path: ca.state_dir.join(TRUST_BUNDLE_FILE),
        spiffe_id: SpiffeId::new("cluster.local", NAMESPACE, SERVICE_ACCOUNT)?,
        token_file,
        key_type: KeyType::EcdsaP256,
        ttl: cli.ttl,
        max_clock_skew: Duration::from_secs(300),
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let stop_at = started + total;
    let seconds = total.as_secs() as usize + 1;
    let series = Arc::new(Series::new(started, seconds));
    let expiries: Arc<Vec<AtomicU64>> =
        Arc::new((0..cli.refreshers).map(|_| AtomicU64::new(0)).collect());
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));

    let policy = RenewPolicy {
        ratio: cli.renew_ratio,
        jitter: cli.renew_jitter,
    };
    // One issuance up front gives the renewal interval as the CA shapes it
    // (a backdated notBefore lengthens the lifetime), and first issuances
    // are spread over exactly that interval so the steady rate is flat.
    let probe = runtime
        .block_on(issuer.issue())
        .context("the first issuance failed")?;
    let spread = policy
        .renew_at_with_draw(&probe.set, 0.0)
        .duration_since(SystemTime::now())
        .unwrap_or(cli.ttl / 2);
    let steady_from = started + cli.warm_up;
    let steady_until = steady_from + cli.steady;
    let mut handles = Vec::with_capacity(cli.refreshers);
    for index in 0..cli.refreshers {
        let refresher = Refresher {
            index,
            issuer: Arc::clone(&issuer),
            policy,
            backoff: Backoff::new(cli.retry_initial_backoff, cli.retry_max_backoff),
            series: Arc::clone(&series),
            expiries: Arc::clone(&expiries),
            latencies: Arc::clone(&latencies),
            steady: (steady_from, steady_until),
        };
        let start_at = started + spread.mul_f64(index as f64 / cli.refreshers as f64);
        handles.push(runtime.spawn(refresher.run(start_at, stop_at)));
    }
    runtime.spawn(sample_expired(
        Arc::clone(&series),
        Arc::clone(&expiries),
        stop_at,
    ));

    let outage_from = steady_until;
    let outage_until = outage_from + cli.outage;
    sleep_until(outage_from);
    eprintln!(
        "meshcert-fleet: stopping the CA for {}",
        humantime::format_duration(cli.outage)
    );
    ca.stop()?;
    sleep_until(outage_until);
    let addr = ca.addr;
    let mut ca = CaProcess::start(work.path(), addr)?;
    let restarted = Instant::now();
    eprintln!("meshcert-fleet: restarted the CA on {addr}");

    runtime.block_on(async {
        for handle in handles {
            let _ = handle.await;
        }
    });
    ca.stop()?;

    let offset = |at: Instant| at.saturating_duration_since(started).as_secs_f64();
    let report = summarize(
        &cli,
        &series,
        &latencies.lock().unwrap_or_else(|p| p.into_inner()),
        [offset(steady_from), offset(steady_until)],
        [offset(outage_from), offset(restarted)],
    );
    if let Some(path) = &cli.csv {
        write_csv(path, &series)?;
    }
    println!("{}", serde_json::to_string_pretty(&report)?);
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

struct Refresher {
    index: usize,
    issuer: Arc<Issuer>,
    policy: RenewPolicy,
    backoff: Backoff,
    series: Arc<Series>,
    expiries: Arc<Vec<AtomicU64>>,
    latencies: Arc<std::sync::Mutex<Vec<f64>>>,
    steady: (Instant, Instant),
}

impl Refresher {
    async fn run(mut self, start_at: Instant, stop_at: Instant) {
        tokio::time::sleep_until(start_at.into()).await;
        let mut expires_at: Option<SystemTime> = None;
        while Instant::now() < stop_at {
            let sent_at = Instant::now();
            let result = self.issuer.issue().await;
            let next = match result {
                Ok(issued) => {
                    self.series.record(sent_at, Outcome::Issued);
                    if self.steady.0 <= sent_at && sent_at < self.steady.1 {
                        let latency_ms = sent_at.elapsed().as_secs_f64() * 1000.0;
                        self.latencies
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(latency_ms);
                    }
                    let set = issued.set;
                    expires_at = Some(set.expires_at);
                    self.expiries[self.index]
                        .store(unix_seconds(set.expires_at), Ordering::Relaxed);
                    if self.policy.is_due(&set, SystemTime::now()) {
                        self.retry_delay(expires_at)
                    } else {
                        self.backoff.reset();
                        until(self.policy.renew_at(&set))
                    }
                }
                Err(error) => {
                    self.series.record(sent_at, classify(&error));
                    self.retry_delay(expires_at)
                }
            };
            tokio::time::sleep(next.min(stop_at.saturating_duration_since(Instant::now()))).await;
        }
    }

    /// Draws the next backoff delay, never past the current set's expiry.
    fn retry_delay(&mut self, expires_at: Option<SystemTime>) -> Duration {
        let delay = self.backoff.next_delay();
        match expires_at {
            Some(expires_at) => delay.min(until(expires_at)),
            None => delay,
        }
    }
}

fn classify(error: &IssueError) -> Outcome {
    match error {
        IssueError::Ca(CaError::Connect { .. }) => Outcome::ConnectFailed,
        _ => Outcome::Failed,
    }
}

fn until(time: SystemTime) -> Duration {
    time.duration_since(SystemTime::now()).unwrap_or_default()
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn sleep_until(deadline: Instant) {
    std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
}

/// Counts, once per second, the refreshers whose set has expired or that
/// have none yet although their first issuance is due.
async fn sample_expired(series: Arc<Series>, expiries: Arc<Vec<AtomicU64>>, stop_at: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while Instant::now() < stop_at {
        tick.tick().await;
        let now = unix_seconds(SystemTime::now());
        let expired = expiries
            .iter()
            .filter(|expiry| {
                let expiry = expiry.load(Ordering::Relaxed);
                expiry != 0 && expiry <= now
            })
            .count() as u64;
        if let Some(slot) = series.expired.get(series.second(Instant::now())) {
            slot.store(expired, Ordering::Relaxed);
        }
    }
}

fn summarize(
    cli: &Cli,
    series: &Series,
    latencies_ms: &[f64],
    steady: [f64; 2],
    outage: [f64; 2],
) -> Report {
    let steady_range = steady[0] as usize..steady[1] as usize;
    let steady_total: u64 = steady_range.clone().map(|i| series.reached(i)).sum();
    let steady_mean = steady_total as f64 / steady_range.len().max(1) as f64;

    // The second in which the CA restarted counts as recovery: the CA was
    // down for only the first few milliseconds of it.
    let restart = outage[1].floor() as usize;
    let last = series.issued.len().saturating_sub(1);
    let after: Vec<u64> = (restart..last).map(|i| series.reached(i)).collect();
    let (peak_at, peak) = after
        .iter()
        .copied()
        .enumerate()
        .max_by_key(|&(_, count)| count)
        .unwrap_or((0, 0));
    let peak_5s = after
        .windows(5)
        .map(|w| w.iter().sum::<u64>() as f64 / 5.0)
        .fold(0.0, f64::max);
    let expired: Vec<u64> = series
        .expired
        .iter()
        .map(|v| v.load(Ordering::Relaxed))
        .collect();
    let seconds_to_all_valid = (restart..last)
        .find(|&i| expired[i] == 0 && expired[i..last].iter().all(|&e| e == 0))
        .map(|i| i - restart);

    Report {
        refreshers: cli.refreshers,
        ttl_s: cli.ttl.as_secs_f64(),
        steady_window_s: steady,
        outage_window_s: outage,
        steady_mean_per_s: steady_mean,
        peak_after_recovery_per_s: peak,
        peak_at_s_after_restart: peak_at,
        peak_over_steady: peak as f64 / steady_mean.max(1e-9),
        peak_5s_mean_after_recovery_per_s: peak_5s,
        max_expired: expired.iter().copied().max().unwrap_or(0),
        seconds_to_all_valid,
        steady_latency_ms: stats::summarize(latencies_ms),
    }
}

fn write_csv(path: &Path, series: &Series) -> Result<()> {
    let mut file =
        File::create(path).with_context(|| format!("cannot write {}", path.display()))?;
    writeln!(file, "second,issued,failed,connect_failed,expired")?;
    for index in 0..series.issued.len() {
        writeln!(
            file,
            "{index},{},{},{},{}",
            series.issued[index].load(Ordering::Relaxed),
            series.failed[index].load(Ordering::Relaxed),
            series.connect_failed[index].load(Ordering::Relaxed),
            series.expired[index].load(Ordering::Relaxed)
        )?;
    }
    Ok(())
}

/// A `meshcert-devca serve` child on a given loopback address.
struct CaProcess {
    child: Child,
    addr: SocketAddr,
    state_dir: PathBuf,
}

impl CaProcess {
    /// Starts the CA with the state in `work/state`, logging to
    /// `work/devca.log`, and waits until it listens.
    fn start(work: &Path, listen: SocketAddr) -> Result<Self> {
        if !listen.ip().is_loopback() {
            bail!("the fleet's CA must listen on loopback, not {listen}");
        }
        let state_dir = work.join("state");
        let ready_file = work.join("ready");
        let _ = std::fs::remove_file(&ready_file);
        let log = File::options()
            .create(true)
            .append(true)
            .open(work.join("devca.log"))?;
        let child = Command::new(bin_path("meshcert-devca"))
            .arg("serve")
            .arg(format!("--listen={listen}"))
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--ready-file")
            .arg(&ready_file)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()
            .context("cannot start meshcert-devca")?;
        let mut ca = Self {
            child,
            addr: listen,
            state_dir,
        };
        let deadline = Instant::now() + CA_START_TIMEOUT;
        loop {
            if let Ok(text) = std::fs::read_to_string(&ready_file) {
                ca.addr = text.trim().parse().context("invalid ready file")?;
                return Ok(ca);
            }
            if let Some(status) = ca.child.try_wait()? {
                bail!(
                    "meshcert-devca exited with {status}; see {}",
                    work.join("devca.log").display()
                );
            }
            if Instant::now() >= deadline {
                bail!("meshcert-devca did not start within {CA_START_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the exit; kills it after a timeout.
    fn stop(&mut self) -> Result<()> {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let deadline = Instant::now() + CA_STOP_TIMEOUT;
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for CaProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
