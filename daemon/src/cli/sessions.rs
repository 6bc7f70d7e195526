//! `cordon sessions list|show`

use std::path::Path;

use crate::{audit::Session, control::Request};

pub fn list(config: &Path, agent: Option<String>, limit: usize, json: bool) -> anyhow::Result<()> {
    let data = super::call(config, &Request::SessionsList { agent, limit })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    let sessions: Vec<Session> = serde_json::from_value(data)?;
    println!(
        "{:<16}  {:<20}  {:<12} {:>7} {:>6} {:<12} {:<24} {:<12} {:<6} {:>8} {:>8}  REASON",
        "ID",
        "STARTED",
        "AGENT",
        "PID",
        "UID",
        "COMM",
        "DESTINATION",
        "RESOURCE",
        "VERDICT",
        "UP",
        "DOWN"
    );
    for s in sessions {
        println!(
            "{:<16}  {:<20}  {:<12} {:>7} {:>6} {:<12} {:<24} {:<12} {:<6} {:>8} {:>8}  {}",
            s.id,
            s.started_at.get(..19).unwrap_or(&s.started_at),
            s.agent.as_deref().unwrap_or("-"),
            s.pid,
            s.uid,
            s.comm,
            s.dst,
            s.resource.as_deref().unwrap_or("-"),
            match s.verdict {
                crate::audit::Verdict::Allow => "allow",
                crate::audit::Verdict::Deny => "DENY",
            },
            s.bytes_up,
            s.bytes_down,
            s.reason
        );
    }
    Ok(())
}

pub fn show(config: &Path, id: &str, json: bool) -> anyhow::Result<()> {
    let data = super::call(config, &Request::SessionsShow { id: id.to_owned() })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    let s: Session = serde_json::from_value(data)?;
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("session      {}", s.id);
    println!("agent        {}", opt(&s.agent));
    println!(
        "process      pid {} uid {} gid {} comm {} exe {}",
        s.pid,
        s.uid,
        s.gid,
        s.comm,
        opt(&s.exe)
    );
    println!("cgroup id    {}", s.cgroup_id);
    println!("destination  {}", s.dst);
    println!("resource     {} ({})", opt(&s.resource), opt(&s.protocol));
    println!("verdict      {:?}: {}", s.verdict, s.reason);
    println!("started      {}", s.started_at);
    println!("ended        {}", opt(&s.ended_at));
    println!("bytes        {} up, {} down", s.bytes_up, s.bytes_down);
    println!("end          {}", opt(&s.end_reason));
    Ok(())
}
