//! How the uplink proves itself to the broker and the broker to it: TLS
//! with rustls (ring provider), the server's certificate checked against
//! `[mqtt] ca_file` (or the system's trust store), an optional client
//! certificate for brokers that require one, and an optional user name and
//! password. The files are read when the uplink starts and again on every
//! reload, so a renewed certificate is used from the next connection on.

use rumqttc::{TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The broker connection's security settings, as `[mqtt]` names them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrokerAuth {
    /// `Some` for TLS.
    pub tls: Option<TlsFiles>,
    pub username: Option<String>,
    /// The password on its first line; owner-only.
    pub password_file: Option<PathBuf>,
}

/// `[mqtt] ca_file`, `cert_file`, `key_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Absent: the system's trust store.
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    /// Owner-only, like the site key.
    pub key_file: Option<PathBuf>,
}

/// What the files gave: the transport and the credentials for the next
/// connection (user name, password).
#[derive(Clone)]
pub struct Loaded {
    pub transport: Transport,
    pub credentials: Option<(String, String)>,
}

impl std::fmt::Debug for Loaded {
    // Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tls = matches!(self.transport, Transport::Tls(_));
        let user = self.credentials.as_ref().map(|(user, _)| user.as_str());
        f.debug_struct("Loaded").field("tls", &tls).field("username", &user).finish_non_exhaustive()
    }
}

