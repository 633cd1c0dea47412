//! `meshcert-loadgen`: measures how many certificates a dev CA issues per
//! second to many concurrent clients over reused TLS connections.
//!
//! `--tasks` tasks share `--channels` HTTP/2 channels, each opened once, and
//! send `CreateCertificate` with one prepared CSR and token until
//! `--duration` ends. The CA still checks the token and the CSR and signs a
//! new leaf on every request. A response with at least two elements
//! counts as an issuance. Responses are not validated, so the client
//! spends little of the CPU that client and CA share.
//!
//! Without `--ca-addr` it starts its own dev CA on 127.0.0.1. With
//! `--ca-addr` and `--state-dir` it loads a CA started elsewhere, such as
//! one running under valgrind. Only loopback addresses are accepted.

#[path = "bench_support/stats.rs"]
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use meshcert_common::csr::{KeyType, PrivateKey};
use meshcert_common::identity::SpiffeId;
use meshcert_common::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use meshcert_common::pb::IstioCertificateRequest;
use meshcert_tests::devca::state::{self, TRUST_BUNDLE_FILE};
use meshcert_tests::devca::token::TokenRequest;
use meshcert_tests::{DevCa, DevCaOptions};
use serde::Serialize;
use stats::{summarize, Summary};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

const NAMESPACE: &str = "bench";
const SERVICE_ACCOUNT: &str = "loadgen";
/// Upper bound of `--duration`.
const MAX_DURATION: Duration = Duration::from_secs(600);
/// Limit of one request; a slower response counts as a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Load a dev CA with concurrent CreateCertificate requests.
#[derive(Debug, Parser)]
#[command(name = "meshcert-loadgen")]
struct Cli {
    /// Concurrent requesting tasks.
    #[arg(long, default_value_t = 64)]
    tasks: usize,
    /// TLS channels (connections) the tasks share.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// How long to send requests, such as `20s`; at most 10m.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Address of a running dev CA on loopback; needs --state-dir.
    #[arg(long, requires = "state_dir")]
    ca_addr: Option<SocketAddr>,
    /// State directory of the CA at --ca-addr, for its root and token key.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Worker threads of the client's runtime.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// File that receives the result as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
struct Report {
    tasks: usize,
    channels: usize,
    seconds: f64,
    issued: u64,
    failed: u64,
    issued_per_second: f64,
    latency_ms: Summary,
}

/// What each task sends.
struct Prepared {
    csr_pem: String,
    authorization: MetadataValue<tonic::metadata::Ascii>,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.duration.is_zero() || cli.duration > MAX_DURATION {
        bail!("invalid --duration: expected more than 0s and at most 10m");
    }
    if cli.tasks == 0 || cli.channels == 0 || cli.threads == 0 {
        bail!("--tasks, --channels and --threads must be at least 1");
    }

    // Keeps a CA this process started alive until the end.
    let mut own_ca = None;
    let (addr, state_dir) = match (&cli.ca_addr, &cli.state_dir) {
        (Some(addr), Some(dir)) => {
            if !addr.ip().is_loopback() {
                bail!("invalid --ca-addr {addr}: only loopback addresses are accepted");
            }
            (*addr, dir.clone())
        }
        _ => {
            let devca = DevCa::start(DevCaOptions::default())?;
            let started = (devca.addr(), devca.state_dir().to_path_buf());
            own_ca = Some(devca);
            started
        }
    };

    let token_key = state::load_token_key(&state_dir)?;
    let token = token_key.mint(&TokenRequest::new(NAMESPACE, SERVICE_ACCOUNT))?;
    let spiffe_id = SpiffeId::new("cluster.local", NAMESPACE, SERVICE_ACCOUNT)?;
    let prepared = Arc::new(Prepared {
        csr_pem: PrivateKey::generate(KeyType::EcdsaP256)?.csr_pem(&spiffe_id)?,
        authorization: format!("Bearer {token}")
            .parse()
            .context("the token is not a valid header value")?,
    });
    let root_pem = std::fs::read_to_string(state_dir.join(TRUST_BUNDLE_FILE))
        .context("cannot read the CA's trust bundle")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads)
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&cli, addr, &root_pem, prepared))?;
    drop(own_ca);

    println!(
        "{} tasks over {} channels for {:.1}s: {} issued, {} failed, {:.0} issued/s, latency median {:.1} ms (p10 {:.1}, p90 {:.1})",
        report.tasks,
        report.channels,
        report.seconds,
        report.issued,
        report.failed,
        report.issued_per_second,
        report.latency_ms.median,
        report.latency_ms.p10,
        report.latency_ms.p90
    );
    if let Some(path) = &cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

async fn run(
    cli: &Cli,
    addr: SocketAddr,
    root_pem: &str,
    prepared: Arc<Prepared>,
) -> Result<Report> {
    let mut channels = Vec::with_capacity(cli.channels);
    for _ in 0..cli.channels {
        channels.push(connect(addr, root_pem).await?);
    }

    let started = Instant::now();
    let deadline = started + cli.duration;
    let mut tasks = Vec::with_capacity(cli.tasks);
    for index in 0..cli.tasks {
        let client = IstioCertificateServiceClient::new(channels[index % channels.len()].clone());
        tasks.push(tokio::spawn(send_until(
            client,
            Arc::clone(&prepared),
            deadline,
        )));
    }

    let mut issued = 0;
    let mut failed = 0;
    let mut latencies_ms = Vec::new();
    let mut first_error = None;
    for task in tasks {
        let outcome = task.await.context("a load task panicked")?;
        issued += outcome.issued;
        failed += outcome.failed;
        latencies_ms.extend(outcome.latencies_ms);
        if first_error.is_none() {
            first_error = outcome.first_error;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(error) = first_error {
        eprintln!("meshcert-loadgen: {failed} request(s) failed; first error: {error}");
    }
    Ok(Report {
        tasks: cli.tasks,
        channels: cli.channels,
        seconds,
        issued,
        failed,
        issued_per_second: issued as f64 / seconds,
        latency_ms: summarize(&latencies_ms),
    })
}

async fn connect(addr: SocketAddr, root_pem: &str) -> Result<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root_pem))
        .domain_name(addr.ip().to_string());
    Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .timeout(REQUEST_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("connecting to the CA at {addr} failed"))
}

#[derive(Default)]
struct Outcome {
    issued: u64,
    failed: u64,
    latencies_ms: Vec<f64>,
    first_error: Option<String>,
}

async fn send_until(
    mut client: IstioCertificateServiceClient<Channel>,
    prepared: Arc<Prepared>,
    deadline: Instant,
) -> Outcome {
    let mut outcome = Outcome::default();
    while Instant::now() < deadline {
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: prepared.csr_pem.clone(),
            validity_duration: 3600,
            metadata: None,
        });
        request
            .metadata_mut()
            .insert("authorization", prepared.authorization.clone());
        let sent = Instant::now();
        let result = client.create_certificate(request).await;
        outcome
            .latencies_ms
            .push(sent.elapsed().as_secs_f64() * 1000.0);
        match result {
            Ok(response) if response.get_ref().cert_chain.len() >= 2 => outcome.issued += 1,
            Ok(response) => {
                outcome.failed += 1;
                outcome.first_error.get_or_insert_with(|| {
                    format!(
                        "response with {} element(s)",
                        response.get_ref().cert_chain.len()
                    )
                });
            }
            Err(status) => {
                outcome.failed += 1;
                outcome
                    .first_error
                    .get_or_insert_with(|| status.to_string());
            }
        }
    }
    outcome
}
