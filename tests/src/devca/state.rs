//! The CA state directory: PEM files created on first use, loaded later,
//! and replaced by `rotate-root`.
//!
//! Every reader takes a shared `flock` on `DIR/.lock` and every writer an
//! exclusive one, so several processes may start on one empty directory at
//! once. Files are also replaced by rename, so a reader that ignores the
//! lock still never reads a partly written file.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use tracing::info;

use super::pki::{self, CaCert, INTERMEDIATE_LIFETIME};
use super::token::TokenKey;
use crate::atomic_file::write_atomic;

/// Root CA certificate.
pub const ROOT_CERT_FILE: &str = "root-ca.pem";
/// Root CA private key.
pub const ROOT_KEY_FILE: &str = "root-ca-key.pem";
/// Intermediate CA certificate.
pub const INTERMEDIATE_CERT_FILE: &str = "intermediate-ca.pem";
/// Intermediate CA private key.
pub const INTERMEDIATE_KEY_FILE: &str = "intermediate-ca-key.pem";
/// TLS serving certificate.
pub const SERVING_CERT_FILE: &str = "serving.pem";
/// TLS serving private key.
pub const SERVING_KEY_FILE: &str = "serving-key.pem";
/// Token-signing private key.
pub const TOKEN_KEY_FILE: &str = "token-key.pem";
/// Trust bundle for clients: the current root, then the previous root after
/// a rotation.
pub const TRUST_BUNDLE_FILE: &str = "root-cert.pem";
const LOCK_FILE: &str = ".lock";

const ALL_FILES: [&str; 8] = [
    ROOT_CERT_FILE,
    ROOT_KEY_FILE,
    INTERMEDIATE_CERT_FILE,
    INTERMEDIATE_KEY_FILE,
    SERVING_CERT_FILE,
    SERVING_KEY_FILE,
    TOKEN_KEY_FILE,
    TRUST_BUNDLE_FILE,
];

/// The CA certificates and keys loaded from a state directory.
#[derive(Debug)]
pub struct CaMaterial {
    /// The root CA.
    pub root: CaCert,
    /// The intermediate CA that signs leaves and the serving certificate.
    pub intermediate: CaCert,
    /// Content of `root-cert.pem`: one or more PEM root certificates.
    pub trust_bundle_pem: String,
    /// Serving certificate PEM followed by the intermediate PEM.
    pub serving_chain_pem: String,
    /// Serving private key in PKCS#8 PEM.
    pub serving_key_pem: String,
}

/// Creates the state in `dir` unless it exists already.
///
/// Fails if only some of the files exist, because mixing a new root with an
/// old intermediate would produce chains that do not verify.
pub fn ensure(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)
        .with_context(|| format!("failed to create the state directory {}", dir.display()))?;
    let _lock = lock(dir, FlockArg::LockExclusive)?;
    let missing: Vec<&str> = ALL_FILES
        .iter()
        .copied()
        .filter(|name| !dir.join(name).exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if missing.len() != ALL_FILES.len() {
        bail!(
            "state directory {} is incomplete (missing {}); delete it to create a new CA",
            dir.display(),
            missing.join(", ")
        );
    }

    let root = pki::generate_root()?;
    let intermediate = pki::generate_intermediate(&root, INTERMEDIATE_LIFETIME)?;
    let (serving_pem, serving_key_pem) = pki::generate_serving(&intermediate)?;
    write_pem(dir, TOKEN_KEY_FILE, &TokenKey::generate_pem()?, true)?;
    write_generation(
        dir,
        &root,
        &intermediate,
        &serving_pem,
        &serving_key_pem,
        &root.pem,
    )?;
    info!(state_dir = %dir.display(), "created a new CA state");
    Ok(())
}

/// Loads the CA material from `dir`, which [`ensure`] must have created.
pub fn load_ca(dir: &Path) -> Result<CaMaterial> {
    let _lock = lock(dir, FlockArg::LockShared)?;
    let root = load_ca_cert(dir, ROOT_CERT_FILE, ROOT_KEY_FILE)?;
    let intermediate = load_ca_cert(dir, INTERMEDIATE_CERT_FILE, INTERMEDIATE_KEY_FILE)?;
    let serving_pem = read(dir, SERVING_CERT_FILE)?;
    let serving_key_pem = read(dir, SERVING_KEY_FILE)?;
    let trust_bundle_pem = read(dir, TRUST_BUNDLE_FILE)?;
    let serving_chain_pem = format!("{serving_pem}{}", intermediate.pem);
    Ok(CaMaterial {
        root,
        intermediate,
        trust_bundle_pem,
        serving_chain_pem,
        serving_key_pem,
    })
}

/// Loads the token-signing key from `dir`, which [`ensure`] must have
/// created.
pub fn load_token_key(dir: &Path) -> Result<TokenKey> {
    let _lock = lock(dir, FlockArg::LockShared)?;
    let pem = read(dir, TOKEN_KEY_FILE)?;
    TokenKey::from_pem(&pem)
        .with_context(|| format!("invalid key in {}", dir.join(TOKEN_KEY_FILE).display()))
}

