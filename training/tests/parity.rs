//! Parity of the tch backbone with Hugging Face `transformers`, on the
//! reference outputs written by `scripts/make-fixtures.py`: a tiny random
//! BERT and the real all-MiniLM-L6-v2 (installed by `scripts/setup`).
//! Tolerance: max |Δ| ≤ 1e-4 in f32.

mod common;

use std::path::Path;

use tessera_model::tch::{Device, Kind, Tensor};
use tessera_model::tokenize::ColbertTokenizer;
use tessera_model::{ColbertModel, ColbertSettings, Encoder, EncoderOptions, TextKind};

const TOL: f64 = 1e-4;

use common::fixtures;

struct Reference {
    sentences: Vec<String>,
    input_ids: Vec<Vec<i64>>,
    hidden: Vec<Tensor>,
}

fn reference(dir: &Path) -> Reference {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("reference.json")).unwrap())
            .unwrap();
    let sentences = meta["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect::<Vec<_>>();
    let input_ids = meta["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_i64().unwrap())
                .collect()
        })
        .collect();
    let named = Tensor::read_safetensors(dir.join("reference.safetensors")).unwrap();
    let hidden = (0..sentences.len())
        .map(|i| {
            named
                .iter()
                .find(|(n, _)| *n == format!("hidden.{i}"))
                .unwrap()
                .1
                .shallow_clone()
        })
        .collect();
    Reference {
        sentences,
        input_ids,
        hidden,
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// Runs the backbone on the reference ids, one padded batch, and compares
/// each sentence's unpadded states.
fn check_backbone(model_dir: &Path, reference_dir: &Path) {
    let r = reference(reference_dir);
    let model = ColbertModel::load(model_dir, Device::Cpu).unwrap();
    let width = r.input_ids.iter().map(Vec::len).max().unwrap();
    let mut ids = vec![0i64; r.input_ids.len() * width];
    let mut mask = vec![0i64; r.input_ids.len() * width];
    for (row, seq) in r.input_ids.iter().enumerate() {
        ids[row * width..row * width + seq.len()].copy_from_slice(seq);
        mask[row * width..row * width + seq.len()].fill(1);
    }
    let shape = [r.input_ids.len() as i64, width as i64];
    let out = tessera_model::tch::no_grad(|| {
        model.bert.forward(
            &Tensor::from_slice(&ids).view(shape),
            &Tensor::from_slice(&mask).view(shape),
        )
    });
    for (i, seq) in r.input_ids.iter().enumerate() {
        let got = out.get(i as i64).narrow(0, 0, seq.len() as i64);
        let diff = max_abs_diff(&got, &r.hidden[i]);
        assert!(diff <= TOL, "sentence {i}: max |Δ| = {diff:e}");
        // Unbatched (no padding at all) must agree too.
        let alone = tessera_model::tch::no_grad(|| {
            let ids = Tensor::from_slice(seq).view([1, -1]);
            model.bert.forward(&ids, &ids.ones_like())
        });
        let diff = max_abs_diff(&alone.get(0), &r.hidden[i]);
        assert!(diff <= TOL, "sentence {i} unbatched: max |Δ| = {diff:e}");
    }
}

#[test]
fn tiny_bert_backbone_matches_transformers() {
    let dir = fixtures().join("tiny-bert");
    check_backbone(&dir, &dir);
}

#[test]
fn minilm_backbone_matches_transformers() {
    let dir = tessera_model::default_model_dir()
        .filter(|d| d.join("model.safetensors").is_file())
        .expect("the default MiniLM model is not installed: run scripts/setup");
    check_backbone(&dir, &fixtures().join("minilm"));
}

#[test]
fn tokenizer_matches_hugging_face_ids() {
    for dir in [fixtures().join("tiny-bert")] {
        let r = reference(&dir);
        let settings = ColbertSettings {
            query_maxlen: 512,
            ..ColbertSettings::default()
        };
        let tok = ColbertTokenizer::from_file(&dir.join("tokenizer.json"), settings, 512).unwrap();
        let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
        // A text far longer than any kind keeps tokenises to the ids of its
        // whole (it is cut before tokenising, where nothing kept changes).
        let long: String = texts.join(" ").repeat(200);
        let short = ColbertTokenizer::from_file(
            &dir.join("tokenizer.json"),
            ColbertSettings {
                doc_maxlen: 40,
                ..ColbertSettings::default()
            },
            512,
        )
        .unwrap();
        let cut = short.encode_batch(&[&long], TextKind::Document).unwrap();
        let whole = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json"))
            .unwrap()
            .encode(long.as_str(), false)
            .unwrap();
        let ids = &cut[0].ids;
        // [CLS], the first 38 content tokens of the whole text, [SEP].
        assert_eq!(ids.len(), 40);
        assert_eq!(&ids[1..39], &whole.get_ids()[..38]);
        assert!(cut[0].truncated);
        for kind in [TextKind::Query, TextKind::Document] {
            let got = tok.encode_batch(&texts, kind).unwrap();
            for (g, want) in got.iter().zip(&r.input_ids) {
                let g: Vec<i64> = g.ids.iter().map(|&x| i64::from(x)).collect();
                assert_eq!(&g, want, "{kind:?}");
            }
        }
    }
}

#[test]
fn encoder_outputs_are_normalised_reference_states_without_punctuation() {
    let dir = fixtures().join("tiny-bert");
    let r = reference(&dir);
    let options = EncoderOptions {
        device: tessera_model::DeviceChoice::Cpu,
        batch_size: 2, // several batches, with padding, out of order
        precision: tessera_model::PrecisionChoice::Fp32,
    };
    let enc = Encoder::load(&dir, options).unwrap();
    let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
    let out = enc.encode_documents(&texts).unwrap();
    assert_eq!(out.items.len(), texts.len());
    assert_eq!(out.truncated, 0);
    for (i, item) in out.items.iter().enumerate() {
        let ids = &r.input_ids[i];
        let keep: Vec<i64> = (0..ids.len() as i64)
            .filter(|&j| !enc.tokenizer().is_punctuation(ids[j as usize] as u32))
            .collect();
        let want = r.hidden[i].index_select(0, &Tensor::from_slice(&keep));
        let want = &want / want.norm_scalaropt_dim(2, [-1i64].as_slice(), true);
        let got = Tensor::from_slice(item.vectors.as_slice()).view([-1, 32]);
        assert_eq!(got.size()[0], keep.len() as i64, "sentence {i}");
        let diff = max_abs_diff(&got, &want.to_kind(Kind::Float));
        assert!(diff <= TOL, "sentence {i}: max |Δ| = {diff:e}");
        let expected_ids: Vec<u32> = keep.iter().map(|&j| ids[j as usize] as u32).collect();
        assert_eq!(item.token_ids, expected_ids);
    }
    // "What causes ocean tides?" loses its "?"
    assert!(out.items[0].token_ids.len() < r.input_ids[0].len());
}

/// The quality guard of `--precision bf16` on the real model: every token
/// vector of the reference sentences within the stated cosine of fp32.
#[test]
fn minilm_bf16_token_vectors_match_fp32() {
    let dir = tessera_model::default_model_dir()
        .filter(|d| d.join("model.safetensors").is_file())
        .expect("the default MiniLM model is not installed: run scripts/setup");
    let r = reference(&fixtures().join("minilm"));
    let texts: Vec<&str> = r.sentences.iter().map(String::as_str).collect();
    let load = |precision| {
        let options = EncoderOptions {
            device: tessera_model::DeviceChoice::Cpu,
            batch_size: 4,
            precision,
        };
        Encoder::load(&dir, options).unwrap()
    };
    let a = load(tessera_model::PrecisionChoice::Fp32)
        .encode_documents(&texts)
        .unwrap();
    let b = load(tessera_model::PrecisionChoice::Bf16)
        .encode_documents(&texts)
        .unwrap();
    let (mut min_cos, mut sum, mut n) = (1.0f32, 0.0f64, 0usize);
    for (x, y) in a.items.iter().zip(&b.items) {
        assert_eq!(x.token_ids, y.token_ids);
        let dim = x.vectors.dim();
        for (u, v) in x
            .vectors
            .as_slice()
            .chunks_exact(dim)
            .zip(y.vectors.as_slice().chunks_exact(dim))
        {
            let cos: f32 = u.iter().zip(v).map(|(p, q)| p * q).sum();
            min_cos = min_cos.min(cos);
            sum += f64::from(cos);
            n += 1;
        }
    }
    let mean = sum / n as f64;
    eprintln!("MiniLM bf16 vs fp32: {n} token vectors, min cosine {min_cos:.5}, mean {mean:.6}");
    assert!(min_cos >= 0.995, "min cosine {min_cos}");
    assert!(mean >= 0.9995, "mean cosine {mean}");
}
