//! SSH policy: every channel request an agent makes through the SSH gateway — an exec command,
//! an interactive shell, a subsystem, a file operation over sftp or legacy scp, a line typed
//! in an allowed shell — becomes an [`SshDecision`] (allow, deny or approve) before the proxy
//! passes it upstream. Pure: no I/O after the file is loaded; never panics.
//!
//! Exec commands ([`SshPolicy::decide_exec`]): [`shell`] reads the text with POSIX-sh rules and
//! splits it into simple commands (parts): `uptime; rm -rf /` is two, `echo $(id)` is two
//! (`id`, then `echo $(id)`), `a | b && c` is three. Text it cannot decide (parameter
//! expansion, redirection to files, here-documents, compound commands, …) is denied with a
//! built-in rule naming why. Each part is judged on its own and the strictest verdict wins
//! (deny > approve > allow); the reason names the part.
//!
//! Judging one part:
//! 1. Built-in denials (`builtin/<what>`): a command name only known on the server
//!    (`$(…)`, glob, `~`), and commands that run shell code this check cannot see: shells
//!    (`sh`, `bash`, … also as `sh -c '…'` or `… | sh`), `eval`, `.`, `source`, `exec`,
//!    `command`, `builtin`, `busybox` — matched by base name, so `/bin/sh` too; builtins that
//!    store or load code for later (`trap`, `complete`, `compgen`, `bind`, `fc`, `enable`,
//!    `alias`); and builtins where bash evaluates a quoted array subscript as code
//!    (`builtin/shell-eval`: `let`, `read`, `unset`, `declare` and kin, `printf -v`, and
//!    `test`/`[` with a subscript holding `$` or a backquote).
//! 2. Legacy scp (`scp [-v -r -p -d] -t PATH` upload, `scp … -f PATH` download, which is what
//!    `scp -O` runs on the server) is judged by the `[sftp]` section, as a write or read of PATH.
//! 3. `[[rule]]`s in file order; the first whose `commands` has a matching pattern decides,
//!    otherwise `[policy] default`.
//!
//! Patterns are split into words like the command (quotes work: `"echo 'a b'"` is two words);
//! pattern word N matches argv word N. In a pattern word `*` matches any text within one path
//! segment (not `/`), `**` any text, `?` one character other than `/`; quoted they are literal.
//! A pattern word that is exactly `*` and last matches zero or more remaining words:
//! `journalctl --no-pager *` matches `journalctl --no-pager` and `journalctl --no-pager -u x`.
//! - allow rules match strictly: a word whose value is only known on the server (a
//!   substitution, an unquoted glob or `~`) matches nothing but that trailing `*`, and a word
//!   with a `..` path component matches only an identical literal, never a glob
//!   (`/var/log/../../etc/shadow` is not in `/var/log/**`).
//! - deny and approve rules match generously, so they cannot be side-stepped: such a word
//!   matches any pattern word (an unquoted one may stand for several words or none), a path is
//!   also compared lexically normalized (`//`, `/.`, `/tmp/..` are `/`), and the command name
//!   also by its base name (`/bin/rm` is `rm`).
//!
//! Known limits (say them to policy authors): a policy sees the command as written, not what
//! the server's shell startup files (aliases, functions, `.bashrc`) make of it. Commands that
//! run other commands (`env`, `xargs`, `sudo`, `nohup`, `timeout`, `nice`, `find -exec`,
//! `awk`, interpreters such as `python -c`, `ssh`) run whatever their arguments say, so allow
//! them with fixed arguments only, never with `*`. Deny rules are a blocklist over spellings
//! (`rm -rf /` is not `rm -fr /` or `rm -r -f /`); the safe shape is `default = "deny"` and
//! allow rules for what is needed. Paths are compared as written: a symlink under an allowed
//! path reaches its target. The server's login shell is assumed to be a POSIX shell (sh, bash,
//! dash, ksh, zsh); fish and csh read some syntax differently. Lines typed into an allowed
//! interactive shell are checked best effort only ([`SshPolicy::decide_typed_line`]): the
//! shell itself can run anything.
//!
//! File operations ([`SshPolicy::decide_file`], and legacy scp): `[sftp]` `action`, then
//! `read_only` (a write is denied by `<policy>/sftp-read-only`), then `paths`: glob patterns
//! over absolute paths (`*` within a segment, `**` across); a pattern ending in `/**` also
//! covers its directory itself for reading and listing. Paths are normalized lexically (`.`,
//! `..`, `//`) before matching; relative paths are denied when `paths` is set. Symlinks on
//! the server are not resolved: a symlink inside an allowed tree reaches its target. Last, a
//! write that would run code at the next login is a built-in denial (`builtin/startup-file`,
//! see [`startup_write`]): shell startup files, `.ssh`, system shell and sshd configuration,
//! and files that make a program run commands they name (`.gitconfig`, a repository's
//! `.git/config` and hooks, `.vimrc`, `.psqlrc`, `.forward`, …). The same check covers the
//! write targets of common file-writing commands ([`writes`]: `cp`, `mv`, `install`, `ln`,
//! `tee`, `dd of=`, `sed -i`, `tar`/`unzip`/`cpio` extraction, `curl -o/-O`, `wget`), so an
//! allowed `cp *` cannot plant `~/.bashrc` either.

mod shell;
#[cfg(test)]
mod tests;
mod writes;

use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

pub use super::Action;
use super::{PolicyError, Problem};

