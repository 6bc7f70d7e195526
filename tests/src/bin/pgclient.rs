//! `cordon-pgclient`: the "Rust driver" agent in the PostgreSQL tests, a
//! small tokio-postgres client that runs one command and prints what came
//! back in a line format the tests parse.
//!
//! ```text
//! usage: cordon-pgclient --host H --port P --user U --dbname D [OPTIONS] COMMAND [ARGS]
//! options (any order, before COMMAND):
//!   --sslmode disable|prefer|require   (default prefer; "prefer" falls back to
//!                                       plaintext when the server says no)
//!   --ca-file PEM          verify the server certificate (and its name: the
//!                          --host value) against these CAs; without it TLS
//!                          accepts any certificate, as libpq's "require" does
//!   --password-env VAR     password from environment variable VAR (never argv);
//!                          without it no password is sent
//!   --connect-timeout SECS (default 10)
//!   --application-name NAME
//!   --binary               accepted for compatibility; a no-op: `prepared`
//!                          always asks for binary results (tokio-postgres does)
//! commands:
//!   query SQL              simple-query protocol (one Query message; SQL may
//!                          hold several statements)
//!   prepared SQL [PARAM..] extended protocol: Parse/Describe, then Bind with
//!                          binary parameters and binary result columns
//!   cancel SQL             runs SQL (simple query) and 500 ms later sends a
//!                          CancelRequest on a new connection (client.cancel_token())
//!   copyout SQL            COPY ... TO STDOUT; the raw copy data to stdout
//! ```
//!
//! Output, on stdout:
//! - Rows: one line per row, columns separated by one TAB, NULL as `\N`;
//!   backslash, TAB, LF and CR inside a value are escaped as `\\`, `\t`,
//!   `\n`, `\r` (COPY's text format). `query` prints the rows of every
//!   statement in order; command tags are not printed.
//! - `prepared` decodes binary columns itself: bool as `t`/`f`, int2/4/8,
//!   oid, float4/8 (shortest round-trip form; `NaN`, `Infinity`), numeric
//!   (exact, with the column's scale), text/varchar/bpchar/name/json/jsonb/
//!   unknown as text, uuid, date `YYYY-MM-DD`, timestamp `YYYY-MM-DD
//!   HH:MM:SS[.ffffff]`, timestamptz the same plus `+00` (UTC), bytea and any
//!   other type as `\x` + hex of the binary value. Parameters are given as
//!   text and converted to the type the server inferred for them: bool,
//!   int2/4/8, oid, float4/8 and text-like types; `\N` is NULL. Other
//!   parameter types (numeric, ...) are refused (exit 1): cast in SQL,
//!   e.g. `$1::text::numeric`.
//! - `ERROR <SQLSTATE> <message>`: the server (or the proxy, speaking the
//!   protocol) answered with an ErrorResponse after the connection was up;
//!   exit 3. A canceled query prints `ERROR 57014 canceling statement due to
//!   user request`.
//! - `CONNECT <SQLSTATE|-> <message>`: connecting or authenticating failed
//!   (`-` when there was no ErrorResponse, e.g. refused, reset, TLS); exit 2.
//! - `CLOSED <message>`: the connection ended without an ErrorResponse after
//!   it was up (reset, EOF); exit 4.
//!
//! Messages are on one line (line breaks become spaces).
//!
//! On stderr (not parsed): `NOTICE <SQLSTATE> <message>` for each notice,
//! `cancel: sent` / `cancel: <error>`, usage errors.
//!
//! Exit codes: 0 ok, 1 usage or unsupported parameter, 2 connect error,
//! 3 server error, 4 connection lost.

use std::env;
use std::error::Error as StdError;
use std::fmt::Write as _;
use std::future::{poll_fn, Future};
use std::io::{self, Write};
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::StreamExt as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::config::SslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_postgres::types::{FromSql, ToSql, Type};
use tokio_postgres::{AsyncMessage, Client, Config, SimpleQueryMessage, Socket};

const USAGE: &str = "usage: cordon-pgclient --host H --port P --user U --dbname D \
[--sslmode disable|prefer|require] [--ca-file PEM] [--password-env VAR] \
[--connect-timeout SECS] [--application-name NAME] [--binary] \
(query SQL | prepared SQL [PARAM...] | cancel SQL | copyout SQL)";

const EXIT_USAGE: u8 = 1;
const EXIT_CONNECT: u8 = 2;
const EXIT_SERVER: u8 = 3;
const EXIT_CLOSED: u8 = 4;

