//! The `istio.v1.auth.IstioCertificateService` implementation.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use meshcert_common::pb::istio_certificate_service_server::IstioCertificateService;
use meshcert_common::pb::{IstioCertificateRequest, IstioCertificateResponse};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::{error, info, warn};

use super::csr::check_csr;
use super::fault::{FailureCode, FaultSpec};
use super::issue::issue;
use super::state::CaMaterial;
use super::token::{ServiceAccountIdentity, TokenKey};

/// How long the `stall` fault keeps a call open before giving up. Clients are
/// expected to time out long before.
pub const STALL_LIMIT: Duration = Duration::from_secs(3600);

/// Issuance policy of the CA.
#[derive(Debug, Clone)]
pub struct IssuancePolicy {
    /// Trust domain of issued SPIFFE IDs.
    pub trust_domain: String,
    /// Audience that tokens must contain.
    pub audience: String,
    /// Lifetime used when the request's `validity_duration` is zero or
    /// negative.
    pub default_ttl: Duration,
    /// Maximum lifetime granted to a request.
    pub max_ttl: Duration,
}

impl IssuancePolicy {
    /// Returns the leaf lifetime for a requested `validity_duration` in
    /// seconds: the request capped at `max_ttl`, or `default_ttl` (also
    /// capped) when the request is zero or negative.
    pub fn leaf_ttl(&self, validity_duration: i64) -> Duration {
        let requested = match u64::try_from(validity_duration) {
            Ok(seconds) if seconds > 0 => Duration::from_secs(seconds),
            _ => self.default_ttl,
        };
        requested.min(self.max_ttl)
    }
}

/// Where the active fault specification comes from.
#[derive(Debug)]
pub struct FaultSource {
    start: FaultSpec,
    file: Option<PathBuf>,
    last_file_content: Mutex<Option<String>>,
}

impl FaultSource {
    /// Uses `start` unless `file` exists and is not empty, in which case the
    /// file's content replaces it. The file is read on every call.
    pub fn new(start: FaultSpec, file: Option<PathBuf>) -> Self {
        Self {
            start,
            file,
            last_file_content: Mutex::new(None),
        }
    }

    /// Returns the specification for the current call, or a message
    /// explaining why the fault file is invalid.
    async fn current(&self) -> Result<FaultSpec, String> {
        let Some(path) = &self.file else {
            return Ok(self.start.clone());
        };
        let content = match tokio::fs::read_to_string(path).await {
            Ok(content) => content,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(error) => {
                error!(fault_file = %path.display(), %error, "failed to read the fault file");
                return Err(format!(
                    "failed to read the fault file {}: {error}",
                    path.display()
                ));
            }
        };
        let changed = {
            let mut last = self
                .last_file_content
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let changed = last.as_deref() != Some(content.as_str());
            *last = Some(content.clone());
            changed
        };
        if content.trim().is_empty() {
            return Ok(self.start.clone());
        }
        let parsed = content
            .parse::<FaultSpec>()
            .map_err(|error| format!("invalid fault file {}: {error}", path.display()));
        if changed {
            match &parsed {
                Ok(_) => {
                    info!(fault_file = %path.display(), faults = content.trim(), "fault file changed")
                }
                Err(message) => {
                    error!(fault_file = %path.display(), %message, "fault file is invalid")
                }
            }
        }
        parsed
    }
}

/// The development CA's gRPC service.
#[derive(Debug)]
pub struct DevCaService {
    policy: IssuancePolicy,
    ca: Arc<RwLock<Arc<CaMaterial>>>,
    token_key: TokenKey,
    faults: FaultSource,
    calls: AtomicU64,
    issued: AtomicU64,
}

impl DevCaService {
    /// Builds the service. `ca` is shared with the SIGHUP handler, which
    /// replaces the material after a root rotation.
    pub fn new(
        policy: IssuancePolicy,
        ca: Arc<RwLock<Arc<CaMaterial>>>,
        token_key: TokenKey,
        faults: FaultSource,
    ) -> Self {
        Self {
            policy,
            ca,
            token_key,
            faults,
            calls: AtomicU64::new(0),
            issued: AtomicU64::new(0),
        }
    }

