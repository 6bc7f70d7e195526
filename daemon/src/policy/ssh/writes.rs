//! Where common file-writing commands write, so an allowed command cannot plant code that
//! runs at the next login (or the next run of an allowed tool): `cp x ~/.bashrc`,
//! `tee -a .ssh/authorized_keys`, `sed -i … ~/.profile`, `tar -x` into the home directory.
//! Each write target goes through the same check as an sftp write ([`super::startup_write`]).
//!
//! Read with GNU semantics (options anywhere before `--`, short options clustered, an option's
//! argument attached or in the next word). What cannot be read is refused: a target only known
//! on the server (a substitution or glob), a relative target after a `cd`, an archive extracted
//! into the home directory or with member names rewritten, a download whose file name the
//! server picks.
//!
//! Commands not read here write only where their arguments say for the rules to judge, or run
//! other code (interpreters, `rsync -e`, `git`, `find -exec`), which the module docs already
//! tell policy authors to allow with fixed arguments only.

use super::{basename, shell::Word, startup_file, startup_write, Scope};

/// Base names of the shell's directory changers: after one, relative paths no longer start
/// at the login's home directory.
pub(super) const CWD_CHANGERS: &[&str] = &["cd", "pushd", "popd"];

/// Why running `base` with `args` would write a file that runs code outside the command
/// policy, or cannot be checked. `cwd_home`: relative paths start at the home directory (no
/// `cd` before this command).
pub(super) fn refused(base: &str, args: &[Word], cwd_home: bool) -> Option<String> {
    let targets = match base {
        "cp" | "mv" | "install" | "ln" => copy_targets(base, args),
        "rsync" => rsync_targets(args),
        "tee" => operands(args, &[], &[]).map(|o| o.files),
        "dd" => Ok(args
            .iter()
            .filter_map(|w| w.text.strip_prefix("of=").map(|p| sub(w, p)))
            .map(Target::file)
            .collect()),
        "sed" => sed_targets(args),
        "tar" => tar_targets(args),
        "unzip" => unzip_targets(args),
        "cpio" => cpio_targets(args),
        "curl" => curl_targets(args),
        "wget" => wget_targets(args),
        _ => return None,
    };
    let targets = match targets {
        Ok(t) => t,
        Err(why) => return Some(why),
    };
    targets.iter().find_map(|t| t.refused(base, cwd_home))
}

/// A path the command writes: a file, or a directory it fills with names from elsewhere.
struct Target {
    word: Word,
    /// A directory whose new entries are named by something else (a recursive copy, an
    /// archive): the directory itself must not be one that holds startup files.
    tree: bool,
    /// A copy target that may be an existing directory: the copies inside it are checked by
    /// their own names, so a directory holding homes (`~`, `/home/NAME`, `/`) is no finding
    /// by itself; the path's own name still is (`/.bashrc`).
    into: bool,
    /// The file name is a wildcard that cannot match a dot file (`*.log`): fine anywhere but
    /// where startup files have plain names (`/etc`, `.config`).
    wild_name: bool,
}

impl Target {
    fn file(word: Word) -> Self {
        Target {
            word,
            tree: false,
            into: false,
            wild_name: false,
        }
    }

    fn tree(word: Word) -> Self {
        Target {
            tree: true,
            ..Target::file(word)
        }
    }

    fn refused(&self, base: &str, cwd_home: bool) -> Option<String> {
        let text = self.word.text.as_str();
        let shown = super::shell::shorten(text);
        if unknown(&self.word) {
            return Some(format!(
                "`{base}` writes to `{shown}`, which is only known on the server (a substitution or wildcard); name the path"
            ));
        }
        let path = tilde(text);
        if !cwd_home && !path.starts_with('/') {
            return Some(format!(
                "`{base}` writes to the relative path `{shown}` after a `cd`: the directory is only known on the server; name the full path"
            ));
        }
        let norm = super::normalize(&path);
        let name = basename(&norm);
        if self.wild_name {
            let dir = norm
                .rsplit_once('/')
                .map_or(".", |(d, _)| if d.is_empty() { "/" } else { d });
            if dir == "/etc" || dir.starts_with("/etc/") || basename(dir) == ".config" {
                return Some(format!(
                    "`{base}` copies files named by a wildcard into `{dir}`, where startup files have plain names; name the files"
                ));
            }
        }
        // A copy into an existing directory lands under the source's name, which its own
        // target checks: here only the path itself counts, not the homes it may hold.
        let found = if self.into {
            startup_file(&norm)
        } else {
            startup_write(&path, Scope::Path)
        };
        if let Some(why) = found {
            return Some(format!("`{base}` writing `{shown}` is denied: {why}"));
        }
        if self.tree && name == ".config" {
            return Some(format!(
                "`{base}` filling `{shown}` is denied: it holds configuration a login starts (systemd user units, environment.d, fish)"
            ));
        }
        None
    }
}

