//! `cordon pin --agent NAME --cgroup PATH`

use std::path::Path;

use crate::control::{Pinned, Request};

pub fn run(config: &Path, agent: &str, cgroup: &Path) -> anyhow::Result<()> {
    let cgroup = std::fs::canonicalize(cgroup)
        .map_err(|e| anyhow::anyhow!("cgroup {}: {e}", cgroup.display()))?;
    let data: Pinned = super::call_typed(
        config,
        &Request::Pin {
            agent: agent.to_owned(),
            cgroup,
        },
    )?;
    println!(
        "pinned agent {agent} to {} (cgroup id {}, {} programs attached)",
        data.cgroup.display(),
        data.cgroup_id,
        data.links
    );
    Ok(())
}
