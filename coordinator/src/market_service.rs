//! The gRPC Market service: listings, orders and receipts.

use std::sync::Arc;

use cohortex_proto::v1::market_server::Market;
use cohortex_proto::v1::{
    AcceptInvitationRequest, AcceptInvitationResponse, EvaluationKeyChunk, GetOrderRequest,
    GetOrderResponse, GetReceiptRequest, InclusionProof, ListListingsRequest, ListListingsResponse,
    ListTrialsRequest, ListTrialsResponse, Listing, OrderFeasibilityRequest, OrderQueryRequest,
    OrderQueryResponse, PostTrialRequest, PublishListingRequest, PutEvaluationKeyResponse,
    ReceiptProof, SignedTransaction, TransactionResult, Trial, TrialListing, TrialRepliesRequest,
    TrialReply,
};
use compute_node::Schema;
use market::server::auth::{unix_now, RequestVerifier};
use market::server::{
    bounded_message, envelope_field, excerpt, purpose_field, purpose_name, read_ledger, submit,
    submit_if, tx_error_status, tx_id_field, wrong_action,
};
use market::tx::UncheckedTx;
use market::{AccountId, Action, Compensation, TxBody, TxId};
use tonic::{Request, Response, Status};
use zk::{PublicKey, Wire};

use crate::coordinator::{
    compile_for, manifest_hash, query_hash, Coordinator, ListingInfo, OrderSpec, ReleaseIdentity,
};

/// Method paths, as signed in requests (defined once, in `cohortex_proto::methods`).
pub use cohortex_proto::methods::market as methods;

/// The Market service.
pub struct MarketService {
    coordinator: Arc<Coordinator>,
    verifier: RequestVerifier,
}

impl MarketService {
    /// The service over a coordinator.
    pub fn new(coordinator: Arc<Coordinator>) -> Self {
        Self {
            coordinator,
            verifier: RequestVerifier::new(),
        }
    }
}

fn admit_update(body: &TxBody) -> Result<(), Status> {
    match &body.action {
        Action::UpdateListing { .. } => Ok(()),
        other => Err(wrong_action("UpdateListing", other)),
    }
}

fn admit_withdraw(body: &TxBody) -> Result<(), Status> {
    match &body.action {
        Action::WithdrawListing { .. } => Ok(()),
        other => Err(wrong_action("WithdrawListing", other)),
    }
}

impl MarketService {
    /// Refuses an order for a purpose too few of a listing's patients consent to: it would
    /// only compute to a refused receipt. Names the listing.
    async fn enough_consent(
        &self,
        listings: &[market::ListingId],
        wanted: market::Purpose,
    ) -> Result<(), Status> {
        let checked = listings.to_vec();
        read_ledger(self.coordinator.ledger(), move |ledger| {
            let now = ledger.machine().last_time();
            for listing in &checked {
                let Some(terms) = ledger.state().listing(listing).map(|l| l.terms.clone()) else {
                    continue;
                };
                let consenting = ledger.state().current_consents(listing, wanted, now).len();
                if consenting < terms.min_cohort_size as usize {
                    return Err(Status::failed_precondition(format!(
                        "purpose: only {consenting} patient(s) of listing {listing} consent to {}; its minimum cohort is {}",
                        purpose_name(wanted),
                        terms.min_cohort_size
                    )));
                }
            }
            Ok(())
        })
        .await
    }

    /// Submits a signed transaction whose action `admit` accepts.
    async fn submit_admitted(
        &self,
        request: Request<SignedTransaction>,
        admit: fn(&TxBody) -> Result<(), Status>,
    ) -> Result<Response<TransactionResult>, Status> {
        let envelope = envelope_field(request.into_inner())?;
        let submitted = submit_if(self.coordinator.ledger(), envelope, admit).await?;
        Ok(Response::new(submitted.into()))
    }
}

fn transaction(message: Option<SignedTransaction>) -> Result<Vec<u8>, Status> {
    envelope_field(message.ok_or_else(|| Status::invalid_argument("transaction is missing"))?)
}

