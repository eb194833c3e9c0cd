//! The gRPC adapter: authenticates each request (every method but `DeliverShare` is the
//! coordinator's alone), hands the message to the node's domain operations and wraps the
//! answer. Nothing here decides anything about an order.

use cohortex_proto::v1::compute_server::Compute;
use cohortex_proto::v1::{
    AcceptInvitationRequest, AddNoiseRequest, AddNoiseResponse, ContributeRequest,
    ContributeResponse, ContributionParticipantsRequest, ContributionParticipantsResponse,
    CosignReceiptRequest, CosignReceiptResponse, DeliverShareRequest, DeliverShareResponse,
    DkgConfirmRequest, DkgConfirmResponse, DkgDealRequest, DkgDealResponse, DkgFinishRequest,
    DkgFinishResponse, DkgJustifyRequest, DkgJustifyResponse, DkgReceiveRequest,
    DkgReceiveResponse, EvaluationKeyChunk, FeasibilityRequest, FeasibilityResponse,
    KeySwitchPhase, KeySwitchRequest, KeySwitchResponse, PutEvaluationKeyResponse,
};
use cohortex_types::auth::unix_now;
use cohortex_types::rpc::Refusal;
use market::{AccountId, ListingId, QueryReceipt};
use tonic::{Code, Request, Response, Status};

use super::{order_key, NodeService};
use crate::calls::{
    AcceptanceCall, CeremonyPeer, ConfirmCall, ContributeCall, CosignCall, DealCall, FinishCall,
    JustifyCall, KeySwitchCall, ListedContribution, NoiseCall, ParticipantsPageCall, ReceiveCall,
    ShareDelivery, SwitchPhase, ValuesSwitch,
};
use crate::ceremony_wire::statements;
use crate::contribution::Contribution;
use crate::error::NodeError;
use crate::protocol::{decode, decode_all, decode_noise_share, methods};
use zk::Wire;

impl From<DkgDealRequest> for DealCall {
    fn from(message: DkgDealRequest) -> Self {
        DealCall {
            session: message.session_id,
            threshold: message.threshold,
            peers: message
                .peers
                .into_iter()
                .map(|peer| CeremonyPeer {
                    member: peer.member,
                    endpoint: peer.endpoint,
                })
                .collect(),
        }
    }
}

impl From<DeliverShareRequest> for ShareDelivery {
    fn from(message: DeliverShareRequest) -> Self {
        ShareDelivery {
            session: message.session_id,
            sealed_share: message.sealed_share,
        }
    }
}

impl From<DkgReceiveRequest> for ReceiveCall {
    fn from(message: DkgReceiveRequest) -> Self {
        ReceiveCall {
            session: message.session_id,
            broadcasts: statements(message.broadcasts),
        }
    }
}

impl From<DkgJustifyRequest> for JustifyCall {
    fn from(message: DkgJustifyRequest) -> Self {
        JustifyCall {
            session: message.session_id,
            complaints: statements(message.complaints),
        }
    }
}

impl From<DkgFinishRequest> for FinishCall {
    fn from(message: DkgFinishRequest) -> Self {
        FinishCall {
            session: message.session_id,
            complaints: statements(message.complaints),
            justifications: statements(message.justifications),
        }
    }
}

impl From<DkgConfirmRequest> for ConfirmCall {
    fn from(message: DkgConfirmRequest) -> Self {
        ConfirmCall {
            session: message.session_id,
            confirmations: statements(message.confirmations),
        }
    }
}

impl TryFrom<ContributeRequest> for ContributeCall {
    type Error = NodeError;

    fn try_from(message: ContributeRequest) -> Result<Self, NodeError> {
        let order = order_key(&message.order_id)?;
        if message.purpose.is_empty() {
            return Err(NodeError::bad_request("purpose: empty"));
        }
        Ok(ContributeCall {
            order,
            listing: ListingId::new(message.listing),
            sql: message.sql,
            purpose: message.purpose,
        })
    }
}

