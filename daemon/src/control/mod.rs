//! Control API: a unix socket the CLI talks to, one JSON request and one
//! JSON response per connection. Callers are identified by SO_PEERCRED, not
//! by anything they send: root administers; `join` (used by `cordon run`) is
//! open to the users an agent lists.

pub mod client;

use std::{
    path::{Path, PathBuf},
    sync::{atomic::Ordering, Arc},
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{audit::SessionId, capture, proxy::Gateway};

/// Largest request accepted, in bytes.
const MAX_REQUEST: usize = 64 * 1024;

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
    /// Move the calling process into an agent's cgroup.
    Join {
        agent: String,
    },
    /// Pin an existing cgroup as an agent's.
    Pin {
        agent: String,
        cgroup: PathBuf,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    fn ok(data: serde_json::Value) -> Self {
        Self {
            ok: true,
            error: None,
            data,
        }
    }
    fn err(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(msg.into()),
            data: serde_json::Value::Null,
        }
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

/// `join` reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct Joined {
    pub cgroup: PathBuf,
    /// Whether the kernel enforces the unix-socket allow list (else the
    /// caller must refuse unix sockets itself).
    pub unix_sockets: bool,
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
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            continue;
        };
        let gw = gw.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(gw, stream).await {
                tracing::debug!(error = %e, "control connection failed");
            }
        });
    }
}

async fn handle(gw: Arc<Gateway>, stream: UnixStream) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_REQUEST as u64));
    reader.read_line(&mut line).await?;
    let response = match serde_json::from_str::<Request>(&line) {
        Ok(req) => {
            let caller = Caller {
                uid: cred.uid(),
                pid: cred.pid().and_then(|p| u32::try_from(p).ok()),
            };
            dispatch(&gw, caller, req)
        }
        Err(e) => Response::err(format!("malformed control request: {e}")),
    };
    let mut out = serde_json::to_vec(&response).unwrap_or_default();
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

#[derive(Debug, Clone, Copy)]
struct Caller {
    uid: u32,
    pid: Option<u32>,
}

fn require_root(caller: Caller) -> Result<(), Response> {
    if caller.uid == 0 {
        Ok(())
    } else {
        Err(Response::err(format!(
            "permission denied: uid {} is not an administrator (root)",
            caller.uid
        )))
    }
}

fn dispatch(gw: &Arc<Gateway>, caller: Caller, req: Request) -> Response {
    let result = match req {
        Request::Status => require_root(caller).map(|()| status(gw)),
        Request::SessionsList { agent, limit } => require_root(caller).and_then(|()| {
            gw.audit
                .list(agent.as_deref(), limit.clamp(1, 100_000))
                .map(|v| reply(&v))
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
        Request::Join { agent } => join(gw, caller, &agent),
        Request::Pin { agent, cgroup } => {
            require_root(caller).and_then(|()| pin(gw, &agent, &cgroup))
        }
    };
    result.unwrap_or_else(|e| e)
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

fn join(gw: &Gateway, caller: Caller, agent: &str) -> Result<Response, Response> {
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
    let pid = caller
        .pid
        .ok_or_else(|| Response::err("the kernel did not report the caller's pid"))?;
    let cgroup = gw
        .identity
        .cgroup_of(agent)
        .ok_or_else(|| Response::err(format!("agent `{agent}` has no pinned cgroup")))?;
    let mount = capture::cgroup::cgroup2_mount().map_err(|e| Response::err(e.to_string()))?;
    let current =
        capture::cgroup::of_process(&mount, pid).map_err(|e| Response::err(e.to_string()))?;
    if let Some(already) = gw.identity.agent_containing(&current) {
        return Err(Response::err(format!(
            "refused: the caller already runs as agent `{already}`; agents cannot change identity"
        )));
    }
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
    Ok(Response::ok(
        serde_json::json!({ "cgroup": cgroup, "unix_sockets": unix_sockets }),
    ))
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
