//! The seccomp filters `cordon run` installs before exec, for what the cgroup
//! hooks cannot see. Inherited by every descendant; cannot be removed (an
//! agent can only add filters of its own, which can only refuse more). Sets
//! no_new_privs, so agents cannot gain privileges via setuid binaries.
//!
//! What is refused, and why:
//!
//! - `socket()` of any family but inet, inet6 and netlink (plus unix where
//!   the kernel enforces the daemon's unix allow list), and netlink of any
//!   protocol but `NETLINK_ROUTE` (what getaddrinfo needs): no packet sockets
//!   or other families the cgroup hooks do not cover, and no unix sockets
//!   where the kernel cannot check their paths. `socketpair()` stays allowed
//!   for unix stream and seqpacket pairs, which stay connected to each
//!   other; other families are refused, and so are datagram pairs (and
//!   SOCK_RAW, which the kernel makes one) where unix sockets are (their ends
//!   can `sendto()` or `connect()` any named or abstract unix address).
//! - `ioctl` `TIOCSTI` and `TIOCLINUX`: both push bytes into a terminal's
//!   input. An agent started from a shell shares that shell's terminal, and
//!   whatever it typed there would run in the shell, outside the cgroup.
//! - `io_uring_setup`: `IORING_OP_SOCKET`/`IORING_OP_CONNECT` would sidestep
//!   seccomp's view of `socket()`.
//! - Namespaces: `unshare` and `setns` entirely, and `clone` with any
//!   `CLONE_NEW*` flag. A user namespace gives an unprivileged agent
//!   `CAP_SYS_ADMIN` over a private mount namespace (bind-mount a forbidden
//!   unix socket over an allowed path) and a private network namespace (plant
//!   records under addresses of its choosing).
//! - `clone3` fails with `ENOSYS` (its flags live in memory, out of seccomp's
//!   sight); glibc then falls back to `clone`, whose flags the filter reads.
//! - The mount family: `mount`, `umount2`, `open_tree`, `open_tree_attr`,
//!   `move_mount`, `fsopen`, `fsconfig`, `fsmount`, `fspick`,
//!   `mount_setattr`, `pivot_root`, `chroot`: no mount may rearrange which
//!   file a path names (the unix allow list is by path). Symlinks and
//!   renames are ordinary file operations: `cordon run` refuses an agent
//!   that could write a directory on an allowed path
//!   (`capture::unixpath`).
//! - Reaching into other processes: `ptrace`, `process_vm_readv`,
//!   `process_vm_writev`, `pidfd_getfd` (steal a connected socket from a
//!   process outside the cgroup), `kcmp`. Writing `/proc/<pid>/mem` of
//!   processes outside the agent is refused by the agent's Landlock domain
//!   (`capture::landlock`), which seccomp cannot express.
//! - `setsockopt` of IPv6 routing/extension headers (`IPPROTO_IPV6` with
//!   `IPV6_RTHDR`, `IPV6_HOPOPTS`, `IPV6_DSTOPTS`, `IPV6_RTHDRDSTOPTS`,
//!   `IPV6_2292RTHDR`, `IPV6_2292HOPOPTS`, `IPV6_2292DSTOPTS`,
//!   `IPV6_2292PKTOPTIONS`) and IPv4 options (`SOL_IP`/`IP_OPTIONS`, source
//!   routing): a routing header sends the packet to a hop other than the
//!   destination the connect/sendmsg hooks checked. The same headers passed
//!   per packet as `sendmsg()` control messages are invisible to seccomp
//!   (they sit in memory); the kernel side has to check those.
//! - Syscalls of another ABI: the main filter compares syscall numbers of the
//!   native ABI only. On x86_64 kernels with `CONFIG_X86_X32_ABI`, x32 calls
//!   (number | `0x40000000`, same `AUDIT_ARCH_X86_64`) would not match its
//!   rules, so a hand-written guard refuses every number in the x32 range;
//!   a foreign architecture value (i386 via `int 0x80`) kills the process
//!   (in the guard and in the main filter).
//!
//! Refused calls fail with `EPERM` (`clone3`: `ENOSYS`).
//!
//! Three filters are installed, because a seccompiler filter has one action
//! for every match: the main filter (`EPERM`), the `clone3` filter
//! (`ENOSYS`), and the ABI guard. Stacked filters all run on every syscall
//! and the kernel keeps the most severe verdict (KILL > TRAP > ERRNO > ... >
//! ALLOW); between two ERRNO verdicts the most recently installed filter's
//! errno wins. We rely only on "any ERRNO or KILL beats ALLOW": every
//! syscall is refused by at most one filter, so no tie between errnos
//! arises.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("building the agent seccomp filter: {0}")]
    Build(#[source] seccompiler::BackendError),
    #[error("compiling the agent seccomp filter: {0}")]
    Compile(#[source] seccompiler::BackendError),
    #[error("installing the agent seccomp filter: {0}")]
    Apply(#[source] seccompiler::Error),
    #[error("this architecture has no agent seccomp filter")]
    Arch,
}

/// `CLONE_NEW*` flags `clone` may not carry (its flags are argument 0 on
/// x86_64 and aarch64). `CLONE_NEWTIME` can only be asked of `unshare` and
/// `clone3`, both refused whole.
const CLONE_NEW_FLAGS: [u64; 7] = [
    0x0002_0000, // CLONE_NEWNS
    0x0200_0000, // CLONE_NEWCGROUP
    0x0400_0000, // CLONE_NEWUTS
    0x0800_0000, // CLONE_NEWIPC
    0x1000_0000, // CLONE_NEWUSER
    0x2000_0000, // CLONE_NEWPID
    0x4000_0000, // CLONE_NEWNET
];

/// `open_tree_attr(2)` (Linux 6.15; the same number on every architecture),
/// not yet in the libc crate.
const SYS_OPEN_TREE_ATTR: i64 = 467;

/// `(level, optname)` pairs `setsockopt` refuses: IPv6 routing and extension
/// headers, and IPv4 options (source routing).
const REFUSED_SOCKOPTS: [(i32, i32); 9] = [
    (libc::IPPROTO_IPV6, libc::IPV6_2292HOPOPTS),
    (libc::IPPROTO_IPV6, libc::IPV6_2292DSTOPTS),
    (libc::IPPROTO_IPV6, libc::IPV6_2292RTHDR),
    (libc::IPPROTO_IPV6, libc::IPV6_2292PKTOPTIONS),
    (libc::IPPROTO_IPV6, libc::IPV6_HOPOPTS),
    (libc::IPPROTO_IPV6, libc::IPV6_RTHDRDSTOPTS),
    (libc::IPPROTO_IPV6, libc::IPV6_RTHDR),
    (libc::IPPROTO_IPV6, libc::IPV6_DSTOPTS),
    (libc::SOL_IP, libc::IP_OPTIONS),
];

/// `ioctl` requests refused: they insert input into a terminal (TIOCSTI:
/// one byte; TIOCLINUX: selection paste), which the terminal's other
/// readers (the user's shell, outside the cgroup) then run.
const REFUSED_IOCTLS: [u64; 2] = [
    0x5412, // TIOCSTI
    0x541C, // TIOCLINUX
];

/// Syscalls refused whatever their arguments.
const REFUSED_SYSCALLS: [i64; 20] = [
    // io_uring: IORING_OP_SOCKET would sidestep the socket() rules.
    libc::SYS_io_uring_setup,
    // Namespaces.
    libc::SYS_unshare,
    libc::SYS_setns,
    // The mount family.
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_open_tree,
    SYS_OPEN_TREE_ATTR,
    libc::SYS_move_mount,
    libc::SYS_fsopen,
    libc::SYS_fsconfig,
    libc::SYS_fsmount,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    // Other processes.
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_pidfd_getfd,
    libc::SYS_kcmp,
];

/// Compares the low 32 bits of an argument: every argument checked here is
/// an `int` (or `clone`'s flags, which the kernel truncates to 32 bits), so
/// garbage in the upper half cannot steer around a rule.
fn cond(arg: u8, op: Op, value: u64) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(arg, Len::Dword, op, value).map_err(SeccompError::Build)
}

fn rule(conditions: Vec<SeccompCondition>) -> Result<SeccompRule, SeccompError> {
    SeccompRule::new(conditions).map_err(SeccompError::Build)
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(TargetArch::x86_64),
        "aarch64" => Ok(TargetArch::aarch64),
        _ => Err(SeccompError::Arch),
    }
}

