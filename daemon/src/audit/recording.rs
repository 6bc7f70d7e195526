//! SSH channel recording: what the SSH handler saw on every channel of a
//! session (requests and their verdicts, terminal size, input, output,
//! exit status, file operations), with timing, streamed into the
//! `ssh_events` tree of the audit database as it happens. `cordon replay`
//! and `cordon export` read it back through the control API.
//!
//! Every event is a sled entry. The bytes of input, output and stderr
//! events are appended to the session's data file
//! (`<state_dir>/audit/recordings/<session>.data`, 0600) and the sled entry
//! holds their offset and length: a bulk transfer costs one write of its
//! bytes instead of sled's copies of large values (which made recording
//! three quarters of the proxy's CPU in `cargo xtask bench ssh`). The bytes
//! are written before the entry that points at them.
//!
//! Keys are the session id and a per-session sequence number, both big
//! endian, so a prefix scan returns one session's events in order.
//!
//! Durability: [`Recorder::event`] queues the event for a writer thread,
//! which stores a batch at most [`WRITE_INTERVAL`] after the first event of
//! it was queued and flushes the database at most [`FLUSH_INTERVAL`] after
//! a write, so a SIGKILL of the daemon loses at most the last
//! `WRITE_INTERVAL + FLUSH_INTERVAL` (well under a second).
//! [`Recorder::event_durable`] (denials) is written and flushed before it
//! returns. Memory is bounded: while [`MAX_PENDING`] bytes wait for the
//! writer, `event` blocks until the writer has caught up. Nothing is
//! dropped.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use super::{AuditError, SessionId};

/// Longest time a queued event waits before it is written to the database.
pub const WRITE_INTERVAL: Duration = Duration::from_millis(100);

/// Longest time a written event waits before the database is flushed.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// Bytes queued for the writer beyond which [`Recorder::event`] waits for
/// it. The batch being written is at most this size too, so recording holds
/// at most about twice this in memory.
pub const MAX_PENDING: usize = 32 * 1024 * 1024;

/// Bytes queued at which the writer is woken at once instead of waiting for
/// [`WRITE_INTERVAL`]: bulk output is written in steady, small batches.
const EAGER_BYTES: usize = 1024 * 1024;

/// Accounted per queued event on top of its data.
const EVENT_OVERHEAD: usize = 64;

/// Largest page of events [`page`] returns: data bytes, and events.
pub const PAGE_BYTES: usize = 4 * 1024 * 1024;
pub const PAGE_EVENTS: usize = 20_000;

/// Name of the sled tree the events live in.
const TREE: &str = "ssh_events";

/// First byte of a stored value holding a data event in binary form:
/// `[DATA_TAG][kind][t_us: u64 BE][channel: u32 BE][data..]` (the sequence
/// number is in the key). Every other event is stored as its JSON, which
/// starts with `{`.
const DATA_TAG: u8 = 0x01;
const DATA_HEADER: usize = 1 + 1 + 8 + 4;

/// First byte of a stored value whose data bytes live in the session's data file (see
/// [`Log::open`]): `[DATA_REF_TAG][kind][t_us: u64 BE][channel: u32 BE][offset: u64 BE]
/// [len: u32 BE]`. sled holds the event and its place; the bytes are appended once to a
/// plain file, so bulk output costs one write instead of sled's copies of large values.
const DATA_REF_TAG: u8 = 0x02;
const DATA_REF_LEN: usize = DATA_HEADER + 8 + 4;

/// Whether a stored value is an input/output/stderr event.
fn is_data(value: &[u8]) -> bool {
    matches!(value.first(), Some(&DATA_TAG) | Some(&DATA_REF_TAG))
}

/// One recorded event of an SSH session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the session, from 0.
    pub seq: u64,
    /// Microseconds since the recording started.
    pub t_us: u64,
    /// The SSH channel (the agent side's channel id).
    pub channel: u32,
    pub kind: EventKind,
}

