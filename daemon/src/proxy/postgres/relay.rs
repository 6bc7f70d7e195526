//! The postgres relay: every agent message is framed, every statement is
//! decided by the policy before it reaches the database, every answer is
//! masked on its way back, every statement is recorded.
//!
//! Denials are answered through the database itself: the denied statement
//! is replaced by a statement that fails to parse (it carries a per-session
//! token the agent never sees), and the resulting error is rewritten into
//! Cordon's 42501. The database thus does the protocol's bookkeeping: the
//! extended protocol discards to Sync, a transaction block is marked failed,
//! ReadyForQuery carries the true transaction status, and pipelined
//! messages stay in order.
//!
//! Responses are matched to the agent's messages by a queue of expected
//! answers ([`Expect`]), so each RowDescription, DataRow and
//! CommandComplete is attributed to the statement it answers.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    hash::BuildHasher as _,
    sync::Arc,
    time::Instant,
};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{
    catalog::{self, Catalog, TableColumns},
    params,
    upstream::{self, Stream},
    wire::{self, Builder, Message, Reader, Severity},
};
use crate::{
    audit::{
        statements::{clip, StatementRecord},
        SessionId,
    },
    masking::{self, Masker, Mode},
    policy::{Action, CopyFormat, CopyOut, Decision, Kind, Policy},
    proxy::{tcp::End, Gateway},
};

/// Decisions remembered per session for statement texts (drivers re-parse
/// the same unnamed statement again and again; BEGIN and COMMIT recur).
/// Bounded in entries and in text length, so a session holds at most
/// about half a megabyte of cached text.
const DECISION_CACHE: usize = 256;

/// Longer texts are decided every time, not remembered.
const MAX_CACHED_TEXT: usize = 2048;

/// Texts seen once, remembered by hash only: a text is cached the second
/// time it is seen, so statements with a fresh literal each time (pgbench's
/// simple protocol) do not churn the cache with copies nobody reads again.
const SEEN_ONCE: usize = 4096;

/// Named prepared statements, and portals, one session may hold at once:
/// the daemon serves every agent, so one session must not grow its maps
/// without end. Drivers' statement caches stay far below (hundreds).
const MAX_NAMED: usize = 65_536;

/// Messages sent on that the database has not answered yet, above which
/// Cordon stops reading the agent until answers come. After an error the
/// database skips everything up to the next Sync without a word, so an
/// agent that never sends one could otherwise queue without end.
const MAX_IN_FLIGHT: usize = 16_384;

/// How long the agent has to take the session's last ErrorResponse.
const LAST_WORDS: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Setup {
    pub gw: Arc<Gateway>,
    pub session: SessionId,
    pub resource: String,
    pub database: String,
    pub policy: Arc<Policy>,
    pub credential: String,
    pub upstream_user: String,
    pub status: u8,
    /// The agent, for approval requests.
    pub agent: String,
}

pub struct Outcome {
    pub end: End,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// What a denied statement is answered with.
#[derive(Debug, Clone)]
struct Denial {
    message: String,
    hint: Option<String>,
}

/// A statement on its way: what is recorded when its answer is complete.
#[derive(Debug)]
struct Pending {
    seq: u32,
    at: String,
    started: Instant,
    text: Arc<str>,
    verdict: Action,
    rule: Arc<str>,
    rows: u64,
    masked: BTreeSet<String>,
    error: Option<String>,
    denial: Option<Denial>,
    /// Who approved it, when it ran under an approval.
    approved: Option<String>,
    /// COPY ... TO STDOUT targets, in statement order.
    copy_out: VecDeque<CopyOut>,
    /// DDL went through: column names may have changed.
    ddl: bool,
}

/// The answers expected from the database, in order.
#[derive(Debug)]
enum Expect {
    /// Simple query (or a denied FunctionCall): everything up to ReadyForQuery.
    Query(Box<Pending>),
    /// `undo`: how to put Cordon's statement map back if the database
    /// fails or skips this Parse.
    Parse {
        denial: Option<Denial>,
        undo: Option<Undo>,
    },
    /// `undo`: the portal the Bind replaced, put back if the database
    /// fails or skips the Bind.
    Bind {
        undo: Option<Undo>,
    },
    /// `swallow`: injected by Cordon to learn a portal's columns; the agent
    /// did not ask and does not see the answer.
    Describe {
        swallow: bool,
        /// A Describe of this statement: its ParameterDescription answer
        /// gives the statement's parameter types.
        statement: Option<Arc<Prepared>>,
    },
    Execute(Box<Pending>),
    /// `undo`: how to put back what the Close removed if the database skips
    /// it (a portal survives a failed batch when ROLLBACK TO SAVEPOINT
    /// returns to before it).
    Close {
        undo: Option<Undo>,
    },
    Sync,
}

/// What a statement or portal name meant in Cordon's maps before a Parse,
/// Bind or Close changed it on its way to the database. The maps change when
/// the message is sent (a pipelined Bind or Execute must see it); when the
/// database fails the message, or skips it after an earlier error, the
/// change is undone, so the maps do not lose or rename what the database
/// holds under that name.
#[derive(Debug)]
enum Undo {
    Statement {
        name: String,
        previous: Option<Arc<Prepared>>,
    },
    Portal {
        name: String,
        previous: Option<Portal>,
    },
}

/// A statement prepared with Parse and allowed.
#[derive(Debug, Clone)]
struct Prepared {
    text: Arc<str>,
    rule: Arc<str>,
    /// The policy's reason, shown to reviewers of its executions.
    reason: Arc<str>,
    verdict: Action,
    copy_out: Vec<CopyOut>,
    ddl: bool,
    /// Its policy decision is `approve`: every execution is held for a
    /// reviewer, who sees the text with the bound parameters.
    needs_approval: bool,
    /// Parameter types the Parse message declared (0: unspecified).
    declared: Vec<u32>,
    /// Parameter types from the database's answer to a Describe of this
    /// statement (set once, on this statement whatever its name means later).
    described: std::sync::OnceLock<Vec<u32>>,
}

impl Prepared {
    /// The parameter types as far as known, for showing bound values.
    fn param_types(&self) -> &[u32] {
        self.described.get().unwrap_or(&self.declared)
    }
}

/// A portal as it was bound: PostgreSQL runs the statement the portal was
/// created from, even if that statement's name is closed or re-Parsed
/// before Execute, so the snapshot (not the name) decides what is recorded,
/// masked and held.
#[derive(Debug, Clone)]
struct Portal {
    /// The statement named at Bind; None when Cordon did not see it prepared
    /// (a cursor, an SQL-level PREPARE, or a name the database rejects).
    statement: Option<Arc<Prepared>>,
    /// The name the Bind gave, for the record of an unknown statement.
    statement_name: String,
    /// For a statement held at each Execute: its parameters as a reviewer
    /// reads them.
    shown: Option<String>,
    /// Syncs and queries sent before the Bind: once the database has
    /// answered a later one outside a transaction block, the portal is gone
    /// there (portals last until the end of their transaction).
    generation: u64,
}

/// What to do with one result column.
#[derive(Debug, Clone)]
enum ColAction {
    Pass,
    /// A column rule.
    Mask(Mode),
    /// Value detectors only.
    Detect,
    /// Cannot be masked safely in this format: sent as NULL.
    Null,
}

#[derive(Debug, Clone)]
struct Column {
    label: String,
    action: ColAction,
    binary: bool,
    type_oid: u32,
}

/// How the rows of the current result are masked.
#[derive(Debug, Clone)]
struct Plan {
    columns: Vec<Column>,
    /// No column needs any work: rows pass untouched.
    passthrough: bool,
}

/// An active COPY TO STDOUT being masked.
struct CopyPlan {
    modes: Vec<Option<Mode>>,
    labels: Vec<String>,
    csv: bool,
}

pub struct Session {
    gw: Arc<Gateway>,
    id: SessionId,
    resource: String,
    database: String,
    policy: Arc<Policy>,
    credential: String,
    upstream_user: String,
    masker: Option<Masker>,
    catalog: Arc<Catalog>,
    /// Separate connection for catalog lookups, opened on first need.
    catalog_conn: Option<Stream>,
    token: String,
    seq: u32,
    status: u8,
    expect: VecDeque<Expect>,
    prepared: HashMap<String, Arc<Prepared>>,
    portals: HashMap<String, Portal>,
    /// The portal the agent itself described since its last Bind: its
    /// RowDescription will precede the rows, no need to ask for it.
    described: Option<String>,
    decisions: HashMap<Box<str>, Arc<Decision>>,
    seen_once: HashSet<u64>,
    /// Allowed decisions by statement shape (numbers as `?`).
    shapes: HashMap<Box<str>, Arc<Decision>>,
    shape_buf: String,
    plan: Option<Arc<Plan>>,
    /// The last RowDescription and its plan: the same query shape answers
    /// with the same bytes, so the plan is built once, not per statement.
    last_plan: Option<(Bytes, u64, Arc<Plan>)>,
    copy: Option<CopyPlan>,
    to_agent: BytesMut,
    to_upstream: BytesMut,
    agent: String,
    /// The session's cutoff, for statements held for approval: the grant ending ends the wait.
    cutoff: Option<crate::grants::Cutoff>,
    /// Syncs and simple queries sent upstream, and those answered
    /// (ReadyForQuery): the generations of [`Portal`].
    syncs_sent: u64,
    /// Extended-protocol messages were sent since the last Sync.
    unsynced: bool,
    /// The database failed an extended-protocol message and no Sync has been
    /// sent since: it skips everything up to the next Sync, so Cordon does
    /// not forward, map or await those messages either.
    skipping: bool,
    /// The database is in COPY FROM STDIN (CopyInResponse seen, no CopyDone
    /// or CopyFail sent yet): it ignores Sync and Flush, and anything else
    /// but copy data is a protocol error.
    copy_in: bool,
    syncs_answered: u64,
}

/// Why the relay stops.
enum Stop {
    /// The grant ended (expired or revoked): why.
    GrantEnded(String),
    Agent(String),
    Upstream(String),
    Internal(String),
    Closed,
}

impl Session {
    pub fn new(setup: Setup) -> Self {
        let Setup {
            gw,
            session,
            resource,
            database,
            policy,
            credential,
            upstream_user,
            status,
            agent,
        } = setup;
        let rules = policy.masking.clone();
        let masker =
            (!rules.is_empty()).then(|| Masker::new(rules, gw.vault.derive_key("masking-hash")));
        let catalog = gw.postgres.catalogs.for_db(&resource, &database);
        let token = format!("cordon_denied_{:016x}", rand::random::<u64>());
        Self {
            gw,
            id: session,
            resource,
            database,
            policy,
            credential,
            upstream_user,
            masker,
            catalog,
            catalog_conn: None,
            token,
            seq: 0,
            status,
            expect: VecDeque::new(),
            prepared: HashMap::new(),
            portals: HashMap::new(),
            described: None,
            decisions: HashMap::new(),
            seen_once: HashSet::new(),
            shapes: HashMap::new(),
            shape_buf: String::new(),
            plan: None,
            last_plan: None,
            copy: None,
            to_agent: BytesMut::with_capacity(16 * 1024),
            to_upstream: BytesMut::with_capacity(16 * 1024),
            agent,
            cutoff: None,
            syncs_sent: 0,
            unsynced: false,
            skipping: false,
            copy_in: false,
            syncs_answered: 0,
        }
    }

