//! Model configuration: the Hugging Face BERT `config.json`, and the ColBERT
//! settings (markers, lengths, query augmentation) that a checkpoint carries
//! in one of several layouts.
//!
//! ColBERT settings are resolved in this order, first match wins:
//! 1. `tessera.json` (`{"colbert": {...}}`) — Tessera's own file;
//! 2. PyLate's `config_sentence_transformers.json` when it has
//!    `query_prefix`/`document_prefix`;
//! 3. Stanford ColBERT's `artifact.metadata`;
//! 4. a plain BERT checkpoint: no markers, no query augmentation. Untrained
//!    `[MASK]` outputs hurt a model that never learnt them (measured on SciFact
//!    test with raw MiniLM vectors: nDCG@10 0.666 with masks, 0.705 without).

use std::path::Path;

use serde::Deserialize;

use crate::error::{ModelError, Result};

/// Activation functions named by `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU (erf form), Hugging Face `gelu`.
    Gelu,
    /// Tanh approximation of GELU: `gelu_new`, `gelu_pytorch_tanh`.
    GeluTanh,
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "gelu" => Self::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Self::GeluTanh,
            "relu" => Self::Relu,
            "silu" | "swish" => Self::Silu,
            _ => return None,
        })
    }
}

#[derive(Debug, Deserialize)]
struct RawBertConfig {
    vocab_size: i64,
    hidden_size: i64,
    num_hidden_layers: i64,
    num_attention_heads: i64,
    intermediate_size: i64,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_max_pos")]
    max_position_embeddings: i64,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: i64,
    #[serde(default)]
    pad_token_id: i64,
    #[serde(default = "default_pos_type")]
    position_embedding_type: String,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_max_pos() -> i64 {
    512
}
fn default_type_vocab() -> i64 {
    2
}
fn default_pos_type() -> String {
    "absolute".into()
}

/// The backbone's shape, read from a Hugging Face BERT `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct BertConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub max_position_embeddings: i64,
    pub type_vocab_size: i64,
    pub pad_token_id: i64,
}

impl BertConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = read_text(path)?;
        Self::from_json(path, &text)
    }

    /// Parses `text` as the content of `path` (used in error messages).
    pub fn from_json(path: &Path, text: &str) -> Result<Self> {
        let raw: RawBertConfig =
            serde_json::from_str(text).map_err(|e| ModelError::config(path, json_message(&e)))?;
        let err = |m: String| ModelError::config(path, m);
        for (name, v) in [
            ("vocab_size", raw.vocab_size),
            ("hidden_size", raw.hidden_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("num_attention_heads", raw.num_attention_heads),
            ("intermediate_size", raw.intermediate_size),
            ("max_position_embeddings", raw.max_position_embeddings),
            ("type_vocab_size", raw.type_vocab_size),
        ] {
            if v <= 0 {
                return Err(err(format!("field {name} must be positive, got {v}")));
            }
        }
        if raw.hidden_size % raw.num_attention_heads != 0 {
            return Err(err(format!(
                "field hidden_size ({}) is not a multiple of num_attention_heads ({})",
                raw.hidden_size, raw.num_attention_heads
            )));
        }
        if !(raw.layer_norm_eps > 0.0 && raw.layer_norm_eps < 1.0) {
            return Err(err(format!(
                "field layer_norm_eps must be in (0, 1), got {}",
                raw.layer_norm_eps
            )));
        }
        if raw.position_embedding_type != "absolute" {
            return Err(err(format!(
                "field position_embedding_type {:?} is not supported (only \"absolute\")",
                raw.position_embedding_type
            )));
        }
        let hidden_act = Activation::parse(&raw.hidden_act).ok_or_else(|| {
            err(format!(
                "field hidden_act {:?} is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu, silu)",
                raw.hidden_act
            ))
        })?;
        Ok(Self {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            hidden_act,
            layer_norm_eps: raw.layer_norm_eps,
            max_position_embeddings: raw.max_position_embeddings,
            type_vocab_size: raw.type_vocab_size,
            pad_token_id: raw.pad_token_id,
        })
    }
}

/// ColBERT conventions of one model: markers, lengths, query augmentation.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColbertSettings {
    /// Token inserted after `[CLS]` in queries (e.g. `[unused0]`), if any.
    pub query_marker: Option<String>,
    /// Token inserted after `[CLS]` in documents (e.g. `[unused1]`), if any.
    pub doc_marker: Option<String>,
    /// Query length in tokens, special tokens included.
    pub query_maxlen: usize,
    /// Document length in tokens, special tokens included; longer documents
    /// are truncated (and counted).
    pub doc_maxlen: usize,
    /// Pad queries with `[MASK]` up to `query_maxlen` and keep those outputs.
    pub query_augmentation: bool,
    /// Let real tokens attend to the `[MASK]` padding.
    pub attend_to_mask_tokens: bool,
    /// Drop punctuation tokens from documents after encoding.
    pub skip_punctuation: bool,
}