/// What the policy says about one SSH request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshDecision {
    pub action: Action,
    /// `<policy>/<rule>`, `<policy>/default`, `<policy>/shell`, `<policy>/sftp`,
    /// `<policy>/sftp-read-only`, `<policy>/sftp-paths`, or `builtin/<what>`.
    pub rule: String,
    /// A sentence for the agent's stderr and the audit: what was decided and why.
    pub reason: String,
}

/// What a file operation does to its path (sftp requests, legacy scp).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAccess {
    /// Open for reading, stat, readlink, realpath.
    Read,
    /// Open a directory and read its entries.
    List,
    /// Create, modify, remove, rename, mkdir, rmdir, setstat, symlink.
    Write,
}

/// A compiled SSH policy file. Immutable, Send + Sync; the `decide_*` methods never panic.
#[derive(Debug)]
pub struct SshPolicy {
    name: String,
    /// Free text from the file, for people and tools.
    #[allow(dead_code)]
    description: String,
    default: Action,
    rules: Vec<Rule>,
    /// `[shell] action`; absent = deny.
    shell: Option<Action>,
    /// `[sftp]`; absent = deny.
    sftp: Option<Sftp>,
}

#[derive(Debug)]
struct Rule {
    name: String,
    action: Action,
    commands: Vec<CommandPattern>,
}

/// One entry of a rule's `commands`.
#[derive(Debug)]
struct CommandPattern {
    words: Vec<Glob>,
    /// The last word was `*`: any number of further words.
    rest: bool,
}

#[derive(Debug)]
struct Sftp {
    action: Action,
    read_only: bool,
    /// Empty = any path.
    paths: Vec<PathPattern>,
}

#[derive(Debug)]
struct PathPattern {
    text: String,
    glob: Glob,
    /// For `D/**`: `D`, whose whole tree the pattern covers.
    tree: Option<Glob>,
}

/// Base names of commands that run shell code the policy cannot see (built-in denial).
const SHELL_CODE: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "pdksh", "ash", "yash", "posh", "fish", "csh",
    "tcsh", "rbash", "busybox", "eval", ".", "source", "exec", "command", "builtin", "jobs",
];

/// Base names of shell builtins that store shell code to run later or load
/// code: `trap 'rm -rf ~' EXIT`, `complete -C cmd`, `bind -x`, `fc -s`,
/// `enable -f lib.so`, `alias`. Denied like [`SHELL_CODE`].
const DEFERRED_CODE: &[&str] = &[
    "trap", "complete", "compgen", "bind", "fc", "enable", "alias", "hash",
];

/// Base names of bash builtins that evaluate a variable name they are given,
/// or an arithmetic expression: an array subscript there is arithmetic, and
/// bash runs a `$(…)` inside it even when it was quoted on the command line
/// (`unset 'a[$(rm -rf ~)]'`, `printf -v 'a[$(id)]' x`, `test -v 'a[$(id)]'`,
/// `declare -i n=…`). The policy sees a quoted word; bash sees a command.
/// These builtins set or test shell variables, which a remote command has no
/// use for, so they are denied whole; `test`/`[` only when an operand holds a
/// subscript with an expansion, and `printf` only with `-v`.
const NAME_EVAL: &[&str] = &[
    "let",
    "read",
    "unset",
    "declare",
    "typeset",
    "local",
    "export",
    "readonly",
    "getopts",
    "mapfile",
    "readarray",
    "wait",
];

/// Why bash would evaluate part of `cmd`'s arguments as code, if it would.
fn name_eval(base: &str, cmd: &shell::Command) -> Option<String> {
    let args = cmd.words.get(1..).unwrap_or_default();
    let shown = || shell::shorten(&cmd.display());
    if NAME_EVAL.contains(&base) {
        return Some(format!(
            "`{}` sets or reads shell variables, and bash evaluates array subscripts in them as \
             code: `{base}` is not allowed",
            shown()
        ));
    }
    match base {
        "printf" if args.iter().any(|w| w.text.starts_with("-v")) => Some(format!(
            "`{}`: bash evaluates the subscript of a `printf -v` variable as code",
            shown()
        )),
        "test" | "[" | "[[" => args
            .iter()
            .any(|w| w.text.contains('[') && (w.text.contains('$') || w.text.contains('`')))
            .then(|| {
                format!(
                    "`{}`: bash evaluates an array subscript in a `{base}` operand as code",
                    shown()
                )
            }),
        _ => None,
    }
}

/// Rule names the decisions use for other things.
const RESERVED: &[&str] = &["default", "shell", "sftp", "sftp-read-only", "sftp-paths"];

/// Longest path `decide_file` accepts, in bytes.
const MAX_PATH: usize = 4096;

impl SshPolicy {
    /// The policy's name (its file name without `.toml`).
    #[allow(dead_code)] // API for the gateway's logs; the decisions already carry it in `rule`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Number of `[[rule]]` entries.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// An exec request's command text (what sshd runs with `$SHELL -c`), including legacy
    /// `scp -t` / `scp -f`. Every part must pass; the strictest verdict wins.
    /// When `command` is one legacy scp upload (`scp … -t TARGET`), its TARGET: the stream
    /// that follows names the files, and the gateway checks each with [`Self::decide_file`].
    pub fn scp_upload_target(command: &str) -> Option<String> {
        let parts = shell::parse(command).ok()?;
        let [part] = parts.as_slice() else {
            return None;
        };
        match scp_server(part)? {
            Ok(scp) if scp.upload && !scp.path.dynamic => Some(scp.path.text),
            _ => None,
        }
    }

