//! Identity: turns the kernel's attestation into a [`Principal`]. The agent
//! is whoever owns the pinned cgroup the kernel saw the connect come from;
//! nothing the agent says is taken into account. Humans are identified by
//! OIDC ID tokens: see [`oidc`].

pub mod logins;
pub mod oidc;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::RwLock,
};

use crate::{capture::Attested, config::AgentName};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("connection came from cgroup {cgroup_id}, which is not a pinned agent cgroup")]
    UnknownAgent { cgroup_id: u64 },
    #[error("identity registry lock poisoned")]
    Poisoned,
}

/// Who is on the other end of a captured connection.
#[derive(Debug, Clone)]
pub struct Principal {
    pub agent: AgentName,
    pub agent_cgroup: PathBuf,
}

/// Pinned agent cgroups, by kernel cgroup id.
#[derive(Default)]
pub struct Registry {
    by_cgroup: RwLock<HashMap<u64, (AgentName, PathBuf)>>,
}

impl Registry {
    /// Records that `id` is `agent`'s cgroup; returns the cgroup id the agent
    /// had before, if it moved.
    pub fn register(&self, id: u64, agent: AgentName, path: PathBuf) -> Option<u64> {
        let mut map = self.by_cgroup.write().unwrap_or_else(|p| p.into_inner());
        let previous = map
            .iter()
            .find(|(other, (name, _))| **other != id && *name == agent)
            .map(|(other, _)| *other);
        if let Some(prev) = previous {
            map.remove(&prev);
        }
        map.insert(id, (agent, path));
        previous
    }

    pub fn resolve(&self, attested: &Attested) -> Result<Principal, IdentityError> {
        let map = self.by_cgroup.read().map_err(|_| IdentityError::Poisoned)?;
        map.get(&attested.agent_cgroup_id)
            .map(|(agent, path)| Principal {
                agent: agent.clone(),
                agent_cgroup: path.clone(),
            })
            .ok_or(IdentityError::UnknownAgent {
                cgroup_id: attested.agent_cgroup_id,
            })
    }

    /// The cgroup directory of `agent`, if pinned.
    pub fn cgroup_of(&self, agent: &str) -> Option<PathBuf> {
        let map = self.by_cgroup.read().unwrap_or_else(|p| p.into_inner());
        map.values()
            .find(|(name, _)| name.as_str() == agent)
            .map(|(_, p)| p.clone())
    }

    /// The agent whose cgroup contains `path` (itself or a descendant).
    pub fn agent_containing(&self, path: &Path) -> Option<AgentName> {
        let map = self.by_cgroup.read().unwrap_or_else(|p| p.into_inner());
        map.values()
            .find(|(_, cg)| path.starts_with(cg))
            .map(|(name, _)| name.clone())
    }

    /// (agent, cgroup path, cgroup id), sorted by agent.
    pub fn list(&self) -> Vec<(AgentName, PathBuf, u64)> {
        let map = self.by_cgroup.read().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = map
            .iter()
            .map(|(id, (n, p))| (n.clone(), p.clone(), *id))
            .collect();
        v.sort();
        v
    }
}

/// The executable of a process, as the kernel reports it now.
pub fn exe_of(pid: u32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attested(agent_cgroup_id: u64) -> Attested {
        Attested {
            orig_dst: "10.0.0.5:5432".parse().unwrap(),
            tgid: 1,
            uid: 0,
            gid: 0,
            comm: "x".into(),
            cgroup_id: agent_cgroup_id,
            agent_cgroup_id,
        }
    }

    #[test]
    fn resolves_only_registered_cgroups_and_follows_repins() {
        let r = Registry::default();
        let a = AgentName::parse("a").unwrap();
        assert_eq!(r.register(10, a.clone(), "/cg/a".into()), None);
        assert_eq!(r.resolve(&attested(10)).unwrap().agent, a);
        assert_eq!(
            r.resolve(&attested(0)).unwrap_err(),
            IdentityError::UnknownAgent { cgroup_id: 0 }
        );
        // Re-pinning the agent elsewhere retires the old cgroup id.
        assert_eq!(r.register(11, a.clone(), "/cg/b".into()), Some(10));
        assert!(r.resolve(&attested(10)).is_err());
        assert_eq!(r.agent_containing(Path::new("/cg/b/child")), Some(a));
        assert_eq!(r.agent_containing(Path::new("/cg/a")), None);
    }
}
