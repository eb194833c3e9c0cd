//! `import cohortex`: the buyer's and the patient's clients for Python notebooks (issue 14).
//!
//! Everything that touches a key or a ciphertext runs in Rust, as in the CLI: signing orders
//! and consents, decrypting the release with the buyer's result key, checking the receipt's
//! inclusion proof against the pinned ledger key. Python gets the released aggregates as a
//! `pyarrow.Table` (see `client/src/arrow_release.rs` for its schema and metadata) or a
//! `polars.DataFrame`.
//!
//! ```python
//! import cohortex
//! market = cohortex.Market.from_public("state/market/public.toml", key="keys/buyer.key",
//!                                      ca="tls/ca.crt", cert="tls/buyer.crt",
//!                                      tls_key="tls/buyer.key")
//! table = market.query("SELECT sex, AVG(sbp) FROM patients GROUP BY sex",
//!                      purpose="academic_research", epsilon=1.0)
//! ```
//!
//! Every call blocks until the market answers, with the GIL released. Errors are
//! `cohortex.CohortexError` (what the market or a node refused, or a receipt that does not
//! verify) or `ValueError` (bad arguments, named).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use cohortex_client::arrow_release::{to_ipc_stream, Provenance};
use cohortex_client::keys;
use cohortex_client::link::{connect, next_nonce};
use cohortex_client::patient::epsilon_limit_micro;
use cohortex_client::{Buyer, ConsentGrant, MarketPublic};
use cohortex_proto::tls::TlsIdentity;
use cohortex_proto::v1::market_client::MarketClient;
use cohortex_proto::v1::{ListListingsRequest, ListTrialsRequest};
use cohortex_types::rpc::{purpose_field, MAX_MESSAGE_BYTES};
use ed25519_dalek::{SigningKey, VerifyingKey};
use market::{AccountId, Hash32, ListingId, TxId};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};
use zk::{BsgsConfig, DecryptionTable};

create_exception!(
    cohortex,
    CohortexError,
    PyException,
    "The market, a node or the ledger refused, or a receipt did not verify."
);

fn refused(error: anyhow::Error) -> PyErr {
    CohortexError::new_err(format!("{error:#}"))
}

fn bad(message: String) -> PyErr {
    PyValueError::new_err(message)
}

/// One runtime for every client of the process.
fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|error| error.to_string())
        })
        .as_ref()
        .map_err(|error| CohortexError::new_err(format!("starting the client runtime: {error}")))
}

/// Runs `future` on the runtime with the GIL released.
fn block<T: Send>(
    py: Python<'_>,
    future: impl std::future::Future<Output = anyhow::Result<T>> + Send,
) -> PyResult<T> {
    let runtime = runtime()?;
    py.detach(|| runtime.block_on(future)).map_err(refused)
}

/// Reads an account key file (`cohortex keygen`'s format), readable by its owner only.
fn read_key(path: &Path, field: &str) -> PyResult<SigningKey> {
    keys::read(path, field).map_err(|error| bad(format!("{error:#}")))
}

fn hex32(text: &str, field: &str) -> PyResult<[u8; 32]> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes)
        .map_err(|_| bad(format!("{field}: must be 64 hex digits")))?;
    Ok(bytes)
}

/// The market's `public.toml` (written by `cohortex market serve`), read by the same strict
/// parser as the CLI's.
fn read_public(path: &Path) -> PyResult<MarketPublic> {
    MarketPublic::load(path, "public").map_err(|error| bad(format!("{error:#}")))
}

/// A connection's parameters, shared by the buyer's and the patient's clients.
#[derive(Clone)]
struct Link {
    endpoint: String,
    tls: TlsIdentity,
    chain_id: Hash32,
}

