//! Masking: column rules (`[[mask]]`) and value detectors (`[[detect]]`) applied by the proxy to everything
//! the server sends back (DataRow values, COPY TO STDOUT rows, ErrorResponse/NoticeResponse text) before it
//! reaches the agent. Pure code, no I/O: the policy builds [`Rules`], the proxy holds a [`Masker`].

mod copy;
mod detect;
pub(crate) mod glob;
mod message;

use std::{borrow::Cow, fmt, sync::Arc};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroize;

use detect::{Detector, RunCache, Stats};
use glob::ColumnPattern;

/// What a redacted value (or span) becomes.
const REDACTED: &str = "***";

/// `mode = "..."` as written in a policy file; [`Mode`] is the validated form.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModeName {
    Redact,
    Partial,
    Hash,
    Null,
}

/// How a masked value is rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// The fixed string `***`.
    Redact,
    /// Every character but the last `keep` replaced by `*` (all of them if the value is not longer than `keep`).
    Partial { keep: usize },
    /// `h:` + 16 hex digits of HMAC-SHA256(key, value): deterministic, so joins and GROUP BY still work.
    Hash,
    /// SQL NULL (for a detector: the whole value becomes NULL).
    Null,
}

/// `detector = "..."` of a `[[detect]]` table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    Email,
    Card,
    Iban,
    NationalId,
    Jwt,
    ApiKey,
    Regex,
}

/// One `[[mask]]` table of a policy file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    pub column: String,
    pub mode: ModeName,
    #[serde(default)]
    pub keep: Option<usize>,
}

/// One `[[detect]]` table of a policy file.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorSpec {
    pub detector: DetectorKind,
    #[serde(default)]
    pub pattern: Option<String>,
    pub mode: ModeName,
    #[serde(default)]
    pub keep: Option<usize>,
}

/// What is wrong with one `[[mask]]` / `[[detect]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecProblem {
    #[error("`column` is empty")]
    EmptyColumn,
    #[error(
        "`column` has an empty part (expected `column`, `table.column` or `schema.table.column`)"
    )]
    EmptyPart,
    #[error("`column` has {0} dot-separated parts, at most 3 are allowed (`schema.table.column`)")]
    TooManyParts(usize),
    #[error("`column` contains the character {0:?}")]
    BadCharacter(char),
    #[error("`keep` is only allowed with mode = \"partial\"")]
    KeepWithoutPartial,
    #[error("mode = \"partial\" requires `keep` (how many trailing characters stay visible)")]
    PartialWithoutKeep,
    #[error("detector = \"regex\" requires `pattern`")]
    MissingPattern,
    #[error("`pattern` is only allowed with detector = \"regex\"")]
    PatternWithoutRegex,
    #[error("`pattern` is empty")]
    EmptyPattern,
    #[error("`pattern` is longer than {max} bytes")]
    PatternTooLong { max: usize },
}

/// Why a COPY row could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowProblem {
    #[error("a backslash ends the data")]
    TrailingBackslash,
    #[error("a quoted field is not terminated")]
    UnterminatedQuote,
}

#[derive(Debug, thiserror::Error)]
pub enum MaskingError {
    #[error("mask[{index}] (column = {column:?}): {problem}")]
    Column {
        index: usize,
        column: String,
        problem: SpecProblem,
    },
    #[error("detect[{index}]: {problem}")]
    Detector { index: usize, problem: SpecProblem },
    #[error("detect[{index}]: invalid regex `pattern`")]
    Pattern {
        index: usize,
        #[source]
        source: regex::Error,
    },
    #[error("detect[{index}]: a built-in detector pattern does not compile")]
    BuiltinPattern {
        index: usize,
        #[source]
        source: regex::Error,
    },
    #[error("COPY row has {found} fields, the result has {expected} columns")]
    FieldCount { expected: usize, found: usize },
    #[error("COPY row cannot be parsed: {0}")]
    Row(RowProblem),
}

fn mode_of(name: &ModeName, keep: Option<usize>) -> Result<Mode, SpecProblem> {
    match (name, keep) {
        (ModeName::Partial, Some(keep)) => Ok(Mode::Partial { keep }),
        (ModeName::Partial, None) => Err(SpecProblem::PartialWithoutKeep),
        (_, Some(_)) => Err(SpecProblem::KeepWithoutPartial),
        (ModeName::Redact, None) => Ok(Mode::Redact),
        (ModeName::Hash, None) => Ok(Mode::Hash),
        (ModeName::Null, None) => Ok(Mode::Null),
    }
}

