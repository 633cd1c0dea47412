//! [`DevCa`]: a `meshcert-devca serve` child process for end-to-end tests.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

use super::bin_path;
use crate::atomic_file::write_atomic;
use crate::devca::state::{self, TRUST_BUNDLE_FILE};
use crate::devca::token::{TokenRequest, DEFAULT_AUDIENCE, DEFAULT_ISSUER, DEFAULT_TOKEN_TTL};

/// Maximum wait for the CA to write its ready file.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Maximum wait for the CA to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Settings for [`DevCa::start`]. Unset values use the CA's defaults.
#[derive(Debug, Clone, Default)]
pub struct DevCaOptions {
    /// State directory. `None` uses a fresh one in the temporary directory.
    pub state_dir: Option<PathBuf>,
    /// Fault specification passed with `--fault`.
    pub fault: Option<String>,
    /// `--trust-domain`.
    pub trust_domain: Option<String>,
    /// `--audience`.
    pub audience: Option<String>,
    /// `--default-ttl`.
    pub default_ttl: Option<Duration>,
    /// `--max-ttl`.
    pub max_ttl: Option<Duration>,
    /// Further arguments appended to the `serve` command line.
    pub extra_args: Vec<String>,
}

/// Settings for a minted service-account token.
#[derive(Debug, Clone)]
pub struct TokenOptions {
    /// Values of the `aud` claim.
    pub audiences: Vec<String>,
    /// Lifetime of the token.
    pub ttl: Duration,
    /// When true, `exp` is one hour in the past.
    pub expired: bool,
    /// Value of the `iss` claim.
    pub issuer: String,
}

impl Default for TokenOptions {
    fn default() -> Self {
        Self {
            audiences: vec![DEFAULT_AUDIENCE.to_owned()],
            ttl: DEFAULT_TOKEN_TTL,
            expired: false,
            issuer: DEFAULT_ISSUER.to_owned(),
        }
    }
}

/// A running `meshcert-devca serve` process on `127.0.0.1` with a free
/// port. Dropping it kills the process.
#[derive(Debug)]
pub struct DevCa {
    child: Child,
    exit_status: Option<ExitStatus>,
    addr: SocketAddr,
    state_dir: PathBuf,
    fault_file: PathBuf,
    log_path: PathBuf,
    // Dropped last, after the process is gone.
    temp_dir: TempDir,
}

