//! An order's release on one committee member: the member verifies and sums the
//! contributions and adds its own noise ([`Stage::Noised`]); key-switches the noisy counts and
//! then the released values towards the buyer, each once and in that order, only as the ledger
//! commits the release; and co-signs one receipt for the order.

use std::collections::BTreeSet;

use crate::calls::{CosignCall, KeySwitchCall, NoiseCall, SwitchPhase};
use crate::error::NodeError;
use cohortex_proto::v1::{
    AddNoiseResponse, CosignReceiptResponse, KeySwitchPhase, KeySwitchResponse,
};
use cohortex_types::text::excerpt;
use market::{AccountId, Hash32, ListingContribution, ListingId};
use rand::rngs::OsRng;
use zk::{Ciphertext, CommitteePublic, ProofContext, PublicKey, Wire};

use super::{follow_status, order_key, Fault, NodeService};
use crate::contribution::{
    sum_contributions, verify_bounded, verify_contributions, Contribution, ContributionStatement,
};
use crate::dp::{calibrate, Calibration};
use crate::noise::{
    apply_noise, build_noise_share, count_slots, noise_statement, opens_to, public_count_key,
    released_value_slots, withheld_slots, NoiseShare,
};
use crate::plan::QueryPlan;
use crate::protocol::{
    contribution_context, counts_context, decode, decode_noise_share, encode_noise_share,
    noise_context, release_context,
};

/// What a member remembers of an order it added noise to. It is written to disk (see
/// [`ReleaseStore`]) before any share of it leaves the member, and again at every stage, so a
/// member that restarts resumes the release with the same noise instead of refusing it.
pub(super) struct Release {
    plan: QueryPlan,
    /// The order's ε: with the plan, it gives the calibration again after a restart.
    epsilon_micro: u64,
    calibration: Calibration,
    min_cohort: u64,
    /// The verified contributions' sum, fixed before any noise was drawn.
    sum: Vec<Ciphertext>,
    own: NoiseShare,
    /// The listings whose contributions were verified and summed, in the order's order, with
    /// each contribution's hash: a receipt this member co-signs must name exactly these.
    contributions: Vec<(String, Hash32)>,
    /// The digest of the receipt this member co-signed for the order, and its signature: a
    /// member vouches for one receipt per order.
    cosigned: Option<(Hash32, Vec<u8>)>,
    /// How far the release has gone.
    stage: Stage,
    /// A key switch that has moved `stage` on but whose share has not left yet. It is not
    /// written to disk as reached, and it is undone if the share never leaves.
    pending: Option<KeySwitchPhase>,
}

/// How far an order's release has gone on this member. Each stage is reached only from the one
/// before it, once: noise added, then the counts key-switched, then the values. The first key
/// switch fixes whose noise the release includes.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
enum Stage {
    /// Noise added; nothing key-switched yet.
    Noised,
    /// The counts were key-switched, with the noise of these members.
    CountsSwitched { noise: Vec<u16> },
    /// The values too.
    ValuesSwitched { noise: Vec<u16> },
}

impl Stage {
    /// The members whose noise the first key switch included; later phases must match.
    fn fixed_noise(&self) -> Option<&[u16]> {
        match self {
            Stage::Noised => None,
            Stage::CountsSwitched { noise } | Stage::ValuesSwitched { noise } => Some(noise),
        }
    }

    /// Whether the counts were key-switched (a member co-signs a receipt only after).
    fn counts_switched(&self) -> bool {
        !matches!(self, Stage::Noised)
    }

    /// Refuses `phase` if it was already key-switched or comes out of order.
    fn check(&self, phase: KeySwitchPhase) -> Result<(), NodeError> {
        match (self, phase) {
            (Stage::Noised, KeySwitchPhase::Counts)
            | (Stage::CountsSwitched { .. }, KeySwitchPhase::Values) => Ok(()),
            (Stage::Noised, _) => Err(NodeError::not_ready(
                "phase: the counts must be key-switched first",
            )),
            _ => Err(NodeError::already_answered(
                "order_id: this phase of the release was already key-switched",
            )),
        }
    }

    /// Moves to the stage of `phase`, key-switched with `noise`.
    fn advance(&mut self, phase: KeySwitchPhase, noise: Vec<u16>) -> Result<(), NodeError> {
        self.check(phase)?;
        *self = match phase {
            KeySwitchPhase::Counts => Stage::CountsSwitched { noise },
            _ => Stage::ValuesSwitched { noise },
        };
        Ok(())
    }

