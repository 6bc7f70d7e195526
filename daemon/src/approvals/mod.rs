//! Approvals: where humans decide. Protocol-independent: the postgres and
//! ssh handlers hand a command their policy marked `approve` to
//! [`Approvals::hold`] and wait; control requests (`cordon approvals list`,
//! `approve`, `deny`) release it. Just-in-time grant requests
//! (`grants::jit`) are decided here too, and every step of both is an audit
//! event (`audit::events`), durable before it is answered.
//!
//! Who may decide, on resource R:
//! - local root on the control socket (an administrator, `uid:0`);
//! - OIDC administrators (`[identity.oidc] admin_groups`);
//! - members of R's `approvers` groups, or without them of
//!   `[identity.oidc] approver_groups`.
//!
//! Nobody decides their own: the requester of a grant may not approve it
//! (they may withdraw it with `deny`); a held command may not be approved by
//! the human on whose behalf its session runs, nor by the requester of the
//! just-in-time grant that admitted the session. A grant request needs the
//! resource's `approvals_required` distinct approvals; a held command one.
//!
//! A hold is bound to its id, which names one command of one session (its
//! SHA-256 over session id and text is recorded); a decision releases that
//! hold once and is never reused: the next command, even with the same
//! text, is a new hold.

pub mod launchers;
pub mod notify;

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::{
    audit::{
        self,
        events::{EventKind, Events, NewEvent, SYSTEM},
        AuditError, SessionId,
    },
    config::{approval::format_duration, Config},
    grants::{
        jit::{self, JitError, JitGrant, NewRequest, State},
        LiveGrant, LiveSessions,
    },
    identity::oidc::Actor,
};

/// How often the expiry task looks for grants that ran out (a session's own
/// cutoff fires at the exact expiry; this records it and cleans up).
pub const EXPIRY_TICK: Duration = Duration::from_millis(250);

/// How often undecided grant requests are checked for lapsing.
const LAPSE_SCAN: Duration = Duration::from_secs(30);

/// A command a policy holds for approval.
#[derive(Debug, Clone)]
pub struct HoldRequest {
    pub session: SessionId,
    pub agent: String,
    pub resource: String,
    /// "postgres" | "ssh"
    pub protocol: &'static str,
    /// The full command text, as the agent sent it.
    pub command: String,
    /// `<policy>/<rule>` that asked for approval.
    pub rule: String,
    /// Why the rule holds it.
    pub reason: String,
}

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Run the command, once.
    Approved { by: String },
    /// Answer the agent with the reviewer's reason.
    Denied { by: String, reason: String },
    /// Nobody decided in time.
    TimedOut { after: Duration },
    /// The hold could not be placed or decided (e.g. the audit log cannot
    /// be written): refuse the command.
    Unavailable(String),
}

/// A held command, as reviewers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldView {
    /// `h` + 16 hex digits.
    pub id: String,
    pub session: SessionId,
    pub agent: String,
    pub resource: String,
    pub protocol: String,
    pub command: String,
    /// SHA-256 (hex) of the session id, a NUL and the command text.
    pub sha256: String,
    pub rule: String,
    pub reason: String,
    pub held_at: String,
    /// When it times out.
    pub expires_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// The just-in-time grant that admitted the session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
}

/// `approvals_list` reply: what the caller may decide (and their own
/// pending requests).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PendingList {
    pub grants: Vec<JitGrant>,
    pub holds: Vec<HoldView>,
}

/// `approve` / `deny` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Decided {
    Grant { grant: JitGrant },
    Command { hold: HoldView, outcome: String },
}

/// `grants_revoke` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Revoked {
    pub grant: JitGrant,
    /// Live sessions the revocation cut.
    pub sessions_cut: usize,
}

/// One static grant, for `cordon grants list`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StaticGrantView {
    pub agent: String,
    pub resource: String,
    pub expires: String,
    pub state: String,
    #[serde(flatten)]
    pub pins: crate::grants::Pins,
}

/// A just-in-time grant with the sessions it has open.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JitGrantView {
    #[serde(flatten)]
    pub grant: JitGrant,
    #[serde(default)]
    pub live_sessions: Vec<SessionId>,
}

