//! The CLI's side of the control API (blocking: the CLI has one thread, which
//! matters for `cordon run`, where the whole process is moved into a cgroup).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{Request, Response, MAX_REQUEST};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the cordon daemon at {path}: {source} (is `cordon daemon` running with this config?)")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon sent an unreadable response: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("the request could not be encoded: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("the request is {len} bytes encoded; the daemon accepts at most {MAX_REQUEST}")]
    TooLarge { len: usize },
    #[error("{0}")]
    Refused(String),
}

/// How long a caller keeps retrying while the daemon answers `busy` (its
/// connection cap is reached; slots free up within the daemon's request
/// deadline).
const BUSY_RETRY_FOR: Duration = Duration::from_secs(15);

/// Sends one request and returns the response's data, or the daemon's error.
/// A `busy` answer (nothing was done) is retried with backoff for up to
/// [`BUSY_RETRY_FOR`].
pub fn call(socket: &Path, request: &Request) -> Result<serde_json::Value, ClientError> {
    let give_up = Instant::now() + BUSY_RETRY_FOR;
    let mut pause = Duration::from_millis(50);
    loop {
        let response = exchange(socket, request)?;
        if response.busy && Instant::now() + pause < give_up {
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
            continue;
        }
        return if response.ok {
            Ok(response.data)
        } else {
            Err(ClientError::Refused(
                response.error.unwrap_or_else(|| "refused".into()),
            ))
        };
    }
}

/// One connection: send the request line, read the response line.
fn exchange(socket: &Path, request: &Request) -> Result<Response, ClientError> {
    let io = |source| ClientError::Io {
        path: socket.to_owned(),
        source,
    };
    // May carry a secret (`vault_set`): zeroed when dropped.
    let mut line = zeroize::Zeroizing::new(Vec::with_capacity(4096));
    serde_json::to_writer(&mut *line, request).map_err(ClientError::Encode)?;
    line.push(b'\n');
    if line.len() > MAX_REQUEST {
        return Err(ClientError::TooLarge { len: line.len() });
    }
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    // Requests may carry a secret (a vault value, a human's ID token): only the daemon,
    // which runs as root, may receive them, not whoever bound the socket's path.
    match peer_uid(&stream) {
        Ok(0) => {}
        Ok(uid) => {
            return Err(ClientError::Refused(format!(
                "the control socket {} is served by uid {uid}, not by root: it is not the cordon daemon; nothing was sent",
                socket.display()
            )))
        }
        Err(e) => return Err(io(e)),
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io)?;
    // A daemon that turned the connection away (busy) may have closed it
    // before the request went out; its reply is still there to read.
    let sent = stream.write_all(&line);
    let mut reply = String::new();
    let read = BufReader::new(&stream).read_line(&mut reply);
    match (sent, read) {
        (_, Ok(n)) if n > 0 => serde_json::from_str(&reply).map_err(ClientError::Decode),
        (Err(e), _) | (Ok(()), Err(e)) => Err(io(e)),
        (Ok(()), Ok(_)) => Err(io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the daemon closed the connection without a reply",
        ))),
    }
}

/// The uid of the process at the other end of a unix socket (SO_PEERCRED).
#[allow(unsafe_code)]
fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd as _;
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid, writable and sized for SO_PEERCRED; the fd is an
    // open socket borrowed from `stream` for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::addr_of_mut!(cred).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(cred.uid)
    } else {
        Err(std::io::Error::last_os_error())
    }
}
