#!/usr/bin/env python3
"""The measurements of scripts/bench-shards (see its header)."""

import argparse
import collections
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import grpc  # noqa: E402

from tessera_ray import proc  # noqa: E402
from tessera_ray.health import Probe  # noqa: E402
from tessera_ray.stubs import load  # noqa: E402

pb, pb_grpc = load()
BIN = os.environ["TESSERA_BIN"]
PY = sys.executable


def sh(*args):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(map(str, args))} failed:\n{r.stderr[-3000:]}")
    return r


def run_of(index, queries, out, *extra):
    sh(BIN, "search", "--index", index, "--queries", queries, "--run-out", out, "-k", "10",
       "--retriever", "colbert", *extra)
    r = collections.defaultdict(list)
    for line in open(out):
        q, _, d, *_ = line.split()
        r[q].append(d)
    return r


def overlap(ref, got):
    found = total = 0
    for q, docs in ref.items():
        found += len(set(docs[:10]) & set(got.get(q, [])[:10]))
        total += len(docs[:10])
    return found / total


def recall(a, work, emb):
    queries = a.dataset / "queries.jsonl"
    one, f32, seed7 = work / "one.idx", work / "one-f32.idx", work / "one-seed7.idx"
    sh(BIN, "index", "build", "--embeddings", emb, "--out", one)
    sh(BIN, "index", "build", "--embeddings", emb, "--out", f32, "--codec", "f32")
    sh(BIN, "index", "build", "--embeddings", emb, "--out", seed7, "--kmeans-seed", "7")
    runs = {
        "exact": run_of(f32, queries, work / "exact.run", "--candidates", "exhaustive"),
        "one": run_of(one, queries, work / "one.run"),
        "one, seed 7": run_of(seed7, queries, work / "seed7.run"),
    }
    for mode in ("per-shard", "shared"):
        out = work / f"set-{mode}"
        sh(PY, "-m", "tessera_ray", "build", "--embeddings", emb, "--shards", a.shards,
           "--out", out, "--codec-mode", mode)
        runs[f"{a.shards} shards, {mode}"] = run_of(out, queries, work / f"{mode}.run")
    same = work / "one-shared-codec.idx"
    sh(BIN, "index", "build", "--embeddings", emb, "--out", same, "--codec-from",
       work / "set-shared" / "shard-000")
    runs["one, shard 0's codec"] = run_of(same, queries, work / "same.run")
    print(f"\nrecall@10 of PLAID defaults ({len(runs['exact'])} queries)")
    print("| ranking | vs exact MaxSim | vs one index |")
    print("|---|---|---|")
    for name, r in runs.items():
        if name != "exact":
            print(f"| {name} | {overlap(runs['exact'], r):.4f} | {overlap(runs['one'], r):.4f} |")
    print(f"| {a.shards} shards, shared vs one index with shard 0's codec | | "
          f"{overlap(runs['one, shard 0' + chr(39) + 's codec'], runs[f'{a.shards} shards, shared']):.4f} |")


def build_rate(a, work):
    lines = (a.dataset / "corpus.jsonl").read_text().splitlines()[: a.build_docs]
    dump = work / "build.jsonl"
    dump.write_text("\n".join(lines) + "\n")
    t = time.time()
    sh(BIN, "index", "build", "--input", dump, "--out", work / "build-one.idx")
    one_s = time.time() - t
    t = time.time()
    r = sh(PY, "-m", "tessera_ray", "build", "--input", dump, "--shards", a.shards,
           "--out", work / "build-set")
    ray_s = time.time() - t
    print(f"\nbuild of {len(lines)} documents from a dump")
    print("| build | s | documents/s |")
    print("|---|---|---|")
    print(f"| tessera index build | {one_s:.1f} | {len(lines) / one_s:.1f} |")
    print(f"| python -m tessera_ray build, {a.shards} shards (with Ray start) | {ray_s:.1f} | "
          f"{len(lines) / ray_s:.1f} |")
    print(f"  ({r.stdout.strip()})")