    pub async fn run(
        mut self,
        mut agent: Stream,
        mut agent_in: BytesMut,
        mut upstream: Stream,
        deadline: tokio::time::Instant,
        mut cutoff: crate::grants::Cutoff,
    ) -> Outcome {
        self.cutoff = Some(cutoff.watcher());
        let mut up_in = BytesMut::with_capacity(64 * 1024);
        let mut bytes_up = 0u64;
        let mut bytes_down = 0u64;
        // Agent messages sent along with the start-up packet.
        let mut early = self.on_agent_bytes(&mut agent_in).await;
        if early.is_ok() {
            early = self
                .flush(&mut agent, &mut upstream, &mut bytes_up, &mut bytes_down)
                .await;
        }
        // Built once: a timer armed per loop turn cost a timer-wheel insert
        // and removal (and a clone of the grant's name) per message batch.
        let ended = async {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => Stop::GrantEnded("the grant for this session expired".into()),
                why = cutoff.fired() => Stop::GrantEnded(why),
            }
        };
        tokio::pin!(ended);
        let stop = match early {
            Err(stop) => stop,
            Ok(()) => loop {
                tokio::select! {
                    r = agent.read_buf(&mut agent_in), if self.expect.len() < MAX_IN_FLIGHT => match r {
                        Ok(0) => break Stop::Closed,
                        Ok(_) => {
                            if let Err(stop) = self.on_agent_bytes(&mut agent_in).await {
                                break stop;
                            }
                        }
                        Err(e) => break Stop::Agent(e.to_string()),
                    },
                    r = upstream.read_buf(&mut up_in) => match r {
                        Ok(0) => break Stop::Upstream("the database closed the connection".into()),
                        Ok(_) => {
                            if let Err(stop) = self.on_upstream_bytes(&mut up_in).await {
                                break stop;
                            }
                        }
                        Err(e) => break Stop::Upstream(e.to_string()),
                    },
                    stop = &mut ended => break stop,
                }
                // An agent that stops reading blocks this write: the grant's
                // end must still end the session (and its transaction).
                let flushed = tokio::select! {
                    r = self.flush(&mut agent, &mut upstream, &mut bytes_up, &mut bytes_down) => r,
                    stop = &mut ended => Err(stop),
                };
                if let Err(stop) = flushed {
                    break stop;
                }
                if agent_in.capacity() - agent_in.len() < 4096 {
                    agent_in.reserve(16 * 1024);
                }
                if up_in.capacity() - up_in.len() < 4096 {
                    up_in.reserve(64 * 1024);
                }
            },
        };
        // The agent hears why, in the protocol's words, before the close.
        let (end, last_words) = match stop {
            Stop::Closed => (End::Closed, None),
            Stop::Agent(e) => (End::AgentError(e), None),
            Stop::GrantEnded(why) => (
                End::GrantEnded(why.clone()),
                Some(("57P01", format!("{why}; the session is closed"))),
            ),
            Stop::Upstream(e) => {
                let msg = format!("the upstream connection failed: {e}");
                (End::UpstreamError(e), Some(("08006", msg)))
            }
            Stop::Internal(e) => {
                let msg = format!("{e}; the session is closed");
                (End::Internal(e), Some(("XX000", msg)))
            }
        };
        if let Some((code, msg)) = last_words {
            wire::error_response(Severity::Fatal, code, &format!("cordon: {msg}"), None)
                .write_to(&mut self.to_agent);
        }
        if end != End::Closed {
            // Last words are best effort: an agent that does not read them
            // does not keep the session open.
            let _ = tokio::time::timeout(
                LAST_WORDS,
                self.flush(&mut agent, &mut upstream, &mut bytes_up, &mut bytes_down),
            )
            .await;
        }
        // Statements still waiting for an answer are recorded as cut short.
        while let Some(e) = self.expect.pop_front() {
            if let Expect::Query(mut p) | Expect::Execute(mut p) = e {
                if p.denial.is_none() {
                    p.error.get_or_insert_with(|| "session ended".into());
                    self.record(*p);
                }
            }
        }
        let _ = agent.shutdown().await;
        let _ = upstream.shutdown().await;
        Outcome {
            end,
            bytes_up,
            bytes_down,
        }
    }

