//! OIDC: turns an ID token a human presents on a control call into a
//! verified [`Human`] (or a refusal naming what was wrong). The daemon checks
//! every token itself with `openidconnect`: issuer discovery, the provider's
//! JWKS (refetched when a token names an unknown `kid`, for key rotation, at
//! most once per [`UNKNOWN_KID_REFRESH_INTERVAL`]; and when older than
//! [`KEYS_MAX_AGE`]), the signature (asymmetric algorithms only; `alg: none`
//! and HMAC are refused), issuer, audience (= the configured client id; other
//! audiences are untrusted), expiry and issue time within the configured
//! clock skew. The groups claim maps onto approver / admin rights.
//!
//! Local root on the control socket needs no token: [`Actor::LocalRoot`]
//! (the uid comes from SO_PEERCRED, see `control`).
//!
//! Discovery happens on first use, not at start-up, so a daemon whose
//! provider is down still starts; verification then fails with the reason
//! until the provider answers (retried at most every [`DISCOVERY_RETRY`]).

mod http;

use std::{
    str::FromStr as _,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use openidconnect::{
    core::{
        CoreAuthDisplay, CoreClaimName, CoreClaimType, CoreClientAuthMethod, CoreGenderClaim,
        CoreGrantType, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm,
        CoreJweKeyManagementAlgorithm, CoreJwsSigningAlgorithm, CoreResponseMode, CoreResponseType,
        CoreSubjectIdentifierType,
    },
    AdditionalClaims, AdditionalProviderMetadata, ClaimsVerificationError, ClientId,
    DeviceAuthorizationUrl, IdToken, IdTokenClaims, IdTokenVerifier, IssuerUrl, JsonWebKeySet,
    Nonce, ProviderMetadata, SignatureVerificationError,
};
use serde::{Deserialize, Serialize};

pub use self::http::HttpClient;
use crate::config::oidc::Oidc;

/// Least time between two JWKS fetches caused by tokens naming a key id the
/// cached set does not have: a stream of forged `kid`s costs the provider at
/// most one request per interval.
pub const UNKNOWN_KID_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// Keys older than this are refetched before use (a key the provider
/// withdrew stops being accepted within this time). If the refetch fails the
/// old keys stay in use, and it is tried again after [`KEYS_RETRY`].
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);

/// Least time between two failed refetches of keys past [`KEYS_MAX_AGE`].
pub const KEYS_RETRY: Duration = Duration::from_secs(60);

/// Least time between two discovery attempts while the provider fails.
pub const DISCOVERY_RETRY: Duration = Duration::from_secs(5);

/// Signature algorithms accepted: asymmetric only. HMAC would make the
/// (public) client id's secret a signing key; `none` is no signature.
const ALLOWED_ALGS: [CoreJwsSigningAlgorithm; 10] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EcdsaP521Sha512,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// Claims beyond the standard ones, kept as JSON so that the configured
/// groups claim can be any name.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ExtraClaims {
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

impl AdditionalClaims for ExtraClaims {}

/// An ID token as `openidconnect` parses it.
pub type Token = IdToken<
    ExtraClaims,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

/// The one discovery field `openidconnect`'s core metadata lacks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceEndpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_authorization_endpoint: Option<DeviceAuthorizationUrl>,
}

impl AdditionalProviderMetadata for DeviceEndpoint {}

/// The provider's discovery document (plus its JWKS, fetched with it).
pub type Discovery = ProviderMetadata<
    DeviceEndpoint,
    CoreAuthDisplay,
    CoreClientAuthMethod,
    CoreClaimName,
    CoreClaimType,
    CoreGrantType,
    CoreJweContentEncryptionAlgorithm,
    CoreJweKeyManagementAlgorithm,
    CoreJsonWebKey,
    CoreResponseMode,
    CoreResponseType,
    CoreSubjectIdentifierType,
>;

type KeySet = JsonWebKeySet<CoreJsonWebKey>;

/// A person the identity provider vouched for, with what the config lets
/// their groups do here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Human {
    /// The token's `sub`: stable and unique within `issuer`.
    pub subject: String,
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The configured groups claim, as the provider sent it.
    pub groups: Vec<String>,
    /// In an approver group, or an administrator.
    pub can_approve: bool,
    /// In an admin group.
    pub is_admin: bool,
    /// The token's `exp` (RFC 3339).
    pub token_expires: String,
}

