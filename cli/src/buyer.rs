//! `cohortex buyer …`: a buyer's commands against a running market. `query` orders a
//! federated query (escrow), waits for it, decrypts the key-switched result with a result key
//! that never leaves this process, combines it, and checks the receipt's inclusion proof
//! against the ledger key in the market's `public.toml`.

use std::path::PathBuf;

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use cohortex_client::link::{connect, next_nonce};
use cohortex_client::Buyer;
use cohortex_proto::tls::TlsIdentity;
use cohortex_proto::v1::ledger_client::LedgerClient;
use cohortex_proto::v1::market_client::MarketClient;
use cohortex_proto::v1::{GetBalanceRequest, ListListingsRequest, Listing, OrderState};
use ed25519_dalek::SigningKey;
use market::{AccountId, Hash32, TxId};

use crate::config::{BuyerConfig, MarketPublic};
use crate::federation::{decryption_table, print_answer, spinner};
use cohortex_client::keys;

/// `cohortex buyer …`.
#[derive(Args, Debug)]
pub struct BuyerCmd {
    /// The buyer's config file (key_file, market, epsilon_per_query).
    #[arg(long, value_name = "buyer.toml", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: BuyerCommand,
}

#[derive(Subcommand, Debug)]
enum BuyerCommand {
    /// Register the key's account as a buyer (then ask the market operator for credits).
    Register,
    /// Show the account's credit balance.
    Balance,
    /// List the market's active listings.
    Listings(ListingsArgs),
    /// Order a federated query, wait for it, decrypt the result and verify its receipt.
    Query(QueryArgs),
    /// Cancel one of your orders whose release is not committed yet: the escrow comes back
    /// and the ε it reserved on each listing is freed.
    Cancel(CancelArgs),
}

#[derive(Args, Debug)]
struct CancelArgs {
    /// The order id (64 hex digits), as `buyer query` printed it.
    #[arg(long)]
    order: String,
}

#[derive(Args, Debug)]
struct ListingsArgs {
    /// Only listings that allow this purpose.
    #[arg(long)]
    purpose: Option<String>,
    /// Print one JSON array on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct QueryArgs {
    /// A listing to query; repeat for several (default: every active listing that allows
    /// the purpose).
    #[arg(long = "listing", value_name = "LISTING")]
    listings: Vec<String>,
    /// academic_research, commercial_research, trial_feasibility or trial_recruitment.
    #[arg(long, default_value = "academic_research")]
    purpose: String,
    /// The aggregate SQL query, e.g. "SELECT COUNT(*), AVG(x) FROM patients".
    #[arg(long, value_name = "SQL")]
    query: String,
    /// Print one JSON object (columns, rows, participants, receipt) on stdout instead of a
    /// table (the same as --format json).
    #[arg(long)]
    json: bool,
    /// table (default), json, or arrow: an Arrow IPC stream on stdout with column types,
    /// units and the receipt in its metadata (redirect it to a file).
    #[arg(long, value_enum)]
    format: Option<crate::output::Format>,
}

struct Session {
    key: SigningKey,
    public: MarketPublic,
    config: BuyerConfig,
}

async fn listings(
    endpoint: &str,
    tls: &TlsIdentity,
    purpose: Option<&str>,
) -> anyhow::Result<Vec<Listing>> {
    Ok(MarketClient::new(connect(endpoint, Some(tls)).await?)
        .max_decoding_message_size(market::server::MAX_MESSAGE_BYTES)
        .list_listings(ListListingsRequest {
            purpose: purpose.unwrap_or_default().to_string(),
        })
        .await
        .map_err(|status| anyhow!("listing the market's listings: {}", status.message()))?
        .into_inner()
        .listings)
}

