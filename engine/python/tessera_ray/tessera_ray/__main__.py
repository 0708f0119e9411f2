"""`python -m tessera_ray`: sharded builds and sharded serving on Ray."""

import argparse
import logging
import os
import pathlib
import signal
import sys
import time

BUILD_EXAMPLES = """examples:
  python -m tessera_ray build --input corpus.jsonl --shards 4 --out corpus-set
  python -m tessera_ray build --input 'dumps/part-*.jsonl.zst' --shards 16 \\
      --out /mnt/shared/corpus-set --ray-address head.internal:6379 --codec residual2
  python -m tessera_ray build --embeddings vectors/ --shards 4 --out corpus-set

A rerun of the same command keeps the shards that already verify and builds
the rest; the manifest (shards.json) is written last. OUT must be one path
that every node of the cluster sees (a local folder on one machine; an NFS
mount on several)."""

SERVE_EXAMPLES = """examples:
  python -m tessera_ray serve --shards corpus-set --replicas 2 --addr 127.0.0.1:50051
  tessera query --addr 127.0.0.1:50051 "what causes tides?"

The ingress speaks the tessera.v1.Tessera gRPC API, so `tessera query`, the
Python example and any other client work against it unchanged. Stop with
Ctrl-C (the service is deleted). Roll out a new build of the set with
`python -m tessera_ray rollout`, or give --watch to roll out every new
generation of the manifest by itself."""

ROLLOUT_EXAMPLES = """example:
  python -m tessera_ray build --input corpus-v2.jsonl --shards 4 --out corpus-set-v2
  python -m tessera_ray rollout --shards corpus-set-v2 --ray-address 127.0.0.1:6379

The new shards start next to the old ones; the ingress switches once each has
its replicas, and the old generation goes when no call uses it."""


def _ray_args(p):
    p.add_argument("--ray-address", metavar="HOST:PORT",
                   help="the Ray cluster to use (default: start a local one on 127.0.0.1)")
    p.add_argument("--tessera", metavar="PATH",
                   help="the tessera binary (default: $TESSERA_BIN, PATH, or the "
                        "repository's target/release/tessera)")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress details")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m tessera_ray",
        description="Tessera past one machine: sharded builds (Ray Data) and sharded "
                    "serving (Ray Serve).",
        epilog="examples:\n  python -m tessera_ray build --help\n"
               "  python -m tessera_ray serve --help",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build a shard set from dumps",
                       description="Route a dump's documents to S shards by id and build "
                                   "every shard as a Ray task (on a GPU where the cluster "
                                   "has one), then write the shard set's manifest.",
                       epilog=BUILD_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", metavar="PATH_OR_GLOB",
                     help="dumps `tessera index build` reads (BEIR corpus.jsonl, any JSONL, "
                          "TSV; .gz or .zst): files or quoted globs")
    src.add_argument("--embeddings", type=pathlib.Path, metavar="DIR",
                     help="an embeddings folder (tessera encode-corpus) instead")
    b.add_argument("--shards", type=int, required=True, metavar="S", help="number of shards")
    b.add_argument("--out", type=pathlib.Path, required=True, metavar="DIR",
                   help="the shard set's folder, seen by every node")
    for flag, help_ in (("--model", "model folder or name"),
                        ("--codec", "vector codec (default residual2)"),
                        ("--reduction", "dimension reduction folder"),
                        ("--dim", "reduced dimension"),
                        ("--analyzer", "BM25 analyzer: en or simple"),
                        ("--precision", "encoder precision"),
                        ("--batch-size", "encoder batch size")):
        b.add_argument(flag, help=f"passed to tessera index build: {help_}")
    b.add_argument("--index-arg", action="append", default=[], metavar="ARG",
                   help="any other `tessera index build` argument (repeat; e.g. "
                        "--index-arg=--kmeans-seed=7)")
    for flag, help_ in (("--format", "record format: jsonl or tsv"),
                        ("--id-field", "JSONL id field"),
                        ("--text-fields", "JSONL text fields")):
        b.add_argument(flag, help=f"how records are read: {help_}")
    b.add_argument("--skip-invalid", action="store_true", help="skip bad records")
    b.add_argument("--codec-mode", choices=["per-shard", "shared"], default="per-shard",
                   help="per-shard (default): each shard trains its own centroids, all at "
                        "once; shared: shard 0 is built first and every other shard codes "
                        "with its centroids and buckets")
    b.add_argument("--gpus-per-shard", type=float, metavar="N",
                   help="GPUs each shard task asks for (default: 1 if the cluster has GPUs, else 0)")
    b.add_argument("--cpus-per-shard", type=float, default=1.0, metavar="N",
                   help="CPUs each shard task asks for (default 1)")
    b.add_argument("--retries", type=int, default=3, metavar="N",
                   help="times Ray retries a shard whose worker died (default 3)")
    _ray_args(b)

    for name, examples in (("serve", SERVE_EXAMPLES), ("rollout", ROLLOUT_EXAMPLES)):
        s = sub.add_parser(
            name, help="serve a shard set" if name == "serve" else "switch to a new shard set",
            description=("Serve a shard set on Ray Serve behind one tessera.v1 gRPC ingress."
                         if name == "serve" else
                         "Roll a running service over to another shard set without a failed call."),
            epilog=examples, formatter_class=argparse.RawDescriptionHelpFormatter)
        s.add_argument("--shards", type=pathlib.Path, required=True, metavar="DIR",
                       help="the shard set's folder (with shards.json)")
        s.add_argument("--replicas", type=int, default=1, metavar="R",
                       help="replicas per shard (default 1)")
        s.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                       help="an argument for every `tessera serve` replica (repeat; e.g. "
                            "--serve-arg=--max-in-flight=16)")
        _ray_args(s)
        if name == "serve":
            s.add_argument("--addr", default="127.0.0.1:50051", metavar="HOST:PORT",
                           help="where the ingress listens (default 127.0.0.1:50051)")
            s.add_argument("--max-queries", type=int, default=64, metavar="N",
                           help="queries per Search call, at most (default 64)")
            s.add_argument("--max-add-mb", type=int, default=64, metavar="MB",
                           help="bytes of one AddDocuments stream, at most (default 64)")
            s.add_argument("--tls-cert", metavar="PEM", help="the ingress's TLS certificate chain")
            s.add_argument("--tls-key", metavar="PEM", help="the ingress's TLS private key")
            s.add_argument("--insecure", action="store_true",
                           help="allow a non-loopback --addr without TLS (private networks)")
            s.add_argument("--watch", action="store_true",
                           help="roll out each new generation of DIR/shards.json by itself")
    return top


