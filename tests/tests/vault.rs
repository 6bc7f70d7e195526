//! `cordon vault set|list|rm` against a real daemon: secrets go in on stdin,
//! are never printed by any command or logged by the daemon, are sealed on
//! disk (no plaintext anywhere under the state directory), survive a SIGKILL
//! and a restart, and only root may touch them.
//!
//! Run as root (CI does); without root they skip, except in CI where they fail.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Once;
use std::time::Duration;

use cordon_tests::serde_json::Value;
use cordon_tests::{
    cordon_bin, pretty, require_root, wait_output, Checks, Daemon, EchoServer, Setup, NOBODY,
    PROBE_TIME_LIMIT,
};

/// The daemons these tests start log at debug level, so a leak at any level
/// shows. The harness passes the test process's environment on; this is set
/// once, before the first daemon starts, and only read by child processes.
fn verbose_daemon_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::env::set_var("CORDON_LOG", "debug"));
}

fn start() -> (EchoServer, Daemon) {
    verbose_daemon_logs();
    let echo = EchoServer::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    (echo, d)
}

/// A secret no other test or file holds.
fn unique_secret(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("S3cr3t-{tag}-{}-{nanos}", std::process::id())
}

/// `cordon --config F ARGS` with `stdin` piped in, optionally as uid/gid
/// 65534 (via setpriv).
fn cordon_stdin(d: &Daemon, args: &[&str], stdin: &[u8], as_nobody: bool) -> Output {
    let mut cmd = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
            "--clear-groups",
        ])
        .arg(cordon_bin());
        c
    } else {
        Command::new(cordon_bin())
    };
    cmd.arg("--config").arg(d.config()).args(args);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    if let Some(mut input) = child.stdin.take() {
        // The CLI may refuse before reading (e.g. a bad name): ignore EPIPE.
        let _ = input.write_all(stdin);
    }
    let (out, timed_out) = wait_output(child, PROBE_TIME_LIMIT);
    assert!(!timed_out, "cordon {args:?} did not finish");
    out
}

fn text(out: &Output) -> String {
    format!(
        "exit {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(t) = e.file_type() else { continue };
            if t.is_dir() {
                todo.push(e.path());
            } else if t.is_file() {
                out.push(e.path());
            }
        }
    }
    out
}

/// Files under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_under(dir)
        .into_iter()
        .filter(|p| fs::read(p).is_ok_and(|b| contains(&b, needle)))
        .collect()
}

/// `cordon vault list --json` as an array (panics otherwise).
fn list_json(d: &Daemon) -> Vec<Value> {
    let out = d.cordon_output(&["vault", "list", "--json"]);
    assert!(out.status.success(), "vault list --json: {}", text(&out));
    match cordon_tests::serde_json::from_slice(&out.stdout) {
        Ok(Value::Array(v)) => v,
        other => panic!(
            "vault list --json is not an array: {other:?}\n{}",
            text(&out)
        ),
    }
}

fn entry<'a>(list: &'a [Value], name: &str) -> Option<&'a Value> {
    list.iter().find(|e| e["name"] == name)
}

fn state_dir(d: &Daemon) -> PathBuf {
    d.setup.dir.path().join("state")
}

