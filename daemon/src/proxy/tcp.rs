//! `protocol = "tcp"` handler: after the connection-level checks, connect
//! upstream and relay bytes both ways, counting them, until either side
//! closes or the grant runs out. The phases other handlers (postgres, ssh,
//! http) also go through: upstream connect, relay with per-command policy,
//! and the end record.

use std::sync::atomic::{AtomicU64, Ordering};

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::{
    reset,
    splice::{self, PumpError},
    SessionCtx,
};
use crate::audit::Session;

/// Which side ended the session, in the audit's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    Closed,
    AgentError(String),
    UpstreamError(String),
    GrantExpired,
    Internal(String),
}

impl End {
    fn describe(&self) -> String {
        match self {
            End::Closed => "closed by both sides".into(),
            End::Internal(e) => format!("cordon failed: {e}"),
            End::AgentError(e) => format!("agent side failed: {e}"),
            End::UpstreamError(e) => format!("upstream side failed: {e}"),
            End::GrantExpired => "grant expired: session closed by cordon".into(),
        }
    }
}

/// Starts a non-blocking connect to the upstream: the handshake proceeds in
/// the kernel while the caller finishes its bookkeeping.
pub fn start_connect(target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    socket.set_nodelay(true)?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    TcpStream::from_std(std::net::TcpStream::from(socket))
}

/// Waits for a started connect to complete (or fail, or time out).
async fn finish_connect(
    started: std::io::Result<TcpStream>,
    timeout: std::time::Duration,
) -> Result<TcpStream, String> {
    let stream = started.map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, stream.writable()).await {
        Err(_) => return Err(format!("timed out after {timeout:?}")),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(())) => {}
    }
    match stream.take_error() {
        Ok(None) => Ok(stream),
        Ok(Some(e)) | Err(e) => Err(e.to_string()),
    }
}

pub async fn serve(
    ctx: SessionCtx,
    agent: TcpStream,
    upstream: std::io::Result<TcpStream>,
) -> Session {
    let SessionCtx {
        gw,
        mut record,
        admitted,
        deadline,
    } = ctx;
    let target = admitted.resource.address;
    let timeout = gw.config.daemon.upstream_connect_timeout;
    let upstream = match finish_connect(upstream, timeout).await {
        Ok(s) => s,
        Err(e) => {
            record.end_reason =
                Some(End::UpstreamError(format!("connect to {target}: {e}")).describe());
            reset(agent);
            return record;
        }
    };
    // (TCP_NODELAY: the agent socket inherits it from the listener; the
    // upstream one was set before connect.)
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let pool = &gw.pipes;
    let end = match (pool.take(), pool.take()) {
        (Ok(up_pipe), Ok(down_pipe)) => {
            let relay = async {
                let (a, b) = tokio::join!(
                    splice::pump(&agent, &upstream, &up_pipe, &up),
                    splice::pump(&upstream, &agent, &down_pipe, &down)
                );
                // The first failure, else a clean close.
                match (a, b) {
                    (Err(PumpError::Read(e)), _) => End::AgentError(e.to_string()),
                    (Err(PumpError::Write(e)), _) => End::UpstreamError(e.to_string()),
                    (_, Err(PumpError::Read(e))) => End::UpstreamError(e.to_string()),
                    (_, Err(PumpError::Write(e))) => End::AgentError(e.to_string()),
                    (Ok(()), Ok(())) => End::Closed,
                }
            };
            let end = tokio::select! {
                end = relay => end,
                () = tokio::time::sleep_until(deadline) => End::GrantExpired,
            };
            // Both pumps ran to EOF, so both pipes are empty: reuse them.
            if end == End::Closed {
                pool.give(up_pipe);
                pool.give(down_pipe);
            }
            end
        }
        (Err(e), _) | (_, Err(e)) => End::Internal(format!("cannot create relay pipes: {e}")),
    };
    record.bytes_up = up.load(Ordering::Relaxed);
    record.bytes_down = down.load(Ordering::Relaxed);
    if end == End::GrantExpired {
        reset(agent);
        tracing::info!("grant expired: live session closed");
    }
    record.end_reason = Some(end.describe());
    record
}
