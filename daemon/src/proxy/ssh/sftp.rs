//! SFTP inspection for the SSH gateway: sits on an `sftp` subsystem channel
//! between the agent (SSH client side) and the upstream server, checks every
//! request against the file rules of the policy, answers denied requests
//! itself, and turns the stream into file events (operations and transfers)
//! for the session recording. Pure: no I/O, no async; the channel code feeds
//! bytes in and writes the returned bytes out.
//!
//! Protocol: SFTP version 3 (draft-ietf-secsh-filexfer-02), which is what
//! OpenSSH speaks, plus the OpenSSH extensions. The agent's INIT is forwarded
//! with its version lowered to 3, and a server answering with a higher version
//! ends the channel, so both sides are held to the packet layouts parsed here.
//!
//! How requests are classified (the [`Access`] handed to [`FileRules`]):
//! - OPEN with only the READ pflag (or none) is `Read`; any other pflag
//!   (WRITE, APPEND, CREAT, TRUNC, EXCL, unknown bits) is `Write`.
//! - OPENDIR is `List`; STAT, LSTAT and READLINK are `List` too: they reveal
//!   what a long directory listing shows, never file contents.
//! - SETSTAT, REMOVE, MKDIR, RMDIR, RENAME and SYMLINK are `Write` (both paths
//!   of RENAME and SYMLINK are checked). SYMLINK follows OpenSSH's argument
//!   order (target first, link second); a relative target is resolved against
//!   the link's directory, where the server will resolve it.
//! - Requests on a handle (READ, WRITE, FSTAT, FSETSTAT, READDIR, CLOSE) are
//!   denied unless the server issued the handle on this channel. WRITE on a
//!   handle that was not opened for writing, and every FSETSTAT, is a `Write`
//!   check on the handle's path.
//! - REALPATH is always forwarded (it is how clients learn their directory).
//! - Extensions: `posix-rename@openssh.com`, `hardlink@openssh.com`,
//!   `lsetstat@openssh.com` and `copy-data` are `Write`; `statvfs@openssh.com`
//!   is `Read`; `fstatvfs@openssh.com` and `fsync@openssh.com` need a known
//!   handle; `limits@openssh.com`, `expand-path@openssh.com`, `home-directory`
//!   and `users-groups-by-id@openssh.com` are forwarded. Any other extension
//!   and any unknown packet type is refused with SSH_FX_OP_UNSUPPORTED.
//!
//! Paths: a relative path is resolved against the directory the server
//! returned for REALPATH(".") (the only directory an SFTP v3 server resolves
//! relative paths against); `.`, `..` and repeated slashes are removed
//! lexically. Until that reply has been seen a relative path is handed to the
//! rules as it is (rules with path patterns deny relative paths). Paths that
//! are not UTF-8, contain a NUL byte (the server would cut the path there) or
//! are longer than [`MAX_PATH`] are denied. Rules are lexical: a symlink inside
//! an allowed tree that points out of it is followed by the server.
//!
//! Denied requests are not forwarded; the agent gets SSH_FXP_STATUS with
//! SSH_FX_PERMISSION_DENIED and a message naming the reason, and the session
//! goes on. A malformed or oversized packet from either side is an
//! [`SftpError`]: the caller closes the channel.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use sha2::{Digest as _, Sha256};

/// Largest SFTP packet accepted from either side (the length field's value):
/// OpenSSH's 256 KiB message limit plus 1 KiB of slack.
pub const MAX_PACKET: usize = 256 * 1024 + 1024;

/// Requests forwarded to the server and not yet answered.
pub const MAX_OUTSTANDING: usize = 4096;

/// Handles the server has issued and the agent has not closed.
pub const MAX_HANDLES: usize = 4096;

/// Longest path (in bytes, before and after resolution) that is checked; a
/// longer one is denied (Linux's PATH_MAX is 4096 including the NUL).
pub const MAX_PATH: usize = 4096;

/// Longest handle a server may issue (draft-ietf-secsh-filexfer-02 §6.2).
const MAX_HANDLE_LEN: usize = 256;

/// Reason given for requests on a handle this channel never saw.
const UNKNOWN_HANDLE: &str = "the handle was not issued by the server on this channel";

/// SSH_FXP_* packet types.
mod fxp {
    pub const INIT: u8 = 1;
    pub const VERSION: u8 = 2;
    pub const OPEN: u8 = 3;
    pub const CLOSE: u8 = 4;
    pub const READ: u8 = 5;
    pub const WRITE: u8 = 6;
    pub const LSTAT: u8 = 7;
    pub const FSTAT: u8 = 8;
    pub const SETSTAT: u8 = 9;
    pub const FSETSTAT: u8 = 10;
    pub const OPENDIR: u8 = 11;
    pub const READDIR: u8 = 12;
    pub const REMOVE: u8 = 13;
    pub const MKDIR: u8 = 14;
    pub const RMDIR: u8 = 15;
    pub const REALPATH: u8 = 16;
    pub const STAT: u8 = 17;
    pub const RENAME: u8 = 18;
    pub const READLINK: u8 = 19;
    pub const SYMLINK: u8 = 20;
    pub const STATUS: u8 = 101;
    pub const HANDLE: u8 = 102;
    pub const DATA: u8 = 103;
    pub const NAME: u8 = 104;
    pub const ATTRS: u8 = 105;
    pub const EXTENDED: u8 = 200;
    pub const EXTENDED_REPLY: u8 = 201;
}

/// SSH_FX_* status codes.
mod fx {
    pub const OK: u32 = 0;
    pub const EOF: u32 = 1;
    pub const PERMISSION_DENIED: u32 = 3;
    pub const OP_UNSUPPORTED: u32 = 8;
}

/// SSH_FXF_READ: the only open flag that does not modify anything.
const PFLAG_READ: u32 = 0x0000_0001;

fn packet_name(ty: u8) -> &'static str {
    match ty {
        fxp::INIT => "SSH_FXP_INIT",
        fxp::VERSION => "SSH_FXP_VERSION",
        fxp::OPEN => "SSH_FXP_OPEN",
        fxp::CLOSE => "SSH_FXP_CLOSE",
        fxp::READ => "SSH_FXP_READ",
        fxp::WRITE => "SSH_FXP_WRITE",
        fxp::LSTAT => "SSH_FXP_LSTAT",
        fxp::FSTAT => "SSH_FXP_FSTAT",
        fxp::SETSTAT => "SSH_FXP_SETSTAT",
        fxp::FSETSTAT => "SSH_FXP_FSETSTAT",
        fxp::OPENDIR => "SSH_FXP_OPENDIR",
        fxp::READDIR => "SSH_FXP_READDIR",
        fxp::REMOVE => "SSH_FXP_REMOVE",
        fxp::MKDIR => "SSH_FXP_MKDIR",
        fxp::RMDIR => "SSH_FXP_RMDIR",
        fxp::REALPATH => "SSH_FXP_REALPATH",
        fxp::STAT => "SSH_FXP_STAT",
        fxp::RENAME => "SSH_FXP_RENAME",
        fxp::READLINK => "SSH_FXP_READLINK",
        fxp::SYMLINK => "SSH_FXP_SYMLINK",
        fxp::STATUS => "SSH_FXP_STATUS",
        fxp::HANDLE => "SSH_FXP_HANDLE",
        fxp::DATA => "SSH_FXP_DATA",
        fxp::NAME => "SSH_FXP_NAME",
        fxp::ATTRS => "SSH_FXP_ATTRS",
        fxp::EXTENDED => "SSH_FXP_EXTENDED",
        fxp::EXTENDED_REPLY => "SSH_FXP_EXTENDED_REPLY",
        _ => "sftp packet of unknown type",
    }
}

/// What a request does to a path. Same meaning as `policy::ssh::FileAccess`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    List,
    Write,
}

/// The policy's file rules, as the inspector sees them.
pub trait FileRules: Send {
    /// `Err` carries the reason for a denial, naming the rule.
    fn check(&self, access: Access, path: &str) -> Result<(), String>;
}

/// What to send on after feeding agent bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flow {
    /// Allowed packets, unchanged (except INIT's version, lowered to 3).
    pub to_server: Vec<u8>,
    /// Cordon's own replies to denied requests.
    pub to_client: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FileEvent {
    /// A checked request. `op` is one of "open-read", "open-write", "opendir",
    /// "stat", "lstat", "readlink", "setstat", "remove", "mkdir", "rmdir",
    /// "rename", "symlink" (path = link, path2 = target), "write" (on a handle
    /// not opened for writing), "fsetstat", "posix-rename", "hardlink",
    /// "lsetstat", "statvfs", "copy-data" (path = source, path2 = destination),
    /// "read", "close", "fstat", "readdir", "fstatvfs", "fsync" (denied: unknown
    /// handle, path empty), "extended:NAME" or "type-N" (refused, path empty).
    Op {
        op: String,
        path: String,
        path2: Option<String>,
        allowed: bool,
        reason: Option<String>,
    },
    /// A file's data that went through the channel, reported when the handle
    /// is closed (`complete` = the server confirmed the close and no read or
    /// write on it failed) or when the channel ends (`complete = false`).
    Transfer {
        path: String,
        direction: Direction,
        bytes: u64,
        /// SHA-256 (hex) of the data, when it went at strictly sequential
        /// offsets from 0; `None` otherwise.
        sha256: Option<String>,
        complete: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Download,
    Upload,
}

/// Which peer sent the bytes an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Agent,
    Server,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::Agent => "agent",
            Side::Server => "server",
        })
    }
}

