//! gRPC services of the market process (feature `server`): the Ledger and Consent services
//! over a shared [`Ledger`], request authentication, health checking and reflection.
//!
//! Handlers are thin: authenticate, convert the wire message into domain types (a missing or
//! malformed field is `INVALID_ARGUMENT` naming the field), call the ledger on a blocking
//! thread, and map the error through [`tx_error_status`] or [`ledger_error_status`].
//!
//! Every touch of the ledger runs on `tokio::task::spawn_blocking` ([`submit`],
//! [`read_ledger`]): an append holds the ledger's mutex across a durable SQLite commit, and
//! reads of stored blocks and transactions query SQLite, so neither may run on an async worker.
//!
//! Status codes follow the gRPC guide: a field that is wrong whatever the ledger holds is
//! `INVALID_ARGUMENT`; a transaction whose signature does not verify is `UNAUTHENTICATED`; a
//! rule that depends on the ledger's state (funds, nonces, listing and order status, consent,
//! budgets) is `FAILED_PRECONDITION`; an unknown account, listing, order, receipt, block or
//! transaction is `NOT_FOUND`; role and ownership rules are `PERMISSION_DENIED`.
//!
//! A status message quotes at most about a hundred bytes of what the caller sent, through
//! [`excerpt`]: messages travel in an HTTP/2 trailer, which a megabyte echo would overflow.
//! Undecodable and non-canonical protobuf never reaches a handler: the generated code's codec
//! ([`cohortex_proto::codec`]) refuses it with `INVALID_ARGUMENT`.

pub use cohortex_types::auth;
pub mod consent;
pub mod ledger;
pub mod rate;

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use cohortex_proto::v1;
use cohortex_proto::v1::consent_server::ConsentServer;
use cohortex_proto::v1::ledger_server::LedgerServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Status};

use crate::error::TxError;
use crate::hash::Hash32;
use crate::log::{LogError, SignedTreeHead};
use crate::machine::BlockError;
use crate::storage::{Ledger, LedgerError};
use crate::tx::{
    txid_of, AccountId, Action, ListingId, TxBody, TxId, UncheckedTx, MAX_LISTING_ID_LEN,
    MAX_SIGNED_TX_LEN,
};

pub use crate::error::{bounded_message, excerpt, MAX_COMPOSED_MESSAGE_BYTES, MAX_EXCERPT_BYTES};
pub use consent::ConsentService;
pub use ledger::LedgerService;

pub use cohortex_types::rpc::{purpose_field, MAX_MESSAGE_BYTES, REQUEST_TIMEOUT};

/// The ledger, shared by the services of one process.
pub type SharedLedger = Arc<Mutex<Ledger>>;

