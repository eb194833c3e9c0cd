//! Request authentication: every gRPC request carries its caller's account, a timestamp, a
//! fresh nonce and an Ed25519 signature over all of them and the request message.
//!
//! ```text
//! digest = tagged_hash("cohortex/rpc/request/v1",
//!                      [method path, timestamp (8 bytes LE), nonce (16 bytes), protobuf body])
//! ```
//!
//! A request meant for one server of several (a compute node) also names its **audience**,
//! the endpoint it is sent to, in `x-cohortex-audience`, and the signature covers it as a fifth
//! part: `[method, timestamp, nonce, body, audience]`. A server that knows its own endpoint
//! ([`RequestVerifier::for_audience`]) refuses a request naming no audience or another one, so
//! a committee member cannot replay a coordinator's request to a peer.
//!
//! The metadata keys are `x-cohortex-account` (hex key), `x-cohortex-timestamp` (unix seconds),
//! `x-cohortex-nonce` (32 hex digits) and `x-cohortex-signature` (hex). A server accepts a
//! request whose timestamp is within [`MAX_CLOCK_SKEW`] of its clock and whose nonce it has
//! not seen in that window, so a captured request cannot be replayed. The body is the
//! message re-encoded by prost, which is exactly the bytes received: the generated server code
//! decodes with `cohortex_proto::codec::CanonicalProstCodec`, which refuses any request whose
//! bytes are not the canonical encoding of what they decode to (an unknown or repeated field
//! appended to a signed request is `INVALID_ARGUMENT`), so the signature covers every byte read.
//!
//! A federation certificate may be **bound to one account**: its subject alternative names then
//! hold the URI `cohortex:account:<64 hex digits>` ([`CERTIFICATE_ACCOUNT_PREFIX`],
//! `cohortex tls cert --account`). Over a link whose client certificate is bound, a server
//! refuses every request signed by another account (`PERMISSION_DENIED`), before any signature
//! work; a certificate without the URI serves any account, as before.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier};
use prost::Message;
use rand::RngCore;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::hash::tagged_hash;
use crate::ids::AccountId;
use crate::labels::LABEL_REQUEST;
/// Metadata key of the caller's account.
pub const ACCOUNT: &str = "x-cohortex-account";
/// Metadata key of the request time.
pub const TIMESTAMP: &str = "x-cohortex-timestamp";
/// Metadata key of the nonce.
pub const NONCE: &str = "x-cohortex-nonce";
/// Metadata key of the server a request is meant for (its endpoint).
pub const AUDIENCE: &str = "x-cohortex-audience";
/// Metadata key of the signature.
pub const SIGNATURE: &str = "x-cohortex-signature";
pub use crate::ids::CERTIFICATE_ACCOUNT_PREFIX;
/// How far a request's timestamp may be from the server's clock, in seconds.
pub const MAX_CLOCK_SKEW: u64 = 300;

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn digest(
    method: &str,
    timestamp: u64,
    nonce: &[u8; 16],
    body: &[u8],
    audience: Option<&str>,
) -> [u8; 32] {
    let timestamp = timestamp.to_le_bytes();
    let mut parts: Vec<&[u8]> = vec![method.as_bytes(), &timestamp, nonce, body];
    if let Some(audience) = audience {
        parts.push(audience.as_bytes());
    }
    *tagged_hash(LABEL_REQUEST, &parts).as_bytes()
}

/// An endpoint as an audience: without a trailing slash, so that `https://a:1/` and
/// `https://a:1` name the same server.
pub fn normal_audience(endpoint: &str) -> &str {
    endpoint.trim_end_matches('/')
}

/// Wraps `message` in a request for `method` (e.g. `/cohortex.v1.Ledger/GetBlock`), signed by
/// `key` with a fresh nonce.
pub fn signed_request<T: Message>(key: &SigningKey, method: &str, message: T) -> Request<T> {
    signed_request_with(key, method, message, unix_now(), fresh_nonce())
}

/// [`signed_request`] with the timestamp and nonce given (tests replay and skew with it).
pub fn signed_request_with<T: Message>(
    key: &SigningKey,
    method: &str,
    message: T,
    timestamp: u64,
    nonce: [u8; 16],
) -> Request<T> {
    let body = message.encode_to_vec();
    signed(
        key,
        None,
        method,
        &body,
        Request::new(message),
        timestamp,
        nonce,
    )
}

