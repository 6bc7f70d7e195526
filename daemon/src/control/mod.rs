//! Control API: a unix socket the CLI talks to, one JSON request and one
//! JSON response per connection. Callers are identified by SO_PEERCRED, not
//! by anything they send: root administers; `join` (used by `cordon run`) is
//! open to the users an agent lists.
//!
//! The socket is open to every local user, so it is bounded: at most
//! [`MAX_CONNECTIONS`] connections at once (a few of them kept for root, and
//! a cap per unprivileged user), the request must arrive within
//! [`REQUEST_DEADLINE`] and fit in [`MAX_REQUEST`] bytes. A connection over
//! a cap is answered at once with a `busy` error (clients retry) and closed.

pub mod client;
pub mod humans;
pub mod ssh;

use std::{
    collections::HashMap,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{
    audit::{recording, SessionId},
    capture,
    identity::oidc,
    proxy::Gateway,
    vault::{Secret, SecretKind},
};

/// Largest request accepted, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// Control connections open at once, all callers together.
pub const MAX_CONNECTIONS: usize = 64;

/// Of [`MAX_CONNECTIONS`], how many only root may use: unprivileged users
/// holding connections open cannot lock the administrator out.
const RESERVED_FOR_ROOT: usize = 16;

/// Control connections one unprivileged uid may hold at once.
const MAX_PER_USER: usize = 16;

/// Time from accept until the whole request line must have arrived.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// Time for the reply to be taken by the caller.
const REPLY_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    SessionsList {
        agent: Option<String>,
        limit: usize,
    },
    SessionsShow {
        id: String,
    },
    /// The statements recorded for a session, in order.
    SessionStatements {
        id: String,
    },
    /// The SSH channel events recorded for a session, in order, one page
    /// ([`EventsPage`]) at a time.
    SessionEvents {
        id: String,
        /// Only events after this sequence number (the last one of the
        /// previous page).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        /// Leave out input/output/stderr (requests, exits, files only).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        without_data: bool,
    },
    /// Move the calling process into an agent's cgroup. With `id_token`
    /// (the caller's login), the verified human is remembered as the one on
    /// whose behalf the agent's sessions run.
    Join {
        agent: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id_token: Option<WireSecret>,
    },
    /// Pin an existing cgroup as an agent's.
    Pin {
        agent: String,
        cgroup: PathBuf,
    },
    /// Store (or replace) a vault entry.
    VaultSet {
        name: String,
        kind: SecretKind,
        secret: WireSecret,
    },
    /// Names, kinds and change times of the vault entries, never values.
    VaultList,
    VaultRm {
        name: String,
    },
    /// Who the caller is ([`WhoAmIReply`]): the human of `id_token`, verified
    /// against `[identity.oidc]`, or local root (uid 0) without a token.
    WhoAmI {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id_token: Option<WireSecret>,
    },
    /// `cordon login`: hold this login (verified here) for the caller's
    /// uid; later requests without a token act with it (`identity::logins`).
    LoginHold {
        id_token: WireSecret,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refresh_token: Option<WireSecret>,
    },
    /// `cordon logout`: drop the login held for the caller's uid.
    Logout,
    /// Cordon's SSH host key and the ssh resources an agent may reach (anyone may ask).
    SshConfig {
        agent: String,
    },
    /// Record the host key an ssh resource's upstream presents (root).
    SshTrust {
        resource: String,
        #[serde(default)]
        replace: bool,
    },
    /// Ask for a just-in-time grant (`grants::jit::JitGrant` reply).
    AskGrant {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id_token: Option<WireSecret>,
        agent: String,
        resource: String,
        #[serde(default)]
        actions: Vec<crate::grants::GrantAction>,
        /// Role/database/login the grant is for (none: inherited).
        #[serde(default)]
        pins: crate::grants::Pins,
        ttl_secs: u64,
        reason: String,
    },
    /// Pending grant requests and held commands the caller may decide
    /// (`approvals::PendingList`).
    ApprovalsList {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id_token: Option<WireSecret>,
    },
    /// Approve a grant request (`g…`) or a held command (`h…`).
    Approve {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id_token: Option<WireSecret>,
        id: String,
    },
    /// Deny a grant request or a held command.
    Deny {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id_token: Option<WireSecret>,
        id: String,
        reason: String,
    },
    /// Static and just-in-time grants (`approvals::GrantsList`).
    GrantsList {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id_token: Option<WireSecret>,
    },
    /// End a live just-in-time grant and the sessions it admitted.
    GrantsRevoke {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id_token: Option<WireSecret>,
        id: String,
        reason: String,
    },
    /// Audit events, newest first (`humans::AuditPage`).
    AuditList {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id_token: Option<WireSecret>,
        limit: usize,
        /// Only events about this grant, held command or session.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        target: Option<String>,
    },
}

