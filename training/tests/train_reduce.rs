//! Training an orthogonal (MatryoshkaKV) reduction on synthetic token
//! vectors: U stays orthogonal through training, the prefixes are nested,
//! the distillation loss falls below the PCA start, the same seed gives
//! the same basis, and a resumed run ends where an uninterrupted one does;
//! a reduction centring queries and documents differently trains with that
//! centring and records it.

use std::collections::HashMap;
use std::path::Path;

use tessera_model::reduction::{Centring, Method, Reduction, Side};
use tessera_model::tch::{Device, Kind, Tensor};
use tessera_training::reduce::train::{
    check_resumable, read_checkpoint, train, DimScore, ReduceCheckpoint, ReduceConfig, ReduceDev,
    ReduceHooks, VectorSource,
};
use tessera_training::reduce::{pca, Covariance};
use tessera_training::train::loss;
use tessera_training::train::optim::Decay;
use tessera_training::train::score::Projected;
use tessera_training::train::Example;

const K: i64 = 16;

/// libtorch's random generator is global: the tests of this file take
/// turns, so each run sees the same random stream whatever runs beside it.
static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `n` texts of `len` unit vectors each: document `i`'s tokens around a
/// topic direction, its query a noisy subset of them.
fn data(seed: i64) -> (Projected, Projected, Vec<Example>) {
    tessera_model::tch::manual_seed(seed);
    let n = 24;
    let topics = Tensor::randn([n, K], (Kind::Float, Device::Cpu));
    // Anisotropic noise: most variance in few directions, so PCA at r = 4
    // keeps the noise and loses topic detail.
    let scale = Tensor::from_slice(&[
        3.0f32, 2.5, 2.0, 1.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5,
    ]);
    let mk = |len: i64, noise: f64| {
        let mut parts = Vec::new();
        let mut spans = HashMap::new();
        for i in 0..n {
            let t = topics.get(i).unsqueeze(0);
            let v = &t + Tensor::randn([len, K], (Kind::Float, Device::Cpu)) * &scale * noise;
            parts.push(loss::normalise(&v));
            spans.insert(i as usize, (i * len, len));
        }
        parts.push(Tensor::zeros([1, K], (Kind::Float, Device::Cpu)));
        Projected {
            vectors: Tensor::cat(&parts, 0),
            spans,
        }
    };
    let docs = mk(6, 0.6);
    let queries = mk(3, 0.6);
    let examples = (0..n as usize)
        .map(|i| Example {
            query: i,
            positives: vec![i],
            negatives: (0..n as usize).filter(|&j| j != i).take(4).collect(),
            teacher: Vec::new(),
        })
        .collect();
    (queries, docs, examples)
}

fn config(steps: usize) -> ReduceConfig {
    ReduceConfig {
        in_dim: K as usize,
        dims: vec![2, 4, 8],
        steps,
        batch_size: 8,
        negatives: 2,
        positives: 1,
        lr: 0.01,
        warmup: 2,
        // Constant after warm-up: a 20-step run is the first half of a
        // 40-step one, so resuming it must end where the 40-step run does.
        decay: Decay::Constant,
        clip: 1.0,
        distill_temperature: 0.5,
        contrastive_weight: 0.0,
        temperature: 1.0,
        seed: 7,
        eval_every: 10,
        checkpoint_every: 10,
        relative: false,
        free: false,
        centring: Centring::default(),
        data: serde_json::json!({"datasets": ["fixture"], "pseudo_queries": 0}),
    }
}

/// KL of the reduced scores from the full ones over every query × doc, per r.
fn kl_per_dim(red: &Reduction, q: &Projected, d: &Projected, dims: &[usize]) -> Vec<f64> {
    let items: Vec<usize> = (0..24).collect();
    let (qv, qm) = q.batch(&items);
    let (dv, dm) = d.batch(&items);
    let teacher = loss::maxsim(&qv, &qm, &dv, &dm);
    let valid = Tensor::ones([24, 24], (Kind::Bool, Device::Cpu));
    dims.iter()
        .map(|&r| {
            let (qr, dr) = (
                red.apply(&qv, r, Side::Query),
                red.apply(&dv, r, Side::Document),
            );
            let s = loss::maxsim(&qr, &qm, &dr, &dm);
            f64::try_from(loss::kl_distill(&s, &teacher, &valid, 0.5)).unwrap()
        })
        .collect()
}

struct Run {
    best: Option<Reduction>,
    initial_kl: Vec<f64>,
    best_kl: f64,
    orthogonality: f64,
    summary_steps: usize,
}

fn run(cfg: &ReduceConfig, out: &Path, resume: bool) -> Run {
    run_on(cfg, out, resume, data(1))
}

