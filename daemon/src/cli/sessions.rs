//! `cordon sessions list|show`
//!
//! Much of a session record comes from the agent (its comm, which it sets
//! with prctl(PR_SET_NAME); addresses; error texts), so every string in the
//! human output goes through [`escape`]: an agent must not be able to send
//! escape sequences to an operator's terminal. JSON output is escaped by
//! the encoder.

use std::{borrow::Cow, fmt::Write as _, path::Path};

use crate::{
    audit::{statements::StatementRecord, Session},
    control::Request,
};

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
            escape(s.started_at.get(..19).unwrap_or(&s.started_at)),
            escape(s.agent.as_deref().unwrap_or("-")),
            s.pid,
            s.uid,
            escape(&s.comm),
            escape(&s.dst),
            escape(s.resource.as_deref().unwrap_or("-")),
            match s.verdict {
                crate::audit::Verdict::Allow => "allow",
                crate::audit::Verdict::Deny => "DENY",
            },
            s.bytes_up,
            s.bytes_down,
            escape(&s.reason)
        );
    }
    Ok(())
}

/// The statements recorded for a session (empty for protocols without
/// commands, such as tcp).
pub fn statements(config: &Path, id: &str) -> anyhow::Result<Vec<StatementRecord>> {
    super::call_typed(config, &Request::SessionStatements { id: id.to_owned() })
}

pub fn show(config: &Path, id: &str, json: bool) -> anyhow::Result<()> {
    let mut data = super::call(config, &Request::SessionsShow { id: id.to_owned() })?;
    let stmts = statements(config, id)?;
    let ssh = super::replay::events(config, id, false)?;
    if json {
        if let Some(obj) = data.as_object_mut() {
            obj.insert("statements".into(), serde_json::to_value(&stmts)?);
            if !ssh.is_empty() {
                obj.insert("ssh_events".into(), serde_json::to_value(&ssh)?);
            }
        }
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    let s: Session = serde_json::from_value(data)?;
    let opt = |v: &Option<String>| escape(v.as_deref().unwrap_or("-")).into_owned();
    println!("session      {}", s.id);
    println!("agent        {}", opt(&s.agent));
    println!(
        "process      pid {} uid {} gid {} comm {} exe {}",
        s.pid,
        s.uid,
        s.gid,
        escape(&s.comm),
        opt(&s.exe)
    );
    println!("cgroup id    {}", s.cgroup_id);
    println!("destination  {}", escape(&s.dst));
    println!("resource     {} ({})", opt(&s.resource), opt(&s.protocol));
    println!("verdict      {:?}: {}", s.verdict, escape(&s.reason));
    if let Some(n) = s.refusals {
        println!("summary of   {n} refused connections (over the rate recorded one by one)");
    }
    println!("started      {}", escape(&s.started_at));
    println!("ended        {}", opt(&s.ended_at));
    println!("bytes        {} up, {} down", s.bytes_up, s.bytes_down);
    println!("end          {}", opt(&s.end_reason));
    println!("on behalf of {}", opt(&s.on_behalf_of));
    if let Some(g) = &s.grant {
        println!("grant        {} (just in time)", escape(g));
    }
    if !stmts.is_empty() {
        println!("statements   {}", stmts.len());
        println!(
            "  {:>5}  {:<8} {:>10} {:>7}  {:<28}  {:<20}  STATEMENT",
            "SEQ", "VERDICT", "DURATION", "ROWS", "RULE", "MASKED"
        );
        for st in &stmts {
            println!(
                "  {:>5}  {:<8} {:>8}us {:>7}  {:<28}  {:<20}  {}{}",
                st.seq,
                verdict_label(&st.verdict),
                st.duration_us,
                st.rows,
                escape(&st.rule),
                escape(&if st.masked.is_empty() {
                    "-".to_owned()
                } else {
                    st.masked.join(",")
                }),
                escape(&one_line(&st.text)),
                match (&st.reason, &st.error) {
                    (Some(r), _) => format!("  -- {}", escape(r)),
                    (None, Some(e)) => format!("  -- failed upstream: {}", escape(e)),
                    (None, None) => String::new(),
                }
            );
        }
    }
    if !ssh.is_empty() {
        super::replay::print_ssh(&ssh);
    }
    Ok(())
}

pub fn verdict_label(v: &str) -> &'static str {
    match v {
        "allow" => "allow",
        "approve" => "HELD",
        _ => "DENY",
    }
}

/// Statement text on one line (newlines and runs of spaces folded).
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Characters that change how the text around them is shown without being seen themselves
/// (Unicode format characters: bidi overrides and isolates, zero-width characters, the soft
/// hyphen, the BOM; and the line/paragraph separators): an agent could make a command read
/// differently to a reviewer than it runs.
fn invisible(c: char) -> bool {
    matches!(u32::from(c),
        0x00ad | 0x061c | 0x070f | 0x180e | 0x200b..=0x200f | 0x2028..=0x202e
            | 0x2060..=0x206f | 0xfeff | 0xfff9..=0xfffb | 0xe0001 | 0xe0020..=0xe007f)
}

/// Text safe to print to a terminal: C0 controls (below 0x20), DEL (0x7f)
/// and C1 controls (U+0080..=U+009F) become `\xNN`, and a backslash becomes
/// `\\`, so an escaped byte cannot be confused with text that merely looks
/// like one. Everything else is unchanged.
pub fn escape(s: &str) -> Cow<'_, str> {
    let needs =
        |c: char| c == '\\' || c < ' ' || ('\u{7f}'..='\u{9f}').contains(&c) || invisible(c);
    if !s.chars().any(needs) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if needs(c) {
            if u32::from(c) > 0xff {
                let _ = write!(out, "\\u{{{:04x}}}", u32::from(c));
            } else {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("cordon-probe"), "cordon-probe");
        assert!(matches!(
            escape("plain text"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(escape("x\x1b[2Jy"), "x\\x1b[2Jy");
        assert_eq!(escape("rm \u{202e}fdp."), "rm \\u{202e}fdp.");
        assert_eq!(escape("a\u{200b}b"), "a\\u{200b}b");
        assert_eq!(escape("a\nb\rc\td\0"), "a\\x0ab\\x0dc\\x09d\\x00");
        assert_eq!(escape("\x7f"), "\\x7f");
        // C1 controls, e.g. U+009B (CSI), which some terminals honour.
        assert_eq!(escape("\u{80}\u{9b}2J\u{9f}"), "\\x80\\x9b2J\\x9f");
        // Printable non-ASCII text stays as it is.
        assert_eq!(escape("\u{a0}é→日本"), "\u{a0}é→日本");
        // A backslash is doubled, so escaped output cannot be forged.
        assert_eq!(escape("\\x1b"), "\\\\x1b");
        let all: String = (0u8..=0x1f).map(char::from).collect();
        assert!(!escape(&all).chars().any(|c| c.is_control()));
    }
}
