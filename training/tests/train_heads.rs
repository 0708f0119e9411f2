//! Training heads end to end on the tiny BERT: every head kind learns (the
//! loss goes down), the saved head reloads bit-exactly, the same seed gives
//! the same weights, a resumed run equals an uninterrupted one, a checkpoint
//! of another spec is refused, and full mode moves the backbone.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tessera_model::heads::{blocks, HeadSpec};
use tessera_model::tch::{Device, Tensor};
use tessera_model::{
    ColbertModel, DeviceChoice, Encoder, EncoderOptions, HeadKind, ProjectionHead, TextKind,
};
use tessera_training::states::{StateCache, StatesWriter};
use tessera_training::train::{
    self, score, Backbone, DevLog, Example, Hooks, Mode, Source, Texts, TrainConfig, Trainee,
};

use common::tiny;

fn encoder() -> Encoder {
    Encoder::load(
        &tiny(),
        EncoderOptions {
            device: DeviceChoice::Cpu,
            batch_size: 8,
            precision: tessera_model::PrecisionChoice::Fp32,
        },
    )
    .unwrap()
}

/// Twelve topics; the query of topic i shares its words with document i.
fn corpus() -> (Vec<String>, Vec<String>) {
    let words = [
        "moon tides ocean",
        "volcano lava magma",
        "piano music chords",
        "bread flour yeast",
        "river delta water",
        "comet orbit sun",
        "violin strings bow",
        "cheese milk cows",
        "desert sand dunes",
        "planet rings gas",
        "garden roses soil",
        "engine fuel pistons",
    ];
    let docs = words
        .iter()
        .map(|w| format!("{w} are discussed here with {w} again"))
        .collect();
    let queries = words.iter().map(|w| format!("about {w}")).collect();
    (queries, docs)
}

fn cache(enc: &Encoder, dir: &Path, texts: &[String], kind: TextKind) -> Arc<StateCache> {
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let tok = enc.tokenize(&refs, kind).unwrap();
    let out = enc.backbone_states(&tok, kind, &mut |_| {}).unwrap();
    let mut w = StatesWriter::create(dir, enc.model().bert.config().hidden_size as usize).unwrap();
    for (i, item) in out.items.iter().enumerate() {
        w.push(&format!("t{i}"), item.vectors.as_slice()).unwrap();
    }
    Arc::new(w.finish(serde_json::json!({}), 0.0).unwrap())
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    queries: Arc<StateCache>,
    docs: Arc<StateCache>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let enc = encoder();
    let (q, d) = corpus();
    Fixture {
        queries: cache(&enc, &root.join("q"), &q, TextKind::Query),
        docs: cache(&enc, &root.join("d"), &d, TextKind::Document),
        _dir: dir,
        root,
    }
}

fn examples() -> Vec<Example> {
    (0..12)
        .map(|i| Example {
            query: i,
            positives: vec![i],
            negatives: vec![(i + 1) % 12, (i + 5) % 12],
            teacher: Vec::new(),
        })
        .collect()
}

fn source(f: &Fixture) -> Source {
    Source {
        name: "toy".into(),
        weight: 1.0,
        queries: Texts::Cached(f.queries.clone()),
        docs: Texts::Cached(f.docs.clone()),
        examples: examples(),
    }
}

fn config(spec: HeadSpec, steps: usize) -> TrainConfig {
    TrainConfig {
        spec,
        mode: Mode::Frozen,
        steps,
        batch_size: 6,
        negatives: 1,
        positives: 1,
        lr: 5e-3,
        backbone_lr: 1e-4,
        weight_decay: 0.01,
        warmup: 2,
        decay: train::optim::Decay::Linear,
        clip: 1.0,
        temperature: 0.2,
        distill_weight: 0.0,
        distill_temperature: 1.0,
        distill_candidates: 4,
        l2_sp: 0.0,
        raw_kl: 0.0,
        seed: 7,
        eval_every: 0,
        checkpoint_every: 5,
        data: serde_json::json!({"datasets": ["fixture"], "mine_depth": 30, "init_head": null}),
    }
}

