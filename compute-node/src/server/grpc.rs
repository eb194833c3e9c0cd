//! The gRPC adapter: authenticates each request (every method but `DeliverShare` is the
//! coordinator's alone), hands the message to the node's domain operations and wraps the
//! answer. Nothing here decides anything about an order.

use cohortex_proto::v1::compute_server::Compute;
use cohortex_proto::v1::{
    AddNoiseRequest, AddNoiseResponse, ContributeRequest, ContributeResponse,
    ContributionParticipantsRequest, ContributionParticipantsResponse, CosignReceiptRequest,
    CosignReceiptResponse, DeliverShareRequest, DeliverShareResponse, DkgConfirmRequest,
    DkgConfirmResponse, DkgDealRequest, DkgDealResponse, DkgFinishRequest, DkgFinishResponse,
    DkgJustifyRequest, DkgJustifyResponse, DkgReceiveRequest, DkgReceiveResponse,
    EvaluationKeyChunk, FeasibilityRequest, FeasibilityResponse, KeySwitchRequest,
    KeySwitchResponse, PutEvaluationKeyResponse,
};
use cohortex_types::auth::unix_now;
use market::AccountId;
use tonic::{Request, Response, Status};

use super::NodeService;
use crate::protocol::methods;

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
        self.deal(request.into_inner()).await.map(Response::new)
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
        self.take_share(caller, request.into_inner())
            .map(Response::new)
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn dkg_receive(
        &self,
        request: Request<DkgReceiveRequest>,
    ) -> Result<Response<DkgReceiveResponse>, Status> {
        self.check_coordinator(methods::DKG_RECEIVE, &request)?;
        self.receive_broadcasts(request.into_inner())
            .map(Response::new)
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn dkg_justify(
        &self,
        request: Request<DkgJustifyRequest>,
    ) -> Result<Response<DkgJustifyResponse>, Status> {
        self.check_coordinator(methods::DKG_JUSTIFY, &request)?;
        self.justify(request.into_inner()).map(Response::new)
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn dkg_finish(
        &self,
        request: Request<DkgFinishRequest>,
    ) -> Result<Response<DkgFinishResponse>, Status> {
        self.check_coordinator(methods::DKG_FINISH, &request)?;
        self.finish_dkg(request.into_inner()).map(Response::new)
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn dkg_confirm(
        &self,
        request: Request<DkgConfirmRequest>,
    ) -> Result<Response<DkgConfirmResponse>, Status> {
        self.check_coordinator(methods::DKG_CONFIRM, &request)?;
        self.confirm_dkg(request.into_inner()).map(Response::new)
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn contribute(
        &self,
        request: Request<ContributeRequest>,
    ) -> Result<Response<ContributeResponse>, Status> {
        self.check_coordinator(methods::CONTRIBUTE, &request)?;
        self.contribution(request.into_inner())
            .await
            .map(Response::new)
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn contribution_participants(
        &self,
        request: Request<ContributionParticipantsRequest>,
    ) -> Result<Response<ContributionParticipantsResponse>, Status> {
        self.check_coordinator(methods::CONTRIBUTION_PARTICIPANTS, &request)?;
        self.contribution_participants(request.into_inner())
            .map(Response::new)
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn add_noise(
        &self,
        request: Request<AddNoiseRequest>,
    ) -> Result<Response<AddNoiseResponse>, Status> {
        self.check_coordinator(methods::ADD_NOISE, &request)?;
        self.noise_share(request.into_inner())
            .await
            .map(Response::new)
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn key_switch(
        &self,
        request: Request<KeySwitchRequest>,
    ) -> Result<Response<KeySwitchResponse>, Status> {
        self.check_coordinator(methods::KEY_SWITCH, &request)?;
        self.key_switch_share(request.into_inner())
            .await
            .map(Response::new)
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn cosign_receipt(
        &self,
        request: Request<CosignReceiptRequest>,
    ) -> Result<Response<CosignReceiptResponse>, Status> {
        self.check_coordinator(methods::COSIGN_RECEIPT, &request)?;
        self.cosign(request.into_inner()).await.map(Response::new)
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
        self.receive_evaluation_key(request.into_inner()).await
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn feasibility(
        &self,
        request: Request<FeasibilityRequest>,
    ) -> Result<Response<FeasibilityResponse>, Status> {
        self.check_coordinator(methods::FEASIBILITY, &request)?;
        self.run_feasibility(request.into_inner())
            .await
            .map(Response::new)
    }

    #[tracing::instrument(skip(self, request), fields(listing = %self.config.listing))]
    async fn accept_invitation(
        &self,
        request: Request<cohortex_proto::v1::AcceptInvitationRequest>,
    ) -> Result<Response<cohortex_proto::v1::TrialReply>, Status> {
        self.check_coordinator(methods::ACCEPT_INVITATION, &request)?;
        self.answer_acceptance(request.into_inner())
            .await
            .map(Response::new)
    }
}
