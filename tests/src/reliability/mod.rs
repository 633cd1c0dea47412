//! Building blocks of the reliability tests (`tests/tests/reliability_*.rs`):
//! a workload with its dev CA, token and certificate volume, a running
//! refresher with its endpoints, checks of a published set, and process
//! memory readings.

mod procfs;
mod published;
mod refresher;
mod volume;
mod workload;

use std::time::{Duration, Instant};

pub use procfs::{children_max_rss_kib, status_kib};
pub use published::{check_published_set, openssl_check_published_set, snapshot};
pub use refresher::{http_request, RefresherProcess};
pub use volume::CertVolume;
pub use workload::{Workload, NAMESPACE, SERVICE_ACCOUNT, SPIFFE_ID};

/// Environment variable that turns on the long variants of the reliability tests.
pub const LONG_TESTS_ENV: &str = "MESHCERT_LONG_TESTS";

/// Returns whether `MESHCERT_LONG_TESTS=1` asks for the long variants.
pub fn long_tests() -> bool {
    std::env::var(LONG_TESTS_ENV).is_ok_and(|value| value == "1")
}

/// Returns whether the tests run as root, which mounting a tmpfs and
/// switching uids need.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Polls `probe` every 20 ms until it returns `Some` or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
