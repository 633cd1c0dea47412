//! The `serve` command: TLS gRPC server, ready file and signal handling.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use meshcert_common::pb::istio_certificate_service_server::IstioCertificateServiceServer;
use tokio::signal::unix::{signal, SignalKind};
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tracing::{error, info, warn};

use super::fault::FaultSpec;
use super::service::{DevCaService, FaultSource, IssuancePolicy};
use super::state::{self, CaMaterial};
use crate::atomic_file::write_atomic;

/// How long in-flight calls may take to finish after SIGTERM or SIGINT
/// before the server exits anyway. A stalled call would otherwise hold the
/// exit for [`super::service::STALL_LIMIT`].
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Settings of `meshcert-devca serve`.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to bind. Port 0 picks a free port.
    pub listen: SocketAddr,
    /// CA state directory.
    pub state_dir: PathBuf,
    /// File that receives the bound address once the server accepts calls.
    pub ready_file: Option<PathBuf>,
    /// Fault specification given at start.
    pub fault: FaultSpec,
    /// File whose content, when present and not empty, replaces `fault` on
    /// each call.
    pub fault_file: Option<PathBuf>,
    /// Issuance policy.
    pub policy: IssuancePolicy,
}

/// Runs the CA until SIGTERM or SIGINT. SIGHUP reloads the CA material from
/// the state directory, for use after `rotate-root`.
///
/// NOTE: SIGHUP replaces the signing CA and the trust bundle but not the TLS
/// serving certificate, which tonic fixes at start. Clients that trust the
/// rotated `root-cert.pem` still accept the old serving certificate because
/// the bundle keeps the previous root.
pub async fn serve(config: ServeConfig) -> Result<()> {
    let state_dir = config.state_dir.clone();
    let (ca, token_key) = tokio::task::spawn_blocking(move || -> Result<_> {
        state::ensure(&state_dir)?;
        Ok((
            state::load_ca(&state_dir)?,
            state::load_token_key(&state_dir)?,
        ))
    })
    .await
    .context("state loading task failed")??;

    let identity = Identity::from_pem(&ca.serving_chain_pem, &ca.serving_key_pem);
    let ca = Arc::new(RwLock::new(Arc::new(ca)));
    let service = DevCaService::new(
        config.policy.clone(),
        Arc::clone(&ca),
        token_key,
        FaultSource::new(config.fault.clone(), config.fault_file.clone()),
    );

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("failed to bind {}", config.listen))?;
    let bound = listener
        .local_addr()
        .context("failed to read the bound address")?;

    let mut terminate = signal(SignalKind::terminate()).context("failed to handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("failed to handle SIGINT")?;
    let mut hangup = signal(SignalKind::hangup()).context("failed to handle SIGHUP")?;

    let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
    let server = Server::builder()
        .tls_config(ServerTlsConfig::new().identity(identity))
        .context("invalid TLS serving certificate or key")?
        .serve_with_incoming_shutdown(
            IstioCertificateServiceServer::new(service),
            // Without TCP_NODELAY the answer's last small write waits for
            // the client's delayed ACK, about 40 ms on Linux. Go's gRPC
            // servers, istiod among them, set it on every connection.
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async {
                let _ = shutdown_rx.await;
            },
        );
    let mut server = tokio::spawn(server);

    if let Some(path) = &config.ready_file {
        write_atomic(path, bound.to_string().as_bytes(), 0o644)
            .with_context(|| format!("failed to write the ready file {}", path.display()))?;
    }
    info!(
        address = %bound,
        state_dir = %config.state_dir.display(),
        trust_domain = config.policy.trust_domain,
        audience = config.policy.audience,
        faults = %config.fault,
        fault_file = %config
            .fault_file
            .as_deref()
            .map(|path| path.display().to_string())
            .unwrap_or_default(),
        "meshcert-devca listening"
    );

    let signal_name = loop {
        tokio::select! {
            result = &mut server => {
                return match result {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => Err(error).context("gRPC server failed"),
                    Err(error) => Err(error).context("gRPC server task failed"),
                };
            }
            _ = terminate.recv() => break "SIGTERM",
            _ = interrupt.recv() => break "SIGINT",
            _ = hangup.recv() => reload(&config.state_dir, &ca).await,
        }
    };

    info!(signal = signal_name, "shutting down");
    let _ = shutdown_tx.send(());
    match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
        Ok(_) => info!("stopped"),
        Err(_) => {
            warn!(
                grace_ms = SHUTDOWN_GRACE.as_millis(),
                "calls still open after the grace period; exiting anyway"
            );
            server.abort();
        }
    }
    Ok(())
}

async fn reload(state_dir: &std::path::Path, ca: &Arc<RwLock<Arc<CaMaterial>>>) {
    let dir = state_dir.to_owned();
    let loaded = tokio::task::spawn_blocking(move || state::load_ca(&dir)).await;
    match loaded {
        Ok(Ok(material)) => {
            *ca.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(material);
            info!(state_dir = %state_dir.display(), "reloaded the CA material on SIGHUP");
        }
        Ok(Err(error)) => error!(
            state_dir = %state_dir.display(),
            error = format!("{error:#}"),
            "failed to reload the CA material; keeping the previous one"
        ),
        Err(error) => error!(%error, "CA reload task failed; keeping the previous one"),
    }
}
