//! `cohortex node serve`: one compute node as its own process. It ingests its data file into a
//! vault (reporting every rejected row), serves the Compute service, publishes its listing
//! through the market (which tells the coordinator where it answers), and serves until
//! stopped. The key ceremony is the market's to start, once every member has published.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use backon::BackoffBuilder as _;
use cohortex_coordinator::standalone::{publish_listing, ListingPublication};
use compute_node::fhir::ProvenancePolicy;
use compute_node::follower::PinnedLedger;
use compute_node::ingest::{ingest_fhir, ingest_table};
use compute_node::protocol::{CommitteeSeat, PinnedCommittee};
use compute_node::server::serve as serve_node;
use compute_node::server::{NodeConfig as ServiceConfig, NodeService};
use compute_node::{Schema, Vault};
use market::{AccountId, Compensation, ListingTerms};
use tokio::net::TcpListener;
use zk::MemberIndex;

use crate::config::{DataSource, MarketPublic, NodeConfig};
use crate::federation::spinner;
use crate::market_process::shutdown_signal;
use cohortex_client::keys;

/// How long a starting node keeps trying to reach the market.
const MARKET_WAIT: Duration = Duration::from_secs(60);

/// Ingests the data file into a fresh vault and saves it in `vault_dir`.
fn build_vault(config: &NodeConfig) -> anyhow::Result<Vault> {
    let (vault, report) = match &config.data {
        DataSource::Table { file, manifest } => {
            let schema = Schema::from_path(manifest)
                .map_err(|error| anyhow!("{}: data.manifest: {error}", config.path.display()))?;
            let mut vault = Vault::new(schema);
            let report = ingest_table(file, &mut vault)
                .map_err(|error| anyhow!("{}: data.file: {error}", config.path.display()))?;
            (vault, report)
        }
        DataSource::Fhir {
            path,
            reference_date,
        } => {
            let mut vault = Vault::new(Schema::fhir());
            let report = ingest_fhir(
                path,
                &mut vault,
                reference_date,
                &ProvenancePolicy::default(),
            )
            .map_err(|error| anyhow!("{}: data.file: {error}", config.path.display()))?;
            (vault, report)
        }
    };
    for rejected in &report.rejected {
        eprintln!("warning: row not ingested: {rejected}");
    }
    for dropped in &report.dropped {
        eprintln!("warning: value dropped: {dropped}");
    }
    if report.accepted == 0 {
        bail!(
            "{}: no row could be ingested (see the warnings above)",
            config.data.path().display()
        );
    }
    let keyless = vault
        .records()
        .iter()
        .filter(|record| record.patient_key.is_none())
        .count();
    if vault.schema().key_column.is_none() {
        let manifest = match &config.data {
            DataSource::Table { manifest, .. } => manifest.display().to_string(),
            DataSource::Fhir { .. } => "the FHIR schema".to_string(),
        };
        eprintln!(
            "warning: {manifest} declares no key_column, so no patient of this vault can \
             consent; add a column with each patient's account id"
        );
    } else if keyless > 0 {
        eprintln!(
            "warning: {keyless} row(s) have an empty {} and can never consent",
            vault.schema().key_column.as_deref().unwrap_or("key column")
        );
    }
    vault
        .save(&config.vault_dir)
        .map_err(|error| anyhow!("vault_dir: {error}"))?;
    tracing::info!(
        accepted = report.accepted,
        rejected = report.rejected.len(),
        vault = %config.vault_dir.display(),
        "ingested"
    );
    println!(
        "ingested {} patient(s) from {} into the vault {} ({} row(s) rejected)",
        report.accepted,
        config.data.path().display(),
        config.vault_dir.display(),
        report.rejected.len()
    );
    Ok(vault)
}

