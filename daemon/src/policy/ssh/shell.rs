//! A conservative POSIX-sh reader for SSH exec text: what sshd hands to the user's login shell
//! (`$SHELL -c TEXT`) is split here into simple commands, each an argv after quote removal,
//! before [`super::SshPolicy`] judges them one by one. Also splits rule patterns into words.
//!
//! Read exactly as sh/bash/dash would:
//! - quoting: `'…'`, `"…"` (where `\` escapes only `$ \` " \` and newline), `\x`, line
//!   continuation (`\` newline), comments (`#` at the start of a word);
//! - separators `;` `&` `&&` `||` `|` `|&` and newline; subshells `( … )` and groups `{ …; }`
//!   are read recursively, their commands checked like any other;
//! - command substitution `$(…)` and `` `…` ``: the inner commands become parts of their own
//!   (recursively, at most [`MAX_DEPTH`] levels); the word that holds the substitution has a value
//!   only known on the server, so it is marked dynamic;
//! - unquoted `*` `?` `[` (pathname expansion) and `~` (tilde expansion) also make a word dynamic;
//! - redirections: fd duplications (`2>&1`, `>&2`, `<&0`, `>&-`) and `/dev/null` as the file
//!   (`>/dev/null`, `2>>/dev/null`, `</dev/null`) change nothing the policy cares
//!   about and are dropped.
//!
//! Refused (the whole text is denied, with a [`Refusal`] naming why), because the policy cannot
//! know what would run or what would be touched:
//! - parameter and arithmetic expansion (`$VAR`, `${…}`, `$1`, `$((…))`, `$[…]`), bash `$'…'`
//!   and `$"…"` quoting: their values exist only on the server (`$IFS` tricks, `${PATH:0:1}`);
//! - redirection to or from any other file, here-documents and here-strings, process
//!   substitution `<(…)` `>(…)`;
//! - assignments before a command (`LD_PRELOAD=/x cmd`, `PATH=. ls`);
//! - keywords of compound commands (`if`, `for`, `while`, `case`, `function`, `[[`, `!`, `time`,
//!   …), function definitions, `((…))`; unquoted `{`/`}` other than a group or the word `{}`
//!   (bash brace expansion turns `{rm,-rf,/}` into three words);
//! - NUL and other control characters (tab and newline excepted), more than [`MAX_LEN`] bytes,
//!   unbalanced quotes or parentheses, nesting deeper than [`MAX_DEPTH`], more than
//!   [`MAX_PARTS`] simple commands, and any other syntax this reader does not accept.

use super::Tok;

/// Longest exec text accepted, in bytes.
pub(super) const MAX_LEN: usize = 64 * 1024;
/// Deepest nesting of `$(…)`, backquotes, `( … )` and `{ …; }`.
pub(super) const MAX_DEPTH: usize = 16;
/// Most simple commands in one text.
pub(super) const MAX_PARTS: usize = 1024;

/// One word of a simple command, after quote removal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Word {
    /// The text after quote removal; a substitution appears as written (`$(date)`).
    pub(super) text: String,
    /// Its value is only known on the server (command substitution, glob, tilde).
    pub(super) dynamic: bool,
    /// An unquoted expansion: the shell may turn it into zero or several words.
    pub(super) splits: bool,
}

/// A simple command: its words, the command name first. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Command {
    pub(super) words: Vec<Word>,
}

impl Command {
    /// The argv after quote removal.
    #[cfg(test)]
    pub(super) fn argv(&self) -> Vec<String> {
        self.words.iter().map(|w| w.text.clone()).collect()
    }

    /// The command for people: words joined with spaces, quoted where needed, shortened.
    pub(super) fn display(&self) -> String {
        let mut out = String::new();
        for (i, w) in self.words.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            if w.dynamic {
                out.push_str(&w.text);
            } else {
                out.push_str(&quote(&w.text));
            }
            if out.len() > 200 {
                break;
            }
        }
        shorten(&out)
    }
}

