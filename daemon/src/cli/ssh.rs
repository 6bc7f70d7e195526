//! `cordon ssh-config --agent A` and `cordon ssh-trust RESOURCE`.

use std::{fmt::Write as _, path::Path};

use crate::control::{
    ssh::{SshClientConfig, SshTrusted},
    Request,
};

/// Prints the known_hosts lines (`--known-hosts`), or an ssh_config snippet with one `Host`
/// block per ssh resource the agent holds a live grant on.
pub fn config(
    config: &Path,
    agent: &str,
    known_hosts: bool,
    known_hosts_file: Option<&Path>,
) -> anyhow::Result<()> {
    let c: SshClientConfig = super::call_typed(
        config,
        &Request::SshConfig {
            agent: agent.to_owned(),
        },
    )?;
    if c.hosts.is_empty() {
        anyhow::bail!("agent `{agent}` holds no live grant on an ssh resource");
    }
    print!("{}", render(&c, known_hosts, known_hosts_file));
    Ok(())
}

fn host_pattern(addr: &std::net::SocketAddr) -> String {
    // known_hosts names a non-22 port as [host]:port; IPv6 addresses go in brackets too.
    match (addr.ip(), addr.port()) {
        (std::net::IpAddr::V4(ip), 22) => ip.to_string(),
        (ip, port) => format!("[{ip}]:{port}"),
    }
}

fn render(c: &SshClientConfig, known_hosts: bool, known_hosts_file: Option<&Path>) -> String {
    let mut out = String::new();
    if known_hosts {
        for h in &c.hosts {
            let _ = writeln!(out, "{} {}", host_pattern(&h.address), c.host_key);
        }
        return out;
    }
    let file = known_hosts_file.map_or_else(
        || "~/.ssh/cordon_known_hosts".to_owned(),
        |p| p.display().to_string(),
    );
    let _ = writeln!(
        out,
        "# Written by `cordon ssh-config`. Save the lines of `cordon ssh-config --known-hosts` to {file}.\n\
         # Cordon authenticates the agent by its cgroup: no key or password is needed or offered."
    );
    for h in &c.hosts {
        let _ = writeln!(out, "\nHost {}", h.resource);
        let _ = writeln!(out, "    HostName {}", h.address.ip());
        let _ = writeln!(out, "    Port {}", h.address.port());
        if let Some(login) = &h.login {
            let _ = writeln!(out, "    User {login}");
        }
        let _ = writeln!(out, "    UserKnownHostsFile {file}");
        for line in [
            "StrictHostKeyChecking yes",
            "PreferredAuthentications none",
            "PubkeyAuthentication no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "GSSAPIAuthentication no",
            "IdentityFile none",
            "IdentitiesOnly yes",
            "BatchMode yes",
            "ForwardAgent no",
            "ForwardX11 no",
        ] {
            let _ = writeln!(out, "    {line}");
        }
    }
    out
}

/// Records the host key a resource's upstream presents (root only).
pub fn trust(config: &Path, resource: &str, replace: bool) -> anyhow::Result<()> {
    let t: SshTrusted = super::call_typed(
        config,
        &Request::SshTrust {
            resource: resource.to_owned(),
            replace,
        },
    )?;
    println!("trusted {} for `{}`", t.fingerprint, t.resource);
    println!("{}", t.key);
    if let Some(prev) = t.previous {
        println!("replaced {prev}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::ssh::SshHost;

    #[test]
    fn known_hosts_and_config_blocks() {
        let c = SshClientConfig {
            host_key: "ssh-ed25519 AAAAC3Nz".into(),
            hosts: vec![
                SshHost {
                    resource: "web".into(),
                    address: "10.0.0.7:22".parse().unwrap(),
                    login: Some("deploy".into()),
                },
                SshHost {
                    resource: "db".into(),
                    address: "[fd00::5]:2222".parse().unwrap(),
                    login: None,
                },
            ],
        };
        assert_eq!(
            render(&c, true, None),
            "10.0.0.7 ssh-ed25519 AAAAC3Nz\n[fd00::5]:2222 ssh-ed25519 AAAAC3Nz\n"
        );
        let cfg = render(&c, false, Some(Path::new("/etc/kh")));
        assert!(cfg.contains("Host web\n    HostName 10.0.0.7\n    Port 22\n    User deploy\n"));
        assert!(cfg.contains(
            "Host db\n    HostName fd00::5\n    Port 2222\n    UserKnownHostsFile /etc/kh\n"
        ));
        assert!(cfg.contains("PreferredAuthentications none"));
    }
}
