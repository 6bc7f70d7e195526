//! Harness for Cordon's kernel integration tests: a [`Daemon`] guard that runs
//! the real `cordon` binary with a throwaway config, upstream servers on
//! loopback that count what reaches them, and helpers to run the agent-side
//! probe (`cordon-probe`) inside or outside an agent's cgroup.
//!
//! Everything a test starts is stopped again: daemons by pid (SIGTERM, then
//! SIGKILL) followed by `cordon daemon --uninstall`, server threads by a stop
//! flag, probes by pid when they overrun their time limit.

use std::fmt::Write as _;
use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;
use tempfile::TempDir;

pub use serde_json;

pub mod oidc;
pub mod pg;
pub mod ssh;

/// uid/gid the probe drops to when a test wants an unprivileged agent.
pub const NOBODY: u32 = 65534;

/// An expiry no test run will reach.
pub const FAR_FUTURE: &str = "2099-01-01T00:00:00Z";

/// How long a single `cordon run`/probe invocation may take before it is
/// killed and the test fails.
pub const PROBE_TIME_LIMIT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// environment

/// True when the kernel tests can run. Not root: panics when `CI` is set (the
/// kernel tests must never be skipped there), otherwise prints why the test
/// is skipped and returns false.
pub fn kernel_tests_enabled() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    // libtest names each test's thread after the test.
    let current = thread::current();
    let test = current.name().unwrap_or("this test");
    if in_ci() {
        panic!("kernel tests must run as root in CI (`{test}` runs as euid {euid})");
    }
    println!(
        "skipping `{test}`: kernel tests need root (euid is {euid}); they load eBPF programs, \
         create cgroups and pin in bpffs. CI is unset, so this is a skip, not a failure."
    );
    false
}

/// `CI` is set to anything but "", "0" or "false".
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !matches!(v.trim(), "" | "0" | "false"))
}

/// Returns early from a test that cannot run without root (see
/// [`kernel_tests_enabled`]).
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::kernel_tests_enabled() {
            return;
        }
    };
}

/// Directory with the built `cordon` and `cordon-probe` binaries:
/// `$CORDON_TEST_BIN_DIR`, or `<workspace>/target/debug`.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("CORDON_TEST_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("target")
            .join("debug"),
    }
}

fn existing_bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} does not exist: build it first (`cargo build -p cordon -p cordon-tests`) \
         or set CORDON_TEST_BIN_DIR",
        path.display()
    );
    path
}

/// The `cordon` binary under test.
pub fn cordon_bin() -> PathBuf {
    existing_bin("cordon")
}

/// The agent-side probe.
pub fn probe_bin() -> PathBuf {
    existing_bin("cordon-probe")
}

/// Mount point of the cgroup2 hierarchy, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> PathBuf {
    let info = fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    for line in info.lines() {
        // id parent major:minor root mountpoint options [optional...] - fstype source opts
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        if let Some(mount) = left.split_whitespace().nth(4) {
            return PathBuf::from(unescape_mountinfo(mount));
        }
    }
    panic!("no cgroup2 mount in /proc/self/mountinfo:\n{info}");
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let code = rest.get(pos + 1..pos + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[pos + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// A name no other test (in this or another test process) uses:
/// `cordon-test-<pid>-<n>`.
pub fn unique_name() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "cordon-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A TCP port that is free on both 127.0.0.1 and [::1] right now (the proxy
/// binds both). Bound to port 0, then released; ports handed out earlier by
/// this process are never handed out again.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..200 {
        let v4 = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = v4.local_addr().expect("local addr").port();
        let v6_free = TcpListener::bind(("::1", port)).is_ok();
        let mut handed = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if v6_free && !handed.contains(&port) {
            handed.push(port);
            return port;
        }
    }
    panic!("no TCP port free on both 127.0.0.1 and [::1]");
}