/// Why a text cannot be decided: `what` names the built-in rule (`builtin/<what>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) what: &'static str,
    pub(super) reason: String,
}

fn refuse<T>(what: &'static str, reason: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal {
        what,
        reason: reason.into(),
    })
}

/// Splits exec text into simple commands (in the order their words end: a substitution's
/// commands come before the command that holds it). Empty text gives no commands.
pub(super) fn parse(text: &str) -> Result<Vec<Command>, Refusal> {
    if text.len() > MAX_LEN {
        return refuse(
            "too-large",
            format!(
                "the command is {} bytes, more than the {MAX_LEN} this check reads",
                text.len()
            ),
        );
    }
    if let Some((at, c)) = text
        .char_indices()
        .find(|(_, c)| c.is_control() && *c != '\n' && *c != '\t')
    {
        return refuse(
            "control-character",
            format!(
                "the command contains the control character U+{:04X} at byte {at}",
                u32::from(c)
            ),
        );
    }
    let mut p = Parser::new(text);
    p.list(End::Eof, 0)?;
    Ok(p.parts)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The end of the text (the whole command, or a backquoted one).
    Eof,
    /// `)` closing `$(` or `(`.
    Paren,
    /// A `}` word closing `{`.
    Brace,
}

/// A word while it is read.
#[derive(Default)]
struct Raw {
    text: String,
    dynamic: bool,
    splits: bool,
    /// Some part of it was quoted or escaped.
    quoted: bool,
    /// An unquoted `{` or `}` in it.
    brace: bool,
    /// Length of the leading plain (unquoted, unexpanded) text, for assignment detection.
    plain: Option<usize>,
}

impl Raw {
    /// Ends the plain prefix: a quote, escape or expansion follows.
    fn freeze(&mut self) {
        if self.plain.is_none() {
            self.plain = Some(self.text.len());
        }
    }

    /// `NAME=…` with NAME unquoted: an assignment, not a command name.
    fn is_assignment(&self) -> bool {
        let plain = self.plain.unwrap_or(self.text.len());
        let Some(eq) = self.text.find('=') else {
            return false;
        };
        // `NAME+=value` (bash's append) is an assignment too.
        let name = self
            .text
            .get(..eq)
            .map(|n| n.strip_suffix('+').unwrap_or(n));
        eq < plain && name.is_some_and(is_name)
    }

    fn word(self) -> Word {
        Word {
            text: self.text,
            dynamic: self.dynamic,
            splits: self.splits,
        }
    }
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
    parts: Vec<Command>,
}

/// Reserved words that start or belong to compound commands (sh and bash).
const KEYWORDS: &[&str] = &[
    "if", "then", "else", "elif", "fi", "do", "done", "case", "esac", "while", "until", "for",
    "in", "select", "function", "time", "coproc", "[[", "]]", "!",
];

