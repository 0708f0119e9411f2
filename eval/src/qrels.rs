//! Relevance judgements: BEIR `qrels/<split>.tsv` (`query-id  corpus-id
//! score`, with a header line) or TREC qrels (`qid iter docid rel`).

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

use crate::error::{EvalError, Result};

/// Judgements: query id → document id → relevance grade. Grades ≥ 1 are
/// relevant; 0 and below are judged non-relevant. Both levels are ordered
/// maps, so whatever walks them sees the same order in every process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Qrels {
    pub judgements: BTreeMap<String, BTreeMap<String, i32>>,
}

impl Qrels {
    /// Reads a qrels file: three columns (BEIR; a first line whose score
    /// column is not a number is a header) or four (TREC). Tabs or spaces.
    pub fn read(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| EvalError::io(path, e))?;
        let mut judgements: BTreeMap<String, BTreeMap<String, i32>> = BTreeMap::new();
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let n = i + 1;
            let line = line.map_err(|e| EvalError::parse(path, n, e.to_string()))?;
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (q, d, rel) = match cols.as_slice() {
                [] => continue,
                [q, d, r] => (*q, *d, *r),
                [q, _, d, r] => (*q, *d, *r),
                _ => {
                    return Err(EvalError::parse(
                        path,
                        n,
                        format!(
                            "expected `query-id corpus-id score` or `qid iter docid rel`, got {} columns",
                            cols.len()
                        ),
                    ))
                }
            };
            let rel: i32 = match rel.parse::<f64>() {
                Ok(r) if r.fract() == 0.0 && r.abs() < 1e9 => r as i32,
                Ok(_) => {
                    return Err(EvalError::parse(
                        path,
                        n,
                        format!("relevance {rel:?} is not a whole number"),
                    ))
                }
                Err(_) if n == 1 => continue, // header
                Err(_) => {
                    return Err(EvalError::parse(
                        path,
                        n,
                        format!("relevance {rel:?} is not a number"),
                    ))
                }
            };
            judgements
                .entry(q.to_owned())
                .or_default()
                .insert(d.to_owned(), rel);
        }
        Ok(Self { judgements })
    }

    /// Number of judged queries.
    pub fn len(&self) -> usize {
        self.judgements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.judgements.is_empty()
    }

    /// Judgements of one query.
    pub fn get(&self, qid: &str) -> Option<&BTreeMap<String, i32>> {
        self.judgements.get(qid)
    }
}
