//! Transactions: the actions a party can take, and the signed envelope that carries them.
//!
//! A signed transaction is `0x01 || signature(64) || body`, where `body` is the postcard
//! encoding of [`TxBody`] and the signature is ed25519 over
//! `tagged_hash("cohortex/ledger/tx-signature/v1", [body])` with the key of `body.signer`.
//! The body names the chain id (the hash of the genesis configuration), so a transaction signed
//! for one ledger is refused by every other. Its id is
//! `tagged_hash("cohortex/ledger/txid/v1", [signed bytes])`, and that id is the RFC 6962 leaf.

use crate::error::TxError;
use crate::hash::{tagged_hash, Hash32};
pub use cohortex_types::labels::{
    LABEL_ATTESTATION, LABEL_FEASIBILITY_ATTESTATION, LABEL_RECEIPT_COSIGNATURE,
    LABEL_TRIAL_ACCEPTANCE, LABEL_TRIAL_REPLY, LABEL_TRIAL_REPLY_CONTENT, LABEL_TXID,
    LABEL_TX_SIGNATURE,
};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Version byte of the signed-transaction envelope.
pub const SIGNED_TX_VERSION: u8 = 1;
/// Largest signed transaction accepted, in bytes (checked before decoding). No transaction
/// grows with the number of patients: a receipt's participants are staged in as many
/// [`Action::StageParticipants`] of at most [`MAX_STAGED_PER_TX`] each as they need.
pub const MAX_SIGNED_TX_LEN: usize = 4 * 1024 * 1024;
/// Most participants one [`Action::StageParticipants`] carries (1 MiB of account ids).
pub const MAX_STAGED_PER_TX: usize = 32_768;
/// Longest listing id, in bytes.
pub const MAX_LISTING_ID_LEN: usize = 64;
/// Most listings one order may name.
pub const MAX_LISTINGS_PER_ORDER: usize = 64;
/// Longest an order may stay open, in seconds after the block that records it (24 h). An
/// order holds its ε reserved on every listing it names until its receipt, refund or
/// cancellation; a bounded life keeps a buyer from locking listings' budgets for years.
pub const MAX_ORDER_LIFETIME_SECS: u64 = 86_400;

pub use cohortex_types::ids::{AccountId, ListingId, OrderId, Purpose, ReceiptId, Role, TxId};

/// How the shares of a listing are paid out.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub enum Compensation {
    /// Each participant's share goes to the destination named in their consent.
    Payment,
    /// Every share goes to this fund account, whatever the consents say.
    Donation {
        /// The fund account (role [`Role::Fund`]).
        fund: AccountId,
    },
}

/// Where a patient's share goes, as chosen in the consent.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub enum PayoutChoice {
    /// Paid to the patient's own account.
    ToPatient,
    /// Donated to this fund account (role [`Role::Fund`]).
    DonateTo {
        /// The fund account.
        fund: AccountId,
    },
}

/// The terms of a listing that its owner may change.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct ListingTerms {
    /// Credits charged per query (split among the contributing participants).
    pub price_per_query: u64,
    /// Purposes the listing may be queried for.
    pub allowed_purposes: BTreeSet<Purpose>,
    /// Fewest participants a query over the listing must include.
    pub min_cohort_size: u32,
    /// Total privacy budget of the dataset, in micro-epsilon (ε · 10⁶).
    pub epsilon_budget_micro: u64,
    /// Most ε one order may spend on the listing, in micro-epsilon: the cap on the privacy
    /// loss of any single release (at least 1, at most the budget). The budget bounds the
    /// total; this keeps one buyer from spending it all on one nearly noiseless answer.
    pub max_epsilon_per_order_micro: u64,
    /// Payment to participants or donation to a fund.
    pub compensation: Compensation,
}

/// What one listing's participants contributed to a computed query.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct ListingContribution {
    /// The listing.
    pub listing: ListingId,
    /// Privacy budget spent on this listing, in micro-epsilon (at most the order's request).
    pub epsilon_debited_micro: u64,
    /// Every consenting participant whose contribution was accepted, in strictly ascending
    /// order. Every consenting participant contributes (a zero when they do not match), so this
    /// list reveals consent, which is public, and not cohort membership.
    ///
    /// Empty in a receipt whose participants for this listing were staged on the ledger
    /// beforehand ([`Action::StageParticipants`]): the ledger then reads them from its state,
    /// and the attestation is checked over the staged list, so the receipt stays small however
    /// many took part.
    pub participants: Vec<AccountId>,
    /// The vault's public capacity the node proved its contribution against (the bound on
    /// its rows).
    pub capacity: u64,
    /// [`crate::hash::contribution_hash`] of the node's contribution.
    pub contribution_hash: Hash32,
    /// The listing owner's Ed25519 signature over [`ListingContribution::attestation_digest`]:
    /// the node, not the market, vouches for who took part, its capacity and what it sent.
    pub attestation: Vec<u8>,
}

/// What a node's attestation vouches for: the two are signed under different labels, so one
/// can never be passed off as the other.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AttestationKind {
    /// An encrypted, range-proven aggregate contribution (`RecordCosignedReceipt`).
    Contribution,
    /// A noisy count under a recruiter's TFHE key (`RecordFeasibility`).
    Feasibility,
}

impl AttestationKind {
    /// The domain label.
    pub fn label(self) -> &'static str {
        match self {
            AttestationKind::Contribution => LABEL_ATTESTATION,
            AttestationKind::Feasibility => LABEL_FEASIBILITY_ATTESTATION,
        }
    }
}

