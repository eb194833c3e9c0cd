//! What every Cohortex server and client agrees on about a call: message and time bounds, and
//! how a purpose travels.

use std::time::Duration;

use tonic::Status;

use crate::ids::{Purpose, PURPOSE_NAMES};
use crate::text::excerpt;

/// Largest gRPC message any Cohortex server decodes or encodes.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;

/// Deadline a server applies to every request that does not bring a shorter one.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// A purpose field: one of the names in [`PURPOSE_NAMES`].
pub fn purpose_field(name: &str, field: &str) -> Result<Purpose, Status> {
    PURPOSE_NAMES
        .iter()
        .find(|(_, known)| *known == name)
        .map(|(purpose, _)| *purpose)
        .ok_or_else(|| {
            let known: Vec<&str> = PURPOSE_NAMES.iter().map(|(_, known)| *known).collect();
            Status::invalid_argument(format!(
                "{field} must be one of {}, got {:?}",
                known.join(", "),
                excerpt(name)
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn purpose_names_round_trip_and_unknown_names_are_refused() {
        for (purpose, name) in PURPOSE_NAMES {
            assert_eq!(purpose_field(name, "purpose").ok(), Some(purpose));
        }
        let refused = purpose_field("marketing", "purpose").err();
        assert_eq!(
            refused.as_ref().map(Status::code),
            Some(Code::InvalidArgument)
        );
        assert!(refused.is_some_and(|status| status.message().starts_with("purpose must be")));
    }

    #[test]
    fn unknown_purpose_of_megabytes_is_quoted_as_an_excerpt() {
        let huge = "p".repeat(7 << 20);
        let refused = purpose_field(&huge, "purpose").err();
        let message = refused.as_ref().map_or("", Status::message);
        assert!(message.len() < 300, "{} bytes", message.len());
        assert!(message.ends_with("(7340032 bytes)\""), "{message}");
    }
}

/// The `google.rpc.ErrorInfo` domain of Cohortex's typed refusals.
pub const ERROR_DOMAIN: &str = "cohortex.v1";

/// A refusal a caller acts on (retrying after a fix, say). It travels in the status's details
/// as a `google.rpc.ErrorInfo` (domain [`ERROR_DOMAIN`], reason [`Refusal::reason`]), so the
/// caller matches on it and never on the message, which stays free to change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The node lacks the recruiter's TFHE evaluation key the request names: send it with
    /// `PutEvaluationKey` and ask again.
    EvaluationKeyMissing,
}

impl Refusal {
    const ALL: [Refusal; 1] = [Refusal::EvaluationKeyMissing];

    /// The `ErrorInfo.reason` it travels as.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::EvaluationKeyMissing => "EVALUATION_KEY_MISSING",
        }
    }

    /// A status with `code` and `message` that carries this refusal.
    pub fn status(self, code: tonic::Code, message: impl Into<String>) -> Status {
        use tonic_types::{ErrorDetails, StatusExt};
        Status::with_error_details(
            code,
            message,
            ErrorDetails::with_error_info(
                self.reason(),
                ERROR_DOMAIN,
                std::collections::HashMap::new(),
            ),
        )
    }

    /// The refusal `status` carries, if any.
    pub fn of(status: &Status) -> Option<Self> {
        use tonic_types::StatusExt;
        let info = status.get_details_error_info()?;
        if info.domain != ERROR_DOMAIN {
            return None;
        }
        Self::ALL
            .into_iter()
            .find(|refusal| refusal.reason() == info.reason)
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::*;

    #[test]
    fn refusal_survives_the_status_and_is_not_read_from_the_message() {
        let status = Refusal::EvaluationKeyMissing
            .status(tonic::Code::FailedPrecondition, "any words at all");
        assert_eq!(Refusal::of(&status), Some(Refusal::EvaluationKeyMissing));
        // A status whose message names the reason but carries no details is not one.
        let plain = Status::failed_precondition("EVALUATION_KEY_MISSING PutEvaluationKey");
        assert_eq!(Refusal::of(&plain), None);
    }
}
