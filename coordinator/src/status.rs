//! The coordinator's errors at the gRPC edge: each [`CoordinatorError`] kind's one status
//! code, and a node's or the ledger's status, as the coordinator receives it, as the error of
//! the same kind.

use tonic::{Code, Status};

use crate::error::CoordinatorError;

impl CoordinatorError {
    /// The gRPC code of this refusal: one closed mapping, so that a new kind must be given a
    /// code here before the crate compiles.
    pub fn code(&self) -> Code {
        match self {
            CoordinatorError::BadRequest(_) => Code::InvalidArgument,
            CoordinatorError::NotPermitted(_) => Code::PermissionDenied,
            CoordinatorError::Unauthenticated(_) => Code::Unauthenticated,
            CoordinatorError::NotFound(_) => Code::NotFound,
            CoordinatorError::AlreadyDone(_) => Code::AlreadyExists,
            CoordinatorError::NotReady(_) => Code::FailedPrecondition,
            CoordinatorError::Unavailable(_) => Code::Unavailable,
            CoordinatorError::TimedOut(_) => Code::DeadlineExceeded,
            CoordinatorError::Exhausted(_) => Code::ResourceExhausted,
            CoordinatorError::Aborted(_) => Code::Aborted,
            CoordinatorError::OutOfRange(_) => Code::OutOfRange,
            CoordinatorError::Unsupported(_) => Code::Unimplemented,
            CoordinatorError::Internal(_) => Code::Internal,
        }
    }
}

impl From<CoordinatorError> for Status {
    fn from(error: CoordinatorError) -> Self {
        Status::new(error.code(), error.message().to_string())
    }
}

/// A status the coordinator received (from a node, the ledger's service helpers or a
/// worker), as the error of the same kind; a cancelled call counts as unavailable, and a
/// status with no kind of its own as internal.
impl From<Status> for CoordinatorError {
    fn from(status: Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            Code::InvalidArgument => CoordinatorError::BadRequest(message),
            Code::PermissionDenied => CoordinatorError::NotPermitted(message),
            Code::Unauthenticated => CoordinatorError::Unauthenticated(message),
            Code::NotFound => CoordinatorError::NotFound(message),
            Code::AlreadyExists => CoordinatorError::AlreadyDone(message),
            Code::FailedPrecondition => CoordinatorError::NotReady(message),
            Code::Unavailable | Code::Cancelled => CoordinatorError::Unavailable(message),
            Code::DeadlineExceeded => CoordinatorError::TimedOut(message),
            Code::ResourceExhausted => CoordinatorError::Exhausted(message),
            Code::Aborted => CoordinatorError::Aborted(message),
            Code::OutOfRange => CoordinatorError::OutOfRange(message),
            Code::Unimplemented => CoordinatorError::Unsupported(message),
            Code::Ok | Code::Unknown | Code::DataLoss | Code::Internal => {
                CoordinatorError::Internal(message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal passed through the coordinator reaches the caller with the code it had: every
    /// code a node or the ledger gives maps to a kind that maps back to it.
    #[test]
    fn refusal_passed_through_the_coordinator_keeps_its_code() {
        for code in [
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::NotFound,
            Code::AlreadyExists,
            Code::FailedPrecondition,
            Code::Unavailable,
            Code::DeadlineExceeded,
            Code::ResourceExhausted,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unimplemented,
            Code::Internal,
        ] {
            let passed = Status::from(CoordinatorError::from(Status::new(code, "listing: x")));
            assert_eq!(passed.code(), code);
            assert_eq!(passed.message(), "listing: x");
        }
        let cancelled = CoordinatorError::from(Status::cancelled("gone"));
        assert_eq!(cancelled.code(), Code::Unavailable);
    }
}