/// A stream the inspector cannot follow. The channel must be closed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SftpError {
    #[error("sftp packet from the {side} declares a length of {len} bytes (the limit is {limit})")]
    TooLong { side: Side, len: u32, limit: usize },
    #[error("sftp packet from the {side} declares a length of {len} bytes (the minimum is 5)")]
    TooShort { side: Side, len: u32 },
    #[error("malformed {packet} from the {side}: {what}")]
    Malformed {
        side: Side,
        packet: &'static str,
        what: &'static str,
    },
    #[error("the agent asked for sftp version {version}; only version 3 is supported")]
    AgentVersion { version: u32 },
    #[error("the server answered with sftp version {version}; only version 3 is supported")]
    ServerVersion { version: u32 },
    #[error("the agent sent a second SSH_FXP_INIT")]
    SecondInit,
    #[error("the agent reused sftp request id {id} while a request with that id is outstanding")]
    DuplicateId { id: u32 },
    #[error("the agent has more than {limit} sftp requests outstanding")]
    TooManyRequests { limit: usize },
    #[error("the agent has more than {limit} sftp handles open")]
    TooManyHandles { limit: usize },
    #[error("the server issued an sftp handle of {len} bytes (the limit is {limit})")]
    HandleTooLong { len: usize, limit: usize },
}

/// Follows one sftp channel. See the module documentation.
pub struct Inspector {
    rules: Box<dyn FileRules>,
    agent_buf: Vec<u8>,
    server_buf: Vec<u8>,
    init_seen: bool,
    /// What the server answered to REALPATH(".").
    home: Option<String>,
    /// Forwarded requests by id, until their reply.
    pending: HashMap<u32, Pending>,
    /// Live handles (issued, CLOSE not yet sent) to their file.
    handles: HashMap<Vec<u8>, u64>,
    /// Opened files and directories, until the reply to their CLOSE.
    files: BTreeMap<u64, OpenFile>,
    next_file: u64,
    events: Vec<FileEvent>,
    /// Once the stream is broken, every later call returns this.
    failed: Option<SftpError>,
}

