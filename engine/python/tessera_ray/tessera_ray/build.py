"""Sharded index builds on Ray Data.

    python -m tessera_ray build --input 'dumps/*.jsonl.zst' --shards 8 --out /mnt/shared/corpus

1. Route: every document goes to part `shard_of(id, S)` of its dump
   (`tessera shards split`, one input after another), or — with
   `--embeddings` — the rows of an embeddings folder are split the same way.
   Parts land in `OUT/.parts/` and are reused by a rerun over the same inputs.
2. Build: one Ray Data task per shard runs `tessera index build` on its part
   (asking Ray for a GPU where the cluster has one) and `tessera index
   verify` on the result. A worker that dies is retried by Ray; an encoding
   that was cut off continues from its last checkpoint (`--resume`).
   Shards that already verify are kept.
   By default every shard trains its own centroids (all shards at once).
   With `--codec-mode shared`, shard 0 is built first and every other shard
   codes its vectors with shard 0's centroids and buckets (`--codec-from`;
   shard 0's documents are a uniform sample, routing being a hash), so all
   shards score a vector alike. Per-shard centroids found more of the exact
   MaxSim top 10 on SciFact (docs/BENCHMARKS.md), hence the default.
3. Publish: `tessera shards manifest` checks that every shard agrees on
   model, reduction, codec and analyzer and writes `OUT/shards.json`
   atomically, last, only when every shard verified.

`OUT` must be a path every node sees at the same place: a local folder on a
one-machine cluster, an NFS (or other POSIX shared) mount on several.
"""

import dataclasses
import glob
import json
import logging
import os
import pathlib
import shutil
import time
from typing import List, Optional

from . import proc
from .routing import shard_name, shard_of

log = logging.getLogger("tessera_ray.build")

PARTS = ".parts"
ROUTED = "routed.json"


class BuildError(RuntimeError):
    pass


class ShardBuildKilled(RuntimeError):
    """The shard's `tessera` process was killed by a signal: Ray retries."""


@dataclasses.dataclass
class BuildOptions:
    inputs: List[str]
    shards: int
    out: pathlib.Path
    embeddings: Optional[pathlib.Path] = None
    tessera: Optional[str] = None
    # Arguments for `tessera index build` (model, codec, reduction, ...).
    index_args: List[str] = dataclasses.field(default_factory=list)
    # Arguments for `tessera shards split` (record options).
    record_args: List[str] = dataclasses.field(default_factory=list)
    # "per-shard": each shard trains its codec; "shared": shard 0's for all.
    codec_mode: str = "per-shard"
    gpus_per_shard: Optional[float] = None
    cpus_per_shard: float = 1.0
    retries: int = 3


@dataclasses.dataclass
class ShardResult:
    shard: int
    status: str  # "built" or "kept"
    docs: int
    seconds: float


@dataclasses.dataclass
class BuildSummary:
    out: pathlib.Path
    shards: List[ShardResult]
    generation: int
    seconds: float

    @property
    def docs(self) -> int:
        return sum(s.docs for s in self.shards)

    def line(self) -> str:
        built = sum(1 for s in self.shards if s.status == "built")
        rate = self.docs / self.seconds if self.seconds > 0 else 0.0
        return (
            f"shard set {self.out}: {len(self.shards)} shards ({built} built, "
            f"{len(self.shards) - built} kept), {self.docs} documents, generation "
            f"{self.generation}, in {self.seconds:.1f} s ({rate:.1f} documents/s)"
        )


def expand_inputs(patterns: List[str]) -> List[pathlib.Path]:
    """Files named by `patterns` (paths or globs), each once, in order."""
    files: List[pathlib.Path] = []
    for pat in patterns:
        hits = sorted(glob.glob(pat)) if glob.has_magic(pat) else [pat]
        if not hits:
            raise BuildError(f"--input {pat}: no file matches")
        for h in hits:
            p = pathlib.Path(h)
            if not p.is_file():
                raise BuildError(f"--input {h}: not a file")
            p = p.resolve()
            if p not in files:
                files.append(p)
    return files


def _fingerprint(files: List[pathlib.Path], opts: BuildOptions) -> dict:
    return {
        "shards": opts.shards,
        "record_args": opts.record_args,
        "inputs": [
            {"path": str(f), "bytes": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns}
            for f in files
        ],
    }