    pub fn decide_exec(&self, command: &str) -> SshDecision {
        let parts = match shell::parse(command) {
            Ok(parts) => parts,
            Err(r) => return builtin(r.what, r.reason).into(),
        };
        if parts.is_empty() {
            return builtin(
                "empty-command",
                "the command is empty (or only a comment); there is nothing to allow".into(),
            )
            .into();
        }
        let total = parts.len();
        let mut worst: Option<(usize, Verdict)> = None;
        // After a `cd` anywhere in the text, relative write targets are not known to start
        // at the home directory (parts are in reading order, but `$(…)` runs first).
        let cwd_home = !parts.iter().any(|p| {
            p.words
                .first()
                .is_some_and(|w| w.dynamic || writes::CWD_CHANGERS.contains(&basename(&w.text)))
        });
        for (i, part) in parts.iter().enumerate() {
            let v = self.judge(part, cwd_home);
            if worst
                .as_ref()
                .is_none_or(|(_, w)| severity(v.action) > severity(w.action))
            {
                worst = Some((i, v));
            }
        }
        let Some((index, mut v)) = worst else {
            // Unreachable: `parts` is not empty. Fail closed all the same.
            return builtin("internal", "no verdict".into()).into();
        };
        if total > 1 && v.action != Action::Allow {
            v.reason = format!("{} (part {} of {total})", v.reason, index + 1);
        }
        v.into()
    }

    /// An interactive shell request: `[shell] action`, deny when the section is absent.
    pub fn decide_shell(&self) -> SshDecision {
        let (action, what) = match self.shell {
            Some(Action::Allow) => (
                Action::Allow,
                "an interactive shell is allowed (typed lines are checked best effort)",
            ),
            Some(Action::Approve) => (Action::Approve, "an interactive shell needs approval"),
            Some(Action::Deny) => (Action::Deny, "an interactive shell is denied"),
            None => (
                Action::Deny,
                "an interactive shell is denied (the policy has no [shell] section)",
            ),
        };
        self.verdict(action, "shell", what.to_owned()).into()
    }

    /// A line typed into an allowed interactive shell (already reconstructed from the
    /// keystrokes): judged like an exec command. Best effort only — the shell itself can run
    /// anything, and a line may continue an earlier one. A blank or comment-only line is allowed;
    /// bash history expansion (`!!`, `!rm`, `!$`) is denied.
    pub fn decide_typed_line(&self, line: &str) -> SshDecision {
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if matches!(shell::parse(line), Ok(parts) if parts.is_empty()) {
            return SshDecision {
                action: Action::Allow,
                rule: "builtin/empty-line".into(),
                reason: "an empty line".into(),
            };
        }
        if shell::history_expansion(line) {
            return builtin(
                "history-expansion",
                "an interactive shell replaces `!…` with earlier commands from its history, which this check cannot see; quote the `!` or type the command out".into(),
            )
            .into();
        }
        self.decide_exec(line)
    }

    /// A subsystem request: `sftp` is decided by `[sftp] action` (deny when absent); any other
    /// subsystem is denied.
    pub fn decide_subsystem(&self, name: &str) -> SshDecision {
        if name != "sftp" {
            return builtin(
                "subsystem",
                format!(
                    "the subsystem `{}` is not supported; only sftp is",
                    shell::shorten(name)
                ),
            )
            .into();
        }
        let (action, what) = match &self.sftp {
            None => (
                Action::Deny,
                "sftp is denied (the policy has no [sftp] section)".to_owned(),
            ),
            Some(s) => (s.action, format!("sftp {}", verb(s.action))),
        };
        self.verdict(action, "sftp", what).into()
    }

    /// One file operation of an sftp session (or a path scp names): `[sftp] action`, then
    /// `read_only`, then `paths`. Returns Allow or Deny only: when `[sftp] action = "approve"`,
    /// the approval is for the whole session (the subsystem or exec request) and the files in it
    /// are then only checked against `read_only` and `paths`.
    pub fn decide_file(&self, op: FileAccess, path: &str) -> SshDecision {
        let mut v = self.judge_file(op, path, Scope::Path);
        if v.action == Action::Approve {
            v.action = Action::Allow;
        }
        v.into()
    }

    /// One simple command.
    /// `cwd_home`: relative paths start at the login's home directory (no `cd` before).
    fn judge(&self, cmd: &shell::Command, cwd_home: bool) -> Verdict {
        let Some(name) = cmd.words.first() else {
            return builtin("internal", "an empty command".into());
        };
        if name.dynamic {
            return builtin(
                "dynamic-command",
                format!(
                    "the command name `{}` is only known on the server (a substitution, glob or ~)",
                    shell::shorten(&name.text)
                ),
            );
        }
        let base = basename(&name.text);
        if SHELL_CODE.contains(&base) {
            return builtin(
                "shell-code",
                format!(
                    "`{}` runs shell code this check cannot see; send the commands themselves",
                    shell::shorten(base)
                ),
            );
        }
        if DEFERRED_CODE.contains(&base) {
            return builtin(
                "shell-code",
                format!(
                    "`{}` stores or loads shell code this check cannot see",
                    shell::shorten(base)
                ),
            );
        }
        if let Some(why) = name_eval(base, cmd) {
            return builtin("shell-eval", why);
        }
        if let Some(why) = writes::refused(base, cmd.words.get(1..).unwrap_or_default(), cwd_home) {
            return builtin("startup-file", why);
        }
        if name.text == "scp" {
            match scp_server(cmd) {
                None => {}
                Some(Ok(scp)) => return self.judge_scp(&scp),
                Some(Err(why)) => {
                    return builtin(
                        "scp",
                        format!("`{}` cannot be checked: {why}", cmd.display()),
                    )
                }
            }
        }
        let (name, action) = match self.rules.iter().find(|r| r.matches(cmd)) {
            Some(r) => (r.name.as_str(), r.action),
            None => ("default", self.default),
        };
        let what = match (action, name == "default") {
            (Action::Deny, true) => "is not allowed",
            (a, _) => verb(a),
        };
        self.verdict(action, name, format!("command `{}` {what}", cmd.display()))
    }

