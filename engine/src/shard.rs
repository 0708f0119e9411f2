//! Document-partitioned shards: a collection split by document id into S
//! ordinary indexes (each one that `search`, `serve` and `index verify`
//! accept), described by a shard-set manifest, `shards.json`, and searched
//! with an exact merge.
//!
//! * Routing: a document lives in shard `fnv1a64(id) mod S` — stable across
//!   runs, machines and languages, so an update always reaches the shard
//!   that holds the id ([`shard_of`]).
//! * MaxSim scores compare across shards (each is an exact re-rank on the
//!   shard's own vectors): the best `k` of the collection are among the
//!   shards' best `k`, merged by score, ties by id.
//! * BM25 needs the collection's statistics: each shard's statistics for
//!   the query's terms are summed and every shard scores with the sum, so a
//!   sharded BM25 score equals one index's over the same documents.
//!   Hybrid fusion runs after the merge, on the merged lists.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tessera_index::search::{linear_fusion, rrf};
use tessera_index::text::TermStats;
use tessera_index::{Fusion, Hit, Index, SearchParams, TokenVectors};

use crate::error::{bail, Context, Result};
use crate::retrieve::Retriever;

/// The shard-set manifest's file name.
pub const SHARDS_FILE: &str = "shards.json";
const FORMAT: &str = "tessera-shards";

/// The shard of document `id` among `shards`: FNV-1a (64-bit) of the id's
/// UTF-8 bytes, modulo `shards`.
pub fn shard_of(id: &str, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(shards.max(1))) as u32
}

/// One shard in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// The shard's index folder, relative to the shard set's folder.
    pub path: String,
    /// Live documents when the manifest was written.
    pub docs: u64,
    /// The shard index's generation when the manifest was written.
    pub generation: u64,
}

/// `shards.json`: what a shard set is. Every shard was built with the same
/// model, reduction, codec and text analyzer; the manifest records them
/// so that a shard that disagrees is refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardSet {
    pub format: String,
    pub version: u32,
    /// Incremented each time the manifest is rewritten.
    pub generation: u64,
    /// Shard `i` holds the documents whose [`shard_of`] is `i`.
    pub shards: Vec<ShardEntry>,
    /// What every shard must agree on (model fingerprint, reduction,
    /// codec, dimension, analyzer).
    pub agreement: serde_json::Value,
}

/// What a shard's manifest says that every shard of a set must share.
fn agreement(index: &Index) -> serde_json::Value {
    let m = index.manifest();
    serde_json::json!({
        "model": m.info.get("model").and_then(|x| x.get("fingerprint")).cloned(),
        "reduction": m.reduction.as_ref().map(|r| format!("{}→{}", r.in_dim, r.out_dim)),
        "codec": m.codec.to_string(),
        "dim": m.dim,
        "analyzer": m.analyzer.to_string(),
    })
}

/// Opens every shard of `paths` (in shard order) and checks that they
/// agree, naming the first that does not.
pub fn open_shards(paths: &[PathBuf]) -> Result<(Vec<Index>, serde_json::Value)> {
    let mut out: Vec<Index> = Vec::with_capacity(paths.len());
    let mut first = serde_json::Value::Null;
    for (i, p) in paths.iter().enumerate() {
        let ix = Index::open(p).with_context(|| format!("shard {i}: opening {}", p.display()))?;
        let a = agreement(&ix);
        if i == 0 {
            first = a;
        } else if a != first {
            bail!(
                "shard {i} ({}) does not match shard 0: {a} against {first}; every shard must be \
                 built with the same model, reduction, codec and analyzer",
                p.display()
            );
        }
        out.push(ix);
    }
    Ok((out, first))
}

impl ShardSet {
    /// Writes `dir/shards.json` (atomically) for the shard indexes at
    /// `dir/<path>`, after opening and checking every one.
    pub fn write(dir: &Path, paths: &[String]) -> Result<ShardSet> {
        if paths.is_empty() {
            bail!("a shard set needs at least one shard");
        }
        let full: Vec<PathBuf> = paths.iter().map(|p| dir.join(p)).collect();
        let (shards, agreement) = open_shards(&full)?;
        let previous = Self::load(dir).ok().map_or(0, |s| s.generation);
        let set = ShardSet {
            format: FORMAT.into(),
            version: 1,
            generation: previous + 1,
            shards: paths
                .iter()
                .zip(&shards)
                .map(|(p, ix)| ShardEntry {
                    path: p.clone(),
                    docs: ix.manifest().live_docs(),
                    generation: ix.manifest().generation,
                })
                .collect(),
            agreement,
        };
        let json = serde_json::to_vec_pretty(&set).expect("the manifest serialises");
        tessera_index::io::write_atomic(&dir.join(SHARDS_FILE), &json)?;
        Ok(set)
    }

