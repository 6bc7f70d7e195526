//! Control requests of the SSH gateway: `ssh_config` (what an agent's ssh client needs: Cordon's
//! host key and the hosts the agent may reach) and `ssh_trust` (record an upstream's host key).

use serde::{Deserialize, Serialize};

use super::{reply, Response};
use crate::{config::Protocol, proxy::Gateway};

/// `ssh_config` reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct SshClientConfig {
    /// Cordon's agent-side host key, `<algorithm> <base64>`.
    pub host_key: String,
    pub hosts: Vec<SshHost>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SshHost {
    pub resource: String,
    pub address: std::net::SocketAddr,
    /// The login the agent's grant pins, if any.
    pub login: Option<String>,
}

/// `ssh_trust` reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct SshTrusted {
    pub resource: String,
    pub key: String,
    pub fingerprint: String,
    /// The key recorded before, when it was replaced.
    pub previous: Option<String>,
}

/// The ssh resources `agent` holds a live grant on. Public information (host keys and
/// addresses), so any local user may ask.
pub fn ssh_config(gw: &Gateway, agent: &str) -> Result<Response, Response> {
    let name = gw
        .config
        .agent(agent)
        .map(|a| a.name.clone())
        .ok_or_else(|| Response::err(format!("no agent is named `{agent}` in the config")))?;
    let now = time::OffsetDateTime::now_utc();
    let hosts = gw
        .config
        .resources
        .iter()
        .filter(|r| r.protocol == Protocol::Ssh)
        .filter_map(|r| {
            // Static or just-in-time: any grant that would admit the agent now.
            let grant =
                crate::grants::check(&gw.config, gw.approvals.active(), &name, &r.name, now)
                    .ok()?;
            if grant.id.is_some() {
                // A just-in-time grant decides: its login pin, if any.
                return Some(SshHost {
                    resource: r.name.clone(),
                    address: r.address,
                    login: grant.pins.login,
                });
            }
            let live: Vec<_> = gw
                .config
                .grants
                .iter()
                .filter(|g| g.agent == name && g.resource == r.name && g.expires > now)
                .collect();
            // One pinned login across the live grants is what the agent should use.
            let mut logins: Vec<&str> = live.iter().filter_map(|g| g.login.as_deref()).collect();
            logins.dedup();
            let login = match (logins.as_slice(), live.iter().any(|g| g.login.is_none())) {
                ([one], false) => Some((*one).to_owned()),
                // Grants without a pin, or with several: the agent names the user.
                _ => None,
            };
            Some(SshHost {
                resource: r.name.clone(),
                address: r.address,
                login,
            })
        })
        .collect();
    Ok(reply(&SshClientConfig {
        host_key: gw.ssh.host_key_line(),
        hosts,
    }))
}

/// Connects to the upstream of `resource`, and records the host key it presents as trusted.
/// A key pinned in the config wins (nothing is recorded); a different recorded key is
/// replaced only with `replace`.
pub async fn ssh_trust(gw: &Gateway, resource: &str, replace: bool) -> Result<Response, Response> {
    let r = gw
        .config
        .resources
        .iter()
        .find(|r| r.name == resource)
        .ok_or_else(|| Response::err(format!("no resource is named `{resource}`")))?;
    let ssh = r
        .ssh
        .as_ref()
        .ok_or_else(|| Response::err(format!("resource `{resource}` is not an ssh resource")))?;
    if !ssh.host_keys.is_empty() {
        return Err(Response::err(format!(
            "resource `{resource}` pins its host keys in the config (`host_keys`); edit the config instead"
        )));
    }
    let key = gw
        .ssh
        .probe_host_key(r, gw.config.daemon.upstream_connect_timeout)
        .await
        .map_err(Response::err)?;
    let line = crate::proxy::ssh::key_line(&key);
    let fingerprint = crate::proxy::ssh::fingerprint(&key);
    let previous = gw.ssh.accepted_keys(resource, ssh).into_iter().next();
    if let Some(prev) = &previous {
        if prev != &line && !replace {
            return Err(Response::err(format!(
                "resource `{resource}` now presents {fingerprint}, which differs from the recorded key; \
                 if the host key was rotated on purpose, run again with --replace"
            )));
        }
    }
    gw.ssh
        .record_trust(resource, &line)
        .map_err(|e| Response::err(format!("recording the host key: {e}")))?;
    tracing::info!(resource, fingerprint = %fingerprint, "ssh: upstream host key recorded");
    Ok(reply(&SshTrusted {
        resource: resource.to_owned(),
        key: line.clone(),
        fingerprint,
        previous: previous.filter(|p| p != &line),
    }))
}
