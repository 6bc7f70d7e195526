//! `cargo xtask bench postgres`: pgbench against a throwaway PostgreSQL,
//! directly and through Cordon (postgres protocol on both sides, vaulted
//! credential, a policy deciding every statement, masking rules present,
//! every statement audited), through the same daemon as a plain byte relay
//! ("relay"), through the thinnest userspace relay there is ("floor": a
//! thread per connection, poll + read/write, no checks; what any proxy hop
//! costs on this machine) and through pgbouncer when it is installed; all
//! in one run, alternating, reported as ratios against direct.
//!
//! Matrix: {select-only, TPC-B-like} x {1, 8 clients} x {simple, extended
//! protocol}, [`ROUNDS`] alternating rounds of `CORDON_BENCH_SECS` (default
//! [`DEFAULT_SECS`]) seconds per path. TPS comes from pgbench's summary,
//! p50/p99 latency from its per-transaction log (`-l`).
//! Target: select-only at 8 clients >= [`TARGET_RATIO`] x direct TPS.

use std::{
    fmt::Write as _,
    fs,
    io::{Read as _, Write as _},
    net::TcpStream,
    os::unix::{
        fs::{OpenOptionsExt as _, PermissionsExt as _},
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::gateway::{build, free_port, rfc3339_in, Daemon};

const ROUNDS: usize = 3;
const DEFAULT_SECS: u64 = 5;
/// `pgbench -i -s SCALE`: 1M rows in pgbench_accounts, ~150 MB.
const SCALE: u32 = 10;
/// The database, the login role and the agent are all called this.
const NAME: &str = "bench";
/// The vault entry holding the role's password.
const CREDENTIAL: &str = "bench-db";
const POLICY: &str = "pg-bench";
const SUPERUSER: &str = "postgres";
const TARGET_RATIO: f64 = 0.90;
/// The same PostgreSQL, also listening here: a `protocol = "tcp"` resource
/// of the same daemon, so the "relay" path is Cordon with capture, grant
/// and audit but no protocol work (pgbench brings the password itself). It
/// measures what any proxy hop costs on this machine, before SQL.
const RELAY_HOST: &str = "127.0.0.2";

/// The policy under test: default deny, pgbench's statements allowed by
/// kind (writes only to its own tables), a column mask and a value detector
/// so the masking path (RowDescription resolution, detector scan of every
/// text value) is exercised even though no pgbench value matches.
const POLICY_TOML: &str = r#"[policy]
name = "pg-bench"
description = "cargo xtask bench postgres: what pgbench's built-in scripts send"
default = "deny"

[[rule]]
name = "read"
action = "allow"
kinds = ["select"]

[[rule]]
name = "pgbench-writes"
action = "allow"
kinds = ["insert", "update", "delete"]
tables = ["public.pgbench_*"]

[[rule]]
name = "session"
action = "allow"
kinds = ["transaction", "set", "show"]

[[mask]]
column = "*.email"
mode = "redact"

[[detect]]
detector = "card"
mode = "partial"
keep = 4
"#;

/// libpq variables the bench process may carry and that would change what
/// pgbench does; removed from every pgbench command.
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
    "PGREQUIRESSL",
    "PGCHANNELBINDING",
    "PGOPTIONS",
    "PGAPPNAME",
    "PGTARGETSESSIONATTRS",
];

pub fn run() -> Result<()> {
    anyhow::ensure!(
        crate::util::is_root(),
        "the benchmark loads eBPF programs: run it as root"
    );
    let secs = bench_secs()?;
    println!("== building cordon (release)");
    let bin = build(true, &["cordon", "cordon-tests"])?;

    let pg = Server::start().context("starting the throwaway PostgreSQL")?;
    println!(
        "== postgres on 127.0.0.1:{} ({}); pgbench -i -s {SCALE}",
        pg.port,
        pg.bin.display()
    );
    pg.init_pgbench()
        .context("initialising the pgbench tables")?;

    let policy_dir = pg.root.join("policies");
    fs::create_dir_all(&policy_dir)?;
    fs::write(policy_dir.join(format!("{POLICY}.toml")), POLICY_TOML)?;
    // `rest` follows the `[daemon]` table, so its leading key lands there.
    let config = format!(
        "policy_dir = \"{pd}\"\n\n\
         [[agent]]\nname = \"{NAME}\"\n\n\
         [[resource]]\nname = \"{NAME}\"\nprotocol = \"postgres\"\naddress = \"127.0.0.1:{port}\"\n\
         credential = \"{CREDENTIAL}\"\npolicy = \"{POLICY}\"\nupstream_user = \"{NAME}\"\n\n\
         [[grant]]\nagent = \"{NAME}\"\nresource = \"{NAME}\"\nexpires = \"{e}\"\n\n\
         [[resource]]\nname = \"{NAME}-tcp\"\nprotocol = \"tcp\"\naddress = \"{RELAY_HOST}:{port}\"\n\n\
         [[grant]]\nagent = \"{NAME}\"\nresource = \"{NAME}-tcp\"\nexpires = \"{e}\"\n",
        pd = policy_dir.display(),
        port = pg.port,
        e = rfc3339_in(3600),
    );
    let daemon = Daemon::start(&bin.join("cordon"), "pgbench", &config)?;
    store_credential(&daemon, &pg.password)?;

    let floor =
        crate::bench::Floor::start(&bin.join("cordon-bench-client"), "floor-threads", pg.port)?;
    println!("== floor relay on 127.0.0.1:{}", floor.port);
    let bouncer = match crate::util::which("pgbouncer", &[]) {
        Some(exe) => {
            let b = Bouncer::start(&exe, &pg).context("starting pgbouncer")?;
            println!("== pgbouncer (session pool) on 127.0.0.1:{}", b.port);
            Some(b)
        }
        None => {
            println!("pgbouncer not installed: skipped");
            None
        }
    };
    // CORDON_BENCH_PATHS (e.g. `cordon`) keeps only the named paths besides
    // direct, which every ratio needs (profiling one path).
    let wanted = std::env::var("CORDON_BENCH_PATHS").unwrap_or_default();
    let paths: Vec<Route> = [Route::Direct, Route::Cordon, Route::Relay, Route::Floor]
        .into_iter()
        .chain(bouncer.as_ref().map(|_| Route::Bouncer))
        .filter(|r| {
            *r == Route::Direct || wanted.is_empty() || wanted.split(',').any(|w| w == r.label())
        })
        .collect();

    let ctx = Ctx {
        pg: &pg,
        daemon: &daemon,
        bouncer: bouncer.as_ref(),
        floor_port: floor.port,
        secs,
    };
    let cells = Cell::matrix();
    let total = cells.len() * ROUNDS * paths.len();
    println!(
        "== {} cells x {ROUNDS} rounds x {} paths of {secs} s (~{} min)",
        cells.len(),
        paths.len(),
        (total as u64 * (secs + 2)).div_ceil(60)
    );
    let mut results = Vec::new();
    let mut cordon_connections = 0usize;
    for cell in cells {
        let mut samples: Vec<Samples> = paths.iter().map(|_| Samples::default()).collect();
        for round in 0..ROUNDS {
            // Rotate who goes first, so drift (table bloat, caches, heat)
            // does not always favour the same path.
            for k in 0..paths.len() {
                let i = (round + k) % paths.len();
                let (Some(&route), Some(s)) = (paths.get(i), samples.get_mut(i)) else {
                    continue;
                };
                let m = ctx.measure(cell, route, round)?;
                println!(
                    "{:<32} round {} {:<9} {:>9.1} tps  p50 {:>7.3} ms  p99 {:>7.3} ms  cpu {:>6.1} us/tx ({:.0}% busy)",
                    cell.label(),
                    round + 1,
                    route.label(),
                    m.tps,
                    m.p50_ms,
                    m.p99_ms,
                    m.cpu_us,
                    m.busy * 100.0
                );
                if matches!(route, Route::Cordon | Route::Relay) {
                    // pgbench opens one extra connection to read the scale.
                    cordon_connections += cell.clients + 1;
                }
                s.push(&m);
            }
        }
        results.push((cell, samples.into_iter().map(Samples::medians).collect()));
    }

    report(&results, &paths, secs);
    let status = daemon.cli().args(["status", "--json"]).output()?;
    let status: Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
    println!(
        "\ncordon status: sessions {} (pgbench opened {cordon_connections} connections through cordon)",
        status.get("sessions").unwrap_or(&Value::Null)
    );
    drop(bouncer);
    drop(floor);
    drop(daemon);
    drop(pg);
    Ok(())
}

fn bench_secs() -> Result<u64> {
    match std::env::var("CORDON_BENCH_SECS") {
        Ok(v) => {
            let secs: u64 = v
                .trim()
                .parse()
                .with_context(|| format!("CORDON_BENCH_SECS={v:?}: expected whole seconds"))?;
            anyhow::ensure!(secs > 0, "CORDON_BENCH_SECS must be at least 1");
            Ok(secs)
        }
        Err(_) => Ok(DEFAULT_SECS),
    }
}

/// `cordon vault set bench-db`, the password on stdin (never argv).
fn store_credential(daemon: &Daemon, password: &str) -> Result<()> {
    let mut cmd = daemon.cli();
    cmd.args(["vault", "set", CREDENTIAL]);
    let out = run_with_stdin(&mut cmd, format!("{password}\n").as_bytes())?;
    if !out.status.success() {
        bail!(
            "cordon vault set {CREDENTIAL} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// the matrix

#[derive(Clone, Copy, PartialEq)]
enum Workload {
    SelectOnly,
    TpcbLike,
}

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Simple,
    Extended,
}

#[derive(Clone, Copy)]
struct Cell {
    workload: Workload,
    clients: usize,
    protocol: Protocol,
}

impl Cell {
    /// The whole matrix, or the cells whose label contains
    /// `CORDON_BENCH_ONLY` (e.g. `select-only c=8`).
    fn matrix() -> Vec<Cell> {
        let only = std::env::var("CORDON_BENCH_ONLY").unwrap_or_default();
        let mut v = Vec::new();
        for workload in [Workload::SelectOnly, Workload::TpcbLike] {
            for clients in [1, 8] {
                for protocol in [Protocol::Simple, Protocol::Extended] {
                    let cell = Cell {
                        workload,
                        clients,
                        protocol,
                    };
                    if cell.label().contains(&only) {
                        v.push(cell);
                    }
                }
            }
        }
        v
    }

    fn workload(self) -> &'static str {
        match self.workload {
            Workload::SelectOnly => "select-only",
            Workload::TpcbLike => "tpcb-like",
        }
    }

    fn protocol(self) -> &'static str {
        match self.protocol {
            Protocol::Simple => "simple",
            Protocol::Extended => "extended",
        }
    }

    fn label(self) -> String {
        format!("{} c={} {}", self.workload(), self.clients, self.protocol())
    }

    fn is_target(self) -> bool {
        self.workload == Workload::SelectOnly && self.clients == 8
    }

    /// pgbench's options for this cell (everything but host, port, user, db).
    fn pgbench_args(self, secs: u64) -> Vec<String> {
        let mut a = vec![
            "-n".to_owned(),
            "-T".to_owned(),
            secs.to_string(),
            "-c".to_owned(),
            self.clients.to_string(),
            "-j".to_owned(),
            self.clients.min(2).to_string(),
            "-M".to_owned(),
            self.protocol().to_owned(),
        ];
        if self.workload == Workload::SelectOnly {
            a.push("-S".to_owned());
        }
        a
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Route {
    Direct,
    Cordon,
    /// Cordon's byte relay (see [`RELAY_HOST`]).
    Relay,
    /// The least any userspace proxy hop costs: a thread per connection,
    /// poll + read/write, nothing else (`cordon-bench-client floor-threads`).
    Floor,
    Bouncer,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Direct => "direct",
            Route::Cordon => "cordon",
            Route::Relay => "relay",
            Route::Floor => "floor",
            Route::Bouncer => "pgbouncer",
        }
    }
}

struct Measurement {
    tps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Machine CPU time (every process and the kernel, all CPUs) per
    /// transaction, in microseconds, over the pgbench run.
    cpu_us: f64,
    /// Share of the machine's CPUs busy during the run.
    busy: f64,
}

#[derive(Default)]
struct Samples {
    tps: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    cpu: Vec<f64>,
    busy: Vec<f64>,
}

impl Samples {
    fn push(&mut self, m: &Measurement) {
        self.tps.push(m.tps);
        self.p50.push(m.p50_ms);
        self.p99.push(m.p99_ms);
        self.cpu.push(m.cpu_us);
        self.busy.push(m.busy);
    }

    fn medians(self) -> Measurement {
        Measurement {
            tps: median(self.tps),
            p50_ms: median(self.p50),
            p99_ms: median(self.p99),
            cpu_us: median(self.cpu),
            busy: median(self.busy),
        }
    }
}

/// Busy CPU time of the whole machine since boot, in seconds summed over
/// CPUs, and the number of CPUs.
fn machine_busy() -> Result<(f64, usize)> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let (ticks, cpus) = busy_ticks(&stat).context("/proc/stat: no well-formed `cpu` line")?;
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    anyhow::ensure!(hz > 0, "sysconf(_SC_CLK_TCK) failed");
    Ok((ticks / hz as f64, cpus))
}

