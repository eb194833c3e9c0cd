//! One federation at scale, all in this process (issue 23): N nodes × P patients each, a query
//! of `COUNT(*)` and the mean and variance of C columns (1 + 2C statistics), ε = 1.
//!
//! Run: `cargo bench --workspace --bench scale -- --json` (12 nodes × 50,000 patients × 12
//! columns: 25 statistics). Options: `--nodes N`, `--patients P` (per node), `--columns C`,
//! `--prio3`, `--epsilon-micro E` (default 10⁶: ε = 1), and `--model logistic` (a logistic regression of a boolean outcome on the C
//! columns, fitted by 6 Newton steps, each its own release: issue 25) or
//! `--model kaplan-meier` (Kaplan–Meier over 50 day bins × 2 arms, with the log-rank test).
//! It prints, as one JSON object with `--json` (a table otherwise):
//! - the set-up, per step (creating the ledger, starting the nodes, enrolling the patients
//!   and their consents, the key ceremony, the nodes replaying and verifying the ledger);
//! - order → receipt as the buyer sees it, and the coordinator's time per phase
//!   (contributions, verifying them, staging participants, noise, key switching, co-signing,
//!   recording the receipt);
//! - one node's evaluation and its encryption and proving, timed apart on its own vault;
//! - peak resident memory of the process.
//!
//! With `--prio3` it also computes the same statistics over the same records with Prio3
//! (`prio` crate, Prio3SumVec, two aggregators), after the Cohortex run and in the same process,
//! and prints both and their ratio (docs/services.md, "Side by side with Prio3", says what
//! each trusts). Every record is one Prio3 report: `[1, x₁, x₁², …, x_C, x_C²]` in tenths for a
//! patient aged 40 or more and zeros otherwise, each entry at most 1000² (20 bits), so the
//! aggregate is the count and the sums a mean and variance need. The result is checked against
//! the plaintext sums.
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

/// What the bench asks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Model {
    /// `COUNT(*)`, and the mean and variance of each column.
    Aggregates,
    /// `LOGISTIC(stroke ~ x1 + … + xC)`, fitted by its Newton steps.
    Logistic,
    /// `KAPLAN_MEIER(days, died) … GROUP BY arm`: 50 day bins × 2 arms.
    KaplanMeier,
}

impl Model {
    fn name(self) -> &'static str {
        match self {
            Model::Aggregates => "aggregates",
            Model::Logistic => "logistic",
            Model::KaplanMeier => "kaplan_meier",
        }
    }
}

/// Newton steps of the logistic bench.
const NEWTON_STEPS: usize = 6;

struct Config {
    model: Model,
    nodes: usize,
    patients: u64,
    columns: usize,
    epsilon_micro: u64,
    json: bool,
    smoke: bool,
    prio3: bool,
}

/// SplitMix64's finaliser: a well-mixed 64-bit value from a counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Record `index` of the population: its age and its C column values in tenths (0 to 1000),
/// each column drawn apart (a regression over them must not find them collinear).
fn record(index: u64, columns: usize) -> (u64, Vec<u64>) {
    let age = 18 + (index * 7_919) % 80;
    let tenths = (0..columns as u64)
        .map(|column| mix(index * 64 + column) % 1_000)
        .collect();
    (age, tenths)
}

