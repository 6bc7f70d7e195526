//! Lexical pass over one message's SQL text, before anything is parsed: tokenize once with
//! sqlparser's PostgreSQL tokenizer, refuse what is too big, too deeply nested or misread by the
//! parser, and split the tokens into statements at `;`.
//!
//! Why a nesting estimate here, when the parser has a recursion limit: sqlparser builds chains
//! such as `1+1+1+…`, `a AND b AND …`, `x::t::t…` or `SELECT … UNION SELECT …` in a loop, so they
//! never touch the recursion limit, but the resulting left-deep tree is dropped (and walked)
//! recursively. A 1 MiB chain overflows any thread stack and aborts the whole daemon. The estimate
//! below is an upper bound of that depth, computed in one linear pass over the tokens.

use sqlparser::{
    dialect::PostgreSqlDialect,
    keywords::Keyword,
    tokenizer::{Token, TokenWithSpan, Tokenizer, TokenizerError},
};

/// Larger messages are denied without being parsed.
pub(super) const MAX_SQL_BYTES: usize = 1 << 20;

/// Upper bound of the estimated nesting (see [`Nesting`]). Measured: a 20 000-deep chain is
/// still dropped on a 2 MiB stack in a debug build, so this leaves a wide margin.
pub(super) const MAX_NESTING: usize = 4096;

/// One statement of the message.
#[derive(Debug)]
pub(super) enum Piece {
    /// `DO [LANGUAGE l] '<code>' [LANGUAGE l]`: sqlparser has no DO statement; the code block is
    /// a string the policy cannot see into, so DO is decided by its kind alone.
    Do,
    /// Tokens of one statement (whitespace and comments included, the `;` excluded).
    Sql(Vec<TokenWithSpan>),
}

#[derive(Debug, thiserror::Error)]
pub(super) enum LexError {
    #[error("the statement text is {bytes} bytes, more than the {max} bytes the policy accepts")]
    TooLarge { bytes: usize, max: usize },
    #[error("{0}")]
    Tokenize(#[source] TokenizerError),
    #[error("the statement is nested or chained too deeply (more than {max} levels) to be checked safely")]
    TooComplex { max: usize },
    #[error("U&\"...\" identifiers are not supported (the parser would misread them); write the name plainly")]
    UnicodeIdentifier,
}

/// Tokenizes and splits `sql`; empty statements (`;;`) are dropped.
pub(super) fn split(sql: &str) -> Result<Vec<Piece>, LexError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(LexError::TooLarge {
            bytes: sql.len(),
            max: MAX_SQL_BYTES,
        });
    }
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(LexError::Tokenize)?;

    let mut nesting = Nesting::default();
    let mut pieces = Vec::new();
    let mut current: Vec<TokenWithSpan> = Vec::new();
    // The last two significant tokens, for the `U&"..."` check.
    let mut prev: [Option<Sig>; 2] = [None, None];
    for tok in tokens {
        if matches!(tok.token, Token::Whitespace(_)) {
            current.push(tok);
            continue;
        }
        if nesting.push(&tok.token) > MAX_NESTING {
            return Err(LexError::TooComplex { max: MAX_NESTING });
        }
        let sig = Sig::of(&tok.token);
        if sig == Sig::QuotedIdent && prev == [Some(Sig::U), Some(Sig::Ampersand)] {
            return Err(LexError::UnicodeIdentifier);
        }
        prev = [prev[1], Some(sig)];
        if tok.token == Token::SemiColon {
            finish(&mut pieces, std::mem::take(&mut current));
        } else {
            current.push(tok);
        }
    }
    finish(&mut pieces, current);
    Ok(pieces)
}

fn finish(pieces: &mut Vec<Piece>, tokens: Vec<TokenWithSpan>) {
    let mut significant = tokens
        .iter()
        .map(|t| &t.token)
        .filter(|t| !matches!(t, Token::Whitespace(_)));
    match significant.next() {
        None => {}
        Some(Token::Word(w)) if w.keyword == Keyword::DO && w.quote_style.is_none() => {
            if is_do_block(significant) {
                pieces.push(Piece::Do);
            } else {
                // Let the parser report what is wrong ("Expected: an SQL statement, found: DO").
                pieces.push(Piece::Sql(tokens));
            }
        }
        Some(_) => pieces.push(Piece::Sql(tokens)),
    }
}

/// `[LANGUAGE name] <string> [LANGUAGE name]` after `DO`.
fn is_do_block<'a>(mut rest: impl Iterator<Item = &'a Token>) -> bool {
    let mut body = false;
    while let Some(t) = rest.next() {
        match t {
            Token::Word(w) if w.keyword == Keyword::LANGUAGE && w.quote_style.is_none() => {
                if !matches!(rest.next(), Some(Token::Word(_))) {
                    return false;
                }
            }
            Token::SingleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
                if !body =>
            {
                body = true;
            }
            _ => return false,
        }
    }
    body
}

