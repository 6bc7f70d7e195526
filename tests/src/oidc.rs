//! A real OpenID Connect provider for the integration tests: the npm package
//! `oidc-provider`, run with node from `tests/oidc/provider.mjs` (installed by
//! `cargo xtask setup`, which runs `npm ci` there). [`OidcProvider::start`]
//! runs it on 127.0.0.1 (a port of its own choosing; the issuer is
//! `http://127.0.0.1:PORT`) with one public native client, `cordon-cli`, that
//! may use the device flow, auth code + PKCE and refresh tokens.
//!
//! Nobody types a password: the provider's test routes (see the script's
//! header) play the user's browser through its real pages and complete the
//! login as an account and groups the test names. The helpers here drive
//! them: [`OidcProvider::id_token`] runs a whole device flow and returns a
//! real ID token; [`OidcProvider::approve_device`] confirms a code someone
//! else (`cordon login`) is polling for; [`OidcProvider::rotate_keys`]
//! rotates the signing key; [`OidcProvider::sign`] signs arbitrary claims
//! for negative tests.
//!
//! Dropping the provider stops node by pid (SIGTERM, then SIGKILL).

use std::fs;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

/// The client the provider registers by default.
pub const CLIENT_ID: &str = "cordon-cli";

/// How long node may take to print its first line.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// One HTTP request to the provider.
const HTTP_LIMIT: Duration = Duration::from_secs(30);

/// `tests/oidc`: package.json, package-lock.json, provider.mjs.
pub fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// True when node and the provider's npm packages are installed. Otherwise
/// panics when `CI` is set, or prints why the test is skipped and returns
/// false.
pub fn provider_available() -> bool {
    let node = Command::new("node")
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success());
    let modules = provider_dir()
        .join("node_modules/oidc-provider/package.json")
        .is_file();
    if node && modules {
        return true;
    }
    let why = if node {
        format!(
            "{} has no node_modules/oidc-provider: run `cargo xtask setup` (it runs `npm ci` there)",
            provider_dir().display()
        )
    } else {
        "node is not installed: run `cargo xtask setup`".to_owned()
    };
    let current = thread::current();
    let test = current.name().unwrap_or("this test");
    if crate::in_ci() {
        panic!("`{test}` needs the test OIDC provider: {why}");
    }
    println!("skipping `{test}`: {why}. CI is unset, so this is a skip, not a failure.");
    false
}

/// Returns early from a test when the OIDC provider cannot run (see
/// [`provider_available`]).
#[macro_export]
macro_rules! require_oidc_provider {
    () => {
        if !$crate::oidc::provider_available() {
            return;
        }
    };
}

/// How [`OidcProvider::start_with`] runs the provider.
#[derive(Clone, Debug, Default)]
pub struct OidcOptions {
    /// Lifetime of the ID tokens it issues (default 3600 s).
    pub id_token_ttl: Option<u64>,
    /// Client metadata (a JSON array) instead of the default `cordon-cli`.
    pub clients: Option<Value>,
}

/// Tokens from a completed flow.
#[derive(Clone, Debug)]
pub struct Tokens {
    pub id_token: String,
    pub refresh_token: Option<String>,
    pub access_token: String,
}

/// A running provider; see the module documentation.
pub struct OidcProvider {
    child: Option<Child>,
    dir: TempDir,
    pub issuer: String,
    pub port: u16,
    pub client_id: String,
}

impl OidcProvider {
    /// Default options.
    pub fn start() -> OidcProvider {
        OidcProvider::start_with(OidcOptions::default())
    }