/// Who acts on a control call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// A verified ID token was presented.
    Human(Human),
    /// Local root (SO_PEERCRED uid 0) without a token: an administrator.
    LocalRoot { uid: u32 },
}

impl Actor {
    pub fn is_admin(&self) -> bool {
        match self {
            Actor::Human(h) => h.is_admin,
            Actor::LocalRoot { .. } => true,
        }
    }

    pub fn can_approve(&self) -> bool {
        match self {
            Actor::Human(h) => h.can_approve,
            Actor::LocalRoot { .. } => true,
        }
    }

    /// For audit records: `oidc:<issuer>#<subject>` or `uid:0`.
    pub fn audit_name(&self) -> String {
        match self {
            Actor::Human(h) => format!("oidc:{}#{}", h.issuer, h.subject),
            Actor::LocalRoot { uid } => format!("uid:{uid}"),
        }
    }
}

/// Why a token was refused. Messages say what was wrong; they never repeat
/// the token.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OidcError {
    #[error("identity provider {issuer}: discovery failed: {problem}")]
    Discovery { issuer: String, problem: String },
    #[error("identity provider {issuer}: cannot fetch its signing keys: {problem}")]
    Keys { issuer: String, problem: String },
    #[error("ID token refused: not a JWT ({0})")]
    Malformed(String),
    #[error("ID token refused: unsigned (\"alg\": \"none\")")]
    Unsigned,
    #[error(
        "ID token refused: signature algorithm {0} is not accepted (asymmetric algorithms only)"
    )]
    DisallowedAlg(String),
    #[error("ID token refused: expired at {expired} ({ago} s ago; clock skew allowance {skew} s)")]
    Expired {
        expired: String,
        ago: i64,
        skew: u64,
    },
    #[error("ID token refused: issued in the future ({0}); check the clocks")]
    IssuedInFuture(String),
    #[error("ID token refused: wrong issuer: {0}")]
    WrongIssuer(String),
    #[error("ID token refused: wrong audience: {0}")]
    WrongAudience(String),
    #[error("ID token refused: bad signature (the token was altered, or signed with another key)")]
    BadSignature,
    #[error("ID token refused: signed with key {kid}, which the provider does not publish{note}")]
    UnknownKey { kid: String, note: String },
    #[error("ID token refused: claim `{claim}`: {problem}")]
    BadClaim { claim: String, problem: String },
    #[error("ID token refused: {0}")]
    Invalid(String),
}

/// Verifies ID tokens for one `[identity.oidc]` table. Shared by every
/// control connection (`Arc`); keys are fetched and refreshed behind one lock.
pub struct Verifier {
    config: Oidc,
    issuer: IssuerUrl,
    http: HttpClient,
    state: tokio::sync::Mutex<State>,
    /// Unit tests: keys given, never fetched.
    fixed_keys: bool,
}

#[derive(Default)]
struct State {
    jwks_uri: Option<openidconnect::JsonWebKeySetUrl>,
    keys: Option<(Arc<KeySet>, Instant)>,
    last_unknown_kid_refresh: Option<Instant>,
    /// When refetching stale keys last failed.
    stale_refresh_failed: Option<Instant>,
    discovery_failed: Option<(Instant, String)>,
}

/// Header and payload of a JWT, decoded but not trusted.
struct Peeked {
    alg: String,
    kid: Option<String>,
    exp: Option<i64>,
    iat: Option<i64>,
}

impl Verifier {
    pub fn new(config: Oidc) -> Result<Verifier, OidcError> {
        let issuer = IssuerUrl::new(config.issuer.clone()).map_err(|e| OidcError::Discovery {
            issuer: config.issuer.clone(),
            problem: e.to_string(),
        })?;
        Ok(Verifier {
            http: HttpClient::new(config.ca_file.as_deref(), config.allow_http_loopback),
            issuer,
            config,
            state: tokio::sync::Mutex::new(State::default()),
            fixed_keys: false,
        })
    }

    /// The HTTP client this verifier uses (for `cordon login`).
    pub fn http(&self) -> &HttpClient {
        &self.http
    }

