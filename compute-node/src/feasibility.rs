//! Blind feasibility search (feature `tfhe`): how many consenting patients of this vault meet
//! a recruiter's confidential inclusion criteria, computed without the node learning them.
//!
//! The recruiter states its criteria as [`Criterion`]s, each over a **public domain** of bins
//! ([`Domain`]): a grid of edges over a numeric column, a category column's declared
//! categories, or a vocabulary of code prefixes. Only *which* bins it accepts is secret: it
//! encrypts one bit per bin under its own TFHE key ([`EncryptedCriteria`]), so the grid and
//! the vocabulary should be wide enough to hide the chosen range or code among decoys.
//!
//! The node ([`evaluate_feasibility`]):
//! 1. bins every consenting patient's values (plaintext, its own data) and groups patients by
//!    their tuple of bins, so the encrypted work scales with distinct tuples, not patients;
//! 2. sanitises every table entry (two bootstraps each, so each is a fresh 0 or 1);
//! 3. per code clause, per distinct set of vocabulary prefixes a patient's codes reach, one
//!    encrypted "any of these bins" (cached by the set);
//! 4. per tuple, one encrypted "every clause accepts" (one bootstrap);
//! 5. the weighted column sum Σ n(t)·m(t), then its discrete-Laplace noise and the minimum
//!    cohort rule under encryption ([`zk::fhe::Evaluator::release`]).
//!
//! Nothing in this module logs or stores a table entry's meaning: the node only ever holds
//! ciphertexts of the criteria.

use std::collections::BTreeSet;
#[cfg(feature = "vault")]
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use zk::fhe::{EncryptedBit, Evaluator, FheError, FheSecretKey};
#[cfg(feature = "vault")]
use zk::fhe::{EncryptedCount, MatchBit};

use crate::record::Value;
use crate::schema::{ColumnType, Schema};
#[cfg(feature = "vault")]
use crate::vault::{ConsentBook, Vault};

/// Most clauses one query may carry.
pub const MAX_CLAUSES: usize = 8;
/// Most bins one clause's domain may have (table entries).
pub const MAX_BINS: usize = 256;

/// A clause's public domain: how a patient's value is put in a bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Domain {
    /// A numeric column cut at ascending `edges`: bin 0 is below `edges[0]`, bin `i` is
    /// `[edges[i−1], edges[i])`, bin `edges.len()` is at or above the last edge, and one more
    /// bin holds patients with no value.
    Edges(Vec<f64>),
    /// A category column: one bin per declared category, in the schema's order, and one more
    /// for no value.
    Categories(Vec<String>),
    /// A codes column: one bin per prefix. A patient is accepted if any of their codes starts
    /// with a prefix whose bin is accepted.
    Prefixes(Vec<String>),
}

impl Domain {
    /// How many table entries the domain needs.
    pub fn bins(&self) -> usize {
        match self {
            Domain::Edges(edges) => edges.len() + 2,
            Domain::Categories(categories) => categories.len() + 1,
            Domain::Prefixes(prefixes) => prefixes.len(),
        }
    }
}

/// One clause of the criteria in the clear, on the recruiter's side.
#[derive(Debug, Clone, PartialEq)]
pub struct Criterion {
    /// The column.
    pub column: String,
    /// Its public domain.
    pub domain: Domain,
    /// Which bins are accepted (secret): one per [`Domain::bins`].
    pub accepted: Vec<bool>,
}

