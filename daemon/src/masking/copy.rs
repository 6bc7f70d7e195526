//! COPY TO STDOUT rows (one CopyData message from the server) in text and CSV format: split into fields,
//! decode, mask, re-encode. Unchanged fields are copied byte for byte; anything unparseable is an error so
//! the proxy can end the statement instead of passing data it did not understand.

use std::{borrow::Cow, ops::Range};

use super::{Masker, MaskingError, Mode, RowProblem};

/// One line of a CopyData message: field byte ranges and the terminator's range (empty at end of data).
struct Line {
    fields: Vec<Range<usize>>,
    terminator: Range<usize>,
}

fn slice(row: &[u8], range: Range<usize>) -> &[u8] {
    row.get(range).unwrap_or_default()
}

/// Shared driver: split `row` into lines and fields, mask each field, write it back.
fn mask_rows(
    masker: &Masker,
    row: &[u8],
    modes: &[Option<Mode>],
    split: fn(&[u8], usize) -> Result<Line, MaskingError>,
    decode: fn(&[u8]) -> Option<Cow<'_, [u8]>>,
    encode: fn(Option<&[u8]>, &mut Vec<u8>),
    delimiter: u8,
) -> Result<Vec<u8>, MaskingError> {
    if !masker.rules().has_detectors() && modes.iter().all(Option::is_none) {
        return Ok(row.to_vec());
    }
    let mut out = Vec::with_capacity(row.len() + 16);
    let mut pos = 0usize;
    while pos < row.len() {
        let line = split(row, pos)?;
        if !modes.is_empty() && line.fields.len() != modes.len() {
            return Err(MaskingError::FieldCount {
                expected: modes.len(),
                found: line.fields.len(),
            });
        }
        for (i, field) in line.fields.iter().enumerate() {
            if i > 0 {
                out.push(delimiter);
            }
            let raw = slice(row, field.clone());
            let mode = modes.get(i).and_then(Option::as_ref);
            let value = decode(raw);
            match masker.mask_field(mode, value.as_deref()) {
                None => out.extend_from_slice(raw),
                Some(masked) => encode(masked.as_deref(), &mut out),
            }
        }
        out.extend_from_slice(slice(row, line.terminator.clone()));
        pos = line.terminator.end;
    }
    Ok(out)
}

pub(super) fn text_row(
    masker: &Masker,
    row: &[u8],
    modes: &[Option<Mode>],
) -> Result<Vec<u8>, MaskingError> {
    mask_rows(
        masker,
        row,
        modes,
        split_text,
        decode_text,
        encode_text,
        b'\t',
    )
}

pub(super) fn csv_row(
    masker: &Masker,
    row: &[u8],
    modes: &[Option<Mode>],
) -> Result<Vec<u8>, MaskingError> {
    mask_rows(masker, row, modes, split_csv, decode_csv, encode_csv, b',')
}

/// Text format: a raw tab separates fields, a raw newline ends the row, a backslash escapes the next byte
/// (including a tab or newline, as PostgreSQL's COPY FROM reads it).
fn split_text(row: &[u8], start: usize) -> Result<Line, MaskingError> {
    let mut fields = Vec::new();
    let mut field_start = start;
    let mut i = start;
    loop {
        match row.get(i) {
            None => {
                fields.push(field_start..i);
                return Ok(Line {
                    fields,
                    terminator: i..i,
                });
            }
            Some(b'\\') => {
                if i + 1 >= row.len() {
                    return Err(MaskingError::Row(RowProblem::TrailingBackslash));
                }
                i += 2;
            }
            Some(b'\t') => {
                fields.push(field_start..i);
                i += 1;
                field_start = i;
            }
            Some(b'\n') => {
                fields.push(field_start..i);
                return Ok(Line {
                    fields,
                    terminator: i..i + 1,
                });
            }
            Some(_) => i += 1,
        }
    }
}

