//! Memory readings of processes from `/proc` and `getrusage`.

use nix::sys::resource::{getrusage, UsageWho};

/// Returns a `kB` field of `/proc/PID/status`, such as `VmHWM` (peak
/// resident set) or `VmRSS`; `None` once the process has exited.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// Returns the largest peak resident set, in KiB, of the child processes
/// this process has waited for so far.
///
/// Linux keeps one maximum over all of them, so a test that reads it must
/// run alone in its test binary and wait for no larger child first.
pub fn children_max_rss_kib() -> u64 {
    getrusage(UsageWho::RUSAGE_CHILDREN)
        .map(|usage| u64::try_from(usage.max_rss()).unwrap_or(0))
        .unwrap_or(0)
}
