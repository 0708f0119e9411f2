//! Building an index from a stream of documents with bounded memory.
//!
//! 1. **Collect.** Documents arrive one by one ([`IndexBuilder::add`]); their
//!    vectors are buffered and spilled to chunk files in a staging folder
//!    whenever the buffer passes half the memory budget. A reservoir keeps a
//!    uniform sample of token vectors for training.
//! 2. **Train.** k-means centroids on the sample (`K` by default
//!    `2^round(log2(16·√tokens))`; for unit-length vectors each centroid
//!    stays at its members' mean), `refine_passes` Lloyd iterations over
//!    every token (the chunks are read once more), and the residual codec's
//!    buckets (quantiles refined by Lloyd–Max iterations).
//! 3. **Encode.** Each chunk is read back, its tokens assigned to centroids
//!    and encoded, and appended to one new segment.
//! 4. **Commit.** Files are fsynced; a new index folder is renamed into
//!    place, or — when rebuilding an existing index — the manifest is swapped
//!    atomically. A build killed at any point leaves either no index or the
//!    previous complete one; staging folders start with `.` and never open.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::chunk::{encode_chunk, read_chunk, write_chunk, Chunk};
use crate::codec::{Buckets, Codec, CodecKind};
use crate::document::Document;
use crate::error::{IndexError, Result};
use crate::io::{write_array, FileEntry};
use crate::kmeans;
use crate::linalg::norm2;
use crate::lock::{collect_garbage, WriteLock};
use crate::manifest::{Manifest, ReductionEntry, SegmentEntry, FORMAT_NAME, FORMAT_VERSION};
use crate::projection::Projection;
use crate::segment::SegmentWriter;
use crate::text::Analyzer;

/// Build settings.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub codec: CodecKind,
    /// Number of centroids; default `2^round(log2(16·√tokens))`.
    pub num_centroids: Option<usize>,
    pub kmeans_iters: usize,
    /// Training sample: at most this many tokens (and at least enough for
    /// `sample_per_centroid` per centroid when the corpus has them).
    pub max_sample_tokens: usize,
    /// Tokens of the training sample per centroid (within
    /// `max_sample_tokens`).
    pub sample_per_centroid: usize,
    /// Groups probed per token by the two-level nearest-centroid search
    /// (past 2,048 centroids); 0 searches all centroids.
    pub assign_probe: usize,
    /// Lloyd iterations over every token after training on the sample
    /// (each re-assigns all tokens and moves each centroid to the mean of
    /// its tokens), before the residuals are learnt and coded. Four passes
    /// (the default) raise recall@10 of exhaustive search against exact
    /// f32 MaxSim on every collection measured (docs/BENCHMARKS.md), for
    /// about twice the clustering time.
    pub refine_passes: usize,
    /// Lloyd–Max iterations that refine the residual buckets after the
    /// quantile start (0: ColBERTv2's quantile buckets).
    pub bucket_iters: usize,
    /// Keep each centroid at the mean of its tokens instead of projecting
    /// it onto the unit sphere (for unit-length inputs): smaller residuals,
    /// and centroid scores that estimate the token scores without bias.
    pub mean_centroids: bool,
    /// Approximate bound on the builder's memory for buffered vectors,
    /// bytes. Chunks spill to disk past half of it.
    pub memory_budget: usize,
    /// Seed of the k-means training sample and starting centroids: the
    /// same vectors, options and seed give the same index.
    pub seed: u64,
    /// Optional reduction applied to every vector before coding.
    pub reduction: Option<Projection>,
    /// Replace an existing index at the output path (atomically).
    pub overwrite: bool,
    /// Free-form facts stored in the manifest (e.g. which model built it).
    pub info: serde_json::Value,
    /// How titles and texts are cut into BM25 terms.
    pub analyzer: Analyzer,
    /// Centroids and residual buckets trained elsewhere (another index's,
    /// see [`Trained::of`]) instead of training them here: indexes that
    /// share them code every vector alike, so their scores agree — the
    /// shards of one collection.
    pub trained: Option<Trained>,
}

/// A codec's trained parts: centroids (`k × dim`, row-major) and, for the
/// residual codecs, the bucket cutoffs and weights.
#[derive(Debug, Clone)]
pub struct Trained {
    /// The vectors' dimension.
    pub dim: usize,
    pub centroids: Vec<f32>,
    pub buckets: Option<Buckets>,
    /// Decoded vectors are renormalised (the vectors were unit length).
    pub renormalise: bool,
}

