//! Notification of the application after a new set is published.
//!
//! The swap of `..data` is itself the notification for apps that watch the
//! directory. For apps that reload on a signal or a command, a [`Notifier`]
//! sends a signal to a process found through a pid file or by name, and runs
//! a command. Both read their target at notification time, so an app that
//! restarted since the last swap is still found.
//!
//! Signalling another container's process needs a shared process namespace
//! (`shareProcessNamespace: true`), because pids are per namespace, and the
//! same uid as the target or `CAP_KILL`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal;
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Signal type of [`Notifier`], re-exported so callers need no `nix` dependency.
pub use nix::sys::signal::Signal;

/// Largest pid file read, because a pid file contains one number.
const MAX_PID_FILE_BYTES: u64 = 4096;

/// Bytes of each of the command's stdout and stderr kept for the log. The
/// rest is read and discarded, so the command never blocks on a full pipe.
const MAX_LOGGED_OUTPUT_BYTES: usize = 4096;

/// Errors of one notification. None of them is fatal: the caller logs it
/// and notifies again after the next swap.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The app's reload endpoint failed or returned a status outside 2xx.
    #[error(transparent)]
    Reload(#[from] Box<crate::reload::ReloadError>),
    /// The pid file cannot be read.
    #[error(
        "cannot read pid file {path}: {source}; check --pid-file and that the app has started"
    )]
    PidFileUnreadable {
        /// The pid file.
        path: PathBuf,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The pid file does not hold one positive process id.
    #[error(
        "pid file {path} does not contain a process id: {content:?}; expected one positive number"
    )]
    PidFileInvalid {
        /// The pid file.
        path: PathBuf,
        /// The start of its content.
        content: String,
    },
    /// `/proc` cannot be listed.
    #[error("listing /proc failed: {0}")]
    ProcUnreadable(std::io::Error),
    /// No process has the name given to `--process-name`.
    #[error("no process named {name:?} was found in /proc; check --process-name and that the pod sets shareProcessNamespace: true")]
    ProcessNotFound {
        /// The name searched for.
        name: String,
    },
    /// `kill(2)` failed.
    #[error("sending {signal} to pid {pid} failed: {source}; the target needs the same uid as this process, or this process needs CAP_KILL")]
    SignalFailed {
        /// The signal.
        signal: Signal,
        /// The target process.
        pid: i32,
        /// The errno of `kill(2)`.
        source: nix::errno::Errno,
    },
    /// The command could not be started.
    #[error("starting the --exec command {program:?} failed: {source}")]
    ExecSpawn {
        /// The program, the first word of the command.
        program: String,
        /// Underlying I/O error.
        source: std::io::Error,
    },
    /// The command did not finish in time and was killed.
    #[error("the --exec command {command} did not finish within {timeout} and was killed")]
    ExecTimeout {
        /// The command line.
        command: String,
        /// The limit, as set by `--exec-timeout`.
        timeout: String,
    },
    /// The command exited unsuccessfully.
    #[error("the --exec command {command} failed: {status}")]
    ExecFailed {
        /// The command line.
        command: String,
        /// The exit status, such as `exit status: 1`.
        status: String,
    },
}

/// Target of the signal: the source of the pid read at signal time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalTarget {
    /// The process whose id a pid file contains, read at signal time.
    PidFile(PathBuf),
    /// Every process whose `/proc/PID/comm` or argv[0] basename equals the name.
    ProcessName(String),
}

/// Method of one notification, used as a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A signal sent to a process.
    Signal,
    /// A command run to completion.
    Exec,
    /// An HTTP request to the app's reload endpoint.
    Http,
}

impl Method {
    /// Returns the lowercase label: `signal` or `exec`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Signal => "signal",
            Self::Exec => "exec",
            Self::Http => "http",
        }
    }
}

/// A command run after each swap, without a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecCommand {
    /// Program followed by its arguments.
    pub argv: Vec<String>,
    /// Time limit, after which the command is killed.
    pub timeout: Duration,
}

/// The notifications configured for the application.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    /// Signal and the process it goes to.
    pub signal: Option<(Signal, SignalTarget)>,
    /// Command to run.
    pub exec: Option<ExecCommand>,
    /// HTTP reload endpoints, each sent one request per swap.
    pub http: Vec<crate::reload::HttpReload>,
}

