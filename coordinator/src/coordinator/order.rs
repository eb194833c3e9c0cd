//! One order, in named phases: collect the listings' contributions, verify them, draw the
//! noise from a quorum, key-switch the counts, key-switch the values, and record the receipt.
//! Each phase takes what the phases before it established and returns what the next needs;
//! the nodes are reached through [`ComputeNodes`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cohortex_proto::v1::{
    AddNoiseRequest, AddNoiseResponse, ContributeRequest, ContributeResponse,
    ContributionParticipantsRequest, ContributionRecord, CosignReceiptRequest, KeySwitchPhase,
    KeySwitchRequest, KeySwitchResponse, OrderState,
};
use compute_node::contribution::{sum_contributions, Contribution, ContributionStatement};
use compute_node::dp::calibrate;
use compute_node::noise::{
    apply_noise, count_slots, public_count_key, public_count_secret, released_value_slots,
    suppressed_cells, withheld_slots, NoiseShare,
};
use compute_node::protocol::{
    contribution_context, counts_context, decode_noise_share, encode_noise_share, release_context,
};
use compute_node::{verify_contributions, QueryPlan};
use market::hash::tagged_hash;
use market::server::{purpose_name, read_ledger};
use market::{
    AccountId, ListingContribution, ListingId, OrderId, Purpose, QueryReceipt, ReceiptCosignature,
    TxId,
};
use tonic::Status;
use zk::keyswitch::KeySwitchOutcome;
use zk::{Ciphertext, CiphertextRangeProof, KeySwitchShare, MemberIndex, PublicKey, Wire};

use super::nodes::{ComputeNodes, NodeCall};
use super::{
    count_table, query_hash, Committee, Coordinator, NodeOutcome, NodeReport, OrderRecord,
    PhaseClock, ReleaseIdentity,
};
use crate::error::{CoordinatorError, OrderError};

/// An order as the market accepted and escrowed it: what the coordinator computes.
#[derive(Debug, Clone)]
pub struct OrderSpec {
    /// The order transaction's id.
    pub order: TxId,
    /// Who placed and paid for it.
    pub buyer: AccountId,
    /// The SQL as the buyer signed it.
    pub sql: String,
    /// Its compiled plan.
    pub plan: QueryPlan,
    /// The listings it reads, in order.
    pub listings: Vec<ListingId>,
    /// The purpose it is made for.
    pub purpose: Purpose,
    /// ε per listing, micro-ε.
    pub epsilon_micro: u64,
    /// The key the release is re-encrypted to.
    pub result_key: PublicKey,
}

impl OrderSpec {
    fn order_bytes(&self) -> Vec<u8> {
        self.order.0.as_bytes().to_vec()
    }

    /// What makes a repeat of this order the same query.
    pub fn identity(&self) -> ReleaseIdentity {
        ReleaseIdentity {
            buyer: self.buyer,
            query_hash: query_hash(&self.sql),
            listings: self.listings.clone(),
            purpose: self.purpose,
            epsilon_micro: self.epsilon_micro,
            result_key: self.result_key.to_bytes(),
        }
    }
}

/// A contribution that decoded and carries its listing owner's attestation.
struct Attested {
    /// Where its listing stands in the order.
    position: usize,
    contribution: Contribution,
    listing: ListingContribution,
}

/// After the verify phase: a report per listing, and the contributions that may be summed.
struct Verified {
    reports: Vec<NodeReport>,
    attested: Vec<Attested>,
}

/// After the noise phase: the quorum whose members noised the sum, and the noisy sum.
struct Noised {
    shares: Vec<NoiseShare>,
    quorum: Committee,
    noisy: Vec<Ciphertext>,
}

/// After the counts phase: the counts opened, which slots are withheld (and which cells
/// entirely), and what is released so far.
struct CountsOpened {
    opened: KeySwitchOutcome,
    count_shares: Vec<KeySwitchShare>,
    noisy_counts: Vec<i64>,
    withheld: Vec<bool>,
    suppressed: Vec<bool>,
    min_cohort: u64,
}

/// After the values phase: the release, slot by slot, and who key-switched it.
struct Released {
    result: Vec<Vec<u8>>,
    used: Vec<MemberIndex>,
    shares: Vec<KeySwitchShare>,
}

