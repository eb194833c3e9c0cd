//! Every domain-separation label a party signs or hashes under. A digest or signature made
//! under one label can never be replayed as one made under another; a label changes its
//! version suffix whenever the bytes under it change meaning. `docs/ledger.md` lists what each
//! one covers.

/// Label of the transaction-signature digest.
pub const LABEL_TX_SIGNATURE: &str = "cohortex/ledger/tx-signature/v1";
/// Label of a transaction id (also the Merkle leaf data).
pub const LABEL_TXID: &str = "cohortex/ledger/txid/v1";
/// Label of the digest the sequencer signs for a block header (the signed tree head).
pub const LABEL_TREE_HEAD: &str = "cohortex/ledger/tree-head/v1";
/// Label of a block hash (header and head signature), which the next block links to.
pub const LABEL_BLOCK: &str = "cohortex/ledger/block/v1";
/// Label of the chain id, the hash of the genesis configuration.
pub const LABEL_GENESIS: &str = "cohortex/ledger/genesis/v1";
/// Label of the state hash committed in every block header.
pub const LABEL_STATE: &str = "cohortex/ledger/state/v1";

/// Domain label of query hashes (an order's `query_hash` is this hash of the SQL text).
pub const LABEL_QUERY: &str = "cohortex/market/query/v1";
/// Domain label of manifest hashes (a listing's `schema_hash`).
pub const LABEL_MANIFEST: &str = "cohortex/market/manifest/v1";
/// Domain label of a listing's contribution hash.
pub const LABEL_CONTRIBUTION: &str = "cohortex/market/contribution/v1";
/// Domain label of a receipt's `contributions_root`.
pub const LABEL_CONTRIBUTIONS: &str = "cohortex/market/contributions/v2";

/// Domain label of a listing owner's attestation of an aggregate contribution.
pub const LABEL_ATTESTATION: &str = "cohortex/market/listing-attestation/v1";
/// Domain label of a listing owner's attestation of a blind feasibility count.
pub const LABEL_FEASIBILITY_ATTESTATION: &str = "cohortex/market/feasibility-attestation/v1";
/// Domain label of a committee member's co-signature of a receipt.
pub const LABEL_RECEIPT_COSIGNATURE: &str = "cohortex/market/receipt-cosignature/v1";
/// Domain label of a patient's acceptance of a trial invitation (signed by the patient, read
/// only by the node that holds the patient's record).
pub const LABEL_TRIAL_ACCEPTANCE: &str = "cohortex/market/trial-acceptance/v1";
/// Domain label of a node's attestation of one trial reply.
pub const LABEL_TRIAL_REPLY: &str = "cohortex/market/trial-reply/v1";
/// Domain label of a trial reply's content hash.
pub const LABEL_TRIAL_REPLY_CONTENT: &str = "cohortex/market/trial-reply-content/v1";

/// Domain label of a key-ceremony message a committee member signs (a broadcast, its
/// complaints, its justifications, its confirmation), over the chain, session and round.
pub const LABEL_DKG_MESSAGE: &str = "cohortex/dkg/message/v1";
/// Domain label of a key-ceremony transcript digest: what every member echoes, so that no
/// member finishes on messages the others did not see.
pub const LABEL_DKG_TRANSCRIPT: &str = "cohortex/dkg/transcript/v1";

/// Domain label of a receipt's `proofs_hash` (over the contributions' range proofs).
pub const LABEL_PROOFS: &str = "cohortex/market/proofs/v1";
/// Domain label of a receipt's `result_hash` (over the result released to the buyer).
pub const LABEL_RESULT: &str = "cohortex/market/result/v1";
/// Domain label of a feasibility order's `query_hash`: the criteria hash.
pub const LABEL_FEASIBILITY_CRITERIA: &str = "cohortex/market/feasibility-criteria/v1";
/// Domain label of a recruiter's TFHE evaluation-key fingerprint.
pub const LABEL_EVALUATION_KEY: &str = "cohortex/fhe/evaluation-key/v1";

/// HPKE `info` of a DKG share sealed to its recipient's account key.
pub const LABEL_DKG_SHARE_HPKE: &str = "cohortex/dkg-share/v1";
/// HPKE `info` of a trial contact sealed to the recruiter.
pub const LABEL_TRIAL_CONTACT_HPKE: &str = "cohortex/trial-contact/v1";
/// HPKE `info` of a patient's trial acceptance sealed to the node that holds their record.
pub const LABEL_TRIAL_ACCEPTANCE_HPKE: &str = "cohortex/trial-acceptance/v1";
/// HPKE `psk_id` of a trial contact's gated pre-shared key.
pub const LABEL_TRIAL_GATED_KEY_PSK: &str = "cohortex/trial-gated-key/v1";

/// Label of request signatures (see [`crate::auth`]).
pub const LABEL_REQUEST: &str = "cohortex/rpc/request/v1";

/// Every label above: none may repeat another.
pub const ALL: &[&str] = &[
    LABEL_TX_SIGNATURE,
    LABEL_TXID,
    LABEL_TREE_HEAD,
    LABEL_BLOCK,
    LABEL_GENESIS,
    LABEL_STATE,
    LABEL_QUERY,
    LABEL_MANIFEST,
    LABEL_CONTRIBUTION,
    LABEL_CONTRIBUTIONS,
    LABEL_ATTESTATION,
    LABEL_FEASIBILITY_ATTESTATION,
    LABEL_RECEIPT_COSIGNATURE,
    LABEL_TRIAL_ACCEPTANCE,
    LABEL_TRIAL_REPLY,
    LABEL_TRIAL_REPLY_CONTENT,
    LABEL_DKG_MESSAGE,
    LABEL_DKG_TRANSCRIPT,
    LABEL_PROOFS,
    LABEL_RESULT,
    LABEL_FEASIBILITY_CRITERIA,
    LABEL_EVALUATION_KEY,
    LABEL_DKG_SHARE_HPKE,
    LABEL_TRIAL_CONTACT_HPKE,
    LABEL_TRIAL_ACCEPTANCE_HPKE,
    LABEL_TRIAL_GATED_KEY_PSK,
    LABEL_REQUEST,
];

#[cfg(test)]
mod tests {
    #[test]
    fn no_two_labels_are_the_same() {
        let mut seen = std::collections::BTreeSet::new();
        for label in super::ALL {
            assert!(seen.insert(*label), "{label} appears twice");
            assert!(label.starts_with("cohortex/"), "{label}");
        }
    }
}
