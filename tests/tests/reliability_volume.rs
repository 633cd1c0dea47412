//! A full certificate volume: on a 1 MiB tmpfs filled to the last page,
//! the refresher's publish of a renewed set fails. The previous set stays
//! published byte-identical and the error names the cause. `/ready`
//! follows the real state: ready while the old set is valid, not ready
//! once it expires, and ready again when space frees up and the held set
//! is published.
//!
//! Mounting a tmpfs needs root; as another user the test prints `skipped`.

use std::fs::File;
use std::io::Write;
use std::time::Duration;

use meshcert_tests::reliability::{
    check_published_set, is_root, snapshot, wait_until, RefresherProcess, Workload,
};
use meshcert_tests::DevCaOptions;

const PUBLISH_FAILED: &str =
    "publishing the new set failed; the previous set stays published and the publish is retried";

/// Writes zeros to `path` until the file system is full; returns the bytes written.
fn fill(path: &std::path::Path) -> u64 {
    let mut file = File::create(path).unwrap();
    let chunk = vec![0_u8; 4096];
    let mut written = 0;
    // A 1 MiB volume fills in 256 chunks; the bound only guards a volume
    // that is not the small tmpfs the test mounted.
    for _ in 0..100_000 {
        match file.write(&chunk) {
            Ok(0) => break,
            Ok(count) => written += count as u64,
            Err(error) if error.raw_os_error() == Some(nix::libc::ENOSPC) => break,
            Err(error) => panic!("filling the volume failed: {error}"),
        }
    }
    let _ = file.sync_all();
    written
}

#[test]
fn refresher_publish_on_full_volume_keeps_old_set() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    // A 10 s lifetime: renewal at about half of it, expiry soon after the
    // failed publish, and the held set still valid when space frees up.
    let options = DevCaOptions {
        fault: Some("ttl=10s".to_string()),
        ..DevCaOptions::default()
    };
    let workload = Workload::start_with(options, "1m");
    assert!(workload.volume.is_tmpfs(), "the volume is not a tmpfs");
    let refresher =
        RefresherProcess::spawn(workload.refresher(), &workload.scratch_dir().join("log")).unwrap();
    let first = wait_until(Duration::from_secs(20), || {
        check_published_set(&workload.out_dir()).ok()
    })
    .unwrap_or_else(|| panic!("no first set; log:\n{}", refresher.log()));

    let filler = workload.volume.path().join("filler");
    let written = fill(&filler);
    assert!(written > 0, "the volume had no free space to fill");
    let before = snapshot(&workload.out_dir());

    let failed = wait_until(Duration::from_secs(15), || {
        let records = refresher.records(PUBLISH_FAILED);
        records.first().cloned()
    })
    .unwrap_or_else(|| panic!("no failed publish was logged; log:\n{}", refresher.log()));
    let error = failed["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("No space left on device"),
        "the error does not name the cause: {error}"
    );
    assert_eq!(
        snapshot(&workload.out_dir()),
        before,
        "the published set changed on a full volume"
    );
    let publish_failures = refresher
        .metric("meshcert_renewal_failures_total{reason=\"publish\"}")
        .unwrap();
    assert!(publish_failures >= 1.0, "publish failures not counted");

    let expired = wait_until(Duration::from_secs(15), || {
        let (status, body) = refresher.get("/ready").ok()?;
        (status == 503).then_some(body)
    })
    .unwrap_or_else(|| panic!("/ready never turned 503; log:\n{}", refresher.log()));
    assert!(expired.contains("expired"), "/ready body: {expired}");
    assert_eq!(
        snapshot(&workload.out_dir()),
        before,
        "the expired set was replaced while the volume was full"
    );

    std::fs::remove_file(&filler).unwrap();
    let recovered = wait_until(Duration::from_secs(5), || {
        let (status, _) = refresher.get("/ready").ok()?;
        (status == 200).then_some(())
    });
    assert!(
        recovered.is_some(),
        "/ready did not return to 200 after space freed up; log:\n{}",
        refresher.log()
    );
    let renewed = check_published_set(&workload.out_dir()).unwrap();
    assert_ne!(renewed, first, "the held set was not published");
}