impl Coordinator {
    /// Records a new order (already escrowed on the ledger) and computes it in the
    /// background; if it cannot complete, the escrow is refunded.
    pub fn start_order(self: &Arc<Self>, spec: OrderSpec) -> Result<(), CoordinatorError> {
        let plan_json = serde_json::to_string(&spec.plan)
            .map_err(|error| CoordinatorError::internal(format!("plan: {error}")))?;
        self.orders.lock().map_err(|_| super::poisoned())?.insert(
            spec.order,
            OrderRecord {
                buyer: spec.buyer,
                state: OrderState::Computing,
                message: "computing".into(),
                nodes: Vec::new(),
                plan: plan_json,
                result: Vec::new(),
                receipt: None,
                committee_used: Vec::new(),
                epsilon_micro: spec.epsilon_micro,
                noise_members: Vec::new(),
                suppressed: Vec::new(),
                identity: spec.identity(),
                completed_at: None,
                site_counts: Vec::new(),
                phases: Vec::new(),
            },
        );
        let coordinator = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(message) = coordinator.compute(&spec).await {
                tracing::warn!(order = %hex::encode(spec.order.0.as_bytes()), %message, "order failed; refunding");
                coordinator.refund_failed(spec.order, message).await;
            }
        });
        Ok(())
    }

    /// The order's phases, in turn.
    pub(crate) async fn compute(&self, spec: &OrderSpec) -> Result<(), OrderError> {
        let committee = self.committee()?.ok_or(OrderError::NoCommittee)?;
        let nodes = self.nodes();
        let mut clock = PhaseClock::start();

        let answers = self.collect_contributions(Arc::clone(&nodes), spec).await?;
        clock.lap("contribute");

        let verified = self.verify_contributions(&committee, spec, answers).await?;
        clock.lap("verify");

        // The receipt's rules, checked against the ledger before any noise is drawn or
        // anything decrypted: every participant may still be used (consent, personal limit)
        // and every listing keeps its minimum cohort. A refusal here costs no ε.
        // Shared with the ledger check, not copied: a list holds every participant.
        let named: Arc<[(ListingId, Vec<AccountId>)]> = verified
            .attested
            .iter()
            .map(|attested| {
                (
                    attested.listing.listing.clone(),
                    attested.listing.participants.clone(),
                )
            })
            .collect();
        self.check_receipt_rules(Arc::clone(&named), spec.purpose, spec.epsilon_micro)
            .await?;
        clock.lap("check receipt rules");

        let noised = self
            .add_noise(Arc::clone(&nodes), &committee, spec, &verified)
            .await?;
        clock.lap("noise");

        // The release is fixed on the ledger before anything is key-switched: these members'
        // noise, switched by these members. Members key-switch nothing else, so the order is
        // released at most once; from here on a refund keeps its ε spent. In the same block,
        // before it, the participants go on the ledger in bounded chunks, so that the receipt
        // names none and stays small however many took part (the members check the nodes'
        // attestations against the staged lists).
        let committed: Vec<u16> = noised.shares.iter().map(|share| share.member).collect();
        let parts = verified
            .attested
            .iter()
            .map(|part| ListingContribution {
                participants: Vec::new(),
                ..part.listing.clone()
            })
            .collect();
        self.stage_and_commit_release(OrderId(spec.order), &named, parts, committed)
            .await?;
        clock.lap("stage participants, commit release");

        let counts = self
            .switch_counts(Arc::clone(&nodes), &committee, spec, &noised)
            .await?;
        clock.lap("key switch counts");

        let released = self
            .switch_values(Arc::clone(&nodes), &committee, spec, &noised, &counts)
            .await?;
        clock.lap("key switch values");

        self.settle(nodes, spec, &verified, &noised, &counts, released, clock)
            .await
    }

    /// Phase CONTRIBUTE: every listing's node computes, encrypts and proves, in parallel. A
    /// long participant list comes a page at a time, and no more than the vault's capacity,
    /// the public bound on its rows. Returns each listing's answer, by position.
    async fn collect_contributions(
        &self,
        nodes: Arc<dyn ComputeNodes>,
        spec: &OrderSpec,
    ) -> Result<BTreeMap<usize, Result<ContributeResponse, Status>>, OrderError> {
        let mut tasks = tokio::task::JoinSet::new();
        for (position, listing) in spec.listings.iter().enumerate() {
            let info = self
                .listing(&listing.0)?
                .ok_or_else(|| OrderError::NoNode(listing.to_string()))?;
            let first = nodes.contribute(
                &info.endpoint,
                ContributeRequest {
                    order_id: spec.order_bytes(),
                    listing: listing.0.clone(),
                    sql: spec.sql.clone(),
                    purpose: purpose_name(spec.purpose).to_string(),
                },
            );
            let pages = PageSource {
                nodes: Arc::clone(&nodes),
                endpoint: info.endpoint.clone(),
                order_id: spec.order_bytes(),
            };
            tasks.spawn(async move { (position, pages.complete(first).await) });
        }
        let mut answers = BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (position, answer) = joined
                .map_err(|error| OrderError::Internal(format!("node task failed: {error}")))?;
            answers.insert(position, answer);
        }
        Ok(answers)
    }

    /// Phase VERIFY: decode each answer, check that its listing's owner attested it for this
    /// order, and batch-verify every attested contribution's proofs. Fails the order, naming
    /// each listing, unless every listing's contribution is valid.
    async fn verify_contributions(
        &self,
        committee: &Committee,
        spec: &OrderSpec,
        mut answers: BTreeMap<usize, Result<ContributeResponse, Status>>,
    ) -> Result<Verified, OrderError> {
        let (chain_id, owners) = self.listing_owners(&spec.listings).await?;
        let order_id = OrderId(spec.order);
        let order_query_hash = query_hash(&spec.sql);
        let mut reports: Vec<NodeReport> = Vec::new();
        let mut attested: Vec<Attested> = Vec::new();
        for (position, listing) in spec.listings.iter().enumerate() {
            let mut report = NodeReport::accepted(&listing.0);
            match answers.remove(&position) {
                Some(Ok(response)) => match decode_contribution(&response) {
                    Ok((contribution, participants)) => {
                        report.participants = participants.len() as u64;
                        let part = ListingContribution {
                            listing: listing.clone(),
                            epsilon_debited_micro: spec.epsilon_micro,
                            participants,
                            capacity: response.capacity,
                            contribution_hash: market::hash::contribution_hash(
                                &response.ciphertexts,
                                &response.proof,
                            ),
                            attestation: response.attestation.clone(),
                        };
                        let owner_key =
                            owners[position].and_then(|owner| owner.verifying_key().ok());
                        let signed = owner_key.is_some_and(|key| {
                            part.attested_by(&key, &chain_id, &order_id, &order_query_hash)
                        });
                        if signed {
                            attested.push(Attested {
                                position,
                                contribution,
                                listing: part,
                            });
                        } else {
                            report.mark(
                                NodeOutcome::Rejected,
                                "attestation: not the listing owner's signature over this \
                                 order's contribution, participants and capacity; its \
                                 contribution was not summed",
                            );
                        }
                    }
                    Err(reason) => report.mark(NodeOutcome::Rejected, reason),
                },
                Some(Err(status)) => {
                    report.mark(NodeOutcome::of_refusal(&status), status.message())
                }
                None => report.mark(NodeOutcome::Unavailable, "no answer"),
            }
            reports.push(report);
        }
        let order_bytes = spec.order_bytes();
        let contexts: Vec<_> = attested
            .iter()
            .map(|part| contribution_context(&order_bytes, &spec.listings[part.position].0))
            .collect::<Result<_, _>>()?;
        let statements: Vec<ContributionStatement<'_>> = attested
            .iter()
            .zip(&contexts)
            .map(|(part, context)| ContributionStatement {
                context,
                capacity: part.listing.capacity,
                contribution: &part.contribution,
            })
            .collect();
        if let Err(failures) = verify_contributions(
            committee.public.collective_key(),
            &spec.plan,
            &statements,
            &mut rand::rngs::OsRng,
        ) {
            for (index, error) in failures {
                reports[attested[index].position].mark(
                    NodeOutcome::Rejected,
                    format!("{error}; its contribution was not summed"),
                );
            }
        }
        let _ = self.update_order(spec.order, |record| record.nodes = reports.clone());
        let failed = failed_reports(&reports);
        if !failed.is_empty() {
            return Err(OrderError::Contributions(failed));
        }
        Ok(Verified { reports, attested })
    }

    /// Phase NOISE: a quorum of t members verifies the contributions, fixes their sum and adds
    /// its share of the noise under encryption. With at most t − 1 members colluding, any t
    /// include an honest one, whose share alone gives the release its ε: so t shares, not n,
    /// and the buyer's noise is √t draws, not √n.
    async fn add_noise(
        &self,
        nodes: Arc<dyn ComputeNodes>,
        committee: &Committee,
        spec: &OrderSpec,
        verified: &Verified,
    ) -> Result<Noised, OrderError> {
        let contributions: Vec<&Contribution> = verified
            .attested
            .iter()
            .map(|part| &part.contribution)
            .collect();
        let summed = sum_contributions(&contributions);
        let records: Vec<ContributionRecord> = verified
            .attested
            .iter()
            .map(|part| ContributionRecord {
                listing: part.listing.listing.0.clone(),
                capacity: part.listing.capacity,
                ciphertexts: part
                    .contribution
                    .ciphertexts
                    .iter()
                    .map(Wire::to_bytes)
                    .collect(),
                proof: part.contribution.proof.to_bytes(),
            })
            .collect();
        let calibration = calibrate(&spec.plan, spec.epsilon_micro)
            .map_err(|error| OrderError::Calibration(error.to_string()))?;
        // Test hook: a coordinator colluding with members who withhold their noise asks them
        // for none, and goes on with fewer than t shares (the ledger then refuses the release).
        let withheld = self
            .withheld_noise
            .lock()
            .map_err(|_| OrderError::Internal("coordinator lock poisoned".into()))?
            .clone();
        let (mut shares, absent) = noise_from_a_quorum(
            nodes,
            committee,
            &withheld,
            AddNoiseRequest {
                order_id: spec.order_bytes(),
                sql: spec.sql.clone(),
                contributions: records,
            },
        )
        .await;
        let threshold = usize::from(committee.public.threshold());
        if shares.len() < threshold && withheld.is_empty() {
            return Err(OrderError::Committee(format!(
                "only {} of the {threshold} committee members needed added noise ({})",
                shares.len(),
                absent.join("; ")
            )));
        }
        shares.sort_by_key(|share| share.member);
        // The noise, key-switch and co-signature rounds run on this quorum only.
        let quorum = Committee {
            public: committee.public.clone(),
            members: committee
                .members
                .iter()
                .filter(|(member, _)| shares.iter().any(|share| share.member == member.get()))
                .cloned()
                .collect(),
        };
        let included: Vec<&NoiseShare> = shares.iter().collect();
        let noisy = apply_noise(&summed, &included, &calibration);
        Ok(Noised {
            shares,
            quorum,
            noisy,
        })
    }

    /// Phase COUNTS: the noisy counts are key-switched to the public count key and decrypted;
    /// statistics whose count is below the minimum cohort are withheld.
    async fn switch_counts(
        &self,
        nodes: Arc<dyn ComputeNodes>,
        committee: &Committee,
        spec: &OrderSpec,
        noised: &Noised,
    ) -> Result<CountsOpened, OrderError> {
        let order_bytes = spec.order_bytes();
        let counts = count_slots(&spec.plan);
        let count_ciphertexts: Vec<Ciphertext> =
            counts.iter().map(|&slot| noised.noisy[slot]).collect();
        let request = KeySwitchRequest {
            order_id: order_bytes,
            recipient: Vec::new(),
            phase: KeySwitchPhase::Counts as i32,
            noise: noised.shares.iter().map(encode_noise_share).collect(),
            count_shares: Vec::new(),
            noisy_counts: Vec::new(),
        };
        let answers = member_round(nodes, &noised.quorum, move |nodes, endpoint| {
            nodes.key_switch(&endpoint, request.clone())
        })
        .await;
        let (count_shares, absent) = valid_shares(answers);
        let context = counts_context(&spec.order_bytes())?;
        let opened = committee
            .public
            .combine(
                &context,
                &count_ciphertexts,
                &public_count_key(),
                &count_shares,
            )
            .map_err(|error| {
                OrderError::Committee(format!(
                    "key switching the counts failed: {error} (threshold {}; {})",
                    committee.public.threshold(),
                    describe_absent(&absent)
                ))
            })?;
        let table = count_table()
            .map_err(|error| OrderError::Decryption(format!("count table: {error}")))?;
        let noisy_counts: Vec<i64> = opened
            .ciphertexts
            .iter()
            .map(|ciphertext| public_count_secret().decrypt(ciphertext, table))
            .collect::<Result<_, _>>()
            .map_err(|error| {
                OrderError::Decryption(format!("decrypting the noisy counts: {error}"))
            })?;
        let min_cohort = self.min_cohort(&spec.listings).await?;
        let withheld = withheld_slots(&spec.plan, &noisy_counts, min_cohort);
        let suppressed = suppressed_cells(&spec.plan, &withheld);
        Ok(CountsOpened {
            opened,
            count_shares,
            noisy_counts,
            withheld,
            suppressed,
            min_cohort,
        })
    }

    /// Phase VALUES: the other slots of the released cells, key-switched to the buyer's key.
    async fn switch_values(
        &self,
        nodes: Arc<dyn ComputeNodes>,
        committee: &Committee,
        spec: &OrderSpec,
        noised: &Noised,
        counts: &CountsOpened,
    ) -> Result<Released, OrderError> {
        let plan = &spec.plan;
        let count_positions = count_slots(plan);
        let value_slots = released_value_slots(plan, &counts.withheld);
        let mut result: Vec<Vec<u8>> = vec![Vec::new(); plan.vector_len()];
        for (position, &slot) in count_positions.iter().enumerate() {
            if !counts.withheld[slot] {
                result[slot] = counts.opened.ciphertexts.0[position].to_bytes();
            }
        }
        let mut released = Released {
            result,
            used: counts.opened.used.clone(),
            shares: counts.count_shares.clone(),
        };
        if value_slots.is_empty() {
            return Ok(released);
        }
        let redirected = *self
            .values_redirected_to
            .lock()
            .map_err(|_| OrderError::Internal("coordinator lock poisoned".into()))?;
        let recipient = redirected.unwrap_or(spec.result_key);
        let request = KeySwitchRequest {
            order_id: spec.order_bytes(),
            recipient: recipient.to_bytes(),
            phase: KeySwitchPhase::Values as i32,
            noise: noised.shares.iter().map(encode_noise_share).collect(),
            count_shares: counts.count_shares.iter().map(Wire::to_bytes).collect(),
            noisy_counts: counts.noisy_counts.clone(),
        };
        let answers = member_round(nodes, &noised.quorum, move |nodes, endpoint| {
            nodes.key_switch(&endpoint, request.clone())
        })
        .await;
        let (shares, absent) = valid_shares(answers);
        let context = release_context(&spec.order_bytes())?;
        let values: Vec<Ciphertext> = value_slots.iter().map(|&slot| noised.noisy[slot]).collect();
        let switched = committee
            .public
            .combine(&context, &values, &recipient, &shares)
            .map_err(|error| {
                OrderError::Committee(format!(
                    "key switching failed: {error} (threshold {}; {})",
                    committee.public.threshold(),
                    describe_absent(&absent)
                ))
            })?;
        for (&slot, ciphertext) in value_slots.iter().zip(switched.ciphertexts.iter()) {
            released.result[slot] = ciphertext.to_bytes();
        }
        released.used = switched.used.clone();
        released.shares.extend(shares);
        Ok(released)
    }

    /// Phase RECEIPT: at least t members co-sign the receipt, the result is kept on disk, and
    /// the receipt and the settlement go on the ledger in one block.
    #[allow(clippy::too_many_arguments)]
    async fn settle(
        &self,
        nodes: Arc<dyn ComputeNodes>,
        spec: &OrderSpec,
        verified: &Verified,
        noised: &Noised,
        counts: &CountsOpened,
        released: Released,
        mut clock: PhaseClock,
    ) -> Result<(), OrderError> {
        let mut proofs = Vec::new();
        for part in &verified.attested {
            proofs.extend(part.contribution.proof.to_bytes());
        }
        for share in &noised.shares {
            for ciphertext in &share.ciphertexts {
                proofs.extend(ciphertext.to_bytes());
            }
            proofs.extend(share.proof.to_bytes());
        }
        for share in &released.shares {
            proofs.extend(share.to_bytes());
        }
        let receipt = QueryReceipt {
            order: OrderId(spec.order),
            query_hash: query_hash(&spec.sql),
            contributions_root: market::hash::contributions_root(
                verified
                    .attested
                    .iter()
                    .map(|part| &part.listing.contribution_hash),
            ),
            proofs_hash: tagged_hash(cohortex_types::labels::LABEL_PROOFS, &[&proofs]),
            result_hash: tagged_hash(
                cohortex_types::labels::LABEL_RESULT,
                &[&released.result.concat()],
            ),
            // The participants are staged with the release commitment: each part names none.
            listings: verified
                .attested
                .iter()
                .map(|part| ListingContribution {
                    participants: Vec::new(),
                    ..part.listing.clone()
                })
                .collect(),
        };
        // At least t members check the receipt against what they verified and summed
        // themselves, and against their own ledger replicas, and co-sign it: the ledger
        // records no receipt on the coordinator's word alone.
        let cosignatures = self.cosign_round(nodes, &noised.quorum, &receipt).await?;
        clock.lap("co-sign receipt");
        let used: Vec<u32> = released
            .used
            .iter()
            .map(|member| u32::from(member.get()))
            .collect();
        let noise_members: Vec<u32> = noised
            .shares
            .iter()
            .map(|share| u32::from(share.member))
            .collect();
        let hidden = counts.suppressed.iter().filter(|&&hidden| hidden).count();
        let withheld = counts.withheld.iter().filter(|&&hidden| hidden).count();
        let completed = self.completed_record(spec.order, |record| {
            record.state = OrderState::Completed;
            record.message = format!(
                "computed by {} listing(s); noise added by members {:?} (ε = {}); key-switched by members {:?}; {hidden} of {} cell(s) suppressed and {withheld} of {} slot(s) withheld below the minimum cohort of {}; receipt recorded and escrow settled",
                verified.reports.len(),
                noise_members,
                spec.epsilon_micro as f64 / 1e6,
                used,
                counts.suppressed.len(),
                counts.withheld.len(),
                counts.min_cohort,
            );
            record.result = released.result;
            record.committee_used = used.clone();
            record.epsilon_micro = spec.epsilon_micro;
            record.noise_members = noise_members.clone();
            record.suppressed = counts.suppressed.clone();
            record.completed_at = Some(market::server::auth::unix_now());
        })?;
        // Kept on disk before the receipt goes out: once the buyer pays, the result survives
        // a restart.
        self.keep_completed(spec.order, &completed).await?;
        // The receipt and the settlement go into one block: no crash can leave a computed
        // order unpaid (and `settle_orders_left_computed` settles any a ledger still holds).
        let receipt_id = self
            .record_receipt_and_settle(OrderId(spec.order), receipt, cosignatures)
            .await
            .map_err(OrderError::refused("receipt and settlement"))?;
        clock.lap("record receipt");
        let mut completed = completed;
        completed.phases = clock.phases;
        self.complete_order(spec.order, completed, receipt_id)?;
        Ok(())
    }

    /// Asks the quorum to co-sign `receipt`; returns the co-signatures that verify under the
    /// members' accounts registered on the ledger, ascending by member, or why fewer than the
    /// threshold did.
    async fn cosign_round(
        &self,
        nodes: Arc<dyn ComputeNodes>,
        committee: &Committee,
        receipt: &QueryReceipt,
    ) -> Result<Vec<ReceiptCosignature>, OrderError> {
        let request = CosignReceiptRequest {
            receipt: receipt.to_bytes(),
        };
        let answers = member_round(nodes, committee, move |nodes, endpoint| {
            nodes.cosign_receipt(&endpoint, request.clone())
        })
        .await;
        let (chain_id, registered) = read_ledger(&self.ledger, |ledger| {
            Ok((ledger.chain_id(), ledger.state().committee().cloned()))
        })
        .await?;
        let registered = registered.ok_or(OrderError::NoCommittee)?;
        let mut cosignatures = Vec::new();
        let mut absent = Vec::new();
        for (member, answer) in answers {
            let member = member.get();
            match answer {
                Ok(response) if response.member == u32::from(member) => {
                    let verifies = registered
                        .member_account(member)
                        .and_then(|account| account.verifying_key().ok())
                        .is_some_and(|key| {
                            receipt.cosigned_by(&key, &chain_id, &response.signature)
                        });
                    if verifies {
                        cosignatures.push(ReceiptCosignature {
                            member,
                            signature: response.signature,
                        });
                    } else {
                        absent.push(format!(
                            "member {member}: a co-signature that does not verify"
                        ));
                    }
                }
                Ok(_) => absent.push(format!("member {member}: co-signed as another member")),
                Err(status) => absent.push(format!("member {member}: {}", status.message())),
            }
        }
        if cosignatures.len() < usize::from(registered.threshold) {
            return Err(OrderError::Committee(format!(
                "only {} of the {} co-signatures the receipt needs ({})",
                cosignatures.len(),
                registered.threshold,
                absent.join("; ")
            )));
        }
        Ok(cosignatures)
    }
}

