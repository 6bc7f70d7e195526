//! Kernel side of capture: programs attached to each pinned agent cgroup.
//!
//! Data flow: agent `connect()` -> `redirect_connect4/6` records the original
//! destination and the kernel's attestation by socket cookie and rewrites the
//! destination to the proxy -> `attest_sock_ops` republishes the record keyed
//! by the socket's local address, which is what the proxy sees from accept().
//! UDP, raw/packet sockets and unix-socket connects are refused here.
//!
//! Return codes: cgroup sock_addr and lsm_cgroup programs return 1 to allow
//! and 0 to refuse (the caller gets EPERM).
#![no_std]
#![no_main]
#![allow(unsafe_code)]

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{bpf_sock_addr, bpf_sockopt},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf,
        generated::{
            bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_netns_cookie,
            bpf_get_socket_cookie,
        },
    },
    macros::{
        cgroup_skb, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, lsm_cgroup, map, sock_ops,
    },
    maps::{Array, HashMap, LruHashMap},
    programs::{
        LsmContext, SkBuffContext, SockAddrContext, SockContext, SockOpsContext, SockoptContext,
    },
    EbpfContext,
};
use cordon_common::{
    is_v4_mapped, v4_mapped, AgentSlot, Attestation, PeerKey, Settings, UnixPath, AF_INET,
    AF_INET6, AF_UNIX, AGENT_MAP_ENTRIES, MAX_CGROUP_LEVEL, SOCKET_MAP_ENTRIES, UNIX_PATH_LEN,
};

const ALLOW: i32 = 1;
const DENY: i32 = 0;

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const SOCK_TYPE_MASK: i32 = 0xf;

const IPPROTO_IP: i32 = 0;
const IPPROTO_TCP: i32 = 6;
const IPPROTO_UDP: i32 = 17;
const AF_NETLINK: i32 = 16;
const NETLINK_ROUTE: i32 = 0;

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
const SO_ORIGINAL_DST: i32 = 80;

const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const BPF_SOCK_OPS_STATE_CB: u32 = 10;
const BPF_SOCK_OPS_STATE_CB_FLAG: i32 = 1 << 2;
const TCP_CLOSE: u32 = 7;

#[map(name = "CDN_SOCKETS")]
static SOCKETS: LruHashMap<u64, Attestation> = LruHashMap::pinned(SOCKET_MAP_ENTRIES, 0);

#[map(name = "CDN_PEERS")]
static PEERS: LruHashMap<PeerKey, Attestation> = LruHashMap::pinned(SOCKET_MAP_ENTRIES, 0);

#[map(name = "CDN_SETTINGS")]
static SETTINGS: Array<Settings> = Array::pinned(1, 0);

#[map(name = "CDN_AGENTS")]
static AGENTS: HashMap<u64, AgentSlot> = HashMap::pinned(AGENT_MAP_ENTRIES, 0);

#[map(name = "CDN_DNS")]
static DNS: HashMap<PeerKey, u32> = HashMap::pinned(64, 0);

#[map(name = "CDN_UNIX")]
static UNIX: HashMap<UnixPath, u32> = HashMap::pinned(256, 0);

fn settings() -> Option<Settings> {
    SETTINGS.get(0).copied()
}

/// Whether the socket lives in the daemon's network namespace. There is no
/// exemption for any process: the daemon never runs inside an agent cgroup.
fn same_netns(ctx: &SockAddrContext, settings: &Settings) -> bool {
    // SAFETY: the context pointer is the kernel's bpf_sock_addr.
    let cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    cookie == settings.netns_cookie
}

fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// The deepest pinned agent cgroup among the current task's ancestors.
fn agent_cgroup() -> u64 {
    let mut found = 0;
    for level in 0..MAX_CGROUP_LEVEL {
        // SAFETY: plain helper call; returns 0 past the task's own level.
        let id = unsafe { bpf_get_current_ancestor_cgroup_id(level) };
        if id == 0 {
            break;
        }
        if AGENTS.get_ptr(id).is_some() {
            found = id;
        }
    }
    found
}

