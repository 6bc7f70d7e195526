//! ErrorResponse / NoticeResponse text: the server echoes values in data-exception (22) and
//! integrity-violation (23) errors (`invalid input syntax for type integer: "alice@x.com"`,
//! `Key (email)=(alice@x.com) already exists.`), which would let an agent read a masked column by
//! provoking an error. Those values are redacted here; detectors run on every free-text field.

use std::borrow::Cow;

use super::{Masker, REDACTED};

/// Free-text fields: message, detail, hint, context (where), internal position and internal query.
/// Severity, SQLSTATE, positions, object names, source file/line/routine are passed through.
const FREE_TEXT_FIELDS: &[u8] = b"MDHWpq";

/// Errors that name an object the statement looked up by a name it may have
/// computed from data: undefined table, object, function or schema, and
/// invalid or reserved names (reg* casts, current_setting, to_reg*).
const NAME_FROM_VALUE_STATES: &[&str] = &["42P01", "42704", "42883", "3F000", "42602", "42939"];

/// XML errors put libxml's diagnostics in the detail, which quote the offending input unmarked.
const XML_STATES: &[&str] = &["2200L", "2200M", "2200N", "2200S", "2200T"];

/// A double-quoted name right after one of these words is an identifier, not a value; it is kept so
/// the agent still learns which constraint or column failed. (English server messages only; other
/// languages simply get every quoted string redacted.)
const IDENTIFIER_WORDS: &[&str] = &[
    "column",
    "relation",
    "constraint",
    "table",
    "index",
    "schema",
    "type",
    "function",
    "domain",
    "sequence",
    "database",
    "role",
    "encoding",
    "trigger",
    "view",
    "operator",
    "collation",
    "extension",
    "partition",
];

pub(super) fn field(
    masker: &Masker,
    sqlstate: &str,
    field: u8,
    text: &str,
    column_rules_present: bool,
) -> String {
    if !FREE_TEXT_FIELDS.contains(&field) {
        return text.to_owned();
    }
    let text = if column_rules_present && (sqlstate.starts_with("22") || sqlstate.starts_with("23"))
    {
        redact_values(sqlstate, field, text)
    } else if column_rules_present && NAME_FROM_VALUE_STATES.contains(&sqlstate) {
        // Names in these errors can come from values: `email::regclass`
        // answers `relation "alice@x.com" does not exist`, and so do casts to
        // regtype, regrole, regproc and regnamespace, or current_setting(email).
        // Every quoted string goes, names included.
        Cow::Owned(redact_quoted(text, false))
    } else {
        Cow::Borrowed(text)
    };
    match masker.detect(&text) {
        Some(Some(masked)) => masked,
        Some(None) => REDACTED.to_owned(),
        None => text.into_owned(),
    }
}

fn redact_values<'a>(sqlstate: &str, field: u8, text: &'a str) -> Cow<'a, str> {
    // The internal query of a PL/pgSQL error can carry the literal that failed.
    if field == b'q' || (field == b'D' && XML_STATES.contains(&sqlstate)) {
        return Cow::Borrowed(REDACTED);
    }
    let text = redact_parenthesised(text, &["Key (", "key ("], Some(")=("));
    let text = redact_parenthesised(&text, &["Failing row contains ("], None).into_owned();
    let text = redact_json_context(&text);
    Cow::Owned(redact_quoted(&text, true))
}

fn sub(text: &str, range: std::ops::Range<usize>) -> &str {
    text.get(range).unwrap_or_default()
}

