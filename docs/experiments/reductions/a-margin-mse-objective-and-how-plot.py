"""Dev-pool nDCG@10 against r for the margin-MSE run's runs (a plot outside tessera).

Usage: python a-margin-mse-objective-and-how-plot.py RUNS_DIR OUT_STEM
RUNS_DIR holds the runs of commands-a-margin-mse-objective-and-how.txt (runs/red19) and the k-means-seeds
run's seed-1 defaults at RUNS_DIR/../red18/defaults-s1; each run's best dev record
(by the mean over r, as `train reduce` picks it) is read from its metrics.jsonl
(run_metrics.py, beside this file).
Writes OUT_STEM.png and OUT_STEM.svg. Needs matplotlib.
"""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from run_metrics import best_dev

runs_dir, out = sys.argv[1], sys.argv[2]
rows = [
    ("pca-a1", "PCA (the goal's formula)", "k", "-"),
    ("pca-q1-d1.4", "PCA, documents α 1.4", "tab:blue", "--"),
    ("pca-q1-d2", "PCA, documents α 2", "tab:blue", ":"),
    ("pca-c0-0.5", "PCA centred q 0 / d 0.5", "tab:green", "-"),
    ("pca-c0-0.5-d1.5", "PCA centred q 0 / d 0.5, documents α 1.5", "tab:green", "--"),
    ("../red18/defaults-s1", "rotation, defaults (KL), seed 1", "tab:red", "-"),
    ("mmse-w1-s1", "rotation, margin-MSE w 1, seed 1", "tab:orange", "-"),
    ("orth-d1.4-s1", "rotation, documents α 1.4, seed 1", "tab:purple", "-"),
]
fig, ax = plt.subplots(figsize=(8, 5))
for run, label, colour, style in rows:
    best = best_dev(f"{runs_dir}/{run}/metrics.jsonl")
    dims = [p["dim"] for p in best["per_dim"]]
    ax.plot(dims, [p["ndcg10"] for p in best["per_dim"]], style, color=colour, marker="o", label=label)
ax.axhline(0.5806, color="grey", lw=0.8, label="full width, 128 dims")
ax.plot([32], [0.5656], "k*", ms=12, label="goal at r = 32: PCA + 3 points")
ax.set_xlabel("r (dims kept)")
ax.set_ylabel("dev nDCG@10, mean of SciFact and NFCorpus (pools)")
ax.set_ylim(0.40, 0.59)
ax.set_xticks([16, 32, 48, 64, 96])
ax.grid(alpha=0.3)
ax.legend(fontsize=8, loc="lower right")
ax.set_title("v4: margin-MSE and the documents' renormalisation")
fig.tight_layout()
fig.savefig(f"{out}.png", dpi=110)
fig.savefig(f"{out}.svg")
