#!/usr/bin/env python3
"""Reference BM25 on a BEIR-layout dataset, the way BEIR's published
Elasticsearch baseline scores it, to anchor Tessera's own BM25.

Lucene BM25 (k1 = 1.2, b = 0.75: Elasticsearch's defaults) through the
`bm25s` package, with an English analyzer (lower-case, English stop words,
Porter2/Snowball stemming via PyStemmer). Two document shapes:

* `concat`: title and text as one field (what Tessera indexes);
* `fields`: title and text as separate fields, combined as BEIR's
  Elasticsearch query does (`multi_match`, `best_fields`,
  `tie_breaker` 0.5: max + 0.5 · the other).

Prints nDCG@10 (trec_eval semantics: graded gains, log2 discount, the
ideal ranking from the qrels) per shape as JSON. Run through
`scripts/bm25-reference`, which installs the two packages.
"""
import argparse
import json
import math
import sys
from pathlib import Path


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_qrels(path):
    qrels = {}
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            parts = line.rstrip("\n").split("\t")
            if i == 0 and not parts[-1].lstrip("-").isdigit():
                continue  # header
            q, d, s = parts[0], parts[1], int(parts[2])
            qrels.setdefault(q, {})[d] = s
    return qrels


def ndcg10(ranked, judged):
    dcg = sum(
        (judged.get(d, 0)) / math.log2(r + 2) for r, d in enumerate(ranked[:10]) if judged.get(d, 0) > 0
    )
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:10]
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True, help="BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/)")
    ap.add_argument("--split", default="dev")
    ap.add_argument("--k1", type=float, default=1.2)
    ap.add_argument("--b", type=float, default=0.75)
    a = ap.parse_args()

    import bm25s
    import Stemmer

    root = Path(a.dataset)
    docs = list(read_jsonl(root / "corpus.jsonl"))
    ids = [str(d["_id"]) for d in docs]
    qrels = read_qrels(root / "qrels" / f"{a.split}.tsv")
    queries = {str(q["_id"]): q["text"] for q in read_jsonl(root / "queries.jsonl") if str(q["_id"]) in qrels}
    stemmer = Stemmer.Stemmer("english")
    qids = sorted(queries)

    def index(texts):
        tok = bm25s.tokenize(texts, stopwords="en", stemmer=stemmer, show_progress=False)
        r = bm25s.BM25(method="lucene", k1=a.k1, b=a.b)
        r.index(tok, show_progress=False)
        return r

    def scores(r, qtext):
        q = bm25s.tokenize([qtext], stopwords="en", stemmer=stemmer, show_progress=False, return_ids=False)[0]
        return r.get_scores(q)

    def ranked(s):
        order = sorted(range(len(ids)), key=lambda i: (-s[i], ids[i]))
        return [ids[i] for i in order if s[i] > 0][:10]

    out = {"dataset": str(root), "split": a.split, "queries": len(qids), "k1": a.k1, "b": a.b}
    concat = index([(d.get("title", "") + " " + d.get("text", "")).strip() for d in docs])
    title = index([d.get("title", "") or "" for d in docs])
    text = index([d.get("text", "") or "" for d in docs])
    tot_c = tot_f = 0.0
    for q in qids:
        tot_c += ndcg10(ranked(concat_scores := scores(concat, queries[q])), qrels[q])
        st, sx = scores(title, queries[q]), scores(text, queries[q])
        best = [max(x, y) + 0.5 * min(x, y) for x, y in zip(st, sx)]
        tot_f += ndcg10(ranked(best), qrels[q])
        del concat_scores
    out["ndcg@10_concat"] = round(tot_c / len(qids), 4)
    out["ndcg@10_fields"] = round(tot_f / len(qids), 4)
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
