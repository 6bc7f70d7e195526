//! PostgreSQL for the integration tests: the upstream end of the data flow.
//! [`PgServer`] starts a real `postgres` on loopback (a private data directory,
//! a free port, optional TLS from a throwaway CA) with one role per password
//! method and a seeded `shop` database; the free functions build the
//! agent-side command lines (`psql`, `pgbench`, `cordon-pgclient`) that tests
//! run directly or behind `cordon run --agent NAME --`.
//!
//! Everything runs as the `postgres` system user when the tests run as root
//! (postgres and initdb refuse root). Nothing puts a password in argv:
//! clients get theirs from `PGPASSWORD`/a 0600 passfile, admin SQL goes to
//! psql on stdin over a trust-authenticated unix socket in a directory only
//! the `postgres` user (and root) can enter.
//!
//! Dropping a [`PgServer`] shuts the postmaster down by pid (SIGINT = fast
//! shutdown, then SIGQUIT, then SIGKILL of its process group) and removes its
//! directory.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::fs::{self, OpenOptions};
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use tempfile::TempDir;

// ---------------------------------------------------------------------------
// names

/// The superuser `initdb` creates (password auth over TCP, trust over the
/// private unix socket).
pub const SUPERUSER: &str = "postgres";
/// Role whose `pg_hba.conf` line says `scram-sha-256`.
pub const ROLE_SCRAM: &str = "cordon_scram";
/// Role whose `pg_hba.conf` line says `md5`; its password is stored as an MD5
/// hash (with a SCRAM verifier the server would silently upgrade to SCRAM).
pub const ROLE_MD5: &str = "cordon_md5";
/// Role whose `pg_hba.conf` line says `password` (cleartext on the wire).
pub const ROLE_PLAIN: &str = "cordon_plain";
/// The three login roles, in the order above.
pub const ROLES: [&str; 3] = [ROLE_SCRAM, ROLE_MD5, ROLE_PLAIN];
/// The seeded database (owned by [`SUPERUSER`]).
pub const SHOP_DB: &str = "shop";

/// Environment every client helper sets. Callers building their own command
/// (e.g. `cordon run ... -- psql`) apply it with [`apply_client_env`].
///
/// `HOME=/nonexistent`: libpq looks for `~/.postgresql/postgresql.crt` when
/// it negotiates TLS and fails on anything but ENOENT, so a client running as
/// nobody with root's HOME (EACCES) could not connect; it also keeps root's
/// `~/.pgpass` and service files out of the tests.
pub const CLIENT_ENV: &[(&str, &str)] = &[("PGCONNECT_TIMEOUT", "10"), ("HOME", "/nonexistent")];

/// libpq variables a client could inherit from the test process and that
/// would change what it does; [`apply_client_env`] removes them.
const LIBPQ_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGREQUIRESSL",
    "PGCHANNELBINDING",
    "PGOPTIONS",
    "PGAPPNAME",
    "PGTARGETSESSIONATTRS",
];

/// How long the server may take to accept connections.
const READY_LIMIT: Duration = Duration::from_secs(30);
/// How long one admin psql/pgbench run may take.
const ADMIN_LIMIT: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------
// seed data

/// One seeded row of `shop.public.customers`; its `id` is its index in
/// [`CUSTOMERS`] plus one. Cards are Luhn-valid public test numbers in mixed
/// formats; SSNs are SSN-shaped fakes; some notes embed PII in free text.
#[derive(Clone, Copy, Debug)]
pub struct SeedCustomer {
    pub name: &'static str,
    pub email: &'static str,
    pub card: Option<&'static str>,
    pub ssn: Option<&'static str>,
    pub note: Option<&'static str>,
}

const fn customer(
    name: &'static str,
    email: &'static str,
    card: Option<&'static str>,
    ssn: Option<&'static str>,
    note: Option<&'static str>,
) -> SeedCustomer {
    SeedCustomer {
        name,
        email,
        card,
        ssn,
        note,
    }
}

