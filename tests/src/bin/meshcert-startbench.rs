//! `meshcert-startbench`: times `meshcert-init` from process start to a
//! published certificate, against a dev CA on 127.0.0.1 over TLS, and
//! `meshcert-floor` on the same CA as the baseline.
//!
//! Each init run gets a fresh output directory under `--out-parent`, so it
//! always issues. Init and floor runs alternate, so both see the same
//! machine load. The breakdown of an init run comes from its debug log
//! (`RUST_LOG=meshcert_init=debug,meshcert_common=debug`): each phase ends
//! at the timestamp of one log line, measured from the driver's clock just
//! before it spawned the process. The floor prints its own connect and call
//! times.
//!
//! Prints a table to stdout and, with `--json`, writes the summaries.

#[path = "bench_support/stats.rs"]
mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use meshcert_common::csr::{KeyType, PrivateKey};
use meshcert_common::identity::SpiffeId;
use meshcert_tests::{bin_path, DevCa, DevCaOptions, TokenOptions};
use serde::Serialize;
use stats::{summarize, Summary};

const NAMESPACE: &str = "bench";
const SERVICE_ACCOUNT: &str = "init";
/// Runs of each binary before timing starts, to warm the page cache.
const WARM_UP_RUNS: usize = 3;
/// Upper bound of `--runs`, so a typo cannot run for hours.
const MAX_RUNS: usize = 1_000;

/// The debug or info lines of `meshcert-init` that end each phase, in order.
const INIT_PHASES: [(&str, &str); 6] = [
    ("process_start", "meshcert-init started"),
    ("setup", "no usable published set"),
    ("key_and_csr", "generated the key and the CSR"),
    ("ca_request", "received the CA response"),
    ("validation", "validated the answer"),
    ("publish", "published a new certificate set"),
];

/// Time meshcert-init and the floor client against a dev CA.
#[derive(Debug, Parser)]
#[command(name = "meshcert-startbench")]
struct Cli {
    /// Timed runs of each binary.
    #[arg(long, default_value_t = 30)]
    runs: usize,
    /// Key type of init's key and of the floor's prepared CSR.
    #[arg(long, value_enum, default_value_t = KeyType::EcdsaP256)]
    key_type: KeyType,
    /// Directory that receives one output directory per init run; a tmpfs
    /// measures what a `medium: Memory` emptyDir costs.
    #[arg(long, default_value = "/dev/shm")]
    out_parent: PathBuf,
    /// File that receives the summaries as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Report {
    key_type: String,
    runs: usize,
    /// Milliseconds per phase of init, and `total`.
    init_ms: BTreeMap<&'static str, Summary>,
    /// Milliseconds per phase of the floor client, and `total`.
    floor_ms: BTreeMap<&'static str, Summary>,
    /// Median init total divided by median floor total.
    ratio_of_medians: f64,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.runs == 0 || cli.runs > MAX_RUNS {
        bail!("invalid --runs {}: expected 1 to {MAX_RUNS}", cli.runs);
    }
    let devca = DevCa::start(DevCaOptions::default())?;
    let work = devca.temp_dir().to_path_buf();
    let token_file = work.join("token");
    devca.write_token(
        &token_file,
        NAMESPACE,
        SERVICE_ACCOUNT,
        &TokenOptions::default(),
    )?;
    let spiffe_id = SpiffeId::new("cluster.local", NAMESPACE, SERVICE_ACCOUNT)?;
    let csr_file = work.join("csr.pem");
    let csr = PrivateKey::generate(cli.key_type)?.csr_pem(&spiffe_id)?;
    std::fs::write(&csr_file, csr)?;
    let out_parent = tempfile::tempdir_in(&cli.out_parent)
        .with_context(|| format!("cannot create a directory in {}", cli.out_parent.display()))?;

    let runner = Runner {
        ca_addr: devca.addr().to_string(),
        ca_root: devca.root_pem_path(),
        token_file,
        csr_file,
        key_type: cli.key_type,
        out_parent: out_parent.path().to_path_buf(),
    };
    for index in 0..WARM_UP_RUNS {
        runner.run_init(&format!("warm-up-{index}"))?;
        runner.run_floor()?;
    }

    let mut init_runs: Vec<BTreeMap<&'static str, f64>> = Vec::with_capacity(cli.runs);
    let mut floor_runs: Vec<BTreeMap<&'static str, f64>> = Vec::with_capacity(cli.runs);
    for index in 0..cli.runs {
        // Alternate which goes first, so neither always follows the other.
        if index % 2 == 0 {
            init_runs.push(runner.run_init(&format!("run-{index}"))?);
            floor_runs.push(runner.run_floor()?);
        } else {
            floor_runs.push(runner.run_floor()?);
            init_runs.push(runner.run_init(&format!("run-{index}"))?);
        }
    }

    let init_ms = summarize_phases(&init_runs);
    let floor_ms = summarize_phases(&floor_runs);
    let ratio_of_medians = init_ms["total"].median / floor_ms["total"].median;
    let report = Report {
        key_type: cli.key_type.to_string(),
        runs: cli.runs,
        init_ms,
        floor_ms,
        ratio_of_medians,
    };
    print_report(&report);
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

struct Runner {
    ca_addr: String,
    ca_root: PathBuf,
    token_file: PathBuf,
    csr_file: PathBuf,
    key_type: KeyType,
    out_parent: PathBuf,
}

impl Runner {
    /// Runs init into a fresh directory and returns its phases in ms.
    fn run_init(&self, name: &str) -> Result<BTreeMap<&'static str, f64>> {
        let out_dir = self.out_parent.join(name);
        let mut command = Command::new(bin_path("meshcert-init"));
        command
            .arg("--ca-addr")
            .arg(&self.ca_addr)
            .arg("--ca-root")
            .arg(&self.ca_root)
            .arg("--token-file")
            .arg(&self.token_file)
            .arg(format!("--namespace={NAMESPACE}"))
            .arg(format!("--service-account={SERVICE_ACCOUNT}"))
            .arg(format!("--key-type={}", self.key_type))
            .arg("--out-dir")
            .arg(&out_dir)
            .env("RUST_LOG", "meshcert_init=debug,meshcert_common=debug")
            .env_remove("LOG_FORMAT");
        let (spawned_at, output, total_ms) = run_timed(&mut command)?;
        check_success("meshcert-init", &output)?;
        std::fs::remove_dir_all(&out_dir)
            .with_context(|| format!("cannot remove {}", out_dir.display()))?;

