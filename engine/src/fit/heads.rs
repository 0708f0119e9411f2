//! `tessera train heads`: trains a projection head (frozen backbone, on
//! cached backbone states) or the backbone with it (`mode` full) on BEIR
//! train splits and self-supervised pairs, validating on dev splits, and
//! writes a model folder every other command accepts.
//!
//! Steps: (1) read every dataset's train and dev split and check them; (2)
//! cache the backbone states of corpus and queries (once per dataset, model
//! and ColBERT settings, under `$TESSERA_HOME/cache/states`); (3) mine hard
//! negatives for the train queries and candidate pools for the dev queries
//! with BM25 and the current model's own index (the cached evaluation index
//! of `tessera eval`); (4) train ([`tessera_training::train`]); (5) keep the
//! best head on dev, its settings and the training record in `out`.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use tessera_eval::Run;
use tessera_model::heads::blocks::Activation;
use tessera_model::heads::HeadSpec;
use tessera_model::{ColbertModel, ColbertSettings, HeadKind, TextKind};
use tessera_training::train::score::score_dev;
use tessera_training::train::select::Selection;
use tessera_training::train::{
    self, Backbone, DevLog, Example, Mode, Source, Texts, TrainConfig, Trainee,
};

use crate::corpus::CorpusOptions;
use crate::fit::data::{crops, read_texts, side};
use crate::fit::report::{draw_curves, write_model};
use crate::fit::{peak_rss_mib, pool_metrics, prepare, read_dataset, robust, Prep};
use crate::model::absolute;
use crate::progress;
use tessera_model::tch as tch_tensor;

use crate::error::{bail, ensure, err, Context, EngineError, Result};
use crate::fit::{DataOptions, ScheduleOptions, TrainerOptions};
use crate::model::ModelOptions;

/// What `tessera train heads` trains, on what, for how long, and where the
/// model folder goes (each field is the flag of the same name).
#[derive(Debug, Clone)]
pub struct HeadsOptions {
    /// Steps, batches, learning rate, seed, validation and checkpoints.
    pub trainer: TrainerOptions,
    /// A BEIR dataset folder with a train split (repeat for several).
    pub datasets: Vec<PathBuf>,
    /// The data options the trainers share.
    pub data: DataOptions,
    /// Self-supervised pairs from a dump without labels: two random spans of
    /// one document as query and positive (Contriever's cropping).
    pub unsupervised_corpus: Option<PathBuf>,
    /// Documents of --unsupervised-corpus to crop pairs from.
    pub unsupervised_docs: usize,
    /// Head architecture: identity, linear, ffn or glu.
    pub head: HeadKind,
    /// Output dimension.
    pub dim: i64,
    /// FFN: linear layers.
    pub depth: usize,
    /// FFN and GLU: hidden width as a multiple of the backbone's width.
    pub width_factor: f64,
    /// gelu, relu or silu (default: gelu for FFN, silu — SwiGLU — for GLU).
    pub activation: Option<Activation>,
    /// FFN: LayerNorm after each hidden activation.
    pub layer_norm: bool,
    /// Add a skip path (identity when widths match, a learned shortcut otherwise).
    pub residual: bool,
    /// Biases on the head's linear layers.
    pub bias: bool,
    /// frozen (cached backbone states; only the head trains) or full.
    pub mode: Mode,
    /// Learning rate of the backbone (full mode).
    pub backbone_lr: f64,
    /// AdamW's decoupled weight decay on the head's (and backbone's) weights.
    pub weight_decay: f64,
    /// The learning-rate schedule and clipping.
    pub sched: ScheduleOptions,
    /// Teacher scores for distillation: a TREC run file per --dataset, in
    /// order (scores of a larger model over each train query's candidates).
    pub teachers: Vec<PathBuf>,
    /// Weight of the distillation loss.
    pub distill_weight: f64,
    /// Temperature of the teacher's and the student's softmax over a
    /// query's candidates (distillation).
    pub distill_temperature: f64,
    /// Teacher candidates per query.
    pub distill_candidates: usize,
    /// Train with ColBERT's markers (`[unused0]` for queries, `[unused1]` for
    /// documents); recorded in the model so encoding follows.
    pub markers: bool,
    /// Pad queries with `[MASK]` to the query length and keep those outputs.
    pub query_augmentation: bool,
    /// Start from the head of this model folder or built-in model name
    /// (its head.json replaces the head options); with --steps 0, evaluate
    /// it on the dev pools.
    pub init_head: Option<PathBuf>,
    /// How a fresh head starts: random (torch's Linear init) or pca — the
    /// backbone's principal directions, learnt from no labels (a linear
    /// head's weight, or the learned shortcut of a --residual head whose
    /// branch starts at zero): a general head that training moves from.
    pub start: String,
    /// L2-SP: pull the head's weights towards where they started with this
    /// weight (Σ‖θ − θ₀‖²; 0: off).
    pub l2_sp: f64,
    /// Weight of a KL term from the backbone's own MaxSim scores (no head)
    /// to the head's, over each query's batch documents: the trained head
    /// keeps the order the backbone knew (frozen mode; 0: off).
    pub raw_kl: f64,
    /// A collection to validate on but never train on (its --dev-split
    /// against its whole corpus, exact MaxSim); repeat for several. The
    /// validations report an in-domain and a zero-shot mean.
    pub zero_shot: Vec<PathBuf>,
    /// Which validated head to keep: in-domain (best in-domain mean) or
    /// robust (best zero-shot mean among those within --select-margin of
    /// the best in-domain mean; needs --zero-shot, frozen mode).
    pub select: Selection,
    /// The robust rule's margin below the best in-domain mean (nDCG@10).
    pub select_margin: f64,
    /// The model folder to write.
    pub out: PathBuf,
    /// The model and how it runs.
    pub model: ModelOptions,
}

