//! Grants: (agent, resource, expiry) checked for every captured connection,
//! after identity and resource resolution and before any upstream traffic.
//! Static grants come from the config; just-in-time grants ([`jit`]) from
//! humans, through `cordon request` and `cordon approve`.
//!
//! When both kinds are live for an agent on a resource, the just-in-time one
//! decides (it is the access humans approved most recently): among those,
//! the one with the highest action (admin > write > read), then the
//! latest-expiring. A just-in-time grant carries role/database/login pins
//! like a static one ([`Pins`]): named in the request, or else inherited
//! from the agent's static grants on that resource, so that approving more
//! actions or time never widens which database or account is reachable.
//!
//! A session admitted by a grant holds a [`Cutoff`] from [`LiveSessions`]:
//! it fires when the grant expires or is revoked, and the protocol handler
//! then ends the session at once, even mid-statement.

pub mod jit;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use time::OffsetDateTime;
use tokio::sync::watch;

pub use crate::config::approval::{ActionPolicy, GrantAction};
use crate::{
    audit::SessionId,
    config::{AgentName, Config},
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantDenial {
    #[error("no grant gives agent `{agent}` access to resource `{resource}`")]
    None { agent: String, resource: String },
    #[error("the grant for agent `{agent}` on resource `{resource}` expired at {expired}")]
    Expired {
        agent: String,
        resource: String,
        expired: String,
    },
    #[error("the grants changed since this connection was admitted; connect again")]
    Changed,
    #[error("no live grant lets agent `{agent}` use {what} on resource `{resource}`{pinned}")]
    Pinned {
        agent: String,
        resource: String,
        what: String,
        /// The role/database the live grants do allow, for the agent's benefit.
        pinned: String,
    },
}
/// What a grant narrows a session to: the postgres role and database the
/// agent may ask for, the ssh user it may log in as. None: any.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Pins {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub login: Option<String>,
}

impl Pins {
    pub fn of(g: &crate::config::Grant) -> Pins {
        Pins {
            role: g.role.clone(),
            database: g.database.clone(),
            login: g.login.clone(),
        }
    }

    /// `v` as is when it is a plain name, else quoted with escapes: a role
    /// named `x,database=orders` must not read as two pins.
    pub fn shown(v: &str) -> String {
        let plain = !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '$'));
        if plain {
            v.to_owned()
        } else {
            format!("{v:?}")
        }
    }

    /// `role X / database any`, `login deploy`, or `any` (for people; a
    /// value that is not a plain name is quoted).
    pub fn describe(&self) -> String {
        let any = |v: &Option<String>| v.as_deref().map_or_else(|| "any".to_owned(), Pins::shown);
        match (&self.role, &self.database, &self.login) {
            (None, None, None) => "any role, database or login".into(),
            (_, _, Some(_)) if self.role.is_none() && self.database.is_none() => {
                format!("login {}", any(&self.login))
            }
            _ if self.login.is_none() => {
                format!(
                    "role {} / database {}",
                    any(&self.role),
                    any(&self.database)
                )
            }
            _ => format!(
                "role {} / database {} / login {}",
                any(&self.role),
                any(&self.database),
                any(&self.login)
            ),
        }
    }
}

/// A live grant: the session it authorizes must end by `expires` (or when
/// the grant is revoked: see [`LiveSessions`]).
#[derive(Debug, Clone)]
pub struct LiveGrant {
    pub expires: OffsetDateTime,
    /// The just-in-time grant's id; None for a static grant.
    pub id: Option<String>,
    /// What a just-in-time grant allows (empty for a static grant).
    pub actions: Vec<GrantAction>,
    /// The policy the session must apply instead of the resource's own
    /// `policy` (a just-in-time grant whose highest action the resource's
    /// `actions` maps to a policy). None: the resource's `policy`.
    pub policy: Option<ActionPolicy>,
    /// Whose approval made the just-in-time grant live.
    pub approved_by: Option<String>,
    /// A just-in-time grant's pins (a static grant's are checked by
    /// [`check_database`] / [`check_login`] against the config).
    pub pins: Pins,
}

impl LiveGrant {
    fn fixed(expires: OffsetDateTime) -> LiveGrant {
        LiveGrant {
            expires,
            id: None,
            actions: Vec::new(),
            policy: None,
            approved_by: None,
            pins: Pins::default(),
        }
    }

