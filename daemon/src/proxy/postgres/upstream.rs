//! The upstream side of the postgres handler: TCP (and TLS, verify-full)
//! to the database, StartupMessage as the vaulted role, and authentication
//! with the vaulted password: SCRAM-SHA-256, md5 or cleartext. The password
//! is read from the vault for every new connection (rotation needs no
//! restart) and never leaves this module except inside the auth exchange.

use std::sync::Arc;

use bytes::BytesMut;
use postgres_protocol::{
    authentication::{self, sasl},
    message::frontend,
};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::wire::{self, Message, Reader};
use crate::vault::Secret;

/// Any byte stream the handler talks over: plain TCP or TLS.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub type Stream = Box<dyn Io>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot reach the database: {0}")]
    Connect(String),
    #[error("TLS to the database failed: {0}")]
    Tls(String),
    #[error("the database does not offer TLS")]
    NoTls,
    #[error("the database closed the connection during start-up")]
    Closed,
    #[error("I/O with the database: {0}")]
    Io(#[from] std::io::Error),
    #[error("the database sent a malformed message: {0}")]
    Wire(#[from] wire::WireError),
    #[error("the database asked for an authentication method cordon does not support (code {0})")]
    UnsupportedAuth(i32),
    #[error("the database offers no SASL mechanism cordon supports (offered: {0})")]
    UnsupportedSasl(String),
    #[error("SCRAM exchange with the database failed: {0}")]
    Scram(String),
    #[error("the database refused the login: {sqlstate} {message}")]
    Refused { sqlstate: String, message: String },
    #[error("the vaulted credential is not valid UTF-8 text")]
    BadSecret,
    #[error("the database sent `{0}` where start-up messages were expected")]
    Unexpected(char),
}

/// How to reach and log in to one database.
pub struct Target<'a> {
    pub stream: TcpStream,
    pub tls: Option<(Arc<rustls::ClientConfig>, String)>,
    pub user: &'a str,
    pub database: &'a str,
    /// Further start-up parameters the agent asked for (already vetted).
    pub params: &'a [(String, String)],
    pub password: &'a Secret,
}

/// A logged-in upstream connection, positioned after ReadyForQuery.
pub struct Upstream {
    pub stream: Stream,
    /// ParameterStatus messages, to be relayed to the agent.
    pub parameters: Vec<Message>,
    /// The upstream's BackendKeyData (pid, secret), for cancels.
    pub key: Option<(i32, i32)>,
    /// Notices sent during start-up.
    pub notices: Vec<Message>,
    pub status: u8,
}

/// Reads one message, reading more from `stream` as needed.
pub async fn read_message<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> Result<Message, UpstreamError> {
    loop {
        if let Some(m) = wire::next_message(buf, wire::MAX_MESSAGE)? {
            return Ok(m);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(UpstreamError::Closed);
        }
    }
}

