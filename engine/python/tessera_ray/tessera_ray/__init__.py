"""Tessera past one machine, on Ray.

A shard set is S ordinary Tessera indexes and a manifest (`shards.json`);
a document lives in shard `shard_of(id, S)` (FNV-1a 64 of the id's UTF-8
bytes, mod S), the same function the `tessera` binary uses.

* `python -m tessera_ray build` routes a dump to S parts and builds every
  shard as a Ray Data task (on a GPU where the cluster has one), skipping
  shards that already verify, and writes the manifest last.
* `python -m tessera_ray serve` runs one Ray Serve deployment per shard (R
  replicas, each a `tessera serve` process) behind an ingress that speaks the
  `tessera.v1.Tessera` gRPC API and merges the shards' answers exactly.
* `python -m tessera_ray rollout` switches a running service to a new shard
  set without failing a query.
"""

from .routing import shard_of, shard_name

__all__ = ["shard_of", "shard_name"]
