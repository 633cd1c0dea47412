//! inotify watches on the CA root file's directory and on the output directory.
//!
//! Directories are watched, not files: a ConfigMap volume replaces its
//! files by swapping the `..data` symlink, which a watch on the old file's
//! inode would never see. The notify crate's inotify thread blocks until the
//! kernel reports an event, so an idle watch wakes nothing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// Change flags of the watched directories since the last call of [`DirWatch::changed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Changes {
    pub(crate) ca_root_dir: bool,
    pub(crate) out_dir: bool,
}

#[derive(Debug, Default)]
struct Pending {
    ca_root_dir: AtomicBool,
    out_dir: AtomicBool,
    wake: tokio::sync::Notify,
}

/// Watches of the CA root file's directory (not recursive) and of the
/// output directory (recursive, so rewrites inside a generation are seen).
#[derive(Debug)]
pub(crate) struct DirWatch {
    watcher: Option<RecommendedWatcher>,
    pending: Arc<Pending>,
    out_dir: PathBuf,
}

impl DirWatch {
    /// Starts the watches. A failure is logged and leaves the refresher
    /// working on its schedule alone, without reacting to file changes.
    pub(crate) fn start(ca_root_file: &Path, out_dir: &Path) -> Self {
        let pending = Arc::new(Pending::default());
        let out_dir = absolute(out_dir);
        let ca_root_dir = match absolute(ca_root_file).parent() {
            Some(parent) => parent.to_path_buf(),
            None => PathBuf::from("/"),
        };

        let handler = {
            let pending = Arc::clone(&pending);
            let out_dir = out_dir.clone();
            let ca_root_dir = ca_root_dir.clone();
            move |result: notify::Result<Event>| {
                classify(&pending, &ca_root_dir, &out_dir, result);
            }
        };
        let config = notify::Config::default().with_follow_symlinks(false);
        let watcher = match RecommendedWatcher::new(handler, config) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::error!(error = %error, "starting the inotify watcher failed; changes of the CA root and of the output directory are not noticed until the next renewal");
                None
            }
        };

        let mut watch = Self {
            watcher,
            pending,
            out_dir,
        };
        if let Some(watcher) = watch.watcher.as_mut() {
            match watcher.watch(&ca_root_dir, RecursiveMode::NonRecursive) {
                Ok(()) => tracing::debug!(dir = ?ca_root_dir, "watching the CA root directory"),
                Err(error) => {
                    tracing::error!(dir = ?ca_root_dir, error = %error, "watching the CA root directory failed; a CA root rotation is not followed until the next renewal")
                }
            }
        }
        watch.watch_out_dir();
        watch
    }

    /// Watches the output directory again, after it was removed and created anew.
    pub(crate) fn watch_out_dir(&mut self) {
        let Some(watcher) = self.watcher.as_mut() else {
            return;
        };
        let _ = watcher.unwatch(&self.out_dir);
        match watcher.watch(&self.out_dir, RecursiveMode::Recursive) {
            Ok(()) => tracing::debug!(dir = ?self.out_dir, "watching the output directory"),
            Err(error) => {
                tracing::error!(dir = ?self.out_dir, error = %error, "watching the output directory failed; a removed or altered set is not restored until the next renewal")
            }
        }
    }

    /// Waits until a watched directory changes and returns which.
    pub(crate) async fn changed(&self) -> Changes {
        loop {
            self.pending.wake.notified().await;
            let changes = Changes {
                ca_root_dir: self.pending.ca_root_dir.swap(false, Ordering::AcqRel),
                out_dir: self.pending.out_dir.swap(false, Ordering::AcqRel),
            };
            if changes.ca_root_dir || changes.out_dir {
                return changes;
            }
        }
    }
}

/// Records which directory an event concerns, on the watcher's thread.
fn classify(pending: &Pending, ca_root_dir: &Path, out_dir: &Path, result: notify::Result<Event>) {
    let event = match result {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(error = %error, "the inotify watcher reported an error; checking both directories");
            pending.ca_root_dir.store(true, Ordering::Release);
            pending.out_dir.store(true, Ordering::Release);
            pending.wake.notify_one();
            return;
        }
    };
    // Opening and reading files, ours included, changes nothing.
    if let EventKind::Access(kind) = event.kind {
        if kind != AccessKind::Close(AccessMode::Write) {
            return;
        }
    }

    let rescan = event.need_rescan();
    let mut changed = false;
    for path in &event.paths {
        if rescan || path.starts_with(out_dir) {
            pending.out_dir.store(true, Ordering::Release);
            changed = true;
        }
        if rescan || path == ca_root_dir || path.parent() == Some(ca_root_dir) {
            pending.ca_root_dir.store(true, Ordering::Release);
            changed = true;
        }
    }
    if rescan && event.paths.is_empty() {
        pending.ca_root_dir.store(true, Ordering::Release);
        pending.out_dir.store(true, Ordering::Release);
        changed = true;
    }
    if changed {
        pending.wake.notify_one();
    }
}

/// Makes `path` absolute without resolving symlinks, so event paths share its prefix.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn configmap_swap_marks_ca_root_dir() {
        let root_dir = tempfile::tempdir().unwrap();
        let out_dir = tempfile::tempdir().unwrap();
        let root_file = root_dir.path().join("root-cert.pem");
        std::fs::write(&root_file, "first").unwrap();
        let watch = DirWatch::start(&root_file, out_dir.path());

        std::fs::write(root_dir.path().join("root-cert.pem.new"), "second").unwrap();
        std::fs::rename(root_dir.path().join("root-cert.pem.new"), &root_file).unwrap();

        let changes = tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("no change reported within 5s");
        assert!(changes.ca_root_dir, "{changes:?}");
        assert!(!changes.out_dir, "{changes:?}");
    }

    #[tokio::test]
    async fn reads_are_ignored_and_writes_reported() {
        let root_dir = tempfile::tempdir().unwrap();
        let out_dir = tempfile::tempdir().unwrap();
        let root_file = root_dir.path().join("root-cert.pem");
        std::fs::write(&root_file, "root").unwrap();
        std::fs::create_dir(out_dir.path().join("..generation")).unwrap();
        let key = out_dir.path().join("..generation/key.pem");
        std::fs::write(&key, "key").unwrap();
        let watch = DirWatch::start(&root_file, out_dir.path());

        std::fs::read(&key).unwrap();
        std::fs::read(&root_file).unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(300), watch.changed()).await;
        assert!(quiet.is_err(), "reads were reported: {quiet:?}");

        std::fs::write(&key, "rewritten").unwrap();
        let changes = tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .expect("a rewrite inside a generation was not reported within 5s");
        assert!(changes.out_dir, "{changes:?}");
    }
}