/// A secret inside a control request: a JSON string on the wire, a
/// [`Secret`] (redacted `Debug`, zeroed on drop) everywhere else, so a
/// logged or printed [`Request`] never shows it.
#[derive(Debug)]
pub struct WireSecret(pub Secret);

impl Serialize for WireSecret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.expose_str() {
            Some(text) => s.serialize_str(text),
            None => Err(serde::ser::Error::custom("the secret is not UTF-8 text")),
        }
    }
}

impl<'de> Deserialize<'de> for WireSecret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The String's buffer becomes the Secret's: no copy is left behind.
        String::deserialize(d).map(|text| WireSecret(Secret::new(text.into_bytes())))
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
    /// The request was not read because the socket is at its connection
    /// cap: nothing happened, and the same request may be sent again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub busy: bool,
}

impl Response {
    fn ok(data: serde_json::Value) -> Self {
        Self {
            ok: true,
            error: None,
            data,
            busy: false,
        }
    }
    fn err(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(msg.into()),
            data: serde_json::Value::Null,
            busy: false,
        }
    }
    fn busy(msg: impl Into<String>) -> Self {
        Self {
            busy: true,
            ..Self::err(msg)
        }
    }
    /// One JSON line.
    fn line(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// `status` reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct StatusReport {
    pub pid: u32,
    pub config: PathBuf,
    pub listen: Vec<String>,
    pub bpffs: PathBuf,
    pub programs: Vec<String>,
    pub daemon_program: String,
    pub daemon_cgroup: Option<PathBuf>,
    /// Whether the BPF LSM programs are in force on this kernel.
    pub lsm_active: bool,
    pub agents: Vec<AgentStatus>,
    pub sessions: SessionCounts,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AgentStatus {
    pub name: String,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub pinned_links: usize,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SessionCounts {
    pub recorded: usize,
    pub allowed: u64,
    pub denied: u64,
    pub active: u64,
}

/// `session_events` reply. Byte payloads are base64 strings.
#[derive(Debug, Serialize, Deserialize)]
pub struct EventsPage {
    pub events: Vec<recording::Event>,
    /// More events follow: ask again with `after` = the last event's `seq`.
    pub more: bool,
}

/// `join` reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct Joined {
    pub cgroup: PathBuf,
    /// Whether the kernel enforces the unix-socket allow list (else the
    /// caller must refuse unix sockets itself).
    pub unix_sockets: bool,
}

/// `vault_set` reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct VaultStored {
    pub name: String,
    pub kind: SecretKind,
}

/// `vault_rm` reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct VaultRemoved {
    pub name: String,
}

/// `pin` reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct Pinned {
    pub agent: String,
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub links: usize,
}

fn reply<T: Serialize>(value: &T) -> Response {
    match serde_json::to_value(value) {
        Ok(v) => Response::ok(v),
        Err(e) => Response::err(format!("cannot encode reply: {e}")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the control socket (replacing a stale one), mode 0666: every call is
/// authorized by the caller's kernel credentials.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    use std::os::unix::fs::PermissionsExt as _;
    let err = |source| ControlError::Bind {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if path.exists() {
        std::fs::remove_file(path).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    Ok(listener)
}

pub async fn serve(gw: Arc<Gateway>, listener: UnixListener) {
    let oidc = oidc::verifier_for(&gw.config);
    let limiter = Arc::new(ConnLimiter::default());
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let cred = match stream.peer_cred() {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "control connection without peer credentials");
                continue;
            }
        };
        let slot = match limiter.clone().try_take(cred.uid()) {
            Ok(slot) => slot,
            Err(why) => {
                tracing::debug!(uid = cred.uid(), why, "control connection refused: busy");
                // The reply is small and the socket's buffer empty, so a
                // non-blocking write never stalls the accept loop.
                let _ = stream.try_write(&Response::busy(why).line());
                continue;
            }
        };
        let gw = gw.clone();
        let oidc = oidc.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(gw, oidc, stream, cred).await {
                tracing::debug!(error = %e, "control connection failed");
            }
            drop(slot);
        });
    }
}

/// Counts open control connections: at most [`MAX_CONNECTIONS`], of which
/// unprivileged callers may hold `MAX_CONNECTIONS - RESERVED_FOR_ROOT`, at
/// most [`MAX_PER_USER`] per uid.
#[derive(Debug, Default)]
struct ConnLimiter {
    state: Mutex<ConnCounts>,
}

#[derive(Debug, Default)]
struct ConnCounts {
    total: usize,
    /// Open connections of unprivileged callers, by uid.
    per_uid: HashMap<u32, usize>,
}

