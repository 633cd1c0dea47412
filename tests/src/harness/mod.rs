//! Helpers for end-to-end tests that run the workspace binaries as real
//! processes.

mod devca_process;

use std::path::PathBuf;

pub use devca_process::{DevCa, DevCaOptions, TokenOptions, START_TIMEOUT, STOP_TIMEOUT};

/// Environment variable that overrides the directory holding the workspace
/// binaries.
pub const BIN_DIR_ENV: &str = "MESHCERT_BIN_DIR";

/// Returns the path of a workspace binary (`meshcert-init`,
/// `meshcert-refresher` or `meshcert-devca`).
///
/// The binary is looked up in `$MESHCERT_BIN_DIR` if set, otherwise in the
/// target directory of the running test executable: a test runs as
/// `target/<profile>/deps/<test>-<hash>`, and binaries are built to
/// `target/<profile>/`.
///
/// # Panics
///
/// Panics if the binary does not exist, with a message saying how to build it.
pub fn bin_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => default_bin_dir(),
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "binary {} not found; run `cargo build --workspace` first, or set {BIN_DIR_ENV} \
         to the directory that contains it",
        path.display()
    );
    path
}

fn default_bin_dir() -> PathBuf {
    let exe = std::env::current_exe()
        .unwrap_or_else(|error| panic!("cannot find the running test executable: {error}"));
    let mut dir = exe
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("test executable {} has no parent", exe.display()));
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dir_is_profile_dir() {
        let dir = default_bin_dir();
        assert!(!dir.ends_with("deps"), "{}", dir.display());
        assert!(dir.join("deps").is_dir(), "{}", dir.display());
    }
}
