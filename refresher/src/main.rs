//! `meshcert-refresher`: keeps the published certificate set valid for the
//! life of the pod.
//!
//! Exit codes: 0 after SIGTERM or SIGINT (the files stay in place); 2 when
//! start-up fails: invalid settings, an unresolvable identity, an unreadable
//! CA root, an unwritable output directory or an address already in use.
//! `meshcert-refresher probe` exits 0 when a valid set is published, else 1.

mod attempt;
mod cli;
mod http;
mod metrics;
mod probe;
mod readiness;
mod renewer;
mod watch;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::Parser;
use meshcert_common::certdir::CertDir;
use meshcert_common::identity;
use meshcert_common::issue::Issuer;
use meshcert_common::notify::Notifier;
use meshcert_common::outputs::ExtraOutputs;
use meshcert_common::schedule::{Backoff, RenewPolicy};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::cli::{Cli, Command};
use crate::http::{Endpoints, Shared};
use crate::metrics::Metrics;
use crate::readiness::Readiness;
use crate::renewer::Renewer;
use crate::watch::DirWatch;

/// Maximum wait for background work after the renewal loop stopped.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::Probe(args)) => return probe::run(&args.settings),
        Some(Command::Status(args)) => {
            return ExitCode::from(meshcert_common::status::print_status(args))
        }
        None => {}
    }
    let notifier = cli.notify.notifier();
    if let Err(message) = cli.settings.check() {
        cli::usage_error(ErrorKind::ValueValidation, message);
    }
    meshcert_common::telemetry::init_logging(cli.settings.log_format);

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(error = %error, "starting the async runtime failed");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(run(&cli, notifier));
    runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!(exit_code = 2, "{message}");
            ExitCode::from(2)
        }
    }
}

/// Checks the environment, starts the endpoints and the watches, and runs
/// the renewal loop until a stop signal. Returns a start-up failure message.
async fn run(cli: &Cli, notifier: Notifier) -> Result<(), String> {
    let settings = &cli.settings;
    let spiffe_id = identity::resolve_identity(
        &settings.trust_domain,
        settings.namespace.as_deref(),
        settings.service_account.as_deref(),
        &settings.token_file,
    )
    .map_err(|e| e.to_string())?;
    let issuer = Issuer::from_settings(settings, spiffe_id.clone()).map_err(|e| e.to_string())?;
    let dir = CertDir::new(&settings.out_dir, settings.group);
    dir.prepare().map_err(|e| e.to_string())?;
    let extras = ExtraOutputs::load(&cli.outputs).map_err(|e| e.to_string())?;

    let probe_listener = bind("--probe-addr", cli.probe_addr).await?;
    let admin_listener = bind("--admin-addr", cli.admin_addr).await?;

    let (renew_sender, renew_receiver) = mpsc::channel(16);
    let shared = Arc::new(Shared {
        metrics: Metrics::new(),
        readiness: Readiness::new(dir.clone(), spiffe_id.clone()),
        renew_requests: renew_sender,
    });
    tokio::spawn(http::serve(
        probe_listener,
        Endpoints::Probe,
        Arc::clone(&shared),
    ));
    tokio::spawn(http::serve(
        admin_listener,
        Endpoints::Admin,
        Arc::clone(&shared),
    ));

    let watch = DirWatch::start(&settings.ca_root, dir.path());
    tracing::info!(
        %spiffe_id,
        ca_addr = %settings.ca_addr,
        out_dir = ?dir.path(),
        notify_signal = ?notifier.signal,
        notify_exec = ?notifier.exec.as_ref().map(|exec| &exec.argv),
        "meshcert-refresher started"
    );

    let renewer = Renewer::new(
        renewer::Settings {
            issuer,
            dir,
            policy: RenewPolicy {
                ratio: settings.renew_ratio,
                jitter: settings.renew_jitter,
            },
            backoff: Backoff::new(settings.retry_initial_backoff, settings.retry_max_backoff),
            notifier,
            extras,
        },
        shared,
        watch,
        renew_receiver,
    );
    match renewer.run().await {
        Ok(signal_name) => {
            tracing::info!(
                signal = signal_name,
                "stopping; the published files stay in place"
            );
            Ok(())
        }
        Err(error) => Err(format!("installing the signal handlers failed: {error}")),
    }
}

async fn bind(flag: &str, addr: SocketAddr) -> Result<TcpListener, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {flag} {addr}: {e}; choose a free address"))?;
    let bound = listener
        .local_addr()
        .map_err(|e| format!("cannot read the address bound for {flag}: {e}"))?;
    match flag {
        "--admin-addr" => tracing::info!(addr = %bound, "serving admin endpoints"),
        _ => tracing::info!(addr = %bound, "serving probe endpoints"),
    }
    Ok(listener)
}
