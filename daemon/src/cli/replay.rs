//! `cordon replay ID [--speed F] [--no-wait]`: plays a recorded session
//! back. An SSH session's terminal output is written to stdout (stderr
//! output to stderr) as it was sent, with its original timing; for other
//! sessions it prints the transcript, in order: who connected, every
//! statement with its verdict, rule, timing, rows and masked columns, and
//! how the session ended.

use std::{
    io::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::sessions::{escape, one_line, statements, verdict_label};
use crate::{
    audit::{
        recording::{Event, EventKind},
        Session,
    },
    control::{EventsPage, Request},
};

/// Longest idle gap of a recording that playback keeps; longer gaps are
/// shortened to this (before `--speed` applies).
pub const MAX_IDLE: Duration = Duration::from_secs(2);

/// `--speed`: a finite factor above 0 (2 = twice as fast).
pub fn parse_speed(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "`{text}` is not a speed factor (a number above 0, e.g. 2 or 0.5)"
        )),
    }
}

/// Every SSH event recorded for a session, in order (empty for other
/// protocols); input/output/stderr only `with_data`.
pub fn events(config: &Path, id: &str, with_data: bool) -> anyhow::Result<Vec<Event>> {
    let mut out: Vec<Event> = Vec::new();
    let mut after = None;
    loop {
        let page: EventsPage = super::call_typed(
            config,
            &Request::SessionEvents {
                id: id.to_owned(),
                after,
                without_data: !with_data,
            },
        )?;
        let last = page.events.last().map(|e| e.seq);
        out.extend(page.events);
        match last {
            Some(seq) if page.more => after = Some(seq),
            _ => return Ok(out),
        }
    }
}

/// The channel that shows the terminal: the first with a pty, else the
/// first with output.
pub fn terminal_channel(events: &[Event]) -> Option<u32> {
    events
        .iter()
        .find(|e| matches!(e.kind, EventKind::Pty { .. }))
        .or_else(|| {
            events
                .iter()
                .find(|e| matches!(&e.kind, EventKind::Output { data } | EventKind::Stderr { data } if !data.is_empty()))
        })
        .map(|e| e.channel)
}

/// When each of a channel's writes is played, counted from the start of
/// playback: `times_us` are the recorded times of the writes, `start_us`
/// the time playback starts from. Idle gaps longer than [`MAX_IDLE`] are
/// shortened to it, then everything is divided by `speed`.
pub fn schedule(start_us: u64, times_us: &[u64], speed: f64) -> Vec<Duration> {
    let cap = u64::try_from(MAX_IDLE.as_micros()).unwrap_or(u64::MAX);
    let mut prev = start_us;
    let mut elapsed: u64 = 0;
    times_us
        .iter()
        .map(|&t| {
            elapsed = elapsed.saturating_add(t.saturating_sub(prev).min(cap));
            prev = prev.max(t);
            // `as` saturates (and maps NaN to 0): no overflow for tiny speeds.
            Duration::from_micros((elapsed as f64 / speed) as u64)
        })
        .collect()
}

pub fn run(config: &Path, id: &str, speed: f64, no_wait: bool) -> anyhow::Result<()> {
    let data = super::call(config, &Request::SessionsShow { id: id.to_owned() })?;
    let s: Session = serde_json::from_value(data)?;
    let events = events(config, id, true)?;
    if events.is_empty() {
        return transcript(config, &s, id);
    }
    play(&s, &events, speed, no_wait)
}