impl ListingContribution {
    /// What the listing's owner signs: the chain, the order and its query, and every field of
    /// this contribution but the signature.
    pub fn attestation_digest(
        &self,
        chain_id: &Hash32,
        order: &OrderId,
        query_hash: &Hash32,
    ) -> Hash32 {
        self.attestation_digest_as(AttestationKind::Contribution, chain_id, order, query_hash)
    }

    /// [`ListingContribution::attestation_digest`] under `kind`'s label.
    pub fn attestation_digest_as(
        &self,
        kind: AttestationKind,
        chain_id: &Hash32,
        order: &OrderId,
        query_hash: &Hash32,
    ) -> Hash32 {
        let mut hasher = crate::hash::TaggedHasher::new(kind.label());
        hasher.update_part(chain_id.as_bytes());
        hasher.update_part(order.0 .0.as_bytes());
        hasher.update_part(query_hash.as_bytes());
        hasher.update_part(self.listing.0.as_bytes());
        hasher.update_part(&self.epsilon_debited_micro.to_be_bytes());
        hasher.update_part(&self.capacity.to_be_bytes());
        hasher.update_part(&(self.participants.len() as u64).to_be_bytes());
        for participant in &self.participants {
            hasher.update_part(&participant.0);
        }
        hasher.update_part(self.contribution_hash.as_bytes());
        hasher.finalize()
    }

    /// Signs the attestation with the listing owner's key.
    pub fn attest(
        &mut self,
        owner: &SigningKey,
        chain_id: &Hash32,
        order: &OrderId,
        query_hash: &Hash32,
    ) {
        self.attest_as(
            AttestationKind::Contribution,
            owner,
            chain_id,
            order,
            query_hash,
        );
    }

    /// Signs the attestation of `kind` with the listing owner's key.
    pub fn attest_as(
        &mut self,
        kind: AttestationKind,
        owner: &SigningKey,
        chain_id: &Hash32,
        order: &OrderId,
        query_hash: &Hash32,
    ) {
        let digest = self.attestation_digest_as(kind, chain_id, order, query_hash);
        self.attestation = owner.sign(digest.as_bytes()).to_bytes().to_vec();
    }

    /// Whether the attestation is `owner`'s signature (strict Ed25519) over the digest.
    pub fn attested_by(
        &self,
        owner: &VerifyingKey,
        chain_id: &Hash32,
        order: &OrderId,
        query_hash: &Hash32,
    ) -> bool {
        self.attested_as(
            AttestationKind::Contribution,
            owner,
            chain_id,
            order,
            query_hash,
        )
    }

    /// Whether the attestation is `owner`'s signature of `kind` over the digest.
    pub fn attested_as(
        &self,
        kind: AttestationKind,
        owner: &VerifyingKey,
        chain_id: &Hash32,
        order: &OrderId,
        query_hash: &Hash32,
    ) -> bool {
        let Ok(bytes) = <[u8; 64]>::try_from(self.attestation.as_slice()) else {
            return false;
        };
        let digest = self.attestation_digest_as(kind, chain_id, order, query_hash);
        owner
            .verify_strict(digest.as_bytes(), &Signature::from_bytes(&bytes))
            .is_ok()
    }
}

/// The hashes that describe a computed query.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct QueryReceipt {
    /// The order this receipt completes.
    pub order: OrderId,
    /// Hash of the query text (must equal the order's).
    pub query_hash: Hash32,
    /// Merkle root of the accepted (encrypted, proven) contributions.
    pub contributions_root: Hash32,
    /// Hash of the proofs (range proofs, decryption-share proofs).
    pub proofs_hash: Hash32,
    /// Hash of the released (re-encrypted) result.
    pub result_hash: Hash32,
    /// One entry per listing of the order, in the order's listing order.
    pub listings: Vec<ListingContribution>,
}

impl QueryReceipt {
    /// The receipt's postcard encoding: the bytes a `RecordCosignedReceipt` transaction
    /// carries, and what the coordinator sends members to co-sign.
    pub fn to_bytes(&self) -> Vec<u8> {
        match postcard::to_stdvec(self) {
            Ok(bytes) => bytes,
            // Serialising into a Vec cannot fail for these types.
            Err(error) => unreachable!("receipt serialisation failed: {error}"),
        }
    }

    /// Decodes [`QueryReceipt::to_bytes`], refusing trailing bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TxError> {
        match postcard::take_from_bytes(bytes) {
            Ok((receipt, [])) => Ok(receipt),
            Ok((_, trailing)) => Err(TxError::Malformed(format!(
                "{} trailing bytes after the receipt",
                trailing.len()
            ))),
            Err(error) => Err(TxError::Malformed(format!("receipt: {error}"))),
        }
    }

    /// What a committee member signs to vouch for the receipt: the chain and every field of
    /// the receipt (its postcard encoding, the same bytes the transaction carries).
    pub fn cosignature_digest(&self, chain_id: &Hash32) -> Hash32 {
        tagged_hash(
            LABEL_RECEIPT_COSIGNATURE,
            &[chain_id.as_bytes(), &self.to_bytes()],
        )
    }

    /// Member `member`'s co-signature of the receipt, with the member's account key.
    pub fn cosign(&self, member: u16, key: &SigningKey, chain_id: &Hash32) -> ReceiptCosignature {
        let digest = self.cosignature_digest(chain_id);
        ReceiptCosignature {
            member,
            signature: key.sign(digest.as_bytes()).to_bytes().to_vec(),
        }
    }

    /// Whether `signature` is `key`'s co-signature (strict Ed25519) of the receipt.
    pub fn cosigned_by(&self, key: &VerifyingKey, chain_id: &Hash32, signature: &[u8]) -> bool {
        let Ok(bytes) = <[u8; 64]>::try_from(signature) else {
            return false;
        };
        let digest = self.cosignature_digest(chain_id);
        key.verify_strict(digest.as_bytes(), &Signature::from_bytes(&bytes))
            .is_ok()
    }
}