/// The rest of a node's participant list (of its contribution or its feasibility count),
/// fetched a page at a time.
pub(super) struct PageSource {
    pub(super) nodes: Arc<dyn ComputeNodes>,
    pub(super) endpoint: String,
    pub(super) order_id: Vec<u8>,
}

impl PageSource {
    /// `first`'s answer with every participant it counted.
    async fn complete(
        self,
        first: NodeCall<ContributeResponse>,
    ) -> Result<ContributeResponse, Status> {
        let mut response = first.await?;
        self.fill(
            response.participant_count,
            response.capacity,
            &mut response.participants,
        )
        .await?;
        Ok(response)
    }

    /// Reads the pages after `participants`, the first, until it holds the `count` the node
    /// gave: no more than the vault's `capacity`, and exactly as many as it counted. A count of
    /// 0 is a node that sent every participant in the first message.
    pub(super) async fn fill(
        &self,
        count: u64,
        capacity: u64,
        participants: &mut Vec<Vec<u8>>,
    ) -> Result<(), Status> {
        if count > capacity {
            return Err(Status::invalid_argument(format!(
                "participant_count: {count} is more than the vault's capacity {capacity}"
            )));
        }
        let total = usize::try_from(count).unwrap_or(usize::MAX);
        while participants.len() < total {
            let page = self
                .nodes
                .contribution_participants(
                    &self.endpoint,
                    ContributionParticipantsRequest {
                        order_id: self.order_id.clone(),
                        offset: participants.len() as u64,
                    },
                )
                .await?;
            if page.participants.is_empty() {
                return Err(Status::data_loss(format!(
                    "participants: the node gave {} of the {total} it counted",
                    participants.len()
                )));
            }
            participants.extend(page.participants);
        }
        if total != 0 && participants.len() != total {
            return Err(Status::data_loss(format!(
                "participants: the node gave {} but counted {total}",
                participants.len()
            )));
        }
        Ok(())
    }
}

