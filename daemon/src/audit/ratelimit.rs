//! Token buckets for audit records a caller can cause at will (refused
//! connections, failed authentications on the control socket): a burst is
//! recorded one by one, then a steady rate; the rest are counted and written
//! as summaries, so nobody can fill the state disk (and, through it, shut
//! every agent out) while every occurrence is still counted in the audit.

use std::time::{Duration, Instant};

/// Records one by one in a burst, per source.
pub const BURST: u32 = 32;
/// Then this many per second, per source.
pub const PER_SECOND: u32 = 1;
/// How often counted occurrences are written as summaries.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(5);
/// Sources tracked at most; beyond it, new sources share one bucket.
pub const MAX_SOURCES: usize = 4096;

#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    pub fn new(now: Instant) -> Self {
        Self {
            tokens: f64::from(BURST),
            refilled: now,
        }
    }

    /// True: record this one; false: count it for the next summary.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * f64::from(PER_SECOND)).min(f64::from(BURST));
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(t0);
        let burst = (0..100).filter(|_| b.take(t0)).count();
        assert_eq!(burst, BURST as usize);
        let later = t0 + Duration::from_secs(3);
        let refilled = (0..10).filter(|_| b.take(later)).count();
        assert_eq!(refilled, 3 * PER_SECOND as usize);
    }
}