    /// Reads `dir/shards.json`.
    pub fn load(dir: &Path) -> Result<ShardSet> {
        let path = dir.join(SHARDS_FILE);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let set: ShardSet = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a shard-set manifest", path.display()))?;
        if set.format != FORMAT || set.version != 1 {
            bail!(
                "{}: format {:?} version {} is not a shard set this build reads",
                path.display(),
                set.format,
                set.version
            );
        }
        if set.shards.is_empty() {
            bail!("{}: no shards", path.display());
        }
        Ok(set)
    }

    /// Whether `dir` holds a shard set.
    pub fn is_shard_set(dir: &Path) -> bool {
        dir.join(SHARDS_FILE).is_file()
    }
}

/// An opened shard set, searched as one collection.
pub struct Shards {
    pub set: ShardSet,
    pub indexes: Vec<Index>,
}

/// One hit of a sharded search: its shard and the hit within it.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardHit {
    pub shard: usize,
    pub hit: Hit,
}

impl Shards {
    /// Opens the shard set in `dir`, checking that every shard agrees with
    /// the manifest.
    pub fn open(dir: &Path) -> Result<Shards> {
        let set = ShardSet::load(dir)?;
        let paths: Vec<PathBuf> = set.shards.iter().map(|s| dir.join(&s.path)).collect();
        let (indexes, agreement) = open_shards(&paths)?;
        if agreement != set.agreement {
            bail!(
                "{}: the shards ({agreement}) no longer match the manifest ({})",
                dir.join(SHARDS_FILE).display(),
                set.agreement
            );
        }
        Ok(Shards { set, indexes })
    }

    /// The collection's BM25 statistics for `text`'s terms.
    pub fn term_stats(&self, text: &str) -> Result<TermStats> {
        let mut all = TermStats::default();
        for ix in &self.indexes {
            all.add(&ix.term_stats(text)?);
        }
        Ok(all)
    }

    /// The best `p.k` documents of the whole collection for one query.
    pub fn rank(
        &self,
        retriever: Retriever,
        text: &str,
        vectors: Option<&TokenVectors>,
        p: &SearchParams,
    ) -> Result<Vec<ShardHit>> {
        let need = || vectors.context("the query was not encoded");
        match retriever {
            Retriever::Colbert => self.dense(need()?, p, p.k),
            Retriever::Bm25 => self.sparse(text, p, p.k),
            Retriever::Hybrid => {
                let depth = p.k.max(100);
                let dense = self.dense(need()?, p, depth)?;
                let sparse = self.sparse(text, p, depth)?;
                // Fusion keys on (segment, document): make those unique
                // across shards, then take the shard back out.
                const SHARD_BITS: u32 = 32;
                let tag = |h: ShardHit| Hit {
                    segment: (h.shard << SHARD_BITS) | h.hit.segment,
                    ..h.hit
                };
                let d: Vec<Hit> = dense.into_iter().map(tag).collect();
                let s: Vec<Hit> = sparse.into_iter().map(tag).collect();
                let fused = match p.fusion {
                    Fusion::Rrf { c } => rrf(&[d, s], p.k, c),
                    Fusion::Linear { bm25_weight } => linear_fusion(&d, &s, p.k, bm25_weight),
                };
                Ok(fused
                    .into_iter()
                    .map(|hit| ShardHit {
                        shard: hit.segment >> SHARD_BITS,
                        hit: Hit {
                            segment: hit.segment & ((1 << SHARD_BITS) - 1),
                            ..hit
                        },
                    })
                    .collect())
            }
        }
    }

    fn dense(&self, q: &TokenVectors, p: &SearchParams, k: usize) -> Result<Vec<ShardHit>> {
        let p = SearchParams { k, ..p.clone() };
        let mut all = Vec::new();
        for (shard, ix) in self.indexes.iter().enumerate() {
            all.extend(
                ix.search(q, &p)?
                    .into_iter()
                    .map(|hit| ShardHit { shard, hit }),
            );
        }
        Ok(merge(all, k))
    }

    fn sparse(&self, text: &str, p: &SearchParams, k: usize) -> Result<Vec<ShardHit>> {
        let stats = match &p.bm25_stats {
            Some(s) => (**s).clone(),
            None => self.term_stats(text)?,
        };
        let mut all = Vec::new();
        for (shard, ix) in self.indexes.iter().enumerate() {
            all.extend(
                ix.search_text_with(text, k, p.filter.as_ref(), &p.stop, Some(&stats))?
                    .into_iter()
                    .map(|hit| ShardHit { shard, hit }),
            );
        }
        Ok(merge(all, k))
    }
}

/// A shard set with the model that encodes its queries: what `tessera
/// search` opens when `--index` names a shard set.
pub struct ShardSearch {
    pub shards: Shards,
    /// The model (`None` for BM25 alone).
    pub encoder: Option<tessera_model::Encoder>,
}

