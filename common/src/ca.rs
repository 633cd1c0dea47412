//! Client of Istio's `IstioCertificateService/CreateCertificate` over TLS.
//!
//! Every request opens its own channel and drops it afterwards: renewals
//! are hours apart, so no connection is held between them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::bundle::pem_certificates;
use crate::identity::{SpiffeId, Token};
use crate::pb::istio_certificate_service_client::IstioCertificateServiceClient;
use crate::pb::IstioCertificateRequest;

/// Largest CA response accepted; tonic rejects a longer message from its
/// length prefix, before reading the body.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Largest root file read.
const MAX_ROOT_BYTES: u64 = 1024 * 1024;

/// Errors talking to the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// `--ca-addr` is not `host:port`.
    #[error("invalid --ca-addr {addr:?}: {reason}; expected host:port, such as istiod.istio-system.svc:15012")]
    InvalidAddress {
        /// The value given.
        addr: String,
        /// The defect in the value.
        reason: String,
    },
    /// The root file cannot be read.
    #[error("cannot read CA root file {path}: {source}; mount the istio-ca-root-cert ConfigMap there or set --ca-root")]
    RootUnreadable {
        /// The root file.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The root file contains no valid certificate.
    #[error("CA root file {path} is not a valid PEM certificate bundle: {reason}; it must hold the mesh root(s) as PEM certificates")]
    RootInvalid {
        /// The root file.
        path: PathBuf,
        /// The defect found.
        reason: String,
    },
    /// The token cannot go into a header.
    #[error("token in {path} contains characters not allowed in a header")]
    TokenNotHeaderSafe {
        /// Token file path.
        path: PathBuf,
    },
    /// TCP, DNS or TLS failed before a request was sent.
    #[error("connecting to CA {addr} failed: {reason}")]
    Connect {
        /// CA address.
        addr: String,
        /// Error chain.
        reason: String,
    },
    /// The attempt did not finish within `--request-timeout`.
    #[error("CA {addr} did not answer within {timeout}")]
    Timeout {
        /// CA address.
        addr: String,
        /// The limit.
        timeout: String,
    },
    /// The CA rejected the caller's identity or token.
    #[error(
        "CA {addr} rejected the request for {spiffe_id} (trust domain {}, namespace {}, service account {}): {code:?}: {message}; {}",
        .spiffe_id.trust_domain, .spiffe_id.namespace, .spiffe_id.service_account, rejection_hint(*.code)
    )]
    Rejected {
        /// CA address.
        addr: String,
        /// gRPC status code.
        code: tonic::Code,
        /// The CA's message.
        message: String,
        /// The identity requested.
        spiffe_id: Box<SpiffeId>,
    },
    /// Any other gRPC status.
    #[error("CA {addr} returned {code:?}: {message}")]
    Status {
        /// CA address.
        addr: String,
        /// gRPC status code.
        code: tonic::Code,
        /// The CA's message.
        message: String,
    },
}

/// Returns the next step for a rejected request: `Unauthenticated` is about
/// the token, `PermissionDenied` about the identity asked for.
fn rejection_hint(code: tonic::Code) -> &'static str {
    if code == tonic::Code::Unauthenticated {
        "check the token: a projected service-account token with audience istio-ca, not expired, from this cluster"
    } else {
        "check that --namespace and --service-account match the token's service account and that --trust-domain matches the CA's"
    }
}

impl CaError {
    /// Returns whether retrying the same request may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect { .. } | Self::Timeout { .. } => true,
            Self::Status { code, .. } => matches!(
                code,
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Aborted
                    | tonic::Code::Internal
                    | tonic::Code::Unknown
                    | tonic::Code::Cancelled
            ),
            _ => false,
        }
    }

    /// Returns a short reason label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidAddress { .. } => "invalid_address",
            Self::RootUnreadable { .. } | Self::RootInvalid { .. } => "invalid_root",
            Self::TokenNotHeaderSafe { .. } => "invalid_token",
            Self::Connect { .. } => "connect",
            Self::Timeout { .. } => "timeout",
            Self::Rejected { .. } => "rejected",
            Self::Status { code, .. } => match code {
                tonic::Code::Unavailable => "unavailable",
                tonic::Code::Internal => "internal",
                tonic::Code::InvalidArgument => "invalid_argument",
                tonic::Code::OutOfRange => "answer_too_large",
                _ => "status",
            },
        }
    }
}

