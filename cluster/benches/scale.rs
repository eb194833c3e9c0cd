//! One federation at scale, all in this process (issue 23): N nodes × P patients each, a query
//! of `COUNT(*)` and the mean and variance of C columns (1 + 2C statistics), ε = 1.
//!
//! Run: `cargo bench --workspace --bench scale -- --json` (12 nodes × 50,000 patients × 12
//! columns: 25 statistics). Options: `--nodes N`, `--patients P` (per node), `--columns C`.
//! It prints, as one JSON object with `--json` (a table otherwise):
//! - the set-up, per step (creating the ledger, starting the nodes, enrolling the patients
//!   and their consents, the key ceremony, the nodes replaying and verifying the ledger);
//! - order → receipt as the buyer sees it, and the coordinator's time per phase
//!   (contributions, verifying them, staging participants, noise, key switching, co-signing,
//!   recording the receipt);
//! - one node's evaluation and its encryption and proving, timed apart on its own vault;
//! - peak resident memory of the process.
//!
//! Without `--bench` on the command line (as under `cargo test --all-targets`) it runs a
//! 3 × 200 smoke pass at a large ε and checks the released count against the plaintext one.

use std::time::{Duration, Instant};

use cohortex_cluster::{Cluster, ClusterOptions, NodeSetup, PatientEnrolment, Payout};
use compute_node::record::{PatientRecord, Value};
use compute_node::{build_contribution, compile, evaluate, ConsentBook, Schema, Vault};
use ed25519_dalek::SigningKey;
use market::Purpose;
use rand::rngs::OsRng;
use zk::{BsgsConfig, DecryptionTable, KeyPair, ProofContext};

struct Config {
    nodes: usize,
    patients: u64,
    columns: usize,
    epsilon_micro: u64,
    json: bool,
    smoke: bool,
}

fn arg(args: &[String], name: &str) -> Option<u64> {
    let position = args.iter().position(|arg| arg == name)?;
    let value = args.get(position + 1)?;
    match value.parse() {
        Ok(value) => Some(value),
        Err(_) => {
            eprintln!("{name} takes a whole number, not `{value}`");
            std::process::exit(2);
        }
    }
}

fn manifest(columns: usize) -> String {
    let mut text = String::from(
        "version = 1\ntable = \"patients\"\nid_column = \"patient_id\"\n\
         key_column = \"patient_key\"\n\n[[columns]]\nname = \"age\"\ntype = \"integer\"\n\
         bounds = [0, 120]\n",
    );
    for column in 1..=columns {
        text.push_str(&format!(
            "\n[[columns]]\nname = \"x{column}\"\ntype = \"float\"\nbounds = [0.0, 100.0]\n\
             decimals = 1\n"
        ));
    }
    text
}

fn sql(columns: usize) -> String {
    let statistics: Vec<String> = (1..=columns)
        .map(|column| format!("AVG(x{column}), VAR_SAMP(x{column})"))
        .collect();
    format!(
        "SELECT COUNT(*), {} FROM patients WHERE age >= 40",
        statistics.join(", ")
    )
}

/// The node set-ups, and the plaintext count of consenting patients aged 40 or more.
fn population(config: &Config, schema: &Schema) -> (Vec<NodeSetup>, u64) {
    let mut count = 0;
    let mut setups = Vec::new();
    for node in 0..config.nodes {
        let mut vault = Vault::new(schema.clone());
        let mut patients = Vec::with_capacity(config.patients as usize);
        for offset in 0..config.patients {
            let index = node as u64 * config.patients + offset;
            let key = SigningKey::generate(&mut OsRng);
            let age = 18 + (index * 7_919) % 80;
            let mut values = vec![Value::Integer(age as i64)];
            for column in 0..config.columns as u64 {
                values.push(Value::Float(
                    ((index * 104_729 + column * 7_777) % 1_000) as f64 / 10.0,
                ));
            }
            vault
                .upsert(PatientRecord {
                    patient_id: format!("p{index}"),
                    patient_key: Some(hex::encode(key.verifying_key().as_bytes())),
                    source: None,
                    values,
                })
                .expect("the records fit the manifest");
            if age >= 40 {
                count += 1;
            }
            patients.push(PatientEnrolment {
                key,
                consent: Some(Payout::ToPatient),
                epsilon_limit_micro: None,
            });
        }
        setups.push(NodeSetup::paid(
            format!("hospital-{node}"),
            vault,
            patients,
            1_000,
        ));
    }
    (setups, count)
}

