//! `cordon-probe`: the agent-side probe the integration tests run inside an
//! agent cgroup. Each subcommand tries one kind of network access and prints
//! exactly one JSON line saying what happened; it exits 0 even when the access
//! failed (the JSON says so) and 2 when its arguments are wrong.

use std::env;
use std::fs;
use std::io::{self, Read, Write};
use std::mem;
use std::net::{Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const USAGE: &str = "\
usage: cordon-probe COMMAND [ARGS]
  tcp ADDR [--send TEXT] [--read N] [--timeout-ms MS] [--shutdown] [--bind IPV4:PORT]
  udp ADDR [--connect] [--send TEXT] [--read-ms MS]
  tfo ADDR [--timeout-ms MS]
  raw
  packet
  socket DOMAIN TYPE PROTOCOL
  unix PATH [--dgram]            (PATH starting with @ = abstract namespace)
  unix-request PATH LINE         (connects, sends LINE and a newline, prints the reply line)
  whoami
  spawn-child COMMAND [ARGS]     (runs this probe again as a child process)
  hold ADDR SECONDS [--timeout-ms MS]
  uring                          (io_uring_setup(2) with 8 entries)
  userns                         (unshare/clone with each CLONE_NEW* flag, clone3, setns)
  mount                          (each mount-family syscall, with harmless arguments)
  plunder PID|child              (ptrace attach, process_vm_readv/writev (the write to an
                                  unmapped address: EFAULT when allowed), pidfd_getfd, kcmp,
                                  /proc/PID/maps, /proc/PID/mem for writing; `child`: on
                                  a `sleep` this probe starts)
  ipopts                         (setsockopt of IPv6 routing/extension headers and of
                                  IP_OPTIONS: source route, and record route as IP_OPTIONS_RR)
  x32                            (getpid with the x32 syscall bit set)
  tty                            (on a fresh pty: ioctl TIOCSTI and TIOCLINUX; and
                                  socketpair of unix datagram and stream sockets)
  thread                         (starts and joins a thread)
  rename                         (link/rename across directories under /tmp)
  idle SECONDS                   (prints its line first, then sleeps)
  no-landlock ERRNO COMMAND [ARGS]
                                 (execs COMMAND with landlock_create_ruleset failing with
                                  ERRNO, as on a kernel without Landlock)
ADDR is IP:PORT, [IPV6]:PORT or [::ffff:A.B.C.D]:PORT (host names are resolved).
Each command prints one JSON line and exits 0; bad arguments exit 2.
Every JSON line carries \"pid\": the id of the process that printed it;
spawn-child adds \"parent_pid\" to its child's line.";

const DEFAULT_TIMEOUT_MS: u64 = 5000;

fn main() -> ExitCode {
    let args: Vec<String> = env::args().skip(1).collect();
    match dispatch(&args) {
        Ok(Outcome::Json(mut value)) => {
            with_pid(&mut value);
            println!("{value}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Exit(code)) => ExitCode::from(code),
        Err(msg) => {
            eprintln!("cordon-probe: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Adds `"pid"` (this process) to a JSON object, so tests can match a line
/// with what the daemon attested.
fn with_pid(value: &mut Value) {
    if let Some(map) = value.as_object_mut() {
        map.insert("pid".to_owned(), json!(std::process::id()));
    }
}

enum Outcome {
    /// Print this one line and exit 0.
    Json(Value),
    /// Output was already written; exit with this code.
    Exit(u8),
}

type ArgResult<T> = Result<T, String>;

fn dispatch(args: &[String]) -> ArgResult<Outcome> {
    let Some((command, rest)) = args.split_first() else {
        return Err("missing command".to_owned());
    };
    let value = match command.as_str() {
        "tcp" => {
            let a = Args::parse(
                rest,
                &["--send", "--read", "--timeout-ms", "--bind"],
                &["--shutdown"],
            )?;
            let [addr] = a.positional::<1>()?;
            let bind = a.value("--bind").map(parse_addr).transpose()?;
            tcp(
                parse_addr(&addr)?,
                bind,
                a.value("--send"),
                a.number("--read", 0)?,
                Duration::from_millis(a.number("--timeout-ms", DEFAULT_TIMEOUT_MS)?),
                a.switch("--shutdown"),
            )
        }
        "udp" => {
            let a = Args::parse(rest, &["--send", "--read-ms"], &["--connect"])?;
            let [addr] = a.positional::<1>()?;
            let read = match a.value("--read-ms") {
                Some(_) => Some(Duration::from_millis(a.number("--read-ms", 0)?)),
                None => None,
            };
            udp(
                parse_addr(&addr)?,
                a.switch("--connect"),
                a.value("--send").unwrap_or("probe"),
                read,
            )
        }
        "tfo" => {
            let a = Args::parse(rest, &["--timeout-ms"], &[])?;
            let [addr] = a.positional::<1>()?;
            tfo(
                parse_addr(&addr)?,
                Duration::from_millis(a.number("--timeout-ms", DEFAULT_TIMEOUT_MS)?),
            )
        }
        "raw" => {
            Args::parse(rest, &[], &[])?.positional::<0>()?;
            open_socket_op("raw", libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)
        }
        "packet" => {
            Args::parse(rest, &[], &[])?.positional::<0>()?;
            let all = i32::from((libc::ETH_P_ALL as u16).to_be());
            open_socket_op("packet", libc::AF_PACKET, libc::SOCK_RAW, all)
        }
        "socket" => {
            let [domain, ty, proto] = Args::parse(rest, &[], &[])?.positional::<3>()?;
            open_socket_op(
                "socket",
                parse_int(&domain, "DOMAIN")?,
                parse_int(&ty, "TYPE")?,
                parse_int(&proto, "PROTOCOL")?,
            )
        }
        "unix" => {
            let a = Args::parse(rest, &[], &["--dgram"])?;
            let [path] = a.positional::<1>()?;
            unix(&path, a.switch("--dgram"))?
        }
        "unix-request" => {
            let [path, line] = Args::parse(rest, &[], &[])?.positional::<2>()?;
            unix_request(&path, &line)
        }
        "whoami" => {
            Args::parse(rest, &[], &[])?.positional::<0>()?;
            whoami()
        }
        "spawn-child" => {
            if rest.is_empty() {
                return Err("spawn-child needs a command to run".to_owned());
            }
            return Ok(spawn_child(rest));
        }
        "hold" => {
            let a = Args::parse(rest, &["--timeout-ms"], &[])?;
            let [addr, seconds] = a.positional::<2>()?;
            let seconds: f64 = seconds
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| format!("SECONDS must be a non-negative number, not {seconds:?}"))?;
            hold(
                parse_addr(&addr)?,
                Duration::from_secs_f64(seconds),
                Duration::from_millis(a.number("--timeout-ms", DEFAULT_TIMEOUT_MS)?),
            )
        }
        "uring" => {
            Args::parse(rest, &[], &[])?.positional::<0>()?;
            uring()
        }
        "userns" => {
            Args::parse(rest, &[], &[])?.positional::<0>()?;
            confine::userns()
        }
        "mount" => {
            Args::parse(rest, &[], &[])?.positional::<0>()?;
            confine::mount()
        }
        "plunder" => {
            let [target] = Args::parse(rest, &[], &[])?.positional::<1>()?;
            confine::plunder(&target)?
        }
        "ipopts" => {
            Args::parse(rest, &[], &[])?.positional::<0>()?;
            confine::ipopts()
        }
        "x32" => {
            Args::parse(rest, &[], &[])?.positional::<0>()?;
            confine::x32()
        }
        "tty" => {
            Args::parse(rest, &[], &[])?.positional::<0>()?;
            confine::tty()
        }
        "thread" => {
            Args::parse(rest, &[], &[])?.positional::<0>()?;
            confine::thread()
        }
        "rename" => {
            Args::parse(rest, &[], &[])?.positional::<0>()?;
            confine::rename()
        }
        "no-landlock" => {
            let Some((errno, command)) = rest.split_first() else {
                return Err("no-landlock needs ERRNO and a command".to_owned());
            };
            let errno: u32 = errno
                .parse()
                .map_err(|_| format!("ERRNO must be a number, not {errno:?}"))?;
            if command.is_empty() {
                return Err("no-landlock needs a command to run".to_owned());
            }
            return Ok(confine::no_landlock(errno, command));
        }
        "idle" => {
            let [seconds] = Args::parse(rest, &[], &[])?.positional::<1>()?;
            let seconds: u64 = seconds
                .parse()
                .map_err(|_| format!("SECONDS must be a non-negative integer, not {seconds:?}"))?;
            let mut line = json!({"op": "idle", "ok": true});
            with_pid(&mut line);
            println!("{line}");
            let _ = io::stdout().flush();
            std::thread::sleep(Duration::from_secs(seconds));
            return Ok(Outcome::Exit(0));
        }
        "help" | "--help" | "-h" => {
            println!("{USAGE}");
            return Ok(Outcome::Exit(0));
        }
        other => return Err(format!("unknown command {other:?}")),
    };
    Ok(Outcome::Json(value))
}

// ---------------------------------------------------------------------------
// argument parsing

struct Args {
    positional: Vec<String>,
    values: Vec<(String, String)>,
    switches: Vec<String>,
}

impl Args {
    /// `--name VALUE`, `--name=VALUE` for names in `with_value`; bare `--name`
    /// for names in `switches`; everything else positional.
    fn parse(args: &[String], with_value: &[&str], switches: &[&str]) -> ArgResult<Args> {
        let mut parsed = Args {
            positional: Vec::new(),
            values: Vec::new(),
            switches: Vec::new(),
        };
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            if !arg.starts_with("--") {
                parsed.positional.push(arg.clone());
                continue;
            }
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (arg.as_str(), None),
            };
            if with_value.contains(&name) {
                let value = match inline {
                    Some(v) => v,
                    None => iter
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("{name} needs a value"))?,
                };
                parsed.values.push((name.to_owned(), value));
            } else if switches.contains(&name) && inline.is_none() {
                parsed.switches.push(name.to_owned());
            } else {
                return Err(format!("unknown option {arg:?}"));
            }
        }
        Ok(parsed)
    }

    fn positional<const N: usize>(&self) -> ArgResult<[String; N]> {
        <[String; N]>::try_from(self.positional.clone()).map_err(|got| {
            format!(
                "expected {N} positional argument(s), got {}: {got:?}",
                got.len()
            )
        })
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn number<T: std::str::FromStr>(&self, name: &str, default: T) -> ArgResult<T> {
        match self.value(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("{name} must be a non-negative integer, not {v:?}")),
        }
    }

    fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }
}

fn parse_int(s: &str, what: &str) -> ArgResult<i32> {
    s.parse()
        .map_err(|_| format!("{what} must be an integer, not {s:?}"))
}

fn parse_addr(s: &str) -> ArgResult<SocketAddr> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.to_socket_addrs()
        .map_err(|e| format!("bad address {s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("address {s:?} resolved to nothing"))
}

// ---------------------------------------------------------------------------
// raw sockets through libc

fn errno_of(e: &io::Error) -> Value {
    json!(e.raw_os_error())
}

fn new_socket(domain: i32, ty: i32, protocol: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket() takes plain integers; the result is checked below.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, protocol) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a freshly created descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A socket address in the kernel's layout.
enum RawAddr {
    V4(libc::sockaddr_in),
    V6(libc::sockaddr_in6),
    Unix(libc::sockaddr_un, libc::socklen_t),
}

impl RawAddr {
    fn inet(addr: &SocketAddr) -> RawAddr {
        match addr {
            SocketAddr::V4(a) => {
                // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
                let mut sin: libc::sockaddr_in = unsafe { mem::zeroed() };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
                RawAddr::V4(sin)
            }
            SocketAddr::V6(a) => {
                // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
                let mut sin6: libc::sockaddr_in6 = unsafe { mem::zeroed() };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                sin6.sin6_scope_id = a.scope_id();
                RawAddr::V6(sin6)
            }
        }
    }

    /// A unix socket path; a leading '@' selects the abstract namespace.
    fn unix(path: &str) -> ArgResult<RawAddr> {
        // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
        let mut sun: libc::sockaddr_un = unsafe { mem::zeroed() };
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let (bytes, abstract_ns) = match path.strip_prefix('@') {
            Some(name) => (name.as_bytes(), true),
            None => (path.as_bytes(), false),
        };
        // Abstract: a leading NUL then the name; path: the name then a NUL.
        let used = bytes.len() + 1;
        if used > sun.sun_path.len() {
            return Err(format!("unix socket path {path:?} is too long"));
        }
        let start = usize::from(abstract_ns);
        for (slot, byte) in sun.sun_path.iter_mut().skip(start).zip(bytes) {
            *slot = *byte as libc::c_char;
        }
        // Abstract: every byte of the length is part of the name (no trailing
        // NUL); path: the length includes the terminating NUL.
        let len = mem::offset_of!(libc::sockaddr_un, sun_path) + used;
        Ok(RawAddr::Unix(sun, len as libc::socklen_t))
    }

    fn family(&self) -> i32 {
        match self {
            RawAddr::V4(_) => libc::AF_INET,
            RawAddr::V6(_) => libc::AF_INET6,
            RawAddr::Unix(..) => libc::AF_UNIX,
        }
    }

    fn as_ptr(&self) -> *const libc::sockaddr {
        match self {
            RawAddr::V4(a) => (a as *const libc::sockaddr_in).cast(),
            RawAddr::V6(a) => (a as *const libc::sockaddr_in6).cast(),
            RawAddr::Unix(a, _) => (a as *const libc::sockaddr_un).cast(),
        }
    }

    fn len(&self) -> libc::socklen_t {
        match self {
            RawAddr::V4(_) => mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            RawAddr::V6(_) => mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            RawAddr::Unix(_, len) => *len,
        }
    }
}

fn sys_connect(fd: &OwnedFd, addr: &RawAddr) -> io::Result<()> {
    // SAFETY: addr points at a live sockaddr of addr.len() bytes.
    let rc = unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr(), addr.len()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn sys_send(fd: &OwnedFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: data is a live buffer of data.len() bytes.
    let n = unsafe { libc::send(fd.as_raw_fd(), data.as_ptr().cast(), data.len(), 0) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn sys_sendto(fd: &OwnedFd, data: &[u8], flags: i32, addr: &RawAddr) -> io::Result<usize> {
    // SAFETY: data is a live buffer of data.len() bytes; addr points at a live
    // sockaddr of addr.len() bytes.
    let n = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            data.as_ptr().cast(),
            data.len(),
            flags,
            addr.as_ptr(),
            addr.len(),
        )
    };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

fn set_timeout(fd: &OwnedFd, option: i32, timeout: Duration) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: timeout.as_secs().try_into().unwrap_or(libc::time_t::MAX),
        tv_usec: timeout.subsec_micros().into(),
    };
    // SAFETY: tv is a live timeval and its exact size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&tv as *const libc::timeval).cast(),
            mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `{"ok":false,...}` fields for a failure at `stage`.
fn failed(op: &str, stage: &str, e: &io::Error) -> Value {
    json!({
        "op": op,
        "ok": false,
        "errno": errno_of(e),
        "error": e.to_string(),
        "stage": stage,
    })
}

// ---------------------------------------------------------------------------
// operations

/// A blocking IPv4 TCP connect from a chosen local address.
fn connect_from(local: SocketAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    use std::os::fd::FromRawFd;
    let (SocketAddr::V4(l), SocketAddr::V4(r)) = (local, addr) else {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    };
    let sin = |a: std::net::SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on an fd we own; the sockaddrs live across
    // each call; the fd is handed to TcpStream only on success.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            std::ptr::from_ref(&one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let la = sin(l);
        if libc::bind(fd, std::ptr::from_ref(&la).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let ra = sin(r);
        if libc::connect(fd, std::ptr::from_ref(&ra).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

fn tcp(
    addr: SocketAddr,
    bind: Option<SocketAddr>,
    send: Option<&str>,
    read: usize,
    timeout: Duration,
    shutdown: bool,
) -> Value {
    let timeout = timeout.max(Duration::from_millis(1));
    let connected = match bind {
        Some(local) => connect_from(local, addr),
        None => TcpStream::connect_timeout(&addr, timeout),
    };
    let mut stream = match connected {
        Ok(s) => s,
        Err(e) => {
            return json!({
                "op": "tcp",
                "connect": "error",
                "connect_errno": errno_of(&e),
                "error": e.to_string(),
                "peer": null,
                "local": null,
                "sent": false,
                "send_error": null,
                "received": "",
                "read_error": null,
                "read_errno": null,
                "timed_out": false,
                "eof": false,
            })
        }
    };
    let peer = stream.peer_addr().ok().map(|a| a.to_string());
    let local = stream.local_addr().ok().map(|a| a.to_string());

    let mut sent = false;
    let mut send_error = None;
    if let Some(text) = send {
        // A write timeout keeps a stalled peer from hanging the probe.
        let _ = stream.set_write_timeout(Some(timeout));
        match stream
            .write_all(text.as_bytes())
            .and_then(|()| stream.flush())
        {
            Ok(()) => sent = true,
            Err(e) => send_error = Some(e.to_string()),
        }
    }
    if shutdown {
        let _ = stream.shutdown(Shutdown::Write);
    }

    let mut received = Vec::new();
    let mut read_error = None;
    let mut read_errno = None;
    let mut timed_out = false;
    let mut eof = false;
    let deadline = Instant::now() + timeout;
    let mut chunk = [0u8; 4096];
    while received.len() < read {
        let now = Instant::now();
        if now >= deadline {
            timed_out = true;
            read_error = Some("timed out".to_owned());
            break;
        }
        let _ = stream.set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))));
        let want = (read - received.len()).min(chunk.len());
        match (&mut stream).take(want as u64).read(&mut chunk) {
            Ok(0) => {
                eof = true;
                break;
            }
            Ok(n) => received.extend(chunk.iter().take(n)),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    timed_out = true;
                }
                read_errno = e.raw_os_error();
                read_error = Some(e.to_string());
                break;
            }
        }
    }

    json!({
        "op": "tcp",
        "connect": "ok",
        "connect_errno": null,
        "error": null,
        "peer": peer,
        "local": local,
        "sent": sent,
        "send_error": send_error,
        "received": String::from_utf8_lossy(&received),
        "read_error": read_error,
        "read_errno": read_errno,
        "timed_out": timed_out,
        "eof": eof,
    })
}

fn udp(addr: SocketAddr, connect: bool, payload: &str, read: Option<Duration>) -> Value {
    let raw = RawAddr::inet(&addr);
    let fd = match new_socket(raw.family(), libc::SOCK_DGRAM, 0) {
        Ok(fd) => fd,
        Err(e) => return failed("udp", "socket", &e),
    };
    if connect {
        if let Err(e) = sys_connect(&fd, &raw) {
            return failed("udp", "connect", &e);
        }
        if let Err(e) = sys_send(&fd, payload.as_bytes()) {
            return failed("udp", "send", &e);
        }
    } else if let Err(e) = sys_sendto(&fd, payload.as_bytes(), 0, &raw) {
        return failed("udp", "send", &e);
    }
    let mut out = json!({
        "op": "udp",
        "ok": true,
        "errno": null,
        "error": null,
        "stage": null,
    });
    if let Some(wait) = read {
        // Optional: wait for one reply datagram.
        let (received, read_errno) =
            match set_timeout(&fd, libc::SO_RCVTIMEO, wait.max(Duration::from_millis(1))) {
                Err(e) => (Value::Null, errno_of(&e)),
                Ok(()) => {
                    let mut buf = [0u8; 65536];
                    // SAFETY: buf is a live, writable buffer of buf.len() bytes.
                    let n = unsafe {
                        libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0)
                    };
                    match usize::try_from(n) {
                        Ok(n) => {
                            let bytes: Vec<u8> = buf.iter().take(n).copied().collect();
                            (json!(String::from_utf8_lossy(&bytes)), Value::Null)
                        }
                        Err(_) => (Value::Null, errno_of(&io::Error::last_os_error())),
                    }
                }
            };
        if let Some(map) = out.as_object_mut() {
            map.insert("received".to_owned(), received);
            map.insert("read_errno".to_owned(), read_errno);
        }
    }
    out
}

