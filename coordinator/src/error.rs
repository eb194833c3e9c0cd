//! Why an order failed. The error's text becomes the order's status message, which the buyer
//! reads (`Market.GetOrder`), so every variant says what happened in the buyer's terms.

/// Why the coordinator could not complete an order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// The market could not read or write its own state or the ledger.
    #[error("{0}")]
    Market(String),
    /// No key committee has been formed yet.
    #[error("the key committee has not been formed")]
    NoCommittee,
    /// A listing of the order has no compute node registered at this market.
    #[error("listing {0} has no node registered")]
    NoNode(String),
    /// Some listings' nodes did not contribute a valid share (one entry per listing: which,
    /// what happened, why).
    #[error("not every listing contributed a valid share ({})", .0.join("; "))]
    Contributions(Vec<String>),
    /// Some listings' nodes did not answer a feasibility search with a valid count.
    #[error("not every listing answered with a valid count ({})", .0.join("; "))]
    Counts(Vec<String>),
    /// The ledger would refuse the receipt (consents, personal limits, minimum cohorts), so
    /// nothing was released and no ε was spent.
    #[error("the ledger would refuse the receipt, so nothing was released ({})", .0.join("; "))]
    ReceiptRules(Vec<String>),
    /// The query's noise could not be calibrated at the order's ε.
    #[error("calibrating the noise: {0}")]
    Calibration(String),
    /// The committee did not add noise, key-switch or co-sign with at least t members.
    #[error("{0}")]
    Committee(String),
    /// Opening the noisy counts failed.
    #[error("{0}")]
    Decryption(String),
    /// The ledger refused one of the order's transactions.
    #[error("the ledger refused the {what}: {message}")]
    LedgerRefused {
        /// Which transaction: receipt, settlement, release commitment.
        what: &'static str,
        /// The ledger's reason.
        message: String,
    },
    /// A task of the coordinator itself failed.
    #[error("{0}")]
    Internal(String),
}
