//! The Landlock domain `cordon run` puts every agent in, before exec.
//!
//! Why: the agent may share its uid with processes outside its cgroup (the
//! user's shell, an editor, another agent). Classic permission checks would
//! then let it reach into them: `ptrace` them, write their
//! `/proc/<pid>/mem`, read their memory, take their file descriptors, and so
//! run `connect()` (or use an already connected socket) where no cgroup hook
//! sees it. seccomp refuses the syscalls that do this by pid (`ptrace`,
//! `process_vm_*`, `pidfd_getfd`, `kcmp`; see `capture::seccomp`), but not
//! `open("/proc/<pid>/mem")`, which is an ordinary path. A process in a
//! Landlock domain fails every ptrace access check (`PTRACE_MODE_*`, the
//! check behind `/proc/<pid>/mem`, `/proc/<pid>/fd`, `/proc/<pid>/maps`, ...)
//! against any process outside its domain (or a nested one), whatever the
//! uids. Every `cordon run` makes a fresh domain, so two agent sessions,
//! even of the same agent and uid, cannot reach into each other either.
//!
//! What the domain restricts otherwise: no file access. A ruleset must
//! handle at least one access right, so it handles
//! `LANDLOCK_ACCESS_FS_MAKE_BLOCK` (making block device nodes, which needs
//! `CAP_MKNOD` anyway) and `LANDLOCK_ACCESS_FS_REFER`, and one rule grants
//! both beneath `/`. The rule matters: any domain that handles a file-system
//! right refuses linking or renaming files across directories (`EXDEV`)
//! unless a rule grants `REFER` (Landlock ABI >= 2). On ABI 1 (Linux 5.13 to
//! 5.18) `REFER` does not exist and such renames cannot be allowed:
//! [`Domain::cross_directory_renames`] says so. (Files outside the tree of
//! `/` as `cordon run` sees it are not covered by the rule; the agent has no
//! way to reach any: no mounts, no chroot, and other processes'
//! `/proc/<pid>/root` is behind the ptrace check.) Like any domain that
//! handles a file-system right, it also refuses `mount`, `umount`, remounts,
//! `move_mount` and `pivot_root`, which the seccomp filter refuses anyway.
//!
//! Not enabled: Landlock's scopes (ABI 6). The abstract-unix-socket scope
//! would stop the agent reaching abstract sockets outside its domain, which
//! the daemon's unix allow list may name; the signal scope would change
//! which processes it may signal.
//!
//! Landlock is required: without it (`ENOSYS`: not built in; `EOPNOTSUPP`:
//! built in but not enabled at boot, see `lsm=`) `cordon run` refuses to
//! start the agent.

