//! `cohortex patient …`: a patient's own commands through the market's Consent service. Every
//! grant and revocation is a ledger transaction signed with the patient's key; listing
//! consents and earnings is a request signed with it.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
#[cfg(feature = "tfhe")]
use anyhow::bail;
use clap::{Args, Subcommand};
use cohortex_client::keys;
#[cfg(feature = "tfhe")]
use cohortex_client::recruiter as recruiter_client;
use cohortex_client::{ConsentGrant, MarketPublic, Patient};
use market::ListingId;

use crate::config::PatientConfig;

#[derive(Args, Debug)]
pub struct PatientCmd {
    /// The patient's config file (key_file, market).
    #[arg(long, value_name = "patient.toml", global = true)]
    config: Option<PathBuf>,
    /// Use this key file instead of the config's key_file (one config for many patients).
    #[arg(long, value_name = "FILE", global = true)]
    key: Option<PathBuf>,
    #[command(subcommand)]
    command: PatientCommand,
}

#[derive(Subcommand, Debug)]
enum PatientCommand {
    /// Register the key's account as a patient on the market's ledger.
    Register,
    /// Consent to a listing's use of your record for one purpose.
    Consent(ConsentArgs),
    /// Revoke a consent; it holds for every query not yet computed.
    Revoke(RevokeArgs),
    /// List your consents.
    Consents,
    /// Show your balance, and what you were paid and donated.
    Earnings,
    /// List the clinical trials inviting patients of listings where you consent to
    /// trial_recruitment.
    #[cfg(feature = "tfhe")]
    Invitations,
    /// Accept a trial's invitation: your contact is sealed to the recruiter, who can open it
    /// only if your record meets the trial's (encrypted) criteria.
    #[cfg(feature = "tfhe")]
    Accept(AcceptArgs),
}

#[cfg(feature = "tfhe")]
#[derive(Args, Debug)]
struct AcceptArgs {
    /// The trial id (as `cohortex patient invitations` shows it).
    #[arg(long)]
    trial: String,
    /// The listing holding your record (default: the trial's only listing you consent to
    /// trial_recruitment on).
    #[arg(long)]
    listing: Option<String>,
    /// How the recruiter may reach you (an e-mail address or phone number; at most 1024 bytes).
    #[arg(long)]
    contact: String,
}

#[derive(Args, Debug)]
struct ConsentArgs {
    /// The listing id (as the node published it).
    #[arg(long)]
    listing: String,
    /// academic_research, commercial_research, trial_feasibility or trial_recruitment.
    #[arg(long)]
    purpose: String,
    /// Donate your share of each query to the market's research fund instead of being paid.
    #[arg(long)]
    donate: bool,
    /// Let the consent lapse after this many days (default: until revoked).
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u64).range(1..=36_500))]
    expires_in_days: Option<u64>,
    /// Your personal privacy limit on this listing: queries may use your record only while
    /// the total ε spent on it stays within this (default: only the listing's budget).
    #[arg(long, value_name = "EPSILON", value_parser = crate::parse_epsilon)]
    epsilon_limit: Option<f64>,
}

#[derive(Args, Debug)]
struct RevokeArgs {
    /// The listing id.
    #[arg(long)]
    listing: String,
    /// The purpose consented to.
    #[arg(long)]
    purpose: String,
}

/// The patient named by `patient.toml` (or `--key`), as a client of its market.
fn load(config: &Path, key_override: Option<&Path>) -> anyhow::Result<Patient> {
    let config = PatientConfig::load(config)?;
    let (key_path, field) = match key_override {
        Some(path) => (path.to_path_buf(), "--key".to_string()),
        None => (
            config.key_file.clone(),
            format!("{}: key_file", config.path.display()),
        ),
    };
    let key = keys::read(&key_path, &field)?;
    let public = MarketPublic::load(
        &config.market,
        &format!("{}: market", config.path.display()),
    )?;
    Ok(Patient::of_market(key, &public, config.tls))
}

fn purpose(name: &str) -> anyhow::Result<market::Purpose> {
    market::server::purpose_field(name, "--purpose")
        .map_err(|status| anyhow!("{}", status.message()))
}

