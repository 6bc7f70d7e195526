//! Vault: the credentials the proxy injects upstream (stage "upstream connect
//! with vault credential"), sealed at rest in the daemon's sled database and
//! the only place plaintext secrets live.
//!
//! Each entry of the sled tree [`TREE`] is keyed by its name and holds
//! `version || nonce || XChaCha20-Poly1305(kind, updated_at, secret)`, with
//! the entry's name as associated data, so a sealed value cannot be moved to
//! another name. The sealing key is derived from a 32-byte master key kept
//! outside the database: `$CREDENTIALS_DIRECTORY/cordon-vault-key` (systemd
//! `LoadCredential=`) when present, else `<state_dir>/vault.key`, created
//! 0600 on first start.
//!
//! Plaintext only ever sits in [`Secret`] or in zeroized buffers; no error,
//! log line or `Debug` output of this module contains secret bytes.

use std::{
    fmt,
    fs::{File, OpenOptions},
    io::{Read as _, Write as _},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use chacha20poly1305::{
    aead::{Aead as _, AeadInPlace as _, KeyInit as _, Payload},
    XChaCha20Poly1305, XNonce,
};
use hmac::{Hmac, Mac};
use rand::TryRngCore as _;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

/// The sled tree holding the sealed entries.
pub const TREE: &str = "vault";

/// The sled tree holding the key check (see [`Vault::open`]).
const META_TREE: &str = "vault-meta";
const KEY_CHECK: &[u8] = b"key-check";

/// File name of the master key under `$CREDENTIALS_DIRECTORY`.
pub const CREDENTIAL_NAME: &str = "cordon-vault-key";

/// File name of the master key under the state directory.
pub const KEY_FILE: &str = "vault.key";

/// Length of the master key file, in bytes.
pub const KEY_LEN: usize = 32;

/// Largest secret accepted, in bytes (a control request must carry it in
/// under 64 KiB even when JSON escaping doubles it).
pub const MAX_SECRET: usize = 16 * 1024;

/// Longest entry name.
pub const MAX_NAME: usize = 128;

/// Format of a sealed value: `VERSION || nonce (24) || ciphertext + tag`.
const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;

/// Labels of the keys derived for the vault itself. They are outside the
/// `cordon/` namespace of [`Vault::derive_key`], so no purpose passed there
/// can yield them.
const SEAL_LABEL: &[u8] = b"cordon-vault/seal";
const CHECK_LABEL: &[u8] = b"cordon-vault/key-check";

/// The only type plaintext secrets travel in: `Debug`/`Display` print
/// `[redacted]`, no `Serialize`, zeroed on drop.
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(Zeroizing::new(bytes))
    }

    /// The plaintext, for the one place that sends it upstream.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The plaintext as text, if it is UTF-8.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretKind {
    Password,
    SshKey,
    Token,
}

impl SecretKind {
    fn byte(self) -> u8 {
        match self {
            SecretKind::Password => 1,
            SecretKind::SshKey => 2,
            SecretKind::Token => 3,
        }
    }

    fn from_byte(b: u8) -> Option<SecretKind> {
        match b {
            1 => Some(SecretKind::Password),
            2 => Some(SecretKind::SshKey),
            3 => Some(SecretKind::Token),
            _ => None,
        }
    }

    /// The name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretKind::Password => "password",
            SecretKind::SshKey => "ssh-key",
            SecretKind::Token => "token",
        }
    }
}

impl fmt::Display for SecretKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `list` shows of an entry: never its value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub name: String,
    pub kind: SecretKind,
    /// RFC 3339, UTC.
    pub updated_at: String,
}

