//! `cordon grants list [--json]` (static grants from the config and every
//! just-in-time grant, with its state and live sessions) and `cordon grants
//! revoke ID --reason R` (ends a live just-in-time grant and cuts its
//! sessions).

use std::path::Path;

use anyhow::Context as _;

use super::sessions::escape;
use crate::{
    approvals::{GrantsList, Revoked},
    control::Request,
};

pub fn list(config: &Path, json: bool) -> anyhow::Result<()> {
    let id_token = super::approvals::login_token(config)?;
    let data = super::call(config, &Request::GrantsList { id_token })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    let l: GrantsList =
        serde_json::from_value(data).context("the daemon's reply has an unexpected shape")?;
    println!(
        "{:<17}  {:<8} {:<12} {:<12} {:<17} {:<22} {:>8}  {:<28}  APPROVED BY",
        "ID", "STATE", "AGENT", "RESOURCE", "ACTIONS", "EXPIRES", "SESSIONS", "REQUESTED BY"
    );
    for g in &l.fixed {
        println!(
            "{:<17}  {:<8} {:<12} {:<12} {:<17} {:<22} {:>8}  {:<28}  -",
            "static",
            g.state,
            escape(&g.agent),
            escape(&g.resource),
            pins_text(&g.pins).unwrap_or_else(|| "-".to_owned()),
            escape(&g.expires),
            "-",
            "(config)",
        );
    }
    for v in &l.jit {
        let g = &v.grant;
        let actions = with_pins(&g.actions, &g.pins);
        let approvers: Vec<String> = g
            .approvals
            .iter()
            .map(|a| escape(&a.by).into_owned())
            .collect();
        println!(
            "{:<17}  {:<8} {:<12} {:<12} {:<17} {:<22} {:>8}  {:<28}  {}",
            g.id,
            g.state.as_str(),
            escape(&g.agent),
            escape(&g.resource),
            actions,
            escape(g.expires_at.as_deref().unwrap_or("-")),
            v.live_sessions.len(),
            escape(&g.requested_by),
            if approvers.is_empty() {
                "-".to_owned()
            } else {
                approvers.join(",")
            }
        );
        if let Some(end) = &g.ended {
            println!(
                "{:<17}  {} by {} at {}: {}",
                "",
                g.state.as_str(),
                escape(&end.by),
                escape(&end.at),
                escape(end.reason.as_deref().unwrap_or("-"))
            );
        }
    }
    Ok(())
}

pub fn revoke(config: &Path, id: &str, reason: &str, json: bool) -> anyhow::Result<()> {
    let id_token = super::approvals::login_token(config)?;
    let data = super::call(
        config,
        &Request::GrantsRevoke {
            id_token,
            id: id.to_owned(),
            reason: reason.to_owned(),
        },
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    let r: Revoked =
        serde_json::from_value(data).context("the daemon's reply has an unexpected shape")?;
    println!(
        "revoked grant {} (agent {} on {}); {} live session{} cut",
        r.grant.id,
        escape(&r.grant.agent),
        escape(&r.grant.resource),
        r.sessions_cut,
        if r.sessions_cut == 1 { "" } else { "s" }
    );
    Ok(())
}

/// `read,admin` then the grant's pins (`role=x,database=y`), for listings.
pub fn with_pins(actions: &[crate::grants::GrantAction], pins: &crate::grants::Pins) -> String {
    let actions: Vec<&str> = actions.iter().map(|a| a.as_str()).collect();
    match pins_text(pins) {
        Some(p) => format!("{} {p}", actions.join(",")),
        None => actions.join(","),
    }
}

/// `role=x,database=y` (odd values quoted, see [`crate::grants::Pins::shown`]),
/// or None when nothing is pinned.
fn pins_text(pins: &crate::grants::Pins) -> Option<String> {
    let pinned: Vec<String> = [
        ("role", &pins.role),
        ("database", &pins.database),
        ("login", &pins.login),
    ]
    .into_iter()
    .filter_map(|(k, v)| {
        v.as_deref()
            .map(|v| format!("{k}={}", escape(&crate::grants::Pins::shown(v))))
    })
    .collect();
    (!pinned.is_empty()).then(|| pinned.join(","))
}