def wait_serving(addr, timeout=600):
    if not Probe(addr).wait(timeout):
        sys.exit(f"{addr} did not start")


def load_run(stub, queries, calls, clients):
    lat, lock, n = [], threading.Lock(), [0]

    def client():
        while True:
            with lock:
                if n[0] >= calls:
                    return
                i = n[0]
                n[0] += 1
            t = time.perf_counter()
            stub.Search(pb.SearchRequest(queries=[queries[i % len(queries)]]), timeout=60)
            with lock:
                lat.append((time.perf_counter() - t) * 1e3)

    t = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    lat.sort()
    return lat[len(lat) // 2], lat[int(len(lat) * 0.99) - 1], len(lat) / wall


def serving(a, work, emb):
    one, shards = work / "one.idx", work / "set-per-shard"
    if not (shards / "shards.json").exists():
        sh(BIN, "index", "build", "--embeddings", emb, "--out", one)
        sh(PY, "-m", "tessera_ray", "build", "--embeddings", emb, "--shards", a.shards,
           "--out", shards)
    p1, p2 = proc.free_port("127.0.0.1"), proc.free_port("127.0.0.1")
    single = subprocess.Popen([BIN, "serve", "--index", one, "--addr", f"127.0.0.1:{p1}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cluster = subprocess.Popen([PY, "-m", "tessera_ray", "serve", "--shards", shards,
                                "--addr", f"127.0.0.1:{p2}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_serving(f"127.0.0.1:{p1}")
        wait_serving(f"127.0.0.1:{p2}")
        stubs = {"one tessera serve": pb_grpc.TesseraStub(grpc.insecure_channel(f"127.0.0.1:{p1}")),
                 f"Ray ingress, {a.shards} shards": pb_grpc.TesseraStub(
                     grpc.insecure_channel(f"127.0.0.1:{p2}"))}
        texts = [json.loads(l)["text"] for l in
                 (a.dataset / "queries.jsonl").read_text().splitlines()]
        prep = stubs["one tessera serve"].Prepare(pb.PrepareRequest(texts=texts[:200], vectors=True))
        kinds = {
            "text (hybrid)": [pb.Query(text=t, k=10) for t in texts],
            "vectors (MaxSim)": [pb.Query(vectors=p.vectors, k=10) for p in prep.results],
        }
        print(f"\nserving: {a.calls} calls per row, {a.clients} clients, k = 10, one machine")
        print("| server | queries | p50 ms | p99 ms | QPS |")
        print("|---|---|---|---|---|")
        for kind, qs in kinds.items():
            for name, stub in stubs.items():
                load_run(stub, qs, min(40, a.calls), a.clients)  # warm up
                p50, p99, qps = load_run(stub, qs, a.calls, a.clients)
                print(f"| {name} | {kind} | {p50:.1f} | {p99:.1f} | {qps:.1f} |")
    finally:
        for p in (cluster, single):
            p.terminate()
            p.wait(60)


def main():
    ap = argparse.ArgumentParser(prog="scripts/bench-shards")
    ap.add_argument("--dataset", type=pathlib.Path, required=True)
    ap.add_argument("--embeddings", type=pathlib.Path)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--build-docs", type=int, default=1000)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--only", default="recall,build,serve")
    ap.add_argument("--work", type=pathlib.Path)
    a = ap.parse_args()
    only = set(a.only.split(","))
    with tempfile.TemporaryDirectory(prefix="bench-shards-") as tmp:
        work = a.work or pathlib.Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        emb = a.embeddings
        if emb is None and only & {"recall", "serve"}:
            emb = work / "vectors"
            sh(BIN, "encode-corpus", "--input", a.dataset / "corpus.jsonl", "--out", emb)
        print(f"# {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, {a.dataset.name}")
        if "recall" in only:
            recall(a, work, emb)
        if "build" in only:
            build_rate(a, work)
        if "serve" in only:
            serving(a, work, emb)


if __name__ == "__main__":
    main()