/// The gRPC code of every [`TxError`]: one closed mapping, so that a new refusal reason must
/// be given a code here before the crate compiles.
pub fn tx_error_code(error: &TxError) -> Code {
    match error {
        // Wrong whatever the ledger holds.
        TxError::TooLarge { .. }
        | TxError::UnsupportedVersion(_)
        | TxError::Malformed(_)
        | TxError::InvalidKey(_)
        | TxError::WrongChain { .. }
        | TxError::ZeroAmount
        | TxError::ZeroPersonalLimit
        | TxError::InvalidListing(_)
        | TxError::InvalidOrder(_)
        | TxError::InvalidRelease(_)
        | TxError::InvalidCommittee(_)
        | TxError::InvalidTrial(_)
        | TxError::ParticipantsNotCanonical(_)
        | TxError::StagedParticipantsNotCanonical { .. }
        | TxError::ParticipantsStagedAndNamed(_) => Code::InvalidArgument,
        TxError::BadSignature(_) => Code::Unauthenticated,
        TxError::UnknownAccount(_)
        | TxError::UnknownListing(_)
        | TxError::UnknownOrder(_)
        | TxError::UnknownReceipt(_)
        | TxError::UnknownTrial(_) => Code::NotFound,
        TxError::WrongRole { .. }
        | TxError::RegistrationNotSelfSigned { .. }
        | TxError::AdmissionRequiresIssuer { .. }
        | TxError::NotListingOwner { .. }
        | TxError::ConsentNotByPatient { .. }
        | TxError::NotOrderParty { .. } => Code::PermissionDenied,
        TxError::AlreadyRegistered(_)
        | TxError::ListingExists(_)
        | TxError::CommitteeAlreadyRegistered => Code::AlreadyExists,
        // Rules that depend on the ledger's current state.
        TxError::ReplayedNonce { .. }
        | TxError::NonceGap { .. }
        | TxError::InsufficientFunds { .. }
        | TxError::AmountOverflow
        | TxError::ListingWithdrawn(_)
        | TxError::PurposeNotAllowed { .. }
        | TxError::NotAFund(_)
        | TxError::NoActiveConsent { .. }
        | TxError::ExpiryNotInFuture { .. }
        | TxError::OrderExpiryTooFar { .. }
        | TxError::ReleaseCommitted(_)
        | TxError::NotCancellable { .. }
        | TxError::EpsilonBudgetExhausted { .. }
        | TxError::EpsilonAboveOrderCap { .. }
        | TxError::OrderNotOpen { .. }
        | TxError::OrderExpired { .. }
        | TxError::OrderNotExpired { .. }
        | TxError::QueryHashMismatch(_)
        | TxError::ReceiptListingsMismatch(_)
        | TxError::ContributionsRootMismatch(_)
        | TxError::ReceiptNotTheCommittedRelease(_)
        | TxError::ContributionNotAttested { .. }
        | TxError::EpsilonExceedsRequest { .. }
        | TxError::CohortTooSmall { .. }
        | TxError::ParticipantWithoutConsent { .. }
        | TxError::PersonalLimitBelowSpent { .. }
        | TxError::PersonalBudgetExceeded { .. }
        | TxError::ReceiptForAnotherOrder { .. }
        | TxError::ParticipantInTwoListings { .. }
        | TxError::ListingNotInOrder { .. }
        | TxError::AlreadySettled(_)
        | TxError::AlreadyRefunded(_)
        | TxError::ReleaseAlreadyCommitted(_)
        | TxError::CommitteeMemberNotANode { .. }
        | TxError::ReceiptNotCosigned { .. }
        | TxError::BadCosignature { .. }
        | TxError::NoCommittee
        | TxError::NotAFeasibilityOrder(_)
        | TxError::TrialExpired { .. }
        | TxError::TrialNotOnListing { .. }
        | TxError::TrialReplyNotAttested { .. }
        | TxError::OrderNotComputed(_) => Code::FailedPrecondition,
        TxError::TrialExists(_) | TxError::TrialReplyRefused { .. } => Code::AlreadyExists,
    }
}

/// A refused transaction as a gRPC status: [`tx_error_code`] with the refusal's message.
pub fn tx_error_status(error: &TxError) -> Status {
    Status::new(tx_error_code(error), error.to_string())
}

/// A ledger failure as a gRPC status. An unknown transaction is `NOT_FOUND`, a proof asked
/// beyond the log is `OUT_OF_RANGE`, a lost race with another writer is `ABORTED` (the ledger
/// reloads itself; the caller may retry); storage failures are `INTERNAL` with a generic
/// message (logged in full here, so that no path or SQL reaches the caller).
pub fn ledger_error_status(error: &LedgerError) -> Status {
    match error {
        LedgerError::UnknownTransaction(_) => Status::not_found(error.to_string()),
        LedgerError::Log(LogError::OutOfRange { .. }) => Status::out_of_range(error.to_string()),
        LedgerError::Block(BlockError::TxRefused { error, .. }) => tx_error_status(error),
        LedgerError::ConcurrentWriter(_) => {
            Status::aborted("another writer appended to the ledger; retry")
        }
        LedgerError::Sqlite(_)
        | LedgerError::AlreadyInitialised(_)
        | LedgerError::NotInitialised(_)
        | LedgerError::UnsupportedSchema(_)
        | LedgerError::SequencerKeyMismatch
        | LedgerError::Corrupt { .. }
        | LedgerError::Resume(_)
        | LedgerError::Block(_)
        | LedgerError::Log(_) => {
            tracing::error!(%error, "ledger failure");
            Status::internal("ledger storage failure")
        }
    }
}

