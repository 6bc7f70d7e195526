//! Audit: the last stage of every connection. Each captured connection is a
//! [`Session`] record in the sled store, written when the verdict is made and
//! again when the session ends.
//!
//! Durability: every write goes to sled *and* is appended to a plain journal
//! file before the caller continues, so a record that was written survives a
//! SIGKILL of the daemon (the bytes are in the kernel's page cache). A
//! checkpoint every second flushes sled to disk and drops the journal; on
//! start, leftover journals are replayed into sled. A power loss can lose at
//! most the last checkpoint interval.

pub mod events;
pub mod ratelimit;
pub mod recording;
pub mod statements;

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    str::FromStr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

const JOURNAL_PREFIX: &str = "journal.";

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("audit store write failed: {0}")]
    Store(#[source] sled::Error),
    #[error("audit journal {path}: {source}")]
    Journal {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit record could not be encoded: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("audit lock poisoned")]
    Poisoned,
    #[error("cannot start the {what} thread: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Time-ordered session identifier (microseconds since the epoch, made
/// unique), shown as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(u64);

impl SessionId {
    pub(crate) fn key(self) -> [u8; 8] {
        self.0.to_be_bytes()
    }
    #[cfg(test)]
    pub(crate) fn from_raw(v: u64) -> Self {
        Self(v)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for SessionId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 16 {
            return Err(format!("`{s}` is not a session id (16 hex digits)"));
        }
        u64::from_str_radix(s, 16)
            .map(SessionId)
            .map_err(|_| format!("`{s}` is not a session id (16 hex digits)"))
    }
}

impl Serialize for SessionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SessionId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

/// One captured connection, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub agent: Option<String>,
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub exe: Option<String>,
    pub comm: String,
    pub cgroup_id: u64,
    pub cgroup: Option<String>,
    /// The destination the agent dialed.
    pub dst: String,
    pub resource: Option<String>,
    pub protocol: Option<String>,
    pub verdict: Verdict,
    /// Why the verdict was made (the rule or check that decided).
    pub reason: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub ended_at: Option<String>,
    /// Bytes from the agent to the upstream.
    pub bytes_up: u64,
    /// Bytes from the upstream to the agent.
    pub bytes_down: u64,
    /// How the session ended, and which side ended it.
    pub end_reason: Option<String>,
    /// The human on whose behalf the agent acts: the OIDC subject that
    /// launched it (`cordon run` with a login), else the approver of the
    /// just-in-time grant that admitted it, else the local uid that
    /// launched it (`uid:N`). None: unknown (e.g. a pinned service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// The just-in-time grant that admitted the session (None: a static grant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
    /// A summary of this many refused connections, over the rate recorded
    /// one by one (see `proxy::refusals`); None: one connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusals: Option<u64>,
}

struct Journal {
    file: File,
    path: PathBuf,
    seq: u64,
    dirty: bool,
}

/// The session store.
pub struct Store {
    db: sled::Db,
    sessions: sled::Tree,
    journal: Mutex<Journal>,
    dir: PathBuf,
    last_id: AtomicU64,
    /// SSH channel recordings and their writer thread.
    recording: recording::Log,
}