    /// Back to the stage before `phase`, after a key switch whose share did not leave.
    fn undo(&mut self, phase: KeySwitchPhase) {
        *self = self.before(phase);
    }

    /// The stage before `phase` was reached (this stage if `phase` was not reached).
    fn before(&self, phase: KeySwitchPhase) -> Stage {
        match (self, phase) {
            (Stage::CountsSwitched { .. }, KeySwitchPhase::Counts) => Stage::Noised,
            (Stage::ValuesSwitched { noise }, KeySwitchPhase::Values) => Stage::CountsSwitched {
                noise: noise.clone(),
            },
            _ => self.clone(),
        }
    }
}

impl NodeService {
    /// Verifies and sums the order's contributions and draws this member's noise share, once
    /// per order: asked again, it returns the same share.
    pub(super) async fn noise_share(&self, call: NoiseCall) -> Result<AddNoiseResponse, NodeError> {
        if self.fault() == Some(Fault::DownAtKeySwitch) {
            return Err(NodeError::unavailable("node is down"));
        }
        let order = call.order.0 .0.as_bytes().to_vec();
        let committee = {
            let state = self.lock()?;
            if let Some(release) = state.releases.get(&order) {
                // Asked again: the same share, never fresh noise for the same release.
                return Ok(AddNoiseResponse {
                    share: Some(encode_noise_share(&release.own)),
                });
            }
            let Some((_, committee)) = &state.key else {
                return Err(NodeError::not_ready(
                    "no key share yet: the committee's DKG has not run",
                ));
            };
            committee.clone()
        };
        let facts = self.order_facts(&order, &call.sql).await?;
        // A member that added noise answered from memory above; one that has none for a
        // committed release (it restarted, say) must not draw fresh noise: the operator could
        // open the same sum twice with different noise and average the two.
        if facts.release_committed {
            return Err(NodeError::not_ready(
                "order_id: the order's release is committed on the ledger and this member holds \
                 no noise for it; it draws no fresh noise for a committed release",
            ));
        }
        let mut seen = BTreeSet::new();
        let mut contributions = Vec::with_capacity(call.contributions.len());
        let mut summed_hashes = Vec::with_capacity(call.contributions.len());
        for (index, record) in call.contributions.into_iter().enumerate() {
            if !facts.listings.contains(&record.listing) {
                return Err(NodeError::bad_request(format!(
                    "contributions[{index}].listing: {} is not in the order",
                    excerpt(&record.listing)
                )));
            }
            if !seen.insert(record.listing.clone()) {
                return Err(NodeError::bad_request(format!(
                    "contributions[{index}].listing: {} appears twice",
                    excerpt(&record.listing)
                )));
            }
            let context = contribution_context(&order, &record.listing)?;
            summed_hashes.push((record.listing.clone(), record.hash));
            contributions.push((
                record.listing,
                record.capacity,
                context,
                record.contribution,
            ));
        }
        if contributions.is_empty() {
            return Err(NodeError::bad_request("contributions: none"));
        }
        let member = self.config.member.get();
        let context = noise_context(&order, member)?;
        let release = tokio::task::spawn_blocking(move || {
            let statements: Vec<ContributionStatement<'_>> = contributions
                .iter()
                .map(
                    |(_, capacity, context, contribution)| ContributionStatement {
                        context,
                        capacity: *capacity,
                        contribution,
                    },
                )
                .collect();
            if let Err(failures) = verify_contributions(
                committee.collective_key(),
                &facts.plan,
                &statements,
                &mut OsRng,
            ) {
                let named: Vec<String> = failures
                    .iter()
                    .map(|(index, error)| format!("{}: {error}", contributions[*index].0))
                    .collect();
                return Err(NodeError::bad_request(format!(
                    "contributions: do not verify ({})",
                    named.join("; ")
                )));
            }
            let summed: Vec<&Contribution> = contributions
                .iter()
                .map(|(_, _, _, contribution)| contribution)
                .collect();
            let sum = sum_contributions(&summed);
            let calibration = calibrate(&facts.plan, facts.epsilon_micro)
                .map_err(|error| NodeError::not_ready(format!("epsilon: {error}")))?;
            let own = build_noise_share(
                &context,
                committee.collective_key(),
                &calibration,
                member,
                &mut OsRng,
            )
            .map_err(|error| NodeError::internal(format!("noise share: {error}")))?;
            Ok::<_, NodeError>(Release {
                plan: facts.plan,
                epsilon_micro: facts.epsilon_micro,
                calibration,
                min_cohort: facts.min_cohort,
                sum,
                own,
                contributions: summed_hashes,
                cosigned: None,
                stage: Stage::Noised,
                pending: None,
            })
        })
        .await
        .map_err(|error| NodeError::internal(format!("worker failed: {error}")))??;
        let mut state = self.lock()?;
        // A concurrent call may have won the race: keep the first share. It is on disk before
        // it leaves (the lock is held until then, so no other call answers with it first).
        let kept = match state.releases.entry(order.clone()) {
            std::collections::btree_map::Entry::Occupied(kept) => kept.into_mut(),
            std::collections::btree_map::Entry::Vacant(vacant) => {
                self.releases.save(&order, &release)?;
                vacant.insert(release)
            }
        };
        Ok(AddNoiseResponse {
            share: Some(encode_noise_share(&kept.own)),
        })
    }

