//! `tessera train interpolate`: WiSE-FT between two heads of one spec.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use clap::Args;
use tessera_model::heads::{HeadSpec, ProjectionHead};
use tessera_model::weights::WeightFile;

/// Interpolate two trained heads in weight space (WiSE-FT): the weights
/// (1 − α)·FROM + α·TO, written as a model folder.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera train heads --dataset path/to/beir/scifact --head glu --residual --dim 128 \\\n    \
      --start pca --steps 0 --out heads/start\n  \
    tessera train heads --dataset path/to/beir/scifact --head glu --residual --dim 128 \\\n    \
      --start pca --steps 600 --out heads/tuned\n  \
    tessera train interpolate --from heads/start --to heads/tuned --alpha 0.5 --out heads/wise-0.5\n\n\
    Both folders hold heads of one spec (head.json) over one backbone with the same\n\
    ColBERT settings (tessera.json): typically a run's starting head (--steps 0) and the\n\
    same run trained. α = 0 gives FROM, 1 gives TO; the general starting head keeps what\n\
    the backbone knew, the trained one what the labels taught, and the weights between\n\
    often keep most of both. Evaluate with `tessera eval --model DIR`, or on the dev pools\n\
    with `tessera train heads --init-head DIR --steps 0`.")]
pub struct InterpolateArgs {
    /// The head at α = 0 (a model folder).
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// The head at α = 1 (a model folder of the same spec).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    /// The weight of --to.
    #[arg(long, allow_negative_numbers = true)]
    pub alpha: f64,
    /// The model folder to write.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

/// A model folder's head: its spec, tensors and `tessera.json`.
struct Head {
    spec: HeadSpec,
    tensors: HashMap<String, tessera_model::tch::Tensor>,
    settings: serde_json::Value,
}

fn read_head(dir: &Path, flag: &str) -> Result<Head> {
    let at = |f: &str| dir.join(f);
    let spec: HeadSpec = serde_json::from_str(
        &std::fs::read_to_string(at("head.json"))
            .with_context(|| format!("{flag} {}", at("head.json").display()))?,
    )
    .with_context(|| format!("{flag} {}", at("head.json").display()))?;
    let tensors = WeightFile::read(&at("head.safetensors"))
        .with_context(|| format!("{flag} {}", dir.display()))?
        .tensors;
    let settings: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(at("tessera.json"))
            .with_context(|| format!("{flag} {}", at("tessera.json").display()))?,
    )
    .with_context(|| format!("{flag} {}", at("tessera.json").display()))?;
    Ok(Head {
        spec,
        tensors,
        settings,
    })
}

pub fn run(args: InterpolateArgs) -> Result<()> {
    let from = read_head(&args.from, "--from")?;
    let to = read_head(&args.to, "--to")?;
    ensure!(
        from.spec == to.spec,
        "--from and --to hold heads of different specs ({} and {}): WiSE-FT needs one shape",
        serde_json::to_string(&from.spec)?,
        serde_json::to_string(&to.spec)?
    );
    ensure!(
        from.settings == to.settings,
        "--from and --to sit on other backbones or ColBERT settings (their tessera.json differ)"
    );
    let tensors = tessera_model::heads::start::interpolate(&from.tensors, &to.tensors, args.alpha)
        .map_err(|m| {
            anyhow::anyhow!(
                "--from {} and --to {}: {m}",
                args.from.display(),
                args.to.display()
            )
        })?;
    let head = ProjectionHead::from_spec(to.spec.clone(), tensors, &args.out)?;
    std::fs::create_dir_all(&args.out).with_context(|| args.out.display().to_string())?;
    head.save_tessera(&args.out, to.spec.in_dim)?;
    let write = |name: &str, v: &serde_json::Value| -> Result<()> {
        let p = args.out.join(name);
        std::fs::write(&p, serde_json::to_vec_pretty(v)?).with_context(|| p.display().to_string())
    };
    write("tessera.json", &to.settings)?;
    write(
        "training.json",
        &serde_json::json!({
            "tessera": env!("CARGO_PKG_VERSION"),
            "command": std::env::args().collect::<Vec<_>>(),
            "interpolation": {
                "from": tessera_engine::model::absolute(&args.from),
                "to": tessera_engine::model::absolute(&args.to),
                "alpha": args.alpha,
            },
        }),
    )?;
    eprintln!(
        "wrote (1 − {a})·{} + {a}·{} to {}",
        args.from.display(),
        args.to.display(),
        args.out.display(),
        a = args.alpha
    );
    Ok(())
}
