//! Checks of a published certificate set, in process and with openssl.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime};

use meshcert_common::bundle::{self, Expected};
use meshcert_common::certdir::CertDir;
use meshcert_common::csr::PrivateKey;
use meshcert_common::identity::SpiffeId;

use super::workload::{NAMESPACE, SERVICE_ACCOUNT};

/// Checks that `out_dir` publishes a complete set for the test workload:
/// every public link points into `..data`, the key matches the leaf, and
/// the chain verifies to the root bundle and is valid now. Returns the
/// generation.
pub fn check_published_set(out_dir: &Path) -> Result<String, String> {
    let files = CertDir::new(out_dir, None)
        .read()
        .map_err(|e| e.to_string())?;
    let key = PrivateKey::from_pem(&files.key_pem).map_err(|e| e.to_string())?;
    let spki = key.public_key_spki();
    let spiffe_id = SpiffeId::new("cluster.local", NAMESPACE, SERVICE_ACCOUNT).unwrap();
    let expected = Expected {
        spiffe_id: &spiffe_id,
        public_key_spki: &spki,
        max_clock_skew: Duration::ZERO,
    };
    bundle::validate_files(
        &files.chain_pem,
        &files.root_pem,
        &expected,
        SystemTime::now(),
    )
    .map_err(|e| e.to_string())?;
    Ok(files.generation)
}

/// Checks the published set with openssl, independently of meshcert's own
/// code: the public key of `key.pem` equals the leaf's, and
/// `openssl verify` accepts the leaf with the chain's intermediates.
pub fn openssl_check_published_set(out_dir: &Path) -> Result<(), String> {
    let path = |name: &str| out_dir.join(name).to_string_lossy().into_owned();
    let (key, chain, root) = (
        path("key.pem"),
        path("cert-chain.pem"),
        path("root-cert.pem"),
    );
    let key_public = openssl(&["pkey", "-in", &key, "-pubout"])?;
    let leaf_public = openssl(&["x509", "-in", &chain, "-noout", "-pubkey"])?;
    if key_public != leaf_public {
        return Err("key.pem does not match the leaf's public key".to_string());
    }
    let verify = openssl(&["verify", "-CAfile", &root, "-untrusted", &chain, &chain])?;
    if !verify.contains(": OK") {
        return Err(format!("openssl verify: {verify}"));
    }
    Ok(())
}

fn openssl(args: &[&str]) -> Result<String, String> {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .map_err(|e| format!("running openssl failed: {e} (apt-get install openssl)"))?;
    if !output.status.success() {
        return Err(format!(
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Returns every entry under `dir` with its bytes, its target for a
/// symlink, or nothing for a directory (whose name ends in `/`), sorted by
/// path; used to prove a directory is byte-identical.
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut entries = Vec::new();
    collect(dir, "", &mut entries);
    entries.sort();
    entries
}

fn collect(dir: &Path, prefix: &str, entries: &mut Vec<(String, Vec<u8>)>) {
    let Ok(read_dir) = fs::read_dir(dir) else {
        return;
    };
    for entry in read_dir.filter_map(Result::ok) {
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        let Ok(meta) = fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if meta.is_symlink() {
            let target = fs::read_link(entry.path()).unwrap_or_default();
            entries.push((name, target.to_string_lossy().as_bytes().to_vec()));
        } else if meta.is_dir() {
            entries.push((format!("{name}/"), Vec::new()));
            collect(&entry.path(), &format!("{name}/"), entries);
        } else {
            entries.push((name, fs::read(entry.path()).unwrap_or_default()));
        }
    }
}