    /// This member's key-switch share of the order's noisy counts (phase COUNTS) or of its
    /// released values (phase VALUES), as the ledger commits the release.
    pub(super) async fn key_switch_share(
        &self,
        call: KeySwitchCall,
    ) -> Result<KeySwitchResponse, NodeError> {
        if self.fault() == Some(Fault::DownAtKeySwitch) {
            return Err(NodeError::unavailable("node is down"));
        }
        let order = call.order.0 .0.as_bytes().to_vec();
        let (phase, values) = match call.phase {
            SwitchPhase::Counts => (KeySwitchPhase::Counts, None),
            SwitchPhase::Values(values) => (KeySwitchPhase::Values, Some(values)),
        };
        let noise_members: Vec<u16> = call.noise.iter().map(|share| share.member).collect();
        let attested = self
            .check_committed_release(
                &order,
                &noise_members,
                values.as_ref().map(|values| &values.recipient),
            )
            .await?;
        let (share, committee, release_view) = {
            let mut state = self.lock()?;
            let state = &mut *state;
            let Some((share, committee)) = &state.key else {
                return Err(NodeError::not_ready(
                    "no key share yet: the committee's DKG has not run",
                ));
            };
            let Some(release) = state.releases.get_mut(&order) else {
                return Err(NodeError::not_ready(
                    "order_id: this member has added no noise to the order (call AddNoise first)",
                ));
            };
            release.stage.check(phase)?;
            // A release committed with its cohort attested names the contributions it is of:
            // this member key-switches it only if they are the ones it verified and summed.
            if let Some(attested) = &attested {
                let same = attested.len() == release.contributions.len()
                    && attested.iter().zip(&release.contributions).all(
                        |((listing, hash), (summed_listing, summed_hash))| {
                            listing.0 == *summed_listing && hash == summed_hash
                        },
                    );
                if !same {
                    return Err(NodeError::not_permitted(
                        "order_id: the release committed on the ledger is of other \
                         contributions than this member verified and summed",
                    ));
                }
            }
            let (members, noisy) = noisy_sum(release, &order, committee, &call.noise)?;
            // Advanced now, under the lock, so that two concurrent requests cannot both pass.
            // It stays pending until the share leaves: undone if its checks fail below or
            // it cannot be written to disk, and never written as reached before.
            release.stage.advance(phase, members.clone())?;
            release.pending = Some(phase);
            (
                share.clone(),
                committee.clone(),
                (members, noisy, release.plan.clone(), release.min_cohort),
            )
        };
        let (_members, noisy, plan, min_cohort) = release_view;
        let counts = count_slots(&plan);
        let count_ciphertexts: Vec<Ciphertext> = counts.iter().map(|&slot| noisy[slot]).collect();
        let prepared = (|| -> Result<(ProofContext, Vec<Ciphertext>, PublicKey), NodeError> {
            Ok(match values {
                None => (
                    counts_context(&order)?,
                    count_ciphertexts,
                    public_count_key(),
                ),
                Some(values) => {
                    let opened = committee
                        .combine(
                            &counts_context(&order)?,
                            &count_ciphertexts,
                            &public_count_key(),
                            &values.count_shares,
                        )
                        .map_err(|error| {
                            NodeError::bad_request(format!("count_shares: {error}"))
                        })?;
                    if values.noisy_counts.len() != counts.len() {
                        return Err(NodeError::bad_request(format!(
                            "noisy_counts: {} values, the plan has {} count slots",
                            values.noisy_counts.len(),
                            counts.len()
                        )));
                    }
                    for (index, (ciphertext, &value)) in opened
                        .ciphertexts
                        .iter()
                        .zip(&values.noisy_counts)
                        .enumerate()
                    {
                        if !opens_to(ciphertext, value) {
                            return Err(NodeError::bad_request(format!(
                                "noisy_counts[{index}]: not what the count shares decrypt to"
                            )));
                        }
                    }
                    let withheld = withheld_slots(&plan, &values.noisy_counts, min_cohort);
                    let slots = released_value_slots(&plan, &withheld);
                    if slots.is_empty() {
                        return Err(NodeError::not_ready(
                            "every value is withheld for the minimum cohort: nothing to release",
                        ));
                    }
                    (
                        release_context(&order)?,
                        slots.iter().map(|&slot| noisy[slot]).collect(),
                        values.recipient,
                    )
                }
            })
        })();
        let undo = |node: &Self| {
            if let Ok(mut state) = node.lock() {
                if let Some(release) = state.releases.get_mut(&order) {
                    release.stage.undo(phase);
                    release.pending = None;
                }
            }
        };
        let (context, ciphertexts, recipient) = match prepared {
            Ok(prepared) => prepared,
            Err(status) => {
                undo(self);
                return Err(status);
            }
        };
        let switched = match tokio::task::spawn_blocking(move || {
            share.key_switch_with_rng(&context, &ciphertexts, &recipient, &mut OsRng)
        })
        .await
        {
            Ok(switched) => switched,
            Err(error) => {
                undo(self);
                return Err(NodeError::internal(format!("worker failed: {error}")));
            }
        };
        // The stage this share moves the release to is on disk before the share leaves; if
        // it cannot be written, the share does not leave and the stage goes back.
        {
            let mut state = self.lock()?;
            if let Some(release) = state.releases.get_mut(&order) {
                release.pending = None;
                if let Err(status) = self.releases.save(&order, release) {
                    release.stage.undo(phase);
                    return Err(status);
                }
            }
        }
        Ok(KeySwitchResponse {
            share: switched.to_bytes(),
        })
    }