/// What went wrong, and so what to print and how to exit.
enum Failure {
    Usage(String),
    Connect(tokio_postgres::Error),
    Query(tokio_postgres::Error),
}

struct Args {
    host: String,
    port: u16,
    user: String,
    dbname: String,
    sslmode: SslMode,
    ca_file: Option<String>,
    password_env: Option<String>,
    connect_timeout: u64,
    application_name: Option<String>,
    command: String,
    rest: Vec<String>,
}

fn parse_args(argv: &[String]) -> Result<Args, String> {
    let mut host = None;
    let mut port = None;
    let mut user = None;
    let mut dbname = None;
    let mut sslmode = SslMode::Prefer;
    let mut ca_file = None;
    let mut password_env = None;
    let mut connect_timeout = 10;
    let mut application_name = None;
    let mut it = argv.iter();
    let command = loop {
        let Some(arg) = it.next() else {
            return Err("missing COMMAND".into());
        };
        if !arg.starts_with("--") {
            break arg.clone();
        }
        if arg == "--binary" {
            continue;
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{arg} needs a value"))?
            .clone();
        match arg.as_str() {
            "--host" => host = Some(value),
            "--port" => port = Some(value.parse().map_err(|_| format!("bad --port {value}"))?),
            "--user" => user = Some(value),
            "--dbname" => dbname = Some(value),
            "--sslmode" => {
                sslmode = match value.as_str() {
                    "disable" => SslMode::Disable,
                    "prefer" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    other => return Err(format!("bad --sslmode {other}")),
                }
            }
            "--ca-file" => ca_file = Some(value),
            "--password-env" => password_env = Some(value),
            "--connect-timeout" => {
                connect_timeout = value
                    .parse()
                    .map_err(|_| format!("bad --connect-timeout {value}"))?
            }
            "--application-name" => application_name = Some(value),
            other => return Err(format!("unknown option {other}")),
        }
    };
    Ok(Args {
        host: host.ok_or("missing --host")?,
        port: port.ok_or("missing --port")?,
        user: user.ok_or("missing --user")?,
        dbname: dbname.ok_or("missing --dbname")?,
        sslmode,
        ca_file,
        password_env,
        connect_timeout,
        application_name,
        command,
        rest: it.cloned().collect(),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let argv: Vec<String> = env::args().skip(1).collect();
    let outcome = match parse_args(&argv) {
        Ok(args) => run(args).await,
        Err(e) => Err(Failure::Usage(e)),
    };
    let _ = io::stdout().flush();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("cordon-pgclient: {msg}\n{USAGE}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Connect(e)) => {
            let code = e.code().map_or("-", |c| c.code());
            println!("CONNECT {code} {}", one_line(&error_message(&e)));
            ExitCode::from(EXIT_CONNECT)
        }
        Err(Failure::Query(e)) => match e.as_db_error() {
            Some(db) => {
                println!("ERROR {} {}", db.code().code(), one_line(db.message()));
                ExitCode::from(EXIT_SERVER)
            }
            None => {
                println!("CLOSED {}", one_line(&error_message(&e)));
                ExitCode::from(EXIT_CLOSED)
            }
        },
    }
}

async fn run(args: Args) -> Result<(), Failure> {
    let tls = MakeRustls::new(args.ca_file.as_deref()).map_err(Failure::Usage)?;
    let mut config = Config::new();
    config
        .host(&args.host)
        .port(args.port)
        .user(&args.user)
        .dbname(&args.dbname)
        .ssl_mode(args.sslmode)
        .connect_timeout(Duration::from_secs(args.connect_timeout));
    if let Some(name) = &args.application_name {
        config.application_name(name);
    }
    if let Some(var) = &args.password_env {
        let password = env::var(var)
            .map_err(|_| Failure::Usage(format!("--password-env {var}: variable not set")))?;
        config.password(password);
    }
    let (client, mut connection) = config
        .connect(tls.clone())
        .await
        .map_err(Failure::Connect)?;
    // Drive the connection, reporting notices on stderr.
    let driver = tokio::spawn(async move {
        loop {
            match poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notice(n))) => {
                    eprintln!("NOTICE {} {}", n.code().code(), one_line(n.message()));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    eprintln!("connection: {}", error_message(&e));
                    break;
                }
                None => break,
            }
        }
    });
    let sql = args
        .rest
        .first()
        .cloned()
        .ok_or_else(|| Failure::Usage(format!("{} needs SQL", args.command)))?;
    let result = match args.command.as_str() {
        "query" => simple(&client, &sql).await,
        "prepared" => prepared(&client, &sql, args.rest.get(1..).unwrap_or_default()).await,
        "cancel" => cancel(&client, &sql, tls).await,
        "copyout" => copy_out(&client, &sql).await,
        other => Err(Failure::Usage(format!("unknown command {other}"))),
    };
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
    result
}

