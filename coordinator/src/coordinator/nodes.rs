//! The compute nodes as an order sees them: the calls the coordinator makes of a listing's node
//! and of the committee members, behind one trait, so that the order's phases can be run (and
//! their failure paths tested) against nodes that are not reached over gRPC.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use cohortex_proto::tls::TlsIdentity;
use cohortex_proto::v1::{
    AddNoiseRequest, AddNoiseResponse, ContributeRequest, ContributeResponse,
    ContributionParticipantsRequest, ContributionParticipantsResponse, CosignReceiptRequest,
    CosignReceiptResponse, KeySwitchRequest, KeySwitchResponse,
};
use compute_node::protocol::methods;
use ed25519_dalek::SigningKey;
use market::server::auth::signed_request_to;
use tonic::Status;

use super::connect;
use crate::error::OrderError;

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
}

/// A node's or the market's refusal, as the order's failure (the order error itself names no
/// transport: `crate::error` is domain code).
impl From<Status> for OrderError {
    fn from(status: Status) -> Self {
        OrderError::Market(status.message().to_string())
    }
}

impl OrderError {
    /// The ledger refused `what` (a [`Status`] from submitting it).
    pub fn refused(what: &'static str) -> impl Fn(Status) -> OrderError {
        move |status| OrderError::LedgerRefused {
            what,
            message: status.message().to_string(),
        }
    }
}