def _connect(args):
    import ray

    if args.ray_address:
        ray.init(address=args.ray_address, namespace="tessera", logging_level=logging.WARNING)
    else:
        ray.init(namespace="tessera", include_dashboard=False, logging_level=logging.WARNING,
                 _node_ip_address="127.0.0.1")
    return ray


def _build(args) -> int:
    from .build import BuildError, BuildOptions, build, expand_inputs

    index_args = []
    for flag in ("model", "codec", "reduction", "dim", "analyzer", "precision", "batch_size"):
        v = getattr(args, flag)
        if v is not None:
            index_args += [f"--{flag.replace('_', '-')}", str(v)]
    index_args += args.index_arg
    record_args = []
    for flag in ("format", "id_field", "text_fields"):
        v = getattr(args, flag)
        if v is not None:
            record_args += [f"--{flag.replace('_', '-')}", str(v)]
    if args.skip_invalid:
        record_args.append("--skip-invalid")
        index_args.append("--skip-invalid")
    opts = BuildOptions(
        inputs=args.input or [], shards=args.shards, out=args.out, embeddings=args.embeddings,
        tessera=args.tessera, index_args=index_args, record_args=record_args,
        codec_mode=args.codec_mode, gpus_per_shard=args.gpus_per_shard, cpus_per_shard=args.cpus_per_shard,
        retries=args.retries)
    # Bad inputs are reported before a cluster is joined or started.
    if opts.embeddings is None:
        expand_inputs(opts.inputs)
    elif not opts.embeddings.is_dir():
        raise BuildError(f"--embeddings {opts.embeddings}: not a folder")
    _connect(args)
    summary = build(opts)
    print(summary.line())
    return 0


def _serve_opts(args):
    """ServeOptions from `serve` or `rollout` arguments (the options
    `rollout` lacks keep ServeOptions' defaults)."""
    from .serve import ServeOptions

    given = {k: getattr(args, k) for k in ("addr", "max_queries", "max_add_mb", "tls_cert",
                                            "tls_key", "insecure") if hasattr(args, k)}
    return ServeOptions(shards=args.shards, replicas=args.replicas, tessera=args.tessera,
                        serve_args=args.serve_arg, **given)


def _serve(args) -> int:
    from . import serve as sv

    opts = _serve_opts(args)
    sv.check_exposure(opts)
    sv.read_shard_set(opts.shards)
    _connect(args)
    active = sv.start(opts)
    print(f"serving {active['path']} (generation {active['generation']}, {active['shards']} "
          f"shards x {opts.replicas} replicas) on {opts.addr}", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    try:
        while not stop:
            time.sleep(1)
            if args.watch:
                gen = sv.read_shard_set(opts.shards).generation
                if gen != active["generation"]:
                    active = sv.rollout(opts)
                    print(f"rolled out generation {gen}", flush=True)
    except KeyboardInterrupt:
        pass
    if args.ray_address:
        # The cluster outlives this command: take the service off it. (A
        # local cluster goes with this process, the service with it.)
        sv.shutdown()
    return 0


def _rollout(args) -> int:
    from . import serve as sv

    opts = _serve_opts(args)
    sv.read_shard_set(opts.shards)
    _connect(args)
    new = sv.rollout(opts)
    print(f"now serving {new['path']} (generation {new['generation']}, {new['shards']} shards)")
    return 0


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if not args.ray_address:
        # A local cluster stays on loopback (read when Ray is imported).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .build import BuildError
    from .proc import TesseraNotFound
    from .serve import ServeError

    try:
        return {"build": _build, "serve": _serve, "rollout": _rollout}[args.command](args)
    except (BuildError, ServeError, TesseraNotFound, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
