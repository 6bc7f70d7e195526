//! `cordon login [--issuer URL] [--client-id ID] [--browser]` and
//! `cordon whoami [--json]`: a human logs in with the OpenID Connect provider
//! of `[identity.oidc]` and later CLI calls attach the ID token, which the
//! daemon verifies itself (identity::oidc).
//!
//! Login uses the device authorization flow (RFC 8628: the CLI prints a page
//! and a code, the human confirms in any browser, the CLI polls), or with
//! `--browser` the authorization-code flow with PKCE and a redirect to a
//! one-shot listener on 127.0.0.1. The ID token is verified here too (with
//! the nonce in the browser flow) before it is cached.
//!
//! Cache: `$XDG_CACHE_HOME/cordon/token.json`, else
//! `~/.cache/cordon/token.json`; the directory is 0700, the file 0600 and
//! replaced atomically. One entry per (issuer, client id). When the cached
//! ID token expires within [`REFRESH_MARGIN`], [`current_id_token`] uses the
//! refresh token for a new one. Tokens are never printed or logged.
//! `CORDON_ID_TOKEN`, when set, overrides the cache.

use std::{
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _};
use openidconnect::{
    core::{CoreAuthenticationFlow, CoreClient, CoreDeviceAuthorizationResponse},
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, Nonce, OAuth2TokenResponse as _,
    PkceCodeChallenge, RedirectUrl, RefreshToken, Scope,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use zeroize::{Zeroize as _, Zeroizing};

use crate::{
    config::{oidc::Oidc, Config},
    control::{Request, WhoAmIReply, WireSecret},
    identity::oidc::{chain, unverified_expiry, Actor, Discovery, Verifier},
    vault::Secret,
};

/// A cached ID token expiring sooner than this is refreshed before use (it
/// must still be valid when the daemon checks it).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// How long `--browser` waits for the provider's redirect.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(300);

/// `cordon login`.
pub fn login(
    config: &Path,
    issuer: Option<String>,
    client_id: Option<String>,
    browser: bool,
    allow_http_loopback: bool,
) -> anyhow::Result<()> {
    let settings = settings(config, issuer, client_id, allow_http_loopback)?;
    let cached = runtime()?.block_on(async {
        let verifier = Verifier::new(settings.clone())?;
        let discovery = verifier.discover().await?;
        let client = client(&settings, &discovery)?;
        if browser {
            browser_flow(&settings, &verifier, client).await
        } else {
            device_flow(&settings, &verifier, &discovery, client).await
        }
    })?;
    let human = cached.1;
    let mut cache = Cache::load().unwrap_or_else(|e| {
        eprintln!("cordon: warning: replacing an unreadable token cache: {e:#}");
        Cache::default()
    });
    cache.put(cached.0);
    let path = cache.store()?;
    println!(
        "Logged in as {}{} (groups: {}); {}{}.",
        human.subject,
        human
            .email
            .as_deref()
            .map(|e| format!(" <{e}>"))
            .unwrap_or_default(),
        if human.groups.is_empty() {
            "none".to_owned()
        } else {
            human.groups.join(", ")
        },
        if human.is_admin {
            "administrator"
        } else if human.can_approve {
            "approver"
        } else {
            "no approver or admin group"
        },
        format_args!("; token cached in {}", path.display())
    );
    Ok(())
}

/// `cordon whoami`: asks the daemon who it takes the caller for.
pub fn whoami(config: &Path, json: bool) -> anyhow::Result<()> {
    let cfg = Config::load(config).context("loading config to find the daemon")?;
    let id_token = current_id_token(&cfg).map(|t| WireSecret(Secret::new(t.into_bytes())));
    let me: WhoAmIReply = super::call_typed(config, &Request::WhoAmI { id_token })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&me)?);
        return Ok(());
    }
    let esc = |s: &str| super::sessions::escape(s).into_owned();
    match &me.actor {
        Actor::Human(h) => {
            println!("subject      {}", esc(&h.subject));
            println!("issuer       {}", esc(&h.issuer));
            if let Some(e) = &h.email {
                println!("email        {}", esc(e));
            }
            if let Some(n) = &h.name {
                println!("name         {}", esc(n));
            }
            println!("groups       {}", esc(&h.groups.join(", ")));
            println!("token until  {}", esc(&h.token_expires));
        }
        Actor::LocalRoot { uid } => println!("local root   uid {uid} (no ID token)"),
    }
    println!("uid          {}", me.uid);
    println!("administer   {}", if me.is_admin { "yes" } else { "no" });
    println!("approve      {}", if me.can_approve { "yes" } else { "no" });
    Ok(())
}

