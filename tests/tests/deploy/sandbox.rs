//! Building blocks of the pod replay. A network namespace plays the pod's
//! sandbox, the role of Kubernetes' pause container. Child processes are
//! stopped when dropped. Also here: tmpfs mounts, the kubelet's layout for
//! ConfigMap and projected volumes, and HTTP requests from inside the pod.

use std::fs::{self, File};
use std::os::unix::fs::{chown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long a process gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
const POLL_INTERVAL: Duration = Duration::from_millis(200);
/// Lifetime of the process that keeps the network namespace alive. The
/// replay stops it much earlier, so this only bounds a leak if the test is
/// killed.
const HOLDER_LIFETIME_SECONDS: &str = "300";

/// Waits up to `timeout` until `check` returns a value, polling every 200 ms.
/// The error names `condition` and the last error `check` returned.
pub(crate) fn wait_until<T>(
    condition: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) => last_error = Some(error),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(error) => {
                    bail!("{condition}: not reached within {timeout:?}; last error: {error:#}")
                }
                None => bail!("{condition}: not reached within {timeout:?}"),
            }
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

/// Quotes a word for `sh`.
pub(crate) fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// A child process whose output goes to a log file. Dropping it sends
/// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`].
#[derive(Debug)]
pub(crate) struct Process {
    pub(crate) name: String,
    child: Child,
    log_path: PathBuf,
    status: Option<ExitStatus>,
}

impl Process {
    /// Starts `command` with stdin closed and stdout and stderr in `log_path`.
    pub(crate) fn spawn(name: &str, mut command: Command, log_path: PathBuf) -> Result<Self> {
        let log = File::create(&log_path)
            .with_context(|| format!("failed to create {}", log_path.display()))?;
        let log_for_stderr = log
            .try_clone()
            .context("failed to duplicate a log file handle")?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log_for_stderr));
        let child = command
            .spawn()
            .with_context(|| format!("failed to start {name}: {command:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            log_path,
            status: None,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the process's output so far.
    pub(crate) fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// Returns the exit status if the process has exited.
    pub(crate) fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .with_context(|| format!("failed to poll {}", self.name))?;
        }
        Ok(self.status)
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub(crate) fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let name = self.name.clone();
        wait_until(&format!("{name} exits"), timeout, || self.try_status())
    }

    /// Fails with the process's log if it has exited.
    pub(crate) fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.try_status()? {
            bail!("{} exited with {status}; log:\n{}", self.name, self.log());
        }
        Ok(())
    }

    /// Sends SIGTERM and waits up to [`STOP_TIMEOUT`], then kills.
    pub(crate) fn stop(&mut self) {
        if self.try_status().ok().flatten().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if self.wait(STOP_TIMEOUT).is_err() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A network namespace with loopback up, held by a sleeping process.
#[derive(Debug)]
pub(crate) struct NetworkNamespace {
    holder: Child,
    path: String,
    nsenter: PathBuf,
}

impl NetworkNamespace {
    /// Creates the namespace and brings `lo` up in it.
    pub(crate) fn create(unshare: &Path, nsenter: &Path, ip: &Path) -> Result<Self> {
        let holder = Command::new(unshare)
            .args(["--net", "--", "sleep", HOLDER_LIFETIME_SECONDS])
            .stdin(Stdio::null())
            .spawn()
            .context("failed to run unshare --net")?;
        let namespace = Self {
            path: format!("/proc/{}/ns/net", holder.id()),
            holder,
            nsenter: nsenter.to_path_buf(),
        };
        let own = fs::read_link("/proc/self/ns/net")
            .context("failed to read this process's network namespace")?;
        wait_until(
            "unshare --net enters its namespace",
            Duration::from_secs(5),
            || {
                let current = fs::read_link(&namespace.path)
                    .with_context(|| format!("failed to read {}", namespace.path))?;
                Ok((current != own).then_some(()))
            },
        )?;

        let status = namespace
            .command(ip)
            .args(["link", "set", "lo", "up"])
            .status()
            .context("failed to run ip link")?;
        ensure!(status.success(), "ip link set lo up failed with {status}");
        Ok(namespace)
    }

    /// Returns a command that runs `program` inside the namespace.
    pub(crate) fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(&self.nsenter);
        command
            .arg(format!("--net={}", self.path))
            .arg("--")
            .arg(program);
        command
    }
}

impl Drop for NetworkNamespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// A tmpfs mounted in this machine's mount namespace, unmounted on drop.
#[derive(Debug)]
pub(crate) struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_bytes` with root mode `mode` at `path`.
    pub(crate) fn mount(path: &Path, size_bytes: u64, mode: u32) -> Result<Self> {
        fs::create_dir_all(path).with_context(|| format!("failed to create {}", path.display()))?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size_bytes},mode={mode:o}"))
            .arg("meshcert-replay")
            .arg(path)
            .status()
            .context("failed to run mount")?;
        ensure!(
            status.success(),
            "mounting a tmpfs at {} failed",
            path.display()
        );
        Ok(Self {
            path: path.to_path_buf(),
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("--lazy")
            .arg(&self.path)
            .status();
    }
}

/// Writes files as the kubelet does for ConfigMap and projected volumes: a
/// generation directory, a `..data` link to it, and one link per file.
/// Files get mode 0644, the kubelet's default, and the pod's fsGroup.
pub(crate) fn write_kubelet_volume(
    dir: &Path,
    files: &[(String, Vec<u8>)],
    fs_group: Option<u32>,
) -> Result<()> {
    let generation = "..2026_01_01_00_00_00.000000001";
    let generation_dir = dir.join(generation);
    fs::create_dir_all(&generation_dir)
        .with_context(|| format!("failed to create {}", generation_dir.display()))?;
    for (name, content) in files {
        ensure!(
            !name.contains('/'),
            "nested volume file {name} is not supported by the replay"
        );
        let path = generation_dir.join(name);
        fs::write(&path, content).with_context(|| format!("failed to write {}", path.display()))?;
        set_owner_and_mode(&path, fs_group, 0o644)?;
        symlink(format!("..data/{name}"), dir.join(name))?;
    }
    symlink(generation, dir.join("..data"))?;
    set_owner_and_mode(&generation_dir, fs_group, 0o755)?;
    set_owner_and_mode(dir, fs_group, 0o755)
}

/// Sets a path's group (owner stays root) and mode.
pub(crate) fn set_owner_and_mode(path: &Path, group: Option<u32>, mode: u32) -> Result<()> {
    chown(path, Some(0), group).with_context(|| format!("failed to chown {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("failed to chmod {}", path.display()))
}

/// Sends an HTTP request with curl from inside the namespace and returns the
/// status code and body. `extra` contains further curl arguments.
pub(crate) fn http(
    namespace: &NetworkNamespace,
    curl: &Path,
    method: &str,
    url: &str,
    extra: &[&str],
) -> Result<(u16, String)> {
    let output = namespace
        .command(curl)
        .args([
            "--silent",
            "--show-error",
            "--max-time",
            "5",
            "--request",
            method,
        ])
        .args(["--write-out", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .context("failed to run curl")?;
    ensure!(
        output.status.success(),
        "{method} {url} failed: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let Some((body, code)) = text.rsplit_once('\n') else {
        bail!("curl printed no status code for {url}");
    };
    let code = code
        .trim()
        .parse()
        .with_context(|| format!("invalid status code {code:?} from {url}"))?;
    Ok((code, body.to_string()))
}