/// A transaction the ledger accepted, and where the log put it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Submitted {
    /// The transaction id (the Merkle leaf).
    pub tx_id: TxId,
    /// Height of the block that holds it (the transaction is alone in its block).
    pub height: u64,
    /// Its position in the log.
    pub leaf_index: u64,
}

impl From<Submitted> for v1::TransactionResult {
    fn from(submitted: Submitted) -> Self {
        v1::TransactionResult {
            tx_id: submitted.tx_id.0.as_bytes().to_vec(),
            height: submitted.height,
            leaf_index: submitted.leaf_index,
        }
    }
}

/// Appends one signed transaction as its own block (durably, before returning), on a blocking
/// thread. A refused transaction changes nothing and maps through [`tx_error_status`].
pub async fn submit(ledger: &SharedLedger, envelope: Vec<u8>) -> Result<Submitted, Status> {
    let ledger = Arc::clone(ledger);
    run_blocking(move || append_one(&ledger, envelope)).await
}

/// [`submit`] for services that accept only some actions: the envelope is parsed and its
/// signature verified first, then `admit` sees the signed body and may refuse it (typically
/// `INVALID_ARGUMENT` naming `envelope`, see [`wrong_action`]) before the ledger is touched.
/// The ledger checks the signature again when it appends; the cost is one verification.
pub async fn submit_if<F>(
    ledger: &SharedLedger,
    envelope: Vec<u8>,
    admit: F,
) -> Result<Submitted, Status>
where
    F: FnOnce(&TxBody) -> Result<(), Status> + Send + 'static,
{
    let ledger = Arc::clone(ledger);
    run_blocking(move || {
        let verified = UncheckedTx::parse(envelope)
            .and_then(UncheckedTx::verify)
            .map_err(|error| tx_error_status(&error))?;
        admit(verified.body())?;
        append_one(&ledger, verified.bytes().to_vec())
    })
    .await
}

fn append_one(ledger: &SharedLedger, envelope: Vec<u8>) -> Result<Submitted, Status> {
    append_all(ledger, vec![envelope])?
        .pop()
        .ok_or_else(|| Status::internal("an accepted transaction made no block"))
}

/// Appends `envelopes` in one block; the first refusal is the error (the ones accepted before
/// it stand).
fn append_all(ledger: &SharedLedger, envelopes: Vec<Vec<u8>>) -> Result<Vec<Submitted>, Status> {
    let tx_ids: Vec<TxId> = envelopes.iter().map(|envelope| txid_of(envelope)).collect();
    let mut ledger = lock(ledger)?;
    let outcome = ledger
        .append(envelopes)
        .map_err(|error| ledger_error_status(&error))?;
    if let Some(refusal) = outcome.refused.first() {
        return Err(tx_error_status(&refusal.error));
    }
    let head = outcome
        .head
        .ok_or_else(|| Status::internal("accepted transactions made no block"))?;
    debug_assert_eq!(head.header.tx_count as usize, tx_ids.len());
    // The block holds these transactions alone, so they are the log's last leaves.
    let first_leaf = head.header.tree_size.saturating_sub(tx_ids.len() as u64);
    Ok(tx_ids
        .into_iter()
        .enumerate()
        .map(|(position, tx_id)| Submitted {
            tx_id,
            height: head.header.height,
            leaf_index: first_leaf + position as u64,
        })
        .collect())
}

