//! SSH gateway: Cordon is the SSH server the agent talks to and the SSH
//! client of the upstream host.
//!
//! - Agent side (russh server): Cordon's host key (`<state_dir>/ssh_host_ed25519_key`,
//!   `cordon ssh-config` prints the known_hosts line). The kernel attestation is the identity:
//!   the only authentication offered is `none`, accepted when a live grant allows the user name
//!   the agent asked for (grant `login` pin). The agent holds no secret.
//! - Upstream side (russh client): the host key must be pinned in config (`host_keys`) or
//!   recorded with `cordon ssh-trust`; anything else refuses the session. Login with the vaulted
//!   private key (ed25519, rsa, ecdsa) or password, read from the vault for every session.
//! - Every session channel is relayed by [`channel`]: exec, shell and subsystem requests are
//!   decided by the resource's SSH policy, sftp is inspected packet by packet ([`sftp`]),
//!   port/agent/X11 forwarding and unknown channel kinds are refused, and everything is recorded
//!   ([`crate::audit::recording`]).

mod channel;
mod scp;
mod sftp;
mod upstream;

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use russh::{
    keys::{ssh_key::LineEnding, HashAlg, PrivateKey, PublicKey},
    server::{self, Auth, Msg, Session as ServerSession},
    Channel, ChannelId, ChannelOpenFailure, Disconnect, MethodKind, MethodSet,
};
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::{
    audit::{recording::EventKind, recording::Recorder, Session},
    config::{Config, Protocol, Resource, SshResource},
    proxy::SessionCtx,
};

/// Channels one agent connection may have open at once.
const MAX_CHANNELS: u32 = 16;
/// How long an agent may take from connecting to logging in.
const LOGIN_DEADLINE: Duration = Duration::from_secs(30);

/// Resolves when the agent has not logged in within [`LOGIN_DEADLINE`]; never after a login.
async fn login_deadline(conn: &Conn) {
    tokio::time::sleep(LOGIN_DEADLINE).await;
    if conn.logged_in.load(Ordering::Acquire) {
        std::future::pending::<()>().await;
    }
}

/// Resolves when the grant that allowed the login has run out (checked every 250 ms).
async fn login_grant_expiry(conn: &Conn) -> String {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let expires = conn.login_expires.lock().ok().and_then(|e| *e);
        if let Some(at) = expires {
            if at <= time::OffsetDateTime::now_utc() {
                return format!(
                    "the grant for this login on `{}` expired at {}",
                    conn.resource.name,
                    crate::rfc3339(at)
                );
            }
        }
    }
}

