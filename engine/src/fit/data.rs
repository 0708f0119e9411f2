//! The training data pipeline both trainers (`train heads`, `train
//! reduce`) share: reading datasets and dumps, caching backbone states,
//! mining hard negatives and dev pools with BM25 and the model's own index,
//! Contriever-style crops and pseudo-queries.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use tessera_eval::beir::{Dataset, Query};
use tessera_eval::{Qrels, Run};
use tessera_index::SearchParams;
use tessera_model::{Encoder, TextKind};
use tessera_training::states::{StateCache, StatesWriter};
use tessera_training::train::score::DevSet;
use tessera_training::train::{Example, Source, Texts};

use super::DataOptions;
use crate::corpus::{CorpusOptions, CorpusReader};
use crate::error::{bail, ensure, Context, Result};
use crate::ingest::RecordOptions;
use crate::model::{absolute, ModelOptions};
use crate::progress;
use crate::retrieve::{Engine, Retriever};

/// One dataset's texts and judgements, read and checked.
pub struct DatasetData {
    /// The dataset's folder name.
    pub name: String,
    /// Its folder.
    pub dir: PathBuf,
    /// Corpus ids, in corpus order.
    pub doc_ids: Vec<String>,
    /// Corpus texts (title and text), in corpus order.
    pub doc_texts: Vec<String>,
    /// Corpus titles, in corpus order.
    pub doc_titles: Vec<String>,
    /// Its queries.
    pub queries: Vec<Query>,
    /// Train judgements (empty for a validation-only set).
    pub train: Qrels,
    /// Dev judgements, when it has the split.
    pub dev: Option<Qrels>,
}

/// Reads a dataset to train on. Without `require_train` a dataset may lack
/// the train split (its training queries then come from elsewhere: the
/// pseudo-queries of `train reduce`).
pub fn read_dataset(
    dir: &Path,
    train_split: &str,
    dev_split: &str,
    require_train: bool,
) -> Result<DatasetData> {
    read_splits(dir, Some(train_split), dev_split, require_train)
}

/// Reads a dataset, its train split only when `train_split` names one (a
/// zero-shot validation set has none: its train judgements stay empty).
pub fn read_splits(
    dir: &Path,
    train_split: Option<&str>,
    dev_split: &str,
    require_train: bool,
) -> Result<DatasetData> {
    let ds = Dataset::open(dir)?;
    let no_train = || Qrels {
        judgements: BTreeMap::new(),
    };
    let train = if let Some(train_split) =
        train_split.filter(|t| require_train || ds.qrels_path(t).is_file())
    {
        let train = ds
            .qrels(train_split)
            .with_context(|| format!("{}: no {train_split} split to train on", dir.display()))?;
        ensure!(
            !train.is_empty() || !require_train,
            "{}: qrels/{train_split}.tsv judges no queries",
            dir.display()
        );
        train
    } else if let Some(train_split) = train_split {
        eprintln!(
            "note: {}: no {train_split} split; it trains on pseudo-queries only",
            dir.display()
        );
        no_train()
    } else {
        no_train()
    };
    let dev = match ds.qrels(dev_split) {
        Ok(q) if !q.is_empty() => Some(q),
        _ => {
            eprintln!(
                "note: {}: no {dev_split} split; it is not validated on",
                dir.display()
            );
            None
        }
    };
    let queries = tessera_eval::beir::read_queries(&dir.join("queries.jsonl"))?;
    let DumpTexts {
        ids: doc_ids,
        texts: doc_texts,
        titles: doc_titles,
    } = read_texts(&ds.corpus_path(), &CorpusOptions::default(), usize::MAX)?;
    let known_docs: HashSet<&str> = doc_ids.iter().map(String::as_str).collect();
    let known_q: HashSet<&str> = queries.iter().map(|q| q.id.as_str()).collect();
    for (split, qrels) in [(train_split, Some(&train)), (Some(dev_split), dev.as_ref())] {
        let (Some(split), Some(qrels)) = (split, qrels) else {
            continue;
        };
        let path = ds.qrels_path(split);
        if let Some(q) = qrels
            .judgements
            .keys()
            .find(|q| !known_q.contains(q.as_str()))
        {
            bail!(
                "{}: names query {q:?}, which queries.jsonl does not have",
                path.display()
            );
        }
        for (q, judged) in &qrels.judgements {
            if let Some(d) = judged.keys().find(|d| !known_docs.contains(d.as_str())) {
                bail!(
                    "{}: query {q} judges document {d:?}, which corpus.jsonl does not have",
                    path.display()
                );
            }
        }
    }
    let canonical = absolute(dir);
    let name = canonical
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into());
    Ok(DatasetData {
        name,
        dir: canonical,
        doc_ids,
        doc_texts,
        doc_titles,
        queries,
        train,
        dev,
    })
}

