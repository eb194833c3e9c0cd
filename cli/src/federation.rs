//! `cohortex local` and `cohortex demo`: the full federated flow over gRPC on loopback, in
//! one process (see `coordinator::cluster`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cohortex_client::Release;
use cohortex_cluster::{Cluster, ClusterOptions, NodeSetup, PatientEnrolment, Payout};
use compute_node::fhir::{bundle_to_record, ProvenancePolicy};
use compute_node::ingest::{ingest_fhir, ingest_table, is_fhir_source};
use compute_node::synth::{self, REFERENCE_DATE};
use compute_node::{compile, Cell, QueryAnswer, Schema, Vault};
use ed25519_dalek::SigningKey;
use indicatif::{ProgressBar, ProgressStyle};
use market::{AccountId, ListingId, Purpose};
use sha2::{Digest, Sha256};
use zk::{BsgsConfig, DecryptionTable};

use crate::config::reference_date;

/// Credits a listing charges per query, per patient it holds: the price is split evenly among
/// the listing's participants (docs/ledger.md), so it must exceed their number for anyone to
/// receive a whole credit.
const PRICE_PER_PATIENT: u64 = 20;
/// ε per demo query, micro-ε.
const DEMO_EPSILON_MICRO: u64 = 2_000_000;
/// Each demo listing's total ε budget, micro-ε.
const DEMO_BUDGET_MICRO: u64 = 20_000_000;
/// The personal limit some demo patients set in their consent: two queries' worth.
const DEMO_PERSONAL_LIMIT_MICRO: u64 = 2 * DEMO_EPSILON_MICRO;

pub(crate) fn spinner(message: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(120));
    bar.set_message(message.to_string());
    bar
}

/// Where the decryption table is cached between runs.
fn table_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/cohortex")
}

pub(crate) fn decryption_table(quiet: bool) -> anyhow::Result<DecryptionTable> {
    let bar = spinner(
        "loading the buyer's decryption table (built once, then cached)",
        quiet,
    );
    let table = DecryptionTable::load_or_build(&table_dir(), BsgsConfig::default())
        .context("building the baby-step giant-step table")?;
    bar.finish_and_clear();
    Ok(table)
}

fn new_state_dir(requested: Option<PathBuf>, prefix: &str) -> anyhow::Result<PathBuf> {
    let dir = match requested {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!(
            "cohortex-{prefix}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_secs())
        )),
    };
    if dir.join("ledger.db").exists() {
        bail!(
            "{} already holds a ledger; pass another --state-dir or remove it",
            dir.display()
        );
    }
    Ok(dir)
}

fn local_patient_key(node: usize, patient_id: &str) -> SigningKey {
    let digest = Sha256::new()
        .chain_update(b"cohortex.local.patient.v1")
        .chain_update((node as u64).to_le_bytes())
        .chain_update(patient_id.as_bytes())
        .finalize();
    SigningKey::from_bytes(&digest.into())
}

/// Arguments of `cohortex local`.
pub struct LocalArgs {
    /// One CSV or Parquet file per node.
    pub node_data: Vec<PathBuf>,
    /// The manifest (tables only).
    pub schema: Option<PathBuf>,
    /// The date ages are computed at (FHIR bundles only), YYYY-MM-DD.
    pub reference_date: Option<String>,
    /// The SQL.
    pub query: String,
    /// The purpose.
    pub purpose: String,
    /// How to print the release.
    pub format: crate::output::Format,
    /// Where to keep the ledger.
    pub state_dir: Option<PathBuf>,
    /// ε of the release, micro-ε.
    pub epsilon_micro: u64,
    /// Newton steps of a logistic model.
    pub steps: usize,
}

