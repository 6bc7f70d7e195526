//! `protocol = "postgres"` handler. Phases, after the connection-level
//! checks of the proxy:
//!
//! 1. handshake with the agent: SSLRequest/GSSENCRequest (TLS from the
//!    local CA when `agent_tls`, else 'N'), CancelRequest, StartupMessage;
//!    no password is asked: the agent's identity is the kernel attestation;
//!    the role and database it asks for are checked against the grant;
//! 2. upstream: connect (TLS verify-full if configured) and log in as the
//!    vaulted role ([`upstream`]);
//! 3. relay ([`relay`]): every statement decided by the policy, every answer
//!    masked, every statement recorded;
//! 4. end record.

pub mod catalog;
pub mod params;
pub mod relay;
pub mod upstream;
pub mod wire;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::BytesMut;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use self::{
    upstream::{Stream, UpstreamError},
    wire::{Message, Severity},
};
use super::{tcp::End, SessionCtx};
use crate::{
    audit::{
        statements::{StatementWriter, Statements},
        Session,
    },
    config::{AgentName, Config, Protocol},
    vault::Vault,
};

/// Time the agent has to finish its start-up packets.
const STARTUP_DEADLINE: Duration = Duration::from_secs(15);

/// Start-up parameters an agent may set (compared case-insensitively).
/// Anything else, notably `options` (which can set any setting) and
/// `replication`, is refused with an error naming it.
const STARTUP_ALLOWED: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "timezone",
    "extra_float_digits",
    "intervalstyle",
    "search_path",
    "bytea_output",
    "lc_messages",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "standard_conforming_strings",
];

/// Where a cancel key sends its CancelRequest.
#[derive(Debug, Clone)]
struct CancelTarget {
    agent: AgentName,
    resource: String,
    addr: SocketAddr,
    key: (i32, i32),
}

/// State all postgres sessions share.
pub struct Shared {
    pub catalogs: catalog::Catalogs,
    cancels: Mutex<HashMap<(i32, i32), CancelTarget>>,
    /// TLS for agents that ask for it, with a certificate from the local CA.
    agent_tls: Option<Arc<rustls::ServerConfig>>,
    /// Client TLS configurations per resource.
    upstream_tls: HashMap<String, (Arc<rustls::ClientConfig>, String)>,
    pub statements: Arc<Statements>,
    pub writer: StatementWriter,
}

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
}

impl Shared {
    /// Prepares TLS (issuing the agent-facing certificate for every postgres
    /// resource address) and the statement log.
    pub fn new(config: &Config, db: &sled::Db) -> Result<Self, SetupError> {
        let pg: Vec<_> = config
            .resources
            .iter()
            .filter(|r| r.protocol == Protocol::Postgres)
            .collect();
        let agent_tls = if pg
            .iter()
            .any(|r| r.postgres.as_ref().is_some_and(|p| p.agent_tls))
        {
            let ca = super::tls::LocalCa::open(&config.daemon.state_dir)?;
            let mut names: Vec<String> = pg.iter().map(|r| r.address.ip().to_string()).collect();
            names.push("localhost".into());
            names.dedup();
            tracing::info!(ca = %ca.cert_path().display(), "postgres: TLS for agents from the local CA");
            Some(ca.server_config(&names)?)
        } else {
            None
        };
        let mut upstream_tls = HashMap::new();
        for r in &pg {
            if let Some(t) = r.postgres.as_ref().and_then(|p| p.upstream_tls.as_ref()) {
                let cfg = super::tls::upstream_client_config(&t.ca)?;
                upstream_tls.insert(r.name.clone(), (cfg, t.server_name.clone()));
            }
        }
        let statements = Arc::new(Statements::open(db)?);
        let writer = statements.writer();
        Ok(Self {
            catalogs: catalog::Catalogs::default(),
            cancels: Mutex::new(HashMap::new()),
            agent_tls,
            upstream_tls,
            statements,
            writer,
        })
    }

