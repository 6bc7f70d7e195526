//! `cordon vault set NAME [--kind K] | list [--json] | rm NAME`: the
//! operator's side of the vault. The secret is read from stdin (never argv),
//! sent to the daemon over the control socket and never printed.

use std::{
    io::{IsTerminal as _, Read as _},
    path::Path,
};

use anyhow::Context as _;
use zeroize::Zeroizing;

use crate::{
    control::{Request, VaultRemoved, VaultStored, WireSecret},
    vault::{Entry, Secret, SecretKind, MAX_SECRET},
};

use super::sessions::escape;

pub fn set(config: &Path, name: &str, kind: SecretKind) -> anyhow::Result<()> {
    crate::vault::check_name(name)?;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("cordon: reading the secret for `{name}` from stdin; end it with Ctrl-D");
    }
    let secret = read_secret(stdin.lock(), kind)?;
    let stored: VaultStored = super::call_typed(
        config,
        &Request::VaultSet {
            name: name.to_owned(),
            kind,
            secret: WireSecret(secret),
        },
    )?;
    println!(
        "stored vault entry {} ({})",
        escape(&stored.name),
        stored.kind
    );
    Ok(())
}

/// The whole of `input`, at most [`MAX_SECRET`] bytes of UTF-8 text. For
/// passwords and tokens one trailing line break (`\n` or `\r\n`, as `echo`
/// or a file adds) is dropped; SSH keys are kept exactly as given.
fn read_secret(input: impl std::io::Read, kind: SecretKind) -> anyhow::Result<Secret> {
    // Sized up front (and zeroed on drop) so no partial copy is left behind
    // by a reallocation.
    let mut buf = Zeroizing::new(Vec::with_capacity(MAX_SECRET + 3));
    input
        .take(MAX_SECRET as u64 + 3)
        .read_to_end(&mut buf)
        .context("reading the secret from stdin")?;
    if matches!(kind, SecretKind::Password | SecretKind::Token) {
        let len = buf.len();
        if buf.ends_with(b"\r\n") {
            buf.truncate(len - 2);
        } else if buf.ends_with(b"\n") {
            buf.truncate(len - 1);
        }
    }
    if buf.is_empty() {
        anyhow::bail!(
            "the secret on stdin is empty (pipe it in, e.g. `cordon vault set NAME < file`)"
        );
    }
    if buf.len() > MAX_SECRET {
        anyhow::bail!("the secret on stdin is longer than {MAX_SECRET} bytes");
    }
    if std::str::from_utf8(&buf).is_err() {
        anyhow::bail!("the secret on stdin is not UTF-8 text");
    }
    Ok(Secret::new(buf.to_vec()))
}

pub fn list(config: &Path, json: bool) -> anyhow::Result<()> {
    let data = super::call(config, &Request::VaultList)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&data)?);
        return Ok(());
    }
    let entries: Vec<Entry> =
        serde_json::from_value(data).context("the daemon's reply has an unexpected shape")?;
    println!("{:<32}  {:<8}  UPDATED", "NAME", "KIND");
    for e in entries {
        println!(
            "{:<32}  {:<8}  {}",
            escape(&e.name),
            e.kind,
            escape(&e.updated_at)
        );
    }
    Ok(())
}

pub fn rm(config: &Path, name: &str) -> anyhow::Result<()> {
    let removed: VaultRemoved = super::call_typed(
        config,
        &Request::VaultRm {
            name: name.to_owned(),
        },
    )?;
    println!("removed vault entry {}", escape(&removed.name));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(input: &[u8], kind: SecretKind) -> Result<Vec<u8>, String> {
        read_secret(input, kind)
            .map(|s| s.expose().to_vec())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn one_trailing_line_break_is_dropped_for_passwords_and_tokens() {
        for kind in [SecretKind::Password, SecretKind::Token] {
            assert_eq!(read(b"pw\n", kind).unwrap(), b"pw");
            assert_eq!(read(b"pw\r\n", kind).unwrap(), b"pw");
            assert_eq!(read(b"pw", kind).unwrap(), b"pw");
            assert_eq!(read(b"pw\n\n", kind).unwrap(), b"pw\n");
            assert_eq!(read(b" pw \n", kind).unwrap(), b" pw ");
        }
    }

    #[test]
    fn ssh_keys_are_kept_as_given() {
        let key = b"-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----\n";
        assert_eq!(read(key, SecretKind::SshKey).unwrap(), key);
    }

    #[test]
    fn empty_oversized_and_binary_secrets_are_refused() {
        for (input, kind) in [
            (&b""[..], SecretKind::Password),
            (b"\n", SecretKind::Password),
            (b"\r\n", SecretKind::Token),
            (b"", SecretKind::SshKey),
        ] {
            let err = read(input, kind).unwrap_err();
            assert!(err.contains("empty"), "{input:?}: {err}");
        }
        let big = vec![b'x'; MAX_SECRET + 1];
        assert!(read(&big, SecretKind::Token)
            .unwrap_err()
            .contains("longer"));
        let mut max = vec![b'x'; MAX_SECRET];
        max.push(b'\n');
        assert_eq!(read(&max, SecretKind::Token).unwrap().len(), MAX_SECRET);
        let err = read(b"\xff\xfe", SecretKind::Password).unwrap_err();
        assert!(err.contains("UTF-8") && !err.contains("\u{fffd}"), "{err}");
    }
}
