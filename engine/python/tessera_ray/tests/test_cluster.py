"""A real three-node Ray cluster on loopback: sharded builds (Ray Data) and
sharded serving (Ray Serve) against one index over the same documents.

Everything binds and advertises 127.0.0.1 (checked at the end from
/proc/net/tcp); every process is started and stopped here; loads are bounded
in calls and time. Data: the first TESSERA_RAY_TEST_DOCS (default 400)
documents of SciFact, split into 4 shards.

    python -m unittest discover -s engine/python/tessera_ray/tests -v
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # Ray on loopback only
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import grpc  # noqa: E402

from tessera_ray import proc  # noqa: E402
from tessera_ray.health import Probe  # noqa: E402
from tessera_ray.routing import shard_name, shard_of  # noqa: E402
from tessera_ray.stubs import load  # noqa: E402

from loopback import descendants, listeners  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[4]
SCIFACT = pathlib.Path(os.environ.get("TESSERA_SCIFACT", ROOT.parent / "shared/datasets/scifact"))
DOCS = int(os.environ.get("TESSERA_RAY_TEST_DOCS", "400"))
SHARDS = 4
pb, pb_grpc = load()


def sh(*args, **kw):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r


def wait_serving(addr, timeout=300):
    if not Probe(addr).wait(timeout):
        raise AssertionError(f"{addr} did not become SERVING in {timeout} s")


class Load:
    """A bounded load: `threads` clients, each calling until `calls` calls
    in all or `seconds` have passed; records every failure."""

    def __init__(self, stub, queries, threads=3, calls=400, seconds=60, **query):
        self.stub, self.queries, self.query = stub, queries, query
        self.calls, self.deadline = calls, time.time() + seconds
        self.done, self.failures, self.lock = 0, [], threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def run(self):
        n = 0
        while not self.stop.is_set() and time.time() < self.deadline:
            with self.lock:
                if self.done >= self.calls:
                    return
                self.done += 1
            q = self.queries[n % len(self.queries)]
            n += 1
            try:
                self.stub.Search(pb.SearchRequest(queries=[pb.Query(text=q, k=10, **self.query)]),
                                 timeout=10)
            except grpc.RpcError as e:
                with self.lock:
                    self.failures.append((time.time(), e.code(), e.details()))
            time.sleep(0.02)

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(30)
        return self.failures


class ShardedCluster(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not (SCIFACT / "corpus.jsonl").is_file():
            raise unittest.SkipTest(f"SciFact not found at {SCIFACT} (set TESSERA_SCIFACT)")
        import ray
        from ray.cluster_utils import Cluster

        cls.tmp = tempfile.TemporaryDirectory(prefix="tessera-ray-")
        cls.dir = pathlib.Path(cls.tmp.name)
        cls.bin = proc.tessera_binary()
        cls.procs = []
        lines = (SCIFACT / "corpus.jsonl").read_text().splitlines()[:DOCS]
        cls.corpus = cls.dir / "corpus.jsonl"
        cls.corpus.write_text("\n".join(lines) + "\n")
        cls.ids = [json.loads(l)["_id"] for l in lines]
        cls.queries = [json.loads(l)["text"] for l in
                       (SCIFACT / "queries.jsonl").read_text().splitlines()[:20]]
        # One encoding of the documents feeds every index below.
        cls.vectors = cls.dir / "vectors"
        sh(cls.bin, "encode-corpus", "--input", cls.corpus, "--out", cls.vectors)
        cls.one_f32 = cls.dir / "one-f32.idx"
        cls.one_r2 = cls.dir / "one-r2.idx"
        sh(cls.bin, "index", "build", "--embeddings", cls.vectors, "--out", cls.one_f32, "--codec", "f32")
        sh(cls.bin, "index", "build", "--embeddings", cls.vectors, "--out", cls.one_r2)

        cls.cluster = Cluster(initialize_head=True, connect=False, head_node_args=dict(
            num_cpus=1, node_ip_address="127.0.0.1", include_dashboard=False))
        for _ in range(2):
            cls.cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cls.cluster.wait_for_nodes()
        ray.init(address=cls.cluster.address, namespace="tessera")
        cls.ray = ray
        cls.address = cls.cluster.address

    @classmethod
    def tearDownClass(cls):
        for p in cls.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(60)
                except subprocess.TimeoutExpired:
                    p.kill()
        if getattr(cls, "ray", None):
            cls.ray.shutdown()
            cls.cluster.shutdown()
        left = [pid for pid in descendants(os.getpid())]
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if getattr(cls, "tmp", None):
            cls.tmp.cleanup()
        assert not left, f"processes left running: {left}"

    # ----- helpers ----------------------------------------------------------

    def tessera_ray(self, *args, check=True, **kw):
        cmd = [sys.executable, "-m", "tessera_ray", *map(str, args), "--ray-address", self.address]
        r = subprocess.run(cmd, capture_output=True, text=True, **kw)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed:\n{r.stderr[-4000:]}")
        return r

    @classmethod
    def start_single(cls, index):
        port = proc.free_port("127.0.0.1")
        p = subprocess.Popen([cls.bin, "serve", "--index", str(index), "--addr", f"127.0.0.1:{port}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cls.procs.append(p)
        wait_serving(f"127.0.0.1:{port}")
        return pb_grpc.TesseraStub(grpc.insecure_channel(f"127.0.0.1:{port}"))

    def search(self, stub, **q):
        r = stub.Search(pb.SearchRequest(queries=[pb.Query(**q)]), timeout=60)
        return [(h.id, h.score) for h in r.results[0].hits], r

    def assert_same_ranking(self, got, want, tol, what):
        self.assertEqual(len(got), len(want), what)
        for i, ((gi, gs), (wi, ws)) in enumerate(zip(got, want)):
            self.assertLessEqual(abs(gs - ws), tol, f"{what}: rank {i + 1}: {gi} {gs} vs {wi} {ws}")
        # Ids agree up to the order of equal scores (and which of a tie at
        # the cut makes the list).
        cut = want[-1][1] + tol if want else 0.0
        self.assertEqual({i for i, s in got if s > cut}, {i for i, s in want if s > cut}, what)

    def registry_view(self):
        from tessera_ray.serve import registry

        return self.ray.get(registry().view.remote())

    def kill_replica(self, shard):
        """Kills the `tessera serve` process of one replica of `shard`."""
        addr = self.registry_view()["replicas"][shard][0]
        port = int(addr.rsplit(":", 1)[1])
        for pid, _, p in listeners(descendants(os.getpid())):
            if p == port:
                os.kill(pid, signal.SIGKILL)
                return addr
        raise AssertionError(f"no process listens on {addr}")

    # ----- builds -----------------------------------------------------------

    def test_1_build_from_vectors_and_rerun_keeps_shards(self):
        for name, codec in (("set-f32", ["--codec", "f32"]), ("set-r2", [])):
            out = self.dir / name
            r = self.tessera_ray("build", "--embeddings", self.vectors, "--shards", SHARDS,
                                 "--out", out, *codec)
            self.assertIn(f"{SHARDS} shards ({SHARDS} built, 0 kept), {DOCS} documents", r.stdout)
            manifest = json.loads((out / "shards.json").read_text())
            want = [sum(1 for i in self.ids if shard_of(i, SHARDS) == s) for s in range(SHARDS)]
            self.assertEqual([s["docs"] for s in manifest["shards"]], want)
        r = self.tessera_ray("build", "--embeddings", self.vectors, "--shards", SHARDS,
                             "--out", self.dir / "set-f32", "--codec", "f32")
        self.assertIn(f"(0 built, {SHARDS} kept)", r.stdout)

    def test_2_a_killed_build_worker_is_retried_to_the_same_shards(self):
        small = self.dir / "small.jsonl"
        small.write_text("".join(l + "\n" for l in self.corpus.read_text().splitlines()[:60]))
        self.tessera_ray("build", "--input", small, "--shards", SHARDS, "--out", self.dir / "small-a",
                         "--codec", "f32")
        out_b = self.dir / "small-b"
        cmd = [sys.executable, "-m", "tessera_ray", "build", "--input", str(small), "--shards",
               str(SHARDS), "--out", str(out_b), "--codec", "f32", "--ray-address", self.address]
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed = None
        deadline = time.time() + 120
        while killed is None and time.time() < deadline and p.poll() is None:
            for pid in descendants(os.getpid()):
                try:
                    cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                except OSError:
                    continue
                if b"build" in cmdline and str(out_b).encode() in b" ".join(cmdline) \
                        and cmdline[0].endswith(b"tessera"):
                    worker = int(pathlib.Path(f"/proc/{pid}/stat").read_text().split()[3])
                    os.kill(worker, signal.SIGKILL)  # the Ray worker running the shard
                    killed = worker
                    break
            time.sleep(0.05)
        out, err = p.communicate(timeout=600)
        self.assertIsNotNone(killed, "no shard build was seen running")
        self.assertEqual(p.returncode, 0, err[-3000:])
        self.assertIn(f"{SHARDS} shards", out)
        for q in self.queries[:5]:
            a = sh(self.bin, "search", "--index", self.dir / "small-a", "--retriever", "colbert",
                   "--candidates", "exhaustive", "-k", "20", "--json", q).stdout
            b = sh(self.bin, "search", "--index", out_b, "--retriever", "colbert",
                   "--candidates", "exhaustive", "-k", "20", "--json", q).stdout
            self.assertEqual(json.loads(a)["results"], json.loads(b)["results"], q)

    # ----- serving ----------------------------------------------------------

    def test_3_the_cluster_ranks_as_one_index(self):
        port = proc.free_port("127.0.0.1")
        type(self).ingress_addr = f"127.0.0.1:{port}"
        p = subprocess.Popen(
            [sys.executable, "-m", "tessera_ray", "serve", "--shards", str(self.dir / "set-f32"),
             "--replicas", "2", "--addr", self.ingress_addr, "--ray-address", self.address],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        self.procs.append(p)
        wait_serving(self.ingress_addr)
        cluster = pb_grpc.TesseraStub(grpc.insecure_channel(self.ingress_addr))
        type(self).cluster_stub = cluster
        one = self.start_single(self.one_f32)
        type(self).exact = one
        exhaustive = pb.CandidateParams(generator=pb.CANDIDATE_GENERATOR_EXHAUSTIVE)
        for q in self.queries:
            want, _ = self.search(one, text=q, k=100, retriever=pb.RETRIEVER_COLBERT, candidates=exhaustive)
            got, resp = self.search(cluster, text=q, k=100, retriever=pb.RETRIEVER_COLBERT,
                                    candidates=exhaustive)
            self.assert_same_ranking(got, want, 1e-4, f"MaxSim {q}")
            self.assertEqual(len(resp.shards), SHARDS)
            for r in (pb.RETRIEVER_BM25, pb.RETRIEVER_HYBRID):
                want, _ = self.search(one, text=q, k=10, retriever=r, candidates=exhaustive)
                got, _ = self.search(cluster, text=q, k=10, retriever=r, candidates=exhaustive)
                self.assert_same_ranking(got, want, 1e-5, f"{r} {q}")
        # Pre-encoded vectors work through the ingress too.
        v = one.Prepare(pb.PrepareRequest(texts=[self.queries[0]], vectors=True)).results[0].vectors
        want, _ = self.search(one, vectors=v, k=10, candidates=exhaustive)
        got, _ = self.search(cluster, vectors=v, k=10, candidates=exhaustive)
        self.assert_same_ranking(got, want, 1e-4, "vectors")
        info = cluster.IndexInfo(pb.IndexInfoRequest())
        self.assertEqual(info.num_docs, DOCS)
        # The CLI client works unchanged and shows each shard's part.
        out = json.loads(sh(self.bin, "query", "--addr", self.ingress_addr, "--json", "-k", "5",
                            self.queries[0]).stdout)
        self.assertEqual(len(out["results"]), 5)
        self.assertEqual([s["shard"] for s in out["shards"]], [shard_name(s) for s in range(SHARDS)])
        self.assertEqual(out["missing_shards"], [])

    def test_4_a_killed_replica_with_two_replicas_fails_no_call(self):
        load = Load(self.cluster_stub, self.queries, calls=300, seconds=40)
        time.sleep(1)
        killed = self.kill_replica(1)
        time.sleep(4)
        failures = load.finish()
        self.assertEqual(failures, [])
        self.assertGreater(load.done, 50)
        deadline = time.time() + 60
        while True:
            live = self.registry_view()["replicas"][1]
            if len(live) == 2 and killed not in live:
                break
            self.assertLess(time.time(), deadline, "the killed replica was not replaced")
            time.sleep(0.5)

    def test_5_updates_land_on_their_shard(self):
        stub = self.cluster_stub
        new = [pb.NewDocument(id=f"new-{i}", title="Zymurgy", text=f"zymurgy fermentation note {i}")
               for i in range(6)]
        r = stub.AddDocuments(iter([pb.AddDocumentsRequest(documents=new)]))
        self.assertEqual(r.added, 6)
        got, _ = self.search(stub, text="zymurgy", k=10, retriever=pb.RETRIEVER_BM25)
        self.assertEqual({i for i, _ in got}, {d.id for d in new})
        table = self.registry_view()["replicas"]
        for d in new:
            for s in range(SHARDS):
                direct = pb_grpc.TesseraStub(grpc.insecure_channel(table[s][0]))
                found = direct.GetDocuments(pb.GetDocumentsRequest(ids=[d.id])).results[0].found
                self.assertEqual(found, s == shard_of(d.id, SHARDS), f"{d.id} on {shard_name(s)}")
        # A filter on a field only two new documents have (so at most two of
        # the four shards know it) finds them; a field no shard has is refused.
        r = stub.AddDocuments(iter([pb.AddDocumentsRequest(documents=[
            pb.NewDocument(id=f"lab-{i}", text="zymurgy assay", metadata_json='{"lab": 7}')
            for i in range(2)])]))
        flt = '{"eq": {"field": "lab", "value": 7}}'
        got, _ = self.search(stub, text="zymurgy", k=10, retriever=pb.RETRIEVER_BM25, filter=flt)
        self.assertEqual({i for i, _ in got}, {"lab-0", "lab-1"})
        with self.assertRaises(grpc.RpcError) as e:
            self.search(stub, text="zymurgy", k=10, filter='{"eq": {"field": "nope", "value": 1}}')
        self.assertEqual(e.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        r = stub.DeleteDocuments(pb.DeleteDocumentsRequest(ids=["new-0", "nope"]))
        self.assertEqual((r.deleted, list(r.unknown_ids)), (1, ["nope"]))
        docs = stub.GetDocuments(pb.GetDocumentsRequest(ids=["new-0", "new-1"])).results
        self.assertEqual([d.found for d in docs], [False, True])

    def test_6_a_new_generation_rolls_out_under_load(self):
        load = Load(self.cluster_stub, self.queries, calls=400, seconds=120)
        r = self.tessera_ray("rollout", "--shards", self.dir / "set-r2", "--replicas", "1")
        failures = load.finish()
        self.assertIn("now serving", r.stdout)
        self.assertEqual(failures, [])
        info = self.cluster_stub.IndexInfo(pb.IndexInfoRequest())
        self.assertEqual(info.path, str((self.dir / "set-r2").resolve()))
        # PLAID defaults over the shards find as much of the exact MaxSim
        # top 10 as one index does.
        one = self.start_single(self.one_r2)
        exhaustive = pb.CandidateParams(generator=pb.CANDIDATE_GENERATOR_EXHAUSTIVE)
        hits = {"one": 0, "cluster": 0}
        total = 0
        for q in self.queries:
            truth, _ = self.search(self.exact, text=q, k=10, retriever=pb.RETRIEVER_COLBERT,
                                   candidates=exhaustive)
            truth = {i for i, _ in truth}
            for name, stub in (("one", one), ("cluster", self.cluster_stub)):
                got, _ = self.search(stub, text=q, k=10, retriever=pb.RETRIEVER_COLBERT)
                hits[name] += len({i for i, _ in got} & truth)
            total += len(truth)
        one_r, cluster_r = hits["one"] / total, hits["cluster"] / total
        self.assertGreaterEqual(cluster_r, one_r - 0.03, f"recall@10: cluster {cluster_r}, one {one_r}")

    def test_7_a_killed_single_replica_fails_calls_naming_its_shard_then_heals(self):
        load = Load(self.cluster_stub, self.queries, calls=600, seconds=60)
        time.sleep(0.5)
        killed = self.kill_replica(2)
        partial = None
        for _ in range(40):
            try:
                r = self.cluster_stub.Search(pb.SearchRequest(
                    queries=[pb.Query(text=self.queries[0], k=10)], allow_partial=True), timeout=10)
            except grpc.RpcError:
                continue
            if r.missing_shards:
                partial = r
                break
            time.sleep(0.05)
        deadline = time.time() + 60
        while self.registry_view()["replicas"][2] in ([], [killed]):
            self.assertLess(time.time(), deadline, "the shard did not heal")
            time.sleep(0.3)
        time.sleep(1)
        failures = load.finish()
        self.assertTrue(failures, "no call fell in the gap")
        for _, code, details in failures:
            self.assertEqual(code, grpc.StatusCode.UNAVAILABLE, details)
            self.assertIn(shard_name(2), details)
        self.assertIsNotNone(partial, "allow_partial never answered without the shard")
        self.assertEqual(list(partial.missing_shards), [shard_name(2)])
        # Healed: calls succeed again.
        self.search(self.cluster_stub, text=self.queries[1], k=10)

    def test_9_everything_listens_on_loopback_only(self):
        socks = listeners(descendants(os.getpid()))
        self.assertTrue(socks, "no listening socket found")
        bad = [s for s in socks if s[1] != "127.0.0.1"]
        self.assertEqual(bad, [])


if __name__ == "__main__":
    unittest.main()