    /// Co-signs the order's receipt if it names exactly what this member verified and summed,
    /// and the ledger agrees; one receipt per order.
    pub(super) async fn cosign(
        &self,
        call: CosignCall,
    ) -> Result<CosignReceiptResponse, NodeError> {
        let receipt = call.receipt;
        let order = receipt.order.0 .0.as_bytes().to_vec();
        // 1. What this member verified and summed itself.
        let summed = {
            let state = self.lock()?;
            let release = state.releases.get(&order).ok_or_else(|| {
                NodeError::not_ready(
                    "receipt.order: this member added no noise to the order, so it cannot vouch \
                     for its receipt",
                )
            })?;
            if !release.stage.counts_switched() || release.pending == Some(KeySwitchPhase::Counts) {
                return Err(NodeError::not_ready(
                    "receipt.order: this member has not key-switched the order's release",
                ));
            }
            release.contributions.clone()
        };
        let same_contributions = receipt.listings.len() == summed.len()
            && receipt
                .listings
                .iter()
                .zip(&summed)
                .all(|(part, (listing, hash))| {
                    part.listing.0 == *listing && part.contribution_hash == *hash
                });
        if !same_contributions {
            return Err(NodeError::not_permitted(
                "receipt.listings: not the contributions this member verified and summed",
            ));
        }
        let root = market::hash::contributions_root(
            receipt.listings.iter().map(|part| &part.contribution_hash),
        );
        if receipt.contributions_root != root {
            return Err(NodeError::bad_request(
                "receipt.contributions_root: not the root of its listings' contribution hashes",
            ));
        }
        // 2. What the ledger says, from this node's verified replica.
        let channel = self.market_channel().await?;
        let order_key = receipt.order;
        let (found, owners, committed, registered) = self
            .follower
            .sync_and_read(channel, |machine| {
                let state = machine.state();
                // Each listing's owner, and the participants staged for its part (a part
                // that names none stands for them, as on the ledger).
                let owners: Vec<(Option<AccountId>, Vec<AccountId>)> = receipt
                    .listings
                    .iter()
                    .map(|part| {
                        (
                            state.listing(&part.listing).map(|listing| listing.owner),
                            state
                                .staged_participants(&order_key, &part.listing)
                                .to_vec(),
                        )
                    })
                    .collect();
                (
                    state.order(&order_key).cloned(),
                    owners,
                    state.release(&order_key).cloned(),
                    state.committee().cloned(),
                )
            })
            .await
            .map_err(follow_status)?;
        self.config.committee.check_ledger(registered.as_ref())?;
        let chain_id = self.config.ledger.chain_id;
        for (index, (part, (owner, staged))) in receipt.listings.iter().zip(owners).enumerate() {
            if !staged.is_empty() && !part.participants.is_empty() {
                return Err(NodeError::bad_request(format!(
                    "receipt.listings[{index}].participants: staged on the ledger, so the \
                     receipt must name none"
                )));
            }
            let resolved;
            let part = if staged.is_empty() {
                part
            } else {
                resolved = ListingContribution {
                    participants: staged,
                    ..part.clone()
                };
                &resolved
            };
            let attested = owner
                .and_then(|owner| owner.verifying_key().ok())
                .is_some_and(|key| {
                    part.attested_by(&key, &chain_id, &order_key, &receipt.query_hash)
                });
            if !attested {
                return Err(NodeError::not_permitted(format!(
                    "receipt.listings[{index}]: not attested by the listing's owner on the ledger"
                )));
            }
        }
        let found = found
            .ok_or_else(|| NodeError::not_ready("receipt.order: no such order on the ledger"))?;
        if found.status != market::state::Settlement::Open {
            return Err(NodeError::not_ready(
                "receipt.order: the order is no longer open on the ledger",
            ));
        }
        if found.query_hash != receipt.query_hash {
            return Err(NodeError::bad_request(
                "receipt.query_hash: not the order's query hash",
            ));
        }
        if let Some(index) = receipt
            .listings
            .iter()
            .position(|part| part.epsilon_debited_micro != found.epsilon_requested_micro)
        {
            return Err(NodeError::bad_request(format!(
                "receipt.listings[{index}].epsilon_debited_micro: not the order's ε"
            )));
        }
        let member = self.config.member.get();
        let in_quorum = committed
            .as_ref()
            .is_some_and(|release| release.quorum.contains(&member));
        if !in_quorum {
            return Err(NodeError::not_ready(
                "receipt.order: the ledger commits no release of the order with this member in \
                 its quorum",
            ));
        }
        // 3. One receipt per order: the same one may be asked for again.
        let digest = receipt.cosignature_digest(&chain_id);
        let mut state = self.lock()?;
        let release = state
            .releases
            .get_mut(&order)
            .ok_or_else(|| NodeError::internal("the order's release was forgotten"))?;
        let signature = match &release.cosigned {
            Some((signed, signature)) if *signed == digest => signature.clone(),
            Some(_) => {
                return Err(NodeError::not_permitted(
                    "receipt: this member already co-signed another receipt for the order",
                ))
            }
            None => {
                let cosignature = receipt.cosign(member, &self.config.account, &chain_id);
                release.cosigned = Some((digest, cosignature.signature.clone()));
                // One receipt per order, across restarts too.
                if let Err(status) = self.releases.save(&order, release) {
                    release.cosigned = None;
                    return Err(status);
                }
                cosignature.signature
            }
        };
        Ok(CosignReceiptResponse {
            member: u32::from(member),
            signature,
        })
    }
}

