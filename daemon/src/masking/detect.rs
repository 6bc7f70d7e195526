//! Value detectors (`[[detect]]`): find sensitive spans (emails, cards, IBANs, national ids, JWTs, API keys,
//! user patterns) inside text values on their way to the agent. Every regex is compiled once per policy;
//! per value, one vectorised byte pass ([`Stats`]) lets detectors that cannot match skip their regex or
//! scan entirely. Cards and national ids need no regex: one digit-run scan ([`Run`]) serves both.

use std::ops::Range;

use base64::{
    alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine as _,
};
use regex::{Regex, RegexBuilder};

use super::{DetectorKind, MaskingError, Mode};

/// Compiled size limit of a user `regex` detector (the regex crate's default is 10 MiB).
pub(super) const USER_REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Longest accepted user pattern, in bytes.
pub(super) const USER_PATTERN_MAX_LEN: usize = 4096;
/// Nesting limit of a user pattern (the regex crate's default is 250).
const USER_REGEX_NEST_LIMIT: u32 = 64;

/// `local@domain` candidates: letters and digits of any script (internationalised addresses). Kept this
/// simple so the regex engine can anchor on the `@`; the domain is checked in code (see `email_len`).
const EMAIL: &str = r"[\p{L}\p{N}._%+'\-]+@[\p{L}\p{N}.\-]+";
/// Compact (`DE89370400440532013000`) or grouped by four (`DE89 3704 0044 0532 0130 00`) IBAN candidates.
const IBAN: &str = r"(?-u:\b)[A-Za-z]{2}[0-9]{2}(?:[A-Za-z0-9]{11,30}|(?: [A-Za-z0-9]{4}){2,7}(?: [A-Za-z0-9]{1,4})?)(?-u:\b)";
/// Three base64url segments starting with `eyJ` (`{"`), optionally five (JWE); header checked in code.
const JWT: &str =
    r"eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+)?";
/// Well-known credential formats. The `sk-` branch is additionally required to look random (see `looks_random`).
const API_KEY: &str = concat!(
    r"(?-u:\b)(?:",
    r"sk-[A-Za-z0-9_\-]{20,}",
    r"|(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,}",
    r"|gh[pousr]_[A-Za-z0-9]{30,}",
    r"|github_pat_[A-Za-z0-9_]{20,}",
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}",
    r"|xox[abposr]-[A-Za-z0-9\-]{10,}",
    r"|AIza[0-9A-Za-z_\-]{35}",
    r"|glpat-[0-9A-Za-z_\-]{20,}",
    r"|npm_[A-Za-z0-9]{36}",
    r")",
    r"|-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----(?s:.*?)(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\z)",
);

/// JWT segments are unpadded base64url; be lenient about padding and trailing bits when checking the header.
const JWT_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Cheap facts about a value, gathered in one vectorised pass, that rule detectors in or out before any
/// regex or digit scan runs.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Stats {
    len: usize,
    digits: usize,
    letters: usize,
    dots: usize,
    dashes: usize,
    at: bool,
}

impl Stats {
    pub(super) fn of(text: &str) -> Stats {
        let bytes = text.as_bytes();
        let mut s = Stats {
            len: bytes.len(),
            ..Stats::default()
        };
        // Branch-free counts in u8 lanes over chunks of 255 bytes, which the compiler vectorises
        // (about ten times faster than counting into usize directly).
        for chunk in bytes.chunks(255) {
            let (mut d, mut l, mut o, mut h, mut a) = (0u8, 0u8, 0u8, 0u8, 0u8);
            for &b in chunk {
                d += u8::from(b.wrapping_sub(b'0') < 10);
                l += u8::from((b | 0x20).wrapping_sub(b'a') < 26);
                o += u8::from(b == b'.');
                h += u8::from(b == b'-');
                a |= u8::from(b == b'@');
            }
            s.digits += usize::from(d);
            s.letters += usize::from(l);
            s.dots += usize::from(o);
            s.dashes += usize::from(h);
            s.at |= a != 0;
        }
        s
    }
}

/// A maximal run of digits in which single spaces or dashes may separate digits (`4111 1111-1111 1111`,
/// `078-05-1120`, `12 34 56`). Only runs of six or more digits are kept: shorter ones match no detector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Run {
    range: Range<usize>,
    digits: usize,
}

