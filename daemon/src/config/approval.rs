//! Humans in the loop, as configured: the `[approvals]` table (how long a
//! held command waits, how long a grant request stays open, the notification
//! hook) and the approval keys of a `[[resource]]` (who reviews, how many
//! approvals, the longest grant, which policy each action maps to). Parsed
//! with the rest of the file (see [`super::Config`]); used by `grants` and
//! `approvals`.
//!
//! ```toml
//! [approvals]
//! timeout_secs = 300                 # a held command waits this long (default 300)
//! request_expiry_secs = 86400        # an undecided grant request lapses (default 1 day)
//! notify_command = ["/usr/local/bin/page", "--team", "db"]   # no shell; JSON on stdin
//! notify_url = "https://hooks.example.com/cordon"            # POST of the same JSON
//!
//! [[resource]]
//! name = "orders-db"
//! ...
//! approvers = ["sre"]                # groups (of [identity.oidc]) that review this resource
//! approvals_required = 1             # distinct approvals a grant request needs (1..=10)
//! max_ttl = "1h"                     # longest just-in-time grant (default 1h, at most 30d)
//! actions = { read = "pg-readonly", write = "pg-app", admin = "pg-dba" }
//! ```
//!
//! Without `approvers`, the `approver_groups` of `[identity.oidc]` review.
//! Administrators (`admin_groups`) and local root may always review. Without
//! `actions`, every action (read, write, admin) uses the resource's `policy`;
//! with it, only the actions it names can be requested, each with its policy.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use openidconnect::url::Url;
use serde::{Deserialize, Serialize};

use super::{AgentName, Protocol};

/// Longest `max_ttl` accepted: 30 days.
pub const MAX_TTL_CEILING: Duration = Duration::from_secs(30 * 86_400);

/// `max_ttl` when a resource does not set it.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(3600);

/// Most approvals a resource may require.
pub const MAX_APPROVALS_REQUIRED: u64 = 10;

/// What a just-in-time grant lets an agent do on a resource, mapped onto a
/// policy by the resource's `actions`. Ordered: read < write < admin.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum GrantAction {
    Read,
    Write,
    Admin,
}