#[tonic::async_trait]
impl Market for MarketService {
    #[tracing::instrument(skip(self, request))]
    async fn list_listings(
        &self,
        request: Request<ListListingsRequest>,
    ) -> Result<Response<ListListingsResponse>, Status> {
        let message = request.into_inner();
        let purpose = if message.purpose.is_empty() {
            None
        } else {
            Some(purpose_field(&message.purpose, "purpose")?)
        };
        let infos = self.coordinator.listings()?;
        let listings = read_ledger(self.coordinator.ledger(), move |ledger| {
            let state = ledger.state();
            let mut listings = Vec::new();
            for (id, info) in infos {
                let Some(listing) = state.listing(&market::ListingId::new(id.clone())) else {
                    continue;
                };
                if listing.status != market::state::ListingStatus::Active {
                    continue;
                }
                if purpose.is_some_and(|wanted| !listing.terms.allowed_purposes.contains(&wanted)) {
                    continue;
                }
                listings.push(Listing {
                    id,
                    owner: listing.owner.0.to_vec(),
                    manifest: info.manifest,
                    price_per_query: listing.terms.price_per_query,
                    allowed_purposes: listing
                        .terms
                        .allowed_purposes
                        .iter()
                        .map(|purpose| purpose_name(*purpose).to_string())
                        .collect(),
                    min_cohort_size: listing.terms.min_cohort_size,
                    epsilon_budget_micro: listing.terms.epsilon_budget_micro,
                    epsilon_remaining_micro: listing.epsilon_remaining_micro(),
                    donation_fund: match listing.terms.compensation {
                        Compensation::Payment => Vec::new(),
                        Compensation::Donation { fund } => fund.0.to_vec(),
                    },
                    node_endpoint: info.endpoint,
                });
            }
            Ok(listings)
        })
        .await?;
        Ok(Response::new(ListListingsResponse { listings }))
    }

    #[tracing::instrument(skip(self, request))]
    async fn publish_listing(
        &self,
        request: Request<PublishListingRequest>,
    ) -> Result<Response<TransactionResult>, Status> {
        let message = request.into_inner();
        let envelope = transaction(message.transaction)?;
        let schema = Schema::from_toml(&message.manifest, "manifest").map_err(|error| {
            Status::invalid_argument(format!("manifest: {}", bounded_message(&error.to_string())))
        })?;
        let scheme = self.coordinator.link_scheme();
        if !message.node_endpoint.starts_with(&format!("{scheme}://")) {
            return Err(Status::invalid_argument(format!(
                "node_endpoint must be an {scheme}:// URL (the market's links are {})",
                if scheme == "https" {
                    "mutual TLS"
                } else {
                    "plaintext"
                }
            )));
        }
        let expected_hash = manifest_hash(&message.manifest);
        let listing_id = std::sync::Arc::new(std::sync::Mutex::new(None));
        let found = Arc::clone(&listing_id);
        let submitted = submit_if(self.coordinator.ledger(), envelope, move |body| match &body
            .action
        {
            Action::PublishListing {
                listing,
                schema_hash,
                ..
            } => {
                if *schema_hash != expected_hash {
                    return Err(Status::invalid_argument(
                        "manifest: its hash is not the transaction's schema_hash",
                    ));
                }
                if let Ok(mut slot) = found.lock() {
                    *slot = Some(listing.0.clone());
                }
                Ok(())
            }
            other => Err(wrong_action("PublishListing", other)),
        })
        .await?;
        let listing = listing_id
            .lock()
            .ok()
            .and_then(|slot| slot.clone())
            .ok_or_else(|| Status::internal("listing id not recorded"))?;
        self.coordinator
            .register_listing(
                &listing,
                ListingInfo {
                    manifest: message.manifest,
                    schema,
                    endpoint: message.node_endpoint,
                },
            )
            .await?;
        Ok(Response::new(submitted.into()))
    }

    #[tracing::instrument(skip(self, request))]
    async fn update_listing(
        &self,
        request: Request<SignedTransaction>,
    ) -> Result<Response<TransactionResult>, Status> {
        self.submit_admitted(request, admit_update).await
    }

    #[tracing::instrument(skip(self, request))]
    async fn withdraw_listing(
        &self,
        request: Request<SignedTransaction>,
    ) -> Result<Response<TransactionResult>, Status> {
        self.submit_admitted(request, admit_withdraw).await
    }

