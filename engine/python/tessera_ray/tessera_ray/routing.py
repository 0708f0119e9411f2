"""Which shard holds a document: FNV-1a 64 of the id's UTF-8 bytes, mod S.

The same function as the engine's `tessera_engine::shard::shard_of`, so a
document added through any front end lands on the shard a build put it on.
"""

FNV_OFFSET = 0xCBF29CE484222325
FNV_PRIME = 0x100000001B3
MASK = (1 << 64) - 1


def fnv1a64(data: bytes) -> int:
    h = FNV_OFFSET
    for b in data:
        h ^= b
        h = (h * FNV_PRIME) & MASK
    return h


def shard_of(doc_id: str, shards: int) -> int:
    """The shard (0-based) of `doc_id` in a set of `shards` shards."""
    if shards < 1:
        raise ValueError("a shard set has at least one shard")
    return fnv1a64(doc_id.encode("utf-8")) % shards


def shard_name(shard: int) -> str:
    """The folder (and deployment) name of shard `shard`: `shard-007`."""
    return f"shard-{shard:03d}"
