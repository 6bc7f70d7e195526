//! `cordon export ID --format asciicast|jsonl [--output FILE]`: a recorded
//! SSH session in a standard format. `asciicast` is asciicast v2 (the
//! terminal channel, as `cordon replay` picks it), which asciinema and other
//! players show; `jsonl` is every recorded event of every channel, one JSON
//! object a line, bytes in base64.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::Path,
};

use anyhow::Context as _;
use serde::Serialize;

use super::replay::{events, terminal_channel};
use crate::{
    audit::{
        recording::{Event, EventKind},
        Session,
    },
    control::Request,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// asciicast v2: the terminal, for asciinema and other players.
    Asciicast,
    /// Every event of every channel, one JSON object a line.
    Jsonl,
}

/// Terminal size when the channel asked for no pty.
const DEFAULT_SIZE: (u32, u32) = (80, 24);

pub fn run(config: &Path, id: &str, format: Format, output: Option<&Path>) -> anyhow::Result<()> {
    let data = super::call(config, &Request::SessionsShow { id: id.to_owned() })?;
    let session: Session = serde_json::from_value(data)?;
    let events = events(config, id, true)?;
    if events.is_empty() {
        anyhow::bail!(
            "session {id} has no SSH recording (only SSH sessions are recorded channel by channel; see `cordon replay {id}`)"
        );
    }
    let started = time::OffsetDateTime::parse(
        &session.started_at,
        &time::format_description::well_known::Rfc3339,
    )
    .ok()
    .map(time::OffsetDateTime::unix_timestamp);
    let write = |w: &mut dyn Write| -> std::io::Result<()> {
        match format {
            Format::Asciicast => asciicast(&events, started, w),
            Format::Jsonl => jsonl(&events, w),
        }
    };
    match output {
        Some(path) => {
            let file =
                File::create(path).with_context(|| format!("creating {}", path.display()))?;
            let mut w = BufWriter::new(file);
            write(&mut w)
                .and_then(|()| w.flush())
                .with_context(|| format!("writing {}", path.display()))
        }
        None => {
            let mut w = BufWriter::new(std::io::stdout().lock());
            write(&mut w)
                .and_then(|()| w.flush())
                .context("writing to stdout")
        }
    }
}

/// One event per line, as the control API sends them.
pub fn jsonl(events: &[Event], w: &mut dyn Write) -> std::io::Result<()> {
    for e in events {
        serde_json::to_writer(&mut *w, e)?;
        w.write_all(b"\n")?;
    }
    Ok(())
}

#[derive(Serialize)]
struct Header {
    version: u8,
    width: u32,
    height: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    env: Option<Env>,
}

#[derive(Serialize)]
struct Env {
    #[serde(rename = "TERM")]
    term: String,
}

/// asciicast v2 of the terminal channel: a header line, then
/// `[seconds, code, text]` lines: `o` output (stdout and stderr), `i`
/// input, `r` resize (`COLSxROWS`). Times count from the channel's first
/// event; `started_unix` is the session's start, and the header's
/// timestamp is moved by the same offset.
pub fn asciicast(
    events: &[Event],
    started_unix: Option<i64>,
    w: &mut dyn Write,
) -> std::io::Result<()> {
    let channel = terminal_channel(events);
    let mine: Vec<&Event> = events
        .iter()
        .filter(|e| Some(e.channel) == channel)
        .collect();
    let base_us = mine.first().map_or(0, |e| e.t_us);
    let pty = mine.iter().find_map(|e| match &e.kind {
        EventKind::Pty { term, cols, rows } => Some((term.clone(), *cols, *rows)),
        _ => None,
    });
    let (width, height) = pty.as_ref().map_or(DEFAULT_SIZE, |p| (p.1, p.2));
    let header = Header {
        version: 2,
        width,
        height,
        timestamp: started_unix.map(|t| t.saturating_add((base_us / 1_000_000) as i64)),
        env: pty.map(|p| Env { term: p.0 }),
    };
    serde_json::to_writer(&mut *w, &header)?;
    w.write_all(b"\n")?;

    let mut stdout = Utf8Stream::default();
    let mut stderr = Utf8Stream::default();
    let mut input = Utf8Stream::default();
    let mut last_t = 0.0;
    for e in mine {
        let t = e.t_us.saturating_sub(base_us) as f64 / 1e6;
        last_t = t;
        let (code, text) = match &e.kind {
            EventKind::Output { data } => ("o", stdout.push(data)),
            EventKind::Stderr { data } => ("o", stderr.push(data)),
            EventKind::Input { data } => ("i", input.push(data)),
            EventKind::Resize { cols, rows } => ("r", format!("{cols}x{rows}")),
            _ => continue,
        };
        line(w, t, code, &text)?;
    }
    // Bytes of a sequence that never completed.
    for (code, stream) in [("o", &mut stdout), ("o", &mut stderr), ("i", &mut input)] {
        line(w, last_t, code, &stream.finish())?;
    }
    Ok(())
}

