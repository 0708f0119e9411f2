//! `GetDocuments`, `AddDocuments` (validated, encoded in chunks, appended
//! atomically) and `DeleteDocuments`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use prost::Message;
use tessera_proto::v1 as pb;
use tonic::{Status, Streaming};

use crate::server::batcher::{EncodeError, Kind};
use crate::server::convert::*;
use crate::server::state::*;
use crate::server::status::*;
use crate::server::validate::*;

pub(crate) fn get_documents(
    st: Arc<State>,
    req: pb::GetDocumentsRequest,
) -> Result<pb::GetDocumentsResponse, Status> {
    let ready = st.ready()?;
    st.check_ids(req.ids.len())?;
    let index = ready.snapshot();
    let mut bytes = 0usize;
    let results = req
        .ids
        .into_iter()
        .map(|id| match index.document(&id) {
            Some(d) => pb::DocumentResult {
                found: true,
                document: Some(pb::Document {
                    id: id.clone(),
                    title: d.title,
                    text: d.text,
                    metadata_json: metadata_json(&d.metadata),
                }),
                id,
            },
            None => pb::DocumentResult {
                id,
                found: false,
                document: None,
            },
        })
        .map(|r| {
            bytes += r.encoded_len();
            if bytes > st.limits.max_response_bytes {
                return Err(response_too_large("ids", st.limits.max_response_bytes));
            }
            Ok(r)
        })
        .collect::<Result<_, _>>()?;
    Ok(pb::GetDocumentsResponse { results })
}

/// Documents encoded per encoder job (queries interleave between jobs).
pub(crate) const DOC_CHUNK: usize = 32;

pub(crate) async fn add_documents(
    st: Arc<State>,
    mut stream: Streaming<pb::AddDocumentsRequest>,
    deadline: Instant,
) -> Result<pb::AddDocumentsResponse, Status> {
    let ready = st.ready()?;
    let index = ready.snapshot();
    let dim = index.query_dim();
    let mut docs: Vec<Incoming> = Vec::new();
    let mut seen = HashSet::new();
    let mut skipped = Vec::new();
    let mut skip_existing = None;
    let mut pos = 0usize;
    let mut call_bytes = 0usize;
    loop {
        let msg = match tokio::time::timeout_at(deadline.into(), stream.message()).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(
                    "deadline passed while receiving documents; nothing was added",
                ))
            }
            Ok(Err(s)) => {
                // A message that does not decode is the caller's fault.
                let code = if s.message().starts_with("failed to decode Protobuf") {
                    tonic::Code::InvalidArgument
                } else {
                    s.code()
                };
                return Err(Status::new(
                    code,
                    format!("receiving documents: {}; nothing was added", s.message()),
                ));
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(m))) => m,
        };
        let size = msg.encoded_len();
        if size > st.limits.max_message_bytes {
            return Err(invalid(
                "request",
                format!("stream message of {size} bytes exceeds the --max-message-mb limit of {} bytes; nothing was added", st.limits.max_message_bytes),
            ));
        }
        call_bytes += size;
        if call_bytes > st.limits.max_add_bytes {
            return Err(invalid(
                "documents",
                format!(
                    "the call's documents pass {} bytes (--max-add-mb); send them in several calls; nothing was added",
                    st.limits.max_add_bytes
                ),
            ));
        }
        let skip = *skip_existing.get_or_insert(msg.skip_existing);
        for d in msg.documents {
            if docs.len() >= st.limits.max_add_docs {
                return Err(invalid(
                    "documents",
                    format!(
                        "more than {} documents in one call (--max-add-docs); nothing was added",
                        st.limits.max_add_docs
                    ),
                ));
            }
            let text_bytes = d.title.len() + d.text.len();
            if text_bytes > st.limits.max_document_bytes {
                return Err(invalid(
                    format!("documents[{pos}].text"),
                    format!(
                        "title and text are {text_bytes} bytes, above the server's \
                         --max-document-bytes {}; nothing was added",
                        st.limits.max_document_bytes
                    ),
                ));
            }
            if !seen.insert(d.id.clone()) {
                return Err(invalid(
                    format!("documents[{pos}].id"),
                    format!("{:?} appears twice in this call; nothing was added", d.id),
                ));
            }
            if index.contains(&d.id) {
                if skip {
                    skipped.push(d.id);
                    pos += 1;
                    continue;
                }
                return Err(invalid(
                    format!("documents[{pos}].id"),
                    format!("{:?} is already in the index (set skip_existing to skip such documents); nothing was added", d.id),
                ));
            }
            docs.push(incoming(pos, d, dim).map_err(|s| {
                Status::new(s.code(), format!("{}; nothing was added", s.message()))
            })?);
            pos += 1;
        }
    }
    // Encode the documents that came as text.
    let todo: Vec<usize> = (0..docs.len())
        .filter(|&i| docs[i].encode.is_some())
        .collect();
    if !todo.is_empty() {
        let batcher = ready.batcher.as_ref().ok_or_else(|| {
            Status::failed_precondition("this server has no model loaded: send document vectors")
        })?;
        for chunk in todo.chunks(DOC_CHUNK) {
            let texts = chunk
                .iter()
                .map(|&i| docs[i].encode.take().unwrap_or_default())
                .collect();
            let enc = batcher
                .encode(Kind::Documents, texts, deadline)
                .await
                .map_err(|e| match e {
                    EncodeError::Expired => Status::deadline_exceeded(
                        "deadline passed while encoding documents; nothing was added",
                    ),
                    e => encode_status(e),
                })?;
            for (&i, v) in chunk.iter().zip(enc.vectors) {
                docs[i].doc.vectors = v;
            }
        }
    }
    if Instant::now() >= deadline {
        return Err(Status::deadline_exceeded(
            "deadline passed before the commit; nothing was added",
        ));
    }
    let added = docs.len() as u32;
    if added == 0 {
        return Ok(pb::AddDocumentsResponse {
            added,
            skipped_ids: skipped,
            generation: index.manifest().generation,
        });
    }
    // From here the commit runs to its end even if the client goes away.
    let delay = st.faults.commit_delay;
    let (generation, _) = ready
        .update("adding documents", move |dir| {
            std::thread::sleep(delay);
            tessera_index::append(dir, docs.into_iter().map(|d| d.doc))
        })
        .await?;
    Ok(pb::AddDocumentsResponse {
        added,
        skipped_ids: skipped,
        generation,
    })
}

pub(crate) async fn delete_documents(
    st: Arc<State>,
    req: pb::DeleteDocumentsRequest,
) -> Result<pb::DeleteDocumentsResponse, Status> {
    let ready = st.ready()?;
    st.check_ids(req.ids.len())?;
    let mut ids = req.ids;
    let mut seen = HashSet::new();
    ids.retain(|id| seen.insert(id.clone()));
    let n = ids.len();
    let (unknown, fresh) = ready
        .update("deleting documents", move |dir| {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            tessera_index::delete(dir, &refs)
        })
        .await?;
    let generation = fresh.manifest().generation;
    Ok(pb::DeleteDocumentsResponse {
        deleted: (n - unknown.len()) as u32,
        unknown_ids: unknown,
        generation,
    })
}
