//! Kernel capture end to end: the real daemon, eBPF programs attached to a
//! real agent cgroup, the probe run through `cordon run`, and upstream servers
//! on loopback that count what actually reaches them.
//!
//! Run as root (CI does); without root they skip, except in CI where they fail.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use cordon_tests::serde_json::Value;
use cordon_tests::{
    echoed, pretty, probe_bin, probe_context, probe_outside, probe_outside_as_nobody, refused,
    require_root, str_of, strs, tcp_args, u64_of, As, Background, Checks, Daemon, EchoServer,
    Setup, UdpEcho, UnixServer, FAR_FUTURE, NOBODY,
};

/// Give a connection that should NOT arrive a moment to show up anyway.
const SETTLE: Duration = Duration::from_millis(300);

const EPERM: u64 = 1;
const ECONNREFUSED: u64 = 111;

// ---------------------------------------------------------------------------
// 1. allowed tcp resource

#[test]
fn allowed_tcp_resource_works_and_is_attested() {
    require_root!();
    let echo = EchoServer::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let text = "hello through cordon\n";
    let p = d.probe("bot", As::Nobody, &strs(&tcp_args(&echo.address(), text)));

    if !echoed(&p, text) {
        d.fail(&format!(
            "the agent did not get its text echoed back through the gateway: {p}"
        ));
    }
    let mut c = Checks::new();
    c.eq("echo server connections", echo.accepted(), 1);
    let pid = u64_of(&p, "pid");
    let s = d.wait_session(&format!("for probe pid {pid}"), |s| s["pid"] == pid);
    let id = str_of(&s, "id").to_owned();
    let s = d.wait_ended(&id);

    c.eq("session id length", id.len(), 16);
    c.check(
        id.chars().all(|ch| ch.is_ascii_hexdigit()),
        format!("session id {id:?} is not hex"),
    );
    c.eq("verdict", str_of(&s, "verdict"), "allow");
    c.eq("agent", str_of(&s, "agent"), "bot");
    c.eq("resource", str_of(&s, "resource"), "echo");
    c.eq("protocol", str_of(&s, "protocol"), "tcp");
    c.eq("dst", str_of(&s, "dst"), &echo.address());
    c.eq("uid", s["uid"].as_u64(), Some(u64::from(NOBODY)));
    c.eq("gid", s["gid"].as_u64(), Some(u64::from(NOBODY)));
    c.eq("pid", s["pid"].as_u64(), Some(pid));
    c.eq("comm", str_of(&s, "comm"), "cordon-probe");
    c.check(
        str_of(&s, "exe").ends_with("cordon-probe"),
        format!("exe {:?} does not end in cordon-probe", s["exe"]),
    );
    c.check(
        s["cgroup_id"].as_u64().is_some_and(|id| id != 0),
        "cgroup_id is missing or 0",
    );
    c.eq("bytes_up", s["bytes_up"].as_u64(), Some(text.len() as u64));
    c.eq(
        "bytes_down",
        s["bytes_down"].as_u64(),
        Some(text.len() as u64),
    );
    c.check(
        !s["end_reason"].is_null(),
        "ended session has no end_reason",
    );
    // getpeername in the agent must show what it dialed, not the proxy.
    c.eq(
        "probe peer (getpeername)",
        str_of(&p, "peer"),
        &echo.address(),
    );
    c.finish(|| probe_context(&d, &[&p, &s]));
}

// ---------------------------------------------------------------------------
// 2. undeclared destination

#[test]
fn undeclared_destination_is_refused_and_recorded() {
    require_root!();
    let echo = EchoServer::v4();
    let undeclared = EchoServer::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let p = d.probe(
        "bot",
        As::Nobody,
        &strs(&tcp_args(&undeclared.address(), "secret")),
    );
    thread::sleep(SETTLE);

    let mut c = Checks::new();
    c.check(
        refused(&p),
        "the connection to an undeclared destination was not reset (something was echoed, or it stayed open)",
    );
    c.eq("undeclared listener connections", undeclared.accepted(), 0);
    c.eq("declared echo connections", echo.accepted(), 0);
    let pid = u64_of(&p, "pid");
    let s = d.wait_session(&format!("for probe pid {pid}"), |s| s["pid"] == pid);
    c.eq("verdict", str_of(&s, "verdict"), "deny");
    c.eq("dst", str_of(&s, "dst"), &undeclared.address());
    c.eq("agent", str_of(&s, "agent"), "bot");
    c.check(
        str_of(&s, "reason").contains("not a declared resource"),
        format!("reason {:?} lacks \"not a declared resource\"", s["reason"]),
    );
    c.finish(|| probe_context(&d, &[&p, &s]));
}