impl Trained {
    /// The trained parts of an open index.
    pub fn of(index: &crate::Index) -> Self {
        Self {
            dim: index.codec().dim,
            centroids: index.centroids().to_vec(),
            buckets: index.codec().buckets.clone(),
            renormalise: index.codec().renormalise,
        }
    }
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            codec: CodecKind::Residual { nbits: 2 },
            num_centroids: None,
            kmeans_iters: 4,
            max_sample_tokens: 1 << 20,
            sample_per_centroid: 8,
            assign_probe: kmeans::PROBE_GROUPS,
            refine_passes: 4,
            bucket_iters: 10,
            mean_centroids: true,
            memory_budget: 1 << 30,
            seed: 42,
            reduction: None,
            trained: None,
            overwrite: false,
            info: serde_json::Value::Null,
            analyzer: Analyzer::default(),
        }
    }
}

/// Build phases reported to the progress callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Train,
    Encode,
    Commit,
}

/// Progress of [`IndexBuilder::finish`]: `done` of `total` units (tokens
/// while encoding).
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub phase: Phase,
    pub done: u64,
    pub total: u64,
}

/// What a build produced.
#[derive(Debug, Clone, Serialize)]
pub struct BuildStats {
    pub docs: u64,
    pub tokens: u64,
    pub dim: usize,
    pub num_centroids: usize,
    pub codec: String,
    /// Bytes of codes, vectors and offsets per token.
    pub bytes_per_token: f64,
    /// All index files, bytes.
    pub index_bytes: u64,
    pub spilled_chunks: usize,
    pub seconds: f64,
}

/// Streams documents into a new index.
#[derive(Debug)]
pub struct IndexBuilder {
    out: PathBuf,
    staging: PathBuf,
    /// Some when replacing an existing index in place.
    existing: Option<(Manifest, WriteLock)>,
    opts: BuildOptions,
    dim: Option<usize>,
    buffer: Chunk,
    spilled: Vec<PathBuf>,
    ids: HashSet<String>,
    reservoir: Vec<f32>,
    seen_tokens: u64,
    docs: u64,
    rng: StdRng,
    started: Instant,
}