/// Longest trial id, in bytes.
pub const MAX_TRIAL_ID_LEN: usize = 64;
/// Longest trial summary, in bytes.
pub const MAX_TRIAL_SUMMARY_LEN: usize = 4096;
/// Largest encrypted criteria a trial may carry, in bytes.
pub const MAX_TRIAL_CRITERIA_LEN: usize = 1024 * 1024;
/// Most listings a trial may be posted to.
pub const MAX_TRIAL_LISTINGS: usize = 64;
/// Most replies one trial records.
pub const MAX_TRIAL_REPLIES: usize = 100_000;
/// Longest a trial stays open, in seconds (a year).
pub const MAX_TRIAL_DURATION_SECS: u64 = 366 * 86_400;

/// A clinical trial posted for recruitment ([`Action::PostTrial`]).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct TrialPosting {
    /// The trial's id, unique on the ledger: 1 to [`MAX_TRIAL_ID_LEN`] bytes of ASCII
    /// letters, digits, `.`, `-` and `_`.
    pub trial: String,
    /// What patients read before they accept (1 to [`MAX_TRIAL_SUMMARY_LEN`] bytes).
    pub summary: String,
    /// The recruiter's X25519 public key: accepting patients seal their contact to it.
    pub contact_key: [u8; 32],
    /// Fingerprint of the recruiter's TFHE evaluation key the criteria are encrypted under.
    pub evaluation_key: [u8; 32],
    /// The encrypted criteria (the `EncryptedCriteria` protobuf message), which each node
    /// reads from its own replica of the ledger; at most [`MAX_TRIAL_CRITERIA_LEN`] bytes.
    pub criteria: Vec<u8>,
    /// Listings whose consenting patients are invited (distinct, each allowing
    /// trial recruitment).
    pub listings: Vec<ListingId>,
    /// Block time after which no reply is recorded.
    pub expires_at: u64,
}

/// What a patient signs to accept a trial's invitation: the chain, the trial, the listing
/// holding their record, their sealed contact, the key it is sealed under and when.
pub fn trial_acceptance_digest(
    chain_id: &Hash32,
    trial: &str,
    listing: &ListingId,
    sealed_contact: &[u8],
    psk: &[u8; 32],
    signed_at: u64,
) -> Hash32 {
    tagged_hash(
        LABEL_TRIAL_ACCEPTANCE,
        &[
            chain_id.as_bytes(),
            trial.as_bytes(),
            listing.0.as_bytes(),
            sealed_contact,
            psk,
            &signed_at.to_be_bytes(),
        ],
    )
}

/// The hash of one trial reply's content: the sealed contact and the gated key.
pub fn trial_reply_hash(
    trial: &str,
    listing: &ListingId,
    sealed_contact: &[u8],
    gated_key: &[u8],
) -> Hash32 {
    tagged_hash(
        LABEL_TRIAL_REPLY_CONTENT,
        &[
            trial.as_bytes(),
            listing.0.as_bytes(),
            sealed_contact,
            gated_key,
        ],
    )
}

/// What a listing's owner signs to vouch that a reply came from a consenting patient of its
/// listing ([`Action::RecordTrialReply`]).
pub fn trial_reply_digest(
    chain_id: &Hash32,
    trial: &str,
    listing: &ListingId,
    reply_hash: &Hash32,
) -> Hash32 {
    tagged_hash(
        LABEL_TRIAL_REPLY,
        &[
            chain_id.as_bytes(),
            trial.as_bytes(),
            listing.0.as_bytes(),
            reply_hash.as_bytes(),
        ],
    )
}

/// Whether `signature` is `key`'s signature (strict Ed25519) over `digest`.
pub fn signed_by(key: &VerifyingKey, digest: &Hash32, signature: &[u8]) -> bool {
    let Ok(bytes) = <[u8; 64]>::try_from(signature) else {
        return false;
    };
    key.verify_strict(digest.as_bytes(), &Signature::from_bytes(&bytes))
        .is_ok()
}

/// A key-committee member's signature over a receipt
/// ([`QueryReceipt::cosignature_digest`]): the member checked the receipt against what it
/// verified and summed itself, and vouches for it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct ReceiptCosignature {
    /// The member's 1-based index in the committee registered on the ledger.
    pub member: u16,
    /// Ed25519 signature by that member's account key.
    pub signature: Vec<u8>,
}

/// The smallest threshold a committee may be registered with: with t = 1 one member alone
/// could decrypt, and one signature alone could record a receipt.
pub const MIN_COMMITTEE_THRESHOLD: u16 = 2;
/// Most members a committee may have.
pub const MAX_COMMITTEE_MEMBERS: usize = 64;

/// Longest result key an order may carry, in bytes (a CXZK-encoded public key is 38).
pub const MAX_RESULT_KEY_LEN: usize = 64;