fn play(s: &Session, events: &[Event], speed: f64, no_wait: bool) -> anyhow::Result<()> {
    let Some(channel) = terminal_channel(events) else {
        eprintln!(
            "cordon: session {} has no terminal output to replay (see `cordon sessions show {}` for its requests and files)",
            s.id, s.id
        );
        return Ok(());
    };
    let writes: Vec<&Event> = events
        .iter()
        .filter(|e| {
            e.channel == channel
                && matches!(e.kind, EventKind::Output { .. } | EventKind::Stderr { .. })
        })
        .collect();
    let start_us = events
        .iter()
        .find(|e| e.channel == channel)
        .map_or(0, |e| e.t_us);
    let times: Vec<u64> = writes.iter().map(|e| e.t_us).collect();
    let at = schedule(start_us, &times, speed);
    let began = Instant::now();
    let mut stdout = std::io::stdout().lock();
    let mut stderr = std::io::stderr().lock();
    for (event, at) in writes.iter().zip(at) {
        if !no_wait {
            if let Some(wait) = at.checked_sub(began.elapsed()) {
                // Output waiting for the pause is shown first.
                stdout.flush().context("writing to stdout")?;
                std::thread::sleep(wait);
            }
        }
        match &event.kind {
            EventKind::Output { data } => stdout.write_all(data).context("writing to stdout")?,
            EventKind::Stderr { data } => {
                stdout.flush().context("writing to stdout")?;
                stderr.write_all(data).context("writing to stderr")?;
            }
            _ => {}
        }
    }
    stdout.flush().context("writing to stdout")?;
    Ok(())
}

/// The statement transcript of a session that is not SSH.
fn transcript(config: &Path, s: &Session, id: &str) -> anyhow::Result<()> {
    let stmts = statements(config, id)?;
    let start = time::OffsetDateTime::parse(
        &s.started_at,
        &time::format_description::well_known::Rfc3339,
    )
    .ok();
    println!(
        "# session {} — agent {} (pid {}, uid {}, {}) -> {} [{}]",
        s.id,
        escape(s.agent.as_deref().unwrap_or("-")),
        s.pid,
        s.uid,
        escape(s.exe.as_deref().unwrap_or(&s.comm)),
        escape(s.resource.as_deref().unwrap_or(&s.dst)),
        escape(s.protocol.as_deref().unwrap_or("-"))
    );
    println!("# {} {}", escape(&s.started_at), escape(&s.reason));
    for st in &stmts {
        let offset = start
            .zip(
                time::OffsetDateTime::parse(&st.at, &time::format_description::well_known::Rfc3339)
                    .ok(),
            )
            .map(|(a, b)| (b - a).as_seconds_f64())
            .unwrap_or(0.0);
        println!(
            "[+{offset:>9.3}s] {} {}",
            verdict_label(&st.verdict),
            escape(&st.rule)
        );
        println!("    {}", escape(&one_line(&st.text)));
        match (&st.reason, &st.error) {
            (Some(r), _) => println!("    -> denied: {}", escape(r)),
            (None, Some(e)) => println!("    -> failed upstream with SQLSTATE {}", escape(e)),
            (None, None) => println!(
                "    -> {} rows in {:.3} ms{}",
                st.rows,
                st.duration_us as f64 / 1000.0,
                if st.masked.is_empty() {
                    String::new()
                } else {
                    format!(", masked: {}", escape(&st.masked.join(", ")))
                }
            ),
        }
    }
    println!(
        "# ended {}: {}",
        escape(s.ended_at.as_deref().unwrap_or("(still open)")),
        escape(s.end_reason.as_deref().unwrap_or("-"))
    );
    Ok(())
}

/// An SSH session's channels, requests with their verdicts, exits and file
/// events (input and output are left to `cordon replay` / `cordon export`).
pub fn print_ssh(events: &[Event]) {
    for line in ssh_lines(events) {
        println!("{line}");
    }
}

