//! Configuration: TOML file -> validated [`Config`]. Sits before everything
//! else in the data flow; every later stage takes these validated types.
//! Unknown keys are rejected and every error names the file, the key and what
//! was expected.

pub mod approval;
pub mod oidc;

use std::{
    collections::HashSet,
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use serde::Deserialize;
use time::{format_description::well_known::Rfc3339, OffsetDateTime};

/// Default location when neither `--config` nor `CORDON_CONFIG` is given.
pub const DEFAULT_CONFIG: &str = "/etc/cordon/cordon.toml";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {source}")]
    Parse {
        file: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{file}: key `{key}`: {problem}")]
    Invalid {
        file: PathBuf,
        key: String,
        problem: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    daemon: RawDaemon,
    #[serde(default)]
    agent: Vec<RawAgent>,
    #[serde(default)]
    resource: Vec<RawResource>,
    #[serde(default)]
    grant: Vec<RawGrant>,
    identity: Option<oidc::RawIdentity>,
    approvals: Option<approval::RawApprovals>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    state_dir: PathBuf,
    control_socket: PathBuf,
    #[serde(default = "default_listen")]
    listen: String,
    cgroup_root: Option<PathBuf>,
    #[serde(default = "default_bpffs")]
    bpffs: PathBuf,
    #[serde(default)]
    dns_resolvers: Vec<String>,
    #[serde(default)]
    unix_allow: Vec<String>,
    /// Seconds to wait for the upstream TCP handshake.
    #[serde(default = "default_connect_timeout")]
    upstream_connect_timeout_secs: u64,
    /// Concurrent proxied sessions, all agents together.
    #[serde(default = "default_max_sessions")]
    max_sessions: u64,
    /// Concurrent proxied sessions of any one agent.
    #[serde(default = "default_max_sessions_per_agent")]
    max_sessions_per_agent: u64,
    /// Seconds a session may stay half-closed (one direction at EOF, the
    /// other still open) before cordon ends it.
    #[serde(default = "default_half_close_timeout")]
    half_close_timeout_secs: u64,
    /// Where `policy = "NAME"` of a resource is looked up (NAME.toml).
    #[serde(default = "default_policy_dir")]
    policy_dir: PathBuf,
}

fn default_listen() -> String {
    "127.0.0.1:15001".to_owned()
}
fn default_bpffs() -> PathBuf {
    PathBuf::from("/sys/fs/bpf/cordon")
}
fn default_policy_dir() -> PathBuf {
    PathBuf::from("/etc/cordon/policies")
}
fn default_connect_timeout() -> u64 {
    10
}
fn default_max_sessions() -> u64 {
    4096
}
fn default_max_sessions_per_agent() -> u64 {
    1024
}
fn default_half_close_timeout() -> u64 {
    60
}

/// Upper bound for `max_sessions` and `max_sessions_per_agent`: far beyond
/// what the file-descriptor budget (six per session) of any host allows.
const MAX_SESSIONS_CEILING: u64 = 1_000_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: String,
    cgroup: Option<PathBuf>,
    #[serde(default)]
    users: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawResource {
    name: String,
    protocol: String,
    address: String,
    credential: Option<String>,
    policy: Option<String>,
    /// postgres: the role Cordon logs in as upstream (default: the user the
    /// agent asks for).
    upstream_user: Option<String>,
    /// postgres: answer SSLRequest with TLS, presenting a certificate from
    /// Cordon's local CA (`<state_dir>/ca.crt`). Default: answer 'N'.
    #[serde(default)]
    agent_tls: bool,
    /// postgres: `disable` (default) or `verify-full`.
    upstream_tls: Option<String>,
    /// CA certificate(s) (PEM) the upstream's certificate must chain to.
    upstream_ca: Option<PathBuf>,
    /// Name the upstream certificate must carry (default: the address's IP).
    upstream_server_name: Option<String>,
    /// ssh: the upstream's host keys (`ssh-ed25519 AAAA...`, as in known_hosts
    /// without the host field). Without them, `cordon ssh-trust NAME` must
    /// record the key first.
    #[serde(default)]
    host_keys: Vec<String>,
    /// Groups that review grant requests and held commands for this
    /// resource (see `approval`).
    approvers: Option<Vec<String>>,
    /// Distinct approvals a grant request needs.
    approvals_required: Option<u64>,
    /// Longest just-in-time grant, e.g. "1h".
    max_ttl: Option<String>,
    /// Policy per grant action: `{ read = "pg-readonly", admin = "pg-dba" }`.
    actions: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGrant {
    agent: String,
    resource: String,
    expires: String,
    /// postgres: the only role (user) the agent may ask for.
    role: Option<String>,
    /// postgres: the only database the agent may ask for.
    database: Option<String>,
    /// ssh: the only SSH user name the agent may log in as.
    login: Option<String>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub daemon: Daemon,
    pub agents: Vec<Agent>,
    pub resources: Vec<Resource>,
    pub grants: Vec<Grant>,
    /// `[identity.oidc]`, if humans log in with OpenID Connect.
    pub oidc: Option<oidc::Oidc>,
    /// `[approvals]`: held commands, grant requests, notifications.
    pub approvals: approval::Approvals,
}

#[derive(Debug, Clone)]
pub struct Daemon {
    pub state_dir: PathBuf,
    pub control_socket: PathBuf,
    /// The proxy's IPv4 listener; the same port is also bound on `[::1]`.
    pub listen: SocketAddr,
    pub cgroup_root: Option<PathBuf>,
    pub bpffs: PathBuf,
    pub dns_resolvers: Vec<SocketAddr>,
    pub unix_allow: Vec<UnixName>,
    pub upstream_connect_timeout: std::time::Duration,
    /// Concurrent sessions, all agents together (>= 1).
    pub max_sessions: usize,
    /// Concurrent sessions of one agent (>= 1).
    pub max_sessions_per_agent: usize,
    /// How long a session may stay half-closed before cordon ends it.
    pub half_close_timeout: std::time::Duration,
    pub policy_dir: PathBuf,
}

/// An agent name: also a cgroup directory and a bpffs directory name (bpffs
/// refuses dots), so restricted to `[A-Za-z0-9_-]`, not starting with `_`
/// (reserved for the daemon's own pins).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentName(String);

impl AgentName {
    pub fn parse(name: &str) -> Result<Self, String> {
        let ok = !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('_')
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(format!(
                "`{name}` is not a valid name: use 1-64 of [A-Za-z0-9_-], not starting with '_'"
            ))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone)]
pub struct Agent {
    pub name: AgentName,
    /// Pin this existing cgroup instead of creating `<cgroup_root>/<name>`.
    pub cgroup: Option<PathBuf>,
    /// Uids allowed to start processes as this agent (`cordon run`); root always may.
    pub users: Vec<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Postgres,
    Ssh,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Postgres => "postgres",
            Protocol::Ssh => "ssh",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Resource {
    pub name: String,
    pub protocol: Protocol,
    pub address: SocketAddr,
    /// Set for `protocol = "postgres"`.
    pub postgres: Option<PostgresResource>,
    /// Set for `protocol = "ssh"`.
    pub ssh: Option<SshResource>,
    /// Who reviews just-in-time grants and held commands, and what grants may hold.
    pub approval: approval::ResourceApproval,
}

/// What the ssh handler needs to know about one host.
#[derive(Debug, Clone)]
pub struct SshResource {
    /// Vault entry holding the upstream private key (OpenSSH format) or password.
    pub credential: String,
    /// The login Cordon uses upstream; None = the user the agent asked for.
    pub upstream_user: Option<String>,
    pub policy: std::sync::Arc<crate::policy::ssh::SshPolicy>,
    /// Pinned upstream host keys, `<algorithm> <base64>`.
    pub host_keys: Vec<String>,
}

/// What the postgres handler needs to know about one database.
#[derive(Debug, Clone)]
pub struct PostgresResource {
    /// Vault entry holding the upstream role's password.
    pub credential: String,
    /// The role Cordon logs in as; None = the user the agent asked for.
    pub upstream_user: Option<String>,
    pub policy: std::sync::Arc<crate::policy::Policy>,
    pub agent_tls: bool,
    pub upstream_tls: Option<UpstreamTls>,
}

/// TLS to the upstream, verified against `ca` for `server_name`.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub ca: PathBuf,
    pub server_name: String,
}

#[derive(Debug, Clone)]
pub struct Grant {
    pub agent: AgentName,
    pub resource: String,
    pub expires: OffsetDateTime,
    /// postgres: the only role the agent may ask for.
    pub role: Option<String>,
    /// postgres: the only database the agent may ask for.
    pub database: Option<String>,
    /// ssh: the only SSH user name the agent may log in as.
    pub login: Option<String>,
}

/// A unix socket name agents may connect to: a path, or `@name` for the
/// abstract namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixName(String);

impl UnixName {
    fn parse(s: &str) -> Result<Self, String> {
        if s.len() > 107 {
            return Err(format!("`{s}` is longer than 107 bytes"));
        }
        if s.starts_with('/') || (s.starts_with('@') && s.len() > 1) {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!(
                "`{s}` must be an absolute path or `@name` (abstract namespace)"
            ))
        }
    }
    /// The filesystem path, for names that are not abstract.
    pub fn path(&self) -> Option<&Path> {
        (!self.0.starts_with('@')).then(|| Path::new(&self.0))
    }

    /// The `sun_path` bytes as the kernel programs compare them.
    pub fn sun_path(&self) -> Vec<u8> {
        match self.0.strip_prefix('@') {
            Some(abstract_name) => {
                let mut v = vec![0u8];
                v.extend_from_slice(abstract_name.as_bytes());
                v
            }
            None => self.0.as_bytes().to_vec(),
        }
    }
}

impl Config {
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Self::parse(file, &text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            file: file.to_owned(),
            source,
        })?;
        let invalid = |key: String, problem: String| ConfigError::Invalid {
            file: file.to_owned(),
            key,
            problem,
        };

        let d = raw.daemon;
        let listen: SocketAddr = d.listen.parse().map_err(|_| {
            invalid(
                "daemon.listen".into(),
                format!(
                    "expected IPv4 address:port such as 127.0.0.1:15001, got `{}`",
                    d.listen
                ),
            )
        })?;
        if !listen.is_ipv4() || listen.port() == 0 {
            return Err(invalid(
                "daemon.listen".into(),
                format!("expected an IPv4 address with a non-zero port (the same port is also bound on [::1]), got `{listen}`"),
            ));
        }
        for (key, path) in [
            ("daemon.state_dir", &d.state_dir),
            ("daemon.control_socket", &d.control_socket),
            ("daemon.bpffs", &d.bpffs),
        ] {
            if !path.is_absolute() {
                return Err(invalid(
                    key.into(),
                    format!("expected an absolute path, got `{}`", path.display()),
                ));
            }
        }
        if let Some(root) = &d.cgroup_root {
            if !root.is_absolute() {
                return Err(invalid(
                    "daemon.cgroup_root".into(),
                    format!("expected an absolute path, got `{}`", root.display()),
                ));
            }
        }
        let mut dns_resolvers = Vec::new();
        for (i, r) in d.dns_resolvers.iter().enumerate() {
            let addr = parse_socket_addr(r, Some(53)).ok_or_else(|| {
                invalid(
                    format!("daemon.dns_resolvers[{i}]"),
                    format!("expected an IP address or address:port, got `{r}`"),
                )
            })?;
            dns_resolvers.push(addr);
        }
        let mut unix_allow = Vec::new();
        for (i, p) in d.unix_allow.iter().enumerate() {
            if Path::new(p) == d.control_socket {
                return Err(invalid(
                    format!("daemon.unix_allow[{i}]"),
                    format!("`{p}` is Cordon's own control socket (daemon.control_socket); agents may never reach it"),
                ));
            }
            unix_allow.push(
                UnixName::parse(p).map_err(|e| invalid(format!("daemon.unix_allow[{i}]"), e))?,
            );
        }
        if d.upstream_connect_timeout_secs == 0 || d.upstream_connect_timeout_secs > 300 {
            return Err(invalid(
                "daemon.upstream_connect_timeout_secs".into(),
                "expected 1..=300 seconds".into(),
            ));
        }
        let sessions_limit = |key: &str, value: u64| {
            usize::try_from(value)
                .ok()
                .filter(|_| (1..=MAX_SESSIONS_CEILING).contains(&value))
                .ok_or_else(|| {
                    invalid(
                        format!("daemon.{key}"),
                        format!("expected 1..={MAX_SESSIONS_CEILING} sessions, got {value}"),
                    )
                })
        };
        let max_sessions = sessions_limit("max_sessions", d.max_sessions)?;
        let max_sessions_per_agent =
            sessions_limit("max_sessions_per_agent", d.max_sessions_per_agent)?;
        if d.half_close_timeout_secs == 0 || d.half_close_timeout_secs > 86_400 {
            return Err(invalid(
                "daemon.half_close_timeout_secs".into(),
                format!(
                    "expected 1..=86400 seconds, got {}",
                    d.half_close_timeout_secs
                ),
            ));
        }
        let daemon = Daemon {
            state_dir: d.state_dir,
            control_socket: d.control_socket,
            listen,
            cgroup_root: d.cgroup_root,
            bpffs: d.bpffs,
            dns_resolvers,
            unix_allow,
            upstream_connect_timeout: std::time::Duration::from_secs(
                d.upstream_connect_timeout_secs,
            ),
            max_sessions,
            max_sessions_per_agent,
            half_close_timeout: std::time::Duration::from_secs(d.half_close_timeout_secs),
            policy_dir: d.policy_dir,
        };

        let mut agents = Vec::new();
        let mut agent_names = HashSet::new();
        for (i, a) in raw.agent.into_iter().enumerate() {
            let key = format!("agent[{i}].name");
            let name = AgentName::parse(&a.name).map_err(|e| invalid(key.clone(), e))?;
            if !agent_names.insert(name.clone()) {
                return Err(invalid(key, format!("agent `{name}` is declared twice")));
            }
            if let Some(cg) = &a.cgroup {
                if !cg.is_absolute() {
                    return Err(invalid(
                        format!("agent[{i}].cgroup"),
                        format!("expected an absolute cgroup path, got `{}`", cg.display()),
                    ));
                }
            }
            let mut users = Vec::new();
            for (j, u) in a.users.iter().enumerate() {
                users.push(resolve_user(u).ok_or_else(|| {
                    invalid(
                        format!("agent[{i}].users[{j}]"),
                        format!("`{u}` is neither a uid nor a user in /etc/passwd"),
                    )
                })?);
            }
            agents.push(Agent {
                name,
                cgroup: a.cgroup,
                users,
            });
        }

        let mut resources: Vec<Resource> = Vec::new();
        for (i, r) in raw.resource.into_iter().enumerate() {
            AgentName::parse(&r.name).map_err(|e| invalid(format!("resource[{i}].name"), e))?;
            if resources.iter().any(|o| o.name == r.name) {
                return Err(invalid(
                    format!("resource[{i}].name"),
                    format!("resource `{}` is declared twice", r.name),
                ));
            }
            let protocol = match r.protocol.as_str() {
                "tcp" => Protocol::Tcp,
                "postgres" => Protocol::Postgres,
                "ssh" => Protocol::Ssh,
                "http" => {
                    return Err(invalid(
                        format!("resource[{i}].protocol"),
                        format!(
                            "protocol `{}` is not supported by this build yet (supported: tcp, postgres, ssh)",
                            r.protocol
                        ),
                    ))
                }
                other => {
                    return Err(invalid(
                        format!("resource[{i}].protocol"),
                        format!("expected one of tcp, postgres, ssh, http; got `{other}`"),
                    ))
                }
            };
            let address = parse_socket_addr(&r.address, None).ok_or_else(|| {
                invalid(
                    format!("resource[{i}].address"),
                    format!(
                        "expected IP:port such as 10.0.0.5:5432 or [fd00::5]:5432, got `{}`",
                        r.address
                    ),
                )
            })?;
            let address = canonical(address);
            if address.port() == 0 {
                return Err(invalid(
                    format!("resource[{i}].address"),
                    "port 0 is not a destination".into(),
                ));
            }
            if let Some(other) = resources.iter().find(|o| o.address == address) {
                return Err(invalid(
                    format!("resource[{i}].address"),
                    format!(
                        "`{address}` is already the address of resource `{}`",
                        other.name
                    ),
                ));
            }
            let postgres = match protocol {
                Protocol::Tcp => {
                    // A tcp resource is relayed byte for byte: no credential is
                    // injected and no per-command policy applies, so accepting these
                    // keys would promise protection that is not there.
                    let set = [
                        ("credential", r.credential.is_some()),
                        ("policy", r.policy.is_some()),
                        ("upstream_user", r.upstream_user.is_some()),
                        ("agent_tls", r.agent_tls),
                        ("upstream_tls", r.upstream_tls.is_some()),
                        ("upstream_ca", r.upstream_ca.is_some()),
                        ("upstream_server_name", r.upstream_server_name.is_some()),
                        ("host_keys", !r.host_keys.is_empty()),
                    ];
                    if let Some((key, _)) = set.iter().find(|(_, on)| *on) {
                        return Err(invalid(
                            format!("resource[{i}].{key}"),
                            format!(
                                "`{key}` has no effect on protocol `{}` resources; remove it",
                                protocol.as_str()
                            ),
                        ));
                    }
                    None
                }
                Protocol::Postgres => {
                    if !r.host_keys.is_empty() {
                        return Err(invalid(
                            format!("resource[{i}].host_keys"),
                            "`host_keys` only applies to ssh resources".into(),
                        ));
                    }
                    Some(postgres_resource(
                        &r,
                        i,
                        address,
                        &daemon.policy_dir,
                        &invalid,
                    )?)
                }
                Protocol::Ssh => None,
            };
            let ssh = match protocol {
                Protocol::Ssh => Some(ssh_resource(&r, i, &daemon.policy_dir, &invalid)?),
                _ => None,
            };
            let approval = approval::parse_resource(
                approval::RawResourceApproval {
                    approvers: r.approvers.as_ref(),
                    approvals_required: r.approvals_required,
                    max_ttl: r.max_ttl.as_deref(),
                    actions: r.actions.as_ref(),
                },
                i,
                protocol,
                &daemon.policy_dir,
            )
            .map_err(|(key, problem)| invalid(key, problem))?;
            resources.push(Resource {
                name: r.name,
                protocol,
                address,
                postgres,
                ssh,
                approval,
            });
        }

        let mut grants = Vec::new();
        for (i, g) in raw.grant.into_iter().enumerate() {
            let agent = AgentName::parse(&g.agent)
                .ok()
                .filter(|a| agent_names.contains(a))
                .ok_or_else(|| {
                    invalid(
                        format!("grant[{i}].agent"),
                        format!("no [[agent]] is named `{}`", g.agent),
                    )
                })?;
            if !resources.iter().any(|r| r.name == g.resource) {
                return Err(invalid(
                    format!("grant[{i}].resource"),
                    format!("no [[resource]] is named `{}`", g.resource),
                ));
            }
            let expires = OffsetDateTime::parse(&g.expires, &Rfc3339).map_err(|e| {
                invalid(
                    format!("grant[{i}].expires"),
                    format!(
                        "expected an RFC 3339 time such as 2026-12-31T00:00:00Z, got `{}` ({e})",
                        g.expires
                    ),
                )
            })?;
            let is_pg = resources
                .iter()
                .any(|r| r.name == g.resource && r.protocol == Protocol::Postgres);
            let is_ssh = resources
                .iter()
                .any(|r| r.name == g.resource && r.protocol == Protocol::Ssh);
            match &g.login {
                Some(_) if !is_ssh => {
                    return Err(invalid(
                        format!("grant[{i}].login"),
                        "`login` only applies to grants on ssh resources".into(),
                    ))
                }
                Some(l) if !valid_login(l) => {
                    return Err(invalid(
                        format!("grant[{i}].login"),
                        format!("expected a user name of 1-32 of [A-Za-z0-9._-], got `{l}`"),
                    ))
                }
                _ => {}
            }
            for (key, value) in [("role", &g.role), ("database", &g.database)] {
                match value {
                    Some(_) if !is_pg => {
                        return Err(invalid(
                            format!("grant[{i}].{key}"),
                            format!("`{key}` only applies to grants on postgres resources"),
                        ))
                    }
                    Some(v) if v.is_empty() || v.len() > 63 || v.contains('\0') => {
                        return Err(invalid(
                            format!("grant[{i}].{key}"),
                            format!("expected a PostgreSQL name of 1-63 bytes, got `{v}`"),
                        ))
                    }
                    _ => {}
                }
            }
            grants.push(Grant {
                agent,
                resource: g.resource,
                expires,
                role: g.role,
                database: g.database,
                login: g.login,
            });
        }

        Ok(Config {
            file: file.to_owned(),
            daemon,
            agents,
            resources,
            grants,
            oidc: oidc::parse(raw.identity).map_err(|(key, problem)| invalid(key, problem))?,
            approvals: approval::parse_approvals(raw.approvals)
                .map_err(|(key, problem)| invalid(key, problem))?,
        })
    }

    pub fn agent(&self, name: &str) -> Option<&Agent> {
        self.agents.iter().find(|a| a.name.as_str() == name)
    }

    /// The resource agents reach by dialing `dst`.
    pub fn resource_at(&self, dst: SocketAddr) -> Option<&Resource> {
        let dst = canonical(dst);
        self.resources.iter().find(|r| r.address == dst)
    }
}

