//! `cohortex recruiter …`: blind feasibility search for clinical-trial recruiters (feature
//! `tfhe`). A recruiter is a buyer account (`cohortex buyer register`, credits from the
//! operator) with a TFHE key pair made by `cohortex recruiter keygen`. `feasibility` encrypts
//! the inclusion criteria under the recruiter's own key, so the market and the nodes never
//! read them, and prints each site's noisy count.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use cohortex_client::link::{connect, next_nonce};
use cohortex_client::Buyer;
use cohortex_proto::v1::market_client::MarketClient;
use cohortex_proto::v1::ListListingsRequest;
use compute_node::feasibility::Criterion;
use compute_node::recruitment::ContactKey;
use compute_node::Schema;
use market::AccountId;
use zeroize::Zeroizing;
use zk::fhe::{EvaluationKey, FheSecretKey};

use crate::config::{BuyerConfig, MarketPublic};
use crate::federation::spinner;
use cohortex_client::keys;

/// The secret key's file name in a recruiter key directory.
const SECRET_FILE: &str = "fhe-secret.key";
/// The evaluation key's file name in a recruiter key directory.
const EVALUATION_FILE: &str = "fhe-evaluation.key";
/// The contact key's file name (X25519 secret, for trial replies) in a recruiter key directory.
const CONTACT_FILE: &str = "contact.key";

/// `cohortex recruiter …`.
#[derive(Args, Debug)]
pub struct RecruiterCmd {
    #[command(subcommand)]
    command: RecruiterCommand,
}

#[derive(Subcommand, Debug)]
enum RecruiterCommand {
    /// Make a TFHE key pair in a new directory: the secret key (mode 0600, never leaves
    /// this machine) and the public evaluation key (about 30 MB) the nodes compute with.
    Keygen(KeygenArgs),
    /// Count, per site, the consenting patients who meet confidential inclusion criteria:
    /// the criteria are encrypted under your TFHE key; each site adds noise and applies its
    /// minimum cohort under encryption, and only you decrypt.
    Feasibility(FeasibilityArgs),
    /// Post a trial on the ledger for recruitment: patients who consent to
    /// trial_recruitment on its listings see it; those who accept leave a contact that you
    /// can open only if they meet the encrypted criteria.
    Invite(InviteArgs),
    /// Read a trial's replies: the contacts of the matching patients who accepted.
    Replies(RepliesArgs),
}

#[derive(Args, Debug)]
struct InviteArgs {
    /// The recruiter's buyer config (key_file, market, tls).
    #[arg(long, value_name = "buyer.toml")]
    config: PathBuf,
    /// The directory `cohortex recruiter keygen` made.
    #[arg(long, value_name = "DIR")]
    fhe_keys: PathBuf,
    /// The trial's id on the ledger (letters, digits, `.`, `-`, `_`; at most 64).
    #[arg(long)]
    trial: String,
    /// What patients read before they accept.
    #[arg(long)]
    summary: String,
    /// One inclusion criterion; repeat for several (the forms of `feasibility`).
    #[arg(long = "criterion", value_name = "CRITERION", required = true)]
    criteria: Vec<String>,
    /// A listing to invite from; repeat for several (default: every listing that allows
    /// trial_recruitment).
    #[arg(long = "listing", value_name = "LISTING")]
    listings: Vec<String>,
    /// Days the trial takes replies.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=366))]
    days: u64,
}

