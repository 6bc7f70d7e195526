//! The on-wire checks (cgroup_skb egress/ingress) and the absence of any
//! per-process exemption in the redirect programs.
//!
//! Run as root (CI does); without root they skip, except in CI where they fail.

use std::{fs, net::TcpStream, path::PathBuf, process::Command, time::Duration};

use cordon_tests::serde_json::Value;
use cordon_tests::{
    bin_dir, cgroup2_mount, free_port, json_line, probe_bin, require_root, run_with_limit, str_of,
    Background, Checks, Daemon, EchoServer, Setup, PROBE_TIME_LIMIT,
};

const EPERM: i64 = 1;
const ECONNREFUSED: u64 = 111;

fn wire_bin() -> PathBuf {
    bin_dir().join("cordon-wire")
}

#[test]
fn inbound_connections_to_agents_are_dropped() {
    require_root!();
    let echo = EchoServer::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let addr = format!("127.0.0.1:{}", free_port());
    let wire = wire_bin().display().to_string();
    let listener = Background::spawn(
        &mut d.cordon(&["run", "--agent", "bot", "--", &wire, "listen", &addr, "3"]),
        "agent listening",
    );
    std::thread::sleep(Duration::from_millis(700));
    let outside =
        TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_millis(1500));
    let out = listener.finish(Duration::from_secs(10));
    let seen = json_line(&out);
    let mut c = Checks::new();
    c.check(
        outside.is_err(),
        "a process outside connected to the agent's listener",
    );
    c.eq("agent accepted", seen["accepted"].as_bool(), Some(false));
    c.finish(|| d.context());
}

#[test]
fn a_routing_header_cannot_steer_a_resolver_datagram_elsewhere() {
    require_root!();
    let echo = EchoServer::v4();
    let resolver = std::net::UdpSocket::bind("[::1]:0").expect("bind resolver");
    let resolver_addr = resolver.local_addr().expect("addr").to_string();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()).dns_resolver(&resolver_addr));
    // A pinned cgroup outside `cordon run` (no seccomp), so only the kernel
    // programs stand between the agent and the wire.
    let cg = cgroup2_mount().join(format!("cordon-test-wire-{}", cordon_tests::unique_name()));
    fs::create_dir(&cg).expect("cgroup");
    let pin = d.cordon_output(&[
        "pin",
        "--agent",
        "bot",
        "--cgroup",
        &cg.display().to_string(),
    ]);
    let run = |args: &str| {
        let script = format!("echo $$ > '{}/cgroup.procs' && exec {args}", cg.display());
        json_line(&run_with_limit(
            Command::new("sh").args(["-c", &script]),
            PROBE_TIME_LIMIT,
        ))
    };
    let wire = wire_bin().display().to_string();
    let steered = run(&format!("'{wire}' srh-udp {resolver_addr} ::1"));
    let plain = run(&format!("'{}' udp {resolver_addr}", probe_bin().display()));
    let mut c = Checks::new();
    c.check(pin.status.success(), "cordon pin failed");
    c.check(
        steered["ok"] == Value::Bool(false) && steered["errno"].as_i64() == Some(EPERM),
        format!("a resolver datagram with a routing header must be dropped (EPERM): {steered}"),
    );
    c.check(
        plain["ok"] == Value::Bool(true),
        format!("a plain datagram to the listed resolver must pass: {plain}"),
    );
    drop(d);
    let _ = fs::remove_dir(&cg);
    c.finish(String::new);
}

/// Before the fix, the redirect programs exempted the daemon's pid, which
/// stayed in the pinned settings after a crash: a process in the agent cgroup
/// that got that pid number connected directly.
#[test]
fn no_pid_is_exempt_from_redirection_after_the_daemon_dies() {
    require_root!();
    let echo = EchoServer::v4();
    let mut d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let cgroup = {
        let status = d.status();
        status["agents"][0]["cgroup"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let old_pid = d.pid();
    d.kill9();
    // An undeclared listener: a direct connection would reach it.
    let target = EchoServer::v4();
    let mut c = Checks::new();
    let mut tried = false;
    for _ in 0..5 {
        // Make the next pid the dead daemon's (root only), then start the
        // probe in the agent cgroup under that pid.
        let _ = fs::write("/proc/sys/kernel/ns_last_pid", (old_pid - 1).to_string());
        let script = format!(
            "echo $$ > '{cgroup}/cgroup.procs' && exec '{}' tcp {} --send hi --read 2",
            probe_bin().display(),
            target.address()
        );
        let p = json_line(&run_with_limit(
            Command::new("sh").args(["-c", &script]),
            PROBE_TIME_LIMIT,
        ));
        if p["pid"].as_u64() != Some(u64::from(old_pid)) {
            continue;
        }
        tried = true;
        c.check(
            p["connect_errno"].as_u64() == Some(ECONNREFUSED) && str_of(&p, "received").is_empty(),
            format!(
                "the process with the dead daemon's pid must still be redirected (refused): {p}"
            ),
        );
        break;
    }
    c.check(tried, "could not start a process with the daemon's old pid");
    c.eq(
        "connections reaching the undeclared listener",
        target.accepted(),
        0,
    );
    d.restart();
    c.finish(|| d.context());
}

/// Sockets of an agent cgroup in any network namespace but the daemon's are
/// refused at connect (a private namespace is where records could be planted
/// and where "loopback" is not the host's).
#[test]
fn agent_sockets_in_another_network_namespace_are_refused() {
    require_root!();
    let echo = EchoServer::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let cgroup = d.status()["agents"][0]["cgroup"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let script = format!(
        "echo $$ > '{cgroup}/cgroup.procs' && exec unshare -n sh -c 'ip link set lo up; exec \"$0\" tcp {} --send hi --read 2' '{}'",
        echo.address(),
        probe_bin().display()
    );
    let p = json_line(&run_with_limit(
        Command::new("sh").args(["-c", &script]),
        PROBE_TIME_LIMIT,
    ));
    let mut c = Checks::new();
    c.check(
        p["connect_errno"].as_i64() == Some(EPERM),
        format!("connect from a private network namespace must fail with EPERM: {p}"),
    );
    c.eq("echo connections", echo.accepted(), 0);
    c.finish(|| d.context());
}
