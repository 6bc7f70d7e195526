//! Bound parameters as a reviewer reads them, for statements held at each
//! Execute: `$1 = 'text'` (quoted like an SQL literal), `$2 = NULL`, binary
//! values decoded when the parameter's type is known and simple (`$3 = 42
//! (int4)`), else `\x` hex marked `(binary)`. Types come from the Parse
//! message or from the database's ParameterDescription, taken from the
//! answer to the statement's own Describe, so a re-Parse of the name cannot
//! relabel them.

use super::wire::{Message, Reader, WireError};

/// Characters (or bytes, for hex) of one value shown; longer ones are cut
/// with their full length given.
const SHOWN: usize = 200;

/// Parameters shown one by one; the rest are counted (a Bind may carry
/// 32767), so a held command stays readable and bounded.
const SHOWN_PARAMETERS: usize = 100;

/// The parameter type OIDs a Parse message declares (0: unspecified).
pub fn declared(r: &mut Reader<'_>) -> Result<Vec<u32>, WireError> {
    let n = usize::try_from(r.i16()?).unwrap_or(0);
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        out.push(r.u32()?);
    }
    Ok(out)
}

/// The type OIDs of a ParameterDescription ('t') message.
pub fn described(msg: &Message) -> Option<Vec<u32>> {
    declared(&mut Reader::new(msg)).ok()
}

/// The Bind message's parameters as a reviewer reads them; `types` are the
/// statement's parameter types as far as known (0 or missing: unknown).
pub fn shown(msg: &Message, types: &[u32]) -> Result<String, WireError> {
    let mut r = Reader::new(msg);
    r.str()?;
    r.str()?;
    let nformats = usize::try_from(r.i16()?).unwrap_or(0);
    let mut formats = Vec::with_capacity(nformats.min(64));
    for _ in 0..nformats {
        formats.push(r.i16()?);
    }
    let nparams = usize::try_from(r.i16()?).unwrap_or(0);
    if nparams == 0 {
        return Ok("none".into());
    }
    let mut out = Vec::with_capacity(nparams.min(SHOWN_PARAMETERS));
    let mut rest_bytes = 0usize;
    for i in 0..nparams {
        if i >= SHOWN_PARAMETERS {
            rest_bytes += r.value()?.map_or(0, <[u8]>::len);
            continue;
        }
        // No codes: all text; one code: for every parameter; else one each.
        let format = match formats.as_slice() {
            [one] => *one,
            many => many.get(i).copied().unwrap_or(0),
        };
        let oid = types.get(i).copied().unwrap_or(0);
        let shown = match r.value()? {
            None => "NULL".to_owned(),
            Some(v) if format == 0 => quoted(&String::from_utf8_lossy(v), v.len()),
            Some(v) => binary(oid, v).unwrap_or_else(|| hex(v)),
        };
        out.push(format!("${} = {shown}", i + 1));
    }
    if nparams > SHOWN_PARAMETERS {
        out.push(format!(
            "and {} more parameters (${}..${nparams}, {rest_bytes} bytes in all) not shown",
            nparams - SHOWN_PARAMETERS,
            SHOWN_PARAMETERS + 1
        ));
    }
    Ok(out.join(", "))
}

fn quoted(text: &str, bytes: usize) -> String {
    let cut: String = text.chars().take(SHOWN).collect();
    let more = if cut.len() < text.len() {
        format!(" (cut; {bytes} bytes in all)")
    } else {
        String::new()
    };
    format!("'{}'{more}", cut.replace('\'', "''"))
}

fn hex(v: &[u8]) -> String {
    let hex: String = v
        .iter()
        .take(SHOWN / 2)
        .map(|b| format!("{b:02x}"))
        .collect();
    let more = if v.len() > SHOWN / 2 {
        format!(", cut; {} bytes in all", v.len())
    } else {
        String::new()
    };
    format!("'\\x{hex}' (binary{more})")
}