impl Link {
    fn new(
        py: Python<'_>,
        endpoint: String,
        (ca, cert, tls_key): (PathBuf, PathBuf, PathBuf),
        chain_id: Option<Hash32>,
    ) -> PyResult<Self> {
        let tls = TlsIdentity::load(&ca, &cert, &tls_key, "tls")
            .map_err(|error| bad(format!("{error}")))?;
        let chain_id = match chain_id {
            Some(chain_id) => chain_id,
            None => {
                let (endpoint, tls) = (endpoint.clone(), tls.clone());
                block(py, async move {
                    let answer = MarketClient::new(connect(&endpoint, Some(&tls)).await?)
                        .list_trials(ListTrialsRequest {})
                        .await
                        .map_err(|status| {
                            anyhow::anyhow!(
                                "asking the market for its chain id: {}",
                                status.message()
                            )
                        })?
                        .into_inner();
                    let bytes: [u8; 32] =
                        answer.chain_id.as_slice().try_into().map_err(|_| {
                            anyhow::anyhow!("the market's chain id is not 32 bytes")
                        })?;
                    Ok(Hash32(bytes))
                })?
            }
        };
        Ok(Self {
            endpoint,
            tls,
            chain_id,
        })
    }
}

impl Link {
    /// The active listings allowing `purpose` (every one when empty).
    async fn listings(&self, purpose: &str) -> anyhow::Result<Vec<cohortex_proto::v1::Listing>> {
        Ok(
            MarketClient::new(connect(&self.endpoint, Some(&self.tls)).await?)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .list_listings(ListListingsRequest {
                    purpose: purpose.to_string(),
                })
                .await
                .map_err(|status| {
                    anyhow::anyhow!("listing the market's listings: {}", status.message())
                })?
                .into_inner()
                .listings,
        )
    }
}

/// A buyer's client: listings, federated queries and receipts.
#[pyclass(module = "cohortex")]
struct Market {
    link: Link,
    key: SigningKey,
    ledger_key: VerifyingKey,
    table: OnceLock<Arc<DecryptionTable>>,
}

impl Market {
    fn decryption_table(&self, py: Python<'_>) -> PyResult<Arc<DecryptionTable>> {
        if let Some(table) = self.table.get() {
            return Ok(Arc::clone(table));
        }
        let dir = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(".cache/cohortex");
        let table = py
            .detach(|| DecryptionTable::load_or_build(&dir, BsgsConfig::default()))
            .map_err(|error| {
                CohortexError::new_err(format!("building the decryption table: {error}"))
            })?;
        Ok(Arc::clone(self.table.get_or_init(|| Arc::new(table))))
    }

    async fn buyer(link: &Link, key: &SigningKey) -> anyhow::Result<Buyer> {
        let nonce = next_nonce(&link.endpoint, Some(&link.tls), key)
            .await?
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "buyer {} is not registered; call Market.register() first",
                    AccountId::of(key)
                )
            })?;
        Ok(
            Buyer::new(key.clone(), link.chain_id, link.endpoint.clone(), nonce)
                .with_tls(Some(link.tls.clone())),
        )
    }
}