    fn authenticate(&self, metadata: &MetadataMap) -> Result<ServiceAccountIdentity, Status> {
        let header = metadata.get("authorization").ok_or_else(|| {
            Status::unauthenticated(
                "missing `authorization` metadata; send `authorization: Bearer <service-account token>`",
            )
        })?;
        let header = header.to_str().map_err(|_| {
            Status::unauthenticated("`authorization` metadata is not printable ASCII")
        })?;
        let token = header
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or_else(|| {
                Status::unauthenticated(
                    "`authorization` metadata is not `Bearer <service-account token>`",
                )
            })?;
        self.token_key
            .verify(token, &self.policy.audience)
            .map_err(|error| Status::unauthenticated(error.to_string()))
    }
}

#[tonic::async_trait]
impl IstioCertificateService for DevCaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let cluster_id = request
            .metadata()
            .get("clusterid")
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned();
        info!(call, cluster_id, "CreateCertificate request");

        let faults = self.faults.current().await.map_err(Status::internal)?;
        if let Some(code) = faults.status_for_call(call) {
            warn!(call, ?code, "answering with an injected error status");
            let message = format!("injected fault for call {call}");
            return Err(match code {
                FailureCode::Unavailable => Status::unavailable(message),
                FailureCode::Internal => Status::internal(message),
            });
        }
        if faults.stall {
            warn!(call, "stalling the call as the `stall` fault asks");
            tokio::time::sleep(STALL_LIMIT).await;
            return Err(Status::deadline_exceeded("stalled call gave up"));
        }
        if let Some(delay) = faults.delay {
            info!(call, delay_ms = delay.as_millis(), "delaying the answer");
            tokio::time::sleep(delay).await;
        }

        let identity = self
            .authenticate(request.metadata())
            .inspect_err(|status| {
                warn!(
                    call,
                    cluster_id,
                    reason = status.message(),
                    "rejected the token"
                );
            })?;
        let allowed = identity.spiffe_id(&self.policy.trust_domain);
        let request = request.into_inner();
        let csr = check_csr(&request.csr, &allowed).map_err(|error| {
            warn!(call, identity = allowed, %error, "rejected the CSR");
            Status::new(error.code(), error.to_string())
        })?;

        let ttl = faults
            .ttl
            .unwrap_or_else(|| self.policy.leaf_ttl(request.validity_duration));
        let ca = self
            .ca
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let issued =
            issue(&ca, &csr, ttl, &faults, &self.policy.trust_domain).map_err(|error| {
                error!(
                    call,
                    identity = allowed,
                    error = format!("{error:#}"),
                    "issuance failed"
                );
                Status::internal(format!("issuance failed: {error:#}"))
            })?;

        let count = self.issued.fetch_add(1, Ordering::SeqCst) + 1;
        info!(
            call,
            identity = issued.spiffe_id,
            serial = issued.serial_hex,
            ttl_secs = ttl.as_secs(),
            lifetime_secs = issued.lifetime.as_secs(),
            requested_secs = request.validity_duration,
            issued_total = count,
            faults = %faults,
            "issued certificate"
        );
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: issued.cert_chain,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> IssuancePolicy {
        IssuancePolicy {
            trust_domain: "cluster.local".to_owned(),
            audience: "istio-ca".to_owned(),
            default_ttl: Duration::from_secs(24 * 3600),
            max_ttl: Duration::from_secs(48 * 3600),
        }
    }

    #[test]
    fn ttl_uses_request_default_and_cap() {
        let policy = policy();
        assert_eq!(policy.leaf_ttl(3600), Duration::from_secs(3600));
        assert_eq!(policy.leaf_ttl(0), Duration::from_secs(24 * 3600));
        assert_eq!(policy.leaf_ttl(-5), Duration::from_secs(24 * 3600));
        assert_eq!(policy.leaf_ttl(i64::MAX), Duration::from_secs(48 * 3600));
    }

    #[tokio::test]
    async fn fault_file_overrides_start_spec() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults");
        let source = FaultSource::new("short-chain".parse().unwrap(), Some(path.clone()));
        assert!(source.current().await.unwrap().short_chain);

        std::fs::write(&path, "stall\n").unwrap();
        let spec = source.current().await.unwrap();
        assert!(spec.stall);
        assert!(!spec.short_chain);

        std::fs::write(&path, "  \n").unwrap();
        assert!(source.current().await.unwrap().short_chain);

        std::fs::write(&path, "bogus").unwrap();
        let message = source.current().await.unwrap_err();
        assert!(message.contains("`bogus`"), "{message}");
    }
}
