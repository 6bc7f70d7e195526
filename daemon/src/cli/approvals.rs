//! `cordon approvals list`, `cordon approve ID`, `cordon deny ID --reason R`:
//! reviewers decide grant requests (`g…`) and held commands (`h…`). Every
//! call carries the caller's login (`cordon login`, or `CORDON_ID_TOKEN`);
//! local root without one acts as administrator. Strings that came from
//! agents or requesters (command text, reasons) go through
//! [`super::sessions::escape`] before they reach a terminal.

use std::path::Path;

use anyhow::Context as _;

use super::sessions::{escape, one_line};
use crate::{
    approvals::{Decided, PendingList},
    config::approval::format_duration,
    control::{Request, WireSecret},
};

/// The ID token a control request presents (`CORDON_ID_TOKEN`); without
/// one the daemon acts with the login it holds for the caller.
pub fn login_token(_config: &Path) -> anyhow::Result<Option<WireSecret>> {
    super::login::presented_token()
}

pub fn list(config: &Path, json: bool) -> anyhow::Result<()> {
    let id_token = login_token(config)?;
    let data = super::call(config, &Request::ApprovalsList { id_token })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    let p: PendingList =
        serde_json::from_value(data).context("the daemon's reply has an unexpected shape")?;
    if p.grants.is_empty() && p.holds.is_empty() {
        println!("nothing pending");
        return Ok(());
    }
    if !p.grants.is_empty() {
        println!("grant requests");
        println!(
            "  {:<17}  {:<20}  {:<12} {:<12} {:<17} {:>6} {:>9}  {:<28}  REASON",
            "ID", "REQUESTED", "AGENT", "RESOURCE", "ACTIONS", "TTL", "APPROVALS", "BY"
        );
        for g in &p.grants {
            let actions = super::grants::with_pins(&g.actions, &g.pins);
            println!(
                "  {:<17}  {:<20}  {:<12} {:<12} {:<17} {:>6} {:>9}  {:<28}  {}",
                g.id,
                escape(g.requested_at.get(..19).unwrap_or(&g.requested_at)),
                escape(&g.agent),
                escape(&g.resource),
                actions,
                format_duration(std::time::Duration::from_secs(g.ttl_secs)),
                format!("{}/{}", g.approvals.len(), g.approvals_required),
                escape(&g.requested_by),
                escape(&g.reason)
            );
        }
    }
    if !p.holds.is_empty() {
        if !p.grants.is_empty() {
            println!();
        }
        println!("held commands");
        for h in &p.holds {
            println!(
                "  {}  agent {}  resource {} ({})  session {}  until {}",
                h.id,
                escape(&h.agent),
                escape(&h.resource),
                escape(&h.protocol),
                h.session,
                escape(&h.expires_at)
            );
            println!("      rule     {}: {}", escape(&h.rule), escape(&h.reason));
            if let Some(who) = &h.on_behalf_of {
                println!("      for      {}", escape(who));
            }
            println!("      sha256   {}", h.sha256);
            for (i, line) in h.command.lines().enumerate() {
                let label = if i == 0 { "command" } else { "" };
                println!("      {label:<8} {}", escape(line));
            }
        }
    }
    Ok(())
}

pub fn approve(config: &Path, id: &str, json: bool) -> anyhow::Result<()> {
    let id_token = login_token(config)?;
    let data = super::call(
        config,
        &Request::Approve {
            id_token,
            id: id.to_owned(),
        },
    )?;
    print_decided(data, json)
}

pub fn deny(config: &Path, id: &str, reason: &str, json: bool) -> anyhow::Result<()> {
    let id_token = login_token(config)?;
    let data = super::call(
        config,
        &Request::Deny {
            id_token,
            id: id.to_owned(),
            reason: reason.to_owned(),
        },
    )?;
    print_decided(data, json)
}

fn print_decided(data: serde_json::Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    let d: Decided =
        serde_json::from_value(data).context("the daemon's reply has an unexpected shape")?;
    match d {
        Decided::Grant { grant: g } => {
            let what = format!(
                "grant {} (agent {} on {})",
                g.id,
                escape(&g.agent),
                escape(&g.resource)
            );
            match g.state {
                crate::grants::jit::State::Active => println!(
                    "{what}: active until {}",
                    escape(g.expires_at.as_deref().unwrap_or("?"))
                ),
                crate::grants::jit::State::Pending => println!(
                    "{what}: approved, {} of {} approvals",
                    g.approvals.len(),
                    g.approvals_required
                ),
                other => println!("{what}: {}", other.as_str()),
            }
        }
        Decided::Command { hold, outcome } => println!(
            "held command {} {outcome}: {}",
            hold.id,
            escape(&one_line(&hold.command))
        ),
    }
    Ok(())
}
