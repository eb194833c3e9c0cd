//! Why a node refuses a call: one typed error for every operation of the node's service, by
//! what the caller can do about it. The gRPC adapter gives each kind its one status code
//! (`NodeError::code`, feature `server`); nothing here names the transport.

use thiserror::Error;

/// A node's refusal or failure. The message names the field or the fact at fault.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum NodeError {
    /// A field of the request is malformed, out of range or inconsistent: fix the request.
    #[error("{0}")]
    BadRequest(String),
    /// The caller may not ask this of this node (not its coordinator, not a member).
    #[error("{0}")]
    NotPermitted(String),
    /// The node cannot answer in its current state or the ledger's: no key share yet, the
    /// order or its release is not (or no longer) where the request needs it.
    #[error("{0}")]
    NotReady(String),
    /// The node answered this already and answers each once.
    #[error("{0}")]
    AlreadyAnswered(String),
    /// What the request names is not known here.
    #[error("{0}")]
    NotFound(String),
    /// The node is down, or cannot reach the market: worth asking again later.
    #[error("{0}")]
    Unavailable(String),
    /// The node lacks the recruiter's evaluation key: send it and ask again.
    #[error("{0}")]
    EvaluationKeyMissing(String),
    /// This node was built without what the call needs.
    #[error("{0}")]
    Unsupported(String),
    /// An offset or a size beyond what the node has or takes.
    #[error("{0}")]
    OutOfRange(String),
    /// The caller could not be authenticated.
    #[error("{0}")]
    Unauthenticated(String),
    /// The node failed: its storage, a worker, a lock.
    #[error("{0}")]
    Internal(String),
}

impl NodeError {
    /// [`NodeError::BadRequest`].
    pub fn bad_request(message: impl Into<String>) -> Self {
        NodeError::BadRequest(message.into())
    }

    /// [`NodeError::NotPermitted`].
    pub fn not_permitted(message: impl Into<String>) -> Self {
        NodeError::NotPermitted(message.into())
    }

    /// [`NodeError::NotReady`].
    pub fn not_ready(message: impl Into<String>) -> Self {
        NodeError::NotReady(message.into())
    }

    /// [`NodeError::AlreadyAnswered`].
    pub fn already_answered(message: impl Into<String>) -> Self {
        NodeError::AlreadyAnswered(message.into())
    }

    /// [`NodeError::NotFound`].
    pub fn not_found(message: impl Into<String>) -> Self {
        NodeError::NotFound(message.into())
    }

    /// [`NodeError::Unavailable`].
    pub fn unavailable(message: impl Into<String>) -> Self {
        NodeError::Unavailable(message.into())
    }

    /// [`NodeError::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        NodeError::Unsupported(message.into())
    }

    /// [`NodeError::OutOfRange`].
    pub fn out_of_range(message: impl Into<String>) -> Self {
        NodeError::OutOfRange(message.into())
    }

    /// [`NodeError::Unauthenticated`].
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        NodeError::Unauthenticated(message.into())
    }

    /// [`NodeError::Internal`].
    pub fn internal(message: impl Into<String>) -> Self {
        NodeError::Internal(message.into())
    }

    /// The message, naming the field or fact at fault.
    pub fn message(&self) -> &str {
        match self {
            NodeError::BadRequest(message)
            | NodeError::NotPermitted(message)
            | NodeError::NotReady(message)
            | NodeError::AlreadyAnswered(message)
            | NodeError::NotFound(message)
            | NodeError::Unavailable(message)
            | NodeError::EvaluationKeyMissing(message)
            | NodeError::Unsupported(message)
            | NodeError::OutOfRange(message)
            | NodeError::Unauthenticated(message)
            | NodeError::Internal(message) => message,
        }
    }
}