#[derive(Debug)]
struct ColumnRule {
    pattern: ColumnPattern,
    mode: Mode,
}

#[derive(Debug)]
struct RulesInner {
    columns: Vec<ColumnRule>,
    detectors: Vec<Detector>,
}

/// Compiled rules (from one policy). Cheap to clone (Arc inside) and Send + Sync.
#[derive(Clone, Debug)]
pub struct Rules {
    inner: Arc<RulesInner>,
}

impl Rules {
    /// Index i in `columns` / `detectors` is used in error messages (`mask[i]`, `detect[i]`).
    pub fn build(
        columns: &[ColumnSpec],
        detectors: &[DetectorSpec],
    ) -> Result<Rules, MaskingError> {
        let mut column_rules = Vec::with_capacity(columns.len());
        for (index, spec) in columns.iter().enumerate() {
            let problem = |problem| MaskingError::Column {
                index,
                column: spec.column.clone(),
                problem,
            };
            let pattern = ColumnPattern::parse(&spec.column).map_err(problem)?;
            let mode = mode_of(&spec.mode, spec.keep).map_err(problem)?;
            column_rules.push(ColumnRule { pattern, mode });
        }

        let mut compiled = Vec::with_capacity(detectors.len());
        for (index, spec) in detectors.iter().enumerate() {
            let problem = |problem| MaskingError::Detector { index, problem };
            let mode = mode_of(&spec.mode, spec.keep).map_err(problem)?;
            let pattern = match (&spec.detector, spec.pattern.as_deref()) {
                (DetectorKind::Regex, None) => return Err(problem(SpecProblem::MissingPattern)),
                (DetectorKind::Regex, Some("")) => return Err(problem(SpecProblem::EmptyPattern)),
                (DetectorKind::Regex, Some(p)) if p.len() > detect::USER_PATTERN_MAX_LEN => {
                    return Err(problem(SpecProblem::PatternTooLong {
                        max: detect::USER_PATTERN_MAX_LEN,
                    }))
                }
                (DetectorKind::Regex, Some(p)) => Some(p),
                (_, Some(_)) => return Err(problem(SpecProblem::PatternWithoutRegex)),
                (_, None) => None,
            };
            compiled.push(Detector::build(index, &spec.detector, pattern, mode)?);
        }

        Ok(Rules {
            inner: Arc::new(RulesInner {
                columns: column_rules,
                detectors: compiled,
            }),
        })
    }

    /// No rules: nothing is masked.
    #[allow(
        dead_code,
        reason = "contract API; no daemon caller yet (a policy without tables builds through `build`)"
    )]
    pub fn empty() -> Rules {
        Rules {
            inner: Arc::new(RulesInner {
                columns: Vec::new(),
                detectors: Vec::new(),
            }),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.inner.columns.is_empty() && self.inner.detectors.is_empty()
    }

    pub fn has_column_rules(&self) -> bool {
        !self.inner.columns.is_empty()
    }

    pub fn has_detectors(&self) -> bool {
        !self.inner.detectors.is_empty()
    }

    /// The column rule for a resolved column (lower-case names), first match wins.
    pub fn column_mode(&self, schema: &str, table: &str, column: &str) -> Option<&Mode> {
        self.inner
            .columns
            .iter()
            .find(|rule| rule.pattern.matches(schema, table, column))
            .map(|rule| &rule.mode)
    }

    /// True if some column rule could match a column with this bare name (used by the policy to refuse
    /// statements that read a masked column through an expression, and for columns without table OID).
    pub fn masks_column_named(&self, column: &str) -> bool {
        self.inner
            .columns
            .iter()
            .any(|rule| rule.pattern.matches_column_name(column))
    }
}

/// Applies masking. `key` is the 32-byte keyed-hash key (HMAC-SHA256), zeroed on drop and never printed.
pub struct Masker {
    rules: Rules,
    key: [u8; 32],
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("rules", &self.rules)
            .field("key", &"[redacted]")
            .finish()
    }
}

impl Drop for Masker {
    fn drop(&mut self) {
        self.key.zeroize();
    }
}

