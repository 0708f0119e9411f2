"""Exact merging of shard answers, and hybrid fusion after the merge.

Every shard ranks its own documents with exact scores (MaxSim on its own
vectors, BM25 with the collection's summed statistics), so the top k of the
union of each shard's top k is the collection's top k. Fusion runs on the
merged lists, as one index fuses its own: min-max normalised scores,
`(1 - w) * dense + w * bm25`, the engine's default `w = 0.4`.
"""

from typing import Dict, List, Sequence

# The engine's default BM25 weight of linear fusion (Fusion::default).
BM25_WEIGHT = 0.4
# A hybrid query fuses the best max(k, 100) of each side, as the engine does.
HYBRID_DEPTH = 100


def merge(lists: Sequence[Sequence], k: int) -> List:
    """The best `k` hits of several shards' lists: by score, ties by id."""
    hits = [h for lst in lists for h in lst]
    hits.sort(key=lambda h: (-h.score, h.id))
    return hits[:k]


def _normalised(hits: Sequence):
    if not hits:
        return []
    hi = max(h.score for h in hits)
    lo = min(h.score for h in hits)
    span = hi - lo
    return [(h, (h.score - lo) / span if span > 0 else 1.0) for h in hits]


def linear_fusion(dense: Sequence, sparse: Sequence, k: int, bm25_weight: float, make_hit):
    """Fuses two merged lists; `make_hit(template, score)` builds a hit.

    A document's contributions are summed; among equal scores the one seen
    first (dense before sparse) ranks first, as in the engine."""
    w = min(max(bm25_weight, 0.0), 1.0)
    order: List[str] = []
    score: Dict[str, float] = {}
    template: Dict[str, object] = {}
    for lst, weight in ((dense, 1.0 - w), (sparse, w)):
        for h, x in _normalised(lst):
            if h.id not in score:
                order.append(h.id)
                score[h.id] = 0.0
                template[h.id] = h
            score[h.id] += weight * x
    pos = {i: n for n, i in enumerate(order)}
    ranked = sorted(order, key=lambda i: (-score[i], pos[i]))[:k]
    return [make_hit(template[i], score[i]) for i in ranked]


def sum_stats(stats: Sequence) -> dict:
    """Sums shards' BM25 statistics (objects with docs, tokens, doc_freq)."""
    docs = tokens = 0
    df: Dict[str, int] = {}
    for s in stats:
        docs += s.docs
        tokens += s.tokens
        for term, n in s.doc_freq.items():
            df[term] = df.get(term, 0) + n
    return {"docs": docs, "tokens": tokens, "doc_freq": df}
