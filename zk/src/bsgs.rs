//! Baby-step giant-step decryption of bounded integers, with a table cached on disk.
//!
//! Exponential ElGamal decrypts to M = m·G; recovering m is a discrete logarithm, feasible only
//! because m is known to be small: |m| ≤ B. With N = 2^k baby steps, write m = i·N + j with
//! 0 ≤ j < N. The table maps (a prefix of) the encoding of 2·(j·G) to j for every j in
//! [1, N). A search walks giant steps Q_i = M − i·(N·G) for i = 0, −1, 1, −2, 2, … — small
//! |m| first — until some Q_i is in the table (or is the identity, j = 0), and returns i·N + j
//! after checking (i·N + j)·G = M. The cost is at most 2B/N + 1 giant steps.
//!
//! The doubling is there because `RistrettoPoint::double_and_compress_batch` compresses many
//! points with one field inversion, which makes both building the table and each giant step
//! about five times cheaper than compressing points one at a time. Doubling is a bijection on
//! the prime-order group, so the table is still a table of j·G.
//!
//! Table entries keep only the first 8 bytes of each compressed point (12 bytes an entry with
//! the index), so the default k = 20 takes 12 MiB; every hit is confirmed against the full point,
//! so a prefix collision can cost time but never give a wrong answer. The file on disk carries a
//! SHA-256 checksum; a missing, truncated or corrupt file is rebuilt and rewritten atomically.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use curve25519_dalek::constants::{RISTRETTO_BASEPOINT_POINT, RISTRETTO_BASEPOINT_TABLE};
use curve25519_dalek::ristretto::RistrettoPoint;
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use sha2::{Digest, Sha256};

use crate::elgamal::{encode_message, scalar_from_i64};
use crate::errors::DecryptError;

/// Magic and format version of the table file.
const FILE_MAGIC: &[u8; 8] = b"CXBSGS01";
/// Points compressed per batch inversion.
const BATCH: usize = 512;

/// How large a table to build and how far to search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BsgsConfig {
    /// log2 of the number of baby steps N (8 to 28).
    pub table_bits: u8,
    /// The largest |m| a decryption searches for.
    pub max_abs: u64,
}

impl Default for BsgsConfig {
    /// 2^20 baby steps (12 MiB) and a search range of ±2^40.
    fn default() -> Self {
        Self {
            table_bits: 20,
            max_abs: 1 << 40,
        }
    }
}

impl BsgsConfig {
    fn validate(&self) -> Result<(), DecryptError> {
        if !(8..=28).contains(&self.table_bits) {
            return Err(DecryptError::InvalidConfig {
                reason: format!("table_bits is {}, must be 8 to 28", self.table_bits),
            });
        }
        if self.max_abs == 0 || self.max_abs > (1 << 62) {
            return Err(DecryptError::InvalidConfig {
                reason: format!("max_abs is {}, must be 1 to 2^62", self.max_abs),
            });
        }
        Ok(())
    }

    /// The file name under which a table for this configuration is cached.
    pub fn file_name(&self) -> String {
        format!("bsgs-ristretto255-k{}.v1.bin", self.table_bits)
    }
}

/// A baby-step table and the search bound.
pub struct DecryptionTable {
    config: BsgsConfig,
    /// First 8 bytes (little-endian) of compress(2·j·G), sorted ascending.
    keys: Vec<u64>,
    /// j for the key at the same position.
    indices: Vec<u32>,
    /// N·G.
    giant_step: RistrettoPoint,
}

impl std::fmt::Debug for DecryptionTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecryptionTable")
            .field("config", &self.config)
            .field("entries", &self.keys.len())
            .finish()
    }
}

fn key_of(compressed: &[u8; 32]) -> u64 {
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&compressed[..8]);
    u64::from_le_bytes(prefix)
}