/// How long the upstream handshake (TCP, key exchange, host key) may take.
const UPSTREAM_HANDSHAKE: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum SshSetupError {
    #[error("{}: {what}", path.display())]
    HostKey { path: PathBuf, what: String },
    #[error("opening the ssh trust store: {0}")]
    Store(#[from] sled::Error),
}

/// State shared by all ssh sessions.
pub struct Shared {
    server: Arc<server::Config>,
    client: Arc<russh::client::Config>,
    host_public: PublicKey,
    /// Upstream host keys recorded by `cordon ssh-trust`: resource name -> key line.
    trust: sled::Tree,
}

/// `<algorithm> <base64>`: a public key as known_hosts and the config write it, no comment.
pub fn key_line(key: &PublicKey) -> String {
    let mut key = key.clone();
    key.set_comment("");
    key.to_openssh()
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// SHA256 fingerprint as OpenSSH prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

impl Shared {
    pub fn new(config: &Config, db: &sled::Db) -> Result<Self, SshSetupError> {
        let path = config.daemon.state_dir.join("ssh_host_ed25519_key");
        let host = load_or_create_host_key(&path)?;
        let host_public = host.public_key().clone();
        if config.resources.iter().any(|r| r.protocol == Protocol::Ssh) {
            info!(fingerprint = %fingerprint(&host_public), "ssh: agent-side host key");
        }
        let mut methods = MethodSet::empty();
        methods.push(MethodKind::None);
        let server = server::Config {
            server_id: russh::SshId::Standard("SSH-2.0-Cordon".into()),
            methods,
            auth_rejection_time: Duration::from_millis(200),
            auth_rejection_time_initial: Some(Duration::ZERO),
            keys: vec![host],
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(60)),
            nodelay: true,
            window_size: 8 * 1024 * 1024,
            maximum_packet_size: 65535,
            max_auth_attempts: 3,
            // Messages queued per channel before the connection stops reading: bounds what
            // a stalled channel (a held command) can make Cordon hold (russh's default, 100,
            // allows about 25 MiB per channel; a smaller queue costs bulk throughput).
            channel_buffer_size: 48,
            preferred: aes_gcm_first(),
            ..Default::default()
        };
        let client = russh::client::Config {
            client_id: russh::SshId::Standard("SSH-2.0-Cordon".into()),
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(60)),
            nodelay: true,
            window_size: 8 * 1024 * 1024,
            maximum_packet_size: 65535,
            preferred: aes_gcm_first(),
            ..Default::default()
        };
        Ok(Self {
            server: Arc::new(server),
            client: Arc::new(client),
            host_public,
            trust: db.open_tree("ssh_trust")?,
        })
    }

    /// Cordon's agent-side host key, `<algorithm> <base64>`.
    pub fn host_key_line(&self) -> String {
        key_line(&self.host_public)
    }

    /// The upstream host keys a session with `resource` accepts: the pinned ones from
    /// config, else the one `cordon ssh-trust` recorded. Empty = the session is refused.
    pub fn accepted_keys(&self, resource: &str, ssh: &SshResource) -> Vec<String> {
        if !ssh.host_keys.is_empty() {
            return ssh.host_keys.clone();
        }
        match self.trust.get(resource.as_bytes()) {
            Ok(Some(v)) => String::from_utf8(v.to_vec()).into_iter().collect(),
            Ok(None) => Vec::new(),
            Err(e) => {
                warn!(error = %e, "ssh: cannot read the trust store");
                Vec::new()
            }
        }
    }

    /// Records `key` as the host key of `resource` (what `cordon ssh-trust` learned).
    pub fn record_trust(&self, resource: &str, key: &str) -> Result<(), sled::Error> {
        self.trust.insert(resource.as_bytes(), key.as_bytes())?;
        self.trust.flush()?;
        Ok(())
    }

    /// Connects to the upstream of `resource` and returns the host key it presents, without
    /// logging in (for `cordon ssh-trust`).
    pub async fn probe_host_key(
        &self,
        resource: &Resource,
        timeout: Duration,
    ) -> Result<PublicKey, String> {
        upstream::probe(self.client.clone(), resource.address, timeout).await
    }
}

/// Algorithm preferences of both legs: AES-256-GCM only (hardware-accelerated AES and GHASH on
/// the hosts Cordon runs on). On the agent leg, offering only GCM makes the OpenSSH client use
/// it instead of its default chacha20-poly1305, which costs the client and Cordon more CPU per
/// byte; every OpenSSH since 6.2 has it.
fn aes_gcm_first() -> russh::Preferred {
    russh::Preferred {
        cipher: std::borrow::Cow::Borrowed(&[russh::cipher::AES_256_GCM]),
        ..russh::Preferred::default()
    }
}