impl Default for ColbertSettings {
    fn default() -> Self {
        Self {
            query_marker: None,
            doc_marker: None,
            query_maxlen: 32,
            doc_maxlen: 300,
            query_augmentation: false,
            attend_to_mask_tokens: false,
            skip_punctuation: true,
        }
    }
}

impl ColbertSettings {
    /// Settings of a ColBERT-trained checkpoint in the Stanford convention.
    pub fn stanford() -> Self {
        Self {
            query_marker: Some("[unused0]".into()),
            doc_marker: Some("[unused1]".into()),
            query_augmentation: true,
            ..Self::default()
        }
    }

    /// Resolves the settings of the model in `dir` (see the module docs for
    /// the order). Returns the settings and a short name of where they came
    /// from.
    pub fn resolve(dir: &Path) -> Result<(Self, &'static str)> {
        let own = dir.join("tessera.json");
        if own.is_file() {
            #[derive(Deserialize)]
            struct Own {
                #[serde(default)]
                colbert: Option<ColbertSettings>,
            }
            let text = read_text(&own)?;
            let parsed: Own = serde_json::from_str(&text)
                .map_err(|e| ModelError::config(&own, json_message(&e)))?;
            if let Some(s) = parsed.colbert {
                s.validate(&own)?;
                return Ok((s, "tessera.json"));
            }
        }
        let st = dir.join("config_sentence_transformers.json");
        if st.is_file() {
            if let Some(s) = Self::from_pylate(&st)? {
                s.validate(&st)?;
                return Ok((s, "pylate"));
            }
        }
        let meta = dir.join("artifact.metadata");
        if meta.is_file() {
            let s = Self::from_stanford_metadata(&meta)?;
            s.validate(&meta)?;
            return Ok((s, "stanford"));
        }
        Ok((Self::default(), "default"))
    }

    fn from_pylate(path: &Path) -> Result<Option<Self>> {
        let text = read_text(path)?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::config(path, json_message(&e)))?;
        let (Some(q), Some(d)) = (v.get("query_prefix"), v.get("document_prefix")) else {
            return Ok(None);
        };
        let string = |field: &str, x: &serde_json::Value| {
            x.as_str()
                .map(str::to_owned)
                .ok_or_else(|| ModelError::config(path, format!("field {field} must be a string")))
        };
        let mut s = Self {
            query_marker: Some(string("query_prefix", q)?),
            doc_marker: Some(string("document_prefix", d)?),
            query_augmentation: true,
            doc_maxlen: 180,
            ..Self::default()
        };
        if let Some(n) = usize_field(path, &v, "query_length")? {
            s.query_maxlen = n;
        }
        if let Some(n) = usize_field(path, &v, "document_length")? {
            s.doc_maxlen = n;
        }
        if let Some(b) = bool_field(path, &v, "do_query_expansion")? {
            s.query_augmentation = b;
        }
        if let Some(b) = bool_field(path, &v, "attend_to_expansion_tokens")? {
            s.attend_to_mask_tokens = b;
        }
        Ok(Some(s))
    }

    fn from_stanford_metadata(path: &Path) -> Result<Self> {
        let text = read_text(path)?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::config(path, json_message(&e)))?;
        let mut s = Self::stanford();
        if let Some(t) = v.get("query_token_id").and_then(|x| x.as_str()) {
            s.query_marker = Some(t.to_owned());
        }
        if let Some(t) = v.get("doc_token_id").and_then(|x| x.as_str()) {
            s.doc_marker = Some(t.to_owned());
        }
        if let Some(n) = usize_field(path, &v, "query_maxlen")? {
            s.query_maxlen = n;
        }
        if let Some(n) = usize_field(path, &v, "doc_maxlen")? {
            s.doc_maxlen = n;
        }
        if let Some(b) = bool_field(path, &v, "mask_punctuation")? {
            s.skip_punctuation = b;
        }
        if let Some(b) = bool_field(path, &v, "attend_to_mask_tokens")? {
            s.attend_to_mask_tokens = b;
        }
        Ok(s)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        // [CLS] (+ marker) + [SEP] must leave room for at least one token.
        for (name, n) in [
            ("query_maxlen", self.query_maxlen),
            ("doc_maxlen", self.doc_maxlen),
        ] {
            if n < 4 {
                return Err(ModelError::config(
                    path,
                    format!("field {name} must be at least 4, got {n}"),
                ));
            }
        }
        Ok(())
    }
}

fn usize_field(path: &Path, v: &serde_json::Value, field: &str) -> Result<Option<usize>> {
    match v.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(x) => x.as_u64().map(|n| Some(n as usize)).ok_or_else(|| {
            ModelError::config(
                path,
                format!("field {field} must be a non-negative integer"),
            )
        }),
    }
}

fn bool_field(path: &Path, v: &serde_json::Value, field: &str) -> Result<Option<bool>> {
    match v.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(x) => x
            .as_bool()
            .map(Some)
            .ok_or_else(|| ModelError::config(path, format!("field {field} must be a boolean"))),
    }
}

