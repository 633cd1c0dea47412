//! `meshcert-floor`: the least work that gets a certificate from an Istio
//! CA, as a baseline for `meshcert-init`'s time to certificate.
//!
//! It reads a prepared CSR and a token, opens one TLS channel to the CA,
//! sends one `CreateCertificate` request and exits. It generates no key,
//! validates nothing and writes no file. On success it prints one line to
//! stdout:
//!
//! ```text
//! started_unix_us=<main entered> connect_us=<TLS channel open> call_us=<request and answer> elements=<n>
//! ```
//!
//! Exit codes: 0 on a response with at least two elements, 1 on any failure.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use meshcert_common::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use meshcert_common::pb::IstioCertificateRequest;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// One CreateCertificate call with a prepared CSR, timed.
#[derive(Debug, Parser)]
#[command(name = "meshcert-floor", version)]
struct Cli {
    /// CA address as `host:port`, such as 127.0.0.1:15012.
    #[arg(long)]
    ca_addr: String,
    /// PEM roots that sign the CA's serving certificate.
    #[arg(long)]
    ca_root: PathBuf,
    /// TLS server name expected from the CA [default: host of --ca-addr].
    #[arg(long)]
    ca_server_name: Option<String>,
    /// File with the service-account token sent as `authorization: Bearer`.
    #[arg(long)]
    token_file: PathBuf,
    /// File with the PEM CSR to send.
    #[arg(long)]
    csr_file: PathBuf,
    /// Requested lifetime, such as `24h`.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Limit of the whole call, connection included, such as `10s`.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

fn main() -> ExitCode {
    let started = SystemTime::now();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("meshcert-floor: starting the async runtime failed: {error}");
            return ExitCode::FAILURE;
        }
    };
    let call = async { tokio::time::timeout(cli.timeout, request_certificate(&cli)).await };
    match runtime.block_on(call) {
        Ok(Ok(timings)) => {
            let started_us = started
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_micros();
            println!(
                "started_unix_us={started_us} connect_us={} call_us={} elements={}",
                timings.connect.as_micros(),
                timings.call.as_micros(),
                timings.elements
            );
            ExitCode::SUCCESS
        }
        Ok(Err(error)) => {
            eprintln!("meshcert-floor: {error:#}");
            ExitCode::FAILURE
        }
        Err(_elapsed) => {
            eprintln!(
                "meshcert-floor: no answer from {} within {}",
                cli.ca_addr,
                humantime::format_duration(cli.timeout)
            );
            ExitCode::FAILURE
        }
    }
}

struct Timings {
    connect: Duration,
    call: Duration,
    elements: usize,
}

async fn request_certificate(cli: &Cli) -> Result<Timings> {
    let root_pem = std::fs::read_to_string(&cli.ca_root)
        .with_context(|| format!("cannot read {}", cli.ca_root.display()))?;
    let token = std::fs::read_to_string(&cli.token_file)
        .with_context(|| format!("cannot read {}", cli.token_file.display()))?;
    let csr = std::fs::read_to_string(&cli.csr_file)
        .with_context(|| format!("cannot read {}", cli.csr_file.display()))?;
    let server_name = match &cli.ca_server_name {
        Some(name) => name.clone(),
        None => {
            meshcert_common::ca::parse_ca_addr(&cli.ca_addr)
                .map_err(anyhow::Error::msg)?
                .0
        }
    };

    let connect_started = Instant::now();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(root_pem))
        .domain_name(server_name);
    let channel = Endpoint::from_shared(format!("https://{}", cli.ca_addr))
        .context("invalid CA address")?
        .tls_config(tls)
        .context("invalid TLS settings")?
        .connect()
        .await
        .with_context(|| format!("connecting to {} failed", cli.ca_addr))?;
    let connect = connect_started.elapsed();

    let call_started = Instant::now();
    let mut request = tonic::Request::new(IstioCertificateRequest {
        csr,
        validity_duration: i64::try_from(cli.ttl.as_secs()).unwrap_or(i64::MAX),
        metadata: None,
    });
    let bearer = format!("Bearer {}", token.trim())
        .parse()
        .context("the token contains characters not allowed in a header")?;
    request.metadata_mut().insert("authorization", bearer);
    let answer = IstioCertificateServiceClient::new(channel)
        .create_certificate(request)
        .await
        .context("CreateCertificate failed")?
        .into_inner();
    let call = call_started.elapsed();

    if answer.cert_chain.len() < 2 {
        bail!(
            "the CA response has {} element(s); expected the leaf and the root bundle",
            answer.cert_chain.len()
        );
    }
    Ok(Timings {
        connect,
        call,
        elements: answer.cert_chain.len(),
    })
}
