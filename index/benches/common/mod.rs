//! What both index benches share.

use tessera_index::Hit;

/// Recall@k of `got` against `truth` (the exact search's top k): the share
/// of truth's first k ids that `got`'s first k hold.
pub fn recall(truth: &[Hit], got: &[Hit], k: usize) -> f64 {
    let t: std::collections::HashSet<&str> = truth.iter().take(k).map(|h| h.id.as_str()).collect();
    got.iter()
        .take(k)
        .filter(|h| t.contains(h.id.as_str()))
        .count() as f64
        / t.len().max(1) as f64
}