    async fn flush(
        &mut self,
        agent: &mut Stream,
        upstream: &mut Stream,
        up: &mut u64,
        down: &mut u64,
    ) -> Result<(), Stop> {
        // write_all_buf advances the buffer as it writes: cancelled half-way
        // (the grant ended), what was sent is not sent again.
        if !self.to_upstream.is_empty() {
            let n = self.to_upstream.len() as u64;
            upstream
                .write_all_buf(&mut self.to_upstream)
                .await
                .map_err(|e| Stop::Upstream(e.to_string()))?;
            upstream
                .flush()
                .await
                .map_err(|e| Stop::Upstream(e.to_string()))?;
            *up += n;
            self.to_upstream.clear();
        }
        if !self.to_agent.is_empty() {
            let n = self.to_agent.len() as u64;
            agent
                .write_all_buf(&mut self.to_agent)
                .await
                .map_err(|e| Stop::Agent(e.to_string()))?;
            agent
                .flush()
                .await
                .map_err(|e| Stop::Agent(e.to_string()))?;
            *down += n;
            self.to_agent.clear();
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // Agent -> database

    async fn on_agent_bytes(&mut self, buf: &mut BytesMut) -> Result<(), Stop> {
        loop {
            let msg = match wire::next_message(buf, wire::MAX_MESSAGE) {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.protocol_violation(&e.to_string())),
            };
            self.on_agent(msg).await?;
        }
    }

    fn protocol_violation(&mut self, what: &str) -> Stop {
        let m = wire::error_response(
            Severity::Fatal,
            "08P01",
            &format!("cordon: protocol violation: {what}; the session is closed"),
            None,
        );
        m.write_to(&mut self.to_agent);
        Stop::Agent(format!("protocol violation: {what}"))
    }

    async fn on_agent(&mut self, msg: Message) -> Result<(), Stop> {
        // Statement records are keyed by their number: a wrapped number would
        // overwrite the session's first records.
        if self.seq >= u32::MAX - 1 {
            return Err(Stop::Internal(format!(
                "this session has used all {} statement numbers of its audit record",
                u32::MAX - 1
            )));
        }
        // Fail closed: nothing more is relayed once statements cannot be recorded.
        if self.gw.postgres.writer.failed() {
            return Err(Stop::Internal(
                "the statement log cannot be written; nothing more is relayed".into(),
            ));
        }
        match msg.tag {
            // After an extended-protocol error the database skips to Sync: a
            // Query (or FunctionCall) in that stretch would never run, yet be
            // answered in Cordon's books by what follows. Clients send Sync
            // before they go back to the simple protocol.
            b'Q' | b'F' if self.unsynced => return Err(self.protocol_violation(
                "a simple Query or FunctionCall after extended-protocol messages without a Sync",
            )),
            b'P' | b'B' | b'D' | b'E' | b'C' => self.unsynced = true,
            b'S' => self.unsynced = false,
            _ => {}
        }
        if self.copy_in {
            match msg.tag {
                b'd' | b'H' => {}
                b'c' | b'f' => self.copy_in = false,
                // Ignored by the database until the copy ends: not awaited.
                b'S' => {
                    msg.write_to(&mut self.to_upstream);
                    return Ok(());
                }
                b'X' => {}
                other => {
                    return Err(self.protocol_violation(&format!(
                        "`{}` during COPY FROM STDIN (send CopyDone or CopyFail first)",
                        char::from(other).escape_default()
                    )))
                }
            }
        }
        if self.skipping {
            match msg.tag {
                b'S' => self.skipping = false,
                b'X' | b'Q' | b'F' => {}
                // The database would skip it unread: it is not sent, and it
                // changes nothing in Cordon's books.
                _ => return Ok(()),
            }
        }
        match msg.tag {
            b'Q' => {
                self.described = None;
                let sql = Reader::new(&msg)
                    .str()
                    .map_err(|e| self.protocol_violation(&e.to_string()))?
                    .to_owned();
                // Identical texts (BEGIN, COMMIT, a health check, an ORM's
                // fixed query) are parsed once per session.
                let decision = self.decide_cached(&sql);
                let mut pending = self.pending(Arc::from(sql.as_str()), &decision);
                match self.vet(&decision, &sql, true).await {
                    Ok(approved) => {
                        pending.approved = approved;
                        msg.write_to(&mut self.to_upstream);
                    }
                    Err(denial) => {
                        pending.denial = Some(denial);
                        self.deny(&pending)?;
                        self.inject_query();
                    }
                }
                self.syncs_sent += 1;
                self.expect.push_back(Expect::Query(Box::new(pending)));
            }
            b'P' => {
                let (name, sql, declared) = {
                    let mut r = Reader::new(&msg);
                    let name = r.str().map(str::to_owned);
                    let sql = r.str().map(str::to_owned);
                    let declared = params::declared(&mut r);
                    match (name, sql, declared) {
                        (Ok(n), Ok(s), Ok(d)) => (n, s, d),
                        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                            return Err(self.protocol_violation(&e.to_string()))
                        }
                    }
                };
                let decision = self.decide_cached(&sql);
                let text: Arc<str> = Arc::from(sql.as_str());
                // PostgreSQL refuses to redefine a named statement that exists (42P05) and
                // keeps the old one. Cordon's map may also name a statement the database
                // no longer holds (SQL DEALLOCATE or DISCARD ALL): the new statement is
                // vetted and mapped like any other, and the undo puts the old one back
                // when the database answers 42P05, so a re-Parse can neither relabel
                // the old statement nor run unvetted.
                let keeps_old = !name.is_empty() && self.prepared.contains_key(&name);
                // An `approve` statement is held at each Execute, once its
                // parameters are bound: a reviewer must see what will run.
                let needs_approval = decision.action == Action::Approve;
                match self.vet(&decision, &sql, !needs_approval).await {
                    Ok(_) => {
                        if self.prepared.len() >= MAX_NAMED && !self.prepared.contains_key(&name) {
                            return Err(self.protocol_violation(&format!(
                                "more than {MAX_NAMED} prepared statements at once"
                            )));
                        }
                        msg.write_to(&mut self.to_upstream);
                        let previous = self.prepared.insert(
                            name.clone(),
                            Arc::new(Prepared {
                                text,
                                rule: Arc::from(decision.rule.as_str()),
                                reason: Arc::from(decision.reason.as_str()),
                                verdict: decision.action,
                                copy_out: copy_targets(&decision),
                                ddl: is_ddl(&decision),
                                needs_approval,
                                declared,
                                described: std::sync::OnceLock::new(),
                            }),
                        );
                        self.expect.push_back(Expect::Parse {
                            denial: None,
                            undo: Some(Undo::Statement { name, previous }),
                        });
                    }
                    Err(denial) => {
                        let mut pending = self.pending(text, &decision);
                        pending.denial = Some(denial.clone());
                        self.deny(&pending)?;
                        // The database drops the unnamed statement at any Parse of it,
                        // even a failing one; a named one it keeps.
                        let previous = if keeps_old {
                            None
                        } else {
                            self.prepared.remove(&name)
                        };
                        let undo = previous.map(|p| Undo::Statement {
                            name: name.clone(),
                            previous: Some(p),
                        });
                        let token = self.token.clone();
                        Builder::new(b'P')
                            .cstr(name.as_bytes())
                            .cstr(token.as_bytes())
                            .i16(0)
                            .finish()
                            .write_to(&mut self.to_upstream);
                        self.expect.push_back(Expect::Parse {
                            denial: Some(denial),
                            undo,
                        });
                    }
                }
            }
            b'B' => {
                let bind_undo;
                let mut r = Reader::new(&msg);
                let portal = r.str().map(str::to_owned);
                let stmt = r.str().map(str::to_owned);
                match (portal, stmt) {
                    (Ok(p), Ok(s)) => {
                        if self.described.as_deref() == Some(p.as_str()) {
                            self.described = None;
                        }
                        let statement = self.prepared.get(&s).cloned();
                        let shown = match &statement {
                            Some(st) if st.needs_approval => Some(
                                params::shown(&msg, st.param_types())
                                    .map_err(|e| self.protocol_violation(&format!("Bind: {e}")))?,
                            ),
                            _ => None,
                        };
                        if self.portals.len() >= MAX_NAMED && !self.portals.contains_key(&p) {
                            return Err(self.protocol_violation(&format!(
                                "more than {MAX_NAMED} portals open at once"
                            )));
                        }
                        let previous = self.portals.insert(
                            p.clone(),
                            Portal {
                                statement,
                                statement_name: s,
                                shown,
                                generation: self.syncs_sent,
                            },
                        );
                        bind_undo = Some(Undo::Portal { name: p, previous });
                    }
                    (Err(e), _) | (_, Err(e)) => {
                        return Err(self.protocol_violation(&e.to_string()))
                    }
                }
                msg.write_to(&mut self.to_upstream);
                self.expect.push_back(Expect::Bind { undo: bind_undo });
            }
            b'D' => {
                let mut r = Reader::new(&msg);
                let kind = r
                    .u8()
                    .map_err(|e| self.protocol_violation(&e.to_string()))?;
                if !matches!(kind, b'S' | b'P') {
                    return Err(self.protocol_violation("Describe of neither 'S' nor 'P'"));
                }
                let name = r
                    .str()
                    .map_err(|e| self.protocol_violation(&e.to_string()))?;
                let mut statement = None;
                if kind == b'P' {
                    self.described = Some(name.to_owned());
                } else {
                    // A statement's description (formats unknown) would be
                    // the last one before the rows: describe the portal.
                    self.described = None;
                    statement = self.prepared.get(name).cloned();
                }
                msg.write_to(&mut self.to_upstream);
                self.expect.push_back(Expect::Describe {
                    swallow: false,
                    statement,
                });
            }
            b'E' => {
                let portal = Reader::new(&msg)
                    .str()
                    .map_err(|e| self.protocol_violation(&e.to_string()))?
                    .to_owned();
                // A description serves the one Execute that follows it: the
                // next Execute (of another portal, or of this one after it was
                // suspended and another ran) learns its columns again.
                let described_now = self.described.take().as_deref() == Some(portal.as_str());
                // What the portal runs is what was bound, whatever the
                // statement's name means now.
                let bound = self.portals.get(&portal).cloned();
                let mut pending = match &bound {
                    Some(Portal {
                        statement: Some(p), ..
                    }) => self.pending_prepared(p),
                    // A portal Cordon did not see bound (or of a denied
                    // statement): the database answers with an error.
                    _ => self.pending_unknown(&portal, bound.as_ref()),
                };
                if let Some(Portal {
                    statement: Some(p),
                    shown: Some(params),
                    ..
                }) = &bound
                {
                    let command = format!("{}\n-- parameters: {params}", p.text);
                    match self.ask(&command, &p.rule, &p.reason).await {
                        Ok(by) => pending.approved = Some(by),
                        Err(denial) => {
                            pending.denial = Some(denial);
                            self.deny(&pending)?;
                            let token = self.token.clone();
                            Builder::new(b'P')
                                .cstr(b"cordon_denied")
                                .cstr(token.as_bytes())
                                .i16(0)
                                .finish()
                                .write_to(&mut self.to_upstream);
                            self.expect.push_back(Expect::Execute(Box::new(pending)));
                            return Ok(());
                        }
                    }
                }
                if self.masker.is_some() && !described_now {
                    // Learn the portal's columns and formats, whatever the
                    // agent did or did not describe.
                    let mut out = BytesMut::new();
                    Builder::new(b'D')
                        .u8(b'P')
                        .cstr(portal.as_bytes())
                        .finish()
                        .write_to(&mut out);
                    self.to_upstream.extend_from_slice(&out);
                    self.expect.push_back(Expect::Describe {
                        swallow: true,
                        statement: None,
                    });
                }

                msg.write_to(&mut self.to_upstream);
                self.expect.push_back(Expect::Execute(Box::new(pending)));
            }
            b'C' => {
                let mut r = Reader::new(&msg);
                let kind = r
                    .u8()
                    .map_err(|e| self.protocol_violation(&e.to_string()))?;
                let name = r
                    .str()
                    .map_err(|e| self.protocol_violation(&e.to_string()))?
                    .to_owned();
                // What a skipped Close leaves in the database is put back.
                let undo = if kind == b'S' {
                    self.prepared.remove(&name).map(|p| Undo::Statement {
                        name,
                        previous: Some(p),
                    })
                } else {
                    self.portals.remove(&name).map(|p| Undo::Portal {
                        name,
                        previous: Some(p),
                    })
                };
                msg.write_to(&mut self.to_upstream);
                self.expect.push_back(Expect::Close { undo });
            }
            b'S' => {
                msg.write_to(&mut self.to_upstream);
                self.syncs_sent += 1;
                self.expect.push_back(Expect::Sync);
            }
            b'H' | b'd' | b'c' | b'f' => msg.write_to(&mut self.to_upstream),
            b'X' => {
                msg.write_to(&mut self.to_upstream);
                return Err(Stop::Closed);
            }
            b'F' => {
                let text: Arc<str> = Arc::from("<FunctionCall message>");
                let decision = Decision {
                    action: Action::Deny,
                    rule: "builtin/function-call".into(),
                    reason: "builtin rule function-call: FunctionCall protocol messages are denied (use SQL)".into(),
                    statements: Vec::new(),
                };
                let mut pending = self.pending(text, &decision);
                pending.denial = Some(Denial {
                    message: decision.reason.clone(),
                    hint: None,
                });
                self.deny(&pending)?;
                self.inject_query();
                self.syncs_sent += 1;
                self.expect.push_back(Expect::Query(Box::new(pending)));
            }
            other => {
                return Err(self.protocol_violation(&format!(
                    "unexpected message type `{}` from the client",
                    char::from(other).escape_default()
                )))
            }
        }
        Ok(())
    }

