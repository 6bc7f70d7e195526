//! The SSH gateway end to end: a real OpenSSH server (Debian's sshd on loopback), the real
//! daemon and kernel capture, the unmodified OpenSSH client (`ssh`, `scp`, `sftp`) run inside
//! an agent cgroup as nobody, holding no key. What is asserted is what the agent and the
//! operator see: output, stderr lines, exit statuses, files on the host, the session record,
//! the replay.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use cordon_tests::{
    require_root, run_with_limit,
    ssh::{SshServer, TEST_PASSWORD, TEST_USER},
    Daemon, Setup, FAR_FUTURE, NOBODY,
};
use serde_json::Value;

const LIMIT: Duration = Duration::from_secs(60);

fn policies_dir() -> String {
    format!("{}/../policies", env!("CARGO_MANIFEST_DIR"))
}

/// An ssh resource `host` for `server` with `policy`, the vault entry `host-key`, the
/// server's host key pinned unless `pin` is false, and a grant for `bot` pinned to the test
/// login.
fn ssh_setup(server: &SshServer, policy: &str, pin: Option<&str>, more: &str) -> Setup {
    ssh_setup_in(&policies_dir(), server, policy, pin, more)
}

/// [`ssh_setup`] with policies from `policy_dir`.
fn ssh_setup_in(
    policy_dir: &str,
    server: &SshServer,
    policy: &str,
    pin: Option<&str>,
    more: &str,
) -> Setup {
    let mut s = Setup::new()
        .agent("bot")
        .daemon_key(&format!("policy_dir = \"{policy_dir}\""));
    let pin = pin
        .map(|k| format!("host_keys = [\"{k}\"]\n"))
        .unwrap_or_default();
    s.extra = format!(
        "\n[[resource]]\nname = \"host\"\nprotocol = \"ssh\"\naddress = \"{}\"\ncredential = \"host-key\"\npolicy = \"{policy}\"\n{pin}{more}\n[[grant]]\nagent = \"bot\"\nresource = \"host\"\nexpires = \"{FAR_FUTURE}\"\nlogin = \"{TEST_USER}\"\n",
        server.address()
    );
    s
}

/// The agent's ssh configuration from `cordon ssh-config`, written where nobody can read it.
struct AgentSsh {
    config: PathBuf,
}

