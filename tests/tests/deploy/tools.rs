//! External programs the deploy tests run, and what happens when one is
//! missing: as root (where scripts/test.sh installs them) the test fails,
//! as another user it prints `skipped` and passes.

use std::env;
use std::path::{Path, PathBuf};

use super::yaml;

/// Directory of the Python virtual environment that scripts/test.sh creates
/// for hadolint and kubernetes-validate, relative to the workspace.
const PYTHON_TOOLS_DIR: &str = "target/py-tools/bin";

/// Returns whether the tests run as root.
pub(crate) fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Finds an executable on `PATH`, then in the system directories that a
/// non-root `PATH` often lacks (nginx and ip live in `/usr/sbin`), then in
/// the Python tools directory.
pub(crate) fn find(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .chain([yaml::workspace_dir().join(PYTHON_TOOLS_DIR)])
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
}

/// Finds a tool the test needs. Returns `None` after printing a `skipped`
/// line when the tests do not run as root.
///
/// # Panics
///
/// Panics as root when the tool is missing, with the way to install it.
pub(crate) fn require(name: &str, install: &str) -> Option<PathBuf> {
    if let Some(path) = find(name) {
        return Some(path);
    }
    assert!(
        !is_root(),
        "{name} not found on PATH or in {PYTHON_TOOLS_DIR}; {install}"
    );
    println!("skipped: {name} not found ({install})");
    None
}
