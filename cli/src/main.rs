//! The `cohortex` command.
//!
//! Subcommands are grouped by component (`cohortex ledger ...`); later components add their
//! own groups.
#![deny(clippy::unwrap_used)]

mod federation;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
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
    /// A CSV (.csv) or Parquet (.parquet) file: one node's vault. Repeat for more nodes.
    #[arg(long = "node-data", required = true, value_name = "FILE")]
    node_data: Vec<PathBuf>,
    /// The schema manifest (TOML) describing the files' columns (see docs/sql.md).
    #[arg(long, value_name = "MANIFEST.toml")]
    schema: PathBuf,
    /// The aggregate SQL query, e.g. "SELECT COUNT(*), AVG(x) FROM patients".
    #[arg(long, value_name = "SQL")]
    query: String,
    /// The purpose the patients consent to: academic_research, commercial_research,
    /// trial_feasibility or trial_recruitment.
    #[arg(long, default_value = "academic_research")]
    purpose: String,
    /// Print one JSON object (columns, rows, receipt) on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Directory for the run's ledger (default: a new directory under the system temp dir).
    #[arg(long)]
    state_dir: Option<PathBuf>,
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
        Command::Local(args) => runtime()?
            .block_on(federation::local(federation::LocalArgs {
                node_data: args.node_data,
                schema: args.schema,
                query: args.query,
                purpose: args.purpose,
                json: args.json,
                state_dir: args.state_dir,
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