/// The records of a dump, field by field.
pub struct DumpTexts {
    pub ids: Vec<String>,
    /// What the encoder sees (title and text).
    pub texts: Vec<String>,
    pub titles: Vec<String>,
}

/// Up to `limit` records of a dump.
pub fn read_texts(path: &Path, opts: &CorpusOptions, limit: usize) -> Result<DumpTexts> {
    let mut reader = CorpusReader::open(path, opts.clone())?;
    let (mut ids, mut texts, mut titles) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(r) = reader.next_record() {
        match r? {
            Ok(rec) => {
                ids.push(rec.id.clone());
                texts.push(rec.encoded_text());
                titles.push(rec.title);
            }
            Err(bad) => bail!("{bad}"),
        }
        if ids.len() >= limit {
            break;
        }
    }
    Ok(DumpTexts { ids, texts, titles })
}

/// The state cache of `texts` (built if missing), keyed by the model, the
/// settings, the side and the texts themselves.
pub fn cached_states(
    encoder: &Encoder,
    label: &str,
    ids: &[String],
    texts: &[String],
    kind: TextKind,
) -> Result<Arc<StateCache>> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let bb = &encoder.model().backbone_dir;
    absolute(bb).hash(&mut h);
    format!("{:?}", encoder.settings()).hash(&mut h);
    format!("{kind:?}").hash(&mut h);
    ids.hash(&mut h);
    texts.hash(&mut h);
    let side = match kind {
        TextKind::Query => "queries",
        TextKind::Document => "docs",
    };
    let dir = crate::cache::cache_root()?
        .join("states")
        .join(format!("{label}-{side}-{:016x}", h.finish()));
    if let Some(c) = StateCache::open(&dir)? {
        return Ok(Arc::new(c));
    }
    eprintln!(
        "caching backbone states of {} {label} {side} into {}",
        texts.len(),
        dir.display()
    );
    let t = Instant::now();
    let dim = encoder.model().bert.config().hidden_size as usize;
    let mut w = StatesWriter::create(&dir, dim)?;
    let pb = progress::bar(Some(texts.len() as u64), side);
    pb.set_prefix(format!("backbone states {label}"));
    for (ci, chunk) in texts.chunks(512).enumerate() {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let tok = encoder.tokenize(&refs, kind)?;
        let out = encoder.backbone_states(&tok, kind, &mut |n| pb.inc(n as u64))?;
        for (j, item) in out.items.iter().enumerate() {
            w.push(&ids[ci * 512 + j], item.vectors.as_slice())?;
        }
    }
    pb.finish_and_clear();
    let secs = t.elapsed().as_secs_f64();
    let source = serde_json::json!({
        "backbone": bb,
        "settings": encoder.settings(),
        "label": label,
        "side": side,
    });
    let c = w.finish(source, secs)?;
    eprintln!(
        "cached {} texts, {} tokens in {secs:.1} s",
        c.len(),
        c.meta.tokens
    );
    Ok(Arc::new(c))
}

