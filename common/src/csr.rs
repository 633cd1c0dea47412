//! Private key generation and the certificate signing request sent to the CA.

use std::fmt;

use clap::ValueEnum;
use rcgen::{
    CertificateParams, DistinguishedName, KeyPair, PublicKeyData, SanType, SignatureAlgorithm,
};
use zeroize::Zeroizing;

use crate::identity::SpiffeId;

/// Errors generating a key or a CSR.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    /// Key generation or encoding failed.
    #[error("generating a {key_type} key failed: {reason}")]
    KeyGeneration {
        /// The key type requested.
        key_type: KeyType,
        /// The library's message.
        reason: String,
    },
    /// The SPIFFE ID cannot be put in a URI SAN.
    #[error("SPIFFE ID {spiffe_id} cannot be encoded as a URI SAN: {reason}")]
    InvalidSan {
        /// The identity.
        spiffe_id: String,
        /// The library's message.
        reason: String,
    },
    /// Building or signing the CSR failed.
    #[error("signing the CSR failed: {0}")]
    Signing(String),
    /// A key PEM could not be loaded.
    #[error("invalid private key PEM: {0}")]
    InvalidKey(String),
}

/// Private key algorithms meshcert generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KeyType {
    /// ECDSA on P-256 with SHA-256, as Istio uses by default for ECC.
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    #[value(name = "ecdsa-p384")]
    EcdsaP384,
    /// RSA 2048-bit, PKCS#1 v1.5 with SHA-256.
    #[value(name = "rsa-2048")]
    Rsa2048,
    /// RSA 3072-bit.
    #[value(name = "rsa-3072")]
    Rsa3072,
    /// RSA 4096-bit.
    #[value(name = "rsa-4096")]
    Rsa4096,
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::EcdsaP384 => "ecdsa-p384",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
            Self::Rsa4096 => "rsa-4096",
        };
        f.write_str(name)
    }
}

impl KeyType {
    fn rsa_bits(self) -> Option<usize> {
        match self {
            Self::Rsa2048 => Some(2048),
            Self::Rsa3072 => Some(3072),
            Self::Rsa4096 => Some(4096),
            Self::EcdsaP256 | Self::EcdsaP384 => None,
        }
    }

    fn signature_algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            Self::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            Self::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            Self::Rsa2048 | Self::Rsa3072 | Self::Rsa4096 => &rcgen::PKCS_RSA_SHA256,
        }
    }
}

/// A freshly generated private key.
///
/// The PKCS#8 PEM is zeroized on drop and never printed by `Debug`.
pub struct PrivateKey {
    key_pair: KeyPair,
    pem: Zeroizing<String>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey").finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// Generates a new key of `key_type`.
    ///
    /// RSA keys come from the `rsa` crate because ring cannot generate them.
    pub fn generate(key_type: KeyType) -> Result<Self, CsrError> {
        let failed = |reason: String| CsrError::KeyGeneration { key_type, reason };
        let key_pair = match key_type.rsa_bits() {
            None => KeyPair::generate_for(key_type.signature_algorithm())
                .map_err(|e| failed(e.to_string()))?,
            Some(bits) => {
                use rsa::pkcs8::EncodePrivateKey;
                let mut rng = rsa::rand_core::OsRng;
                let rsa_key =
                    rsa::RsaPrivateKey::new(&mut rng, bits).map_err(|e| failed(e.to_string()))?;
                let der = rsa_key.to_pkcs8_der().map_err(|e| failed(e.to_string()))?;
                let der = rustls_pki_types::PrivatePkcs8KeyDer::from(der.as_bytes());
                KeyPair::from_pkcs8_der_and_sign_algo(&der, key_type.signature_algorithm())
                    .map_err(|e| failed(e.to_string()))?
            }
        };
        let pem = Zeroizing::new(key_pair.serialize_pem());
        Ok(Self { key_pair, pem })
    }

    /// Loads a PKCS#8 PEM key, as written to `key.pem`.
    pub fn from_pem(pem: &str) -> Result<Self, CsrError> {
        let key_pair = KeyPair::from_pem(pem).map_err(|e| CsrError::InvalidKey(e.to_string()))?;
        Ok(Self {
            key_pair,
            pem: Zeroizing::new(pem.to_string()),
        })
    }

    /// Returns the PKCS#8 PEM text.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// Returns the DER SubjectPublicKeyInfo, compared with the leaf's.
    pub fn public_key_spki(&self) -> Vec<u8> {
        self.key_pair.subject_public_key_info()
    }

    /// Builds a PEM CSR with an empty subject and exactly one URI SAN, `spiffe_id`.
    ///
    /// No other extension is added, so CAs that accept only SAN, KeyUsage and
    /// ExtendedKeyUsage (cert-manager istio-csr) take it.
    pub fn csr_pem(&self, spiffe_id: &SpiffeId) -> Result<String, CsrError> {
        let uri = spiffe_id.uri();
        let san =
            rcgen::string::Ia5String::try_from(uri.clone()).map_err(|e| CsrError::InvalidSan {
                spiffe_id: uri.clone(),
                reason: e.to_string(),
            })?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(san)];
        let csr = params
            .serialize_request(&self.key_pair)
            .map_err(|e| CsrError::Signing(e.to_string()))?;
        csr.pem().map_err(|e| CsrError::Signing(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::FromDer;

    fn identity() -> SpiffeId {
        SpiffeId::new("cluster.local", "default", "app").unwrap()
    }

    fn parse_csr(pem: &str) -> Vec<u8> {
        let (_, parsed) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        assert_eq!(parsed.label, "CERTIFICATE REQUEST");
        parsed.contents
    }

    #[test]
    fn csr_has_only_uri_san_and_empty_subject() {
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let der = parse_csr(&key.csr_pem(&identity()).unwrap());
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        csr.verify_signature().unwrap();

        let info = &csr.certification_request_info;
        assert_eq!(info.subject.iter().count(), 0, "subject must be empty");
        assert_eq!(info.subject_pki.raw, key.public_key_spki().as_slice());

        let extensions: Vec<_> = csr.requested_extensions().unwrap().collect();
        assert_eq!(extensions.len(), 1, "only the SAN extension");
        let ParsedExtension::SubjectAlternativeName(san) = extensions[0] else {
            panic!("expected a SAN extension, got {:?}", extensions[0]);
        };
        assert_eq!(
            san.general_names,
            vec![GeneralName::URI("spiffe://cluster.local/ns/default/sa/app")]
        );
    }

    #[test]
    fn key_pem_is_pkcs8() {
        let key = PrivateKey::generate(KeyType::EcdsaP384).unwrap();
        assert!(key.pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        let reloaded = PrivateKey::from_pem(key.pem()).unwrap();
        assert_eq!(reloaded.public_key_spki(), key.public_key_spki());
    }

    #[test]
    fn rsa_key_signs_csr() {
        let key = PrivateKey::generate(KeyType::Rsa2048).unwrap();
        assert!(key.pem().starts_with("-----BEGIN PRIVATE KEY-----"));
        let der = parse_csr(&key.csr_pem(&identity()).unwrap());
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&der).unwrap();
        csr.verify_signature().unwrap();
        let reloaded = PrivateKey::from_pem(key.pem()).unwrap();
        assert_eq!(reloaded.public_key_spki(), key.public_key_spki());
    }

    #[test]
    fn debug_hides_key() {
        let key = PrivateKey::generate(KeyType::EcdsaP256).unwrap();
        let shown = format!("{key:?}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
    }
}