/// [`signed_request`] for the server at `audience` (its endpoint) only.
pub fn signed_request_to<T: Message>(
    key: &SigningKey,
    audience: &str,
    method: &str,
    message: T,
) -> Request<T> {
    let body = message.encode_to_vec();
    let audience = Some(normal_audience(audience));
    signed(
        key,
        audience,
        method,
        &body,
        Request::new(message),
        unix_now(),
        fresh_nonce(),
    )
}

/// [`signed_stream_request`] for the server at `audience` (its endpoint) only.
pub fn signed_stream_request_to<S>(
    key: &SigningKey,
    audience: &str,
    method: &str,
    stream: S,
) -> Request<S> {
    let audience = Some(normal_audience(audience));
    signed(
        key,
        audience,
        method,
        &[],
        Request::new(stream),
        unix_now(),
        fresh_nonce(),
    )
}

/// Wraps a client stream in a request for `method`, signed by `key` over an empty body: the
/// signature says who streams (a node accepts evaluation keys from its coordinator only),
/// while what is streamed must authenticate itself (an evaluation key is named by its
/// fingerprint wherever it is used).
pub fn signed_stream_request<S>(key: &SigningKey, method: &str, stream: S) -> Request<S> {
    signed(
        key,
        None,
        method,
        &[],
        Request::new(stream),
        unix_now(),
        fresh_nonce(),
    )
}

fn fresh_nonce() -> [u8; 16] {
    let mut nonce = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    nonce
}

/// `request` with the signature metadata over `body` (its encoded message, or nothing for a
/// stream) added.
fn signed<T>(
    key: &SigningKey,
    audience: Option<&str>,
    method: &str,
    body: &[u8],
    mut request: Request<T>,
    timestamp: u64,
    nonce: [u8; 16],
) -> Request<T> {
    sign_metadata(
        request.metadata_mut(),
        key,
        method,
        body,
        timestamp,
        nonce,
        audience,
    );
    request
}

fn sign_metadata(
    metadata: &mut MetadataMap,
    key: &SigningKey,
    method: &str,
    body: &[u8],
    timestamp: u64,
    nonce: [u8; 16],
    audience: Option<&str>,
) {
    let signature = key.sign(&digest(method, timestamp, &nonce, body, audience));
    let mut insert = |name: &'static str, value: String| {
        if let Ok(value) = value.parse() {
            metadata.insert(name, value);
        }
    };
    if let Some(audience) = audience {
        insert(AUDIENCE, audience.to_string());
    }
    insert(ACCOUNT, hex::encode(key.verifying_key().as_bytes()));
    insert(TIMESTAMP, timestamp.to_string());
    insert(NONCE, hex::encode(nonce));
    insert(SIGNATURE, hex::encode(signature.to_bytes()));
}

fn field<'a>(metadata: &'a MetadataMap, name: &'static str) -> Result<&'a str, Status> {
    metadata
        .get(name)
        .ok_or_else(|| Status::unauthenticated(format!("missing metadata {name}")))?
        .to_str()
        .map_err(|_| Status::unauthenticated(format!("metadata {name} is not ASCII")))
}

fn hex_field<const N: usize>(
    metadata: &MetadataMap,
    name: &'static str,
) -> Result<[u8; N], Status> {
    let bytes = hex::decode(field(metadata, name)?)
        .map_err(|_| Status::unauthenticated(format!("metadata {name} is not hex")))?;
    <[u8; N]>::try_from(bytes.as_slice())
        .map_err(|_| Status::unauthenticated(format!("metadata {name} must be {N} bytes")))
}

/// How many nonces a verifier remembers at most: the requests of one skew window
/// ([`MAX_CLOCK_SKEW`] either side of now) beyond this are refused until older ones age out,
/// so a flood of validly signed requests cannot grow a server's memory without bound.
pub const MAX_REMEMBERED_NONCES: usize = 200_000;

/// The nonces seen in the skew window, by timestamp (to prune the oldest in O(log n) each) and
/// by value (to find a replay in O(1)).
#[derive(Debug, Default)]
struct SeenNonces {
    by_time: std::collections::BTreeSet<(u64, [u8; 16])>,
    /// Each remembered nonce, with the account that used it.
    values: std::collections::HashMap<[u8; 16], AccountId>,
    /// How many nonces each account has in the window.
    per_account: std::collections::HashMap<AccountId, usize>,
}

