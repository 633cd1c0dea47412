//! HTTP/1 endpoints: `/ready`, `/healthz` and `/metrics` on the probe
//! address, and those plus `POST /renew` on the admin address.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{ALLOW, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use meshcert_common::bundle::rfc3339;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::metrics::{self, Metrics};
use crate::readiness::Readiness;

/// Open connections served at once per listener; more are closed on accept.
const MAX_CONNECTIONS: usize = 64;

/// Time a client gets to send a request's headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Maximum wait of `POST /renew` for the attempt it started.
const RENEW_REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// Outcome of a renewal that `POST /renew` waits for.
#[derive(Debug)]
pub(crate) enum RenewReply {
    /// A new set was published.
    Published {
        serial: String,
        expires_at: SystemTime,
        generation: String,
    },
    /// A new set was issued but becomes valid only later; it is published then.
    Held {
        serial: String,
        valid_from: SystemTime,
    },
    /// The attempt failed; a retry is scheduled with backoff.
    Failed { reason: &'static str, error: String },
}

/// A `POST /renew` request waiting for the renewal loop.
pub(crate) type RenewRequest = oneshot::Sender<RenewReply>;

/// Set of endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Endpoints {
    /// `/ready`, `/healthz`, `/metrics`.
    Probe,
    /// The probe endpoints and `POST /renew`.
    Admin,
}

/// State the handlers read.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) metrics: Metrics,
    pub(crate) readiness: Readiness,
    pub(crate) renew_requests: mpsc::Sender<RenewRequest>,
}

type HttpResponse = Response<Full<Bytes>>;

/// Accepts connections on `listener` until the runtime stops.
pub(crate) async fn serve(listener: TcpListener, endpoints: Endpoints, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Such as EMFILE: pause so a persistent error does not spin.
                tracing::warn!(error = %error, ?endpoints, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tracing::warn!(%peer, ?endpoints, limit = MAX_CONNECTIONS, "too many open connections; closing the new one");
            continue;
        };

        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(route(request, endpoints, &shared).await) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%peer, error = %error, "HTTP connection ended with an error");
            }
            drop(permit);
        });
    }
}

async fn route(request: Request<Incoming>, endpoints: Endpoints, shared: &Shared) -> HttpResponse {
    let method = request.method();
    let readable = method == Method::GET || method == Method::HEAD;
    match request.uri().path() {
        "/healthz" if readable => text(StatusCode::OK, "ok\n".to_string()),
        "/ready" if readable => ready(shared),
        "/metrics" if readable => {
            let mut response = text(StatusCode::OK, shared.metrics.encode());
            response.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        "/healthz" | "/ready" | "/metrics" => method_not_allowed("GET, HEAD"),
        "/renew" if endpoints == Endpoints::Admin => {
            if method == Method::POST {
                renew(shared).await
            } else {
                method_not_allowed("POST")
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".to_string()),
    }
}

fn ready(shared: &Shared) -> HttpResponse {
    match shared.readiness.check(SystemTime::now()) {
        Ok(ready) => text(
            StatusCode::OK,
            format!(
                "ready: serial {} expires at {}\n",
                ready.serial,
                rfc3339(ready.expires_at)
            ),
        ),
        Err(reason) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

/// Runs a renewal now and waits for it: 200 when a new set is published,
/// 202 when it is held until its notBefore, 502 when the attempt failed.
async fn renew(shared: &Shared) -> HttpResponse {
    let (reply_sender, reply) = oneshot::channel();
    if shared.renew_requests.send(reply_sender).await.is_err() {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the renewal loop has stopped\n".to_string(),
        );
    }
    tracing::info!("renewal requested through POST /renew");
    match tokio::time::timeout(RENEW_REPLY_TIMEOUT, reply).await {
        Ok(Ok(RenewReply::Published {
            serial,
            expires_at,
            generation,
        })) => text(
            StatusCode::OK,
            format!(
                "published: serial {serial} expires at {} generation {generation}\n",
                rfc3339(expires_at)
            ),
        ),
        Ok(Ok(RenewReply::Held { serial, valid_from })) => text(
            StatusCode::ACCEPTED,
            format!(
                "issued: serial {serial} is held until it becomes valid at {}\n",
                rfc3339(valid_from)
            ),
        ),
        Ok(Ok(RenewReply::Failed { reason, error })) => text(
            StatusCode::BAD_GATEWAY,
            format!("renewal failed ({reason}): {error}; a retry is scheduled\n"),
        ),
        Ok(Err(_dropped)) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the renewal loop stopped before the attempt finished\n".to_string(),
        ),
        Err(_elapsed) => text(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the renewal did not finish within {}; it goes on in the background\n",
                humantime::format_duration(RENEW_REPLY_TIMEOUT)
            ),
        ),
    }
}

fn method_not_allowed(allow: &'static str) -> HttpResponse {
    let mut response = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method not allowed; use {allow}\n"),
    );
    response
        .headers_mut()
        .insert(ALLOW, http::HeaderValue::from_static(allow));
    response
}

fn text(status: StatusCode, body: String) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}