/// Splits `host:port`, accepting `[v6]:port`.
pub fn parse_ca_addr(addr: &str) -> Result<(String, u16), CaError> {
    let invalid = |reason: &str| CaError::InvalidAddress {
        addr: addr.to_string(),
        reason: reason.to_string(),
    };
    if addr.contains("://") {
        return Err(invalid("give host:port without a scheme"));
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(invalid("the port is missing"));
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p != 0)
        .ok_or_else(|| invalid("the port is not a number from 1 to 65535"))?;
    let bracketed = host.starts_with('[') && host.ends_with(']');
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.contains(':') && !bracketed {
        return Err(invalid(
            "an IPv6 address needs brackets, such as [::1]:15012",
        ));
    }
    if host.is_empty() || host.contains(['/', ' ', '@']) {
        return Err(invalid("the host is empty or contains '/', ' ' or '@'"));
    }
    Ok((host.to_string(), port))
}

/// Reads and checks the CA root bundle; every PEM block must be a parsable certificate.
pub fn load_ca_root(path: &Path) -> Result<String, CaError> {
    use std::io::Read;
    let unreadable = |source| CaError::RootUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let invalid = |reason: String| CaError::RootInvalid {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(unreadable)?;
    let mut text = String::new();
    file.take(MAX_ROOT_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(unreadable)?;
    if text.len() as u64 > MAX_ROOT_BYTES {
        return Err(invalid(format!("larger than {MAX_ROOT_BYTES} bytes")));
    }
    let ders = pem_certificates(&text, 0).map_err(|e| invalid(e.to_string()))?;
    for (index, der) in ders.iter().enumerate() {
        use x509_parser::prelude::FromDer;
        x509_parser::certificate::X509Certificate::from_der(der)
            .map_err(|e| invalid(format!("certificate {index} cannot be parsed: {e}")))?;
    }
    Ok(text)
}

/// Connection settings of the CA.
#[derive(Debug, Clone)]
pub struct CaConfig {
    /// `host:port`.
    pub addr: String,
    /// TLS server name checked in the CA's certificate.
    pub server_name: String,
    /// PEM roots that sign the CA's serving certificate.
    pub root_pem: String,
    /// `clusterid` header value.
    pub cluster_id: String,
    /// Limit of one whole attempt.
    pub request_timeout: Duration,
    /// Limit of the TCP and TLS connection.
    pub connect_timeout: Duration,
}

/// One certificate request.
#[derive(Debug)]
pub struct CertificateRequest<'a> {
    /// PEM CSR.
    pub csr_pem: &'a str,
    /// Requested lifetime.
    pub ttl: Duration,
    /// Bearer token, read just before the call.
    pub token: &'a Token,
    /// The identity asked for, named in errors.
    pub spiffe_id: &'a SpiffeId,
}

/// Sends one `CreateCertificate` request and returns the answer's `cert_chain`.
///
/// The whole attempt, connection included, is bounded by `request_timeout`.
pub async fn create_certificate(
    config: &CaConfig,
    request: &CertificateRequest<'_>,
) -> Result<Vec<String>, CaError> {
    let attempt = create_certificate_untimed(config, request);
    match tokio::time::timeout(config.request_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(CaError::Timeout {
            addr: config.addr.clone(),
            timeout: humantime::format_duration(config.request_timeout).to_string(),
        }),
    }
}

async fn create_certificate_untimed(
    config: &CaConfig,
    request: &CertificateRequest<'_>,
) -> Result<Vec<String>, CaError> {
    let connect_error = |reason: String| CaError::Connect {
        addr: config.addr.clone(),
        reason,
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&config.root_pem))
        .domain_name(config.server_name.clone());
    let endpoint = Endpoint::from_shared(format!("https://{}", config.addr))
        .map_err(|e| CaError::InvalidAddress {
            addr: config.addr.clone(),
            reason: e.to_string(),
        })?
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        .tls_config(tls)
        .map_err(|e| connect_error(error_chain(&e)))?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| connect_error(error_chain(&e)))?;

    let mut message = tonic::Request::new(IstioCertificateRequest {
        csr: request.csr_pem.to_string(),
        validity_duration: i64::try_from(request.ttl.as_secs()).unwrap_or(i64::MAX),
        metadata: None,
    });
    let bearer = format!("Bearer {}", request.token.secret());
    let mut authorization: MetadataValue<_> =
        bearer.parse().map_err(|_| CaError::TokenNotHeaderSafe {
            path: request.token.path().to_path_buf(),
        })?;
    authorization.set_sensitive(true);
    message
        .metadata_mut()
        .insert("authorization", authorization);
    if let Ok(cluster_id) = config.cluster_id.parse() {
        message.metadata_mut().insert("clusterid", cluster_id);
    }

    let mut client =
        IstioCertificateServiceClient::new(channel).max_decoding_message_size(MAX_ANSWER_BYTES);
    match client.create_certificate(message).await {
        Ok(answer) => Ok(answer.into_inner().cert_chain),
        Err(status) => Err(status_error(config, request.spiffe_id, &status)),
    }
}

