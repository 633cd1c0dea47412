//! Reactions to watched inputs: a changed CA root file is reloaded and
//! renewed with, and a removed or altered published set is published again
//! from memory.

use std::time::SystemTime;

use meshcert_common::bundle::rfc3339;
use meshcert_common::ca;
use meshcert_common::certdir::PublishedFiles;
use tokio::time::Instant;

use super::{cap_at_expiry, format_duration, publish_files, Published, Renewer, DEBOUNCE};
use crate::watch::Changes;

impl Renewer {
    pub(super) fn on_watched(&mut self, changes: Changes) {
        if changes.ca_root_dir && self.timers.ca_root_check.is_none() {
            self.timers.ca_root_check = Some(Instant::now() + DEBOUNCE);
        }
        if changes.out_dir && self.timers.out_dir_check.is_none() {
            self.timers.out_dir_check = Some(Instant::now() + DEBOUNCE);
        }
    }

    /// Reloads the CA root when its file's content changed, and renews so
    /// the published `root-cert.pem` follows the CA's root.
    pub(super) fn check_ca_root(&mut self) {
        let path = self.issuer.ca_root_path.clone();
        match ca::load_ca_root(&path) {
            Ok(pem) if pem == self.issuer.ca.root_pem => {
                tracing::debug!(ca_root = ?path, "CA root directory changed; the root file content is unchanged");
                return;
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(ca_root = ?path, error = %error, "the CA root file changed but cannot be loaded; keeping the previous root");
                return;
            }
        }
        if let Err(error) = self.issuer.reload_root() {
            tracing::warn!(ca_root = ?path, error = %error, "reloading the CA root file failed; keeping the previous root");
            return;
        }
        tracing::info!(ca_root = ?path, "the CA root file changed; reloaded it and renewing now");
        self.shared.metrics.record_root_reload();
        self.request_renewal("the CA root file changed");
    }

    /// Publishes the set in memory again when the published files were
    /// removed or altered; events of our own publishes find them intact.
    pub(super) fn check_out_dir(&mut self) {
        let Some(current) = &self.current else {
            return;
        };
        let Some(problem) = self.find_publish_problem(current) else {
            tracing::debug!(generation = %current.generation, "output directory changed; the published set is intact");
            self.restore_backoff.reset();
            return;
        };

        if !current.set.is_valid_at(SystemTime::now()) {
            tracing::warn!(problem = %problem, "the published set was removed or altered and the set in memory has expired; requesting a new one");
            self.request_renewal("the published set was removed or altered");
            return;
        }
        tracing::warn!(
            problem = %problem,
            serial = %current.set.serial,
            "the published set was removed or altered; publishing the set in memory again"
        );
        self.republish();
    }

    /// Returns why the output directory no longer shows `current`, if it does not.
    fn find_publish_problem(&self, current: &Published) -> Option<String> {
        let files = match self.dir.read() {
            Ok(files) => files,
            Err(error) => return Some(error.to_string()),
        };
        if !is_published(&files, current) {
            return Some(format!(
                "generation {} does not contain the set this process published (generation {})",
                files.generation, current.generation
            ));
        }
        self.extras
            .missing_in(self.dir.path())
            .first()
            .map(|name| format!("output file {name} is missing"))
    }

    pub(super) fn republish(&mut self) {
        let Some(current) = &self.current else {
            return;
        };
        // Only a removed directory needs creating again. prepare() also
        // removes stray generations, which must not happen on every restore.
        let prepared = if self.dir.path().is_dir() {
            Ok(())
        } else {
            self.dir.prepare().map_err(|e| e.to_string())
        };
        let published = prepared
            .and_then(|()| publish_files(&self.dir, &self.extras, &current.key, &current.set));
        let generation = match published {
            Ok(generation) => generation,
            Err(error) => {
                let delay = cap_at_expiry(self.restore_backoff.next_delay(), &current.set);
                tracing::warn!(error = %error, retry_in = %format_duration(delay), "publishing the set again failed");
                self.timers.out_dir_check = Some(Instant::now() + delay);
                return;
            }
        };

        tracing::info!(
            spiffe_id = %self.issuer.spiffe_id,
            serial = %current.set.serial,
            expires_at = %rfc3339(current.set.expires_at),
            generation = %generation,
            "published the set again"
        );
        if let Some(current) = self.current.as_mut() {
            current.generation = generation;
        }
        self.shared.metrics.record_republish();
        self.watch.watch_out_dir();
        self.notify_app();
    }
}

fn is_published(files: &PublishedFiles, current: &Published) -> bool {
    files.generation == current.generation
        && *files.key_pem == current.key.pem()
        && files.chain_pem == current.set.chain_pem
        && files.root_pem == current.set.root_bundle_pem
}