impl IndexBuilder {
    /// Prepares a build of a new index at `out` (which must not exist, be an
    /// empty folder, or — with `overwrite` — be an index).
    pub fn create(out: &Path, opts: BuildOptions) -> Result<Self> {
        let parent = out
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|e| IndexError::io(parent, e))?;
        let name = out.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            IndexError::InvalidParameter(format!("{}: not a usable index path", out.display()))
        })?;
        let mut existing = None;
        if out.join(crate::manifest::MANIFEST).exists() {
            if !opts.overwrite {
                return Err(IndexError::InvalidParameter(format!(
                    "{}: an index exists already (use overwrite to replace it)",
                    out.display()
                )));
            }
            let lock = WriteLock::acquire(out)?;
            let manifest = Manifest::load(out)?;
            // Files of an earlier writer that died before its commit.
            collect_garbage(out, &manifest, &lock);
            existing = Some((manifest, lock));
        } else if out.exists() {
            let empty = std::fs::read_dir(out)
                .map_err(|e| IndexError::io(out, e))?
                .next()
                .is_none();
            if !empty {
                return Err(IndexError::InvalidParameter(format!(
                    "{}: exists and is not a Tessera index; refusing to overwrite",
                    out.display()
                )));
            }
        }
        remove_stale_staging(parent, name);
        let staging = parent.join(format!(
            ".{name}.building-{}-{}",
            std::process::id(),
            nanos()
        ));
        std::fs::create_dir_all(&staging).map_err(|e| IndexError::io(&staging, e))?;
        if let Some(r) = &opts.reduction {
            r.check()?;
        }
        let seed = opts.seed;
        Ok(Self {
            out: out.to_owned(),
            staging,
            existing,
            opts,
            dim: None,
            buffer: Chunk::default(),
            spilled: Vec::new(),
            ids: HashSet::new(),
            reservoir: Vec::new(),
            seen_tokens: 0,
            docs: 0,
            rng: StdRng::seed_from_u64(seed),
            started: Instant::now(),
        })
    }

    /// Documents added so far.
    pub fn docs(&self) -> u64 {
        self.docs
    }

    /// Tokens added so far.
    pub fn tokens(&self) -> u64 {
        self.seen_tokens
    }

    /// Whether `id` was added already.
    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    /// Adds one document. Rejects (without side effects) an empty or
    /// duplicate id, a document without vectors, a dimension that differs
    /// from the first document's, and non-finite values.
    pub fn add(&mut self, doc: Document) -> Result<()> {
        let expected = match (&self.opts.reduction, self.dim) {
            (Some(r), _) => Some((r.in_dim, "the reduction expects")),
            (None, Some(d)) => Some((d, "earlier documents have")),
            (None, None) => None,
        };
        doc.check(self.ids.contains(&doc.id), expected)?;
        self.dim = Some(doc.vectors.dim());
        let stored = doc.stored_json();
        let vectors = match &self.opts.reduction {
            Some(r) => r.apply(doc.vectors.as_slice()),
            None => doc.vectors.into_vec(),
        };
        let out_dim = self.out_dim();
        self.sample(&vectors, out_dim);
        let n = vectors.len() / out_dim;
        self.buffer.bytes += vectors.len() * 4 + stored.len() + doc.id.len() + 64;
        self.buffer.vectors.extend_from_slice(&vectors);
        self.buffer.lens.push(n as u32);
        self.buffer.docs.push((doc.id.clone(), stored));
        self.ids.insert(doc.id);
        self.docs += 1;
        if self.buffer.bytes > self.spill_threshold(out_dim) {
            self.spill()?;
        }
        Ok(())
    }

    fn out_dim(&self) -> usize {
        self.opts
            .reduction
            .as_ref()
            .map_or_else(|| self.dim.unwrap_or(0), |r| r.out_dim)
    }

    /// Tokens the training reservoir holds at most: the sample cap within a
    /// quarter of the memory budget, but never under 65,536 tokens (a tiny
    /// budget must not shrink K).
    fn reservoir_cap(&self, dim: usize) -> usize {
        let by_memory = (self.opts.memory_budget / 4 / (4 * dim.max(1))).max(1 << 16);
        self.opts.max_sample_tokens.min(by_memory).max(1)
    }

    /// Buffered bytes past which the buffer spills: half the budget less
    /// the reservoir, so that the buffer, one chunk read back and the
    /// reservoir together stay within the budget (at least an eighth of it).
    fn spill_threshold(&self, dim: usize) -> usize {
        let reservoir = self.reservoir_cap(dim) * dim * 4;
        (self.opts.memory_budget / 2)
            .saturating_sub(reservoir)
            .max(self.opts.memory_budget / 8)
    }

    /// Reservoir sampling over all tokens (Algorithm R).
    fn sample(&mut self, vectors: &[f32], dim: usize) {
        let cap = self.reservoir_cap(dim);
        for v in vectors.chunks_exact(dim) {
            self.seen_tokens += 1;
            let have = self.reservoir.len() / dim;
            if have < cap {
                self.reservoir.extend_from_slice(v);
            } else {
                let j = self.rng.gen_range(0..self.seen_tokens) as usize;
                if j < cap {
                    self.reservoir[j * dim..(j + 1) * dim].copy_from_slice(v);
                }
            }
        }
    }

    /// One Lloyd iteration over every token: assign all (spilled chunks and
    /// the buffer) to `centroids`, then move each centroid with tokens to
    /// their mean (renormalised when `spherical`). Sums are taken in token
    /// order, in f64: the result does not depend on thread count.
    fn refine(&self, centroids: &mut [f32], dim: usize, spherical: bool) -> Result<()> {
        let t = Instant::now();
        let k = centroids.len() / dim;
        let mut sums = vec![0f64; k * dim];
        let mut counts = vec![0u64; k];
        let mut add = |vectors: &[f32], centroids: &[f32]| {
            let codes = kmeans::assign_probing(vectors, centroids, dim, self.opts.assign_probe);
            for (v, &c) in vectors.chunks_exact(dim).zip(&codes) {
                let c = c as usize;
                counts[c] += 1;
                for (s, &x) in sums[c * dim..(c + 1) * dim].iter_mut().zip(v) {
                    *s += f64::from(x);
                }
            }
        };
        for path in &self.spilled {
            let chunk = read_chunk(path, dim)?;
            add(&chunk.vectors, centroids);
        }
        add(&self.buffer.vectors, centroids);
        let mut moved = 0usize;
        for (c, row) in centroids.chunks_exact_mut(dim).enumerate() {
            if counts[c] == 0 {
                continue;
            }
            let inv = 1.0 / counts[c] as f64;
            for (x, s) in row.iter_mut().zip(&sums[c * dim..(c + 1) * dim]) {
                *x = (s * inv) as f32;
            }
            if spherical {
                crate::linalg::normalise(row);
            }
            moved += 1;
        }
        tracing::info!(
            centroids = moved,
            secs = t.elapsed().as_secs_f64(),
            "centroids refined over every token"
        );
        Ok(())
    }

    /// k-means centroids on the reservoir sample (refined over every token)
    /// and, for the residual codecs, the buckets of their residuals.
    fn train(
        &self,
        dim: usize,
        codec_kind: CodecKind,
        total: u64,
    ) -> Result<(Vec<f32>, Option<Buckets>, bool)> {
        let k = self
            .opts
            .num_centroids
            .unwrap_or_else(|| kmeans::default_num_centroids(total as usize))
            .clamp(1, (total as usize).min(crate::manifest::MAX_CENTROIDS));
        let sample_n = self.reservoir.len() / dim;
        // `sample_per_centroid` tokens per centroid, within the reservoir's size.
        let want = (k * self.opts.sample_per_centroid.max(1))
            .clamp(4096, self.opts.max_sample_tokens.max(4096))
            .min(sample_n);
        let sample = &self.reservoir[..want * dim];
        let unit = sample
            .chunks_exact(dim)
            .all(|v| (norm2(v) - 1.0).abs() < 1e-3);
        tracing::info!(
            docs = self.docs,
            tokens = total,
            secs = self.started.elapsed().as_secs_f64(),
            "documents collected"
        );
        let t = Instant::now();
        let spherical = unit && !self.opts.mean_centroids;
        let mut centroids = kmeans::train_probing(
            sample,
            dim,
            k,
            self.opts.kmeans_iters,
            self.opts.seed,
            spherical,
            self.opts.assign_probe,
        );
        let k = centroids.len() / dim;
        for _ in 0..self.opts.refine_passes {
            self.refine(&mut centroids, dim, spherical)?;
        }
        let sample = &self.reservoir[..want * dim];
        let buckets = match codec_kind {
            CodecKind::Residual { nbits } => {
                // Quantiles need no more than ~8k vectors' residuals.
                let sub = &sample[..sample.len().min(8192 * dim)];
                let codes = kmeans::assign_probing(sub, &centroids, dim, self.opts.assign_probe);
                let residuals: Vec<f32> = sub
                    .chunks_exact(dim)
                    .zip(&codes)
                    .flat_map(|(v, &c)| {
                        let c = &centroids[c as usize * dim..(c as usize + 1) * dim];
                        v.iter().zip(c).map(|(a, b)| a - b).collect::<Vec<_>>()
                    })
                    .collect();
                Some(Buckets::train_lloyd(
                    nbits,
                    residuals,
                    self.opts.bucket_iters,
                ))
            }
            _ => None,
        };
        tracing::info!(
            k,
            sample = want,
            secs = t.elapsed().as_secs_f64(),
            "centroids trained"
        );
        Ok((centroids, buckets, unit))
    }

    /// Checks centroids and buckets trained elsewhere against this build.
    fn check_trained(
        &self,
        t: Trained,
        dim: usize,
        codec_kind: CodecKind,
    ) -> Result<(Vec<f32>, Option<Buckets>, bool)> {
        let bad = |why: String| {
            Err(IndexError::InvalidParameter(format!(
                "trained codec: {why}"
            )))
        };
        if t.dim != dim {
            return bad(format!(
                "it codes {}-dim vectors; this build's are {dim}-dim",
                t.dim
            ));
        }
        if t.centroids.is_empty() || !t.centroids.len().is_multiple_of(dim) {
            return bad(format!(
                "{} centroid values are not whole {dim}-dim vectors",
                t.centroids.len()
            ));
        }
        match (codec_kind, &t.buckets) {
            (CodecKind::Residual { nbits }, Some(b)) if b.weights.len() == 1 << nbits => {}
            (CodecKind::Residual { nbits }, _) => {
                return bad(format!("its buckets are not those of residual{nbits}"))
            }
            (_, Some(_)) => {
                return bad(format!(
                    "it has residual buckets; this build is {codec_kind:?}"
                ))
            }
            (_, None) => {}
        }
        tracing::info!(k = t.centroids.len() / dim, "centroids given");
        Ok((t.centroids, t.buckets, t.renormalise))
    }

    fn spill(&mut self) -> Result<()> {
        let path = self
            .staging
            .join(format!("chunk-{:05}.bin", self.spilled.len()));
        let chunk = std::mem::take(&mut self.buffer);
        write_chunk(&path, &chunk)?;
        tracing::debug!(path = %path.display(), docs = chunk.lens.len(), "spilled chunk");
        self.spilled.push(path);
        Ok(())
    }

    /// Trains, encodes and commits the index.
    pub fn finish(mut self, progress: &mut dyn FnMut(Progress)) -> Result<BuildStats> {
        let result = self.finish_inner(progress);
        // The staging folder goes whatever happened (on success it was
        // renamed, or emptied of everything but chunks).
        let _ = std::fs::remove_dir_all(&self.staging);
        result
    }

    fn finish_inner(&mut self, progress: &mut dyn FnMut(Progress)) -> Result<BuildStats> {
        if self.docs == 0 {
            return Err(IndexError::InvalidParameter("no documents to index".into()));
        }
        let dim = self.out_dim();
        let codec_kind = self.opts.codec;
        codec_kind.validate(dim)?;
        let total = self.seen_tokens;
        if total == 0 && self.existing.is_none() {
            return Err(IndexError::InvalidParameter(
                "no document has token vectors (every text is empty)".into(),
            ));
        }
        let generation = self.existing.as_ref().map_or(1, |(m, _)| m.generation + 1);

        // Train (or take what was trained elsewhere).
        progress(Progress {
            phase: Phase::Train,
            done: 0,
            total: 1,
        });
        let (centroids, buckets, unit) = match self.opts.trained.take() {
            Some(t) => self.check_trained(t, dim, codec_kind)?,
            None => self.train(dim, codec_kind, total)?,
        };
        let k = centroids.len() / dim;
        // The sample has served: free it before the chunks are read back.
        self.reservoir = Vec::new();
        let codec = Codec::new(codec_kind, dim, buckets.clone(), unit)?;
        let t = Instant::now();

        // Index-level files.
        let mut files = BTreeMap::new();
        let cname = format!("centroids.g{generation}.f32");
        files.insert(
            cname.clone(),
            write_array(&self.staging.join(&cname), &centroids)?,
        );
        if let Some(b) = &buckets {
            let bname = format!("buckets.g{generation}.f32");
            let mut v = b.cutoffs.clone();
            v.extend_from_slice(&b.weights);
            files.insert(bname.clone(), write_array(&self.staging.join(&bname), &v)?);
        }
        let reduction = match &self.opts.reduction {
            Some(r) => {
                let rname = format!("reduction.g{generation}.f32");
                files.insert(
                    rname.clone(),
                    write_array(&self.staging.join(&rname), &r.to_floats())?,
                );
                Some(ReductionEntry {
                    in_dim: r.in_dim,
                    out_dim: r.out_dim,
                    file: rname,
                    query_mean: r.query_mean.is_some(),
                })
            }
            None => None,
        };

        // Encode every chunk into one segment.
        let seg_name = format!("seg-g{generation}-0001");
        let mut writer = SegmentWriter::create(&self.staging, &seg_name, k, self.opts.analyzer)?;
        let mut done = 0u64;
        let last = std::mem::take(&mut self.buffer);
        let spilled = std::mem::take(&mut self.spilled);
        let spilled_chunks = spilled.len();
        for path in &spilled {
            let chunk = read_chunk(path, dim)?;
            encode_chunk(
                &chunk.view(),
                &codec,
                &centroids,
                dim,
                self.opts.assign_probe,
                &mut writer,
            )?;
            std::fs::remove_file(path).map_err(|e| IndexError::io(path, e))?;
            done += chunk.vectors.len() as u64 / dim as u64;
            progress(Progress {
                phase: Phase::Encode,
                done,
                total,
            });
        }
        encode_chunk(
            &last.view(),
            &codec,
            &centroids,
            dim,
            self.opts.assign_probe,
            &mut writer,
        )?;
        drop(last);
        progress(Progress {
            phase: Phase::Encode,
            done: total,
            total,
        });
        tracing::info!(secs = t.elapsed().as_secs_f64(), "tokens encoded");
        let t = Instant::now();
        let segment = writer.finish()?;
        tracing::info!(secs = t.elapsed().as_secs_f64(), "segment written");

        // Commit.
        progress(Progress {
            phase: Phase::Commit,
            done: 0,
            total: 1,
        });
        // When and how long (from `create` to the commit) the build ran,
        // beside the caller's own record.
        let mut info = self.opts.info.clone();
        if let Some(o) = info.as_object_mut() {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            o.insert("built_unix_s".into(), now.into());
            let secs = (self.started.elapsed().as_secs_f64() * 100.0).round() / 100.0;
            o.insert("index_seconds".into(), secs.into());
        }
        let manifest = Manifest {
            format: FORMAT_NAME.into(),
            version: FORMAT_VERSION,
            generation,
            dim,
            codec: codec_kind,
            num_centroids: k,
            renormalise: unit,
            reduction,
            files,
            segments: vec![segment],
            info,
            analyzer: self.opts.analyzer,
        };
        let stats = self.stats(&manifest);
        match self.existing.take() {
            None => {
                manifest.store(&self.staging)?;
                crate::io::sync_dir(&self.staging)?;
                if self.out.exists() {
                    // An empty folder (checked in create).
                    std::fs::remove_dir(&self.out).map_err(|e| IndexError::io(&self.out, e))?;
                }
                std::fs::rename(&self.staging, &self.out)
                    .map_err(|e| IndexError::io(&self.out, e))?;
                let parent = self
                    .out
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                crate::io::sync_dir(parent)?;
            }
            Some((_, lock)) => {
                // Move the new files next to the old ones, then swap the
                // manifest: until the swap, the old index is what opens.
                for name in manifest
                    .files
                    .keys()
                    .chain(std::iter::once(&manifest.segments[0].name))
                {
                    let (from, to) = (self.staging.join(name), self.out.join(name));
                    std::fs::rename(&from, &to).map_err(|e| IndexError::io(&to, e))?;
                }
                crate::io::sync_dir(&self.out)?;
                manifest.store(&self.out)?;
                collect_garbage(&self.out, &manifest, &lock);
            }
        }
        progress(Progress {
            phase: Phase::Commit,
            done: 1,
            total: 1,
        });
        Ok(BuildStats {
            seconds: self.started.elapsed().as_secs_f64(),
            spilled_chunks,
            ..stats
        })
    }

    fn stats(&self, m: &Manifest) -> BuildStats {
        let seg_bytes = |s: &SegmentEntry, names: &[&str]| -> u64 {
            names
                .iter()
                .filter_map(|n| s.files.get(*n))
                .map(|f: &FileEntry| f.bytes)
                .sum()
        };
        let core: u64 = m
            .segments
            .iter()
            .map(|s| seg_bytes(s, &["codes.u32", "vectors.bin", "offsets.u64"]))
            .sum();
        let all: u64 = m
            .segments
            .iter()
            .flat_map(|s| s.files.values())
            .map(|f| f.bytes)
            .sum::<u64>()
            + m.files.values().map(|f| f.bytes).sum::<u64>();
        let tokens = m.tokens();
        BuildStats {
            docs: m.live_docs(),
            tokens,
            dim: m.dim,
            num_centroids: m.num_centroids,
            codec: m.codec.to_string(),
            bytes_per_token: core as f64 / tokens.max(1) as f64,
            index_bytes: all,
            spilled_chunks: 0,
            seconds: 0.0,
        }
    }
}

impl Drop for IndexBuilder {
    fn drop(&mut self) {
        // A builder dropped without finish (error, Ctrl-C unwinding) leaves
        // nothing behind; a killed process leaves a dot-folder that never
        // opens as an index.
        let _ = std::fs::remove_dir_all(&self.staging);
    }
}

/// Removes staging folders of builds of `name` whose process is gone (killed
/// builds leave them behind; they never open as an index).
fn remove_stale_staging(parent: &Path, name: &str) {
    let prefix = format!(".{name}.building-");
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let file_name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = file_name.strip_prefix(&prefix) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && !Path::new("/proc").join(pid).exists() {
            tracing::info!(path = %e.path().display(), "removing staging folder of a killed build");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