/// From /proc/stat: the busy ticks of the aggregate `cpu` line (user, nice,
/// system, irq, softirq and steal; not idle or iowait) and how many `cpuN`
/// lines there are.
fn busy_ticks(stat: &str) -> Option<(f64, usize)> {
    let mut lines = stat.lines();
    let total = lines.next().filter(|l| l.starts_with("cpu "))?;
    let f: Vec<f64> = total
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    if f.len() < 8 {
        return None;
    }
    let ticks = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum();
    let cpus = lines
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    Some((ticks, cpus.max(1)))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
        .unwrap_or(f64::NAN)
}

struct Ctx<'a> {
    pg: &'a Server,
    daemon: &'a Daemon,
    bouncer: Option<&'a Bouncer>,
    floor_port: u16,
    secs: u64,
}

impl Ctx<'_> {
    /// One pgbench run of `cell` over `route`: TPS and p50/p99 latency. On
    /// failure pgbench's output and the daemon's log are printed.
    fn measure(&self, cell: Cell, route: Route, round: usize) -> Result<Measurement> {
        let pgbench = self.pg.bin.join("pgbench");
        let (cmd, port) = match route {
            Route::Direct => (Command::new(&pgbench), self.pg.port),
            // No password: Cordon logs in upstream with the vaulted one.
            Route::Cordon | Route::Relay => (self.daemon.run_as(NAME, &pgbench), self.pg.port),
            Route::Bouncer => (Command::new(&pgbench), self.bouncer.map_or(0, |b| b.port)),
            Route::Floor => (Command::new(&pgbench), self.floor_port),
        };
        let run = Run {
            cell,
            route,
            round,
            secs: self.secs,
            port,
        };
        let result = run.execute(self.pg, cmd);
        if result.is_err() {
            self.print_logs(route);
        }
        result
    }

    /// After a failed run: the daemon log (and pgbouncer's, postgres's).
    fn print_logs(&self, route: Route) {
        let path = self.daemon.dir.join("daemon.log");
        eprintln!(
            "--- {} (last 60 lines)\n{}",
            path.display(),
            tail(&fs::read_to_string(&path).unwrap_or_default(), 60)
        );
        if route == Route::Bouncer {
            if let Some(b) = self.bouncer {
                eprintln!(
                    "--- {} (last 30 lines)\n{}",
                    b.log.display(),
                    tail(&fs::read_to_string(&b.log).unwrap_or_default(), 30)
                );
            }
        }
        eprintln!(
            "--- {} (last 30 lines)\n{}",
            self.pg.log.display(),
            tail(&fs::read_to_string(&self.pg.log).unwrap_or_default(), 30)
        );
    }
}