impl NodeService {
    /// Refuses a key switch unless the ledger (this node's verified replica) holds the order's
    /// release commitment, the request sums exactly the committed noise shares, and this
    /// member is in the committed quorum: one order, one release. In phase VALUES the
    /// recipient must be the result key the buyer signed into the order.
    async fn check_committed_release(
        &self,
        order: &[u8],
        noise_members: &[u16],
        recipient: Option<&PublicKey>,
    ) -> Result<Option<Vec<(ListingId, Hash32)>>, NodeError> {
        let order_key = order_key(order)?;
        let channel = self.market_channel().await?;
        let now = cohortex_types::auth::unix_now();
        let (committed, attested, result_key, status, expired) = self
            .follower
            .sync_and_read(channel, |machine| {
                let state = machine.state();
                let time = now.max(machine.last_time());
                let order = state.order(&order_key);
                (
                    state.release(&order_key).cloned(),
                    state.attested_release(&order_key).map(<[_]>::to_vec),
                    state.result_key(&order_key).map(<[u8]>::to_vec),
                    order.map(|order| order.status),
                    order.is_some_and(|order| time >= order.expires_at),
                )
            })
            .await
            .map_err(follow_status)?;
        // A refunded or cancelled order releases nothing more, whatever was committed for it;
        // nor does an expired one, which its buyer may take back (without a receipt, patients
        // would go unpaid and their budgets undebited for a release that happened).
        if status != Some(market::state::Settlement::Open) {
            return Err(NodeError::not_ready(format!(
                "order_id: the order is not open on the ledger ({status:?}); nothing more of it \
                 is key-switched"
            )));
        }
        if expired {
            return Err(NodeError::not_ready(
                "order_id: the order has expired on the ledger; nothing more of it is key-switched",
            ));
        }
        let wrong_recipient = recipient.is_some_and(|recipient| {
            result_key.as_deref() != Some(recipient.to_bytes().as_slice())
        });
        if wrong_recipient {
            return Err(NodeError::not_permitted(if result_key.is_none() {
                "recipient: the order on the ledger names no result key, so its values go to no one"
            } else {
                "recipient: not the result key the buyer signed into the order"
            }));
        }
        let committed = committed.ok_or_else(|| {
            NodeError::not_ready("order_id: no release of the order is committed on the ledger")
        })?;
        let mut requested = noise_members.to_vec();
        requested.sort_unstable();
        if requested != committed.noise_members {
            return Err(NodeError::not_permitted(format!(
                "noise: the ledger commits the release to the noise of members {:?}, not {requested:?}",
                committed.noise_members
            )));
        }
        if !committed.quorum.contains(&self.config.member.get()) {
            return Err(NodeError::not_permitted(format!(
                "member {} is not in the quorum committed on the ledger ({:?})",
                self.config.member.get(),
                committed.quorum
            )));
        }
        if committed.quorum.len() < usize::from(self.config.committee.threshold()) {
            return Err(NodeError::not_permitted(format!(
                "the committed quorum {:?} is smaller than the threshold {}",
                committed.quorum,
                self.config.committee.threshold()
            )));
        }
        Ok(attested)
    }
}

