//! A long CA outage: the refresher keeps serving the published set, retries
//! with delays that never exceed `--retry-max-backoff`, and renews within
//! one such interval after the CA answers again.
//!
//! The outage lasts 12 s by default and 60 s with `MESHCERT_LONG_TESTS=1`;
//! the backoff starts at 200 ms and is capped at 2 s, so the cap is reached
//! within a few retries.

use std::time::{Duration, Instant, SystemTime};

use meshcert_tests::reliability::{
    check_published_set, long_tests, snapshot, wait_until, RefresherProcess, Workload,
};
use serde_json::Value;

const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Time an attempt may take on top of its backoff delay: a new key, a TLS
/// connection to the CA on loopback, and the scheduling of two busy cores.
const ATTEMPT_SLACK: Duration = Duration::from_millis(1500);
const RETRY_MESSAGE: &str =
    "requesting a certificate failed; the published set stays and the request is retried";

fn timestamp(record: &Value) -> SystemTime {
    let text = record["timestamp"].as_str().unwrap_or_default();
    humantime::parse_rfc3339_weak(text)
        .unwrap_or_else(|error| panic!("log timestamp {text:?}: {error}"))
}

#[test]
fn refresher_rides_out_long_ca_outage() {
    let outage = if long_tests() {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(12)
    };
    let workload = Workload::start("");
    let mut command = workload.refresher();
    command.args([
        "--retry-initial-backoff=200ms",
        &format!(
            "--retry-max-backoff={}",
            humantime::format_duration(MAX_BACKOFF)
        ),
    ]);
    let refresher =
        RefresherProcess::spawn(command, &workload.scratch_dir().join("refresher.log")).unwrap();
    let first = wait_until(Duration::from_secs(20), || {
        check_published_set(&workload.out_dir()).ok()
    });
    assert!(first.is_some(), "no first set; log:\n{}", refresher.log());
    let before = snapshot(&workload.out_dir());

    workload.ca.set_fault("unavailable").unwrap();
    let (status, body) = refresher.renew().unwrap();
    assert_eq!(status, 502, "POST /renew during the outage: {body}");
    let outage_started = Instant::now();
    while outage_started.elapsed() < outage {
        let (status, body) = refresher.get("/ready").unwrap();
        assert_eq!(status, 200, "/ready during the outage: {body}");
        assert_eq!(
            snapshot(&workload.out_dir()),
            before,
            "the published set changed during the outage"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    let retries = refresher.records(RETRY_MESSAGE);
    assert!(
        retries.len() >= 5,
        "only {} attempts during a {outage:?} outage; log:\n{}",
        retries.len(),
        refresher.log()
    );
    for record in &retries {
        let text = record["retry_in"].as_str().unwrap_or_default();
        let retry_in = humantime::parse_duration(text)
            .unwrap_or_else(|error| panic!("retry_in {text:?}: {error}"));
        assert!(
            retry_in <= MAX_BACKOFF,
            "a retry delay of {retry_in:?}: {record}"
        );
    }
    let times: Vec<SystemTime> = retries.iter().map(timestamp).collect();
    let largest_gap = times
        .windows(2)
        .map(|pair| pair[1].duration_since(pair[0]).unwrap_or_default())
        .max()
        .unwrap_or_default();
    assert!(
        largest_gap <= MAX_BACKOFF + ATTEMPT_SLACK,
        "attempts {largest_gap:?} apart, more than the {MAX_BACKOFF:?} cap"
    );
    // An attempt may fail between the two reads, so they are repeated
    // until they agree.
    let counts = wait_until(Duration::from_secs(5), || {
        let counted = refresher
            .metric("meshcert_renewal_failures_total{reason=\"unavailable\"}")
            .unwrap();
        let logged = refresher.records(RETRY_MESSAGE).len() as f64;
        (counted == logged).then_some(counted)
    });
    assert!(
        counts.is_some(),
        "failures counted in /metrics never matched the failures logged"
    );

    workload.ca.set_fault("").unwrap();
    let returned = Instant::now();
    let renewed = wait_until(MAX_BACKOFF + ATTEMPT_SLACK + Duration::from_secs(5), || {
        check_published_set(&workload.out_dir())
            .ok()
            .filter(|generation| Some(generation) != first.as_ref())
    });
    let recovery = returned.elapsed();
    assert!(
        renewed.is_some(),
        "no renewal after the CA returned; log:\n{}",
        refresher.log()
    );
    assert!(
        recovery <= MAX_BACKOFF + ATTEMPT_SLACK,
        "renewed {recovery:?} after the CA returned, more than one {MAX_BACKOFF:?} cap"
    );
    eprintln!(
        "outage of {outage:?}: {} attempts, largest gap {largest_gap:?}; renewed {recovery:?} \
         after the CA returned",
        retries.len()
    );
}
