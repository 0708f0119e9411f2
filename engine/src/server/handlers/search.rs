//! `Search`: encode the planned queries in micro-batches, rank each on a
//! search lane through the engine's one retriever dispatch.

use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use tessera_index::{Hit, Index};
use tessera_proto::v1 as pb;
use tonic::Status;

use crate::retrieve::Retriever;
use crate::server::batcher::Kind;
use crate::server::convert::*;
use crate::server::state::*;
use crate::server::status::*;
use crate::server::validate::*;

/// Ranks one planned query on the current thread (the search pool),
/// through the engine's one retriever dispatch.
pub(crate) fn rank(index: &Index, p: &Plan) -> Result<(Vec<Hit>, f64, f64), Status> {
    let retriever = match p.retriever {
        pb::Retriever::Bm25 => Retriever::Bm25,
        pb::Retriever::Hybrid => Retriever::Hybrid,
        _ => Retriever::Colbert,
    };
    crate::retrieve::rank(index, retriever, &p.text, p.vectors.as_ref(), &p.params)
        .map(|r| (r.hits, r.candidate_ms, r.rerank_ms))
        .map_err(|e| engine_status(e, "searching"))
}

/// Cancels a search when the call that started it is dropped.
struct CancelOnDrop(tessera_index::Stop);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

pub(crate) async fn search(
    st: Arc<State>,
    req: pb::SearchRequest,
    deadline: Instant,
    start: Instant,
) -> Result<pb::SearchResponse, Status> {
    let ready = st.ready()?;
    let limits = &st.limits;
    if req.queries.is_empty() {
        return Err(invalid("queries", "at least one query is needed"));
    }
    check_query_count("queries", "queries", req.queries.len(), limits)?;
    let index = ready.snapshot();
    // The call's pre-encoded tokens together, before any is unpacked.
    let tokens: u64 = req
        .queries
        .iter()
        .filter_map(|q| q.vectors.as_ref())
        .map(|v| u64::from(v.num_tokens))
        .sum();
    if tokens > limits.max_call_tokens as u64 {
        return Err(invalid(
            "queries",
            format!(
                "{tokens} pre-encoded tokens in one call is above the server's --max-call-tokens {}",
                limits.max_call_tokens
            ),
        ));
    }
    let mut plans = req
        .queries
        .into_iter()
        .enumerate()
        .map(|(i, q)| plan(i, q, &index, limits))
        .collect::<Result<Vec<_>, _>>()?;
    let admitted_ms = start.elapsed().as_secs_f64() * 1e3;
    let (mut queue_ms, mut encode_ms) = (admitted_ms, 0.0);
    let todo: Vec<usize> = (0..plans.len())
        .filter(|&i| plans[i].needs_encoding())
        .collect();
    if !todo.is_empty() {
        let batcher = ready.batcher.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this server has no model loaded (BM25 only): send vectors or use RETRIEVER_BM25",
            )
        })?;
        let texts = todo.iter().map(|&i| plans[i].text.clone()).collect();
        let enc = batcher
            .encode(Kind::Queries, texts, deadline)
            .await
            .map_err(encode_status)?;
        queue_ms += enc.queue_ms;
        encode_ms = enc.encode_ms;
        for (&i, v) in todo.iter().zip(enc.vectors) {
            if v.is_empty() {
                return Err(invalid(format!("queries[{i}].text"), "no token to encode"));
            }
            plans[i].vectors = Some(v);
        }
    }
    // The search stops at the deadline, or as soon as this call is
    // dropped (cut off at its deadline, or its client went away): the
    // guard cancels it, and the lane's threads are free within one block
    // of work.
    let stop = tessera_index::Stop::new(Some(deadline));
    let _cancel_on_drop = CancelOnDrop(stop.clone());
    for p in &mut plans {
        p.params.stop = stop.clone();
    }
    let generation = index.manifest().generation;
    let metrics = st.metrics.clone();
    let faults = st.faults.clone();
    let max_response = limits.max_response_bytes;
    let results = ready
        .lanes
        .run(deadline, move || {
            let mut out = Vec::with_capacity(plans.len());
            let mut bytes = 0usize;
            for (i, p) in plans.into_iter().enumerate() {
                std::thread::sleep(faults.search_delay);
                if faults.panic_text.as_deref() == Some(p.text.as_str()) {
                    panic!("injected fault: panic-text");
                }
                if Instant::now() >= deadline {
                    return Err(Status::deadline_exceeded(
                        "deadline passed during the search",
                    ));
                }
                let t = Instant::now();
                let (hits, candidates_ms, rerank_ms) = rank(&index, &p)?;
                metrics.search.observe(t.elapsed().as_secs_f64());
                let query_tokens = p.vectors.as_ref().map_or(0, |v| v.len()) as u32;
                let hits: Vec<pb::Hit> = hits
                    .into_iter()
                    .map(|h| to_hit(&index, h, &p.fields))
                    .collect();
                bytes += hits.iter().map(Message::encoded_len).sum::<usize>();
                if bytes > max_response {
                    return Err(response_too_large(&format!("queries[{i}]"), max_response));
                }
                out.push(pb::QueryResult {
                    hits,
                    id: p.id,
                    timings: Some(pb::Timings {
                        queue_ms,
                        encode_ms: if p.retriever == pb::Retriever::Bm25 {
                            0.0
                        } else {
                            encode_ms
                        },
                        candidates_ms,
                        rerank_ms,
                        total_ms: 0.0,
                    }),
                    query_tokens,
                });
            }
            Ok(out)
        })
        .await?;
    let total_ms = start.elapsed().as_secs_f64() * 1e3;
    let mut results = results;
    for r in &mut results {
        if let Some(t) = &mut r.timings {
            t.total_ms = total_ms;
        }
    }
    Ok(pb::SearchResponse {
        results,
        generation,
        ..Default::default()
    })
}