/// One pgbench run: `cmd` is pgbench itself (direct) or `cordon run ...
/// -- pgbench`; the options, environment and log directory are added here.
struct Run {
    cell: Cell,
    route: Route,
    round: usize,
    secs: u64,
    port: u16,
}

impl Run {
    fn execute(&self, pg: &Server, mut cmd: Command) -> Result<Measurement> {
        let Run {
            cell,
            route,
            round,
            secs,
            port,
        } = *self;
        if cell.workload == Workload::TpcbLike {
            // What pgbench itself does before a run without -n (the agent
            // may not VACUUM/TRUNCATE): every run starts from the same state.
            pg.psql_admin(
                NAME,
                "VACUUM pgbench_branches;\nVACUUM pgbench_tellers;\nTRUNCATE pgbench_history;\n",
            )?;
        }
        let logs = pg.root.join("logs").join(format!(
            "{}-{}-{}-{}-r{round}",
            cell.workload(),
            cell.clients,
            cell.protocol(),
            route.label(),
        ));
        let _ = fs::remove_dir_all(&logs);
        fs::create_dir_all(&logs)?;
        let host = if route == Route::Relay {
            RELAY_HOST
        } else {
            "127.0.0.1"
        };
        cmd.args(["-h", host, "-p"])
            .arg(port.to_string())
            .args(["-U", NAME])
            .args(cell.pgbench_args(secs))
            .arg("-l")
            .arg(format!(
                "--log-prefix={}",
                logs.join("pgbench_log").display()
            ))
            .arg(NAME)
            .current_dir(&logs);
        for v in LIBPQ_ENV {
            cmd.env_remove(v);
        }
        cmd.env("HOME", "/nonexistent")
            .env("PGCONNECT_TIMEOUT", "10")
            .env("PGSSLMODE", "disable");
        if route != Route::Cordon {
            cmd.env("PGPASSWORD", &pg.password);
        }
        let line = crate::util::describe(&cmd);
        let (busy_before, cpus) = machine_busy()?;
        let started = Instant::now();
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("starting `{line}`"))?;
        let wall = started.elapsed().as_secs_f64();
        let busy = machine_busy()?.0 - busy_before;
        if !out.status.success() {
            eprintln!(
                "pgbench over {} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
                route.label(),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim_end(),
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
            bail!("`{line}` failed ({})", out.status);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let tps = parse_tps(&stdout)
            .with_context(|| format!("no `tps = ` line in pgbench's output:\n{stdout}"))?;
        let mut lat = read_latencies(&logs)?;
        let _ = fs::remove_dir_all(&logs);
        anyhow::ensure!(
            !lat.is_empty(),
            "pgbench over {} logged no transactions in {}",
            route.label(),
            logs.display()
        );
        // One log line per transaction: the CPU the machine spent on the
        // whole run (connections included) per transaction.
        let cpu_us = busy * 1e6 / lat.len() as f64;
        let busy_share = busy / (wall * cpus as f64);
        lat.sort_by(f64::total_cmp);
        Ok(Measurement {
            tps,
            p50_ms: percentile(&lat, 0.50) / 1000.0,
            p99_ms: percentile(&lat, 0.99) / 1000.0,
            cpu_us,
            busy: busy_share,
        })
    }
}

/// `tps = 1234.5 (without initial connection time)` (PostgreSQL >= 14) or
/// `tps = 1234.5 (excluding connections establishing)` (older).
fn parse_tps(stdout: &str) -> Option<f64> {
    let values: Vec<(&str, f64)> = stdout
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("tps = ")?;
            let (num, note) = rest.split_once(' ').unwrap_or((rest, ""));
            Some((note, num.parse().ok()?))
        })
        .collect();
    values
        .iter()
        .find(|(note, _)| note.contains("without") || note.contains("excluding"))
        .or_else(|| values.first())
        .map(|&(_, v)| v)
}

