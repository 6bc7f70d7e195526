//! `cargo xtask bench connect`: the same client, direct to a loopback echo
//! server and through Cordon (from inside an agent cgroup), alternating in
//! one run, reported as ratios. (a) connect + 16-byte echo + close: rate and
//! p50/p99 latency; (b) one 1 GiB upload: throughput.

use std::{
    io::{Read, Write},
    net::TcpListener,
    process::Command,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::gateway::{build, rfc3339_in, Daemon};

const ROUNDS: usize = 3;
const CONNECTS_PER_ROUND: usize = 3000;
const BULK_BYTES: u64 = 1 << 30;
/// 1 GiB uploads per path (`CORDON_BENCH_BULK_ROUNDS` overrides): loopback
/// throughput swings by a third between rounds here, so enough rounds for
/// the median of per-round ratios to settle.
const BULK_ROUNDS: usize = 7;

pub fn run(kind: &str) -> Result<()> {
    match kind {
        "connect" => connect(),
        "postgres" => crate::bench_pg::run(),
        "ssh" => crate::bench_ssh::run_bench(),
        other => bail!("unknown benchmark `{other}` (available: connect, postgres, ssh)"),
    }
}

/// Echo server (one 16-byte message per connection, answered inline, then
/// closed: no thread per connection, so the baseline is not inflated) and a
/// bulk sink (one thread per connection; replies with the byte count).
fn servers() -> Result<(u16, u16)> {
    let echo = TcpListener::bind("127.0.0.1:0")?;
    let sink = TcpListener::bind("127.0.0.1:0")?;
    let ports = (echo.local_addr()?.port(), sink.local_addr()?.port());
    std::thread::spawn(move || {
        for mut s in echo.incoming().flatten() {
            let _ = s.set_nodelay(true);
            let mut buf = [0u8; 16];
            if s.read_exact(&mut buf).is_ok() {
                let _ = s.write_all(&buf);
            }
        }
    });
    std::thread::spawn(move || {
        for mut s in sink.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 * 1024];
                let mut total = 0u64;
                while let Ok(k) = s.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    total += k as u64;
                }
                let _ = write!(s, "{total}");
            });
        }
    });
    Ok(ports)
}

fn measure(cmd: &mut Command) -> Result<Value> {
    let out = cmd.output().context("running the bench client")?;
    if !out.status.success() {
        bail!(
            "bench client failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(line.trim()).with_context(|| format!("bench client said {line:?}"))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A naive relay for reference, the kind the issue measured at 1.79x: a
/// single-threaded tokio runtime, one task per connection, connect upstream,
/// `copy_bidirectional`. No checks, no audit. Returns its port.
fn naive_relay(target: u16) -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((mut a, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = a.set_nodelay(true);
                    if let Ok(mut b) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = b.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
                    }
                });
            }
        });
    });
    Ok(port)
}

/// The "floor" reference relay (see `cordon-bench-client floor`), run as
/// its own process; killed when dropped. `mode`: `floor` (one connection at
/// a time) or `floor-threads` (a thread per connection).
pub(crate) struct Floor {
    child: std::process::Child,
    pub(crate) port: u16,
}

impl Floor {
    pub(crate) fn start(client_bin: &std::path::Path, mode: &str, target: u16) -> Result<Floor> {
        let mut child = Command::new(client_bin)
            .args([mode, "127.0.0.1:0", &format!("127.0.0.1:{target}")])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting the floor relay")?;
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line)?;
        }
        let port = match line.trim().parse() {
            Ok(p) => p,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the floor relay said {line:?}, not its port");
            }
        };
        Ok(Floor { child, port })
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Path {
    Direct,
    Floor,
    Naive,
    Gateway,
}

impl Path {
    const ALL: [Path; 4] = [Path::Direct, Path::Floor, Path::Naive, Path::Gateway];
    fn label(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Floor => "floor",
            Path::Naive => "naive",
            Path::Gateway => "cordon",
        }
    }
}

#[derive(Default)]
struct Samples {
    rate: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    mbps: Vec<f64>,
}