impl fmt::Debug for Inspector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inspector")
            .field("home", &self.home)
            .field("outstanding", &self.pending.len())
            .field("open", &self.files.len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// What a forwarded request needs from its reply.
#[derive(Debug)]
enum Pending {
    Open {
        path: String,
        dir: bool,
        writable: bool,
    },
    Home,
    Read {
        file: u64,
        offset: u64,
    },
    Write {
        file: u64,
    },
    Close {
        file: u64,
    },
    Other,
}

#[derive(Debug)]
struct OpenFile {
    path: String,
    dir: bool,
    /// Opened with a modifying pflag (reported as an upload even if empty).
    writable: bool,
    /// A `Write` check on the path has passed for this handle.
    write_ok: bool,
    /// A read or write on it failed on the server.
    failed: bool,
    down: Tally,
    up: Tally,
}

/// Bytes moved one way, and their hash while offsets stay sequential.
#[derive(Debug)]
struct Tally {
    bytes: u64,
    next: u64,
    hash: Option<Sha256>,
}

impl Tally {
    fn new() -> Self {
        Self {
            bytes: 0,
            next: 0,
            hash: Some(Sha256::new()),
        }
    }

    fn add(&mut self, offset: u64, data: &[u8]) {
        let len = u64::try_from(data.len()).unwrap_or(u64::MAX);
        self.bytes = self.bytes.saturating_add(len);
        match &mut self.hash {
            Some(hash) if offset == self.next => {
                hash.update(data);
                self.next = self.next.saturating_add(len);
            }
            _ => self.hash = None,
        }
    }

    fn digest(self) -> Option<String> {
        self.hash.map(|h| hex::encode(h.finalize()))
    }
}

/// A request's fate.
enum Verdict {
    Forward(Pending),
    Refuse { code: u32, reason: String },
}

/// Forward (nothing to track in the reply) or deny.
fn verdict(checked: Result<(), String>) -> Verdict {
    match checked {
        Ok(()) => Verdict::Forward(Pending::Other),
        Err(reason) => deny(reason),
    }
}

fn deny(reason: String) -> Verdict {
    Verdict::Refuse {
        code: fx::PERMISSION_DENIED,
        reason,
    }
}

/// A path from a request, resolved for the rules.
struct Target {
    /// The resolved path, or (when `problem` is set) a printable rendering.
    path: String,
    /// Why the path cannot be checked at all.
    problem: Option<String>,
}

impl Inspector {
    pub fn new(rules: Box<dyn FileRules>) -> Self {
        Self {
            rules,
            agent_buf: Vec::new(),
            server_buf: Vec::new(),
            init_seen: false,
            home: None,
            pending: HashMap::new(),
            handles: HashMap::new(),
            files: BTreeMap::new(),
            next_file: 0,
            events: Vec::new(),
            failed: None,
        }
    }

    /// Bytes the agent sent on the sftp channel. Complete packets are checked:
    /// allowed ones go to `to_server`, denied ones are answered in `to_client`
    /// with SSH_FXP_STATUS PERMISSION_DENIED (message names the rule). Err =
    /// malformed/oversized stream: caller closes the channel.
    #[allow(clippy::wrong_self_convention)] // named for the direction of the bytes
    pub fn from_client(&mut self, data: &[u8]) -> Result<Flow, SftpError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut flow = Flow::default();
        let mut buf = std::mem::take(&mut self.agent_buf);
        let result = frames(Side::Agent, &mut buf, data, |packet| {
            self.agent_packet(packet, &mut flow)
        });
        self.agent_buf = buf;
        match result {
            Ok(()) => Ok(flow),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Bytes the server sent: passed through unchanged (returned), parsed to
    /// track handles, transfers (size, sha256) and REALPATH(".").
    #[allow(clippy::wrong_self_convention)] // named for the direction of the bytes
    pub fn from_server(&mut self, data: &[u8]) -> Result<Vec<u8>, SftpError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let mut buf = std::mem::take(&mut self.server_buf);
        let result = frames(Side::Server, &mut buf, data, |packet| {
            self.server_packet(packet)
        });
        self.server_buf = buf;
        match result {
            Ok(()) => Ok(data.to_vec()),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Events since the last call: operations (allowed/denied, path) and
    /// finished transfers. Call it after each `from_client`/`from_server`:
    /// events accumulate until taken.
    pub fn take_events(&mut self) -> Vec<FileEvent> {
        std::mem::take(&mut self.events)
    }

    /// At channel close: transfers still open are reported (complete = false).
    pub fn finish(&mut self) -> Vec<FileEvent> {
        let mut events = std::mem::take(&mut self.events);
        for file in std::mem::take(&mut self.files).into_values() {
            report(file, false, &mut events);
        }
        self.handles.clear();
        self.pending.clear();
        events
    }

    // ----- agent -> server -----

    fn agent_packet(&mut self, packet: &[u8], flow: &mut Flow) -> Result<(), SftpError> {
        let body = packet.get(4..).unwrap_or_default();
        let ty = body.first().copied().unwrap_or_default();
        let mut r = Reader::new(Side::Agent, ty, body.get(1..).unwrap_or_default());
        if ty == fxp::INIT {
            let version = r.u32()?;
            if self.init_seen {
                return Err(SftpError::SecondInit);
            }
            if version < 3 {
                return Err(SftpError::AgentVersion { version });
            }
            self.init_seen = true;
            let start = flow.to_server.len();
            flow.to_server.extend_from_slice(packet);
            // Offer the server version 3 only, whatever the agent can do.
            let at = start.saturating_add(5);
            if let Some(v) = flow.to_server.get_mut(at..at.saturating_add(4)) {
                v.copy_from_slice(&3u32.to_be_bytes());
            }
            return Ok(());
        }
        let id = r.u32()?;
        if self.pending.contains_key(&id) {
            return Err(SftpError::DuplicateId { id });
        }
        if self.pending.len() >= MAX_OUTSTANDING {
            return Err(SftpError::TooManyRequests {
                limit: MAX_OUTSTANDING,
            });
        }
        match self.request(ty, &mut r)? {
            Verdict::Forward(pending) => {
                self.pending.insert(id, pending);
                flow.to_server.extend_from_slice(packet);
            }
            Verdict::Refuse { code, reason } => {
                flow.to_client.extend_from_slice(&status_packet(
                    id,
                    code,
                    &format!("denied by cordon: {reason}"),
                ));
            }
        }
        Ok(())
    }

    fn request(&mut self, ty: u8, r: &mut Reader<'_>) -> Result<Verdict, SftpError> {
        Ok(match ty {
            fxp::OPEN => {
                let raw = r.string()?;
                let pflags = r.u32()?;
                if self.files.len() >= MAX_HANDLES {
                    return Err(SftpError::TooManyHandles { limit: MAX_HANDLES });
                }
                let writable = pflags & !PFLAG_READ != 0;
                let (op, access) = if writable {
                    ("open-write", Access::Write)
                } else {
                    ("open-read", Access::Read)
                };
                let target = target(raw, self.home.as_deref());
                match self.decide(op, &[(access, &target)]) {
                    Ok(()) => Verdict::Forward(Pending::Open {
                        path: target.path,
                        dir: false,
                        writable,
                    }),
                    Err(reason) => deny(reason),
                }
            }
            fxp::OPENDIR => {
                let target = target(r.string()?, self.home.as_deref());
                match self.decide("opendir", &[(Access::List, &target)]) {
                    Ok(()) => Verdict::Forward(Pending::Open {
                        path: target.path,
                        dir: true,
                        writable: false,
                    }),
                    Err(reason) => deny(reason),
                }
            }
            fxp::STAT | fxp::LSTAT | fxp::READLINK => {
                let op = match ty {
                    fxp::STAT => "stat",
                    fxp::LSTAT => "lstat",
                    _ => "readlink",
                };
                self.path_op(op, &[(Access::List, r.string()?)])
            }
            fxp::SETSTAT | fxp::REMOVE | fxp::MKDIR | fxp::RMDIR => {
                let op = match ty {
                    fxp::SETSTAT => "setstat",
                    fxp::REMOVE => "remove",
                    fxp::MKDIR => "mkdir",
                    _ => "rmdir",
                };
                self.path_op(op, &[(Access::Write, r.string()?)])
            }
            fxp::RENAME => {
                let from = r.string()?;
                let to = r.string()?;
                self.path_op("rename", &[(Access::Write, from), (Access::Write, to)])
            }
            fxp::SYMLINK => {
                // OpenSSH's order: symlink(first = target, second = link).
                let target_raw = r.string()?;
                let link = target(r.string()?, self.home.as_deref());
                let base = if link.problem.is_none() && link.path.starts_with('/') {
                    Some(parent(&link.path))
                } else {
                    None
                };
                let pointee = target(target_raw, base);
                let checked = self.decide(
                    "symlink",
                    &[(Access::Write, &link), (Access::Write, &pointee)],
                );
                verdict(checked)
            }
            fxp::REALPATH => {
                if is_dot(r.string()?) {
                    Verdict::Forward(Pending::Home)
                } else {
                    Verdict::Forward(Pending::Other)
                }
            }
            fxp::READ => {
                let handle = r.string()?;
                let offset = r.u64()?;
                let _len = r.u32()?;
                match self.known("read", handle) {
                    Ok(file) => Verdict::Forward(Pending::Read { file, offset }),
                    Err(v) => v,
                }
            }
            fxp::WRITE => {
                let handle = r.string()?;
                let offset = r.u64()?;
                let data = r.string()?;
                let file = match self.known("write", handle) {
                    Ok(file) => file,
                    Err(v) => return Ok(v),
                };
                if let Err(v) = self.may_write("write", file) {
                    return Ok(v);
                }
                if let Some(f) = self.files.get_mut(&file) {
                    f.up.add(offset, data);
                }
                Verdict::Forward(Pending::Write { file })
            }
            fxp::FSETSTAT => {
                let file = match self.known("fsetstat", r.string()?) {
                    Ok(file) => file,
                    Err(v) => return Ok(v),
                };
                let path = self.file_path(file);
                let checked = self.decide("fsetstat", &[(Access::Write, &ok_target(path))]);
                verdict(checked)
            }
            fxp::CLOSE => {
                let handle = r.string()?;
                match self.known("close", handle) {
                    Ok(file) => {
                        self.handles.remove(handle);
                        Verdict::Forward(Pending::Close { file })
                    }
                    Err(v) => v,
                }
            }
            fxp::FSTAT | fxp::READDIR => {
                let op = if ty == fxp::FSTAT { "fstat" } else { "readdir" };
                match self.known(op, r.string()?) {
                    Ok(_) => Verdict::Forward(Pending::Other),
                    Err(v) => v,
                }
            }
            fxp::EXTENDED => self.extended(r)?,
            other => {
                let reason = format!("sftp request type {other} is not supported through cordon");
                self.record(&format!("type-{other}"), String::new(), None, Err(&reason));
                Verdict::Refuse {
                    code: fx::OP_UNSUPPORTED,
                    reason,
                }
            }
        })
    }

    fn extended(&mut self, r: &mut Reader<'_>) -> Result<Verdict, SftpError> {
        let name = r.string()?;
        Ok(match name {
            b"posix-rename@openssh.com" | b"hardlink@openssh.com" => {
                let op = if name.starts_with(b"posix") {
                    "posix-rename"
                } else {
                    "hardlink"
                };
                let from = r.string()?;
                let to = r.string()?;
                self.path_op(op, &[(Access::Write, from), (Access::Write, to)])
            }
            b"lsetstat@openssh.com" => self.path_op("lsetstat", &[(Access::Write, r.string()?)]),
            b"statvfs@openssh.com" => self.path_op("statvfs", &[(Access::Read, r.string()?)]),
            b"fstatvfs@openssh.com" | b"fsync@openssh.com" => {
                let op = if name.starts_with(b"fstatvfs") {
                    "fstatvfs"
                } else {
                    "fsync"
                };
                match self.known(op, r.string()?) {
                    Ok(_) => Verdict::Forward(Pending::Other),
                    Err(v) => v,
                }
            }
            b"copy-data" => {
                let from = r.string()?;
                let _from_offset = r.u64()?;
                let _len = r.u64()?;
                let to = r.string()?;
                let _to_offset = r.u64()?;
                let from = match self.known("copy-data", from) {
                    Ok(file) => file,
                    Err(v) => return Ok(v),
                };
                let to = match self.known("copy-data", to) {
                    Ok(file) => file,
                    Err(v) => return Ok(v),
                };
                let source = ok_target(self.file_path(from));
                let destination = ok_target(self.file_path(to));
                let checked = self.decide(
                    "copy-data",
                    &[(Access::Read, &source), (Access::Write, &destination)],
                );
                if checked.is_ok() {
                    if let Some(f) = self.files.get_mut(&to) {
                        f.write_ok = true;
                    }
                }
                verdict(checked)
            }
            b"limits@openssh.com"
            | b"expand-path@openssh.com"
            | b"home-directory"
            | b"users-groups-by-id@openssh.com" => Verdict::Forward(Pending::Other),
            _ => {
                let shown = printable(name, 64);
                let reason = format!("sftp extension `{shown}` is not supported through cordon");
                self.record(
                    &format!("extended:{shown}"),
                    String::new(),
                    None,
                    Err(&reason),
                );
                Verdict::Refuse {
                    code: fx::OP_UNSUPPORTED,
                    reason,
                }
            }
        })
    }

    /// Checks a request on one or two raw paths.
    fn path_op(&mut self, op: &str, paths: &[(Access, &[u8])]) -> Verdict {
        let targets: Vec<(Access, Target)> = paths
            .iter()
            .map(|(access, raw)| (*access, target(raw, self.home.as_deref())))
            .collect();
        let refs: Vec<(Access, &Target)> = targets.iter().map(|(a, t)| (*a, t)).collect();
        let checked = self.decide(op, &refs);
        verdict(checked)
    }

    /// Runs the rules on every path (stopping at the first denial) and records
    /// the operation.
    fn decide(&mut self, op: &str, checks: &[(Access, &Target)]) -> Result<(), String> {
        let mut result = Ok(());
        for (access, target) in checks {
            let checked = match &target.problem {
                Some(problem) => Err(problem.clone()),
                None => self.rules.check(*access, &target.path),
            };
            if checked.is_err() {
                result = checked;
                break;
            }
        }
        let path = checks
            .first()
            .map(|(_, t)| t.path.clone())
            .unwrap_or_default();
        let path2 = checks.get(1).map(|(_, t)| t.path.clone());
        self.record(
            op,
            path,
            path2,
            result.as_ref().map(|_| ()).map_err(|e| e.as_str()),
        );
        result
    }

    fn record(&mut self, op: &str, path: String, path2: Option<String>, result: Result<(), &str>) {
        self.events.push(FileEvent::Op {
            op: op.to_owned(),
            path,
            path2,
            allowed: result.is_ok(),
            reason: result.err().map(str::to_owned),
        });
    }

    /// The file behind a handle, or the refusal (recorded) if there is none.
    fn known(&mut self, op: &str, handle: &[u8]) -> Result<u64, Verdict> {
        match self.handles.get(handle) {
            Some(file) => Ok(*file),
            None => {
                self.record(op, String::new(), None, Err(UNKNOWN_HANDLE));
                Err(deny(UNKNOWN_HANDLE.to_owned()))
            }
        }
    }

    /// A `Write` check on a handle's path, once per handle.
    fn may_write(&mut self, op: &str, file: u64) -> Result<(), Verdict> {
        if self.files.get(&file).is_some_and(|f| f.write_ok) {
            return Ok(());
        }
        let path = self.file_path(file);
        match self.decide(op, &[(Access::Write, &ok_target(path))]) {
            Ok(()) => {
                if let Some(f) = self.files.get_mut(&file) {
                    f.write_ok = true;
                }
                Ok(())
            }
            Err(reason) => Err(deny(reason)),
        }
    }

    fn file_path(&self, file: u64) -> String {
        self.files
            .get(&file)
            .map(|f| f.path.clone())
            .unwrap_or_default()
    }

    // ----- server -> agent -----

    fn server_packet(&mut self, packet: &[u8]) -> Result<(), SftpError> {
        let body = packet.get(4..).unwrap_or_default();
        let ty = body.first().copied().unwrap_or_default();
        let mut r = Reader::new(Side::Server, ty, body.get(1..).unwrap_or_default());
        match ty {
            fxp::VERSION => {
                let version = r.u32()?;
                if version > 3 {
                    return Err(SftpError::ServerVersion { version });
                }
                return Ok(());
            }
            fxp::STATUS
            | fxp::HANDLE
            | fxp::DATA
            | fxp::NAME
            | fxp::ATTRS
            | fxp::EXTENDED_REPLY => {}
            // Nothing a v3 server should send; the agent will judge it.
            _ => return Ok(()),
        }
        let id = r.u32()?;
        let Some(pending) = self.pending.remove(&id) else {
            return Ok(());
        };
        match (ty, pending) {
            (
                fxp::HANDLE,
                Pending::Open {
                    path,
                    dir,
                    writable,
                },
            ) => {
                let handle = r.string()?;
                if handle.len() > MAX_HANDLE_LEN {
                    return Err(SftpError::HandleTooLong {
                        len: handle.len(),
                        limit: MAX_HANDLE_LEN,
                    });
                }
                if self.files.len() >= MAX_HANDLES {
                    return Err(SftpError::TooManyHandles { limit: MAX_HANDLES });
                }
                let file = self.next_file;
                self.next_file = self.next_file.saturating_add(1);
                self.files.insert(
                    file,
                    OpenFile {
                        path,
                        dir,
                        writable,
                        write_ok: writable,
                        failed: false,
                        down: Tally::new(),
                        up: Tally::new(),
                    },
                );
                if let Some(old) = self.handles.insert(handle.to_vec(), file) {
                    // The server reissued a live handle: the old file is gone.
                    if let Some(old) = self.files.remove(&old) {
                        report(old, false, &mut self.events);
                    }
                }
            }
            (fxp::DATA, Pending::Read { file, offset }) => {
                let data = r.string()?;
                if let Some(f) = self.files.get_mut(&file) {
                    f.down.add(offset, data);
                }
            }
            (fxp::NAME, Pending::Home) => self.learn_home(&mut r)?,
            (fxp::STATUS, Pending::Read { file, .. }) => {
                let code = r.u32()?;
                self.settle(file, code == fx::OK || code == fx::EOF);
            }
            (fxp::STATUS, Pending::Write { file }) => {
                let code = r.u32()?;
                self.settle(file, code == fx::OK);
            }
            (_, Pending::Close { file }) => {
                let ok = ty == fxp::STATUS && r.u32()? == fx::OK;
                if let Some(f) = self.files.remove(&file) {
                    report(f, ok, &mut self.events);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The answer to REALPATH("."): the directory relative paths are under.
    fn learn_home(&mut self, r: &mut Reader<'_>) -> Result<(), SftpError> {
        if r.u32()? == 0 {
            return Ok(());
        }
        let home = target(r.string()?, None);
        if home.problem.is_none() && home.path.starts_with('/') {
            self.home = Some(home.path);
        }
        Ok(())
    }

    /// A read or write on `file` was answered; `ok` = it succeeded.
    fn settle(&mut self, file: u64, ok: bool) {
        if let Some(f) = self.files.get_mut(&file) {
            f.failed |= !ok;
        }
    }
}

/// The transfer events of a file whose handle is gone.
fn report(file: OpenFile, closed: bool, out: &mut Vec<FileEvent>) {
    if file.dir {
        return;
    }
    let complete = closed && !file.failed;
    if file.down.bytes > 0 {
        out.push(FileEvent::Transfer {
            path: file.path.clone(),
            direction: Direction::Download,
            bytes: file.down.bytes,
            sha256: file.down.digest(),
            complete,
        });
    }
    if file.writable || file.up.bytes > 0 {
        out.push(FileEvent::Transfer {
            path: file.path,
            direction: Direction::Upload,
            bytes: file.up.bytes,
            sha256: file.up.digest(),
            complete,
        });
    }
}

/// Splits `data` (after what `buf` holds from earlier calls) into complete
/// packets, each with its length field, and keeps the incomplete rest in `buf`.
fn frames(
    side: Side,
    buf: &mut Vec<u8>,
    mut data: &[u8],
    mut each: impl FnMut(&[u8]) -> Result<(), SftpError>,
) -> Result<(), SftpError> {
    if !buf.is_empty() {
        let (head, rest) = data.split_at(4usize.saturating_sub(buf.len()).min(data.len()));
        buf.extend_from_slice(head);
        data = rest;
        let Some(total) = framed_len(side, buf)? else {
            return Ok(());
        };
        let (body, rest) = data.split_at(total.saturating_sub(buf.len()).min(data.len()));
        buf.extend_from_slice(body);
        data = rest;
        if buf.len() < total {
            return Ok(());
        }
        let result = each(buf);
        buf.clear();
        result?;
    }
    while let Some(total) = framed_len(side, data)? {
        if data.len() < total {
            break;
        }
        let (packet, rest) = data.split_at(total);
        each(packet)?;
        data = rest;
    }
    buf.extend_from_slice(data);
    Ok(())
}

/// The whole length of the packet starting `bytes` (length field included),
/// once its length field is there.
fn framed_len(side: Side, bytes: &[u8]) -> Result<Option<usize>, SftpError> {
    let Some(len) = bytes
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
    else {
        return Ok(None);
    };
    if len < 5 {
        return Err(SftpError::TooShort { side, len });
    }
    let too_long = SftpError::TooLong {
        side,
        len,
        limit: MAX_PACKET,
    };
    let total = usize::try_from(len).map_err(|_| too_long.clone())?;
    if total > MAX_PACKET {
        return Err(too_long);
    }
    total.checked_add(4).map(Some).ok_or(too_long)
}

/// A cursor over a packet after its type byte.
struct Reader<'a> {
    side: Side,
    ty: u8,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(side: Side, ty: u8, rest: &'a [u8]) -> Self {
        Self { side, ty, rest }
    }

    fn bad(&self, what: &'static str) -> SftpError {
        SftpError::Malformed {
            side: self.side,
            packet: packet_name(self.ty),
            what,
        }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], SftpError> {
        if self.rest.len() < n {
            return Err(self.bad(what));
        }
        let (taken, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(taken)
    }

    fn u32(&mut self) -> Result<u32, SftpError> {
        let b = self.take(4, "the packet ends inside a uint32 field")?;
        <[u8; 4]>::try_from(b)
            .map(u32::from_be_bytes)
            .map_err(|_| self.bad("the packet ends inside a uint32 field"))
    }

    fn u64(&mut self) -> Result<u64, SftpError> {
        let b = self.take(8, "the packet ends inside a uint64 field")?;
        <[u8; 8]>::try_from(b)
            .map(u64::from_be_bytes)
            .map_err(|_| self.bad("the packet ends inside a uint64 field"))
    }

    fn string(&mut self) -> Result<&'a [u8], SftpError> {
        let len = self
            .take(4, "the packet ends inside a string length")
            .and_then(|b| {
                <[u8; 4]>::try_from(b)
                    .map(u32::from_be_bytes)
                    .map_err(|_| self.bad("the packet ends inside a string length"))
            })?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        self.take(len, "a string's length runs past the end of the packet")
    }
}

/// SSH_FXP_STATUS(id, code, message, "en").
fn status_packet(id: u32, code: u32, message: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(message.len().saturating_add(23));
    body.push(fxp::STATUS);
    body.extend_from_slice(&id.to_be_bytes());
    body.extend_from_slice(&code.to_be_bytes());
    put_string(&mut body, message.as_bytes());
    put_string(&mut body, b"en");
    let mut packet = Vec::with_capacity(body.len().saturating_add(4));
    put_string(&mut packet, &body);
    packet
}

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Resolves a request path against `base` (a normalized absolute directory).
fn target(raw: &[u8], base: Option<&str>) -> Target {
    let bad = |problem: &str| Target {
        path: printable(raw, MAX_PATH),
        problem: Some(problem.to_owned()),
    };
    let Ok(path) = std::str::from_utf8(raw) else {
        return bad("the path is not valid UTF-8");
    };
    if path.contains('\0') {
        return bad("the path contains a NUL byte");
    }
    if path.len() > MAX_PATH {
        return bad("the path is longer than 4096 bytes");
    }
    let resolved = if path.starts_with('/') {
        normalize(path)
    } else if let Some(base) = base {
        normalize(&format!("{base}/{path}"))
    } else {
        path.to_owned()
    };
    if resolved.len() > MAX_PATH {
        return bad("the resolved path is longer than 4096 bytes");
    }
    ok_target(resolved)
}

fn ok_target(path: String) -> Target {
    Target {
        path,
        problem: None,
    }
}

/// Lexical normalization of an absolute path: no `.`, `..` or empty parts.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            part => parts.push(part),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The directory holding a normalized absolute path.
fn parent(path: &str) -> &str {
    match path.rfind('/') {
        Some(0) | None => "/",
        Some(at) => path.get(..at).unwrap_or("/"),
    }
}

/// Whether a REALPATH argument names the server's current directory without
/// going through anything the server could resolve differently (no `..`).
fn is_dot(raw: &[u8]) -> bool {
    !raw.starts_with(b"/")
        && raw
            .split(|&b| b == b'/')
            .all(|part| part.is_empty() || part == b".")
}

/// Bytes as text for a record, cut to `limit` bytes.
fn printable(raw: &[u8], limit: usize) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    text.get(..end).unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Rules like the policy's `[sftp]` table: read-only and `/dir/**` patterns.
    struct Rules {
        read_only: bool,
        paths: Vec<&'static str>,
    }

    impl FileRules for Rules {
        fn check(&self, access: Access, path: &str) -> Result<(), String> {
            if self.read_only && access == Access::Write {
                return Err("t/sftp: read-only".to_owned());
            }
            if self.paths.is_empty() {
                return Ok(());
            }
            if !path.starts_with('/') {
                return Err(format!("t/sftp: relative path `{path}`"));
            }
            let inside = self.paths.iter().any(|p| match p.strip_suffix("/**") {
                Some(dir) => path == dir || path.starts_with(&format!("{dir}/")),
                None => path == *p,
            });
            if inside {
                Ok(())
            } else {
                Err(format!("t/sftp: `{path}` is outside the allowed paths"))
            }
        }
    }

    fn inspector(read_only: bool, paths: &[&'static str]) -> Inspector {
        Inspector::new(Box::new(Rules {
            read_only,
            paths: paths.to_vec(),
        }))
    }

    const R: u32 = 0x01;
    const W: u32 = 0x02;
    const CREAT: u32 = 0x08;
    const TRUNC: u32 = 0x10;

    /// Packet body builder.
    #[derive(Default)]
    struct B(Vec<u8>);

    impl B {
        fn id(id: u32) -> Self {
            Self::default().u32(id)
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn s(mut self, v: impl AsRef<[u8]>) -> Self {
            put_string(&mut self.0, v.as_ref());
            self
        }
        fn raw(mut self, v: &[u8]) -> Self {
            self.0.extend_from_slice(v);
            self
        }
        fn pkt(self, ty: u8) -> Vec<u8> {
            let mut body = vec![ty];
            body.extend_from_slice(&self.0);
            let mut out = Vec::new();
            put_string(&mut out, &body);
            out
        }
    }

    fn init(version: u32) -> Vec<u8> {
        B::default().u32(version).pkt(fxp::INIT)
    }
    fn open(id: u32, path: impl AsRef<[u8]>, pflags: u32) -> Vec<u8> {
        B::id(id).s(path).u32(pflags).u32(0).pkt(fxp::OPEN)
    }
    fn path_req(ty: u8, id: u32, path: impl AsRef<[u8]>) -> Vec<u8> {
        B::id(id).s(path).pkt(ty)
    }
    fn two_paths(ty: u8, id: u32, a: &str, b: &str) -> Vec<u8> {
        B::id(id).s(a).s(b).pkt(ty)
    }
    fn handle_req(ty: u8, id: u32, h: &[u8]) -> Vec<u8> {
        B::id(id).s(h).pkt(ty)
    }
    fn read(id: u32, h: &[u8], offset: u64, len: u32) -> Vec<u8> {
        B::id(id).s(h).u64(offset).u32(len).pkt(fxp::READ)
    }
    fn write(id: u32, h: &[u8], offset: u64, data: &[u8]) -> Vec<u8> {
        B::id(id).s(h).u64(offset).s(data).pkt(fxp::WRITE)
    }
    fn ext(id: u32, name: &str, rest: B) -> Vec<u8> {
        B::id(id).s(name).raw(&rest.0).pkt(fxp::EXTENDED)
    }
    fn version(v: u32) -> Vec<u8> {
        B::default().u32(v).pkt(fxp::VERSION)
    }
    fn handle(id: u32, h: &[u8]) -> Vec<u8> {
        B::id(id).s(h).pkt(fxp::HANDLE)
    }
    fn data(id: u32, d: &[u8]) -> Vec<u8> {
        B::id(id).s(d).pkt(fxp::DATA)
    }
    fn status(id: u32, code: u32) -> Vec<u8> {
        B::id(id).u32(code).s("").s("").pkt(fxp::STATUS)
    }
    fn name(id: u32, n: &str) -> Vec<u8> {
        B::id(id).u32(1).s(n).s(n).u32(0).pkt(fxp::NAME)
    }

    fn client(i: &mut Inspector, bytes: &[u8]) -> Flow {
        i.from_client(bytes).unwrap_or_else(|e| panic!("{e}"))
    }
    fn server(i: &mut Inspector, bytes: &[u8]) {
        let out = i.from_server(bytes).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out, bytes, "server bytes pass through unchanged");
    }

    /// Feeds an allowed request and asserts it went to the server unchanged.
    fn allowed(i: &mut Inspector, packet: &[u8]) {
        let flow = client(i, packet);
        assert_eq!(flow.to_server, packet);
        assert!(flow.to_client.is_empty());
    }

    /// Parses one STATUS packet: (id, code, message, lang).
    fn parse_status(bytes: &[u8]) -> (u32, u32, String, String) {
        let mut pkts = Vec::new();
        let mut buf = Vec::new();
        frames(Side::Server, &mut buf, bytes, |p| {
            pkts.push(p.to_vec());
            Ok(())
        })
        .unwrap();
        assert_eq!(pkts.len(), 1, "one packet");
        assert!(buf.is_empty());
        let p = &pkts[0];
        assert_eq!(p[4], fxp::STATUS);
        let mut r = Reader::new(Side::Server, fxp::STATUS, &p[5..]);
        let id = r.u32().unwrap();
        let code = r.u32().unwrap();
        let msg = String::from_utf8(r.string().unwrap().to_vec()).unwrap();
        let lang = String::from_utf8(r.string().unwrap().to_vec()).unwrap();
        assert!(r.rest.is_empty());
        (id, code, msg, lang)
    }

    /// Feeds a request that must be refused: nothing forwarded, a STATUS back.
    fn refused(i: &mut Inspector, packet: &[u8], id: u32, code: u32) -> String {
        let flow = client(i, packet);
        assert!(flow.to_server.is_empty(), "denied request was forwarded");
        let (got_id, got_code, msg, lang) = parse_status(&flow.to_client);
        assert_eq!((got_id, got_code, lang.as_str()), (id, code, "en"));
        msg
    }

    fn op(op: &str, path: &str, allowed: bool, reason: Option<&str>) -> FileEvent {
        FileEvent::Op {
            op: op.to_owned(),
            path: path.to_owned(),
            path2: None,
            allowed,
            reason: reason.map(str::to_owned),
        }
    }

    fn only_event(i: &mut Inspector) -> FileEvent {
        let mut events = i.take_events();
        assert_eq!(events.len(), 1, "{events:?}");
        events.remove(0)
    }

    fn sha(d: &[u8]) -> Option<String> {
        Some(hex::encode(Sha256::digest(d)))
    }

    #[test]
    fn read_only_denies_every_modification() {
        let mut i = inspector(true, &[]);
        let flow = client(&mut i, &init(3));
        assert_eq!(flow.to_server, init(3));
        server(&mut i, &version(3));

        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("open-write", open(1, "/tmp/a", W | CREAT | TRUNC)),
            ("open-write", open(2, "/tmp/a", R | 0x04)),
            ("open-write", open(3, "/tmp/a", R | 0x20)),
            ("open-write", open(4, "/tmp/a", 0x40)),
            ("remove", path_req(fxp::REMOVE, 5, "/tmp/a")),
            ("mkdir", B::id(6).s("/tmp/d").u32(0).pkt(fxp::MKDIR)),
            ("rmdir", path_req(fxp::RMDIR, 7, "/tmp/d")),
            ("setstat", B::id(8).s("/tmp/a").u32(0).pkt(fxp::SETSTAT)),
            ("rename", two_paths(fxp::RENAME, 9, "/tmp/a", "/tmp/b")),
            (
                "symlink",
                two_paths(fxp::SYMLINK, 10, "/etc/passwd", "/tmp/l"),
            ),
            (
                "posix-rename",
                ext(
                    11,
                    "posix-rename@openssh.com",
                    B::default().s("/tmp/a").s("/tmp/b"),
                ),
            ),
            (
                "hardlink",
                ext(
                    12,
                    "hardlink@openssh.com",
                    B::default().s("/tmp/a").s("/tmp/b"),
                ),
            ),
            (
                "lsetstat",
                ext(13, "lsetstat@openssh.com", B::default().s("/tmp/a").u32(0)),
            ),
        ];
        for (name, packet) in cases {
            let id = u32::from_be_bytes(packet[5..9].try_into().unwrap());
            let msg = refused(&mut i, &packet, id, fx::PERMISSION_DENIED);
            assert_eq!(msg, "denied by cordon: t/sftp: read-only", "{name}");
            match only_event(&mut i) {
                FileEvent::Op {
                    op,
                    allowed,
                    reason,
                    ..
                } => {
                    assert_eq!(op, name);
                    assert!(!allowed);
                    assert_eq!(reason.as_deref(), Some("t/sftp: read-only"));
                }
                other => panic!("{other:?}"),
            }
        }
        // Unknown extension and unknown packet type: OP_UNSUPPORTED.
        let msg = refused(
            &mut i,
            &ext(20, "check-file", B::default().s("/tmp/a")),
            20,
            fx::OP_UNSUPPORTED,
        );
        assert!(msg.contains("`check-file`"), "{msg}");
        assert_eq!(
            only_event(&mut i),
            op(
                "extended:check-file",
                "",
                false,
                Some("sftp extension `check-file` is not supported through cordon")
            )
        );
        let msg = refused(&mut i, &B::id(21).pkt(99), 21, fx::OP_UNSUPPORTED);
        assert!(msg.contains("type 99"), "{msg}");
        assert_eq!(i.take_events().len(), 1);

        // The session keeps working: reads, listings and stats go through.
        allowed(&mut i, &open(30, "/tmp/a", R));
        assert_eq!(only_event(&mut i), op("open-read", "/tmp/a", true, None));
        allowed(&mut i, &path_req(fxp::OPENDIR, 31, "/tmp"));
        allowed(&mut i, &path_req(fxp::STAT, 32, "/tmp/a"));
        allowed(&mut i, &path_req(fxp::LSTAT, 33, "/tmp/a"));
        allowed(&mut i, &path_req(fxp::READLINK, 34, "/tmp/a"));
        allowed(
            &mut i,
            &ext(35, "statvfs@openssh.com", B::default().s("/tmp")),
        );
        let ops: Vec<String> = i
            .take_events()
            .into_iter()
            .map(|e| match e {
                FileEvent::Op { op, allowed, .. } => {
                    assert!(allowed);
                    op
                }
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ops, ["opendir", "stat", "lstat", "readlink", "statvfs"]);
    }

    #[test]
    fn always_allowed_requests_need_no_rule() {
        let mut i = inspector(true, &["/var/log/**"]);
        allowed(&mut i, &path_req(fxp::REALPATH, 1, "/etc/../root"));
        allowed(&mut i, &path_req(fxp::REALPATH, 2, b"\xff"));
        allowed(&mut i, &ext(3, "limits@openssh.com", B::default()));
        allowed(
            &mut i,
            &ext(4, "expand-path@openssh.com", B::default().s("~/x")),
        );
        allowed(&mut i, &ext(5, "home-directory", B::default().s("root")));
        allowed(
            &mut i,
            &ext(
                6,
                "users-groups-by-id@openssh.com",
                B::default().s([0, 0, 0, 0]).s([]),
            ),
        );
        assert!(i.take_events().is_empty());
    }

    #[test]
    fn path_patterns_after_normalization() {
        let mut i = inspector(false, &["/var/log/**"]);
        allowed(&mut i, &open(1, "/var/log/syslog", R));
        allowed(&mut i, &open(2, "//var/./log//app/../syslog", R));
        assert_eq!(
            i.take_events(),
            [
                op("open-read", "/var/log/syslog", true, None),
                op("open-read", "/var/log/syslog", true, None)
            ]
        );
        let outside = "t/sftp: `/etc/passwd` is outside the allowed paths";
        for (id, path) in [
            (3, "/etc/passwd"),
            (4, "/var/log/../../etc/passwd"),
            (5, "/var/log/../../../../../etc/passwd"),
        ] {
            refused(&mut i, &open(id, path, R), id, fx::PERMISSION_DENIED);
            assert_eq!(
                only_event(&mut i),
                op("open-read", "/etc/passwd", false, Some(outside))
            );
        }
        // A rename out of the tree is checked on both paths.
        refused(
            &mut i,
            &two_paths(fxp::RENAME, 6, "/var/log/a", "/tmp/a"),
            6,
            fx::PERMISSION_DENIED,
        );
        assert_eq!(
            only_event(&mut i),
            FileEvent::Op {
                op: "rename".into(),
                path: "/var/log/a".into(),
                path2: Some("/tmp/a".into()),
                allowed: false,
                reason: Some("t/sftp: `/tmp/a` is outside the allowed paths".into()),
            }
        );
        // NUL bytes: the server would cut the path there.
        for (id, path) in [
            (7, &b"/etc/shadow\0/../../var/log/x"[..]),
            (8, &b"/var/log/x\0"[..]),
        ] {
            let msg = refused(&mut i, &open(id, path, R), id, fx::PERMISSION_DENIED);
            assert_eq!(msg, "denied by cordon: the path contains a NUL byte");
            i.take_events();
        }
        let msg = refused(&mut i, &open(9, b"/var/log/\xff", R), 9, 3);
        assert_eq!(msg, "denied by cordon: the path is not valid UTF-8");
        assert_eq!(
            only_event(&mut i),
            op(
                "open-read",
                "/var/log/\u{fffd}",
                false,
                Some("the path is not valid UTF-8")
            )
        );
        let long = format!("/var/log/{}", "a".repeat(MAX_PATH));
        let msg = refused(&mut i, &open(10, &long, R), 10, 3);
        assert!(msg.contains("longer than 4096"), "{msg}");
        i.take_events();
        // Symlink: a relative target resolves against the link's directory.
        allowed(
            &mut i,
            &two_paths(fxp::SYMLINK, 11, "syslog.1", "/var/log/latest"),
        );
        assert_eq!(
            i.take_events(),
            [FileEvent::Op {
                op: "symlink".into(),
                path: "/var/log/latest".into(),
                path2: Some("/var/log/syslog.1".into()),
                allowed: true,
                reason: None,
            }]
        );
        refused(
            &mut i,
            &two_paths(fxp::SYMLINK, 12, "../../etc/shadow", "/var/log/x"),
            12,
            3,
        );
        match only_event(&mut i) {
            FileEvent::Op { path2, allowed, .. } => {
                assert_eq!(path2.as_deref(), Some("/etc/shadow"));
                assert!(!allowed);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_realpath_of_dot() {
        let mut i = inspector(false, &["/var/log/**"]);
        // Home unknown: the relative path goes to the rules as it is.
        refused(&mut i, &open(1, "syslog", R), 1, 3);
        assert_eq!(
            only_event(&mut i),
            op(
                "open-read",
                "syslog",
                false,
                Some("t/sftp: relative path `syslog`")
            )
        );
        // REALPATH("sub/..") is not trusted as the home: a symlink could
        // make the server's answer differ from the lexical one.
        allowed(&mut i, &path_req(fxp::REALPATH, 2, "sub/.."));
        server(&mut i, &name(2, "/var/log"));
        refused(&mut i, &open(3, "syslog", R), 3, 3);
        i.take_events();
        // REALPATH(".") sets it.
        allowed(&mut i, &path_req(fxp::REALPATH, 4, "."));
        server(&mut i, &name(4, "/var/log/"));
        allowed(&mut i, &open(5, "syslog", R));
        allowed(&mut i, &open(6, "./app/../syslog", R));
        allowed(&mut i, &path_req(fxp::STAT, 7, ""));
        assert_eq!(
            i.take_events(),
            [
                op("open-read", "/var/log/syslog", true, None),
                op("open-read", "/var/log/syslog", true, None),
                op("stat", "/var/log", true, None)
            ]
        );
        refused(&mut i, &open(8, "../../etc/passwd", R), 8, 3);
        assert_eq!(
            only_event(&mut i),
            op(
                "open-read",
                "/etc/passwd",
                false,
                Some("t/sftp: `/etc/passwd` is outside the allowed paths")
            )
        );
        // A relative answer is not a home.
        allowed(&mut i, &path_req(fxp::REALPATH, 9, "./"));
        server(&mut i, &name(9, "relative"));
        allowed(&mut i, &open(10, "syslog", R));
    }

    #[test]
    fn download_bytes_and_sha256() {
        let mut i = inspector(true, &[]);
        allowed(&mut i, &open(1, "/srv/f", R));
        server(&mut i, &handle(1, b"h1"));
        allowed(&mut i, &read(2, b"h1", 0, 1));
        allowed(&mut i, &read(3, b"h1", 1, 100));
        allowed(&mut i, &read(4, b"h1", 3, 100));
        server(&mut i, &data(2, b"a"));
        server(&mut i, &data(3, b"bc"));
        server(&mut i, &status(4, fx::EOF));
        allowed(&mut i, &handle_req(fxp::FSTAT, 5, b"h1"));
        allowed(&mut i, &handle_req(fxp::CLOSE, 6, b"h1"));
        assert_eq!(
            i.take_events(),
            [op("open-read", "/srv/f", true, None)],
            "no transfer before the close is answered"
        );
        server(&mut i, &status(6, fx::OK));
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(
            i.take_events(),
            [FileEvent::Transfer {
                path: "/srv/f".into(),
                direction: Direction::Download,
                bytes: 3,
                sha256: Some(abc.into()),
                complete: true,
            }]
        );
        // The handle is gone after CLOSE.
        refused(&mut i, &read(7, b"h1", 3, 1), 7, 3);
        assert_eq!(
            only_event(&mut i),
            op("read", "", false, Some(UNKNOWN_HANDLE))
        );
        // Opened and closed without reading: no transfer.
        allowed(&mut i, &open(8, "/srv/g", R));
        server(&mut i, &handle(8, b"h2"));
        allowed(&mut i, &handle_req(fxp::CLOSE, 9, b"h2"));
        server(&mut i, &status(9, fx::OK));
        assert_eq!(i.take_events().len(), 1);
        // Directories: no transfer.
        allowed(&mut i, &path_req(fxp::OPENDIR, 10, "/srv"));
        server(&mut i, &handle(10, b"d"));
        allowed(&mut i, &handle_req(fxp::READDIR, 11, b"d"));
        server(&mut i, &name(11, "f"));
        allowed(&mut i, &handle_req(fxp::CLOSE, 12, b"d"));
        server(&mut i, &status(12, fx::OK));
        assert_eq!(i.take_events(), [op("opendir", "/srv", true, None)]);
        assert!(i.finish().is_empty());
    }

    #[test]
    fn upload_bytes_and_sha256() {
        let mut i = inspector(false, &["/srv/**"]);
        allowed(&mut i, &path_req(fxp::REALPATH, 1, "."));
        server(&mut i, &name(1, "/srv"));
        allowed(&mut i, &open(2, "up.txt", W | CREAT | TRUNC));
        server(&mut i, &handle(2, b"\0\0\0\x07"));
        allowed(&mut i, &write(3, b"\0\0\0\x07", 0, b"hello "));
        allowed(&mut i, &write(4, b"\0\0\0\x07", 6, b"world"));
        allowed(&mut i, &B::id(5).s(b"\0\0\0\x07").u32(0).pkt(fxp::FSETSTAT));
        server(&mut i, &status(3, fx::OK));
        server(&mut i, &status(4, fx::OK));
        server(&mut i, &status(5, fx::OK));
        allowed(&mut i, &handle_req(fxp::CLOSE, 6, b"\0\0\0\x07"));
        server(&mut i, &status(6, fx::OK));
        assert_eq!(
            i.take_events(),
            [
                op("open-write", "/srv/up.txt", true, None),
                op("fsetstat", "/srv/up.txt", true, None),
                FileEvent::Transfer {
                    path: "/srv/up.txt".into(),
                    direction: Direction::Upload,
                    bytes: 11,
                    sha256: sha(b"hello world"),
                    complete: true,
                }
            ]
        );
        // Opened for writing, nothing written: still a (0-byte) upload.
        allowed(&mut i, &open(7, "/srv/empty", W | CREAT));
        server(&mut i, &handle(7, b"e"));
        allowed(&mut i, &handle_req(fxp::CLOSE, 8, b"e"));
        server(&mut i, &status(8, fx::OK));
        assert_eq!(
            i.take_events()[1],
            FileEvent::Transfer {
                path: "/srv/empty".into(),
                direction: Direction::Upload,
                bytes: 0,
                sha256: sha(b""),
                complete: true,
            }
        );
        // A failed write makes the transfer incomplete.
        allowed(&mut i, &open(9, "/srv/full", W | CREAT));
        server(&mut i, &handle(9, b"x"));
        allowed(&mut i, &write(10, b"x", 0, b"data"));
        server(&mut i, &status(10, 4));
        allowed(&mut i, &handle_req(fxp::CLOSE, 11, b"x"));
        server(&mut i, &status(11, fx::OK));
        match &i.take_events()[1] {
            FileEvent::Transfer {
                complete, bytes, ..
            } => assert_eq!((*complete, *bytes), (false, 4)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn writes_on_a_read_handle_are_checked() {
        let mut i = inspector(true, &[]);
        allowed(&mut i, &open(1, "/srv/f", R));
        server(&mut i, &handle(1, b"h"));
        i.take_events();
        refused(&mut i, &write(2, b"h", 0, b"x"), 2, 3);
        assert_eq!(
            only_event(&mut i),
            op("write", "/srv/f", false, Some("t/sftp: read-only"))
        );
        refused(&mut i, &B::id(3).s(b"h").u32(0).pkt(fxp::FSETSTAT), 3, 3);
        assert_eq!(
            only_event(&mut i),
            op("fsetstat", "/srv/f", false, Some("t/sftp: read-only"))
        );
        // copy-data into it is a write too.
        let copy = ext(
            4,
            "copy-data",
            B::default().s(b"h").u64(0).u64(0).s(b"h").u64(10),
        );
        refused(&mut i, &copy, 4, 3);
        assert_eq!(i.take_events().len(), 1);
        allowed(
            &mut i,
            &ext(5, "fstatvfs@openssh.com", B::default().s(b"h")),
        );
        allowed(&mut i, &ext(6, "fsync@openssh.com", B::default().s(b"h")));
        refused(
            &mut i,
            &ext(7, "fsync@openssh.com", B::default().s(b"nope")),
            7,
            3,
        );
        assert_eq!(
            only_event(&mut i),
            op("fsync", "", false, Some(UNKNOWN_HANDLE))
        );
        // Writable rules: the first write on a read handle is checked once.
        let mut i = inspector(false, &[]);
        allowed(&mut i, &open(1, "/srv/f", R));
        server(&mut i, &handle(1, b"h"));
        allowed(&mut i, &write(2, b"h", 0, b"x"));
        allowed(&mut i, &write(3, b"h", 1, b"y"));
        assert_eq!(
            i.take_events(),
            [
                op("open-read", "/srv/f", true, None),
                op("write", "/srv/f", true, None)
            ]
        );
    }

    #[test]
    fn out_of_order_reads_have_no_hash() {
        let mut i = inspector(true, &[]);
        allowed(&mut i, &open(1, "/srv/f", R));
        server(&mut i, &handle(1, b"h"));
        allowed(&mut i, &read(2, b"h", 4, 4));
        allowed(&mut i, &read(3, b"h", 0, 4));
        server(&mut i, &data(2, b"5678"));
        server(&mut i, &data(3, b"1234"));
        allowed(&mut i, &handle_req(fxp::CLOSE, 4, b"h"));
        server(&mut i, &status(4, fx::OK));
        assert_eq!(
            i.take_events()[1],
            FileEvent::Transfer {
                path: "/srv/f".into(),
                direction: Direction::Download,
                bytes: 8,
                sha256: None,
                complete: true,
            }
        );
        // Uploads too: a write that does not start at 0 (a resumed upload).
        allowed(&mut i, &open(5, "/srv/f", R));
        server(&mut i, &handle(5, b"h"));
        allowed(&mut i, &read(6, b"h", 0, 4));
        server(&mut i, &data(6, b"1234"));
        allowed(&mut i, &read(7, b"h", 0, 4));
        server(&mut i, &data(7, b"1234"));
        let events = i.finish();
        assert_eq!(
            events,
            [
                op("open-read", "/srv/f", true, None),
                FileEvent::Transfer {
                    path: "/srv/f".into(),
                    direction: Direction::Download,
                    bytes: 8,
                    sha256: None,
                    complete: false,
                }
            ]
        );
    }

    #[test]
    fn finish_reports_open_transfers() {
        let mut i = inspector(false, &[]);
        allowed(&mut i, &open(1, "/a", W | CREAT));
        allowed(&mut i, &open(2, "/b", R));
        server(&mut i, &handle(1, b"1"));
        server(&mut i, &handle(2, b"2"));
        allowed(&mut i, &write(3, b"1", 0, b"abc"));
        allowed(&mut i, &read(4, b"2", 0, 10));
        server(&mut i, &data(4, b"xyz"));
        // CLOSE sent but never answered.
        allowed(&mut i, &handle_req(fxp::CLOSE, 5, b"2"));
        i.take_events();
        assert_eq!(
            i.finish(),
            [
                FileEvent::Transfer {
                    path: "/a".into(),
                    direction: Direction::Upload,
                    bytes: 3,
                    sha256: sha(b"abc"),
                    complete: false,
                },
                FileEvent::Transfer {
                    path: "/b".into(),
                    direction: Direction::Download,
                    bytes: 3,
                    sha256: sha(b"xyz"),
                    complete: false,
                }
            ]
        );
        assert!(i.finish().is_empty());
    }

    /// A whole session, as (from agent?, bytes).
    fn script() -> Vec<(bool, Vec<u8>)> {
        vec![
            (true, init(3)),
            (false, version(3)),
            (true, path_req(fxp::REALPATH, 1, ".")),
            (false, name(1, "/srv/home")),
            (true, open(2, "../f", R)),
            (true, open(3, "/etc/passwd", R)),
            (false, handle(2, b"h")),
            (true, read(4, b"h", 0, 5)),
            (true, read(5, b"h", 5, 5)),
            (false, data(4, b"hello")),
            (false, data(5, b"!")),
            (true, handle_req(fxp::CLOSE, 6, b"h")),
            (true, path_req(fxp::REMOVE, 7, "/srv/f")),
            (false, status(6, fx::OK)),
            (true, open(8, "up", W | CREAT | TRUNC)),
            (false, handle(8, b"u")),
            (true, write(9, b"u", 0, &[7u8; 3000])),
            (true, write(10, b"u", 3000, &[9u8; 100])),
            (false, status(9, fx::OK)),
            (false, status(10, fx::OK)),
            (true, handle_req(fxp::CLOSE, 11, b"u")),
            (false, status(11, fx::OK)),
            (true, ext(12, "nope@example.com", B::default())),
        ]
    }

    #[derive(Debug, PartialEq, Eq, Default)]
    struct Outcome {
        to_server: Vec<u8>,
        to_client: Vec<u8>,
        passed: Vec<u8>,
        events: Vec<FileEvent>,
    }

    fn run(chunk: usize, glue: bool) -> Outcome {
        let mut i = inspector(false, &["/srv/**"]);
        let mut out = Outcome::default();
        let mut steps: Vec<(bool, Vec<u8>)> = Vec::new();
        for (agent, bytes) in script() {
            // With `glue`, consecutive packets in one direction arrive together.
            match steps.last_mut() {
                Some((a, b)) if glue && *a == agent => b.extend_from_slice(&bytes),
                _ => steps.push((agent, bytes)),
            }
        }
        for (agent, bytes) in steps {
            for piece in bytes.chunks(chunk) {
                if agent {
                    let flow = client(&mut i, piece);
                    out.to_server.extend(flow.to_server);
                    out.to_client.extend(flow.to_client);
                } else {
                    out.passed
                        .extend(i.from_server(piece).unwrap_or_else(|e| panic!("{e}")));
                }
                out.events.extend(i.take_events());
            }
        }
        out.events.extend(i.finish());
        out
    }

    #[test]
    fn split_packets_give_identical_results() {
        let whole = run(usize::MAX, false);
        let sent: Vec<u8> = script()
            .into_iter()
            .filter(|(agent, _)| !agent)
            .flat_map(|(_, b)| b)
            .collect();
        assert_eq!(whole.passed, sent);
        assert_eq!(
            whole.events,
            [
                op("open-read", "/srv/f", true, None),
                op(
                    "open-read",
                    "/etc/passwd",
                    false,
                    Some("t/sftp: `/etc/passwd` is outside the allowed paths")
                ),
                op("remove", "/srv/f", true, None),
                FileEvent::Transfer {
                    path: "/srv/f".into(),
                    direction: Direction::Download,
                    bytes: 6,
                    sha256: sha(b"hello!"),
                    complete: true,
                },
                op("open-write", "/srv/home/up", true, None),
                FileEvent::Transfer {
                    path: "/srv/home/up".into(),
                    direction: Direction::Upload,
                    bytes: 3100,
                    sha256: sha(&[[7u8; 3000].as_slice(), &[9u8; 100]].concat()),
                    complete: true,
                },
                op(
                    "extended:nope@example.com",
                    "",
                    false,
                    Some("sftp extension `nope@example.com` is not supported through cordon")
                ),
            ]
        );
        let denied = [
            status_packet(
                3,
                3,
                "denied by cordon: t/sftp: `/etc/passwd` is outside the allowed paths",
            ),
            status_packet(
                12,
                8,
                "denied by cordon: sftp extension `nope@example.com` is not supported through cordon",
            ),
        ]
        .concat();
        assert_eq!(whole.to_client, denied);
        for chunk in [1, 2, 3, 5, 7, 64, 1000] {
            assert_eq!(run(chunk, false), whole, "chunks of {chunk}");
            assert_eq!(run(chunk, true), whole, "glued, chunks of {chunk}");
        }
        assert_eq!(run(usize::MAX, true), whole);
    }

    #[test]
    fn malformed_packets_are_errors() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                vec![0, 0, 0, 1, fxp::OPEN],
                "sftp packet from the agent declares a length of 1 bytes (the minimum is 5)",
            ),
            (
                vec![0, 0, 0, 0],
                "sftp packet from the agent declares a length of 0 bytes (the minimum is 5)",
            ),
            (
                B::id(1).u32(1000).raw(b"/etc").pkt(fxp::OPEN),
                "malformed SSH_FXP_OPEN from the agent: a string's length runs past the end of the packet",
            ),
            (
                B::id(1).u32(u32::MAX).pkt(fxp::STAT),
                "malformed SSH_FXP_STAT from the agent: a string's length runs past the end of the packet",
            ),
            (
                B::id(1).s("/a").pkt(fxp::OPEN),
                "malformed SSH_FXP_OPEN from the agent: the packet ends inside a uint32 field",
            ),
            (
                B::id(1).s("h").u32(0).pkt(fxp::READ),
                "malformed SSH_FXP_READ from the agent: the packet ends inside a uint64 field",
            ),
            (
                B::id(1).raw(&[0, 0]).pkt(fxp::REMOVE),
                "malformed SSH_FXP_REMOVE from the agent: the packet ends inside a string length",
            ),
            (
                B::id(1).u32(5).raw(b"x").pkt(fxp::EXTENDED),
                "malformed SSH_FXP_EXTENDED from the agent: a string's length runs past the end of the packet",
            ),
            (
                init(2),
                "the agent asked for sftp version 2; only version 3 is supported",
            ),
        ];
        for (bytes, want) in cases {
            let mut i = inspector(false, &[]);
            let Err(err) = i.from_client(&bytes) else {
                panic!("no error for {want}");
            };
            assert_eq!(err.to_string(), want);
            // The inspector stays failed.
            assert_eq!(i.from_client(&init(3)).map(|_| ()).unwrap_err(), err);
            assert_eq!(i.from_server(&version(3)).map(|_| ()).unwrap_err(), err);
        }
        // Server side: a DATA reply to a READ with a bad length.
        let mut i = inspector(false, &[]);
        allowed(&mut i, &open(1, "/f", R));
        server(&mut i, &handle(1, b"h"));
        allowed(&mut i, &read(2, b"h", 0, 10));
        let err = i
            .from_server(&B::id(2).u32(11).raw(b"short").pkt(fxp::DATA))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "malformed SSH_FXP_DATA from the server: a string's length runs past the end of the packet"
        );
        let mut i = inspector(false, &[]);
        let err = i.from_server(&version(6)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the server answered with sftp version 6; only version 3 is supported"
        );
        let mut i = inspector(false, &[]);
        allowed(&mut i, &open(1, "/f", R));
        let err = i.from_server(&handle(1, &[0u8; 257])).unwrap_err();
        assert_eq!(
            err,
            SftpError::HandleTooLong {
                len: 257,
                limit: 256
            }
        );
    }

    #[test]
    fn oversized_lengths_are_errors() {
        let mut i = inspector(false, &[]);
        let len = u32::try_from(MAX_PACKET + 1).unwrap();
        // Detected from the length field alone, before any body arrives.
        let err = i.from_client(&len.to_be_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "sftp packet from the agent declares a length of 263169 bytes (the limit is 263168)"
        );
        let mut i = inspector(false, &[]);
        let err = i.from_server(&u32::MAX.to_be_bytes()).unwrap_err();
        assert_eq!(
            err,
            SftpError::TooLong {
                side: Side::Server,
                len: u32::MAX,
                limit: MAX_PACKET
            }
        );
        // Exactly at the limit is fine.
        let mut i = inspector(false, &[]);
        allowed(&mut i, &open(1, "/f", W));
        server(&mut i, &handle(1, b"h"));
        let big = vec![1u8; MAX_PACKET - 1 - 4 - 4 - 1 - 8 - 4];
        let packet = write(2, b"h", 0, &big);
        assert_eq!(packet.len(), MAX_PACKET + 4);
        allowed(&mut i, &packet);
    }

    #[test]
    fn versions_ids_and_limits() {
        // A newer agent is offered version 3 only.
        let mut i = inspector(false, &[]);
        let flow = client(&mut i, &B::default().u32(6).s("ext").s("1").pkt(fxp::INIT));
        assert_eq!(
            flow.to_server,
            B::default().u32(3).s("ext").s("1").pkt(fxp::INIT)
        );
        assert_eq!(i.from_client(&init(3)).unwrap_err(), SftpError::SecondInit);

        // An id reused while outstanding ends the stream; after the reply it is fine.
        let mut i = inspector(false, &[]);
        allowed(&mut i, &path_req(fxp::STAT, 1, "/a"));
        server(&mut i, &B::id(1).u32(0).pkt(fxp::ATTRS));
        allowed(&mut i, &path_req(fxp::STAT, 1, "/a"));
        assert_eq!(
            i.from_client(&path_req(fxp::STAT, 1, "/b")).unwrap_err(),
            SftpError::DuplicateId { id: 1 }
        );

        // Outstanding requests are capped.
        let mut i = inspector(false, &[]);
        let many: Vec<u8> = (0..u32::try_from(MAX_OUTSTANDING).unwrap())
            .flat_map(|id| path_req(fxp::STAT, id, "/a"))
            .collect();
        assert_eq!(client(&mut i, &many).to_server, many);
        assert_eq!(
            i.from_client(&path_req(fxp::STAT, 99_999, "/a"))
                .unwrap_err()
                .to_string(),
            "the agent has more than 4096 sftp requests outstanding"
        );

        // Open handles are capped.
        let mut i = inspector(false, &[]);
        for id in 0..u32::try_from(MAX_HANDLES).unwrap() {
            allowed(&mut i, &open(id, "/a", R));
            server(&mut i, &handle(id, &id.to_be_bytes()));
        }
        assert_eq!(
            i.from_client(&open(99_999, "/a", R)).unwrap_err(),
            SftpError::TooManyHandles { limit: MAX_HANDLES }
        );

        // A failed OPEN issues no handle.
        let mut i = inspector(false, &[]);
        allowed(&mut i, &open(1, "/missing", R));
        server(&mut i, &status(1, 2));
        refused(&mut i, &read(2, &[0, 0, 0, 0], 0, 1), 2, 3);

        // Replies nobody asked for are passed on and ignored.
        let mut i = inspector(false, &[]);
        server(&mut i, &handle(5, b"h"));
        server(&mut i, &data(6, b"x"));
        server(&mut i, &B::default().raw(b"????").pkt(77));
        refused(&mut i, &read(1, b"h", 0, 1), 1, 3);
    }

    #[test]
    fn events_serialize_for_the_recording() {
        let event = FileEvent::Transfer {
            path: "/f".into(),
            direction: Direction::Download,
            bytes: 1,
            sha256: None,
            complete: true,
        };
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(
            json,
            r#"{"Transfer":{"path":"/f","direction":"download","bytes":1,"sha256":null,"complete":true}}"#
        );
        let back: FileEvent = serde_json::from_str(&json).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn path_helpers() {
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize("/.."), "/");
        assert_eq!(normalize("/a/b/../../../c/"), "/c");
        assert_eq!(parent("/a/b"), "/a");
        assert_eq!(parent("/a"), "/");
        assert_eq!(parent("/"), "/");
        assert!(is_dot(b"."));
        assert!(is_dot(b""));
        assert!(is_dot(b"./."));
        assert!(!is_dot(b"/"));
        assert!(!is_dot(b".."));
        assert!(!is_dot(b"a/.."));
        assert_eq!(printable("ééé".as_bytes(), 3), "é");
    }
}