fn tfo(addr: SocketAddr, timeout: Duration) -> Value {
    let raw = RawAddr::inet(&addr);
    let fd = match new_socket(raw.family(), libc::SOCK_STREAM, 0) {
        Ok(fd) => fd,
        Err(e) => return failed("tfo", "socket", &e),
    };
    // A blocking connect honours SO_SNDTIMEO.
    let _ = set_timeout(
        &fd,
        libc::SO_SNDTIMEO,
        timeout.max(Duration::from_millis(1)),
    );
    if let Err(e) = sys_sendto(&fd, b"x", libc::MSG_FASTOPEN, &raw) {
        return failed("tfo", "send", &e);
    }
    let stream = TcpStream::from(fd);
    json!({
        "op": "tfo",
        "ok": true,
        "errno": null,
        "error": null,
        "stage": null,
        "peer": stream.peer_addr().ok().map(|a| a.to_string()),
        "local": stream.local_addr().ok().map(|a| a.to_string()),
    })
}

fn open_socket_op(op: &str, domain: i32, ty: i32, protocol: i32) -> Value {
    match new_socket(domain, ty, protocol) {
        Ok(_fd) => json!({"op": op, "ok": true, "errno": null, "error": null}),
        Err(e) => json!({
            "op": op,
            "ok": false,
            "errno": errno_of(&e),
            "error": e.to_string(),
        }),
    }
}