/// Appends `envelopes` together, in one block (one SQLite transaction), so that no crash can
/// leave the first without the others. Each is checked in order against the state the ones
/// before it left; the first refusal is returned, and the ones accepted before it stand.
pub async fn submit_together(
    ledger: &SharedLedger,
    envelopes: Vec<Vec<u8>>,
) -> Result<Vec<Submitted>, Status> {
    let ledger = Arc::clone(ledger);
    run_blocking(move || append_all(&ledger, envelopes)).await
}

/// Runs `read` on the ledger on a blocking thread (it waits for the mutex, which an append
/// holds across its SQLite commit, and may query SQLite itself).
pub async fn read_ledger<T, F>(ledger: &SharedLedger, read: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce(&Ledger) -> Result<T, Status> + Send + 'static,
{
    let ledger = Arc::clone(ledger);
    run_blocking(move || read(&*lock(&ledger)?)).await
}

async fn run_blocking<T, F>(work: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Status> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await.map_err(|error| {
        tracing::error!(%error, "ledger task failed");
        Status::internal("ledger task failed")
    })?
}

fn lock(ledger: &SharedLedger) -> Result<MutexGuard<'_, Ledger>, Status> {
    ledger
        .lock()
        .map_err(|_| Status::internal("ledger lock poisoned by an earlier failure"))
}

/// The `INVALID_ARGUMENT` of an RPC that received an envelope carrying the wrong action.
pub fn wrong_action(expected: &str, found: &Action) -> Status {
    Status::invalid_argument(format!(
        "envelope must carry {expected}, not a {} action",
        action_name(found)
    ))
}

/// The name of an action's variant, as in `docs/ledger.md`.
pub fn action_name(action: &Action) -> &'static str {
    match action {
        Action::RegisterAccount { .. } => "RegisterAccount",
        Action::PublishListing { .. } => "PublishListing",
        Action::UpdateListing { .. } => "UpdateListing",
        Action::WithdrawListing { .. } => "WithdrawListing",
        Action::GrantConsent { .. } => "GrantConsent",
        Action::RevokeConsent { .. } => "RevokeConsent",
        Action::Deposit { .. } => "Deposit",
        Action::OrderQuery { .. } => "OrderQuery",
        Action::RecordReceipt(_) => "RecordReceipt",
        Action::Settle { .. } => "Settle",
        Action::Refund { .. } => "Refund",
        Action::CommitRelease { .. } => "CommitRelease",
        Action::OrderQueryFor { .. } => "OrderQueryFor",
        Action::RegisterCommittee { .. } => "RegisterCommittee",
        Action::RecordCosignedReceipt { .. } => "RecordCosignedReceipt",
        Action::RecordFeasibility(_) => "RecordFeasibility",
        Action::PostTrial(_) => "PostTrial",
        Action::RecordTrialReply { .. } => "RecordTrialReply",
        Action::CancelOrder { .. } => "CancelOrder",
        Action::StageParticipants { .. } => "StageParticipants",
        Action::CommitAttestedRelease { .. } => "CommitAttestedRelease",
    }
}

/// The envelope of a `SignedTransaction`: present and at most [`MAX_SIGNED_TX_LEN`] bytes.
pub fn envelope_field(message: v1::SignedTransaction) -> Result<Vec<u8>, Status> {
    let envelope = message.envelope;
    if envelope.is_empty() {
        return Err(Status::invalid_argument("envelope must not be empty"));
    }
    if envelope.len() > MAX_SIGNED_TX_LEN {
        return Err(Status::invalid_argument(format!(
            "envelope is {} bytes, more than the {MAX_SIGNED_TX_LEN} accepted",
            envelope.len()
        )));
    }
    Ok(envelope)
}

fn bytes32_field(bytes: &[u8], field: &str) -> Result<[u8; 32], Status> {
    <[u8; 32]>::try_from(bytes).map_err(|_| {
        Status::invalid_argument(format!("{field} must be 32 bytes, got {}", bytes.len()))
    })
}

