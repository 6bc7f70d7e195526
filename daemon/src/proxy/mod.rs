//! Proxy: the accept loop and the per-connection stages.
//!
//! accept -> capture::take (kernel attestation) -> identity::resolve ->
//! config::resource_at (original destination) -> grants::check -> audit
//! (durable) -> protocol handler (upstream connect, relay) -> audit (end).
//! Any stage that cannot decide refuses the connection with a TCP reset and
//! records why.

pub mod splice;
pub mod tcp;

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::{info, warn, Instrument as _};

use crate::{
    audit::{self, Session, SessionId, Verdict},
    capture::{Attested, Capture},
    config::{Config, Protocol, Resource},
    grants,
    identity::{self, Principal, Registry},
};

/// Accept backlog: a connect storm must not overflow the queue.
const BACKLOG: u32 = 8192;

/// Counters shown by `cordon status`.
#[derive(Default)]
pub struct Stats {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub active: AtomicU64,
}

/// Everything a connection needs, shared by all of them.
pub struct Gateway {
    pub config: Config,
    pub capture: RwLock<Capture>,
    pub identity: Registry,
    pub audit: Arc<audit::Store>,
    pub stats: Stats,
    pub pipes: splice::PipePool,
    /// Session-end records, written off the proxy thread.
    pub deferred: audit::Deferred,
}

/// Binds the proxy on the configured IPv4 address and on `[::1]`, same port.
pub fn bind(listen: SocketAddr) -> std::io::Result<Vec<TcpListener>> {
    let v6 = SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), listen.port());
    let mut out = Vec::new();
    for addr in [listen, v6] {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_nodelay(true)?;
        socket.bind(addr)?;
        out.push(socket.listen(BACKLOG)?);
    }
    Ok(out)
}

