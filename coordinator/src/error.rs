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

/// Why the coordinator refuses or fails a call the Market service makes of it (registering a
/// listing, starting an order, relaying a trial acceptance, keeping an evaluation key, …), by
/// what the caller can do about it. The Market service gives each kind its one status code
/// (`CoordinatorError::code`, in `coordinator::status`); nothing here names the transport.
/// A node's or the ledger's refusal that the coordinator passes on keeps its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoordinatorError {
    /// A field of the request is malformed or inconsistent: fix the request.
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not ask this.
    #[error("{0}")]
    NotPermitted(String),
    /// The caller could not be authenticated.
    #[error("{0}")]
    Unauthenticated(String),
    /// What the request names is not known.
    #[error("{0}")]
    NotFound(String),
    /// It was done already and is done once.
    #[error("{0}")]
    AlreadyDone(String),
    /// Not possible in the current state (no committee yet, the order not where it must be).
    #[error("{0}")]
    NotReady(String),
    /// A node, the ledger or the market is unreachable or shutting down: worth asking again.
    #[error("{0}")]
    Unavailable(String),
    /// A node or the ledger did not answer in time.
    #[error("{0}")]
    TimedOut(String),
    /// A limit on what the market holds was reached.
    #[error("{0}")]
    Exhausted(String),
    /// A race was lost (the ledger moved on); asking again may succeed.
    #[error("{0}")]
    Aborted(String),
    /// Beyond what exists.
    #[error("{0}")]
    OutOfRange(String),
    /// Not built into this market.
    #[error("{0}")]
    Unsupported(String),
    /// The coordinator failed: its state, a worker, a lock, its storage.
    #[error("{0}")]
    Internal(String),
}

impl CoordinatorError {
    /// [`CoordinatorError::BadRequest`].
    pub fn bad_request(message: impl Into<String>) -> Self {
        CoordinatorError::BadRequest(message.into())
    }

    /// [`CoordinatorError::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        CoordinatorError::NotFound(message.into())
    }

    /// [`CoordinatorError::NotReady`].
    pub fn not_ready(message: impl Into<String>) -> Self {
        CoordinatorError::NotReady(message.into())
    }

    /// [`CoordinatorError::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        CoordinatorError::Unavailable(message.into())
    }

    /// [`CoordinatorError::Exhausted`].
    pub fn exhausted(message: impl Into<String>) -> Self {
        CoordinatorError::Exhausted(message.into())
    }

    /// [`CoordinatorError::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        CoordinatorError::Internal(message.into())
    }

    /// A poisoned lock on the coordinator's state.
    pub fn poisoned() -> Self {
        CoordinatorError::internal("coordinator state lock poisoned")
    }

    /// The message, naming the field or fact at fault.
    pub fn message(&self) -> &str {
        match self {
            CoordinatorError::BadRequest(message)
            | CoordinatorError::NotPermitted(message)
            | CoordinatorError::Unauthenticated(message)
            | CoordinatorError::NotFound(message)
            | CoordinatorError::AlreadyDone(message)
            | CoordinatorError::NotReady(message)
            | CoordinatorError::Unavailable(message)
            | CoordinatorError::TimedOut(message)
            | CoordinatorError::Exhausted(message)
            | CoordinatorError::Aborted(message)
            | CoordinatorError::OutOfRange(message)
            | CoordinatorError::Unsupported(message)
            | CoordinatorError::Internal(message) => message,
        }
    }
}

/// The coordinator's own failure, as an order's.
impl From<CoordinatorError> for OrderError {
    fn from(error: CoordinatorError) -> Self {
        OrderError::Market(error.message().to_string())
    }
}
