//! `[identity.oidc]`: which OpenID Connect provider vouches for humans, and
//! what its groups mean here. Parsed with the rest of the config file (see
//! [`super::Config`]); used by `identity::oidc` (the daemon verifies ID tokens)
//! and by `cordon login` (the CLI obtains them).
//!
//! ```toml
//! [identity.oidc]
//! issuer = "https://login.example.com/realms/ops"   # exactly the tokens' `iss`
//! client_id = "cordon"
//! client_secret_file = "/etc/cordon/oidc-client-secret" # optional; never inline
//! groups_claim = "groups"          # default
//! approver_groups = ["sre"]        # may approve requests and held commands
//! admin_groups = ["security"]      # administer (and approve)
//! clock_skew_secs = 60             # default; 0..=600
//! scopes = ["openid", "profile", "email", "offline_access"]   # default, for `cordon login`
//! ca_file = "/etc/cordon/idp-ca.pem"   # optional: trust only this CA for the issuer
//! allow_http_loopback = false      # default; see below
//! ```
//!
//! The issuer and every endpoint its discovery document names must be
//! `https://` (see [`transport_allowed`]). Plain `http://` to a loopback host
//! (127.0.0.0/8, ::1, `localhost`) is accepted only with
//! `allow_http_loopback = true`, meant for tests: any local process, an agent
//! included, can listen on a loopback port the provider is not holding at
//! that moment and serve its own signing keys, which TLS would have stopped.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use openidconnect::url::{Host, Url};
use serde::Deserialize;

/// Largest accepted `clock_skew_secs`.
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;

/// `[identity]` as written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    oidc: Option<RawOidc>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOidc {
    issuer: String,
    client_id: String,
    client_secret_file: Option<PathBuf>,
    /// Only here to answer with a useful error: secrets never go inline.
    client_secret: Option<toml::Value>,
    #[serde(default = "default_groups_claim")]
    groups_claim: String,
    #[serde(default)]
    approver_groups: Vec<String>,
    #[serde(default)]
    admin_groups: Vec<String>,
    #[serde(default = "default_clock_skew")]
    clock_skew_secs: u64,
    #[serde(default = "default_scopes")]
    scopes: Vec<String>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    allow_http_loopback: bool,
}

fn default_groups_claim() -> String {
    "groups".to_owned()
}
fn default_clock_skew() -> u64 {
    60
}
fn default_scopes() -> Vec<String> {
    ["openid", "profile", "email", "offline_access"]
        .map(String::from)
        .to_vec()
}

/// A validated `[identity.oidc]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oidc {
    /// Exactly as configured: an ID token's `iss` must equal it byte for byte.
    pub issuer: String,
    pub client_id: String,
    /// File holding the client secret (confidential clients only); read by
    /// `cordon login`, never by the daemon, never logged.
    pub client_secret_file: Option<PathBuf>,
    /// The ID-token claim listing the user's groups.
    pub groups_claim: String,
    pub approver_groups: Vec<String>,
    pub admin_groups: Vec<String>,
    /// Tolerance for `exp` and `iat` against this host's clock.
    pub clock_skew: Duration,
    /// Scopes `cordon login` asks for (always includes `openid`).
    pub scopes: Vec<String>,
    /// Trust only this CA (PEM) for the provider's TLS; default: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// Plain http to a loopback provider is accepted (tests only; see the
    /// module documentation).
    pub allow_http_loopback: bool,
}

