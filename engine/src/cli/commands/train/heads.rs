//! `tessera train heads`: flags → [`HeadsOptions`] →
//! [`tessera_engine::fit::heads::train_heads`].

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use tessera_engine::fit::heads::{train_heads, HeadsOptions};
use tessera_model::heads::blocks::Activation;
use tessera_model::HeadKind;
use tessera_training::train::select::Selection;
use tessera_training::train::Mode;

use crate::cli::args::{DataArgs, ModelArgs, ScheduleArgs, TrainerArgs};

/// Train a projection head — linear, FFN, GLU, any with a residual path —
/// on BEIR train splits (and/or self-supervised pairs from a dump), keeping
/// the best checkpoint on the dev splits.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera train heads --dataset path/to/beir/scifact --dataset path/to/beir/nfcorpus \\\n    \
      --head ffn --depth 2 --width-factor 2 --residual --dim 128 --out heads/ffn-res-128\n  \
    tessera train heads --dataset path/to/beir/scifact --dataset path/to/beir/nfcorpus \\\n    \
      --head glu --dim 128 --steps 600 --batch-queries 24 --positives 4 --out heads/glu-128  \
    # the recipe of the default model v4\n  \
    tessera train heads --dataset path/to/beir/scifact --head linear --dim 128 --mode full \\\n    \
      --steps 100 --batch-queries 8 --out heads/linear-full\n  \
    tessera train heads --unsupervised-corpus my-dump.jsonl --head glu --dim 128 --out heads/mine\n  \
    tessera index build --input corpus.jsonl --out my.idx --model heads/ffn-res-128\n\n\
    The output folder is a model folder: head.json + head.safetensors, tessera.json (ColBERT\n\
    settings and the backbone it sits on), training.json (the command, config and scores),\n\
    metrics.jsonl, loss.png/svg and dev.png/svg. An interrupted run continues with --resume.")]
pub struct HeadsArgs {
    /// A BEIR dataset folder with a train split (repeat for several).
    #[arg(long = "dataset", value_name = "DIR")]
    pub datasets: Vec<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    /// Self-supervised pairs from a dump without labels: two random spans of
    /// one document as query and positive (Contriever's cropping).
    #[arg(long, value_name = "DUMP")]
    pub unsupervised_corpus: Option<PathBuf>,
    /// Documents of --unsupervised-corpus to crop pairs from.
    #[arg(long, default_value_t = 5000)]
    pub unsupervised_docs: usize,
    /// Head architecture: identity, linear, ffn or glu.
    #[arg(long, default_value = "ffn", value_parser = parse_head)]
    pub head: HeadKind,
    /// Output dimension.
    #[arg(long, default_value_t = 128, allow_negative_numbers = true)]
    pub dim: i64,
    /// FFN: linear layers.
    #[arg(long, default_value_t = 2)]
    pub depth: usize,
    /// FFN and GLU: hidden width as a multiple of the backbone's width.
    #[arg(long, default_value_t = 2.0)]
    pub width_factor: f64,
    /// gelu, relu or silu (default: gelu for FFN, silu — SwiGLU — for GLU).
    #[arg(long, value_parser = parse_activation)]
    pub activation: Option<Activation>,
    /// FFN: LayerNorm after each hidden activation.
    #[arg(long)]
    pub layer_norm: bool,
    /// Add a skip path (identity when widths match, a learned shortcut otherwise).
    #[arg(long)]
    pub residual: bool,
    /// Biases on the head's linear layers.
    #[arg(long)]
    pub bias: bool,
    /// frozen (cached backbone states; only the head trains) or full.
    #[arg(long, default_value = "frozen", value_parser = parse_mode)]
    pub mode: Mode,
    /// Learning rate of the backbone (full mode).
    #[arg(long, default_value_t = 2e-5)]
    pub backbone_lr: f64,
    /// AdamW's decoupled weight decay on the head's (and backbone's) weights.
    #[arg(long, default_value_t = 0.01)]
    pub weight_decay: f64,
    #[command(flatten)]
    pub trainer: TrainerArgs,
    #[command(flatten)]
    pub sched: ScheduleArgs,
    /// Teacher scores for distillation: a TREC run file per --dataset, in
    /// order (scores of a larger model over each train query's candidates).
    #[arg(long = "teacher", value_name = "RUN")]
    pub teachers: Vec<PathBuf>,
    /// Weight of the distillation loss.
    #[arg(long, default_value_t = 1.0)]
    pub distill_weight: f64,
    /// Temperature of the teacher's and the student's softmax over a
    /// query's candidates (distillation).
    #[arg(long, default_value_t = 1.0)]
    pub distill_temperature: f64,
    /// Teacher candidates per query.
    #[arg(long, default_value_t = 8)]
    pub distill_candidates: usize,
    /// Train with ColBERT's markers (`[unused0]` for queries, `[unused1]` for
    /// documents); recorded in the model so encoding follows.
    #[arg(long)]
    pub markers: bool,
    /// Pad queries with `[MASK]` to the query length and keep those outputs.
    #[arg(long)]
    pub query_augmentation: bool,
    /// Start from the head of this model folder or built-in model name
    /// (its head.json replaces the head options); with --steps 0, evaluate
    /// it on the dev pools.
    #[arg(long, value_name = "DIR", conflicts_with = "start")]
    pub init_head: Option<PathBuf>,
    /// How a fresh head starts: random (torch's Linear init) or pca — the
    /// backbone's principal directions, learnt from no labels (a linear
    /// head's weight, or the learned shortcut of a --residual head whose
    /// branch starts at zero): a general head that training moves from.
    #[arg(long, default_value = "random", value_parser = ["random", "pca"])]
    pub start: String,
    /// L2-SP: pull the head's weights towards where they started with this
    /// weight (Σ‖θ − θ₀‖²; 0: off).
    #[arg(long, default_value_t = 0.0)]
    pub l2_sp: f64,
    /// Weight of a KL term from the backbone's own MaxSim scores (no head)
    /// to the head's, over each query's batch documents: the trained head
    /// keeps the order the backbone knew (frozen mode; 0: off).
    #[arg(long, default_value_t = 0.0)]
    pub raw_kl: f64,
    /// A collection to validate on but never train on (its --dev-split
    /// against its whole corpus, exact MaxSim); repeat for several. The
    /// validations report an in-domain and a zero-shot mean.
    #[arg(long = "zero-shot", value_name = "DIR")]
    pub zero_shot: Vec<PathBuf>,
    /// Which validated head to keep: in-domain (best in-domain mean) or
    /// robust (best zero-shot mean among those within --select-margin of
    /// the best in-domain mean; needs --zero-shot, frozen mode).
    #[arg(long, default_value = "in-domain")]
    pub select: Selection,
    /// The robust rule's margin below the best in-domain mean (nDCG@10).
    #[arg(long, default_value_t = 0.01)]
    pub select_margin: f64,
    /// The model folder to write.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
}