    /// Fetches the discovery document (with the JWKS, which then becomes
    /// this verifier's key set).
    pub async fn discover(&self) -> Result<Discovery, OidcError> {
        let discovery = Discovery::discover_async(self.issuer.clone(), &self.http)
            .await
            .map_err(|e| OidcError::Discovery {
                issuer: self.config.issuer.clone(),
                problem: chain(&e),
            })?;
        let mut state = self.state.lock().await;
        state.jwks_uri = Some(discovery.jwks_uri().clone());
        state.keys = Some((Arc::new(discovery.jwks().clone()), Instant::now()));
        state.discovery_failed = None;
        Ok(discovery)
    }

    /// Verifies `token` (no nonce check: tokens presented on control calls
    /// were obtained earlier by `cordon login`).
    pub async fn verify(&self, token: &str) -> Result<Human, OidcError> {
        self.verify_with_nonce(token, None).await
    }

    /// Verifies `token`; with `nonce`, its `nonce` claim must match (the
    /// authorization-code flow of `cordon login`).
    pub async fn verify_with_nonce(
        &self,
        token: &str,
        nonce: Option<&Nonce>,
    ) -> Result<Human, OidcError> {
        let peeked = peek(token)?;
        if peeked.alg.eq_ignore_ascii_case("none") {
            return Err(OidcError::Unsigned);
        }
        let parsed = Token::from_str(token).map_err(|e| OidcError::Malformed(e.to_string()))?;
        let keys = self.keys().await?;
        match self.check(&parsed, &peeked, &keys, nonce) {
            Err(OidcError::UnknownKey { kid, .. }) => {
                let Some(fresh) = self.keys_after_unknown_kid().await? else {
                    return Err(OidcError::UnknownKey {
                        kid,
                        note: format!(
                            " (its keys were refetched less than {} s ago)",
                            UNKNOWN_KID_REFRESH_INTERVAL.as_secs()
                        ),
                    });
                };
                self.check(&parsed, &peeked, &fresh, nonce)
                    .map_err(|e| match e {
                        OidcError::UnknownKey { kid, .. } => OidcError::UnknownKey {
                            kid,
                            note: " (not even after refetching its keys)".into(),
                        },
                        other => other,
                    })
            }
            other => other,
        }
    }