/// Now plus `offset` (which may be negative) as RFC 3339 UTC, e.g.
/// `2025-01-02T03:04:05Z`.
pub fn rfc3339_from_now(offset_secs: i64) -> String {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("zero nanos");
    (now + time::Duration::seconds(offset_secs))
        .format(&time::format_description::well_known::Rfc3339)
        .expect("format RFC 3339")
}

/// Seconds since the epoch, for log lines.
fn epoch_secs() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

// ---------------------------------------------------------------------------
// processes

/// Waits for `child` with a time limit, collecting stdout and stderr. On
/// timeout the child is killed by pid and the result says so.
pub fn wait_output(mut child: Child, limit: Duration) -> (Output, bool) {
    let pid = child.id();
    let out_reader = child.stdout.take().map(|mut s| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            buf
        })
    });
    let err_reader = child.stderr.take().map(|mut s| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = s.read_to_end(&mut buf);
            buf
        })
    });
    let deadline = Instant::now() + limit;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                kill_pid(pid, libc::SIGKILL);
                break child.wait().expect("wait for killed child");
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for pid {pid}: {e}"),
        }
    };
    let stdout = out_reader
        .map(|h| h.join().unwrap_or_default())
        .unwrap_or_default();
    let stderr = err_reader
        .map(|h| h.join().unwrap_or_default())
        .unwrap_or_default();
    (
        Output {
            status,
            stdout,
            stderr,
        },
        timed_out,
    )
}

