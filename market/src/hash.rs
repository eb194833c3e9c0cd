//! Versioned, domain-separated hashing: [`cohortex_types::hash`], with the labels of the
//! ledger and market hashes (see `docs/ledger.md`).

pub use cohortex_types::hash::*;
pub use cohortex_types::labels::{
    LABEL_BLOCK, LABEL_CONTRIBUTION, LABEL_CONTRIBUTIONS, LABEL_GENESIS, LABEL_MANIFEST,
    LABEL_QUERY, LABEL_STATE, LABEL_TREE_HEAD, LABEL_TXID, LABEL_TX_SIGNATURE,
};
