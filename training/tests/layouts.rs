//! Checkpoint layouts (Hugging Face, Stanford ColBERT, PyLate, Tessera, a
//! PyTorch `.bin`), ColBERT conventions, and bad input — each on a tiny random
//! checkpoint the test builds from the committed tiny BERT.

mod common;

use std::path::Path;

use tessera_model::heads::LinearLayer;
use tessera_model::tch::{self, Device, Kind, Tensor};
use tessera_model::{
    CheckpointLayout, ColbertModel, DeviceChoice, Encoder, EncoderOptions, HeadKind, ProjectionHead,
};
use tessera_training::TrainingError;

use common::tiny;

fn copy_tiny(to: &Path, files: &[&str]) {
    for f in files {
        std::fs::copy(tiny().join(f), to.join(f)).unwrap();
    }
}

fn cpu() -> EncoderOptions {
    EncoderOptions {
        device: DeviceChoice::Cpu,
        batch_size: 4,
        precision: tessera_model::PrecisionChoice::Fp32,
    }
}

fn tiny_tensors() -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(tiny().join("model.safetensors")).unwrap()
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// Backbone states of `ids` with the plain tiny BERT.
fn states(ids: &[u32]) -> Tensor {
    let model = ColbertModel::load(&tiny(), Device::Cpu).unwrap();
    let ids: Vec<i64> = ids.iter().map(|&x| i64::from(x)).collect();
    let ids = Tensor::from_slice(&ids).view([1, -1]);
    tch::no_grad(|| model.bert.forward(&ids, &ids.ones_like())).get(0)
}

