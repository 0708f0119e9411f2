//! `tessera`: the command-line face of the Tessera retrieval engine.
//!
//! The binary is a thin face over the `tessera_engine` library: each
//! subcommand (in [`cli::commands`]) turns its flags into library options,
//! makes one library call and prints. This file parses arguments, sets up
//! logging, and turns errors into a message and exit status 1.

mod cli;

use clap::{Parser, Subcommand};

/// Tessera: a multi-vector (ColBERT-style) retrieval engine.
#[derive(Parser)]
#[command(name = "tessera", version, about, long_about = None)]
#[command(after_help = "Examples:\n  \
    tessera index build --input corpus.jsonl --out my.idx\n  \
    tessera search --index my.idx \"what causes tides?\"\n  \
    tessera serve --index my.idx --addr 127.0.0.1:50051\n  \
    tessera query --addr 127.0.0.1:50051 \"what causes tides?\"\n  \
    tessera eval --dataset path/to/beir/scifact --split dev\n  \
    tessera encode --query \"what causes tides?\"\n  \
    tessera score --query \"what causes tides?\" --doc \"The Moon's gravity pulls the oceans.\"\n  \
    tessera train heads --dataset path/to/beir/scifact --head ffn --residual --dim 128 --out my-head\n  \
    tessera train reduce --dataset path/to/beir/scifact --dims 16,32,64 --out my-reduction\n  \
    tessera reduce plan --dataset path/to/beir/scifact --budget 16 --reduction my-reduction\n\n\
    Logs go to stderr; set RUST_LOG=debug for more.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Index(cli::commands::index::IndexArgs),
    Search(cli::commands::search::SearchArgs),
    Serve(Box<cli::commands::serve::ServeArgs>),
    Query(cli::commands::query::QueryArgs),
    Eval(Box<cli::commands::eval::EvalArgs>),
    EncodeCorpus(cli::commands::encode_corpus::EncodeCorpusArgs),
    Encode(cli::commands::encode::EncodeArgs),
    Score(cli::commands::score::ScoreArgs),
    Train(cli::commands::train::TrainArgs),
    Export(cli::commands::export::ExportArgs),
    Reduce(cli::commands::reduce::ReduceArgs),
    Shards(cli::commands::shards::ShardsArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The server logs one line per call (info); other commands stay quiet.
    let default_filter = match cli.command {
        Command::Serve(_) => "warn,tessera=info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
    let result = match cli.command {
        Command::Index(args) => cli::commands::index::run(args),
        Command::Search(args) => cli::commands::search::run(args),
        Command::Serve(args) => cli::commands::serve::run(*args),
        Command::Query(args) => cli::commands::query::run(args),
        Command::Eval(args) => cli::commands::eval::run(*args),
        Command::EncodeCorpus(args) => cli::commands::encode_corpus::run(args),
        Command::Encode(args) => cli::commands::encode::run(args),
        Command::Score(args) => cli::commands::score::run(args),
        Command::Train(args) => cli::commands::train::run(args),
        Command::Export(args) => cli::commands::export::run(args),
        Command::Reduce(args) => cli::commands::reduce::run(args),
        Command::Shards(args) => cli::commands::shards::run(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // A closed standard output (`tessera … | head`) ends the command
        // quietly, as in other Unix tools.
        Err(e) if is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether `e` comes from writing to a closed pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<tessera_engine::EngineError>()
                .is_some_and(|e| e.is_io(std::io::ErrorKind::BrokenPipe))
            || c.downcast_ref::<serde_json::Error>()
                .and_then(|j| j.io_error_kind())
                .is_some_and(|k| k == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// Every command a user runs (each leaf of the command tree) explains
    /// each of its options and shows an example in `--help`.
    #[test]
    fn every_command_has_an_example_and_every_option_a_help_line() {
        fn walk(cmd: &clap::Command, path: &str, problems: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.has_subcommands() {
                for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                    walk(sub, &path, problems);
                }
                return;
            }
            let after = cmd
                .get_after_help()
                .or(cmd.get_after_long_help())
                .map(|s| s.to_string())
                .unwrap_or_default();
            if !after.contains("Example") {
                problems.push(format!("{path}: no example"));
            }
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                if arg.get_help().is_none() && arg.get_long_help().is_none() {
                    problems.push(format!("{path} --{id}: no help"));
                }
            }
        }
        let mut problems = Vec::new();
        walk(&super::Cli::command(), "", &mut problems);
        assert!(problems.is_empty(), "{problems:#?}");
    }
}
