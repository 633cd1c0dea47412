//! Command line of `meshcert-refresher`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand};
use http::Uri;
use meshcert_common::notify::{self, ExecCommand, Notifier, Signal, SignalTarget};
use meshcert_common::outputs::OutputArgs;
use meshcert_common::reload::{self, HttpReload};
use meshcert_common::settings::{parse_positive_duration, CaSettings};
use meshcert_common::status::StatusArgs;

#[derive(Debug, Parser)]
#[command(
    name = "meshcert-refresher",
    version,
    about = "Keep the workload certificate set in --out-dir valid: renew it before it expires, swap it atomically, notify the app, and serve readiness and metrics",
    args_override_self = true,
    args_conflicts_with_subcommands = true
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,

    #[command(flatten)]
    pub(crate) settings: CaSettings,

    /// Address of GET /ready, /healthz and /metrics, for kubelet probes and Prometheus; port 0 picks a free port.
    #[arg(long, env = "PROBE_ADDR", default_value = "0.0.0.0:9851", value_parser = parse_listen_addr)]
    pub(crate) probe_addr: SocketAddr,

    /// Address of the probe endpoints plus POST /renew, which renews at once and returns 200 when the new set is published, 202 when it is held until its notBefore, or 502 when the attempt failed. Keep it on loopback, which every container of the pod shares.
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9852", value_parser = parse_listen_addr)]
    pub(crate) admin_addr: SocketAddr,

    #[command(flatten)]
    pub(crate) outputs: OutputArgs,

    #[command(flatten)]
    pub(crate) notify: NotifyArgs,
}

#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at start; boxing would only complicate clap's derive"
)]
pub(crate) enum Command {
    /// Check the published set for exec probes. Exits 0 if a complete, valid, unexpired set for this workload's identity is published in --out-dir, else 1 with the reason on stderr.
    Probe(ProbeArgs),
    /// Report what is published in --out-dir: identity, serial, key type, validity, renewal time, chain, roots, file modes; exits 0 only if the set is valid. Reads files only.
    Status(StatusArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ProbeArgs {
    #[command(flatten)]
    pub(crate) settings: CaSettings,
}

/// App notification settings, used beyond the swap of `..data` itself.
#[derive(Debug, Args)]
#[command(
    next_help_heading = "App notification (the swap of ..data alone notifies apps that watch the directory)"
)]
pub(crate) struct NotifyArgs {
    /// Signal sent to the app after each swap, by name such as HUP or SIGHUP; needs --pid-file or --process-name. Signalling another container needs `shareProcessNamespace: true` in the pod and the same uid as the app or CAP_KILL.
    #[arg(long, value_name = "SIG", value_parser = notify::parse_signal)]
    pub(crate) signal: Option<Signal>,

    /// File containing the pid of the process that gets --signal; read at every signal, never cached.
    #[arg(long, value_name = "PATH", conflicts_with = "process_name")]
    pub(crate) pid_file: Option<PathBuf>,

    /// Name of the processes that get --signal, compared with /proc/PID/comm and the basename of argv[0] at every signal.
    #[arg(long, value_name = "NAME")]
    pub(crate) process_name: Option<String>,

    /// Command run after each swap, such as "nginx -s reload"; split into words like a shell does but run without a shell. Its output is logged.
    #[arg(long, value_name = "CMD", value_parser = parse_exec)]
    pub(crate) exec: Option<CommandLine>,

    /// Time limit of --exec, such as `10s`; the command is killed when it passes.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub(crate) exec_timeout: Duration,

    /// App reload endpoint requested after each swap, such as http://127.0.0.1:9090/-/reload for Prometheus; repeat for several. Needs no shared process namespace. 2xx is success.
    #[arg(long, env = "RELOAD_URL", value_name = "URL", value_delimiter = ',', value_parser = reload::parse_reload_url)]
    pub(crate) reload_url: Vec<Uri>,

    /// HTTP method of the --reload-url requests.
    #[arg(long, env = "RELOAD_METHOD", value_name = "METHOD", default_value = "POST", value_parser = reload::parse_reload_method)]
    pub(crate) reload_method: http::Method,

    /// Time limit of each --reload-url request, such as `5s`.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_positive_duration)]
    pub(crate) reload_timeout: Duration,

    /// Attempts per --reload-url request after each swap; failures wait 200 ms, doubling, between attempts.
    #[arg(long, value_name = "COUNT", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub(crate) reload_attempts: u32,
}

