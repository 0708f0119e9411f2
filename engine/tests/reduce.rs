//! Reductions end to end on the tiny BERT: `train reduce` writes a
//! reduction folder (orthogonal basis, nested dims, curves, checkpoint that
//! resumes); `index build --reduction --dim 32` builds an index that
//! records it and searches like the full one; `reduce plan` measures the
//! pairs that fit a budget; bad input is refused naming the file or option.

mod common;

use std::path::Path;

use common::{
    err, ids, index_info, model64_fixture, ok, reduced_fixture, run, search_json, tiny,
    toy_dataset, train_reduce, TOPICS,
};
use tessera_model::reduction::{Method, Reduction, Side};
use tessera_model::tch::{Kind, Tensor};

/// `tessera index build` of `corpus` into `out` with `model` (f16, CPU).
fn index_build(
    corpus: &Path,
    out: &Path,
    model: &Path,
    extra: &[&str],
    envs: &[(&str, &str)],
) -> std::process::Output {
    let mut a = vec![
        "index",
        "build",
        "--input",
        corpus.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--threads",
        "1",
        "--codec",
        "f16",
    ];
    a.extend_from_slice(extra);
    run(&a, envs, None)
}

/// `tessera search` of "moon tides" in `index` with `extra` options, which
/// must fail: its stderr.
fn search_err(index: &Path, extra: &[&str], envs: &[(&str, &str)]) -> String {
    let mut a = vec![
        "search",
        "--index",
        index.to_str().unwrap(),
        "--device",
        "cpu",
    ];
    a.extend_from_slice(extra);
    a.push("moon tides");
    err(&run(&a, envs, None))
}

fn build(corpus: &Path, out: &Path, model: &Path, extra: &[&str], envs: &[(&str, &str)]) -> String {
    ok(&index_build(corpus, out, model, extra, envs))
}

