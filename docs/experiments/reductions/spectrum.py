"""Variance spectrum of a model's document token vectors (a diagnostic outside tessera).

Usage: python spectrum.py ENCODING_DIR [ENCODING_DIR ...]
Each ENCODING_DIR is a `tessera encode-corpus` folder (embeddings.npy); the
vectors of all of them are pooled (every 4th token), mean-centred, and the
share of the variance in the top r principal directions is printed for r =
k/8, k/4, 3k/8, k/2, 3k/4, together with the mean cosine of a token to the
mean direction (how much all tokens share one component).
"""
import sys

import numpy as np

xs = [np.load(f"{d}/embeddings.npy", mmap_mode="r")[::4].astype(np.float64) for d in sys.argv[1:]]
x = np.concatenate(xs)
k = x.shape[1]
mu = x.mean(axis=0)
c = np.cov(x - mu, rowvar=False)
ev = np.sort(np.linalg.eigvalsh(c))[::-1]
share = np.cumsum(ev) / ev.sum()
mean_cos = float((x @ (mu / np.linalg.norm(mu))).mean())
print(f"tokens {x.shape[0]}, k {k}, |mean| {np.linalg.norm(mu):.3f}, mean cosine to the mean direction {mean_cos:.3f}")
for r in (k // 8, k // 4, 3 * k // 8, k // 2, 3 * k // 4):
    print(f"top {r:4d} of {k}: {100 * share[r - 1]:.1f} % of the variance")