/// A word's value is only known on the server: a substitution, or a wildcard (a leading `~`
/// alone is read as the home directory by [`tilde`]).
fn unknown(w: &Word) -> bool {
    if !w.dynamic {
        return false;
    }
    let rest = w
        .text
        .strip_prefix('~')
        .map(|r| r.split_once('/').map_or("", |(_, r)| r))
        .unwrap_or(&w.text);
    rest.contains(['$', '`', '*', '?', '[']) || w.text.contains(['$', '`'])
}

/// `~` and `~/x` are the home directory (where relative paths start), `~user/x` that user's
/// (at its usual place; the check is by shape).
fn tilde(text: &str) -> String {
    match text.strip_prefix('~') {
        None => text.to_owned(),
        Some(rest) => match rest.split_once('/') {
            None if rest.is_empty() => ".".to_owned(),
            None => format!("/home/{rest}"),
            Some(("", r)) => format!("./{r}"),
            Some((user, r)) => format!("/home/{user}/{r}"),
        },
    }
}

/// A word the command line did not contain, known as written.
fn literal(text: &str) -> Word {
    Word {
        text: text.to_owned(),
        dynamic: false,
        splits: false,
    }
}

/// A word made of part of another (an option's attached argument).
fn sub(w: &Word, text: &str) -> Word {
    Word {
        text: text.to_owned(),
        dynamic: w.dynamic,
        splits: w.splits,
    }
}

/// A source's name inside a target directory: the file a copy into it creates. A name only
/// known on the server stays unknown, except a wildcard that cannot match a dot file (`*`,
/// `?` and `[…]` never match a leading `.`), which stands in as `*` with `wild_name` set.
fn joined(dir: &Word, src: &Word, tree: bool) -> Target {
    let name = basename(src.text.trim_end_matches('/'));
    let substituted = src.text.contains(['$', '`']);
    let wild = src.dynamic && !substituted && name.contains(['*', '?', '[']);
    let unknown_name = substituted || (wild && name.starts_with('.'));
    let shown_name = if wild && !unknown_name { "x" } else { name };
    Target {
        word: Word {
            text: format!("{}/{shown_name}", dir.text.trim_end_matches('/')),
            dynamic: dir.dynamic || unknown_name,
            splits: false,
        },
        tree,
        into: false,
        wild_name: wild && !unknown_name,
    }
}

/// Operands and option arguments, GNU style.
struct Operands {
    files: Vec<Target>,
    /// Values of the options named in `wanted`, by option.
    values: Vec<(String, Word)>,
    flags: Vec<String>,
}

/// Splits `args` into operands and options. `short_args`: short options that take an argument;
/// `long_args`: long options that do (a unique prefix counts, as getopt allows). Flags are
/// returned one letter at a time (`-rf` is `r`, `f`) or whole (`--force`).
fn operands(args: &[Word], short_args: &[char], long_args: &[&str]) -> Result<Operands, String> {
    let mut out = Operands {
        files: Vec::new(),
        values: Vec::new(),
        flags: Vec::new(),
    };
    let mut it = args.iter();
    let mut done = false;
    while let Some(w) = it.next() {
        let t = w.text.as_str();
        if done || t == "-" || !t.starts_with('-') {
            out.files.push(Target::file(w.clone()));
            continue;
        }
        if t == "--" {
            done = true;
            continue;
        }
        if let Some(long) = t.strip_prefix("--") {
            let (name, value) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            let full = long_args
                .iter()
                .find(|l| l.starts_with(name) && !name.is_empty());
            match (full, value) {
                (Some(full), Some(v)) => out.values.push(((*full).to_owned(), sub(w, v))),
                (Some(full), None) => {
                    let Some(v) = it.next() else {
                        return Err(format!("`--{name}` needs a value"));
                    };
                    out.values.push(((*full).to_owned(), v.clone()));
                }
                (None, _) => out.flags.push(format!("--{name}")),
            }
            continue;
        }
        for (i, c) in t.char_indices().skip(1) {
            if short_args.contains(&c) {
                let attached = &t[i + c.len_utf8()..];
                let v = if attached.is_empty() {
                    match it.next() {
                        Some(v) => v.clone(),
                        None => return Err(format!("`-{c}` needs a value")),
                    }
                } else {
                    sub(w, attached)
                };
                out.values.push((c.to_string(), v));
                break;
            }
            out.flags.push(c.to_string());
        }
    }
    Ok(out)
}

