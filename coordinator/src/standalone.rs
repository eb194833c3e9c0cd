//! The pieces of the in-process cluster (`cohortex-cluster`) that separate processes need: the market process opens
//! (or creates) its ledger and admits the operator's accounts; once every admitted committee
//! member has published its listing, it runs the key ceremony; a node publishes its listing
//! over gRPC.
//!
//! `cohortex market serve` and `cohortex node serve` are built on these; the clients'
//! pieces (channels, nonces) are in `cohortex-client`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use backon::BackoffBuilder as _;
use cohortex_client::link::next_nonce_on;
use cohortex_proto::tls::{endpoint as link, TlsIdentity};
use cohortex_proto::v1::market_client::MarketClient;
use cohortex_proto::v1::{PublishListingRequest, SignedTransaction, TransactionResult};
use ed25519_dalek::SigningKey;
use market::server::{read_ledger, SharedLedger};
use market::tx::sign_action;
use market::{
    AccountId, Action, Genesis, Hash32, InProcessSequencer, Ledger, ListingId, ListingTerms, Role,
};
use tonic::Code;
use zk::{MemberIndex, Wire};

use crate::coordinator::{manifest_hash, Coordinator};

/// Opens the ledger at `path`, or creates it with `issuer` as its genesis issuer when the file
/// does not exist yet. Returns the ledger and whether it was created.
pub fn open_or_create_ledger(
    path: &Path,
    name: &str,
    ledger_key: &SigningKey,
    issuer: AccountId,
) -> anyhow::Result<(Ledger, bool)> {
    let sequencer = InProcessSequencer::new(ledger_key.clone());
    if path.exists() {
        let ledger = Ledger::open(path, sequencer)
            .with_context(|| format!("opening the ledger {}", path.display()))?;
        return Ok((ledger, false));
    }
    let genesis = Genesis {
        name: name.to_string(),
        ledger_key: ledger_key.verifying_key().to_bytes(),
        accounts: vec![(issuer, Role::Issuer)],
    };
    let ledger = Ledger::create(path, genesis, sequencer)
        .with_context(|| format!("creating the ledger {}", path.display()))?;
    Ok((ledger, true))
}

/// Has `issuer` admit every account of `accounts` the ledger does not know yet, in one block.
/// Returns the accounts admitted now. An account already registered with another role is an
/// error naming it.
pub async fn admit_accounts(
    ledger: &SharedLedger,
    issuer: &SigningKey,
    accounts: &[(AccountId, Role)],
) -> anyhow::Result<Vec<(AccountId, Role)>> {
    let issuer_account = AccountId::of(issuer);
    let wanted = accounts.to_vec();
    let (chain_id, mut nonce, missing) = read_ledger(ledger, move |ledger| {
        let state = ledger.state();
        let mut missing = Vec::new();
        for (account, role) in wanted {
            match state.account(&account) {
                None => missing.push((account, role)),
                Some(existing) if existing.role == role => {}
                Some(existing) => {
                    return Err(tonic::Status::failed_precondition(format!(
                        "account {account} is registered as {:?}, not {role:?}",
                        existing.role
                    )))
                }
            }
        }
        let nonce = state
            .account(&issuer_account)
            .map_or(0, |account| account.next_nonce);
        Ok((ledger.chain_id(), nonce, missing))
    })
    .await
    .map_err(|status| anyhow!("{}", status.message()))?;
    if missing.is_empty() {
        return Ok(missing);
    }
    let mut txs = Vec::with_capacity(missing.len());
    for (account, role) in &missing {
        txs.push(sign_action(
            issuer,
            chain_id,
            nonce,
            Action::RegisterAccount {
                account: *account,
                role: *role,
            },
        )?);
        nonce += 1;
    }
    let ledger = Arc::clone(ledger);
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut ledger = ledger.lock().map_err(|_| anyhow!("ledger lock poisoned"))?;
        let outcome = ledger.append(txs).context("appending admissions")?;
        if let Some(refusal) = outcome.refused.first() {
            bail!("admission {} refused: {}", refusal.index, refusal.error);
        }
        Ok(())
    })
    .await
    .context("admission task")??;
    Ok(missing)
}

