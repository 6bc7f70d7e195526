//! Statement shapes: the text of a plain data statement with its numeric
//! literals replaced by `?`, so `... WHERE aid = 17` and `... WHERE aid = 42`
//! share one cached decision (an ORM or a benchmark sends the same statement
//! with other numbers thousands of times).
//!
//! Sound because no decision about these statements depends on the value
//! of a number: kinds, tables, functions, WHERE presence and masking are
//! the same whatever the numbers are. The statements whose decisions do read
//! numbers (SET / RESET values, EXPLAIN options) do not start with a keyword
//! in [`LEADS`], and anything this scanner does not fully understand has no
//! shape (the caller then parses the text as it is): quotes of every kind,
//! `$`, backslashes, comments, `?`, non-ASCII bytes, a `;` before the end,
//! a number run into letters (`1e5`, `0x1F`, `1abc`) and so on.
//! `tests::numbers_never_change_a_decision` checks the claim on the shipped
//! policies.

/// First keywords of the statements that get a shape.
const LEADS: &[&str] = &[
    "select", "insert", "update", "delete", "with", "values", "table",
];

/// Texts longer than this get no shape (nor a cache entry).
pub const MAX_SHAPED: usize = 4096;

/// Writes the shape of `sql` into `out` (cleared first); false when `sql`
/// has none and must be decided as it is.
pub fn shape(sql: &str, out: &mut String) -> bool {
    out.clear();
    let bytes = sql.as_bytes();
    if bytes.len() > MAX_SHAPED {
        return false;
    }
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let lead_end = bytes
        .iter()
        .skip(start)
        .position(|b| !b.is_ascii_alphabetic())
        .map_or(bytes.len(), |n| start + n);
    let lead = sql.get(start..lead_end).unwrap_or("");
    if !LEADS.iter().any(|l| lead.eq_ignore_ascii_case(l)) {
        return false;
    }
    // A `;` is allowed only at the end (trailing blanks after it).
    if let Some(semi) = sql.find(';') {
        if !sql
            .get(semi + 1..)
            .unwrap_or("")
            .bytes()
            .all(|b| b.is_ascii_whitespace() || b == b';')
        {
            return false;
        }
    }
    let mut prev: u8 = b' ';
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'0'..=b'9' if !is_word(prev) && prev != b'.' => {
                let mut j = i;
                while bytes.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
                if bytes.get(j) == Some(&b'.') && bytes.get(j + 1).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                    while bytes.get(j).is_some_and(u8::is_ascii_digit) {
                        j += 1;
                    }
                }
                if bytes.get(j).is_some_and(|&n| is_word(n) || n == b'.') {
                    return false;
                }
                out.push('?');
                prev = b'0';
                i = j;
                continue;
            }
            b'\'' | b'"' | b'$' | b'\\' | b'?' | b'`' => return false,
            b'-' if bytes.get(i + 1) == Some(&b'-') => return false,
            b'/' if bytes.get(i + 1) == Some(&b'*') => return false,
            b if !b.is_ascii() || (b.is_ascii_control() && !b.is_ascii_whitespace()) => {
                return false
            }
            _ => out.push(char::from(b)),
        }
        prev = b;
        i += 1;
    }
    true
}