impl DecryptionTable {
    /// Builds a table in memory.
    pub fn build(config: BsgsConfig) -> Result<Self, DecryptError> {
        config.validate()?;
        let baby_steps = 1usize << config.table_bits;
        let mut entries: Vec<(u64, u32)> = Vec::with_capacity(baby_steps - 1);
        let mut batch: Vec<RistrettoPoint> = Vec::with_capacity(BATCH);
        let mut current = RISTRETTO_BASEPOINT_POINT;
        let mut next_index: u32 = 1;
        for _ in 1..baby_steps {
            batch.push(current);
            current += RISTRETTO_BASEPOINT_POINT;
            if batch.len() == BATCH {
                for compressed in RistrettoPoint::double_and_compress_batch(&batch) {
                    entries.push((key_of(compressed.as_bytes()), next_index));
                    next_index += 1;
                }
                batch.clear();
            }
        }
        for compressed in RistrettoPoint::double_and_compress_batch(&batch) {
            entries.push((key_of(compressed.as_bytes()), next_index));
            next_index += 1;
        }
        entries.sort_unstable();
        let (keys, indices) = entries.into_iter().unzip();
        Ok(Self::from_parts(config, keys, indices))
    }

    fn from_parts(config: BsgsConfig, keys: Vec<u64>, indices: Vec<u32>) -> Self {
        let giant_step = &Scalar::from(1u64 << config.table_bits) * RISTRETTO_BASEPOINT_TABLE;
        Self {
            config,
            keys,
            indices,
            giant_step,
        }
    }

    /// Loads the table for `config` from `dir`, or builds it and writes it there.
    ///
    /// A file that is missing, truncated, of another size or with a bad checksum is rebuilt.
    /// The write goes to a temporary file that is renamed into place, so concurrent users see
    /// either no file or a whole one.
    pub fn load_or_build(dir: &Path, config: BsgsConfig) -> Result<Self, DecryptError> {
        config.validate()?;
        let path = dir.join(config.file_name());
        if let Some(table) = Self::load(&path, config) {
            return Ok(table);
        }
        let table = Self::build(config)?;
        table.store(&path)?;
        Ok(table)
    }

    /// The configuration.
    pub fn config(&self) -> BsgsConfig {
        self.config
    }

    fn expected_file_len(entries: usize) -> usize {
        FILE_MAGIC.len() + 1 + 4 + entries * 12 + 32
    }

