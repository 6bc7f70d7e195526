//! The daemon's refusal of bad configs, `cordon status` without a daemon, and
//! the systemd unit file. These do not attach anything to the kernel when the
//! daemon behaves, so they run without root too.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cordon_tests::{cordon_bin, wait_output, Setup, FAR_FUTURE};

/// Writes `text` as the config of `setup`, runs `cordon --config F daemon` and
/// expects it to exit non-zero within a few seconds with a message naming the
/// file and every one of `expect`.
fn rejects(setup: &Setup, text: &str, expect: &[&str]) {
    let path = setup.config_path();
    fs::write(&path, text).expect("write config");
    let started = Instant::now();
    let child = Command::new(cordon_bin())
        .arg("--config")
        .arg(&path)
        .arg("daemon")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cordon daemon");
    let (out, timed_out) = wait_output(child, Duration::from_secs(10));
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if timed_out {
        // It accepted the config and ran: undo whatever it installed.
        let _ = Command::new(cordon_bin())
            .arg("--config")
            .arg(&path)
            .args(["daemon", "--uninstall"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let mut problems = Vec::new();
    if timed_out {
        problems
            .push("the daemon accepted the config and kept running (killed after 10 s)".to_owned());
    } else if out.status.success() {
        problems.push("the daemon exited 0".to_owned());
    }
    if elapsed > Duration::from_secs(5) {
        problems.push(format!("rejecting took {elapsed:?} (more than 5 s)"));
    }
    let file = path.to_string_lossy();
    if !stderr.contains(file.as_ref()) {
        problems.push(format!("stderr does not name the file {file}"));
    }
    for want in expect {
        if !stderr.contains(want) {
            problems.push(format!("stderr does not contain {want:?}"));
        }
    }
    assert!(
        problems.is_empty(),
        "bad config not rejected properly:\n  - {}\n--- config:\n{text}\n--- exit: {}\n--- stderr:\n{stderr}",
        problems.join("\n  - "),
        out.status
    );
}

fn base() -> Setup {
    Setup::bot_with_echo("127.0.0.1:9")
}

#[test]
fn unknown_key_is_rejected() {
    let setup = base();
    let text = setup.render().replace(
        "upstream_connect_timeout_secs = 5",
        "upstream_connect_timeout_secs = 5\nlisten_backlog_typo = 7",
    );
    assert!(text.contains("listen_backlog_typo"));
    rejects(&setup, &text, &["unknown field", "listen_backlog_typo"]);
}

#[test]
fn unknown_key_in_a_resource_is_rejected() {
    let setup = base();
    let text = setup.render().replace(
        "protocol = \"tcp\"",
        "protocol = \"tcp\"\nadress = \"127.0.0.1:1\"",
    );
    assert!(text.contains("adress"));
    rejects(&setup, &text, &["unknown field", "adress"]);
}

#[test]
fn bad_resource_address_is_rejected() {
    for bad in ["127.0.0.1", "localhost:notaport", "999.1.1.1:80"] {
        let setup = Setup::bot_with_echo(bad);
        rejects(&setup, &setup.render(), &["resource[0].address"]);
    }
}

#[test]
fn bad_listen_address_is_rejected() {
    // The proxy needs an IPv4 address with a fixed, non-zero port.
    for bad in ["127.0.0.1:0", "[::1]:15001", "127.0.0.1", "localhost:15001"] {
        let setup = base();
        let text = setup.render().replace(
            &format!("listen = \"{}\"", setup.proxy_addr()),
            &format!("listen = \"{bad}\""),
        );
        assert!(text.contains(&format!("listen = \"{bad}\"")));
        rejects(&setup, &text, &["daemon.listen"]);
    }
}

#[test]
fn bad_dns_resolver_is_rejected() {
    let setup = base().dns_resolver("not-an-ip");
    rejects(&setup, &setup.render(), &["daemon.dns_resolvers[0]"]);
}

#[test]
fn grant_to_undeclared_agent_is_rejected() {
    let setup = base().grant("ghost-bot", "echo", FAR_FUTURE);
    // grant[0] is bot's; the second one names an undeclared agent.
    rejects(&setup, &setup.render(), &["grant[1].agent"]);
    let setup = Setup::new()
        .agent("bot")
        .resource("echo", "127.0.0.1:9")
        .grant("ghost-bot", "echo", FAR_FUTURE);
    rejects(&setup, &setup.render(), &["grant[0].agent"]);
}

#[test]
fn non_rfc3339_expiry_is_rejected() {
    for bad in ["next tuesday", "2030-01-01", "2030-01-01 00:00:00"] {
        let setup = Setup::new()
            .agent("bot")
            .resource("echo", "127.0.0.1:9")
            .grant("bot", "echo", bad);
        rejects(&setup, &setup.render(), &["grant[0].expires"]);
    }
}

#[test]
fn toml_syntax_error_is_rejected() {
    let setup = base();
    let text = format!("{}\n[[agent]\nname = \"broken\"\n", setup.render());
    rejects(&setup, &text, &[]);
}

#[test]
fn status_fails_when_no_daemon_runs() {
    let setup = base();
    let path = setup.write();
    assert!(!setup.control_socket().exists());
    let child = Command::new(cordon_bin())
        .arg("--config")
        .arg(&path)
        .arg("status")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cordon status");
    let (out, timed_out) = wait_output(child, Duration::from_secs(10));
    assert!(!timed_out, "cordon status hung without a daemon");
    assert!(
        !out.status.success(),
        "cordon status exited 0 without a daemon\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let json_child = Command::new(cordon_bin())
        .arg("--config")
        .arg(&path)
        .args(["status", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run cordon status --json");
    let (out, timed_out) = wait_output(json_child, Duration::from_secs(10));
    assert!(!timed_out, "cordon status --json hung without a daemon");
    assert!(
        !out.status.success(),
        "cordon status --json exited 0 without a daemon: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn systemd_unit_file_verifies() {
    let Ok(found) = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    else {
        println!("skipping: systemd-analyze is not installed");
        return;
    };
    if !found.success() {
        println!("skipping: systemd-analyze --version failed");
        return;
    }
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../daemon/cordon.service");
    let text = fs::read_to_string(&unit).expect("read daemon/cordon.service");
    let exec_start = text
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("the unit has an ExecStart= line");
    let binary = exec_start
        .trim_start_matches("ExecStart=")
        .trim_start_matches(['-', '+', '@', '!', ':'])
        .split_whitespace()
        .next()
        .expect("ExecStart= names a binary");
    let bin = cordon_bin();
    let text = text.replace(binary, &bin.to_string_lossy());
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("cordon.service");
    fs::write(&copy, &text).expect("write unit copy");

    let child = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run systemd-analyze verify");
    let (out, timed_out) = wait_output(child, Duration::from_secs(60));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let about_unit: Vec<&str> = all
        .lines()
        .filter(|l| l.contains("cordon.service") || l.contains(&*copy.to_string_lossy()))
        .collect();
    assert!(
        !timed_out && out.status.success() && about_unit.is_empty(),
        "systemd-analyze verify {} (exit {}, timed out: {timed_out}) complained:\n{all}\n--- unit:\n{text}",
        copy.display(),
        out.status
    );
}