#[pymethods]
impl Market {
    /// A client of the market at `endpoint` (`https://host:port`) for the buyer whose key is
    /// in `key`, over mutual TLS (`ca`, `cert`, `tls_key`), checking receipts against the
    /// ledger key `ledger_key` (hex, pinned: never taken from the market).
    #[new]
    #[pyo3(signature = (endpoint, key, *, ca, cert, tls_key, ledger_key, chain_id=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        endpoint: String,
        key: PathBuf,
        ca: PathBuf,
        cert: PathBuf,
        tls_key: PathBuf,
        ledger_key: &str,
        chain_id: Option<&str>,
    ) -> PyResult<Self> {
        let ledger_key = VerifyingKey::from_bytes(&hex32(ledger_key, "ledger_key")?)
            .map_err(|_| bad("ledger_key: not an Ed25519 public key".into()))?;
        let chain_id = chain_id
            .map(|text| hex32(text, "chain_id").map(Hash32))
            .transpose()?;
        let key = read_key(&key, "key")?;
        let link = Link::new(py, endpoint, (ca, cert, tls_key), chain_id)?;
        Ok(Self {
            link,
            key,
            ledger_key,
            table: OnceLock::new(),
        })
    }

    /// A client configured from the market's `public.toml` (endpoint, chain id, ledger key).
    #[staticmethod]
    #[pyo3(signature = (public, key, *, ca, cert, tls_key))]
    fn from_public(
        py: Python<'_>,
        public: PathBuf,
        key: PathBuf,
        ca: PathBuf,
        cert: PathBuf,
        tls_key: PathBuf,
    ) -> PyResult<Self> {
        let public = read_public(&public)?;
        let key = read_key(&key, "key")?;
        let link = Link::new(
            py,
            public.endpoint,
            (ca, cert, tls_key),
            Some(public.chain_id),
        )?;
        Ok(Self {
            link,
            key,
            ledger_key: public.ledger_key,
            table: OnceLock::new(),
        })
    }

    /// The buyer's account id (hex).
    #[getter]
    fn account(&self) -> String {
        AccountId::of(&self.key).to_string()
    }

    /// Registers the key's account as a buyer on the ledger.
    fn register(&self, py: Python<'_>) -> PyResult<()> {
        let (link, key) = (self.link.clone(), self.key.clone());
        block(py, async move {
            Buyer::new(key, link.chain_id, link.endpoint.clone(), 0)
                .with_tls(Some(link.tls.clone()))
                .register()
                .await
        })
    }

    /// The active listings (optionally only those allowing `purpose`), as dicts.
    #[pyo3(signature = (purpose=None))]
    fn listings<'py>(
        &self,
        py: Python<'py>,
        purpose: Option<String>,
    ) -> PyResult<Bound<'py, PyList>> {
        let link = self.link.clone();
        let found = block(py, async move {
            link.listings(&purpose.unwrap_or_default()).await
        })?;
        let list = PyList::empty(py);
        for listing in found {
            let dict = PyDict::new(py);
            dict.set_item("id", &listing.id)?;
            dict.set_item("owner", hex::encode(&listing.owner))?;
            dict.set_item("price_per_query", listing.price_per_query)?;
            dict.set_item("allowed_purposes", listing.allowed_purposes.clone())?;
            dict.set_item("min_cohort_size", listing.min_cohort_size)?;
            dict.set_item("manifest", &listing.manifest)?;
            list.append(dict)?;
        }
        Ok(list)
    }

    /// Orders `sql` over `listings` (default: every listing allowing `purpose`) at `epsilon`,
    /// waits, decrypts the release and verifies its receipt: a `pyarrow.Table` with the
    /// columns' types and units, and the receipt, in its metadata. A `LOGISTIC` model is
    /// fitted by `steps` Newton steps, each its own order at `epsilon`/`steps` (the table is
    /// the last step's). Raises `CohortexError` if an order fails or a receipt does not verify.
    #[pyo3(signature = (sql, purpose="academic_research", epsilon=1.0, listings=None, steps=6))]
    fn query<'py>(
        &self,
        py: Python<'py>,
        sql: String,
        purpose: &str,
        epsilon: f64,
        listings: Option<Vec<String>>,
        steps: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let bytes = self.query_ipc(py, sql, purpose, epsilon, listings, steps)?;
        let pyarrow = py.import("pyarrow")?;
        let buffer = PyBytes::new(py, &bytes);
        let reader = pyarrow
            .getattr("ipc")?
            .call_method1("open_stream", (buffer,))?;
        reader.call_method0("read_all")
    }

    /// [`Market::query`] as a `polars.DataFrame`.
    #[pyo3(signature = (sql, purpose="academic_research", epsilon=1.0, listings=None, steps=6))]
    fn query_polars<'py>(
        &self,
        py: Python<'py>,
        sql: String,
        purpose: &str,
        epsilon: f64,
        listings: Option<Vec<String>>,
        steps: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let table = self.query(py, sql, purpose, epsilon, listings, steps)?;
        py.import("polars")?.call_method1("from_arrow", (table,))
    }

    /// The release of [`Market::query`] as the bytes of an Arrow IPC stream.
    #[pyo3(signature = (sql, purpose="academic_research", epsilon=1.0, listings=None, steps=6))]
    fn query_ipc(
        &self,
        py: Python<'_>,
        sql: String,
        purpose: &str,
        epsilon: f64,
        listings: Option<Vec<String>>,
        steps: usize,
    ) -> PyResult<Vec<u8>> {
        let purpose_value = purpose_field(purpose, "purpose")
            .map_err(|status| bad(status.message().to_string()))?;
        if !(epsilon.is_finite() && epsilon > 0.0) {
            return Err(bad(format!(
                "epsilon: must be a positive number, not {epsilon}"
            )));
        }
        let epsilon_micro = (epsilon * 1e6).round() as u64;
        let table = self.decryption_table(py)?;
        let (link, key, ledger_key) = (self.link.clone(), self.key.clone(), self.ledger_key);
        let purpose = purpose.to_string();
        block(py, async move {
            let offered = link.listings(&purpose).await?;
            let chosen = match listings {
                Some(chosen) => chosen,
                None => offered.iter().map(|listing| listing.id.clone()).collect(),
            };
            let first = chosen
                .first()
                .and_then(|id| offered.iter().find(|listing| &listing.id == id))
                .ok_or_else(|| anyhow::anyhow!("no active listing to query allows {purpose}"))?;
            let schema = cohortex_query::Schema::from_toml(&first.manifest, &first.id)
                .map_err(|error| anyhow::anyhow!("listing {}: manifest: {error}", first.id))?;
            let plan = cohortex_query::compile(&sql, &schema)
                .map_err(|error| anyhow::anyhow!("sql: {error}"))?;
            let buyer = Self::buyer(&link, &key).await?;
            let release = buyer
                .fit(
                    &sql,
                    &chosen,
                    purpose_value,
                    epsilon_micro,
                    steps,
                    &table,
                    &ledger_key,
                    |_, _| {},
                )
                .await?
                .pop()
                .ok_or_else(|| anyhow::anyhow!("no release came back"))?;
            if !release.receipt_verified {
                anyhow::bail!(
                    "the receipt's inclusion proof did not verify against the ledger key"
                );
            }
            let provenance = Provenance {
                query: sql.clone(),
                purpose: purpose.clone(),
                epsilon: release.status.epsilon_micro as f64 / 1e6,
                receipt: Some(hex::encode(release.receipt.0.as_bytes())),
                receipt_verified: release.receipt_verified,
                listings: chosen,
            };
            to_ipc_stream(&release.answer, &plan, &schema, &provenance)
                .map_err(|error| anyhow::anyhow!("encoding the release as Arrow: {error}"))
        })
    }

    /// Checks again that the receipt `receipt` (hex id) is included in the ledger under a
    /// tree head signed by the pinned ledger key.
    fn verify_receipt(&self, py: Python<'_>, receipt: &str) -> PyResult<bool> {
        let id = TxId(Hash32(hex32(receipt, "receipt")?));
        let (link, key, ledger_key) = (self.link.clone(), self.key.clone(), self.ledger_key);
        block(py, async move {
            let buyer = Buyer::new(key, link.chain_id, link.endpoint.clone(), 0)
                .with_tls(Some(link.tls.clone()));
            buyer.verify_receipt(id, &ledger_key).await
        })
    }
}