/// The rows of `customers`, in id order (id = index + 1).
pub const CUSTOMERS: &[SeedCustomer] = &[
    customer(
        "Alice Johnson",
        "alice@example.com",
        Some("4111 1111 1111 1111"),
        Some("123-45-6789"),
        Some("VIP; prefers email"),
    ),
    customer(
        "Bob Smith",
        "bob@example.com",
        Some("5555-5555-5555-4444"),
        Some("234-56-7890"),
        None,
    ),
    customer(
        "Carol Diaz",
        "carol.diaz@example.org",
        Some("378282246310005"),
        Some("345-67-8901"),
        Some("Call before delivery"),
    ),
    customer(
        "Dave Okafor",
        "dave@example.net",
        Some("6011 1111 1111 1117"),
        Some("456-78-9012"),
        Some("Backup contact: dave.alt@example.net"),
    ),
    customer(
        "Erin Walsh",
        "erin@example.com",
        Some("4012888888881881"),
        Some("567-89-0123"),
        None,
    ),
    customer(
        "Frank Müller",
        "frank.mueller@example.de",
        Some("5105 1051 0510 5100"),
        Some("678-90-1234"),
        Some("Paid with card 4242 4242 4242 4242 last time"),
    ),
    customer(
        "Grace Lee",
        "grace@example.com",
        Some("4242424242424242"),
        Some("789-01-2345"),
        None,
    ),
    customer(
        "Heidi Novak",
        "heidi@example.com",
        Some("3530 1113 3330 0000"),
        Some("321-54-9876"),
        Some("SSN on file: 321-54-9876"),
    ),
    customer(
        "Ivan Petrov",
        "ivan@example.ru",
        Some("6011000990139424"),
        Some("432-65-1987"),
        None,
    ),
    customer(
        "Judy Chen",
        "judy.chen@example.com",
        Some("3714 496353 98431"),
        Some("543-76-2198"),
        Some("Gift wrap every order"),
    ),
    customer(
        "Liam O'Brien",
        "liam.obrien@example.ie",
        Some("4000056655665556"),
        Some("654-87-3219"),
        Some("Name has an apostrophe"),
    ),
    customer(
        "Mallory Stone",
        "mallory@example.com",
        Some("5200 8282 8282 8210"),
        Some("765-98-4321"),
        Some("Flagged: chargeback 2024-03"),
    ),
    customer(
        "Niaj Haddad",
        "niaj@example.com",
        Some("4000-0025-0000-3155"),
        Some("876-09-5432"),
        None,
    ),
    customer(
        "Olivia Brown",
        "olivia@example.com",
        Some("2223003122003222"),
        Some("087-12-6543"),
        Some("Email olivia.work@example.com for invoices"),
    ),
    customer(
        "Peggy Moreau",
        "peggy@example.fr",
        Some("6200000000000005"),
        Some("198-23-7654"),
        None,
    ),
    customer(
        "Rupert Singh",
        "rupert@example.in",
        Some("3056 9300 0902 0004"),
        Some("209-34-8765"),
        Some("Prefers phone"),
    ),
    customer(
        "Sybil Fawlty",
        "sybil@example.co.uk",
        Some("36227206271667"),
        Some("310-45-9876"),
        None,
    ),
    customer(
        "Trent Ito",
        "trent@example.jp",
        Some("3566 0020 2036 0505"),
        Some("421-56-0987"),
        Some("Card 3566002020360505 expires soon"),
    ),
    customer(
        "Zoë Ångström",
        "zoe@example.se",
        Some("5454545454545454"),
        Some("532-67-1098"),
        Some("Unicode name"),
    ),
    customer("Walter White", "walter@example.com", None, None, None),
];

/// One seeded row of `shop.public.orders`; its `id` is its index in
/// [`ORDERS`] plus one.
#[derive(Clone, Copy, Debug)]
pub struct SeedOrder {
    pub customer_id: i32,
    /// `numeric`, as the server prints it.
    pub amount: &'static str,
    pub status: &'static str,
    /// `timestamptz` as the server prints it with `TimeZone = UTC`.
    pub created_at: &'static str,
}

const fn order(
    customer_id: i32,
    amount: &'static str,
    status: &'static str,
    created_at: &'static str,
) -> SeedOrder {
    SeedOrder {
        customer_id,
        amount,
        status,
        created_at,
    }
}

/// The rows of `orders`, in id order (id = index + 1).
pub const ORDERS: &[SeedOrder] = &[
    order(1, "129.99", "delivered", "2024-01-03 09:15:00+00"),
    order(1, "42.50", "shipped", "2024-02-11 14:02:00+00"),
    order(2, "15.00", "pending", "2024-02-12 08:30:00+00"),
    order(3, "250.00", "delivered", "2024-01-20 17:45:00+00"),
    order(4, "9.99", "refunded", "2024-01-22 11:11:00+00"),
    order(5, "75.25", "delivered", "2024-03-01 10:00:00+00"),
    order(6, "1200.00", "shipped", "2024-03-02 16:20:00+00"),
    order(7, "33.33", "pending", "2024-03-03 12:00:00+00"),
    order(8, "64.10", "delivered", "2024-03-04 09:05:00+00"),
    order(9, "5.49", "cancelled", "2024-03-05 18:40:00+00"),
    order(10, "310.00", "delivered", "2024-03-06 13:13:00+00"),
    order(11, "88.80", "shipped", "2024-03-07 07:07:00+00"),
    order(12, "19.95", "refunded", "2024-03-08 15:30:00+00"),
    order(12, "450.00", "pending", "2024-03-09 20:00:00+00"),
    order(13, "72.00", "delivered", "2024-03-10 10:10:00+00"),
    order(14, "23.75", "shipped", "2024-03-11 11:45:00+00"),
    order(15, "999.99", "delivered", "2024-03-12 09:00:00+00"),
    order(16, "14.20", "pending", "2024-03-13 08:00:00+00"),
    order(17, "61.00", "delivered", "2024-03-14 17:00:00+00"),
    order(18, "130.40", "shipped", "2024-03-15 19:30:00+00"),
    order(19, "47.47", "delivered", "2024-03-16 06:45:00+00"),
    order(3, "12.00", "pending", "2024-03-17 12:30:00+00"),
    order(6, "0.99", "delivered", "2024-03-18 22:10:00+00"),
    order(20, "58.00", "pending", "2024-03-19 13:00:00+00"),
];