impl SeenNonces {
    /// Forgets every nonce whose request time is more than the skew before `now`.
    fn prune(&mut self, now: u64) {
        let oldest_kept = now.saturating_sub(MAX_CLOCK_SKEW);
        while let Some(&(timestamp, nonce)) = self.by_time.first() {
            if timestamp >= oldest_kept {
                break;
            }
            self.by_time.pop_first();
            if let Some(account) = self.values.remove(&nonce) {
                if let Some(count) = self.per_account.get_mut(&account) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        self.per_account.remove(&account);
                    }
                }
            }
        }
    }
}

/// How many nonces one account may have in the window: one caller cannot use up the cache
/// that every caller shares.
pub const MAX_NONCES_PER_ACCOUNT: usize = 2_000;

/// Checks request signatures and remembers nonces to refuse replays.
#[derive(Debug)]
pub struct RequestVerifier {
    seen: Mutex<SeenNonces>,
    capacity: usize,
    /// This server's endpoint, if requests must name it.
    audience: Option<String>,
}

impl Default for RequestVerifier {
    fn default() -> Self {
        Self::with_capacity(MAX_REMEMBERED_NONCES)
    }
}

impl RequestVerifier {
    /// A verifier with no nonce seen, remembering at most [`MAX_REMEMBERED_NONCES`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A verifier remembering at most `capacity` nonces.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            seen: Mutex::new(SeenNonces::default()),
            capacity,
            audience: None,
        }
    }

    /// A verifier for the server at `endpoint`: every request must name it as its audience
    /// (signed with [`signed_request_to`]), so a request for another server is refused.
    pub fn for_audience(endpoint: &str) -> Self {
        Self {
            audience: Some(normal_audience(endpoint).to_string()),
            ..Self::default()
        }
    }

    /// How many nonces the verifier remembers now.
    pub fn remembered(&self) -> usize {
        self.seen.lock().map_or(0, |seen| seen.values.len())
    }

    /// Verifies `request` for `method` at server time `now`; returns the caller's account.
    /// Refusals are `UNAUTHENTICATED` and say which check failed.
    pub fn verify<T: Message>(
        &self,
        method: &str,
        request: &Request<T>,
        now: u64,
    ) -> Result<AccountId, Status> {
        self.verify_from(method, request, now, |_| Ok(()))
    }

    /// [`RequestVerifier::verify`] for a method only some callers may use: `admit` judges the
    /// claimed account **before** any signature work or nonce is remembered, so that strangers
    /// cost the server neither.
    pub fn verify_from<T: Message>(
        &self,
        method: &str,
        request: &Request<T>,
        now: u64,
        admit: impl FnOnce(&AccountId) -> Result<(), Status>,
    ) -> Result<AccountId, Status> {
        let claimed = claimed_account(request.metadata())?;
        check_certificate_binding(request, &claimed)?;
        admit(&claimed)?;
        self.verify_body(
            method,
            request.metadata(),
            &request.get_ref().encode_to_vec(),
            now,
        )
    }

    /// Verifies a client-stream request signed by [`signed_stream_request`] (over an empty
    /// body); returns the caller's account.
    pub fn verify_stream<S>(
        &self,
        method: &str,
        request: &Request<S>,
        now: u64,
    ) -> Result<AccountId, Status> {
        self.verify_stream_from(method, request, now, |_| Ok(()))
    }

    /// [`RequestVerifier::verify_stream`] for a method only some callers may use, judged as
    /// in [`RequestVerifier::verify_from`] before any signature work.
    pub fn verify_stream_from<S>(
        &self,
        method: &str,
        request: &Request<S>,
        now: u64,
        admit: impl FnOnce(&AccountId) -> Result<(), Status>,
    ) -> Result<AccountId, Status> {
        let claimed = claimed_account(request.metadata())?;
        check_certificate_binding(request, &claimed)?;
        admit(&claimed)?;
        self.verify_body(method, request.metadata(), &[], now)
    }

    fn verify_body(
        &self,
        method: &str,
        metadata: &MetadataMap,
        body: &[u8],
        now: u64,
    ) -> Result<AccountId, Status> {
        let account = claimed_account(metadata)?;
        let timestamp: u64 = field(metadata, TIMESTAMP)?.parse().map_err(|_| {
            Status::unauthenticated("metadata x-cohortex-timestamp is not a number")
        })?;
        if timestamp.abs_diff(now) > MAX_CLOCK_SKEW {
            return Err(Status::unauthenticated(format!(
                "request time {timestamp} is more than {MAX_CLOCK_SKEW} s from the server's {now}"
            )));
        }
        let nonce = hex_field::<16>(metadata, NONCE)?;
        let signature = Signature::from_bytes(&hex_field::<64>(metadata, SIGNATURE)?);
        let key = account
            .verifying_key()
            .map_err(|error| Status::unauthenticated(format!("x-cohortex-account: {error}")))?;
        let audience = match metadata.get(AUDIENCE) {
            Some(value) => Some(value.to_str().map_err(|_| {
                Status::unauthenticated("metadata x-cohortex-audience is not ASCII")
            })?),
            None => None,
        };
        if let Some(expected) = &self.audience {
            if audience != Some(expected.as_str()) {
                return Err(Status::permission_denied(format!(
                    "the request names server {}, not this one ({expected})",
                    audience.unwrap_or("none")
                )));
            }
        }
        key.verify(
            &digest(method, timestamp, &nonce, body, audience),
            &signature,
        )
        .map_err(|_| {
            Status::unauthenticated(
                "request signature does not verify for this account, method and message",
            )
        })?;
        let mut seen = self
            .seen
            .lock()
            .map_err(|_| Status::internal("nonce cache poisoned"))?;
        seen.prune(now);
        if seen.values.contains_key(&nonce) {
            return Err(Status::unauthenticated(
                "replayed request: this nonce was already used",
            ));
        }
        if seen.values.len() >= self.capacity {
            return Err(Status::resource_exhausted(format!(
                "more than {} signed requests in the last {MAX_CLOCK_SKEW} s; retry later",
                self.capacity
            )));
        }
        let used = seen.per_account.get(&account).copied().unwrap_or(0);
        if used >= MAX_NONCES_PER_ACCOUNT.min(self.capacity) {
            return Err(Status::resource_exhausted(format!(
                "account {account} signed more than {} requests in the last {MAX_CLOCK_SKEW} s; \
                 retry later",
                MAX_NONCES_PER_ACCOUNT.min(self.capacity)
            )));
        }
        seen.values.insert(nonce, account);
        *seen.per_account.entry(account).or_insert(0) += 1;
        seen.by_time.insert((timestamp, nonce));
        Ok(account)
    }
}

