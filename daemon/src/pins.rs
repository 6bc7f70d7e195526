//! Runtime pins (`cordon pin`) remembered across daemon restarts, in
//! `<state_dir>/pins.json`; they take precedence over the config's cgroups.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

fn file(state_dir: &Path) -> PathBuf {
    state_dir.join("pins.json")
}

/// agent name -> cgroup directory.
pub fn load(state_dir: &Path) -> BTreeMap<String, PathBuf> {
    std::fs::read(file(state_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

pub fn remember(state_dir: &Path, agent: &str, cgroup: &Path) -> std::io::Result<()> {
    let mut pins = load(state_dir);
    pins.insert(agent.to_owned(), cgroup.to_owned());
    let tmp = state_dir.join("pins.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&pins).unwrap_or_default())?;
    std::fs::rename(tmp, file(state_dir))
}
