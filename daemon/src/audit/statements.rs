//! Statement log: every command a protocol handler decided on (allowed,
//! denied, held for approval), with timing, rows and masked columns, keyed
//! by session and sequence in the same sled database as the sessions.
//!
//! Allowed statements are written in batches by a writer thread (the proxy
//! does not wait on them): one sled value per session per batch, holding its
//! records as JSON lines under the key of the batch's first record, so a
//! busy session costs sled one insert per batch rather than per statement. A
//! denial is written alone and flushed before the agent is answered, so a
//! deny is never lost.

use std::sync::{mpsc, Arc};

use serde::{Deserialize, Serialize};

use super::{AuditError, SessionId};

/// Largest statement text kept in the log; longer text is cut, with a note.
pub const MAX_TEXT: usize = 16 * 1024;

/// How often the writer thread stores what the proxy queued.
const WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(25);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementRecord {
    pub session: SessionId,
    pub seq: u32,
    /// RFC 3339, UTC, when the agent sent it.
    pub at: String,
    /// Microseconds from the agent's message to the upstream's answer.
    pub duration_us: u64,
    /// `allow`, `deny` or `approve` (held: answered as a denial).
    pub verdict: String,
    /// `<policy>/<rule>` that decided.
    pub rule: String,
    /// Why, for denials.
    pub reason: Option<String>,
    /// The statement text as sent (cut at [`MAX_TEXT`]).
    pub text: String,
    /// Rows returned or affected.
    pub rows: u64,
    /// Columns whose values were masked in the answer.
    pub masked: Vec<String>,
    /// The SQLSTATE the upstream answered with, if it failed there.
    pub error: Option<String>,
}

/// Cuts `text` to [`MAX_TEXT`] bytes on a character boundary.
pub fn clip(text: &str) -> String {
    if text.len() <= MAX_TEXT {
        return text.to_owned();
    }
    let mut end = MAX_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… [{} bytes]",
        text.get(..end).unwrap_or_default(),
        text.len()
    )
}

fn key(session: SessionId, seq: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&session.key());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The statement log.
pub struct Statements {
    db: sled::Db,
    tree: sled::Tree,
}

impl Statements {
    pub fn open(db: &sled::Db) -> Result<Self, AuditError> {
        Ok(Self {
            db: db.clone(),
            tree: db.open_tree("statements").map_err(AuditError::Store)?,
        })
    }

    fn insert(&self, rec: &StatementRecord) -> Result<(), AuditError> {
        let v = serde_json::to_vec(rec).map_err(AuditError::Encode)?;
        self.tree
            .insert(key(rec.session, rec.seq), v)
            .map_err(AuditError::Store)?;
        Ok(())
    }

    /// Writes a record and flushes it to disk before returning.
    pub fn record_durably(&self, rec: &StatementRecord) -> Result<(), AuditError> {
        self.insert(rec)?;
        self.db.flush().map_err(AuditError::Store)?;
        Ok(())
    }