fn status_error(config: &CaConfig, spiffe_id: &SpiffeId, status: &tonic::Status) -> CaError {
    let message: String = status.message().chars().take(1024).collect();
    match status.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => CaError::Rejected {
            addr: config.addr.clone(),
            code: status.code(),
            message,
            spiffe_id: Box::new(spiffe_id.clone()),
        },
        code => CaError::Status {
            addr: config.addr.clone(),
            code,
            message,
        },
    }
}

/// Joins an error and its sources with ": ", skipping repeats.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(next) = source {
        let text = next.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = next.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_ca_addr_forms() {
        assert_eq!(
            parse_ca_addr("istiod.istio-system.svc:15012").ok(),
            Some(("istiod.istio-system.svc".to_string(), 15012))
        );
        assert_eq!(
            parse_ca_addr("[::1]:15012").ok(),
            Some(("::1".to_string(), 15012))
        );
    }

    #[test]
    fn parse_ca_addr_rejects_missing_port() {
        let message = parse_ca_addr("istiod").unwrap_err().to_string();
        assert!(message.contains("\"istiod\""), "{message}");
        assert!(message.contains("port is missing"), "{message}");
    }

    #[test]
    fn parse_ca_addr_error_names_flag() {
        let message = parse_ca_addr("https://istiod:15012")
            .unwrap_err()
            .to_string();
        assert!(message.contains("--ca-addr"), "{message}");
        assert!(message.contains("host:port"), "{message}");
    }

    #[test]
    fn parse_ca_addr_rejects_scheme() {
        assert!(parse_ca_addr("https://istiod:15012").is_err());
        assert!(parse_ca_addr("istiod:0").is_err());
        assert!(parse_ca_addr("istiod:99999").is_err());
        assert!(parse_ca_addr("::1")
            .unwrap_err()
            .to_string()
            .contains("brackets"));
    }

    #[test]
    fn load_ca_root_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("root.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let error = load_ca_root(&path).unwrap_err();
        assert!(matches!(error, CaError::RootInvalid { .. }), "{error}");
        assert!(error.to_string().contains("root.pem"), "{error}");
    }

    #[test]
    fn status_codes_transient() {
        let status = |code| CaError::Status {
            addr: String::new(),
            code,
            message: String::new(),
        };
        assert!(status(tonic::Code::Unavailable).is_transient());
        assert!(status(tonic::Code::Internal).is_transient());
        assert!(!status(tonic::Code::InvalidArgument).is_transient());
    }
}