pub async fn serve(gw: Arc<Gateway>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let gw = gw.clone();
                tokio::spawn(async move { handle(gw, stream, peer).await });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// A refused connection: why, and what is known so far.
struct Refusal {
    reason: String,
}

impl<E: std::fmt::Display> From<E> for Refusal {
    fn from(e: E) -> Self {
        Self {
            reason: e.to_string(),
        }
    }
}

/// What the checks decided for an allowed connection.
pub struct Admitted {
    pub principal: Principal,
    pub resource: Resource,
    pub grant: grants::LiveGrant,
}

/// Per-session context handed to a protocol handler.
pub struct SessionCtx {
    pub gw: Arc<Gateway>,
    pub record: Session,
    pub admitted: Admitted,
    /// When the grant that admitted this session runs out.
    pub deadline: tokio::time::Instant,
}

async fn handle(gw: Arc<Gateway>, stream: TcpStream, peer: SocketAddr) {
    let id = gw.audit.next_id();
    let span = tracing::info_span!(
        "session",
        session = %id,
        agent = tracing::field::Empty,
        dst = tracing::field::Empty
    );
    async move {
        let started = OffsetDateTime::now_utc();
        let attested = match gw.capture.read() {
            Ok(c) => c.take(peer),
            Err(_) => {
                return refuse(
                    &gw,
                    stream,
                    base_record(id, started, None),
                    "capture state unavailable".into(),
                );
            }
        };
        let attested = match attested {
            Ok(Some(a)) => a,
            Ok(None) => {
                let mut record = base_record(id, started, None);
                record.dst = format!("{peer} (direct to proxy)");
                return refuse(
                    &gw,
                    stream,
                    record,
                    "no kernel attestation for this connection: it did not come from a pinned agent cgroup".into(),
                );
            }
            Err(e) => {
                return refuse(&gw, stream, base_record(id, started, None), e.to_string());
            }
        };
        tracing::Span::current().record("dst", tracing::field::display(attested.orig_dst));
        let mut record = base_record(id, started, Some(&attested));
        let admitted = match admit(&gw, &attested, &mut record, started) {
            Ok(a) => a,
            Err(refusal) => return refuse(&gw, stream, record, refusal.reason),
        };
        record.verdict = Verdict::Allow;
        record.reason = format!(
            "grant for `{}` on `{}` until {}",
            admitted.principal.agent,
            admitted.resource.name,
            crate::rfc3339(admitted.grant.expires)
        );
        // The upstream handshake runs while the session is recorded; no
        // agent byte reaches the upstream before the record is durable.
        let upstream = tcp::start_connect(admitted.resource.address);
        record.exe = identity::exe_of(attested.tgid);
        if let Err(e) = gw.audit.record(&record) {
            return refuse(&gw, stream, record, format!("cannot record session: {e}"));
        }
        gw.stats.allowed.fetch_add(1, Ordering::Relaxed);
        gw.stats.active.fetch_add(1, Ordering::Relaxed);
        let remaining = (admitted.grant.expires - started).unsigned_abs();
        let deadline = tokio::time::Instant::now() + remaining;
        let ctx = SessionCtx {
            gw: gw.clone(),
            record,
            admitted,
            deadline,
        };
        let mut record = match ctx.admitted.resource.protocol {
            Protocol::Tcp => tcp::serve(ctx, stream, upstream).await,
        };
        record.ended_at = Some(crate::rfc3339(OffsetDateTime::now_utc()));
        gw.stats.active.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(
            up = record.bytes_up,
            down = record.bytes_down,
            end = record.end_reason.as_deref().unwrap_or(""),
            "session ended"
        );
        gw.deferred.record(record);
    }
    .instrument(span)
    .await
}

/// identity -> resource -> grant. Fills in the record as it learns.
fn admit(
    gw: &Gateway,
    attested: &Attested,
    record: &mut Session,
    now: OffsetDateTime,
) -> Result<Admitted, Refusal> {
    let principal = gw.identity.resolve(attested)?;
    record.agent = Some(principal.agent.to_string());
    record.cgroup = Some(principal.agent_cgroup.display().to_string());
    tracing::Span::current().record("agent", principal.agent.as_str());
    let resource = gw
        .config
        .resource_at(attested.orig_dst)
        .ok_or_else(|| Refusal {
            reason: format!(
                "destination {} is not a declared resource",
                attested.orig_dst
            ),
        })?
        .clone();
    record.resource = Some(resource.name.clone());
    record.protocol = Some(resource.protocol.as_str().to_owned());
    let grant = grants::check(&gw.config, &principal.agent, &resource.name, now)?;
    Ok(Admitted {
        principal,
        resource,
        grant,
    })
}

fn base_record(id: SessionId, started: OffsetDateTime, attested: Option<&Attested>) -> Session {
    Session {
        id,
        agent: None,
        pid: attested.map_or(0, |a| a.tgid),
        uid: attested.map_or(0, |a| a.uid),
        gid: attested.map_or(0, |a| a.gid),
        exe: None,
        comm: attested.map(|a| a.comm.clone()).unwrap_or_default(),
        cgroup_id: attested.map_or(0, |a| a.cgroup_id),
        cgroup: None,
        dst: attested.map(|a| a.orig_dst.to_string()).unwrap_or_default(),
        resource: None,
        protocol: None,
        verdict: Verdict::Deny,
        reason: String::new(),
        started_at: crate::rfc3339(started),
        ended_at: None,
        bytes_up: 0,
        bytes_down: 0,
        end_reason: None,
    }
}

/// Records the refusal, then resets the connection.
fn refuse(gw: &Gateway, stream: TcpStream, mut record: Session, reason: String) {
    gw.stats.denied.fetch_add(1, Ordering::Relaxed);
    info!(reason = %reason, pid = record.pid, uid = record.uid, "connection refused");
    record.verdict = Verdict::Deny;
    record.reason = reason;
    if record.pid != 0 && record.exe.is_none() {
        record.exe = identity::exe_of(record.pid);
    }
    record.ended_at = Some(record.started_at.clone());
    record.end_reason = Some("refused by cordon".into());
    if let Err(e) = gw.audit.record(&record) {
        warn!(error = %e, "could not record a refused connection");
    }
    reset(stream);
}

/// Closes with RST so the agent sees a refused connection, not a clean EOF.
pub fn reset(stream: TcpStream) {
    if let Ok(std) = stream.into_std() {
        let sock = socket2::SockRef::from(&std);
        let _ = sock.set_linger(Some(Duration::ZERO));
        drop(std);
    }
}
