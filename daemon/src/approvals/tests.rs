//! The approval rules: who may decide, self-approval, distinct approvals,
//! TTL caps, single-use holds, timeouts, revocation cutting sessions.

use std::{path::Path, sync::Arc, time::Duration};

use time::OffsetDateTime;

use super::*;
use crate::{
    audit::{events::Filter, Session, Verdict},
    config::AgentName,
    grants::GrantAction,
    identity::oidc::Human,
};

/// A grant request as `cordon request` sends it (no pins named).
fn ask(
    agent: String,
    resource: String,
    actions: Vec<GrantAction>,
    ttl: Duration,
    reason: String,
) -> NewRequest {
    NewRequest {
        agent,
        resource,
        actions,
        pins: crate::grants::Pins::default(),
        ttl,
        reason,
        requested_by: String::new(),
    }
}

fn config(extra_daemon: &str) -> Config {
    let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
    let text = format!(
        r#"
[daemon]
state_dir = "/s"
control_socket = "/c"
policy_dir = "{policies}"
[approvals]
{extra_daemon}
[[agent]]
name = "bot"
[[resource]]
name = "db"
protocol = "postgres"
address = "10.0.0.5:5432"
credential = "c"
policy = "pg-readonly"
approvers = ["dba"]
approvals_required = 2
max_ttl = "1h"
actions = {{ read = "pg-readonly", admin = "pg-dba" }}
[[resource]]
name = "box"
protocol = "tcp"
address = "10.0.0.6:22"
"#
    );
    Config::parse(Path::new("t.toml"), &text).unwrap()
}

fn human(sub: &str, groups: &[&str]) -> Actor {
    let groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
    Actor::Human(Human {
        subject: sub.into(),
        issuer: "https://idp".into(),
        email: None,
        name: None,
        can_approve: groups.iter().any(|g| g == "approvers" || g == "admins"),
        is_admin: groups.iter().any(|g| g == "admins"),
        groups,
        token_expires: "2099-01-01T00:00:00Z".into(),
    })
}

struct Hub {
    _dir: tempfile::TempDir,
    audit: Arc<audit::Store>,
    live: LiveSessions,
    hub: Arc<Approvals>,
}

fn hub(extra: &str) -> Hub {
    let dir = tempfile::tempdir().unwrap();
    let audit = Arc::new(audit::Store::open(dir.path()).unwrap());
    let live = LiveSessions::default();
    let hub = Arc::new(Approvals::open(&config(extra), audit.clone(), live.clone()).unwrap());
    Hub {
        _dir: dir,
        audit,
        live,
        hub,
    }
}

fn kinds(hub: &Approvals, target: &str) -> Vec<EventKind> {
    let mut v: Vec<EventKind> = hub
        .events()
        .list(&Filter {
            limit: 100,
            target: Some(target.into()),
        })
        .unwrap()
        .into_iter()
        .map(|e| e.what)
        .collect();
    v.reverse();
    v
}