/// Record who is connecting where, by socket cookie.
fn record(
    ctx: &SockAddrContext,
    orig_ip: [u32; 4],
    orig_port: u16,
    family: u16,
) -> Result<(), i64> {
    // SAFETY: the context pointer is the kernel's bpf_sock_addr.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: plain helper call.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let attestation = Attestation {
        orig_ip,
        orig_port,
        orig_family: family,
        tgid: current_tgid(),
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        sock_type: SOCK_STREAM,
        cookie,
        cgroup_id,
        agent_cgroup_id: agent_cgroup(),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    SOCKETS.insert(cookie, attestation, 0).map_err(i64::from)
}

fn dns_allowed(ip: [u32; 4], port: u16) -> i32 {
    let key = PeerKey {
        ip,
        port: u32::from(port),
    };
    if DNS.get_ptr(key).is_some() {
        ALLOW
    } else {
        DENY
    }
}

fn read_ip6(field: *const [u32; 4]) -> [u32; 4] {
    let base = field.cast::<u32>();
    // SAFETY: `field` points at a 4-word array in the program context; each
    // word is read separately because the verifier rejects wide ctx loads.
    unsafe {
        [
            read_volatile(base),
            read_volatile(base.add(1)),
            read_volatile(base.add(2)),
            read_volatile(base.add(3)),
        ]
    }
}

fn write_ip6(field: *mut [u32; 4], ip: [u32; 4]) {
    let base = field.cast::<u32>();
    // SAFETY: as in read_ip6; ctx stores must be word-sized.
    unsafe {
        write_volatile(base, ip[0]);
        write_volatile(base.add(1), ip[1]);
        write_volatile(base.add(2), ip[2]);
        write_volatile(base.add(3), ip[3]);
    }
}

/// Fails closed: no settings, a full map or an unknown socket type all refuse.
#[cgroup_sock_addr(connect4)]
pub fn redirect_connect4(ctx: SockAddrContext) -> i32 {
    try_redirect_connect4(&ctx).unwrap_or(DENY)
}

fn try_redirect_connect4(ctx: &SockAddrContext) -> Result<i32, i64> {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    let settings = settings().ok_or(0i64)?;
    if !same_netns(ctx, &settings) {
        return Ok(DENY);
    }
    // SAFETY: ctx fields of bpf_sock_addr readable in connect4.
    let (ip4, port_be, sock_type) = unsafe { ((*sa).user_ip4, (*sa).user_port, (*sa).type_) };
    let orig_ip = v4_mapped(ip4);
    let orig_port = u16::from_be(port_be as u16);
    match sock_type {
        SOCK_STREAM => {}
        SOCK_DGRAM => return Ok(dns_allowed(orig_ip, orig_port)),
        _ => return Ok(DENY),
    }
    if settings.proxy_port == 0 {
        return Ok(DENY);
    }
    if let Err(err) = record(ctx, orig_ip, orig_port, AF_INET) {
        aya_log_ebpf::error!(ctx, "cordon: attestation map insert failed: {}", err);
        return Ok(DENY);
    }
    // SAFETY: connect4 may rewrite user_ip4/user_port (word-sized stores).
    unsafe {
        (*sa).user_ip4 = settings.proxy_ip4;
        (*sa).user_port = u32::from((settings.proxy_port as u16).to_be());
    }
    Ok(ALLOW)
}

/// Fails closed, as connect4. v4-mapped destinations go to the v4 listener.
#[cgroup_sock_addr(connect6)]
pub fn redirect_connect6(ctx: SockAddrContext) -> i32 {
    try_redirect_connect6(&ctx).unwrap_or(DENY)
}

