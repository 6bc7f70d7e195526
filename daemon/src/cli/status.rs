//! `cordon status [--json]`: exits non-zero when the daemon is unreachable.

use std::path::Path;

use super::sessions::escape;
use crate::control::{Request, StatusReport};

pub fn run(config: &Path, json: bool) -> anyhow::Result<()> {
    let s: StatusReport = super::call_typed(config, &Request::Status)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("daemon pid     {}", s.pid);
    // Every string is escaped for the terminal (see `sessions::escape`).
    let path = |p: &Path| escape(&p.to_string_lossy()).into_owned();
    println!("config         {}", path(&s.config));
    println!("listening      {}", escape(&s.listen.join(", ")));
    println!("bpffs          {}", path(&s.bpffs));
    println!("programs       {}", escape(&s.programs.join(" ")));
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
        s.daemon_cgroup.as_deref().map_or_else(|| "-".into(), path),
        escape(&s.daemon_program)
    );
    println!("agents");
    for a in &s.agents {
        println!(
            "  {:<20} {} (id {}, {} pinned links)",
            escape(&a.name),
            path(&a.cgroup),
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
