//! Who launched which agent process: `cordon run` joins an agent's cgroup
//! over the control socket, optionally presenting its user's ID token; the
//! daemon remembers the joined pid (with its start time, so a reused pid
//! never matches) and who ran it. When a session is admitted, the attested
//! process's parent chain in /proc is walked up to the remembered pid: the
//! session acts on behalf of that human (`audit::Session::on_behalf_of`).
//!
//! Only processes inside the same agent match, and a chain broken by
//! reparenting (the launcher exited) yields nobody rather than a guess.

use std::{collections::HashMap, sync::Mutex};

/// Most parent links followed.
const MAX_DEPTH: usize = 64;

/// Launches remembered at once; the oldest are dropped beyond this.
const MAX_ENTRIES: usize = 65_536;

#[derive(Debug, Clone)]
struct Launch {
    start_time: u64,
    agent: String,
    who: String,
    human: bool,
}

/// A remembered launcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launcher {
    /// `oidc:<issuer>#<subject>` or `uid:N`.
    pub who: String,
    /// A verified OIDC login (not only a local uid).
    pub human: bool,
}

/// pid -> who launched it (see the module documentation).
#[derive(Debug, Default)]
pub struct Launchers {
    map: Mutex<HashMap<u32, Launch>>,
}

/// `(ppid, start time)` of `pid` from /proc/PID/stat. Read into a stack
/// buffer (one open, one read: this runs on every admitted connection).
fn stat(pid: u32) -> Option<(u32, u64)> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    // comm is at most 64 bytes and the 52 numeric fields fit easily.
    let mut buf = [0u8; 1024];
    let mut len = 0;
    while len < buf.len() {
        match file.read(buf.get_mut(len..)?) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(_) => return None,
        }
    }
    parse_stat(std::str::from_utf8(buf.get(..len)?).ok()?)
}

/// Fields 4 (ppid) and 22 (start time) of a /proc/PID/stat line; comm may
/// hold spaces and parentheses, so fields are counted after the last ')'.
fn parse_stat(text: &str) -> Option<(u32, u64)> {
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_ascii_whitespace();
    // Field 3 (state) is the first after ')'.
    let ppid = fields.nth(1)?.parse().ok()?;
    let start = fields.nth(22 - 5)?.parse().ok()?;
    Some((ppid, start))
}

impl Launchers {
    /// Remembers that `who` launched `pid` as `agent`.
    pub fn remember(&self, pid: u32, agent: &str, who: String, human: bool) {
        let Some((_, start_time)) = stat(pid) else {
            return;
        };
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        if map.len() >= MAX_ENTRIES {
            map.retain(|&p, l| stat(p).is_some_and(|(_, t)| t == l.start_time));
        }
        if map.len() < MAX_ENTRIES {
            map.insert(
                pid,
                Launch {
                    start_time,
                    agent: agent.to_owned(),
                    who,
                    human,
                },
            );
        }
    }

    /// Who launched `pid` (or its nearest remembered ancestor) as `agent`.
    pub fn find(&self, pid: u32, agent: &str) -> Option<Launcher> {
        if self.map.lock().ok()?.is_empty() {
            return None;
        }
        // The chain is read from /proc without holding the lock, one link at
        // a time: the nearest remembered ancestor ends the walk (a process
        // started by `cordon run` is usually that ancestor itself).
        let mut pid = pid;
        let mut depth = 0;
        while pid > 1 && depth < MAX_DEPTH {
            let (ppid, start) = stat(pid)?;
            let found = self.map.lock().ok()?.get(&pid).and_then(|l| {
                (l.start_time == start && l.agent == agent).then(|| Launcher {
                    who: l.who.clone(),
                    human: l.human,
                })
            });
            if found.is_some() {
                return found;
            }
            pid = ppid;
            depth += 1;
        }
        None
    }

    /// Forgets launched processes that have exited.
    pub fn sweep(&self) {
        if let Ok(mut map) = self.map.lock() {
            map.retain(|&p, l| stat(p).is_some_and(|(_, t)| t == l.start_time));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        let line = "4242 (a) b) (c) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_stat(line), Some((17, 987_654)));
        assert_eq!(parse_stat("4242 (x) S 1"), None);
        let me = std::process::id();
        let (ppid, start) = stat(me).unwrap();
        assert!(ppid > 0 && start > 0);
    }

    #[test]
    fn a_child_is_found_through_its_parent() {
        let launchers = Launchers::default();
        let me = std::process::id();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        assert_eq!(
            launchers.find(child.id(), "bot"),
            None,
            "nothing remembered"
        );
        launchers.remember(me, "bot", "oidc:i#alice".into(), true);
        let found = launchers.find(child.id(), "bot");
        assert_eq!(
            found,
            Some(Launcher {
                who: "oidc:i#alice".into(),
                human: true
            })
        );
        assert_eq!(launchers.find(child.id(), "other-agent"), None);
        // A remembered pid whose start time differs is another process.
        if let Ok(mut m) = launchers.map.lock() {
            if let Some(l) = m.get_mut(&me) {
                l.start_time += 1;
            }
        }
        assert_eq!(launchers.find(child.id(), "bot"), None);
        launchers.sweep();
        assert_eq!(launchers.len(), 0, "a mismatched entry is swept");
        launchers.remember(child.id(), "bot", "uid:1000".into(), false);
        let _ = child.kill();
        let _ = child.wait();
        launchers.sweep();
        assert_eq!(launchers.len(), 0, "an exited launcher is forgotten");
    }
}