/// PostgreSQL COPY text de-escaping; `\N` as the whole field is NULL.
fn decode_text(raw: &[u8]) -> Option<Cow<'_, [u8]>> {
    if raw == b"\\N" {
        return None;
    }
    if !raw.contains(&b'\\') {
        return Some(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0usize;
    while let Some(&b) = raw.get(i) {
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        // The splitter never leaves a backslash last in a field.
        let Some(&c) = raw.get(i) else { break };
        i += 1;
        match c {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                // Up to three octal digits; like PostgreSQL, only the low 8 bits count.
                let mut v = c - b'0';
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v.wrapping_mul(8).wrapping_add(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v);
            }
            b'x' => match raw.get(i).and_then(|d| hex_digit(*d)) {
                Some(mut v) => {
                    i += 1;
                    if let Some(d) = raw.get(i).and_then(|d| hex_digit(*d)) {
                        v = v * 16 + d;
                        i += 1;
                    }
                    out.push(v);
                }
                None => out.push(b'x'),
            },
            other => out.push(other),
        }
    }
    Some(Cow::Owned(out))
}

fn hex_digit(d: u8) -> Option<u8> {
    match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        b'A'..=b'F' => Some(d - b'A' + 10),
        _ => None,
    }
}

/// What PostgreSQL's COPY TO writes: backslash, the delimiter, newline, carriage return and the other
/// control characters with a named escape.
fn encode_text(value: Option<&[u8]>, out: &mut Vec<u8>) {
    let Some(value) = value else {
        out.extend_from_slice(b"\\N");
        return;
    };
    for &b in value {
        let escape = match b {
            b'\\' => b'\\',
            b'\t' => b't',
            b'\n' => b'n',
            b'\r' => b'r',
            0x08 => b'b',
            0x0c => b'f',
            0x0b => b'v',
            _ => {
                out.push(b);
                continue;
            }
        };
        out.push(b'\\');
        out.push(escape);
    }
}

/// CSV: `,` separates fields outside quotes, `"` toggles quoting (a doubled quote inside quotes toggles
/// twice), a newline (or CR, CRLF) outside quotes ends the row.
fn split_csv(row: &[u8], start: usize) -> Result<Line, MaskingError> {
    let mut fields = Vec::new();
    let mut field_start = start;
    let mut in_quote = false;
    let mut i = start;
    loop {
        match row.get(i) {
            None => {
                if in_quote {
                    return Err(MaskingError::Row(RowProblem::UnterminatedQuote));
                }
                fields.push(field_start..i);
                return Ok(Line {
                    fields,
                    terminator: i..i,
                });
            }
            Some(b'"') => {
                in_quote = !in_quote;
                i += 1;
            }
            Some(b',') if !in_quote => {
                fields.push(field_start..i);
                i += 1;
                field_start = i;
            }
            Some(b'\n') if !in_quote => {
                fields.push(field_start..i);
                return Ok(Line {
                    fields,
                    terminator: i..i + 1,
                });
            }
            Some(b'\r') if !in_quote => {
                fields.push(field_start..i);
                let end = if row.get(i + 1) == Some(&b'\n') {
                    i + 2
                } else {
                    i + 1
                };
                return Ok(Line {
                    fields,
                    terminator: i..end,
                });
            }
            Some(_) => i += 1,
        }
    }
}

/// An unquoted empty field is NULL; `""` is the empty string; `""` inside quotes is one `"`.
fn decode_csv(raw: &[u8]) -> Option<Cow<'_, [u8]>> {
    if !raw.contains(&b'"') {
        return (!raw.is_empty()).then_some(Cow::Borrowed(raw));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut in_quote = false;
    let mut i = 0usize;
    while let Some(&b) = raw.get(i) {
        i += 1;
        if b != b'"' {
            out.push(b);
        } else if in_quote && raw.get(i) == Some(&b'"') {
            out.push(b'"');
            i += 1;
        } else {
            in_quote = !in_quote;
        }
    }
    Some(Cow::Owned(out))
}