/// A byte that continues an identifier or keyword (PostgreSQL also allows
/// `$` inside identifiers; `$` has no shape at all).
fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn of(sql: &str) -> Option<String> {
        let mut out = String::new();
        shape(sql, &mut out).then_some(out)
    }

    #[test]
    fn numbers_become_placeholders_and_anything_unusual_has_no_shape() {
        let same = [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 17;",
                "SELECT abalance FROM pgbench_accounts WHERE aid = ?;",
            ),
            (
                "UPDATE t SET b = b + -1234 WHERE id = 5",
                "UPDATE t SET b = b + -? WHERE id = ?",
            ),
            (
                "select * from t1 where x > 1.5",
                "select * from t1 where x > ?",
            ),
            (
                "  insert into t values (1, 2)",
                "  insert into t values (?, ?)",
            ),
            ("select a::int4 from t", "select a::int4 from t"),
            (
                "with x as (select 1) select * from x",
                "with x as (select ?) select * from x",
            ),
        ];
        for (sql, want) in same {
            assert_eq!(of(sql).as_deref(), Some(want), "{sql}");
        }
        for sql in [
            "SELECT 'a' FROM t",
            "SELECT \"x\" FROM t",
            "SELECT $1",
            "SELECT $$x$$",
            "SELECT 1 -- c",
            "SELECT /* c */ 1",
            "SELECT 1e5",
            "SELECT 0x1F",
            "SELECT 1abc",
            "SELECT 1_000",
            "SELECT 1.",
            "SELECT data ? 1 FROM t",
            "SELECT 1; SELECT 2",
            "SELECT 1; SET statement_timeout = 0",
            "SET statement_timeout = 0",
            "EXPLAIN (ANALYZE 0) DELETE FROM t",
            "COPY t TO STDOUT",
            "PREPARE p AS SELECT 1",
            "SELECT E'\\x41'",
            "SELECT 'é'",
            "SELECT é FROM t",
            "SELECT 1\u{0}",
            "DO $$ begin end $$",
        ] {
            assert_eq!(of(sql), None, "{sql}");
        }
        assert!(of(&format!("SELECT {}", "1,".repeat(3000))).is_none());
        assert_eq!(of("SELECT 1;  ").as_deref(), Some("SELECT ?;  "));
        // A number after a dot is left as it is (an exact match only).
        assert_eq!(of("SELECT .5").as_deref(), Some("SELECT .5"));
    }

    /// The claim the cache rests on: in every shipped policy (and one with
    /// masking and approvals), statements that differ only in their numbers
    /// get the same decision.
    #[test]
    fn numbers_never_change_a_decision() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let mut policies: Vec<Policy> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
                    .filter_map(|e| crate::policy::load(&e.path()).ok())
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            policies.len() >= 3,
            "shipped policies not found in {}",
            dir.display()
        );
        if let Ok(p) = crate::policy::parse(
            std::path::Path::new("policies/t.toml"),
            "[policy]\nname = \"t\"\ndefault = \"allow\"\n\n\
             [[rule]]\nname = \"held\"\naction = \"approve\"\nkinds = [\"delete\"]\nwithout_where = true\n\n\
             [[mask]]\ncolumn = \"*.email\"\nmode = \"redact\"\n",
        ) {
            policies.push(p);
        }
        let pairs = [
            (
                "SELECT * FROM t WHERE id = 0",
                "SELECT * FROM t WHERE id = 1",
            ),
            ("DELETE FROM t WHERE 1 = 0", "DELETE FROM t WHERE 1 = 1"),
            ("DELETE FROM t WHERE id = 0", "DELETE FROM t WHERE id = 7"),
            (
                "UPDATE t SET a = 0 WHERE 0 = 1",
                "UPDATE t SET a = 1 WHERE 1 = 1",
            ),
            ("SELECT pg_sleep(0)", "SELECT pg_sleep(100)"),
            (
                "SELECT email FROM users ORDER BY 1",
                "SELECT email FROM users ORDER BY 2",
            ),
            (
                "SELECT substr(email, 1, 0) FROM users",
                "SELECT substr(email, 2, 5) FROM users",
            ),
            ("SELECT lo_unlink(0)", "SELECT lo_unlink(16384)"),
            (
                "SELECT pg_terminate_backend(0)",
                "SELECT pg_terminate_backend(1)",
            ),
            ("INSERT INTO t VALUES (0)", "INSERT INTO t VALUES (1.5)"),
            ("SELECT * FROM t LIMIT 0", "SELECT * FROM t LIMIT 1000000"),
            (
                "SELECT * FROM t FETCH FIRST 0 ROWS ONLY",
                "SELECT * FROM t FETCH FIRST 1 ROWS ONLY",
            ),
            (
                "WITH d AS (DELETE FROM t WHERE 0 = 1 RETURNING *) SELECT 1",
                "WITH d AS (DELETE FROM t WHERE 0 = 0 RETURNING *) SELECT 2",
            ),
            ("TABLE t", "TABLE t"),
            ("VALUES (0)", "VALUES (1)"),
        ];
        for p in &policies {
            for (a, b) in pairs {
                assert_eq!(of(a), of(b), "{a} / {b}: not the same shape");
                assert!(of(a).is_some(), "{a}: no shape");
                let (da, db) = (p.decide(a), p.decide(b));
                assert_eq!(
                    (da.action, &da.rule, &da.reason),
                    (db.action, &db.rule, &db.reason),
                    "policy {}: {a} / {b}",
                    p.name
                );
            }
        }
    }
}
