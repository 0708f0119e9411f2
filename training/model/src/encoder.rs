//! The batched ColBERT encoder: text in, L2-normalised token vectors out.
//!
//! Speed comes from the usual inference tricks: inputs sorted by length so
//! each batch is padded only to its own longest member, gradients off, one
//! device→host copy per batch, and a configurable batch size.

use std::path::Path;

use tch::{Device, Kind, Tensor};
use tessera_index::TokenVectors;

use crate::checkpoint::{CheckpointLayout, ColbertModel};
use crate::config::ColbertSettings;
use crate::device::DeviceChoice;
use crate::error::{ModelError, Result};
use crate::precision::{Precision, PrecisionChoice};
use crate::tokenize::{ColbertTokenizer, TextKind, TokenizedText};

/// How to run the encoder.
#[derive(Debug, Clone, Copy)]
pub struct EncoderOptions {
    pub device: DeviceChoice,
    /// Texts per forward pass.
    pub batch_size: usize,
    /// The backbone's precision (resolved against the device at load).
    pub precision: PrecisionChoice,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        Self {
            device: DeviceChoice::Auto,
            batch_size: 32,
            precision: PrecisionChoice::Auto,
        }
    }
}

/// One encoded text.
#[derive(Debug, Clone)]
pub struct EncodedText {
    /// The kept token vectors (punctuation dropped from documents).
    pub vectors: TokenVectors,
    /// Vocabulary ids of the kept tokens, aligned with `vectors`.
    pub token_ids: Vec<u32>,
    /// The text was longer than the maximum length and was cut.
    pub truncated: bool,
    /// The text held no token of its own (empty or whitespace-only); only
    /// special tokens were encoded.
    pub empty: bool,
}

/// A batch of encoded texts, in input order, with counts for reporting.
#[derive(Debug, Clone, Default)]
pub struct EncodeOutput {
    pub items: Vec<EncodedText>,
    /// How many inputs were truncated.
    pub truncated: usize,
    /// How many inputs had no content tokens.
    pub empty: usize,
    /// Token positions run through the backbone (padding excluded).
    pub tokens_processed: usize,
}

/// What [`Encoder::run`] returns per token.
#[derive(Clone, Copy)]
enum Output {
    /// Head applied, L2-normalised.
    Vectors,
    /// The backbone's last hidden states as they are.
    BackboneStates,
}

/// Backbone + head + tokenizer, ready to encode.
pub struct Encoder {
    model: ColbertModel,
    tokenizer: ColbertTokenizer,
    batch_size: usize,
}

impl Encoder {
    /// Loads the model in `dir`.
    pub fn load(dir: &Path, options: EncoderOptions) -> Result<Self> {
        let device = options.device.resolve()?;
        let mut model = ColbertModel::load(dir, device)?;
        model.bert.set_precision(options.precision.resolve(device));
        let max_positions = model.bert.config().max_position_embeddings as usize;
        let tokenizer = ColbertTokenizer::from_file(
            &model.backbone_dir.join("tokenizer.json"),
            model.settings.clone(),
            max_positions,
        )?;
        if options.batch_size == 0 {
            return Err(ModelError::InvalidInput(
                "batch size must be at least 1".into(),
            ));
        }
        Ok(Self {
            model,
            tokenizer,
            batch_size: options.batch_size,
        })
    }

    pub fn dim(&self) -> usize {
        self.model.dim() as usize
    }

    /// This encoder with other ColBERT settings (markers, lengths, query
    /// augmentation): the tokenizer is rebuilt, the model kept.
    pub fn with_settings(mut self, settings: ColbertSettings) -> Result<Self> {
        let max_positions = self.model.bert.config().max_position_embeddings as usize;
        self.tokenizer = ColbertTokenizer::from_file(
            &self.model.backbone_dir.join("tokenizer.json"),
            settings.clone(),
            max_positions,
        )?;
        self.model.settings = settings;
        Ok(self)
    }

    pub fn device(&self) -> Device {
        self.model.device()
    }

    /// The precision the backbone runs in.
    pub fn precision(&self) -> Precision {
        self.model.bert.precision()
    }

    pub fn layout(&self) -> CheckpointLayout {
        self.model.layout
    }

    pub fn settings(&self) -> &ColbertSettings {
        self.tokenizer.settings()
    }

    pub fn tokenizer(&self) -> &ColbertTokenizer {
        &self.tokenizer
    }

    pub fn model(&self) -> &ColbertModel {
        &self.model
    }

    pub fn encode_queries(&self, texts: &[&str]) -> Result<EncodeOutput> {
        self.encode(texts, TextKind::Query, &mut |_| {})
    }

    pub fn encode_documents(&self, texts: &[&str]) -> Result<EncodeOutput> {
        self.encode(texts, TextKind::Document, &mut |_| {})
    }