/// Runs `cohortex local`.
pub async fn local(args: LocalArgs) -> anyhow::Result<()> {
    if let Some(missing) = args.node_data.iter().find(|path| !path.exists()) {
        bail!("--node-data: {} does not exist", missing.display());
    }
    // Every vault is the same kind: tables under one manifest, or FHIR bundles under the
    // built-in FHIR schema (with a reference date for ages).
    let fhir_sources = args
        .node_data
        .iter()
        .filter(|path| is_fhir_source(path))
        .count();
    let reference_date = match (fhir_sources, &args.reference_date) {
        (0, None) => None,
        (0, Some(_)) => bail!(
            "--reference-date applies to FHIR bundles (.json, .ndjson or a directory); the \
             tables' ages come from their own column"
        ),
        (count, _) if count != args.node_data.len() => bail!(
            "--node-data: {count} of {} sources are FHIR bundles; give all tables (with \
             --schema) or all FHIR bundles (with --reference-date)",
            args.node_data.len()
        ),
        (_, None) => bail!(
            "--node-data holds FHIR bundles; add --reference-date YYYY-MM-DD, the date \
             patients' ages are computed at"
        ),
        (_, Some(text)) => Some(reference_date(text, "--reference-date")?),
    };
    let schema = match (&reference_date, &args.schema) {
        (Some(_), None) => Schema::fhir(),
        (Some(_), Some(_)) => bail!(
            "--schema: FHIR bundles use the built-in FHIR schema (docs/sql.md); remove --schema"
        ),
        (None, Some(path)) => Schema::from_path(path).map_err(anyhow::Error::msg)?,
        (None, None) => bail!(
            "--schema is required for CSV and Parquet files: the manifest describing their \
             columns (docs/sql.md)"
        ),
    };
    let purpose = market::server::purpose_field(&args.purpose, "--purpose")
        .map_err(|status| anyhow::anyhow!("{}", status.message()))?;
    // Refuse a bad query before starting anything.
    compile(&args.query, &schema).map_err(|error| anyhow::anyhow!("--query: {error}"))?;
    if args.node_data.len() < 2 {
        anyhow::bail!(
            "--node-data: give at least two files (one per node): the key committee needs two \
             members, so that no single node can decrypt"
        );
    }
    let mut setups = Vec::new();
    for (node, path) in args.node_data.iter().enumerate() {
        let mut vault = Vault::new(schema.clone());
        let report = match &reference_date {
            Some(as_of) => ingest_fhir(path, &mut vault, as_of, &ProvenancePolicy::default()),
            None => ingest_table(path, &mut vault),
        }
        .map_err(anyhow::Error::msg)?;
        for rejected in &report.rejected {
            eprintln!("warning: record not ingested: {rejected}");
        }
        for dropped in &report.dropped {
            eprintln!("warning: value dropped: {dropped}");
        }
        if report.accepted == 0 {
            bail!("{}: no record could be ingested", path.display());
        }
        // Each row is a patient who consents; give each a key (derived from the file's position
        // and the patient id) to register and sign their consent with.
        let mut keyed = Vault::new(schema.clone());
        let mut patients = Vec::new();
        for record in vault.records() {
            let key = local_patient_key(node, &record.patient_id);
            let mut record = record.clone();
            record.patient_key = Some(hex::encode(key.verifying_key().as_bytes()));
            keyed.upsert(record).context("keying a record")?;
            patients.push(PatientEnrolment {
                key,
                consent: Some(Payout::ToPatient),
                epsilon_limit_micro: None,
            });
        }
        let price_per_query = PRICE_PER_PATIENT * patients.len() as u64;
        setups.push(NodeSetup {
            listing: format!("node-{}", node + 1),
            vault: keyed,
            patients,
            price_per_query,
            donation: false,
            min_cohort_size: 1,
            fault: None,
        });
    }
    let records_total: u64 = setups.iter().map(|setup| setup.patients.len() as u64).sum();
    let dir = new_state_dir(args.state_dir, "local")?;
    let quiet = args.format != crate::output::Format::Table;
    let bar = spinner("starting the market, ledger and nodes", quiet);
    let options = ClusterOptions {
        purpose,
        threshold: 2,
        // The listings exist for this one run: a budget of ten such releases.
        epsilon_budget_micro: args.epsilon_micro.saturating_mul(10),
        // The run's one query is this order: its ε is the cap.
        max_epsilon_per_order_micro: args.epsilon_micro,
        extra_purposes: Vec::new(),
        nodes_read_market_at: None,
        authority: None,
        ledger_committee_threshold: None,
        key_ceremony: true,
    };
    let cluster = Cluster::start(&dir, setups, &options, |step| {
        bar.set_message(step.to_string())
    })
    .await?;
    bar.finish_and_clear();
    let table = decryption_table(quiet)?;
    let total_price: u64 = PRICE_PER_PATIENT * records_total;
    let buyer = cluster.new_buyer(10 * total_price).await?;
    let listings: Vec<String> = cluster
        .nodes
        .iter()
        .map(|node| node.listing.clone())
        .collect();
    let bar = spinner("running the federated query", quiet);
    let mut releases = buyer
        .fit(
            &args.query,
            &listings,
            purpose,
            args.epsilon_micro,
            args.steps,
            &table,
            &cluster.ledger_key,
            |step, steps| {
                if steps > 1 {
                    bar.set_message(format!(
                        "Newton step {step} of {steps}: a release of the score and information"
                    ));
                }
            },
        )
        .await?;
    bar.finish_and_clear();
    // A logistic fit spent ε on every step; each release carries its own.
    let steps = releases.len();
    let epsilon_spent = releases
        .iter()
        .map(|release| release.status.epsilon_micro)
        .sum::<u64>() as f64
        / 1e6;
    let release = releases
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no release came back"))?;
    let ledger_path = cluster.ledger_path();
    cluster.shutdown();
    if args.format == crate::output::Format::Arrow {
        let plan =
            compile(&args.query, &schema).map_err(|error| anyhow::anyhow!("--query: {error}"))?;
        let provenance = cohortex_client::arrow_release::Provenance {
            query: args.query.clone(),
            purpose: args.purpose.clone(),
            epsilon: release.status.epsilon_micro as f64 / 1e6,
            receipt: Some(hex::encode(release.receipt.0.as_bytes())),
            receipt_verified: release.receipt_verified,
            listings: listings.clone(),
        };
        let bytes = cohortex_client::arrow_release::to_ipc_stream(
            &release.answer,
            &plan,
            &schema,
            &provenance,
        )
        .context("encoding the release as Arrow")?;
        return crate::output::write_arrow(&bytes);
    }
    if args.format == crate::output::Format::Json {
        let (columns, rows) = release.answer.with_error_columns();
        let output = serde_json::json!({
            "columns": columns,
            "rows": rows,
            "participants": release.answer.participants,
            "epsilon_spent": epsilon_spent,
            "steps": steps,
            "suppressed_cells": release.status.suppressed.iter().filter(|&&hidden| hidden).count(),
            "withheld_values": release.answer.rows.iter().flatten().filter(|cell| matches!(cell, Cell::Suppressed)).count(),
            "receipt": {
                "id": hex::encode(release.receipt.0.as_bytes()),
                "verified": release.receipt_verified,
            },
            "state_dir": dir.display().to_string(),
        });
        println!("{output}");
    } else {
        print_answer(&release.answer);
        println!();
        if steps > 1 {
            println!(
                "fitted by {steps} Newton–Raphson steps, each its own release and receipt at ε = {}; ε spent in all: {epsilon_spent}",
                release.status.epsilon_micro as f64 / 1e6
            );
        }
        println!(
            "released with ε = {} differential privacy per listing: noise added under encryption by committee members {:?}",
            release.status.epsilon_micro as f64 / 1e6,
            release.status.noise_members
        );
        println!(
            "receipt {} — inclusion in the ledger {}",
            hex::encode(release.receipt.0.as_bytes()),
            if release.receipt_verified {
                "verified"
            } else {
                "NOT verified"
            }
        );
        println!("state directory: {}", dir.display());
        println!(
            "audit it with: cohortex ledger verify {}",
            ledger_path.display()
        );
    }
    Ok(())
}