/// Latencies (µs, the third column) of every `pgbench_log*` file in `dir`
/// (one per pgbench thread). Failed/skipped transactions are not numbers
/// there and are left out.
fn read_latencies(dir: &Path) -> Result<Vec<f64>> {
    let mut lat = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if !path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("pgbench_log"))
        {
            continue;
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        lat.extend(
            text.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<f64>().ok()),
        );
    }
    Ok(lat)
}

fn report(results: &[(Cell, Vec<Measurement>)], paths: &[Route], secs: u64) {
    println!(
        "\nsummary: medians of {ROUNDS} alternating rounds of {secs} s; pgbench -s {SCALE}; \
         cordon with policy `{POLICY}` (default deny, masking rules present, audit on);\n\
         relay = the same daemon relaying bytes to the same database (`protocol = \"tcp\"`: capture, grant, audit, no SQL work);\n\
         floor = the least any userspace proxy hop costs (a thread per connection, poll + read/write, no checks)\n"
    );
    let mut head = String::from(
        "| workload | clients | protocol | direct TPS | cordon TPS | cordon/direct | direct p50/p99 ms | added p50 ms | added p99 ms |",
    );
    let mut rule = String::from("|---|---:|---|---:|---:|---:|---:|---:|---:|");
    let others: Vec<Route> = [Route::Relay, Route::Floor, Route::Bouncer]
        .into_iter()
        .filter(|r| paths.contains(r))
        .collect();
    for r in &others {
        let _ = write!(head, " {0} TPS | {0}/direct |", r.label());
        rule.push_str("---:|---:|");
    }
    head.push_str(" target |");
    rule.push_str("---|");
    println!("{head}\n{rule}");
    let mut verdicts = Vec::new();
    let mut cpu_lines = Vec::new();
    for (cell, m) in results {
        let by = |r: Route| paths.iter().position(|&p| p == r).and_then(|i| m.get(i));
        let (Some(d), Some(g)) = (by(Route::Direct), by(Route::Cordon)) else {
            continue;
        };
        let ratio = g.tps / d.tps;
        let mut row = format!(
            "| {} | {} | {} | {:.0} | {:.0} | {:.3}x | {:.3} / {:.3} | {:+.3} | {:+.3} |",
            cell.workload(),
            cell.clients,
            cell.protocol(),
            d.tps,
            g.tps,
            ratio,
            d.p50_ms,
            d.p99_ms,
            g.p50_ms - d.p50_ms,
            g.p99_ms - d.p99_ms,
        );
        for r in &others {
            match by(*r) {
                Some(x) => {
                    let _ = write!(row, " {:.0} | {:.3}x |", x.tps, x.tps / d.tps);
                }
                None => row.push_str(" - | - |"),
            }
        }
        if cell.is_target() {
            let ok = ratio >= TARGET_RATIO;
            let _ = write!(
                row,
                " >= {TARGET_RATIO:.2}x: {} |",
                if ok { "met" } else { "MISSED" }
            );
            let floor = by(Route::Floor).map(|f| f.tps / d.tps);
            verdicts.push((cell.label(), ratio, ok, floor));
            cpu_lines.push(cpu_budget(cell, d, paths, m));
        } else {
            row.push_str(" |");
        }
        println!("{row}");
    }
    println!();
    for (label, ratio, ok, floor) in verdicts {
        let floor = floor.map_or(String::new(), |f| {
            format!("; the floor relay reached {f:.3}x in the same run")
        });
        println!(
            "target {label}: cordon {ratio:.3}x direct TPS (>= {TARGET_RATIO:.2}x): {}{floor}",
            if ok { "met" } else { "MISSED" }
        );
    }
    for line in cpu_lines {
        println!("{line}");
    }
}