/// The cached ID token for `config`'s `[identity.oidc]`, refreshed first if
/// it expires within [`REFRESH_MARGIN`]; None when there is no OIDC config,
/// no login, or the refresh failed (a warning on stderr says why). For CLI
/// commands that act as a human: attach it to their control request.
pub fn current_id_token(config: &Config) -> Option<String> {
    match try_current_id_token(config) {
        Ok(token) => token,
        Err(e) => {
            eprintln!("cordon: warning: not using your login: {e:#}");
            None
        }
    }
}

/// An ID token in this variable is used as it is, instead of the cache (for
/// automation that obtains tokens itself; it is neither cached nor refreshed).
pub const TOKEN_ENV: &str = "CORDON_ID_TOKEN";

/// [`current_id_token`] with the reason when there is none.
pub fn try_current_id_token(config: &Config) -> anyhow::Result<Option<String>> {
    if let Some(token) = std::env::var_os(TOKEN_ENV) {
        let token = token
            .into_string()
            .map_err(|_| anyhow!("{TOKEN_ENV} is not valid UTF-8"))?;
        if !token.is_empty() {
            return Ok(Some(token));
        }
    }
    let Some(oidc) = &config.oidc else {
        return Ok(None);
    };
    let mut cache = Cache::load()?;
    let Some(entry) = cache.find(&oidc.issuer, &oidc.client_id) else {
        return Ok(None);
    };
    let now = chrono::Utc::now().timestamp();
    let margin = i64::try_from(REFRESH_MARGIN.as_secs()).unwrap_or(60);
    if unverified_expiry(&entry.id_token).is_some_and(|exp| exp > now + margin) {
        return Ok(Some(entry.id_token.clone()));
    }
    let Some(refresh_token) = entry.refresh_token.clone() else {
        bail!("your login has expired and there is no refresh token: run `cordon login`");
    };
    let (fresh, _human) = runtime()?
        .block_on(refresh(oidc, refresh_token))
        .context("refreshing your login (run `cordon login` if this persists)")?;
    let token = fresh.id_token.clone();
    cache.put(fresh);
    cache.store()?;
    Ok(Some(token))
}

// ---------------------------------------------------------------------------
// settings and client

fn settings(
    config: &Path,
    issuer: Option<String>,
    client_id: Option<String>,
    allow_http_loopback: bool,
) -> anyhow::Result<Oidc> {
    let from_file = match Config::load(config) {
        Ok(cfg) => cfg.oidc,
        // Both given on the command line: the config file is not needed.
        Err(_) if issuer.is_some() && client_id.is_some() => None,
        Err(e) => return Err(e).context("loading config for [identity.oidc]"),
    };
    let base = match (from_file, &issuer, &client_id) {
        (Some(o), _, _) => o,
        (None, Some(i), Some(c)) => Oidc::with_defaults(i.clone(), c.clone(), allow_http_loopback)
            .map_err(|e| anyhow!("--issuer: {e}"))?,
        (None, _, _) => bail!(
            "{} has no [identity.oidc]; add it, or pass both --issuer and --client-id",
            config.display()
        ),
    };
    let mut settings = Oidc {
        client_id: client_id.unwrap_or(base.client_id.clone()),
        allow_http_loopback: base.allow_http_loopback || allow_http_loopback,
        ..base
    };
    if let Some(i) = issuer {
        let checked =
            Oidc::with_defaults(i, settings.client_id.clone(), settings.allow_http_loopback)
                .map_err(|e| anyhow!("--issuer: {e}"))?;
        settings.issuer = checked.issuer;
    }
    Ok(settings)
}

