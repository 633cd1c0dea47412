//! A test workload: a dev CA, the pod's token and its certificate volume,
//! with commands for both binaries.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use super::volume::CertVolume;
use crate::{bin_path, DevCa, DevCaOptions, TokenOptions};

/// Namespace of the test workload.
pub const NAMESPACE: &str = "monitoring";
/// Service account of the test workload.
pub const SERVICE_ACCOUNT: &str = "prometheus";
/// SPIFFE ID of the test workload.
pub const SPIFFE_ID: &str = "spiffe://cluster.local/ns/monitoring/sa/prometheus";

/// One pod's world: a dev CA, a token file and a certificate volume.
#[derive(Debug)]
pub struct Workload {
    /// The dev CA the binaries talk to.
    pub ca: DevCa,
    /// The volume that holds `certs/`.
    pub volume: CertVolume,
    secrets: TempDir,
}

impl Workload {
    /// Starts a CA with the fault specification `fault` (empty for none)
    /// and a 4 MiB certificate volume.
    pub fn start(fault: &str) -> Self {
        let options = DevCaOptions {
            fault: (!fault.is_empty()).then(|| fault.to_string()),
            ..DevCaOptions::default()
        };
        Self::start_with(options, "4m")
    }

    /// Starts a CA with `options` and a certificate volume of `volume_size`.
    ///
    /// # Panics
    ///
    /// Panics if the CA does not start or a directory cannot be created.
    pub fn start_with(options: DevCaOptions, volume_size: &str) -> Self {
        let ca = DevCa::start(options)
            .unwrap_or_else(|error| panic!("starting the dev CA failed: {error:#}"));
        let secrets = tempfile::Builder::new()
            .prefix("meshcert-secrets-")
            .tempdir()
            .expect("create a temporary directory");
        fs::set_permissions(secrets.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let workload = Self {
            ca,
            volume: CertVolume::new(volume_size),
            secrets,
        };
        workload.write_token(&TokenOptions::default());
        workload
    }

    /// Returns the token file path.
    pub fn token_path(&self) -> PathBuf {
        self.secrets.path().join("istio-token")
    }

    /// Returns a directory for the test's own files, outside the volume.
    pub fn scratch_dir(&self) -> &Path {
        self.secrets.path()
    }

    /// Writes a fresh token for the workload's service account, mode 0644.
    pub fn write_token(&self, options: &TokenOptions) {
        self.ca
            .write_token(&self.token_path(), NAMESPACE, SERVICE_ACCOUNT, options)
            .expect("write the token");
        fs::set_permissions(self.token_path(), fs::Permissions::from_mode(0o644)).unwrap();
    }

    /// Returns the token text.
    pub fn token(&self) -> String {
        fs::read_to_string(self.token_path()).expect("read the token")
    }

    /// Returns the certificate directory, `certs/` on the volume.
    pub fn out_dir(&self) -> PathBuf {
        self.volume.path().join("certs")
    }

    /// Returns a `meshcert-init` command with this workload's CA, token,
    /// output directory and a short retry backoff.
    pub fn init(&self) -> Command {
        let mut command = self.command("meshcert-init");
        command.args(["--retry-initial-backoff=50ms", "--retry-max-backoff=200ms"]);
        command
    }

    /// Returns a `meshcert-refresher` command: kernel-picked loopback
    /// ports, JSON logs, renewal at half the lifetime and a short retry
    /// backoff (200 ms doubling up to 1 s).
    pub fn refresher(&self) -> Command {
        let mut command = self.command("meshcert-refresher");
        command.args([
            "--log-format=json",
            "--probe-addr=127.0.0.1:0",
            "--admin-addr=127.0.0.1:0",
            "--renew-ratio=0.5",
            "--renew-jitter=0.05",
            "--retry-initial-backoff=200ms",
            "--retry-max-backoff=1s",
            "--request-timeout=3s",
        ]);
        command
    }

    fn command(&self, binary: &str) -> Command {
        let mut command = Command::new(bin_path(binary));
        command
            .env_clear()
            .env("RUST_LOG", "info")
            .arg("--ca-addr")
            .arg(self.ca.addr().to_string())
            .arg("--ca-root")
            .arg(self.ca.root_pem_path())
            .arg("--token-file")
            .arg(self.token_path())
            .arg("--out-dir")
            .arg(self.out_dir());
        command
    }
}
