//! Logins the daemon holds for humans, by uid.
//!
//! `cordon login` runs the OIDC flow in the human's own CLI and hands the
//! resulting ID and refresh tokens to the daemon (`login_hold`), which keeps
//! them in memory only, keyed by the caller's uid (SO_PEERCRED). Later
//! control requests from that uid that carry no token of their own act with
//! the held login; the daemon refreshes it at the provider when the ID token
//! is about to expire. Nothing is written to the human's home directory.
//!
//! Why not a token file: agents often run as the very uid of the human who
//! started them, and any file that uid can read the agent can read, and
//! send out through whatever it is allowed to reach. The control socket,
//! where the login now lives, is out of an agent's reach: the kernel keeps
//! agents off unix sockets, and the daemon refuses any request from inside
//! an agent cgroup (`control::outside_agents`).
//!
//! Held logins end with `cordon logout`, when a refresh fails, or when the
//! daemon stops (then `cordon login` again). Tokens are kept in [`Secret`]s
//! (zeroed on drop) and never logged.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{config::oidc::Oidc, identity::oidc::unverified_expiry, vault::Secret};

/// A held ID token expiring sooner than this is refreshed before use (it
/// must still be valid when it is verified).
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);

/// Humans whose login one daemon holds at most (one per uid).
const MAX_HELD: usize = 4096;

struct Held {
    id_token: Secret,
    refresh_token: Option<Secret>,
}

/// One slot per uid; the async lock serializes refreshes of one login (a
/// refresh token may be good for a single use) without holding up others.
type Slot = Arc<tokio::sync::Mutex<Option<Held>>>;

#[derive(Default)]
pub struct Logins {
    by_uid: Mutex<HashMap<u32, Slot>>,
}

impl Logins {
    fn slot(&self, uid: u32, create: bool) -> Result<Option<Slot>, String> {
        let mut map = self
            .by_uid
            .lock()
            .map_err(|_| "internal error: the login table lock is poisoned".to_owned())?;
        if let Some(slot) = map.get(&uid) {
            return Ok(Some(slot.clone()));
        }
        if !create {
            return Ok(None);
        }
        if map.len() >= MAX_HELD {
            return Err(format!(
                "the daemon already holds {MAX_HELD} logins; try again after some `cordon logout`"
            ));
        }
        let slot = Slot::default();
        map.insert(uid, slot.clone());
        Ok(Some(slot))
    }

    /// Holds (or replaces) the login of `uid`. The caller has verified the
    /// ID token.
    pub async fn hold(
        &self,
        uid: u32,
        id_token: Secret,
        refresh_token: Option<Secret>,
    ) -> Result<(), String> {
        let Some(slot) = self.slot(uid, true)? else {
            return Err("internal error: no login slot".into());
        };
        *slot.lock().await = Some(Held {
            id_token,
            refresh_token,
        });
        Ok(())
    }

    /// Drops the login of `uid`; whether there was one.
    pub async fn forget(&self, uid: u32) -> bool {
        let Ok(Some(slot)) = self.slot(uid, false) else {
            return false;
        };
        let had = slot.lock().await.take().is_some();
        if let Ok(mut map) = self.by_uid.lock() {
            map.remove(&uid);
        }
        had
    }

    /// The ID token held for `uid`, refreshed at the provider first when it
    /// expires within [`REFRESH_MARGIN`]. `Ok(None)`: no login held. A
    /// failed refresh drops the login and says why.
    pub async fn current(&self, uid: u32, oidc: Option<&Oidc>) -> Result<Option<Secret>, String> {
        let Some(slot) = self.slot(uid, false)? else {
            return Ok(None);
        };
        let mut held = slot.lock().await;
        let Some(login) = held.as_ref() else {
            return Ok(None);
        };
        let token = login.id_token.expose_str().unwrap_or_default();
        let now = chrono::Utc::now().timestamp();
        let margin = i64::try_from(REFRESH_MARGIN.as_secs()).unwrap_or(60);
        if unverified_expiry(token).is_some_and(|exp| exp > now + margin) {
            return Ok(Some(Secret::new(token.as_bytes().to_vec())));
        }
        let refreshed = match (oidc, &login.refresh_token) {
            (None, _) => Err("this daemon's config has no [identity.oidc] any more".to_owned()),
            (Some(_), None) => Err("it has expired and there is no refresh token".to_owned()),
            (Some(settings), Some(refresh)) => {
                let refresh = refresh.expose_str().unwrap_or_default().to_owned();
                crate::cli::login::refresh_tokens(settings, refresh)
                    .await
                    .map_err(|e| format!("refreshing it failed: {e:#}"))
            }
        };
        match refreshed {
            Ok((id_token, refresh_token)) => {
                let out = Secret::new(id_token.expose().to_vec());
                let keep = refresh_token.or_else(|| login.refresh_token.as_ref().map(clone_secret));
                *held = Some(Held {
                    id_token,
                    refresh_token: keep,
                });
                Ok(Some(out))
            }
            Err(why) => {
                *held = None;
                drop(held);
                if let Ok(mut map) = self.by_uid.lock() {
                    map.remove(&uid);
                }
                tracing::info!(uid, %why, "held login dropped");
                Err(format!(
                    "the login the daemon held for uid {uid} is gone: {why}; run `cordon login`"
                ))
            }
        }
    }
}

fn clone_secret(s: &Secret) -> Secret {
    Secret::new(s.expose().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    /// An unsigned JWT-shaped token expiring at `exp` (only `exp` is read here).
    fn token(exp: i64) -> Secret {
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let t = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256"}"#),
            b64(&format!(r#"{{"exp":{exp}}}"#))
        );
        Secret::new(t.into_bytes())
    }

    #[tokio::test]
    async fn logins_are_per_uid_and_forgotten() {
        let logins = Logins::default();
        let later = chrono::Utc::now().timestamp() + 3600;
        assert!(logins.current(1000, None).await.unwrap_or(None).is_none());
        assert!(logins.hold(1000, token(later), None).await.is_ok());
        let got = logins.current(1000, None).await.ok().flatten();
        assert_eq!(
            got.as_ref().map(Secret::expose),
            Some(token(later).expose())
        );
        assert!(logins.current(1001, None).await.ok().flatten().is_none());
        assert!(logins.forget(1000).await);
        assert!(!logins.forget(1000).await);
        assert!(logins.current(1000, None).await.ok().flatten().is_none());
    }

    #[tokio::test]
    async fn an_expiring_login_without_a_way_to_refresh_is_dropped_with_the_reason() {
        let logins = Logins::default();
        let soon = chrono::Utc::now().timestamp() + 10;
        assert!(logins.hold(7, token(soon), None).await.is_ok());
        let err = logins.current(7, None).await.err().unwrap_or_default();
        assert!(
            err.contains("uid 7") && err.contains("cordon login"),
            "{err}"
        );
        // Gone: the next request is simply not logged in.
        assert!(logins.current(7, None).await.ok().flatten().is_none());
    }
}
