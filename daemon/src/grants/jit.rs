//! Just-in-time grants: a human asks (`cordon request`) for agent ×
//! resource × actions × TTL with a reason; reviewers approve or deny; with
//! the resource's `approvals_required` distinct approvals the grant goes
//! live for its TTL, counted from that moment (capped at the resource's
//! `max_ttl`), then expires; it can be revoked before. An undecided request
//! lapses after `[approvals] request_expiry_secs`.
//!
//! Records live in sled (tree `jit_grants`, in the audit database) and
//! survive a restart; the live ones are mirrored in memory ([`Active`]) for
//! `grants::check` on every connection. Who may decide is checked by the
//! approvals hub (`approvals`); the state machine and its rules are here.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

use super::{GrantAction, Pins};
use crate::{
    audit::AuditError,
    config::{approval::format_duration, Config},
};

/// Longest reason text accepted.
pub const MAX_REASON: usize = 1000;

/// Where a just-in-time grant is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for approvals.
    Pending,
    /// Approved, until `expires_at`.
    Active,
    /// A reviewer said no (or the requester withdrew it).
    Denied,
    /// Nobody decided in time.
    Lapsed,
    /// Ran out.
    Expired,
    /// Ended early by a human.
    Revoked,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Active => "active",
            State::Denied => "denied",
            State::Lapsed => "lapsed",
            State::Expired => "expired",
            State::Revoked => "revoked",
        }
    }
}

/// One human decision (or the daemon's, for expiry: `cordon`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub by: String,
    /// RFC 3339, UTC.
    pub at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A just-in-time grant (or the request for one), as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JitGrant {
    /// `g` + 16 hex digits, time-ordered.
    pub id: String,
    pub agent: String,
    pub resource: String,
    pub actions: Vec<GrantAction>,
    /// The role/database/login the grant narrows sessions to (see
    /// [`validate`]).
    #[serde(default)]
    pub pins: Pins,
    /// Asked-for lifetime, counted from activation.
    pub ttl_secs: u64,
    pub reason: String,
    /// Audit name of the requester.
    pub requested_by: String,
    pub requested_at: String,
    pub state: State,
    pub approvals_required: usize,
    #[serde(default)]
    pub approvals: Vec<Decision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The denial, lapse, expiry or revocation that ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Decision>,
}

/// Why a grant operation was refused. Messages are for the human who asked.
#[derive(Debug, thiserror::Error)]
pub enum JitError {
    #[error("{0}")]
    Rule(String),
    #[error("no grant request or grant `{0}`")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] AuditError),
}