/// One open control connection; frees its place when dropped.
struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    uid: u32,
}

impl ConnLimiter {
    fn try_take(self: Arc<Self>, uid: u32) -> Result<ConnSlot, String> {
        {
            let mut c = self
                .state
                .lock()
                .map_err(|_| "control connection limits unavailable".to_owned())?;
            if c.total >= MAX_CONNECTIONS {
                return Err(format!(
                    "control socket busy: {MAX_CONNECTIONS} connections already open; try again"
                ));
            }
            if uid != 0 {
                let mine = c.per_uid.get(&uid).copied().unwrap_or(0);
                if mine >= MAX_PER_USER {
                    return Err(format!(
                        "control socket busy: uid {uid} already has {MAX_PER_USER} connections open; try again"
                    ));
                }
                let unprivileged: usize = c.per_uid.values().sum();
                if unprivileged >= MAX_CONNECTIONS - RESERVED_FOR_ROOT {
                    return Err(format!(
                        "control socket busy: {} connections of unprivileged users already open; try again",
                        MAX_CONNECTIONS - RESERVED_FOR_ROOT
                    ));
                }
                c.per_uid.insert(uid, mine + 1);
            }
            c.total += 1;
        }
        Ok(ConnSlot { limiter: self, uid })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let Ok(mut c) = self.limiter.state.lock() else {
            return;
        };
        c.total = c.total.saturating_sub(1);
        if self.uid != 0 {
            if let Some(n) = c.per_uid.get_mut(&self.uid) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.per_uid.remove(&self.uid);
                }
            }
        }
    }
}

async fn handle(
    gw: Arc<Gateway>,
    oidc: Option<Arc<oidc::Verifier>>,
    stream: UnixStream,
    cred: tokio::net::unix::UCred,
) -> std::io::Result<()> {
    let pid = cred.pid().and_then(|p| u32::try_from(p).ok());
    // Pin down *which process* connected now, before the pid can be reused.
    let process = PeerProcess::of(&stream, pid);
    let (r, mut w) = stream.into_split();
    // The request may carry a secret (`vault_set`): the line is zeroed when
    // dropped, and sized so that reading never reallocates (and so copies) it.
    let mut line = zeroize::Zeroizing::new(String::with_capacity(MAX_REQUEST));
    let mut reader = BufReader::new(r.take(MAX_REQUEST as u64));
    let response = match tokio::time::timeout(REQUEST_DEADLINE, reader.read_line(&mut line)).await {
        Err(_elapsed) => Response::err(format!(
            "no complete control request within {} s",
            REQUEST_DEADLINE.as_secs()
        )),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                let caller = Caller {
                    uid: cred.uid(),
                    pid,
                    process,
                };
                match outside_agents(&gw, &caller) {
                    Err(why) => {
                        tracing::warn!(uid = caller.uid, pid, %why, "control request from inside an agent refused");
                        gw.approvals.auth_failed(caller.uid, "control", &why);
                        Response::err(why)
                    }
                    Ok(()) => match req {
                        Request::WhoAmI { id_token } => {
                            humans::whoami(&gw, oidc.as_deref(), &caller, id_token.as_ref()).await
                        }
                        req @ (Request::LoginHold { .. } | Request::Logout) => {
                            humans::login(&gw, oidc.as_deref(), &caller, req).await
                        }
                        Request::Join { agent, id_token } => {
                            humans::join(&gw, oidc.as_deref(), &caller, &agent, id_token.as_ref())
                                .await
                        }
                        req @ (Request::AskGrant { .. }
                        | Request::ApprovalsList { .. }
                        | Request::Approve { .. }
                        | Request::Deny { .. }
                        | Request::GrantsList { .. }
                        | Request::GrantsRevoke { .. }
                        | Request::AuditList { .. }) => {
                            humans::handle(&gw, oidc.as_deref(), &caller, req).await
                        }
                        Request::SshTrust { resource, replace } => match require_root(&caller) {
                            Ok(()) => ssh::ssh_trust(&gw, &resource, replace)
                                .await
                                .unwrap_or_else(|e| e),
                            Err(e) => e,
                        },
                        req => dispatch(&gw, &caller, req),
                    },
                }
            }
            Err(e) => Response::err(format!("malformed control request: {e}")),
        },
    };
    let out = response.line();
    match tokio::time::timeout(REPLY_DEADLINE, async {
        w.write_all(&out).await?;
        w.shutdown().await
    })
    .await
    {
        Ok(result) => result,
        Err(_elapsed) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the caller did not take the reply",
        )),
    }
}