async fn simple(client: &Client, sql: &str) -> Result<(), Failure> {
    let messages = client.simple_query(sql).await.map_err(Failure::Query)?;
    let mut out = String::new();
    for message in messages {
        if let SimpleQueryMessage::Row(row) = message {
            let cols: Vec<String> = (0..row.len())
                .map(|i| row.get(i).map_or_else(|| "\\N".to_owned(), escape))
                .collect();
            out.push_str(&cols.join("\t"));
            out.push('\n');
        }
    }
    print!("{out}");
    Ok(())
}

async fn prepared(client: &Client, sql: &str, params: &[String]) -> Result<(), Failure> {
    let statement = client.prepare(sql).await.map_err(Failure::Query)?;
    if statement.params().len() != params.len() {
        return Err(Failure::Usage(format!(
            "the statement has {} parameters, {} given",
            statement.params().len(),
            params.len()
        )));
    }
    let values: Vec<Box<dyn ToSql + Sync + Send>> = statement
        .params()
        .iter()
        .zip(params)
        .map(|(ty, text)| param(ty, text))
        .collect::<Result<_, _>>()
        .map_err(Failure::Usage)?;
    let refs: Vec<&(dyn ToSql + Sync)> = values
        .iter()
        .map(|v| v.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let rows = client
        .query(&statement, &refs)
        .await
        .map_err(Failure::Query)?;
    let mut out = String::new();
    for row in rows {
        let mut cols = Vec::with_capacity(row.len());
        for (i, column) in row.columns().iter().enumerate() {
            let raw: Option<Raw> = row.try_get(i).map_err(Failure::Query)?;
            cols.push(match raw {
                None => "\\N".to_owned(),
                Some(Raw(bytes)) => escape(&decode(column.type_(), &bytes)),
            });
        }
        out.push_str(&cols.join("\t"));
        out.push('\n');
    }
    print!("{out}");
    Ok(())
}

async fn cancel(client: &Client, sql: &str, tls: MakeRustls) -> Result<(), Failure> {
    let token = client.cancel_token();
    let canceler = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match token.cancel_query(tls).await {
            Ok(()) => eprintln!("cancel: sent"),
            Err(e) => eprintln!("cancel: {}", one_line(&error_message(&e))),
        }
    });
    let result = simple(client, sql).await;
    canceler.abort();
    result
}

async fn copy_out(client: &Client, sql: &str) -> Result<(), Failure> {
    let stream = client.copy_out(sql).await.map_err(Failure::Query)?;
    let mut stream = std::pin::pin!(stream);
    let mut stdout = io::stdout().lock();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(Failure::Query)?;
        let _ = stdout.write_all(&chunk);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// values

/// A parameter given as text, converted for the type the server inferred.
fn param(ty: &Type, text: &str) -> Result<Box<dyn ToSql + Sync + Send>, String> {
    fn parsed<T>(ty: &Type, text: &str) -> Result<Box<dyn ToSql + Sync + Send>, String>
    where
        T: std::str::FromStr + ToSql + Sync + Send + 'static,
    {
        if text == "\\N" {
            return Ok(Box::new(None::<T>));
        }
        text.parse::<T>()
            .map(|v| Box::new(Some(v)) as Box<dyn ToSql + Sync + Send>)
            .map_err(|_| format!("parameter {text:?} is not a valid {ty}"))
    }
    match *ty {
        Type::BOOL => {
            if text == "\\N" {
                return Ok(Box::new(None::<bool>));
            }
            match text {
                "t" | "true" | "1" | "on" | "yes" => Ok(Box::new(Some(true))),
                "f" | "false" | "0" | "off" | "no" => Ok(Box::new(Some(false))),
                _ => Err(format!("parameter {text:?} is not a valid bool")),
            }
        }
        Type::INT2 => parsed::<i16>(ty, text),
        Type::INT4 => parsed::<i32>(ty, text),
        Type::INT8 => parsed::<i64>(ty, text),
        Type::OID => parsed::<u32>(ty, text),
        Type::FLOAT4 => parsed::<f32>(ty, text),
        Type::FLOAT8 => parsed::<f64>(ty, text),
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            parsed::<String>(ty, text)
        }
        _ => Err(format!(
            "parameter type {ty} is not supported by cordon-pgclient: cast in SQL \
             (e.g. $1::text::{ty})"
        )),
    }
}