impl TryFrom<ContributionParticipantsRequest> for ParticipantsPageCall {
    type Error = NodeError;

    fn try_from(message: ContributionParticipantsRequest) -> Result<Self, NodeError> {
        Ok(ParticipantsPageCall {
            order: order_key(&message.order_id)?,
            offset: message.offset,
        })
    }
}

impl TryFrom<AddNoiseRequest> for NoiseCall {
    type Error = NodeError;

    fn try_from(message: AddNoiseRequest) -> Result<Self, NodeError> {
        let order = order_key(&message.order_id)?;
        let contributions = message
            .contributions
            .into_iter()
            .enumerate()
            .map(|(index, record)| {
                let ciphertexts = decode_all(
                    &record.ciphertexts,
                    &format!("contributions[{index}].ciphertexts"),
                )?;
                let proof = decode(&record.proof, &format!("contributions[{index}].proof"))?;
                Ok(ListedContribution {
                    hash: market::hash::contribution_hash(&record.ciphertexts, &record.proof),
                    listing: record.listing,
                    capacity: record.capacity,
                    contribution: Contribution { ciphertexts, proof },
                })
            })
            .collect::<Result<_, Status>>()?;
        Ok(NoiseCall {
            order,
            sql: message.sql,
            contributions,
        })
    }
}

impl TryFrom<KeySwitchRequest> for KeySwitchCall {
    type Error = NodeError;

    fn try_from(message: KeySwitchRequest) -> Result<Self, NodeError> {
        let order = order_key(&message.order_id)?;
        let phase = match KeySwitchPhase::try_from(message.phase) {
            Ok(KeySwitchPhase::Counts) => SwitchPhase::Counts,
            Ok(KeySwitchPhase::Values) => SwitchPhase::Values(Box::new(ValuesSwitch {
                recipient: decode(&message.recipient, "recipient")?,
                count_shares: decode_all(&message.count_shares, "count_shares")?,
                noisy_counts: message.noisy_counts,
            })),
            _ => return Err(NodeError::bad_request("phase: COUNTS or VALUES")),
        };
        let noise = message
            .noise
            .iter()
            .enumerate()
            .map(|(index, share)| decode_noise_share(share, &format!("noise[{index}]")))
            .collect::<Result<_, Status>>()?;
        Ok(KeySwitchCall {
            order,
            noise,
            phase,
        })
    }
}

#[cfg(feature = "tfhe")]
impl TryFrom<FeasibilityRequest> for crate::calls::FeasibilityCall {
    type Error = NodeError;

    fn try_from(message: FeasibilityRequest) -> Result<Self, NodeError> {
        let order = order_key(&message.order_id)?;
        let wire = message
            .criteria
            .as_ref()
            .ok_or_else(|| NodeError::bad_request("criteria: missing"))?;
        let (fingerprint, criteria) =
            crate::feasibility_wire::criteria_from_wire(wire, "criteria")?;
        Ok(crate::calls::FeasibilityCall {
            order,
            listing: ListingId::new(message.listing),
            fingerprint,
            criteria,
            criteria_hash: crate::feasibility_wire::criteria_hash(wire),
        })
    }
}

impl From<AcceptInvitationRequest> for AcceptanceCall {
    fn from(message: AcceptInvitationRequest) -> Self {
        AcceptanceCall {
            trial: message.trial,
            listing: ListingId::new(message.listing),
            sealed: message.sealed,
        }
    }
}

impl TryFrom<CosignReceiptRequest> for CosignCall {
    type Error = NodeError;

    fn try_from(message: CosignReceiptRequest) -> Result<Self, NodeError> {
        let receipt = QueryReceipt::from_bytes(&message.receipt)
            .map_err(|_| NodeError::bad_request("receipt: not a postcard-encoded receipt"))?;
        Ok(CosignCall { receipt })
    }
}