#[tokio::test]
async fn grant_rules_self_approval_groups_counts_and_revocation() {
    let h = hub("");
    let hub = &h.hub;
    let alice = human("alice", &["dba"]);
    let bob = human("bob", &["dba"]);
    let carol = human("carol", &["approvers"]);
    let root = Actor::LocalRoot { uid: 0 };
    let hour = Duration::from_secs(3600);

    // The TTL is capped by the resource; the action must be offered.
    let e = hub
        .request_grant(
            &alice,
            ask(
                "bot".into(),
                "db".into(),
                vec![],
                Duration::from_secs(7200),
                "x".into(),
            ),
        )
        .unwrap_err();
    assert!(e.to_string().contains("max_ttl"), "{e}");
    let e = hub
        .request_grant(
            &alice,
            ask(
                "bot".into(),
                "db".into(),
                vec![GrantAction::Write],
                hour,
                "x".into(),
            ),
        )
        .unwrap_err();
    assert!(e.to_string().contains("no `write` action"), "{e}");

    let g = hub
        .request_grant(
            &alice,
            ask(
                "bot".into(),
                "db".into(),
                vec![GrantAction::Admin],
                Duration::from_secs(1800),
                "incident 7".into(),
            ),
        )
        .unwrap();
    assert_eq!(g.state, State::Pending);
    assert_eq!(g.approvals_required, 2);
    // The requester sees their own request; a reviewer sees it; someone
    // else does not.
    assert_eq!(hub.pending(&alice).unwrap().grants.len(), 1);
    assert_eq!(hub.pending(&bob).unwrap().grants.len(), 1);
    assert_eq!(hub.pending(&carol).unwrap().grants.len(), 0);

    // Self-approval, wrong group: refused and recorded.
    let e = hub.approve(&alice, &g.id).unwrap_err();
    assert!(e.to_string().contains("may not approve their own"), "{e}");
    let e = hub.approve(&carol, &g.id).unwrap_err();
    assert!(e.to_string().contains("approver groups (dba)"), "{e}");
    // Two distinct approvals: bob twice does not count twice.
    let Decided::Grant { grant } = hub.approve(&bob, &g.id).unwrap() else {
        panic!("a grant")
    };
    assert_eq!(grant.state, State::Pending);
    assert!(hub
        .approve(&bob, &g.id)
        .unwrap_err()
        .to_string()
        .contains("already approved"));
    let agent = AgentName::parse("bot").unwrap();
    let now = OffsetDateTime::now_utc();
    assert!(crate::grants::check(&hub.config, hub.active(), &agent, "db", now).is_err());
    let Decided::Grant { grant } = hub.approve(&root, &g.id).unwrap() else {
        panic!("a grant")
    };
    assert_eq!(grant.state, State::Active);

    // Live: `check` admits, with the admin action's policy.
    let live = crate::grants::check(&hub.config, hub.active(), &agent, "db", now).unwrap();
    assert_eq!(live.id.as_deref(), Some(g.id.as_str()));
    assert_eq!(
        live.policy.as_ref().map(|p| p.name.as_str()),
        Some("pg-dba")
    );
    assert_eq!(live.approved_by.as_deref(), Some("uid:0"));
    let pinned =
        crate::grants::check_database(&hub.config, hub.active(), &agent, "db", "any", "any", now);
    assert!(pinned.is_ok(), "just-in-time grants carry no pins");
    assert!((live.expires - now) <= time::Duration::seconds(1801));
    assert_eq!(
        hub.on_behalf_of(std::process::id(), "bot", &live)
            .as_deref(),
        Some("uid:0")
    );

    // A session under it is cut by the revocation, at once.
    let mut cutoff = h.live.register(&live, SessionId::from_raw(7));
    assert_eq!(cutoff.check(), None);
    let e = hub.revoke(&carol, &g.id, "no").unwrap_err();
    assert!(e.to_string().contains("approver groups"), "{e}");
    let revoked = hub.revoke(&bob, &g.id, "done here").unwrap();
    assert_eq!(revoked.sessions_cut, 1);
    assert_eq!(revoked.grant.state, State::Revoked);
    let why = tokio::time::timeout(Duration::from_secs(1), cutoff.fired())
        .await
        .unwrap();
    assert!(
        why.contains("revoked by oidc:https://idp#bob: done here"),
        "{why}"
    );
    // Fired stays fired; a session registered afterwards is cut at once.
    assert!(cutoff.check().is_some());
    let late = h.live.register(&live, SessionId::from_raw(8));
    assert!(late.check().is_some());
    assert!(crate::grants::check(&hub.config, hub.active(), &agent, "db", now).is_err());
    assert!(hub.revoke(&bob, &g.id, "again").is_err());

    assert_eq!(
        kinds(hub, &g.id),
        vec![
            EventKind::GrantRequested,
            EventKind::Refused,
            EventKind::Refused,
            EventKind::GrantApproved,
            EventKind::Refused,
            EventKind::GrantApproved,
            EventKind::GrantActivated,
            EventKind::Refused,
            EventKind::GrantRevoked,
            EventKind::Refused,
        ]
    );
    let all = hub
        .events()
        .list(&Filter {
            limit: 100,
            target: None,
        })
        .unwrap();
    let activated = all
        .iter()
        .find(|e| e.what == EventKind::GrantActivated)
        .unwrap();
    assert_eq!(activated.who, "uid:0");
    let requested = all
        .iter()
        .find(|e| e.what == EventKind::GrantRequested)
        .unwrap();
    assert_eq!(requested.who, "oidc:https://idp#alice");
}

