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