/// Validates `[identity]` (absent table = no OIDC). Errors are `(key, problem)`
/// for the caller to wrap with the file name.
pub fn parse(raw: Option<RawIdentity>) -> Result<Option<Oidc>, (String, String)> {
    let Some(raw) = raw.and_then(|i| i.oidc) else {
        return Ok(None);
    };
    let key = |k: &str| format!("identity.oidc.{k}");
    if raw.client_secret.is_some() {
        return Err((
            key("client_secret"),
            "never put the client secret in the config file: write it to a file readable only \
             by those who may log in and name it with `client_secret_file`"
                .into(),
        ));
    }
    let url = Url::parse(&raw.issuer).map_err(|e| {
        (
            key("issuer"),
            format!("expected an https:// URL, got `{}` ({e})", raw.issuer),
        )
    })?;
    transport_allowed(&url, raw.allow_http_loopback).map_err(|p| (key("issuer"), p))?;
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err((
            key("issuer"),
            format!(
                "an issuer has no query, fragment or user info, got `{}`",
                raw.issuer
            ),
        ));
    }
    if raw.client_id.is_empty() || raw.client_id.len() > 255 || has_control(&raw.client_id) {
        return Err((
            key("client_id"),
            "expected 1-255 printable characters".into(),
        ));
    }
    for (k, path) in [
        ("client_secret_file", &raw.client_secret_file),
        ("ca_file", &raw.ca_file),
    ] {
        if let Some(p) = path {
            if !p.is_absolute() {
                return Err((
                    key(k),
                    format!("expected an absolute path, got `{}`", p.display()),
                ));
            }
        }
    }
    if raw.groups_claim.is_empty() || has_control(&raw.groups_claim) {
        return Err((
            key("groups_claim"),
            "expected the name of a claim, e.g. \"groups\"".into(),
        ));
    }
    for (k, groups) in [
        ("approver_groups", &raw.approver_groups),
        ("admin_groups", &raw.admin_groups),
    ] {
        for (i, g) in groups.iter().enumerate() {
            if g.is_empty() || has_control(g) {
                return Err((
                    format!("identity.oidc.{k}[{i}]"),
                    "expected a non-empty group name".into(),
                ));
            }
        }
    }
    if raw.clock_skew_secs > MAX_CLOCK_SKEW_SECS {
        return Err((
            key("clock_skew_secs"),
            format!(
                "expected 0..={MAX_CLOCK_SKEW_SECS} seconds, got {}",
                raw.clock_skew_secs
            ),
        ));
    }
    if !raw.scopes.iter().any(|s| s == "openid") {
        return Err((
            key("scopes"),
            "must include \"openid\" (without it there is no ID token)".into(),
        ));
    }
    if let Some((i, _)) = raw
        .scopes
        .iter()
        .enumerate()
        .find(|(_, s)| s.is_empty() || s.contains(' ') || has_control(s))
    {
        return Err((
            format!("identity.oidc.scopes[{i}]"),
            "expected a scope name without spaces".into(),
        ));
    }
    Ok(Some(Oidc {
        issuer: raw.issuer,
        client_id: raw.client_id,
        client_secret_file: raw.client_secret_file,
        groups_claim: raw.groups_claim,
        approver_groups: raw.approver_groups,
        admin_groups: raw.admin_groups,
        clock_skew: Duration::from_secs(raw.clock_skew_secs),
        scopes: raw.scopes,
        ca_file: raw.ca_file,
        allow_http_loopback: raw.allow_http_loopback,
    }))
}

