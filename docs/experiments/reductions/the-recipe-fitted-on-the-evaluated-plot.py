"""Dev-pool nDCG@10 at r = 32, evaluated-queries run (a plot outside tessera).

Left: against the training step, for the rotation fitted on the dev queries and on the
train queries. Right: against the number of train queries it is fitted on (25, 50 and
100 % of both train splits, seeds 1-3; each run's best dev record by the mean over r,
as `train reduce` picks it).

Usage: python the-recipe-fitted-on-the-evaluated-plot.py RUNS_DIR OUT_STEM
RUNS_DIR holds the runs of commands-the-recipe-fitted-on-the-evaluated.txt (runs/red20) and the k-means-seeds
run's seed-1 defaults at RUNS_DIR/../red18/defaults-s1. Each dev record of a run's
metrics.jsonl is placed at the step of the training record before it (0 for the first;
run_metrics.py, beside this file).
Writes OUT_STEM.png and OUT_STEM.svg. Needs matplotlib.
"""
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from run_metrics import best_dev, dev_records, ndcg_at

runs_dir, out = sys.argv[1], sys.argv[2]
rows = [
    ("oracle-kl015-nopq-st600-s1", "fitted on the dev queries, KL τ 0.15, 600 steps (diagnostic)", "tab:purple", "--"),
    ("oracle-kl015-nopq-s1", "fitted on the dev queries, KL τ 0.15, 200 steps (diagnostic)", "tab:purple", "-"),
    ("oracle-kl015-s1", "fitted on the dev queries + 10,000 pseudo-queries (diagnostic)", "tab:pink", "-"),
    ("train-kl015-nopq-s1", "train queries, KL τ 0.15 (same recipe)", "tab:blue", "-"),
    ("../red18/defaults-s1", "train queries, `train reduce` defaults", "tab:red", "-"),
]

fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [3, 2]})
for run, label, colour, style in rows:
    pts = [(step, ndcg_at(dev, 32)) for step, dev in dev_records(f"{runs_dir}/{run}/metrics.jsonl")]
    ax.plot([s for s, _ in pts], [v for _, v in pts], style, color=colour, marker="o", label=label)
ax.axhline(0.5356, color="k", lw=1, label="PCA at r = 32 (no training)")
ax.axhline(0.5656, color="k", lw=1, ls=":", label="goal: PCA + 3 points")
ax.axhline(0.5806, color="grey", lw=0.8, label="full width, 128 dims")
ax.set_xlabel("training step")
ax.set_ylabel("dev nDCG@10 at r = 32, mean of SciFact and NFCorpus (pools)")
ax.set_ylim(0.53, 0.585)
ax.grid(alpha=0.3)
ax.legend(fontsize=7.5, loc="lower right")
ax.set_title("fitted on the evaluated queries, and on the train queries")

# Right panel: the number of train queries (SciFact + NFCorpus).
queries = {25: 163 + 648, 50: 326 + 1295, 100: 651 + 2590}
for seed, marker in ((1, "o"), (2, "s"), (3, "^")):
    xs = list(queries.values())
    ys = [ndcg_at(best_dev(f"{runs_dir}/curve-f{frac}-nopq-s{seed}/metrics.jsonl"), 32) for frac in queries]
    bx.plot(xs, ys, "-", color="tab:blue", marker=marker, label=f"train queries, defaults without pseudo-queries, seed {seed}")
bx.axhline(0.5356, color="k", lw=1, label="PCA")
bx.axhline(0.5656, color="k", lw=1, ls=":", label="goal: PCA + 3 points")
bx.set_xscale("log")
bx.set_xticks(list(queries.values()))
bx.minorticks_off()
bx.set_xticklabels([f"{n}\n({f} %)" for f, n in queries.items()])
bx.set_xlabel("train queries the rotation is fitted on")
bx.set_ylim(0.53, 0.585)
bx.grid(alpha=0.3)
bx.legend(fontsize=7.5, loc="upper left")
bx.set_title("four times the train queries")
fig.suptitle("v4: the rotation at r = 32 (dev pools)")
fig.tight_layout()
fig.savefig(f"{out}.png", dpi=110)
fig.savefig(f"{out}.svg")