impl Masker {
    pub fn new(rules: Rules, key: [u8; 32]) -> Masker {
        Masker { rules, key }
    }

    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// Mask one text-format value with a mode. None = send SQL NULL.
    pub fn apply(&self, mode: &Mode, value: &[u8]) -> Option<Vec<u8>> {
        match mode {
            Mode::Redact => Some(REDACTED.as_bytes().to_vec()),
            Mode::Partial { keep } => Some(match std::str::from_utf8(value) {
                Ok(text) => partial(text, *keep).into_bytes(),
                // Not UTF-8 (a non-UTF8 client_encoding, or octal escapes): no character boundaries to
                // trust, so nothing is kept.
                Err(_) => vec![b'*'; value.len()],
            }),
            Mode::Hash => Some(self.hash(value).into_bytes()),
            Mode::Null => None,
        }
    }

    /// Run the value detectors over a text value; returns Some(masked) if anything matched (with the
    /// detector's mode; a detector in mode `null` makes the whole value None -> Some(None)).
    /// None = nothing detected.
    pub fn detect(&self, value: &str) -> Option<Option<String>> {
        let detectors = &self.rules.inner.detectors;
        if detectors.is_empty() || value.is_empty() {
            return None;
        }
        let mut stats = Stats::of(value);
        let mut runs: RunCache = None;
        let mut current: Cow<'_, str> = Cow::Borrowed(value);
        let mut hit = false;
        for detector in detectors {
            let spans = detector.spans(&current, &stats, &mut runs);
            if spans.is_empty() {
                continue;
            }
            let mode = detector.mode();
            if *mode == Mode::Null {
                return Some(None);
            }
            hit = true;
            let mut out = String::with_capacity(current.len());
            let mut last = 0usize;
            for span in spans {
                // Spans are sorted and disjoint; should two ever overlap, mask their union once.
                let start = span.start.max(last);
                if span.end <= start {
                    continue;
                }
                out.push_str(current.get(last..start).unwrap_or_default());
                out.push_str(
                    &self.mask_span(mode, current.get(start..span.end).unwrap_or_default()),
                );
                last = span.end;
            }
            out.push_str(current.get(last..).unwrap_or_default());
            stats = Stats::of(&out);
            runs = None;
            current = Cow::Owned(out);
        }
        hit.then(|| Some(current.into_owned()))
    }

    /// One COPY TO STDOUT text-format row (PostgreSQL COPY text escaping, tab separated, `\N` null,
    /// trailing \n): per-column mode (None = no column rule), then detectors on every field.
    /// Returns the re-encoded row. Err if the row cannot be parsed (the proxy then ends the statement:
    /// fail closed).
    pub fn copy_text_row(
        &self,
        row: &[u8],
        modes: &[Option<Mode>],
    ) -> Result<Vec<u8>, MaskingError> {
        copy::text_row(self, row, modes)
    }

    /// Same for CSV format (default delimiter ',', quote '"', empty unquoted = NULL).
    pub fn copy_csv_row(
        &self,
        row: &[u8],
        modes: &[Option<Mode>],
    ) -> Result<Vec<u8>, MaskingError> {
        copy::csv_row(self, row, modes)
    }

    /// Free text from ErrorResponse/NoticeResponse fields: detectors, plus for SQLSTATE classes 22 and 23
    /// (data exception / integrity violation) redact quoted values ("..."), `Key (...)=(...)` details
    /// and `Failing row contains (...)` when `column_rules_present`.
    pub fn message_field(
        &self,
        sqlstate: &str,
        field: u8,
        text: &str,
        column_rules_present: bool,
    ) -> String {
        message::field(self, sqlstate, field, text, column_rules_present)
    }

    /// The column mode, then the detectors, on one decoded COPY field (None = SQL NULL).
    /// Returns None when the field is unchanged, Some(None) for NULL, Some(Some(bytes)) for a new value.
    fn mask_field(&self, mode: Option<&Mode>, value: Option<&[u8]>) -> Option<Option<Vec<u8>>> {
        let value = value?;
        match mode {
            Some(mode) => {
                let Some(masked) = self.apply(mode, value) else {
                    return Some(None);
                };
                Some(self.detect_bytes(&masked).unwrap_or(Some(masked)))
            }
            None => self.detect_bytes(value),
        }
    }

    /// [`Masker::detect`] over bytes; text that is not UTF-8 is scanned in its lossy form.
    fn detect_bytes(&self, value: &[u8]) -> Option<Option<Vec<u8>>> {
        if !self.rules.has_detectors() {
            return None;
        }
        let found = match std::str::from_utf8(value) {
            Ok(text) => self.detect(text),
            Err(_) => self.detect(&String::from_utf8_lossy(value)),
        };
        found.map(|v| v.map(String::into_bytes))
    }