/// Decodes and checks the noise shares of a key-switch request; returns them and the noisy
/// sum they give.
fn noisy_sum(
    release: &Release,
    order: &[u8],
    committee: &CommitteePublic,
    shares: &[NoiseShare],
) -> Result<(Vec<u16>, Vec<Ciphertext>), NodeError> {
    let mut members: Vec<u16> = shares.iter().map(|share| share.member).collect();
    members.sort_unstable();
    if members.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(NodeError::bad_request(
            "noise: a member's share appears twice",
        ));
    }
    let known: BTreeSet<u16> = committee.members().map(|member| member.get()).collect();
    if let Some(stranger) = members.iter().find(|member| !known.contains(member)) {
        return Err(NodeError::bad_request(format!(
            "noise: member {stranger} is not on the committee"
        )));
    }
    let own = shares
        .iter()
        .find(|share| share.member == release.own.member)
        .ok_or_else(|| {
            NodeError::not_ready("noise: this member's own noise share is not included")
        })?;
    if own != &release.own {
        return Err(NodeError::bad_request(
            "noise: this member's share was altered",
        ));
    }
    if let Some(fixed) = release.stage.fixed_noise() {
        if fixed != members.as_slice() {
            return Err(NodeError::bad_request(format!(
                "noise: the release already used the shares of members {fixed:?}"
            )));
        }
    }
    let contexts: Vec<ProofContext> = shares
        .iter()
        .map(|share| noise_context(order, share.member))
        .collect::<Result<_, _>>()?;
    let statements: Vec<_> = shares
        .iter()
        .zip(&contexts)
        .map(|(share, context)| {
            if share.ciphertexts.len() != release.calibration.slots.len() {
                return Err(crate::contribution::ContributionError::Length {
                    got: share.ciphertexts.len(),
                    expected: release.calibration.slots.len(),
                });
            }
            Ok(noise_statement(context, share, &release.calibration))
        })
        .collect();
    if let Err(failures) = verify_bounded(committee.collective_key(), &statements, &mut OsRng) {
        let named: Vec<String> = failures
            .iter()
            .map(|(index, error)| format!("member {}: {error}", shares[*index].member))
            .collect();
        return Err(NodeError::bad_request(format!(
            "noise: shares do not verify ({})",
            named.join("; ")
        )));
    }
    let included: Vec<&NoiseShare> = shares.iter().collect();
    Ok((
        members,
        apply_noise(&release.sum, &included, &release.calibration),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn code(result: Result<(), NodeError>) -> Option<Code> {
        result.err().map(|status| status.code())
    }

    #[test]
    fn values_before_counts_are_refused() {
        let mut stage = Stage::Noised;
        assert_eq!(
            code(stage.advance(KeySwitchPhase::Values, vec![1, 2])),
            Some(Code::FailedPrecondition)
        );
        assert!(matches!(stage, Stage::Noised));
    }

    #[test]
    fn each_phase_is_key_switched_once_with_the_first_noise_set() {
        let mut stage = Stage::Noised;
        assert_eq!(stage.fixed_noise(), None);
        assert!(stage.advance(KeySwitchPhase::Counts, vec![1, 3]).is_ok());
        assert!(stage.counts_switched());
        assert_eq!(stage.fixed_noise(), Some(&[1, 3][..]));
        assert_eq!(
            code(stage.advance(KeySwitchPhase::Counts, vec![1, 3])),
            Some(Code::AlreadyExists)
        );
        assert!(stage.advance(KeySwitchPhase::Values, vec![1, 3]).is_ok());
        assert_eq!(
            code(stage.advance(KeySwitchPhase::Values, vec![1, 3])),
            Some(Code::AlreadyExists)
        );
        assert_eq!(
            code(stage.advance(KeySwitchPhase::Counts, vec![1, 3])),
            Some(Code::AlreadyExists)
        );
    }

    #[test]
    fn values_switch_that_failed_its_checks_may_be_asked_again() {
        let mut stage = Stage::Noised;
        assert!(stage.advance(KeySwitchPhase::Counts, vec![2, 3]).is_ok());
        assert!(stage.advance(KeySwitchPhase::Values, vec![2, 3]).is_ok());
        stage.undo(KeySwitchPhase::Values);
        assert_eq!(stage.fixed_noise(), Some(&[2, 3][..]));
        assert!(stage.check(KeySwitchPhase::Values).is_ok());
        assert_eq!(
            code(stage.check(KeySwitchPhase::Counts)),
            Some(Code::AlreadyExists)
        );
    }

    #[test]
    fn counts_switch_whose_share_did_not_leave_may_be_asked_again() {
        let mut stage = Stage::Noised;
        assert!(stage.advance(KeySwitchPhase::Counts, vec![1, 2]).is_ok());
        // What is written to disk while the share is pending: the stage before it.
        assert!(matches!(
            stage.before(KeySwitchPhase::Counts),
            Stage::Noised
        ));
        stage.undo(KeySwitchPhase::Counts);
        assert_eq!(stage.fixed_noise(), None);
        assert!(stage.check(KeySwitchPhase::Counts).is_ok());
        // Undoing a phase that was not reached changes nothing.
        stage.undo(KeySwitchPhase::Values);
        assert!(matches!(stage, Stage::Noised));
    }
}

/// Where a member keeps its releases across restarts: a folder beside its key share
/// (`<key share>.releases/`), one file per order named by its id in hex, each replaced whole
/// (mode 0600) and synced before the share it records leaves the member. A node without a key
/// share file keeps them in memory only.
pub(super) struct ReleaseStore {
    folder: Option<std::path::PathBuf>,
}

/// How long a release is kept on disk: twice the longest an order may stay open.
const RELEASE_KEPT: std::time::Duration =
    std::time::Duration::from_secs(2 * market::MAX_ORDER_LIFETIME_SECS);

/// A release as it is written to disk: what [`Release`] holds, with the calibration left out
/// (it follows from the plan and ε) and every group element in its wire form, in hex.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredRelease {
    plan: QueryPlan,
    epsilon_micro: u64,
    min_cohort: u64,
    sum: Vec<String>,
    /// This member's noise share, as the `NoiseShare` message it sends.
    own: String,
    contributions: Vec<(String, String)>,
    cosigned: Option<(String, String)>,
    stage: Stage,
}

