//! The `cargo xtask bench connect` client, run both directly and inside an
//! agent cgroup (built in release so its own cost stays small):
//! `cordon-bench-client echo ADDR N` or `cordon-bench-client bulk ADDR BYTES`.
//! Prints one JSON line.
//!
//! `cordon-bench-client floor LISTEN TARGET` is the reference relay the
//! benchmark calls "floor": the least a userspace relay can do for a client
//! that connects one at a time (blocking, one connection at a time, accept,
//! connect, poll + read/write both ways, no checks, no audit). It prints its
//! port and serves until killed. `floor-threads LISTEN TARGET` is the same
//! relay for concurrent clients, one thread per connection (the
//! `cargo xtask bench postgres` floor).

use std::{
    io::{Read, Write},
    net::{Shutdown, TcpStream},
    time::Instant,
};

use anyhow::{bail, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, addr, n] = args.as_slice() else {
        bail!("usage: cordon-bench-client echo|bulk ADDR N | floor|floor-threads LISTEN TARGET")
    };
    if mode == "floor" {
        return floor(addr, n);
    }
    if mode == "floor-threads" {
        return floor_threads(addr, n);
    }
    let n: u64 = n.parse()?;
    match mode.as_str() {
        "echo" => echo(addr, n),
        "bulk" => bulk(addr, n),
        other => bail!("unknown mode {other}"),
    }
}

/// n x (connect, send 16 bytes, read them back, close), timing each.
fn echo(addr: &str, n: u64) -> Result<()> {
    let mut lat = Vec::with_capacity(n as usize);
    let msg = [7u8; 16];
    let mut buf = [0u8; 16];
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.write_all(&msg)?;
        s.read_exact(&mut buf)?;
        drop(s);
        lat.push(t.elapsed().as_nanos() as u64);
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 - 1.0) * p) as usize)
            .copied()
            .unwrap_or(0)
    };
    println!(
        "{}",
        serde_json::json!({"n": n, "secs": secs, "p50_ns": pct(0.50), "p99_ns": pct(0.99)})
    );
    Ok(())
}

/// Upload n bytes, then wait for the server's count.
fn bulk(addr: &str, n: u64) -> Result<()> {
    let chunk = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut s = TcpStream::connect(addr)?;
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        s.write_all(chunk.get(..k).unwrap_or_default())?;
        left -= k as u64;
    }
    s.shutdown(Shutdown::Write)?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let secs = start.elapsed().as_secs_f64();
    if reply.trim() != n.to_string() {
        bail!("server counted {reply:?} bytes, sent {n}");
    }
    println!("{}", serde_json::json!({"bytes": n, "secs": secs}));
    Ok(())
}

/// See the module documentation.
fn floor(listen: &str, target: &str) -> Result<()> {
    let listener = std::net::TcpListener::bind(listen)?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let mut buf = vec![0u8; 256 * 1024];
    for agent in listener.incoming() {
        let Ok(agent) = agent else { continue };
        let Ok(upstream) = TcpStream::connect(target) else {
            continue;
        };
        relay_pair(agent, upstream, &mut buf);
    }
    Ok(())
}

/// `floor-threads`: the same relay for concurrent clients (pgbench's
/// connections), one thread per connection.
fn floor_threads(listen: &str, target: &str) -> Result<()> {
    let listener = std::net::TcpListener::bind(listen)?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    for agent in listener.incoming() {
        let Ok(agent) = agent else { continue };
        let target = target.to_owned();
        std::thread::spawn(move || {
            if let Ok(upstream) = TcpStream::connect(&target) {
                relay_pair(agent, upstream, &mut vec![0u8; 64 * 1024]);
            }
        });
    }
    Ok(())
}

/// poll + read/write both ways until both sides are done (or one fails).
fn relay_pair(mut agent: TcpStream, mut upstream: TcpStream, buf: &mut [u8]) {
    use std::os::fd::AsRawFd as _;
    let _ = agent.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let mut open = [true, true];
    while open.iter().any(|o| *o) {
        let mut fds = [
            libc::pollfd {
                fd: if open[0] { agent.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if open[1] { upstream.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfd for the call.
        #[allow(unsafe_code)]
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if rc < 0 {
            return;
        }
        for (i, fd) in fds.iter().enumerate() {
            if fd.revents == 0 {
                continue;
            }
            let (from, to) = if i == 0 {
                (&mut agent, &mut upstream)
            } else {
                (&mut upstream, &mut agent)
            };
            match from.read(buf) {
                Ok(0) => {
                    let _ = to.shutdown(Shutdown::Write);
                    if let Some(o) = open.get_mut(i) {
                        *o = false;
                    }
                }
                Ok(k) => {
                    if to.write_all(buf.get(..k).unwrap_or_default()).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }
}