/// The action a transaction asks for.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub enum Action {
    /// Registers `account` with `role`. Patients and buyers register themselves (the signer is
    /// the account); every other role is admitted by an issuer.
    RegisterAccount {
        /// The new account's key.
        account: AccountId,
        /// Its role.
        role: Role,
    },
    /// Publishes a dataset listing (signer: compute node or patient, who becomes the owner).
    PublishListing {
        /// Unique id.
        listing: ListingId,
        /// Hash of the dataset's schema manifest.
        schema_hash: Hash32,
        /// Terms.
        terms: ListingTerms,
    },
    /// Replaces the terms of an active listing (signer: its owner).
    UpdateListing {
        /// The listing.
        listing: ListingId,
        /// New terms.
        terms: ListingTerms,
    },
    /// Withdraws a listing; no order may name it afterwards (signer: its owner).
    WithdrawListing {
        /// The listing.
        listing: ListingId,
    },
    /// Grants consent to use `patient`'s records in `listing` for `purpose` (signer: the patient).
    GrantConsent {
        /// The patient whose consent this is; must be the signer.
        patient: AccountId,
        /// The listing.
        listing: ListingId,
        /// The purpose.
        purpose: Purpose,
        /// Block time (unix seconds) from which the consent no longer holds.
        expires_at: Option<u64>,
        /// Where the patient's shares go.
        payout: PayoutChoice,
        /// The patient's personal privacy limit, in micro-epsilon: a query may use the records
        /// only while the ε spent on them in this listing, over every purpose and including the
        /// query's own, stays within it. `None` leaves only the listing's budget.
        epsilon_limit_micro: Option<u64>,
    },
    /// Revokes the signer's consent for `listing` and `purpose`.
    RevokeConsent {
        /// The listing.
        listing: ListingId,
        /// The purpose.
        purpose: Purpose,
    },
    /// Credits `amount` to `to` (signer: issuer).
    Deposit {
        /// Credited account.
        to: AccountId,
        /// Credits.
        amount: u64,
    },
    /// Orders a query; the price of every listing moves from the buyer into escrow and ε is
    /// reserved on every listing (signer: buyer). The order id is this transaction's id.
    OrderQuery {
        /// Hash of the query text.
        query_hash: Hash32,
        /// Listings queried (distinct).
        listings: Vec<ListingId>,
        /// Purpose of the query.
        purpose: Purpose,
        /// ε requested per listing, in micro-epsilon.
        epsilon_micro: u64,
        /// Block time after which the buyer may take the escrow back if no receipt exists.
        expires_at: u64,
    },
    /// Records the receipt of a computed query (signer: committee member). The receipt id is
    /// this transaction's id.
    RecordReceipt(QueryReceipt),
    /// Pays out the escrow of a computed order (signer: its buyer or a committee member).
    Settle {
        /// The order.
        order: OrderId,
        /// The receipt it is settled against.
        receipt: ReceiptId,
    },
    /// Returns the escrow of an order without a receipt to its buyer: by the buyer once the
    /// order has expired, or by a committee member when the computation failed. Once a
    /// release was committed ([`Action::CommitRelease`]) its ε stays spent.
    Refund {
        /// The order.
        order: OrderId,
    },
    /// Fixes, before any key switch, whose noise shares the release of `order` sums and which
    /// members key-switch it (signer: committee member). At most one per order, and members
    /// key-switch only the committed set, so an order is released once: two quorums cannot
    /// each open the sum with different noise.
    CommitRelease {
        /// The open order.
        order: OrderId,
        /// Members whose noise shares are summed, strictly ascending.
        noise_members: Vec<u16>,
        /// Members who key-switch the release, strictly ascending, each in `noise_members`.
        quorum: Vec<u16>,
    },
    /// Orders a query whose release is re-encrypted to `result_key` (signer: buyer). The same
    /// rules and effect as [`Action::OrderQuery`], and the key is recorded with the order:
    /// members key-switch the released values to this key only, so neither the market nor
    /// anyone else can have them re-encrypted to themselves. Clients place orders with this
    /// action; `OrderQuery` stays for ledgers written before it, and its orders cannot be
    /// released.
    OrderQueryFor {
        /// Hash of the query text.
        query_hash: Hash32,
        /// Listings queried (distinct).
        listings: Vec<ListingId>,
        /// Purpose of the query.
        purpose: Purpose,
        /// ε requested per listing, in micro-epsilon.
        epsilon_micro: u64,
        /// Block time after which the buyer may take the escrow back if no receipt exists.
        expires_at: u64,
        /// The buyer's result key, CXZK-encoded (`zk::PublicKey`), at most
        /// [`MAX_RESULT_KEY_LEN`] bytes; the market and the members check that it decodes.
        result_key: Vec<u8>,
    },
    /// Registers the key committee (signer: issuer; once per ledger). Member `i` (1-based) is
    /// `members[i - 1]`, each a registered compute node; `threshold` members must co-sign
    /// every receipt from then on. Each node checks that the committee on the ledger is the
    /// one pinned in its own configuration before it computes anything.
    RegisterCommittee {
        /// Co-signatures a receipt needs (and members a release needs), at least 2.
        threshold: u16,
        /// The members' accounts, in member order, distinct.
        members: Vec<AccountId>,
    },
    /// Records the receipt of a computed query, co-signed by at least the registered
    /// committee's threshold of its members (signer: committee member). Once a committee is
    /// registered this is the only way to record a receipt.
    RecordCosignedReceipt {
        /// The receipt, under the same rules as [`Action::RecordReceipt`].
        receipt: QueryReceipt,
        /// Member co-signatures, strictly ascending by member.
        cosignatures: Vec<ReceiptCosignature>,
    },
    /// Records the receipt of a blind feasibility search (signer: committee member): each
    /// listing's node computed, noised and released its own count under the recruiter's TFHE
    /// key, and signed its part under the feasibility label. The order's purpose must be
    /// trial feasibility; every other rule is [`Action::RecordReceipt`]'s.
    RecordFeasibility(QueryReceipt),
    /// Posts a clinical trial for recruitment (signer: buyer). Patients who consent to
    /// trial recruitment on one of its listings see the invitation; a node answers a
    /// patient's acceptance with the patient's sealed contact and the key that opens it,
    /// gated under TFHE by whether the patient meets the encrypted criteria.
    PostTrial(TrialPosting),
    /// Records one reply to a trial (signer: committee member, the market): a listing's node
    /// attests that a patient of its listing who consents to trial recruitment accepted.
    /// The ledger holds the reply's hash only, never who replied.
    RecordTrialReply {
        /// The trial.
        trial: String,
        /// The listing whose node computed the reply.
        listing: ListingId,
        /// [`trial_reply_hash`] of the reply.
        reply_hash: Hash32,
        /// The listing owner's signature over [`trial_reply_digest`].
        attestation: Vec<u8>,
    },
    /// Cancels an open order before its release is committed (signer: its buyer): the
    /// escrow goes back to the buyer and the ε reserved on each listing is freed, since
    /// nothing was released. Once a release is committed, only a receipt or a refund ends it.
    /// A feasibility search cannot be cancelled: its nodes answer without a committed
    /// release, so its counts may be out.
    CancelOrder {
        /// The order.
        order: OrderId,
    },
    /// Stages the next participants of one listing of an open order for its receipt (signer:
    /// committee member). A listing's participants are staged in ascending chunks of at most
    /// [`MAX_STAGED_PER_TX`], each after every one staged before, and each holding an active
    /// consent to the listing for the order's purpose. A receipt whose part for the listing
    /// names no participants then stands for the staged list: the listing owner's attestation
    /// is checked over it and every rule of the receipt applies to it, so no transaction and
    /// no message grows with the number of patients. The staged lists go when the order's
    /// receipt is recorded or the order is refunded or cancelled.
    StageParticipants {
        /// The open order.
        order: OrderId,
        /// One of the order's listings.
        listing: ListingId,
        /// The next participants, strictly ascending, each after the last one staged.
        participants: Vec<AccountId>,
    },
    /// [`Action::CommitRelease`] that also fixes who is in the release (signer: committee
    /// member): `listings` holds each of the order's listings' parts, in order, naming no
    /// participants, each with its node's attestation, which the ledger checks over the
    /// participants staged for it. A refund after this commitment debits exactly those
    /// participants' personal budgets, where a refund after a plain `CommitRelease` must debit
    /// everyone who could have been in the cohort. The coordinator commits releases with this
    /// action; `CommitRelease` stays for ledgers written before it.
    CommitAttestedRelease {
        /// The open order.
        order: OrderId,
        /// Members whose noise shares are summed, strictly ascending.
        noise_members: Vec<u16>,
        /// Members who key-switch the release, strictly ascending, each in `noise_members`.
        quorum: Vec<u16>,
        /// Each listing's part, as its node attested it, with no participants named.
        listings: Vec<ListingContribution>,
    },
}

