//! Capture: the only user of aya. Loads the kernel programs, attaches them to
//! agent cgroups, pins links and maps in bpffs so enforcement outlives the
//! daemon, and recovers `{original destination, attestation}` for each
//! socket the proxy accepts. First stage of the data flow.

pub mod cgroup;
pub mod landlock;
mod raw_bpf;
pub mod seccomp;
pub mod unixpath;

use std::{
    collections::HashMap as StdHashMap,
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
};

use std::os::fd::AsFd as _;

use aya::{
    maps::{Array, HashMap, MapData},
    programs::{
        links::{FdLink, PinnedLink},
        CgroupAttachMode, CgroupSockopt,
    },
    Btf, Ebpf, EbpfLoader,
};
use cordon_common::{
    AgentSlot, Attestation, PeerKey, Settings, UnixPath, MAP_AGENTS, MAP_DNS, MAP_PEERS,
    MAP_SETTINGS, MAP_UNIX, UNIX_PATH_LEN,
};

/// The compiled kernel programs, built by build.rs.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cordon"));

/// Programs attached to every agent cgroup, in attach order.
pub const AGENT_PROGRAMS: &[&str] = &[
    "redirect_connect4",
    "redirect_connect6",
    "restrict_sendmsg4",
    "restrict_sendmsg6",
    "restore_getpeername4",
    "restore_getpeername6",
    "attest_sock_ops",
    "restrict_sock_create",
    "restrict_egress",
    "restrict_ingress",
    "restrict_socket_create",
    "restrict_socket_connect",
    "restrict_socket_sendmsg",
];

/// Attached to the daemon's own cgroup: answers SO_ORIGINAL_DST.
pub const DAEMON_PROGRAM: &str = "original_dst_getsockopt";

/// Link directory of the daemon's own cgroup (agent names cannot start
/// with `_`, so it cannot collide with one).
const DAEMON_LINKS: &str = "_daemon";

