//! Request validation: each query or document of a call checked against
//! the limits and turned into a plan, or refused with `INVALID_ARGUMENT`
//! naming the field; the client's deadline.

use std::time::Duration;

use tessera_index::{Candidates, Document, Filter, Index, SearchParams, TokenVectors};
use tessera_proto::v1 as pb;
use tonic::Status;

use crate::server::state::*;
use crate::server::status::*;

/// The client's `grpc-timeout`, if any and well-formed.
pub(crate) fn client_timeout(meta: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// One validated query.
pub(crate) struct Plan {
    pub(crate) id: String,
    pub(crate) text: String,
    pub(crate) vectors: Option<TokenVectors>,
    pub(crate) retriever: pb::Retriever,
    pub(crate) params: SearchParams,
    pub(crate) fields: pb::Fields,
}

impl Plan {
    pub(crate) fn needs_encoding(&self) -> bool {
        self.vectors.is_none() && self.retriever != pb::Retriever::Bm25
    }
}

/// Reads packed vectors, checking length, count and values.
pub(crate) fn unpack(
    field: &str,
    v: &pb::TokenVectors,
    dim: usize,
) -> Result<TokenVectors, Status> {
    let row = 4 * dim;
    if v.data.is_empty() {
        return Err(invalid(format!("{field}.data"), "no vectors"));
    }
    if !v.data.len().is_multiple_of(row) {
        return Err(invalid(
            format!("{field}.data"),
            format!(
                "{} bytes is not a multiple of 4 × dim = {row} (the index's dimension is {dim}; values are little-endian f32)",
                v.data.len()
            ),
        ));
    }
    let n = v.data.len() / row;
    if v.num_tokens as usize != n {
        return Err(invalid(
            format!("{field}.num_tokens"),
            format!(
                "says {} but data holds {n} tokens of {dim} dims",
                v.num_tokens
            ),
        ));
    }
    let values = tessera_proto::unpack_f32(&v.data).unwrap_or_default();
    if let Some(i) = values.iter().position(|x| !x.is_finite()) {
        return Err(invalid(
            format!("{field}.data"),
            format!(
                "value {} at token {}, dim {} is not finite",
                values[i],
                i / dim,
                i % dim
            ),
        ));
    }
    TokenVectors::new(dim, values).map_err(|e| invalid(field, e))
}

/// Refuses more than `--max-queries` queries (or texts: `what`) in one
/// call, naming `field`.
pub(crate) fn check_query_count(
    field: &str,
    what: &str,
    n: usize,
    limits: &Limits,
) -> Result<(), Status> {
    if n > limits.max_queries {
        return Err(invalid(
            field,
            format!(
                "{n} {what} is above the server's limit of {} per call",
                limits.max_queries
            ),
        ));
    }
    Ok(())
}

/// Refuses a query text over `--max-query-bytes`, naming `field`.
pub(crate) fn check_query_text(field: String, text: &str, limits: &Limits) -> Result<(), Status> {
    if text.len() > limits.max_query_bytes {
        return Err(invalid(
            field,
            format!(
                "{} bytes is above the server's --max-query-bytes {}",
                text.len(),
                limits.max_query_bytes
            ),
        ));
    }
    Ok(())
}

pub(crate) fn plan(i: usize, q: pb::Query, index: &Index, limits: &Limits) -> Result<Plan, Status> {
    let f = |name: &str| format!("queries[{i}].{name}");
    let retriever = match pb::Retriever::try_from(q.retriever) {
        // Hybrid where there are words to match; vectors alone can only
        // be ranked by MaxSim.
        Ok(pb::Retriever::Unspecified) if q.text.trim().is_empty() => pb::Retriever::Colbert,
        Ok(pb::Retriever::Unspecified) => pb::Retriever::Hybrid,
        Ok(r) => r,
        Err(_) => {
            return Err(invalid(
                f("retriever"),
                format!(
                    "unknown value {} (COLBERT = 1, BM25 = 2, HYBRID = 3)",
                    q.retriever
                ),
            ))
        }
    };
    check_query_text(f("text"), &q.text, limits)?;
    if q.k == 0 {
        return Err(invalid(f("k"), "must be at least 1"));
    }
    if q.k as usize > limits.max_k {
        return Err(invalid(
            f("k"),
            format!("{} is above the server's --max-k {}", q.k, limits.max_k),
        ));
    }
    let vectors = match &q.vectors {
        Some(v) if retriever != pb::Retriever::Bm25 => {
            if v.num_tokens as usize > limits.max_query_tokens {
                return Err(invalid(
                    f("vectors.num_tokens"),
                    format!(
                        "{} tokens is above the server's --max-query-tokens {}",
                        v.num_tokens, limits.max_query_tokens
                    ),
                ));
            }
            Some(unpack(&f("vectors"), v, index.query_dim())?)
        }
        _ => None,
    };
    let text_needed = retriever != pb::Retriever::Colbert || vectors.is_none();
    if text_needed && q.text.trim().is_empty() {
        let why = match retriever {
            pb::Retriever::Colbert => {
                "empty query text (and no vectors): there is nothing to search"
            }
            _ => "empty query text: BM25 and hybrid need words",
        };
        return Err(invalid(f("text"), why));
    }
    let mut params = SearchParams {
        k: q.k as usize,
        ..limits.search.clone()
    };
    if let Some(c) = &q.candidates {
        params.candidates = match pb::CandidateGenerator::try_from(c.generator) {
            Ok(pb::CandidateGenerator::Unspecified | pb::CandidateGenerator::Plaid) => {
                Candidates::Plaid
            }
            Ok(pb::CandidateGenerator::Hnsw) => Candidates::Hnsw,
            Ok(pb::CandidateGenerator::Exhaustive) => Candidates::Exhaustive,
            Err(_) => {
                return Err(invalid(
                    f("candidates.generator"),
                    format!(
                        "unknown value {} (PLAID = 1, HNSW = 2, EXHAUSTIVE = 3)",
                        c.generator
                    ),
                ))
            }
        };
        let at_least_one = |name: &str, v: Option<u32>| match v {
            Some(0) => Err(invalid(
                f(&format!("candidates.{name}")),
                "must be at least 1",
            )),
            v => Ok(v.map(|v| v as usize)),
        };
        if let Some(n) = at_least_one("n_probe", c.n_probe)? {
            params.n_probe = n.min(limits.max_probe);
        }
        if let Some(n) = at_least_one("n_candidates", c.n_candidates)? {
            params.n_candidates = n.min(limits.max_candidates);
        }
        if let Some(n) = at_least_one("max_candidates", c.max_candidates)? {
            params.max_candidates = n.min(limits.max_candidates);
        }
    }
    params.max_candidates = params.max_candidates.min(limits.max_candidates);
    if !q.filter.trim().is_empty() {
        let filter: Filter = serde_json::from_str(&q.filter)
            .map_err(|e| invalid(f("filter"), format!("malformed filter: {e}")))?;
        filter.validate().map_err(|e| invalid(f("filter"), e))?;
        if let Some(u) = crate::retrieve::unknown_fields(index, &filter) {
            let plural = if u.count > 1 { "s" } else { "" };
            return Err(invalid(
                f("filter"),
                format!(
                    "no document has the field{plural} {}; metadata fields in this index: {}",
                    u.listed, u.present
                ),
            ));
        }
        params.filter = Some(filter);
    }
    if let Some(b) = q.bm25_stats {
        if b.doc_freq.len() > tessera_index::text::MAX_QUERY_TERMS {
            return Err(invalid(
                f("bm25_stats.doc_freq"),
                format!(
                    "{} terms, above the {} a query may have",
                    b.doc_freq.len(),
                    tessera_index::text::MAX_QUERY_TERMS
                ),
            ));
        }
        params.bm25_stats = Some(std::sync::Arc::new(tessera_index::text::TermStats {
            docs: b.docs,
            tokens: b.tokens,
            doc_freq: b.doc_freq.into_iter().collect(),
        }));
    }
    Ok(Plan {
        id: q.id,
        text: q.text,
        vectors,
        retriever,
        params,
        fields: q.fields.unwrap_or_default(),
    })
}

/// A document received, before encoding.
pub(crate) struct Incoming {
    pub(crate) doc: Document,
    /// Text to encode (title and text) when no vectors came.
    pub(crate) encode: Option<String>,
}

pub(crate) fn incoming(pos: usize, d: pb::NewDocument, dim: usize) -> Result<Incoming, Status> {
    let field = |name: &str| format!("documents[{pos}].{name}");
    tessera_index::check_id(&d.id).map_err(|m| invalid(field("id"), m))?;
    let metadata = if d.metadata_json.trim().is_empty() {
        serde_json::Value::Null
    } else {
        let v: serde_json::Value = serde_json::from_str(&d.metadata_json).map_err(|e| {
            invalid(
                field("metadata_json"),
                format!("document {:?}: malformed JSON: {e}", d.id),
            )
        })?;
        if !v.is_object() {
            return Err(invalid(
                field("metadata_json"),
                format!("document {:?}: must be a JSON object", d.id),
            ));
        }
        v
    };
    let (vectors, encode) = match &d.vectors {
        Some(v) => (unpack(&field("vectors"), v, dim)?, None),
        None => {
            let text = match (d.title.trim().is_empty(), d.text.trim().is_empty()) {
                (true, true) => None,
                (true, false) => Some(d.text.clone()),
                (false, true) => Some(d.title.clone()),
                (false, false) => Some(format!("{} {}", d.title, d.text)),
            };
            (
                TokenVectors::new(dim, Vec::new()).map_err(|e| Status::internal(e.to_string()))?,
                text,
            )
        }
    };
    Ok(Incoming {
        doc: Document {
            id: d.id,
            vectors,
            title: d.title,
            text: d.text,
            metadata,
        },
        encode,
    })
}