fn rule(msg: impl Into<String>) -> JitError {
    JitError::Rule(msg.into())
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

impl JitGrant {
    pub fn expires(&self) -> Option<OffsetDateTime> {
        self.expires_at.as_deref().and_then(parse_time)
    }

    /// The approver whose approval made it live.
    pub fn activated_by(&self) -> Option<&str> {
        match self.state {
            State::Pending | State::Denied | State::Lapsed => None,
            _ => self.approvals.last().map(|d| d.by.as_str()),
        }
    }

    /// Records `by`'s approval; true when that made the grant live.
    /// `max_ttl` is the resource's cap now (the config may have lowered it
    /// since the request).
    pub fn approve(
        &mut self,
        by: &str,
        now: OffsetDateTime,
        max_ttl: Duration,
    ) -> Result<bool, JitError> {
        if self.state != State::Pending {
            return Err(rule(format!(
                "grant request {} is {}, not pending: nothing to approve",
                self.id,
                self.state.as_str()
            )));
        }
        if by == self.requested_by {
            return Err(rule(format!(
                "{by} requested {} and may not approve their own request",
                self.id
            )));
        }
        if self.approvals.iter().any(|a| a.by == by) {
            return Err(rule(format!(
                "{by} has already approved {}; it needs {} distinct approvals",
                self.id, self.approvals_required
            )));
        }
        let at = crate::rfc3339(now);
        self.approvals.push(Decision {
            by: by.to_owned(),
            at: at.clone(),
            reason: None,
        });
        if self.approvals.len() < self.approvals_required {
            return Ok(false);
        }
        let ttl = Duration::from_secs(self.ttl_secs).min(max_ttl);
        self.state = State::Active;
        self.activated_at = Some(at);
        self.expires_at = Some(crate::rfc3339(now + ttl));
        Ok(true)
    }

    /// A reviewer's (or the requester's) no.
    pub fn deny(&mut self, by: &str, reason: &str, now: OffsetDateTime) -> Result<(), JitError> {
        if self.state != State::Pending {
            return Err(rule(format!(
                "grant request {} is {}, not pending: nothing to deny (use `cordon grants revoke` for a live grant)",
                self.id,
                self.state.as_str()
            )));
        }
        self.state = State::Denied;
        self.ended = Some(Decision {
            by: by.to_owned(),
            at: crate::rfc3339(now),
            reason: Some(reason.to_owned()),
        });
        Ok(())
    }

    /// Ends a live grant early.
    pub fn revoke(&mut self, by: &str, reason: &str, now: OffsetDateTime) -> Result<(), JitError> {
        if self.state != State::Active {
            return Err(rule(format!(
                "grant {} is {}, not active: nothing to revoke{}",
                self.id,
                self.state.as_str(),
                if self.state == State::Pending {
                    " (use `cordon deny` for a pending request)"
                } else {
                    ""
                }
            )));
        }
        self.state = State::Revoked;
        self.ended = Some(Decision {
            by: by.to_owned(),
            at: crate::rfc3339(now),
            reason: Some(reason.to_owned()),
        });
        Ok(())
    }

    /// Expires a live grant past its time, or lapses a request nobody
    /// decided within `request_expiry`. True when the state changed.
    pub fn age(&mut self, now: OffsetDateTime, request_expiry: Duration) -> bool {
        let due = match self.state {
            State::Active => self.expires().is_none_or(|e| e <= now),
            State::Pending => {
                parse_time(&self.requested_at).is_none_or(|t| t + request_expiry <= now)
            }
            _ => false,
        };
        if !due {
            return false;
        }
        let (state, reason) = if self.state == State::Active {
            (
                State::Expired,
                format!(
                    "expired at {}",
                    self.expires_at.as_deref().unwrap_or("an unreadable time")
                ),
            )
        } else {
            (
                State::Lapsed,
                format!("not decided within {}", format_duration(request_expiry)),
            )
        };
        self.state = state;
        self.ended = Some(Decision {
            by: crate::audit::events::SYSTEM.to_owned(),
            at: crate::rfc3339(now),
            reason: Some(reason),
        });
        true
    }
}

/// A request as the requester makes it.
#[derive(Debug, Clone)]
pub struct NewRequest {
    pub agent: String,
    pub resource: String,
    pub actions: Vec<GrantAction>,
    /// Pins the requester named (empty: inherit, see [`validate`]).
    pub pins: Pins,
    pub ttl: Duration,
    pub reason: String,
    pub requested_by: String,
}

/// Checks a request against the config: the agent and resource exist, the
/// resource offers the actions, the TTL is within its `max_ttl`, there is a
/// reason, the pins fit the resource's protocol. Returns the actions, sorted
/// and deduplicated (default: read), and the pins the grant will carry: the
/// requested ones, or when none were named those of the agent's static
/// grants on the resource (live or not), so that a just-in-time grant adds
/// actions and time but never a database or account. Static grants pinned
/// differently from each other make the requester choose.
pub fn validate(config: &Config, req: &NewRequest) -> Result<(Vec<GrantAction>, Pins), JitError> {
    if config.agent(&req.agent).is_none() {
        return Err(rule(format!(
            "unknown agent `{}`: it is not declared in {}",
            req.agent,
            config.file.display()
        )));
    }
    let Some(resource) = config.resources.iter().find(|r| r.name == req.resource) else {
        return Err(rule(format!(
            "unknown resource `{}`: it is not declared in {}",
            req.resource,
            config.file.display()
        )));
    };
    let mut actions = req.actions.clone();
    if actions.is_empty() {
        actions.push(GrantAction::Read);
    }
    actions.sort();
    actions.dedup();
    let offered = resource.approval.offered();
    if let Some(a) = actions.iter().find(|a| !offered.contains(a)) {
        let names: Vec<&str> = offered.iter().map(|a| a.as_str()).collect();
        return Err(rule(format!(
            "resource `{}` offers no `{a}` action (its `actions`: {})",
            resource.name,
            names.join(", ")
        )));
    }
    let max = resource.approval.max_ttl;
    if req.ttl.is_zero() {
        return Err(rule("--ttl must be more than 0"));
    }
    if req.ttl > max {
        return Err(rule(format!(
            "--ttl {} is longer than resource `{}` allows (max_ttl = \"{}\")",
            format_duration(req.ttl),
            resource.name,
            format_duration(max)
        )));
    }
    let reason = req.reason.trim();
    if reason.is_empty() {
        return Err(rule("a request needs a --reason reviewers can judge it by"));
    }
    if reason.len() > MAX_REASON || reason.chars().any(char::is_control) {
        return Err(rule(format!(
            "--reason must be one line of at most {MAX_REASON} bytes"
        )));
    }
    let pins = request_pins(config, req, resource.protocol)?;
    Ok((actions, pins))
}

/// See [`validate`].
fn request_pins(
    config: &Config,
    req: &NewRequest,
    protocol: crate::config::Protocol,
) -> Result<Pins, JitError> {
    use crate::config::Protocol;
    let p = &req.pins;
    if p.login.is_some() && protocol != Protocol::Ssh {
        return Err(rule("--login only applies to ssh resources"));
    }
    if (p.role.is_some() || p.database.is_some()) && protocol != Protocol::Postgres {
        return Err(rule(
            "--role and --database only apply to postgres resources",
        ));
    }
    if let Some(l) = &p.login {
        if !crate::config::valid_login(l) {
            return Err(rule(format!(
                "--login: expected a user name of 1-32 of [A-Za-z0-9._-], got `{}`",
                l.escape_debug()
            )));
        }
    }
    for (flag, v) in [("--role", &p.role), ("--database", &p.database)] {
        if let Some(v) = v {
            if v.is_empty() || v.len() > 63 || v.chars().any(char::is_control) {
                return Err(rule(format!(
                    "{flag}: expected a PostgreSQL name of 1-63 bytes, got `{}`",
                    v.escape_debug()
                )));
            }
        }
    }
    let inherited: Vec<Pins> = config
        .grants
        .iter()
        .filter(|g| g.agent.as_str() == req.agent && g.resource == req.resource)
        .map(Pins::of)
        .collect();
    if inherited.is_empty() {
        return Ok(p.clone());
    }
    // Each pin the request does not name comes from the static grants: the
    // one value they agree on (which may be "any"), else the requester
    // must name it.
    let pick = |named: &Option<String>,
                field: fn(&Pins) -> &Option<String>,
                flag: &str|
     -> Result<Option<String>, JitError> {
        if named.is_some() {
            return Ok(named.clone());
        }
        let mut values: Vec<&Option<String>> = inherited.iter().map(field).collect();
        values.sort();
        values.dedup();
        match values.as_slice() {
            [one] => Ok((*one).clone()),
            several => {
                let list: Vec<String> = several
                    .iter()
                    .map(|v| v.as_deref().unwrap_or("any").to_owned())
                    .collect();
                Err(rule(format!(
                    "agent `{}` has grants on `{}` pinned to different values ({}): name {flag} \
                     for this grant",
                    req.agent,
                    req.resource,
                    list.join(", ")
                )))
            }
        }
    };
    Ok(Pins {
        role: pick(&p.role, |x| &x.role, "--role")?,
        database: pick(&p.database, |x| &x.database, "--database")?,
        login: pick(&p.login, |x| &x.login, "--login")?,
    })
}

// ---------------------------------------------------------------------------
// the live set

/// A live just-in-time grant, as `grants::check` needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveGrant {
    pub id: String,
    pub agent: String,
    pub resource: String,
    pub actions: Vec<GrantAction>,
    pub pins: Pins,
    pub expires: OffsetDateTime,
    pub requested_by: String,
    pub approved_by: Option<String>,
}