def _write_json_atomic(path: pathlib.Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def route(opts: BuildOptions, tessera: str) -> List[pathlib.Path]:
    """Routes the inputs to `OUT/.parts/part-NNN.*`; reuses parts routed
    from the same inputs (paths, sizes, times) and shard count."""
    parts_dir = opts.out / PARTS
    if opts.embeddings is not None:
        src = opts.embeddings.resolve()
        files = [src / "embeddings.npy", src / "ids.txt"]
        for f in files:
            if not f.is_file():
                raise BuildError(f"--embeddings {opts.embeddings}: no {f.name}")
    else:
        files = expand_inputs(opts.inputs)
    want = _fingerprint(files, opts)
    marker = parts_dir / ROUTED
    names = [
        parts_dir / (f"vectors-{s:03d}" if opts.embeddings else f"part-{s:03d}.jsonl")
        for s in range(opts.shards)
    ]
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == want and all(p.exists() for p in names):
                log.info("routing: reusing %s", parts_dir)
                return names
        except ValueError:
            pass
    shutil.rmtree(parts_dir, ignore_errors=True)
    staging = opts.out / (PARTS + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    if opts.embeddings is not None:
        _route_vectors(opts.embeddings, opts.shards, staging)
    else:
        _route_dumps(files, opts, tessera, staging)
    _write_json_atomic(staging / ROUTED, want)
    os.replace(staging, parts_dir)
    return names


def _route_dumps(files, opts: BuildOptions, tessera: str, staging: pathlib.Path) -> None:
    outs = []
    for i, f in enumerate(files):
        d = staging / f"input-{i:04d}"
        t = time.time()
        r = proc.run(
            [tessera, "shards", "split", "--input", str(f), "--shards", str(opts.shards),
             "--out", str(d)] + opts.record_args
        )
        if r.returncode != 0:
            raise BuildError(f"routing {f} failed: {r.stderr.strip()}")
        log.info("routed %s in %.1f s", f, time.time() - t)
        outs.append(d)
    for s in range(opts.shards):
        part = staging / f"part-{s:03d}.jsonl"
        if len(outs) == 1:
            os.replace(outs[0] / part.name, part)
            continue
        with open(part, "wb") as w:
            for d in outs:
                with open(d / part.name, "rb") as r:
                    shutil.copyfileobj(r, w, 1 << 20)
    for d in outs:
        shutil.rmtree(d)


def _route_vectors(src: pathlib.Path, shards: int, staging: pathlib.Path) -> None:
    """Splits an embeddings folder (`tessera encode-corpus` layout) into
    one folder per shard, rows kept in order."""
    import numpy as np

    ids = (src / "ids.txt").read_text().splitlines()
    emb = np.load(src / "embeddings.npy", mmap_mode="r")
    if (src / "doclens.npy").is_file():
        lens = np.load(src / "doclens.npy").astype(np.int64)
    elif (src / "doclens.json").is_file():
        lens = np.asarray(json.loads((src / "doclens.json").read_text()), dtype=np.int64)
    else:
        raise BuildError(f"--embeddings {src}: no doclens.npy or doclens.json")
    if len(lens) != len(ids) or int(lens.sum()) != emb.shape[0]:
        raise BuildError(
            f"--embeddings {src}: {len(ids)} ids, {len(lens)} document lengths summing to "
            f"{int(lens.sum())}, {emb.shape[0]} vectors: they do not agree"
        )
    docs = None
    if (src / "docs.jsonl").is_file():
        with open(src / "docs.jsonl") as f:
            docs = f.readlines()
        if len(docs) != len(ids):
            raise BuildError(f"--embeddings {src}: docs.jsonl has {len(docs)} lines, ids.txt {len(ids)}")
    state = {}
    if (src / "encode.json").is_file():
        state = json.loads((src / "encode.json").read_text())
    starts = np.concatenate([[0], np.cumsum(lens)])
    owner = np.array([shard_of(i, shards) for i in ids], dtype=np.int64)
    for s in range(shards):
        d = staging / f"vectors-{s:03d}"
        d.mkdir()
        rows = np.flatnonzero(owner == s)
        spans = [np.arange(starts[r], starts[r + 1]) for r in rows]
        take = np.concatenate(spans) if spans else np.zeros(0, dtype=np.int64)
        np.save(d / "embeddings.npy", np.ascontiguousarray(emb[take], dtype=np.float32))
        np.save(d / "doclens.npy", lens[rows].astype(np.uint32))
        (d / "ids.txt").write_text("".join(ids[r] + "\n" for r in rows))
        if docs is not None:
            (d / "docs.jsonl").write_text("".join(docs[r] for r in rows))
        if state:
            st = dict(state)
            st.update(
                docs=int(len(rows)), tokens=int(len(take)), input_lines=int(len(rows)),
                complete=True, skipped={}, truncated=0, empty=int((lens[rows] == 0).sum()),
            )
            st["sizes"] = {
                k: (d / f).stat().st_size if (d / f).exists() else 0
                for k, f in (("embeddings", "embeddings.npy"), ("doclens", "doclens.npy"),
                             ("ids", "ids.txt"), ("docs", "docs.jsonl"))
            }
            _write_json_atomic(d / "encode.json", st)


def verified(tessera: str, index: pathlib.Path) -> bool:
    """Whether `index` is a complete Tessera index whose files check out."""
    if not (index / "manifest.json").is_file():
        return False
    return proc.run([tessera, "index", "verify", str(index)]).returncode == 0


def _docs_of(tessera: str, index: pathlib.Path) -> int:
    r = proc.run([tessera, "index", "info", str(index)])
    if r.returncode != 0:
        raise BuildError(f"tessera index info {index}: {r.stderr.strip()}")
    return int(json.loads(r.stdout)["documents"])


def codec_id(index: pathlib.Path):
    """The CRCs of an index's centroids and buckets (equal for indexes that
    share a codec)."""
    try:
        files = json.loads((index / "manifest.json").read_text())["files"]
    except (OSError, ValueError, KeyError):
        return None
    return sorted((name.split(".")[0], f["crc32"]) for name, f in files.items()
                  if name.startswith(("centroids.", "buckets.")))


def _without(args: List[str], flags) -> List[str]:
    """`args` less the given flags (`--flag value` and `--flag=value`)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in flags:
            skip = True
            continue
        if any(a.startswith(f + "=") for f in flags):
            continue
        out.append(a)
    return out


def build_shard(shard: int, part: pathlib.Path, opts: BuildOptions, tessera: str,
                codec_from: Optional[pathlib.Path] = None) -> ShardResult:
    """Builds (or keeps) one shard, with `codec_from`'s codec if given;
    runs inside a Ray task."""
    t = time.time()
    dst = opts.out / shard_name(shard)
    if verified(tessera, dst) and (codec_from is None or codec_id(dst) == codec_id(codec_from)):
        return ShardResult(shard, "kept", _docs_of(tessera, dst), time.time() - t)
    if opts.embeddings is not None:
        src = ["--embeddings", str(part)]
    else:
        if part.stat().st_size == 0:
            raise BuildError(
                f"shard {shard_name(shard)} received no documents: use fewer shards"
            )
        src = ["--input", str(part), "--resume"]
    index_args = opts.index_args
    if codec_from is not None:
        index_args = _without(index_args, ("--codec", "--centroids")) + [
            "--codec-from", str(codec_from)]
    args = [tessera, "index", "build", *src, "--out", str(dst), *index_args]
    if dst.exists():
        # A shard that exists but does not verify is rebuilt in its place.
        args.append("--overwrite")
    r = proc.run(args)
    if r.returncode < 0:
        raise ShardBuildKilled(f"{shard_name(shard)}: tessera killed by signal {-r.returncode}")
    if r.returncode != 0:
        raise BuildError(f"{shard_name(shard)}: tessera index build failed: {r.stderr.strip()}")
    if not verified(tessera, dst):
        raise BuildError(f"{shard_name(shard)}: the built shard does not verify")
    return ShardResult(shard, "built", _docs_of(tessera, dst), time.time() - t)


def build(opts: BuildOptions) -> BuildSummary:
    """Routes, builds every shard on the connected Ray cluster, and writes
    the manifest. Call `ray.init` first."""
    import ray

    if opts.shards < 1:
        raise BuildError("--shards must be at least 1")
    t = time.time()
    tessera = proc.tessera_binary(opts.tessera)
    opts.out.mkdir(parents=True, exist_ok=True)
    parts = route(opts, tessera)
    gpus = opts.gpus_per_shard
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
    log.info("building %d shards (%s GPU each)", opts.shards, gpus)

    def run(shards, codec_from=None):
        def one(row):
            res = build_shard(int(row["shard"]), pathlib.Path(row["part"]), opts, tessera,
                              codec_from)
            return dataclasses.asdict(res)

        items = [{"shard": s, "part": str(parts[s])} for s in shards]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        return ds.map(
            one,
            num_cpus=opts.cpus_per_shard,
            num_gpus=gpus,
            ray_remote_args_fn=lambda: {
                "max_retries": opts.retries,
                "retry_exceptions": [ShardBuildKilled],
            },
        ).take_all()

    if opts.codec_mode == "shared" and opts.shards > 1:
        rows = run([0])
        rows += run(range(1, opts.shards), opts.out / shard_name(0))
    elif opts.codec_mode in ("shared", "per-shard"):
        rows = run(range(opts.shards))
    else:
        raise BuildError(f"--codec-mode {opts.codec_mode}: not shared or per-shard")
    results = sorted((ShardResult(**r) for r in rows), key=lambda r: r.shard)
    missing = set(range(opts.shards)) - {r.shard for r in results}
    if missing:
        raise BuildError(f"shards {sorted(missing)} did not build")
    names = [shard_name(s) for s in range(opts.shards)]
    r = proc.run([tessera, "shards", "manifest", "--dir", str(opts.out), *names])
    if r.returncode != 0:
        raise BuildError(f"tessera shards manifest: {r.stderr.strip()}")
    generation = json.loads((opts.out / "shards.json").read_text())["generation"]
    return BuildSummary(opts.out, results, generation, time.time() - t)