type Client = openidconnect::Client<
    openidconnect::EmptyAdditionalClaims,
    openidconnect::core::CoreAuthDisplay,
    openidconnect::core::CoreGenderClaim,
    openidconnect::core::CoreJweContentEncryptionAlgorithm,
    openidconnect::core::CoreJsonWebKey,
    openidconnect::core::CoreAuthPrompt,
    openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    openidconnect::core::CoreTokenResponse,
    openidconnect::core::CoreTokenIntrospectionResponse,
    openidconnect::core::CoreRevocableToken,
    openidconnect::core::CoreRevocationErrorResponse,
    openidconnect::EndpointSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointNotSet,
    openidconnect::EndpointMaybeSet,
    openidconnect::EndpointMaybeSet,
>;

fn client(settings: &Oidc, discovery: &Discovery) -> anyhow::Result<Client> {
    let secret = match &settings.client_secret_file {
        Some(file) => {
            let text = Zeroizing::new(
                fs::read_to_string(file)
                    .with_context(|| format!("reading client_secret_file {}", file.display()))?,
            );
            Some(ClientSecret::new(text.trim().to_owned()))
        }
        None => None,
    };
    Ok(CoreClient::from_provider_metadata(
        discovery.clone(),
        ClientId::new(settings.client_id.clone()),
        secret,
    ))
}

fn extra_scopes(settings: &Oidc) -> impl Iterator<Item = Scope> + '_ {
    // `openid` is added by the library.
    settings
        .scopes
        .iter()
        .filter(|s| *s != "openid")
        .map(|s| Scope::new(s.clone()))
}

// ---------------------------------------------------------------------------
// the flows

async fn device_flow(
    settings: &Oidc,
    verifier: &Verifier,
    discovery: &Discovery,
    client: Client,
) -> anyhow::Result<(CachedToken, crate::identity::oidc::Human)> {
    let url = discovery
        .additional_metadata()
        .device_authorization_endpoint
        .clone()
        .ok_or_else(|| {
            anyhow!(
                "{} offers no device authorization endpoint; use `cordon login --browser`",
                settings.issuer
            )
        })?;
    let client = client.set_device_authorization_url(url);
    let details: CoreDeviceAuthorizationResponse = client
        .exchange_device_code()
        .add_scopes(extra_scopes(settings))
        .request_async(verifier.http())
        .await
        .map_err(|e| anyhow!("device authorization request: {}", chain(&e)))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "To log in, open this page and enter the code:")?;
    writeln!(out, "  page: {}", details.verification_uri().as_str())?;
    writeln!(out, "  code: {}", details.user_code().secret())?;
    if let Some(complete) = details.verification_uri_complete() {
        writeln!(out, "  (or open {})", complete.secret())?;
    }
    writeln!(
        out,
        "Waiting for the login to be confirmed (the code expires in {} s)...",
        details.expires_in().as_secs()
    )?;
    out.flush()?;
    drop(out);
    let token = client
        .exchange_device_access_token(&details)
        .map_err(|e| anyhow!("{}: {e}", settings.issuer))?
        .request_async(verifier.http(), tokio::time::sleep, None)
        .await
        .map_err(|e| anyhow!("the login was not completed: {}", chain(&e)))?;
    finish(settings, verifier, &token, None, None).await
}