impl Notifier {
    /// Returns whether nothing beyond the swap itself is configured.
    pub fn is_empty(&self) -> bool {
        self.signal.is_none() && self.exec.is_none() && self.http.is_empty()
    }

    /// Sends the signal, runs the command, then sends the HTTP reloads, and returns the outcome of
    /// each configured method. Every outcome is also logged.
    pub async fn notify(&self) -> Vec<(Method, Result<(), NotifyError>)> {
        let mut outcomes = Vec::new();
        if let Some((signal, target)) = &self.signal {
            let result = send_signal(*signal, target).map(|_pids| ());
            if let Err(error) = &result {
                tracing::warn!(error = %error, "notifying the app with a signal failed; it is tried again after the next swap");
            }
            outcomes.push((Method::Signal, result));
        }
        if let Some(command) = &self.exec {
            let result = run_command(command).await;
            if let Err(error) = &result {
                tracing::warn!(error = %error, "notifying the app with --exec failed; it is tried again after the next swap");
            }
            outcomes.push((Method::Exec, result));
        }
        for reload in &self.http {
            let result = crate::reload::send_reload(reload).await.map(|_status| ());
            match &result {
                Ok(()) => {
                    tracing::info!(url = %reload.url, method = %reload.method, "the app's reload endpoint accepted the request")
                }
                Err(error) => {
                    tracing::warn!(error = %error, "notifying the app through --reload-url failed; it is tried again after the next swap")
                }
            }
            outcomes.push((
                Method::Http,
                result.map_err(|e| NotifyError::from(Box::new(e))),
            ));
        }
        outcomes
    }
}

/// Parses a signal name such as `HUP`, `SIGHUP` or `sigusr1`.
///
/// Numbers are rejected because their meaning differs between architectures.
pub fn parse_signal(value: &str) -> Result<Signal, String> {
    let name = value.trim().to_ascii_uppercase();
    let name = if name.starts_with("SIG") {
        name
    } else {
        format!("SIG{name}")
    };
    Signal::from_str(&name).map_err(|_| {
        format!("invalid signal {value:?}: expected a signal name such as HUP or SIGHUP")
    })
}

/// Splits a command line into words as a POSIX shell would, without running
/// a shell: quotes and backslashes group words, and nothing is expanded.
pub fn parse_command(value: &str) -> Result<Vec<String>, String> {
    let argv = shell_words::split(value)
        .map_err(|e| format!("invalid command {value:?}: {e}; quote words that contain spaces"))?;
    if argv.is_empty() {
        return Err(format!(
            "invalid command {value:?}: it is empty; give a program and its arguments, such as \"nginx -s reload\""
        ));
    }
    Ok(argv)
}

/// Sends `signal` to the processes `target` names, read now, and returns the pids signalled.
///
/// Every matching process is tried; the first failure is returned.
pub fn send_signal(signal: Signal, target: &SignalTarget) -> Result<Vec<i32>, NotifyError> {
    let pids = match target {
        SignalTarget::PidFile(path) => vec![read_pid_file(path)?],
        SignalTarget::ProcessName(name) => {
            let pids = find_processes(Path::new("/proc"), name)?;
            if pids.is_empty() {
                return Err(NotifyError::ProcessNotFound { name: name.clone() });
            }
            pids
        }
    };

    let mut first_error = None;
    for &pid in &pids {
        match signal::kill(Pid::from_raw(pid), signal) {
            Ok(()) => tracing::info!(signal = %signal, pid, "sent the app its reload signal"),
            Err(source) => {
                first_error.get_or_insert(NotifyError::SignalFailed {
                    signal,
                    pid,
                    source,
                });
            }
        }
    }
    match first_error {
        Some(error) => Err(error),
        None => Ok(pids),
    }
}

/// Reads one positive pid from `path`.
///
/// Zero and negative values are rejected because `kill(2)` takes them as
/// process groups or as every process.
pub fn read_pid_file(path: &Path) -> Result<i32, NotifyError> {
    let unreadable = |source| NotifyError::PidFileUnreadable {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(unreadable)?;
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(file, MAX_PID_FILE_BYTES),
        &mut text,
    )
    .map_err(unreadable)?;
    match text.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(NotifyError::PidFileInvalid {
            path: path.to_path_buf(),
            content: text.trim().chars().take(64).collect(),
        }),
    }
}