#[tokio::test]
async fn withdrawal_denial_expiry_and_restart() {
    let h = hub("");
    let alice = human("alice", &["approvers"]);
    let bob = human("bob", &["approvers"]);
    let admin = human("dora", &["admins"]);
    let ttl = Duration::from_secs(60);
    // tcp resource `box`: global approver groups review, one approval.
    let g = h
        .hub
        .request_grant(
            &alice,
            ask("bot".into(), "box".into(), vec![], ttl, "r".into()),
        )
        .unwrap();
    let Decided::Grant { grant } = h.hub.deny(&alice, &g.id, "not needed").unwrap() else {
        panic!("grant")
    };
    assert_eq!(grant.state, State::Denied, "the requester may withdraw");
    assert!(
        h.hub.approve(&bob, &g.id).is_err(),
        "a denied request stays denied"
    );
    assert!(h.hub.deny(&bob, &g.id, "").is_err(), "a reason is required");

    let g = h
        .hub
        .request_grant(
            &alice,
            ask("bot".into(), "box".into(), vec![], ttl, "r".into()),
        )
        .unwrap();
    let Decided::Grant { grant } = h.hub.approve(&admin, &g.id).unwrap() else {
        panic!("grant")
    };
    assert_eq!(
        grant.state,
        State::Active,
        "one approval on box, by an admin"
    );
    let agent = AgentName::parse("bot").unwrap();
    let now = OffsetDateTime::now_utc();
    let live = crate::grants::check(&h.hub.config, h.hub.active(), &agent, "box", now).unwrap();
    assert!(live.policy.is_none());
    let _session = h.live.register(&live, SessionId::from_raw(1));

    // Restart: the live grant comes back.
    let reopened = Approvals::open(&config(""), h.audit.clone(), LiveSessions::default()).unwrap();
    assert_eq!(reopened.active().live("bot", "box", now).len(), 1);

    // Expiry: the tick expires it, cuts the session and records it.
    h.hub.tick(now + Duration::from_secs(61));
    assert!(h.hub.active().live("bot", "box", now).is_empty());
    let kinds = kinds(&h.hub, &g.id);
    assert_eq!(kinds.last(), Some(&EventKind::GrantExpired), "{kinds:?}");
    let list = h.hub.grants().unwrap();
    let stored = list.jit.iter().find(|v| v.grant.id == g.id).unwrap();
    assert_eq!(stored.grant.state, State::Expired);
}

fn record_session(audit: &audit::Store, on_behalf_of: Option<&str>) -> SessionId {
    let id = audit.next_id();
    audit
        .record(&Session {
            id,
            agent: Some("bot".into()),
            pid: 1,
            uid: 0,
            gid: 0,
            exe: None,
            comm: "psql".into(),
            cgroup_id: 1,
            cgroup: None,
            dst: "10.0.0.5:5432".into(),
            resource: Some("db".into()),
            protocol: Some("postgres".into()),
            verdict: Verdict::Allow,
            reason: "grant".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            ended_at: None,
            bytes_up: 0,
            bytes_down: 0,
            end_reason: None,
            on_behalf_of: on_behalf_of.map(str::to_owned),
            grant: None,
            refusals: None,
        })
        .unwrap();
    id
}

fn held(session: SessionId, command: &str) -> HoldRequest {
    HoldRequest {
        session,
        agent: "bot".into(),
        resource: "db".into(),
        protocol: "postgres",
        command: command.into(),
        rule: "pg-dba/ddl-needs-approval".into(),
        reason: "schema changes need approval".into(),
    }
}

