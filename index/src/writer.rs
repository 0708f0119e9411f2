//! Changing a committed index: append documents (a new segment), delete
//! documents (tombstones), compact (fold segments, drop tombstones).
//!
//! Every change takes the index's write lock (`write.lock`, an advisory
//! file lock released even if the process dies), writes new immutable files,
//! then atomically swaps `manifest.json`. Readers that opened the index
//! before keep their snapshot; readers opened after see the change.

use std::path::Path;

use crate::chunk::{encode_chunk, ChunkView};
use crate::document::Document;
use crate::error::{IndexError, Result};
use crate::index::Index;
use crate::lock::{collect_garbage, WriteLock};
use crate::segment::SegmentWriter;

/// Appends `docs` to the index at `dir` as one new segment, encoded with the
/// index's centroids and codec. Duplicate ids (in the index or the batch)
/// and dimension mismatches are rejected before anything is written.
/// Returns the new generation.
pub fn append(dir: &Path, docs: impl IntoIterator<Item = Document>) -> Result<u64> {
    let lock = WriteLock::acquire(dir)?;
    let index = Index::open(dir)?;
    let m = index.manifest().clone();
    collect_garbage(dir, &m, &lock);
    let generation = m.generation + 1;
    let name = format!("seg-g{generation}-0001");
    let mut writer = SegmentWriter::create(dir, &name, m.num_centroids, m.analyzer)?;
    let result = (|| {
        let dim = m.dim;
        let in_dim = index.query_dim();
        let mut seen = std::collections::HashSet::new();
        let mut vectors = Vec::new();
        let mut lens = Vec::new();
        let mut stored = Vec::new();
        let flush = |vectors: &mut Vec<f32>,
                     lens: &mut Vec<u32>,
                     stored: &mut Vec<(String, Vec<u8>)>,
                     writer: &mut SegmentWriter| {
            let view = ChunkView {
                vectors,
                lens,
                docs: stored,
            };
            encode_chunk(
                &view,
                index.codec(),
                index.centroids(),
                dim,
                crate::BuildOptions::default().assign_probe,
                writer,
            )?;
            vectors.clear();
            lens.clear();
            stored.clear();
            Ok::<(), IndexError>(())
        };
        for doc in docs {
            let taken = index.contains(&doc.id) || !seen.insert(doc.id.clone());
            doc.check(taken, Some((in_dim, "the index takes")))?;
            let v = index.prepare_documents(doc.vectors.as_slice());
            lens.push((v.len() / dim) as u32);
            vectors.extend_from_slice(&v);
            let s = doc.stored_json();
            stored.push((doc.id, s));
            if vectors.len() >= 1 << 24 {
                flush(&mut vectors, &mut lens, &mut stored, &mut writer)?;
            }
        }
        if !lens.is_empty() {
            flush(&mut vectors, &mut lens, &mut stored, &mut writer)?;
        }
        Ok(())
    })();
    let cleanup = |e| {
        let _ = std::fs::remove_dir_all(dir.join(&name));
        e
    };
    result.map_err(cleanup)?;
    if writer.docs() == 0 {
        let _ = std::fs::remove_dir_all(dir.join(&name));
        return Ok(m.generation);
    }
    let segment = writer.finish().map_err(cleanup)?;
    let mut next = m;
    next.generation = generation;
    next.segments.push(segment);
    next.store(dir).map_err(cleanup)?;
    drop(lock);
    Ok(generation)
}

/// Deletes documents by external id. Returns the ids that were not found
/// (already deleted or never indexed); the others are tombstoned in one
/// commit.
pub fn delete(dir: &Path, ids: &[&str]) -> Result<Vec<String>> {
    let _lock = WriteLock::acquire(dir)?;
    let index = Index::open(dir)?;
    let mut m = index.manifest().clone();
    let mut missing = Vec::new();
    let mut changed = false;
    for id in ids {
        match index.locate(id) {
            Some((seg, doc)) => {
                let del = &mut m.segments[seg].deleted;
                if let Err(pos) = del.binary_search(&doc) {
                    del.insert(pos, doc);
                    changed = true;
                }
            }
            None => missing.push((*id).to_owned()),
        }
    }
    if changed {
        m.generation += 1;
        m.store(dir)?;
    }
    Ok(missing)
}

/// Folds all segments into one, dropping deleted documents. Codes and
/// encoded vectors are copied as they are (no re-encoding, no loss).
/// Returns the new generation.
pub fn compact(dir: &Path) -> Result<u64> {
    let lock = WriteLock::acquire(dir)?;
    let index = Index::open(dir)?;
    let mut m = index.manifest().clone();
    collect_garbage(dir, &m, &lock);
    let generation = m.generation + 1;
    let name = format!("seg-g{generation}-0001");
    let mut writer = SegmentWriter::create(dir, &name, m.num_centroids, m.analyzer)?;
    let copy = (|| {
        for seg in index.segments() {
            for doc in 0..seg.num_docs() as u32 {
                if !seg.is_live(doc) {
                    continue;
                }
                let r = seg.token_range(doc);
                writer.add(
                    seg.external_id(doc),
                    seg.stored(doc),
                    &seg.codes()[r.clone()],
                    seg.vector_bytes(r),
                )?;
            }
        }
        Ok::<(), IndexError>(())
    })();
    if let Err(e) = copy {
        let _ = std::fs::remove_dir_all(dir.join(&name));
        return Err(e);
    }
    let segment = writer.finish()?;
    m.generation = generation;
    m.segments = if segment.docs > 0 {
        vec![segment]
    } else {
        Vec::new()
    };
    m.store(dir)?;
    collect_garbage(dir, &m, &lock);
    Ok(generation)
}