/// `Prepare`: what a front end over shards needs before fanning a query
/// out — the texts encoded once, and this index's BM25 statistics for
/// their terms.
pub(crate) async fn prepare(
    st: Arc<State>,
    req: pb::PrepareRequest,
    deadline: Instant,
) -> Result<pb::PrepareResponse, Status> {
    let ready = st.ready()?;
    let limits = &st.limits;
    check_query_count("texts", "texts", req.texts.len(), limits)?;
    for (i, t) in req.texts.iter().enumerate() {
        check_query_text(format!("texts[{i}]"), t, limits)?;
    }
    let index = ready.snapshot();
    let mut results: Vec<pb::Prepared> = req
        .texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let bm25_stats = if req.bm25_stats {
                let s = index.term_stats(t).map_err(|e| match e {
                    tessera_index::IndexError::InvalidParameter(m) => {
                        invalid(format!("texts[{i}]"), m)
                    }
                    e => index_status(e, "reading BM25 statistics"),
                })?;
                Some(pb::Bm25Stats {
                    docs: s.docs,
                    tokens: s.tokens,
                    doc_freq: s.doc_freq.into_iter().collect(),
                })
            } else {
                None
            };
            Ok(pb::Prepared {
                vectors: None,
                bm25_stats,
            })
        })
        .collect::<Result<_, Status>>()?;
    if req.vectors && !req.texts.is_empty() {
        let batcher = ready.batcher.as_ref().ok_or_else(|| {
            Status::failed_precondition("this server has no model loaded: it cannot encode")
        })?;
        let enc = batcher
            .encode(Kind::Queries, req.texts.clone(), deadline)
            .await
            .map_err(encode_status)?;
        for (r, v) in results.iter_mut().zip(enc.vectors) {
            let n = v.len();
            r.vectors = Some(tessera_proto::pack_vectors(v.as_slice(), n));
        }
    }
    Ok(pb::PrepareResponse { results })
}