async fn browser_flow(
    settings: &Oidc,
    verifier: &Verifier,
    client: Client,
) -> anyhow::Result<(CachedToken, crate::identity::oidc::Human)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding a loopback port for the redirect")?;
    let port = listener.local_addr()?.port();
    let redirect = RedirectUrl::new(format!("http://127.0.0.1:{port}/callback"))?;
    let client = client.set_redirect_uri(redirect);
    let (challenge, pkce_verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, csrf, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scopes(extra_scopes(settings))
        .set_pkce_challenge(challenge)
        .url();
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "To log in, open this page in your browser:")?;
        writeln!(out, "  page: {url}")?;
        writeln!(
            out,
            "Waiting up to {} s for the provider to redirect to 127.0.0.1:{port}...",
            BROWSER_TIMEOUT.as_secs()
        )?;
        out.flush()?;
    }
    open_browser(url.as_str());
    let params = tokio::time::timeout(BROWSER_TIMEOUT, callback(&listener))
        .await
        .map_err(|_| {
            anyhow!(
                "no redirect from the provider within {} s",
                BROWSER_TIMEOUT.as_secs()
            )
        })??;
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    if let Some(error) = get("error") {
        bail!(
            "the provider refused the login: {error}{}",
            get("error_description")
                .map(|d| format!(" ({d})"))
                .unwrap_or_default()
        );
    }
    if get("state") != Some(csrf.secret().as_str()) {
        bail!("the redirect's `state` does not match this login: refused (possible CSRF)");
    }
    if let Some(iss) = get("iss") {
        if iss != settings.issuer {
            bail!(
                "the redirect names issuer `{iss}`, not `{}`: refused",
                settings.issuer
            );
        }
    }
    let code = get("code").ok_or_else(|| anyhow!("the redirect carries no `code`"))?;
    let token = client
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .map_err(|e| anyhow!("{}: {e}", settings.issuer))?
        .set_pkce_verifier(pkce_verifier)
        .request_async(verifier.http())
        .await
        .map_err(|e| anyhow!("exchanging the authorization code: {}", chain(&e)))?;
    finish(settings, verifier, &token, Some(&nonce), None).await
}

/// Waits for `GET /callback?...` on `listener`, answers it, returns its
/// query parameters. Other requests (a browser's favicon) get a 404.
async fn callback(listener: &tokio::net::TcpListener) -> anyhow::Result<Vec<(String, String)>> {
    loop {
        let (mut conn, _) = listener.accept().await?;
        let mut buf = vec![0u8; 16 * 1024];
        let mut len = 0;
        let head = loop {
            let n = tokio::time::timeout(
                Duration::from_secs(10),
                conn.read(buf.get_mut(len..).unwrap_or_default()),
            )
            .await
            .unwrap_or(Ok(0))
            .unwrap_or(0);
            len += n;
            let seen = buf.get(..len).unwrap_or_default();
            if n == 0 || seen.windows(4).any(|w| w == b"\r\n\r\n") || len == buf.len() {
                break String::from_utf8_lossy(seen).into_owned();
            }
        };
        let target = head
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("GET "))
            .and_then(|l| l.split(' ').next())
            .unwrap_or("");
        let Ok(url) = openidconnect::url::Url::parse(&format!("http://127.0.0.1{target}")) else {
            continue;
        };
        if url.path() != "/callback" {
            let _ = conn
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            continue;
        }
        let params: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        let ok = params.iter().any(|(k, _)| k == "code");
        let body = if ok {
            "cordon: login received; you may close this window.\n"
        } else {
            "cordon: the login did not succeed; see the terminal.\n"
        };
        let _ = conn
            .write_all(
                format!(
                    "HTTP/1.1 {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    if ok { "200 OK" } else { "400 Bad Request" },
                    body.len()
                )
                .as_bytes(),
            )
            .await;
        let _ = conn.shutdown().await;
        return Ok(params);
    }
}

