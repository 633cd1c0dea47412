//! One issuance attempt, run on its own thread with its own runtime.
//!
//! Key generation is CPU work that blocks (an RSA-4096 key can take a
//! second or more), and the main runtime has one thread that also serves
//! the probes and handles SIGTERM. The attempt's runtime, and with it the CA connection,
//! is dropped when the attempt ends, so nothing stays open between
//! renewals. On exit the process does not wait for a running attempt.

use meshcert_common::issue::{Issued, Issuer};
use tokio::sync::oneshot;

/// Failure of one attempt, as logged and counted.
#[derive(Debug)]
pub(crate) struct AttemptError {
    /// Short label for metrics, such as `connect` or `invalid_answer`.
    pub(crate) reason: &'static str,
    /// The error message.
    pub(crate) message: String,
}

/// Result receiver of a running attempt.
pub(crate) type PendingAttempt = oneshot::Receiver<Result<Issued, AttemptError>>;

/// Starts `issuer.issue()` on a new thread.
pub(crate) fn spawn(issuer: Issuer) -> Result<PendingAttempt, AttemptError> {
    let start_failed = |error: std::io::Error| AttemptError {
        reason: "internal",
        message: format!("starting the issuance thread failed: {error}"),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(start_failed)?;
    let (sender, receiver) = oneshot::channel();
    std::thread::Builder::new()
        .name("meshcert-issue".to_string())
        .spawn(move || {
            let result = runtime
                .block_on(issuer.issue())
                .map_err(|error| AttemptError {
                    reason: error.reason(),
                    message: error.to_string(),
                });
            let _ = sender.send(result);
        })
        .map_err(start_failed)?;
    Ok(receiver)
}

/// Waits for the running attempt, if any; never returns without one.
///
/// Cancel-safe: polling the receiver through `&mut` keeps its result for
/// the next call when another `select!` branch wins.
pub(crate) async fn wait(pending: &mut Option<PendingAttempt>) -> Result<Issued, AttemptError> {
    let Some(receiver) = pending.as_mut() else {
        return std::future::pending().await;
    };
    match receiver.await {
        Ok(result) => result,
        Err(_closed) => Err(AttemptError {
            reason: "internal",
            message: "the issuance thread ended without a result".to_string(),
        }),
    }
}
