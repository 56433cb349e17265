//! Certificates made by `openssl` for each test run: CAs, and certificates
//! they sign for a broker (`SERVER_EXT`: 127.0.0.1 and localhost), a client
//! (`CLIENT_EXT`) or a web receiver. Keys are written mode 0600.

use anyhow::{Context, Result, ensure};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A server certificate for 127.0.0.1 and localhost.
pub const SERVER_EXT: &str =
    "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n";
/// A TLS client certificate.
pub const CLIENT_EXT: &str = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n";

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl").args(args).current_dir(dir).output().context("running openssl")?;
    ensure!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A certificate and its key (mode 0600), as PEM files.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn new_key_args(key: &str) -> Vec<&str> {
    vec!["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key]
}

/// A self-signed CA `{name}.pem` / `{name}.key` in `dir`.
pub fn make_ca(dir: &Path, name: &str) -> Result<Pair> {
    let (cert, key) = (format!("{name}.pem"), format!("{name}.key"));
    let subject = format!("/CN=test CA {name}");
    let mut args = vec!["req", "-x509"];
    args.extend(new_key_args(&key));
    args.extend(["-out", &cert, "-days", "2", "-subj", &subject]);
    openssl(dir, &args)?;
    std::fs::set_permissions(dir.join(&key), std::fs::Permissions::from_mode(0o600))?;
    Ok(Pair { cert: dir.join(cert), key: dir.join(key) })
}

/// A certificate for `name` signed by `ca`, with the extensions `ext`.
pub fn issue(dir: &Path, ca: &Pair, name: &str, ext: &str) -> Result<Pair> {
    let (cert, key, csr, extfile) =
        (format!("{name}.pem"), format!("{name}.key"), format!("{name}.csr"), format!("{name}.ext"));
    std::fs::write(dir.join(&extfile), ext)?;
    let subject = format!("/CN={name}");
    let mut args = vec!["req", "-new"];
    args.extend(new_key_args(&key));
    args.extend(["-out", &csr, "-subj", &subject]);
    openssl(dir, &args)?;
    let (ca_cert, ca_key) = (ca.cert.to_str().context("path")?, ca.key.to_str().context("path")?);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            ca_cert,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &extfile,
        ],
    )?;
    std::fs::set_permissions(dir.join(&key), std::fs::Permissions::from_mode(0o600))?;
    Ok(Pair { cert: dir.join(cert), key: dir.join(key) })
}
