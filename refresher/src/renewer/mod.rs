//! The renewal loop: one task that owns the key and set in memory, waits on
//! one-shot timers and events, and renews, publishes, restores and notifies.
//!
//! Between events the loop sleeps on the earliest of its timers; nothing
//! wakes it periodically.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use meshcert_common::bundle::{rfc3339, CertSet};
use meshcert_common::certdir::CertDir;
use meshcert_common::csr::PrivateKey;
use meshcert_common::issue::{self, Issued, Issuer};
use meshcert_common::notify::{Method, Notifier, NotifyError};
use meshcert_common::outputs::ExtraOutputs;
use meshcert_common::schedule::{Backoff, RenewPolicy};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;

use crate::attempt::{self, AttemptError, PendingAttempt};
use crate::http::{RenewReply, RenewRequest, Shared};
use crate::watch::{Changes, DirWatch};

mod watched;

/// Outcome of each notification method after one swap.
type NotifyOutcomes = Vec<(Method, Result<(), NotifyError>)>;

/// Wait after the first event of a burst before looking at the files, so a
/// ConfigMap update or one publish (several events each) is handled once.
const DEBOUNCE: Duration = Duration::from_millis(150);

/// The set this process published last, kept to publish it again.
struct Published {
    key: PrivateKey,
    set: CertSet,
    generation: String,
}

/// Deadlines of the one-shot timers; `None` means not armed.
#[derive(Debug, Clone, Copy, Default)]
struct Timers {
    /// Next issuance attempt: scheduled renewal or retry.
    renew: Option<Instant>,
    /// Publication of the held set.
    publish: Option<Instant>,
    /// Expiry of the current set, to log it.
    expiry: Option<Instant>,
    /// End of the debounce window of CA root directory events.
    ca_root_check: Option<Instant>,
    /// End of the debounce window of output directory events.
    out_dir_check: Option<Instant>,
}

enum Event {
    Stop(&'static str),
    AttemptDone(Box<Result<Issued, AttemptError>>),
    NotificationDone(Result<NotifyOutcomes, JoinError>),
    RenewRequested(RenewRequest),
    Watched(Changes),
    RenewDue,
    PublishDue,
    Expired,
    CaRootCheckDue,
    OutDirCheckDue,
}

/// Everything the loop needs, built by `main` after start-up checks.
pub(crate) struct Settings {
    pub(crate) issuer: Issuer,
    pub(crate) dir: CertDir,
    pub(crate) policy: RenewPolicy,
    pub(crate) backoff: Backoff,
    pub(crate) notifier: Notifier,
    pub(crate) extras: ExtraOutputs,
}

pub(crate) struct Renewer {
    issuer: Issuer,
    dir: CertDir,
    policy: RenewPolicy,
    backoff: Backoff,
    /// Backoff of failed restorations of the output directory.
    restore_backoff: Backoff,
    notifier: Notifier,
    /// Optional files (PKCS#12, one-file bundle) published beside the standard three.
    extras: ExtraOutputs,
    shared: Arc<Shared>,
    watch: DirWatch,
    renew_requests: mpsc::Receiver<RenewRequest>,
    current: Option<Published>,
    /// A new set not yet published: valid only in the future, or its publish failed.
    held: Option<Issued>,
    attempt: Option<PendingAttempt>,
    /// Another attempt must follow the running one, because the CA root changed or the set was lost meanwhile.
    renew_again: bool,
    /// `POST /renew` requests waiting for the running attempt.
    waiters: Vec<RenewRequest>,
    notification: Option<JoinHandle<NotifyOutcomes>>,
    /// A swap happened while the app was being notified; notify once more after.
    notify_again: bool,
    timers: Timers,
}

impl Renewer {
    pub(crate) fn new(
        settings: Settings,
        shared: Arc<Shared>,
        watch: DirWatch,
        renew_requests: mpsc::Receiver<RenewRequest>,
    ) -> Self {
        let restore_backoff = settings.backoff.clone();
        Self {
            issuer: settings.issuer,
            dir: settings.dir,
            policy: settings.policy,
            backoff: settings.backoff,
            restore_backoff,
            notifier: settings.notifier,
            extras: settings.extras,
            shared,
            watch,
            renew_requests,
            current: None,
            held: None,
            attempt: None,
            renew_again: false,
            waiters: Vec::new(),
            notification: None,
            notify_again: false,
            timers: Timers::default(),
        }
    }