/// Runs `cohortex patient …`.
pub async fn run(command: PatientCmd) -> anyhow::Result<()> {
    let config = command.config.clone().ok_or_else(|| {
        anyhow!("--config patient.toml is required (it names key_file and market)")
    })?;
    let patient = load(&config, command.key.as_deref())?;
    let account = patient.account();
    match command.command {
        PatientCommand::Register => {
            let height = patient.register().await?;
            println!("registered patient {account} (ledger block {height})");
        }
        PatientCommand::Consent(args) => {
            let height = patient
                .grant(&ConsentGrant {
                    listing: ListingId::new(args.listing.clone()),
                    purpose: purpose(&args.purpose)?,
                    donate: args.donate,
                    expires_in_days: args.expires_in_days,
                    epsilon_limit: args.epsilon_limit,
                })
                .await?;
            println!(
                "patient {account} consents to listing {} for {}{}, {} (ledger block {})",
                args.listing,
                args.purpose,
                args.expires_in_days
                    .map_or(String::new(), |days| format!(" for {days} days")),
                if args.donate {
                    "donating their share to the research fund"
                } else {
                    "paid to their own account"
                },
                height
            );
        }
        PatientCommand::Revoke(args) => {
            let listing = ListingId::new(args.listing.clone());
            let height = patient.revoke(&listing, purpose(&args.purpose)?).await?;
            println!(
                "patient {account} revoked consent to listing {} for {} (ledger block {}); \
                 no query computed from now on counts them",
                args.listing, args.purpose, height
            );
        }
        PatientCommand::Consents => {
            let response = patient.consents().await?;
            println!(
                "consents of patient {account} (ledger height {}):",
                response.height
            );
            if response.consents.is_empty() {
                println!("  none");
            }
            for consent in response.consents {
                let payout = if consent.donate_to.is_empty() {
                    "paid".to_string()
                } else {
                    format!("donated to {}", hex::encode(&consent.donate_to))
                };
                let state = match (consent.active, consent.revoked_at) {
                    (true, _) => "active".to_string(),
                    (false, Some(at)) => format!("revoked at {at}"),
                    (false, None) => "expired".to_string(),
                };
                let privacy = match consent.epsilon_limit_micro {
                    Some(limit) => format!(
                        "ε spent {:.2} of your limit {:.2}",
                        consent.epsilon_spent_micro as f64 / 1e6,
                        limit as f64 / 1e6
                    ),
                    None => format!(
                        "ε spent {:.2} (no personal limit)",
                        consent.epsilon_spent_micro as f64 / 1e6
                    ),
                };
                println!(
                    "  {:<28} {:<20} {:<16} {payout}; {privacy}",
                    consent.listing, consent.purpose, state
                );
            }
        }
        #[cfg(feature = "tfhe")]
        PatientCommand::Invitations => {
            let recruiting = patient.recruiting_listings().await?;
            let (trials, _) =
                recruiter_client::list_trials(patient.market(), Some(patient.tls())).await?;
            let mut shown = 0;
            for trial in trials {
                let yours: Vec<&str> = trial
                    .listings
                    .iter()
                    .map(|entry| entry.listing.as_str())
                    .filter(|listing| recruiting.iter().any(|mine| mine == listing))
                    .collect();
                if yours.is_empty() {
                    continue;
                }
                shown += 1;
                println!(
                    "trial {} (open until unix time {})",
                    trial.trial, trial.expires_at
                );
                println!("  {}", trial.summary);
                println!("  your listing(s): {}", yours.join(", "));
                println!(
                    "  accept: cohortex patient accept --trial {} --listing {} --contact <how to reach you>",
                    trial.trial, yours[0]
                );
            }
            if shown == 0 {
                println!(
                    "no open trial invites patients of a listing you consent to trial_recruitment on \
                     (cohortex patient consent --listing L --purpose trial_recruitment)"
                );
            } else {
                println!();
                println!(
                    "Accepting reveals your contact to the recruiter only if your record meets the \
                     trial's criteria; the market and the recruiter never learn who declined."
                );
            }
        }
        #[cfg(feature = "tfhe")]
        PatientCommand::Accept(args) => {
            let listing = match args.listing {
                Some(listing) => listing,
                None => {
                    let recruiting = patient.recruiting_listings().await?;
                    let (trials, _) =
                        recruiter_client::list_trials(patient.market(), Some(patient.tls()))
                            .await?;
                    let trial = trials
                        .iter()
                        .find(|trial| trial.trial == args.trial)
                        .ok_or_else(|| {
                            anyhow!("--trial {}: no such open trial at this market", args.trial)
                        })?;
                    let mut yours = trial
                        .listings
                        .iter()
                        .filter(|entry| recruiting.contains(&entry.listing));
                    match (yours.next(), yours.next()) {
                        (Some(only), None) => only.listing.clone(),
                        (None, _) => bail!(
                            "--trial {}: you consent to trial_recruitment on none of its listings",
                            args.trial
                        ),
                        (Some(_), Some(_)) => bail!(
                            "--trial {}: you consent on several of its listings; name one with --listing",
                            args.trial
                        ),
                    }
                }
            };
            let bar = crate::federation::spinner(
                "sealing your contact; the node checks your consent and evaluates the criteria \
                 under encryption",
                false,
            );
            let answer = recruiter_client::accept_trial(
                patient.market(),
                Some(patient.tls()),
                patient.key(),
                (&args.trial, &listing),
                &args.contact,
            )
            .await;
            bar.finish_and_clear();
            let answer = answer?;
            println!(
                "accepted trial {} for your record in listing {}; reply {} recorded on the ledger \
                 (transaction {})",
                args.trial,
                listing,
                hex::encode(&answer.reply_hash),
                hex::encode(&answer.tx_id)
            );
            println!(
                "The recruiter can read your contact only if your record meets the trial's criteria."
            );
        }
        PatientCommand::Earnings => {
            let earnings = patient.earnings().await?;
            println!("patient {account}");
            println!("  balance  {} credits", earnings.balance);
            println!("  paid     {} credits", earnings.paid);
            println!("  donated  {} credits", earnings.donated);
        }
    }
    Ok(())
}