impl Action {
    /// Whether a party may submit this action to the ledger directly (`Ledger.SubmitTransaction`
    /// or `Consent`), rather than only through the Market service. Orders, listings and trial
    /// postings go through the market, which checks what the ledger cannot (the SQL compiles
    /// against the manifests, the manifest hashes to `schema_hash`, the criteria decode) and
    /// starts the work; an order placed on the ledger alone would only hold escrow and ε
    /// reserved until it expires.
    pub fn submitted_directly(&self) -> bool {
        !matches!(
            self,
            Action::OrderQuery { .. }
                | Action::OrderQueryFor { .. }
                | Action::PublishListing { .. }
                | Action::UpdateListing { .. }
                | Action::PostTrial(_)
        )
    }
}

/// The signed part of a transaction.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Debug)]
pub struct TxBody {
    /// Chain id of the ledger the transaction is meant for.
    pub chain_id: Hash32,
    /// Account whose key signs.
    pub signer: AccountId,
    /// Per-account sequence number, starting at 0; each accepted transaction uses the next one.
    pub nonce: u64,
    /// What to do.
    pub action: Action,
}

impl TxBody {
    /// Encodes, signs with `key` and returns the envelope bytes.
    ///
    /// The caller must pass the key of `self.signer`; a mismatch yields a transaction that the
    /// ledger refuses with [`TxError::BadSignature`].
    pub fn sign(&self, key: &SigningKey) -> Result<SignedTx, TxError> {
        let body = postcard::to_stdvec(self).map_err(|e| TxError::Malformed(e.to_string()))?;
        let digest = tagged_hash(LABEL_TX_SIGNATURE, &[&body]);
        let signature = key.sign(digest.as_bytes());
        let mut bytes = Vec::with_capacity(1 + 64 + body.len());
        bytes.push(SIGNED_TX_VERSION);
        bytes.extend_from_slice(&signature.to_bytes());
        bytes.extend_from_slice(&body);
        Ok(SignedTx { bytes })
    }
}