/// Why a criterion or an encrypted query is refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FeasibilityError {
    /// A criterion does not parse.
    #[error("criterion `{criterion}`: {reason}")]
    Criterion {
        /// The text (cut to 100 bytes).
        criterion: String,
        /// What to fix.
        reason: String,
    },
    /// A clause names a column the schema does not have or cannot bin.
    #[error("clauses[{index}].column `{column}`: {reason}")]
    Column {
        /// Clause position.
        index: usize,
        /// The column.
        column: String,
        /// Why.
        reason: String,
    },
    /// A clause's domain or table is malformed.
    #[error("clauses[{index}]: {reason}")]
    Clause {
        /// Clause position.
        index: usize,
        /// Why.
        reason: String,
    },
    /// Too many or no clauses.
    #[error("clauses: {0}")]
    Clauses(String),
    /// TFHE material is malformed.
    #[error(transparent)]
    Fhe(#[from] FheError),
}

fn excerpt(text: &str) -> String {
    if text.len() <= 100 {
        return text.to_string();
    }
    let cut = (0..=100)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    format!("{}… ({} bytes)", &text[..cut], text.len())
}

impl Criterion {
    /// Parses one criterion against `schema`:
    ///
    /// * `age 40..65 step 5`: a numeric range `[40, 65)` on a public grid of step 5 over the
    ///   column's declared bounds (both ends must lie on the grid);
    /// * `sex in female` or `sex in female,other`: accepted categories;
    /// * `conditions has E11 among E10,E11,E13,I10`: accepted code prefixes among a public
    ///   vocabulary of decoys (the vocabulary must contain them).
    pub fn parse(text: &str, schema: &Schema) -> Result<Self, FeasibilityError> {
        let refuse = |reason: String| FeasibilityError::Criterion {
            criterion: excerpt(text),
            reason,
        };
        let words: Vec<&str> = text.split_whitespace().collect();
        let Some((column_name, rest)) = words.split_first() else {
            return Err(refuse("empty; write e.g. `age 40..65 step 5`".into()));
        };
        let column = schema.column(column_name).ok_or_else(|| {
            refuse(format!(
                "no column `{}` in the schema",
                excerpt(column_name)
            ))
        })?;
        match (column.column_type, rest) {
            (ColumnType::Integer | ColumnType::Float, [range, "step", step]) => {
                let (low, high) = range
                    .split_once("..")
                    .ok_or_else(|| refuse("write the range as LOW..HIGH".into()))?;
                let number = |s: &str, what: &str| {
                    s.parse::<f64>()
                        .ok()
                        .filter(|x| x.is_finite())
                        .ok_or_else(|| refuse(format!("{what} `{}` is not a number", excerpt(s))))
                };
                let (low, high, step) = (
                    number(low, "low")?,
                    number(high, "high")?,
                    number(step, "step")?,
                );
                let [lower, upper] = column.bounds.ok_or_else(|| {
                    refuse(format!(
                        "column `{column_name}` declares no bounds to build a grid on"
                    ))
                })?;
                if step <= 0.0 || low >= high {
                    return Err(refuse(
                        "the step must be positive and LOW below HIGH".into(),
                    ));
                }
                let count = ((upper - lower) / step).floor() as usize + 1;
                if count + 1 > MAX_BINS {
                    return Err(refuse(format!(
                        "a step of {step} makes {count} bins over [{lower}, {upper}]; at most {} — use a coarser step",
                        MAX_BINS - 2
                    )));
                }
                let edges: Vec<f64> = (0..count).map(|i| lower + step * i as f64).collect();
                let on_grid = |x: f64| edges.iter().any(|edge| (edge - x).abs() < 1e-9);
                // A range reaching the upper bound runs to the top bin.
                let high = if high >= upper { f64::INFINITY } else { high };
                if !on_grid(low) || !(high.is_infinite() || on_grid(high)) {
                    return Err(refuse(format!(
                        "{low} and {high} must lie on the grid {lower}, {}, … (step {step})",
                        lower + step
                    )));
                }
                let domain = Domain::Edges(edges.clone());
                // Bin i ≥ 1 is [edges[i−1], edges[i]) (the last runs to +∞); bin 0, below the
                // declared lower bound, is clipped into bin 1 as queries clip values.
                let mut accepted = vec![false; domain.bins()];
                for bin in 1..=edges.len() {
                    let start = edges[bin - 1];
                    let end = edges.get(bin).copied().unwrap_or(f64::INFINITY);
                    accepted[bin] = start >= low - 1e-9 && end <= high + 1e-9;
                }
                accepted[0] = accepted[1];
                Ok(Criterion {
                    column: column.name.clone(),
                    domain,
                    accepted,
                })
            }
            (ColumnType::Category, ["in", list]) => {
                let categories = column.categories.clone().unwrap_or_default();
                let wanted: BTreeSet<&str> = list.split(',').collect();
                if let Some(unknown) = wanted.iter().find(|w| !categories.iter().any(|c| c == *w)) {
                    return Err(refuse(format!(
                        "`{}` is not a category of `{column_name}` (declared: {})",
                        excerpt(unknown),
                        categories.join(", ")
                    )));
                }
                let domain = Domain::Categories(categories.clone());
                let mut accepted: Vec<bool> = categories
                    .iter()
                    .map(|c| wanted.contains(c.as_str()))
                    .collect();
                accepted.push(false);
                Ok(Criterion {
                    column: column.name.clone(),
                    domain,
                    accepted,
                })
            }
            (ColumnType::Codes, ["has", list, "among", vocabulary]) => {
                let vocabulary: Vec<String> = vocabulary.split(',').map(str::to_string).collect();
                let wanted: BTreeSet<&str> = list.split(',').collect();
                if let Some(missing) = wanted.iter().find(|w| !vocabulary.iter().any(|v| v == *w)) {
                    return Err(refuse(format!(
                        "`{}` must be in the vocabulary after `among` (the public decoys)",
                        excerpt(missing)
                    )));
                }
                if vocabulary.len() > MAX_BINS || vocabulary.iter().any(|p| p.is_empty()) {
                    return Err(refuse(format!(
                        "the vocabulary needs 1 to {MAX_BINS} non-empty prefixes"
                    )));
                }
                let accepted = vocabulary
                    .iter()
                    .map(|p| wanted.contains(p.as_str()))
                    .collect();
                Ok(Criterion {
                    column: column.name.clone(),
                    domain: Domain::Prefixes(vocabulary),
                    accepted,
                })
            }
            (ColumnType::Integer | ColumnType::Float, _) => {
                Err(refuse(format!("write `{column_name} LOW..HIGH step STEP`")))
            }
            (ColumnType::Category, _) => Err(refuse(format!(
                "write `{column_name} in CATEGORY[,CATEGORY…]`"
            ))),
            (ColumnType::Codes, _) => Err(refuse(format!(
                "write `{column_name} has CODE[,CODE…] among PREFIX,PREFIX,…`"
            ))),
            _ => Err(refuse(format!(
                "column `{column_name}` cannot be used in criteria"
            ))),
        }
    }