/// Has `issuer` register the key committee (`members` in member order, `threshold`) on the
/// ledger if none is registered yet. Returns whether it did. A ledger that already holds
/// another committee is an error naming both: the members pin theirs, and would refuse it.
pub async fn register_committee(
    ledger: &SharedLedger,
    issuer: &SigningKey,
    members: &[AccountId],
    threshold: u16,
) -> anyhow::Result<bool> {
    let issuer_account = AccountId::of(issuer);
    let (chain_id, nonce, registered) = read_ledger(ledger, move |ledger| {
        let state = ledger.state();
        let nonce = state
            .account(&issuer_account)
            .map_or(0, |account| account.next_nonce);
        Ok((ledger.chain_id(), nonce, state.committee().cloned()))
    })
    .await
    .map_err(|status| anyhow!("{}", status.message()))?;
    if let Some(registered) = registered {
        if registered.threshold != threshold || registered.members != members {
            bail!(
                "the ledger's key committee is {} of {} members, registered when it was created; \
                 the configuration names {threshold} of {}: a ledger keeps its committee, so \
                 start a new ledger to change it",
                registered.threshold,
                registered.members.len(),
                members.len()
            );
        }
        return Ok(false);
    }
    let tx = sign_action(
        issuer,
        chain_id,
        nonce,
        Action::RegisterCommittee {
            threshold,
            members: members.to_vec(),
        },
    )?;
    let ledger = Arc::clone(ledger);
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut ledger = ledger.lock().map_err(|_| anyhow!("ledger lock poisoned"))?;
        let outcome = ledger.append(vec![tx]).context("appending the committee")?;
        if let Some(refusal) = outcome.refused.first() {
            bail!("the committee registration was refused: {}", refusal.error);
        }
        Ok(())
    })
    .await
    .context("committee registration task")??;
    Ok(true)
}

/// Where the market's committee stands, for logs and status output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitteeProgress {
    /// Members that have published a listing so far, of the committee's size.
    Waiting {
        /// Members with a known endpoint.
        published: usize,
        /// Committee size.
        size: usize,
    },
    /// The ceremony ran; the collective key is known.
    Formed,
}