fn load_or_create_host_key(path: &Path) -> Result<PrivateKey, SshSetupError> {
    let err = |what: String| SshSetupError::HostKey {
        path: path.to_owned(),
        what,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::PermissionsExt as _;
            if meta.file_type().is_symlink() || !meta.is_file() {
                return Err(err("the host key is not a regular file".into()));
            }
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(err(
                    "the host key is readable by group or others; expected mode 0600".into(),
                ));
            }
            let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
            PrivateKey::from_openssh(&text)
                .map_err(|e| err(format!("not an OpenSSH private key: {e}")))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let seed: [u8; 32] = rand::random();
            let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
            let mut key = PrivateKey::from(pair);
            key.set_comment("cordon");
            let text = key
                .to_openssh(LineEnding::LF)
                .map_err(|e| err(format!("encoding the new host key: {e}")))?;
            use std::io::Write as _;
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| err(format!("creating the host key: {e}")))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(|e| err(format!("writing the host key: {e}")))?;
            info!(path = %path.display(), "ssh: created the agent-side host key");
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// What one agent connection shares between its handler and channel tasks.
pub(crate) struct Conn {
    pub gw: Arc<crate::proxy::Gateway>,
    pub resource: Resource,
    pub ssh: SshResource,
    pub agent: crate::config::AgentName,
    pub session: crate::audit::SessionId,
    /// The session's cutoff (a watcher): a command held for approval stops waiting when
    /// the grant ends.
    pub cutoff: crate::grants::Cutoff,
    /// The just-in-time grant that admitted the connection (None: a static grant). A login
    /// must be allowed by that same grant: its expiry and revocation are what cut the session.
    pub admitted_grant: Option<String>,
    /// Set once the agent has logged in (the login deadline no longer applies).
    pub logged_in: std::sync::atomic::AtomicBool,
    /// When the grant that allowed the login runs out (it may be an earlier-expiring static
    /// grant than the one that admitted the connection, e.g. one pinning another login).
    pub login_expires: Mutex<Option<time::OffsetDateTime>>,
    pub recorder: Recorder,
    /// The command policy of this session: set at login from the grant that admitted it.
    pub policy: std::sync::OnceLock<Arc<crate::policy::ssh::SshPolicy>>,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub channels: AtomicU32,
    /// Why the session ended, when Cordon ended it.
    pub end: Mutex<Option<String>>,
}

impl Conn {
    pub fn set_end(&self, why: String) {
        if let Ok(mut e) = self.end.lock() {
            e.get_or_insert(why);
        }
    }
}

/// The agent-side handler: authentication and channel opening. Everything inside a channel
/// is handled by its [`channel`] tasks.
struct AgentHandler {
    conn: Arc<Conn>,
    /// The upstream connection: handshake result; logged in at the agent's `none` auth.
    upstream: Option<Result<upstream::Upstream, String>>,
    login: Option<String>,
    /// Why this connection is refused (its channels only say so), if it is.
    refused: Option<String>,
}

impl server::Handler for AgentHandler {
    type Error = anyhow::Error;

    async fn auth_none(&mut self, user: &str) -> Result<Auth, Self::Error> {
        if let Err(why) = self.login_upstream(user).await {
            // The login is accepted, but nothing reaches the upstream: every channel answers
            // with the reason (a refused SSH login cannot carry a message OpenSSH shows).
            self.conn.recorder.event_durable(
                0,
                EventKind::Request {
                    what: "login".into(),
                    detail: format!("user {user}"),
                    verdict: "deny".into(),
                    rule: "grant".into(),
                    reason: Some(why.clone()),
                },
            )?;
            info!(reason = %why, "ssh: session refused");
            self.conn.set_end(format!("session refused: {why}"));
            self.refused = Some(why);
        }
        Ok(Auth::Accept)
    }

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        _offer: server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(Auth::reject())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        session: &mut ServerSession,
    ) -> Result<(), Self::Error> {
        if let Some(why) = &self.refused {
            if self.conn.channels.fetch_add(1, Ordering::AcqRel) >= MAX_CHANNELS {
                self.conn.channels.fetch_sub(1, Ordering::AcqRel);
                reply.reject(ChannelOpenFailure::ResourceShortage).await;
                return Ok(());
            }
            reply.accept().await;
            tokio::spawn(channel::refused(
                self.conn.clone(),
                session.handle(),
                channel,
                why.clone(),
            ));
            return Ok(());
        }
        let Some(Ok(up)) = self.upstream.as_ref() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        if self.login.is_none() {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        }
        let open = self.conn.channels.fetch_add(1, Ordering::AcqRel);
        if open >= MAX_CHANNELS {
            self.conn.channels.fetch_sub(1, Ordering::AcqRel);
            self.refuse_channel(
                "session",
                format!("more than {MAX_CHANNELS} channels open at once"),
            )?;
            reply.reject(ChannelOpenFailure::ResourceShortage).await;
            return Ok(());
        }
        let upstream_channel = match up.handle.channel_open_session().await {
            Ok(c) => c,
            Err(e) => {
                self.conn.channels.fetch_sub(1, Ordering::AcqRel);
                warn!(error = %e, "ssh: upstream refused a session channel");
                reply.reject(ChannelOpenFailure::ConnectFailed).await;
                return Ok(());
            }
        };
        reply.accept().await;
        let id: u32 = channel.id().into();
        self.conn.recorder.event(
            id,
            EventKind::Open {
                kind: "session".into(),
            },
        );
        tokio::spawn(channel::run(
            self.conn.clone(),
            session.handle(),
            channel,
            upstream_channel,
        ));
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut ServerSession,
    ) -> Result<(), Self::Error> {
        self.refuse_channel(
            "direct-tcpip",
            format!("local/dynamic port forwarding to {host_to_connect}:{port_to_connect} is not allowed through cordon"),
        )?;
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        socket_path: &str,
        reply: server::ChannelOpenHandle,
        _session: &mut ServerSession,
    ) -> Result<(), Self::Error> {
        self.refuse_channel(
            "direct-streamlocal",
            format!("unix socket forwarding to {socket_path} is not allowed through cordon"),
        )?;
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _originator_address: &str,
        _originator_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut ServerSession,
    ) -> Result<(), Self::Error> {
        self.refuse_channel("x11", "X11 forwarding is not allowed through cordon".into())?;
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut ServerSession,
    ) -> Result<bool, Self::Error> {
        self.refuse_global(
            "port-forward",
            format!("{address}:{port}"),
            "remote port forwarding is not allowed through cordon",
        )?;
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        socket_path: &str,
        _session: &mut ServerSession,
    ) -> Result<bool, Self::Error> {
        self.refuse_global(
            "port-forward",
            socket_path.to_owned(),
            "remote unix socket forwarding is not allowed through cordon",
        )?;
        Ok(false)
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        _session: &mut ServerSession,
    ) -> Result<bool, Self::Error> {
        self.conn.recorder.event_durable(
            channel.into(),
            EventKind::Request {
                what: "agent-forward".into(),
                detail: String::new(),
                verdict: "deny".into(),
                rule: "builtin/agent-forwarding".into(),
                reason: Some("agent forwarding is not allowed through cordon".into()),
            },
        )?;
        Ok(false)
    }
}