    fn register_cancel(&self, target: CancelTarget) -> (i32, i32) {
        let mut map = match self.cancels.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        loop {
            let key = (rand::random::<i32>() & 0x7fff_ffff, rand::random::<i32>());
            if let std::collections::hash_map::Entry::Vacant(v) = map.entry(key) {
                v.insert(target);
                return key;
            }
        }
    }

    fn forget_cancel(&self, key: (i32, i32)) {
        if let Ok(mut m) = self.cancels.lock() {
            m.remove(&key);
        }
    }

    fn cancel_target(&self, key: (i32, i32)) -> Option<CancelTarget> {
        self.cancels.lock().ok()?.get(&key).cloned()
    }
}

/// The agent connection during start-up: plain or TLS.
enum AgentConn {
    Plain(TcpStream),
    Tls(Stream),
    /// Only while the plain stream is handed to the TLS handshake.
    Closed(tokio::io::Join<tokio::io::Empty, tokio::io::Sink>),
}

impl AgentConn {
    fn closed() -> Self {
        AgentConn::Closed(tokio::io::join(tokio::io::empty(), tokio::io::sink()))
    }
    fn io(&mut self) -> &mut dyn upstream::Io {
        match self {
            AgentConn::Plain(s) => s,
            AgentConn::Tls(s) => s.as_mut(),
            AgentConn::Closed(s) => s,
        }
    }
    fn into_stream(self) -> Stream {
        match self {
            AgentConn::Plain(s) => Box::new(s),
            AgentConn::Tls(s) => s,
            AgentConn::Closed(s) => Box::new(s),
        }
    }
}

/// What the agent asked for in its StartupMessage.
struct Startup {
    user: String,
    database: String,
    params: Vec<(String, String)>,
    /// Minor protocol version above 0 the agent asked for, and `_pq_`
    /// options: answered with NegotiateProtocolVersion.
    negotiate: Option<(i32, Vec<String>)>,
}

enum Opening {
    Startup(Box<Startup>),
    Cancel((i32, i32)),
}

async fn send(conn: &mut AgentConn, msg: &Message) -> std::io::Result<()> {
    let mut out = BytesMut::new();
    msg.write_to(&mut out);
    conn.io().write_all(&out).await?;
    conn.io().flush().await
}

/// Reads start-up packets until a StartupMessage or CancelRequest.
async fn opening(
    conn: &mut AgentConn,
    buf: &mut BytesMut,
    tls: Option<&Arc<rustls::ServerConfig>>,
) -> Result<Opening, String> {
    loop {
        let packet = wire::next_startup(buf).map_err(|e| e.to_string())?;
        let Some((code, payload)) = packet else {
            let n = conn
                .io()
                .read_buf(buf)
                .await
                .map_err(|e| format!("reading start-up: {e}"))?;
            if n == 0 {
                return Err("agent closed the connection during start-up".into());
            }
            continue;
        };
        match code {
            wire::SSL_REQUEST => {
                if !buf.is_empty() {
                    return Err("data sent after SSLRequest before the answer".into());
                }
                match (tls, &*conn) {
                    (Some(cfg), AgentConn::Plain(_)) => {
                        conn.io().write_all(b"S").await.map_err(|e| e.to_string())?;
                        let AgentConn::Plain(tcp) = std::mem::replace(conn, AgentConn::closed())
                        else {
                            return Err("internal: TLS state".into());
                        };
                        let stream = tokio_rustls::TlsAcceptor::from(cfg.clone())
                            .accept(tcp)
                            .await
                            .map_err(|e| format!("TLS handshake with the agent: {e}"))?;
                        *conn = AgentConn::Tls(Box::new(stream));
                    }
                    _ => conn.io().write_all(b"N").await.map_err(|e| e.to_string())?,
                }
            }
            wire::GSSENC_REQUEST => conn.io().write_all(b"N").await.map_err(|e| e.to_string())?,
            wire::CANCEL_REQUEST => {
                let mut r = wire::Reader::over(0, &payload);
                let key = (
                    r.i32().map_err(|e| e.to_string())?,
                    r.i32().map_err(|e| e.to_string())?,
                );
                return Ok(Opening::Cancel(key));
            }
            code if code >> 16 == 3 => {
                let params = wire::startup_params(&payload).map_err(|e| e.to_string())?;
                return startup(params, i32::try_from(code & 0xffff).unwrap_or(0))
                    .map(|s| Opening::Startup(Box::new(s)));
            }
            other => {
                return Err(format!(
                    "unsupported protocol version {}.{} (cordon speaks 3.0)",
                    other >> 16,
                    other & 0xffff
                ))
            }
        }
    }
}