/// What a hop may cost for the target to be reachable, against what each
/// path cost: while direct keeps every CPU busy, TPS through a hop is
/// direct TPS x direct / (direct + added) CPU per transaction, so the target
/// ratio leaves a hop `direct x (1/target - 1)` of machine CPU per
/// transaction.
fn cpu_budget(cell: &Cell, direct: &Measurement, paths: &[Route], m: &[Measurement]) -> String {
    let budget = direct.cpu_us * (1.0 / TARGET_RATIO - 1.0);
    let mut line = format!(
        "cpu per transaction, {}: direct {:.1} us with the machine {:.0}% busy, so {TARGET_RATIO:.2}x \
         leaves a hop {budget:.1} us; each path added:",
        cell.label(),
        direct.cpu_us,
        direct.busy * 100.0
    );
    for (route, x) in paths.iter().zip(m) {
        if *route != Route::Direct {
            let _ = write!(
                line,
                " {} {:+.1} us,",
                route.label(),
                x.cpu_us - direct.cpu_us
            );
        }
    }
    line.pop();
    if direct.busy < 0.95 {
        line.push_str(
            " (direct left CPUs idle, so its TPS was not bound by CPU and this budget is only indicative)",
        );
    }
    line
}

// ---------------------------------------------------------------------------
// the throwaway PostgreSQL

