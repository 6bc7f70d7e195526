//! A stand-in for third-party transparent-proxy code: `cordon-odst ADDR`
//! binds ADDR, prints `ready`, accepts one connection, asks the kernel for
//! its original destination (getsockopt SOL_IP SO_ORIGINAL_DST), prints it
//! as one JSON line, answers "ok" and exits. Tests run it inside the
//! daemon's cgroup, where Cordon's getsockopt program answers.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, TcpListener},
    os::fd::AsRawFd,
};

fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: cordon-odst ADDR"))?;
    let listener = TcpListener::bind(&addr)?;
    println!("ready");
    std::io::stdout().flush()?;
    let (mut stream, peer) = listener.accept()?;
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: an all-zero sockaddr_in is a valid value.
    let mut dst: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: dst/len describe a writable sockaddr_in for the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            std::ptr::from_mut(&mut dst).cast(),
            &mut len,
        )
    };
    let original = if rc == 0 {
        serde_json::json!(format!(
            "{}:{}",
            Ipv4Addr::from(u32::from_be(dst.sin_addr.s_addr)),
            u16::from_be(dst.sin_port)
        ))
    } else {
        serde_json::Value::Null
    };
    let errno = (rc != 0).then(|| std::io::Error::last_os_error().raw_os_error());
    println!(
        "{}",
        serde_json::json!({"peer": peer.to_string(), "original_dst": original, "errno": errno})
    );
    let mut hi = [0u8; 2];
    let _ = stream.read_exact(&mut hi);
    stream.write_all(b"ok")?;
    Ok(())
}
