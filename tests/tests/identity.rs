//! Identity cannot be borrowed: the kernel's record of an agent connection
//! lives only as long as the agent's socket, so no other local process can
//! present the same source address to the proxy later and be taken for the
//! agent.
//!
//! Run as root (CI does); without root they skip, except in CI where they fail.

use std::{fs, time::Duration};

use cordon_tests::{
    free_port, parse_probe, probe_bin, probe_outside, require_root, str_of, Background, Checks,
    Daemon, EchoServer, Setup,
};

const ECONNREFUSED: u64 = 111;

#[test]
fn a_failed_agent_connect_leaves_no_identity_to_borrow() {
    require_root!();
    let echo = EchoServer::v4();
    let mut d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    let src = format!("127.0.0.1:{}", free_port());

    // The agent dials its resource from a known source port while the
    // daemon is down: the kernel records it, the connect is refused.
    let trigger = d.setup.dir.path().join("trigger");
    let script = format!(
        "while [ ! -e '{}' ]; do sleep 0.05; done; exec '{}' tcp {} --bind {src} --send hi --read 2",
        trigger.display(),
        probe_bin().display(),
        echo.address()
    );
    let waiting = Background::spawn(
        &mut d.cordon(&["run", "--agent", "bot", "--", "sh", "-c", &script]),
        "agent waiting for the trigger",
    );
    std::thread::sleep(Duration::from_millis(500));
    d.kill9();
    fs::write(&trigger, b"go").expect("trigger");
    let refused = parse_probe(&waiting.finish(Duration::from_secs(15)), "agent while down");
    let mut c = Checks::new();
    c.check(
        refused["connect_errno"].as_u64() == Some(ECONNREFUSED),
        format!("the agent's connect should be refused while the daemon is down: {refused}"),
    );

    // Daemon back; a process outside any agent cgroup dials the proxy from
    // the very same source address.
    d.restart();
    let before = echo.accepted();
    let proxy = d.setup.proxy_addr();
    let impostor = probe_outside(&["tcp", &proxy, "--bind", &src, "--send", "hi", "--read", "2"]);
    c.check(
        str_of(&impostor, "received").is_empty(),
        format!("the impostor was relayed as the agent: {impostor}"),
    );
    std::thread::sleep(Duration::from_millis(300));
    c.eq(
        "echo connections from the impostor",
        echo.accepted(),
        before,
    );
    let last = d.wait_session("for the impostor's connection", |s| {
        s["pid"].as_u64().is_none_or(|p| p == 0) || s["agent"].is_null()
    });
    c.eq("impostor session verdict", str_of(&last, "verdict"), "deny");
    c.check(
        str_of(&last, "reason").contains("no kernel attestation"),
        format!("impostor refusal reason: {last}"),
    );
    c.finish(|| d.context());
}