/// One side of a source: token ids for full mode (the backbone runs with
/// gradients), else the cached backbone states.
pub fn side(
    encoder: &Encoder,
    full: bool,
    label: &str,
    ids: &[String],
    texts: &[String],
    kind: TextKind,
) -> Result<Texts> {
    if full {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        return Ok(Texts::Tokens(Arc::new(encoder.tokenize(&refs, kind)?)));
    }
    Ok(Texts::Cached(cached_states(
        encoder, label, ids, texts, kind,
    )?))
}

/// Top-`k` document ids per query from BM25 and from the model's index
/// (`index`), cached on disk: every run over the same index, queries and
/// depth reuses them.
pub fn mine(
    engine: &Engine,
    index: &Path,
    queries: &[Query],
    k: usize,
    label: &str,
) -> Result<HashMap<String, Vec<String>>> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    index.hash(&mut h);
    k.hash(&mut h);
    for q in queries {
        (&q.id, &q.text).hash(&mut h);
    }
    let cache = crate::cache::cache_root()?.join("mined").join(format!(
        "{}-{:016x}.json",
        label.replace(' ', "-"),
        h.finish()
    ));
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Ok(m) = serde_json::from_str(&text) {
            return Ok(m);
        }
    }
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let params = SearchParams {
        k,
        ..SearchParams::default()
    };
    for retriever in [Retriever::Bm25, Retriever::Colbert] {
        let pb = progress::bar(Some(queries.len() as u64), "queries");
        pb.set_prefix(format!("mining {label} ({retriever})"));
        let (run, _) = engine.run_queries(queries, retriever, &params, &pb)?;
        pb.finish_and_clear();
        for (q, hits) in run.results {
            let e = out.entry(q).or_default();
            for (d, _) in hits {
                if !e.contains(&d) {
                    e.push(d);
                }
            }
        }
    }
    if let Some(dir) = cache.parent() {
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
    }
    let tmp = cache.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&out)?).with_context(|| tmp.display().to_string())?;
    std::fs::rename(&tmp, &cache).with_context(|| cache.display().to_string())?;
    Ok(out)
}

/// `len` consecutive words (all of them if fewer) at a random start,
/// blank-joined.
pub fn random_span(words: &[&str], len: usize, rng: &mut rand::rngs::StdRng) -> String {
    let len = len.min(words.len());
    let start = rng.gen_range(0..=words.len() - len);
    words[start..start + len].join(" ")
}

/// Contriever-style crops: two random spans (10–50 % of the words, at least
/// 4) of each document with at least 8 words.
pub fn crops(texts: &[String], seed: u64) -> Vec<(String, String)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xC0FF_EE00);
    let mut out = Vec::new();
    for t in texts {
        let words: Vec<&str> = t.split_whitespace().collect();
        if words.len() < 8 {
            continue;
        }
        let span = |rng: &mut rand::rngs::StdRng| {
            let lo = (words.len() / 10).max(4);
            let hi = (words.len() / 2).max(lo + 1);
            let len = rng.gen_range(lo..hi);
            random_span(&words, len, rng)
        };
        let a = span(&mut rng);
        let b = span(&mut rng);
        out.push((a, b));
    }
    out
}

/// Shortest and longest pseudo-query, in words.
pub const PSEUDO_WORDS: (usize, usize) = (4, 16);

/// What pseudo-queries are cut from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PseudoFrom {
    /// A span of 4–16 consecutive words of a document.
    Spans,
    /// A document's title (of at least 2 words), each title once.
    Titles,
}

impl std::str::FromStr for PseudoFrom {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "spans" => Ok(Self::Spans),
            "titles" => Ok(Self::Titles),
            _ => Err(format!(
                "unknown pseudo-query source {s:?} (spans or titles)"
            )),
        }
    }
}

