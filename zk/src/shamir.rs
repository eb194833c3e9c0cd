//! Shamir secret sharing over the Ristretto scalar field, and Lagrange interpolation.
//!
//! A secret s is the constant term of a random polynomial f of degree t − 1; member i (1-based)
//! holds f(i). Any set S of t members recovers s = Σ_{i∈S} λ_i·f(i) with
//!
//! ```text
//! λ_i = Π_{j∈S, j≠i} j / (j − i)
//! ```
//!
//! and, because the λ_i are public, the same combination works "in the exponent": from
//! f(i)·P for i ∈ S anyone computes s·P without learning s. Fewer than t shares reveal
//! nothing about s.

use curve25519_dalek::scalar::Scalar;
use rand_core::{CryptoRng, RngCore};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A committee member's 1-based index, which is also its Shamir evaluation point.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberIndex(u16);

impl MemberIndex {
    /// Builds an index; zero is not a member (f(0) is the secret).
    pub fn new(index: u16) -> Option<Self> {
        (index != 0).then_some(Self(index))
    }

    /// The index as a number.
    pub fn get(self) -> u16 {
        self.0
    }

    /// The evaluation point as a scalar.
    pub fn scalar(self) -> Scalar {
        Scalar::from(u64::from(self.0))
    }
}

impl std::fmt::Display for MemberIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A secret polynomial f(z) = a_0 + a_1·z + … + a_{t−1}·z^{t−1}. Zeroised on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretPolynomial {
    coefficients: Vec<Scalar>,
}

impl SecretPolynomial {
    /// A random polynomial of degree `threshold − 1`.
    pub fn random_with_rng<R: RngCore + CryptoRng>(threshold: u16, rng: &mut R) -> Self {
        Self {
            coefficients: (0..threshold).map(|_| Scalar::random(rng)).collect(),
        }
    }

    /// The coefficients a_0 … a_{t−1}.
    pub fn coefficients(&self) -> &[Scalar] {
        &self.coefficients
    }

    /// f(i), by Horner's rule.
    pub fn evaluate(&self, at: MemberIndex) -> Scalar {
        let x = at.scalar();
        self.coefficients
            .iter()
            .rev()
            .fold(Scalar::ZERO, |acc, coefficient| acc * x + coefficient)
    }
}

/// Lagrange coefficients λ_i at zero for the distinct indices in `members`.
pub fn lagrange_coefficients_at_zero(members: &[MemberIndex]) -> Vec<Scalar> {
    debug_assert!(
        {
            let mut sorted = members.to_vec();
            sorted.sort();
            sorted.windows(2).all(|pair| pair[0] != pair[1])
        },
        "lagrange interpolation needs distinct indices"
    );
    let mut numerators = Vec::with_capacity(members.len());
    let mut denominators = Vec::with_capacity(members.len());
    for &i in members {
        let mut numerator = Scalar::ONE;
        let mut denominator = Scalar::ONE;
        for &j in members {
            if i != j {
                numerator *= j.scalar();
                denominator *= j.scalar() - i.scalar();
            }
        }
        numerators.push(numerator);
        denominators.push(denominator);
    }
    Scalar::batch_invert(&mut denominators);
    numerators
        .iter()
        .zip(&denominators)
        .map(|(numerator, inverse)| numerator * inverse)
        .collect()
}
