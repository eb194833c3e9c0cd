//! Ids and the closed sets every party names: accounts, transactions, orders, receipts,
//! listings, roles and purposes.

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use std::fmt;
use thiserror::Error;

use crate::hash::Hash32;

/// An account id that is not a valid, non-weak ed25519 key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("account key {0} is not a valid ed25519 key")]
pub struct InvalidKey(pub AccountId);

/// An account: its ed25519 verifying key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AccountId(pub [u8; 32]);

impl AccountId {
    /// The account of a signing key.
    pub fn of(key: &SigningKey) -> Self {
        AccountId(key.verifying_key().to_bytes())
    }

    /// Parses the key; refuses bytes that are not a point and small-order ("weak") keys, for
    /// which batch and single verification could disagree.
    pub fn verifying_key(&self) -> Result<VerifyingKey, InvalidKey> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| InvalidKey(*self))?;
        if key.is_weak() {
            return Err(InvalidKey(*self));
        }
        Ok(key)
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountId({})", hex::encode(self.0))
    }
}

/// The id of a transaction: `tagged_hash("cohortex/ledger/txid/v1", [signed bytes])`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub struct TxId(pub Hash32);

impl AsRef<[u8]> for TxId {
    fn as_ref(&self) -> &[u8] {
        &self.0 .0
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An order is named by the id of the transaction that placed it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub struct OrderId(pub TxId);

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A query receipt is named by the id of the transaction that recorded it.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub struct ReceiptId(pub TxId);

impl fmt::Display for ReceiptId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The unique id of a dataset listing, chosen by its owner (1 to 64 bytes).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub struct ListingId(pub String);

impl ListingId {
    /// Builds a listing id.
    pub fn new(id: impl Into<String>) -> Self {
        ListingId(id.into())
    }
}

impl fmt::Display for ListingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an account may do.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub enum Role {
    /// Owns records, lists them, grants and revokes consent, receives payouts.
    Patient,
    /// Deposits are spent by buyers on query orders.
    Buyer,
    /// Hosts vaults and lists datasets on behalf of the patients it hosts.
    ComputeNode,
    /// Member of the key committee: records query receipts, settles and fails orders.
    CommitteeMember,
    /// Reads and checks the ledger; takes no market action.
    Auditor,
    /// Issues credits (deposits) and admits accounts with privileged roles.
    Issuer,
    /// Receives donated shares.
    Fund,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Role::Patient => "patient",
            Role::Buyer => "buyer",
            Role::ComputeNode => "compute node",
            Role::CommitteeMember => "committee member",
            Role::Auditor => "auditor",
            Role::Issuer => "issuer",
            Role::Fund => "fund",
        };
        f.write_str(name)
    }
}

/// The purpose a consent or a query is scoped to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Debug)]
pub enum Purpose {
    /// Non-commercial research by an academic institution.
    AcademicResearch,
    /// Research by a commercial firm (pharma, AI).
    CommercialResearch,
    /// Counting a cohort to decide whether a trial is feasible.
    TrialFeasibility,
    /// Finding participants for a clinical trial.
    TrialRecruitment,
}

/// The wire name of a purpose (`academic_research`, ...).
pub const fn purpose_name(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::AcademicResearch => "academic_research",
        Purpose::CommercialResearch => "commercial_research",
        Purpose::TrialFeasibility => "trial_feasibility",
        Purpose::TrialRecruitment => "trial_recruitment",
    }
}

/// Every purpose with its wire name, in the purposes' order.
pub const PURPOSE_NAMES: [(Purpose, &str); 4] = [
    (
        Purpose::AcademicResearch,
        purpose_name(Purpose::AcademicResearch),
    ),
    (
        Purpose::CommercialResearch,
        purpose_name(Purpose::CommercialResearch),
    ),
    (
        Purpose::TrialFeasibility,
        purpose_name(Purpose::TrialFeasibility),
    ),
    (
        Purpose::TrialRecruitment,
        purpose_name(Purpose::TrialRecruitment),
    ),
];

/// The prefix of the URI, in a certificate's subject alternative names, that binds the
/// certificate to one account: `cohortex:account:` and the account's key in hex. The
/// authority writes it (`cohortex_proto::certs`) and servers read it (`crate::auth`).
pub const CERTIFICATE_ACCOUNT_PREFIX: &str = "cohortex:account:";
