//! The default model: a projection head trained by `tessera train heads`
//! (see `docs/experiments/projection-heads.md`), committed in
//! `training/model/models/default-head/` and built into the binary, over the
//! all-MiniLM-L6-v2 backbone that `scripts/setup` installs. [`install`]
//! writes it next to that backbone as a Tessera model folder whose
//! `tessera.json` names the backbone, so every command finds a stable path
//! (and an index records it) without a copy of the weights.

use std::path::{Path, PathBuf};

use crate::error::{ModelError, Result};

/// The name that selects the default model (`--model tessera-minilm`).
pub const NAME: &str = "tessera-minilm";

/// The folder the default model is installed in, beside the backbone: one
/// per version of the committed head, so an index built with an earlier
/// default keeps the model it recorded (v1 lived in `tessera-minilm`)
/// instead of meeting new weights at the same path.
pub const INSTALL_DIR: &str = "tessera-minilm-v4";

/// The name that selects the raw backbone (identity head) instead.
pub const RAW: &str = "raw";

macro_rules! file {
    ($name:literal) => {
        (
            $name,
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/models/default-head/",
                $name
            ))
            .as_slice(),
        )
    };
}

/// The committed files; `tessera.json` gets the backbone path on install.
const FILES: [(&str, &[u8]); 4] = [
    file!("head.json"),
    file!("head.safetensors"),
    file!("tessera.json"),
    file!("training.json"),
];

/// Writes the default model beside `backbone` (as `../INSTALL_DIR`) unless
/// an identical copy is there; returns its folder.
pub fn install(backbone: &Path) -> Result<PathBuf> {
    let parent = backbone.parent().unwrap_or(Path::new("."));
    let dir = parent.join(INSTALL_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| ModelError::io(&dir, e))?;
    for (name, bytes) in FILES {
        let content = if name == "tessera.json" {
            let mut v: serde_json::Value =
                serde_json::from_slice(bytes).expect("the committed tessera.json parses");
            v["backbone"] = serde_json::json!(backbone);
            serde_json::to_vec_pretty(&v).expect("json")
        } else {
            bytes.to_vec()
        };
        let path = dir.join(name);
        if std::fs::read(&path).ok().as_deref() == Some(content.as_slice()) {
            continue;
        }
        // Another process may install at the same time: write aside, rename.
        let tmp = dir.join(format!(".{name}.{}", std::process::id()));
        std::fs::write(&tmp, &content).map_err(|e| ModelError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| ModelError::io(&path, e))?;
    }
    Ok(dir)
}

/// The committed training record (command, config, dev scores).
pub fn training_record() -> serde_json::Value {
    serde_json::from_slice(FILES[3].1).expect("the committed training.json parses")
}
