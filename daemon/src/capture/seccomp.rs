//! The seccomp filter `cordon run` installs before exec, for what the cgroup
//! hooks cannot see: AF_PACKET and other non-inet families, unix sockets
//! (when the kernel refuses the BPF LSM programs that would enforce the
//! unix allow list), and io_uring (whose IORING_OP_SOCKET bypasses
//! seccomp's view of socket()). Inherited by every descendant; cannot be
//! removed. Sets no_new_privs, so agents cannot gain privileges via setuid.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op, SeccompCondition,
    SeccompFilter, SeccompRule,
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

fn cond(arg: u8, op: Op, value: u64) -> Result<SeccompCondition, SeccompError> {
    SeccompCondition::new(arg, Len::Dword, op, value).map_err(SeccompError::Build)
}

/// The filter: refused calls fail with EPERM; everything else is allowed.
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
        SeccompRule::new(not_allowed_family).map_err(SeccompError::Build)?,
        // Netlink: routing only (what getaddrinfo needs).
        SeccompRule::new(vec![
            cond(0, Op::Eq, af_netlink)?,
            cond(2, Op::Ne, libc::NETLINK_ROUTE as u64)?,
        ])
        .map_err(SeccompError::Build)?,
    ];
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    rules.insert(libc::SYS_socket, socket_rules);
    // socketpair() makes only unnamed, connected pairs: harmless, and widely used.
    rules.insert(libc::SYS_io_uring_setup, vec![]);
    let arch = match std::env::consts::ARCH {
        "x86_64" => seccompiler::TargetArch::x86_64,
        "aarch64" => seccompiler::TargetArch::aarch64,
        _ => return Err(SeccompError::Arch),
    };
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(SeccompError::Build)?;
    filter.try_into().map_err(SeccompError::Compile)
}

/// Installs the filter on the calling (single-threaded) process.
pub fn confine(allow_unix: bool) -> Result<(), SeccompError> {
    let program = agent_filter(allow_unix)?;
    seccompiler::apply_filter(&program).map_err(SeccompError::Apply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_compiles_for_both_modes() {
        assert!(!agent_filter(false).unwrap().is_empty());
        assert!(!agent_filter(true).unwrap().is_empty());
    }
}
