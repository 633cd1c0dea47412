//! Order statistics shared by the benchmark binaries, which include this
//! file with `#[path]`.

use serde::Serialize;

/// Median and spread of a sample, in the sample's unit.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct Summary {
    /// Number of values.
    pub(crate) n: usize,
    /// Smallest value.
    pub(crate) min: f64,
    /// 10th percentile.
    pub(crate) p10: f64,
    /// 50th percentile.
    pub(crate) median: f64,
    /// 90th percentile.
    pub(crate) p90: f64,
    /// Largest value.
    pub(crate) max: f64,
}

/// Summarizes `values`, with percentiles interpolated linearly between the
/// closest ranks. Returns zeros for an empty sample.
pub(crate) fn summarize(values: &[f64]) -> Summary {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    Summary {
        n: sorted.len(),
        min: sorted.first().copied().unwrap_or(0.0),
        p10: percentile(&sorted, 0.10),
        median: percentile(&sorted, 0.50),
        p90: percentile(&sorted, 0.90),
        max: sorted.last().copied().unwrap_or(0.0),
    }
}

/// Returns the `share` percentile of an ascending sample.
fn percentile(sorted: &[f64], share: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        len => {
            let rank = share.clamp(0.0, 1.0) * (len - 1) as f64;
            let lower = rank.floor() as usize;
            let upper = rank.ceil() as usize;
            let weight = rank - lower as f64;
            sorted[lower] + (sorted[upper] - sorted[lower]) * weight
        }
    }
}
