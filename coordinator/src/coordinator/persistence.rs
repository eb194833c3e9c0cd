//! What the coordinator keeps across restarts, apart from the ledger: its listings and
//! committee (a JSON state file, replaced whole on every change) and the completed orders whose
//! results it still serves (`kept_orders`, beside the state file).

use super::*;

/// What the coordinator keeps across restarts: what the ledger does not hold.
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct SavedState {
    /// Format version (1).
    version: u32,
    /// Listing id → manifest text and node endpoint.
    listings: BTreeMap<String, SavedListing>,
    /// The committee's public data (CXZK, hex) and each member's index and endpoint.
    committee: Option<SavedCommittee>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedListing {
    manifest: String,
    endpoint: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SavedCommittee {
    public: String,
    members: Vec<(u16, String)>,
}

const SAVED_STATE_VERSION: u32 = 1;

impl Coordinator {
    /// A coordinator that keeps its listings and committee in `path` (a JSON file, replaced
    /// atomically on every change) and starts from what an earlier run left there.
    pub fn with_state_file(
        ledger: SharedLedger,
        account: SigningKey,
        path: std::path::PathBuf,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut coordinator = Self::new(ledger, account);
        if path.exists() {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let saved: SavedState = serde_json::from_str(&text)
                .with_context(|| format!("{}: not a coordinator state file", path.display()))?;
            if saved.version != SAVED_STATE_VERSION {
                anyhow::bail!(
                    "{}: version {} (this build reads {SAVED_STATE_VERSION})",
                    path.display(),
                    saved.version
                );
            }
            let mut listings = BTreeMap::new();
            for (id, listing) in saved.listings {
                let schema = Schema::from_toml(&listing.manifest, &id).map_err(|error| {
                    anyhow::anyhow!("{}: listing {id}: {error}", path.display())
                })?;
                listings.insert(
                    id,
                    ListingInfo {
                        manifest: listing.manifest,
                        schema,
                        endpoint: listing.endpoint,
                    },
                );
            }
            *coordinator
                .listings
                .get_mut()
                .map_err(|_| anyhow::anyhow!("lock poisoned"))? = listings;
            if let Some(committee) = saved.committee {
                let bytes = hex::decode(&committee.public)
                    .with_context(|| format!("{}: committee.public", path.display()))?;
                let public = CommitteePublic::from_bytes(&bytes)
                    .map_err(|error| anyhow::anyhow!("{}: committee: {error}", path.display()))?;
                let mut members = Vec::new();
                for (member, endpoint) in committee.members {
                    let member = MemberIndex::new(member).ok_or_else(|| {
                        anyhow::anyhow!("{}: committee member index 0", path.display())
                    })?;
                    members.push((member, endpoint));
                }
                *coordinator
                    .committee
                    .get_mut()
                    .map_err(|_| anyhow::anyhow!("lock poisoned"))? =
                    Some(Committee { public, members });
            }
        }
        coordinator.state_file = Some(path);
        Ok(coordinator)
    }

    /// Writes the listings and committee to the state file, if there is one, replacing it
    /// whole ([`compute_node::durable::replace_file`]): a crash leaves the old or the new.
    pub(super) async fn save(&self) -> Result<(), CoordinatorError> {
        let Some(path) = self.state_file.clone() else {
            return Ok(());
        };
        // One writer at a time, each writing a snapshot taken under the lock: the last
        // rename holds the latest state. The write and its fsync run on the blocking pool, so
        // no async worker waits on the disk; the lock goes with them and is released only after
        // the rename, even if this future is dropped (a client gone, a deadline) meanwhile.
        let writing = Arc::clone(&self.save_lock).lock_owned().await;
        let listings = self
            .listings
            .lock()
            .map_err(|_| poisoned())?
            .iter()
            .map(|(id, info)| {
                (
                    id.clone(),
                    SavedListing {
                        manifest: info.manifest.clone(),
                        endpoint: info.endpoint.clone(),
                    },
                )
            })
            .collect();
        let committee = self
            .committee
            .lock()
            .map_err(|_| poisoned())?
            .as_ref()
            .map(|committee| SavedCommittee {
                public: hex::encode(committee.public.to_bytes()),
                members: committee
                    .members
                    .iter()
                    .map(|(member, endpoint)| (member.get(), endpoint.clone()))
                    .collect(),
            });
        let saved = SavedState {
            version: SAVED_STATE_VERSION,
            listings,
            committee,
        };
        let text = serde_json::to_string_pretty(&saved).map_err(|error| {
            CoordinatorError::internal(format!("encoding the coordinator state: {error}"))
        })?;
        let written = tokio::task::spawn_blocking(move || {
            let _writing = writing;
            compute_node::durable::replace_file(&path, text.as_bytes())
                .map_err(|error| (path, error))
        })
        .await
        .map_err(|error| CoordinatorError::internal(format!("the state writer failed: {error}")))?;
        written.map_err(|(path, error)| {
            tracing::error!(path = %path.display(), %error, "saving the coordinator state");
            CoordinatorError::internal("the market could not save its state")
        })
    }

    /// Refunds every order the ledger still holds open: at start-up, those are orders whose
    /// computation a previous run of the market did not finish (it stopped or crashed). The
    /// escrow goes back to the buyer; the ε of an order whose release was committed stays
    /// spent (ledger rule). Returns the orders refunded.
    pub async fn refund_orders_left_open(&self) -> Result<Vec<OrderId>, CoordinatorError> {
        let open: Vec<OrderId> = read_ledger(&self.ledger, |ledger| {
            Ok(ledger
                .state()
                .orders()
                .filter(|(_, order)| order.status == market::state::Settlement::Open)
                .map(|(id, _)| *id)
                .collect())
        })
        .await?;
        for order in &open {
            self.submit_own(Action::Refund { order: *order }).await?;
            tracing::info!(order = %hex::encode(order.0 .0.as_bytes()), "refunded an order left open by an earlier run");
        }
        Ok(open)
    }

    /// Serves again the completed orders an earlier run kept on disk whose receipts the
    /// ledger holds, and deletes the records of those it does not (refunded: their buyers did
    /// not pay). Call it after [`Coordinator::refund_orders_left_open`]. Returns how many
    /// orders are served again.
    pub async fn resume_completed_orders(&self) -> Result<usize, CoordinatorError> {
        let Some(directory) = self.kept_orders_directory() else {
            return Ok(0);
        };
        let kept = {
            let directory = directory.clone();
            tokio::task::spawn_blocking(move || crate::kept_orders::read_all(&directory))
                .await
                .map_err(|error| {
                    CoordinatorError::internal(format!("the order reader failed: {error}"))
                })?
                .map_err(|error| CoordinatorError::internal(format!("kept orders: {error:#}")))?
        };
        // The receipt of each kept order, if the ledger holds one for that order and buyer.
        let receipts: Vec<Option<ReceiptId>> = {
            let orders: Vec<(TxId, AccountId)> = kept
                .iter()
                .map(|(order, record)| (*order, record.buyer))
                .collect();
            read_ledger(&self.ledger, move |ledger| {
                Ok(orders
                    .iter()
                    .map(|(order, buyer)| {
                        let found = ledger.state().order(&OrderId(*order))?;
                        match found.status {
                            _ if found.buyer != *buyer => None,
                            market::state::Settlement::Computed { receipt }
                            | market::state::Settlement::Settled { receipt } => Some(receipt),
                            _ => None,
                        }
                    })
                    .collect())
            })
            .await?
        };
        let mut resumed = 0;
        for ((order, mut record), receipt) in kept.into_iter().zip(receipts) {
            match receipt {
                Some(receipt) => {
                    record.receipt = Some(receipt.0);
                    self.orders
                        .lock()
                        .map_err(|_| poisoned())?
                        .insert(order, record);
                    resumed += 1;
                }
                None => crate::kept_orders::forget(&directory, &order).map_err(|error| {
                    CoordinatorError::internal(format!(
                        "deleting a refunded order's record: {error}"
                    ))
                })?,
            }
        }
        Ok(resumed)
    }

    /// Writes `record`, completed but with its receipt not yet recorded, beside the state
    /// file (if there is one), synced, so that it survives a restart once the receipt lands.
    pub(super) async fn keep_completed(
        &self,
        order: TxId,
        record: &OrderRecord,
    ) -> Result<(), CoordinatorError> {
        let Some(directory) = self.kept_orders_directory() else {
            return Ok(());
        };
        let bytes = crate::kept_orders::encode(order, record)
            .map_err(|error| CoordinatorError::internal(format!("encoding the order: {error}")))?;
        tokio::task::spawn_blocking(move || crate::kept_orders::keep(&directory, order, &bytes))
            .await
            .map_err(|error| {
                CoordinatorError::internal(format!("the order writer failed: {error}"))
            })?
            .map_err(|error| {
                tracing::error!(%error, "keeping a completed order");
                CoordinatorError::internal("the market could not keep the order's result on disk")
            })
    }

    /// Where completed orders are kept: beside the state file, if there is one.
    pub(super) fn kept_orders_directory(&self) -> Option<std::path::PathBuf> {
        self.state_file
            .as_deref()
            .map(crate::kept_orders::directory)
    }
}