    /// The plaintext decision for one value (what the encrypted circuit computes), used by
    /// the recruiter's own checks and the tests.
    pub fn accepts(&self, value: &Value) -> bool {
        bin_indices(&self.domain, value)
            .into_iter()
            .any(|bin| self.accepted.get(bin).copied().unwrap_or(false))
    }
}

/// The bins `value` falls in: one for edges and categories (the last one when there is no
/// value), every matching prefix for codes.
pub fn bin_indices(domain: &Domain, value: &Value) -> Vec<usize> {
    match domain {
        Domain::Edges(edges) => {
            let missing = edges.len() + 1;
            match value.as_f64() {
                Some(x) if x.is_finite() => vec![edges.iter().filter(|edge| x >= **edge).count()],
                _ => vec![missing],
            }
        }
        Domain::Categories(categories) => match value {
            Value::Category(name) => vec![categories
                .iter()
                .position(|c| c == name)
                .unwrap_or(categories.len())],
            _ => vec![categories.len()],
        },
        Domain::Prefixes(prefixes) => match value {
            Value::Codes(codes) => prefixes
                .iter()
                .enumerate()
                .filter(|(_, prefix)| codes.iter().any(|code| code.starts_with(prefix.as_str())))
                .map(|(index, _)| index)
                .collect(),
            _ => Vec::new(),
        },
    }
}

