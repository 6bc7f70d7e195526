//! Policy files (`policies/*.toml`): the TOML format, its validation, and the conversion into a
//! compiled [`Policy`]. Every error names the file and the line of the offending table or key.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{glob::Glob, Action, Kind, Options, Policy, Rule};
use crate::masking::{ColumnSpec, DetectorSpec, MaskingError, Rules};

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{}: cannot read the policy file: {source}", file.display())]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} line {line}: {}", file.display(), source.message().trim().replace('\n', "; "))]
    Syntax {
        file: PathBuf,
        line: usize,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{} line {line}: {problem}", file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        problem: Problem,
    },
    #[error("{} line {line}: {source}", file.display())]
    Masking {
        file: PathBuf,
        line: usize,
        #[source]
        source: MaskingError,
    },
}

/// What is wrong with a policy file that is valid TOML.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("policy name `{name}` must equal the file name `{stem}`")]
    NameMismatch { name: String, stem: String },
    #[error("policy name `{0}` must be 1-64 characters of [A-Za-z0-9_-]")]
    BadPolicyName(String),
    #[error("rule name `{0}` must be 1-64 characters of [a-z0-9_-]")]
    BadRuleName(String),
    #[error("rule name `default` is reserved for the [policy] default")]
    ReservedRuleName,
    #[error("duplicate rule name `{name}` (first used on line {first_line})")]
    DuplicateRule { name: String, first_line: usize },
    #[error("`{key}` is an empty list; omit the key to match anything")]
    EmptyList { key: &'static str },
    #[error(
        "table pattern `{0}` must be `*` or `schema.table` in lower case (globs allowed: `public.*`, `*.users`)"
    )]
    BadTablePattern(String),
    #[error(
        "function pattern `{0}` must be a bare lower-case function name (globs allowed: `pg_sleep`, `lo_*`)"
    )]
    BadFunctionPattern(String),
    #[error("`without_where = true` only matches update and delete statements, but `kinds` lists neither")]
    WithoutWhereKinds,
    #[error("`{key}` entry `{name}` must be a lower-case name of [a-z0-9_$.]")]
    BadAllowName { key: &'static str, name: String },
    #[error("`protocol = {found:?}`: {expected}")]
    Protocol {
        found: String,
        expected: &'static str,
    },
    #[error("[policy] has no `protocol`: an SSH policy file says `protocol = \"ssh\"` (without it the file is a SQL policy)")]
    MissingSshProtocol,
    #[error(
        "rule name `{0}` is reserved (the [policy] default, [shell] and [sftp] decisions use it)"
    )]
    ReservedSshRuleName(String),
    #[error("command pattern `{pattern}`: {why}")]
    BadCommandPattern { pattern: String, why: String },
    #[error("path pattern `{pattern}`: {why}")]
    BadPathPattern { pattern: String, why: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    policy: Spanned<Header>,
    #[serde(default)]
    rule: Vec<Spanned<RuleSpec>>,
    #[serde(default)]
    mask: Vec<Spanned<ColumnSpec>>,
    #[serde(default)]
    detect: Vec<Spanned<DetectorSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    name: Spanned<String>,
    /// Absent or "postgres" (checked before this parse); SSH policy files say "ssh" and are
    /// read by `policy::ssh`.
    #[serde(default)]
    #[allow(dead_code)]
    protocol: Option<Spanned<String>>,
    #[serde(default)]
    description: String,
    default: Action,
    #[serde(default)]
    allow_functions: Vec<Spanned<String>>,
    #[serde(default)]
    allow_settings: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    name: Spanned<String>,
    action: Action,
    #[serde(default)]
    kinds: Option<Spanned<Vec<Kind>>>,
    #[serde(default)]
    tables: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    functions: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    without_where: Option<Spanned<bool>>,
}

/// Reads and compiles a policy file.
pub fn load(path: &Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        file: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// What the SQL and SSH policy loaders share: the file (named in errors), its text (for line
/// numbers), the TOML parse and the policy-name checks.
pub(super) struct Source<'a> {
    pub file: &'a Path,
    pub text: &'a str,
}

impl Source<'_> {
    /// The 1-based line a byte span starts on.
    pub fn line_of(&self, span: std::ops::Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text
            .get(..end)
            .map_or(1, |t| t.matches('\n').count() + 1)
    }

    pub fn invalid(&self, span: std::ops::Range<usize>, problem: Problem) -> PolicyError {
        PolicyError::Invalid {
            file: self.file.to_owned(),
            line: self.line_of(span),
            problem,
        }
    }

    /// The whole file as `T` (unknown keys are refused by `T`), a syntax error naming the line.
    pub fn doc<T: serde::de::DeserializeOwned>(&self) -> Result<T, PolicyError> {
        toml::from_str(self.text).map_err(|source: toml::de::Error| PolicyError::Syntax {
            file: self.file.to_owned(),
            line: source.span().map_or(1, |s| self.line_of(s)),
            source: Box::new(source),
        })
    }

    /// A policy name is 1-64 of [A-Za-z0-9_-] and equals the file's stem.
    pub fn check_name(&self, name: &Spanned<String>) -> Result<(), PolicyError> {
        let text = name.get_ref();
        if !is_name(text, |c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
            return Err(self.invalid(name.span(), Problem::BadPolicyName(text.clone())));
        }
        let stem = self
            .file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if *text != stem {
            return Err(self.invalid(
                name.span(),
                Problem::NameMismatch {
                    name: text.clone(),
                    stem,
                },
            ));
        }
        Ok(())
    }
}

