//! The `cohortex` command.
//!
//! Subcommands are grouped by component (`cohortex ledger ...`); later components add their
//! own groups.
#![deny(clippy::unwrap_used)]

mod buyer;
mod config;
mod federation;
mod market_process;
mod node_process;
mod output;
mod patient;
#[cfg(feature = "tfhe")]
mod recruiter;
mod tls;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use cohortex_client::keys;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// Cohortex: a privacy-preserving marketplace for health research data.
#[derive(Parser, Debug)]
#[command(name = "cohortex", version, about)]
struct Cli {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Inspect and audit the ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Run the whole product on this machine: a market, a ledger and 3 compute nodes on
    /// loopback, 30,000 synthetic patients, and three buyer queries, with a readable report.
    Demo(DemoArgs),
    /// Run one federated query over your own CSV or Parquet files: each --node-data file is
    /// one node's vault and each row one consenting patient.
    Local(LocalCmd),
    /// Generate a seeded synthetic population as FHIR R4 bundles (NDJSON, one Bundle per
    /// line, 10,000 patients per file).
    Synth(SynthArgs),
    /// Generate an account key: writes the secret seed to --out (mode 0600) and the account
    /// id to the .pub file beside it, and prints the account id.
    Keygen(KeygenArgs),
    /// The federation's TLS certificates: every link is mutual TLS.
    #[command(subcommand)]
    Tls(tls::TlsCommand),
    /// The market process: ledger, consent, listings, orders and the coordinator.
    #[command(subcommand)]
    Market(MarketCommand),
    /// A compute node process: a vault, the Compute service and its listing.
    #[command(subcommand)]
    Node(NodeCommand),
    /// A patient's commands: register, consent, revoke, consents, earnings, invitations,
    /// accept.
    Patient(patient::PatientCmd),
    /// A buyer's commands: register, balance, listings, query.
    Buyer(buyer::BuyerCmd),
    /// A trial recruiter's commands: keygen (TFHE), feasibility (blind count per site),
    /// invite (post a trial), replies (contacts of matching patients who accepted).
    #[cfg(feature = "tfhe")]
    Recruiter(recruiter::RecruiterCmd),
}