/// `grants_list` reply.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GrantsList {
    #[serde(rename = "static")]
    pub fixed: Vec<StaticGrantView>,
    pub jit: Vec<JitGrantView>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApprovalError {
    /// Not allowed, or not possible in this state; the message says why.
    #[error("{0}")]
    Refused(String),
    #[error("no pending request, held command or grant `{0}`")]
    NotFound(String),
    #[error("audit log: {0}")]
    Audit(#[from] AuditError),
}

impl From<JitError> for ApprovalError {
    fn from(e: JitError) -> Self {
        match e {
            JitError::Rule(m) => ApprovalError::Refused(m),
            JitError::NotFound(id) => ApprovalError::NotFound(id),
            JitError::Store(e) => ApprovalError::Audit(e),
        }
    }
}

struct Pending {
    view: HoldView,
    /// Who may not approve it (self-approval).
    excluded: Vec<String>,
    /// The uid the agent's process runs as: that (non-root) uid may not approve it, whatever
    /// login it presents, since it is the agent's own account.
    excluded_uid: Option<u32>,
    decide: oneshot::Sender<Outcome>,
}

/// The hub; see the module documentation. One per daemon, shared.
pub struct Approvals {
    config: Config,
    events: Arc<Events>,
    jit: jit::Store,
    live: LiveSessions,
    audit: Arc<audit::Store>,
    holds: Mutex<HashMap<String, Pending>>,
    last_hold: AtomicU64,
    launchers: launchers::Launchers,
    notifier: notify::Notifier,
    last_lapse_scan: Mutex<Option<OffsetDateTime>>,
    /// Failed authentications on the control socket (any local uid can
    /// cause them at will), rate limited per uid (see `audit::ratelimit`).
    auth_failures: crate::audit::ratelimit::Limiter<u32, CountedFailures>,
}

/// Failed authentications over the rate, for the next summary event.
#[derive(Debug)]
struct CountedFailures {
    count: u64,
    first_at: String,
    last_at: String,
    ops: std::collections::BTreeMap<String, u64>,
    last_why: String,
}

/// The uid failures of uids beyond `ratelimit::MAX_SOURCES` are counted under.
const OTHER_UIDS: u32 = u32::MAX;

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// SHA-256 (hex) of the session id, a NUL and the command text.
pub fn command_hash(session: SessionId, command: &str) -> String {
    let mut h = Sha256::new();
    h.update(session.to_string().as_bytes());
    h.update([0u8]);
    h.update(command.as_bytes());
    hex::encode(h.finalize())
}

impl Approvals {
    /// Opens the event log and the grant store in the audit database.
    pub fn open(
        config: &Config,
        audit: Arc<audit::Store>,
        live: LiveSessions,
    ) -> Result<Approvals, AuditError> {
        let events = Arc::new(Events::open(audit.db())?);
        let jit = jit::Store::open(audit.db())?;
        Ok(Approvals {
            notifier: notify::Notifier::new(&config.approvals, events.clone()),
            config: config.clone(),
            events,
            jit,
            live,
            audit,
            holds: Mutex::new(HashMap::new()),
            last_hold: AtomicU64::new(0),
            launchers: launchers::Launchers::default(),
            last_lapse_scan: Mutex::new(None),
            auth_failures: crate::audit::ratelimit::Limiter::new(OTHER_UIDS),
        })
    }

    /// The live just-in-time grants, for `grants::check*`.
    pub fn active(&self) -> &jit::Active {
        self.jit.active()
    }

    pub fn events(&self) -> &Events {
        &self.events
    }

    /// Processes started by `cordon run`, and for whom.
    pub fn launchers(&self) -> &launchers::Launchers {
        &self.launchers
    }

    /// The human on whose behalf a session runs (see `audit::Session`): the
    /// OIDC login that launched the agent process `tgid` (or an ancestor),
    /// else the approver of its just-in-time grant, else the local uid that
    /// launched it.
    pub fn on_behalf_of(&self, tgid: u32, agent: &str, grant: &LiveGrant) -> Option<String> {
        let launcher = self.launchers.find(tgid, agent);
        match launcher {
            Some(l) if l.human => Some(l.who),
            other => grant.approved_by.clone().or(other.map(|l| l.who)),
        }
    }

    fn resource_rules(&self, resource: &str) -> Option<&crate::config::approval::ResourceApproval> {
        self.config
            .resources
            .iter()
            .find(|r| r.name == resource)
            .map(|r| &r.approval)
    }

    /// Whether `actor` may decide on `resource` (see the module documentation).
    pub fn may_review(&self, actor: &Actor, resource: &str) -> Result<(), String> {
        let human = match actor {
            Actor::LocalRoot { .. } => return Ok(()),
            Actor::Human(h) => h,
        };
        if human.is_admin {
            return Ok(());
        }
        let name = actor.audit_name();
        match self.resource_rules(resource).map(|r| r.approvers.as_ref()) {
            None => Err(format!(
                "{name} may not review resource `{resource}`: it is not in this daemon's config (only administrators may)"
            )),
            Some(Some(groups)) => {
                if human.groups.iter().any(|g| groups.contains(g)) {
                    Ok(())
                } else {
                    Err(format!(
                        "{name} may not review resource `{resource}`: not in any of its approver groups ({})",
                        groups.join(", ")
                    ))
                }
            }
            Some(None) if human.can_approve => Ok(()),
            Some(None) => Err(format!(
                "{name} may not review resource `{resource}`: not in an approver group ([identity.oidc] approver_groups)"
            )),
        }
    }

    /// Records a refused attempt and returns the refusal.
    fn refuse(&self, actor: &Actor, op: &str, target: &str, why: String) -> ApprovalError {
        self.events.record_or_log(
            NewEvent::new(actor.audit_name(), EventKind::Refused, target)
                .details(json!({ "op": op, "why": why })),
        );
        ApprovalError::Refused(why)
    }

    /// A caller who could not be authenticated (the reason never holds the
    /// token).
    ///
    /// Per uid, a burst is recorded one by one, then 1/s; the rest are
    /// counted into a summary event ([`Approvals::flush_auth_failures`]).
    pub fn auth_failed(&self, uid: u32, op: &str, why: &str) {
        let record = self
            .auth_failures
            .admit(uid, std::time::Instant::now(), |pending| {
                let at = crate::rfc3339(OffsetDateTime::now_utc());
                let c = pending.get_or_insert_with(|| CountedFailures {
                    count: 0,
                    first_at: at.clone(),
                    last_at: at.clone(),
                    ops: Default::default(),
                    last_why: String::new(),
                });
                c.count += 1;
                c.last_at = at;
                if c.ops.len() < 32 || c.ops.contains_key(op) {
                    *c.ops.entry(op.to_owned()).or_default() += 1;
                }
                why.clone_into(&mut c.last_why);
            });
        if record {
            self.events.record_or_log(
                NewEvent::new(format!("uid:{uid}"), EventKind::AuthFailed, op)
                    .details(json!({ "op": op, "why": why })),
            );
        }
    }

    /// Writes the failed authentications counted over the rate as one
    /// `auth_failed` event per uid (target `summary`, `count` in details).
    pub fn flush_auth_failures(&self) {
        use crate::audit::ratelimit::{BURST, PER_SECOND};
        for (uid, c) in self.auth_failures.take() {
            let who = if uid == OTHER_UIDS {
                "other uids".to_owned()
            } else {
                format!("uid:{uid}")
            };
            self.events.record_or_log(
                NewEvent::new(who.clone(), EventKind::AuthFailed, "summary").details(json!({
                    "op": "summary",
                    "count": c.count,
                    "first_at": c.first_at,
                    "last_at": c.last_at,
                    "ops": c.ops,
                    "why": format!(
                        "{} more failed authentications by {who} between {} and {}, over the rate \
                         recorded one by one ({BURST} at once, then {PER_SECOND}/s); the last: {}",
                        c.count, c.first_at, c.last_at, c.last_why
                    ),
                })),
            );
        }
    }

    // -----------------------------------------------------------------------
    // grant requests

    /// `cordon request`: a pending request by `actor` (whatever
    /// `req.requested_by` says, the actor is the requester).
    pub fn request_grant(
        &self,
        actor: &Actor,
        mut req: NewRequest,
    ) -> Result<JitGrant, ApprovalError> {
        req.requested_by = actor.audit_name();
        let granted = match jit::validate(&self.config, &req) {
            Ok(a) => a,
            Err(JitError::Rule(why)) => return Err(self.refuse(actor, "request", "-", why)),
            Err(e) => return Err(e.into()),
        };
        let required = self
            .resource_rules(&req.resource)
            .map_or(1, |r| r.approvals_required);
        let g = self
            .jit
            .create(req, granted, required, OffsetDateTime::now_utc())?;
        let recorded = self.events.record(
            NewEvent::new(g.requested_by.clone(), EventKind::GrantRequested, &g.id)
                .on(&g.agent, &g.resource)
                .details(json!({
                    "actions": g.actions,
                    "ttl": format_duration(Duration::from_secs(g.ttl_secs)),
                    "reason": g.reason,
                    "approvals_required": g.approvals_required,
                    "pins": g.pins,
                })),
        );
        if let Err(e) = recorded {
            // Not audited, so not requested.
            let _ = self.jit.update(&g.id, |g| {
                g.deny(
                    SYSTEM,
                    "the request could not be recorded",
                    OffsetDateTime::now_utc(),
                )
            });
            return Err(e.into());
        }
        tracing::info!(grant = %g.id, agent = %g.agent, resource = %g.resource, by = %g.requested_by, "grant requested");
        self.notifier.send(json!({
            "type": "grant_request",
            "id": g.id,
            "agent": g.agent,
            "resource": g.resource,
            "actions": g.actions,
            "pins": g.pins,
            "ttl_secs": g.ttl_secs,
            "reason": g.reason,
            "requested_by": g.requested_by,
            "requested_at": g.requested_at,
            "approvals_required": g.approvals_required,
            "decide": format!("cordon approve {id} | cordon deny {id} --reason ...", id = g.id),
        }));
        Ok(g)
    }

    fn approve_grant(&self, actor: &Actor, id: &str) -> Result<JitGrant, ApprovalError> {
        let g = self
            .jit
            .get(id)?
            .ok_or_else(|| ApprovalError::NotFound(id.to_owned()))?;
        if let Err(why) = self.may_review(actor, &g.resource) {
            return Err(self.refuse(actor, "approve", id, why));
        }
        let by = actor.audit_name();
        let max_ttl = self
            .resource_rules(&g.resource)
            .map_or(Duration::ZERO, |r| r.max_ttl);
        let now = OffsetDateTime::now_utc();
        let (g, activated) = match self.jit.update(id, |g| g.approve(&by, now, max_ttl)) {
            Ok(done) => done,
            Err(JitError::Rule(why)) => return Err(self.refuse(actor, "approve", id, why)),
            Err(e) => return Err(e.into()),
        };
        self.events.record(
            NewEvent::new(&by, EventKind::GrantApproved, id)
                .on(&g.agent, &g.resource)
                .details(json!({
                    "approvals": g.approvals.len(),
                    "approvals_required": g.approvals_required,
                })),
        )?;
        if activated {
            let recorded = self.events.record(
                NewEvent::new(&by, EventKind::GrantActivated, id)
                    .on(&g.agent, &g.resource)
                    .details(json!({
                        "actions": g.actions,
                        "expires_at": g.expires_at,
                        "requested_by": g.requested_by,
                        "approved_by": g.approvals.iter().map(|a| a.by.as_str()).collect::<Vec<_>>(),
                    })),
            );
            if let Err(e) = recorded {
                // Unaudited, so not live (not even after a restart).
                let _ = self.jit.update(id, |g| {
                    g.state = State::Denied;
                    g.ended = Some(jit::Decision {
                        by: SYSTEM.to_owned(),
                        at: crate::rfc3339(OffsetDateTime::now_utc()),
                        reason: Some("the activation could not be recorded".into()),
                    });
                    Ok(())
                });
                return Err(e.into());
            }
            // Live only once the activation is on disk.
            self.jit.active().sync(&g);
            tracing::info!(grant = %g.id, agent = %g.agent, resource = %g.resource, expires = ?g.expires_at, "grant active");
        }
        Ok(g)
    }

    fn deny_grant(&self, actor: &Actor, id: &str, reason: &str) -> Result<JitGrant, ApprovalError> {
        let g = self
            .jit
            .get(id)?
            .ok_or_else(|| ApprovalError::NotFound(id.to_owned()))?;
        let by = actor.audit_name();
        let withdrawn = by == g.requested_by;
        if !withdrawn {
            if let Err(why) = self.may_review(actor, &g.resource) {
                return Err(self.refuse(actor, "deny", id, why));
            }
        }
        let now = OffsetDateTime::now_utc();
        let (g, ()) = match self.jit.update(id, |g| g.deny(&by, reason, now)) {
            Ok(done) => done,
            Err(JitError::Rule(why)) => return Err(self.refuse(actor, "deny", id, why)),
            Err(e) => return Err(e.into()),
        };
        self.events.record(
            NewEvent::new(&by, EventKind::GrantDenied, id)
                .on(&g.agent, &g.resource)
                .details(json!({ "reason": reason, "withdrawn": withdrawn })),
        )?;
        Ok(g)
    }

    /// `cordon grants revoke`: ends a live grant and cuts its sessions. The
    /// requester and the resource's reviewers may.
    pub fn revoke(&self, actor: &Actor, id: &str, reason: &str) -> Result<Revoked, ApprovalError> {
        let reason = checked_reason(reason)?;
        let g = self
            .jit
            .get(id)?
            .ok_or_else(|| ApprovalError::NotFound(id.to_owned()))?;
        let by = actor.audit_name();
        if by != g.requested_by {
            if let Err(why) = self.may_review(actor, &g.resource) {
                return Err(self.refuse(actor, "revoke", id, why));
            }
        }
        if g.state != State::Active {
            let why = format!(
                "grant {id} is {}, not active: nothing to revoke",
                g.state.as_str()
            );
            return Err(self.refuse(actor, "revoke", id, why));
        }
        // New sessions are refused and live ones cut before anything is
        // written: a slow disk does not delay the revocation.
        self.jit.active().remove(id);
        let why = format!("the just-in-time grant {id} was revoked by {by}: {reason}");
        let sessions = self.live.sessions_of(id);
        let cut = self.live.revoke(id, why);
        let now = OffsetDateTime::now_utc();
        let stored = self.jit.update(id, |g| g.revoke(&by, reason, now));
        let g = match stored {
            Ok((g, ())) => g,
            Err(e) => {
                tracing::error!(grant = %id, error = %e, "revoked in memory, but the revocation could not be stored");
                return Err(e.into());
            }
        };
        self.events.record(
            NewEvent::new(&by, EventKind::GrantRevoked, id)
                .on(&g.agent, &g.resource)
                .details(json!({ "reason": reason, "sessions_cut": sessions })),
        )?;
        tracing::info!(grant = %id, by = %by, sessions = cut, "grant revoked");
        Ok(Revoked {
            grant: g,
            sessions_cut: cut,
        })
    }

    /// Expires live grants past their time (cutting their sessions, if their
    /// own cutoffs have not already) and lapses stale requests. Run by
    /// [`run_expiry`] every [`EXPIRY_TICK`].
    pub fn tick(&self, now: OffsetDateTime) {
        let expiry_due = self.jit.active().next_expiry().is_some_and(|t| t <= now);
        let lapse_due = self
            .last_lapse_scan
            .lock()
            .map(|mut last| {
                let due = last.is_none_or(|t| t + LAPSE_SCAN <= now);
                if due {
                    *last = Some(now);
                }
                due
            })
            .unwrap_or(true);
        if expiry_due || lapse_due {
            let changed = match self.jit.age_all(now, self.config.approvals.request_expiry) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot expire just-in-time grants");
                    return;
                }
            };
            for g in changed {
                self.jit.active().sync(&g);
                if g.state == State::Expired {
                    let sessions = self.live.sessions_of(&g.id);
                    let cut = self.live.revoke(
                        &g.id,
                        format!(
                            "the just-in-time grant {} expired at {}",
                            g.id,
                            g.expires_at.as_deref().unwrap_or("?")
                        ),
                    );
                    tracing::info!(grant = %g.id, sessions = cut, "grant expired");
                    self.events.record_or_log(
                        NewEvent::new(SYSTEM, EventKind::GrantExpired, &g.id)
                            .on(&g.agent, &g.resource)
                            .details(
                                json!({ "expires_at": g.expires_at, "sessions_cut": sessions }),
                            ),
                    );
                } else {
                    self.events.record_or_log(
                        NewEvent::new(SYSTEM, EventKind::GrantLapsed, &g.id)
                            .on(&g.agent, &g.resource)
                            .details(json!({
                                "reason": g.ended.as_ref().and_then(|d| d.reason.clone()),
                            })),
                    );
                }
            }
        }
        if lapse_due {
            self.launchers.sweep();
        }
    }

    // -----------------------------------------------------------------------
    // held commands

    fn next_hold_id(&self) -> String {
        let now = now_micros();
        let prev = self
            .last_hold
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |prev| {
                Some(now.max(prev.saturating_add(1)))
            })
            .unwrap_or(now);
        format!("h{:016x}", now.max(prev.saturating_add(1)))
    }

    /// Registers a pending command approval (visible in `cordon approvals
    /// list` with agent, resource, full command text, rule), runs the
    /// notification hook, waits for a decision or the timeout (`[approvals]
    /// timeout_secs`). Every step is an audit event. An approval covers
    /// exactly this call once. If the caller stops waiting (the session
    /// ended), the hold is withdrawn and recorded as abandoned.
    pub async fn hold(&self, req: HoldRequest) -> Outcome {
        let id = self.next_hold_id();
        let sha256 = command_hash(req.session, &req.command);
        let session = match self.audit.get(req.session) {
            Ok(s) => s,
            // Who may not approve it cannot be known: fail closed.
            Err(e) => {
                return Outcome::Unavailable(format!("the session record cannot be read: {e}"))
            }
        };
        let excluded_uid = session.as_ref().map(|s| s.uid).filter(|&u| u != 0);
        let on_behalf_of = session.as_ref().and_then(|s| s.on_behalf_of.clone());
        let grant = session.as_ref().and_then(|s| s.grant.clone());
        let mut excluded: Vec<String> = on_behalf_of.iter().cloned().collect();
        if let Some(g) = grant
            .as_deref()
            .and_then(|g| self.jit.get(g).ok().flatten())
        {
            excluded.push(g.requested_by);
        }
        let timeout = self.config.approvals.hold_timeout;
        let now = OffsetDateTime::now_utc();
        let view = HoldView {
            id: id.clone(),
            session: req.session,
            agent: req.agent.clone(),
            resource: req.resource.clone(),
            protocol: req.protocol.to_owned(),
            command: req.command.clone(),
            sha256: sha256.clone(),
            rule: req.rule.clone(),
            reason: req.reason.clone(),
            held_at: crate::rfc3339(now),
            expires_at: crate::rfc3339(now + timeout),
            on_behalf_of: on_behalf_of.clone(),
            grant,
        };
        let held = self.events.record(
            NewEvent::new(format!("agent:{}", req.agent), EventKind::CommandHeld, &id)
                .on(&req.agent, &req.resource)
                .details(json!({
                    "session": req.session,
                    "protocol": req.protocol,
                    "command": req.command,
                    "sha256": sha256,
                    "rule": req.rule,
                    "reason": req.reason,
                    "timeout": format_duration(timeout),
                    "on_behalf_of": on_behalf_of,
                })),
        );
        if let Err(e) = held {
            return Outcome::Unavailable(format!("the hold could not be recorded: {e}"));
        }
        let (tx, mut rx) = oneshot::channel();
        match self.holds.lock() {
            Ok(mut holds) => {
                holds.insert(
                    id.clone(),
                    Pending {
                        view: view.clone(),
                        excluded,
                        excluded_uid,
                        decide: tx,
                    },
                );
            }
            Err(_) => return Outcome::Unavailable("the approvals hub is unavailable".into()),
        }
        let mut guard = Abandon {
            hub: self,
            id: id.clone(),
            armed: true,
        };
        tracing::info!(hold = %id, session = %req.session, agent = %req.agent, resource = %req.resource, rule = %req.rule, "command held for approval");
        let mut payload = json!({ "type": "command_hold" });
        if let (Some(obj), Ok(serde_json::Value::Object(fields))) =
            (payload.as_object_mut(), serde_json::to_value(&view))
        {
            obj.extend(fields);
            obj.insert(
                "decide".into(),
                json!(format!(
                    "cordon approve {id} | cordon deny {id} --reason ..."
                )),
            );
        }
        self.notifier.send(payload);
        let outcome = match tokio::time::timeout(timeout, &mut rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Outcome::Unavailable("the approvals hub dropped the hold".into()),
            Err(_elapsed) => {
                let still_pending = self
                    .holds
                    .lock()
                    .map(|mut h| h.remove(&id).is_some())
                    .unwrap_or(true);
                if still_pending {
                    self.events.record_or_log(
                        NewEvent::new(SYSTEM, EventKind::CommandTimedOut, &id)
                            .on(&req.agent, &req.resource)
                            .details(json!({
                                "session": req.session,
                                "sha256": view.sha256,
                                "after": format_duration(timeout),
                            })),
                    );
                    tracing::info!(hold = %id, "held command timed out");
                    Outcome::TimedOut { after: timeout }
                } else {
                    // A reviewer took it just now: their decision is on its way.
                    rx.await.unwrap_or_else(|_| {
                        Outcome::Unavailable("the approvals hub dropped the hold".into())
                    })
                }
            }
        };
        guard.armed = false;
        outcome
    }

    /// Approves or denies held command `id` as `actor`.
    fn decide_hold(
        &self,
        actor: &Actor,
        caller_uid: Option<u32>,
        id: &str,
        approve: bool,
        reason: Option<&str>,
    ) -> Result<Decided, ApprovalError> {
        let by = actor.audit_name();
        let op = if approve { "approve" } else { "deny" };
        let pending = {
            let mut holds = self
                .holds
                .lock()
                .map_err(|_| ApprovalError::Refused("the approvals hub is unavailable".into()))?;
            let Some(p) = holds.get(id) else {
                drop(holds);
                return Err(self.refuse(
                    actor,
                    op,
                    id,
                    format!("no pending held command `{id}` (already decided, timed out, or its session ended)"),
                ));
            };
            let check = self.may_review(actor, &p.view.resource).and_then(|()| {
                if approve && p.excluded.contains(&by) {
                    Err(format!(
                        "{by} may not approve a command of a session that runs on their behalf (or under a grant they requested)"
                    ))
                } else if approve && caller_uid.is_some() && caller_uid == p.excluded_uid {
                    Err(format!(
                        "uid {} runs the agent of this session: it may not approve the agent's commands",
                        caller_uid.unwrap_or_default()
                    ))
                } else {
                    Ok(())
                }
            });
            if let Err(why) = check {
                drop(holds);
                return Err(self.refuse(actor, op, id, why));
            }
            holds
                .remove(id)
                .ok_or_else(|| ApprovalError::NotFound(id.to_owned()))?
        };
        let view = pending.view;
        let (kind, outcome, label) = if approve {
            (
                EventKind::CommandApproved,
                Outcome::Approved { by: by.clone() },
                "approved",
            )
        } else {
            let reason = reason.unwrap_or("denied").to_owned();
            (
                EventKind::CommandDenied,
                Outcome::Denied {
                    by: by.clone(),
                    reason,
                },
                "denied",
            )
        };
        let recorded = self.events.record(
            NewEvent::new(&by, kind, id)
                .on(&view.agent, &view.resource)
                .details(json!({
                    "session": view.session,
                    "sha256": view.sha256,
                    "command": view.command,
                    "reason": reason,
                })),
        );
        if let Err(e) = recorded {
            // Unaudited, so not approved: the command is refused.
            let _ = pending.decide.send(Outcome::Unavailable(format!(
                "the decision could not be recorded: {e}"
            )));
            return Err(e.into());
        }
        tracing::info!(hold = %id, by = %by, outcome = label, "held command decided");
        if pending.decide.send(outcome).is_err() {
            return Err(ApprovalError::Refused(format!(
                "held command `{id}` was {label}, but its session had already ended"
            )));
        }
        Ok(Decided::Command {
            hold: view,
            outcome: label.into(),
        })
    }

    // -----------------------------------------------------------------------
    // the control requests

    /// `cordon approve ID`: a grant request (`g…`) or a held command (`h…`).
    #[cfg(test)]
    pub fn approve(&self, actor: &Actor, id: &str) -> Result<Decided, ApprovalError> {
        self.approve_as(actor, None, id)
    }

    /// [`approve`](Self::approve) by a control-socket caller whose kernel uid is
    /// `caller_uid` (held commands: the agent's own uid may not approve them).
    pub fn approve_as(
        &self,
        actor: &Actor,
        caller_uid: Option<u32>,
        id: &str,
    ) -> Result<Decided, ApprovalError> {
        if id.starts_with('h') {
            self.decide_hold(actor, caller_uid, id, true, None)
        } else {
            self.approve_grant(actor, id)
                .map(|grant| Decided::Grant { grant })
        }
    }

    /// `cordon deny ID --reason R`.
    pub fn deny(&self, actor: &Actor, id: &str, reason: &str) -> Result<Decided, ApprovalError> {
        let reason = checked_reason(reason)?;
        if id.starts_with('h') {
            self.decide_hold(actor, None, id, false, Some(reason))
        } else {
            self.deny_grant(actor, id, reason)
                .map(|grant| Decided::Grant { grant })
        }
    }

    /// `cordon approvals list`: the pending requests and held commands
    /// `actor` may decide, and their own pending requests.
    pub fn pending(&self, actor: &Actor) -> Result<PendingList, ApprovalError> {
        let me = actor.audit_name();
        let grants = self
            .jit
            .list()?
            .into_iter()
            .filter(|g| g.state == State::Pending)
            .filter(|g| g.requested_by == me || self.may_review(actor, &g.resource).is_ok())
            .collect();
        let mut holds: Vec<HoldView> = self
            .holds
            .lock()
            .map(|h| {
                h.values()
                    .filter(|p| self.may_review(actor, &p.view.resource).is_ok())
                    .map(|p| p.view.clone())
                    .collect()
            })
            .unwrap_or_default();
        holds.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(PendingList { grants, holds })
    }

    /// `cordon grants list`: static grants and every just-in-time grant.
    pub fn grants(&self) -> Result<GrantsList, ApprovalError> {
        let now = OffsetDateTime::now_utc();
        let fixed = self
            .config
            .grants
            .iter()
            .map(|g| StaticGrantView {
                agent: g.agent.to_string(),
                resource: g.resource.clone(),
                expires: crate::rfc3339(g.expires),
                state: if g.expires > now { "active" } else { "expired" }.into(),
                pins: crate::grants::Pins::of(g),
            })
            .collect();
        let jit = self
            .jit
            .list()?
            .into_iter()
            .map(|g| JitGrantView {
                live_sessions: self.live.sessions_of(&g.id),
                grant: g,
            })
            .collect();
        Ok(GrantsList { fixed, jit })
    }

    /// Withdraws a hold its caller stopped waiting for.
    fn abandon(&self, id: &str) {
        let removed = self.holds.lock().ok().and_then(|mut h| h.remove(id));
        if let Some(p) = removed {
            tracing::info!(hold = %id, "held command abandoned: its session ended");
            self.events.record_or_log(
                NewEvent::new(SYSTEM, EventKind::CommandAbandoned, id)
                    .on(&p.view.agent, &p.view.resource)
                    .details(json!({ "session": p.view.session, "sha256": p.view.sha256 })),
            );
        }
    }
}

/// Withdraws the hold if [`Approvals::hold`] is dropped before it returns.
struct Abandon<'a> {
    hub: &'a Approvals,
    id: String,
    armed: bool,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.hub.abandon(&self.id);
        }
    }
}

fn checked_reason(reason: &str) -> Result<&str, ApprovalError> {
    let r = reason.trim();
    if r.is_empty() {
        return Err(ApprovalError::Refused("a --reason is required".into()));
    }
    if r.len() > jit::MAX_REASON || r.chars().any(char::is_control) {
        return Err(ApprovalError::Refused(format!(
            "--reason must be one line of at most {} bytes",
            jit::MAX_REASON
        )));
    }
    Ok(r)
}

/// The expiry task: [`Approvals::tick`] every [`EXPIRY_TICK`], forever.
pub async fn run_expiry(hub: Arc<Approvals>) {
    loop {
        hub.tick(OffsetDateTime::now_utc());
        tokio::time::sleep(EXPIRY_TICK).await;
    }
}

#[cfg(test)]
mod tests;
