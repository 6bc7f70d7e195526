//! Humans in the loop end to end: a real OIDC provider (`oidc-provider`
//! under node), a real PostgreSQL, the real daemon and kernel capture, and
//! an unmodified client (psql) run as an agent through `cordon run`.
//!
//! - Just-in-time grants: requested by one human, self-approval refused,
//!   non-reviewers and forged tokens refused, approved by another; the agent
//!   connects; expiry cuts the live session within about a second;
//!   revocation cuts a live session; the audit log shows who did what.
//! - Held commands (policy `pg-dba`: DDL needs approval): approved runs
//!   once, denied returns the reviewer's reason, timeout returns an error,
//!   the human the session runs for may not approve it; the notification
//!   hook gets the pending request as JSON.
//!
//! Needs root (eBPF) and the provider (`cargo xtask setup`); skips without
//! them unless CI is set.

use std::{
    io::Write as _,
    path::PathBuf,
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use cordon_tests::{
    oidc::{jwt_payload, unsigned, with_payload, OidcProvider},
    pg::{self, PgOptions, PgServer, ROLE_SCRAM, SHOP_DB},
    pretty, require_oidc_provider, require_root, run_with_limit, Background, Daemon, Setup,
    FAR_FUTURE,
};
use serde_json::{json, Value};
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

const LIMIT: Duration = Duration::from_secs(60);

const OIDC: &str = "approver_groups = [\"approvers\"]\nadmin_groups = [\"admins\"]";

fn policies_dir() -> String {
    format!("{}/../policies", env!("CARGO_MANIFEST_DIR"))
}

/// Who runs a `cordon` command: local root without a login, or a human
/// presenting an ID token.
#[derive(Clone, Copy)]
enum Who<'a> {
    Root,
    Human(&'a str),
}

struct World {
    // Dropped in order: the daemon before the servers it talks to.
    d: Daemon,
    pg: PgServer,
    idp: OidcProvider,
    /// An empty cache directory: no `cordon login` is ever picked up.
    xdg: tempfile::TempDir,
    alice: String,
    bob: String,
    carol: String,
    notify_log: PathBuf,
}

/// A daemon with `[identity.oidc]` for `idp`, `[approvals]` with
/// `approvals`, and a postgres resource `shop` (reviewed by group `dba`)
/// with `policy`; `grant` adds a static grant for agent `bot`.
fn world(policy: &str, resource_extra: &str, approvals: &str, grant: bool) -> World {
    let grant_table = if grant {
        format!("\n[[grant]]\nagent = \"bot\"\nresource = \"shop\"\nexpires = \"{FAR_FUTURE}\"\n")
    } else {
        String::new()
    };
    world_with(policy, resource_extra, approvals, &grant_table)
}

/// [`world`] with these `[[grant]]` tables.
fn world_with(policy: &str, resource_extra: &str, approvals: &str, grant_table: &str) -> World {
    world_in(
        &policies_dir(),
        policy,
        resource_extra,
        approvals,
        grant_table,
    )
}

/// [`world_with`] with policies from `policy_dir`.
fn world_in(
    policy_dir: &str,
    policy: &str,
    resource_extra: &str,
    approvals: &str,
    grant_table: &str,
) -> World {
    let idp = OidcProvider::start();
    let pg = PgServer::start(PgOptions::plain()).expect("postgres");
    let xdg = tempfile::tempdir().expect("tempdir");
    let notify_log = xdg.path().join("notify.jsonl");
    let mut setup = Setup::new()
        .agent("bot")
        .daemon_key(&format!("policy_dir = \"{policy_dir}\""));
    setup.extra = format!(
        "{}\n[approvals]\n{approvals}\nnotify_command = [\"/bin/sh\", \"-c\", \"cat >> {log}; echo >> {log}\"]\n\
         \n[[resource]]\nname = \"shop\"\nprotocol = \"postgres\"\naddress = \"{addr}\"\ncredential = \"shop-db\"\n\
         policy = \"{policy}\"\nupstream_user = \"{ROLE_SCRAM}\"\napprovers = [\"dba\"]\n{resource_extra}\n{grant_table}",
        idp.config_table(OIDC),
        log = notify_log.display(),
        addr = pg.addr(),
    );
    let d = Daemon::start(setup);
    d.vault_set("shop-db", "password", &pg.password(ROLE_SCRAM));
    let alice = idp.id_token("alice", &["dba"]);
    let bob = idp.id_token("bob", &["dba"]);
    let carol = idp.id_token("carol", &["approvers"]);
    World {
        d,
        pg,
        idp,
        xdg,
        alice,
        bob,
        carol,
        notify_log,
    }
}

/// `cordon request` for agent `bot` on `shop`, then `extra`.
fn request<'a>(ttl: &'a str, reason: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "request",
        "--agent",
        "bot",
        "--resource",
        "shop",
        "--ttl",
        ttl,
        "--reason",
        reason,
    ];
    args.extend_from_slice(extra);
    args
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl World {
    /// `oidc:<issuer>#<sub>` of a token, as the audit names its holder.
    fn name_of(&self, token: &str) -> String {
        format!(
            "oidc:{}#{}",
            self.idp.issuer,
            jwt_payload(token)["sub"].as_str().unwrap_or("?")
        )
    }

    fn cordon_cmd(&self, who: Who<'_>, args: &[&str]) -> Command {
        let mut cmd = self.d.cordon(args);
        cmd.env_remove("CORDON_ID_TOKEN")
            .env("XDG_CACHE_HOME", self.xdg.path());
        if let Who::Human(token) = who {
            cmd.env("CORDON_ID_TOKEN", token);
        }
        cmd
    }

    fn cordon(&self, who: Who<'_>, args: &[&str]) -> Output {
        run_with_limit(&mut self.cordon_cmd(who, args), LIMIT)
    }

    /// `cordon ARGS --json` as `who`; its JSON, or a panic with everything.
    fn json(&self, who: Who<'_>, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.cordon(who, &all);
        assert!(
            out.status.success(),
            "cordon {all:?} failed: {}\n{}",
            text(&out),
            self.d.context()
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("cordon {all:?}: bad JSON ({e}): {}", text(&out)))
    }

    /// `cordon ARGS` as `who`, which must fail; its output.
    fn refused(&self, who: Who<'_>, args: &[&str]) -> String {
        let out = self.cordon(who, args);
        let t = text(&out);
        assert!(
            !out.status.success(),
            "cordon {args:?} should have been refused: {t}"
        );
        t
    }

    /// `cordon run --agent bot -- psql ... -c SQL` (as nobody), launched by
    /// `launcher` (root without a login when None).
    fn agent(&self, launcher: Option<&str>, sql: &str) -> Command {
        let mut cmd = self.d.cordon(&["run", "--agent", "bot", "--"]);
        cmd.args(pg::as_nobody(pg::psql_argv(
            self.pg.addr(),
            "analyst",
            SHOP_DB,
            sql,
        )));
        pg::apply_client_env(&mut cmd, &[]);
        cmd.env_remove("CORDON_ID_TOKEN")
            .env("XDG_CACHE_HOME", self.xdg.path());
        if let Some(t) = launcher {
            cmd.env("CORDON_ID_TOKEN", t);
        }
        cmd
    }

    fn agent_output(&self, launcher: Option<&str>, sql: &str) -> Output {
        run_with_limit(&mut self.agent(launcher, sql), LIMIT)
    }

    /// Polls `cordon approvals list` (as `who`) until a held command whose
    /// text contains `needle` shows up.
    fn wait_hold(&self, who: Who<'_>, needle: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let list = self.json(who, &["approvals", "list"]);
            if let Some(h) = list["holds"].as_array().and_then(|hs| {
                hs.iter()
                    .find(|h| h["command"].as_str().unwrap_or("").contains(needle))
            }) {
                return h.clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "no held command with `{needle}` after 20 s: {}\n{}",
                    pretty(&list),
                    self.d.context()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every audit event, oldest first (as root).
    fn audit(&self) -> Vec<Value> {
        let v = self.json(Who::Root, &["audit", "list", "--limit", "10000"]);
        let mut events = v.as_array().cloned().unwrap_or_default();
        events.reverse();
        events
    }

    /// The newest session of agent `bot` that has a postgres protocol.
    fn last_session(&self) -> Value {
        self.d.wait_session("a postgres session", |s| {
            s["protocol"] == "postgres" && s["verdict"] == "allow"
        })
    }

    fn table_exists(&self, name: &str) -> bool {
        self.pg
            .psql_admin(
                SHOP_DB,
                &format!("select count(*) from pg_tables where tablename = '{name}'"),
            )
            .expect("psql admin")
            .trim()
            == "1"
    }
}

fn has_event(events: &[Value], what: &str, who: &str, target: &str) -> bool {
    events
        .iter()
        .any(|e| e["what"] == what && e["who"] == who && e["target"] == target)
}

fn rfc3339(v: &Value) -> OffsetDateTime {
    OffsetDateTime::parse(v.as_str().unwrap_or(""), &Rfc3339)
        .unwrap_or_else(|e| panic!("not an RFC 3339 time ({e}): {v}"))
}

#[test]
fn jit_grant_requested_approved_used_and_cut_at_expiry() {
    require_root!();
    require_oidc_provider!();
    let w = world(
        "pg-readonly",
        "max_ttl = \"1h\"\nactions = { read = \"pg-readonly\", admin = \"pg-dba\" }",
        "timeout_secs = 5",
        false,
    );
    let (alice, bob, carol) = (w.alice.as_str(), w.bob.as_str(), w.carol.as_str());
    let root = Who::Root;

    // No grant yet: the agent is refused.
    let out = w.agent_output(None, "select 1");
    assert!(!out.status.success(), "no grant, yet: {}", text(&out));

    // Requests are checked: an unknown action, too long a TTL, no login.
    let t = w.refused(
        Who::Human(alice),
        &request("5m", "x", &["--actions", "write"]),
    );
    assert!(t.contains("offers no `write` action"), "{t}");
    let t = w.refused(Who::Human(alice), &request("2h", "x", &[]));
    assert!(t.contains("max_ttl"), "{t}");
    let nobody_out = run_with_limit(
        Command::new("setpriv")
            .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
            .arg(cordon_tests::cordon_bin())
            .arg("--config")
            .arg(w.d.config())
            .args(request("5m", "x", &[]))
            .env_remove("CORDON_ID_TOKEN")
            .env("XDG_CACHE_HOME", "/nonexistent"),
        LIMIT,
    );
    assert!(
        !nobody_out.status.success() && text(&nobody_out).contains("cordon login"),
        "an unprivileged user without a login may not request: {}",
        text(&nobody_out)
    );

    // Alice asks; the notification hook gets the request.
    let g = w.json(
        Who::Human(alice),
        &request("8s", "incident 4711", &["--actions", "read"]),
    );
    let id = g["id"].as_str().expect("id").to_owned();
    assert_eq!(g["state"], "pending");
    assert_eq!(g["requested_by"], w.name_of(alice));
    let listed = w.json(Who::Human(bob), &["approvals", "list"]);
    assert!(
        listed["grants"]
            .as_array()
            .is_some_and(|gs| gs.iter().any(|x| x["id"] == id.as_str())),
        "bob sees the request: {}",
        pretty(&listed)
    );

    // Self-approval, a non-reviewer, forged and unsigned tokens: refused.
    let t = w.refused(Who::Human(alice), &["approve", &id]);
    assert!(t.contains("may not approve their own request"), "{t}");
    let t = w.refused(Who::Human(carol), &["approve", &id]);
    assert!(t.contains("approver groups (dba)"), "{t}");
    let mut claims = jwt_payload(bob);
    claims["sub"] = json!("mallory");
    claims["groups"] = json!(["dba", "admins"]);
    let forged = with_payload(bob, &claims);
    let t = w.refused(Who::Human(&forged), &["approve", &id]);
    assert!(t.contains("ID token refused"), "{t}");
    let t = w.refused(Who::Human(&unsigned(bob)), &["approve", &id]);
    assert!(t.contains("ID token refused"), "{t}");
    let still = w.json(root, &["grants", "list"]);
    let mine = still["jit"]
        .as_array()
        .and_then(|gs| gs.iter().find(|x| x["id"] == id.as_str()).cloned())
        .expect("listed");
    assert_eq!(mine["state"], "pending", "{}", pretty(&mine));

    // Bob approves: the grant is live for 8 s from now.
    let decided = w.json(Who::Human(bob), &["approve", &id]);
    assert_eq!(decided["kind"], "grant");
    assert_eq!(decided["grant"]["state"], "active", "{}", pretty(&decided));
    let expires = rfc3339(&decided["grant"]["expires_at"]);

    // The agent connects (root launched it without a login, so the session
    // runs on behalf of the approver) and reads.
    let out = w.agent_output(None, "select count(*) from customers");
    assert!(out.status.success(), "{}\n{}", text(&out), w.d.context());
    assert_eq!(text(&out).trim(), "20");
    let s = w.last_session();
    assert_eq!(s["grant"], id.as_str(), "{}", pretty(&s));
    assert_eq!(s["on_behalf_of"], w.name_of(bob), "{}", pretty(&s));
    let shown =
        w.d.cordon_output(&["sessions", "show", s["id"].as_str().unwrap_or("")]);
    assert!(
        String::from_utf8_lossy(&shown.stdout)
            .contains(&format!("on behalf of {}", w.name_of(bob))),
        "{}",
        text(&shown)
    );

    // Launched with Alice's login, the session runs on her behalf (and the
    // agent does not get her token).
    let out = w.agent_output(Some(alice), "select 1");
    assert!(out.status.success(), "{}", text(&out));
    let s = w.d.wait_session("alice's session", |s| {
        s["protocol"] == "postgres" && s["on_behalf_of"] == w.name_of(alice).as_str()
    });
    assert_eq!(s["grant"], id.as_str());

    // A long statement is cut when the grant expires, within about a second.
    let sleeper = Background::spawn(&mut w.agent(None, "select pg_sleep(60)"), "agent");
    let out = sleeper.finish(LIMIT);
    let ended = OffsetDateTime::now_utc();
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("grant"), "the agent is told why: {t}");
    let late = ended - expires;
    assert!(
        late < time::Duration::milliseconds(1500) && late > time::Duration::milliseconds(-200),
        "cut {late} after the expiry at {expires}: {t}\n{}",
        w.d.context()
    );
    // And new sessions are refused.
    let out = w.agent_output(None, "select 1");
    assert!(!out.status.success(), "after expiry: {}", text(&out));
    // The expiry task marks it (every 250 ms): wait for it, a little.
    let marked_by = Instant::now() + Duration::from_secs(5);
    let mine = loop {
        let listed = w.json(root, &["grants", "list"]);
        let mine = listed["jit"]
            .as_array()
            .and_then(|gs| gs.iter().find(|x| x["id"] == id.as_str()).cloned())
            .expect("listed");
        if mine["state"] == "expired" || Instant::now() > marked_by {
            break mine;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        mine["state"],
        "expired",
        "{}\n{}",
        pretty(&mine),
        w.d.context()
    );

    // The audit log says who did what.
    let events = w.audit();
    let (a, b) = (w.name_of(alice), w.name_of(bob));
    for (what, who) in [
        ("grant_requested", a.as_str()),
        ("refused", a.as_str()),
        ("refused", w.name_of(carol).as_str()),
        ("grant_approved", b.as_str()),
        ("grant_activated", b.as_str()),
        ("grant_expired", "cordon"),
    ] {
        assert!(
            has_event(&events, what, who, &id),
            "no {what} by {who} for {id}:\n{}",
            pretty(&Value::Array(events.clone()))
        );
    }
    assert!(
        events
            .iter()
            .any(|e| e["what"] == "auth_failed" && e["who"] == "uid:0"),
        "the forged tokens are recorded: {}",
        pretty(&Value::Array(events.clone()))
    );
    let all = serde_json::to_string(&events).unwrap_or_default();
    assert!(
        !all.contains(bob) && !all.contains(alice),
        "no token in the audit log"
    );
    assert!(!w.d.stderr().contains(bob), "no token in the daemon's log");
    let human = w.cordon(root, &["audit", "list"]);
    assert!(text(&human).contains("grant_activated"), "{}", text(&human));
    // Approvers may read the audit log; others may not.
    let t = w.refused(Who::Human(&w.idp.id_token("dave", &[])), &["audit", "list"]);
    assert!(t.contains("permission denied"), "{t}");

    // The notification hook saw the request.
    let notes = std::fs::read_to_string(&w.notify_log).unwrap_or_default();
    assert!(
        notes.contains("\"grant_request\"")
            && notes.contains(&id)
            && notes.contains("incident 4711"),
        "notify_command output: {notes}"
    );
}

#[test]
fn revocation_cuts_a_live_session() {
    require_root!();
    require_oidc_provider!();
    let w = world("pg-readonly", "approvals_required = 2", "", false);
    let (alice, bob) = (w.alice.as_str(), w.bob.as_str());
    let dora = w.idp.id_token("dora", &["admins"]);
    let g = w.json(Who::Human(alice), &request("10m", "migration", &[]));
    let id = g["id"].as_str().expect("id").to_owned();
    assert_eq!(g["approvals_required"], 2);
    let one = w.json(Who::Human(bob), &["approve", &id]);
    assert_eq!(
        one["grant"]["state"],
        "pending",
        "one of two: {}",
        pretty(&one)
    );
    let t = w.refused(Who::Human(bob), &["approve", &id]);
    assert!(t.contains("already approved"), "{t}");
    let two = w.json(Who::Human(&dora), &["approve", &id]);
    assert_eq!(two["grant"]["state"], "active", "{}", pretty(&two));

    // Launched with Alice's login: her session.
    let sleeper = Background::spawn(&mut w.agent(Some(alice), "select pg_sleep(60)"), "agent");
    let s = w.d.wait_session("the sleeping session", |s| {
        s["protocol"] == "postgres" && s["grant"] == id.as_str() && s["ended_at"].is_null()
    });
    assert_eq!(s["on_behalf_of"], w.name_of(alice));
    thread::sleep(Duration::from_millis(1500));
    let revoked = w.json(
        Who::Human(bob),
        &["grants", "revoke", &id, "--reason", "migration done"],
    );
    let at = Instant::now();
    assert_eq!(revoked["sessions_cut"], 1, "{}", pretty(&revoked));
    assert_eq!(revoked["grant"]["state"], "revoked");
    let out = sleeper.finish(LIMIT);
    let took = at.elapsed();
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        took < Duration::from_millis(1500),
        "the session was cut {took:?} after the revocation: {t}\n{}",
        w.d.context()
    );
    assert!(t.contains("revoked"), "the agent is told why: {t}");
    let ended = w.d.wait_ended(s["id"].as_str().unwrap_or(""));
    assert!(
        ended["end_reason"]
            .as_str()
            .unwrap_or("")
            .contains("revoked"),
        "{}",
        pretty(&ended)
    );
    // New sessions are refused; the grant cannot be revoked twice.
    let out = w.agent_output(None, "select 1");
    assert!(!out.status.success(), "after revocation: {}", text(&out));
    let t = w.refused(
        Who::Human(bob),
        &["grants", "revoke", &id, "--reason", "again"],
    );
    assert!(t.contains("not active"), "{t}");
    let events = w.audit();
    assert!(has_event(&events, "grant_revoked", &w.name_of(bob), &id));
    assert!(has_event(
        &events,
        "grant_activated",
        &w.name_of(&dora),
        &id
    ));
}

/// A daemon whose resource `shop` uses `pg-dba` (DDL needs approval), with
/// a static grant and a 4 s approval timeout.
fn dba_world() -> World {
    world("pg-dba", "", "timeout_secs = 4", true)
}

#[test]
fn held_statement_approved_runs_once() {
    require_root!();
    require_oidc_provider!();
    let w = dba_world();
    let bob = w.bob.as_str();
    // Plain statements are not held.
    let out = w.agent_output(None, "select count(*) from orders");
    assert!(out.status.success(), "{}\n{}", text(&out), w.d.context());

    let agent = Background::spawn(
        &mut w.agent(None, "create table t_approved(i int)"),
        "agent",
    );
    let hold = w.wait_hold(Who::Human(bob), "t_approved");
    let id = hold["id"].as_str().expect("id").to_owned();
    assert_eq!(hold["agent"], "bot");
    assert_eq!(hold["resource"], "shop");
    assert_eq!(hold["protocol"], "postgres");
    assert_eq!(hold["command"], "create table t_approved(i int)");
    assert_eq!(hold["rule"], "pg-dba/ddl-needs-approval");
    assert_eq!(hold["on_behalf_of"], "uid:0", "root launched the agent");
    assert!(!w.table_exists("t_approved"), "held means not run yet");
    // The human listing shows the full text.
    let listing = w.cordon(Who::Human(bob), &["approvals", "list"]);
    assert!(
        text(&listing).contains("create table t_approved(i int)"),
        "{}",
        text(&listing)
    );

    let decided = w.json(Who::Human(bob), &["approve", &id]);
    assert_eq!(decided["kind"], "command");
    assert_eq!(decided["outcome"], "approved");
    let out = agent.finish(LIMIT);
    assert!(out.status.success(), "{}\n{}", text(&out), w.d.context());
    assert!(w.table_exists("t_approved"));
    // Once: the database saw it once, and the approval cannot be used again.
    let seen = w.pg.log().matches("create table t_approved(i int)").count();
    assert_eq!(seen, 1, "{}", w.pg.log_tail());
    let t = w.refused(Who::Human(bob), &["approve", &id]);
    assert!(t.contains("no pending held command"), "{t}");

    let events = w.audit();
    assert!(has_event(&events, "command_held", "agent:bot", &id));
    assert!(has_event(&events, "command_approved", &w.name_of(bob), &id));
    let notes = std::fs::read_to_string(&w.notify_log).unwrap_or_default();
    assert!(
        notes.contains("\"command_hold\"") && notes.contains("t_approved") && notes.contains(&id),
        "notify_command output: {notes}"
    );
}

#[test]
fn a_held_prepared_statement_is_shown_with_its_parameters_at_each_execution() {
    require_root!();
    require_oidc_provider!();
    // A policy that holds every DELETE: prepared with a placeholder, the
    // statement text alone does not say which rows go; the reviewer must
    // see the bound values, and an approval covers that one execution.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("pg-delete-approval.toml"),
        "[policy]\nname = \"pg-delete-approval\"\ndefault = \"allow\"\n\n\
         [[rule]]\nname = \"deletes-need-approval\"\naction = \"approve\"\nkinds = [\"delete\"]\n",
    )
    .expect("write policy");
    let grant =
        format!("\n[[grant]]\nagent = \"bot\"\nresource = \"shop\"\nexpires = \"{FAR_FUTURE}\"\n");
    let w = world_in(
        &dir.path().display().to_string(),
        "pg-delete-approval",
        "",
        "timeout_secs = 20",
        &grant,
    );
    let bob = w.bob.as_str();
    w.pg.psql_admin(
        SHOP_DB,
        &format!(
            "create table t_params(i int); insert into t_params values (1), (2), (3); \
                 grant all on t_params to {ROLE_SCRAM}"
        ),
    )
    .expect("psql admin");
    let rows = || {
        w.pg.psql_admin(
            SHOP_DB,
            "select string_agg(i::text, ',' order by i) from t_params",
        )
        .expect("psql admin")
        .trim()
        .to_owned()
    };
    let prepared_delete = |param: &str| {
        let mut cmd = w.d.cordon(&["run", "--agent", "bot", "--"]);
        cmd.args(pg::as_nobody(pg::pgclient_argv(
            w.pg.addr(),
            "analyst",
            SHOP_DB,
            &["prepared", "delete from t_params where i = $1", param],
        )));
        pg::apply_client_env(&mut cmd, &[]);
        cmd.env_remove("CORDON_ID_TOKEN");
        Background::spawn(&mut cmd, "agent")
    };

    let agent = prepared_delete("2");
    let hold = w.wait_hold(Who::Human(bob), "t_params");
    let id = hold["id"].as_str().expect("id").to_owned();
    // tokio-postgres binds the int4 in binary (00000002); its Describe of
    // the statement gave Cordon the type, so the reviewer reads the value.
    assert_eq!(
        hold["command"], "delete from t_params where i = $1\n-- parameters: $1 = 2 (int4)",
        "{hold}"
    );
    assert_eq!(rows(), "1,2,3", "held means not run yet");
    let decided = w.json(Who::Human(bob), &["approve", &id]);
    assert_eq!(decided["outcome"], "approved");
    let out = agent.finish(LIMIT);
    assert!(out.status.success(), "{}\n{}", text(&out), w.d.context());
    assert_eq!(rows(), "1,3");

    // Another execution (other value) is held again, and denied here.
    let agent = prepared_delete("3");
    let hold = w.wait_hold(Who::Human(bob), "$1 = 3 (int4)");
    let id = hold["id"].as_str().expect("id").to_owned();
    w.json(Who::Human(bob), &["deny", &id, "--reason", "keep row 3"]);
    let out = agent.finish(LIMIT);
    let t = text(&out);
    assert!(!out.status.success() && t.contains("keep row 3"), "{t}");
    assert_eq!(rows(), "1,3");

    // A raw client tries to run the held statement under another's name:
    // it binds a portal to the DELETE, then replaces the statement the
    // portal came from (re-Parse of the unnamed statement, or Close and
    // re-Parse of a named one) with a harmless SELECT before Execute. The
    // portal still runs the DELETE in PostgreSQL, so it must be held as one.
    // `actions`: Python run after start-up, with msg(), cstr(), the socket
    // `s` and until_ready() (the messages up to the next ReadyForQuery).
    let raw_agent = |actions: &str| {
        let script = format!(
            r#"
import socket, struct, time
def msg(tag, body): return tag + struct.pack("!I", len(body) + 4) + body
def cstr(s): return s.encode() + b"\x00"
s = socket.create_connection(("{host}", {port}), timeout=60)
body = struct.pack("!I", 196608) + b"user\x00analyst\x00database\x00{db}\x00\x00"
s.sendall(struct.pack("!I", len(body) + 4) + body)
f = s.makefile("rb")
def until_ready():
    seen = []
    while True:
        head = f.read(5)
        if len(head) < 5: return seen + ["EOF"]
        body = f.read(struct.unpack("!I", head[1:])[0] - 4)
        seen.append(head[:1].decode() + " " + body.decode(errors="replace"))
        if head[:1] == b"Z": return seen
def execute(statement):
    """Binds portal p to `statement`, executes it and syncs."""
    s.sendall(msg(b"B", cstr("p") + cstr(statement) + b"\x00\x00" * 3)
              + msg(b"E", cstr("p") + struct.pack("!I", 0)) + msg(b"S", b""))
    return until_ready()
until_ready()
{actions}
"#,
            host = w.pg.addr().ip(),
            port = w.pg.addr().port(),
            db = SHOP_DB,
        );
        let mut cmd = w.d.cordon(&["run", "--agent", "bot", "--"]);
        cmd.args(pg::as_nobody(vec![
            "/usr/bin/python3".into(),
            "-c".into(),
            script,
        ]));
        cmd.env_remove("CORDON_ID_TOKEN");
        Background::spawn(&mut cmd, "raw agent")
    };
    // Bind a portal to `first`, replace the statement (optionally closing
    // it first) with a SELECT, then Execute the portal.
    let raw_client = |first: &str, statement: &str, close: bool| {
        raw_agent(&format!(
            r#"
out = msg(b"P", cstr("{statement}") + cstr("{first}") + b"\x00\x00")
out += msg(b"B", cstr("p") + cstr("{statement}") + b"\x00\x00" + b"\x00\x00" + b"\x00\x00")
if {close}: out += msg(b"C", b"S" + cstr("{statement}"))
out += msg(b"P", cstr("{statement}") + cstr("select 1") + b"\x00\x00")
out += msg(b"E", cstr("p") + struct.pack("!I", 0))
out += msg(b"S", b"")
s.sendall(out)
print(repr(until_ready()))
"#,
            close = if close { "True" } else { "False" },
        ))
    };
    let held_text = "delete from t_params where i = 3\n-- parameters: none";
    // Unnamed statement re-Parsed: held as the DELETE, denied here.
    let delete = "delete from t_params where i = 3";
    let agent = raw_client(delete, "", false);
    let hold = w.wait_hold(Who::Human(bob), "where i = 3");
    assert_eq!(hold["command"], held_text, "{hold}");
    let id = hold["id"].as_str().expect("id").to_owned();
    assert_eq!(rows(), "1,3", "held means not run yet");
    w.json(Who::Human(bob), &["deny", &id, "--reason", "no swapping"]);
    let out = agent.finish(LIMIT);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("no swapping") && !t.contains("SELECT 1"), "{t}");
    assert_eq!(rows(), "1,3");
    // Named statement closed and re-Parsed: held as the DELETE; once
    // approved, what runs is exactly what the reviewer saw.
    let agent = raw_client(delete, "s", true);
    let hold = w.wait_hold(Who::Human(bob), "where i = 3");
    assert_eq!(hold["command"], held_text, "{hold}");
    let id = hold["id"].as_str().expect("id").to_owned();
    assert_eq!(rows(), "1,3", "held means not run yet");
    w.json(Who::Human(bob), &["approve", &id]);
    let out = agent.finish(LIMIT);
    let t = text(&out);
    assert!(out.status.success() && t.contains("DELETE 1"), "{t}");
    assert_eq!(rows(), "1");

    // The same swap on an allowed statement runs unheld, and the session
    // records what ran (the INSERT), not the SELECT now under the name.
    let out = raw_client("insert into t_params values (9)", "", false).finish(LIMIT);
    let t = text(&out);
    assert!(out.status.success() && t.contains("INSERT 0 1"), "{t}");
    assert_eq!(rows(), "1,9");
    let session = w.d.wait_session("the raw INSERT session", |s| {
        s["protocol"] == "postgres" && !s["ended_at"].is_null()
    });
    let shown = w.d.cordon_output(&[
        "sessions",
        "show",
        session["id"].as_str().unwrap_or(""),
        "--json",
    ]);
    let shown: Value = serde_json::from_slice(&shown.stdout).expect("sessions show --json");
    let texts: Vec<&str> = shown["statements"]
        .as_array()
        .expect("statements")
        .iter()
        .filter_map(|st| st["text"].as_str())
        .collect();
    assert!(
        texts.contains(&"insert into t_params values (9)") && !texts.contains(&"select 1"),
        "{}",
        pretty(&shown)
    );

    // SQL PREPARE of a statement that needs approval is refused: EXECUTE
    // would run it with values no reviewer saw.
    let out = w.agent_output(None, "prepare d(int) as delete from t_params where i = $1");
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("prepare-needs-approval"),
        "{t}"
    );
    assert_eq!(rows(), "1,9");

    // A Bind pipelined after a Sync belongs to the next transaction: when
    // the first Sync's answer ends the transaction it must not be forgotten
    // (an unknown portal's Execute would not be held).
    let agent = raw_agent(
        r#"
s.sendall(msg(b"P", cstr("") + cstr("delete from t_params where i = 9") + b"\x00\x00")
          + msg(b"S", b"")
          + msg(b"B", cstr("p") + cstr("") + b"\x00\x00" * 3))
print(repr(until_ready()))
time.sleep(0.5)
s.sendall(msg(b"E", cstr("p") + struct.pack("!I", 0)) + msg(b"S", b""))
print(repr(until_ready()))
"#,
    );
    let hold = w.wait_hold(Who::Human(bob), "where i = 9");
    assert_eq!(
        hold["command"], "delete from t_params where i = 9\n-- parameters: none",
        "{hold}"
    );
    let id = hold["id"].as_str().expect("id").to_owned();
    w.json(Who::Human(bob), &["deny", &id, "--reason", "not row 9"]);
    let out = agent.finish(LIMIT);
    let t = text(&out);
    assert!(out.status.success() && t.contains("not row 9"), "{t}");
    assert_eq!(rows(), "1,9");

    // The raw agent's DELETE of row 9 is held; the reviewer denies it, and
    // the agent's client hears the reason.
    let deny_row_9 = |agent: Background, reason: &str| {
        let hold = w.wait_hold(Who::Human(bob), "where i = 9");
        let id = hold["id"].as_str().expect("id").to_owned();
        w.json(Who::Human(bob), &["deny", &id, "--reason", reason]);
        let out = agent.finish(LIMIT);
        let t = text(&out);
        assert!(out.status.success() && t.contains(reason), "{t}");
    };
    // Cordon's statement map follows the database's through failures: a
    // name whose Parse the database failed, re-Parsed as the DELETE, is the
    // DELETE (held), not the SELECT that never existed.
    let agent = raw_agent(
        r#"
s.sendall(msg(b"P", cstr("s2") + cstr("select * from no_such_table") + b"\x00\x00") + msg(b"S", b""))
print(repr(until_ready()))
s.sendall(msg(b"P", cstr("s2") + cstr("delete from t_params where i = 9") + b"\x00\x00")
          + msg(b"B", cstr("p") + cstr("s2") + b"\x00\x00" * 3)
          + msg(b"E", cstr("p") + struct.pack("!I", 0)) + msg(b"S", b""))
print(repr(until_ready()))
"#,
    );
    deny_row_9(agent, "stale name");
    assert_eq!(rows(), "1,9");
    // A denied Parse the database skips (after an earlier error) leaves the
    // database's unnamed statement, the DELETE, in place: a Bind to it is
    // still held.
    let agent = raw_agent(
        r#"
s.sendall(msg(b"P", cstr("") + cstr("delete from t_params where i = 9") + b"\x00\x00")
          + msg(b"P", cstr("y") + cstr("select * from no_such_table") + b"\x00\x00")
          + msg(b"P", cstr("") + cstr("select pg_read_file('/etc/hostname')") + b"\x00\x00")
          + msg(b"S", b""))
print(repr(until_ready()))
print(repr(execute("")))
"#,
    );
    deny_row_9(agent, "skipped denial");
    assert_eq!(rows(), "1,9");
    // An error that comes back before the agent's Sync: what the agent sends
    // until then is skipped by the database, so a re-Parse of the DELETE's
    // name in that stretch must not rename it in Cordon's books.
    let agent = raw_agent(
        r#"
s.sendall(msg(b"P", cstr("a") + cstr("delete from t_params where i = 9") + b"\x00\x00") + msg(b"S", b""))
print(repr(until_ready()))
s.sendall(msg(b"P", cstr("") + cstr("SELEC 1") + b"\x00\x00") + msg(b"H", b""))
head = f.read(5); f.read(struct.unpack("!I", head[1:])[0] - 4)
print("error first:", head[:1])
s.sendall(msg(b"P", cstr("a") + cstr("select 1") + b"\x00\x00") + msg(b"S", b""))
print(repr(until_ready()))
print(repr(execute("a")))
"#,
    );
    deny_row_9(agent, "error before sync");
    assert_eq!(rows(), "1,9");
    // A portal survives a failed batch when ROLLBACK TO SAVEPOINT returns to
    // before it: a Close of it in that batch, skipped, must not make Cordon
    // forget what it runs.
    let agent = raw_agent(
        r#"
def query(q):
    s.sendall(msg(b"Q", cstr(q)))
    return until_ready()
print(repr(query("begin")))
s.sendall(msg(b"P", cstr("a2") + cstr("delete from t_params where i = 9") + b"\x00\x00")
          + msg(b"B", cstr("p2") + cstr("a2") + b"\x00\x00" * 3) + msg(b"S", b""))
print(repr(until_ready()))
print(repr(query("savepoint s")))
s.sendall(msg(b"P", cstr("") + cstr("SELEC") + b"\x00\x00") + msg(b"C", b"P" + cstr("p2")) + msg(b"S", b""))
print(repr(until_ready()))
print(repr(query("rollback to savepoint s")))
s.sendall(msg(b"E", cstr("p2") + struct.pack("!I", 0)) + msg(b"S", b""))
print(repr(until_ready()))
print(repr(query("commit")))
"#,
    );
    deny_row_9(agent, "savepoint portal");
    assert_eq!(rows(), "1,9");
    // libpq's COPY FROM STDIN over the extended protocol sends a Sync before
    // the copy data, which the database ignores in copy-in mode, and another
    // after it. Cordon must not wait for two answers: counted off by one, a
    // later 42P05 would undo the wrong Parse and lose the DELETE's name.
    let agent = raw_agent(
        r#"
s.sendall(msg(b"P", cstr("") + cstr("copy t_params from stdin") + b"\x00\x00")
          + msg(b"B", cstr("") + cstr("") + b"\x00\x00" * 3)
          + msg(b"E", cstr("") + struct.pack("!I", 0)) + msg(b"S", b""))
while True:
    head = f.read(5); f.read(struct.unpack("!I", head[1:])[0] - 4)
    if head[:1] == b"G": break
s.sendall(msg(b"d", b"5\n") + msg(b"c", b"") + msg(b"S", b""))
print(repr(until_ready()))
s.sendall(msg(b"P", cstr("a3") + cstr("delete from t_params where i = 9") + b"\x00\x00") + msg(b"S", b""))
print(repr(until_ready()))
s.sendall(msg(b"P", cstr("a3") + cstr("select 1") + b"\x00\x00") + msg(b"S", b""))
print(repr(until_ready()))
print(repr(execute("a3")))
"#,
    );
    deny_row_9(agent, "after copy");
    assert_eq!(rows(), "1,5,9");
}

