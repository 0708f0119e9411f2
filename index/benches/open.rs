//! What checking every file at open costs: `Index::open` of each index
//! given on the command line, verifying every file's CRC-32 (what a fresh
//! process does), against opening it again in the same process, where
//! unchanged files are not read again (sizes and array shapes only). Page
//! cache warm in both (the first, unmeasured open reads the files in).
//!
//!   cargo bench -p tessera-index --bench open -- DIR [DIR ...] [--runs 7]

use std::path::PathBuf;
use std::time::Instant;

use tessera_index::{io::forget_verified, Index};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let mut dirs = Vec::new();
    let mut runs = 7;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().and_then(|n| n.parse().ok()).unwrap_or(runs),
            "--bench" => {}
            other => dirs.push(PathBuf::from(other)),
        }
    }
    if dirs.is_empty() {
        eprintln!("usage: open DIR [DIR ...] [--runs N]");
        std::process::exit(2);
    }
    println!("| index | files | bytes | open, verifying every file (ms) | open again, unchanged files not re-read (ms) |");
    println!("|---|---:|---:|---:|---:|");
    for dir in dirs {
        let ix = match Index::open(&dir) {
            Ok(ix) => ix,
            Err(e) => {
                eprintln!("{}: {e}", dir.display());
                std::process::exit(1);
            }
        };
        let report = ix.verify().expect("verifies");
        drop(ix);
        let (mut full, mut cached) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            forget_verified();
            let t = Instant::now();
            drop(Index::open(&dir).expect("opens"));
            full.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            drop(Index::open(&dir).expect("opens"));
            cached.push(t.elapsed().as_secs_f64() * 1e3);
        }
        println!(
            "| {} | {} | {} | {:.1} | {:.1} |",
            dir.file_name().unwrap_or_default().to_string_lossy(),
            report.files,
            report.bytes,
            median(full),
            median(cached)
        );
    }
}