/// Any column value, undecoded (binary format).
struct Raw(Vec<u8>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Raw, Box<dyn StdError + Sync + Send>> {
        Ok(Raw(raw.to_vec()))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// A binary column value as text (see the module docs).
fn decode(ty: &Type, raw: &[u8]) -> String {
    decode_known(ty, raw).unwrap_or_else(|| hex(raw))
}

fn decode_known(ty: &Type, raw: &[u8]) -> Option<String> {
    let text = || String::from_utf8_lossy(raw).into_owned();
    Some(match *ty {
        Type::BOOL => match raw {
            [0] => "f".to_owned(),
            [_] => "t".to_owned(),
            _ => return None,
        },
        Type::INT2 => i16::from_be_bytes(raw.try_into().ok()?).to_string(),
        Type::INT4 => i32::from_be_bytes(raw.try_into().ok()?).to_string(),
        Type::INT8 => i64::from_be_bytes(raw.try_into().ok()?).to_string(),
        Type::OID => u32::from_be_bytes(raw.try_into().ok()?).to_string(),
        Type::FLOAT4 => float(f64::from(f32::from_be_bytes(raw.try_into().ok()?))),
        Type::FLOAT8 => float(f64::from_be_bytes(raw.try_into().ok()?)),
        Type::TEXT
        | Type::VARCHAR
        | Type::BPCHAR
        | Type::NAME
        | Type::UNKNOWN
        | Type::JSON
        | Type::XML => text(),
        Type::JSONB => match raw.split_first() {
            Some((1, rest)) => String::from_utf8_lossy(rest).into_owned(),
            _ => return None,
        },
        Type::NUMERIC => numeric(raw)?,
        Type::UUID => {
            let h: String = raw.iter().fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            });
            if h.len() != 32 {
                return None;
            }
            format!(
                "{}-{}-{}-{}-{}",
                h.get(0..8)?,
                h.get(8..12)?,
                h.get(12..16)?,
                h.get(16..20)?,
                h.get(20..32)?
            )
        }
        Type::DATE => match i32::from_be_bytes(raw.try_into().ok()?) {
            i32::MAX => "infinity".to_owned(),
            i32::MIN => "-infinity".to_owned(),
            days => pg_date(i64::from(days))?,
        },
        Type::TIMESTAMP => timestamp(i64::from_be_bytes(raw.try_into().ok()?))?,
        Type::TIMESTAMPTZ => {
            let us = i64::from_be_bytes(raw.try_into().ok()?);
            let t = timestamp(us)?;
            if us == i64::MAX || us == i64::MIN {
                t
            } else {
                t + "+00"
            }
        }
        _ => return None,
    })
}