fn refused(msg: &Message) -> UpstreamError {
    let fields = wire::fields(msg).unwrap_or_default();
    let get = |c: u8| {
        fields
            .iter()
            .find(|(k, _)| *k == c)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    UpstreamError::Refused {
        sqlstate: get(b'C'),
        message: get(b'M'),
    }
}

/// Connects, negotiates TLS if configured, logs in.
pub async fn login(target: Target<'_>) -> Result<Upstream, UpstreamError> {
    let Target {
        mut stream,
        tls,
        user,
        database,
        params,
        password,
    } = target;
    let mut out = BytesMut::new();
    let mut stream: Stream = match tls {
        None => Box::new(stream),
        Some((config, server_name)) => {
            frontend::ssl_request(&mut out);
            stream.write_all(&out).await?;
            out.clear();
            let mut answer = [0u8; 1];
            stream.read_exact(&mut answer).await?;
            if answer != *b"S" {
                return Err(UpstreamError::NoTls);
            }
            let name = rustls::pki_types::ServerName::try_from(server_name)
                .map_err(|e| UpstreamError::Tls(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|e| UpstreamError::Tls(e.to_string()))?;
            Box::new(tls)
        }
    };
    let mut startup: Vec<(&str, &str)> = vec![("user", user), ("database", database)];
    startup.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    frontend::startup_message(startup.iter().copied(), &mut out)?;
    stream.write_all(&out).await?;
    out.clear();

    let mut buf = BytesMut::with_capacity(8192);
    let mut scram: Option<sasl::ScramSha256> = None;
    let mut parameters = Vec::new();
    let mut notices = Vec::new();
    let mut key = None;
    loop {
        let msg = read_message(&mut stream, &mut buf).await?;
        match msg.tag {
            b'R' => {
                let mut r = Reader::new(&msg);
                match r.i32()? {
                    0 => {}
                    3 => {
                        let pw = password.expose();
                        frontend::password_message(pw, &mut out)?;
                    }
                    5 => {
                        let salt: [u8; 4] = r
                            .bytes(4)?
                            .try_into()
                            .map_err(|_| UpstreamError::UnsupportedAuth(5))?;
                        let hash =
                            authentication::md5_hash(user.as_bytes(), password.expose(), salt);
                        frontend::password_message(hash.as_bytes(), &mut out)?;
                    }
                    10 => {
                        let mut offered = Vec::new();
                        loop {
                            let m = r.str()?;
                            if m.is_empty() {
                                break;
                            }
                            offered.push(m.to_owned());
                        }
                        if !offered.iter().any(|m| m == sasl::SCRAM_SHA_256) {
                            return Err(UpstreamError::UnsupportedSasl(offered.join(", ")));
                        }
                        let pw = password.expose_str().ok_or(UpstreamError::BadSecret)?;
                        let s = sasl::ScramSha256::new(
                            pw.as_bytes(),
                            sasl::ChannelBinding::unsupported(),
                        );
                        frontend::sasl_initial_response(
                            sasl::SCRAM_SHA_256,
                            s.message(),
                            &mut out,
                        )?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram
                            .as_mut()
                            .ok_or(UpstreamError::Scram("continue before start".into()))?;
                        s.update(r.rest())
                            .map_err(|e| UpstreamError::Scram(e.to_string()))?;
                        frontend::sasl_response(s.message(), &mut out)?;
                    }
                    12 => {
                        let s = scram
                            .as_mut()
                            .ok_or(UpstreamError::Scram("final before start".into()))?;
                        s.finish(r.rest())
                            .map_err(|e| UpstreamError::Scram(e.to_string()))?;
                    }
                    other => return Err(UpstreamError::UnsupportedAuth(other)),
                }
                if !out.is_empty() {
                    stream.write_all(&out).await?;
                    out.clear();
                }
            }
            b'S' => parameters.push(msg),
            b'K' => {
                let mut r = Reader::new(&msg);
                key = Some((r.i32()?, r.i32()?));
            }
            b'N' => notices.push(msg),
            b'E' => return Err(refused(&msg)),
            b'Z' => {
                let status = Reader::new(&msg).u8()?;
                return Ok(Upstream {
                    stream,
                    parameters,
                    key,
                    notices,
                    status,
                });
            }
            other => return Err(UpstreamError::Unexpected(char::from(other))),
        }
    }
}

/// Sends a CancelRequest for `key` to the database at `addr`.
pub async fn cancel(
    addr: std::net::SocketAddr,
    key: (i32, i32),
    timeout: std::time::Duration,
) -> Result<(), UpstreamError> {
    let mut stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| UpstreamError::Connect("timed out".into()))?
        .map_err(|e| UpstreamError::Connect(e.to_string()))?;
    let mut out = BytesMut::new();
    frontend::cancel_request(key.0, key.1, &mut out);
    stream.write_all(&out).await?;
    // The server closes the connection without answering.
    let mut sink = [0u8; 16];
    let _ = tokio::time::timeout(timeout, stream.read(&mut sink)).await;
    Ok(())
}