/// Reads a UTF-8 text file, naming the file on failure.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ModelError::MissingFile {
                path: path.to_owned(),
                what: "file not found",
            }
        } else {
            ModelError::io(path, e)
        }
    })?;
    String::from_utf8(bytes).map_err(|e| ModelError::config(path, format!("not valid UTF-8 ({e})")))
}

/// serde_json's message without its backticks, e.g.
/// `missing field hidden_size (line 3, column 1)`.
pub fn json_message(e: &serde_json::Error) -> String {
    let msg = e.to_string().replace('`', "");
    // serde_json appends " at line L column C"; restate it in parentheses.
    match msg.rfind(" at line ") {
        Some(i) if e.line() > 0 => {
            format!("{} (line {}, column {})", &msg[..i], e.line(), e.column())
        }
        _ => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: &str = r#"{"vocab_size": 100, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 16}"#;

    #[test]
    fn parses_minimal_config_with_defaults() {
        let c = BertConfig::from_json(Path::new("config.json"), MINI).unwrap();
        assert_eq!(c.hidden_size, 8);
        assert_eq!(c.hidden_act, Activation::Gelu);
        assert_eq!(c.max_position_embeddings, 512);
        assert_eq!(c.layer_norm_eps, 1e-12);
    }

    #[test]
    fn missing_field_is_named_with_the_file() {
        let text = r#"{"vocab_size": 100, "num_hidden_layers": 1,
            "num_attention_heads": 2, "intermediate_size": 16}"#;
        let e = BertConfig::from_json(Path::new("m/config.json"), text).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("m/config.json: missing field hidden_size"),
            "{msg}"
        );
    }

    #[test]
    fn rejects_inconsistent_heads_and_unknown_activation() {
        let bad_heads = MINI.replace("\"num_attention_heads\": 2", "\"num_attention_heads\": 3");
        let e = BertConfig::from_json(Path::new("config.json"), &bad_heads).unwrap_err();
        assert!(e.to_string().contains("num_attention_heads"), "{e}");
        let bad_act = MINI.replace('}', ", \"hidden_act\": \"mish\"}");
        let e = BertConfig::from_json(Path::new("config.json"), &bad_act).unwrap_err();
        assert!(e.to_string().contains("hidden_act"), "{e}");
    }

    #[test]
    fn malformed_json_reports_position() {
        let e =
            BertConfig::from_json(Path::new("config.json"), "{\"vocab_size\": 1,,}").unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }

    #[test]
    fn settings_resolution_order() {
        let dir = tempfile::tempdir().unwrap();
        let (s, from) = ColbertSettings::resolve(dir.path()).unwrap();
        assert_eq!((s.clone(), from), (ColbertSettings::default(), "default"));
        assert!(!s.query_augmentation && s.query_marker.is_none());

        std::fs::write(
            dir.path().join("artifact.metadata"),
            r#"{"query_maxlen": 24, "doc_maxlen": 200, "mask_punctuation": true}"#,
        )
        .unwrap();
        let (s, from) = ColbertSettings::resolve(dir.path()).unwrap();
        assert_eq!(from, "stanford");
        assert_eq!(s.query_marker.as_deref(), Some("[unused0]"));
        assert_eq!(
            (s.query_maxlen, s.doc_maxlen, s.query_augmentation),
            (24, 200, true)
        );

        std::fs::write(
            dir.path().join("config_sentence_transformers.json"),
            r#"{"query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": 16,
                "document_length": 64, "attend_to_expansion_tokens": false}"#,
        )
        .unwrap();
        let (s, from) = ColbertSettings::resolve(dir.path()).unwrap();
        assert_eq!(from, "pylate");
        assert_eq!(s.doc_marker.as_deref(), Some("[D] "));
        assert_eq!((s.query_maxlen, s.doc_maxlen), (16, 64));

        std::fs::write(
            dir.path().join("tessera.json"),
            r#"{"colbert": {"query_maxlen": 8, "query_augmentation": true}}"#,
        )
        .unwrap();
        let (s, from) = ColbertSettings::resolve(dir.path()).unwrap();
        assert_eq!(from, "tessera.json");
        assert_eq!(
            (s.query_maxlen, s.doc_maxlen, s.query_augmentation),
            (8, 300, true)
        );

        std::fs::write(
            dir.path().join("tessera.json"),
            r#"{"colbert": {"query_maxlen": 2}}"#,
        )
        .unwrap();
        let e = ColbertSettings::resolve(dir.path()).unwrap_err();
        assert!(
            e.to_string().contains("tessera.json: field query_maxlen"),
            "{e}"
        );
    }

    #[test]
    fn sentence_transformers_config_without_prefixes_is_not_pylate() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config_sentence_transformers.json"),
            r#"{"__version__": {"sentence_transformers": "2.0.0"}}"#,
        )
        .unwrap();
        assert_eq!(ColbertSettings::resolve(dir.path()).unwrap().1, "default");
    }
}
