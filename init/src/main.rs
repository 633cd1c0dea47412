//! `meshcert-init`: obtains the first valid certificate set, publishes it and exits.
//!
//! Exit codes: 0 a valid set is on disk (issued now or reused); 1 the
//! issuance was refused (CA rejection, expired or rejected token, invalid
//! answer); 2 invalid settings or local environment; 3 the deadline passed
//! while the CA was unreachable or failing transiently.

use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use clap::Parser;
use meshcert_common::bundle::rfc3339;
use meshcert_common::ca::CaError;
use meshcert_common::certdir::CertDir;
use meshcert_common::identity::{self, IdentityError, Token};
use meshcert_common::issue::{self, IssueError, Issuer, PublishedError};
use meshcert_common::outputs::{ExtraOutputs, OutputArgs};
use meshcert_common::schedule::{Backoff, RenewPolicy};
use meshcert_common::settings::{parse_positive_duration, CaSettings};
use meshcert_common::status::{self, StatusArgs};
use tokio::time::Instant;

#[derive(Debug, Parser)]
#[command(
    name = "meshcert-init",
    version,
    about = "Obtain a workload certificate set from the Istio CA, publish it, and exit",
    args_override_self = true,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    settings: CaSettings,

    #[command(flatten)]
    outputs: OutputArgs,

    /// Total time to keep retrying transient CA failures before exiting with code 3.
    #[arg(long, env = "INIT_TIMEOUT", default_value = "5m", value_parser = parse_positive_duration)]
    timeout: Duration,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Report what is published in --out-dir: identity, serial, key type, validity, renewal time, chain, roots, file modes; exits 0 only if the set is valid. Reads files only.
    Status(StatusArgs),
}

