//! The HTTP client the OIDC code hands to `openidconnect`: one HTTP/1.1
//! request per connection (`Connection: close`) over tokio, TLS by rustls.
//! Small on purpose: discovery, JWKS, device and token endpoints are all it
//! talks to. It never follows redirects (the library's advice: following them
//! opens SSRF holes), refuses plain http except to loopback, bounds every
//! request in time and every response in size.

use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use openidconnect::{
    http::{self, header, HeaderValue},
    url::Url,
    AsyncHttpClient, HttpRequest, HttpResponse,
};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::config::oidc::transport_allowed;

/// Time for one whole request: connect, TLS, send, and read the response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest response accepted (headers and body), in bytes.
pub const MAX_RESPONSE: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: {problem}")]
    Refused { url: String, problem: String },
    #[error("{url}: no answer within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout { url: String },
    #[error("{url}: {source}")]
    Io {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{url}: TLS is not available: {problem}")]
    NoTls { url: String, problem: String },
    #[error("{url}: malformed HTTP response: {problem}")]
    Malformed { url: String, problem: String },
}

/// See the module documentation. Cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    /// Built once; an error (no CA certificates, unreadable `ca_file`) is
    /// kept and reported by every https request instead.
    tls: Result<Arc<rustls::ClientConfig>, String>,
    /// Plain http to a loopback host is allowed (see
    /// [`crate::config::oidc::transport_allowed`]).
    http_loopback: bool,
}

impl HttpClient {
    /// TLS trusts `ca_file` only when given, else the system's roots. Plain
    /// http is refused, except to a loopback host when `http_loopback`.
    pub fn new(ca_file: Option<&std::path::Path>, http_loopback: bool) -> HttpClient {
        let tls = match ca_file {
            Some(file) => {
                crate::proxy::tls::upstream_client_config(file).map_err(|e| e.to_string())
            }
            None => system_roots_config(),
        };
        HttpClient { tls, http_loopback }
    }

    /// One request; see the module documentation.
    pub async fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError> {
        let url_text = request.uri().to_string();
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(request, &url_text)).await {
            Ok(result) => result,
            Err(_elapsed) => Err(HttpError::Timeout { url: url_text }),
        }
    }

    async fn exchange(
        &self,
        request: HttpRequest,
        url_text: &str,
    ) -> Result<HttpResponse, HttpError> {
        let refused = |problem: String| HttpError::Refused {
            url: url_text.to_owned(),
            problem,
        };
        let io = |source| HttpError::Io {
            url: url_text.to_owned(),
            source,
        };
        let url = Url::parse(url_text).map_err(|e| refused(e.to_string()))?;
        transport_allowed(&url, self.http_loopback).map_err(refused)?;
        let host = url
            .host_str()
            .ok_or_else(|| refused("no host".into()))?
            .to_owned();
        let port = url
            .port_or_known_default()
            .ok_or_else(|| refused("no port".into()))?;
        // `host_str` keeps IPv6 brackets; the resolver and TLS want them off.
        let bare_host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tcp = TcpStream::connect((bare_host.as_str(), port))
            .await
            .map_err(io)?;
        let _ = tcp.set_nodelay(true);
        let head = request_head(&request, &url, &host);
        let body = request.body();
        let raw = if url.scheme() == "https" {
            let config = self.tls.clone().map_err(|problem| HttpError::NoTls {
                url: url_text.to_owned(),
                problem,
            })?;
            let name = rustls::pki_types::ServerName::try_from(bare_host)
                .map_err(|e| refused(format!("not a TLS server name: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(io)?;
            roundtrip(tls, &head, body).await.map_err(io)?
        } else {
            roundtrip(tcp, &head, body).await.map_err(io)?
        };
        parse_response(&raw).map_err(|problem| HttpError::Malformed {
            url: url_text.to_owned(),
            problem,
        })
    }
}

impl<'c> AsyncHttpClient<'c> for HttpClient {
    type Error = HttpError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.send(request))
    }
}