    fn check(
        &self,
        token: &Token,
        peeked: &Peeked,
        keys: &KeySet,
        nonce: Option<&Nonce>,
    ) -> Result<Human, OidcError> {
        let skew = chrono::Duration::from_std(self.config.clock_skew)
            .unwrap_or_else(|_| chrono::Duration::zero());
        let verifier: IdTokenVerifier<'_, CoreJsonWebKey> = IdTokenVerifier::new_public_client(
            ClientId::new(self.config.client_id.clone()),
            self.issuer.clone(),
            keys.clone(),
        )
        .set_allowed_algs(ALLOWED_ALGS)
        .allow_all_jose_types()
        // `exp` is checked against "now - skew": up to `skew` past expiry passes.
        .set_time_fn(move || Utc::now() - skew)
        .set_issue_time_verifier_fn(move |iat| {
            if iat > Utc::now() + skew {
                Err(format!("issued at {iat}"))
            } else {
                Ok(())
            }
        });
        let claims = match nonce {
            Some(n) => token.claims(&verifier, n),
            None => token.claims(&verifier, |_: Option<&Nonce>| Ok(())),
        }
        .map_err(|e| self.explain(e, peeked))?;
        self.human(claims)
    }

    fn explain(&self, e: ClaimsVerificationError, peeked: &Peeked) -> OidcError {
        let skew = self.config.clock_skew.as_secs();
        match e {
            ClaimsVerificationError::Expired(msg) => {
                let now = Utc::now().timestamp();
                match (peeked.iat, peeked.exp) {
                    (Some(iat), _) if msg.starts_with("issued at") => {
                        OidcError::IssuedInFuture(format!("`iat` is {} s ahead", iat - now))
                    }
                    (_, Some(exp)) => OidcError::Expired {
                        expired: rfc3339(exp),
                        ago: now - exp,
                        skew,
                    },
                    _ => OidcError::Invalid(msg),
                }
            }
            ClaimsVerificationError::InvalidIssuer(msg) => OidcError::WrongIssuer(msg),
            ClaimsVerificationError::InvalidAudience(msg) => OidcError::WrongAudience(msg),
            ClaimsVerificationError::InvalidNonce(msg) => {
                OidcError::Invalid(format!("nonce: {msg}"))
            }
            ClaimsVerificationError::SignatureVerification(s) => match s {
                SignatureVerificationError::NoMatchingKey => OidcError::UnknownKey {
                    kid: peeked.kid.clone().unwrap_or_else(|| "(no kid)".into()),
                    note: String::new(),
                },
                SignatureVerificationError::NoSignature => OidcError::Unsigned,
                SignatureVerificationError::CryptoError(_) => OidcError::BadSignature,
                SignatureVerificationError::DisallowedAlg(_)
                | SignatureVerificationError::UnsupportedAlg(_) => {
                    OidcError::DisallowedAlg(peeked.alg.clone())
                }
                other => OidcError::Invalid(other.to_string()),
            },
            other => OidcError::Invalid(other.to_string()),
        }
    }

    fn human(
        &self,
        claims: &IdTokenClaims<ExtraClaims, CoreGenderClaim>,
    ) -> Result<Human, OidcError> {
        let claim = &self.config.groups_claim;
        let bad = |problem: &str| OidcError::BadClaim {
            claim: claim.clone(),
            problem: problem.into(),
        };
        let groups = match claims.additional_claims().other.get(claim) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(one)) => vec![one.clone()],
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("expected a list of strings"))?,
            Some(_) => return Err(bad("expected a list of strings")),
        };
        let in_any = |wanted: &[String]| groups.iter().any(|g| wanted.contains(g));
        let is_admin = in_any(&self.config.admin_groups);
        Ok(Human {
            subject: claims.subject().to_string(),
            issuer: self.config.issuer.clone(),
            email: claims.email().map(|e| e.to_string()),
            name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.to_string()),
            can_approve: is_admin || in_any(&self.config.approver_groups),
            is_admin,
            groups,
            token_expires: rfc3339(claims.expiration().timestamp()),
        })
    }

    /// The current key set: discovered on first use, refetched when older
    /// than [`KEYS_MAX_AGE`] (the old set stays if that fails).
    async fn keys(&self) -> Result<Arc<KeySet>, OidcError> {
        let mut state = self.state.lock().await;
        if let Some((keys, fetched)) = &state.keys {
            let retry_later = state
                .stale_refresh_failed
                .is_some_and(|t| t.elapsed() < KEYS_RETRY);
            if self.fixed_keys || fetched.elapsed() < KEYS_MAX_AGE || retry_later {
                return Ok(keys.clone());
            }
            let old = keys.clone();
            return match self.fetch_keys(&mut state).await {
                Ok(fresh) => {
                    state.stale_refresh_failed = None;
                    Ok(fresh)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "keeping the previous OIDC signing keys");
                    state.stale_refresh_failed = Some(Instant::now());
                    Ok(old)
                }
            };
        }
        if let Some((when, problem)) = &state.discovery_failed {
            if when.elapsed() < DISCOVERY_RETRY {
                return Err(OidcError::Discovery {
                    issuer: self.config.issuer.clone(),
                    problem: format!(
                        "{problem} (retried in at most {} s)",
                        DISCOVERY_RETRY.as_secs()
                    ),
                });
            }
        }
        match Discovery::discover_async(self.issuer.clone(), &self.http).await {
            Ok(d) => {
                let keys = Arc::new(d.jwks().clone());
                tracing::info!(
                    issuer = %self.config.issuer,
                    keys = keys.keys().len(),
                    "OIDC provider discovered"
                );
                state.jwks_uri = Some(d.jwks_uri().clone());
                state.keys = Some((keys.clone(), Instant::now()));
                state.discovery_failed = None;
                Ok(keys)
            }
            Err(e) => {
                let problem = chain(&e);
                state.discovery_failed = Some((Instant::now(), problem.clone()));
                Err(OidcError::Discovery {
                    issuer: self.config.issuer.clone(),
                    problem,
                })
            }
        }
    }

    /// After a token named an unknown key: refetch the JWKS unless that was
    /// done less than [`UNKNOWN_KID_REFRESH_INTERVAL`] ago (then None).
    async fn keys_after_unknown_kid(&self) -> Result<Option<Arc<KeySet>>, OidcError> {
        if self.fixed_keys {
            return Ok(None);
        }
        let mut state = self.state.lock().await;
        if let Some(when) = state.last_unknown_kid_refresh {
            if when.elapsed() < UNKNOWN_KID_REFRESH_INTERVAL {
                return Ok(None);
            }
        }
        state.last_unknown_kid_refresh = Some(Instant::now());
        let keys = self.fetch_keys(&mut state).await?;
        tracing::info!(
            issuer = %self.config.issuer,
            keys = keys.keys().len(),
            "OIDC signing keys refetched (a token named an unknown key)"
        );
        Ok(Some(keys))
    }

    async fn fetch_keys(&self, state: &mut State) -> Result<Arc<KeySet>, OidcError> {
        let uri = state.jwks_uri.clone().ok_or_else(|| OidcError::Keys {
            issuer: self.config.issuer.clone(),
            problem: "no jwks_uri (the provider was never discovered)".into(),
        })?;
        let keys = KeySet::fetch_async(&uri, &self.http)
            .await
            .map(Arc::new)
            .map_err(|e| OidcError::Keys {
                issuer: self.config.issuer.clone(),
                problem: chain(&e),
            })?;
        state.keys = Some((keys.clone(), Instant::now()));
        Ok(keys)
    }
}