/// Waits until `hub` lists a hold; returns it.
async fn pending_hold(hub: &Approvals) -> HoldView {
    for _ in 0..200 {
        if let Some(h) = hub
            .pending(&Actor::LocalRoot { uid: 0 })
            .unwrap()
            .holds
            .into_iter()
            .next()
        {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("no hold appeared")
}

#[tokio::test]
async fn a_hold_is_approved_once_and_never_reused() {
    let h = hub("");
    let alice = human("alice", &["dba"]);
    let bob = human("bob", &["dba"]);
    let carol = human("carol", &["approvers"]);
    let session = record_session(&h.audit, Some("oidc:https://idp#alice"));
    let hub = h.hub.clone();
    let waiting = tokio::spawn(async move { hub.hold(held(session, "drop table t")).await });
    let view = pending_hold(&h.hub).await;
    assert_eq!(view.command, "drop table t");
    assert_eq!(view.on_behalf_of.as_deref(), Some("oidc:https://idp#alice"));
    assert_eq!(view.sha256, command_hash(session, "drop table t"));
    assert!(
        h.hub.pending(&carol).unwrap().holds.is_empty(),
        "not a reviewer of db"
    );
    // The human the session acts for may not approve it; a non-reviewer neither.
    let e = h.hub.approve(&alice, &view.id).unwrap_err();
    assert!(e.to_string().contains("on their behalf"), "{e}");
    assert!(h.hub.approve(&carol, &view.id).is_err());
    let Decided::Command { outcome, .. } = h.hub.approve(&bob, &view.id).unwrap() else {
        panic!("a command")
    };
    assert_eq!(outcome, "approved");
    assert_eq!(
        waiting.await.unwrap(),
        Outcome::Approved {
            by: "oidc:https://idp#bob".into()
        }
    );
    // Used: the same id cannot release anything again.
    let e = h.hub.approve(&bob, &view.id).unwrap_err();
    assert!(e.to_string().contains("no pending held command"), "{e}");
    // The same text again is a new hold with a new id.
    let hub = h.hub.clone();
    let again = tokio::spawn(async move { hub.hold(held(session, "drop table t")).await });
    let second = pending_hold(&h.hub).await;
    assert_ne!(second.id, view.id);
    let Decided::Command { outcome, .. } = h.hub.deny(&bob, &second.id, "not today").unwrap()
    else {
        panic!("a command")
    };
    assert_eq!(outcome, "denied");
    assert_eq!(
        again.await.unwrap(),
        Outcome::Denied {
            by: "oidc:https://idp#bob".into(),
            reason: "not today".into()
        }
    );
    assert_eq!(
        kinds(&h.hub, &view.id),
        vec![
            EventKind::CommandHeld,
            EventKind::Refused,
            EventKind::Refused,
            EventKind::CommandApproved,
            EventKind::Refused,
        ]
    );
    assert_eq!(
        kinds(&h.hub, &second.id),
        vec![EventKind::CommandHeld, EventKind::CommandDenied]
    );
}

#[tokio::test]
async fn a_hold_times_out_or_is_abandoned() {
    let h = hub("timeout_secs = 1");
    let session = record_session(&h.audit, None);
    let started = std::time::Instant::now();
    let outcome = h.hub.hold(held(session, "create table x(i int)")).await;
    assert_eq!(
        outcome,
        Outcome::TimedOut {
            after: Duration::from_secs(1)
        }
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(h
        .hub
        .pending(&Actor::LocalRoot { uid: 0 })
        .unwrap()
        .holds
        .is_empty());
    let timed_out = h
        .hub
        .events()
        .list(&Filter {
            limit: 10,
            target: None,
        })
        .unwrap();
    assert_eq!(timed_out[0].what, EventKind::CommandTimedOut);
    assert_eq!(timed_out[0].who, SYSTEM);

    // The session ends while waiting: the hold is withdrawn and recorded.
    let hub = h.hub.clone();
    let waiting = tokio::spawn(async move { hub.hold(held(session, "drop table y")).await });
    let view = pending_hold(&h.hub).await;
    waiting.abort();
    let _ = waiting.await;
    assert!(h
        .hub
        .pending(&Actor::LocalRoot { uid: 0 })
        .unwrap()
        .holds
        .is_empty());
    assert_eq!(
        kinds(&h.hub, &view.id),
        vec![EventKind::CommandHeld, EventKind::CommandAbandoned]
    );
    assert!(h
        .hub
        .approve(&Actor::LocalRoot { uid: 0 }, &view.id)
        .is_err());
}

#[test]
fn failed_authentications_are_recorded_up_to_a_burst_then_summarized_per_uid() {
    use crate::audit::ratelimit::BURST;
    let h = hub("");
    for _ in 0..100 {
        h.hub.auth_failed(1000, "whoami", "no login for uid 1000");
    }
    h.hub.auth_failed(1001, "approve", "no login for uid 1001");
    h.hub.flush_auth_failures();
    let all = h
        .hub
        .events()
        .list(&Filter {
            limit: 1000,
            target: None,
        })
        .unwrap();
    let of = |who: &str, target: &str| {
        all.iter()
            .filter(|e| e.what == EventKind::AuthFailed && e.who == who && e.target == target)
            .collect::<Vec<_>>()
    };
    assert_eq!(of("uid:1000", "whoami").len(), BURST as usize);
    assert_eq!(of("uid:1001", "approve").len(), 1);
    let summary = of("uid:1000", "summary");
    assert_eq!(summary.len(), 1, "{all:?}");
    let d = &summary[0].details;
    assert_eq!(d["count"], 100 - u64::from(BURST));
    assert_eq!(d["ops"]["whoami"], 100 - u64::from(BURST));
    let why = d["why"].as_str().unwrap_or("");
    assert!(
        why.starts_with("68 more failed authentications by uid:1000")
            && why.ends_with("no login for uid 1000"),
        "{why}"
    );
    // Nothing more to summarize.
    h.hub.flush_auth_failures();
    let again = h
        .hub
        .events()
        .list(&Filter {
            limit: 1000,
            target: Some("summary".into()),
        })
        .unwrap();
    assert_eq!(again.len(), 1);
}
