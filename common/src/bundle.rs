//! Validation of a certificate chain before anything is published.
//!
//! The same checks run on a CA's answer and on a set read back from disk, so
//! a set is published, reused or reported ready only if it passes them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::identity::SpiffeId;

/// Largest number of certificates accepted in one chain.
pub const MAX_CERTIFICATES: usize = 32;

/// Reasons a chain is rejected. On any of them nothing is published.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    /// The CA returned fewer than two elements (a leaf and a root bundle).
    #[error("CA answer has {0} element(s); expected at least 2: the leaf, then the root bundle")]
    ShortChain(usize),
    /// An element is not PEM certificates.
    #[error("element {index} of the chain is not valid PEM certificate data: {reason}")]
    InvalidPem {
        /// Position in the response, counting from 0.
        index: usize,
        /// What failed.
        reason: String,
    },
    /// A certificate's DER could not be parsed.
    #[error("certificate {index} of the chain cannot be parsed: {reason}")]
    InvalidCertificate {
        /// Position among all certificates, counting from 0.
        index: usize,
        /// Parser message.
        reason: String,
    },
    /// More certificates than [`MAX_CERTIFICATES`].
    #[error("chain has {0} certificates; at most {MAX_CERTIFICATES} are accepted")]
    TooManyCertificates(usize),
    /// No certificate that is not a CA.
    #[error("chain has no leaf certificate: every certificate is a CA")]
    NoLeaf,
    /// The leaf certifies another public key than the one in our CSR.
    #[error("leaf certificate (serial {serial}) is for another public key than the CSR's; the CA signed a different key")]
    LeafKeyMismatch {
        /// Leaf serial in hex.
        serial: String,
    },
    /// The leaf's URI SANs are not exactly our identity.
    #[error(
        "leaf certificate (serial {serial}) has URI SANs {found:?}; expected exactly [{expected}]"
    )]
    SanMismatch {
        /// Leaf serial in hex.
        serial: String,
        /// URI SANs in the leaf.
        found: Vec<String>,
        /// The SPIFFE ID requested.
        expected: String,
    },
    /// No self-signed root in the chain.
    #[error("chain has no self-signed root certificate; the CA must send its root bundle last")]
    NoRoot,
    /// Path validation to the roots failed.
    #[error("chain does not verify to its root bundle: {0}")]
    Untrusted(String),
    /// A certificate of the chain has expired.
    #[error("chain expired at {expired_at}")]
    Expired {
        /// Earliest notAfter, RFC 3339.
        expired_at: String,
    },
    /// A certificate becomes valid further ahead than the allowed clock skew.
    #[error("chain is not valid before {valid_from}, {ahead} from now, beyond --max-clock-skew {max_skew}; check the clocks of this node and of the CA")]
    NotYetValid {
        /// Latest notBefore, RFC 3339.
        valid_from: String,
        /// How far ahead.
        ahead: String,
        /// The configured limit.
        max_skew: String,
    },
}

/// Expectations a chain must match.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The identity the leaf must carry as its only URI SAN.
    pub spiffe_id: &'a SpiffeId,
    /// DER SubjectPublicKeyInfo of our private key.
    pub public_key_spki: &'a [u8],
    /// How far ahead a notBefore may be and still be held rather than rejected.
    pub max_clock_skew: Duration,
}

/// A validated set of certificates, ordered for publishing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSet {
    /// PEM of the leaf then the intermediates of the verified path.
    pub chain_pem: String,
    /// PEM of every self-signed root the chain carried.
    pub root_bundle_pem: String,
    /// Leaf serial number in lowercase hex.
    pub serial: String,
    /// Leaf notBefore.
    pub not_before: SystemTime,
    /// Latest notBefore in the path: the set is usable from then.
    pub valid_from: SystemTime,
    /// Earliest notAfter in the path: the set is unusable from then.
    pub expires_at: SystemTime,
    /// DER of the root the path ends at.
    pub anchor_der: Vec<u8>,
}

impl CertSet {
    /// Returns the lifetime used for scheduling: `expires_at - not_before`.
    pub fn lifetime(&self) -> Duration {
        self.expires_at
            .duration_since(self.not_before)
            .unwrap_or_default()
    }

    /// Returns whether the set is usable at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.valid_from <= now && now < self.expires_at
    }
}

