//! The fault matrix: every invalid or failed answer the dev CA can send,
//! against the refresher (and, for the faults `tests/tests/init.rs` does
//! not cover with a set already published, against init). For each one
//! nothing is published, the previous set stays byte-identical, the error
//! says what was wrong, and the refresher counts the failure by reason.
//! Two unusual but valid answers are accepted by the refresher: a chain in
//! reverse order, and a leaf whose notBefore lies 30 s ahead.

use std::process::Output;
use std::time::{Duration, Instant, SystemTime};

use meshcert_common::bundle::pem_certificates;
use meshcert_tests::reliability::{
    check_published_set, openssl_check_published_set, snapshot, wait_until, RefresherProcess,
    Workload, SPIFFE_ID,
};
use x509_parser::prelude::FromDer;

/// One invalid answer: the fault, what the error must say, and the
/// `reason` label of `meshcert_renewal_failures_total` it counts under.
struct Fault {
    spec: &'static str,
    message: &'static str,
    reason: &'static str,
}

const INVALID_ANSWERS: [Fault; 11] = [
    Fault {
        spec: "short-chain",
        message: "expected at least 2",
        reason: "invalid_answer",
    },
    Fault {
        spec: "garbage-pem",
        message: "not valid PEM",
        reason: "invalid_answer",
    },
    Fault {
        spec: "leaf-other-key",
        message: "another public key",
        reason: "invalid_answer",
    },
    Fault {
        spec: "other-san",
        message: "spiffe://cluster.local/ns/other/sa/other",
        reason: "invalid_answer",
    },
    Fault {
        spec: "expired-leaf",
        message: "expired at",
        reason: "invalid_answer",
    },
    Fault {
        spec: "not-yet-valid=1h",
        message: "beyond --max-clock-skew",
        reason: "invalid_answer",
    },
    Fault {
        spec: "broken-chain",
        message: "does not verify",
        reason: "invalid_answer",
    },
    Fault {
        spec: "huge=8388608",
        message: "OutOfRange",
        reason: "answer_too_large",
    },
    Fault {
        spec: "stall",
        message: "did not answer within 3s",
        reason: "timeout",
    },
    Fault {
        spec: "unavailable",
        message: "Unavailable",
        reason: "unavailable",
    },
    Fault {
        spec: "internal",
        message: "Internal",
        reason: "internal",
    },
];

/// Starts a refresher whose automatic retries are drawn from up to an hour
/// away, so each `POST /renew` of a test is almost always the only attempt
/// of its case.
fn start_refresher(workload: &Workload) -> RefresherProcess {
    let mut command = workload.refresher();
    command.args(["--retry-initial-backoff=1h", "--retry-max-backoff=1h"]);
    let refresher = RefresherProcess::spawn(command, &workload.scratch_dir().join("log"))
        .unwrap_or_else(|error| panic!("{error:#}"));
    let published = wait_until(Duration::from_secs(20), || {
        check_published_set(&workload.out_dir()).ok()
    });
    assert!(
        published.is_some(),
        "no first set was published; log:\n{}",
        refresher.log()
    );
    refresher
}

fn failures(refresher: &RefresherProcess, reason: &str) -> f64 {
    let series = format!("meshcert_renewal_failures_total{{reason=\"{reason}\"}}");
    refresher.metric(&series).unwrap()
}

fn successes(refresher: &RefresherProcess) -> f64 {
    refresher
        .metric("meshcert_renewals_total{result=\"success\"}")
        .unwrap()
}

#[test]
fn refresher_rejects_every_invalid_answer() {
    let workload = Workload::start("");
    let refresher = start_refresher(&workload);
    let before = snapshot(&workload.out_dir());
    let successes_before = successes(&refresher);

    for fault in &INVALID_ANSWERS {
        workload.ca.set_fault(fault.spec).unwrap();
        let counted_before = failures(&refresher, fault.reason);

        let (status, body) = refresher.renew_expecting(fault.message).unwrap();
        assert_eq!(
            status, 502,
            "{}: POST /renew status; body: {body}",
            fault.spec
        );
        assert!(
            body.contains(fault.message),
            "{}: the error does not say {:?}: {body}",
            fault.spec,
            fault.message
        );
        assert_eq!(
            snapshot(&workload.out_dir()),
            before,
            "{}: the published set changed",
            fault.spec
        );
        let counted = failures(&refresher, fault.reason);
        assert!(
            counted > counted_before,
            "{}: meshcert_renewal_failures_total{{reason=\"{}\"}} stayed at {counted}",
            fault.spec,
            fault.reason
        );
        let (ready, ready_body) = refresher.get("/ready").unwrap();
        assert_eq!(
            ready, 200,
            "{}: /ready with the old set: {ready_body}",
            fault.spec
        );
    }
    assert_eq!(
        successes(&refresher),
        successes_before,
        "a renewal succeeded during the matrix"
    );
}