// ---------------------------------------------------------------------------
// options

/// How [`PgServer::start`] configures the server.
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Generate a CA and a server certificate (for `localhost`, 127.0.0.1
    /// and ::1) and set `ssl = on`.
    pub tls: bool,
    /// Only `hostssl` lines in pg_hba.conf, plus `hostnossl ... reject`.
    /// Implies `tls`.
    pub require_tls: bool,
    /// `log_statement = 'all'`, so [`PgServer::server_log_contains`] can tell
    /// which statements reached the server (default true; turn it off for
    /// benchmarks). The harness's own role setup is never logged.
    pub log_statements: bool,
    /// Appended verbatim to postgresql.conf (later settings win).
    pub extra_conf: String,
}

impl Default for PgOptions {
    fn default() -> PgOptions {
        PgOptions {
            tls: false,
            require_tls: false,
            log_statements: true,
            extra_conf: String::new(),
        }
    }
}

impl PgOptions {
    /// No TLS, statements logged.
    pub fn plain() -> PgOptions {
        PgOptions::default()
    }

    /// TLS offered (`ssl = on`), plaintext still accepted.
    pub fn tls() -> PgOptions {
        PgOptions {
            tls: true,
            ..PgOptions::default()
        }
    }

    /// TLS required: plaintext TCP connections are rejected by pg_hba.conf.
    pub fn require_tls() -> PgOptions {
        PgOptions {
            tls: true,
            require_tls: true,
            ..PgOptions::default()
        }
    }
}

// ---------------------------------------------------------------------------
// binaries

/// `/usr/lib/postgresql/<highest version with bin/initdb>/bin`.
pub fn pg_bin_dir() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let entries = fs::read_dir(root).with_context(|| {
        format!(
            "reading {}: is PostgreSQL installed? (`cargo xtask setup`)",
            root.display()
        )
    })?;
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in entries.flatten() {
        let bin = entry.path().join("bin");
        if !bin.join("initdb").is_file() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let version: Vec<u32> = name.split('.').map(|p| p.parse().unwrap_or(0)).collect();
        if best.as_ref().is_none_or(|(v, _)| version > *v) {
            best = Some((version, bin));
        }
    }
    best.map(|(_, bin)| bin)
        .ok_or_else(|| anyhow!("no {}/<version>/bin/initdb", root.display()))
}

/// A PostgreSQL program (`psql`, `pgbench`, `pg_isready`, ...) from
/// [`pg_bin_dir`]; panics when PostgreSQL is not installed.
pub fn pg_bin(name: &str) -> PathBuf {
    match pg_bin_dir() {
        Ok(dir) => dir.join(name),
        Err(e) => panic!("{e:#}"),
    }
}

/// The `cordon-pgclient` test binary (see `tests/src/bin/pgclient.rs`).
pub fn pgclient_bin() -> PathBuf {
    crate::existing_bin("cordon-pgclient")
}

// ---------------------------------------------------------------------------
// client command lines

/// `psql -X -A -t -v ON_ERROR_STOP=1 -h IP -p PORT -U USER -d DB -c SQL`
/// (the psql from [`pg_bin_dir`]). Output: one line per row, columns joined
/// by `|`, plus psql's command tags (`INSERT 0 1`) for non-queries.
pub fn psql_argv(addr: SocketAddr, user: &str, db: &str, sql: &str) -> Vec<String> {
    vec![
        pg_bin("psql").to_string_lossy().into_owned(),
        "-X".into(),
        "-A".into(),
        "-t".into(),
        "-v".into(),
        "ON_ERROR_STOP=1".into(),
        "-h".into(),
        addr.ip().to_string(),
        "-p".into(),
        addr.port().to_string(),
        "-U".into(),
        user.into(),
        "-d".into(),
        db.into(),
        "-c".into(),
        sql.into(),
    ]
}

/// `pgbench -h IP -p PORT -U USER ARGS... DB` (the pgbench from
/// [`pg_bin_dir`]).
pub fn pgbench_argv(addr: SocketAddr, user: &str, db: &str, args: &[&str]) -> Vec<String> {
    let mut argv = vec![
        pg_bin("pgbench").to_string_lossy().into_owned(),
        "-h".into(),
        addr.ip().to_string(),
        "-p".into(),
        addr.port().to_string(),
        "-U".into(),
        user.into(),
    ];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    argv.push(db.into());
    argv
}

