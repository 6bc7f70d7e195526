//! The PostgreSQL gateway end to end: a real PostgreSQL, the real daemon and
//! kernel capture, unmodified clients (psql, pgbench, a tokio-postgres
//! program) run inside an agent cgroup as an unprivileged user with no
//! password. What is asserted is what the agent and the operator see.

use std::{
    io::Write as _,
    process::{Command, Output, Stdio},
    time::Duration,
};

use cordon_tests::{
    pg::{self, PgOptions, PgServer, ROLE_MD5, ROLE_PLAIN, ROLE_SCRAM, SHOP_DB},
    require_root, run_with_limit, Background, Daemon, Setup, FAR_FUTURE,
};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);

fn policies_dir() -> String {
    format!("{}/../policies", env!("CARGO_MANIFEST_DIR"))
}

/// A postgres resource `shop` at `addr` with `policy`, logging in as
/// `upstream_user` (or as whoever the agent names), and a grant for `bot`.
fn pg_setup(addr: &str, policy: &str, upstream_user: Option<&str>, more: &str) -> Setup {
    let mut s = Setup::new()
        .agent("bot")
        .daemon_key(&format!("policy_dir = \"{}\"", policies_dir()));
    let user = upstream_user
        .map(|u| format!("upstream_user = \"{u}\"\n"))
        .unwrap_or_default();
    s.extra = format!(
        "\n[[resource]]\nname = \"shop\"\nprotocol = \"postgres\"\naddress = \"{addr}\"\ncredential = \"shop-db\"\npolicy = \"{policy}\"\n{user}{more}\n[[grant]]\nagent = \"bot\"\nresource = \"shop\"\nexpires = \"{FAR_FUTURE}\"\n"
    );
    s
}

/// Runs `argv` inside agent `bot` as nobody, with the libpq environment
/// cleaned and `env` added.
fn agent_run(d: &Daemon, argv: Vec<String>, env: &[(&str, &str)]) -> Output {
    let mut cmd = d.cordon(&["run", "--agent", "bot", "--"]);
    cmd.args(pg::as_nobody(argv));
    pg::apply_client_env(&mut cmd, env);
    cmd.env("HOME", "/nonexistent");
    run_with_limit(&mut cmd, LIMIT)
}

