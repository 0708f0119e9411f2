//! Index benchmark on clustered synthetic token vectors (fixed seed):
//! per codec, build time and tokens/s, bytes per token, peak RSS; per
//! candidate generator, single-query latency p50/p99 (one thread and all
//! threads), batch queries/s, recall@10 and recall@100 against exhaustive
//! search on the same index, and the codec's recall@10 against f32.
//!
//! ```text
//! cargo bench -p tessera-index --bench index -- --tokens 1000000 \
//!     [--codecs f32,f16,int8,residual1,residual2,residual4] [--generators exhaustive,plaid,hnsw]
//!     [--queries 100] [--dim 128] [--dir PATH] [--budget-mb 1024] [--n-probe 4] [--n-candidates 256]
//! ```
//! Prints one JSON line per (codec, generator) and a Markdown table.

use std::path::PathBuf;
use std::time::Instant;

use tessera_eval::stats::p50_p99;
use tessera_index::recall_at;
use tessera_index::synthetic::Synthetic;
use tessera_index::*;

const USAGE: &str = "usage: scripts/bench-index [--tokens 1000000] [--codecs f32,f16,int8,residual1,residual2,residual4]
       [--generators exhaustive,plaid,hnsw] [--queries 100] [--dim 128] [--dir PATH] [--budget-mb 1024]
       [--n-probe 32] [--n-candidates 64] [--threshold 0.4] [--keep]
       scripts/bench-index --scale   (residual2 + plaid at 1M, 5M and 20M tokens)
example: scripts/bench-index --tokens 1000000 --codecs residual2 --generators plaid --n-probe 16,32";

struct Args {
    tokens: usize,
    codecs: Vec<String>,
    generators: Vec<String>,
    queries: usize,
    dim: usize,
    dir: PathBuf,
    budget_mb: usize,
    n_probe: Vec<usize>,
    n_candidates: Vec<usize>,
    threshold: f32,
    keep: bool,
    centroids: Option<usize>,
    unit_centroids: bool,
    refine_passes: Option<usize>,
}

