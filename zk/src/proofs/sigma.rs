//! The shape shared by the sigma protocols here: a verification equation Σ_k s_k·B_k = 0 over
//! a few bases, queued into a [`BatchVerifier`] under a fresh random weight.

use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;

use super::batch::BatchVerifier;

/// A base in a verification equation.
#[derive(Clone, Copy)]
pub(crate) enum Base<'a> {
    /// The basepoint G.
    G,
    /// A base many equations share (a collective or recipient key).
    Shared(&'a RistrettoPoint),
    /// A point that belongs to this proof alone.
    Own(RistrettoPoint),
}

/// Queues ρ·Σ_k s_k·B_k = 0 with a fresh weight ρ.
pub(crate) fn queue_equation(verifier: &mut BatchVerifier, terms: &[(Scalar, Base<'_>)]) {
    let weight = verifier.weight();
    for &(coefficient, base) in terms {
        let weighted = weight * coefficient;
        match base {
            Base::G => verifier.add_basepoint(weighted),
            Base::Shared(point) => verifier.add_shared(point, weighted),
            Base::Own(point) => verifier.add_point(weighted, point),
        }
    }
}
