//! Aggregation plans: what a compiled query asks every node to compute.
//!
//! A plan is the node-independent, serialisable form of an aggregate-only query. Every answer
//! is computed from **additive sufficient statistics** per cell (a cell is one combination of
//! the GROUP BY keys):
//!
//! | statistic | per patient in the cell whose domain columns are all present |
//! |---|---|
//! | `Count{domain}` | 1 |
//! | `Sum{x}` | x̃ = round(clip(x)·10^d) − round(L·10^d), the offset encoding |
//! | `SumSquares{x}` | x̃² |
//! | `SumProducts{x, y}` | x̃·ỹ |
//!
//! Offsets make every term non-negative, so range proofs bound it; variances and covariances
//! are shift-invariant, and sums and means add the shift back in [`crate::combine`].
//!
//! The statistics vector of a node is `[participants] ++ cell₀ ++ cell₁ ++ …`, where
//! `participants` counts every patient whose consent covers the purpose, matching or not,
//! and each cell lists `statistics` in order. Cells are numbered row-major over the group keys.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zk::fixed_point::FixedPoint;

/// A literal in a filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Literal {
    /// A number.
    Number(f64),
    /// A string (categories).
    Text(String),
    /// A flag.
    Bool(bool),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Comparison {
    /// =
    Eq,
    /// <> or !=
    NotEq,
    /// <
    Lt,
    /// <=
    LtEq,
    /// >
    Gt,
    /// >=
    GtEq,
}

/// A WHERE clause, with SQL's three-valued logic (a comparison with a missing value is
/// unknown, and unknown rows do not match).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Predicate {
    /// Both.
    And(Box<Predicate>, Box<Predicate>),
    /// Either.
    Or(Box<Predicate>, Box<Predicate>),
    /// Negation.
    Not(Box<Predicate>),
    /// `column op literal`.
    Compare {
        /// The column.
        column: String,
        /// The operator.
        op: Comparison,
        /// The literal.
        value: Literal,
    },
    /// `left op right`, both numeric columns.
    CompareColumns {
        /// Left column.
        left: String,
        /// The operator.
        op: Comparison,
        /// Right column.
        right: String,
    },
    /// `column IS [NOT] NULL`.
    IsNull {
        /// The column.
        column: String,
        /// IS NOT NULL.
        negated: bool,
    },
    /// A boolean column used as a condition.
    Flag {
        /// The column.
        column: String,
    },
    /// Some code in a codes column starts with `prefix`.
    HasCode {
        /// The codes column.
        column: String,
        /// The prefix, e.g. `E11`.
        prefix: String,
    },
}

impl Predicate {
    /// The depth of the condition tree (a single test is 1), counted without recursion.
    pub fn depth(&self) -> usize {
        let mut deepest = 0;
        let mut pending = vec![(self, 1usize)];
        while let Some((predicate, depth)) = pending.pop() {
            deepest = deepest.max(depth);
            match predicate {
                Predicate::And(left, right) | Predicate::Or(left, right) => {
                    pending.push((left, depth + 1));
                    pending.push((right, depth + 1));
                }
                Predicate::Not(inner) => pending.push((inner, depth + 1)),
                _ => {}
            }
        }
        deepest
    }

    /// Every (codes column, prefix) pair the predicate tests, in first-use order.
    pub fn code_matches(&self) -> Vec<(String, String)> {
        let mut found = Vec::new();
        self.collect_code_matches(&mut found);
        found
    }

    fn collect_code_matches(&self, found: &mut Vec<(String, String)>) {
        match self {
            Predicate::And(left, right) | Predicate::Or(left, right) => {
                left.collect_code_matches(found);
                right.collect_code_matches(found);
            }
            Predicate::Not(inner) => inner.collect_code_matches(found),
            Predicate::HasCode { column, prefix } => {
                let pair = (column.clone(), prefix.clone());
                if !found.contains(&pair) {
                    found.push(pair);
                }
            }
            _ => {}
        }
    }
}

