//! The BERT backbone, written against libtorch through `tch`.
//!
//! Reads top to bottom like the Hugging Face model it mirrors: embeddings
//! (word + position + token type, LayerNorm), then `num_hidden_layers`
//! post-LayerNorm transformer blocks (self-attention, feed-forward). Variable
//! names follow Hugging Face's, so checkpoints load by name
//! (see [`crate::weights`]). Dropout is absent: this model is used for
//! inference and as a frozen backbone.

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::config::{Activation, BertConfig};
use crate::precision::Precision;

/// A linear map `x · Wᵀ + b` with `torch.nn.Linear`'s variable names.
///
/// Forward goes through `at::linear` (one fused `addmm` for contiguous
/// input), exactly what PyTorch runs, rather than tch's `matmul` + add.
/// Under [`Precision::Bf16`] it multiplies bfloat16 copies of the weights
/// (made once by [`BertModel::set_precision`]) and of its input.
#[derive(Debug)]
struct Linear {
    weight: Tensor,
    bias: Tensor,
    /// bfloat16 copies of `weight` and `bias` (bf16 inference only).
    half: Option<(Tensor, Tensor)>,
    /// Training under bf16 autocast: the product in bfloat16 from casts of
    /// the f32 weights made in each forward pass, so gradients reach the
    /// f32 master weights.
    train_bf16: bool,
}

impl Linear {
    /// The product in the compute precision: f32, or bfloat16 under bf16.
    fn forward_low(&self, x: &Tensor) -> Tensor {
        if self.train_bf16 {
            let bf = Kind::BFloat16;
            return x
                .to_kind(bf)
                .linear(&self.weight.to_kind(bf), Some(&self.bias.to_kind(bf)));
        }
        match &self.half {
            None => x.linear(&self.weight, Some(&self.bias)),
            Some((w, b)) => x.to_kind(Kind::BFloat16).linear(w, Some(b)),
        }
    }

    fn set_precision(&mut self, p: Precision) {
        self.half = match p {
            Precision::Fp32 => None,
            Precision::Bf16 => Some((
                self.weight.detach().to_kind(Kind::BFloat16),
                self.bias.detach().to_kind(Kind::BFloat16),
            )),
        };
    }
}

impl Module for Linear {
    /// Always f32 out (what the residual sums and LayerNorm take).
    fn forward(&self, x: &Tensor) -> Tensor {
        let y = self.forward_low(x);
        if self.half.is_some() || self.train_bf16 {
            y.to_kind(Kind::Float)
        } else {
            y
        }
    }
}

fn linear(p: nn::Path, d_in: i64, d_out: i64) -> Linear {
    // Zeros: every backbone weight is overwritten from the checkpoint.
    Linear {
        weight: p.zeros("weight", &[d_out, d_in]),
        bias: p.zeros("bias", &[d_out]),
        half: None,
        train_bf16: false,
    }
}

fn layer_norm(p: nn::Path, dim: i64, eps: f64) -> nn::LayerNorm {
    let cfg = nn::LayerNormConfig {
        eps,
        ..Default::default()
    };
    nn::layer_norm(p, vec![dim], cfg)
}

#[derive(Debug)]
struct Embeddings {
    word: nn::Embedding,
    position: nn::Embedding,
    token_type: nn::Embedding,
    norm: nn::LayerNorm,
}

impl Embeddings {
    fn new(p: nn::Path, c: &BertConfig) -> Self {
        let emb =
            |name: &str, n: i64| nn::embedding(&p / name, n, c.hidden_size, Default::default());
        Self {
            word: emb("word_embeddings", c.vocab_size),
            position: emb("position_embeddings", c.max_position_embeddings),
            token_type: emb("token_type_embeddings", c.type_vocab_size),
            norm: layer_norm(&p / "LayerNorm", c.hidden_size, c.layer_norm_eps),
        }
    }

    fn forward(&self, input_ids: &Tensor) -> Tensor {
        let len = input_ids.size()[1];
        let positions = Tensor::arange(len, (Kind::Int64, input_ids.device())).unsqueeze(0);
        // Single-segment input: every token type is 0.
        let types = positions.zeros_like();
        let x = self.word.forward(input_ids)
            + self.position.forward(&positions)
            + self.token_type.forward(&types);
        self.norm.forward(&x)
    }
}

#[derive(Debug)]
struct SelfAttention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    norm: nn::LayerNorm,
    heads: i64,
}

impl SelfAttention {
    fn new(p: nn::Path, c: &BertConfig) -> Self {
        let h = c.hidden_size;
        let s = &p / "self";
        let o = &p / "output";
        Self {
            query: linear(&s / "query", h, h),
            key: linear(&s / "key", h, h),
            value: linear(&s / "value", h, h),
            output: linear(&o / "dense", h, h),
            norm: layer_norm(&o / "LayerNorm", h, c.layer_norm_eps),
            heads: c.num_attention_heads,
        }
    }