/// Compiles the text of a policy file; `file` names it in errors and its stem must equal the
/// policy's name.
pub fn parse(file: &Path, text: &str) -> Result<Policy, PolicyError> {
    let src = Source { file, text };
    let invalid = |span: std::ops::Range<usize>, problem: Problem| src.invalid(span, problem);

    // Before the strict parse: an SSH policy here should say so, not name its first SSH key.
    if let Some(p) = super::ssh::declared_protocol(text).filter(|p| p.get_ref() != "postgres") {
        return Err(invalid(
            p.span(),
            Problem::Protocol {
                found: p.get_ref().clone(),
                expected: "a SQL policy has no `protocol` key or `protocol = \"postgres\"` (an SSH policy belongs to an ssh resource)",
            },
        ));
    }
    let doc: Doc = src.doc()?;

    let header = doc.policy.into_inner();
    src.check_name(&header.name)?;
    let allow = |key: &'static str, list: Vec<Spanned<String>>| {
        list.into_iter()
            .map(|n| {
                if is_name(n.get_ref(), |c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '$' | '.')
                }) {
                    Ok(n.into_inner())
                } else {
                    Err(invalid(
                        n.span(),
                        Problem::BadAllowName {
                            key,
                            name: n.into_inner(),
                        },
                    ))
                }
            })
            .collect::<Result<Vec<_>, _>>()
    };
    let options = Options {
        allow_functions: allow("allow_functions", header.allow_functions)?,
        allow_settings: allow("allow_settings", header.allow_settings)?,
    };

    let mut rules: Vec<Rule> = Vec::with_capacity(doc.rule.len());
    let mut seen: Vec<(String, usize)> = Vec::new();
    for spec in doc.rule {
        let spec = spec.into_inner();
        let rule_name = spec.name.get_ref();
        if rule_name == "default" {
            return Err(invalid(spec.name.span(), Problem::ReservedRuleName));
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

        let kinds = match &spec.kinds {
            None => Kind::ALL_BITS,
            Some(k) if k.get_ref().is_empty() => {
                return Err(invalid(k.span(), Problem::EmptyList { key: "kinds" }))
            }
            Some(k) => k.get_ref().iter().fold(0, |bits, kind| bits | kind.bit()),
        };
        let without_where = spec.without_where.as_ref().is_some_and(|w| *w.get_ref());
        if without_where && kinds & (Kind::Update.bit() | Kind::Delete.bit()) == 0 {
            let span = spec
                .without_where
                .as_ref()
                .map_or(spec.name.span(), Spanned::span);
            return Err(invalid(span, Problem::WithoutWhereKinds));
        }
        let tables = patterns(spec.tables, "tables", is_table_pattern, |p| {
            Problem::BadTablePattern(p)
        })
        .map_err(|(span, p)| invalid(span, p))?;
        let functions = patterns(spec.functions, "functions", is_function_pattern, |p| {
            Problem::BadFunctionPattern(p)
        })
        .map_err(|(span, p)| invalid(span, p))?;
        rules.push(Rule {
            name: spec.name.into_inner(),
            action: spec.action,
            kinds,
            tables,
            functions,
            without_where,
        });
    }

    let mask_lines: Vec<usize> = doc.mask.iter().map(|m| src.line_of(m.span())).collect();
    let detect_lines: Vec<usize> = doc.detect.iter().map(|d| src.line_of(d.span())).collect();
    let columns: Vec<ColumnSpec> = doc.mask.into_iter().map(Spanned::into_inner).collect();
    let detectors: Vec<DetectorSpec> = doc.detect.into_iter().map(Spanned::into_inner).collect();
    let masking = Rules::build(&columns, &detectors).map_err(|source| {
        let line = match &source {
            MaskingError::Column { index, .. } => mask_lines.get(*index).copied(),
            MaskingError::Detector { index, .. }
            | MaskingError::Pattern { index, .. }
            | MaskingError::BuiltinPattern { index, .. } => detect_lines.get(*index).copied(),
            _ => None,
        };
        PolicyError::Masking {
            file: file.to_owned(),
            line: line.unwrap_or(1),
            source,
        }
    })?;

    Ok(Policy {
        name: header.name.into_inner(),
        description: header.description,
        default: header.default,
        masking,
        rules,
        options,
    })
}

type PatternError = (std::ops::Range<usize>, Problem);

fn patterns(
    list: Option<Spanned<Vec<Spanned<String>>>>,
    key: &'static str,
    valid: fn(&str) -> bool,
    problem: fn(String) -> Problem,
) -> Result<Option<Vec<Glob>>, PatternError> {
    let Some(list) = list else {
        return Ok(None);
    };
    if list.get_ref().is_empty() {
        return Err((list.span(), Problem::EmptyList { key }));
    }
    list.into_inner()
        .into_iter()
        .map(|p| {
            if valid(p.get_ref()) {
                Ok(Glob::new(p.get_ref()))
            } else {
                Err((p.span(), problem(p.into_inner())))
            }
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn is_name(s: &str, ok: impl Fn(char) -> bool) -> bool {
    (1..=64).contains(&s.len()) && s.chars().all(ok)
}

fn pattern_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '$' | '*' | '?')
}

/// `*`, or `schema.table` with lower-case parts and globs.
fn is_table_pattern(p: &str) -> bool {
    if p == "*" {
        return true;
    }
    let mut parts = p.split('.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(s), Some(t), None) => {
            !s.is_empty() && !t.is_empty() && s.chars().chain(t.chars()).all(pattern_char)
        }
        _ => false,
    }
}

fn is_function_pattern(p: &str) -> bool {
    !p.is_empty() && p.len() <= 128 && p.chars().all(pattern_char)
}