/// After the first `marker` (then `then`, if given), everything up to the last `)` of the text becomes
/// `***`. Values may contain parentheses, so the last one is the only safe end; without one, the rest
/// of the text is redacted.
fn redact_parenthesised<'a>(text: &'a str, markers: &[&str], then: Option<&str>) -> Cow<'a, str> {
    let Some((at, marker)) = markers
        .iter()
        .filter_map(|m| text.find(m).map(|at| (at, *m)))
        .min_by_key(|(at, _)| *at)
    else {
        return Cow::Borrowed(text);
    };
    let mut start = at + marker.len();
    if let Some(then) = then {
        match sub(text, start..text.len()).find(then) {
            Some(off) => start += off + then.len(),
            None => return Cow::Borrowed(text),
        }
    }
    let end = sub(text, start..text.len())
        .rfind(')')
        .map_or(text.len(), |off| start + off);
    Cow::Owned(format!(
        "{}{REDACTED}{}",
        sub(text, 0..start),
        sub(text, end..text.len())
    ))
}

/// `JSON data, line 1: <input>` in the context of json errors: the rest of that line is input.
fn redact_json_context(text: &str) -> String {
    const MARKER: &str = "JSON data, line ";
    let mut out = String::with_capacity(text.len());
    let mut pos = 0usize;
    while let Some(off) = sub(text, pos..text.len()).find(MARKER) {
        let after_marker = pos + off + MARKER.len();
        let rest = sub(text, after_marker..text.len());
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let value_start = after_marker
            + digits
            + if sub(rest, digits..rest.len()).starts_with(": ") {
                2
            } else {
                0
            };
        let value_end = sub(text, value_start..text.len())
            .find('\n')
            .map_or(text.len(), |e| value_start + e);
        out.push_str(sub(text, pos..value_start));
        out.push_str(REDACTED);
        pos = value_end;
    }
    out.push_str(sub(text, pos..text.len()));
    out
}

/// Opening quote characters PostgreSQL's translations use, and their closing counterparts.
fn closers(open: char) -> Option<&'static [char]> {
    match open {
        '"' => Some(&['"']),
        '«' => Some(&['»']),
        '»' => Some(&['«']),
        '“' => Some(&['”']),
        '„' => Some(&['“', '”']),
        '「' => Some(&['」']),
        _ => None,
    }
}

fn after_identifier_word(before: &str) -> bool {
    let Some(before) = before.strip_suffix(' ') else {
        return false;
    };
    IDENTIFIER_WORDS.iter().any(|word| {
        before.strip_suffix(word).is_some_and(|head| {
            !head
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
        })
    })
}

