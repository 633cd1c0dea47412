//! Checks on workload CSRs, modelled on cert-manager istio-csr: a
//! self-signed PKCS#10 request with an empty subject and exactly one SAN,
//! a URI equal to the caller's SPIFFE ID.

use rcgen::SubjectPublicKeyInfo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateSigningRequestDer;
use thiserror::Error;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::cri_attributes::ParsedCriAttribute;
use x509_parser::extensions::{GeneralName, ParsedExtension, X509Extension};
use x509_parser::oid_registry::{
    OID_PKCS9_EXTENSION_REQUEST, OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE,
    OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

/// Minimum RSA modulus size accepted in a CSR, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// A CSR that passed every check.
#[derive(Debug, Clone)]
pub struct CheckedCsr {
    /// The requested public key.
    pub public_key: SubjectPublicKeyInfo,
    /// The requested URI SAN, equal to the caller's SPIFFE ID.
    pub spiffe_id: String,
}

/// A rejected CSR.
#[derive(Debug, Error)]
pub enum CsrError {
    /// The text is not a PEM `CERTIFICATE REQUEST` block.
    #[error("CSR is not a PEM `CERTIFICATE REQUEST` block: {reason}")]
    Pem {
        /// The PEM parser's message.
        reason: String,
    },
    /// The DER content is not a PKCS#10 request.
    #[error("CSR is not a valid PKCS#10 request: {reason}")]
    Der {
        /// The DER parser's message.
        reason: String,
    },
    /// The self-signature does not verify.
    #[error("CSR signature does not verify with the CSR's own public key: {reason}")]
    Signature {
        /// The verifier's message.
        reason: String,
    },
    /// The public key type is not one the CA signs for.
    #[error("CSR public key is not supported: {reason}; use ECDSA P-256/P-384 or RSA of at least {MIN_RSA_BITS} bits")]
    PublicKey {
        /// What is wrong with the key.
        reason: String,
    },
    /// The subject is not empty.
    #[error("CSR subject must be empty but is `{subject}`; put the identity in a URI SAN only")]
    Subject {
        /// The subject as text.
        subject: String,
    },
    /// A SAN of a type other than URI.
    #[error("CSR contains a {kind} SAN `{value}`; only one URI SAN is allowed")]
    NonUriSan {
        /// SAN type, such as `DNS`.
        kind: &'static str,
        /// The SAN value as text.
        value: String,
    },
    /// An extension other than SAN, key usage and extended key usage.
    #[error("CSR requests the unsupported extension {oid}; only subjectAltName, keyUsage and extKeyUsage are allowed")]
    Extension {
        /// Dotted OID of the extension.
        oid: String,
    },
    /// A request attribute other than the extension request.
    #[error("CSR contains the unsupported attribute {oid}; only the extension request attribute is allowed")]
    Attribute {
        /// Dotted OID of the attribute.
        oid: String,
    },
    /// An extension that cannot be decoded or appears twice.
    #[error("CSR extension {oid} is invalid: {reason}")]
    InvalidExtension {
        /// Dotted OID of the extension.
        oid: String,
        /// What is wrong.
        reason: String,
    },
    /// The URI SANs are not exactly the caller's identity.
    #[error("CSR requests identity {requested:?} but the token allows only `{allowed}`; request exactly one URI SAN `{allowed}`")]
    IdentityMismatch {
        /// All URI SANs in the CSR.
        requested: Vec<String>,
        /// The caller's SPIFFE ID.
        allowed: String,
    },
}

impl CsrError {
    /// Returns the gRPC status code for this rejection:
    /// `PERMISSION_DENIED` for an identity mismatch, otherwise
    /// `INVALID_ARGUMENT`.
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::IdentityMismatch { .. } => tonic::Code::PermissionDenied,
            _ => tonic::Code::InvalidArgument,
        }
    }
}

/// Parses `pem` and checks it against the caller's `allowed_identity`.
pub fn check_csr(pem: &str, allowed_identity: &str) -> Result<CheckedCsr, CsrError> {
    let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes()).map_err(|error| {
        CsrError::Pem {
            reason: error.to_string(),
        }
    })?;
    let (rest, csr) =
        X509CertificationRequest::from_der(der.as_ref()).map_err(|error| CsrError::Der {
            reason: error.to_string(),
        })?;
    if !rest.is_empty() {
        return Err(CsrError::Der {
            reason: format!("{} trailing bytes after the request", rest.len()),
        });
    }
    csr.verify_signature()
        .map_err(|error| CsrError::Signature {
            reason: error.to_string(),
        })?;

    let public_key = check_public_key(&csr)?;

    let info = &csr.certification_request_info;
    if info.subject.iter_attributes().next().is_some() {
        return Err(CsrError::Subject {
            subject: info.subject.to_string(),
        });
    }

    let extensions = requested_extensions(&csr)?;
    let mut uris = Vec::new();
    let mut seen_san = false;
    for extension in extensions {
        let oid = extension.oid.clone();
        if oid == OID_X509_EXT_KEY_USAGE || oid == OID_X509_EXT_EXTENDED_KEY_USAGE {
            continue;
        }
        if oid != OID_X509_EXT_SUBJECT_ALT_NAME {
            return Err(CsrError::Extension {
                oid: oid.to_id_string(),
            });
        }
        if seen_san {
            return Err(CsrError::InvalidExtension {
                oid: oid.to_id_string(),
                reason: "subjectAltName appears more than once".to_owned(),
            });
        }
        seen_san = true;
        let ParsedExtension::SubjectAlternativeName(san) = extension.parsed_extension() else {
            return Err(CsrError::InvalidExtension {
                oid: oid.to_id_string(),
                reason: "subjectAltName could not be decoded".to_owned(),
            });
        };
        for name in &san.general_names {
            match name {
                GeneralName::URI(uri) => uris.push((*uri).to_owned()),
                other => return Err(non_uri_san(other)),
            }
        }
    }

    if uris.len() != 1 || uris[0] != allowed_identity {
        return Err(CsrError::IdentityMismatch {
            requested: uris,
            allowed: allowed_identity.to_owned(),
        });
    }
    Ok(CheckedCsr {
        public_key,
        spiffe_id: uris.remove(0),
    })
}