/// Replaces the root, intermediate and serving certificate in `dir` with new
/// ones and writes `root-cert.pem` with the new root first and the previous
/// root second. The token key is kept. Running servers switch to the new CA
/// when they receive SIGHUP.
pub fn rotate_root(dir: &Path) -> Result<()> {
    ensure(dir)?;
    let _lock = lock(dir, FlockArg::LockExclusive)?;
    let old_root_pem = read(dir, ROOT_CERT_FILE)?;
    let root = pki::generate_root()?;
    let intermediate = pki::generate_intermediate(&root, INTERMEDIATE_LIFETIME)?;
    let (serving_pem, serving_key_pem) = pki::generate_serving(&intermediate)?;
    let bundle = format!("{}{old_root_pem}", root.pem);
    write_generation(
        dir,
        &root,
        &intermediate,
        &serving_pem,
        &serving_key_pem,
        &bundle,
    )?;
    info!(state_dir = %dir.display(), "rotated the root CA; send SIGHUP to running servers");
    Ok(())
}

/// Writes one generation of CA files. The trust bundle goes last, so a
/// reader that ignores the lock and reads the new bundle also reads the
/// new certificates.
fn write_generation(
    dir: &Path,
    root: &CaCert,
    intermediate: &CaCert,
    serving_pem: &str,
    serving_key_pem: &str,
    bundle: &str,
) -> Result<()> {
    write_pem(dir, ROOT_KEY_FILE, &root.issuer.key().serialize_pem(), true)?;
    write_pem(dir, ROOT_CERT_FILE, &root.pem, false)?;
    write_pem(
        dir,
        INTERMEDIATE_KEY_FILE,
        &intermediate.issuer.key().serialize_pem(),
        true,
    )?;
    write_pem(dir, INTERMEDIATE_CERT_FILE, &intermediate.pem, false)?;
    write_pem(dir, SERVING_KEY_FILE, serving_key_pem, true)?;
    write_pem(dir, SERVING_CERT_FILE, serving_pem, false)?;
    write_pem(dir, TRUST_BUNDLE_FILE, bundle, false)
}

fn load_ca_cert(dir: &Path, cert_file: &str, key_file: &str) -> Result<CaCert> {
    let pem = read(dir, cert_file)?;
    let key_pem = read(dir, key_file)?;
    CaCert::from_pem(pem, &key_pem).with_context(|| {
        format!(
            "invalid CA in {} and {}",
            dir.join(cert_file).display(),
            dir.join(key_file).display()
        )
    })
}

fn write_pem(dir: &Path, name: &str, pem: &str, secret: bool) -> Result<()> {
    let mode = if secret { 0o600 } else { 0o644 };
    write_atomic(&dir.join(name), pem.as_bytes(), mode)
}

fn read(dir: &Path, name: &str) -> Result<String> {
    let path: PathBuf = dir.join(name);
    fs::read_to_string(&path).with_context(|| {
        format!(
            "failed to read {}; run `meshcert-devca serve` or `token` once to create the state",
            path.display()
        )
    })
}

fn lock(dir: &Path, mode: FlockArg) -> Result<Flock<File>> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("failed to open the lock file {}", path.display()))?;
    Flock::lock(file, mode)
        .map_err(|(_, errno)| anyhow::anyhow!("failed to lock {}: {errno}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_ensure_creates_one_root() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    ensure(&path).unwrap();
                    load_ca(&path).unwrap().root.pem
                })
            })
            .collect();
        let roots: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(roots.windows(2).all(|pair| pair[0] == pair[1]));
        let bundle = fs::read_to_string(path.join(TRUST_BUNDLE_FILE)).unwrap();
        assert_eq!(bundle, roots[0]);
    }

    #[test]
    fn rotation_keeps_token_key_and_old_root() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path()).unwrap();
        let before = load_ca(dir.path()).unwrap();
        let kid_before = load_token_key(dir.path()).unwrap().kid().to_owned();

        rotate_root(dir.path()).unwrap();
        let after = load_ca(dir.path()).unwrap();
        assert_ne!(after.root.pem, before.root.pem);
        assert_ne!(after.intermediate.pem, before.intermediate.pem);
        assert_eq!(
            after.trust_bundle_pem,
            format!("{}{}", after.root.pem, before.root.pem)
        );
        assert_eq!(load_token_key(dir.path()).unwrap().kid(), kid_before);
    }

    #[test]
    fn incomplete_state_rejected() {
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path()).unwrap();
        fs::remove_file(dir.path().join(SERVING_KEY_FILE)).unwrap();
        let error = ensure(dir.path()).unwrap_err().to_string();
        assert!(error.contains(SERVING_KEY_FILE), "{error}");
        assert!(error.contains("delete it"), "{error}");
    }

    #[test]
    fn key_files_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        ensure(dir.path()).unwrap();
        for name in [
            ROOT_KEY_FILE,
            INTERMEDIATE_KEY_FILE,
            SERVING_KEY_FILE,
            TOKEN_KEY_FILE,
        ] {
            let mode = fs::metadata(dir.path().join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
    }
}
