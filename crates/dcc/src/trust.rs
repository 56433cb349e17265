//! The trust list: signer (DSC) certificates by key id, with what each may sign and when.
//!
//! Only the parts of an X.509 certificate that verification needs are kept:
//! the public key, the validity window, and the extended key usage OIDs that
//! restrict which certificate types the signer may issue. The chain up to a
//! country signing CA is not checked here: the trust list is loaded from a
//! source the operator already trusts.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use x509_cert::certificate::{CertificateInner, Raw};
use x509_cert::der::Decode as _;
use x509_cert::ext::pkix::ExtendedKeyUsage;

use crate::error::DccError;

const OID_EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_RSA_PSS: &str = "1.2.840.113549.1.1.10";
const OID_EXT_KEY_USAGE: &str = "2.5.29.37";

/// Extended key usage OIDs of the health certificate profile, both the
/// registered arc and the `.0.` variant several issuers used.
const EKU_TEST: [&str; 2] = ["1.3.6.1.4.1.1847.2021.1.1", "1.3.6.1.4.1.0.1847.2021.1.1"];
const EKU_VACCINATION: [&str; 2] = ["1.3.6.1.4.1.1847.2021.1.2", "1.3.6.1.4.1.0.1847.2021.1.2"];
const EKU_RECOVERY: [&str; 2] = ["1.3.6.1.4.1.1847.2021.1.3", "1.3.6.1.4.1.0.1847.2021.1.3"];

/// A key id: the first 8 bytes of the SHA-256 of the signer's DER certificate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kid(pub [u8; 8]);

impl Kid {
    /// The key id of a DER certificate.
    pub fn of_certificate(der: &[u8]) -> Kid {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut kid = [0u8; 8];
        kid.copy_from_slice(&digest.as_ref()[..8]);
        Kid(kid)
    }

    /// A key id taken from a COSE header, if it has the right length.
    pub fn from_slice(bytes: &[u8]) -> Option<Kid> {
        <[u8; 8]>::try_from(bytes).ok().map(Kid)
    }
}

/// Shown in base64, the way published trust lists show key ids.
impl fmt::Display for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl fmt::Debug for Kid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Kid({self})")
    }
}

/// A signer's public key, in the form the signature check consumes.
#[derive(Clone, PartialEq, Eq)]
pub enum SignerKey {
    /// An uncompressed P-256 point (65 bytes), for ES256.
    P256(Vec<u8>),
    /// A DER `RSAPublicKey` (modulus, exponent), for PS256.
    Rsa(Vec<u8>),
    /// A key kept for its validity and key usage, that cannot check any
    /// algorithm the format allows (P-384, compressed points, ...).
    Unsupported(String),
}

impl SignerKey {
    /// A short description, for errors.
    pub fn describe(&self) -> String {
        match self {
            SignerKey::P256(_) => "EC P-256".to_string(),
            SignerKey::Rsa(_) => "RSA".to_string(),
            SignerKey::Unsupported(what) => what.clone(),
        }
    }
}

impl fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Which certificate types a signer may sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyUsage {
    /// Test results.
    pub test: bool,
    /// Vaccinations.
    pub vaccination: bool,
    /// Recoveries.
    pub recovery: bool,
}

impl KeyUsage {
    /// A signer whose certificate names none of the profile's OIDs may sign
    /// every type (the key usage rule of the health certificate profile).
    pub const ANY: KeyUsage = KeyUsage { test: true, vaccination: true, recovery: true };

    /// The usage granted by a certificate's extended key usage OIDs.
    pub fn from_oids<'a>(oids: impl IntoIterator<Item = &'a str> + Clone) -> KeyUsage {
        let has = |set: &[&str; 2]| oids.clone().into_iter().any(|o| set.contains(&o));
        let usage = KeyUsage { test: has(&EKU_TEST), vaccination: has(&EKU_VACCINATION), recovery: has(&EKU_RECOVERY) };
        if usage == (KeyUsage { test: false, vaccination: false, recovery: false }) { KeyUsage::ANY } else { usage }
    }
}