/// An account field: exactly 32 bytes (whether it is a valid key is the ledger's concern).
pub fn account_field(bytes: &[u8], field: &str) -> Result<AccountId, Status> {
    bytes32_field(bytes, field).map(AccountId)
}

/// A transaction id field: exactly 32 bytes.
pub fn tx_id_field(bytes: &[u8], field: &str) -> Result<TxId, Status> {
    bytes32_field(bytes, field).map(|bytes| TxId(Hash32(bytes)))
}

/// A listing id field: 1 to [`MAX_LISTING_ID_LEN`] bytes.
pub fn listing_field(id: &str, field: &str) -> Result<ListingId, Status> {
    if id.is_empty() || id.len() > MAX_LISTING_ID_LEN {
        return Err(Status::invalid_argument(format!(
            "{field} must be 1 to {MAX_LISTING_ID_LEN} bytes, got {}",
            id.len()
        )));
    }
    Ok(ListingId::new(id))
}

pub use cohortex_types::ids::{purpose_name, PURPOSE_NAMES};

/// The last signed tree head, or `NOT_FOUND` before the first block.
pub fn latest_head(ledger: &Ledger) -> Result<SignedTreeHead, Status> {
    ledger
        .head()
        .cloned()
        .ok_or_else(|| Status::not_found("the ledger has no block yet"))
}

pub use cohortex_proto::serving::{health_and_reflection, ServeError};

/// Serves the Ledger and Consent services over `ledger` on `listener`, with health and
/// reflection, until `shutdown` completes; then stops accepting and drains open requests.
///
/// Each request gets [`REQUEST_TIMEOUT`] unless its client asks for less, and no message
/// larger than [`MAX_MESSAGE_BYTES`] is decoded or encoded (`OUT_OF_RANGE`).
pub async fn serve_ledger_and_consent(
    ledger: SharedLedger,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (_reporter, health, reflection, reflection_v1alpha) = health_and_reflection(&[
        v1::ledger_server::SERVICE_NAME,
        v1::consent_server::SERVICE_NAME,
    ])
    .await?;
    let registrations = Arc::new(rate::RateLimiter::registrations());
    let ledger_service = LedgerServer::new(
        LedgerService::new(Arc::clone(&ledger)).sharing_registrations(Arc::clone(&registrations)),
    )
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let consent_service =
        ConsentServer::new(ConsentService::new(ledger).sharing_registrations(registrations))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tracing::info!(address = ?listener.local_addr().ok(), "serving ledger and consent");
    tonic::transport::Server::builder()
        .timeout(REQUEST_TIMEOUT)
        .add_service(health)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(ledger_service)
        .add_service(consent_service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await?;
    tracing::info!("ledger and consent services stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_the_documented_codes() {
        let account = AccountId([1; 32]);
        let listing = ListingId::new("cohort");
        let cases = [
            (TxError::Malformed("x".into()), Code::InvalidArgument),
            (TxError::BadSignature(account), Code::Unauthenticated),
            (TxError::UnknownListing(listing.clone()), Code::NotFound),
            (
                TxError::ConsentNotByPatient {
                    patient: account,
                    signer: account,
                },
                Code::PermissionDenied,
            ),
            (TxError::AlreadyRegistered(account), Code::AlreadyExists),
            (
                TxError::ReplayedNonce {
                    account,
                    expected: 2,
                    got: 1,
                },
                Code::FailedPrecondition,
            ),
            (TxError::ListingWithdrawn(listing), Code::FailedPrecondition),
        ];
        for (error, code) in cases {
            let status = tx_error_status(&error);
            assert_eq!(status.code(), code, "{error}");
            assert_eq!(status.message(), error.to_string());
        }
        let unknown = LedgerError::UnknownTransaction(TxId(Hash32([2; 32])));
        assert_eq!(ledger_error_status(&unknown).code(), Code::NotFound);
        let path = LedgerError::NotInitialised("/secret/ledger.db".into());
        let status = ledger_error_status(&path);
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"), "no path leaks");
    }
}
