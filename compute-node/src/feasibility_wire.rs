//! Encrypted feasibility criteria on the wire (features `server` and `tfhe`): conversion from
//! and to `cohortex.v1.EncryptedCriteria`, with every field checked and named, and the hash
//! an order's `query_hash` must equal.

use cohortex_proto::v1;
use market::hash::{Hash32, TaggedHasher};
use tonic::Status;
use zk::fhe::{EncryptedBit, MAX_EVALUATION_KEY_BYTES};

use crate::feasibility::{Domain, EncryptedClause, EncryptedCriteria, MAX_BINS, MAX_CLAUSES};

/// Domain label of the criteria hash (a feasibility order's `query_hash`).
pub const LABEL_CRITERIA: &str = cohortex_types::labels::LABEL_FEASIBILITY_CRITERIA;

/// Bytes per chunk when streaming an evaluation key.
pub const KEY_CHUNK_BYTES: usize = 1 << 20;

/// An evaluation key cut into the chunks of a `PutEvaluationKey` stream, in order.
pub fn evaluation_key_chunks(bytes: &[u8]) -> Vec<v1::EvaluationKeyChunk> {
    bytes
        .chunks(KEY_CHUNK_BYTES)
        .map(|chunk| v1::EvaluationKeyChunk {
            data: chunk.to_vec(),
        })
        .collect()
}

/// `tagged_hash("cohortex/market/feasibility-criteria/v1", …)` over the evaluation key's
/// fingerprint and every clause's column, domain and table entries, each as its own part.
pub fn criteria_hash(criteria: &v1::EncryptedCriteria) -> Hash32 {
    let mut hasher = TaggedHasher::new(LABEL_CRITERIA);
    hasher.update_part(&criteria.evaluation_key);
    hasher.update_part(&(criteria.clauses.len() as u64).to_be_bytes());
    for clause in &criteria.clauses {
        hasher.update_part(clause.column.as_bytes());
        match &clause.domain {
            Some(v1::feasibility_clause::Domain::Edges(list)) => {
                hasher.update_part(b"edges");
                hasher.update_part(&(list.edges.len() as u64).to_be_bytes());
                for edge in &list.edges {
                    hasher.update_part(&edge.to_be_bytes());
                }
            }
            Some(v1::feasibility_clause::Domain::Categories(list)) => {
                hasher.update_part(b"categories");
                hash_names(&mut hasher, &list.names);
            }
            Some(v1::feasibility_clause::Domain::Prefixes(list)) => {
                hasher.update_part(b"prefixes");
                hash_names(&mut hasher, &list.names);
            }
            None => hasher.update_part(b"none"),
        }
        hasher.update_part(&(clause.table.len() as u64).to_be_bytes());
        for entry in &clause.table {
            hasher.update_part(entry);
        }
    }
    hasher.finalize()
}

fn hash_names(hasher: &mut TaggedHasher, names: &[String]) {
    hasher.update_part(&(names.len() as u64).to_be_bytes());
    for name in names {
        hasher.update_part(name.as_bytes());
    }
}

/// Decodes the wire criteria: the evaluation key's fingerprint (32 bytes) and the clauses,
/// each field checked before anything is allocated for it and named in the error.
pub fn criteria_from_wire(
    criteria: &v1::EncryptedCriteria,
    field: &str,
) -> Result<([u8; 32], EncryptedCriteria), Status> {
    let fingerprint: [u8; 32] = criteria.evaluation_key.as_slice().try_into().map_err(|_| {
        Status::invalid_argument(format!("{field}.evaluation_key: must be 32 bytes"))
    })?;
    if criteria.clauses.is_empty() || criteria.clauses.len() > MAX_CLAUSES {
        return Err(Status::invalid_argument(format!(
            "{field}.clauses: {} clause(s); 1 to {MAX_CLAUSES} are accepted",
            criteria.clauses.len()
        )));
    }
    let mut clauses = Vec::with_capacity(criteria.clauses.len());
    for (index, clause) in criteria.clauses.iter().enumerate() {
        let at = format!("{field}.clauses[{index}]");
        let domain = match &clause.domain {
            Some(v1::feasibility_clause::Domain::Edges(list)) => Domain::Edges(list.edges.clone()),
            Some(v1::feasibility_clause::Domain::Categories(list)) => {
                Domain::Categories(list.names.clone())
            }
            Some(v1::feasibility_clause::Domain::Prefixes(list)) => {
                Domain::Prefixes(list.names.clone())
            }
            None => {
                return Err(Status::invalid_argument(format!(
                    "{at}.domain: missing (edges, categories or prefixes)"
                )))
            }
        };
        if clause.table.len() > MAX_BINS || domain.bins() > MAX_BINS {
            return Err(Status::invalid_argument(format!(
                "{at}.table: at most {MAX_BINS} bins"
            )));
        }
        let table = clause
            .table
            .iter()
            .enumerate()
            .map(|(entry, bytes)| {
                EncryptedBit::from_bytes(bytes).map_err(|error| {
                    Status::invalid_argument(format!("{at}.table[{entry}]: {error}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        clauses.push(EncryptedClause {
            column: clause.column.clone(),
            domain,
            table,
        });
    }
    Ok((fingerprint, EncryptedCriteria { clauses }))
}

/// The wire form of `criteria` for the evaluation key `fingerprint`.
pub fn criteria_to_wire(
    fingerprint: [u8; 32],
    criteria: &EncryptedCriteria,
) -> v1::EncryptedCriteria {
    v1::EncryptedCriteria {
        evaluation_key: fingerprint.to_vec(),
        clauses: criteria
            .clauses
            .iter()
            .map(|clause| v1::FeasibilityClause {
                column: clause.column.clone(),
                domain: Some(match &clause.domain {
                    Domain::Edges(edges) => v1::feasibility_clause::Domain::Edges(v1::EdgeList {
                        edges: edges.clone(),
                    }),
                    Domain::Categories(names) => {
                        v1::feasibility_clause::Domain::Categories(v1::NameList {
                            names: names.clone(),
                        })
                    }
                    Domain::Prefixes(names) => {
                        v1::feasibility_clause::Domain::Prefixes(v1::NameList {
                            names: names.clone(),
                        })
                    }
                }),
                table: clause.table.iter().map(EncryptedBit::to_bytes).collect(),
            })
            .collect(),
    }
}

/// The bytes of an evaluation key streamed in chunks (`PutEvaluationKey`, to the market and
/// from it to each node), refused once they pass [`MAX_EVALUATION_KEY_BYTES`].
pub async fn read_evaluation_key(
    stream: &mut tonic::Streaming<v1::EvaluationKeyChunk>,
) -> Result<Vec<u8>, Status> {
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        if bytes.len() + chunk.data.len() > MAX_EVALUATION_KEY_BYTES {
            return Err(Status::invalid_argument(format!(
                "data: the evaluation key exceeds {MAX_EVALUATION_KEY_BYTES} bytes"
            )));
        }
        bytes.extend_from_slice(&chunk.data);
    }
    Ok(bytes)
}
