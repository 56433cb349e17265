//! Creating the platform's Ed25519 signing key file: owner-only mode,
//! never overwriting an existing key (the gates trust its public key). The
//! file holds the 32-byte seed as 64 hex characters and a newline; reading
//! it back (refusing a file group or others may access) is
//! `gate_envelope::Signer::from_file`, the one place that does.

use gate_envelope::Signer;
use rand::TryRngCore;
use rand::rngs::OsRng;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key file {} already exists; refusing to overwrite it (the gates trust its public key)", .0.display())]
    AlreadyExists(PathBuf),
    #[error("signing key file {path}: {error}", path = .0.display(), error = .1)]
    Io(PathBuf, io::Error),
}

/// `KEYID:HEX`, as `gated`'s `[platform] signing_keys` takes it.
pub fn public_line(signer: &Signer) -> String {
    signer.key_spec().to_spec_string()
}

/// Creates a new key file (mode 0600) and returns its signer.
pub fn generate(path: &Path) -> Result<Signer, KeyError> {
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
    Ok(Signer::from_seed(seed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_generated_key_is_private_loads_back_and_is_not_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("platform.key");
        let signer = generate(&path).expect("generated");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = Signer::from_file(&path).expect("loads");
        assert_eq!(loaded.seed_hex(), signer.seed_hex());
        assert!(matches!(generate(&path), Err(KeyError::AlreadyExists(_))));
        let line = public_line(&signer);
        let (id, hex_key) = line.split_once(':').expect("KEYID:HEX");
        assert_eq!((id.len(), hex_key.len()), (16, 64));
        assert!(gate_envelope::parse_key_spec(&line).is_ok());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(Signer::from_file(&path).is_err());
    }
}