/// Quote when PostgreSQL would have to: empty (else it reads as NULL), delimiter, quote, CR/LF, or `\.`.
fn encode_csv(value: Option<&[u8]>, out: &mut Vec<u8>) {
    let Some(value) = value else {
        return;
    };
    let needs_quotes = value.is_empty()
        || value == b"\\."
        || value
            .iter()
            .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'));
    if !needs_quotes {
        out.extend_from_slice(value);
        return;
    }
    out.push(b'"');
    for &b in value {
        if b == b'"' {
            out.push(b'"');
        }
        out.push(b);
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::super::{
        tests::{det, spec},
        DetectorKind, ModeName, Rules,
    };
    use super::*;

    fn masker(detectors: &[DetectorSpec]) -> Masker {
        Masker::new(Rules::build(&[], detectors).unwrap(), [1; 32])
    }
    use super::super::DetectorSpec;

    fn emails() -> Masker {
        masker(&[det(DetectorKind::Email, ModeName::Redact, None)])
    }

    /// (row, column modes, expected output)
    type RowCase<'a> = (&'a [u8], &'a [Option<Mode>], &'a [u8]);
    /// (row, column modes, start of the expected error message)
    type ErrorCase<'a> = (&'a [u8], &'a [Option<Mode>], &'a str);

    const R: Option<Mode> = Some(Mode::Redact);
    const N: Option<Mode> = Some(Mode::Null);
    const P2: Option<Mode> = Some(Mode::Partial { keep: 2 });

    #[test]
    fn text_decode_table() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"plain", Some(b"plain")),
            (b"", Some(b"")),
            (b"\\N", None),
            (b"\\\\N", Some(b"\\N")),
            (b"a\\Nb", Some(b"aNb")),
            (b"tab\\there", Some(b"tab\there")),
            (b"nl\\nx\\rcr", Some(b"nl\nx\rcr")),
            (b"\\b\\f\\v", Some(b"\x08\x0c\x0b")),
            (b"back\\\\slash", Some(b"back\\slash")),
            (b"oct\\101\\0\\12z", Some(b"octA\0\nz")),
            (b"oct\\1018", Some(b"octA8")),
            (b"\\777", Some(b"\xff")),
            (b"hex\\x41\\x4a\\x4G", Some(b"hexAJ\x04G")),
            (b"\\xZZ", Some(b"xZZ")),
            (b"\\q\\.", Some(b"q.")),
            (b"utf8 \\303\\251", Some("utf8 é".as_bytes())),
        ];
        for (raw, want) in cases {
            assert_eq!(
                decode_text(raw).as_deref(),
                *want,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn text_encode_round_trip() {
        let values: &[&[u8]] = &[
            b"",
            b"plain",
            b"a\tb\nc\rd\\e",
            b"\x08\x0c\x0b",
            b"\\N",
            "é 🙂".as_bytes(),
        ];
        for value in values {
            let mut out = Vec::new();
            encode_text(Some(value), &mut out);
            assert!(!out.contains(&b'\t') && !out.contains(&b'\n'));
            assert_eq!(decode_text(&out).as_deref(), Some(*value));
        }
        let mut out = Vec::new();
        encode_text(None, &mut out);
        assert_eq!(out, b"\\N");
    }

    #[test]
    fn copy_text_rows() {
        let m = emails();
        let cases: &[RowCase] = &[
            // Column modes, NULL stays NULL.
            (b"1\talice\t\\N\n", &[None, R, R], b"1\t***\t\\N\n"),
            (b"1\talice\tbob\n", &[None, N, P2], b"1\t\\N\t*ob\n"),
            // Detector inside free text; escapes around it survive.
            (
                b"7\tmail alice@example.com\\tthen\\\\x\n",
                &[None, None],
                b"7\tmail ***\\tthen\\\\x\n",
            ),
            // A tab/newline inside a value is escaped, not a separator.
            (
                b"a\\tb\tline1\\nline2\n",
                &[R, None],
                b"***\tline1\\nline2\n",
            ),
            // Partial keeps the decoded tail and re-escapes it.
            (b"x\\ty\\\\\n", &[P2], b"**y\\\\\n"),
            // Escaped email (octal @) is decoded before detection.
            (b"bob\\100example.com\n", &[None], b"***\n"),
            // Unchanged fields are copied byte for byte (including unusual escapes).
            (b"\\x41\\q\tz\n", &[None, None], b"\\x41\\q\tz\n"),
            // Empty string vs NULL.
            (b"\t\\N\n", &[R, R], b"***\t\\N\n"),
            // No trailing newline: none added.
            (b"a\tb", &[R, None], b"***\tb"),
            // Two rows in one message.
            (b"a\tb\nc\td\n", &[R, None], b"***\tb\n***\td\n"),
            // Empty message.
            (b"", &[R], b""),
        ];
        for (row, modes, want) in cases {
            let got = m.copy_text_row(row, modes).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(want),
                "{:?}",
                String::from_utf8_lossy(row)
            );
        }
    }

    #[test]
    fn copy_text_without_modes_applies_detectors_to_every_field() {
        let m = emails();
        assert_eq!(
            m.copy_text_row(b"a@b.io\tx\tc@d.org\n", &[]).unwrap(),
            b"***\tx\t***\n"
        );
        // No detectors and no column modes: untouched, not even parsed.
        let plain = masker(&[]);
        assert_eq!(
            plain
                .copy_text_row(b"a@b.io\tbad\\", &[None, None])
                .unwrap(),
            b"a@b.io\tbad\\"
        );
    }

    #[test]
    fn copy_text_errors() {
        let m = emails();
        let cases: &[ErrorCase] = &[
            (
                b"1\t2\n",
                &[R],
                "COPY row has 2 fields, the result has 1 columns",
            ),
            (
                b"1\n",
                &[R, None],
                "COPY row has 1 fields, the result has 2 columns",
            ),
            // A tab inside a value that was not escaped adds a field: refused, not guessed.
            (b"a\tb\tc\n", &[R, None], "COPY row has 3 fields"),
            (b"ok\n1\t2\n", &[R], "COPY row has 2 fields"),
            (
                b"abc\\",
                &[R],
                "COPY row cannot be parsed: a backslash ends the data",
            ),
        ];
        for (row, modes, want) in cases {
            let err = m.copy_text_row(row, modes).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err:?} vs {want:?}");
        }
    }

    #[test]
    fn csv_decode_table() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b"plain", Some(b"plain")),
            (b"", None),
            (b"\"\"", Some(b"")),
            (b"\"a,b\"", Some(b"a,b")),
            (b"\"say \"\"hi\"\"\"", Some(b"say \"hi\"")),
            (b"\"line1\nline2\"", Some(b"line1\nline2")),
            (b"ab\"c,d\"e", Some(b"abc,de")),
            (b"\\N", Some(b"\\N")),
        ];
        for (raw, want) in cases {
            assert_eq!(
                decode_csv(raw).as_deref(),
                *want,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn copy_csv_rows() {
        let m = emails();
        let cases: &[RowCase] = &[
            (b"1,alice,\n", &[None, R, R], b"1,***,\n"),
            (b"1,\"\",x\n", &[None, R, N], b"1,***,\n"),
            // Quoted comma and doubled quotes inside a masked-by-detector field.
            (
                b"1,\"Alice, \"\"the boss\"\" <alice@example.com>\"\n",
                &[None, None],
                b"1,\"Alice, \"\"the boss\"\" <***>\"\n",
            ),
            // Quoted newline inside one row.
            (
                b"\"line1\nmail a@b.io\",2\n",
                &[None, None],
                b"\"line1\nmail ***\",2\n",
            ),
            // Partial output that needs quoting again.
            (b"\"ab,cd\"\n", &[P2], b"***cd\n"),
            (
                b"\"a,b,c\"\n",
                &[Some(Mode::Partial { keep: 3 })],
                b"\"**b,c\"\n",
            ),
            // Unchanged quoted fields are copied as they were.
            (b"\"x\",\"y\"\"z\"\n", &[None, None], b"\"x\",\"y\"\"z\"\n"),
            // CRLF terminator is kept.
            (b"secret,x\r\n", &[R, None], b"***,x\r\n"),
            // Two rows.
            (b"a,b\nc,d\n", &[None, R], b"a,***\nc,***\n"),
        ];
        for (row, modes, want) in cases {
            let got = m.copy_csv_row(row, modes).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&got),
                String::from_utf8_lossy(want),
                "{:?}",
                String::from_utf8_lossy(row)
            );
        }
    }

    #[test]
    fn copy_csv_errors() {
        let m = emails();
        let cases: &[ErrorCase] = &[
            (
                b"1,2,3\n",
                &[R, R],
                "COPY row has 3 fields, the result has 2 columns",
            ),
            (
                b"\"unterminated,x\n",
                &[R, R],
                "COPY row cannot be parsed: a quoted field",
            ),
            (
                b"a\n\"b\n",
                &[R],
                "COPY row cannot be parsed: a quoted field",
            ),
        ];
        for (row, modes, want) in cases {
            let err = m.copy_csv_row(row, modes).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err:?} vs {want:?}");
        }
    }

    #[test]
    fn csv_encode_round_trip() {
        let values: &[&[u8]] = &[
            b"", b"x", b"a,b", b"q\"q", b"l1\nl2", b"cr\r", b"\\.", b" sp ",
        ];
        for value in values {
            let mut out = Vec::new();
            encode_csv(Some(value), &mut out);
            let line = split_csv(&out, 0).unwrap();
            assert_eq!(line.fields.len(), 1, "{value:?}");
            assert_eq!(decode_csv(&out).as_deref(), Some(*value));
        }
        let mut out = Vec::new();
        encode_csv(None, &mut out);
        assert!(out.is_empty());
        assert_eq!(decode_csv(&out), None);
    }

    /// Deterministic xorshift: random rows from an alphabet of separators, escapes, quotes and
    /// detector bait. Parsing must never panic, and a row that parses keeps its field count.
    #[test]
    fn random_rows_keep_their_shape() {
        const ALPHABET: &[u8] = b"\\\t\n\r\",Nx0123456789@. -abcABC_eyJ\xc3\xa9";
        let m = Masker::new(
            Rules::build(
                &[],
                &[
                    det(DetectorKind::Email, ModeName::Redact, None),
                    det(DetectorKind::Card, ModeName::Partial, Some(4)),
                    det(DetectorKind::NationalId, ModeName::Hash, None),
                ],
            )
            .unwrap(),
            [3; 32],
        );
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5000 {
            let len = usize::try_from(next() % 40).unwrap();
            let row: Vec<u8> = (0..len)
                .map(|_| ALPHABET[usize::try_from(next() % ALPHABET.len() as u64).unwrap()])
                .collect();
            for csv in [false, true] {
                let (split, out) = if csv {
                    (
                        split_csv as fn(&[u8], usize) -> Result<Line, MaskingError>,
                        m.copy_csv_row(&row, &[]),
                    )
                } else {
                    (
                        split_text as fn(&[u8], usize) -> Result<Line, MaskingError>,
                        m.copy_text_row(&row, &[]),
                    )
                };
                let Ok(out) = out else { continue };
                let shapes = |bytes: &[u8]| {
                    let mut pos = 0;
                    let mut counts = Vec::new();
                    while pos < bytes.len() {
                        let line = split(bytes, pos).unwrap();
                        counts.push(line.fields.len());
                        pos = line.terminator.end;
                    }
                    counts
                };
                assert_eq!(shapes(&row), shapes(&out), "{row:?} -> {out:?}");
            }
        }
    }

    #[test]
    fn column_modes_then_detectors() {
        // A partial column rule that keeps enough to show an email: the detector still masks it.
        let m = Masker::new(
            Rules::build(
                &[spec("notes", ModeName::Partial, Some(11))],
                &[det(DetectorKind::Email, ModeName::Redact, None)],
            )
            .unwrap(),
            [1; 32],
        );
        let modes = [Some(Mode::Partial { keep: 11 })];
        assert_eq!(
            m.copy_text_row(b"Please ping a@b.io\n", &modes).unwrap(),
            b"*******ping ***\n"
        );
        assert_eq!(
            m.copy_csv_row(b"Please ping a@b.io\n", &modes).unwrap(),
            b"*******ping ***\n"
        );
    }
}