#[test]
fn a_trained_reduction_builds_searches_and_plans() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let envs = [("TESSERA_HOME", home.to_str().unwrap())];
    let (ds, model, red_dir) = reduced_fixture(dir.path(), &envs);

    // The folder: files, an orthogonal basis, the nested set, the record.
    for f in [
        "reduction.json",
        "reduction.safetensors",
        "metrics.jsonl",
        "dev.png",
        "dev.svg",
        "checkpoint/state.json",
    ] {
        assert!(red_dir.join(f).is_file(), "{f} missing");
    }
    let red = Reduction::load(&red_dir).unwrap();
    assert_eq!(red.meta.method, Method::Orthogonal);
    assert_eq!((red.in_dim(), red.meta.dims.clone()), (64, vec![16, 32]));
    assert!(red.orthogonality_error() <= 1e-5);
    let rec = &red.meta.training;
    assert_eq!(rec["config"]["steps"], 8);
    assert!(
        rec["best"]["per_dim"].as_array().unwrap().len() == 2,
        "{rec}"
    );
    assert!(rec["full"]["ndcg10"].as_f64().is_some(), "{rec}");
    let metrics = std::fs::read_to_string(red_dir.join("metrics.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["type"] == "step")
        .collect();
    assert_eq!(steps.len(), 8);
    assert!(steps
        .iter()
        .all(|s| s["step"]["orthogonality"].as_f64().unwrap() <= 1e-5));

    // An index at r = 32 records the reduction and finds each topic's
    // document like the full-width index does.
    let corpus = ds.join("corpus.jsonl");
    let small = dir.path().join("small.idx");
    let full = dir.path().join("full.idx");
    let rs = red_dir.to_str().unwrap();
    build(
        &corpus,
        &small,
        &model,
        &["--reduction", rs, "--dim", "32"],
        &envs,
    );
    build(&corpus, &full, &model, &[], &envs);
    let info = index_info(&small, &envs);
    assert_eq!(info["dim"], 32);
    assert_eq!(info["info"]["reduction"]["dim"], 32);
    assert_eq!(info["info"]["reduction"]["method"], "orthogonal");
    assert_eq!(
        info["info"]["reduction"]["fingerprint"],
        red.fingerprint().as_str()
    );
    let mut agree = 0;
    for t in TOPICS {
        let q = format!("what about {t}");
        let a = ids(&search_json(&small, &q, &["-k", "3"]));
        let b = ids(&search_json(&full, &q, &["-k", "3"]));
        assert_eq!(a.len(), 3);
        agree += usize::from(a[0] == b[0]);
    }
    assert!(agree >= 6, "top hits agree on {agree} of 8 topics");
    // Searching with the same reduction is accepted, with none too (the
    // index applies its own).
    search_json(&small, "moon tides", &["--reduction", rs, "--dim", "32"]);

    // The planner: every pair within 40 bytes/token at dims 16, 32, 64,
    // plus the full f16 reference; a recommendation.
    // `reduce plan` on the fixture with `extra` options: its stdout and JSON.
    let plan_run = |name: &str, extra: &[&str]| {
        let json = dir.path().join(name);
        let mut a = plan_args(&ds, rs, &model);
        a.extend_from_slice(extra);
        a.extend_from_slice(&["--threads", "1", "--json", json.to_str().unwrap()]);
        let out = ok(&run(&a, &envs, None));
        let plan: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        (out, plan)
    };
    let (out, plan) = plan_run(
        "plan.json",
        &["--budget", "40", "--codecs", "f16,residual2"],
    );
    assert!(out.contains("recommended within 40 bytes/token"), "{out}");
    let rows = plan["rows"].as_array().unwrap();
    let pairs: Vec<(u64, &str)> = rows
        .iter()
        .map(|r| (r["dim"].as_u64().unwrap(), r["codec"].as_str().unwrap()))
        .collect();
    // f16: 16 → 36 B fits, 32 → 68 does not; residual2: 16 → 8, 32 → 12,
    // 64 → 20; the 64-dim f16 reference (132 B) is measured over budget.
    assert_eq!(
        pairs,
        vec![
            (16, "f16"),
            (16, "residual2"),
            (32, "residual2"),
            (64, "residual2"),
            (64, "f16")
        ]
    );
    assert!(rows.iter().all(|r| r["ndcg10"].as_f64().unwrap() >= 0.0));
    assert_eq!(rows[4]["fits"], false);
    assert!(plan["recommended"]["fits"].as_bool().unwrap());

    // Centroid counts and search settings as axes, the fastest above a
    // floor: 2 pairs × 2 centroid counts × 2 settings, and the full f16
    // index at both counts and settings (the default one is the
    // reference).
    let (out, plan) = plan_run(
        "plan-axes.json",
        &[
            "--budget",
            "12",
            "--dims",
            "16,32",
            "--codecs",
            "residual2",
            "--centroids",
            "auto,16",
            "--probes",
            "32/512,8/128/128/512",
            "--min-share",
            "0.5",
            "--rounds",
            "2",
        ],
    );
    assert!(out.contains("search it: tessera search"), "{out}");
    let rows = plan["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 12, "{rows:?}");
    let reduced: Vec<&serde_json::Value> = rows.iter().filter(|r| r["fits"] == true).collect();
    assert_eq!(reduced.len(), 8);
    assert!(reduced.iter().any(|r| r["centroids"] == 16));
    assert!(reduced
        .iter()
        .any(|r| r["n_probe"] == 8 && r["rerank_budget"] == 512));
    let reference = &plan["reference"];
    assert_eq!(reference["dim"], 64);
    assert_eq!(reference["default_settings"], true);
    assert_eq!(
        rows.iter()
            .filter(|r| r["dim"] == 64 && r["default_settings"] == true)
            .count(),
        1
    );
    let pick = &plan["recommended"];
    let floor = 0.5 * reference["ndcg10"].as_f64().unwrap();
    assert!(pick["ndcg10"].as_f64().unwrap() >= floor);
    // No faster fitting row clears the floor.
    let p50 = pick["search_p50_ms"].as_f64().unwrap();
    assert!(reduced
        .iter()
        .all(|r| r["ndcg10"].as_f64().unwrap() < floor
            || r["search_p50_ms"].as_f64().unwrap() >= p50));
    // The full-width index at the pick's settings is reported beside it.
    let matched = &plan["reference_at_recommended_settings"];
    assert_eq!(matched["dim"], 64);
    assert_eq!(matched["centroids"], pick["centroids"]);
    assert_eq!(matched["n_probe"], pick["n_probe"]);
}

#[test]
fn queries_and_documents_centred_differently_build_and_search() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let envs = [("TESSERA_HOME", home.to_str().unwrap())];
    let (ds, model) = model64_fixture(dir.path(), &envs);
    let pca = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut a = vec!["--method", "pca", "--dims", "16,32"];
        a.extend_from_slice(extra);
        (train_reduce(&ds, &model, &out, &a, &envs), out)
    };
    let (o, plain) = pca("pca", &[]);
    ok(&o);
    let (o, centred) = pca(
        "pca-centred",
        &["--centre-queries", "0", "--centre-documents", "1"],
    );
    ok(&o);
    let red = Reduction::load(&centred).unwrap();
    assert_eq!(
        (red.meta.centring.queries, red.meta.centring.documents),
        (0.0, 1.0)
    );
    assert_ne!(
        red.fingerprint(),
        Reduction::load(&plain).unwrap().fingerprint()
    );

    // The index keeps the queries' own mean beside the documents' and scores
    // exactly as the library's reduction does: uncentred queries against
    // centred documents.
    let corpus = ds.join("corpus.jsonl");
    let small = dir.path().join("small.idx");
    let cs = centred.to_str().unwrap();
    build(
        &corpus,
        &small,
        &model,
        &["--reduction", cs, "--dim", "32"],
        &envs,
    );
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(small.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["reduction"]["query_mean"], true, "{manifest}");
    let info = index_info(&small, &envs);
    assert_eq!(info["info"]["reduction"]["centring"]["queries"], 0.0);
    let ms = model.to_str().unwrap();
    let encode = |flag: &str, text: &str| -> Tensor {
        let out = ok(&run(
            &[
                "encode", "--model", ms, "--device", "cpu", "--json", flag, text,
            ],
            &envs,
            None,
        ));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        let rows: Vec<f32> = v["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|t| t["vector"].as_array().unwrap().iter())
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        Tensor::from_slice(&rows).view([-1, 64])
    };
    let docs: Vec<Tensor> = TOPICS
        .iter()
        .map(|t| encode("--doc", &format!("{t} all about {t} and {t}")))
        .collect();
    let maxsim = |q: &Tensor, d: &Tensor| -> f64 {
        f64::try_from(q.matmul(&d.tr()).amax([1], false).sum(Kind::Double)).unwrap()
    };
    let mut worst = 0.0f64;
    let mut apart = 0.0f64;
    for t in TOPICS.iter().take(3) {
        let text = format!("what about {t}");
        let q = encode("--query", &text);
        let qr = red.apply(&q, 32, Side::Query);
        // What centring the queries like the documents would give instead.
        let q_wrong = red.apply(&q, 32, Side::Document);
        let hits = search_json(&small, &text, &["-k", "8", "--candidates", "exhaustive"]);
        let hits = hits["results"].as_array().unwrap();
        assert_eq!(hits.len(), 8);
        for h in hits {
            let i: usize = h["id"].as_str().unwrap()[1..].parse().unwrap();
            let d = red.apply(&docs[i], 32, Side::Document);
            let got = h["score"].as_f64().unwrap();
            worst = worst.max((got - maxsim(&qr, &d)).abs());
            apart = apart.max((got - maxsim(&q_wrong, &d)).abs());
        }
    }
    assert!(
        worst < 0.02,
        "index scores differ from the reduction's by {worst}"
    );
    assert!(
        apart > 10.0 * worst,
        "centred queries would score the same ({apart} against {worst})"
    );
    // Searching it with the same numbers centred the default way is refused.
    let ps = plain.to_str().unwrap();
    let e = search_err(&small, &["--reduction", ps, "--dim", "32"], &envs);
    assert!(e.contains(ps), "{e}");
    // Planned without the full-width reference and summarised: the rows
    // carry the centring in their name, and the widest reduced dim is not
    // taken for the full width. The plans of two runs of one method (here
    // the same fit under another seed) form one row over both seeds.
    let (o, centred2) = pca(
        "pca-centred-s2",
        &[
            "--centre-queries",
            "0",
            "--centre-documents",
            "1",
            "--seed",
            "2",
        ],
    );
    ok(&o);
    let plan = |red: &Path, name: &str| {
        let json = dir.path().join(name);
        let mut a = plan_args(&ds, red.to_str().unwrap(), &model);
        a.extend_from_slice(&[
            "--budget",
            "1000",
            "--dims",
            "16,32",
            "--codecs",
            "f16",
            "--no-reference",
            "--threads",
            "1",
            "--json",
            json.to_str().unwrap(),
        ]);
        ok(&run(&a, &envs, None));
        json
    };
    let (json, json2) = (
        plan(&centred, "plan-centred.json"),
        plan(&centred2, "plan-centred-s2.json"),
    );
    let table = ok(&run(
        &[
            "reduce",
            "summarize",
            cs,
            json.to_str().unwrap(),
            json2.to_str().unwrap(),
        ],
        &envs,
        None,
    ));
    for want in [
        "| pca, centred q 0 / d 1 | 32 | 1 |",
        "| pca, centred q 0 / d 1 | 32 | f16 | 1,2 | 68 |",
        "± 0.0000 |",
    ] {
        assert!(table.contains(want), "{want} missing:\n{table}");
    }
    assert!(!table.contains("| full | 32"), "{table}");
    assert_eq!(
        table
            .matches("| pca, centred q 0 / d 1 | 32 | f16 |")
            .count(),
        1,
        "{table}"
    );
    // A fraction outside 0..=1 is refused before any work, naming the option.
    let (o, never) = pca("never", &["--centre-documents", "1.5"]);
    let e = err(&o);
    assert!(e.contains("--centre-documents"), "{e}");
    assert!(!never.exists());
}

#[test]
fn the_same_seed_trains_the_same_reduction_in_every_process() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let envs = [("TESSERA_HOME", home.to_str().unwrap())];
    let (_, model) = model64_fixture(dir.path(), &envs);
    // Three judged documents per train query: which one a step draws as
    // the positive must not depend on the process's hash seed.
    let mut qrels = String::from("query-id\tcorpus-id\tscore\n");
    for i in 0..6 {
        for j in [i, (i + 1) % 6, (i + 2) % 6] {
            qrels += &format!("q{i}\td{j}\t1\n");
        }
    }
    let ds = toy_dataset(&dir.path().join("multi"), Some(&qrels));
    let train = |out: &Path| {
        ok(&train_reduce(
            &ds,
            &model,
            out,
            &["--dims", "16,32", "--steps", "6", "--batch-queries", "4"],
            &envs,
        ))
    };
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    train(&a);
    train(&b);
    let bytes = |d: &Path| std::fs::read(d.join("reduction.safetensors")).unwrap();
    assert!(bytes(&a) == bytes(&b), "two runs of one seed differ");
}

