//! The `cohortex.v1.Consent` service: patients register, grant and revoke consent, and read
//! their consents and earnings; compute nodes read who consents at compute time.
//!
//! Register, Grant and Revoke take a signed ledger transaction (self-authenticating, like
//! `Ledger/SubmitTransaction`) and refuse, before touching the ledger, an envelope that carries
//! another action: a Grant RPC cannot be used to move credits.
//!
//! The List calls are authenticated with a request signature ([`super::auth`]): ListConsents
//! and ListEarnings answer only the patient named in the request, ListCurrentConsents any
//! registered account. The ledger is public, so this is not secrecy (an auditor can replay the
//! chain); it keeps the convenience views from being scraped anonymously. Time-dependent
//! answers (whether a consent is active) are read at the time of the ledger's last block,
//! which is also the time the ledger's own rules use.

use tonic::{Request, Response, Status};

use cohortex_proto::v1;
use cohortex_proto::v1::consent_server::Consent as ConsentRpc;

use std::sync::Arc;

use super::auth::{claimed_account, unix_now, RequestVerifier};
use super::rate::{caller_of, RateLimiter};
use super::{
    account_field, envelope_field, listing_field, purpose_field, purpose_name, read_ledger,
    submit_if, wrong_action, SharedLedger,
};
use crate::state::Consent;
use crate::storage::Ledger;
use crate::tx::{AccountId, Action, ListingId, PayoutChoice, Purpose, Role, TxBody};

/// Method paths, as signed in requests (defined once, in `cohortex_proto::methods`).
pub use cohortex_proto::methods::consent::{LIST_CONSENTS, LIST_CURRENT_CONSENTS, LIST_EARNINGS};

/// The Consent service over a shared ledger, with its own replay cache of request nonces.
pub struct ConsentService {
    ledger: SharedLedger,
    verifier: RequestVerifier,
    /// Self-registrations per client certificate (shared with the Ledger service).
    registrations: Arc<RateLimiter>,
}

impl ConsentService {
    /// A service answering from `ledger`.
    pub fn new(ledger: SharedLedger) -> Self {
        ConsentService {
            ledger,
            verifier: RequestVerifier::new(),
            registrations: Arc::new(RateLimiter::registrations()),
        }
    }

    /// The same service, counting self-registrations in `registrations` (which the Ledger
    /// service counts in too).
    pub fn sharing_registrations(mut self, registrations: Arc<RateLimiter>) -> Self {
        self.registrations = registrations;
        self
    }
}

fn admit_patient_registration(body: &TxBody) -> Result<(), Status> {
    match &body.action {
        Action::RegisterAccount {
            role: Role::Patient,
            ..
        } => Ok(()),
        other => Err(wrong_action("a RegisterAccount of a patient", other)),
    }
}

fn admit_grant(body: &TxBody) -> Result<(), Status> {
    match &body.action {
        Action::GrantConsent { .. } => Ok(()),
        other => Err(wrong_action("a GrantConsent", other)),
    }
}

fn admit_revoke(body: &TxBody) -> Result<(), Status> {
    match &body.action {
        Action::RevokeConsent { .. } => Ok(()),
        other => Err(wrong_action("a RevokeConsent", other)),
    }
}

/// `PERMISSION_DENIED` unless the authenticated caller is the patient asked about.
fn require_own(caller: AccountId, patient: AccountId) -> Result<(), Status> {
    if caller != patient {
        return Err(Status::permission_denied(format!(
            "account {caller} may only read its own consents and earnings"
        )));
    }
    Ok(())
}

fn require_registered(ledger: &Ledger, account: &AccountId) -> Result<(), Status> {
    match ledger.state().account(account) {
        Some(_) => Ok(()),
        None => Err(Status::not_found(format!("unknown account {account}"))),
    }
}

fn consent_record(
    listing: &ListingId,
    purpose: Purpose,
    consent: &Consent,
    now: u64,
    spent_micro: u64,
) -> v1::ConsentRecord {
    v1::ConsentRecord {
        listing: listing.0.clone(),
        purpose: purpose_name(purpose).to_owned(),
        active: consent.is_active_at(now),
        expires_at: consent.expires_at.unwrap_or(0),
        donate_to: match consent.payout {
            PayoutChoice::ToPatient => Vec::new(),
            PayoutChoice::DonateTo { fund } => fund.0.to_vec(),
        },
        granted_at: consent.granted_at,
        revoked_at: consent.revoked_at,
        epsilon_limit_micro: consent.epsilon_limit_micro,
        epsilon_spent_micro: spent_micro,
    }
}

/// The patient's consents, with `active` evaluated at the last block's time.
fn consents_of(ledger: &Ledger, patient: &AccountId) -> Result<v1::ListConsentsResponse, Status> {
    require_registered(ledger, patient)?;
    let now = ledger.machine().last_time();
    let state = ledger.state();
    let consents = state
        .consents_of(patient)
        .map(|(listing, purpose, consent)| {
            let spent = state.personal_spent_micro(patient, listing);
            consent_record(listing, purpose, consent, now, spent)
        })
        .collect();
    Ok(v1::ListConsentsResponse {
        consents,
        height: ledger.machine().height(),
    })
}