#[test]
fn vault_set_list_rm_never_show_the_secret() {
    require_root!();
    let (_echo, mut d) = start();
    let mut c = Checks::new();
    let name = "vault-test-orders-db";
    let password = unique_secret("pw");
    let ssh_key = format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n-----END OPENSSH PRIVATE KEY-----\n",
        unique_secret("key")
    );
    let mut outputs = Vec::new();

    // `echo secret | cordon vault set NAME`: the line break is not part of it.
    let set = cordon_stdin(
        &d,
        &["vault", "set", name],
        format!("{password}\n").as_bytes(),
        false,
    );
    c.check(set.status.success(), format!("vault set: {}", text(&set)));
    c.check(
        String::from_utf8_lossy(&set.stdout).contains(name),
        format!("vault set names the entry: {}", text(&set)),
    );
    outputs.push(set);
    let set_key = cordon_stdin(
        &d,
        &["vault", "set", "deploy-key", "--kind", "ssh-key"],
        ssh_key.as_bytes(),
        false,
    );
    c.check(
        set_key.status.success(),
        format!("vault set --kind ssh-key: {}", text(&set_key)),
    );
    outputs.push(set_key);

    let human = d.cordon_output(&["vault", "list"]);
    let human_out = String::from_utf8_lossy(&human.stdout).into_owned();
    c.check(
        human.status.success()
            && human_out.contains(name)
            && human_out.contains("password")
            && human_out.contains("deploy-key")
            && human_out.contains("ssh-key"),
        format!("vault list: {}", text(&human)),
    );
    outputs.push(human);

    let list = list_json(&d);
    let db = entry(&list, name);
    c.eq(
        "kind of the password entry",
        db.map(|e| e["kind"].clone()),
        Some("password".into()),
    );
    c.eq(
        "kind of the key entry",
        entry(&list, "deploy-key").map(|e| e["kind"].clone()),
        Some("ssh-key".into()),
    );
    for e in &list {
        let mut keys: Vec<&str> = e
            .as_object()
            .map(|o| o.keys().map(String::as_str).collect())
            .unwrap_or_default();
        keys.sort_unstable();
        c.eq(
            "fields of a listed entry",
            keys,
            vec!["kind", "name", "updated_at"],
        );
    }
    c.check(
        db.is_some_and(|e| e["updated_at"].as_str().is_some_and(|t| t.ends_with('Z'))),
        format!(
            "updated_at is RFC 3339 UTC: {}",
            pretty(&Value::Array(list.clone()))
        ),
    );
    outputs.push(d.cordon_output(&["vault", "list", "--json"]));

    // Refusals, none of which may echo the secret either.
    let bad_name = cordon_stdin(&d, &["vault", "set", "a/b"], password.as_bytes(), false);
    c.check(
        !bad_name.status.success()
            && String::from_utf8_lossy(&bad_name.stderr).contains("invalid vault entry name"),
        format!("a bad name is refused: {}", text(&bad_name)),
    );
    outputs.push(bad_name);
    let empty = cordon_stdin(&d, &["vault", "set", "empty"], b"\n", false);
    c.check(
        !empty.status.success() && String::from_utf8_lossy(&empty.stderr).contains("empty"),
        format!("an empty secret is refused: {}", text(&empty)),
    );
    outputs.push(empty);
    c.check(
        entry(&list_json(&d), "empty").is_none(),
        "the empty secret was not stored",
    );

    // The key file: 32 bytes, owner-only.
    let key = state_dir(&d).join("vault.key");
    let meta = fs::metadata(&key);
    c.check(
        meta.as_ref()
            .is_ok_and(|m| m.permissions().mode() & 0o777 == 0o600 && m.len() == 32),
        format!(
            "{} should be a 32-byte file with mode 0600: {meta:?}",
            key.display()
        ),
    );

    // rm, then it is gone; rm again is an error.
    let rm = d.cordon_output(&["vault", "rm", "deploy-key"]);
    c.check(rm.status.success(), format!("vault rm: {}", text(&rm)));
    outputs.push(rm);
    let after = list_json(&d);
    c.check(
        entry(&after, "deploy-key").is_none() && entry(&after, name).is_some(),
        format!("after rm: {}", pretty(&Value::Array(after.clone()))),
    );
    let rm_again = d.cordon_output(&["vault", "rm", "deploy-key"]);
    c.check(
        !rm_again.status.success()
            && String::from_utf8_lossy(&rm_again.stderr).contains("no vault entry `deploy-key`"),
        format!("vault rm of a missing entry: {}", text(&rm_again)),
    );
    outputs.push(rm_again);

    // Nothing printed the secrets.
    let secrets = [
        password.as_bytes(),
        ssh_key.as_bytes(),
        ssh_key.lines().nth(1).unwrap_or("").as_bytes(),
    ];
    for out in &outputs {
        for s in secrets {
            c.check(
                !contains(&out.stdout, s) && !contains(&out.stderr, s),
                format!("a command printed a secret: {}", text(out)),
            );
        }
    }

    // On disk only sealed: stop the daemon (sled flushes everything), then
    // search every file of this test (state dir, config, daemon logs).
    let stopped = d.stop();
    c.check(
        stopped.is_some_and(|s| s.success()),
        format!("daemon stop: {stopped:?}"),
    );
    let root = d.setup.dir.path().to_path_buf();
    c.check(
        !files_containing(&state_dir(&d), name.as_bytes()).is_empty(),
        "the entry's name is nowhere under the state dir: the search looks in the wrong place",
    );
    for s in secrets {
        let found = files_containing(&root, s);
        c.check(
            found.is_empty(),
            format!("plaintext secret found in {found:?}"),
        );
    }
    let log = d.stderr();
    c.check(
        log.contains("vault entry stored"),
        "the daemon logs that an entry was stored",
    );
    for s in secrets {
        c.check(
            !contains(log.as_bytes(), s),
            "the daemon's log holds a secret",
        );
    }
    c.finish(|| d.context());
}

