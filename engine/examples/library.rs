//! Tessera as a library: build an index from documents held in memory with
//! the default model, open it, and search it with the default (hybrid)
//! retriever — no command line involved.
//!
//! ```text
//! cargo run --release -p tessera-engine --example library -- /tmp/example.idx
//! ```

use tessera_engine::ingest::{build_from_documents, TextDocument};
use tessera_engine::model::ModelOptions;
use tessera_engine::retrieve::{Engine, Retriever};
use tessera_index::{BuildOptions, SearchParams};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "example.idx".into());
    let out = std::path::Path::new(&out);

    // The default model (the trained head over all-MiniLM-L6-v2).
    let model = ModelOptions::default();
    let encoder = model.load()?;

    // Any iterator of documents will do: a database cursor, a crawl, ...
    let texts = [
        (
            "tides",
            "Tides",
            "The Moon's gravity pulls the oceans, raising tides.",
        ),
        (
            "seasons",
            "Seasons",
            "Earth's tilted axis gives the year its seasons.",
        ),
        (
            "eclipse",
            "Eclipses",
            "A solar eclipse happens when the Moon hides the Sun.",
        ),
    ];
    let docs = texts.iter().map(|(id, title, text)| TextDocument {
        id: id.to_string(),
        title: title.to_string(),
        text: text.to_string(),
        metadata: serde_json::Value::Null,
    });
    let opts = BuildOptions {
        overwrite: true,
        ..BuildOptions::default()
    };
    let stats = build_from_documents(&encoder, docs, out, opts)?;
    println!("indexed {} documents, {} tokens", stats.docs, stats.tokens);

    // Open the index with the model that built it, and search.
    let engine = Engine::open(out, &model, Retriever::Hybrid)?;
    let query = "what causes tides?";
    let vectors = engine.encode_queries(&[query])?;
    let params = SearchParams {
        k: 3,
        ..SearchParams::default()
    };
    for (rank, hit) in engine
        .rank(Retriever::Hybrid, query, vectors.first(), &params)?
        .iter()
        .enumerate()
    {
        println!("{}. {} {:.3}", rank + 1, hit.id, hit.score);
    }
    Ok(())
}
