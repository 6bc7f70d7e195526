//! `cordon pin` of an existing cgroup (processes put there by someone else,
//! e.g. systemd, so no `cordon run` and no seccomp filter), and
//! SO_ORIGINAL_DST for transparent-proxy code in the daemon's cgroup.
//!
//! Run as root (CI does); without root they skip, except in CI where they fail.

use std::{
    fs,
    io::BufRead,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use cordon_tests::serde_json::Value;
use cordon_tests::{
    cgroup2_mount, free_port, parse_probe, pretty, probe_bin, require_root, run_with_limit, str_of,
    unique_name, Background, Checks, Daemon, EchoServer, Setup, UnixServer, NOBODY,
    PROBE_TIME_LIMIT,
};

const EPERM: u64 = 1;

/// A cgroup made by the test (as systemd would make a unit's), removed at
/// the end.
struct ForeignCgroup(PathBuf);

impl ForeignCgroup {
    fn new() -> Self {
        let path = cgroup2_mount().join(format!("cordon-test-foreign-{}", unique_name()));
        fs::create_dir(&path).expect("create foreign cgroup");
        Self(path)
    }
}

impl Drop for ForeignCgroup {
    fn drop(&mut self) {
        // The probes have exited; retry briefly while the kernel reaps them.
        for _ in 0..50 {
            if fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("warning: could not remove {}", self.0.display());
    }
}

/// Runs the probe in `cgroup` by writing the shell's pid to cgroup.procs
/// (no `cordon run`), then dropping to uid/gid 65534 before exec.
fn probe_in(cgroup: &Path, args: &[&str]) -> Value {
    let quoted: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
    let script = format!(
        "echo $$ > '{}/cgroup.procs' && exec setpriv --reuid {NOBODY} --regid {NOBODY} --clear-groups '{}' {}",
        cgroup.display(),
        probe_bin().display(),
        quoted.join(" ")
    );
    let out = run_with_limit(
        std::process::Command::new("sh").args(["-c", &script]),
        PROBE_TIME_LIMIT,
    );
    parse_probe(&out, &format!("probe in {}", cgroup.display()))
}

#[test]
fn pinned_foreign_cgroup_is_captured_and_denied_unix_in_the_kernel() {
    require_root!();
    let echo = EchoServer::v4();
    let unix = UnixServer::new();
    let mut d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let cg = ForeignCgroup::new();
    let cg_str = cg.0.display().to_string();

    let out = d.cordon_output(&["pin", "--agent", "bot", "--cgroup", &cg_str]);
    let mut c = Checks::new();
    c.check(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("pinned agent bot"),
        format!(
            "cordon pin failed: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    );

    let addr = echo.address();
    let tcp = probe_in(&cg.0, &["tcp", &addr, "--send", "pinned", "--read", "6"]);
    c.check(
        str_of(&tcp, "received") == "pinned",
        format!("the pinned cgroup's connection did not go through: {tcp}"),
    );
    let pid = tcp["pid"].as_u64();
    let session = d.wait_session("for the pinned cgroup's connection", |s| {
        s["pid"].as_u64() == pid
    });
    c.eq("session agent", str_of(&session, "agent"), "bot");
    c.eq("session verdict", str_of(&session, "verdict"), "allow");
    c.eq(
        "session uid",
        session["uid"].as_u64(),
        Some(u64::from(NOBODY)),
    );
    c.eq(
        "session cgroup",
        str_of(&session, "cgroup"),
        cg_str.as_str(),
    );

    // No seccomp filter here: the socket is created, the kernel hook
    // (BPF LSM, or the unix connect hook) refuses the connect.
    let path = unix.path.display().to_string();
    let u = probe_in(&cg.0, &["unix", &path]);
    c.check(
        u["ok"] == Value::Bool(false) && u["errno"].as_u64() == Some(EPERM),
        format!("unix connect from the pinned cgroup should fail with EPERM: {u}"),
    );
    let dg = probe_in(&cg.0, &["unix", &path, "--dgram"]);
    c.check(
        dg["ok"] == Value::Bool(false) && dg["errno"].as_u64() == Some(EPERM),
        format!("unix datagram from the pinned cgroup should fail with EPERM: {dg}"),
    );
    c.eq("unix listener connections", unix.take_pending(), 0);

    // The pin is remembered across a restart.
    d.restart();
    let status = d.status();
    let pinned_to = status["agents"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == "bot"))
        .map(|x| str_of(x, "cgroup").to_owned());
    c.eq(
        "bot's cgroup after restart",
        pinned_to.as_deref(),
        Some(cg_str.as_str()),
    );
    let again = probe_in(&cg.0, &["tcp", &addr, "--send", "again", "--read", "5"]);
    c.check(
        str_of(&again, "received") == "again",
        format!("after restart the pinned cgroup's connection failed: {again}"),
    );
    c.finish(|| format!("\nstatus: {}\n{}", pretty(&status), d.context()));
}

#[test]
fn pin_refuses_unknown_agents_and_paths_outside_cgroup2() {
    require_root!();
    let echo = EchoServer::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let cg = ForeignCgroup::new();
    let mut c = Checks::new();
    let unknown = d.cordon_output(&[
        "pin",
        "--agent",
        "ghost",
        "--cgroup",
        &cg.0.display().to_string(),
    ]);
    c.check(
        !unknown.status.success()
            && String::from_utf8_lossy(&unknown.stderr).contains("unknown agent `ghost`"),
        format!(
            "pin of an unknown agent: {}",
            String::from_utf8_lossy(&unknown.stderr)
        ),
    );
    let outside = d.cordon_output(&["pin", "--agent", "bot", "--cgroup", "/tmp"]);
    c.check(
        !outside.status.success()
            && String::from_utf8_lossy(&outside.stderr).contains("not inside the cgroup2 mount"),
        format!(
            "pin of a non-cgroup path: {}",
            String::from_utf8_lossy(&outside.stderr)
        ),
    );
    c.finish(|| d.context());
}

/// A cgroup whose ancestor a user may change (a delegated subtree) cannot
/// hold an agent: that user's agent could create a sibling cgroup there and
/// move itself out of capture. `cordon pin` refuses it, and so does `cordon
/// run` when the delegation happens after the pin.
#[test]
fn pin_and_run_refuse_a_cgroup_under_a_delegated_ancestor() {
    use std::os::unix::fs::chown;
    require_root!();
    let echo = EchoServer::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let parent = ForeignCgroup::new();
    let child = parent.0.join("agent");
    fs::create_dir(&child).expect("create the agent cgroup");
    let mut c = Checks::new();
    let child_str = child.display().to_string();
    let pinned = d.cordon_output(&["pin", "--agent", "bot", "--cgroup", &child_str]);
    c.check(
        pinned.status.success(),
        format!(
            "pin under a root-owned ancestor: {}",
            String::from_utf8_lossy(&pinned.stderr)
        ),
    );
    // Delegate the parent to nobody, as systemd does for a user's subtree.
    chown(&parent.0, Some(NOBODY), Some(NOBODY)).expect("chown the parent cgroup");
    let run = d.cordon_output(&["run", "--agent", "bot", "--", "true"]);
    let err = String::from_utf8_lossy(&run.stderr);
    c.check(
        !run.status.success()
            && err.contains("owned by uid 65534")
            && err.contains(&parent.0.display().to_string()),
        format!("run under a delegated ancestor: {err}"),
    );
    let repinned = d.cordon_output(&["pin", "--agent", "bot", "--cgroup", &child_str]);
    let err = String::from_utf8_lossy(&repinned.stderr);
    c.check(
        !repinned.status.success() && err.contains("move itself out"),
        format!("pin under a delegated ancestor: {err}"),
    );
    chown(&parent.0, Some(0), Some(0)).expect("chown the parent back");
    let _ = fs::remove_dir(&child);
    c.finish(|| d.context());
}

/// An allowed unix path in a directory the agent may write could be
/// re-pointed (a symlink to the session bus, say) and connected under the
/// allowed name: `cordon run` refuses to start an agent that could.
#[test]
fn run_refuses_an_agent_that_could_repoint_an_allowed_unix_path() {
    use std::os::unix::fs::PermissionsExt as _;
    require_root!();
    let echo = EchoServer::v4();
    let allowed = UnixServer::new();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()).unix_allow(&allowed.path_str()));
    let mut c = Checks::new();
    let fine = d.cordon_output(&["run", "--agent", "bot", "--", "true"]);
    c.check(
        fine.status.success(),
        format!(
            "run with a root-owned allowed path: {}",
            String::from_utf8_lossy(&fine.stderr)
        ),
    );
    let dir = allowed.path.parent().expect("socket dir").to_owned();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).expect("chmod 777");
    let run = d.cordon_output(&["run", "--agent", "bot", "--", "true"]);
    let err = String::from_utf8_lossy(&run.stderr);
    c.check(
        !run.status.success()
            && err.contains(&allowed.path_str())
            && err.contains(&format!("{} is writable", dir.display())),
        format!("run with a world-writable directory on the allowed path: {err}"),
    );
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod back");
    // From another mount namespace (a unit's PrivateTmp, a container) the
    // same path may name other files: refused.
    let out = Command::new("unshare")
        .args(["--mount", "--"])
        .arg(cordon_tests::cordon_bin())
        .arg("--config")
        .arg(d.config())
        .args(["run", "--agent", "bot", "--", "true"])
        .output()
        .expect("unshare");
    let err = String::from_utf8_lossy(&out.stderr);
    c.check(
        !out.status.success() && err.contains("another mount namespace"),
        format!("run from another mount namespace: {err}"),
    );
    c.finish(|| d.context());
}