impl ReleaseStore {
    /// The store of the node configured with `key_share_file`.
    pub(super) fn beside(key_share_file: Option<&std::path::Path>) -> Self {
        Self {
            folder: key_share_file.map(|path| path.with_extension("releases")),
        }
    }

    fn file(folder: &std::path::Path, order: &[u8]) -> std::path::PathBuf {
        folder.join(hex::encode(order))
    }

    /// Writes `release` for `order` and waits until it is on disk.
    fn save(&self, order: &[u8], release: &Release) -> Result<(), NodeError> {
        let Some(folder) = &self.folder else {
            return Ok(());
        };
        let stored = StoredRelease {
            plan: release.plan.clone(),
            epsilon_micro: release.epsilon_micro,
            min_cohort: release.min_cohort,
            sum: release
                .sum
                .iter()
                .map(|ciphertext| hex::encode(ciphertext.to_bytes()))
                .collect(),
            own: hex::encode(prost::Message::encode_to_vec(&encode_noise_share(
                &release.own,
            ))),
            contributions: release
                .contributions
                .iter()
                .map(|(listing, hash)| (listing.clone(), hex::encode(hash.0)))
                .collect(),
            cosigned: release
                .cosigned
                .as_ref()
                .map(|(digest, signature)| (hex::encode(digest.0), hex::encode(signature))),
            // A phase whose share has not left is not written as reached.
            stage: match release.pending {
                Some(phase) => release.stage.before(phase),
                None => release.stage.clone(),
            },
        };
        let written = serde_json::to_vec(&stored)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                if !folder.is_dir() {
                    std::fs::create_dir_all(folder)?;
                    // The new folder's own entry, so the file below is found after a crash.
                    crate::durable::sync_folder_of(folder)?;
                }
                crate::durable::replace_file(&Self::file(folder, order), &bytes)
            });
        written.map_err(|error| {
            tracing::error!(%error, folder = %folder.display(), "cannot write a release to disk");
            NodeError::internal(
                "this member cannot write the release to disk, so it sends no share of it",
            )
        })
    }

    /// Every release written before this start, by order id.
    pub(super) fn load(
        &self,
    ) -> Result<std::collections::BTreeMap<Vec<u8>, Release>, crate::protocol::CommitteeError> {
        let mut releases = std::collections::BTreeMap::new();
        let Some(folder) = &self.folder else {
            return Ok(releases);
        };
        let entries = match std::fs::read_dir(folder) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(releases),
            Err(error) => {
                return Err(crate::protocol::CommitteeError::StoredRelease {
                    path: folder.display().to_string(),
                    reason: error.to_string(),
                })
            }
        };
        for entry in entries {
            let path = entry
                .map_err(|error| crate::protocol::CommitteeError::StoredRelease {
                    path: folder.display().to_string(),
                    reason: error.to_string(),
                })?
                .path();
            // A temporary file is a write that did not finish: its share never left.
            if path.extension().is_some_and(|extension| extension == "tmp") {
                continue;
            }
            // A release written more than twice an order's longest life ago is of an order
            // that has expired: no member key-switches or co-signs it any more, and a member
            // without its record refuses to, so it is deleted rather than read.
            let age = std::fs::metadata(&path)
                .and_then(|metadata| metadata.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok());
            if age.is_some_and(|age| age > RELEASE_KEPT) {
                if let Err(error) = std::fs::remove_file(&path) {
                    tracing::warn!(%error, path = %path.display(), "cannot delete an expired release");
                }
                continue;
            }
            let bad = |reason: String| crate::protocol::CommitteeError::StoredRelease {
                path: path.display().to_string(),
                reason,
            };
            let order = path
                .file_name()
                .and_then(|name| name.to_str())
                .and_then(|name| hex::decode(name).ok())
                .filter(|order| order.len() == 32)
                .ok_or_else(|| bad("the file name is not an order id in hex".into()))?;
            let bytes = std::fs::read(&path).map_err(|error| bad(error.to_string()))?;
            let release = Release::from_stored(
                serde_json::from_slice(&bytes).map_err(|error| bad(error.to_string()))?,
            )
            .map_err(bad)?;
            releases.insert(order, release);
        }
        Ok(releases)
    }
}