/// `cordon-pgclient --host IP --port PORT --user USER --dbname DB ARGS...`;
/// `args` are further options and then the subcommand (`query SQL`, ...).
pub fn pgclient_argv(addr: SocketAddr, user: &str, db: &str, args: &[&str]) -> Vec<String> {
    let mut argv = vec![
        pgclient_bin().to_string_lossy().into_owned(),
        "--host".into(),
        addr.ip().to_string(),
        "--port".into(),
        addr.port().to_string(),
        "--user".into(),
        user.into(),
        "--dbname".into(),
        db.into(),
    ];
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    argv
}

/// `argv` prefixed with `setpriv --reuid 65534 --regid 65534 --clear-groups`
/// when this process is root (unchanged otherwise).
pub fn as_nobody(argv: Vec<String>) -> Vec<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return argv;
    }
    let mut out = vec!["setpriv".to_owned()];
    out.extend(crate::setpriv_nobody());
    out.extend(argv);
    out
}

/// Removes inherited libpq variables from `cmd`, then sets [`CLIENT_ENV`]
/// and `extra_env` (e.g. `PGPASSWORD`, `PGSSLMODE`, `PGSSLROOTCERT`).
pub fn apply_client_env<'c>(cmd: &'c mut Command, extra_env: &[(&str, &str)]) -> &'c mut Command {
    for var in LIBPQ_ENV {
        cmd.env_remove(var);
    }
    for (k, v) in CLIENT_ENV.iter().chain(extra_env) {
        cmd.env(k, v);
    }
    cmd
}

/// A command running `argv` as uid/gid 65534 (when root) with the client
/// environment (see [`apply_client_env`]).
pub fn client_command(argv: Vec<String>, extra_env: &[(&str, &str)]) -> Command {
    let argv = as_nobody(argv);
    let mut cmd = Command::new(argv.first().map_or("true", String::as_str));
    cmd.args(argv.iter().skip(1));
    apply_client_env(&mut cmd, extra_env);
    cmd
}

/// [`psql_argv`] as an unprivileged user (nobody, when root) with
/// `PGCONNECT_TIMEOUT=10` and `extra_env`. Passwords go in `extra_env`
/// (`PGPASSWORD`) or a passfile ([`write_passfile`] + `PGPASSFILE`), never
/// in argv.
pub fn psql(
    addr: SocketAddr,
    user: &str,
    db: &str,
    sql: &str,
    extra_env: &[(&str, &str)],
) -> Command {
    client_command(psql_argv(addr, user, db, sql), extra_env)
}

/// [`pgclient_argv`] as an unprivileged user, like [`psql`].
pub fn pgclient(
    addr: SocketAddr,
    user: &str,
    db: &str,
    args: &[&str],
    extra_env: &[(&str, &str)],
) -> Command {
    client_command(pgclient_argv(addr, user, db, args), extra_env)
}

/// Writes a libpq passfile (`host:port:*:user:password`, mode 0600) at
/// `path`, owned by `owner` (uid, gid) when given: libpq ignores a passfile
/// that others can read, and only its owner can read this one.
pub fn write_passfile(
    path: &Path,
    addr: SocketAddr,
    user: &str,
    password: &str,
    owner: Option<(u32, u32)>,
) -> Result<()> {
    let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
    let line = format!(
        "{}:{}:*:{}:{}\n",
        esc(&addr.ip().to_string()),
        addr.port(),
        esc(user),
        esc(password)
    );
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(line.as_bytes())?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// `'s'` with quotes doubled (standard_conforming_strings is on).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `"s"` with double quotes doubled.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

// ---------------------------------------------------------------------------
// the server

/// A running PostgreSQL server on 127.0.0.1 and [::1] (see the module docs).
/// Not `Debug`-printable with its passwords: its `Debug` shows port and
/// directory only.
pub struct PgServer {
    dir: TempDir,
    bin: PathBuf,
    /// `<dir>/pg`: mode 0700, owned by the postgres user.
    home: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    ca: Option<PathBuf>,
    port: u16,
    /// (uid, gid) of the postgres user when this process is root.
    owner: Option<(u32, u32)>,
    child: Option<Child>,
    passwords: BTreeMap<&'static str, String>,
}

impl fmt::Debug for PgServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgServer")
            .field("port", &self.port)
            .field("dir", &self.dir.path())
            .field("pid", &self.pid())
            .finish_non_exhaustive()
    }
}