/// The account a request claims to come from, **not yet verified**: only to decide, before
/// any signature work, whether such a caller may call at all.
pub fn claimed_account(metadata: &MetadataMap) -> Result<AccountId, Status> {
    Ok(AccountId(hex_field::<32>(metadata, ACCOUNT)?))
}

/// The account a client certificate (DER) is bound to, if it names one (see
/// [`CERTIFICATE_ACCOUNT_PREFIX`]). A certificate naming two accounts, or a malformed one, is
/// refused: it serves no one.
pub fn certificate_account(der: &[u8]) -> Result<Option<AccountId>, Status> {
    let der = tonic::transport::CertificateDer::from(der);
    let certificate = webpki::EndEntityCert::try_from(&der)
        .map_err(|_| Status::unauthenticated("the client certificate cannot be parsed"))?;
    let mut named = certificate
        .valid_uri_names()
        .filter_map(|uri| uri.strip_prefix(CERTIFICATE_ACCOUNT_PREFIX));
    let Some(first) = named.next() else {
        return Ok(None);
    };
    if named.next().is_some() {
        return Err(Status::permission_denied(
            "the client certificate names more than one account; it serves none",
        ));
    }
    let account = hex::decode(first)
        .ok()
        .and_then(|bytes| <[u8; 32]>::try_from(bytes.as_slice()).ok())
        .ok_or_else(|| {
            Status::permission_denied(format!(
                "the client certificate's {CERTIFICATE_ACCOUNT_PREFIX} URI does not hold a \
                 32-byte account in hex"
            ))
        })?;
    Ok(Some(AccountId(account)))
}