    #[tracing::instrument(skip(self, request))]
    async fn order_query(
        &self,
        request: Request<OrderQueryRequest>,
    ) -> Result<Response<OrderQueryResponse>, Status> {
        let message = request.into_inner();
        let envelope = transaction(message.transaction)?;
        if message.sql.trim().is_empty() {
            return Err(Status::invalid_argument("sql is empty"));
        }
        let verified = UncheckedTx::parse(envelope.clone())
            .and_then(UncheckedTx::verify)
            .map_err(|error| tx_error_status(&error))?;
        let body = verified.body().clone();
        // The result key is the one the buyer signed into the order: members key-switch to
        // nothing else.
        let Action::OrderQueryFor {
            query_hash: ordered_hash,
            listings,
            purpose,
            epsilon_micro,
            result_key: signed_key,
            ..
        } = &body.action
        else {
            return Err(wrong_action("OrderQueryFor", &body.action));
        };
        if !message.result_key.is_empty() && &message.result_key != signed_key {
            return Err(Status::invalid_argument(
                "result_key: differs from the result key signed into the order",
            ));
        }
        let result_key = PublicKey::from_bytes(signed_key).map_err(|error| {
            Status::invalid_argument(format!("envelope: the order's result_key: {error}"))
        })?;
        if *ordered_hash != query_hash(&message.sql) {
            return Err(Status::invalid_argument(
                "sql: its hash is not the transaction's query_hash",
            ));
        }
        let mut infos = Vec::new();
        for listing in listings {
            let info = self.coordinator.listing(&listing.0)?.ok_or_else(|| {
                Status::not_found(format!(
                    "listing {} has no compute node registered",
                    excerpt(&listing.0)
                ))
            })?;
            infos.push(info);
        }
        // The query compiler's errors quote fragments of the query; compile_for bounds them.
        let plan = compile_for(&message.sql, &infos)?;
        // The same buyer repeating a recent query: answer from the recorded release, with no
        // new escrow, no budget and no fresh noise (averaging repeats would defeat the noise).
        let identity = ReleaseIdentity {
            buyer: body.signer,
            query_hash: *ordered_hash,
            listings: listings.clone(),
            purpose: *purpose,
            epsilon_micro: *epsilon_micro,
            result_key: result_key.to_bytes(),
        };
        if let Some(earlier) = self.coordinator.earlier_release(&identity, unix_now())? {
            tracing::info!(order = %hex::encode(earlier.0.as_bytes()), "repeat order answered from its earlier release");
            return Ok(Response::new(OrderQueryResponse {
                order_id: earlier.0.as_bytes().to_vec(),
                answered_from_earlier_release: true,
            }));
        }
        if self.coordinator.committee()?.is_none() {
            return Err(Status::failed_precondition(
                "the key committee has not been formed yet",
            ));
        }
        self.enough_consent(listings, *purpose).await?;
        // Escrow and ε reservation happen here; a refused order changes nothing.
        let submitted = submit(self.coordinator.ledger(), envelope).await?;
        self.coordinator.start_order(OrderSpec {
            order: submitted.tx_id,
            buyer: body.signer,
            sql: message.sql,
            plan,
            listings: listings.clone(),
            purpose: *purpose,
            epsilon_micro: *epsilon_micro,
            result_key,
        })?;
        Ok(Response::new(OrderQueryResponse {
            order_id: submitted.tx_id.0.as_bytes().to_vec(),
            answered_from_earlier_release: false,
        }))
    }

    #[tracing::instrument(skip(self, request))]
    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<GetOrderResponse>, Status> {
        let order: TxId = tx_id_field(&request.get_ref().order_id, "order_id")?;
        let record = self
            .coordinator
            .order(&order)?
            .ok_or_else(|| Status::not_found("order_id: no such order"))?;
        // Anyone but the buyer is refused before its signature is checked.
        self.verifier
            .verify_from(methods::GET_ORDER, &request, unix_now(), |caller| {
                if *caller != record.buyer {
                    return Err(Status::permission_denied(
                        "only the order's buyer may read its status and result",
                    ));
                }
                Ok(())
            })?;
        Ok(Response::new(GetOrderResponse {
            state: record.state as i32,
            message: record.message,
            nodes: record.nodes.iter().map(Into::into).collect(),
            plan: record.plan,
            result: record.result,
            receipt_id: record
                .receipt
                .map(|id| id.0.as_bytes().to_vec())
                .unwrap_or_default(),
            committee_used: record.committee_used,
            epsilon_micro: record.epsilon_micro,
            noise_members: record.noise_members,
            suppressed: record.suppressed,
            site_counts: record.site_counts,
        }))
    }

