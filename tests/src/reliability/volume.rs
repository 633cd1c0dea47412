//! The certificate volume of a test workload.

use std::path::Path;
use std::process::Command;

use tempfile::TempDir;

use super::is_root;

/// A certificate directory on its own tmpfs when running as root, as an
/// emptyDir with `medium: Memory` is; otherwise a plain temporary directory.
#[derive(Debug)]
pub struct CertVolume {
    dir: TempDir,
    mounted: bool,
}

impl CertVolume {
    /// Creates the volume; `size` is a tmpfs size such as `4m` or `64k`.
    ///
    /// # Panics
    ///
    /// Panics if the directory cannot be created or, as root, mounted.
    pub fn new(size: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("meshcert-volume-")
            .tempdir()
            .expect("create a temporary directory");
        let mut mounted = false;
        if is_root() {
            let status = Command::new("mount")
                .args(["-t", "tmpfs", "-o"])
                .arg(format!("size={size},mode=0777"))
                .arg("tmpfs")
                .arg(dir.path())
                .status()
                .expect("run mount");
            assert!(status.success(), "mounting a {size} tmpfs failed");
            mounted = true;
        }
        Self { dir, mounted }
    }

    /// Returns the mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Returns whether the volume is a tmpfs of its own.
    pub fn is_tmpfs(&self) -> bool {
        self.mounted
    }
}

impl Drop for CertVolume {
    fn drop(&mut self) {
        if self.mounted {
            let _ = Command::new("umount")
                .arg("--lazy")
                .arg(self.dir.path())
                .status();
        }
    }
}
