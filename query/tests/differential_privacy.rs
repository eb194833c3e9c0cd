//! The noise: the exact samplers against their textbook distributions, the calibration
//! against the sensitivities it must cover, and the differencing and colluding-committee
//! attacks measured statistically with fixed seeds.
//!
//! Tolerances are a few standard errors of the estimate, computed from the sample size, so a
//! wrong scale (off by more than a few per cent) fails while sampling error does not.

use cohortex_query::combine::combine_release;
use cohortex_query::contribution::verify_bounded;
use cohortex_query::dp::{
    bernoulli_exp_neg, calibrate, sample_discrete_laplace, SlotNoise, TAIL_SCALES,
};
use cohortex_query::noise::{
    apply_noise, build_noise_share, count_slots, noise_statement, released_value_slots,
    suppressed_cells, withheld_slots,
};
use cohortex_query::{compile, Cell, ReleaseNoise, Schema};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use zk::{BsgsConfig, DecryptionTable, KeyPair, ProofContext};

const MANIFEST: &str = r#"
version = 1
table = "patients"
id_column = "patient_id"

[[columns]]
name = "hba1c"
type = "float"
unit = "%"
bounds = [4.0, 15.0]
decimals = 1

[[columns]]
name = "sex"
type = "category"
categories = ["female", "male"]
"#;

fn schema() -> Schema {
    Schema::from_toml(MANIFEST, "test manifest").expect("manifest")
}

/// P[X = k] of the discrete Laplace of scale b: (1 − q)/(1 + q)·q^|k| with q = e^{−1/b}.
fn laplace_pmf(b: f64, k: i64) -> f64 {
    let q = (-1.0 / b).exp();
    (1.0 - q) / (1.0 + q) * q.powi(k.unsigned_abs() as i32)
}

/// Var X = 2q/(1 − q)².
fn laplace_variance(b: f64) -> f64 {
    let q = (-1.0 / b).exp();
    2.0 * q / ((1.0 - q) * (1.0 - q))
}