impl NodeError {
    /// The gRPC code of this refusal: one closed mapping, so that a new kind must be given a
    /// code here before the crate compiles.
    pub fn code(&self) -> Code {
        match self {
            NodeError::BadRequest(_) => Code::InvalidArgument,
            NodeError::NotPermitted(_) => Code::PermissionDenied,
            NodeError::NotReady(_) | NodeError::EvaluationKeyMissing(_) => Code::FailedPrecondition,
            NodeError::AlreadyAnswered(_) => Code::AlreadyExists,
            NodeError::NotFound(_) => Code::NotFound,
            NodeError::Unavailable(_) => Code::Unavailable,
            NodeError::Unsupported(_) => Code::Unimplemented,
            NodeError::OutOfRange(_) => Code::OutOfRange,
            NodeError::Unauthenticated(_) => Code::Unauthenticated,
            NodeError::Internal(_) => Code::Internal,
        }
    }
}

/// A refusal as the caller receives it: its code, its message, and for a missing evaluation
/// key the machine-readable reason the coordinator acts on.
impl From<NodeError> for Status {
    fn from(error: NodeError) -> Self {
        match error {
            NodeError::EvaluationKeyMissing(message) => {
                Refusal::EvaluationKeyMissing.status(Code::FailedPrecondition, message)
            }
            other => Status::new(other.code(), other.message().to_string()),
        }
    }
}

/// A status from a call this node made (to the market) or from the wire contract's checks, as
/// the node's own refusal of the same kind.
impl From<Status> for NodeError {
    fn from(status: Status) -> Self {
        let message = status.message().to_string();
        if Refusal::of(&status) == Some(Refusal::EvaluationKeyMissing) {
            return NodeError::EvaluationKeyMissing(message);
        }
        match status.code() {
            Code::InvalidArgument => NodeError::BadRequest(message),
            Code::PermissionDenied => NodeError::NotPermitted(message),
            Code::FailedPrecondition | Code::Aborted => NodeError::NotReady(message),
            Code::AlreadyExists => NodeError::AlreadyAnswered(message),
            Code::NotFound => NodeError::NotFound(message),
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                NodeError::Unavailable(message)
            }
            Code::Unimplemented => NodeError::Unsupported(message),
            Code::OutOfRange | Code::ResourceExhausted => NodeError::OutOfRange(message),
            Code::Unauthenticated => NodeError::Unauthenticated(message),
            _ => NodeError::Internal(message),
        }
    }
}

impl NodeService {
    /// Refuses a request not signed by this node's coordinator; any other caller is refused
    /// before its signature is checked or its nonce remembered.
    fn check_coordinator<T: prost::Message>(
        &self,
        method: &str,
        request: &Request<T>,
    ) -> Result<(), Status> {
        self.verifier
            .verify_from(method, request, unix_now(), |caller| {
                self.coordinator_only(*caller)
            })
            .map(|_| ())
    }