#[derive(Debug)]
struct Caller {
    uid: u32,
    pid: Option<u32>,
    /// The connecting process itself, as far as the kernel lets us hold it.
    process: PeerProcess,
}

/// A handle on the process at the other end of the control connection,
/// taken right after accept, so that acting on its pid later cannot hit
/// another process that reused the number.
#[derive(Debug)]
enum PeerProcess {
    /// SO_PEERPIDFD (Linux >= 6.5): a pidfd for the process that connected.
    PidFd(OwnedFd),
    /// Older kernels: the process's start time (field 22 of
    /// /proc/PID/stat) right after accept; pid + start time name one process.
    StartTime(u64),
    /// Neither could be had: acting on the pid is refused.
    Unknown(String),
}

/// `getsockopt(SOL_SOCKET, SO_PEERPIDFD)`; not in older libc headers.
const SO_PEERPIDFD: libc::c_int = 77;

impl PeerProcess {
    fn of(stream: &impl std::os::fd::AsRawFd, pid: Option<u32>) -> Self {
        match peer_pidfd(stream.as_raw_fd()) {
            Ok(fd) => return Self::PidFd(fd),
            // Only a kernel without SO_PEERPIDFD falls back. Any other
            // error (the peer is already gone, ...) is final.
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {}
            Err(e) => return Self::Unknown(format!("no pidfd for the caller: {e}")),
        }
        let Some(pid) = pid.filter(|&p| p != 0) else {
            return Self::Unknown("the kernel did not report the caller's pid".into());
        };
        match start_time(pid) {
            Ok(t) => Self::StartTime(t),
            Err(e) => Self::Unknown(format!("cannot read the caller's start time: {e}")),
        }
    }

    /// Checks, as late as possible before acting on `pid`, that it still
    /// names the process that connected, and that this process's real uid
    /// is `uid`.
    fn verify(&self, pid: u32, uid: u32) -> Result<(), String> {
        let gone = || format!("the calling process (pid {pid}) is gone");
        let real_uid = real_uid(pid).map_err(|e| format!("{}: {e}", gone()))?;
        if real_uid != uid {
            return Err(format!(
                "pid {pid} now runs as uid {real_uid}, not the caller's uid {uid}"
            ));
        }
        match self {
            Self::PidFd(fd) => match pidfd_alive(fd) {
                Ok(true) => Ok(()),
                Ok(false) => Err(gone()),
                Err(e) => Err(format!("cannot check the calling process: {e}")),
            },
            Self::StartTime(then) => match start_time(pid) {
                Ok(now) if now == *then => Ok(()),
                Ok(_) => Err(format!(
                    "{}: pid {pid} now belongs to another process",
                    gone()
                )),
                Err(e) => Err(format!("{}: {e}", gone())),
            },
            Self::Unknown(why) => Err(format!("cannot identify the calling process: {why}")),
        }
    }
}

/// Refuses every control request from a process inside an agent's cgroup
/// (or a cgroup below one). The kernel already keeps agents off unix sockets
/// that are not on `daemon.unix_allow`, and the config refuses to list this
/// socket there; this holds even when an allowed name leads here anyway (a
/// symlink, a bind mount). An agent must never approve, grant, join another
/// agent or read the audit through Cordon itself. Fails closed: a caller
/// whose cgroup cannot be read is refused.
fn outside_agents(gw: &Gateway, caller: &Caller) -> Result<(), String> {
    let Some(pid) = caller.pid.filter(|&p| p != 0) else {
        return Err(
            "the kernel did not report the calling process, so it cannot be told apart from an agent"
                .into(),
        );
    };
    let cgroup = capture::cgroup::cgroup2_mount()
        .and_then(|mount| capture::cgroup::of_process(&mount, pid))
        .map_err(|e| {
            // Most often the caller has exited: say so.
            match caller.process.verify(pid, caller.uid) {
                Err(gone) => gone,
                Ok(()) => {
                    format!("cannot tell which cgroup the calling process (pid {pid}) is in: {e}")
                }
            }
        })?;
    if let Some(agent) = gw.identity.agent_containing(&cgroup) {
        return Err(format!(
            "refused: the calling process (pid {pid}) runs inside agent `{agent}`'s cgroup, \
             and agents may not use Cordon's control socket"
        ));
    }
    // The pid was read above: make sure it still names the caller.
    caller.process.verify(pid, caller.uid)
}