    fn judge_scp(&self, scp: &Scp) -> Verdict {
        let op = if scp.upload {
            FileAccess::Write
        } else {
            FileAccess::Read
        };
        let scope = if scp.recursive || (scp.upload && scp.dir) {
            Scope::Tree
        } else if scp.upload {
            Scope::Into
        } else {
            Scope::Path
        };
        if scp.path.dynamic {
            return builtin(
                "scp-path",
                format!(
                    "the scp path `{}` is only known on the server (wildcards, substitution or ~); name the file, or use sftp",
                    shell::shorten(&scp.path.text)
                ),
            );
        }
        self.judge_file(op, &scp.path.text, scope)
    }

    /// `[sftp]` for one path. Allowed paths get the section's action (allow or approve).
    fn judge_file(&self, op: FileAccess, path: &str, scope: Scope) -> Verdict {
        let what = match (op, scope) {
            (FileAccess::Read, Scope::Tree) => "reading the tree",
            (FileAccess::Read, _) => "reading",
            (FileAccess::List, _) => "listing",
            (FileAccess::Write, Scope::Tree) => "writing the tree",
            (FileAccess::Write, Scope::Into) => "writing",
            (FileAccess::Write, Scope::Path) => "writing",
        };
        let shown = shell::shorten(path);
        let Some(sftp) = &self.sftp else {
            return self.verdict(
                Action::Deny,
                "sftp",
                format!("{what} `{shown}` is denied: the policy has no [sftp] section"),
            );
        };
        if sftp.action == Action::Deny {
            return self.verdict(
                Action::Deny,
                "sftp",
                format!("file transfer is denied ({what} `{shown}`)"),
            );
        }
        if op == FileAccess::Write && sftp.read_only {
            return self.verdict(
                Action::Deny,
                "sftp-read-only",
                format!("file access is read-only; {what} `{shown}` is denied"),
            );
        }
        if path.contains('\0') || path.len() > MAX_PATH {
            return builtin(
                "bad-path",
                format!("the path `{shown}` has a NUL byte or is longer than {MAX_PATH} bytes"),
            );
        }
        if !sftp.paths.is_empty() {
            if !path.starts_with('/') {
                return self.verdict(
                    Action::Deny,
                    "sftp-paths",
                    format!(
                        "{what} the relative path `{shown}` is denied: allowed paths are absolute ({}); name the full path",
                        sftp.list()
                    ),
                );
            }
            let norm = normalize(path);
            let ok = sftp.paths.iter().any(|p| match (scope, op) {
                (Scope::Tree, _) => p.tree.is_some() && (p.glob.matches(&norm) || p.covers(&norm)),
                (Scope::Path, FileAccess::Write) => p.glob.matches(&norm),
                _ => p.glob.matches(&norm) || p.covers(&norm),
            });
            if !ok {
                let normalized = if norm == path {
                    String::new()
                } else {
                    format!(" (normalized `{}`)", shell::shorten(&norm))
                };
                return self.verdict(
                    Action::Deny,
                    "sftp-paths",
                    format!(
                        "{what} `{shown}`{normalized} is denied: it is outside the allowed paths ({})",
                        sftp.list()
                    ),
                );
            }
        }
        // Last, so the policy's own refusals keep their names.
        if op == FileAccess::Write {
            if let Some(why) = startup_write(path, scope) {
                return builtin("startup-file", format!("{what} `{shown}` is denied: {why}"));
            }
        }
        let verdict = match sftp.action {
            Action::Approve => "needs approval",
            _ => "is allowed",
        };
        self.verdict(sftp.action, "sftp", format!("{what} `{shown}` {verdict}"))
    }

    fn verdict(&self, action: Action, rule: &str, what: String) -> Verdict {
        Verdict {
            action,
            rule: format!("{}/{rule}", self.name),
            reason: format!("policy {} rule {rule}: {what}", self.name),
        }
    }
}

/// How much of the file system a path operation reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// The path itself.
    Path,
    /// scp upload without `-r`/`-d`: the path, or a new file inside it when it is a directory.
    Into,
    /// scp with `-r` (or upload with `-d`): the path and everything under it.
    Tree,
}

impl Sftp {
    fn list(&self) -> String {
        let all: Vec<&str> = self.paths.iter().map(|p| p.text.as_str()).collect();
        shell::shorten(&all.join(", "))
    }
}

impl PathPattern {
    /// `D/**` covers `D` itself and all below it.
    fn covers(&self, path: &str) -> bool {
        self.tree.as_ref().is_some_and(|t| t.matches(path))
    }
}

/// The verdict on one part.
#[derive(Debug)]
struct Verdict {
    action: Action,
    rule: String,
    reason: String,
}

impl From<Verdict> for SshDecision {
    fn from(v: Verdict) -> SshDecision {
        SshDecision {
            action: v.action,
            rule: v.rule,
            reason: v.reason,
        }
    }
}

fn builtin(what: &str, reason: String) -> Verdict {
    Verdict {
        action: Action::Deny,
        rule: format!("builtin/{what}"),
        reason: format!("builtin rule {what}: {reason}"),
    }
}