/// A failure with its exit code.
#[derive(Debug)]
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn new(code: u8, error: impl std::fmt::Display) -> Self {
        Self {
            code,
            message: error.to_string(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Status(args)) = &cli.command {
        return ExitCode::from(status::print_status(args));
    }
    meshcert_common::telemetry::init_logging(cli.settings.log_format);
    tracing::debug!(version = env!("CARGO_PKG_VERSION"), "meshcert-init started");

    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(error = %error, "starting the async runtime failed");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            tracing::error!(exit_code = failure.code, "{}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(cli: &Cli) -> Result<(), Failure> {
    let settings = &cli.settings;
    settings
        .check()
        .map_err(|message| Failure::new(2, message))?;

    let spiffe_id = identity::resolve_identity(
        &settings.trust_domain,
        settings.namespace.as_deref(),
        settings.service_account.as_deref(),
        &settings.token_file,
    )
    .map_err(identity_failure)?;
    let token = Token::read(&settings.token_file).map_err(identity_failure)?;
    token
        .check_not_expired(SystemTime::now())
        .map_err(identity_failure)?;
    drop(token);

    let extras = ExtraOutputs::load(&cli.outputs).map_err(|e| Failure::new(2, e))?;
    let issuer = Issuer::from_settings(settings, spiffe_id).map_err(ca_failure)?;
    let dir = CertDir::new(&settings.out_dir, settings.group);
    dir.prepare().map_err(|e| Failure::new(2, e))?;

    let policy = RenewPolicy {
        ratio: settings.renew_ratio,
        jitter: settings.renew_jitter,
    };
    if reuse_published(&dir, &issuer, &policy, &extras) {
        return Ok(());
    }
    issue_until_deadline(cli, &issuer, &dir, &extras, &policy).await
}

/// Returns true if a valid set for our identity that is not yet due is published.
fn reuse_published(
    dir: &CertDir,
    issuer: &Issuer,
    policy: &RenewPolicy,
    extras: &ExtraOutputs,
) -> bool {
    let now = SystemTime::now();
    let missing = extras.missing_in(dir.path());
    if !missing.is_empty() {
        tracing::info!(missing = ?missing, "published set lacks configured output files; issuing");
        return false;
    }
    match issue::read_published(dir, &issuer.spiffe_id, now) {
        Ok((_key, set)) if !policy.is_due(&set, now) => {
            tracing::info!(
                spiffe_id = %issuer.spiffe_id,
                serial = %set.serial,
                expires_at = %rfc3339(set.expires_at),
                dir = %dir.path().display(),
                "reusing the published set; it is valid and not yet due for renewal"
            );
            true
        }
        Ok((_key, set)) => {
            tracing::info!(serial = %set.serial, "published set is due for renewal; issuing a new one");
            false
        }
        Err(PublishedError::Files(error)) => {
            tracing::debug!(error = %error, "no usable published set; issuing");
            false
        }
        Err(error) => {
            tracing::info!(error = %error, "published set is not usable; issuing a new one");
            false
        }
    }
}

async fn issue_until_deadline(
    cli: &Cli,
    issuer: &Issuer,
    dir: &CertDir,
    extras: &ExtraOutputs,
    policy: &RenewPolicy,
) -> Result<(), Failure> {
    let settings = &cli.settings;
    let deadline = Instant::now() + cli.timeout;
    let mut backoff = Backoff::new(settings.retry_initial_backoff, settings.retry_max_backoff);
    let mut last_error = String::from("the first attempt did not finish");
    let give_up = |last_error: &str| {
        Failure::new(
            3,
            format!(
                "no certificate after --timeout {}: CA {} was unreachable or failing; last error: {last_error}",
                humantime::format_duration(cli.timeout),
                issuer.ca.addr
            ),
        )
    };

    loop {
        let attempt = tokio::time::timeout_at(deadline, issuer.issue()).await;
        let (reason, message) = match attempt {
            Err(_elapsed) => return Err(give_up(&last_error)),
            Ok(Ok(issued)) if policy.is_due(&issued.set, SystemTime::now()) => (
                "issued_set_due",
                format!(
                    "CA {} issued a chain that is already due for renewal (it expires at {}); an intermediate may be about to expire",
                    issuer.ca.addr,
                    rfc3339(issued.set.expires_at)
                ),
            ),
            Ok(Ok(issued)) => {
                return publish_when_valid(issued, issuer, dir, extras, deadline, cli).await
            }
            Ok(Err(error)) if !error.is_transient() => return Err(issue_failure(error)),
            Ok(Err(error)) => (error.reason(), error.to_string()),
        };
        last_error = message;

        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(give_up(&last_error));
        }
        let delay = backoff.next_delay().min(remaining);
        tracing::warn!(
            attempt = backoff.attempts(),
            retry_in = %humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
            reason,
            error = %last_error,
            "CA request failed; retrying"
        );
        tokio::time::sleep(delay).await;
    }
}

async fn publish_when_valid(
    issued: issue::Issued,
    issuer: &Issuer,
    dir: &CertDir,
    extras: &ExtraOutputs,
    deadline: Instant,
    cli: &Cli,
) -> Result<(), Failure> {
    let set = &issued.set;
    if let Ok(ahead) = set.valid_from.duration_since(SystemTime::now()) {
        tracing::warn!(
            valid_from = %rfc3339(set.valid_from),
            skew = %humantime::format_duration(Duration::from_millis(ahead.as_millis() as u64)),
            "the certificate is not valid yet; the CA's clock runs ahead of ours; holding it until it is"
        );
        if Instant::now() + ahead >= deadline {
            return Err(Failure::new(
                3,
                format!(
                    "the certificate becomes valid at {}, after --timeout {} ends",
                    rfc3339(set.valid_from),
                    humantime::format_duration(cli.timeout)
                ),
            ));
        }
        tokio::time::sleep(ahead).await;
    }
    if !set.is_valid_at(SystemTime::now()) {
        return Err(Failure::new(
            1,
            format!(
                "the certificate from CA {} expired at {} before it could be published",
                issuer.ca.addr,
                rfc3339(set.expires_at)
            ),
        ));
    }

    let files = extras
        .files(&issued.key, set)
        .map_err(|e| Failure::new(1, e))?;
    let generation = dir.publish(&files).map_err(|e| Failure::new(2, e))?;
    tracing::info!(
        spiffe_id = %issuer.spiffe_id,
        serial = %set.serial,
        not_before = %rfc3339(set.not_before),
        expires_at = %rfc3339(set.expires_at),
        generation = %generation,
        dir = %dir.path().display(),
        ca_latency_ms = issued.ca_latency.as_millis() as u64,
        "published a new certificate set"
    );
    Ok(())
}

fn identity_failure(error: IdentityError) -> Failure {
    match error {
        IdentityError::TokenExpired { .. } => Failure::new(1, error),
        _ => Failure::new(2, error),
    }
}

fn ca_failure(error: CaError) -> Failure {
    match error {
        CaError::InvalidAddress { .. }
        | CaError::RootUnreadable { .. }
        | CaError::RootInvalid { .. }
        | CaError::TokenNotHeaderSafe { .. } => Failure::new(2, error),
        CaError::Connect { .. } | CaError::Timeout { .. } => Failure::new(3, error),
        CaError::Rejected { .. } | CaError::Status { .. } => Failure::new(1, error),
    }
}

fn issue_failure(error: IssueError) -> Failure {
    match error {
        IssueError::Identity(error) => identity_failure(error),
        IssueError::Ca(error) => ca_failure(error),
        IssueError::Csr(_) | IssueError::Invalid { .. } => Failure::new(1, error),
    }
}
