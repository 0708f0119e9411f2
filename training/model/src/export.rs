//! Exporting a Tessera model to the PyLate (sentence-transformers) layout:
//! the backbone as module 0, the head as a stack of `Dense` modules
//! (`N_Dense/config.json` + `model.safetensors` with `linear.weight`,
//! `linear.bias`, `residual.weight`), `modules.json`, and
//! `config_sentence_transformers.json` with the query/document prefixes.
//!
//! A head is exportable when it is a stack of Dense modules: identity,
//! linear (with or without bias or residual path), and an FFN without
//! LayerNorm or whole-stack residual (each hidden layer a Dense with the
//! FFN's activation). A GLU, a LayerNorm FFN or a residual FFN has no
//! Dense form; exporting one is an error that says so.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::checkpoint::ColbertModel;
use crate::error::{ModelError, Result};
use crate::heads::{blocks::Activation, HeadKind};

struct Dense {
    in_features: i64,
    out_features: i64,
    weight: Tensor,
    bias: Option<Tensor>,
    activation: Option<Activation>,
    residual: Option<Tensor>,
    use_residual: bool,
}

fn activation_name(a: Option<Activation>) -> &'static str {
    match a {
        None => "torch.nn.modules.linear.Identity",
        Some(Activation::Gelu) => "torch.nn.modules.activation.GELU",
        Some(Activation::Relu) => "torch.nn.modules.activation.ReLU",
        Some(Activation::Silu) => "torch.nn.modules.activation.SiLU",
    }
}

/// Writes the model loaded from `src` into `out` in the PyLate layout.
pub fn export_pylate(src: &Path, out: &Path) -> Result<()> {
    let model = ColbertModel::load(src, Device::Cpu)?;
    let hidden = model.bert.config().hidden_size;
    let origin = src.join("head.json");
    let not = |why: &str| {
        ModelError::config(
            &origin,
            format!("this head has no PyLate Dense form: {why}; only identity, linear and FFN heads without LayerNorm or a whole-stack residual export"),
        )
    };
    let mut stack = Vec::new();
    if let Some(b) = model.head.block() {
        let spec = &b.spec;
        let p = |n: &str| {
            b.params
                .get(n)
                .map(|t| t.to_device(Device::Cpu).to_kind(Kind::Float))
        };
        match spec.kind {
            HeadKind::Identity => {}
            HeadKind::Linear => stack.push(Dense {
                in_features: spec.in_dim,
                out_features: spec.out_dim,
                weight: p("linear.weight").expect("checked on load"),
                bias: p("linear.bias"),
                activation: None,
                residual: p("skip.weight"),
                use_residual: spec.residual,
            }),
            HeadKind::Ffn => {
                if spec.layer_norm {
                    return Err(not("LayerNorm between layers"));
                }
                if spec.residual {
                    return Err(not(
                        "the residual path spans the whole FFN, a Dense one spans one layer",
                    ));
                }
                for i in 0..spec.depth {
                    let w = p(&format!("ffn.{i}.weight")).expect("checked on load");
                    let (o, n) = (w.size()[0], w.size()[1]);
                    stack.push(Dense {
                        in_features: n,
                        out_features: o,
                        weight: w,
                        bias: p(&format!("ffn.{i}.bias")),
                        activation: (i + 1 < spec.depth).then(|| spec.activation()),
                        residual: None,
                        use_residual: false,
                    });
                }
            }
            HeadKind::Glu => return Err(not("a GLU multiplies two branches")),
        }
    } else {
        for l in model.head.layers() {
            let cpu = |t: &Tensor| t.to_device(Device::Cpu).to_kind(Kind::Float);
            let (o, n) = (l.weight.size()[0], l.weight.size()[1]);
            stack.push(Dense {
                in_features: n,
                out_features: o,
                weight: cpu(&l.weight),
                bias: l.bias.as_ref().map(cpu),
                activation: l.activation,
                residual: l.residual.as_ref().and_then(|r| r.as_ref().map(cpu)),
                use_residual: l.residual.is_some(),
            });
        }
    }
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, e))?;
    let copy = |name: &str, to: &str| -> Result<()> {
        let from = model.backbone_dir.join(name);
        let dst = out.join(to);
        std::fs::copy(&from, &dst).map_err(|e| ModelError::io(&from, e))?;
        Ok(())
    };
    copy("config.json", "config.json")?;
    copy("tokenizer.json", "tokenizer.json")?;
    if model.backbone_dir.join("model.safetensors").is_file() {
        copy("model.safetensors", "model.safetensors")?;
    } else {
        copy("pytorch_model.bin", "pytorch_model.bin")?;
    }
    let mut modules = vec![serde_json::json!({
        "idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"
    })];
    for (i, d) in stack.iter().enumerate() {
        let dir_name = format!("{}_Dense", i + 1);
        let dir = out.join(&dir_name);
        std::fs::create_dir_all(&dir).map_err(|e| ModelError::io(&dir, e))?;
        let cfg = serde_json::json!({
            "in_features": d.in_features,
            "out_features": d.out_features,
            "bias": d.bias.is_some(),
            "activation_function": activation_name(d.activation),
            "use_residual": d.use_residual,
        });
        let cp = dir.join("config.json");
        std::fs::write(&cp, serde_json::to_vec_pretty(&cfg).expect("json"))
            .map_err(|e| ModelError::io(&cp, e))?;
        let mut named = vec![("linear.weight", d.weight.shallow_clone())];
        if let Some(b) = &d.bias {
            named.push(("linear.bias", b.shallow_clone()));
        }
        if let Some(r) = &d.residual {
            named.push(("residual.weight", r.shallow_clone()));
        }
        Tensor::write_safetensors(&named, dir.join("model.safetensors"))?;
        modules.push(serde_json::json!({
            "idx": i + 1, "name": (i + 1).to_string(), "path": dir_name, "type": "pylate.models.Dense.Dense"
        }));
    }
    let write = |name: &str, v: &serde_json::Value| -> Result<()> {
        let p = out.join(name);
        std::fs::write(&p, serde_json::to_vec_pretty(v).expect("json"))
            .map_err(|e| ModelError::io(&p, e))
    };
    write("modules.json", &serde_json::Value::from(modules))?;
    let s = &model.settings;
    // PyLate puts the markers in as prefixes; a model without markers keeps
    // its exact settings in tessera.json, which Tessera reads first.
    write(
        "config_sentence_transformers.json",
        &serde_json::json!({
            "query_prefix": s.query_marker.clone().unwrap_or_default(),
            "document_prefix": s.doc_marker.clone().unwrap_or_default(),
            "query_length": s.query_maxlen,
            "document_length": s.doc_maxlen,
            "do_query_expansion": s.query_augmentation,
            "attend_to_expansion_tokens": s.attend_to_mask_tokens,
        }),
    )?;
    write("tessera.json", &serde_json::json!({ "colbert": s }))?;
    tracing::info!(dense = stack.len(), hidden, out = %out.display(), "exported to the PyLate layout");
    Ok(())
}