fn trainee(spec: &HeadSpec, seed: i64) -> Trainee<'static> {
    let mut head = blocks::init(spec, Device::Cpu, seed);
    for t in head.values_mut() {
        *t = t.set_requires_grad(true);
    }
    Trainee {
        spec: spec.clone(),
        head,
        start: None,
        backbone: None,
        device: Device::Cpu,
    }
}

/// Trains; returns the losses and the head tensors at the end.
fn run(
    cfg: &TrainConfig,
    sources: &[Source],
    t: Trainee<'_>,
    out: &Path,
    resume: Option<train::CheckpointState>,
) -> (Vec<f64>, Vec<(String, Tensor)>) {
    let mut kept = Vec::new();
    let mut validate =
        |_: &Trainee<'_>, _: usize| -> tessera_training::Result<Option<DevLog>> { Ok(None) };
    let mut on_step = |_: &train::StepLog, _: Option<&DevLog>| {};
    let mut on_best = |t: &Trainee<'_>, _: Option<&DevLog>| -> tessera_training::Result<()> {
        kept = t.head_tensors();
        Ok(())
    };
    let s = train::train(
        cfg,
        sources,
        t,
        out,
        resume,
        Hooks {
            validate: &mut validate,
            on_step: &mut on_step,
            on_best: &mut on_best,
        },
    )
    .unwrap();
    (s.steps.iter().map(|l| l.loss).collect(), kept)
}

/// Squared distance of head tensors from a start.
fn distance(head: &[(String, Tensor)], start: &HashMap<String, Tensor>) -> f64 {
    head.iter()
        .map(|(n, t)| {
            f64::try_from(
                (t - &start[n])
                    .square()
                    .sum(tessera_model::tch::Kind::Float),
            )
            .unwrap()
        })
        .sum()
}