/// Noise shares from t members (the release's quorum): the first t members by index, leaving
/// out `withheld`; a member that fails is replaced by the next one. Returns the shares and,
/// per member that did not give one, why.
async fn noise_from_a_quorum(
    nodes: Arc<dyn ComputeNodes>,
    committee: &Committee,
    withheld: &BTreeSet<u16>,
    request: AddNoiseRequest,
) -> (Vec<NoiseShare>, Vec<String>) {
    let threshold = usize::from(committee.public.threshold());
    let mut candidates: Vec<(MemberIndex, String)> = committee
        .members
        .iter()
        .filter(|(member, _)| !withheld.contains(&member.get()))
        .cloned()
        .collect();
    candidates.sort_by_key(|(member, _)| member.get());
    let mut candidates = candidates.into_iter();
    let mut noise: Vec<NoiseShare> = Vec::new();
    let mut absent = Vec::new();
    while noise.len() < threshold {
        let asked: Vec<(MemberIndex, String)> =
            candidates.by_ref().take(threshold - noise.len()).collect();
        if asked.is_empty() {
            break;
        }
        let round = Committee {
            public: committee.public.clone(),
            members: asked,
        };
        let request = request.clone();
        let answers = member_round(Arc::clone(&nodes), &round, move |nodes, endpoint| {
            nodes.add_noise(&endpoint, request.clone())
        })
        .await;
        for (member, answer) in answers {
            match answer.and_then(|response: AddNoiseResponse| {
                response
                    .share
                    .ok_or_else(|| Status::invalid_argument("share: missing"))
                    .and_then(|share| decode_noise_share(&share, "share"))
            }) {
                Ok(share) if share.member == member.get() => noise.push(share),
                Ok(_) => absent.push(format!(
                    "member {}: share names another member",
                    member.get()
                )),
                Err(status) => {
                    absent.push(format!("member {}: {}", member.get(), status.message()))
                }
            }
        }
    }
    (noise, absent)
}