/// A GROUP BY key with a declared, finite set of values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum GroupKey {
    /// A categorical column.
    Category {
        /// The column.
        column: String,
        /// Its declared categories, in declared order.
        categories: Vec<String>,
    },
    /// A numeric column's declared bins: [e₀, e₁), [e₁, e₂), …, [eₖ₋₁, eₖ] after clipping.
    Bin {
        /// The column.
        column: String,
        /// The declared edges.
        edges: Vec<f64>,
    },
}

impl GroupKey {
    /// The column grouped on.
    pub fn column(&self) -> &str {
        match self {
            GroupKey::Category { column, .. } | GroupKey::Bin { column, .. } => column,
        }
    }

    /// Number of values.
    pub fn cardinality(&self) -> usize {
        match self {
            GroupKey::Category { categories, .. } => categories.len(),
            GroupKey::Bin { edges, .. } => edges.len() - 1,
        }
    }

    /// The label of value `index`.
    pub fn label(&self, index: usize) -> String {
        match self {
            GroupKey::Category { categories, .. } => categories[index].clone(),
            GroupKey::Bin { edges, .. } => {
                let close = if index + 2 == edges.len() { ']' } else { ')' };
                format!("[{}, {}{close}", edges[index], edges[index + 1])
            }
        }
    }
}

/// A sufficient statistic, summed over the patients of a cell whose `domain` columns are all
/// present.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Statistic {
    /// Number of patients.
    Count {
        /// Columns that must be present.
        domain: Vec<String>,
    },
    /// Σ x̃.
    Sum {
        /// The column.
        column: String,
        /// Columns that must be present.
        domain: Vec<String>,
    },
    /// Σ x̃².
    SumSquares {
        /// The column.
        column: String,
        /// Columns that must be present.
        domain: Vec<String>,
    },
    /// Σ x̃·ỹ.
    SumProducts {
        /// First column.
        left: String,
        /// Second column.
        right: String,
        /// Columns that must be present.
        domain: Vec<String>,
    },
    /// Σ r̃·x̃ (x̃ = 1 without a column): a logistic model's score at the plan's coefficients
    /// ([`crate::logistic`]).
    Score {
        /// The covariate, or none for the intercept.
        column: Option<String>,
        /// Columns that must be present.
        domain: Vec<String>,
    },
    /// Σ w̃·x̃ₗ·x̃ᵣ (x̃ = 1 without a column): a logistic model's information at the plan's
    /// coefficients ([`crate::logistic`]).
    Information {
        /// First covariate, or none.
        left: Option<String>,
        /// Second covariate, or none.
        right: Option<String>,
        /// Columns that must be present.
        domain: Vec<String>,
    },
}

impl Statistic {
    /// The columns that must be present.
    pub fn domain(&self) -> &[String] {
        match self {
            Statistic::Count { domain }
            | Statistic::Sum { domain, .. }
            | Statistic::SumSquares { domain, .. }
            | Statistic::SumProducts { domain, .. }
            | Statistic::Score { domain, .. }
            | Statistic::Information { domain, .. } => domain,
        }
    }
}

/// An aggregate function of the dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Aggregate {
    /// COUNT(*) or COUNT(x).
    Count,
    /// SUM(x).
    Sum,
    /// AVG(x).
    Avg,
    /// VAR_SAMP(x), VARIANCE(x).
    VarSamp,
    /// VAR_POP(x).
    VarPop,
    /// STDDEV_SAMP(x), STDDEV(x).
    StddevSamp,
    /// STDDEV_POP(x).
    StddevPop,
    /// COVAR_SAMP(y, x).
    CovarSamp,
    /// COVAR_POP(y, x).
    CovarPop,
    /// CORR(y, x).
    Corr,
    /// REGR_SLOPE(y, x): slope of the least-squares line y = a + b·x.
    RegrSlope,
    /// REGR_INTERCEPT(y, x).
    RegrIntercept,
}

