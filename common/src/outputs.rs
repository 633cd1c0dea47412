//! Optional files written into every generation beside the three PEM files:
//! a PKCS#12 keystore for Java-style readers and a one-file PEM bundle for
//! readers such as HAProxy. Being in the same generation, they swap
//! together with the PEM files.

use std::io::Read;
use std::path::{Path, PathBuf};

use clap::Args;
use p12_keystore::{EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKeyChain};
use zeroize::Zeroizing;

use crate::bundle::{self, CertSet};
use crate::certdir::{OutputFile, CHAIN_FILE, KEY_FILE, ROOT_FILE};
use crate::csr::PrivateKey;
use crate::issue;

/// Largest password file read.
const MAX_PASSWORD_BYTES: u64 = 4096;

/// Alias of the key entry in the keystore.
pub const KEY_ALIAS: &str = "meshcert";

/// Settings for the optional output files.
#[derive(Debug, Clone, Default, Args)]
#[command(
    next_help_heading = "Extra output files (written into the same generation, so they swap together)"
)]
pub struct OutputArgs {
    /// File name of a PKCS#12 keystore with the key, the chain and the roots, such as `keystore.p12`.
    #[arg(long, env = "PKCS12_FILE", value_name = "NAME")]
    pub pkcs12: Option<String>,

    /// File holding the PKCS#12 password (a trailing newline is dropped); read once at start, so the password stays the same across renewals.
    #[arg(long, env = "PKCS12_PASSWORD_FILE", value_name = "PATH")]
    pub pkcs12_password_file: Option<PathBuf>,

    /// Write the PKCS#12 file with an empty password; required instead of --pkcs12-password-file to get one.
    #[arg(
        long,
        env = "PKCS12_EMPTY_PASSWORD",
        conflicts_with = "pkcs12_password_file"
    )]
    pub pkcs12_empty_password: bool,

    /// Encrypt the PKCS#12 file with 3DES and a SHA-1 MAC for old readers (Java 8 before 8u301, OpenSSL 1.0) instead of AES-256 with PBKDF2 and a SHA-256 MAC.
    #[arg(long, env = "PKCS12_LEGACY")]
    pub pkcs12_legacy: bool,

    /// File name of one PEM file with the private key first and then the chain, such as `tls.pem` for HAProxy.
    #[arg(long, env = "BUNDLE_FILE", value_name = "NAME")]
    pub bundle_file: Option<String>,
}

/// Errors loading the output settings or building the files.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// A file name is not a plain name or collides with a standard file.
    #[error("invalid {flag} {name:?}: {reason}")]
    InvalidName {
        /// The flag.
        flag: &'static str,
        /// The value.
        name: String,
        /// The defect found.
        reason: &'static str,
    },
    /// `--pkcs12` was given without a password choice.
    #[error("--pkcs12 needs --pkcs12-password-file PATH, or --pkcs12-empty-password to write it without a password")]
    PasswordMissing,
    /// The password file cannot be read.
    #[error("cannot read --pkcs12-password-file {path}: {reason}")]
    PasswordUnreadable {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The keystore could not be built.
    #[error("building the PKCS#12 file failed: {0}")]
    Pkcs12(String),
}

/// Loaded settings for the extra files, with the password in memory.
#[derive(Default)]
pub struct ExtraOutputs {
    pkcs12: Option<Pkcs12Output>,
    bundle_file: Option<String>,
}

struct Pkcs12Output {
    name: String,
    password: Zeroizing<String>,
    legacy: bool,
}

impl std::fmt::Debug for ExtraOutputs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtraOutputs")
            .field("pkcs12", &self.pkcs12.as_ref().map(|p| &p.name))
            .field("bundle_file", &self.bundle_file)
            .finish()
    }
}

impl ExtraOutputs {
    /// Checks the names and reads the password file.
    pub fn load(args: &OutputArgs) -> Result<Self, OutputError> {
        let mut names = vec![
            KEY_FILE.to_string(),
            CHAIN_FILE.to_string(),
            ROOT_FILE.to_string(),
        ];
        let mut check = |flag, name: &str| {
            check_name(flag, name, &names)?;
            names.push(name.to_string());
            Ok::<_, OutputError>(name.to_string())
        };
        let pkcs12 = match &args.pkcs12 {
            None => None,
            Some(name) => {
                let name = check("--pkcs12", name)?;
                let password = match (&args.pkcs12_password_file, args.pkcs12_empty_password) {
                    (Some(path), _) => read_password(path)?,
                    (None, true) => Zeroizing::new(String::new()),
                    (None, false) => return Err(OutputError::PasswordMissing),
                };
                Some(Pkcs12Output {
                    name,
                    password,
                    legacy: args.pkcs12_legacy,
                })
            }
        };
        let bundle_file = match &args.bundle_file {
            None => None,
            Some(name) => Some(check("--bundle-file", name)?),
        };
        Ok(Self {
            pkcs12,
            bundle_file,
        })
    }

