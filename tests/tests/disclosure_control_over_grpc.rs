//! Disclosure control end to end over gRPC: the minimum cohort, the ledger's ε budget against
//! repetition, and committee members who withhold their noise.

use compute_node::fhir::{bundle_to_record, ProvenancePolicy};
use compute_node::record::Value;
use compute_node::synth::{self, REFERENCE_DATE};
use compute_node::{Cell, Schema};
use market::Purpose;
use testkit::*;

/// The consenting patients of the test population per age band of the FHIR schema, computed
/// from the records independently of the pipeline.
fn consenting_per_age_band() -> Vec<u64> {
    let bins = [0.0, 18.0, 40.0, 50.0, 60.0, 70.0, 80.0, 120.0];
    let age = Schema::fhir()
        .columns
        .iter()
        .position(|column| column.name == "age")
        .unwrap();
    let mut counts = vec![0u64; bins.len() - 1];
    for index in 0..3 * PER_NODE {
        if consent_of(index).is_none() {
            continue;
        }
        let record = bundle_to_record(
            &synth::patient(99, index).to_bundle().to_string(),
            &REFERENCE_DATE,
            &ProvenancePolicy::default(),
        )
        .unwrap();
        let years = match record.values[age] {
            Value::Float(x) => x,
            Value::Integer(x) => x as f64,
            ref other => panic!("age is {other:?}"),
        };
        let band = bins
            .windows(2)
            .position(|pair| years >= pair[0] && (years < pair[1] || pair[1] == 120.0))
            .unwrap();
        counts[band] += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_cohort_cells_are_suppressed_not_zero() {
    const MIN: u32 = 30;
    let truth = consenting_per_age_band();
    assert!(
        truth.iter().any(|&n| n < u64::from(MIN)) && truth.iter().any(|&n| n >= u64::from(MIN)),
        "the population must have bands on both sides of the minimum: {truth:?}"
    );
    let (_dir, cluster, _) = start_with(Setup {
        min_cohort_size: MIN,
        ..Setup::default()
    })
    .await;
    let buyer = buyer(&cluster).await;
    let release = query(
        &cluster,
        &buyer,
        "SELECT BIN(age), COUNT(*), AVG(age) FROM patients GROUP BY BIN(age)",
        EPSILON,
    )
    .await
    .unwrap();
    assert_eq!(release.answer.rows.len(), truth.len());
    for (band, (row, &count)) in release.answer.rows.iter().zip(&truth).enumerate() {
        if count < u64::from(MIN) {
            assert_eq!(row[1], Cell::Suppressed, "band {band}: {count} patients");
            assert_eq!(row[2], Cell::Suppressed, "band {band}");
        } else {
            assert_eq!(row[1].as_f64(), Some(count as f64), "band {band}");
            assert!(row[2].as_f64().is_some(), "band {band}: {:?}", row[2]);
        }
    }
    let hidden = release.status.suppressed.iter().filter(|&&s| s).count();
    assert_eq!(
        hidden,
        truth.iter().filter(|&&n| n < u64::from(MIN)).count()
    );
    books_balance(&cluster);
    cluster.shutdown();
}

fn epsilon_left(cluster: &cohortex_cluster::Cluster) -> Vec<u64> {
    let ledger = cluster.coordinator.ledger().lock().unwrap();
    listings(cluster)
        .iter()
        .map(|id| {
            ledger
                .state()
                .listing(&market::ListingId::new(id.clone()))
                .unwrap()
                .epsilon_remaining_micro()
        })
        .collect()
}

async fn release(
    cluster: &cohortex_cluster::Cluster,
    buyer: &cohortex_client::Buyer,
) -> anyhow::Result<cohortex_client::Release> {
    query_sql(cluster, buyer, 1_000_000).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn averaging_by_repetition_gets_the_same_release_or_runs_out_of_budget() {
    // Budget 2.5 ε per listing; the query at ε = 1.
    let (_dir, cluster, _) = start_with(Setup {
        epsilon_budget_micro: 2_500_000,
        ..Setup::default()
    })
    .await;
    let first_buyer = buyer(&cluster).await;
    let first = release(&cluster, &first_buyer).await.unwrap();
    assert_eq!(epsilon_left(&cluster), vec![1_500_000; 3]);
    // The same buyer repeats the query: the same release, no fresh noise, no budget.
    let repeat = release(&cluster, &first_buyer).await.unwrap();
    assert_eq!(repeat.order, first.order);
    assert_eq!(repeat.answer, first.answer, "not a fresh noisy answer");
    assert_eq!(epsilon_left(&cluster), vec![1_500_000; 3]);
    // Another buyer's order is a new release and spends budget; a third runs out.
    let second_buyer = buyer(&cluster).await;
    let second = release(&cluster, &second_buyer).await.unwrap();
    assert_ne!(second.order, first.order);
    assert_eq!(epsilon_left(&cluster), vec![500_000; 3]);
    let third_buyer = buyer(&cluster).await;
    let error = third_buyer
        .order(
            SQL,
            &listings(&cluster),
            Purpose::AcademicResearch,
            1_000_000,
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::FailedPrecondition, "{error}");
    assert!(
        error
            .message()
            .contains("500000 micro-epsilon left, 1000000 requested"),
        "{error}"
    );
    books_balance(&cluster);
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_member_withholding_its_noise_still_releases_with_the_others() {
    let (_dir, cluster, _) = start([None, None, None]).await;
    cluster.coordinator.withhold_noise_of(&[1]).unwrap();
    let buyer = buyer(&cluster).await;
    let release = query_sql(&cluster, &buyer, EPSILON).await.unwrap();
    assert_eq!(release.status.noise_members, vec![2, 3]);
    let mut used = release.status.committee_used.clone();
    used.sort();
    assert_eq!(
        used,
        vec![2, 3],
        "member 1 refuses: its own noise is missing"
    );
    books_balance(&cluster);
    cluster.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withholding_noise_of_t_members_stops_the_release() {
    let (_dir, cluster, _) = start([None, None, None]).await;
    // A coordinator colluding to drop the noise of t = 2 members: only member 3's noise would
    // remain. The ledger refuses to commit a release whose quorum is below the registered
    // committee's threshold, so nothing is key-switched; and were it committed, members 1 and
    // 2 would refuse to decrypt what they are not in the quorum of (or a sum without their own
    // noise), and member 3 a quorum below the threshold.
    cluster.coordinator.withhold_noise_of(&[1, 2]).unwrap();
    let buyer = buyer(&cluster).await;
    let order = buyer
        .order(SQL, &listings(&cluster), Purpose::AcademicResearch, EPSILON)
        .await
        .unwrap();
    let status = buyer.wait(order).await.unwrap();
    assert_eq!(status.state, cohortex_proto::v1::OrderState::Failed as i32);
    assert!(
        status
            .message
            .contains("the quorum is smaller than the registered committee's threshold"),
        "{}",
        status.message
    );
    assert!(status.result.is_empty(), "nothing was released");
    assert_eq!(balance(&cluster, buyer.account()).await, 10 * PRICE);
    books_balance(&cluster);
    cluster.shutdown();
}

/// A paid, diabetic patient of node 0 who consented (index and record).
fn diabetic_paid_patient_of_node_0() -> (u64, synth::SyntheticPatient) {
    (0..PER_NODE)
        .filter(|index| consent_of(*index) == Some(cohortex_cluster::Payout::ToPatient))
        .map(|index| (index, synth::patient(99, index)))
        .find(|(_, patient)| patient.diabetes)
        .unwrap()
}

/// The patient consents again to `listing` for academic research, paid, with a personal
/// privacy limit (their second transaction: their first consent registered them).
async fn set_personal_limit(
    cluster: &cohortex_cluster::Cluster,
    key: &ed25519_dalek::SigningKey,
    listing: &market::ListingId,
    limit_micro: u64,
) {
    consent_again(cluster, key, listing, Some(limit_micro)).await;
}

/// The patient's second transaction (their first consent registered them): a paid consent
/// to `listing` for academic research, with an optional personal limit.
async fn consent_again(
    cluster: &cohortex_cluster::Cluster,
    key: &ed25519_dalek::SigningKey,
    listing: &market::ListingId,
    limit_micro: Option<u64>,
) {
    use cohortex_proto::v1::consent_client::ConsentClient;
    use cohortex_proto::v1::SignedTransaction;
    let account = market::AccountId::of(key);
    let grant = market::TxBody {
        chain_id: cluster.chain_id,
        signer: account,
        nonce: 1,
        action: market::Action::GrantConsent {
            patient: account,
            listing: listing.clone(),
            purpose: Purpose::AcademicResearch,
            expires_at: None,
            payout: market::PayoutChoice::ToPatient,
            epsilon_limit_micro: limit_micro,
        },
    }
    .sign(key)
    .unwrap();
    ConsentClient::new(cluster.market_channel().await.unwrap())
        .grant(SignedTransaction {
            envelope: grant.bytes,
        })
        .await
        .unwrap();
}

/// A patient whose personal limit one order fills is left out of the next release by the
/// node, and the receipt (which the ledger would refuse otherwise) settles without them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_past_their_personal_limit_is_left_out_of_the_next_release() {
    let (_dir, cluster, truth) = start([None, None, None]).await;
    let buyer = buyer(&cluster).await;
    // A diabetic patient of node 0 who consented and is paid, and who now consents again
    // with a personal limit of exactly one order's ε.
    let (index, patient) = diabetic_paid_patient_of_node_0();
    let account = market::AccountId::of(&patient.key);
    let listing = market::ListingId::new("clinic-0");
    set_personal_limit(&cluster, &patient.key, &listing, EPSILON).await;
    let consenting = (truth.paying.len() + truth.donating) as u64;

    // The first order fits the limit exactly: the patient is in it.
    let first = query_sql(&cluster, &buyer, EPSILON).await.unwrap();
    assert_eq!(first.answer.participants, consenting);
    assert_eq!(first.answer.rows[0][0].as_f64(), Some(truth.count));

    // The second (a different ε, so not the cached release) would exceed it.
    let second = query_sql(&cluster, &buyer, EPSILON - 1).await.unwrap();
    assert_eq!(
        second.answer.participants,
        consenting - 1,
        "patient {index} is left out"
    );
    assert_eq!(second.answer.rows[0][0].as_f64(), Some(truth.count - 1.0));
    {
        let ledger = cluster.coordinator.ledger().lock().unwrap();
        assert_eq!(
            ledger.state().personal_spent_micro(&account, &listing),
            EPSILON,
            "only the first order was spent on the patient's record"
        );
    }
    books_balance(&cluster);
    cluster.shutdown();
}

/// Leaving a patient out for their personal limit takes a listing below its minimum cohort:
/// the coordinator sees that the ledger would refuse the receipt and stops before any noise
/// is drawn or anything decrypted, and the order is refunded with its ε.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_limit_that_breaks_the_minimum_cohort_stops_the_order_before_any_noise() {
    // Every listing has exactly 120 consenting patients (4 in 5 of 150), its minimum cohort.
    let consenting_per_listing = (0..PER_NODE)
        .filter(|index| consent_of(*index).is_some())
        .count() as u32;
    assert_eq!(consenting_per_listing, 120);
    let (_dir, cluster, _) = start_with(Setup {
        min_cohort_size: consenting_per_listing,
        ..Setup::default()
    })
    .await;
    let buyer = buyer(&cluster).await;
    let (_, patient) = diabetic_paid_patient_of_node_0();
    let listing = market::ListingId::new("clinic-0");
    set_personal_limit(&cluster, &patient.key, &listing, EPSILON).await;
    query_sql(&cluster, &buyer, EPSILON).await.unwrap();
    let spent_before = 100 * EPSILON - epsilon_left(&cluster)[0];
    let balance_before = balance(&cluster, buyer.account()).await;

    let order = buyer
        .order(
            SQL,
            &listings(&cluster),
            Purpose::AcademicResearch,
            EPSILON - 1,
        )
        .await
        .unwrap();
    let status = buyer.wait(order).await.unwrap();
    assert_eq!(
        status.state,
        cohortex_proto::v1::OrderState::Failed as i32,
        "{}",
        status.message
    );
    assert!(
        status
            .message
            .contains("listing clinic-0 has 119 participant(s)")
            && status.message.contains("minimum cohort is 120")
            && status.message.contains("nothing was released"),
        "{}",
        status.message
    );
    assert!(status.noise_members.is_empty(), "no member drew noise");
    assert_eq!(balance(&cluster, buyer.account()).await, balance_before);
    assert_eq!(
        100 * EPSILON - epsilon_left(&cluster)[0],
        spent_before,
        "the refused order spent no ε"
    );
    books_balance(&cluster);
    cluster.shutdown();
}

/// The privacy unit is the person: a patient whose records two listings of an order hold,
/// and who consents to both, takes part once (in the order's first such listing), so the
/// release counts them once and its ε covers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_in_two_listings_is_counted_once() {
    use compute_node::fhir::{bundle_to_record, ProvenancePolicy};
    use compute_node::synth::REFERENCE_DATE;
    let (_, patient) = diabetic_paid_patient_of_node_0();
    let dir = tempfile::tempdir().unwrap();
    let (mut setups, truth) = setups([None, None, None], 1);
    // Node 1 also holds the patient's record (a second hospital they were treated at).
    let record = bundle_to_record(
        &patient.to_bundle().to_string(),
        &REFERENCE_DATE,
        &ProvenancePolicy::default(),
    )
    .unwrap();
    setups[1].vault.upsert(record).unwrap();
    let options = cluster_options();
    let cluster = cohortex_cluster::Cluster::start(dir.path(), setups, &options, |_| {})
        .await
        .unwrap();
    consent_again(
        &cluster,
        &patient.key,
        &market::ListingId::new("clinic-1"),
        None,
    )
    .await;

    let buyer = buyer(&cluster).await;
    let release = query_sql(&cluster, &buyer, EPSILON).await.unwrap();
    // Counted once: the plaintext count over the consenting patients of the three vaults,
    // in which this patient appears once (node 0).
    assert_eq!(release.answer.rows[0][0].as_f64(), Some(truth.count));
    assert_eq!(
        release.answer.participants,
        (truth.paying.len() + truth.donating) as u64
    );
    books_balance(&cluster);
    cluster.shutdown();
}

/// The noisy count slots of one release, in plan order: the participants, then every COUNT of
/// every cell (`None` where the cell was suppressed).
fn noisy_counts(answer: &compute_node::QueryAnswer) -> Vec<Option<f64>> {
    let mut counts = vec![Some(answer.participants as f64)];
    for row in &answer.rows {
        // Two group keys, then the six counts.
        for cell in &row[2..] {
            counts.push(cell.as_f64());
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_comes_from_a_quorum_of_t_members_not_from_all_n() {
    // n = 6 members, t = 2: any 2 include an honest one when at most one colludes, so the
    // release sums 2 noise draws, not 6, and its standard deviation is √2 draws, not √6.
    let dir = tempfile::tempdir().unwrap();
    let (node_setups, _) = setups([None, None, None, None, None, None], 1);
    let options = cluster_options();
    let cluster = cohortex_cluster::Cluster::start(dir.path(), node_setups, &options, |_| {})
        .await
        .unwrap();
    let buyer = cluster.new_buyer(100 * PRICE).await.unwrap();
    let listings: Vec<String> = cluster
        .nodes
        .iter()
        .map(|node| node.listing.clone())
        .collect();
    let sql = "SELECT sex, BIN(age), COUNT(*), COUNT(hba1c), COUNT(bmi), COUNT(ldl), \
               COUNT(systolic_bp), COUNT(diastolic_bp) FROM patients GROUP BY sex, BIN(age)";
    // Five releases at ε ≈ 5 (slightly different, so none is a repeat answered from another).
    let epsilons = [5_000_000u64, 5_000_001, 5_000_002, 5_000_003, 5_000_004];
    let mut releases = Vec::new();
    for epsilon_micro in epsilons {
        let release = buyer
            .query(
                sql,
                &listings,
                Purpose::AcademicResearch,
                epsilon_micro,
                &table(),
                &cluster.ledger_key,
            )
            .await
            .unwrap();
        assert_eq!(
            release.status.noise_members,
            vec![1, 2],
            "the release sums the noise of the first t members, no more"
        );
        let mut used = release.status.committee_used.clone();
        used.sort();
        assert_eq!(used, vec![1, 2], "the quorum key-switches");
        releases.push(release);
    }

    // The first release picks the slots (cells it shows with 30 or more patients, so that no
    // later release of them is suppressed); the other four, independent of it, give the noise
    // in pairs: the difference of two releases is the difference of their noise.
    let counts: Vec<Vec<Option<f64>>> = releases
        .iter()
        .map(|release| noisy_counts(&release.answer))
        .collect();
    let counts_per_row = 6;
    let large = |slot: usize| {
        slot == 0 || {
            let row_start = 1 + (slot - 1) / counts_per_row * counts_per_row;
            counts[0][row_start].is_some_and(|count| count >= 30.0)
        }
    };
    let mut differences = Vec::new();
    for pair in [(1, 2), (3, 4)] {
        for slot in (0..counts[0].len()).filter(|&slot| large(slot)) {
            differences.push(counts[pair.0][slot].unwrap() - counts[pair.1][slot].unwrap());
        }
    }
    let n = differences.len() as f64;
    assert!(n >= 30.0, "only {n} slots to measure the noise on");
    let variance = differences.iter().map(|d| d * d).sum::<f64>() / n;

    // Textbook: a person touches the participants and one cell's six counts, each by 1, so
    // the L1 sensitivity is 7 and each draw is a discrete Laplace of scale b = 7/ε, variance
    // 2p/(1 − p)² with p = e^(−1/b). A release sums t = 2 draws; the difference of two
    // releases, four. (The five ε differ by a millionth: one variance for all.)
    let one_draw = |epsilon_micro: u64| {
        let p = (-(epsilon_micro as f64 / 1e6) / 7.0).exp();
        2.0 * p / (1.0 - p).powi(2)
    };
    let expected = 4.0 * one_draw(epsilons[1]);
    // The sample variance's relative standard error is √((2 + κ)/n), κ = 3/4 the excess
    // kurtosis of a sum of four Laplace draws; all n = 6 members' noise would be 3× expected.
    let tolerance = 4.5 * (2.75 / n).sqrt();
    eprintln!("noise variance {variance:.2}, √2 draws {expected:.2}, over {n} slots");
    assert!(
        (variance / expected - 1.0).abs() < tolerance,
        "noise variance {variance:.2}; √2 draws give {expected:.2}, √6 draws {:.2} ({n} slots)",
        3.0 * expected
    );
    cluster.shutdown();
}
