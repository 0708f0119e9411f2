//! `tessera export`: writes a model in another layout.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use clap::Args;

/// Export a model to another checkpoint layout (PyLate).
#[derive(Args, Debug)]
#[command(after_help = "Example:\n  \
    tessera export --pylate --model heads/ffn-128 --out heads/ffn-128-pylate\n  \
    tessera encode --model heads/ffn-128-pylate --query \"what causes tides?\"\n\n\
    Identity, linear and FFN heads (without LayerNorm or a whole-stack residual) export as\n\
    PyLate Dense modules; the folder loads in Tessera (and PyLate) to the same vectors.")]
pub struct ExportArgs {
    /// Write the PyLate (sentence-transformers) layout.
    #[arg(long)]
    pub pylate: bool,
    /// The Tessera model folder to export (default: the default model).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// The folder to write.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

pub fn run(args: ExportArgs) -> Result<()> {
    ensure!(args.pylate, "say which layout to export to: --pylate");
    let src = match args.model {
        Some(m) => m,
        None => tessera_engine::model::default_model()?,
    };
    tessera_model::export::export_pylate(&src, &args.out)
        .with_context(|| format!("exporting {}", src.display()))?;
    eprintln!(
        "exported {} to {} (PyLate layout)",
        src.display(),
        args.out.display()
    );
    Ok(())
}
