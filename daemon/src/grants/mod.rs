//! Grants: (agent, resource, expiry) checked for every captured connection,
//! after identity and resource resolution and before any upstream traffic.

use time::OffsetDateTime;

use crate::config::{AgentName, Config};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantDenial {
    #[error("no grant gives agent `{agent}` access to resource `{resource}`")]
    None { agent: String, resource: String },
    #[error("the grant for agent `{agent}` on resource `{resource}` expired at {expired}")]
    Expired {
        agent: String,
        resource: String,
        expired: String,
    },
    #[error("no live grant lets agent `{agent}` use {what} on resource `{resource}`{pinned}")]
    Pinned {
        agent: String,
        resource: String,
        what: String,
        /// The role/database the live grants do allow, for the agent's benefit.
        pinned: String,
    },
}

/// A live grant: the session it authorizes must end by `expires`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveGrant {
    pub expires: OffsetDateTime,
}

/// The latest-expiring grant for `agent` on `resource` that is live at `now`.
pub fn check(
    config: &Config,
    agent: &AgentName,
    resource: &str,
    now: OffsetDateTime,
) -> Result<LiveGrant, GrantDenial> {
    let mut matching = config
        .grants
        .iter()
        .filter(|g| &g.agent == agent && g.resource == resource)
        .peekable();
    if matching.peek().is_none() {
        return Err(GrantDenial::None {
            agent: agent.to_string(),
            resource: resource.to_owned(),
        });
    }
    let latest = matching.map(|g| g.expires).max().unwrap_or(now);
    if latest <= now {
        return Err(GrantDenial::Expired {
            agent: agent.to_string(),
            resource: resource.to_owned(),
            expired: crate::rfc3339(latest),
        });
    }
    Ok(LiveGrant { expires: latest })
}

/// For postgres sessions: the latest-expiring live grant for `agent` on
/// `resource` whose pins (role, database), where set, are the role and
/// database the agent asked for.
pub fn check_database(
    config: &Config,
    agent: &AgentName,
    resource: &str,
    role: &str,
    database: &str,
    now: OffsetDateTime,
) -> Result<LiveGrant, GrantDenial> {
    check(config, agent, resource, now)?;
    let live = config
        .grants
        .iter()
        .filter(|g| &g.agent == agent && g.resource == resource && g.expires > now);
    let fits = |g: &&crate::config::Grant| {
        g.role.as_deref().is_none_or(|r| r == role)
            && g.database.as_deref().is_none_or(|d| d == database)
    };
    match live.clone().filter(fits).map(|g| g.expires).max() {
        Some(expires) => Ok(LiveGrant { expires }),
        None => {
            let allowed: Vec<String> = live
                .map(|g| {
                    format!(
                        "role {} / database {}",
                        g.role.as_deref().unwrap_or("any"),
                        g.database.as_deref().unwrap_or("any")
                    )
                })
                .collect();
            Err(GrantDenial::Pinned {
                agent: agent.to_string(),
                resource: resource.to_owned(),
                what: format!("role `{role}` and database `{database}`"),
                pinned: format!(" (granted: {})", allowed.join("; ")),
            })
        }
    }
}

/// For ssh sessions: the latest-expiring live grant for `agent` on
/// `resource` whose `login` pin, where set, is the user name the agent asked
/// for.
pub fn check_login(
    config: &Config,
    agent: &AgentName,
    resource: &str,
    login: &str,
    now: OffsetDateTime,
) -> Result<LiveGrant, GrantDenial> {
    check(config, agent, resource, now)?;
    let live = config
        .grants
        .iter()
        .filter(|g| &g.agent == agent && g.resource == resource && g.expires > now);
    match live
        .clone()
        .filter(|g| g.login.as_deref().is_none_or(|l| l == login))
        .map(|g| g.expires)
        .max()
    {
        Some(expires) => Ok(LiveGrant { expires }),
        None => {
            let allowed: Vec<&str> = live.filter_map(|g| g.login.as_deref()).collect();
            Err(GrantDenial::Pinned {
                agent: agent.to_string(),
                resource: resource.to_owned(),
                what: format!("login `{login}`"),
                pinned: format!(" (granted: {})", allowed.join(", ")),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(expires: &str) -> Config {
        let text = format!(
            r#"
[daemon]
state_dir = "/s"
control_socket = "/c"
[[agent]]
name = "a"
[[agent]]
name = "b"
[[resource]]
name = "db"
protocol = "tcp"
address = "10.0.0.5:5432"
[[grant]]
agent = "a"
resource = "db"
expires = "{expires}"
"#
        );
        Config::parse(Path::new("t.toml"), &text).unwrap()
    }

    #[test]
    fn live_expired_and_missing() {
        let now = OffsetDateTime::now_utc();
        let a = AgentName::parse("a").unwrap();
        let b = AgentName::parse("b").unwrap();
        let live = config("2999-01-01T00:00:00Z");
        assert!(check(&live, &a, "db", now).is_ok());
        assert!(matches!(
            check(&live, &b, "db", now),
            Err(GrantDenial::None { .. })
        ));
        assert!(matches!(
            check(&live, &a, "other", now),
            Err(GrantDenial::None { .. })
        ));
        let old = config("2000-01-01T00:00:00Z");
        let err = check(&old, &a, "db", now).unwrap_err();
        assert!(
            err.to_string().contains("expired at 2000-01-01T00:00:00Z"),
            "{err}"
        );
    }
}
