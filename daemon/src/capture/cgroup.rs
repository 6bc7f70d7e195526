//! cgroup v2 plumbing for capture: find the cgroup2 mount, create and
//! identify agent cgroups, move processes into them.

use std::{
    io,
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup2 filesystem is mounted (looked in /proc/self/mountinfo)")]
    NoCgroup2,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not inside the cgroup2 mount {mount}")]
    Outside { path: PathBuf, mount: PathBuf },
    #[error(
        "{path} is {why}: a process of that user inside the agent could create a cgroup \
         there and move itself out of the agent's (and out of capture); use a cgroup whose \
         ancestors only root can change"
    )]
    Escapable { path: PathBuf, why: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The cgroup2 mount point, from /proc/self/mountinfo (never assumed: hybrid
/// hosts mount it at /sys/fs/cgroup/unified).
pub fn cgroup2_mount() -> Result<PathBuf, CgroupError> {
    let info = Path::new("/proc/self/mountinfo");
    let text = std::fs::read_to_string(info).map_err(io_err(info))?;
    parse_mountinfo(&text).ok_or(CgroupError::NoCgroup2)
}

fn parse_mountinfo(text: &str) -> Option<PathBuf> {
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        if fstype != "cgroup2" {
            return None;
        }
        let mount_point = left.split_whitespace().nth(4)?;
        Some(PathBuf::from(unescape(mount_point)))
    })
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Checks that `path` is a directory inside the cgroup2 mount.
pub fn check_inside(mount: &Path, path: &Path) -> Result<(), CgroupError> {
    if path.starts_with(mount) && path.join("cgroup.procs").exists() {
        Ok(())
    } else {
        Err(CgroupError::Outside {
            path: path.to_owned(),
            mount: mount.to_owned(),
        })
    }
}

/// Checks that no one but root can change the cgroups above `path` (up to
/// and including the mount): moving a process (or thread) between two
/// cgroups takes write access to `cgroup.procs` (`cgroup.threads`) of their
/// common ancestor, and a new cgroup
/// takes write access to its parent directory. Were an ancestor delegated to
/// a user (e.g. a systemd user session's subtree), that user's agent could
/// mkdir a sibling and leave the agent's cgroup.
pub fn check_ancestors_locked(mount: &Path, path: &Path) -> Result<(), CgroupError> {
    use std::os::unix::fs::MetadataExt as _;
    for dir in path.ancestors().skip(1) {
        if !dir.starts_with(mount) {
            break;
        }
        // cgroup.threads moves single threads (threaded subtrees) under the
        // same rule as cgroup.procs.
        for item in [
            dir.to_owned(),
            dir.join("cgroup.procs"),
            dir.join("cgroup.threads"),
        ] {
            let meta = match std::fs::metadata(&item) {
                Ok(meta) => meta,
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound && item.ends_with("cgroup.threads") =>
                {
                    continue
                }
                Err(e) => return Err(io_err(&item)(e)),
            };
            let why = if meta.uid() != 0 {
                Some(format!("owned by uid {}", meta.uid()))
            } else if meta.mode() & 0o002 != 0 {
                Some("writable by every user".to_owned())
            } else if meta.mode() & 0o020 != 0 && meta.gid() != 0 {
                Some(format!("writable by group {}", meta.gid()))
            } else {
                None
            };
            if let Some(why) = why {
                return Err(CgroupError::Escapable { path: item, why });
            }
        }
    }
    Ok(())
}

pub fn create(path: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(path).map_err(io_err(path))
}

/// The kernel's cgroup id: the inode number of the cgroup directory.
pub fn id(path: &Path) -> Result<u64, CgroupError> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(path)
        .map(|m| m.ino())
        .map_err(io_err(path))
}

/// Moves a whole process into `cgroup`.
pub fn add_process(cgroup: &Path, pid: u32) -> Result<(), CgroupError> {
    let procs = cgroup.join("cgroup.procs");
    std::fs::write(&procs, pid.to_string()).map_err(io_err(&procs))
}

/// The cgroup v2 directory a process is in.
pub fn of_process(mount: &Path, pid: u32) -> Result<PathBuf, CgroupError> {
    let file = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = std::fs::read_to_string(&file).map_err(io_err(&file))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or_else(|| CgroupError::Io {
            path: file.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, "no cgroup v2 entry"),
        })?;
    Ok(mount.join(rel.trim_start_matches('/')))
}

/// Removes a cgroup directory and its (empty) children, deepest first.
pub fn remove(path: &Path) -> Result<(), CgroupError> {
    if !path.exists() {
        return Ok(());
    }
    let entries = std::fs::read_dir(path).map_err(io_err(path))?;
    for entry in entries.filter_map(Result::ok) {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove(&entry.path())?;
        }
    }
    std::fs::remove_dir(path).map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_a_hybrid_layout() {
        let text = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            parse_mountinfo(text),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_mountinfo("1 2 0:1 / /x rw - ext4 /dev/sda rw\n"),
            None
        );
    }

    /// A tree of directories laid out like cgroups (as root: root-owned).
    #[test]
    fn ancestors_must_be_roots_alone() {
        use std::os::unix::fs::MetadataExt as _;
        use std::os::unix::fs::PermissionsExt as _;
        if std::fs::metadata("/proc/self")
            .map(|m| m.uid())
            .unwrap_or(u32::MAX)
            != 0
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "this test needs root (to chown its tree), and CI runs as root"
            );
            eprintln!("skipped: not root, so the test tree cannot be chowned");
            return;
        }
        let mount = tempfile::tempdir().unwrap();
        let agent = mount.path().join("cordon").join("bot");
        std::fs::create_dir_all(&agent).unwrap();
        for dir in [mount.path(), &mount.path().join("cordon"), &agent] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            for f in ["cgroup.procs", "cgroup.threads"] {
                std::fs::write(dir.join(f), b"").unwrap();
                std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644))
                    .unwrap();
            }
        }
        assert!(check_ancestors_locked(mount.path(), &agent).is_ok());
        // The agent's own cgroup may be anyone's: only ancestors count.
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(check_ancestors_locked(mount.path(), &agent).is_ok());
        let threads = mount.path().join("cordon").join("cgroup.threads");
        std::fs::set_permissions(&threads, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = check_ancestors_locked(mount.path(), &agent)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cgroup.threads") && err.contains("every user"),
            "{err}"
        );
        std::fs::set_permissions(&threads, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(mount.path(), std::fs::Permissions::from_mode(0o775)).unwrap();
        std::os::unix::fs::chown(mount.path(), None, Some(4242)).unwrap();
        let err = check_ancestors_locked(mount.path(), &agent)
            .unwrap_err()
            .to_string();
        assert!(err.contains("writable by group 4242"), "{err}");
    }
}