/// Vault failures. None of them carries secret bytes.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("vault key file {path}: {source}")]
    KeyFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vault key file {path} is not a regular file")]
    KeyNotAFile { path: PathBuf },
    #[error("vault key file {path} holds {len} bytes; it must hold exactly {KEY_LEN}")]
    KeySize { path: PathBuf, len: u64 },
    #[error("vault key file {path} is accessible to group or others (mode {mode:04o}); make it readable by its owner only (chmod 0600)")]
    KeyPermissions { path: PathBuf, mode: u32 },
    #[error("vault key file {path}: no randomness to create it: {source}")]
    Random {
        path: PathBuf,
        #[source]
        source: rand::rand_core::OsError,
    },
    #[error("no randomness for a nonce: {0}")]
    Nonce(#[source] rand::rand_core::OsError),
    #[error("the vault's entries were sealed with another key than {path}: restore the key file that was in use when they were stored")]
    WrongKey { path: PathBuf },
    #[error("vault store: {0}")]
    Store(#[source] sled::Error),
    #[error(
        "invalid vault entry name {name:?}: use 1 to {MAX_NAME} characters of A-Z a-z 0-9 _ . -"
    )]
    InvalidName { name: String },
    #[error("the secret for vault entry `{name}` is empty")]
    EmptySecret { name: String },
    #[error(
        "the secret for vault entry `{name}` is {len} bytes; at most {MAX_SECRET} are accepted"
    )]
    SecretTooLarge { name: String, len: usize },
    #[error("vault entry `{name}` cannot be opened: wrong vault key or tampered data")]
    Open { name: String },
    #[error("vault entry `{name}` is malformed: {what}")]
    Malformed { name: String, what: &'static str },
    #[error("vault entry `{name}` could not be sealed")]
    Seal { name: String },
}

/// The credential store. `Send + Sync`; every method is a short sled call.
pub struct Vault {
    db: sled::Db,
    entries: sled::Tree,
    master: Zeroizing<[u8; KEY_LEN]>,
    seal: XChaCha20Poly1305,
    key_path: PathBuf,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("key_path", &self.key_path)
            .field("entries", &self.entries.len())
            .finish_non_exhaustive()
    }
}

/// HMAC-SHA256 of the concatenated `label` parts.
fn hmac(key: &[u8], label: &[&[u8]]) -> [u8; 32] {
    // Invariant: HMAC accepts keys of any length, so this never fails (the
    // `else` is unreachable; every key used here is 32 bytes anyway).
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) else {
        return [0; 32];
    };
    for part in label {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Checks an entry name: 1-128 of `[A-Za-z0-9_.-]`.
pub fn check_name(name: &str) -> Result<(), VaultError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(VaultError::InvalidName {
            name: name.chars().take(MAX_NAME + 16).collect(),
        })
    }
}

