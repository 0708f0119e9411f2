//! BEIR dataset folders: `corpus.jsonl`, `queries.jsonl`, `qrels/<split>.tsv`.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{EvalError, Result};
use crate::qrels::Qrels;

/// One query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub id: String,
    pub text: String,
}

/// A BEIR dataset folder.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub dir: PathBuf,
}

impl Dataset {
    /// Opens a dataset folder, checking that its files are there.
    pub fn open(dir: &Path) -> Result<Self> {
        for f in ["corpus.jsonl", "queries.jsonl"] {
            let p = dir.join(f);
            if !p.is_file() {
                return Err(EvalError::Invalid(format!(
                    "{}: not a BEIR dataset folder (no {f})",
                    dir.display()
                )));
            }
        }
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn corpus_path(&self) -> PathBuf {
        self.dir.join("corpus.jsonl")
    }

    pub fn qrels_path(&self, split: &str) -> PathBuf {
        self.dir.join("qrels").join(format!("{split}.tsv"))
    }

    /// The split's judgements.
    pub fn qrels(&self, split: &str) -> Result<Qrels> {
        let p = self.qrels_path(split);
        if !p.is_file() {
            let have: Vec<String> = std::fs::read_dir(self.dir.join("qrels"))
                .map(|rd| {
                    rd.flatten()
                        .filter_map(|e| {
                            e.file_name()
                                .to_str()
                                .and_then(|n| n.strip_suffix(".tsv"))
                                .map(String::from)
                        })
                        .collect()
                })
                .unwrap_or_default();
            return Err(EvalError::Invalid(format!(
                "{}: no split {split:?} (have: {})",
                self.dir.display(),
                have.join(", ")
            )));
        }
        Qrels::read(&p)
    }

    /// The queries judged in `qrels`, in file order.
    pub fn queries(&self, qrels: &Qrels) -> Result<Vec<Query>> {
        let all = read_queries(&self.dir.join("queries.jsonl"))?;
        Ok(all
            .into_iter()
            .filter(|q| qrels.judgements.contains_key(&q.id))
            .collect())
    }
}

#[derive(Deserialize)]
struct RawQuery {
    #[serde(rename = "_id", alias = "id", deserialize_with = "id_string")]
    id: String,
    text: String,
}

fn id_string<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "id must be a string or number, got {other}"
        ))),
    }
}

/// Reads a queries file: JSONL (`{"_id", "text"}`) or, when the name ends
/// in `.tsv`, `id<TAB>text` lines.
pub fn read_queries(path: &Path) -> Result<Vec<Query>> {
    let f = std::fs::File::open(path).map_err(|e| EvalError::io(path, e))?;
    let tsv = path.extension().is_some_and(|e| e == "tsv");
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
        let n = i + 1;
        let line = line.map_err(|e| EvalError::parse(path, n, e.to_string()))?;
        if line.trim().is_empty() {
            continue;
        }
        let q = if tsv {
            let (id, text) = line
                .split_once('\t')
                .ok_or_else(|| EvalError::parse(path, n, "expected `id<TAB>text`"))?;
            Query {
                id: id.to_owned(),
                text: text.to_owned(),
            }
        } else {
            let r: RawQuery = serde_json::from_str(&line)
                .map_err(|e| EvalError::parse(path, n, e.to_string()))?;
            Query {
                id: r.id,
                text: r.text,
            }
        };
        if q.id.is_empty() {
            return Err(EvalError::parse(path, n, "empty query id"));
        }
        out.push(q);
    }
    Ok(out)
}