impl Operands {
    fn value(&self, names: &[&str]) -> Option<&Word> {
        self.values
            .iter()
            .rev()
            .find(|(n, _)| names.contains(&n.as_str()))
            .map(|(_, w)| w)
    }

    /// The values of the options in `names`, as files written.
    fn targets(&self, names: &[&str]) -> Vec<Target> {
        self.values
            .iter()
            .filter(|(n, _)| names.contains(&n.as_str()))
            .map(|(_, w)| Target::file(w.clone()))
            .collect()
    }

    /// Each URL operand's file, in the directory given by an option in `dir_opts` or the
    /// home directory (what `curl -O` and `wget` write).
    fn downloads(&self, dir_opts: &[&str]) -> Vec<Target> {
        let dir = self
            .value(dir_opts)
            .cloned()
            .unwrap_or_else(|| literal("."));
        self.files
            .iter()
            .map(|url| joined(&dir, &url_name(&url.word), false))
            .collect()
    }

    /// Whether a flag among `names` was given; a long flag also by any prefix, as getopt
    /// accepts unambiguous abbreviations (`--no-t` is `--no-target-directory`). Matching
    /// every prefix is stricter than getopt, never looser.
    fn has(&self, names: &[&str]) -> bool {
        self.flags.iter().any(|f| {
            names.iter().any(|n| {
                n == f || (f.len() > 2 && f.starts_with("--") && n.starts_with(f.as_str()))
            })
        })
    }
}

/// cp, mv, install, ln: the target (`-t DIR`, else the last operand) and each source's name
/// inside it; ln's link targets and mv's sources too (a rename moves them, a link names them),
/// as sftp's rename and symlink checks do; `install -d`: every operand.
fn copy_targets(base: &str, args: &[Word]) -> Result<Vec<Target>, String> {
    let (short, long): (&[char], &[&str]) = match base {
        "install" => (
            &['g', 'm', 'o', 'S', 't'],
            &[
                "group",
                "mode",
                "owner",
                "suffix",
                "target-directory",
                "strip-program",
            ],
        ),
        _ => (
            &['S', 't'],
            &["suffix", "target-directory", "sparse", "no-preserve"],
        ),
    };
    let ops = operands(args, short, long)?;
    if base == "install" && ops.has(&["d", "--directory"]) {
        return Ok(ops.files);
    }
    let recursive = base == "mv" || ops.has(&["r", "R", "a", "--recursive", "--archive"]);
    // `cp --parents a/b/c DIR` writes DIR/a/b/c: the whole source path counts.
    let parents = base == "cp" && ops.has(&["--parents"]);
    let no_target_dir = ops.has(&["T", "--no-target-directory"]);
    let explicit = ops.value(&["t", "target-directory"]).cloned();
    let mut files: Vec<Word> = ops.files.into_iter().map(|t| t.word).collect();
    let dir = match explicit {
        Some(d) => Some(d),
        None if files.len() >= 2 => files.pop(),
        None if base == "ln" => Some(literal(".")),
        None => None,
    };
    let Some(dir) = dir else {
        return Ok(Vec::new());
    };
    let mut out = vec![Target {
        word: dir.clone(),
        tree: recursive,
        into: !no_target_dir,
        wild_name: false,
    }];
    for src in &files {
        if parents {
            out.push(Target {
                word: Word {
                    text: format!("{}/{}", dir.text.trim_end_matches('/'), src.text),
                    dynamic: dir.dynamic || src.dynamic,
                    splits: false,
                },
                tree: recursive,
                into: false,
                wild_name: false,
            });
        } else if !no_target_dir {
            out.push(joined(&dir, src, recursive));
        }
        if base == "ln" || base == "mv" {
            out.push(Target::file(src.clone()));
        }
    }
    Ok(out)
}