/// Record `index`'s outcomes, from the same deterministic stream: a stroke with
/// logit −2 + 0.03·(age − 60) + 0.02·(x₁ − 50), the arm (a or b, alternating), and days to
/// death (hazard 0.04 a day in arm a, 0.025 in b), censored at day 50.
fn outcomes(index: u64, age: u64, tenths: &[u64]) -> (bool, i64, bool, &'static str) {
    let uniform =
        |salt: u64| ((index.wrapping_mul(2_654_435_761) ^ salt) % 100_003) as f64 / 100_003.0;
    let x1 = tenths.first().map_or(50.0, |&x| x as f64 / 10.0);
    let z = -2.0 + 0.03 * (age as f64 - 60.0) + 0.02 * (x1 - 50.0);
    let stroke = uniform(17) < 1.0 / (1.0 + (-z).exp());
    let arm = if index % 2 == 0 { "a" } else { "b" };
    let hazard = if arm == "a" { 0.04 } else { 0.025 };
    let time = -(uniform(91).max(1e-9)).ln() / hazard;
    let died = time < 50.0;
    (stroke, time.min(49.0).floor() as i64, died, arm)
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
         key_column = \"patient_key\"\nmax_groups = 128\n\n[[columns]]\nname = \"age\"\ntype = \"integer\"\n\
         bounds = [0, 120]\n",
    );
    for column in 1..=columns {
        text.push_str(&format!(
            "\n[[columns]]\nname = \"x{column}\"\ntype = \"float\"\nbounds = [0.0, 100.0]\n\
             decimals = 1\n"
        ));
    }
    let edges: Vec<String> = (0..=50).map(|day| day.to_string()).collect();
    text.push_str(&format!(
        "\n[[columns]]\nname = \"stroke\"\ntype = \"bool\"\n\
         \n[[columns]]\nname = \"days\"\ntype = \"integer\"\nbounds = [0, 50]\nbins = [{}]\n\
         \n[[columns]]\nname = \"died\"\ntype = \"bool\"\n\
         \n[[columns]]\nname = \"arm\"\ntype = \"category\"\ncategories = [\"a\", \"b\"]\n",
        edges.join(", ")
    ));
    text
}

