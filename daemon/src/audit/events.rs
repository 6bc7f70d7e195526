//! Audit events: what humans (and Cordon on their behalf) did around grants
//! and approvals — requests, approvals, denials, activations, expiries,
//! revocations, held commands and their outcomes, refused callers. One sled
//! tree, time-ordered ids; every event is flushed to disk before the action
//! it records is answered (`cordon audit list` reads them back).
//!
//! `who` is the actor's audit name (`oidc:<issuer>#<subject>`, `uid:N`) or
//! `cordon` for what the daemon does by itself (expiry, timeouts). Nothing
//! here ever holds a token.

use std::{
    fmt,
    str::FromStr,
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::AuditError;

/// `who` for what the daemon does by itself.
pub const SYSTEM: &str = "cordon";

/// Time-ordered event id (microseconds since the epoch, made unique), shown
/// as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(u64);

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for EventId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 {
            return Err(format!("`{s}` is not an event id (16 hex digits)"));
        }
        u64::from_str_radix(s, 16)
            .map(EventId)
            .map_err(|_| format!("`{s}` is not an event id (16 hex digits)"))
    }
}

impl Serialize for EventId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A just-in-time grant was requested.
    GrantRequested,
    /// One approval of a grant request (more may be needed).
    GrantApproved,
    /// The request had all its approvals: the grant is live.
    GrantActivated,
    /// A reviewer denied the request (or its requester withdrew it).
    GrantDenied,
    /// An undecided request ran out of time.
    GrantLapsed,
    /// A live grant reached its expiry.
    GrantExpired,
    /// A live grant was revoked.
    GrantRevoked,
    /// A command was held for approval.
    CommandHeld,
    CommandApproved,
    CommandDenied,
    CommandTimedOut,
    /// The session waiting for the command ended before a decision.
    CommandAbandoned,
    /// Live sessions were cut (revocation or expiry).
    SessionsCut,
    /// The notification hook failed.
    NotifyFailed,
    /// An authenticated caller was not allowed to do what they asked
    /// (self-approval, not a reviewer, ...).
    Refused,
    /// A caller could not be authenticated (bad or missing ID token).
    AuthFailed,
    /// Written by a newer version.
    #[serde(other)]
    Unknown,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::GrantRequested => "grant_requested",
            EventKind::GrantApproved => "grant_approved",
            EventKind::GrantActivated => "grant_activated",
            EventKind::GrantDenied => "grant_denied",
            EventKind::GrantLapsed => "grant_lapsed",
            EventKind::GrantExpired => "grant_expired",
            EventKind::GrantRevoked => "grant_revoked",
            EventKind::CommandHeld => "command_held",
            EventKind::CommandApproved => "command_approved",
            EventKind::CommandDenied => "command_denied",
            EventKind::CommandTimedOut => "command_timed_out",
            EventKind::CommandAbandoned => "command_abandoned",
            EventKind::SessionsCut => "sessions_cut",
            EventKind::NotifyFailed => "notify_failed",
            EventKind::Refused => "refused",
            EventKind::AuthFailed => "auth_failed",
            EventKind::Unknown => "unknown",
        }
    }
}

/// One audit event, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: EventId,
    /// RFC 3339, UTC.
    pub at: String,
    /// Audit name of the actor, or [`SYSTEM`].
    pub who: String,
    pub what: EventKind,
    /// The grant (`g…`), held command (`h…`) or session the event is about.
    pub target: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Event-specific facts (reason, actions, TTL, command text and hash,
    /// sessions cut, ...).
    #[serde(default)]
    pub details: serde_json::Value,
}

/// What a caller fills in; [`Events::record`] adds id and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub who: String,
    pub what: EventKind,
    pub target: String,
    pub agent: Option<String>,
    pub resource: Option<String>,
    pub details: serde_json::Value,
}

impl NewEvent {
    pub fn new(who: impl Into<String>, what: EventKind, target: impl Into<String>) -> NewEvent {
        NewEvent {
            who: who.into(),
            what,
            target: target.into(),
            agent: None,
            resource: None,
            details: serde_json::Value::Null,
        }
    }

    pub fn on(mut self, agent: &str, resource: &str) -> NewEvent {
        self.agent = Some(agent.to_owned());
        self.resource = Some(resource.to_owned());
        self
    }

