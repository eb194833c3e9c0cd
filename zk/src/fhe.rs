//! TFHE for blind feasibility search (feature `tfhe`, on by default).
//!
//! A trial recruiter's inclusion criteria are confidential: a competitor learning which
//! HbA1c band or which code prefixes a sponsor screens for learns its trial design. So the
//! recruiter encrypts them under its own TFHE key ([`FheSecretKey`], `tfhe` crate, integer
//! API, `PARAM_MESSAGE_2_CARRY_2_KS32_PBS_TUNIFORM_2M128`: 2 message and 2 carry bits per
//! block, failure probability below 2⁻¹²⁸ per bootstrap) as **indicator tables**: for each
//! clause, over a public domain of bins (an age grid, the sex categories, a vocabulary of
//! code prefixes), one encrypted bit per bin, 1 where the criterion accepts the bin. A node
//! evaluates them with only the recruiter's public [`EvaluationKey`] and never learns a bit.
//!
//! What a node computes ([`Evaluator`]), with `T_c[b]` the table of clause `c` and `n(t)` the
//! number of consenting patients whose bins form the tuple `t = (b_1, …, b_C)`:
//!
//! ```text
//!   m(t)   = [ T_1[b_1] + … + T_C[b_C] = C ]           one bootstrap per distinct tuple
//!   count  = Σ_t n(t) · m(t)                           linear: n(t) in base 4, column sums
//!   noisy  = count + X + K,    X ~ discrete Laplace, |X| ≤ K     (plaintext X, added under encryption)
//!   out    = noisy ≥ min + K ? noisy : 0               the minimum-cohort rule, under encryption
//! ```
//!
//! The recruiter decrypts `out`: 0 means the site is below the minimum cohort (suppressed),
//! anything else is `out − K`, the site's noisy count.
//!
//! Cost scales with distinct tuples, not patients: patients are grouped in plaintext first,
//! each tuple costs one bootstrap for its match bit, and `n(t)` enters only through which
//! columns its match bit is added to (digit `d` of `n(t)` in base 4 adds the bit `d` times to
//! column `d`'s position), so the whole count is one carry-save column sum: clean blocks are
//! added without bootstrapping until a block's degree or noise budget is full, then one
//! message and one carry extraction move the carry to the next column.
//!
//! Table entries are sanitised on arrival: each is bootstrapped twice through `x ↦ [x = 1]`,
//! so whatever a recruiter encrypted (2, 3, or a value with the padding bit set) becomes a
//! fresh encryption of 0 or 1 (the first bootstrap maps the negacyclic half to 0 or −1, the
//! second maps −1 to 0). A patient can therefore move `count` by at most 1, which is the
//! sensitivity the noise is calibrated to. What this cannot check is the evaluation key
//! itself: tfhe-rs offers no proof that a server key is well formed, and a recruiter who
//! crafted a malicious key could make the bootstraps compute other functions. That limit is
//! written down in `docs/recruitment.md`.
//!
//! Randomness: tfhe-rs draws its encryption noise from its own seeded CSPRNG (AES-CTR, seeded
//! from the operating system); it takes no caller RNG, so, unlike the curve code, these
//! functions cannot be driven by an injected RNG.

use rayon::prelude::*;
use sha2::{Digest, Sha256};
use tfhe::conformance::ParameterSetConformant;
use tfhe::integer::prelude::*;
use tfhe::integer::{CompressedServerKey, RadixClientKey, ServerKey};
use tfhe::shortint::ciphertext::Degree;
use tfhe::shortint::parameters::PARAM_MESSAGE_2_CARRY_2_KS32_PBS_TUNIFORM_2M128;
use tfhe::shortint::CompressedCiphertext;

/// An encrypted integer of [`COUNT_BLOCKS`] blocks (a count before its release).
pub use tfhe::integer::RadixCiphertext;
/// One encrypted block (2 message and 2 carry bits) under the recruiter's key.
pub use tfhe::shortint::Ciphertext as Block;
use zeroize::Zeroizing;

/// The parameter set of every key and ciphertext here.
pub const PARAMETERS: tfhe::shortint::parameters::KeySwitch32PBSParameters =
    PARAM_MESSAGE_2_CARRY_2_KS32_PBS_TUNIFORM_2M128;

