//! Types and map names shared by the kernel programs (`cordon-ebpf`) and the
//! daemon's capture module. Everything here is `#[repr(C)]`, `Copy`, free of
//! `bool`/`Option`/enums, padded explicitly and size-checked at compile time.
#![no_std]

/// Socket cookie -> [`Attestation`]: written by connect4/6, read by
/// sock_ops and getpeername4/6.
pub const MAP_SOCKETS: &str = "CDN_SOCKETS";
/// [`PeerKey`] (the agent socket's local address) -> [`Attestation`]:
/// written by sock_ops, read (and deleted) by the proxy after accept().
pub const MAP_PEERS: &str = "CDN_PEERS";
/// Index 0 -> [`Settings`]: where to redirect, written by the daemon.
pub const MAP_SETTINGS: &str = "CDN_SETTINGS";
/// Agent cgroup id (u64) -> [`AgentSlot`]: which cgroups are agents.
pub const MAP_AGENTS: &str = "CDN_AGENTS";
/// [`PeerKey`] (resolver address and port) -> u32: UDP destinations allowed
/// (DNS resolvers listed in config).
pub const MAP_DNS: &str = "CDN_DNS";
/// [`UnixPath`] -> u32: unix socket paths agents may connect to.
pub const MAP_UNIX: &str = "CDN_UNIX";

/// Capacity of the per-socket and per-peer LRU maps.
pub const SOCKET_MAP_ENTRIES: u32 = 65_536;
/// How many agent cgroups one daemon can pin.
pub const AGENT_MAP_ENTRIES: u32 = 1_024;
/// Deepest cgroup level the kernel programs walk when resolving an agent.
pub const MAX_CGROUP_LEVEL: i32 = 32;
/// Length of `sockaddr_un.sun_path`.
pub const UNIX_PATH_LEN: usize = 108;

pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// What the kernel saw when an agent socket connected: the destination it
/// asked for and who asked. Addresses are IPv6 (IPv4 as `::ffff:a.b.c.d`) in
/// network byte order; the port is in host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attestation {
    pub orig_ip: [u32; 4],
    pub orig_port: u16,
    /// AF_INET or AF_INET6: the family of the address the agent dialed.
    pub orig_family: u16,
    pub tgid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Socket type (SOCK_STREAM = 1).
    pub sock_type: u32,
    pub cookie: u64,
    /// The cgroup the connecting task is in (may be a child of an agent's).
    pub cgroup_id: u64,
    /// The pinned agent cgroup that covers `cgroup_id`; 0 if none did.
    pub agent_cgroup_id: u64,
    pub comm: [u8; 16],
}

/// Key for [`MAP_PEERS`] and [`MAP_DNS`]: an address (IPv6 or v4-mapped, network
/// order) and a port (host order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    pub ip: [u32; 4],
    pub port: u32,
}

/// Redirect target and guards, written by the daemon at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Proxy IPv4 address, network byte order (127.0.0.1).
    pub proxy_ip4: u32,
    /// Proxy port, host byte order; 0 means "not configured: refuse".
    pub proxy_port: u32,
    /// Cookie of the daemon's network namespace: agent sockets in any other
    /// namespace are refused (a private namespace is where records could be
    /// planted and where "loopback" is not the host's).
    pub netns_cookie: u64,
}

/// Value of [`MAP_AGENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AgentSlot {
    /// Index of the agent in the daemon's config (informational).
    pub index: u32,
    pub _pad: u32,
}

/// Key for [`MAP_UNIX`]: a `sun_path`, zero-padded. Pathname sockets end at
/// the first NUL; abstract names (leading NUL) keep their full length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnixPath {
    pub path: [u8; UNIX_PATH_LEN],
    pub _pad: [u8; 4],
}

const _: () = assert!(core::mem::size_of::<Attestation>() == 80);
const _: () = assert!(core::mem::size_of::<PeerKey>() == 20);
const _: () = assert!(core::mem::size_of::<Settings>() == 16);
const _: () = assert!(core::mem::size_of::<AgentSlot>() == 8);
const _: () = assert!(core::mem::size_of::<UnixPath>() == 112);

/// IPv4 (network order) as a v4-mapped IPv6 address (network order words).
pub const fn v4_mapped(ip4_be: u32) -> [u32; 4] {
    [0, 0, 0xffff_u32.to_be(), ip4_be]
}

/// Whether an IPv6 address (network order words) is v4-mapped.
pub const fn is_v4_mapped(ip: &[u32; 4]) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == 0xffff_u32.to_be()
}

#[cfg(feature = "user")]
mod user {
    #![allow(unsafe_code)]
    // SAFETY: all four types are #[repr(C)], Copy, contain only integers and
    // arrays of integers, and have explicit padding, so every byte pattern is valid.
    unsafe impl aya::Pod for super::Attestation {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PeerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Settings {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::AgentSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::UnixPath {}
}
