//! Robustness against a misbehaving agent or local user, end to end with the
//! real daemon and kernel: concurrent-session caps, a control socket that
//! idle connections cannot wedge, agent-chosen text that cannot reach the
//! operator's terminal as escape sequences, and half-closed sessions that
//! end.
//!
//! Run as root (CI does); without root they skip, except in CI where they fail.

use std::io::{ErrorKind, Read as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use cordon_tests::serde_json::{self, Value};
use cordon_tests::{
    echoed, parse_probe, probe_bin, probe_context, refused, require_root, run_with_limit, str_of,
    u64_of, As, Background, Checks, Daemon, EchoServer, Setup, PROBE_TIME_LIMIT,
};

/// `sessions.active` from `cordon status`.
fn active(d: &Daemon) -> u64 {
    d.status()["sessions"]["active"]
        .as_u64()
        .unwrap_or(u64::MAX)
}

/// Polls `cordon status` until `want` sessions are active (10 s at most).
fn wait_active(d: &Daemon, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = active(d);
        if now == want {
            return;
        }
        if Instant::now() >= deadline {
            d.fail(&format!(
                "expected {want} active sessions, the daemon reports {now}"
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `probe hold ADDR SECS` inside agent `bot`, in the background.
fn holders(d: &Daemon, addr: &str, n: usize) -> Vec<Background> {
    (0..n)
        .map(|i| {
            Background::spawn(
                &mut d.agent_command("bot", As::Nobody, &["hold", addr, "30"]),
                &format!("holder {i}"),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// concurrent-session caps

#[test]
fn per_agent_session_cap_refuses_the_excess_and_frees_on_close() {
    require_root!();
    let echo = EchoServer::v4();
    let addr = echo.address();
    let d = Daemon::start(Setup::bot_with_echo(&addr).daemon_key("max_sessions_per_agent = 3"));
    let held = holders(&d, &addr, 3);
    wait_active(&d, 3);

    let over = d.probe(
        "bot",
        As::Nobody,
        &["tcp", &addr, "--send", "over", "--read", "4"],
    );
    let mut c = Checks::new();
    c.check(
        refused(&over),
        format!("a 4th concurrent session was not refused: {over}"),
    );
    c.eq("upstream connections while capped", echo.accepted(), 3);
    let pid = u64_of(&over, "pid");
    let s = d.wait_session(&format!("for the 4th connection (pid {pid})"), |s| {
        s["pid"] == pid
    });
    c.eq("verdict of the 4th", str_of(&s, "verdict"), "deny");
    c.check(
        str_of(&s, "reason").contains("too many concurrent sessions for agent `bot` (limit 3)"),
        format!("the deny reason does not name the limit: {:?}", s["reason"]),
    );

    // The holders go away: their slots are free again.
    drop(held);
    wait_active(&d, 0);
    let again = d.probe(
        "bot",
        As::Nobody,
        &["tcp", &addr, "--send", "again", "--read", "5"],
    );
    c.check(
        echoed(&again, "again"),
        format!("after the holders exited, a new session did not work: {again}"),
    );
    c.finish(|| probe_context(&d, &[&over, &again]));
}

#[test]
fn global_session_cap_refuses_the_excess() {
    require_root!();
    let echo = EchoServer::v4();
    let addr = echo.address();
    let d = Daemon::start(Setup::bot_with_echo(&addr).daemon_key("max_sessions = 2"));
    let held = holders(&d, &addr, 2);
    wait_active(&d, 2);
    let over = d.probe(
        "bot",
        As::Nobody,
        &["tcp", &addr, "--send", "over", "--read", "4"],
    );
    let mut c = Checks::new();
    c.check(
        refused(&over),
        format!("a 3rd concurrent session was not refused: {over}"),
    );
    let pid = u64_of(&over, "pid");
    let s = d.wait_session(&format!("for pid {pid}"), |s| s["pid"] == pid);
    c.check(
        str_of(&s, "reason").contains("too many concurrent sessions on this daemon (limit 2)"),
        format!("the deny reason does not name the limit: {:?}", s["reason"]),
    );
    drop(held);
    c.finish(|| probe_context(&d, &[&over]));
}

// ---------------------------------------------------------------------------
// control socket

/// More idle connections than the cap: the excess is answered `busy` at
/// once, the idle ones are closed after the request deadline, and `cordon
/// status` gets through within that deadline.
#[test]
fn control_socket_is_not_wedged_by_idle_connections() {
    require_root!();
    const CAP: usize = 64;
    const OPENED: usize = 70;
    const DEADLINE: Duration = Duration::from_secs(5);
    let d = Daemon::start(Setup::new().agent("bot"));
    let sock = d.setup.control_socket();
    let opened_at = Instant::now();
    let mut conns = Vec::new();
    for i in 0..OPENED {
        match UnixStream::connect(&sock) {
            Ok(s) => conns.push(s),
            Err(e) => d.fail(&format!("control connection {i} failed: {e}")),
        }
    }
    // Give the daemon a moment to accept them all.
    thread::sleep(Duration::from_millis(500));
    let mut c = Checks::new();
    let mut answered = Vec::new();
    for (i, conn) in conns.iter_mut().enumerate() {
        let _ = conn.set_nonblocking(true);
        let mut buf = [0u8; 4096];
        match conn.read(&mut buf) {
            Ok(n) if n > 0 => answered.push((
                i,
                String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned(),
            )),
            Ok(_) => answered.push((i, String::from("<EOF without a reply>"))),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => answered.push((i, format!("<error {e}>"))),
        }
        let _ = conn.set_nonblocking(false);
    }
    c.eq(
        "connections answered at once (over the cap)",
        answered.len(),
        OPENED - CAP,
    );
    for (i, reply) in &answered {
        let v: Value = serde_json::from_str(reply.trim()).unwrap_or(Value::Null);
        c.check(
            v["ok"] == Value::Bool(false) && v["busy"] == Value::Bool(true),
            format!("connection {i} over the cap got {reply:?}, not a busy error"),
        );
    }

    // `cordon status` waits out the busy socket (at most the deadline).
    let started = Instant::now();
    let out = d.cordon_output(&["status"]);
    let took = started.elapsed();
    c.check(
        out.status.success(),
        format!(
            "cordon status failed while idle connections were open (after {took:?}): {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    );
    c.check(
        opened_at.elapsed() < DEADLINE + Duration::from_secs(3),
        format!(
            "cordon status answered only {:?} after the idle connections were opened",
            opened_at.elapsed()
        ),
    );

    // The idle connections were closed by the daemon with a reply saying why.
    if let Some(first) = conns.first_mut() {
        let wait = (DEADLINE + Duration::from_secs(2)).saturating_sub(opened_at.elapsed());
        let _ = first.set_read_timeout(Some(wait.max(Duration::from_millis(100))));
        let mut reply = String::new();
        let _ = first.read_to_string(&mut reply);
        c.check(
            reply.contains("no complete control request within 5 s"),
            format!("an idle control connection was not closed at the deadline: {reply:?}"),
        );
    }
    c.finish(|| d.context());
}

// ---------------------------------------------------------------------------
// terminal escapes

#[test]
fn agent_chosen_text_cannot_reach_the_terminal_as_escapes() {
    require_root!();
    let echo = EchoServer::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    // The kernel takes a process's comm from the name it was exec'd by.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let evil = "x\x1b[2Jy";
    let link = dir.path().join(evil);
    std::os::unix::fs::symlink(probe_bin(), &link)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", link.display()));
    let mut cmd = d.cordon(&["run", "--agent", "bot", "--"]);
    cmd.arg(&link)
        .args(["tcp", &echo.address(), "--send", "hi", "--read", "2"]);
    let out = run_with_limit(&mut cmd, PROBE_TIME_LIMIT);
    let p = parse_probe(&out, "probe via an escape-named symlink");
    let pid = u64_of(&p, "pid");
    let s = d.wait_session(&format!("for pid {pid}"), |s| s["pid"] == pid);
    let id = str_of(&s, "id").to_owned();

    let mut c = Checks::new();
    c.eq("comm as recorded (JSON)", str_of(&s, "comm"), evil);
    for args in [vec!["sessions", "list"], vec!["sessions", "show", &id]] {
        let out = d.cordon_output(&args);
        let text = String::from_utf8_lossy(&out.stdout);
        c.check(out.status.success(), format!("cordon {args:?} failed"));
        c.check(
            !out.stdout.contains(&0x1b),
            format!("cordon {args:?} printed a raw ESC byte: {text:?}"),
        );
        c.check(
            text.contains("x\\x1b[2Jy"),
            format!("cordon {args:?} does not show the comm escaped: {text:?}"),
        );
    }
    c.finish(|| probe_context(&d, &[&p]));
}

// ---------------------------------------------------------------------------
// half-closed sessions

/// Accepts connections and holds them open without reading or writing, until
/// dropped.
struct SilentServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SilentServer {
    fn v4() -> SilentServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("local addr: {e}"));
        let _ = listener.set_nonblocking(true);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut held: Vec<TcpStream> = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((s, _)) => held.push(s),
                        Err(_) => thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        SilentServer {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for SilentServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn half_closed_session_ends_after_the_timeout_and_open_ones_do_not() {
    require_root!();
    let up = SilentServer::v4();
    let addr = up.addr.to_string();
    let d = Daemon::start(Setup::bot_with_echo(&addr).daemon_key("half_close_timeout_secs = 2"));

    // The agent sends, shuts down its write side and waits for an answer
    // the upstream never sends (nor does it ever close).
    let started = Instant::now();
    let p = d.probe(
        "bot",
        As::Nobody,
        &[
            "tcp",
            &addr,
            "--send",
            "hello",
            "--shutdown",
            "--read",
            "1",
            "--timeout-ms",
            "12000",
        ],
    );
    let took = started.elapsed();
    let mut c = Checks::new();
    c.eq("probe timed out", p["timed_out"].as_bool(), Some(false));
    c.check(
        took < Duration::from_secs(8),
        format!("the half-closed connection lasted {took:?}"),
    );
    let pid = u64_of(&p, "pid");
    let s = d.wait_session(&format!("for pid {pid}"), |s| s["pid"] == pid);
    let s = d.wait_ended(str_of(&s, "id"));
    c.eq(
        "end_reason",
        str_of(&s, "end_reason"),
        "half-closed for 2 s: closed by cordon",
    );
    c.eq("bytes_up", s["bytes_up"].as_u64(), Some(5));

    // A fully open session that is merely idle is not cut.
    let h = d.probe("bot", As::Nobody, &["hold", &addr, "4"]);
    c.eq("idle open session", str_of(&h, "ended"), "open");
    c.finish(|| probe_context(&d, &[&p, &h]));
}

// ---------------------------------------------------------------------------
// join acts on the process that connected, never on a pid number alone

/// Process A connects to the control socket, forks B and exits; once A is
/// reaped (its pid free for reuse), B sends `join` on A's connection. The
/// kernel's SO_PEERCRED still names A's pid. Returns the daemon's reply.
fn join_from_a_process_that_is_gone(sock: &std::path::Path, agent: &str) -> (i32, String) {
    use std::os::fd::FromRawFd as _;
    use std::os::unix::ffi::OsStrExt as _;

    let request = format!("{{\"op\":\"join\",\"agent\":\"{agent}\"}}\n").into_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let path = sock.as_os_str().as_bytes();
    assert!(path.len() < addr.sun_path.len(), "socket path too long");
    for (d, s) in addr.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    let (mut go, mut out) = ([0; 2], [0; 2]);
    // SAFETY: arrays of two ints, as pipe(2) requires.
    assert_eq!(unsafe { libc::pipe(go.as_mut_ptr()) }, 0);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::pipe(out.as_mut_ptr()) }, 0);
    let [go_r, go_w] = go;
    let [out_r, out_w] = out;
    // SAFETY: after fork the children only make async-signal-safe calls
    // (socket, connect, fork, read, write, _exit) on memory prepared before.
    let a = unsafe { libc::fork() };
    assert!(a >= 0, "fork failed");
    if a == 0 {
        // SAFETY: see above; this is process A.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
            if fd < 0 || libc::connect(fd, std::ptr::addr_of!(addr).cast(), len) != 0 {
                libc::_exit(1);
            }
            if libc::fork() == 0 {
                // Process B: wait until A is gone, then speak on A's socket.
                let mut byte = 0u8;
                libc::read(go_r, std::ptr::addr_of_mut!(byte).cast(), 1);
                libc::write(fd, request.as_ptr().cast(), request.len());
                let mut buf = [0u8; 4096];
                loop {
                    let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
                    if n <= 0 {
                        break;
                    }
                    libc::write(out_w, buf.as_ptr().cast(), n as usize);
                }
                libc::_exit(0);
            }
            libc::_exit(0);
        }
    }
    // SAFETY: closing our copies of the children's pipe ends.
    unsafe {
        libc::close(go_r);
        libc::close(out_w);
    }
    let mut status = 0;
    // SAFETY: `a` is our child; reaping it frees its pid.
    assert_eq!(unsafe { libc::waitpid(a, &mut status, 0) }, a);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "process A failed to connect (status {status})"
    );
    // SAFETY: `go_w` is our open write end; one byte from a live buffer.
    unsafe {
        libc::write(go_w, b"g".as_ptr().cast(), 1);
        libc::close(go_w);
    }
    // SAFETY: `out_r` is our open read end, owned by the File from now on.
    let mut reader = unsafe { std::fs::File::from_raw_fd(out_r) };
    let mut reply = String::new();
    let _ = reader.read_to_string(&mut reply);
    (a, reply)
}

#[test]
fn join_refuses_a_caller_whose_process_is_gone() {
    require_root!();
    let d = Daemon::start(Setup::new().agent("bot"));
    let (pid, reply) = join_from_a_process_that_is_gone(&d.setup.control_socket(), "bot");
    let v: Value = serde_json::from_str(reply.trim()).unwrap_or(Value::Null);
    let mut c = Checks::new();
    c.eq("ok", v["ok"].as_bool(), Some(false));
    c.check(
        str_of(&v, "error").contains(&format!("the calling process (pid {pid}) is gone")),
        format!("join for an exited caller was not refused as such: {reply:?}"),
    );
    c.finish(|| d.context());
}

/// Any local user can reach the control socket; failed authentications are
/// recorded one by one up to a burst, then counted into summary events, so
/// a loop of bad tokens cannot fill the audit disk, and none goes uncounted.
#[test]
fn failed_control_logins_are_recorded_up_to_a_burst_then_counted() {
    require_root!();
    let echo = EchoServer::v4();
    let d = Daemon::start(Setup::bot_with_echo(&echo.address()));
    const TRIES: u64 = 60;
    for _ in 0..TRIES {
        let out = run_with_limit(
            d.cordon(&["approvals", "list"])
                .env("CORDON_ID_TOKEN", "not.a.token"),
            Duration::from_secs(10),
        );
        assert!(!out.status.success(), "a bad token was accepted");
    }
    let count = |events: &[Value]| -> (u64, u64) {
        let mut one_by_one = 0;
        let mut total = 0;
        for e in events
            .iter()
            .filter(|e| e["what"] == "auth_failed" && e["who"] == "uid:0")
        {
            if e["target"] == "summary" {
                total += e["details"]["count"].as_u64().unwrap_or(0);
            } else {
                one_by_one += 1;
                total += 1;
            }
        }
        (one_by_one, total)
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut events, mut counted);
    loop {
        let out = d.cordon_output(&["audit", "list", "--limit", "10000", "--json"]);
        events = serde_json::from_slice::<Vec<Value>>(&out.stdout).unwrap_or_default();
        counted = count(&events);
        if counted.1 >= TRIES || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    let mut c = Checks::new();
    c.eq("failed logins accounted for", counted.1, TRIES);
    c.check(
        counted.0 >= 32 && counted.0 < TRIES,
        format!("{} failed logins recorded one by one", counted.0),
    );
    c.finish(|| serde_json::to_string_pretty(&events).unwrap_or_default());
}