impl DevCa {
    /// Starts the CA and waits up to [`START_TIMEOUT`] until it listens.
    /// The child's stdout and stderr go to [`DevCa::log_path`].
    pub fn start(options: DevCaOptions) -> Result<Self> {
        let temp_dir = tempfile::Builder::new()
            .prefix("meshcert-devca-")
            .tempdir()
            .context("failed to create a temporary directory")?;
        let state_dir = options
            .state_dir
            .clone()
            .unwrap_or_else(|| temp_dir.path().join("state"));
        let ready_file = temp_dir.path().join("ready");
        let fault_file = temp_dir.path().join("faults");
        let log_path = temp_dir.path().join("devca.log");

        let mut command = Command::new(bin_path("meshcert-devca"));
        command
            .arg("serve")
            .arg("--listen=127.0.0.1:0")
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--ready-file")
            .arg(&ready_file)
            .arg("--fault-file")
            .arg(&fault_file);
        if let Some(fault) = &options.fault {
            command.arg(format!("--fault={fault}"));
        }
        if let Some(trust_domain) = &options.trust_domain {
            command.arg(format!("--trust-domain={trust_domain}"));
        }
        if let Some(audience) = &options.audience {
            command.arg(format!("--audience={audience}"));
        }
        if let Some(ttl) = options.default_ttl {
            command.arg(format!("--default-ttl={}", humantime::format_duration(ttl)));
        }
        if let Some(ttl) = options.max_ttl {
            command.arg(format!("--max-ttl={}", humantime::format_duration(ttl)));
        }
        command.args(&options.extra_args);

        let log = File::create(&log_path)
            .with_context(|| format!("failed to create {}", log_path.display()))?;
        let log_for_stderr = log
            .try_clone()
            .context("failed to duplicate the log file handle")?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_for_stderr));
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        let child = command
            .spawn()
            .context("failed to start meshcert-devca serve")?;

        let mut devca = Self {
            child,
            exit_status: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            state_dir,
            fault_file,
            log_path,
            temp_dir,
        };
        devca.addr = devca.wait_for_ready(&ready_file)?;
        Ok(devca)
    }

    fn wait_for_ready(&mut self, ready_file: &Path) -> Result<SocketAddr> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(content) = fs::read_to_string(ready_file) {
                return content.trim().parse().with_context(|| {
                    format!("ready file contains `{content}`, not a socket address")
                });
            }
            if let Some(status) = self.child.try_wait().context("failed to poll the CA")? {
                self.exit_status = Some(status);
                bail!(
                    "meshcert-devca exited with {status} before it was ready; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        bail!(
            "meshcert-devca did not write {} within {START_TIMEOUT:?}; log:\n{}",
            ready_file.display(),
            self.log()
        )
    }

    /// Returns the address the CA listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Returns the gRPC endpoint, `https://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Returns the process id of the CA.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Returns the CA state directory.
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Returns the temporary directory that contains the log, the ready file
    /// and the fault file, and that tests may use for their own files.
    pub fn temp_dir(&self) -> &Path {
        self.temp_dir.path()
    }

    /// Returns the path of the trust bundle, `root-cert.pem`.
    pub fn root_pem_path(&self) -> PathBuf {
        self.state_dir.join(TRUST_BUNDLE_FILE)
    }

    /// Reads the trust bundle.
    ///
    /// # Panics
    ///
    /// Panics if the file cannot be read.
    pub fn root_pem(&self) -> String {
        let path = self.root_pem_path();
        fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("failed to read {}: {error}", path.display()))
    }

    /// Replaces the active fault specification by writing the fault file.
    /// The CA reads it on the next call. An empty `spec` falls back to the
    /// faults given at start, and `none` disables those too.
    pub fn set_fault(&self, spec: &str) -> Result<()> {
        write_atomic(&self.fault_file, spec.as_bytes(), 0o644)
    }

    /// Mints a service-account token for `namespace`/`service_account` with
    /// the CA's token key.
    ///
    /// # Panics
    ///
    /// Panics if the token key cannot be loaded. [`DevCa::try_token`]
    /// returns that error instead.
    pub fn token(&self, namespace: &str, service_account: &str, options: &TokenOptions) -> String {
        self.try_token(namespace, service_account, options)
            .unwrap_or_else(|error| panic!("failed to mint a token: {error:#}"))
    }

    /// Mints a service-account token, returning an error if the token key
    /// cannot be loaded.
    pub fn try_token(
        &self,
        namespace: &str,
        service_account: &str,
        options: &TokenOptions,
    ) -> Result<String> {
        let key = state::load_token_key(&self.state_dir)?;
        let mut request = TokenRequest::new(namespace, service_account);
        request.audiences = options.audiences.clone();
        request.ttl = options.ttl;
        request.expired = options.expired;
        request.issuer = options.issuer.clone();
        key.mint(&request)
    }

    /// Mints a token and writes it atomically to `path` with mode 0600, as
    /// the kubelet does for a projected token volume.
    pub fn write_token(
        &self,
        path: &Path,
        namespace: &str,
        service_account: &str,
        options: &TokenOptions,
    ) -> Result<()> {
        let token = self.try_token(namespace, service_account, options)?;
        write_atomic(path, token.as_bytes(), 0o600)
    }

    /// Runs `meshcert-devca rotate-root` on the state directory, sends
    /// SIGHUP and waits up to [`START_TIMEOUT`] until the CA logs the reload.
    pub fn rotate_root(&self) -> Result<()> {
        let output = Command::new(bin_path("meshcert-devca"))
            .arg("rotate-root")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .output()
            .context("failed to run meshcert-devca rotate-root")?;
        if !output.status.success() {
            bail!(
                "meshcert-devca rotate-root failed with {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        self.reload()
    }

    /// Sends SIGHUP and waits up to [`START_TIMEOUT`] until the CA logs that
    /// it reloaded its CA material.
    pub fn reload(&self) -> Result<()> {
        const RELOADED: &str = "reloaded the CA material";
        let before = self.log().matches(RELOADED).count();
        self.signal(Signal::SIGHUP)?;
        self.wait_for_log(START_TIMEOUT, |log| log.matches(RELOADED).count() > before)
    }

    /// Waits up to `timeout` until `condition` holds for the CA's log.
    pub fn wait_for_log(&self, timeout: Duration, condition: impl Fn(&str) -> bool) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if condition(&log) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the CA log did not reach the expected state within {timeout:?}; log:\n{log}"
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Returns the path of the file that receives the CA's stdout and stderr.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Reads the CA's output so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Sends SIGTERM and waits up to [`STOP_TIMEOUT`] for the exit. Returns
    /// the exit status, and the same status on later calls.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exit_status {
            return Ok(status);
        }
        self.signal(Signal::SIGTERM)?;
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().context("failed to poll the CA")? {
                self.exit_status = Some(status);
                return Ok(status);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        let _ = self.child.kill();
        let status = self.child.wait().context("failed to wait for the CA")?;
        self.exit_status = Some(status);
        Err(anyhow!(
            "meshcert-devca did not exit within {STOP_TIMEOUT:?} after SIGTERM and was killed; log:\n{}",
            self.log()
        ))
    }

    fn signal(&self, signal: Signal) -> Result<()> {
        let pid = i32::try_from(self.child.id()).context("process id out of range")?;
        kill(Pid::from_raw(pid), signal)
            .with_context(|| format!("failed to send {signal} to meshcert-devca (pid {pid})"))
    }
}

impl Drop for DevCa {
    fn drop(&mut self) {
        if self.exit_status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
