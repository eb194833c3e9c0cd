//! `cohortex market serve` and `cohortex market deposit`: the market process (ledger, Consent,
//! Market and the order coordinator) on its own, and the operator's way to credit a buyer.
//!
//! The market's keys live in its state directory, created on first run and reused after:
//! `ledger.key` (signs tree heads), `issuer.key` (admits nodes, deposits credits),
//! `coordinator.key` (records receipts, settles orders) and `fund.key` (the donation fund).
//! A restart reopens the ledger rather than creating a new one.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context};
use cohortex_coordinator::serve::serve_market;
use cohortex_coordinator::standalone::{
    admit_accounts, form_committee_when_published, register_committee, CommitteeProgress,
};
use cohortex_coordinator::Coordinator;
use cohortex_proto::v1::ledger_client::LedgerClient;
use cohortex_proto::v1::SignedTransaction;
use market::{AccountId, Action, Role};
use tokio::net::TcpListener;

use crate::config::{MarketConfig, MarketPublic};
use cohortex_client::keys;
use cohortex_client::link::next_nonce;
use market::tx::sign_action;

/// Resolves when the process is asked to stop (Ctrl-C, or SIGTERM on Unix).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs `cohortex market serve`.
pub async fn serve(config_path: &Path) -> anyhow::Result<()> {
    let config = MarketConfig::load(config_path)?;
    let dir = &config.state_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("state_dir: creating {}", dir.display()))?;
    let field = |name: &str| format!("{} (in state_dir {})", name, dir.display());
    let (ledger_key, _) = keys::read_or_create(&dir.join("ledger.key"), &field("ledger.key"))?;
    let (issuer, _) = keys::read_or_create(&dir.join("issuer.key"), &field("issuer.key"))?;
    let (coordinator_key, _) =
        keys::read_or_create(&dir.join("coordinator.key"), &field("coordinator.key"))?;
    let (fund, _) = keys::read_or_create(&dir.join("fund.key"), &field("fund.key"))?;

    let ledger_path = dir.join("ledger.db");
    let (ledger, created) = {
        let ledger_path = ledger_path.clone();
        let name = config.chain_name.clone();
        let ledger_key = ledger_key.clone();
        let issuer = AccountId::of(&issuer);
        tokio::task::spawn_blocking(move || {
            cohortex_coordinator::standalone::open_or_create_ledger(
                &ledger_path,
                &name,
                &ledger_key,
                issuer,
            )
        })
        .await
        .context("ledger task")??
    };
    let chain_id = ledger.chain_id();
    if created {
        tracing::info!(path = %ledger_path.display(), %chain_id, "created the ledger");
    } else {
        tracing::info!(path = %ledger_path.display(), %chain_id, "reopened the ledger");
    }
    let ledger = Arc::new(Mutex::new(ledger));

    let mut admissions = vec![
        (AccountId::of(&coordinator_key), Role::CommitteeMember),
        (AccountId::of(&fund), Role::Fund),
    ];
    admissions.extend(
        config
            .members
            .iter()
            .map(|account| (*account, Role::ComputeNode)),
    );
    let admitted = admit_accounts(&ledger, &issuer, &admissions).await?;
    for (account, role) in &admitted {
        tracing::info!(%account, ?role, "admitted");
    }
    if register_committee(&ledger, &issuer, &config.members, config.threshold).await? {
        tracing::info!(
            threshold = config.threshold,
            size = config.members.len(),
            "registered the key committee on the ledger"
        );
    }

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("{}: listen = {}", config.path.display(), config.listen))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    let endpoint = config
        .advertise
        .clone()
        .unwrap_or_else(|| format!("https://{bound}"));
    let public = MarketPublic {
        endpoint: endpoint.clone(),
        chain_id,
        ledger_key: ledger_key.verifying_key(),
        coordinator: AccountId::of(&coordinator_key),
        fund: AccountId::of(&fund),
        issuer: AccountId::of(&issuer),
    };
    let public_path = config.public_path();
    public.write(&public_path)?;

    let state_file = dir.join("coordinator.json");
    let coordinator = Arc::new(
        Coordinator::with_state_file(Arc::clone(&ledger), coordinator_key, state_file.clone())?
            .with_tls(Some(config.tls.clone())),
    );
    // Orders a previous run left open never complete now: refund them (nothing is lost).
    let refunded = coordinator
        .refund_orders_left_open()
        .await
        .map_err(|status| anyhow!("refunding orders left open: {}", status.message()))?;
    if !refunded.is_empty() {
        println!(
            "refunded {} order(s) an earlier run left unfinished",
            refunded.len()
        );
    }
    // Orders a previous run recorded a receipt for but did not settle are paid out now.
    let settled = coordinator
        .settle_orders_left_computed()
        .await
        .map_err(|status| anyhow!("settling orders left computed: {}", status.message()))?;
    if !settled.is_empty() {
        println!(
            "settled {} order(s) an earlier run left computed",
            settled.len()
        );
    }
    // Orders completed and paid for before the restart: their buyers can read them again.
    let resumed = coordinator
        .resume_completed_orders()
        .await
        .map_err(|status| anyhow!("resuming completed orders: {}", status.message()))?;
    if resumed > 0 {
        println!("serving the results of {resumed} completed order(s) again");
    }
    if coordinator.committee().ok().flatten().is_some() {
        tracing::info!(path = %state_file.display(), "resumed the key committee and listings");
    }
    let progress = Arc::new(Mutex::new(CommitteeProgress::Waiting {
        published: 0,
        size: config.members.len(),
    }));
    let committee_task = tokio::spawn(form_committee_when_published(
        Arc::clone(&coordinator),
        config.members.clone(),
        config.threshold,
        Arc::clone(&progress),
    ));

    println!("market serving at {endpoint}");
    println!("  ledger        {}", ledger_path.display());
    println!("  chain id      {chain_id}");
    println!(
        "  public facts  {} (give this file to nodes, patients and buyers)",
        public_path.display()
    );
    println!(
        "  committee     {} of {}: the key ceremony runs once every member has published its listing",
        config.threshold,
        config.members.len()
    );
    println!("Press Ctrl-C to stop.");
    let served = serve_market(coordinator, listener, Some(&config.tls), shutdown_signal()).await;
    committee_task.abort();
    served.map_err(|error| anyhow!("market server: {error}"))?;
    println!("market stopped; the ledger is at {}", ledger_path.display());
    Ok(())
}

