//! The TOML config files of the separate processes: `market.toml`, `node.toml`,
//! `patient.toml`, `buyer.toml`, and the `public.toml` the market writes for everyone else.
//!
//! Each file is versioned (`version = 1`), parsed with `deny_unknown_fields` (a misspelt key
//! is an error, not a silent default), then validated into a typed config. Relative paths in a
//! file are relative to the file's own directory, so a config works from any working directory.
//! Every error names the file and the field to fix.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use market::{AccountId, Purpose, MAX_LISTING_ID_LEN, MIN_COMMITTEE_THRESHOLD};
use serde::Deserialize;

use cohortex_client::keys::parse_account;
use cohortex_client::public::{check_version, read_toml};
pub use cohortex_client::public::{MarketPublic, PUBLIC_FILE};
use cohortex_proto::tls::TlsIdentity;

/// A listing's per-order ε cap when `listing.max_epsilon_per_order` is not set: 1 (and never
/// above the budget). At ε = 10 two overlapping large cohorts, differenced, reveal one
/// person's attribute; at ε = 1 one order moves the odds of any inference about a person by
/// at most e ≈ 2.7. A listing may raise it (docs/privacy.md, "Choosing ε").
pub const DEFAULT_MAX_EPSILON_PER_ORDER_MICRO: u64 = 1_000_000;

/// `relative` resolved against the directory of the config file `config`.
fn resolve(config: &Path, relative: &Path) -> PathBuf {
    if relative.is_absolute() {
        return relative.to_path_buf();
    }
    config
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .map_or_else(|| relative.to_path_buf(), |dir| dir.join(relative))
}

fn parse_listen(text: &str, path: &Path, field: &str) -> anyhow::Result<SocketAddr> {
    text.parse().with_context(|| {
        format!(
            "{}: {field} = \"{text}\" is not a socket address like \"127.0.0.1:7700\"",
            path.display()
        )
    })
}

fn check_advertise(advertise: Option<String>, path: &Path) -> anyhow::Result<Option<String>> {
    if let Some(url) = &advertise {
        check_https(url, path, "advertise")?;
    }
    Ok(advertise)
}

fn epsilon_micro(epsilon: f64, path: &Path, field: &str) -> anyhow::Result<u64> {
    if !(epsilon.is_finite() && epsilon > 0.0 && epsilon <= 1_000_000.0) {
        bail!(
            "{}: {field} = {epsilon} must be a positive number of at most 10⁶",
            path.display()
        );
    }
    let micro = (epsilon * 1e6).round() as u64;
    if micro == 0 {
        bail!("{}: {field} = {epsilon} is below 10⁻⁶", path.display());
    }
    Ok(micro)
}

fn purpose(name: &str, path: &Path, field: &str) -> anyhow::Result<Purpose> {
    market::server::purpose_field(name, field)
        .map_err(|status| anyhow::anyhow!("{}: {}", path.display(), status.message()))
}

// ---------------------------------------------------------------------------------------------
// [tls], in every file

/// `[tls]`: the federation authority's certificate and this party's certificate and key, as
/// `cohortex tls ca` and `cohortex tls cert` write them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

/// Reads `[tls]` of the config file `path`; every link is mutual TLS, so it is required.
fn tls_identity(tls: Option<TlsFile>, path: &Path) -> anyhow::Result<TlsIdentity> {
    let Some(tls) = tls else {
        bail!(
            "{}: [tls] is missing; every link is mutual TLS. Add\n  [tls]\n  ca = \"ca.crt\"\n  \
             cert = \"NAME.crt\"\n  key = \"NAME.key\"\nwith files made by `cohortex tls ca` and \
             `cohortex tls cert`",
            path.display()
        );
    };
    TlsIdentity::load(
        &resolve(path, &tls.ca),
        &resolve(path, &tls.cert),
        &resolve(path, &tls.key),
        &format!("{}: tls", path.display()),
    )
    .map_err(|error| anyhow::anyhow!("{error}"))
}

