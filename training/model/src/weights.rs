//! Reading named tensors from checkpoint files and copying them into a
//! [`tch::nn::VarStore`].
//!
//! Formats: `*.safetensors`, and PyTorch's zip pickles (`pytorch_model.bin`,
//! `*.pt`) through libtorch's own reader. Hugging Face names are normalised so
//! that one model definition serves every layout: a leading `bert.` (masked-LM
//! and Stanford ColBERT checkpoints) is stripped, and the LayerNorm
//! `gamma`/`beta` of old TensorFlow-converted checkpoints become
//! `weight`/`bias`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};

/// Named tensors read from one file, with their origin kept for messages.
pub struct WeightFile {
    pub path: PathBuf,
    pub tensors: HashMap<String, Tensor>,
}

impl WeightFile {
    /// Reads every tensor of `path`, choosing the format by extension.
    pub fn read(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(ModelError::MissingFile {
                path: path.to_owned(),
                what: "weights file not found",
            });
        }
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        // libtorch's readers abort with C++ exceptions that tch turns into
        // errors; a file too short to be either format is caught first so the
        // message says what is wrong rather than quoting a C++ backtrace.
        let len = std::fs::metadata(path)
            .map_err(|e| ModelError::io(path, e))?
            .len();
        if len < 8 {
            return Err(ModelError::Weights {
                path: path.to_owned(),
                message: format!("file is {len} bytes, too short to hold tensors"),
            });
        }
        let list = match ext {
            "safetensors" => Tensor::read_safetensors(path),
            "bin" | "pt" | "pth" => Tensor::loadz_multi(path),
            _ => {
                return Err(ModelError::Weights {
                    path: path.to_owned(),
                    message: "unknown weight format (expected .safetensors or .bin)".into(),
                })
            }
        }
        .map_err(|e| {
            let text = e.to_string();
            let message = if text.contains("Expected GenericDict but got None") {
                // libtorch's unpickler maps collections.OrderedDict to None.
                "this PyTorch pickle holds an OrderedDict, which libtorch cannot read; \
                 convert it to model.safetensors (e.g. safetensors.torch.save_file(dict(sd), ...))"
                    .to_owned()
            } else {
                first_line(&text)
            };
            ModelError::Weights {
                path: path.to_owned(),
                message,
            }
        })?;
        let tensors = list.into_iter().collect();
        Ok(Self {
            path: path.to_owned(),
            tensors,
        })
    }

    /// Returns a copy whose names are normalised for [`crate::bert::BertModel`].
    pub fn normalised_bert_names(self) -> Self {
        let tensors = self
            .tensors
            .into_iter()
            .map(|(name, t)| (normalise_bert_name(&name), t))
            .collect();
        Self {
            path: self.path,
            tensors,
        }
    }

    /// Takes tensor `name` out, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.to_owned(),
            })?;
        if t.size() != shape {
            return Err(ModelError::TensorShape {
                path: self.path.clone(),
                name: name.to_owned(),
                expected: shape.to_vec(),
                actual: t.size(),
            });
        }
        Ok(t.to_kind(Kind::Float))
    }

    /// Copies every variable of `vs` from this file (names must match
    /// exactly), checking shapes. Tensors of the file that the store does not
    /// use are ignored (e.g. BERT's pooler or `position_ids`).
    pub fn load_into(&mut self, vs: &tch::nn::VarStore) -> Result<()> {
        let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, mut var) in vars {
            let src = self.take(&name, &var.size())?;
            tch::no_grad(|| var.f_copy_(&src))?;
        }
        Ok(())
    }
}

fn normalise_bert_name(name: &str) -> String {
    let name = name.strip_prefix("bert.").unwrap_or(name);
    if let Some(stem) = name.strip_suffix(".gamma") {
        if stem.ends_with("LayerNorm") {
            return format!("{stem}.weight");
        }
    }
    if let Some(stem) = name.strip_suffix(".beta") {
        if stem.ends_with("LayerNorm") {
            return format!("{stem}.bias");
        }
    }
    name.to_owned()
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised() {
        assert_eq!(
            normalise_bert_name("bert.embeddings.LayerNorm.gamma"),
            "embeddings.LayerNorm.weight"
        );
        assert_eq!(
            normalise_bert_name("encoder.layer.0.output.LayerNorm.beta"),
            "encoder.layer.0.output.LayerNorm.bias"
        );
        assert_eq!(normalise_bert_name("linear.weight"), "linear.weight");
    }

    #[test]
    fn round_trip_and_shape_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let t = Tensor::arange(6, (Kind::Float, tch::Device::Cpu)).view([2, 3]);
        Tensor::write_safetensors(&[("bert.a.weight", &t)], &path).unwrap();
        let mut f = WeightFile::read(&path).unwrap().normalised_bert_names();
        let e = f.take("a.weight", &[3, 2]).unwrap_err();
        assert!(
            e.to_string().contains("has shape [2, 3], expected [3, 2]"),
            "{e}"
        );
        let mut f = WeightFile::read(&path).unwrap().normalised_bert_names();
        assert_eq!(f.take("a.weight", &[2, 3]).unwrap().size(), vec![2, 3]);
        let e = f.take("b.weight", &[1]).unwrap_err();
        assert!(e.to_string().contains("missing tensor b.weight"), "{e}");
    }

    #[test]
    fn ordered_dict_pickle_gets_an_actionable_error() {
        let path = std::path::Path::new(
            &std::env::var_os("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("../tests/fixtures/ordered-dict.bin");
        let e = WeightFile::read(&path)
            .err()
            .expect("OrderedDict is unreadable");
        let msg = e.to_string();
        assert!(
            msg.contains("ordered-dict.bin") && msg.contains("OrderedDict"),
            "{msg}"
        );
    }

    #[test]
    fn garbage_file_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [
            ("short.safetensors", &b"abc"[..]),
            (
                "junk.safetensors",
                &b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header"[..],
            ),
            ("junk.bin", &b"this is not a zip archive at all"[..]),
        ] {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let e = WeightFile::read(&path).err().expect(name);
            assert!(e.to_string().contains(name), "{e}");
        }
    }
}