fn unix(path: &str, dgram: bool) -> ArgResult<Value> {
    let raw = RawAddr::unix(path)?;
    let ty = if dgram {
        libc::SOCK_DGRAM
    } else {
        libc::SOCK_STREAM
    };
    let fd = match new_socket(libc::AF_UNIX, ty, 0) {
        Ok(fd) => fd,
        Err(e) => return Ok(failed("unix", "socket", &e)),
    };
    let result = if dgram {
        sys_sendto(&fd, b"probe", 0, &raw)
            .map(|_| ())
            .map_err(|e| ("send", e))
    } else {
        sys_connect(&fd, &raw).map_err(|e| ("connect", e))
    };
    Ok(match result {
        Ok(()) => json!({"op": "unix", "ok": true, "errno": null, "error": null, "stage": null}),
        Err((stage, e)) => failed("unix", stage, &e),
    })
}

/// One request line to a unix stream socket (Cordon's control socket
/// speaks one JSON line each way); the reply as the daemon sent it.
fn unix_request(path: &str, line: &str) -> Value {
    let exchange = || -> io::Result<String> {
        let mut s = std::os::unix::net::UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_millis(DEFAULT_TIMEOUT_MS)))?;
        s.write_all(line.as_bytes())?;
        s.write_all(b"\n")?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply)
    };
    match exchange() {
        Ok(reply) => json!({"op": "unix-request", "ok": true, "reply": reply.trim_end()}),
        Err(e) => {
            json!({"op": "unix-request", "ok": false, "errno": errno_of(&e), "error": e.to_string()})
        }
    }
}

