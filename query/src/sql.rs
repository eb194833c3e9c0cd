//! The aggregate-only SQL dialect: parsed with `sqlparser`, compiled to a [`QueryPlan`].
//!
//! See `docs/sql.md` for the dialect with examples. The compiler refuses, with a message that
//! says why, anything whose answer is not a function of additive statistics over bounded
//! values: row-level output, columns without declared bounds, groupings without declared
//! values or beyond the dataset's cell limit, and SQL outside the dialect.

use std::collections::{BTreeMap, BTreeSet};

use sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr,
    ObjectNamePart, Select, SelectItem, SetExpr, Statement, TableFactor, UnaryOperator,
    Value as SqlValue,
};
use sqlparser::dialect::GenericDialect;
use sqlparser::parser::Parser;

use crate::logistic::assign_newton_statistics;
use crate::model::{assign_model_statistics, Family, ModelInputs, ModelSpec, MAX_COVARIATES};
use crate::plan::{
    intern, Aggregate, AggregateInputs, Codec, Comparison, Dummy, GroupKey, Literal, Output,
    Predicate, QueryPlan, Statistic,
};
use crate::schema::{ColumnSpec, ColumnType, Schema};
use crate::survival::SurvivalSpec;

/// Longest query text accepted.
pub const MAX_QUERY_LEN: usize = 16 * 1024;

/// Deepest a WHERE clause's condition tree may be once chains of AND, OR and IN are balanced
/// (a chain of n terms is log₂ n deep, so this bounds nesting by parentheses and NOT, which
/// the parser's recursion limit already bounds). Evaluating, hashing and sending a plan
/// recurse over the tree, so its depth must not grow with the length of the query; and the
/// plan's JSON form takes two levels per condition level (`{"And":[…]}`), which serde_json
/// reads only up to 128 levels deep.
pub const MAX_CONDITION_DEPTH: usize = 48;

/// Why a query was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// The text is not SQL.
    #[error("syntax error: {0}")]
    Syntax(String),
    /// The query would output patient-level rows.
    #[error("row-level output is not allowed: {0}")]
    RowLevel(String),
    /// An aggregate over a column without declared bounds.
    #[error("column `{column}` has no declared bounds, so it cannot be aggregated: declare bounds in the manifest to clip values and bound each patient's contribution")]
    Unbounded {
        /// The column.
        column: String,
    },
    /// A GROUP BY with too many cells, or on a column without declared values.
    #[error("grouping refused: {0}")]
    Grouping(String),
    /// A column that does not exist.
    #[error("unknown column `{column}` (known columns: {known})")]
    UnknownColumn {
        /// The column.
        column: String,
        /// The dataset's columns.
        known: String,
    },
    /// A construct outside the dialect.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// A type mismatch, such as comparing a category with a number.
    #[error("type error: {0}")]
    Type(String),
}

fn unsupported<T>(what: impl Into<String>) -> Result<T, QueryError> {
    Err(QueryError::Unsupported(what.into()))
}

/// Compiles `sql` against `schema`.
pub fn compile(sql: &str, schema: &Schema) -> Result<QueryPlan, QueryError> {
    if sql.len() > MAX_QUERY_LEN {
        return unsupported(format!("queries longer than {MAX_QUERY_LEN} bytes"));
    }
    let statements = Parser::parse_sql(&GenericDialect {}, sql)
        .map_err(|error| QueryError::Syntax(error.to_string()))?;
    let [statement] = statements.as_slice() else {
        return unsupported(format!(
            "{} statements; send exactly one SELECT",
            statements.len()
        ));
    };
    let Statement::Query(query) = statement else {
        return unsupported("statements other than SELECT");
    };
    if query.with.is_some() {
        return unsupported("WITH");
    }
    if query.order_by.is_some() {
        return unsupported("ORDER BY (results come in group order)");
    }
    if query.limit_clause.is_some() || query.fetch.is_some() {
        return unsupported("LIMIT / OFFSET / FETCH");
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return unsupported("UNION, INTERSECT, EXCEPT, VALUES and nested queries");
    };
    Compiler { schema }.select(sql, select)
}

/// The SQL of a logistic model's Newton step from `at` (intercept first): `sql` with its
/// `LOGISTIC(formula, …)` item's coefficients replaced by `at`. `None` when `sql` asks for no
/// logistic model. The client orders the steps (docs/analytics.md).
pub fn newton_step_sql(sql: &str, at: &[f64]) -> Result<Option<String>, QueryError> {
    let mut statements = Parser::parse_sql(&GenericDialect {}, sql)
        .map_err(|error| QueryError::Syntax(error.to_string()))?;
    let [Statement::Query(query)] = statements.as_mut_slice() else {
        return Ok(None);
    };
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Ok(None);
    };
    let mut found = false;
    for item in &mut select.projection {
        let (SelectItem::UnnamedExpr(Expr::Function(function))
        | SelectItem::ExprWithAlias {
            expr: Expr::Function(function),
            ..
        }) = item
        else {
            continue;
        };
        let is_logistic = matches!(
            function.name.0.as_slice(),
            [ObjectNamePart::Identifier(ident)] if ident.value.eq_ignore_ascii_case("logistic")
        );
        let FunctionArguments::List(list) = &mut function.args else {
            continue;
        };
        if !is_logistic || list.args.is_empty() {
            continue;
        }
        list.args.truncate(1);
        for &coefficient in at {
            if !coefficient.is_finite() {
                return Err(QueryError::Unsupported(format!(
                    "a Newton step from the coefficient {coefficient}: the fit diverged"
                )));
            }
            let number = Expr::value(SqlValue::Number(format!("{:e}", coefficient.abs()), false));
            list.args.push(FunctionArg::Unnamed(FunctionArgExpr::Expr(
                if coefficient < 0.0 {
                    Expr::UnaryOp {
                        op: UnaryOperator::Minus,
                        expr: Box::new(number),
                    }
                } else {
                    number
                },
            )));
        }
        found = true;
    }
    Ok(found.then(|| statements[0].to_string()))
}