impl Release {
    fn from_stored(stored: StoredRelease) -> Result<Self, String> {
        let bytes =
            |text: &str, field: &str| hex::decode(text).map_err(|_| format!("{field} is not hex"));
        let hash = |text: &str, field: &str| {
            bytes(text, field).and_then(|raw| {
                <[u8; 32]>::try_from(raw.as_slice())
                    .map(Hash32)
                    .map_err(|_| format!("{field} is not 32 bytes"))
            })
        };
        let calibration = calibrate(&stored.plan, stored.epsilon_micro)
            .map_err(|error| format!("epsilon: {error}"))?;
        let sum = stored
            .sum
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let field = format!("sum[{index}]");
                decode::<Ciphertext>(&bytes(text, &field)?, &field)
                    .map_err(|status| status.message().to_string())
            })
            .collect::<Result<Vec<_>, String>>()?;
        let own_message: cohortex_proto::v1::NoiseShare =
            prost::Message::decode(bytes(&stored.own, "own")?.as_slice())
                .map_err(|error| format!("own: {error}"))?;
        let own = decode_noise_share(&own_message, "own")
            .map_err(|status| status.message().to_string())?;
        let contributions = stored
            .contributions
            .iter()
            .enumerate()
            .map(|(index, (listing, text))| {
                Ok((
                    listing.clone(),
                    hash(text, &format!("contributions[{index}]"))?,
                ))
            })
            .collect::<Result<Vec<_>, String>>()?;
        let cosigned = stored
            .cosigned
            .as_ref()
            .map(|(digest, signature)| {
                Ok::<_, String>((hash(digest, "cosigned")?, bytes(signature, "cosigned")?))
            })
            .transpose()?;
        Ok(Self {
            plan: stored.plan,
            epsilon_micro: stored.epsilon_micro,
            calibration,
            min_cohort: stored.min_cohort,
            sum,
            own,
            contributions,
            cosigned,
            stage: stored.stage,
            pending: None,
        })
    }
}