fn whoami() -> Value {
    let cgroup = fs::read_to_string("/proc/self/cgroup").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("0::"))
            .map(str::to_owned)
    });
    // SAFETY: these getters have no preconditions and cannot fail.
    let (uid, euid, gid, ppid) = unsafe {
        (
            libc::getuid(),
            libc::geteuid(),
            libc::getgid(),
            libc::getppid(),
        )
    };
    json!({
        "op": "whoami",
        "pid": std::process::id(),
        "ppid": ppid,
        "uid": uid,
        "euid": euid,
        "gid": gid,
        "cgroup": cgroup,
    })
}

fn spawn_child(args: &[String]) -> Outcome {
    let result = env::current_exe().and_then(|exe| {
        Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
    });
    match result {
        Ok(out) => {
            let mut stdout = io::stdout().lock();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                match serde_json::from_str::<Value>(line) {
                    Ok(Value::Object(mut map)) => {
                        map.insert("parent_pid".to_owned(), json!(std::process::id()));
                        let _ = writeln!(stdout, "{}", Value::Object(map));
                    }
                    _ => {
                        let _ = writeln!(stdout, "{line}");
                    }
                }
            }
            let _ = stdout.flush();
            let code = out
                .status
                .code()
                .and_then(|c| u8::try_from(c).ok())
                .unwrap_or(1);
            Outcome::Exit(code)
        }
        Err(e) => Outcome::Json(json!({
            "op": "spawn-child",
            "ok": false,
            "errno": errno_of(&e),
            "error": e.to_string(),
        })),
    }
}

/// io_uring_setup(2) with 8 entries; the ring is closed straight away.
fn uring() -> Value {
    // struct io_uring_params is 120 bytes of plain integers; all-zero asks for
    // the defaults. The buffer is over-aligned and generously sized.
    let mut params = [0u64; 32];
    // SAFETY: io_uring_setup reads and writes at most sizeof(io_uring_params)
    // (120) bytes at the pointer, which points at 256 writable bytes.
    let rc = unsafe { libc::syscall(libc::SYS_io_uring_setup, 8u32, params.as_mut_ptr()) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return json!({"op": "uring", "ok": false, "errno": errno_of(&e), "error": e.to_string()});
    }
    if let Ok(fd) = i32::try_from(rc) {
        // SAFETY: fd is the ring descriptor just returned; nothing else owns it.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    json!({"op": "uring", "ok": true, "errno": null, "error": null})
}

fn hold(addr: SocketAddr, seconds: Duration, timeout: Duration) -> Value {
    let timeout = timeout.max(Duration::from_millis(1));
    let mut stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => {
            return json!({
                "op": "hold",
                "connect": "error",
                "closed_after_ms": null,
                "ended": null,
                "error": e.to_string(),
                "errno": errno_of(&e),
                "received_bytes": 0,
            })
        }
    };
    let connected = Instant::now();
    let deadline = connected + seconds;
    let mut received_bytes = 0usize;
    let mut ended = "open";
    let mut error: Option<io::Error> = None;

    let _ = stream.set_write_timeout(Some(timeout));
    if let Err(e) = stream.write_all(b"hold\n") {
        ended = "error";
        error = Some(e);
    }
    let mut buf = [0u8; 4096];
    while error.is_none() {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let _ = stream.set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))));
        match stream.read(&mut buf) {
            Ok(0) => {
                ended = "eof";
                break;
            }
            Ok(n) => received_bytes += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted
                        | io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                ended = "error";
                error = Some(e);
            }
        }
    }
    let closed_after_ms = (ended != "open").then(|| connected.elapsed().as_millis() as u64);
    json!({
        "op": "hold",
        "connect": "ok",
        "closed_after_ms": closed_after_ms,
        "ended": ended,
        "error": error.as_ref().map(|e| e.to_string()),
        "errno": error.as_ref().and_then(io::Error::raw_os_error),
        "received_bytes": received_bytes,
    })
}