fn normalise(x: &Tensor) -> Tensor {
    x / x.norm_scalaropt_dim(2, [-1i64].as_slice(), true)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn vectors(item: &tessera_model::EncodedText) -> Tensor {
    Tensor::from_slice(item.vectors.as_slice()).view([item.vectors.len() as i64, -1])
}

const QUERY: &str = "what causes tides";
const DOC: &str = "the moon pulls the sea, and the sea rises.";

#[test]
fn plain_bert_has_identity_head_and_no_markers() {
    let enc = Encoder::load(&tiny(), cpu()).unwrap();
    assert_eq!(enc.layout(), CheckpointLayout::HuggingFace);
    assert_eq!(enc.model().head.kind(), HeadKind::Identity);
    assert_eq!(enc.dim(), 32);
    let q = enc.encode_queries(&[QUERY]).unwrap();
    let ids = &q.items[0].token_ids;
    assert_eq!(ids.first(), Some(&101));
    assert_eq!(ids.last(), Some(&102));
    assert!(
        !ids.contains(&103),
        "no [MASK] augmentation for a plain BERT"
    );
}

#[test]
fn stanford_checkpoint_loads_with_markers_masks_and_linear_head() {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny(dir.path(), &["config.json", "tokenizer.json"]);
    tch::manual_seed(1);
    let w = Tensor::randn([8, 32], (Kind::Float, Device::Cpu));
    let mut named: Vec<(String, Tensor)> = tiny_tensors()
        .into_iter()
        .map(|(n, t)| (format!("bert.{n}"), t))
        .collect();
    named.push(("linear.weight".into(), w.shallow_clone()));
    Tensor::write_safetensors(&named, dir.path().join("model.safetensors")).unwrap();

    let enc = Encoder::load(dir.path(), cpu()).unwrap();
    assert_eq!(enc.layout(), CheckpointLayout::Stanford);
    assert_eq!(enc.dim(), 8);
    let s = enc.settings();
    assert!(s.query_augmentation);
    assert_eq!(s.query_marker.as_deref(), Some("[unused0]"));

    let q = enc.encode_queries(&[QUERY]).unwrap();
    let qi = &q.items[0];
    assert_eq!(qi.token_ids.len(), 32, "queries are padded to query_maxlen");
    assert_eq!(&qi.token_ids[..2], &[101, 1], "[CLS] [unused0]");
    let sep = qi.token_ids.iter().position(|&t| t == 102).unwrap();
    assert!(sep < 31, "room left for augmentation");
    assert!(
        qi.token_ids[sep + 1..].iter().all(|&t| t == 103),
        "[MASK] padding"
    );

    let d = enc.encode_documents(&[DOC]).unwrap();
    let di = &d.items[0];
    assert_eq!(&di.token_ids[..2], &[101, 2], "[CLS] [unused1]");
    assert!(!di.token_ids.contains(&1010), "',' is dropped");
    // Expected: backbone states of the full sequence, punctuation removed
    // after encoding, projected by W, normalised.
    let full: Vec<u32> = {
        let mut v = vec![101, 2];
        v.extend(
            enc.tokenizer()
                .encode_batch(&[DOC], tessera_model::TextKind::Document)
                .unwrap()[0]
                .ids[2..]
                .iter(),
        );
        v
    };
    let keep: Vec<i64> = (0..full.len() as i64)
        .filter(|&j| !enc.tokenizer().is_punctuation(full[j as usize]))
        .collect();
    let want = normalise(
        &states(&full)
            .index_select(0, &Tensor::from_slice(&keep))
            .matmul(&w.tr()),
    );
    let diff = max_abs_diff(&vectors(di), &want);
    assert!(diff <= 1e-4, "max |Δ| = {diff:e}");
}

#[test]
fn pylate_checkpoint_uses_prefix_tokens_lengths_and_dense_modules() {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny(dir.path(), &["config.json", "model.safetensors"]);
    // PyLate adds its prefixes as tokens; the tiny model has two spare rows.
    let mut tok = tokenizers::Tokenizer::from_file(tiny().join("tokenizer.json")).unwrap();
    tok.add_special_tokens(&[
        tokenizers::AddedToken::from("[Q] ", true),
        tokenizers::AddedToken::from("[D] ", true),
    ]);
    tok.save(dir.path().join("tokenizer.json"), false).unwrap();
    write(
        &dir.path().join("modules.json"),
        r#"[{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"}]"#,
    );
    write(
        &dir.path().join("1_Dense/config.json"),
        r#"{"in_features": 32, "out_features": 6, "bias": true,
            "activation_function": "torch.nn.modules.linear.Identity"}"#,
    );
    tch::manual_seed(2);
    let w = Tensor::randn([6, 32], (Kind::Float, Device::Cpu));
    let b = Tensor::randn([6], (Kind::Float, Device::Cpu));
    Tensor::write_safetensors(
        &[("linear.weight", &w), ("linear.bias", &b)],
        dir.path().join("1_Dense/model.safetensors"),
    )
    .unwrap();
    write(
        &dir.path().join("config_sentence_transformers.json"),
        r#"{"query_prefix": "[Q] ", "document_prefix": "[D] ", "query_length": 12,
            "document_length": 10, "attend_to_expansion_tokens": false}"#,
    );

    let enc = Encoder::load(dir.path(), cpu()).unwrap();
    assert_eq!(enc.layout(), CheckpointLayout::PyLate);
    assert_eq!(enc.dim(), 6);
    let q = enc.encode_queries(&[QUERY]).unwrap();
    assert_eq!(q.items[0].token_ids.len(), 12);
    assert_eq!(q.items[0].token_ids[1], 3000, "[Q] inserted by id");
    let d = enc.encode_documents(&[DOC, "short"]).unwrap();
    assert_eq!(d.items[0].token_ids[1], 3001, "[D] inserted by id");
    assert!(d.items[0].truncated && !d.items[1].truncated);
    assert_eq!(d.truncated, 1);
    // 10 positions: [CLS] [D] + 7 tokens + [SEP]; no punctuation among the 7.
    assert_eq!(d.items[0].token_ids.len(), 10);

    let ids = &d.items[1].token_ids;
    let want = normalise(&states(ids).linear(&w, Some(&b)));
    let diff = max_abs_diff(&vectors(&d.items[1]), &want);
    assert!(diff <= 1e-4, "max |Δ| = {diff:e}");
}

#[test]
fn tessera_head_file_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny(
        dir.path(),
        &["config.json", "model.safetensors", "tokenizer.json"],
    );
    tch::manual_seed(3);
    let w = Tensor::randn([4, 32], (Kind::Float, Device::Cpu));
    let head = ProjectionHead::from_layers(
        vec![LinearLayer::new(w.shallow_clone(), None)],
        32,
        dir.path(),
    )
    .unwrap();
    head.save_tessera(dir.path(), 32).unwrap();
    let enc = Encoder::load(dir.path(), cpu()).unwrap();
    assert_eq!(enc.layout(), CheckpointLayout::Tessera);
    assert_eq!(enc.dim(), 4);
    let d = enc.encode_documents(&["short"]).unwrap();
    let want = normalise(&states(&d.items[0].token_ids).matmul(&w.tr()));
    assert!(max_abs_diff(&vectors(&d.items[0]), &want) <= 1e-4);
}