impl GrantAction {
    pub const ALL: [GrantAction; 3] = [GrantAction::Read, GrantAction::Write, GrantAction::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            GrantAction::Read => "read",
            GrantAction::Write => "write",
            GrantAction::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<GrantAction> {
        GrantAction::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

impl fmt::Display for GrantAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[approvals]` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovals {
    timeout_secs: Option<u64>,
    request_expiry_secs: Option<u64>,
    notify_command: Option<Vec<String>>,
    notify_url: Option<String>,
}

/// A validated `[approvals]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Approvals {
    /// How long a held command waits for a decision.
    pub hold_timeout: Duration,
    /// How long a grant request waits for its approvals before it lapses.
    pub request_expiry: Duration,
    /// Program and arguments run (no shell) with each pending request as
    /// JSON on stdin.
    pub notify_command: Option<Vec<String>>,
    /// Where each pending request is POSTed as JSON.
    pub notify_url: Option<Url>,
}

impl Default for Approvals {
    fn default() -> Self {
        Approvals {
            hold_timeout: Duration::from_secs(300),
            request_expiry: Duration::from_secs(86_400),
            notify_command: None,
            notify_url: None,
        }
    }
}

/// Validates `[approvals]`. Errors are `(key, problem)`.
pub fn parse_approvals(raw: Option<RawApprovals>) -> Result<Approvals, (String, String)> {
    let raw = raw.unwrap_or_default();
    let mut out = Approvals::default();
    if let Some(t) = raw.timeout_secs {
        if !(1..=86_400).contains(&t) {
            return Err((
                "approvals.timeout_secs".into(),
                format!("expected 1..=86400 seconds, got {t}"),
            ));
        }
        out.hold_timeout = Duration::from_secs(t);
    }
    if let Some(t) = raw.request_expiry_secs {
        if !(60..=30 * 86_400).contains(&t) {
            return Err((
                "approvals.request_expiry_secs".into(),
                format!("expected 60..=2592000 seconds, got {t}"),
            ));
        }
        out.request_expiry = Duration::from_secs(t);
    }
    if let Some(cmd) = raw.notify_command {
        let Some(program) = cmd.first() else {
            return Err((
                "approvals.notify_command".into(),
                "expected [\"/absolute/program\", \"arg\", ...] (run without a shell)".into(),
            ));
        };
        if !Path::new(program).is_absolute() {
            return Err((
                "approvals.notify_command[0]".into(),
                format!("expected an absolute path to a program, got `{program}`"),
            ));
        }
        if let Some(i) = cmd.iter().position(|a| a.contains('\0')) {
            return Err((
                format!("approvals.notify_command[{i}]"),
                "an argument cannot contain NUL".into(),
            ));
        }
        out.notify_command = Some(cmd);
    }
    if let Some(u) = raw.notify_url {
        let url = Url::parse(&u).map_err(|e| {
            (
                "approvals.notify_url".to_owned(),
                format!("expected an https:// URL, got `{u}` ({e})"),
            )
        })?;
        super::oidc::transport_allowed(&url, crate::approvals::notify::NOTIFY_HTTP_LOOPBACK)
            .map_err(|p| ("approvals.notify_url".to_owned(), p))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err((
                "approvals.notify_url".into(),
                "credentials do not belong in the URL".into(),
            ));
        }
        out.notify_url = Some(url);
    }
    Ok(out)
}

/// The policy an action maps to.
#[derive(Debug, Clone)]
pub struct ActionPolicy {
    /// As configured (a name in `policy_dir`, or an absolute path).
    pub name: String,
    /// Set for postgres resources.
    pub postgres: Option<Arc<crate::policy::Policy>>,
    /// Set for ssh resources.
    pub ssh: Option<Arc<crate::policy::ssh::SshPolicy>>,
}

/// The approval keys of one resource, validated.
#[derive(Debug, Clone)]
pub struct ResourceApproval {
    /// Groups whose members review this resource; None = the
    /// `approver_groups` of `[identity.oidc]`.
    pub approvers: Option<Vec<String>>,
    /// Distinct approvals a grant request needs.
    pub approvals_required: usize,
    /// Longest grant a request may ask for.
    pub max_ttl: Duration,
    /// None: every action, with the resource's own policy. Some: only these
    /// actions, each with its policy.
    pub actions: Option<BTreeMap<GrantAction, ActionPolicy>>,
}

impl Default for ResourceApproval {
    fn default() -> Self {
        ResourceApproval {
            approvers: None,
            approvals_required: 1,
            max_ttl: DEFAULT_MAX_TTL,
            actions: None,
        }
    }
}

impl ResourceApproval {
    /// The actions a grant on this resource may carry.
    pub fn offered(&self) -> Vec<GrantAction> {
        match &self.actions {
            None => GrantAction::ALL.to_vec(),
            Some(map) => map.keys().copied().collect(),
        }
    }
}

/// The approval keys of `resource[i]`, as read by `super::RawResource`.
pub struct RawResourceApproval<'a> {
    pub approvers: Option<&'a Vec<String>>,
    pub approvals_required: Option<u64>,
    pub max_ttl: Option<&'a str>,
    pub actions: Option<&'a BTreeMap<String, String>>,
}

/// Validates the approval keys of `resource[i]`, loading the policies its
/// `actions` name. Errors are `(key, problem)`.
pub fn parse_resource(
    raw: RawResourceApproval<'_>,
    i: usize,
    protocol: Protocol,
    policy_dir: &Path,
) -> Result<ResourceApproval, (String, String)> {
    let key = |k: &str| format!("resource[{i}].{k}");
    let mut out = ResourceApproval::default();
    if let Some(groups) = raw.approvers {
        for (j, g) in groups.iter().enumerate() {
            if g.is_empty() || g.chars().any(char::is_control) {
                return Err((
                    format!("resource[{i}].approvers[{j}]"),
                    "expected a non-empty group name".into(),
                ));
            }
        }
        out.approvers = Some(groups.clone());
    }
    if let Some(n) = raw.approvals_required {
        if !(1..=MAX_APPROVALS_REQUIRED).contains(&n) {
            return Err((
                key("approvals_required"),
                format!("expected 1..={MAX_APPROVALS_REQUIRED}, got {n}"),
            ));
        }
        out.approvals_required = usize::try_from(n).unwrap_or(1);
    }
    if let Some(text) = raw.max_ttl {
        let ttl = parse_duration(text).map_err(|e| (key("max_ttl"), e))?;
        if ttl.is_zero() || ttl > MAX_TTL_CEILING {
            return Err((
                key("max_ttl"),
                format!("expected more than 0 and at most 30d, got `{text}`"),
            ));
        }
        out.max_ttl = ttl;
    }
    if let Some(map) = raw.actions {
        if protocol == Protocol::Tcp {
            return Err((
                key("actions"),
                "tcp resources have no policy to map actions onto; remove `actions`".into(),
            ));
        }
        if map.is_empty() {
            return Err((
                key("actions"),
                "name at least one of read, write, admin (or remove `actions`)".into(),
            ));
        }
        let mut actions = BTreeMap::new();
        for (name, policy) in map {
            let k = format!("resource[{i}].actions.{name}");
            let action = GrantAction::parse(name).ok_or_else(|| {
                (
                    k.clone(),
                    format!("unknown action `{name}`: expected read, write or admin"),
                )
            })?;
            let path = policy_file(policy, policy_dir).map_err(|e| (k.clone(), e))?;
            let loaded = match protocol {
                Protocol::Postgres => ActionPolicy {
                    name: policy.clone(),
                    postgres: Some(Arc::new(
                        crate::policy::load(&path).map_err(|e| (k.clone(), e.to_string()))?,
                    )),
                    ssh: None,
                },
                Protocol::Ssh => ActionPolicy {
                    name: policy.clone(),
                    postgres: None,
                    ssh: Some(Arc::new(
                        crate::policy::ssh::load(&path).map_err(|e| (k.clone(), e.to_string()))?,
                    )),
                },
                Protocol::Tcp => {
                    return Err((k, "tcp resources have no policy to map actions onto".into()))
                }
            };
            actions.insert(action, loaded);
        }
        out.actions = Some(actions);
    }
    Ok(out)
}

/// Where the policy `name` lives: an absolute path as it is, else
/// `<policy_dir>/<name>.toml` (name of `[A-Za-z0-9_-]`).
fn policy_file(name: &str, policy_dir: &Path) -> Result<PathBuf, String> {
    if name.starts_with('/') {
        Ok(PathBuf::from(name))
    } else if AgentName::parse(name).is_ok() {
        Ok(policy_dir.join(format!("{name}.toml")))
    } else {
        Err(format!(
            "expected a policy name of [A-Za-z0-9_-] or an absolute path, got `{name}`"
        ))
    }
}

/// A duration such as `90s`, `30m`, `1h30m`, `2d` or a plain number of
/// seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad =
        || format!("expected a duration such as 90s, 30m, 1h30m or 2d (or seconds), got `{text}`");
    let t = text.trim();
    if t.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = t.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total: u64 = 0;
    let mut number = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit: u64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = number.parse().map_err(|_| bad())?;
        number.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !number.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// `3600` -> `1h`, `5400` -> `1h30m`, `45` -> `45s`.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, secs) in [
            ("90s", 90),
            ("30m", 1800),
            ("1h30m", 5400),
            ("2d", 172_800),
            ("45", 45),
            ("1h0m5s", 3605),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
            assert_eq!(
                parse_duration(&format_duration(Duration::from_secs(secs))),
                Ok(Duration::from_secs(secs))
            );
        }
        for bad in [
            "",
            "h",
            "1x",
            "1h30",
            "-5m",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }

    #[test]
    fn approvals_table() {
        let ok = parse_approvals(None).unwrap();
        assert_eq!(ok, Approvals::default());
        assert_eq!(ok.hold_timeout, Duration::from_secs(300));
        let raw: RawApprovals = toml::from_str(
            "timeout_secs = 5\nnotify_command = [\"/bin/true\", \"x\"]\nnotify_url = \"http://127.0.0.1:9/hook\"\n",
        )
        .unwrap();
        let a = parse_approvals(Some(raw)).unwrap();
        assert_eq!(a.hold_timeout, Duration::from_secs(5));
        assert_eq!(a.notify_command.as_deref().map(<[String]>::len), Some(2));
        for (text, key) in [
            ("timeout_secs = 0", "approvals.timeout_secs"),
            ("notify_command = []", "approvals.notify_command"),
            ("notify_command = [\"true\"]", "approvals.notify_command[0]"),
            (
                "notify_url = \"http://hooks.example.com/x\"",
                "approvals.notify_url",
            ),
            ("notify_url = \"nope\"", "approvals.notify_url"),
            ("request_expiry_secs = 5", "approvals.request_expiry_secs"),
        ] {
            let raw: RawApprovals = toml::from_str(text).unwrap();
            let e = parse_approvals(Some(raw)).unwrap_err();
            assert_eq!(e.0, key, "{text}: {e:?}");
        }
        assert!(toml::from_str::<RawApprovals>("timeout = 5").is_err());
    }

    fn resource(extra: &str, protocol: &str) -> Result<super::super::Config, String> {
        let policies = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
        let pg = if protocol == "postgres" {
            "credential = \"c\"\npolicy = \"pg-readonly\"\n"
        } else {
            ""
        };
        let text = format!(
            "[daemon]\nstate_dir = \"/s\"\ncontrol_socket = \"/c\"\npolicy_dir = \"{policies}\"\n\
             [[resource]]\nname = \"db\"\nprotocol = \"{protocol}\"\naddress = \"10.0.0.5:5432\"\n{pg}{extra}\n"
        );
        super::super::Config::parse(Path::new("t.toml"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn resource_keys() {
        let cfg = resource(
            "approvers = [\"dba\"]\napprovals_required = 2\nmax_ttl = \"2h\"\nactions = { read = \"pg-readonly\", admin = \"pg-dba\" }",
            "postgres",
        )
        .unwrap();
        let a = &cfg.resources[0].approval;
        assert_eq!(a.approvers.as_deref(), Some(&["dba".to_owned()][..]));
        assert_eq!(a.approvals_required, 2);
        assert_eq!(a.max_ttl, Duration::from_secs(7200));
        assert_eq!(a.offered(), vec![GrantAction::Read, GrantAction::Admin]);
        let admin = a
            .actions
            .as_ref()
            .and_then(|m| m.get(&GrantAction::Admin))
            .unwrap();
        assert_eq!(
            admin.postgres.as_ref().map(|p| p.name.as_str()),
            Some("pg-dba")
        );
        // Defaults: everything offered, one approval, an hour.
        let d = &resource("", "tcp").unwrap().resources[0].approval;
        assert_eq!(d.offered(), GrantAction::ALL.to_vec());
        assert_eq!((d.approvals_required, d.max_ttl), (1, DEFAULT_MAX_TTL));
        for (extra, protocol, key) in [
            (
                "approvals_required = 0",
                "tcp",
                "resource[0].approvals_required",
            ),
            (
                "approvals_required = 11",
                "tcp",
                "resource[0].approvals_required",
            ),
            ("max_ttl = \"31d\"", "tcp", "resource[0].max_ttl"),
            ("max_ttl = \"soon\"", "tcp", "resource[0].max_ttl"),
            ("approvers = [\"\"]", "tcp", "resource[0].approvers[0]"),
            (
                "actions = { read = \"pg-readonly\" }",
                "tcp",
                "resource[0].actions",
            ),
            (
                "actions = { delete = \"pg-readonly\" }",
                "postgres",
                "resource[0].actions.delete",
            ),
            (
                "actions = { read = \"nope\" }",
                "postgres",
                "resource[0].actions.read",
            ),
            (
                "actions = { read = \"../x\" }",
                "postgres",
                "resource[0].actions.read",
            ),
            ("actions = {}", "postgres", "resource[0].actions"),
        ] {
            let e = resource(extra, protocol).unwrap_err();
            assert!(e.contains(&format!("key `{key}`")), "{extra}: {e}");
        }
    }
}