/// `tessera reduce plan` on `ds` with reduction `rs` and `model`, on the
/// CPU; the caller adds the budget and the rest.
fn plan_args<'a>(ds: &'a Path, rs: &'a str, model: &'a Path) -> Vec<&'a str> {
    vec![
        "reduce",
        "plan",
        "--dataset",
        ds.to_str().unwrap(),
        "--reduction",
        rs,
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
    ]
}

#[test]
fn bad_reductions_are_refused_naming_the_file_or_option() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let envs = [("TESSERA_HOME", home.to_str().unwrap())];
    let (ds, model, red_dir) = reduced_fixture(dir.path(), &envs);
    let corpus = ds.join("corpus.jsonl");
    let rs = red_dir.to_str().unwrap();
    let idx = dir.path().join("x.idx");
    let build_err = |extra: &[&str], m: &Path| err(&index_build(&corpus, &idx, m, extra, &envs));
    // r outside the trained set.
    let e = build_err(&["--reduction", rs, "--dim", "24"], &model);
    assert!(e.contains("--dim 24") && e.contains("16,32"), "{e}");
    // A reduction of 64-dim vectors for the 32-dim tiny model.
    let e = build_err(&["--reduction", rs, "--dim", "16"], Path::new(&tiny()));
    assert!(e.contains("64-dim") && e.contains("32-dim"), "{e}");
    // eval refuses it too, before encoding the corpus.
    let encodings = home.join("cache").join("encodings");
    let names = |d: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let before = names(&encodings);
    let tiny_model = tiny();
    let e = err(&run(
        &[
            "eval",
            "--dataset",
            ds.to_str().unwrap(),
            "--model",
            tiny_model.as_str(),
            "--reduction",
            rs,
            "--dim",
            "16",
            "--device",
            "cpu",
        ],
        &envs,
        None,
    ));
    assert!(e.contains("64-dim") && e.contains("32-dim"), "{e}");
    assert_eq!(names(&encodings), before, "nothing was encoded");
    // --dim without --reduction.
    let e = build_err(&["--dim", "16"], &model);
    assert!(e.contains("--reduction"), "{e}");
    assert!(!idx.exists(), "nothing is left behind");
    // A damaged file: a non-orthogonal basis.
    let bad = dir.path().join("bad-reduction");
    let mut r = Reduction::load(&red_dir).unwrap();
    r.basis[1] += 0.5;
    r.save(&bad).unwrap();
    let e = build_err(
        &["--reduction", bad.to_str().unwrap(), "--dim", "16"],
        &model,
    );
    assert!(
        e.contains("reduction.safetensors") && e.contains("not orthogonal"),
        "{e}"
    );

    // Bad data options are refused before any work, as train heads does.
    for (w, want) in [("0", "not a positive weight"), ("1,1", "2 weights for 1")] {
        let out = dir.path().join("never");
        let e = err(&train_reduce(&ds, &model, &out, &["--weights", w], &envs));
        assert!(e.contains(want), "{e}");
        assert!(!out.exists());
    }

    // Index built with one reduction, searched with another or at another r.
    let small = dir.path().join("small.idx");
    build(
        &corpus,
        &small,
        &model,
        &["--reduction", rs, "--dim", "16"],
        &envs,
    );
    // Another reduction of the same model, fitted or trained (4 steps).
    let train_small = |dataset: &Path, extra: &[&str], out: &Path| {
        let mut a = vec!["--dims", "16,32", "--steps", "4", "--batch-queries", "4"];
        a.extend_from_slice(extra);
        train_reduce(dataset, &model, out, &a, &envs)
    };
    let train_other = |method: &str, out: &Path| ok(&train_small(&ds, &["--method", method], out));
    let other = dir.path().join("pca");
    train_other("pca", &other);
    // The linear diagnostic: a free matrix, stored and applied like the
    // rotation, at the dims of its trained set only.
    let linear = dir.path().join("linear");
    train_other("linear", &linear);
    assert_eq!(
        Reduction::load(&linear).unwrap().meta.method,
        Method::Linear
    );
    // A dataset without a train split trains on pseudo-queries from its
    // own documents, and is refused (naming the split) without them.
    let unlabelled = toy_dataset(&dir.path().join("unlabelled"), None);
    std::fs::remove_file(unlabelled.join("qrels/train.tsv")).unwrap();
    let pseudo = |n: &str, out: &Path| train_small(&unlabelled, &["--pseudo-queries", n], out);
    let e = err(&pseudo("0", &dir.path().join("never-pseudo")));
    assert!(
        e.contains("no train split") && e.contains("unlabelled"),
        "{e}"
    );
    let ps = dir.path().join("pseudo");
    let o = pseudo("12", &ps);
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("12 pseudo-queries"), "{stderr}");
    let red = Reduction::load(&ps).unwrap();
    assert_eq!(red.meta.method, Method::Orthogonal);
    assert_eq!(red.meta.dims, vec![16, 32]);
    // Resuming it on other training data is refused, naming what differs.
    let e = err(&train_small(
        &unlabelled,
        &["--pseudo-queries", "20", "--resume"],
        &ps,
    ));
    assert!(
        e.contains("state.json") && e.contains("data.pseudo_queries: 12 → 20"),
        "{e}"
    );
    let lin_idx = dir.path().join("linear.idx");
    let ls = linear.to_str().unwrap();
    build(
        &corpus,
        &lin_idx,
        &model,
        &["--reduction", ls, "--dim", "16"],
        &envs,
    );
    let info = index_info(&lin_idx, &envs);
    assert_eq!(info["info"]["reduction"]["method"], "linear");
    let e = err(&index_build(
        &corpus,
        &dir.path().join("linear24.idx"),
        &model,
        &["--reduction", ls, "--dim", "24"],
        &envs,
    ));
    assert!(e.contains("--dim 24") && e.contains("linear"), "{e}");
    let search_err = |extra: &[&str], index: &Path| search_err(index, extra, &envs);
    let e = search_err(
        &["--reduction", other.to_str().unwrap(), "--dim", "16"],
        &small,
    );
    assert!(
        e.contains("another reduction") && e.contains("small.idx"),
        "{e}"
    );
    let e = search_err(&["--reduction", rs, "--dim", "32"], &small);
    assert!(e.contains("another reduction"), "{e}");
    let plain = dir.path().join("plain.idx");
    build(&corpus, &plain, &model, &[], &envs);
    let e = search_err(&["--reduction", rs, "--dim", "16"], &plain);
    assert!(e.contains("without a reduction"), "{e}");
    // The planner refuses a budget nothing fits.
    let plan_err = |extra: &[&str]| {
        let mut a = plan_args(&ds, rs, &model);
        a.extend_from_slice(extra);
        err(&run(&a, &envs, None))
    };
    let e = plan_err(&["--budget", "5", "--codecs", "f16"]);
    assert!(e.contains("no (dim, codec) pair fits 5"), "{e}");
    // Bad planner axes name the option and the value.
    let plan_err = |extra: &[&str]| {
        let mut a = vec!["--budget", "40"];
        a.extend_from_slice(extra);
        plan_err(&a)
    };
    let e = plan_err(&["--probes", "16"]);
    assert!(
        e.contains("--probes") && e.contains("N_PROBE/PROBE_BUDGET"),
        "{e}"
    );
    let e = plan_err(&["--centroids", "auto,0"]);
    assert!(
        e.contains("--centroids") && e.contains("positive integer"),
        "{e}"
    );
    let e = plan_err(&["--min-share", "0.95", "--no-reference"]);
    assert!(e.contains("--min-share"), "{e}");
    // Resuming a run with other dims.
    let e = err(&train_reduce(
        &ds,
        &model,
        &red_dir,
        &["--dims", "8,16", "--resume"],
        &envs,
    ));
    assert!(e.contains("state.json") && e.contains("--dims"), "{e}");

    // The model folder an index recorded now holds another head (one weight
    // changed in place): search refuses rather than encode queries with
    // weights the documents never saw; an explicit --model overrides.
    let head = model.join("head.safetensors");
    let mut bytes = std::fs::read(&head).unwrap();
    *bytes.last_mut().unwrap() ^= 0x01;
    std::fs::write(&head, &bytes).unwrap();
    let e = search_err(&["--reduction", rs, "--dim", "16"], &small);
    assert!(
        e.contains("fingerprint") && e.contains(model.to_str().unwrap()),
        "{e}"
    );
    ok(&run(
        &[
            "search",
            "--index",
            small.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--device",
            "cpu",
            "moon tides",
        ],
        &envs,
        None,
    ));
}
