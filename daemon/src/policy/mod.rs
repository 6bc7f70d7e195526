//! Policy: every SQL text an agent sends (a simple Query, or a Parse in the extended protocol)
//! becomes a [`Decision`] — allow, deny or approve — before the proxy forwards it upstream.
//!
//! Pipeline for one message (`Policy::decide`): [`lex`] tokenizes it once, refuses what is too
//! large, too deeply chained or misread by the parser, and splits it into statements; each
//! statement is parsed by sqlparser (PostgreSQL dialect, recursion limit); [`facts`] walks the AST
//! for the statement's kinds, tables and functions and the built-in denials ([`builtin`]);
//! [`masked`] refuses expressions that would carry a masked column past the proxy's masking;
//! then the policy's rules decide each kind, and the strictest verdict of all statements wins
//! (deny > approve > allow). Anything that cannot be parsed is denied, never passed through.
//!
//! Rule matching:
//! - rules are tried in file order for every kind a statement has; the first match decides,
//!   otherwise `default`. A statement's kinds are all kinds inside it: `WITH d AS (DELETE …)
//!   SELECT …` is select *and* delete, `EXPLAIN ANALYZE x` is explain plus x's kinds, `PREPARE p AS
//!   x` is prepare plus x's kinds, `SELECT … INTO` and `CREATE TABLE AS` are ddl, `COPY … FROM STDIN`
//!   is copy and insert, `COPY … TO STDOUT` is copy and select. TRUNCATE is delete without WHERE.
//! - `tables`: in an allow rule every table the statement references must match a pattern; in a
//!   deny or approve rule one is enough. Tables are `schema.table` from anywhere in the statement
//!   (CTEs, subqueries, joins, set operations, DML sources and targets); unquoted identifiers are
//!   lower-cased, quoted ones kept as written; an unqualified name is `public.name` (and also
//!   `pg_catalog.name` when it starts with `pg_`, as PostgreSQL searches pg_catalog first).
//! - `functions`: matches when any called function's name (last name part) matches.
//! - `without_where`: matches UPDATE/DELETE parts that have no WHERE clause, or one without any
//!   column reference (`WHERE true`).
//!
//! Built-in denials (`builtin/<what>`) come before any rule: dangerous functions anywhere,
//! security settings (SET / RESET / set_config), COPY to or from server files or programs, LOAD,
//! unparseable or oversized text. The masked-expression check runs for statements the rules
//! would allow or approve, when the policy has column masking rules.
//!
//! Known limits (documented, not enforced here): predicates are not masked, so WHERE / ORDER BY
//! on a masked column can be used as an oracle; what user-defined functions, views and DO
//! blocks do inside the server is not visible; the search_path a role or database is configured
//! with is assumed to resolve unqualified names in `public`.

mod builtin;
mod facts;
mod file;
mod glob;
mod lex;
mod masked;
pub mod shape;
pub mod ssh;
#[cfg(test)]
mod tests;

use std::fmt;

use sqlparser::{
    ast::{Ident, ObjectName},
    dialect::PostgreSqlDialect,
    keywords::Keyword,
    parser::{Parser, ParserError},
    tokenizer::{Token, TokenWithSpan},
};

/// Why a start-up parameter's value is refused, if it is: the same rules as
/// `SET name = 'value'` (a start-up packet sets parameters as if by SET, and
/// the policy reads every later statement under them).
pub fn startup_setting_problem(name: &str, value: &str) -> Option<&'static str> {
    builtin::setting_problem(
        &name.to_ascii_lowercase(),
        builtin::NewValue::Text(Some(value)),
    )
}

// `parse` and the error types are API for callers that hold the text themselves (tests, tools).
#[allow(unused_imports)]
pub use file::{load, parse, PolicyError, Problem};

use facts::{Builtin, Facts, Lead, Part};
use glob::Glob;

/// Parser recursion limit: deeper nesting (parentheses, subqueries) is denied.
const RECURSION_LIMIT: usize = 64;

/// The verdict of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
    Approve,
}