/// The statistics an aggregate reads, as indices into [`QueryPlan::statistics`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggregateInputs {
    /// n.
    pub count: usize,
    /// Σ x̃ (or ỹ for two-argument aggregates: the first argument).
    pub sum_y: Option<usize>,
    /// Σ x̃² of the first argument.
    pub squares_y: Option<usize>,
    /// Σ of the second argument.
    pub sum_x: Option<usize>,
    /// Σ squares of the second argument.
    pub squares_x: Option<usize>,
    /// Σ products.
    pub products: Option<usize>,
}

/// The index of `statistic` in `statistics`, adding it if it is not there yet: every output
/// that needs the same sum reads the same slot.
pub fn intern(statistics: &mut Vec<Statistic>, statistic: Statistic) -> usize {
    match statistics.iter().position(|known| known == &statistic) {
        Some(index) => index,
        None => {
            statistics.push(statistic);
            statistics.len() - 1
        }
    }
}

/// A model's domain (sorted, without repeats), and the indices of its COUNT and of the sum of
/// each of `columns` over it, interned in `statistics`.
pub fn count_and_sums(
    domain: &[String],
    columns: &[String],
    statistics: &mut Vec<Statistic>,
) -> (Vec<String>, usize, Vec<usize>) {
    let mut domain = domain.to_vec();
    domain.sort();
    domain.dedup();
    let count = intern(
        statistics,
        Statistic::Count {
            domain: domain.clone(),
        },
    );
    let sums = columns
        .iter()
        .map(|column| {
            intern(
                statistics,
                Statistic::Sum {
                    column: column.clone(),
                    domain: domain.clone(),
                },
            )
        })
        .collect();
    (domain, count, sums)
}

impl AggregateInputs {
    /// Every statistic the aggregate reads.
    pub fn statistics(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.count).chain(
            [
                self.sum_y,
                self.squares_y,
                self.sum_x,
                self.squares_x,
                self.products,
            ]
            .into_iter()
            .flatten(),
        )
    }
}

/// One output column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Output {
    /// The label of group key `key`.
    Group {
        /// Column name.
        name: String,
        /// Index into [`QueryPlan::groups`].
        key: usize,
    },
    /// An aggregate.
    Aggregate {
        /// Column name.
        name: String,
        /// The function.
        function: Aggregate,
        /// Argument columns (first = y for two-argument functions).
        arguments: Vec<String>,
        /// Which statistics it reads.
        inputs: AggregateInputs,
    },
}

impl Output {
    /// The output column's name.
    pub fn name(&self) -> &str {
        match self {
            Output::Group { name, .. } | Output::Aggregate { name, .. } => name,
        }
    }
}

/// A column's declared codec, carried in the plan so combining needs no schema.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Codec {
    /// Lower bound.
    pub lower: f64,
    /// Upper bound.
    pub upper: f64,
    /// Decimal places.
    pub decimals: u8,
}

impl Codec {
    /// The fixed-point codec.
    pub fn fixed_point(&self) -> FixedPoint {
        FixedPoint::new(self.lower, self.upper, self.decimals)
            .unwrap_or_else(|error| unreachable!("codecs come from validated manifests: {error}"))
    }

    /// Largest offset-encoded value: round(U·10^d) − round(L·10^d).
    pub fn span(&self) -> u64 {
        let codec = self.fixed_point();
        (codec.encoded_upper() - codec.encoded_lower()).unsigned_abs()
    }
}

/// A compiled query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryPlan {
    /// The query text as the buyer wrote it.
    pub sql: String,
    /// The table.
    pub table: String,
    /// The WHERE clause.
    pub filter: Option<Predicate>,
    /// GROUP BY keys.
    pub groups: Vec<GroupKey>,
    /// Output columns, in order.
    pub outputs: Vec<Output>,
    /// Per-cell statistics.
    pub statistics: Vec<Statistic>,
    /// Codecs of every column a statistic reads.
    pub codecs: BTreeMap<String, Codec>,
    /// A regression model (`LINEAR(y ~ x1 + …)`): then the answer has one row per cell and
    /// coefficient instead of the outputs' aggregates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<crate::model::ModelSpec>,
    /// A Kaplan–Meier query (`KAPLAN_MEIER(time, event)`): then the last group key is the
    /// time's bins and the answer is each group's curve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub survival: Option<crate::survival::SurvivalSpec>,
    /// A model's dummy columns, by name (`sex=male`): each is 1 where its categorical column
    /// holds its category and 0 for the column's other categories. They have a codec in
    /// [`QueryPlan::codecs`] ([0, 1], no decimals) but no column of their own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dummies: BTreeMap<String, Dummy>,
}