/// `\x` and lower-case hex, as PostgreSQL prints bytea.
fn hex(raw: &[u8]) -> String {
    raw.iter().fold(String::from("\\x"), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v.is_infinite() {
        if v > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
    } else {
        v.to_string()
    }
}

/// Days since 2000-01-01 as `YYYY-MM-DD`.
fn pg_date(days: i64) -> Option<String> {
    const PG_EPOCH_JULIAN_DAY: i64 = 2_451_545;
    let jd = i32::try_from(PG_EPOCH_JULIAN_DAY + days).ok()?;
    Some(time::Date::from_julian_day(jd).ok()?.to_string())
}

/// Microseconds since 2000-01-01 00:00 as `YYYY-MM-DD HH:MM:SS[.ffffff]`
/// (trailing zeros of the fraction dropped, as PostgreSQL prints it).
fn timestamp(us: i64) -> Option<String> {
    match us {
        i64::MAX => return Some("infinity".to_owned()),
        i64::MIN => return Some("-infinity".to_owned()),
        _ => {}
    }
    const DAY_US: i64 = 86_400_000_000;
    let days = us.div_euclid(DAY_US);
    let rest = us.rem_euclid(DAY_US);
    let secs = rest / 1_000_000;
    let frac = rest % 1_000_000;
    let mut s = format!(
        "{} {:02}:{:02}:{:02}",
        pg_date(days)?,
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
    if frac != 0 {
        let f = format!("{frac:06}");
        s.push('.');
        s.push_str(f.trim_end_matches('0'));
    }
    Some(s)
}

/// Binary numeric: ndigits, weight, sign, dscale (each 16 bits), then
/// ndigits base-10000 digits; printed exactly with dscale decimals.
fn numeric(raw: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<u16> {
        Some(u16::from_be_bytes([*raw.get(2 * i)?, *raw.get(2 * i + 1)?]))
    };
    let ndigits = usize::from(word(0)?);
    let weight = i64::from(word(1)? as i16);
    let sign = word(2)?;
    let dscale = usize::from(word(3)?);
    match sign {
        0xC000 => return Some("NaN".to_owned()),
        0xD000 => return Some("Infinity".to_owned()),
        0xF000 => return Some("-Infinity".to_owned()),
        0x0000 | 0x4000 => {}
        _ => return None,
    }
    let digits: Vec<u16> = (0..ndigits).map(|i| word(4 + i)).collect::<Option<_>>()?;
    let digit = |k: i64| -> u16 {
        usize::try_from(k)
            .ok()
            .and_then(|k| digits.get(k))
            .copied()
            .unwrap_or(0)
    };
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for k in 0..=weight {
            if k == 0 {
                let _ = write!(s, "{}", digit(k));
            } else {
                let _ = write!(s, "{:04}", digit(k));
            }
        }
    }
    if dscale > 0 {
        let mut frac = String::new();
        let mut k = weight + 1;
        while frac.len() < dscale {
            let _ = write!(frac, "{:04}", digit(k));
            k += 1;
        }
        frac.truncate(dscale);
        s.push('.');
        s.push_str(&frac);
    }
    Some(s)
}

/// COPY text-format escaping, so one row stays one line.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

fn one_line(s: &str) -> String {
    s.split(['\n', '\r'])
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The error with its sources ("error connecting to server: Connection
/// refused (os error 111)"); the server's message for ErrorResponses.
fn error_message(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return db.message().to_owned();
    }
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        source = s.source();
    }
    msg
}

// ---------------------------------------------------------------------------
// TLS (rustls) for tokio-postgres

/// tokio-postgres's TLS hook backed by rustls: verifies against `--ca-file`
/// when given, otherwise accepts any certificate (still checking the
/// handshake signatures). No channel binding is offered.
#[derive(Clone)]
struct MakeRustls {
    config: Arc<ClientConfig>,
}

impl MakeRustls {
    fn new(ca_file: Option<&str>) -> Result<MakeRustls, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?;
        let config = match ca_file {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("--ca-file {path}: {e}"))?
                {
                    let cert = cert.map_err(|e| format!("--ca-file {path}: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("--ca-file {path}: {e}"))?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
        };
        Ok(MakeRustls {
            config: Arc::new(config),
        })
    }
}

impl MakeTlsConnect<Socket> for MakeRustls {
    type Stream = RustlsStream;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(RustlsConnect {
            config: self.config.clone(),
            name,
        })
    }
}

struct RustlsConnect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for RustlsConnect {
    type Stream = RustlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(RustlsStream(tls))
        })
    }
}

struct RustlsStream(tokio_rustls::client::TlsStream<Socket>);

impl AsyncRead for RustlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for RustlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl TlsStream for RustlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

/// libpq's sslmode=require without a root certificate: encrypt, but trust
/// whatever certificate the server shows.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_decoding() {
        // 1234.5600 : ndigits 3 (1234, 5600), weight 0, scale 4
        let raw = [0, 2, 0, 0, 0, 0, 0, 4, 0x04, 0xD2, 0x15, 0xE0];
        assert_eq!(numeric(&raw).as_deref(), Some("1234.5600"));
        // -0.0005 : digit 5 at weight -1, scale 4
        let raw = [0, 1, 0xFF, 0xFF, 0x40, 0, 0, 4, 0, 5];
        assert_eq!(numeric(&raw).as_deref(), Some("-0.0005"));
        // 10000 : digit 1 at weight 1, no trailing zero digits
        let raw = [0, 1, 0, 1, 0, 0, 0, 0, 0, 1];
        assert_eq!(numeric(&raw).as_deref(), Some("10000"));
        // 0 with scale 2
        let raw = [0, 0, 0, 0, 0, 0, 0, 2];
        assert_eq!(numeric(&raw).as_deref(), Some("0.00"));
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0).as_deref(), Some("2000-01-01 00:00:00"));
        assert_eq!(
            timestamp(86_400_000_000 + 3_723_500_000).as_deref(),
            Some("2000-01-02 01:02:03.5")
        );
        assert_eq!(timestamp(-1).as_deref(), Some("1999-12-31 23:59:59.999999"));
    }

    #[test]
    fn escaping() {
        assert_eq!(escape("a\tb\\c\nd"), "a\\tb\\\\c\\nd");
        assert_eq!(one_line("a\nb\r\nc"), "a b c");
    }
}