    /// Returns the names of the configured extra files.
    pub fn names(&self) -> Vec<&str> {
        let pkcs12 = self.pkcs12.as_ref().map(|p| p.name.as_str());
        pkcs12
            .into_iter()
            .chain(self.bundle_file.as_deref())
            .collect()
    }

    /// Returns the configured extra files that are missing from `dir`.
    pub fn missing_in(&self, dir: &std::path::Path) -> Vec<&str> {
        self.names()
            .into_iter()
            .filter(|name| !dir.join(name).exists())
            .collect()
    }

    /// Returns the standard files plus the configured extra files for one issuance.
    pub fn files(&self, key: &PrivateKey, set: &CertSet) -> Result<Vec<OutputFile>, OutputError> {
        let mut files = issue::standard_files(key, set);
        if let Some(pkcs12) = &self.pkcs12 {
            let der = build_pkcs12(key, set, &pkcs12.password, pkcs12.legacy)?;
            files.push(OutputFile::secret(&pkcs12.name, &der));
        }
        if let Some(name) = &self.bundle_file {
            let mut text = Zeroizing::new(key.pem().to_string());
            text.push_str(&set.chain_pem);
            files.push(OutputFile::secret(name, text.as_bytes()));
        }
        Ok(files)
    }
}

fn check_name(flag: &'static str, name: &str, taken: &[String]) -> Result<(), OutputError> {
    let invalid = |reason| OutputError::InvalidName {
        flag,
        name: name.to_string(),
        reason,
    };
    if name.is_empty() || name.contains('/') || name.starts_with('.') {
        return Err(invalid("expected a plain file name without '/' that does not start with '.', such as keystore.p12"));
    }
    if taken.iter().any(|t| t == name) {
        return Err(invalid("it is already used by another output file"));
    }
    Ok(())
}

fn read_password(path: &Path) -> Result<Zeroizing<String>, OutputError> {
    let unreadable = |reason: String| OutputError::PasswordUnreadable {
        path: path.to_path_buf(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(|e| unreadable(e.to_string()))?;
    let mut text = Zeroizing::new(String::new());
    file.take(MAX_PASSWORD_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| unreadable(e.to_string()))?;
    if text.len() as u64 > MAX_PASSWORD_BYTES {
        return Err(unreadable(format!(
            "larger than {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(unreadable(
            "the file is empty; use --pkcs12-empty-password for an empty password".to_string(),
        ));
    }
    Ok(Zeroizing::new(trimmed.to_string()))
}

/// Builds a PKCS#12 file: the key with its chain (leaf, intermediates, root)
/// and each root as a trusted certificate entry.
fn build_pkcs12(
    key: &PrivateKey,
    set: &CertSet,
    password: &str,
    legacy: bool,
) -> Result<Vec<u8>, OutputError> {
    let failed = |e: p12_keystore::error::Error| OutputError::Pkcs12(e.to_string());
    let key_der = pem::parse(key.pem()).map_err(|e| OutputError::Pkcs12(e.to_string()))?;
    let key_der = Zeroizing::new(key_der.into_contents());
    let private_key = p12_keystore::PrivateKey::from_der(&key_der).map_err(failed)?;

    let chain_ders = bundle::pem_certificates(&set.chain_pem, 0)
        .map_err(|e| OutputError::Pkcs12(e.to_string()))?;
    let root_ders = bundle::pem_certificates(&set.root_bundle_pem, 1)
        .map_err(|e| OutputError::Pkcs12(e.to_string()))?;
    let mut chain = Vec::new();
    for der in chain_ders.iter().chain(std::iter::once(&set.anchor_der)) {
        chain.push(p12_keystore::Certificate::from_der(der).map_err(failed)?);
    }
    let local_key_id = set.serial.as_bytes().to_vec();

    let mut keystore = KeyStore::new();
    keystore.add_entry(
        KEY_ALIAS,
        KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(local_key_id, private_key, chain)),
    );
    for (index, der) in root_ders.iter().enumerate() {
        let root = p12_keystore::Certificate::from_der(der).map_err(failed)?;
        keystore.add_entry(&format!("root-{index}"), KeyStoreEntry::Certificate(root));
    }

    let (encryption, mac) = if legacy {
        (
            EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc,
            MacAlgorithm::HmacSha1,
        )
    } else {
        (
            EncryptionAlgorithm::PbeWithHmacSha256AndAes256,
            MacAlgorithm::HmacSha256,
        )
    };
    keystore
        .writer(password)
        .encryption_algorithm(encryption)
        .mac_algorithm(mac)
        .write()
        .map_err(failed)
}
