//! Reaching the market: a mutual-TLS channel to its endpoint, and an account's next ledger
//! nonce (`Ledger.GetAccount`).

use std::time::Duration;

use anyhow::{anyhow, Context};
use cohortex_proto::tls::{endpoint as link, TlsIdentity};
use cohortex_proto::v1::ledger_client::LedgerClient;
use cohortex_proto::v1::GetAccountRequest;
use ed25519_dalek::SigningKey;
use market::AccountId;
use tonic::transport::Channel;
use tonic::Code;

/// How long a connection attempt to the market may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connects to a market endpoint (`https://host:port`), presenting `tls`.
pub async fn connect(endpoint: &str, tls: Option<&TlsIdentity>) -> anyhow::Result<Channel> {
    link(endpoint, tls)
        .with_context(|| format!("market endpoint `{endpoint}`"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .with_context(|| format!("connecting to the market at {endpoint}"))
}

/// The next nonce the ledger accepts from `key`'s account, or `None` when the account is not
/// registered.
pub async fn next_nonce(
    endpoint: &str,
    tls: Option<&TlsIdentity>,
    key: &SigningKey,
) -> anyhow::Result<Option<u64>> {
    let account = AccountId::of(key);
    next_nonce_on(connect(endpoint, tls).await?, &account)
        .await
        .map_err(|status| anyhow!("reading account {account} from the ledger: {status}"))
}

/// [`next_nonce`] over an open channel to the market.
pub async fn next_nonce_on(
    channel: Channel,
    account: &AccountId,
) -> Result<Option<u64>, tonic::Status> {
    match LedgerClient::new(channel)
        .get_account(GetAccountRequest {
            account: account.0.to_vec(),
        })
        .await
    {
        Ok(record) => Ok(Some(record.into_inner().next_nonce)),
        Err(status) if status.code() == Code::NotFound => Ok(None),
        Err(status) => Err(status),
    }
}