/// Returns the extensions of the extension request attribute, rejecting any
/// other attribute.
fn requested_extensions<'a>(
    csr: &'a X509CertificationRequest<'a>,
) -> Result<Vec<&'a X509Extension<'a>>, CsrError> {
    let mut extensions = Vec::new();
    let mut seen_request = false;
    for attribute in csr.certification_request_info.iter_attributes() {
        if attribute.oid != OID_PKCS9_EXTENSION_REQUEST {
            return Err(CsrError::Attribute {
                oid: attribute.oid.to_id_string(),
            });
        }
        let ParsedCriAttribute::ExtensionRequest(request) = attribute.parsed_attribute() else {
            return Err(CsrError::InvalidExtension {
                oid: attribute.oid.to_id_string(),
                reason: "the extension request could not be decoded".to_owned(),
            });
        };
        if seen_request {
            return Err(CsrError::InvalidExtension {
                oid: attribute.oid.to_id_string(),
                reason: "the extension request appears more than once".to_owned(),
            });
        }
        seen_request = true;
        extensions.extend(request.extensions.iter());
    }
    Ok(extensions)
}

/// Converts the CSR's SubjectPublicKeyInfo for rcgen, which identifies the
/// key type by the key's own algorithm identifier. Deriving it from the CSR
/// signature algorithm instead would mislabel, for example, a P-384 key in a
/// request signed with ECDSA-SHA256.
fn check_public_key(csr: &X509CertificationRequest<'_>) -> Result<SubjectPublicKeyInfo, CsrError> {
    let spki = &csr.certification_request_info.subject_pki;
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) if rsa.key_size() < MIN_RSA_BITS => {
            return Err(CsrError::PublicKey {
                reason: format!("RSA key of {} bits", rsa.key_size()),
            });
        }
        Ok(PublicKey::RSA(_) | PublicKey::EC(_)) => {}
        Ok(_) | Err(_) => {
            return Err(CsrError::PublicKey {
                reason: format!("key algorithm {}", spki.algorithm.algorithm.to_id_string()),
            });
        }
    }
    SubjectPublicKeyInfo::from_der(spki.raw).map_err(|error| CsrError::PublicKey {
        reason: error.to_string(),
    })
}

fn non_uri_san(name: &GeneralName<'_>) -> CsrError {
    let (kind, value) = match name {
        GeneralName::DNSName(value) => ("DNS", (*value).to_owned()),
        GeneralName::RFC822Name(value) => ("email", (*value).to_owned()),
        GeneralName::IPAddress(bytes) => ("IP address", format!("{bytes:02x?}")),
        other => ("non-URI", other.to_string()),
    };
    CsrError::NonUriSan { kind, value }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

    const IDENTITY: &str = "spiffe://cluster.local/ns/apps/sa/web";

    fn csr_with(configure: impl FnOnce(&mut CertificateParams)) -> String {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(IDENTITY.try_into().unwrap())];
        configure(&mut params);
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn valid_csr_accepted() {
        let checked = check_csr(&csr_with(|_| {}), IDENTITY).unwrap();
        assert_eq!(checked.spiffe_id, IDENTITY);
    }

    #[test]
    fn common_name_rejected() {
        let pem = csr_with(|params| {
            params.distinguished_name.push(DnType::CommonName, "web");
        });
        let error = check_csr(&pem, IDENTITY).unwrap_err();
        assert!(matches!(error, CsrError::Subject { .. }), "{error}");
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn dns_san_rejected() {
        let pem = csr_with(|params| {
            params
                .subject_alt_names
                .push(SanType::DnsName("web.apps.svc".try_into().unwrap()));
        });
        let error = check_csr(&pem, IDENTITY).unwrap_err();
        assert!(error.to_string().contains("web.apps.svc"), "{error}");
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn basic_constraints_rejected() {
        let pem = csr_with(|params| {
            params.is_ca = rcgen::IsCa::ExplicitNoCa;
        });
        let error = check_csr(&pem, IDENTITY).unwrap_err();
        assert!(error.to_string().contains("2.5.29.19"), "{error}");
    }

    #[test]
    fn other_identity_denied() {
        let pem = csr_with(|params| {
            params.subject_alt_names = vec![SanType::URI(
                "spiffe://cluster.local/ns/apps/sa/admin"
                    .try_into()
                    .unwrap(),
            )];
        });
        let error = check_csr(&pem, IDENTITY).unwrap_err();
        assert_eq!(error.code(), tonic::Code::PermissionDenied);
        let message = error.to_string();
        assert!(message.contains("sa/admin"), "{message}");
        assert!(message.contains(IDENTITY), "{message}");
    }

    #[test]
    fn missing_san_denied() {
        let pem = csr_with(|params| params.subject_alt_names.clear());
        let error = check_csr(&pem, IDENTITY).unwrap_err();
        assert_eq!(error.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn garbage_rejected() {
        let error = check_csr("not a csr", IDENTITY).unwrap_err();
        assert!(matches!(error, CsrError::Pem { .. }), "{error}");
        let error = check_csr(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            IDENTITY,
        )
        .unwrap_err();
        assert!(matches!(error, CsrError::Der { .. }), "{error}");
    }
}
