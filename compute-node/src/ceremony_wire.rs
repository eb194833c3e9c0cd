//! The key ceremony's statements on the wire: a [`SignedStatement`] as the `SignedDkgMessage`
//! the coordinator relays, and each round's statement body in its signed encoding, the
//! protobuf messages `DkgComplaints`, `DkgJustifications` and `DkgConfirmation`
//! (`proto/cohortex/v1/compute.proto`). The ceremony itself ([`crate::ceremony`]) reads and
//! signs only the domain values.

use cohortex_proto::v1::{DkgComplaints, DkgConfirmation, DkgJustifications, SignedDkgMessage};
use prost::Message;

use crate::ceremony::{
    ComplaintsBody, ConfirmationBody, JustificationsBody, SignedBody, SignedStatement,
};

impl From<SignedDkgMessage> for SignedStatement {
    fn from(message: SignedDkgMessage) -> Self {
        SignedStatement {
            member: message.member,
            body: message.body,
            signature: message.signature,
        }
    }
}

impl From<SignedStatement> for SignedDkgMessage {
    fn from(statement: SignedStatement) -> Self {
        SignedDkgMessage {
            member: statement.member,
            body: statement.body,
            signature: statement.signature,
        }
    }
}

/// The statements of one round, as relayed.
pub fn statements(messages: Vec<SignedDkgMessage>) -> Vec<SignedStatement> {
    messages.into_iter().map(SignedStatement::from).collect()
}

impl SignedBody for ComplaintsBody {
    fn to_bytes(&self) -> Vec<u8> {
        DkgComplaints {
            broadcasts_digest: self.broadcasts_digest.clone(),
            complaints: self.complaints.clone(),
        }
        .encode_to_vec()
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let message = DkgComplaints::decode(bytes).map_err(|error| error.to_string())?;
        Ok(ComplaintsBody {
            broadcasts_digest: message.broadcasts_digest,
            complaints: message.complaints,
        })
    }
}

impl SignedBody for JustificationsBody {
    fn to_bytes(&self) -> Vec<u8> {
        DkgJustifications {
            complaints_digest: self.complaints_digest.clone(),
            justifications: self.justifications.clone(),
        }
        .encode_to_vec()
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let message = DkgJustifications::decode(bytes).map_err(|error| error.to_string())?;
        Ok(JustificationsBody {
            complaints_digest: message.complaints_digest,
            justifications: message.justifications,
        })
    }
}

impl SignedBody for ConfirmationBody {
    fn to_bytes(&self) -> Vec<u8> {
        DkgConfirmation {
            transcript_digest: self.transcript_digest.clone(),
            committee: self.committee.clone(),
        }
        .encode_to_vec()
    }

    fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let message = DkgConfirmation::decode(bytes).map_err(|error| error.to_string())?;
        Ok(ConfirmationBody {
            transcript_digest: message.transcript_digest,
            committee: message.committee,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The bytes a member signs are protobuf's: a body encodes exactly as the message the
    /// wire contract documents, field for field.
    #[test]
    fn statement_bodies_encode_as_their_documented_messages() {
        let body = ComplaintsBody {
            broadcasts_digest: vec![1; 32],
            complaints: vec![vec![2, 3], vec![4]],
        };
        let documented = DkgComplaints {
            broadcasts_digest: vec![1; 32],
            complaints: vec![vec![2, 3], vec![4]],
        }
        .encode_to_vec();
        assert_eq!(body.to_bytes(), documented);
        assert_eq!(ComplaintsBody::from_bytes(&documented).unwrap(), body);
        let confirmation = ConfirmationBody {
            transcript_digest: vec![5; 32],
            committee: vec![6; 9],
        };
        assert_eq!(
            ConfirmationBody::from_bytes(&confirmation.to_bytes()).unwrap(),
            confirmation
        );
        assert!(JustificationsBody::from_bytes(&[0xff, 0xff, 0xff]).is_err());
    }
}