/// Why the broker settings could not be used. Every message names the file
/// and none carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read the MQTT {what} {}: {source}", path.display())]
    Read { what: &'static str, path: PathBuf, source: io::Error },
    #[error(
        "the MQTT {what} {} has mode {mode:04o}, which lets group or others read it; \
         restrict it with `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions { what: &'static str, path: PathBuf, mode: u32 },
    #[error("the MQTT {what} {} holds no usable {expected} (PEM)", path.display())]
    Pem { what: &'static str, path: PathBuf, expected: &'static str },
    #[error("the MQTT {what} {}: {detail}", path.display())]
    Rejected { what: &'static str, path: PathBuf, detail: String },
    #[error("the system's trust store has no certificate; set `[mqtt] ca_file`")]
    NoSystemRoots,
    #[error("TLS setup: {0}")]
    Setup(String),
}

impl BrokerAuth {
    /// Reads every file now. Plain TCP when TLS is off. The uplink and
    /// `gate-platform`'s connections both take their transport from here.
    pub fn load(&self) -> Result<Loaded, AuthError> {
        let transport = match &self.tls {
            None => Transport::Tcp,
            Some(files) => {
                let config = client_config(files)?;
                Transport::Tls(TlsConfiguration::Rustls(Arc::new(config)))
            }
        };
        let credentials = match (&self.username, &self.password_file) {
            (Some(user), Some(file)) => Some((user.clone(), read_password(file)?)),
            (Some(user), None) => Some((user.clone(), String::new())),
            _ => None,
        };
        Ok(Loaded { transport, credentials })
    }

    /// Checks the files as [`Self::load`] would, for a start-up refusal
    /// before any task runs.
    pub fn check(&self) -> Result<(), AuthError> {
        self.load().map(drop)
    }
}

fn client_config(files: &TlsFiles) -> Result<ClientConfig, AuthError> {
    let mut roots = RootCertStore::empty();
    match &files.ca_file {
        Some(path) => {
            let what = "CA file";
            let pem = read(what, path)?;
            for cert in certificates(what, path, &pem)? {
                roots.add(cert).map_err(|e| AuthError::Rejected { what, path: path.clone(), detail: e.to_string() })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(AuthError::NoSystemRoots);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AuthError::Setup(e.to_string()))?
        .with_root_certificates(roots);
    match (&files.cert_file, &files.key_file) {
        (Some(cert_path), Some(key_path)) => {
            let chain =
                certificates("client certificate file", cert_path, &read("client certificate file", cert_path)?)?;
            let key = private_key(key_path)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| AuthError::Rejected {
                what: "client key file",
                path: key_path.clone(),
                detail: format!("does not fit the client certificate: {e}"),
            })
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|source| AuthError::Read { what, path: path.to_path_buf(), source })
}

fn certificates(what: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, AuthError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err(AuthError::Pem { what, path: path.to_path_buf(), expected: "certificate" });
    }
    Ok(certs)
}

/// Reads a secret, refusing a file whose mode grants anything to group or
/// others (checked on the file actually opened, as the site key is).
fn read_owner_only(what: &'static str, path: &Path) -> Result<Vec<u8>, AuthError> {
    let fail = |source| AuthError::Read { what, path: path.to_path_buf(), source };
    let mut file = File::open(path).map_err(fail)?;
    let mode = file.metadata().map_err(fail)?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(AuthError::Permissions { what, path: path.to_path_buf(), mode });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(fail)?;
    Ok(bytes)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, AuthError> {
    let what = "client key file";
    let pem = read_owner_only(what, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| AuthError::Pem {
        what,
        path: path.to_path_buf(),
        expected: "private key",
    })
}

fn read_password(path: &Path) -> Result<String, AuthError> {
    let what = "password file";
    let bytes = read_owner_only(what, path)?;
    let text = String::from_utf8(bytes).map_err(|_| AuthError::Rejected {
        what,
        path: path.to_path_buf(),
        detail: "is not UTF-8".into(),
    })?;
    Ok(text.lines().next().unwrap_or_default().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn files(dir: &Path) -> TlsFiles {
        let ca = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("ca");
        let client = rcgen::generate_simple_self_signed(vec!["gate".into()]).expect("client");
        fs::write(dir.join("ca.pem"), ca.cert.pem()).expect("write");
        fs::write(dir.join("client.pem"), client.cert.pem()).expect("write");
        fs::write(dir.join("client.key"), client.key_pair.serialize_pem()).expect("write");
        fs::set_permissions(dir.join("client.key"), fs::Permissions::from_mode(0o600)).expect("chmod");
        TlsFiles {
            ca_file: Some(dir.join("ca.pem")),
            cert_file: Some(dir.join("client.pem")),
            key_file: Some(dir.join("client.key")),
        }
    }

    #[test]
    fn a_key_file_others_may_read_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = files(dir.path());
        let auth = BrokerAuth { tls: Some(tls.clone()), ..BrokerAuth::default() };
        auth.check().expect("owner-only key accepted");
        for mode in [0o640, 0o604, 0o644] {
            fs::set_permissions(dir.path().join("client.key"), fs::Permissions::from_mode(mode)).expect("chmod");
            let err = auth.check().expect_err("refused");
            let text = err.to_string();
            assert!(matches!(err, AuthError::Permissions { .. }), "{text}");
            assert!(text.contains("client key file") && text.contains("chmod 600"), "{text}");
        }
    }

    #[test]
    fn a_password_file_others_may_read_is_refused_and_its_first_line_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("password");
        fs::write(&path, "s3cret\nignored\n").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        let auth = BrokerAuth { tls: None, username: Some("gate-1".into()), password_file: Some(path.clone()) };
        let loaded = auth.load().expect("loaded");
        assert_eq!(loaded.credentials, Some(("gate-1".into(), "s3cret".into())));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).expect("chmod");
        let text = auth.check().expect_err("refused").to_string();
        assert!(text.contains("password file") && !text.contains("s3cret"), "{text}");
    }

    #[test]
    fn files_that_are_not_pem_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut tls = files(dir.path());
        fs::write(dir.path().join("ca.pem"), "not a certificate").expect("write");
        let auth = BrokerAuth { tls: Some(tls.clone()), ..BrokerAuth::default() };
        let text = auth.check().expect_err("refused").to_string();
        assert!(text.contains("CA file") && text.contains("ca.pem") && text.contains("certificate"), "{text}");
        tls.ca_file = Some(dir.path().join("missing.pem"));
        let auth = BrokerAuth { tls: Some(tls), ..BrokerAuth::default() };
        let text = auth.check().expect_err("refused").to_string();
        assert!(text.contains("cannot read the MQTT CA file") && text.contains("missing.pem"), "{text}");
    }
}