/// Blocks of a released count: 2 bits each, so counts (with the noise offset) below 2²⁴.
pub const COUNT_BLOCKS: usize = 12;

/// Largest evaluation key accepted, in bytes (a compressed key is about 30 MB).
pub const MAX_EVALUATION_KEY_BYTES: usize = 64 << 20;

/// Largest encrypted bit accepted, in bytes (a compressed block is about 100 bytes).
pub const MAX_ENCRYPTED_BIT_BYTES: usize = 4096;

/// Largest encrypted count accepted, in bytes ([`COUNT_BLOCKS`] blocks of about 16 KB).
pub const MAX_ENCRYPTED_COUNT_BYTES: usize = 1 << 20;

/// Bytes of a key gated by a match bit ([`Evaluator::gate_key`]).
pub const GATED_KEY_BYTES: usize = 32;

/// Blocks of a gated key: 2 bits of the key per block.
pub const GATED_KEY_BLOCKS: usize = GATED_KEY_BYTES * 4;

/// Largest gated key accepted, in bytes ([`GATED_KEY_BLOCKS`] blocks of about 16 KB).
pub const MAX_GATED_KEY_BYTES: usize = 4 << 20;

/// Domain label of an evaluation key's fingerprint.
pub const LABEL_EVALUATION_KEY: &str = cohortex_types::labels::LABEL_EVALUATION_KEY;

/// The message modulus of a block (base of the radix digits).
const BASE: u64 = 4;

/// What went wrong with TFHE material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FheError {
    /// Bytes are larger than the limit for their kind.
    #[error("{what} is {len} bytes, more than the {max} accepted")]
    TooLarge {
        /// What was being decoded.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Bytes do not decode.
    #[error("{what} does not decode: {reason}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The material decodes but is not for this parameter set (dimensions, moduli, degree).
    #[error("{0} is not for the parameter set this build uses")]
    NotConformant(&'static str),
    /// A count did not fit the released ciphertext.
    #[error("count {count} with noise offset {offset} does not fit {COUNT_BLOCKS} blocks")]
    CountOutOfRange {
        /// The largest count the node could hold.
        count: u64,
        /// The noise offset.
        offset: u64,
    },
    /// `all_of` or `any_of` was given no indicator.
    #[error("no indicator to combine")]
    Empty,
}

fn decode<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    what: &'static str,
    max: usize,
) -> Result<T, FheError> {
    if bytes.len() > max {
        return Err(FheError::TooLarge {
            what,
            len: bytes.len(),
            max,
        });
    }
    bincode::deserialize(bytes).map_err(|error| FheError::Malformed {
        what,
        reason: error.to_string(),
    })
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    match bincode::serialize(value) {
        Ok(bytes) => bytes,
        // Serialising these types into a Vec cannot fail.
        Err(error) => unreachable!("tfhe serialisation failed: {error}"),
    }
}

/// The recruiter's secret key: decrypts the released counts. Never leaves the recruiter.
pub struct FheSecretKey {
    key: RadixClientKey,
}

impl FheSecretKey {
    /// A fresh key (tfhe-rs seeds its own CSPRNG from the operating system).
    pub fn generate() -> Self {
        Self {
            key: RadixClientKey::new(PARAMETERS, COUNT_BLOCKS),
        }
    }

    /// The public evaluation key a node computes with: the compressed (seeded) server key.
    pub fn evaluation_key(&self) -> EvaluationKey {
        EvaluationKey {
            key: CompressedServerKey::new_radix_compressed_server_key(self.key.as_ref()),
        }
    }

    fn shortint(&self) -> &tfhe::shortint::ClientKey {
        let integer: &tfhe::integer::ClientKey = self.key.as_ref();
        integer.as_ref()
    }

    /// One table entry: `bit` encrypted as a compressed (seeded) block.
    pub fn encrypt_bit(&self, bit: bool) -> EncryptedBit {
        EncryptedBit(self.shortint().encrypt_compressed(u64::from(bit)))
    }

    /// A table entry encrypting `value` modulo 4, not only 0 or 1: what a dishonest recruiter
    /// could send. Tests check that nodes sanitise it.
    #[cfg(feature = "hazmat")]
    pub fn encrypt_raw_entry(&self, value: u64) -> EncryptedBit {
        EncryptedBit(self.shortint().encrypt_compressed(value))
    }

