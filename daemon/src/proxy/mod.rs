//! Proxy: the accept loop and the per-connection stages.
//!
//! accept -> capture::take (kernel attestation) -> identity::resolve ->
//! config::resource_at (original destination) -> grants::check -> audit
//! (durable) -> protocol handler (upstream connect, relay) -> audit (end).
//! Any stage that cannot decide refuses the connection with a TCP reset and
//! records why.

pub mod postgres;
pub mod refusals;
pub mod splice;
pub mod ssh;
pub mod tcp;
pub mod tls;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, OnceLock, RwLock,
    },
    time::Duration,
};

use time::OffsetDateTime;
use tokio::{
    net::{TcpListener, TcpSocket, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};
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

/// Counters shown by `cordon status`, and the session slots that bound
/// how many sessions may be open at once.
pub struct Stats {
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub active: AtomicU64,
    pub slots: Slots,
}

/// File descriptors one proxied session holds: the agent and upstream
/// sockets and two pipes (pooled pipes are bounded by the peak number of
/// sessions, so they are covered too).
pub const FDS_PER_SESSION: u64 = 6;

/// File descriptors kept out of the session budget: the listeners, the
/// control socket and its connections, the session store, BPF programs,
/// maps and links, connections not yet admitted.
const RESERVED_FDS: u64 = 512;

/// Raises the soft RLIMIT_NOFILE to the hard limit (at most fs.nr_open)
/// and returns the soft
/// limit now in force (logged), or None if it cannot be read. Every session
/// costs [`FDS_PER_SESSION`] descriptors. Called by [`bind`]; calling it
/// again does nothing more.
pub fn raise_fd_limit() -> Option<u64> {
    static RAISED: OnceLock<Option<u64>> = OnceLock::new();
    *RAISED.get_or_init(|| {
        let mut lim = match nofile_limit() {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot read the open-file limit (RLIMIT_NOFILE)");
                return None;
            }
        };
        // An unlimited hard limit cannot be the soft one: the kernel caps
        // open files at fs.nr_open.
        let ceiling = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map_or(lim.rlim_max, |nr_open| lim.rlim_max.min(nr_open));
        if lim.rlim_cur < ceiling {
            let wanted = libc::rlimit {
                rlim_cur: ceiling,
                rlim_max: lim.rlim_max,
            };
            match set_nofile_limit(&wanted).and_then(|()| nofile_limit()) {
                Ok(now) => lim = now,
                Err(e) => warn!(
                    error = %e,
                    soft = lim.rlim_cur,
                    hard = lim.rlim_max,
                    "cannot raise the open-file limit"
                ),
            }
        }
        info!(
            soft = lim.rlim_cur,
            hard = lim.rlim_max,
            sessions = lim.rlim_cur.saturating_sub(RESERVED_FDS) / FDS_PER_SESSION,
            "open-file limit (RLIMIT_NOFILE) in force, and the sessions it can hold"
        );
        Some(lim.rlim_cur)
    })
}