fn run_on(
    cfg: &ReduceConfig,
    out: &Path,
    resume: bool,
    (queries, docs, examples): (Projected, Projected, Vec<Example>),
) -> Run {
    let mut cov = Covariance::new(K as usize);
    cov.push(&docs.vectors.narrow(0, 0, docs.vectors.size()[0] - 1));
    let mut init = pca(&cov, cfg.dims.clone()).unwrap();
    init.meta.centring = cfg.centring;
    let initial_kl = kl_per_dim(&init, &queries, &docs, &cfg.dims);
    let src = VectorSource {
        name: "toy".into(),
        weight: 1.0,
        queries: queries.map(|t| t.shallow_clone()),
        docs: docs.map(|t| t.shallow_clone()),
        examples,
    };
    let dims = cfg.dims.clone();
    let mut validate = |red: &Reduction| -> tessera_training::Result<Option<ReduceDev>> {
        let kl = kl_per_dim(red, &queries, &docs, &dims);
        Ok(Some(ReduceDev {
            step: 0,
            // Higher is better: minus the mean KL.
            ndcg10: -kl.iter().sum::<f64>() / kl.len() as f64,
            per_dim: dims
                .iter()
                .zip(&kl)
                .map(|(&dim, &k)| DimScore {
                    dim,
                    ndcg10: -k,
                    per_source: Vec::new(),
                })
                .collect(),
            seconds: 0.0,
        }))
    };
    let mut best = None;
    let mut on_best = |r: &Reduction, _: Option<&ReduceDev>| -> tessera_training::Result<()> {
        best = Some(r.clone());
        Ok(())
    };
    let resume = if resume {
        read_checkpoint(out).unwrap()
    } else {
        None
    };
    let s = train(
        cfg,
        &[src],
        &init,
        out,
        resume,
        ReduceHooks {
            validate: &mut validate,
            on_step: &mut |_, _| {},
            on_best: &mut on_best,
        },
    )
    .unwrap();
    Run {
        best_kl: -s.best.as_ref().unwrap().ndcg10,
        orthogonality: s
            .steps
            .iter()
            .map(|st| st.orthogonality)
            .fold(0.0, f64::max),
        summary_steps: s.steps.len(),
        best,
        initial_kl,
    }
}

/// Prefixes nested: the 2-dim output is the renormalised first half of
/// the 4-dim one before normalisation.
fn assert_nested(red: &Reduction) {
    let v = Tensor::randn([5, K], (Kind::Float, Device::Cpu));
    let mean = Tensor::from_slice(&red.mean);
    let u = Tensor::from_slice(&red.basis).view([K, K]);
    let raw4 = (&v - &mean).matmul(&u.narrow(1, 0, 4));
    let want = loss::normalise(&raw4.narrow(1, 0, 2));
    let got = red.apply(&v, 2, Side::Document);
    assert!(f64::try_from((got - want).abs().max()).unwrap() < 1e-6);
}

#[test]
fn orthogonal_reduction_trains_stays_orthogonal_and_resumes_exactly() {
    let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(40);
    let a = run(&cfg, &dir.path().join("a"), false);
    assert_eq!(a.summary_steps, 40);
    // U orthogonal at every step (f64 Cayley: far inside 1e-5) and in the
    // stored f32 basis.
    assert!(a.orthogonality <= 1e-5, "{}", a.orthogonality);
    let best = a.best.unwrap();
    assert!(best.orthogonality_error() <= 1e-5);
    // The distillation objective improves on the PCA start.
    let start = a.initial_kl.iter().sum::<f64>() / a.initial_kl.len() as f64;
    assert!(a.best_kl < start * 0.95, "KL {} vs PCA {start}", a.best_kl);
    assert_nested(&best);

    // Same seed, same data: same basis.
    let b = run(&cfg, &dir.path().join("b"), false);
    assert_eq!(b.best.unwrap().basis, best.basis);

    // 20 steps, then resume to 40: the same final checkpoint as 40 at once.
    let c_dir = dir.path().join("c");
    run(&config(20), &c_dir, false);
    let c = run(&cfg, &c_dir, true);
    assert_eq!(c.summary_steps, 40);
    let end = |d: &Path| {
        tessera_model::weights::WeightFile::read(&d.join("checkpoint/params.safetensors"))
            .unwrap()
            .tensors
    };
    let (ea, ec) = (end(&dir.path().join("a")), end(&c_dir));
    for name in ["x", "mean"] {
        assert!(ea[name].equal(&ec[name]), "{name} differs after resume");
    }
    // A checkpoint is not resumed with other training data or settings:
    // the error names the file and each difference.
    let st = read_checkpoint(&c_dir).unwrap().unwrap();
    let other = ReduceConfig {
        distill_temperature: 2.0,
        data: serde_json::json!({"datasets": ["fixture"], "pseudo_queries": 5000}),
        ..cfg.clone()
    };
    let err = check_resumable(&c_dir, &st, &other)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("state.json")
            && err.contains("distill_temperature: 0.5 → 2.0")
            && err.contains("data.pseudo_queries: 0 → 5000"),
        "{err}"
    );
    // One written before the data was recorded resumes whatever it is.
    let older = ReduceCheckpoint {
        config: ReduceConfig {
            data: serde_json::Value::Null,
            ..st.config.clone()
        },
        ..st
    };
    check_resumable(&c_dir, &older, &other.clone()).unwrap_err();
    check_resumable(
        &c_dir,
        &older,
        &ReduceConfig {
            data: other.data.clone(),
            ..cfg.clone()
        },
    )
    .unwrap();
}

