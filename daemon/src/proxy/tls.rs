//! TLS for protocol handlers: Cordon's local CA, which issues the
//! certificate a handler presents to agents that ask for TLS (agents are
//! given `<state_dir>/ca.crt`), and the client configuration for upstreams,
//! verified against a configured CA (verify-full: chain and name).

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error("cannot issue a certificate: {0}")]
    Issue(#[source] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(#[source] rustls::Error),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The local certificate authority, kept in the state dir: `ca.crt`
/// (public, given to agents) and `ca.key` (0600, never leaves the host).
pub struct LocalCa {
    cert_path: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl LocalCa {
    /// Loads the CA, creating it on first start.
    pub fn open(state_dir: &Path) -> Result<Self, TlsError> {
        let cert_path = state_dir.join("ca.crt");
        let key_path = state_dir.join("ca.key");
        if !key_path.exists() {
            Self::create(&cert_path, &key_path)?;
        }
        let meta = std::fs::metadata(&key_path).map_err(io_err(&key_path))?;
        if std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0 {
            return Err(TlsError::Invalid {
                path: key_path,
                what: "the CA key is readable by group or others; expected mode 0600".into(),
            });
        }
        let key_pem = std::fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let cert_pem = std::fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Invalid {
            path: key_path.clone(),
            what: format!("not a private key: {e}"),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| TlsError::Invalid {
            path: cert_path.clone(),
            what: format!("not a CA certificate: {e}"),
        })?;
        Ok(Self { cert_path, issuer })
    }

    fn create(cert_path: &Path, key_path: &Path) -> Result<(), TlsError> {
        let key = KeyPair::generate().map_err(TlsError::Issue)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "Cordon local CA");
        dn.push(DnType::OrganizationName, "Cordon");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(3650);
        let cert = params.self_signed(&key).map_err(TlsError::Issue)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(key_path)
            .map_err(io_err(key_path))?;
        f.write_all(key.serialize_pem().as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io_err(key_path))?;
        std::fs::write(cert_path, cert.pem()).map_err(io_err(cert_path))?;
        Ok(())
    }

    /// Where agents find the CA certificate.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// A server configuration presenting a fresh certificate, issued by
    /// this CA, for `names` (IP addresses or DNS names).
    pub fn server_config(&self, names: &[String]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let key = KeyPair::generate().map_err(TlsError::Issue)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            names.first().map_or("cordon", String::as_str),
        );
        params.distinguished_name = dn;
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName),
            })
            .collect::<Result<_, _>>()
            .map_err(TlsError::Issue)?;
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(TlsError::Issue)?;
        let chain = vec![cert.der().clone()];
        let key_der =
            PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| TlsError::Invalid {
                path: self.cert_path.clone(),
                what: e.to_string(),
            })?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(TlsError::Config)?;
        Ok(Arc::new(config))
    }
}

/// A client configuration trusting only the CA certificates in `ca_file`.
pub fn upstream_client_config(ca_file: &Path) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca_file).map_err(|e| TlsError::Invalid {
        path: ca_file.to_owned(),
        what: e.to_string(),
    })?;
    for cert in certs {
        let cert = cert.map_err(|e| TlsError::Invalid {
            path: ca_file.to_owned(),
            what: e.to_string(),
        })?;
        roots.add(cert).map_err(TlsError::Config)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Invalid {
            path: ca_file.to_owned(),
            what: "no certificate in the file".into(),
        });
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_is_created_once_with_a_private_key_and_issues_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::open(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let first = std::fs::read(ca.cert_path()).unwrap();
        assert!(ca
            .server_config(&["127.0.0.1".into(), "db.internal".into()])
            .is_ok());
        let again = LocalCa::open(dir.path()).unwrap();
        assert_eq!(std::fs::read(again.cert_path()).unwrap(), first);
        // The CA file is a valid trust anchor for a client.
        assert!(upstream_client_config(ca.cert_path()).is_ok());
        std::fs::set_permissions(
            dir.path().join("ca.key"),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )
        .unwrap();
        assert!(LocalCa::open(dir.path()).is_err());
    }
}
