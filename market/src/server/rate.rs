//! Rate limits on what costs a caller nothing: self-registration and the other transactions a
//! party submits directly. Each account, once registered, is state every node replays forever,
//! so registrations are limited per TLS client certificate (or, on a plaintext link, per peer
//! address), and submissions per signing account.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tonic::{Request, Status};

/// Self-registrations accepted per client certificate (or peer address) per minute.
pub const SELF_REGISTRATIONS_PER_MINUTE: u32 = 60;
/// Transactions accepted per signing account per minute through `SubmitTransaction`.
pub const SUBMISSIONS_PER_MINUTE: u32 = 600;
/// Callers a limiter tracks at once: when full, expired windows are dropped, and a new
/// caller is refused while every tracked window is still open.
const TRACKED_CALLERS: usize = 10_000;

/// A fixed-window counter per caller.
#[derive(Debug)]
pub struct RateLimiter {
    what: &'static str,
    max: u32,
    window: Duration,
    counts: Mutex<HashMap<Vec<u8>, (Instant, u32)>>,
}

impl RateLimiter {
    /// At most `max` of `what` per caller per `window`.
    pub fn new(what: &'static str, max: u32, window: Duration) -> Self {
        Self {
            what,
            max,
            window,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// The limit on self-registrations.
    pub fn registrations() -> Self {
        Self::new(
            "self-registrations",
            SELF_REGISTRATIONS_PER_MINUTE,
            Duration::from_secs(60),
        )
    }

    /// The limit on direct submissions per signer.
    pub fn submissions() -> Self {
        Self::new(
            "transactions",
            SUBMISSIONS_PER_MINUTE,
            Duration::from_secs(60),
        )
    }

    /// Counts one more for `caller` at `now`, or refuses with `RESOURCE_EXHAUSTED` when the
    /// caller's window is full.
    pub fn admit(&self, caller: &[u8], now: Instant) -> Result<(), Status> {
        let mut counts = self
            .counts
            .lock()
            .map_err(|_| Status::internal("rate limiter poisoned"))?;
        if counts.len() >= TRACKED_CALLERS && !counts.contains_key(caller) {
            let window = self.window;
            counts.retain(|_, (started, _)| now.duration_since(*started) < window);
            if counts.len() >= TRACKED_CALLERS {
                return Err(Status::resource_exhausted(format!(
                    "{} from more than {TRACKED_CALLERS} callers in {} s; retry later",
                    self.what,
                    window.as_secs()
                )));
            }
        }
        let entry = counts.entry(caller.to_vec()).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.window {
            *entry = (now, 0);
        }
        if entry.1 >= self.max {
            let retry = self.window.saturating_sub(now.duration_since(entry.0));
            return Err(Status::resource_exhausted(format!(
                "more than {} {} from this caller in {} s; retry in {} s",
                self.max,
                self.what,
                self.window.as_secs(),
                retry.as_secs().max(1)
            )));
        }
        entry.1 += 1;
        Ok(())
    }
}

/// Who a request comes from, for rate limits: the SHA-256 of its TLS client certificate, or
/// its peer address on a plaintext link.
pub fn caller_of<T>(request: &Request<T>) -> Vec<u8> {
    if let Some(certificate) = request
        .peer_certs()
        .and_then(|certificates| certificates.first().cloned())
    {
        return Sha256::digest(certificate.as_ref()).to_vec();
    }
    match request
        .remote_addr()
        .map(|address: SocketAddr| address.ip())
    {
        Some(ip) => ip.to_string().into_bytes(),
        None => b"unknown".to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_window_refuses_until_it_passes() {
        let limiter = RateLimiter::new("things", 2, Duration::from_secs(60));
        let start = Instant::now();
        assert!(limiter.admit(b"a", start).is_ok());
        assert!(limiter.admit(b"a", start).is_ok());
        let refused = limiter.admit(b"a", start).err();
        assert_eq!(
            refused.map(|status| status.code()),
            Some(tonic::Code::ResourceExhausted)
        );
        // Another caller has its own window.
        assert!(limiter.admit(b"b", start).is_ok());
        assert!(limiter.admit(b"a", start + Duration::from_secs(61)).is_ok());
    }
}
