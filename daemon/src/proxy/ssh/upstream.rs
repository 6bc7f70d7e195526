//! The upstream side: Cordon as the SSH client of the real host. The host key must be one of
//! the accepted keys (pinned in config or recorded by `cordon ssh-trust`); the login uses the
//! vaulted private key or password, which never leaves this module except to the upstream.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use russh::{
    client,
    keys::{PrivateKeyWithHashAlg, PublicKey},
};
use tokio::net::TcpStream;

use super::{fingerprint, key_line};
use crate::vault::{SecretKind, Vault};

/// Checks the upstream's host key against the accepted ones and remembers what it saw.
pub(super) struct UpHandler {
    /// Accepted `<algorithm> <base64>` lines; empty = accept none (probe mode records only).
    accepted: Vec<String>,
    seen: Arc<Mutex<Option<PublicKey>>>,
}

impl client::Handler for UpHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            // Host certificates are not trusted by Cordon: pin the key itself.
            return Ok(false);
        };
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(key.clone());
        }
        let line = key_line(key);
        Ok(!line.is_empty() && self.accepted.iter().any(|a| a == &line))
    }
}

/// A handshaken upstream connection.
pub(super) struct Upstream {
    pub handle: client::Handle<UpHandler>,
}

impl Upstream {
    /// SSH handshake over `tcp`; the host key must be one of `accepted`.
    pub async fn handshake(
        config: Arc<client::Config>,
        tcp: TcpStream,
        accepted: Vec<String>,
        timeout: Duration,
    ) -> Result<Self, String> {
        let seen = Arc::new(Mutex::new(None));
        let handler = UpHandler {
            accepted,
            seen: seen.clone(),
        };
        match tokio::time::timeout(timeout, client::connect_stream(config, tcp, handler)).await {
            Err(_) => Err(format!(
                "the upstream SSH handshake did not finish within {timeout:?}"
            )),
            Ok(Ok(handle)) => Ok(Self { handle }),
            Ok(Err(e)) => {
                let seen = seen.lock().ok().and_then(|s| s.clone());
                Err(match (e, seen) {
                    (russh::Error::UnknownKey, Some(key)) => format!(
                        "the upstream host key does not match the pinned one: it presented {} {}; refusing the session",
                        key.algorithm(),
                        fingerprint(&key)
                    ),
                    (russh::Error::UnknownKey, None) => {
                        "the upstream presented a host certificate; pin its host key instead".into()
                    }
                    (e, _) => format!("upstream SSH handshake failed: {e}"),
                })
            }
        }
    }

    /// Logs in as `login` with the vault entry `credential` (a private key or a password).
    pub async fn authenticate(
        &mut self,
        vault: &Vault,
        credential: &str,
        login: &str,
    ) -> Result<(), String> {
        let (kind, secret) = vault
            .get(credential)
            .map_err(|e| format!("vault: {e}"))?
            .ok_or_else(|| format!("the vault has no entry `{credential}`"))?;
        let text = secret
            .expose_str()
            .ok_or_else(|| format!("vault entry `{credential}` is not UTF-8 text"))?;
        let result = match kind {
            SecretKind::SshKey => {
                let key = russh::keys::decode_secret_key(text, None).map_err(|_| {
                    format!("vault entry `{credential}` is not an unencrypted OpenSSH or PEM private key")
                })?;
                let hash = self
                    .handle
                    .best_supported_rsa_hash()
                    .await
                    .map_err(|e| format!("upstream: {e}"))?
                    .flatten();
                self.handle
                    .authenticate_publickey(login, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
                    .await
            }
            SecretKind::Password => self.handle.authenticate_password(login, text).await,
            SecretKind::Token => {
                return Err(format!(
                    "vault entry `{credential}` is a token; an ssh resource needs an ssh-key or a password"
                ))
            }
        };
        match result {
            Ok(r) if r.success() => Ok(()),
            Ok(_) => Err(format!(
                "the upstream refused the vaulted credential `{credential}` for login `{login}`"
            )),
            Err(e) => Err(format!("upstream login failed: {e}")),
        }
    }
}

/// Connects to `address` and returns the host key it presents (the handshake is then
/// abandoned: nothing is logged in).
pub(super) async fn probe(
    config: Arc<client::Config>,
    address: SocketAddr,
    timeout: Duration,
) -> Result<PublicKey, String> {
    let seen = Arc::new(Mutex::new(None));
    let handler = UpHandler {
        accepted: Vec::new(),
        seen: seen.clone(),
    };
    let attempt = async {
        let tcp = TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot reach {address}: {e}"))?;
        // The handshake fails by design (no key is accepted); the key is what we came for.
        let _ = client::connect_stream(config, tcp, handler).await;
        Ok::<_, String>(())
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Err(format!(
            "{address} did not finish the handshake within {timeout:?}"
        )),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) => seen
            .lock()
            .ok()
            .and_then(|s| s.clone())
            .ok_or_else(|| format!("{address} presented no plain host key")),
    }
}