/// The envelope bytes of `action` signed by `key` (as its own account) at `nonce` on
/// `chain_id`: what clients submit.
pub fn sign_action(
    key: &SigningKey,
    chain_id: Hash32,
    nonce: u64,
    action: Action,
) -> Result<Vec<u8>, TxError> {
    let body = TxBody {
        chain_id,
        signer: AccountId::of(key),
        nonce,
        action,
    };
    Ok(body.sign(key)?.bytes)
}

/// The envelope bytes of a signed transaction, as stored and as hashed into the log.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedTx {
    /// `0x01 || signature(64) || postcard(TxBody)`.
    pub bytes: Vec<u8>,
}

impl SignedTx {
    /// The transaction id.
    pub fn id(&self) -> TxId {
        txid_of(&self.bytes)
    }
}

/// The id of envelope bytes.
pub fn txid_of(bytes: &[u8]) -> TxId {
    TxId(tagged_hash(LABEL_TXID, &[bytes]))
}

/// A transaction whose envelope parsed; its signature is not yet checked.
#[derive(Clone, Debug)]
pub struct UncheckedTx {
    bytes: Vec<u8>,
    signature: Signature,
    body: TxBody,
    key: VerifyingKey,
    digest: Hash32,
}

impl UncheckedTx {
    /// Parses envelope bytes (size checked before anything else).
    pub fn parse(bytes: Vec<u8>) -> Result<Self, TxError> {
        if bytes.len() > MAX_SIGNED_TX_LEN {
            return Err(TxError::TooLarge {
                len: bytes.len(),
                max: MAX_SIGNED_TX_LEN,
            });
        }
        let Some((&version, rest)) = bytes.split_first() else {
            return Err(TxError::Malformed("empty transaction".into()));
        };
        if version != SIGNED_TX_VERSION {
            return Err(TxError::UnsupportedVersion(version));
        }
        if rest.len() < 64 {
            return Err(TxError::Malformed("shorter than a signature".into()));
        }
        let (signature_bytes, body_bytes) = rest.split_at(64);
        let signature = Signature::from_slice(signature_bytes)
            .map_err(|_| TxError::Malformed("signature has the wrong length".into()))?;
        let (body, trailing): (TxBody, &[u8]) = postcard::take_from_bytes(body_bytes)
            .map_err(|e| TxError::Malformed(format!("body: {e}")))?;
        if !trailing.is_empty() {
            return Err(TxError::Malformed(format!(
                "{} trailing bytes after the body",
                trailing.len()
            )));
        }
        let key = body.signer.verifying_key()?;
        let digest = tagged_hash(LABEL_TX_SIGNATURE, &[body_bytes]);
        Ok(UncheckedTx {
            bytes,
            signature,
            body,
            key,
            digest,
        })
    }

    /// The body as parsed, not yet authenticated: for routing only, never to act on.
    pub fn body(&self) -> &TxBody {
        &self.body
    }

    /// The checks of `verify_strict` that a batch equation does not make, on the bytes: `R`
    /// encodes a field element below p and is not of small order, and the key is not of small
    /// order. (A small-order point is one whose y-coordinate is one of the eight torsion
    /// points'; an `R` whose x is zero with its sign bit set, which `verify_strict` also
    /// refuses, has y = ±1 and is among them.)
    fn passes_strict_encoding_checks(&self) -> bool {
        let mut r_y = self.signature.r_bytes().to_owned();
        r_y[31] &= 0x7f;
        is_canonical_field_element(&r_y) && !small_order_ys().contains(&r_y) && !self.key.is_weak()
    }

    /// Checks the signature alone.
    pub fn verify(self) -> Result<VerifiedTx, TxError> {
        self.key
            .verify_strict(self.digest.as_bytes(), &self.signature)
            .map_err(|_| TxError::BadSignature(self.body.signer))?;
        Ok(self.into_verified())
    }

    fn into_verified(self) -> VerifiedTx {
        let id = txid_of(&self.bytes);
        VerifiedTx {
            id,
            bytes: self.bytes,
            body: self.body,
        }
    }
}

/// Parses and verifies many transactions; one result per input, in order.
///
/// Each signature is checked with `verify_strict` (canonical encodings, no small-order keys,
/// cofactorless equation), on every core rayon's pool has. This is the admission rule: the
/// sequencer's CheckTx uses it, and it defines which transactions are valid.
///
/// An auditor replaying blocks that the sequencer already admitted uses the faster
/// [`verify_block`], which gives the same answer for every transaction but those described
/// there.
pub fn verify_all(txs: Vec<Vec<u8>>) -> Vec<Result<VerifiedTx, TxError>> {
    use rayon::prelude::*;
    txs.into_par_iter()
        .map(|bytes| UncheckedTx::parse(bytes)?.verify())
        .collect()
}

/// Signatures checked together in one batch equation by [`verify_block`].
pub const SIGNATURE_BATCH: usize = 256;