    /// A detected span rewritten with a (non-null) mode.
    fn mask_span(&self, mode: &Mode, span: &str) -> String {
        match mode {
            Mode::Partial { keep } => partial(span, *keep),
            Mode::Hash => self.hash(span.as_bytes()),
            Mode::Redact | Mode::Null => REDACTED.to_owned(),
        }
    }

    fn hash(&self, value: &[u8]) -> String {
        let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&self.key) else {
            // HMAC accepts keys of any length; should this ever fail, reveal nothing.
            return REDACTED.to_owned();
        };
        mac.update(value);
        let tag = mac.finalize().into_bytes();
        let mut out = String::with_capacity(18);
        out.push_str("h:");
        for b in tag.iter().take(8) {
            for nibble in [b >> 4, b & 0x0f] {
                if let Some(c) = char::from_digit(u32::from(nibble), 16) {
                    out.push(c);
                }
            }
        }
        out
    }
}

/// All but the last `keep` characters replaced by `*`; everything if the text has at most `keep` characters.
fn partial(text: &str, keep: usize) -> String {
    let chars = text.chars().count();
    let masked = if chars > keep { chars - keep } else { chars };
    let mut out = String::with_capacity(text.len());
    out.extend(std::iter::repeat_n('*', masked));
    if masked < chars {
        let tail = text
            .char_indices()
            .nth(masked)
            .map_or(text.len(), |(i, _)| i);
        out.push_str(text.get(tail..).unwrap_or_default());
    }
    out
}