impl ShardSearch {
    /// Opens the shard set in `dir` and (unless BM25) the model that built
    /// its shards (or `model.model`).
    pub fn open(
        dir: &Path,
        model: &crate::model::ModelOptions,
        retriever: Retriever,
    ) -> Result<ShardSearch> {
        let shards = Shards::open(dir)?;
        let encoder = if retriever == Retriever::Bm25 {
            None
        } else {
            let first = dir.join(&shards.set.shards[0].path);
            Some(model.load_for_index(&shards.indexes[0], &first)?.0)
        };
        Ok(ShardSearch { shards, encoder })
    }

    /// Encodes queries (nothing for BM25).
    pub fn encode_queries(&self, texts: &[&str]) -> Result<Vec<TokenVectors>> {
        crate::retrieve::encode_with(self.encoder.as_ref(), texts)
    }

    /// The stored fields of a hit.
    pub fn document(&self, h: &ShardHit) -> tessera_index::StoredDoc {
        self.shards.indexes[h.shard]
            .hit_document(&h.hit)
            .unwrap_or_default()
    }

    /// Ranks a file of queries into a run (as [`crate::retrieve::Engine::run_queries`]).
    pub fn run_queries(
        &self,
        queries: &[tessera_eval::beir::Query],
        retriever: Retriever,
        p: &SearchParams,
        pb: &indicatif::ProgressBar,
    ) -> Result<(tessera_eval::Run, crate::retrieve::RunTiming)> {
        crate::retrieve::run_with(
            queries,
            |texts| self.encode_queries(texts),
            |text, v| {
                Ok(self
                    .shards
                    .rank(retriever, text, v, p)?
                    .into_iter()
                    .map(|h| h.hit)
                    .collect())
            },
            pb,
        )
    }
}

/// What [`split_dump`] wrote.
#[derive(Debug, Clone)]
pub struct Split {
    /// One BEIR `corpus.jsonl` part per shard, in shard order.
    pub parts: Vec<PathBuf>,
    /// Documents in each part.
    pub docs: Vec<u64>,
    /// Records skipped as invalid (with `skip_invalid`), by problem.
    pub skipped: std::collections::BTreeMap<String, u64>,
}

/// Routes the records of a dump to `shards` parts by [`shard_of`] their
/// id, written as BEIR JSONL (`_id`, `title`, `text`, `metadata`) to
/// `out/part-NNN.jsonl` — each part then builds with `tessera index build`
/// on any machine. A bad record stops the split naming its line, unless
/// `input.records.skip_invalid`.
pub fn split_dump(input: &crate::ingest::Input, shards: u32, out: &Path) -> Result<Split> {
    use std::io::Write;
    if shards == 0 {
        bail!("--shards must be at least 1");
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut reader = crate::corpus::CorpusReader::open(&input.input, input.corpus_options())?;
    let parts: Vec<PathBuf> = (0..shards)
        .map(|s| out.join(format!("part-{s:03}.jsonl")))
        .collect();
    let mut writers = parts
        .iter()
        .map(|p| {
            std::fs::File::create(p)
                .map(|f| std::io::BufWriter::with_capacity(1 << 20, f))
                .with_context(|| format!("creating {}", p.display()))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut docs = vec![0u64; shards as usize];
    let mut skipped = std::collections::BTreeMap::new();
    while let Some(r) = reader.next_record() {
        let rec = match r? {
            Ok(rec) => rec,
            Err(bad) if input.records.skip_invalid => {
                *skipped.entry(bad.problem.to_string()).or_default() += 1;
                continue;
            }
            Err(bad) => bail!("{bad}"),
        };
        let s = shard_of(&rec.id, shards) as usize;
        let line = serde_json::json!({
            "_id": rec.id, "title": rec.title, "text": rec.text, "metadata": rec.metadata,
        });
        writeln!(writers[s], "{line}")
            .with_context(|| format!("writing {}", parts[s].display()))?;
        docs[s] += 1;
    }
    for (w, p) in writers.into_iter().zip(&parts) {
        w.into_inner()
            .map_err(|e| e.into_error())
            .and_then(|f| f.sync_all())
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(Split {
        parts,
        docs,
        skipped,
    })
}

/// The best `k` of the shards' hits: by score, ties by id.
pub fn merge(mut hits: Vec<ShardHit>, k: usize) -> Vec<ShardHit> {
    hits.sort_by(|a, b| {
        b.hit
            .score
            .total_cmp(&a.hit.score)
            .then_with(|| a.hit.id.cmp(&b.hit.id))
    });
    hits.truncate(k);
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_is_stable_and_spreads_ids() {
        // FNV-1a 64's published test vectors: every implementation of the
        // routing (the Ray package's too) must agree with them.
        for (id, h) in [
            ("", 0xcbf2_9ce4_8422_2325u64),
            ("a", 0xaf63_dc4c_8601_ec8c),
            ("foobar", 0x8594_4171_f739_67e8),
        ] {
            assert_eq!(shard_of(id, 1_000_003), (h % 1_000_003) as u32, "{id:?}");
        }
        let mut counts = [0usize; 4];
        for i in 0..4000 {
            counts[shard_of(&format!("doc{i}"), 4) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(shard_of("anything", 1), 0);
    }
}