impl ActiveGrant {
    fn of(g: &JitGrant) -> Option<ActiveGrant> {
        (g.state == State::Active).then_some(())?;
        Some(ActiveGrant {
            id: g.id.clone(),
            agent: g.agent.clone(),
            resource: g.resource.clone(),
            actions: g.actions.clone(),
            pins: g.pins.clone(),
            expires: g.expires()?,
            requested_by: g.requested_by.clone(),
            approved_by: g.activated_by().map(str::to_owned),
        })
    }
}

/// The live just-in-time grants, in memory. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Active(Arc<RwLock<Vec<ActiveGrant>>>);

impl Active {
    /// The grants for `agent` on `resource` that are live at `now`. A
    /// poisoned lock yields none (fail closed).
    pub fn live(&self, agent: &str, resource: &str, now: OffsetDateTime) -> Vec<ActiveGrant> {
        self.0
            .read()
            .map(|all| {
                all.iter()
                    .filter(|g| g.agent == agent && g.resource == resource && g.expires > now)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Mirrors `g`: inserted if active, removed otherwise.
    pub fn sync(&self, g: &JitGrant) {
        if let Ok(mut all) = self.0.write() {
            all.retain(|a| a.id != g.id);
            if let Some(a) = ActiveGrant::of(g) {
                all.push(a);
            }
        }
    }

    /// Forgets `id` (before a revocation is even written: new sessions are
    /// refused first).
    pub fn remove(&self, id: &str) {
        if let Ok(mut all) = self.0.write() {
            all.retain(|a| a.id != id);
        }
    }

    /// The soonest expiry among live grants.
    pub fn next_expiry(&self) -> Option<OffsetDateTime> {
        self.0
            .read()
            .ok()
            .and_then(|all| all.iter().map(|g| g.expires).min())
    }
}

// ---------------------------------------------------------------------------
// the store

/// Just-in-time grants in sled.
pub struct Store {
    tree: sled::Tree,
    last: AtomicU64,
    /// Serializes read-modify-write of records.
    lock: Mutex<()>,
    active: Active,
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn key_of(id: &str) -> Option<[u8; 8]> {
    let hex = id.strip_prefix('g')?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().map(u64::to_be_bytes)
}

impl Store {
    /// Opens the tree and loads the live grants.
    pub fn open(db: &sled::Db) -> Result<Store, AuditError> {
        let tree = db.open_tree("jit_grants").map_err(AuditError::Store)?;
        let last = tree
            .last()
            .map_err(AuditError::Store)?
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        let store = Store {
            tree,
            last: AtomicU64::new(last),
            lock: Mutex::new(()),
            active: Active::default(),
        };
        for g in store.list()? {
            store.active.sync(&g);
        }
        Ok(store)
    }

    /// The live set `grants::check` consults.
    pub fn active(&self) -> &Active {
        &self.active
    }

    fn next_id(&self) -> String {
        let now = now_micros();
        let prev = self
            .last
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |prev| {
                Some(now.max(prev.saturating_add(1)))
            })
            .unwrap_or(now);
        format!("g{:016x}", now.max(prev.saturating_add(1)))
    }

    fn put(&self, g: &JitGrant) -> Result<(), JitError> {
        let key = key_of(&g.id).ok_or_else(|| JitError::NotFound(g.id.clone()))?;
        let bytes = serde_json::to_vec(g).map_err(AuditError::Encode)?;
        self.tree.insert(key, bytes).map_err(AuditError::Store)?;
        Ok(())
    }

    /// Stores a new pending request (validated by the caller). Not durable
    /// until the caller's audit event is recorded (which flushes).
    pub fn create(
        &self,
        req: NewRequest,
        (actions, pins): (Vec<GrantAction>, Pins),
        approvals_required: usize,
        now: OffsetDateTime,
    ) -> Result<JitGrant, JitError> {
        let g = JitGrant {
            id: self.next_id(),
            agent: req.agent,
            resource: req.resource,
            actions,
            pins,
            ttl_secs: req.ttl.as_secs(),
            reason: req.reason.trim().to_owned(),
            requested_by: req.requested_by,
            requested_at: crate::rfc3339(now),
            state: State::Pending,
            approvals_required: approvals_required.max(1),
            approvals: Vec::new(),
            activated_at: None,
            expires_at: None,
            ended: None,
        };
        let _guard = self.lock.lock().map_err(|_| AuditError::Poisoned)?;
        self.put(&g)?;
        Ok(g)
    }

    pub fn get(&self, id: &str) -> Result<Option<JitGrant>, JitError> {
        let Some(key) = key_of(id) else {
            return Ok(None);
        };
        Ok(self
            .tree
            .get(key)
            .map_err(AuditError::Store)?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Newest first.
    pub fn list(&self) -> Result<Vec<JitGrant>, AuditError> {
        let mut out = Vec::new();
        for item in self.tree.iter().rev() {
            let (_, v) = item.map_err(AuditError::Store)?;
            if let Ok(g) = serde_json::from_slice::<JitGrant>(&v) {
                out.push(g);
            }
        }
        Ok(out)
    }

    /// Applies `change` to grant `id` and stores the result (the live set
    /// is the caller's to [`Active::sync`], once the change is audited).
    pub fn update<T>(
        &self,
        id: &str,
        change: impl FnOnce(&mut JitGrant) -> Result<T, JitError>,
    ) -> Result<(JitGrant, T), JitError> {
        let _guard = self.lock.lock().map_err(|_| AuditError::Poisoned)?;
        let mut g = self
            .get(id)?
            .ok_or_else(|| JitError::NotFound(id.to_owned()))?;
        let out = change(&mut g)?;
        self.put(&g)?;
        Ok((g, out))
    }

    /// Every grant that expired or lapsed by `now`, updated and stored.
    pub fn age_all(
        &self,
        now: OffsetDateTime,
        request_expiry: Duration,
    ) -> Result<Vec<JitGrant>, JitError> {
        let _guard = self.lock.lock().map_err(|_| AuditError::Poisoned)?;
        let mut changed = Vec::new();
        for mut g in self.list()? {
            if matches!(g.state, State::Active | State::Pending) && g.age(now, request_expiry) {
                self.put(&g)?;
                changed.push(g);
            }
        }
        Ok(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A config with agent `bot` and these resources and grants.
    fn with(body: &str) -> Config {
        let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
        let text = format!(
            "[daemon]\nstate_dir = \"/s\"\ncontrol_socket = \"/c\"\npolicy_dir = \"{policies}\"\n\
             [[agent]]\nname = \"bot\"\n{body}"
        );
        Config::parse(Path::new("t.toml"), &text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn config() -> Config {
        with(
            r#"
[[resource]]
name = "db"
protocol = "postgres"
address = "10.0.0.5:5432"
credential = "c"
policy = "pg-readonly"
approvers = ["dba"]
approvals_required = 2
max_ttl = "1h"
actions = { read = "pg-readonly", admin = "pg-dba" }
[[resource]]
name = "box"
protocol = "tcp"
address = "10.0.0.6:22"
"#,
        )
    }

    fn req(resource: &str, actions: &[GrantAction], ttl: u64) -> NewRequest {
        NewRequest {
            agent: "bot".into(),
            resource: resource.into(),
            actions: actions.to_vec(),
            pins: Pins::default(),
            ttl: Duration::from_secs(ttl),
            reason: "incident 42".into(),
            requested_by: "oidc:i#alice".into(),
        }
    }

    #[test]
    fn requests_are_checked_against_the_resource() {
        let cfg = config();
        let ok = validate(
            &cfg,
            &req("db", &[GrantAction::Admin, GrantAction::Read], 1800),
        );
        assert_eq!(ok.unwrap().0, vec![GrantAction::Read, GrantAction::Admin]);
        // Default action: read. tcp resources offer all three.
        assert_eq!(
            validate(&cfg, &req("box", &[], 60)).unwrap().0,
            vec![GrantAction::Read]
        );
        assert!(validate(&cfg, &req("box", &[GrantAction::Admin], 3600)).is_ok());
        let table: [(NewRequest, &str); 6] = [
            (
                req("db", &[GrantAction::Write], 60),
                "offers no `write` action",
            ),
            (req("db", &[], 3601), "max_ttl = \"1h\""),
            (req("db", &[], 0), "more than 0"),
            (req("nope", &[], 60), "unknown resource `nope`"),
            (
                NewRequest {
                    agent: "ghost".into(),
                    ..req("db", &[], 60)
                },
                "unknown agent `ghost`",
            ),
            (
                NewRequest {
                    reason: "  ".into(),
                    ..req("db", &[], 60)
                },
                "--reason",
            ),
        ];
        for (r, want) in table {
            let e = validate(&cfg, &r).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
        // The default max_ttl is an hour.
        let e = validate(&cfg, &req("box", &[], 7200))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_ttl = \"1h\""), "{e}");
    }

    #[test]
    fn pins_are_named_or_inherited_and_never_widen() {
        let with_grants = |grants: &str| {
            with(&format!(
                r#"
[[resource]]
name = "db"
protocol = "postgres"
address = "10.0.0.5:5432"
credential = "c"
policy = "pg-readonly"
[[resource]]
name = "web"
protocol = "ssh"
address = "10.0.0.7:22"
credential = "k"
policy = "ssh-readonly"
host_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ"]
{grants}"#
            ))
        };
        let pinned = |role: Option<&str>, database: Option<&str>, login: Option<&str>| Pins {
            role: role.map(str::to_owned),
            database: database.map(str::to_owned),
            login: login.map(str::to_owned),
        };
        let ask = |resource: &str, pins: Pins| NewRequest {
            pins,
            ..req(resource, &[], 600)
        };
        // No static grant: no pins unless named.
        let cfg = with_grants("");
        assert_eq!(
            validate(&cfg, &ask("db", Pins::default())).unwrap().1,
            Pins::default()
        );
        let named = pinned(Some("analyst"), Some("orders"), None);
        assert_eq!(validate(&cfg, &ask("db", named.clone())).unwrap().1, named);
        // One static grant: its pins are inherited, even once it has expired.
        let cfg = with_grants(
            "[[grant]]\nagent = \"bot\"\nresource = \"db\"\nexpires = \"2000-01-01T00:00:00Z\"\ndatabase = \"orders\"\n\
             [[grant]]\nagent = \"bot\"\nresource = \"web\"\nexpires = \"2999-01-01T00:00:00Z\"\nlogin = \"deploy\"\n",
        );
        assert_eq!(
            validate(&cfg, &ask("db", Pins::default())).unwrap().1,
            pinned(None, Some("orders"), None)
        );
        assert_eq!(
            validate(&cfg, &ask("web", Pins::default())).unwrap().1,
            pinned(None, None, Some("deploy"))
        );
        // Grants pinned differently: the requester must choose.
        let cfg = with_grants(
            "[[grant]]\nagent = \"bot\"\nresource = \"db\"\nexpires = \"2999-01-01T00:00:00Z\"\ndatabase = \"orders\"\n\
             [[grant]]\nagent = \"bot\"\nresource = \"db\"\nexpires = \"2999-01-01T00:00:00Z\"\ndatabase = \"billing\"\n",
        );
        let e = validate(&cfg, &ask("db", Pins::default()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("different values") && e.contains("--database"),
            "{e}"
        );
        // Naming the pin they disagree on settles it.
        assert_eq!(
            validate(&cfg, &ask("db", pinned(None, Some("orders"), None)))
                .unwrap()
                .1,
            pinned(None, Some("orders"), None)
        );
        // A named pin keeps the inherited ones it does not name.
        let narrow = with_grants(
            "[[grant]]\nagent = \"bot\"\nresource = \"db\"\nexpires = \"2999-01-01T00:00:00Z\"\nrole = \"analyst\"\ndatabase = \"orders\"\n",
        );
        assert_eq!(
            validate(&narrow, &ask("db", pinned(None, Some("billing"), None)))
                .unwrap()
                .1,
            pinned(Some("analyst"), Some("billing"), None)
        );
        // Pins must fit the protocol and be names.
        for (resource, pins, want) in [
            (
                "db",
                pinned(None, None, Some("root")),
                "--login only applies",
            ),
            (
                "web",
                pinned(Some("x"), None, None),
                "only apply to postgres",
            ),
            (
                "web",
                pinned(None, None, Some("-oProxyCommand")),
                "--login: expected",
            ),
            ("db", pinned(None, Some(""), None), "--database: expected"),
            ("db", pinned(Some("a\nb"), None, None), "--role: expected"),
        ] {
            let e = validate(&cfg, &ask(resource, pins))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    fn pending(required: usize) -> JitGrant {
        JitGrant {
            id: "g0000000000000001".into(),
            agent: "bot".into(),
            resource: "db".into(),
            actions: vec![GrantAction::Read],
            pins: Pins::default(),
            ttl_secs: 1800,
            reason: "r".into(),
            requested_by: "oidc:i#alice".into(),
            requested_at: crate::rfc3339(OffsetDateTime::now_utc()),
            state: State::Pending,
            approvals_required: required,
            approvals: vec![],
            activated_at: None,
            expires_at: None,
            ended: None,
        }
    }

    #[test]
    fn no_self_approval_distinct_approvals_and_ttl_cap() {
        let now = OffsetDateTime::now_utc();
        let hour = Duration::from_secs(3600);
        let mut g = pending(2);
        let e = g.approve("oidc:i#alice", now, hour).unwrap_err();
        assert!(e.to_string().contains("may not approve their own"), "{e}");
        assert!(g.approvals.is_empty());
        assert!(!g.approve("oidc:i#bob", now, hour).unwrap());
        assert_eq!(g.state, State::Pending);
        let e = g.approve("oidc:i#bob", now, hour).unwrap_err();
        assert!(e.to_string().contains("already approved"), "{e}");
        // The cap applies at activation: the config now allows 10 minutes.
        assert!(g.approve("uid:0", now, Duration::from_secs(600)).unwrap());
        assert_eq!(g.state, State::Active);
        let left = g.expires().unwrap() - now;
        assert!(
            left <= time::Duration::seconds(600) && left > time::Duration::seconds(598),
            "{left}"
        );
        assert_eq!(g.activated_by(), Some("uid:0"));
        // A live grant cannot be approved again, nor denied; it can be revoked once.
        assert!(g.approve("oidc:i#carol", now, hour).is_err());
        assert!(g.deny("oidc:i#carol", "no", now).is_err());
        g.revoke("oidc:i#carol", "done", now).unwrap();
        assert_eq!(g.state, State::Revoked);
        assert!(g.revoke("oidc:i#carol", "again", now).is_err());
        let active = Active::default();
        active.sync(&g);
        assert!(active.live("bot", "db", now).is_empty());
    }

    #[test]
    fn expiry_and_lapse() {
        let now = OffsetDateTime::now_utc();
        let day = Duration::from_secs(86_400);
        let mut g = pending(1);
        g.ttl_secs = 2;
        assert!(g
            .approve("oidc:i#bob", now, Duration::from_secs(3600))
            .unwrap());
        assert!(!g.age(now, day), "still live");
        let active = Active::default();
        active.sync(&g);
        assert_eq!(active.live("bot", "db", now).len(), 1);
        assert!(active
            .live("bot", "db", now + Duration::from_secs(3))
            .is_empty());
        assert!(g.age(now + Duration::from_secs(3), day));
        assert_eq!(g.state, State::Expired);
        assert_eq!(g.ended.as_ref().map(|d| d.by.as_str()), Some("cordon"));
        let mut p = pending(1);
        assert!(!p.age(now, day));
        assert!(p.age(now + day + Duration::from_secs(1), day));
        assert_eq!(p.state, State::Lapsed);
        assert!(
            p.approve("oidc:i#bob", now, day).is_err(),
            "a lapsed request cannot be approved"
        );
    }

    #[test]
    fn the_store_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let now = OffsetDateTime::now_utc();
        let id;
        {
            let db = sled::open(dir.path()).unwrap();
            let store = Store::open(&db).unwrap();
            let g = store
                .create(
                    req("db", &[], 600),
                    (vec![GrantAction::Read], Pins::default()),
                    1,
                    now,
                )
                .unwrap();
            id = g.id.clone();
            assert!(id.starts_with('g') && id.len() == 17, "{id}");
            let (g, live) = store
                .update(&id, |g| {
                    g.approve("oidc:i#bob", now, Duration::from_secs(3600))
                })
                .unwrap();
            assert!(live);
            store.active().sync(&g);
            assert_eq!(store.active().live("bot", "db", now).len(), 1);
            db.flush().unwrap();
        }
        let db = sled::open(dir.path()).unwrap();
        let store = Store::open(&db).unwrap();
        let live = store.active().live("bot", "db", now);
        assert_eq!(live.len(), 1, "live grants come back after a restart");
        assert_eq!(live[0].approved_by.as_deref(), Some("oidc:i#bob"));
        assert!(store.get("nope").unwrap().is_none());
        assert!(matches!(
            store.update("g0000000000000009", |_| Ok(())),
            Err(JitError::NotFound(_))
        ));
        let aged = store
            .age_all(now + Duration::from_secs(601), Duration::from_secs(86_400))
            .unwrap();
        assert_eq!(aged.len(), 1);
        assert_eq!(store.get(&id).unwrap().unwrap().state, State::Expired);
        let next = store
            .create(
                req("db", &[], 60),
                (vec![GrantAction::Read], Pins::default()),
                1,
                now,
            )
            .unwrap();
        assert!(next.id > id, "ids keep growing after a restart");
    }
}