/// Runs `cohortex node serve`.
pub async fn serve(config_path: &Path) -> anyhow::Result<()> {
    let config = NodeConfig::load(config_path)?;
    let key = keys::read(
        &config.key_file,
        &format!("{}: key_file", config.path.display()),
    )?;
    let account = AccountId::of(&key);
    let position = usize::from(config.member) - 1;
    if config.members[position] != account {
        bail!(
            "{}: committee.member = {} names {}, but key_file holds account {account}; \
             the member index is this node's position in committee.members (1-based)",
            config.path.display(),
            config.member,
            config.members[position]
        );
    }
    let member = MemberIndex::new(config.member)
        .ok_or_else(|| anyhow!("{}: committee.member must be ≥ 1", config.path.display()))?;
    let public = MarketPublic::load(
        &config.market,
        &format!("{}: market", config.path.display()),
    )?;

    let vault = Arc::new(build_vault(&config)?);
    let manifest = vault.schema().to_toml();

    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("{}: listen = {}", config.path.display(), config.listen))?;
    let bound = listener.local_addr().context("reading the bound address")?;
    // This node's endpoint is the one its own committee list pins for it: the others deliver
    // their key shares there.
    let endpoint = config.endpoints[position].clone();
    if let Some(advertise) = &config.advertise {
        if advertise.trim_end_matches('/') != endpoint.trim_end_matches('/') {
            bail!(
                "{}: advertise = \"{advertise}\" differs from this node's own entry in \
                 committee.endpoints (\"{endpoint}\"); the committee list is what peers use",
                config.path.display()
            );
        }
    }
    tracing::debug!(%bound, %endpoint, "compute service bound");
    let mut seats = Vec::with_capacity(config.members.len());
    for (index, (account, seat_endpoint)) in
        config.members.iter().zip(&config.endpoints).enumerate()
    {
        seats.push(CommitteeSeat {
            member: MemberIndex::new(index as u16 + 1)
                .ok_or_else(|| anyhow!("committee member index"))?,
            account: *account,
            endpoint: seat_endpoint.clone(),
        });
    }
    let committee = PinnedCommittee::new(config.threshold, seats)
        .map_err(|error| anyhow!("{}: committee: {error}", config.path.display()))?;
    let service = NodeService::new(
        Arc::clone(&vault),
        ServiceConfig {
            listing: config.listing.id.clone(),
            account: key.clone(),
            member,
            coordinator: public.coordinator,
            committee,
            ledger: PinnedLedger {
                chain_id: public.chain_id,
                ledger_key: public.ledger_key,
            },
            market_endpoint: public.endpoint.clone(),
            tls: Some(config.tls.clone()),
            key_share_file: Some(key_share_path(&config)),
            fault: None,
        },
    )
    .map_err(|error| anyhow!("{}: committee: {error}", config.path.display()))?;
    let follower = service.follower();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving_tls = config.tls.clone();
    let server = tokio::spawn(async move {
        serve_node(service, listener, Some(&serving_tls), async {
            let _ = stopped.await;
        })
        .await
    });

    let terms = ListingTerms {
        price_per_query: config.listing.price_per_query,
        allowed_purposes: config.listing.purposes.clone(),
        min_cohort_size: config.listing.min_cohort_size,
        epsilon_budget_micro: config.listing.epsilon_budget_micro,
        max_epsilon_per_order_micro: config.listing.max_epsilon_per_order_micro,
        compensation: if config.listing.donation {
            Compensation::Donation { fund: public.fund }
        } else {
            Compensation::Payment
        },
    };
    let bar = spinner(
        &format!(
            "publishing listing {} at {}",
            config.listing.id, public.endpoint
        ),
        false,
    );
    // An unreachable market is waited for, with growing pauses, for MARKET_WAIT in all; a
    // refusal is final.
    let mut pauses = backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .with_total_delay(Some(MARKET_WAIT))
        .build();
    let published = loop {
        let attempt = publish_listing(
            &public.endpoint,
            Some(&config.tls),
            &key,
            public.chain_id,
            ListingPublication {
                listing: &config.listing.id,
                manifest: manifest.clone(),
                terms: terms.clone(),
                node_endpoint: endpoint.clone(),
            },
        )
        .await;
        let error = match attempt {
            Ok(result) => break Some(result),
            Err(error) => error,
        };
        if error.is_unreachable() {
            if let Some(pause) = pauses.next() {
                tracing::debug!(%error, ?pause, "market not reachable yet");
                tokio::time::sleep(pause).await;
                continue;
            }
        }
        if error.already_published()
            && already_ours(
                &follower,
                &public.endpoint,
                &config.tls,
                &config.listing.id,
                &key,
                &manifest,
            )
            .await
        {
            // A restart: the listing is on the ledger already, this node's own and for the
            // same manifest. The market kept its endpoint, the node its key share.
            tracing::info!(listing = %config.listing.id, "listing already published by this node; serving it again");
            break None;
        }
        bar.finish_and_clear();
        let _ = stop.send(());
        if error.already_published() {
            return Err(anyhow::Error::new(error).context(format!(
                "listing {} is already on this market's ledger, from an earlier run: a node \
                 cannot yet re-announce a published listing, so give [listing] id a new value \
                 or start the market with a fresh state_dir",
                config.listing.id
            )));
        }
        if error.is_unreachable() {
            return Err(anyhow::Error::new(error).context(format!(
                "the market did not answer within {} s",
                MARKET_WAIT.as_secs()
            )));
        }
        return Err(error.into());
    };
    bar.finish_and_clear();
    println!(
        "node {account} (committee member {}) serving compute at {endpoint}",
        config.member
    );
    match published {
        Some(published) => {
            tracing::info!(listing = %config.listing.id, height = published.height, "listing published");
            println!(
                "  listing {} published on the ledger (block {}); {} patient(s) in the vault",
                config.listing.id,
                published.height,
                vault.len()
            );
        }
        None => println!(
            "  listing {} was published by an earlier run; serving it again; {} patient(s) in \
             the vault",
            config.listing.id,
            vault.len()
        ),
    }
    println!("Press Ctrl-C to stop.");

    tokio::select! {
        () = shutdown_signal() => {
            let _ = stop.send(());
        }
        finished = server => {
            finished
                .context("node server task")?
                .map_err(|error| anyhow!("node server: {error}"))?;
            bail!("the node server stopped");
        }
    }
    println!("node stopped");
    Ok(())
}

/// Where the node keeps its key share: beside its vault directory.
fn key_share_path(config: &NodeConfig) -> std::path::PathBuf {
    config
        .vault_dir
        .parent()
        .map_or_else(|| Path::new(".").to_path_buf(), Path::to_path_buf)
        .join("key-share")
}

/// Whether the ledger (as this node verifies it) already holds `listing`, published by this
/// node's account for this manifest: then a refused publication is a restart, not a clash.
async fn already_ours(
    follower: &compute_node::follower::LedgerFollower,
    market: &str,
    tls: &cohortex_proto::tls::TlsIdentity,
    listing: &str,
    key: &ed25519_dalek::SigningKey,
    manifest: &str,
) -> bool {
    let Ok(channel) = cohortex_client::link::connect(market, Some(tls)).await else {
        return false;
    };
    let id = market::ListingId::new(listing);
    let owner = AccountId::of(key);
    let expected = market::hash::manifest_hash(manifest);
    follower
        .sync_and_read(channel, |machine| {
            machine
                .state()
                .listing(&id)
                .is_some_and(|found| found.owner == owner && found.schema_hash == expected)
        })
        .await
        .unwrap_or(false)
}