/// Refuses a request signed by `claimed` over a link whose client certificate is bound to
/// another account.
fn check_certificate_binding<T>(request: &Request<T>, claimed: &AccountId) -> Result<(), Status> {
    let Some(certificates) = request.peer_certs() else {
        return Ok(());
    };
    let Some(leaf) = certificates.first() else {
        return Ok(());
    };
    match certificate_account(leaf.as_ref())? {
        Some(bound) if bound != *claimed => Err(Status::permission_denied(format!(
            "the client certificate is bound to account {bound}, but the request is signed by \
             {claimed}: a certificate serves only the account it was issued for"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn request(key: &SigningKey, timestamp: u64) -> Request<()> {
        let mut nonce = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        signed_request_with(key, "/m", (), timestamp, nonce)
    }

    #[test]
    fn nonce_cache_is_bounded() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let verifier = RequestVerifier::with_capacity(3);
        let now = 1_000_000;
        for _ in 0..3 {
            verifier.verify("/m", &request(&key, now), now).unwrap();
        }
        // Full: a fourth request in the window is refused, and nothing more is remembered.
        let refused = verifier.verify("/m", &request(&key, now), now).unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{refused:?}"
        );
        assert_eq!(verifier.remembered(), 3);
        // Once the window has passed, the old nonces are forgotten and requests pass again.
        let later = now + MAX_CLOCK_SKEW + 1;
        verifier.verify("/m", &request(&key, later), later).unwrap();
        assert_eq!(verifier.remembered(), 1);
    }

    #[test]
    fn request_for_one_server_is_refused_by_another() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let first = RequestVerifier::for_audience("https://127.0.0.1:7701/");
        let second = RequestVerifier::for_audience("https://127.0.0.1:7702");
        let request = || signed_request_to(&key, "https://127.0.0.1:7701", "/m", ());
        first.verify("/m", &request(), unix_now()).unwrap();
        let refused = second.verify("/m", &request(), unix_now()).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        // Nor does a request naming no server pass, nor one whose named server was changed
        // after signing.
        let plain = signed_request(&key, "/m", ());
        assert!(second.verify("/m", &plain, unix_now()).is_err());
        let mut moved = request();
        moved
            .metadata_mut()
            .insert(AUDIENCE, "https://127.0.0.1:7702".parse().unwrap());
        let refused = second.verify("/m", &moved, unix_now()).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    }

    #[test]
    fn one_account_cannot_fill_the_nonce_cache() {
        let verifier = RequestVerifier::with_capacity(MAX_NONCES_PER_ACCOUNT + 10);
        let now = 1_000_000;
        let flooder = SigningKey::from_bytes(&[6; 32]);
        for _ in 0..MAX_NONCES_PER_ACCOUNT {
            verifier.verify("/m", &request(&flooder, now), now).unwrap();
        }
        let refused = verifier
            .verify("/m", &request(&flooder, now), now)
            .unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::ResourceExhausted,
            "{refused:?}"
        );
        // Another caller still gets in.
        let other = SigningKey::from_bytes(&[7; 32]);
        verifier.verify("/m", &request(&other, now), now).unwrap();
    }

    #[test]
    fn replayed_nonce_is_refused_within_the_window() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let verifier = RequestVerifier::new();
        let now = 1_000_000;
        let first = signed_request_with(&key, "/m", (), now, [1; 16]);
        verifier.verify("/m", &first, now).unwrap();
        let again = signed_request_with(&key, "/m", (), now, [1; 16]);
        let refused = verifier.verify("/m", &again, now + 1).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(refused.message().contains("replayed"), "{refused:?}");
    }

    #[test]
    fn unknown_caller_is_refused_before_its_nonce_is_remembered() {
        let key = SigningKey::from_bytes(&[5; 32]);
        let verifier = RequestVerifier::new();
        let now = 1_000_000;
        // A bad signature too: it must not be looked at.
        let mut forged = request(&key, now);
        forged
            .metadata_mut()
            .insert(SIGNATURE, hex::encode([0u8; 64]).parse().unwrap());
        let refused = verifier
            .verify_from("/m", &forged, now, |_| {
                Err(Status::permission_denied("not a caller of this method"))
            })
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(verifier.remembered(), 0);
    }
}
