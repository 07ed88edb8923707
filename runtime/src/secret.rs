//! Secrets named in configuration (API tokens, passwords, HMAC keys): read
//! from a file or an environment variable when they are needed, never kept
//! in the YAML itself.

use std::path::{Path, PathBuf};

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{}: {source}", path.display())]
    File { path: PathBuf, source: std::io::Error },
    #[error("environment variable {0} is not set")]
    Env(String),
}

/// The contents of `path`, without surrounding white space (a trailing
/// newline from `echo` is no part of a token).
pub fn from_file(path: &Path) -> Result<String, SecretError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| SecretError::File { path: path.to_path_buf(), source })
}

/// The secret in `file`, else in the environment variable `env`; `None`
/// when neither is given.
pub fn from_file_or_env(file: Option<&Path>, env: Option<&str>) -> Result<Option<String>, SecretError> {
    if let Some(f) = file {
        return from_file(f).map(Some);
    }
    if let Some(var) = env {
        return std::env::var(var).map(Some).map_err(|_| SecretError::Env(var.to_string()));
    }
    Ok(None)
}

/// Writes a new random token (32 bytes from the OS generator, hex) to
/// `path`, readable by owner and group only; an existing file is kept
/// unless `force`. Returns the token.
pub fn generate(path: &Path, force: bool) -> Result<String, SecretError> {
    use rand::RngCore;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let err = |source| SecretError::File { path: path.to_path_buf(), source };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o640);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut f = options.open(path).map_err(err)?;
    writeln!(f, "{token}").and_then(|()| f.sync_all()).map_err(err)?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_token_is_long_private_and_not_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("api.token");
        let t = generate(&f, false).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(from_file(&f).unwrap(), t);
        assert_eq!(std::fs::metadata(&f).unwrap().permissions().mode() & 0o777, 0o640);
        let e = generate(&f, false).unwrap_err().to_string();
        assert!(e.contains("exists"), "{e}");
        assert_ne!(generate(&f, true).unwrap(), t);
    }

    #[test]
    fn a_file_is_trimmed_and_a_missing_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "s3cret\n").unwrap();
        assert_eq!(from_file_or_env(Some(&f), Some("IGNORED")).unwrap().as_deref(), Some("s3cret"));
        let missing = dir.path().join("nope");
        let e = from_file_or_env(Some(&missing), None).unwrap_err().to_string();
        assert!(e.starts_with(&missing.display().to_string()), "{e}");
        assert_eq!(from_file_or_env(None, None).unwrap(), None);
        let e = from_file_or_env(None, Some("TIERWATCH_TEST_SURELY_UNSET")).unwrap_err();
        assert_eq!(e.to_string(), "environment variable TIERWATCH_TEST_SURELY_UNSET is not set");
    }
}