/// A command split into words by [`notify::parse_command`].
#[derive(Debug, Clone)]
pub(crate) struct CommandLine(Vec<String>);

/// Parses a listen address; unlike the plain `SocketAddr` parser, the
/// error shows the accepted form.
fn parse_listen_addr(value: &str) -> Result<SocketAddr, String> {
    value.trim().parse().map_err(|_| {
        format!(
            "invalid address {value:?}: expected an IP address and a port, such as 127.0.0.1:9852 or [::1]:9852; port 0 picks a free port"
        )
    })
}

fn parse_exec(value: &str) -> Result<CommandLine, String> {
    notify::parse_command(value).map(CommandLine)
}

impl NotifyArgs {
    /// Builds the notifier, or exits with code 2 and a usage error when
    /// `--signal` and its target do not come together.
    pub(crate) fn notifier(&self) -> Notifier {
        let target = match (&self.pid_file, &self.process_name) {
            (Some(path), _) => Some(SignalTarget::PidFile(path.clone())),
            (None, Some(name)) => Some(SignalTarget::ProcessName(name.clone())),
            (None, None) => None,
        };
        let signal = match (self.signal, target) {
            (Some(signal), Some(target)) => Some((signal, target)),
            (None, None) => None,
            (Some(signal), None) => usage_error(
                ErrorKind::MissingRequiredArgument,
                format!("--signal {signal} needs a target: add --pid-file PATH or --process-name NAME"),
            ),
            (None, Some(_)) => usage_error(
                ErrorKind::MissingRequiredArgument,
                "--pid-file and --process-name name the process that gets --signal; add --signal, such as --signal HUP".to_string(),
            ),
        };
        let exec = self.exec.as_ref().map(|command| ExecCommand {
            argv: command.0.clone(),
            timeout: self.exec_timeout,
        });
        let http = self
            .reload_url
            .iter()
            .map(|url| HttpReload {
                url: url.clone(),
                method: self.reload_method.clone(),
                timeout: self.reload_timeout,
                attempts: self.reload_attempts,
            })
            .collect();
        Notifier { signal, exec, http }
    }
}

/// Prints a clap-formatted usage error and exits with code 2.
pub(crate) fn usage_error(kind: ErrorKind, message: String) -> ! {
    Cli::command().error(kind, message).exit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut argv = vec!["meshcert-refresher"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv)
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn signal_with_pid_file_builds_notifier() {
        let cli = parse(&["--signal", "HUP", "--pid-file", "/run/app.pid"]).unwrap();
        let notifier = cli.notify.notifier();
        assert_eq!(
            notifier.signal,
            Some((
                Signal::SIGHUP,
                SignalTarget::PidFile(PathBuf::from("/run/app.pid"))
            ))
        );
        assert!(notifier.exec.is_none());
    }

    #[test]
    fn bad_listen_addr_shows_accepted_form() {
        for flag in ["--probe-addr", "--admin-addr"] {
            let message = parse(&[flag, "localhost"]).unwrap_err().to_string();
            assert!(message.contains(flag), "{message}");
            assert!(message.contains("such as 127.0.0.1:9852"), "{message}");
        }
    }

    #[test]
    fn unknown_signal_names_flag() {
        let error = parse(&["--signal", "BOGUS", "--pid-file", "/run/app.pid"]).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("--signal"), "{message}");
        assert!(message.contains("SIGHUP"), "{message}");
    }

    #[test]
    fn pid_file_conflicts_with_process_name() {
        let error = parse(&[
            "--signal",
            "HUP",
            "--pid-file",
            "/run/app.pid",
            "--process-name",
            "nginx",
        ])
        .unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn exec_splits_words_and_keeps_timeout() {
        let cli = parse(&["--exec", "nginx -s 'reload'", "--exec-timeout", "3s"]).unwrap();
        let exec = cli.notify.notifier().exec.unwrap();
        assert_eq!(exec.argv, vec!["nginx", "-s", "reload"]);
        assert_eq!(exec.timeout, Duration::from_secs(3));
    }

    #[test]
    fn probe_subcommand_takes_settings() {
        let cli = parse(&["probe", "--out-dir", "/tmp/certs"]).unwrap();
        let Some(Command::Probe(args)) = cli.command else {
            panic!("expected the probe subcommand");
        };
        assert_eq!(args.settings.out_dir, PathBuf::from("/tmp/certs"));
    }
}