fn connect() -> Result<()> {
    anyhow::ensure!(
        crate::util::is_root(),
        "the benchmark loads eBPF programs: run it as root"
    );
    println!("== building cordon (release)");
    let bin = build(true, &["cordon", "cordon-tests"])?;
    let client_bin = bin.join("cordon-bench-client");
    let (echo, sink) = servers()?;
    let (naive_echo, naive_sink) = (naive_relay(echo)?, naive_relay(sink)?);
    let (floor_echo, floor_sink) = (
        Floor::start(&client_bin, "floor", echo)?,
        Floor::start(&client_bin, "floor", sink)?,
    );
    let config = format!(
        "[[agent]]\nname = \"bench\"\n\n[[resource]]\nname = \"echo\"\nprotocol = \"tcp\"\naddress = \"127.0.0.1:{echo}\"\n\n[[resource]]\nname = \"sink\"\nprotocol = \"tcp\"\naddress = \"127.0.0.1:{sink}\"\n\n[[grant]]\nagent = \"bench\"\nresource = \"echo\"\nexpires = \"{e}\"\n\n[[grant]]\nagent = \"bench\"\nresource = \"sink\"\nexpires = \"{e}\"\n",
        e = rfc3339_in(3600)
    );
    let daemon = Daemon::start(&bin.join("cordon"), "bench", &config)?;
    // The gateway client dials the real server address from inside the
    // agent cgroup; the others dial their target directly, outside it.
    let client = |path: Path, mode: &str, port: u16, n: String| -> Command {
        let mut c = match path {
            Path::Gateway => daemon.run_as("bench", &client_bin),
            Path::Direct | Path::Floor | Path::Naive => Command::new(&client_bin),
        };
        c.args([mode.to_string(), format!("127.0.0.1:{port}"), n]);
        c
    };
    // CORDON_BENCH_CONNECTS overrides the connects per round (profiling).
    let connects = std::env::var("CORDON_BENCH_CONNECTS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(CONNECTS_PER_ROUND);
    let bulk_rounds = std::env::var("CORDON_BENCH_BULK_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(BULK_ROUNDS);
    let mut samples: [Samples; 4] = Default::default();
    for round in 1..=ROUNDS {
        for (i, path) in Path::ALL.into_iter().enumerate() {
            let port = match path {
                Path::Naive => naive_echo,
                Path::Floor => floor_echo.port,
                Path::Direct | Path::Gateway => echo,
            };
            let v = measure(&mut client(path, "echo", port, connects.to_string()))?;
            let rate = v["n"].as_f64().unwrap_or(0.0) / v["secs"].as_f64().unwrap_or(1.0);
            let p50 = v["p50_ns"].as_f64().unwrap_or(0.0) / 1000.0;
            let p99 = v["p99_ns"].as_f64().unwrap_or(0.0) / 1000.0;
            println!(
                "round {round} {:<7} {:>9.0} conn/s  p50 {:>7.1} µs  p99 {:>7.1} µs",
                path.label(),
                rate,
                p50,
                p99
            );
            if let Some(s) = samples.get_mut(i) {
                s.rate.push(rate);
                s.p50.push(p50);
                s.p99.push(p99);
            }
        }
    }
    for round in 1..=bulk_rounds {
        // Rotate who goes first, so drift does not favour one path.
        for k in 0..Path::ALL.len() {
            let i = (round + k) % Path::ALL.len();
            let Some(&path) = Path::ALL.get(i) else {
                continue;
            };
            let port = match path {
                Path::Naive => naive_sink,
                Path::Floor => floor_sink.port,
                Path::Direct | Path::Gateway => sink,
            };
            let v = measure(&mut client(path, "bulk", port, BULK_BYTES.to_string()))?;
            let mbps = v["bytes"].as_f64().unwrap_or(0.0) / v["secs"].as_f64().unwrap_or(1.0) / 1e6;
            println!(
                "bulk {round} {:<7} {:>9.0} MB/s (1 GiB)",
                path.label(),
                mbps
            );
            if let Some(s) = samples.get_mut(i) {
                s.mbps.push(mbps);
            }
        }
    }
    let status = daemon.cli().args(["status", "--json"]).output()?;
    let status: Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
    // Per-round ratios against the direct run of the same round (paired:
    // the machine's drift between rounds cancels out).
    let paired = |i: usize| -> f64 {
        let (Some(direct), Some(other)) = (samples.first(), samples.get(i)) else {
            return f64::NAN;
        };
        median(
            direct
                .mbps
                .iter()
                .zip(&other.mbps)
                .map(|(d, o)| o / d)
                .collect(),
        )
    };
    let bulk_paired = [paired(1), paired(2), paired(3)];
    let [d, f, n, g] =
        samples.map(|s| (median(s.rate), median(s.p50), median(s.p99), median(s.mbps)));
    println!(
        "\nsummary: medians of {ROUNDS} alternating rounds of {connects} connects and {bulk_rounds} of 1 GiB;"
    );
    println!(
        "ratios against direct; for reference, measured in the same run: floor = the least a userspace"
    );
    println!(
        "relay does (blocking, one connection at a time, no checks), naive = a tokio copy_bidirectional relay"
    );
    let row = |what: &str, unit: &str, pick: fn(&(f64, f64, f64, f64)) -> f64, target: &str| {
        let (dv, fv, nv, gv) = (pick(&d), pick(&f), pick(&n), pick(&g));
        println!(
            "  {what:<19} cordon {gv:>7.1}  floor {fv:>7.1}  naive {nv:>7.1}  direct {dv:>7.1} {unit:<7} cordon {:.2}x  floor {:.2}x  naive {:.2}x{target}",
            gv / dv,
            fv / dv,
            nv / dv
        );
    };
    row("connect+echo rate", "conn/s", |m| m.0, "");
    row("connect+echo p50", "µs", |m| m.1, "  (target <= 1.5x)");
    println!(
        "  {:<19} 1.5x leaves a relay {:.1} µs over direct's p50; it added: cordon {:+.1}, floor {:+.1}, naive {:+.1} µs",
        "p50 budget",
        0.5 * d.1,
        g.1 - d.1,
        f.1 - d.1,
        n.1 - d.1
    );
    row("connect+echo p99", "µs", |m| m.2, "");
    row("bulk 1 GiB", "MB/s", |m| m.3, "");
    let [fp, np, gp] = bulk_paired;
    println!(
        "  {:<19} cordon {gp:.2}x  floor {fp:.2}x  naive {np:.2}x  (median of per-round ratios; target >= 0.8x)",
        "bulk 1 GiB paired"
    );
    println!(
        "  sessions recorded by cordon: {}",
        status["sessions"]["recorded"]
    );
    drop(daemon);
    Ok(())
}
