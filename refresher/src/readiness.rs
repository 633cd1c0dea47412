//! The readiness check behind `GET /ready`: is a complete, valid, unexpired
//! set for our identity published right now?
//!
//! Every check reads the three files from disk, so a deleted or rewritten
//! set changes the result at once. Full validation (key parsing, chain and
//! signature checks) runs only when the files differ from the last set that
//! passed it. Otherwise only the validity window is compared with the clock.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use meshcert_common::bundle::{self, rfc3339, Expected};
use meshcert_common::certdir::{CertDir, PublishedFiles};
use meshcert_common::csr::PrivateKey;
use meshcert_common::identity::SpiffeId;
use zeroize::Zeroizing;

/// A published set that passed full validation, kept to recognise it on the next check.
struct Validated {
    generation: String,
    key_pem: Zeroizing<String>,
    chain_pem: String,
    root_pem: String,
    serial: String,
    valid_from: SystemTime,
    expires_at: SystemTime,
}

impl Validated {
    fn matches(&self, files: &PublishedFiles) -> bool {
        self.generation == files.generation
            && *self.key_pem == *files.key_pem
            && self.chain_pem == files.chain_pem
            && self.root_pem == files.root_pem
    }

    fn check_window(&self, now: SystemTime) -> Result<Ready, String> {
        if now >= self.expires_at {
            return Err(format!(
                "published set (serial {}) expired at {}",
                self.serial,
                rfc3339(self.expires_at)
            ));
        }
        if now < self.valid_from {
            return Err(format!(
                "published set (serial {}) is not valid before {}",
                self.serial,
                rfc3339(self.valid_from)
            ));
        }
        Ok(Ready {
            serial: self.serial.clone(),
            expires_at: self.expires_at,
        })
    }
}

/// A usable published set, as `/ready` reports it.
#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) serial: String,
    pub(crate) expires_at: SystemTime,
}

/// Checks the published set on disk for one identity.
pub(crate) struct Readiness {
    dir: CertDir,
    spiffe_id: SpiffeId,
    last_valid: Mutex<Option<Validated>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("dir", &self.dir)
            .field("spiffe_id", &self.spiffe_id)
            .finish_non_exhaustive()
    }
}

impl Readiness {
    pub(crate) fn new(dir: CertDir, spiffe_id: SpiffeId) -> Self {
        Self {
            dir,
            spiffe_id,
            last_valid: Mutex::new(None),
        }
    }

    /// Returns the published set if it is complete, valid for our identity
    /// and unexpired at `now`, or the reason it is not.
    pub(crate) fn check(&self, now: SystemTime) -> Result<Ready, String> {
        let files = self.dir.read().map_err(|e| e.to_string())?;
        let mut last_valid = self
            .last_valid
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());

        let cached = last_valid.take().filter(|valid| valid.matches(&files));
        let valid = match cached {
            Some(valid) => valid,
            None => self.validate(files, now)?,
        };
        let result = valid.check_window(now);
        *last_valid = Some(valid);
        result
    }

    fn validate(&self, files: PublishedFiles, now: SystemTime) -> Result<Validated, String> {
        let key = PrivateKey::from_pem(&files.key_pem)
            .map_err(|e| format!("published key is invalid: {e}"))?;
        let spki = key.public_key_spki();
        let expected = Expected {
            spiffe_id: &self.spiffe_id,
            public_key_spki: &spki,
            max_clock_skew: Duration::ZERO,
        };
        let set = bundle::validate_files(&files.chain_pem, &files.root_pem, &expected, now)
            .map_err(|e| format!("published certificates are invalid: {e}"))?;
        Ok(Validated {
            generation: files.generation,
            key_pem: files.key_pem,
            chain_pem: files.chain_pem,
            root_pem: files.root_pem,
            serial: set.serial,
            valid_from: set.valid_from,
            expires_at: set.expires_at,
        })
    }
}
