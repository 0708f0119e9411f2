//! A document as the builder and the writer take it: its id (one rule for
//! every way in: [`check_id`]), token vectors, title, text and metadata,
//! and the stored form of its fields.

use serde::Serialize;

use crate::error::{IndexError, Result};
use crate::vectors::TokenVectors;

/// One document for the builder.
#[derive(Debug, Clone)]
pub struct Document {
    /// External id, unique in the index.
    pub id: String,
    /// Token vectors (before any reduction).
    pub vectors: TokenVectors,
    pub title: String,
    pub text: String,
    /// Arbitrary JSON; numeric and string fields can be filtered on.
    pub metadata: serde_json::Value,
}

#[derive(Serialize)]
pub(crate) struct StoredRef<'a> {
    title: &'a str,
    text: &'a str,
    metadata: &'a serde_json::Value,
}

/// The one rule for document ids, on every write path (dump readers, the
/// gRPC service, the library): not empty, no whitespace and no control
/// characters (NUL included) — an id must fit on one line of a TREC run
/// file as one field. The error says what is wrong.
pub fn check_id(id: &str) -> std::result::Result<(), String> {
    if id.is_empty() {
        return Err("the id is empty".into());
    }
    if id.contains(char::is_whitespace) {
        return Err(format!(
            "id {id:?} contains whitespace (run files could not name it)"
        ));
    }
    if id.contains(char::is_control) {
        return Err(format!("id {id:?} contains a control character"));
    }
    Ok(())
}

impl Document {
    /// What every write path requires of a document: a valid id that is
    /// not `taken`, at least one vector, the `expected` width (with words
    /// saying where it comes from), finite values.
    pub(crate) fn check(&self, taken: bool, expected: Option<(usize, &str)>) -> Result<()> {
        let invalid = |m: String| IndexError::InvalidDocument {
            id: self.id.clone(),
            message: m,
        };
        check_id(&self.id).map_err(invalid)?;
        if taken {
            return Err(invalid("duplicate id".into()));
        }
        // A document without vectors is allowed (an empty text): it is
        // stored and filterable, in no IVF list, and scores 0.
        if let Some((dim, source)) = expected {
            if self.vectors.dim() != dim {
                return Err(invalid(format!(
                    "vectors are {}-dim, {source} {dim}",
                    self.vectors.dim()
                )));
            }
        }
        if self.vectors.as_slice().iter().any(|x| !x.is_finite()) {
            return Err(invalid("non-finite vector value".into()));
        }
        Ok(())
    }

    /// The stored `{title, text, metadata}` JSON.
    pub(crate) fn stored_json(&self) -> Vec<u8> {
        serde_json::to_vec(&StoredRef {
            title: &self.title,
            text: &self.text,
            metadata: &self.metadata,
        })
        .expect("stored document serialises")
    }
}
