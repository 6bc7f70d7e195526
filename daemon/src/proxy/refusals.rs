//! Rate limit on the audit records of refused connections.
//!
//! Any local process can dial the proxy port, and an agent can dial
//! undeclared destinations in a loop: one record per refusal would let
//! either fill the state disk, and once records cannot be written every
//! agent is refused (fail closed). So refusals are recorded one by one up to
//! a burst per source (an agent, or "no attestation"), then at a steady rate;
//! the rest are counted and written as one summary record per source every
//! [`SUMMARY_EVERY`], with how many there were, when, to where and why.
//! Every refused connection is still refused, and still counted in the audit.

use std::{collections::BTreeMap, time::Instant};

use crate::audit::{
    ratelimit::{Limiter, BURST, PER_SECOND},
    Session, Verdict,
};

pub use crate::audit::ratelimit::SUMMARY_EVERY;

/// Destinations named in a summary; the others are counted together.
const NAMED_DESTINATIONS: usize = 8;

/// What to do with one refusal.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Record it as its own session record.
    Record,
    /// Counted into the source's next summary.
    Counted,
}

#[derive(Debug)]
struct Summary {
    count: u64,
    first_at: String,
    last_at: String,
    /// The first counted refusal, as the template of the summary record.
    first: Session,
    by_destination: BTreeMap<String, u64>,
    other_destinations: u64,
    reasons: BTreeMap<String, u64>,
}

#[derive(Debug)]
pub struct Refusals {
    limiter: Limiter<String, Summary>,
}

impl Default for Refusals {
    fn default() -> Self {
        Self {
            limiter: Limiter::new("other sources".to_owned()),
        }
    }
}

/// The source a refusal is limited under.
fn source_of(record: &Session) -> String {
    match &record.agent {
        Some(agent) => format!("agent {agent}"),
        None if record.pid == 0 => "no kernel attestation".to_owned(),
        None => format!("unknown cgroup {}", record.cgroup_id),
    }
}

impl Refusals {
    /// Decides whether `record` (a refusal, complete) is written now or
    /// counted for the next summary.
    pub fn admit(&self, record: &Session, now: Instant) -> Admit {
        let recorded = self.limiter.admit(source_of(record), now, |pending| {
            let summary = pending.get_or_insert_with(|| Summary {
                count: 0,
                first_at: record.started_at.clone(),
                last_at: record.started_at.clone(),
                first: record.clone(),
                by_destination: BTreeMap::new(),
                other_destinations: 0,
                reasons: BTreeMap::new(),
            });
            summary.count += 1;
            summary.last_at.clone_from(&record.started_at);
            if let Some(n) = summary.by_destination.get_mut(&record.dst) {
                *n += 1;
            } else if summary.by_destination.len() < NAMED_DESTINATIONS {
                summary.by_destination.insert(record.dst.clone(), 1);
            } else {
                summary.other_destinations += 1;
            }
            // Reasons name the destination; a bounded set all the same.
            if let Some(n) = summary.reasons.get_mut(&record.reason) {
                *n += 1;
            } else if summary.reasons.len() < NAMED_DESTINATIONS {
                summary.reasons.insert(record.reason.clone(), 1);
            }
        });
        if recorded {
            Admit::Record
        } else {
            Admit::Counted
        }
    }

    /// The summary records of every source with counted refusals (the counts
    /// start again from zero). `id` gives each its session id.
    pub fn take_summaries(&self, mut id: impl FnMut() -> crate::audit::SessionId) -> Vec<Session> {
        self.limiter
            .take()
            .into_iter()
            .map(|(key, s)| s.into_record(&key, id()))
            .collect()
    }
}

impl Summary {
    fn into_record(self, source: &str, id: crate::audit::SessionId) -> Session {
        let mut destinations: Vec<String> = self
            .by_destination
            .iter()
            .map(|(dst, n)| format!("{dst} x{n}"))
            .collect();
        if self.other_destinations > 0 {
            destinations.push(format!("{} to other destinations", self.other_destinations));
        }
        let reasons: Vec<String> = self
            .reasons
            .iter()
            .map(|(reason, n)| format!("{reason} (x{n})"))
            .collect();
        let mut record = self.first;
        record.id = id;
        record.verdict = Verdict::Deny;
        record.dst = destinations.join(", ");
        record.reason = format!(
            "{} more refused connections from {source} between {} and {}, over the rate \
             recorded one by one ({BURST} at once, then {PER_SECOND}/s); each was refused: {}",
            self.count,
            self.first_at,
            self.last_at,
            reasons.join("; ")
        );
        record.started_at = self.first_at;
        record.ended_at = Some(self.last_at);
        record.end_reason = Some("refused by cordon".into());
        record.refusals = Some(self.count);
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::SessionId;
    use std::time::Duration;

    fn refusal(agent: Option<&str>, dst: &str, at: &str) -> Session {
        Session {
            id: SessionId::from_raw(1),
            agent: agent.map(str::to_owned),
            pid: if agent.is_some() { 42 } else { 0 },
            uid: 1000,
            gid: 1000,
            exe: None,
            comm: "bot".into(),
            cgroup_id: 7,
            cgroup: None,
            dst: dst.into(),
            resource: None,
            protocol: None,
            verdict: Verdict::Deny,
            reason: format!("destination {dst} is not a declared resource"),
            started_at: at.into(),
            ended_at: Some(at.into()),
            bytes_up: 0,
            bytes_down: 0,
            end_reason: Some("refused by cordon".into()),
            on_behalf_of: None,
            grant: None,
            refusals: None,
        }
    }

    #[test]
    fn a_burst_is_recorded_then_the_rest_counted_into_one_summary_per_source() {
        let r = Refusals::default();
        let t0 = Instant::now();
        let mut recorded = 0;
        for i in 0..100u32 {
            let dst = format!("10.0.0.{}:5432", i % 10);
            if r.admit(&refusal(Some("bot"), &dst, "t1"), t0) == Admit::Record {
                recorded += 1;
            }
        }
        assert_eq!(recorded, BURST);
        // Another source has its own budget.
        assert_eq!(
            r.admit(&refusal(None, "127.0.0.1:1", "t1"), t0),
            Admit::Record
        );
        let mut next = 100;
        let summaries = r.take_summaries(|| {
            next += 1;
            SessionId::from_raw(next)
        });
        assert_eq!(summaries.len(), 1, "{summaries:?}");
        let s = &summaries[0];
        assert_eq!(s.refusals, Some(u64::from(100 - BURST)));
        assert_eq!(s.agent.as_deref(), Some("bot"));
        assert_eq!(s.verdict, Verdict::Deny);
        // 8 destinations named, the other two counted together.
        // The first 32 were recorded: counting starts at 10.0.0.2.
        assert!(s.dst.starts_with("10.0.0.2:5432 x7, "), "{}", s.dst);
        assert!(s.dst.ends_with(", 12 to other destinations"), "{}", s.dst);
        assert!(
            s.reason
                .starts_with("68 more refused connections from agent bot"),
            "{}",
            s.reason
        );
        assert!(
            s.reason.contains("is not a declared resource"),
            "{}",
            s.reason
        );
        // Taken: nothing pending any more.
        assert!(r.take_summaries(|| SessionId::from_raw(0)).is_empty());
        // The budget refills at the steady rate.
        let later = t0 + Duration::from_secs(3);
        let mut again = 0;
        for _ in 0..10 {
            if r.admit(&refusal(Some("bot"), "10.0.0.1:1", "t2"), later) == Admit::Record {
                again += 1;
            }
        }
        assert_eq!(again, 3 * PER_SECOND);
    }
}