#[test]
fn an_ffn_head_with_a_shortcut_is_built_from_its_spec_and_applied() {
    use tessera_model::heads::{blocks, HeadKind, HeadSpec};
    let dir = tempfile::tempdir().unwrap();
    copy_tiny(
        dir.path(),
        &["config.json", "model.safetensors", "tokenizer.json"],
    );
    let mut spec = HeadSpec::new(HeadKind::Ffn, 32, 8);
    spec.residual = true;
    spec.layer_norm = true;
    let params = blocks::init(&spec, Device::Cpu, 11);
    let head = ProjectionHead::from_spec(spec.clone(), params, dir.path()).unwrap();
    head.save_tessera(dir.path(), 32).unwrap();
    let enc = Encoder::load(dir.path(), cpu()).unwrap();
    assert_eq!(enc.layout(), CheckpointLayout::Tessera);
    assert_eq!((enc.dim(), enc.model().head.kind()), (8, HeadKind::Ffn));
    let d = enc.encode_documents(&["short"]).unwrap();
    let b = head.block().unwrap();
    let want = normalise(&blocks::forward(
        &b.spec,
        &b.params,
        &states(&d.items[0].token_ids),
    ));
    assert!(max_abs_diff(&vectors(&d.items[0]), &want) <= 1e-4);
    // A spec the backbone cannot feed is refused with the file named.
    std::fs::write(
        dir.path().join("head.json"),
        r#"{"kind": "glu", "in_dim": 32, "out_dim": 8, "width_factor": 0.001}"#,
    )
    .unwrap();
    let e = Encoder::load(dir.path(), cpu()).err().unwrap().to_string();
    assert!(e.contains("head.json") && e.contains("width_factor"), "{e}");
}

#[test]
fn pytorch_bin_weights_match_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny(dir.path(), &["config.json", "tokenizer.json"]);
    std::fs::copy(
        tiny().join("../tiny-bert.pytorch_model.bin"),
        dir.path().join("pytorch_model.bin"),
    )
    .unwrap();
    let a = Encoder::load(dir.path(), cpu()).unwrap();
    let b = Encoder::load(&tiny(), cpu()).unwrap();
    let x = a.encode_documents(&[DOC]).unwrap();
    let y = b.encode_documents(&[DOC]).unwrap();
    assert_eq!(x.items[0].token_ids, y.items[0].token_ids);
    assert!(max_abs_diff(&vectors(&x.items[0]), &vectors(&y.items[0])) <= 1e-6);
}

#[test]
fn empty_and_whitespace_text_encode_to_special_tokens_only() {
    let enc = Encoder::load(&tiny(), cpu()).unwrap();
    let out = enc.encode_documents(&["", "   \t\n ", DOC]).unwrap();
    assert_eq!(out.empty, 2);
    for item in &out.items[..2] {
        assert!(item.empty);
        assert_eq!(item.token_ids, vec![101, 102]);
        assert_eq!(item.vectors.len(), 2);
    }
    assert!(!out.items[2].empty);
    let q = enc.encode_queries(&[""]).unwrap();
    assert_eq!(q.items[0].token_ids, vec![101, 102]);
}

#[test]
fn long_documents_are_truncated_and_counted() {
    let enc = Encoder::load(&tiny(), cpu()).unwrap();
    let long = "the sea rises and falls ".repeat(100); // 500 word pieces
    let out = enc.encode_documents(&[&long, DOC, &long]).unwrap();
    assert_eq!(out.truncated, 2);
    // The tiny model has 128 positions, below doc_maxlen 300: the smaller wins.
    assert_eq!(out.items[0].token_ids.len(), 128);
    assert_eq!(
        out.items[0].token_ids.last(),
        Some(&102),
        "[SEP] kept at the end"
    );
    assert!(!out.items[1].truncated);
}

#[test]
fn batch_size_does_not_change_results() {
    let texts = [
        DOC,
        "short",
        "the moon",
        "a much longer text about the sea and the moon",
    ];
    let one = Encoder::load(
        &tiny(),
        EncoderOptions {
            batch_size: 1,
            ..cpu()
        },
    )
    .unwrap();
    let many = Encoder::load(&tiny(), cpu()).unwrap();
    let a = one.encode_documents(&texts).unwrap();
    let b = many.encode_documents(&texts).unwrap();
    for (x, y) in a.items.iter().zip(&b.items) {
        assert_eq!(x.token_ids, y.token_ids);
        assert!(max_abs_diff(&vectors(x), &vectors(y)) <= 1e-5);
    }
}

