//! HTTP reload requests sent to the application after each swap, such as
//! Prometheus's `POST /-/reload`. Unlike a signal, this needs no shared
//! process namespace: the app's reload endpoint is reached over the pod
//! network (every container of a pod shares its loopback).

use std::time::Duration;

use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Most bytes of a failed response's body quoted in the error.
const MAX_QUOTED_BODY: usize = 512;

/// One reload endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReload {
    /// `http://` URL of the endpoint.
    pub url: Uri,
    /// Request method, POST by default.
    pub method: Method,
    /// Time limit of each attempt.
    pub timeout: Duration,
    /// Attempts in all, at least 1; the delay doubles from 200 ms between them.
    pub attempts: u32,
}

/// Errors of a reload request after all attempts.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The endpoint returned a status outside 2xx.
    #[error("{method} {url} returned {status}: {body}")]
    Status {
        /// Method sent.
        method: Method,
        /// Endpoint.
        url: Uri,
        /// Status received.
        status: StatusCode,
        /// Start of the response body.
        body: String,
    },
    /// The request failed before a response arrived.
    #[error("{method} {url} failed: {reason}")]
    Request {
        /// Method sent.
        method: Method,
        /// Endpoint.
        url: Uri,
        /// Error chain.
        reason: String,
    },
    /// No response within the timeout.
    #[error("{method} {url} timed out after {timeout}")]
    Timeout {
        /// Method sent.
        method: Method,
        /// Endpoint.
        url: Uri,
        /// The limit.
        timeout: String,
    },
}

/// Parses a reload URL: `http://host:port/path`.
///
/// HTTPS is rejected: reload endpoints are reached on the pod's own network.
pub fn parse_reload_url(value: &str) -> Result<Uri, String> {
    let uri: Uri = value
        .trim()
        .parse()
        .map_err(|e| format!("invalid URL {value:?}: {e}; expected http://host:port/path, such as http://127.0.0.1:9090/-/reload"))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(format!(
            "invalid URL {value:?}: expected an http:// URL with a host, such as http://127.0.0.1:9090/-/reload"
        ));
    }
    Ok(uri)
}

/// Parses an HTTP method name such as `POST` or `PUT`.
pub fn parse_reload_method(value: &str) -> Result<Method, String> {
    let upper = value.trim().to_ascii_uppercase();
    Method::from_bytes(upper.as_bytes()).map_err(|_| {
        format!("invalid HTTP method {value:?}: expected a method name such as POST, PUT or GET")
    })
}

/// Sends the reload request, retrying failures up to `attempts` times.
///
/// Returns the first 2xx status, or the last error.
pub async fn send_reload(reload: &HttpReload) -> Result<StatusCode, ReloadError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        let result = send_once(&client, reload).await;
        match result {
            Ok(status) => return Ok(status),
            Err(error) if attempt >= reload.attempts.max(1) => return Err(error),
            Err(error) => {
                tracing::debug!(attempt, error = %error, "reload request failed; retrying");
                tokio::time::sleep(delay).await;
                delay = delay.saturating_mul(2);
                attempt += 1;
            }
        }
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

async fn send_once(client: &HttpClient, reload: &HttpReload) -> Result<StatusCode, ReloadError> {
    let request = Request::builder()
        .method(reload.method.clone())
        .uri(reload.url.clone())
        .header(
            http::header::USER_AGENT,
            concat!("meshcert-refresher/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::new())
        .map_err(|e| ReloadError::Request {
            method: reload.method.clone(),
            url: reload.url.clone(),
            reason: e.to_string(),
        })?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| ReloadError::Request {
                method: reload.method.clone(),
                url: reload.url.clone(),
                reason: crate::ca::error_chain(&e),
            })?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        Ok::<_, ReloadError>((status, body))
    };
    let (status, body) = match tokio::time::timeout(reload.timeout, exchange).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(ReloadError::Timeout {
                method: reload.method.clone(),
                url: reload.url.clone(),
                timeout: humantime::format_duration(reload.timeout).to_string(),
            })
        }
    };
    if status.is_success() {
        return Ok(status);
    }
    let quoted = &body[..body.len().min(MAX_QUOTED_BODY)];
    Err(ReloadError::Status {
        method: reload.method.clone(),
        url: reload.url.clone(),
        status,
        body: String::from_utf8_lossy(quoted).trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reload_url_accepts_http() {
        let uri = parse_reload_url("http://127.0.0.1:9090/-/reload").unwrap();
        assert_eq!(uri.path(), "/-/reload");
    }

    #[test]
    fn parse_reload_url_rejects_https_and_relative() {
        assert!(parse_reload_url("https://127.0.0.1/-/reload").is_err());
        assert!(parse_reload_url("/-/reload").is_err());
        let message = parse_reload_url("not a url").unwrap_err();
        assert!(message.contains("\"not a url\""), "{message}");
    }

    #[test]
    fn parse_reload_method_names() {
        assert_eq!(parse_reload_method("post"), Ok(Method::POST));
        assert_eq!(parse_reload_method("PUT"), Ok(Method::PUT));
        assert!(parse_reload_method("NOT A METHOD").is_err());
    }
}
