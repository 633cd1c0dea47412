//! Oversized input is rejected without being read whole into memory: a
//! 32 MiB CA answer (tonic rejects messages over 1 MiB from their length
//! prefix) and a 10 MiB token file (read up to 64 KiB and one byte), for
//! both binaries.
//!
//! Init's peak memory comes from `getrusage(RUSAGE_CHILDREN)`, which keeps
//! one maximum over every child this process has waited for. So this file
//! holds a single test, and it waits for no child larger than init before
//! reading it. The refresher's peak is its `VmHWM` in `/proc`.

use std::fs;
use std::time::Duration;

use meshcert_tests::reliability::{
    check_published_set, children_max_rss_kib, wait_until, RefresherProcess, Workload,
};

const HUGE_ANSWER: &str = "huge=33554432";
const HUGE_TOKEN_BYTES: usize = 10 * 1024 * 1024;
/// Peak memory an oversized input may add: far below the 32 MiB answer or
/// the 10 MiB token, so reading either whole fails the test.
const MAX_GROWTH_KIB: u64 = 8 * 1024;

fn write_huge_token(workload: &Workload) {
    let token = workload.token();
    let mut huge = token.clone().into_bytes();
    huge.resize(HUGE_TOKEN_BYTES, b'A');
    fs::write(workload.token_path(), huge).unwrap();
}

#[test]
fn oversized_input_stays_out_of_memory() {
    let workload = Workload::start("");

    // init: a normal issuance sets the baseline peak.
    let output = workload.init().output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let init_baseline = children_max_rss_kib();

    workload.ca.set_fault(HUGE_ANSWER).unwrap();
    fs::remove_dir_all(workload.out_dir()).unwrap();
    let output = workload.init().output().unwrap();
    let message = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(1),
        "init with a huge answer: {message}"
    );
    assert!(message.contains("OutOfRange"), "{message}");
    let init_after_answer = children_max_rss_kib();
    workload.ca.set_fault("").unwrap();

    let token = workload.token();
    write_huge_token(&workload);
    let output = workload.init().output().unwrap();
    let message = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(2),
        "init with a huge token: {message}"
    );
    assert!(message.contains("larger than 65536 bytes"), "{message}");
    let init_after_token = children_max_rss_kib();
    fs::write(workload.token_path(), &token).unwrap();

    eprintln!(
        "init peak RSS: {init_baseline} KiB normal, {init_after_answer} KiB with a 32 MiB \
         answer, {init_after_token} KiB with a 10 MiB token (cumulative maximum)"
    );
    assert!(
        init_after_answer <= init_baseline + MAX_GROWTH_KIB,
        "a huge answer raised init's peak from {init_baseline} to {init_after_answer} KiB"
    );
    assert!(
        init_after_token <= init_baseline + MAX_GROWTH_KIB,
        "a huge token raised init's peak from {init_baseline} to {init_after_token} KiB"
    );

    // The refresher: the same inputs on a long-running process.
    // Retries drawn from up to an hour away keep a retry of the huge answer
    // from answering the token's `POST /renew`.
    let mut command = workload.refresher();
    command.args(["--retry-initial-backoff=1h", "--retry-max-backoff=1h"]);
    let refresher = RefresherProcess::spawn(command, &workload.scratch_dir().join("log")).unwrap();
    let published = wait_until(Duration::from_secs(20), || {
        check_published_set(&workload.out_dir()).ok()
    });
    assert!(published.is_some(), "no set; log:\n{}", refresher.log());
    let (status, body) = refresher.renew().unwrap();
    assert_eq!(status, 200, "a normal renewal: {body}");
    let baseline = refresher.status_kib("VmHWM").unwrap();

    workload.ca.set_fault(HUGE_ANSWER).unwrap();
    let (status, body) = refresher.renew_expecting("OutOfRange").unwrap();
    assert_eq!(status, 502, "a huge answer: {body}");
    assert!(body.contains("OutOfRange"), "{body}");
    let after_answer = refresher.status_kib("VmHWM").unwrap();
    workload.ca.set_fault("").unwrap();

    write_huge_token(&workload);
    let (status, body) = refresher
        .renew_expecting("larger than 65536 bytes")
        .unwrap();
    assert_eq!(status, 502, "a huge token: {body}");
    assert!(body.contains("larger than 65536 bytes"), "{body}");
    let after_token = refresher.status_kib("VmHWM").unwrap();

    eprintln!(
        "refresher VmHWM: {baseline} KiB after a normal renewal, {after_answer} KiB after a \
         32 MiB answer, {after_token} KiB after a 10 MiB token"
    );
    assert!(
        after_answer <= baseline + MAX_GROWTH_KIB,
        "a huge answer raised the refresher's peak from {baseline} to {after_answer} KiB"
    );
    assert!(
        after_token <= baseline + MAX_GROWTH_KIB,
        "a huge token raised the refresher's peak from {baseline} to {after_token} KiB"
    );
}