// ---------------------------------------------------------------------------
// confinement: what `cordon run` refuses beyond sockets (namespaces, mounts,
// other processes, IP options, other ABIs), and what it must keep working

mod confine {
    use std::ffi::CString;
    use std::fs;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::process::{Command, Stdio};

    use serde_json::{json, Map, Value};

    use super::{errno_of, new_socket, ArgResult};

    /// `CLONE_NEW*` flags, by name.
    const CLONE_NEW: [(&str, libc::c_int); 7] = [
        ("CLONE_NEWNS", libc::CLONE_NEWNS),
        ("CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP),
        ("CLONE_NEWUTS", libc::CLONE_NEWUTS),
        ("CLONE_NEWIPC", libc::CLONE_NEWIPC),
        ("CLONE_NEWUSER", libc::CLONE_NEWUSER),
        ("CLONE_NEWPID", libc::CLONE_NEWPID),
        ("CLONE_NEWNET", libc::CLONE_NEWNET),
    ];

    /// `{"ok":true,"errno":null}` or `{"ok":false,"errno":N,"error":...}`.
    fn done() -> Value {
        json!({"ok": true, "errno": null})
    }

    fn error(e: &io::Error) -> Value {
        json!({"ok": false, "errno": errno_of(e), "error": e.to_string()})
    }

    /// The result of a raw syscall: negative means failed, with errno.
    fn attempt(rc: libc::c_long) -> Value {
        if rc < 0 {
            error(&io::Error::last_os_error())
        } else {
            done()
        }
    }

    /// Closes a descriptor a raw syscall returned, if it returned one.
    fn close_returned(rc: libc::c_long) {
        if let Ok(fd) = libc::c_int::try_from(rc) {
            if fd >= 0 {
                // SAFETY: fd was just returned to us by the kernel; nothing
                // else owns it.
                drop(unsafe { OwnedFd::from_raw_fd(fd) });
            }
        }
    }

    /// Waits for child `pid` that reports 0 (success) or an errno as its
    /// exit code.
    fn reap(pid: libc::pid_t) -> Value {
        let mut status = 0;
        // SAFETY: status is a live c_int.
        let rc = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return json!({"ok": false, "errno": null, "error": format!("waitpid: {e}")});
        }
        if libc::WIFEXITED(status) {
            match libc::WEXITSTATUS(status) {
                0 => done(),
                code => error(&io::Error::from_raw_os_error(code)),
            }
        } else {
            json!({"ok": false, "errno": null, "signal": libc::WTERMSIG(status)})
        }
    }