fn parse_head(s: &str) -> Result<HeadKind, String> {
    match s {
        "identity" => Ok(HeadKind::Identity),
        "linear" => Ok(HeadKind::Linear),
        "ffn" => Ok(HeadKind::Ffn),
        "glu" => Ok(HeadKind::Glu),
        "residual" => {
            Err("residual is a path, not a head: add --residual to linear, ffn or glu".into())
        }
        _ => Err(format!("unknown head {s:?} (identity, linear, ffn or glu)")),
    }
}

fn parse_activation(s: &str) -> Result<Activation, String> {
    match s {
        "gelu" => Ok(Activation::Gelu),
        "relu" => Ok(Activation::Relu),
        "silu" | "swish" => Ok(Activation::Silu),
        _ => Err(format!("unknown activation {s:?} (gelu, relu or silu)")),
    }
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    s.parse()
}

impl HeadsArgs {
    /// The library's options for these flags.
    pub fn options(self) -> HeadsOptions {
        HeadsOptions {
            datasets: self.datasets,
            data: self.data.options(),
            unsupervised_corpus: self.unsupervised_corpus,
            unsupervised_docs: self.unsupervised_docs,
            head: self.head,
            dim: self.dim,
            depth: self.depth,
            width_factor: self.width_factor,
            activation: self.activation,
            layer_norm: self.layer_norm,
            residual: self.residual,
            bias: self.bias,
            mode: self.mode,
            backbone_lr: self.backbone_lr,
            weight_decay: self.weight_decay,
            sched: self.sched.options(),
            teachers: self.teachers,
            distill_weight: self.distill_weight,
            distill_temperature: self.distill_temperature,
            distill_candidates: self.distill_candidates,
            markers: self.markers,
            query_augmentation: self.query_augmentation,
            init_head: self.init_head,
            start: self.start,
            l2_sp: self.l2_sp,
            raw_kl: self.raw_kl,
            zero_shot: self.zero_shot,
            select: self.select,
            select_margin: self.select_margin,
            out: self.out,
            model: self.model.options(),
            trainer: self.trainer.options(),
        }
    }
}

pub fn heads(args: HeadsArgs) -> Result<()> {
    train_heads(&args.options())?;
    Ok(())
}