/// Runs `cmd` to completion (at most `limit`), capturing its output.
pub fn run_with_limit(cmd: &mut Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let (out, timed_out) = wait_output(child, limit);
    assert!(
        !timed_out,
        "{cmd:?} did not finish within {limit:?} and was killed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn kill_pid(pid: u32, signal: i32) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill() takes plain integers; an error only means the
        // process is already gone.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// A process a test started in the background; killed by pid on drop.
pub struct Background {
    child: Option<Child>,
    what: String,
}

impl Background {
    pub fn spawn(cmd: &mut Command, what: &str) -> Background {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
        Background {
            child: Some(child),
            what: what.to_owned(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits (at most `limit`) and returns its output.
    pub fn finish(mut self, limit: Duration) -> Output {
        let child = self.child.take().expect("background child present");
        let (out, timed_out) = wait_output(child, limit);
        assert!(
            !timed_out,
            "{} did not finish within {limit:?} and was killed\nstdout: {}\nstderr: {}",
            self.what,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_pid(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
    }
}

/// Last JSON line of the probe's stdout, or a panic with everything it said.
pub fn parse_probe(out: &Output, context: &str) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let parsed = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok());
    match parsed {
        Some(v) if v.is_object() => v,
        _ => panic!(
            "{context}: the probe printed no JSON line (exit {:?})\nstdout: {stdout}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Runs the probe directly, outside any agent cgroup, as the test's user.
pub fn probe_outside(args: &[&str]) -> Value {
    let out = run_with_limit(Command::new(probe_bin()).args(args), PROBE_TIME_LIMIT);
    let v = parse_probe(&out, &format!("probe {args:?} outside the agent cgroup"));
    println!(
        "[{:.3}] outside as root: probe {args:?} -> {v}",
        epoch_secs()
    );
    v
}

/// Runs the probe outside any agent cgroup as uid/gid 65534.
pub fn probe_outside_as_nobody(args: &[&str]) -> Value {
    let out = run_with_limit(
        Command::new("setpriv")
            .args(setpriv_nobody())
            .arg(probe_bin())
            .args(args),
        PROBE_TIME_LIMIT,
    );
    let v = parse_probe(&out, &format!("probe {args:?} outside as nobody"));
    println!(
        "[{:.3}] outside as nobody: probe {args:?} -> {v}",
        epoch_secs()
    );
    v
}

fn setpriv_nobody() -> Vec<String> {
    vec![
        "--reuid".into(),
        NOBODY.to_string(),
        "--regid".into(),
        NOBODY.to_string(),
        "--clear-groups".into(),
    ]
}

/// Who the probe runs as inside the agent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum As {
    /// The invoking user (root in the kernel tests).
    Root,
    /// uid/gid 65534 via `setpriv`, after `cordon run` joined the cgroup.
    Nobody,
}

// ---------------------------------------------------------------------------
// config

/// What goes into one daemon's config file. Every path and port is unique to
/// this instance.
pub struct Setup {
    pub dir: TempDir,
    pub name: String,
    pub port: u16,
    pub cgroup_root: PathBuf,
    pub bpffs: PathBuf,
    pub agents: Vec<String>,
    pub resources: Vec<(String, String)>,
    pub grants: Vec<(String, String, String)>,
    pub dns_resolvers: Vec<String>,
    pub unix_allow: Vec<String>,
    /// Appended verbatim (for tests of bad configs).
    pub extra: String,
    /// Extra `[daemon]` keys, written verbatim inside the `[daemon]` table
    /// (e.g. `"max_sessions_per_agent = 3\n"`).
    pub daemon_extra: String,
}

impl Setup {
    pub fn new() -> Setup {
        let dir = tempfile::Builder::new()
            .prefix("cordon-test-")
            .tempdir()
            .expect("create tempdir");
        // Agents running as nobody must be able to reach sockets in here.
        let _ = fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755));
        let name = unique_name();
        Setup {
            port: free_port(),
            cgroup_root: cgroup2_mount().join(&name),
            bpffs: PathBuf::from("/sys/fs/bpf").join(&name),
            name,
            dir,
            agents: Vec::new(),
            resources: Vec::new(),
            grants: Vec::new(),
            dns_resolvers: Vec::new(),
            unix_allow: Vec::new(),
            extra: String::new(),
            daemon_extra: String::new(),
        }
    }

    pub fn agent(mut self, name: &str) -> Setup {
        self.agents.push(name.to_owned());
        self
    }

    pub fn resource(mut self, name: &str, address: &str) -> Setup {
        self.resources.push((name.to_owned(), address.to_owned()));
        self
    }

    pub fn grant(mut self, agent: &str, resource: &str, expires: &str) -> Setup {
        self.grants
            .push((agent.to_owned(), resource.to_owned(), expires.to_owned()));
        self
    }

    pub fn unix_allow(mut self, name: &str) -> Setup {
        self.unix_allow.push(name.to_owned());
        self
    }

    /// Adds `line` (one or more `key = value` lines) to the `[daemon]` table.
    pub fn daemon_key(mut self, line: &str) -> Setup {
        self.daemon_extra.push_str(line);
        if !line.ends_with('\n') {
            self.daemon_extra.push('\n');
        }
        self
    }

    pub fn dns_resolver(mut self, addr: &str) -> Setup {
        self.dns_resolvers.push(addr.to_owned());
        self
    }

    /// The common case: agent `bot` with a tcp resource `echo` at `address`
    /// and a grant that runs until 2099.
    pub fn bot_with_echo(address: &str) -> Setup {
        Setup::new()
            .agent("bot")
            .resource("echo", address)
            .grant("bot", "echo", FAR_FUTURE)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("cordon.toml")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    pub fn proxy_addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let q = |p: &Path| toml_string(&p.to_string_lossy());
        let _ = writeln!(s, "[daemon]");
        let _ = writeln!(s, "state_dir = {}", q(&self.dir.path().join("state")));
        let _ = writeln!(s, "control_socket = {}", q(&self.control_socket()));
        let _ = writeln!(s, "listen = {}", toml_string(&self.proxy_addr()));
        let _ = writeln!(s, "cgroup_root = {}", q(&self.cgroup_root));
        let _ = writeln!(s, "bpffs = {}", q(&self.bpffs));
        let resolvers: Vec<String> = self.dns_resolvers.iter().map(|r| toml_string(r)).collect();
        let _ = writeln!(s, "dns_resolvers = [{}]", resolvers.join(", "));
        let unix: Vec<String> = self.unix_allow.iter().map(|r| toml_string(r)).collect();
        let _ = writeln!(s, "unix_allow = [{}]", unix.join(", "));
        let _ = writeln!(s, "upstream_connect_timeout_secs = 5");
        s.push_str(&self.daemon_extra);
        if !self.daemon_extra.is_empty() && !self.daemon_extra.ends_with('\n') {
            s.push('\n');
        }
        for agent in &self.agents {
            let _ = writeln!(s, "\n[[agent]]\nname = {}", toml_string(agent));
        }
        for (name, address) in &self.resources {
            let _ = writeln!(
                s,
                "\n[[resource]]\nname = {}\nprotocol = \"tcp\"\naddress = {}",
                toml_string(name),
                toml_string(address)
            );
        }
        for (agent, resource, expires) in &self.grants {
            let _ = writeln!(
                s,
                "\n[[grant]]\nagent = {}\nresource = {}\nexpires = {}",
                toml_string(agent),
                toml_string(resource),
                toml_string(expires)
            );
        }
        s.push_str(&self.extra);
        s
    }

    /// Writes the config file and returns its path.
    pub fn write(&self) -> PathBuf {
        let path = self.config_path();
        fs::write(&path, self.render()).expect("write config");
        path
    }
}

impl Default for Setup {
    fn default() -> Setup {
        Setup::new()
    }
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------
// the daemon

/// A running `cordon daemon`. Dropping it stops the daemon (SIGTERM, SIGKILL
/// after 5 s) and runs `cordon daemon --uninstall`.
pub struct Daemon {
    pub setup: Setup,
    config: PathBuf,
    child: Option<Child>,
    starts: usize,
}

const READY_LIMIT: Duration = Duration::from_secs(15);

impl Daemon {
    /// Writes the config, starts the daemon and waits until `cordon status`
    /// answers.
    pub fn start(setup: Setup) -> Daemon {
        let config = setup.write();
        let mut daemon = Daemon {
            setup,
            config,
            child: None,
            starts: 0,
        };
        daemon.spawn_and_wait();
        daemon
    }

    fn stderr_path(&self) -> PathBuf {
        self.setup
            .dir
            .path()
            .join(format!("daemon-{}.stderr", self.starts))
    }

    fn spawn_and_wait(&mut self) {
        self.starts += 1;
        let stderr = fs::File::create(self.stderr_path()).expect("create daemon stderr file");
        let child = Command::new(cordon_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("daemon")
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start cordon daemon");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    panic!(
                        "cordon daemon exited during startup with {status}\n{}",
                        self.context()
                    );
                }
            }
            if self.status_ok() {
                return;
            }
            if started.elapsed() > READY_LIMIT {
                panic!(
                    "cordon daemon not ready ({} status failing) after {READY_LIMIT:?}\n{}",
                    cordon_bin().display(),
                    self.context()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn status_ok(&self) -> bool {
        Command::new(cordon_bin())
            .arg("--config")
            .arg(&self.config)
            .arg("status")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    pub fn config(&self) -> &Path {
        &self.config
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `cordon --config F ARGS...`, as a command the caller may adjust.
    pub fn cordon(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(cordon_bin());
        cmd.arg("--config").arg(&self.config).args(args);
        cmd
    }

    /// `cordon vault set NAME --kind KIND` with `secret` on stdin (never in argv); panics
    /// with the CLI's stderr when it fails.
    pub fn vault_set(&self, name: &str, kind: &str, secret: &str) {
        let mut cmd = self.cordon(&["vault", "set", name, "--kind", kind]);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn cordon vault set");
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(secret.as_bytes())
                .expect("write the secret to cordon vault set");
        }
        let out = child.wait_with_output().expect("cordon vault set");
        assert!(
            out.status.success(),
            "vault set failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `cordon --config F ARGS...` to completion.
    pub fn cordon_output(&self, args: &[&str]) -> Output {
        run_with_limit(&mut self.cordon(args), PROBE_TIME_LIMIT)
    }

    /// Everything the daemon wrote to stderr (all starts), for failure
    /// messages.
    pub fn stderr(&self) -> String {
        let mut all = String::new();
        for n in 1..=self.starts {
            let path = self.setup.dir.path().join(format!("daemon-{n}.stderr"));
            let text = fs::read_to_string(&path).unwrap_or_default();
            let _ = writeln!(all, "--- daemon start #{n} stderr ({}):", path.display());
            all.push_str(&text);
        }
        all
    }

    /// Config and stderr, appended to every failure message.
    pub fn context(&self) -> String {
        let stderr = self.stderr();
        // Keep failure output readable: the last 120 lines are what matter.
        let lines: Vec<&str> = stderr.lines().collect();
        let tail = lines
            .iter()
            .skip(lines.len().saturating_sub(120))
            .copied()
            .collect::<Vec<_>>()
            .join("\n");
        format!(
            "--- config {}:\n{}\n{tail}\n--- (at {:.3})",
            self.config.display(),
            self.setup.render(),
            epoch_secs()
        )
    }

    /// `cordon ARGS` (which must include `--json`): its JSON output, or a
    /// panic with its stderr and the daemon's context.
    fn cordon_json(&self, args: &[&str]) -> Value {
        let out = self.cordon_output(args);
        let what = args.join(" ");
        assert!(
            out.status.success(),
            "cordon {what} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.context()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "cordon {what} printed bad JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `cordon status --json`.
    pub fn status(&self) -> Value {
        self.cordon_json(&["status", "--json"])
    }

    /// `cordon sessions list --json`, newest first.
    pub fn sessions(&self) -> Vec<Value> {
        match self.cordon_json(&["sessions", "list", "--limit", "10000", "--json"]) {
            Value::Array(list) => list,
            other => panic!("cordon sessions list --json did not print an array: {other}"),
        }
    }

    /// `cordon sessions show ID --json`.
    pub fn session(&self, id: &str) -> Value {
        self.cordon_json(&["sessions", "show", id, "--json"])
    }

    /// Polls the session list (every 50 ms, up to 10 s) until one session
    /// satisfies `pred`; panics with `what`, the sessions and the daemon's
    /// stderr otherwise.
    pub fn wait_session(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let sessions = self.sessions();
            if let Some(s) = sessions.iter().find(|s| pred(s)) {
                return s.clone();
            }
            if Instant::now() >= deadline {
                panic!(
                    "no recorded session {what} within 10 s; sessions:\n{}\n{}",
                    pretty(&Value::Array(sessions)),
                    self.context()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls until the session `id` has ended (ended_at set), then returns it.
    pub fn wait_ended(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.session(id);
            if !s["ended_at"].is_null() {
                return s;
            }
            if Instant::now() >= deadline {
                panic!(
                    "session {id} did not end within 10 s:\n{}\n{}",
                    pretty(&s),
                    self.context()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The probe inside agent `agent` via `cordon run`, as `who`; returns the
    /// whole output.
    pub fn run_agent_output(&self, agent: &str, who: As, probe_args: &[&str]) -> Output {
        let mut cmd = self.agent_command(agent, who, probe_args);
        run_with_limit(&mut cmd, PROBE_TIME_LIMIT)
    }

    /// `cordon --config F run --agent AGENT -- [setpriv ...] cordon-probe ARGS`.
    pub fn agent_command(&self, agent: &str, who: As, probe_args: &[&str]) -> Command {
        let mut cmd = self.cordon(&["run", "--agent", agent, "--"]);
        if who == As::Nobody {
            cmd.arg("setpriv").args(setpriv_nobody());
        }
        cmd.arg(probe_bin()).args(probe_args);
        cmd
    }

    /// The probe inside agent `agent`; its JSON line (panics with the daemon's
    /// stderr when there is none).
    pub fn probe(&self, agent: &str, who: As, probe_args: &[&str]) -> Value {
        let out = self.run_agent_output(agent, who, probe_args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let parsed = stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok());
        match parsed {
            Some(v) if v.is_object() => {
                // Captured by libtest; shown when the test fails.
                println!(
                    "[{:.3}] inside {agent} as {who:?}: probe {probe_args:?} -> {v}",
                    epoch_secs()
                );
                v
            }
            _ => panic!(
                "cordon run --agent {agent} -- probe {probe_args:?} printed no JSON line \
                 (exit {})\nstdout: {stdout}\nstderr: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                self.context()
            ),
        }
    }

    /// Panics with `msg` and the daemon's context.
    pub fn fail(&self, msg: &str) -> ! {
        panic!("{msg}\n{}", self.context())
    }

    /// SIGKILLs the daemon (no cleanup on its side) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_pid(child.id(), libc::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Starts the daemon again with the same config (after [`Daemon::kill9`]
    /// or [`Daemon::stop`]) and waits until it answers.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
        self.spawn_and_wait();
    }

    /// SIGTERM, wait up to 5 s, then SIGKILL. Returns the exit status (None if
    /// it had to be killed or was not running).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        kill_pid(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    eprintln!(
                        "cordon daemon pid {} ignored SIGTERM for 5 s: SIGKILL",
                        child.id()
                    );
                    kill_pid(child.id(), libc::SIGKILL);
                    let _ = child.wait();
                    return None;
                }
            }
        }
    }

    fn uninstall(&self) {
        let out = Command::new(cordon_bin())
            .arg("--config")
            .arg(&self.config)
            .args(["daemon", "--uninstall"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map(|c| wait_output(c, Duration::from_secs(20)));
        match out {
            Ok((out, false)) if out.status.success() => {}
            Ok((out, timed_out)) => eprintln!(
                "warning: cordon daemon --uninstall for {} failed (exit {}, timed out: {timed_out}): {}",
                self.config.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("warning: cannot run cordon daemon --uninstall: {e}"),
        }
        for leftover in [&self.setup.bpffs, &self.setup.cgroup_root] {
            if leftover.exists() {
                eprintln!(
                    "warning: {} still exists after `cordon daemon --uninstall`",
                    leftover.display()
                );
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        self.uninstall();
    }
}

pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

// ---------------------------------------------------------------------------
// upstream servers

/// A TCP echo server on loopback that counts the connections it accepts.
pub struct EchoServer {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// On 127.0.0.1, a free port.
    pub fn v4() -> EchoServer {
        EchoServer::bind("127.0.0.1:0")
    }

    /// On [::1], a free port.
    pub fn v6() -> EchoServer {
        EchoServer::bind("[::1]:0")
    }

    pub fn bind(addr: &str) -> EchoServer {
        let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let accepted = accepted.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    accepted.fetch_add(1, Ordering::SeqCst);
                    thread::spawn(move || echo(conn));
                }
            })
        };
        EchoServer {
            addr,
            accepted,
            stop,
            thread: Some(thread),
        }
    }

    /// "ip:port" (IPv6 in brackets).
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn echo(mut conn: TcpStream) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    let mut buf = [0u8; 16 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(buf.get(..n).unwrap_or_default()).is_err() {
                    break;
                }
            }
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop; this process is in no agent cgroup, so the
        // connect goes straight to the listener.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UDP echo server on loopback that counts datagrams.
pub struct UdpEcho {
    pub addr: SocketAddr,
    received: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    pub fn v4() -> UdpEcho {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind udp 127.0.0.1:0");
        let addr = sock.local_addr().expect("local addr");
        let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
        let received = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let received = received.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                let mut buf = [0u8; 65536];
                while !stop.load(Ordering::SeqCst) {
                    match sock.recv_from(&mut buf) {
                        Ok((n, from)) => {
                            received.fetch_add(1, Ordering::SeqCst);
                            let _ = sock.send_to(buf.get(..n).unwrap_or_default(), from);
                        }
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => {}
                    }
                }
            })
        };
        UdpEcho {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn received(&self) -> usize {
        self.received.load(Ordering::SeqCst)
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A listening unix stream socket in a tempdir (mode 0777, so any user may
/// connect). `pending()` accepts without blocking and counts connections.
pub struct UnixServer {
    _dir: TempDir,
    pub path: PathBuf,
    listener: UnixListener,
}

impl UnixServer {
    pub fn new() -> UnixServer {
        let dir = tempfile::Builder::new()
            .prefix("cordon-test-unix-")
            .tempdir()
            .expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod dir");
        let path = dir.path().join("listener.sock");
        let listener = UnixListener::bind(&path).expect("bind unix listener");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o777)).expect("chmod socket");
        listener.set_nonblocking(true).expect("nonblocking");
        UnixServer {
            _dir: dir,
            path,
            listener,
        }
    }

    pub fn path_str(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    /// Accepts every connection waiting in the backlog; returns how many.
    pub fn take_pending(&self) -> usize {
        let mut n = 0;
        while self.listener.accept().is_ok() {
            n += 1;
        }
        n
    }
}

impl Default for UnixServer {
    fn default() -> UnixServer {
        UnixServer::new()
    }
}

// ---------------------------------------------------------------------------
// small JSON helpers

/// `v[key]` as u64 (panics with the value otherwise).
pub fn u64_of(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is not a number in {}", pretty(v)))
}

/// `v[key]` as &str, or "" when absent/null.
pub fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap_or("")
}

/// Collects failed expectations so one run reports all of them at once.
#[derive(Default)]
pub struct Checks {
    failures: Vec<String>,
}

impl Checks {
    pub fn new() -> Checks {
        Checks::default()
    }

    /// Records `msg` when `ok` is false.
    pub fn check(&mut self, ok: bool, msg: impl Into<String>) {
        if !ok {
            self.failures.push(msg.into());
        }
    }

    /// Records a mismatch between `got` and `want`.
    pub fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, got: T, want: T) {
        if got != want {
            self.failures
                .push(format!("{what}: got {got:?}, expected {want:?}"));
        }
    }

    pub fn ok(&self) -> bool {
        self.failures.is_empty()
    }

    /// Panics listing every failure, then `context` (JSON seen, daemon stderr).
    pub fn finish(self, context: impl FnOnce() -> String) {
        if !self.failures.is_empty() {
            let mut msg = String::from("failed expectations:\n");
            for f in &self.failures {
                let _ = writeln!(msg, "  - {f}");
            }
            panic!("{msg}{}", context());
        }
    }
}

// ---------------------------------------------------------------------------
// probe results shared by the test files

/// `probe tcp ADDR --send TEXT --read len(TEXT)` arguments.
pub fn tcp_args(addr: &str, text: &str) -> Vec<String> {
    vec![
        "tcp".into(),
        addr.into(),
        "--send".into(),
        text.into(),
        "--read".into(),
        text.len().to_string(),
    ]
}

pub fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The probes' JSON, then the daemon's context: what a failure shows.
pub fn probe_context(d: &Daemon, probes: &[&Value]) -> String {
    let mut s = String::from("\n--- probe output:\n");
    for p in probes {
        s.push_str(&pretty(p));
        s.push('\n');
    }
    s + &d.context()
}

/// The probe's tcp result echoed `text` back.
pub fn echoed(p: &Value, text: &str) -> bool {
    str_of(p, "connect") == "ok" && str_of(p, "received") == text
}

/// The probe's tcp result shows a refused/reset connection with nothing
/// echoed: connect failed, or the read ended in ECONNRESET or EOF.
pub fn refused(p: &Value) -> bool {
    const ECONNRESET: u64 = 104;
    str_of(p, "received").is_empty()
        && (str_of(p, "connect") == "error"
            || p["read_errno"].as_u64() == Some(ECONNRESET)
            || p["eof"] == Value::Bool(true))
}

/// The last JSON line a command printed (Null if none).
pub fn json_line(out: &Output) -> Value {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null)
}