/// Each listing's ε budget left on the ledger, micro-ε.
fn epsilon_left(cluster: &Cluster, listings: &[String]) -> anyhow::Result<Vec<(String, u64)>> {
    let ledger = cluster
        .coordinator
        .ledger()
        .lock()
        .map_err(|_| anyhow::anyhow!("ledger lock poisoned"))?;
    Ok(listings
        .iter()
        .map(|id| {
            let left = ledger
                .state()
                .listing(&market::ListingId::new(id.clone()))
                .map_or(0, |listing| listing.epsilon_remaining_micro());
            (id.clone(), left)
        })
        .collect())
}

/// The answer as a table; each released number is followed by its 95 % interval, which
/// holds both the sampling error and the DP noise.
pub(crate) fn print_answer(answer: &QueryAnswer) {
    use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
    let mut table = Table::new();
    let barred = answer.error_bar_columns();
    let mut header = Vec::new();
    for (index, name) in answer.columns.iter().enumerate() {
        header.push(name.clone());
        if barred[index] {
            header.push("95 % interval".to_string());
        }
    }
    table
        .load_preset(presets::UTF8_HORIZONTAL_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    for (row_index, row) in answer.rows.iter().enumerate() {
        let mut cells = Vec::new();
        for (index, cell) in row.iter().enumerate() {
            let text = comfy_table::Cell::new(cell.to_string());
            cells.push(match cell {
                Cell::Text(_) => text,
                _ => text.set_alignment(CellAlignment::Right),
            });
            if barred[index] {
                let interval = answer.error(row_index, index).map_or_else(
                    || "—".to_string(),
                    |bar| {
                        format!(
                            "[{}, {}]",
                            Cell::Number(bar.ci_low),
                            Cell::Number(bar.ci_high)
                        )
                    },
                );
                cells.push(comfy_table::Cell::new(interval).set_alignment(CellAlignment::Right));
            }
        }
        table.add_row(cells);
    }
    for line in table.to_string().lines() {
        println!("  {line}");
    }
    if !answer.errors.is_empty() {
        println!("  (95 % intervals hold both the sampling error and the DP noise; --format json adds _se, _noise_se, _ci_low and _ci_high)");
    }
}

/// One of the demo's queries.
struct DemoQuery {
    title: &'static str,
    sql: &'static str,
}

const DEMO_QUERIES: [DemoQuery; 3] = [
    DemoQuery {
        // No STDDEV here: one patient can move a sum of squares by (20 − 3)² %² under the
        // declared bounds, so at ε = 2 the noise on a variance per age band (a few hundred
        // patients) is larger than the variance itself.
        title: "HbA1c (%) among type 2 diabetics, by age band",
        sql: "SELECT BIN(age), COUNT(*), AVG(hba1c) FROM patients \
              WHERE has_condition('E11') OR has_condition('44054006') GROUP BY BIN(age)",
    },
    DemoQuery {
        title: "Systolic blood pressure against BMI (all adults)",
        sql: "SELECT COUNT(*), CORR(systolic_bp, bmi), REGR_SLOPE(systolic_bp, bmi), \
              REGR_INTERCEPT(systolic_bp, bmi) FROM patients",
    },
    DemoQuery {
        title: "LDL cholesterol (mg/dL) of patients on a statin, by sex",
        sql: "SELECT sex, COUNT(ldl), AVG(ldl) FROM patients WHERE has_medication('83367') \
              OR has_medication('36567') OR has_medication('301542') GROUP BY sex",
    },
];

/// Runs `cohortex demo`.
pub async fn demo(
    patients: u64,
    state_dir: Option<PathBuf>,
    keep_running: bool,
) -> anyhow::Result<()> {
    let mut timings: Vec<(String, Duration)> = Vec::new();
    let dir = new_state_dir(state_dir, "demo")?;
    println!("Cohortex demo: a federated query market on this machine\n");

    // 1. Population.
    let started = Instant::now();
    let nodes = 3usize;
    let per_node = patients / nodes as u64;
    let bar = ProgressBar::new(per_node * nodes as u64);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} generating patients' FHIR records {bar:30} {pos}/{len}",
    ) {
        bar.set_style(style);
    }
    let hospitals = [
        "st-mary-diabetes-clinic",
        "northside-cardiology",
        "patient-cooperative",
    ];
    let mut setups = Vec::new();
    let (mut paying, mut donating, mut declining) = (0u64, 0u64, 0u64);
    let mut paying_accounts: Vec<AccountId> = Vec::new();
    // Patients who set their own privacy limit in the consent, with the listing it is on.
    let mut limited: Vec<(AccountId, ListingId)> = Vec::new();
    // A paid patient with a personal limit: `--keep-running` hands their key to notebooks.
    let mut notebook_patient: Option<SigningKey> = None;
    for (node, listing) in hospitals.iter().enumerate() {
        let mut vault = Vault::new(Schema::fhir());
        let mut enrolments = Vec::new();
        for offset in 0..per_node {
            let index = node as u64 * per_node + offset;
            let patient = synth::patient(7, index);
            let record = bundle_to_record(
                &patient.to_bundle().to_string(),
                &REFERENCE_DATE,
                &ProvenancePolicy::default(),
            )
            .map_err(|error| anyhow::anyhow!("synthetic bundle {index}: {error}"))?;
            vault.upsert(record).context("filling a vault")?;
            let consent = match index % 20 {
                0..=2 => None,
                3..=6 => Some(Payout::Donate),
                _ => Some(Payout::ToPatient),
            };
            match consent {
                None => declining += 1,
                Some(Payout::Donate) => donating += 1,
                Some(Payout::ToPatient) => {
                    paying += 1;
                    paying_accounts.push(AccountId::of(&patient.key));
                }
            }
            // One paid patient in twenty allows only two of the demo's queries on their record.
            let epsilon_limit_micro = (index % 20 == 7).then_some(DEMO_PERSONAL_LIMIT_MICRO);
            if epsilon_limit_micro.is_some() {
                limited.push((AccountId::of(&patient.key), ListingId::new(*listing)));
                if notebook_patient.is_none() && node == 0 {
                    notebook_patient = Some(patient.key.clone());
                }
            }
            enrolments.push(PatientEnrolment {
                key: patient.key,
                consent,
                epsilon_limit_micro,
            });
            bar.inc(1);
        }
        setups.push(NodeSetup {
            listing: (*listing).to_string(),
            vault,
            patients: enrolments,
            price_per_query: PRICE_PER_PATIENT * per_node,
            // The patient cooperative donates every share to a research fund.
            donation: node == 2,
            min_cohort_size: 10,
            fault: None,
        });
    }
    bar.finish_and_clear();
    timings.push(("generate and ingest FHIR records".into(), started.elapsed()));
    println!(
        "Population: {} synthetic patients in 3 vaults ({} consent and are paid, {} consent and donate, {} do not consent).",
        per_node * nodes as u64, paying, donating, declining
    );
    println!(
        "{} of the paid patients set a personal privacy limit of ε = {} in their consent: enough for two of the queries below, so their records sit out the third.",
        limited.len(),
        DEMO_PERSONAL_LIMIT_MICRO as f64 / 1e6
    );

    // 2. Cluster.
    let started = Instant::now();
    let bar = spinner("starting the market and 3 compute nodes", false);
    let options = ClusterOptions {
        purpose: Purpose::AcademicResearch,
        threshold: 2,
        epsilon_budget_micro: DEMO_BUDGET_MICRO,
        max_epsilon_per_order_micro: DEMO_EPSILON_MICRO,
        extra_purposes: Vec::new(),
        nodes_read_market_at: None,
        authority: None,
        ledger_committee_threshold: None,
        key_ceremony: true,
    };
    let cluster = Cluster::start(&dir, setups, &options, |step| {
        bar.set_message(step.to_string())
    })
    .await?;
    bar.finish_and_clear();
    timings.push((
        "start market, nodes; onboard; key ceremony; nodes replay ledger".into(),
        started.elapsed(),
    ));
    println!("Market and ledger at {}; nodes:", cluster.market_endpoint);
    for node in &cluster.nodes {
        println!("  {:<26} {}", node.listing, node.endpoint);
    }
    println!("Key committee: 2 of 3 nodes must cooperate to release a result; none can alone.\n");

    let started = Instant::now();
    let table = decryption_table(false)?;
    timings.push((
        "load the buyer's decryption table".into(),
        started.elapsed(),
    ));
    let budget = 10 * PRICE_PER_PATIENT * per_node * nodes as u64;
    let buyer = cluster.new_buyer(budget).await?;
    let listings: Vec<String> = cluster
        .nodes
        .iter()
        .map(|node| node.listing.clone())
        .collect();

    for (number, query) in DEMO_QUERIES.iter().enumerate() {
        let started = Instant::now();
        let bar = spinner(&format!("query {}: {}", number + 1, query.title), false);
        let release: Release = buyer
            .query(
                query.sql,
                &listings,
                Purpose::AcademicResearch,
                DEMO_EPSILON_MICRO,
                &table,
                &cluster.ledger_key,
            )
            .await
            .with_context(|| format!("query {}", number + 1))?;
        bar.finish_and_clear();
        timings.push((
            format!("query {}: order → release → receipt", number + 1),
            started.elapsed(),
        ));
        println!("Query {}: {}", number + 1, query.title);
        println!(
            "  {}",
            query.sql.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        print_answer(&release.answer);
        let budgets = epsilon_left(&cluster, &listings)?;
        println!(
            "  Privacy: ε = {} spent on each listing (noise added under encryption by committee members {:?}); budget left: {}.",
            release.status.epsilon_micro as f64 / 1e6,
            release.status.noise_members,
            budgets
                .iter()
                .map(|(listing, left)| format!("{listing} {:.1} of {:.1}", *left as f64 / 1e6, DEMO_BUDGET_MICRO as f64 / 1e6))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let exhausted = {
            let ledger = cluster
                .coordinator
                .ledger()
                .lock()
                .map_err(|_| anyhow::anyhow!("ledger lock poisoned"))?;
            let state = ledger.state();
            limited
                .iter()
                .filter(|(account, _)| {
                    state.person_spent_micro(account) + DEMO_EPSILON_MICRO
                        > DEMO_PERSONAL_LIMIT_MICRO
                })
                .count()
        };
        if exhausted > 0 {
            println!(
                "  {exhausted} patients have now used their whole personal limit; the nodes leave them out of later queries."
            );
        }
        println!(
            "  About {} consenting patients took part (a noisy count); receipt {}…, inclusion in the ledger {}\n",
            release.answer.participants,
            &hex::encode(release.receipt.0.as_bytes())[..16],
            if release.receipt_verified {
                "verified ✓"
            } else {
                "NOT verified ✗"
            }
        );
    }

    // 3. Money.
    let (spent, paid, donated) = {
        let ledger = cluster
            .coordinator
            .ledger()
            .lock()
            .map_err(|_| anyhow::anyhow!("ledger lock poisoned"))?;
        let state = ledger.state();
        let paid: u64 = paying_accounts
            .iter()
            .map(|account| state.balance(account))
            .sum();
        (
            budget - state.balance(&buyer.account()),
            paid,
            state.balance(&cluster.fund),
        )
    };
    println!(
        "Settlement: the buyer paid {spent} credits for {} queries ({} credits per listing per query, \
         split evenly among its participants); {paid} went to patients who chose payment and \
         {donated} to the research fund (donating patients, and every share of the patient cooperative's listing).",
        DEMO_QUERIES.len(),
        PRICE_PER_PATIENT * per_node
    );
    if keep_running {
        // Every link is mutual TLS: give grpcurl the authority and a client certificate.
        let tls_dir = cluster.dir.join("tls");
        std::fs::create_dir_all(&tls_dir)
            .with_context(|| format!("creating {}", tls_dir.display()))?;
        let issued = cluster
            .authority()
            .issue("grpcurl", &["127.0.0.1".to_string()])
            .context("issuing grpcurl's certificate")?;
        for (name, text, mode) in [
            ("ca.crt", cluster.authority().certificate_pem(), 0o644),
            ("client.crt", issued.certificate_pem.as_str(), 0o644),
            ("client.key", issued.key_pem.as_str(), 0o600),
        ] {
            let path = tls_dir.join(name);
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(mode);
            }
            #[cfg(not(unix))]
            let _ = mode;
            let mut file = options
                .open(&path)
                .with_context(|| format!("writing {}", path.display()))?;
            // The mode applies at creation only; a file left by an earlier run gets it too.
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(std::fs::Permissions::from_mode(mode))
                    .with_context(|| format!("setting the mode of {}", path.display()))?;
            }
            std::io::Write::write_all(&mut file, text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        let client_dir = write_client_files(&cluster, &tls_dir, notebook_patient.as_ref()).await?;
        let address = cluster.market_endpoint.trim_start_matches("https://");
        let flags = format!(
            "-cacert {0}/ca.crt -cert {0}/client.crt -key {0}/client.key",
            tls_dir.display()
        );
        println!("\nThe market and nodes keep serving (mutual TLS); try, in another terminal:");
        println!("  grpcurl {flags} {address} list");
        println!("  grpcurl {flags} {address} grpc.health.v1.Health/Check");
        println!(
            "Python clients and notebooks (notebooks/) find a credited buyer, a patient and the \
             market's public.toml in {}: COHORTEX_CLIENT_DIR={} jupyter lab notebooks/",
            client_dir.display(),
            client_dir.display()
        );
        // Scripts wait for this file before they connect.
        std::fs::write(client_dir.join("ready"), b"serving\n")
            .with_context(|| format!("writing {}", client_dir.join("ready").display()))?;
        println!("Press Ctrl-C to stop and audit the ledger.");
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
    }
    let started = Instant::now();
    let ledger_path = cluster.ledger_path();
    cluster.shutdown();
    let audit = market::audit_database(&ledger_path)
        .map_err(|error| anyhow::anyhow!("ledger audit: {error}"))?;
    timings.push(("audit the whole ledger".into(), started.elapsed()));
    println!(
        "Ledger audit: {} blocks, {} transactions, every signature, hash link and Merkle root verified.\n",
        audit.blocks, audit.transactions
    );
    println!("Timings");
    for (step, elapsed) in &timings {
        println!("  {:<62} {:>8.2} s", step, elapsed.as_secs_f64());
    }
    println!("\nState directory: {}", dir.display());
    println!(
        "Audit it yourself: cohortex ledger verify {}",
        ledger_path.display()
    );
    Ok(())
}

/// For `demo --keep-running`: `STATE/client/` with the market's `public.toml`, a registered
/// buyer's key holding credits, a consenting patient's key and the TLS client files, so that
/// Python clients and the notebooks can connect.
async fn write_client_files(
    cluster: &Cluster,
    tls_dir: &Path,
    patient: Option<&SigningKey>,
) -> anyhow::Result<PathBuf> {
    let dir = cluster.dir.join("client");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The same file, written by the same code, as `cohortex market serve` writes.
    cluster
        .public()
        .write(&dir.join(cohortex_client::public::PUBLIC_FILE))?;
    let buyer_path = dir.join("buyer.key");
    for stale in [buyer_path.clone(), buyer_path.with_extension("pub")] {
        if stale.exists() {
            std::fs::remove_file(&stale)
                .with_context(|| format!("replacing {}", stale.display()))?;
        }
    }
    cohortex_client::keys::generate(&buyer_path)?;
    let buyer_key = cohortex_client::keys::read(&buyer_path, "buyer.key")?;
    let buyer = cohortex_client::Buyer::new(
        buyer_key,
        cluster.chain_id,
        cluster.market_endpoint.clone(),
        0,
    )
    .with_tls(Some(cluster.client_tls().clone()));
    buyer
        .register()
        .await
        .context("registering the notebooks' buyer")?;
    cluster
        .deposit(buyer.account(), 1_000_000)
        .await
        .context("crediting the notebooks' buyer")?;
    if let Some(patient) = patient {
        let path = dir.join("patient.key");
        let mut file = cohortex_types::private_file::private_options()
            .create(true)
            .truncate(true)
            .open(&path)
            .with_context(|| format!("writing {}", path.display()))?;
        std::io::Write::write_all(&mut file, hex::encode(patient.to_bytes()).as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    for name in ["ca.crt", "client.crt", "client.key"] {
        let from = tls_dir.join(name);
        let to = dir.join(name);
        let _ = std::fs::remove_file(&to);
        std::os::unix::fs::symlink(&from, &to)
            .with_context(|| format!("linking {}", to.display()))?;
    }
    Ok(dir)
}