fn load_err(dir: &Path) -> String {
    match Encoder::load(dir, cpu()) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_model_directories_give_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    assert!(load_err(&p.join("nope")).contains("model directory not found"));

    let e = load_err(p);
    assert!(e.contains("config.json") && e.contains("missing"), "{e}");

    copy_tiny(p, &["config.json"]);
    let e = load_err(p);
    assert!(
        e.contains("model.safetensors") && e.contains("pytorch_model.bin"),
        "{e}"
    );

    // Truncated weights.
    let bytes = std::fs::read(tiny().join("model.safetensors")).unwrap();
    std::fs::write(p.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(p);
    assert!(e.contains("model.safetensors: cannot read weights"), "{e}");

    // A tensor missing.
    let named: Vec<(String, Tensor)> = tiny_tensors()
        .into_iter()
        .filter(|(n, _)| n != "encoder.layer.1.output.dense.weight")
        .collect();
    Tensor::write_safetensors(&named, p.join("model.safetensors")).unwrap();
    let e = load_err(p);
    assert!(
        e.contains("missing tensor encoder.layer.1.output.dense.weight"),
        "{e}"
    );

    // Weights from a model of another shape.
    let cfg = std::fs::read_to_string(tiny().join("config.json"))
        .unwrap()
        .replace("\"intermediate_size\": 64", "\"intermediate_size\": 48");
    write(&p.join("config.json"), &cfg);
    copy_tiny(p, &["model.safetensors"]);
    let e = load_err(p);
    assert!(e.contains("has shape") && e.contains("expected"), "{e}");

    // A config without hidden_size.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tiny().join("config.json")).unwrap())
            .unwrap();
    let mut cfg = cfg.as_object().unwrap().clone();
    cfg.remove("hidden_size");
    write(
        &p.join("config.json"),
        &serde_json::to_string(&cfg).unwrap(),
    );
    let e = load_err(p);
    assert!(e.contains("config.json: missing field hidden_size"), "{e}");

    // No tokenizer.
    copy_tiny(p, &["config.json"]);
    let e = load_err(p);
    assert!(
        e.contains("tokenizer.json") && e.contains("not found"),
        "{e}"
    );

    // A tokenizer that is not JSON.
    write(&p.join("tokenizer.json"), "{ not json");
    let e = load_err(p);
    assert!(e.contains("tokenizer.json:"), "{e}");
}

#[test]
fn marker_missing_from_vocabulary_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    copy_tiny(
        dir.path(),
        &["config.json", "model.safetensors", "tokenizer.json"],
    );
    write(
        &dir.path().join("tessera.json"),
        r#"{"colbert": {"query_marker": "[NOPE]"}}"#,
    );
    let e = Encoder::load(dir.path(), cpu()).err().unwrap();
    assert!(matches!(e, TrainingError::Tokenizer { .. }));
    assert!(e.to_string().contains("[NOPE]"), "{e}");
}

#[test]
fn bf16_vectors_stay_close_to_fp32_and_unit_length() {
    let texts = [
        QUERY,
        DOC,
        "tides rise twice a day; the sun adds a smaller pull of its own.",
        "a",
    ];
    let fp32 = Encoder::load(&tiny(), cpu()).unwrap();
    let bf16 = Encoder::load(
        &tiny(),
        EncoderOptions {
            precision: tessera_model::PrecisionChoice::Bf16,
            ..cpu()
        },
    )
    .unwrap();
    assert_eq!(fp32.precision(), tessera_model::Precision::Fp32);
    assert_eq!(bf16.precision(), tessera_model::Precision::Bf16);
    let (a, b) = (
        fp32.encode_documents(&texts).unwrap(),
        bf16.encode_documents(&texts).unwrap(),
    );
    let (mut min_cos, mut sum, mut n) = (1.0f64, 0.0f64, 0usize);
    for (x, y) in a.items.iter().zip(&b.items) {
        assert_eq!(x.token_ids, y.token_ids);
        let (vx, vy) = (vectors(x), vectors(y));
        assert_eq!(vy.kind(), Kind::Float);
        // Unit length whatever the precision.
        let norms = vy.norm_scalaropt_dim(2, [-1i64].as_slice(), false);
        assert!(max_abs_diff(&norms, &norms.ones_like()) < 1e-5);
        let cos = (&vx * &vy).sum_dim_intlist([-1i64].as_slice(), false, Kind::Double);
        min_cos = min_cos.min(cos.min().double_value(&[]));
        sum += cos.sum(Kind::Double).double_value(&[]);
        n += vx.size()[0] as usize;
    }
    let mean = sum / n as f64;
    // The stated tolerance for the tiny random model (MiniLM: see parity.rs).
    assert!(min_cos >= 0.99, "min cosine bf16 vs fp32 {min_cos}");
    assert!(mean >= 0.998, "mean cosine bf16 vs fp32 {mean}");
    assert!(
        max_abs_diff(&vectors(&a.items[0]), &vectors(&b.items[0])) > 0.0,
        "bf16 ran"
    );
}