fn try_redirect_connect6(ctx: &SockAddrContext) -> Result<i32, i64> {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    let settings = settings().ok_or(0i64)?;
    if !same_netns(ctx, &settings) {
        return Ok(DENY);
    }
    // SAFETY: ctx fields of bpf_sock_addr readable in connect6.
    let (port_be, sock_type) = unsafe { ((*sa).user_port, (*sa).type_) };
    // SAFETY: taking the address of a ctx field, not reading it.
    let orig_ip = read_ip6(unsafe { addr_of!((*sa).user_ip6) });
    let orig_port = u16::from_be(port_be as u16);
    match sock_type {
        SOCK_STREAM => {}
        SOCK_DGRAM => return Ok(dns_allowed(orig_ip, orig_port)),
        _ => return Ok(DENY),
    }
    if settings.proxy_port == 0 {
        return Ok(DENY);
    }
    let mapped = is_v4_mapped(&orig_ip);
    let family = if mapped { AF_INET } else { AF_INET6 };
    if let Err(err) = record(ctx, orig_ip, orig_port, family) {
        aya_log_ebpf::error!(ctx, "cordon: attestation map insert failed: {}", err);
        return Ok(DENY);
    }
    let target = if mapped {
        v4_mapped(settings.proxy_ip4)
    } else {
        [0, 0, 0, 1u32.to_be()]
    };
    // SAFETY: connect6 may rewrite user_ip6/user_port (word-sized stores).
    unsafe {
        write_ip6(addr_of_mut!((*sa).user_ip6), target);
        (*sa).user_port = u32::from((settings.proxy_port as u16).to_be());
    }
    Ok(ALLOW)
}

/// UDP without connect(): only listed resolvers. Fails closed.
#[cgroup_sock_addr(sendmsg4)]
pub fn restrict_sendmsg4(ctx: SockAddrContext) -> i32 {
    match settings() {
        Some(s) if same_netns(&ctx, &s) => {}
        _ => return DENY,
    }
    let sa = ctx.sock_addr;
    // SAFETY: ctx fields readable in sendmsg4.
    let (ip4, port_be) = unsafe { ((*sa).user_ip4, (*sa).user_port) };
    dns_allowed(v4_mapped(ip4), u16::from_be(port_be as u16))
}

/// UDP without connect() over IPv6 (and v4-mapped). Fails closed.
#[cgroup_sock_addr(sendmsg6)]
pub fn restrict_sendmsg6(ctx: SockAddrContext) -> i32 {
    match settings() {
        Some(s) if same_netns(&ctx, &s) => {}
        _ => return DENY,
    }
    let sa = ctx.sock_addr;
    // SAFETY: ctx fields readable in sendmsg6.
    let port_be = unsafe { (*sa).user_port };
    // SAFETY: address of a ctx field.
    let ip = read_ip6(unsafe { addr_of!((*sa).user_ip6) });
    dns_allowed(ip, u16::from_be(port_be as u16))
}

/// Shows the agent the address it dialed. Fails open for the view only (the
/// proxy address stays visible); getpeername programs must return 1.
#[cgroup_sock_addr(getpeername4)]
pub fn restore_getpeername4(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is the kernel's bpf_sock_addr.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(att) = SOCKETS.get_ptr(cookie) {
        // SAFETY: pointer returned by a successful map lookup.
        let att = unsafe { *att };
        if is_v4_mapped(&att.orig_ip) {
            let sa = ctx.sock_addr;
            // SAFETY: getpeername4 may rewrite user_ip4/user_port.
            unsafe {
                (*sa).user_ip4 = att.orig_ip[3];
                (*sa).user_port = u32::from(att.orig_port.to_be());
            }
        }
    }
    ALLOW
}

/// As getpeername4, for IPv6 and v4-mapped sockets.
#[cgroup_sock_addr(getpeername6)]
pub fn restore_getpeername6(ctx: SockAddrContext) -> i32 {
    // SAFETY: the context pointer is the kernel's bpf_sock_addr.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some(att) = SOCKETS.get_ptr(cookie) {
        // SAFETY: pointer returned by a successful map lookup.
        let att = unsafe { *att };
        let sa = ctx.sock_addr;
        // SAFETY: getpeername6 may rewrite user_ip6/user_port.
        unsafe {
            write_ip6(addr_of_mut!((*sa).user_ip6), att.orig_ip);
            (*sa).user_port = u32::from(att.orig_port.to_be());
        }
    }
    ALLOW
}