/// deny > approve > allow.
fn severity(a: Action) -> u8 {
    match a {
        Action::Allow => 0,
        Action::Approve => 1,
        Action::Deny => 2,
    }
}

fn verb(a: Action) -> &'static str {
    match a {
        Action::Allow => "is allowed",
        Action::Deny => "is denied",
        Action::Approve => "needs approval",
    }
}

fn basename(s: &str) -> &str {
    s.rsplit('/').next().unwrap_or(s)
}

/// Lexical normalization: `//` and `.` removed, `..` takes the previous component away (at
/// the root it stays the root). Relative paths stay relative (leading `..` kept); `""` is `.`.
fn normalize(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if absolute => {}
                _ => parts.push(".."),
            },
            c => parts.push(c),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// Base names of files a login shell reads and runs (in any directory: a
/// home directory is wherever the account's is).
const STARTUP_NAMES: &[&str] = &[
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".bash_logout",
    ".bash_aliases",
    ".profile",
    ".zshrc",
    ".zshenv",
    ".zprofile",
    ".zlogin",
    ".zlogout",
    ".kshrc",
    ".mkshrc",
    ".cshrc",
    ".tcshrc",
    ".login",
    ".logout",
    ".inputrc",
    ".pam_environment",
    ".environment",
    ".shrc",
];

/// Base names of files that make a program run commands they name, when
/// that program next starts (`git`'s `core.fsmonitor` and aliases, vim's
/// `:!`, psql's `\\!`, tmux's `run-shell`, `.forward` pipes, curl and wget
/// output settings): a command the policy allows would run code it never saw.
const TOOL_CODE_NAMES: &[&str] = &[
    ".gitconfig",
    ".vimrc",
    ".gvimrc",
    ".exrc",
    ".gdbinit",
    ".psqlrc",
    ".curlrc",
    ".wgetrc",
    ".npmrc",
    ".tmux.conf",
    ".screenrc",
    ".lessfilter",
    ".mailcap",
    ".Rprofile",
    ".pythonrc.py",
    ".forward",
    ".rhosts",
    ".shosts",
    ".k5login",
];

/// Directories under `.config` that a login starts or reads (systemd user
/// units, environment.d, fish), or that configure programs to run commands
/// (git, neovim).
const STARTUP_CONFIG_DIRS: &[&str] = &["systemd", "environment.d", "fish", "git", "nvim"];

/// System files and directories every login reads, runs or obeys (shell
/// init, sshd, PAM, motd scripts, the dynamic loader), by normalized path or
/// prefix (a prefix ends with `/`).
const STARTUP_PATHS: &[&str] = &[
    "/etc/profile",
    "/etc/profile.d/",
    "/etc/bash.bashrc",
    "/etc/bashrc",
    "/etc/zsh/",
    "/etc/zshenv",
    "/etc/zshrc",
    "/etc/zprofile",
    "/etc/zlogin",
    "/etc/zlogout",
    "/etc/csh.cshrc",
    "/etc/csh.login",
    "/etc/csh.logout",
    "/etc/environment",
    "/etc/ssh/",
    "/etc/pam.d/",
    "/etc/security/",
    "/etc/update-motd.d/",
    "/etc/ld.so.preload",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d/",
    "/etc/shells",
    "/etc/skel/",
];

/// Directories whose whole contents the checks above protect: writing one
/// of them, or an ancestor, as a path (rename, remove, chmod, or a symlink
/// pointing at it) or as an upload target (names chosen by the client)
/// reaches them.
const STARTUP_DIRS: &[&str] = &["/etc", "/home", "/root"];

/// Why writing `path` would plant code that runs at the next login, outside
/// the command policy (`ssh host cmd` starts a shell that reads its startup
/// files; sshd obeys `~/.ssh/authorized_keys`, `rc`, `environment`), if it
/// would. Also refused, since they reach such files by another name: paths
/// under `/proc` (`/proc/self/root/etc/…`); `/`, `/etc`, `/home`, `/root`, a
/// home directory (`/home/NAME`, `.`, `~`) or a relative path above it, as a
/// path or a symlink target; and uploads into any of them, or with a
/// relative target, whose file names only the client knows.
fn startup_write(path: &str, scope: Scope) -> Option<String> {
    let norm = normalize(path.strip_prefix("~/").unwrap_or(path));
    if let Some(why) = startup_file(&norm) {
        return Some(why);
    }
    let parts: Vec<&str> = norm.split('/').filter(|p| !p.is_empty()).collect();
    let relative = !norm.starts_with('/');
    let home = matches!(path, "" | "~" | "~/")
        || norm == "."
        || (relative && parts.first() == Some(&".."))
        || (parts.len() == 2 && parts.first() == Some(&"home"));
    let above = !relative
        && STARTUP_DIRS.iter().any(|d| {
            norm == *d || norm == "/" || d.starts_with(&format!("{}/", norm.trim_end_matches('/')))
        });
    if home || above {
        return Some(
            "it is (or holds) home directories or system configuration, whose startup files \
             would run at the next login"
                .into(),
        );
    }
    if scope != Scope::Path && relative {
        return Some(
            "an upload to a relative path lands in the login's home directory, and the file \
             names only the client knows may be startup files"
                .into(),
        );
    }
    None
}

