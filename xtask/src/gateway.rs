//! A throwaway Cordon daemon for the demo and the benchmarks: its own state
//! dir, control socket, port, cgroup root and bpffs dir, stopped and
//! uninstalled (by pid) when dropped.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// The cgroup2 mount, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    text.lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            left.split_whitespace().nth(4).map(PathBuf::from)
        })
        .context("no cgroup2 mount found in /proc/self/mountinfo")
}

/// A free loopback TCP port (bound, then released).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// UTC time `secs` from now, RFC 3339.
pub fn rfc3339_in(secs: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let t = now + secs;
    let (days, rem) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub struct Daemon {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub cordon: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Daemon {
    /// Starts `cordon daemon` with `[daemon]` filled in and `rest` (agents,
    /// resources, grants) appended; waits until it answers `status`.
    pub fn start(cordon: &Path, name: &str, rest: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("cordon-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let port = free_port()?;
        let mount = cgroup2_mount()?;
        let config = dir.join("cordon.toml");
        let text = format!(
            "[daemon]\nstate_dir = \"{d}/state\"\ncontrol_socket = \"{d}/control.sock\"\nlisten = \"127.0.0.1:{port}\"\ncgroup_root = \"{cg}\"\nbpffs = \"/sys/fs/bpf/cordon-{name}\"\n\n{rest}",
            d = dir.display(),
            cg = mount.join(format!("cordon-{name}")).display(),
        );
        std::fs::write(&config, text)?;
        let log = std::fs::File::create(dir.join("daemon.log"))?;
        let child = Command::new(cordon)
            .arg("--config")
            .arg(&config)
            .arg("daemon")
            .env("CORDON_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", cordon.display()))?;
        let mut daemon = Self {
            dir,
            config,
            cordon: cordon.to_owned(),
            port,
            child: Some(child),
        };
        daemon.wait_ready()?;
        Ok(daemon)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    let log =
                        std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
                    bail!("cordon daemon exited with {status}:\n{log}");
                }
            }
            if self
                .cli()
                .arg("status")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()?
                .success()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("cordon daemon did not become ready within 20 s")
    }

    /// The daemon's pid (for CPU accounting).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `cordon --config <this daemon's config>`.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(&self.cordon);
        c.arg("--config").arg(&self.config);
        c
    }

    /// `cordon run --agent AGENT -- program args...`.
    pub fn run_as(&self, agent: &str, program: &Path) -> Command {
        let mut c = self.cli();
        c.args(["run", "--agent", agent, "--"]).arg(program);
        c
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: plain kill(2) on the pid of a child we started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self
            .cli()
            .args(["daemon", "--uninstall"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A child process killed (by pid) when dropped.
pub struct Service(pub Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Builds the given packages (debug or release) and returns the bin dir.
pub fn build(release: bool, packages: &[&str]) -> Result<PathBuf> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(crate::workspace_root())
        .arg("build")
        .arg("--quiet");
    if release {
        cmd.arg("--release");
    }
    for p in packages {
        cmd.args(["-p", p]);
    }
    crate::util::run(&mut cmd)?;
    Ok(crate::util::target_dir().join(if release { "release" } else { "debug" }))
}