    pub fn start_with(opts: OidcOptions) -> OidcProvider {
        let dir = tempfile::Builder::new()
            .prefix("cordon-test-oidc-")
            .tempdir()
            .expect("tempdir for the OIDC provider");
        let stderr_path = dir.path().join("provider.stderr");
        let stderr = fs::File::create(&stderr_path).expect("create provider stderr file");
        let mut cmd = Command::new("node");
        cmd.arg(provider_dir().join("provider.mjs"))
            .args(["--port", "0"])
            .current_dir(provider_dir())
            .env("NODE_ENV", "test")
            .env_remove("OIDC_PORT")
            .env_remove("OIDC_ISSUER")
            .env_remove("OIDC_CLIENTS")
            .env_remove("OIDC_ID_TOKEN_TTL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        if let Some(ttl) = opts.id_token_ttl {
            cmd.args(["--id-token-ttl", &ttl.to_string()]);
        }
        if let Some(clients) = &opts.clients {
            cmd.args(["--clients", &clients.to_string()]);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node {}: {e}", provider_dir().display()));
        let stdout = child.stdout.take().expect("provider stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the provider never blocks on a full pipe.
            let _ = std::io::copy(&mut reader, &mut std::io::sink());
        });
        let line = match rx.recv_timeout(READY_LIMIT) {
            Ok(line) => line,
            Err(_) => {
                crate::kill_pid(child.id(), libc::SIGKILL);
                let _ = child.wait();
                panic!(
                    "the OIDC provider printed nothing within {READY_LIMIT:?}; stderr:\n{}",
                    fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
        };
        let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the OIDC provider's first line is not JSON ({e}): {line:?}; stderr:\n{}",
                fs::read_to_string(&stderr_path).unwrap_or_default()
            )
        });
        let issuer = ready["issuer"].as_str().expect("issuer").to_owned();
        let port = u16::try_from(ready["port"].as_u64().expect("port")).expect("port fits u16");
        let client_id = ready["clients"][0].as_str().unwrap_or(CLIENT_ID).to_owned();
        OidcProvider {
            child: Some(child),
            dir,
            issuer,
            port,
            client_id,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// What node wrote to stderr, for failure messages.
    pub fn stderr(&self) -> String {
        fs::read_to_string(self.dir.path().join("provider.stderr")).unwrap_or_default()
    }

    /// An `[identity.oidc]` table for this provider; `extra` lines are added
    /// inside it (e.g. `approver_groups = ["approvers"]`). The test provider
    /// speaks plain http on loopback, which needs the explicit opt-in.
    pub fn config_table(&self, extra: &str) -> String {
        format!(
            "\n[identity.oidc]\nissuer = \"{}\"\nclient_id = \"{}\"\nallow_http_loopback = true\n{extra}\n",
            self.issuer, self.client_id
        )
    }

    /// POST `path` with a JSON body; the JSON answer (panics on a non-2xx).
    pub fn post_json(&self, path: &str, body: &Value) -> Value {
        let (status, text) = self.request(
            "POST",
            path,
            "application/json",
            body.to_string().as_bytes(),
        );
        assert!(
            (200..300).contains(&status),
            "POST {path} {body}: HTTP {status}: {text}\nprovider stderr:\n{}",
            self.stderr()
        );
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {text}"))
    }

    /// POST `path` with a form; (status, JSON answer).
    pub fn post_form(&self, path: &str, form: &[(&str, &str)]) -> (u16, Value) {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", urlencode(k), urlencode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let (status, text) = self.request(
            "POST",
            path,
            "application/x-www-form-urlencoded",
            body.as_bytes(),
        );
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    /// GET `path`; (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        self.request("GET", path, "", b"")
    }

    fn request(&self, method: &str, path: &str, ctype: &str, body: &[u8]) -> (u16, String) {
        http(self.port, method, path, ctype, body)
    }

    /// Starts a device flow for the default client: (device_code, user_code).
    pub fn start_device_flow(&self) -> (String, String) {
        let (status, v) = self.post_form(
            "/device/auth",
            &[
                ("client_id", &self.client_id),
                ("scope", "openid email profile offline_access"),
            ],
        );
        assert_eq!(status, 200, "device authorization: {v}");
        (
            v["device_code"].as_str().expect("device_code").to_owned(),
            v["user_code"].as_str().expect("user_code").to_owned(),
        )
    }

    /// Completes the user's part of a device flow: the provider's own pages
    /// are walked with `user_code`, and the login is `account` with `groups`.
    pub fn approve_device(&self, user_code: &str, account: &str, groups: &[&str]) {
        let v = self.post_json(
            "/test/device/approve",
            &json!({"user_code": user_code, "account": account, "groups": groups}),
        );
        assert_eq!(
            v["ok"],
            json!(true),
            "device approval for {user_code} did not reach the success page: {v}\n{}",
            self.stderr()
        );
    }

    /// Plays the browser from an authorization URL as `account`; the
    /// provider's answer (`status` is what the redirect target said).
    pub fn authorize(&self, url: &str, account: &str, groups: &[&str]) -> Value {
        self.post_json(
            "/test/authorize",
            &json!({"url": url, "account": account, "groups": groups}),
        )
    }

    /// A whole device flow: real tokens for `account` with `groups`.
    pub fn tokens(&self, account: &str, groups: &[&str]) -> Tokens {
        let (device_code, user_code) = self.start_device_flow();
        self.approve_device(&user_code, account, groups);
        let (status, v) = self.post_form(
            "/token",
            &[
                ("client_id", &self.client_id),
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", &device_code),
            ],
        );
        assert_eq!(status, 200, "token request: {v}");
        Tokens {
            id_token: v["id_token"].as_str().expect("id_token").to_owned(),
            refresh_token: v["refresh_token"].as_str().map(str::to_owned),
            access_token: v["access_token"].as_str().unwrap_or_default().to_owned(),
        }
    }

