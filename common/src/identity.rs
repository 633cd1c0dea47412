//! The workload's SPIFFE identity and the service-account token it is proven with.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::Deserialize;
use zeroize::Zeroizing;

/// Largest token file read; Kubernetes projected tokens are about 1 KiB.
pub const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// Errors reading the token or deriving the identity.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The token file could not be read.
    #[error("cannot read token file {path}: {source}; mount the projected service-account token there or set --token-file")]
    TokenUnreadable {
        /// Token file path.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The token file exists but holds only whitespace.
    #[error("token file {path} is empty; check the projected token volume")]
    TokenEmpty {
        /// Token file path.
        path: PathBuf,
    },
    /// The token file is larger than [`MAX_TOKEN_BYTES`].
    #[error("token file {path} is larger than {MAX_TOKEN_BYTES} bytes; it does not look like a service-account token")]
    TokenTooLarge {
        /// Token file path.
        path: PathBuf,
    },
    /// The token is not a JWT whose claims can be read.
    #[error("token in {path} is not a readable JWT ({reason}); give --namespace and --service-account, or mount a Kubernetes service-account token")]
    TokenMalformed {
        /// Token file path.
        path: PathBuf,
        /// The part that could not be parsed.
        reason: String,
    },
    /// The token's `exp` claim is in the past.
    #[error("token in {path} expired at {expired_at} ({ago} ago); the kubelet refreshes projected tokens, so check the volume's expirationSeconds and that the file is the mounted projection")]
    TokenExpired {
        /// Token file path.
        path: PathBuf,
        /// Expiry in RFC 3339.
        expired_at: String,
        /// How long ago, human readable.
        ago: String,
    },
    /// A part of the identity was neither given nor found in the token.
    #[error("no {what} given and the token in {path} has no {claim} claim; set {flag}")]
    MissingPart {
        /// Part of the identity, such as "namespace".
        what: &'static str,
        /// The claim that was looked for.
        claim: &'static str,
        /// The flag and env variable that set it.
        flag: &'static str,
        /// Token file path.
        path: PathBuf,
    },
    /// A part of the identity contains characters a SPIFFE path segment cannot hold.
    #[error("invalid {what} {value:?}: expected lowercase letters, digits, '-' and '.', as Kubernetes names are")]
    InvalidPart {
        /// Part of the identity.
        what: &'static str,
        /// The rejected value.
        value: String,
    },
}

/// A workload identity `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    /// Trust domain, such as `cluster.local`.
    pub trust_domain: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Kubernetes service account.
    pub service_account: String,
}

impl SpiffeId {
    /// Builds an identity after checking each part.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        check_part("trust domain", trust_domain)?;
        check_part("namespace", namespace)?;
        check_part("service account", service_account)?;
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    /// Parses `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
    pub fn parse(uri: &str) -> Option<Self> {
        let rest = uri.strip_prefix("spiffe://")?;
        let (trust_domain, path) = rest.split_once('/')?;
        let path = path.strip_prefix("ns/")?;
        let (namespace, service_account) = path.split_once("/sa/")?;
        Self::new(trust_domain, namespace, service_account).ok()
    }

