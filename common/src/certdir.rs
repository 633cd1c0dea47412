//! The published certificate directory, written like the kubelet's atomic writer.
//!
//! ```text
//! <dir>/..2026_12_04_15_05_00.123456789/{key.pem,cert-chain.pem,root-cert.pem}
//! <dir>/..data -> ..2026_12_04_15_05_00.123456789
//! <dir>/key.pem -> ..data/key.pem   (and the same for every other file)
//! ```
//!
//! A publish writes and fsyncs a whole new generation, then renames a
//! temporary symlink over `..data`, which swaps every file in one step. The
//! previous generation stays until the next publish so a reader that
//! resolved `..data` just before the swap can still open its files.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use zeroize::Zeroizing;

/// Name of the symlink that points at the current generation.
pub const DATA_LINK: &str = "..data";
/// Temporary symlink renamed over [`DATA_LINK`].
const DATA_LINK_TMP: &str = "..data_tmp";
/// Name prefix of the write-probe files that earlier builds of
/// [`CertDir::prepare`] created; leftovers are still removed.
const PROBE_PREFIX: &str = "..meshcert_probe_";
/// Private key file name.
pub const KEY_FILE: &str = "key.pem";
/// Leaf-first certificate chain file name.
pub const CHAIN_FILE: &str = "cert-chain.pem";
/// Root bundle file name.
pub const ROOT_FILE: &str = "root-cert.pem";