/// One clause as the node receives it: public column and domain, encrypted table.
#[derive(Clone)]
pub struct EncryptedClause {
    /// The column.
    pub column: String,
    /// The public domain.
    pub domain: Domain,
    /// One encrypted bit per bin.
    pub table: Vec<EncryptedBit>,
}

/// The recruiter's encrypted criteria.
#[derive(Clone)]
pub struct EncryptedCriteria {
    /// Every clause must accept a patient.
    pub clauses: Vec<EncryptedClause>,
}

impl EncryptedCriteria {
    /// Encrypts `criteria` under `key` (one compressed block per bin).
    pub fn encrypt(criteria: &[Criterion], key: &FheSecretKey) -> Self {
        Self {
            clauses: criteria
                .iter()
                .map(|criterion| EncryptedClause {
                    column: criterion.column.clone(),
                    domain: criterion.domain.clone(),
                    table: criterion
                        .accepted
                        .iter()
                        .map(|bit| key.encrypt_bit(*bit))
                        .collect(),
                })
                .collect(),
        }
    }

    /// Checks the clauses against `schema`: known columns of a matching type, domains within
    /// limits, one table entry per bin.
    pub fn check(&self, schema: &Schema) -> Result<(), FeasibilityError> {
        if self.clauses.is_empty() || self.clauses.len() > MAX_CLAUSES {
            return Err(FeasibilityError::Clauses(format!(
                "{} clause(s); 1 to {MAX_CLAUSES} are accepted",
                self.clauses.len()
            )));
        }
        for (index, clause) in self.clauses.iter().enumerate() {
            let column = schema
                .column(&clause.column)
                .ok_or_else(|| FeasibilityError::Column {
                    index,
                    column: excerpt(&clause.column),
                    reason: "not a column of this listing's schema".into(),
                })?;
            let fits = match (&clause.domain, column.column_type) {
                (Domain::Edges(edges), ColumnType::Integer | ColumnType::Float) => {
                    edges.iter().all(|edge| edge.is_finite())
                        && edges.windows(2).all(|pair| pair[0] < pair[1])
                }
                (Domain::Categories(categories), ColumnType::Category) => {
                    Some(categories) == column.categories.as_ref()
                }
                (Domain::Prefixes(prefixes), ColumnType::Codes) => {
                    !prefixes.is_empty() && prefixes.iter().all(|p| !p.is_empty())
                }
                _ => false,
            };
            if !fits {
                return Err(FeasibilityError::Column {
                    index,
                    column: excerpt(&clause.column),
                    reason: "its domain does not fit the column (edges ascending and finite on a \
                             numeric column, the declared categories on a category column, \
                             non-empty prefixes on a codes column)"
                        .into(),
                });
            }
            let bins = clause.domain.bins();
            if bins > MAX_BINS || clause.table.len() != bins {
                return Err(FeasibilityError::Clause {
                    index,
                    reason: format!(
                        "table has {} entries; its domain has {bins} bins (at most {MAX_BINS})",
                        clause.table.len()
                    ),
                });
            }
        }
        Ok(())
    }
}

/// What the node's evaluation did, for logs and the benchmark (no criteria in it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeasibilityStats {
    /// Consenting patients counted.
    pub patients: u64,
    /// Distinct tuples of bins among them.
    pub distinct_tuples: u64,
    /// Tuples that some clause's public domain already rules out (no bin for a code clause).
    pub tuples_ruled_out: u64,
    /// Table entries sanitised.
    pub table_entries: u64,
}

