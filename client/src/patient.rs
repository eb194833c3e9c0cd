//! The patient's side, through the market's Consent service: registering, granting and
//! revoking consent (ledger transactions signed with the patient's key), and reading their
//! consents and earnings (requests signed with it). The CLI (`cohortex patient …`) and the
//! Python `Patient` are both this client.

use anyhow::{anyhow, bail};
use cohortex_proto::methods::consent::{LIST_CONSENTS, LIST_EARNINGS};
use cohortex_proto::tls::TlsIdentity;
use cohortex_proto::v1::consent_client::ConsentClient;
use cohortex_proto::v1::{
    Earnings, ListConsentsRequest, ListConsentsResponse, ListEarningsRequest, SignedTransaction,
};
use cohortex_types::auth::{signed_request, unix_now};
use cohortex_types::ids::purpose_name;
use ed25519_dalek::SigningKey;
use market::tx::sign_action;
use market::{AccountId, Action, Hash32, ListingId, PayoutChoice, Purpose, Role};
use tonic::transport::Channel;

use crate::link::{connect, next_nonce};
use crate::public::MarketPublic;

/// A patient: their account key and the market that keeps their consents.
#[derive(Clone)]
pub struct Patient {
    key: SigningKey,
    market: String,
    tls: TlsIdentity,
    chain_id: Hash32,
    /// Where donated shares go, when the market named its fund.
    fund: Option<AccountId>,
}

/// A consent to grant ([`Patient::grant`]).
#[derive(Clone, Debug)]
pub struct ConsentGrant {
    /// The listing that holds the patient's record.
    pub listing: ListingId,
    /// The purpose consented to.
    pub purpose: Purpose,
    /// Whether the patient's share goes to the market's research fund instead of to them.
    pub donate: bool,
    /// Days until the consent lapses by itself; `None` keeps it until revoked.
    pub expires_in_days: Option<u64>,
    /// The patient's own ε limit over every order that names them on this listing.
    pub epsilon_limit: Option<f64>,
}

impl Patient {
    /// A patient of the market at `market` (`https://host:port`) on chain `chain_id`.
    pub fn new(
        key: SigningKey,
        market: String,
        tls: TlsIdentity,
        chain_id: Hash32,
        fund: Option<AccountId>,
    ) -> Self {
        Self {
            key,
            market,
            tls,
            chain_id,
            fund,
        }
    }

    /// A patient of the market that `public` describes.
    pub fn of_market(key: SigningKey, public: &MarketPublic, tls: TlsIdentity) -> Self {
        Self::new(
            key,
            public.endpoint.clone(),
            tls,
            public.chain_id,
            Some(public.fund),
        )
    }

    /// The patient's account.
    pub fn account(&self) -> AccountId {
        AccountId::of(&self.key)
    }

    /// The patient's signing key (it signs trial acceptances too).
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Where donated shares go, if this client knows the market's research fund.
    pub fn fund(&self) -> Option<AccountId> {
        self.fund
    }

    /// The market's endpoint.
    pub fn market(&self) -> &str {
        &self.market
    }

    /// The identity presented to the market.
    pub fn tls(&self) -> &TlsIdentity {
        &self.tls
    }

    async fn consent_service(&self) -> anyhow::Result<ConsentClient<Channel>> {
        Ok(ConsentClient::new(
            connect(&self.market, Some(&self.tls)).await?,
        ))
    }

    /// `action` signed at the account's next nonce.
    async fn signed(&self, action: Action) -> anyhow::Result<SignedTransaction> {
        let nonce = next_nonce(&self.market, Some(&self.tls), &self.key)
            .await?
            .ok_or_else(|| {
                anyhow!(
                    "account {} is not registered as a patient; register it first \
                     (`cohortex patient register`, or `Patient.register()` in Python)",
                    self.account()
                )
            })?;
        Ok(SignedTransaction {
            envelope: sign_action(&self.key, self.chain_id, nonce, action)?,
        })
    }

    /// Registers the account as a patient; returns the ledger height.
    pub async fn register(&self) -> anyhow::Result<u64> {
        let account = self.account();
        let envelope = sign_action(
            &self.key,
            self.chain_id,
            0,
            Action::RegisterAccount {
                account,
                role: Role::Patient,
            },
        )?;
        let result = self
            .consent_service()
            .await?
            .register(SignedTransaction { envelope })
            .await
            .map_err(|status| anyhow!("registering {account}: {}", status.message()))?;
        Ok(result.into_inner().height)
    }

