//! The platform's Ed25519 signing key file: created with owner-only mode
//! (refusing to overwrite), read back refusing a file that group or others
//! may access. The file holds the 32-byte seed as 64 hex characters and a
//! newline, like the other key files of the project.

use ed25519_dalek::SigningKey;
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key file {} already exists; refusing to overwrite it (the gates trust its public key)", .0.display())]
    AlreadyExists(PathBuf),
    #[error("signing key file {path} has mode {mode:04o}, which lets group or others access it; restrict it with `chmod 600 {path}`", path = .0.display(), mode = .1)]
    Permissions(PathBuf, u32),
    #[error("signing key file {}: expected 64 hex characters", .0.display())]
    Format(PathBuf),
    #[error("signing key file {path}: {error}", path = .0.display(), error = .1)]
    Io(PathBuf, io::Error),
}

/// The key id: the first 16 hex digits of SHA-256 of the public key.
pub fn key_id(key: &SigningKey) -> String {
    hex::encode(&Sha256::digest(key.verifying_key().as_bytes())[..8])
}

/// `KEYID:HEX`, as `gated`'s `[platform] signing_keys` takes it.
pub fn public_line(key: &SigningKey) -> String {
    format!("{}:{}", key_id(key), hex::encode(key.verifying_key().as_bytes()))
}

/// Creates a new key file (mode 0600) and returns the key.
pub fn generate(path: &Path) -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    OsRng.try_fill_bytes(&mut seed).map_err(|e| KeyError::Io(path.into(), io::Error::other(e)))?;
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            KeyError::AlreadyExists(path.into())
        } else {
            KeyError::Io(path.into(), e)
        }
    })?;
    let text = format!("{}\n", hex::encode(seed));
    if let Err(e) = file.write_all(text.as_bytes()).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(KeyError::Io(path.into(), e));
    }
    Ok(SigningKey::from_bytes(&seed))
}

/// Reads a key file, refusing one readable by group or others.
pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
    let mut file = File::open(path).map_err(|e| KeyError::Io(path.into(), e))?;
    let mode = file.metadata().map_err(|e| KeyError::Io(path.into(), e))?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions(path.into(), mode));
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|_| KeyError::Format(path.into()))?;
    let mut seed = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut seed).map_err(|_| KeyError::Format(path.into()))?;
    Ok(SigningKey::from_bytes(&seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_is_private_loads_back_and_is_not_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("platform.key");
        let key = generate(&path).expect("generated");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).expect("loads").to_bytes(), key.to_bytes());
        assert!(matches!(generate(&path), Err(KeyError::AlreadyExists(_))));
        let line = public_line(&key);
        let (id, hex_key) = line.split_once(':').expect("KEYID:HEX");
        assert_eq!((id.len(), hex_key.len()), (16, 64));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(matches!(load(&path), Err(KeyError::Permissions(_, 0o640))));
    }
}
