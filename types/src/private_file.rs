//! Files that hold secrets (account keys, TLS keys, key shares, a recruiter's TFHE secret key):
//! made readable by their owner only, and refused when other users may read them, as ssh does
//! with its keys. One place for both rules, so every party applies the same ones.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// The permission bits of a secret file on Unix: read and write by its owner only.
pub const OWNER_ONLY: u32 = 0o600;

/// Options that open a file for writing with [`OWNER_ONLY`] permissions if they create it
/// (Unix; elsewhere the platform's default). The caller chooses create, truncate or
/// create-new.
pub fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(OWNER_ONLY);
    }
    options
}

/// Creates `path` for writing, readable by its owner only; refuses (`AlreadyExists`) if it
/// exists: a secret is never overwritten.
pub fn create_new_private(path: &Path) -> io::Result<File> {
    private_options().create_new(true).open(path)
}

/// Why a secret file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PrivateFileError {
    /// It cannot be read.
    #[error("cannot read {path} ({source})")]
    Unreadable {
        /// The file.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// Other users may read it: the secret is not its owner's alone any more.
    #[error("{path} may be read by other users (mode {mode:o}); run `chmod 600 {path}`")]
    ReadableByOthers {
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
}

/// Refuses `path` if it cannot be read or, on Unix, if users other than its owner may read or
/// write it.
pub fn check_owner_only(path: &Path) -> Result<(), PrivateFileError> {
    let metadata = std::fs::metadata(path).map_err(|source| PrivateFileError::Unreadable {
        path: path.display().to_string(),
        source,
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(PrivateFileError::ReadableByOthers {
                path: path.display().to_string(),
                mode,
            });
        }
    }
    #[cfg(not(unix))]
    let _ = metadata;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn created_secret_is_owner_only_and_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("cohortex-private-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        let _ = std::fs::remove_file(&path);
        create_new_private(&path).unwrap();
        check_owner_only(&path).unwrap();
        assert_eq!(
            create_new_private(&path).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            let refused = check_owner_only(&path).unwrap_err().to_string();
            assert!(
                refused.contains("may be read by other users (mode 644)"),
                "{refused}"
            );
            assert!(refused.contains("chmod 600"), "{refused}");
        }
        let missing = check_owner_only(&dir.join("missing")).unwrap_err();
        assert!(matches!(missing, PrivateFileError::Unreadable { .. }));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