/// A PostgreSQL server on 127.0.0.1 (and a private unix socket for admin
/// work, trust-authenticated), run as the `postgres` user; stopped by pid and
/// its directory removed when dropped.
///
/// Layout of `root` (0755, root's): `pg/` (0700, postgres's: `data/`,
/// `sock/`, pgbouncer's files), `postgres.log`, `policies/`, `logs/`.
struct Server {
    root: PathBuf,
    bin: PathBuf,
    home: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    log: PathBuf,
    port: u16,
    owner: (u32, u32),
    /// The `bench` role's password (hex, safe in SQL literals and files).
    password: String,
    child: Option<Child>,
}

impl Server {
    fn start() -> Result<Server> {
        let bin = pg_bin_dir()?;
        let owner = postgres_owner()?;
        let root =
            std::env::temp_dir().join(format!("cordon-pgbench-server-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root).with_context(|| format!("mkdir {}", root.display()))?;
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755))?;
        let home = root.join("pg");
        let socket_dir = home.join("sock");
        let mut server = Server {
            data: home.join("data"),
            log: root.join("postgres.log"),
            port: 0,
            owner,
            password: random_hex()?,
            child: None,
            socket_dir,
            home,
            bin,
            root,
        };
        for d in [&server.home, &server.socket_dir] {
            fs::create_dir(d).with_context(|| format!("mkdir {}", d.display()))?;
            fs::set_permissions(d, fs::Permissions::from_mode(0o700))?;
            chown(d, owner)?;
        }
        server.initdb()?;
        server.write_config()?;
        server.spawn_until_ready()?;
        server
            .create_role_and_db()
            .with_context(|| format!("creating role and database\n{}", server.log_tail()))?;
        Ok(server)
    }

    /// Runs `cmd` as the postgres user, minimal environment, cwd = the data
    /// directory's parent.
    fn as_owner(&self, cmd: &mut Command) {
        // std clears the supplementary groups when root sets a uid.
        cmd.uid(self.owner.0)
            .gid(self.owner.1)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LC_ALL", "C")
            .env("LANG", "C")
            .current_dir(&self.home);
    }