/// Returns the pids under `proc_root` whose `comm` or argv[0] basename is `name`.
///
/// `comm` contains at most 15 bytes, so longer names match through argv[0]
/// only. This process is never returned.
pub fn find_processes(proc_root: &Path, name: &str) -> Result<Vec<i32>, NotifyError> {
    let own_pid = std::process::id();
    let entries = fs::read_dir(proc_root).map_err(NotifyError::ProcUnreadable)?;
    let mut pids = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|text| text.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own_pid || pid == 0 {
            continue;
        }
        // A process can exit between the listing and the reads; it simply does not match.
        let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if comm.trim_end_matches('\n') == name || argv0_basename(&cmdline) == Some(name) {
            pids.extend(i32::try_from(pid).ok());
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// Returns the basename of the first NUL-terminated word of a `/proc/PID/cmdline`.
fn argv0_basename(cmdline: &[u8]) -> Option<&str> {
    let argv0 = cmdline.split(|&b| b == 0).next()?;
    let argv0 = std::str::from_utf8(argv0).ok()?;
    let basename = argv0.rsplit('/').next()?;
    (!basename.is_empty()).then_some(basename)
}

/// Runs `command` without a shell, logs its output, and waits at most its timeout.
///
/// On timeout the process is killed.
pub async fn run_command(command: &ExecCommand) -> Result<(), NotifyError> {
    let command_line = shell_words::join(&command.argv);
    let Some((program, args)) = command.argv.split_first() else {
        return Err(NotifyError::ExecSpawn {
            program: String::new(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty command"),
        });
    };

    let mut child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| NotifyError::ExecSpawn {
            program: program.clone(),
            source,
        })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();

    let finished = async {
        let (status, stdout, stderr) =
            tokio::join!(child.wait(), read_capped(stdout), read_capped(stderr));
        (status, stdout, stderr)
    };
    let Ok((status, stdout, stderr)) = tokio::time::timeout(command.timeout, finished).await else {
        // Dropping the child kills it (kill_on_drop), and tokio reaps it.
        return Err(NotifyError::ExecTimeout {
            command: command_line,
            timeout: humantime::format_duration(command.timeout).to_string(),
        });
    };

    if !stdout.is_empty() {
        tracing::info!(command = %command_line, stdout = %stdout.trim_end(), "--exec command output");
    }
    if !stderr.is_empty() {
        tracing::info!(command = %command_line, stderr = %stderr.trim_end(), "--exec command error output");
    }
    let status = status.map_err(|source| NotifyError::ExecSpawn {
        program: program.clone(),
        source,
    })?;
    if !status.success() {
        return Err(NotifyError::ExecFailed {
            command: command_line,
            status: status.to_string(),
        });
    }
    tracing::info!(command = %command_line, "ran the --exec command");
    Ok(())
}

/// Reads a pipe to its end and returns its first [`MAX_LOGGED_OUTPUT_BYTES`] as text.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                let room = MAX_LOGGED_OUTPUT_BYTES.saturating_sub(kept.len());
                kept.extend_from_slice(&buffer[..read.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_signal_accepts_short_and_long_names() {
        assert_eq!(parse_signal("HUP"), Ok(Signal::SIGHUP));
        assert_eq!(parse_signal("SIGHUP"), Ok(Signal::SIGHUP));
        assert_eq!(parse_signal("usr1"), Ok(Signal::SIGUSR1));
    }

    #[test]
    fn parse_signal_rejects_numbers_and_unknown_names() {
        let message = parse_signal("1").unwrap_err();
        assert!(message.contains("\"1\""), "{message}");
        assert!(message.contains("SIGHUP"), "{message}");
        assert!(parse_signal("SIGNOPE").is_err());
        assert!(parse_signal("").is_err());
    }

    #[test]
    fn parse_command_splits_quotes() {
        assert_eq!(
            parse_command("nginx -s 'reload now'"),
            Ok(vec![
                "nginx".to_string(),
                "-s".to_string(),
                "reload now".to_string()
            ])
        );
        assert!(parse_command("  ").is_err());
        assert!(parse_command("echo 'open").is_err());
    }

    #[test]
    fn read_pid_file_rejects_zero_negative_and_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.pid");
        for content in ["0\n", "-1\n", "nginx\n", ""] {
            fs::write(&path, content).unwrap();
            let error = read_pid_file(&path).unwrap_err();
            assert!(
                matches!(error, NotifyError::PidFileInvalid { .. }),
                "{content:?}: {error}"
            );
        }
        fs::write(&path, " 4321\n").unwrap();
        assert_eq!(read_pid_file(&path).unwrap(), 4321);
    }

    #[test]
    fn read_pid_file_missing_names_path() {
        let error = read_pid_file(Path::new("/nonexistent/app.pid")).unwrap_err();
        assert!(
            error.to_string().contains("/nonexistent/app.pid"),
            "{error}"
        );
    }

    #[test]
    fn argv0_basename_forms() {
        assert_eq!(argv0_basename(b"/usr/sbin/nginx\0-g\0"), Some("nginx"));
        assert_eq!(argv0_basename(b"envoy\0"), Some("envoy"));
        assert_eq!(argv0_basename(b""), None);
    }

    #[test]
    fn find_processes_matches_comm_and_argv0() {
        let proc_root = tempfile::tempdir().unwrap();
        let add = |pid: &str, comm: &str, cmdline: &[u8]| {
            let dir = proc_root.path().join(pid);
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            fs::write(dir.join("cmdline"), cmdline).unwrap();
        };
        add("10", "nginx", b"nginx: master process\0");
        add("11", "sh", b"/usr/sbin/nginx\0");
        add("12", "sh", b"/bin/sh\0-c\0nginx\0");
        add("13", "a-very-long-pro", b"/opt/a-very-long-program-name\0");
        fs::create_dir(proc_root.path().join("self-not-a-pid")).unwrap();

        assert_eq!(
            find_processes(proc_root.path(), "nginx").unwrap(),
            vec![10, 11]
        );
        assert_eq!(
            find_processes(proc_root.path(), "a-very-long-program-name").unwrap(),
            vec![13]
        );
        assert!(find_processes(proc_root.path(), "envoy")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn send_signal_reaches_pid_file_process() {
        use std::os::unix::process::ExitStatusExt;

        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("app.pid");
        fs::write(&pid_file, format!("{}\n", child.id())).unwrap();

        let target = SignalTarget::PidFile(pid_file);
        let pids = send_signal(Signal::SIGTERM, &target).unwrap();
        let status = child.wait().unwrap();

        assert_eq!(pids, vec![child.id() as i32]);
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32), "{status}");
    }

    #[test]
    fn send_signal_to_missing_name_fails() {
        let target = SignalTarget::ProcessName("meshcert-no-such-process".to_string());
        let error = send_signal(Signal::SIGHUP, &target).unwrap_err();
        assert!(
            matches!(error, NotifyError::ProcessNotFound { .. }),
            "{error}"
        );
    }

    #[tokio::test]
    async fn run_command_reports_exit_status() {
        let command = ExecCommand {
            argv: vec!["false".to_string()],
            timeout: Duration::from_secs(5),
        };
        let error = run_command(&command).await.unwrap_err();
        assert!(matches!(error, NotifyError::ExecFailed { .. }), "{error}");
    }

    #[tokio::test]
    async fn run_command_kills_after_timeout() {
        let command = ExecCommand {
            argv: vec!["sleep".to_string(), "5".to_string()],
            timeout: Duration::from_millis(100),
        };
        let started = std::time::Instant::now();
        let error = run_command(&command).await.unwrap_err();
        assert!(matches!(error, NotifyError::ExecTimeout { .. }), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "timeout took {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn run_command_missing_program_fails_to_spawn() {
        let command = ExecCommand {
            argv: vec!["/nonexistent/reload".to_string()],
            timeout: Duration::from_secs(1),
        };
        let error = run_command(&command).await.unwrap_err();
        assert!(matches!(error, NotifyError::ExecSpawn { .. }), "{error}");
    }

    #[tokio::test]
    async fn run_command_succeeds() {
        let command = ExecCommand {
            argv: vec![
                "sh".to_string(),
                "-c".to_string(),
                "echo reloaded".to_string(),
            ],
            timeout: Duration::from_secs(5),
        };
        run_command(&command).await.unwrap();
    }
}