fn sql(model: Model, columns: usize) -> String {
    match model {
        Model::Aggregates => {
            let statistics: Vec<String> = (1..=columns)
                .map(|column| format!("AVG(x{column}), VAR_SAMP(x{column})"))
                .collect();
            format!(
                "SELECT COUNT(*), {} FROM patients WHERE age >= 40",
                statistics.join(", ")
            )
        }
        Model::Logistic => {
            let covariates: Vec<String> =
                (1..=columns).map(|column| format!("x{column}")).collect();
            format!(
                "SELECT LOGISTIC(stroke ~ {}) FROM patients",
                covariates.join(" + ")
            )
        }
        Model::KaplanMeier => {
            "SELECT KAPLAN_MEIER(days, died) FROM patients GROUP BY arm".to_string()
        }
    }
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
            let (age, tenths) = record(index, config.columns);
            let mut values = vec![Value::Integer(age as i64)];
            values.extend(
                tenths
                    .iter()
                    .map(|&tenths| Value::Float(tenths as f64 / 10.0)),
            );
            let (stroke, days, died, arm) = outcomes(index, age, &tenths);
            values.extend([
                Value::Bool(stroke),
                Value::Integer(days),
                Value::Bool(died),
                Value::Category(arm.to_string()),
            ]);
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
    let plan = compile(&sql(config.model, config.columns), schema).expect("the query compiles");
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

/// What the Prio3 run measured.
struct Prio3Run {
    /// Wall time of the whole run: every client's sharding, both aggregators' verification
    /// and aggregation, and the collector's unsharding.
    wall: Duration,
    /// CPU time the clients spent sharding and proving (summed over the worker threads).
    clients_cpu: Duration,
    /// CPU time both aggregators spent verifying and aggregating.
    aggregators_cpu: Duration,
    reports: u64,
}

/// The aggregate Prio3 must reach, computed directly: `[count, Σx₁, Σx₁², …]` in tenths over
/// the patients aged 40 or more.
fn plaintext_sums(config: &Config) -> Vec<u128> {
    let mut sums = vec![0u128; 1 + 2 * config.columns];
    for index in 0..config.nodes as u64 * config.patients {
        let (age, tenths) = record(index, config.columns);
        if age >= 40 {
            sums[0] += 1;
            for (column, &value) in tenths.iter().enumerate() {
                sums[1 + 2 * column] += u128::from(value);
                sums[2 + 2 * column] += u128::from(value * value);
            }
        }
    }
    sums
}

/// Prio3SumVec with two aggregators over every record, on as many threads as there are cores;
/// returns the unsharded aggregate and the timings.
fn prio3_run(config: &Config) -> anyhow::Result<(Vec<u128>, Prio3Run)> {
    use prio::vdaf::prio3::Prio3;
    use prio::vdaf::{Aggregatable, Aggregator, Client, Collector, VerifyTransition};
    use rand::RngCore;

    const CONTEXT: &[u8] = b"cohortex scale bench";
    let length = 1 + 2 * config.columns;
    // Chunk length near the square root of the number of bits proved, as the VDAF draft
    // recommends.
    let bits = 20 * length;
    let chunk = ((bits as f64).sqrt().round() as usize).max(1);
    let vdaf = Prio3::new_sum_vec(2, 1_000_000, length, chunk)?;
    let mut verify_key = [0u8; 32];
    OsRng.fill_bytes(&mut verify_key);
    let reports = config.nodes as u64 * config.patients;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let started = Instant::now();
    let parts = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|worker| {
                let vdaf = &vdaf;
                let verify_key = &verify_key;
                scope.spawn(move || -> anyhow::Result<_> {
                    let mut shares = [vdaf.aggregate_init(&()), vdaf.aggregate_init(&())];
                    let (mut clients, mut aggregators) = (Duration::ZERO, Duration::ZERO);
                    let mut index = worker;
                    while index < reports {
                        let (age, tenths) = record(index, config.columns);
                        let mut measurement = vec![0u128; length];
                        if age >= 40 {
                            measurement[0] = 1;
                            for (column, &value) in tenths.iter().enumerate() {
                                measurement[1 + 2 * column] = u128::from(value);
                                measurement[2 + 2 * column] = u128::from(value * value);
                            }
                        }
                        let mut nonce = [0u8; 16];
                        OsRng.fill_bytes(&mut nonce);
                        let at = Instant::now();
                        let (public_share, input_shares) =
                            vdaf.shard(CONTEXT, &measurement, &nonce)?;
                        let sharded = Instant::now();
                        clients += sharded - at;
                        let mut states = Vec::with_capacity(2);
                        let mut verifier_shares = Vec::with_capacity(2);
                        for (aggregator, input_share) in input_shares.iter().enumerate() {
                            let (state, share) = vdaf.verify_init(
                                verify_key,
                                CONTEXT,
                                aggregator,
                                &(),
                                &nonce,
                                &public_share,
                                input_share,
                            )?;
                            states.push(state);
                            verifier_shares.push(share);
                        }
                        let message =
                            vdaf.verifier_shares_to_message(CONTEXT, &(), verifier_shares)?;
                        for (aggregator, state) in states.into_iter().enumerate() {
                            match vdaf.verify_next(CONTEXT, state, message.clone())? {
                                VerifyTransition::Finish(output) => {
                                    shares[aggregator].accumulate(&output)?
                                }
                                VerifyTransition::Continue(..) => {
                                    anyhow::bail!("Prio3 verification took a second round")
                                }
                            }
                        }
                        aggregators += sharded.elapsed();
                        index += threads;
                    }
                    Ok((shares, clients, aggregators))
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .map_err(|_| anyhow::anyhow!("a Prio3 worker panicked"))?
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let mut totals = [vdaf.aggregate_init(&()), vdaf.aggregate_init(&())];
    let (mut clients_cpu, mut aggregators_cpu) = (Duration::ZERO, Duration::ZERO);
    for (shares, clients, aggregators) in parts {
        for (total, share) in totals.iter_mut().zip(shares.iter()) {
            total.merge(share)?;
        }
        clients_cpu += clients;
        aggregators_cpu += aggregators;
    }
    let result = vdaf.unshard(&(), totals, reports as usize)?;
    Ok((
        result,
        Prio3Run {
            wall: started.elapsed(),
            clients_cpu,
            aggregators_cpu,
            reports,
        },
    ))
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
    let sql = sql(config.model, config.columns);
    let mut newton_steps: Vec<Duration> = Vec::new();
    let (order, status, answer, order_to_receipt, buyer_steps) = if config.model == Model::Logistic
    {
        // The fit: every Newton step is its own order, release and receipt at ε/steps.
        let marks = std::sync::Mutex::new(Vec::new());
        let started = Instant::now();
        let mut releases = buyer
            .fit(
                &sql,
                &listings,
                Purpose::AcademicResearch,
                config.epsilon_micro,
                NEWTON_STEPS,
                &table,
                &cluster.ledger_key,
                |_, _| {
                    if let Ok(mut marks) = marks.lock() {
                        marks.push(Instant::now());
                    }
                },
            )
            .await?;
        let fitted = started.elapsed();
        let mut marks = marks
            .into_inner()
            .map_err(|_| anyhow::anyhow!("step clock poisoned"))?;
        marks.push(started + fitted);
        newton_steps = marks.windows(2).map(|pair| pair[1] - pair[0]).collect();
        anyhow::ensure!(
            releases.iter().all(|release| release.receipt_verified),
            "a step's receipt did not verify"
        );
        let last = releases
            .pop()
            .ok_or_else(|| anyhow::anyhow!("the fit released nothing"))?;
        (
            last.order,
            last.status,
            last.answer,
            fitted,
            vec![("fit by Newton steps".to_string(), fitted)],
        )
    } else {
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
        (order, status, answer, order_to_receipt, buyer_steps)
    };
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

    // Prio3 over the same records, once the federation has let go of its memory.
    let prio3 = if config.prio3 {
        let (aggregate, run) = prio3_run(&config)?;
        anyhow::ensure!(
            aggregate == plaintext_sums(&config),
            "Prio3's aggregate is not the plaintext sums"
        );
        Some(run)
    } else {
        None
    };

    let statistics = compile(&sql, &schema)?.statistics.len();
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
            "model": config.model.name(),
            "newton_steps_s": newton_steps.iter().map(|step| seconds(*step)).collect::<Vec<_>>(),
            "order_state": status.message,
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
            "prio3": prio3.as_ref().map(|run| serde_json::json!({
                "reports": run.reports,
                "aggregators": 2,
                "wall_s": seconds(run.wall),
                "clients_shard_cpu_s": seconds(run.clients_cpu),
                "aggregators_cpu_s": seconds(run.aggregators_cpu),
                "wall_over_cohortex_order_to_receipt":
                    (run.wall.as_secs_f64() / order_to_receipt.as_secs_f64() * 100.0).round() / 100.0,
            })),
        });
        println!("{report}");
    } else {
        println!(
            "{}: {} nodes × {} patients, {statistics} statistics, ε = {}",
            config.model.name(),
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
        if let Some(run) = &prio3 {
            println!(
                "Prio3SumVec, 2 aggregators, {} reports: {:.3} s wall (clients sharding {:.3} \
                 CPU-s, aggregators {:.3} CPU-s); {:.2}× Cohortex's order → receipt",
                run.reports,
                seconds(run.wall),
                seconds(run.clients_cpu),
                seconds(run.aggregators_cpu),
                run.wall.as_secs_f64() / order_to_receipt.as_secs_f64()
            );
        }
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
    let model = match args
        .iter()
        .position(|arg| arg == "--model")
        .and_then(|position| args.get(position + 1))
        .map(String::as_str)
    {
        None | Some("aggregates") => Model::Aggregates,
        Some("logistic") => Model::Logistic,
        Some("kaplan-meier") => Model::KaplanMeier,
        Some(other) => {
            eprintln!("--model takes aggregates, logistic or kaplan-meier, not `{other}`");
            std::process::exit(2);
        }
    };
    let config = if smoke {
        Config {
            model: Model::Aggregates,
            nodes: 3,
            patients: 200,
            columns: 2,
            // Large enough that every noise draw is zero: the count is exact.
            epsilon_micro: 100_000_000_000,
            json: args.iter().any(|arg| arg == "--json"),
            smoke,
            // The smoke pass checks Prio3's aggregate against the plaintext sums too.
            prio3: true,
        }
    } else {
        Config {
            model,
            nodes: arg(&args, "--nodes").unwrap_or(12) as usize,
            patients: arg(&args, "--patients").unwrap_or(50_000),
            columns: arg(&args, "--columns").unwrap_or(12) as usize,
            epsilon_micro: arg(&args, "--epsilon-micro").unwrap_or(1_000_000),
            json: args.iter().any(|arg| arg == "--json"),
            smoke,
            // Prio3 answers the aggregates only.
            prio3: model == Model::Aggregates && args.iter().any(|arg| arg == "--prio3"),
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
