//! OpenSSH for the integration tests: the upstream end of the SSH data flow.
//!
//! [`SshServer`] starts the real Debian `sshd` on a free loopback port with a private
//! directory: its own host key, an authorized key for the test login, forwarding of every kind
//! enabled (so that a refusal seen by the agent is Cordon's, not sshd's), the sftp subsystem,
//! `AcceptEnv LANG LC_*`. The login is a dedicated unprivileged system user, created on first
//! use ([`TEST_USER`]), whose home is set to a fresh directory per server (the tests run one
//! at a time).
//!
//! The client key (what goes into Cordon's vault) is written to the server's directory, mode
//! 0600, readable by root only. Dropping the server stops sshd by pid (SIGTERM, then SIGKILL).

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use tempfile::TempDir;

/// The unprivileged login the tests use on the upstream host.
pub const TEST_USER: &str = "cordon-sshtest";
/// Its password (for the password-credential test); set with chpasswd, never in argv.
pub const TEST_PASSWORD: &str = "pw-9f3c1d7e-upstream-only";

pub struct SshServer {
    dir: TempDir,
    pub port: u16,
    child: Option<Child>,
    /// `ssh-ed25519 AAAA...` of this sshd.
    pub host_key: String,
    /// The home directory of [`TEST_USER`] for this server (files for scp/sftp tests).
    pub home: PathBuf,
}

fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates [`TEST_USER`] if missing (a system user with /bin/sh) and sets its password.
pub fn ensure_test_user() -> Result<()> {
    let exists = Command::new("id")
        .arg(TEST_USER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !exists {
        run(
            Command::new("useradd").args([
                "--system",
                "--no-create-home",
                "--home-dir",
                "/nonexistent",
                "--shell",
                "/bin/sh",
                TEST_USER,
            ]),
            "useradd",
        )?;
    }
    let mut child = Command::new("chpasswd")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running chpasswd")?;
    if let Some(stdin) = child.stdin.as_mut() {
        use std::io::Write as _;
        writeln!(stdin, "{TEST_USER}:{TEST_PASSWORD}")?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("chpasswd failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn keygen(path: &Path, kind: &str) -> Result<String> {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args(["-q", "-t", kind, "-N", "", "-C", "cordon-test", "-f"])
        .arg(path);
    if kind == "rsa" {
        cmd.args(["-b", "3072"]);
    }
    run(&mut cmd, "ssh-keygen")?;
    let public = fs::read_to_string(path.with_extension("pub"))?;
    // `<alg> <base64> <comment>` -> `<alg> <base64>`
    Ok(public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" "))
}

impl SshServer {
    /// Starts sshd with an ed25519 client key authorized for [`TEST_USER`].
    pub fn start() -> Result<SshServer> {
        ensure_test_user()?;
        fs::create_dir_all("/run/sshd").context("creating /run/sshd")?;
        let dir = tempfile::Builder::new().prefix("cordon-sshd-").tempdir()?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let host_key = keygen(&dir.path().join("host_ed25519"), "ed25519")?;
        let ed_pub = keygen(&dir.path().join("client_ed25519"), "ed25519")?;
        let rsa_pub = keygen(&dir.path().join("client_rsa"), "rsa")?;
        let home = dir.path().join("home");
        fs::create_dir(&home)?;
        let keys = dir.path().join("authorized_keys");
        fs::write(&keys, format!("{ed_pub}\n{rsa_pub}\n"))?;
        fs::set_permissions(&keys, fs::Permissions::from_mode(0o644))?;
        run(
            Command::new("chown")
                .arg(format!("{TEST_USER}:"))
                .arg(&home),
            "chown",
        )?;
        let port = crate::free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
             PasswordAuthentication yes\nKbdInteractiveAuthentication no\nPermitRootLogin no\n\
             AllowUsers {TEST_USER}\nAllowTcpForwarding yes\nAllowAgentForwarding yes\n\
             X11Forwarding yes\nAllowStreamLocalForwarding yes\nPermitTunnel yes\n\
             AcceptEnv LANG LC_*\nSubsystem sftp internal-sftp\nLogLevel VERBOSE\n\
             MaxSessions 30\nMaxStartups 100\nPrintMotd no\n",
            d = dir.path().display(),
        );
        // The login's home is this server's directory (tests run one at a time).
        run(
            Command::new("usermod").arg("-d").arg(&home).arg(TEST_USER),
            "usermod",
        )?;
        let config_path = dir.path().join("sshd_config");
        fs::write(&config_path, config)?;
        let log = fs::File::create(dir.path().join("sshd.log"))?;
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting /usr/sbin/sshd")?;
        let mut server = SshServer {
            dir,
            port,
            child: Some(child),
            host_key,
            home,
        };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    bail!("sshd exited at start ({status}): {}", self.log());
                }
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("sshd did not listen within 15 s: {}", self.log())
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The client's private keys (OpenSSH format): what goes into Cordon's vault.
    pub fn client_key(&self) -> String {
        fs::read_to_string(self.dir.path().join("client_ed25519")).unwrap_or_default()
    }

    pub fn client_rsa_key(&self) -> String {
        fs::read_to_string(self.dir.path().join("client_rsa")).unwrap_or_default()
    }

    pub fn client_key_path(&self) -> PathBuf {
        self.dir.path().join("client_ed25519")
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `ssh` directly (not through Cordon) as root with the client key: the baseline.
    pub fn direct_ssh(&self, command: &str) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(direct_options(self))
            .arg(format!("{TEST_USER}@127.0.0.1"))
            .arg(command);
        cmd
    }
}

/// Options for a direct ssh to `server` with its client key (the benchmark's baseline).
pub fn direct_options(server: &SshServer) -> Vec<String> {
    let known = server.dir.path().join("known_hosts_direct");
    let _ = fs::write(
        &known,
        format!("[127.0.0.1]:{} {}\n", server.port, server.host_key),
    );
    vec![
        "-F".into(),
        "/dev/null".into(),
        "-p".into(),
        server.port.to_string(),
        "-i".into(),
        server.client_key_path().display().to_string(),
        "-o".into(),
        format!("UserKnownHostsFile={}", known.display()),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
    ]
}

impl Drop for SshServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id() as libc::pid_t;
            // SAFETY: signalling our own child by pid.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    _ if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}