    fn decide_cached(&mut self, sql: &str) -> Arc<Decision> {
        if let Some(d) = self.decisions.get(sql) {
            return d.clone();
        }
        // The same statement with other numbers: decided once (see
        // `policy::shape` for why that is sound). Allowed ones only, so a
        // denial's reason always speaks of the text that was denied.
        let mut shape = std::mem::take(&mut self.shape_buf);
        let shaped = crate::policy::shape::shape(sql, &mut shape) && shape != sql;
        if shaped {
            if let Some(d) = self.shapes.get(shape.as_str()) {
                let d = d.clone();
                self.shape_buf = shape;
                return d;
            }
        }
        let d = Arc::new(self.policy.decide(sql));
        if shaped && d.action == Action::Allow {
            if self.shapes.len() >= DECISION_CACHE {
                self.shapes.clear();
            }
            self.shapes.insert(Box::from(shape.as_str()), d.clone());
            self.shape_buf = shape;
            return d;
        }
        self.shape_buf = shape;
        if sql.len() > MAX_CACHED_TEXT {
            return d;
        }
        // Admission only: a hash collision caches a text one sighting early.
        let hash = self.decisions.hasher().hash_one(sql);
        if self.seen_once.len() >= SEEN_ONCE {
            self.seen_once.clear();
        }
        if self.seen_once.insert(hash) {
            return d;
        }
        self.seen_once.remove(&hash);
        if self.decisions.len() >= DECISION_CACHE {
            self.decisions.clear();
        }
        self.decisions.insert(Box::from(sql), d.clone());
        d
    }

    /// Proxy-level checks on an allowed decision: what masking cannot
    /// follow is denied. Err carries the denial for a non-allow decision.
    ///
    /// An `approve` decision holds the statement until a reviewer decides (the agent's client
    /// simply waits): Ok(Some(reviewer)) when approved.
    ///
    /// `hold_now` false: an `approve` decision is vetted like an allowed one
    /// and its hold is left to the caller (Parse: each Execute asks).
    async fn vet(
        &mut self,
        decision: &Decision,
        text: &str,
        hold_now: bool,
    ) -> Result<Option<String>, Denial> {
        let mut approved = None;
        match decision.action {
            Action::Allow => {}
            Action::Deny => {
                return Err(Denial {
                    message: decision.reason.clone(),
                    hint: None,
                })
            }
            Action::Approve if !hold_now => {}
            Action::Approve => {
                approved = Some(self.ask(text, &decision.rule, &decision.reason).await?);
            }
        }
        self.vet_masking(decision)?;
        Ok(approved)
    }

