//! `cargo xtask bench ssh`: the OpenSSH client against a throwaway sshd on loopback, directly
//! (with the key) and through Cordon (from inside an agent cgroup, no key: Cordon's russh
//! server and client in the middle, the vaulted key, the exec policy, every byte recorded),
//! alternating in one run, reported as ratios against direct.
//!
//! (a) `ssh host cat FILE` of a 1 GiB file to /dev/null: throughput; target >= 0.7x direct.
//! (b) 50 sequential `ssh host true`: per-command latency (p50); target <= 1.5x direct.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::gateway::{build, free_port, rfc3339_in, Daemon, Service};

const BULK_BYTES: u64 = 1 << 30;
const BULK_ROUNDS: usize = 3;
const EXECS: usize = 50;
const EXEC_ROUNDS: usize = 2;
const USER: &str = "cordon-sshtest";
const THROUGHPUT_TARGET: f64 = 0.7;
const LATENCY_TARGET: f64 = 1.5;

const POLICY: &str = r#"[policy]
name = "ssh-bench"
protocol = "ssh"
description = "cargo xtask bench ssh: cat of the bench file and true"
default = "deny"

[[rule]]
name = "bench"
action = "allow"
commands = ["true", "cat /tmp/cordon-sshd-bench-*/big"]
"#;

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

fn keygen(path: &Path) -> Result<String> {
    run(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f"])
            .arg(path),
        "ssh-keygen",
    )?;
    let public = fs::read_to_string(path.with_extension("pub"))?;
    Ok(public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" "))
}

struct Sshd {
    _service: Service,
    dir: PathBuf,
    port: u16,
    host_key: String,
}

fn sshd() -> Result<Sshd> {
    let exists = Command::new("id")
        .arg(USER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?
        .success();
    if !exists {
        run(
            Command::new("useradd").args([
                "--system",
                "--no-create-home",
                "--home-dir",
                "/tmp",
                "--shell",
                "/bin/sh",
                USER,
            ]),
            "useradd",
        )?;
    }
    fs::create_dir_all("/run/sshd")?;
    let dir = std::env::temp_dir().join(format!("cordon-sshd-bench-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    let host_key = keygen(&dir.join("host"))?;
    let client = keygen(&dir.join("client"))?;
    fs::write(dir.join("authorized_keys"), format!("{client}\n"))?;
    // The file the bench reads: pseudo-random bytes (incompressible, so nothing on the way
    // can cheat with them), written once.
    {
        use std::io::Write as _;
        let mut f = std::io::BufWriter::new(fs::File::create(dir.join("big"))?);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut block = vec![0u8; 1 << 20];
        for _ in 0..(BULK_BYTES >> 20) {
            for chunk in block.chunks_exact_mut(8) {
                // xorshift64*
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                chunk.copy_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
            }
            f.write_all(&block)?;
        }
        f.flush()?;
    }
    fs::set_permissions(dir.join("big"), fs::Permissions::from_mode(0o644))?;
    let port = free_port()?;
    let config = format!(
        "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\nPidFile {d}/sshd.pid\n\
         AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nAllowUsers {USER}\n\
         MaxStartups 200\nPrintMotd no\nPrintLastLog no\nLogLevel ERROR\n",
        d = dir.display()
    );
    fs::write(dir.join("sshd_config"), config)?;
    let child = Command::new("/usr/sbin/sshd")
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("sshd.log"))?)
        .spawn()
        .context("starting /usr/sbin/sshd")?;
    let service = Service(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!(
                "sshd did not listen: {}",
                fs::read_to_string(dir.join("sshd.log"))?
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Sshd {
        _service: service,
        dir,
        port,
        host_key,
    })
}

/// CPU seconds (user + system) a process used, with its reaped children.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the `(comm)`: state is field 3; utime 14, stime 15, cutime 16, cstime 17.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse::<f64>().unwrap_or(0.0))
        .collect();
    let ticks: f64 = f.get(11..15).map_or(0.0, |v| v.iter().sum());
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / if hz > 0.0 { hz } else { 100.0 }
}

/// CPU seconds the whole machine was busy (all cores: user, nice, system, irq, softirq,
/// steal), from /proc/stat. The bench runs alone, so this is the path's cost, sshd's
/// short-lived children and the kernel's share of loopback included.
fn machine_busy_secs() -> f64 {
    let Ok(stat) = fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let f: Vec<f64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse::<f64>().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: f64 = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| f.get(i))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    busy / if hz > 0.0 { hz } else { 100.0 }
}

/// CPU seconds this process's reaped children used (the ssh clients).
fn children_cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