/// Republishes the connect-time record under the socket's local address once
/// the kernel has chosen it, and withdraws both records when the agent's
/// socket closes: a record must never outlive the socket whose 4-tuple makes
/// it unforgeable (otherwise a later local process could bind the same
/// source port, dial the proxy, and be taken for the agent). Fails closed by
/// omission: without a record the proxy refuses the connection.
#[sock_ops]
pub fn attest_sock_ops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            if publish_peer(&ctx).is_ok() {
                // Ask for state changes, to withdraw the record at close.
                let flags = ctx.cb_flags() as i32 | BPF_SOCK_OPS_STATE_CB_FLAG;
                let _ = ctx.set_cb_flags(flags);
            }
        }
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => withdraw(&ctx),
        _ => {}
    }
    1
}

/// The agent socket's local address, as the proxy's accept() reports it.
fn local_key(ctx: &SockOpsContext) -> PeerKey {
    let ops = ctx.ops;
    let ip = if ctx.family() == u32::from(AF_INET) {
        v4_mapped(ctx.local_ip4())
    } else {
        // SAFETY: addresses of ctx fields.
        let remote = read_ip6(unsafe { addr_of!((*ops).remote_ip6) });
        if is_v4_mapped(&remote) {
            // A v6 socket dialing a v4-mapped address: the v4 fields are set.
            v4_mapped(ctx.local_ip4())
        } else {
            // SAFETY: address of a ctx field.
            read_ip6(unsafe { addr_of!((*ops).local_ip6) })
        }
    };
    PeerKey {
        ip,
        port: ctx.local_port(),
    }
}

fn publish_peer(ctx: &SockOpsContext) -> Result<(), i64> {
    // SAFETY: the context pointer is the kernel's bpf_sock_ops.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: pointer returned by a successful map lookup, copied at once.
    let att = unsafe { *SOCKETS.get_ptr(cookie).ok_or(0i64)? };
    PEERS.insert(local_key(ctx), att, 0).map_err(i64::from)
}

fn withdraw(ctx: &SockOpsContext) {
    // SAFETY: the context pointer is the kernel's bpf_sock_ops.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = PEERS.remove(local_key(ctx));
    let _ = SOCKETS.remove(cookie);
}

/// SO_ORIGINAL_DST for standard transparent-proxy code running in the
/// daemon's cgroup. Never changes an option it does not own; must return 1.
#[cgroup_sockopt(getsockopt)]
pub fn original_dst_getsockopt(ctx: SockoptContext) -> i32 {
    let _ = try_original_dst(&ctx);
    1
}

fn try_original_dst(ctx: &SockoptContext) -> Result<(), i64> {
    let so: *mut bpf_sockopt = ctx.sockopt;
    // SAFETY: fields of the kernel's bpf_sockopt.
    let (level, optname, sk) = unsafe { ((*so).level, (*so).optname, (*so).__bindgen_anon_1.sk) };
    if optname != SO_ORIGINAL_DST || (level != SOL_IP && level != SOL_IPV6) || sk.is_null() {
        return Ok(());
    }
    // SAFETY: sk is a non-null PTR_TO_SOCKET.
    let (family, port_be) = unsafe { ((*sk).family, (*sk).dst_port) };
    let ip = if family == u32::from(AF_INET) {
        // SAFETY: as above.
        v4_mapped(unsafe { (*sk).dst_ip4 })
    } else {
        // SAFETY: address of a socket field.
        read_ip6(unsafe { addr_of!((*sk).dst_ip6) })
    };
    let key = PeerKey {
        ip,
        port: u32::from(u16::from_be(port_be)),
    };
    // SAFETY: pointer returned by a successful map lookup, copied at once.
    let att = unsafe { *PEERS.get_ptr(key).ok_or(0i64)? };
    // SAFETY: optval/optval_end bound the user's buffer; every store below is
    // checked against optval_end first, as the verifier requires.
    unsafe {
        let start = (*so).__bindgen_anon_2.optval.cast::<u8>();
        let end = (*so).__bindgen_anon_3.optval_end.cast::<u8>();
        if level == SOL_IP {
            if !is_v4_mapped(&att.orig_ip) || start.add(16) > end {
                return Ok(());
            }
            write_volatile(start.cast::<u16>(), AF_INET);
            write_volatile(start.add(2).cast::<u16>(), att.orig_port.to_be());
            write_volatile(start.add(4).cast::<u32>(), att.orig_ip[3]);
            write_volatile(start.add(8).cast::<u64>(), 0);
            (*so).optlen = 16;
        } else {
            if start.add(28) > end {
                return Ok(());
            }
            write_volatile(start.cast::<u16>(), AF_INET6);
            write_volatile(start.add(2).cast::<u16>(), att.orig_port.to_be());
            write_volatile(start.add(4).cast::<u32>(), 0);
            let words = start.add(8).cast::<u32>();
            write_volatile(words, att.orig_ip[0]);
            write_volatile(words.add(1), att.orig_ip[1]);
            write_volatile(words.add(2), att.orig_ip[2]);
            write_volatile(words.add(3), att.orig_ip[3]);
            write_volatile(start.add(24).cast::<u32>(), 0);
            (*so).optlen = 28;
        }
        (*so).retval = 0;
    }
    Ok(())
}