/// `AUDIT_ARCH_*` of this build (linux/audit.h: EM_* | 64BIT | LE).
fn audit_arch() -> Result<u32, SeccompError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(0xC000_003E),  // AUDIT_ARCH_X86_64
        "aarch64" => Ok(0xC000_00B7), // AUDIT_ARCH_AARCH64
        _ => Err(SeccompError::Arch),
    }
}

/// The main filter: refused calls fail with EPERM; everything else is
/// allowed.
pub fn agent_filter(allow_unix: bool) -> Result<BpfProgram, SeccompError> {
    let af_unix = libc::AF_UNIX as u64;
    let af_inet = libc::AF_INET as u64;
    let af_inet6 = libc::AF_INET6 as u64;
    let af_netlink = libc::AF_NETLINK as u64;
    let mut not_allowed_family = vec![
        cond(0, Op::Ne, af_inet)?,
        cond(0, Op::Ne, af_inet6)?,
        cond(0, Op::Ne, af_netlink)?,
    ];
    if allow_unix {
        not_allowed_family.push(cond(0, Op::Ne, af_unix)?);
    }
    let socket_rules = vec![
        rule(not_allowed_family)?,
        // Netlink: routing only (what getaddrinfo needs).
        rule(vec![
            cond(0, Op::Eq, af_netlink)?,
            cond(2, Op::Ne, libc::NETLINK_ROUTE as u64)?,
        ])?,
    ];
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    rules.insert(libc::SYS_socket, socket_rules);
    // socketpair() of stream and seqpacket unix sockets makes a pair that
    // stays connected to itself: widely used, and allowed. Any other family
    // is refused (none of them is captured). Datagram ends can be aimed
    // anywhere later (sendto, connect): refused where unix sockets are; so is
    // every other type, since the kernel quietly makes SOCK_RAW a datagram
    // pair. The type's low 4 bits are the type, the rest flags (SOCK_CLOEXEC).
    let mut pair_rules = vec![rule(vec![cond(0, Op::Ne, af_unix)?])?];
    if !allow_unix {
        for ty in 0..16u64 {
            if ty != libc::SOCK_STREAM as u64 && ty != libc::SOCK_SEQPACKET as u64 {
                pair_rules.push(rule(vec![cond(1, Op::MaskedEq(0xf), ty)?])?);
            }
        }
    }
    rules.insert(libc::SYS_socketpair, pair_rules);
    // ioctl's request is an unsigned int: the low 32 bits are compared.
    let ioctl_rules = REFUSED_IOCTLS
        .iter()
        .map(|&request| rule(vec![cond(1, Op::Eq, request)?]))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    for nr in REFUSED_SYSCALLS {
        // An empty rule list matches every call.
        rules.insert(nr, vec![]);
    }
    // One rule per flag: a rule matches when all its conditions hold, the
    // call is refused when any rule matches.
    let clone_rules = CLONE_NEW_FLAGS
        .iter()
        .map(|&flag| rule(vec![cond(0, Op::MaskedEq(flag), flag)?]))
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let sockopt_rules = REFUSED_SOCKOPTS
        .iter()
        .map(|&(level, optname)| {
            rule(vec![
                cond(1, Op::Eq, level as u64)?,
                cond(2, Op::Eq, optname as u64)?,
            ])
        })
        .collect::<Result<Vec<_>, _>>()?;
    rules.insert(libc::SYS_setsockopt, sockopt_rules);
    compile(rules, SeccompAction::Errno(libc::EPERM as u32))
}