#[allow(unsafe_code)]
fn peer_pidfd(sock: std::os::fd::RawFd) -> std::io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` and `len` are valid, writable and correctly sized for an
    // int-valued socket option; `sock` is an open socket borrowed from its owner.
    let rc = unsafe {
        libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            std::ptr::addr_of_mut!(fd).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if fd < 0 {
        return Err(std::io::Error::other("the kernel returned no pidfd"));
    }
    // SAFETY: getsockopt succeeded, so `fd` is a new pidfd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// pidfd_send_signal(fd, 0): whether the process is still alive (not
/// exited: a pidfd never follows a reused pid).
#[allow(unsafe_code)]
fn pidfd_alive(fd: &OwnedFd) -> std::io::Result<bool> {
    // SAFETY: signal 0 with a null siginfo and no flags only checks that the
    // process exists; `fd` is an open pidfd we own.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ESRCH) => Ok(false),
        // Exists, but we may not signal it (only when not root).
        Some(libc::EPERM) => Ok(true),
        _ => Err(e),
    }
}

/// Field 22 of /proc/PID/stat: start time in clock ticks since boot.
fn start_time(pid: u32) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_start_time(&stat).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("unexpected /proc/{pid}/stat"),
        )
    })
}

fn parse_start_time(stat: &str) -> Option<u64> {
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so
    // count fields after the last ')'. Field 3 (state) is the first there.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_ascii_whitespace().nth(22 - 3)?.parse().ok()
}

/// The real uid from /proc/PID/status (`Uid: real effective saved fs`).
fn real_uid(pid: u32) -> std::io::Result<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_ascii_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("no Uid line in /proc/{pid}/status"),
            )
        })
}

fn require_root(caller: &Caller) -> Result<(), Response> {
    if caller.uid == 0 {
        Ok(())
    } else {
        Err(Response::err(format!(
            "permission denied: uid {} is not an administrator (root)",
            caller.uid
        )))
    }
}

fn dispatch(gw: &Arc<Gateway>, caller: &Caller, req: Request) -> Response {
    let result = match req {
        Request::Status => require_root(caller).map(|()| status(gw)),
        Request::SessionsList { agent, limit } => require_root(caller).and_then(|()| {
            gw.audit
                .list(agent.as_deref(), limit.clamp(1, 100_000))
                .map(|v| reply(&v))
                .map_err(|e| Response::err(e.to_string()))
        }),
        Request::SessionStatements { id } => require_root(caller).and_then(|()| {
            let id: SessionId = id.parse().map_err(Response::err)?;
            gw.postgres
                .statements
                .of_session(id)
                .map(|v| reply(&v))
                .map_err(|e| Response::err(e.to_string()))
        }),
        Request::SessionEvents {
            id,
            after,
            without_data,
        } => require_root(caller).and_then(|()| {
            let id: SessionId = id.parse().map_err(Response::err)?;
            recording::page(&gw.audit, id, after, !without_data)
                .map(|(events, more)| reply(&EventsPage { events, more }))
                .map_err(|e| Response::err(e.to_string()))
        }),
        Request::SessionsShow { id } => require_root(caller).and_then(|()| {
            let id: SessionId = id.parse().map_err(Response::err)?;
            match gw.audit.get(id) {
                Ok(Some(s)) => Ok(reply(&s)),
                Ok(None) => Err(Response::err(format!("no session {id}"))),
                Err(e) => Err(Response::err(e.to_string())),
            }
        }),
        Request::Join { agent, .. } => join(gw, caller, &agent),
        Request::Pin { agent, cgroup } => {
            require_root(caller).and_then(|()| pin(gw, &agent, &cgroup))
        }
        Request::VaultSet { name, kind, secret } => {
            require_root(caller).and_then(|()| vault_set(gw, caller, name, kind, &secret.0))
        }
        Request::VaultList => require_root(caller).and_then(|()| {
            gw.vault
                .list()
                .map(|v| reply(&v))
                .map_err(|e| Response::err(e.to_string()))
        }),
        Request::VaultRm { name } => require_root(caller).and_then(|()| vault_rm(gw, caller, name)),
        // Needs to await the identity provider: answered in `handle`.
        Request::WhoAmI { .. } => Err(Response::err("who_am_i is not dispatched here")),
        Request::SshConfig { agent } => ssh::ssh_config(gw, &agent),
        Request::SshTrust { .. } => Err(Response::err("ssh_trust is not dispatched here")),
        // Need to await the identity provider: answered in `humans`.
        Request::AskGrant { .. }
        | Request::ApprovalsList { .. }
        | Request::Approve { .. }
        | Request::Deny { .. }
        | Request::GrantsList { .. }
        | Request::GrantsRevoke { .. }
        | Request::AuditList { .. }
        | Request::LoginHold { .. }
        | Request::Logout => Err(Response::err("not dispatched here")),
    };
    result.unwrap_or_else(|e| e)
}

/// `who_am_i` reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct WhoAmIReply {
    /// The caller's uid, from SO_PEERCRED.
    pub uid: u32,
    pub actor: oidc::Actor,
    pub is_admin: bool,
    pub can_approve: bool,
}

fn vault_set(
    gw: &Gateway,
    caller: &Caller,
    name: String,
    kind: SecretKind,
    secret: &Secret,
) -> Result<Response, Response> {
    gw.vault
        .set(&name, kind, secret)
        .map_err(|e| Response::err(e.to_string()))?;
    tracing::info!(entry = %name, %kind, uid = caller.uid, "vault entry stored");
    Ok(reply(&VaultStored { name, kind }))
}

fn vault_rm(gw: &Gateway, caller: &Caller, name: String) -> Result<Response, Response> {
    let removed = gw
        .vault
        .remove(&name)
        .map_err(|e| Response::err(e.to_string()))?;
    if !removed {
        return Err(Response::err(format!("no vault entry `{name}`")));
    }
    tracing::info!(entry = %name, uid = caller.uid, "vault entry removed");
    Ok(reply(&VaultRemoved { name }))
}

fn status(gw: &Gateway) -> Response {
    let layout = capture::PinLayout {
        root: gw.config.daemon.bpffs.clone(),
    };
    let pinned = capture::pinned_links(&layout);
    let agents = gw
        .identity
        .list()
        .into_iter()
        .map(|(name, cgroup, cgroup_id)| AgentStatus {
            pinned_links: pinned.get(name.as_str()).copied().unwrap_or(0),
            name: name.to_string(),
            cgroup,
            cgroup_id,
        })
        .collect();
    let listen = gw.config.daemon.listen;
    let (daemon_cgroup, lsm_active, programs) = gw
        .capture
        .read()
        .map(|c| {
            (
                c.daemon_cgroup().map(Path::to_path_buf),
                c.lsm_active(),
                c.active_programs(),
            )
        })
        .unwrap_or_default();
    reply(&StatusReport {
        pid: std::process::id(),
        config: gw.config.file.clone(),
        listen: vec![listen.to_string(), format!("[::1]:{}", listen.port())],
        bpffs: gw.config.daemon.bpffs.clone(),
        programs,
        daemon_program: capture::DAEMON_PROGRAM.to_owned(),
        daemon_cgroup,
        lsm_active,
        agents,
        sessions: SessionCounts {
            recorded: gw.audit.count(),
            allowed: gw.stats.allowed.load(Ordering::Relaxed),
            denied: gw.stats.denied.load(Ordering::Relaxed),
            active: gw.stats.active.load(Ordering::Relaxed),
        },
    })
}

fn join(gw: &Gateway, caller: &Caller, agent: &str) -> Result<Response, Response> {
    let Some(spec) = gw.config.agent(agent) else {
        return Err(Response::err(format!(
            "unknown agent `{agent}`: it is not declared in {}",
            gw.config.file.display()
        )));
    };
    if caller.uid != 0 && !spec.users.contains(&caller.uid) {
        return Err(Response::err(format!(
            "permission denied: uid {} may not start processes as agent `{agent}` (add it to the agent's `users`)",
            caller.uid
        )));
    }
    // pid 0: the caller is in a pid namespace we cannot see into, and
    // writing "0" to cgroup.procs would move the daemon itself.
    let pid = caller
        .pid
        .filter(|&p| p != 0)
        .ok_or_else(|| Response::err("the kernel did not report the caller's pid"))?;
    let verify = || {
        caller
            .process
            .verify(pid, caller.uid)
            .map_err(|e| Response::err(format!("refused to join agent `{agent}`: {e}")))
    };
    verify()?;
    let cgroup = gw
        .identity
        .cgroup_of(agent)
        .ok_or_else(|| Response::err(format!("agent `{agent}` has no pinned cgroup")))?;
    // A delegation made after the pin (a chown of an ancestor) would let
    // the agent leave: checked at every join.
    let mount = capture::cgroup::cgroup2_mount().map_err(|e| Response::err(e.to_string()))?;
    capture::cgroup::check_ancestors_locked(&mount, &cgroup)
        .map_err(|e| Response::err(format!("refused to join agent `{agent}`: {e}")))?;
    // The unix allow list is by path: a path this caller could re-point
    // (a writable directory on the way) would let its agent reach any socket.
    if !gw.config.daemon.unix_allow.is_empty() {
        // The paths are checked in the daemon's mount namespace: a caller in
        // another (a unit's PrivateTmp, a container) may see other files
        // under the same names.
        let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/mnt")).ok();
        if ns("self").is_none() || ns("self") != ns(&pid.to_string()) {
            return Err(Response::err(format!(
                "refused to join agent `{agent}`: the caller runs in another mount namespace, where \
                 the daemon cannot check the paths of daemon.unix_allow"
            )));
        }
        let writer = capture::unixpath::Writer::of_process(pid).map_err(|e| {
            Response::err(format!(
                "refused to join agent `{agent}`: reading the caller's ids: {e}"
            ))
        })?;
        for path in gw.config.daemon.unix_allow.iter().filter_map(|n| n.path()) {
            if let Some(why) = capture::unixpath::replaceable(path, &writer) {
                return Err(Response::err(format!(
                    "refused to join agent `{agent}`: daemon.unix_allow entry {}: {why}; \
                     allow only sockets in directories the agent cannot write",
                    path.display()
                )));
            }
        }
    }
    // (A caller inside an agent never gets here: `outside_agents`.)
    // Last check before acting on the pid number: it must still be the
    // process that connected (not a reuse of its pid), running as the caller.
    verify()?;
    capture::cgroup::add_process(&cgroup, pid).map_err(|e| Response::err(e.to_string()))?;
    tracing::info!(agent, pid, uid = caller.uid, "process joined agent cgroup");
    // Unix sockets are created only where the kernel enforces a non-empty
    // allow list; otherwise the seccomp filter refuses them outright.
    let unix_sockets = !gw.config.daemon.unix_allow.is_empty()
        && gw
            .capture
            .read()
            .map(|c| c.unix_enforced())
            .unwrap_or(false);
    Ok(reply(&Joined {
        cgroup,
        unix_sockets,
    }))
}

fn pin(gw: &Gateway, agent: &str, cgroup: &Path) -> Result<Response, Response> {
    let Some((index, spec)) = gw
        .config
        .agents
        .iter()
        .enumerate()
        .find(|(_, a)| a.name.as_str() == agent)
    else {
        return Err(Response::err(format!(
            "unknown agent `{agent}`: declare it in {} first",
            gw.config.file.display()
        )));
    };
    let mount = capture::cgroup::cgroup2_mount().map_err(|e| Response::err(e.to_string()))?;
    capture::cgroup::check_inside(&mount, cgroup).map_err(|e| Response::err(e.to_string()))?;
    capture::cgroup::check_ancestors_locked(&mount, cgroup)
        .map_err(|e| Response::err(e.to_string()))?;
    let attached = {
        let mut cap = gw
            .capture
            .write()
            .map_err(|_| Response::err("capture state lock poisoned"))?;
        let attached = cap
            .attach_agent(agent, index as u32, cgroup)
            .map_err(|e| Response::err(e.to_string()))?;
        if let Some(old) =
            gw.identity
                .register(attached.id, spec.name.clone(), attached.path.clone())
        {
            cap.forget_cgroup(old);
        }
        attached
    };
    crate::pins::remember(&gw.config.daemon.state_dir, agent, cgroup)
        .map_err(|e| Response::err(format!("pinned, but not remembered across restarts: {e}")))?;
    Ok(reply(&Pinned {
        agent: agent.to_owned(),
        cgroup: attached.path,
        cgroup_id: attached.id,
        links: attached.links,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_even_with_parentheses_in_comm() {
        let stat = "4242 (a) b) (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200 18446744073709551615";
        assert_eq!(parse_start_time(stat), Some(987_654));
        assert_eq!(parse_start_time("4242 (x) S 1"), None);
        let own = start_time(std::process::id());
        assert!(matches!(own, Ok(t) if t > 0), "{own:?}");
    }

    #[test]
    fn connection_caps_keep_room_for_root_and_other_users() {
        let limiter = Arc::new(ConnLimiter::default());
        let mut held = Vec::new();
        for _ in 0..MAX_PER_USER {
            held.push(limiter.clone().try_take(1000).map_err(|e| e.to_string()));
        }
        assert!(held.iter().all(Result::is_ok));
        assert!(limiter.clone().try_take(1000).is_err(), "per-user cap");
        // Other unprivileged users fill what is not reserved for root.
        let unprivileged = MAX_CONNECTIONS - RESERVED_FOR_ROOT;
        let mut uid = 2000;
        while held.len() < unprivileged {
            if let Ok(slot) = limiter.clone().try_take(uid) {
                held.push(Ok(slot));
            } else {
                uid += 1;
            }
        }
        assert!(
            limiter.clone().try_take(uid + 1).is_err(),
            "unprivileged cap"
        );
        let mut root = Vec::new();
        for _ in 0..RESERVED_FOR_ROOT {
            root.push(limiter.clone().try_take(0));
        }
        assert!(root.iter().all(Result::is_ok), "root's reserve");
        assert!(limiter.clone().try_take(0).is_err(), "global cap");
        // Closing a connection frees its place.
        root.pop();
        assert!(limiter.clone().try_take(0).is_ok());
        drop(held);
        assert!(limiter.clone().try_take(1000).is_ok());
        let counts = limiter.state.lock().map(|c| c.per_uid.len()).unwrap_or(99);
        assert_eq!(counts, 0, "per-uid entries are removed when they reach 0");
    }

    #[test]
    fn vault_set_requests_carry_the_secret_but_never_show_it() {
        let req = Request::VaultSet {
            name: "db1".into(),
            kind: SecretKind::SshKey,
            secret: WireSecret(Secret::new(b"hunter2\n\"x\"".to_vec())),
        };
        let debug = format!("{req:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("[redacted]"), "{debug}");
        let line = serde_json::to_string(&req).unwrap();
        assert!(line.contains(r#""op":"vault_set""#), "{line}");
        assert!(line.contains(r#""kind":"ssh-key""#), "{line}");
        let Ok(Request::VaultSet { name, kind, secret }) = serde_json::from_str(&line) else {
            panic!("{line} does not parse back");
        };
        assert_eq!((name.as_str(), kind), ("db1", SecretKind::SshKey));
        assert_eq!(secret.0.expose(), b"hunter2\n\"x\"");
        // A secret that is not text cannot be sent (the CLI refuses it first).
        let binary = Request::VaultSet {
            name: "b".into(),
            kind: SecretKind::Token,
            secret: WireSecret(Secret::new(vec![0xff, 0xfe])),
        };
        assert!(serde_json::to_string(&binary).is_err());
        let list: Result<Request, _> = serde_json::from_str(r#"{"op":"vault_list"}"#);
        assert!(matches!(list, Ok(Request::VaultList)));
        let rm: Result<Request, _> = serde_json::from_str(r#"{"op":"vault_rm","name":"x"}"#);
        assert!(matches!(rm, Ok(Request::VaultRm { name }) if name == "x"));
    }

    #[test]
    fn busy_is_only_on_the_wire_when_set() {
        let plain = String::from_utf8_lossy(&Response::err("x").line()).into_owned();
        assert!(!plain.contains("busy"), "{plain}");
        let busy: Result<Response, _> = serde_json::from_slice(&Response::busy("x").line());
        assert!(matches!(busy, Ok(r) if r.busy && !r.ok));
        let old: Result<Response, _> = serde_json::from_str(r#"{"ok":false,"error":"e"}"#);
        assert!(matches!(old, Ok(r) if !r.busy));
    }

    fn own_uid() -> u32 {
        real_uid(std::process::id()).unwrap_or(u32::MAX)
    }

    #[test]
    fn peer_process_of_a_live_peer_verifies() {
        let Ok((a, _b)) = std::os::unix::net::UnixStream::pair() else {
            unreachable!("socketpair")
        };
        let me = std::process::id();
        let p = PeerProcess::of(&a, Some(me));
        assert!(!matches!(p, PeerProcess::Unknown(_)), "{p:?}");
        assert_eq!(p.verify(me, own_uid()), Ok(()));
        let wrong = own_uid().wrapping_add(1);
        assert!(p
            .verify(me, wrong)
            .is_err_and(|e| e.contains("not the caller's uid")));
    }

    #[allow(unsafe_code)]
    fn pidfd_open(pid: u32) -> OwnedFd {
        // SAFETY: pidfd_open takes a pid and flags; it returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        assert!(fd >= 0, "pidfd_open: {}", std::io::Error::last_os_error());
        // SAFETY: a new pidfd owned by nobody else.
        unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }
    }

    #[test]
    fn a_process_that_exited_no_longer_verifies() {
        let Ok(mut child) = std::process::Command::new("sleep").arg("30").spawn() else {
            unreachable!("spawn sleep")
        };
        let pid = child.id();
        let by_fd = PeerProcess::PidFd(pidfd_open(pid));
        let by_time = start_time(pid).map(PeerProcess::StartTime);
        let Ok(by_time) = by_time else {
            unreachable!("start time of {pid}")
        };
        assert_eq!(by_fd.verify(pid, own_uid()), Ok(()));
        assert_eq!(by_time.verify(pid, own_uid()), Ok(()));
        let _ = child.kill();
        let _ = child.wait();
        assert!(by_fd.verify(pid, own_uid()).is_err());
        assert!(by_time.verify(pid, own_uid()).is_err());
        // A different start time at the same pid is another process.
        let me = std::process::id();
        let other = PeerProcess::StartTime(start_time(me).unwrap_or(0) + 1);
        assert!(other
            .verify(me, own_uid())
            .is_err_and(|e| e.contains("another process")));
        assert!(PeerProcess::Unknown("x".into())
            .verify(me, own_uid())
            .is_err());
    }
}