/// The verifier for `config`'s `[identity.oidc]`, if there is one.
pub fn verifier_for(config: &crate::config::Config) -> Option<Arc<Verifier>> {
    let oidc = config.oidc.clone()?;
    match Verifier::new(oidc) {
        Ok(v) => Some(Arc::new(v)),
        Err(e) => {
            tracing::error!(error = %e, "OIDC disabled: cannot set up the verifier");
            None
        }
    }
}

/// Who acts on a control call from `uid` (SO_PEERCRED) presenting
/// `id_token`: with a token, the verified human (for root too: a root caller
/// with a token acts as that human, and a bad token is refused, never
/// ignored); without one, local root as administrator; anyone else is
/// refused. The error says why.
pub async fn authenticate(
    verifier: Option<&Verifier>,
    uid: u32,
    id_token: Option<&str>,
) -> Result<Actor, String> {
    match (id_token, verifier) {
        (Some(token), Some(v)) => v
            .verify(token)
            .await
            .map(Actor::Human)
            .map_err(|e| e.to_string()),
        (Some(_), None) => {
            Err("an ID token was presented, but this daemon's config has no [identity.oidc]".into())
        }
        (None, _) if uid == 0 => Ok(Actor::LocalRoot { uid }),
        (None, Some(_)) => Err(format!(
            "uid {uid} is not root and presented no ID token: run `cordon login`"
        )),
        (None, None) => Err(format!(
            "uid {uid} is not root, and this daemon's config has no [identity.oidc] for humans \
             to log in with"
        )),
    }
}

/// Decodes the header and payload of a compact JWS without trusting them.
fn peek(token: &str) -> Result<Peeked, OidcError> {
    let malformed = |what: &str| OidcError::Malformed(what.to_owned());
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three dot-separated parts"));
    };
    let json = |part: &str, what: &str| -> Result<serde_json::Value, OidcError> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part.trim_end_matches('='))
            .map_err(|_| malformed(&format!("the {what} is not base64url")))?;
        serde_json::from_slice(&bytes).map_err(|_| malformed(&format!("the {what} is not JSON")))
    };
    let header = json(header, "header")?;
    let payload = json(payload, "payload")?;
    let alg = header
        .get("alg")
        .and_then(|a| a.as_str())
        .ok_or_else(|| malformed("the header has no `alg`"))?
        .to_owned();
    Ok(Peeked {
        alg,
        kid: header
            .get("kid")
            .and_then(|k| k.as_str())
            .map(str::to_owned),
        exp: payload.get("exp").and_then(serde_json::Value::as_i64),
        iat: payload.get("iat").and_then(serde_json::Value::as_i64),
    })
}

/// Reads a token's `exp` without verifying anything (for the CLI's cache:
/// when to refresh). None if it is not a JWT with a numeric `exp`.
pub fn unverified_expiry(token: &str) -> Option<i64> {
    peek(token).ok().and_then(|p| p.exp)
}

fn rfc3339(unix: i64) -> String {
    DateTime::<Utc>::from_timestamp(unix, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| unix.to_string())
}

/// An error and its sources, joined with ": ".
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

#[cfg(test)]
mod tests;