impl Oidc {
    /// `issuer` and `client_id` with every other key at its default (for
    /// `cordon login --issuer URL --client-id ID` without a config table);
    /// `allow_http_loopback` as `--allow-http-loopback` says.
    pub fn with_defaults(
        issuer: String,
        client_id: String,
        allow_http_loopback: bool,
    ) -> Result<Oidc, String> {
        let raw = RawIdentity {
            oidc: Some(RawOidc {
                issuer,
                client_id,
                client_secret_file: None,
                client_secret: None,
                groups_claim: default_groups_claim(),
                approver_groups: Vec::new(),
                admin_groups: Vec::new(),
                clock_skew_secs: default_clock_skew(),
                scopes: default_scopes(),
                ca_file: None,
                allow_http_loopback,
            }),
        };
        match parse(Some(raw)) {
            Ok(Some(o)) => Ok(o),
            Ok(None) => Err("no settings".into()),
            Err((key, problem)) => Err(format!("{key}: {problem}")),
        }
    }
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// The transport rule for the issuer and every endpoint Cordon talks to on
/// its behalf: `https://` anywhere; plain `http://` only to a loopback host,
/// and only when `http_loopback` (an explicit opt-in) allows it.
pub fn transport_allowed(url: &Url, http_loopback: bool) -> Result<(), String> {
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url) && http_loopback => Ok(()),
        "http" if is_loopback(url) => Err(format!(
            "`{url}` uses plain http; only https is accepted (plain http to a loopback \
             provider needs `allow_http_loopback = true`, for tests: any local process \
             could answer on that port)"
        )),
        "http" => Err(format!(
            "`{url}` uses plain http to a host that is not loopback; only https is accepted"
        )),
        other => Err(format!("`{url}` has scheme `{other}`; expected https")),
    }
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        Some(Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(table: &str) -> Result<Option<Oidc>, (String, String)> {
        #[derive(Deserialize)]
        struct Doc {
            identity: Option<RawIdentity>,
        }
        let doc: Doc = toml::from_str(table).map_err(|e| ("<toml>".to_owned(), e.to_string()))?;
        parse(doc.identity)
    }

    const GOOD: &str = r#"
[identity.oidc]
issuer = "https://login.example.com/realms/ops"
client_id = "cordon"
"#;

    #[test]
    fn defaults() {
        let o = parse_text(GOOD).unwrap().unwrap();
        assert_eq!(o.issuer, "https://login.example.com/realms/ops");
        assert_eq!(o.groups_claim, "groups");
        assert_eq!(o.clock_skew, Duration::from_secs(60));
        assert_eq!(o.scopes, ["openid", "profile", "email", "offline_access"]);
        assert!(o.approver_groups.is_empty() && o.admin_groups.is_empty());
        assert_eq!(o.client_secret_file, None);
        assert_eq!(parse_text("").unwrap(), None);
        assert_eq!(parse_text("[identity]").unwrap(), None);
    }

    #[test]
    fn everything_set() {
        let o = parse_text(
            r#"
[identity.oidc]
issuer = "http://127.0.0.1:9000"
client_id = "cordon-cli"
client_secret_file = "/etc/cordon/secret"
groups_claim = "roles"
approver_groups = ["sre", "dba"]
admin_groups = ["security"]
clock_skew_secs = 0
scopes = ["openid"]
ca_file = "/etc/cordon/ca.pem"
allow_http_loopback = true
"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(o.groups_claim, "roles");
        assert_eq!(o.approver_groups, ["sre", "dba"]);
        assert_eq!(o.admin_groups, ["security"]);
        assert_eq!(o.clock_skew, Duration::ZERO);
        assert_eq!(o.scopes, ["openid"]);
        assert_eq!(o.ca_file, Some(PathBuf::from("/etc/cordon/ca.pem")));
        assert!(o.allow_http_loopback);
    }

    #[test]
    fn http_only_on_loopback_and_only_when_allowed() {
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.1.2.3",
            "http://[::1]:9000/x",
            "http://localhost:1234",
            "https://idp.example.com",
        ] {
            let text = GOOD.replace("https://login.example.com/realms/ops", ok);
            let allowed = format!("{text}allow_http_loopback = true\n");
            assert!(parse_text(&allowed).is_ok(), "{ok}");
            // Without the opt-in only https passes.
            let plain = parse_text(&text);
            if ok.starts_with("https") {
                assert!(plain.is_ok(), "{ok}");
            } else {
                let e = plain.unwrap_err();
                assert_eq!(e.0, "identity.oidc.issuer");
                assert!(e.1.contains("allow_http_loopback"), "{}", e.1);
            }
        }
        for bad in [
            "http://idp.example.com",
            "http://10.0.0.5",
            "http://[::2]",
            "ftp://127.0.0.1",
            "idp.example.com",
            "https://idp.example.com/?x=1",
            "https://user@idp.example.com",
        ] {
            let text = GOOD.replace("https://login.example.com/realms/ops", bad);
            let e = parse_text(&text).unwrap_err();
            assert_eq!(e.0, "identity.oidc.issuer", "{bad}: {e:?}");
            let e = parse_text(&format!("{text}allow_http_loopback = true\n")).unwrap_err();
            assert_eq!(e.0, "identity.oidc.issuer", "{bad}: {e:?}");
        }
    }

    #[test]
    fn rejections_name_the_key() {
        let table = [
            (
                format!("{GOOD}client_secret = \"hunter2\"\n"),
                "identity.oidc.client_secret",
            ),
            (
                format!("{GOOD}client_secret_file = \"secret.txt\"\n"),
                "identity.oidc.client_secret_file",
            ),
            (
                format!("{GOOD}clock_skew_secs = 601\n"),
                "identity.oidc.clock_skew_secs",
            ),
            (
                format!("{GOOD}scopes = [\"profile\"]\n"),
                "identity.oidc.scopes",
            ),
            (
                format!("{GOOD}scopes = [\"openid\", \"a b\"]\n"),
                "identity.oidc.scopes[1]",
            ),
            (
                format!("{GOOD}approver_groups = [\"ok\", \"\"]\n"),
                "identity.oidc.approver_groups[1]",
            ),
            (
                format!("{GOOD}groups_claim = \"\"\n"),
                "identity.oidc.groups_claim",
            ),
            (
                GOOD.replace("client_id = \"cordon\"", "client_id = \"\""),
                "identity.oidc.client_id",
            ),
        ];
        for (text, key) in table {
            let e = parse_text(&text).unwrap_err();
            assert_eq!(e.0, key, "{text}: {e:?}");
        }
        // The secret itself never appears in the error.
        let e = parse_text(&format!("{GOOD}client_secret = \"hunter2\"\n")).unwrap_err();
        assert!(!e.1.contains("hunter2"), "{e:?}");
        // Unknown keys are refused by serde, naming the key.
        let e = parse_text(&format!("{GOOD}isuer = \"x\"\n")).unwrap_err();
        assert!(e.1.contains("unknown field `isuer`"), "{e:?}");
        let e = parse_text("[identity.saml]\nx = 1\n").unwrap_err();
        assert!(e.1.contains("unknown field `saml`"), "{e:?}");
    }
}
