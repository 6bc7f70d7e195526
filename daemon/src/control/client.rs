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
