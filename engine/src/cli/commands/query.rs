//! `tessera query`: search a running `tessera serve` over gRPC, one query
//! or a file of them (writing a TREC run that `tessera eval --run` scores
//! like a local one).

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use tessera_proto::v1 as pb;
use tessera_proto::TesseraClient;

use tessera_engine::progress;

use crate::cli::args::{CandidatesArg, QueryInput, RetrieverArg};
use crate::cli::print::write_hit;

/// Query a running `tessera serve` over gRPC.
#[derive(Args, Debug)]
#[command(after_help = "Examples:\n  \
    tessera query --addr 127.0.0.1:50051 \"coffee reduces the risk of diabetes\"\n  \
    tessera query --addr 127.0.0.1:50051 --retriever hybrid -k 5 --json \"vitamin D and bone density\"\n  \
    tessera query --addr 127.0.0.1:50051 --allow-partial \"statins and muscle pain\"\n  \
    tessera query --queries queries.jsonl --run-out run.trec -k 100\n  \
    TESSERA_API_KEY=r-0123456789abcdef tessera query --addr search.example.com:50051 --tls-ca ca.pem \"dietary fibre\"\n  \
    tessera eval --run run.trec --qrels qrels/dev.tsv")]
pub struct QueryArgs {
    /// The server, HOST:PORT (or an http:// or https:// URL). HOST:PORT
    /// means https with any --tls-* flag, else plaintext.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub addr: String,
    #[command(flatten)]
    pub input: QueryInput,
    /// Ranking: hybrid (MaxSim fused with BM25, the default), colbert
    /// (MaxSim alone) or bm25.
    #[arg(long, value_enum, default_value_t = RetrieverArg::Hybrid)]
    pub retriever: RetrieverArg,
    /// MaxSim candidate generation (default: the server's).
    #[arg(long, value_enum)]
    pub candidates: Option<CandidatesArg>,
    /// Metadata filter as JSON (the language of `tessera search --filter`).
    #[arg(long, value_name = "JSON")]
    pub filter: Option<String>,
    /// With --queries: queries per call.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Deadline of each call, ms.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    pub timeout_ms: u64,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Against a front end over shards (python -m tessera_ray serve):
    /// answer from the shards that are up, naming the missing ones on
    /// stderr, instead of failing with UNAVAILABLE.
    #[arg(long)]
    pub allow_partial: bool,
    /// A file holding the API key to send (`authorization: Bearer KEY`), for
    /// a server started with --api-keys. Default: $TESSERA_API_KEY.
    #[arg(long, value_name = "FILE")]
    pub api_key_file: Option<std::path::PathBuf>,
    /// Speak TLS and trust this CA (PEM) for the server's certificate (with
    /// https:// and no CA: the system's roots).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM), for a server run with --tls-client-ca.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// The name the server's certificate must carry, when it is not the
    /// host of --addr.
    #[arg(long, value_name = "NAME")]
    pub tls_domain: Option<String>,
}

fn retriever(r: RetrieverArg) -> pb::Retriever {
    match r {
        RetrieverArg::Colbert => pb::Retriever::Colbert,
        RetrieverArg::Bm25 => pb::Retriever::Bm25,
        RetrieverArg::Hybrid => pb::Retriever::Hybrid,
    }
}

impl QueryArgs {
    fn query(&self, id: &str, text: &str, fields: bool) -> pb::Query {
        pb::Query {
            id: id.to_owned(),
            text: text.to_owned(),
            vectors: None,
            k: self.input.k,
            retriever: retriever(self.retriever) as i32,
            candidates: self.candidates.map(|c| pb::CandidateParams {
                generator: match c {
                    CandidatesArg::Plaid => pb::CandidateGenerator::Plaid,
                    CandidatesArg::Hnsw => pb::CandidateGenerator::Hnsw,
                    CandidatesArg::Exhaustive => pb::CandidateGenerator::Exhaustive,
                } as i32,
                ..Default::default()
            }),
            filter: self.filter.clone().unwrap_or_default(),
            fields: Some(pb::Fields {
                title: fields,
                text: fields,
                metadata: fields,
            }),
            bm25_stats: None,
        }
    }
}

/// The endpoint URL of `addr` (`https` for a bare HOST:PORT when `tls`).
pub fn endpoint(addr: &str, tls: bool) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

/// Whether any `--tls-*` flag asks for TLS.
fn tls_flags(args: &QueryArgs) -> bool {
    args.tls_ca.is_some() || args.tls_cert.is_some() || args.tls_domain.is_some()
}

/// The TLS settings of the client, when it speaks TLS.
fn client_tls(args: &QueryArgs, url: &str) -> Result<Option<tonic::transport::ClientTlsConfig>> {
    if !tls_flags(args) && !url.starts_with("https://") {
        return Ok(None);
    }
    let read = |p: &std::path::Path, flag: &str| {
        std::fs::read(p).with_context(|| format!("{flag} {}", p.display()))
    };
    let mut config = tonic::transport::ClientTlsConfig::new();
    config = match &args.tls_ca {
        Some(ca) => config.ca_certificate(tonic::transport::Certificate::from_pem(read(
            ca, "--tls-ca",
        )?)),
        None => config.with_native_roots(),
    };
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config = config.identity(tonic::transport::Identity::from_pem(
            read(cert, "--tls-cert")?,
            read(key, "--tls-key")?,
        ));
    }
    if let Some(d) = &args.tls_domain {
        config = config.domain_name(d.clone());
    }
    Ok(Some(config))
}

/// A gRPC status as an error that says which call failed and how.
fn status_error(s: tonic::Status, addr: &str) -> anyhow::Error {
    anyhow::anyhow!("{addr}: {:?}: {}", s.code(), s.message())
}