fn startup(params: Vec<(String, String)>, minor: i32) -> Result<Startup, String> {
    let mut user = None;
    let mut database = None;
    let mut rest = Vec::new();
    let mut pq_options = Vec::new();
    for (k, v) in params {
        match k.as_str() {
            "user" => user = Some(v),
            "database" => database = Some(v),
            "options" if v.trim().is_empty() => {}
            "options" => {
                return Err(
                    "start-up parameter `options` is not allowed through cordon (it can change any setting)".into(),
                )
            }
            k if k.starts_with("_pq_.") => pq_options.push(k.to_owned()),
            k if STARTUP_ALLOWED.contains(&k.to_ascii_lowercase().as_str()) => {
                // Set at start-up as if by SET: the same limits (e.g.
                // standard_conforming_strings=off would make the server read
                // backslashes in strings the policy reads as plain text).
                if let Some(why) = crate::policy::startup_setting_problem(k, &v) {
                    return Err(format!(
                        "start-up parameter `{k}` may not be set to {v:?} through cordon: {why}"
                    ));
                }
                rest.push((k.to_owned(), v))
            }
            k => {
                return Err(format!(
                    "start-up parameter `{k}` is not allowed through cordon (allowed: user, database, {})",
                    STARTUP_ALLOWED.join(", ")
                ))
            }
        }
    }
    let user = user
        .filter(|u| !u.is_empty())
        .ok_or("the start-up message names no user")?;
    let database = database
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| user.clone());
    let negotiate = (minor > 0 || !pq_options.is_empty()).then_some((minor, pq_options));
    Ok(Startup {
        user,
        database,
        params: rest,
        negotiate,
    })
}