/// The second filter: `clone3` fails with ENOSYS, so glibc (fork, spawn,
/// pthread_create) falls back to `clone`, which the main filter inspects.
pub fn clone3_filter() -> Result<BpfProgram, SeccompError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    rules.insert(libc::SYS_clone3, vec![]);
    compile(rules, SeccompAction::Errno(libc::ENOSYS as u32))
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    on_match: SeccompAction,
) -> Result<BpfProgram, SeccompError> {
    // Seccompiler's filters start with an architecture check that kills the
    // process on a foreign arch value.
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, on_match, target_arch()?)
        .map_err(SeccompError::Build)?;
    filter.try_into().map_err(SeccompError::Compile)
}

// Classic BPF opcodes (linux/bpf_common.h) and seccomp_data offsets
// (linux/seccomp.h: int nr; __u32 arch; ...).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20)
const BPF_JGE_K: u16 = 0x05 | 0x30; // BPF_JMP | BPF_JGE | BPF_K
const BPF_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
/// `__X32_SYSCALL_BIT`: x32 syscall numbers are native numbers | this bit.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

/// A conditional jump: skip `jt` instructions when true, `jf` when false.
const fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// The third filter, hand-written: refuse syscall numbers outside the native
/// ABI's range, which the main filter's rules would never match.
pub fn abi_guard_filter() -> Result<BpfProgram, SeccompError> {
    let arch = audit_arch()?;
    Ok(vec![
        // A = seccomp_data.arch
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_ARCH),
        // if A == native arch: skip the kill
        jump(BPF_JEQ_K, arch, 1, 0),
        stmt(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        // A = seccomp_data.nr
        stmt(BPF_LD_W_ABS, SECCOMP_DATA_NR),
        // Numbers >= 0x80000000 (negative, e.g. -1, which a tracer uses to
        // skip a call) are no syscall at all: allow, the kernel says ENOSYS.
        jump(BPF_JGE_K, 0x8000_0000, 2, 0),
        // 0x40000000 <= nr < 0x80000000: the x32 range: refuse.
        jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1),
        stmt(BPF_RET_K, libc::SECCOMP_RET_ERRNO | libc::EPERM as u32),
        stmt(BPF_RET_K, libc::SECCOMP_RET_ALLOW),
    ])
}

