//! Legacy scp upload (`scp -O`, the server runs `scp -t TARGET`): the file and directory
//! names come from the client inside the data stream, after the command was decided. This
//! inspector reads the stream the client sends (the scp "source" side) and checks every name
//! against the policy's file rules before the host sees it:
//!
//! - `C<mode> <size> <name>\n`, then `size` bytes and a `\0`: a file, written as
//!   `TARGET[/dirs…]/name` (or TARGET itself when it is a file, which the exec decision
//!   covered);
//! - `D<mode> 0 <name>\n` … `E\n`: a directory entered and left (`-r`);
//! - `T<mtime> 0 <atime> 0\n`: times for the next record; `\x01`/`\x02` lines: the source's
//!   warnings and errors.
//!
//! A name with `/`, `.`, `..` or a NUL, a malformed or oversized header, or a path the rules
//! refuse ends the channel before the header reaches the host. File contents pass unchanged.

/// Longest header line accepted, in bytes (a name is at most 255 bytes on Linux).
const MAX_HEADER: usize = 4096;

/// Deepest `D` nesting accepted.
const MAX_DEPTH: usize = 128;

/// The upload stream's state (see the module documentation).
pub struct Sink {
    target: String,
    dirs: Vec<String>,
    header: Vec<u8>,
    /// File bytes (and the closing `\0`) still to pass before the next header.
    data_left: u64,
}

impl Sink {
    pub fn new(target: String) -> Sink {
        Sink {
            target,
            dirs: Vec::new(),
            header: Vec::new(),
            data_left: 0,
        }
    }