// ---------------------------------------------------------------------------
// 3. IPv6 and v4-mapped

#[test]
fn ipv6_resource_works_through_gateway() {
    require_root!();
    let echo6 = EchoServer::v6();
    let d = Daemon::start(Setup::bot_with_echo(&echo6.address()));
    let text = "over ipv6";
    let p = d.probe("bot", As::Nobody, &strs(&tcp_args(&echo6.address(), text)));

    let mut c = Checks::new();
    c.check(echoed(&p, text), "no echo through the gateway over IPv6");
    c.eq("ipv6 echo connections", echo6.accepted(), 1);
    let pid = u64_of(&p, "pid");
    let s = d.wait_session(&format!("for probe pid {pid}"), |s| s["pid"] == pid);
    c.eq("verdict", str_of(&s, "verdict"), "allow");
    c.eq("resource", str_of(&s, "resource"), "echo");
    c.eq("dst", str_of(&s, "dst"), &echo6.address());
    c.finish(|| probe_context(&d, &[&p, &s]));
}

#[test]
fn v4_mapped_ipv6_is_captured() {
    require_root!();
    let echo = EchoServer::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let text = "v4-mapped";
    let mapped = format!("[::ffff:127.0.0.1]:{}", echo.port());
    let p = d.probe("bot", As::Nobody, &strs(&tcp_args(&mapped, text)));

    let mut c = Checks::new();
    c.check(
        echoed(&p, text),
        "no echo through the gateway for a v4-mapped dial",
    );
    c.eq("echo connections", echo.accepted(), 1);
    let pid = u64_of(&p, "pid");
    let s = d.wait_session(&format!("for probe pid {pid}"), |s| s["pid"] == pid);
    c.eq("verdict", str_of(&s, "verdict"), "allow");
    c.eq("resource", str_of(&s, "resource"), "echo");
    c.eq("dst", str_of(&s, "dst"), &echo.address());
    c.finish(|| probe_context(&d, &[&p, &s]));
}

// ---------------------------------------------------------------------------
// 4. UDP

#[test]
fn udp_is_denied() {
    require_root!();
    let echo = EchoServer::v4();
    let udp = UdpEcho::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let udp_addr = udp.address();
    let cases: Vec<Vec<&str>> = vec![
        vec!["udp", "127.0.0.1:53"],
        vec!["udp", "127.0.0.1:53", "--connect"],
        vec!["udp", "[::1]:53"],
        vec!["udp", "[::1]:53", "--connect"],
        vec!["udp", &udp_addr],
        vec!["udp", &udp_addr, "--connect"],
    ];
    let mut c = Checks::new();
    let mut seen = Vec::new();
    for args in &cases {
        let p = d.probe("bot", As::Nobody, args);
        c.check(
            p["ok"] == Value::Bool(false) && p["errno"].as_u64() == Some(EPERM),
            format!("probe {args:?} inside the agent: expected errno 1 (EPERM), got {p}"),
        );
        seen.push(p);
    }
    thread::sleep(SETTLE);
    c.eq("datagrams that reached the UDP server", udp.received(), 0);
    c.finish(|| probe_context(&d, &seen.iter().collect::<Vec<_>>()));
}

