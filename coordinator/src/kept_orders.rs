//! Completed orders kept on disk beside the coordinator's state file, so that a buyer who paid
//! for a release can still read it after the market restarts.
//!
//! A record is written, whole and synced ([`compute_node::durable::replace_file`]), before the
//! order's receipt goes to the ledger. At start-up a record is served again only if the
//! ledger holds that order's receipt; the record of an order the ledger refunded is deleted,
//! since its buyer did not pay. The release is under the buyer's key (its count slots are
//! the noisy counts, public to whoever holds them), so the file holds nothing the market did
//! not already hold in memory.

use std::path::{Path, PathBuf};

use cohortex_proto::v1::{OrderState, SiteCount};
use market::{AccountId, TxId};
use prost::Message;
use serde::{Deserialize, Serialize};

use crate::coordinator::{OrderRecord, ReleaseIdentity};

/// The format of a kept order (postcard).
const KEPT_ORDER_VERSION: u32 = 1;

/// One completed order as kept on disk: the [`OrderRecord`] without its receipt, which the
/// ledger holds, and with the protocol messages encoded as protobuf.
#[derive(Serialize, Deserialize)]
struct KeptOrder {
    version: u32,
    order: TxId,
    buyer: AccountId,
    message: String,
    nodes: Vec<Vec<u8>>,
    plan: String,
    result: Vec<Vec<u8>>,
    committee_used: Vec<u32>,
    epsilon_micro: u64,
    noise_members: Vec<u32>,
    suppressed: Vec<bool>,
    identity: ReleaseIdentity,
    completed_at: Option<u64>,
    site_counts: Vec<Vec<u8>>,
}

/// The directory of kept orders for the coordinator state file `state_file`.
pub(crate) fn directory(state_file: &Path) -> PathBuf {
    state_file.with_extension("orders")
}

fn file_of(directory: &Path, order: &TxId) -> PathBuf {
    directory.join(format!("{}.order", hex::encode(order.0.as_bytes())))
}

/// `record`, the completed order `order`, as kept on disk.
pub(crate) fn encode(order: TxId, record: &OrderRecord) -> postcard::Result<Vec<u8>> {
    postcard::to_stdvec(&KeptOrder {
        version: KEPT_ORDER_VERSION,
        order,
        buyer: record.buyer,
        message: record.message.clone(),
        nodes: record
            .nodes
            .iter()
            .map(|report| cohortex_proto::v1::NodeReport::from(report).encode_to_vec())
            .collect(),
        plan: record.plan.clone(),
        result: record.result.clone(),
        committee_used: record.committee_used.clone(),
        epsilon_micro: record.epsilon_micro,
        noise_members: record.noise_members.clone(),
        suppressed: record.suppressed.clone(),
        identity: record.identity.clone(),
        completed_at: record.completed_at,
        site_counts: record
            .site_counts
            .iter()
            .map(Message::encode_to_vec)
            .collect(),
    })
}

/// Writes `bytes` ([`encode`]) as the record of `order` under `directory`, replacing any
/// earlier one.
pub(crate) fn keep(directory: &Path, order: TxId, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(directory)?;
    compute_node::durable::replace_file(&file_of(directory, &order), bytes)
}

/// Deletes the record of `order`, if any.
pub(crate) fn forget(directory: &Path, order: &TxId) -> std::io::Result<()> {
    match std::fs::remove_file(file_of(directory, order)) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Every order kept under `directory` (none if it does not exist), as completed records
/// without a receipt. A file that does not decode is an error naming it: the market does not
/// start over a damaged record silently.
pub(crate) fn read_all(directory: &Path) -> anyhow::Result<Vec<(TxId, OrderRecord)>> {
    use anyhow::Context;
    let entries = match std::fs::read_dir(directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(error).with_context(|| format!("reading {}", directory.display()))
        }
    };
    let mut orders = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("order") {
            continue;
        }
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        // The version leads the record: read it alone first, so that another layout is named
        // as such rather than as damage.
        let (version, _) = postcard::take_from_bytes::<u32>(&bytes)
            .with_context(|| format!("{}: not a kept order", path.display()))?;
        if version != KEPT_ORDER_VERSION {
            anyhow::bail!(
                "{}: version {version} (this build reads {KEPT_ORDER_VERSION})",
                path.display()
            );
        }
        let kept: KeptOrder = postcard::from_bytes(&bytes)
            .with_context(|| format!("{}: not a kept order", path.display()))?;
        if path.file_name() != file_of(directory, &kept.order).file_name() {
            anyhow::bail!("{}: holds another order", path.display());
        }
        let nodes = decode_messages::<cohortex_proto::v1::NodeReport>(&kept.nodes, &path, "nodes")?
            .into_iter()
            .enumerate()
            .map(|(index, wire)| {
                crate::coordinator::NodeReport::try_from(wire).map_err(|reason| {
                    anyhow::anyhow!("{}: nodes[{index}].{reason}", path.display())
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let site_counts = decode_messages::<SiteCount>(&kept.site_counts, &path, "site_counts")?;
        orders.push((
            kept.order,
            OrderRecord {
                buyer: kept.buyer,
                state: OrderState::Completed,
                message: kept.message,
                nodes,
                plan: kept.plan,
                result: kept.result,
                receipt: None,
                committee_used: kept.committee_used,
                epsilon_micro: kept.epsilon_micro,
                noise_members: kept.noise_members,
                suppressed: kept.suppressed,
                identity: kept.identity,
                completed_at: kept.completed_at,
                site_counts,
                phases: Vec::new(),
            },
        ));
    }
    Ok(orders)
}

fn decode_messages<M: Message + Default>(
    messages: &[Vec<u8>],
    path: &Path,
    field: &str,
) -> anyhow::Result<Vec<M>> {
    messages
        .iter()
        .map(|bytes| {
            M::decode(bytes.as_slice())
                .map_err(|error| anyhow::anyhow!("{}: {field}: {error}", path.display()))
        })
        .collect()
}