fn ssh_lines(events: &[Event]) -> Vec<String> {
    let channels: std::collections::BTreeSet<u32> = events.iter().map(|e| e.channel).collect();
    let mut out = vec![
        format!("ssh          {} channels", channels.len()),
        format!(
            "  {:>11}  {:>4}  {:<8} {:<28}  WHAT",
            "TIME", "CH", "VERDICT", "RULE"
        ),
    ];
    for e in events {
        let (label, rule, what) = match &e.kind {
            EventKind::Request {
                what,
                detail,
                verdict,
                rule,
                reason,
            } => (
                verdict_label(verdict),
                escape(rule).into_owned(),
                format!(
                    "{} {}{}",
                    escape(what),
                    escape(detail),
                    reason
                        .as_ref()
                        .map(|r| format!("  -- {}", escape(r)))
                        .unwrap_or_default()
                ),
            ),
            EventKind::Open { kind } => ("", String::new(), format!("open {}", escape(kind))),
            EventKind::Pty { term, cols, rows } => (
                "",
                String::new(),
                format!("pty {} {cols}x{rows}", escape(term)),
            ),
            EventKind::Exit { status } => ("", String::new(), format!("exit status {status}")),
            EventKind::Signal {
                name,
                core_dumped,
                message,
            } => (
                "",
                String::new(),
                format!(
                    "killed by signal {}{} {}",
                    escape(name),
                    if *core_dumped { " (core dumped)" } else { "" },
                    escape(message)
                ),
            ),
            EventKind::File { event } => file_line(event),
            _ => continue,
        };
        out.push(format!(
            "  {:>10.3}s  {:>4}  {:<8} {:<28}  {}",
            e.t_us as f64 / 1e6,
            e.channel,
            if label.is_empty() { "-" } else { label },
            if rule.is_empty() { "-" } else { &rule },
            what
        ));
    }
    out
}