/// A patient's client: registering, consents and earnings (`cohortex_client::Patient`).
#[pyclass(module = "cohortex")]
struct Patient {
    client: cohortex_client::Patient,
}

#[pymethods]
impl Patient {
    /// A client of the market at `endpoint` for the patient whose key is in `key`, over
    /// mutual TLS. `fund` (hex) is where donations go (`from_public` reads it).
    #[new]
    #[pyo3(signature = (endpoint, key, *, ca, cert, tls_key, chain_id=None, fund=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        endpoint: String,
        key: PathBuf,
        ca: PathBuf,
        cert: PathBuf,
        tls_key: PathBuf,
        chain_id: Option<&str>,
        fund: Option<&str>,
    ) -> PyResult<Self> {
        let key = read_key(&key, "key")?;
        let fund = fund
            .map(|text| hex32(text, "fund").map(AccountId))
            .transpose()?;
        let chain_id = chain_id
            .map(|text| hex32(text, "chain_id").map(Hash32))
            .transpose()?;
        let link = Link::new(py, endpoint, (ca, cert, tls_key), chain_id)?;
        Ok(Self {
            client: cohortex_client::Patient::new(
                key,
                link.endpoint,
                link.tls,
                link.chain_id,
                fund,
            ),
        })
    }

    /// A client configured from the market's `public.toml`.
    #[staticmethod]
    #[pyo3(signature = (public, key, *, ca, cert, tls_key))]
    fn from_public(
        public: PathBuf,
        key: PathBuf,
        ca: PathBuf,
        cert: PathBuf,
        tls_key: PathBuf,
    ) -> PyResult<Self> {
        let public = read_public(&public)?;
        let tls = TlsIdentity::load(&ca, &cert, &tls_key, "tls")
            .map_err(|error| bad(format!("{error}")))?;
        Ok(Self {
            client: cohortex_client::Patient::of_market(read_key(&key, "key")?, &public, tls),
        })
    }

    /// The patient's account id (hex).
    #[getter]
    fn account(&self) -> String {
        self.client.account().to_string()
    }

    /// Registers the key's account as a patient; returns the ledger height.
    fn register(&self, py: Python<'_>) -> PyResult<u64> {
        let client = self.client.clone();
        block(py, async move { client.register().await })
    }

    /// Consents to `listing`'s use of the record for `purpose`; returns the ledger height.
    #[pyo3(signature = (listing, purpose, *, donate=false, expires_in_days=None, epsilon_limit=None))]
    fn consent(
        &self,
        py: Python<'_>,
        listing: String,
        purpose: &str,
        donate: bool,
        expires_in_days: Option<u64>,
        epsilon_limit: Option<f64>,
    ) -> PyResult<u64> {
        if let Some(limit) = epsilon_limit {
            epsilon_limit_micro(limit).map_err(|error| bad(format!("{error:#}")))?;
        }
        if donate && self.client.fund().is_none() {
            return Err(bad(
                "donate: this client knows no fund; pass fund= or use Patient.from_public".into(),
            ));
        }
        let grant = ConsentGrant {
            listing: ListingId::new(listing),
            purpose: purpose_field(purpose, "purpose")
                .map_err(|status| bad(status.message().to_string()))?,
            donate,
            expires_in_days,
            epsilon_limit,
        };
        let client = self.client.clone();
        block(py, async move { client.grant(&grant).await })
    }

    /// Revokes a consent; returns the ledger height.
    fn revoke(&self, py: Python<'_>, listing: String, purpose: &str) -> PyResult<u64> {
        let purpose = purpose_field(purpose, "purpose")
            .map_err(|status| bad(status.message().to_string()))?;
        let client = self.client.clone();
        block(py, async move {
            client.revoke(&ListingId::new(listing), purpose).await
        })
    }

    /// The patient's consents, as dicts (listing, purpose, active, epsilon spent and limit).
    fn consents<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let client = self.client.clone();
        let response = block(py, async move { client.consents().await })?;
        let list = PyList::empty(py);
        for consent in response.consents {
            let dict = PyDict::new(py);
            dict.set_item("listing", &consent.listing)?;
            dict.set_item("purpose", &consent.purpose)?;
            dict.set_item("active", consent.active)?;
            dict.set_item("donated", !consent.donate_to.is_empty())?;
            dict.set_item("epsilon_spent", consent.epsilon_spent_micro as f64 / 1e6)?;
            dict.set_item(
                "epsilon_limit",
                consent.epsilon_limit_micro.map(|limit| limit as f64 / 1e6),
            )?;
            list.append(dict)?;
        }
        Ok(list)
    }

    /// The patient's balance, and what they were paid and donated, in credits.
    fn earnings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let client = self.client.clone();
        let earnings = block(py, async move { client.earnings().await })?;
        let dict = PyDict::new(py);
        dict.set_item("balance", earnings.balance)?;
        dict.set_item("paid", earnings.paid)?;
        dict.set_item("donated", earnings.donated)?;
        Ok(dict)
    }
}

/// The `cohortex` Python module.
#[pymodule]
fn cohortex(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Market>()?;
    m.add_class::<Patient>()?;
    m.add("CohortexError", m.py().get_type::<CohortexError>())?;
    Ok(())
}