    /// The SQL policy a postgres session under this grant applies.
    pub fn postgres_policy(
        &self,
        resource_policy: &Arc<crate::policy::Policy>,
    ) -> Arc<crate::policy::Policy> {
        self.policy
            .as_ref()
            .and_then(|p| p.postgres.clone())
            .unwrap_or_else(|| resource_policy.clone())
    }

    /// The command policy an ssh session under this grant applies.
    pub fn ssh_policy(
        &self,
        resource_policy: &Arc<crate::policy::ssh::SshPolicy>,
    ) -> Arc<crate::policy::ssh::SshPolicy> {
        self.policy
            .as_ref()
            .and_then(|p| p.ssh.clone())
            .unwrap_or_else(|| resource_policy.clone())
    }

    /// For session records: what admitted the session.
    pub fn describe(&self, agent: &AgentName, resource: &str) -> String {
        match &self.id {
            Some(id) => {
                let actions: Vec<&str> = self.actions.iter().map(|a| a.as_str()).collect();
                let policy = self
                    .policy
                    .as_ref()
                    .map(|p| format!(", policy {}", p.name))
                    .unwrap_or_default();
                format!(
                    "just-in-time grant {id} for `{agent}` on `{resource}` ({}{policy}) until {}",
                    actions.join(","),
                    crate::rfc3339(self.expires)
                )
            }
            None => format!(
                "grant for `{agent}` on `{resource}` until {}",
                crate::rfc3339(self.expires)
            ),
        }
    }
}

/// The live just-in-time grant that decides for `agent` on `resource`, if
/// any (see the module documentation).
fn best_jit(
    config: &Config,
    jit: &jit::Active,
    agent: &AgentName,
    resource: &str,
    now: OffsetDateTime,
) -> Option<LiveGrant> {
    let best = jit
        .live(agent.as_str(), resource, now)
        .into_iter()
        .max_by_key(|g| (g.actions.iter().max().copied(), g.expires))?;
    let top = best.actions.iter().max().copied();
    let policy = config
        .resources
        .iter()
        .find(|r| r.name == resource)
        .and_then(|r| r.approval.actions.as_ref())
        .and_then(|map| top.and_then(|a| map.get(&a)))
        .cloned();
    Some(LiveGrant {
        expires: best.expires,
        id: Some(best.id),
        actions: best.actions,
        policy,
        approved_by: best.approved_by,
        pins: best.pins,
    })
}

/// The grant that admits `agent` on `resource` at `now`: a live
/// just-in-time grant (see the module documentation), else the
/// latest-expiring live static grant.
pub fn check(
    config: &Config,
    jit: &jit::Active,
    agent: &AgentName,
    resource: &str,
    now: OffsetDateTime,
) -> Result<LiveGrant, GrantDenial> {
    if let Some(g) = best_jit(config, jit, agent, resource, now) {
        return Ok(g);
    }
    let mut matching = config
        .grants
        .iter()
        .filter(|g| &g.agent == agent && g.resource == resource)
        .peekable();
    if matching.peek().is_none() {
        return Err(GrantDenial::None {
            agent: agent.to_string(),
            resource: resource.to_owned(),
        });
    }
    let latest = matching.map(|g| g.expires).max().unwrap_or(now);
    if latest <= now {
        return Err(GrantDenial::Expired {
            agent: agent.to_string(),
            resource: resource.to_owned(),
            expired: crate::rfc3339(latest),
        });
    }
    Ok(LiveGrant::fixed(latest))
}

/// The live just-in-time grant that decides (see [`check`]) if its pins `fit` what the agent
/// asked for (`what`), else the latest-expiring live static grant for `agent` on `resource`
/// that fits; a refusal names the pins that are granted.
fn check_pinned(
    config: &Config,
    jit: &jit::Active,
    agent: &AgentName,
    resource: &str,
    now: OffsetDateTime,
    fits: impl Fn(&Pins) -> bool,
    what: String,
) -> Result<LiveGrant, GrantDenial> {
    let first = check(config, jit, agent, resource, now)?;
    if let Some(id) = &first.id {
        if fits(&first.pins) {
            return Ok(first);
        }
        return Err(GrantDenial::Pinned {
            agent: agent.to_string(),
            resource: resource.to_owned(),
            what,
            pinned: format!(
                " (just-in-time grant {id} allows {})",
                first.pins.describe()
            ),
        });
    }
    let live = config
        .grants
        .iter()
        .filter(|g| &g.agent == agent && g.resource == resource && g.expires > now);
    match live
        .clone()
        .filter(|g| fits(&Pins::of(g)))
        .map(|g| g.expires)
        .max()
    {
        Some(expires) => Ok(LiveGrant::fixed(expires)),
        None => {
            let allowed: Vec<String> = live.map(|g| Pins::of(g).describe()).collect();
            Err(GrantDenial::Pinned {
                agent: agent.to_string(),
                resource: resource.to_owned(),
                what,
                pinned: format!(" (granted: {})", allowed.join("; ")),
            })
        }
    }
}