    pub fn details(mut self, details: serde_json::Value) -> NewEvent {
        self.details = details;
        self
    }
}

/// Which events [`Events::list`] returns.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub limit: usize,
    /// Only events about this target (grant, hold or session id).
    pub target: Option<String>,
}

/// The event log.
pub struct Events {
    db: sled::Db,
    tree: sled::Tree,
    last: AtomicU64,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Events {
    pub fn open(db: &sled::Db) -> Result<Events, AuditError> {
        let tree = db.open_tree("events").map_err(AuditError::Store)?;
        let last = tree
            .last()
            .map_err(AuditError::Store)?
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        Ok(Events {
            db: db.clone(),
            tree,
            last: AtomicU64::new(last),
        })
    }

    fn next_id(&self) -> EventId {
        let now = now_micros();
        let prev = self
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |prev| {
                Some(now.max(prev.saturating_add(1)))
            })
            .unwrap_or(now);
        EventId(now.max(prev.saturating_add(1)))
    }

    /// Stores the event and flushes the database (so everything written to
    /// it before, e.g. a grant's new state, is durable too) before returning.
    pub fn record(&self, ev: NewEvent) -> Result<Event, AuditError> {
        let event = Event {
            id: self.next_id(),
            at: super::rfc3339(time::OffsetDateTime::now_utc()),
            who: ev.who,
            what: ev.what,
            target: ev.target,
            agent: ev.agent,
            resource: ev.resource,
            details: ev.details,
        };
        let bytes = serde_json::to_vec(&event).map_err(AuditError::Encode)?;
        self.tree
            .insert(event.id.0.to_be_bytes(), bytes)
            .map_err(AuditError::Store)?;
        self.db.flush().map_err(AuditError::Store)?;
        Ok(event)
    }

    /// [`Events::record`], logging instead of failing: for events that
    /// follow an action already taken (nothing is left to refuse).
    pub fn record_or_log(&self, ev: NewEvent) {
        let what = ev.what;
        let target = ev.target.clone();
        if let Err(e) = self.record(ev) {
            tracing::error!(error = %e, what = what.as_str(), %target, "could not record an audit event");
        }
    }

    /// Newest first.
    pub fn list(&self, filter: &Filter) -> Result<Vec<Event>, AuditError> {
        let limit = filter.limit.max(1);
        let mut out = Vec::new();
        for item in self.tree.iter().rev() {
            let (_, v) = item.map_err(AuditError::Store)?;
            let Ok(ev) = serde_json::from_slice::<Event>(&v) else {
                continue;
            };
            if filter.target.as_ref().is_some_and(|t| &ev.target != t) {
                continue;
            }
            out.push(ev);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_ordered_filtered_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let ids: Vec<EventId>;
        {
            let db = sled::open(dir.path()).unwrap();
            let events = Events::open(&db).unwrap();
            ids = (0..5)
                .map(|i| {
                    events
                        .record(
                            NewEvent::new("uid:0", EventKind::GrantRequested, format!("g{i}"))
                                .on("bot", "db")
                                .details(serde_json::json!({"reason": "why"})),
                        )
                        .unwrap()
                        .id
                })
                .collect();
            assert!(ids.windows(2).all(|w| w[0] < w[1]));
        }
        let db = sled::open(dir.path()).unwrap();
        let events = Events::open(&db).unwrap();
        let all = events
            .list(&Filter {
                limit: 100,
                target: None,
            })
            .unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[0].target, "g4", "newest first");
        assert_eq!(all[0].agent.as_deref(), Some("bot"));
        let one = events
            .list(&Filter {
                limit: 100,
                target: Some("g2".into()),
            })
            .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].what, EventKind::GrantRequested);
        // New ids keep growing after a restart.
        let next = events
            .record(NewEvent::new(SYSTEM, EventKind::GrantExpired, "g0"))
            .unwrap();
        assert!(next.id > ids[4]);
        let limited = events
            .list(&Filter {
                limit: 2,
                target: None,
            })
            .unwrap();
        assert_eq!(limited.len(), 2);
        // Unknown kinds from a newer version still parse.
        let ev: Event = serde_json::from_str(
            r#"{"id":"0000000000000001","at":"x","who":"w","what":"brand_new","target":"t"}"#,
        )
        .unwrap();
        assert_eq!(ev.what, EventKind::Unknown);
        assert!("zz".parse::<EventId>().is_err());
    }
}