    /// Refuses a caller other than this node's coordinator.
    fn coordinator_only(&self, caller: AccountId) -> Result<(), Status> {
        if caller != self.config.coordinator {
            return Err(Status::permission_denied(format!(
                "account {caller} is not this node's coordinator"
            )));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Compute for NodeService {
    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn dkg_deal(
        &self,
        request: Request<DkgDealRequest>,
    ) -> Result<Response<DkgDealResponse>, Status> {
        self.check_coordinator(methods::DKG_DEAL, &request)?;
        let broadcast = self.deal(request.into_inner().into()).await?;
        Ok(Response::new(DkgDealResponse {
            broadcast: Some(broadcast.into()),
        }))
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn deliver_share(
        &self,
        request: Request<DeliverShareRequest>,
    ) -> Result<Response<DeliverShareResponse>, Status> {
        // The other members call this one, not the coordinator: the share says whose it is.
        let caller =
            self.verifier
                .verify_from(
                    methods::DELIVER_SHARE,
                    &request,
                    unix_now(),
                    |caller| match self.config.committee.seat_of(caller) {
                        Some(_) => Ok(()),
                        None => Err(Status::permission_denied(format!(
                            "account {caller} is not a committee member"
                        ))),
                    },
                )?;
        self.take_share(caller, request.into_inner().into())?;
        Ok(Response::new(DeliverShareResponse {}))
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn dkg_receive(
        &self,
        request: Request<DkgReceiveRequest>,
    ) -> Result<Response<DkgReceiveResponse>, Status> {
        self.check_coordinator(methods::DKG_RECEIVE, &request)?;
        let complaints = self.receive_broadcasts(request.into_inner().into())?;
        Ok(Response::new(DkgReceiveResponse {
            complaints: Some(complaints.into()),
        }))
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn dkg_justify(
        &self,
        request: Request<DkgJustifyRequest>,
    ) -> Result<Response<DkgJustifyResponse>, Status> {
        self.check_coordinator(methods::DKG_JUSTIFY, &request)?;
        let justifications = self.justify(request.into_inner().into())?;
        Ok(Response::new(DkgJustifyResponse {
            justifications: Some(justifications.into()),
        }))
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn dkg_finish(
        &self,
        request: Request<DkgFinishRequest>,
    ) -> Result<Response<DkgFinishResponse>, Status> {
        self.check_coordinator(methods::DKG_FINISH, &request)?;
        let finished = self.finish_dkg(request.into_inner().into())?;
        Ok(Response::new(DkgFinishResponse {
            committee: finished.committee.to_bytes(),
            confirmation: Some(finished.confirmation.into()),
        }))
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn dkg_confirm(
        &self,
        request: Request<DkgConfirmRequest>,
    ) -> Result<Response<DkgConfirmResponse>, Status> {
        self.check_coordinator(methods::DKG_CONFIRM, &request)?;
        let committee = self.confirm_dkg(request.into_inner().into())?;
        Ok(Response::new(DkgConfirmResponse {
            committee: committee.to_bytes(),
        }))
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn contribute(
        &self,
        request: Request<ContributeRequest>,
    ) -> Result<Response<ContributeResponse>, Status> {
        self.check_coordinator(methods::CONTRIBUTE, &request)?;
        self.contribution(request.into_inner().try_into()?)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn contribution_participants(
        &self,
        request: Request<ContributionParticipantsRequest>,
    ) -> Result<Response<ContributionParticipantsResponse>, Status> {
        self.check_coordinator(methods::CONTRIBUTION_PARTICIPANTS, &request)?;
        self.contribution_participants(request.into_inner().try_into()?)
            .map(Response::new)
            .map_err(Status::from)
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn add_noise(
        &self,
        request: Request<AddNoiseRequest>,
    ) -> Result<Response<AddNoiseResponse>, Status> {
        self.check_coordinator(methods::ADD_NOISE, &request)?;
        self.noise_share(request.into_inner().try_into()?)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn key_switch(
        &self,
        request: Request<KeySwitchRequest>,
    ) -> Result<Response<KeySwitchResponse>, Status> {
        self.check_coordinator(methods::KEY_SWITCH, &request)?;
        self.key_switch_share(request.into_inner().try_into()?)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn cosign_receipt(
        &self,
        request: Request<CosignReceiptRequest>,
    ) -> Result<Response<CosignReceiptResponse>, Status> {
        self.check_coordinator(methods::COSIGN_RECEIPT, &request)?;
        self.cosign(request.into_inner().try_into()?)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn put_evaluation_key(
        &self,
        request: Request<tonic::Streaming<EvaluationKeyChunk>>,
    ) -> Result<Response<PutEvaluationKeyResponse>, Status> {
        self.verifier.verify_stream_from(
            methods::PUT_EVALUATION_KEY,
            &request,
            unix_now(),
            |caller| self.coordinator_only(*caller),
        )?;
        // The chunks are reassembled here, at the edge: the node's operation takes the key's
        // bytes (a node built without `tfhe` refuses without reading them).
        #[cfg(feature = "tfhe")]
        let key = crate::feasibility_wire::read_evaluation_key(&mut request.into_inner()).await?;
        #[cfg(not(feature = "tfhe"))]
        let key = {
            drop(request);
            Vec::new()
        };
        self.receive_evaluation_key(key)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn feasibility(
        &self,
        request: Request<FeasibilityRequest>,
    ) -> Result<Response<FeasibilityResponse>, Status> {
        self.check_coordinator(methods::FEASIBILITY, &request)?;
        #[cfg(feature = "tfhe")]
        let call = crate::calls::FeasibilityCall::try_from(request.into_inner())?;
        #[cfg(not(feature = "tfhe"))]
        let call = request.into_inner();
        self.run_feasibility(call)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn accept_invitation(
        &self,
        request: Request<AcceptInvitationRequest>,
    ) -> Result<Response<cohortex_proto::v1::TrialReply>, Status> {
        self.check_coordinator(methods::ACCEPT_INVITATION, &request)?;
        self.answer_acceptance(request.into_inner().into())
            .await
            .map(Response::new)
            .map_err(Status::from)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn node_refusals_reach_the_caller_with_their_codes_and_messages() {
        let cases = [
            (
                NodeError::bad_request("order_id: 3 bytes"),
                Code::InvalidArgument,
            ),
            (
                NodeError::not_permitted("not a member"),
                Code::PermissionDenied,
            ),
            (
                NodeError::not_ready("no key share yet"),
                Code::FailedPrecondition,
            ),
            (NodeError::already_answered("answered"), Code::AlreadyExists),
            (NodeError::not_found("no such trial"), Code::NotFound),
            (NodeError::unavailable("node is down"), Code::Unavailable),
            (NodeError::unsupported("no tfhe"), Code::Unimplemented),
            (
                NodeError::out_of_range("offset past the end"),
                Code::OutOfRange,
            ),
            (
                NodeError::unauthenticated("bad signature"),
                Code::Unauthenticated,
            ),
            (NodeError::internal("worker failed"), Code::Internal),
        ];
        for (error, code) in cases {
            let message = error.message().to_string();
            let status = Status::from(error.clone());
            assert_eq!(status.code(), code, "{error:?}");
            assert_eq!(status.message(), message);
            assert_eq!(Refusal::of(&status), None);
            // A status the node receives comes back as the same kind.
            assert_eq!(NodeError::from(status), error);
        }
    }

    #[test]
    fn missing_evaluation_key_carries_the_reason_the_coordinator_acts_on() {
        let status = Status::from(NodeError::EvaluationKeyMissing(
            "criteria.evaluation_key".into(),
        ));
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(Refusal::of(&status), Some(Refusal::EvaluationKeyMissing));
        // A plain failed precondition is not mistaken for it.
        let plain = Status::from(NodeError::not_ready("criteria.evaluation_key"));
        assert_eq!(Refusal::of(&plain), None);
        assert_eq!(
            NodeError::from(status),
            NodeError::EvaluationKeyMissing("criteria.evaluation_key".into())
        );
    }

    #[test]
    fn calls_with_a_short_order_id_are_refused_naming_the_field() {
        let short = vec![1u8; 31];
        let contribute = ContributeCall::try_from(ContributeRequest {
            order_id: short.clone(),
            listing: "st-mary".into(),
            sql: "SELECT COUNT(*) FROM patients".into(),
            purpose: "academic_research".into(),
        })
        .unwrap_err();
        let page = ParticipantsPageCall::try_from(ContributionParticipantsRequest {
            order_id: short.clone(),
            offset: 0,
        })
        .unwrap_err();
        let noise = NoiseCall::try_from(AddNoiseRequest {
            order_id: short,
            ..Default::default()
        })
        .unwrap_err();
        for error in [contribute, page, noise] {
            assert!(matches!(error, NodeError::BadRequest(_)), "{error:?}");
            assert!(error.message().starts_with("order_id"), "{error:?}");
        }
    }

    #[test]
    fn contribute_call_without_a_purpose_is_refused_naming_the_field() {
        let error = ContributeCall::try_from(ContributeRequest {
            order_id: vec![1; 32],
            listing: "st-mary".into(),
            sql: "SELECT COUNT(*) FROM patients".into(),
            purpose: String::new(),
        })
        .unwrap_err();
        assert_eq!(error, NodeError::bad_request("purpose: empty"));
    }

    #[test]
    fn noise_call_with_a_contribution_that_does_not_decode_is_refused_naming_it() {
        let error = NoiseCall::try_from(AddNoiseRequest {
            order_id: vec![1; 32],
            sql: "SELECT COUNT(*) FROM patients".into(),
            contributions: vec![cohortex_proto::v1::ContributionRecord {
                listing: "st-mary".into(),
                capacity: 10,
                ciphertexts: vec![vec![0xFF; 3]],
                proof: vec![],
            }],
        })
        .unwrap_err();
        assert!(matches!(error, NodeError::BadRequest(_)), "{error:?}");
        assert!(
            error
                .message()
                .starts_with("contributions[0].ciphertexts[0]"),
            "{error:?}"
        );
    }

    #[test]
    fn cosign_call_whose_receipt_does_not_decode_is_refused_naming_it() {
        let error = CosignCall::try_from(CosignReceiptRequest {
            receipt: vec![0xFF; 7],
        })
        .unwrap_err();
        assert_eq!(
            error,
            NodeError::bad_request("receipt: not a postcard-encoded receipt")
        );
    }

    #[test]
    fn key_switch_call_without_a_phase_is_refused_naming_it() {
        let error = KeySwitchCall::try_from(KeySwitchRequest {
            order_id: vec![1; 32],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(error, NodeError::bad_request("phase: COUNTS or VALUES"));
    }

    #[test]
    fn values_switch_to_a_recipient_that_does_not_decode_is_refused_naming_it() {
        let error = KeySwitchCall::try_from(KeySwitchRequest {
            order_id: vec![1; 32],
            phase: KeySwitchPhase::Values as i32,
            recipient: vec![0xFF; 5],
            ..Default::default()
        })
        .unwrap_err();
        assert!(matches!(error, NodeError::BadRequest(_)), "{error:?}");
        assert!(error.message().starts_with("recipient: "), "{error:?}");
        // Phase COUNTS ignores the recipient, as the protocol says.
        let counts = KeySwitchCall::try_from(KeySwitchRequest {
            order_id: vec![1; 32],
            phase: KeySwitchPhase::Counts as i32,
            recipient: vec![0xFF; 5],
            ..Default::default()
        });
        assert!(matches!(
            counts.map(|call| call.phase),
            Ok(SwitchPhase::Counts)
        ));
    }

    #[cfg(feature = "tfhe")]
    #[test]
    fn feasibility_call_without_criteria_or_with_a_short_key_fingerprint_is_refused_naming_it() {
        let missing = crate::calls::FeasibilityCall::try_from(FeasibilityRequest {
            order_id: vec![1; 32],
            listing: "st-mary".into(),
            criteria: None,
        })
        .err()
        .unwrap();
        assert_eq!(missing, NodeError::bad_request("criteria: missing"));
        let short = crate::calls::FeasibilityCall::try_from(FeasibilityRequest {
            order_id: vec![1; 32],
            listing: "st-mary".into(),
            criteria: Some(cohortex_proto::v1::EncryptedCriteria {
                evaluation_key: vec![7; 31],
                ..Default::default()
            }),
        })
        .err()
        .unwrap();
        assert!(matches!(short, NodeError::BadRequest(_)), "{short:?}");
        assert!(
            short.message().starts_with("criteria.evaluation_key"),
            "{short:?}"
        );
    }
}