impl PseudoFrom {
    /// Whether document `i` can give a pseudo-query.
    fn usable(self, d: &DatasetData, i: usize) -> bool {
        match self {
            Self::Spans => d.doc_texts[i]
                .split_whitespace()
                .nth(PSEUDO_WORDS.0 - 1)
                .is_some(),
            Self::Titles => d.doc_titles[i].split_whitespace().nth(1).is_some(),
        }
    }

    /// What `usable` asks of a document, for an error message.
    pub fn requirement(self) -> String {
        match self {
            Self::Spans => format!("the {} words a pseudo-query needs", PSEUDO_WORDS.0),
            Self::Titles => "a title of 2 words or more (--pseudo-from titles)".into(),
        }
    }
}

/// Adds up to `n` unlabelled queries to a dataset's training split, drawn
/// from its own documents (in a seeded random order) and judged relevant
/// to that document only: spans of 4–16 consecutive words (documents
/// cycled when `n` exceeds them), or titles (each once). Their ids
/// (`pseudo-N`) are kept apart from the dataset's own. Returns how many
/// were added.
pub fn add_pseudo_queries(d: &mut DatasetData, n: usize, from: PseudoFrom, seed: u64) -> usize {
    let (lo, hi) = PSEUDO_WORDS;
    let mut order: Vec<usize> = (0..d.doc_texts.len())
        .filter(|&i| from.usable(d, i))
        .collect();
    if order.is_empty() {
        return 0;
    }
    let n = match from {
        PseudoFrom::Spans => n,
        PseudoFrom::Titles => n.min(order.len()),
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5E0D_0051);
    rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
    let taken: HashSet<String> = d.queries.iter().map(|q| q.id.clone()).collect();
    let mut prefix = String::from("pseudo-");
    while taken.iter().any(|id| id.starts_with(&prefix)) {
        prefix.insert(0, '_');
    }
    for j in 0..n {
        let doc = order[j % order.len()];
        let text = match from {
            PseudoFrom::Spans => {
                let words: Vec<&str> = d.doc_texts[doc].split_whitespace().collect();
                let len = rng.gen_range(lo..=hi);
                random_span(&words, len, &mut rng)
            }
            PseudoFrom::Titles => d.doc_titles[doc]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        };
        let id = format!("{prefix}{j}");
        d.train
            .judgements
            .insert(id.clone(), BTreeMap::from([(d.doc_ids[doc].clone(), 1)]));
        d.queries.push(Query { id, text });
    }
    n
}

/// Dev sets with the qrels of the queries kept.
pub type DevSets = Vec<(DevSet, Qrels)>;

/// How [`prepare`] reads its datasets.
pub struct Prep<'a> {
    /// How the model runs.
    pub model: &'a ModelOptions,
    /// The model's folder.
    pub model_dir: &'a Path,
    /// Token ids (full mode) instead of cached backbone states.
    pub full: bool,
    /// The data options.
    pub data: &'a DataOptions,
    /// Teacher runs (distillation), one per dataset or none.
    pub teachers: &'a [Run],
}