/// Binary-format values of these types are their UTF-8 text, so the proxy can run [`Masker::apply`] and
/// [`Masker::detect`] on them; any other binary value under a rule is sent as NULL.
pub fn is_text_like_type(oid: u32) -> bool {
    matches!(
        oid,
        18      // char
        | 19    // name
        | 25    // text
        | 114   // json
        | 142   // xml
        | 705   // unknown
        | 1042  // bpchar
        | 1043 // varchar
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn spec(column: &str, mode: ModeName, keep: Option<usize>) -> ColumnSpec {
        ColumnSpec {
            column: column.into(),
            mode,
            keep,
        }
    }

    pub(super) fn det(detector: DetectorKind, mode: ModeName, keep: Option<usize>) -> DetectorSpec {
        DetectorSpec {
            detector,
            pattern: None,
            mode,
            keep,
        }
    }

    const KEY: [u8; 32] = [0xAB; 32];

    fn masker(columns: &[ColumnSpec], detectors: &[DetectorSpec]) -> Masker {
        Masker::new(Rules::build(columns, detectors).unwrap(), KEY)
    }

    #[test]
    fn serde_shapes() {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct File {
            #[serde(default)]
            mask: Vec<ColumnSpec>,
            #[serde(default)]
            detect: Vec<DetectorSpec>,
        }
        let file: File = toml::from_str(
            r#"
            [[mask]]
            column = "users.email"
            mode = "partial"
            keep = 4
            [[mask]]
            column = "*.ssn"
            mode = "null"
            [[detect]]
            detector = "national_id"
            mode = "redact"
            [[detect]]
            detector = "regex"
            pattern = 'EMP-\d{6}'
            mode = "hash"
            [[detect]]
            detector = "api_key"
            mode = "redact"
            "#,
        )
        .unwrap();
        assert_eq!(file.mask.len(), 2);
        assert_eq!(file.detect.len(), 3);
        assert_eq!(file.detect[1].detector, DetectorKind::Regex);
        let rules = Rules::build(&file.mask, &file.detect).unwrap();
        assert_eq!(
            rules.column_mode("public", "users", "email"),
            Some(&Mode::Partial { keep: 4 })
        );

        for bad in [
            "[[mask]]\ncolumn = \"a\"\nmode = \"redact\"\nkeeps = 1",
            "[[mask]]\ncolumn = \"a\"\nmode = \"scramble\"",
            "[[detect]]\ndetector = \"phone\"\nmode = \"redact\"",
            "[[detect]]\ndetector = \"email\"\nmode = \"redact\"\nwhat = 1",
        ] {
            assert!(toml::from_str::<File>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn build_errors_name_the_entry() {
        let ok = spec("email", ModeName::Redact, None);
        let cases: Vec<(Vec<ColumnSpec>, Vec<DetectorSpec>, &str)> = vec![
            (
                vec![ok.clone(), spec("users.", ModeName::Redact, None)],
                vec![],
                "mask[1] (column = \"users.\"): `column` has an empty part",
            ),
            (
                vec![spec("a.b.c.d", ModeName::Redact, None)],
                vec![],
                "mask[0] (column = \"a.b.c.d\"): `column` has 4 dot-separated parts",
            ),
            (
                vec![spec("", ModeName::Redact, None)],
                vec![],
                "mask[0] (column = \"\"): `column` is empty",
            ),
            (
                vec![spec("email", ModeName::Redact, Some(2))],
                vec![],
                "mask[0] (column = \"email\"): `keep` is only allowed with mode = \"partial\"",
            ),
            (
                vec![spec("email", ModeName::Partial, None)],
                vec![],
                "mask[0] (column = \"email\"): mode = \"partial\" requires `keep`",
            ),
            (
                vec![ok.clone()],
                vec![
                    det(DetectorKind::Email, ModeName::Redact, None),
                    det(DetectorKind::Regex, ModeName::Redact, None),
                ],
                "detect[1]: detector = \"regex\" requires `pattern`",
            ),
            (
                vec![],
                vec![DetectorSpec {
                    pattern: Some("x".into()),
                    ..det(DetectorKind::Email, ModeName::Redact, None)
                }],
                "detect[0]: `pattern` is only allowed with detector = \"regex\"",
            ),
            (
                vec![],
                vec![DetectorSpec {
                    pattern: Some(String::new()),
                    ..det(DetectorKind::Regex, ModeName::Redact, None)
                }],
                "detect[0]: `pattern` is empty",
            ),
            (
                vec![],
                vec![DetectorSpec {
                    pattern: Some("a(".into()),
                    ..det(DetectorKind::Regex, ModeName::Redact, None)
                }],
                "detect[0]: invalid regex `pattern`",
            ),
            (
                vec![],
                vec![DetectorSpec {
                    // Compiles to far more than the size limit.
                    pattern: Some(r"\w{1000}\w{1000}\w{1000}".into()),
                    ..det(DetectorKind::Regex, ModeName::Redact, None)
                }],
                "detect[0]: invalid regex `pattern`",
            ),
            (
                vec![],
                vec![DetectorSpec {
                    pattern: Some("x".repeat(5000)),
                    ..det(DetectorKind::Regex, ModeName::Redact, None)
                }],
                "detect[0]: `pattern` is longer than 4096 bytes",
            ),
            (
                vec![],
                vec![det(DetectorKind::Card, ModeName::Hash, Some(4))],
                "detect[0]: `keep` is only allowed",
            ),
        ];
        for (columns, detectors, want) in cases {
            let err = Rules::build(&columns, &detectors).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err:?} should start with {want:?}");
        }
    }

    #[test]
    fn rules_queries() {
        let rules = Rules::build(
            &[
                spec("public.users.email", ModeName::Hash, None),
                spec("users.*", ModeName::Redact, None),
                spec("ssn", ModeName::Null, None),
                spec("*.card_*", ModeName::Partial, Some(4)),
            ],
            &[],
        )
        .unwrap();
        assert!(!rules.is_empty());
        assert!(rules.has_column_rules());
        assert!(!rules.has_detectors());
        let cases: &[(&str, &str, &str, Option<Mode>)] = &[
            ("public", "users", "email", Some(Mode::Hash)),
            ("crm", "users", "email", Some(Mode::Redact)),
            ("crm", "users", "name", Some(Mode::Redact)),
            ("hr", "people", "ssn", Some(Mode::Null)),
            (
                "hr",
                "cards",
                "card_number",
                Some(Mode::Partial { keep: 4 }),
            ),
            ("hr", "people", "name", None),
            ("public", "orders", "email", None),
        ];
        for (schema, table, column, want) in cases {
            assert_eq!(
                rules.column_mode(schema, table, column),
                want.as_ref(),
                "{schema}.{table}.{column}"
            );
        }
        assert!(rules.masks_column_named("email"));
        assert!(rules.masks_column_named("ssn"));
        assert!(rules.masks_column_named("card_no"));
        // `users.*` masks every column name of some table.
        assert!(rules.masks_column_named("anything"));

        let narrow = Rules::build(&[spec("users.email", ModeName::Redact, None)], &[]).unwrap();
        assert!(narrow.masks_column_named("email"));
        assert!(narrow.masks_column_named("EMAIL"));
        assert!(!narrow.masks_column_named("users"));
        assert!(!narrow.masks_column_named("name"));

        let empty = Rules::empty();
        assert!(empty.is_empty());
        assert!(!empty.has_column_rules() && !empty.has_detectors());
        assert_eq!(empty.column_mode("public", "users", "email"), None);
        assert!(!empty.masks_column_named("email"));
    }

    #[test]
    fn apply_modes() {
        let m = masker(&[], &[]);
        let cases: &[(Mode, &str, Option<&str>)] = &[
            (Mode::Redact, "alice@example.com", Some("***")),
            (Mode::Redact, "", Some("***")),
            (Mode::Null, "alice", None),
            (
                Mode::Partial { keep: 4 },
                "4111111111111111",
                Some("************1111"),
            ),
            (Mode::Partial { keep: 4 }, "abcd", Some("****")),
            (Mode::Partial { keep: 4 }, "abc", Some("***")),
            (Mode::Partial { keep: 4 }, "", Some("")),
            (Mode::Partial { keep: 0 }, "secret", Some("******")),
            // Multi-byte characters are kept or masked whole.
            (
                Mode::Partial { keep: 2 },
                "Zoë Ångström",
                Some("**********öm"),
            ),
            (
                Mode::Partial { keep: 3 },
                "日本語テキスト",
                Some("****キスト"),
            ),
            (Mode::Partial { keep: 1 }, "🙂🙃", Some("*🙃")),
        ];
        for (mode, value, want) in cases {
            let got = m.apply(mode, value.as_bytes());
            assert_eq!(
                got.as_deref(),
                want.map(str::as_bytes),
                "{mode:?} on {value:?}"
            );
        }
        // Invalid UTF-8 under partial: nothing kept.
        assert_eq!(
            m.apply(&Mode::Partial { keep: 2 }, b"ab\xffcd"),
            Some(b"*****".to_vec())
        );
    }

    #[test]
    fn hash_is_keyed_and_deterministic() {
        let m = masker(&[], &[]);
        let a = m.apply(&Mode::Hash, b"alice@example.com").unwrap();
        let b = m.apply(&Mode::Hash, b"alice@example.com").unwrap();
        let c = m.apply(&Mode::Hash, b"bob@example.com").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        let a = String::from_utf8(a).unwrap();
        assert_eq!(a.len(), 18);
        assert!(a.starts_with("h:"));
        assert!(a[2..]
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        // Reference: first 8 bytes of HMAC-SHA256(KEY, value), hex.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&KEY).unwrap();
        mac.update(b"alice@example.com");
        let want = format!("h:{}", hex::encode(&mac.finalize().into_bytes()[..8]));
        assert_eq!(a, want);
        let other = Masker::new(Rules::empty(), [7; 32]);
        assert_ne!(
            other.apply(&Mode::Hash, b"alice@example.com").unwrap(),
            a.into_bytes()
        );
    }

    #[test]
    fn debug_never_prints_the_key() {
        let m = masker(
            &[spec("email", ModeName::Hash, None)],
            &[det(DetectorKind::Email, ModeName::Hash, None)],
        );
        let debug = format!("{m:?} {:?} {:#?}", m.rules(), m);
        assert!(debug.contains("[redacted]"), "{debug}");
        for leak in ["171", "0xab", "0xAB", "abab", "ABAB", "ab, ab"] {
            assert!(!debug.contains(leak), "{leak:?} in {debug}");
        }
    }

    #[test]
    fn detect_runs_every_detector() {
        let m = masker(
            &[],
            &[
                det(DetectorKind::Email, ModeName::Redact, None),
                det(DetectorKind::Card, ModeName::Partial, Some(4)),
                det(DetectorKind::Iban, ModeName::Redact, None),
                det(DetectorKind::NationalId, ModeName::Redact, None),
                det(DetectorKind::Jwt, ModeName::Redact, None),
                det(DetectorKind::ApiKey, ModeName::Redact, None),
            ],
        );
        let cases: &[(&str, Option<&str>)] = &[
            ("nothing to see", None),
            ("", None),
            ("42", None),
            ("order 1234567890123456 shipped", None),
            (
                "Mail alice@example.com about card 4111 1111 1111 1111.",
                Some("Mail *** about card ***************1111."),
            ),
            (
                "IBAN DE89 3704 0044 0532 0130 00, SSN 123-45-6789",
                Some("IBAN ***, SSN ***"),
            ),
            ("key=AKIAIOSFODNN7EXAMPLE;", Some("key=***;")),
            ("SHOUT ALICE@EXAMPLE.COM", Some("SHOUT ***")),
            ("cc:4111111111111111;", Some("cc:************1111;")),
            (
                "https://api.example.com/v1?key=AKIAIOSFODNN7EXAMPLE&x=1",
                Some("https://api.example.com/v1?key=***&x=1"),
            ),
            (
                r#"{"user":"bob@corp.example","card":"5555-5555-5555-4444","ssn":"219-09-9999"}"#,
                Some(r#"{"user":"***","card":"***************4444","ssn":"***"}"#),
            ),
            (
                r#"{"auth":"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"}"#,
                Some(r#"{"auth":"***"}"#),
            ),
            // Look-alikes stay: Luhn-invalid, SSN with area 666, version strings, dates, UUIDs.
            (
                "ref 4111 1111 1111 1112, 666-12-3456, v1.2.3, 2024-01-15, 550e8400-e29b-41d4-a716-446655440000",
                None,
            ),
            ("Zoë <zoe@exämple.de> zoe@example.de", Some("Zoë <***> ***")),
        ];
        for (value, want) in cases {
            assert_eq!(
                m.detect(value),
                want.map(|w| Some(w.to_owned())),
                "{value:?}"
            );
        }
    }

    #[test]
    fn detect_null_mode_nulls_the_value() {
        let m = masker(
            &[],
            &[
                det(DetectorKind::Email, ModeName::Redact, None),
                det(DetectorKind::ApiKey, ModeName::Null, None),
            ],
        );
        assert_eq!(
            m.detect("token ghp_abcdefghijklmnopqrstuvwxyz0123456789"),
            Some(None)
        );
        assert_eq!(m.detect("a@b.io"), Some(Some("***".into())));
        assert_eq!(m.detect("plain"), None);
    }

    #[test]
    fn detect_hash_mode_hashes_the_span() {
        let m = masker(&[], &[det(DetectorKind::Email, ModeName::Hash, None)]);
        let direct =
            String::from_utf8(m.apply(&Mode::Hash, b"alice@example.com").unwrap()).unwrap();
        assert_eq!(
            m.detect("to: alice@example.com"),
            Some(Some(format!("to: {direct}")))
        );
    }

    #[test]
    fn detectors_see_the_text_rewritten_by_earlier_ones() {
        // The first detector changes lengths (hash output); the second must still find its span.
        let m = masker(
            &[],
            &[
                det(DetectorKind::Email, ModeName::Hash, None),
                det(DetectorKind::Card, ModeName::Redact, None),
                det(DetectorKind::Email, ModeName::Redact, None),
            ],
        );
        let hashed =
            String::from_utf8(m.apply(&Mode::Hash, "zoë@exämple.de".as_bytes()).unwrap()).unwrap();
        assert_eq!(
            m.detect("zoë@exämple.de paid with 4111 1111 1111 1111"),
            Some(Some(format!("{hashed} paid with ***")))
        );
    }

    #[test]
    fn detect_user_regex() {
        let m = masker(
            &[],
            &[DetectorSpec {
                pattern: Some(r"(?i)emp-\d{6}".into()),
                ..det(DetectorKind::Regex, ModeName::Partial, Some(2))
            }],
        );
        assert_eq!(
            m.detect("badge EMP-123456 ok"),
            Some(Some("badge ********56 ok".into()))
        );
        assert_eq!(m.detect("badge EMP-12 ok"), None);
    }

    #[test]
    fn text_like_types() {
        for oid in [18, 19, 25, 114, 142, 705, 1042, 1043] {
            assert!(is_text_like_type(oid), "{oid}");
        }
        // int4, bytea, jsonb (binary has a version byte), uuid, numeric, text[]
        for oid in [23, 17, 3802, 2950, 1700, 1009] {
            assert!(!is_text_like_type(oid), "{oid}");
        }
    }

    #[test]
    fn rules_are_send_sync_and_cheap_to_clone() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Rules>();
        assert_send_sync::<Masker>();
        let rules = Rules::build(&[spec("email", ModeName::Redact, None)], &[]).unwrap();
        let clone = rules.clone();
        assert!(Arc::ptr_eq(&rules.inner, &clone.inner));
    }
}