#[test]
fn udp_to_declared_dns_resolver_is_allowed() {
    require_root!();
    let echo = EchoServer::v4();
    let resolver = UdpEcho::v4();
    let other = UdpEcho::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()).dns_resolver(&resolver.address()));
    let r = resolver.address();
    let o = other.address();

    let mut c = Checks::new();
    let sendto = d.probe("bot", As::Nobody, &["udp", &r, "--read-ms", "3000"]);
    c.check(
        sendto["ok"] == Value::Bool(true) && str_of(&sendto, "received") == "probe",
        format!("sendto the declared resolver {r} did not round-trip: {sendto}"),
    );
    let connected = d.probe(
        "bot",
        As::Nobody,
        &["udp", &r, "--connect", "--read-ms", "3000"],
    );
    c.check(
        connected["ok"] == Value::Bool(true) && str_of(&connected, "received") == "probe",
        format!("connect+send to the declared resolver {r} did not round-trip: {connected}"),
    );
    let denied = d.probe("bot", As::Nobody, &["udp", &o]);
    c.check(
        denied["errno"].as_u64() == Some(EPERM),
        format!("sendto the undeclared {o}: expected errno 1 (EPERM), got {denied}"),
    );
    let denied_connect = d.probe("bot", As::Nobody, &["udp", &o, "--connect"]);
    c.check(
        denied_connect["errno"].as_u64() == Some(EPERM),
        format!("connect to the undeclared {o}: expected errno 1 (EPERM), got {denied_connect}"),
    );
    thread::sleep(SETTLE);
    c.eq("datagrams at the resolver", resolver.received(), 2);
    c.eq(
        "datagrams at the undeclared UDP server",
        other.received(),
        0,
    );
    c.finish(|| probe_context(&d, &[&sendto, &connected, &denied, &denied_connect]));
}

// ---------------------------------------------------------------------------
// 5. raw sockets, 6. packet/unix sockets and io_uring

#[test]
fn raw_socket_denied_inside_agent_even_for_root() {
    require_root!();
    let echo = EchoServer::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let inside = d.probe("bot", As::Root, &["raw"]);
    let outside = probe_outside(&["raw"]);
    let mut c = Checks::new();
    c.check(
        inside["ok"] == Value::Bool(false) && inside["errno"].as_u64() == Some(EPERM),
        format!("raw socket inside the agent (as root): expected errno 1 (EPERM), got {inside}"),
    );
    c.check(
        outside["ok"] == Value::Bool(true),
        format!(
            "raw socket outside the agent as root failed, so the test proves nothing: {outside}"
        ),
    );
    c.finish(|| probe_context(&d, &[&inside, &outside]));
}

#[test]
fn packet_socket_denied_inside_agent_even_for_root() {
    require_root!();
    let echo = EchoServer::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let inside = d.probe("bot", As::Root, &["packet"]);
    let outside = probe_outside(&["packet"]);
    let mut c = Checks::new();
    c.check(
        inside["ok"] == Value::Bool(false) && inside["errno"].as_u64() == Some(EPERM),
        format!("packet socket inside the agent (as root): expected errno 1 (EPERM), got {inside}"),
    );
    c.check(
        outside["ok"] == Value::Bool(true),
        format!(
            "packet socket outside the agent as root failed, so the test proves nothing: {outside}"
        ),
    );
    c.finish(|| probe_context(&d, &[&inside, &outside]));
}

#[test]
fn unix_socket_connect_denied_inside_agent() {
    require_root!();
    let echo = EchoServer::v4();
    let listener = UnixServer::new();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let path = listener.path_str();

    let mut c = Checks::new();
    let inside = d.probe("bot", As::Nobody, &["unix", &path]);
    c.check(
        inside["ok"] == Value::Bool(false) && inside["errno"].as_u64() == Some(EPERM),
        format!("unix connect inside the agent: expected errno 1 (EPERM), got {inside}"),
    );
    c.eq(
        "connections the unix listener saw from the agent",
        listener.take_pending(),
        0,
    );
    let inside_root = d.probe("bot", As::Root, &["unix", &path]);
    c.check(
        inside_root["ok"] == Value::Bool(false) && inside_root["errno"].as_u64() == Some(EPERM),
        format!(
            "unix connect inside the agent as root: expected errno 1 (EPERM), got {inside_root}"
        ),
    );
    c.eq(
        "connections the unix listener saw from the root agent",
        listener.take_pending(),
        0,
    );
    let outside = probe_outside_as_nobody(&["unix", &path]);
    c.check(
        outside["ok"] == Value::Bool(true),
        format!("unix connect outside the agent failed, so the test proves nothing: {outside}"),
    );
    c.eq(
        "connections the unix listener saw from outside",
        listener.take_pending(),
        1,
    );
    c.finish(|| probe_context(&d, &[&inside, &inside_root, &outside]));
}