/// What happened. Byte payloads are base64 strings in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A channel was opened (`session`), or refused (`direct-tcpip`, ...).
    Open {
        kind: String,
    },
    /// A channel request and its verdict. `what`: `exec`, `shell`,
    /// `subsystem`, `pty`, `env`, `x11`, `port-forward`, `agent-forward`,
    /// `typed-line`, ...
    Request {
        what: String,
        detail: String,
        verdict: String,
        rule: String,
        reason: Option<String>,
    },
    Pty {
        term: String,
        cols: u32,
        rows: u32,
    },
    Resize {
        cols: u32,
        rows: u32,
    },
    /// Agent to host.
    Input {
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// Host to agent, stdout.
    Output {
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    /// Host to agent, stderr (extended data).
    Stderr {
        #[serde(with = "base64_bytes")]
        data: Vec<u8>,
    },
    Exit {
        status: u32,
    },
    Signal {
        name: String,
        core_dumped: bool,
        message: String,
    },
    Eof,
    Close,
    /// An SFTP/SCP file event, as the inspector serialized it.
    File {
        event: serde_json::Value,
    },
}

impl EventKind {
    /// The bytes of an input/output/stderr event.
    pub fn data(&self) -> Option<&[u8]> {
        match self {
            Self::Input { data } | Self::Output { data } | Self::Stderr { data } => Some(data),
            _ => None,
        }
    }
}

/// `Vec<u8>` as a standard base64 string.
mod base64_bytes {
    use base64::Engine as _;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

fn key(session: SessionId, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    let (s, q) = k.split_at_mut(8);
    s.copy_from_slice(&session.key());
    q.copy_from_slice(&seq.to_be_bytes());
    k
}

/// The stored form of an event (see [`DATA_TAG`]).
fn encode(event: &Event) -> Result<Vec<u8>, AuditError> {
    let tag = match &event.kind {
        EventKind::Input { .. } => 0u8,
        EventKind::Output { .. } => 1,
        EventKind::Stderr { .. } => 2,
        _ => return serde_json::to_vec(event).map_err(AuditError::Encode),
    };
    let data = event.kind.data().unwrap_or_default();
    let mut out = Vec::with_capacity(DATA_HEADER + data.len());
    out.push(DATA_TAG);
    out.push(tag);
    out.extend_from_slice(&event.t_us.to_be_bytes());
    out.extend_from_slice(&event.channel.to_be_bytes());
    out.extend_from_slice(data);
    Ok(out)
}

/// Reads data bytes back from a session's data file, keeping the last file open.
#[derive(Default)]
struct DataReader {
    open: Option<(SessionId, std::fs::File)>,
}

impl DataReader {
    fn read(
        &mut self,
        dir: &std::path::Path,
        session: SessionId,
        offset: u64,
        len: u32,
    ) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt as _;
        if self.open.as_ref().map(|(s, _)| *s) != Some(session) {
            let file = std::fs::File::open(data_path(dir, session)).ok()?;
            self.open = Some((session, file));
        }
        let (_, file) = self.open.as_ref()?;
        let mut buf = vec![0u8; usize::try_from(len).ok()?];
        file.read_exact_at(&mut buf, offset).ok()?;
        Some(buf)
    }
}

fn data_path(dir: &std::path::Path, session: SessionId) -> std::path::PathBuf {
    dir.join(format!("{session}.data"))
}

/// An event from its key and stored value (data bytes read through `reader` from `dir`);
/// None if either is malformed or the bytes are missing.
fn decode_with(
    dir: Option<&std::path::Path>,
    reader: &mut DataReader,
    session: SessionId,
    key: &[u8],
    value: &[u8],
) -> Option<Event> {
    if value.first() != Some(&DATA_REF_TAG) {
        return decode(key, value);
    }
    let seq = u64::from_be_bytes(key.get(8..16)?.try_into().ok()?);
    let tag = *value.get(1)?;
    let t_us = u64::from_be_bytes(value.get(2..10)?.try_into().ok()?);
    let channel = u32::from_be_bytes(value.get(10..14)?.try_into().ok()?);
    let offset = u64::from_be_bytes(value.get(14..22)?.try_into().ok()?);
    let len = u32::from_be_bytes(value.get(22..26)?.try_into().ok()?);
    let data = reader.read(dir?, session, offset, len)?;
    data_event(seq, tag, t_us, channel, data)
}

/// An event from its key and stored value; None if either is malformed.
fn decode(key: &[u8], value: &[u8]) -> Option<Event> {
    let seq = u64::from_be_bytes(key.get(8..16)?.try_into().ok()?);
    if value.first() != Some(&DATA_TAG) {
        let mut event: Event = serde_json::from_slice(value).ok()?;
        event.seq = seq;
        return Some(event);
    }
    let tag = *value.get(1)?;
    let t_us = u64::from_be_bytes(value.get(2..10)?.try_into().ok()?);
    let channel = u32::from_be_bytes(value.get(10..14)?.try_into().ok()?);
    let data = value.get(DATA_HEADER..)?.to_vec();
    data_event(seq, tag, t_us, channel, data)
}

/// A byte event (input, output, stderr) from its stored tag; None for an
/// unknown tag.
fn data_event(seq: u64, tag: u8, t_us: u64, channel: u32, data: Vec<u8>) -> Option<Event> {
    let kind = match tag {
        0 => EventKind::Input { data },
        1 => EventKind::Output { data },
        2 => EventKind::Stderr { data },
        _ => return None,
    };
    Some(Event {
        seq,
        t_us,
        channel,
        kind,
    })
}

/// A key and the value stored under it.
type Stored = ([u8; 16], Vec<u8>);

/// Events queued for the writer, and its state.
#[derive(Default)]
struct Queue {
    pending: Vec<(SessionId, Event)>,
    pending_bytes: usize,
    /// When the oldest pending event was queued.
    first_at: Option<Instant>,
    /// The batch the writer is storing now.
    in_flight: Arc<Vec<(SessionId, Event)>>,
    /// Batches taken by the writer, and batches it has finished storing.
    taken: u64,
    done: u64,
    /// Write without waiting for the interval (backpressure, a reader).
    urgent: bool,
    /// Asked to stop: drain and exit.
    stopping: bool,
    /// The writer has exited; events are written by their callers.
    stopped: bool,
}

struct Shared {
    db: sled::Db,
    tree: sled::Tree,
    /// Where data bytes go (one append-only file per session), or None: inline in sled.
    data_dir: Option<std::path::PathBuf>,
    /// Serializes appends to the data files (the writer, and the rare synchronous writes).
    appending: Mutex<()>,
    /// Set when events could not be stored: sessions must stop rather than go on unrecorded.
    failed: std::sync::atomic::AtomicBool,
    failure: Mutex<Option<String>>,
    queue: Mutex<Queue>,
    /// Wakes the writer.
    wake: Condvar,
    /// Wakes callers waiting for room in the queue or for a batch.
    written: Condvar,
    /// Sessions with a live [`Recorder`], so that a second `start` for one
    /// shares its clock and sequence.
    live: Mutex<HashMap<SessionId, Weak<Inner>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent at every point a
    // panic could occur, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn store(&self, session: SessionId, event: &Event) -> Result<(), AuditError> {
        let value = self.encode_batch(std::slice::from_ref(&(session, event.clone())))?;
        for (k, v) in value {
            self.tree.insert(k, v).map_err(AuditError::Store)?;
        }
        Ok(())
    }

    /// Stored forms of a batch: data bytes appended to their sessions' data files first
    /// (one write per session and batch), then the values that point at them.
    fn encode_batch(&self, batch: &[(SessionId, Event)]) -> Result<Vec<Stored>, AuditError> {
        let Some(dir) = &self.data_dir else {
            return batch
                .iter()
                .map(|(s, e)| Ok((key(*s, e.seq), encode(e)?)))
                .collect();
        };
        let _guard = lock(&self.appending);
        // Per session: where its file ends now, and the chunks to append (borrowed: written
        // with one vectored write, no copy into a staging buffer).
        let mut files: HashMap<SessionId, (u64, u64, Vec<&[u8]>)> = HashMap::new();
        let mut out = Vec::with_capacity(batch.len());
        for (session, event) in batch {
            let tag = match &event.kind {
                EventKind::Input { .. } => 0u8,
                EventKind::Output { .. } => 1,
                EventKind::Stderr { .. } => 2,
                _ => {
                    out.push((key(*session, event.seq), encode(event)?));
                    continue;
                }
            };
            let data = event.kind.data().unwrap_or_default();
            let entry = match files.entry(*session) {
                std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    let len = std::fs::metadata(data_path(dir, *session)).map_or(0, |m| m.len());
                    v.insert((len, 0, Vec::new()))
                }
            };
            let offset = entry.0 + entry.1;
            entry.1 += data.len() as u64;
            entry.2.push(data);
            let len = u32::try_from(data.len()).map_err(|_| {
                AuditError::Encode(serde::ser::Error::custom("a data event over 4 GiB"))
            })?;
            let mut v = Vec::with_capacity(DATA_REF_LEN);
            v.push(DATA_REF_TAG);
            v.push(tag);
            v.extend_from_slice(&event.t_us.to_be_bytes());
            v.extend_from_slice(&event.channel.to_be_bytes());
            v.extend_from_slice(&offset.to_be_bytes());
            v.extend_from_slice(&len.to_be_bytes());
            out.push((key(*session, event.seq), v));
        }
        for (session, (_, _, chunks)) in files {
            if chunks.is_empty() {
                continue;
            }
            append(&data_path(dir, session), &chunks).map_err(|source| AuditError::Journal {
                path: data_path(dir, session),
                source,
            })?;
        }
        Ok(out)
    }

    /// Records that events were lost: every recorder reports it from now on.
    fn fail(&self, why: String) {
        lock(&self.failure).get_or_insert(why);
        self.failed.store(true, Ordering::Release);
    }

    /// Has the writer store everything queued so far, and waits for it.
    fn sync(&self) {
        let mut q = lock(&self.queue);
        let target = if q.pending.is_empty() {
            q.taken
        } else {
            q.taken + 1
        };
        if q.done >= target || q.stopped {
            return;
        }
        q.urgent = true;
        self.wake.notify_one();
        while q.done < target && !q.stopped {
            q = self.written.wait(q).unwrap_or_else(PoisonError::into_inner);
        }
    }

    fn writer(self: Arc<Self>) {
        let mut last_flush = Instant::now();
        let mut dirty = false;
        loop {
            let mut q = lock(&self.queue);
            loop {
                if q.stopping || q.urgent {
                    break;
                }
                let write_due = q.first_at.map(|t| t + WRITE_INTERVAL);
                let flush_due = dirty.then(|| last_flush + FLUSH_INTERVAL);
                let due = match (write_due, flush_due) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                let now = Instant::now();
                q = match due {
                    None => self.wake.wait(q).unwrap_or_else(PoisonError::into_inner),
                    Some(due) if due <= now => break,
                    Some(due) => {
                        self.wake
                            .wait_timeout(q, due - now)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0
                    }
                };
            }
            let batch = Arc::new(std::mem::take(&mut q.pending));
            q.in_flight = batch.clone();
            q.pending_bytes = 0;
            q.first_at = None;
            q.urgent = false;
            q.taken += 1;
            let stopping = q.stopping;
            // Callers blocked on a full queue may go on filling the next one.
            self.written.notify_all();
            drop(q);

            if !batch.is_empty() {
                self.write_batch(&batch);
                dirty = true;
            }
            drop(batch);
            if dirty && (stopping || last_flush.elapsed() >= FLUSH_INTERVAL) {
                if let Err(e) = self.db.flush() {
                    tracing::error!(error = %e, "could not flush the ssh recording to disk");
                }
                last_flush = Instant::now();
                dirty = false;
            }

            let mut q = lock(&self.queue);
            q.in_flight = Arc::default();
            q.done = q.taken;
            if stopping && q.pending.is_empty() {
                q.stopped = true;
                self.written.notify_all();
                return;
            }
            self.written.notify_all();
        }
    }

    fn write_batch(&self, batch: &[(SessionId, Event)]) {
        let mut b = sled::Batch::default();
        match self.encode_batch(batch) {
            Ok(values) => {
                for (k, v) in values {
                    b.insert(&k[..], v);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, events = batch.len(), "ssh recording events could not be encoded");
                self.fail(format!("recording events could not be written: {e}"));
                return;
            }
        }
        if let Err(e) = self.tree.apply_batch(b) {
            tracing::error!(error = %e, events = batch.len(), "could not store ssh recording events");
            self.fail(format!("recording events could not be stored: {e}"));
        }
    }
}

