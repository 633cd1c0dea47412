//! Crash safety: the refresher is killed with SIGKILL at random moments of
//! forced renewals (`POST /renew`) and started again each time. After every
//! kill the published set must be complete and valid, and neither
//! generation directories nor temporary files may pile up.
//!
//! The default run forces 200 renewals; `MESHCERT_LONG_TESTS=1` forces 1000.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use meshcert_common::certdir::{is_generation_name, CertDir};
use meshcert_tests::reliability::{
    check_published_set, http_request, long_tests, openssl_check_published_set, wait_until,
    RefresherProcess, Workload,
};
use rand::Rng;

/// Upper end of the random wait between `POST /renew` and SIGKILL. A
/// freshly started debug-build refresher publishes about 50-80 ms
/// after the request (measured on a 2-core machine), so kills land
/// before, during and after the publish.
const MAX_KILL_DELAY: Duration = Duration::from_millis(120);

/// Maximum number of generation directories a kill may leave: the current one, the
/// previous one, and one stray from an interrupted publish.
const MAX_GENERATIONS_AFTER_KILL: usize = 3;

/// Maximum number of temporary links a kill may leave, since every start
/// removes them: `..data_tmp` and, during the first publish, one public link's.
const MAX_LEFTOVERS_AFTER_KILL: usize = 2;

/// Returns the names in `out_dir` that are neither a generation, `..data`,
/// nor a public link: temporary links, and write probes of earlier builds.
fn leftover_files(out_dir: &Path) -> Vec<String> {
    fs::read_dir(out_dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.starts_with("..") && name != "..data" && !is_generation_name(name))
        .collect()
}

#[test]
fn refresher_survives_kills_during_renewals() {
    let renewals = if long_tests() { 1000 } else { 200 };
    let workload = Workload::start("");
    let log_path = workload.scratch_dir().join("refresher.log");
    let out_dir = workload.out_dir();
    let dir = CertDir::new(&out_dir, None);

    let first = RefresherProcess::spawn(workload.refresher(), &log_path).unwrap();
    let published = wait_until(Duration::from_secs(20), || {
        check_published_set(&out_dir).ok()
    });
    assert!(published.is_some(), "no first set; log:\n{}", first.log());
    drop(first);

    let started = Instant::now();
    let mut rng = rand::rng();
    let mut completed = 0;
    let mut swaps = 0;
    let mut max_generations = 0;
    for round in 0..renewals {
        let before = check_published_set(&out_dir).unwrap();
        let mut refresher = RefresherProcess::spawn(workload.refresher(), &log_path)
            .unwrap_or_else(|error| panic!("round {round}: {error:#}"));

        let admin = refresher.admin_addr;
        let request = std::thread::spawn(move || {
            http_request(admin, "POST", "/renew", Duration::from_secs(10))
        });
        let delay = rng.random_range(Duration::ZERO..=MAX_KILL_DELAY);
        std::thread::sleep(delay);
        refresher.kill_hard().unwrap();
        if let Ok(Ok((200, _))) = request.join() {
            completed += 1;
        }

        let after = check_published_set(&out_dir).unwrap_or_else(|error| {
            panic!(
                "round {round}, killed {delay:?} after POST /renew: the published set is broken: {error}"
            )
        });
        if after != before {
            swaps += 1;
        }
        if round % 20 == 0 {
            openssl_check_published_set(&out_dir)
                .unwrap_or_else(|error| panic!("round {round}: {error}"));
        }
        let leftovers = leftover_files(&out_dir);
        assert!(
            leftovers.len() <= MAX_LEFTOVERS_AFTER_KILL,
            "round {round}: temporary files pile up: {leftovers:?}"
        );
        let generations = dir.generations().len();
        max_generations = max_generations.max(generations);
        assert!(
            generations <= MAX_GENERATIONS_AFTER_KILL,
            "round {round}: {generations} generation directories: {:?}",
            dir.generations()
        );
    }
    let elapsed = started.elapsed();

    let last = RefresherProcess::spawn(workload.refresher(), &log_path).unwrap();
    let (status, body) = last.get("/ready").unwrap();
    assert_eq!(status, 200, "/ready after the last restart: {body}");
    let (status, body) = last.renew().unwrap();
    assert_eq!(status, 200, "a renewal after the last restart: {body}");
    assert!(
        dir.generations().len() <= 2,
        "generations after a clean renewal: {:?}",
        dir.generations()
    );
    eprintln!(
        "{renewals} forced renewals with SIGKILL in {elapsed:?}: {completed} answered before \
         the kill, {swaps} swaps seen, at most {max_generations} generation directories"
    );
    assert!(
        swaps > 0,
        "no kill came after a swap; the test checked nothing"
    );
    assert!(
        swaps < renewals,
        "every renewal finished before the kill; the kills never hit a renewal"
    );
}