fn system_roots_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(String::new, |e| format!(" ({e})"));
        return Err(format!(
            "no CA certificates found in the system trust store{why}; set identity.oidc.ca_file"
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
        .map_err(|e| e.to_string())
}

/// Request line and headers. The caller's headers are kept except those
/// this client owns (Host, Connection, Content-Length, Transfer-Encoding).
fn request_head(request: &HttpRequest, url: &Url, host: &str) -> Vec<u8> {
    let mut target = url.path().to_owned();
    if let Some(q) = url.query() {
        target.push('?');
        target.push_str(q);
    }
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let mut head = format!(
        "{} {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\
         User-Agent: cordon/{}\r\nAccept-Encoding: identity\r\nContent-Length: {}\r\n",
        request.method(),
        env!("CARGO_PKG_VERSION"),
        request.body().len()
    )
    .into_bytes();
    for (name, value) in request.headers() {
        if [
            header::HOST,
            header::CONNECTION,
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::ACCEPT_ENCODING,
        ]
        .contains(name)
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// Sends the request and reads until the server closes (at most
/// [`MAX_RESPONSE`] bytes).
async fn roundtrip<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    head: &[u8],
    body: &[u8],
) -> std::io::Result<Vec<u8>> {
    stream.write_all(head).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    let mut raw = Vec::new();
    let limit = u64::try_from(MAX_RESPONSE + 1).unwrap_or(u64::MAX);
    (&mut stream).take(limit).read_to_end(&mut raw).await?;
    if raw.len() > MAX_RESPONSE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("response larger than {MAX_RESPONSE} bytes"),
        ));
    }
    Ok(raw)
}

/// Status, headers and body (Content-Length, chunked, or up to EOF).
fn parse_response(raw: &[u8]) -> Result<HttpResponse, String> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let head_len = match parsed.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("the connection closed mid-header".into()),
        Err(e) => return Err(e.to_string()),
    };
    let status = parsed.code.ok_or("no status code")?;
    let mut builder = http::Response::builder().status(status);
    let mut chunked = false;
    let mut length: Option<usize> = None;
    for h in parsed.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked");
        } else if h.name.eq_ignore_ascii_case("content-length") {
            length = Some(
                std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok())
                    .ok_or("bad Content-Length")?,
            );
        }
        let value = HeaderValue::from_bytes(h.value).map_err(|e| e.to_string())?;
        builder = builder.header(h.name, value);
    }
    let rest = raw.get(head_len..).unwrap_or_default();
    let body = if chunked {
        dechunk(rest)?
    } else if let Some(n) = length {
        rest.get(..n)
            .ok_or_else(|| format!("body shorter than its Content-Length {n}"))?
            .to_vec()
    } else {
        rest.to_vec()
    };
    builder.body(body).map_err(|e| e.to_string())
}

/// Decodes a chunked body (trailers ignored).
fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line not terminated")?;
        let line = std::str::from_utf8(rest.get(..line_end).unwrap_or_default())
            .map_err(|_| "chunk size is not text")?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size `{size_text}`"))?;
        rest = rest.get(line_end + 2..).unwrap_or_default();
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).ok_or("chunk shorter than announced")?;
        out.extend_from_slice(chunk);
        rest = rest
            .get(size..)
            .and_then(|r| r.strip_prefix(b"\r\n"))
            .ok_or("chunk not followed by CRLF")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_with_length_chunks_or_eof() {
        let r =
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX: y\r\n\r\n{}extra").unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body(), b"{}");
        assert_eq!(r.headers().get("x").unwrap(), "y");
        let r = parse_response(
            b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.body(), b"abcde");
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\nall of it").unwrap();
        assert_eq!(r.body(), b"all of it");
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc"[..],
            b"HTTP/1.1 200 OK\r\nContent-Le",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
            b"garbage",
        ] {
            assert!(
                parse_response(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn request_head_owns_framing_headers() {
        let req = http::Request::builder()
            .method("POST")
            .uri("http://127.0.0.1:8080/token?a=b")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("content-length", "999")
            .header("host", "evil")
            .body(b"x=1".to_vec())
            .unwrap();
        let url = Url::parse("http://127.0.0.1:8080/token?a=b").unwrap();
        let head = String::from_utf8(request_head(&req, &url, "127.0.0.1")).unwrap();
        assert!(head.starts_with("POST /token?a=b HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"));
        assert!(head.contains("Content-Length: 3\r\n"));
        assert!(!head.contains("999") && !head.contains("evil"), "{head}");
        assert!(head.contains("content-type: application/x-www-form-urlencoded\r\n"));
        assert!(head.ends_with("\r\n\r\n"));
    }

    #[tokio::test]
    async fn plain_http_off_loopback_is_refused_before_connecting() {
        let client = HttpClient::new(None, true);
        let req = http::Request::builder()
            .uri("http://192.0.2.1/.well-known/openid-configuration")
            .body(Vec::new())
            .unwrap();
        let e = client.send(req).await.unwrap_err();
        assert!(matches!(e, HttpError::Refused { .. }), "{e}");
        assert!(e.to_string().contains("only https"), "{e}");
    }
}
