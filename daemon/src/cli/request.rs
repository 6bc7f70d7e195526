//! `cordon request --agent A --resource R [--actions read,write,admin]
//! [--role R --database D | --login L] --ttl 30m --reason "..."`: asks for a
//! just-in-time grant. It goes live
//! when the resource's reviewers approve it (`cordon approve ID`), for the
//! TTL counted from then. Needs `cordon login` (or root).

use std::{path::Path, time::Duration};

use anyhow::Context as _;

use super::sessions::escape;
use crate::{
    config::approval::format_duration,
    control::Request,
    grants::jit::{JitGrant, NewRequest},
};

/// clap value parser for `--ttl`.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    crate::config::approval::parse_duration(text)
}

/// `ask.requested_by` is not sent: the daemon names the requester.
pub fn run(config: &Path, ask: NewRequest, json: bool) -> anyhow::Result<()> {
    let id_token = super::approvals::login_token(config)?;
    let data = super::call(
        config,
        &Request::AskGrant {
            id_token,
            agent: ask.agent,
            resource: ask.resource,
            actions: ask.actions,
            pins: ask.pins,
            ttl_secs: ask.ttl.as_secs(),
            reason: ask.reason,
        },
    )?;
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    let g: JitGrant =
        serde_json::from_value(data).context("the daemon's reply has an unexpected shape")?;
    let actions: Vec<&str> = g.actions.iter().map(|a| a.as_str()).collect();
    println!(
        "grant request {} pending: agent {} on {} ({}; {}) for {} once approved; needs {} approval{}",
        g.id,
        escape(&g.agent),
        escape(&g.resource),
        actions.join(","),
        escape(&g.pins.describe()),
        format_duration(Duration::from_secs(g.ttl_secs)),
        g.approvals_required,
        if g.approvals_required == 1 { "" } else { "s" }
    );
    println!("reviewers: cordon approve {}", g.id);
    Ok(())
}