const LSM_HOOKS: &[(&str, &str)] = &[
    ("restrict_socket_create", "socket_create"),
    ("restrict_socket_connect", "socket_connect"),
    ("restrict_socket_sendmsg", "socket_sendmsg"),
];

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("loading the eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("program `{name}`: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("program `{0}` is missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("map `{0}` is missing from the eBPF object")]
    MissingMap(&'static str),
    #[error("map `{name}`: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("reading kernel BTF (is CONFIG_DEBUG_INFO_BTF on?): {0}")]
    Btf(#[source] aya::BtfError),
    #[error("link for `{name}`: {source}")]
    Link {
        name: String,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaptureError + '_ {
    move |source| CaptureError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where this daemon keeps its pins: `<bpffs>/maps/<MAP>` and
/// `<bpffs>/links/<agent>/<program>`.
#[derive(Debug, Clone)]
pub struct PinLayout {
    pub root: PathBuf,
}

impl PinLayout {
    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }
    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }
    pub fn agent_links(&self, agent: &str) -> PathBuf {
        self.links().join(agent)
    }
}

/// What the kernel told us about an accepted connection.
#[derive(Debug, Clone)]
pub struct Attested {
    pub orig_dst: SocketAddr,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    /// 0 when no pinned agent cgroup covers the connecting task.
    pub agent_cgroup_id: u64,
}

impl From<&Attestation> for Attested {
    fn from(a: &Attestation) -> Self {
        Self {
            orig_dst: SocketAddr::new(ip_from_words(a.orig_ip), a.orig_port),
            tgid: a.tgid,
            uid: a.uid,
            gid: a.gid,
            comm: {
                let end = a.comm.iter().position(|&b| b == 0).unwrap_or(a.comm.len());
                String::from_utf8_lossy(a.comm.get(..end).unwrap_or_default()).into_owned()
            },
            cgroup_id: a.cgroup_id,
            agent_cgroup_id: a.agent_cgroup_id,
        }
    }
}

/// Network-order words -> address; v4-mapped becomes IPv4.
fn ip_from_words(words: [u32; 4]) -> IpAddr {
    let mut bytes = [0u8; 16];
    for (chunk, w) in bytes.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&w.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Address -> network-order words, IPv4 as v4-mapped.
fn words_from_ip(ip: IpAddr) -> [u32; 4] {
    let bytes = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let mut words = [0u32; 4];
    for (w, chunk) in words.iter_mut().zip(bytes.chunks_exact(4)) {
        let mut b = [0u8; 4];
        b.copy_from_slice(chunk);
        *w = u32::from_ne_bytes(b);
    }
    words
}

pub fn peer_key(addr: SocketAddr) -> PeerKey {
    PeerKey {
        ip: words_from_ip(addr.ip()),
        port: u32::from(addr.port()),
    }
}

/// One agent cgroup as attached.
#[derive(Debug, Clone)]
pub struct AttachedCgroup {
    pub path: PathBuf,
    pub id: u64,
    pub links: usize,
}

/// The loaded programs and the maps the daemon uses at run time.
pub struct Capture {
    ebpf: Ebpf,
    layout: PinLayout,
    /// Kept as a typed map so its key/value sizes were checked at load;
    /// read through `peers_fd` with one lookup-and-delete per connection.
    _peers: HashMap<MapData, PeerKey, Attestation>,
    peers_fd: std::os::fd::OwnedFd,
    agents: HashMap<MapData, u64, AgentSlot>,
    dns: HashMap<MapData, PeerKey, u32>,
    unix: HashMap<MapData, UnixPath, u32>,
    /// LSM programs the kernel would not load.
    lsm_refused: Vec<&'static str>,
    /// Unix-socket allow-list hooks (kernel >= 6.7).
    unix_guards: Vec<(&'static str, raw_bpf::UnixGuard)>,
    daemon_cgroup: Option<PathBuf>,
    _logger: Option<tokio::task::JoinHandle<()>>,
}

/// Mounts bpffs at /sys/fs/bpf if the configured directory is not on one.
fn ensure_bpffs(dir: &Path) -> Result<(), CaptureError> {
    let on_bpffs = |p: &Path| {
        let mut probe = p.to_path_buf();
        loop {
            if probe.exists() {
                return statfs_type(&probe) == Some(BPF_FS_MAGIC);
            }
            if !probe.pop() {
                return false;
            }
        }
    };
    if !on_bpffs(dir) {
        mount_bpffs(Path::new("/sys/fs/bpf"))?;
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))
}

#[allow(unsafe_code)]
fn statfs_type(path: &Path) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut buf = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a valid NUL-terminated path and `buf` is a writable
    // statfs-sized buffer; it is read only after statfs reports success.
    let rc = unsafe { libc::statfs(c.as_ptr(), buf.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statfs returned 0, so it filled the buffer.
    let st = unsafe { buf.assume_init() };
    Some(st.f_type)
}

#[allow(unsafe_code)]
fn mount_bpffs(target: &Path) -> Result<(), CaptureError> {
    use std::os::unix::ffi::OsStrExt as _;
    let invalid = |_| CaptureError::Io {
        path: target.to_owned(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    };
    let t = std::ffi::CString::new(target.as_os_str().as_bytes()).map_err(invalid)?;
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            t.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(CaptureError::Io {
            path: target.to_owned(),
            source: std::io::Error::last_os_error(),
        })
    }
}

/// The cookie of the daemon's network namespace (SO_NETNS_COOKIE).
#[allow(unsafe_code)]
fn own_netns_cookie() -> Result<u64, CaptureError> {
    use std::os::fd::AsRawFd as _;
    const SO_NETNS_COOKIE: libc::c_int = 71;
    let err = |source| CaptureError::Io {
        path: PathBuf::from("SO_NETNS_COOKIE"),
        source,
    };
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").map_err(err)?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: cookie/len describe a writable u64 for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            std::ptr::from_mut(&mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 || cookie == 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(cookie)
}

fn take_hash<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, CaptureError> {
    let map = ebpf.take_map(name).ok_or(CaptureError::MissingMap(name))?;
    HashMap::try_from(map).map_err(|source| CaptureError::Map { name, source })
}

impl Capture {
    /// Loads the programs, reusing this daemon's pinned maps if a previous
    /// instance left them, and points the redirect at `proxy`.
    pub fn load(layout: PinLayout, proxy: SocketAddr) -> Result<Self, CaptureError> {
        ensure_bpffs(&layout.root)?;
        let maps_dir = layout.maps();
        std::fs::create_dir_all(&maps_dir).map_err(io_err(&maps_dir))?;
        std::fs::create_dir_all(layout.links()).map_err(io_err(&layout.links()))?;

        let btf = Btf::from_sys_fs().map_err(CaptureError::Btf)?;
        let mut ebpf = EbpfLoader::new()
            .btf(Some(&btf))
            .default_map_pin_directory(&maps_dir)
            .load(PROGRAMS)
            .map_err(CaptureError::Load)?;

        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(spawn_logger(logger)),
            Err(e) => {
                tracing::warn!(error = %e, "kernel program logging unavailable");
                None
            }
        };

        let mut lsm_refused = Vec::new();
        for &name in AGENT_PROGRAMS.iter().chain([DAEMON_PROGRAM].iter()) {
            let prog = ebpf
                .program_mut(name)
                .ok_or(CaptureError::MissingProgram(name))?;
            let program_err = |source| CaptureError::Program { name, source };
            match prog {
                aya::programs::Program::LsmCgroup(p) => {
                    let hook = LSM_HOOKS
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, h)| *h)
                        .ok_or(CaptureError::MissingProgram(name))?;
                    // Some hosts refuse BPF LSM programs outright (EPERM
                    // before verification). The daemon then relies on the
                    // seccomp filter `cordon run` installs; see status.
                    if let Err(e) = p.load(hook, &btf) {
                        tracing::warn!(program = name, error = %e, "BPF LSM program refused by this kernel");
                        lsm_refused.push(name);
                    }
                }
                aya::programs::Program::CgroupSockAddr(p) => p.load().map_err(program_err)?,
                aya::programs::Program::SockOps(p) => p.load().map_err(program_err)?,
                aya::programs::Program::CgroupSock(p) => p.load().map_err(program_err)?,
                aya::programs::Program::CgroupSkb(p) => p.load().map_err(program_err)?,
                aya::programs::Program::CgroupSockopt(p) => p.load().map_err(program_err)?,
                _ => return Err(CaptureError::MissingProgram(name)),
            }
        }

        let ip4 = match proxy.ip() {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(_) => Ipv4Addr::LOCALHOST,
        };
        let mut settings: Array<MapData, Settings> = {
            let map = ebpf
                .take_map(MAP_SETTINGS)
                .ok_or(CaptureError::MissingMap(MAP_SETTINGS))?;
            Array::try_from(map).map_err(|source| CaptureError::Map {
                name: MAP_SETTINGS,
                source,
            })?
        };
        settings
            .set(
                0,
                Settings {
                    proxy_ip4: u32::from_ne_bytes(ip4.octets()),
                    proxy_port: u32::from(proxy.port()),
                    netns_cookie: own_netns_cookie()?,
                },
                0,
            )
            .map_err(|source| CaptureError::Map {
                name: MAP_SETTINGS,
                source,
            })?;

        let peers = take_hash(&mut ebpf, MAP_PEERS)?;
        let peers_fd = pinned_map_fd(&layout, MAP_PEERS)?;
        let agents = take_hash(&mut ebpf, MAP_AGENTS)?;
        let dns = take_hash(&mut ebpf, MAP_DNS)?;
        let unix: HashMap<MapData, UnixPath, u32> = take_hash(&mut ebpf, MAP_UNIX)?;
        let mut unix_guards = Vec::new();
        {
            let unix_fd = pinned_map_fd(&layout, MAP_UNIX)?;
            for (name, attach) in [
                ("guard_unix_connect", raw_bpf::BPF_CGROUP_UNIX_CONNECT),
                ("guard_unix_sendmsg", raw_bpf::BPF_CGROUP_UNIX_SENDMSG),
            ] {
                match raw_bpf::UnixGuard::load(attach, unix_fd.as_fd()) {
                    Ok(p) => unix_guards.push((name, p)),
                    Err(e) => {
                        tracing::warn!(program = name, error = %e, "unix-socket hook unavailable (kernel < 6.7?)")
                    }
                }
            }
        }
        Ok(Self {
            ebpf,
            layout,
            _peers: peers,
            peers_fd,
            agents,
            dns,
            unix,
            lsm_refused,
            unix_guards,
            daemon_cgroup: None,
            _logger: logger,
        })
    }

    /// Attaches every agent program to `cgroup_dir` and pins the links under
    /// `<bpffs>/links/<agent>/`. Safe across restarts: new links are attached
    /// first, then the old pinned ones are removed, then the new ones pinned,
    /// so the cgroup is never uncovered and programs never stack for long.
    pub fn attach_agent(
        &mut self,
        agent: &str,
        index: u32,
        cgroup_dir: &Path,
    ) -> Result<AttachedCgroup, CaptureError> {
        let cg = File::open(cgroup_dir).map_err(io_err(cgroup_dir))?;
        let id = cgroup::id(cgroup_dir)?;
        // Mark the cgroup as an agent before any program can see its sockets.
        self.agents
            .insert(id, AgentSlot { index, _pad: 0 }, 0)
            .map_err(|source| CaptureError::Map {
                name: MAP_AGENTS,
                source,
            })?;

        let mut fresh: Vec<(&'static str, FdLink)> = Vec::new();
        for &name in AGENT_PROGRAMS {
            if self.lsm_refused.contains(&name) {
                continue;
            }
            let link = self.attach_one(name, &cg)?;
            fresh.push((name, link));
        }

        let mut raw = Vec::new();
        for (name, prog) in &self.unix_guards {
            let link = prog.attach(&cg).map_err(|source| CaptureError::Io {
                path: cgroup_dir.join(name),
                source,
            })?;
            raw.push((*name, link));
        }

        let dir = self.layout.agent_links(agent);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        remove_pins(&dir)?;
        let links = fresh.len() + raw.len();
        for (name, link) in fresh {
            let path = dir.join(name);
            link.pin(&path)
                .map_err(|source| CaptureError::Pin { path, source })?;
        }
        for (name, link) in raw {
            let path = dir.join(name);
            raw_bpf::pin(&link, &path).map_err(io_err(&path))?;
        }
        Ok(AttachedCgroup {
            path: cgroup_dir.to_owned(),
            id,
            links,
        })
    }

    fn attach_one(&mut self, name: &'static str, cg: &File) -> Result<FdLink, CaptureError> {
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or(CaptureError::MissingProgram(name))?;
        let program_err = |source| CaptureError::Program { name, source };
        let link_err = |source| CaptureError::Link {
            name: name.to_owned(),
            source,
        };
        // Cgroup bpf_links always stack (BPF_F_ALLOW_MULTI); the mode only
        // matters for legacy attachment, which kernels >= 5.7 do not use.
        let mode = CgroupAttachMode::Single;
        match prog {
            aya::programs::Program::CgroupSockAddr(p) => {
                let id = p.attach(cg, mode).map_err(program_err)?;
                let link = p.take_link(id).map_err(program_err)?;
                FdLink::try_from(link).map_err(link_err)
            }
            aya::programs::Program::CgroupSkb(p) => {
                let direction = if name == "restrict_egress" {
                    aya::programs::CgroupSkbAttachType::Egress
                } else {
                    aya::programs::CgroupSkbAttachType::Ingress
                };
                let id = p.attach(cg, direction, mode).map_err(program_err)?;
                let link = p.take_link(id).map_err(program_err)?;
                FdLink::try_from(link).map_err(link_err)
            }
            aya::programs::Program::CgroupSock(p) => {
                let id = p.attach(cg, mode).map_err(program_err)?;
                let link = p.take_link(id).map_err(program_err)?;
                FdLink::try_from(link).map_err(link_err)
            }
            aya::programs::Program::SockOps(p) => {
                let id = p.attach(cg, mode).map_err(program_err)?;
                let link = p.take_link(id).map_err(program_err)?;
                FdLink::try_from(link).map_err(link_err)
            }
            aya::programs::Program::LsmCgroup(p) => {
                let id = p.attach(cg).map_err(program_err)?;
                let link = p.take_link(id).map_err(program_err)?;
                Ok(FdLink::from(link))
            }
            _ => Err(CaptureError::MissingProgram(name)),
        }
    }

    /// Attaches the SO_ORIGINAL_DST answerer to the daemon's own cgroup and
    /// pins it under `<bpffs>/links/_daemon/` (agent names cannot start
    /// with `_`), so transparent-proxy code in that cgroup keeps working
    /// across daemon restarts.
    pub fn attach_daemon_cgroup(&mut self, cgroup_dir: &Path) -> Result<(), CaptureError> {
        let cg = File::open(cgroup_dir).map_err(io_err(cgroup_dir))?;
        let prog = self
            .ebpf
            .program_mut(DAEMON_PROGRAM)
            .ok_or(CaptureError::MissingProgram(DAEMON_PROGRAM))?;
        let p: &mut CgroupSockopt = prog.try_into().map_err(|source| CaptureError::Program {
            name: DAEMON_PROGRAM,
            source,
        })?;
        let fd = p.fd().map_err(|source| CaptureError::Program {
            name: DAEMON_PROGRAM,
            source,
        })?;
        let link = raw_bpf::link_cgroup(fd.as_fd(), &cg, raw_bpf::BPF_CGROUP_GETSOCKOPT)
            .map_err(io_err(cgroup_dir))?;
        let dir = self.layout.links().join(DAEMON_LINKS);
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        remove_pins(&dir)?;
        let path = dir.join(DAEMON_PROGRAM);
        raw_bpf::pin(&link, &path).map_err(io_err(&path))?;
        self.daemon_cgroup = Some(cgroup_dir.to_owned());
        Ok(())
    }

    /// The programs attached to every agent cgroup on this kernel.
    pub fn active_programs(&self) -> Vec<String> {
        AGENT_PROGRAMS
            .iter()
            .filter(|p| !self.lsm_refused.contains(p))
            .map(|p| (*p).to_owned())
            .chain(self.unix_guards.iter().map(|(n, _)| (*n).to_owned()))
            .collect()
    }

    /// Whether the BPF LSM programs (socket family restrictions for pinned
    /// cgroups, unix allow list) are in force.
    pub fn lsm_active(&self) -> bool {
        self.lsm_refused.is_empty()
    }

    /// Whether the kernel enforces the unix-socket allow list (BPF LSM or
    /// the unix hooks).
    pub fn unix_enforced(&self) -> bool {
        self.lsm_active() || self.unix_guards.len() == 2
    }

    pub fn daemon_cgroup(&self) -> Option<&Path> {
        self.daemon_cgroup.as_deref()
    }

    /// Detaches agents that are no longer configured (their pinned links).
    pub fn detach_others(&mut self, keep: &[&str]) -> Result<Vec<String>, CaptureError> {
        let links = self.layout.links();
        let mut removed = Vec::new();
        let entries = std::fs::read_dir(&links).map_err(io_err(&links))?;
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&name.as_str()) || name == DAEMON_LINKS {
                continue;
            }
            remove_pins(&entry.path())?;
            std::fs::remove_dir(entry.path()).map_err(io_err(&entry.path()))?;
            removed.push(name);
        }
        Ok(removed)
    }

    /// Forgets a cgroup id (after its cgroup was detached).
    pub fn forget_cgroup(&mut self, id: u64) {
        let _ = self.agents.remove(&id);
    }

    /// Replaces the UDP destinations agents may reach (DNS resolvers).
    pub fn set_dns(&mut self, resolvers: &[SocketAddr]) -> Result<(), CaptureError> {
        let map = &mut self.dns;
        let old: Vec<PeerKey> = map.keys().filter_map(Result::ok).collect();
        for k in old {
            let _ = map.remove(&k);
        }
        for r in resolvers {
            map.insert(peer_key(*r), 1, 0)
                .map_err(|source| CaptureError::Map {
                    name: MAP_DNS,
                    source,
                })?;
        }
        Ok(())
    }

    /// Replaces the unix socket names agents may connect to.
    pub fn set_unix_allow(&mut self, names: &[Vec<u8>]) -> Result<(), CaptureError> {
        let map = &mut self.unix;
        let old: Vec<UnixPath> = map.keys().filter_map(Result::ok).collect();
        for k in old {
            let _ = map.remove(&k);
        }
        for n in names {
            let mut key = UnixPath {
                path: [0; UNIX_PATH_LEN],
                _pad: [0; 4],
            };
            for (dst, src) in key.path.iter_mut().zip(n.iter()) {
                *dst = *src;
            }
            map.insert(key, 1, 0).map_err(|source| CaptureError::Map {
                name: MAP_UNIX,
                source,
            })?;
        }
        Ok(())
    }

    /// Takes the kernel's record for an accepted connection, by the peer
    /// address accept() returned. Each record is handed out once.
    pub fn take(&self, peer: SocketAddr) -> Result<Option<Attested>, CaptureError> {
        let key = peer_key(peer);
        raw_bpf::lookup_and_delete::<PeerKey, Attestation>(self.peers_fd.as_fd(), &key)
            .map(|found| found.as_ref().map(Attested::from))
            .map_err(|source| CaptureError::Io {
                path: PathBuf::from(MAP_PEERS),
                source,
            })
    }
}

/// An fd for one of this daemon's pinned maps (for raw bpf(2) use).
fn pinned_map_fd(
    layout: &PinLayout,
    name: &'static str,
) -> Result<std::os::fd::OwnedFd, CaptureError> {
    let path = layout.maps().join(name);
    let data = MapData::from_pin(&path).map_err(|source| CaptureError::Map { name, source })?;
    data.fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(io_err(&path))
}

/// Unpins (and so detaches, once nothing else holds them) every link pinned
/// in `dir`.
fn remove_pins(dir: &Path) -> Result<(), CaptureError> {
    let entries = std::fs::read_dir(dir).map_err(io_err(dir))?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        match PinnedLink::from_pin(&path) {
            Ok(pinned) => {
                let _ = pinned.unpin();
            }
            Err(_) => std::fs::remove_file(&path).map_err(io_err(&path))?,
        }
    }
    Ok(())
}

