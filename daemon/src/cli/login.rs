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
//! The tokens are handed to the daemon (`login_hold`), which holds them in
//! memory for the caller's uid and refreshes the ID token itself (see
//! `identity::logins`): nothing is written under the human's home, where an
//! agent running as the same uid could read it. A token file left by an
//! earlier Cordon (`~/.cache/cordon/token.json`) is removed at the next
//! login. `cordon logout` drops the held login. Tokens are never printed or
//! logged. `CORDON_ID_TOKEN`, when set, is presented instead.

use std::{
    fs,
    io::Write as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{anyhow, bail, Context as _};
use openidconnect::{
    core::{CoreAuthenticationFlow, CoreClient, CoreDeviceAuthorizationResponse},
    AuthorizationCode, ClientId, ClientSecret, CsrfToken, Nonce, OAuth2TokenResponse as _,
    PkceCodeChallenge, RedirectUrl, RefreshToken, Scope,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use zeroize::{Zeroize as _, Zeroizing};

use crate::{
    config::{oidc::Oidc, Config},
    control::{Request, WhoAmIReply, WireSecret},
    identity::oidc::{chain, Actor, Discovery, Verifier},
    vault::Secret,
};

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
    let (tokens, human) = cached;
    let held: WhoAmIReply = super::call_typed(
        config,
        &Request::LoginHold {
            id_token: WireSecret(Secret::new(tokens.id_token.as_bytes().to_vec())),
            refresh_token: tokens
                .refresh_token
                .as_ref()
                .map(|r| WireSecret(Secret::new(r.as_bytes().to_vec()))),
        },
    )
    .context("handing the login to the daemon (it holds logins; is it running?)")?;
    let legacy = remove_legacy_cache();
    println!(
        "Logged in as {}{} (groups: {}); {}; the daemon holds the login for uid {} until `cordon logout` or its restart.",
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
        if held.is_admin {
            "administrator"
        } else if held.can_approve {
            "approver"
        } else {
            "no approver or admin group"
        },
        held.uid,
    );
    if let Some(path) = legacy {
        println!(
            "Removed the token file {} an earlier Cordon left (agents running as you could read it).",
            path.display()
        );
    }
    Ok(())
}

/// `cordon logout`: the daemon drops the login it holds for the caller.
pub fn logout(config: &Path) -> anyhow::Result<()> {
    let data = super::call(config, &Request::Logout)?;
    let legacy = remove_legacy_cache();
    if data.get("forgotten").and_then(serde_json::Value::as_bool) == Some(true) {
        println!("Logged out: the daemon no longer holds your login.");
    } else {
        println!("The daemon held no login for you.");
    }
    if let Some(path) = legacy {
        println!(
            "Removed the token file {} an earlier Cordon left.",
            path.display()
        );
    }
    Ok(())
}

/// `cordon whoami`: asks the daemon who it takes the caller for.
pub fn whoami(config: &Path, json: bool) -> anyhow::Result<()> {
    let cfg = Config::load(config).context("loading config to find the daemon")?;
    let _ = cfg;
    let id_token = presented_token()?;
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

/// An ID token in this variable is presented as it is, instead of the
/// login the daemon holds (for automation that obtains tokens itself).
pub const TOKEN_ENV: &str = "CORDON_ID_TOKEN";

/// The ID token a CLI command presents: `CORDON_ID_TOKEN` when set, else
/// none (the daemon then acts with the login it holds for the caller).
pub fn presented_token() -> anyhow::Result<Option<WireSecret>> {
    match std::env::var_os(TOKEN_ENV) {
        Some(token) if !token.is_empty() => {
            let token = token
                .into_string()
                .map_err(|_| anyhow!("{TOKEN_ENV} is not valid UTF-8"))?;
            Ok(Some(WireSecret(Secret::new(token.into_bytes()))))
        }
        _ => Ok(None),
    }
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
) -> anyhow::Result<(Tokens, crate::identity::oidc::Human)> {
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
    finish(verifier, &token, None, None).await
}

async fn browser_flow(
    settings: &Oidc,
    verifier: &Verifier,
    client: Client,
) -> anyhow::Result<(Tokens, crate::identity::oidc::Human)> {
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
    finish(verifier, &token, Some(&nonce), None).await
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

/// Verifies the token response's ID token.
async fn finish(
    verifier: &Verifier,
    token: &openidconnect::core::CoreTokenResponse,
    nonce: Option<&Nonce>,
    old_refresh: Option<String>,
) -> anyhow::Result<(Tokens, crate::identity::oidc::Human)> {
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
        Tokens {
            id_token,
            refresh_token,
        },
        human,
    ))
}

async fn refresh(
    settings: &Oidc,
    refresh_token: String,
) -> anyhow::Result<(Tokens, crate::identity::oidc::Human)> {
    let verifier = Verifier::new(settings.clone())?;
    let discovery = verifier.discover().await?;
    let client = client(settings, &discovery)?;
    let token = client
        .exchange_refresh_token(&RefreshToken::new(refresh_token.clone()))
        .map_err(|e| anyhow!("{}: {e}", settings.issuer))?
        .request_async(verifier.http())
        .await
        .map_err(|e| anyhow!("refresh token refused: {}", chain(&e)))?;
    finish(&verifier, &token, None, Some(refresh_token)).await
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

// ---------------------------------------------------------------------------
// tokens

/// What a flow or a refresh yields. No `Debug`: it holds tokens.
struct Tokens {
    id_token: String,
    refresh_token: Option<String>,
}

impl Drop for Tokens {
    fn drop(&mut self) {
        self.id_token.zeroize();
        if let Some(r) = self.refresh_token.as_mut() {
            r.zeroize();
        }
    }
}

/// For the daemon, which refreshes the logins it holds: a new ID token
/// (verified) and, if the provider rotated it, a new refresh token.
pub async fn refresh_tokens(
    settings: &Oidc,
    refresh_token: String,
) -> anyhow::Result<(Secret, Option<Secret>)> {
    let (tokens, _human) = refresh(settings, refresh_token).await?;
    Ok((
        Secret::new(tokens.id_token.as_bytes().to_vec()),
        tokens
            .refresh_token
            .as_ref()
            .map(|r| Secret::new(r.as_bytes().to_vec())),
    ))
}

/// Where earlier versions cached tokens in plain JSON:
/// `$XDG_CACHE_HOME/cordon/token.json` or `~/.cache/cordon/token.json`.
pub fn legacy_cache_path() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        _ => match std::env::var_os("HOME").map(PathBuf::from) {
            Some(home) if home.is_absolute() => home.join(".cache"),
            _ => return None,
        },
    };
    Some(base.join("cordon").join("token.json"))
}

/// Removes the legacy token file; its path if there was one.
fn remove_legacy_cache() -> Option<PathBuf> {
    let path = legacy_cache_path()?;
    match fs::remove_file(&path) {
        Ok(()) => Some(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            eprintln!(
                "cordon: warning: cannot remove the token file {} an earlier Cordon left: {e}; delete it yourself",
                path.display()
            );
            None
        }
    }
}