/// Forms the key committee as soon as every member of `members` (in member order: the first
/// is member 1) has published a listing through the Market service, and again whenever a
/// member announces a new endpoint (a restarted node lost its key share). Runs until the
/// process ends; a failed ceremony is logged and retried.
pub async fn form_committee_when_published(
    coordinator: Arc<Coordinator>,
    members: Vec<AccountId>,
    threshold: u16,
    progress: Arc<Mutex<CommitteeProgress>>,
) {
    let size = members.len();
    // A committee an earlier run formed (kept in the coordinator's state file) still holds:
    // its members kept their key shares while the market was down.
    let mut formed_with: Option<Vec<(MemberIndex, String)>> = coordinator
        .committee()
        .ok()
        .flatten()
        .map(|committee| committee.members);
    if formed_with.is_some() {
        if let Ok(mut slot) = progress.lock() {
            *slot = CommitteeProgress::Formed;
        }
    }
    let mut last_published = usize::MAX;
    // A failed ceremony is tried again after a pause that grows (2 s, 4 s, … up to a minute)
    // while it keeps failing, and starts again from 2 s once one succeeds.
    let retry_pauses = || {
        backon::ExponentialBuilder::new()
            .with_min_delay(Duration::from_secs(2))
            .with_max_delay(Duration::from_secs(60))
            .without_max_times()
            .build()
    };
    let mut pauses = retry_pauses();
    loop {
        match member_endpoints(&coordinator, &members).await {
            Ok(endpoints) => {
                let published = endpoints.len();
                if published != last_published && formed_with.is_none() {
                    tracing::info!(
                        published,
                        size,
                        "committee members with a published listing"
                    );
                    last_published = published;
                }
                if published == size && formed_with.as_ref() != Some(&endpoints) {
                    tracing::info!(threshold, size, "running the committee's key ceremony");
                    match coordinator
                        .run_key_ceremony(endpoints.clone(), threshold)
                        .await
                    {
                        Ok(public) => {
                            tracing::info!(
                                threshold,
                                size,
                                collective_key = %hex::encode(public.collective_key().to_bytes()),
                                "key committee formed"
                            );
                            formed_with = Some(endpoints);
                            pauses = retry_pauses();
                            if let Ok(mut slot) = progress.lock() {
                                *slot = CommitteeProgress::Formed;
                            }
                        }
                        Err(status) => {
                            let pause = pauses.next().unwrap_or(Duration::from_secs(60));
                            tracing::warn!(error = %status.message(), ?pause, "key ceremony failed; retrying");
                            tokio::time::sleep(pause).await;
                        }
                    }
                } else if formed_with.is_none() {
                    if let Ok(mut slot) = progress.lock() {
                        *slot = CommitteeProgress::Waiting { published, size };
                    }
                }
            }
            Err(status) => tracing::warn!(error = %status.message(), "reading listings"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The endpoint of every member that has published a listing, in member order.
async fn member_endpoints(
    coordinator: &Arc<Coordinator>,
    members: &[AccountId],
) -> Result<Vec<(MemberIndex, String)>, crate::error::CoordinatorError> {
    let listings = coordinator.listings()?;
    let owners = read_ledger(coordinator.ledger(), move |ledger| {
        let state = ledger.state();
        let mut owners = BTreeMap::new();
        for (id, info) in listings {
            if let Some(listing) = state.listing(&ListingId::new(id)) {
                owners.insert(listing.owner, info.endpoint);
            }
        }
        Ok(owners)
    })
    .await?;
    let mut endpoints = Vec::new();
    for (position, account) in members.iter().enumerate() {
        let Some(endpoint) = owners.get(account) else {
            continue;
        };
        let index = u16::try_from(position + 1)
            .ok()
            .and_then(MemberIndex::new)
            .ok_or_else(|| crate::error::CoordinatorError::internal("member index out of range"))?;
        endpoints.push((index, endpoint.clone()));
    }
    Ok(endpoints)
}

/// Why a listing could not be published ([`publish_listing`]).
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The market could not be reached (not started yet, or gone): worth trying again.
    #[error("connecting to the market at {endpoint}: {reason}")]
    Unreachable {
        /// The market's endpoint.
        endpoint: String,
        /// What the transport said.
        reason: String,
    },
    /// The node's account is not on the ledger.
    #[error(
        "account {0} is not admitted on the market's ledger; the market operator must list it \
         in [committee] members of market.toml"
    )]
    NotAdmitted(AccountId),
    /// The market refused the listing.
    #[error("publishing listing {listing}: {} ({:?})", status.message(), status.code())]
    Refused {
        /// The listing id.
        listing: String,
        /// The market's answer.
        status: tonic::Status,
    },
    /// The endpoint or the signature could not be made.
    #[error(transparent)]
    Local(#[from] anyhow::Error),
}

impl PublishError {
    /// Whether trying again later may succeed: the market was not reachable.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, PublishError::Unreachable { .. })
    }

    /// Whether the ledger already holds the listing.
    pub fn already_published(&self) -> bool {
        matches!(self, PublishError::Refused { status, .. } if status.code() == Code::AlreadyExists)
    }
}

/// A listing a node publishes.
pub struct ListingPublication<'a> {
    /// The listing id.
    pub listing: &'a str,
    /// The vault's manifest text (its hash goes on the ledger).
    pub manifest: String,
    /// The terms.
    pub terms: ListingTerms,
    /// Where the node's Compute service answers.
    pub node_endpoint: String,
}

/// Publishes a node's listing through `Market.PublishListing` (signed by `key`, at the
/// account's next nonce), which also tells the coordinator the node's endpoint.
pub async fn publish_listing(
    market_endpoint: &str,
    tls: Option<&TlsIdentity>,
    key: &SigningKey,
    chain_id: Hash32,
    publication: ListingPublication<'_>,
) -> Result<TransactionResult, PublishError> {
    let unreachable = |reason: String| PublishError::Unreachable {
        endpoint: market_endpoint.to_string(),
        reason,
    };
    let refused = |status: tonic::Status| {
        if status.code() == Code::Unavailable {
            unreachable(status.message().to_string())
        } else {
            PublishError::Refused {
                listing: publication.listing.to_string(),
                status,
            }
        }
    };
    let channel = link(market_endpoint, tls)
        .with_context(|| format!("market endpoint `{market_endpoint}`"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|error| unreachable(error.to_string()))?;
    let account = AccountId::of(key);
    let nonce = next_nonce_on(channel.clone(), &account)
        .await
        .map_err(refused)?
        .ok_or(PublishError::NotAdmitted(account))?;
    let envelope = sign_action(
        key,
        chain_id,
        nonce,
        Action::PublishListing {
            listing: ListingId::new(publication.listing.to_string()),
            schema_hash: manifest_hash(&publication.manifest),
            terms: publication.terms,
        },
    )
    .map_err(|error| anyhow!("signing the listing: {error}"))?;
    let result = MarketClient::new(channel)
        .publish_listing(PublishListingRequest {
            transaction: Some(SignedTransaction { envelope }),
            manifest: publication.manifest,
            node_endpoint: publication.node_endpoint,
        })
        .await
        .map_err(refused)?;
    Ok(result.into_inner())
}
