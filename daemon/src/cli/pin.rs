//! `cordon pin --agent NAME --cgroup PATH`

use std::path::Path;

use crate::control::Request;

pub fn run(config: &Path, agent: &str, cgroup: &Path) -> anyhow::Result<()> {
    let cgroup = std::fs::canonicalize(cgroup)
        .map_err(|e| anyhow::anyhow!("cgroup {}: {e}", cgroup.display()))?;
    let data = super::call(
        config,
        &Request::Pin {
            agent: agent.to_owned(),
            cgroup,
        },
    )?;
    println!(
        "pinned agent {agent} to {} ({} programs attached)",
        data["cgroup"].as_str().unwrap_or("?"),
        data["links"]
    );
    Ok(())
}
