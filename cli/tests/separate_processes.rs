//! The market, three compute nodes, patients and a buyer as separate `cohortex` processes
//! talking gRPC over TCP: `market serve`, `node serve`, `patient …`, `buyer …`,
//! `market deposit` and finally `ledger verify`. The buyer's numbers are checked against the
//! plaintext answer computed here from the CSV rows, and the payouts against the ledger's
//! payout rule (docs/ledger.md §4).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Price of each listing per query.
const PRICE: u64 = 90;
const NODES: usize = 3;
/// ε per order. Every release is differentially private: the committee adds discrete Laplace
/// noise of scale b = (1 + k)·Δ/ε to each slot (docs/privacy.md). At this ε, b is below 0.1
/// fixed-point units for every slot of the queries below, so counts come out exact and means
/// within [`MEAN_TOLERANCE`] of the plaintext with overwhelming probability.
const EPSILON: f64 = 100_000.0;
/// How far a noisy mean may be from the plaintext mean (sbp has one decimal).
const MEAN_TOLERANCE: f64 = 0.05;
const PATIENTS_PER_NODE: usize = 3;

/// A child process killed when the test ends, however it ends.
struct Running {
    child: std::process::Child,
    log: PathBuf,
}

impl Running {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn assert_alive(&mut self, what: &str) {
        if let Some(status) = self.child.try_wait().unwrap() {
            panic!("{what} exited ({status}):\n{}", self.log());
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn home() -> PathBuf {
    // Shares the decryption table cache with the other CLI tests.
    std::env::temp_dir().join("cohortex-test-home")
}

fn cohortex(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cohortex"))
        .args(args)
        .env("HOME", home())
        .output()
        .unwrap()
}

fn ok(args: &[&str]) -> String {
    let output = cohortex(args);
    assert!(
        output.status.success(),
        "cohortex {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn spawn(args: &[&str], log: PathBuf) -> Running {
    let file = std::fs::File::create(&log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_cohortex"))
        .args(args)
        .env("HOME", home())
        .env("RUST_LOG", "info")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    Running { child, log }
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn keygen(dir: &Path, name: &str) -> String {
    let key = dir.join(format!("keys/{name}.key"));
    let account = ok(&["keygen", "--out", path(&key)]).trim().to_string();
    assert_eq!(account.len(), 64);
    assert_eq!(
        std::fs::read_to_string(dir.join(format!("keys/{name}.pub")))
            .unwrap()
            .trim(),
        account
    );
    account
}

/// One patient: node, id, key name, age, sex, sbp, and whether they consent.
struct Row {
    node: usize,
    key: String,
    age: i64,
    sex: &'static str,
    sbp: f64,
    consents: bool,
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn market_nodes_patients_and_buyer_as_separate_processes() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path();
    std::fs::write(
        dir.join("manifest.toml"),
        testkit::manifests::blood_pressure_with_keys(),
    )
    .unwrap();

    // Keys: every party makes its own.
    let nodes: Vec<String> = (1..=NODES)
        .map(|node| keygen(dir, &format!("node-{node}")))
        .collect();
    let mut rows = Vec::new();
    for node in 0..NODES {
        let mut csv = String::from("patient_id,patient_key,age,sex,sbp\n");
        for i in 0..PATIENTS_PER_NODE {
            let name = format!("patient-{node}-{i}");
            let account = keygen(dir, &name);
            let age = 35 + ((node * 7 + i * 11) % 40) as i64;
            let sex = if (node + i) % 2 == 0 {
                "female"
            } else {
                "male"
            };
            let sbp = 110.0 + 0.7 * age as f64 + i as f64 * 2.3;
            let sbp = (sbp * 10.0_f64).round() / 10.0;
            csv.push_str(&format!("{name},{account},{age},{sex},{sbp:.1}\n"));
            rows.push(Row {
                node,
                key: name,
                age,
                sex,
                sbp,
                // The last patient of the last node never consents.
                consents: !(node == NODES - 1 && i == PATIENTS_PER_NODE - 1),
            });
        }
        std::fs::write(dir.join(format!("site-{}.csv", node + 1)), csv).unwrap();
    }
    keygen(dir, "buyer");
    // The federation's TLS authority, and a certificate for every party: every link below is
    // mutual TLS.
    ok(&["tls", "ca", "--out-dir", path(&dir.join("tls"))]);
    let tls_dir = dir.join("tls");
    for party in ["market", "node-1", "node-2", "node-3", "patient", "buyer"] {
        let mut args = vec![
            "tls",
            "cert",
            "--ca-dir",
            path(&tls_dir),
            "--name",
            party,
            "--host",
            "127.0.0.1",
            "--out-dir",
            path(&tls_dir),
        ];
        // Each node's certificate is bound to the node's account: the node signs every
        // request it sends over it (to the market and its peers), so the run below works only
        // if the servers accept a bound certificate for its own account.
        if let Some(node) = party.strip_prefix("node-") {
            let index: usize = node.parse().unwrap();
            args.extend(["--account", nodes[index - 1].as_str()]);
        }
        ok(&args);
    }
    let tls = |party: &str| {
        format!(
            "\n[tls]\nca = \"tls/ca.crt\"\ncert = \"tls/{party}.crt\"\nkey = \"tls/{party}.key\"\n"
        )
    };

    // Configs. Every server takes a free port (port 0) and reports its real address: the
    // market in state/market/public.toml, the nodes by publishing their listing.
    let members = nodes
        .iter()
        .map(|account| format!("\"{account}\""))
        .collect::<Vec<_>>()
        .join(", ");
    // The market's port is fixed up front too: it is restarted below, and the nodes keep the
    // endpoint they read from public.toml.
    let market_port = {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        held.local_addr().unwrap().port()
    };
    std::fs::write(
        dir.join("market.toml"),
        format!(
            "version = 1\nstate_dir = \"state/market\"\nlisten = \"127.0.0.1:{market_port}\"\n\
             chain_name = \"separate-processes-test\"\n\n\
             [committee]\nthreshold = 2\nmembers = [{members}]\n{}",
            tls("market")
        ),
    )
    .unwrap();
    // Each node's configuration pins the whole committee, endpoints included, so the nodes'
    // ports are chosen up front (free ports, released just before the nodes bind them).
    let held: Vec<std::net::TcpListener> = (0..NODES)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = held
        .iter()
        .map(|listener| listener.local_addr().unwrap().port())
        .collect();
    drop(held);
    let endpoints = ports
        .iter()
        .map(|port| format!("\"https://127.0.0.1:{port}\""))
        .collect::<Vec<_>>()
        .join(", ");
    for node in 1..=NODES {
        let port = ports[node - 1];
        std::fs::write(
            dir.join(format!("node-{node}.toml")),
            format!(
                "version = 1\nkey_file = \"keys/node-{node}.key\"\nlisten = \"127.0.0.1:{port}\"\n\
                 market = \"state/market/public.toml\"\nvault_dir = \"state/node-{node}/vault\"\n\n\
                 [committee]\nmember = {node}\nthreshold = 2\nmembers = [{members}]\n\
                 endpoints = [{endpoints}]\n\n\
                 [listing]\nid = \"site-{node}\"\nprice_per_query = {PRICE}\n\
                 purposes = [\"academic_research\", \"trial_recruitment\"]\nmin_cohort_size = 1\nepsilon_budget = 1000000.0\nmax_epsilon_per_order = 100000.0\n\
                 compensation = \"payment\"\n\n\
                 [data]\nfile = \"site-{node}.csv\"\nmanifest = \"manifest.toml\"\n{}",
                tls(&format!("node-{node}"))
            ),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("patient.toml"),
        format!(
            "version = 1\nkey_file = \"keys/patient-0-0.key\"\nmarket = \"state/market/public.toml\"\n{}",
            tls("patient")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("buyer.toml"),
        format!(
            "version = 1\nkey_file = \"keys/buyer.key\"\nmarket = \"state/market/public.toml\"\n\
         epsilon_per_query = {EPSILON:.1}\n{}",
            tls("buyer")
        ),
    )
    .unwrap();
    let market_toml = dir.join("market.toml");
    let patient_toml = dir.join("patient.toml");
    let buyer_toml = dir.join("buyer.toml");

    // Terminal 1: the market.
    let mut market = spawn(
        &["market", "serve", "--config", path(&market_toml)],
        dir.join("market.log"),
    );
    wait_for("the market's public.toml", Duration::from_secs(60), || {
        market.assert_alive("the market");
        dir.join("state/market/public.toml").exists()
    });

    // Terminal 2: three nodes.
    let mut node_processes: Vec<Running> = (1..=NODES)
        .map(|node| {
            let config = dir.join(format!("node-{node}.toml"));
            spawn(
                &["node", "serve", "--config", path(&config)],
                dir.join(format!("node-{node}.log")),
            )
        })
        .collect();
    wait_for("three published listings", Duration::from_secs(120), || {
        for (index, node) in node_processes.iter_mut().enumerate() {
            node.assert_alive(&format!("node {}", index + 1));
        }
        let output = cohortex(&["buyer", "listings", "--config", path(&buyer_toml), "--json"]);
        output.status.success()
            && serde_json::from_slice::<serde_json::Value>(&output.stdout)
                .map(|listings| listings.as_array().map_or(0, Vec::len) == NODES)
                .unwrap_or(false)
    });

    // Terminal 3: patients register and consent with their own keys.
    for row in &rows {
        let key = dir.join(format!("keys/{}.key", row.key));
        let base = ["--config", path(&patient_toml), "--key", path(&key)];
        ok(&[&["patient", "register"], &base[..]].concat());
        if row.consents {
            let listing = format!("site-{}", row.node + 1);
            ok(&[
                &["patient", "consent", "--listing", &listing],
                &["--purpose", "academic_research"][..],
                &base[..],
            ]
            .concat());
        }
    }
    let consents = ok(&["patient", "consents", "--config", path(&patient_toml)]);
    assert!(consents.contains("site-1"), "{consents}");
    assert!(consents.contains("active"), "{consents}");

    // The buyer registers and the operator credits it.
    let buyer_account = std::fs::read_to_string(dir.join("keys/buyer.pub"))
        .unwrap()
        .trim()
        .to_string();
    ok(&["buyer", "register", "--config", path(&buyer_toml)]);
    ok(&[
        "market",
        "deposit",
        "--config",
        path(&market_toml),
        "--to",
        &buyer_account,
        "--amount",
        "10000",
    ]);

    let sql = "SELECT sex, COUNT(*), AVG(sbp) FROM patients WHERE age >= 40 GROUP BY sex";
    let query = |sql: &str| -> serde_json::Value {
        let started = Instant::now();
        loop {
            let output = cohortex(&[
                "buyer",
                "query",
                "--config",
                path(&buyer_toml),
                "--purpose",
                "academic_research",
                "--query",
                sql,
                "--json",
            ]);
            let stderr = String::from_utf8_lossy(&output.stderr).to_string();
            if output.status.success() {
                return serde_json::from_slice(&output.stdout).unwrap();
            }
            // The market runs the key ceremony in the background once all nodes published.
            assert!(
                stderr.contains("committee has not been formed")
                    && started.elapsed() < Duration::from_secs(60),
                "buyer query failed:\n{stderr}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    let json = query(sql);
    assert_eq!(
        json["columns"],
        serde_json::json!([
            "sex",
            "count(*)",
            "count(*)_se",
            "count(*)_noise_se",
            "count(*)_ci_low",
            "count(*)_ci_high",
            "avg(sbp)",
            "avg(sbp)_se",
            "avg(sbp)_noise_se",
            "avg(sbp)_ci_low",
            "avg(sbp)_ci_high"
        ])
    );
    assert_eq!(json["receipt"]["verified"], serde_json::json!(true));
    let consenting: Vec<&Row> = rows.iter().filter(|row| row.consents).collect();
    assert_eq!(
        json["participants"].as_u64().unwrap(),
        consenting.len() as u64
    );
    let answer_rows = json["rows"].as_array().unwrap();
    for sex in ["female", "male"] {
        let values: Vec<f64> = consenting
            .iter()
            .filter(|row| row.sex == sex && row.age >= 40)
            .map(|row| row.sbp)
            .collect();
        let row = answer_rows
            .iter()
            .find(|row| row[0] == serde_json::json!(sex))
            .unwrap_or_else(|| panic!("no {sex} row in {json}"));
        assert_eq!(row[1].as_f64().unwrap(), values.len() as f64, "{json}");
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!(
            (row[6].as_f64().unwrap() - mean).abs() < MEAN_TOLERANCE,
            "{} vs {mean}",
            row[6]
        );
    }

    // Payout rule: each listing's price split evenly among its consenting participants.
    let participants_of_node_1 = consenting.iter().filter(|row| row.node == 0).count() as u64;
    let earnings = ok(&["patient", "earnings", "--config", path(&patient_toml)]);
    let paid_line = earnings
        .lines()
        .find(|line| line.trim_start().starts_with("paid"))
        .unwrap();
    assert!(
        paid_line.contains(&format!("{} credits", PRICE / participants_of_node_1)),
        "{earnings}"
    );

    // A revocation holds for the next query.
    let revoking = dir.join("keys/patient-0-1.key");
    ok(&[
        "patient",
        "revoke",
        "--config",
        path(&patient_toml),
        "--key",
        path(&revoking),
        "--listing",
        "site-1",
        "--purpose",
        "academic_research",
    ]);
    let after = query("SELECT COUNT(*) FROM patients");
    assert_eq!(
        after["rows"][0][0].as_f64().unwrap(),
        (consenting.len() - 1) as f64,
        "{after}"
    );

    // A trial recruiter posts a trial for adults of 40 to 75 on site-1 with criteria
    // encrypted under its own TFHE key. Two patients of site-1 consent to trial recruitment
    // and accept: patient-0-0 (35) does not meet the criteria, patient-0-2 (57) does. The
    // recruiter opens only the second contact.
    let recruiter_keys = dir.join("recruiter-keys");
    ok(&["recruiter", "keygen", "--out", path(&recruiter_keys)]);
    ok(&[
        "recruiter",
        "invite",
        "--config",
        path(&buyer_toml),
        "--fhe-keys",
        path(&recruiter_keys),
        "--trial",
        "bp-2027",
        "--summary",
        "Blood-pressure study for adults of 40 to 75",
        "--criterion",
        "age 40..75 step 5",
        "--listing",
        "site-1",
    ]);
    for (patient, contact) in [
        ("patient-0-0", "lee@example.org"),
        ("patient-0-2", "ana@example.org"),
    ] {
        let key = dir.join(format!("keys/{patient}.key"));
        let base = ["--config", path(&patient_toml), "--key", path(&key)];
        ok(&[
            &["patient", "consent", "--listing", "site-1"],
            &["--purpose", "trial_recruitment"][..],
            &base[..],
        ]
        .concat());
        let invitations = ok(&[&["patient", "invitations"], &base[..]].concat());
        assert!(invitations.contains("bp-2027"), "{invitations}");
        ok(&[
            &[
                "patient",
                "accept",
                "--trial",
                "bp-2027",
                "--contact",
                contact,
            ],
            &base[..],
        ]
        .concat());
    }
    let replies = |dir: &Path| -> serde_json::Value {
        let text = ok(&[
            "recruiter",
            "replies",
            "--config",
            path(&dir.join("buyer.toml")),
            "--fhe-keys",
            path(&dir.join("recruiter-keys")),
            "--trial",
            "bp-2027",
            "--json",
        ]);
        serde_json::from_str(&text).unwrap()
    };
    let opened = replies(dir);
    assert_eq!(opened["replies"], serde_json::json!(2), "{opened}");
    assert_eq!(opened["not_matching"], serde_json::json!(1), "{opened}");
    assert_eq!(
        opened["matching"][0]["contact"],
        serde_json::json!("ana@example.org"),
        "{opened}"
    );
    assert_eq!(opened["matching"].as_array().unwrap().len(), 1, "{opened}");

    // The market dies (kill -9) with an order in flight, and is started again. The order is
    // refunded, never lost; the listings and the key committee survive the restart, so the
    // nodes, which kept running with their key shares, answer the next query.
    let escrow_before = ledger_balance(dir, &buyer_account);
    market.child.kill().unwrap();
    market.child.wait().unwrap();
    assert_eq!(
        append_order_the_market_never_computed(dir, &["site-1", "site-2", "site-3"]),
        escrow_before - 3 * PRICE,
        "the order's escrow left the buyer's balance"
    );
    let mut market = spawn(
        &["market", "serve", "--config", path(&market_toml)],
        dir.join("market-restarted.log"),
    );
    wait_for(
        "the restarted market to refund the order left open",
        Duration::from_secs(60),
        || {
            market.assert_alive("the restarted market");
            market.log().contains("refunded 1 order(s)")
        },
    );
    assert_eq!(ledger_balance(dir, &buyer_account), escrow_before);
    let resumed = query("SELECT COUNT(*) FROM patients");
    assert_eq!(
        resumed["rows"][0][0].as_f64().unwrap(),
        (consenting.len() - 1) as f64,
        "{resumed}"
    );
    // The trial's replies survived the restart.
    assert_eq!(replies(dir), opened);
    // A node dies (kill -9) and is started again: it reloads its key share, finds its
    // listing already on the ledger, and answers the next query with the same committee.
    node_processes[1].child.kill().unwrap();
    node_processes[1].child.wait().unwrap();
    let restarted_node = dir.join("node-2.toml");
    node_processes[1] = spawn(
        &["node", "serve", "--config", path(&restarted_node)],
        dir.join("node-2-restarted.log"),
    );
    wait_for(
        "the restarted node to serve again",
        Duration::from_secs(60),
        || {
            node_processes[1].assert_alive("the restarted node 2");
            node_processes[1].log().contains("serving it again")
        },
    );
    let after_node_restart = query("SELECT COUNT(*) FROM patients");
    assert_eq!(
        after_node_restart["rows"][0][0].as_f64().unwrap(),
        (consenting.len() - 1) as f64,
        "{after_node_restart}"
    );
    assert!(
        !market
            .log()
            .contains("running the committee's key ceremony"),
        "the restarted market ran a new key ceremony:\n{}",
        market.log()
    );

    // Stop everything, then audit the ledger independently.
    drop(node_processes);
    drop(market);
    let verify = ok(&[
        "ledger",
        "verify",
        path(&dir.join("state/market/ledger.db")),
    ]);
    assert!(verify.contains("verified"), "{verify}");
}

/// The market's endpoint and chain id, from the public.toml it wrote.
fn market_public(dir: &Path) -> (String, market::Hash32) {
    let text = std::fs::read_to_string(dir.join("state/market/public.toml")).unwrap();
    let public: toml::Value = toml::from_str(&text).unwrap();
    let chain_id = hex::decode(public["chain_id"].as_str().unwrap()).unwrap();
    (
        public["endpoint"].as_str().unwrap().to_string(),
        market::Hash32(chain_id.try_into().unwrap()),
    )
}

/// The buyer's TLS identity, as its config names it.
fn buyer_tls(dir: &Path) -> cohortex_proto::tls::TlsIdentity {
    cohortex_proto::tls::TlsIdentity::load(
        &dir.join("tls/ca.crt"),
        &dir.join("tls/buyer.crt"),
        &dir.join("tls/buyer.key"),
        "test",
    )
    .unwrap()
}

/// A channel to the market, as the buyer.
async fn market_channel(dir: &Path, endpoint: &str) -> tonic::transport::Channel {
    cohortex_proto::tls::endpoint(endpoint, Some(&buyer_tls(dir)))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// `account`'s balance, read from the running market's Ledger service.
fn ledger_balance(dir: &Path, account: &str) -> u64 {
    let (endpoint, _) = market_public(dir);
    runtime().block_on(async {
        cohortex_proto::v1::ledger_client::LedgerClient::new(market_channel(dir, &endpoint).await)
            .get_balance(cohortex_proto::v1::GetBalanceRequest {
                account: hex::decode(account).unwrap(),
            })
            .await
            .unwrap()
            .into_inner()
            .available
    })
}

/// The buyer's order, appended to the stopped market's ledger with the market's own ledger
/// key: escrowed, but never handed to the coordinator, exactly as if the market had died right
/// after recording it. (The Ledger service refuses orders not placed through the market, so
/// no client can leave one behind like this.) Returns the buyer's balance after the escrow.
fn append_order_the_market_never_computed(dir: &Path, listings: &[&str]) -> u64 {
    let key_from = |file: &str| {
        let seed = hex::decode(std::fs::read_to_string(dir.join(file)).unwrap().trim()).unwrap();
        ed25519_dalek::SigningKey::from_bytes(&seed.try_into().unwrap())
    };
    let buyer = key_from("keys/buyer.key");
    let ledger_key = key_from("state/market/ledger.key");
    let issuer = market::AccountId::of(&key_from("state/market/issuer.key"));
    let (mut ledger, created) = cohortex_coordinator::standalone::open_or_create_ledger(
        &dir.join("state/market/ledger.db"),
        "unused: the ledger exists",
        &ledger_key,
        issuer,
    )
    .unwrap();
    assert!(!created);
    let account = market::AccountId::of(&buyer);
    let nonce = ledger.state().account(&account).unwrap().next_nonce;
    let result_key = zk::KeyPair::generate_with_rng(&mut rand::rngs::OsRng).public;
    let envelope = market::tx::sign_action(
        &buyer,
        ledger.chain_id(),
        nonce,
        market::Action::OrderQueryFor {
            query_hash: market::hash::query_hash("SELECT COUNT(*) FROM patients"),
            listings: listings
                .iter()
                .map(|id| market::ListingId::new(*id))
                .collect(),
            purpose: market::Purpose::AcademicResearch,
            epsilon_micro: 1_000_000,
            expires_at: market::server::auth::unix_now() + 3600,
            result_key: zk::Wire::to_bytes(&result_key),
        },
    )
    .unwrap();
    let outcome = ledger.append(vec![envelope]).unwrap();
    assert!(outcome.refused.is_empty(), "{:?}", outcome.refused);
    ledger.state().balance(&account)
}

/// A FHIR Bundle as an EHR exports it: the Patient (with the patient's Cohortex key as an
/// identifier) and a vital-signs blood-pressure panel whose components are the readings.
fn fhir_bundle(id: &str, account: &str, birth_date: &str, systolic: f64) -> serde_json::Value {
    serde_json::json!({
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {
                "resourceType": "Patient", "id": id,
                "identifier": [{"system": "urn:cohortex:patient-key", "value": account}],
                "gender": "female", "birthDate": birth_date
            }},
            {"resource": {
                "resourceType": "Observation", "id": format!("bp-{id}"), "status": "final",
                "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/bp"]},
                "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
                "subject": {"reference": format!("Patient/{id}")},
                "effectiveDateTime": "2025-11-20",
                "component": [
                    {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                     "valueQuantity": {"value": systolic, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                    {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                     "valueQuantity": {"value": 78, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
                ]
            }}
        ]
    })
}

#[test]
fn nodes_serving_fhir_bundles_as_separate_processes_match_the_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let nodes: Vec<String> = (1..=2)
        .map(|node| keygen(dir, &format!("node-{node}")))
        .collect();
    keygen(dir, "buyer");
    ok(&["tls", "ca", "--out-dir", path(&dir.join("tls"))]);
    for party in ["market", "node-1", "node-2", "patient", "buyer"] {
        ok(&[
            "tls",
            "cert",
            "--ca-dir",
            path(&dir.join("tls")),
            "--name",
            party,
            "--host",
            "127.0.0.1",
            "--out-dir",
            path(&dir.join("tls")),
        ]);
    }
    let tls = |party: &str| {
        format!(
            "\n[tls]\nca = \"tls/ca.crt\"\ncert = \"tls/{party}.crt\"\nkey = \"tls/{party}.key\"\n"
        )
    };

    // Node 1 exports an .ndjson file, node 2 a directory of .json Bundles. Ages on the
    // reference date 2026-01-01: born 1960-06-01 → 65, born 1990-06-01 → 35.
    let mut truth: Vec<(String, i64, f64)> = Vec::new();
    let mut ndjson = String::new();
    std::fs::create_dir(dir.join("site-2")).unwrap();
    for node in 0..2 {
        for i in 0..4 {
            let name = format!("fhir-patient-{node}-{i}");
            let account = keygen(dir, &name);
            let (birth, age) = if i % 2 == 0 {
                ("1960-06-01", 65)
            } else {
                ("1990-06-01", 35)
            };
            let systolic = 118.0 + 7.0 * (node * 4 + i) as f64;
            let bundle = fhir_bundle(&format!("p{node}{i}"), &account, birth, systolic);
            if node == 0 {
                ndjson.push_str(&format!("{bundle}\n"));
            } else {
                std::fs::write(
                    dir.join(format!("site-2/p{i}.json")),
                    serde_json::to_string_pretty(&bundle).unwrap(),
                )
                .unwrap();
            }
            truth.push((name, age, systolic));
        }
    }
    std::fs::write(dir.join("site-1.ndjson"), ndjson).unwrap();

    let members = nodes
        .iter()
        .map(|account| format!("\"{account}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let held: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = held
        .iter()
        .map(|listener| listener.local_addr().unwrap().port())
        .collect();
    drop(held);
    std::fs::write(
        dir.join("market.toml"),
        format!(
            "version = 1\nstate_dir = \"state/market\"\nlisten = \"127.0.0.1:{}\"\n\n\
             [committee]\nthreshold = 2\nmembers = [{members}]\n{}",
            ports[0],
            tls("market")
        ),
    )
    .unwrap();
    let endpoints = format!(
        "\"https://127.0.0.1:{}\", \"https://127.0.0.1:{}\"",
        ports[1], ports[2]
    );
    let sources = ["site-1.ndjson", "site-2"];
    for node in 1..=2 {
        std::fs::write(
            dir.join(format!("node-{node}.toml")),
            format!(
                "version = 1\nkey_file = \"keys/node-{node}.key\"\nlisten = \"127.0.0.1:{}\"\n\
                 market = \"state/market/public.toml\"\nvault_dir = \"state/node-{node}/vault\"\n\n\
                 [committee]\nmember = {node}\nthreshold = 2\nmembers = [{members}]\n\
                 endpoints = [{endpoints}]\n\n\
                 [listing]\nid = \"ehr-{node}\"\nprice_per_query = {PRICE}\n\
                 purposes = [\"academic_research\"]\nmin_cohort_size = 1\nepsilon_budget = 1000000.0\n\
                 max_epsilon_per_order = 100000.0\ncompensation = \"payment\"\n\n\
                 [data]\nfile = \"{}\"\nreference_date = \"2026-01-01\"\n{}",
                ports[node],
                sources[node - 1],
                tls(&format!("node-{node}"))
            ),
        )
        .unwrap();
    }
    std::fs::write(
        dir.join("patient.toml"),
        format!(
            "version = 1\nkey_file = \"keys/fhir-patient-0-0.key\"\nmarket = \"state/market/public.toml\"\n{}",
            tls("patient")
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("buyer.toml"),
        format!(
            "version = 1\nkey_file = \"keys/buyer.key\"\nmarket = \"state/market/public.toml\"\n\
             epsilon_per_query = {EPSILON:.1}\n{}",
            tls("buyer")
        ),
    )
    .unwrap();
    let market_toml = dir.join("market.toml");
    let patient_toml = dir.join("patient.toml");
    let buyer_toml = dir.join("buyer.toml");

    let mut market = spawn(
        &["market", "serve", "--config", path(&market_toml)],
        dir.join("market.log"),
    );
    wait_for("the market's public.toml", Duration::from_secs(60), || {
        market.assert_alive("market");
        dir.join("state/market/public.toml").exists()
    });
    let mut node_processes: Vec<Running> = (1..=2)
        .map(|node| {
            let config = dir.join(format!("node-{node}.toml"));
            spawn(
                &["node", "serve", "--config", path(&config)],
                dir.join(format!("node-{node}.log")),
            )
        })
        .collect();
    wait_for("two published listings", Duration::from_secs(120), || {
        for (index, node) in node_processes.iter_mut().enumerate() {
            node.assert_alive(&format!("node {}", index + 1));
        }
        let output = cohortex(&["buyer", "listings", "--config", path(&buyer_toml), "--json"]);
        output.status.success()
            && serde_json::from_slice::<serde_json::Value>(&output.stdout)
                .map(|listings| listings.as_array().map_or(0, Vec::len) == 2)
                .unwrap_or(false)
    });
    assert!(
        node_processes[0]
            .log()
            .contains("ingested 4 patient(s) from"),
        "{}",
        node_processes[0].log()
    );

    for (index, (name, _, _)) in truth.iter().enumerate() {
        let key = dir.join(format!("keys/{name}.key"));
        let base = ["--config", path(&patient_toml), "--key", path(&key)];
        ok(&[&["patient", "register"], &base[..]].concat());
        let listing = format!("ehr-{}", index / 4 + 1);
        ok(&[
            &["patient", "consent", "--listing", &listing],
            &["--purpose", "academic_research"][..],
            &base[..],
        ]
        .concat());
    }
    let buyer_account = std::fs::read_to_string(dir.join("keys/buyer.pub"))
        .unwrap()
        .trim()
        .to_string();
    ok(&["buyer", "register", "--config", path(&buyer_toml)]);
    ok(&[
        "market",
        "deposit",
        "--config",
        path(&market_toml),
        "--to",
        &buyer_account,
        "--amount",
        "10000",
    ]);

    let sql = "SELECT COUNT(*), AVG(systolic_bp) FROM patients WHERE age >= 50";
    let started = Instant::now();
    let json: serde_json::Value = loop {
        let output = cohortex(&[
            "buyer",
            "query",
            "--config",
            path(&buyer_toml),
            "--purpose",
            "academic_research",
            "--query",
            sql,
            "--json",
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        if output.status.success() {
            break serde_json::from_slice(&output.stdout).unwrap();
        }
        assert!(
            stderr.contains("committee has not been formed")
                && started.elapsed() < Duration::from_secs(60),
            "buyer query failed:\n{stderr}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let older: Vec<f64> = truth
        .iter()
        .filter(|(_, age, _)| *age >= 50)
        .map(|(_, _, systolic)| *systolic)
        .collect();
    let mean = older.iter().sum::<f64>() / older.len() as f64;
    let row = &json["rows"][0];
    assert_eq!(row[0].as_f64().unwrap(), older.len() as f64, "{json}");
    assert!(
        (row[5].as_f64().unwrap() - mean).abs() < MEAN_TOLERANCE,
        "{} vs {mean}",
        row[5]
    );
    assert_eq!(json["receipt"]["verified"], serde_json::json!(true));
}
