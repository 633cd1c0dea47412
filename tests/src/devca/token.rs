//! Service-account tokens shaped like Kubernetes projected tokens: minted by
//! `meshcert-devca token` and the test harness, verified by the CA.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use rcgen::{KeyPair, PublicKeyData};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Audience that the CA requires by default, as istiod does.
pub const DEFAULT_AUDIENCE: &str = "istio-ca";
/// Issuer of in-cluster Kubernetes service-account tokens.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Default lifetime of a minted token.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Clock-skew allowance for `exp` and `nbf`. The CA and its clients run on
/// one host in tests, so a few seconds are enough.
const LEEWAY_SECS: u64 = 5;

/// The ES256 key that signs and verifies tokens.
pub struct TokenKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
    kid: String,
}

impl fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// What a minted token asserts.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// Kubernetes namespace of the workload.
    pub namespace: String,
    /// Kubernetes service account of the workload.
    pub service_account: String,
    /// Pod name placed in the `kubernetes.io.pod.name` claim.
    pub pod_name: String,
    /// Values of the `aud` claim.
    pub audiences: Vec<String>,
    /// Value of the `iss` claim.
    pub issuer: String,
    /// Lifetime from now to `exp`.
    pub ttl: Duration,
    /// When true, `exp` is one hour in the past instead of `ttl` ahead.
    pub expired: bool,
}

impl TokenRequest {
    /// Builds a request with the default audience, issuer and lifetime.
    pub fn new(namespace: &str, service_account: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            service_account: service_account.to_owned(),
            pod_name: format!("{service_account}-0"),
            audiences: vec![DEFAULT_AUDIENCE.to_owned()],
            issuer: DEFAULT_ISSUER.to_owned(),
            ttl: DEFAULT_TOKEN_TTL,
            expired: false,
        }
    }
}

/// The workload identity proven by a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountIdentity {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Kubernetes service account.
    pub service_account: String,
}

impl ServiceAccountIdentity {
    /// Returns `spiffe://<trust_domain>/ns/<namespace>/sa/<service account>`.
    pub fn spiffe_id(&self, trust_domain: &str) -> String {
        format!(
            "spiffe://{trust_domain}/ns/{}/sa/{}",
            self.namespace, self.service_account
        )
    }
}

/// A token that the CA does not accept.
#[derive(Debug, Error)]
pub enum TokenError {
    /// The signature, format, audience or time claims are invalid.
    #[error("invalid service-account token: {reason}")]
    Invalid {
        /// What was wrong.
        reason: String,
    },
    /// A Kubernetes claim that names the identity is missing or empty.
    #[error("service-account token has no `{claim}` claim; mint it for a service account")]
    MissingClaim {
        /// Dotted path of the claim.
        claim: &'static str,
    },
    /// A Kubernetes name contains characters that cannot appear in a
    /// SPIFFE path segment.
    #[error("service-account token claim `{claim}` has the invalid value `{value}`")]
    InvalidClaim {
        /// Dotted path of the claim.
        claim: &'static str,
        /// The value found.
        value: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    aud: Vec<String>,
    exp: u64,
    iat: u64,
    nbf: u64,
    iss: String,
    sub: String,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaims,
}

#[derive(Debug, Serialize, Deserialize)]
struct KubernetesClaims {
    namespace: String,
    pod: ObjectRef,
    serviceaccount: ObjectRef,
}

#[derive(Debug, Serialize, Deserialize)]
struct ObjectRef {
    name: String,
    uid: String,
}

/// The claims the CA reads, all optional so that a missing one gets its own
/// error message.
#[derive(Debug, Deserialize)]
struct IdentityClaims {
    #[serde(rename = "kubernetes.io")]
    kubernetes: Option<IdentityKubernetesClaims>,
}

#[derive(Debug, Deserialize)]
struct IdentityKubernetesClaims {
    namespace: Option<String>,
    serviceaccount: Option<IdentityObjectRef>,
}

#[derive(Debug, Deserialize)]
struct IdentityObjectRef {
    name: Option<String>,
}

impl TokenKey {
    /// Generates a new ECDSA P-256 key and returns its PKCS#8 PEM encoding.
    pub fn generate_pem() -> Result<String> {
        let key = KeyPair::generate().context("failed to generate the token-signing key")?;
        Ok(key.serialize_pem())
    }