/// Per dataset: its training source (cached states or token ids, examples
/// with mined hard negatives, judged positives excluded) and, with a dev
/// split, its dev set (fixed pools: BM25 ∪ the model's own top
/// `pool_depth`) and the dev qrels of the queries kept.
pub fn prepare(
    encoder: &Encoder,
    data: &[DatasetData],
    o: &Prep<'_>,
) -> Result<(Vec<Source>, DevSets)> {
    let mut sources = Vec::new();
    let mut devs: Vec<(DevSet, Qrels)> = Vec::new();
    for (di, d) in data.iter().enumerate() {
        let index = crate::cache::cached_dataset_index(
            &Dataset::open(&d.dir)?,
            o.model,
            o.model_dir,
            &RecordOptions::default(),
        )?;
        let engine = Engine::open(
            &index,
            &ModelOptions {
                model: Some(o.model_dir.to_owned()),
                ..o.model.clone()
            },
            Retriever::Colbert,
        )?;
        let qpos: HashMap<&str, usize> = d
            .queries
            .iter()
            .enumerate()
            .map(|(i, q)| (q.id.as_str(), i))
            .collect();
        let dpos: HashMap<&str, usize> = d
            .doc_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect();
        let train_q: Vec<Query> = d
            .queries
            .iter()
            .filter(|q| d.train.judgements.contains_key(&q.id))
            .cloned()
            .collect();
        let mined = mine(
            &engine,
            &index,
            &train_q,
            o.data.mine_depth,
            &format!("{} {}", d.name, o.data.train_split),
        )?;
        let mut examples = Vec::new();
        for q in &train_q {
            let judged = &d.train.judgements[&q.id];
            let mut positives: Vec<usize> = judged
                .iter()
                .filter(|(_, &r)| r > 0)
                .map(|(id, _)| dpos[id.as_str()])
                .collect();
            // In corpus order, so the index a step draws names the same
            // document whatever order the judgements are kept in.
            positives.sort_unstable();
            if positives.is_empty() {
                continue;
            }
            let negatives: Vec<usize> = mined
                .get(&q.id)
                .into_iter()
                .flatten()
                .filter(|id| judged.get(*id).is_none_or(|&r| r <= 0))
                .filter_map(|id| dpos.get(id.as_str()).copied())
                .collect();
            let teacher = o
                .teachers
                .get(di)
                .and_then(|t| t.results.get(&q.id))
                .map(|hits| {
                    let mut h: Vec<(usize, f32)> = hits
                        .iter()
                        .filter_map(|(id, s)| dpos.get(id.as_str()).map(|&p| (p, *s as f32)))
                        .collect();
                    h.sort_by(|a, b| b.1.total_cmp(&a.1));
                    h
                })
                .unwrap_or_default();
            examples.push(Example {
                query: qpos[q.id.as_str()],
                positives,
                negatives,
                teacher,
            });
        }
        ensure!(
            !examples.is_empty(),
            "{}: qrels/{}.tsv has no query with a relevant document",
            d.dir.display(),
            o.data.train_split
        );
        let qids: Vec<String> = d.queries.iter().map(|q| q.id.clone()).collect();
        let qtexts: Vec<String> = d.queries.iter().map(|q| q.text.clone()).collect();
        let queries = side(encoder, o.full, &d.name, &qids, &qtexts, TextKind::Query)?;
        let docs = side(
            encoder,
            o.full,
            &d.name,
            &d.doc_ids,
            &d.doc_texts,
            TextKind::Document,
        )?;
        if let Some(dev) = &d.dev {
            let mut dev_q: Vec<Query> = d
                .queries
                .iter()
                .filter(|q| dev.judgements.contains_key(&q.id))
                .cloned()
                .collect();
            if o.data.dev_queries > 0 {
                dev_q.truncate(o.data.dev_queries);
            }
            let pools = mine(
                &engine,
                &index,
                &dev_q,
                o.data.pool_depth,
                &format!("{} {}", d.name, o.data.dev_split),
            )?;
            let items = dev_q
                .iter()
                .map(|q| {
                    let pool = pools
                        .get(&q.id)
                        .into_iter()
                        .flatten()
                        .filter_map(|id| dpos.get(id.as_str()).copied())
                        .collect();
                    (qpos[q.id.as_str()], pool)
                })
                .collect();
            let mut qrels = dev.clone();
            let keep: HashSet<&str> = dev_q.iter().map(|q| q.id.as_str()).collect();
            qrels.judgements.retain(|q, _| keep.contains(q.as_str()));
            devs.push((
                DevSet {
                    name: d.name.clone(),
                    queries: queries.clone(),
                    docs: docs.clone(),
                    items,
                },
                qrels,
            ));
        }
        sources.push(Source {
            name: d.name.clone(),
            weight: o.data.weights.get(di).copied().unwrap_or(1.0),
            queries,
            docs,
            examples,
        });
    }
    Ok((sources, devs))
}
#[cfg(test)]
mod tests {
    use super::*;