/// Makes `call` of every member of `committee` in parallel; returns each member's answer (or
/// why it gave none), in member order.
async fn member_round<Resp, Call>(
    nodes: Arc<dyn ComputeNodes>,
    committee: &Committee,
    call: Call,
) -> Vec<(MemberIndex, Result<Resp, Status>)>
where
    Resp: Send + 'static,
    Call: Fn(&dyn ComputeNodes, String) -> NodeCall<Resp>,
{
    let mut tasks = tokio::task::JoinSet::new();
    for (member, endpoint) in committee.members.clone() {
        let answer = call(nodes.as_ref(), endpoint);
        tasks.spawn(async move { (member, answer.await) });
    }
    let mut answers = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(answer) => answers.push(answer),
            Err(error) => tracing::warn!(%error, "committee task failed"),
        }
    }
    answers.sort_by_key(|(member, _)| member.get());
    answers
}

/// The decodable key-switch shares of a round, and a line per member that gave none.
fn valid_shares(
    answers: Vec<(MemberIndex, Result<KeySwitchResponse, Status>)>,
) -> (Vec<KeySwitchShare>, Vec<String>) {
    let mut shares = Vec::new();
    let mut absent = Vec::new();
    for (member, answer) in answers {
        match answer.and_then(|response| {
            KeySwitchShare::from_bytes(&response.share)
                .map_err(|error| Status::invalid_argument(format!("share: {error}")))
        }) {
            Ok(share) => shares.push(share),
            Err(status) => absent.push(format!("member {}: {}", member.get(), status.message())),
        }
    }
    (shares, absent)
}

fn describe_absent(absent: &[String]) -> String {
    if absent.is_empty() {
        "no member absent".to_string()
    } else {
        absent.join("; ")
    }
}

/// One line per listing whose node did not answer validly: which, what happened, why.
pub(super) fn failed_reports(reports: &[NodeReport]) -> Vec<String> {
    reports
        .iter()
        .filter(|report| report.outcome != NodeOutcome::Accepted)
        .map(|report| {
            format!(
                "listing {} {}: {}",
                report.listing,
                report.outcome.as_str(),
                report.reason
            )
        })
        .collect()
}

fn decode_contribution(
    response: &ContributeResponse,
) -> Result<(Contribution, Vec<AccountId>), String> {
    let ciphertexts = response
        .ciphertexts
        .iter()
        .map(|bytes| Ciphertext::from_bytes(bytes))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("ciphertexts: {error}"))?;
    let proof = CiphertextRangeProof::from_bytes(&response.proof)
        .map_err(|error| format!("proof: {error}"))?;
    let mut participants = Vec::with_capacity(response.participants.len());
    for bytes in &response.participants {
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| "participants: every account is 32 bytes".to_string())?;
        participants.push(AccountId(key));
    }
    if participants.windows(2).any(|pair| pair[0] >= pair[1]) {
        return Err("participants: not strictly ascending".into());
    }
    Ok((Contribution { ciphertexts, proof }, participants))
}