    /// Encodes `texts`; `progress` is called after each batch with the number
    /// of texts finished in it.
    pub fn encode(
        &self,
        texts: &[&str],
        kind: TextKind,
        progress: &mut dyn FnMut(usize),
    ) -> Result<EncodeOutput> {
        let tokenized = self.tokenize(texts, kind)?;
        self.encode_tokenized(&tokenized, kind, progress)
    }

    /// The first half of [`Encoder::encode`]: tokenisation only (no
    /// libtorch), so that a pipeline can run it on another thread.
    pub fn tokenize(&self, texts: &[&str], kind: TextKind) -> Result<Vec<TokenizedText>> {
        self.tokenizer.encode_batch(texts, kind)
    }

    /// The second half of [`Encoder::encode`]: the model over texts that
    /// [`Encoder::tokenize`] made with the same `kind`.
    pub fn encode_tokenized(
        &self,
        tokenized: &[TokenizedText],
        kind: TextKind,
        progress: &mut dyn FnMut(usize),
    ) -> Result<EncodeOutput> {
        self.run(tokenized, kind, Output::Vectors, progress)
    }

    /// The backbone's token states of `tokenized`, before the head and
    /// unnormalised (`hidden_size` wide), for the tokens
    /// [`Encoder::encode_tokenized`] would keep. A frozen-backbone trainer
    /// caches these once and trains heads on them.
    pub fn backbone_states(
        &self,
        tokenized: &[TokenizedText],
        kind: TextKind,
        progress: &mut dyn FnMut(usize),
    ) -> Result<EncodeOutput> {
        self.run(tokenized, kind, Output::BackboneStates, progress)
    }

    fn run(
        &self,
        tokenized: &[TokenizedText],
        kind: TextKind,
        output: Output,
        progress: &mut dyn FnMut(usize),
    ) -> Result<EncodeOutput> {
        let mut order: Vec<usize> = (0..tokenized.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(tokenized[i].ids.len()));

        let mut slots: Vec<Option<EncodedText>> = vec![None; tokenized.len()];
        let mut out = EncodeOutput::default();
        let dim = match output {
            Output::Vectors => self.dim(),
            Output::BackboneStates => self.model.bert.config().hidden_size as usize,
        };
        let device = self.device();
        let pad = i64::from(self.tokenizer.pad_id());
        let _no_grad = tch::no_grad_guard();

        for chunk in order.chunks(self.batch_size) {
            let width = tokenized[chunk[0]].ids.len();
            let mut ids = vec![pad; chunk.len() * width];
            let mut mask = vec![0i64; chunk.len() * width];
            for (row, &i) in chunk.iter().enumerate() {
                let t = &tokenized[i];
                let base = row * width;
                for (j, &id) in t.ids.iter().enumerate() {
                    ids[base + j] = i64::from(id);
                }
                mask[base..base + t.attended].fill(1);
                out.tokens_processed += t.ids.len();
            }
            let shape = [chunk.len() as i64, width as i64];
            let ids = Tensor::from_slice(&ids).view(shape).to_device(device);
            let mask = Tensor::from_slice(&mask).view(shape).to_device(device);

            let states = self.model.bert.forward(&ids, &mask);
            let out_states = match output {
                Output::Vectors => {
                    let projected = self.model.head.forward(&states);
                    let norms = projected
                        .norm_scalaropt_dim(2, [-1i64].as_slice(), true)
                        .clamp_min(1e-12);
                    projected / norms
                }
                Output::BackboneStates => states,
            };
            let normalised = out_states
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous();
            let host: Vec<f32> = Vec::try_from(normalised.view([-1]))?;

            for (row, &i) in chunk.iter().enumerate() {
                let t = &tokenized[i];
                let skip_punct = kind == TextKind::Document && self.settings().skip_punctuation;
                let mut data = Vec::with_capacity(t.ids.len() * dim);
                let mut kept_ids = Vec::with_capacity(t.ids.len());
                for (j, &id) in t.ids.iter().enumerate() {
                    if skip_punct && self.tokenizer.is_punctuation(id) {
                        continue;
                    }
                    let start = (row * width + j) * dim;
                    data.extend_from_slice(&host[start..start + dim]);
                    kept_ids.push(id);
                }
                out.truncated += usize::from(t.truncated);
                out.empty += usize::from(t.content_tokens == 0);
                slots[i] = Some(EncodedText {
                    vectors: TokenVectors::new(dim, data)
                        .expect("rows are whole multiples of dim by construction"),
                    token_ids: kept_ids,
                    truncated: t.truncated,
                    empty: t.content_tokens == 0,
                });
            }
            progress(chunk.len());
        }
        out.items = slots
            .into_iter()
            .map(|s| s.expect("every input belongs to exactly one batch"))
            .collect();
        Ok(out)
    }
}