/// rsync: the destination (the last operand) is filled with names from the sources (a
/// trailing `/` on a source puts its contents there directly), and log, batch, backup and
/// temporary files go where their options say. A remote shell or remote rsync command is a
/// command this check does not read.
fn rsync_targets(args: &[Word]) -> Result<Vec<Target>, String> {
    let ops = operands(
        args,
        &['e', 'f', 'T', 'B', 'M'],
        &[
            "rsh",
            "rsync-path",
            "remote-option",
            "filter",
            "exclude",
            "include",
            "exclude-from",
            "include-from",
            "files-from",
            "temp-dir",
            "partial-dir",
            "backup-dir",
            "suffix",
            "log-file",
            "log-file-format",
            "chmod",
            "chown",
            "block-size",
            "max-size",
            "min-size",
            "timeout",
            "contimeout",
            "port",
            "password-file",
            "compare-dest",
            "copy-dest",
            "link-dest",
            "out-format",
            "info",
            "debug",
            "bwlimit",
            "iconv",
            "usermap",
            "groupmap",
            "modify-window",
            "max-delete",
            "protocol",
            "sockopts",
            "outbuf",
            "write-batch",
            "read-batch",
            "only-write-batch",
            "checksum-choice",
            "compress-choice",
            "skip-compress",
            "stop-after",
            "stop-at",
            "address",
            "checksum-seed",
            "compress-level",
        ],
    )?;
    if ops
        .value(&["e", "rsh", "rsync-path", "M", "remote-option"])
        .is_some()
    {
        return Err("`rsync -e`/`--rsync-path` runs a command this check does not read".into());
    }
    let mut out: Vec<Target> = ops.targets(&[
        "log-file",
        "write-batch",
        "only-write-batch",
        "backup-dir",
        "temp-dir",
        "T",
        "partial-dir",
    ]);
    let mut files: Vec<Word> = ops.files.into_iter().map(|t| t.word).collect();
    if files.len() >= 2 {
        if let Some(dest) = files.pop() {
            for src in &files {
                out.push(joined(&dest, src, true));
            }
            out.push(Target::tree(dest));
        }
    }
    Ok(out)
}

/// sed with `-i` / `--in-place`: every file operand is rewritten.
fn sed_targets(args: &[Word]) -> Result<Vec<Target>, String> {
    let in_place = args.iter().any(|w| {
        let t = w.text.as_str();
        t.split('=')
            .next()
            .is_some_and(|f| f.len() > 2 && "--in-place".starts_with(f))
            || (t.starts_with('-')
                && !t.starts_with("--")
                && short_cluster_has(t, 'i', &['e', 'f', 'l']))
    });
    if !in_place {
        return Ok(Vec::new());
    }
    let ops = operands(
        args,
        &['e', 'f', 'l'],
        &["expression", "file", "line-length"],
    )?;
    let scripted = ops.value(&["e", "f", "expression", "file"]).is_some();
    let mut files = ops.files;
    // Without -e/-f the first operand is the script.
    if !scripted && !files.is_empty() {
        files.remove(0);
    }
    Ok(files)
}

/// Whether the short-option cluster `t` (`-ni`, `-Ei.bak`) has `flag` before any option that
/// takes the rest of the word as its argument.
fn short_cluster_has(t: &str, flag: char, with_arg: &[char]) -> bool {
    for c in t.chars().skip(1) {
        if c == flag {
            return true;
        }
        if with_arg.contains(&c) {
            return false;
        }
    }
    false
}