/// [`verify_all`] for the transactions of a sequenced block, replayed by an auditor or a
/// replica: one result per input, in order, the signatures checked in batches of
/// [`SIGNATURE_BATCH`] (ed25519-dalek's batch verification, a random linear combination of the
/// verification equations), the batches on every core.
///
/// **When it agrees with [`verify_all`].**
/// * A batch that fails is checked again one signature at a time with `verify_strict`, so every
///   transaction it refuses is one that [`verify_all`] refuses, with the same error.
/// * Before a signature joins a batch, the checks of `verify_strict` that the batch equation
///   does not make are made on its bytes: `R` encodes a field element below p and is not a
///   point of small order, and the key is not of small order (`s` below ℓ is checked by the
///   batch itself). A signature that fails them is checked alone, and refused.
/// * What remains is a signature whose `R` or key is of mixed order (a point of the large
///   subgroup plus a torsion point) and that fails the cofactorless equation only by that
///   torsion. Only the holder of the signing key can make one, and it authenticates that
///   holder all the same; a batch accepts it with probability 1/ord(T) for its torsion
///   point T (up to 1/2, and the holder can grind for a batch that accepts), where
///   `verify_strict` refuses it. The sequencer admits only what `verify_strict` accepts, so such
///   a transaction reaches a block only if the sequencer breaks the rules, and `ledger verify`
///   (which uses [`verify_all`]) then names it.
/// * A forged signature passes a batch with probability below 2⁻¹²⁸.
/// * The batch's coefficients are derived from its contents (a merlin transcript), and batches
///   are cut at fixed positions, so every replica of a block reaches the same verdict.
pub fn verify_block(txs: Vec<Vec<u8>>) -> Vec<Result<VerifiedTx, TxError>> {
    use rayon::prelude::*;
    let parsed: Vec<Result<UncheckedTx, TxError>> =
        txs.into_par_iter().map(UncheckedTx::parse).collect();
    parsed
        .into_par_iter()
        .chunks(SIGNATURE_BATCH)
        .flat_map_iter(verify_batch_of)
        .collect()
}

/// One batch of [`verify_block`]: every signature at once if each passes the strict checks on
/// its bytes and the batch equation holds, else each alone with `verify_strict`.
fn verify_batch_of(
    batch: Vec<Result<UncheckedTx, TxError>>,
) -> impl Iterator<Item = Result<VerifiedTx, TxError>> {
    let candidates: Vec<&UncheckedTx> = batch.iter().filter_map(|tx| tx.as_ref().ok()).collect();
    let all_strict = candidates
        .iter()
        .all(|tx| tx.passes_strict_encoding_checks());
    let messages: Vec<&[u8]> = candidates
        .iter()
        .map(|tx| tx.digest.as_bytes().as_slice())
        .collect();
    let signatures: Vec<Signature> = candidates.iter().map(|tx| tx.signature).collect();
    let keys: Vec<VerifyingKey> = candidates.iter().map(|tx| tx.key).collect();
    let batch_holds =
        all_strict && ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok();
    batch.into_iter().map(move |tx| {
        let tx = tx?;
        if batch_holds {
            Ok(tx.into_verified())
        } else {
            tx.verify()
        }
    })
}

/// The y-coordinates (little-endian, sign bit clear) of the eight points of small order.
fn small_order_ys() -> &'static [[u8; 32]; 8] {
    static YS: std::sync::OnceLock<[[u8; 32]; 8]> = std::sync::OnceLock::new();
    YS.get_or_init(|| {
        curve25519_dalek::constants::EIGHT_TORSION.map(|point| {
            let mut y = point.compress().to_bytes();
            y[31] &= 0x7f;
            y
        })
    })
}

/// Whether the 255 low bits of `y` (little-endian) are below p = 2²⁵⁵ − 19.
fn is_canonical_field_element(y: &[u8; 32]) -> bool {
    !(y[31] & 0x7f == 0x7f && y[1..31].iter().all(|&b| b == 0xff) && y[0] >= 0xed)
}

/// A transaction whose envelope parsed and whose signature verified. Only these reach the state
/// machine.
#[derive(Clone, Debug)]
pub struct VerifiedTx {
    id: TxId,
    bytes: Vec<u8>,
    body: TxBody,
}

impl VerifiedTx {
    /// Transaction id (the Merkle leaf).
    pub fn id(&self) -> TxId {
        self.id
    }

    /// Envelope bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The signed body.
    pub fn body(&self) -> &TxBody {
        &self.body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed() -> (SigningKey, Vec<u8>) {
        let key = SigningKey::from_bytes(&[3; 32]);
        let body = TxBody {
            chain_id: Hash32([1; 32]),
            signer: AccountId::of(&key),
            nonce: 0,
            action: Action::Deposit {
                to: AccountId::of(&key),
                amount: 5,
            },
        };
        let bytes = body.sign(&key).expect("sign").bytes;
        (key, bytes)
    }

    #[test]
    fn envelope_round_trips_and_verifies() {
        let (key, bytes) = signed();
        assert_eq!(bytes[0], SIGNED_TX_VERSION);
        let tx = UncheckedTx::parse(bytes.clone())
            .and_then(UncheckedTx::verify)
            .expect("valid");
        assert_eq!(tx.body().signer, AccountId::of(&key));
        assert_eq!(tx.id(), txid_of(&bytes));
    }

    #[test]
    fn envelope_refuses_trailing_bytes_wrong_version_and_truncation() {
        let (_, bytes) = signed();
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(
            UncheckedTx::parse(trailing),
            Err(TxError::Malformed(_))
        ));
        let mut version = bytes.clone();
        version[0] = 9;
        assert_eq!(
            UncheckedTx::parse(version).err(),
            Some(TxError::UnsupportedVersion(9))
        );
        assert!(UncheckedTx::parse(bytes[..40].to_vec()).is_err());
        assert!(UncheckedTx::parse(Vec::new()).is_err());
        assert!(matches!(
            UncheckedTx::parse(vec![1; MAX_SIGNED_TX_LEN + 1]),
            Err(TxError::TooLarge { .. })
        ));
    }

