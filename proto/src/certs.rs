//! Making a federation's TLS certificates (rcgen): the authority, and one certificate per
//! party. `cohortex tls ca` and `cohortex tls cert` write them to files; in-process clusters
//! make them in memory.
//!
//! Keys are ECDSA P-256 (rcgen's default, verified by rustls with ring). Party certificates are
//! valid for both server and client authentication, since a compute node is both: it serves
//! the coordinator and its peers, and dials the market and its peers.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::tls::TlsIdentity;

/// The authority's subject. It is fixed so that the authority can be reloaded from its key and
/// certificate without parsing X.509: what identifies an authority is its key.
const AUTHORITY_NAME: &str = "Cohortex federation authority";

/// The URI prefix that binds a certificate to one account (the same as
/// `cohortex_types::auth::CERTIFICATE_ACCOUNT_PREFIX`, which servers check).
pub use cohortex_types::ids::CERTIFICATE_ACCOUNT_PREFIX as ACCOUNT_URI_PREFIX;

/// How long an authority is valid.
const AUTHORITY_LIFETIME: Duration = Duration::days(3650);

/// How long a party certificate is valid.
const PARTY_LIFETIME: Duration = Duration::days(825);

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused the parameters or the key.
    #[error("{what}: {source}")]
    Rcgen {
        /// What was being made.
        what: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// The authority's key is not the one its certificate names.
    #[error("the authority's key does not belong to its certificate (ca.key and ca.crt are from different authorities)")]
    KeyNotCertificates,
    /// The certificate is not PEM.
    #[error("the authority's certificate is not a PEM certificate")]
    NotPem,
    /// No host name or address was given.
    #[error("a certificate needs at least one host name or IP address")]
    NoHost,
}

fn rcgen(what: &'static str) -> impl FnOnce(rcgen::Error) -> CertError {
    move |source| CertError::Rcgen { what, source }
}

/// A certificate and its private key, as PEM.
pub struct IssuedCertificate {
    /// The certificate.
    pub certificate_pem: String,
    /// The private key (PKCS#8). Secret.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCertificate {
    /// Never prints the key.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("IssuedCertificate")
            .field("certificate_pem", &self.certificate_pem)
            .finish_non_exhaustive()
    }
}

/// The DER bytes of the first PEM block of `pem`.
fn pem_body(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .skip_while(|line| !line.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|line| !line.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .ok()
}

/// A federation's certificate authority.
pub struct Authority {
    certificate_pem: String,
    key: KeyPair,
}

fn authority_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, AUTHORITY_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl Authority {
    /// A new authority with a fresh key.
    pub fn generate() -> Result<Self, CertError> {
        let key = KeyPair::generate().map_err(rcgen("the authority's key"))?;
        let mut params = authority_params();
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + AUTHORITY_LIFETIME;
        let certificate = params
            .self_signed(&key)
            .map_err(rcgen("the authority's certificate"))?;
        Ok(Self {
            certificate_pem: certificate.pem(),
            key,
        })
    }

    /// An authority reloaded from its certificate and key (as `generate` made them).
    pub fn from_pem(certificate_pem: &str, key_pem: &str) -> Result<Self, CertError> {
        let key = KeyPair::from_pem(key_pem).map_err(rcgen("the authority's key"))?;
        // The certificate's DER holds its subject public key; the key must be that one, or
        // every certificate it issues fails later, at a handshake, far from the cause.
        let der = pem_body(certificate_pem).ok_or(CertError::NotPem)?;
        let public = key.public_key_raw();
        if public.is_empty() || !der.windows(public.len()).any(|window| window == public) {
            return Err(CertError::KeyNotCertificates);
        }
        Ok(Self {
            certificate_pem: certificate_pem.to_string(),
            key,
        })
    }

    /// The authority's certificate: what every party trusts.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// The authority's private key (PKCS#8). Secret.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A certificate for the party `name`, valid for `hosts` (DNS names or IP addresses) as a
    /// server and as a client, with a fresh key. It serves any account (see
    /// [`Authority::issue_for_account`]).
    pub fn issue(&self, name: &str, hosts: &[String]) -> Result<IssuedCertificate, CertError> {
        self.issue_with(name, hosts, None)
    }

    /// A certificate as [`Authority::issue`] makes, **bound to `account`** (an Ed25519 key):
    /// its subject alternative names also hold the URI `cohortex:account:<hex>`, and servers
    /// refuse requests signed by any other account over a link it authenticates.
    pub fn issue_for_account(
        &self,
        name: &str,
        hosts: &[String],
        account: &[u8; 32],
    ) -> Result<IssuedCertificate, CertError> {
        self.issue_with(name, hosts, Some(account))
    }

    fn issue_with(
        &self,
        name: &str,
        hosts: &[String],
        account: Option<&[u8; 32]>,
    ) -> Result<IssuedCertificate, CertError> {
        if hosts.is_empty() {
            return Err(CertError::NoHost);
        }
        let key = KeyPair::generate().map_err(rcgen("the party's key"))?;
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(rcgen("the host names"))?;
        if let Some(account) = account {
            let uri = format!("{ACCOUNT_URI_PREFIX}{}", hex::encode(account));
            params.subject_alt_names.push(SanType::URI(
                uri.try_into().map_err(rcgen("the account URI"))?,
            ));
        }
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, name);
        params.distinguished_name = subject;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + PARTY_LIFETIME;
        let issuer = Issuer::new(authority_params(), &self.key);
        let certificate = params
            .signed_by(&key, &issuer)
            .map_err(rcgen("the party's certificate"))?;
        Ok(IssuedCertificate {
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A party identity bound to `account` (for in-process use), as
    /// [`Authority::issue_for_account`] makes it.
    pub fn identity_for_account(
        &self,
        name: &str,
        hosts: &[String],
        account: &[u8; 32],
    ) -> Result<TlsIdentity, CertError> {
        let issued = self.issue_for_account(name, hosts, account)?;
        Ok(TlsIdentity::from_pem(
            &self.certificate_pem,
            &issued.certificate_pem,
            &issued.key_pem,
        ))
    }

    /// A party identity (for in-process use): a new certificate for `name` on `hosts`, with
    /// this authority as the one it trusts.
    pub fn identity(&self, name: &str, hosts: &[String]) -> Result<TlsIdentity, CertError> {
        let issued = self.issue(name, hosts)?;
        Ok(TlsIdentity::from_pem(
            &self.certificate_pem,
            &issued.certificate_pem,
            &issued.key_pem,
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn an_authority_reloaded_with_another_authoritys_key_is_refused() {
        let first = Authority::generate().unwrap();
        let second = Authority::generate().unwrap();
        let reloaded = Authority::from_pem(first.certificate_pem(), &first.key_pem()).unwrap();
        reloaded.issue("party", &["127.0.0.1".into()]).unwrap();
        assert!(matches!(
            Authority::from_pem(first.certificate_pem(), &second.key_pem()),
            Err(CertError::KeyNotCertificates)
        ));
    }
}