/// Where the evaluation is, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeasibilityStep {
    /// Patients grouped into tuples.
    Grouped {
        /// Distinct tuples.
        tuples: u64,
    },
    /// Table entries sanitised.
    Sanitised,
    /// Match bits computed.
    Matched,
    /// The weighted count summed.
    Counted,
    /// Noisy count released.
    Released,
}

/// How a node releases its count: the noise it drew and the minimum cohort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleaseRule {
    /// The node's discrete-Laplace draw, |noise| ≤ `noise_bound`.
    pub noise: i64,
    /// The truncation bound K of the noise (the offset that keeps the value non-negative).
    pub noise_bound: u64,
    /// The listing's minimum cohort: a smaller noisy count is released as 0 (suppressed).
    pub min_cohort: u64,
}

#[cfg(feature = "vault")]
/// Counts, under encryption, the patients of `vault` consenting to `purpose` whom every
/// clause of `criteria` accepts, then adds the noise and applies the minimum cohort of
/// `rule`. `criteria` must have passed [`EncryptedCriteria::check`] against the vault's
/// schema.
pub fn evaluate_feasibility(
    criteria: &EncryptedCriteria,
    evaluator: &Evaluator,
    vault: &Vault,
    (consents, purpose): (&ConsentBook, &str),
    rule: ReleaseRule,
    mut progress: impl FnMut(FeasibilityStep),
) -> Result<(EncryptedCount, FeasibilityStats), FeasibilityError> {
    criteria.check(vault.schema())?;
    let positions: Vec<usize> = criteria
        .clauses
        .iter()
        .enumerate()
        .map(|(index, clause)| {
            vault
                .schema()
                .columns
                .iter()
                .position(|column| column.name == clause.column)
                .ok_or_else(|| FeasibilityError::Column {
                    index,
                    column: excerpt(&clause.column),
                    reason: "not a column of this listing's schema".into(),
                })
        })
        .collect::<Result<_, _>>()?;

    // 1. Plaintext grouping: a tuple is, per clause, the bins the patient's value reaches.
    let mut tuples: HashMap<Vec<Vec<usize>>, u64> = HashMap::new();
    let mut patients = 0u64;
    for record in vault.records() {
        if !consents.covers(&record.patient_id, purpose) {
            continue;
        }
        patients += 1;
        let tuple: Vec<Vec<usize>> = criteria
            .clauses
            .iter()
            .zip(&positions)
            .map(|(clause, &position)| {
                let value = record.values.get(position).unwrap_or(&Value::Null);
                bin_indices(&clause.domain, value)
            })
            .collect();
        *tuples.entry(tuple).or_insert(0) += 1;
    }
    let mut stats = FeasibilityStats {
        patients,
        distinct_tuples: tuples.len() as u64,
        ..FeasibilityStats::default()
    };
    progress(FeasibilityStep::Grouped {
        tuples: stats.distinct_tuples,
    });

    // 2. Sanitised tables.
    let tables: Vec<Vec<zk::fhe::Block>> = criteria
        .clauses
        .iter()
        .map(|clause| evaluator.sanitize_all(&clause.table))
        .collect();
    stats.table_entries = tables.iter().map(|table| table.len() as u64).sum();
    progress(FeasibilityStep::Sanitised);

    // 3. Per clause, one indicator per distinct bin set (cached): the bin itself, or "any of
    //    these prefixes" for codes.
    let mut indicators: Vec<HashMap<Vec<usize>, zk::fhe::Block>> =
        vec![HashMap::new(); criteria.clauses.len()];
    for tuple in tuples.keys() {
        for (clause, bins) in tuple.iter().enumerate() {
            if indicators[clause].contains_key(bins) {
                continue;
            }
            let entries: Vec<&zk::fhe::Block> = bins
                .iter()
                .filter_map(|bin| tables[clause].get(*bin))
                .collect();
            let indicator = match entries.as_slice() {
                [] => evaluator.zero(),
                [only] => (*only).clone(),
                many => evaluator.any_of(many)?,
            };
            indicators[clause].insert(bins.clone(), indicator);
        }
    }

    // 4. Per tuple, its match bit; 5. the weighted count.
    let ordered: Vec<(&Vec<Vec<usize>>, u64)> = tuples.iter().map(|(t, n)| (t, *n)).collect();
    let matches: Vec<Result<Option<(MatchBit, u64)>, FheError>> = {
        use rayon::prelude::*;
        ordered
            .par_iter()
            .map(|(tuple, count)| {
                let clauses: Vec<&zk::fhe::Block> = tuple
                    .iter()
                    .enumerate()
                    .filter_map(|(clause, bins)| indicators[clause].get(bins))
                    .collect();
                Ok(evaluator.match_bit(&clauses)?.map(|bit| (bit, *count)))
            })
            .collect()
    };
    let matches: Vec<Option<(MatchBit, u64)>> = matches.into_iter().collect::<Result<_, _>>()?;
    stats.tuples_ruled_out = matches.iter().filter(|bit| bit.is_none()).count() as u64;
    progress(FeasibilityStep::Matched);
    let terms: Vec<(&MatchBit, u64)> = matches.iter().flatten().map(|(bit, n)| (bit, *n)).collect();
    let count = evaluator.weighted_count(&terms);
    progress(FeasibilityStep::Counted);
    let released = evaluator.release(
        &count,
        rule.noise,
        rule.noise_bound,
        rule.min_cohort,
        vault.capacity(),
    )?;
    progress(FeasibilityStep::Released);
    Ok((released, stats))
}