    #[tracing::instrument(skip(self, request))]
    async fn get_receipt(
        &self,
        request: Request<GetReceiptRequest>,
    ) -> Result<Response<ReceiptProof>, Status> {
        let receipt_id = tx_id_field(&request.get_ref().receipt_id, "receipt_id")?;
        let receipt = read_ledger(self.coordinator.ledger(), move |ledger| {
            ledger
                .receipt(&receipt_id)
                .map_err(|error| market::server::ledger_error_status(&error))
        })
        .await?;
        Ok(Response::new(ReceiptProof {
            envelope: receipt.tx.clone(),
            inclusion: Some(InclusionProof {
                leaf_index: receipt.leaf_index,
                tree_size: receipt.head.header.tree_size,
                hashes: receipt
                    .inclusion_proof
                    .chunks(32)
                    .map(<[u8]>::to_vec)
                    .collect(),
                tree_head: Some((&receipt.head).into()),
            }),
        }))
    }
    #[tracing::instrument(skip(self, request))]
    async fn put_evaluation_key(
        &self,
        request: Request<tonic::Streaming<EvaluationKeyChunk>>,
    ) -> Result<Response<PutEvaluationKeyResponse>, Status> {
        // Only a registered buyer may upload: anyone else is refused before any signature
        // work or nonce is spent on it.
        let claimed = market::server::auth::claimed_account(request.metadata())?;
        let role = read_ledger(self.coordinator.ledger(), move |ledger| {
            Ok(ledger.state().account(&claimed).map(|account| account.role))
        })
        .await?;
        if role != Some(market::Role::Buyer) {
            return Err(Status::permission_denied(
                "only a registered buyer (recruiter) account may store an evaluation key",
            ));
        }
        let caller =
            self.verifier
                .verify_stream(methods::PUT_EVALUATION_KEY, &request, unix_now())?;
        self.receive_evaluation_key(caller, request.into_inner())
            .await
    }

    #[tracing::instrument(skip(self, request))]
    async fn post_trial(
        &self,
        request: Request<PostTrialRequest>,
    ) -> Result<Response<TransactionResult>, Status> {
        self.place_trial(request.into_inner())
            .await
            .map(|submitted| Response::new(submitted.into()))
    }

    #[tracing::instrument(skip(self, _request))]
    async fn list_trials(
        &self,
        _request: Request<ListTrialsRequest>,
    ) -> Result<Response<ListTrialsResponse>, Status> {
        let now = unix_now();
        let (trials, chain_id) = read_ledger(self.coordinator.ledger(), move |ledger| {
            let state = ledger.state();
            let time = now.max(ledger.machine().last_time());
            let trials = state
                .trials()
                .filter(|record| record.posting.expires_at > time)
                .map(|record| Trial {
                    trial: record.posting.trial.clone(),
                    summary: record.posting.summary.clone(),
                    recruiter: record.recruiter.0.to_vec(),
                    contact_key: record.posting.contact_key.to_vec(),
                    listings: record
                        .posting
                        .listings
                        .iter()
                        .map(|listing| TrialListing {
                            listing: listing.0.clone(),
                            owner: state
                                .listing(listing)
                                .map(|found| found.owner.0.to_vec())
                                .unwrap_or_default(),
                        })
                        .collect(),
                    expires_at: record.posting.expires_at,
                    replies: record.replies.len() as u64,
                })
                .collect();
            Ok((trials, ledger.chain_id()))
        })
        .await?;
        Ok(Response::new(ListTrialsResponse {
            trials,
            chain_id: chain_id.as_bytes().to_vec(),
        }))
    }

    #[tracing::instrument(skip(self, request))]
    async fn accept_invitation(
        &self,
        request: Request<AcceptInvitationRequest>,
    ) -> Result<Response<AcceptInvitationResponse>, Status> {
        self.relay_acceptance(request.into_inner())
            .await
            .map(Response::new)
    }

    type TrialRepliesStream = tokio_stream::Iter<std::vec::IntoIter<Result<TrialReply, Status>>>;

    #[tracing::instrument(skip(self, request))]
    async fn trial_replies(
        &self,
        request: Request<TrialRepliesRequest>,
    ) -> Result<Response<Self::TrialRepliesStream>, Status> {
        let wanted = request.get_ref().trial.clone();
        let recruiter = read_ledger(self.coordinator.ledger(), move |ledger| {
            Ok(ledger.state().trial(&wanted).map(|record| record.recruiter))
        })
        .await?
        .ok_or_else(|| Status::not_found("trial: no such trial is posted"))?;
        // Anyone but the recruiter is refused before its signature is checked.
        self.verifier
            .verify_from(methods::TRIAL_REPLIES, &request, unix_now(), |caller| {
                if *caller != recruiter {
                    return Err(Status::permission_denied(
                        "only the trial's recruiter may read its replies",
                    ));
                }
                Ok(())
            })?;
        let trial = request.into_inner().trial;
        let replies = self.stored_replies(&trial).await?;
        let items: Vec<Result<TrialReply, Status>> = replies.into_iter().map(Ok).collect();
        Ok(Response::new(tokio_stream::iter(items)))
    }

