//! The market's `public.toml`: where it answers and the keys that let others check it. The
//! market process writes it; nodes, patients, buyers, recruiters and the Python module read it
//! with this one strict parser (`deny_unknown_fields`, every field required, errors naming the
//! file and field).

use std::path::Path;

use anyhow::{bail, Context};
use ed25519_dalek::VerifyingKey;
use market::{AccountId, Hash32};
use serde::{Deserialize, Serialize};

use crate::keys::parse_account;

/// The format version of every Cohortex TOML file (this one and the CLI's configs).
pub const CONFIG_VERSION: u32 = 1;

/// Reads and parses a Cohortex TOML file into `T`, with errors naming the file.
pub fn read_toml<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the {what} config {}", path.display()))?;
    toml::from_str(&text).map_err(|error| anyhow::anyhow!("{}: {error}", path.display()))
}

/// Refuses a file whose `version` this build does not read.
pub fn check_version(version: u32, path: &Path) -> anyhow::Result<()> {
    if version != CONFIG_VERSION {
        bail!(
            "{}: version = {version} is not supported; this cohortex reads version = {CONFIG_VERSION}",
            path.display()
        );
    }
    Ok(())
}

/// The name of the file, in the market's state directory, that tells nodes, patients and
/// buyers how to reach and check the market.
pub const PUBLIC_FILE: &str = "public.toml";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublicFile {
    version: u32,
    endpoint: String,
    chain_id: String,
    ledger_key: String,
    coordinator: String,
    fund: String,
    issuer: String,
}

/// What the market publishes about itself (`public.toml`): no secrets, only where it answers
/// and the keys that let others check it.
#[derive(Debug, Clone)]
pub struct MarketPublic {
    /// `https://host:port` of the Ledger, Consent and Market services.
    pub endpoint: String,
    /// The ledger's chain id (every transaction names it).
    pub chain_id: Hash32,
    /// The key that signs tree heads: receipts are checked against it.
    pub ledger_key: VerifyingKey,
    /// The coordinator's account: the only caller nodes accept compute requests from.
    pub coordinator: AccountId,
    /// The donation fund.
    pub fund: AccountId,
    /// The issuer (admits nodes, deposits credits).
    pub issuer: AccountId,
}

impl MarketPublic {
    /// Writes the file atomically.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let file = PublicFile {
            version: CONFIG_VERSION,
            endpoint: self.endpoint.clone(),
            chain_id: self.chain_id.to_string(),
            ledger_key: hex::encode(self.ledger_key.as_bytes()),
            coordinator: self.coordinator.to_string(),
            fund: self.fund.to_string(),
            issuer: self.issuer.to_string(),
        };
        let text = format!(
            "# Written by `cohortex market serve`: how to reach and check this market.\n\
             # No secrets; give it to node operators, patients and buyers.\n{}",
            toml::to_string(&file).context("encoding public.toml")?
        );
        let staged = path.with_extension("toml.tmp");
        std::fs::write(&staged, text).with_context(|| format!("writing {}", staged.display()))?;
        std::fs::rename(&staged, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Reads the file; `field` is the config field that named it.
    pub fn load(path: &Path, field: &str) -> anyhow::Result<Self> {
        if !path.exists() {
            bail!(
                "{field}: {} does not exist; start the market (`cohortex market serve`) first, \
                 or copy the public.toml from its state directory",
                path.display()
            );
        }
        let file: PublicFile = read_toml(path, "market's public")?;
        check_version(file.version, path)?;
        let at = |name: &str| format!("{}: {name}", path.display());
        let mut chain = [0u8; 32];
        hex::decode_to_slice(file.chain_id.trim(), &mut chain)
            .with_context(|| format!("{}: not 64 hex digits", at("chain_id")))?;
        let ledger_account = parse_account(&file.ledger_key, &at("ledger_key"))?;
        let ledger_key = ledger_account
            .verifying_key()
            .map_err(|error| anyhow::anyhow!("{}: {error}", at("ledger_key")))?;
        Ok(Self {
            endpoint: file.endpoint,
            chain_id: Hash32(chain),
            ledger_key,
            coordinator: parse_account(&file.coordinator, &at("coordinator"))?,
            fund: parse_account(&file.fund, &at("fund"))?,
            issuer: parse_account(&file.issuer, &at("issuer"))?,
        })
    }
}