use std::{
    ffi::CStr,
    io, mem,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `landlock_create_ruleset` flag: return the ABI version.
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1 << 0;
const LANDLOCK_ACCESS_FS_MAKE_BLOCK: u64 = 1 << 11;
/// ABI >= 2.
const LANDLOCK_ACCESS_FS_REFER: u64 = 1 << 13;
const LANDLOCK_RULE_PATH_BENEATH: libc::c_uint = 1;

/// The first field of `struct landlock_ruleset_attr`. The kernel accepts a
/// shorter struct and treats the fields left out (`handled_access_net`,
/// `scoped`) as 0, so this size works with every ABI.
#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

/// `struct landlock_path_beneath_attr` (packed in the UAPI header).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error(
        "Landlock is not available on this kernel; `cordon run` needs it to keep agents \
         out of other processes (kernel >= 5.13 with CONFIG_SECURITY_LANDLOCK=y and `landlock` \
         in the active LSMs, see /sys/kernel/security/lsm and the lsm= boot parameter)"
    )]
    Unavailable(#[source] io::Error),
    #[error("querying the Landlock ABI version: {0}")]
    Version(#[source] io::Error),
    #[error("setting no_new_privs: {0}")]
    NoNewPrivs(#[source] io::Error),
    #[error("creating the agent's Landlock ruleset: {0}")]
    CreateRuleset(#[source] io::Error),
    #[error("opening / for the agent's Landlock rule: {0}")]
    OpenRoot(#[source] io::Error),
    #[error("adding the agent's Landlock rule: {0}")]
    AddRule(#[source] io::Error),
    #[error("entering the agent's Landlock domain: {0}")]
    RestrictSelf(#[source] io::Error),
}

/// The domain the caller entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Domain {
    /// The kernel's Landlock ABI version.
    pub abi: u32,
    /// False on ABI 1: linking or renaming across directories fails with
    /// `EXDEV` inside the domain.
    pub cross_directory_renames: bool,
}

/// Maps the version query's result; ENOSYS/EOPNOTSUPP mean "no Landlock".
fn classify_version(rc: libc::c_long, err: io::Error) -> Result<u32, LandlockError> {
    if let Ok(abi) = u32::try_from(rc) {
        if abi > 0 {
            return Ok(abi);
        }
    }
    match err.raw_os_error() {
        Some(libc::ENOSYS | libc::EOPNOTSUPP) => Err(LandlockError::Unavailable(err)),
        _ => Err(LandlockError::Version(err)),
    }
}

/// The Landlock ABI version of the running kernel.
#[allow(unsafe_code)]
pub fn abi_version() -> Result<u32, LandlockError> {
    // SAFETY: with a null attr, size 0 and the VERSION flag the kernel reads
    // no memory; it returns the version or -1 with errno.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<RulesetAttr>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    classify_version(rc, io::Error::last_os_error())
}

/// Puts the calling thread (and everything it execs or forks from now on)
/// in a new Landlock domain that restricts only ptrace-style access to
/// processes outside it. Sets no_new_privs. The caller must be
/// single-threaded: other threads stay outside the domain.
#[allow(unsafe_code)]
pub fn restrict_self() -> Result<Domain, LandlockError> {
    let abi = abi_version()?;
    let cross_directory_renames = abi >= 2;
    let handled = if cross_directory_renames {
        LANDLOCK_ACCESS_FS_MAKE_BLOCK | LANDLOCK_ACCESS_FS_REFER
    } else {
        LANDLOCK_ACCESS_FS_MAKE_BLOCK
    };
    let attr = RulesetAttr {
        handled_access_fs: handled,
    };
    // SAFETY: attr is a live RulesetAttr and its exact size is passed; the
    // kernel only reads it. The result is checked below.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::from_ref(&attr),
            mem::size_of::<RulesetAttr>(),
            0u32,
        )
    };
    let ruleset = owned_fd(rc).map_err(LandlockError::CreateRuleset)?;

    if cross_directory_renames {
        let root = open_root().map_err(LandlockError::OpenRoot)?;
        let beneath = PathBeneathAttr {
            allowed_access: handled,
            parent_fd: root.as_raw_fd(),
        };
        // SAFETY: beneath is a live PathBeneathAttr (the packed UAPI layout);
        // the kernel only reads it. Both fds stay open across the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset.as_raw_fd(),
                LANDLOCK_RULE_PATH_BENEATH,
                std::ptr::from_ref(&beneath),
                0u32,
            )
        };
        if rc != 0 {
            return Err(LandlockError::AddRule(io::Error::last_os_error()));
        }
    }

    // landlock_restrict_self needs no_new_privs (or CAP_SYS_ADMIN); the
    // seccomp filters need it too. It is set here, explicitly, first.
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) };
    if rc != 0 {
        return Err(LandlockError::NoNewPrivs(io::Error::last_os_error()));
    }
    // SAFETY: integer arguments only; the ruleset fd stays open across the
    // call.
    let rc = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), 0u32) };
    if rc != 0 {
        return Err(LandlockError::RestrictSelf(io::Error::last_os_error()));
    }
    Ok(Domain {
        abi,
        cross_directory_renames,
    })
}

/// Takes ownership of a descriptor a syscall returned (or its error).
#[allow(unsafe_code)]
fn owned_fd(rc: libc::c_long) -> io::Result<OwnedFd> {
    let fd = libc::c_int::try_from(rc).map_err(|_| io::Error::last_os_error())?;
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a descriptor the kernel just returned to us; nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `/`, opened O_PATH: the parent of the one rule.
#[allow(unsafe_code)]
fn open_root() -> io::Result<OwnedFd> {
    const ROOT: &CStr = c"/";
    // SAFETY: ROOT is a NUL-terminated string that outlives the call.
    let fd = unsafe {
        libc::open(
            ROOT.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    owned_fd(libc::c_long::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_landlock_is_unavailable_not_a_generic_error() {
        for errno in [libc::ENOSYS, libc::EOPNOTSUPP] {
            let e = classify_version(-1, io::Error::from_raw_os_error(errno)).unwrap_err();
            assert!(matches!(e, LandlockError::Unavailable(_)), "{e:?}");
            assert!(e.to_string().contains("not available"), "{e}");
        }
        let e = classify_version(-1, io::Error::from_raw_os_error(libc::EINVAL)).unwrap_err();
        assert!(matches!(e, LandlockError::Version(_)), "{e:?}");
        assert_eq!(
            classify_version(4, io::Error::from_raw_os_error(0)).unwrap(),
            4
        );
    }

    #[test]
    fn uapi_struct_sizes() {
        assert_eq!(mem::size_of::<RulesetAttr>(), 8);
        assert_eq!(mem::size_of::<PathBeneathAttr>(), 12);
    }
}