    /// Loads a PKCS#8 PEM ECDSA P-256 key.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let key = KeyPair::from_pem(pem).context("invalid token-signing key PEM")?;
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            anyhow::bail!("the token-signing key must be an ECDSA P-256 key");
        }
        let encoding = EncodingKey::from_ec_der(key.serialized_der());
        // The verifier takes the uncompressed SEC1 point.
        let decoding = DecodingKey::from_ec_der(key.der_bytes());
        let digest = ring::digest::digest(&ring::digest::SHA256, &key.subject_public_key_info());
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16]);
        Ok(Self {
            encoding,
            decoding,
            kid,
        })
    }

    /// Returns the key id placed in the `kid` header of minted tokens.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Mints a signed token for `request`.
    pub fn mint(&self, request: &TokenRequest) -> Result<String> {
        let now = unix_now();
        let exp = if request.expired {
            now.saturating_sub(3600)
        } else {
            now + request.ttl.as_secs()
        };
        let iat = if request.expired {
            now.saturating_sub(7200)
        } else {
            now
        };
        let claims = Claims {
            aud: request.audiences.clone(),
            exp,
            iat,
            nbf: iat,
            iss: request.issuer.clone(),
            sub: format!(
                "system:serviceaccount:{}:{}",
                request.namespace, request.service_account
            ),
            kubernetes: KubernetesClaims {
                namespace: request.namespace.clone(),
                pod: ObjectRef {
                    name: request.pod_name.clone(),
                    uid: random_uid(),
                },
                serviceaccount: ObjectRef {
                    name: request.service_account.clone(),
                    uid: random_uid(),
                },
            },
        };
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding)
            .context("failed to sign the service-account token")
    }

    /// Verifies the signature, `aud` (must contain `audience`), `exp` and
    /// `nbf` of `token`, and returns the Kubernetes identity it names.
    pub fn verify(
        &self,
        token: &str,
        audience: &str,
    ) -> Result<ServiceAccountIdentity, TokenError> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let data = jsonwebtoken::decode::<IdentityClaims>(token, &self.decoding, &validation)
            .map_err(|error| TokenError::Invalid {
                reason: describe_jwt_error(error.kind(), audience),
            })?;

        let kubernetes = data.claims.kubernetes.ok_or(TokenError::MissingClaim {
            claim: "kubernetes.io",
        })?;
        let namespace = kubernetes
            .namespace
            .filter(|value| !value.is_empty())
            .ok_or(TokenError::MissingClaim {
                claim: "kubernetes.io.namespace",
            })?;
        let service_account = kubernetes
            .serviceaccount
            .and_then(|reference| reference.name)
            .filter(|value| !value.is_empty())
            .ok_or(TokenError::MissingClaim {
                claim: "kubernetes.io.serviceaccount.name",
            })?;
        check_name("kubernetes.io.namespace", &namespace)?;
        check_name("kubernetes.io.serviceaccount.name", &service_account)?;
        Ok(ServiceAccountIdentity {
            namespace,
            service_account,
        })
    }
}

fn describe_jwt_error(kind: &ErrorKind, audience: &str) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "the token has expired (`exp` is in the past)".to_owned(),
        ErrorKind::ImmatureSignature => {
            "the token is not valid yet (`nbf` is in the future)".to_owned()
        }
        ErrorKind::InvalidAudience => {
            format!("the `aud` claim does not contain the required audience `{audience}`")
        }
        ErrorKind::InvalidSignature => {
            "the signature does not verify with this CA's token key".to_owned()
        }
        ErrorKind::InvalidAlgorithm => "the token is not signed with ES256".to_owned(),
        ErrorKind::MissingRequiredClaim(claim) => format!("the `{claim}` claim is missing"),
        other => format!("the token could not be decoded ({other:?})"),
    }
}

/// Rejects values that would change the structure of the SPIFFE ID.
fn check_name(claim: &'static str, value: &str) -> Result<(), TokenError> {
    let valid = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if valid {
        Ok(())
    } else {
        Err(TokenError::InvalidClaim {
            claim,
            value: value.to_owned(),
        })
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or(0)
}

/// Returns a random UUID in version 4 format, like Kubernetes object UIDs.
fn random_uid() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> TokenKey {
        TokenKey::from_pem(&TokenKey::generate_pem().unwrap()).unwrap()
    }

    #[test]
    fn minted_token_verifies() {
        let key = key();
        let token = key.mint(&TokenRequest::new("apps", "web")).unwrap();
        let identity = key.verify(&token, DEFAULT_AUDIENCE).unwrap();
        assert_eq!(identity.namespace, "apps");
        assert_eq!(identity.service_account, "web");
        assert_eq!(
            identity.spiffe_id("cluster.local"),
            "spiffe://cluster.local/ns/apps/sa/web"
        );
    }

    #[test]
    fn header_and_claims_are_kubernetes_shaped() {
        let key = key();
        let token = key.mint(&TokenRequest::new("apps", "web")).unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header["alg"], "ES256");
        assert_eq!(header["kid"], key.kid());
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], serde_json::json!(["istio-ca"]));
        assert_eq!(claims["iss"], DEFAULT_ISSUER);
        assert_eq!(claims["sub"], "system:serviceaccount:apps:web");
        assert_eq!(claims["kubernetes.io"]["namespace"], "apps");
        assert_eq!(claims["kubernetes.io"]["serviceaccount"]["name"], "web");
        assert_eq!(claims["kubernetes.io"]["pod"]["name"], "web-0");
        assert_eq!(
            claims["kubernetes.io"]["pod"]["uid"]
                .as_str()
                .unwrap()
                .len(),
            36
        );
        assert!(claims["exp"].as_u64().unwrap() > claims["iat"].as_u64().unwrap());
    }

    #[test]
    fn expired_token_rejected() {
        let key = key();
        let mut request = TokenRequest::new("apps", "web");
        request.expired = true;
        let token = key.mint(&request).unwrap();
        let error = key.verify(&token, DEFAULT_AUDIENCE).unwrap_err();
        assert!(error.to_string().contains("expired"), "{error}");
    }

    #[test]
    fn wrong_audience_rejected() {
        let key = key();
        let mut request = TokenRequest::new("apps", "web");
        request.audiences = vec!["kubernetes".to_owned()];
        let token = key.mint(&request).unwrap();
        let error = key.verify(&token, DEFAULT_AUDIENCE).unwrap_err();
        assert!(error.to_string().contains("`istio-ca`"), "{error}");
    }

    #[test]
    fn other_key_rejected() {
        let token = key().mint(&TokenRequest::new("apps", "web")).unwrap();
        let error = key().verify(&token, DEFAULT_AUDIENCE).unwrap_err();
        assert!(error.to_string().contains("signature"), "{error}");
    }

    #[test]
    fn path_characters_rejected() {
        let key = key();
        let token = key.mint(&TokenRequest::new("apps/x", "web")).unwrap();
        let error = key.verify(&token, DEFAULT_AUDIENCE).unwrap_err();
        assert!(matches!(error, TokenError::InvalidClaim { .. }), "{error}");
    }
}