#[test]
fn anchors_keep_a_head_near_its_start_and_near_the_backbone() {
    let f = fixture();
    let sources = vec![source(&f)];
    let mut spec = HeadSpec::new(HeadKind::Glu, 32, 16);
    spec.residual = true;
    let start = blocks::init(&spec, Device::Cpu, 3);
    let fresh = |start: &HashMap<String, Tensor>| Trainee {
        head: start
            .iter()
            .map(|(n, t)| (n.clone(), t.copy().set_requires_grad(true)))
            .collect(),
        start: Some(start.iter().map(|(n, t)| (n.clone(), t.copy())).collect()),
        ..trainee(&spec, 0)
    };
    let plain = config(spec.clone(), 12);
    let (_, free) = run(&plain, &sources, fresh(&start), &f.root.join("free"), None);
    let pulled_cfg = TrainConfig {
        l2_sp: 10.0,
        raw_kl: 0.5,
        ..plain.clone()
    };
    let (losses, pulled) = run(
        &pulled_cfg,
        &sources,
        fresh(&start),
        &f.root.join("pulled"),
        None,
    );
    assert!(losses.iter().all(|l| l.is_finite()));
    // The L2-SP pull keeps the weights nearer where they started.
    let (d_free, d_pulled) = (distance(&free, &start), distance(&pulled, &start));
    assert!(
        d_pulled < 0.5 * d_free,
        "pulled {d_pulled} vs free {d_free}"
    );
    // The anchor terms are logged, and only when they are on.
    let logs = std::fs::read_to_string(f.root.join("pulled/metrics.jsonl")).unwrap();
    assert!(
        logs.contains("\"anchor\":") && !logs.contains("\"anchor\":0.0,"),
        "{logs}"
    );
    let logs = std::fs::read_to_string(f.root.join("free/metrics.jsonl")).unwrap();
    assert!(logs.contains("\"anchor\":0.0"));
    // The raw-backbone teacher needs frozen states.
    let full = TrainConfig {
        mode: Mode::Full,
        ..pulled_cfg
    };
    assert!(full.validate().unwrap_err().contains("--raw-kl"));
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

fn specs() -> Vec<HeadSpec> {
    let mut out = Vec::new();
    let d = 32; // the tiny BERT's width
    out.push(HeadSpec::new(HeadKind::Linear, d, 16));
    out.push(HeadSpec::new(HeadKind::Ffn, d, 16));
    out.push(HeadSpec::new(HeadKind::Glu, d, 16));
    let mut r = HeadSpec::new(HeadKind::Ffn, d, 16);
    r.residual = true;
    r.layer_norm = true;
    out.push(r);
    let mut r = HeadSpec::new(HeadKind::Glu, d, d);
    r.residual = true;
    out.push(r);
    out
}

#[test]
fn every_head_learns_and_round_trips_bit_exactly() {
    let f = fixture();
    let sources = [source(&f)];
    for spec in specs() {
        let name = train::describe(&spec);
        let out = f.root.join(&name);
        let cfg = config(spec.clone(), 40);
        let (losses, kept) = run(&cfg, &sources, trainee(&spec, 3), &out, None);
        let (first, last) = (mean(&losses[..5]), mean(&losses[35..]));
        assert!(last < first * 0.8, "{name}: loss {first:.4} → {last:.4}");
        // Save → load reproduces the vectors exactly.
        let params: HashMap<String, Tensor> = kept.into_iter().collect();
        let t = Trainee {
            head: params
                .iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect(),
            ..trainee(&spec, 0)
        };
        let head = ProjectionHead::from_spec(spec.clone(), params, &out).unwrap();
        let model = out.join("model");
        std::fs::create_dir_all(&model).unwrap();
        head.save_tessera(&model, 32).unwrap();
        let loaded = ProjectionHead::load_tessera(&model, 32).unwrap();
        let (x, _) = f.docs.batch(&[0, 1, 2], Device::Cpu);
        let want = blocks::forward(&spec, &t.head, &x);
        assert!(
            loaded.forward(&x).equal(&want),
            "{name}: reloaded head differs"
        );
        // Scoring the pools ranks each query's own document first.
        let dev = score::DevSet {
            name: "toy".into(),
            queries: Texts::Cached(f.queries.clone()),
            docs: Texts::Cached(f.docs.clone()),
            items: (0..12).map(|i| (i, (0..12).collect())).collect(),
        };
        // Mean reciprocal rank of each query's own document.
        let mrr = |t: &Trainee<'_>| {
            let scored = score::score_dev(t, &dev);
            scored
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let own = s[i].1;
                    1.0 / (1 + s.iter().filter(|x| x.1 > own).count()) as f64
                })
                .sum::<f64>()
                / 12.0
        };
        let (before, after) = (mrr(&trainee(&spec, 3)), mrr(&t));
        eprintln!("{name}: MRR {before:.3} untrained, {after:.3} trained");
        assert!(
            after > before || after > 0.99,
            "{name}: MRR {before:.3} untrained, {after:.3} trained"
        );
    }
}

