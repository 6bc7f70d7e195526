//! The CLI's side of the control API (blocking: the CLI has one thread, which
//! matters for `cordon run`, where the whole process is moved into a cgroup).

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{Request, Response};

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
    #[error("{0}")]
    Refused(String),
}

/// Sends one request and returns the response's data, or the daemon's error.
pub fn call(socket: &Path, request: &Request) -> Result<serde_json::Value, ClientError> {
    let io = |source| ClientError::Io {
        path: socket.to_owned(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_owned(),
        source,
    })?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(request).map_err(ClientError::Decode)?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).map_err(io)?;
    let response: Response = serde_json::from_str(&reply).map_err(ClientError::Decode)?;
    if response.ok {
        Ok(response.data)
    } else {
        Err(ClientError::Refused(
            response.error.unwrap_or_else(|| "refused".into()),
        ))
    }
}
