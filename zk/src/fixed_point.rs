//! Fixed-point encoding of bounded reals.
//!
//! A column declares bounds [lower, upper] and a number of decimal places d. A value x is
//! clipped to the bounds and encoded as the integer round(clip(x)·10^d). Clipping is what gives
//! each patient's contribution a known maximum, which range proofs enforce and differential
//! privacy calibrates its noise to. Sums of encoded values decode by dividing by 10^d (and
//! sums of products by 10^(2d)).

/// Largest number of decimal places supported (10^12 still leaves headroom in an i64 for
/// bounds up to about ±9·10^6).
pub const MAX_DECIMALS: u8 = 12;

/// Errors from building a codec or encoding a value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FixedPointError {
    /// The bounds are not finite or not ordered.
    #[error("bounds [{lower}, {upper}] must be finite with lower <= upper")]
    InvalidBounds {
        /// Declared lower bound.
        lower: f64,
        /// Declared upper bound.
        upper: f64,
    },
    /// Too many decimal places.
    #[error("{decimals} decimal places requested, at most {MAX_DECIMALS} supported")]
    TooManyDecimals {
        /// Requested decimal places.
        decimals: u8,
    },
    /// The scaled bounds do not fit in an i64.
    #[error("bounds scaled by 10^{decimals} overflow a 64-bit integer")]
    Overflow {
        /// Declared decimal places.
        decimals: u8,
    },
    /// The value is NaN.
    #[error("value is not a number")]
    NotANumber,
}

/// A declared fixed-point encoding for one bounded real-valued column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FixedPoint {
    lower: f64,
    upper: f64,
    decimals: u8,
    scale: f64,
}

/// An encoded value and whether clipping changed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Encoded {
    /// round(clip(x)·10^d).
    pub value: i64,
    /// Whether x was outside the bounds and got clipped.
    pub clipped: bool,
}

impl FixedPoint {
    /// Declares bounds and decimal places.
    pub fn new(lower: f64, upper: f64, decimals: u8) -> Result<Self, FixedPointError> {
        if !(lower.is_finite() && upper.is_finite() && lower <= upper) {
            return Err(FixedPointError::InvalidBounds { lower, upper });
        }
        if decimals > MAX_DECIMALS {
            return Err(FixedPointError::TooManyDecimals { decimals });
        }
        let scale = 10f64.powi(i32::from(decimals));
        let limit = i64::MAX as f64 / 2.0;
        if (lower * scale).abs() >= limit || (upper * scale).abs() >= limit {
            return Err(FixedPointError::Overflow { decimals });
        }
        Ok(Self {
            lower,
            upper,
            decimals,
            scale,
        })
    }

    /// Declared decimal places d.
    pub fn decimals(&self) -> u8 {
        self.decimals
    }

    /// The factor 10^d.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The encoded lower bound.
    pub fn encoded_lower(&self) -> i64 {
        (self.lower * self.scale).round() as i64
    }

    /// The encoded upper bound.
    pub fn encoded_upper(&self) -> i64 {
        (self.upper * self.scale).round() as i64
    }

    /// Clips `x` to the bounds and encodes it.
    pub fn encode(&self, x: f64) -> Result<Encoded, FixedPointError> {
        if x.is_nan() {
            return Err(FixedPointError::NotANumber);
        }
        let clipped_value = x.clamp(self.lower, self.upper);
        Ok(Encoded {
            value: (clipped_value * self.scale).round() as i64,
            clipped: clipped_value != x,
        })
    }

    /// Encodes `x` shifted so the lower bound maps to zero: the non-negative form that range
    /// proofs take (value − encoded_lower ∈ [0, encoded_upper − encoded_lower]).
    pub fn encode_offset(&self, x: f64) -> Result<u64, FixedPointError> {
        let encoded = self.encode(x)?;
        let offset = encoded.value - self.encoded_lower();
        debug_assert!(offset >= 0, "clipping keeps the offset non-negative");
        Ok(offset.unsigned_abs())
    }

    /// Decodes one encoded value, or a sum of encoded values.
    pub fn decode(&self, encoded: i64) -> f64 {
        encoded as f64 / self.scale
    }

    /// Decodes a sum of products of two values encoded with this codec and `other`.
    pub fn decode_product(&self, other: &FixedPoint, encoded: i128) -> f64 {
        encoded as f64 / (self.scale * other.scale)
    }

    /// Smallest bit size (8, 16, 32 or 64) whose range holds every offset-encoded value.
    pub fn range_bits(&self) -> usize {
        let span = (self.encoded_upper() - self.encoded_lower()).unsigned_abs();
        [8usize, 16, 32]
            .into_iter()
            .find(|&bits| span < (1u64 << bits))
            .unwrap_or(64)
    }
}