#[test]
fn linear_reduction_trains_a_free_matrix_that_loads_as_linear() {
    // `--method linear`: U itself is trained from the PCA basis, so it
    // leaves orthogonality, improves the objective, keeps nested prefixes,
    // and is stored and loaded as `linear` (loading skips the
    // orthogonality check for that method only).
    let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let cfg = ReduceConfig {
        free: true,
        ..config(40)
    };
    let a = run(&cfg, &dir.path().join("a"), false);
    let best = a.best.unwrap();
    assert_eq!(best.meta.method, Method::Linear);
    assert!(a.orthogonality > 1e-3, "{}", a.orthogonality);
    let start = a.initial_kl.iter().sum::<f64>() / a.initial_kl.len() as f64;
    assert!(a.best_kl < start * 0.95, "KL {} vs PCA {start}", a.best_kl);
    assert_nested(&best);
    let saved = dir.path().join("saved");
    best.save(&saved).unwrap();
    let back = Reduction::load(&saved).unwrap();
    assert_eq!(
        (back.meta.method, &back.basis),
        (Method::Linear, &best.basis)
    );
    assert!(back.check_r(4).is_ok() && back.check_r(3).is_err());
    // --relative is a rotation's parametrisation.
    let bad = ReduceConfig {
        relative: true,
        ..cfg
    };
    assert!(bad.validate().unwrap_err().contains("--relative"));
}

#[test]
fn queries_and_documents_centred_differently_train_and_are_recorded() {
    let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let centring = Centring {
        queries: 0.0,
        documents: 0.5,
    };
    let cfg = ReduceConfig {
        centring,
        ..config(40)
    };
    let a = run(&cfg, &dir.path().join("a"), false);
    let best = a.best.unwrap();
    assert_eq!(best.meta.centring, centring);
    assert!(a.orthogonality <= 1e-5, "{}", a.orthogonality);
    // The distillation improves on the PCA start centred the same way.
    let start = a.initial_kl.iter().sum::<f64>() / a.initial_kl.len() as f64;
    assert!(a.best_kl < start, "KL {} vs PCA {start}", a.best_kl);
    // Queries are projected without the mean, documents with half of it.
    let v = Tensor::randn([5, K], (Kind::Float, Device::Cpu));
    let u = Tensor::from_slice(&best.basis).view([K, K]).narrow(1, 0, 4);
    let mean = Tensor::from_slice(&best.mean);
    let close = |a: Tensor, b: Tensor| f64::try_from((a - b).abs().max()).unwrap() < 1e-6;
    assert!(close(
        best.apply(&v, 4, Side::Query),
        loss::normalise(&v.matmul(&u))
    ));
    assert!(close(
        best.apply(&v, 4, Side::Document),
        loss::normalise(&(&v - &mean * 0.5).matmul(&u))
    ));
    // A fraction outside 0..=1 is refused, naming the option.
    let bad = ReduceConfig {
        centring: Centring {
            queries: -0.5,
            documents: 1.0,
        },
        ..config(40)
    };
    assert!(bad.validate().unwrap_err().contains("--centre-queries"));
}

#[test]
fn several_positives_per_query_train_and_older_checkpoints_read_as_one() {
    let _turn = RNG.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    // Each query judges its own document and the next one.
    let (queries, docs, mut examples) = data(1);
    let n = examples.len();
    for (i, ex) in examples.iter_mut().enumerate() {
        ex.positives = vec![i, (i + 1) % n];
        ex.negatives.retain(|&j| j != (i + 1) % n);
    }
    let cfg = ReduceConfig {
        positives: 2,
        contrastive_weight: 1.0,
        ..config(40)
    };
    let a = run_on(
        &cfg,
        &dir.path().join("a"),
        false,
        (queries, docs, examples),
    );
    assert!(a.orthogonality <= 1e-5, "{}", a.orthogonality);
    let start = a.initial_kl.iter().sum::<f64>() / a.initial_kl.len() as f64;
    assert!(a.best_kl < start, "KL {} vs PCA {start}", a.best_kl);
    assert_nested(&a.best.unwrap());
    // The checkpoint records it; one written before the option existed
    // (no `positives`) reads as one positive per query.
    let st = read_checkpoint(&dir.path().join("a")).unwrap().unwrap();
    assert_eq!(st.config.positives, 2);
    let mut json = serde_json::to_value(&st.config).unwrap();
    json.as_object_mut().unwrap().remove("positives");
    let older: ReduceConfig = serde_json::from_value(json).unwrap();
    assert_eq!(
        older,
        ReduceConfig {
            positives: 1,
            ..st.config.clone()
        }
    );
    let err = check_resumable(&dir.path().join("a"), &st, &older)
        .unwrap_err()
        .to_string();
    assert!(err.contains("positives: 2 → 1"), "{err}");
    let bad = ReduceConfig {
        positives: 0,
        ..config(40)
    };
    assert!(bad.validate().unwrap_err().contains("--positives"));
}