    fn load(path: &Path, config: BsgsConfig) -> Option<Self> {
        let bytes = fs::read(path).ok()?;
        let entries = (1usize << config.table_bits) - 1;
        if bytes.len() != Self::expected_file_len(entries) {
            return None;
        }
        let (body, checksum) = bytes.split_at(bytes.len() - 32);
        if Sha256::digest(body).as_slice() != checksum {
            return None;
        }
        if &body[..8] != FILE_MAGIC || body[8] != config.table_bits {
            return None;
        }
        let count = u32::from_le_bytes(body[9..13].try_into().ok()?) as usize;
        if count != entries {
            return None;
        }
        let keys_bytes = &body[13..13 + 8 * count];
        let index_bytes = &body[13 + 8 * count..];
        let keys: Vec<u64> = keys_bytes
            .chunks_exact(8)
            .map(|chunk| {
                let mut buf = [0u8; 8];
                buf.copy_from_slice(chunk);
                u64::from_le_bytes(buf)
            })
            .collect();
        let indices: Vec<u32> = index_bytes
            .chunks_exact(4)
            .map(|chunk| u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
            .collect();
        if keys.windows(2).any(|pair| pair[0] > pair[1]) {
            return None;
        }
        Some(Self::from_parts(config, keys, indices))
    }

    fn store(&self, path: &Path) -> Result<(), DecryptError> {
        let cache_error = |reason: String| DecryptError::Cache {
            path: path.display().to_string(),
            reason,
        };
        let mut body = Vec::with_capacity(Self::expected_file_len(self.keys.len()));
        body.extend_from_slice(FILE_MAGIC);
        body.push(self.config.table_bits);
        body.extend_from_slice(&(self.keys.len() as u32).to_le_bytes());
        for key in &self.keys {
            body.extend_from_slice(&key.to_le_bytes());
        }
        for index in &self.indices {
            body.extend_from_slice(&index.to_le_bytes());
        }
        let checksum = Sha256::digest(&body);
        body.extend_from_slice(&checksum);

        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| cache_error(e.to_string()))?;
        }
        let temporary: PathBuf = path.with_extension(format!("tmp{}", std::process::id()));
        let mut file = fs::File::create(&temporary).map_err(|e| cache_error(e.to_string()))?;
        file.write_all(&body)
            .and_then(|()| file.sync_all())
            .map_err(|e| cache_error(e.to_string()))?;
        fs::rename(&temporary, path).map_err(|e| cache_error(e.to_string()))
    }

    fn lookup(&self, key: u64) -> impl Iterator<Item = u32> + '_ {
        let start = self.keys.partition_point(|&k| k < key);
        self.keys[start..]
            .iter()
            .zip(&self.indices[start..])
            .take_while(move |(&k, _)| k == key)
            .map(|(_, &index)| index)
    }

    /// Finds m with m·G = `point` and |m| ≤ max_abs.
    pub fn discrete_log(&self, point: &RistrettoPoint) -> Result<i64, DecryptError> {
        let step = 1i64 << self.config.table_bits;
        let bound = self.config.max_abs as i64;
        // Giant-step indices i with i·N + j in [−B, B] for some j in [0, N).
        let lowest_i = (-bound).div_euclid(step);
        let highest_i = bound.div_euclid(step);

        let mut next_nonnegative = (0i64, *point);
        let mut next_negative = (-1i64, point + self.giant_step);
        let mut candidates: Vec<(i64, RistrettoPoint)> = Vec::with_capacity(BATCH);
        loop {
            candidates.clear();
            while candidates.len() < BATCH {
                let nonnegative_left = next_nonnegative.0 <= highest_i;
                let negative_left = next_negative.0 >= lowest_i;
                if !nonnegative_left && !negative_left {
                    break;
                }
                if nonnegative_left {
                    candidates.push(next_nonnegative);
                    next_nonnegative =
                        (next_nonnegative.0 + 1, next_nonnegative.1 - self.giant_step);
                }
                if negative_left {
                    candidates.push(next_negative);
                    next_negative = (next_negative.0 - 1, next_negative.1 + self.giant_step);
                }
            }
            if candidates.is_empty() {
                return Err(DecryptError::OutOfRange {
                    max_abs: self.config.max_abs,
                });
            }
            // The identity (j = 0) cannot go through batch compression: it would zero the
            // batch's common inverse. Handle it first and replace it by a harmless point.
            let mut batch_points: Vec<RistrettoPoint> = Vec::with_capacity(candidates.len());
            for &(i, candidate) in &candidates {
                if candidate.is_identity() {
                    if let Some(found) = self.confirm(point, i * step, bound) {
                        return Ok(found);
                    }
                    batch_points.push(RISTRETTO_BASEPOINT_POINT);
                } else {
                    batch_points.push(candidate);
                }
            }
            let compressed = RistrettoPoint::double_and_compress_batch(&batch_points);
            for (&(i, _), encoding) in candidates.iter().zip(&compressed) {
                for j in self.lookup(key_of(encoding.as_bytes())) {
                    if let Some(found) = self.confirm(point, i * step + i64::from(j), bound) {
                        return Ok(found);
                    }
                }
            }
        }
    }

    fn confirm(&self, point: &RistrettoPoint, candidate: i64, bound: i64) -> Option<i64> {
        if candidate.abs() > bound {
            return None;
        }
        (encode_message(&scalar_from_i64(candidate)) == *point).then_some(candidate)
    }
}
