"""Train-query subsets of SciFact and NFCorpus for the evaluated-queries run's curve (outside tessera).

Usage: python the-recipe-fitted-on-the-evaluated-subsets.py SHARED_DATASETS OUT_DIR
For each fraction f in 25 and 50 writes OUT_DIR/f{f}/{scifact,nfcorpus}/: corpus.jsonl,
queries.jsonl and qrels/dev.tsv are links to the shared files (nothing is copied), and
qrels/train.tsv keeps every judgement of round(f % of the train queries), drawn with
random.Random(1) from the sorted query ids. Keep OUT_DIR outside the repository.
"""
import os
import random
import sys

src, out = sys.argv[1], sys.argv[2]
for frac in (25, 50):
    for name in ("scifact", "nfcorpus"):
        d = f"{out}/f{frac}/{name}"
        os.makedirs(f"{d}/qrels", exist_ok=True)
        for f in ("corpus.jsonl", "queries.jsonl", "qrels/dev.tsv"):
            if not os.path.exists(f"{d}/{f}"):
                os.symlink(os.path.abspath(f"{src}/{name}/{f}"), f"{d}/{f}")
        lines = open(f"{src}/{name}/qrels/train.tsv").read().splitlines()
        head, rows = lines[0], lines[1:]
        qids = sorted({r.split("\t")[0] for r in rows})
        keep = set(random.Random(1).sample(qids, round(len(qids) * frac / 100)))
        kept = [r for r in rows if r.split("\t")[0] in keep]
        open(f"{d}/qrels/train.tsv", "w").write("\n".join([head] + kept) + "\n")
        print(f"f{frac} {name}: {len(keep)} of {len(qids)} train queries, {len(kept)} judgements")
