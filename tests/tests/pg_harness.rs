//! The PostgreSQL side of the harness itself (`cordon_tests::pg`): the server
//! starts, every password method and TLS work as configured, the clients the
//! gateway tests use (psql, pgbench, cordon-pgclient) talk to it, and dropping
//! it stops it.
//!
//! Run as root (CI does); without root they skip, except in CI where they fail.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cordon_tests::pg::{
    client_command, pgbench_argv, pgclient, psql, PgOptions, PgServer, CUSTOMERS, ORDERS, ROLES,
    ROLE_MD5, ROLE_PLAIN, ROLE_SCRAM, SHOP_DB, SUPERUSER,
};
use cordon_tests::{require_root, run_with_limit, Checks, PROBE_TIME_LIMIT};

/// stdout, stderr and exit code of `cmd`.
fn run(cmd: &mut Command) -> (String, String, i32) {
    let out: Output = run_with_limit(cmd, PROBE_TIME_LIMIT);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

fn start(opts: PgOptions) -> PgServer {
    PgServer::start(opts).unwrap_or_else(|e| panic!("PgServer::start: {e:#}"))
}

#[test]
fn tls_server_serves_every_password_method_and_client() {
    require_root!();
    let pg = start(PgOptions::tls());
    let addr = pg.addr();
    let ca = pg.ca_pem_path().to_string_lossy().into_owned();
    let mut c = Checks::new();

    // Each role logs in over TCP with its own method, as nobody.
    for role in ROLES {
        let pw = pg.password(role);
        let (out, err, code) = run(&mut psql(
            addr,
            role,
            SHOP_DB,
            "SELECT current_user, count(*) FROM customers",
            &[("PGPASSWORD", &pw), ("PGSSLMODE", "disable")],
        ));
        c.eq(
            &format!("psql as {role}: stdout (stderr {err:?}, exit {code})"),
            out.trim().to_owned(),
            format!("{role}|{}", CUSTOMERS.len()),
        );
        let (_, err, code) = run(&mut psql(
            addr,
            role,
            SHOP_DB,
            "SELECT 1",
            &[("PGPASSWORD", "wrong"), ("PGSSLMODE", "disable")],
        ));
        c.check(
            code != 0 && err.contains("password authentication failed"),
            format!("{role} with a wrong password: exit {code}, stderr {err:?}"),
        );
    }
    for (role, method) in [
        (ROLE_SCRAM, "scram-sha-256"),
        (ROLE_MD5, "md5"),
        (ROLE_PLAIN, "password"),
    ] {
        let needle = format!("identity=\"{role}\" method={method}");
        c.check(
            pg.server_log_contains(&needle),
            format!("server log lacks `{needle}`"),
        );
    }
    let stored = pg
        .psql_admin(
            "postgres",
            "SELECT rolname, left(rolpassword, 3) FROM pg_authid \
             WHERE rolname LIKE 'cordon_%' ORDER BY rolname",
        )
        .expect("read pg_authid");
    c.eq(
        "stored password kinds",
        stored.trim(),
        "cordon_md5|md5\ncordon_plain|SCR\ncordon_scram|SCR",
    );

    // TLS: on, and the certificate verifies for 127.0.0.1 and ::1.
    let (out, err, _) = run(&mut psql(
        addr,
        SUPERUSER,
        SHOP_DB,
        "SHOW ssl",
        &[("PGPASSWORD", &pg.password(SUPERUSER))],
    ));
    c.eq(&format!("SHOW ssl ({err})"), out.trim(), "on");
    for a in [addr, pg.addr_v6()] {
        let (out, err, _) = run(&mut psql(
            a,
            ROLE_SCRAM,
            SHOP_DB,
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[
                ("PGPASSWORD", &pg.password(ROLE_SCRAM)),
                ("PGSSLMODE", "verify-full"),
                ("PGSSLROOTCERT", &ca),
            ],
        ));
        c.eq(&format!("verify-full to {a} ({err})"), out.trim(), "t");
    }

    // cordon-pgclient: simple query, prepared (binary), errors, cancel, COPY, TLS.
    let env = [("PG_PW", pg.password(ROLE_SCRAM))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let client = |args: &[&str]| {
        let mut all = vec!["--password-env", "PG_PW"];
        all.extend_from_slice(args);
        run(&mut pgclient(addr, ROLE_SCRAM, SHOP_DB, &all, &env))
    };
    let (out, err, code) = client(&[
        "query",
        "SELECT id, name, email, card, note FROM customers ORDER BY id LIMIT 2",
    ]);
    let want: String = CUSTOMERS
        .iter()
        .take(2)
        .enumerate()
        .map(|(i, r)| {
            format!(
                "{}\t{}\t{}\t{}\t{}\n",
                i + 1,
                r.name,
                r.email,
                r.card.unwrap_or("\\N"),
                r.note.unwrap_or("\\N")
            )
        })
        .collect();
    c.eq(&format!("pgclient query (exit {code}, {err})"), out, want);

    let sql = "SELECT o.id, o.amount, o.created_at, o.status, c.note, o.customer_id = c.id, \
               c.id::int8, 1.5::float8 FROM orders o JOIN customers c ON c.id = o.customer_id \
               ORDER BY o.id";
    let (text, err1, _) = client(&["query", sql]);
    let (binary, err2, code) = client(&["--binary", "prepared", sql]);
    c.eq(
        &format!("prepared (binary) vs query (text) (exit {code}, {err1} {err2})"),
        &binary,
        &text,
    );
    let first = ORDERS.first().expect("seeded orders");
    c.check(
        text.starts_with(&format!(
            "1\t{}\t{}\t{}\t",
            first.amount, first.created_at, first.status
        )),
        format!("first order as text: {text:?}"),
    );
    let (out, err, code) = client(&[
        "prepared",
        "SELECT email, $2::text FROM customers WHERE id = $1",
        "3",
        "\\N",
    ]);
    c.eq(
        &format!("prepared with params (exit {code}, {err})"),
        out,
        "carol.diaz@example.org\t\\N\n".to_owned(),
    );
    let (out, _, code) = client(&["query", "SELECT * FROM no_such_table"]);
    c.check(
        code == 3 && out.starts_with("ERROR 42P01 "),
        format!("server error: exit {code}, {out:?}"),
    );
    let wrong = [("PG_PW", "wrong")];
    let (out, _, code) = run(&mut pgclient(
        addr,
        ROLE_MD5,
        SHOP_DB,
        &["--password-env", "PG_PW", "query", "SELECT 1"],
        &wrong,
    ));
    c.check(
        code == 2 && out.starts_with("CONNECT 28P01 "),
        format!("wrong md5 password: exit {code}, {out:?}"),
    );
    let started = Instant::now();
    let (out, err, code) = client(&["cancel", "SELECT pg_sleep(20)"]);
    c.check(
        code == 3 && out.starts_with("ERROR 57014 ") && started.elapsed() < Duration::from_secs(10),
        format!(
            "cancel: exit {code} after {:?}, {out:?}, {err:?}",
            started.elapsed()
        ),
    );
    let (out, err, code) = client(&[
        "copyout",
        "COPY (SELECT id, email FROM customers ORDER BY id LIMIT 2) TO STDOUT",
    ]);
    c.eq(
        &format!("copyout (exit {code}, {err})"),
        out,
        "1\talice@example.com\n2\tbob@example.com\n".to_owned(),
    );
    for extra in [
        vec!["--sslmode", "require"],
        vec!["--sslmode", "require", "--ca-file", ca.as_str()],
    ] {
        let mut args = extra.clone();
        args.extend([
            "query",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ]);
        let (out, err, code) = client(&args);
        c.eq(
            &format!("pgclient {extra:?} (exit {code}, {err})"),
            out,
            "t\n".to_owned(),
        );
    }
    let (out, err, code) = client(&["--sslmode", "disable", "query", "SHOW ssl"]);
    c.eq(
        &format!("pgclient without TLS (exit {code}, {err})"),
        out,
        "on\n".to_owned(),
    );

    // pgbench: initialized by the harness, usable by the roles.
    pg.init_pgbench("bench", 1).expect("pgbench -i");
    let (out, err, _) = run(&mut psql(
        addr,
        ROLE_PLAIN,
        "bench",
        "SELECT count(*) FROM pgbench_accounts",
        &[("PGPASSWORD", &pg.password(ROLE_PLAIN))],
    ));
    c.eq(&format!("pgbench_accounts ({err})"), out.trim(), "100000");
    let (out, err, code) = run(&mut client_command(
        pgbench_argv(addr, ROLE_SCRAM, "bench", &["-n", "-c", "2", "-t", "20"]),
        &[("PGPASSWORD", &pg.password(ROLE_SCRAM))],
    ));
    c.check(
        code == 0 && out.contains("number of transactions actually processed: 40/40"),
        format!("pgbench run: exit {code}\n{out}\n{err}"),
    );

    // The log shows statements, never passwords.
    c.check(
        pg.server_log_contains("statement: SELECT current_user, count(*) FROM customers"),
        "statements are not logged",
    );
    for role in ["postgres", ROLE_SCRAM, ROLE_MD5, ROLE_PLAIN] {
        c.check(
            !pg.server_log_contains(&pg.password(role)),
            format!("{role}'s password is in the server log"),
        );
    }
    let tail = pg.log_tail();
    c.finish(|| format!("\n--- server log tail:\n{tail}"));

    // Dropping stops the server and removes its files.
    let pid = pg.pid();
    let data = pg.data_dir().to_path_buf();
    drop(pg);
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "{addr} still accepts connections after the PgServer was dropped"
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "postmaster pid {pid} still exists after drop"
    );
    assert!(!data.exists(), "{} still exists after drop", data.display());
}

#[test]
fn require_tls_rejects_plaintext() {
    require_root!();
    let pg = start(PgOptions::require_tls());
    let addr: SocketAddr = pg.addr();
    let pw = pg.password(ROLE_SCRAM);
    let mut c = Checks::new();
    let (_, err, code) = run(&mut psql(
        addr,
        ROLE_SCRAM,
        SHOP_DB,
        "SELECT 1",
        &[("PGPASSWORD", &pw), ("PGSSLMODE", "disable")],
    ));
    c.check(
        code != 0 && err.contains("no encryption"),
        format!("plaintext psql: exit {code}, {err:?}"),
    );
    let (out, err, code) = run(&mut psql(
        addr,
        ROLE_SCRAM,
        SHOP_DB,
        "SELECT 1",
        &[("PGPASSWORD", &pw), ("PGSSLMODE", "require")],
    ));
    c.eq(&format!("TLS psql (exit {code}, {err})"), out.trim(), "1");
    let env = [("PG_PW", pw.as_str())];
    let (out, _, code) = run(&mut pgclient(
        addr,
        ROLE_SCRAM,
        SHOP_DB,
        &[
            "--password-env",
            "PG_PW",
            "--sslmode",
            "disable",
            "query",
            "SELECT 1",
        ],
        &env,
    ));
    c.check(
        code == 2 && out.starts_with("CONNECT 28000 "),
        format!("plaintext pgclient: exit {code}, {out:?}"),
    );
    let (out, err, code) = run(&mut pgclient(
        addr,
        ROLE_SCRAM,
        SHOP_DB,
        &["--password-env", "PG_PW", "query", "SELECT 1"],
        &env,
    ));
    c.eq(
        &format!("pgclient, prefer (exit {code}, {err})"),
        out,
        "1\n".to_owned(),
    );
    let tail = pg.log_tail();
    c.finish(|| format!("\n--- server log tail:\n{tail}"));
}

#[test]
fn plain_servers_run_side_by_side() {
    require_root!();
    let a = start(PgOptions {
        log_statements: false,
        ..PgOptions::plain()
    });
    let b = start(PgOptions::plain());
    assert_ne!(a.port(), b.port());
    assert_ne!(a.password(ROLE_SCRAM), b.password(ROLE_SCRAM));
    let mut c = Checks::new();
    for (pg, logged) in [(&a, false), (&b, true)] {
        let (out, err, _) = run(&mut psql(
            pg.addr(),
            ROLE_SCRAM,
            SHOP_DB,
            "SHOW ssl",
            &[("PGPASSWORD", &pg.password(ROLE_SCRAM))],
        ));
        c.eq(
            &format!("SHOW ssl on {} ({err})", pg.port()),
            out.trim(),
            "off",
        );
        c.eq(
            &format!("statement logged on {}", pg.port()),
            pg.server_log_contains("statement: SHOW ssl"),
            logged,
        );
    }
    c.check(
        a.wait_for_log("disconnection:", Duration::from_secs(5)),
        "no disconnection logged",
    );
    let mark = b.log_mark();
    b.psql_admin(SHOP_DB, "SELECT 'after the mark'")
        .expect("admin psql");
    c.check(
        b.log_since(mark).contains("after the mark") && !b.log_since(mark).contains("SHOW ssl"),
        "log_since(mark) shows only what came after the mark",
    );
    c.finish(|| format!("\n--- a:\n{}\n--- b:\n{}", a.log_tail(), b.log_tail()));
    b.stop();
    drop(a);
}
