//! Index builds from documents a program holds (an iterator of texts), for
//! callers that have no dump file.

use std::path::Path;

use tessera_index::{BuildOptions, BuildStats, Document, IndexBuilder, TokenVectors};
use tessera_model::Encoder;

use crate::error::Result;
use crate::model::model_info;

/// A document to index: its id, title, text and metadata (JSON whose
/// numeric and string fields can be filtered on).
#[derive(Debug, Clone, Default)]
pub struct TextDocument {
    /// Unique id (no whitespace or control characters).
    pub id: String,
    /// Title (may be empty).
    pub title: String,
    /// Text (may be empty: the document is indexed with no tokens).
    pub text: String,
    /// Metadata, or `Value::Null`.
    pub metadata: serde_json::Value,
}

impl TextDocument {
    /// What the encoder sees (as for the records of a dump).
    fn encoded_text(&self) -> String {
        crate::corpus::encoded_text(&self.title, &self.text)
    }
}

/// Documents encoded per forward pass group.
const GROUP: usize = 256;

/// Encodes `docs` with `encoder` and builds an index at `out` from them,
/// `GROUP` documents at a time (memory stays bounded by the builder's
/// budget, not by the number of documents). The manifest records the model,
/// so search loads the same one.
pub fn build_from_documents(
    encoder: &Encoder,
    docs: impl IntoIterator<Item = TextDocument>,
    out: &Path,
    mut opts: BuildOptions,
) -> Result<BuildStats> {
    opts.info = serde_json::json!({
        "built_by": format!("tessera {}", env!("CARGO_PKG_VERSION")),
        "model": model_info(encoder),
    });
    let mut builder = IndexBuilder::create(out, opts)?;
    let mut group: Vec<TextDocument> = Vec::with_capacity(GROUP);
    let flush = |group: &mut Vec<TextDocument>, builder: &mut IndexBuilder| -> Result<()> {
        let texts: Vec<String> = group.iter().map(TextDocument::encoded_text).collect();
        let nonempty: Vec<&str> = texts
            .iter()
            .map(String::as_str)
            .filter(|t| !t.trim().is_empty())
            .collect();
        let mut encoded = encoder.encode_documents(&nonempty)?.items.into_iter();
        for (d, t) in group.drain(..).zip(&texts) {
            // Blank texts were not encoded; texts of only punctuation or
            // special characters encode to nothing: both get no tokens.
            let item = (!t.trim().is_empty())
                .then(|| encoded.next().expect("one encoding per non-empty text"));
            let vectors = match item {
                Some(item) if !item.empty => item.vectors,
                _ => TokenVectors::new(encoder.dim(), Vec::new())?,
            };
            builder.add(Document {
                id: d.id,
                vectors,
                title: d.title,
                text: d.text,
                metadata: d.metadata,
            })?;
        }
        Ok(())
    };
    for d in docs {
        group.push(d);
        if group.len() == GROUP {
            flush(&mut group, &mut builder)?;
        }
    }
    flush(&mut group, &mut builder)?;
    Ok(builder.finish(&mut |_| {})?)
}