#[allow(unsafe_code)]
fn nofile_limit() -> std::io::Result<libc::rlimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit for the duration of the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc == 0 {
        Ok(lim)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[allow(unsafe_code)]
fn set_nofile_limit(lim: &libc::rlimit) -> std::io::Result<()> {
    // SAFETY: `lim` points to a valid rlimit for the duration of the call.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, lim) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Bounds on concurrent sessions: one semaphore for the whole daemon, one
/// per configured agent, all sized at start-up. Permits are taken with
/// `try_acquire`, never waited for.
pub struct Slots {
    global: Arc<Semaphore>,
    global_limit: usize,
    per_agent: HashMap<String, Arc<Semaphore>>,
    per_agent_limit: usize,
}

/// Held for the life of a session; dropping it frees the slots.
pub struct SessionPermit {
    _agent: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

impl Slots {
    /// The global size is `max_sessions`, lowered to what the open-file
    /// limit can hold (a session refused with a reset is better than
    /// `accept` failing with EMFILE for every agent).
    pub fn new(config: &Config) -> Self {
        let configured = config.daemon.max_sessions;
        let mut size = configured;
        match nofile_limit() {
            Ok(lim) => {
                let fits = lim.rlim_cur.saturating_sub(RESERVED_FDS) / FDS_PER_SESSION;
                let fits = usize::try_from(fits).unwrap_or(usize::MAX).max(1);
                if fits < configured {
                    warn!(
                        max_sessions = configured,
                        open_file_limit = lim.rlim_cur,
                        effective = fits,
                        "the open-file limit cannot hold max_sessions sessions ({FDS_PER_SESSION} descriptors each): capping concurrent sessions"
                    );
                    size = fits;
                }
            }
            Err(e) => warn!(error = %e, "cannot read the open-file limit"),
        }
        let global_limit = size.min(Semaphore::MAX_PERMITS);
        let per_agent_limit = config
            .daemon
            .max_sessions_per_agent
            .min(Semaphore::MAX_PERMITS);
        info!(
            max_sessions = global_limit,
            max_sessions_per_agent = per_agent_limit,
            "concurrent session limits"
        );
        Self {
            global: Arc::new(Semaphore::new(global_limit)),
            global_limit,
            per_agent: config
                .agents
                .iter()
                .map(|a| {
                    (
                        a.name.to_string(),
                        Arc::new(Semaphore::new(per_agent_limit)),
                    )
                })
                .collect(),
            per_agent_limit,
        }
    }

    /// A slot for one more session of `agent`, or the refusal naming the
    /// limit that is reached. An agent without slots is refused.
    pub fn try_take(&self, agent: &str) -> Result<SessionPermit, String> {
        let agent_sem = self
            .per_agent
            .get(agent)
            .ok_or_else(|| format!("no session slots for agent `{agent}`"))?;
        let agent_permit = agent_sem.clone().try_acquire_owned().map_err(|_| {
            format!(
                "too many concurrent sessions for agent `{agent}` (limit {})",
                self.per_agent_limit
            )
        })?;
        let global_permit = self.global.clone().try_acquire_owned().map_err(|_| {
            format!(
                "too many concurrent sessions on this daemon (limit {})",
                self.global_limit
            )
        })?;
        Ok(SessionPermit {
            _agent: agent_permit,
            _global: global_permit,
        })
    }
}

/// Everything a connection needs, shared by all of them.
pub struct Gateway {
    pub config: Config,
    pub capture: RwLock<Capture>,
    pub identity: Registry,
    pub audit: Arc<audit::Store>,
    pub vault: Arc<crate::vault::Vault>,
    /// State shared by postgres sessions (catalog cache, cancel keys, TLS,
    /// statement log).
    pub postgres: postgres::Shared,
    /// State shared by ssh sessions (host key, client/server settings, trust store).
    pub ssh: ssh::Shared,
    pub stats: Stats,
    pub pipes: splice::PipePool,
    /// Session-end records, written off the proxy thread.
    pub deferred: audit::Deferred,
    /// Sessions per just-in-time grant, so revocation and expiry end them.
    pub live: grants::LiveSessions,
    /// Held commands, grant requests and their decisions.
    pub approvals: Arc<crate::approvals::Approvals>,
    /// Humans' logins, held for their uids (`cordon login`).
    pub logins: crate::identity::logins::Logins,
    /// Rate limit on refusal records; the rest are counted into summaries.
    pub refusals: refusals::Refusals,
}

/// Binds the proxy on the configured IPv4 address and on `[::1]`, same port,
/// after raising the open-file limit for the sessions to come.
pub fn bind(listen: SocketAddr) -> std::io::Result<Vec<TcpListener>> {
    raise_fd_limit();
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
    /// Fires when the grant that admitted this session expires or is
    /// revoked: the handler must then end the session at once (even
    /// mid-statement), with the reason it gives. Hold it for the whole
    /// session (dropping it unregisters the session).
    pub cutoff: grants::Cutoff,
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
        let (admitted, permit) = match admit(&gw, &attested, &mut record, started) {
            Ok(a) => a,
            Err(refusal) => return refuse(&gw, stream, record, refusal.reason),
        };
        record.verdict = Verdict::Allow;
        record.reason = admitted
            .grant
            .describe(&admitted.principal.agent, &admitted.resource.name);
        record.grant = admitted.grant.id.clone();
        record.on_behalf_of = gw.approvals.on_behalf_of(
            attested.tgid,
            admitted.principal.agent.as_str(),
            &admitted.grant,
        );
        // Registered before the session is recorded: a revocation from now
        // on reaches it (and one that came first refuses it here).
        let cutoff = gw.live.register(&admitted.grant, id);
        if let Some(why) = cutoff.check() {
            return refuse(&gw, stream, record, why);
        }
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
            cutoff,
        };
        let mut record = match ctx.admitted.resource.protocol {
            Protocol::Tcp => tcp::serve(ctx, stream, upstream).await,
            Protocol::Postgres => postgres::serve(ctx, stream, upstream).await,
            Protocol::Ssh => ssh::serve(ctx, stream, upstream).await,
        };
        record.ended_at = Some(crate::rfc3339(OffsetDateTime::now_utc()));
        gw.stats.active.fetch_sub(1, Ordering::Relaxed);
        // Both sockets and pipes are closed (or back in the pool): the
        // session's slots are free again.
        drop(permit);
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

/// identity -> session slots -> resource -> grant. Fills in the record as
/// it learns. The permit holds the session's slots until it is dropped.
fn admit(
    gw: &Gateway,
    attested: &Attested,
    record: &mut Session,
    now: OffsetDateTime,
) -> Result<(Admitted, SessionPermit), Refusal> {
    let principal = gw.identity.resolve(attested)?;
    record.agent = Some(principal.agent.to_string());
    record.cgroup = Some(principal.agent_cgroup.display().to_string());
    tracing::Span::current().record("agent", principal.agent.as_str());
    let permit = gw
        .stats
        .slots
        .try_take(principal.agent.as_str())
        .map_err(|reason| Refusal { reason })?;
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
    let grant = grants::check(
        &gw.config,
        gw.approvals.active(),
        &principal.agent,
        &resource.name,
        now,
    )?;
    Ok((
        Admitted {
            principal,
            resource,
            grant,
        },
        permit,
    ))
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
        on_behalf_of: None,
        grant: None,
        refusals: None,
    }
}

/// Records the refusal, then resets the connection.
/// Over the rate (see [`refusals`]), the record is counted into the next
/// summary instead of written on its own; the connection is refused alike.
fn refuse(gw: &Gateway, stream: TcpStream, mut record: Session, reason: String) {
    gw.stats.denied.fetch_add(1, Ordering::Relaxed);
    record.verdict = Verdict::Deny;
    record.reason = reason;
    record.ended_at = Some(record.started_at.clone());
    record.end_reason = Some("refused by cordon".into());
    // Recorded (or counted) before the agent learns of the refusal.
    if gw.refusals.admit(&record, std::time::Instant::now()) == refusals::Admit::Record {
        info!(reason = %record.reason, pid = record.pid, uid = record.uid, "connection refused");
        if record.pid != 0 && record.exe.is_none() {
            record.exe = identity::exe_of(record.pid);
        }
        if let Err(e) = gw.audit.record(&record) {
            warn!(error = %e, "could not record a refused connection");
        }
    }
    reset(stream);
}

/// Writes the refusals (and failed control-socket authentications) counted
/// over the rate as summary records, every [`refusals::SUMMARY_EVERY`] and
/// once more when the daemon stops.
pub async fn write_rate_limited_summaries(gw: Arc<Gateway>) {
    let mut tick = tokio::time::interval(refusals::SUMMARY_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        flush_rate_limited_summaries(&gw);
    }
}

pub fn flush_rate_limited_summaries(gw: &Gateway) {
    gw.approvals.flush_auth_failures();
    for summary in gw.refusals.take_summaries(|| gw.audit.next_id()) {
        info!(
            count = summary.refusals.unwrap_or(0),
            agent = summary.agent.as_deref().unwrap_or("-"),
            "refused connections over the record rate, summarized"
        );
        if let Err(e) = gw.audit.record(&summary) {
            warn!(error = %e, "could not record a summary of refused connections");
        }
    }
}

/// Closes with RST so the agent sees a refused connection, not a clean EOF.
pub fn reset(stream: TcpStream) {
    if let Ok(std) = stream.into_std() {
        let sock = socket2::SockRef::from(&std);
        let _ = sock.set_linger(Some(Duration::ZERO));
        drop(std);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(daemon_keys: &str) -> Config {
        let text = format!(
            "[daemon]\nstate_dir = \"/tmp/s\"\ncontrol_socket = \"/tmp/c.sock\"\n{daemon_keys}\n[[agent]]\nname = \"a\"\n[[agent]]\nname = \"b\"\n"
        );
        match Config::parse(std::path::Path::new("t.toml"), &text) {
            Ok(c) => c,
            Err(e) => unreachable!("{e}"),
        }
    }

    #[test]
    fn session_slots_are_bounded_per_agent_and_globally() {
        let cfg = config("max_sessions = 3\nmax_sessions_per_agent = 2");
        let slots = Slots::new(&cfg);
        let a1 = slots.try_take("a");
        let a2 = slots.try_take("a");
        assert!(a1.is_ok() && a2.is_ok());
        assert_eq!(
            slots.try_take("a").err(),
            Some("too many concurrent sessions for agent `a` (limit 2)".to_owned())
        );
        let b1 = slots.try_take("b");
        assert!(b1.is_ok());
        assert_eq!(
            slots.try_take("b").err(),
            Some("too many concurrent sessions on this daemon (limit 3)".to_owned())
        );
        // A refused attempt holds nothing; an ended session frees its slots.
        drop(a1);
        assert!(slots.try_take("b").is_ok());
        drop((a2, b1));
        let again: Vec<_> = (0..2).map(|_| slots.try_take("a")).collect();
        assert!(again.iter().all(Result::is_ok));
        // Only configured agents have slots.
        assert!(slots.try_take("ghost").is_err());
    }
}
