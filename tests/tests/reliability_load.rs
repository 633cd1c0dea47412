//! Load: hundreds of `meshcert-init` processes at once against one dev CA.
//!
//! The default runs 500 processes in each wave, `MESHCERT_LONG_TESTS=1`
//! runs 1000. In the first wave the CA delays every call, so all processes
//! are alive at once. The second wave runs without delay and measures how
//! long a burst of pods takes to get certificates.

use std::fs::{self, File};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use meshcert_tests::reliability::{check_published_set, long_tests, Workload};
use meshcert_tests::DevCaOptions;

/// Maximum wait for one wave of init processes.
const WAVE_TIMEOUT: Duration = Duration::from_secs(240);

/// Result of one wave of concurrent init processes.
struct Wave {
    wall_time: Duration,
    spawn_time: Duration,
    peak_live: usize,
}

/// Starts `count` init processes at once with the extra arguments `args`,
/// each with its own output directory, waits for all of them and checks
/// every one succeeded.
fn run_wave(workload: &Workload, count: usize, name: &str, args: &[&str]) -> Wave {
    let base = workload.volume.path().join(name);
    fs::create_dir_all(&base).unwrap();
    let logs = workload.scratch_dir().join(name);
    fs::create_dir_all(&logs).unwrap();

    let started = Instant::now();
    let mut children: Vec<Option<Child>> = Vec::with_capacity(count);
    for index in 0..count {
        let log = File::create(logs.join(format!("{index}.log"))).unwrap();
        let child = workload
            .init()
            .arg("--out-dir")
            .arg(base.join(index.to_string()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|error| panic!("{name}: starting init {index} failed: {error}"));
        children.push(Some(child));
    }
    let spawn_time = started.elapsed();

    let mut peak_live = 0;
    let mut failed = Vec::new();
    loop {
        let mut live = 0;
        for (index, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else {
                continue;
            };
            match child.try_wait().unwrap() {
                None => live += 1,
                Some(status) => {
                    if !status.success() {
                        let log = fs::read_to_string(logs.join(format!("{index}.log")));
                        failed.push(format!(
                            "init {index}: {status}: {}",
                            log.unwrap_or_default()
                        ));
                    }
                    *slot = None;
                }
            }
        }
        peak_live = peak_live.max(live);
        if live == 0 {
            break;
        }
        if started.elapsed() > WAVE_TIMEOUT {
            for child in children.iter_mut().flatten() {
                let _ = child.kill();
                let _ = child.wait();
            }
            panic!("{name}: {live} init processes still ran after {WAVE_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let wall_time = started.elapsed();

    assert!(
        failed.is_empty(),
        "{name}: {} of {count} init processes failed; first: {}",
        failed.len(),
        failed[0]
    );
    for index in 0..count {
        check_published_set(&base.join(index.to_string()))
            .unwrap_or_else(|error| panic!("{name}: init {index}: {error}"));
    }
    Wave {
        wall_time,
        spawn_time,
        peak_live,
    }
}

#[test]
fn hundreds_of_inits_against_one_ca() {
    let count = if long_tests() { 1000 } else { 500 };
    // The CA delays every call by 10 s before it signs, so all processes
    // are alive at once however long spawning them takes. The request
    // timeout is raised above that delay.
    let options = DevCaOptions {
        fault: Some("delay=10s".to_string()),
        ..DevCaOptions::default()
    };
    let workload = Workload::start_with(options, "256m");
    let held = run_wave(&workload, count, "held", &["--request-timeout=60s"]);
    assert!(
        held.peak_live >= count,
        "only {} of {count} init processes were alive at once; spawning took {:?}",
        held.peak_live,
        held.spawn_time
    );

    workload.ca.set_fault("none").unwrap();
    let free = run_wave(&workload, count, "free", &[]);
    eprintln!(
        "{count} concurrent inits, CA delaying each call by 10s: all succeeded, peak {} live, \
         spawned in {:?}, done in {:?}",
        held.peak_live, held.spawn_time, held.wall_time
    );
    eprintln!(
        "{count} concurrent inits, no delay: all succeeded, peak {} live, spawned in {:?}, \
         done in {:?}",
        free.peak_live, free.spawn_time, free.wall_time
    );
}