/// tar: the archive it writes (`-f` in create/append modes; checked in every mode, harmless
/// when read) and, when extracting, the directory it fills (`-C`, else the home directory).
fn tar_targets(args: &[Word]) -> Result<Vec<Target>, String> {
    // Old style: the first word without a dash is a cluster of letters whose arguments follow
    // in order (`tar xvfC a.tar dir`).
    let mut words: Vec<Word> = Vec::new();
    let mut rest = args.iter();
    if let Some(first) = args.first().filter(|w| !w.text.starts_with('-')) {
        rest.next();
        let mut values = Vec::new();
        for c in first.text.chars() {
            if "bCfFgHKLNTVX".contains(c) {
                let Some(v) = rest.next() else {
                    return Err(format!("tar option `{c}` needs a value"));
                };
                values.push((c, v.clone()));
            } else {
                words.push(sub(first, &format!("-{c}")));
            }
        }
        for (c, v) in values {
            words.push(sub(first, &format!("-{c}")));
            words.push(v);
        }
    }
    words.extend(rest.cloned());
    let ops = operands(
        &words,
        &[
            'b', 'C', 'f', 'F', 'g', 'H', 'K', 'L', 'N', 'T', 'V', 'X', 'I',
        ],
        &[
            "directory",
            "file",
            "files-from",
            "exclude-from",
            "transform",
            "xform",
            "use-compress-program",
            "to-command",
            "info-script",
            "new-volume-script",
            "listed-incremental",
            "format",
            "starting-file",
            "tape-length",
            "newer",
            "after-date",
            "label",
            "blocking-factor",
            "owner",
            "group",
            "mode",
            "mtime",
            "suffix",
            "exclude",
        ],
    )?;
    let mut out: Vec<Target> = ops.targets(&["f", "file"]);
    let extract = ops.has(&["x", "--extract", "--get"]);
    if !extract {
        return Ok(out);
    }
    if ops.has(&["P", "--absolute-names"]) || ops.value(&["transform", "xform"]).is_some() {
        return Err(
            "`tar` extracting with absolute or rewritten member names (-P, --transform) writes where only the archive says"
                .into(),
        );
    }
    if ops
        .value(&[
            "to-command",
            "use-compress-program",
            "I",
            "F",
            "info-script",
            "new-volume-script",
        ])
        .is_some()
    {
        return Err("`tar` with a command option (--to-command, -I, -F) runs a program this check does not read".into());
    }
    match ops.value(&["C", "directory"]) {
        Some(dir) => out.push(Target::tree(dir.clone())),
        None => {
            return Err(
                "`tar` extracting into the login's home directory writes names only the archive knows; extract with `-C DIR`"
                    .into(),
            )
        }
    }
    Ok(out)
}

/// unzip: the directory it fills (`-d`, else the home directory); `-:` keeps `../`.
fn unzip_targets(args: &[Word]) -> Result<Vec<Target>, String> {
    if args
        .iter()
        .any(|w| w.text.starts_with('-') && w.text.contains(':'))
    {
        return Err(
            "`unzip -:` keeps `../` in member names: it writes where only the archive says".into(),
        );
    }
    let ops = operands(args, &['d', 'x'], &[])?;
    let listing = ops.has(&["l", "v", "t", "z", "Z", "p", "c"]);
    match ops.value(&["d"]) {
        Some(dir) => Ok(vec![Target::tree(dir.clone())]),
        None if listing => Ok(Vec::new()),
        None => Err(
            "`unzip` extracting into the login's home directory writes names only the archive knows; extract with `-d DIR`"
                .into(),
        ),
    }
}

/// cpio: copy-in and pass-through write names only the archive (or stdin) knows, and cpio
/// keeps `../` in them.
fn cpio_targets(args: &[Word]) -> Result<Vec<Target>, String> {
    let ops = operands(
        args,
        &['D', 'E', 'F', 'H', 'I', 'M', 'O', 'R'],
        &[
            "directory",
            "pattern-file",
            "file",
            "format",
            "message",
            "owner",
            "rsh-command",
        ],
    )?;
    if ops.has(&["i", "p", "--extract", "--pass-through"]) {
        return Err(
            "`cpio -i`/`-p` writes files named by its input, `../` included; use tar or unzip with an explicit directory"
                .into(),
        );
    }
    Ok(ops.targets(&["O", "F", "file"]))
}