/// What the `U&"..."` check needs to know about a significant token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sig {
    U,
    Ampersand,
    QuotedIdent,
    Other,
}

impl Sig {
    fn of(t: &Token) -> Sig {
        match t {
            Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("u") => {
                Sig::U
            }
            Token::Word(w) if w.quote_style == Some('"') => Sig::QuotedIdent,
            Token::Ampersand => Sig::Ampersand,
            _ => Sig::Other,
        }
    }
}

/// Upper bound of the AST depth at the current token: the sum, over the open brackets, of the
/// tokens seen at that bracket level since its last comma. A chain (`a+b+…`, `x::t::t…`,
/// `… UNION …`, `a[1][2]…`) only grows within one level without commas, and every bracket adds
/// one token to the level that contains it; comma-separated lists are flat vectors in the AST.
#[derive(Debug)]
struct Nesting {
    /// Token count per open bracket level since its last comma; `levels[0]` is the statement.
    levels: Vec<usize>,
    /// Sum of `levels`.
    total: usize,
}

impl Default for Nesting {
    fn default() -> Self {
        Nesting {
            levels: vec![0],
            total: 0,
        }
    }
}

impl Nesting {
    /// Accounts for one significant token and returns the current estimate.
    fn push(&mut self, t: &Token) -> usize {
        match t {
            Token::SemiColon => {
                self.levels.clear();
                self.levels.push(0);
                self.total = 0;
            }
            Token::Comma => {
                if let Some(top) = self.levels.last_mut() {
                    self.total = self.total.saturating_sub(*top);
                    *top = 0;
                }
            }
            Token::LParen | Token::LBracket | Token::LBrace => {
                self.bump();
                self.levels.push(0);
            }
            Token::RParen | Token::RBracket | Token::RBrace => {
                if self.levels.len() > 1 {
                    if let Some(inner) = self.levels.pop() {
                        self.total = self.total.saturating_sub(inner);
                    }
                }
                self.bump();
            }
            _ => self.bump(),
        }
        self.total
    }

    fn bump(&mut self) {
        if let Some(top) = self.levels.last_mut() {
            *top += 1;
            self.total += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn estimate(sql: &str) -> usize {
        let dialect = PostgreSqlDialect {};
        let tokens = Tokenizer::new(&dialect, sql).tokenize().unwrap();
        let mut n = Nesting::default();
        tokens
            .iter()
            .filter(|t| !matches!(t, Token::Whitespace(_)))
            .map(|t| n.push(t))
            .max()
            .unwrap_or(0)
    }

    #[test]
    fn nesting_estimate_table() {
        let cases: &[(&str, usize)] = &[
            ("SELECT 1", 2),
            ("SELECT a, b, c FROM t", 3),
            ("SELECT 1+1+1", 6),
            ("SELECT f(a, b)", 4),
            ("SELECT ((1))", 4),
            ("SELECT 1; SELECT 2", 2),
            ("INSERT INTO t VALUES (1, 2), (3, 4)", 6),
        ];
        for (sql, want) in cases {
            assert_eq!(estimate(sql), *want, "{sql}");
        }
        // Long flat lists stay flat.
        let values = format!(
            "INSERT INTO t VALUES {}",
            vec!["(1, 'a')"; 10_000].join(", ")
        );
        assert!(estimate(&values) < 10, "{}", estimate(&values));
        let in_list = format!(
            "SELECT * FROM t WHERE id IN ({})",
            vec!["1"; 50_000].join(",")
        );
        assert!(estimate(&in_list) < 20);
        // Chains grow.
        assert!(estimate(&format!("SELECT {}1", "1+".repeat(5000))) > MAX_NESTING);
        assert!(estimate(&format!("SELECT a{}", "[1]".repeat(3000))) > MAX_NESTING);
    }

    #[test]
    fn split_table() {
        let cases: &[(&str, usize)] = &[
            ("", 0),
            (";;", 0),
            ("  ; -- x\n ;", 0),
            ("SELECT 1", 1),
            ("SELECT 1;", 1),
            ("SELECT 1;;SELECT 2", 2),
            ("SELECT ';'; SELECT $$;$$", 2),
            ("SELECT 1 /* ; */", 1),
        ];
        for (sql, want) in cases {
            assert_eq!(split(sql).unwrap().len(), *want, "{sql}");
        }
        assert!(matches!(
            split("DO $$ BEGIN END $$").unwrap().as_slice(),
            [Piece::Do]
        ));
        assert!(matches!(
            split("do language plpgsql 'begin end'").unwrap().as_slice(),
            [Piece::Do]
        ));
        assert!(matches!(
            split("DO $$ x $$ $$ y $$").unwrap().as_slice(),
            [Piece::Sql(_)]
        ));
        assert!(matches!(
            split("\"do\" $$ x $$").unwrap().as_slice(),
            [Piece::Sql(_)]
        ));
    }
}