/// One node's evaluation, and its encryption and proving, timed apart.
fn node_split(config: &Config, schema: &Schema, vault: &Vault) -> (Duration, Duration) {
    let plan = compile(&sql(config.columns), schema).expect("the query compiles");
    let consents = ConsentBook::everyone(vault, "research");
    let started = Instant::now();
    let statistics = evaluate(&plan, vault, &consents, "research").expect("evaluates");
    let evaluation = started.elapsed();
    let key = KeyPair::generate_with_rng(&mut OsRng).public;
    let context = ProofContext::new(b"bench-order", b"bench-node").expect("short ids");
    let started = Instant::now();
    build_contribution(
        &context,
        &key,
        &plan,
        &statistics,
        vault.capacity(),
        &mut OsRng,
    )
    .expect("proves");
    (evaluation, started.elapsed())
}

/// Peak resident memory of this process, from /proc (Linux), in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn seconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}

async fn run(config: Config) -> anyhow::Result<()> {
    let schema = Schema::from_toml(&manifest(config.columns), "bench manifest")?;
    let started = Instant::now();
    let (setups, plaintext_count) = population(&config, &schema);
    let generated = started.elapsed();
    let (evaluation, proving) = node_split(&config, &schema, &setups[0].vault);

    let dir = tempfile::tempdir()?;
    let options = ClusterOptions {
        purpose: Purpose::AcademicResearch,
        threshold: 2,
        epsilon_budget_micro: 100 * config.epsilon_micro,
        max_epsilon_per_order_micro: config.epsilon_micro,
        extra_purposes: Vec::new(),
        nodes_read_market_at: None,
        authority: None,
        ledger_committee_threshold: None,
        key_ceremony: true,
    };
    let mut steps: Vec<(String, Instant)> = Vec::new();
    let started = Instant::now();
    let cluster = Cluster::start(dir.path(), setups, &options, |step| {
        if !config.json {
            eprintln!("set-up: {step}");
        }
        steps.push((step.to_string(), Instant::now()));
    })
    .await?;
    let setup_total = started.elapsed();
    let ended = Instant::now();
    let setup: Vec<(String, Duration)> = steps
        .iter()
        .enumerate()
        .map(|(index, (step, at))| {
            let next = steps.get(index + 1).map_or(ended, |(_, next)| *next);
            (step.clone(), next - *at)
        })
        .collect();

    let table = DecryptionTable::load_or_build(
        &std::env::temp_dir().join("cohortex-bsgs-cache"),
        BsgsConfig::default(),
    )?;
    let listings: Vec<String> = cluster
        .nodes
        .iter()
        .map(|node| node.listing.clone())
        .collect();
    let buyer = cluster.new_buyer(1_000 * config.nodes as u64).await?;
    // The buyer's steps, timed apart: placing the order (the market checks it and appends it),
    // waiting for the computation, decrypting, and verifying the receipt's inclusion.
    let sql = sql(config.columns);
    let started = Instant::now();
    let order = buyer
        .order(
            &sql,
            &listings,
            Purpose::AcademicResearch,
            config.epsilon_micro,
        )
        .await?;
    let placed = started.elapsed();
    let status = buyer.wait(order).await?;
    let computed = started.elapsed();
    anyhow::ensure!(
        status.state == cohortex_proto::v1::OrderState::Completed as i32,
        "order failed: {}",
        status.message
    );
    let answer = buyer.open(&status, &table)?;
    let opened = started.elapsed();
    let receipt = market::TxId(market::Hash32(
        status
            .receipt_id
            .as_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("completed order without a receipt id"))?,
    ));
    let receipt_verified = buyer.verify_receipt(receipt, &cluster.ledger_key).await?;
    let order_to_receipt = started.elapsed();
    anyhow::ensure!(receipt_verified, "the receipt did not verify");
    let buyer_steps = vec![
        ("place the order".to_string(), placed),
        ("wait for the computation".to_string(), computed - placed),
        ("decrypt and combine".to_string(), opened - computed),
        (
            "verify the receipt's inclusion".to_string(),
            order_to_receipt - opened,
        ),
    ];
    let released_count = answer.rows[0][0].as_f64().unwrap_or(f64::NAN);
    if config.smoke {
        anyhow::ensure!(
            released_count == plaintext_count as f64,
            "released count {released_count}, plaintext {plaintext_count}"
        );
    }
    let phases = cluster
        .coordinator
        .order(&order)?
        .map(|record| record.phases)
        .unwrap_or_default();
    let peak = peak_rss_bytes();
    cluster.shutdown();

    let statistics = 1 + 2 * config.columns;
    if config.json {
        let object = |pairs: &[(String, Duration)]| {
            serde_json::Value::Object(
                pairs
                    .iter()
                    .map(|(name, duration)| (name.clone(), seconds(*duration).into()))
                    .collect(),
            )
        };
        let phases: Vec<(String, Duration)> = phases
            .iter()
            .map(|(name, duration)| ((*name).to_string(), *duration))
            .collect();
        let report = serde_json::json!({
            "bench": "scale",
            "nodes": config.nodes,
            "patients_per_node": config.patients,
            "patients": config.nodes as u64 * config.patients,
            "statistics": statistics,
            "epsilon": config.epsilon_micro as f64 / 1e6,
            "generate_population_s": seconds(generated),
            "setup_s": seconds(setup_total),
            "setup_steps_s": object(&setup),
            "order_to_receipt_s": seconds(order_to_receipt),
            "buyer_steps_s": object(&buyer_steps),
            "order_phases_s": object(&phases),
            "one_node_evaluation_s": seconds(evaluation),
            "one_node_encrypt_and_prove_s": seconds(proving),
            "released_count": released_count,
            "plaintext_count": plaintext_count,
            "peak_rss_bytes": peak,
        });
        println!("{report}");
    } else {
        println!(
            "{} nodes × {} patients, {statistics} statistics, ε = {}",
            config.nodes,
            config.patients,
            config.epsilon_micro as f64 / 1e6
        );
        println!(
            "{:<48} {:>9.3} s",
            "generate the population",
            seconds(generated)
        );
        for (step, duration) in &setup {
            println!("set-up: {step:<40} {:>9.3} s", seconds(*duration));
        }
        println!("{:<48} {:>9.3} s", "set-up in all", seconds(setup_total));
        for (step, duration) in &buyer_steps {
            println!("buyer: {step:<41} {:>9.3} s", seconds(*duration));
        }
        for (phase, duration) in &phases {
            println!("  coordinator: {phase:<35} {:>9.3} s", seconds(*duration));
        }
        println!(
            "{:<48} {:>9.3} s",
            "order → receipt",
            seconds(order_to_receipt)
        );
        println!(
            "{:<48} {:>9.3} s",
            "one node: evaluation",
            seconds(evaluation)
        );
        println!(
            "{:<48} {:>9.3} s",
            "one node: encrypt and prove",
            seconds(proving)
        );
        println!(
            "released count {released_count} (plaintext {plaintext_count}); peak RSS {:.2} GB",
            peak.unwrap_or(0) as f64 / 1e9
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    // Test runners (cargo-nextest) first list a binary's tests: the smoke pass is one.
    if args.iter().any(|arg| arg == "--list") {
        if !args.iter().any(|arg| arg == "--ignored") {
            println!("scale_smoke: test");
        }
        return Ok(());
    }
    let smoke = !args.iter().any(|arg| arg == "--bench");
    let config = if smoke {
        Config {
            nodes: 3,
            patients: 200,
            columns: 2,
            // Large enough that every noise draw is zero: the count is exact.
            epsilon_micro: 100_000_000_000,
            json: args.iter().any(|arg| arg == "--json"),
            smoke,
        }
    } else {
        Config {
            nodes: arg(&args, "--nodes").unwrap_or(12) as usize,
            patients: arg(&args, "--patients").unwrap_or(50_000),
            columns: arg(&args, "--columns").unwrap_or(12) as usize,
            epsilon_micro: 1_000_000,
            json: args.iter().any(|arg| arg == "--json"),
            smoke,
        }
    };
    if config.nodes < 2 || config.patients == 0 || config.columns == 0 {
        anyhow::bail!("--nodes must be at least 2 (a committee of t = 2), --patients and --columns at least 1");
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(config))
}
