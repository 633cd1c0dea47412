//! `meshcert-devca`: a development CA speaking Istio's CA gRPC API, for
//! meshcert's end-to-end tests and local experiments.
//!
//! ```text
//! meshcert-devca serve --listen 127.0.0.1:0 --state-dir DIR [--ready-file PATH]
//!     [--fault SPEC] [--fault-file PATH] [--trust-domain TD] [--audience AUD]
//!     [--default-ttl DURATION] [--max-ttl DURATION]
//! meshcert-devca token --state-dir DIR --namespace NS --service-account SA
//!     [--audience AUD]... [--ttl DURATION] [--expired] [--issuer ISS] [--pod-name NAME]
//! meshcert-devca rotate-root --state-dir DIR
//! ```
//!
//! `serve` reloads the CA material on SIGHUP (use it after `rotate-root`)
//! and exits 0 on SIGTERM or SIGINT.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use meshcert_tests::devca::fault::{FaultSpec, ACCEPTED_ITEMS};
use meshcert_tests::devca::server::{serve, ServeConfig};
use meshcert_tests::devca::service::IssuancePolicy;
use meshcert_tests::devca::state;
use meshcert_tests::devca::token::{TokenRequest, DEFAULT_AUDIENCE, DEFAULT_ISSUER};
use tracing::error;
use tracing_subscriber::EnvFilter;

/// Development CA speaking Istio's CA gRPC API
/// (istio.v1.auth.IstioCertificateService).
#[derive(Debug, Parser)]
#[command(name = "meshcert-devca", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve CreateCertificate over TLS. SIGHUP reloads the CA material from
    /// the state directory, and SIGTERM or SIGINT stops the server.
    Serve(ServeArgs),
    /// Print a service-account token shaped like a Kubernetes projected
    /// token, signed with the CA's token key.
    Token(TokenArgs),
    /// Replace the root, intermediate and serving certificate, keeping the
    /// token key. root-cert.pem then contains the new root followed by the old
    /// one. Send SIGHUP to running servers afterwards.
    RotateRoot(StateArgs),
}

#[derive(Debug, Args)]
struct StateArgs {
    /// Directory that contains the CA keys and certificates, created on
    /// first use.
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on. Port 0 picks a free port.
    #[arg(long, value_name = "ADDR")]
    listen: SocketAddr,
    #[command(flatten)]
    state: StateArgs,
    /// File that receives the bound address (for example 127.0.0.1:43121)
    /// once the server accepts calls. Written atomically.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// Faults to inject, as comma-separated items.
    #[arg(long, value_name = "SPEC", default_value = "", hide_default_value = true,
          long_help = format!("Faults to inject, as comma-separated items. Accepted items: {ACCEPTED_ITEMS}"))]
    fault: FaultSpec,
    /// File read on every call. When it exists and is not empty, its fault
    /// specification replaces --fault.
    #[arg(long, value_name = "PATH")]
    fault_file: Option<PathBuf>,
    /// Trust domain of issued SPIFFE IDs.
    #[arg(long, value_name = "DOMAIN", default_value = "cluster.local")]
    trust_domain: String,
    /// Audience that service-account tokens must contain.
    #[arg(long, value_name = "AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    audience: String,
    /// Leaf lifetime when the request's validity_duration is zero or
    /// negative (for example 24h).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = humantime::parse_duration)]
    default_ttl: Duration,
    /// Maximum leaf lifetime granted to a request (for example 48h).
    #[arg(long, value_name = "DURATION", default_value = "48h", value_parser = humantime::parse_duration)]
    max_ttl: Duration,
}

#[derive(Debug, Args)]
struct TokenArgs {
    #[command(flatten)]
    state: StateArgs,
    /// Kubernetes namespace of the workload.
    #[arg(long, value_name = "NS")]
    namespace: String,
    /// Kubernetes service account of the workload.
    #[arg(long, value_name = "SA")]
    service_account: String,
    /// Value of the `aud` claim. Repeat the option for several audiences.
    #[arg(long, value_name = "AUDIENCE", default_value = DEFAULT_AUDIENCE)]
    audience: Vec<String>,
    /// Token lifetime (for example 1h).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Set `exp` one hour in the past.
    #[arg(long)]
    expired: bool,
    /// Value of the `iss` claim.
    #[arg(long, value_name = "ISSUER", default_value = DEFAULT_ISSUER)]
    issuer: String,
    /// Pod name in the `kubernetes.io.pod.name` claim. The default is
    /// `<SA>-0`.
    #[arg(long, value_name = "NAME")]
    pod_name: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let result = match cli.command {
        Command::Serve(args) => run_serve(args),
        Command::Token(args) => run_token(args),
        Command::RotateRoot(args) => state::rotate_root(&args.state_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!(error = format!("{error:#}"), "meshcert-devca failed");
            ExitCode::FAILURE
        }
    }
}

fn run_serve(args: ServeArgs) -> Result<()> {
    let config = ServeConfig {
        listen: args.listen,
        state_dir: args.state.state_dir,
        ready_file: args.ready_file,
        fault: args.fault,
        fault_file: args.fault_file,
        policy: IssuancePolicy {
            trust_domain: args.trust_domain,
            audience: args.audience,
            default_ttl: args.default_ttl,
            max_ttl: args.max_ttl,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    let result = runtime.block_on(serve(config));
    // Calls that outlived the shutdown grace period are cancelled here.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

fn run_token(args: TokenArgs) -> Result<()> {
    let dir = &args.state.state_dir;
    state::ensure(dir)?;
    let key = state::load_token_key(dir)?;
    let mut request = TokenRequest::new(&args.namespace, &args.service_account);
    request.audiences = args.audience;
    request.ttl = args.ttl;
    request.expired = args.expired;
    request.issuer = args.issuer;
    if let Some(pod_name) = args.pod_name {
        request.pod_name = pod_name;
    }
    println!("{}", key.mint(&request)?);
    Ok(())
}
