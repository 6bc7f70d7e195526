//! `cordon run --agent NAME -- CMD...`: the daemon moves this very process
//! into the agent's cgroup, then it confines itself and execs CMD, so every
//! socket CMD creates is captured. Runs as the invoking user.
//!
//! Confinement, in order, all inherited by every descendant and irremovable:
//! 1. a fresh Landlock domain (`capture::landlock`): the agent cannot ptrace,
//!    open `/proc/<pid>/mem` of, or take descriptors from any process outside
//!    it. No Landlock on this kernel: the agent is not started.
//! 2. the seccomp filters (`capture::seccomp`): no packet/raw/unix sockets
//!    outside what the kernel enforces, no io_uring, no namespaces, no
//!    mounts, no ptrace-style syscalls, no IP routing/extension headers by
//!    setsockopt, no x32 syscalls; `clone3` fails with ENOSYS.
//! 3. no_new_privs (set by both).
//!
//! Both apply to the calling thread only, so this process must be (and is:
//! the CLI starts no runtime but a short-lived one to refresh a login)
//! single-threaded here; it checks.
//!
//! With `[identity.oidc]` and a `cordon login` (held by the daemon for this
//! uid) or `CORDON_ID_TOKEN`, the daemon records the verified human as the
//! one on whose behalf the agent's sessions run.

use std::{ffi::OsString, fs, os::unix::process::CommandExt as _, path::Path, process::Command};

use anyhow::{bail, Context as _};

use crate::capture::{landlock, seccomp};
use crate::control::{Joined, Request};

pub fn run(config: &Path, agent: &str, command: &[OsString]) -> anyhow::Result<()> {
    let Some((program, args)) = command.split_first() else {
        bail!("no command given: use `cordon run --agent NAME -- CMD [ARGS...]`");
    };
    check_stdio_sockets()?;
    let id_token = super::login::presented_token()?;
    let joined: Joined = super::call_typed(
        config,
        &Request::Join {
            agent: agent.to_owned(),
            id_token,
        },
    )?;
    // Earlier versions kept the login in a file this uid (so the agent) can read.
    if let Some(cache) = super::login::legacy_cache_path().filter(|p| p.exists()) {
        eprintln!(
            "cordon: warning: {} holds a login left by an earlier Cordon, and the agent (uid {}) can read it; \
             `cordon logout` (or `cordon login`) removes it",
            cache.display(),
            nix_uid()
        );
    }
    ensure_single_threaded()?;
    let domain = landlock::restrict_self()
        .context("refusing to start the agent without its Landlock domain")?;
    if !domain.cross_directory_renames {
        eprintln!(
            "cordon: warning: Landlock ABI {} (Linux < 5.19): the agent cannot link or rename \
             files across directories (EXDEV)",
            domain.abi
        );
    }
    // Unix sockets stay usable only where the kernel enforces the daemon's
    // allow list (BPF LSM); otherwise they are refused outright.
    seccomp::confine(joined.unix_sockets)?;
    // A socket keeps the cgroup of the process that made it: one inherited
    // from the launcher would be outside every hook. Descriptors above
    // stderr are not passed on (close-on-exec; stdio was checked above).
    close_inherited_descriptors()?;
    // The human's login is theirs, not the agent's.
    let err = Command::new(program)
        .args(args)
        .env_remove(super::login::TOKEN_ENV)
        .exec();
    bail!("cannot run {}: {err}", program.to_string_lossy())
}

/// Standard input, output and error may be sockets only when connected unix
/// streams (a pipe-like end: a systemd journal stream, an ssh session's
/// socketpair). Made outside the agent's cgroup, any other socket is outside
/// capture: a network socket can be disconnected (connect AF_UNSPEC) and
/// connected anywhere, a datagram one aimed anywhere with `sendto`, and an
/// unconnected or listening one can connect or accept.
#[allow(unsafe_code)]
fn check_stdio_sockets() -> anyhow::Result<()> {
    for (fd, name) in [
        (0, "standard input"),
        (1, "standard output"),
        (2, "standard error"),
    ] {
        // SAFETY: fstat writes into a zeroed stat buffer we own.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            continue;
        }
        let domain = socket_option(fd, libc::SO_DOMAIN)
            .map_err(|e| anyhow::anyhow!("{name} is a socket whose family cannot be read: {e}"))?;
        if domain != libc::AF_UNIX {
            bail!(
                "{name} is a network socket: made outside the agent's cgroup, it is outside capture, \
                 and even a connected one can be disconnected and connected anywhere; {START_WITH}"
            );
        }
        let ty = socket_option(fd, libc::SO_TYPE)
            .map_err(|e| anyhow::anyhow!("{name} is a socket whose type cannot be read: {e}"))?;
        if ty != libc::SOCK_STREAM && ty != libc::SOCK_SEQPACKET {
            bail!(
                "{name} is a datagram socket: the agent could send anywhere through it, outside capture; \
                 {START_WITH}"
            );
        }
        // SAFETY: getpeername writes at most `len` bytes into the buffer.
        let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        if unsafe { libc::getpeername(fd, (&raw mut addr).cast(), &mut len) } != 0 {
            bail!(
                "{name} is an unconnected or listening socket: the agent could connect or accept through it, \
                 outside capture; {START_WITH}"
            );
        }
    }
    Ok(())
}

/// What stdio may be instead, for the refusals above.
const START_WITH: &str =
    "start the agent with a pipe, a file, a terminal or a connected unix socket there";

/// An int-valued SOL_SOCKET option of `fd`.
#[allow(unsafe_code)]
fn socket_option(fd: libc::c_int, option: libc::c_int) -> std::io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the option writes at most `len` bytes into `value`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&raw mut value).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Marks every descriptor above 2 close-on-exec.
#[allow(unsafe_code)]
fn close_inherited_descriptors() -> anyhow::Result<()> {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags of this process.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if rc == 0 {
        return Ok(());
    }
    // Kernels before 5.11: one by one.
    let fds: Vec<i32> = fs::read_dir("/proc/self/fd")
        .context("listing this process's descriptors")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&fd| fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: F_SETFD on a descriptor number; a stale one fails with EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

#[allow(unsafe_code)]
fn nix_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// Landlock and seccomp confine only the calling thread: refuse to go on if
/// anything started a second one.
fn ensure_single_threaded() -> anyhow::Result<()> {
    // A runtime that refreshed the login has been dropped (its threads
    // joined); give the kernel a moment to remove their task entries.
    let mut threads = 0;
    for _ in 0..50 {
        threads = fs::read_dir("/proc/self/task")
            .context("counting this process's threads in /proc/self/task")?
            .count();
        if threads == 1 {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    if threads != 1 {
        bail!("internal error: `cordon run` has {threads} threads; it must confine a single one");
    }
    Ok(())
}
