#!/usr/bin/env python3
"""Expected metric values for tessera-eval's tests, from independent code.

Writes eval/tests/fixtures/{qrels.tsv, run.trec, expected.json}: a small
random qrels (graded, with judged non-relevant documents and a query the run
misses) and a run with score ties, and the values that pytrec_eval (trec_eval
9 as a library) gives for them, plus scipy's paired t-tests. The Rust tests read these
files and need no Python.

    python3 -m venv /tmp/ev && /tmp/ev/bin/pip install pytrec-eval-terrier scipy
    /tmp/ev/bin/python scripts/make-eval-fixtures.py
"""
import json
import random
from pathlib import Path

import pytrec_eval
from scipy import stats

out = Path(__file__).resolve().parent.parent / "eval" / "tests" / "fixtures"
out.mkdir(parents=True, exist_ok=True)
rng = random.Random(20261127)

docs = [f"d{i:03d}" for i in range(120)]
qrels, run = {}, {}
for q in range(25):
    qid = f"q{q}"
    judged = rng.sample(docs, rng.randint(1, 12))
    qrels[qid] = {d: rng.choice([0, 1, 1, 2, 3]) for d in judged}
    if q == 3:
        qrels[qid] = {d: 0 for d in judged}  # judged, nothing relevant
    if q == 7:
        continue  # judged but absent from the run
    ret = rng.sample(docs, rng.randint(5, 110))
    # Coarse scores: plenty of ties, which trec_eval breaks by docid.
    run[qid] = {d: float(rng.randint(0, 30)) / 4.0 for d in ret}
# A run-only query (no judgements): ignored by every measure.
run["q99"] = {"d001": 1.0}

with open(out / "qrels.tsv", "w") as f:
    f.write("query-id\tcorpus-id\tscore\n")
    for q, ds in qrels.items():
        for d, r in ds.items():
            f.write(f"{q}\t{d}\t{r}\n")
with open(out / "run.trec", "w") as f:
    for q, ds in run.items():
        # Ranks in file order (deliberately not score order).
        for i, (d, s) in enumerate(ds.items()):
            f.write(f"{q} Q0 {d} {i + 1} {s} fixture\n")

cuts = [1, 3, 5, 10, 100]
measures = set()
for k in cuts:
    measures |= {f"ndcg_cut.{k}", f"recall.{k}", f"map_cut.{k}", f"P.{k}"}
ev = pytrec_eval.RelevanceEvaluator(qrels, measures)
per_query = ev.evaluate(run)
names = {"ndcg_cut": "nDCG", "recall": "Recall", "map_cut": "MAP", "P": "P"}
expected = {}
for q, vals in per_query.items():
    row = {}
    for key, v in vals.items():
        base, k = key.rsplit("_", 1)
        row[f"{names[base]}@{k}"] = v
    expected[q] = row
# Reciprocal rank cut at k. trec_eval has no cut-off RR, but its uncut
# recip_rank is 1/rank of the first relevant document in trec_eval's order,
# so RR@k is that value when rank <= k, else 0. (ir-measures' RR@k breaks
# score ties differently from trec_eval, so it is not used here.)
rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)
for q, vals in rr.items():
    v = vals["recip_rank"]
    for k in cuts:
        expected[q][f"MRR@{k}"] = v if v > 0 and 1.0 / v <= k + 1e-9 else 0.0

# Paired t-test p-values for the significance test.
ttests = []
for n, shift in [(10, 0.05), (30, 0.02), (158, 0.01)]:
    a = [rng.random() for _ in range(n)]
    b = [x + shift + rng.gauss(0, 0.1) for x in a]
    r = stats.ttest_rel(b, a)
    ttests.append({"a": a, "b": b, "t": float(r.statistic), "p": float(r.pvalue)})

json.dump({"per_query": expected, "ttests": ttests,
           "versions": {"pytrec_eval": getattr(pytrec_eval, "__version__", "terrier"),
                        "scipy": __import__("scipy").__version__}},
          open(out / "expected.json", "w"), indent=1, sort_keys=True)
print(f"wrote {out}: {len(expected)} queries")