#[derive(Args, Debug)]
struct KeygenArgs {
    /// The key file to write (refused if it exists); the account id goes to FILE's .pub twin.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Subcommand, Debug)]
enum MarketCommand {
    /// Serve the market (Ledger, Consent, Market) until Ctrl-C. Creates the ledger and the
    /// market's keys in state_dir on first run and reopens them after; runs the key ceremony
    /// once every committee member has published its listing.
    Serve(MarketServeArgs),
    /// As the market's issuer, credit an account (a registered buyer) through the running
    /// market.
    Deposit(DepositArgs),
}

#[derive(Subcommand, Debug)]
enum NodeCommand {
    /// Ingest the data file, serve the Compute service and publish the listing, until Ctrl-C.
    Serve(NodeServeArgs),
}

#[derive(Args, Debug)]
struct MarketServeArgs {
    /// The market's config file (state_dir, listen, committee; see examples/walkthrough/).
    #[arg(long, value_name = "market.toml")]
    config: PathBuf,
}

#[derive(Args, Debug)]
struct NodeServeArgs {
    /// The node's config file (key_file, listen, market, committee, listing, data; see
    /// examples/walkthrough/).
    #[arg(long, value_name = "node.toml")]
    config: PathBuf,
}

#[derive(Args, Debug)]
struct DepositArgs {
    /// The market's config file (its state_dir holds the issuer key).
    #[arg(long, value_name = "market.toml")]
    config: PathBuf,
    /// The account to credit (64 hex digits).
    #[arg(long, value_name = "ACCOUNT")]
    to: String,
    /// Credits to deposit.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    amount: u64,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// Number of synthetic patients, split evenly across the 3 nodes.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(300..=300_000))]
    patients: u64,
    /// Directory for the demo's ledger (default: a new directory under the system temp dir).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// After the report, keep the servers running (for grpcurl) until Ctrl-C.
    #[arg(long)]
    keep_running: bool,
}

#[derive(Args, Debug)]
struct LocalCmd {
    /// One node's vault: a CSV (.csv) or Parquet (.parquet) table, or FHIR R4 bundles (a .json
    /// Bundle, an .ndjson of Bundles, or a directory of them). Repeat for more nodes.
    #[arg(long = "node-data", required = true, value_name = "FILE")]
    node_data: Vec<PathBuf>,
    /// The schema manifest (TOML) describing the tables' columns (see docs/sql.md); FHIR
    /// bundles use the built-in FHIR schema instead.
    #[arg(long, value_name = "MANIFEST.toml")]
    schema: Option<PathBuf>,
    /// For FHIR bundles: the date patients' ages are computed at (YYYY-MM-DD).
    #[arg(long, value_name = "YYYY-MM-DD")]
    reference_date: Option<String>,
    /// The aggregate SQL query, e.g. "SELECT COUNT(*), AVG(x) FROM patients".
    #[arg(long, value_name = "SQL")]
    query: String,
    /// The purpose the patients consent to: academic_research, commercial_research,
    /// trial_feasibility or trial_recruitment.
    #[arg(long, default_value = "academic_research")]
    purpose: String,
    /// Print one JSON object (columns, rows, receipt) on stdout instead of a table (the same
    /// as --format json).
    #[arg(long)]
    json: bool,
    /// table (default), json, or arrow: an Arrow IPC stream on stdout with column types,
    /// units and the receipt in its metadata (redirect it to a file).
    #[arg(long, value_enum)]
    format: Option<output::Format>,
    /// Directory for the run's ledger (default: a new directory under the system temp dir).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The release's differential-privacy ε (greater than 0; smaller is more private and
    /// noisier; see docs/privacy.md).
    #[arg(long, default_value_t = 1.0, value_parser = parse_epsilon, allow_negative_numbers = true)]
    epsilon: f64,
    /// Newton–Raphson steps of a LOGISTIC model, each its own release at ε/steps (other
    /// queries are one release at ε).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..=50))]
    steps: u16,
}

/// Parses `--epsilon`: a finite number from 0.000001 to 1,000,000.
pub(crate) fn parse_epsilon(text: &str) -> Result<f64, String> {
    let epsilon: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number; write e.g. --epsilon 0.5"))?;
    if !epsilon.is_finite() || !(1e-6..=1e6).contains(&epsilon) {
        return Err(format!(
            "ε must be from 0.000001 to 1000000 (got {text}); smaller is more private"
        ));
    }
    Ok(epsilon)
}

#[derive(Args, Debug)]
struct SynthArgs {
    /// Number of patients.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    patients: u64,
    /// Seed: the same seed always gives the same population.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output directory (created if missing).
    #[arg(long)]
    out: PathBuf,
    /// Sign every bundle as the synthetic EHR source (Ed25519, see docs/sql.md#provenance).
    #[arg(long)]
    signed: bool,
}

#[derive(Subcommand, Debug)]
enum LedgerCommand {
    /// Re-verify every signature, hash link, Merkle root and state hash of a ledger database.
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// Path to the ledger's SQLite database.
    db: PathBuf,
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Ledger(LedgerCommand::Verify(args)) => ledger_verify(&args),
        Command::Synth(args) => synth(&args),
        Command::Demo(args) => runtime()?
            .block_on(federation::demo(
                args.patients,
                args.state_dir,
                args.keep_running,
            ))
            .map(|()| ExitCode::SUCCESS),
        Command::Keygen(args) => {
            let account = keys::generate(&args.out)?;
            println!("{account}");
            eprintln!(
                "wrote the secret key to {} (mode 0600) and the account id to {}",
                args.out.display(),
                keys::public_path(&args.out).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Tls(command) => tls::run(command).map(|()| ExitCode::SUCCESS),
        Command::Market(MarketCommand::Serve(args)) => runtime()?
            .block_on(market_process::serve(&args.config))
            .map(|()| ExitCode::SUCCESS),
        Command::Market(MarketCommand::Deposit(args)) => runtime()?
            .block_on(market_process::deposit(&args.config, &args.to, args.amount))
            .map(|()| ExitCode::SUCCESS),
        Command::Node(NodeCommand::Serve(args)) => runtime()?
            .block_on(node_process::serve(&args.config))
            .map(|()| ExitCode::SUCCESS),
        Command::Patient(command) => runtime()?
            .block_on(patient::run(command))
            .map(|()| ExitCode::SUCCESS),
        Command::Buyer(command) => runtime()?
            .block_on(buyer::run(command))
            .map(|()| ExitCode::SUCCESS),
        #[cfg(feature = "tfhe")]
        Command::Recruiter(command) => runtime()?
            .block_on(recruiter::run(command))
            .map(|()| ExitCode::SUCCESS),
        Command::Local(args) => runtime()?
            .block_on(federation::local(federation::LocalArgs {
                node_data: args.node_data,
                schema: args.schema,
                reference_date: args.reference_date,
                query: args.query,
                purpose: args.purpose,
                format: output::resolve(args.format, args.json)?,
                state_dir: args.state_dir,
                epsilon_micro: (args.epsilon * 1e6).round() as u64,
                steps: usize::from(args.steps),
            }))
            .map(|()| ExitCode::SUCCESS),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn synth(args: &SynthArgs) -> anyhow::Result<ExitCode> {
    let started = std::time::Instant::now();
    let bar = indicatif::ProgressBar::new(args.patients);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} generating patients {bar:40} {pos}/{len} ({per_sec}, eta {eta})",
        )
        .context("progress bar template")?,
    );
    let files = compute_node::synth::write_population(
        &args.out,
        args.seed,
        0..args.patients,
        args.signed,
        |written| bar.set_position(written),
    )
    .with_context(|| format!("writing bundles to {}", args.out.display()))?;
    bar.finish_and_clear();
    println!(
        "wrote {} patients (seed {}) as FHIR R4 bundles in {} file(s) under {} in {:.1} s",
        args.patients,
        args.seed,
        files.len(),
        args.out.display(),
        started.elapsed().as_secs_f64()
    );
    if args.signed {
        println!(
            "bundles are signed by source {}",
            hex::encode(
                compute_node::synth::source_key(args.seed)
                    .verifying_key()
                    .as_bytes()
            )
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit codes: 0 verified, 1 verification failed (block and transaction named), 2 the
/// database could not be read.
fn ledger_verify(args: &VerifyArgs) -> anyhow::Result<ExitCode> {
    if !args.db.exists() {
        anyhow::bail!("ledger database {} does not exist", args.db.display());
    }
    tracing::info!(db = %args.db.display(), "verifying ledger");
    match market::audit_database(&args.db) {
        Ok(report) => {
            println!("ledger {} verified", args.db.display());
            println!("  chain id         {}", report.chain_id);
            println!("  blocks           {}", report.blocks);
            println!("  transactions     {}", report.transactions);
            println!("  merkle root      {}", report.tree_root);
            println!("  state hash       {}", report.state_hash);
            println!("  last block hash  {}", report.last_block_hash);
            println!(
                "  checked: every transaction signature, every tree-head signature, every \
                 hash link, every RFC 6962 root, every state hash, and the stored state"
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(market::AuditError::Failed(failure)) => {
            eprintln!("ledger {} FAILED verification", args.db.display());
            eprintln!("  {failure}");
            if let Some(block) = failure.block {
                eprintln!("  first failing block: {block}");
            }
            if let Some(tx) = failure.transaction {
                eprintln!("  first failing transaction: {tx} (position in the block)");
            }
            Ok(ExitCode::from(1))
        }
        Err(market::AuditError::Storage(error)) => {
            Err(error).with_context(|| format!("reading ledger database {}", args.db.display()))
        }
    }
}