/// One signer certificate of the trust list.
#[derive(Debug, Clone)]
pub struct Signer {
    /// Its key id.
    pub kid: Kid,
    /// Its public key.
    pub key: SignerKey,
    /// Certificate notBefore, Unix milliseconds.
    pub not_before_ms: i64,
    /// Certificate notAfter, Unix milliseconds.
    pub not_after_ms: i64,
    /// Which certificate types it may sign.
    pub usage: KeyUsage,
}

impl Signer {
    /// Parses a DER X.509 certificate.
    pub fn from_der(der: &[u8]) -> Result<Signer, DccError> {
        // The `Raw` profile accepts serial numbers that RFC 5280 forbids
        // (negative, over 20 bytes): issuers minted such certificates, and
        // the serial number plays no part in verification.
        let cert = CertificateInner::<Raw>::from_der(der)
            .map_err(|e| DccError::trust(format!("not a DER X.509 certificate: {e}")))?;
        let tbs = &cert.tbs_certificate;
        let millis = |t: x509_cert::time::Time| i64::try_from(t.to_unix_duration().as_millis()).unwrap_or(i64::MAX);
        let spki = &tbs.subject_public_key_info;
        let key_bits = spki.subject_public_key.raw_bytes().to_vec();
        let key = match spki.algorithm.oid.to_string().as_str() {
            OID_EC_PUBLIC_KEY => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.decode_as::<x509_cert::spki::ObjectIdentifier>().ok())
                    .map(|oid| oid.to_string());
                match curve.as_deref() {
                    Some(OID_P256) if key_bits.len() == 65 && key_bits[0] == 4 => SignerKey::P256(key_bits),
                    Some(OID_P256) => SignerKey::Unsupported("EC P-256 point not in uncompressed form".into()),
                    Some(OID_P384) => SignerKey::Unsupported("EC P-384".into()),
                    Some(other) => SignerKey::Unsupported(format!("EC curve {other}")),
                    None => SignerKey::Unsupported("EC key without a named curve".into()),
                }
            }
            OID_RSA | OID_RSA_PSS => SignerKey::Rsa(key_bits),
            other => SignerKey::Unsupported(format!("key algorithm {other}")),
        };
        let mut eku_oids = Vec::new();
        for ext in tbs.extensions.as_deref().unwrap_or(&[]) {
            if ext.extn_id.to_string() == OID_EXT_KEY_USAGE {
                let eku = ExtendedKeyUsage::from_der(ext.extn_value.as_bytes())
                    .map_err(|e| DccError::trust(format!("unreadable extended key usage extension: {e}")))?;
                eku_oids.extend(eku.0.iter().map(|oid| oid.to_string()));
            }
        }
        Ok(Signer {
            kid: Kid::of_certificate(der),
            key,
            not_before_ms: millis(tbs.validity.not_before),
            not_after_ms: millis(tbs.validity.not_after),
            usage: KeyUsage::from_oids(eku_oids.iter().map(String::as_str)),
        })
    }
}

/// Signer certificates by key id. Key ids may collide (they are 64 bits
/// from different issuers), so each id keeps every certificate that has it.
#[derive(Debug, Clone, Default)]
pub struct TrustList {
    by_kid: HashMap<Kid, Vec<Signer>>,
    count: usize,
}

impl TrustList {
    /// An empty trust list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a DER X.509 certificate; returns its key id.
    pub fn add_certificate_der(&mut self, der: &[u8]) -> Result<Kid, DccError> {
        let signer = Signer::from_der(der)?;
        let kid = signer.kid;
        let same_kid = self.by_kid.entry(kid).or_default();
        // The same certificate twice is one signer: its kid and key match.
        if !same_kid.iter().any(|s| s.key == signer.key) {
            same_kid.push(signer);
            self.count += 1;
        }
        Ok(kid)
    }

    /// Adds a base64 DER certificate (no PEM armour; whitespace ignored).
    pub fn add_certificate_base64(&mut self, b64: &str) -> Result<Kid, DccError> {
        let compact: String = b64.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(compact.as_bytes())
            .map_err(|e| DccError::trust(format!("certificate is not base64: {e}")))?;
        self.add_certificate_der(&der)
    }