#[test]
fn held_statement_denied_or_timed_out_returns_the_error() {
    require_root!();
    require_oidc_provider!();
    let w = dba_world();
    let bob = w.bob.as_str();

    let agent = Background::spawn(&mut w.agent(None, "create table t_denied(i int)"), "agent");
    let hold = w.wait_hold(Who::Human(bob), "t_denied");
    let id = hold["id"].as_str().expect("id").to_owned();
    let t = w.refused(Who::Human(bob), &["deny", &id, "--reason", ""]);
    assert!(t.contains("reason"), "{t}");
    let decided = w.json(
        Who::Human(bob),
        &["deny", &id, "--reason", "not during business hours"],
    );
    assert_eq!(decided["outcome"], "denied");
    let out = agent.finish(LIMIT);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("not during business hours"), "{t}");
    assert!(!w.table_exists("t_denied"));

    let started = Instant::now();
    let out = w.agent_output(None, "create table t_timeout(i int)");
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("within 4 s"), "{t}");
    assert!(started.elapsed() >= Duration::from_secs(4), "{t}");
    assert!(!w.table_exists("t_timeout"));

    let events = w.audit();
    assert!(has_event(&events, "command_denied", &w.name_of(bob), &id));
    assert!(
        events
            .iter()
            .any(|e| e["what"] == "command_timed_out" && e["who"] == "cordon"),
        "{}",
        pretty(&Value::Array(events.clone()))
    );
}

