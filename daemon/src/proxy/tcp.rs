//! `protocol = "tcp"` handler: after the connection-level checks, connect
//! upstream and relay bytes both ways, counting them, until either side
//! closes or the grant runs out. The phases other handlers (postgres, ssh,
//! http) also go through: upstream connect, relay with per-command policy,
//! and the end record.

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        tcp::{ReadHalf, WriteHalf},
        TcpStream,
    },
};

use super::{reset, SessionCtx};
use crate::audit::Session;

const BUF: usize = 64 * 1024;

/// Which side ended the session, in the audit's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    AgentClosed,
    UpstreamClosed,
    AgentError(String),
    UpstreamError(String),
    GrantExpired,
}

impl End {
    fn describe(&self) -> String {
        match self {
            End::AgentClosed => "agent closed".into(),
            End::UpstreamClosed => "upstream closed".into(),
            End::AgentError(e) => format!("agent side failed: {e}"),
            End::UpstreamError(e) => format!("upstream side failed: {e}"),
            End::GrantExpired => "grant expired: session closed by cordon".into(),
        }
    }
}

pub async fn serve(ctx: SessionCtx, mut agent: TcpStream) -> Session {
    let SessionCtx {
        gw,
        mut record,
        admitted,
        deadline,
    } = ctx;
    let target = admitted.resource.address;
    let timeout = gw.config.daemon.upstream_connect_timeout;
    let upstream = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            record.end_reason =
                Some(End::UpstreamError(format!("connect to {target}: {e}")).describe());
            reset(agent);
            return record;
        }
        Err(_) => {
            record.end_reason = Some(
                End::UpstreamError(format!("connect to {target}: timed out after {timeout:?}"))
                    .describe(),
            );
            reset(agent);
            return record;
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = agent.set_nodelay(true);
    let mut upstream = upstream;
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let end = {
        let (mut ar, mut aw) = agent.split();
        let (mut ur, mut uw) = upstream.split();
        let relay = async {
            let (a, b) = tokio::join!(
                pump(&mut ar, &mut uw, &up, Side::Agent),
                pump(&mut ur, &mut aw, &down, Side::Upstream)
            );
            // The first failure, else the side that closed first.
            match (a, b) {
                (Err(e), _) | (_, Err(e)) => e,
                (Ok(()), Ok(())) => End::AgentClosed,
            }
        };
        tokio::select! {
            end = relay => end,
            () = tokio::time::sleep_until(deadline) => End::GrantExpired,
        }
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

#[derive(Clone, Copy)]
enum Side {
    Agent,
    Upstream,
}

/// Copies one direction until EOF, then half-closes the other side.
async fn pump(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    count: &AtomicU64,
    side: Side,
) -> Result<(), End> {
    let (read_err, write_err): (fn(String) -> End, fn(String) -> End) = match side {
        Side::Agent => (End::AgentError, End::UpstreamError),
        Side::Upstream => (End::UpstreamError, End::AgentError),
    };
    let mut buf = vec![0u8; BUF];
    loop {
        let n = from
            .read(&mut buf)
            .await
            .map_err(|e| read_err(e.to_string()))?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        let chunk = buf.get(..n).unwrap_or_default();
        to.write_all(chunk)
            .await
            .map_err(|e| write_err(e.to_string()))?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}
