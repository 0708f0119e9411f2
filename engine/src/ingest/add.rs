//! Adding documents to an existing index from a dump.

use std::path::Path;

use tessera_index::{Document, TokenVectors};

use super::encode::{encode_to_dir, Input, Rerun};
use crate::embeddings::{EmbeddingsReader, State};
use crate::error::{ensure, Context, EngineError, Result};
use crate::model::ModelOptions;

/// What [`add_from_input`] did.
#[derive(Debug)]
pub struct Added {
    /// The encoding's counts (documents read, tokens, bad records skipped).
    pub state: State,
    /// Documents skipped because the index holds their id already (with
    /// `skip_invalid`).
    pub already_there: u64,
    /// The index generation the append committed.
    pub generation: u64,
}

/// Encodes the documents of `input` with the model that built the index at
/// `index_dir` into a private work folder next to it, then appends them
/// as one segment (the index crate's atomic append: all or nothing). With
/// `input.records.skip_invalid`, documents whose id the index holds are
/// skipped and counted; otherwise the append refuses them.
pub fn add_from_input(index_dir: &Path, model: &ModelOptions, input: &Input) -> Result<Added> {
    let index = tessera_index::Index::open(index_dir)
        .with_context(|| format!("opening index {}", index_dir.display()))?;
    let (encoder, _) = model.load_for_index(&index, index_dir)?;
    let name = index_dir
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: not a usable index path", index_dir.display()))?;
    let parent = index_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let work = parent.join(format!(".{name}.adding-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let result = (|| {
        let state = encode_to_dir(&encoder, input, &work, false, 1024, Rerun::FromScratch)?;
        let mut reader = EmbeddingsReader::open(&work)?;
        // With --skip-invalid, documents whose id the index holds already
        // are skipped and counted; otherwise the append refuses them.
        // A read error must not leave a partial append committed: the
        // stream then ends with a document the append always refuses (an
        // empty id), so it writes nothing, and the error is reported.
        let mut taken = 0u64;
        let mut failed = None;
        let dim = reader.dim;
        let poison = move || {
            Some(Document {
                id: String::new(),
                vectors: TokenVectors::new(dim, Vec::new()).ok()?,
                title: String::new(),
                text: String::new(),
                metadata: serde_json::Value::Null,
            })
        };
        let mut done = false;
        let docs = std::iter::from_fn(|| loop {
            if done {
                return None;
            }
            match reader.next_doc() {
                Ok(Some(d)) if input.records.skip_invalid && index.contains(&d.id) => taken += 1,
                Ok(Some(d)) => {
                    let vectors = match TokenVectors::new(reader.dim, d.vectors) {
                        Ok(v) => v,
                        Err(e) => {
                            failed = Some(EngineError::from(e));
                            done = true;
                            return poison();
                        }
                    };
                    return Some(Document {
                        id: d.id,
                        vectors,
                        title: d.title,
                        text: d.text,
                        metadata: d.metadata,
                    });
                }
                Ok(None) => return None,
                Err(e) => {
                    failed = Some(e);
                    done = true;
                    return poison();
                }
            }
        });
        let generation = tessera_index::append(index_dir, docs);
        if let Some(e) = failed {
            ensure!(
                generation.is_err(),
                "internal: an append went on past a read error"
            );
            return Err(EngineError::Context {
                context: format!(
                    "reading the encoded documents back from {}; nothing was added",
                    work.display()
                ),
                source: Box::new(e),
            });
        }
        let generation =
            generation.with_context(|| format!("adding to {}", index_dir.display()))?;
        Ok::<_, EngineError>((state, taken, generation))
    })();
    let _ = std::fs::remove_dir_all(&work);
    let (state, already_there, generation) = result?;
    Ok(Added {
        state,
        already_there,
        generation,
    })
}
