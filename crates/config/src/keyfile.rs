//! The site key file: reading it (refusing one that group or others may
//! access) and creating a new random one with owner-only permissions.
//!
//! The file holds the 32-byte key as 64 hex characters and a newline.

use gate_core::{KeyError, SiteKey};
use rand::TryRngCore;
use rand::rngs::OsRng;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the site key file could not be read or written. Every message names
/// the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("site key file {} does not exist", path.display())]
    NotFound { path: PathBuf },
    #[error(
        "site key file {} has mode {mode:04o}, which lets group or others access it; \
         restrict it with `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error(
        "site key file {} already exists; refusing to overwrite it \
         (a new key makes every stored credential hash unusable)",
        path.display()
    )]
    AlreadyExists { path: PathBuf },
    #[error("site key file {}: {source}", path.display())]
    Format { path: PathBuf, source: KeyError },
    #[error("site key file {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

fn io_error(path: &Path, source: io::Error) -> KeyFileError {
    match source.kind() {
        io::ErrorKind::NotFound => KeyFileError::NotFound { path: path.to_path_buf() },
        _ => KeyFileError::Io { path: path.to_path_buf(), source },
    }
}

/// Reads the site key, refusing a file whose mode grants any permission to
/// group or others.
pub fn load_site_key(path: &Path) -> Result<SiteKey, KeyFileError> {
    let mut file = File::open(path).map_err(|e| io_error(path, e))?;
    // Check the mode of the file actually opened, not of whatever the path
    // points to a moment later.
    let mode = file.metadata().map_err(|e| io_error(path, e))?.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions { path: path.to_path_buf(), mode });
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(|e| io_error(path, e))?;
    let format = |source| KeyFileError::Format { path: path.to_path_buf(), source };
    let text = std::str::from_utf8(&bytes).map_err(|_| format(KeyError::NotHex))?;
    SiteKey::from_hex(text).map_err(format)
}

/// Creates a new site key file: 32 random bytes as 64 lowercase hex
/// characters and a newline, mode 0600. Refuses to overwrite an existing file.
pub fn write_new_site_key(path: &Path) -> Result<(), KeyFileError> {
    let mut key = [0u8; 32];
    OsRng.try_fill_bytes(&mut key).map_err(|e| io_error(path, io::Error::other(e)))?;
    let mut text = hex::encode(key);
    text.push('\n');
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            KeyFileError::AlreadyExists { path: path.to_path_buf() }
        } else {
            // Also for a missing folder: "does not exist" would mislead here.
            KeyFileError::Io { path: path.to_path_buf(), source: e }
        }
    })?;
    if let Err(e) = file.write_all(text.as_bytes()).and_then(|()| file.sync_all()) {
        drop(file);
        // Do not leave a truncated key behind for the next start to trip on.
        let _ = std::fs::remove_file(path);
        return Err(KeyFileError::Io { path: path.to_path_buf(), source: e });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn key_file(dir: &Path, content: &str, mode: u32) -> PathBuf {
        let path = dir.join("site.key");
        fs::write(&path, content).expect("write key file");
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).expect("chmod");
        path
    }

    #[test]
    fn group_or_world_readable_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        for mode in [0o644, 0o640, 0o604, 0o601, 0o660] {
            let path = key_file(dir.path(), &format!("{}\n", "ab".repeat(32)), mode);
            let err = load_site_key(&path).expect_err("refused");
            assert!(matches!(&err, KeyFileError::Permissions { mode: m, .. } if *m == mode), "{mode:o}: {err:?}");
            let message = err.to_string();
            assert!(message.contains(&format!("chmod 600 {}", path.display())), "{message}");
            assert!(message.contains(&format!("{mode:04o}")), "{message}");
            fs::remove_file(&path).expect("rm");
        }
    }

    #[test]
    fn owner_only_key_is_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        for mode in [0o600, 0o400] {
            let path = key_file(dir.path(), &format!("{}\n", "0f".repeat(32)), mode);
            let key = load_site_key(&path).expect("accepted");
            assert_eq!(key.to_hex(), "0f".repeat(32));
            fs::remove_file(&path).expect("rm");
        }
    }

    #[test]
    fn wrong_length_or_non_hex_key_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = key_file(dir.path(), "abcd\n", 0o600);
        let err = load_site_key(&path).expect_err("refused");
        assert!(matches!(err, KeyFileError::Format { source: KeyError::Length(4), .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        fs::remove_file(&path).expect("rm");

        let path = key_file(dir.path(), &"zz".repeat(32), 0o600);
        let err = load_site_key(&path).expect_err("refused");
        assert!(matches!(err, KeyFileError::Format { source: KeyError::NotHex, .. }), "{err:?}");
    }

    #[test]
    fn missing_key_file_is_not_found_with_its_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("absent.key");
        let err = load_site_key(&path).expect_err("missing");
        assert!(matches!(err, KeyFileError::NotFound { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn new_key_is_owner_only_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("site.key");
        write_new_site_key(&path).expect("created");

        let meta = fs::metadata(&path).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let text = fs::read_to_string(&path).expect("read");
        assert_eq!(text.len(), 65);
        assert!(text.ends_with('\n'));
        assert!(text[..64].bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')), "{text}");
        let key = load_site_key(&path).expect("loads back");
        assert_eq!(key.to_hex(), text.trim_end());

        let err = write_new_site_key(&path).expect_err("refuses overwrite");
        assert!(matches!(err, KeyFileError::AlreadyExists { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
        assert_eq!(fs::read_to_string(&path).expect("read"), text, "left untouched");

        // Two keys are not the same key.
        let other = dir.path().join("other.key");
        write_new_site_key(&other).expect("created");
        assert_ne!(fs::read_to_string(&other).expect("read"), text);
    }

    #[test]
    fn new_key_in_a_missing_folder_is_an_error_with_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("no-such-dir").join("site.key");
        let err = write_new_site_key(&path).expect_err("no folder");
        assert!(matches!(err, KeyFileError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains(&path.display().to_string()), "{err}");
    }
}