        let log = String::from_utf8_lossy(&output.stderr);
        let mut phases = BTreeMap::new();
        let mut previous_ms = 0.0;
        for (phase, marker) in INIT_PHASES {
            let Some(at_ms) = line_offset_ms(&log, marker, spawned_at) else {
                bail!("meshcert-init logged no line containing {marker:?}; log:\n{log}");
            };
            phases.insert(phase, at_ms - previous_ms);
            previous_ms = at_ms;
        }
        phases.insert("exit", total_ms - previous_ms);
        phases.insert("total", total_ms);
        Ok(phases)
    }

    /// Runs the floor client once and returns its phases in ms.
    fn run_floor(&self) -> Result<BTreeMap<&'static str, f64>> {
        let mut command = Command::new(bin_path("meshcert-floor"));
        command
            .arg("--ca-addr")
            .arg(&self.ca_addr)
            .arg("--ca-root")
            .arg(&self.ca_root)
            .arg("--token-file")
            .arg(&self.token_file)
            .arg("--csr-file")
            .arg(&self.csr_file);
        let (spawned_at, output, total_ms) = run_timed(&mut command)?;
        check_success("meshcert-floor", &output)?;

        let stdout = String::from_utf8_lossy(&output.stdout);
        let field = |name: &str| -> Result<f64> {
            let prefix = format!("{name}=");
            stdout
                .split_whitespace()
                .find_map(|item| item.strip_prefix(prefix.as_str()))
                .and_then(|value| value.parse::<f64>().ok())
                .with_context(|| format!("meshcert-floor printed no {name}: {stdout}"))
        };
        let spawned_us = unix_us(spawned_at);
        let start_ms = (field("started_unix_us")? - spawned_us) / 1000.0;
        let connect_ms = field("connect_us")? / 1000.0;
        let call_ms = field("call_us")? / 1000.0;
        Ok(BTreeMap::from([
            ("process_start", start_ms),
            ("connect", connect_ms),
            ("call", call_ms),
            ("rest", total_ms - start_ms - connect_ms - call_ms),
            ("total", total_ms),
        ]))
    }
}

/// Runs `command` to completion; returns the wall-clock time just before
/// the spawn, the output and the elapsed milliseconds.
fn run_timed(command: &mut Command) -> Result<(SystemTime, Output, f64)> {
    command.stdin(Stdio::null());
    let spawned_at = SystemTime::now();
    let started = Instant::now();
    let output = command
        .output()
        .with_context(|| format!("cannot run {command:?}"))?;
    let total_ms = started.elapsed().as_secs_f64() * 1000.0;
    Ok((spawned_at, output, total_ms))
}

fn check_success(name: &str, output: &Output) -> Result<()> {
    if output.status.success() {
        return Ok(());
    }
    bail!(
        "{name} failed with {}; stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Returns the milliseconds from `since` to the timestamp of the first log
/// line that contains `marker`. Lines start with an RFC 3339 timestamp.
fn line_offset_ms(log: &str, marker: &str, since: SystemTime) -> Option<f64> {
    let line = log.lines().find(|line| line.contains(marker))?;
    let stamp = line.split_whitespace().next()?;
    let at = humantime::parse_rfc3339(stamp).ok()?;
    Some((unix_us(at) - unix_us(since)) / 1000.0)
}

fn unix_us(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1e6
}

fn summarize_phases(runs: &[BTreeMap<&'static str, f64>]) -> BTreeMap<&'static str, Summary> {
    let Some(first) = runs.first() else {
        return BTreeMap::new();
    };
    first
        .keys()
        .map(|&phase| {
            let values: Vec<f64> = runs
                .iter()
                .filter_map(|run| run.get(phase))
                .copied()
                .collect();
            (phase, summarize(&values))
        })
        .collect()
}

fn print_report(report: &Report) {
    println!(
        "{} runs, key type {}; milliseconds (median, p10-p90)",
        report.runs, report.key_type
    );
    print_phases("meshcert-init", &report.init_ms, &phase_order_init());
    print_phases(
        "meshcert-floor",
        &report.floor_ms,
        &["process_start", "connect", "call", "rest", "total"],
    );
    println!(
        "init/floor ratio of medians: {:.2}",
        report.ratio_of_medians
    );
}

fn phase_order_init() -> Vec<&'static str> {
    let mut order: Vec<&'static str> = INIT_PHASES.iter().map(|(phase, _)| *phase).collect();
    order.extend(["exit", "total"]);
    order
}

fn print_phases(name: &str, phases: &BTreeMap<&'static str, Summary>, order: &[&'static str]) {
    println!("  {name}");
    for phase in order {
        if let Some(summary) = phases.get(phase) {
            println!(
                "    {phase:<14} {:>8.2}  ({:.2}-{:.2})",
                summary.median, summary.p10, summary.p90
            );
        }
    }
}