    /// Runs until SIGTERM or SIGINT and returns the signal's name. The
    /// published files are left in place.
    pub(crate) async fn run(mut self) -> std::io::Result<&'static str> {
        let mut terminate = signal(SignalKind::terminate())?;
        let mut interrupt = signal(SignalKind::interrupt())?;

        self.adopt_published();
        loop {
            let event = self.next_event(&mut terminate, &mut interrupt).await;
            match event {
                Event::Stop(signal_name) => return Ok(signal_name),
                Event::AttemptDone(result) => self.on_attempt_done(*result),
                Event::NotificationDone(result) => self.on_notification_done(result),
                Event::RenewRequested(request) => {
                    // A request during an attempt waits for that attempt's result.
                    self.waiters.push(request);
                    if self.attempt.is_none() {
                        self.request_renewal("requested through POST /renew");
                    }
                }
                Event::Watched(changes) => self.on_watched(changes),
                Event::RenewDue => {
                    self.timers.renew = None;
                    self.request_renewal("scheduled");
                }
                Event::PublishDue => {
                    self.timers.publish = None;
                    self.publish_held();
                }
                Event::Expired => self.on_expired(),
                Event::CaRootCheckDue => {
                    self.timers.ca_root_check = None;
                    self.check_ca_root();
                }
                Event::OutDirCheckDue => {
                    self.timers.out_dir_check = None;
                    self.check_out_dir();
                }
            }
        }
    }

    async fn next_event(&mut self, terminate: &mut Signal, interrupt: &mut Signal) -> Event {
        let timers = self.timers;
        tokio::select! {
            _ = terminate.recv() => Event::Stop("SIGTERM"),
            _ = interrupt.recv() => Event::Stop("SIGINT"),
            result = attempt::wait(&mut self.attempt) => Event::AttemptDone(Box::new(result)),
            result = wait_notification(&mut self.notification) => Event::NotificationDone(result),
            Some(request) = self.renew_requests.recv() => Event::RenewRequested(request),
            changes = self.watch.changed() => Event::Watched(changes),
            () = sleep_until(timers.renew) => Event::RenewDue,
            () = sleep_until(timers.publish) => Event::PublishDue,
            () = sleep_until(timers.expiry) => Event::Expired,
            () = sleep_until(timers.ca_root_check) => Event::CaRootCheckDue,
            () = sleep_until(timers.out_dir_check) => Event::OutDirCheckDue,
        }
    }

    /// Keeps a valid published set for our identity, or issues one at once
    /// when none is published or it is due.
    fn adopt_published(&mut self) {
        let now = SystemTime::now();
        let spiffe_id = &self.issuer.spiffe_id;
        let missing = self.extras.missing_in(self.dir.path());
        if !missing.is_empty() {
            tracing::info!(
                ?missing,
                "the published set lacks configured output files; requesting a new one now"
            );
            self.request_renewal("configured output files are missing");
            return;
        }
        let (key, set) = match issue::read_published(&self.dir, spiffe_id, now) {
            Ok(published) => published,
            Err(error) => {
                tracing::info!(%spiffe_id, dir = ?self.dir.path(), reason = %error, "no usable set is published; requesting one now");
                self.request_renewal("no usable set is published");
                return;
            }
        };

        let due = self.policy.is_due(&set, now);
        tracing::info!(
            %spiffe_id,
            serial = %set.serial,
            expires_at = %rfc3339(set.expires_at),
            due,
            "found a valid published set; keeping it"
        );
        self.adopt(key, set, self.dir.current_generation().unwrap_or_default());
        if due {
            self.request_renewal("the published set is due for renewal");
        } else {
            self.schedule_renewal();
        }
    }

    fn adopt(&mut self, key: PrivateKey, set: CertSet, generation: String) {
        self.shared.metrics.set_expiry(set.expires_at);
        self.timers.expiry = Some(instant_at(set.expires_at));
        self.current = Some(Published {
            key,
            set,
            generation,
        });
    }