/// For postgres sessions: [`check_pinned`] on the role and database the agent asked for.
pub fn check_database(
    config: &Config,
    jit: &jit::Active,
    agent: &AgentName,
    resource: &str,
    role: &str,
    database: &str,
    now: OffsetDateTime,
) -> Result<LiveGrant, GrantDenial> {
    check_pinned(
        config,
        jit,
        agent,
        resource,
        now,
        |p| {
            p.role.as_deref().is_none_or(|r| r == role)
                && p.database.as_deref().is_none_or(|d| d == database)
        },
        format!("role `{role}` and database `{database}`"),
    )
}

/// For ssh sessions: [`check_pinned`] on the user name the agent logs in as.
pub fn check_login(
    config: &Config,
    jit: &jit::Active,
    agent: &AgentName,
    resource: &str,
    login: &str,
    now: OffsetDateTime,
) -> Result<LiveGrant, GrantDenial> {
    check_pinned(
        config,
        jit,
        agent,
        resource,
        now,
        |p| p.login.as_deref().is_none_or(|l| l == login),
        format!("login `{login}`"),
    )
}

// ---------------------------------------------------------------------------
// live sessions and their cutoffs

/// The sessions each just-in-time grant admitted, so that a revocation (or
/// expiry) can end them. Cheap to clone; shared by the proxy and the
/// approvals hub.
#[derive(Clone, Default)]
pub struct LiveSessions {
    inner: Arc<Mutex<LiveInner>>,
}

#[derive(Default)]
struct LiveInner {
    /// grant id -> session -> where its cutoff listens.
    by_grant: HashMap<String, HashMap<SessionId, watch::Sender<Option<String>>>>,
    /// Grants revoked (or expired) so far, and why: a session registered
    /// after the fact is cut at once.
    ended: HashMap<String, String>,
}

impl LiveSessions {
    /// Registers `session` under `grant`; the returned cutoff fires on the
    /// grant's expiry or revocation. Dropping the cutoff unregisters it.
    pub fn register(&self, grant: &LiveGrant, session: SessionId) -> Cutoff {
        let what = match &grant.id {
            Some(id) => format!("just-in-time grant {id}"),
            None => "grant".to_owned(),
        };
        let mut cutoff = Cutoff {
            expires: grant.expires,
            what,
            revoked: None,
            _registration: None,
        };
        let Some(id) = &grant.id else {
            return cutoff;
        };
        let Ok(mut inner) = self.inner.lock() else {
            // Fail closed: a session whose revocation could not reach it
            // does not start.
            let (_tx, rx) = watch::channel(Some(format!(
                "{} cannot be watched for revocation (internal error)",
                cutoff.what
            )));
            cutoff.revoked = Some(rx);
            return cutoff;
        };
        let (tx, rx) = watch::channel(inner.ended.get(id).cloned());
        inner
            .by_grant
            .entry(id.clone())
            .or_default()
            .insert(session, tx);
        cutoff.revoked = Some(rx);
        cutoff._registration = Some(Registration {
            live: self.clone(),
            grant: id.clone(),
            session,
        });
        cutoff
    }

    /// Fires the cutoff of every session `grant_id` admitted, with `why`,
    /// and of any registered later. Returns how many sessions were cut.
    pub fn revoke(&self, grant_id: &str, why: String) -> usize {
        let Ok(mut inner) = self.inner.lock() else {
            return 0;
        };
        inner.ended.insert(grant_id.to_owned(), why.clone());
        let Some(sessions) = inner.by_grant.get(grant_id) else {
            return 0;
        };
        let mut cut = 0;
        for tx in sessions.values() {
            tx.send_replace(Some(why.clone()));
            cut += 1;
        }
        cut
    }

    /// The sessions `grant_id` admitted that are still open.
    pub fn sessions_of(&self, grant_id: &str) -> Vec<SessionId> {
        self.inner
            .lock()
            .ok()
            .and_then(|inner| {
                inner
                    .by_grant
                    .get(grant_id)
                    .map(|m| m.keys().copied().collect())
            })
            .unwrap_or_default()
    }
}