/// One patient's encrypted match bit: `[every clause accepts the patient's values]`, a clean,
/// non-trivial block under the recruiter's key (a trial reply gates its key with it).
///
/// Only the table entries the patient's bins reach are sanitised. When a clause's public
/// domain already rules the patient out, the bit is a fresh encryption of 0 made from a
/// sanitised entry, so the reply does not show that the domain decided it.
pub fn patient_match_bit(
    criteria: &EncryptedCriteria,
    evaluator: &Evaluator,
    schema: &Schema,
    values: &[Value],
) -> Result<zk::fhe::Block, FeasibilityError> {
    criteria.check(schema)?;
    let mut indicators = Vec::with_capacity(criteria.clauses.len());
    let mut some_entry = None;
    for (index, clause) in criteria.clauses.iter().enumerate() {
        let position = schema
            .columns
            .iter()
            .position(|column| column.name == clause.column)
            .ok_or_else(|| FeasibilityError::Column {
                index,
                column: excerpt(&clause.column),
                reason: "not a column of this listing's schema".into(),
            })?;
        let value = values.get(position).unwrap_or(&Value::Null);
        let entries: Vec<zk::fhe::Block> = bin_indices(&clause.domain, value)
            .iter()
            .filter_map(|bin| clause.table.get(*bin))
            .map(|bit| evaluator.sanitize(bit))
            .collect();
        if some_entry.is_none() {
            some_entry = entries.first().cloned();
        }
        let indicator = match entries.as_slice() {
            [] => evaluator.zero(),
            [only] => only.clone(),
            many => evaluator.any_of(&many.iter().collect::<Vec<_>>())?,
        };
        indicators.push(indicator);
    }
    let bit = evaluator.all_of(&indicators.iter().collect::<Vec<_>>())?;
    if !Evaluator::is_public_zero(&bit) {
        return Ok(bit);
    }
    let like = match some_entry {
        Some(entry) => entry,
        // No bin of any clause reached: sanitise the first entry of the first clause.
        None => criteria
            .clauses
            .first()
            .and_then(|clause| clause.table.first())
            .map(|bit| evaluator.sanitize(bit))
            .ok_or_else(|| FeasibilityError::Clauses("no table entries".into()))?,
    };
    Ok(evaluator.fresh_zero(&like))
}