/// Why the file or directory at the normalized path `norm` is itself one a login or an
/// allowed program runs or obeys ([`startup_write`] without the directories that hold them).
fn startup_file(norm: &str) -> Option<String> {
    let parts: Vec<&str> = norm.split('/').filter(|p| !p.is_empty()).collect();
    if norm == "/proc" || norm.starts_with("/proc/") {
        return Some("paths under /proc name other files (/proc/self/root/…)".into());
    }
    if parts.contains(&".ssh") {
        return Some("it is in a `.ssh` directory, which sshd obeys at the next login".into());
    }
    if let Some(name) = parts.last().filter(|n| STARTUP_NAMES.contains(n)) {
        return Some(format!(
            "`{name}` is a shell startup file: it would run at the next login, outside the command policy"
        ));
    }
    if let Some(name) = parts.last().filter(|n| TOOL_CODE_NAMES.contains(n)) {
        return Some(format!(
            "`{name}` makes a program run the commands it names: an allowed command would run code \
             outside the command policy"
        ));
    }
    // A repository's config and hooks (`.git/…`, or a bare `name.git/…`): any `git`
    // command there runs what they say.
    let git = parts.iter().enumerate().any(|(i, p)| {
        let rest = parts.get(i + 1..).unwrap_or_default();
        p.ends_with(".git")
            && ((rest.is_empty() && *p == ".git")
                || rest.iter().any(|r| matches!(*r, "config" | "hooks")))
    });
    if git {
        return Some(
            "a repository's `.git` config and hooks make every `git` command there run what they \
             name"
                .into(),
        );
    }
    if parts.windows(2).any(|w| {
        w.first() == Some(&".config") && w.get(1).is_some_and(|d| STARTUP_CONFIG_DIRS.contains(d))
    }) {
        return Some("a login (or a program an allowed command starts) reads and runs what is in this `.config` directory".into());
    }
    let system = STARTUP_PATHS.iter().any(|p| match p.strip_suffix('/') {
        Some(dir) => norm == dir || norm.starts_with(p),
        None => norm == *p,
    });
    if system {
        return Some("every login reads it: it would run code outside the command policy".into());
    }
    None
}

fn has_dotdot(s: &str) -> bool {
    s.split('/').any(|c| c == "..")
}

/// `scp` in server mode (`-t` or `-f`): the path and flags. None when neither flag is there
/// (then it is an ordinary command for the rules).
struct Scp {
    upload: bool,
    recursive: bool,
    dir: bool,
    path: shell::Word,
}

fn scp_server(cmd: &shell::Command) -> Option<Result<Scp, String>> {
    let (mut to, mut from, mut recursive, mut dir) = (false, false, false, false);
    let mut options_done = false;
    let mut paths: Vec<&shell::Word> = Vec::new();
    let mut unknown: Option<char> = None;
    // Options anywhere before `--` (glibc getopt permutes: `scp /x -t` is server mode too).
    for w in cmd.words.iter().skip(1) {
        if !options_done && !w.dynamic && w.text.starts_with('-') && w.text.len() > 1 {
            if w.text == "--" {
                options_done = true;
                continue;
            }
            for c in w.text.chars().skip(1) {
                match c {
                    't' => to = true,
                    'f' => from = true,
                    'r' => recursive = true,
                    'd' => dir = true,
                    'v' | 'p' => {}
                    c => unknown = unknown.or(Some(c)),
                }
            }
        } else {
            paths.push(w);
        }
    }
    if !to && !from {
        return None;
    }
    Some(match (unknown, to && from, paths.as_slice()) {
        (Some(c), _, _) => Err(format!(
            "the option `-{c}` is not one scp sends in server mode (-v -r -p -d -t -f)"
        )),
        (None, true, _) => Err("`-t` and `-f` together".into()),
        (None, false, [path]) => Ok(Scp {
            upload: to,
            recursive,
            dir,
            path: (*path).clone(),
        }),
        (None, false, _) => Err(format!(
            "scp in server mode takes exactly one path, not {}",
            paths.len()
        )),
    })
}

// ---- matching ----------------------------------------------------------------------------

/// One piece of a glob pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Char(char),
    /// `?`: one character other than `/`.
    One,
    /// `*`: any run of characters without `/`.
    Star,
    /// `**`: any run of characters.
    Stars,
}

/// A compiled glob: literal text is compared directly, anything else runs a small NFA
/// (linear in the text times the pattern length, no backtracking).
#[derive(Debug, Clone)]
struct Glob {
    toks: Vec<Tok>,
    literal: Option<String>,
}

impl Glob {
    fn new(toks: Vec<Tok>) -> Glob {
        let literal = toks
            .iter()
            .map(|t| match t {
                Tok::Char(c) => Some(*c),
                _ => None,
            })
            .collect::<Option<String>>();
        Glob { toks, literal }
    }

    fn is_literal(&self) -> bool {
        self.literal.is_some()
    }

    fn matches(&self, text: &str) -> bool {
        if let Some(l) = &self.literal {
            return l == text;
        }
        let n = self.toks.len();
        let mut cur = vec![false; n + 1];
        let mut next = vec![false; n + 1];
        set(&mut cur, 0);
        self.close(&mut cur);
        for c in text.chars() {
            next.iter_mut().for_each(|s| *s = false);
            for (i, t) in self.toks.iter().enumerate() {
                if !cur.get(i).copied().unwrap_or(false) {
                    continue;
                }
                match *t {
                    Tok::Char(x) if x == c => set(&mut next, i + 1),
                    Tok::One if c != '/' => set(&mut next, i + 1),
                    Tok::Star if c != '/' => set(&mut next, i),
                    Tok::Stars => set(&mut next, i),
                    _ => {}
                }
            }
            self.close(&mut next);
            if !next.iter().any(|s| *s) {
                return false;
            }
            std::mem::swap(&mut cur, &mut next);
        }
        cur.get(n).copied().unwrap_or(false)
    }