fn line(w: &mut dyn Write, t: f64, code: &str, text: &str) -> std::io::Result<()> {
    if text.is_empty() {
        return Ok(());
    }
    let text = serde_json::to_string(text)?;
    writeln!(w, "[{t:.6}, \"{code}\", {text}]")
}

/// Decodes a byte stream that arrives in chunks as UTF-8: a sequence cut
/// between two chunks is completed from the next one; invalid bytes become
/// U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    carry: Vec<u8>,
}

impl Utf8Stream {
    /// The text of `data`, except the bytes of a sequence it ends in the
    /// middle of, which wait for the next chunk.
    pub fn push(&mut self, data: &[u8]) -> String {
        let mut buf = std::mem::take(&mut self.carry);
        buf.extend_from_slice(data);
        let mut out = String::with_capacity(buf.len());
        let mut rest: &[u8] = &buf;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(s);
                    return out;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    out.push_str(&String::from_utf8_lossy(valid));
                    match e.error_len() {
                        Some(n) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = after.get(n..).unwrap_or_default();
                        }
                        None => {
                            self.carry = after.to_vec();
                            return out;
                        }
                    }
                }
            }
        }
    }

    /// What is left at the end of the stream (an incomplete sequence).
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.carry);
        String::from_utf8_lossy(&rest).into_owned()
    }
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

    fn lines(events: &[Event], started: Option<i64>) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        asciicast(events, started, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with('\n'));
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }

    #[test]
    fn utf8_sequences_split_across_chunks_are_kept_whole() {
        let mut s = Utf8Stream::default();
        let snow = "☃".as_bytes(); // 3 bytes
        assert_eq!(s.push(&[b'a', snow[0]]), "a");
        assert_eq!(s.push(&snow[1..2]), "");
        assert_eq!(s.push(&[snow[2], b'b']), "☃b");
        // Invalid bytes become U+FFFD, the rest is kept.
        assert_eq!(s.push(b"x\xffy\xc3(z"), "x\u{fffd}y\u{fffd}(z");
        // An incomplete sequence at the end is reported by finish.
        assert_eq!(s.push(b"\xe2\x98"), "");
        assert_eq!(s.finish(), "\u{fffd}");
        assert_eq!(s.finish(), "");
        // A cut sequence followed by one that cannot complete it.
        assert_eq!(s.push(b"\xe2"), "");
        assert_eq!(s.push(b"q"), "\u{fffd}q");
    }

    #[test]
    fn asciicast_of_a_recorded_shell() {
        let out = |d: &[u8]| EventKind::Output { data: d.to_vec() };
        let euro = "€".as_bytes();
        let events = vec![
            // An exec channel before the shell is not part of the cast.
            ev(
                0,
                1_000,
                0,
                EventKind::Open {
                    kind: "session".into(),
                },
            ),
            ev(1, 2_000, 0, out(b"not me")),
            ev(
                2,
                3_000_000,
                1,
                EventKind::Open {
                    kind: "session".into(),
                },
            ),
            ev(
                3,
                3_000_100,
                1,
                EventKind::Pty {
                    term: "xterm-256color".into(),
                    cols: 132,
                    rows: 40,
                },
            ),
            ev(4, 3_500_000, 1, out(b"\x1b[1;32m$\x1b[0m \"q\" \\ ")),
            ev(
                5,
                4_000_000,
                1,
                EventKind::Input {
                    data: b"echo \xe2".to_vec(),
                },
            ),
            ev(
                6,
                4_000_001,
                1,
                EventKind::Input {
                    data: b"\x82\xac\r".to_vec(),
                },
            ),
            ev(7, 4_250_000, 1, out(&[b'1', euro[0], euro[1]])),
            ev(
                8,
                4_250_001,
                1,
                EventKind::Stderr {
                    data: b"warn\n".to_vec(),
                },
            ),
            ev(9, 4_260_000, 1, out(&[euro[2], b'\r', b'\n'])),
            ev(
                10,
                5_000_000,
                1,
                EventKind::Resize {
                    cols: 100,
                    rows: 30,
                },
            ),
            ev(11, 5_100_000, 1, out(b"\xff\n")),
            ev(12, 6_000_000, 1, EventKind::Exit { status: 0 }),
            ev(13, 6_000_001, 1, EventKind::Close),
        ];
        let got = lines(&events, Some(1_700_000_000));
        let header = &got[0];
        assert_eq!(header["version"], 2);
        assert_eq!(header["width"], 132);
        assert_eq!(header["height"], 40);
        assert_eq!(header["timestamp"], 1_700_000_003i64);
        assert_eq!(header["env"]["TERM"], "xterm-256color");
        let body: Vec<(f64, String, String)> = got[1..]
            .iter()
            .map(|v| serde_json::from_value(v.clone()).unwrap())
            .collect();
        let want: Vec<(f64, &str, &str)> = vec![
            (0.5, "o", "\u{1b}[1;32m$\u{1b}[0m \"q\" \\ "),
            (1.0, "i", "echo "),
            (1.000001, "i", "€\r"),
            (1.25, "o", "1"),
            (1.250001, "o", "warn\n"),
            (1.26, "o", "€\r\n"),
            (2.0, "r", "100x30"),
            (2.1, "o", "\u{fffd}\n"),
        ];
        assert_eq!(body.len(), want.len(), "{body:?}");
        for ((t, c, x), (wt, wc, wx)) in body.iter().zip(&want) {
            assert!((t - wt).abs() < 1e-9, "{t} vs {wt}");
            assert_eq!((c.as_str(), x.as_str()), (*wc, *wx));
        }
        // The header is the first line, version first, as players expect.
        let mut raw = Vec::new();
        asciicast(&events, None, &mut raw).unwrap();
        let raw = String::from_utf8(raw).unwrap();
        assert!(
            raw.starts_with(
                r#"{"version":2,"width":132,"height":40,"env":{"TERM":"xterm-256color"}}"#
            ),
            "{raw}"
        );
        assert!(raw.contains("[0.500000, \"o\", \"\\u001b[1;32m$"), "{raw}");
    }

    #[test]
    fn asciicast_without_a_pty_uses_the_first_output_channel() {
        let events = vec![
            ev(
                0,
                0,
                4,
                EventKind::Request {
                    what: "exec".into(),
                    detail: "uptime".into(),
                    verdict: "allow".into(),
                    rule: "p/r".into(),
                    reason: None,
                },
            ),
            ev(
                1,
                10,
                4,
                EventKind::Output {
                    data: b"up 3 days\n".to_vec(),
                },
            ),
            ev(
                2,
                20,
                4,
                EventKind::Output {
                    data: b"\xf0\x9f".to_vec(),
                },
            ),
        ];
        let got = lines(&events, None);
        assert_eq!(
            got[0],
            serde_json::json!({"version": 2, "width": 80, "height": 24})
        );
        assert_eq!(got[1], serde_json::json!([0.00001, "o", "up 3 days\n"]));
        // The cut sequence at the end is shown as U+FFFD.
        assert_eq!(got[2], serde_json::json!([0.00002, "o", "\u{fffd}"]));
        assert_eq!(got.len(), 3);
    }

    #[test]
    fn jsonl_is_one_event_per_line() {
        let events = vec![
            ev(
                0,
                5,
                0,
                EventKind::Input {
                    data: vec![0, 0xff],
                },
            ),
            ev(1, 6, 0, EventKind::Eof),
        ];
        let mut out = Vec::new();
        jsonl(&events, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let back: Vec<Event> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(back, events);
        assert!(text.contains(r#""data":"AP8=""#), "{text}");
    }
}
