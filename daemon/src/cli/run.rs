//! `cordon run --agent NAME -- CMD...`: the daemon moves this very process
//! into the agent's cgroup, then it execs CMD, so every socket CMD creates is
//! captured. Runs as the invoking user, under the seccomp filter of
//! `capture::seccomp` (no packet/raw/unix sockets, no io_uring, no_new_privs).

use std::{ffi::OsString, os::unix::process::CommandExt as _, path::Path, process::Command};

use anyhow::bail;

use crate::control::{Joined, Request};

pub fn run(config: &Path, agent: &str, command: &[OsString]) -> anyhow::Result<()> {
    let Some((program, args)) = command.split_first() else {
        bail!("no command given: use `cordon run --agent NAME -- CMD [ARGS...]`");
    };
    let joined: Joined = super::call_typed(
        config,
        &Request::Join {
            agent: agent.to_owned(),
        },
    )?;
    // Unix sockets stay usable only where the kernel enforces the daemon's
    // allow list (BPF LSM); otherwise they are refused outright.
    crate::capture::seccomp::confine(joined.unix_sockets)?;
    let err = Command::new(program).args(args).exec();
    bail!("cannot run {}: {err}", program.to_string_lossy())
}
