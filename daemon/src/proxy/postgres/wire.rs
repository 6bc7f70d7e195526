//! PostgreSQL wire framing for the postgres handler: splitting a byte
//! stream into messages, reading the few fields the handler acts on, and
//! building the messages Cordon itself sends. Everything here treats its
//! input as hostile: lengths are checked before use and a malformed message
//! is an error naming what was wrong, never a panic.

use bytes::{Buf as _, BufMut as _, Bytes, BytesMut};

/// Largest message accepted from either side. A statement or a row larger
/// than this ends the session with a clear error.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// Largest startup packet (the parameters of a StartupMessage).
pub const MAX_STARTUP: usize = 10_000;

pub const SSL_REQUEST: u32 = 80_877_103;
pub const GSSENC_REQUEST: u32 = 80_877_104;
pub const CANCEL_REQUEST: u32 = 80_877_102;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message `{tag}` declares a length of {len} bytes (the limit is {limit})")]
    TooLong { tag: char, len: usize, limit: usize },
    #[error("message `{tag}` declares an impossible length {len}")]
    BadLength { tag: char, len: i64 },
    #[error("malformed `{tag}` message: {what}")]
    Malformed { tag: char, what: &'static str },
    #[error("malformed startup packet: {0}")]
    Startup(&'static str),
}

/// One framed message: its tag and its body (without tag and length).
#[derive(Debug, Clone)]
pub struct Message {
    pub tag: u8,
    pub body: Bytes,
}

impl Message {
    /// The message as it appears on the wire.
    pub fn write_to(&self, out: &mut BytesMut) {
        out.reserve(5 + self.body.len());
        out.put_u8(self.tag);
        out.put_u32(u32::try_from(self.body.len() + 4).unwrap_or(u32::MAX));
        out.extend_from_slice(&self.body);
    }
}

/// Takes one complete message off the front of `buf`, if there is one.
pub fn next_message(buf: &mut BytesMut, limit: usize) -> Result<Option<Message>, WireError> {
    let Some(header) = buf.get(..5) else {
        return Ok(None);
    };
    let tag = header.first().copied().unwrap_or(0);
    let len = header
        .get(1..5)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, i32::from_be_bytes);
    if len < 4 {
        return Err(WireError::BadLength {
            tag: char::from(tag),
            len: i64::from(len),
        });
    }
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > limit {
        return Err(WireError::TooLong {
            tag: char::from(tag),
            len,
            limit,
        });
    }
    if buf.len() < len + 1 {
        buf.reserve(len + 1 - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(len + 1);
    frame.advance(5);
    Ok(Some(Message {
        tag,
        body: frame.freeze(),
    }))
}

/// Takes one untagged startup-phase packet (StartupMessage, SSLRequest,
/// GSSENCRequest, CancelRequest) off the front of `buf`: (code, payload).
pub fn next_startup(buf: &mut BytesMut) -> Result<Option<(u32, Bytes)>, WireError> {
    let Some(header) = buf.get(..8) else {
        return Ok(None);
    };
    let len = header
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_be_bytes);
    let code = header
        .get(4..8)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_be_bytes);
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len < 8 {
        return Err(WireError::Startup("length below 8"));
    }
    if len > MAX_STARTUP {
        return Err(WireError::Startup("longer than 10000 bytes"));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut frame = buf.split_to(len);
    frame.advance(8);
    Ok(Some((code, frame.freeze())))
}

/// A cursor over a message body.
pub struct Reader<'a> {
    tag: u8,
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(msg: &'a Message) -> Self {
        Self {
            tag: msg.tag,
            rest: &msg.body,
        }
    }
    pub fn over(tag: u8, bytes: &'a [u8]) -> Self {
        Self { tag, rest: bytes }
    }
    fn bad(&self, what: &'static str) -> WireError {
        WireError::Malformed {
            tag: char::from(self.tag),
            what,
        }
    }
    /// A NUL-terminated string (not required to be UTF-8).
    pub fn cstr(&mut self) -> Result<&'a [u8], WireError> {
        let end = self
            .rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| self.bad("string without terminating NUL"))?;
        let (s, rest) = self.rest.split_at(end);
        self.rest = rest.get(1..).unwrap_or_default();
        Ok(s)
    }
    /// A NUL-terminated UTF-8 string.
    pub fn str(&mut self) -> Result<&'a str, WireError> {
        let s = self.cstr()?;
        std::str::from_utf8(s).map_err(|_| self.bad("string is not UTF-8"))
    }
    pub fn u8(&mut self) -> Result<u8, WireError> {
        let (&b, rest) = self
            .rest
            .split_first()
            .ok_or_else(|| self.bad("truncated"))?;
        self.rest = rest;
        Ok(b)
    }
    pub fn i16(&mut self) -> Result<i16, WireError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes(
            <[u8; 2]>::try_from(b).map_err(|_| self.bad("truncated"))?,
        ))
    }
    pub fn i32(&mut self) -> Result<i32, WireError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes(
            <[u8; 4]>::try_from(b).map_err(|_| self.bad("truncated"))?,
        ))
    }
    pub fn u32(&mut self) -> Result<u32, WireError> {
        self.i32().map(|v| u32::from_ne_bytes(v.to_ne_bytes()))
    }
    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.rest.len() < n {
            return Err(self.bad("truncated"));
        }
        let (b, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(b)
    }
    /// A length-prefixed value as in DataRow/Bind: None is SQL NULL.
    pub fn value(&mut self) -> Result<Option<&'a [u8]>, WireError> {
        let len = self.i32()?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| self.bad("negative value length"))?;
        self.bytes(len).map(Some)
    }
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