/// The digit runs of the current text, found on first use and shared by the card and national-id
/// detectors; the caller resets it whenever a detector rewrites the text.
pub(super) type RunCache = Option<Vec<Run>>;

const MIN_RUN_DIGITS: usize = 6;

fn digit_runs(bytes: &[u8]) -> Vec<Run> {
    let mut runs = Vec::new();
    let mut start: Option<usize> = None;
    let mut end = 0usize;
    let mut digits = 0usize;
    let mut after_separator = false;
    for (i, &b) in bytes.iter().enumerate() {
        if b.is_ascii_digit() {
            if start.is_none() {
                start = Some(i);
                digits = 0;
            }
            digits += 1;
            end = i + 1;
            after_separator = false;
        } else if (b == b' ' || b == b'-') && start.is_some() && !after_separator {
            after_separator = true;
        } else {
            if let Some(s) = start.take() {
                if digits >= MIN_RUN_DIGITS {
                    runs.push(Run {
                        range: s..end,
                        digits,
                    });
                }
            }
            after_separator = false;
        }
    }
    if let Some(s) = start {
        if digits >= MIN_RUN_DIGITS {
            runs.push(Run {
                range: s..end,
                digits,
            });
        }
    }
    runs
}

/// The digit groups of a run (byte ranges relative to the run); separators are single bytes.
fn groups(run: &[u8]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0usize;
    for (i, b) in run.iter().enumerate() {
        if !b.is_ascii_digit() {
            out.push(start..i);
            start = i + 1;
        }
    }
    out.push(start..run.len());
    out
}

fn is_word_byte(b: &u8) -> bool {
    b.is_ascii_alphanumeric() || *b == b'_'
}

#[derive(Debug)]
enum Matcher {
    Email(Regex),
    Card,
    Iban(Regex),
    NationalId,
    Jwt(Regex),
    ApiKey(Regex),
    Custom(Regex),
}

/// One compiled `[[detect]]` entry.
#[derive(Debug)]
pub(super) struct Detector {
    matcher: Matcher,
    mode: Mode,
}

fn builtin(index: usize, pattern: &str) -> Result<Regex, MaskingError> {
    Regex::new(pattern).map_err(|source| MaskingError::BuiltinPattern { index, source })
}

impl Detector {
    /// `pattern` has been validated by the caller to be present exactly for `DetectorKind::Regex`.
    pub(super) fn build(
        index: usize,
        kind: &DetectorKind,
        pattern: Option<&str>,
        mode: Mode,
    ) -> Result<Detector, MaskingError> {
        let matcher = match kind {
            DetectorKind::Email => Matcher::Email(builtin(index, EMAIL)?),
            DetectorKind::Card => Matcher::Card,
            DetectorKind::Iban => Matcher::Iban(builtin(index, IBAN)?),
            DetectorKind::NationalId => Matcher::NationalId,
            DetectorKind::Jwt => Matcher::Jwt(builtin(index, JWT)?),
            DetectorKind::ApiKey => Matcher::ApiKey(builtin(index, API_KEY)?),
            DetectorKind::Regex => {
                let pattern = pattern.unwrap_or_default();
                let regex = RegexBuilder::new(pattern)
                    .size_limit(USER_REGEX_SIZE_LIMIT)
                    .dfa_size_limit(USER_REGEX_SIZE_LIMIT)
                    .nest_limit(USER_REGEX_NEST_LIMIT)
                    .build()
                    .map_err(|source| MaskingError::Pattern { index, source })?;
                Matcher::Custom(regex)
            }
        };
        Ok(Detector { matcher, mode })
    }

    pub(super) fn mode(&self) -> &Mode {
        &self.mode
    }