    fn dataset() -> DatasetData {
        let doc_texts: Vec<String> = vec![
            "Tides follow the moon and the sun over the course of a lunar day".into(),
            "too short".into(),
            "coral reefs bleach when the water warms for weeks on end".into(),
        ];
        let doc_titles = vec!["Tides".into(), String::new(), "coral reefs".into()];
        DatasetData {
            name: "toy".into(),
            dir: PathBuf::from("toy"),
            doc_ids: vec!["d0".into(), "d1".into(), "d2".into()],
            doc_texts,
            doc_titles,
            queries: vec![Query {
                id: "pseudo-0".into(),
                text: "a real query whose id looks like a pseudo one".into(),
            }],
            train: Qrels {
                judgements: BTreeMap::from([(
                    "pseudo-0".to_string(),
                    BTreeMap::from([("d0".to_string(), 1)]),
                )]),
            },
            dev: None,
        }
    }

    #[test]
    fn pseudo_queries_are_spans_of_the_document_they_judge() {
        let mut d = dataset();
        assert_eq!(add_pseudo_queries(&mut d, 7, PseudoFrom::Spans, 3), 7);
        assert_eq!(d.queries.len(), 8);
        // The dataset's own query and judgement are untouched.
        assert_eq!(
            d.queries[0].text,
            "a real query whose id looks like a pseudo one"
        );
        assert_eq!(
            d.train.judgements["pseudo-0"],
            BTreeMap::from([("d0".into(), 1)])
        );
        let ids: HashSet<&str> = d.queries.iter().map(|q| q.id.as_str()).collect();
        assert_eq!(ids.len(), 8, "ids are unique");
        let mut docs_used = HashSet::new();
        for q in &d.queries[1..] {
            let judged = &d.train.judgements[&q.id];
            assert_eq!(judged.len(), 1);
            let (doc, &rel) = judged.iter().next().unwrap();
            assert_eq!(rel, 1);
            assert_ne!(doc, "d1", "a document under 4 words gives no query");
            let text = &d.doc_texts[d.doc_ids.iter().position(|x| x == doc).unwrap()];
            let words = q.text.split_whitespace().count();
            assert!(
                (PSEUDO_WORDS.0..=PSEUDO_WORDS.1).contains(&words),
                "{}",
                q.text
            );
            assert!(
                text.contains(&q.text),
                "{:?} is not a span of {doc}",
                q.text
            );
            docs_used.insert(doc.clone());
        }
        assert_eq!(docs_used.len(), 2, "documents are cycled through");
        // The same seed draws the same queries.
        let mut again = dataset();
        add_pseudo_queries(&mut again, 7, PseudoFrom::Spans, 3);
        let texts = |d: &DatasetData| d.queries.iter().map(|q| q.text.clone()).collect::<Vec<_>>();
        assert_eq!(texts(&d), texts(&again));
    }

    #[test]
    fn title_pseudo_queries_take_each_title_of_two_words_once() {
        let mut d = dataset();
        // One title has two words, one one word, one none: one query.
        assert_eq!(add_pseudo_queries(&mut d, 5, PseudoFrom::Titles, 1), 1);
        let q = d.queries.last().unwrap();
        assert_eq!(q.text, "coral reefs");
        assert_eq!(
            d.train.judgements[&q.id],
            BTreeMap::from([("d2".into(), 1)])
        );
    }

    #[test]
    fn no_pseudo_query_comes_from_documents_without_four_words() {
        let mut d = dataset();
        d.doc_texts = vec!["one two three".into(), "a b".into(), String::new()];
        assert_eq!(add_pseudo_queries(&mut d, 5, PseudoFrom::Spans, 1), 0);
        assert_eq!(d.queries.len(), 1);
    }
}