/// Removes a session from [`LiveSessions`] when its cutoff is dropped.
struct Registration {
    live: LiveSessions,
    grant: String,
    session: SessionId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Ok(mut inner) = self.live.inner.lock() else {
            return;
        };
        if let Some(sessions) = inner.by_grant.get_mut(&self.grant) {
            sessions.remove(&self.session);
            if sessions.is_empty() {
                inner.by_grant.remove(&self.grant);
            }
        }
    }
}

/// When one session must end: its grant's expiry or revocation. Held by the
/// protocol handler for the life of the session.
pub struct Cutoff {
    expires: OffsetDateTime,
    /// "grant" or "just-in-time grant g…", for the reason.
    what: String,
    /// Some(reason) once the grant is revoked (just-in-time grants only).
    revoked: Option<watch::Receiver<Option<String>>>,
    _registration: Option<Registration>,
}

impl Cutoff {
    /// Another handle on the same cutoff, for a task inside the session (a held command
    /// waiting for a reviewer). It does not keep the session registered.
    pub fn watcher(&self) -> Cutoff {
        Cutoff {
            expires: self.expires,
            what: self.what.clone(),
            revoked: self.revoked.clone(),
            _registration: None,
        }
    }

    /// Resolves when the session must end now, with why (the grant expired,
    /// or was revoked and by whom). Cancel-safe, and once fired it resolves
    /// at once on every later call, so it can sit in a `select!` loop.
    pub async fn fired(&mut self) -> String {
        let expires = self.expires;
        let what = self.what.clone();
        let expiry = async move {
            let left = expires - OffsetDateTime::now_utc();
            if left.is_positive() {
                match tokio::time::Instant::now().checked_add(left.unsigned_abs()) {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending::<()>().await,
                }
            }
            format!("the {what} expired at {}", crate::rfc3339(expires))
        };
        match self.revoked.as_mut() {
            None => expiry.await,
            Some(rx) => {
                let revoked = async move {
                    loop {
                        if let Some(why) = rx.borrow_and_update().clone() {
                            return why;
                        }
                        if rx.changed().await.is_err() {
                            // The registry is gone: only the expiry remains.
                            return std::future::pending::<String>().await;
                        }
                    }
                };
                tokio::select! {
                    why = expiry => why,
                    why = revoked => why,
                }
            }
        }
    }

    /// Why the session must already have ended, if it must (no waiting).
    pub fn check(&self) -> Option<String> {
        if let Some(why) = self.revoked.as_ref().and_then(|rx| rx.borrow().clone()) {
            return Some(why);
        }
        (self.expires <= OffsetDateTime::now_utc()).then(|| {
            format!(
                "the {} expired at {}",
                self.what,
                crate::rfc3339(self.expires)
            )
        })
    }
}

