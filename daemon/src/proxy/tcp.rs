//! `protocol = "tcp"` handler: after the connection-level checks, connect
//! upstream and relay bytes both ways, counting them, until both sides
//! close, either side fails, the grant runs out, or one side has been
//! closed for `half_close_timeout` while the other stays open. The phases other handlers (postgres, ssh,
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
    /// The grant ended (expired or revoked): why.
    GrantEnded(String),
    /// One direction reached EOF and the other stayed open this long.
    HalfClosed(std::time::Duration),
    Internal(String),
}

impl End {
    pub(crate) fn describe(&self) -> String {
        match self {
            End::Closed => "closed by both sides".into(),
            End::Internal(e) => format!("cordon failed: {e}"),
            End::AgentError(e) => format!("agent side failed: {e}"),
            End::UpstreamError(e) => format!("upstream side failed: {e}"),
            End::GrantEnded(why) => format!("{why}: session closed by cordon"),
            End::HalfClosed(d) => format!("half-closed for {} s: closed by cordon", d.as_secs()),
        }
    }
}

/// Starts a non-blocking connect to the upstream: the handshake proceeds in
/// the kernel while the caller finishes its bookkeeping.
pub fn start_connect(target: SocketAddr) -> std::io::Result<TcpStream> {
    // Non-blocking from creation (one syscall less than fcntl twice after);
    // socket2 adds SOCK_CLOEXEC itself.
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(target),
        socket2::Type::STREAM.nonblocking(),
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_nodelay(true)?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    TcpStream::from_std(std::net::TcpStream::from(socket))
}

/// Waits for a started connect to complete (or fail, or time out).
pub(crate) async fn finish_connect(
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
        mut cutoff,
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
            let relaying = relay(
                splice::pump(&agent, &upstream, &up_pipe, &up),
                splice::pump(&upstream, &agent, &down_pipe, &down),
                gw.config.daemon.half_close_timeout,
            );
            let end = tokio::select! {
                end = relaying => end,
                () = tokio::time::sleep_until(deadline) => End::GrantEnded("the grant expired".into()),
                why = cutoff.fired() => End::GrantEnded(why),
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
    match &end {
        End::GrantEnded(why) => {
            reset(agent);
            tracing::info!(why = %why, "grant ended: live session closed");
        }
        End::HalfClosed(_) => {
            // Cut, not finished: both peers see a reset rather than a clean
            // close of the direction that was still open.
            reset(agent);
            reset(upstream);
            tracing::info!("half-closed session timed out: closed");
        }
        _ => {}
    }
    record.end_reason = Some(end.describe());
    record
}

/// Runs both directions of a relay. Both directions run until EOF (full
/// duplex, no idle timeout); once one has reached EOF the other gets
/// `half_close` to finish. The first I/O error ends the relay.
async fn relay(
    up: impl std::future::Future<Output = Result<(), PumpError>>,
    down: impl std::future::Future<Output = Result<(), PumpError>>,
    half_close: std::time::Duration,
) -> End {
    // Errors of the agent -> upstream pump: reading is the agent's side.
    let up_err = |e: PumpError| match e {
        PumpError::Read(e) => End::AgentError(e.to_string()),
        PumpError::Write(e) => End::UpstreamError(e.to_string()),
    };
    let down_err = |e: PumpError| match e {
        PumpError::Read(e) => End::UpstreamError(e.to_string()),
        PumpError::Write(e) => End::AgentError(e.to_string()),
    };
    tokio::pin!(up, down);
    let rest = tokio::select! {
        r = &mut up => match r {
            Ok(()) => tokio::time::timeout(half_close, &mut down).await.map(|r| r.map_err(down_err)),
            Err(e) => return up_err(e),
        },
        r = &mut down => match r {
            Ok(()) => tokio::time::timeout(half_close, &mut up).await.map(|r| r.map_err(up_err)),
            Err(e) => return down_err(e),
        },
    };
    match rest {
        Ok(Ok(())) => End::Closed,
        Ok(Err(end)) => end,
        Err(_elapsed) => End::HalfClosed(half_close),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn io_err() -> std::io::Error {
        std::io::Error::from(std::io::ErrorKind::ConnectionReset)
    }

    #[tokio::test]
    async fn half_closed_relay_ends_after_the_grace_period() {
        assert_eq!(
            End::HalfClosed(Duration::from_secs(60)).describe(),
            "half-closed for 60 s: closed by cordon".to_owned()
        );
        let grace = Duration::from_millis(50);
        let end = relay(async { Ok(()) }, std::future::pending(), grace).await;
        assert_eq!(end, End::HalfClosed(grace));
        let end = relay(std::future::pending(), async { Ok(()) }, grace).await;
        assert_eq!(end, End::HalfClosed(grace));
    }

    #[tokio::test]
    async fn other_direction_finishing_within_the_grace_period_is_a_clean_close() {
        let end = relay(
            async { Ok(()) },
            async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(())
            },
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(end, End::Closed);
    }

    #[tokio::test]
    async fn open_sessions_have_no_idle_timeout_and_errors_end_at_once() {
        let open = relay(
            std::future::pending(),
            std::future::pending(),
            Duration::from_millis(10),
        );
        assert!(tokio::time::timeout(Duration::from_millis(200), open)
            .await
            .is_err());
        let end = relay(
            async { Err(PumpError::Write(io_err())) },
            std::future::pending(),
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(end, End::UpstreamError(_)), "{end:?}");
        let end = relay(
            std::future::pending(),
            async { Err(PumpError::Write(io_err())) },
            Duration::from_secs(1),
        )
        .await;
        assert!(matches!(end, End::AgentError(_)), "{end:?}");
    }
}