    /// The sensitive spans of `text` (byte ranges on char boundaries, sorted, non-overlapping).
    /// `stats` and `runs` describe `text`.
    pub(super) fn spans(
        &self,
        text: &str,
        stats: &Stats,
        runs: &mut RunCache,
    ) -> Vec<Range<usize>> {
        let bytes = text.as_bytes();
        match &self.matcher {
            Matcher::Email(re) => {
                if !stats.at || stats.dots == 0 || stats.len < 6 {
                    return Vec::new();
                }
                re.find_iter(text)
                    .filter_map(|m| email_len(m.as_str()).map(|len| m.start()..m.start() + len))
                    .collect()
            }
            Matcher::Card => {
                if stats.digits < 13 {
                    return Vec::new();
                }
                let mut spans = Vec::new();
                for run in runs.get_or_insert_with(|| digit_runs(bytes)).iter() {
                    if run.digits >= 13 {
                        card_spans(bytes, run, &mut spans);
                    }
                }
                spans
            }
            Matcher::Iban(re) => {
                if stats.digits < 2 || stats.letters < 2 || stats.len < 15 || !iban_head(bytes) {
                    return Vec::new();
                }
                re.find_iter(text)
                    .filter_map(|m| iban_len(m.as_str()).map(|len| m.start()..m.start() + len))
                    .collect()
            }
            Matcher::NationalId => {
                let ssn = stats.digits >= 9 && stats.dashes >= 2;
                let nino = stats.digits >= 6 && stats.letters >= 3;
                if !ssn && !nino {
                    return Vec::new();
                }
                let mut spans = Vec::new();
                for run in runs.get_or_insert_with(|| digit_runs(bytes)).iter() {
                    if ssn && run.digits >= 9 {
                        ssn_spans(bytes, run, &mut spans);
                    }
                    if nino && run.digits == 6 {
                        spans.extend(nino_span(bytes, run));
                    }
                }
                // Per run, spans come in order; an SSN and a NINO never share a run.
                spans.sort_by_key(|r| r.start);
                spans
            }
            Matcher::Jwt(re) => {
                if stats.dots < 2 || stats.len < 10 || !text.contains("eyJ") {
                    return Vec::new();
                }
                re.find_iter(text)
                    .filter(|m| jwt_header_ok(m.as_str()))
                    .map(|m| m.range())
                    .collect()
            }
            Matcher::ApiKey(re) => {
                if stats.len < 20 {
                    return Vec::new();
                }
                re.find_iter(text)
                    .filter(|m| api_key_ok(m.as_str()))
                    .map(|m| m.range())
                    .collect()
            }
            Matcher::Custom(re) => re
                .find_iter(text)
                .filter(|m| !m.is_empty())
                .map(|m| m.range())
                .collect(),
        }
    }
}

/// The byte length of the address at the start of `candidate` (`local@domain...`): the domain is the
/// longest run of dot-separated labels (no empty label, no leading or trailing `-`) that has at least two
/// labels and ends in an alphabetic top-level label of two or more letters. None if there is none.
fn email_len(candidate: &str) -> Option<usize> {
    let at = candidate.find('@')?;
    let domain = candidate.get(at + 1..)?;
    let mut end = None;
    let mut pos = 0usize;
    for (n, label) in domain.split('.').enumerate() {
        if label.is_empty() || label.starts_with('-') || label.ends_with('-') {
            break;
        }
        let label_end = pos + label.len();
        if n >= 1 && label.chars().nth(1).is_some() && label.chars().all(char::is_alphabetic) {
            end = Some(label_end);
        }
        pos = label_end + 1;
    }
    end.map(|e| at + 1 + e)
}

/// Luhn check over ASCII digits.
fn luhn(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d.wrapping_sub(b'0'));
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// Within one digit run, mark each sequence of whole groups holding 13-19 digits that starts with a
/// payment-network digit (2-6) and passes Luhn, longest first. A run of more than 19 digits with no
/// separator (an id, a timestamp) is never a card.
fn card_spans(bytes: &[u8], run: &Run, out: &mut Vec<Range<usize>>) {
    let Some(run_bytes) = bytes.get(run.range.clone()) else {
        return;
    };
    let groups = groups(run_bytes);
    let mut digits: Vec<u8> = Vec::with_capacity(19);
    let mut i = 0usize;
    while let Some(first) = groups.get(i) {
        digits.clear();
        let mut best: Option<usize> = None;
        for (j, g) in groups.iter().enumerate().skip(i) {
            digits.extend_from_slice(run_bytes.get(g.clone()).unwrap_or_default());
            if digits.len() > 19 {
                break;
            }
            if digits.len() >= 13 && matches!(digits.first(), Some(b'2'..=b'6')) && luhn(&digits) {
                best = Some(j);
            }
        }
        match best {
            Some(j) => {
                if let Some(last) = groups.get(j) {
                    out.push(run.range.start + first.start..run.range.start + last.end);
                }
                i = j + 1;
            }
            None => i += 1,
        }
    }
}