impl Action {
    /// deny > approve > allow.
    fn severity(self) -> u8 {
        match self {
            Action::Allow => 0,
            Action::Approve => 1,
            Action::Deny => 2,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Approve => "approve",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a statement does, as rules name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    /// CREATE / ALTER / DROP / COMMENT and other schema changes, SELECT INTO, CREATE TABLE AS.
    Ddl,
    /// GRANT, REVOKE, CREATE/ALTER/DROP ROLE or USER, row-level-security policies.
    Dcl,
    Copy,
    /// BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE, SET TRANSACTION.
    Transaction,
    /// SET, RESET, DISCARD.
    Set,
    Show,
    Call,
    /// DO blocks (their code is a string the policy cannot see into).
    Do,
    /// PREPARE, DEALLOCATE.
    Prepare,
    /// EXECUTE of a prepared statement.
    Execute,
    Explain,
    /// LISTEN, UNLISTEN, NOTIFY.
    Listen,
    Lock,
    /// VACUUM, ANALYZE.
    Vacuum,
    Other,
}

impl Kind {
    const ALL: [Kind; 20] = [
        Kind::Select,
        Kind::Insert,
        Kind::Update,
        Kind::Delete,
        Kind::Merge,
        Kind::Ddl,
        Kind::Dcl,
        Kind::Copy,
        Kind::Transaction,
        Kind::Set,
        Kind::Show,
        Kind::Call,
        Kind::Do,
        Kind::Prepare,
        Kind::Execute,
        Kind::Explain,
        Kind::Listen,
        Kind::Lock,
        Kind::Vacuum,
        Kind::Other,
    ];
    const ALL_BITS: u32 = (1 << Kind::ALL.len()) - 1;

    fn bit(self) -> u32 {
        1 << (self as u32)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Select => "select",
            Kind::Insert => "insert",
            Kind::Update => "update",
            Kind::Delete => "delete",
            Kind::Merge => "merge",
            Kind::Ddl => "ddl",
            Kind::Dcl => "dcl",
            Kind::Copy => "copy",
            Kind::Transaction => "transaction",
            Kind::Set => "set",
            Kind::Show => "show",
            Kind::Call => "call",
            Kind::Do => "do",
            Kind::Prepare => "prepare",
            Kind::Execute => "execute",
            Kind::Explain => "explain",
            Kind::Listen => "listen",
            Kind::Lock => "lock",
            Kind::Vacuum => "vacuum",
            Kind::Other => "other",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A compiled policy file. Immutable, Send + Sync; `decide` never panics.
#[derive(Debug)]
pub struct Policy {
    pub name: String,
    /// Free text from the file, for people and tools.
    #[allow(dead_code)]
    pub description: String,
    /// The verdict when no rule matches.
    pub default: Action,
    pub masking: crate::masking::Rules,
    rules: Vec<Rule>,
    options: Options,
}

/// Opt-outs of built-in denials, by exact (lower-case) name.
#[derive(Debug, Default)]
struct Options {
    allow_functions: Vec<String>,
    allow_settings: Vec<String>,
}

#[derive(Debug)]
struct Rule {
    name: String,
    action: Action,
    /// Bit set of [`Kind::bit`].
    kinds: u32,
    tables: Option<Vec<Glob>>,
    functions: Option<Vec<Glob>>,
    without_where: bool,
}

impl Rule {
    fn matches(&self, part: Part, facts: &Facts) -> bool {
        if self.kinds & part.kind.bit() == 0 || (self.without_where && !part.without_where) {
            return false;
        }
        if let Some(globs) = &self.tables {
            let hit = |t: &String| globs.iter().any(|g| g.matches(t));
            let ok = match self.action {
                // An allow must cover every table the statement touches.
                Action::Allow => facts.tables.iter().all(hit),
                Action::Deny | Action::Approve => facts.tables.iter().any(hit),
            };
            if !ok {
                return false;
            }
        }
        if let Some(globs) = &self.functions {
            if !facts
                .functions
                .iter()
                .any(|f| globs.iter().any(|g| g.matches(f)))
            {
                return false;
            }
        }
        true
    }
}

/// What the policy says about one message's SQL text (one or more statements).
#[derive(Debug, Clone)]
pub struct Decision {
    pub action: Action,
    /// `<policy>/<rule>`, or `<policy>/default`, or `builtin/<what>` (parse-error,
    /// dangerous-function, masked-expression, ...).
    pub rule: String,
    /// Human sentence for the agent's ErrorResponse and the audit: what was denied and why.
    pub reason: String,
    /// One per statement, in order.
    pub statements: Vec<StatementInfo>,
}

#[derive(Debug, Clone)]
pub struct StatementInfo {
    pub kind: Kind,
    /// Tables referenced, as `schema.table` lower-case (for the audit).
    #[allow(dead_code)]
    pub tables: Vec<String>,
    /// COPY ... TO STDOUT: which table and columns (empty = all columns in table order), or a query.
    pub copy_out: Option<CopyOut>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOut {
    Table {
        schema: String,
        table: String,
        columns: Vec<String>,
        format: CopyFormat,
    },
    Query {
        format: CopyFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    Text,
    Csv,
    Binary,
    /// Text or csv with DELIMITER, QUOTE, ESCAPE, NULL, FORCE_* or
    /// ENCODING: framed otherwise than Cordon's COPY reader splits rows.
    Reframed,
}

/// The verdict on one statement.
#[derive(Debug)]
struct Verdict {
    action: Action,
    rule: String,
    reason: String,
}

impl Verdict {
    fn builtin(b: Builtin) -> Verdict {
        Verdict {
            action: Action::Deny,
            rule: format!("builtin/{}", b.rule),
            reason: format!("builtin rule {}: {}", b.rule, b.reason),
        }
    }
}

impl Policy {
    /// Parses (PostgreSQL dialect, recursion limit, 1 MiB text limit) and decides. Never panics.
    /// Unparseable -> Deny (`builtin/parse-error`). Empty query -> Allow with no statements.
    /// Also what the proxy calls for `Parse` in the extended protocol, where PostgreSQL itself
    /// accepts exactly one statement.
    pub fn decide(&self, sql: &str) -> Decision {
        let pieces = match lex::split(sql) {
            Ok(pieces) => pieces,
            Err(e) => {
                let rule = match e {
                    lex::LexError::TooLarge { .. } => "too-large",
                    lex::LexError::TooComplex { .. } => "too-complex",
                    lex::LexError::Tokenize(_) | lex::LexError::UnicodeIdentifier => "parse-error",
                };
                let v = Verdict::builtin(Builtin {
                    rule,
                    reason: format!("the SQL text is denied: {e}"),
                });
                return Decision {
                    action: v.action,
                    rule: v.rule,
                    reason: v.reason,
                    statements: Vec::new(),
                };
            }
        };
        if pieces.is_empty() {
            return Decision {
                action: Action::Allow,
                rule: "builtin/empty-query".into(),
                reason: "empty query".into(),
                statements: Vec::new(),
            };
        }

        let total = pieces.len();
        let mut statements = Vec::with_capacity(total);
        let mut worst: Option<(usize, Verdict)> = None;
        for (i, piece) in pieces.into_iter().enumerate() {
            let (info, verdict) = self.decide_one(piece);
            statements.push(info);
            if worst
                .as_ref()
                .is_none_or(|(_, w)| verdict.action.severity() > w.action.severity())
            {
                worst = Some((i, verdict));
            }
        }
        let Some((index, verdict)) = worst else {
            // Unreachable: `pieces` is not empty. Fail closed all the same.
            return Decision {
                action: Action::Deny,
                rule: "builtin/internal".into(),
                reason: "builtin rule internal: no verdict".into(),
                statements,
            };
        };
        let reason = if total > 1 && verdict.action != Action::Allow {
            format!("{} (statement {} of {total})", verdict.reason, index + 1)
        } else {
            verdict.reason
        };
        Decision {
            action: verdict.action,
            rule: verdict.rule,
            reason,
            statements,
        }
    }

    fn decide_one(&self, piece: lex::Piece) -> (StatementInfo, Verdict) {
        let tokens = match piece {
            lex::Piece::Do => {
                let facts = facts::opaque(Kind::Do);
                let verdict = self.judge(&facts);
                return (info(facts), verdict);
            }
            lex::Piece::Sql(tokens) => tokens,
        };
        let lead = lead(&tokens);
        let dialect = PostgreSqlDialect {};
        let mut parser = Parser::new(&dialect)
            .with_recursion_limit(RECURSION_LIMIT)
            .with_tokens_with_locations(tokens);
        let parsed = parser.parse_statement().and_then(|stmt| {
            let next = parser.peek_token();
            if next.token == Token::EOF {
                Ok(stmt)
            } else {
                parser.expected("end of statement", next)
            }
        });
        let stmt = match parsed {
            Ok(stmt) => stmt,
            Err(e) => {
                let b = match e {
                    ParserError::RecursionLimitExceeded => Builtin {
                        rule: "too-complex",
                        reason: format!(
                            "the statement is nested more than {RECURSION_LIMIT} levels deep and is denied"
                        ),
                    },
                    e => Builtin {
                        rule: "parse-error",
                        reason: format!("the statement cannot be parsed, so it is denied: {e}"),
                    },
                };
                let info = StatementInfo {
                    kind: Kind::Other,
                    tables: Vec::new(),
                    copy_out: None,
                };
                return (info, Verdict::builtin(b));
            }
        };
        let mut facts = facts::gather(&stmt, lead, &self.options);
        let verdict = match facts.denial.take() {
            Some(b) => Verdict::builtin(b),
            None => {
                let verdict = self.judge(&facts);
                // SQL EXECUTE runs a prepared statement by name, where no
                // reviewer could see which statement and values it runs: a
                // statement that needs approval is prepared through the
                // protocol (held at each Execute with its parameters) or run
                // as it is (held once), never prepared with SQL PREPARE.
                let verdict = if facts.primary == Kind::Prepare && verdict.action == Action::Approve
                {
                    Verdict::builtin(Builtin {
                        rule: "prepare-needs-approval",
                        reason: format!(
                            "the prepared statement needs approval (policy rule `{}`), and \
                             SQL PREPARE would let each EXECUTE run it unreviewed; send the \
                             statement itself, or prepare it through the protocol",
                            verdict.rule
                        ),
                    })
                } else {
                    verdict
                };
                // Only worth the walk when the rules would let the statement run; a rule's
                // deny is as final and names the policy's own reason.
                match verdict.action {
                    Action::Allow | Action::Approve if self.masking.has_column_rules() => {
                        match masked::check(&stmt, &self.masking) {
                            Ok(()) => verdict,
                            Err(problem) => Verdict::builtin(Builtin {
                                rule: "masked-expression",
                                reason: problem.to_string(),
                            }),
                        }
                    }
                    _ => verdict,
                }
            }
        };
        (info(facts), verdict)
    }

    /// Rules, in order, for every kind of the statement; the strictest verdict wins.
    fn judge(&self, facts: &Facts) -> Verdict {
        let primary = [Part {
            kind: facts.primary,
            without_where: false,
        }];
        let parts = if facts.parts.is_empty() {
            &primary[..]
        } else {
            &facts.parts[..]
        };
        let mut worst: Option<Verdict> = None;
        for part in parts {
            let v = self.judge_part(*part, facts);
            if worst
                .as_ref()
                .is_none_or(|w| v.action.severity() > w.action.severity())
            {
                worst = Some(v);
            }
        }
        worst.unwrap_or_else(|| self.judge_part(primary[0], facts))
    }

    fn judge_part(&self, part: Part, facts: &Facts) -> Verdict {
        let rule = self.rules.iter().find(|r| r.matches(part, facts));
        let (rule_name, action) = match rule {
            Some(r) => (r.name.as_str(), r.action),
            None => ("default", self.default),
        };
        let mut what = format!("statement kind {}", part.kind);
        if let Some(r) = rule {
            if r.without_where {
                what.push_str(" without a WHERE clause");
            }
            if let (Some(globs), false) = (&r.tables, action == Action::Allow) {
                if let Some(t) = facts
                    .tables
                    .iter()
                    .find(|t| globs.iter().any(|g| g.matches(t)))
                {
                    what.push_str(" on ");
                    what.push_str(t);
                }
            }
            if let Some(globs) = &r.functions {
                if let Some(f) = facts
                    .functions
                    .iter()
                    .find(|f| globs.iter().any(|g| g.matches(f)))
                {
                    what.push_str(" calling ");
                    what.push_str(f);
                    what.push_str("()");
                }
            }
        }
        let verdict = match (action, rule.is_none()) {
            (Action::Allow, _) => "is allowed",
            (Action::Deny, true) => "is not allowed",
            (Action::Deny, false) => "is denied",
            (Action::Approve, _) => "needs approval",
        };
        Verdict {
            action,
            rule: format!("{}/{rule_name}", self.name),
            reason: format!("policy {} rule {rule_name}: {what} {verdict}", self.name),
        }
    }

    /// Number of `[[rule]]` entries.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

fn info(facts: Facts) -> StatementInfo {
    StatementInfo {
        kind: facts.primary,
        tables: facts.tables,
        copy_out: facts.copy_out,
    }
}

/// The first two keywords of a statement (skipping whitespace and comments).
fn lead(tokens: &[TokenWithSpan]) -> Lead {
    let mut words = tokens.iter().filter_map(|t| match &t.token {
        Token::Whitespace(_) => None,
        Token::Word(w) if w.quote_style.is_none() => Some(w.keyword),
        _ => Some(Keyword::NoKeyword),
    });
    Lead {
        first: words.next().unwrap_or(Keyword::NoKeyword),
        second: words.next().unwrap_or(Keyword::NoKeyword),
    }
}

/// An identifier as PostgreSQL resolves it: unquoted folded to lower case (ASCII only, like
/// PostgreSQL with a multi-byte encoding), quoted kept as written.
pub(crate) fn norm_ident(id: &Ident) -> String {
    match id.quote_style {
        None => id.value.to_ascii_lowercase(),
        Some(_) => id.value.clone(),
    }
}

fn name_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|p| match p.as_ident() {
            Some(id) => norm_ident(id),
            None => "?".to_owned(),
        })
        .collect()
}

/// The last part of a (function) name, normalized.
fn last_name(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(norm_ident)
        .unwrap_or_else(|| "?".to_owned())
}

/// `schema.table` for a relation name: unqualified is `public.x` (and also `pg_catalog.x` for
/// `pg_*` names), a database qualifier is dropped.
fn table_names(name: &ObjectName, out: &mut Vec<String>) {
    let parts = name_parts(name);
    match parts.as_slice() {
        [] => {}
        [t] => {
            if t.starts_with("pg_") {
                out.push(format!("pg_catalog.{t}"));
            }
            out.push(format!("public.{t}"));
        }
        [.., s, t] => out.push(format!("{s}.{t}")),
    }
}