#[test]
fn refresher_accepts_reversed_chain() {
    let workload = Workload::start("");
    let refresher = start_refresher(&workload);
    let first = check_published_set(&workload.out_dir()).unwrap();

    workload.ca.set_fault("reverse-chain").unwrap();
    let (status, body) = refresher.renew().unwrap();
    assert_eq!(status, 200, "POST /renew: {body}");
    let generation = check_published_set(&workload.out_dir()).unwrap();
    assert_ne!(generation, first, "no new generation was published");
    openssl_check_published_set(&workload.out_dir()).unwrap();

    let chain = std::fs::read_to_string(workload.out_dir().join("cert-chain.pem")).unwrap();
    let ders = pem_certificates(&chain, 0).unwrap();
    let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(&ders[0]).unwrap();
    assert!(
        !leaf.is_ca(),
        "the published chain does not start with the leaf"
    );
    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(
        format!("{:?}", san.value).contains(SPIFFE_ID),
        "the first certificate is not our leaf"
    );
}

#[test]
fn refresher_holds_leaf_valid_in_30s() {
    const AHEAD: Duration = Duration::from_secs(30);
    let workload = Workload::start("");
    let refresher = start_refresher(&workload);
    let before = snapshot(&workload.out_dir());
    let first = check_published_set(&workload.out_dir()).unwrap();

    workload.ca.set_fault("not-yet-valid=30s").unwrap();
    let requested = Instant::now();
    let (status, body) = refresher.renew().unwrap();
    assert_eq!(status, 202, "POST /renew: {body}");
    assert!(body.contains("held"), "POST /renew: {body}");
    workload.ca.set_fault("").unwrap();

    let held = refresher.records("the new certificate is not valid yet because the CA's clock runs ahead of ours; the current set stays published until it is");
    assert_eq!(
        held.len(),
        1,
        "the skew was not logged once; log:\n{}",
        refresher.log()
    );
    let skew = held[0]["skew"].as_str().unwrap_or_default();
    let skew = humantime::parse_duration(skew)
        .unwrap_or_else(|error| panic!("logged skew {skew:?}: {error}"));
    assert!(
        skew > AHEAD - Duration::from_secs(5) && skew <= AHEAD,
        "logged skew: {skew:?}"
    );
    assert_eq!(
        snapshot(&workload.out_dir()),
        before,
        "published before it was valid"
    );

    let published = wait_until(AHEAD + Duration::from_secs(15), || {
        check_published_set(&workload.out_dir())
            .ok()
            .filter(|generation| *generation != first)
    });
    let waited = requested.elapsed();
    assert!(
        published.is_some(),
        "the held set was not published; log:\n{}",
        refresher.log()
    );
    assert!(
        waited >= AHEAD - Duration::from_secs(2),
        "published after {waited:?}, before it was valid"
    );
    let chain = std::fs::read_to_string(workload.out_dir().join("cert-chain.pem")).unwrap();
    let ders = pem_certificates(&chain, 0).unwrap();
    let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(&ders[0]).unwrap();
    let not_before = leaf.validity().not_before.timestamp();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        not_before <= i64::try_from(now).unwrap(),
        "the published leaf is not valid yet"
    );
}

/// Publishes a set with a 2-minute lifetime, which `--renew-ratio 0.98`
/// finds due, so the next init run calls the CA.
fn publish_due_set(workload: &Workload) {
    workload.ca.set_fault("ttl=2m").unwrap();
    let output = workload.init().output().unwrap();
    assert!(
        output.status.success(),
        "first issuance: {}",
        stderr(&output)
    );
    workload.ca.set_fault("").unwrap();
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn init_keeps_previous_set_when_ca_fails() {
    let cases = [
        ("stall", "did not answer within 500ms"),
        ("unavailable", "Unavailable"),
        ("internal", "Internal"),
    ];
    let workload = Workload::start("");
    publish_due_set(&workload);
    let before = snapshot(&workload.out_dir());
    for (fault, expected) in cases {
        workload.ca.set_fault(fault).unwrap();
        let output = workload
            .init()
            .args([
                "--renew-ratio=0.98",
                "--request-timeout=500ms",
                "--timeout=2s",
            ])
            .output()
            .unwrap();
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(3), "{fault}: {message}");
        assert!(
            message.contains(expected),
            "{fault}: expected {expected:?} in {message}"
        );
        assert_eq!(
            snapshot(&workload.out_dir()),
            before,
            "{fault}: the previous set changed"
        );
    }
}