/// `ddd-dd-dddd` as three consecutive groups of a run joined by dashes, with SSA rules: area 000, 666 and
/// 900-999, group 00 and serial 0000 are never issued.
fn ssn_spans(bytes: &[u8], run: &Run, out: &mut Vec<Range<usize>>) {
    let Some(run_bytes) = bytes.get(run.range.clone()) else {
        return;
    };
    let groups = groups(run_bytes);
    for window in groups.windows(3) {
        let [area, group, serial] = window else {
            continue;
        };
        let part = |r: &Range<usize>| run_bytes.get(r.clone()).unwrap_or_default();
        let shape = area.len() == 3
            && group.len() == 2
            && serial.len() == 4
            && run_bytes.get(area.end) == Some(&b'-')
            && run_bytes.get(group.end) == Some(&b'-');
        if shape
            && part(area) != b"000"
            && part(area) != b"666"
            && part(area).first() != Some(&b'9')
            && part(group) != b"00"
            && part(serial) != b"0000"
        {
            out.push(run.range.start + area.start..run.range.start + serial.end);
        }
    }
}

/// UK NINO around a six-digit run of spaces-only groups: two letters (then an optional space) before,
/// an optional space and a suffix letter A-D after, word boundaries outside. HMRC rules: first letter not
/// D F I Q U V, second not D F I O Q U V, and the prefixes BG GB KN NK NT TN ZZ are not allocated.
fn nino_span(bytes: &[u8], run: &Run) -> Option<Range<usize>> {
    if bytes.get(run.range.clone())?.contains(&b'-') {
        return None;
    }
    let mut start = run.range.start;
    if start > 0 && bytes.get(start - 1) == Some(&b' ') {
        start -= 1;
    }
    let begin = start.checked_sub(2)?;
    let first = bytes.get(begin)?.to_ascii_uppercase();
    let second = bytes.get(begin + 1)?.to_ascii_uppercase();
    if !first.is_ascii_uppercase() || !second.is_ascii_uppercase() {
        return None;
    }
    if begin > 0 && bytes.get(begin - 1).is_some_and(is_word_byte) {
        return None;
    }
    let mut end = run.range.end;
    if bytes.get(end) == Some(&b' ') {
        end += 1;
    }
    if !matches!(
        bytes.get(end).map(u8::to_ascii_uppercase),
        Some(b'A'..=b'D')
    ) {
        return None;
    }
    end += 1;
    if bytes.get(end).is_some_and(is_word_byte) {
        return None;
    }
    let allocated = !b"DFIQUV".contains(&first)
        && !b"DFIOQUV".contains(&second)
        && !matches!(
            [first, second],
            [b'B', b'G']
                | [b'G', b'B']
                | [b'K', b'N']
                | [b'N', b'K']
                | [b'N', b'T']
                | [b'T', b'N']
                | [b'Z', b'Z']
        );
    allocated.then_some(begin..end)
}

/// Two ASCII letters directly followed by two digits somewhere: the head every IBAN starts with.
fn iban_head(bytes: &[u8]) -> bool {
    bytes.windows(4).any(|w| {
        matches!(w, [a, b, c, d] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() && c.is_ascii_digit() && d.is_ascii_digit())
    })
}

/// The byte length of the valid IBAN at the start of `candidate` (which may have swallowed a following
/// four-character word in the grouped form), or None.
fn iban_len(candidate: &str) -> Option<usize> {
    if !candidate.contains(' ') {
        return iban_valid(candidate).then_some(candidate.len());
    }
    // Grouped form: try the whole candidate, then drop trailing groups.
    let mut end = candidate.len();
    loop {
        let prefix = candidate.get(..end)?;
        if iban_valid(prefix) {
            return Some(end);
        }
        end = prefix.rfind(' ')?;
    }
}