    fn initdb(&self) -> Result<()> {
        // The superuser's password is never used (admin work goes over the
        // trust-authenticated private socket), but it is not empty either.
        let pwfile = self.home.join("pwfile");
        {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&pwfile)
                .with_context(|| format!("creating {}", pwfile.display()))?;
            writeln!(f, "{}", random_hex()?)?;
        }
        chown(&pwfile, self.owner)?;
        let mut cmd = Command::new(self.bin.join("initdb"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-U", SUPERUSER, "-A", "scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["--encoding=UTF8", "--no-locale", "--no-sync"]);
        self.as_owner(&mut cmd);
        let out = run_with_stdin(&mut cmd, b"");
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

    fn write_config(&self) -> Result<()> {
        let mut conf = String::from("\n# --- cargo xtask bench postgres\n");
        for line in [
            format!("listen_addresses = '127.0.0.1,{RELAY_HOST}'"),
            format!(
                "unix_socket_directories = '{}'",
                self.socket_dir.display().to_string().replace('\'', "''")
            ),
            "unix_socket_permissions = 0700".to_owned(),
            "max_connections = 100".to_owned(),
            "shared_buffers = 128MB".to_owned(),
            "huge_pages = off".to_owned(),
            "fsync = off".to_owned(),
            "synchronous_commit = off".to_owned(),
            "full_page_writes = off".to_owned(),
            "password_encryption = 'scram-sha-256'".to_owned(),
            "logging_collector = off".to_owned(),
            "log_destination = 'stderr'".to_owned(),
            "lc_messages = 'C'".to_owned(),
        ] {
            conf.push_str(&line);
            conf.push('\n');
        }
        let path = self.data.join("postgresql.conf");
        fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .with_context(|| format!("appending to {}", path.display()))?;
        let hba =
            "# cargo xtask bench postgres: admin over the private socket, clients by password\n\
                   local all all trust\n\
                   host  all all 127.0.0.1/32 scram-sha-256\n\
                   host  all all 127.0.0.2/32 scram-sha-256\n";
        let path = self.data.join("pg_hba.conf");
        fs::write(&path, hba).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Starts the postmaster on a free port (another one if it lost the race
    /// for it) and waits until it accepts connections.
    fn spawn_until_ready(&mut self) -> Result<()> {
        const ATTEMPTS: usize = 5;
        for _ in 0..ATTEMPTS {
            self.port = free_port()?;
            let mark = fs::metadata(&self.log).map_or(0, |m| m.len());
            let log = fs::OpenOptions::new()
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
                // Its own process group: a last-resort SIGKILL reaches the
                // backends too.
                .process_group(0);
            self.as_owner(&mut cmd);
            let child = cmd
                .spawn()
                .with_context(|| format!("starting {}", self.bin.join("postgres").display()))?;
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                    self.child = None;
                    let said = fs::read(&self.log).unwrap_or_default();
                    let said = String::from_utf8_lossy(
                        said.get(usize::try_from(mark).unwrap_or(0)..)
                            .unwrap_or_default(),
                    )
                    .into_owned();
                    if said.contains("Address already in use") {
                        break;
                    }
                    bail!(
                        "postgres exited during start-up ({status}):\n{}",
                        self.log_tail()
                    );
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
                    bail!(
                        "postgres not accepting connections on port {} after 30 s:\n{}",
                        self.port,
                        self.log_tail()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        bail!("postgres found no free port in {ATTEMPTS} attempts")
    }

    /// `psql -X -A -t -q -v ON_ERROR_STOP=1` as the superuser over the
    /// private socket, `sql` on stdin; returns stdout.
    fn psql_admin(&self, db: &str, sql: &str) -> Result<String> {
        let mut cmd = Command::new(self.bin.join("psql"));
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", db, "-f", "-"]);
        admin_env(&mut cmd);
        let out = run_with_stdin(&mut cmd, sql.as_bytes())?;
        if !out.status.success() {
            bail!(
                "psql as {SUPERUSER} on {db} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The `bench` login role (SCRAM password, not logged) and database.
    fn create_role_and_db(&self) -> Result<()> {
        self.psql_admin(
            "postgres",
            &format!(
                "SET log_statement = 'none';\nSET password_encryption = 'scram-sha-256';\n\
                 CREATE ROLE {NAME} LOGIN PASSWORD '{}';\nCREATE DATABASE {NAME} OWNER {SUPERUSER};\n",
                self.password
            ),
        )?;
        Ok(())
    }

    /// `pgbench -i -s SCALE` as the superuser over the socket, then the
    /// `bench` role gets all privileges on the pgbench tables.
    fn init_pgbench(&self) -> Result<()> {
        let mut cmd = Command::new(self.bin.join("pgbench"));
        cmd.args(["-i", "-q", "-s"])
            .arg(SCALE.to_string())
            .arg("-h")
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, NAME]);
        admin_env(&mut cmd);
        let out = run_with_stdin(&mut cmd, b"")?;
        if !out.status.success() {
            bail!(
                "pgbench -i -s {SCALE} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        self.psql_admin(
            NAME,
            &format!(
                "GRANT ALL PRIVILEGES ON ALL TABLES IN SCHEMA public TO {NAME};\n\
                 GRANT ALL PRIVILEGES ON ALL SEQUENCES IN SCHEMA public TO {NAME};\n\
                 VACUUM ANALYZE;\n"
            ),
        )?;
        Ok(())
    }

    fn log_tail(&self) -> String {
        tail(&fs::read_to_string(&self.log).unwrap_or_default(), 40)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT is postgres's fast shutdown (it disconnects clients).
            signal(child.id(), libc::SIGINT);
            if !wait_exit(&mut child, Duration::from_secs(15)) {
                eprintln!("warning: postgres still running 15 s after SIGINT: SIGKILL");
                if let Ok(pid) = i32::try_from(child.id()) {
                    // SAFETY: kill(2) of the process group our child leads
                    // (spawned with process_group(0)).
                    unsafe { libc::kill(-pid, libc::SIGKILL) };
                }
                let _ = child.wait();
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

// ---------------------------------------------------------------------------
// pgbouncer

/// pgbouncer in session mode in front of the server, run as the postgres
/// user (it refuses root); stopped by pid when dropped.
struct Bouncer {
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl Bouncer {
    fn start(exe: &Path, pg: &Server) -> Result<Bouncer> {
        let port = free_port()?;
        let ini = pg.home.join("pgbouncer.ini");
        let users = pg.home.join("userlist.txt");
        let log = pg.root.join("pgbouncer.log");
        {
            // A plain password: pgbouncer then does SCRAM with the client
            // and with the server.
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&users)
                .with_context(|| format!("creating {}", users.display()))?;
            writeln!(f, "\"{NAME}\" \"{}\"", pg.password)?;
        }
        chown(&users, pg.owner)?;
        let text = format!(
            "[databases]\n{NAME} = host=127.0.0.1 port={pgport} dbname={NAME}\n\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = scram-sha-256\nauth_file = {users}\npool_mode = session\n\
             max_client_conn = 100\ndefault_pool_size = 20\n\
             ignore_startup_parameters = extra_float_digits\n",
            pgport = pg.port,
            users = users.display(),
        );
        fs::write(&ini, text).with_context(|| format!("writing {}", ini.display()))?;
        chown(&ini, pg.owner)?;
        let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg(&ini)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        pg.as_owner(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let mut bouncer = Bouncer {
            port,
            log,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = bouncer.child.as_mut().and_then(|c| c.try_wait().ok()?) {
                bouncer.child = None;
                bail!(
                    "pgbouncer exited ({status}):\n{}",
                    tail(&fs::read_to_string(&bouncer.log).unwrap_or_default(), 30)
                );
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(bouncer);
            }
            if Instant::now() >= deadline {
                bail!("pgbouncer not listening on 127.0.0.1:{port} after 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM: pgbouncer's immediate shutdown.
            signal(child.id(), libc::SIGTERM);
            if !wait_exit(&mut child, Duration::from_secs(5)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

// ---------------------------------------------------------------------------
// small helpers

/// `/usr/lib/postgresql/<highest version with bin/initdb>/bin`.
fn pg_bin_dir() -> Result<PathBuf> {
    let root = Path::new("/usr/lib/postgresql");
    let entries = fs::read_dir(root).with_context(|| {
        format!(
            "reading {}: is PostgreSQL installed? (`cargo xtask setup`)",
            root.display()
        )
    })?;
    entries
        .flatten()
        .filter(|e| e.path().join("bin/initdb").is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let version: Vec<u32> = name.split('.').map(|p| p.parse().unwrap_or(0)).collect();
            (version, e.path().join("bin"))
        })
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, bin)| bin)
        .with_context(|| format!("no {}/<version>/bin/initdb", root.display()))
}

/// (uid, gid) of the `postgres` system user.
fn postgres_owner() -> Result<(u32, u32)> {
    let id = |flag: &str| -> Result<u32> {
        let out = crate::util::checked_stdout(Command::new("id").args([flag, SUPERUSER]))
            .context("no `postgres` system user: is PostgreSQL installed?")?;
        out.trim().parse().context("parsing `id` output")
    };
    Ok((id("-u")?, id("-g")?))
}

fn chown(path: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))
}

/// Admin clients (root, over the private socket): no inherited libpq
/// settings, no ~/.psqlrc or ~/.pgpass.
fn admin_env(cmd: &mut Command) {
    for v in LIBPQ_ENV {
        cmd.env_remove(v);
    }
    cmd.env("HOME", "/nonexistent").env("LC_ALL", "C");
}

/// 24 random bytes from /dev/urandom as 48 hex digits.
fn random_hex() -> Result<String> {
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
/// command cannot deadlock against us) and collects its output.
fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Result<Output> {
    let line = crate::util::describe(cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{line}`"))?;
    let writer = child.stdin.take().map(|mut stdin| {
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        })
    });
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{line}`"))?;
    if let Some(w) = writer {
        let _ = w.join();
    }
    Ok(out)
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: plain kill(2) on the pid of a child we started and have
        // not yet reaped.
        unsafe { libc::kill(pid, sig) };
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .get(lines.len().saturating_sub(n)..)
        .unwrap_or_default()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::busy_ticks;

    #[test]
    fn busy_ticks_count_work_not_idle() {
        let stat = "cpu  100 5 50 9000 40 3 2 1 0 0\n\
                    cpu0 50 2 25 4500 20 1 1 0 0 0\n\
                    cpu1 50 3 25 4500 20 2 1 1 0 0\n\
                    intr 12345 0 0\nctxt 999\n";
        // user + nice + system + irq + softirq + steal; idle and iowait left out.
        assert_eq!(busy_ticks(stat), Some((161.0, 2)));
        assert_eq!(busy_ticks("intr 1 2 3\n"), None);
        assert_eq!(busy_ticks("cpu  1 2 3\n"), None);
        assert_eq!(busy_ticks("cpu  1 2 x 4 5 6 7 8\n"), None);
    }
}