fn fatal(code: &str, message: &str) -> Message {
    wire::error_response(Severity::Fatal, code, message, None)
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
        cutoff,
    } = ctx;
    let shared = &gw.postgres;
    let Some(pg) = admitted.resource.postgres.clone() else {
        record.end_reason =
            Some(End::Internal("postgres resource without settings".into()).describe());
        return record;
    };
    let tls = if pg.agent_tls {
        shared.agent_tls.as_ref()
    } else {
        None
    };
    let mut conn = AgentConn::Plain(agent);
    let mut buf = BytesMut::with_capacity(1024);
    let opened = tokio::time::timeout(STARTUP_DEADLINE, opening(&mut conn, &mut buf, tls)).await;
    let start = match opened {
        Err(_) => {
            record.end_reason =
                Some(End::AgentError("no start-up message within 15 s".into()).describe());
            return record;
        }
        Ok(Err(e)) => {
            let _ = send(&mut conn, &fatal("08P01", &format!("cordon: {e}"))).await;
            record.end_reason = Some(End::AgentError(e).describe());
            return record;
        }
        Ok(Ok(Opening::Cancel(key))) => {
            record.end_reason =
                Some(cancel(&gw, &admitted.principal.agent, &admitted.resource.name, key).await);
            return record;
        }
        Ok(Ok(Opening::Startup(s))) => s,
    };

    // The role and database asked for must fit a live grant.
    let now = time::OffsetDateTime::now_utc();
    let grant = crate::grants::check_database(
        &gw.config,
        gw.approvals.active(),
        &admitted.principal.agent,
        &admitted.resource.name,
        &start.user,
        &start.database,
        now,
    )
    .and_then(|g| {
        // The login must be allowed by the grant that admitted the connection: that grant's
        // expiry and revocation are what cut the session.
        if g.id == admitted.grant.id {
            Ok(g)
        } else {
            Err(crate::grants::GrantDenial::Changed)
        }
    });
    let (deadline, policy) = match grant {
        Ok(g) => (
            deadline.min(tokio::time::Instant::now() + (g.expires - now).unsigned_abs()),
            // A just-in-time grant's action may name its own policy.
            g.postgres_policy(&pg.policy),
        ),
        Err(e) => {
            let msg = format!("cordon: {e}");
            let _ = send(&mut conn, &fatal("28000", &msg)).await;
            record.reason = format!("{}; then refused at start-up: {e}", record.reason);
            record.end_reason = Some(format!("refused by cordon: {e}"));
            return record;
        }
    };

    // Upstream: connect and log in with the vaulted credential.
    let timeout = gw.config.daemon.upstream_connect_timeout;
    let target_addr = admitted.resource.address;
    let login = async {
        let stream = super::tcp::finish_connect(upstream, timeout)
            .await
            .map_err(|e| UpstreamError::Connect(format!("{target_addr}: {e}")))?;
        let password = load_secret(&gw.vault, &pg.credential)?;
        let user = pg.upstream_user.as_deref().unwrap_or(&start.user);
        upstream::login(upstream::Target {
            stream,
            tls: shared.upstream_tls.get(&admitted.resource.name).cloned(),
            user,
            database: &start.database,
            params: &start.params,
            password: &password,
        })
        .await
    };
    let up = match tokio::time::timeout(timeout + Duration::from_secs(10), login).await {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => {
            let code = match &e {
                UpstreamError::Refused { sqlstate, .. } if !sqlstate.is_empty() => sqlstate.clone(),
                _ => "08006".into(),
            };
            let msg = format!(
                "cordon could not open the upstream session on resource `{}`: {e}",
                admitted.resource.name
            );
            let _ = send(&mut conn, &fatal(&code, &msg)).await;
            record.end_reason = Some(End::UpstreamError(e.to_string()).describe());
            return record;
        }
        Err(_) => {
            let _ = send(
                &mut conn,
                &fatal("08006", "cordon: the upstream login timed out"),
            )
            .await;
            record.end_reason = Some(End::UpstreamError("login timed out".into()).describe());
            return record;
        }
    };

    // Tell the agent it is in, with a cancel key of Cordon's own.
    let cancel_key = up.key.map(|key| {
        shared.register_cancel(CancelTarget {
            agent: admitted.principal.agent.clone(),
            resource: admitted.resource.name.clone(),
            addr: target_addr,
            key,
        })
    });
    let mut out = BytesMut::new();
    if let Some((minor, options)) = &start.negotiate {
        let mut b = wire::Builder::new(b'v')
            .i32(if *minor > 0 { 0 } else { *minor })
            .i32(i32::try_from(options.len()).unwrap_or(0));
        for o in options {
            b = b.cstr(o.as_bytes());
        }
        b.finish().write_to(&mut out);
    }
    wire::auth_ok().write_to(&mut out);
    for m in up.parameters.iter().chain(up.notices.iter()) {
        m.write_to(&mut out);
    }
    if let Some((pid, secret)) = cancel_key {
        wire::backend_key(pid, secret).write_to(&mut out);
    }
    wire::ready_for_query(up.status).write_to(&mut out);
    let mut agent_stream = conn.into_stream();
    if let Err(e) = agent_stream.write_all(&out).await {
        record.end_reason = Some(End::AgentError(e.to_string()).describe());
        if let Some(k) = cancel_key {
            shared.forget_cancel(k);
        }
        return record;
    }

    let session = relay::Session::new(relay::Setup {
        gw: gw.clone(),
        session: record.id,
        resource: admitted.resource.name.clone(),
        database: start.database.clone(),
        policy,
        credential: pg.credential.clone(),
        upstream_user: pg
            .upstream_user
            .clone()
            .unwrap_or_else(|| start.user.clone()),
        status: up.status,
        agent: admitted.principal.agent.to_string(),
    });
    let outcome = session
        .run(agent_stream, buf, up.stream, deadline, cutoff)
        .await;
    if let Some(k) = cancel_key {
        shared.forget_cancel(k);
    }
    record.bytes_up = outcome.bytes_up;
    record.bytes_down = outcome.bytes_down;
    record.end_reason = Some(outcome.end.describe());
    record
}