    /// Holds `command` until a reviewer decides: who approved it, or the
    /// denial the agent gets.
    async fn ask(&mut self, command: &str, rule: &str, reason: &str) -> Result<String, Denial> {
        let gw = self.gw.clone();
        let hold = gw.approvals.hold(crate::approvals::HoldRequest {
            session: self.id,
            agent: self.agent.clone(),
            resource: self.resource.clone(),
            protocol: "postgres",
            command: command.to_owned(),
            rule: rule.to_owned(),
            reason: reason.to_owned(),
        });
        // The grant ending (expiry, revocation) ends the wait; the session then closes.
        let outcome = match self.cutoff.as_mut() {
            Some(cutoff) => tokio::select! {
                o = hold => o,
                why = cutoff.fired() => crate::approvals::Outcome::Unavailable(why),
            },
            None => hold.await,
        };
        use crate::approvals::Outcome as O;
        let message = match outcome {
            O::Approved { by } => return Ok(by),
            O::Denied { by, reason: why } => {
                format!("{reason} (held for approval under {rule}; {by} denied it: {why})")
            }
            O::TimedOut { after } => format!(
                "{reason} (held for approval under {rule}; no reviewer approved it within {} s)",
                after.as_secs()
            ),
            O::Unavailable(why) => {
                format!("{reason} (needs approval under {rule}, which cannot be asked for: {why})")
            }
        };
        Err(Denial {
            message,
            hint: None,
        })
    }

    /// What masking cannot follow is denied.
    fn vet_masking(&self, decision: &Decision) -> Result<(), Denial> {
        let Some(masker) = &self.masker else {
            return Ok(());
        };
        for out in decision
            .statements
            .iter()
            .filter_map(|s| s.copy_out.as_ref())
        {
            let (format, query) = match out {
                CopyOut::Table { format, .. } => (*format, false),
                CopyOut::Query { format } => (*format, true),
            };
            if format == CopyFormat::Reframed {
                return Err(Denial {
                    message: format!(
                        "policy {}: COPY ... TO STDOUT with DELIMITER, QUOTE, ESCAPE, NULL, FORCE_* or ENCODING cannot be masked; use the default text or csv framing",
                        self.policy.name
                    ),
                    hint: None,
                });
            }
            if format == CopyFormat::Binary {
                return Err(Denial {
                    message: format!(
                        "policy {}: COPY ... TO STDOUT in binary format cannot be masked; use text or csv",
                        self.policy.name
                    ),
                    hint: None,
                });
            }
            if query && masker.rules().has_column_rules() {
                return Err(Denial {
                    message: format!(
                        "policy {}: COPY (query) TO STDOUT cannot be masked by column; copy a table or use SELECT",
                        self.policy.name
                    ),
                    hint: None,
                });
            }
        }
        Ok(())
    }

    /// Puts a statement or portal name back to what it meant before a
    /// message the database failed or skipped.
    fn undo(&mut self, undo: Undo) {
        fn restore<V>(map: &mut HashMap<String, V>, name: String, previous: Option<V>) {
            match previous {
                Some(v) => {
                    map.insert(name, v);
                }
                None => {
                    map.remove(&name);
                }
            }
        }
        match undo {
            Undo::Statement { name, previous } => restore(&mut self.prepared, name, previous),
            Undo::Portal { name, previous } => restore(&mut self.portals, name, previous),
        }
    }

    fn next_seq(&mut self) -> u32 {
        let s = self.seq;
        // `on_agent` ends the session before the numbers run out.
        self.seq = self.seq.saturating_add(1);
        s
    }

    fn pending(&mut self, text: Arc<str>, decision: &Decision) -> Pending {
        Pending {
            seq: self.next_seq(),
            at: crate::rfc3339(time::OffsetDateTime::now_utc()),
            started: Instant::now(),
            text,
            verdict: decision.action,
            rule: Arc::from(decision.rule.as_str()),
            rows: 0,
            masked: BTreeSet::new(),
            error: None,
            denial: None,
            approved: None,
            copy_out: copy_targets(decision).into(),
            ddl: is_ddl(decision),
        }
    }

    fn pending_prepared(&mut self, p: &Prepared) -> Pending {
        Pending {
            seq: self.next_seq(),
            at: crate::rfc3339(time::OffsetDateTime::now_utc()),
            started: Instant::now(),
            text: p.text.clone(),
            verdict: p.verdict,
            rule: p.rule.clone(),
            rows: 0,
            masked: BTreeSet::new(),
            error: None,
            denial: None,
            approved: None,
            copy_out: p.copy_out.iter().cloned().collect(),
            ddl: p.ddl,
        }
    }

    /// An Execute of a portal Cordon did not see bound to a statement it
    /// decided: a cursor declared in SQL (its DECLARE was decided), a
    /// statement prepared with SQL PREPARE (decided; one that needs approval
    /// cannot be prepared), or a name the database rejects.
    fn pending_unknown(&mut self, portal: &str, bound: Option<&Portal>) -> Pending {
        let text = match bound {
            Some(b) => format!(
                "<execute of portal {portal:?}, bound to statement {:?}, which was not prepared through the protocol: an SQL PREPARE, or one the database rejects>",
                b.statement_name
            ),
            None => format!(
                "<execute of portal {portal:?}, not bound through the protocol: a cursor, or one the database rejects>"
            ),
        };
        Pending {
            seq: self.next_seq(),
            at: crate::rfc3339(time::OffsetDateTime::now_utc()),
            started: Instant::now(),
            text: Arc::from(text),
            verdict: Action::Allow,
            rule: Arc::from("builtin/unbound-portal"),
            rows: 0,
            masked: BTreeSet::new(),
            error: None,
            denial: None,
            approved: None,
            copy_out: VecDeque::new(),
            ddl: false,
        }
    }

    /// Records a denial durably before the agent hears of it.
    fn deny(&mut self, p: &Pending) -> Result<(), Stop> {
        let reason = p.denial.as_ref().map(|d| d.message.clone());
        tracing::info!(rule = %p.rule, reason = reason.as_deref().unwrap_or(""), "statement denied");
        let rec = StatementRecord {
            session: self.id,
            seq: p.seq,
            at: p.at.clone(),
            duration_us: 0,
            verdict: match p.verdict {
                Action::Approve => "approve".into(),
                _ => "deny".into(),
            },
            rule: p.rule.to_string(),
            reason,
            text: clip(&p.text),
            rows: 0,
            masked: Vec::new(),
            error: None,
        };
        self.gw
            .postgres
            .statements
            .record_durably(&rec)
            .map_err(|e| Stop::Internal(format!("cannot record a denied statement: {e}")))
    }

    /// Sends the database a statement that fails to parse, carrying the token.
    fn inject_query(&mut self) {
        let token = self.token.clone();
        Builder::new(b'Q')
            .cstr(token.as_bytes())
            .finish()
            .write_to(&mut self.to_upstream);
    }

    fn record(&self, p: Pending) {
        let rec = StatementRecord {
            session: self.id,
            seq: p.seq,
            at: p.at,
            duration_us: u64::try_from(p.started.elapsed().as_micros()).unwrap_or(u64::MAX),
            verdict: "allow".into(),
            rule: p.rule.to_string(),
            reason: p.approved.map(|by| format!("approved by {by}")),
            text: clip(&p.text),
            rows: p.rows,
            masked: p.masked.into_iter().collect(),
            error: p.error,
        };
        self.gw.postgres.writer.record(rec);
    }

    // ------------------------------------------------------------------
    // Database -> agent

    async fn on_upstream_bytes(&mut self, buf: &mut BytesMut) -> Result<(), Stop> {
        loop {
            let msg = match wire::next_message(buf, wire::MAX_MESSAGE) {
                Ok(Some(m)) => m,
                Ok(None) => return Ok(()),
                Err(e) => return Err(Stop::Upstream(e.to_string())),
            };
            self.on_upstream(msg).await?;
        }
    }

