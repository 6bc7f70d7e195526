//! Agent-side probes for the wire checks (cgroup_skb programs). One JSON
//! line each; exit 0.
//! - `cordon-wire listen ADDR SECS`: listen, report whether a connection
//!   arrived within SECS.
//! - `cordon-wire srh-udp [IPV6]:PORT NEXT_SEGMENT`: a UDP/IPv6 datagram
//!   carrying a segment routing header (type 4) whose next segment is
//!   NEXT_SEGMENT, i.e. a packet whose wire destination differs from the
//!   address the socket API was given.

use std::{
    net::{Ipv6Addr, SocketAddr, TcpListener, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::json;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let out = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["listen", addr, secs] => listen(addr, secs.parse()?)?,
        ["srh-udp", dst, next] => srh_udp(dst.parse()?, next.parse()?)?,
        _ => bail!("usage: cordon-wire listen ADDR SECS | srh-udp [IPV6]:PORT NEXT"),
    };
    println!("{out}");
    Ok(())
}

fn listen(addr: &str, secs: u64) -> Result<serde_json::Value> {
    let listener = TcpListener::bind(addr).context("bind")?;
    listener.set_nonblocking(true)?;
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if let Ok((_, peer)) = listener.accept() {
            return Ok(json!({"op": "listen", "accepted": true, "peer": peer.to_string()}));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(json!({"op": "listen", "accepted": false}))
}

fn srh_udp(dst: SocketAddr, next: Ipv6Addr) -> Result<serde_json::Value> {
    let SocketAddr::V6(dst6) = dst else {
        bail!("srh-udp needs an IPv6 destination")
    };
    let sock = UdpSocket::bind("[::]:0")?;
    // struct ipv6_sr_hdr + 2 segments: segments[0] is the final destination,
    // segments[1] the next hop (segments_left = 1).
    let mut hdr = vec![0u8, 4, 4, 1, 1, 0, 0, 0];
    hdr.extend_from_slice(&dst6.ip().octets());
    hdr.extend_from_slice(&next.octets());
    const IPV6_RTHDR: libc::c_int = 57;
    // SAFETY: hdr is a live buffer of the given length for the call.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IPV6,
            IPV6_RTHDR,
            hdr.as_ptr().cast(),
            hdr.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        return Ok(
            json!({"op": "srh-udp", "ok": false, "stage": "setsockopt", "errno": e.raw_os_error()}),
        );
    }
    Ok(match sock.send_to(b"EXFIL-VIA-SRH", dst) {
        Ok(_) => json!({"op": "srh-udp", "ok": true, "stage": null, "errno": null}),
        Err(e) => json!({"op": "srh-udp", "ok": false, "stage": "send", "errno": e.raw_os_error()}),
    })
}
