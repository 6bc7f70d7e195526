//! Token buckets for audit records a caller can cause at will (refused
//! connections, failed authentications on the control socket): a burst is
//! recorded one by one, then a steady rate; the rest are counted and written
//! as summaries, so nobody can fill the state disk (and, through it, shut
//! every agent out) while every occurrence is still counted in the audit.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::Mutex,
    time::{Duration, Instant},
};

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

/// A bucket per source and what was counted over its rate (`S`, folded by
/// the caller), until [`Limiter::take`] hands it out for a summary.
#[derive(Debug)]
pub struct Limiter<K, S> {
    sources: Mutex<HashMap<K, (Bucket, Option<S>)>>,
    /// The source that sources beyond [`MAX_SOURCES`] share.
    overflow: K,
}

impl<K: Eq + Hash + Clone, S> Limiter<K, S> {
    pub fn new(overflow: K) -> Self {
        Self {
            sources: Mutex::new(HashMap::new()),
            overflow,
        }
    }

    /// True: record this occurrence on its own. False: it was counted, by
    /// `count` on the source's pending summary (None before the first).
    /// A poisoned lock records (never loses an occurrence).
    pub fn admit(&self, key: K, now: Instant, count: impl FnOnce(&mut Option<S>)) -> bool {
        let Ok(mut sources) = self.sources.lock() else {
            return true;
        };
        let key = if !sources.contains_key(&key) && sources.len() >= MAX_SOURCES {
            self.overflow.clone()
        } else {
            key
        };
        let (bucket, pending) = sources
            .entry(key)
            .or_insert_with(|| (Bucket::new(now), None));
        if bucket.take(now) {
            return true;
        }
        count(pending);
        false
    }

    /// Every source's counted summary (counting starts again from none).
    pub fn take(&self) -> Vec<(K, S)> {
        let Ok(mut sources) = self.sources.lock() else {
            return Vec::new();
        };
        sources
            .iter_mut()
            .filter_map(|(k, (_, pending))| pending.take().map(|s| (k.clone(), s)))
            .collect()
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

    #[test]
    fn counts_go_to_their_source_and_sources_beyond_the_cap_share_one() {
        let t0 = Instant::now();
        let l: Limiter<u32, u64> = Limiter::new(u32::MAX);
        let count = |p: &mut Option<u64>| *p.get_or_insert(0) += 1;
        let recorded = (0..BURST + 5).filter(|_| l.admit(1, t0, count)).count();
        assert_eq!(recorded, BURST as usize);
        for key in 2..=MAX_SOURCES as u32 {
            assert!(l.admit(key, t0, count), "a new source starts with a burst");
        }
        // The table is full: new sources share the overflow bucket.
        let extra = (0..BURST + 3)
            .filter(|i| !l.admit(100_000 + i, t0, count))
            .count();
        assert_eq!(extra, 3);
        let mut taken = l.take();
        taken.sort_unstable();
        assert_eq!(taken, vec![(1, 5), (u32::MAX, 3)]);
        assert!(l.take().is_empty());
    }
}
