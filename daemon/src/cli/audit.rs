//! `cordon audit list [--json] [--limit N] [--target ID]`: the audit events
//! (requests, approvals, denials, activations, expiries, revocations, held
//! commands, refused callers), newest first, with who did it and when.
//! Administrators and approvers may read them.

use std::path::Path;

use anyhow::Context as _;

use super::sessions::escape;
use crate::control::{humans::AuditPage, Request};

pub fn list(config: &Path, limit: usize, target: Option<String>, json: bool) -> anyhow::Result<()> {
    let id_token = super::approvals::login_token(config)?;
    let data = super::call(
        config,
        &Request::AuditList {
            id_token,
            limit,
            target,
        },
    )?;
    if json {
        let events = data.get("events").cloned().unwrap_or_default();
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(());
    }
    let page: AuditPage =
        serde_json::from_value(data).context("the daemon's reply has an unexpected shape")?;
    println!(
        "{:<30}  {:<36}  {:<18} {:<17}  {:<22}  DETAILS",
        "AT", "WHO", "WHAT", "TARGET", "AGENT/RESOURCE"
    );
    for e in &page.events {
        let on = match (&e.agent, &e.resource) {
            (Some(a), Some(r)) => format!("{a}/{r}"),
            (Some(a), None) => a.clone(),
            (None, Some(r)) => format!("-/{r}"),
            (None, None) => "-".into(),
        };
        let details = if e.details.is_null() {
            String::new()
        } else {
            e.details.to_string()
        };
        println!(
            "{:<30}  {:<36}  {:<18} {:<17}  {:<22}  {}",
            escape(&e.at),
            escape(&e.who),
            e.what.as_str(),
            escape(&e.target),
            escape(&on),
            escape(&details)
        );
    }
    Ok(())
}