/// The last path segment of a URL (what `curl -O` and `wget` name the file), without query.
fn url_name(w: &Word) -> Word {
    let t = w.text.split(['?', '#']).next().unwrap_or("");
    let after_host = t.split_once("://").map_or(t, |(_, r)| r);
    let name = after_host.split_once('/').map_or("", |(_, p)| basename(p));
    sub(w, if name.is_empty() { "index.html" } else { name })
}

/// curl: `-o FILE`, `-O` (the URL's last segment, in `--output-dir` or the home directory);
/// `-J` lets the server pick the name, `-K` reads options from a file.
fn curl_targets(args: &[Word]) -> Result<Vec<Target>, String> {
    let ops = operands(
        args,
        &[
            'o', 'K', 'd', 'H', 'u', 'X', 'e', 'A', 'b', 'c', 'D', 'T', 'F', 'm', 'x', 'r', 'w',
            'E', 'U', 'Y', 'y', 'z', 'C', 'P', 'Q', 't',
        ],
        &[
            "output",
            "output-dir",
            "config",
            "data",
            "data-raw",
            "data-binary",
            "header",
            "user",
            "request",
            "referer",
            "user-agent",
            "cookie",
            "cookie-jar",
            "dump-header",
            "upload-file",
            "form",
            "max-time",
            "proxy",
            "range",
            "write-out",
            "cert",
            "proxy-user",
            "speed-limit",
            "speed-time",
            "time-cond",
            "continue-at",
            "ftp-port",
            "quote",
            "telnet-option",
            "stderr",
            "trace",
            "trace-ascii",
            "etag-save",
            "hsts",
            "alt-svc",
            "libcurl",
        ],
    )?;
    if ops.has(&["J", "--remote-header-name"]) {
        return Err("`curl -J` lets the server pick the file name".into());
    }
    if ops.value(&["K", "config"]).is_some() {
        return Err("`curl -K` reads options (output files among them) from a file this check does not read".into());
    }
    let mut out: Vec<Target> = ops.targets(&[
        "o",
        "output",
        "c",
        "cookie-jar",
        "D",
        "dump-header",
        "stderr",
        "trace",
        "trace-ascii",
        "etag-save",
        "hsts",
        "alt-svc",
        "libcurl",
    ]);
    if ops.has(&["O", "--remote-name", "--remote-name-all"]) {
        out.extend(ops.downloads(&["output-dir"]));
    }
    Ok(out)
}

/// wget: `-O FILE`, else the URL's last segment in `-P DIR` or the home directory; the log
/// files; recursion, `-i`, `-e` and server-named files cannot be read.
fn wget_targets(args: &[Word]) -> Result<Vec<Target>, String> {
    let ops = operands(
        args,
        &[
            'O', 'o', 'a', 'P', 'i', 'e', 'U', 't', 'T', 'w', 'Q', 'l', 'A', 'R', 'D', 'X', 'I',
            'B',
        ],
        &[
            "output-document",
            "output-file",
            "append-output",
            "directory-prefix",
            "input-file",
            "execute",
            "user-agent",
            "tries",
            "timeout",
            "wait",
            "quota",
            "level",
            "accept",
            "reject",
            "domains",
            "exclude-directories",
            "include-directories",
            "base",
            "header",
            "user",
            "password",
            "post-data",
            "post-file",
            "body-data",
            "body-file",
            "method",
            "save-cookies",
            "load-cookies",
            "config",
            "referer",
            "certificate",
            "private-key",
            "ca-certificate",
            "ca-directory",
            "rejected-log",
            "warc-file",
            "default-page",
        ],
    )?;
    if ops.has(&[
        "r",
        "m",
        "--recursive",
        "--mirror",
        "--content-disposition",
        "--trust-server-names",
    ]) || ops
        .value(&["input-file", "i", "execute", "e", "config"])
        .is_some()
    {
        return Err(
            "`wget` with recursion, -i, -e, --config or server-chosen names writes files this check cannot name"
                .into(),
        );
    }
    let mut out: Vec<Target> = ops.targets(&[
        "O",
        "output-document",
        "o",
        "output-file",
        "a",
        "append-output",
        "save-cookies",
        "rejected-log",
        "warc-file",
    ]);
    if ops.value(&["O", "output-document"]).is_none() {
        out.extend(ops.downloads(&["P", "directory-prefix"]));
    }
    Ok(out)
}