/// A user name Cordon accepts for SSH logins (what useradd accepts, minus `$`).
pub fn valid_login(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Where the policy named by `resource[i].policy` lives.
fn policy_path(
    r: &RawResource,
    i: usize,
    policy_dir: &Path,
    example: &str,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<PathBuf, ConfigError> {
    let policy_name = r.policy.clone().ok_or_else(|| {
        invalid(
            format!("resource[{i}].policy"),
            format!(
                "a {} resource needs `policy`, e.g. \"{example}\" (a file in daemon.policy_dir) or an absolute path",
                r.protocol
            ),
        )
    })?;
    if policy_name.starts_with('/') {
        Ok(PathBuf::from(&policy_name))
    } else if AgentName::parse(&policy_name).is_ok() {
        Ok(policy_dir.join(format!("{policy_name}.toml")))
    } else {
        Err(invalid(
            format!("resource[{i}].policy"),
            format!(
                "expected a policy name of [A-Za-z0-9_-] or an absolute path, got `{policy_name}`"
            ),
        ))
    }
}

/// Validates the ssh keys of `resource[i]` and loads its policy.
fn ssh_resource(
    r: &RawResource,
    i: usize,
    policy_dir: &Path,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<SshResource, ConfigError> {
    let set = [
        ("agent_tls", r.agent_tls),
        ("upstream_tls", r.upstream_tls.is_some()),
        ("upstream_ca", r.upstream_ca.is_some()),
        ("upstream_server_name", r.upstream_server_name.is_some()),
    ];
    if let Some((key, _)) = set.iter().find(|(_, on)| *on) {
        return Err(invalid(
            format!("resource[{i}].{key}"),
            format!("`{key}` has no effect on ssh resources; remove it"),
        ));
    }
    let credential = r.credential.clone().ok_or_else(|| {
        invalid(
            format!("resource[{i}].credential"),
            "an ssh resource needs `credential`, the vault entry with the upstream private key or password (`cordon vault set NAME --kind ssh-key`)".into(),
        )
    })?;
    let path = policy_path(r, i, policy_dir, "ssh-readonly", invalid)?;
    let policy = crate::policy::ssh::load(&path)
        .map_err(|e| invalid(format!("resource[{i}].policy"), e.to_string()))?;
    if let Some(u) = &r.upstream_user {
        if !valid_login(u) {
            return Err(invalid(
                format!("resource[{i}].upstream_user"),
                format!("expected a user name of 1-32 of [A-Za-z0-9._-], got `{u}`"),
            ));
        }
    }
    let mut host_keys = Vec::new();
    for (j, k) in r.host_keys.iter().enumerate() {
        match russh::keys::PublicKey::from_openssh(k.trim()) {
            Ok(key) => host_keys.push(crate::proxy::ssh::key_line(&key)),
            Err(e) => {
                return Err(invalid(
                    format!("resource[{i}].host_keys[{j}]"),
                    format!("expected an OpenSSH public key such as `ssh-ed25519 AAAA...` ({e})"),
                ))
            }
        }
    }
    Ok(SshResource {
        credential,
        upstream_user: r.upstream_user.clone(),
        policy: std::sync::Arc::new(policy),
        host_keys,
    })
}

/// Validates the postgres keys of `resource[i]` and loads its policy.
fn postgres_resource(
    r: &RawResource,
    i: usize,
    address: SocketAddr,
    policy_dir: &Path,
    invalid: &dyn Fn(String, String) -> ConfigError,
) -> Result<PostgresResource, ConfigError> {
    let credential = r.credential.clone().ok_or_else(|| {
        invalid(
            format!("resource[{i}].credential"),
            "a postgres resource needs `credential`, the vault entry with the upstream password (`cordon vault set NAME`)".into(),
        )
    })?;
    let policy_path = policy_path(r, i, policy_dir, "pg-readonly", invalid)?;
    let policy = crate::policy::load(&policy_path)
        .map_err(|e| invalid(format!("resource[{i}].policy"), e.to_string()))?;
    if let Some(u) = &r.upstream_user {
        if u.is_empty() || u.len() > 63 || u.contains('\0') {
            return Err(invalid(
                format!("resource[{i}].upstream_user"),
                format!("expected a PostgreSQL role name of 1-63 bytes, got `{u}`"),
            ));
        }
    }
    let upstream_tls = match r.upstream_tls.as_deref() {
        None | Some("disable") => {
            if r.upstream_ca.is_some() || r.upstream_server_name.is_some() {
                return Err(invalid(
                    format!("resource[{i}].upstream_tls"),
                    "`upstream_ca`/`upstream_server_name` need upstream_tls = \"verify-full\""
                        .into(),
                ));
            }
            None
        }
        Some("verify-full") => {
            let ca = r.upstream_ca.clone().ok_or_else(|| {
                invalid(
                    format!("resource[{i}].upstream_ca"),
                    "upstream_tls = \"verify-full\" needs `upstream_ca`, the CA certificate file (PEM)".into(),
                )
            })?;
            if !ca.is_absolute() {
                return Err(invalid(
                    format!("resource[{i}].upstream_ca"),
                    format!("expected an absolute path, got `{}`", ca.display()),
                ));
            }
            Some(UpstreamTls {
                ca,
                server_name: r
                    .upstream_server_name
                    .clone()
                    .unwrap_or_else(|| address.ip().to_string()),
            })
        }
        Some(other) => {
            return Err(invalid(
                format!("resource[{i}].upstream_tls"),
                format!("expected `disable` or `verify-full`, got `{other}`"),
            ))
        }
    };
    Ok(PostgresResource {
        credential,
        upstream_user: r.upstream_user.clone(),
        policy: std::sync::Arc::new(policy),
        agent_tls: r.agent_tls,
        upstream_tls,
    })
}

/// IPv4-mapped IPv6 addresses compare as the IPv4 address they carry.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

fn parse_socket_addr(s: &str, default_port: Option<u16>) -> Option<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Some(a);
    }
    let port = default_port?;
    s.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, port))
}

