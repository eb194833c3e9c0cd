//! The compute nodes as the coordinator sees them: every call it makes of a listing's node and
//! of the committee members (an order's phases, the key ceremony's rounds, a feasibility
//! count, a trial acceptance, a recruiter's evaluation key), behind one trait, so that the
//! coordinator can be run (and its failure paths tested) against nodes that are not reached
//! over gRPC.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use cohortex_proto::tls::{endpoint as link, TlsIdentity};
use cohortex_proto::v1::compute_client::ComputeClient;
#[cfg(feature = "tfhe")]
use std::sync::Arc;

#[cfg(feature = "tfhe")]
use cohortex_proto::v1::{
    AcceptInvitationRequest, FeasibilityRequest, FeasibilityResponse, TrialReply,
};
use cohortex_proto::v1::{
    AddNoiseRequest, AddNoiseResponse, ContributeRequest, ContributeResponse,
    ContributionParticipantsRequest, ContributionParticipantsResponse, CosignReceiptRequest,
    CosignReceiptResponse, DkgConfirmRequest, DkgConfirmResponse, DkgDealRequest, DkgDealResponse,
    DkgFinishRequest, DkgFinishResponse, DkgJustifyRequest, DkgJustifyResponse, DkgReceiveRequest,
    DkgReceiveResponse, KeySwitchRequest, KeySwitchResponse,
};
#[cfg(feature = "tfhe")]
use cohortex_types::rpc::Refusal;
use compute_node::protocol::methods;
use ed25519_dalek::SigningKey;
use market::server::auth::signed_request_to;
#[cfg(feature = "tfhe")]
use market::server::auth::signed_stream_request_to;
use market::server::excerpt;
use tonic::transport::Channel;
use tonic::Status;

use crate::error::{CoordinatorError, OrderError};

/// A link to the node at `endpoint`, with the call bounds on message size.
async fn connect(
    endpoint: &str,
    tls: Option<&TlsIdentity>,
) -> Result<ComputeClient<Channel>, Status> {
    let channel = link(endpoint, tls)
        .map_err(|error| Status::internal(format!("endpoint {}: {error}", excerpt(endpoint))))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|error| {
            Status::unavailable(format!("{} unreachable: {error}", excerpt(endpoint)))
        })?;
    Ok(ComputeClient::new(channel)
        .max_decoding_message_size(market::server::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(market::server::MAX_MESSAGE_BYTES))
}

/// An answer a node will give: a `Send` future that owns what it needs.
pub type NodeCall<T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send>>;

/// The calls of an order, each to the node at `endpoint`. An implementation signs each request
/// as the coordinator, bounds it in time and reports a node that cannot be reached as
/// `UNAVAILABLE` and one that does not answer in time as `DEADLINE_EXCEEDED`.
pub trait ComputeNodes: Send + Sync + 'static {
    /// A listing's node evaluates the query and returns its encrypted, proven contribution
    /// (with the first page of its participants).
    fn contribute(
        &self,
        endpoint: &str,
        request: ContributeRequest,
    ) -> NodeCall<ContributeResponse>;

    /// The next page of a contribution's participants.
    fn contribution_participants(
        &self,
        endpoint: &str,
        request: ContributionParticipantsRequest,
    ) -> NodeCall<ContributionParticipantsResponse>;

    /// A committee member verifies the contributions, fixes their sum and adds its noise share.
    fn add_noise(&self, endpoint: &str, request: AddNoiseRequest) -> NodeCall<AddNoiseResponse>;

    /// A committee member's key-switch share of the counts or of the values.
    fn key_switch(&self, endpoint: &str, request: KeySwitchRequest) -> NodeCall<KeySwitchResponse>;

    /// A committee member's co-signature of a receipt.
    fn cosign_receipt(
        &self,
        endpoint: &str,
        request: CosignReceiptRequest,
    ) -> NodeCall<CosignReceiptResponse>;

    /// Key ceremony, round 1: a member deals its shares and returns its signed broadcast.
    fn dkg_deal(&self, endpoint: &str, request: DkgDealRequest) -> NodeCall<DkgDealResponse>;

    /// Round 2: a member checks every broadcast and its shares, and returns its complaints.
    fn dkg_receive(
        &self,
        endpoint: &str,
        request: DkgReceiveRequest,
    ) -> NodeCall<DkgReceiveResponse>;

    /// Round 3: a member answers the complaints against it.
    fn dkg_justify(
        &self,
        endpoint: &str,
        request: DkgJustifyRequest,
    ) -> NodeCall<DkgJustifyResponse>;

    /// Round 4: a member settles the qualified set and returns its signed confirmation.
    fn dkg_finish(&self, endpoint: &str, request: DkgFinishRequest) -> NodeCall<DkgFinishResponse>;

    /// Round 5: a member checks that all confirm one transcript and returns the committee.
    fn dkg_confirm(
        &self,
        endpoint: &str,
        request: DkgConfirmRequest,
    ) -> NodeCall<DkgConfirmResponse>;

    #[cfg(feature = "tfhe")]
    /// A listing's node counts the patients meeting encrypted criteria (blind feasibility).
    fn feasibility(
        &self,
        endpoint: &str,
        request: FeasibilityRequest,
    ) -> NodeCall<FeasibilityResponse>;

    #[cfg(feature = "tfhe")]
    /// A listing's node answers a patient's acceptance of a trial invitation.
    fn accept_invitation(
        &self,
        endpoint: &str,
        request: AcceptInvitationRequest,
    ) -> NodeCall<TrialReply>;

    #[cfg(feature = "tfhe")]
    /// A node receives a recruiter's TFHE evaluation key (streamed in chunks).
    fn put_evaluation_key(&self, endpoint: &str, key: Arc<Vec<u8>>) -> NodeCall<()>;
}