#[test]
fn same_seed_same_weights_and_resume_equals_an_uninterrupted_run() {
    let f = fixture();
    let sources = [source(&f)];
    let spec = HeadSpec::new(HeadKind::Ffn, 32, 16);
    let cfg = config(spec.clone(), 10);
    let (_, a) = run(&cfg, &sources, trainee(&spec, 3), &f.root.join("a"), None);
    let (_, b) = run(&cfg, &sources, trainee(&spec, 3), &f.root.join("b"), None);
    for ((n, x), (_, y)) in a.iter().zip(&b) {
        assert!(x.equal(y), "{n} differs between two runs with one seed");
    }
    // Interrupted after the step-5 checkpoint, then resumed: the same
    // weights as the uninterrupted run (the head's initial values, here
    // of another seed, are replaced by the checkpoint's).
    let out = f.root.join("c");
    interrupt_at_step_6(&cfg, &sources, trainee(&spec, 3), &out);
    let st = train::read_checkpoint(&out).unwrap().unwrap();
    assert_eq!(st.step, 5);
    let (losses, c) = run(&cfg, &sources, trainee(&spec, 42), &out, Some(st));
    assert_eq!(losses.len(), 10, "the log continues from the checkpoint");
    let lines = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 10);
    for ((n, x), (_, y)) in a.iter().zip(&c) {
        assert!(
            x.equal(y),
            "{n}: resumed run differs from the uninterrupted one"
        );
    }
    // A checkpoint of another head spec is refused, naming the file.
    let other = config(HeadSpec::new(HeadKind::Glu, 32, 16), 10);
    let st = train::read_checkpoint(&out).unwrap().unwrap();
    let err = train::check_resumable(&out, &st, &other)
        .unwrap_err()
        .to_string();
    assert!(err.contains("state.json") && err.contains("glu"), "{err}");
    // So is one of other settings or data, naming each that differs; a
    // longer run (and its derived warm-up) or other validation cadence is not.
    let other = TrainConfig {
        lr: 1e-2,
        data: serde_json::json!({"datasets": ["fixture"], "mine_depth": 10, "init_head": "h"}),
        ..cfg.clone()
    };
    let err = train::check_resumable(&out, &st, &other)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("state.json")
            && err.contains("lr: 0.005 → 0.01")
            && err.contains("data.mine_depth: 30 → 10")
            && err.contains("data.init_head: null → \"h\""),
        "{err}"
    );
    let longer = TrainConfig {
        steps: 20,
        warmup: 4,
        eval_every: 5,
        checkpoint_every: 10,
        ..cfg.clone()
    };
    train::check_resumable(&out, &st, &longer).unwrap();
}

/// Runs `cfg` but fails (as if killed) at step 6, after the checkpoint of
/// step 5 (`cfg.checkpoint_every` is 5).
fn interrupt_at_step_6(cfg: &TrainConfig, sources: &[Source], t: Trainee<'_>, out: &Path) {
    let stopper = TrainConfig {
        eval_every: 6,
        ..cfg.clone()
    };
    let mut fail = |_: &Trainee<'_>, _: usize| -> tessera_training::Result<Option<DevLog>> {
        Err(tessera_training::TrainingError::InvalidInput(
            "interrupted".into(),
        ))
    };
    let mut on_step = |_: &train::StepLog, _: Option<&DevLog>| {};
    let mut on_best =
        |_: &Trainee<'_>, _: Option<&DevLog>| -> tessera_training::Result<()> { Ok(()) };
    let r = train::train(
        &stopper,
        sources,
        t,
        out,
        None,
        Hooks {
            validate: &mut fail,
            on_step: &mut on_step,
            on_best: &mut on_best,
        },
    );
    assert!(r.is_err(), "the run was to stop at step 6");
}

#[test]
fn full_mode_fine_tunes_the_backbone() {
    let enc = encoder();
    let model = ColbertModel::load(&tiny(), Device::Cpu).unwrap();
    let mut vs_model = model;
    vs_model.vs.unfreeze();
    let mut variables: Vec<(String, Tensor)> = vs_model.vs.variables().into_iter().collect();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    let before: Vec<Tensor> = variables.iter().map(|(_, t)| t.detach().copy()).collect();
    let (q, d) = corpus();
    let qr: Vec<&str> = q.iter().map(String::as_str).collect();
    let dr: Vec<&str> = d.iter().map(String::as_str).collect();
    let sources = [Source {
        name: "toy".into(),
        weight: 1.0,
        queries: Texts::Tokens(Arc::new(enc.tokenize(&qr, TextKind::Query).unwrap())),
        docs: Texts::Tokens(Arc::new(enc.tokenize(&dr, TextKind::Document).unwrap())),
        examples: examples(),
    }];
    let spec = HeadSpec::new(HeadKind::Linear, 32, 16);
    let mut cfg = config(spec.clone(), 6);
    cfg.mode = Mode::Full;
    let mut t = trainee(&spec, 1);
    t.backbone = Some(Backbone {
        bert: &vs_model.bert,
        variables: variables
            .iter()
            .map(|(n, v)| (n.clone(), v.shallow_clone()))
            .collect(),
        tokenizer: enc.tokenizer(),
    });
    let dir = tempfile::tempdir().unwrap();
    let (losses, _) = run(&cfg, &sources, t, dir.path(), None);
    assert!(losses.iter().all(|l| l.is_finite()));
    let moved = variables
        .iter()
        .zip(&before)
        .filter(|((_, now), was)| !now.detach().equal(was))
        .count();
    assert!(
        moved > variables.len() / 2,
        "only {moved} of {} backbone tensors changed",
        variables.len()
    );
    assert!(dir.path().join("checkpoint/backbone.safetensors").is_file());
}