fn args() -> Args {
    let mut a = Args {
        tokens: 1_000_000,
        codecs: vec![
            "f32".into(),
            "f16".into(),
            "int8".into(),
            "residual1".into(),
            "residual2".into(),
            "residual4".into(),
        ],
        generators: vec!["exhaustive".into(), "plaid".into(), "hnsw".into()],
        queries: 100,
        dim: 128,
        dir: std::env::temp_dir().join("tessera-bench-index"),
        budget_mb: 1024,
        n_probe: vec![SearchParams::default().n_probe],
        n_candidates: vec![SearchParams::default().n_candidates],
        threshold: SearchParams::default().centroid_threshold,
        keep: false,
        centroids: None,
        unit_centroids: false,
        refine_passes: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--tokens" => a.tokens = v().parse().unwrap(),
            "--codecs" => a.codecs = v().split(',').map(String::from).collect(),
            "--generators" => a.generators = v().split(',').map(String::from).collect(),
            "--queries" => a.queries = v().parse().unwrap(),
            "--dim" => a.dim = v().parse().unwrap(),
            "--dir" => a.dir = v().into(),
            "--budget-mb" => a.budget_mb = v().parse().unwrap(),
            "--n-probe" => a.n_probe = v().split(',').map(|x| x.parse().unwrap()).collect(),
            "--n-candidates" => {
                a.n_candidates = v().split(',').map(|x| x.parse().unwrap()).collect()
            }
            "--threshold" => a.threshold = v().parse().unwrap(),
            "--keep" => a.keep = true,
            "--centroids" => a.centroids = Some(v().parse().unwrap()),
            "--unit-centroids" => a.unit_centroids = true,
            "--refine-passes" => a.refine_passes = Some(v().parse().unwrap()),
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

fn rss_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let a = args();
    let syn = Synthetic {
        dim: a.dim,
        topics: (a.tokens / 1000).max(1024),
        ..Synthetic::default()
    };
    let threads = rayon::current_num_threads();
    std::fs::create_dir_all(&a.dir).unwrap();
    // Documents are generated in batches outside the timed region.
    let batch = 2000;
    let mut f32_truth: Option<Vec<Vec<Hit>>> = None;
    let combos: Vec<(usize, usize)> = a
        .n_probe
        .iter()
        .flat_map(|&p| a.n_candidates.iter().map(move |&c| (p, c)))
        .collect();
    let mut rows = Vec::new();
    for codec in &a.codecs {
        let path = a.dir.join(format!("idx-{codec}-{}", a.tokens));
        let _ = std::fs::remove_dir_all(&path);
        let opts = BuildOptions {
            codec: codec.parse().unwrap(),
            memory_budget: a.budget_mb << 20,
            num_centroids: a.centroids,
            mean_centroids: !a.unit_centroids,
            refine_passes: a
                .refine_passes
                .unwrap_or(BuildOptions::default().refine_passes),
            ..BuildOptions::default()
        };
        let mut b = IndexBuilder::create(&path, opts).unwrap();
        let mut build_secs = 0.0;
        let mut next = 0;
        while (b.tokens() as usize) < a.tokens {
            let docs = syn.documents(next, batch);
            next += batch;
            let t = Instant::now();
            for d in docs {
                if b.tokens() as usize >= a.tokens {
                    break;
                }
                b.add(d).unwrap();
            }
            build_secs += t.elapsed().as_secs_f64();
        }
        let n_docs = b.docs() as usize;
        let t = Instant::now();
        let stats = b.finish(&mut |_| {}).unwrap();
        build_secs += t.elapsed().as_secs_f64();
        let build_rss = rss_mib("VmHWM:");

        let index = Index::open(&path).unwrap();
        let queries = syn.queries(n_docs, a.queries);
        let exact = SearchParams {
            k: 100,
            candidates: Candidates::Exhaustive,
            ..SearchParams::default()
        };
        let mut exact_lat = Vec::new();
        let truth: Vec<Vec<Hit>> = queries
            .iter()
            .map(|q| {
                let s = Instant::now();
                let h = index.search(q, &exact).unwrap();
                exact_lat.push(s.elapsed().as_secs_f64() * 1e3);
                h
            })
            .collect();
        if f32_truth.is_none() && codec == "f32" {
            f32_truth = Some(truth.clone());
        }
        let codec_recall = f32_truth.as_ref().map(|t| {
            t.iter()
                .zip(&truth)
                .map(|(a, b)| recall_at(a, b, 10))
                .sum::<f64>()
                / queries.len() as f64
        });

        for gen in &a.generators {
            if gen == "exhaustive" {
                // Timed while computing the ground truth (k = 100, all
                // threads); exhaustive search is the reference itself.
                let total: f64 = exact_lat.iter().sum();
                let (p50, p99) = p50_p99(&exact_lat);
                let row = serde_json::json!({
                    "tokens": stats.tokens, "docs": stats.docs, "dim": a.dim, "centroids": stats.num_centroids,
                    "codec": codec, "generator": gen, "threads": threads,
                    "build_s": build_secs, "build_tokens_per_s": stats.tokens as f64 / build_secs,
                    "bytes_per_token": stats.bytes_per_token,
                    "p50_ms_all": p50, "p99_ms_all": p99,
                    "qps_batch": queries.len() as f64 / (total / 1e3), "recall10": 1.0, "recall100": 1.0,
                    "codec_recall10_vs_f32": codec_recall,
                    "build_peak_rss_mib": build_rss, "rss_mib": rss_mib("VmRSS:"),
                });
                println!("{row}");
                rows.push(row);
                continue;
            }
            for &(n_probe, n_candidates) in &combos {
                let p = SearchParams {
                    k: 100,
                    candidates: gen.parse().unwrap(),
                    n_probe,
                    n_candidates,
                    centroid_threshold: a.threshold,
                    ..SearchParams::default()
                };
                let p10 = SearchParams { k: 10, ..p.clone() };
                // Warm-up (and HNSW graph construction).
                index.search(&queries[0], &p10).unwrap();
                let mut lat_all = Vec::new();
                let mut lat_100 = Vec::new();
                let mut r10 = 0.0;
                let mut r100 = 0.0;
                let mut r10_at_100 = 0.0;
                for (q, t) in queries.iter().zip(&truth) {
                    let s = Instant::now();
                    let hits = index.search(q, &p10).unwrap();
                    lat_all.push(s.elapsed().as_secs_f64() * 1e3);
                    r10 += recall_at(t, &hits, 10);
                    let s = Instant::now();
                    let hits100 = index.search(q, &p).unwrap();
                    lat_100.push(s.elapsed().as_secs_f64() * 1e3);
                    r100 += recall_at(t, &hits100, 100);
                    r10_at_100 += recall_at(t, &hits100, 10);
                }
                let one = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .unwrap();
                let lat_one: Vec<f64> = one.install(|| {
                    queries
                        .iter()
                        .map(|q| {
                            let s = Instant::now();
                            index.search(q, &p10).unwrap();
                            s.elapsed().as_secs_f64() * 1e3
                        })
                        .collect()
                });
                let s = Instant::now();
                index.search_batch(&queries, &p10).unwrap();
                let qps = queries.len() as f64 / s.elapsed().as_secs_f64();
                let n = queries.len() as f64;
                let (all, one, k100) = (p50_p99(&lat_all), p50_p99(&lat_one), p50_p99(&lat_100));
                let row = serde_json::json!({
                    "tokens": stats.tokens, "docs": stats.docs, "dim": a.dim, "centroids": stats.num_centroids,
                    "codec": codec, "generator": gen, "threads": threads,
                    "build_s": build_secs, "build_tokens_per_s": stats.tokens as f64 / build_secs,
                    "bytes_per_token": stats.bytes_per_token,
                    "p50_ms_all": all.0, "p99_ms_all": all.1,
                    "p50_ms_1t": one.0, "p99_ms_1t": one.1,
                    "p50_ms_k100": k100.0, "p99_ms_k100": k100.1,
                    "qps_batch": qps, "recall10": r10 / n, "recall100": r100 / n,
                    "recall10_at_k100": r10_at_100 / n,
                    "codec_recall10_vs_f32": codec_recall,
                    "build_peak_rss_mib": build_rss, "rss_mib": rss_mib("VmRSS:"),
                    "n_probe": n_probe, "n_candidates": n_candidates,
                });
                println!("{row}");
                rows.push(row);
            }
        }
        drop(index);
        if !a.keep {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
    println!();
    println!("| tokens | codec | generator | n_probe | n_cand | build s | build tok/s | B/token | p50 ms (all) | p99 ms (all) | p50 ms (1 thr) | p99 ms (1 thr) | QPS batch | R@10 | R@100 | codec R@10 vs f32 | peak RSS MiB |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.0} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} | {:.3} | {:.3} | {} | {:.0} |",
            r["tokens"], r["codec"].as_str().unwrap(), r["generator"].as_str().unwrap(),
            r.get("n_probe").map_or("–".into(), |x| x.to_string()),
            r.get("n_candidates").map_or("–".into(), |x| x.to_string()),
            f("build_s"), f("build_tokens_per_s"), f("bytes_per_token"),
            f("p50_ms_all"), f("p99_ms_all"), f("p50_ms_1t"), f("p99_ms_1t"), f("qps_batch"),
            f("recall10"), f("recall100"),
            r["codec_recall10_vs_f32"].as_f64().map_or("–".into(), |x| format!("{x:.3}")),
            f("build_peak_rss_mib"),
        );
    }
}