/// Reads the credential from the vault (every session: rotation applies to
/// the next session without a restart).
pub fn load_secret(vault: &Vault, name: &str) -> Result<crate::vault::Secret, UpstreamError> {
    match vault.get(name) {
        Ok(Some((_, s))) => Ok(s),
        Ok(None) => Err(UpstreamError::Connect(format!(
            "the vault has no entry `{name}` (cordon vault set {name})"
        ))),
        Err(e) => Err(UpstreamError::Connect(format!("vault: {e}"))),
    }
}

/// Forwards an agent's CancelRequest for a key Cordon issued to the same
/// agent on the same resource; anything else is ignored, as PostgreSQL does.
async fn cancel(gw: &super::Gateway, agent: &AgentName, resource: &str, key: (i32, i32)) -> String {
    match gw.postgres.cancel_target(key) {
        Some(t) if &t.agent == agent && t.resource == resource => {
            match upstream::cancel(t.addr, t.key, gw.config.daemon.upstream_connect_timeout).await {
                Ok(()) => "cancel request forwarded to the upstream".into(),
                Err(e) => End::UpstreamError(format!("cancel request: {e}")).describe(),
            }
        }
        Some(_) => "cancel request for another agent's session: ignored".into(),
        None => "cancel request with an unknown key: ignored".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_parameters_are_vetted() {
        let p = |kv: &[(&str, &str)]| {
            startup(
                kv.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                0,
            )
        };
        let s = p(&[
            ("user", "bob"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO"),
        ])
        .unwrap();
        assert_eq!((s.user.as_str(), s.database.as_str()), ("bob", "bob"));
        assert_eq!(s.params.len(), 2);
        assert!(p(&[("user", "bob"), ("options", "-c role=postgres")])
            .err()
            .unwrap()
            .contains("`options`"));
        assert!(p(&[("user", "bob"), ("replication", "database")]).is_err());
        assert!(p(&[("database", "x")]).is_err());
        assert!(p(&[("user", "bob"), ("options", "  ")]).is_ok());
        let s = p(&[("user", "bob"), ("_pq_.compression", "on")]).unwrap();
        assert_eq!(s.negotiate.map(|n| n.1.len()), Some(1));
        // Settings take the SET rules: these would make the server read SQL
        // (or names) differently from the policy.
        for (k, v) in [
            ("standard_conforming_strings", "off"),
            ("Standard_Conforming_Strings", "0"),
            ("search_path", "hr, public"),
            ("search_path", "\"Public\""),
            ("client_encoding", "SJIS"),
        ] {
            let err = p(&[("user", "bob"), (k, v)]).err().unwrap_or_default();
            assert!(err.contains(&format!("`{k}`")), "{k}={v}: {err}");
        }
        for (k, v) in [
            ("standard_conforming_strings", "on"),
            ("search_path", "public, pg_catalog"),
            ("client_encoding", "UTF8"),
        ] {
            assert!(p(&[("user", "bob"), (k, v)]).is_ok(), "{k}={v}");
        }
    }
}