fn agent_stdin(d: &Daemon, argv: Vec<String>, input: &str) -> Output {
    let mut cmd = d.cordon(&["run", "--agent", "bot", "--"]);
    cmd.args(pg::as_nobody(argv));
    pg::apply_client_env(&mut cmd, &[]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn agent");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    let (out, _timed_out) = cordon_tests::wait_output(child, LIMIT);
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn pgclient(d: &Daemon, pg: &PgServer, user: &str, args: &[&str]) -> Output {
    agent_run(d, pg::pgclient_argv(pg.addr(), user, SHOP_DB, args), &[])
}

/// The statements recorded for the newest postgres session.
fn last_pg_session(d: &Daemon) -> Value {
    let s = d.wait_session("a postgres session", |s| {
        s["protocol"] == "postgres" && s["verdict"] == "allow" && !s["ended_at"].is_null()
    });
    let id = s["id"].as_str().expect("id").to_owned();
    let out = d.cordon_output(&["sessions", "show", &id, "--json"]);
    serde_json::from_slice(&out.stdout).expect("sessions show --json")
}

#[test]
fn readonly_agent_reads_masked_data_and_is_denied_the_rest() {
    require_root!();
    let pg = PgServer::start(PgOptions::plain()).expect("postgres");
    let d = Daemon::start(pg_setup(
        &pg.addr().to_string(),
        "pg-readonly",
        Some(ROLE_SCRAM),
        "",
    ));
    let password = pg.password(ROLE_SCRAM);
    d.vault_set("shop-db", "password", &password);

    // psql, no password anywhere: the rows come back, emails masked.
    let out = agent_run(
        &d,
        pg::psql_argv(
            pg.addr(),
            "analyst",
            SHOP_DB,
            "select id, name, email from customers order by id limit 3",
        ),
        &[],
    );
    let t = text(&out);
    assert!(
        out.status.success(),
        "psql through cordon failed: {t}\n{}",
        d.context()
    );
    assert_eq!(t.lines().count(), 3, "{t}");
    assert!(!t.contains("@example.com"), "an email leaked: {t}");
    assert!(!t.contains(&password));
    let session = last_pg_session(&d);
    let stmts = session["statements"].as_array().expect("statements");
    let select = stmts
        .iter()
        .find(|s| s["text"].as_str().unwrap_or("").contains("from customers"))
        .expect("the select is recorded");
    assert_eq!(select["verdict"], "allow");
    assert_eq!(select["rows"], 3);
    assert!(
        select["masked"].to_string().contains("email"),
        "masked columns recorded: {select}"
    );

    // Denials: SQLSTATE 42501 naming policy and rule, for every evasion.
    for sql in [
        "delete from customers",
        "/* harmless */ DeLeTe FROM \"customers\"",
        "select 1; delete from customers",
        "with d as (delete from customers returning *) select * from d",
        "select upper(pg_read_file('/etc/passwd'))",
        "select * from (select pg_ls_dir('.')) s",
        "do $$ begin execute 'delete from customers'; end $$",
        "prepare p as delete from customers",
        "copy customers from program 'id'",
        "create table evil(x int)",
        "select lower(email) from customers",
        "select c from customers c",
        "this is not sql",
    ] {
        let out = pgclient(&d, &pg, "analyst", &["query", sql]);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(3), "{sql}: {t}");
        assert!(t.contains("ERROR 42501"), "{sql}: {t}");
        assert!(t.contains("cordon"), "{sql}: {t}");
    }
    // Nothing denied reached the database.
    let count = pg
        .psql_admin(SHOP_DB, "select count(*) from customers")
        .expect("count");
    assert_eq!(count.trim(), "20");
    assert!(!pg.server_log_contains("pg_read_file"));

    // The connection stays usable after a denial; inside a transaction the
    // block is failed, as PostgreSQL itself would have it.
    let out = agent_stdin(
        &d,
        vec![
            pg::pg_bin("psql").to_string_lossy().into_owned(),
            "-X".into(),
            "-A".into(),
            "-t".into(),
            "-h".into(),
            "127.0.0.1".into(),
            "-p".into(),
            pg.port().to_string(),
            "-U".into(),
            "analyst".into(),
            "-d".into(),
            SHOP_DB.into(),
        ],
        "select 'one';\ndelete from customers;\nselect 'two';\nbegin;\nselect 'three';\ndelete from orders;\nselect 'four';\nrollback;\nselect 'five';\n",
    );
    let t = text(&out);
    for want in [
        "one",
        "two",
        "three",
        "five",
        "current transaction is aborted",
    ] {
        assert!(t.contains(want), "missing {want}: {t}");
    }
    assert!(!t.lines().any(|l| l.trim() == "four"), "{t}");

    // COPY TO STDOUT is masked too; the extended protocol with binary
    // results (tokio-postgres) as well.
    let out = pgclient(&d, &pg, "analyst", &["copyout", "copy customers to stdout"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert_eq!(t.lines().count(), 20, "{t}");
    assert!(!t.contains("@example.com"), "{t}");
    // With another delimiter a field could land under another column's
    // rule: refused, with the reason.
    let out = pgclient(
        &d,
        &pg,
        "analyst",
        &[
            "copyout",
            "copy customers (note, email, name) to stdout (format csv, delimiter '|')",
        ],
    );
    let t = text(&out);
    assert!(
        !out.status.success() && t.contains("42501") && t.contains("DELIMITER"),
        "{t}"
    );
    assert!(!t.contains("@example.com"), "{t}");
    // A masked value turned into a name the server then fails to find would
    // come back in the error (`relation "alice_example_com" does not exist`).
    for sql in [
        "select 1 from customers where translate(email, '@.', '__')::regclass is null",
        "select 1 from customers where current_setting(translate(email, '@', '.')) is null",
    ] {
        let out = pgclient(&d, &pg, "analyst", &["query", sql]);
        let t = text(&out);
        assert!(!out.status.success() && t.contains("***"), "{sql}: {t}");
        assert!(
            !t.contains("example_com") && !t.contains("example.com"),
            "{sql}: a masked value came back in the error: {t}"
        );
    }
    let out = pgclient(
        &d,
        &pg,
        "analyst",
        &[
            "prepared",
            "select email, note from customers where id = $1",
            "1",
        ],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(!t.contains("@example.com"), "{t}");
    let out = pgclient(
        &d,
        &pg,
        "analyst",
        &["prepared", "delete from customers where id = $1", "1"],
    );
    assert!(text(&out).contains("ERROR 42501"), "{}", text(&out));

    // The audit trail has the denials; the operator can replay it.
    let session = last_pg_session(&d);
    let id = session["id"].as_str().expect("id");
    let replay = d.cordon_output(&["replay", id]);
    let r = String::from_utf8_lossy(&replay.stdout);
    assert!(replay.status.success(), "{r}");
    assert!(r.contains("DENY"), "{r}");

    // The credential never reached anything the agent or the log can read.
    let all = d.cordon_output(&["sessions", "list", "--json"]);
    assert!(!String::from_utf8_lossy(&all.stdout).contains(&password));
    assert!(!d.stderr().contains(&password));
}

#[test]
fn upstream_auth_methods_rotation_cancel_and_grant_pins() {
    require_root!();
    let pg = PgServer::start(PgOptions::plain()).expect("postgres");
    // No upstream_user: Cordon logs in as the role the agent names, with
    // the vaulted password; the grant pins role and database.
    let mut setup = pg_setup(&pg.addr().to_string(), "pg-app", None, "");
    setup.extra = setup.extra.replace(
        &format!("expires = \"{FAR_FUTURE}\"\n"),
        &format!("expires = \"{FAR_FUTURE}\"\ndatabase = \"{SHOP_DB}\"\n"),
    );
    let d = Daemon::start(setup);
    for role in [ROLE_MD5, ROLE_PLAIN, ROLE_SCRAM] {
        // Rotation: a new secret applies to the next session, no restart.
        d.vault_set("shop-db", "password", &pg.password(role));
        let out = pgclient(&d, &pg, role, &["query", "select current_user"]);
        let t = text(&out);
        assert!(out.status.success(), "{role}: {t}\n{}", d.context());
        assert_eq!(t.trim(), role);
    }
    // A wrong vaulted password: the agent gets a clear error, not the secret.
    d.vault_set("shop-db", "password", "not-the-password");
    let out = pgclient(&d, &pg, ROLE_SCRAM, &["query", "select 1"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("cordon could not open the upstream session"),
        "{t}"
    );
    d.vault_set("shop-db", "password", &pg.password(ROLE_SCRAM));

    // The grant pins the database.
    let out = agent_run(
        &d,
        pg::pgclient_argv(pg.addr(), ROLE_SCRAM, "postgres", &["query", "select 1"]),
        &[],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("28000") && t.contains("database"), "{t}");

    // pg-app: no UPDATE/DELETE without WHERE; with WHERE is fine.
    let out = pgclient(
        &d,
        &pg,
        ROLE_SCRAM,
        &["query", "update orders set status = 'x'"],
    );
    assert!(text(&out).contains("ERROR 42501"), "{}", text(&out));
    let out = pgclient(
        &d,
        &pg,
        ROLE_SCRAM,
        &["query", "update orders set status = 'paid' where id = 1"],
    );
    assert!(out.status.success(), "{}", text(&out));

    // Cancel: the agent's cancel key maps to the upstream's.
    let out = pgclient(&d, &pg, ROLE_SCRAM, &["cancel", "select pg_sleep(20)"]);
    let t = text(&out);
    assert!(t.contains("ERROR 57014"), "{t}\n{}", d.context());

    // pgbench (extended protocol), select-only, through the gateway.
    pg.init_pgbench(SHOP_DB, 1).expect("pgbench -i");
    let out = agent_run(
        &d,
        pg::pgbench_argv(
            pg.addr(),
            ROLE_SCRAM,
            SHOP_DB,
            &["-n", "-S", "-t", "50", "-c", "2", "-M", "extended"],
        ),
        &[],
    );
    let t = text(&out);
    assert!(out.status.success(), "pgbench: {t}\n{}", d.context());
    assert!(
        t.contains("number of transactions actually processed: 100/100"),
        "{t}"
    );
}

#[test]
fn tls_on_both_sides() {
    require_root!();
    let pg = PgServer::start(PgOptions::require_tls()).expect("postgres");
    let more = format!(
        "agent_tls = true\nupstream_tls = \"verify-full\"\nupstream_ca = \"{}\"\nupstream_server_name = \"localhost\"\n",
        pg.ca_pem_path().display()
    );
    let d = Daemon::start(pg_setup(
        &pg.addr().to_string(),
        "pg-readonly",
        Some(ROLE_SCRAM),
        &more,
    ));
    d.vault_set("shop-db", "password", &pg.password(ROLE_SCRAM));
    let ca = d.config().parent().expect("dir").join("state/ca.crt");
    // Agents may read the CA certificate.
    let _ = std::fs::set_permissions(
        ca.parent().expect("state"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    );
    let ca = ca.to_string_lossy().into_owned();
    for env in [
        vec![("PGSSLMODE", "require")],
        vec![("PGSSLMODE", "verify-full"), ("PGSSLROOTCERT", ca.as_str())],
        vec![("PGSSLMODE", "prefer")],
    ] {
        let out = agent_run(
            &d,
            pg::psql_argv(
                pg.addr(),
                "analyst",
                SHOP_DB,
                "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            ),
            &env,
        );
        let t = text(&out);
        assert!(out.status.success(), "{env:?}: {t}\n{}", d.context());
        // The upstream leg is TLS as well (the server rejects plaintext).
        assert_eq!(t.trim(), "t", "{env:?}: {t}");
    }
}

#[test]
fn malformed_and_oversized_messages_end_only_that_session() {
    require_root!();
    let pg = PgServer::start(PgOptions::plain()).expect("postgres");
    let d = Daemon::start(pg_setup(
        &pg.addr().to_string(),
        "pg-readonly",
        Some(ROLE_SCRAM),
        "",
    ));
    d.vault_set("shop-db", "password", &pg.password(ROLE_SCRAM));
    // A raw client: start-up, then a Query declaring 2 GiB, then garbage.
    let script = format!(
        r#"
import socket, struct, sys
def startup():
    s = socket.create_connection(("127.0.0.1", {port}), timeout=10)
    body = struct.pack("!I", 196608) + b"user\x00analyst\x00database\x00shop\x00\x00"
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    data = b""
    while not data.endswith(b"Z\x00\x00\x00\x05I"):
        chunk = s.recv(65536)
        if not chunk: break
        data += chunk
    return s
def answer(s):
    out = b""
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk: break
            out += chunk
    except Exception as e:
        out += str(e).encode()
    return out
s = startup(); s.sendall(b"Q" + struct.pack("!I", 0x7ffffff0)); print("big", answer(s))
s = startup(); s.sendall(b"Q" + struct.pack("!I", 2)); print("short", answer(s))
s = startup(); s.sendall(b"\xff" + struct.pack("!I", 4)); print("tag", answer(s))
s = startup(); s.sendall(b"Q" + struct.pack("!I", 9) + b"selec"); print("nonul", answer(s))
# Settings a start-up packet may carry obey the SET rules: with
# standard_conforming_strings off the server would read 'a\' , ' ; DELETE ...'
# as a string and a DELETE, where the policy reads two strings.
def startup_with(params):
    s = socket.create_connection(("127.0.0.1", {port}), timeout=10)
    body = struct.pack("!I", 196608) + b"user\x00analyst\x00database\x00shop\x00" + params + b"\x00"
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    return answer(s)
print("scs", startup_with(b"standard_conforming_strings\x00off\x00"))
print("path", startup_with(b"search_path\x00hr, public\x00"))
print("enc", startup_with(b"client_encoding\x00SJIS\x00"))
def m(tag, body): return tag + struct.pack("!I", len(body) + 4) + body
def c(t): return t.encode() + b"\x00"
def until_ready(s):
    data = b""
    while b"Z\x00\x00\x00\x05" not in data:
        chunk = s.recv(65536)
        if not chunk: break
        data += chunk
    return data
# Portal a is described, then portal b runs (suspended after one row),
# then a runs without a new Describe: its rows must be masked by a's
# columns, not passed on under b's.
s = startup()
s.sendall(m(b"P", c("s1") + c("select id, email from customers order by id limit 2") + b"\x00\x00")
    + m(b"B", c("a") + c("s1") + b"\x00\x00" * 3)
    + m(b"D", b"P" + c("a"))
    + m(b"P", c("s2") + c("select generate_series(1, 2)") + b"\x00\x00")
    + m(b"B", c("b") + c("s2") + b"\x00\x00" * 3)
    + m(b"E", c("b") + struct.pack("!I", 1))
    + m(b"E", c("a") + struct.pack("!I", 0))
    + m(b"S", b""))
print("suspended", until_ready(s))
# A simple Query inside an extended batch (no Sync) would be skipped by the
# server after an error, yet counted by Cordon: refused.
s = startup()
s.sendall(m(b"P", c("") + c("select 1") + b"\x00\x00") + m(b"Q", c("select 2")))
print("unsynced", answer(s))
"#,
        port = pg.port()
    );
    let out = agent_run(
        &d,
        vec!["/usr/bin/python3".into(), "-c".into(), script],
        &[],
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for case in ["big", "short", "tag", "nonul"] {
        let line = t.lines().find(|l| l.starts_with(case)).unwrap_or("");
        assert!(
            line.contains("08P01") && line.contains("protocol violation"),
            "{case}: {line}\n{t}"
        );
    }
    for (case, param) in [
        ("scs", "standard_conforming_strings"),
        ("path", "search_path"),
        ("enc", "client_encoding"),
    ] {
        let line = t.lines().find(|l| l.starts_with(case)).unwrap_or("");
        assert!(
            line.contains(&format!("`{param}` may not be set")),
            "{case}: {line}\n{t}"
        );
    }
    let line = t.lines().find(|l| l.starts_with("suspended")).unwrap_or("");
    assert!(
        line.contains("SELECT 2") && !line.contains("@example.com"),
        "rows of a portal run after another must be masked by its own columns: {line}\n{t}"
    );
    let line = t.lines().find(|l| l.starts_with("unsynced")).unwrap_or("");
    assert!(
        line.contains("08P01") && line.contains("without a Sync"),
        "{line}\n{t}"
    );
    // The daemon is fine and serves the next agent.
    let out = pgclient(&d, &pg, "analyst", &["query", "select 42"]);
    assert_eq!(text(&out).trim(), "42", "{}", text(&out));
    // The start-up phase refuses options that could change settings.
    let out = agent_run(
        &d,
        pg::psql_argv(pg.addr(), "analyst", SHOP_DB, "select 1"),
        &[("PGOPTIONS", "-c default_transaction_read_only=off")],
    );
    let t = text(&out);
    assert!(!out.status.success() && t.contains("options"), "{t}");
    let _ = Command::new("true").status();
}

#[test]
fn policy_check_validates_shipped_policies_and_names_the_line_of_a_mistake() {
    let dir = policies_dir();
    let shipped: Vec<String> = ["pg-readonly", "pg-app", "pg-dba"]
        .iter()
        .map(|p| format!("{dir}/{p}.toml"))
        .collect();
    let out = Command::new(cordon_tests::cordon_bin())
        .args(["policy", "check"])
        .args(&shipped)
        .output()
        .expect("cordon policy check");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert_eq!(t.lines().filter(|l| l.starts_with("ok ")).count(), 3, "{t}");

    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[policy]\nname = \"bad\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"r\"\naction = \"allow\"\nkinds = [\"selec\"]\n",
    )
    .expect("write");
    let out = Command::new(cordon_tests::cordon_bin())
        .args(["policy", "check"])
        .arg(&bad)
        .output()
        .expect("cordon policy check");
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(t.contains("bad.toml") && t.contains("line 8"), "{t}");
}

#[test]
fn the_agent_never_receives_the_credential() {
    require_root!();
    let pg = PgServer::start(PgOptions::plain()).expect("postgres");
    let d = Daemon::start(pg_setup(
        &pg.addr().to_string(),
        "pg-readonly",
        Some(ROLE_SCRAM),
        "",
    ));
    let password = pg.password(ROLE_SCRAM);
    d.vault_set("shop-db", "password", &password);
    // Every byte the agent receives over a whole session, dumped raw.
    let script = format!(
        r#"
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", {port}), timeout=10)
body = struct.pack("!I", 196608) + b"user\x00analyst\x00database\x00shop\x00\x00"
s.sendall(struct.pack("!I", len(body) + 4) + body)
q = b"select current_user, session_user, setting from pg_settings where name = 'port'\x00"
s.sendall(b"Q" + struct.pack("!I", len(q) + 4) + q)
s.sendall(b"X\x00\x00\x00\x04")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk: break
    data += chunk
sys.stdout.write(data.hex())
"#,
        port = pg.port()
    );
    let out = agent_run(
        &d,
        vec!["/usr/bin/python3".into(), "-c".into(), script],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
    let received = hex_decode(String::from_utf8_lossy(&out.stdout).trim());
    assert!(
        received
            .windows(ROLE_SCRAM.len())
            .any(|w| w == ROLE_SCRAM.as_bytes()),
        "the query ran (current_user is in the answer)"
    );
    assert!(
        !received
            .windows(password.len())
            .any(|w| w == password.as_bytes()),
        "the password reached the agent"
    );
    // Nothing on disk the agent can read holds it: the state dir is private.
    let state = d.config().parent().expect("dir").join("state");
    let out = agent_run(
        &d,
        vec![
            "cat".into(),
            state.join("vault.key").to_string_lossy().into_owned(),
        ],
        &[],
    );
    assert!(!out.status.success(), "the agent read the vault key");
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| s.get(2 * i..2 * i + 2))
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect()
}

/// A database and a daemon whose `pg-readonly` grant ends `secs` from now.
fn readonly_grant_expiring_in(secs: i64) -> (PgServer, Daemon) {
    let pg = PgServer::start(PgOptions::plain()).expect("postgres");
    let mut setup = pg_setup(&pg.addr().to_string(), "pg-readonly", Some(ROLE_SCRAM), "");
    setup.extra = setup
        .extra
        .replace(FAR_FUTURE, &cordon_tests::rfc3339_from_now(secs));
    let d = Daemon::start(setup);
    d.vault_set("shop-db", "password", &pg.password(ROLE_SCRAM));
    (pg, d)
}

#[test]
fn a_live_session_ends_when_its_grant_expires() {
    require_root!();
    let (pg, d) = readonly_grant_expiring_in(6);
    let started = std::time::Instant::now();
    let out = pgclient(&d, &pg, "analyst", &["query", "select pg_sleep(30)"]);
    let t = text(&out);
    assert!(
        t.contains("57P01") && t.contains("grant"),
        "{t}\n{}",
        d.context()
    );
    assert!(started.elapsed() < Duration::from_secs(25), "{t}");
}

/// An agent that stops reading blocks Cordon's writes to it: the grant's
/// end must still close the session (and the database transaction behind
/// it) instead of waiting on the agent.
#[test]
fn a_grant_ends_a_session_whose_agent_stopped_reading() {
    require_root!();
    let (pg, d) = readonly_grant_expiring_in(6);
    // About 200 MB of rows, none of them read.
    let script = format!(
        r#"
import socket, struct, time
s = socket.create_connection(("127.0.0.1", {port}), timeout=60)
body = struct.pack("!I", 196608) + b"user\x00analyst\x00database\x00shop\x00\x00"
s.sendall(struct.pack("!I", len(body) + 4) + body)
data = b""
while not data.endswith(b"Z\x00\x00\x00\x05I"):
    data += s.recv(65536)
q = b"select repeat('x', 100000) from generate_series(1, 2000)\x00"
s.sendall(b"Q" + struct.pack("!I", len(q) + 4) + q)
print("sent", flush=True)
time.sleep(40)
"#,
        port = pg.port()
    );
    let mut cmd = d.cordon(&["run", "--agent", "bot", "--"]);
    cmd.args(pg::as_nobody(vec![
        "/usr/bin/python3".into(),
        "-c".into(),
        script,
    ]));
    let agent = Background::spawn(&mut cmd, "agent that stops reading");
    let started = std::time::Instant::now();
    let session = d.wait_session("cut short by the grant's end", |s| {
        s["protocol"] == "postgres"
            && !s["ended_at"].is_null()
            && s["end_reason"].as_str().unwrap_or("").contains("grant")
    });
    assert!(started.elapsed() < Duration::from_secs(10), "{session}");
    drop(agent);
}