fn check_https(url: &str, path: &Path, field: &str) -> anyhow::Result<()> {
    if !url.starts_with("https://") {
        bail!(
            "{}: {field} = \"{url}\" must be an https:// URL (every link is mutual TLS)",
            path.display()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// market.toml

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MarketFile {
    version: u32,
    state_dir: PathBuf,
    listen: String,
    advertise: Option<String>,
    chain_name: Option<String>,
    committee: MarketCommitteeFile,
    tls: Option<TlsFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MarketCommitteeFile {
    threshold: u16,
    members: Vec<String>,
}

/// `market.toml`, validated.
#[derive(Debug, Clone)]
pub struct MarketConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// Ledger database and the market's keys (created on first run).
    pub state_dir: PathBuf,
    /// Where the market serves.
    pub listen: SocketAddr,
    /// The URL others reach it at, if not `https://<bound address>`.
    pub advertise: Option<String>,
    /// The ledger's name in its genesis.
    pub chain_name: String,
    /// Committee threshold t.
    pub threshold: u16,
    /// The compute nodes the operator admits, in member order (member 1 first).
    pub members: Vec<AccountId>,
    /// The market's TLS identity (it serves and dials the nodes with it).
    pub tls: TlsIdentity,
}

impl MarketConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let file: MarketFile = read_toml(path, "market")?;
        check_version(file.version, path)?;
        let listen = parse_listen(&file.listen, path, "listen")?;
        let advertise = check_advertise(file.advertise, path)?;
        let mut members = Vec::new();
        let mut seen = BTreeSet::new();
        for (index, text) in file.committee.members.iter().enumerate() {
            let field = format!("{}: committee.members[{index}]", path.display());
            let account = parse_account(text, &field)?;
            if !seen.insert(account) {
                bail!("{field}: {account} is listed twice");
            }
            members.push(account);
        }
        let size = members.len();
        if size == 0 {
            bail!(
                "{}: committee.members is empty; list the account id of every compute node \
                 (`cohortex keygen` prints it)",
                path.display()
            );
        }
        if file.committee.threshold < MIN_COMMITTEE_THRESHOLD
            || usize::from(file.committee.threshold) > size
        {
            bail!(
                "{}: committee.threshold = {} must be at least {MIN_COMMITTEE_THRESHOLD} (so that \
                 no single member can decrypt) and at most the number of members ({size})",
                path.display(),
                file.committee.threshold
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            state_dir: resolve(path, &file.state_dir),
            listen,
            advertise,
            chain_name: file.chain_name.unwrap_or_else(|| "cohortex".into()),
            threshold: file.committee.threshold,
            members,
            tls: tls_identity(file.tls, path)?,
        })
    }

    /// The file the market writes its public facts to.
    pub fn public_path(&self) -> PathBuf {
        self.state_dir.join(PUBLIC_FILE)
    }
}

// ---------------------------------------------------------------------------------------------
// node.toml

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    version: u32,
    key_file: PathBuf,
    listen: String,
    advertise: Option<String>,
    market: PathBuf,
    vault_dir: PathBuf,
    committee: NodeCommitteeFile,
    listing: ListingFile,
    data: DataFile,
    tls: Option<TlsFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeCommitteeFile {
    member: u16,
    threshold: u16,
    members: Vec<String>,
    endpoints: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListingFile {
    id: String,
    price_per_query: u64,
    purposes: Vec<String>,
    min_cohort_size: u32,
    epsilon_budget: f64,
    max_epsilon_per_order: Option<f64>,
    compensation: CompensationFile,
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum CompensationFile {
    Payment,
    Donation,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DataFile {
    file: PathBuf,
    manifest: Option<PathBuf>,
    reference_date: Option<String>,
}

/// Where a node's records come from, from `[data]`.
#[derive(Debug, Clone)]
pub enum DataSource {
    /// A CSV or Parquet file described by a manifest.
    Table {
        /// The file.
        file: PathBuf,
        /// The schema manifest.
        manifest: PathBuf,
    },
    /// FHIR R4 bundles: a `.json` Bundle, an `.ndjson` of Bundles, or a directory of them;
    /// the vault takes the built-in FHIR schema.
    Fhir {
        /// The file or directory.
        path: PathBuf,
        /// The date ages are computed at.
        reference_date: compute_node::fhir::Date,
    },
}

impl DataSource {
    /// The file or directory the records are read from.
    pub fn path(&self) -> &Path {
        match self {
            DataSource::Table { file, .. } => file,
            DataSource::Fhir { path, .. } => path,
        }
    }
}

/// A reference date in `YYYY-MM-DD`; `field` names it in the error.
pub fn reference_date(text: &str, field: &str) -> anyhow::Result<compute_node::fhir::Date> {
    let parsed = (text.len() == 10)
        .then(|| compute_node::fhir::Date::parse(text))
        .flatten();
    parsed.ok_or_else(|| {
        anyhow::anyhow!("{field} = \"{text}\" is not a date like \"2026-01-01\" (YYYY-MM-DD)")
    })
}

/// A node's listing terms, from `[listing]`.
#[derive(Debug, Clone)]
pub struct ListingConfig {
    /// The listing id.
    pub id: String,
    /// Credits per query, split among the participants.
    pub price_per_query: u64,
    /// Purposes it may be queried for.
    pub purposes: BTreeSet<Purpose>,
    /// Fewest participants a query must include.
    pub min_cohort_size: u32,
    /// Total ε budget, in micro-ε.
    pub epsilon_budget_micro: u64,
    /// Most ε one order may spend, in micro-ε.
    pub max_epsilon_per_order_micro: u64,
    /// Whether every share is donated to the market's fund.
    pub donation: bool,
}

/// `node.toml`, validated.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// The node's account key.
    pub key_file: PathBuf,
    /// Where the Compute service listens.
    pub listen: SocketAddr,
    /// The URL the coordinator and peers reach it at, if not `https://<bound address>`.
    pub advertise: Option<String>,
    /// The market's `public.toml`.
    pub market: PathBuf,
    /// Where the vault is kept.
    pub vault_dir: PathBuf,
    /// This node's member index (1-based).
    pub member: u16,
    /// The committee threshold t (at least 2), pinned in this file.
    pub threshold: u16,
    /// Every committee member's account, in member order.
    pub members: Vec<AccountId>,
    /// Every committee member's Compute endpoint, in member order: where this node delivers
    /// its key shares. Pinned here, never taken from the coordinator.
    pub endpoints: Vec<String>,
    /// The listing.
    pub listing: ListingConfig,
    /// Where the records come from.
    pub data: DataSource,
    /// The node's TLS identity.
    pub tls: TlsIdentity,
}

impl NodeConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let file: NodeFile = read_toml(path, "node")?;
        check_version(file.version, path)?;
        let listen = parse_listen(&file.listen, path, "listen")?;
        let advertise = check_advertise(file.advertise, path)?;
        let mut members = Vec::new();
        for (index, text) in file.committee.members.iter().enumerate() {
            members.push(parse_account(
                text,
                &format!("{}: committee.members[{index}]", path.display()),
            )?);
        }
        let committee = &file.committee;
        if committee.endpoints.len() != members.len() {
            bail!(
                "{}: committee.endpoints lists {} endpoints for {} committee.members; give each \
                 member's Compute URL, in the same order",
                path.display(),
                committee.endpoints.len(),
                members.len()
            );
        }
        for (index, endpoint) in committee.endpoints.iter().enumerate() {
            check_https(endpoint, path, &format!("committee.endpoints[{index}]"))?;
        }
        if committee.threshold < MIN_COMMITTEE_THRESHOLD
            || usize::from(committee.threshold) > members.len()
        {
            bail!(
                "{}: committee.threshold = {} must be at least {MIN_COMMITTEE_THRESHOLD} (so that \
                 no single member can decrypt) and at most the number of members ({})",
                path.display(),
                committee.threshold,
                members.len()
            );
        }
        if file.committee.member == 0 || usize::from(file.committee.member) > members.len() {
            bail!(
                "{}: committee.member = {} must be this node's position (1-based) in \
                 committee.members, which lists {} accounts",
                path.display(),
                file.committee.member,
                members.len()
            );
        }
        let listing = file.listing;
        if listing.id.is_empty() || listing.id.len() > MAX_LISTING_ID_LEN {
            bail!(
                "{}: listing.id must be 1 to {MAX_LISTING_ID_LEN} bytes",
                path.display()
            );
        }
        if listing.purposes.is_empty() {
            bail!(
                "{}: listing.purposes is empty; name at least one of academic_research, \
                 commercial_research, trial_feasibility, trial_recruitment",
                path.display()
            );
        }
        let mut purposes = BTreeSet::new();
        for (index, name) in listing.purposes.iter().enumerate() {
            purposes.insert(purpose(name, path, &format!("listing.purposes[{index}]"))?);
        }
        if listing.min_cohort_size == 0 {
            bail!(
                "{}: listing.min_cohort_size must be at least 1",
                path.display()
            );
        }
        let epsilon_budget_micro =
            epsilon_micro(listing.epsilon_budget, path, "listing.epsilon_budget")?;
        let max_epsilon_per_order_micro = match listing.max_epsilon_per_order {
            Some(cap) => epsilon_micro(cap, path, "listing.max_epsilon_per_order")?,
            None => DEFAULT_MAX_EPSILON_PER_ORDER_MICRO.min(epsilon_budget_micro),
        };
        if max_epsilon_per_order_micro > epsilon_budget_micro {
            bail!(
                "{}: listing.max_epsilon_per_order = {} exceeds listing.epsilon_budget = {}; \
                 one order cannot spend more than the whole budget",
                path.display(),
                max_epsilon_per_order_micro as f64 / 1e6,
                listing.epsilon_budget
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            key_file: resolve(path, &file.key_file),
            listen,
            advertise,
            market: resolve(path, &file.market),
            vault_dir: resolve(path, &file.vault_dir),
            member: file.committee.member,
            threshold: file.committee.threshold,
            members,
            endpoints: file.committee.endpoints.clone(),
            listing: ListingConfig {
                id: listing.id,
                price_per_query: listing.price_per_query,
                purposes,
                min_cohort_size: listing.min_cohort_size,
                epsilon_budget_micro,
                max_epsilon_per_order_micro,
                donation: listing.compensation == CompensationFile::Donation,
            },
            data: data_source(file.data, path)?,
            tls: tls_identity(file.tls, path)?,
        })
    }
}

/// `[data]` of `node.toml` at `path`, validated.
fn data_source(data: DataFile, path: &Path) -> anyhow::Result<DataSource> {
    let file = resolve(path, &data.file);
    if !file.exists() && file.extension().is_none() {
        bail!(
            "{}: data.file {} does not exist (give a directory of FHIR bundles, or a .csv, \
             .parquet, .json or .ndjson file)",
            path.display(),
            file.display()
        );
    }
    if compute_node::ingest::is_fhir_source(&file) {
        if data.manifest.is_some() {
            bail!(
                "{}: data.file {} holds FHIR bundles, which use the built-in FHIR schema; \
                 remove data.manifest",
                path.display(),
                file.display()
            );
        }
        let Some(text) = data.reference_date else {
            bail!(
                "{}: data.file {} holds FHIR bundles; add data.reference_date = \"YYYY-MM-DD\", \
                 the date patients' ages are computed at",
                path.display(),
                file.display()
            );
        };
        let reference_date =
            reference_date(&text, &format!("{}: data.reference_date", path.display()))?;
        return Ok(DataSource::Fhir {
            path: file,
            reference_date,
        });
    }
    if data.reference_date.is_some() {
        bail!(
            "{}: data.reference_date applies to FHIR bundles (.json, .ndjson or a directory); \
             {} is a table, whose ages come from its own column",
            path.display(),
            file.display()
        );
    }
    let Some(manifest) = data.manifest else {
        bail!(
            "{}: data.file {} is a table; add data.manifest, the schema manifest describing \
             its columns (docs/sql.md)",
            path.display(),
            file.display()
        );
    };
    Ok(DataSource::Table {
        file,
        manifest: resolve(path, &manifest),
    })
}

// ---------------------------------------------------------------------------------------------
// patient.toml and buyer.toml

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatientFile {
    version: u32,
    key_file: PathBuf,
    market: PathBuf,
    tls: Option<TlsFile>,
}

/// `patient.toml`, validated.
#[derive(Debug, Clone)]
pub struct PatientConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// The patient's key.
    pub key_file: PathBuf,
    /// The market's `public.toml`.
    pub market: PathBuf,
    /// The patient's TLS identity (the market requires a client certificate).
    pub tls: TlsIdentity,
}