const PASS: i32 = 1;
const DROP: i32 = 0;
const IPPROTO_TCP_U8: u8 = 6;
const IPPROTO_UDP_U8: u8 = 17;

/// The far end of a packet, as seen on the wire. (Plain integers only: an
/// `Option` of this, or a `bool` in it, makes BTF the kernel rejects.)
#[derive(Clone, Copy)]
struct WireEnd {
    ip: [u32; 4],
    port: u16,
    proto: u8,
}

/// Parses a packet (the skb starts at the IP header in cgroup_skb
/// programs) into `end`; `remote_is_dst` picks the destination (egress) or
/// the source (ingress). Anything but plain IPv4 (no options) or IPv6 (no
/// extension headers) carrying TCP or UDP is refused (`false`): routing
/// headers and source routes are exactly how a packet could leave for
/// somewhere else than its socket's destination.
fn wire_end(ctx: &SkBuffContext, remote_is_dst: bool, end: &mut WireEnd) -> Result<bool, i64> {
    let first: u8 = ctx.load(0)?;
    match first >> 4 {
        4 => {
            if first & 0x0f != 5 {
                return Ok(false);
            }
            end.proto = ctx.load(9)?;
            let ip: u32 = ctx.load(if remote_is_dst { 16 } else { 12 })?;
            let port: u16 = ctx.load(if remote_is_dst { 22 } else { 20 })?;
            end.ip = v4_mapped(ip);
            end.port = u16::from_be(port);
        }
        6 => {
            end.proto = ctx.load(6)?;
            let base = if remote_is_dst { 24 } else { 8 };
            end.ip = [
                ctx.load::<u32>(base)?,
                ctx.load::<u32>(base + 4)?,
                ctx.load::<u32>(base + 8)?,
                ctx.load::<u32>(base + 12)?,
            ];
            let port: u16 = ctx.load(if remote_is_dst { 42 } else { 40 })?;
            end.port = u16::from_be(port);
        }
        _ => return Ok(false),
    }
    Ok(end.proto == IPPROTO_TCP_U8 || end.proto == IPPROTO_UDP_U8)
}

/// TCP only with the proxy, UDP only with a listed resolver.
fn wire_allowed(end: &WireEnd) -> bool {
    let Some(settings) = SETTINGS.get(0) else {
        return false;
    };
    if end.proto == IPPROTO_TCP_U8 {
        let port_ok = u32::from(end.port) == settings.proxy_port && settings.proxy_port != 0;
        let v4_proxy = v4_mapped(settings.proxy_ip4);
        let v6_proxy = [0, 0, 0, 1u32.to_be()];
        port_ok && (end.ip == v4_proxy || end.ip == v6_proxy)
    } else {
        dns_allowed(end.ip, end.port) == ALLOW
    }
}