#[test]
fn a_held_statement_cannot_be_approved_by_whom_it_runs_for() {
    require_root!();
    require_oidc_provider!();
    let w = dba_world();
    let (alice, bob, carol) = (w.alice.as_str(), w.bob.as_str(), w.carol.as_str());
    // Alice launches the agent with her login; she reviews `shop` too.
    let agent = Background::spawn(
        &mut w.agent(Some(alice), "create table t_self(i int)"),
        "agent",
    );
    let hold = w.wait_hold(Who::Human(alice), "t_self");
    let id = hold["id"].as_str().expect("id").to_owned();
    assert_eq!(hold["on_behalf_of"], w.name_of(alice));
    let t = w.refused(Who::Human(alice), &["approve", &id]);
    assert!(t.contains("on their behalf"), "{t}");
    // Carol approves in general, but not `shop` (its reviewers are `dba`),
    // and does not even see the hold.
    let list = w.json(Who::Human(carol), &["approvals", "list"]);
    assert_eq!(list["holds"], json!([]), "{}", pretty(&list));
    let t = w.refused(Who::Human(carol), &["approve", &id]);
    assert!(t.contains("approver groups"), "{t}");
    let decided = w.json(Who::Human(bob), &["approve", &id]);
    assert_eq!(decided["outcome"], "approved");
    let out = agent.finish(LIMIT);
    assert!(out.status.success(), "{}", text(&out));
    let events = w.audit();
    assert!(has_event(&events, "refused", &w.name_of(alice), &id));
}