    /// Starts an attempt now, or after the running one.
    fn request_renewal(&mut self, cause: &'static str) {
        if self.attempt.is_some() {
            self.renew_again = true;
            return;
        }
        self.timers.renew = None;
        self.shared.metrics.set_next_renewal(None);
        tracing::info!(
            spiffe_id = %self.issuer.spiffe_id,
            ca_addr = %self.issuer.ca.addr,
            cause,
            "requesting a new certificate"
        );
        match attempt::spawn(self.issuer.clone()) {
            Ok(pending) => self.attempt = Some(pending),
            Err(error) => self.on_attempt_failed(error),
        }
    }

    fn on_attempt_done(&mut self, result: Result<Issued, AttemptError>) {
        self.attempt = None;
        match result {
            Ok(issued) => self.on_issued(issued),
            Err(error) => self.on_attempt_failed(error),
        }
        if self.renew_again {
            self.renew_again = false;
            self.request_renewal("requested again during the previous attempt");
        }
    }

    fn on_issued(&mut self, issued: Issued) {
        let set = &issued.set;
        self.shared.metrics.record_ca_latency(issued.ca_latency);
        tracing::info!(
            spiffe_id = %self.issuer.spiffe_id,
            serial = %set.serial,
            not_before = %rfc3339(set.not_before),
            expires_at = %rfc3339(set.expires_at),
            ca_latency_ms = issued.ca_latency.as_millis() as u64,
            "received a new certificate"
        );

        let ahead = set
            .valid_from
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        if !ahead.is_zero() {
            tracing::warn!(
                serial = %set.serial,
                valid_from = %rfc3339(set.valid_from),
                skew = %format_duration(ahead),
                "the new certificate is not valid yet because the CA's clock runs ahead of ours; the current set stays published until it is"
            );
            self.reply_all(|| RenewReply::Held {
                serial: issued.set.serial.clone(),
                valid_from: issued.set.valid_from,
            });
            self.timers.publish = Some(Instant::now() + ahead);
            self.held = Some(issued);
            return;
        }
        self.held = Some(issued);
        self.publish_held();
    }

    fn on_attempt_failed(&mut self, error: AttemptError) {
        self.shared.metrics.record_failure(error.reason);
        let delay = self.schedule_retry();
        tracing::warn!(
            spiffe_id = %self.issuer.spiffe_id,
            attempt = self.backoff.attempts(),
            reason = error.reason,
            error = %error.message,
            retry_in = %format_duration(delay),
            "requesting a certificate failed; the published set stays and the request is retried"
        );
        self.reply_all(|| RenewReply::Failed {
            reason: error.reason,
            error: error.message.clone(),
        });
    }

    /// Publishes the held set, notifies the app and schedules the next renewal.
    fn publish_held(&mut self) {
        let Some(issued) = self.held.take() else {
            return;
        };
        if SystemTime::now() >= issued.set.expires_at {
            self.on_attempt_failed(AttemptError {
                reason: "expired_before_publish",
                message: format!(
                    "the new set (serial {}) expired at {} before it could be published",
                    issued.set.serial,
                    rfc3339(issued.set.expires_at)
                ),
            });
            return;
        }

        let published = publish_files(&self.dir, &self.extras, &issued.key, &issued.set);
        let generation = match published {
            Ok(generation) => generation,
            Err(error) => {
                self.shared.metrics.record_failure("publish");
                let delay = cap_at_expiry(self.backoff.next_delay(), &issued.set);
                tracing::warn!(
                    serial = %issued.set.serial,
                    error = %error,
                    retry_in = %format_duration(delay),
                    "publishing the new set failed; the previous set stays published and the publish is retried"
                );
                self.reply_all(|| RenewReply::Failed {
                    reason: "publish",
                    error: error.clone(),
                });
                self.timers.publish = Some(Instant::now() + delay);
                self.held = Some(issued);
                return;
            }
        };

        let Issued { key, set, .. } = issued;
        tracing::info!(
            spiffe_id = %self.issuer.spiffe_id,
            serial = %set.serial,
            not_before = %rfc3339(set.not_before),
            expires_at = %rfc3339(set.expires_at),
            generation = %generation,
            dir = ?self.dir.path(),
            "published a new certificate set"
        );
        self.shared.metrics.record_success();
        self.reply_all(|| RenewReply::Published {
            serial: set.serial.clone(),
            expires_at: set.expires_at,
            generation: generation.clone(),
        });
        self.adopt(key, set, generation);
        self.notify_app();
        self.schedule_after_publish();
    }