#[test]
fn vault_is_refused_to_unprivileged_callers() {
    require_root!();
    let (_echo, d) = start();
    let mut c = Checks::new();
    let secret = unique_secret("root");
    let set = cordon_stdin(&d, &["vault", "set", "db1"], secret.as_bytes(), false);
    c.check(
        set.status.success(),
        format!("vault set as root: {}", text(&set)),
    );

    let nobody_secret = unique_secret("nobody");
    for (args, input) in [
        (vec!["vault", "list"], ""),
        (vec!["vault", "list", "--json"], ""),
        (vec!["vault", "set", "db1"], nobody_secret.as_str()),
        (vec!["vault", "set", "mine"], nobody_secret.as_str()),
        (vec!["vault", "rm", "db1"], ""),
    ] {
        let out = cordon_stdin(&d, &args, input.as_bytes(), true);
        let stderr = String::from_utf8_lossy(&out.stderr);
        c.check(
            !out.status.success() && stderr.contains("permission denied"),
            format!("{args:?} as uid {NOBODY}: {}", text(&out)),
        );
        c.check(
            !contains(&out.stdout, secret.as_bytes()) && !contains(&out.stdout, b"db1"),
            format!(
                "{args:?} as uid {NOBODY} printed vault contents: {}",
                text(&out)
            ),
        );
    }
    let list = list_json(&d);
    c.check(
        entry(&list, "db1").is_some() && entry(&list, "mine").is_none() && list.len() == 1,
        format!(
            "nobody changed nothing: {}",
            pretty(&Value::Array(list.clone()))
        ),
    );
    c.finish(|| d.context());
}