/// RFC 3339 in UTC, as every time in the audit is written.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (or creates) the store under `dir`, replaying any journal left
    /// by a daemon that did not shut down cleanly.
    pub fn open(dir: &Path) -> Result<Self, AuditError> {
        let journal_err = |path: &Path| {
            let path = path.to_owned();
            move |source| AuditError::Journal { path, source }
        };
        std::fs::create_dir_all(dir).map_err(journal_err(dir))?;
        let db_path = dir.join("audit.sled");
        let db = sled::Config::new()
            .path(&db_path)
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|source| AuditError::Open {
                path: db_path.clone(),
                source,
            })?;
        let sessions = db.open_tree("sessions").map_err(AuditError::Store)?;

        let mut journals: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
            .map_err(journal_err(dir))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let seq = name.strip_prefix(JOURNAL_PREFIX)?.parse().ok()?;
                Some((seq, e.path()))
            })
            .collect();
        journals.sort();
        for (_, path) in &journals {
            let file = File::open(path).map_err(journal_err(path))?;
            for line in BufReader::new(file).lines() {
                let line = line.map_err(journal_err(path))?;
                // A torn last line (daemon killed mid-write) is skipped.
                if let Ok(session) = serde_json::from_str::<Session>(&line) {
                    sessions
                        .insert(session.id.key(), line.as_bytes())
                        .map_err(AuditError::Store)?;
                }
            }
        }
        db.flush().map_err(AuditError::Store)?;
        for (_, path) in &journals {
            std::fs::remove_file(path).map_err(journal_err(path))?;
        }
        let seq = journals.last().map_or(0, |(s, _)| s + 1);
        let journal = Self::new_journal(dir, seq)?;

        let last = sessions
            .last()
            .map_err(AuditError::Store)?
            .and_then(|(k, _)| <[u8; 8]>::try_from(k.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        let recording = recording::Log::open(&db, Some(&dir.join("recordings")))?;
        Ok(Self {
            db,
            sessions,
            journal: Mutex::new(journal),
            dir: dir.to_owned(),
            last_id: AtomicU64::new(last),
            recording,
        })
    }

    fn new_journal(dir: &Path, seq: u64) -> Result<Journal, AuditError> {
        let path = dir.join(format!("{JOURNAL_PREFIX}{seq}"));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| AuditError::Journal {
                path: path.clone(),
                source,
            })?;
        Ok(Journal {
            file,
            path,
            seq,
            dirty: false,
        })
    }

    /// A new, unique, time-ordered session id.
    pub fn next_id(&self) -> SessionId {
        let now = now_micros();
        let prev = self
            .last_id
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |prev| {
                Some(now.max(prev + 1))
            })
            .unwrap_or(now);
        SessionId(now.max(prev + 1))
    }

    /// Writes (or overwrites) a session record. When this returns Ok the
    /// record survives a crash of the daemon.
    pub fn record(&self, session: &Session) -> Result<(), AuditError> {
        self.record_all(std::slice::from_ref(session))
    }

    /// Writes several records under one lock, with one journal write.
    pub fn record_all(&self, sessions: &[Session]) -> Result<(), AuditError> {
        let mut lines = Vec::with_capacity(sessions.len() * 512);
        let mut ends = Vec::with_capacity(sessions.len());
        for session in sessions {
            serde_json::to_writer(&mut lines, session).map_err(AuditError::Encode)?;
            ends.push(lines.len());
            lines.push(b'\n');
        }
        let mut journal = self.journal.lock().map_err(|_| AuditError::Poisoned)?;
        let mut from = 0;
        for (session, end) in sessions.iter().zip(ends) {
            let line = lines.get(from..end).unwrap_or_default();
            self.sessions
                .insert(session.id.key(), line)
                .map_err(AuditError::Store)?;
            from = end + 1;
        }
        journal
            .file
            .write_all(&lines)
            .map_err(|source| AuditError::Journal {
                path: journal.path.clone(),
                source,
            })?;
        journal.dirty = true;
        Ok(())
    }

    /// Flushes sled to disk and retires the journal it covers.
    pub fn checkpoint(&self) -> Result<(), AuditError> {
        let old_path = {
            let mut journal = self.journal.lock().map_err(|_| AuditError::Poisoned)?;
            if !journal.dirty {
                return Ok(());
            }
            let fresh = Self::new_journal(&self.dir, journal.seq + 1)?;
            std::mem::replace(&mut *journal, fresh).path
        };
        // Every record in the old journal was inserted into sled before the
        // swap above, so this flush covers all of them.
        self.db.flush().map_err(AuditError::Store)?;
        std::fs::remove_file(&old_path).map_err(|source| AuditError::Journal {
            path: old_path,
            source,
        })
    }

    /// Starts a writer thread for records nobody waits on (session ends), so
    /// the proxy thread does not pay for them. The writer wakes for the
    /// first record, then gathers what arrives within [`DEFERRED_BATCH`] and
    /// writes it at once: senders do not wake it per record. Dropping the
    /// handle drains the queue and stops the thread.
    pub fn deferred(self: &std::sync::Arc<Self>) -> Deferred {
        let (tx, rx) = std::sync::mpsc::channel::<Session>();
        let store = self.clone();
        let thread = std::thread::spawn(move || {
            while let Ok(first) = rx.recv() {
                std::thread::sleep(DEFERRED_BATCH);
                let mut batch = vec![first];
                batch.extend(rx.try_iter());
                if store.record_all(&batch).is_err() {
                    // One bad record must not cost the others: one at a time.
                    for session in &batch {
                        if let Err(e) = store.record(session) {
                            tracing::warn!(session = %session.id, error = %e, "could not record the end of a session");
                        }
                    }
                }
            }
        });
        Deferred {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn get(&self, id: SessionId) -> Result<Option<Session>, AuditError> {
        Ok(self
            .sessions
            .get(id.key())
            .map_err(AuditError::Store)?
            .and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// Newest first, optionally only one agent's, at most `limit`.
    pub fn list(&self, agent: Option<&str>, limit: usize) -> Result<Vec<Session>, AuditError> {
        let mut out = Vec::new();
        for item in self.sessions.iter().rev() {
            let (_, v) = item.map_err(AuditError::Store)?;
            let Ok(s) = serde_json::from_slice::<Session>(&v) else {
                continue;
            };
            if agent.is_some_and(|a| s.agent.as_deref() != Some(a)) {
                continue;
            }
            out.push(s);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    pub fn count(&self) -> usize {
        self.sessions.len()
    }

    /// The sled database the sessions live in, for the other stores that
    /// share it (sled allows one process per database).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }
}

/// How long the deferred writer gathers session ends before writing them.
const DEFERRED_BATCH: std::time::Duration = std::time::Duration::from_millis(5);

/// Handle to the deferred writer (see [`Store::deferred`]).
pub struct Deferred {
    tx: Option<std::sync::mpsc::Sender<Session>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Deferred {
    pub fn record(&self, session: Session) {
        let sent = match &self.tx {
            Some(tx) => tx.send(session).is_ok(),
            None => false,
        };
        if !sent {
            tracing::warn!("audit writer stopped; a session end was not recorded");
        }
    }
}

impl Drop for Deferred {
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

    fn sample(id: SessionId, agent: &str) -> Session {
        Session {
            id,
            agent: Some(agent.into()),
            pid: 42,
            uid: 1000,
            gid: 1000,
            exe: Some("/usr/bin/curl".into()),
            comm: "curl".into(),
            cgroup_id: 7,
            cgroup: None,
            dst: "10.0.0.5:5432".into(),
            resource: Some("orders-db".into()),
            protocol: Some("tcp".into()),
            verdict: Verdict::Allow,
            reason: "grant".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            ended_at: None,
            bytes_up: 0,
            bytes_down: 0,
            end_reason: None,
            on_behalf_of: None,
            grant: None,
            refusals: None,
        }
    }

    #[test]
    fn ids_are_unique_ordered_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = store.next_id();
        let b = store.next_id();
        assert!(b > a);
        assert_eq!(a.to_string().parse::<SessionId>(), Ok(a));
        assert!("xyz".parse::<SessionId>().is_err());
    }

    #[test]
    fn journal_is_replayed_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let id;
        {
            let store = Store::open(dir.path()).unwrap();
            id = store.next_id();
            store.record(&sample(id, "a")).unwrap();
            // Simulate a crash: sled is never flushed and never dropped cleanly.
            std::mem::forget(store);
        }
        // The journal holds the record; a torn trailing line is ignored.
        let journal = dir.path().join("journal.0");
        let mut f = OpenOptions::new().append(true).open(&journal).unwrap();
        f.write_all(b"{\"id\":\"00").unwrap();
        drop(f);
        // Reopen a copy of the directory, as a restarted daemon would.
        let copy = tempfile::tempdir().unwrap();
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                std::fs::copy(e.path(), copy.path().join(e.file_name())).unwrap();
            }
        }
        let store = Store::open(copy.path()).unwrap();
        assert_eq!(store.get(id).unwrap().map(|s| s.pid), Some(42));
        assert!(!copy.path().join("journal.0").exists());
        assert!(store.next_id() > id);
    }

    #[test]
    fn list_filters_by_agent_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for agent in ["a", "b", "a"] {
            store.record(&sample(store.next_id(), agent)).unwrap();
        }
        store.checkpoint().unwrap();
        let a = store.list(Some("a"), 10).unwrap();
        assert_eq!(a.len(), 2);
        assert!(a[0].id > a[1].id);
        assert_eq!(store.list(None, 2).unwrap().len(), 2);
    }
}