#[cfg(feature = "tfhe")]
/// Asks the node at `endpoint` with `ask`; if it answers that it lacks the recruiter's
/// evaluation key, sends it the key `key` gives and asks once more.
pub async fn with_evaluation_key<T>(
    nodes: &dyn ComputeNodes,
    endpoint: &str,
    key: impl FnOnce() -> Result<Arc<Vec<u8>>, Status>,
    ask: impl Fn() -> NodeCall<T>,
) -> Result<T, Status> {
    match ask().await {
        Err(status) if Refusal::of(&status) == Some(Refusal::EvaluationKeyMissing) => {
            nodes.put_evaluation_key(endpoint, key()?).await?;
            ask().await
        }
        answer => answer,
    }
}

/// The nodes over gRPC (mutual TLS when the coordinator has an identity): each call opens its
/// link, is signed by the coordinator's account for its method and endpoint, and may take at
/// most `timeout`.
#[derive(Clone)]
pub struct GrpcNodes {
    /// The coordinator's account, which signs every request.
    pub account: SigningKey,
    /// The identity presented on the links.
    pub tls: Option<TlsIdentity>,
    /// How long a node may take to answer one call.
    pub timeout: Duration,
}

impl GrpcNodes {
    /// Signs `request` for `method` at `endpoint` and sends it with `send`.
    fn call<Req, Resp, Send, Answer>(
        &self,
        endpoint: &str,
        method: &'static str,
        request: Req,
        send: Send,
    ) -> NodeCall<Resp>
    where
        Req: prost::Message + 'static,
        Resp: 'static,
        Send: FnOnce(
                cohortex_proto::v1::compute_client::ComputeClient<tonic::transport::Channel>,
                tonic::Request<Req>,
            ) -> Answer
            + std::marker::Send
            + 'static,
        Answer: Future<Output = Result<tonic::Response<Resp>, Status>> + std::marker::Send,
    {
        let signed = signed_request_to(&self.account, endpoint, method, request);
        let endpoint = endpoint.to_string();
        let tls = self.tls.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let client = connect(&endpoint, tls.as_ref()).await?;
            tokio::time::timeout(timeout, send(client, signed))
                .await
                .map_err(|_| Status::deadline_exceeded("node did not answer in time"))?
                .map(tonic::Response::into_inner)
        })
    }
}

impl ComputeNodes for GrpcNodes {
    fn contribute(
        &self,
        endpoint: &str,
        request: ContributeRequest,
    ) -> NodeCall<ContributeResponse> {
        self.call(
            endpoint,
            methods::CONTRIBUTE,
            request,
            |mut client, signed| async move { client.contribute(signed).await },
        )
    }

    fn contribution_participants(
        &self,
        endpoint: &str,
        request: ContributionParticipantsRequest,
    ) -> NodeCall<ContributionParticipantsResponse> {
        self.call(
            endpoint,
            methods::CONTRIBUTION_PARTICIPANTS,
            request,
            |mut client, signed| async move { client.contribution_participants(signed).await },
        )
    }

    fn add_noise(&self, endpoint: &str, request: AddNoiseRequest) -> NodeCall<AddNoiseResponse> {
        self.call(
            endpoint,
            methods::ADD_NOISE,
            request,
            |mut client, signed| async move { client.add_noise(signed).await },
        )
    }