/// `Bearer KEY` from `--api-key-file`, else `$TESSERA_API_KEY`, else none.
fn api_key(
    file: Option<&std::path::Path>,
) -> Result<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>> {
    let key = match file {
        Some(f) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("--api-key-file {}", f.display()))?,
        ),
        None => std::env::var("TESSERA_API_KEY").ok(),
    };
    let Some(key) = key.map(|k| k.trim().to_owned()).filter(|k| !k.is_empty()) else {
        return Ok(None);
    };
    let value = format!("Bearer {key}")
        .parse()
        .map_err(|_| anyhow::anyhow!("the API key holds characters a header cannot carry"))?;
    Ok(Some(value))
}

pub fn run(args: QueryArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(query(args))
}

async fn query(args: QueryArgs) -> Result<()> {
    let url = endpoint(&args.addr, tls_flags(&args));
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .with_context(|| format!("--addr {:?} is not a valid address", args.addr))?
        .connect_timeout(Duration::from_secs(5));
    if let Some(config) = client_tls(&args, &url)? {
        endpoint = endpoint
            .tls_config(config)
            .context("configuring TLS (are --tls-ca, --tls-cert and --tls-key PEM files?)")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot connect to {url} (is `tessera serve` running?)"))?;
    let mut client = TesseraClient::new(channel).max_decoding_message_size(usize::MAX);
    let timeout = Duration::from_millis(args.timeout_ms.max(1));
    let bearer = api_key(args.api_key_file.as_deref())?;
    let call = |queries: Vec<pb::Query>| {
        let mut req = tonic::Request::new(pb::SearchRequest {
            queries,
            allow_partial: args.allow_partial,
        });
        req.set_timeout(timeout);
        if let Some(b) = &bearer {
            req.metadata_mut().insert("authorization", b.clone());
        }
        req
    };
    if let Some(queries) = args.input.batch()? {
        let t = Instant::now();
        let pb_ = progress::bar(Some(queries.len() as u64), "queries");
        pb_.set_prefix("querying");
        let mut run = tessera_eval::Run::default();
        for chunk in queries.chunks(args.batch as usize) {
            let batch = chunk
                .iter()
                .map(|q| args.query(&q.id, &q.text, false))
                .collect();
            let resp = client
                .search(call(batch))
                .await
                .map_err(|s| status_error(s, &args.addr))?
                .into_inner();
            warn_missing(&resp.missing_shards);
            for r in resp.results {
                run.results.insert(
                    r.id,
                    r.hits.into_iter().map(|h| (h.id, h.score as f64)).collect(),
                );
            }
            pb_.inc(chunk.len() as u64);
        }
        pb_.finish_and_clear();
        let name = format!(
            "tessera-grpc-{}",
            tessera_engine::Retriever::from(args.retriever)
        );
        return args.input.write_run(&run, &name, queries.len(), t);
    }
    let text = args.input.text()?;
    let t = Instant::now();
    let resp = client
        .search(call(vec![args.query("", text, true)]))
        .await
        .map_err(|s| status_error(s, &args.addr))?
        .into_inner();
    let took = t.elapsed().as_secs_f64() * 1e3;
    warn_missing(&resp.missing_shards);
    let shards: Vec<_> = resp
        .shards
        .iter()
        .map(|s| serde_json::json!({"shard": s.shard, "ms": s.total_ms, "hits": s.hits, "replica": s.replica}))
        .collect();
    let result = resp
        .results
        .into_iter()
        .next()
        .context("the server sent no result")?;
    let timings = result.timings.unwrap_or_default();
    let mut w = std::io::stdout().lock();
    if args.json {
        let rows: Vec<_> = result
            .hits
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let meta: serde_json::Value = h
                    .metadata_json
                    .as_deref()
                    .and_then(|m| serde_json::from_str(m).ok())
                    .unwrap_or(serde_json::Value::Null);
                serde_json::json!({"rank": i + 1, "score": h.score, "id": h.id,
                    "title": h.title, "text": h.text, "metadata": meta})
            })
            .collect();
        serde_json::to_writer(
            &mut w,
            &serde_json::json!({"query": text, "retriever": tessera_engine::Retriever::from(args.retriever), "took_ms": took,
                "generation": resp.generation,
                "shards": shards, "missing_shards": resp.missing_shards,
                "server_ms": {"queue": timings.queue_ms, "encode": timings.encode_ms,
                    "candidates": timings.candidates_ms, "rerank": timings.rerank_ms,
                    "total": timings.total_ms},
                "results": rows}),
        )?;
        writeln!(w)?;
        return Ok(());
    }
    if result.hits.is_empty() {
        writeln!(w, "no results")?;
    }
    for (i, h) in result.hits.iter().enumerate() {
        let (title, text) = (h.title.as_deref(), h.text.as_deref());
        write_hit(
            &mut w,
            i + 1,
            h.score,
            &h.id,
            title.unwrap_or(""),
            text.unwrap_or(""),
        )?;
    }
    writeln!(
        w,
        "({} results, {} retriever, {took:.1} ms; server: encode {:.1}, candidates {:.1}, re-rank {:.1} ms)",
        result.hits.len(),
        tessera_engine::Retriever::from(args.retriever),
        timings.encode_ms,
        timings.candidates_ms,
        timings.rerank_ms
    )?;
    Ok(())
}

/// Names, on stderr, the shards a partial answer lacks.
fn warn_missing(missing: &[String]) {
    if !missing.is_empty() {
        eprintln!(
            "warning: partial answer: shard{} {} did not answer",
            if missing.len() == 1 { "" } else { "s" },
            missing.join(", ")
        );
    }
}
