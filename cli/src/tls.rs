//! `cohortex tls ca` and `cohortex tls cert`: the federation's TLS authority and one
//! certificate per party, as PEM files. Keys are written mode 0600 and never overwritten.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use cohortex_proto::certs::Authority;
use zeroize::Zeroizing;

/// The authority's files in its directory.
const AUTHORITY_CERT: &str = "ca.crt";
const AUTHORITY_KEY: &str = "ca.key";

#[derive(Subcommand, Debug)]
pub enum TlsCommand {
    /// Make the federation's certificate authority: writes ca.crt (give it to every party) and
    /// ca.key (mode 0600; keep it offline) to --out-dir.
    Ca(CaArgs),
    /// Issue a party's certificate from the authority in --ca-dir: writes NAME.crt and
    /// NAME.key (mode 0600) to --out-dir.
    Cert(CertArgs),
}

#[derive(Args, Debug)]
pub struct CaArgs {
    /// Directory for ca.crt and ca.key (created if missing; existing files are refused).
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct CertArgs {
    /// The authority's directory (ca.crt and ca.key, from `cohortex tls ca`).
    #[arg(long, value_name = "DIR")]
    ca_dir: PathBuf,
    /// The party's name: the certificate's common name and the files' stem (market, node-1,
    /// buyer, …).
    #[arg(long)]
    name: String,
    /// A host name or IP address the party serves or dials under; repeat for more. Clients
    /// check a server's certificate against the host in the URL they dial.
    #[arg(long = "host", required = true, value_name = "HOST")]
    hosts: Vec<String>,
    /// Bind the certificate to this account (its Ed25519 public key, 64 hex digits, as
    /// `cohortex keygen` prints it): servers then refuse any request signed by another account
    /// over a link it authenticates. Without it, the certificate serves any account.
    #[arg(long, value_name = "HEX")]
    account: Option<String>,
    /// Directory for NAME.crt and NAME.key (created if missing; existing files are refused).
    #[arg(long, value_name = "DIR")]
    out_dir: PathBuf,
}

/// The account `--account` names.
fn parse_account(text: &str) -> anyhow::Result<[u8; 32]> {
    hex::decode(text.trim())
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
        .with_context(|| {
            format!(
                "--account `{text}` must be an account's public key: 64 hex digits, as \
                 `cohortex keygen` prints it"
            )
        })
}

/// Runs `cohortex tls …`.
pub fn run(command: TlsCommand) -> anyhow::Result<()> {
    match command {
        TlsCommand::Ca(args) => {
            let authority = Authority::generate().context("making the authority")?;
            let cert = args.out_dir.join(AUTHORITY_CERT);
            let key = args.out_dir.join(AUTHORITY_KEY);
            refuse_existing(&[&cert, &key])?;
            write_secret(&key, &authority.key_pem())?;
            write_public(&cert, authority.certificate_pem())?;
            println!("wrote {} and {} (mode 0600)", cert.display(), key.display());
            println!(
                "give {} to every party; keep the key offline",
                cert.display()
            );
        }
        TlsCommand::Cert(args) => {
            if args.name.is_empty()
                || !args
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                bail!(
                    "--name `{}` must be letters, digits, '-', '_' or '.' (it names the files)",
                    args.name
                );
            }
            let account = args.account.as_deref().map(parse_account).transpose()?;
            let ca_cert = read(&args.ca_dir.join(AUTHORITY_CERT), "--ca-dir")?;
            let ca_key = Zeroizing::new(read(&args.ca_dir.join(AUTHORITY_KEY), "--ca-dir")?);
            let authority = Authority::from_pem(&ca_cert, &ca_key)
                .with_context(|| format!("--ca-dir {}", args.ca_dir.display()))?;
            let issued = match &account {
                Some(account) => authority.issue_for_account(&args.name, &args.hosts, account),
                None => authority.issue(&args.name, &args.hosts),
            }
            .with_context(|| format!("--host {}", args.hosts.join(", ")))?;
            let cert = args.out_dir.join(format!("{}.crt", args.name));
            let key = args.out_dir.join(format!("{}.key", args.name));
            refuse_existing(&[&cert, &key])?;
            write_secret(&key, &issued.key_pem)?;
            write_public(&cert, &issued.certificate_pem)?;
            println!(
                "wrote {} for {} ({}) and {} (mode 0600)",
                cert.display(),
                args.name,
                args.hosts.join(", "),
                key.display()
            );
            if let Some(account) = &account {
                println!(
                    "bound to account {}: it serves no other",
                    hex::encode(account)
                );
            }
        }
    }
    Ok(())
}

fn read(path: &Path, field: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| {
        format!(
            "{field}: cannot read {} (make the authority with `cohortex tls ca --out-dir DIR`)",
            path.display()
        )
    })
}

fn refuse_existing(paths: &[&Path]) -> anyhow::Result<()> {
    for path in paths {
        if path.exists() {
            bail!(
                "{} already exists; cohortex never overwrites a certificate or key (remove it \
                 or pick another --out-dir)",
                path.display()
            );
        }
    }
    Ok(())
}

fn create_parent(path: &Path) -> anyhow::Result<()> {
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the directory {}", parent.display()))?;
    }
    Ok(())
}

fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    create_parent(path)?;
    let mut file = cohortex_types::private_file::create_new_private(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    file.sync_all()
        .with_context(|| format!("writing {}", path.display()))
}

fn write_public(path: &Path, text: &str) -> anyhow::Result<()> {
    create_parent(path)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn account_that_is_not_a_public_key_is_refused_naming_the_flag() {
        for bad in ["", "zz", &"ab".repeat(31), &"ab".repeat(33)] {
            let refused = parse_account(bad).unwrap_err().to_string();
            assert!(refused.starts_with("--account"), "{refused}");
            assert!(refused.contains("64 hex digits"), "{refused}");
        }
        assert_eq!(parse_account(&"0a".repeat(32)).unwrap(), [0x0a; 32]);
    }
}
