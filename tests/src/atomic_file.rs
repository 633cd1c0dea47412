//! Atomic file replacement: readers see either the old or the new content,
//! never a partly written file.

use std::fs::{self, Permissions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `contents` to a temporary file in the directory of `path`, sets
/// its mode to `mode` (for example `0o600` for keys), flushes it to disk and
/// renames it over `path`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut file = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .with_context(|| format!("failed to create a temporary file in {}", dir.display()))?;
    file.write_all(contents)
        .with_context(|| format!("failed to write a temporary file for {}", path.display()))?;
    fs::set_permissions(file.path(), Permissions::from_mode(mode))
        .with_context(|| format!("failed to set the mode of {}", file.path().display()))?;
    file.as_file()
        .sync_all()
        .with_context(|| format!("failed to flush the temporary file for {}", path.display()))?;
    file.persist(path)
        .with_context(|| format!("failed to rename a temporary file to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_content_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file.txt");
        write_atomic(&path, b"first", 0o644).unwrap();
        write_atomic(&path, b"second", 0o600).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "second");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "temporary files should be renamed away");
    }
}