/// The three filters, in the order they are installed.
pub fn agent_programs(allow_unix: bool) -> Result<[BpfProgram; 3], SeccompError> {
    Ok([
        agent_filter(allow_unix)?,
        clone3_filter()?,
        abi_guard_filter()?,
    ])
}

/// Installs the three filters on the calling thread; the caller must be
/// single-threaded (other threads would stay unfiltered).
pub fn confine(allow_unix: bool) -> Result<(), SeccompError> {
    // Build everything first, so a build error leaves no half-installed set.
    let programs = agent_programs(allow_unix)?;
    // apply_filter sets PR_SET_NO_NEW_PRIVS, then seccomp(SET_MODE_FILTER).
    for program in &programs {
        seccompiler::apply_filter(program).map_err(SeccompError::Apply)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_both_modes() {
        assert!(!agent_filter(false).unwrap().is_empty());
        assert!(!agent_filter(true).unwrap().is_empty());
        assert!(!clone3_filter().unwrap().is_empty());
    }

    /// Runs the hand-written guard the way the kernel would, for one
    /// seccomp_data (nr, arch).
    fn run_guard(nr: u32, arch: u32) -> u32 {
        let prog = abi_guard_filter().unwrap();
        let mut pc = 0usize;
        let mut a = 0u32;
        loop {
            let insn = &prog[pc];
            match insn.code {
                BPF_LD_W_ABS => {
                    a = if insn.k == SECCOMP_DATA_NR { nr } else { arch };
                    pc += 1;
                }
                BPF_JEQ_K | BPF_JGE_K => {
                    let taken = if insn.code == BPF_JEQ_K {
                        a == insn.k
                    } else {
                        a >= insn.k
                    };
                    pc += 1 + usize::from(if taken { insn.jt } else { insn.jf });
                }
                BPF_RET_K => return insn.k,
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    /// Every syscall the filters refuse whatever the arguments, called with
    /// invalid arguments (so nothing happens even where a call is allowed):
    /// `(name, number, args, errno expected under the filters)`.
    fn refused_calls() -> Vec<(&'static str, i64, [usize; 5], i32)> {
        let bad = usize::MAX; // fd -1, pid -1
        let mut calls: Vec<(&'static str, i64, [usize; 5], i32)> = REFUSED_SYSCALLS
            .iter()
            .map(|&nr| ("", nr, [bad, 0, 0, 0, 0], libc::EPERM))
            .collect();
        // ptrace(PTRACE_ATTACH, pid -1) and kcmp(pid -1, pid -1, ...).
        calls.push(("ptrace", libc::SYS_ptrace, [16, bad, 0, 0, 0], libc::EPERM));
        calls.push(("clone3", libc::SYS_clone3, [0, 0, 0, 0, 0], libc::ENOSYS));
        // Allowed, these fail with EBADF (fd -1) and EFAULT (no array).
        calls.push((
            "ioctl TIOCSTI",
            libc::SYS_ioctl,
            [bad, 0x5412, 0, 0, 0],
            libc::EPERM,
        ));
        calls.push((
            "ioctl TIOCLINUX",
            libc::SYS_ioctl,
            [bad, 0x541C, 0, 0, 0],
            libc::EPERM,
        ));
        // Garbage above the low 32 bits of the request changes nothing.
        calls.push((
            "ioctl TIOCSTI, high bits set",
            libc::SYS_ioctl,
            [bad, 0xffff_ffff_0000_5412, 0, 0, 0],
            libc::EPERM,
        ));
        calls.push((
            "ioctl FIONREAD",
            libc::SYS_ioctl,
            [bad, 0x541B, 0, 0, 0],
            libc::EBADF,
        ));
        let dgram_cloexec = (libc::SOCK_DGRAM | libc::SOCK_CLOEXEC) as usize;
        calls.push((
            "socketpair dgram",
            libc::SYS_socketpair,
            [libc::AF_UNIX as usize, dgram_cloexec, 0, 0, 0],
            libc::EPERM,
        ));
        calls.push((
            "socketpair raw (a datagram pair to the kernel)",
            libc::SYS_socketpair,
            [libc::AF_UNIX as usize, libc::SOCK_RAW as usize, 0, 0, 0],
            libc::EPERM,
        ));
        calls.push((
            "socketpair of another family",
            libc::SYS_socketpair,
            [libc::AF_TIPC as usize, libc::SOCK_STREAM as usize, 0, 0, 0],
            libc::EPERM,
        ));
        calls.push((
            "socketpair seqpacket",
            libc::SYS_socketpair,
            [
                libc::AF_UNIX as usize,
                libc::SOCK_SEQPACKET as usize,
                0,
                0,
                0,
            ],
            libc::EFAULT,
        ));
        calls.push((
            "socketpair stream",
            libc::SYS_socketpair,
            [libc::AF_UNIX as usize, libc::SOCK_STREAM as usize, 0, 0, 0],
            libc::EFAULT,
        ));
        calls.push((
            "x32 getpid",
            libc::SYS_getpid | i64::from(X32_SYSCALL_BIT),
            [0; 5],
            libc::EPERM,
        ));
        calls
    }

    /// Installs the three filters in a forked child (and nothing else: no
    /// Landlock, which refuses some of these too) and makes each refused
    /// call there. Remove a rule and its call returns EFAULT, EBADF,
    /// EINVAL, ESRCH, ... instead (as root, where no permission check says
    /// EPERM first).
    #[test]
    #[allow(unsafe_code)]
    fn refused_syscalls_fail_in_a_filtered_child() {
        // Everything the child needs is allocated before fork: libtest runs
        // tests on several threads, so the child may only make syscalls.
        let programs = agent_programs(false).unwrap();
        let calls = refused_calls();
        let mut results = vec![0i32; calls.len()];
        let mut fds = [0i32; 2];
        // SAFETY: fds is a live array of two c_ints.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child makes syscalls only (apply_filter: prctl and
        // seccomp) and leaves with _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            for program in &programs {
                if seccompiler::apply_filter(program).is_err() {
                    // SAFETY: leaves the child.
                    unsafe { libc::_exit(2) };
                }
            }
            let mut out = [0i32; 64];
            for (slot, (_, nr, a, _)) in out.iter_mut().zip(&calls) {
                // SAFETY: invalid descriptors, pids and null pointers: the
                // kernel refuses or rejects each call without side effects.
                let rc = unsafe { libc::syscall(*nr, a[0], a[1], a[2], a[3], a[4]) };
                // SAFETY: reads this thread's errno.
                *slot = if rc < 0 {
                    unsafe { *libc::__errno_location() }
                } else {
                    0
                };
            }
            // SAFETY: out is a live buffer; the write end is open; then
            // leave the child.
            unsafe {
                libc::write(fds[1], out.as_ptr().cast(), std::mem::size_of_val(&out));
                libc::_exit(0);
            }
        }
        let mut status = 0;
        // SAFETY: status is a live c_int.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "filtered child failed: status {status:#x}"
        );
        let mut out = [0i32; 64];
        // SAFETY: out is a live, writable buffer of the size passed.
        let n = unsafe { libc::read(fds[0], out.as_mut_ptr().cast(), std::mem::size_of_val(&out)) };
        assert_eq!(n as usize, std::mem::size_of_val(&out));
        // SAFETY: closing the pipe we made.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        results.copy_from_slice(&out[..calls.len()]);
        for ((name, nr, _, want), got) in calls.iter().zip(&results) {
            assert_eq!(
                got, want,
                "syscall {nr} {name}: errno {got}, expected {want}"
            );
        }
    }

    #[test]
    fn abi_guard_refuses_x32_and_foreign_arches() {
        let native = audit_arch().unwrap();
        let allow = libc::SECCOMP_RET_ALLOW;
        let eperm = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;
        let kill = libc::SECCOMP_RET_KILL_PROCESS;
        assert_eq!(run_guard(libc::SYS_getpid as u32, native), allow);
        assert_eq!(run_guard(0x3fff_ffff, native), allow);
        assert_eq!(run_guard(X32_SYSCALL_BIT, native), eperm);
        assert_eq!(
            run_guard(X32_SYSCALL_BIT | libc::SYS_unshare as u32, native),
            eperm
        );
        assert_eq!(run_guard(0x7fff_ffff, native), eperm);
        assert_eq!(run_guard(u32::MAX, native), allow);
        assert_eq!(run_guard(0x8000_0000, native), allow);
        // AUDIT_ARCH_I386
        assert_eq!(run_guard(20, 0x4000_0003), kill);
    }
}