#[derive(Args, Debug)]
struct RepliesArgs {
    /// The recruiter's buyer config (key_file, market, tls).
    #[arg(long, value_name = "buyer.toml")]
    config: PathBuf,
    /// The directory `cohortex recruiter keygen` made.
    #[arg(long, value_name = "DIR")]
    fhe_keys: PathBuf,
    /// The trial id.
    #[arg(long)]
    trial: String,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct KeygenArgs {
    /// The directory to create (refused if it exists).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct FeasibilityArgs {
    /// The recruiter's buyer config (key_file, market, tls, epsilon_per_query).
    #[arg(long, value_name = "buyer.toml")]
    config: PathBuf,
    /// The directory `cohortex recruiter keygen` made.
    #[arg(long, value_name = "DIR")]
    fhe_keys: PathBuf,
    /// One inclusion criterion; repeat for several (all must hold). Forms:
    /// "age 40..65 step 5" (a range on a public grid), "sex in female",
    /// "conditions has E11 among E10,E11,I10,J45" (codes among public decoys).
    #[arg(long = "criterion", value_name = "CRITERION", required = true)]
    criteria: Vec<String>,
    /// A listing to search; repeat for several (default: every listing that allows
    /// trial_feasibility).
    #[arg(long = "listing", value_name = "LISTING")]
    listings: Vec<String>,
    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

/// Runs `cohortex recruiter …`.
pub async fn run(command: RecruiterCmd) -> anyhow::Result<()> {
    match command.command {
        RecruiterCommand::Keygen(args) => keygen(&args.out),
        RecruiterCommand::Feasibility(args) => feasibility(args).await,
        RecruiterCommand::Invite(args) => invite(args).await,
        RecruiterCommand::Replies(args) => replies(args).await,
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    cohortex_types::private_file::create_new_private(path)
        .and_then(|mut file| file.write_all(bytes))
        .with_context(|| format!("writing {}", path.display()))
}

fn keygen(out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        bail!(
            "{} already exists; cohortex never overwrites a key (remove it or pick another --out)",
            out.display()
        );
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let bar = spinner("generating a TFHE key pair", false);
    let started = std::time::Instant::now();
    let secret = FheSecretKey::generate();
    let evaluation = secret.evaluation_key().to_bytes();
    bar.finish_and_clear();
    write_private(&out.join(SECRET_FILE), &secret.to_bytes())?;
    let contact = ContactKey::generate(&mut rand::rngs::OsRng);
    write_private(&out.join(CONTACT_FILE), contact.secret_bytes().as_slice())?;
    std::fs::write(out.join(EVALUATION_FILE), &evaluation)
        .with_context(|| format!("writing {}", out.join(EVALUATION_FILE).display()))?;
    println!(
        "TFHE keys in {} ({:.1} s)\n  secret key      {} (mode 0600; never share it)\n  contact key     {} (mode 0600; opens trial replies)\n  evaluation key  {} ({:.1} MB; the nodes compute with it)\n  fingerprint     {}",
        out.display(),
        started.elapsed().as_secs_f64(),
        out.join(SECRET_FILE).display(),
        out.join(CONTACT_FILE).display(),
        out.join(EVALUATION_FILE).display(),
        evaluation.len() as f64 / 1e6,
        hex::encode(EvaluationKey::fingerprint_of(&evaluation)),
    );
    Ok(())
}

fn read_keys(dir: &Path) -> anyhow::Result<(FheSecretKey, Vec<u8>)> {
    let secret_path = dir.join(SECRET_FILE);
    match cohortex_types::private_file::check_owner_only(&secret_path) {
        Ok(()) => {}
        Err(error @ cohortex_types::private_file::PrivateFileError::Unreadable { .. }) => {
            return Err(anyhow::Error::new(error).context(format!(
                "--fhe-keys: cannot read {} (make the keys with `cohortex recruiter keygen --out {}`)",
                secret_path.display(),
                dir.display()
            )))
        }
        Err(error) => bail!("--fhe-keys: {error}"),
    }
    let bytes = Zeroizing::new(
        std::fs::read(&secret_path)
            .with_context(|| format!("reading {}", secret_path.display()))?,
    );
    let secret = FheSecretKey::from_bytes(&bytes)
        .map_err(|error| anyhow!("--fhe-keys: {}: {error}", secret_path.display()))?;
    let evaluation_path = dir.join(EVALUATION_FILE);
    let evaluation = std::fs::read(&evaluation_path)
        .with_context(|| format!("--fhe-keys: reading {}", evaluation_path.display()))?;
    EvaluationKey::from_bytes(&evaluation)
        .map_err(|error| anyhow!("--fhe-keys: {}: {error}", evaluation_path.display()))?;
    Ok((secret, evaluation))
}

async fn feasibility(args: FeasibilityArgs) -> anyhow::Result<()> {
    let (secret, evaluation) = read_keys(&args.fhe_keys)?;
    let (recruiter, public, config) = recruiter(&args.config).await?;
    let (listing_ids, criteria) = listings_and_criteria(
        &public,
        &config,
        "trial_feasibility",
        &args.listings,
        &args.criteria,
    )
    .await?;
    let bar = spinner(
        "storing the evaluation key, then each site counts under encryption",
        args.json,
    );
    let release = recruiter
        .feasibility(
            &secret,
            &evaluation,
            &criteria,
            &listing_ids,
            config.epsilon_micro,
            &public.ledger_key,
        )
        .await;
    bar.finish_and_clear();
    let release = release?;
    if args.json {
        let sites: Vec<serde_json::Value> = release
            .sites
            .iter()
            .map(|site| {
                serde_json::json!({
                    "listing": site.listing,
                    "noisy_count": site.noisy_count,
                    "suppressed": site.noisy_count.is_none(),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "sites": sites,
                "epsilon_spent": release.epsilon_micro as f64 / 1e6,
                "receipt": {
                    "id": hex::encode(release.receipt.0.as_bytes()),
                    "verified": release.receipt_verified,
                },
                "order": hex::encode(release.order.0.as_bytes()),
            })
        );
        return Ok(());
    }
    println!("  {:<28} {:>12}", "site", "noisy count");
    for site in &release.sites {
        match site.noisy_count {
            Some(count) => println!("  {:<28} {:>12}", site.listing, count),
            None => println!("  {:<28} {:>12}", site.listing, "suppressed"),
        }
    }
    println!();
    println!(
        "each count carries discrete-Laplace noise at ε = {} (a site below its minimum cohort reads `suppressed`)",
        release.epsilon_micro as f64 / 1e6
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
    Ok(())
}

/// The contact key of a recruiter key directory (made when missing: directories from before
/// trial recruitment have none).
fn contact_key(dir: &Path) -> anyhow::Result<ContactKey> {
    let path = dir.join(CONTACT_FILE);
    if !path.exists() {
        let contact = ContactKey::generate(&mut rand::rngs::OsRng);
        write_private(&path, contact.secret_bytes().as_slice())?;
        return Ok(contact);
    }
    let bytes = Zeroizing::new(
        std::fs::read(&path).with_context(|| format!("--fhe-keys: reading {}", path.display()))?,
    );
    ContactKey::from_secret_bytes(&bytes)
        .map_err(|error| anyhow!("--fhe-keys: {}: {error}", path.display()))
}

/// The listings to search (`wanted`, or every active listing allowing `purpose`) and the
/// criteria parsed against the first one's manifest.
async fn listings_and_criteria(
    public: &MarketPublic,
    config: &BuyerConfig,
    purpose: &str,
    wanted: &[String],
    texts: &[String],
) -> anyhow::Result<(Vec<String>, Vec<Criterion>)> {
    let offered = MarketClient::new(connect(&public.endpoint, Some(&config.tls)).await?)
        .max_decoding_message_size(market::server::MAX_MESSAGE_BYTES)
        .list_listings(ListListingsRequest {
            purpose: purpose.into(),
        })
        .await
        .map_err(|status| anyhow!("listing the market's listings: {}", status.message()))?
        .into_inner()
        .listings;
    let chosen = if wanted.is_empty() {
        offered
    } else {
        wanted
            .iter()
            .map(|id| {
                offered
                    .iter()
                    .find(|listing| &listing.id == id)
                    .cloned()
                    .ok_or_else(|| {
                        anyhow!("--listing {id}: no active listing of that id allows {purpose}")
                    })
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let Some(first) = chosen.first() else {
        bail!("the market has no active listing that allows {purpose}");
    };
    let schema = Schema::from_toml(&first.manifest, &first.id)
        .map_err(|error| anyhow!("listing {}: manifest: {error}", first.id))?;
    let criteria = texts
        .iter()
        .map(|text| {
            Criterion::parse(text, &schema).map_err(|error| anyhow!("--criterion: {error}"))
        })
        .collect::<Result<_, _>>()?;
    Ok((
        chosen.into_iter().map(|listing| listing.id).collect(),
        criteria,
    ))
}

/// The recruiter's key, config and a connected [`Buyer`].
async fn recruiter(config: &Path) -> anyhow::Result<(Buyer, MarketPublic, BuyerConfig)> {
    let config = BuyerConfig::load(config)?;
    let key = keys::read(
        &config.key_file,
        &format!("{}: key_file", config.path.display()),
    )?;
    let public = MarketPublic::load(
        &config.market,
        &format!("{}: market", config.path.display()),
    )?;
    let account = AccountId::of(&key);
    let nonce = next_nonce(&public.endpoint, Some(&config.tls), &key)
        .await?
        .ok_or_else(|| {
            anyhow!("account {account} is not registered; run `cohortex buyer register` first")
        })?;
    let buyer = Buyer::new(key, public.chain_id, public.endpoint.clone(), nonce)
        .with_tls(Some(config.tls.clone()));
    Ok((buyer, public, config))
}

async fn invite(args: InviteArgs) -> anyhow::Result<()> {
    let (secret, evaluation) = read_keys(&args.fhe_keys)?;
    let contact = contact_key(&args.fhe_keys)?;
    let (buyer, public, config) = recruiter(&args.config).await?;
    let (listing_ids, criteria) = listings_and_criteria(
        &public,
        &config,
        "trial_recruitment",
        &args.listings,
        &args.criteria,
    )
    .await?;
    let bar = spinner("storing the evaluation key and posting the trial", false);
    let posted = buyer
        .post_trial(
            (&args.trial, &args.summary),
            &contact.public(),
            &secret,
            &evaluation,
            &criteria,
            &listing_ids,
            args.days,
        )
        .await;
    bar.finish_and_clear();
    let posted = posted?;
    println!(
        "trial {} posted to {} listing(s) for {} days (transaction {})",
        args.trial,
        listing_ids.len(),
        args.days,
        hex::encode(posted.0.as_bytes())
    );
    println!(
        "patients who consent to trial_recruitment see it with `cohortex patient invitations`; \
         read replies with `cohortex recruiter replies --trial {}`",
        args.trial
    );
    Ok(())
}

async fn replies(args: RepliesArgs) -> anyhow::Result<()> {
    let (secret, _) = read_keys(&args.fhe_keys)?;
    let contact = contact_key(&args.fhe_keys)?;
    let (buyer, _, _) = recruiter(&args.config).await?;
    let bar = spinner("reading and decrypting the replies", args.json);
    let replies = buyer.trial_replies(&args.trial, &secret, &contact).await;
    bar.finish_and_clear();
    let replies = replies?;
    let matching: Vec<_> = replies
        .iter()
        .filter_map(|reply| reply.contact.as_ref().map(|contact| (reply, contact)))
        .collect();
    let not_matching = replies.len() - matching.len();
    if args.json {
        let contacts: Vec<serde_json::Value> = matching
            .iter()
            .map(|(reply, contact)| {
                serde_json::json!({
                    "listing": reply.listing,
                    "contact": contact,
                    "reply": hex::encode(reply.reply_hash.as_bytes()),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "trial": args.trial,
                "replies": replies.len(),
                "matching": contacts,
                "not_matching": not_matching,
            })
        );
        return Ok(());
    }
    println!("trial {}: {} repl(ies)", args.trial, replies.len());
    for (reply, contact) in &matching {
        println!("  {:<28} {contact}", reply.listing);
    }
    println!(
        "{} matching patient(s) left a contact; {not_matching} accepted but do not meet the criteria \
         (their contacts stay sealed)",
        matching.len()
    );
    Ok(())
}