struct Compiler<'a> {
    schema: &'a Schema,
}

/// What one select item asks for, before statistics are assigned.
enum Item {
    Group {
        name: String,
        key: GroupKey,
    },
    Aggregate {
        name: String,
        function: Aggregate,
        arguments: Vec<String>,
    },
    Histogram {
        key: GroupKey,
    },
    Survival {
        time: String,
        event: String,
    },
    Model {
        family: Family,
        outcome: String,
        covariates: Vec<String>,
        dummies: Vec<Dummy>,
        domain: Vec<String>,
        at: Vec<f64>,
    },
}

impl Compiler<'_> {
    fn select(&self, sql: &str, select: &Select) -> Result<QueryPlan, QueryError> {
        if select.distinct.is_some() {
            return unsupported("DISTINCT");
        }
        if select.having.is_some() {
            return unsupported("HAVING");
        }
        if select.top.is_some() || select.into.is_some() {
            return unsupported("TOP / INTO");
        }
        self.check_from(select)?;

        let filter = select
            .selection
            .as_ref()
            .map(|expr| self.predicate(expr))
            .transpose()?;
        if let Some(depth) = filter.as_ref().map(Predicate::depth) {
            if depth > MAX_CONDITION_DEPTH {
                return unsupported(format!(
                    "WHERE conditions nested {depth} levels deep (at most {MAX_CONDITION_DEPTH})"
                ));
            }
        }

        let mut groups = match &select.group_by {
            GroupByExpr::Expressions(expressions, modifiers) => {
                if !modifiers.is_empty() {
                    return unsupported("GROUP BY modifiers (ROLLUP, CUBE, TOTALS)");
                }
                expressions
                    .iter()
                    .map(|expr| self.group_key(expr))
                    .collect::<Result<Vec<_>, _>>()?
            }
            GroupByExpr::All(_) => return unsupported("GROUP BY ALL"),
        };
        let mut seen = BTreeSet::new();
        for group in &groups {
            if !seen.insert(group.column().to_string()) {
                return Err(QueryError::Grouping(format!(
                    "`{}` is grouped twice",
                    group.column()
                )));
            }
        }

        let mut items = Vec::new();
        for item in &select.projection {
            let (expr, alias) = match item {
                SelectItem::UnnamedExpr(expr) => (expr, None),
                SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias.value.clone())),
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                    return Err(QueryError::RowLevel(
                        "SELECT * returns patients' rows; select aggregates such as COUNT(*) or AVG(column)".into(),
                    ))
                }
                _ => return unsupported("this kind of select item"),
            };
            items.push(self.item(expr, alias, &groups)?);
        }
        if items.is_empty() {
            return unsupported("an empty select list");
        }

        // HISTOGRAM(x) is shorthand for SELECT BIN(x), COUNT(*) … GROUP BY BIN(x).
        if let Some(position) = items
            .iter()
            .position(|item| matches!(item, Item::Histogram { .. }))
        {
            if items.len() != 1 || !groups.is_empty() {
                return unsupported(
                    "HISTOGRAM(column) together with other columns or GROUP BY; write SELECT BIN(column), COUNT(*) … GROUP BY BIN(column) instead",
                );
            }
            let Item::Histogram { key } = items.remove(position) else {
                unreachable!("position found a histogram");
            };
            let column = key.column().to_string();
            groups.push(key.clone());
            items = vec![
                Item::Group {
                    name: format!("{column}_bin"),
                    key,
                },
                Item::Aggregate {
                    name: "count".into(),
                    function: Aggregate::Count,
                    arguments: Vec::new(),
                },
            ];
        }

        // KAPLAN_MEIER(time, event) groups by the time's bins, after the query's own groups.
        let mut survival = None;
        if let Some(position) = items
            .iter()
            .position(|item| matches!(item, Item::Survival { .. }))
        {
            if items.len() != 1 {
                return unsupported(
                    "KAPLAN_MEIER together with other select items; select it alone (GROUP BY adds the group labels)",
                );
            }
            let Item::Survival { time, event } = items.remove(position) else {
                unreachable!("position found a survival curve");
            };
            if groups.iter().any(|group| group.column() == time) {
                return Err(QueryError::Grouping(format!(
                    "KAPLAN_MEIER groups by the bins of `{time}` itself; leave it out of GROUP BY"
                )));
            }
            groups.push(self.bin_key(&time)?);
            survival = Some((time, event));
        }

        let cells: usize = groups.iter().map(GroupKey::cardinality).product();
        if cells > self.schema.max_groups {
            let described: Vec<String> = groups
                .iter()
                .map(|group| format!("{} ({} values)", group.column(), group.cardinality()))
                .collect();
            return Err(QueryError::Grouping(format!(
                "GROUP BY {} makes {cells} cells; this dataset allows at most {}",
                described.join(" × "),
                self.schema.max_groups
            )));
        }

        // Group keys not selected are output first, so every row says which cell it is.
        let mut outputs = Vec::new();
        for (index, group) in groups.iter().enumerate() {
            let selected = items.iter().any(
                |item| matches!(item, Item::Group { key, .. } if key.column() == group.column()),
            );
            if !selected {
                outputs.push(Output::Group {
                    name: group_name(group),
                    key: index,
                });
            }
        }
        let mut statistics: Vec<Statistic> = Vec::new();
        let mut codecs = BTreeMap::new();
        let mut dummies = BTreeMap::new();
        let mut model = None;
        if let Some(position) = items
            .iter()
            .position(|item| matches!(item, Item::Model { .. }))
        {
            if items.len() != 1 {
                return unsupported(
                    "a model together with other select items; select the model alone (GROUP BY adds the group labels)",
                );
            }
            if matches!(
                items[0],
                Item::Model {
                    family: Family::Logistic,
                    ..
                }
            ) && !groups.is_empty()
            {
                return unsupported(
                    "LOGISTIC with GROUP BY: its Newton steps carry one set of coefficients; fit one model per group with WHERE (… WHERE sex = 'male')",
                );
            }
            let Item::Model {
                family,
                outcome,
                covariates,
                dummies: model_dummies,
                domain,
                at,
            } = items.remove(position)
            else {
                unreachable!("position found a model");
            };
            for dummy in model_dummies {
                codecs.insert(
                    dummy.name(),
                    Codec {
                        lower: 0.0,
                        upper: 1.0,
                        decimals: 0,
                    },
                );
                dummies.insert(dummy.name(), dummy);
            }
            for column in std::iter::once(&outcome).chain(&covariates) {
                if !dummies.contains_key(column) {
                    codecs.insert(column.clone(), self.codec(column)?);
                }
            }
            let inputs = match family {
                Family::Linear => ModelInputs::LeastSquares(assign_model_statistics(
                    &outcome,
                    &covariates,
                    &domain,
                    &mut statistics,
                )),
                Family::Logistic => ModelInputs::Newton(assign_newton_statistics(
                    &covariates,
                    &domain,
                    at,
                    &mut statistics,
                )),
            };
            model = Some(ModelSpec {
                family,
                outcome,
                covariates,
                inputs,
            });
        }
        let survival = match survival {
            Some((time, event)) => {
                codecs.insert(event.clone(), self.codec(&event)?);
                let mut domain = vec![time.clone(), event.clone()];
                domain.sort();
                let count = statistics.len();
                statistics.push(Statistic::Count {
                    domain: domain.clone(),
                });
                statistics.push(Statistic::Sum {
                    column: event.clone(),
                    domain,
                });
                Some(SurvivalSpec {
                    time,
                    event,
                    count,
                    events: count + 1,
                })
            }
            None => None,
        };
        for item in items {
            match item {
                Item::Group { name, key } => {
                    let index = groups
                        .iter()
                        .position(|group| group.column() == key.column())
                        .ok_or_else(|| {
                            QueryError::RowLevel(format!(
                                "`{name}` is neither aggregated nor in GROUP BY"
                            ))
                        })?;
                    outputs.push(Output::Group { name, key: index });
                }
                Item::Aggregate {
                    name,
                    function,
                    arguments,
                } => {
                    if function != Aggregate::Count {
                        for argument in &arguments {
                            codecs.insert(argument.clone(), self.codec(argument)?);
                        }
                    }
                    let inputs = assign_statistics(function, &arguments, &mut statistics);
                    outputs.push(Output::Aggregate {
                        name,
                        function,
                        arguments,
                        inputs,
                    });
                }
                Item::Histogram { .. } => unreachable!("histograms were rewritten above"),
                Item::Model { .. } => unreachable!("the model was taken out above"),
                Item::Survival { .. } => unreachable!("the survival curve was taken out above"),
            }
        }
        if statistics.is_empty() {
            return Err(QueryError::RowLevel(
                "a query without an aggregate lists group values only; add COUNT(*) or another aggregate".into(),
            ));
        }
        Ok(QueryPlan {
            sql: sql.trim().to_string(),
            table: self.schema.table.clone(),
            filter,
            groups,
            outputs,
            statistics,
            codecs,
            model,
            survival,
            dummies,
        })
    }

    fn check_from(&self, select: &Select) -> Result<(), QueryError> {
        let [from] = select.from.as_slice() else {
            return unsupported(format!(
                "FROM must name exactly one table: `{}`",
                self.schema.table
            ));
        };
        if !from.joins.is_empty() {
            return unsupported("JOIN");
        }
        let TableFactor::Table { name, args, .. } = &from.relation else {
            return unsupported("FROM must name a table, not a subquery or function");
        };
        if args.is_some() {
            return unsupported("table functions");
        }
        let table = name.to_string().to_lowercase();
        if table != self.schema.table {
            return Err(QueryError::Unsupported(format!(
                "unknown table `{table}`; this dataset's table is `{}`",
                self.schema.table
            )));
        }
        Ok(())
    }

    fn column(&self, name: &str) -> Result<&ColumnSpec, QueryError> {
        let lower = name.to_lowercase();
        if lower == self.schema.id_column || self.schema.key_column.as_deref() == Some(&lower) {
            return Err(QueryError::RowLevel(format!(
                "`{lower}` identifies patients and cannot be queried"
            )));
        }
        self.schema
            .column(&lower)
            .ok_or_else(|| QueryError::UnknownColumn {
                column: lower,
                known: self
                    .schema
                    .columns
                    .iter()
                    .map(|column| column.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    fn codec(&self, name: &str) -> Result<Codec, QueryError> {
        let spec = self.column(name)?;
        if spec.column_type == ColumnType::Bool {
            return Ok(Codec {
                lower: 0.0,
                upper: 1.0,
                decimals: 0,
            });
        }
        if !spec.is_numeric() {
            return Err(QueryError::Type(format!(
                "`{name}` is a {:?} column; only numeric and boolean columns can be aggregated",
                spec.column_type
            )));
        }
        let Some([lower, upper]) = spec.bounds else {
            return Err(QueryError::Unbounded {
                column: name.to_string(),
            });
        };
        Ok(Codec {
            lower,
            upper,
            decimals: spec.decimals,
        })
    }

    fn column_name(&self, expr: &Expr) -> Option<String> {
        match expr {
            Expr::Identifier(ident) => Some(ident.value.to_lowercase()),
            Expr::CompoundIdentifier(parts) if parts.len() == 2 => (parts[0].value.to_lowercase()
                == self.schema.table)
                .then(|| parts[1].value.to_lowercase()),
            Expr::Nested(inner) => self.column_name(inner),
            _ => None,
        }
    }

    fn bin_key(&self, column: &str) -> Result<GroupKey, QueryError> {
        let spec = self.column(column)?;
        let Some(edges) = &spec.bins else {
            return Err(QueryError::Grouping(format!(
                "`{column}` has no declared bins; declare bins in the manifest to group or histogram it"
            )));
        };
        Ok(GroupKey::Bin {
            column: spec.name.clone(),
            edges: edges.clone(),
        })
    }

    fn group_key(&self, expr: &Expr) -> Result<GroupKey, QueryError> {
        if let Some(name) = self.column_name(expr) {
            let spec = self.column(&name)?;
            return match (&spec.categories, &spec.bins, spec.column_type) {
                (Some(categories), _, ColumnType::Category) => Ok(GroupKey::Category {
                    column: spec.name.clone(),
                    categories: categories.clone(),
                }),
                (_, Some(_), _) => Err(QueryError::Grouping(format!(
                    "`{name}` is numeric; group by its declared bins with BIN({name})"
                ))),
                _ => Err(QueryError::Grouping(format!(
                    "`{name}` has no declared categories or bins, so its groups could single out patients"
                ))),
            };
        }
        if let Some((function, arguments)) = function_call(expr)? {
            if function == "bin" {
                let [argument] = arguments.as_slice() else {
                    return unsupported("BIN takes one column");
                };
                let Some(column) = argument.and_then(|expr| self.column_name(expr)) else {
                    return unsupported("BIN takes a column");
                };
                return self.bin_key(&column);
            }
        }
        Err(QueryError::Grouping(format!(
            "GROUP BY `{expr}`: group by a categorical column or BIN(column)"
        )))
    }

    /// `outcome ~ covariate + covariate …`: every column numeric (or boolean) with bounds,
    /// none twice, at most [`MAX_COVARIATES`] covariates.
    fn model_item(&self, family: Family, formula: &Expr, at: &[f64]) -> Result<Item, QueryError> {
        let Expr::BinaryOp {
            left,
            op: BinaryOperator::PGRegexMatch,
            right,
        } = formula
        else {
            return unsupported(format!(
                "`{formula}`: a model takes a formula, outcome ~ covariate + covariate …"
            ));
        };
        let Some(outcome) = self.column_name(left) else {
            return unsupported(format!("`{left}`: the outcome must be a column"));
        };
        let mut covariates = Vec::new();
        let mut pending = vec![right.as_ref()];
        while let Some(term) = pending.pop() {
            match term {
                Expr::BinaryOp {
                    left,
                    op: BinaryOperator::Plus,
                    right,
                } => {
                    pending.push(right);
                    pending.push(left);
                }
                other => {
                    let Some(column) = self.column_name(other) else {
                        return unsupported(format!(
                            "`{other}` in a formula: covariates are columns joined by +"
                        ));
                    };
                    covariates.push(column);
                }
            }
            if covariates.len() > MAX_COVARIATES {
                return unsupported(format!(
                    "more than {MAX_COVARIATES} covariates in one model"
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for column in std::iter::once(&outcome).chain(&covariates) {
            if !seen.insert(column.clone()) {
                return unsupported(format!("`{column}` twice in one model"));
            }
        }
        let outcome_type = self.column(&outcome)?.column_type;
        if family == Family::Logistic && outcome_type != ColumnType::Bool {
            return unsupported(format!(
                "LOGISTIC({outcome} ~ …): the outcome must be a boolean column"
            ));
        }
        if outcome_type == ColumnType::Category {
            return unsupported(format!(
                "the categorical outcome `{outcome}`: a linear model's outcome is numeric or boolean"
            ));
        }
        self.codec(&outcome)?;
        // A categorical covariate becomes one dummy column per category but the first (the
        // reference).
        let mut terms = Vec::new();
        let mut dummies = Vec::new();
        for column in &covariates {
            let spec = self.column(column)?;
            match (&spec.categories, spec.column_type) {
                (Some(categories), ColumnType::Category) => {
                    for category in categories.iter().skip(1) {
                        let dummy = Dummy {
                            column: column.clone(),
                            category: category.clone(),
                        };
                        terms.push(dummy.name());
                        dummies.push(dummy);
                    }
                }
                _ => {
                    self.codec(column)?;
                    terms.push(column.clone());
                }
            }
        }
        if terms.len() > MAX_COVARIATES {
            return unsupported(format!(
                "{} covariate columns (with each category a column of its own); a model takes at most {MAX_COVARIATES} covariates",
                terms.len()
            ));
        }
        let domain: Vec<String> = std::iter::once(outcome.clone()).chain(covariates).collect();
        let at = match family {
            Family::Linear => Vec::new(),
            Family::Logistic if at.is_empty() => vec![0.0; terms.len() + 1],
            Family::Logistic if at.len() == terms.len() + 1 => at.to_vec(),
            Family::Logistic => {
                return unsupported(format!(
                    "LOGISTIC: {} coefficients given; this model has {} (the intercept, then {})",
                    at.len(),
                    terms.len() + 1,
                    terms.join(", ")
                ))
            }
        };
        Ok(Item::Model {
            family,
            outcome,
            covariates: terms,
            dummies,
            domain,
            at,
        })
    }

    fn item(
        &self,
        expr: &Expr,
        alias: Option<String>,
        groups: &[GroupKey],
    ) -> Result<Item, QueryError> {
        let default_name = expr.to_string().to_lowercase();
        let name = alias
            .map(|alias| alias.to_lowercase())
            .unwrap_or(default_name);
        if let Some(column) = self.column_name(expr) {
            self.column(&column)?;
            if groups
                .iter()
                .any(|group| group.column() == column && matches!(group, GroupKey::Category { .. }))
            {
                let key = self.group_key(expr)?;
                return Ok(Item::Group { name, key });
            }
            return Err(QueryError::RowLevel(format!(
                "`{column}` is a bare column; aggregate it (AVG({column}), COUNT(*), …) or GROUP BY it if it is categorical"
            )));
        }
        let Some((function, arguments)) = function_call(expr)? else {
            return unsupported(format!(
                "`{expr}` in the select list; select aggregates or group keys"
            ));
        };
        let column_of = |position: usize| -> Result<String, QueryError> {
            let Some(Some(argument)) = arguments.get(position) else {
                return unsupported(format!(
                    "{}: expected a column argument",
                    function.to_uppercase()
                ));
            };
            let Some(column) = self.column_name(argument) else {
                return unsupported(format!(
                    "{}({argument}): arguments must be columns, not expressions",
                    function.to_uppercase()
                ));
            };
            self.column(&column)?;
            Ok(column)
        };
        let expect_arguments = |count: usize| -> Result<(), QueryError> {
            if arguments.len() == count {
                Ok(())
            } else {
                unsupported(format!(
                    "{} takes {count} argument(s), got {}",
                    function.to_uppercase(),
                    arguments.len()
                ))
            }
        };
        let one = |function: Aggregate| -> Result<Item, QueryError> {
            expect_arguments(1)?;
            Ok(Item::Aggregate {
                name: name.clone(),
                function,
                arguments: vec![column_of(0)?],
            })
        };
        let two = |function: Aggregate| -> Result<Item, QueryError> {
            expect_arguments(2)?;
            let y = column_of(0)?;
            let x = column_of(1)?;
            if x == y {
                return unsupported(format!(
                    "{}({y}, {x}) of a column with itself",
                    function_label(function)
                ));
            }
            Ok(Item::Aggregate {
                name: name.clone(),
                function,
                arguments: vec![y, x],
            })
        };
        match function.as_str() {
            "kaplan_meier" => {
                expect_arguments(2)?;
                let time = column_of(0)?;
                let event = column_of(1)?;
                self.bin_key(&time)?;
                if self.column(&event)?.column_type != ColumnType::Bool {
                    return unsupported(format!(
                        "KAPLAN_MEIER({time}, {event}): the event column must be boolean (true for the event, false for censoring)"
                    ));
                }
                Ok(Item::Survival { time, event })
            }
            "linear" => {
                let [Some(formula)] = arguments.as_slice() else {
                    return unsupported(
                        "LINEAR takes one formula: LINEAR(outcome ~ covariate + covariate …)",
                    );
                };
                self.model_item(Family::Linear, formula, &[])
            }
            "logistic" => {
                let Some((Some(formula), at)) = arguments.split_first() else {
                    return unsupported(
                        "LOGISTIC takes a formula and, for a Newton step, the coefficients it starts from: LOGISTIC(outcome ~ covariate + …[, b0, b1, …])",
                    );
                };
                let mut coefficients = Vec::with_capacity(at.len());
                for (position, argument) in at.iter().enumerate() {
                    match argument.and_then(|expr| self.literal(expr)) {
                        Some(Literal::Number(number)) if number.is_finite() => {
                            coefficients.push(number)
                        }
                        _ => {
                            return unsupported(format!(
                                "LOGISTIC: coefficient {position} must be a finite number"
                            ))
                        }
                    }
                }
                self.model_item(Family::Logistic, formula, &coefficients)
            }
            "count" => match arguments.as_slice() {
                [None] => Ok(Item::Aggregate {
                    name,
                    function: Aggregate::Count,
                    arguments: Vec::new(),
                }),
                [Some(_)] => {
                    let column = column_of(0)?;
                    // COUNT(x) counts patients with x present; it needs no bounds.
                    Ok(Item::Aggregate {
                        name,
                        function: Aggregate::Count,
                        arguments: vec![column],
                    })
                }
                _ => unsupported("COUNT takes * or one column"),
            },
            "sum" => one(Aggregate::Sum),
            "avg" | "mean" => one(Aggregate::Avg),
            "var_samp" | "variance" => one(Aggregate::VarSamp),
            "var_pop" => one(Aggregate::VarPop),
            "stddev_samp" | "stddev" => one(Aggregate::StddevSamp),
            "stddev_pop" => one(Aggregate::StddevPop),
            "covar_samp" => two(Aggregate::CovarSamp),
            "covar_pop" => two(Aggregate::CovarPop),
            "corr" => two(Aggregate::Corr),
            "regr_slope" => two(Aggregate::RegrSlope),
            "regr_intercept" => two(Aggregate::RegrIntercept),
            "histogram" => {
                expect_arguments(1)?;
                Ok(Item::Histogram {
                    key: self.bin_key(&column_of(0)?)?,
                })
            }
            "bin" => {
                expect_arguments(1)?;
                let column = column_of(0)?;
                if groups.iter().any(|group| group.column() == column && matches!(group, GroupKey::Bin { .. })) {
                    return Ok(Item::Group {
                        name,
                        key: self.bin_key(&column)?,
                    });
                }
                Err(QueryError::RowLevel(format!(
                    "BIN({column}) in the select list needs GROUP BY BIN({column})"
                )))
            }
            "min" | "max" | "median" | "percentile_cont" | "percentile_disc" | "mode" => {
                Err(QueryError::RowLevel(format!(
                    "{} reveals an individual patient's value; use AVG, a HISTOGRAM or quantiles from bins",
                    function.to_uppercase()
                )))
            }
            other => unsupported(format!("the function {}", other.to_uppercase())),
        }
        .and_then(|item| {
            // COUNT(column) needs no codec; every other aggregate needs bounds.
            if let Item::Aggregate { function, arguments, .. } = &item {
                if *function != Aggregate::Count {
                    for argument in arguments {
                        self.codec(argument)?;
                    }
                }
            }
            Ok(item)
        })
    }

    fn literal(&self, expr: &Expr) -> Option<Literal> {
        match expr {
            Expr::Value(value) => match &value.value {
                SqlValue::Number(text, _) => text.parse().ok().map(Literal::Number),
                SqlValue::SingleQuotedString(text) => Some(Literal::Text(text.clone())),
                SqlValue::Boolean(flag) => Some(Literal::Bool(*flag)),
                _ => None,
            },
            Expr::UnaryOp {
                op: UnaryOperator::Minus,
                expr,
            } => match self.literal(expr)? {
                Literal::Number(x) => Some(Literal::Number(-x)),
                _ => None,
            },
            Expr::Nested(inner) => self.literal(inner),
            _ => None,
        }
    }

    /// Checks that `literal` fits `column`'s type.
    fn check_literal(
        &self,
        column: &str,
        op: Comparison,
        literal: &Literal,
    ) -> Result<(), QueryError> {
        let spec = self.column(column)?;
        match (spec.column_type, literal) {
            (ColumnType::Float | ColumnType::Integer, Literal::Number(number))
                if !number.is_finite() =>
            {
                Err(QueryError::Type(format!(
                    "`{column}` is compared with a number beyond what a 64-bit float holds; \
                     write a finite number"
                )))
            }
            (ColumnType::Float | ColumnType::Integer, Literal::Number(_)) => Ok(()),
            (ColumnType::Bool, Literal::Bool(_))
                if matches!(op, Comparison::Eq | Comparison::NotEq) =>
            {
                Ok(())
            }
            (ColumnType::Category, Literal::Text(text))
                if matches!(op, Comparison::Eq | Comparison::NotEq) =>
            {
                let declared = spec.categories.as_deref().unwrap_or_default();
                if declared.contains(text) {
                    Ok(())
                } else {
                    Err(QueryError::Type(format!(
                        "`{column}` has no category '{text}' (declared: {})",
                        declared.join(", ")
                    )))
                }
            }
            (ColumnType::Codes, _) => Err(QueryError::Type(format!(
                "`{column}` holds codes; test it with has_code({column}, 'prefix')"
            ))),
            (column_type, literal) => Err(QueryError::Type(format!(
                "cannot compare the {column_type:?} column `{column}` with {literal:?} using {op:?}"
            ))),
        }
    }

    fn predicate(&self, expr: &Expr) -> Result<Predicate, QueryError> {
        match expr {
            Expr::Nested(inner) => self.predicate(inner),
            Expr::BinaryOp { left, op, right } => match op {
                BinaryOperator::And | BinaryOperator::Or => {
                    // `a OR b OR c …` parses as a left-deep chain as long as the query; it is
                    // walked without recursion and compiled into a balanced tree.
                    let terms = chain_terms(expr, op)
                        .into_iter()
                        .map(|term| self.predicate(term))
                        .collect::<Result<Vec<_>, _>>()?;
                    let join = if *op == BinaryOperator::And {
                        Predicate::And
                    } else {
                        Predicate::Or
                    };
                    balanced(terms, join)
                        .ok_or_else(|| QueryError::Unsupported("an empty condition".into()))
                }
                _ => {
                    let op = comparison(op)
                        .ok_or_else(|| QueryError::Unsupported(format!("the operator {op}")))?;
                    self.comparison(left, op, right)
                }
            },
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => Ok(Predicate::Not(Box::new(self.predicate(expr)?))),
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let both = Predicate::And(
                    Box::new(self.comparison(expr, Comparison::GtEq, low)?),
                    Box::new(self.comparison(expr, Comparison::LtEq, high)?),
                );
                Ok(if *negated {
                    Predicate::Not(Box::new(both))
                } else {
                    both
                })
            }
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                let alternatives = list
                    .iter()
                    .map(|item| self.comparison(expr, Comparison::Eq, item))
                    .collect::<Result<Vec<_>, _>>()?;
                let any = balanced(alternatives, Predicate::Or)
                    .ok_or_else(|| QueryError::Unsupported("an empty IN list".into()))?;
                Ok(if *negated {
                    Predicate::Not(Box::new(any))
                } else {
                    any
                })
            }
            Expr::IsNull(inner) | Expr::IsNotNull(inner) => {
                let Some(column) = self.column_name(inner) else {
                    return unsupported("IS NULL on an expression");
                };
                self.column(&column)?;
                Ok(Predicate::IsNull {
                    column,
                    negated: matches!(expr, Expr::IsNotNull(_)),
                })
            }
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => {
                let column = self
                    .column_name(expr)
                    .ok_or_else(|| QueryError::Unsupported(format!("`{expr}` as a condition")))?;
                let spec = self.column(&column)?;
                if spec.column_type != ColumnType::Bool {
                    return Err(QueryError::Type(format!(
                        "`{column}` is not boolean, so it cannot be a condition on its own"
                    )));
                }
                Ok(Predicate::Flag { column })
            }
            Expr::Function(_) => self.code_predicate(expr),
            _ => unsupported(format!("`{expr}` in WHERE")),
        }
    }

    fn code_predicate(&self, expr: &Expr) -> Result<Predicate, QueryError> {
        let Some((function, arguments)) = function_call(expr)? else {
            return unsupported(format!("`{expr}` in WHERE"));
        };
        let prefix_of = |argument: Option<&Expr>| -> Result<String, QueryError> {
            match argument.and_then(|expr| self.literal(expr)) {
                Some(Literal::Text(prefix)) if crate::record::is_valid_code(&prefix) => Ok(prefix),
                _ => unsupported(format!(
                    "{}: the code prefix must be a quoted code such as 'E11'",
                    function.to_uppercase()
                )),
            }
        };
        let (column, prefix) = match (function.as_str(), arguments.as_slice()) {
            ("has_code", [Some(column), Some(prefix)]) => {
                let Some(name) = self.column_name(column) else {
                    return unsupported("HAS_CODE's first argument must be a codes column");
                };
                (name, prefix_of(Some(prefix))?)
            }
            ("has_condition", [Some(prefix)]) => {
                ("conditions".to_string(), prefix_of(Some(prefix))?)
            }
            ("has_medication", [Some(prefix)]) => {
                ("medications".to_string(), prefix_of(Some(prefix))?)
            }
            ("has_code" | "has_condition" | "has_medication", _) => {
                return unsupported(format!(
                    "{} takes (codes_column, 'prefix') or ('prefix')",
                    function.to_uppercase()
                ))
            }
            _ => return unsupported(format!("the function {} in WHERE", function.to_uppercase())),
        };
        let spec = self.column(&column)?;
        if spec.column_type != ColumnType::Codes {
            return Err(QueryError::Type(format!(
                "`{column}` is not a codes column"
            )));
        }
        Ok(Predicate::HasCode { column, prefix })
    }

    fn comparison(
        &self,
        left: &Expr,
        op: Comparison,
        right: &Expr,
    ) -> Result<Predicate, QueryError> {
        match (self.column_name(left), self.column_name(right)) {
            (Some(left_column), Some(right_column)) => {
                for column in [&left_column, &right_column] {
                    let spec = self.column(column)?;
                    if !matches!(spec.column_type, ColumnType::Float | ColumnType::Integer) {
                        return Err(QueryError::Type(format!(
                            "only numeric columns can be compared with each other; `{column}` is {:?}",
                            spec.column_type
                        )));
                    }
                }
                Ok(Predicate::CompareColumns {
                    left: left_column,
                    op,
                    right: right_column,
                })
            }
            (Some(column), None) => {
                let value = self.literal(right).ok_or_else(|| {
                    QueryError::Unsupported(format!(
                        "comparing `{column}` with `{right}`; compare with a literal"
                    ))
                })?;
                self.check_literal(&column, op, &value)?;
                Ok(Predicate::Compare { column, op, value })
            }
            (None, Some(column)) => {
                let value = self.literal(left).ok_or_else(|| {
                    QueryError::Unsupported(format!(
                        "comparing `{left}` with `{column}`; compare with a literal"
                    ))
                })?;
                let flipped = flip(op);
                self.check_literal(&column, flipped, &value)?;
                Ok(Predicate::Compare {
                    column,
                    op: flipped,
                    value,
                })
            }
            (None, None) => unsupported(format!(
                "`{left} {op:?} {right}`: one side must be a column"
            )),
        }
    }
}

fn group_name(group: &GroupKey) -> String {
    match group {
        GroupKey::Category { column, .. } => column.clone(),
        GroupKey::Bin { column, .. } => format!("bin({column})"),
    }
}

fn function_label(function: Aggregate) -> &'static str {
    match function {
        Aggregate::CovarSamp => "COVAR_SAMP",
        Aggregate::CovarPop => "COVAR_POP",
        Aggregate::Corr => "CORR",
        Aggregate::RegrSlope => "REGR_SLOPE",
        Aggregate::RegrIntercept => "REGR_INTERCEPT",
        _ => "aggregate",
    }
}

fn comparison(op: &BinaryOperator) -> Option<Comparison> {
    Some(match op {
        BinaryOperator::Eq => Comparison::Eq,
        BinaryOperator::NotEq => Comparison::NotEq,
        BinaryOperator::Lt => Comparison::Lt,
        BinaryOperator::LtEq => Comparison::LtEq,
        BinaryOperator::Gt => Comparison::Gt,
        BinaryOperator::GtEq => Comparison::GtEq,
        _ => return None,
    })
}

fn flip(op: Comparison) -> Comparison {
    match op {
        Comparison::Lt => Comparison::Gt,
        Comparison::LtEq => Comparison::GtEq,
        Comparison::Gt => Comparison::Lt,
        Comparison::GtEq => Comparison::LtEq,
        other => other,
    }
}

/// A function's lowercase name and its arguments (`None` for `*`).
type FunctionCall<'a> = (String, Vec<Option<&'a Expr>>);

/// The terms of a chain of one operator, left to right: `a OR b OR c` gives [a, b, c]. The
/// left spine is walked in a loop, so a chain as long as the query costs no stack.
fn chain_terms<'e>(expr: &'e Expr, chain_op: &BinaryOperator) -> Vec<&'e Expr> {
    let mut terms = Vec::new();
    let mut current = expr;
    while let Expr::BinaryOp { left, op, right } = current {
        if op != chain_op {
            break;
        }
        terms.push(right.as_ref());
        current = left.as_ref();
    }
    terms.push(current);
    terms.reverse();
    terms
}

/// Joins `terms` pairwise, round by round, into a tree ⌈log₂ n⌉ deep that keeps their
/// left-to-right order (`None` for no terms).
fn balanced(
    mut terms: Vec<Predicate>,
    join: fn(Box<Predicate>, Box<Predicate>) -> Predicate,
) -> Option<Predicate> {
    while terms.len() > 1 {
        let mut joined = Vec::with_capacity(terms.len().div_ceil(2));
        let mut pairs = terms.into_iter();
        while let Some(left) = pairs.next() {
            joined.push(match pairs.next() {
                Some(right) => join(Box::new(left), Box::new(right)),
                None => left,
            });
        }
        terms = joined;
    }
    terms.pop()
}

/// A plain function call: its lowercase name and arguments (`None` for `*`).
fn function_call(expr: &Expr) -> Result<Option<FunctionCall<'_>>, QueryError> {
    let Expr::Function(function) = expr else {
        return Ok(None);
    };
    if function.over.is_some() {
        return unsupported("window functions (OVER)");
    }
    if function.filter.is_some() {
        return unsupported("FILTER (WHERE …) on aggregates; put the condition in WHERE");
    }
    if !function.within_group.is_empty() {
        return unsupported("WITHIN GROUP");
    }
    let name = match function.name.0.as_slice() {
        [ObjectNamePart::Identifier(ident)] => ident.value.to_lowercase(),
        _ => return unsupported(format!("the function {}", function.name)),
    };
    let list = match &function.args {
        FunctionArguments::List(list) => list,
        FunctionArguments::None => return Ok(Some((name, Vec::new()))),
        FunctionArguments::Subquery(_) => return unsupported("subqueries"),
    };
    if list.duplicate_treatment.is_some() {
        return unsupported("DISTINCT or ALL inside an aggregate");
    }
    if !list.clauses.is_empty() {
        return unsupported("clauses inside a function call");
    }
    let mut arguments = Vec::with_capacity(list.args.len());
    for argument in &list.args {
        match argument {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(expr)) => arguments.push(Some(expr)),
            FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => arguments.push(None),
            _ => return unsupported(format!("the argument `{argument}`")),
        }
    }
    Ok(Some((name, arguments)))
}