#[test]
fn io_uring_setup_denied_inside_agent() {
    require_root!();
    let echo = EchoServer::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let inside = d.probe("bot", As::Nobody, &["uring"]);
    let inside_root = d.probe("bot", As::Root, &["uring"]);
    let mut c = Checks::new();
    c.check(
        inside["ok"] == Value::Bool(false) && inside["errno"].as_u64() == Some(EPERM),
        format!("io_uring_setup inside the agent: expected errno 1 (EPERM), got {inside}"),
    );
    c.check(
        inside_root["ok"] == Value::Bool(false) && inside_root["errno"].as_u64() == Some(EPERM),
        format!(
            "io_uring_setup inside the agent as root: expected errno 1 (EPERM), got {inside_root}"
        ),
    );
    // Outside, io_uring works unless the host disabled it: then the inside
    // result proves nothing about Cordon, and we say so.
    let outside = probe_outside_as_nobody(&["uring"]);
    let host_allows = fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .map(|s| s.trim() == "0")
        .unwrap_or(true);
    if host_allows {
        c.check(
            outside["ok"] == Value::Bool(true),
            format!(
                "io_uring_setup outside the agent failed although the host allows it: {outside}"
            ),
        );
    } else {
        println!("note: kernel.io_uring_disabled is set on this host; outside result: {outside}");
    }
    c.finish(|| probe_context(&d, &[&inside, &inside_root, &outside]));
}

// ---------------------------------------------------------------------------
// 7. processes outside the cgroup, 8. children of the agent

#[test]
fn process_outside_the_cgroup_is_untouched() {
    require_root!();
    let echo = EchoServer::v4();
    let undeclared = EchoServer::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let before = d.sessions();
    let text = "direct";
    let p = probe_outside(&strs(&tcp_args(&undeclared.address(), text)));
    thread::sleep(SETTLE);
    let after = d.sessions();

    let mut c = Checks::new();
    c.check(
        echoed(&p, text),
        "a process outside the agent cgroup could not reach an undeclared listener directly",
    );
    c.eq("undeclared listener connections", undeclared.accepted(), 1);
    c.eq("probe peer", str_of(&p, "peer"), &undeclared.address());
    c.eq("sessions recorded", after.len(), before.len());
    c.finish(|| probe_context(&d, &[&p, &Value::Array(after)]));
}

#[test]
fn child_of_agent_is_captured_with_its_own_pid() {
    require_root!();
    let echo = EchoServer::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let text = "from the child";
    let mut args = vec!["spawn-child".to_owned()];
    args.extend(tcp_args(&echo.address(), text));
    let p = d.probe("bot", As::Nobody, &strs(&args));

    let mut c = Checks::new();
    c.check(
        echoed(&p, text),
        "the agent's child got no echo through the gateway",
    );
    let child = u64_of(&p, "pid");
    let parent = u64_of(&p, "parent_pid");
    c.check(
        child != parent,
        format!("child pid {child} equals the parent's"),
    );
    let s = d.wait_session(&format!("for child pid {child}"), |s| s["pid"] == child);
    c.eq("verdict", str_of(&s, "verdict"), "allow");
    c.eq("agent", str_of(&s, "agent"), "bot");
    c.eq("dst", str_of(&s, "dst"), &echo.address());
    c.eq("uid", s["uid"].as_u64(), Some(u64::from(NOBODY)));
    let sessions = d.sessions();
    c.check(
        !sessions.iter().any(|s| s["pid"] == parent),
        format!("a session is attributed to the parent pid {parent}"),
    );
    c.finish(|| probe_context(&d, &[&p, &s]));
}