impl std::fmt::Debug for Cutoff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cutoff")
            .field("expires", &self.expires)
            .field("what", &self.what)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(expires: &str) -> Config {
        let text = format!(
            r#"
[daemon]
state_dir = "/s"
control_socket = "/c"
[[agent]]
name = "a"
[[agent]]
name = "b"
[[resource]]
name = "db"
protocol = "tcp"
address = "10.0.0.5:5432"
[[grant]]
agent = "a"
resource = "db"
expires = "{expires}"
"#
        );
        Config::parse(Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn live_expired_and_missing() {
        let now = OffsetDateTime::now_utc();
        let a = AgentName::parse("a").unwrap();
        let b = AgentName::parse("b").unwrap();
        let none = jit::Active::default();
        let live = config("2999-01-01T00:00:00Z");
        assert!(check(&live, &none, &a, "db", now).is_ok());
        assert!(matches!(
            check(&live, &none, &b, "db", now),
            Err(GrantDenial::None { .. })
        ));
        assert!(matches!(
            check(&live, &none, &a, "other", now),
            Err(GrantDenial::None { .. })
        ));
        let old = config("2000-01-01T00:00:00Z");
        let err = check(&old, &none, &a, "db", now).unwrap_err();
        assert!(
            err.to_string().contains("expired at 2000-01-01T00:00:00Z"),
            "{err}"
        );
    }

    fn active(id: &str, agent: &str, actions: &[GrantAction], secs: i64) -> jit::JitGrant {
        let now = OffsetDateTime::now_utc();
        jit::JitGrant {
            id: id.into(),
            agent: agent.into(),
            resource: "db".into(),
            actions: actions.to_vec(),
            pins: Pins::default(),
            ttl_secs: 60,
            reason: "r".into(),
            requested_by: "oidc:i#alice".into(),
            requested_at: crate::rfc3339(now),
            state: jit::State::Active,
            approvals_required: 1,
            approvals: vec![jit::Decision {
                by: "oidc:i#bob".into(),
                at: crate::rfc3339(now),
                reason: None,
            }],
            activated_at: Some(crate::rfc3339(now)),
            expires_at: Some(crate::rfc3339(now + time::Duration::seconds(secs))),
            ended: None,
        }
    }

    #[test]
    fn a_just_in_time_grant_decides_over_static_ones() {
        let now = OffsetDateTime::now_utc();
        let a = AgentName::parse("a").unwrap();
        let b = AgentName::parse("b").unwrap();
        let old = config("2000-01-01T00:00:00Z");
        let jit = jit::Active::default();
        jit.sync(&active("g0000000000000001", "a", &[GrantAction::Read], 600));
        jit.sync(&active("g0000000000000002", "a", &[GrantAction::Admin], 60));
        jit.sync(&active("g0000000000000003", "b", &[GrantAction::Read], -1));
        // Highest action first, though it expires sooner.
        let g = check(&old, &jit, &a, "db", now).unwrap();
        assert_eq!(g.id.as_deref(), Some("g0000000000000002"));
        assert_eq!(g.approved_by.as_deref(), Some("oidc:i#bob"));
        assert!(g
            .describe(&a, "db")
            .contains("just-in-time grant g0000000000000002"));
        // A just-in-time grant without pins fits any role, database or
        // login; an expired one admits nobody.
        assert!(check_database(&old, &jit, &a, "db", "r", "d", now).is_ok());
        assert!(check_login(&old, &jit, &a, "db", "root", now).is_ok());
        assert!(check(&old, &jit, &b, "db", now).is_err());
        // Its pins hold like a static grant's.
        let mut pinned = active("g0000000000000004", "a", &[GrantAction::Admin], 600);
        pinned.pins = Pins {
            role: Some("analyst".into()),
            database: Some("orders".into()),
            login: Some("deploy".into()),
        };
        jit.sync(&pinned);
        let g = check_database(&old, &jit, &a, "db", "analyst", "orders", now).unwrap();
        assert_eq!(g.id.as_deref(), Some("g0000000000000004"));
        let e = check_database(&old, &jit, &a, "db", "analyst", "postgres", now).unwrap_err();
        assert!(
            e.to_string().contains(
                "just-in-time grant g0000000000000004 allows role analyst / database orders"
            ),
            "{e}"
        );
        assert!(check_login(&old, &jit, &a, "db", "deploy", now).is_ok());
        assert!(check_login(&old, &jit, &a, "db", "root", now).is_err());
    }

    #[tokio::test]
    async fn cutoffs_fire_on_expiry_and_revocation() {
        let live = LiveSessions::default();
        let soon = LiveGrant {
            expires: OffsetDateTime::now_utc() + time::Duration::milliseconds(300),
            id: Some("g1".into()),
            ..LiveGrant::fixed(OffsetDateTime::now_utc())
        };
        let mut a = live.register(&soon, SessionId::from_raw(1));
        let mut b = live.register(&soon, SessionId::from_raw(2));
        assert_eq!(live.sessions_of("g1").len(), 2);
        let started = std::time::Instant::now();
        let why = a.fired().await;
        assert!(why.contains("just-in-time grant g1 expired at"), "{why}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // A revocation reaches every session of the grant; dropping a cutoff
        // unregisters its session.
        drop(a);
        assert_eq!(live.sessions_of("g1"), vec![SessionId::from_raw(2)]);
        let later = LiveGrant {
            expires: OffsetDateTime::now_utc() + time::Duration::hours(1),
            ..soon.clone()
        };
        let mut c = live.register(&later, SessionId::from_raw(3));
        assert_eq!(live.revoke("g1", "revoked by someone".into()), 2);
        assert_eq!(c.fired().await, "revoked by someone");
        assert_eq!(c.fired().await, "revoked by someone", "fired stays fired");
        let _ = b.fired().await;
        // Static grants: expiry only; unknown grants revoke nothing.
        let fixed = LiveGrant::fixed(OffsetDateTime::now_utc() - time::Duration::seconds(1));
        let mut d = live.register(&fixed, SessionId::from_raw(4));
        assert!(d.fired().await.starts_with("the grant expired at"));
        assert_eq!(live.revoke("g-unknown", "x".into()), 0);
    }
}
