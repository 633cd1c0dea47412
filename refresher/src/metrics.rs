//! Prometheus metrics of the refresher, served as text format 0.0.4 on `/metrics`.

use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshcert_common::notify::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// `Content-Type` of the `/metrics` response.
pub(crate) const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    method: &'static str,
    result: &'static str,
}

/// Every metric the refresher exports, with the registry that encodes them.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    expiry_timestamp: Gauge<f64, AtomicU64>,
    next_renewal_timestamp: Gauge<f64, AtomicU64>,
    next_renewal_seconds: Gauge<f64, AtomicU64>,
    renewals: Family<ResultLabels, Counter>,
    failures: Family<ReasonLabels, Counter>,
    ca_request_duration: Histogram,
    notifications: Family<NotificationLabels, Counter>,
    republishes: Counter,
    root_reloads: Counter,
    /// Next renewal attempt; `None` while an attempt runs. `/metrics`
    /// derives the seconds left from it at scrape time.
    next_renewal_at: Mutex<Option<SystemTime>>,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();

        let expiry_timestamp = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "meshcert_certificate_expiry_timestamp_seconds",
            "Unix time at which the published certificate set expires: the earliest notAfter in its chain",
            expiry_timestamp.clone(),
        );

        let next_renewal_timestamp = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "meshcert_next_renewal_timestamp_seconds",
            "Unix time of the next renewal attempt, scheduled or a retry; 0 while an attempt runs",
            next_renewal_timestamp.clone(),
        );

        let next_renewal_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "meshcert_next_renewal_seconds",
            "Seconds until the next renewal attempt, computed at scrape time; 0 while an attempt runs or when it is overdue",
            next_renewal_seconds.clone(),
        );

        let renewals = Family::<ResultLabels, Counter>::default();
        registry.register(
            "meshcert_renewals",
            "Renewal attempts by result: success when a new set was published, failure otherwise",
            renewals.clone(),
        );

        let failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "meshcert_renewal_failures",
            "Failed renewal attempts by reason, such as connect, timeout, unavailable, rejected, token, invalid_answer or publish",
            failures.clone(),
        );

        let ca_request_duration = Histogram::new(exponential_buckets(0.005, 2.0, 12));
        registry.register(
            "meshcert_ca_request_duration_seconds",
            "Time the CA took to answer successful certificate requests, connection included",
            ca_request_duration.clone(),
        );

        let notifications = Family::<NotificationLabels, Counter>::default();
        registry.register(
            "meshcert_notifications",
            "App notifications after a swap by method (signal, exec) and result (success, failure)",
            notifications.clone(),
        );

        let republishes = Counter::default();
        registry.register(
            "meshcert_republishes",
            "Times the set held in memory was published again because the published files were changed or removed",
            republishes.clone(),
        );

        let root_reloads = Counter::default();
        registry.register(
            "meshcert_ca_root_reloads",
            "Times the CA root file changed and was reloaded",
            root_reloads.clone(),
        );

        Self {
            registry,
            expiry_timestamp,
            next_renewal_timestamp,
            next_renewal_seconds,
            renewals,
            failures,
            ca_request_duration,
            notifications,
            republishes,
            root_reloads,
            next_renewal_at: Mutex::new(None),
        }
    }

    pub(crate) fn set_expiry(&self, expires_at: SystemTime) {
        self.expiry_timestamp.set(unix_seconds(expires_at));
    }

    pub(crate) fn set_next_renewal(&self, at: Option<SystemTime>) {
        self.next_renewal_timestamp
            .set(at.map(unix_seconds).unwrap_or(0.0));
        *self
            .next_renewal_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = at;
    }

    pub(crate) fn record_ca_latency(&self, ca_latency: Duration) {
        self.ca_request_duration.observe(ca_latency.as_secs_f64());
    }

    pub(crate) fn record_success(&self) {
        self.renewals
            .get_or_create(&ResultLabels { result: "success" })
            .inc();
    }

    pub(crate) fn record_failure(&self, reason: &'static str) {
        self.renewals
            .get_or_create(&ResultLabels { result: "failure" })
            .inc();
        self.failures.get_or_create(&ReasonLabels { reason }).inc();
    }

    pub(crate) fn record_notification(&self, method: Method, success: bool) {
        let labels = NotificationLabels {
            method: method.label(),
            result: if success { "success" } else { "failure" },
        };
        self.notifications.get_or_create(&labels).inc();
    }

    pub(crate) fn record_republish(&self) {
        self.republishes.inc();
    }

    pub(crate) fn record_root_reload(&self) {
        self.root_reloads.inc();
    }

    /// Encodes every metric in the Prometheus text format, after updating
    /// the seconds left until the next renewal.
    pub(crate) fn encode(&self) -> String {
        let next = *self
            .next_renewal_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let seconds_left = next
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .map_or(0.0, |left| left.as_secs_f64());
        self.next_renewal_seconds.set(seconds_left);

        let mut text = String::new();
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::warn!(error = %error, "encoding the metrics failed");
        }
        text
    }
}

fn unix_seconds(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_lists_every_metric() {
        let metrics = Metrics::new();
        metrics.set_expiry(UNIX_EPOCH + Duration::from_secs(2_000_000_000));
        metrics.set_next_renewal(Some(SystemTime::now() + Duration::from_secs(100)));
        metrics.record_ca_latency(Duration::from_millis(20));
        metrics.record_success();
        metrics.record_failure("unavailable");
        metrics.record_notification(Method::Signal, true);
        metrics.record_republish();
        metrics.record_root_reload();

        let text = metrics.encode();
        for line in [
            "meshcert_certificate_expiry_timestamp_seconds 2000000000",
            "meshcert_renewals_total{result=\"success\"} 1",
            "meshcert_renewals_total{result=\"failure\"} 1",
            "meshcert_renewal_failures_total{reason=\"unavailable\"} 1",
            "meshcert_ca_request_duration_seconds_count 1",
            "meshcert_notifications_total{method=\"signal\",result=\"success\"} 1",
            "meshcert_republishes_total 1",
            "meshcert_ca_root_reloads_total 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }

    #[test]
    fn next_renewal_seconds_counts_down() {
        let metrics = Metrics::new();
        metrics.set_next_renewal(Some(SystemTime::now() + Duration::from_secs(100)));
        let text = metrics.encode();
        let value: f64 = text
            .lines()
            .find_map(|line| line.strip_prefix("meshcert_next_renewal_seconds "))
            .expect("meshcert_next_renewal_seconds is missing")
            .parse()
            .unwrap();
        assert!((95.0..=100.0).contains(&value), "{value}");
    }
}