    #[tracing::instrument(skip(self, request))]
    async fn order_feasibility(
        &self,
        request: Request<OrderFeasibilityRequest>,
    ) -> Result<Response<OrderQueryResponse>, Status> {
        self.place_feasibility(request.into_inner())
            .await
            .map(Response::new)
    }
}

#[cfg(feature = "tfhe")]
impl MarketService {
    async fn receive_evaluation_key(
        &self,
        owner: AccountId,
        mut stream: tonic::Streaming<EvaluationKeyChunk>,
    ) -> Result<Response<PutEvaluationKeyResponse>, Status> {
        use zk::fhe::EvaluationKey;
        let _turn = self.coordinator.evaluation_key_upload_turn().await?;
        let bytes = compute_node::feasibility_wire::read_evaluation_key(&mut stream).await?;
        let (bytes, checked) = tokio::task::spawn_blocking(move || {
            let checked = EvaluationKey::from_bytes(&bytes).map(|_| ());
            (bytes, checked)
        })
        .await
        .map_err(|error| Status::internal(format!("worker failed: {error}")))?;
        checked.map_err(|error| Status::invalid_argument(format!("data: {error}")))?;
        let fingerprint = EvaluationKey::fingerprint_of(&bytes);
        let length = bytes.len() as u64;
        self.coordinator
            .keep_evaluation_key(owner, fingerprint, bytes)?;
        Ok(Response::new(PutEvaluationKeyResponse {
            fingerprint: fingerprint.to_vec(),
            bytes: length,
        }))
    }

    /// Checks a feasibility order against the listings and the stored evaluation key,
    /// appends it (escrow and ε reservation) and starts it.
    async fn place_feasibility(
        &self,
        message: OrderFeasibilityRequest,
    ) -> Result<OrderQueryResponse, Status> {
        use compute_node::feasibility_wire::{criteria_from_wire, criteria_hash};
        let envelope = transaction(message.transaction)?;
        let wire = message
            .criteria
            .ok_or_else(|| Status::invalid_argument("criteria: missing"))?;
        let (fingerprint, criteria) = criteria_from_wire(&wire, "criteria")?;
        let verified = UncheckedTx::parse(envelope.clone())
            .and_then(UncheckedTx::verify)
            .map_err(|error| tx_error_status(&error))?;
        let body = verified.body().clone();
        let Action::OrderQueryFor {
            query_hash: ordered_hash,
            listings,
            purpose,
            epsilon_micro,
            result_key,
            ..
        } = &body.action
        else {
            return Err(wrong_action("OrderQueryFor", &body.action));
        };
        if *purpose != market::Purpose::TrialFeasibility {
            return Err(Status::invalid_argument(
                "envelope: a feasibility order's purpose is trial_feasibility",
            ));
        }
        if result_key.as_slice() != fingerprint.as_slice() {
            return Err(Status::invalid_argument(
                "criteria.evaluation_key: not the result key signed into the order",
            ));
        }
        if *ordered_hash != criteria_hash(&wire) {
            return Err(Status::invalid_argument(
                "criteria: their hash is not the transaction's query_hash",
            ));
        }
        let key = self
            .coordinator
            .evaluation_key(&fingerprint)?
            .ok_or_else(|| {
                Status::failed_precondition(
                    "criteria.evaluation_key: the market holds no evaluation key with this \
                 fingerprint; store it with PutEvaluationKey first",
                )
            })?;
        self.criteria_fit(&criteria, listings, "criteria")?;
        self.enough_consent(listings, *purpose).await?;
        let submitted = submit(self.coordinator.ledger(), envelope).await?;
        self.coordinator.start_feasibility(
            submitted.tx_id,
            body.signer,
            wire,
            key,
            listings.clone(),
            *epsilon_micro,
        )?;
        Ok(OrderQueryResponse {
            order_id: submitted.tx_id.0.as_bytes().to_vec(),
            answered_from_earlier_release: false,
        })
    }
}

