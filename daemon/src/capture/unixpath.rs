//! Whether an agent could change which socket an allowed unix path names.
//!
//! The unix allow list is by path, and the kernel follows symlinks when it
//! connects: an agent that can replace any component of an allowed path (a
//! directory it may write, or an entry it owns in a sticky directory) can
//! point the path at another socket (the session bus, a container runtime)
//! and connect there under the allowed name. Such a path is refused for that
//! agent.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Component, Path, PathBuf};

/// Who the agent runs as.
#[derive(Debug, Clone)]
pub struct Writer {
    pub uid: u32,
    pub groups: Vec<u32>,
}

impl Writer {
    fn may_write(&self, meta: &std::fs::Metadata) -> bool {
        let mode = meta.mode();
        mode & 0o002 != 0
            || (self.uid != 0 && meta.uid() == self.uid)
            || (mode & 0o020 != 0 && self.groups.contains(&meta.gid()))
    }

    /// The uid and groups of process `pid`, from /proc/PID/status.
    pub fn of_process(pid: u32) -> std::io::Result<Writer> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let field = |name: &str| -> Vec<u32> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| {
                    v.split_whitespace()
                        .filter_map(|n| n.parse().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        let uids = field("Uid:");
        let mut groups = field("Gid:");
        groups.extend(field("Groups:"));
        let uid = uids
            .first()
            .copied()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "no Uid line"))?;
        Ok(Writer { uid, groups })
    }
}

/// Why `writer` could make `path` name another socket, if it could. Both
/// the path as written and the path its symlinks lead to are checked.
pub fn replaceable(path: &Path, writer: &Writer) -> Option<String> {
    if let Some(why) = walk(path, writer) {
        return Some(why);
    }
    let real = real_path(path)?;
    if real != path {
        return walk(&real, writer).map(|why| format!("{why} (where {} leads)", path.display()));
    }
    None
}

/// `path` with symlinks resolved; a missing last component is kept as is.
fn real_path(path: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(path).ok().or_else(|| {
        let parent = std::fs::canonicalize(path.parent()?).ok()?;
        Some(parent.join(path.file_name()?))
    })
}

fn walk(path: &Path, writer: &Writer) -> Option<String> {
    let mut dir = PathBuf::from("/");
    for component in path.components() {
        let Component::Normal(name) = component else {
            continue;
        };
        let entry = dir.join(name);
        if let Ok(meta) = std::fs::metadata(&dir) {
            if writer.may_write(&meta) {
                let sticky = meta.mode() & 0o1000 != 0;
                // In a sticky directory only an entry's owner (or the
                // directory's) may remove or rename it; anyone may create one.
                let protected = sticky
                    && (writer.uid == 0 || meta.uid() != writer.uid)
                    && std::fs::symlink_metadata(&entry)
                        .is_ok_and(|e| writer.uid == 0 || e.uid() != writer.uid);
                if !protected {
                    let who = if meta.mode() & 0o002 != 0 {
                        "every user".to_owned()
                    } else {
                        format!("uid {}", writer.uid)
                    };
                    return Some(format!(
                        "{} is writable by {who}, who could put another socket, or a link to one, at {}",
                        dir.display(),
                        entry.display()
                    ));
                }
            }
        }
        dir = entry;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn nobody() -> Writer {
        Writer {
            uid: 65534,
            groups: vec![65534],
        }
    }

    #[test]
    fn writable_components_are_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let sock = dir.path().join("s.sock");
        std::fs::write(&sock, b"").unwrap();
        // /tmp is sticky and the tempdir is not nobody's: safe for nobody.
        if std::fs::metadata(dir.path()).unwrap().uid() != 65534 {
            assert_eq!(replaceable(&sock, &nobody()), None);
        }
        // World-writable, not sticky: anyone may swap the socket.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let why = replaceable(&sock, &nobody()).unwrap();
        assert!(why.contains("writable by every user"), "{why}");
        // Sticky: the socket is someone else's, so it stays; a missing one
        // could be created.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        if std::fs::metadata(&sock).unwrap().uid() != 65534 {
            assert_eq!(replaceable(&sock, &nobody()), None);
        }
        assert!(replaceable(&dir.path().join("missing.sock"), &nobody()).is_some());
        // Group-writable for a group the agent is in.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o775)).unwrap();
        let gid = std::fs::metadata(dir.path()).unwrap().gid();
        let member = Writer {
            uid: 65534,
            groups: vec![gid],
        };
        assert!(replaceable(&sock, &member).is_some());
        assert_eq!(
            replaceable(
                &sock,
                &Writer {
                    uid: 65534,
                    groups: vec![]
                }
            ),
            None
        );
    }
}