/// Runs `cohortex market deposit`: the issuer credits `amount` to `to`, through the running
/// market's Ledger service.
pub async fn deposit(config_path: &Path, to: &str, amount: u64) -> anyhow::Result<()> {
    let config = MarketConfig::load(config_path)?;
    let to = keys::parse_account(to, "--to")?;
    if amount == 0 {
        anyhow::bail!("--amount must be at least 1");
    }
    let issuer = keys::read(
        &config.state_dir.join("issuer.key"),
        &format!("issuer.key (in state_dir {})", config.state_dir.display()),
    )?;
    let public = MarketPublic::load(&config.public_path(), "state_dir")?;
    let nonce = next_nonce(&public.endpoint, Some(&config.tls), &issuer)
        .await?
        .ok_or_else(|| anyhow!("the issuer is not registered on the market's ledger"))?;
    let envelope = sign_action(
        &issuer,
        public.chain_id,
        nonce,
        Action::Deposit { to, amount },
    )?;
    let result = LedgerClient::new(
        cohortex_client::link::connect(&public.endpoint, Some(&config.tls)).await?,
    )
    .submit_transaction(SignedTransaction { envelope })
    .await
    .map_err(|status| anyhow!("deposit to {to}: {}", status.message()))?
    .into_inner();
    println!(
        "deposited {amount} credits to {to} (ledger block {})",
        result.height
    );
    Ok(())
}