/// Every quoted value becomes `"***"`. A value may itself contain quotes, so a value extends to the
/// last matching closing quote of the text (over-redacting rather than leaking a tail); identifiers
/// (see [`IDENTIFIER_WORDS`]) end at the next quote.
/// Redacts quoted strings; `keep_identifiers`: a double-quoted name after
/// an [`IDENTIFIER_WORDS`] word stays.
fn redact_quoted(text: &str, keep_identifiers: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0usize;
    while let Some((off, open, close)) = sub(text, pos..text.len())
        .char_indices()
        .find_map(|(i, c)| closers(c).map(|close| (i, c, close)))
    {
        let quote = pos + off;
        let inner = quote + open.len_utf8();
        out.push_str(sub(text, pos..inner));
        let rest = sub(text, inner..text.len());
        if keep_identifiers && open == '"' && after_identifier_word(sub(text, 0..quote)) {
            let end = rest.find('"').map_or(text.len(), |e| inner + e + 1);
            out.push_str(sub(text, inner..end));
            pos = end;
            continue;
        }
        out.push_str(REDACTED);
        match rest.rfind(close) {
            Some(e) => pos = inner + e,
            None => {
                // Unterminated: redact to the end and close the quote.
                out.push(close.first().copied().unwrap_or(open));
                pos = text.len();
            }
        }
        if let Some(c) = sub(text, pos..text.len()).chars().next() {
            out.push(c);
            pos += c.len_utf8();
        }
    }
    out.push_str(sub(text, pos..text.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::super::{
        tests::{det, spec},
        DetectorKind, ModeName, Rules,
    };
    use super::*;

    fn masker() -> Masker {
        Masker::new(
            Rules::build(
                &[spec("users.email", ModeName::Redact, None)],
                &[
                    det(DetectorKind::Email, ModeName::Redact, None),
                    det(DetectorKind::Card, ModeName::Partial, Some(4)),
                ],
            )
            .unwrap(),
            [2; 32],
        )
    }

    #[test]
    fn class_22_and_23_values_redacted() {
        let m = masker();
        // (sqlstate, field, text, expected)
        let cases: &[(&str, u8, &str, &str)] = &[
            (
                "22P02",
                b'M',
                "invalid input syntax for type integer: \"Alice Smith\"",
                "invalid input syntax for type integer: \"***\"",
            ),
            (
                "22P02",
                b'M',
                "invalid input syntax for type integer: \"alice@x.com\"",
                "invalid input syntax for type integer: \"***\"",
            ),
            // A quote inside the value cannot end the redaction early.
            (
                "22P02",
                b'M',
                "invalid input syntax for type integer: \"a\" leaked \"tail\"",
                "invalid input syntax for type integer: \"***\"",
            ),
            (
                "22003",
                b'M',
                "value \"99999999999\" is out of range for type integer",
                "value \"***\" is out of range for type integer",
            ),
            (
                "23505",
                b'M',
                "duplicate key value violates unique constraint \"users_email_key\"",
                "duplicate key value violates unique constraint \"users_email_key\"",
            ),
            (
                "23505",
                b'D',
                "Key (email)=(alice@x.com) already exists.",
                "Key (email)=(***) already exists.",
            ),
            (
                "23505",
                b'D',
                "Key (name, city)=(Smith (Jr.), Paris) already exists.",
                "Key (name, city)=(***) already exists.",
            ),
            (
                "23503",
                b'D',
                "Key (user_id)=(42) is not present in table \"users\".",
                "Key (user_id)=(***) is not present in table \"users\".",
            ),
            (
                "23P01",
                b'D',
                "Key (room, during)=(1, [2024-01-01,2024-01-02)) conflicts with existing key (room, during)=(1, [2024-01-01,2024-01-03)).",
                "Key (room, during)=(***).",
            ),
            (
                "23502",
                b'M',
                "null value in column \"email\" of relation \"users\" violates not-null constraint",
                "null value in column \"email\" of relation \"users\" violates not-null constraint",
            ),
            (
                "23502",
                b'D',
                "Failing row contains (1, Alice, null, 4111 1111 1111 1111).",
                "Failing row contains (***).",
            ),
            (
                "23514",
                b'D',
                "Failing row contains (7, ) tricky, x).",
                "Failing row contains (***).",
            ),
            (
                "23514",
                b'D',
                "Failing row contains (7, unterminated",
                "Failing row contains (***",
            ),
            (
                "22P02",
                b'D',
                "Token \"secretvalue\" is invalid.",
                "Token \"***\" is invalid.",
            ),
            (
                "22P02",
                b'W',
                "JSON data, line 1: secretvalue...\nSQL function \"f\" statement 1",
                "JSON data, line 1: ***\nSQL function \"f\" statement 1",
            ),
            (
                "22P02",
                b'W',
                "COPY users, line 3, column id: \"Alice\"",
                "COPY users, line 3, column id: \"***\"",
            ),
            (
                "22P02",
                b'W',
                "PL/pgSQL function f() line 3 at EXECUTE\nSQL statement \"select 'Alice'::int\"",
                "PL/pgSQL function f() line 3 at EXECUTE\nSQL statement \"***\"",
            ),
            ("22P02", b'q', "select 'Alice'::int", "***"),
            (
                "2200N",
                b'D',
                "line 1: Start tag expected, '<' not found\nAlice\n^",
                "***",
            ),
            // Translated messages: other quote characters.
            (
                "22P02",
                b'M',
                "syntaxe en entrée invalide pour le type integer : « Alice »",
                "syntaxe en entrée invalide pour le type integer : «***»",
            ),
            (
                "22P02",
                b'M',
                "ungültige Eingabesyntax für Typ integer: »Alice«",
                "ungültige Eingabesyntax für Typ integer: »***«",
            ),
            // Unterminated quote: redact to the end.
            (
                "22P02",
                b'M',
                "invalid input syntax for type integer: \"Alice",
                "invalid input syntax for type integer: \"***\"",
            ),
            // A quote after a word that only ends like an identifier word is a value.
            (
                "22023",
                b'M',
                "invalid subtype \"Alice\"",
                "invalid subtype \"***\"",
            ),
        ];
        for (sqlstate, field_type, text, want) in cases {
            assert_eq!(
                m.message_field(sqlstate, *field_type, text, true),
                *want,
                "{sqlstate} {} {text:?}",
                char::from(*field_type)
            );
        }
    }

    #[test]
    fn without_column_rules_only_detectors() {
        let m = masker();
        assert_eq!(
            m.message_field(
                "22P02",
                b'M',
                "invalid input syntax for type integer: \"Alice Smith\"",
                false
            ),
            "invalid input syntax for type integer: \"Alice Smith\""
        );
        assert_eq!(
            m.message_field(
                "22P02",
                b'M',
                "invalid input syntax for type integer: \"alice@x.com\"",
                false
            ),
            "invalid input syntax for type integer: \"***\""
        );
        assert_eq!(
            m.message_field(
                "23505",
                b'D',
                "Key (email)=(bob@y.org) already exists.",
                false
            ),
            "Key (email)=(***) already exists."
        );
    }

    #[test]
    fn other_classes_only_detectors() {
        let m = masker();
        let cases: &[(&str, u8, &str, &str)] = &[
            (
                "42703",
                b'M',
                "column \"nme\" does not exist",
                "column \"nme\" does not exist",
            ),
            (
                "P0001",
                b'M',
                "custom: \"Alice\" card 4111-1111-1111-1111",
                "custom: \"Alice\" card ***************1111",
            ),
            ("42601", b'H', "mail dba@corp.example", "mail ***"),
            // Names computed from data (email::regclass, current_setting(email)).
            (
                "42P01",
                b'M',
                "relation \"alice_x_com\" does not exist",
                "relation \"***\" does not exist",
            ),
            (
                "42704",
                b'M',
                "unrecognized configuration parameter \"alice.x\"",
                "unrecognized configuration parameter \"***\"",
            ),
        ];
        for (sqlstate, field_type, text, want) in cases {
            assert_eq!(m.message_field(sqlstate, *field_type, text, true), *want);
        }
    }

    #[test]
    fn non_text_fields_untouched() {
        let m = masker();
        for field_type in [
            b'S', b'V', b'C', b'P', b'F', b'L', b'R', b's', b't', b'c', b'n', b'd',
        ] {
            for text in ["22P02", "ERROR", "\"Alice\"", "alice@x.com", "Key (a)=(b)"] {
                assert_eq!(
                    m.message_field("22P02", field_type, text, true),
                    text,
                    "{}",
                    char::from(field_type)
                );
            }
        }
    }

    #[test]
    fn null_mode_detector_blanks_the_field() {
        let m = Masker::new(
            Rules::build(&[], &[det(DetectorKind::Email, ModeName::Null, None)]).unwrap(),
            [2; 32],
        );
        assert_eq!(m.message_field("XX000", b'M', "boom a@b.io", false), "***");
    }

    #[test]
    fn identifier_words() {
        for (before, want) in [
            ("violates unique constraint ", true),
            ("null value in column ", true),
            ("invalid subtype ", false),
            ("type integer: ", false),
            ("constraint", false),
            ("", false),
        ] {
            assert_eq!(after_identifier_word(before), want, "{before:?}");
        }
    }
}