/// A file event (an SFTP/SCP operation or transfer) on one line.
fn file_line(event: &serde_json::Value) -> (&'static str, String, String) {
    let text = |v: &serde_json::Value, k: &str| {
        escape(v.get(k).and_then(serde_json::Value::as_str).unwrap_or("-")).into_owned()
    };
    if let Some(op) = event.get("Op") {
        let allowed = op.get("allowed").and_then(serde_json::Value::as_bool) == Some(true);
        let to = op
            .get("path2")
            .and_then(serde_json::Value::as_str)
            .map(|p| format!(" -> {}", escape(p)))
            .unwrap_or_default();
        let reason = op
            .get("reason")
            .and_then(serde_json::Value::as_str)
            .map(|r| format!("  -- {}", escape(r)))
            .unwrap_or_default();
        return (
            if allowed { "allow" } else { "DENY" },
            String::new(),
            format!("file {} {}{to}{reason}", text(op, "op"), text(op, "path")),
        );
    }
    if let Some(t) = event.get("Transfer") {
        let bytes = t
            .get("bytes")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let complete = t.get("complete").and_then(serde_json::Value::as_bool) == Some(true);
        return (
            "",
            String::new(),
            format!(
                "file {} {} {bytes} bytes sha256 {}{}",
                text(t, "direction"),
                text(t, "path"),
                text(t, "sha256"),
                if complete { "" } else { " (incomplete)" }
            ),
        );
    }
    (
        "",
        String::new(),
        format!("file {}", escape(&event.to_string())),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(seq: u64, t_us: u64, channel: u32, kind: EventKind) -> Event {
        Event {
            seq,
            t_us,
            channel,
            kind,
        }
    }

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn schedule_keeps_timing_caps_idle_and_scales() {
        let t = [100_000, 600_000, 10_600_000, 10_700_000];
        assert_eq!(
            schedule(0, &t, 1.0),
            vec![ms(100), ms(600), ms(2600), ms(2700)]
        );
        assert_eq!(
            schedule(0, &t, 2.0),
            vec![ms(50), ms(300), ms(1300), ms(1350)]
        );
        assert_eq!(
            schedule(0, &t, 0.5),
            vec![ms(200), ms(1200), ms(5200), ms(5400)]
        );
        // Counted from the channel's start; a long wait before the first
        // write is capped too; equal times play together.
        assert_eq!(
            schedule(5_000_000, &[9_000_000, 9_000_000, 9_000_500], 1.0),
            vec![ms(2000), ms(2000), Duration::from_micros(2_000_500)]
        );
        // Out-of-order times never go backwards; extreme speeds do not overflow.
        assert_eq!(
            schedule(0, &[500, 100], 1.0),
            vec![Duration::from_micros(500); 2]
        );
        assert_eq!(
            schedule(0, &[u64::MAX], f64::MIN_POSITIVE)[0],
            Duration::from_micros(u64::MAX)
        );
        assert!(schedule(0, &[], 1.0).is_empty());
    }

    #[test]
    fn the_summary_lists_requests_exits_and_files_escaped() {
        let req =
            |what: &str, detail: &str, verdict: &str, reason: Option<&str>| EventKind::Request {
                what: what.into(),
                detail: detail.into(),
                verdict: verdict.into(),
                rule: "ssh-readonly/diagnostics".into(),
                reason: reason.map(Into::into),
            };
        let evs = vec![
            ev(
                0,
                1_000,
                0,
                EventKind::Open {
                    kind: "session".into(),
                },
            ),
            ev(1, 2_000, 0, req("exec", "uptime", "allow", None)),
            ev(
                2,
                3_000,
                0,
                EventKind::Output {
                    data: b"up".to_vec(),
                },
            ),
            ev(3, 4_000, 0, EventKind::Exit { status: 0 }),
            ev(
                4,
                1_500_000,
                1,
                req(
                    "exec",
                    "rm -rf /\n\x1b[2J",
                    "deny",
                    Some("no rule allows it"),
                ),
            ),
            ev(
                5,
                1_600_000,
                2,
                EventKind::File {
                    event: serde_json::json!({"Op": {"op": "open-write", "path": "/etc/passwd", "path2": null, "allowed": false, "reason": "read-only"}}),
                },
            ),
            ev(
                6,
                1_700_000,
                2,
                EventKind::File {
                    event: serde_json::json!({"Transfer": {"path": "/var/log/syslog", "direction": "download", "bytes": 42, "sha256": "ab12", "complete": true}}),
                },
            ),
            ev(
                7,
                1_800_000,
                3,
                req("port-forward", "127.0.0.1:5432", "deny", None),
            ),
            ev(8, 1_900_000, 1, EventKind::Close),
        ];
        let lines = ssh_lines(&evs);
        let text = lines.join("\n");
        assert_eq!(lines[0], "ssh          4 channels");
        assert_eq!(lines.len(), 2 + 7, "{text}");
        assert!(
            lines[3].contains("allow") && lines[3].ends_with("exec uptime"),
            "{text}"
        );
        assert!(lines[3].contains("ssh-readonly/diagnostics"), "{text}");
        assert!(lines[4].ends_with("exit status 0"), "{text}");
        assert!(lines[5].contains("DENY"), "{text}");
        assert!(
            lines[5].ends_with("exec rm -rf /\\x0a\\x1b[2J  -- no rule allows it"),
            "{text}"
        );
        assert!(
            lines[6].contains("DENY")
                && lines[6].ends_with("file open-write /etc/passwd  -- read-only"),
            "{text}"
        );
        assert!(
            lines[7].ends_with("file download /var/log/syslog 42 bytes sha256 ab12"),
            "{text}"
        );
        assert!(lines[8].contains("port-forward 127.0.0.1:5432"), "{text}");
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn speed_must_be_a_positive_number() {
        assert_eq!(parse_speed("2"), Ok(2.0));
        assert_eq!(parse_speed("0.25"), Ok(0.25));
        for bad in ["0", "-1", "inf", "NaN", "fast", ""] {
            assert!(parse_speed(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_terminal_is_the_pty_channel_else_the_first_with_output() {
        let out = |d: &str| EventKind::Output {
            data: d.as_bytes().to_vec(),
        };
        let pty = EventKind::Pty {
            term: "xterm".into(),
            cols: 80,
            rows: 24,
        };
        let evs = vec![
            ev(0, 0, 1, EventKind::Output { data: vec![] }),
            ev(1, 1, 2, out("exec output")),
            ev(2, 2, 3, pty),
            ev(3, 3, 3, out("$ ")),
        ];
        assert_eq!(terminal_channel(&evs), Some(3));
        assert_eq!(terminal_channel(&evs[..2]), Some(2));
        assert_eq!(terminal_channel(&evs[..1]), None);
    }
}