impl AgentHandler {
    /// Checks the grant for `user`, then logs in upstream (once per connection).
    async fn login_upstream(&mut self, user: &str) -> Result<(), String> {
        if !crate::config::valid_login(user) {
            return Err(format!(
                "`{}` is not a valid user name",
                user.escape_default()
            ));
        }
        if let Some(done) = &self.login {
            return if done == user {
                Ok(())
            } else {
                Err(format!("already logged in as `{done}`"))
            };
        }
        let now = time::OffsetDateTime::now_utc();
        let grant = crate::grants::check_login(
            &self.conn.gw.config,
            self.conn.gw.approvals.active(),
            &self.conn.agent,
            &self.conn.resource.name,
            user,
            now,
        )
        .map_err(|e| e.to_string())?;
        if grant.id != self.conn.admitted_grant {
            return Err(
                "the grants changed since this connection was admitted; connect again".into(),
            );
        }
        if let Ok(mut e) = self.conn.login_expires.lock() {
            *e = Some(grant.expires);
        }
        // A just-in-time grant's action may name its own policy.
        let _ = self
            .conn
            .policy
            .set(grant.ssh_policy(&self.conn.ssh.policy));
        let up = match self.upstream.as_mut() {
            Some(Ok(up)) => up,
            Some(Err(e)) => return Err(e.clone()),
            None => return Err("the upstream connection is not ready".into()),
        };
        let login = self.conn.ssh.upstream_user.as_deref().unwrap_or(user);
        up.authenticate(&self.conn.gw.vault, &self.conn.ssh.credential, login)
            .await?;
        self.login = Some(user.to_owned());
        self.conn.logged_in.store(true, Ordering::Release);
        Ok(())
    }

    fn refuse_channel(&self, kind: &str, reason: String) -> anyhow::Result<()> {
        info!(kind, reason = %reason, "ssh: channel refused");
        self.conn.recorder.event_durable(
            0,
            EventKind::Request {
                what: "channel-open".into(),
                detail: kind.to_owned(),
                verdict: "deny".into(),
                rule: format!("builtin/{kind}"),
                reason: Some(reason),
            },
        )?;
        Ok(())
    }