    fn schedule_after_publish(&mut self) {
        let Some(current) = &self.current else {
            return;
        };
        if self.policy.is_due(&current.set, SystemTime::now()) {
            tracing::warn!(
                serial = %current.set.serial,
                expires_at = %rfc3339(current.set.expires_at),
                lifetime = %format_duration(current.set.lifetime()),
                "the new set is already due for renewal, so a certificate in its chain (such as the intermediate) expires soon; retrying with backoff"
            );
            self.schedule_retry();
            return;
        }
        self.backoff.reset();
        self.schedule_renewal();
    }

    fn schedule_renewal(&mut self) {
        let Some(current) = &self.current else {
            return;
        };
        let renew_at = self.policy.renew_at(&current.set);
        tracing::info!(
            serial = %current.set.serial,
            renew_at = %rfc3339(renew_at),
            "scheduled the next renewal"
        );
        self.timers.renew = Some(instant_at(renew_at));
        self.shared.metrics.set_next_renewal(Some(renew_at));
    }

    /// Arms the renewal timer after a backoff delay, never past the current
    /// set's expiry, and returns the delay.
    fn schedule_retry(&mut self) -> Duration {
        let mut delay = self.backoff.next_delay();
        if let Some(current) = &self.current {
            delay = cap_at_expiry(delay, &current.set);
        }
        self.timers.renew = Some(Instant::now() + delay);
        self.shared
            .metrics
            .set_next_renewal(Some(SystemTime::now() + delay));
        delay
    }

    fn on_expired(&mut self) {
        self.timers.expiry = None;
        let Some(current) = &self.current else {
            return;
        };
        if SystemTime::now() < current.set.expires_at {
            // The wall clock moved back since the timer was armed.
            self.timers.expiry = Some(instant_at(current.set.expires_at));
            return;
        }
        tracing::error!(
            spiffe_id = %self.issuer.spiffe_id,
            serial = %current.set.serial,
            expired_at = %rfc3339(current.set.expires_at),
            "the published certificate set has expired; TLS with it fails until a renewal succeeds"
        );
    }

    fn notify_app(&mut self) {
        if self.notifier.is_empty() {
            return;
        }
        if self.notification.is_some() {
            self.notify_again = true;
            return;
        }
        let notifier = self.notifier.clone();
        self.notification = Some(tokio::spawn(async move { notifier.notify().await }));
    }

    fn on_notification_done(&mut self, result: Result<NotifyOutcomes, JoinError>) {
        self.notification = None;
        match result {
            Ok(outcomes) => {
                for (method, outcome) in outcomes {
                    self.shared
                        .metrics
                        .record_notification(method, outcome.is_ok());
                }
            }
            Err(error) => tracing::error!(error = %error, "the notification task failed"),
        }
        if self.notify_again {
            self.notify_again = false;
            self.notify_app();
        }
    }

    fn reply_all(&mut self, reply: impl Fn() -> RenewReply) {
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(reply());
        }
    }
}

/// Builds every output file of a set, extras included, and publishes them as one generation.
fn publish_files(
    dir: &CertDir,
    extras: &ExtraOutputs,
    key: &PrivateKey,
    set: &CertSet,
) -> Result<String, String> {
    let files = extras.files(key, set).map_err(|e| e.to_string())?;
    dir.publish(&files).map_err(|e| e.to_string())
}

/// Shortens `delay` so it ends no later than `set` expires.
fn cap_at_expiry(delay: Duration, set: &CertSet) -> Duration {
    match set.expires_at.duration_since(SystemTime::now()) {
        Ok(left) => delay.min(left),
        Err(_) => delay,
    }
}

/// Converts a wall-clock time to a monotonic deadline; past times become now.
fn instant_at(time: SystemTime) -> Instant {
    let from_now = time.duration_since(SystemTime::now()).unwrap_or_default();
    Instant::now() + from_now
}

/// Sleeps until `deadline`, or forever when it is `None`.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn wait_notification(
    notification: &mut Option<JoinHandle<NotifyOutcomes>>,
) -> Result<NotifyOutcomes, JoinError> {
    match notification.as_mut() {
        Some(handle) => handle.await,
        None => std::future::pending().await,
    }
}

/// Formats a duration to the millisecond, such as `1s 250ms`.
fn format_duration(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(duration.as_millis() as u64))
}