/// Adds (or reuses) the statistics an aggregate needs.
fn assign_statistics(
    function: Aggregate,
    arguments: &[String],
    statistics: &mut Vec<Statistic>,
) -> AggregateInputs {
    let mut index_of = |statistic: Statistic| intern(statistics, statistic);
    let mut domain: Vec<String> = arguments.to_vec();
    domain.sort();
    domain.dedup();
    let count = index_of(Statistic::Count {
        domain: domain.clone(),
    });
    let mut inputs = AggregateInputs {
        count,
        sum_y: None,
        squares_y: None,
        sum_x: None,
        squares_x: None,
        products: None,
    };
    if function == Aggregate::Count {
        return inputs;
    }
    let sum = |column: &String, index_of: &mut dyn FnMut(Statistic) -> usize| {
        index_of(Statistic::Sum {
            column: column.clone(),
            domain: domain.clone(),
        })
    };
    let squares = |column: &String, index_of: &mut dyn FnMut(Statistic) -> usize| {
        index_of(Statistic::SumSquares {
            column: column.clone(),
            domain: domain.clone(),
        })
    };
    let y = &arguments[0];
    inputs.sum_y = Some(sum(y, &mut index_of));
    match function {
        Aggregate::Sum => {}
        // AVG reads the sum of squares too: its standard error needs the variance.
        Aggregate::Avg
        | Aggregate::VarSamp
        | Aggregate::VarPop
        | Aggregate::StddevSamp
        | Aggregate::StddevPop => {
            inputs.squares_y = Some(squares(y, &mut index_of));
        }
        _ => {
            let x = &arguments[1];
            inputs.sum_x = Some(sum(x, &mut index_of));
            inputs.squares_y = Some(squares(y, &mut index_of));
            inputs.squares_x = Some(squares(x, &mut index_of));
            let (left, right) = if y <= x { (y, x) } else { (x, y) };
            inputs.products = Some(index_of(Statistic::SumProducts {
                left: left.clone(),
                right: right.clone(),
                domain: domain.clone(),
            }));
        }
    }
    inputs
}