    fn pending_mut(&mut self) -> Option<&mut Pending> {
        match self.expect.front_mut() {
            Some(Expect::Query(p)) | Some(Expect::Execute(p)) => Some(p),
            _ => None,
        }
    }

    async fn on_upstream(&mut self, msg: Message) -> Result<(), Stop> {
        match msg.tag {
            b'D' => {
                let out = self.mask_row(&msg)?;
                // Simple queries count by their CommandComplete tags; an
                // Execute suspended by its row limit has no tag.
                if let Some(Expect::Execute(p)) = self.expect.front_mut() {
                    p.rows += 1;
                }
                out.write_to(&mut self.to_agent);
            }
            b'T' => {
                let plan = self.plan_for(&msg).await?;
                self.plan = plan;
                match self.expect.front() {
                    Some(Expect::Describe { swallow, .. }) => {
                        let swallow = *swallow;
                        self.expect.pop_front();
                        if !swallow {
                            msg.write_to(&mut self.to_agent);
                        }
                    }
                    _ => msg.write_to(&mut self.to_agent),
                }
            }
            b'n' => {
                self.plan = None;
                if let Some(Expect::Describe { swallow, .. }) = self.expect.front() {
                    let swallow = *swallow;
                    self.expect.pop_front();
                    if swallow {
                        return Ok(());
                    }
                }
                msg.write_to(&mut self.to_agent);
            }
            b't' => {
                // The answer to a Describe of a statement: its parameter
                // types, kept on that statement for showing bound values.
                if let Some(Expect::Describe {
                    statement: Some(st),
                    ..
                }) = self.expect.front()
                {
                    if let Some(types) = params::described(&msg) {
                        let _ = st.described.set(types);
                    }
                }
                msg.write_to(&mut self.to_agent);
            }
            b'C' => {
                let rows = command_rows(&msg);
                match self.expect.front_mut() {
                    Some(Expect::Execute(_)) => {
                        if let Some(Expect::Execute(mut p)) = self.expect.pop_front() {
                            p.rows = rows.unwrap_or(p.rows);
                            self.finish(*p);
                        }
                    }
                    Some(Expect::Query(p)) => {
                        if let Some(r) = rows {
                            // Several statements: rows of each.
                            p.rows = p.rows.saturating_add(r);
                        }
                    }
                    _ => {}
                }
                self.plan = None;
                self.copy = None;
                msg.write_to(&mut self.to_agent);
            }
            b'I' | b's' => {
                if let Some(Expect::Execute(_)) = self.expect.front() {
                    if let Some(Expect::Execute(p)) = self.expect.pop_front() {
                        self.finish(*p);
                    }
                }
                msg.write_to(&mut self.to_agent);
            }
            b'1' => {
                if let Some(Expect::Parse { .. }) = self.expect.front() {
                    self.expect.pop_front();
                }
                msg.write_to(&mut self.to_agent);
            }
            b'2' => {
                if let Some(Expect::Bind { .. }) = self.expect.front() {
                    self.expect.pop_front();
                }
                msg.write_to(&mut self.to_agent);
            }
            b'3' => {
                if let Some(Expect::Close { .. }) = self.expect.front() {
                    self.expect.pop_front();
                }
                msg.write_to(&mut self.to_agent);
            }
            b'E' => self.on_error(msg)?,
            b'N' => {
                let out = self.mask_message(&msg);
                out.write_to(&mut self.to_agent);
            }
            b'Z' => {
                let status = Reader::new(&msg).u8().unwrap_or(b'I');
                self.status = status;
                // Everything up to and including the Sync (or the query)
                // this answers is complete.
                while let Some(e) = self.expect.pop_front() {
                    match e {
                        Expect::Sync => {
                            self.syncs_answered += 1;
                            break;
                        }
                        Expect::Query(p) => {
                            self.syncs_answered += 1;
                            if p.denial.is_none() {
                                self.finish(*p);
                            }
                            break;
                        }
                        Expect::Execute(p) if p.denial.is_none() => self.finish(*p),
                        _ => {}
                    }
                }
                if status == b'I' {
                    // Outside a transaction block: every portal bound before
                    // the Sync (or query) this answers has ended with its
                    // transaction; later Binds (pipelined) are kept.
                    let answered = self.syncs_answered;
                    self.portals.retain(|_, p| p.generation >= answered);
                }
                self.plan = None;
                self.copy = None;
                msg.write_to(&mut self.to_agent);
            }
            b'H' => {
                self.copy = self.copy_plan(&msg).await?;
                msg.write_to(&mut self.to_agent);
            }
            b'd' => {
                let out = self.mask_copy(msg)?;
                out.write_to(&mut self.to_agent);
            }
            b'c' => {
                self.copy = None;
                msg.write_to(&mut self.to_agent);
            }
            b'G' => {
                // Syncs the agent sent after the statement that started the
                // copy reach a database in copy-in mode, which ignores them.
                self.copy_in = true;
                let mut kept = VecDeque::with_capacity(self.expect.len());
                for (i, e) in std::mem::take(&mut self.expect).into_iter().enumerate() {
                    if i > 0 && matches!(e, Expect::Sync) {
                        self.syncs_sent = self.syncs_sent.saturating_sub(1);
                        continue;
                    }
                    kept.push_back(e);
                }
                self.expect = kept;
                msg.write_to(&mut self.to_agent);
            }
            b'A' => {
                let out = self.mask_notification(&msg);
                out.write_to(&mut self.to_agent);
            }
            b'R' | b'K' => {
                return Err(Stop::Upstream(format!(
                    "unexpected `{}` message after start-up",
                    char::from(msg.tag)
                )))
            }
            _ => msg.write_to(&mut self.to_agent),
        }
        Ok(())
    }

    fn finish(&mut self, p: Pending) {
        if p.ddl && p.error.is_none() {
            self.catalog.invalidate();
        }
        self.record(p);
    }