impl PgServer {
    /// initdb, configure, start and seed a server (see [`PgOptions`]); waits
    /// up to 30 s for it to accept connections. On error whatever was started
    /// is stopped again and the error carries the server log's tail.
    pub fn start(opts: PgOptions) -> Result<PgServer> {
        let bin = pg_bin_dir()?;
        let owner = postgres_owner()?;
        let dir = tempfile::Builder::new()
            .prefix("cordon-pg-")
            .tempdir()
            .context("creating the server's tempdir")?;
        // Clients running as nobody read ca.crt from here.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let home = dir.path().join("pg");
        let socket_dir = home.join("sock");
        for d in [&home, &socket_dir] {
            fs::create_dir(d).with_context(|| format!("mkdir {}", d.display()))?;
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))?;
            chown(d, owner)?;
        }
        let mut passwords = BTreeMap::new();
        for role in [SUPERUSER, ROLE_SCRAM, ROLE_MD5, ROLE_PLAIN] {
            passwords.insert(role, random_password()?);
        }
        let mut server = PgServer {
            data: home.join("data"),
            log: dir.path().join("postgres.log"),
            ca: None,
            port: 0,
            owner,
            child: None,
            passwords,
            socket_dir,
            home,
            bin,
            dir,
        };
        server.initdb()?;
        if opts.tls || opts.require_tls {
            server.write_tls()?;
        }
        server.write_config(&opts)?;
        server.spawn_until_ready()?;
        server
            .create_roles_and_data()
            .with_context(|| format!("seeding the server\n{}", server.log_tail()))?;
        Ok(server)
    }

    /// The TCP port (on both 127.0.0.1 and [::1]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// 127.0.0.1:port.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port)
    }

    /// [::1]:port (when the host has IPv6 loopback).
    pub fn addr_v6(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), self.port)
    }

    /// The postmaster's pid (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The generated password of `role` ([`SUPERUSER`] or one of [`ROLES`]);
    /// panics for any other name.
    pub fn password(&self, role: &str) -> String {
        match self.passwords.get(role) {
            Some(p) => p.clone(),
            None => panic!(
                "no password for role {role:?}: the harness creates {SUPERUSER}, {}",
                ROLES.join(", ")
            ),
        }
    }

    /// The CA certificate (PEM) that signed the server certificate, readable
    /// by every user; panics when the server was started without TLS.
    pub fn ca_pem_path(&self) -> &Path {
        match &self.ca {
            Some(p) => p,
            None => panic!("this PgServer was started without tls: no CA"),
        }
    }

    /// The private directory of the unix socket the harness's admin
    /// connections use (trust auth; only root and postgres can enter it).
    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server log (postgres's stderr; every connection, disconnection
    /// and, with `log_statements`, every statement).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Runs `sql` (one or more statements, fed on stdin) as the superuser
    /// over the unix socket with `psql -X -A -t -q -v ON_ERROR_STOP=1`;
    /// returns stdout (rows only, columns joined by `|`).
    pub fn psql_admin(&self, db: &str, sql: &str) -> Result<String> {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", db, "-f", "-"]);
        apply_client_env(&mut cmd, &[]);
        let out = run_with_stdin(&mut cmd, sql.as_bytes(), ADMIN_LIMIT)?;
        if !out.status.success() {
            bail!(
                "psql as {SUPERUSER} on {db} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `pgbench -i -s SCALE DB` as the superuser over the unix socket
    /// (creating DB first when it does not exist), then grants every role in
    /// [`ROLES`] all privileges on the pgbench tables.
    pub fn init_pgbench(&self, db: &str, scale: u32) -> Result<()> {
        let exists = self.psql_admin(
            "postgres",
            &format!(
                "SELECT 1 FROM pg_database WHERE datname = {};",
                quote_literal(db)
            ),
        )?;
        if exists.trim().is_empty() {
            self.psql_admin(
                "postgres",
                &format!("CREATE DATABASE {} OWNER {SUPERUSER};", quote_ident(db)),
            )?;
        }
        let mut cmd = Command::new(self.bin.join("pgbench"));
        cmd.args(["-i", "-q", "-s"])
            .arg(scale.to_string())
            .arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER])
            .arg(db);
        apply_client_env(&mut cmd, &[]);
        let out = run_with_stdin(&mut cmd, b"", ADMIN_LIMIT)?;
        if !out.status.success() {
            bail!(
                "pgbench -i -s {scale} {db} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let roles = ROLES.join(", ");
        self.psql_admin(
            db,
            &format!(
                "GRANT ALL PRIVILEGES ON ALL TABLES IN SCHEMA public TO {roles};\n\
                 GRANT ALL PRIVILEGES ON ALL SEQUENCES IN SCHEMA public TO {roles};\n"
            ),
        )?;
        Ok(())
    }

    /// How many backends `role` has right now (from `pg_stat_activity`).
    pub fn backends(&self, role: &str) -> Result<u64> {
        let out = self.psql_admin(
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = {};",
                quote_literal(role)
            ),
        )?;
        out.trim()
            .parse()
            .with_context(|| format!("count of backends: {out:?}"))
    }

    /// The whole server log.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last 80 lines of the server log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log(), 80)
    }

    /// True when the server log contains `needle`.
    pub fn server_log_contains(&self, needle: &str) -> bool {
        self.log().contains(needle)
    }

    /// The log's current length: pass it to [`PgServer::log_since`] to see
    /// only what was logged afterwards.
    pub fn log_mark(&self) -> u64 {
        fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    /// What was logged after `mark` (see [`PgServer::log_mark`]).
    pub fn log_since(&self, mark: u64) -> String {
        let bytes = fs::read(&self.log).unwrap_or_default();
        let start = usize::try_from(mark).unwrap_or(usize::MAX).min(bytes.len());
        String::from_utf8_lossy(bytes.get(start..).unwrap_or_default()).into_owned()
    }

    /// Polls (every 50 ms, up to `limit`) until the log contains `needle`;
    /// for events logged after the client has gone (disconnections).
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.server_log_contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server and removes its directory (what dropping it does).
    pub fn stop(self) {}

    // --- start-up ---------------------------------------------------------

    /// Runs `cmd` as the postgres user (when root), with a minimal
    /// environment, in the server's home directory.
    fn as_owner(&self, cmd: &mut Command) {
        if let Some((uid, gid)) = self.owner {
            // std also clears supplementary groups when root sets a uid.
            cmd.uid(uid).gid(gid);
        }
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LC_ALL", "C")
            .env("LANG", "C")
            .current_dir(&self.home);
    }

    fn initdb(&self) -> Result<()> {
        let pwfile = self.home.join("pwfile");
        fs::write(&pwfile, format!("{}\n", self.password(SUPERUSER)))?;
        fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600))?;
        chown(&pwfile, self.owner)?;
        let mut cmd = Command::new(self.bin.join("initdb"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-U", SUPERUSER])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ]);
        self.as_owner(&mut cmd);
        let out = run_with_stdin(&mut cmd, b"", Duration::from_secs(120));
        let _ = fs::remove_file(&pwfile);
        let out = out?;
        if !out.status.success() {
            bail!(
                "initdb failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// A throwaway CA (`<dir>/ca.crt`, world-readable) and a server
    /// certificate for localhost, 127.0.0.1 and ::1 signed by it
    /// (`server.crt`, and `server.key` mode 0600 owned by postgres).
    fn write_tls(&mut self) -> Result<()> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose, SanType,
        };
        let ca_key = KeyPair::generate().context("CA key")?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "cordon-tests PostgreSQL CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).context("CA certificate")?;
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().context("server key")?;
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &issuer)
            .context("server certificate")?;

        let ca_path = self.dir.path().join("ca.crt");
        fs::write(&ca_path, ca_cert.pem())?;
        fs::set_permissions(&ca_path, fs::Permissions::from_mode(0o644))?;
        let crt = self.home.join("server.crt");
        fs::write(&crt, cert.pem())?;
        fs::set_permissions(&crt, fs::Permissions::from_mode(0o644))?;
        chown(&crt, self.owner)?;
        let key_path = self.home.join("server.key");
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&key_path)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(key.serialize_pem().as_bytes())?;
        chown(&key_path, self.owner)?;
        self.ca = Some(ca_path);
        Ok(())
    }

    fn write_config(&self, opts: &PgOptions) -> Result<()> {
        let q = |p: &Path| quote_literal(&p.to_string_lossy());
        let mut conf = String::from("\n# --- cordon-tests (tests/src/pg.rs)\n");
        let _ = writeln!(conf, "listen_addresses = '127.0.0.1,::1'");
        let _ = writeln!(conf, "unix_socket_directories = {}", q(&self.socket_dir));
        let _ = writeln!(conf, "unix_socket_permissions = 0700");
        let _ = writeln!(conf, "max_connections = 200");
        let _ = writeln!(conf, "shared_buffers = 16MB");
        let _ = writeln!(conf, "huge_pages = off");
        let _ = writeln!(conf, "fsync = off");
        let _ = writeln!(conf, "synchronous_commit = off");
        let _ = writeln!(conf, "full_page_writes = off");
        let _ = writeln!(conf, "password_encryption = 'scram-sha-256'");
        let _ = writeln!(conf, "timezone = 'UTC'");
        let _ = writeln!(conf, "log_timezone = 'UTC'");
        let _ = writeln!(conf, "datestyle = 'iso, mdy'");
        let _ = writeln!(conf, "lc_messages = 'C'");
        let _ = writeln!(conf, "logging_collector = off");
        let _ = writeln!(conf, "log_destination = 'stderr'");
        let _ = writeln!(conf, "log_line_prefix = '%m [%p] %q%u@%d/%a '");
        let _ = writeln!(conf, "log_connections = on");
        let _ = writeln!(conf, "log_disconnections = on");
        let statements = if opts.log_statements { "all" } else { "none" };
        let _ = writeln!(conf, "log_statement = '{statements}'");
        if self.ca.is_some() {
            let _ = writeln!(conf, "ssl = on");
            let _ = writeln!(conf, "ssl_cert_file = {}", q(&self.home.join("server.crt")));
            let _ = writeln!(conf, "ssl_key_file = {}", q(&self.home.join("server.key")));
        }
        conf.push_str(&opts.extra_conf);
        conf.push('\n');
        let path = self.data.join("postgresql.conf");
        let mut f = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        f.write_all(conf.as_bytes())?;

        let ty = if opts.require_tls { "hostssl" } else { "host" };
        let mut hba = String::from(
            "# pg_hba.conf written by cordon-tests (tests/src/pg.rs); first match wins\n\
             # TYPE      DATABASE  USER          ADDRESS        METHOD\n\
             local       all       all                          trust\n",
        );
        let nets = ["127.0.0.1/32", "::1/128"];
        if opts.require_tls {
            for net in nets {
                let _ = writeln!(hba, "hostnossl   all       all           {net:<14} reject");
            }
        }
        for (user, method) in [
            (ROLE_SCRAM, "scram-sha-256"),
            (ROLE_MD5, "md5"),
            (ROLE_PLAIN, "password"),
            ("all", "scram-sha-256"),
        ] {
            for net in nets {
                let _ = writeln!(hba, "{ty:<11} all       {user:<13} {net:<14} {method}");
            }
        }
        fs::write(self.data.join("pg_hba.conf"), hba)?;
        Ok(())
    }

    /// Starts the postmaster on a free port; when the port was taken in the
    /// meantime (another process won the race) tries another one.
    fn spawn_until_ready(&mut self) -> Result<()> {
        const ATTEMPTS: usize = 5;
        for attempt in 1..=ATTEMPTS {
            self.port = crate::free_port();
            let mark = self.log_mark();
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .with_context(|| format!("opening {}", self.log.display()))?;
            let mut cmd = Command::new(self.bin.join("postgres"));
            cmd.arg("-D")
                .arg(&self.data)
                .arg("-p")
                .arg(self.port.to_string())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                // Its own process group, so a last-resort SIGKILL reaches the
                // backends too.
                .process_group(0);
            self.as_owner(&mut cmd);
            let child = cmd
                .spawn()
                .with_context(|| format!("starting {}", self.bin.join("postgres").display()))?;
            self.child = Some(child);
            match self.wait_ready() {
                Ok(()) => return Ok(()),
                Err(Startup::Exited(status)) => {
                    self.child = None;
                    let said = self.log_since(mark);
                    if attempt < ATTEMPTS && said.contains("Address already in use") {
                        continue;
                    }
                    bail!(
                        "postgres exited during start-up ({status}) on port {}; log {}:\n{}",
                        self.port,
                        self.log.display(),
                        self.log_tail()
                    );
                }
                Err(Startup::TimedOut) => {
                    bail!(
                        "postgres (pid {}) not accepting connections on port {} after \
                         {READY_LIMIT:?}; log {}:\n{}",
                        self.pid(),
                        self.port,
                        self.log.display(),
                        self.log_tail()
                    );
                }
            }
        }
        bail!("postgres found no free port in {ATTEMPTS} attempts")
    }

    fn wait_ready(&mut self) -> Result<(), Startup> {
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Startup::Exited(status));
                }
            }
            let ready = Command::new(self.bin.join("pg_isready"))
                .arg("-q")
                .arg("-h")
                .arg(&self.socket_dir)
                .arg("-p")
                .arg(self.port.to_string())
                .args(["-U", SUPERUSER, "-d", "postgres", "-t", "2"])
                .env_clear()
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Startup::TimedOut);
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The three login roles (passwords never logged: `log_statement` is off
    /// for this session), the `shop` database, its tables, rows and grants.
    fn create_roles_and_data(&self) -> Result<()> {
        let mut sql = String::from(
            "SET log_statement = 'none';\nSET password_encryption = 'scram-sha-256';\n",
        );
        for role in [ROLE_SCRAM, ROLE_PLAIN] {
            let _ = writeln!(
                sql,
                "CREATE ROLE {role} LOGIN PASSWORD {};",
                quote_literal(&self.password(role))
            );
        }
        let _ = writeln!(
            sql,
            "SET password_encryption = 'md5';\nCREATE ROLE {ROLE_MD5} LOGIN PASSWORD {};\n\
             RESET password_encryption;",
            quote_literal(&self.password(ROLE_MD5))
        );
        let _ = writeln!(sql, "CREATE DATABASE {SHOP_DB} OWNER {SUPERUSER};");
        self.psql_admin("postgres", &sql)?;
        self.psql_admin(SHOP_DB, &shop_sql())?;
        Ok(())
    }

    fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = child.id();
        // SIGINT is postgres's "fast" shutdown: it disconnects clients. (Its
        // SIGTERM is "smart" and waits for every client to leave.)
        for (signal, name, limit) in [
            (libc::SIGINT, "SIGINT", Duration::from_secs(15)),
            (libc::SIGQUIT, "SIGQUIT", Duration::from_secs(5)),
        ] {
            crate::kill_pid(pid, signal);
            if wait_exit(&mut child, limit) {
                return;
            }
            eprintln!("warning: postgres pid {pid} still running {limit:?} after {name}");
        }
        kill_group(pid);
        let _ = child.wait();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

enum Startup {
    Exited(ExitStatus),
    TimedOut,
}

/// Schema, seed rows and grants of the `shop` database.
fn shop_sql() -> String {
    let opt = |v: Option<&str>| v.map_or_else(|| "NULL".to_owned(), quote_literal);
    let mut sql = String::from(
        "CREATE TABLE customers (id serial PRIMARY KEY, name text, email text UNIQUE, \
         card text, ssn text, note text);\n\
         CREATE TABLE orders (id serial PRIMARY KEY, customer_id int REFERENCES customers, \
         amount numeric, status text, created_at timestamptz DEFAULT now());\n\
         INSERT INTO customers (name, email, card, ssn, note) VALUES\n",
    );
    let rows: Vec<String> = CUSTOMERS
        .iter()
        .map(|c| {
            format!(
                "  ({}, {}, {}, {}, {})",
                quote_literal(c.name),
                quote_literal(c.email),
                opt(c.card),
                opt(c.ssn),
                opt(c.note)
            )
        })
        .collect();
    sql.push_str(&rows.join(",\n"));
    sql.push_str(";\nINSERT INTO orders (customer_id, amount, status, created_at) VALUES\n");
    let rows: Vec<String> = ORDERS
        .iter()
        .map(|o| {
            format!(
                "  ({}, {}, {}, {})",
                o.customer_id,
                o.amount,
                quote_literal(o.status),
                quote_literal(o.created_at)
            )
        })
        .collect();
    sql.push_str(&rows.join(",\n"));
    let roles = ROLES.join(", ");
    let _ = write!(
        sql,
        ";\nGRANT USAGE, CREATE ON SCHEMA public TO {roles};\n\
         GRANT ALL PRIVILEGES ON ALL TABLES IN SCHEMA public TO {roles};\n\
         GRANT ALL PRIVILEGES ON ALL SEQUENCES IN SCHEMA public TO {roles};\n"
    );
    sql
}

// ---------------------------------------------------------------------------
// small helpers

/// (uid, gid) of the `postgres` system user when this process is root; None
/// otherwise (then the server runs as the current user).
fn postgres_owner() -> Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .stdin(Stdio::null())
            .output()
            .context("running `id`")?;
        if !out.status.success() {
            bail!(
                "no `postgres` system user (`id {flag} postgres`: {}); is PostgreSQL installed?",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .context("parsing `id` output")
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

/// 24 random bytes from /dev/urandom as 48 hex digits (safe inside SQL
/// literals and passfiles without escaping).
fn random_password() -> Result<String> {
    let mut bytes = [0u8; 24];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    }))
}