#[test]
fn pylate_export_reloads_to_the_same_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let mut ffn = HeadSpec::new(HeadKind::Ffn, 32, 16);
    ffn.bias = true;
    ffn.depth = 3;
    let mut linear_res = HeadSpec::new(HeadKind::Linear, 32, 16);
    linear_res.residual = true;
    let mut glu = HeadSpec::new(HeadKind::Glu, 32, 16);
    glu.residual = true;
    for (i, spec) in [ffn, linear_res, HeadSpec::new(HeadKind::Linear, 32, 8), glu]
        .into_iter()
        .enumerate()
    {
        let src = dir.path().join(format!("src{i}"));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(
            src.join("tessera.json"),
            serde_json::json!({"backbone": tiny()}).to_string(),
        )
        .unwrap();
        let params = blocks::init(&spec, Device::Cpu, 5);
        ProjectionHead::from_spec(spec.clone(), params, &src)
            .unwrap()
            .save_tessera(&src, 32)
            .unwrap();
        let out = dir.path().join(format!("pylate{i}"));
        let r = tessera_model::export::export_pylate(&src, &out);
        if spec.kind == HeadKind::Glu {
            let e = r.unwrap_err().to_string();
            assert!(e.contains("head.json") && e.contains("GLU"), "{e}");
            continue;
        }
        r.unwrap();
        let opts = EncoderOptions {
            device: DeviceChoice::Cpu,
            batch_size: 4,
            precision: tessera_model::PrecisionChoice::Fp32,
        };
        let a = Encoder::load(&src, opts).unwrap();
        let b = Encoder::load(&out, opts).unwrap();
        assert_eq!(b.layout(), tessera_model::CheckpointLayout::PyLate);
        let texts = [
            "what causes tides",
            "the moon pulls the sea, and the sea rises.",
        ];
        for kind in [TextKind::Query, TextKind::Document] {
            let x = a.encode(&texts, kind, &mut |_| {}).unwrap();
            let y = b.encode(&texts, kind, &mut |_| {}).unwrap();
            for (p, q) in x.items.iter().zip(&y.items) {
                let diff = p
                    .vectors
                    .as_slice()
                    .iter()
                    .zip(q.vectors.as_slice())
                    .map(|(u, v)| (u - v).abs())
                    .fold(0f32, f32::max);
                assert!(
                    diff < 1e-6,
                    "{}: exported vectors differ by {diff}",
                    train::describe(&spec)
                );
            }
        }
    }
}

#[test]
fn bf16_autocast_training_stays_close_to_f32_and_reaches_the_f32_weights() {
    let mut m = ColbertModel::load(&tiny(), Device::Cpu).unwrap();
    m.vs.unfreeze();
    let ids = Tensor::from_slice(&[2i64, 7, 9, 3]).view([1, 4]);
    let mask = ids.ones_like();
    let f32_out = m.bert.forward(&ids, &mask).detach();
    m.bert.set_training_bf16(true);
    let out = m.bert.forward(&ids, &mask);
    assert_eq!(out.kind(), tessera_model::tch::Kind::Float);
    let diff = (&out - &f32_out).abs().max().double_value(&[]);
    assert!(diff < 0.1, "bf16 autocast differs from f32 by {diff}");
    out.sum(tessera_model::tch::Kind::Float).backward();
    let vars = m.vs.variables();
    let w = &vars["encoder.layer.0.intermediate.dense.weight"];
    assert_eq!(w.kind(), tessera_model::tch::Kind::Float);
    assert!(
        w.grad().defined()
            && w.grad()
                .abs()
                .sum(tessera_model::tch::Kind::Float)
                .double_value(&[])
                > 0.0
    );
}