/// Validates a CA response: the elements of `cert_chain`, in any order.
pub fn validate_answer(
    elements: &[String],
    expected: &Expected<'_>,
    now: SystemTime,
) -> Result<CertSet, ValidationError> {
    if elements.len() < 2 {
        return Err(ValidationError::ShortChain(elements.len()));
    }
    let mut ders = Vec::new();
    for (index, element) in elements.iter().enumerate() {
        ders.extend(pem_certificates(element, index)?);
    }
    validate_certificates(ders, expected, now)
}

/// Validates a published set: `cert-chain.pem` then `root-cert.pem`.
pub fn validate_files(
    chain_pem: &str,
    root_bundle_pem: &str,
    expected: &Expected<'_>,
    now: SystemTime,
) -> Result<CertSet, ValidationError> {
    let mut ders = pem_certificates(chain_pem, 0)?;
    ders.extend(pem_certificates(root_bundle_pem, 1)?);
    validate_certificates(ders, expected, now)
}

/// Decodes every certificate block in `pem`; element `index` is named in errors.
pub fn pem_certificates(pem: &str, index: usize) -> Result<Vec<Vec<u8>>, ValidationError> {
    let invalid = |reason: String| ValidationError::InvalidPem { index, reason };
    let blocks = pem::parse_many(pem).map_err(|e| invalid(e.to_string()))?;
    let certificates: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|block| block.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certificates.is_empty() {
        return Err(invalid("no CERTIFICATE block".to_string()));
    }
    Ok(certificates)
}

fn validate_certificates(
    ders: Vec<Vec<u8>>,
    expected: &Expected<'_>,
    now: SystemTime,
) -> Result<CertSet, ValidationError> {
    if ders.len() > MAX_CERTIFICATES {
        return Err(ValidationError::TooManyCertificates(ders.len()));
    }
    let mut parsed = Vec::with_capacity(ders.len());
    for (index, der) in ders.iter().enumerate() {
        let (_, certificate) =
            X509Certificate::from_der(der).map_err(|e| ValidationError::InvalidCertificate {
                index,
                reason: e.to_string(),
            })?;
        parsed.push(certificate);
    }

    let leaf_index = find_leaf(&parsed, expected)?;
    let leaf = &parsed[leaf_index];
    check_san(leaf, expected.spiffe_id)?;

    let is_root = |c: &X509Certificate<'_>| c.is_ca() && c.subject() == c.issuer();
    let roots: Vec<usize> = (0..parsed.len()).filter(|&i| is_root(&parsed[i])).collect();
    if roots.is_empty() {
        return Err(ValidationError::NoRoot);
    }
    let intermediates: Vec<CertificateDer<'_>> = (0..parsed.len())
        .filter(|&i| i != leaf_index && !roots.contains(&i))
        .map(|i| CertificateDer::from(ders[i].as_slice()))
        .collect();

    let window = time_window(&parsed, now, expected.max_clock_skew)?;
    let path = verify_path(
        &ders[leaf_index],
        &roots
            .iter()
            .map(|&i| ders[i].as_slice())
            .collect::<Vec<_>>(),
        &intermediates,
        window.verify_at,
    )?;

    let mut chain_pem = encode_pem(&ders[leaf_index]);
    for intermediate in &path.intermediates {
        chain_pem.push_str(&encode_pem(intermediate));
    }
    let root_bundle_pem: String = roots.iter().map(|&i| encode_pem(&ders[i])).collect();
    Ok(CertSet {
        chain_pem,
        root_bundle_pem,
        serial: leaf.raw_serial_as_string().replace(':', ""),
        not_before: to_system_time(leaf.validity().not_before.timestamp()),
        valid_from: window.valid_from,
        expires_at: window.expires_at,
        anchor_der: path.anchor_der,
    })
}

