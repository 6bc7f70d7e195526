//! Zero-copy relay for the byte-stream phase of a session: socket -> pipe ->
//! socket with splice(2), driven by tokio's readiness. The bytes never enter
//! userspace, so a byte relay costs little more than the kernel's own copy.
#![allow(unsafe_code)]

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    sync::atomic::{AtomicU64, Ordering},
};

use tokio::{io::Interest, net::TcpStream};

/// Bytes moved per splice call (and the pipe size we ask for). Measured
/// (`cargo xtask bench connect` and 1 GiB uploads through side-by-side
/// daemons): 64 KiB (the default), 256 KiB and 512 KiB pipes all relayed
/// 7-17% less than 1 MiB, so 1 MiB it is (/proc/sys/fs/pipe-max-size). The
/// fd and memory cost per session is bounded by the session caps.
const CHUNK: usize = 1 << 20;

/// A non-blocking pipe used as the splice buffer for one direction.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    pub fn new() -> io::Result<Self> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a writable array of two ints, as pipe2 requires.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let [r, w] = fds;
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(r), OwnedFd::from_raw_fd(w)) };
        // Best effort: a larger pipe means fewer splice calls. The default
        // (64 KiB) still works.
        // SAFETY: fcntl on an fd we own.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
        Ok(Self { read, write })
    }
}

/// Reuses drained pipes across sessions: creating two pipes (and sizing
/// them) per connection is several syscalls on the connect path.
#[derive(Default)]
pub struct PipePool {
    idle: std::sync::Mutex<Vec<Pipe>>,
}

/// Pipes kept for reuse at most.
const POOL_MAX: usize = 512;

impl PipePool {
    pub fn take(&self) -> io::Result<Pipe> {
        let pooled = self.idle.lock().ok().and_then(|mut v| v.pop());
        match pooled {
            Some(p) => Ok(p),
            None => Pipe::new(),
        }
    }

    /// Only pipes known to be empty (their pump ended cleanly) come back.
    pub fn give(&self, pipe: Pipe) {
        if let Ok(mut v) = self.idle.lock() {
            if v.len() < POOL_MAX {
                v.push(pipe);
            }
        }
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both fds are open for the duration of the call (borrowed from
    // live owners); null offsets mean "current position", as sockets and
    // pipes require.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Which side an I/O error came from.
#[derive(Debug)]
pub enum PumpError {
    Read(io::Error),
    Write(io::Error),
}

/// Moves bytes from `from` to `to` until EOF, then half-closes `to`.
pub async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    count: &AtomicU64,
) -> Result<(), PumpError> {
    let (pipe_r, pipe_w) = (pipe.read.as_raw_fd(), pipe.write.as_raw_fd());
    loop {
        let n = loop {
            from.readable().await.map_err(PumpError::Read)?;
            match from.try_io(Interest::READABLE, || {
                splice(from.as_raw_fd(), pipe_w, CHUNK)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(PumpError::Read(e)),
            }
        };
        if n == 0 {
            let sock = socket2::SockRef::from(to);
            let _ = sock.shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
        let mut left = n;
        while left > 0 {
            to.writable().await.map_err(PumpError::Write)?;
            match to.try_io(Interest::WRITABLE, || splice(pipe_r, to.as_raw_fd(), left)) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(PumpError::Write(e)),
            }
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}