pub fn run_bench() -> Result<()> {
    anyhow::ensure!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "bench ssh needs root (cgroups, BPF, sshd)"
    );
    let bin = build(true, &["cordon"])?;
    let cordon = bin.join("cordon");
    let sshd = sshd()?;
    let policy_dir = sshd.dir.join("policies");
    fs::create_dir_all(&policy_dir)?;
    fs::write(policy_dir.join("ssh-bench.toml"), POLICY)?;
    let rest = format!(
        "[[agent]]\nname = \"bench\"\n\n[[resource]]\nname = \"host\"\nprotocol = \"ssh\"\naddress = \"127.0.0.1:{port}\"\ncredential = \"bench-key\"\npolicy = \"{policy}\"\nhost_keys = [\"{key}\"]\n\n[[grant]]\nagent = \"bench\"\nresource = \"host\"\nexpires = \"{exp}\"\nlogin = \"{USER}\"\n",
        port = sshd.port,
        policy = policy_dir.join("ssh-bench.toml").display(),
        key = sshd.host_key,
        exp = rfc3339_in(3 * 3600),
    );
    let daemon = Daemon::start(&cordon, "ssh-bench", &rest)?;
    let mut set = daemon.cli();
    set.args(["vault", "set", "bench-key", "--kind", "ssh-key"])
        .stdin(fs::File::open(sshd.dir.join("client"))?);
    run(&mut set, "cordon vault set")?;
    let known = sshd.dir.join("cordon_known_hosts");
    let kh = run(
        daemon
            .cli()
            .args(["ssh-config", "--agent", "bench", "--known-hosts"]),
        "cordon ssh-config --known-hosts",
    )?;
    fs::write(&known, kh)?;
    let cfg = sshd.dir.join("cordon_ssh_config");
    let text = run(
        daemon
            .cli()
            .args(["ssh-config", "--agent", "bench", "--known-hosts-file"])
            .arg(&known),
        "cordon ssh-config",
    )?;
    fs::write(&cfg, text)?;
    let direct_known = sshd.dir.join("direct_known_hosts");
    fs::write(
        &direct_known,
        format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key),
    )?;

    let direct = |args: &[&str]| -> Command {
        let mut c = Command::new("ssh");
        c.args(["-F", "/dev/null", "-p", &sshd.port.to_string(), "-i"])
            .arg(sshd.dir.join("client"))
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", direct_known.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .arg(format!("{USER}@127.0.0.1"))
            .args(args);
        c
    };
    let through = |args: &[&str]| -> Command {
        let mut c = daemon.cli();
        c.args(["run", "--agent", "bench", "--", "ssh", "-F"])
            .arg(&cfg)
            .arg("host")
            .args(args);
        c
    };
    let big = sshd.dir.join("big").display().to_string();
    let cat = ["cat", big.as_str()];

    println!("ssh bench: sshd 127.0.0.1:{}, 1 GiB cat x{BULK_ROUNDS}, {EXECS} x `true` x{EXEC_ROUNDS}, alternating", sshd.port);
    let sshd_pid = sshd._service.0.id();
    let daemon_pid = daemon.pid().unwrap_or(0);
    let mut bulk: [Vec<f64>; 2] = Default::default();
    // CPU seconds per GiB moved, all processes on the path (client, sshd, cordon).
    let mut cpu: [Vec<f64>; 2] = Default::default();
    for round in 0..BULK_ROUNDS {
        for (i, mk) in [&direct as &dyn Fn(&[&str]) -> Command, &through]
            .iter()
            .enumerate()
        {
            let mut c = mk(&cat);
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
            let cpu0 = cpu_secs(sshd_pid) + cpu_secs(daemon_pid) + children_cpu_secs();
            let busy0 = machine_busy_secs();
            let t = Instant::now();
            let mut child = c.spawn().context("ssh cat")?;
            let mut out = child.stdout.take().context("stdout")?;
            let n = std::io::copy(&mut out, &mut std::io::sink())?;
            let status = child.wait()?;
            let secs = t.elapsed().as_secs_f64();
            if !status.success() || n != BULK_BYTES {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                bail!(
                    "ssh cat ({}) read {n} bytes, {status}: {err}",
                    ["direct", "cordon"][i.min(1)]
                );
            }
            let mbps = n as f64 / secs / 1e6;
            // sshd's per-connection child is reaped by the listener: give it a moment.
            std::thread::sleep(Duration::from_millis(300));
            let used = cpu_secs(sshd_pid) + cpu_secs(daemon_pid) + children_cpu_secs() - cpu0;
            let busy = machine_busy_secs() - busy0;
            println!(
                "  round {round} {:>6}: {mbps:8.1} MB/s; CPU s: {used:5.1} in ssh/sshd/cordon, {busy:5.1} machine-wide ({:.2} of {} cores busy)",
                ["direct", "cordon"][i.min(1)],
                busy / secs,
                std::thread::available_parallelism().map_or(0, |n| n.get())
            );
            if let Some(v) = bulk.get_mut(i) {
                v.push(mbps);
            }
            if let Some(v) = cpu.get_mut(i) {
                v.push(busy);
            }
        }
    }
    let mut lat: [Vec<f64>; 2] = Default::default();
    for _ in 0..EXEC_ROUNDS {
        for (i, mk) in [&direct as &dyn Fn(&[&str]) -> Command, &through]
            .iter()
            .enumerate()
        {
            for _ in 0..EXECS {
                let t = Instant::now();
                let out = mk(&["true"]).output()?;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                if !out.status.success() {
                    bail!("ssh true failed: {}", String::from_utf8_lossy(&out.stderr));
                }
                if let Some(v) = lat.get_mut(i) {
                    v.push(ms);
                }
            }
        }
    }
    let [cd, cc] = cpu;
    let (cd, cc) = (median(cd), median(cc));
    let [bd, bc] = bulk;
    let [ld, lc] = lat;
    let (bd, bc, ld, lc) = (median(bd), median(bc), median(ld), median(lc));
    let tr = bc / bd;
    let lr = lc / ld;
    println!("\n| measure | direct | cordon | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| `ssh host cat` 1 GiB throughput (median) | {bd:.0} MB/s | {bc:.0} MB/s | {tr:.2}x | >= {THROUGHPUT_TARGET}x {} |",
        if tr >= THROUGHPUT_TARGET { "met" } else { "MISSED" }
    );
    println!(
        "| `ssh host true` latency p50 ({EXECS}x{EXEC_ROUNDS}) | {ld:.1} ms | {lc:.1} ms | {lr:.2}x | <= {LATENCY_TARGET}x {} |",
        if lr <= LATENCY_TARGET { "met" } else { "MISSED" }
    );
    println!(
        "| CPU seconds per GiB, machine-wide | {cd:.1} | {cc:.1} | {:.2}x | (the box has {} cores) |",
        cc / cd,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    drop(daemon);
    let _ = fs::remove_dir_all(&sshd.dir);
    Ok(())
}