/// Starts a browser where there is a desktop session; otherwise the printed
/// URL is all there is.
fn open_browser(url: &str) {
    let desktop = std::env::var_os("DISPLAY").is_some_and(|v| !v.is_empty())
        || std::env::var_os("WAYLAND_DISPLAY").is_some_and(|v| !v.is_empty());
    if desktop {
        let _ = std::process::Command::new("xdg-open")
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
}

/// Verifies the token response's ID token and makes the cache entry.
async fn finish(
    settings: &Oidc,
    verifier: &Verifier,
    token: &openidconnect::core::CoreTokenResponse,
    nonce: Option<&Nonce>,
    old_refresh: Option<String>,
) -> anyhow::Result<(CachedToken, crate::identity::oidc::Human)> {
    let id_token = token
        .extra_fields()
        .id_token()
        .map(|t| t.to_string())
        .ok_or_else(|| {
            anyhow!("the provider returned no ID token (is `openid` among the scopes?)")
        })?;
    let human = verifier
        .verify_with_nonce(&id_token, nonce)
        .await
        .context("the provider's ID token does not verify")?;
    let refresh_token = token
        .refresh_token()
        .map(|r| r.secret().clone())
        .or(old_refresh);
    Ok((
        CachedToken {
            issuer: settings.issuer.clone(),
            client_id: settings.client_id.clone(),
            id_token,
            refresh_token,
            obtained: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        },
        human,
    ))
}

async fn refresh(
    settings: &Oidc,
    refresh_token: String,
) -> anyhow::Result<(CachedToken, crate::identity::oidc::Human)> {
    let verifier = Verifier::new(settings.clone())?;
    let discovery = verifier.discover().await?;
    let client = client(settings, &discovery)?;
    let token = client
        .exchange_refresh_token(&RefreshToken::new(refresh_token.clone()))
        .map_err(|e| anyhow!("{}: {e}", settings.issuer))?
        .request_async(verifier.http())
        .await
        .map_err(|e| anyhow!("refresh token refused: {}", chain(&e)))?;
    finish(settings, &verifier, &token, None, Some(refresh_token)).await
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

// ---------------------------------------------------------------------------
// the token cache

/// One login. No `Debug`: it holds tokens.
#[derive(Serialize, Deserialize)]
struct CachedToken {
    issuer: String,
    client_id: String,
    id_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    obtained: String,
}

impl Drop for CachedToken {
    fn drop(&mut self) {
        self.id_token.zeroize();
        if let Some(r) = self.refresh_token.as_mut() {
            r.zeroize();
        }
    }
}

#[derive(Default, Serialize, Deserialize)]
struct Cache {
    #[serde(default)]
    tokens: Vec<CachedToken>,
}

/// `$XDG_CACHE_HOME/cordon/token.json` or `~/.cache/cordon/token.json`.
pub fn cache_path() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        _ => match std::env::var_os("HOME").map(PathBuf::from) {
            Some(home) if home.is_absolute() => home.join(".cache"),
            _ => bail!("neither XDG_CACHE_HOME nor HOME is set to an absolute path: nowhere to cache the login"),
        },
    };
    Ok(base.join("cordon").join("token.json"))
}

impl Cache {
    /// The cache, or an empty one if there is no file yet.
    fn load() -> anyhow::Result<Cache> {
        let path = cache_path()?;
        let text = match fs::read_to_string(&path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Cache::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    fn find(&self, issuer: &str, client_id: &str) -> Option<&CachedToken> {
        self.tokens
            .iter()
            .find(|t| t.issuer == issuer && t.client_id == client_id)
    }

    fn put(&mut self, token: CachedToken) {
        self.tokens
            .retain(|t| !(t.issuer == token.issuer && t.client_id == token.client_id));
        self.tokens.push(token);
    }

    /// Writes the cache: directory 0700, file 0600, replaced atomically.
    fn store(&self) -> anyhow::Result<PathBuf> {
        let path = cache_path()?;
        let dir = path
            .parent()
            .ok_or_else(|| anyhow!("{} has no parent directory", path.display()))?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private (0700)", dir.display()))?;
        let text = Zeroizing::new(serde_json::to_string_pretty(self)?);
        let tmp = dir.join(format!(".token.json.{}", std::process::id()));
        let _ = fs::remove_file(&tmp);
        let write = || -> std::io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(e).with_context(|| format!("writing {}", path.display()));
        }
        Ok(path)
    }
}