#[test]
fn vault_entries_survive_sigkill_and_restart() {
    require_root!();
    let (_echo, mut d) = start();
    let mut c = Checks::new();
    let set = cordon_stdin(
        &d,
        &["vault", "set", "db1"],
        unique_secret("a").as_bytes(),
        false,
    );
    c.check(set.status.success(), format!("vault set: {}", text(&set)));
    let before = list_json(&d);
    let key = state_dir(&d).join("vault.key");
    let key_before = fs::read(&key).unwrap_or_default();

    // `set` returned after a flush: a SIGKILL right after loses nothing.
    d.kill9();
    d.restart();
    let after = list_json(&d);
    c.eq(
        "entry after SIGKILL + restart",
        entry(&after, "db1").cloned(),
        entry(&before, "db1").cloned(),
    );
    c.eq(
        "key file after restart",
        fs::read(&key).unwrap_or_default(),
        key_before,
    );

    // Rotation: a new value (and kind) replaces the old one.
    std::thread::sleep(Duration::from_millis(1100));
    let rotate = cordon_stdin(
        &d,
        &["vault", "set", "db1", "--kind", "token"],
        unique_secret("b").as_bytes(),
        false,
    );
    c.check(
        rotate.status.success(),
        format!("vault set again: {}", text(&rotate)),
    );
    d.restart();
    let rotated = list_json(&d);
    let db = entry(&rotated, "db1");
    c.check(
        rotated.len() == 1
            && db.is_some_and(|e| e["kind"] == "token")
            && db.map(|e| &e["updated_at"]) != entry(&before, "db1").map(|e| &e["updated_at"]),
        format!(
            "after rotation and restart: {} (before: {})",
            pretty(&Value::Array(rotated.clone())),
            pretty(&Value::Array(before.clone()))
        ),
    );
    c.finish(|| d.context());
}

#[test]
fn a_vault_key_readable_by_others_stops_the_daemon() {
    require_root!();
    let (_echo, mut d) = start();
    let key = state_dir(&d).join("vault.key");
    d.stop();
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).expect("chmod key");
    let child = Command::new(cordon_bin())
        .arg("--config")
        .arg(d.config())
        .arg("daemon")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cordon daemon");
    let (out, timed_out) = wait_output(child, Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let mut c = Checks::new();
    c.check(
        !timed_out,
        "the daemon kept running with a world-readable key",
    );
    c.check(!out.status.success(), "the daemon exited 0");
    c.check(
        stderr.contains(&key.display().to_string()) && stderr.contains("chmod 0600"),
        format!("the error names the key file and the fix: {stderr}"),
    );
    // Put it right: the daemon starts again, and Drop cleans up as usual.
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).expect("chmod key back");
    d.restart();
    c.finish(|| format!("{}\n{}", text(&out), d.context()));
}

/// A socket at the control path that the daemon (root) does not serve: the CLI sends it
/// nothing, so a secret on stdin never reaches an impostor.
#[test]
fn the_cli_sends_secrets_only_to_a_root_daemon() {
    require_root!();
    let dir = tempfile::Builder::new()
        .prefix("cordon-impostor-")
        .tempdir()
        .expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o777)).expect("chmod");
    let sock = dir.path().join("control.sock");
    let got = dir.path().join("received");
    // The impostor: an unprivileged process listening where the daemon's socket would be.
    let script = format!(
        "import socket\ns=socket.socket(socket.AF_UNIX)\ns.bind({sock:?})\ns.listen(4)\n\
         c,_=s.accept()\nc.settimeout(3)\ndata=b''\ntry:\n    data=c.recv(65536)\nexcept Exception:\n    pass\n\
         open({got:?},'wb').write(data)\n",
        sock = sock.display().to_string(),
        got = got.display().to_string(),
    );
    let mut impostor = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["/usr/bin/python3", "-c", &script])
        .spawn()
        .expect("impostor");
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let config = dir.path().join("cordon.toml");
    fs::write(
        &config,
        format!(
            "[daemon]\nstate_dir = \"{}\"\ncontrol_socket = \"{}\"\n",
            dir.path().join("state").display(),
            sock.display()
        ),
    )
    .expect("config");
    let mut cmd = Command::new(cordon_bin());
    cmd.arg("--config")
        .arg(&config)
        .args(["vault", "set", "db"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("cordon vault set");
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"impostor-must-not-see-this");
    }
    let (out, _) = wait_output(child, Duration::from_secs(20));
    let _ = impostor.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the CLI talked to an impostor: {err}"
    );
    assert!(err.contains("not by root"), "the CLI says why: {err}");
    let received = fs::read(&got).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&received).contains("impostor-must-not-see-this"),
        "the secret reached the impostor"
    );
}