    /// Loads a file of one or more certificates: PEM blocks, or base64 DER
    /// one per line (`#` starts a comment line), or a single binary DER.
    pub fn load_pem_or_base64_file(path: &Path) -> Result<TrustList, DccError> {
        let at = |reason: String| DccError::trust(format!("{}: {reason}", path.display()));
        let bytes = std::fs::read(path).map_err(|e| at(format!("cannot read: {e}")))?;
        let mut list = TrustList::new();
        match std::str::from_utf8(&bytes) {
            Ok(text) if text.contains("-----BEGIN") => {
                for (n, block) in pem_blocks(text).map_err(&at)?.into_iter().enumerate() {
                    list.add_certificate_base64(&block).map_err(|e| at(format!("certificate {}: {e}", n + 1)))?;
                }
            }
            Ok(text) => {
                for (n, line) in text.lines().enumerate() {
                    let line = line.trim();
                    if line.is_empty() || line.starts_with('#') {
                        continue;
                    }
                    list.add_certificate_base64(line).map_err(|e| at(format!("line {}: {e}", n + 1)))?;
                }
            }
            Err(_) => {
                list.add_certificate_der(&bytes).map_err(|e| at(e.to_string()))?;
            }
        }
        if list.is_empty() {
            return Err(at("no certificate in the file".to_string()));
        }
        Ok(list)
    }

    /// How many signer certificates the list holds.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the list holds no certificate.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The certificates with this key id (usually one, none if unknown).
    pub fn get(&self, kid: &Kid) -> &[Signer] {
        self.by_kid.get(kid).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// The base64 bodies of the `CERTIFICATE` PEM blocks of a text.
fn pem_blocks(text: &str) -> Result<Vec<String>, String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with("-----BEGIN ") {
            if current.is_some() {
                return Err(format!("line {}: BEGIN inside a PEM block", n + 1));
            }
            if line == "-----BEGIN CERTIFICATE-----" {
                current = Some(String::new());
            } else {
                return Err(format!("line {}: not a CERTIFICATE block", n + 1));
            }
        } else if line.starts_with("-----END ") {
            blocks.push(current.take().ok_or(format!("line {}: END without BEGIN", n + 1))?);
        } else if let Some(body) = current.as_mut() {
            body.push_str(line);
        }
    }
    if current.is_some() {
        return Err("unterminated PEM block".to_string());
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_without_profile_oids_allows_everything() {
        assert_eq!(KeyUsage::from_oids([]), KeyUsage::ANY);
        assert_eq!(KeyUsage::from_oids(["1.3.6.1.5.5.7.3.2"]), KeyUsage::ANY);
        let test_only = KeyUsage::from_oids(["1.3.6.1.4.1.0.1847.2021.1.1", "1.3.6.1.5.5.7.3.2"]);
        assert_eq!(test_only, KeyUsage { test: true, vaccination: false, recovery: false });
        let v_r = KeyUsage::from_oids(["1.3.6.1.4.1.1847.2021.1.2", "1.3.6.1.4.1.1847.2021.1.3"]);
        assert_eq!(v_r, KeyUsage { test: false, vaccination: true, recovery: true });
    }

    #[test]
    fn kid_displays_as_base64() {
        assert_eq!(Kid([0x0c, 0x4b, 0x15, 0x51, 0x2b, 0xe9, 0x14, 0x01]).to_string(), "DEsVUSvpFAE=");
        assert_eq!(Kid::from_slice(&[1, 2, 3]), None);
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        let mut list = TrustList::new();
        assert!(list.add_certificate_der(b"\x30\x03\x02\x01\x01").is_err());
        assert!(list.add_certificate_base64("not base64!").is_err());
        assert!(list.is_empty());
    }

    #[test]
    fn pem_blocks_are_split() {
        let text = "x\n-----BEGIN CERTIFICATE-----\nQUJD\nREVG\n-----END CERTIFICATE-----\n\
                    -----BEGIN CERTIFICATE-----\nR0hJ\n-----END CERTIFICATE-----\n";
        assert_eq!(pem_blocks(text), Ok(vec!["QUJDREVG".to_string(), "R0hJ".to_string()]));
        assert!(pem_blocks("-----BEGIN CERTIFICATE-----\nQUJD\n").is_err());
        assert!(pem_blocks("-----BEGIN PRIVATE KEY-----\nQUJD\n-----END PRIVATE KEY-----").is_err());
    }
}