/// ISO 13616: 15-34 alphanumerics, `CCdd` first; move the first four to the end, letters to numbers,
/// remainder modulo 97 must be 1.
fn iban_valid(text: &str) -> bool {
    let compact = text.bytes().filter(|b| *b != b' ');
    let len = compact.clone().count();
    if !(15..=34).contains(&len) {
        return false;
    }
    let rotated = compact.clone().skip(4).chain(compact.take(4));
    let mut rem = 0u32;
    for b in rotated {
        let v = match b {
            b'0'..=b'9' => u32::from(b - b'0'),
            b'A'..=b'Z' => u32::from(b - b'A') + 10,
            b'a'..=b'z' => u32::from(b - b'a') + 10,
            _ => return false,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// The first segment must decode to a JSON object with an `alg` member.
fn jwt_header_ok(token: &str) -> bool {
    let Some(header) = token.split('.').next() else {
        return false;
    };
    let Ok(json) = JWT_B64.decode(header) else {
        return false;
    };
    serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&json)
        .is_ok_and(|m| m.contains_key("alg"))
}

fn api_key_ok(key: &str) -> bool {
    match key.strip_prefix("sk-") {
        Some(rest) => looks_random(rest),
        None => true,
    }
}

/// Generated secrets mix upper case, lower case and digits; slugs like `sk-learn-tutorial-2024` do not.
fn looks_random(token: &str) -> bool {
    let upper = token.bytes().any(|b| b.is_ascii_uppercase());
    let lower = token.bytes().any(|b| b.is_ascii_lowercase());
    let digit = token.bytes().any(|b| b.is_ascii_digit());
    upper && lower && digit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(kind: DetectorKind, pattern: Option<&str>, text: &str) -> Vec<String> {
        let d = Detector::build(0, &kind, pattern, Mode::Redact).unwrap();
        d.spans(text, &Stats::of(text), &mut None)
            .into_iter()
            .map(|r| text[r].to_owned())
            .collect()
    }

    #[test]
    fn builtin_patterns_compile() {
        for kind in [
            DetectorKind::Email,
            DetectorKind::Card,
            DetectorKind::Iban,
            DetectorKind::NationalId,
            DetectorKind::Jwt,
            DetectorKind::ApiKey,
        ] {
            Detector::build(0, &kind, None, Mode::Redact).unwrap();
        }
    }

    #[test]
    fn stats_and_runs() {
        let s = Stats::of("card 4111 1111-1111 1111, id 12345 @ x.y");
        assert_eq!((s.digits, s.dots, s.dashes, s.at), (21, 1, 1, true));
        assert_eq!(s.letters, 8);
        let long = "a1-.@".repeat(300);
        let s = Stats::of(&long);
        assert_eq!(
            (s.digits, s.letters, s.dots, s.dashes, s.at),
            (300, 300, 300, 300, true)
        );

        fn runs(t: &str) -> Vec<(&str, usize)> {
            digit_runs(t.as_bytes())
                .into_iter()
                .map(|r| (&t[r.range], r.digits))
                .collect()
        }
        assert_eq!(
            runs("card 4111 1111-1111 1111, id 123456"),
            vec![("4111 1111-1111 1111", 16), ("123456", 6)]
        );
        assert_eq!(runs("4111  1111 2222"), vec![("1111 2222", 8)]);
        assert_eq!(runs("-1234 -567890-"), vec![("567890", 6)]);
        assert_eq!(runs("12 3"), vec![]);
        assert_eq!(
            runs("550e8400-e29b-41d4-a716-446655440000"),
            vec![("716-446655440000", 15)]
        );
        assert_eq!(groups(b"12 345-6"), vec![0..2, 3..6, 7..8]);
        assert!(iban_head(b"iban GB82WEST"));
        assert!(!iban_head(b"d89 e8 12ab"));
    }

    #[test]
    fn email_table() {
        let cases: &[(&str, &[&str])] = &[
            ("alice@example.com", &["alice@example.com"]),
            (
                "Contact alice.smith+tag@mail.example.co.uk, or bob@x.io.",
                &["alice.smith+tag@mail.example.co.uk", "bob@x.io"],
            ),
            (
                "mail: <carol_o'neil@example.org>",
                &["carol_o'neil@example.org"],
            ),
            ("no at sign here.com", &[]),
            ("user@localhost", &[]),
            ("@example.com", &[]),
            ("price 3 @ 4.50", &[]),
            ("ünïcode before x@ex.de after", &["x@ex.de"]),
            ("Zoë <zoë@exämple.de>", &["zoë@exämple.de"]),
            ("用户@例子.广告", &["用户@例子.广告"]),
            ("a@b.c", &[]),
            ("trailing a@b.io.", &["a@b.io"]),
            ("dashes a@-x.io b@x-.io c@x-y.io", &["c@x-y.io"]),
            ("versioned a@b.io2 a@b.io.v2", &["a@b.io"]),
            ("x@1.2.3.4", &[]),
            ("many a@b.io,c@d.io;e@f.io", &["a@b.io", "c@d.io", "e@f.io"]),
        ];
        for (text, want) in cases {
            assert_eq!(found(DetectorKind::Email, None, text), *want, "{text:?}");
        }
    }

    #[test]
    fn card_table() {
        let cases: &[(&str, &[&str])] = &[
            ("4111111111111111", &["4111111111111111"]),
            (
                "card 4111 1111 1111 1111 exp 12/29",
                &["4111 1111 1111 1111"],
            ),
            ("4111-1111-1111-1111", &["4111-1111-1111-1111"]),
            ("amex 3782 822463 10005.", &["3782 822463 10005"]),
            ("mc 5555555555554444", &["5555555555554444"]),
            (
                "two: 4111 1111 1111 1111 5555 5555 5555 4444",
                &["4111 1111 1111 1111", "5555 5555 5555 4444"],
            ),
            ("4111111111111111-2", &["4111111111111111"]),
            // Luhn-invalid: left alone.
            ("4111111111111112", &[]),
            ("order 1234567890123456", &[]),
            // Too long without separators: an id, not a card.
            ("41111111111111110000", &[]),
            // Millisecond timestamp (13 digits, starts with 1).
            ("1700000000000", &[]),
            // Double separators break the run.
            ("4111  1111  1111  1111", &[]),
            ("12", &[]),
            ("", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(found(DetectorKind::Card, None, text), *want, "{text:?}");
        }
    }

    #[test]
    fn iban_table() {
        let cases: &[(&str, &[&str])] = &[
            ("DE89370400440532013000", &["DE89370400440532013000"]),
            (
                "iban: DE89 3704 0044 0532 0130 00.",
                &["DE89 3704 0044 0532 0130 00"],
            ),
            (
                "GB82 WEST 1234 5698 7654 32",
                &["GB82 WEST 1234 5698 7654 32"],
            ),
            ("gb82west12345698765432", &["gb82west12345698765432"]),
            ("NO9386011117947", &["NO9386011117947"]),
            ("NO93 8601 1117 947", &["NO93 8601 1117 947"]),
            // A following four-letter word is not part of it.
            (
                "GB82 WEST 1234 5698 7654 32 PAID",
                &["GB82 WEST 1234 5698 7654 32"],
            ),
            (
                "DE89 3704 0044 0532 0130 00 DONE",
                &["DE89 3704 0044 0532 0130 00"],
            ),
            // Bad check digits.
            ("DE88370400440532013000", &[]),
            ("GB82 WEST 1234 5698 7654 33", &[]),
            ("AB12CDEFGHIJKLMNOPQ", &[]),
        ];
        for (text, want) in cases {
            assert_eq!(found(DetectorKind::Iban, None, text), *want, "{text:?}");
        }
    }

    #[test]
    fn national_id_table() {
        let cases: &[(&str, &[&str])] = &[
            ("ssn 123-45-6789", &["123-45-6789"]),
            (
                "078-05-1120 and 219-09-9999",
                &["078-05-1120", "219-09-9999"],
            ),
            ("000-12-3456", &[]),
            ("666-12-3456", &[]),
            ("912-12-3456", &[]),
            ("123-00-4567", &[]),
            ("123-45-0000", &[]),
            ("123456789", &[]),
            ("2024-01-15", &[]),
            ("1234-56-7890", &[]),
            ("nino AB123456C", &["AB123456C"]),
            ("JG 10 37 54 A", &["JG 10 37 54 A"]),
            ("ab123456c", &["ab123456c"]),
            ("QQ123456C", &[]),
            ("AO123456C", &[]),
            ("GB123456A", &[]),
            ("ZZ123456A", &[]),
            ("AB123456E", &[]),
            ("XAB123456C", &[]),
            ("AB123456C and 123-45-6789", &["AB123456C", "123-45-6789"]),
        ];
        for (text, want) in cases {
            let mut got = found(DetectorKind::NationalId, None, text);
            let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            got.sort();
            want.sort();
            assert_eq!(got, want, "{text:?}");
        }
    }

    const JWT_SAMPLE: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";

    #[test]
    fn jwt_table() {
        let bearer = format!("Authorization: Bearer {JWT_SAMPLE}.");
        // {"typ":"JWT"} without alg.
        let no_alg = "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiIxIn0.c2ln";
        // alg none, empty signature.
        let unsigned = "eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.";
        let cases: Vec<(&str, Vec<&str>)> = vec![
            (JWT_SAMPLE, vec![JWT_SAMPLE]),
            (&bearer, vec![JWT_SAMPLE]),
            (unsigned, vec![unsigned]),
            (no_alg, vec![]),
            ("eyJnotbase64!.a.b", vec![]),
            ("eyJhbGciOiJIUzI1NiJ9.only-two", vec![]),
        ];
        for (text, want) in cases {
            assert_eq!(found(DetectorKind::Jwt, None, text), want, "{text:?}");
        }
    }

    #[test]
    fn api_key_table() {
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabc=\n-----END RSA PRIVATE KEY-----";
        let pem_text = format!("key:\n{pem}\ntrailer");
        let truncated = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg";
        let cases: Vec<(String, Vec<&str>)> = vec![
            (
                "OPENAI_API_KEY=sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t".into(),
                vec!["sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t"],
            ),
            (
                "sk-ant-api03-Xy7Zk2Lm9Np4Qr6St8Uv0Wx".into(),
                vec!["sk-ant-api03-Xy7Zk2Lm9Np4Qr6St8Uv0Wx"],
            ),
            ("sk-learn-tutorial-for-beginners-2024".into(), vec![]),
            ("task-Ab3dEf6hIj9kLm2nOp5qRs8tUv".into(), vec![]),
            (
                "stripe sk_live_4eC39HqLyjWDarjtT1zdp7dc".into(),
                vec!["sk_live_4eC39HqLyjWDarjtT1zdp7dc"],
            ),
            (
                "ghp_abcdefghijklmnopqrstuvwxyz0123456789".into(),
                vec!["ghp_abcdefghijklmnopqrstuvwxyz0123456789"],
            ),
            (
                "github_pat_11ABCDEFG0123456789_abcdefghijklmnop".into(),
                vec!["github_pat_11ABCDEFG0123456789_abcdefghijklmnop"],
            ),
            (
                "aws AKIAIOSFODNN7EXAMPLE here".into(),
                vec!["AKIAIOSFODNN7EXAMPLE"],
            ),
            ("AKIAIOSFODNN7EXAMPL".into(), vec![]),
            (
                "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx".into(),
                vec!["xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"],
            ),
            (pem_text, vec![pem]),
            (truncated.into(), vec![truncated]),
            ("just some ordinary sentence of text".into(), vec![]),
        ];
        for (text, want) in cases {
            assert_eq!(found(DetectorKind::ApiKey, None, &text), want, "{text:?}");
        }
    }

    #[test]
    fn custom_regex() {
        assert_eq!(
            found(
                DetectorKind::Regex,
                Some(r"EMP-\d{6}"),
                "ids EMP-123456, EMP-99"
            ),
            vec!["EMP-123456"]
        );
        // Empty matches are ignored.
        assert!(found(DetectorKind::Regex, Some(r"x*"), "abc").is_empty());
    }

    #[test]
    fn luhn_table() {
        for (digits, want) in [
            ("4111111111111111", true),
            ("4111111111111112", false),
            ("378282246310005", true),
            ("0", true),
            ("79927398713", true),
            ("79927398710", false),
        ] {
            assert_eq!(luhn(digits.as_bytes()), want, "{digits}");
        }
    }
}