/// The hot path of [`wire_end`]: direct packet access, no helper calls,
/// when the IP and transport headers are in the linear part of the skb (they
/// are for locally generated and loopback packets). `None`: not linear
/// enough, use the helper-based parser.
#[inline(always)]
fn wire_end_direct(ctx: &SkBuffContext, remote_is_dst: bool, end: &mut WireEnd) -> Option<bool> {
    let skb = ctx.skb.skb;
    // SAFETY: reading the data/data_end fields of the kernel's __sk_buff;
    // every packet read below is bounds-checked against data_end first, as
    // the verifier requires.
    let (data, data_end) = unsafe { ((*skb).data as usize, (*skb).data_end as usize) };
    // One check covering the whole IPv4 header and ports (a `+ 1` check
    // gets folded by LLVM into a form the verifier cannot use).
    if data + 24 > data_end {
        return None;
    }
    // SAFETY: bounds-checked above.
    let first = unsafe { *(data as *const u8) };
    match first >> 4 {
        4 => {
            if first & 0x0f != 5 {
                return Some(false);
            }
            // SAFETY: all offsets below 24, checked above.
            unsafe {
                end.proto = *((data + 9) as *const u8);
                let ip_at = if remote_is_dst { 16 } else { 12 };
                let port_at = if remote_is_dst { 22 } else { 20 };
                end.ip = v4_mapped(core::ptr::read_unaligned((data + ip_at) as *const u32));
                end.port = u16::from_be(core::ptr::read_unaligned((data + port_at) as *const u16));
            }
        }
        6 => {
            if data + 44 > data_end {
                return None;
            }
            let base = if remote_is_dst { 24 } else { 8 };
            let port_at = if remote_is_dst { 42 } else { 40 };
            // SAFETY: all offsets below 44, checked above.
            unsafe {
                end.proto = *((data + 6) as *const u8);
                let w = (data + base) as *const u32;
                end.ip = [
                    core::ptr::read_unaligned(w),
                    core::ptr::read_unaligned(w.add(1)),
                    core::ptr::read_unaligned(w.add(2)),
                    core::ptr::read_unaligned(w.add(3)),
                ];
                end.port = u16::from_be(core::ptr::read_unaligned((data + port_at) as *const u16));
            }
        }
        _ => return Some(false),
    }
    Some(end.proto == IPPROTO_TCP_U8 || end.proto == IPPROTO_UDP_U8)
}

fn wire_verdict(ctx: &SkBuffContext, remote_is_dst: bool) -> i32 {
    let mut end = WireEnd {
        ip: [0; 4],
        port: 0,
        proto: 0,
    };
    let parsed = match wire_end_direct(ctx, remote_is_dst, &mut end) {
        Some(ok) => Ok(ok),
        None => wire_end(ctx, remote_is_dst, &mut end),
    };
    match parsed {
        Ok(true) if wire_allowed(&end) => PASS,
        _ => DROP,
    }
}

/// Last line on the wire: every packet an agent socket sends must go to the
/// proxy (TCP) or a listed resolver (UDP), whatever the socket API said.
/// Catches per-packet routing headers, source routes and anything the
/// connect/sendmsg hooks did not see. Fails closed: unparsable packets drop.
#[cgroup_skb(egress)]
pub fn restrict_egress(ctx: SkBuffContext) -> i32 {
    wire_verdict(&ctx, true)
}

/// Agents take packets only from the proxy (TCP) or a listed resolver (UDP):
/// no inbound connections, no datagrams from elsewhere. Fails closed.
#[cgroup_skb(ingress)]
pub fn restrict_ingress(ctx: SkBuffContext) -> i32 {
    wire_verdict(&ctx, false)
}

/// Inet sockets an agent may create: TCP and UDP only. Raw sockets and every
/// other protocol are refused. (Runs for AF_INET/AF_INET6 only; other
/// families are refused by the LSM program or `cordon run`'s seccomp filter.)
/// Fails closed: anything not on that list is denied.
#[cgroup_sock(sock_create)]
pub fn restrict_sock_create(ctx: SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: fields of the kernel's bpf_sock, readable in sock_create.
    let (ty, protocol) = unsafe { ((*sk).type_, (*sk).protocol) };
    let protocol = protocol as i32;
    let allowed = (ty == SOCK_STREAM && (protocol == IPPROTO_IP || protocol == IPPROTO_TCP))
        || (ty == SOCK_DGRAM && (protocol == IPPROTO_IP || protocol == IPPROTO_UDP));
    if allowed {
        ALLOW
    } else {
        DENY
    }
}