/// Removes every pin of a daemon (links, then maps) so nothing stays
/// attached; used by `cordon daemon --uninstall`.
pub fn uninstall(layout: &PinLayout) -> Result<Vec<PathBuf>, CaptureError> {
    let mut removed = Vec::new();
    if !layout.root.exists() {
        return Ok(removed);
    }
    let links = layout.links();
    if links.exists() {
        for entry in std::fs::read_dir(&links)
            .map_err(io_err(&links))?
            .filter_map(Result::ok)
        {
            remove_pins(&entry.path())?;
            removed.push(entry.path());
        }
    }
    std::fs::remove_dir_all(&layout.root).map_err(io_err(&layout.root))?;
    Ok(removed)
}

/// Pinned link counts per agent directory (for `cordon status`).
pub fn pinned_links(layout: &PinLayout) -> StdHashMap<String, usize> {
    let mut out = StdHashMap::new();
    if let Ok(entries) = std::fs::read_dir(layout.links()) {
        for e in entries.filter_map(Result::ok) {
            let n = std::fs::read_dir(e.path()).map(|d| d.count()).unwrap_or(0);
            out.insert(e.file_name().to_string_lossy().into_owned(), n);
        }
    }
    out
}

/// Bridges aya-log records (through the `log` facade) into tracing.
#[allow(unsafe_code)]
fn spawn_logger(logger: aya_log::EbpfLogger<&'static dyn log::Log>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // SAFETY: the ring buffer fd is owned by `logger`, which the AsyncFd
        // owns; it stays open for as long as it is registered.
        let registered = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
        };
        let Ok(mut fd) = registered else {
            return;
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_through_kernel_words() {
        for s in ["10.0.0.5:5432", "[fd00::5]:22", "[::1]:80"] {
            let a: SocketAddr = s.parse().unwrap();
            let k = peer_key(a);
            assert_eq!(SocketAddr::new(ip_from_words(k.ip), k.port as u16), a);
        }
        // v4-mapped collapses to IPv4, as the kernel programs store it.
        let mapped: SocketAddr = "[::ffff:10.0.0.5]:1".parse().unwrap();
        assert_eq!(peer_key(mapped), peer_key("10.0.0.5:1".parse().unwrap()));
        assert_eq!(
            peer_key("10.0.0.5:1".parse().unwrap()).ip,
            cordon_common::v4_mapped(u32::from_ne_bytes([10, 0, 0, 5]))
        );
    }
}
