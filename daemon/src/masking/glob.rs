//! Column patterns of `[[mask]]` rules (`column`, `table.column`, `schema.table.column`, globs allowed),
//! parsed once when a policy is loaded and matched against resolved result columns.

use super::SpecProblem;

/// One name part of a column pattern: lower-case, `*` = any run of characters, `?` = one character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Glob {
    chars: Vec<char>,
    /// No `*` or `?`: compared directly.
    literal: Option<String>,
}

impl Glob {
    fn parse(part: &str) -> Glob {
        let lower = part.to_lowercase();
        let literal = (!lower.contains(['*', '?'])).then(|| lower.clone());
        Glob {
            chars: lower.chars().collect(),
            literal,
        }
    }

    /// `name` is compared case-insensitively (PostgreSQL folds unquoted identifiers to lower case;
    /// a quoted upper-case identifier is treated like its lower-case spelling, which only masks more).
    pub(super) fn matches(&self, name: &str) -> bool {
        if name.chars().any(char::is_uppercase) {
            self.matches_lower(&name.to_lowercase())
        } else {
            self.matches_lower(name)
        }
    }

    fn matches_lower(&self, name: &str) -> bool {
        match &self.literal {
            Some(literal) => literal == name,
            None => glob_match(&self.chars, name),
        }
    }
}

/// Iterative wildcard matching with single-star backtracking: linear in practice, never recursive.
pub(crate) fn glob_match(pattern: &[char], text: &str) -> bool {
    let mut p = 0usize;
    let mut t = 0usize; // byte offset into `text`
                        // (pattern index just after the last `*`, text offset that star currently extends to)
    let mut star: Option<(usize, usize)> = None;
    loop {
        let tc = text.get(t..).and_then(|rest| rest.chars().next());
        match (pattern.get(p), tc) {
            (Some('*'), _) => {
                p += 1;
                star = Some((p, t));
                continue;
            }
            (Some('?'), Some(c)) => {
                p += 1;
                t += c.len_utf8();
                continue;
            }
            (Some(&pc), Some(c)) if pc == c => {
                p += 1;
                t += c.len_utf8();
                continue;
            }
            (None, None) => return true,
            _ => {}
        }
        // Mismatch: let the last star swallow one more character, or fail.
        let Some((after_star, star_t)) = star else {
            return false;
        };
        let Some(c) = text.get(star_t..).and_then(|rest| rest.chars().next()) else {
            return false;
        };
        let next = star_t + c.len_utf8();
        star = Some((after_star, next));
        p = after_star;
        t = next;
    }
}

/// A parsed `column` / `table.column` / `schema.table.column` pattern; absent parts match anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ColumnPattern {
    schema: Option<Glob>,
    table: Option<Glob>,
    column: Glob,
}

impl ColumnPattern {
    pub(super) fn parse(text: &str) -> Result<ColumnPattern, SpecProblem> {
        if text.is_empty() {
            return Err(SpecProblem::EmptyColumn);
        }
        if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(SpecProblem::BadCharacter(c));
        }
        let parts: Vec<&str> = text.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(SpecProblem::EmptyPart);
        }
        let mut globs = parts.iter().map(|p| Glob::parse(p));
        let pattern = match parts.len() {
            1 => globs.next().map(|column| ColumnPattern {
                schema: None,
                table: None,
                column,
            }),
            2 => match (globs.next(), globs.next()) {
                (Some(table), Some(column)) => Some(ColumnPattern {
                    schema: None,
                    table: Some(table),
                    column,
                }),
                _ => None,
            },
            3 => match (globs.next(), globs.next(), globs.next()) {
                (Some(schema), Some(table), Some(column)) => Some(ColumnPattern {
                    schema: Some(schema),
                    table: Some(table),
                    column,
                }),
                _ => None,
            },
            _ => None,
        };
        pattern.ok_or(SpecProblem::TooManyParts(parts.len()))
    }

    pub(super) fn matches(&self, schema: &str, table: &str, column: &str) -> bool {
        self.column.matches(column)
            && self.table.as_ref().is_none_or(|g| g.matches(table))
            && self.schema.as_ref().is_none_or(|g| g.matches(schema))
    }

    pub(super) fn matches_column_name(&self, column: &str) -> bool {
        self.column.matches(column)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("email", "email", true),
            ("email", "emails", false),
            ("email", "e_mail", false),
            ("*", "", true),
            ("*", "anything", true),
            ("*email*", "work_email_address", true),
            ("*email", "email", true),
            ("email*", "email", true),
            ("e?ail", "email", true),
            ("e?ail", "eail", false),
            ("?", "é", true),
            ("??", "é", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("a*b*c", "abcbc", true),
            (
                "*a*a*a*a*b",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                false,
            ),
            ("sécurité", "sécurité", true),
            ("ssn", "SSN", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(
                Glob::parse(pattern).matches(text),
                *want,
                "{pattern:?} vs {text:?}"
            );
        }
    }

    #[test]
    fn column_pattern_table() {
        // (pattern, schema, table, column, matches)
        let cases: &[(&str, &str, &str, &str, bool)] = &[
            ("email", "public", "users", "email", true),
            ("email", "crm", "contacts", "email", true),
            ("EMAIL", "public", "users", "email", true),
            ("users.email", "public", "users", "email", true),
            ("users.email", "crm", "users", "email", true),
            ("users.email", "public", "orders", "email", false),
            ("public.users.email", "public", "users", "email", true),
            ("public.users.email", "crm", "users", "email", false),
            ("*.email", "public", "anything", "email", true),
            ("*.*.email", "x", "y", "email", true),
            ("crm.*.*", "crm", "t", "c", true),
            ("crm.*.*", "public", "t", "c", false),
            ("u*.pass*", "public", "users", "password_hash", true),
            ("u*.pass*", "public", "accounts", "password_hash", false),
        ];
        for (pattern, schema, table, column, want) in cases {
            let p = ColumnPattern::parse(pattern).unwrap();
            assert_eq!(
                p.matches(schema, table, column),
                *want,
                "{pattern:?} vs {schema}.{table}.{column}"
            );
        }
    }

    #[test]
    fn column_pattern_errors() {
        let cases: &[(&str, SpecProblem)] = &[
            ("", SpecProblem::EmptyColumn),
            ("users.", SpecProblem::EmptyPart),
            (".email", SpecProblem::EmptyPart),
            ("a..b", SpecProblem::EmptyPart),
            ("a.b.c.d", SpecProblem::TooManyParts(4)),
            ("users. email", SpecProblem::BadCharacter(' ')),
            ("users.e\tmail", SpecProblem::BadCharacter('\t')),
        ];
        for (pattern, want) in cases {
            assert_eq!(
                ColumnPattern::parse(pattern).unwrap_err(),
                *want,
                "{pattern:?}"
            );
        }
    }
}