/// Errors on the certificate directory. On any of them the published set is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum CertDirError {
    /// The directory cannot be created or written.
    #[error("output directory {path} is not writable: {source}; mount a writable volume there (an emptyDir with medium: Memory) or set --out-dir")]
    NotWritable {
        /// The directory.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The path exists but is not a directory.
    #[error("output directory {0} exists and is not a directory; set --out-dir to a directory")]
    NotADirectory(PathBuf),
    /// Writing a new generation failed; the previous set stays published.
    #[error("writing {path} failed: {source}; the previous set stays published")]
    Write {
        /// The file or directory being written.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// Giving a file to `--group` failed.
    #[error("cannot give {path} to group {gid}: {source}; run as a member of that group (the pod's fsGroup) or drop --group")]
    Chown {
        /// The file or directory.
        path: PathBuf,
        /// The requested group.
        gid: u32,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// Nothing is published yet.
    #[error("no set is published in {0}")]
    NotPublished(PathBuf),
    /// A published file could not be read.
    #[error("cannot read published file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// A public path is missing or does not point into `..data`.
    #[error("published path {0} is missing or does not point into ..data")]
    LinkBroken(PathBuf),
}

/// One file of a generation.
#[derive(Debug)]
pub struct OutputFile {
    /// File name inside the directory, such as `key.pem`.
    pub name: String,
    /// Contents; zeroized on drop because key files pass through here.
    pub contents: Zeroizing<Vec<u8>>,
    /// Whether the file contains a private key (mode 0600, or 0640 with a group).
    pub secret: bool,
}

impl OutputFile {
    /// Creates a file that contains a private key.
    pub fn secret(name: &str, contents: &[u8]) -> Self {
        Self {
            name: name.to_string(),
            contents: Zeroizing::new(contents.to_vec()),
            secret: true,
        }
    }

    /// Creates a public file such as a certificate.
    pub fn public(name: &str, contents: &[u8]) -> Self {
        Self {
            name: name.to_string(),
            contents: Zeroizing::new(contents.to_vec()),
            secret: false,
        }
    }
}

/// The three standard files of a published set, read from one generation.
pub struct PublishedFiles {
    /// Name of the generation directory they were read from.
    pub generation: String,
    /// `key.pem`, zeroized on drop.
    pub key_pem: Zeroizing<String>,
    /// `cert-chain.pem`.
    pub chain_pem: String,
    /// `root-cert.pem`.
    pub root_pem: String,
}

impl std::fmt::Debug for PublishedFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishedFiles")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

/// A certificate directory and the group its files are given to.
#[derive(Debug, Clone)]
pub struct CertDir {
    dir: PathBuf,
    group: Option<u32>,
}

impl CertDir {
    /// Describes the directory `dir`; nothing is touched until [`CertDir::prepare`] or a publish.
    pub fn new(dir: &Path, group: Option<u32>) -> Self {
        Self {
            dir: dir.to_path_buf(),
            group,
        }
    }

    /// Returns the directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory if missing, checks that it is writable, and
    /// removes stray generations left by an interrupted publish.
    ///
    /// The directory's own mode is left alone: on Kubernetes the kubelet owns it.
    pub fn prepare(&self) -> Result<(), CertDirError> {
        let not_writable = |source| CertDirError::NotWritable {
            path: self.dir.clone(),
            source,
        };
        match fs::metadata(&self.dir) {
            Ok(meta) if !meta.is_dir() => {
                return Err(CertDirError::NotADirectory(self.dir.clone()))
            }
            Ok(_) => {}
            Err(_) => fs::create_dir_all(&self.dir).map_err(not_writable)?,
        }
        // access(2) checks write permission, read-only mounts included,
        // without creating a file that would wake the app's directory watcher.
        let wanted = nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK;
        nix::unistd::access(&self.dir, wanted)
            .map_err(|errno| not_writable(std::io::Error::from(errno)))?;
        let _lock = self.lock()?;
        self.remove_stale(None);
        Ok(())
    }

    /// Publishes `files` as a new generation and swaps it in atomically.
    ///
    /// Returns the new generation's name. On error the previous set stays
    /// published and the partial generation is removed.
    pub fn publish(&self, files: &[OutputFile]) -> Result<String, CertDirError> {
        let _lock = self.lock()?;
        let previous = self.current_generation();
        let (generation, generation_dir) = self.create_generation()?;

        if let Err(error) = self.write_generation(&generation_dir, files) {
            let _ = fs::remove_dir_all(&generation_dir);
            return Err(error);
        }
        if let Err(error) = self.swap_data_link(&generation) {
            let _ = fs::remove_dir_all(&generation_dir);
            return Err(error);
        }
        for file in files {
            self.ensure_public_link(&file.name)?;
        }
        sync_dir(&self.dir)?;

        self.remove_stale(previous.as_deref());
        Ok(generation)
    }

    /// Returns the generation `..data` points at, if any.
    pub fn current_generation(&self) -> Option<String> {
        let target = fs::read_link(self.dir.join(DATA_LINK)).ok()?;
        Some(target.to_str()?.to_string())
    }

    /// Reads the three standard files from the generation `..data` points at,
    /// after checking that each public path links into `..data`.
    pub fn read(&self) -> Result<PublishedFiles, CertDirError> {
        let Some(generation) = self.current_generation() else {
            return Err(CertDirError::NotPublished(self.dir.clone()));
        };
        for name in [KEY_FILE, CHAIN_FILE, ROOT_FILE] {
            self.check_public_link(name)?;
        }
        let generation_dir = self.dir.join(&generation);
        let read = |name: &str| {
            let path = generation_dir.join(name);
            fs::read_to_string(&path).map_err(|source| CertDirError::Read { path, source })
        };
        Ok(PublishedFiles {
            key_pem: Zeroizing::new(read(KEY_FILE)?),
            chain_pem: read(CHAIN_FILE)?,
            root_pem: read(ROOT_FILE)?,
            generation,
        })
    }

    /// Returns every generation directory name, oldest first.
    pub fn generations(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| is_generation_name(name))
            .collect();
        names.sort();
        names
    }

    /// Takes an exclusive `flock` on the directory itself, so two writers
    /// (a restarted init beside a refresher, or two inits) publish one at a
    /// time and never remove the generation the other has just swapped in.
    fn lock(&self) -> Result<nix::fcntl::Flock<File>, CertDirError> {
        let lock_error = |source| CertDirError::Write {
            path: self.dir.clone(),
            source,
        };
        let handle = File::open(&self.dir).map_err(lock_error)?;
        nix::fcntl::Flock::lock(handle, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| lock_error(std::io::Error::from(errno)))
    }

    fn create_generation(&self) -> Result<(String, PathBuf), CertDirError> {
        let mode = if self.group.is_some() { 0o750 } else { 0o755 };
        loop {
            let generation = generation_name(SystemTime::now());
            let path = self.dir.join(&generation);
            match fs::DirBuilder::new().mode(mode).create(&path) {
                Ok(()) => {
                    if let Err(error) = self.set_owner_and_mode(&path, mode) {
                        let _ = fs::remove_dir_all(&path);
                        return Err(error);
                    }
                    return Ok((generation, path));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(CertDirError::Write { path, source }),
            }
        }
    }

    fn write_generation(
        &self,
        generation_dir: &Path,
        files: &[OutputFile],
    ) -> Result<(), CertDirError> {
        for file in files {
            let path = generation_dir.join(&file.name);
            let mode = match (file.secret, self.group.is_some()) {
                (true, false) => 0o600,
                (true, true) => 0o640,
                (false, _) => 0o644,
            };
            let write_error = |source| CertDirError::Write {
                path: path.clone(),
                source,
            };
            let mut handle = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
                .map_err(write_error)?;
            handle.write_all(&file.contents).map_err(write_error)?;
            self.set_owner_and_mode(&path, mode)?;
            handle.sync_all().map_err(write_error)?;
        }
        sync_dir(generation_dir)
    }

    /// Applies the group and an explicit mode, so the umask cannot widen or narrow it.
    fn set_owner_and_mode(&self, path: &Path, mode: u32) -> Result<(), CertDirError> {
        if let Some(gid) = self.group {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(|source| {
                CertDirError::Chown {
                    path: path.to_path_buf(),
                    gid,
                    source,
                }
            })?;
        }
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| {
            CertDirError::Write {
                path: path.to_path_buf(),
                source,
            }
        })
    }

    fn swap_data_link(&self, generation: &str) -> Result<(), CertDirError> {
        let tmp = self.dir.join(DATA_LINK_TMP);
        let link_error = |source| CertDirError::Write {
            path: self.dir.join(DATA_LINK),
            source,
        };
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(generation, &tmp).map_err(link_error)?;
        fs::rename(&tmp, self.dir.join(DATA_LINK)).map_err(|error| {
            let _ = fs::remove_file(&tmp);
            link_error(error)
        })
    }

    fn ensure_public_link(&self, name: &str) -> Result<(), CertDirError> {
        if self.check_public_link(name).is_ok() {
            return Ok(());
        }
        let target = Path::new(DATA_LINK).join(name);
        let tmp = self.dir.join(format!("..{name}_tmp"));
        let link_error = |source| CertDirError::Write {
            path: self.dir.join(name),
            source,
        };
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).map_err(link_error)?;
        fs::rename(&tmp, self.dir.join(name)).map_err(link_error)
    }

    fn check_public_link(&self, name: &str) -> Result<(), CertDirError> {
        let path = self.dir.join(name);
        match fs::read_link(&path) {
            Ok(target) if target == Path::new(DATA_LINK).join(name) => Ok(()),
            _ => Err(CertDirError::LinkBroken(path)),
        }
    }

    /// Removes generations other than the current one and `previous`, plus
    /// leftover temporary links and write probes. With `previous` unknown
    /// (at start-up) the newest generation older than the current one is kept.
    fn remove_stale(&self, previous: Option<&str>) {
        let current = self.current_generation();
        let generations = self.generations();
        let keep_previous = match previous {
            Some(previous) => Some(previous.to_string()),
            None => current.as_ref().and_then(|current| {
                generations
                    .iter()
                    .rfind(|name| name.as_str() < current.as_str())
                    .cloned()
            }),
        };
        for name in generations {
            if Some(&name) == current.as_ref() || Some(&name) == keep_previous.as_ref() {
                continue;
            }
            if let Err(error) = fs::remove_dir_all(self.dir.join(&name)) {
                tracing::warn!(generation = %name, dir = ?self.dir, error = %error, "removing an old generation failed");
            }
        }
        self.remove_leftover_files();
    }

    /// Removes the temporary links and write probes that a process killed
    /// between creating and renaming or removing them leaves behind.
    fn remove_leftover_files(&self) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let is_temporary_link = name.starts_with("..") && name.ends_with("_tmp");
            let is_probe = name.starts_with(PROBE_PREFIX);
            let is_file = entry.file_type().is_ok_and(|kind| !kind.is_dir());
            if (is_temporary_link || is_probe) && is_file {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

/// Returns whether `name` has the shape of a generation directory name.
pub fn is_generation_name(name: &str) -> bool {
    name.starts_with("..")
        && name.len() > 2
        && name.as_bytes()[2].is_ascii_digit()
        && name[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// Formats `..YYYY_MM_DD_HH_MM_SS.NNNNNNNNN` in UTC, which sorts by time.
fn generation_name(now: SystemTime) -> String {
    let stamp = humantime::format_rfc3339_nanos(now).to_string();
    let stamp: String = stamp
        .trim_end_matches('Z')
        .chars()
        .map(|c| if matches!(c, '-' | 'T' | ':') { '_' } else { c })
        .collect();
    format!("..{stamp}")
}

fn sync_dir(dir: &Path) -> Result<(), CertDirError> {
    let sync_error = |source| CertDirError::Write {
        path: dir.to_path_buf(),
        source,
    };
    File::open(dir)
        .map_err(sync_error)?
        .sync_all()
        .map_err(sync_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepare_removes_leftover_temporary_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = CertDir::new(&root.path().join("certs"), None);
        dir.prepare().unwrap();
        dir.publish(&[OutputFile::public(CHAIN_FILE, b"chain")])
            .unwrap();

        // What a process killed inside publish or prepare leaves behind.
        let leftovers = [DATA_LINK_TMP, "..cert-chain.pem_tmp", "..key.pem_tmp"];
        for name in leftovers {
            std::os::unix::fs::symlink("..data/cert-chain.pem", dir.path().join(name)).unwrap();
        }
        let probe = dir.path().join(format!("{PROBE_PREFIX}4242"));
        File::create(&probe).unwrap();

        dir.prepare().unwrap();
        for name in leftovers {
            let path = dir.path().join(name);
            assert!(fs::symlink_metadata(&path).is_err(), "{name} is left");
        }
        assert!(!probe.exists(), "the write probe is left");
        let public = fs::read_link(dir.path().join(CHAIN_FILE));
        assert!(public.is_ok(), "the public link is gone");
    }
}