/// The patient's balance, and the shares of settled queries paid to it and donated, recomputed
/// from the settled orders ([`crate::State::earnings_of`]).
fn earnings_of(ledger: &Ledger, patient: &AccountId) -> Result<v1::Earnings, Status> {
    require_registered(ledger, patient)?;
    let state = ledger.state();
    let earned = state.earnings_of(patient);
    Ok(v1::Earnings {
        balance: state.balance(patient),
        donated: earned.donated,
        paid: earned.paid,
    })
}

/// The patients consenting to `listing` for `purpose` at the last block's time, ascending,
/// less those whose personal limit would not allow `epsilon_micro` more (when it is not 0);
/// asked by `caller`, who must be registered.
fn current_consents(
    ledger: &Ledger,
    caller: &AccountId,
    listing: &ListingId,
    purpose: Purpose,
    epsilon_micro: u64,
) -> Result<v1::ListCurrentConsentsResponse, Status> {
    let state = ledger.state();
    if state.account(caller).is_none() {
        return Err(Status::permission_denied(format!(
            "caller {caller} is not a registered account"
        )));
    }
    if state.listing(listing).is_none() {
        return Err(Status::not_found(format!("unknown listing {listing}")));
    }
    let now = ledger.machine().last_time();
    let patients = state
        .current_consents_affording(listing, purpose, now, epsilon_micro)
        .iter()
        .map(|patient| patient.0.to_vec())
        .collect();
    Ok(v1::ListCurrentConsentsResponse {
        patients,
        height: ledger.machine().height(),
    })
}

#[tonic::async_trait]
impl ConsentRpc for ConsentService {
    #[tracing::instrument(skip(self, request))]
    async fn register(
        &self,
        request: Request<v1::SignedTransaction>,
    ) -> Result<Response<v1::TransactionResult>, Status> {
        self.registrations
            .admit(&caller_of(&request), std::time::Instant::now())?;
        let envelope = envelope_field(request.into_inner())?;
        let submitted = submit_if(&self.ledger, envelope, admit_patient_registration).await?;
        Ok(Response::new(submitted.into()))
    }

    #[tracing::instrument(skip(self, request))]
    async fn grant(
        &self,
        request: Request<v1::SignedTransaction>,
    ) -> Result<Response<v1::TransactionResult>, Status> {
        let envelope = envelope_field(request.into_inner())?;
        let submitted = submit_if(&self.ledger, envelope, admit_grant).await?;
        Ok(Response::new(submitted.into()))
    }

    #[tracing::instrument(skip(self, request))]
    async fn revoke(
        &self,
        request: Request<v1::SignedTransaction>,
    ) -> Result<Response<v1::TransactionResult>, Status> {
        let envelope = envelope_field(request.into_inner())?;
        let submitted = submit_if(&self.ledger, envelope, admit_revoke).await?;
        Ok(Response::new(submitted.into()))
    }

    #[tracing::instrument(skip(self, request))]
    async fn list_consents(
        &self,
        request: Request<v1::ListConsentsRequest>,
    ) -> Result<Response<v1::ListConsentsResponse>, Status> {
        let patient = account_field(&request.get_ref().patient, "patient")?;
        // Another caller is refused before its signature is checked or its nonce remembered.
        self.verifier
            .verify_from(LIST_CONSENTS, &request, unix_now(), |caller| {
                require_own(*caller, patient)
            })?;
        let response = read_ledger(&self.ledger, move |ledger| consents_of(ledger, &patient));
        Ok(Response::new(response.await?))
    }

    #[tracing::instrument(skip(self, request))]
    async fn list_earnings(
        &self,
        request: Request<v1::ListEarningsRequest>,
    ) -> Result<Response<v1::Earnings>, Status> {
        let patient = account_field(&request.get_ref().patient, "patient")?;
        self.verifier
            .verify_from(LIST_EARNINGS, &request, unix_now(), |caller| {
                require_own(*caller, patient)
            })?;
        let response = read_ledger(&self.ledger, move |ledger| earnings_of(ledger, &patient));
        Ok(Response::new(response.await?))
    }

    #[tracing::instrument(skip(self, request))]
    async fn list_current_consents(
        &self,
        request: Request<v1::ListCurrentConsentsRequest>,
    ) -> Result<Response<v1::ListCurrentConsentsResponse>, Status> {
        // Only a registered account may ask: a stranger is refused before any signature work
        // or nonce is spent on it.
        let claimed = claimed_account(request.metadata())?;
        read_ledger(&self.ledger, move |ledger| {
            if ledger.state().account(&claimed).is_none() {
                return Err(Status::permission_denied(format!(
                    "caller {claimed} is not a registered account"
                )));
            }
            Ok(())
        })
        .await?;
        let caller = self
            .verifier
            .verify(LIST_CURRENT_CONSENTS, &request, unix_now())?;
        let listing = listing_field(&request.get_ref().listing, "listing")?;
        let purpose = purpose_field(&request.get_ref().purpose, "purpose")?;
        let epsilon_micro = request.get_ref().epsilon_micro;
        let response = read_ledger(&self.ledger, move |ledger| {
            current_consents(ledger, &caller, &listing, purpose, epsilon_micro)
        });
        Ok(Response::new(response.await?))
    }
}
