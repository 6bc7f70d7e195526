//! `cordon status [--json]`: exits non-zero when the daemon is unreachable.

use std::path::Path;

use crate::control::{Request, StatusReport};

pub fn run(config: &Path, json: bool) -> anyhow::Result<()> {
    let s: StatusReport = super::call_typed(config, &Request::Status)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("daemon pid     {}", s.pid);
    println!("config         {}", s.config.display());
    println!("listening      {}", s.listen.join(", "));
    println!("bpffs          {}", s.bpffs.display());
    println!("programs       {}", s.programs.join(" "));
    println!(
        "BPF LSM        {}",
        if s.lsm_active {
            "active (unix-socket allow list and socket families enforced in the kernel)"
        } else {
            "refused by this kernel: `cordon run` confines agents with seccomp instead"
        }
    );
    println!(
        "daemon cgroup  {} ({})",
        s.daemon_cgroup
            .as_deref()
            .map_or_else(|| "-".into(), |p| p.display().to_string()),
        s.daemon_program
    );
    println!("agents");
    for a in &s.agents {
        println!(
            "  {:<20} {} (id {}, {} pinned links)",
            a.name,
            a.cgroup.display(),
            a.cgroup_id,
            a.pinned_links
        );
    }
    let c = &s.sessions;
    println!(
        "sessions       {} recorded; since start: {} allowed, {} denied, {} active",
        c.recorded, c.allowed, c.denied, c.active
    );
    Ok(())
}