fn assert_matches_pmf(samples: &[i128], b: f64) {
    let n = samples.len() as f64;
    for k in -6i64..=6 {
        let expected = laplace_pmf(b, k);
        let observed = samples.iter().filter(|&&x| x == i128::from(k)).count() as f64 / n;
        let standard_error = (expected * (1.0 - expected) / n).sqrt();
        assert!(
            (observed - expected).abs() < 5.0 * standard_error,
            "P[X = {k}]: observed {observed:.5}, textbook {expected:.5} (±{standard_error:.5})"
        );
    }
    let mean = samples.iter().map(|&x| x as f64).sum::<f64>() / n;
    let variance = samples
        .iter()
        .map(|&x| (x as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let expected = laplace_variance(b);
    // The sample variance of a Laplace has relative standard error about √(5/n).
    assert!(
        (variance / expected - 1.0).abs() < 5.0 * (5.0 / n).sqrt(),
        "variance {variance:.3}, textbook {expected:.3}"
    );
    assert!(
        mean.abs() < 5.0 * (expected / n).sqrt(),
        "mean {mean:.4} is not 0"
    );
}

#[test]
fn discrete_laplace_sampler_matches_the_textbook_distribution() {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let samples: Vec<i128> = (0..200_000)
        .map(|_| sample_discrete_laplace(3, 1, &mut rng))
        .collect();
    assert_matches_pmf(&samples, 3.0);
}

#[test]
fn discrete_laplace_sampler_is_exact_for_rational_scales() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let samples: Vec<i128> = (0..200_000)
        .map(|_| sample_discrete_laplace(7, 3, &mut rng))
        .collect();
    assert_matches_pmf(&samples, 7.0 / 3.0);
}

#[test]
fn bernoulli_exp_neg_has_probability_exp_of_minus_gamma() {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    for (numerator, denominator) in [(1u128, 3u128), (5, 2), (0, 1)] {
        let n = 100_000;
        let hits = (0..n)
            .filter(|_| bernoulli_exp_neg(numerator, denominator, &mut rng))
            .count() as f64;
        let expected = (-(numerator as f64) / denominator as f64).exp();
        let standard_error = (expected * (1.0 - expected) / n as f64).sqrt().max(1e-9);
        assert!(
            (hits / n as f64 - expected).abs() < 5.0 * standard_error,
            "γ = {numerator}/{denominator}: {} vs {expected}",
            hits / n as f64
        );
    }
}

#[test]
fn calibration_covers_every_slot_a_patient_touches() {
    // COUNT(*) and AVG(hba1c) by sex: statistics count, count(hba1c), sum(hba1c); one patient
    // touches slot 0 and the 3 slots of one cell, so each slot gets ε/4.
    let plan = compile(
        "SELECT sex, COUNT(*), AVG(hba1c) FROM patients GROUP BY sex",
        &schema(),
    )
    .expect("plan");
    let touched = 1.0 + plan.statistics.len() as f64;
    let calibration = calibrate(&plan, 500_000).expect("ε = 0.5");
    assert_eq!(calibration.slots.len(), plan.vector_len());
    let mut loss = 0.0;
    for (index, statistic) in plan.statistics.iter().enumerate() {
        let slot = plan.slot(1, index);
        let sensitivity = plan.per_patient_max(statistic) as f64;
        let scale = calibration.slots[slot].scale();
        assert!((scale - touched * sensitivity / 0.5).abs() < 1e-9 * scale);
        loss += sensitivity / scale;
    }
    loss += 1.0 / calibration.slots[0].scale();
    // Basic composition over the slots one patient can change gives exactly ε.
    assert!((loss - 0.5).abs() < 1e-12, "privacy loss {loss}");
    // hba1c: span (15 − 4)·10 = 110 per patient in fixed point.
    let sum_slot = plan.slot(0, 2);
    assert_eq!(calibration.slots[sum_slot].scale(), touched * 110.0 / 0.5);
    assert!(calibration
        .slots
        .iter()
        .all(|slot| u128::from(slot.bound) * slot.scale_den >= TAIL_SCALES * slot.scale_num));
}

/// The δ of one truncated slot, from the textbook pmf: the redrawn discrete Laplace of scale
/// b on [−K, K] around s, against the same around s + Δ. Where both outputs can fall, their
/// ratio is q^{|y−s|−|y−s−Δ|} ≤ e^{Δ/b}, the slot's share of ε (triangle inequality), so the
/// only excess is the mass one output puts where the other cannot go:
/// δ = Σ_{|y−s| ≤ K < |y−s−Δ|} P(y), the larger of the two directions.
fn truncated_slot_delta(b: f64, bound: i64, sensitivity: i64) -> f64 {
    let normaliser: f64 = (-bound..=bound).map(|x| laplace_pmf(b, x)).sum();
    let one_way = |shift: i64| -> f64 {
        (-bound..=bound)
            .filter(|x| (x - shift).abs() > bound)
            .map(|x| laplace_pmf(b, x) / normaliser)
            .sum()
    };
    one_way(sensitivity).max(one_way(-sensitivity))
}

#[test]
fn truncation_keeps_delta_negligible_at_every_epsilon() {
    // At a large ε the scale falls far below the sensitivity; the truncation bound must still
    // leave the supports of neighbouring outputs overlapping by 48 scales. (SUM, not AVG:
    // AVG also reads Σx², whose bound is too large to sum the pmf over here.)
    let plan = compile("SELECT COUNT(*), SUM(hba1c) FROM patients", &schema()).expect("plan");
    for epsilon_micro in [100_000, 1_000_000, 1_000_000_000, 100_000_000_000] {
        let calibration = calibrate(&plan, epsilon_micro).expect("calibrates");
        for (slot, noise) in calibration.slots.iter().enumerate() {
            let sensitivity = if slot == 0 {
                1
            } else {
                plan.per_patient_max(&plan.statistics[slot - 1]) as i64
            };
            let bound = noise.bound as i64;
            assert!(
                bound <= 1_000_000,
                "slot {slot}: K = {bound} too large to sum here"
            );
            let delta = truncated_slot_delta(noise.scale(), bound, sensitivity.max(1));
            assert!(
                delta < 1e-15,
                "ε = {} µ, slot {slot}: b = {}, K = {bound}, Δ = {sensitivity}: δ = {delta}",
                epsilon_micro,
                noise.scale()
            );
        }
    }
}

#[test]
fn zero_epsilon_is_refused() {
    let plan = compile("SELECT COUNT(*) FROM patients", &schema()).expect("plan");
    assert!(calibrate(&plan, 0).is_err());
}

/// The attacker's best guess between neighbouring populations (n and n + 1 patients) from
/// one release: the likelihood-ratio test on the noisy count. ε-DP bounds its accuracy by
/// e^ε/(1 + e^ε); the measured noise scale must be the theoretical one.
#[test]
fn differencing_attack_is_no_better_than_epsilon_allows() {
    let plan = compile("SELECT COUNT(*) FROM patients", &schema()).expect("plan");
    let epsilon: f64 = 1.0;
    let calibration = calibrate(&plan, 1_000_000).expect("calibration");
    let count = calibration.slots[plan.slot(0, 0)];
    let participants = calibration.slots[0];
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let trials = 40_000;
    let (with_patient, without) = (1001i64, 1000i64);
    let mut correct = 0usize;
    let mut deviations = Vec::with_capacity(trials);
    for trial in 0..trials {
        let truth = if trial % 2 == 0 {
            with_patient
        } else {
            without
        };
        // The release includes both slots the patient changes; the attacker uses both.
        let noisy_count = truth + count.sample(&mut rng);
        let noisy_participants = truth + participants.sample(&mut rng);
        deviations.push((noisy_count - truth) as f64);
        // Likelihood ratio of "with" against "without" for Laplace noise: sum of the
        // per-slot log ratios; guess "with" when positive.
        let log_ratio = |observed: i64, slot: &SlotNoise| {
            ((observed - without).abs() - (observed - with_patient).abs()) as f64 / slot.scale()
        };
        let guess_with =
            log_ratio(noisy_count, &count) + log_ratio(noisy_participants, &participants) > 0.0;
        if guess_with == (truth == with_patient) {
            correct += 1;
        }
    }
    let accuracy = correct as f64 / trials as f64;
    let bound = epsilon.exp() / (1.0 + epsilon.exp());
    let standard_error = (bound * (1.0 - bound) / trials as f64).sqrt();
    assert!(
        accuracy < bound + 4.0 * standard_error,
        "the attacker guessed right {accuracy:.4} of the time; ε = 1 allows {bound:.4}"
    );
    let n = deviations.len() as f64;
    let variance = deviations.iter().map(|x| x * x).sum::<f64>() / n;
    let expected = laplace_variance(count.scale());
    assert!(
        (variance / expected - 1.0).abs() < 5.0 * (5.0 / n).sqrt(),
        "measured noise variance {variance:.3}, theory {expected:.3}"
    );
}

/// t − 1 = 1 member of a 2-of-3 committee withholds its noise share: the release still carries
/// at least one full-scale share, so its noise is never below the calibrated scale. Run
/// through encryption, proofs and the homomorphic sum; decrypted with the collective secret.
#[test]
fn colluding_committee_members_who_drop_their_noise_leave_full_scale_noise() {
    let plan = compile("SELECT COUNT(*) FROM patients", &schema()).expect("plan");
    let calibration = calibrate(&plan, 1_000_000).expect("calibration");
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let collective = KeyPair::generate_with_rng(&mut rng);
    let table = DecryptionTable::build(BsgsConfig {
        table_bits: 12,
        max_abs: 1 << 24,
    })
    .expect("table");
    let truth = [500i64, 500];
    let sum: Vec<_> = truth
        .iter()
        .map(|&value| collective.public.encrypt_with_rng(value, &mut rng))
        .collect();
    let releases = 300;
    let mut deviations = Vec::with_capacity(releases);
    for release in 0..releases {
        let order = [release as u8; 32];
        let contexts: Vec<ProofContext> = (1..=3u16)
            .map(|member| {
                ProofContext::new(&order, format!("noise/{member}").as_bytes()).expect("context")
            })
            .collect();
        let shares: Vec<_> = (1..=3u16)
            .map(|member| {
                build_noise_share(
                    &contexts[usize::from(member) - 1],
                    &collective.public,
                    &calibration,
                    member,
                    &mut rng,
                )
                .expect("share")
            })
            .collect();
        let statements: Vec<_> = shares
            .iter()
            .zip(&contexts)
            .map(|(share, context)| Ok(noise_statement(context, share, &calibration)))
            .collect();
        verify_bounded(&collective.public, &statements, &mut rng).expect("shares verify");
        // Member 1 colludes and drops its share; members 2 and 3 are honest.
        let kept = [&shares[1], &shares[2]];
        let noisy = apply_noise(&sum, &kept, &calibration);
        let value = collective
            .secret
            .decrypt(&noisy[1], &table)
            .expect("decrypt");
        deviations.push((value - 500) as f64);
    }
    let n = deviations.len() as f64;
    let variance = deviations.iter().map(|x| x * x).sum::<f64>() / n;
    let one_share = laplace_variance(calibration.slots[1].scale());
    // Two honest shares: variance 2× one share's; even the worst case (one honest share)
    // would be 1×. The release keeps at least the calibrated noise.
    assert!(
        variance > one_share * (1.0 - 5.0 * (5.0 / n).sqrt()),
        "noise variance {variance:.2} below one full-scale share's {one_share:.2}"
    );
    assert!(
        (variance / (2.0 * one_share) - 1.0).abs() < 6.0 * (5.0 / n).sqrt(),
        "two honest shares should give variance {:.2}, measured {variance:.2}",
        2.0 * one_share
    );
}

#[test]
fn a_noise_share_replayed_under_another_member_does_not_verify() {
    let plan = compile("SELECT COUNT(*) FROM patients", &schema()).expect("plan");
    let calibration = calibrate(&plan, 1_000_000).expect("calibration");
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    let collective = KeyPair::generate_with_rng(&mut rng);
    let order = [9u8; 32];
    let honest = ProofContext::new(&order, b"noise/2").expect("context");
    let share =
        build_noise_share(&honest, &collective.public, &calibration, 2, &mut rng).expect("share");
    let thief = ProofContext::new(&order, b"noise/1").expect("context");
    let statements = vec![Ok(noise_statement(&thief, &share, &calibration))];
    assert!(verify_bounded(&collective.public, &statements, &mut rng).is_err());
    let other_order = ProofContext::new(&[8u8; 32], b"noise/2").expect("context");
    let statements = vec![Ok(noise_statement(&other_order, &share, &calibration))];
    assert!(verify_bounded(&collective.public, &statements, &mut rng).is_err());
}

#[test]
fn small_cohort_cells_are_suppressed_and_others_released() {
    let plan = compile(
        "SELECT sex, COUNT(*), AVG(hba1c) FROM patients GROUP BY sex",
        &schema(),
    )
    .expect("plan");
    let counts = count_slots(&plan);
    // Slot 0, then COUNT(*) and COUNT(hba1c) of each of the 2 cells.
    assert_eq!(counts.len(), 1 + 2 * 2);
    // female: 30 and 28 patients; male: 4 and 4. Minimum 10.
    let withheld = withheld_slots(&plan, &[34, 30, 28, 4, 4], 10);
    assert_eq!(suppressed_cells(&plan, &withheld), vec![false, true]);
    // AVG(hba1c) reads Σ hba1c and Σ hba1c² (its error bar needs the variance).
    let released = released_value_slots(&plan, &withheld);
    assert_eq!(released, vec![plan.slot(0, 2), plan.slot(0, 3)]);
    // The participants' own count below the minimum suppresses everything.
    let withheld = withheld_slots(&plan, &[9, 30, 28, 40, 40], 10);
    assert!(withheld.iter().all(|&hidden| hidden));
    assert_eq!(suppressed_cells(&plan, &withheld), vec![true, true]);
}

/// Issue 25: `SELECT COUNT(*), COUNT(systolic_bp)` over patients of whom nobody has a blood
/// pressure withheld `COUNT(*)` as well, and the participants with it.
#[test]
fn each_aggregate_is_withheld_by_its_own_count() {
    let plan = compile(
        "SELECT COUNT(*), COUNT(hba1c), AVG(hba1c) FROM patients",
        &schema(),
    )
    .expect("plan");
    // Slot 0, COUNT(*), COUNT(hba1c): 12 participants, 12 patients, nobody with an HbA1c.
    let withheld = withheld_slots(&plan, &[12, 12, 0], 10);
    let combined = combine_release(
        &plan,
        &(0..plan.vector_len())
            .map(|slot| (!withheld[slot]).then_some(if slot <= 1 { 12 } else { 0 }))
            .collect::<Vec<_>>(),
        &ReleaseNoise::none(plan.vector_len()),
    )
    .expect("combined");
    assert_eq!(combined.participants, 12);
    assert_eq!(combined.rows[0][0], Cell::Number(12.0));
    assert_eq!(combined.rows[0][1], Cell::Suppressed);
    assert_eq!(combined.rows[0][2], Cell::Suppressed);
    assert!(released_value_slots(&plan, &withheld).is_empty());
    assert_eq!(suppressed_cells(&plan, &withheld), vec![false]);
}