    /// `mask`: boolean `[batch, 1, 1, len]`, true where a key may be attended.
    fn forward(&self, x: &Tensor, mask: &Tensor) -> Tensor {
        let (b, l, h) = x.size3().expect("hidden states are [batch, len, hidden]");
        let split = |t: Tensor| t.view([b, l, self.heads, h / self.heads]).transpose(1, 2);
        // Attention runs in the compute precision (bf16 under bf16).
        let q = split(self.query.forward_low(x));
        let k = split(self.key.forward_low(x));
        let v = split(self.value.forward_low(x));
        let ctx =
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(mask), 0.0, false, None, false);
        let ctx = ctx.transpose(1, 2).contiguous().view([b, l, h]);
        self.norm.forward(&(self.output.forward(&ctx) + x))
    }

    fn set_precision(&mut self, p: Precision) {
        for l in [
            &mut self.query,
            &mut self.key,
            &mut self.value,
            &mut self.output,
        ] {
            l.set_precision(p);
        }
    }

    fn set_training_bf16(&mut self, on: bool) {
        for l in [
            &mut self.query,
            &mut self.key,
            &mut self.value,
            &mut self.output,
        ] {
            l.train_bf16 = on;
        }
    }
}

#[derive(Debug)]
struct Layer {
    attention: SelfAttention,
    intermediate: Linear,
    output: Linear,
    norm: nn::LayerNorm,
    act: Activation,
}

impl Layer {
    fn new(p: nn::Path, c: &BertConfig) -> Self {
        Self {
            attention: SelfAttention::new(&p / "attention", c),
            intermediate: linear(
                &p / "intermediate" / "dense",
                c.hidden_size,
                c.intermediate_size,
            ),
            output: linear(&p / "output" / "dense", c.intermediate_size, c.hidden_size),
            norm: layer_norm(&p / "output" / "LayerNorm", c.hidden_size, c.layer_norm_eps),
            act: c.hidden_act,
        }
    }

    fn forward(&self, x: &Tensor, mask: &Tensor) -> Tensor {
        let x = self.attention.forward(x, mask);
        let hidden = activate(self.act, &self.intermediate.forward_low(&x));
        self.norm.forward(&(self.output.forward(&hidden) + x))
    }

    fn set_precision(&mut self, p: Precision) {
        self.attention.set_precision(p);
        self.intermediate.set_precision(p);
        self.output.set_precision(p);
    }

    fn set_training_bf16(&mut self, on: bool) {
        self.attention.set_training_bf16(on);
        self.intermediate.train_bf16 = on;
        self.output.train_bf16 = on;
    }
}

fn activate(act: Activation, x: &Tensor) -> Tensor {
    match act {
        Activation::Gelu => x.gelu("none"),
        Activation::GeluTanh => x.gelu("tanh"),
        Activation::Relu => x.relu(),
        Activation::Silu => x.silu(),
    }
}

/// BERT encoder: token ids in, last hidden states out.
#[derive(Debug)]
pub struct BertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    config: BertConfig,
    precision: Precision,
}

impl BertModel {
    /// Creates the model's variables under `p` (zero-initialised by tch's
    /// defaults until weights are loaded).
    pub fn new(p: &nn::Path, config: &BertConfig) -> Self {
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::new(p / "encoder" / "layer" / i, config))
            .collect();
        Self {
            embeddings: Embeddings::new(p / "embeddings", config),
            layers,
            config: config.clone(),
            precision: Precision::Fp32,
        }
    }

    pub fn config(&self) -> &BertConfig {
        &self.config
    }

    /// Sets the precision of the matrix products for inference (see
    /// [`crate::precision`]); call after the weights are loaded — bf16
    /// copies them. Training runs in f32: leave it at `Fp32` there.
    pub fn set_precision(&mut self, p: Precision) {
        for layer in &mut self.layers {
            layer.set_precision(p);
        }
        self.precision = p;
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// bf16 autocast for fine-tuning (on CUDA): every linear layer
    /// multiplies in bfloat16 casts of its f32 weights, LayerNorm and the
    /// residual sums stay f32, gradients land on the f32 weights.
    pub fn set_training_bf16(&mut self, on: bool) {
        for layer in &mut self.layers {
            layer.set_training_bf16(on);
        }
    }

    /// `input_ids`: `[batch, len]` int64; `attention_mask`: `[batch, len]`,
    /// non-zero where a token may be attended to. Returns `[batch, len, hidden]`.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Tensor {
        let mask = attention_mask.ne(0).unsqueeze(1).unsqueeze(1);
        let mut x = self.embeddings.forward(input_ids);
        for layer in &self.layers {
            x = layer.forward(&x, &mask);
        }
        x
    }
}