/// Runs `cohortex buyer …`.
pub async fn run(command: BuyerCmd) -> anyhow::Result<()> {
    let config_path = command
        .config
        .clone()
        .ok_or_else(|| anyhow!("--config buyer.toml is required (it names key_file and market)"))?;
    let config = BuyerConfig::load(&config_path)?;
    let session = Session {
        key: keys::read(
            &config.key_file,
            &format!("{}: key_file", config.path.display()),
        )?,
        public: MarketPublic::load(
            &config.market,
            &format!("{}: market", config.path.display()),
        )?,
        config,
    };
    let account = AccountId::of(&session.key);
    match command.command {
        BuyerCommand::Register => {
            let buyer = Buyer::new(
                session.key.clone(),
                session.public.chain_id,
                session.public.endpoint.clone(),
                0,
            )
            .with_tls(Some(session.config.tls.clone()));
            buyer
                .register()
                .await
                .map_err(|error| anyhow!("registering buyer {account}: {error:#}"))?;
            println!("registered buyer {account}");
            println!(
                "ask the market operator for credits: cohortex market deposit --config market.toml --to {account} --amount N"
            );
        }
        BuyerCommand::Balance => {
            let balance = LedgerClient::new(
                connect(&session.public.endpoint, Some(&session.config.tls)).await?,
            )
            .get_balance(GetBalanceRequest {
                account: account.0.to_vec(),
            })
            .await
            .map_err(|status| anyhow!("reading the balance: {}", status.message()))?
            .into_inner();
            println!("buyer {account}: {} credits", balance.available);
        }
        BuyerCommand::Listings(args) => {
            let found = listings(
                &session.public.endpoint,
                &session.config.tls,
                args.purpose.as_deref(),
            )
            .await?;
            if args.json {
                let rows: Vec<serde_json::Value> = found
                    .iter()
                    .map(|listing| {
                        serde_json::json!({
                            "id": listing.id,
                            "owner": hex::encode(&listing.owner),
                            "price_per_query": listing.price_per_query,
                            "purposes": listing.allowed_purposes,
                            "min_cohort_size": listing.min_cohort_size,
                            "epsilon_remaining": listing.epsilon_remaining_micro as f64 / 1e6,
                            "donation": !listing.donation_fund.is_empty(),
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(rows));
            } else {
                println!(
                    "  {:<28} {:>8} {:>10} {:>10}  purposes",
                    "listing", "price", "min cohort", "ε left"
                );
                for listing in &found {
                    println!(
                        "  {:<28} {:>8} {:>10} {:>10.2}  {}{}",
                        listing.id,
                        listing.price_per_query,
                        listing.min_cohort_size,
                        listing.epsilon_remaining_micro as f64 / 1e6,
                        listing.allowed_purposes.join(", "),
                        if listing.donation_fund.is_empty() {
                            ""
                        } else {
                            " (donation)"
                        }
                    );
                }
            }
        }
        BuyerCommand::Query(args) => query(&session, args).await?,
        BuyerCommand::Cancel(args) => {
            let order = hex::decode(args.order.trim())
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .map(|bytes| market::TxId(market::Hash32(bytes)))
                .ok_or_else(|| anyhow!("--order: expected 64 hex digits, the order id"))?;
            let height = registered_buyer(&session).await?.cancel(order).await?;
            println!("cancelled order {order} (ledger block {height}); its escrow is back");
        }
    }
    Ok(())
}

/// The session's buyer at its next ledger nonce; refused if the account is not registered.
async fn registered_buyer(session: &Session) -> anyhow::Result<Buyer> {
    let account = AccountId::of(&session.key);
    let endpoint = &session.public.endpoint;
    let nonce = next_nonce(endpoint, Some(&session.config.tls), &session.key)
        .await?
        .ok_or_else(|| {
            anyhow!("buyer {account} is not registered; run `cohortex buyer register` first")
        })?;
    Ok(Buyer::new(
        session.key.clone(),
        session.public.chain_id,
        endpoint.clone(),
        nonce,
    )
    .with_tls(Some(session.config.tls.clone())))
}

async fn query(session: &Session, args: QueryArgs) -> anyhow::Result<()> {
    let purpose = market::server::purpose_field(&args.purpose, "--purpose")
        .map_err(|status| anyhow!("{}", status.message()))?;
    let endpoint = &session.public.endpoint;
    let format = crate::output::resolve(args.format, args.json)?;
    let quiet = format != crate::output::Format::Table;
    let chosen = if args.listings.is_empty() {
        let found: Vec<String> = listings(endpoint, &session.config.tls, Some(&args.purpose))
            .await?
            .into_iter()
            .map(|listing| listing.id)
            .collect();
        if found.is_empty() {
            bail!(
                "the market has no active listing that allows {}; have the nodes published?",
                args.purpose
            );
        }
        found
    } else {
        args.listings.clone()
    };
    let buyer = registered_buyer(session).await?;
    let table = decryption_table(quiet)?;
    tracing::info!(listings = ?chosen, purpose = %args.purpose, "ordering");
    let order = buyer
        .order(&args.query, &chosen, purpose, session.config.epsilon_micro)
        .await
        .map_err(|status| anyhow!("the market refused the order: {}", status.message()))?;
    let bar = spinner(
        &format!(
            "order {}…: nodes compute and prove, the committee key-switches to you",
            &hex::encode(order.0.as_bytes())[..12]
        ),
        quiet,
    );
    let status = buyer.wait(order).await;
    bar.finish_and_clear();
    let status = status?;
    if status.state != OrderState::Completed as i32 {
        let mut message = format!("order failed: {}", status.message);
        for node in &status.nodes {
            message.push_str(&format!(
                "\n  listing {}: {}{}",
                node.listing,
                node.outcome,
                if node.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", node.reason)
                }
            ));
        }
        message.push_str("\n(the escrow is refunded)");
        bail!(message);
    }
    let answer = buyer.open(&status, &table)?;
    let receipt_bytes: [u8; 32] = status
        .receipt_id
        .as_slice()
        .try_into()
        .map_err(|_| anyhow!("a completed order without a receipt id"))?;
    let receipt = TxId(Hash32(receipt_bytes));
    let verified = buyer
        .verify_receipt(receipt, &session.public.ledger_key)
        .await?;
    if format == crate::output::Format::Arrow {
        let offered = listings(endpoint, &session.config.tls, None).await?;
        let first = offered
            .iter()
            .find(|listing| listing.id == chosen[0])
            .ok_or_else(|| anyhow!("listing {} is no longer offered", chosen[0]))?;
        let schema = compute_node::Schema::from_toml(&first.manifest, &first.id)
            .map_err(|error| anyhow!("listing {}: manifest: {error}", first.id))?;
        let plan = compute_node::compile(&args.query, &schema)
            .map_err(|error| anyhow!("--query: {error}"))?;
        let provenance = cohortex_client::arrow_release::Provenance {
            query: args.query.clone(),
            purpose: args.purpose.clone(),
            epsilon: status.epsilon_micro as f64 / 1e6,
            receipt: Some(hex::encode(receipt.0.as_bytes())),
            receipt_verified: verified,
            listings: chosen.clone(),
        };
        let bytes =
            cohortex_client::arrow_release::to_ipc_stream(&answer, &plan, &schema, &provenance)
                .map_err(|error| anyhow!("encoding the release as Arrow: {error}"))?;
        if !verified {
            bail!("the receipt's inclusion proof did not verify against the ledger key");
        }
        return crate::output::write_arrow(&bytes);
    }
    if format == crate::output::Format::Json {
        let (columns, rows) = answer.with_error_columns();
        let output = serde_json::json!({
            "columns": columns,
            "rows": rows,
            "participants": answer.participants,
            "receipt": {
                "id": hex::encode(receipt.0.as_bytes()),
                "verified": verified,
            },
            "order": hex::encode(order.0.as_bytes()),
        });
        println!("{output}");
    } else {
        print_answer(&answer);
        println!();
        println!(
            "participants across {} listing(s): about {} (a noisy count, like every released number)",
            chosen.len(),
            answer.participants
        );
        println!(
            "receipt {} — inclusion in the ledger {} (against the ledger key in {})",
            hex::encode(receipt.0.as_bytes()),
            if verified { "verified" } else { "NOT verified" },
            session.config.market.display()
        );
    }
    if !verified {
        bail!("the receipt's inclusion proof did not verify against the ledger key");
    }
    Ok(())
}