    /// `count` deposits, each signed by its own key.
    fn deposits(count: u8) -> Vec<(SigningKey, Vec<u8>)> {
        (0..count)
            .map(|i| {
                let key = SigningKey::from_bytes(&[i; 32]);
                let body = TxBody {
                    chain_id: Hash32([1; 32]),
                    signer: AccountId::of(&key),
                    nonce: u64::from(i),
                    action: Action::Deposit {
                        to: AccountId::of(&key),
                        amount: 5,
                    },
                };
                let bytes = body.sign(&key).expect("sign").bytes;
                (key, bytes)
            })
            .collect()
    }

    /// Replaces the signature of `envelope` by one made with the key's own scalar `a` and the
    /// given `R` encoding: s = H(R ‖ A ‖ M)·a, so that [s]B = [k]A and the cofactorless
    /// equation [s]B = R + [k]A holds whenever R is the identity. Only the key's holder can
    /// make it. Returns the envelope and the message it signs.
    fn signed_with_r(key: &SigningKey, envelope: &[u8], r: [u8; 32]) -> (Vec<u8>, Hash32) {
        use sha2::{Digest, Sha512};
        let message = tagged_hash(LABEL_TX_SIGNATURE, &[&envelope[65..]]);
        let k = curve25519_dalek::Scalar::from_bytes_mod_order_wide(
            &Sha512::new()
                .chain_update(r)
                .chain_update(key.verifying_key().as_bytes())
                .chain_update(message.as_bytes())
                .finalize()
                .into(),
        );
        let s = k * key.to_scalar();
        let mut forged = envelope.to_vec();
        forged[1..33].copy_from_slice(&r);
        forged[33..65].copy_from_slice(s.as_bytes());
        (forged, message)
    }

    /// The encoding of the identity (y = 1, x = 0).
    const IDENTITY: [u8; 32] = {
        let mut bytes = [0u8; 32];
        bytes[0] = 1;
        bytes
    };

    fn verdicts(results: Vec<Result<VerifiedTx, TxError>>) -> Vec<Result<TxId, TxError>> {
        results.into_iter().map(|r| r.map(|tx| tx.id())).collect()
    }

    #[test]
    fn batched_check_refuses_exactly_what_one_by_one_refuses() {
        // Three batches, the last one short; refusals in the first and the third.
        let mut envelopes: Vec<Vec<u8>> = deposits(255)
            .into_iter()
            .chain(deposits(255))
            .chain(deposits(100))
            .map(|(_, bytes)| bytes)
            .collect();
        envelopes[3][40] ^= 1; // a signature that does not verify
        envelopes[520][0] = 9; // an unknown envelope version
        envelopes[530][70] ^= 0x80; // a body that no longer matches its signature
        let one_by_one = verdicts(verify_all(envelopes.clone()));
        let batched = verdicts(verify_block(envelopes));
        assert_eq!(batched.len(), 610);
        assert_eq!(batched, one_by_one);
        let refused: Vec<usize> = (0..batched.len())
            .filter(|&i| batched[i].is_err())
            .collect();
        assert_eq!(refused, vec![3, 520, 530]);
        assert!(matches!(batched[3], Err(TxError::BadSignature(_))));
    }

    /// Replaces the signature of transaction `position` of `count` deposits by one with `r`
    /// (see [`signed_with_r`]), asserts that the batch equation alone accepts it, and that
    /// `verify_block` refuses it, as `verify_all` does, and nothing else.
    fn refused_in_a_batch_though_the_equation_accepts(r: [u8; 32], count: u8, position: usize) {
        let mut txs = deposits(count);
        let (key, envelope) = txs.remove(position);
        let (forged, message) = signed_with_r(&key, &envelope, r);
        let signature = Signature::from_slice(&forged[1..65]).expect("64 bytes");
        assert!(ed25519_dalek::verify_batch(
            &[message.as_bytes().as_slice()],
            &[signature],
            &[key.verifying_key()]
        )
        .is_ok());
        let mut envelopes: Vec<Vec<u8>> = txs.into_iter().map(|(_, bytes)| bytes).collect();
        envelopes.insert(position, forged);
        let batched = verdicts(verify_block(envelopes.clone()));
        assert_eq!(batched, verdicts(verify_all(envelopes)));
        assert_eq!(
            batched[position],
            Err(TxError::BadSignature(AccountId::of(&key)))
        );
        assert_eq!(
            batched.iter().filter(|r| r.is_ok()).count(),
            usize::from(count) - 1
        );
    }

    #[test]
    fn signature_with_a_small_order_r_is_refused_in_a_batch() {
        // The batch equation alone would take it: the check on R's bytes is what refuses it.
        refused_in_a_batch_though_the_equation_accepts(IDENTITY, 12, 5);
    }

    #[test]
    fn signature_with_a_non_canonical_r_is_refused_in_a_batch() {
        // y = p + 1, which decodes to the identity: not canonical.
        let mut non_canonical = [0xffu8; 32];
        non_canonical[0] = 0xee;
        non_canonical[31] = 0x7f;
        refused_in_a_batch_though_the_equation_accepts(non_canonical, 4, 0);
    }

    #[test]
    fn field_elements_at_and_above_p_are_not_canonical() {
        let p_minus_one = {
            let mut y = [0xffu8; 32];
            y[0] = 0xec;
            y[31] = 0x7f;
            y
        };
        assert!(is_canonical_field_element(&p_minus_one));
        let mut p = p_minus_one;
        p[0] = 0xed;
        assert!(!is_canonical_field_element(&p));
        assert!(!is_canonical_field_element(&[0xffu8; 32]));
        assert!(is_canonical_field_element(&IDENTITY));
    }
}