#[test]
fn so_original_dst_answers_transparent_proxy_code_in_the_daemon_cgroup() {
    require_root!();
    let echo = EchoServer::v4();
    let mut d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let daemon_cgroup = str_of(&d.status(), "daemon_cgroup").to_owned();
    // A destination nobody listens on: only the redirect can answer it.
    let dest = format!("127.0.0.1:{}", free_port());
    let trigger = d.setup.dir.path().join("trigger");
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.05; done; exec '{}' tcp {dest} --send hi --read 2",
        trigger.display(),
        probe_bin().display()
    );
    let waiting = Background::spawn(
        &mut d.cordon(&["run", "--agent", "bot", "--", "sh", "-c", &script]),
        "agent waiting for the trigger",
    );
    std::thread::sleep(Duration::from_millis(500));
    // Free the proxy port; the pinned programs keep redirecting to it, and
    // the pinned getsockopt link stays on the daemon's cgroup, where the
    // stand-in proxy now runs.
    d.kill9();
    let odst = cordon_tests::bin_dir().join("cordon-odst");
    let stand_in = format!(
        "echo $$ > '{daemon_cgroup}/cgroup.procs' && exec '{}' {}",
        odst.display(),
        d.setup.proxy_addr()
    );
    let mut child = std::process::Command::new("sh")
        .args(["-c", &stand_in])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the stand-in proxy");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = lines.next().and_then(Result::ok);
    fs::write(&trigger, b"go").expect("trigger");
    let answer: Value = lines
        .next()
        .and_then(Result::ok)
        .and_then(|l| cordon_tests::serde_json::from_str(&l).ok())
        .unwrap_or(Value::Null);
    let _ = child.wait();
    let out = waiting.finish(Duration::from_secs(15));
    let p = parse_probe(&out, "agent dialing through the stand-in proxy");
    let mut c = Checks::new();
    c.eq("stand-in proxy started", ready.as_deref(), Some("ready"));
    c.eq(
        "SO_ORIGINAL_DST",
        answer["original_dst"].as_str(),
        Some(dest.as_str()),
    );
    c.eq("agent received", str_of(&p, "received"), "ok");
    c.check(
        !daemon_cgroup.is_empty() && daemon_cgroup != cgroup2_mount().display().to_string(),
        format!("the daemon must not hook the host's root cgroup: {daemon_cgroup}"),
    );
    c.finish(|| d.context());
}