// ---------------------------------------------------------------------------
// 9. fail closed on SIGKILL, clean takeover on restart

fn pinned_links(status: &Value, agent: &str) -> Option<u64> {
    status["agents"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == agent)?["pinned_links"]
        .as_u64()
}

/// Waits until `pid` has exec'd `comm` (so `cordon run` has joined the cgroup).
fn wait_for_comm(pid: u32, comm: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let now = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if now.trim() == comm {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn fail_closed_on_sigkill_and_clean_takeover_on_restart() {
    require_root!();
    let echo = EchoServer::v4();
    let mut d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let addr = echo.address();

    // One allowed connection first.
    let first = d.probe("bot", As::Nobody, &strs(&tcp_args(&addr, "before")));
    if !echoed(&first, "before") {
        d.fail(&format!("the first agent connection failed: {first}"));
    }
    let first_pid = u64_of(&first, "pid");
    let s = d.wait_session("for the first connection", |s| s["pid"] == first_pid);
    let first_id = str_of(&s, "id").to_owned();
    d.wait_ended(&first_id);
    let links_before = pinned_links(&d.status(), "bot");
    if links_before.unwrap_or(0) == 0 {
        d.fail(&format!(
            "status shows no pinned links for bot: {}",
            pretty(&d.status())
        ));
    }

    // An agent that connects only once the trigger file exists.
    let trigger = d.setup.dir.path().join("trigger");
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.05; done; exec '{}' tcp {addr} --send hi --read 2",
        trigger.display(),
        probe_bin().display()
    );
    let waiting = Background::spawn(
        &mut d.cordon(&["run", "--agent", "bot", "--", "sh", "-c", &script]),
        "agent waiting for the trigger",
    );
    if !wait_for_comm(waiting.pid(), "sh") {
        d.fail("the waiting agent did not start (cordon run never exec'd sh)");
    }
    let accepted_before = echo.accepted();

    d.kill9();
    fs::write(&trigger, b"go").expect("write trigger");
    let out = waiting.finish(Duration::from_secs(20));
    let dead = cordon_tests::parse_probe(&out, "agent connecting while the daemon is dead");
    println!("agent connecting while the daemon is dead -> {dead}");
    thread::sleep(SETTLE);

    let mut c = Checks::new();
    c.check(
        str_of(&dead, "connect") == "error"
            && dead["connect_errno"].as_u64() == Some(ECONNREFUSED),
        format!("with the daemon SIGKILLed the agent's connect should fail with errno 111 (ECONNREFUSED): {dead}"),
    );
    c.eq(
        "echo connections while the daemon was dead (fail closed)",
        echo.accepted(),
        accepted_before,
    );

    d.restart();
    let sessions = d.sessions();
    c.check(
        sessions
            .iter()
            .any(|s| s["id"] == first_id.as_str() && s["verdict"] == "allow"),
        format!("the allowed session {first_id} from before the kill is gone after restart"),
    );
    let after = d.probe("bot", As::Nobody, &strs(&tcp_args(&addr, "after")));
    c.check(
        echoed(&after, "after"),
        format!("after the restart the agent's connection failed: {after}"),
    );
    let after_pid = u64_of(&after, "pid");
    if echoed(&after, "after") {
        let s = d.wait_session("for the connection after restart", |s| {
            s["pid"] == after_pid
        });
        c.eq("dst after restart", str_of(&s, "dst"), &addr);
        c.eq("verdict after restart", str_of(&s, "verdict"), "allow");
    }
    let status = d.status();
    c.eq(
        "pinned links for bot after restart",
        pinned_links(&status, "bot"),
        links_before,
    );
    c.finish(|| probe_context(&d, &[&first, &dead, &after, &status]));
}

// ---------------------------------------------------------------------------
// 10. grant expiry

#[test]
fn expired_grant_is_refused() {
    require_root!();
    let echo = EchoServer::v4();
    let d = Daemon::start(
        Setup::new()
            .agent("bot")
            .resource("echo", &echo.address())
            .grant("bot", "echo", "2020-01-01T00:00:00Z"),
    );
    let p = d.probe("bot", As::Nobody, &strs(&tcp_args(&echo.address(), "late")));
    thread::sleep(SETTLE);
    let mut c = Checks::new();
    c.check(
        refused(&p),
        "a connection under an expired grant was not reset",
    );
    c.eq("echo connections", echo.accepted(), 0);
    let pid = u64_of(&p, "pid");
    let s = d.wait_session(&format!("for probe pid {pid}"), |s| s["pid"] == pid);
    c.eq("verdict", str_of(&s, "verdict"), "deny");
    c.eq("resource", str_of(&s, "resource"), "echo");
    c.check(
        str_of(&s, "reason").contains("expired"),
        format!("reason {:?} does not mention \"expired\"", s["reason"]),
    );
    c.finish(|| probe_context(&d, &[&p, &s]));
}

#[test]
fn live_session_is_closed_when_its_grant_expires() {
    require_root!();
    let echo = EchoServer::v4();
    // Expires ~4 s from now: long enough for the daemon to start and admit
    // the connection, far shorter than the 15 s the agent wants to hold it.
    let expires = cordon_tests::rfc3339_from_now(4);
    let d = Daemon::start(
        Setup::new()
            .agent("bot")
            .resource("echo", &echo.address())
            .grant("bot", "echo", &expires),
    );
    let p = d.probe("bot", As::Nobody, &["hold", &echo.address(), "15"]);
    let mut c = Checks::new();
    c.eq("hold connect", str_of(&p, "connect"), "ok");
    c.check(
        p["closed_after_ms"].as_u64().is_some_and(|ms| ms < 8000),
        format!(
            "the connection was not closed well before 15 s (closed_after_ms {})",
            p["closed_after_ms"]
        ),
    );
    let pid = u64_of(&p, "pid");
    let s = d.wait_session(&format!("for probe pid {pid}"), |s| s["pid"] == pid);
    let s = if s["verdict"] == "allow" {
        d.wait_ended(str_of(&s, "id"))
    } else {
        s
    };
    c.eq("verdict", str_of(&s, "verdict"), "allow");
    c.check(
        str_of(&s, "end_reason").contains("grant expired"),
        format!(
            "end_reason {:?} does not contain \"grant expired\"",
            s["end_reason"]
        ),
    );
    c.finish(|| format!("grant expires {expires}{}", probe_context(&d, &[&p, &s])));
}

// ---------------------------------------------------------------------------
// 12. two daemons side by side

#[test]
fn two_daemons_side_by_side() {
    require_root!();
    let echo_a = EchoServer::v4();
    let echo_b = EchoServer::v4();
    let a = Daemon::start(
        Setup::new()
            .agent("bot-a")
            .resource("echo-a", &echo_a.address())
            .grant("bot-a", "echo-a", FAR_FUTURE),
    );
    let b = Daemon::start(
        Setup::new()
            .agent("bot-b")
            .resource("echo-b", &echo_b.address())
            .grant("bot-b", "echo-b", FAR_FUTURE),
    );
    let pa = a.probe(
        "bot-a",
        As::Nobody,
        &strs(&tcp_args(&echo_a.address(), "via a")),
    );
    let pb = b.probe(
        "bot-b",
        As::Nobody,
        &strs(&tcp_args(&echo_b.address(), "via b")),
    );

    let mut c = Checks::new();
    c.check(
        echoed(&pa, "via a"),
        "agent bot-a got no echo through daemon a",
    );
    c.check(
        echoed(&pb, "via b"),
        "agent bot-b got no echo through daemon b",
    );
    c.eq("echo-a connections", echo_a.accepted(), 1);
    c.eq("echo-b connections", echo_b.accepted(), 1);
    let (pid_a, pid_b) = (u64_of(&pa, "pid"), u64_of(&pb, "pid"));
    a.wait_session("for bot-a on daemon a", |s| s["pid"] == pid_a);
    b.wait_session("for bot-b on daemon b", |s| s["pid"] == pid_b);
    let sa = a.sessions();
    let sb = b.sessions();
    c.check(
        sa.len() == 1
            && sa
                .iter()
                .all(|s| s["agent"] == "bot-a" && s["pid"] == pid_a),
        format!(
            "daemon a should hold exactly bot-a's one session: {}",
            pretty(&Value::Array(sa.clone()))
        ),
    );
    c.check(
        sb.len() == 1
            && sb
                .iter()
                .all(|s| s["agent"] == "bot-b" && s["pid"] == pid_b),
        format!(
            "daemon b should hold exactly bot-b's one session: {}",
            pretty(&Value::Array(sb.clone()))
        ),
    );
    c.finish(|| {
        format!(
            "{}\n=== daemon b:\n{}",
            probe_context(&a, &[&pa, &pb]),
            b.context()
        )
    });
}

// ---------------------------------------------------------------------------
// 13. dialing the proxy directly

#[test]
fn direct_dial_to_the_proxy_is_refused_and_recorded() {
    require_root!();
    let echo = EchoServer::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let proxy = d.setup.proxy_addr();
    let p = probe_outside(&strs(&tcp_args(&proxy, "let me in")));
    thread::sleep(SETTLE);

    let mut c = Checks::new();
    c.check(
        refused(&p),
        "a direct connection to the proxy port was not reset",
    );
    c.eq("echo connections", echo.accepted(), 0);
    let s = d.wait_session("refusing the direct dial", |s| {
        str_of(s, "dst").contains("(direct to proxy)")
    });
    c.eq("verdict", str_of(&s, "verdict"), "deny");
    c.check(
        str_of(&s, "reason").contains("no kernel attestation"),
        format!("reason {:?} lacks \"no kernel attestation\"", s["reason"]),
    );
    c.finish(|| probe_context(&d, &[&p, &s]));
}

/// (individual records, refusals they stand for in all) among the deny
/// records `pick` selects; a summary record stands for its `refusals`.
fn refusal_totals(sessions: &[Value], pick: impl Fn(&Value) -> bool) -> (u64, u64) {
    let mut individual = 0;
    let mut total = 0;
    for s in sessions
        .iter()
        .filter(|s| s["verdict"] == "deny" && pick(s))
    {
        match s["refusals"].as_u64() {
            Some(n) => total += n,
            None => {
                individual += 1;
                total += 1;
            }
        }
    }
    (individual, total)
}

#[test]
fn refusal_floods_are_recorded_up_to_a_burst_then_counted_in_summaries() {
    require_root!();
    let echo = EchoServer::v4();
    let undeclared = EchoServer::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    const AGENT_DIALS: u64 = 200;
    const DIRECT_DIALS: u64 = 120;
    // An agent dialing an undeclared destination in a loop.
    let (host, port) = undeclared
        .address()
        .rsplit_once(':')
        .map(|(h, p)| (h.to_owned(), p.to_owned()))
        .expect("host:port");
    let script = format!(
        r#"
import socket
refused = 0
for _ in range({AGENT_DIALS}):
    try:
        s = socket.create_connection(("{host}", {port}), timeout=5)
        s.sendall(b"x")
        if s.recv(16) == b"": refused += 1
    except (ConnectionResetError, ConnectionRefusedError, BrokenPipeError):
        refused += 1
print(refused)
"#
    );
    let out = d
        .cordon(&[
            "run",
            "--agent",
            "bot",
            "--",
            "/usr/bin/python3",
            "-c",
            &script,
        ])
        .output()
        .expect("cordon run");
    let said = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    // Any local process dialing the proxy port directly, in a loop.
    let proxy = d.setup.proxy_addr();
    for _ in 0..DIRECT_DIALS {
        if let Ok(mut s) = std::net::TcpStream::connect(&proxy) {
            let _ = std::io::Write::write_all(&mut s, b"x");
            let _ = std::io::Read::read(&mut s, &mut [0u8; 16]);
        }
    }

    let mut c = Checks::new();
    c.eq(
        "refused agent dials",
        said.as_str(),
        &AGENT_DIALS.to_string(),
    );
    c.eq("undeclared listener connections", undeclared.accepted(), 0);
    // Summaries are written every 5 s: wait until every refusal is counted.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut bot, mut direct);
    loop {
        let sessions = d.sessions();
        bot = refusal_totals(&sessions, |s| s["agent"] == "bot");
        direct = refusal_totals(&sessions, |s| s["agent"].is_null());
        if (bot.1 >= AGENT_DIALS && direct.1 >= DIRECT_DIALS) || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    c.eq("agent refusals accounted for", bot.1, AGENT_DIALS);
    c.eq("direct dials accounted for", direct.1, DIRECT_DIALS);
    // Recorded one by one: a burst of 32, then 1/s (the loops take seconds).
    c.check(
        bot.0 >= 32 && bot.0 < 60,
        format!("{} agent refusals recorded one by one", bot.0),
    );
    c.check(
        direct.0 >= 32 && direct.0 < 60,
        format!("{} direct dials recorded one by one", direct.0),
    );
    let sessions = d.sessions();
    let summary = sessions
        .iter()
        .find(|s| s["agent"] == "bot" && s["refusals"].is_u64())
        .cloned()
        .unwrap_or_default();
    c.check(
        str_of(&summary, "reason").contains("more refused connections from agent bot")
            && str_of(&summary, "reason").contains("not a declared resource")
            && str_of(&summary, "dst").contains(&undeclared.address()),
        format!("summary record: {}", pretty(&summary)),
    );
    let shown = d.cordon_output(&["sessions", "show", str_of(&summary, "id")]);
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    c.check(
        shown.contains(&format!(
            "summary of   {} refused connections",
            summary["refusals"].as_u64().unwrap_or(0)
        )),
        format!("sessions show of the summary: {shown}"),
    );
    // The daemon still serves the agent.
    let p = d.probe(
        "bot",
        As::Nobody,
        &strs(&tcp_args(&echo.address(), "still here")),
    );
    c.check(
        echoed(&p, "still here"),
        "the allowed resource after the flood",
    );
    c.finish(|| probe_context(&d, &[&summary]));
}

// ---------------------------------------------------------------------------
// 15. TCP fast open

#[test]
fn tcp_fast_open_is_captured() {
    require_root!();
    let echo = EchoServer::v4();
    let undeclared = EchoServer::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));

    let to_undeclared = d.probe("bot", As::Nobody, &["tfo", &undeclared.address()]);
    let to_declared = d.probe("bot", As::Nobody, &["tfo", &echo.address()]);
    thread::sleep(SETTLE);

    let mut c = Checks::new();
    c.eq(
        "undeclared listener connections after a TFO sendto",
        undeclared.accepted(),
        0,
    );
    // Through the gateway (then recorded) or refused: either is fine.
    if to_undeclared["ok"] == Value::Bool(true) {
        let pid = u64_of(&to_undeclared, "pid");
        let s = d.wait_session("for the TFO dial to the undeclared listener", |s| {
            s["pid"] == pid
        });
        c.eq("undeclared TFO verdict", str_of(&s, "verdict"), "deny");
        c.eq(
            "undeclared TFO dst",
            str_of(&s, "dst"),
            &undeclared.address(),
        );
    }
    if to_declared["ok"] == Value::Bool(true) {
        let pid = u64_of(&to_declared, "pid");
        let s = d.wait_session("for the TFO dial to the declared echo", |s| s["pid"] == pid);
        c.eq("declared TFO verdict", str_of(&s, "verdict"), "allow");
        c.eq("declared TFO dst", str_of(&s, "dst"), &echo.address());
    }
    c.finish(|| probe_context(&d, &[&to_undeclared, &to_declared]));
}

// ---------------------------------------------------------------------------
// 16. unknown agent

#[test]
fn run_with_unknown_agent_fails() {
    require_root!();
    let echo = EchoServer::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let out = d.cordon_output(&["run", "--agent", "nobody-bot", "--", "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut c = Checks::new();
    c.check(
        !out.status.success(),
        format!("cordon run --agent nobody-bot exited with {}", out.status),
    );
    c.check(
        stderr.contains("unknown agent"),
        format!("stderr does not say \"unknown agent\": {stderr}"),
    );
    c.finish(|| d.context());
}