/// Builds a message body, then frames it.
pub struct Builder {
    tag: u8,
    body: BytesMut,
}

impl Builder {
    pub fn new(tag: u8) -> Self {
        Self {
            tag,
            body: BytesMut::with_capacity(64),
        }
    }
    pub fn cstr(mut self, s: &[u8]) -> Self {
        // A NUL inside would end the string early on the other side.
        self.body.extend(s.iter().filter(|&&b| b != 0));
        self.body.put_u8(0);
        self
    }
    pub fn u8(mut self, b: u8) -> Self {
        self.body.put_u8(b);
        self
    }
    pub fn i16(mut self, v: i16) -> Self {
        self.body.put_i16(v);
        self
    }
    pub fn i32(mut self, v: i32) -> Self {
        self.body.put_i32(v);
        self
    }
    pub fn value(mut self, v: Option<&[u8]>) -> Self {
        match v {
            None => self.body.put_i32(-1),
            Some(b) => {
                self.body
                    .put_i32(i32::try_from(b.len()).unwrap_or(i32::MAX));
                self.body.extend_from_slice(b);
            }
        }
        self
    }
    pub fn finish(self) -> Message {
        Message {
            tag: self.tag,
            body: self.body.freeze(),
        }
    }
}

/// Severity of an error Cordon sends.
#[derive(Debug, Clone, Copy)]
pub enum Severity {
    Error,
    Fatal,
}

/// An ErrorResponse from Cordon: severity, SQLSTATE, message, optional hint.
pub fn error_response(
    severity: Severity,
    code: &str,
    message: &str,
    hint: Option<&str>,
) -> Message {
    let sev: &[u8] = match severity {
        Severity::Error => b"ERROR",
        Severity::Fatal => b"FATAL",
    };
    let mut b = Builder::new(b'E')
        .u8(b'S')
        .cstr(sev)
        .u8(b'V')
        .cstr(sev)
        .u8(b'C')
        .cstr(code.as_bytes())
        .u8(b'M')
        .cstr(message.as_bytes());
    if let Some(h) = hint {
        b = b.u8(b'H').cstr(h.as_bytes());
    }
    b.u8(0).finish()
}

/// The fields of an ErrorResponse or NoticeResponse, in order.
pub fn fields(msg: &Message) -> Result<Vec<(u8, &[u8])>, WireError> {
    let mut r = Reader::new(msg);
    let mut out = Vec::new();
    loop {
        let code = r.u8()?;
        if code == 0 {
            return Ok(out);
        }
        out.push((code, r.cstr()?));
    }
}

