//! `cordon replay ID`: the transcript of a recorded session, in order: who
//! connected, every statement with its verdict, rule, timing, rows and
//! masked columns, and how the session ended.

use std::path::Path;

use super::sessions::{escape, one_line, statements, verdict_label};
use crate::{audit::Session, control::Request};

pub fn run(config: &Path, id: &str) -> anyhow::Result<()> {
    let data = super::call(config, &Request::SessionsShow { id: id.to_owned() })?;
    let s: Session = serde_json::from_value(data)?;
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
