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

pub fn run(kind: &str) -> Result<()> {
    match kind {
        "connect" => connect(),
        other => bail!("unknown benchmark `{other}` (available: connect)"),
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

fn connect() -> Result<()> {
    anyhow::ensure!(
        crate::util::is_root(),
        "the benchmark loads eBPF programs: run it as root"
    );
    println!("== building cordon (release)");
    let bin = build(true, &["cordon", "cordon-tests"])?;
    let me = bin.join("cordon-bench-client");
    let (echo, sink) = servers()?;
    let config = format!(
        "[[agent]]\nname = \"bench\"\n\n[[resource]]\nname = \"echo\"\nprotocol = \"tcp\"\naddress = \"127.0.0.1:{echo}\"\n\n[[resource]]\nname = \"sink\"\nprotocol = \"tcp\"\naddress = \"127.0.0.1:{sink}\"\n\n[[grant]]\nagent = \"bench\"\nresource = \"echo\"\nexpires = \"{e}\"\n\n[[grant]]\nagent = \"bench\"\nresource = \"sink\"\nexpires = \"{e}\"\n",
        e = rfc3339_in(3600)
    );
    let daemon = Daemon::start(&bin.join("cordon"), "bench", &config)?;
    let client = |via_gateway: bool, args: &[String]| -> Command {
        let mut c = if via_gateway {
            daemon.run_as("bench", &me)
        } else {
            Command::new(&me)
        };
        c.args(args);
        c
    };
    let echo_args = vec![
        "echo".to_string(),
        format!("127.0.0.1:{echo}"),
        CONNECTS_PER_ROUND.to_string(),
    ];
    let (mut d_rate, mut g_rate, mut d50, mut g50, mut d99, mut g99) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for round in 1..=ROUNDS {
        for via in [false, true] {
            let v = measure(&mut client(via, &echo_args))?;
            let rate = v["n"].as_f64().unwrap_or(0.0) / v["secs"].as_f64().unwrap_or(1.0);
            let p50 = v["p50_ns"].as_f64().unwrap_or(0.0) / 1000.0;
            let p99 = v["p99_ns"].as_f64().unwrap_or(0.0) / 1000.0;
            println!(
                "round {round} {:<8} {:>9.0} conn/s  p50 {:>7.1} µs  p99 {:>7.1} µs",
                if via { "gateway" } else { "direct" },
                rate,
                p50,
                p99
            );
            let (r, a, b) = if via {
                (&mut g_rate, &mut g50, &mut g99)
            } else {
                (&mut d_rate, &mut d50, &mut d99)
            };
            r.push(rate);
            a.push(p50);
            b.push(p99);
        }
    }
    let bulk_args = vec![
        "bulk".to_string(),
        format!("127.0.0.1:{sink}"),
        BULK_BYTES.to_string(),
    ];
    let mut tput = [0.0f64; 2];
    for via in [false, true] {
        let v = measure(&mut client(via, &bulk_args))?;
        let mbps = v["bytes"].as_f64().unwrap_or(0.0) / v["secs"].as_f64().unwrap_or(1.0) / 1e6;
        println!(
            "bulk   {:<8} {:>9.0} MB/s (1 GiB)",
            if via { "gateway" } else { "direct" },
            mbps
        );
        if let Some(slot) = tput.get_mut(usize::from(via)) {
            *slot = mbps;
        }
    }
    let sessions = daemon.cli().args(["status", "--json"]).output()?;
    let status: Value = serde_json::from_slice(&sessions.stdout).unwrap_or_default();
    println!(
        "\nsummary (medians of {ROUNDS} alternating rounds of {CONNECTS_PER_ROUND} connects; gateway / direct):"
    );
    let (dr, gr) = (median(d_rate), median(g_rate));
    let (dl50, gl50) = (median(d50), median(g50));
    let (dl99, gl99) = (median(d99), median(g99));
    println!(
        "  connect+echo rate     {gr:>9.0} vs {dr:>9.0} conn/s   ratio {:.2}x",
        gr / dr
    );
    println!(
        "  connect+echo p50      {gl50:>9.1} vs {dl50:>9.1} µs       ratio {:.2}x (target <= 1.5x)",
        gl50 / dl50
    );
    println!(
        "  connect+echo p99      {gl99:>9.1} vs {dl99:>9.1} µs       ratio {:.2}x",
        gl99 / dl99
    );
    println!(
        "  bulk 1 GiB            {:>9.0} vs {:>9.0} MB/s     ratio {:.2}x (target >= 0.8x)",
        tput[1],
        tput[0],
        tput[1] / tput[0]
    );
    println!(
        "  sessions recorded by the gateway: {}",
        status["sessions"]["recorded"]
    );
    drop(daemon);
    Ok(())
}