#[test]
fn unix_allow_list_is_enforced_in_the_kernel() {
    require_root!();
    let echo = EchoServer::v4();
    let allowed = UnixServer::new();
    let other = UnixServer::new();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()).unix_allow(&allowed.path_str()));
    let mut c = Checks::new();
    // Through `cordon run` (seccomp lets unix sockets be created because
    // the kernel enforces the list) and from a pinned cgroup (no seccomp).
    let ok = d.probe(
        "bot",
        cordon_tests::As::Nobody,
        &["unix", &allowed.path_str()],
    );
    c.check(
        ok["ok"] == Value::Bool(true),
        format!("connect to the allowed unix socket failed: {ok}"),
    );
    let denied = d.probe(
        "bot",
        cordon_tests::As::Nobody,
        &["unix", &other.path_str()],
    );
    c.check(
        denied["errno"].as_u64() == Some(EPERM) && denied["stage"] == "connect",
        format!("connect to an unlisted unix socket should fail at connect with EPERM: {denied}"),
    );
    let dgram = d.probe(
        "bot",
        cordon_tests::As::Nobody,
        &["unix", &other.path_str(), "--dgram"],
    );
    c.check(
        dgram["errno"].as_u64() == Some(EPERM),
        format!("datagram to an unlisted unix socket should fail with EPERM: {dgram}"),
    );
    std::thread::sleep(Duration::from_millis(200));
    c.eq("allowed listener connections", allowed.take_pending(), 1);
    c.eq("unlisted listener connections", other.take_pending(), 0);
    c.finish(|| d.context());
}

#[test]
fn agents_cannot_use_the_control_socket_even_through_an_allowed_name() {
    require_root!();
    let echo = EchoServer::v4();
    let setup = Setup::bot_with_echo(&echo.address());
    // The config refuses to list the control socket itself; a symlink to it
    // under another (allowed) name gets past the kernel's allow list, so
    // the daemon must refuse on its own.
    let alias = setup.dir.path().join("alias.sock");
    std::os::unix::fs::symlink(setup.control_socket(), &alias).expect("symlink");
    let alias = alias.display().to_string();
    let d = Daemon::start(setup.unix_allow(&alias));
    let mut c = Checks::new();
    for request in [
        r#"{"op":"status"}"#,
        r#"{"op":"sessions_list","agent":null,"limit":10}"#,
        r#"{"op":"join","agent":"bot"}"#,
        r#"{"op":"approvals_list"}"#,
    ] {
        let p = d.probe(
            "bot",
            cordon_tests::As::Root,
            &["unix-request", &alias, request],
        );
        let reply: Value =
            cordon_tests::serde_json::from_str(str_of(&p, "reply")).unwrap_or(Value::Null);
        c.check(
            p["ok"] == Value::Bool(true)
                && reply["ok"] == Value::Bool(false)
                && str_of(&reply, "error").contains("runs inside agent `bot`'s cgroup"),
            format!("{request} from inside the agent (as root) must reach the daemon and be refused: {p}"),
        );
    }
    // The same requests from outside the agent still work.
    c.check(
        d.status()["agents"]
            .as_array()
            .is_some_and(|a| a.len() == 1),
        "status from outside the agent",
    );
    c.finish(|| d.context());
}
