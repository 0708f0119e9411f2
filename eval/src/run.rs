//! TREC run files: `qid Q0 docid rank score tag`, one line per retrieved
//! document.

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::Path;

use crate::error::{EvalError, Result};

/// A run: query id → retrieved `(document id, score)`, in file order. The
/// rank column is informational; metrics order by score as trec_eval does.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Run {
    pub results: BTreeMap<String, Vec<(String, f64)>>,
}

impl Run {
    /// Reads a TREC run file (six whitespace-separated columns).
    pub fn read(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).map_err(|e| EvalError::io(path, e))?;
        let mut results: BTreeMap<String, Vec<(String, f64)>> = BTreeMap::new();
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let n = i + 1;
            let line = line.map_err(|e| EvalError::parse(path, n, e.to_string()))?;
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.is_empty() {
                continue;
            }
            if cols.len() != 6 {
                return Err(EvalError::parse(
                    path,
                    n,
                    format!(
                        "expected `qid Q0 docid rank score tag`, got {} columns",
                        cols.len()
                    ),
                ));
            }
            let score: f64 = cols[4]
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite())
                .ok_or_else(|| {
                    EvalError::parse(path, n, format!("score {:?} is not a number", cols[4]))
                })?;
            results
                .entry(cols[0].to_owned())
                .or_default()
                .push((cols[2].to_owned(), score));
        }
        Ok(Self { results })
    }

    /// Writes the run: per query, documents in the given order, ranks from 1.
    pub fn write(&self, path: &Path, tag: &str) -> Result<()> {
        let tmp = path.with_extension("tmp-write");
        let io = |e| EvalError::io(path, e);
        {
            let f = std::fs::File::create(&tmp).map_err(io)?;
            let mut w = std::io::BufWriter::new(f);
            for (q, docs) in &self.results {
                for (rank, (d, s)) in docs.iter().enumerate() {
                    writeln!(w, "{q} Q0 {d} {} {s:.6} {tag}", rank + 1).map_err(io)?;
                }
            }
            w.flush().map_err(io)?;
        }
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Number of queries with results.
    pub fn len(&self) -> usize {
        self.results.len()
    }

    pub fn is_empty(&self) -> bool {
        self.results.is_empty()
    }
}