    /// Reads `data` from the client: the bytes to pass on, or why the upload stops.
    /// `check(path)` is asked for every file and directory the host would write.
    pub fn feed(
        &mut self,
        data: &[u8],
        check: &dyn Fn(&str) -> Result<(), String>,
    ) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(data.len());
        let mut rest = data;
        while !rest.is_empty() {
            if self.data_left > 0 {
                let n = usize::try_from(self.data_left)
                    .unwrap_or(usize::MAX)
                    .min(rest.len());
                let (pass, more) = rest.split_at(n);
                out.extend_from_slice(pass);
                self.data_left -= n as u64;
                rest = more;
                continue;
            }
            let Some(end) = rest.iter().position(|&b| b == b'\n') else {
                self.header.extend_from_slice(rest);
                if self.header.len() > MAX_HEADER {
                    return Err(format!("an scp header longer than {MAX_HEADER} bytes"));
                }
                break;
            };
            let (line, more) = rest.split_at(end + 1);
            self.header.extend_from_slice(line);
            rest = more;
            if self.header.len() > MAX_HEADER {
                return Err(format!("an scp header longer than {MAX_HEADER} bytes"));
            }
            let header = std::mem::take(&mut self.header);
            self.record(&header, check)?;
            out.extend_from_slice(&header);
        }
        Ok(out)
    }

    /// One complete header line (with its `\n`).
    fn record(
        &mut self,
        line: &[u8],
        check: &dyn Fn(&str) -> Result<(), String>,
    ) -> Result<(), String> {
        let text = std::str::from_utf8(line.strip_suffix(b"\n").unwrap_or(line))
            .map_err(|_| "an scp header that is not UTF-8".to_owned())?;
        let Some(kind) = text.chars().next() else {
            return Err("an empty scp header".into());
        };
        match kind {
            'C' | 'D' => {
                let mut fields = text.get(1..).unwrap_or_default().splitn(3, ' ');
                let (Some(mode), Some(size), Some(name)) =
                    (fields.next(), fields.next(), fields.next())
                else {
                    return Err(format!("a malformed scp header `{}`", text.escape_debug()));
                };
                if mode.len() != 4 || !mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
                    return Err(format!("a malformed scp mode `{}`", mode.escape_debug()));
                }
                let size: u64 = size
                    .parse()
                    .map_err(|_| format!("a malformed scp size `{}`", size.escape_debug()))?;
                if name.is_empty()
                    || name == "."
                    || name == ".."
                    || name.contains('/')
                    || name.contains('\0')
                {
                    return Err(format!(
                        "the scp client names a file `{}`, which is not a plain file name",
                        name.escape_debug()
                    ));
                }
                let mut path = self.target.trim_end_matches('/').to_owned();
                for d in &self.dirs {
                    path.push('/');
                    path.push_str(d);
                }
                path.push('/');
                path.push_str(name);
                check(&path)?;
                if kind == 'C' {
                    // (When TARGET is not a directory the sink writes TARGET itself,
                    // which the exec decision already covered.)
                    self.data_left = size.saturating_add(1);
                } else {
                    if self.dirs.len() >= MAX_DEPTH {
                        return Err(format!("scp directories nested deeper than {MAX_DEPTH}"));
                    }
                    self.dirs.push(name.to_owned());
                }
                Ok(())
            }
            'E' => {
                self.dirs.pop();
                Ok(())
            }
            'T' | '\u{1}' | '\u{2}' => Ok(()),
            other => Err(format!(
                "an scp record `{}` this check does not know",
                other.escape_debug()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refuse_dotfiles(path: &str) -> Result<(), String> {
        if path.rsplit('/').next().is_some_and(|n| n.starts_with('.')) {
            Err(format!("denied: {path}"))
        } else {
            Ok(())
        }
    }

    #[test]
    fn names_are_checked_before_the_host_sees_them() {
        let mut s = Sink::new("/srv/app".into());
        let stream = b"T1 0 1 0\nC0644 5 a.txt\nhello\0D0755 0 sub\nC0600 2 b\nhi\0E\n";
        // Byte by byte: headers are held until complete; data passes as it comes.
        let mut out = Vec::new();
        for b in stream.iter() {
            out.extend(s.feed(&[*b], &refuse_dotfiles).unwrap());
        }
        assert_eq!(out, stream.to_vec());
        let seen = std::cell::RefCell::new(Vec::new());
        let log = |p: &str| {
            seen.borrow_mut().push(p.to_owned());
            Ok(())
        };
        let mut s = Sink::new("/srv/app/".into());
        s.feed(stream, &log).unwrap();
        assert_eq!(
            seen.into_inner(),
            ["/srv/app/a.txt", "/srv/app/sub", "/srv/app/sub/b"]
        );
        // File contents that look like headers are data.
        let mut s = Sink::new("/srv".into());
        let out = s
            .feed(b"C0644 9 x\nC0644 1 .bashrc\0", &refuse_dotfiles)
            .unwrap();
        assert_eq!(out.len(), 20);
    }

    #[test]
    fn refused_and_malformed_records_stop_the_upload() {
        for (stream, want) in [
            (&b"C0644 3 .bashrc\nabc\0"[..], "denied: /home/u/.bashrc"),
            (b"D0755 0 .ssh\n", "denied: /home/u/.ssh"),
            (b"C0644 3 ../x\n", "not a plain file name"),
            (b"C0644 3 a/b\n", "not a plain file name"),
            (b"D0755 0 ..\n", "not a plain file name"),
            (b"C644 3 x\n", "malformed scp mode"),
            (b"C0644 -3 x\n", "malformed scp size"),
            (b"C0644 3\n", "malformed scp header"),
            (b"X\n", "does not know"),
        ] {
            let mut s = Sink::new("/home/u".into());
            let e = s.feed(stream, &refuse_dotfiles).unwrap_err();
            assert!(e.contains(want), "{want}: {e}");
        }
        let mut s = Sink::new("/x".into());
        let e = s
            .feed(&vec![b'C'; MAX_HEADER + 1], &refuse_dotfiles)
            .unwrap_err();
        assert!(e.contains("longer than"), "{e}");
        let mut s = Sink::new("/x".into());
        let deep = b"D0755 0 d\n".repeat(MAX_DEPTH + 1);
        assert!(s.feed(&deep, &refuse_dotfiles).is_err());
    }
}