#[cfg(feature = "tfhe")]
impl MarketService {
    /// Checks a trial posting's criteria against every listing's schema and the stored
    /// evaluation key, then appends it.
    async fn place_trial(
        &self,
        message: PostTrialRequest,
    ) -> Result<market::server::Submitted, Status> {
        use compute_node::feasibility_wire::criteria_from_wire;
        use prost::Message;
        let envelope = transaction(message.transaction)?;
        let verified = UncheckedTx::parse(envelope.clone())
            .and_then(UncheckedTx::verify)
            .map_err(|error| tx_error_status(&error))?;
        let body = verified.body().clone();
        let Action::PostTrial(posting) = &body.action else {
            return Err(wrong_action("PostTrial", &body.action));
        };
        let wire = cohortex_proto::v1::EncryptedCriteria::decode(posting.criteria.as_slice())
            .map_err(|error| {
                Status::invalid_argument(format!(
                    "transaction.criteria: not an EncryptedCriteria message ({error})"
                ))
            })?;
        let (fingerprint, criteria) = criteria_from_wire(&wire, "transaction.criteria")?;
        if fingerprint != posting.evaluation_key {
            return Err(Status::invalid_argument(
                "transaction.criteria.evaluation_key: not the posting's evaluation_key",
            ));
        }
        if self.coordinator.evaluation_key(&fingerprint)?.is_none() {
            return Err(Status::failed_precondition(
                "transaction.evaluation_key: the market holds no evaluation key with this \
                 fingerprint; store it with PutEvaluationKey first",
            ));
        }
        self.criteria_fit(&criteria, &posting.listings, "transaction.criteria")?;
        submit(self.coordinator.ledger(), envelope).await
    }

    /// Checks encrypted criteria against the schema of every listing's node; errors name the
    /// field (`field`) and the listing.
    fn criteria_fit(
        &self,
        criteria: &compute_node::feasibility::EncryptedCriteria,
        listings: &[market::ListingId],
        field: &str,
    ) -> Result<(), Status> {
        for listing in listings {
            let info = self.coordinator.listing(&listing.0)?.ok_or_else(|| {
                Status::not_found(format!(
                    "listing {} has no compute node registered",
                    excerpt(&listing.0)
                ))
            })?;
            criteria.check(&info.schema).map_err(|error| {
                Status::invalid_argument(format!(
                    "{field}.{} (listing {})",
                    bounded_message(&error.to_string()),
                    excerpt(&listing.0)
                ))
            })?;
        }
        Ok(())
    }

    async fn relay_acceptance(
        &self,
        message: AcceptInvitationRequest,
    ) -> Result<AcceptInvitationResponse, Status> {
        let call = compute_node::calls::AcceptanceCall {
            trial: message.trial,
            listing: market::ListingId::new(message.listing),
            sealed: message.sealed,
        };
        Ok(self.coordinator.relay_acceptance(call).await?)
    }

    async fn stored_replies(&self, trial: &str) -> Result<Vec<TrialReply>, Status> {
        Ok(self.coordinator.trial_replies(trial).await?)
    }
}

#[cfg(not(feature = "tfhe"))]
impl MarketService {
    async fn place_trial(&self, _: PostTrialRequest) -> Result<market::server::Submitted, Status> {
        Err(Status::unimplemented(
            "this market was built without the `tfhe` feature: no trial recruitment",
        ))
    }

    async fn relay_acceptance(
        &self,
        _: AcceptInvitationRequest,
    ) -> Result<AcceptInvitationResponse, Status> {
        Err(Status::unimplemented(
            "this market was built without the `tfhe` feature: no trial recruitment",
        ))
    }

    async fn stored_replies(&self, _: &str) -> Result<Vec<TrialReply>, Status> {
        Ok(Vec::new())
    }

    async fn receive_evaluation_key(
        &self,
        _: AccountId,
        _: tonic::Streaming<EvaluationKeyChunk>,
    ) -> Result<Response<PutEvaluationKeyResponse>, Status> {
        Err(Status::unimplemented(
            "this market was built without the `tfhe` feature: no blind feasibility search",
        ))
    }

    async fn place_feasibility(
        &self,
        _: OrderFeasibilityRequest,
    ) -> Result<OrderQueryResponse, Status> {
        Err(Status::unimplemented(
            "this market was built without the `tfhe` feature: no blind feasibility search",
        ))
    }
}
