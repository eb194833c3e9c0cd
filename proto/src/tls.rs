//! The links every Cohortex service runs over: mutual TLS (rustls, through tonic).
//!
//! A federation has one certificate authority (made by `cohortex tls ca`). Every party — the
//! market, each compute node, each patient and buyer client — holds a certificate from it
//! (`cohortex tls cert`) and presents it on every link: servers refuse clients without one,
//! and clients refuse servers whose certificate the authority did not sign for the host they
//! dialled. TLS is what keeps the network from reading or altering a link; *who* may do what is
//! still decided by the ed25519 request signatures and the pinned committee, so a party that
//! holds the authority's key can make certificates but cannot act as a member (see
//! `docs/privacy.md`, "Threat model").
//!
//! [`TlsIdentity`] is one party's side of it: the authority's certificate and its own
//! certificate and key. [`endpoint`] is the one place a client link is built, and refuses a
//! mismatch between the URL's scheme and the configuration: an `https://` URL needs an
//! identity, and with an identity a plaintext `http://` URL is refused.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// Why a link could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// A file of the TLS identity could not be read.
    #[error("{field}: cannot read {path}: {source}")]
    Read {
        /// The config field that named the file.
        field: String,
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file of the TLS identity is not PEM of the expected kind.
    #[error("{field}: {path} is not a PEM {expected}")]
    NotPem {
        /// The config field that named the file.
        field: String,
        /// The file.
        path: String,
        /// What it should hold.
        expected: &'static str,
    },
    /// The endpoint is not a URL.
    #[error("endpoint `{0}` is not a URL like https://host:port")]
    NotAUrl(String),
    /// An `http://` endpoint while this party speaks TLS.
    #[error("endpoint `{0}` is plaintext http://; links are mutual TLS, use https://")]
    Plaintext(String),
    /// An `https://` endpoint while this party has no TLS identity.
    #[error("endpoint `{0}` is https:// but no TLS identity is configured")]
    NoIdentity(String),
    /// The private key file may be read by other local users.
    #[error("{field}: {path} may be read by other users (mode {mode:o}); run `chmod 600 {path}`")]
    KeyReadableByOthers {
        /// The config field that named the file.
        field: String,
        /// The file.
        path: String,
        /// Its permission bits.
        mode: u32,
    },
    /// tonic refused the TLS settings.
    #[error("TLS settings for `{endpoint}`: {message}")]
    Settings {
        /// The endpoint.
        endpoint: String,
        /// tonic's message.
        message: String,
    },
}

/// One party's TLS identity: the federation authority's certificate, which it trusts, and its
/// own certificate chain and key, which it presents.
#[derive(Clone)]
pub struct TlsIdentity {
    authority: Certificate,
    identity: Identity,
    /// Whether the client side presents `identity` (see [`TlsIdentity::without_certificate`]).
    presents_certificate: bool,
}

impl std::fmt::Debug for TlsIdentity {
    /// Never prints the key.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("TlsIdentity { .. }")
    }
}

fn read_pem(
    path: &Path,
    field: &str,
    marker: &str,
    expected: &'static str,
) -> Result<Vec<u8>, LinkError> {
    let bytes = std::fs::read(path).map_err(|source| LinkError::Read {
        field: field.to_string(),
        path: path.display().to_string(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    if !(text.contains("-----BEGIN ") && text.contains(marker)) {
        return Err(LinkError::NotPem {
            field: field.to_string(),
            path: path.display().to_string(),
            expected,
        });
    }
    Ok(bytes)
}

/// Refuses a private key that others may read, as ssh does: a key that has leaked to other
/// local users is not the party's alone any more.
fn refuse_shared_key(path: &Path, field: &str) -> Result<(), LinkError> {
    use cohortex_types::private_file::{check_owner_only, PrivateFileError};
    check_owner_only(path).map_err(|error| match error {
        PrivateFileError::Unreadable { path, source } => LinkError::Read {
            field: field.to_string(),
            path,
            source,
        },
        PrivateFileError::ReadableByOthers { path, mode } => LinkError::KeyReadableByOthers {
            field: field.to_string(),
            path,
            mode,
        },
    })
}

impl TlsIdentity {
    /// An identity from PEM text: the authority's certificate, this party's certificate (chain)
    /// and its private key.
    pub fn from_pem(
        authority_pem: impl AsRef<[u8]>,
        certificate_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Self {
        Self {
            authority: Certificate::from_pem(authority_pem),
            identity: Identity::from_pem(certificate_pem, key_pem),
            presents_certificate: true,
        }
    }

    /// The same party dialling without presenting its certificate: it still checks the
    /// server's against the authority, but the server cannot tell who dials. For the calls a
    /// server answers anonymously ([`crate::serving::ANONYMOUS_CALLS`]).
    pub fn without_certificate(&self) -> Self {
        Self {
            presents_certificate: false,
            ..self.clone()
        }
    }

    /// Reads an identity from files; `field` prefixes errors (say `node.toml: tls`).
    pub fn load(
        authority: &Path,
        certificate: &Path,
        key: &Path,
        field: &str,
    ) -> Result<Self, LinkError> {
        let authority = read_pem(
            authority,
            &format!("{field}.ca"),
            "CERTIFICATE",
            "certificate",
        )?;
        let certificate = read_pem(
            certificate,
            &format!("{field}.cert"),
            "CERTIFICATE",
            "certificate",
        )?;
        refuse_shared_key(key, &format!("{field}.key"))?;
        let key = read_pem(key, &format!("{field}.key"), "PRIVATE KEY", "private key")?;
        Ok(Self::from_pem(authority, certificate, key))
    }

    /// The server side: present this party's certificate and require a client certificate
    /// signed by the authority.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.authority.clone())
            .client_auth_optional(false)
    }

    /// The server side of a server that answers some calls without a client certificate:
    /// present this party's certificate and check any client certificate against the
    /// authority, but let a client present none. Serve it behind
    /// [`crate::serving::CertificateRequiredLayer`], which refuses every other call made
    /// without one.
    pub fn server_allowing_anonymous_clients(&self) -> ServerTlsConfig {
        self.server().client_auth_optional(true)
    }

    /// The client side: trust only the authority, and present this party's certificate
    /// (unless made [`TlsIdentity::without_certificate`]).
    pub fn client(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(self.authority.clone());
        if self.presents_certificate {
            config.identity(self.identity.clone())
        } else {
            config
        }
    }
}

/// A client endpoint for `url`: TLS when `tls` is given (and the URL is `https://`),
/// plaintext only when neither side has TLS (in-process tests and loopback tools).
pub fn endpoint(url: &str, tls: Option<&TlsIdentity>) -> Result<Endpoint, LinkError> {
    let endpoint =
        Endpoint::from_shared(url.to_string()).map_err(|_| LinkError::NotAUrl(url.to_string()))?;
    let secure = url.starts_with("https://");
    match (tls, secure) {
        (Some(tls), true) => {
            endpoint
                .tls_config(tls.client())
                .map_err(|error| LinkError::Settings {
                    endpoint: url.to_string(),
                    message: error.to_string(),
                })
        }
        (Some(_), false) => Err(LinkError::Plaintext(url.to_string())),
        (None, true) => Err(LinkError::NoIdentity(url.to_string())),
        (None, false) => Ok(endpoint),
    }
}

/// The URL scheme a party with (or without) TLS serves under.
pub fn scheme(tls: Option<&TlsIdentity>) -> &'static str {
    if tls.is_some() {
        "https"
    } else {
        "http"
    }
}
