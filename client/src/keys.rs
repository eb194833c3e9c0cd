//! Key files: a 32-byte Ed25519 seed as 64 hex digits and a newline, readable by its owner
//! only (mode 0600), and beside it a `.pub` file with the account id (the public key, hex).
//!
//! A key file that others may read is refused, as ssh refuses one: a secret key that has
//! leaked to other local users is not the party's alone any more.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use cohortex_types::private_file::{check_owner_only, create_new_private, PrivateFileError};
use ed25519_dalek::SigningKey;
use market::AccountId;
use zeroize::Zeroizing;

/// The `.pub` file beside a key file: `node-1.key` → `node-1.pub`, `buyer` → `buyer.pub`.
pub fn public_path(key_file: &Path) -> PathBuf {
    if key_file
        .extension()
        .is_some_and(|extension| extension == "key")
    {
        key_file.with_extension("pub")
    } else {
        let mut name = key_file.as_os_str().to_owned();
        name.push(".pub");
        PathBuf::from(name)
    }
}

/// Generates a key, writes it to `out` (mode 0600, refusing to overwrite) and its account id
/// to the `.pub` file beside it. Returns the account.
pub fn generate(out: &Path) -> anyhow::Result<AccountId> {
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    if let Some(parent) = out.parent().filter(|parent| !parent.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the directory {}", parent.display()))?;
    }
    let mut file = create_new_private(out).with_context(|| {
        if out.exists() {
            format!(
                "{} already exists; cohortex never overwrites a key (remove it or pick another --out)",
                out.display()
            )
        } else {
            format!("creating the key file {}", out.display())
        }
    })?;
    let seed = Zeroizing::new(format!("{}\n", hex::encode(key.to_bytes())));
    file.write_all(seed.as_bytes())
        .with_context(|| format!("writing {}", out.display()))?;
    let account = AccountId::of(&key);
    let public = public_path(out);
    std::fs::write(&public, format!("{account}\n"))
        .with_context(|| format!("writing {}", public.display()))?;
    Ok(account)
}

/// Reads a key file written by [`generate`]. `field` names the config field that points at it,
/// for error messages.
pub fn read(path: &Path, field: &str) -> anyhow::Result<SigningKey> {
    match check_owner_only(path) {
        Ok(()) => {}
        Err(error @ PrivateFileError::Unreadable { .. }) => {
            return Err(anyhow::Error::new(error).context(format!(
                "{field}: cannot read the key file {} (create one with `cohortex keygen --out {}`)",
                path.display(),
                path.display()
            )))
        }
        Err(error) => bail!("{field}: the key file {error}"),
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("{field}: reading {}", path.display()))?,
    );
    let trimmed = text.trim();
    if trimmed.len() != 64 {
        bail!(
            "{field}: {} must hold a 32-byte Ed25519 seed as 64 hex digits (it holds {} characters)",
            path.display(),
            trimmed.len()
        );
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    hex::decode_to_slice(trimmed, seed.as_mut()).with_context(|| {
        format!(
            "{field}: {} must hold 64 hex digits (an Ed25519 seed)",
            path.display()
        )
    })?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Writes `key` to `path` if no file is there yet (mode 0600), or reads the key already there.
/// The market process keeps its own keys this way: created on first run, reused after.
pub fn read_or_create(path: &Path, field: &str) -> anyhow::Result<(SigningKey, bool)> {
    if path.exists() {
        return Ok((read(path, field)?, false));
    }
    generate(path)?;
    Ok((read(path, field)?, true))
}

/// Parses an account id: 64 hex digits. `field` names where it came from.
pub fn parse_account(text: &str, field: &str) -> anyhow::Result<AccountId> {
    let text = text.trim();
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes).with_context(|| {
        format!(
            "{field}: `{text}` is not an account id (64 hex digits, as `cohortex keygen` prints)"
        )
    })?;
    let account = AccountId(bytes);
    if account.verifying_key().is_err() {
        bail!("{field}: `{text}` is not a valid Ed25519 public key");
    }
    Ok(account)
}
