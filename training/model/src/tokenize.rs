//! ColBERT tokenisation on top of a Hugging Face `tokenizer.json`.
//!
//! The tokenizer's own padding, truncation and special-token template are
//! switched off; this module assembles every sequence itself, by id:
//! `[CLS] (marker) tokens [SEP]`, truncated to the query or document length,
//! queries optionally augmented with `[MASK]` up to `query_maxlen`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use tokenizers::Tokenizer;

use crate::config::ColbertSettings;
use crate::error::{ModelError, Result};

/// Which side of the late interaction a text is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    Query,
    Document,
}

/// One tokenised text, ready for the backbone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedText {
    /// Token ids, special tokens included (and `[MASK]` augmentation for
    /// queries when enabled).
    pub ids: Vec<u32>,
    /// Number of leading ids the backbone may attend to; ids past it are
    /// query-augmentation masks that are not attended (their outputs are
    /// kept).
    pub attended: usize,
    /// Number of word-piece tokens of the text itself (0 for empty text).
    pub content_tokens: usize,
    /// Whether the text was cut to fit the maximum length.
    pub truncated: bool,
}

/// A BERT WordPiece tokenizer with ColBERT's conventions.
pub struct ColbertTokenizer {
    inner: Tokenizer,
    settings: ColbertSettings,
    cls: u32,
    sep: u32,
    mask: u32,
    pad: u32,
    query_marker: Option<u32>,
    doc_marker: Option<u32>,
    punctuation: HashSet<u32>,
    /// Upper bound from the model's position embeddings.
    max_positions: usize,
}

impl ColbertTokenizer {
    /// Loads `tokenizer.json` and resolves special tokens and markers to ids.
    pub fn from_file(path: &Path, settings: ColbertSettings, max_positions: usize) -> Result<Self> {
        if !path.is_file() {
            return Err(ModelError::MissingFile {
                path: path.to_owned(),
                what: "tokenizer not found",
            });
        }
        let err = |message: String| ModelError::Tokenizer {
            path: path.to_owned(),
            message,
        };
        let mut inner = Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| err(e.to_string()))?;
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| err(format!("vocabulary has no token {token:?}")))
        };
        let marker = |m: &Option<String>| -> Result<Option<u32>> {
            match m {
                None => Ok(None),
                // PyLate prefixes carry a trailing space ("[Q] "); the added
                // token may be stored with or without it.
                Some(m) => inner
                    .token_to_id(m)
                    .or_else(|| inner.token_to_id(m.trim()))
                    .map(Some)
                    .ok_or_else(|| err(format!("vocabulary has no marker token {m:?}"))),
            }
        };
        let punctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
            .chars()
            .filter_map(|c| inner.token_to_id(&c.to_string()))
            .collect();
        Ok(Self {
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            mask: id("[MASK]")?,
            pad: id("[PAD]")?,
            query_marker: marker(&settings.query_marker)?,
            doc_marker: marker(&settings.doc_marker)?,
            punctuation,
            max_positions,
            settings,
            inner,
        })
    }

    pub fn settings(&self) -> &ColbertSettings {
        &self.settings
    }

    pub fn pad_id(&self) -> u32 {
        self.pad
    }

    /// Whether `id` is a punctuation token (dropped from documents when
    /// `skip_punctuation` is set).
    pub fn is_punctuation(&self, id: u32) -> bool {
        self.punctuation.contains(&id)
    }

    /// The vocabulary string of `id`.
    pub fn token(&self, id: u32) -> String {
        self.inner
            .id_to_token(id)
            .unwrap_or_else(|| format!("<{id}>"))
    }

    /// Maximum sequence length of `kind`, special tokens included.
    pub fn max_len(&self, kind: TextKind) -> usize {
        let configured = match kind {
            TextKind::Query => self.settings.query_maxlen,
            TextKind::Document => self.settings.doc_maxlen,
        };
        configured.min(self.max_positions)
    }

    /// Tokenises a batch of texts of one kind. Text past what the kind's
    /// maximum length can keep is cut before tokenising ([`cut_to_fit`]), so
    /// a document's cost no longer grows with its length; the ids are the
    /// same as from the whole text.
    pub fn encode_batch(&self, texts: &[&str], kind: TextKind) -> Result<Vec<TokenizedText>> {
        let max_len = self.max_len(kind);
        let cut: Vec<&str> = texts.iter().map(|t| cut_to_fit(t, max_len)).collect();
        let encodings = self
            .inner
            .encode_batch(cut, false)
            .map_err(|e| ModelError::Tokenizer {
                path: PathBuf::from("tokenizer.json"),
                message: e.to_string(),
            })?;
        Ok(encodings
            .iter()
            .map(|enc| self.assemble(enc.get_ids(), kind))
            .collect())
    }

    fn assemble(&self, content: &[u32], kind: TextKind) -> TokenizedText {
        let marker = match kind {
            TextKind::Query => self.query_marker,
            TextKind::Document => self.doc_marker,
        };
        let max_len = self.max_len(kind);
        let specials = 2 + usize::from(marker.is_some());
        let room = max_len.saturating_sub(specials);
        let kept = content.len().min(room);
        let mut ids = Vec::with_capacity(max_len.max(kept + specials));
        ids.push(self.cls);
        ids.extend(marker);
        ids.extend_from_slice(&content[..kept]);
        ids.push(self.sep);
        let mut attended = ids.len();
        if kind == TextKind::Query && self.settings.query_augmentation {
            ids.resize(max_len, self.mask);
            if self.settings.attend_to_mask_tokens {
                attended = ids.len();
            }
        }
        TokenizedText {
            ids,
            attended,
            content_tokens: content.len(),
            truncated: kept < content.len(),
        }
    }
}

/// The prefix of `text` that holds everything a tokeniser can keep when it
/// keeps at most `max_tokens` tokens: the text up to the end of its
/// `max_tokens`-th chunk (split at ASCII whitespace) that has an ASCII
/// letter, digit or punctuation mark — each such chunk yields at least one
/// WordPiece token, and tokens of a prefix ending at whitespace are the
/// whole text's first tokens. Texts with fewer such chunks are whole.
pub fn cut_to_fit(text: &str, max_tokens: usize) -> &str {
    let bytes = text.as_bytes();
    let mut counted = 0usize;
    let mut i = 0usize;
    while i < bytes.len() {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let start = i;
        let mut counts = false;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
            counts |= bytes[i].is_ascii_alphanumeric() || bytes[i].is_ascii_punctuation();
            i += 1;
        }
        if counts && i > start {
            counted += 1;
            if counted >= max_tokens {
                // `i` is at ASCII whitespace or the end: a char boundary.
                return &text[..i];
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::cut_to_fit;

    #[test]
    fn cut_keeps_enough_chunks_and_only_cuts_at_whitespace() {
        assert_eq!(cut_to_fit("a b c d", 2), "a b");
        assert_eq!(cut_to_fit("a b", 5), "a b");
        // Chunks without an ASCII letter, digit or mark do not count (they
        // may yield no token at all).
        assert_eq!(
            cut_to_fit("\u{a0} \u{301} a \u{0} b c", 2),
            "\u{a0} \u{301} a \u{0} b"
        );
        assert_eq!(cut_to_fit("é b c", 2), "é b c");
        assert_eq!(cut_to_fit("café, b c", 2), "café, b");
        assert_eq!(cut_to_fit("", 3), "");
    }
}