/// Rebuilds an ErrorResponse/NoticeResponse from (possibly rewritten) fields.
pub fn from_fields(tag: u8, fields: &[(u8, Vec<u8>)]) -> Message {
    let mut b = Builder::new(tag);
    for (code, text) in fields {
        b = b.u8(*code).cstr(text);
    }
    b.u8(0).finish()
}

pub fn ready_for_query(status: u8) -> Message {
    Builder::new(b'Z').u8(status).finish()
}

pub fn auth_ok() -> Message {
    Builder::new(b'R').i32(0).finish()
}

pub fn backend_key(pid: i32, secret: i32) -> Message {
    Builder::new(b'K').i32(pid).i32(secret).finish()
}

/// The parameters of a StartupMessage payload (after the version code).
pub fn startup_params(payload: &[u8]) -> Result<Vec<(String, String)>, WireError> {
    let mut r = Reader::over(0, payload);
    let mut out = Vec::new();
    loop {
        let key = r
            .cstr()
            .map_err(|_| WireError::Startup("unterminated parameter"))?;
        if key.is_empty() {
            return Ok(out);
        }
        let value = r
            .cstr()
            .map_err(|_| WireError::Startup("parameter without value"))?;
        let key = String::from_utf8(key.to_vec())
            .map_err(|_| WireError::Startup("parameter name is not UTF-8"))?;
        let value = String::from_utf8(value.to_vec())
            .map_err(|_| WireError::Startup("parameter value is not UTF-8"))?;
        out.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads_and_limits() {
        let q = Builder::new(b'Q').cstr(b"select 1").finish();
        let mut wire = BytesMut::new();
        q.write_to(&mut wire);
        q.write_to(&mut wire);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&wire[..7]);
        assert!(next_message(&mut buf, MAX_MESSAGE).unwrap().is_none());
        buf.extend_from_slice(&wire[7..]);
        let a = next_message(&mut buf, MAX_MESSAGE).unwrap().unwrap();
        assert_eq!((a.tag, &a.body[..]), (b'Q', &b"select 1\0"[..]));
        assert!(next_message(&mut buf, MAX_MESSAGE).unwrap().is_some());
        assert!(buf.is_empty());

        let mut bad = BytesMut::from(&[b'Q', 0, 0, 0, 2][..]);
        assert!(matches!(
            next_message(&mut bad, MAX_MESSAGE),
            Err(WireError::BadLength { .. })
        ));
        let mut huge = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            next_message(&mut huge, MAX_MESSAGE),
            Err(WireError::TooLong { tag: 'Q', .. })
        ));
        let mut neg = BytesMut::from(&[b'Q', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(next_message(&mut neg, MAX_MESSAGE).is_err());
    }

    #[test]
    fn startup_packets_and_params() {
        let mut buf = BytesMut::new();
        buf.put_u32(8);
        buf.put_u32(SSL_REQUEST);
        let (code, payload) = next_startup(&mut buf).unwrap().unwrap();
        assert_eq!((code, payload.len()), (SSL_REQUEST, 0));
        let params = startup_params(b"user\0bob\0database\0shop\0\0").unwrap();
        assert_eq!(params.len(), 2);
        assert!(startup_params(b"user\0bob").is_err());
        let mut big = BytesMut::new();
        big.put_u32(1_000_000);
        big.put_u32(196_608);
        assert!(next_startup(&mut big).is_err());
    }

    #[test]
    fn reader_rejects_truncation_and_errors_round_trip() {
        let e = error_response(Severity::Error, "42501", "denied", Some("ask"));
        let f = fields(&e).unwrap();
        assert!(f.contains(&(b'C', &b"42501"[..])));
        assert!(f.contains(&(b'H', &b"ask"[..])));
        let m = Message {
            tag: b'D',
            body: Bytes::from_static(&[0, 1, 0, 0, 0, 9, b'x']),
        };
        let mut r = Reader::new(&m);
        assert_eq!(r.i16().unwrap(), 1);
        assert!(r.value().is_err());
        // A NUL smuggled into a string Cordon writes cannot cut it short.
        let q = Builder::new(b'Q').cstr(b"a\0b").finish();
        assert_eq!(&q.body[..], b"ab\0");
    }
}
