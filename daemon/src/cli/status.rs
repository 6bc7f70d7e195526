//! `cordon status [--json]`: exits non-zero when the daemon is unreachable.

use std::path::Path;

use crate::control::Request;

pub fn run(config: &Path, json: bool) -> anyhow::Result<()> {
    let s = super::call(config, &Request::Status)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    println!("daemon pid     {}", s["pid"]);
    println!("config         {}", s["config"].as_str().unwrap_or("?"));
    let listen: Vec<&str> = s["listen"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    println!("listening      {}", listen.join(", "));
    println!("bpffs          {}", s["bpffs"].as_str().unwrap_or("?"));
    let programs: Vec<&str> = s["programs"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    println!("programs       {}", programs.join(" "));
    println!(
        "daemon cgroup  {} ({})",
        s["daemon_cgroup"].as_str().unwrap_or("-"),
        s["daemon_program"].as_str().unwrap_or("")
    );
    println!("agents");
    for a in s["agents"].as_array().into_iter().flatten() {
        println!(
            "  {:<20} {} (id {}, {} pinned links)",
            a["name"].as_str().unwrap_or("?"),
            a["cgroup"].as_str().unwrap_or("?"),
            a["cgroup_id"],
            a["pinned_links"]
        );
    }
    let c = &s["sessions"];
    println!(
        "sessions       {} recorded; since start: {} allowed, {} denied, {} active",
        c["recorded"], c["allowed"], c["denied"], c["active"]
    );
    Ok(())
}
