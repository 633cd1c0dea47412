//! When to renew, and how long to wait between failed attempts.

use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::bundle::CertSet;

/// Renewal point settings: renew when `ratio +/- jitter` of the lifetime remains.
#[derive(Debug, Clone, Copy)]
pub struct RenewPolicy {
    /// Share of the lifetime left at renewal, in (0, 1).
    pub ratio: f64,
    /// Random spread around `ratio`, in [0, ratio) and below `1 - ratio`.
    pub jitter: f64,
}

impl RenewPolicy {
    /// Returns the renewal time of `set` for a given draw of the jitter in [-1, 1].
    ///
    /// `renew_at = expires_at - (ratio + jitter * draw) * lifetime`, where
    /// `expires_at` is the earliest notAfter in the chain.
    pub fn renew_at_with_draw(&self, set: &CertSet, draw: f64) -> SystemTime {
        let share = (self.ratio + self.jitter * draw.clamp(-1.0, 1.0)).clamp(0.0, 1.0);
        let before_expiry = set.lifetime().mul_f64(share);
        set.expires_at
            .checked_sub(before_expiry)
            .unwrap_or(set.not_before)
    }

    /// Returns a renewal time with a random jitter draw.
    pub fn renew_at(&self, set: &CertSet) -> SystemTime {
        let draw = rand::rng().random_range(-1.0..=1.0);
        self.renew_at_with_draw(set, draw)
    }

    /// Returns whether `set` should be renewed at `now` without jitter.
    pub fn is_due(&self, set: &CertSet, now: SystemTime) -> bool {
        self.renew_at_with_draw(set, 0.0) <= now
    }
}

/// Exponential backoff with full jitter: the n-th delay is uniform in
/// `[0, min(max, initial * 2^n)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts a backoff sequence.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            attempt: 0,
        }
    }

    /// Returns the cap of the next delay without drawing it.
    pub fn next_cap(&self) -> Duration {
        let factor = 2u32.saturating_pow(self.attempt.min(31));
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Draws the next delay and advances the sequence.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.next_cap();
        self.attempt = self.attempt.saturating_add(1);
        cap.mul_f64(rand::rng().random_range(0.0..=1.0))
    }

    /// Returns how many delays were drawn.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Starts again from the initial delay.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn set(not_before: u64, expires_at: u64) -> CertSet {
        CertSet {
            chain_pem: String::new(),
            root_bundle_pem: String::new(),
            serial: String::new(),
            not_before: UNIX_EPOCH + Duration::from_secs(not_before),
            valid_from: UNIX_EPOCH + Duration::from_secs(not_before),
            expires_at: UNIX_EPOCH + Duration::from_secs(expires_at),
            anchor_der: Vec::new(),
        }
    }

    #[test]
    fn renew_at_half_lifetime() {
        let policy = RenewPolicy {
            ratio: 0.5,
            jitter: 0.1,
        };
        let set = set(1_000, 2_000);
        let at = |draw| {
            policy
                .renew_at_with_draw(&set, draw)
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs()
        };
        assert_eq!(at(0.0), 1_500);
        assert_eq!(at(1.0), 1_400);
        assert_eq!(at(-1.0), 1_600);
    }

    #[test]
    fn renew_at_random_stays_in_band() {
        let policy = RenewPolicy {
            ratio: 0.5,
            jitter: 0.1,
        };
        let set = set(0, 1_000);
        for _ in 0..1_000 {
            let secs = policy
                .renew_at(&set)
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs_f64();
            assert!((400.0..=600.0).contains(&secs), "{secs}");
        }
    }

    #[test]
    fn backoff_caps_double_to_max() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut caps = Vec::new();
        for _ in 0..8 {
            caps.push(backoff.next_cap().as_secs());
            let delay = backoff.next_delay();
            assert!(delay <= Duration::from_secs(60));
        }
        assert_eq!(caps, vec![1, 2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn backoff_survives_many_attempts() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..100 {
            assert!(backoff.next_delay() <= Duration::from_secs(60));
        }
        backoff.reset();
        assert_eq!(backoff.next_cap(), Duration::from_secs(1));
    }
}