impl PatientConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let file: PatientFile = read_toml(path, "patient")?;
        check_version(file.version, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            key_file: resolve(path, &file.key_file),
            market: resolve(path, &file.market),
            tls: tls_identity(file.tls, path)?,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BuyerFile {
    version: u32,
    key_file: PathBuf,
    market: PathBuf,
    epsilon_per_query: Option<f64>,
    tls: Option<TlsFile>,
}

/// `buyer.toml`, validated.
#[derive(Debug, Clone)]
pub struct BuyerConfig {
    /// The file it was read from.
    pub path: PathBuf,
    /// The buyer's key.
    pub key_file: PathBuf,
    /// The market's `public.toml`.
    pub market: PathBuf,
    /// ε each order asks for, in micro-ε.
    pub epsilon_micro: u64,
    /// The buyer's TLS identity (the market requires a client certificate).
    pub tls: TlsIdentity,
}

impl BuyerConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let file: BuyerFile = read_toml(path, "buyer")?;
        check_version(file.version, path)?;
        Ok(Self {
            path: path.to_path_buf(),
            key_file: resolve(path, &file.key_file),
            market: resolve(path, &file.market),
            epsilon_micro: epsilon_micro(
                file.epsilon_per_query.unwrap_or(1.0),
                path,
                "epsilon_per_query",
            )?,
            tls: tls_identity(file.tls, path)?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Makes `path` readable by its owner only, as `cohortex tls cert` writes keys.
    fn private(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    /// A `[tls]` section whose files (a fresh authority and a certificate) exist in `dir`.
    fn tls_section(dir: &Path) -> String {
        let authority = cohortex_proto::certs::Authority::generate().unwrap();
        let issued = authority.issue("party", &["127.0.0.1".into()]).unwrap();
        write(dir, "ca.crt", authority.certificate_pem());
        write(dir, "party.crt", &issued.certificate_pem);
        private(&write(dir, "party.key", &issued.key_pem));
        "\n[tls]\nca = \"ca.crt\"\ncert = \"party.crt\"\nkey = \"party.key\"\n".into()
    }

    #[test]
    fn config_without_tls_is_refused_with_instructions() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "patient.toml",
            "version = 1\nkey_file = \"p.key\"\nmarket = \"public.toml\"\n",
        );
        let error = format!("{:#}", PatientConfig::load(&path).unwrap_err());
        assert!(error.contains("patient.toml: [tls] is missing"), "{error}");
        assert!(error.contains("cohortex tls ca"), "{error}");
    }

    #[test]
    fn tls_key_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let section = tls_section(dir.path());
        std::fs::set_permissions(
            dir.path().join("party.key"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let path = write(
            dir.path(),
            "patient.toml",
            &format!("version = 1\nkey_file = \"p.key\"\nmarket = \"public.toml\"\n{section}"),
        );
        let error = format!("{:#}", PatientConfig::load(&path).unwrap_err());
        assert!(error.contains("patient.toml: tls.key"), "{error}");
        assert!(error.contains("chmod 600"), "{error}");
    }

    #[test]
    fn tls_key_that_is_not_pem_is_refused_with_its_field() {
        let dir = tempfile::tempdir().unwrap();
        let section = tls_section(dir.path());
        private(&write(dir.path(), "party.key", "not a key"));
        let path = write(
            dir.path(),
            "patient.toml",
            &format!("version = 1\nkey_file = \"p.key\"\nmarket = \"public.toml\"\n{section}"),
        );
        let error = format!("{:#}", PatientConfig::load(&path).unwrap_err());
        assert!(error.contains("patient.toml: tls.key"), "{error}");
        assert!(error.contains("not a PEM private key"), "{error}");
    }

    #[test]
    fn per_order_cap_above_the_budget_is_refused_in_the_node_config() {
        let dir = tempfile::tempdir().unwrap();
        let members = two_members(dir.path());
        let endpoints = ["https://127.0.0.1:7701", "https://127.0.0.1:7702"];
        let tls = tls_section(dir.path());
        let base = node_toml(2, &members, &endpoints);
        // The budget is 10; a cap of 11 would let one order spend more than everything.
        let over = base.replace(
            "epsilon_budget = 10.0\n",
            "epsilon_budget = 10.0\nmax_epsilon_per_order = 11.0\n",
        );
        let path = write(dir.path(), "node.toml", &(over + &tls));
        let error = format!("{:#}", NodeConfig::load(&path).unwrap_err());
        assert!(
            error.contains("listing.max_epsilon_per_order = 11"),
            "{error}"
        );
        // Without the field, the cap is the default 1, and never above the budget.
        let path = write(dir.path(), "node.toml", &(base.clone() + &tls));
        let config = NodeConfig::load(&path).unwrap();
        assert_eq!(config.listing.max_epsilon_per_order_micro, 1_000_000);
        let small = base.replace("epsilon_budget = 10.0\n", "epsilon_budget = 0.5\n");
        let path = write(dir.path(), "node.toml", &(small + &tls));
        let config = NodeConfig::load(&path).unwrap();
        assert_eq!(config.listing.max_epsilon_per_order_micro, 500_000);
    }

    #[test]
    fn fhir_data_needs_a_reference_date_and_no_manifest_in_the_node_config() {
        let dir = tempfile::tempdir().unwrap();
        let members = two_members(dir.path());
        let endpoints = ["https://127.0.0.1:7701", "https://127.0.0.1:7702"];
        let tls = tls_section(dir.path());
        let base = node_toml(2, &members, &endpoints);
        let table = "[data]\nfile = \"d.csv\"\nmanifest = \"m.toml\"\n";
        let with_data = |data: &str| base.replace(table, data) + &tls;

        let path = write(
            dir.path(),
            "node.toml",
            &with_data("[data]\nfile = \"bundles.ndjson\"\n"),
        );
        let error = format!("{:#}", NodeConfig::load(&path).unwrap_err());
        assert!(error.contains("data.reference_date"), "{error}");

        let path = write(
            dir.path(),
            "node.toml",
            &with_data("[data]\nfile = \"bundles.ndjson\"\nreference_date = \"2026-13-01\"\n"),
        );
        let error = format!("{:#}", NodeConfig::load(&path).unwrap_err());
        assert!(error.contains("YYYY-MM-DD"), "{error}");

        let path = write(
            dir.path(),
            "node.toml",
            &with_data(
                "[data]\nfile = \"bundles.ndjson\"\nmanifest = \"m.toml\"\nreference_date = \"2026-01-01\"\n",
            ),
        );
        let error = format!("{:#}", NodeConfig::load(&path).unwrap_err());
        assert!(error.contains("remove data.manifest"), "{error}");

        let path = write(
            dir.path(),
            "node.toml",
            &with_data("[data]\nfile = \"bundles.ndjson\"\nreference_date = \"2026-01-01\"\n"),
        );
        let config = NodeConfig::load(&path).unwrap();
        assert!(
            matches!(&config.data, DataSource::Fhir { path, .. } if path.ends_with("bundles.ndjson")),
            "{:?}",
            config.data
        );

        let path = write(
            dir.path(),
            "node.toml",
            &with_data("[data]\nfile = \"d.csv\"\n"),
        );
        let error = format!("{:#}", NodeConfig::load(&path).unwrap_err());
        assert!(error.contains("add data.manifest"), "{error}");
    }

    #[test]
    fn plaintext_committee_endpoint_is_refused_in_the_node_config() {
        let dir = tempfile::tempdir().unwrap();
        let members = two_members(dir.path());
        let endpoints = ["https://127.0.0.1:7701", "http://127.0.0.1:7702"];
        let text = node_toml(2, &members, &endpoints) + &tls_section(dir.path());
        let path = write(dir.path(), "node.toml", &text);
        let error = format!("{:#}", NodeConfig::load(&path).unwrap_err());
        assert!(error.contains("committee.endpoints[1]"), "{error}");
        assert!(error.contains("https://"), "{error}");
    }

    #[test]
    fn a_misspelt_field_is_refused_with_its_name_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "buyer.toml",
            "version = 1\nkey_file = \"b.key\"\nmarket = \"p.toml\"\nepsilon = 2.0\n",
        );
        let error = format!("{:#}", BuyerConfig::load(&path).unwrap_err());
        assert!(error.contains("buyer.toml"), "{error}");
        assert!(error.contains("epsilon"), "{error}");
    }

    #[test]
    fn relative_paths_are_relative_to_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            "patient.toml",
            &format!(
                "version = 1\nkey_file = \"keys/p.key\"\nmarket = \"/abs/public.toml\"\n{}",
                tls_section(dir.path())
            ),
        );
        let config = PatientConfig::load(&path).unwrap();
        assert_eq!(config.key_file, dir.path().join("keys/p.key"));
        assert_eq!(config.market, PathBuf::from("/abs/public.toml"));
    }

    #[test]
    fn a_threshold_above_the_committee_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let member = cohortex_client::keys::generate(&dir.path().join("n.key")).unwrap();
        let path = write(
            dir.path(),
            "market.toml",
            &format!(
                "version = 1\nstate_dir = \"s\"\nlisten = \"127.0.0.1:0\"\n\
                 [committee]\nthreshold = 2\nmembers = [\"{member}\"]\n"
            ),
        );
        let error = format!("{:#}", MarketConfig::load(&path).unwrap_err());
        assert!(error.contains("committee.threshold"), "{error}");
    }

    #[test]
    fn threshold_one_is_refused_in_the_market_config() {
        let dir = tempfile::tempdir().unwrap();
        let first = cohortex_client::keys::generate(&dir.path().join("n1.key")).unwrap();
        let second = cohortex_client::keys::generate(&dir.path().join("n2.key")).unwrap();
        let path = write(
            dir.path(),
            "market.toml",
            &format!(
                "version = 1\nstate_dir = \"s\"\nlisten = \"127.0.0.1:0\"\n\
                 [committee]\nthreshold = 1\nmembers = [\"{first}\", \"{second}\"]\n"
            ),
        );
        let error = format!("{:#}", MarketConfig::load(&path).unwrap_err());
        assert!(error.contains("committee.threshold = 1"), "{error}");
        assert!(error.contains("at least 2"), "{error}");
    }

    /// Two fresh member accounts, their keys in `dir`.
    fn two_members(dir: &Path) -> Vec<String> {
        ["n1.key", "n2.key"]
            .iter()
            .map(|name| {
                cohortex_client::keys::generate(&dir.join(name))
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    fn node_toml(threshold: u16, members: &[String], endpoints: &[&str]) -> String {
        let quoted = |items: Vec<String>| items.join(", ");
        format!(
            "version = 1\nkey_file = \"n1.key\"\nlisten = \"127.0.0.1:0\"\n\
             market = \"public.toml\"\nvault_dir = \"vault\"\n\n\
             [committee]\nmember = 1\nthreshold = {threshold}\nmembers = [{}]\nendpoints = [{}]\n\n\
             [listing]\nid = \"site\"\nprice_per_query = 1\npurposes = [\"academic_research\"]\n\
             min_cohort_size = 1\nepsilon_budget = 10.0\ncompensation = \"payment\"\n\n\
             [data]\nfile = \"d.csv\"\nmanifest = \"m.toml\"\n",
            quoted(members.iter().map(|m| format!("\"{m}\"")).collect()),
            quoted(endpoints.iter().map(|e| format!("\"{e}\"")).collect()),
        )
    }

    #[test]
    fn threshold_one_is_refused_in_the_node_config() {
        let dir = tempfile::tempdir().unwrap();
        let members = two_members(dir.path());
        let endpoints = ["https://127.0.0.1:7701", "https://127.0.0.1:7702"];
        let tls = tls_section(dir.path());
        let path = write(
            dir.path(),
            "node.toml",
            &(node_toml(1, &members, &endpoints) + &tls),
        );
        let error = format!("{:#}", NodeConfig::load(&path).unwrap_err());
        assert!(error.contains("node.toml"), "{error}");
        assert!(error.contains("committee.threshold = 1"), "{error}");
        let path = write(
            dir.path(),
            "node.toml",
            &(node_toml(2, &members, &endpoints) + &tls),
        );
        NodeConfig::load(&path).unwrap();
    }

    #[test]
    fn node_config_without_an_endpoint_per_member_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let members = two_members(dir.path());
        let path = write(
            dir.path(),
            "node.toml",
            &node_toml(2, &members, &["https://127.0.0.1:7701"]),
        );
        let error = format!("{:#}", NodeConfig::load(&path).unwrap_err());
        assert!(error.contains("committee.endpoints"), "{error}");
    }
}
