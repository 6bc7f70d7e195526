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

/// Why `writer` could make `path` name another socket, if it could. The
/// path is followed the way the kernel follows it, one component at a time:
/// every symlink on the way (a dangling one included) is read, and the
/// directories its target goes through are checked too.
pub fn replaceable(path: &Path, writer: &Writer) -> Option<String> {
    walk(path, writer, 0)
}

/// Symlinks followed before giving up (the kernel's limit is 40).
const MAX_LINKS: usize = 40;

fn walk(path: &Path, writer: &Writer, links: usize) -> Option<String> {
    if links > MAX_LINKS {
        return Some(format!(
            "{} goes through more than {MAX_LINKS} symlinks",
            path.display()
        ));
    }
    let components: Vec<Component<'_>> = path.components().collect();
    let mut dir = PathBuf::from("/");
    for (i, component) in components.iter().enumerate() {
        let name = match component {
            Component::Normal(name) => name,
            Component::ParentDir => {
                // `dir` has no symlinks in it: `..` is its parent.
                dir.pop();
                continue;
            }
            _ => continue,
        };
        let entry = dir.join(name);
        if let Some(why) = directory_problem(&dir, &entry, writer) {
            return Some(why);
        }
        let is_link = std::fs::symlink_metadata(&entry).is_ok_and(|m| m.file_type().is_symlink());
        if is_link {
            let Ok(target) = std::fs::read_link(&entry) else {
                return Some(format!(
                    "{} is a symlink that cannot be read",
                    entry.display()
                ));
            };
            let mut next = if target.is_absolute() {
                target
            } else {
                dir.join(target)
            };
            for rest in components.iter().skip(i + 1) {
                next.push(rest.as_os_str());
            }
            return walk(&next, writer, links + 1);
        }
        dir = entry;
    }
    None
}

/// Whether `writer` could replace `entry` in `dir`.
fn directory_problem(dir: &Path, entry: &Path, writer: &Writer) -> Option<String> {
    let meta = std::fs::metadata(dir).ok()?;
    if has_access_acl(dir) {
        return Some(format!(
            "{} has an access ACL, which Cordon does not evaluate (it may let the agent replace {})",
            dir.display(),
            entry.display()
        ));
    }
    if !writer.may_write(&meta) {
        return None;
    }
    // In a sticky directory only an entry's owner (or the directory's) may
    // remove or rename it; anyone may create one.
    let sticky = meta.mode() & 0o1000 != 0;
    let protected = sticky
        && (writer.uid == 0 || meta.uid() != writer.uid)
        && std::fs::symlink_metadata(entry).is_ok_and(|e| writer.uid == 0 || e.uid() != writer.uid);
    if protected {
        return None;
    }
    let who = if meta.mode() & 0o002 != 0 {
        "every user".to_owned()
    } else {
        format!("uid {}", writer.uid)
    };
    Some(format!(
        "{} is writable by {who}, who could put another socket, or a link to one, at {}",
        dir.display(),
        entry.display()
    ))
}

/// Whether `path` carries a POSIX access ACL (extra users or groups).
#[allow(unsafe_code)]
fn has_access_acl(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return true;
    };
    // SAFETY: both strings are NUL-terminated; a null buffer of size 0 only
    // asks for the value's size.
    let n = unsafe {
        libc::getxattr(
            c_path.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    n > 0
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
        // A dangling symlink: its target's directory is checked too.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let open = tempfile::tempdir().unwrap();
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(open.path().join("nothing-yet.sock"), &link).unwrap();
        let why = replaceable(&link, &nobody()).unwrap();
        assert!(why.contains(&open.path().display().to_string()), "{why}");
    }
}