fn agent_ssh(d: &Daemon) -> AgentSsh {
    let dir = d.setup.dir.path().join("agent-ssh");
    let _ = fs::create_dir(&dir);
    let known = dir.join("known_hosts");
    let out = d.cordon_output(&["ssh-config", "--agent", "bot", "--known-hosts"]);
    assert!(
        out.status.success(),
        "ssh-config --known-hosts: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::write(&known, &out.stdout).expect("write known_hosts");
    let out = d.cordon_output(&[
        "ssh-config",
        "--agent",
        "bot",
        "--known-hosts-file",
        &known.display().to_string(),
    ]);
    assert!(
        out.status.success(),
        "ssh-config: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.join("config");
    fs::write(&config, &out.stdout).expect("write ssh config");
    AgentSsh { config }
}

fn as_nobody(argv: Vec<String>) -> Vec<String> {
    cordon_tests::pg::as_nobody(argv)
}

/// `ssh -F CONFIG host ARGS...` inside agent `bot`, as nobody.
fn agent_ssh_cmd(d: &Daemon, a: &AgentSsh, args: &[&str]) -> Command {
    let mut argv = vec![
        "ssh".to_owned(),
        "-F".into(),
        a.config.display().to_string(),
    ];
    argv.extend(args.iter().map(|s| (*s).to_owned()));
    let mut cmd = d.cordon(&["run", "--agent", "bot", "--"]);
    cmd.args(as_nobody(argv));
    cmd.env("HOME", "/nonexistent");
    cmd.env_remove("SSH_AUTH_SOCK");
    cmd
}

fn agent_ssh_run(d: &Daemon, a: &AgentSsh, args: &[&str]) -> Output {
    run_with_limit(&mut agent_ssh_cmd(d, a, args), LIMIT)
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The newest ended, allowed ssh session, as `sessions show --json` prints it.
fn last_ssh_session(d: &Daemon) -> Value {
    let s = d.wait_session("an ssh session", |s| {
        s["protocol"] == "ssh" && s["verdict"] == "allow" && !s["ended_at"].is_null()
    });
    let id = s["id"].as_str().expect("id").to_owned();
    let out = d.cordon_output(&["sessions", "show", &id, "--json"]);
    serde_json::from_slice(&out.stdout).expect("sessions show --json")
}

fn start(policy: &str) -> (SshServer, Daemon, AgentSsh) {
    let server = SshServer::start().expect("sshd");
    let d = Daemon::start(ssh_setup(&server, policy, Some(&server.host_key), ""));
    d.vault_set("host-key", "ssh-key", &server.client_key());
    let a = agent_ssh(&d);
    (server, d, a)
}

#[test]
fn exec_allowed_denied_and_evasions_refused() {
    require_root!();
    let (server, d, a) = start("ssh-readonly");
    let marker = server.home.join("pwned");

    let out = agent_ssh_run(&d, &a, &["host", "uptime"]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("load average"),
        "uptime through cordon: {}\n{}\n{}",
        text(&out),
        d.context(),
        server.log()
    );

    let touch = format!("touch {}", marker.display());
    let attempts = [
        touch.clone(),
        format!("uptime; {touch}"),
        format!("uptime && {touch}"),
        format!("uptime || {touch}"),
        format!("uptime | {touch}"),
        format!("uptime\n{touch}"),
        format!("uptime $({touch})"),
        format!("uptime `{touch}`"),
        format!("uptime > {}", marker.display()),
        format!("sh -c '{touch}'"),
        format!("FOO=1 {touch}"),
        format!("u'p'time; {touch}"),
        format!("eval {touch}"),
        format!("uptime & {touch}"),
    ];
    for attempt in &attempts {
        let out = agent_ssh_run(&d, &a, &["host", attempt]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(126),
            "`{attempt}` should be denied with exit 126: {}",
            text(&out)
        );
        assert!(
            err.contains("cordon: denied by "),
            "`{attempt}`: stderr should name the rule: {err}"
        );
    }
    assert!(!marker.exists(), "a denied command ran on the host");

    // Quote removal: u'p'time is uptime.
    let out = agent_ssh_run(&d, &a, &["host", "u'p'time"]);
    assert!(out.status.success(), "u'p'time: {}", text(&out));

    // The connection stays usable: several channels in one connection (ControlMaster-less:
    // a shell-less session with two execs is not possible in OpenSSH, so check a denied then
    // an allowed command in a row, then the session records).
    let out = agent_ssh_run(&d, &a, &["host", "df -h"]);
    assert!(out.status.success(), "df -h: {}", text(&out));

    let session = last_ssh_session(&d);
    let shown = session.to_string();
    assert!(
        shown.contains("df -h"),
        "session show lists the command: {shown}"
    );
    let out = d.cordon_output(&["sessions", "list"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ssh"),
        "sessions list shows ssh sessions"
    );
    // A denial is in the record with its rule.
    let all = d.sessions();
    let denied_recorded = all.iter().any(|s| {
        let id = s["id"].as_str().unwrap_or_default();
        let out = d.cordon_output(&["sessions", "show", id, "--json"]);
        String::from_utf8_lossy(&out.stdout).contains(&format!("touch {}", marker.display()))
    });
    assert!(denied_recorded, "the denied command is recorded");

    // The key is never visible to the agent: not in what it received, not readable from the
    // daemon's state directory, not in the daemon's log.
    let key = server.client_key();
    let key_body: String = key
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .join("");
    assert!(key_body.len() > 40);
    let state = d.setup.dir.path().join("state");
    let probe = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg("sh")
        .arg("-c")
        .arg(format!(
            "cat {}/* 2>&1; ls -la {} 2>&1",
            state.display(),
            state.display()
        ))
        .output()
        .expect("setpriv");
    let seen = String::from_utf8_lossy(&probe.stdout);
    let first = key_body.get(..40).unwrap_or_default();
    assert!(
        !seen.contains(first),
        "nobody read the key from the state dir"
    );
    assert!(
        !d.stderr().contains(first),
        "the key is in the daemon's log"
    );
    for s in &all {
        let id = s["id"].as_str().unwrap_or_default();
        let out = d.cordon_output(&["export", id, "--format", "jsonl"]);
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains(first),
            "the key is in a recording"
        );
    }
}

#[test]
fn login_pin_and_unknown_user_refused_with_reason() {
    require_root!();
    let (_server, d, a) = start("ssh-readonly");
    let out = agent_ssh_run(&d, &a, &["-l", "root", "host", "uptime"]);
    assert!(!out.status.success(), "login as root must be refused");
    let t = text(&out);
    assert!(
        t.contains("cordon:") && t.contains("login `root`"),
        "the agent is told why: {t}"
    );
}

#[test]
fn interactive_shell_is_recorded_and_replayed_byte_for_byte() {
    require_root!();
    let (server, d, a) = start("ssh-ops");
    let marker = server.home.join("typed-pwned");
    let mut cmd = agent_ssh_cmd(&d, &a, &["-tt", "host"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ssh -tt");
    let mut stdin = child.stdin.take().expect("stdin");
    let script = [
        "echo cordon-first-line\r".to_owned(),
        format!("touch {}\r", marker.display()),
        // Cursor-to-start then kill-line, then Enter: Cordon drops ^A, so ^U kills the
        // whole line on the host as well, and nothing runs.
        format!("touch {}\x01\x15\r", marker.display()),
        "echo cordon-$((40+2))\r".to_owned(),
        "echo cordon-second-line\r".to_owned(),
        "exit\r".to_owned(),
    ];
    std::thread::spawn(move || {
        for line in script {
            std::thread::sleep(Duration::from_millis(700));
            let _ = stdin.write_all(line.as_bytes());
            let _ = stdin.flush();
        }
        std::thread::sleep(Duration::from_secs(2));
    });
    let (out, _) = cordon_tests::wait_output(child, LIMIT);
    let client_saw = out.stdout.clone();
    let shown = String::from_utf8_lossy(&client_saw);
    assert!(
        shown.contains("cordon-second-line"),
        "the shell ran: {}\n{}",
        text(&out),
        d.context()
    );
    assert!(!marker.exists(), "a denied typed line ran");
    assert!(
        shown.contains("cordon: denied by ssh-ops/default"),
        "the denied line is explained in the terminal: {shown}"
    );
    assert!(
        shown.contains("cordon: denied by builtin/arithmetic"),
        "a line the parser cannot decide is refused: {shown}"
    );
    assert!(
        !shown.contains("cordon-42"),
        "the refused line ran: {shown}"
    );

    let session = last_ssh_session(&d);
    let id = session["id"].as_str().expect("id").to_owned();
    let replay = d.cordon_output(&["replay", &id, "--no-wait"]);
    assert!(replay.status.success(), "replay: {}", text(&replay));
    assert_eq!(
        String::from_utf8_lossy(&replay.stdout),
        String::from_utf8_lossy(&client_saw),
        "replay --no-wait prints exactly what the client received"
    );
    let cast = d.cordon_output(&["export", &id, "--format", "asciicast"]);
    assert!(cast.status.success(), "export: {}", text(&cast));
    let cast = String::from_utf8_lossy(&cast.stdout);
    let header: Value =
        serde_json::from_str(cast.lines().next().unwrap_or_default()).expect("asciicast header");
    assert_eq!(header["version"], 2, "{header}");
    assert!(
        cast.contains("cordon-second-line"),
        "asciicast has the output"
    );
}

#[test]
fn sftp_and_scp_read_only() {
    require_root!();
    let (server, d, a) = start("ssh-readonly");
    // A file the agent may read (ssh-readonly allows /tmp/**) and one it may not.
    let dir = shared_tmpdir("cordon-sftp-");
    let readable = dir.path().join("report.txt");
    fs::write(&readable, "quarterly numbers\n").expect("write");
    chmod(&readable, 0o644);
    let out_dir = d.setup.dir.path().join("downloads");
    fs::create_dir(&out_dir).expect("mkdir");
    chmod(&out_dir, 0o777);

    // sftp download: allowed.
    let batch = out_dir.join("batch");
    fs::write(
        &batch,
        format!("get {} {}/got.txt\n", readable.display(), out_dir.display()),
    )
    .expect("batch");
    let out = agent_sftp(&d, &a, &batch);
    assert!(
        out.status.success(),
        "sftp get: {}\n{}",
        text(&out),
        d.context()
    );
    assert_eq!(
        fs::read_to_string(out_dir.join("got.txt")).unwrap_or_default(),
        "quarterly numbers\n"
    );
    // sftp upload: denied by the read-only rule.
    fs::write(
        &batch,
        format!("put {} {}/up.txt\n", batch.display(), dir.path().display()),
    )
    .expect("batch");
    let out = agent_sftp(&d, &a, &batch);
    assert!(!out.status.success(), "sftp put must fail: {}", text(&out));
    assert!(
        text(&out).to_lowercase().contains("permission denied"),
        "{}",
        text(&out)
    );
    assert!(
        !dir.path().join("up.txt").exists(),
        "the upload reached the host"
    );
    // Outside the allowed paths: denied.
    fs::write(&batch, "get /etc/hostname /tmp/never\n").expect("batch");
    let out = agent_sftp(&d, &a, &batch);
    assert!(
        !out.status.success(),
        "sftp get outside paths: {}",
        text(&out)
    );

    // scp (sftp protocol) download allowed, upload denied.
    let out = agent_scp(
        &d,
        &a,
        &[
            &format!("host:{}", readable.display()),
            &format!("{}/scp.txt", out_dir.display()),
        ],
    );
    assert!(out.status.success(), "scp download: {}", text(&out));
    let out = agent_scp(
        &d,
        &a,
        &[
            &batch.display().to_string(),
            &format!("host:{}/scp-up.txt", dir.path().display()),
        ],
    );
    assert!(
        !out.status.success(),
        "scp upload must fail: {}",
        text(&out)
    );
    assert!(!dir.path().join("scp-up.txt").exists());
    // Legacy scp protocol (exec `scp -t`): denied as a write.
    let out = agent_scp(
        &d,
        &a,
        &[
            "-O",
            &batch.display().to_string(),
            &format!("host:{}/legacy.txt", dir.path().display()),
        ],
    );
    assert!(
        !out.status.success(),
        "scp -O upload must fail: {}",
        text(&out)
    );
    assert!(!dir.path().join("legacy.txt").exists());

    // File names are in the record.
    let all = d.sessions();
    let recorded = all.iter().any(|s| {
        let id = s["id"].as_str().unwrap_or_default();
        let out = d.cordon_output(&["sessions", "show", id, "--json"]);
        String::from_utf8_lossy(&out.stdout).contains("report.txt")
    });
    assert!(recorded, "file transfers are recorded by name");
    drop(server);
}

#[test]
fn sftp_writes_of_shell_startup_files_are_refused() {
    require_root!();
    // ssh-ops lets the agent write under /tmp and /srv; a startup file there
    // would still run code at the next login of whoever's home it is.
    let (server, d, a) = start("ssh-ops");
    let dir = shared_tmpdir("cordon-startup-");
    let local = d.setup.dir.path().join("payload.sh");
    fs::write(&local, "touch /tmp/cordon-pwned\n").expect("payload");
    chmod(&local, 0o644);
    let batch = d.setup.dir.path().join("batch");
    let run = |cmds: &str| {
        fs::write(&batch, cmds).expect("batch");
        agent_sftp(&d, &a, &batch)
    };
    // An ordinary upload works.
    let out = run(&format!(
        "put {} {}/ok.sh\n",
        local.display(),
        dir.path().display()
    ));
    assert!(
        out.status.success(),
        "sftp put: {}\n{}",
        text(&out),
        d.context()
    );
    assert!(dir.path().join("ok.sh").exists());
    // A startup file, directly, by rename, or through a symlink: refused.
    for cmds in [
        format!("put {} {}/.bashrc\n", local.display(), dir.path().display()),
        format!("rename {0}/ok.sh {0}/.profile\n", dir.path().display()),
        format!("ln -s {0}/.zshenv {0}/link\n", dir.path().display()),
        format!("mkdir {}/.ssh\n", dir.path().display()),
    ] {
        let out = run(&cmds);
        assert!(!out.status.success(), "{cmds}: {}", text(&out));
    }
    for name in [".bashrc", ".profile", ".zshenv", "link", ".ssh"] {
        assert!(
            fs::symlink_metadata(dir.path().join(name)).is_err(),
            "{name} reached the host"
        );
    }

    // Legacy scp (`scp -O`, the host runs `scp -t DIR`): the client names the
    // files inside the stream, and each name is checked there.
    let tree = d.setup.dir.path().join("tree");
    fs::create_dir_all(tree.join("conf")).expect("mkdir");
    fs::write(tree.join("conf/app.toml"), "x = 1\n").expect("write");
    for p in [tree.clone(), tree.join("conf")] {
        chmod(&p, 0o755);
    }
    chmod(&tree.join("conf/app.toml"), 0o644);
    let target = format!("host:{}/", dir.path().display());
    let out = agent_scp(&d, &a, &["-O", "-r", &tree.display().to_string(), &target]);
    assert!(
        out.status.success(),
        "scp -O -r: {}\n{}",
        text(&out),
        d.context()
    );
    assert!(dir.path().join("tree/conf/app.toml").exists());
    let dotfile = d.setup.dir.path().join(".bashrc");
    fs::copy(&local, &dotfile).expect("copy");
    let out = agent_scp(&d, &a, &["-O", &dotfile.display().to_string(), &target]);
    assert!(!out.status.success(), "scp -O .bashrc: {}", text(&out));
    assert!(
        text(&out).contains("startup"),
        "the agent is told why: {}",
        text(&out)
    );
    fs::write(tree.join(".profile"), "id\n").expect("write");
    chmod(&tree.join(".profile"), 0o644);
    let out = agent_scp(
        &d,
        &a,
        &[
            "-O",
            "-r",
            &tree.display().to_string(),
            &format!("host:{}/second/", dir.path().display()),
        ],
    );
    assert!(
        !out.status.success(),
        "scp -O -r with a .profile: {}",
        text(&out)
    );
    // Through a terminal the host rewrites the stream: such an upload is
    // refused outright (an ordinary `scp -t` without one was allowed above).
    let out = agent_ssh_run(
        &d,
        &a,
        &["-tt", "host", &format!("scp -t {}/", dir.path().display())],
    );
    assert!(!out.status.success(), "scp -t with a pty: {}", text(&out));
    assert!(
        text(&out).contains("builtin/scp-terminal"),
        "the agent is told why: {}",
        text(&out)
    );
    for name in [".bashrc", "tree/.profile", "second/.profile"] {
        assert!(
            fs::symlink_metadata(dir.path().join(name)).is_err(),
            "{name} reached the host"
        );
    }
    drop(server);
}

#[test]
fn allowed_file_writing_commands_cannot_plant_startup_files() {
    require_root!();
    // A policy that allows copying and tee anywhere: the built-in startup-file
    // check still reads where they write.
    let server = SshServer::start().expect("sshd");
    let policies = tempfile::tempdir().expect("tempdir");
    fs::write(
        policies.path().join("writers.toml"),
        "[policy]\nname = \"writers\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n\n\
         [[rule]]\nname = \"files\"\naction = \"allow\"\ncommands = [\"cp *\", \"tee *\", \"cat *\"]\n",
    )
    .expect("policy");
    let d = Daemon::start(ssh_setup_in(
        &policies.path().display().to_string(),
        &server,
        "writers",
        Some(&server.host_key),
        "",
    ));
    d.vault_set("host-key", "ssh-key", &server.client_key());
    let a = agent_ssh(&d);
    let dir = shared_tmpdir("cordon-writers-");
    let payload = dir.path().join("payload.sh");
    fs::write(&payload, "touch /tmp/cordon-pwned\n").expect("payload");
    chmod(&payload, 0o644);
    let p = payload.display().to_string();

    // An ordinary copy works.
    let copy = dir.path().join("copy.sh");
    let out = agent_ssh_run(&d, &a, &["host", &format!("cp {p} {}", copy.display())]);
    assert!(
        out.status.success() && copy.exists(),
        "cp: {}\n{}",
        text(&out),
        d.context()
    );

    let bashrc = server.home.join(".bashrc");
    let keys = server.home.join(".ssh/authorized_keys");
    let before = (fs::read(&bashrc).ok(), fs::read(&keys).ok());
    for cmd in [
        format!("cp {p} ~/.bashrc"),
        format!("cp {p} {}", bashrc.display()),
        format!("cp -t ~ {}", dir.path().join(".bashrc").display()),
        format!("cat {p} | tee -a .ssh/authorized_keys"),
        format!("cp {p} .gitconfig"),
    ] {
        let out = agent_ssh_run(&d, &a, &["host", &cmd]);
        assert!(!out.status.success(), "{cmd}: {}", text(&out));
        assert!(
            text(&out).contains("builtin/startup-file") || text(&out).contains("startup"),
            "{cmd}: the agent is told why: {}",
            text(&out)
        );
    }
    assert_eq!(
        (fs::read(&bashrc).ok(), fs::read(&keys).ok()),
        before,
        "a startup file changed on the host"
    );
    assert!(
        !server.home.join(".gitconfig").exists(),
        ".gitconfig reached the host"
    );
    assert!(
        !Path::new("/tmp/cordon-pwned").exists(),
        "the payload ran on the host"
    );
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// A directory under /tmp (which the shipped policies' paths cover) that
/// the agent, running as nobody, may write to.
fn shared_tmpdir(prefix: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in("/tmp")
        .expect("tempdir");
    chmod(dir.path(), 0o777);
    dir
}

fn agent_sftp(d: &Daemon, a: &AgentSsh, batch: &Path) -> Output {
    let argv = vec![
        "sftp".to_owned(),
        "-F".into(),
        a.config.display().to_string(),
        "-b".into(),
        batch.display().to_string(),
        "host".into(),
    ];
    let mut cmd = d.cordon(&["run", "--agent", "bot", "--"]);
    cmd.args(as_nobody(argv));
    cmd.env("HOME", "/nonexistent");
    run_with_limit(&mut cmd, LIMIT)
}

fn agent_scp(d: &Daemon, a: &AgentSsh, args: &[&str]) -> Output {
    let mut argv = vec![
        "scp".to_owned(),
        "-F".into(),
        a.config.display().to_string(),
    ];
    argv.extend(args.iter().map(|s| (*s).to_owned()));
    let mut cmd = d.cordon(&["run", "--agent", "bot", "--"]);
    cmd.args(as_nobody(argv));
    cmd.env("HOME", "/nonexistent");
    run_with_limit(&mut cmd, LIMIT)
}

#[test]
fn every_forwarding_kind_is_denied() {
    require_root!();
    let (server, d, a) = start("ssh-ops");
    // -W (stdio forwarding) and -L/-D use direct-tcpip channels.
    let out = agent_ssh_run(
        &d,
        &a,
        &["-W", &format!("127.0.0.1:{}", server.port), "host"],
    );
    assert!(!out.status.success(), "-W must fail: {}", text(&out));
    assert!(
        text(&out).contains("administratively prohibited"),
        "{}",
        text(&out)
    );
    // -R: remote forwarding, a global request.
    let out = agent_ssh_run(
        &d,
        &a,
        &[
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            "0:127.0.0.1:9",
            "host",
            "true",
        ],
    );
    assert!(!out.status.success(), "-R must fail: {}", text(&out));
    // -X: X11 forwarding request.
    let mut cmd = agent_ssh_cmd(
        &d,
        &a,
        &[
            "-X",
            "-o",
            "ForwardX11Trusted=yes",
            "-o",
            "ExitOnForwardFailure=yes",
            "host",
            "true",
        ],
    );
    cmd.env("DISPLAY", "127.0.0.1:0");
    let out = run_with_limit(&mut cmd, LIMIT);
    let t = text(&out);
    assert!(
        !out.status.success() || t.contains("X11 forwarding request failed"),
        "X11 must be refused: {t}"
    );
    // The refusals are recorded.
    let all = d.sessions();
    let shown: String = all
        .iter()
        .map(|s| {
            let id = s["id"].as_str().unwrap_or_default();
            String::from_utf8_lossy(&d.cordon_output(&["sessions", "show", id, "--json"]).stdout)
                .into_owned()
        })
        .collect();
    assert!(shown.contains("direct-tcpip"), "the -W refusal is recorded");
    assert!(shown.contains("port-forward"), "the -R refusal is recorded");
}

#[test]
fn upstream_host_key_must_match_the_pin() {
    require_root!();
    let server = SshServer::start().expect("sshd");
    // A key that is not the server's.
    let other = SshServer::start().expect("second sshd");
    let d = Daemon::start(ssh_setup(
        &server,
        "ssh-readonly",
        Some(&other.host_key),
        "",
    ));
    d.vault_set("host-key", "ssh-key", &server.client_key());
    let a = agent_ssh(&d);
    let out = agent_ssh_run(&d, &a, &["host", "uptime"]);
    assert!(
        !out.status.success(),
        "mismatch must refuse: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("does not match the pinned one"),
        "the agent is told why: {}",
        text(&out)
    );
    drop(d);

    // No pin: refused until `cordon ssh-trust` records the key.
    let d = Daemon::start(ssh_setup(&server, "ssh-readonly", None, ""));
    d.vault_set("host-key", "ssh-key", &server.client_key());
    let a = agent_ssh(&d);
    let out = agent_ssh_run(&d, &a, &["host", "uptime"]);
    assert!(
        !out.status.success(),
        "unpinned must refuse: {}",
        text(&out)
    );
    assert!(text(&out).contains("ssh-trust"), "{}", text(&out));
    let trust = d.cordon_output(&["ssh-trust", "host"]);
    assert!(trust.status.success(), "ssh-trust: {}", text(&trust));
    assert!(
        String::from_utf8_lossy(&trust.stdout).contains("SHA256:"),
        "ssh-trust prints the fingerprint: {}",
        text(&trust)
    );
    let out = agent_ssh_run(&d, &a, &["host", "uptime"]);
    assert!(out.status.success(), "after ssh-trust: {}", text(&out));
}

#[test]
fn password_and_rsa_credentials_and_malformed_input() {
    require_root!();
    let server = SshServer::start().expect("sshd");
    let d = Daemon::start(ssh_setup(
        &server,
        "ssh-readonly",
        Some(&server.host_key),
        "",
    ));
    let a = agent_ssh(&d);
    d.vault_set("host-key", "password", TEST_PASSWORD);
    let out = agent_ssh_run(&d, &a, &["host", "uptime"]);
    assert!(out.status.success(), "password login: {}", text(&out));
    assert!(!text(&out).contains(TEST_PASSWORD));
    d.vault_set("host-key", "ssh-key", &server.client_rsa_key());
    let out = agent_ssh_run(&d, &a, &["host", "uptime"]);
    assert!(out.status.success(), "rsa login: {}", text(&out));

    // Garbage after a valid banner ends only that session.
    let garbage = d.probe(
        "bot",
        cordon_tests::As::Nobody,
        &cordon_tests::strs(&cordon_tests::tcp_args(
            &server.address(),
            "SSH-2.0-evil\r\n\u{1}\u{2}\u{3}\u{ff}garbage-that-is-not-a-packet",
        )),
    );
    println!("garbage probe: {garbage}");
    let out = agent_ssh_run(&d, &a, &["host", "uptime"]);
    assert!(
        out.status.success(),
        "the daemon still serves after malformed input: {}\n{}",
        text(&out),
        d.context()
    );
}

#[test]
fn recording_survives_sigkill_of_the_daemon() {
    require_root!();
    let (_server, mut d, a) = start("ssh-ops");
    let mut cmd = agent_ssh_cmd(&d, &a, &["-tt", "host"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ssh -tt");
    let mut stdin = child.stdin.take().expect("stdin");
    std::thread::sleep(Duration::from_millis(1500));
    stdin.write_all(b"echo cordon-before-kill\r").expect("type");
    stdin.flush().expect("flush");
    // More than the one second the recording may lose.
    std::thread::sleep(Duration::from_millis(2000));
    d.kill9();
    let _ = child.kill();
    let _ = child.wait();
    d.restart();
    let all = d.sessions();
    let id = all
        .iter()
        .find(|s| s["protocol"] == "ssh" && s["verdict"] == "allow")
        .and_then(|s| s["id"].as_str())
        .expect("the ssh session is in the store after SIGKILL")
        .to_owned();
    let out = d.cordon_output(&["replay", &id, "--no-wait"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("cordon-before-kill"),
        "output recorded before the kill is replayed: {}",
        text(&out)
    );
    drop(stdin);
}

#[test]
fn agent_forwarding_is_refused_and_recorded() {
    require_root!();
    let server = SshServer::start().expect("sshd");
    let sock_dir = tempfile::Builder::new()
        .prefix("cordon-agent-")
        .tempdir()
        .expect("tempdir");
    // The socket's directory is its owner's (nobody): one every user may
    // write is refused by `cordon run` (see pin.rs).
    std::os::unix::fs::chown(sock_dir.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
    chmod(sock_dir.path(), 0o700);
    let sock = sock_dir.path().join("agent.sock");
    // The agent's own ssh-agent (as nobody, outside the cgroup), allowed by the unix list.
    let mut agent = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(["ssh-agent", "-D", "-a"])
        .arg(&sock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("ssh-agent");
    for _ in 0..100 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let setup = ssh_setup(&server, "ssh-ops", Some(&server.host_key), "")
        .unix_allow(&sock.display().to_string());
    let d = Daemon::start(setup);
    d.vault_set("host-key", "ssh-key", &server.client_key());
    let a = agent_ssh(&d);
    let mut cmd = agent_ssh_cmd(&d, &a, &["-A", "host", "true"]);
    cmd.env("SSH_AUTH_SOCK", &sock);
    let out = run_with_limit(&mut cmd, LIMIT);
    let _ = agent.kill();
    let _ = agent.wait();
    assert!(
        out.status.success(),
        "the command itself runs: {}",
        text(&out)
    );
    let session = last_ssh_session(&d);
    let shown = session.to_string();
    assert!(
        shown.contains("agent-forward") && shown.contains("builtin/agent-forwarding"),
        "the refused agent forwarding is recorded: {shown}"
    );
}

#[test]
fn a_shell_without_pty_has_every_stdin_line_checked() {
    require_root!();
    let (server, d, a) = start("ssh-ops");
    let marker = server.home.join("stdin-pwned");
    let mut cmd = agent_ssh_cmd(&d, &a, &["-T", "host"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ssh -T");
    let mut stdin = child.stdin.take().expect("stdin");
    let script = format!(
        "echo cordon-stdin-ok\ntouch {m}\nuptime; touch {m}\necho cordon-after\n",
        m = marker.display()
    );
    stdin.write_all(script.as_bytes()).expect("write");
    drop(stdin);
    let (out, _) = cordon_tests::wait_output(child, LIMIT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("cordon-stdin-ok") && stdout.contains("cordon-after"),
        "allowed lines ran: {}\n{}",
        text(&out),
        d.context()
    );
    assert!(
        stderr.matches("cordon: denied by").count() >= 2,
        "each refused line is explained on stderr: {stderr}"
    );
    assert!(!marker.exists(), "a refused stdin line reached the shell");
}

#[test]
fn a_live_ssh_session_ends_when_its_grant_expires() {
    require_root!();
    let server = SshServer::start().expect("sshd");
    let mut setup = ssh_setup(&server, "ssh-ops", Some(&server.host_key), "");
    setup.extra = setup
        .extra
        .replace(FAR_FUTURE, &cordon_tests::rfc3339_from_now(6));
    let d = Daemon::start(setup);
    d.vault_set("host-key", "ssh-key", &server.client_key());
    let a = agent_ssh(&d);
    let mut cmd = agent_ssh_cmd(&d, &a, &["-tt", "host"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let started = std::time::Instant::now();
    let mut child = cmd.spawn().expect("spawn ssh -tt");
    let stdin = child.stdin.take().expect("stdin");
    // The session stays open (stdin held) until Cordon ends it.
    let (out, timed_out) = cordon_tests::wait_output(child, Duration::from_secs(30));
    drop(stdin);
    assert!(!timed_out, "the session was not cut at grant expiry");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "cut too late: {:?}",
        started.elapsed()
    );
    assert!(
        text(&out).contains("expired"),
        "the agent is told the grant expired: {}",
        text(&out)
    );
}

/// A policy where `echo held-*` needs approval, in `dir`.
fn held_policy(dir: &Path) -> PathBuf {
    let path = dir.join("ssh-held.toml");
    fs::write(
        &path,
        "[policy]\nname = \"ssh-held\"\nprotocol = \"ssh\"\ndefault = \"deny\"\n\n\
         [[rule]]\nname = \"needs-a-human\"\naction = \"approve\"\ncommands = [\"echo held-*\"]\n\n\
         [[rule]]\nname = \"basics\"\naction = \"allow\"\ncommands = [\"uptime\"]\n",
    )
    .expect("write policy");
    path
}

/// Polls `cordon approvals list --json` (as `token`'s holder) for a held command.
fn wait_hold(d: &Daemon, token: &str, needle: &str) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut cmd = d.cordon(&["approvals", "list", "--json"]);
        cmd.env("CORDON_ID_TOKEN", token);
        let out = run_with_limit(&mut cmd, LIMIT);
        let list: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        if let Some(h) = list["holds"].as_array().and_then(|hs| {
            hs.iter()
                .find(|h| h["command"].as_str().unwrap_or("").contains(needle))
                .cloned()
        }) {
            return h;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no held command `{needle}`: {}\n{}",
            text(&out),
            d.context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn held_ssh_commands_wait_for_a_reviewer() {
    require_root!();
    cordon_tests::require_oidc_provider!();
    let idp = cordon_tests::oidc::OidcProvider::start();
    let server = SshServer::start().expect("sshd");
    let policy_dir = tempfile::tempdir().expect("tempdir");
    let policy = held_policy(policy_dir.path());
    let mut setup = ssh_setup(
        &server,
        &policy.display().to_string(),
        Some(&server.host_key),
        "approvers = [\"ops\"]\n",
    );
    setup.extra = format!(
        "{}\n[approvals]\ntimeout_secs = 30\n{}",
        idp.config_table("approver_groups = [\"approvers\"]"),
        setup.extra
    );
    let d = Daemon::start(setup);
    d.vault_set("host-key", "ssh-key", &server.client_key());
    let a = agent_ssh(&d);
    let bob = idp.id_token("bob", &["ops"]);

    // Approved: the command runs once, the agent's client simply waited.
    let agent = cordon_tests::Background::spawn(
        &mut agent_ssh_cmd(&d, &a, &["host", "echo held-one"]),
        "ssh held-one",
    );
    let hold = wait_hold(&d, &bob, "held-one");
    assert_eq!(hold["protocol"], "ssh", "{hold}");
    assert_eq!(hold["rule"], "ssh-held/needs-a-human", "{hold}");
    let id = hold["id"].as_str().expect("id").to_owned();
    let mut approve = d.cordon(&["approve", &id]);
    approve.env("CORDON_ID_TOKEN", &bob);
    let out = run_with_limit(&mut approve, LIMIT);
    assert!(out.status.success(), "approve: {}", text(&out));
    let out = agent.finish(LIMIT);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("held-one"),
        "the approved command ran: {}\n{}",
        text(&out),
        d.context()
    );

    // Denied: the agent reads the reviewer's reason, exit 126, nothing ran.
    let agent = cordon_tests::Background::spawn(
        &mut agent_ssh_cmd(&d, &a, &["host", "echo held-two"]),
        "ssh held-two",
    );
    let hold = wait_hold(&d, &bob, "held-two");
    let id = hold["id"].as_str().expect("id").to_owned();
    let mut deny = d.cordon(&["deny", &id, "--reason", "not during the freeze"]);
    deny.env("CORDON_ID_TOKEN", &bob);
    let out = run_with_limit(&mut deny, LIMIT);
    assert!(out.status.success(), "deny: {}", text(&out));
    let out = agent.finish(LIMIT);
    assert_eq!(out.status.code(), Some(126), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not during the freeze"),
        "the reviewer's reason reaches the agent: {}",
        text(&out)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("held-two"));
}

#[test]
fn jit_grant_opens_ssh_and_its_expiry_cuts_the_session() {
    require_root!();
    cordon_tests::require_oidc_provider!();
    let idp = cordon_tests::oidc::OidcProvider::start();
    let server = SshServer::start().expect("sshd");
    let mut setup = ssh_setup(
        &server,
        "ssh-ops",
        Some(&server.host_key),
        "approvers = [\"ops\"]\nmax_ttl = \"1h\"\n",
    );
    // No static grant: only the just-in-time one below.
    let grant_at = setup.extra.find("[[grant]]").expect("grant table");
    setup.extra.truncate(grant_at);
    setup.extra = format!(
        "{}\n[approvals]\ntimeout_secs = 30\n{}",
        idp.config_table("approver_groups = [\"approvers\"]"),
        setup.extra
    );
    let d = Daemon::start(setup);
    d.vault_set("host-key", "ssh-key", &server.client_key());
    let alice = idp.id_token("alice", &["ops"]);
    let bob = idp.id_token("bob", &["ops"]);

    let out = agent_ssh_run(&d, &agent_ssh_no_grant(&d), &["host", "uptime"]);
    assert!(!out.status.success(), "no grant yet: {}", text(&out));

    let mut ask = d.cordon(&[
        "request",
        "--agent",
        "bot",
        "--resource",
        "host",
        "--ttl",
        "8s",
        "--reason",
        "disk full",
        "--json",
    ]);
    ask.env("CORDON_ID_TOKEN", &alice);
    let out = run_with_limit(&mut ask, LIMIT);
    assert!(out.status.success(), "request: {}", text(&out));
    let g: Value = serde_json::from_slice(&out.stdout).expect("json");
    let id = g["id"].as_str().expect("id").to_owned();
    let mut own = d.cordon(&["approve", &id]);
    own.env("CORDON_ID_TOKEN", &alice);
    let out = run_with_limit(&mut own, LIMIT);
    assert!(!out.status.success(), "self-approval must be refused");
    let mut approve = d.cordon(&["approve", &id]);
    approve.env("CORDON_ID_TOKEN", &bob);
    let out = run_with_limit(&mut approve, LIMIT);
    assert!(out.status.success(), "approve: {}", text(&out));

    let a = agent_ssh(&d);
    let out = agent_ssh_run(&d, &a, &["-l", TEST_USER, "host", "uptime"]);
    assert!(
        out.status.success(),
        "the approved grant admits the agent: {}\n{}",
        text(&out),
        d.context()
    );
    // A live interactive session is cut when the grant runs out.
    let mut cmd = agent_ssh_cmd(&d, &a, &["-tt", "-l", TEST_USER, "host"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn ssh -tt");
    let stdin = child.stdin.take().expect("stdin");
    let (out, timed_out) = cordon_tests::wait_output(child, Duration::from_secs(30));
    drop(stdin);
    assert!(!timed_out, "the session outlived its just-in-time grant");
    assert!(text(&out).contains("expired"), "{}", text(&out));
}

/// known_hosts and ssh_config without a live grant: `ssh-config` refuses then, so this writes
/// a minimal config by hand (the agent's attempt must fail at Cordon, not at the client).
fn agent_ssh_no_grant(d: &Daemon) -> AgentSsh {
    let dir = d.setup.dir.path().join("agent-ssh-nogrant");
    let _ = fs::create_dir(&dir);
    let config = dir.join("config");
    let addr = d
        .setup
        .extra
        .split("address = \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or("127.0.0.1:22")
        .to_owned();
    let (ip, port) = addr.rsplit_once(':').unwrap_or(("127.0.0.1", "22"));
    fs::write(
        &config,
        format!(
            "Host host\n  HostName {ip}\n  Port {port}\n  User {TEST_USER}\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n"
        ),
    )
    .expect("write config");
    AgentSsh { config }
}

#[test]
fn a_denied_command_leaves_the_connection_usable_for_other_channels() {
    require_root!();
    let server = SshServer::start().expect("sshd");
    // One SSH connection (an OpenSSH control master), several channels over it.
    let mux_dir = tempfile::Builder::new()
        .prefix("cordon-mux-")
        .tempdir()
        .expect("tempdir");
    // The agent (uid 65534) makes its control socket there. A directory
    // any user may write would let any agent put a link to another socket
    // at the allowed path: `cordon run` refuses that (see pin.rs).
    std::os::unix::fs::chown(mux_dir.path(), Some(NOBODY), Some(NOBODY)).expect("chown mux dir");
    chmod(mux_dir.path(), 0o700);
    let control = mux_dir.path().join("master.sock");
    let setup = ssh_setup(&server, "ssh-readonly", Some(&server.host_key), "")
        .unix_allow(&control.display().to_string());
    let d = Daemon::start(setup);
    d.vault_set("host-key", "ssh-key", &server.client_key());
    let a = agent_ssh(&d);
    let cp = format!("ControlPath={}", control.display());
    let mut master = agent_ssh_cmd(
        &d,
        &a,
        &["-o", "ControlMaster=yes", "-o", &cp, "-N", "host"],
    );
    master
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut master = master.spawn().expect("ssh master");
    for _ in 0..100 {
        if control.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(control.exists(), "the control master did not start");
    let mux =
        |cmd: &str| agent_ssh_run(&d, &a, &["-o", "ControlMaster=no", "-o", &cp, "host", cmd]);
    let denied = mux("touch /tmp/cordon-mux-pwned");
    let allowed = mux("uptime");
    let again = mux("df -h");
    let _ = master.kill();
    let _ = master.wait();
    assert_eq!(denied.status.code(), Some(126), "{}", text(&denied));
    assert!(
        allowed.status.success()
            && String::from_utf8_lossy(&allowed.stdout).contains("load average"),
        "a channel after a denial on the same connection works: {}\n{}",
        text(&allowed),
        d.context()
    );
    assert!(again.status.success(), "{}", text(&again));
    // All of it was one captured connection: one ssh session holds every request.
    let sessions: Vec<_> = d
        .sessions()
        .into_iter()
        .filter(|s| s["protocol"] == "ssh" && s["verdict"] == "allow")
        .collect();
    assert_eq!(sessions.len(), 1, "{sessions:?}");
}