/// Trains a projection head (or, in full mode, the backbone with it) as
/// `args` says and writes the model folder `args.out`: data read and
/// checked, backbone states cached, negatives mined, the trainer run with
/// validation, the best head kept (see the module docs).
pub fn train_heads(args: &HeadsOptions) -> Result<()> {
    let t_all = Instant::now();
    ensure!(
        !args.datasets.is_empty() || args.unsupervised_corpus.is_some(),
        "give at least one --dataset (with a train split) or --unsupervised-corpus"
    );
    ensure!(args.dim >= 1, "--dim must be at least 1, not {}", args.dim);
    args.data.check(args.datasets.len())?;
    ensure!(
        args.teachers.len() <= args.datasets.len(),
        "--teacher given {} times for {} datasets",
        args.teachers.len(),
        args.datasets.len()
    );
    let select = match args.select {
        Selection::Robust { .. } => Selection::Robust {
            margin: args.select_margin,
        },
        rule => rule,
    };
    select.validate().map_err(EngineError::msg)?;
    if matches!(select, Selection::Robust { .. }) {
        ensure!(
            !args.zero_shot.is_empty(),
            "--select robust weighs a zero-shot mean: give --zero-shot DIR"
        );
        ensure!(
            args.mode == Mode::Frozen,
            "--select robust keeps a copy of every validated head: frozen mode only"
        );
    }
    let model_dir = args.model.model_dir()?;
    let encoder = args.model.load_dir(&model_dir)?;
    let hidden = encoder.model().bert.config().hidden_size;
    let mut spec = HeadSpec::new(args.head, hidden, args.dim);
    spec.depth = args.depth;
    spec.width_factor = args.width_factor;
    spec.activation = args.activation;
    spec.layer_norm = args.layer_norm;
    spec.residual = args.residual;
    spec.bias = args.bias;
    // --init-head: start from (or, with --steps 0, evaluate) a trained head.
    let init = match &args.init_head {
        None => None,
        Some(dir) => {
            let dir = crate::model::resolve_model(dir)?;
            let sp = dir.join("head.json");
            let loaded: HeadSpec = serde_json::from_str(
                &std::fs::read_to_string(&sp)
                    .with_context(|| format!("--init-head {}", sp.display()))?,
            )
            .with_context(|| format!("--init-head {}", sp.display()))?;
            ensure!(
                loaded.in_dim == hidden,
                "--init-head {}: the head takes {}-dim states, the backbone makes {hidden}",
                sp.display(),
                loaded.in_dim
            );
            spec = loaded;
            let wp = dir.join("head.safetensors");
            let tensors = if wp.is_file() {
                tessera_model::weights::WeightFile::read(&wp)?.tensors
            } else {
                HashMap::new()
            };
            Some(tensors)
        }
    };
    if spec.kind == HeadKind::Identity {
        ensure!(
            spec.out_dim == hidden,
            "--head identity keeps the backbone's {hidden} dims: give --dim {hidden}"
        );
    }
    if let Err(m) = spec.validate() {
        bail!(
            "head options: {}",
            m.replace("field ", "--").replace('_', "-")
        );
    }
    let cfg = TrainConfig {
        spec: spec.clone(),
        mode: args.mode,
        steps: args.trainer.steps,
        batch_size: args.trainer.batch_queries,
        negatives: args.trainer.negatives,
        positives: args.trainer.positives,
        lr: args.trainer.lr,
        backbone_lr: args.backbone_lr,
        weight_decay: args.weight_decay,
        warmup: args.sched.warmup(args.trainer.steps),
        decay: args.sched.schedule,
        clip: args.sched.clip,
        temperature: args.trainer.temperature,
        distill_weight: if args.teachers.is_empty() {
            0.0
        } else {
            args.distill_weight
        },
        distill_temperature: args.distill_temperature,
        distill_candidates: args.distill_candidates,
        l2_sp: args.l2_sp,
        raw_kl: args.raw_kl,
        seed: args.trainer.seed,
        eval_every: args.trainer.eval_every,
        checkpoint_every: args.trainer.checkpoint_every,
        data: args.data.describe(
            &args.datasets,
            serde_json::json!({
                "model": absolute(&model_dir),
                "unsupervised_corpus": args.unsupervised_corpus.as_deref().map(absolute),
                "unsupervised_docs": args.unsupervised_docs,
                "teachers": args.teachers.iter().map(|t| absolute(t)).collect::<Vec<_>>(),
                "markers": args.markers,
                "query_augmentation": args.query_augmentation,
                "init_head": args.init_head.as_deref().map(absolute),
                "start": args.start,
            }),
        ),
    };
    cfg.validate().map_err(EngineError::msg)?;
    let resume = if args.trainer.resume {
        let st = train::read_checkpoint(&args.out)?
            .with_context(|| format!("--resume: {} holds no checkpoint", args.out.display()))?;
        train::check_resumable(&args.out, &st, &cfg)?;
        Some(st)
    } else {
        if train::read_checkpoint(&args.out)?.is_some() {
            bail!(
                "{} holds a training run already: continue it with --resume, or pick another --out",
                args.out.display()
            );
        }
        None
    };
    // The settings the head trains (and will encode) with.
    let mut settings: ColbertSettings = encoder.settings().clone();
    if args.markers {
        settings.query_marker = Some("[unused0]".into());
        settings.doc_marker = Some("[unused1]".into());
    }
    if args.query_augmentation {
        settings.query_augmentation = true;
    }
    let encoder = encoder.with_settings(settings.clone())?;

    // 1. Data, checked before anything runs.
    let mut data = Vec::new();
    for d in &args.datasets {
        data.push(read_dataset(
            d,
            &args.data.train_split,
            &args.data.dev_split,
            true,
        )?);
    }
    let teachers: Vec<Run> = args
        .teachers
        .iter()
        .map(|p| Run::read(p).with_context(|| format!("--teacher {}", p.display())))
        .collect::<Result<_>>()?;

    // 2–3. States, mining, pools.
    let full = args.mode == Mode::Full;
    let (mut sources, devs) = prepare(
        &encoder,
        &data,
        &Prep {
            model: &args.model,
            model_dir: &model_dir,
            full,
            data: &args.data,
            teachers: &teachers,
        },
    )?;
    let (zs_data, zs_devs) =
        robust::zero_shot_devs(&encoder, &args.zero_shot, &args.data.dev_split, full, &data)?;
    let zero_shot: HashSet<String> = zs_data.iter().map(|d| d.name.clone()).collect();
    let mut devs = devs;
    devs.extend(zs_devs);
    if let Some(dump) = &args.unsupervised_corpus {
        let texts = read_texts(dump, &CorpusOptions::default(), args.unsupervised_docs)
            .with_context(|| format!("--unsupervised-corpus {}", dump.display()))?
            .texts;
        let pairs = crops(&texts, args.trainer.seed);
        ensure!(
            !pairs.is_empty(),
            "--unsupervised-corpus {}: no document has the 8 words two crops need",
            dump.display()
        );
        let ids: Vec<String> = (0..pairs.len()).map(|i| format!("crop{i}")).collect();
        let qa: Vec<String> = pairs.iter().map(|p| p.0.clone()).collect();
        let db: Vec<String> = pairs.iter().map(|p| p.1.clone()).collect();
        let label = format!(
            "unsup-{}",
            dump.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        );
        let queries = side(&encoder, full, &label, &ids, &qa, TextKind::Query)?;
        let docs = side(&encoder, full, &label, &ids, &db, TextKind::Document)?;
        let examples = (0..pairs.len())
            .map(|i| Example {
                query: i,
                positives: vec![i],
                ..Example::default()
            })
            .collect();
        progress::note(format!("{label}: {} self-supervised pairs", pairs.len()));
        sources.push(Source {
            name: label,
            weight: 1.0,
            queries,
            docs,
            examples,
        });
    }
    progress::note(format!(
        "training {} ({} parameters) for {} steps on {}",
        train::describe(&spec),
        tessera_model::heads::blocks::parameter_count(&spec),
        cfg.steps,
        sources
            .iter()
            .map(|s| format!("{} ({} queries)", s.name, s.examples.len()))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // 4. Train.
    let device = encoder.device();
    let mut full_model = None;
    if full {
        let mut m = ColbertModel::load(&model_dir, device)?;
        m.vs.unfreeze();
        // bf16 autocast on CUDA; f32 on CPU, where emulated bf16 is slower.
        if device.is_cuda() {
            m.bert.set_training_bf16(true);
        }
        full_model = Some(m);
    }
    let backbone = full_model.as_ref().map(|m| {
        let mut variables: Vec<(String, tch_tensor::Tensor)> =
            m.vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        Backbone {
            bert: &m.bert,
            variables,
            tokenizer: encoder.tokenizer(),
        }
    });
    let mut head = tessera_model::heads::blocks::init(&spec, device, args.trainer.seed as i64);
    // Fitted on resume too: L2-SP pulls towards this start (the checkpoint
    // then replaces the weights).
    if args.start == "pca" {
        let cached: Vec<&tessera_training::states::StateCache> = sources
            .iter()
            .filter_map(|s| match &s.docs {
                Texts::Cached(c) => Some(c.as_ref()),
                Texts::Tokens(_) => None,
            })
            .collect();
        ensure!(
            !cached.is_empty(),
            "--start pca fits the backbone's states: frozen mode only"
        );
        let p = robust::principal_projection(&cached, spec.out_dim)?;
        tessera_model::heads::start::start_at_projection(&spec, &mut head, &p)
            .map_err(|m| err!("--start pca: {m}"))?;
    }
    if let Some(mut tensors) = init {
        for (name, shape) in tessera_model::heads::blocks::parameter_shapes(&spec) {
            let t = tensors
                .remove(&name)
                .with_context(|| format!("--init-head: head.safetensors lacks tensor {name}"))?;
            ensure!(
                t.size() == shape,
                "--init-head: tensor {name} has shape {:?}, expected {shape:?}",
                t.size()
            );
            head.insert(name, t.to_kind(tch_tensor::Kind::Float).to_device(device));
        }
    }
    let start = (args.l2_sp > 0.0).then(|| {
        head.iter()
            .map(|(n, t)| (n.clone(), t.detach().copy()))
            .collect::<HashMap<_, _>>()
    });
    for t in head.values_mut() {
        *t = t.set_requires_grad(true);
    }
    let trainee = Trainee {
        spec: spec.clone(),
        head,
        start,
        backbone,
        device,
    };
    let out = args.out.clone();
    std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
    let backbone_ref = tessera_model::checkpoint::backbone_dir(&absolute(&model_dir))?;
    let keep_validated = matches!(select, Selection::Robust { .. });
    let mut validate = |t: &Trainee<'_>, step: usize| -> tessera_training::Result<Option<DevLog>> {
        if devs.is_empty() {
            return Ok(None);
        }
        let t0 = Instant::now();
        let mut per = Vec::new();
        for (dev, qrels) in &devs {
            let of = if zero_shot.contains(&dev.name) {
                &zs_data
            } else {
                &data
            };
            let (ndcg, recall) = pool_metrics(of, &dev.name, &dev.items, score_dev(t, dev), qrels);
            per.push((dev.name.clone(), ndcg, recall));
        }
        if keep_validated {
            write_model(
                &robust::validated_dir(&out, step),
                t,
                &settings,
                &backbone_ref,
                hidden,
            )?;
        }
        let mean_of = |zs: bool| {
            let v: Vec<f64> = per
                .iter()
                .filter(|p| zero_shot.contains(&p.0) == zs)
                .map(|p| p.1)
                .collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        };
        let (in_domain, zs_mean) = (mean_of(false), mean_of(true));
        Ok(Some(DevLog {
            step: 0,
            ndcg10: in_domain.or(zs_mean).unwrap_or(0.0),
            in_domain,
            zero_shot: zs_mean,
            per_source: per,
            seconds: t0.elapsed().as_secs_f64(),
        }))
    };
    let pb = progress::bar(Some(cfg.steps as u64), "steps");
    pb.set_prefix(format!("training {}", train::describe(&spec)));
    if let Some(r) = &resume {
        pb.set_position(r.step as u64);
    }
    let mut last_dev = String::from("-");
    let mut on_step = |s: &train::StepLog, d: Option<&DevLog>| {
        if let Some(d) = d {
            last_dev = format!("{:.4}", d.ndcg10);
            tracing::info!(step = s.step, ndcg10 = d.ndcg10, "dev");
            progress::note(format!(
                "step {}: loss {:.4}, dev nDCG@10 {:.4}{} ({})",
                s.step,
                s.loss,
                d.ndcg10,
                d.zero_shot
                    .map(|z| format!(", zero-shot {z:.4}"))
                    .unwrap_or_default(),
                d.per_source
                    .iter()
                    .map(|p| format!("{} {:.4}/R@100 {:.4}", p.0, p.1, p.2))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        pb.set_message(format!("loss {:.4} dev {last_dev}", s.loss));
        pb.inc(1);
    };
    let mut on_best = |t: &Trainee<'_>, _d: Option<&DevLog>| -> tessera_training::Result<()> {
        write_model(&out, t, &settings, &backbone_ref, hidden)
    };
    let summary = train::train(
        &cfg,
        &sources,
        trainee,
        &out,
        resume,
        train::Hooks {
            validate: &mut validate,
            on_step: &mut on_step,
            on_best: &mut on_best,
        },
    )?;
    pb.finish_and_clear();
    // The robust rule looks back over every validation: its pick replaces
    // the in-domain best written during training.
    let kept = match select.choose(&summary.dev) {
        Some(i) if keep_validated => {
            let d = summary.dev[i].clone();
            robust::restore_validated(&out, d.step)?;
            Some(d)
        }
        _ => summary.best.clone(),
    };

    // 5. Record and draw.
    let record = serde_json::json!({
        "tessera": env!("CARGO_PKG_VERSION"),
        "command": std::env::args().collect::<Vec<_>>(),
        "config": cfg,
        "head": train::describe(&spec),
        "parameters": summary.parameters,
        "settings": settings,
        "datasets": data.iter().map(|d| d.dir.display().to_string()).collect::<Vec<_>>(),
        "unsupervised_corpus": args.unsupervised_corpus,
        "best": kept,
        "selection": select,
        "zero_shot": zs_data.iter().map(|d| d.dir.display().to_string()).collect::<Vec<_>>(),
        "final_dev": summary.dev.last(),
        "train_seconds": summary.train_seconds,
        "steps_per_s": summary.steps.len() as f64 / summary.train_seconds.max(1e-9),
        "pairs_per_s": summary.pairs_per_s,
        "total_seconds": t_all.elapsed().as_secs_f64(),
        "peak_rss_mib": peak_rss_mib(),
    });
    let rp = out.join("training.json");
    std::fs::write(&rp, serde_json::to_vec_pretty(&record)?)
        .with_context(|| rp.display().to_string())?;
    draw_curves(&out, &summary);
    match &kept {
        Some(b) => progress::note(format!(
            "{} dev nDCG@10 {:.4}{} at step {} ({}); model written to {}",
            match select {
                Selection::InDomain => "best",
                Selection::Robust { .. } => "kept by the robust rule:",
            },
            b.ndcg10,
            b.zero_shot
                .map(|z| format!(", zero-shot {z:.4}"))
                .unwrap_or_default(),
            b.step,
            b.per_source
                .iter()
                .map(|p| format!("{} {:.4}", p.0, p.1))
                .collect::<Vec<_>>()
                .join(", "),
            out.display()
        )),
        None => progress::note(format!("model written to {}", out.display())),
    }
    Ok(())
}