    /// Opens a node's released count: `None` when the site was below the minimum cohort.
    pub fn decrypt_count(&self, count: &EncryptedCount) -> Option<i64> {
        let value: u64 = self.key.decrypt(&count.ciphertext);
        if value == 0 {
            return None;
        }
        // value − offset, with offset < 2³² and value < 2³²: fits an i64.
        Some(value as i64 - count.offset as i64)
    }

    /// Opens a gated key ([`Evaluator::gate_key`]): the key when its match bit was 1, `None`
    /// when it was 0 (every block decrypts to 0).
    pub fn open_gated_key(&self, gated: &GatedKey) -> Option<Zeroizing<[u8; GATED_KEY_BYTES]>> {
        let mut key = Zeroizing::new([0u8; GATED_KEY_BYTES]);
        for (index, block) in gated.ciphertext.blocks().iter().enumerate() {
            let chunk = self.shortint().decrypt(block) & (BASE - 1);
            key[index / 4] |= (chunk as u8) << (2 * (index % 4));
        }
        if key.iter().all(|byte| *byte == 0) {
            return None;
        }
        Some(key)
    }

    /// The secret key's bytes (bincode), in a buffer zeroed on drop.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(encode(&self.key))
    }

    /// Reads [`FheSecretKey::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FheError> {
        Ok(Self {
            key: decode(bytes, "secret key", MAX_EVALUATION_KEY_BYTES)?,
        })
    }
}

/// The recruiter's public evaluation key (a compressed tfhe server key).
#[derive(Clone)]
pub struct EvaluationKey {
    key: CompressedServerKey,
}

impl EvaluationKey {
    /// Its bytes (bincode), about 30 MB.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(&self.key)
    }

    /// Decodes a key, refusing one over [`MAX_EVALUATION_KEY_BYTES`] or not for
    /// [`PARAMETERS`] (dimensions and moduli; its contents cannot be checked, see the module
    /// documentation).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FheError> {
        let key: CompressedServerKey = decode(bytes, "evaluation key", MAX_EVALUATION_KEY_BYTES)?;
        if !key.is_conformant(&PARAMETERS.into()) {
            return Err(FheError::NotConformant("evaluation key"));
        }
        Ok(Self { key })
    }

    /// `SHA-256(label, bytes)`: names the key in orders and caches.
    pub fn fingerprint_of(bytes: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update([LABEL_EVALUATION_KEY.len() as u8]);
        hasher.update(LABEL_EVALUATION_KEY.as_bytes());
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
        hasher.finalize().into()
    }

    /// Expands the key for computing (seconds: the seeds are expanded and the bootstrapping
    /// key is moved to the Fourier domain; about 120 MB in memory).
    pub fn expand(&self) -> Evaluator {
        Evaluator {
            key: self.key.decompress(),
        }
    }
}

/// One encrypted table entry.
#[derive(Clone)]
pub struct EncryptedBit(CompressedCiphertext);

impl EncryptedBit {
    /// Its bytes (bincode), about 100.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(&self.0)
    }

    /// Decodes an entry, refusing one not for [`PARAMETERS`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FheError> {
        let block: CompressedCiphertext = decode(bytes, "encrypted bit", MAX_ENCRYPTED_BIT_BYTES)?;
        if !block.is_conformant(&PARAMETERS.to_shortint_conformance_param()) {
            return Err(FheError::NotConformant("encrypted bit"));
        }
        Ok(Self(block))
    }
}

/// A node's released, noisy, thresholded count under the recruiter's key.
#[derive(Clone)]
pub struct EncryptedCount {
    ciphertext: RadixCiphertext,
    /// K, the noise bound added so that the value stays non-negative.
    offset: u64,
}