/// Runs `cmd` with `input` on stdin (written from a thread, so a chatty
/// command cannot deadlock against us), at most `limit`.
fn run_with_stdin(
    cmd: &mut Command,
    input: &[u8],
    limit: Duration,
) -> Result<std::process::Output> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let writer = child.stdin.take().map(|mut stdin| {
        let input = input.to_vec();
        thread::spawn(move || {
            let _ = stdin.write_all(&input);
        })
    });
    let (out, timed_out) = crate::wait_output(child, limit);
    if let Some(w) = writer {
        let _ = w.join();
    }
    if timed_out {
        bail!(
            "{:?} did not finish within {limit:?} and was killed; stderr: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Waits up to `limit` for `child` to exit; true when it did.
fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) if Instant::now() >= deadline => return false,
            Ok(None) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// SIGKILL to the process group `pgid` (the postmaster and its backends).
fn kill_group(pgid: u32) {
    if let Ok(pgid) = libc::pid_t::try_from(pgid) {
        if pgid > 0 {
            // SAFETY: kill() takes plain integers; a negative pid names a
            // process group, and an error only means it is already gone.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Luhn check over the digits of `s` (spaces and dashes ignored).
pub fn luhn_valid(s: &str) -> bool {
    let digits: Vec<u32> = s
        .chars()
        .filter(|c| !matches!(c, ' ' | '-'))
        .map(|c| c.to_digit(10))
        .collect::<Option<_>>()
        .unwrap_or_default();
    if digits.len() < 12 {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let dd = d * 2;
                if dd > 9 {
                    dd - 9
                } else {
                    dd
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_cards_are_luhn_valid() {
        for c in CUSTOMERS {
            if let Some(card) = c.card {
                assert!(luhn_valid(card), "{}: {card} fails the Luhn check", c.name);
            }
        }
        assert!(!luhn_valid("4111 1111 1111 1112"));
    }

    #[test]
    fn seeded_ssns_and_emails_have_their_shape() {
        for c in CUSTOMERS {
            if let Some(ssn) = c.ssn {
                let parts: Vec<&str> = ssn.split('-').collect();
                let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
                assert_eq!(lens, [3, 2, 4], "{}: {ssn}", c.name);
                assert!(parts.iter().all(|p| p.bytes().all(|b| b.is_ascii_digit())));
            }
            assert!(c.email.contains("@example."));
        }
        let emails: std::collections::BTreeSet<&str> = CUSTOMERS.iter().map(|c| c.email).collect();
        assert_eq!(emails.len(), CUSTOMERS.len(), "emails are unique");
        for o in ORDERS {
            let id = usize::try_from(o.customer_id).unwrap_or(0);
            assert!((1..=CUSTOMERS.len()).contains(&id));
        }
    }

    #[test]
    fn passwords_are_random_hex() {
        let a = random_password().unwrap();
        let b = random_password().unwrap();
        assert_eq!(a.len(), 48);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_literal("O'Brien"), "'O''Brien'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }
}
