//! Glob patterns of policy rules (`tables`, `functions`), compiled once when a policy is loaded
//! and matched against the normalized names the analysis produces for every statement.

/// One pattern: `*` = any run of characters (also across dots), `?` = one character.
/// Matching is case-sensitive: names are already normalized (unquoted identifiers lower-cased,
/// quoted ones kept as written, like PostgreSQL does), and patterns are written in lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Glob {
    matcher: Matcher,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Matcher {
    /// `*`: everything.
    Any,
    /// No wildcard: compared directly.
    Literal(String),
    /// `prefix*`: the most common shape (`pg_ls_*`, `public.*`).
    Prefix(String),
    /// Anything else, matched by the masking module's glob matcher.
    General(Vec<char>),
}

impl Glob {
    /// Compiles a pattern; the caller has validated its characters.
    pub(super) fn new(pattern: &str) -> Glob {
        let matcher = if pattern == "*" {
            Matcher::Any
        } else if !pattern.contains(['*', '?']) {
            Matcher::Literal(pattern.to_owned())
        } else if let Some(prefix) = pattern
            .strip_suffix('*')
            .filter(|p| !p.contains(['*', '?']))
        {
            Matcher::Prefix(prefix.to_owned())
        } else {
            Matcher::General(pattern.chars().collect())
        };
        Glob { matcher }
    }

    pub(super) fn matches(&self, name: &str) -> bool {
        match &self.matcher {
            Matcher::Any => true,
            Matcher::Literal(l) => l == name,
            Matcher::Prefix(p) => name.starts_with(p.as_str()),
            Matcher::General(chars) => crate::masking::glob::glob_match(chars, name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_table() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "public.users", true),
            ("*", "", true),
            ("public.*", "public.users", true),
            ("public.*", "publicx.users", false),
            ("public.*", "crm.users", false),
            ("*.users", "crm.users", true),
            ("*.users", "crm.users2", false),
            ("public.users", "public.users", true),
            ("public.users", "public.Users", false),
            ("public.user?", "public.users", true),
            ("public.user?", "public.user", false),
            ("pg_ls_*", "pg_ls_dir", true),
            ("pg_ls_*", "pg_l", false),
            ("*a*b*c", "xaxbxc", true),
            ("*a*b*c", "xaxbx", false),
            (
                "*a*a*a*a*b",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                false,
            ),
            ("d?lete", "délete", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(
                Glob::new(pattern).matches(text),
                *want,
                "{pattern:?} vs {text:?}"
            );
        }
    }
}