impl Vault {
    /// Key: `$CREDENTIALS_DIRECTORY/cordon-vault-key` (systemd
    /// LoadCredential=) when that file exists, else `<state_dir>/vault.key`,
    /// created 0600 with O_EXCL on first start (32 random bytes); a key file
    /// that is group/world accessible or of the wrong size is refused.
    /// Entries are in sled tree "vault", each sealed with XChaCha20-Poly1305
    /// (random nonce, name as associated data).
    ///
    /// A key that does not match the one the stored entries were sealed with
    /// is refused here, naming the key file, rather than at the first use.
    pub fn open(db: &sled::Db, state_dir: &Path) -> Result<Vault, VaultError> {
        let credentials = std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from);
        Self::open_with(db, state_dir, credentials.as_deref())
    }

    /// [`Vault::open`] with the credentials directory passed in.
    fn open_with(
        db: &sled::Db,
        state_dir: &Path,
        credentials: Option<&Path>,
    ) -> Result<Vault, VaultError> {
        let (master, key_path) = load_key(state_dir, credentials)?;
        let entries = db.open_tree(TREE).map_err(VaultError::Store)?;
        let meta = db.open_tree(META_TREE).map_err(VaultError::Store)?;
        let check = hmac(master.as_slice(), &[CHECK_LABEL]);
        match meta.get(KEY_CHECK).map_err(VaultError::Store)? {
            Some(stored) if stored.as_ref() == check.as_slice() => {}
            // With no entries there is nothing the old key could open, so a
            // new key simply takes over.
            Some(_) if !entries.is_empty() => return Err(VaultError::WrongKey { path: key_path }),
            _ => {
                meta.insert(KEY_CHECK, check.as_slice())
                    .map_err(VaultError::Store)?;
                db.flush().map_err(VaultError::Store)?;
            }
        }
        let seal_key = Zeroizing::new(hmac(master.as_slice(), &[SEAL_LABEL]));
        let seal = XChaCha20Poly1305::new(&(*seal_key).into());
        Ok(Vault {
            db: db.clone(),
            entries,
            master,
            seal,
            key_path,
        })
    }

    /// The key file in use.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// Stores (or replaces) an entry and flushes it to disk.
    pub fn set(&self, name: &str, kind: SecretKind, secret: &Secret) -> Result<(), VaultError> {
        check_name(name)?;
        let bytes = secret.expose();
        if bytes.is_empty() {
            return Err(VaultError::EmptySecret { name: name.into() });
        }
        if bytes.len() > MAX_SECRET {
            return Err(VaultError::SecretTooLarge {
                name: name.into(),
                len: bytes.len(),
            });
        }
        let updated_at = crate::rfc3339(time::OffsetDateTime::now_utc());
        let stamp = updated_at.as_bytes();
        let stamp_len =
            u8::try_from(stamp.len()).map_err(|_| VaultError::Seal { name: name.into() })?;
        // Sized up front so the plaintext is never copied by a reallocation.
        let mut plain = Zeroizing::new(Vec::with_capacity(2 + stamp.len() + bytes.len()));
        plain.push(kind.byte());
        plain.push(stamp_len);
        plain.extend_from_slice(stamp);
        plain.extend_from_slice(bytes);

        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng
            .try_fill_bytes(&mut nonce)
            .map_err(VaultError::Nonce)?;
        let sealed = self
            .seal
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plain.as_slice(),
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| VaultError::Seal { name: name.into() })?;
        let mut value = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        value.push(VERSION);
        value.extend_from_slice(&nonce);
        value.extend_from_slice(&sealed);
        self.entries
            .insert(name.as_bytes(), value)
            .map_err(VaultError::Store)?;
        self.db.flush().map_err(VaultError::Store)?;
        Ok(())
    }

    /// Read on every new session, so rotation takes effect without a restart.
    pub fn get(&self, name: &str) -> Result<Option<(SecretKind, Secret)>, VaultError> {
        check_name(name)?;
        let Some(value) = self
            .entries
            .get(name.as_bytes())
            .map_err(VaultError::Store)?
        else {
            return Ok(None);
        };
        let opened = self.unseal(name, &value)?;
        Ok(Some((opened.kind, opened.secret)))
    }

    /// Every entry's name, kind and time of the last change (each is opened,
    /// so a tampered entry makes this fail, naming it).
    pub fn list(&self) -> Result<Vec<Entry>, VaultError> {
        let mut out = Vec::new();
        for item in self.entries.iter() {
            let (key, value) = item.map_err(VaultError::Store)?;
            let name = String::from_utf8(key.to_vec()).map_err(|_| VaultError::Malformed {
                name: String::from_utf8_lossy(&key).into_owned(),
                what: "the name is not UTF-8",
            })?;
            let opened = self.unseal(&name, &value)?;
            out.push(Entry {
                name,
                kind: opened.kind,
                updated_at: opened.updated_at,
            });
        }
        Ok(out)
    }

    /// Removes an entry; false if there was none. Flushes.
    pub fn remove(&self, name: &str) -> Result<bool, VaultError> {
        check_name(name)?;
        let old = self
            .entries
            .remove(name.as_bytes())
            .map_err(VaultError::Store)?;
        self.db.flush().map_err(VaultError::Store)?;
        Ok(old.is_some())
    }

    /// A 32-byte key derived from the master key for one purpose (e.g.
    /// "masking-hash"): HMAC-SHA256(master, "cordon/" + purpose).
    pub fn derive_key(&self, purpose: &str) -> [u8; 32] {
        hmac(self.master.as_slice(), &[b"cordon/", purpose.as_bytes()])
    }

    fn unseal(&self, name: &str, value: &[u8]) -> Result<Opened, VaultError> {
        let malformed = |what| VaultError::Malformed {
            name: name.into(),
            what,
        };
        let (&version, rest) = value.split_first().ok_or(malformed("empty value"))?;
        if version != VERSION {
            return Err(malformed("unknown format version"));
        }
        let (nonce, sealed) = rest
            .split_at_checked(NONCE_LEN)
            .ok_or(malformed("shorter than a nonce"))?;
        let nonce = XNonce::from_slice(nonce);
        // Decrypted in place, in a buffer that is zeroed when dropped.
        let mut plain = Zeroizing::new(sealed.to_vec());
        self.seal
            .decrypt_in_place(nonce, name.as_bytes(), &mut *plain)
            .map_err(|_| VaultError::Open { name: name.into() })?;
        let (&kind, rest) = plain.split_first().ok_or(malformed("no kind"))?;
        let kind = SecretKind::from_byte(kind).ok_or(malformed("unknown kind"))?;
        let (&stamp_len, rest) = rest.split_first().ok_or(malformed("no time stamp"))?;
        let (stamp, secret) = rest
            .split_at_checked(usize::from(stamp_len))
            .ok_or(malformed("time stamp cut short"))?;
        let updated_at = std::str::from_utf8(stamp)
            .map_err(|_| malformed("time stamp is not UTF-8"))?
            .to_owned();
        Ok(Opened {
            kind,
            updated_at,
            secret: Secret::new(secret.to_vec()),
        })
    }
}