impl EncryptedCount {
    /// Its bytes: the offset (8 bytes, big-endian) and the radix ciphertext (bincode).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = self.offset.to_be_bytes().to_vec();
        bytes.extend(encode(&self.ciphertext));
        bytes
    }

    /// Decodes [`EncryptedCount::to_bytes`], refusing a ciphertext of another shape.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FheError> {
        if bytes.len() > MAX_ENCRYPTED_COUNT_BYTES {
            return Err(FheError::TooLarge {
                what: "encrypted count",
                len: bytes.len(),
                max: MAX_ENCRYPTED_COUNT_BYTES,
            });
        }
        let Some((offset, rest)) = bytes.split_first_chunk::<8>() else {
            return Err(FheError::Malformed {
                what: "encrypted count",
                reason: "shorter than its offset".into(),
            });
        };
        let ciphertext: RadixCiphertext =
            decode(rest, "encrypted count", MAX_ENCRYPTED_COUNT_BYTES)?;
        let shape = tfhe::integer::parameters::RadixCiphertextConformanceParams {
            shortint_params: PARAMETERS.to_shortint_conformance_param(),
            num_blocks_per_integer: COUNT_BLOCKS,
        };
        if !ciphertext.is_conformant(&shape) {
            return Err(FheError::NotConformant("encrypted count"));
        }
        Ok(Self {
            ciphertext,
            offset: u64::from_be_bytes(*offset),
        })
    }
}

/// A 32-byte key multiplied by an encrypted match bit, under the recruiter's key: the key
/// when the bit is 1, zeros when it is 0 (see [`Evaluator::gate_key`]).
#[derive(Clone)]
pub struct GatedKey {
    ciphertext: RadixCiphertext,
}

impl GatedKey {
    /// Its bytes (bincode), about 2 MB.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode(&self.ciphertext)
    }

    /// Every block's degree (clear metadata, the same for every key).
    pub fn degrees(&self) -> Vec<u64> {
        self.ciphertext
            .blocks()
            .iter()
            .map(|block| block.degree.get())
            .collect()
    }

    /// Decodes [`GatedKey::to_bytes`], refusing a ciphertext of another shape.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, FheError> {
        let ciphertext: RadixCiphertext = decode(bytes, "gated key", MAX_GATED_KEY_BYTES)?;
        let shape = tfhe::integer::parameters::RadixCiphertextConformanceParams {
            shortint_params: PARAMETERS.to_shortint_conformance_param(),
            num_blocks_per_integer: GATED_KEY_BLOCKS,
        };
        if !ciphertext.is_conformant(&shape) {
            return Err(FheError::NotConformant("gated key"));
        }
        Ok(Self { ciphertext })
    }
}