/// A binary value of a simple type, decoded; None when the type is not one
/// of these or the bytes are not a value of it (PostgreSQL rejects those).
fn binary(oid: u32, v: &[u8]) -> Option<String> {
    let (value, name) = match oid {
        16 => (
            match v {
                [0] => "false".to_owned(),
                [1] => "true".to_owned(),
                _ => return None,
            },
            "bool",
        ),
        21 => (i16::from_be_bytes(v.try_into().ok()?).to_string(), "int2"),
        23 => (i32::from_be_bytes(v.try_into().ok()?).to_string(), "int4"),
        20 => (i64::from_be_bytes(v.try_into().ok()?).to_string(), "int8"),
        26 => (u32::from_be_bytes(v.try_into().ok()?).to_string(), "oid"),
        700 => (f32::from_be_bytes(v.try_into().ok()?).to_string(), "float4"),
        701 => (f64::from_be_bytes(v.try_into().ok()?).to_string(), "float8"),
        // text, varchar, bpchar, name, json: the binary form is the text.
        25 | 1043 | 1042 | 19 | 114 => {
            let text = std::str::from_utf8(v).ok()?;
            let name = match oid {
                25 => "text",
                1043 => "varchar",
                1042 => "bpchar",
                19 => "name",
                _ => "json",
            };
            return Some(format!("{} ({name})", quoted(text, v.len())));
        }
        2950 => {
            let b: [u8; 16] = v.try_into().ok()?;
            let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
            let s = h.concat();
            (
                format!(
                    "'{}-{}-{}-{}-{}'",
                    s.get(0..8)?,
                    s.get(8..12)?,
                    s.get(12..16)?,
                    s.get(16..20)?,
                    s.get(20..32)?
                ),
                "uuid",
            )
        }
        _ => return None,
    };
    Some(format!("{value} ({name})"))
}

#[cfg(test)]
mod tests {
    use super::super::wire::Builder;
    use super::*;

    fn bind(formats: &[i16], values: &[Option<&[u8]>]) -> Message {
        let mut b = Builder::new(b'B').cstr(b"p").cstr(b"s");
        b = b.i16(i16::try_from(formats.len()).unwrap_or(0));
        for f in formats {
            b = b.i16(*f);
        }
        b = b.i16(i16::try_from(values.len()).unwrap_or(0));
        for v in values {
            b = b.value(*v);
        }
        b.i16(0).finish()
    }

    #[test]
    fn known_binary_types_are_decoded_and_the_rest_shown_as_hex() {
        let msg = bind(
            &[1],
            &[
                Some(&2i32.to_be_bytes()),
                Some(&(-7i64).to_be_bytes()),
                Some(&[1]),
                Some(b"o'neil"),
                None,
                Some(&[0xde, 0xad]),
                Some(&[0, 0, 0]),
                Some(&1.5f64.to_be_bytes()),
            ],
        );
        let types = [23, 20, 16, 25, 23, 17, 23, 701];
        assert_eq!(
            shown(&msg, &types).ok().as_deref(),
            Some(
                "$1 = 2 (int4), $2 = -7 (int8), $3 = true (bool), $4 = 'o''neil' (text), \
                 $5 = NULL, $6 = '\\xdead' (binary), $7 = '\\x000000' (binary), $8 = 1.5 (float8)"
            )
        );
        // Unknown types: hex, as before.
        assert_eq!(
            shown(&bind(&[1], &[Some(&2i32.to_be_bytes())]), &[])
                .ok()
                .as_deref(),
            Some("$1 = '\\x00000002' (binary)")
        );
        // Text format: quoted whatever the type.
        assert_eq!(
            shown(&bind(&[], &[Some(b"42")]), &[23]).ok().as_deref(),
            Some("$1 = '42'")
        );
        let uuid = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc,
            0xde, 0xf0,
        ];
        assert_eq!(
            shown(&bind(&[1], &[Some(&uuid)]), &[2950]).ok().as_deref(),
            Some("$1 = '12345678-9abc-def0-1234-56789abcdef0' (uuid)")
        );
        assert_eq!(shown(&bind(&[], &[]), &[]).ok().as_deref(), Some("none"));
        // Hundreds of parameters: the first 100 shown, the rest counted.
        let many: Vec<Option<&[u8]>> = (0..300).map(|_| Some(&b"xy"[..])).collect();
        let text = shown(&bind(&[], &many), &[]).unwrap_or_default();
        assert!(
            text.contains("$100 = 'xy'") && !text.contains("$101 ="),
            "{text}"
        );
        assert!(
            text.ends_with("and 200 more parameters ($101..$300, 400 bytes in all) not shown"),
            "{text}"
        );
    }
}
