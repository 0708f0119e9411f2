//! `Compact` (fold the segments into one) and `IndexInfo`.

use std::sync::Arc;

use tessera_proto::v1 as pb;
use tonic::Status;

use crate::server::state::*;

pub(crate) async fn compact(st: Arc<State>) -> Result<pb::CompactResponse, Status> {
    let ready = st.ready()?;
    let ((generation, before), fresh) = ready
        .update("compacting", |dir| {
            // Counted under the writer lock, like the compaction itself.
            let before = tessera_index::manifest::Manifest::load(dir)?.segments.len() as u32;
            Ok((tessera_index::compact(dir)?, before))
        })
        .await?;
    let after = fresh.segments().len() as u32;
    Ok(pb::CompactResponse {
        generation,
        segments_before: before,
        segments_after: after,
    })
}

pub(crate) fn index_info(st: Arc<State>) -> Result<pb::IndexInfoResponse, Status> {
    let ready = st.ready()?;
    let index = ready.snapshot();
    let m = index.manifest();
    let mi = &m.info["model"];
    let s = |k: &str| mi[k].as_str().unwrap_or_default().to_owned();
    let u = |k: &str| mi[k].as_u64().unwrap_or_default() as u32;
    let model = pb::ModelInfo {
        path: ready
            .model_dir
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| s("path")),
        layout: s("layout"),
        head: s("head"),
        dim: u("dim"),
        query_maxlen: u("query_maxlen"),
        doc_maxlen: u("doc_maxlen"),
        precision: mi["precision"].as_str().unwrap_or("fp32").to_owned(),
        query_augmentation: mi["query_augmentation"].as_bool().unwrap_or(false),
    };
    let committed = std::fs::metadata(index.dir().join(tessera_index::manifest::MANIFEST))
        .and_then(|md| md.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64);
    Ok(pb::IndexInfoResponse {
        path: ready.dir.display().to_string(),
        generation: m.generation,
        model: Some(model),
        codec: m.codec.to_string(),
        reduction: m
            .reduction
            .as_ref()
            .map(|r| format!("{} → {}", r.in_dim, r.out_dim))
            .unwrap_or_default(),
        dim: m.dim as u32,
        query_dim: index.query_dim() as u32,
        num_docs: m.live_docs(),
        num_tokens: m.tokens(),
        bytes_on_disk: crate::disk::dir_bytes(index.dir()),
        num_centroids: m.num_centroids as u32,
        segments: m
            .segments
            .iter()
            .map(|s| pb::SegmentInfo {
                name: s.name.clone(),
                docs: s.docs,
                deleted: s.deleted.len() as u32,
                tokens: s.tokens,
            })
            .collect(),
        committed_unix_s: committed,
        analyzer: m.analyzer.to_string(),
        metadata_fields: index.metadata_fields().to_vec(),
        build_info_json: m.info.to_string(),
        built_unix_s: m.info["built_unix_s"].as_i64().unwrap_or(0),
        build_seconds: m.info["index_seconds"].as_f64().unwrap_or(0.0),
    })
}