    /// Grants a consent; returns the ledger height.
    pub async fn grant(&self, grant: &ConsentGrant) -> anyhow::Result<u64> {
        let payout = if grant.donate {
            PayoutChoice::DonateTo {
                fund: self.fund.ok_or_else(|| {
                    anyhow!(
                        "donate: this client knows no research fund; give it the market's \
                         public.toml"
                    )
                })?,
            }
        } else {
            PayoutChoice::ToPatient
        };
        let epsilon_limit_micro = grant.epsilon_limit.map(epsilon_limit_micro).transpose()?;
        let transaction = self
            .signed(Action::GrantConsent {
                patient: self.account(),
                listing: grant.listing.clone(),
                purpose: grant.purpose,
                expires_at: grant
                    .expires_in_days
                    .map(|days| unix_now().saturating_add(days.saturating_mul(86_400))),
                payout,
                epsilon_limit_micro,
            })
            .await?;
        let result = self
            .consent_service()
            .await?
            .grant(transaction)
            .await
            .map_err(|status| {
                anyhow!(
                    "consent to {} for {}: {}",
                    grant.listing,
                    purpose_name(grant.purpose),
                    status.message()
                )
            })?;
        Ok(result.into_inner().height)
    }

    /// Revokes a consent; returns the ledger height.
    pub async fn revoke(&self, listing: &ListingId, purpose: Purpose) -> anyhow::Result<u64> {
        let transaction = self
            .signed(Action::RevokeConsent {
                listing: listing.clone(),
                purpose,
            })
            .await?;
        let result = self
            .consent_service()
            .await?
            .revoke(transaction)
            .await
            .map_err(|status| {
                anyhow!(
                    "revoking consent to {listing} for {}: {}",
                    purpose_name(purpose),
                    status.message()
                )
            })?;
        Ok(result.into_inner().height)
    }

    /// The patient's consents, with the ε each has spent against its limit.
    pub async fn consents(&self) -> anyhow::Result<ListConsentsResponse> {
        let request = signed_request(
            &self.key,
            LIST_CONSENTS,
            ListConsentsRequest {
                patient: self.account().0.to_vec(),
            },
        );
        Ok(self
            .consent_service()
            .await?
            .list_consents(request)
            .await
            .map_err(|status| anyhow!("listing consents: {}", status.message()))?
            .into_inner())
    }

    /// The patient's balance, and what they were paid and donated.
    pub async fn earnings(&self) -> anyhow::Result<Earnings> {
        let request = signed_request(
            &self.key,
            LIST_EARNINGS,
            ListEarningsRequest {
                patient: self.account().0.to_vec(),
            },
        );
        Ok(self
            .consent_service()
            .await?
            .list_earnings(request)
            .await
            .map_err(|status| anyhow!("listing earnings: {}", status.message()))?
            .into_inner())
    }

    /// The listings where the patient's consent to `trial_recruitment` is active.
    pub async fn recruiting_listings(&self) -> anyhow::Result<Vec<String>> {
        let recruitment = purpose_name(Purpose::TrialRecruitment);
        Ok(self
            .consents()
            .await?
            .consents
            .into_iter()
            .filter(|consent| consent.active && consent.purpose == recruitment)
            .map(|consent| consent.listing)
            .collect())
    }
}

/// A personal ε limit in millionths: a positive, finite number of at least 10⁻⁶.
pub fn epsilon_limit_micro(limit: f64) -> anyhow::Result<u64> {
    if !(limit.is_finite() && limit >= 1e-6) {
        bail!("epsilon_limit: must be a positive number of at least 0.000001, not {limit}");
    }
    Ok((limit * 1e6).round() as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::epsilon_limit_micro;

    #[test]
    fn epsilon_limit_that_is_not_a_positive_number_is_refused_naming_the_field() {
        for limit in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-9] {
            let error = epsilon_limit_micro(limit).unwrap_err().to_string();
            assert!(error.starts_with("epsilon_limit: "), "{error}");
        }
        assert_eq!(epsilon_limit_micro(0.5).unwrap(), 500_000);
    }
}
