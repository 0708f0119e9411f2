"""Dev-pool nDCG@10 at r = 32 against the training step, twentieth session (a plot outside tessera).

Usage: python session20-plot.py RUNS_DIR OUT_STEM
RUNS_DIR holds the runs of commands-session20.txt (runs/red20) and the eighteenth
session's seed-1 defaults at RUNS_DIR/../red18/defaults-s1. Each dev record of a run's
metrics.jsonl is placed at the step of the training record before it (0 for the first).
Writes OUT_STEM.png and OUT_STEM.svg. Needs matplotlib.
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

runs_dir, out = sys.argv[1], sys.argv[2]
rows = [
    ("oracle-kl015-nopq-st600-s1", "fitted on the dev queries, KL τ 0.15, 600 steps (diagnostic)", "tab:purple", "--"),
    ("oracle-kl015-nopq-s1", "fitted on the dev queries, KL τ 0.15, 200 steps (diagnostic)", "tab:purple", "-"),
    ("oracle-kl015-s1", "fitted on the dev queries + 10,000 pseudo-queries (diagnostic)", "tab:pink", "-"),
    ("train-kl015-nopq-s1", "train queries, KL τ 0.15 (same recipe)", "tab:blue", "-"),
    ("../red18/defaults-s1", "train queries, `train reduce` defaults", "tab:red", "-"),
]


def r32_by_step(path):
    step, points = 0, []
    for line in open(path):
        d = json.loads(line)
        if "dev" in d:
            r32 = next(p["ndcg10"] for p in d["dev"]["per_dim"] if p["dim"] == 32)
            points.append((step, r32))
        elif "step" in d:
            step = d["step"]["step"]
    return points


fig, ax = plt.subplots(figsize=(8, 5))
for run, label, colour, style in rows:
    pts = r32_by_step(f"{runs_dir}/{run}/metrics.jsonl")
    ax.plot([s for s, _ in pts], [v for _, v in pts], style, color=colour, marker="o", label=label)
ax.axhline(0.5356, color="k", lw=1, label="PCA at r = 32 (no training)")
ax.axhline(0.5656, color="k", lw=1, ls=":", label="goal: PCA + 3 points")
ax.axhline(0.5806, color="grey", lw=0.8, label="full width, 128 dims")
ax.set_xlabel("training step")
ax.set_ylabel("dev nDCG@10 at r = 32, mean of SciFact and NFCorpus (pools)")
ax.set_ylim(0.53, 0.585)
ax.grid(alpha=0.3)
ax.legend(fontsize=7.5, loc="lower right")
ax.set_title("v4, twentieth session: the rotation fitted on the evaluated queries, and on the train queries")
fig.tight_layout()
fig.savefig(f"{out}.png", dpi=110)
fig.savefig(f"{out}.svg")