impl Parser {
    fn new(text: &str) -> Parser {
        Parser {
            chars: text.chars().collect(),
            pos: 0,
            parts: Vec::new(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.chars.get(self.pos + n).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// The source text between two positions, shortened.
    fn source(&self, from: usize, to: usize) -> String {
        let s: String = self
            .chars
            .get(from..to)
            .unwrap_or_default()
            .iter()
            .collect();
        shorten(&s)
    }

    fn push_part(&mut self, words: Vec<Word>) -> Result<(), Refusal> {
        if self.parts.len() >= MAX_PARTS {
            return refuse(
                "too-complex",
                format!("the command has more than {MAX_PARTS} simple commands"),
            );
        }
        self.parts.push(Command { words });
        Ok(())
    }

    /// Spaces, tabs and line continuations.
    fn skip_blanks(&mut self) {
        loop {
            match self.peek() {
                Some(' ' | '\t') => self.pos += 1,
                Some('\\') if self.peek_at(1) == Some('\n') => self.pos += 2,
                _ => return,
            }
        }
    }

    /// A comment (the caller is at the start of a word), up to the newline.
    fn skip_comment(&mut self) {
        if self.peek() == Some('#') {
            while !matches!(self.peek(), None | Some('\n')) {
                self.pos += 1;
            }
        }
    }

    /// Is the next word exactly this unquoted reserved word (`{` or `}`)?
    fn word_is(&self, c: char) -> bool {
        self.peek() == Some(c)
            && matches!(
                self.peek_at(1),
                None | Some(' ' | '\t' | '\n' | ';' | '&' | '|' | '<' | '>' | '(' | ')')
            )
    }

    /// A list of commands up to `end`; the closing `)` or `}` is consumed.
    fn list(&mut self, end: End, depth: usize) -> Result<(), Refusal> {
        if depth > MAX_DEPTH {
            return refuse(
                "too-complex",
                format!("the command is nested more than {MAX_DEPTH} levels deep"),
            );
        }
        // After `&&`, `||` or `|` a command must follow.
        let mut pending: Option<&'static str> = None;
        loop {
            loop {
                self.skip_blanks();
                self.skip_comment();
                if self.peek() == Some('\n') {
                    self.pos += 1;
                } else {
                    break;
                }
            }
            let closing = match self.peek() {
                None => {
                    if let Some(op) = pending {
                        return refuse("syntax", format!("the command ends after `{op}`"));
                    }
                    return match end {
                        End::Eof => Ok(()),
                        End::Paren => refuse("unbalanced", "a `(` or `$(` is not closed"),
                        End::Brace => refuse("unbalanced", "a `{` group is not closed"),
                    };
                }
                Some(')') => {
                    if end != End::Paren {
                        return refuse("syntax", "a `)` closes nothing");
                    }
                    true
                }
                Some('}') if end == End::Brace && self.word_is('}') => true,
                Some(_) => false,
            };
            if closing {
                if let Some(op) = pending {
                    return refuse("syntax", format!("no command after `{op}`"));
                }
                self.pos += 1;
                return Ok(());
            }
            self.command(depth)?;
            pending = None;
            self.skip_blanks();
            self.skip_comment();
            match self.peek() {
                None | Some(')' | '\n') => {}
                Some(';') => {
                    self.pos += 1;
                    if matches!(self.peek(), Some(';' | '&')) {
                        return refuse(
                            "compound",
                            "`;;` and `;&` belong to `case`, which this check does not read",
                        );
                    }
                }
                Some('&') => {
                    self.pos += 1;
                    if self.peek() == Some('&') {
                        self.pos += 1;
                        pending = Some("&&");
                    }
                }
                Some('|') => {
                    self.pos += 1;
                    pending = Some(match self.peek() {
                        Some('|') => {
                            self.pos += 1;
                            "||"
                        }
                        Some('&') => {
                            self.pos += 1;
                            "|&"
                        }
                        _ => "|",
                    });
                }
                Some(c) => return refuse("syntax", format!("unexpected `{c}` after a command")),
            }
        }
    }

    /// One command: a subshell, a group or a simple command, with its redirections.
    fn command(&mut self, depth: usize) -> Result<(), Refusal> {
        self.skip_blanks();
        if self.peek() == Some('(') {
            if self.peek_at(1) == Some('(') {
                return refuse(
                    "arithmetic",
                    "`((…))` is arithmetic whose effect this check cannot know",
                );
            }
            self.pos += 1;
            self.list(End::Paren, depth + 1)?;
            return self.trailing_redirections(depth);
        }
        if self.word_is('{') {
            self.pos += 1;
            self.list(End::Brace, depth + 1)?;
            return self.trailing_redirections(depth);
        }
        let start = self.pos;
        let mut words: Vec<Word> = Vec::new();
        let mut redirections = 0usize;
        loop {
            self.skip_blanks();
            match self.peek() {
                None | Some('\n' | ';' | '|' | ')') => break,
                Some('&') => {
                    if self.peek_at(1) == Some('>') {
                        self.redirection(depth)?;
                        redirections += 1;
                    } else {
                        break;
                    }
                }
                Some('<' | '>') => {
                    self.redirection(depth)?;
                    redirections += 1;
                }
                Some('(') => {
                    let what = if words.len() == 1 {
                        "a function definition"
                    } else {
                        "an unexpected `(`"
                    };
                    return refuse(
                        "compound",
                        format!("`{}` has {what}", self.source(start, self.pos + 1)),
                    );
                }
                Some('#') => {
                    self.skip_comment();
                    break;
                }
                Some(_) => {
                    let raw = self.word(depth)?;
                    if !raw.quoted
                        && !raw.dynamic
                        && !raw.text.is_empty()
                        && raw.text.chars().all(|c| c.is_ascii_digit())
                        && matches!(self.peek(), Some('<' | '>'))
                    {
                        // An fd number: `2>/dev/null`.
                        self.redirection(depth)?;
                        redirections += 1;
                        continue;
                    }
                    if words.is_empty() {
                        if !raw.quoted && KEYWORDS.contains(&raw.text.as_str()) {
                            return refuse(
                                "compound",
                                format!(
                                    "`{}` starts a compound command, which this check does not read; send simple commands",
                                    raw.text
                                ),
                            );
                        }
                        if raw.is_assignment() {
                            return refuse(
                                "assignment",
                                format!(
                                    "`{}` assigns a shell variable before the command (like LD_PRELOAD=… or PATH=…), which changes what runs",
                                    shorten(&raw.text)
                                ),
                            );
                        }
                    }
                    if raw.brace && raw.text != "{}" {
                        return refuse(
                            "brace-expansion",
                            format!(
                                "`{}` has an unquoted `{{` or `}}`: bash brace expansion makes other words of it",
                                shorten(&raw.text)
                            ),
                        );
                    }
                    words.push(raw.word());
                }
            }
        }
        if words.is_empty() {
            if redirections == 0 {
                let what = match self.peek() {
                    None => "the end".to_owned(),
                    Some('\n') => "a newline".to_owned(),
                    Some(c) => format!("`{c}`"),
                };
                return refuse("syntax", format!("a command is missing before {what}"));
            }
            return Ok(());
        }
        self.push_part(words)
    }

    /// Redirections after `)` or `}`; nothing else may follow before a separator.
    fn trailing_redirections(&mut self, depth: usize) -> Result<(), Refusal> {
        loop {
            self.skip_blanks();
            match self.peek() {
                Some('<' | '>') => self.redirection(depth)?,
                Some('&') if self.peek_at(1) == Some('>') => self.redirection(depth)?,
                Some(c) if c.is_ascii_digit() => {
                    let mut n = 0;
                    while self.peek_at(n).is_some_and(|c| c.is_ascii_digit()) {
                        n += 1;
                    }
                    if matches!(self.peek_at(n), Some('<' | '>')) {
                        self.pos += n;
                        self.redirection(depth)?;
                    } else {
                        return refuse("syntax", "a word after a closing `)` or `}`");
                    }
                }
                None | Some('\n' | ';' | '&' | '|' | ')' | '#') => return Ok(()),
                Some(_) => return refuse("syntax", "a word after a closing `)` or `}`"),
            }
        }
    }

    /// A redirection operator (an fd number before it is already consumed) and its target.
    fn redirection(&mut self, depth: usize) -> Result<(), Refusal> {
        let start = self.pos;
        let (dup, what) = match (self.bump(), self.peek()) {
            (Some('&'), _) => {
                // bash reads `&>file` as a redirection, dash (Debian's /bin/sh) as `&` then
                // `>file`, which starts a new command: the same text means two programs.
                return refuse(
                    "ambiguous-redirection",
                    "`&>` means a redirection in bash but `&` (run in background) in dash; write `>file 2>&1`",
                );
            }
            (Some('<'), Some('<')) => return refuse(
                "here-document",
                "here-documents and here-strings (`<<`, `<<<`) carry text this check does not read",
            ),
            (Some('<'), Some('&')) => {
                self.pos += 1;
                (true, "<&")
            }
            (Some('<'), Some('>')) => {
                self.pos += 1;
                (false, "<>")
            }
            (Some('>'), Some('>')) => {
                self.pos += 1;
                (false, ">>")
            }
            (Some('>'), Some('&')) => {
                self.pos += 1;
                (true, ">&")
            }
            (Some('>'), Some('|')) => {
                self.pos += 1;
                (false, ">|")
            }
            (Some('<'), _) => (false, "<"),
            _ => (false, ">"),
        };
        if self.peek() == Some('(') {
            return refuse(
                "process-substitution",
                format!(
                    "`{}` is a process substitution, which runs a command this check does not read",
                    self.source(start, (self.pos + 1).min(self.chars.len()))
                ),
            );
        }
        self.skip_blanks();
        match self.peek() {
            Some('<' | '>') if self.peek_at(1) == Some('(') => return refuse(
                "process-substitution",
                "a redirection to a process substitution runs a command this check does not read",
            ),
            None | Some('\n' | ';' | '&' | '|' | '<' | '>' | '(' | ')') => {
                return refuse("syntax", format!("`{what}` has no target"))
            }
            Some(_) => {}
        }
        let raw = self.word(depth)?;
        let shown = self.source(start, self.pos);
        if raw.dynamic {
            return refuse(
                "redirection",
                format!("`{shown}`: the redirection target is only known on the server"),
            );
        }
        let fd = !raw.text.is_empty() && raw.text.chars().all(|c| c.is_ascii_digit());
        let ok = match (dup, what) {
            (true, "<&") => fd || raw.text == "-",
            (true, _) => fd || raw.text == "-" || raw.text == "/dev/null",
            _ => raw.text == "/dev/null",
        };
        if ok {
            Ok(())
        } else {
            refuse(
                "redirection",
                format!(
                    "`{shown}` redirects to or from a file; only /dev/null and fd duplication (2>&1) are allowed"
                ),
            )
        }
    }

    /// One word, up to an unquoted blank or operator.
    fn word(&mut self, depth: usize) -> Result<Raw, Refusal> {
        let mut w = Raw::default();
        while let Some(c) = self.peek() {
            match c {
                ' ' | '\t' | '\n' | ';' | '&' | '|' | '<' | '>' | '(' | ')' => break,
                '\'' => {
                    self.pos += 1;
                    w.freeze();
                    w.quoted = true;
                    loop {
                        match self.bump() {
                            None => return refuse("unbalanced", "a `'` quote is not closed"),
                            Some('\'') => break,
                            Some(c) => w.text.push(c),
                        }
                    }
                }
                '"' => {
                    self.pos += 1;
                    w.freeze();
                    w.quoted = true;
                    self.double_quoted(&mut w, depth)?;
                }
                '\\' => {
                    self.pos += 1;
                    match self.bump() {
                        None => return refuse("syntax", "the command ends with a lone `\\`"),
                        Some('\n') => {}
                        Some(c) => {
                            w.freeze();
                            w.quoted = true;
                            w.text.push(c);
                        }
                    }
                }
                '$' => {
                    self.pos += 1;
                    self.dollar(&mut w, depth, false)?;
                }
                '`' => {
                    self.pos += 1;
                    self.backquoted(&mut w, depth, false)?;
                }
                '*' | '?' | '[' => {
                    self.pos += 1;
                    w.text.push(c);
                    w.dynamic = true;
                    w.splits = true;
                }
                '~' => {
                    self.pos += 1;
                    w.text.push(c);
                    w.dynamic = true;
                }
                '{' | '}' => {
                    self.pos += 1;
                    w.text.push(c);
                    w.brace = true;
                }
                _ => {
                    self.pos += 1;
                    w.text.push(c);
                }
            }
        }
        Ok(w)
    }

    /// After an opening `"`, up to and including the closing one.
    fn double_quoted(&mut self, w: &mut Raw, depth: usize) -> Result<(), Refusal> {
        loop {
            match self.bump() {
                None => return refuse("unbalanced", "a `\"` quote is not closed"),
                Some('"') => return Ok(()),
                Some('\\') => match self.peek() {
                    Some(c @ ('$' | '`' | '"' | '\\')) => {
                        self.pos += 1;
                        w.text.push(c);
                    }
                    Some('\n') => self.pos += 1,
                    _ => w.text.push('\\'),
                },
                Some('$') => self.dollar(w, depth, true)?,
                Some('`') => self.backquoted(w, depth, true)?,
                Some(c) => w.text.push(c),
            }
        }
    }

    /// After a `$`: a literal dollar, a command substitution, or a refusal.
    fn dollar(&mut self, w: &mut Raw, depth: usize, quoted: bool) -> Result<(), Refusal> {
        let start = self.pos - 1;
        match self.peek() {
            None | Some(' ' | '\t' | '\n') => {
                w.text.push('$');
                Ok(())
            }
            Some('"') if quoted => {
                w.text.push('$');
                Ok(())
            }
            Some(';' | '&' | '|' | '<' | '>' | ')') if !quoted => {
                w.text.push('$');
                Ok(())
            }
            Some('(') if self.peek_at(1) == Some('(') => refuse(
                "arithmetic",
                "`$((…))` is arithmetic expansion, whose value is only known on the server",
            ),
            Some('(') => {
                self.pos += 1;
                w.freeze();
                self.list(End::Paren, depth + 1)?;
                w.text.push_str(&self.source(start, self.pos));
                w.dynamic = true;
                w.splits |= !quoted;
                Ok(())
            }
            Some('[') => refuse(
                "arithmetic",
                "`$[…]` is arithmetic expansion, whose value is only known on the server",
            ),
            Some('\'' | '"') => refuse(
                "quoting",
                "bash `$'…'` and `$\"…\"` quoting is read differently by other shells",
            ),
            Some(c) => {
                let mut end = self.pos + 1;
                if c == '{' {
                    while end < self.chars.len()
                        && self.chars.get(end) != Some(&'}')
                        && end - self.pos < 40
                    {
                        end += 1;
                    }
                    end = (end + 1).min(self.chars.len());
                } else if c == '_' || c.is_ascii_alphabetic() {
                    while self
                        .chars
                        .get(end)
                        .is_some_and(|c| *c == '_' || c.is_ascii_alphanumeric())
                        && end - self.pos < 40
                    {
                        end += 1;
                    }
                }
                refuse(
                    "parameter-expansion",
                    format!(
                        "`{}` is a parameter expansion, whose value is only known on the server",
                        self.source(start, end)
                    ),
                )
            }
        }
    }

    /// After an opening backquote: the old form of command substitution.
    fn backquoted(&mut self, w: &mut Raw, depth: usize, quoted: bool) -> Result<(), Refusal> {
        let start = self.pos - 1;
        let mut inner = String::new();
        loop {
            match self.bump() {
                None => return refuse("unbalanced", "a backquote is not closed"),
                Some('`') => break,
                Some('\\') => match self.peek() {
                    Some(c @ ('$' | '`' | '\\')) => {
                        self.pos += 1;
                        inner.push(c);
                    }
                    Some('"') if quoted => {
                        self.pos += 1;
                        inner.push('"');
                    }
                    Some('\n') => self.pos += 1,
                    _ => inner.push('\\'),
                },
                Some(c) => inner.push(c),
            }
        }
        let mut sub = Parser::new(&inner);
        sub.list(End::Eof, depth + 1)?;
        for part in sub.parts {
            self.push_part(part.words)?;
        }
        w.freeze();
        w.text.push_str(&self.source(start, self.pos));
        w.dynamic = true;
        w.splits |= !quoted;
        Ok(())
    }
}

/// Would an interactive bash expand history here (`!!`, `!rm`, `!$`, `!-2`)? `!` outside
/// single quotes, not escaped, and followed by something other than a blank, `=`, `(` or `"`.
pub(super) fn history_expansion(line: &str) -> bool {
    let (mut single, mut double, mut escaped) = (false, false, false);
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if !single => escaped = true,
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '!' if !single
                && !matches!(
                    chars.peek(),
                    None | Some(' ' | '\t' | '\n' | '=' | '(' | '"')
                ) =>
            {
                return true;
            }
            _ => {}
        }
    }
    false
}

fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// A word as a shell would need it written (single quotes where needed).
pub(super) fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| {
            c.is_alphanumeric()
                || matches!(c, '-' | '_' | '.' | '/' | ':' | '=' | '+' | ',' | '@' | '%')
        });
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// At most ~200 characters, control characters escaped: safe to put in a reason.
pub(super) fn shorten(s: &str) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i >= 200 {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// A rule pattern (`journalctl --no-pager *`) split into words with the same quoting rules.
/// Unquoted `*` is a glob within one path segment, `**` any text, `?` one character; quoted
/// or escaped, they are literal. Shell syntax that has no meaning in a pattern must be quoted.
pub(super) fn pattern_words(text: &str) -> Result<Vec<Vec<Tok>>, String> {
    if text.len() > 1024 {
        return Err("longer than 1024 bytes".into());
    }
    if let Some(c) = text.chars().find(|c| c.is_control() && *c != '\t') {
        return Err(format!(
            "contains the control character U+{:04X}",
            u32::from(c)
        ));
    }
    let chars: Vec<char> = text.chars().collect();
    let mut words: Vec<Vec<Tok>> = Vec::new();
    let mut i = 0;
    loop {
        while matches!(chars.get(i), Some(' ' | '\t')) {
            i += 1;
        }
        let Some(&first) = chars.get(i) else {
            break;
        };
        if first == '#' {
            return Err("`#` starts a comment in the shell; quote it".into());
        }
        let mut word: Vec<Tok> = Vec::new();
        while let Some(&c) = chars.get(i) {
            i += 1;
            match c {
                ' ' | '\t' => break,
                '\'' => loop {
                    match chars.get(i) {
                        None => return Err("a `'` quote is not closed".into()),
                        Some('\'') => {
                            i += 1;
                            break;
                        }
                        Some(&c) => {
                            word.push(Tok::Char(c));
                            i += 1;
                        }
                    }
                },
                '"' => loop {
                    match chars.get(i) {
                        None => return Err("a `\"` quote is not closed".into()),
                        Some('"') => {
                            i += 1;
                            break;
                        }
                        Some('\\') => match chars.get(i + 1) {
                            Some(&c @ ('$' | '`' | '"' | '\\')) => {
                                word.push(Tok::Char(c));
                                i += 2;
                            }
                            _ => {
                                word.push(Tok::Char('\\'));
                                i += 1;
                            }
                        },
                        Some('$' | '`') => {
                            return Err("`$` and backquotes must be escaped inside \"…\"".into())
                        }
                        Some(&c) => {
                            word.push(Tok::Char(c));
                            i += 1;
                        }
                    }
                },
                '\\' => match chars.get(i) {
                    None => return Err("ends with a lone `\\`".into()),
                    Some(&c) => {
                        word.push(Tok::Char(c));
                        i += 1;
                    }
                },
                '*' => {
                    if chars.get(i) == Some(&'*') {
                        while chars.get(i) == Some(&'*') {
                            i += 1;
                        }
                        word.push(Tok::Stars);
                    } else {
                        word.push(Tok::Star);
                    }
                }
                '?' => word.push(Tok::One),
                '$' | '`' | ';' | '&' | '|' | '<' | '>' | '(' | ')' | '[' | ']' | '{' | '}'
                | '~' => {
                    return Err(format!(
                        "`{c}` has a shell meaning; quote it to match it literally"
                    ))
                }
                c => word.push(Tok::Char(c)),
            }
        }
        words.push(word);
        if words.len() > 64 {
            return Err("more than 64 words".into());
        }
    }
    if words.is_empty() {
        return Err("empty".into());
    }
    Ok(words)
}