    /// Returns the URI form used in the certificate's SAN.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

fn check_part(what: &'static str, value: &str) -> Result<(), IdentityError> {
    let valid = !value.is_empty()
        && value.len() <= 253
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if valid {
        Ok(())
    } else {
        Err(IdentityError::InvalidPart {
            what,
            value: value.to_string(),
        })
    }
}

/// A bearer token read from its file, trimmed, and zeroized on drop.
pub struct Token {
    value: Zeroizing<String>,
    path: PathBuf,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Token {
    /// Reads the token file, refusing files over [`MAX_TOKEN_BYTES`] without reading them whole.
    pub fn read(path: &Path) -> Result<Self, IdentityError> {
        let unreadable = |source| IdentityError::TokenUnreadable {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(unreadable)?;
        let mut bytes = Zeroizing::new(Vec::new());
        file.take(MAX_TOKEN_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        if bytes.len() as u64 > MAX_TOKEN_BYTES {
            return Err(IdentityError::TokenTooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::str::from_utf8(&bytes).map_err(|_| IdentityError::TokenMalformed {
            path: path.to_path_buf(),
            reason: "not UTF-8".to_string(),
        })?;
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(IdentityError::TokenEmpty {
                path: path.to_path_buf(),
            });
        }
        Ok(Self {
            value: Zeroizing::new(trimmed.to_string()),
            path: path.to_path_buf(),
        })
    }

    /// Returns the token text, for the `authorization` header only.
    pub fn secret(&self) -> &str {
        &self.value
    }

    /// Returns the file the token was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decodes the JWT claims without verifying the signature; the CA verifies it.
    pub fn claims(&self) -> Result<TokenClaims, IdentityError> {
        TokenClaims::decode(&self.value).map_err(|reason| IdentityError::TokenMalformed {
            path: self.path.clone(),
            reason,
        })
    }

    /// Fails with [`IdentityError::TokenExpired`] if the token has an `exp` before `now`.
    ///
    /// A token that is not a JWT is let through: the CA decides about it.
    pub fn check_not_expired(&self, now: SystemTime) -> Result<(), IdentityError> {
        let Ok(claims) = self.claims() else {
            return Ok(());
        };
        let Some(expires_at) = claims.expires_at() else {
            return Ok(());
        };
        if let Ok(ago) = now.duration_since(expires_at) {
            return Err(IdentityError::TokenExpired {
                path: self.path.clone(),
                expired_at: humantime::format_rfc3339_seconds(expires_at).to_string(),
                ago: humantime::format_duration(Duration::from_secs(ago.as_secs())).to_string(),
            });
        }
        Ok(())
    }
}

/// The claims of a Kubernetes service-account token that meshcert reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TokenClaims {
    /// Expiry in seconds since the Unix epoch.
    pub exp: Option<i64>,
    /// Subject, `system:serviceaccount:<ns>:<sa>` for Kubernetes tokens.
    pub sub: Option<String>,
    /// Kubernetes-specific claims.
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: Option<KubernetesClaims>,
}

/// The `kubernetes.io` claim of a projected token.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct KubernetesClaims {
    /// Namespace of the pod.
    pub namespace: Option<String>,
    /// The service account the token was issued for.
    pub serviceaccount: Option<NamedObject>,
}

/// A Kubernetes object reference with a name.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NamedObject {
    /// Object name.
    pub name: Option<String>,
}

impl TokenClaims {
    /// Decodes the payload (second part) of a compact JWT.
    pub fn decode(jwt: &str) -> Result<Self, String> {
        let mut parts = jwt.split('.');
        let (Some(_header), Some(payload), Some(_signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("expected three dot-separated parts".to_string());
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|e| format!("payload is not base64url: {e}"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("payload is not JSON claims: {e}"))
    }

    /// Returns the expiry as a time, if the token has one.
    pub fn expires_at(&self) -> Option<SystemTime> {
        let exp = u64::try_from(self.exp?).unwrap_or(0);
        Some(UNIX_EPOCH + Duration::from_secs(exp))
    }

    /// Returns the namespace from `kubernetes.io` or else from `sub`.
    pub fn namespace(&self) -> Option<String> {
        let from_kubernetes = self.kubernetes.as_ref().and_then(|k| k.namespace.clone());
        from_kubernetes.or_else(|| self.subject_parts().map(|(ns, _)| ns))
    }

    /// Returns the service account from `kubernetes.io` or else from `sub`.
    pub fn service_account(&self) -> Option<String> {
        let from_kubernetes = self
            .kubernetes
            .as_ref()
            .and_then(|k| k.serviceaccount.as_ref())
            .and_then(|sa| sa.name.clone());
        from_kubernetes.or_else(|| self.subject_parts().map(|(_, sa)| sa))
    }

    fn subject_parts(&self) -> Option<(String, String)> {
        let rest = self
            .sub
            .as_deref()?
            .strip_prefix("system:serviceaccount:")?;
        let (namespace, service_account) = rest.split_once(':')?;
        Some((namespace.to_string(), service_account.to_string()))
    }
}

/// Resolves the identity from explicit parts, falling back to the token's claims.
///
/// The token is read only when the namespace or the service account is missing.
pub fn resolve_identity(
    trust_domain: &str,
    namespace: Option<&str>,
    service_account: Option<&str>,
    token_file: &Path,
) -> Result<SpiffeId, IdentityError> {
    let namespace = namespace.map(str::trim).filter(|v| !v.is_empty());
    let service_account = service_account.map(str::trim).filter(|v| !v.is_empty());
    let (namespace, service_account) = match (namespace, service_account) {
        (Some(ns), Some(sa)) => (ns.to_string(), sa.to_string()),
        (ns, sa) => {
            let claims = Token::read(token_file)?.claims()?;
            let missing = |what, claim, flag| IdentityError::MissingPart {
                what,
                claim,
                flag,
                path: token_file.to_path_buf(),
            };
            let namespace = match ns {
                Some(ns) => ns.to_string(),
                None => claims.namespace().ok_or_else(|| {
                    missing(
                        "namespace",
                        "kubernetes.io/namespace",
                        "--namespace or POD_NAMESPACE",
                    )
                })?,
            };
            let service_account = match sa {
                Some(sa) => sa.to_string(),
                None => claims.service_account().ok_or_else(|| {
                    missing(
                        "service account",
                        "kubernetes.io/serviceaccount/name",
                        "--service-account or SERVICE_ACCOUNT",
                    )
                })?,
            };
            (namespace, service_account)
        }
    };
    SpiffeId::new(trust_domain, &namespace, &service_account)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.c2ln",
            engine.encode(r#"{"alg":"RS256"}"#),
            engine.encode(claims)
        )
    }

    #[test]
    fn spiffe_id_uri_form() {
        let id = SpiffeId::new("cluster.local", "monitoring", "prometheus").unwrap();
        assert_eq!(
            id.uri(),
            "spiffe://cluster.local/ns/monitoring/sa/prometheus"
        );
    }

    #[test]
    fn spiffe_id_parse_round_trip() {
        let uri = "spiffe://cluster.local/ns/monitoring/sa/prometheus";
        assert_eq!(
            SpiffeId::parse(uri).map(|id| id.uri()).as_deref(),
            Some(uri)
        );
        assert!(SpiffeId::parse("spiffe://cluster.local/ns/a/b").is_none());
        assert!(SpiffeId::parse("https://cluster.local/ns/a/sa/b").is_none());
    }

    #[test]
    fn spiffe_id_rejects_slash() {
        let error = SpiffeId::new("cluster.local", "a/b", "sa").unwrap_err();
        assert!(error.to_string().contains("\"a/b\""), "{error}");
    }

    #[test]
    fn claims_from_kubernetes_claim() {
        let token =
            jwt(r#"{"exp":1,"kubernetes.io":{"namespace":"ns1","serviceaccount":{"name":"sa1"}}}"#);
        let claims = TokenClaims::decode(&token).unwrap();
        assert_eq!(claims.namespace().as_deref(), Some("ns1"));
        assert_eq!(claims.service_account().as_deref(), Some("sa1"));
    }

    #[test]
    fn claims_from_subject() {
        let token = jwt(r#"{"sub":"system:serviceaccount:ns2:sa2"}"#);
        let claims = TokenClaims::decode(&token).unwrap();
        assert_eq!(claims.namespace().as_deref(), Some("ns2"));
        assert_eq!(claims.service_account().as_deref(), Some("sa2"));
    }

    #[test]
    fn claims_reject_two_parts() {
        assert!(TokenClaims::decode("a.b").is_err());
        assert!(TokenClaims::decode("a.!!!.c").is_err());
    }

    #[test]
    fn token_expired_names_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, format!("  {}\n", jwt(r#"{"exp":1000}"#))).unwrap();
        let token = Token::read(&path).unwrap();
        let error = token.check_not_expired(SystemTime::now()).unwrap_err();
        assert!(
            error.to_string().contains("1970-01-01T00:16:40Z"),
            "{error}"
        );
    }

    #[test]
    fn token_empty_file_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(
            Token::read(&path),
            Err(IdentityError::TokenEmpty { .. })
        ));
    }

    #[test]
    fn token_too_large_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, vec![b'a'; MAX_TOKEN_BYTES as usize + 10]).unwrap();
        assert!(matches!(
            Token::read(&path),
            Err(IdentityError::TokenTooLarge { .. })
        ));
    }

    #[test]
    fn resolve_identity_prefers_flags() {
        let id = resolve_identity(
            "td",
            Some("ns"),
            Some("sa"),
            Path::new("/nonexistent/token"),
        )
        .unwrap();
        assert_eq!(id.uri(), "spiffe://td/ns/ns/sa/sa");
    }
}