/// Socket families and types an agent may create: unix, netlink route, and
/// TCP/UDP over IPv4/IPv6. Raw, packet and every other family are refused.
/// Fails closed: anything not on that list is denied.
#[lsm_cgroup(hook = "socket_create")]
pub fn restrict_socket_create(ctx: LsmContext) -> i32 {
    let family: i32 = ctx.arg(0);
    let ty: i32 = ctx.arg(1);
    let protocol: i32 = ctx.arg(2);
    let kern: i32 = ctx.arg(3);
    if kern != 0 {
        return ALLOW;
    }
    let ty = ty & SOCK_TYPE_MASK;
    let allowed = match family {
        f if f == i32::from(AF_UNIX) => true,
        AF_NETLINK => protocol == NETLINK_ROUTE,
        f if f == i32::from(AF_INET) || f == i32::from(AF_INET6) => {
            (ty == SOCK_STREAM as i32 && (protocol == IPPROTO_IP || protocol == IPPROTO_TCP))
                || (ty == SOCK_DGRAM as i32 && (protocol == IPPROTO_IP || protocol == IPPROTO_UDP))
        }
        _ => false,
    };
    if allowed {
        ALLOW
    } else {
        DENY
    }
}

/// Unix-socket connects only to allow-listed paths. Inet connects are left to
/// connect4/6. Fails closed: an unreadable address is refused.
#[lsm_cgroup(hook = "socket_connect")]
pub fn restrict_socket_connect(ctx: LsmContext) -> i32 {
    let addr: *const u8 = ctx.arg(1);
    let len: i32 = ctx.arg(2);
    unix_destination_allowed(addr, len).unwrap_or(DENY)
}

/// Unix datagrams sent to an explicit address: same allow list. Fails closed.
#[lsm_cgroup(hook = "socket_sendmsg")]
pub fn restrict_socket_sendmsg(ctx: LsmContext) -> i32 {
    let msg: *const u8 = ctx.arg(1);
    try_sendmsg(msg).unwrap_or(DENY)
}

fn try_sendmsg(msg: *const u8) -> Result<i32, i64> {
    // SAFETY: `msg` is the kernel's struct msghdr; msg_name (a pointer) is its
    // first field and msg_namelen (an int) follows at offset 8.
    let name: *const u8 = unsafe { bpf_probe_read_kernel(msg.cast::<*const u8>())? };
    if name.is_null() {
        return Ok(ALLOW);
    }
    // SAFETY: as above.
    let len: i32 = unsafe { bpf_probe_read_kernel(msg.add(8).cast::<i32>())? };
    unix_destination_allowed(name, len)
}

fn unix_destination_allowed(addr: *const u8, len: i32) -> Result<i32, i64> {
    if addr.is_null() {
        return Ok(ALLOW);
    }
    // SAFETY: `addr` is a kernel copy of the caller's sockaddr.
    let family: u16 = unsafe { bpf_probe_read_kernel(addr.cast::<u16>())? };
    if family != AF_UNIX {
        return Ok(ALLOW);
    }
    let mut key = UnixPath {
        path: [0; UNIX_PATH_LEN],
        _pad: [0; 4],
    };
    // SAFETY: the kernel keeps socket addresses in a sockaddr_storage (128
    // bytes), so the 108 bytes after the family are always readable.
    unsafe { bpf_probe_read_kernel_buf(addr.add(2), &mut key.path)? };
    let used = (len - 2).clamp(0, UNIX_PATH_LEN as i32) as usize;
    let pathname = key.path[0] != 0;
    let mut ended = false;
    for i in 0..UNIX_PATH_LEN {
        if let Some(byte) = key.path.get_mut(i) {
            if i >= used || ended {
                *byte = 0;
            } else if pathname && *byte == 0 {
                ended = true;
            }
        }
    }
    if UNIX.get_ptr(key).is_some() {
        Ok(ALLOW)
    } else {
        Ok(DENY)
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
