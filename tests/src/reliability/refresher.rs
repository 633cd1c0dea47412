//! A running `meshcert-refresher` and HTTP requests to its endpoints.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use super::procfs::status_kib;
use super::wait_until;

/// Maximum wait for the refresher to log the addresses it serves on.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A `meshcert-refresher` started with `--log-format=json`; dropping it
/// kills the process.
#[derive(Debug)]
pub struct RefresherProcess {
    child: Child,
    log_path: PathBuf,
    /// Address of `/ready`, `/healthz` and `/metrics`.
    pub probe_addr: SocketAddr,
    /// Address of the probe endpoints and `POST /renew`.
    pub admin_addr: SocketAddr,
}

impl RefresherProcess {
    /// Starts `command` with stdout and stderr appended to `log_path`, and
    /// waits until it logs both addresses.
    pub fn spawn(mut command: Command, log_path: &Path) -> Result<Self> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .with_context(|| format!("opening {} failed", log_path.display()))?;
        let log_offset = log.metadata().map(|meta| meta.len()).unwrap_or(0);
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        let child = command
            .spawn()
            .context("starting meshcert-refresher failed")?;
        let mut refresher = Self {
            child,
            log_path: log_path.to_path_buf(),
            probe_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };

        let addresses = wait_until(START_TIMEOUT, || {
            if let Ok(Some(status)) = refresher.child.try_wait() {
                return Some(Err(status));
            }
            let log = refresher.log_since(log_offset);
            let probe = logged_addr(&log, "serving probe endpoints")?;
            let admin = logged_addr(&log, "serving admin endpoints")?;
            Some(Ok((probe, admin)))
        });
        match addresses {
            Some(Ok((probe, admin))) => {
                refresher.probe_addr = probe;
                refresher.admin_addr = admin;
                Ok(refresher)
            }
            Some(Err(status)) => bail!(
                "the refresher exited with {status} before serving; log:\n{}",
                refresher.log()
            ),
            None => bail!(
                "the refresher did not log its addresses within {START_TIMEOUT:?}; log:\n{}",
                refresher.log()
            ),
        }
    }

    /// Returns the process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Returns the whole log file.
    pub fn log(&self) -> String {
        self.log_since(0)
    }

    fn log_since(&self, offset: u64) -> String {
        let bytes = fs::read(&self.log_path).unwrap_or_default();
        let start = usize::try_from(offset).unwrap_or(0).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// Returns the JSON log records whose message is `message`.
    pub fn records(&self, message: &str) -> Vec<Value> {
        self.log()
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|record| record["message"] == message)
            .collect()
    }

    /// Sends `GET path` to the probe address.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        http_request(self.probe_addr, "GET", path, Duration::from_secs(10))
    }

    /// Sends `POST /renew` to the admin address and waits for the attempt.
    pub fn renew(&self) -> Result<(u16, String)> {
        http_request(self.admin_addr, "POST", "/renew", Duration::from_secs(30))
    }

    /// Sends `POST /renew` until the reply contains `expected`, at most
    /// three times, and returns the last reply.
    ///
    /// A scheduled retry that starts just before a test changes the CA's
    /// fault makes `POST /renew` wait for that attempt, whose reply comes
    /// from the previous fault; the next request gets a fresh attempt.
    pub fn renew_expecting(&self, expected: &str) -> Result<(u16, String)> {
        let mut reply = self.renew()?;
        for _ in 1..3 {
            if reply.1.contains(expected) {
                break;
            }
            reply = self.renew()?;
        }
        Ok(reply)
    }

    /// Returns the value of one series of `/metrics`, such as
    /// `meshcert_renewal_failures_total{reason="publish"}`; 0 when the
    /// series is absent, as an unincremented counter family member is.
    pub fn metric(&self, series: &str) -> Result<f64> {
        let (status, body) = self.get("/metrics")?;
        if status != 200 {
            bail!("/metrics returned {status}: {body}");
        }
        let value = body.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            value.trim().parse::<f64>().ok()
        });
        Ok(value.unwrap_or(0.0))
    }

    /// Returns a `kB` field of the process's `/proc` status, such as `VmHWM`.
    pub fn status_kib(&self, field: &str) -> Option<u64> {
        status_kib(self.pid(), field)
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill_hard(&mut self) -> Result<ExitStatus> {
        let pid = Pid::from_raw(i32::try_from(self.child.id())?);
        kill(pid, Signal::SIGKILL).context("sending SIGKILL failed")?;
        self.child
            .wait()
            .context("waiting for the refresher failed")
    }

    /// Returns the exit status if the process has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child.try_wait().map_err(|e| anyhow!(e))
    }
}

impl Drop for RefresherProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn logged_addr(log: &str, message: &str) -> Option<SocketAddr> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|record| record["message"] == message)?["addr"]
        .as_str()?
        .parse()
        .ok()
}

/// Sends one HTTP/1.1 request with `Connection: close` to a loopback
/// address and returns the status code and body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String)> {
    if !addr.ip().is_loopback() {
        bail!("refusing to send a test request to {addr}: only loopback addresses are allowed");
    }
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr} failed"))?;
    stream.set_read_timeout(Some(timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("{method} {path} on {addr} failed"))?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("no status line in {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