    fn refuse_global(&self, what: &str, detail: String, reason: &str) -> anyhow::Result<()> {
        info!(what, detail = %detail, "ssh: global request refused");
        self.conn.recorder.event_durable(
            0,
            EventKind::Request {
                what: what.to_owned(),
                detail,
                verdict: "deny".into(),
                rule: format!("builtin/{what}"),
                reason: Some(reason.to_owned()),
            },
        )?;
        Ok(())
    }
}

/// Serves one captured agent connection to an ssh resource.
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
    let Some(ssh) = admitted.resource.ssh.clone() else {
        record.end_reason = Some("internal error: ssh resource without settings".into());
        return record;
    };
    let recorder = Recorder::start(&gw.audit, record.id);
    let conn = Arc::new(Conn {
        gw: gw.clone(),
        resource: admitted.resource.clone(),
        ssh: ssh.clone(),
        agent: admitted.principal.agent.clone(),
        session: record.id,
        cutoff: cutoff.watcher(),
        admitted_grant: admitted.grant.id.clone(),
        logged_in: std::sync::atomic::AtomicBool::new(false),
        login_expires: Mutex::new(None),
        recorder,
        policy: std::sync::OnceLock::new(),
        bytes_up: AtomicU64::new(0),
        bytes_down: AtomicU64::new(0),
        channels: AtomicU32::new(0),
        end: Mutex::new(None),
    });
    // The upstream handshake (and its host key check) runs first; a failure is told to the
    // agent at login, in the disconnect message.
    let accepted = gw.ssh.accepted_keys(&admitted.resource.name, &ssh);
    let up = if accepted.is_empty() {
        Err(format!(
            "the host key of `{}` is not pinned: set `host_keys` in the config or run `cordon ssh-trust {}`",
            admitted.resource.name, admitted.resource.name
        ))
    } else {
        let timeout = gw.config.daemon.upstream_connect_timeout;
        match super::tcp::finish_connect(upstream, timeout).await {
            Err(e) => Err(format!(
                "cannot reach {} ({}): {e}",
                admitted.resource.name, admitted.resource.address
            )),
            Ok(tcp) => {
                upstream::Upstream::handshake(
                    gw.ssh.client.clone(),
                    tcp,
                    accepted,
                    UPSTREAM_HANDSHAKE,
                )
                .await
            }
        }
    };
    if let Err(e) = &up {
        warn!(error = %e, "ssh: upstream unavailable");
        conn.set_end(e.clone());
    }
    let handler = AgentHandler {
        conn: conn.clone(),
        upstream: Some(up),
        login: None,
        refused: None,
    };
    let served = server::run_stream(gw.ssh.server.clone(), agent, handler).await;
    let running = match served {
        Ok(r) => r,
        Err(e) => {
            record.end_reason = Some(format!("agent ssh handshake failed: {e}"));
            return record;
        }
    };
    let handle = running.handle();
    tokio::pin!(running);
    let ended = tokio::select! {
        r = &mut running => Err(match r {
            Ok(()) => None,
            Err(e) => Some(format!("agent connection error: {e}")),
        }),
        () = tokio::time::sleep_until(deadline) => Ok(format!(
            "the grant for `{}` on `{}` expired", conn.agent, conn.resource.name
        )),
        why = cutoff.fired() => Ok(why),
        () = login_deadline(&conn) => Ok(format!(
            "no login within {} s", LOGIN_DEADLINE.as_secs()
        )),
        why = login_grant_expiry(&conn) => Ok(why),
    };
    let outcome = match ended {
        Err(outcome) => outcome,
        Ok(why) => {
            conn.set_end(why.clone());
            let _ = handle
                .disconnect(
                    Disconnect::ByApplication,
                    format!("cordon: {why}"),
                    "en".into(),
                )
                .await;
            // Give the disconnect a moment to leave, then drop everything.
            let _ = tokio::time::timeout(Duration::from_millis(500), &mut running).await;
            Some(why)
        }
    };
    record.bytes_up = conn.bytes_up.load(Ordering::Relaxed);
    record.bytes_down = conn.bytes_down.load(Ordering::Relaxed);
    let end = conn.end.lock().ok().and_then(|e| e.clone());
    record.end_reason = Some(end.or(outcome).unwrap_or_else(|| "agent closed".into()));
    record
}