    fn on_error(&mut self, msg: Message) -> Result<(), Stop> {
        let ours = {
            let fields = wire::fields(&msg).unwrap_or_default();
            fields
                .iter()
                .any(|(c, v)| *c == b'M' && contains(v, self.token.as_bytes()))
        };
        let denial = if ours {
            match self.expect.front() {
                Some(Expect::Query(p)) | Some(Expect::Execute(p)) => p.denial.clone(),
                Some(Expect::Parse { denial, .. }) => denial.clone(),
                _ => None,
            }
        } else {
            None
        };
        let out = match (&denial, ours) {
            (Some(d), _) => wire::error_response(
                Severity::Error,
                "42501",
                &format!("cordon: {}", d.message),
                d.hint.as_deref(),
            ),
            // The token in an error that is not an answer to a denial: never
            // let it reach the agent.
            (None, true) => {
                wire::error_response(Severity::Error, "42501", "cordon: statement denied", None)
            }
            (None, false) => self.mask_message(&msg),
        };
        let sqlstate = wire::fields(&msg).ok().and_then(|f| {
            f.iter()
                .find(|(c, _)| *c == b'C')
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        });
        out.write_to(&mut self.to_agent);
        self.plan = None;
        self.copy = None;
        // An error ends a COPY FROM STDIN in the database.
        self.copy_in = false;
        match self.expect.front_mut() {
            Some(Expect::Query(p)) => {
                if !ours {
                    p.error = sqlstate;
                }
            }
            Some(Expect::Sync) | None => {}
            Some(_) => {
                // Extended protocol: the message in front failed and the
                // database now skips to Sync; what it skips never ran.
                if let Some(Expect::Execute(_)) = self.expect.front() {
                    if let Some(Expect::Execute(mut p)) = self.expect.pop_front() {
                        // A denial was recorded when it was decided.
                        if p.denial.is_none() {
                            p.error = sqlstate;
                            self.record(*p);
                        }
                    }
                }
                let mut undos = Vec::new();
                while let Some(front) = self.expect.front() {
                    if matches!(front, Expect::Sync) {
                        break;
                    }
                    if let Some(
                        Expect::Parse { undo: Some(u), .. }
                        | Expect::Close { undo: Some(u) }
                        | Expect::Bind { undo: Some(u) },
                    ) = self.expect.pop_front()
                    {
                        undos.push(u);
                    }
                }
                // Newest first: the map returns to what it was before the
                // first message the database failed or skipped.
                for undo in undos.into_iter().rev() {
                    self.undo(undo);
                }
                // No Sync sent yet: what the agent sends until it comes is
                // skipped by the database.
                if self.expect.is_empty() {
                    self.skipping = true;
                }
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // Masking

    /// Resolves the result columns of a RowDescription to masking actions.
    async fn plan_for(&mut self, msg: &Message) -> Result<Option<Arc<Plan>>, Stop> {
        let Some(masker) = &self.masker else {
            return Ok(None);
        };
        let generation = self.catalog.generation();
        if let Some((body, made, plan)) = &self.last_plan {
            if *made == generation && *body == msg.body {
                return Ok(Some(plan.clone()));
            }
        }
        let rules = masker.rules().clone();
        let fields = parse_row_description(msg).map_err(|e| Stop::Upstream(e.to_string()))?;
        // Tables whose names are not cached yet.
        let missing: Vec<u32> = if rules.has_column_rules() {
            let mut m: Vec<u32> = fields
                .iter()
                .map(|f| f.table_oid)
                .filter(|&o| o != 0 && self.catalog.cached(o).is_none())
                .collect();
            m.sort_unstable();
            m.dedup();
            m
        } else {
            Vec::new()
        };
        let mut lookup_failed = false;
        if !missing.is_empty() {
            if let Err(e) = self.load_tables(&missing).await {
                tracing::warn!(error = %e, "catalog lookup failed: masked-table columns are nulled");
                lookup_failed = true;
            }
        }
        let mut columns = Vec::with_capacity(fields.len());
        for f in &fields {
            let name = String::from_utf8_lossy(&f.name).to_lowercase();
            let mut label = name.clone();
            let mut action = ColAction::Pass;
            if rules.has_column_rules() {
                if f.table_oid != 0 {
                    let cols: Option<TableColumns> = self.catalog.cached(f.table_oid);
                    let col = cols.as_ref().and_then(|c| {
                        usize::try_from(f.attnum)
                            .ok()
                            .and_then(|n| n.checked_sub(1))
                            .and_then(|i| c.get(i))
                            .and_then(Option::as_ref)
                    });
                    match col {
                        Some(c) => {
                            label = c.qualified();
                            if let Some(m) = rules.column_mode(&c.schema, &c.table, &c.column) {
                                action = ColAction::Mask(m.clone());
                            }
                        }
                        None if lookup_failed || rules.masks_column_named(&name) => {
                            action = ColAction::Null;
                        }
                        None => {}
                    }
                } else if rules.masks_column_named(&name) {
                    // An expression named like a masked column: no table to
                    // check, so mask it as the strictest rule would.
                    action = ColAction::Mask(Mode::Redact);
                }
            }
            let text_like = masking::is_text_like_type(f.type_oid);
            action = match action {
                ColAction::Mask(_) if f.binary && !text_like => ColAction::Null,
                ColAction::Pass if rules.has_detectors() && !safe_from_detectors(f.type_oid) => {
                    ColAction::Detect
                }
                other => other,
            };
            columns.push(Column {
                label,
                action,
                binary: f.binary,
                type_oid: f.type_oid,
            });
        }
        let passthrough = columns.iter().all(|c| matches!(c.action, ColAction::Pass));
        let plan = Arc::new(Plan {
            columns,
            passthrough,
        });
        // A plan made while the catalog could not be read is not kept.
        self.last_plan = (!lookup_failed).then(|| (msg.body.clone(), generation, plan.clone()));
        Ok(Some(plan))
    }

    async fn catalog_conn(&mut self) -> Result<&mut Stream, upstream::UpstreamError> {
        if self.catalog_conn.is_none() {
            let r = self
                .gw
                .config
                .resources
                .iter()
                .find(|r| r.name == self.resource)
                .ok_or_else(|| upstream::UpstreamError::Connect("resource gone".into()))?;
            let stream = tokio::net::TcpStream::connect(r.address)
                .await
                .map_err(|e| upstream::UpstreamError::Connect(e.to_string()))?;
            let password = super::load_secret(&self.gw.vault, &self.credential)?;
            let up = upstream::login(upstream::Target {
                stream,
                tls: self.gw.postgres.upstream_tls_for(&self.resource),
                user: &self.upstream_user,
                database: &self.database,
                params: &[("application_name".into(), "cordon-catalog".into())],
                password: &password,
            })
            .await?;
            self.catalog_conn = Some(up.stream);
        }
        self.catalog_conn
            .as_mut()
            .ok_or_else(|| upstream::UpstreamError::Connect("catalog connection".into()))
    }

    async fn load_tables(&mut self, oids: &[u32]) -> Result<(), upstream::UpstreamError> {
        let catalog = self.catalog.clone();
        let conn = self.catalog_conn().await?;
        let r = catalog::load_tables(&catalog, conn, oids).await;
        if r.is_err() {
            self.catalog_conn = None;
        }
        r
    }

    fn mask_row(&mut self, msg: &Message) -> Result<Message, Stop> {
        let Some(masker) = &self.masker else {
            return Ok(msg.clone());
        };
        let Some(plan) = &self.plan else {
            // Rows with no description to mask them by: fail closed.
            return Err(Stop::Internal(
                "a result row arrived without a row description; cannot mask it".into(),
            ));
        };
        if plan.passthrough {
            return Ok(msg.clone());
        }
        let mut r = Reader::new(msg);
        let n = r.i16().map_err(|e| Stop::Upstream(e.to_string()))?;
        if usize::try_from(n).ok() != Some(plan.columns.len()) {
            return Err(Stop::Internal(
                "a result row does not match its row description; cannot mask it".into(),
            ));
        }
        let mut b = Builder::new(b'D').i16(n);
        let mut masked = Vec::new();
        for col in &plan.columns {
            let v = r.value().map_err(|e| Stop::Upstream(e.to_string()))?;
            let out: Option<std::borrow::Cow<'_, [u8]>> = match (v, &col.action) {
                (None, _) => None,
                (Some(v), ColAction::Pass) => Some(v.into()),
                (Some(_), ColAction::Null) => {
                    masked.push(col.label.clone());
                    None
                }
                (Some(v), ColAction::Mask(mode)) => {
                    masked.push(col.label.clone());
                    masker.apply(mode, v).map(Into::into)
                }
                (Some(v), ColAction::Detect) => match detect_value(masker, col, v) {
                    None => Some(v.into()),
                    Some(replacement) => {
                        masked.push(col.label.clone());
                        replacement.map(Into::into)
                    }
                },
            };
            b = b.value(out.as_deref());
        }
        if !masked.is_empty() {
            if let Some(p) = self.pending_mut() {
                p.masked.extend(masked);
            }
        }
        Ok(b.finish())
    }

    fn mask_message(&self, msg: &Message) -> Message {
        let Some(masker) = &self.masker else {
            return msg.clone();
        };
        let Ok(fields) = wire::fields(msg) else {
            // Unparseable error text: say only that there was an error.
            return wire::error_response(
                Severity::Error,
                "XX000",
                "cordon: the database sent an error cordon cannot read (withheld)",
                None,
            );
        };
        let sqlstate = fields
            .iter()
            .find(|(c, _)| *c == b'C')
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let column_rules = masker.rules().has_column_rules();
        let rewritten: Vec<(u8, Vec<u8>)> = fields
            .iter()
            .map(|(c, v)| {
                let text = String::from_utf8_lossy(v);
                (
                    *c,
                    masker
                        .message_field(&sqlstate, *c, &text, column_rules)
                        .into_bytes(),
                )
            })
            .collect();
        wire::from_fields(msg.tag, &rewritten)
    }

    /// NotificationResponse payloads (`pg_notify(channel, value)`) go
    /// through the detectors: a value can leave by this path too.
    fn mask_notification(&self, msg: &Message) -> Message {
        let Some(masker) = &self.masker else {
            return msg.clone();
        };
        let mut r = Reader::new(msg);
        let (Ok(pid), Ok(channel), Ok(payload)) = (r.i32(), r.cstr(), r.cstr()) else {
            return msg.clone();
        };
        let text = String::from_utf8_lossy(payload);
        match masker.detect(&text) {
            None => msg.clone(),
            Some(masked) => Builder::new(b'A')
                .i32(pid)
                .cstr(channel)
                .cstr(masked.as_deref().unwrap_or("***").as_bytes())
                .finish(),
        }
    }

    async fn copy_plan(&mut self, msg: &Message) -> Result<Option<CopyPlan>, Stop> {
        let target = self.pending_mut().and_then(|p| p.copy_out.pop_front());
        let Some(masker) = &self.masker else {
            return Ok(None);
        };
        let rules = masker.rules().clone();
        let overall = Reader::new(msg).u8().unwrap_or(0);
        if overall != 0 {
            return Err(Stop::Internal("binary COPY output cannot be masked".into()));
        }
        let Some(target) = target else {
            if rules.has_column_rules() {
                return Err(Stop::Internal(
                    "COPY output of a statement cordon did not classify as COPY; cannot mask it"
                        .into(),
                ));
            }
            return Ok(Some(CopyPlan {
                modes: Vec::new(),
                labels: Vec::new(),
                csv: false,
            }));
        };
        match target {
            CopyOut::Query { format } => Ok(Some(CopyPlan {
                modes: Vec::new(),
                labels: Vec::new(),
                csv: format == CopyFormat::Csv,
            })),
            CopyOut::Table {
                schema,
                table,
                columns,
                format,
            } => {
                if !rules.has_column_rules() {
                    return Ok(Some(CopyPlan {
                        modes: Vec::new(),
                        labels: Vec::new(),
                        csv: format == CopyFormat::Csv,
                    }));
                }
                let names: Vec<String> = if columns.is_empty() {
                    let conn = self
                        .catalog_conn()
                        .await
                        .map_err(|e| Stop::Internal(format!("catalog lookup for COPY: {e}")))?;
                    catalog::table_columns(conn, &schema, &table)
                        .await
                        .map_err(|e| Stop::Internal(format!("catalog lookup for COPY: {e}")))?
                        .into_iter()
                        .map(|c| c.column)
                        .collect()
                } else {
                    columns
                };
                let modes = names
                    .iter()
                    .map(|c| rules.column_mode(&schema, &table, c).cloned())
                    .collect();
                let labels = names
                    .iter()
                    .map(|c| format!("{schema}.{table}.{c}"))
                    .collect();
                Ok(Some(CopyPlan {
                    modes,
                    labels,
                    csv: format == CopyFormat::Csv,
                }))
            }
        }
    }

    fn mask_copy(&mut self, msg: Message) -> Result<Message, Stop> {
        let Some(masker) = &self.masker else {
            return Ok(msg);
        };
        let Some(plan) = &self.copy else {
            // Copy data with no COPY this session classified: fail closed.
            return Err(Stop::Internal(
                "COPY data arrived without a COPY response; cannot mask it".into(),
            ));
        };
        let row = if plan.csv {
            masker.copy_csv_row(&msg.body, &plan.modes)
        } else {
            masker.copy_text_row(&msg.body, &plan.modes)
        };
        let row = row.map_err(|e| Stop::Internal(format!("cannot mask a COPY row: {e}")))?;
        if row != msg.body {
            let labels: Vec<String> = plan
                .modes
                .iter()
                .zip(&plan.labels)
                .filter(|(m, _)| m.is_some())
                .map(|(_, l)| l.clone())
                .collect();
            if let Some(p) = self.pending_mut() {
                if labels.is_empty() {
                    p.masked.insert("copy (detected values)".into());
                }
                p.masked.extend(labels);
            }
        }
        Ok(Message {
            tag: b'd',
            body: Bytes::from(row),
        })
    }
}

impl super::Shared {
    fn upstream_tls_for(&self, resource: &str) -> Option<(Arc<rustls::ClientConfig>, String)> {
        self.upstream_tls.get(resource).cloned()
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn copy_targets(d: &Decision) -> Vec<CopyOut> {
    d.statements
        .iter()
        .filter_map(|s| s.copy_out.clone())
        .collect()
}

fn is_ddl(d: &Decision) -> bool {
    d.statements.iter().any(|s| s.kind == Kind::Ddl)
}

/// Rows from a CommandComplete tag (`SELECT 5`, `INSERT 0 3`, `COPY 7`).
fn command_rows(msg: &Message) -> Option<u64> {
    let tag = Reader::new(msg).cstr().ok()?;
    let tag = std::str::from_utf8(tag).ok()?;
    tag.rsplit(' ').next()?.parse().ok()
}

struct Field {
    name: Vec<u8>,
    table_oid: u32,
    attnum: i16,
    type_oid: u32,
    binary: bool,
}

fn parse_row_description(msg: &Message) -> Result<Vec<Field>, wire::WireError> {
    let mut r = Reader::new(msg);
    let n = r.i16()?;
    let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    for _ in 0..n {
        let name = r.cstr()?.to_vec();
        let table_oid = r.u32()?;
        let attnum = r.i16()?;
        let type_oid = r.u32()?;
        let _len = r.i16()?;
        let _mod = r.i32()?;
        let format = r.i16()?;
        out.push(Field {
            name,
            table_oid,
            attnum,
            type_oid,
            binary: format == 1,
        });
    }
    Ok(out)
}

/// Types whose values cannot carry text a detector looks for.
fn safe_from_detectors(oid: u32) -> bool {
    matches!(
        oid,
        16 // bool
        | 21 // int2
        | 23 // int4
        | 26 // oid
        | 700 // float4
        | 701 // float8
        | 1082 // date
        | 1083 // time
        | 1114 // timestamp
        | 1184 // timestamptz
        | 1186 // interval
        | 1266 // timetz
        | 2950 // uuid
        | 17 // bytea: binary data, not text (text format is hex)
    )
}

/// Runs the detectors on one value. Some(replacement) if anything was found.
fn detect_value(masker: &Masker, col: &Column, v: &[u8]) -> Option<Option<Vec<u8>>> {
    let text: std::borrow::Cow<'_, str> = if col.binary {
        match col.type_oid {
            20 => {
                // int8 in binary: its decimal text is what a detector sees.
                let n = i64::from_be_bytes(<[u8; 8]>::try_from(v).ok()?);
                std::borrow::Cow::Owned(n.to_string())
            }
            oid if masking::is_text_like_type(oid) => String::from_utf8_lossy(v),
            3802 => String::from_utf8_lossy(v.get(1..).unwrap_or_default()), // jsonb: version byte
            // Other binary encodings (arrays, records, numeric): scan the
            // raw bytes; anything found nulls the value.
            _ => {
                let lossy = String::from_utf8_lossy(v);
                return masker.detect(&lossy).map(|_| None);
            }
        }
    } else {
        String::from_utf8_lossy(v)
    };
    let found = masker.detect(&text)?;
    if col.binary && !masking::is_text_like_type(col.type_oid) {
        // Cannot re-encode a masked value of this type: null it.
        return Some(None);
    }
    Some(found.map(String::into_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_tags_give_row_counts() {
        let m = |t: &str| Builder::new(b'C').cstr(t.as_bytes()).finish();
        assert_eq!(command_rows(&m("SELECT 5")), Some(5));
        assert_eq!(command_rows(&m("INSERT 0 3")), Some(3));
        assert_eq!(command_rows(&m("BEGIN")), None);
    }

    #[test]
    fn token_search() {
        assert!(contains(
            b"syntax error at or near \"cordon_denied_1\"",
            b"cordon_denied_1"
        ));
        assert!(!contains(b"abc", b""));
    }
}