/// A dummy column of a model's categorical covariate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dummy {
    /// The categorical column.
    pub column: String,
    /// The category the dummy is 1 for.
    pub category: String,
}

impl Dummy {
    /// The dummy's name: `column=category`.
    pub fn name(&self) -> String {
        format!("{}={}", self.column, self.category)
    }
}

impl QueryPlan {
    /// Number of cells (1 without GROUP BY).
    pub fn cells(&self) -> usize {
        self.groups.iter().map(GroupKey::cardinality).product()
    }

    /// Length of a node's statistics vector: 1 + cells × statistics.
    pub fn vector_len(&self) -> usize {
        1 + self.cells() * self.statistics.len()
    }

    /// Index of statistic `statistic` of cell `cell` in the vector.
    pub fn slot(&self, cell: usize, statistic: usize) -> usize {
        1 + cell * self.statistics.len() + statistic
    }

    /// The group-key value indices of a cell (row-major).
    pub fn cell_keys(&self, mut cell: usize) -> Vec<usize> {
        let mut keys = vec![0; self.groups.len()];
        for (position, group) in self.groups.iter().enumerate().rev() {
            keys[position] = cell % group.cardinality();
            cell /= group.cardinality();
        }
        keys
    }

    /// The cell of a combination of group-key value indices.
    pub fn cell_of(&self, keys: &[usize]) -> usize {
        self.groups
            .iter()
            .zip(keys)
            .fold(0, |cell, (group, &key)| cell * group.cardinality() + key)
    }

    /// The index of the COUNT over the same columns as `statistic` (its domain), which decides
    /// whether the statistic is released; the compiler adds one for every domain it uses.
    pub fn count_of(&self, statistic: &Statistic) -> Option<usize> {
        self.statistics.iter().position(|candidate| {
            matches!(candidate, Statistic::Count { domain } if domain.as_slice() == statistic.domain())
        })
    }

    /// Largest value one patient can add to each statistic (1 for counts).
    pub fn per_patient_max(&self, statistic: &Statistic) -> u64 {
        let span = |column: &str| self.codecs.get(column).map_or(1, Codec::span);
        match statistic {
            Statistic::Count { .. } => 1,
            Statistic::Sum { column, .. } => span(column),
            Statistic::SumSquares { column, .. } => span(column).saturating_mul(span(column)),
            Statistic::SumProducts { left, right, .. } => span(left).saturating_mul(span(right)),
            Statistic::Score { column, .. } => {
                (2 * crate::logistic::SCORE_SCALE).saturating_mul(column.as_deref().map_or(1, span))
            }
            Statistic::Information { left, right, .. } => (crate::logistic::WEIGHT_SCALE / 4)
                .saturating_mul(left.as_deref().map_or(1, span))
                .saturating_mul(right.as_deref().map_or(1, span)),
        }
    }

    /// Public upper bound of every slot of a node's vector, for a node of `capacity` patients:
    /// range proofs show each slot lies in [0, bound]. `None` if a bound overflows 64 bits.
    pub fn slot_bounds(&self, capacity: u64) -> Option<Vec<u64>> {
        let mut bounds = Vec::with_capacity(self.vector_len());
        bounds.push(capacity);
        for _cell in 0..self.cells() {
            for statistic in &self.statistics {
                bounds.push(capacity.checked_mul(self.per_patient_max(statistic))?);
            }
        }
        Some(bounds)
    }
}