    fn key_switch(&self, endpoint: &str, request: KeySwitchRequest) -> NodeCall<KeySwitchResponse> {
        self.call(
            endpoint,
            methods::KEY_SWITCH,
            request,
            |mut client, signed| async move { client.key_switch(signed).await },
        )
    }

    fn cosign_receipt(
        &self,
        endpoint: &str,
        request: CosignReceiptRequest,
    ) -> NodeCall<CosignReceiptResponse> {
        self.call(
            endpoint,
            methods::COSIGN_RECEIPT,
            request,
            |mut client, signed| async move { client.cosign_receipt(signed).await },
        )
    }

    fn dkg_deal(&self, endpoint: &str, request: DkgDealRequest) -> NodeCall<DkgDealResponse> {
        self.call(
            endpoint,
            methods::DKG_DEAL,
            request,
            |mut client, signed| async move { client.dkg_deal(signed).await },
        )
    }

    fn dkg_receive(
        &self,
        endpoint: &str,
        request: DkgReceiveRequest,
    ) -> NodeCall<DkgReceiveResponse> {
        self.call(
            endpoint,
            methods::DKG_RECEIVE,
            request,
            |mut client, signed| async move { client.dkg_receive(signed).await },
        )
    }

    fn dkg_justify(
        &self,
        endpoint: &str,
        request: DkgJustifyRequest,
    ) -> NodeCall<DkgJustifyResponse> {
        self.call(
            endpoint,
            methods::DKG_JUSTIFY,
            request,
            |mut client, signed| async move { client.dkg_justify(signed).await },
        )
    }

    fn dkg_finish(&self, endpoint: &str, request: DkgFinishRequest) -> NodeCall<DkgFinishResponse> {
        self.call(
            endpoint,
            methods::DKG_FINISH,
            request,
            |mut client, signed| async move { client.dkg_finish(signed).await },
        )
    }

    fn dkg_confirm(
        &self,
        endpoint: &str,
        request: DkgConfirmRequest,
    ) -> NodeCall<DkgConfirmResponse> {
        self.call(
            endpoint,
            methods::DKG_CONFIRM,
            request,
            |mut client, signed| async move { client.dkg_confirm(signed).await },
        )
    }

    #[cfg(feature = "tfhe")]
    fn feasibility(
        &self,
        endpoint: &str,
        request: FeasibilityRequest,
    ) -> NodeCall<FeasibilityResponse> {
        self.call(
            endpoint,
            methods::FEASIBILITY,
            request,
            |mut client, signed| async move { client.feasibility(signed).await },
        )
    }

    #[cfg(feature = "tfhe")]
    fn accept_invitation(
        &self,
        endpoint: &str,
        request: AcceptInvitationRequest,
    ) -> NodeCall<TrialReply> {
        self.call(
            endpoint,
            methods::ACCEPT_INVITATION,
            request,
            |mut client, signed| async move { client.accept_invitation(signed).await },
        )
    }

    #[cfg(feature = "tfhe")]
    fn put_evaluation_key(&self, endpoint: &str, key: Arc<Vec<u8>>) -> NodeCall<()> {
        let upload = signed_stream_request_to(
            &self.account,
            endpoint,
            methods::PUT_EVALUATION_KEY,
            super::key_chunks(&key),
        );
        let endpoint = endpoint.to_string();
        let tls = self.tls.clone();
        Box::pin(async move {
            let mut client = connect(&endpoint, tls.as_ref()).await?;
            tokio::time::timeout(EVALUATION_KEY_TIMEOUT, client.put_evaluation_key(upload))
                .await
                .map_err(|_| Status::deadline_exceeded("node did not take the key in time"))??;
            Ok(())
        })
    }
}

#[cfg(feature = "tfhe")]
/// How long a node may take to take a recruiter's evaluation key (tens of megabytes).
const EVALUATION_KEY_TIMEOUT: Duration = Duration::from_secs(300);

/// A node's or the market's refusal, as the order's failure (the order error itself names no
/// transport: `crate::error` is domain code).
impl From<Status> for OrderError {
    fn from(status: Status) -> Self {
        OrderError::Market(status.message().to_string())
    }
}

impl OrderError {
    /// The ledger refused `what` (the coordinator's error from submitting it).
    pub fn refused(what: &'static str) -> impl Fn(CoordinatorError) -> OrderError {
        move |error| OrderError::LedgerRefused {
            what,
            message: error.message().to_string(),
        }
    }
}