struct Opened {
    kind: SecretKind,
    updated_at: String,
    secret: Secret,
}

/// The master key and the file it came from.
fn load_key(
    state_dir: &Path,
    credentials: Option<&Path>,
) -> Result<(Zeroizing<[u8; KEY_LEN]>, PathBuf), VaultError> {
    if let Some(dir) = credentials {
        let path = dir.join(CREDENTIAL_NAME);
        match read_key(&path) {
            Ok(key) => return Ok((key, path)),
            // Not handed over by systemd: fall back to the state directory.
            Err(VaultError::KeyFile { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    let path = state_dir.join(KEY_FILE);
    match read_key(&path) {
        Ok(key) => Ok((key, path)),
        Err(VaultError::KeyFile { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            create_key(&path)?;
            read_key(&path).map(|key| (key, path))
        }
        Err(e) => Err(e),
    }
}

/// Reads a key file, refusing symlinks, non-files, group/world access and
/// any size but [`KEY_LEN`] (checked on the opened file, not the path).
fn read_key(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, VaultError> {
    let io = |source| VaultError::KeyFile {
        path: path.to_owned(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(VaultError::KeyNotAFile {
            path: path.to_owned(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(VaultError::KeyPermissions {
            path: path.to_owned(),
            mode,
        });
    }
    let size_err = |len| VaultError::KeySize {
        path: path.to_owned(),
        len,
    };
    if meta.len() != KEY_LEN as u64 {
        return Err(size_err(meta.len()));
    }
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    file.read_exact(key.as_mut_slice()).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            size_err(0)
        } else {
            io(e)
        }
    })?;
    // The file must not have grown since the size check.
    let mut extra = [0u8; 1];
    if file.read(&mut extra).map_err(io)? != 0 {
        return Err(size_err(KEY_LEN as u64 + 1));
    }
    Ok(key)
}

/// Creates the key file atomically: 32 random bytes go to a temporary file
/// (O_CREAT|O_EXCL, 0600), fsynced, then hard-linked to `path`, which fails
/// if another process created it first. A crash never leaves a short key.
fn create_key(path: &Path) -> Result<(), VaultError> {
    let io = |p: &Path| {
        let p = p.to_owned();
        move |source| VaultError::KeyFile { path: p, source }
    };
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rand::rngs::OsRng
        .try_fill_bytes(key.as_mut_slice())
        .map_err(|source| VaultError::Random {
            path: path.to_owned(),
            source,
        })?;
    let tmp = path.with_file_name(format!("{KEY_FILE}.new-{}", std::process::id()));
    // A leftover from a crash of this very pid number holds no live key.
    let _ = std::fs::remove_file(&tmp);
    let linked = write_new(&tmp, key.as_slice()).and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {}
        // Another process won the race: use its key.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io(path)(e)),
    }
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io(dir))?;
    }
    tracing::info!(key = %path.display(), "created a new vault key");
    Ok(())
}

/// Writes `bytes` to a new file (O_CREAT|O_EXCL, mode 0600) and fsyncs it.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        db: sled::Db,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let db = sled::Config::new()
                .path(dir.path().join("db"))
                .open()
                .unwrap();
            Fixture { dir, db }
        }

        fn vault(&self) -> Vault {
            Vault::open_with(&self.db, self.dir.path(), None).unwrap()
        }
    }

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes().to_vec())
    }

    fn mode_of(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn round_trip() {
        let f = Fixture::new();
        let v = f.vault();
        v.set("db1", SecretKind::Password, &secret("hunter2"))
            .unwrap();
        let (kind, s) = v.get("db1").unwrap().unwrap();
        assert_eq!(kind, SecretKind::Password);
        assert_eq!(s.expose(), b"hunter2");
        assert_eq!(s.expose_str(), Some("hunter2"));
        assert!(v.get("nope").unwrap().is_none());
        // Binary secrets survive too.
        let bin: Vec<u8> = (0..=255).collect();
        v.set("bin", SecretKind::Token, &Secret::new(bin.clone()))
            .unwrap();
        assert_eq!(v.get("bin").unwrap().unwrap().1.expose(), bin.as_slice());
    }

    #[test]
    fn survives_reopen_with_the_same_key() {
        let f = Fixture::new();
        f.vault()
            .set("ssh", SecretKind::SshKey, &secret("-----BEGIN KEY-----\n"))
            .unwrap();
        let again = f.vault();
        let (kind, s) = again.get("ssh").unwrap().unwrap();
        assert_eq!(kind, SecretKind::SshKey);
        assert_eq!(s.expose(), b"-----BEGIN KEY-----\n");
    }

    #[test]
    fn rotation_replaces_the_secret() {
        let f = Fixture::new();
        let v = f.vault();
        v.set("db1", SecretKind::Password, &secret("old")).unwrap();
        let first = v.entries.get("db1").unwrap().unwrap();
        v.set("db1", SecretKind::Token, &secret("new")).unwrap();
        let second = v.entries.get("db1").unwrap().unwrap();
        let (kind, s) = v.get("db1").unwrap().unwrap();
        assert_eq!((kind, s.expose()), (SecretKind::Token, b"new".as_slice()));
        assert_ne!(first, second, "a fresh nonce every time");
        assert_eq!(v.list().unwrap().len(), 1);
    }

    #[test]
    fn same_secret_seals_differently_each_time() {
        let f = Fixture::new();
        let v = f.vault();
        v.set("a", SecretKind::Password, &secret("same")).unwrap();
        let first = v.entries.get("a").unwrap().unwrap();
        v.set("a", SecretKind::Password, &secret("same")).unwrap();
        assert_ne!(first, v.entries.get("a").unwrap().unwrap());
    }

    #[test]
    fn list_never_contains_values() {
        let f = Fixture::new();
        let v = f.vault();
        v.set("db1", SecretKind::Password, &secret("pw-AAAA-1111"))
            .unwrap();
        v.set("gh", SecretKind::Token, &secret("tok-BBBB-2222"))
            .unwrap();
        let list = v.list().unwrap();
        let names: Vec<&str> = list.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["db1", "gh"]);
        assert_eq!(list[1].kind, SecretKind::Token);
        assert!(list[0].updated_at.ends_with('Z'), "{}", list[0].updated_at);
        let json = serde_json::to_string(&list).unwrap();
        let debug = format!("{list:?}");
        for text in [&json, &debug] {
            assert!(!text.contains("pw-AAAA-1111"), "{text}");
            assert!(!text.contains("tok-BBBB-2222"), "{text}");
        }
        assert!(json.contains(r#""kind":"token""#), "{json}");
    }

    #[test]
    fn remove() {
        let f = Fixture::new();
        let v = f.vault();
        v.set("db1", SecretKind::Password, &secret("x")).unwrap();
        assert!(v.remove("db1").unwrap());
        assert!(!v.remove("db1").unwrap());
        assert!(v.get("db1").unwrap().is_none());
        assert!(v.list().unwrap().is_empty());
    }

    #[test]
    fn tampering_is_detected() {
        let f = Fixture::new();
        let v = f.vault();
        v.set("db1", SecretKind::Password, &secret("hunter2"))
            .unwrap();
        let good = v.entries.get("db1").unwrap().unwrap().to_vec();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            v.entries.insert("db1", bad).unwrap();
            let err = v.get("db1").map(|_| ()).unwrap_err().to_string();
            assert!(err.contains("`db1`"), "byte {i}: {err}");
            assert!(v.list().is_err(), "byte {i}");
        }
        // A sealed value moved to another name does not open there.
        v.entries.insert("db2", good.as_slice()).unwrap();
        let err = v.get("db2").map(|_| ()).unwrap_err();
        assert!(
            matches!(err, VaultError::Open { ref name } if name == "db2"),
            "{err}"
        );
        // Cut short.
        v.entries.insert("db3", &good[..10]).unwrap();
        assert!(v.get("db3").is_err());
    }

    #[test]
    fn wrong_key_names_the_entry_or_the_key_file() {
        let f = Fixture::new();
        let v = f.vault();
        v.set("db1", SecretKind::Password, &secret("hunter2"))
            .unwrap();
        // Another key over the same entries: refused at open, naming the file.
        let other = tempfile::tempdir().unwrap();
        let err = Vault::open_with(&f.db, other.path(), None).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, VaultError::WrongKey { .. }), "{msg}");
        assert!(
            msg.contains(&other.path().join(KEY_FILE).display().to_string()),
            "{msg}"
        );
        // An entry sealed under another key (e.g. restored from elsewhere)
        // fails to open with an error naming it, not its bytes.
        let f2 = Fixture::new();
        let v2 = f2.vault();
        v2.entries
            .insert("db1", v.entries.get("db1").unwrap().unwrap())
            .unwrap();
        let err = v2.get("db1").map(|_| ()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, VaultError::Open { .. }), "{msg}");
        assert!(msg.contains("`db1`") && !msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn a_new_key_takes_over_an_empty_vault() {
        let f = Fixture::new();
        f.vault();
        let other = tempfile::tempdir().unwrap();
        let v = Vault::open_with(&f.db, other.path(), None).unwrap();
        v.set("a", SecretKind::Token, &secret("t")).unwrap();
        assert!(Vault::open_with(&f.db, other.path(), None).is_ok());
        assert!(Vault::open_with(&f.db, f.dir.path(), None).is_err());
    }

    #[test]
    fn key_file_is_created_0600_with_32_bytes() {
        let f = Fixture::new();
        let v = f.vault();
        let path = f.dir.path().join(KEY_FILE);
        assert_eq!(v.key_path(), path);
        assert_eq!(mode_of(&path), 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), KEY_LEN);
        // No temporary file left behind.
        let names: Vec<String> = std::fs::read_dir(f.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.contains(".new-")), "{names:?}");
        // The same key on the next start.
        let before = std::fs::read(&path).unwrap();
        f.vault();
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn key_file_with_loose_permissions_is_refused() {
        let f = Fixture::new();
        f.vault();
        let path = f.dir.path().join(KEY_FILE);
        for mode in [0o640, 0o604, 0o644, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = Vault::open_with(&f.db, f.dir.path(), None).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, VaultError::KeyPermissions { .. }), "{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert!(Vault::open_with(&f.db, f.dir.path(), None).is_ok());
    }

    #[test]
    fn key_file_of_the_wrong_size_is_refused() {
        for len in [0, 16, 31, 33, 64] {
            let f = Fixture::new();
            let path = f.dir.path().join(KEY_FILE);
            std::fs::write(&path, vec![7u8; len]).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            let err = Vault::open_with(&f.db, f.dir.path(), None).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, VaultError::KeySize { .. }), "{len}: {msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
        }
    }

    #[test]
    fn key_file_symlink_is_refused() {
        let f = Fixture::new();
        let real = f.dir.path().join("elsewhere");
        std::fs::write(&real, [1u8; KEY_LEN]).unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&real, f.dir.path().join(KEY_FILE)).unwrap();
        let err = Vault::open_with(&f.db, f.dir.path(), None).unwrap_err();
        assert!(matches!(err, VaultError::KeyFile { .. }), "{err}");
    }

    #[test]
    fn credentials_directory_is_preferred() {
        let f = Fixture::new();
        let creds = tempfile::tempdir().unwrap();
        let cred = creds.path().join(CREDENTIAL_NAME);
        std::fs::write(&cred, [42u8; KEY_LEN]).unwrap();
        std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o400)).unwrap();
        let v = Vault::open_with(&f.db, f.dir.path(), Some(creds.path())).unwrap();
        assert_eq!(v.key_path(), cred);
        assert!(
            !f.dir.path().join(KEY_FILE).exists(),
            "no state-dir key made"
        );
        assert_eq!(
            v.derive_key("masking-hash"),
            hmac(&[42u8; KEY_LEN], &[b"cordon/masking-hash"])
        );
        v.set("db1", SecretKind::Password, &secret("pw")).unwrap();
        drop(v);
        let v = Vault::open_with(&f.db, f.dir.path(), Some(creds.path())).unwrap();
        assert_eq!(v.get("db1").unwrap().unwrap().1.expose(), b"pw");
        // A credentials directory without our file: the state dir is used.
        let empty = tempfile::tempdir().unwrap();
        let fb = Fixture::new();
        let v = Vault::open_with(&fb.db, fb.dir.path(), Some(empty.path())).unwrap();
        assert_eq!(v.key_path(), fb.dir.path().join(KEY_FILE));
        // A loose credential is refused, not skipped.
        std::fs::set_permissions(&cred, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Vault::open_with(&f.db, f.dir.path(), Some(creds.path())).unwrap_err();
        assert!(matches!(err, VaultError::KeyPermissions { .. }), "{err}");
    }

    #[test]
    fn derived_keys_differ_by_purpose_and_from_the_sealing_key() {
        let f = Fixture::new();
        let v = f.vault();
        let a = v.derive_key("masking-hash");
        assert_eq!(a, v.derive_key("masking-hash"));
        assert_ne!(a, v.derive_key("other"));
        assert_ne!(a, *v.master);
        let seal = hmac(v.master.as_slice(), &[SEAL_LABEL]);
        assert_ne!(v.derive_key("vault/seal"), seal);
        assert_ne!(v.derive_key("-vault/seal"), seal);
    }

    #[test]
    fn secret_debug_and_display_are_redacted() {
        let s = secret("hunter2");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(format!("{s}"), "[redacted]");
        assert_eq!(format!("{:?}", Some(&s)), "Some([redacted])");
        let f = Fixture::new();
        let v = f.vault();
        v.set("db1", SecretKind::Password, &s).unwrap();
        let got = v.get("db1").unwrap();
        assert!(!format!("{got:?}").contains("hunter2"));
        assert!(!format!("{v:?}").contains("hunter2"));
    }

    #[test]
    fn names_are_checked() {
        let f = Fixture::new();
        let v = f.vault();
        for good in ["a", "db-1", "A.b_c", &"x".repeat(MAX_NAME)] {
            assert!(
                v.set(good, SecretKind::Token, &secret("t")).is_ok(),
                "{good}"
            );
        }
        for bad in ["", "a b", "a/b", "ä", "a\n", &"x".repeat(MAX_NAME + 1)] {
            let err = v.set(bad, SecretKind::Token, &secret("t")).unwrap_err();
            assert!(
                matches!(err, VaultError::InvalidName { .. }),
                "{bad:?}: {err}"
            );
            assert!(v.get(bad).is_err());
            assert!(v.remove(bad).is_err());
        }
    }

    #[test]
    fn empty_and_oversized_secrets_are_refused() {
        let f = Fixture::new();
        let v = f.vault();
        let err = v.set("a", SecretKind::Password, &secret("")).unwrap_err();
        assert!(matches!(err, VaultError::EmptySecret { .. }), "{err}");
        let big = Secret::new(vec![b'x'; MAX_SECRET + 1]);
        let err = v.set("a", SecretKind::Password, &big).unwrap_err();
        assert!(matches!(err, VaultError::SecretTooLarge { .. }), "{err}");
        let max = Secret::new(vec![b'x'; MAX_SECRET]);
        assert!(v.set("a", SecretKind::Password, &max).is_ok());
    }

    #[test]
    fn vault_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Vault>();
        check::<Secret>();
    }
}