/// Packs blocks, in order, into groups whose total degree and noise stay within the budgets
/// (a block alone always forms a group).
fn pack(blocks: Vec<Block>, max_degree: u64, max_noise: u64) -> Vec<Vec<Block>> {
    let mut groups: Vec<Vec<Block>> = Vec::new();
    let mut current: Vec<Block> = Vec::new();
    let (mut degree, mut noise) = (0u64, 0u64);
    for block in blocks {
        let (d, n) = (block.degree.get(), block.noise_level().get());
        if !current.is_empty() && (degree + d > max_degree || noise + n > max_noise) {
            groups.push(std::mem::take(&mut current));
            degree = 0;
            noise = 0;
        }
        degree += d;
        noise += n;
        current.push(block);
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

/// A tuple's encrypted match bit `m`, as the blocks `m`, `2m` and `3m` (see
/// [`Evaluator::match_bit`]): one per nonzero base-4 digit a weight can have.
#[derive(Clone)]
pub struct MatchBit {
    multiples: [Block; 3],
}

/// A node's side: the expanded evaluation key and the operations of the feasibility circuit.
pub struct Evaluator {
    key: ServerKey,
}

impl Evaluator {
    fn shortint(&self) -> &tfhe::shortint::ServerKey {
        self.key.as_ref()
    }

    /// A trivial (noiseless, publicly known) 0: a bin no patient falls in, or a clause no code
    /// of a patient reaches.
    pub fn zero(&self) -> Block {
        self.shortint().create_trivial(0)
    }

    /// A received table entry as a fresh encryption of 0 or 1, whatever was encrypted (two
    /// bootstraps through `x ↦ [x = 1]`, see the module documentation).
    pub fn sanitize(&self, bit: &EncryptedBit) -> Block {
        let key = self.shortint();
        let is_one = key.generate_lookup_table(|x| u64::from(x == 1));
        let mut block = bit.0.decompress();
        key.apply_lookup_table_assign(&mut block, &is_one);
        key.apply_lookup_table_assign(&mut block, &is_one);
        block.degree = Degree::new(1);
        block
    }

    /// Every entry of a table, sanitised, in parallel.
    pub fn sanitize_all(&self, bits: &[EncryptedBit]) -> Vec<Block> {
        bits.par_iter().map(|bit| self.sanitize(bit)).collect()
    }

    /// Whether `block` is a trivial (publicly known) 0: a match bit the public domain alone
    /// decided, which costs nothing further.
    pub fn is_public_zero(block: &Block) -> bool {
        block.is_trivial() && block.degree.get() == 0
    }

    /// Sums clean 0/1 indicators in groups of at most four (the degree and noise budget a
    /// bootstrap reads correctly) and maps each group's sum through `accept(sum, group size)`
    /// with one bootstrap, level by level, until one block is left.
    fn reduce(
        &self,
        mut level: Vec<Block>,
        accept: impl Fn(u64, u64) -> bool + Sync,
    ) -> Result<Block, FheError> {
        while level.len() > 1 {
            level = self.reduce_level(level, &accept);
        }
        level.pop().ok_or(FheError::Empty)
    }

    /// `[every indicator is 1]` for clean 0/1 indicators (one bootstrap per group of four;
    /// none when an indicator is a trivial 0 or there is only one).
    pub fn all_of(&self, indicators: &[&Block]) -> Result<Block, FheError> {
        if indicators.is_empty() {
            return Err(FheError::Empty);
        }
        if indicators.iter().any(|block| Self::is_public_zero(block)) {
            return Ok(self.zero());
        }
        let level = indicators.iter().map(|block| (*block).clone()).collect();
        self.reduce(level, |sum, size| sum == size)
    }

    /// `[some indicator is 1]` for clean 0/1 indicators (one bootstrap per group of four;
    /// trivial zeros are left out, and none left gives a trivial 0).
    pub fn any_of(&self, indicators: &[&Block]) -> Result<Block, FheError> {
        if indicators.is_empty() {
            return Err(FheError::Empty);
        }
        let level: Vec<Block> = indicators
            .iter()
            .filter(|block| !Self::is_public_zero(block))
            .map(|block| (*block).clone())
            .collect();
        if level.is_empty() {
            return Ok(self.zero());
        }
        self.reduce(level, |sum, _| sum >= 1)
    }

    /// A tuple's match bit `m = [every indicator is 1]` for clean 0/1 indicators, as the
    /// blocks `m`, `2m` and `3m` that one three-function bootstrap gives (`None` when an
    /// indicator is a public 0, which costs nothing). More than four indicators are first
    /// reduced in groups of four with [`Evaluator::all_of`]'s bootstrap (a three-function
    /// bootstrap reads sums up to 4).
    pub fn match_bit(&self, indicators: &[&Block]) -> Result<Option<MatchBit>, FheError> {
        if indicators.is_empty() {
            return Err(FheError::Empty);
        }
        if indicators.iter().any(|block| Self::is_public_zero(block)) {
            return Ok(None);
        }
        let key = self.shortint();
        let mut level: Vec<Block> = indicators.iter().map(|block| (*block).clone()).collect();
        while level.len() > 4 {
            level = self.reduce_level(level, |sum, size| sum == size);
        }
        let size = level.len() as u64;
        let mut sum = level[0].clone();
        for block in &level[1..] {
            key.unchecked_add_assign(&mut sum, block);
        }
        let one = move |x: u64| u64::from(x == size);
        let two = move |x: u64| 2 * u64::from(x == size);
        let three = move |x: u64| 3 * u64::from(x == size);
        let lut = key.generate_many_lookup_table(&[&one, &two, &three]);
        let out = key.apply_many_lookup_table(&sum, &lut);
        let multiples: [Block; 3] = out.try_into().map_err(|_| FheError::Empty)?;
        Ok(Some(MatchBit { multiples }))
    }

    /// One level of [`Evaluator::reduce`]: groups of four, each mapped through `accept`.
    fn reduce_level(
        &self,
        level: Vec<Block>,
        accept: impl Fn(u64, u64) -> bool + Sync,
    ) -> Vec<Block> {
        let key = self.shortint();
        level
            .par_chunks(4)
            .map(|group| {
                let size = group.len() as u64;
                let mut sum = group[0].clone();
                for block in &group[1..] {
                    key.unchecked_add_assign(&mut sum, block);
                }
                let lut = key.generate_lookup_table(|x| u64::from(accept(x, size)));
                key.apply_lookup_table(&sum, &lut)
            })
            .collect()
    }

    /// `Σ weight · m` over the tuples' match bits, as a [`COUNT_BLOCKS`]-block radix integer.
    /// `Σ weight` must stay below 4¹² (a count of patients, so at most the vault's size).
    ///
    /// Digit `d` of a weight in base 4 puts the block `d·m` in that digit's column: a
    /// carry-save column sum follows. In each column, blocks of degree 1 or 2 are summed in
    /// groups of total degree at most 7 and split by one two-function bootstrap into the sum's
    /// message (kept) and carry (moved to the next column); blocks of degree 3 go five at a
    /// time (degree 15) through two one-function bootstraps, which absorbs more per
    /// bootstrap at that degree. Every group keeps within the parameter set's noise budget.
    pub fn weighted_count(&self, terms: &[(&MatchBit, u64)]) -> RadixCiphertext {
        let key = self.shortint();
        let mut columns: Vec<Vec<Block>> = vec![Vec::new(); COUNT_BLOCKS];
        for (bit, weight) in terms {
            let mut rest = *weight;
            for column in columns.iter_mut() {
                let digit = (rest % BASE) as usize;
                if digit > 0 {
                    column.push(bit.multiples[digit - 1].clone());
                }
                rest /= BASE;
                if rest == 0 {
                    break;
                }
            }
        }
        let budget_noise = key.max_noise_level.get();
        let budget_degree = key.message_modulus.0 * key.carry_modulus.0 - 1;
        let message = |x: u64| x % BASE;
        let carry = |x: u64| x / BASE;
        let split = key.generate_many_lookup_table(&[&message, &carry]);
        let split_degree = key.message_modulus.0 * key.carry_modulus.0 / 2 - 1;
        let message_lut = key.generate_lookup_table(message);
        let carry_lut = key.generate_lookup_table(carry);
        let mut blocks = Vec::with_capacity(COUNT_BLOCKS);
        for position in 0..COUNT_BLOCKS {
            let mut column = std::mem::take(&mut columns[position]);
            let mut carries = Vec::new();
            loop {
                let degree: u64 = column.iter().map(|block| block.degree.get()).sum();
                let noise: u64 = column.iter().map(|block| block.noise_level().get()).sum();
                if degree < BASE && noise <= budget_noise {
                    // What is left cannot carry: add it up; the release's carry propagation
                    // cleans it.
                    let mut rest = column.drain(..);
                    if let Some(mut sum) = rest.next() {
                        for block in rest {
                            key.unchecked_add_assign(&mut sum, &block);
                        }
                        column.push(sum);
                    }
                    break;
                }
                let (small, large): (Vec<Block>, Vec<Block>) = column
                    .drain(..)
                    .partition(|block| block.degree.get() < BASE - 1);
                let mut groups = pack(small, split_degree, budget_noise);
                groups.extend(pack(large, budget_degree, budget_noise));
                if groups.iter().all(|group| group.len() == 1) {
                    // One small and one large block left: pack them together (any two clean
                    // blocks fit one bootstrap), so that every round makes progress.
                    let all = groups.into_iter().flatten().collect();
                    groups = pack(all, budget_degree, budget_noise);
                }
                let reduced: Vec<(Block, Option<Block>)> = groups
                    .into_par_iter()
                    .map(|group| {
                        let mut members = group.into_iter();
                        let Some(mut sum) = members.next() else {
                            unreachable!("groups are never empty");
                        };
                        let mut alone = true;
                        for block in members {
                            key.unchecked_add_assign(&mut sum, &block);
                            alone = false;
                        }
                        if alone {
                            return (sum, None);
                        }
                        if sum.degree.get() <= split_degree {
                            let mut parts = key.apply_many_lookup_table(&sum, &split);
                            let high = parts.pop();
                            let low = parts.pop();
                            match (low, high) {
                                (Some(low), Some(high)) => (low, Some(high)),
                                _ => unreachable!("a two-function bootstrap gives two blocks"),
                            }
                        } else {
                            rayon::join(
                                || key.apply_lookup_table(&sum, &message_lut),
                                || Some(key.apply_lookup_table(&sum, &carry_lut)),
                            )
                        }
                    })
                    .collect();
                for (message, carry) in reduced {
                    column.push(message);
                    carries.extend(carry.filter(|block| block.degree.get() > 0));
                }
            }
            if let Some(next) = columns.get_mut(position + 1) {
                next.extend(carries);
            }
            // Past the last column a carry would be an overflow, which the weight bound rules
            // out.
            blocks.push(column.pop().unwrap_or_else(|| self.zero()));
        }
        RadixCiphertext::from(blocks)
    }

    /// A fresh (not trivial) encryption of 0, bootstrapped from `like`, a non-trivial block
    /// of degree at most 1: what stands for a match bit the public domain already decided,
    /// so that a gated key never shows that it was.
    pub fn fresh_zero(&self, like: &Block) -> Block {
        let key = self.shortint();
        let zero = key.generate_lookup_table(|_| 0);
        let mut block = like.clone();
        key.apply_lookup_table_assign(&mut block, &zero);
        block.degree = Degree::new(0);
        block
    }

    /// `key · m` for a clean, non-trivial match bit `m` (degree at most 1): the 32-byte key
    /// split into 128 two-bit chunks `c`, each the output `c·m` of a bootstrap of `m`. One
    /// eight-function bootstrap gives eight chunks (16 bootstraps in all), and every output
    /// is a fresh ciphertext with the same clear metadata (degree 3, nominal noise level), so
    /// the chunks' values cannot be told apart without the recruiter's key.
    pub fn gate_key(
        &self,
        m: &Block,
        secret: &[u8; GATED_KEY_BYTES],
    ) -> Result<GatedKey, FheError> {
        if m.is_trivial() || m.degree.get() > 1 {
            return Err(FheError::Malformed {
                what: "match bit",
                reason: "a gate needs a non-trivial bit of degree at most 1".into(),
            });
        }
        let key = self.shortint();
        let chunks: Vec<u64> = (0..GATED_KEY_BLOCKS)
            .map(|index| u64::from(secret[index / 4] >> (2 * (index % 4))) & (BASE - 1))
            .collect();
        let blocks: Vec<Block> = chunks
            .par_chunks(8)
            .flat_map_iter(|group| {
                let functions: Vec<Box<dyn Fn(u64) -> u64>> = group
                    .iter()
                    .map(|&chunk| {
                        Box::new(move |x: u64| chunk * u64::from(x == 1)) as Box<dyn Fn(u64) -> u64>
                    })
                    .collect();
                let references: Vec<&dyn Fn(u64) -> u64> =
                    functions.iter().map(|function| function.as_ref()).collect();
                let lut = key.generate_many_lookup_table(&references);
                key.apply_many_lookup_table(m, &lut)
            })
            .map(|mut block| {
                // The degree is clear metadata: tfhe sets it to the chunk's value, which would
                // show the key. Every block gets the full degree of a clean block instead.
                block.degree = Degree::new(BASE - 1);
                block
            })
            .collect();
        Ok(GatedKey {
            ciphertext: RadixCiphertext::from(blocks),
        })
    }

    /// The released count: `count + noise + offset` if that is at least
    /// `min_cohort + offset`, else 0, where `offset` = K ≥ |noise| keeps it non-negative.
    /// `count` must be clean (as [`Evaluator::weighted_count`] leaves it).
    pub fn release(
        &self,
        count: &RadixCiphertext,
        noise: i64,
        offset: u64,
        min_cohort: u64,
        largest_count: u64,
    ) -> Result<EncryptedCount, FheError> {
        let limit = 1u64 << (2 * COUNT_BLOCKS as u32);
        let top = largest_count
            .checked_add(offset.saturating_mul(2))
            .filter(|top| *top < limit);
        if top.is_none() || noise.unsigned_abs() > offset {
            return Err(FheError::CountOutOfRange {
                count: largest_count,
                offset,
            });
        }
        // noise + offset ∈ [0, 2·offset].
        let shift = (noise + offset as i64) as u64;
        let mut noisy = count.clone();
        if !noisy.is_clean() {
            self.key.full_propagate_parallelized(&mut noisy);
        }
        let noisy = self.key.scalar_add_parallelized(&noisy, shift);
        let passes = self
            .key
            .scalar_ge_parallelized(&noisy, min_cohort.saturating_add(offset));
        let zero: RadixCiphertext = self.key.create_trivial_zero_radix(COUNT_BLOCKS);
        let released = self.key.if_then_else_parallelized(&passes, &noisy, &zero);
        Ok(EncryptedCount {
            ciphertext: released,
            offset,
        })
    }
}