#[test]
fn the_notify_url_gets_the_pending_hold_as_json() {
    require_root!();
    require_oidc_provider!();
    // A webhook receiver on loopback: keeps every request it is sent.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
            let mut got = Vec::new();
            let mut buf = [0u8; 8192];
            // Read the head, then the body its Content-Length announces.
            loop {
                match std::io::Read::read(&mut stream, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(buf.get(..n).unwrap_or_default()),
                }
                let text = String::from_utf8_lossy(&got).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse::<usize>().ok())
                                .flatten()
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
            let _ = tx.send(String::from_utf8_lossy(&got).into_owned());
        }
    });
    let w = world(
        "pg-dba",
        "",
        &format!("timeout_secs = 20\nnotify_url = \"http://127.0.0.1:{port}/hook\""),
        true,
    );
    let bob = w.bob.as_str();
    let agent = Background::spawn(&mut w.agent(None, "create table t_hooked(i int)"), "agent");
    let hold = w.wait_hold(Who::Human(bob), "t_hooked");
    let id = hold["id"].as_str().expect("id").to_owned();
    let request = rx
        .recv_timeout(Duration::from_secs(15))
        .unwrap_or_else(|_| panic!("the webhook got nothing\n{}", w.d.context()));
    assert!(request.starts_with("POST /hook "), "{request}");
    let body = request.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let json: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert!(json.to_string().contains(&id), "{json}");
    assert!(json.to_string().contains("t_hooked"), "{json}");
    let _ = w.json(Who::Human(bob), &["deny", &id, "--reason", "hook test"]);
    let _ = agent.finish(LIMIT);
}