    /// A star may match nothing: reaching it also reaches what follows it.
    fn close(&self, states: &mut [bool]) {
        for (i, t) in self.toks.iter().enumerate() {
            if matches!(t, Tok::Star | Tok::Stars) && states.get(i).copied().unwrap_or(false) {
                set(states, i + 1);
            }
        }
    }
}

fn set(states: &mut [bool], i: usize) {
    if let Some(s) = states.get_mut(i) {
        *s = true;
    }
}

/// Deny and approve rules match generously (see the module comment), allow rules strictly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Strict,
    Generous,
}

impl Rule {
    fn matches(&self, cmd: &shell::Command) -> bool {
        let mode = match self.action {
            Action::Allow => Mode::Strict,
            Action::Deny | Action::Approve => Mode::Generous,
        };
        self.commands.iter().any(|p| p.matches(&cmd.words, mode))
    }
}

impl CommandPattern {
    fn matches(&self, words: &[shell::Word], mode: Mode) -> bool {
        let np = self.words.len();
        let nw = words.len();
        let splitting = mode == Mode::Generous && words.iter().any(|w| w.splits);
        if !splitting {
            let count_ok = if self.rest { nw >= np } else { nw == np };
            return count_ok
                && self
                    .words
                    .iter()
                    .zip(words)
                    .enumerate()
                    .all(|(i, (p, w))| word_matches(p, w, mode, i == 0));
        }
        // An unquoted expansion may become any number of words: reach[i][j] = pattern words
        // ..i can match argv words ..j.
        let width = np + 1;
        let mut reach = vec![false; width * (nw + 1)];
        set(&mut reach, 0);
        for j in 0..=nw {
            for i in 0..=np {
                if !reach.get(j * width + i).copied().unwrap_or(false) {
                    continue;
                }
                let Some(w) = words.get(j) else {
                    continue;
                };
                if let Some(p) = self.words.get(i) {
                    if word_matches(p, w, mode, i == 0) {
                        set(&mut reach, (j + 1) * width + i + 1);
                        if w.splits && j > 0 {
                            // One more field from the same word.
                            set(&mut reach, j * width + i + 1);
                        }
                    }
                }
                if w.splits && j > 0 {
                    // No (more) fields from this word.
                    set(&mut reach, (j + 1) * width + i);
                }
            }
        }
        if self.rest {
            (0..=nw).any(|j| reach.get(j * width + np).copied().unwrap_or(false))
        } else {
            reach.get(nw * width + np).copied().unwrap_or(false)
        }
    }
}

fn word_matches(p: &Glob, w: &shell::Word, mode: Mode, name: bool) -> bool {
    match mode {
        Mode::Strict => {
            !w.dynamic && (p.is_literal() || !has_dotdot(&w.text)) && p.matches(&w.text)
        }
        Mode::Generous => {
            w.dynamic
                || p.matches(&w.text)
                || (name && p.matches(basename(&w.text)))
                || (w.text.contains('/') && p.matches(&normalize(&w.text)))
        }
    }
}