    /// A real ID token for `account` with `groups` (see [`Self::tokens`]).
    pub fn id_token(&self, account: &str, groups: &[&str]) -> String {
        self.tokens(account, groups).id_token
    }

    /// Rotates the signing key; the previous keys stay published when
    /// `keep_old`. Returns the new key id.
    pub fn rotate_keys(&self, keep_old: bool) -> String {
        let v = self.post_json("/test/rotate", &json!({"keep_old": keep_old}));
        v["kid"].as_str().expect("kid").to_owned()
    }

    /// Key ids published in the JWKS, signing key first.
    pub fn kids(&self) -> Vec<String> {
        let v = self.post_json("/test/keys", &json!({}));
        v["kids"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A JWT with `claims` over the defaults (iss = issuer, aud = client,
    /// sub = test-user, iat = now, exp = now + 300), signed with the
    /// provider's current key, or with `rogue` a key it never published.
    pub fn sign(&self, claims: Value, rogue: bool) -> String {
        let key = if rogue { "rogue" } else { "current" };
        let v = self.post_json("/test/sign", &json!({"claims": claims, "key": key}));
        v["token"].as_str().expect("token").to_owned()
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        crate::kill_pid(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match child.try_wait() {
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                Ok(None) => {
                    crate::kill_pid(child.id(), libc::SIGKILL);
                    let _ = child.wait();
                    return;
                }
            }
        }
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The JSON payload of a JWT, not verified.
pub fn jwt_payload(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap_or_default();
    serde_json::from_slice(&b64url_decode(part)).unwrap_or(Value::Null)
}

/// The JSON header of a JWT, not verified.
pub fn jwt_header(token: &str) -> Value {
    let part = token.split('.').next().unwrap_or_default();
    serde_json::from_slice(&b64url_decode(part)).unwrap_or(Value::Null)
}

/// `token` with its payload replaced (header and signature kept): a forgery.
pub fn with_payload(token: &str, payload: &Value) -> String {
    let mut parts = token.split('.');
    let header = parts.next().unwrap_or_default();
    let _ = parts.next();
    let sig = parts.next().unwrap_or_default();
    format!(
        "{header}.{}.{sig}",
        b64url_encode(payload.to_string().as_bytes())
    )
}

/// `token`'s payload under an `alg: none` header, with no signature.
pub fn unsigned(token: &str) -> String {
    let payload = token.split('.').nth(1).unwrap_or_default();
    format!(
        "{}.{payload}.",
        b64url_encode(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes())
    )
}

const B64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

pub fn b64url_encode(data: &[u8]) -> String {
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            let idx = (n >> (18 - 6 * i)) & 63;
            out.push(char::from(B64URL[idx as usize]));
        }
    }
    out
}

pub fn b64url_decode(text: &str) -> Vec<u8> {
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in text.trim_end_matches('=').bytes() {
        let Some(v) = B64URL.iter().position(|&b| b == c) else {
            return Vec::new();
        };
        bits = (bits << 6) | v as u32;
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    out
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One HTTP/1.1 request to 127.0.0.1:`port` (`Connection: close`); the
/// status and body (Content-Length, chunked, or up to EOF).
fn http(port: u16, method: &str, path: &str, ctype: &str, body: &[u8]) -> (u16, String) {
    let mut conn = TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to the OIDC provider on port {port}: {e}"));
    let _ = conn.set_read_timeout(Some(HTTP_LIMIT));
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !ctype.is_empty() {
        head.push_str(&format!("Content-Type: {ctype}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes())
        .and_then(|()| conn.write_all(body))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("{method} {path}: reading the answer: {e}"));
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: no HTTP header in {raw:?}"));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let rest = &raw[split + 4..];
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: bad status line in {head:?}"));
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    let body = if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut out = Vec::new();
        let mut rest = rest;
        while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(
                String::from_utf8_lossy(&rest[..end])
                    .split(';')
                    .next()
                    .unwrap_or("0")
                    .trim(),
                16,
            )
            .unwrap_or(0);
            rest = &rest[end + 2..];
            if size == 0 || rest.len() < size {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = rest.get(size + 2..).unwrap_or_default();
        }
        out
    } else if let Some(n) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
        rest[..n.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_round_trips() {
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", b"\xff\xfe\x00hello"] {
            assert_eq!(b64url_decode(&b64url_encode(data)), data);
        }
        assert_eq!(b64url_encode(b"{\"a\":1}"), "eyJhIjoxfQ");
    }
}
