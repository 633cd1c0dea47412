//! One issuance: token, key, CSR, CA request, validation. Both binaries
//! call [`Issuer::issue`]; they differ only in how they retry and when.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use crate::bundle::{self, CertSet, Expected, ValidationError};
use crate::ca::{self, CaConfig, CaError, CertificateRequest};
use crate::certdir::{self, CertDir, CertDirError, OutputFile};
use crate::csr::{CsrError, KeyType, PrivateKey};
use crate::identity::{IdentityError, SpiffeId, Token};
use crate::settings::CaSettings;

/// Errors of one issuance attempt.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The token is missing, empty, malformed or expired.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Key or CSR generation failed.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The CA could not be reached or rejected the request.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The CA's response failed validation, so nothing was published.
    #[error("CA {addr} answered with an invalid certificate chain: {source}")]
    Invalid {
        /// CA address.
        addr: String,
        /// The validation failure.
        source: ValidationError,
    },
}

impl IssueError {
    /// Returns whether another attempt may succeed without a change of settings.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Ca(error) => error.is_transient(),
            _ => false,
        }
    }

    /// Returns a short reason label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Identity(IdentityError::TokenExpired { .. }) => "token_expired",
            Self::Identity(_) => "token",
            Self::Csr(_) => "key_generation",
            Self::Ca(error) => error.reason(),
            Self::Invalid { .. } => "invalid_answer",
        }
    }
}

/// A new key with its validated certificate set.
#[derive(Debug)]
pub struct Issued {
    /// The private key the CSR was made with.
    pub key: PrivateKey,
    /// The validated chain and roots.
    pub set: CertSet,
    /// Time spent waiting for the CA, connection included.
    pub ca_latency: Duration,
}

/// Everything needed to request and validate certificates for one identity.
#[derive(Debug, Clone)]
pub struct Issuer {
    /// CA connection settings.
    pub ca: CaConfig,
    /// Root file the CA config was loaded from, watched by the refresher.
    pub ca_root_path: PathBuf,
    /// The identity requested.
    pub spiffe_id: SpiffeId,
    /// Token file, re-read on every request.
    pub token_file: PathBuf,
    /// Key algorithm of new keys.
    pub key_type: KeyType,
    /// Requested lifetime.
    pub ttl: Duration,
    /// Allowed notBefore lead.
    pub max_clock_skew: Duration,
}

impl Issuer {
    /// Builds an issuer from settings: checks the CA address and loads the root.
    pub fn from_settings(settings: &CaSettings, spiffe_id: SpiffeId) -> Result<Self, CaError> {
        ca::parse_ca_addr(&settings.ca_addr)?;
        let root_pem = ca::load_ca_root(&settings.ca_root)?;
        Ok(Self {
            ca: CaConfig {
                addr: settings.ca_addr.clone(),
                server_name: settings.server_name(),
                root_pem,
                cluster_id: settings.cluster_id.clone(),
                request_timeout: settings.request_timeout,
                connect_timeout: settings.connect_timeout,
            },
            ca_root_path: settings.ca_root.clone(),
            spiffe_id,
            token_file: settings.token_file.clone(),
            key_type: settings.key_type,
            ttl: settings.ttl,
            max_clock_skew: settings.max_clock_skew,
        })
    }

    /// Reloads the CA root file, after it changed on disk.
    pub fn reload_root(&mut self) -> Result<(), CaError> {
        self.ca.root_pem = ca::load_ca_root(&self.ca_root_path)?;
        Ok(())
    }

    /// Runs one issuance with a fresh key. Nothing is written to disk.
    ///
    /// A returned set may have `valid_from` ahead of now by up to the clock
    /// skew limit; the caller holds it until then.
    pub async fn issue(&self) -> Result<Issued, IssueError> {
        let attempt_started = Instant::now();
        let token = Token::read(&self.token_file)?;
        token.check_not_expired(SystemTime::now())?;

        let key = PrivateKey::generate(self.key_type)?;
        let csr_pem = key.csr_pem(&self.spiffe_id)?;
        tracing::debug!(
            key_type = %self.key_type,
            elapsed_us = elapsed_us(attempt_started),
            "read the token and generated the key and the CSR"
        );
        let request = CertificateRequest {
            csr_pem: &csr_pem,
            ttl: self.ttl,
            token: &token,
            spiffe_id: &self.spiffe_id,
        };

        let started = Instant::now();
        let answer = ca::create_certificate(&self.ca, &request).await;
        let ca_latency = started.elapsed();
        let elements = answer?;
        tracing::debug!(
            ca_latency_us = elapsed_us(started),
            "received the CA response"
        );

        let spki = key.public_key_spki();
        let set = bundle::validate_answer(&elements, &self.expected(&spki), SystemTime::now())
            .map_err(|source| IssueError::Invalid {
                addr: self.ca.addr.clone(),
                source,
            })?;
        tracing::debug!(
            elapsed_us = elapsed_us(attempt_started),
            serial = %set.serial,
            "validated the answer"
        );
        if !bundle::root_in_bundle(&set.anchor_der, &self.ca.root_pem) {
            tracing::warn!(
                ca_root = ?self.ca_root_path,
                serial = %set.serial,
                "the chain's root is not among the roots in the CA root file; the CA's root may be rotating"
            );
        }
        Ok(Issued {
            key,
            set,
            ca_latency,
        })
    }

    /// Returns what a chain for `public_key_spki` must match.
    pub fn expected<'a>(&'a self, public_key_spki: &'a [u8]) -> Expected<'a> {
        Expected {
            spiffe_id: &self.spiffe_id,
            public_key_spki,
            max_clock_skew: self.max_clock_skew,
        }
    }
}

/// Returns the microseconds since `start`, for debug timings.
fn elapsed_us(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Reasons a published set cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PublishedError {
    /// Files are missing or unreadable.
    #[error(transparent)]
    Files(#[from] CertDirError),
    /// `key.pem` is not a usable key.
    #[error("published key is invalid: {0}")]
    Key(CsrError),
    /// The certificates do not pass validation.
    #[error("published certificates are invalid: {0}")]
    Invalid(ValidationError),
    /// The set is valid but becomes valid only in the future.
    #[error("published set is not valid before {0}")]
    NotYetValid(String),
}

/// Reads the published set and validates it for `spiffe_id` at `now`.
pub fn read_published(
    dir: &CertDir,
    spiffe_id: &SpiffeId,
    now: SystemTime,
) -> Result<(PrivateKey, CertSet), PublishedError> {
    let files = dir.read()?;
    let key = PrivateKey::from_pem(&files.key_pem).map_err(PublishedError::Key)?;
    let spki = key.public_key_spki();
    let expected = Expected {
        spiffe_id,
        public_key_spki: &spki,
        max_clock_skew: Duration::ZERO,
    };
    let set = bundle::validate_files(&files.chain_pem, &files.root_pem, &expected, now)
        .map_err(PublishedError::Invalid)?;
    Ok((key, set))
}

/// Returns the standard files of a set: `key.pem`, `cert-chain.pem`, `root-cert.pem`.
pub fn standard_files(key: &PrivateKey, set: &CertSet) -> Vec<OutputFile> {
    vec![
        OutputFile::secret(certdir::KEY_FILE, key.pem().as_bytes()),
        OutputFile::public(certdir::CHAIN_FILE, set.chain_pem.as_bytes()),
        OutputFile::public(certdir::ROOT_FILE, set.root_bundle_pem.as_bytes()),
    ]
}