fn find_leaf(
    parsed: &[X509Certificate<'_>],
    expected: &Expected<'_>,
) -> Result<usize, ValidationError> {
    let leaves: Vec<usize> = (0..parsed.len()).filter(|&i| !parsed[i].is_ca()).collect();
    let Some(&first_leaf) = leaves.first() else {
        return Err(ValidationError::NoLeaf);
    };
    leaves
        .iter()
        .copied()
        .find(|&i| parsed[i].public_key().raw == expected.public_key_spki)
        .ok_or_else(|| ValidationError::LeafKeyMismatch {
            serial: serial_hex(&parsed[first_leaf]),
        })
}

fn check_san(leaf: &X509Certificate<'_>, spiffe_id: &SpiffeId) -> Result<(), ValidationError> {
    let expected = spiffe_id.uri();
    let found: Vec<String> = match leaf.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::URI(uri) => Some((*uri).to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if found.len() == 1 && found[0] == expected {
        return Ok(());
    }
    Err(ValidationError::SanMismatch {
        serial: serial_hex(leaf),
        found,
        expected,
    })
}

struct TimeWindow {
    valid_from: SystemTime,
    expires_at: SystemTime,
    verify_at: SystemTime,
}

/// Checks validity times across all certificates; a notBefore ahead of `now`
/// by at most `max_skew` passes, and the caller holds the set until then.
fn time_window(
    parsed: &[X509Certificate<'_>],
    now: SystemTime,
    max_skew: Duration,
) -> Result<TimeWindow, ValidationError> {
    let valid_from = parsed
        .iter()
        .map(|c| to_system_time(c.validity().not_before.timestamp()))
        .max()
        .unwrap_or(UNIX_EPOCH);
    let expires_at = parsed
        .iter()
        .map(|c| to_system_time(c.validity().not_after.timestamp()))
        .min()
        .unwrap_or(UNIX_EPOCH);

    if expires_at <= now {
        return Err(ValidationError::Expired {
            expired_at: rfc3339(expires_at),
        });
    }
    if let Ok(ahead) = valid_from.duration_since(now) {
        if ahead > max_skew {
            return Err(ValidationError::NotYetValid {
                valid_from: rfc3339(valid_from),
                ahead: humantime::format_duration(Duration::from_secs(ahead.as_secs())).to_string(),
                max_skew: humantime::format_duration(max_skew).to_string(),
            });
        }
    }
    Ok(TimeWindow {
        valid_from,
        expires_at,
        verify_at: valid_from.max(now),
    })
}

/// Signature algorithms accepted in a chain: what istiod, istio-csr and
/// common private CAs sign with.
static SIGNATURE_ALGORITHMS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PKCS1_2048_8192_SHA384,
    webpki::ring::RSA_PKCS1_2048_8192_SHA512,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::ring::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
    webpki::ring::ED25519,
];

struct VerifiedPath {
    intermediates: Vec<Vec<u8>>,
    anchor_der: Vec<u8>,
}

fn verify_path(
    leaf_der: &[u8],
    root_ders: &[&[u8]],
    intermediates: &[CertificateDer<'_>],
    at: SystemTime,
) -> Result<VerifiedPath, ValidationError> {
    let untrusted = |e: webpki::Error| ValidationError::Untrusted(format!("{e:?}"));
    let root_certs: Vec<CertificateDer<'_>> =
        root_ders.iter().map(|d| CertificateDer::from(*d)).collect();
    let mut anchors = Vec::with_capacity(root_certs.len());
    for root in &root_certs {
        anchors.push(webpki::anchor_from_trusted_cert(root).map_err(untrusted)?);
    }
    let leaf_cert = CertificateDer::from(leaf_der);
    let leaf = webpki::EndEntityCert::try_from(&leaf_cert).map_err(untrusted)?;
    let seconds = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let path = leaf
        .verify_for_usage(
            SIGNATURE_ALGORITHMS,
            &anchors,
            intermediates,
            UnixTime::since_unix_epoch(seconds),
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(untrusted)?;

    let intermediates = path
        .intermediate_certificates()
        .map(|c| c.der().to_vec())
        .collect();
    let anchor = path.anchor();
    let anchor_der = root_ders
        .iter()
        .zip(&anchors)
        .find(|(_, a)| {
            a.subject == anchor.subject
                && a.subject_public_key_info == anchor.subject_public_key_info
        })
        .map(|(der, _)| der.to_vec())
        .unwrap_or_default();
    Ok(VerifiedPath {
        intermediates,
        anchor_der,
    })
}

fn encode_pem(der: &[u8]) -> String {
    let block = pem::Pem::new("CERTIFICATE", der.to_vec());
    pem::encode_config(
        &block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

fn serial_hex(certificate: &X509Certificate<'_>) -> String {
    certificate.raw_serial_as_string().replace(':', "")
}

fn to_system_time(unix_seconds: i64) -> SystemTime {
    match u64::try_from(unix_seconds) {
        Ok(seconds) => UNIX_EPOCH + Duration::from_secs(seconds),
        Err(_) => UNIX_EPOCH,
    }
}

/// Formats a time as RFC 3339 in UTC, to the second.
pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Returns whether `anchor_der` is one of the roots in `ca_root_pem`.
pub fn root_in_bundle(anchor_der: &[u8], ca_root_pem: &str) -> bool {
    pem_certificates(ca_root_pem, 0)
        .map(|roots| roots.iter().any(|root| root == anchor_der))
        .unwrap_or(false)
}