    /// Runs `f` in a forked child, so whatever it changes (a namespace it
    /// entered) dies with the child; the child exits 0 on success or with
    /// the errno.
    fn in_child(f: impl FnOnce() -> libc::c_long) -> Value {
        // SAFETY: the probe is single-threaded; the child makes raw syscalls
        // only and leaves with _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return error(&io::Error::last_os_error());
        }
        if pid == 0 {
            let rc = f();
            let code = if rc < 0 {
                io::Error::last_os_error().raw_os_error().unwrap_or(255)
            } else {
                0
            };
            // SAFETY: leaves the child at once, without running any Rust
            // cleanup on the parent's copied state.
            unsafe { libc::_exit(code) }
        }
        reap(pid)
    }

    /// `clone(flags | SIGCHLD)` like fork: the child _exits at once.
    fn raw_clone(flags: libc::c_int) -> Value {
        let flags = (flags | libc::SIGCHLD) as libc::c_ulong;
        // SAFETY: without CLONE_VM the child runs on a copy of this address
        // space (and of the stack, as newsp is 0), like fork; it only _exits.
        let rc = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
        if rc == 0 {
            // SAFETY: in the child: leave at once.
            unsafe { libc::_exit(0) }
        }
        if rc < 0 {
            return error(&io::Error::last_os_error());
        }
        reap(rc as libc::pid_t)
    }

    /// struct clone_args, CLONE_ARGS_SIZE_VER0 (64 bytes).
    #[repr(C)]
    #[derive(Default)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
    }

    /// `clone3` like fork: the child _exits at once.
    fn raw_clone3(flags: libc::c_int) -> Value {
        let args = CloneArgs {
            flags: flags as u64,
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        // SAFETY: args is a live clone_args of the size passed; without
        // CLONE_VM and with no stack the child runs on a copy of this address
        // space, like fork; it only _exits.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                std::ptr::from_ref(&args),
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if rc == 0 {
            // SAFETY: in the child: leave at once.
            unsafe { libc::_exit(0) }
        }
        if rc < 0 {
            return error(&io::Error::last_os_error());
        }
        reap(rc as libc::pid_t)
    }

    pub fn userns() -> Value {
        let mut unshare = Map::new();
        let mut clone = Map::new();
        for (name, flag) in CLONE_NEW {
            // SAFETY: unshare takes an integer; it runs in a throwaway child.
            let r = in_child(|| libc::c_long::from(unsafe { libc::unshare(flag) }));
            unshare.insert(name.to_owned(), r);
            clone.insert(name.to_owned(), raw_clone(flag));
        }
        let setns = in_child(|| {
            let fd = match fs::File::open("/proc/self/ns/net") {
                Ok(f) => f,
                Err(e) => {
                    // SAFETY: sets this thread's errno for the caller.
                    unsafe { *libc::__errno_location() = e.raw_os_error().unwrap_or(libc::EIO) };
                    return -1;
                }
            };
            // SAFETY: fd is an open namespace file; joining the namespace we
            // are already in changes nothing (and happens in a child).
            libc::c_long::from(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) })
        });
        json!({
            "op": "userns",
            "unshare": unshare,
            "clone": clone,
            "clone_plain": raw_clone(0),
            "clone3": raw_clone3(0),
            "clone3_newuser": raw_clone3(libc::CLONE_NEWUSER),
            "setns": setns,
        })
    }

    fn cstring(s: &str) -> CString {
        CString::new(s).unwrap_or_default()
    }

    /// The mount family, each with arguments that change nothing for long: a
    /// tmpfs mounted on a fresh directory is unmounted straight away.
    pub fn mount() -> Value {
        let dir = format!("/tmp/cordon-probe-mnt-{}", std::process::id());
        if let Err(e) = fs::create_dir(&dir) {
            return json!({"op": "mount", "ok": false, "errno": errno_of(&e), "error": e.to_string()});
        }
        let c_dir = cstring(&dir);
        let root = cstring("/");
        let empty = cstring("");
        let tmpfs = cstring("tmpfs");
        let none = cstring("none");
        let mut out = Map::new();

        // SAFETY: all strings are NUL-terminated and outlive the call.
        let rc = unsafe {
            libc::mount(
                none.as_ptr(),
                c_dir.as_ptr(),
                tmpfs.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        out.insert("mount".into(), attempt(rc.into()));
        if rc == 0 {
            // SAFETY: as above.
            unsafe { libc::umount2(c_dir.as_ptr(), 0) };
        }
        // Not a mount point (any more): EINVAL when allowed.
        // SAFETY: as above.
        let rc = unsafe { libc::umount2(c_dir.as_ptr(), 0) };
        out.insert("umount2".into(), attempt(rc.into()));
        // Without OPEN_TREE_CLONE: an O_PATH descriptor, no privilege needed.
        // SAFETY: as above; a returned fd is closed.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                root.as_ptr(),
                libc::O_CLOEXEC as libc::c_uint,
            )
        };
        out.insert("open_tree".into(), attempt(rc));
        close_returned(rc);
        // open_tree_attr (Linux 6.15, 467 everywhere), no attributes.
        // SAFETY: as above; a null attr with size 0 is valid.
        let rc = unsafe {
            libc::syscall(
                467 as libc::c_long,
                libc::AT_FDCWD,
                root.as_ptr(),
                libc::O_CLOEXEC as libc::c_uint,
                std::ptr::null::<u8>(),
                0usize,
            )
        };
        out.insert("open_tree_attr".into(), attempt(rc));
        close_returned(rc);
        // SAFETY: bad descriptors: nothing can move.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                -1,
                empty.as_ptr(),
                -1,
                empty.as_ptr(),
                0u32,
            )
        };
        out.insert("move_mount".into(), attempt(rc));
        // SAFETY: as above; FSOPEN_CLOEXEC; a returned fd is closed unused.
        let rc = unsafe { libc::syscall(libc::SYS_fsopen, tmpfs.as_ptr(), 1u32) };
        out.insert("fsopen".into(), attempt(rc));
        close_returned(rc);
        // SAFETY: a bad descriptor (FSCONFIG_CMD_CREATE = 6 on nothing).
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                -1,
                6u32,
                std::ptr::null::<u8>(),
                std::ptr::null::<u8>(),
                0,
            )
        };
        out.insert("fsconfig".into(), attempt(rc));
        // SAFETY: a bad descriptor.
        let rc = unsafe { libc::syscall(libc::SYS_fsmount, -1, 0u32, 0u32) };
        out.insert("fsmount".into(), attempt(rc));
        close_returned(rc);
        // SAFETY: as above; FSPICK_CLOEXEC; a returned fd is closed unused.
        let rc = unsafe { libc::syscall(libc::SYS_fspick, libc::AT_FDCWD, root.as_ptr(), 1u32) };
        out.insert("fspick".into(), attempt(rc));
        close_returned(rc);
        // SAFETY: a bad descriptor and no attributes.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                -1,
                empty.as_ptr(),
                0u32,
                std::ptr::null::<u8>(),
                0usize,
            )
        };
        out.insert("mount_setattr".into(), attempt(rc));
        // The fresh directory is no mount point: EINVAL when allowed.
        // SAFETY: as above.
        let rc = unsafe { libc::syscall(libc::SYS_pivot_root, c_dir.as_ptr(), c_dir.as_ptr()) };
        out.insert("pivot_root".into(), attempt(rc));
        // chroot("/") changes nothing; in a child all the same.
        // SAFETY: as above.
        let r = in_child(|| libc::c_long::from(unsafe { libc::chroot(root.as_ptr()) }));
        out.insert("chroot".into(), r);

        let _ = fs::remove_dir(&dir);
        json!({"op": "mount", "ok": true, "calls": out})
    }

    /// First mapped address of `pid` (from its maps), if readable.
    fn first_mapping(pid: libc::pid_t) -> Result<u64, io::Error> {
        let maps = fs::read_to_string(format!("/proc/{pid}/maps"))?;
        maps.lines()
            .next()
            .and_then(|l| l.split('-').next())
            .and_then(|a| u64::from_str_radix(a, 16).ok())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENODATA))
    }

    fn plunder_pid(pid: libc::pid_t) -> Value {
        let mut out = Map::new();

        // SAFETY: integer arguments only.
        let rc = unsafe {
            libc::ptrace(
                libc::PTRACE_ATTACH,
                pid,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            )
        };
        out.insert("ptrace_attach".into(), attempt(rc));
        if rc == 0 {
            // Wait for the attach stop, then let the process go on.
            let mut status = 0;
            // SAFETY: status is a live c_int; integer arguments otherwise.
            unsafe {
                libc::waitpid(pid, &mut status, libc::__WALL);
                libc::ptrace(
                    libc::PTRACE_DETACH,
                    pid,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                );
            }
        }

        let maps = first_mapping(pid);
        out.insert(
            "maps".into(),
            match &maps {
                Ok(_) => done(),
                Err(e) => error(e),
            },
        );
        // An unmapped address still tells access (EFAULT) from refusal.
        let address = maps.unwrap_or(0x1000);
        let mut byte = [0u8; 1];
        let local = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let remote = libc::iovec {
            iov_base: address as usize as *mut libc::c_void,
            iov_len: 1,
        };
        // SAFETY: local points at one writable byte; remote is only read in
        // the other process, by the kernel.
        let rc = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        out.insert("process_vm_readv".into(), attempt(rc as libc::c_long));
        // Writing: to an address below mmap_min_addr, never mapped, so that
        // nothing changes: EFAULT when allowed, EPERM when refused.
        let remote = libc::iovec {
            iov_base: 0x1000 as *mut libc::c_void,
            iov_len: 1,
        };
        // SAFETY: local points at one readable byte; remote is only touched
        // in the other process, by the kernel.
        let rc = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
        out.insert("process_vm_writev".into(), attempt(rc as libc::c_long));

        // SAFETY: integer arguments only.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0u32) };
        if pidfd < 0 {
            let mut v = attempt(pidfd);
            v["stage"] = json!("pidfd_open");
            out.insert("pidfd_getfd".into(), v);
        } else {
            // Its descriptor 0.
            // SAFETY: integer arguments only; both fds are closed below.
            let rc = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, 0, 0u32) };
            out.insert("pidfd_getfd".into(), attempt(rc));
            close_returned(rc);
            close_returned(pidfd);
        }

        // KCMP_FILE (0): our fd 0 against theirs.
        // SAFETY: integer arguments only.
        let rc = unsafe { libc::syscall(libc::SYS_kcmp, libc::getpid(), pid, 0, 0usize, 0usize) };
        out.insert("kcmp".into(), attempt(rc));

        let mem = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"));
        out.insert(
            "mem_write".into(),
            match mem {
                Ok(_) => done(),
                Err(e) => error(&e),
            },
        );
        json!({"op": "plunder", "target": pid, "calls": out})
    }

    /// `PID`: another process; `child`: a `sleep` this probe starts (in its
    /// own cgroup, uid and Landlock domain).
    pub fn plunder(target: &str) -> ArgResult<Value> {
        if target != "child" {
            let pid: libc::pid_t = target
                .parse()
                .map_err(|_| format!("PID must be a process id or `child`, not {target:?}"))?;
            return Ok(plunder_pid(pid));
        }
        let mut child = match Command::new("sleep")
            .arg("30")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                return Ok(
                    json!({"op": "plunder", "ok": false, "errno": errno_of(&e), "error": e.to_string(), "stage": "spawn"}),
                )
            }
        };
        // Let it exec sleep (ptrace of a process mid-exec is racy).
        let pid = child.id() as libc::pid_t;
        for _ in 0..250 {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "sleep" {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let v = plunder_pid(pid);
        let _ = child.kill();
        let _ = child.wait();
        Ok(v)
    }

    fn setsockopt(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &[u8]) -> Value {
        let ptr = if value.is_empty() {
            std::ptr::null()
        } else {
            value.as_ptr().cast()
        };
        // SAFETY: value is a live buffer of value.len() bytes (or null, 0).
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                level,
                name,
                ptr,
                value.len() as libc::socklen_t,
            )
        };
        attempt(rc.into())
    }

    /// Each IP option the filter refuses, with a value the kernel accepts.
    pub fn ipopts() -> Value {
        // Type-4 (segment routing) header with one segment (::1):
        // nexthdr, hdrlen (in 8-byte units beyond the first 8), type,
        // segments_left, last_entry, flags, tag (2), then 16 bytes a segment.
        let mut srh = vec![0u8, 2, 4, 0, 0, 0, 0, 0];
        srh.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
        // An options header of 8 bytes: nexthdr, hdrlen 0, PadN of 4 zeros.
        let opts = [0u8, 0, 1, 4, 0, 0, 0, 0];
        let one = 1i32.to_ne_bytes();
        // Loose source route via 127.0.0.1, padded with IPOPT_END.
        let lsrr = [131u8, 7, 4, 127, 0, 0, 1, 0];
        let v6: [(&str, libc::c_int, &[u8]); 8] = [
            ("IPV6_RTHDR", libc::IPV6_RTHDR, &srh),
            ("IPV6_HOPOPTS", libc::IPV6_HOPOPTS, &opts),
            ("IPV6_DSTOPTS", libc::IPV6_DSTOPTS, &opts),
            ("IPV6_RTHDRDSTOPTS", libc::IPV6_RTHDRDSTOPTS, &opts),
            ("IPV6_2292HOPOPTS", libc::IPV6_2292HOPOPTS, &one),
            ("IPV6_2292DSTOPTS", libc::IPV6_2292DSTOPTS, &one),
            ("IPV6_2292RTHDR", libc::IPV6_2292RTHDR, &one),
            ("IPV6_2292PKTOPTIONS", libc::IPV6_2292PKTOPTIONS, &[]),
        ];
        let mut out = Map::new();
        for (name, optname, value) in v6 {
            let r = match new_socket(libc::AF_INET6, libc::SOCK_DGRAM, 0) {
                Ok(fd) => setsockopt(&fd, libc::IPPROTO_IPV6, optname, value),
                Err(e) => error(&e),
            };
            out.insert(name.to_owned(), r);
        }
        let r = match new_socket(libc::AF_INET, libc::SOCK_DGRAM, 0) {
            Ok(fd) => setsockopt(&fd, libc::SOL_IP, libc::IP_OPTIONS, &lsrr),
            Err(e) => error(&e),
        };
        out.insert("IP_OPTIONS".to_owned(), r);
        // Record route: any uid may set it (loose source routing needs
        // CAP_NET_RAW on recent kernels), so it shows the filter as nobody.
        let rr = [7u8, 7, 4, 0, 0, 0, 0, 0];
        let r = match new_socket(libc::AF_INET, libc::SOCK_DGRAM, 0) {
            Ok(fd) => setsockopt(&fd, libc::SOL_IP, libc::IP_OPTIONS, &rr),
            Err(e) => error(&e),
        };
        out.insert("IP_OPTIONS_RR".to_owned(), r);
        json!({"op": "ipopts", "calls": out})
    }

    /// getpid(2) through the x32 ABI (number | 0x40000000).
    pub fn x32() -> Value {
        // SAFETY: getpid takes no arguments and cannot fail.
        let rc = unsafe { libc::syscall(libc::SYS_getpid | 0x4000_0000) };
        let mut v = attempt(rc);
        v["op"] = json!("x32");
        v
    }

    /// Terminal input injection and unix datagram pairs. TIOCSTI goes to a
    /// pty this probe opens (not its controlling terminal: allowed for root,
    /// EPERM for other users; EIO where `dev.tty.legacy_tiocsti` is 0);
    /// TIOCLINUX on a pty is EINVAL (it serves virtual consoles) unless
    /// refused.
    pub fn tty() -> Value {
        let mut out = Map::new();
        // SAFETY: plain libc calls on descriptors this function owns.
        let slave = unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            if master < 0 {
                return json!({"op": "tty", "error": error(&io::Error::last_os_error())});
            }
            let master = OwnedFd::from_raw_fd(master);
            if libc::grantpt(master.as_raw_fd()) != 0 || libc::unlockpt(master.as_raw_fd()) != 0 {
                return json!({"op": "tty", "error": error(&io::Error::last_os_error())});
            }
            let mut name = [0 as libc::c_char; 128];
            if libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) != 0 {
                return json!({"op": "tty", "error": error(&io::Error::last_os_error())});
            }
            let fd = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
            if fd < 0 {
                return json!({"op": "tty", "error": error(&io::Error::last_os_error())});
            }
            (master, OwnedFd::from_raw_fd(fd))
        };
        let byte: libc::c_char = b'x' as libc::c_char;
        // SAFETY: TIOCSTI reads one byte from the pointer.
        let rc = unsafe { libc::ioctl(slave.1.as_raw_fd(), libc::TIOCSTI, &byte) };
        out.insert("TIOCSTI".into(), attempt(rc as libc::c_long));
        // Subcode 7 (TIOCL_GETSHIFTSTATE) reads the shift state: harmless.
        let mut sub = [7u8; 2];
        // SAFETY: TIOCLINUX reads (and may write) the small buffer.
        let rc = unsafe { libc::ioctl(slave.1.as_raw_fd(), libc::TIOCLINUX, sub.as_mut_ptr()) };
        out.insert("TIOCLINUX".into(), attempt(rc as libc::c_long));
        for (name, ty) in [
            ("socketpair_dgram", libc::SOCK_DGRAM),
            ("socketpair_stream", libc::SOCK_STREAM),
        ] {
            let mut sv = [-1 as libc::c_int; 2];
            // SAFETY: sv is a live array of two c_ints.
            let rc = unsafe {
                libc::socketpair(libc::AF_UNIX, ty | libc::SOCK_CLOEXEC, 0, sv.as_mut_ptr())
            };
            out.insert(name.into(), attempt(rc as libc::c_long));
            if rc == 0 {
                close_returned(sv[0] as libc::c_long);
                close_returned(sv[1] as libc::c_long);
            }
        }
        json!({"op": "tty", "calls": out})
    }

    pub fn thread() -> Value {
        let spawned = std::thread::Builder::new().spawn(|| 42).map(|h| h.join());
        match spawned {
            Ok(Ok(42)) => json!({"op": "thread", "ok": true, "errno": null}),
            Ok(_) => json!({"op": "thread", "ok": false, "errno": null, "error": "bad join"}),
            Err(e) => {
                json!({"op": "thread", "ok": false, "errno": errno_of(&e), "error": e.to_string()})
            }
        }
    }

    fn io_attempt(r: io::Result<()>) -> Value {
        match r {
            Ok(()) => done(),
            Err(e) => error(&e),
        }
    }

    /// Execs `command` under a seccomp filter that makes
    /// landlock_create_ruleset fail with `errno`, the way a kernel without
    /// Landlock answers (ENOSYS: not built in; EOPNOTSUPP: not enabled).
    /// Prints a JSON line only when that fails.
    pub fn no_landlock(errno: u32, command: &[String]) -> super::Outcome {
        use std::os::unix::process::CommandExt;
        // No arch check: a test helper, not a boundary.
        let mut filter = [
            // A = seccomp_data.nr
            libc::sock_filter {
                code: 0x20,
                jt: 0,
                jf: 0,
                k: 0,
            },
            // if A == landlock_create_ruleset: next, else skip one
            libc::sock_filter {
                code: 0x15,
                jt: 0,
                jf: 1,
                k: libc::SYS_landlock_create_ruleset as u32,
            },
            libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ERRNO | (errno & 0xffff),
            },
            libc::sock_filter {
                code: 0x06,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ALLOW,
            },
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as libc::c_ushort,
            filter: filter.as_mut_ptr(),
        };
        // SAFETY: prctl with integers; then with a pointer to a live
        // sock_fprog whose filter array outlives the call.
        let rc = unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                -1
            } else {
                libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    std::ptr::from_ref(&prog),
                )
            }
        };
        if rc != 0 {
            let mut v = error(&io::Error::last_os_error());
            v["op"] = json!("no-landlock");
            return super::Outcome::Json(v);
        }
        let Some((program, args)) = command.split_first() else {
            return super::Outcome::Exit(2);
        };
        let e = Command::new(program).args(args).exec();
        let mut v = error(&e);
        v["op"] = json!("no-landlock");
        super::Outcome::Json(v)
    }

    /// A file renamed and linked, and a directory renamed, across
    /// directories of a fresh tree under /tmp.
    pub fn rename() -> Value {
        let dir =
            std::path::PathBuf::from(format!("/tmp/cordon-probe-rename-{}", std::process::id()));
        let setup = fs::create_dir(&dir)
            .and_then(|()| fs::create_dir(dir.join("a")))
            .and_then(|()| fs::create_dir(dir.join("b")))
            .and_then(|()| fs::write(dir.join("a/f"), b"x"));
        if let Err(e) = setup {
            let _ = fs::remove_dir_all(&dir);
            return json!({"op": "rename", "ok": false, "errno": errno_of(&e), "error": e.to_string(), "stage": "setup"});
        }
        let file = io_attempt(fs::rename(dir.join("a/f"), dir.join("b/f")));
        let link = io_attempt(fs::hard_link(dir.join("b/f"), dir.join("a/g")));
        let directory = io_attempt(fs::rename(dir.join("a"), dir.join("b/a")));
        let _ = fs::remove_dir_all(&dir);
        json!({"op": "rename", "file": file, "link": link, "directory": directory})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn parses_options_and_positionals() {
        let a = Args::parse(
            &strings(&["127.0.0.1:1", "--send=hi", "--read", "3", "--shutdown"]),
            &["--send", "--read"],
            &["--shutdown"],
        )
        .unwrap();
        assert_eq!(a.positional::<1>().unwrap()[0], "127.0.0.1:1");
        assert_eq!(a.value("--send"), Some("hi"));
        assert_eq!(a.number("--read", 0usize).unwrap(), 3);
        assert!(a.switch("--shutdown"));
        assert!(Args::parse(&strings(&["--bogus"]), &[], &[]).is_err());
        assert!(Args::parse(&strings(&["--send"]), &["--send"], &[]).is_err());
    }

    #[test]
    fn v4_mapped_address_stays_v6() {
        let addr = parse_addr("[::ffff:127.0.0.1]:5000").unwrap();
        assert!(addr.is_ipv6());
        assert_eq!(RawAddr::inet(&addr).family(), libc::AF_INET6);
    }

    #[test]
    fn abstract_unix_address_length() {
        let RawAddr::Unix(sun, len) = RawAddr::unix("@cordon").unwrap() else {
            panic!("not a unix address");
        };
        assert_eq!(sun.sun_path[0], 0);
        assert_eq!(sun.sun_path[1], b'c' as libc::c_char);
        assert_eq!(
            len as usize,
            mem::offset_of!(libc::sockaddr_un, sun_path) + 7
        );
    }
}