/// The order's failure paths against nodes that answer as a test tells them to, on a real
/// embedded ledger, with no gRPC and no cluster.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::coordinator::ListingInfo;
    use cohortex_proto::v1::{ContributionParticipantsResponse, CosignReceiptResponse};
    use ed25519_dalek::SigningKey;
    use std::sync::Mutex;
    use zk::dkg::{run_local_ceremony_with_rng, DkgParameters};

    const MANIFEST: &str = r#"
version = 1
table = "patients"
id_column = "patient_id"

[[columns]]
name = "age"
type = "integer"
bounds = [0, 120]
"#;

    type Answer<T> = Box<dyn Fn(&str) -> Result<T, Status> + Send + Sync>;

    /// Nodes that answer each call as told, and remember who was asked for noise.
    struct ScriptedNodes {
        contribute: Answer<ContributeResponse>,
        page: Answer<ContributionParticipantsResponse>,
        noise: Answer<AddNoiseResponse>,
        cosign: Answer<CosignReceiptResponse>,
        deal: Answer<cohortex_proto::v1::DkgDealResponse>,
        #[cfg(feature = "tfhe")]
        feasibility: Answer<cohortex_proto::v1::FeasibilityResponse>,
        asked_for_noise: Mutex<Vec<String>>,
        /// Endpoints sent an evaluation key, in order.
        #[cfg(feature = "tfhe")]
        keys_sent: Mutex<Vec<String>>,
    }

    impl Default for ScriptedNodes {
        fn default() -> Self {
            ScriptedNodes {
                contribute: Box::new(|_| Err(Status::unimplemented("not scripted"))),
                page: Box::new(|_| Err(Status::unimplemented("not scripted"))),
                noise: Box::new(|_| Err(Status::unimplemented("not scripted"))),
                cosign: Box::new(|_| Err(Status::unimplemented("not scripted"))),
                deal: Box::new(|_| Err(Status::unimplemented("not scripted"))),
                #[cfg(feature = "tfhe")]
                feasibility: Box::new(|_| Err(Status::unimplemented("not scripted"))),
                asked_for_noise: Mutex::new(Vec::new()),
                #[cfg(feature = "tfhe")]
                keys_sent: Mutex::new(Vec::new()),
            }
        }
    }

    fn ready<T: Send + 'static>(answer: Result<T, Status>) -> NodeCall<T> {
        Box::pin(async move { answer })
    }

    impl ComputeNodes for ScriptedNodes {
        fn contribute(&self, endpoint: &str, _: ContributeRequest) -> NodeCall<ContributeResponse> {
            ready((self.contribute)(endpoint))
        }

        fn contribution_participants(
            &self,
            endpoint: &str,
            _: ContributionParticipantsRequest,
        ) -> NodeCall<ContributionParticipantsResponse> {
            ready((self.page)(endpoint))
        }

        fn add_noise(&self, endpoint: &str, _: AddNoiseRequest) -> NodeCall<AddNoiseResponse> {
            self.asked_for_noise
                .lock()
                .unwrap()
                .push(endpoint.to_string());
            ready((self.noise)(endpoint))
        }

        fn key_switch(&self, _: &str, _: KeySwitchRequest) -> NodeCall<KeySwitchResponse> {
            ready(Err(Status::unimplemented("not scripted")))
        }

        fn cosign_receipt(
            &self,
            endpoint: &str,
            _: CosignReceiptRequest,
        ) -> NodeCall<CosignReceiptResponse> {
            ready((self.cosign)(endpoint))
        }

        fn dkg_deal(
            &self,
            endpoint: &str,
            _: cohortex_proto::v1::DkgDealRequest,
        ) -> NodeCall<cohortex_proto::v1::DkgDealResponse> {
            ready((self.deal)(endpoint))
        }

        fn dkg_receive(
            &self,
            _: &str,
            _: cohortex_proto::v1::DkgReceiveRequest,
        ) -> NodeCall<cohortex_proto::v1::DkgReceiveResponse> {
            ready(Err(Status::unimplemented("not scripted")))
        }

        fn dkg_justify(
            &self,
            _: &str,
            _: cohortex_proto::v1::DkgJustifyRequest,
        ) -> NodeCall<cohortex_proto::v1::DkgJustifyResponse> {
            ready(Err(Status::unimplemented("not scripted")))
        }

        fn dkg_finish(
            &self,
            _: &str,
            _: cohortex_proto::v1::DkgFinishRequest,
        ) -> NodeCall<cohortex_proto::v1::DkgFinishResponse> {
            ready(Err(Status::unimplemented("not scripted")))
        }

        fn dkg_confirm(
            &self,
            _: &str,
            _: cohortex_proto::v1::DkgConfirmRequest,
        ) -> NodeCall<cohortex_proto::v1::DkgConfirmResponse> {
            ready(Err(Status::unimplemented("not scripted")))
        }

        #[cfg(feature = "tfhe")]
        fn feasibility(
            &self,
            endpoint: &str,
            _: cohortex_proto::v1::FeasibilityRequest,
        ) -> NodeCall<cohortex_proto::v1::FeasibilityResponse> {
            ready((self.feasibility)(endpoint))
        }

        #[cfg(feature = "tfhe")]
        fn accept_invitation(
            &self,
            _: &str,
            _: cohortex_proto::v1::AcceptInvitationRequest,
        ) -> NodeCall<cohortex_proto::v1::TrialReply> {
            ready(Err(Status::unimplemented("not scripted")))
        }

        #[cfg(feature = "tfhe")]
        fn put_evaluation_key(&self, endpoint: &str, _: Arc<Vec<u8>>) -> NodeCall<()> {
            self.keys_sent.lock().unwrap().push(endpoint.to_string());
            ready(Ok(()))
        }
    }

    /// A 2-of-3 committee whose members are reached at `member-1` … `member-3`.
    fn committee() -> Committee {
        let parameters = DkgParameters::new(2, 3, b"order phases").unwrap();
        let outputs = run_local_ceremony_with_rng(&parameters, &mut rand::rngs::OsRng).unwrap();
        Committee {
            public: outputs[0].committee.clone(),
            members: (1..=3)
                .map(|index| (MemberIndex::new(index).unwrap(), format!("member-{index}")))
                .collect(),
        }
    }

    struct Fixture {
        coordinator: Arc<Coordinator>,
        spec: OrderSpec,
        /// The committee members' account keys, member 1 first, registered on the ledger.
        members: Vec<SigningKey>,
        _dir: tempfile::TempDir,
    }

    /// A coordinator on a fresh ledger, with a committee and one listing (`st-mary`, reached
    /// at `node-st-mary`), and an order of `SELECT COUNT(*)` over it.
    async fn fixture(nodes: ScriptedNodes) -> Fixture {
        let mut rng = rand::rngs::OsRng;
        let ledger_key = SigningKey::generate(&mut rng);
        let account = SigningKey::generate(&mut rng);
        let members: Vec<SigningKey> = (0..3).map(|_| SigningKey::generate(&mut rng)).collect();
        let genesis = market::Genesis {
            name: "order phases".into(),
            ledger_key: ledger_key.verifying_key().to_bytes(),
            accounts: std::iter::once((AccountId::of(&account), market::Role::Issuer))
                .chain(
                    members
                        .iter()
                        .map(|key| (AccountId::of(key), market::Role::ComputeNode)),
                )
                .collect(),
        };
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = market::Ledger::create(
            dir.path().join("ledger.db"),
            genesis,
            market::InProcessSequencer::new(ledger_key),
        )
        .unwrap();
        // The committee of `committee()`, 2 of 3, registered by the issuer.
        let register = market::TxBody {
            chain_id: ledger.chain_id(),
            signer: AccountId::of(&account),
            nonce: 0,
            action: market::Action::RegisterCommittee {
                threshold: 2,
                members: members.iter().map(AccountId::of).collect(),
            },
        }
        .sign(&account)
        .unwrap();
        assert!(ledger
            .append(vec![register.bytes])
            .unwrap()
            .refused
            .is_empty());
        let coordinator = Coordinator::new(Arc::new(std::sync::Mutex::new(ledger)), account)
            .with_nodes(Arc::new(nodes));
        *coordinator.committee.lock().unwrap() = Some(committee());
        let schema = compute_node::Schema::from_toml(MANIFEST, "test manifest").unwrap();
        let plan = compute_node::compile("SELECT COUNT(*) FROM patients", &schema).unwrap();
        coordinator
            .register_listing(
                "st-mary",
                ListingInfo {
                    manifest: MANIFEST.into(),
                    schema,
                    endpoint: "node-st-mary".into(),
                },
            )
            .await
            .unwrap();
        let spec = OrderSpec {
            order: TxId(market::Hash32([9; 32])),
            buyer: AccountId([7; 32]),
            sql: "SELECT COUNT(*) FROM patients".into(),
            plan,
            listings: vec![ListingId("st-mary".into())],
            purpose: Purpose::AcademicResearch,
            epsilon_micro: 1_000_000,
            result_key: zk::KeyPair::generate_with_rng(&mut rng).public,
        };
        Fixture {
            coordinator: Arc::new(coordinator),
            spec,
            members,
            _dir: dir,
        }
    }

    /// The order's failure, which must be the contributions': one line per listing.
    async fn contribution_failure(nodes: ScriptedNodes) -> Vec<String> {
        let f = fixture(nodes).await;
        match f.coordinator.compute(&f.spec).await {
            Err(OrderError::Contributions(lines)) => lines,
            other => panic!("expected the contributions to fail the order, got {other:?}"),
        }
    }

    fn answer(count: u64, capacity: u64, participants: Vec<Vec<u8>>) -> ContributeResponse {
        ContributeResponse {
            participant_count: count,
            capacity,
            participants,
            ..ContributeResponse::default()
        }
    }

    #[tokio::test]
    async fn node_counting_more_participants_than_its_capacity_is_rejected_naming_the_field() {
        let lines = contribution_failure(ScriptedNodes {
            contribute: Box::new(|_| Ok(answer(10, 5, vec![vec![1; 32]]))),
            ..ScriptedNodes::default()
        })
        .await;
        assert_eq!(
            lines,
            vec![
                "listing st-mary rejected: participant_count: 10 is more than the vault's \
                  capacity 5"
                    .to_string()
            ]
        );
    }

    #[tokio::test]
    async fn node_that_stops_paging_before_its_count_is_rejected_as_data_loss() {
        let lines = contribution_failure(ScriptedNodes {
            contribute: Box::new(|_| Ok(answer(3, 10, vec![vec![1; 32]]))),
            page: Box::new(|_| Ok(ContributionParticipantsResponse::default())),
            ..ScriptedNodes::default()
        })
        .await;
        assert_eq!(
            lines,
            vec![
                "listing st-mary rejected: participants: the node gave 1 of the 3 it counted"
                    .to_string()
            ]
        );
    }

    #[tokio::test]
    async fn node_that_cannot_be_reached_is_reported_unavailable() {
        let lines = contribution_failure(ScriptedNodes {
            contribute: Box::new(|endpoint| {
                Err(Status::unavailable(format!("{endpoint} unreachable")))
            }),
            ..ScriptedNodes::default()
        })
        .await;
        assert_eq!(
            lines,
            vec!["listing st-mary unavailable: node-st-mary unreachable".to_string()]
        );
    }

    #[tokio::test]
    async fn contribution_that_does_not_decode_is_rejected_naming_the_field() {
        let lines = contribution_failure(ScriptedNodes {
            contribute: Box::new(|_| {
                Ok(ContributeResponse {
                    ciphertexts: vec![vec![1, 2, 3]],
                    ..answer(0, 10, Vec::new())
                })
            }),
            ..ScriptedNodes::default()
        })
        .await;
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].starts_with("listing st-mary rejected: ciphertexts:"),
            "{lines:?}"
        );
    }

    #[tokio::test]
    async fn failed_order_keeps_each_nodes_report_and_says_why() {
        let f = fixture(ScriptedNodes {
            contribute: Box::new(|_| Err(Status::deadline_exceeded("node did not answer in time"))),
            ..ScriptedNodes::default()
        })
        .await;
        f.coordinator.start_order(f.spec.clone()).unwrap();
        let record = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            loop {
                let record = f.coordinator.order(&f.spec.order).unwrap().unwrap();
                if record.state != OrderState::Computing {
                    return record;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(record.state, OrderState::Failed);
        assert_eq!(
            record.nodes,
            vec![NodeReport {
                listing: "st-mary".into(),
                outcome: NodeOutcome::Unavailable,
                reason: "node did not answer in time".into(),
                participants: 0,
            }]
        );
        assert!(
            record.message.starts_with(
                "not every listing contributed a valid share (listing st-mary unavailable: \
                 node did not answer in time)"
            ),
            "{}",
            record.message
        );
        assert!(record.result.is_empty() && record.receipt.is_none());
    }

    #[tokio::test]
    async fn members_that_fail_to_noise_are_replaced_by_the_next_and_named() {
        let nodes = Arc::new(ScriptedNodes {
            noise: Box::new(|endpoint| match endpoint {
                "member-1" => Err(Status::unavailable("member-1 unreachable")),
                "member-2" => Ok(AddNoiseResponse { share: None }),
                _ => Err(Status::failed_precondition("contributions do not verify")),
            }),
            ..ScriptedNodes::default()
        });
        let request = AddNoiseRequest {
            order_id: vec![9; 32],
            sql: "SELECT COUNT(*) FROM patients".into(),
            contributions: Vec::new(),
        };
        let (shares, absent) = noise_from_a_quorum(
            Arc::clone(&nodes) as Arc<dyn ComputeNodes>,
            &committee(),
            &BTreeSet::new(),
            request,
        )
        .await;
        assert!(shares.is_empty());
        // t = 2: members 1 and 2 first; both fail, so member 3 is asked, and no one is left.
        let mut asked = nodes.asked_for_noise.lock().unwrap().clone();
        asked.sort();
        assert_eq!(asked, vec!["member-1", "member-2", "member-3"]);
        assert_eq!(
            absent,
            vec![
                "member 1: member-1 unreachable".to_string(),
                "member 2: share: missing".to_string(),
                "member 3: contributions do not verify".to_string(),
            ]
        );
    }

    #[tokio::test]
    async fn cosignatures_that_do_not_verify_or_name_another_member_are_not_counted() {
        let receipt = QueryReceipt {
            order: OrderId(TxId(market::Hash32([9; 32]))),
            query_hash: market::Hash32([1; 32]),
            contributions_root: market::Hash32([2; 32]),
            proofs_hash: market::Hash32([3; 32]),
            result_hash: market::Hash32([4; 32]),
            listings: Vec::new(),
        };
        // Member 1 co-signs the receipt with its key; member 2 with a key that is not its
        // account's; member 3 answers as member 1. One valid co-signature of the 2 needed.
        let f = fixture(ScriptedNodes::default()).await;
        let chain_id = f.coordinator.ledger().lock().unwrap().chain_id();
        let right = receipt.cosign(1, &f.members[0], &chain_id).signature;
        let stranger = SigningKey::generate(&mut rand::rngs::OsRng);
        let wrong = receipt.cosign(2, &stranger, &chain_id).signature;
        let nodes: Arc<dyn ComputeNodes> = Arc::new(ScriptedNodes {
            cosign: Box::new(move |endpoint| {
                let (member, signature) = match endpoint {
                    "member-1" => (1, right.clone()),
                    "member-2" => (2, wrong.clone()),
                    _ => (1, right.clone()),
                };
                Ok(CosignReceiptResponse { member, signature })
            }),
            ..ScriptedNodes::default()
        });
        let refused = f
            .coordinator
            .cosign_round(nodes, &committee(), &receipt)
            .await
            .unwrap_err();
        assert_eq!(
            refused,
            OrderError::Committee(
                "only 1 of the 2 co-signatures the receipt needs (member 2: a co-signature \
                 that does not verify; member 3: co-signed as another member)"
                    .into()
            )
        );
    }

    #[tokio::test]
    async fn withheld_members_are_not_asked_for_noise() {
        let nodes = Arc::new(ScriptedNodes {
            noise: Box::new(|_| Err(Status::unavailable("down"))),
            ..ScriptedNodes::default()
        });
        let request = AddNoiseRequest::default();
        let withheld: BTreeSet<u16> = [1, 3].into_iter().collect();
        let (shares, _) = noise_from_a_quorum(
            Arc::clone(&nodes) as Arc<dyn ComputeNodes>,
            &committee(),
            &withheld,
            request,
        )
        .await;
        assert!(shares.is_empty());
        assert_eq!(*nodes.asked_for_noise.lock().unwrap(), vec!["member-2"]);
    }

    #[tokio::test]
    async fn key_ceremony_member_answering_without_its_broadcast_fails_and_keeps_the_committee() {
        let f = fixture(ScriptedNodes {
            deal: Box::new(|_| Ok(cohortex_proto::v1::DkgDealResponse { broadcast: None })),
            ..ScriptedNodes::default()
        })
        .await;
        let before = f.coordinator.committee.lock().unwrap().clone().unwrap();
        let members = before.members.clone();
        let refused = f
            .coordinator
            .run_key_ceremony(members, 2)
            .await
            .unwrap_err();
        assert!(
            refused.message().contains("without its broadcast"),
            "{}",
            refused.message()
        );
        let after = f.coordinator.committee.lock().unwrap().clone().unwrap();
        assert_eq!(
            after.public.collective_key(),
            before.public.collective_key(),
            "a failed ceremony replaces no committee"
        );
    }

    #[cfg(feature = "tfhe")]
    #[tokio::test]
    async fn node_lacking_the_evaluation_key_is_sent_it_once_and_asked_again() {
        use super::super::nodes::with_evaluation_key;
        use cohortex_types::rpc::Refusal;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let asked = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&asked);
        let nodes = Arc::new(ScriptedNodes {
            feasibility: Box::new(move |_| {
                // The first answer: no key; the second: a count.
                if count.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(Refusal::EvaluationKeyMissing
                        .status(tonic::Code::FailedPrecondition, "no evaluation key"))
                } else {
                    Ok(cohortex_proto::v1::FeasibilityResponse {
                        participant_count: 7,
                        ..Default::default()
                    })
                }
            }),
            ..ScriptedNodes::default()
        });
        let answer = with_evaluation_key(
            nodes.as_ref(),
            "node-1",
            || Ok(Arc::new(vec![1, 2, 3])),
            || nodes.feasibility("node-1", Default::default()),
        )
        .await
        .unwrap();
        assert_eq!(answer.participant_count, 7);
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        assert_eq!(*nodes.keys_sent.lock().unwrap(), vec!["node-1".to_string()]);
    }

    #[cfg(feature = "tfhe")]
    #[tokio::test]
    async fn node_refusing_for_another_reason_is_not_sent_the_evaluation_key() {
        use super::super::nodes::with_evaluation_key;
        let nodes = Arc::new(ScriptedNodes {
            feasibility: Box::new(|_| Err(Status::permission_denied("not your coordinator"))),
            ..ScriptedNodes::default()
        });
        let refused = with_evaluation_key(
            nodes.as_ref(),
            "node-1",
            || panic!("the key is not needed"),
            || nodes.feasibility("node-1", Default::default()),
        )
        .await
        .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(nodes.keys_sent.lock().unwrap().is_empty());
    }
}