/// Appends `chunks`, in order, to the file at `path` (created 0600).
fn append(path: &std::path::Path, chunks: &[&[u8]]) -> std::io::Result<()> {
    use std::io::{IoSlice, Write as _};
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    let mut slices: Vec<IoSlice<'_>> = chunks.iter().map(|c| IoSlice::new(c)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match f.write_vectored(rest) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The recording store, opened with the audit store and holding its writer
/// thread. Dropping it drains the queue, flushes and stops the thread;
/// recorders still alive afterwards write synchronously.
pub struct Log {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Log {
    /// Opens the recording in `db`; data bytes go to one append-only file per session in
    /// `data_dir` (created 0700; files 0600), or inline into sled when None.
    pub fn open(db: &sled::Db, data_dir: Option<&std::path::Path>) -> Result<Self, AuditError> {
        let tree = db.open_tree(TREE).map_err(AuditError::Store)?;
        if let Some(dir) = data_dir {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| AuditError::Journal {
                    path: dir.to_owned(),
                    source,
                })?;
        }
        let shared = Arc::new(Shared {
            db: db.clone(),
            tree,
            data_dir: data_dir.map(std::path::Path::to_owned),
            appending: Mutex::new(()),
            failed: std::sync::atomic::AtomicBool::new(false),
            failure: Mutex::new(None),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            written: Condvar::new(),
            live: Mutex::new(HashMap::new()),
        });
        let writer = shared.clone();
        let thread = std::thread::Builder::new()
            .name("cordon-recording".into())
            .spawn(move || writer.writer())
            .map_err(|source| AuditError::Thread {
                what: "ssh recording writer",
                source,
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    fn recorder(&self, session: SessionId) -> Recorder {
        let shared = &self.shared;
        let mut live = lock(&shared.live);
        if let Some(inner) = live.get(&session).and_then(Weak::upgrade) {
            return Recorder { inner };
        }
        // A recording of this session that was started before and whose
        // recorders are all gone continues after its last event.
        let (next_seq, base_us) = match self.last_event(session) {
            Some(e) => (e.seq + 1, e.t_us),
            None => (0, 0),
        };
        let inner = Arc::new(Inner {
            shared: shared.clone(),
            session,
            t0: Instant::now(),
            base_us,
            seq: AtomicU64::new(next_seq),
        });
        live.insert(session, Arc::downgrade(&inner));
        Recorder { inner }
    }

    /// The newest event recorded for a session: queued, being written or
    /// stored. Holding the queue lock, nothing moves between the first two;
    /// what the writer stores meanwhile is still in the batch it writes.
    fn last_event(&self, session: SessionId) -> Option<Event> {
        let shared = &self.shared;
        let q = lock(&shared.queue);
        let queued = q
            .pending
            .iter()
            .rev()
            .chain(q.in_flight.iter().rev())
            .find(|(s, _)| *s == session)
            .map(|(_, e)| e.clone());
        let stored = shared
            .tree
            .scan_prefix(session.key())
            .next_back()
            .and_then(Result::ok)
            .and_then(|(k, v)| {
                decode_with(
                    shared.data_dir.as_deref(),
                    &mut DataReader::default(),
                    session,
                    &k,
                    &v,
                )
            });
        drop(q);
        match (queued, stored) {
            (Some(a), Some(b)) => Some(if a.seq >= b.seq { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    /// See [`page`](self::page); a page holds at least one event.
    fn page(
        &self,
        session: SessionId,
        after: Option<u64>,
        with_data: bool,
    ) -> Result<(Vec<Event>, bool), AuditError> {
        self.shared.sync();
        let start = match after {
            None => key(session, 0),
            Some(u64::MAX) => return Ok((Vec::new(), false)),
            Some(seq) => key(session, seq + 1),
        };
        let end = key(session, u64::MAX);
        let mut out = Vec::new();
        let mut bytes = 0usize;
        let mut reader = DataReader::default();
        for item in self.shared.tree.range(start..=end) {
            let (k, v) = item.map_err(AuditError::Store)?;
            if !with_data && is_data(&v) {
                continue;
            }
            if !out.is_empty() && (bytes >= PAGE_BYTES || out.len() >= PAGE_EVENTS) {
                return Ok((out, true));
            }
            match decode_with(
                self.shared.data_dir.as_deref(),
                &mut reader,
                session,
                &k,
                &v,
            ) {
                Some(event) => {
                    bytes += event.kind.data().map_or(0, <[u8]>::len);
                    out.push(event);
                }
                None => {
                    tracing::warn!(%session, "an ssh recording event is unreadable; skipped");
                }
            }
        }
        Ok((out, false))
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        {
            let mut q = lock(&self.shared.queue);
            q.stopping = true;
            self.shared.wake.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Whatever the writer did not get to (it could not have started).
        let mut q = lock(&self.shared.queue);
        q.stopped = true;
        let rest = std::mem::take(&mut q.pending);
        self.shared.written.notify_all();
        drop(q);
        if !rest.is_empty() {
            self.shared.write_batch(&rest);
            let _ = self.shared.db.flush();
        }
    }
}

struct Inner {
    shared: Arc<Shared>,
    session: SessionId,
    t0: Instant,
    /// Added to the time since `t0` (a continued recording).
    base_us: u64,
    seq: AtomicU64,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let mut live = lock(&self.shared.live);
        if live
            .get(&self.session)
            .is_some_and(|w| w.strong_count() == 0)
        {
            live.remove(&self.session);
        }
    }
}

/// Records the channels of one SSH session. Cheap to clone; every clone
/// (and a second [`Recorder::start`] for the same session while one is
/// alive) shares the clock and the sequence.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Inner>,
}

impl Recorder {
    /// Starts (t = 0 now, on the monotonic clock) the recording of a session.
    pub fn start(store: &super::Store, session: SessionId) -> Recorder {
        store.recording.recorder(session)
    }

    /// Sequence number and time of the next event; called with the queue
    /// locked so that both grow together.
    fn stamp(&self) -> (u64, u64) {
        let seq = self.inner.seq.fetch_add(1, Ordering::Relaxed);
        let t_us = self
            .inner
            .base_us
            .saturating_add(u64::try_from(self.inner.t0.elapsed().as_micros()).unwrap_or(u64::MAX));
        (seq, t_us)
    }

    /// Queues an event for the writer thread. Does not wait, unless
    /// [`MAX_PENDING`] bytes are already queued: then it waits for the
    /// writer to catch up (never drops the event).
    pub fn event(&self, channel: u32, kind: EventKind) {
        let shared = &self.inner.shared;
        let size = EVENT_OVERHEAD + kind.data().map_or(0, <[u8]>::len);
        let mut q = lock(&shared.queue);
        while !q.stopped && q.pending_bytes >= MAX_PENDING {
            q.urgent = true;
            shared.wake.notify_one();
            q = shared
                .written
                .wait(q)
                .unwrap_or_else(PoisonError::into_inner);
        }
        let (seq, t_us) = self.stamp();
        let event = Event {
            seq,
            t_us,
            channel,
            kind,
        };
        if q.stopped {
            drop(q);
            if let Err(e) = shared.store(self.inner.session, &event) {
                tracing::error!(session = %self.inner.session, seq, error = %e, "could not store an ssh recording event");
                shared.fail(format!("a recording event could not be stored: {e}"));
            }
            return;
        }
        if q.pending.is_empty() {
            q.first_at = Some(Instant::now());
            shared.wake.notify_one();
        }
        let before = q.pending_bytes;
        q.pending_bytes += size;
        q.pending.push((self.inner.session, event));
        if before < EAGER_BYTES && q.pending_bytes >= EAGER_BYTES {
            q.urgent = true;
            shared.wake.notify_one();
        }
    }

    /// Why the recording has lost events, if it has (a cheap check for every relayed
    /// message): the caller ends the session instead of relaying what it cannot record.
    pub fn failure(&self) -> Option<String> {
        let shared = &self.inner.shared;
        if !shared.failed.load(Ordering::Acquire) {
            return None;
        }
        Some(
            lock(&shared.failure)
                .clone()
                .unwrap_or_else(|| "the recording failed".into()),
        )
    }

    /// Writes an event and flushes it to disk before returning (denials).
    pub fn event_durable(&self, channel: u32, kind: EventKind) -> Result<(), AuditError> {
        let shared = &self.inner.shared;
        let event = {
            let _q = lock(&shared.queue);
            let (seq, t_us) = self.stamp();
            Event {
                seq,
                t_us,
                channel,
                kind,
            }
        };
        shared.store(self.inner.session, &event)?;
        shared.db.flush().map_err(AuditError::Store)?;
        Ok(())
    }
}

/// One page of a session's events: those with a sequence number above
/// `after` (from the start when None), in order, up to [`PAGE_BYTES`] of
/// data or [`PAGE_EVENTS`] events; input/output/stderr only `with_data`.
/// Returns the events and whether more follow.
pub fn page(
    store: &super::Store,
    session: SessionId,
    after: Option<u64>,
    with_data: bool,
) -> Result<(Vec<Event>, bool), AuditError> {
    store.recording.page(session, after, with_data)
}

/// Every recorded event of a session, in order (empty for sessions that are
/// not SSH). The control API serves [`page`]s instead, so that a large
/// recording never has to be held at once.
#[cfg_attr(not(test), allow(dead_code))]
pub fn events(store: &super::Store, session: SessionId) -> Result<Vec<Event>, AuditError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let (page, more) = store.recording.page(session, after, true)?;
        after = page.last().map(|e| e.seq);
        out.extend(page);
        if !more || after.is_none() {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(s: &str) -> EventKind {
        EventKind::Output {
            data: s.as_bytes().to_vec(),
        }
    }

    #[test]
    fn events_are_kept_per_session_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::Store::open(dir.path()).unwrap();
        let a = store.next_id();
        let b = store.next_id();
        let ra = Recorder::start(&store, a);
        let rb = Recorder::start(&store, b);
        ra.event(
            0,
            EventKind::Open {
                kind: "session".into(),
            },
        );
        for i in 0..500 {
            ra.event(0, out(&format!("line {i}\n")));
            if i % 100 == 0 {
                rb.event(
                    7,
                    EventKind::Input {
                        data: vec![0xff, 0, b'\n'],
                    },
                );
            }
        }
        // A second start while the first is alive shares its sequence.
        let again = Recorder::start(&store, a);
        again
            .event_durable(
                0,
                EventKind::Request {
                    what: "exec".into(),
                    detail: "rm -rf /".into(),
                    verdict: "deny".into(),
                    rule: "p/default".into(),
                    reason: Some("no rule".into()),
                },
            )
            .unwrap();
        ra.event(0, EventKind::Exit { status: 1 });
        ra.event(0, EventKind::Close);

        let got = events(&store, a).unwrap();
        assert_eq!(got.len(), 504);
        assert!(got.iter().enumerate().all(|(i, e)| e.seq == i as u64));
        assert!(got.windows(2).all(|w| w[0].t_us <= w[1].t_us));
        assert_eq!(got[1].kind, out("line 0\n"));
        assert!(
            matches!(got[501].kind, EventKind::Request { ref verdict, .. } if verdict == "deny")
        );
        assert_eq!(got[503].kind, EventKind::Close);
        let gb = events(&store, b).unwrap();
        assert_eq!(gb.len(), 5);
        assert!(gb.iter().all(|e| e.channel == 7
            && e.kind
                == EventKind::Input {
                    data: vec![0xff, 0, b'\n']
                }));
        assert!(events(&store, store.next_id()).unwrap().is_empty());

        // Without data, only the other events; pages continue in order.
        let (meta, more) = store.recording.page(a, None, false).unwrap();
        assert!(!more);
        assert_eq!(meta.len(), 4);
        let (rest, _) = store.recording.page(a, Some(500), true).unwrap();
        assert_eq!(rest.first().map(|e| e.seq), Some(501));

        // All recorders gone: a new start continues the sequence and clock.
        let last_t = got[503].t_us;
        drop((ra, again));
        let r = Recorder::start(&store, a);
        r.event(0, EventKind::Eof);
        let got = events(&store, a).unwrap();
        assert_eq!(got.len(), 505);
        assert_eq!(got[504].seq, 504);
        assert!(got[504].t_us >= last_t);
        // The same while the first recorder's events are still queued.
        let c = store.next_id();
        let first = Recorder::start(&store, c);
        for _ in 0..3 {
            first.event(0, out("x"));
        }
        drop(first);
        Recorder::start(&store, c).event(0, EventKind::Close);
        let got = events(&store, c).unwrap();
        assert_eq!(got.len(), 4);
        assert_eq!(got[3].kind, EventKind::Close);
    }

    #[test]
    fn json_has_base64_data_and_tags() {
        let e = Event {
            seq: 3,
            t_us: 1500,
            channel: 2,
            kind: EventKind::Stderr {
                data: b"\xffok".to_vec(),
            },
        };
        let j = serde_json::to_string(&e).unwrap();
        assert_eq!(
            j,
            r#"{"seq":3,"t_us":1500,"channel":2,"kind":{"type":"stderr","data":"/29r"}}"#
        );
        assert_eq!(serde_json::from_str::<Event>(&j).unwrap(), e);
        let eof = serde_json::to_string(&EventKind::Eof).unwrap();
        assert_eq!(eof, r#"{"type":"eof"}"#);
        // Stored forms round-trip, binary and JSON.
        for kind in [
            out("x"),
            EventKind::Input { data: vec![] },
            EventKind::Pty {
                term: "xterm".into(),
                cols: 80,
                rows: 24,
            },
            EventKind::File {
                event: serde_json::json!({"Op": {"op": "stat", "path": "/"}}),
            },
        ] {
            let e = Event {
                seq: 9,
                t_us: 7,
                channel: 1,
                kind,
            };
            let k = key(SessionId::from_raw(1), 9);
            assert_eq!(decode(&k, &encode(&e).unwrap()), Some(e));
        }
        assert_eq!(decode(&[0; 16], &[DATA_TAG, 9, 0]), None);
    }

    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let dest = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &dest);
            } else {
                std::fs::copy(e.path(), dest).unwrap();
            }
        }
    }

    #[test]
    fn events_reach_the_disk_within_a_second_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        // No background flush by sled: only the writer's own flushes count.
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .flush_every_ms(None)
            .open()
            .unwrap();
        let log = Log::open(&db, Some(&dir.path().join("rec"))).unwrap();
        let id = SessionId::from_raw(42);
        let r = log.recorder(id);
        let queued = Instant::now();
        r.event(0, out("hello"));
        r.event(0, EventKind::Exit { status: 0 });
        let mut found = 0;
        let mut attempt = 0;
        while found < 2 && queued.elapsed() < Duration::from_millis(1000) {
            std::thread::sleep(Duration::from_millis(100));
            // What a restarted daemon would find after a SIGKILL now: the
            // files as they are, sled never flushed or closed by us.
            let copy = tempfile::tempdir().unwrap();
            copy_dir(&dir.path().join("db"), copy.path());
            let reopened = sled::open(copy.path()).unwrap();
            let tree = reopened.open_tree(TREE).unwrap();
            found = tree.scan_prefix(id.key()).count();
            attempt += 1;
        }
        assert_eq!(found, 2, "on disk after {attempt} looks");
        assert!(queued.elapsed() < Duration::from_millis(1000));
        // The crash: nothing is dropped cleanly.
        std::mem::forget(r);
        std::mem::forget(log);
        std::mem::forget(db);
    }

    #[test]
    fn data_bytes_go_to_the_session_file_and_come_back_exactly() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        let data_dir = dir.path().join("rec");
        let log = Log::open(&db, Some(&data_dir)).unwrap();
        let id = SessionId::from_raw(7);
        let r = log.recorder(id);
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        r.event(
            3,
            EventKind::Input {
                data: b"ls\r".to_vec(),
            },
        );
        r.event(3, EventKind::Output { data: big.clone() });
        r.event(3, EventKind::Exit { status: 0 });
        r.event(
            3,
            EventKind::Stderr {
                data: b"oops\n".to_vec(),
            },
        );
        let (events, more) = log.page(id, None, true).unwrap();
        assert!(!more);
        let kinds: Vec<_> = events.iter().map(|e| e.kind.clone()).collect();
        assert_eq!(
            kinds,
            vec![
                EventKind::Input {
                    data: b"ls\r".to_vec()
                },
                EventKind::Output { data: big.clone() },
                EventKind::Exit { status: 0 },
                EventKind::Stderr {
                    data: b"oops\n".to_vec()
                },
            ]
        );
        // The bytes are in the session's file (0600), not in sled's values.
        let file = data_path(&data_dir, id);
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.len() as usize, 3 + big.len() + 5);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let stored: usize = log
            .shared
            .tree
            .scan_prefix(id.key())
            .map(|kv| kv.unwrap().1.len())
            .sum();
        assert!(stored < 1024, "sled holds {stored} bytes for this session");
        // Without data: the metadata only.
        let (events, _) = log.page(id, None, false).unwrap();
        assert_eq!(events.len(), 1);
    }

    #[test]
    fn a_recording_that_cannot_be_stored_is_reported_to_its_recorders() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path().join("db")).unwrap();
        // The data directory is a file: appending the bytes fails.
        let data_dir = dir.path().join("rec");
        let log = Log::open(&db, Some(&data_dir)).unwrap();
        std::fs::remove_dir(&data_dir).unwrap();
        std::fs::write(&data_dir, b"not a directory").unwrap();
        let r = log.recorder(SessionId::from_raw(9));
        assert_eq!(r.failure(), None);
        r.event(1, out("lost"));
        log.shared.sync();
        let why = r.failure().expect("the failure is reported");
        assert!(why.contains("could not be written"), "{why}");
    }

    #[test]
    fn a_full_queue_makes_callers_wait_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let log = Log::open(&db, Some(&dir.path().join("rec"))).unwrap();
        let id = SessionId::from_raw(5);
        let r = log.recorder(id);
        let chunk = vec![b'x'; 32 * 1024];
        let n = (2 * MAX_PENDING) / chunk.len() + 10;
        for _ in 0..n {
            r.event(
                1,
                EventKind::Output {
                    data: chunk.clone(),
                },
            );
            let q = lock(&log.shared.queue);
            assert!(q.pending_bytes <= MAX_PENDING + EVENT_OVERHEAD + chunk.len());
        }
        let mut count = 0;
        let mut after = None;
        loop {
            let (page, more) = log.page(id, after, true).unwrap();
            count += page.len();
            after = page.last().map(|e| e.seq);
            if !more {
                break;
            }
        }
        assert_eq!(count, n);
        // After the log is gone, recorders write synchronously.
        drop(log);
        r.event(1, EventKind::Close);
        let tree = db.open_tree(TREE).unwrap();
        assert_eq!(tree.scan_prefix(id.key()).count(), n + 1);
    }
}