// ---- the policy file ---------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    policy: Spanned<Header>,
    #[serde(default)]
    rule: Vec<Spanned<RuleSpec>>,
    #[serde(default)]
    shell: Option<ShellSpec>,
    #[serde(default)]
    sftp: Option<SftpSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: Spanned<String>,
    /// Checked by the [`Peek`] before this parse.
    #[serde(default)]
    #[allow(dead_code)]
    protocol: Option<Spanned<String>>,
    #[serde(default)]
    description: String,
    default: Action,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: Spanned<String>,
    action: Action,
    commands: Spanned<Vec<Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShellSpec {
    action: Action,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SftpSpec {
    action: Action,
    #[serde(default)]
    read_only: bool,
    #[serde(default)]
    paths: Vec<Spanned<String>>,
}

/// Just `[policy] protocol`, whatever else the file has.
#[derive(Deserialize)]
struct Peek {
    policy: Option<Spanned<PeekHeader>>,
}

#[derive(Deserialize)]
struct PeekHeader {
    #[serde(default)]
    protocol: Option<Spanned<String>>,
}

/// `[policy] protocol` of a policy file's text, with its place, when the text is TOML and
/// has one.
pub(in crate::policy) fn declared_protocol(text: &str) -> Option<Spanned<String>> {
    toml::from_str::<Peek>(text)
        .ok()?
        .policy?
        .into_inner()
        .protocol
}

/// Does this policy file text declare `[policy] protocol = "ssh"`? (For tools that take both
/// kinds of policy file; text that is not valid TOML does not.)
pub fn declares_ssh(text: &str) -> bool {
    declared_protocol(text).is_some_and(|p| p.get_ref() == "ssh")
}

/// Reads and compiles an SSH policy file.
pub fn load(path: &Path) -> Result<SshPolicy, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        file: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Compiles the text of an SSH policy file; `path` names it in errors and its stem must equal
/// the policy's name.
pub fn parse(path: &Path, text: &str) -> Result<SshPolicy, PolicyError> {
    let src = super::file::Source { file: path, text };
    let invalid = |span: std::ops::Range<usize>, problem: Problem| src.invalid(span, problem);
    // The protocol first, so that a SQL policy given here says so rather than naming its
    // first key this format does not have.
    if let Ok(Peek {
        policy: Some(header),
    }) = toml::from_str::<Peek>(text)
    {
        let span = header.span();
        match header.into_inner().protocol {
            Some(p) if p.get_ref() == "ssh" => {}
            Some(p) => {
                return Err(invalid(
                    p.span(),
                    Problem::Protocol {
                        found: p.get_ref().clone(),
                        expected: "an SSH policy file says `protocol = \"ssh\"`",
                    },
                ))
            }
            None => return Err(invalid(span, Problem::MissingSshProtocol)),
        }
    }
    let doc: Doc = src.doc()?;

    let header = doc.policy.into_inner();
    src.check_name(&header.name)?;

    let mut rules: Vec<Rule> = Vec::with_capacity(doc.rule.len());
    let mut seen: Vec<(String, usize)> = Vec::new();
    for spec in doc.rule {
        let spec = spec.into_inner();
        let rule_name = spec.name.get_ref();
        if RESERVED.contains(&rule_name.as_str()) {
            return Err(invalid(
                spec.name.span(),
                Problem::ReservedSshRuleName(rule_name.clone()),
            ));
        }
        if !is_name(rule_name, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'
        }) {
            return Err(invalid(
                spec.name.span(),
                Problem::BadRuleName(rule_name.clone()),
            ));
        }
        if let Some((_, first_line)) = seen.iter().find(|(n, _)| n == rule_name) {
            return Err(invalid(
                spec.name.span(),
                Problem::DuplicateRule {
                    name: rule_name.clone(),
                    first_line: *first_line,
                },
            ));
        }
        seen.push((rule_name.clone(), src.line_of(spec.name.span())));
        if spec.commands.get_ref().is_empty() {
            return Err(invalid(
                spec.commands.span(),
                Problem::EmptyList { key: "commands" },
            ));
        }
        let mut commands = Vec::with_capacity(spec.commands.get_ref().len());
        for text in spec.commands.into_inner() {
            let pattern = command_pattern(text.get_ref(), spec.action).map_err(|why| {
                invalid(
                    text.span(),
                    Problem::BadCommandPattern {
                        pattern: text.get_ref().clone(),
                        why,
                    },
                )
            })?;
            commands.push(pattern);
        }
        rules.push(Rule {
            name: spec.name.into_inner(),
            action: spec.action,
            commands,
        });
    }

    let sftp = match doc.sftp {
        None => None,
        Some(s) => {
            let mut paths = Vec::with_capacity(s.paths.len());
            for p in s.paths {
                let pattern = path_pattern(p.get_ref()).map_err(|why| {
                    invalid(
                        p.span(),
                        Problem::BadPathPattern {
                            pattern: p.get_ref().clone(),
                            why,
                        },
                    )
                })?;
                paths.push(pattern);
            }
            Some(Sftp {
                action: s.action,
                read_only: s.read_only,
                paths,
            })
        }
    };

    Ok(SshPolicy {
        name: header.name.into_inner(),
        description: header.description,
        default: header.default,
        rules,
        shell: doc.shell.map(|s| s.action),
        sftp,
    })
}

fn is_name(s: &str, ok: impl Fn(char) -> bool) -> bool {
    (1..=64).contains(&s.len()) && s.chars().all(ok)
}

fn command_pattern(text: &str, action: Action) -> Result<CommandPattern, String> {
    let mut words = shell::pattern_words(text)?;
    let rest = words.len() > 1 && words.last().is_some_and(|w| w.as_slice() == [Tok::Star]);
    if rest {
        words.pop();
    } else if words.len() == 1 && words.first().is_some_and(|w| w.as_slice() == [Tok::Star]) {
        // `*` alone: any command with any arguments.
        return Ok(CommandPattern {
            words: Vec::new(),
            rest: true,
        });
    }
    let words: Vec<Glob> = words.into_iter().map(Glob::new).collect();
    if let Some(first) = words.first() {
        match &first.literal {
            Some(l) if l.is_empty() => return Err("the command name is empty".into()),
            Some(l) if action != Action::Deny && SHELL_CODE.contains(&basename(l)) => {
                return Err(format!(
                    "`{l}` runs shell code and is always denied by a built-in rule, so this {action} rule would never apply"
                ))
            }
            _ => {}
        }
    }
    Ok(CommandPattern { words, rest })
}

fn path_pattern(text: &str) -> Result<PathPattern, String> {
    if !text.starts_with('/') {
        return Err("must be an absolute path (`/var/log/**`)".into());
    }
    if text.len() > 1024 {
        return Err("longer than 1024 bytes".into());
    }
    if let Some(c) = text.chars().find(|c| c.is_control()) {
        return Err(format!(
            "contains the control character U+{:04X}",
            u32::from(c)
        ));
    }
    if text != "/" {
        let rest = text.get(1..).unwrap_or_default();
        if rest
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(
                "must be normalized: no `//`, `.` or `..` components and no trailing `/`".into(),
            );
        }
    }
    let toks = path_toks(text);
    let tree = text.strip_suffix("/**").map(|dir| {
        let dir = if dir.is_empty() { "/" } else { dir };
        Glob::new(path_toks(dir))
    });
    Ok(PathPattern {
        text: text.to_owned(),
        glob: Glob::new(toks),
        tree,
    })
}

fn path_toks(text: &str) -> Vec<Tok> {
    let mut toks = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        toks.push(match c {
            '*' => {
                if chars.peek() == Some(&'*') {
                    while chars.peek() == Some(&'*') {
                        chars.next();
                    }
                    Tok::Stars
                } else {
                    Tok::Star
                }
            }
            '?' => Tok::One,
            c => Tok::Char(c),
        });
    }
    toks
}