    /// Every statement of a session, in order.
    pub fn of_session(&self, session: SessionId) -> Result<Vec<StatementRecord>, AuditError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(session.key()) {
            let (_, v) = item.map_err(AuditError::Store)?;
            // A batch value is JSON lines; a single record is one line.
            for line in v.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                if let Ok(rec) = serde_json::from_slice::<StatementRecord>(line) {
                    out.push(rec);
                }
            }
        }
        // A denial is stored under its own key, which may sort after the
        // batch holding statements that came after it.
        out.sort_by_key(|r| r.seq);
        Ok(out)
    }

    /// Starts the batching writer; dropping the handle drains it.
    pub fn writer(self: &Arc<Self>) -> StatementWriter {
        let (tx, rx) = mpsc::channel::<StatementRecord>();
        let log = self.clone();
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let lost = failed.clone();
        let thread = std::thread::spawn(move || {
            // Wake on a timer, not per record: a sender never has to wake
            // this thread, so the proxy's hot path pays no cross-thread
            // wake-up per statement.
            let mut open = true;
            // Per session: the key of its first record in this batch, and
            // the JSON lines.
            let mut lines: std::collections::BTreeMap<SessionId, ([u8; 12], Vec<u8>)> =
                std::collections::BTreeMap::new();
            while open {
                std::thread::sleep(WRITE_INTERVAL);
                let mut n = 0usize;
                loop {
                    match rx.try_recv() {
                        Ok(rec) => {
                            let (_, buf) = lines
                                .entry(rec.session)
                                .or_insert_with(|| (key(rec.session, rec.seq), Vec::new()));
                            let before = buf.len();
                            match serde_json::to_writer(&mut *buf, &rec) {
                                Ok(()) => {
                                    buf.push(b'\n');
                                    n += 1;
                                }
                                Err(_) => {
                                    buf.truncate(before);
                                    lost.store(true, std::sync::atomic::Ordering::Release);
                                }
                            }
                        }
                        Err(mpsc::TryRecvError::Empty) => break,
                        Err(mpsc::TryRecvError::Disconnected) => {
                            open = false;
                            break;
                        }
                    }
                }
                if n > 0 {
                    let mut batch = sled::Batch::default();
                    for (_, (k, buf)) in std::mem::take(&mut lines) {
                        if !buf.is_empty() {
                            batch.insert(&k[..], buf);
                        }
                    }
                    if let Err(e) = log.tree.apply_batch(batch) {
                        tracing::error!(error = %e, records = n, "could not record statements");
                        lost.store(true, std::sync::atomic::Ordering::Release);
                    }
                }
                lines.clear();
            }
        });
        StatementWriter {
            tx: Some(tx),
            thread: Some(thread),
            failed,
        }
    }
}

/// Handle to the statement writer thread.
pub struct StatementWriter {
    tx: Option<mpsc::Sender<StatementRecord>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Set once a statement could not be recorded: sessions stop rather than go on unrecorded.
    failed: Arc<std::sync::atomic::AtomicBool>,
}

impl StatementWriter {
    pub fn record(&self, rec: StatementRecord) {
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(rec).is_ok());
        if !sent {
            tracing::error!("statement writer stopped; a statement was not recorded");
            self.failed
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// Whether a statement could not be recorded (a cheap check before each message).
    pub fn failed(&self) -> bool {
        self.failed.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for StatementWriter {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(session: SessionId, seq: u32, verdict: &str) -> StatementRecord {
        StatementRecord {
            session,
            seq,
            at: "2026-01-01T00:00:00Z".into(),
            duration_us: 5,
            verdict: verdict.into(),
            rule: "p/r".into(),
            reason: None,
            text: "select 1".into(),
            rows: 1,
            masked: vec![],
            error: None,
        }
    }

    #[test]
    fn statements_are_kept_per_session_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let log = Arc::new(Statements::open(&db).unwrap());
        let a = SessionId::from_raw(10);
        let b = SessionId::from_raw(11);
        {
            let w = log.writer();
            for seq in 0..300 {
                w.record(rec(a, seq, "allow"));
            }
            w.record(rec(b, 0, "allow"));
        }
        log.record_durably(&rec(a, 300, "deny")).unwrap();
        // A denial recorded between allowed statements of the same batch.
        {
            let w = log.writer();
            w.record(rec(b, 1, "allow"));
            log.record_durably(&rec(b, 2, "deny")).unwrap();
            w.record(rec(b, 3, "allow"));
        }
        let seqs: Vec<(u32, String)> = log
            .of_session(b)
            .unwrap()
            .into_iter()
            .map(|r| (r.seq, r.verdict))
            .collect();
        assert_eq!(
            seqs,
            vec![
                (0, "allow".to_owned()),
                (1, "allow".to_owned()),
                (2, "deny".to_owned()),
                (3, "allow".to_owned())
            ]
        );
        let got = log.of_session(a).unwrap();
        assert_eq!(got.len(), 301);
        assert!(got.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(got.last().unwrap().verdict, "deny");
        assert!(clip(&"é".repeat(MAX_TEXT)).len() < MAX_TEXT + 40);
    }

    #[test]
    fn a_statement_that_cannot_be_recorded_marks_the_writer_failed() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let log = Arc::new(Statements::open(&db).unwrap());
        let mut w = log.writer();
        w.record(rec(SessionId::from_raw(1), 0, "allow"));
        assert!(!w.failed());
        // The writer thread is gone: the next record is lost, and that is reported.
        drop(w.tx.take());
        w.record(rec(SessionId::from_raw(1), 1, "allow"));
        assert!(w.failed());
    }
}