fn resolve_user(u: &str) -> Option<u32> {
    if let Ok(uid) = u.parse::<u32>() {
        return Some(uid);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _pw = f.next()?;
        let uid = f.next()?;
        (name == u).then(|| uid.parse().ok()).flatten()
    })
}

/// Where the config file is: `--config`, else `CORDON_CONFIG`, else the default.
pub fn locate(flag: Option<PathBuf>) -> PathBuf {
    flag.unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[daemon]
state_dir = "/tmp/cordon-state"
control_socket = "/tmp/cordon.sock"
listen = "127.0.0.1:15001"

[[agent]]
name = "billing-bot"

[[resource]]
name = "orders-db"
protocol = "tcp"
address = "10.0.0.5:5432"

[[grant]]
agent = "billing-bot"
resource = "orders-db"
expires = "2026-12-31T00:00:00Z"
"#;

    fn err(text: &str) -> String {
        match Config::parse(Path::new("test.toml"), text) {
            Ok(_) => String::from("<accepted>"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn accepts_the_design_example() {
        let cfg = Config::parse(Path::new("t.toml"), BASE).map_err(|e| e.to_string());
        let cfg = match cfg {
            Ok(c) => c,
            Err(e) => unreachable!("{e}"),
        };
        assert_eq!(cfg.agents.len(), 1);
        assert_eq!(cfg.daemon.bpffs, PathBuf::from("/sys/fs/bpf/cordon"));
        assert_eq!(cfg.daemon.max_sessions, 4096);
        assert_eq!(cfg.daemon.max_sessions_per_agent, 1024);
        assert_eq!(
            cfg.daemon.half_close_timeout,
            std::time::Duration::from_secs(60)
        );
        let dst: SocketAddr = "[::ffff:10.0.0.5]:5432"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        assert_eq!(
            cfg.resource_at(dst).map(|r| r.name.as_str()),
            Some("orders-db")
        );
    }

    #[test]
    fn postgres_resources_need_a_credential_a_loadable_policy_and_sane_tls() {
        let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
        let pg = |extra: &str, grant_extra: &str| {
            BASE.replace(
                "protocol = \"tcp\"",
                &format!("protocol = \"postgres\"\n{extra}"),
            )
            .replace(
                "expires = \"2026-12-31T00:00:00Z\"",
                &format!("expires = \"2026-12-31T00:00:00Z\"\n{grant_extra}"),
            )
            .replace(
                "listen = \"127.0.0.1:15001\"",
                &format!("listen = \"127.0.0.1:15001\"\npolicy_dir = \"{policies}\""),
            )
        };
        let ok = pg(
            "credential = \"db\"\npolicy = \"pg-readonly\"",
            "role = \"analyst\"\ndatabase = \"orders\"",
        );
        match Config::parse(Path::new("t.toml"), &ok) {
            Ok(cfg) => {
                let r = &cfg.resources[0];
                assert_eq!(r.protocol, Protocol::Postgres);
                assert_eq!(
                    r.postgres.as_ref().map(|p| p.policy.name.as_str()),
                    Some("pg-readonly")
                );
                assert_eq!(cfg.grants[0].role.as_deref(), Some("analyst"));
            }
            Err(e) => panic!("{e}"),
        }
        let table = [
            (pg("policy = \"pg-readonly\"", ""), "resource[0].credential"),
            (pg("credential = \"db\"", ""), "resource[0].policy"),
            (
                pg("credential = \"db\"\npolicy = \"nope\"", ""),
                "nope.toml",
            ),
            (
                pg("credential = \"db\"\npolicy = \"../etc/x\"", ""),
                "resource[0].policy",
            ),
            (
                pg(
                    "credential = \"db\"\npolicy = \"pg-readonly\"\nupstream_tls = \"verify-full\"",
                    "",
                ),
                "resource[0].upstream_ca",
            ),
            (
                pg(
                    "credential = \"db\"\npolicy = \"pg-readonly\"\nupstream_tls = \"yes\"",
                    "",
                ),
                "resource[0].upstream_tls",
            ),
            (
                BASE.replace(
                    "expires = \"2026-12-31T00:00:00Z\"",
                    "expires = \"2026-12-31T00:00:00Z\"\nrole = \"x\"",
                ),
                "grant[0].role",
            ),
            (
                BASE.replace("protocol = \"tcp\"", "protocol = \"tcp\"\nagent_tls = true"),
                "resource[0].agent_tls",
            ),
        ];
        for (text, want) in table {
            let e = err(&text);
            assert!(e.contains(want), "expected `{want}` in: {e}");
        }
    }

    #[test]
    fn rejections_name_file_key_and_problem() {
        let table = [
            (BASE.replace("listen =", "lisen ="), "unknown field `lisen`"),
            (
                BASE.replace("10.0.0.5:5432", "db.example:5432"),
                "resource[0].address",
            ),
            (
                BASE.replace("protocol = \"tcp\"", "protocol = \"ftp\""),
                "resource[0].protocol",
            ),
            (
                BASE.replace("2026-12-31T00:00:00Z", "tomorrow"),
                "grant[0].expires",
            ),
            (
                BASE.replace("agent = \"billing-bot\"", "agent = \"nobody-bot\""),
                "grant[0].agent",
            ),
            (
                BASE.replace("name = \"billing-bot\"", "name = \"../etc\""),
                "agent[0].name",
            ),
            (
                BASE.replace("\"/tmp/cordon-state\"", "\"relative\""),
                "daemon.state_dir",
            ),
            (
                BASE.replace("127.0.0.1:15001", "[::1]:15001"),
                "daemon.listen",
            ),
            (
                BASE.replace("[daemon]", "[daemon]\nunix_allow = [\"run/x\"]"),
                "daemon.unix_allow[0]",
            ),
            (
                BASE.replace(
                    "[daemon]",
                    "[daemon]\nunix_allow = [\"/run/ok\", \"/tmp//cordon.sock\"]",
                ),
                "daemon.unix_allow[1]`: `/tmp//cordon.sock` is Cordon's own control socket",
            ),
            (
                BASE.replace("[daemon]", "[deamon]"),
                "unknown field `deamon`",
            ),
            (
                BASE.replace("[daemon]", "[daemon]\nmax_sessions = 0"),
                "daemon.max_sessions`",
            ),
            (
                BASE.replace("[daemon]", "[daemon]\nmax_sessions_per_agent = 2000000"),
                "daemon.max_sessions_per_agent`",
            ),
            (
                BASE.replace("[daemon]", "[daemon]\nhalf_close_timeout_secs = 0"),
                "daemon.half_close_timeout_secs`",
            ),
            (
                BASE.replace("[daemon]", "[daemon]\nmax_sessions = -1"),
                "max_sessions",
            ),
        ];
        for (text, want) in table {
            let got = err(&text);
            assert!(got.starts_with("test.toml"), "{got}");
            assert!(got.contains(want), "wanted {want:?} in {got:?}");
        }
    }

    #[test]
    fn ssh_resources_need_a_credential_an_ssh_policy_and_valid_host_keys() {
        let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
        let key =
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM64Jay4R4Oa2vGhQ7JJ8uzx6/erXzwaQcptsk2VzcSU";
        let ssh = |extra: &str, grant_extra: &str| {
            BASE.replace(
                "protocol = \"tcp\"",
                &format!("protocol = \"ssh\"\n{extra}"),
            )
            .replace(
                "expires = \"2026-12-31T00:00:00Z\"",
                &format!("expires = \"2026-12-31T00:00:00Z\"\n{grant_extra}"),
            )
            .replace(
                "listen = \"127.0.0.1:15001\"",
                &format!("listen = \"127.0.0.1:15001\"\npolicy_dir = \"{policies}\""),
            )
        };
        let ok = ssh(
            &format!("credential = \"k\"\npolicy = \"ssh-readonly\"\nupstream_user = \"deploy\"\nhost_keys = [\"{key} comment\"]"),
            "login = \"deploy\"",
        );
        match Config::parse(Path::new("t.toml"), &ok) {
            Ok(cfg) => {
                let r = &cfg.resources[0];
                assert_eq!(r.protocol, Protocol::Ssh);
                let s = r.ssh.as_ref().unwrap_or_else(|| panic!("no ssh settings"));
                // The comment is dropped: keys are compared as `<algorithm> <base64>`.
                assert_eq!(s.host_keys, vec![key.to_owned()]);
                assert_eq!(s.policy.name(), "ssh-readonly");
                assert_eq!(cfg.grants[0].login.as_deref(), Some("deploy"));
            }
            Err(e) => panic!("{e}"),
        }
        let table = [
            (ssh("policy = \"ssh-readonly\"", ""), "resource[0].credential"),
            (ssh("credential = \"k\"", ""), "resource[0].policy"),
            // A SQL policy is not an SSH policy.
            (ssh("credential = \"k\"\npolicy = \"pg-readonly\"", ""), "resource[0].policy"),
            (
                ssh("credential = \"k\"\npolicy = \"ssh-readonly\"\nhost_keys = [\"ssh-ed25519 nope\"]", ""),
                "resource[0].host_keys[0]",
            ),
            (
                ssh("credential = \"k\"\npolicy = \"ssh-readonly\"\nupstream_user = \"bad user\"", ""),
                "resource[0].upstream_user",
            ),
            (
                ssh("credential = \"k\"\npolicy = \"ssh-readonly\"\nagent_tls = true", ""),
                "resource[0].agent_tls",
            ),
            (
                ssh("credential = \"k\"\npolicy = \"ssh-readonly\"", "login = \"-oProxyCommand=x\""),
                "grant[0].login",
            ),
            (
                BASE.replace(
                    "expires = \"2026-12-31T00:00:00Z\"",
                    "expires = \"2026-12-31T00:00:00Z\"\nlogin = \"x\"",
                ),
                "grant[0].login",
            ),
            (
                BASE.replace("protocol = \"tcp\"", &format!("protocol = \"tcp\"\nhost_keys = [\"{key}\"]")),
                "resource[0].host_keys",
            ),
        ];
        for (text, want) in table {
            let e = err(&text);
            assert!(e.contains(want), "expected `{want}` in: {e}");
        }
    }

    #[test]
    fn parse_errors_carry_the_line() {
        let got = err(&BASE.replace("listen = \"127.0.0.1:15001\"", "listen = 15001"));
        assert!(got.contains("line 5"), "{got}");
    }

    #[test]
    fn unix_names() {
        assert_eq!(
            UnixName::parse("@x").map(|n| n.sun_path()),
            Ok(vec![0, b'x'])
        );
        assert_eq!(
            UnixName::parse("/run/a.sock").map(|n| n.sun_path()),
            Ok(b"/run/a.sock".to_vec())
        );
        assert!(UnixName::parse("@").is_err());
    }
}