#[test]
fn a_just_in_time_grant_keeps_the_pins_of_the_agents_static_grant() {
    require_root!();
    require_oidc_provider!();
    // The agent's own grant (expired now) only ever reached database
    // `postgres`: approving more time must not open the shop database.
    let w = world_with(
        "pg-readonly",
        "max_ttl = \"1h\"",
        "timeout_secs = 5",
        "\n[[grant]]\nagent = \"bot\"\nresource = \"shop\"\nexpires = \"2000-01-01T00:00:00Z\"\ndatabase = \"postgres\"\n",
    );
    let (alice, bob) = (w.alice.as_str(), w.bob.as_str());
    let ask = |extra: &[&'static str]| request("5m", "report", extra);
    let t = w.refused(Who::Human(alice), &ask(&["--login", "root"]));
    assert!(t.contains("--login only applies to ssh resources"), "{t}");

    // Without pins the request inherits the static grant's; reviewers see them.
    let g = w.json(Who::Human(alice), &ask(&[]));
    assert_eq!(g["pins"]["database"], "postgres", "{}", pretty(&g));
    let id = g["id"].as_str().expect("id").to_owned();
    let listed = w.cordon(Who::Human(bob), &["approvals", "list"]);
    assert!(
        text(&listed).contains("database=postgres"),
        "{}",
        text(&listed)
    );
    let decided = w.json(Who::Human(bob), &["approve", &id]);
    assert_eq!(decided["grant"]["state"], "active", "{}", pretty(&decided));
    let out = w.agent_output(None, "select count(*) from customers");
    let t = text(&out);
    assert!(!out.status.success(), "the shop database stays closed: {t}");
    assert!(
        t.contains(&format!(
            "just-in-time grant {id} allows role any / database postgres"
        )),
        "the agent is told why: {t}\n{}",
        w.d.context()
    );

    // Named pins are what the reviewers approve.
    let g = w.json(Who::Human(alice), &ask(&["--database", SHOP_DB]));
    assert_eq!(g["pins"]["database"], SHOP_DB, "{}", pretty(&g));
    let id = g["id"].as_str().expect("id").to_owned();
    w.json(Who::Human(bob), &["approve", &id]);
    let out = w.agent_output(None, "select count(*) from customers");
    assert!(out.status.success(), "{}\n{}", text(&out), w.d.context());
    assert_eq!(text(&out).trim(), "20");
    assert_eq!(w.last_session()["grant"], id.as_str());
}
