"""The front end of a shard set: the `tessera.v1.Tessera` gRPC API over S
shards, each served by one or more `tessera serve` replicas.

A search is two rounds. *Prepare* encodes the query texts once (on one
shard, chosen round-robin) and collects every shard's BM25 statistics for
the query terms, summed to the collection's. *Search* sends each shard the
pre-encoded vectors and the summed statistics, asks every shard for the k
best (max(k, 100) of each side for hybrid), merges by score (ties by id)
and fuses hybrid results after the merge — so the answer equals one index
built from the same documents. Filters go to every shard.

A shard call tries the shard's replicas in turn (a replica that refused a
connection is skipped for a few seconds) within the call's deadline. A shard
with no live replica fails the call with UNAVAILABLE naming it, unless the
request set `allow_partial`; then the response lists it in
`missing_shards`. Writes go to the shard of each id (`shard_of`); a write
spanning shards commits shard by shard.

The shard table (which replicas serve which shard, the set's generation)
comes from a `view()` callable, so the same servicer runs under Ray Serve
(fed by the registry) and in tests (a fixed table).
"""

import concurrent.futures
import functools
import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import grpc

from . import merge as mg
from .routing import shard_name, shard_of
from .stubs import load

log = logging.getLogger("tessera_ray.ingress")

# Seconds a replica that refused a call is tried last.
DOWN_FOR_S = 3.0
# Default deadline of a call that has none.
DEFAULT_DEADLINE_S = 30.0
MAX_MESSAGE = 64 << 20
# How a shard says that none of its documents has a filter's field.
UNKNOWN_FIELD = "no document has the field"


@dataclass
class View:
    """One generation of a shard set as the ingress sees it."""

    app: str
    generation: int
    path: str
    # replicas[s]: addresses of the live replicas of shard s.
    replicas: List[List[str]]

    @property
    def shards(self) -> int:
        return len(self.replicas)


@dataclass
class Limits:
    max_queries: int = 64
    max_add_mb: int = 64
    bm25_weight: float = mg.BM25_WEIGHT


class ShardFailed(Exception):
    def __init__(self, shard: int, code, detail: str):
        super().__init__(f"{shard_name(shard)}: {detail}")
        self.shard = shard
        self.code = code
        self.detail = detail


@dataclass
class Report:
    ms: float = 0.0
    hits: int = 0
    replica: str = ""


@dataclass
class Call:
    """One client call: its deadline, metadata and per-shard reports."""

    deadline: float
    metadata: Tuple
    allow_partial: bool = False
    reports: Dict[int, Report] = field(default_factory=dict)
    missing: set = field(default_factory=set)


def rpc(handler):
    """Wraps a unary handler `handler(self, request, context, view, call)`:
    the call is counted on its generation, and a shard's failure ends it
    with that shard's status."""

    @functools.wraps(handler)
    def wrapper(self, request, context):
        view, call = self._enter(context)
        try:
            return handler(self, request, context, view, call)
        except ShardFailed as e:
            self._abort(context, e)
        finally:
            self._leave(view)

    return wrapper


class Servicer:
    """The servicer; `view()` returns the current `View`."""

    def __init__(self, view: Callable[[], Optional[View]], limits: Limits = Limits()):
        self.pb2, self.pb2_grpc = load()
        self._view = view
        self.limits = limits
        self._channels: Dict[str, object] = {}
        self._down: Dict[str, float] = {}
        self._lock = threading.Lock()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=64)
        self._rr = 0
        self._inflight: Dict[str, int] = {}

    # ----- plumbing -------------------------------------------------------

    def stub(self, addr: str):
        with self._lock:
            s = self._channels.get(addr)
            if s is None:
                ch = grpc.insecure_channel(addr, options=[
                    ("grpc.max_receive_message_length", MAX_MESSAGE),
                    ("grpc.max_send_message_length", MAX_MESSAGE),
                ])
                s = self.pb2_grpc.TesseraStub(ch)
                self._channels[addr] = s
            return s

    def inflight(self, app: str) -> int:
        with self._lock:
            return self._inflight.get(app, 0)

    def _enter(self, context) -> Tuple[View, Call]:
        # Taking the view and counting the call are one step, so a rollout
        # that saw no call on the old generation never has one start on it.
        with self._lock:
            view = self._view()
            if view is not None:
                self._inflight[view.app] = self._inflight.get(view.app, 0) + 1
        if view is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "no shard set is being served yet")
        left = context.time_remaining()
        deadline = time.monotonic() + (left if left is not None and left < 1e9 else DEFAULT_DEADLINE_S)
        md = tuple(
            (k, v) for k, v in context.invocation_metadata() if k in ("authorization",)
        )
        return view, Call(deadline, md)

    def _leave(self, view: View) -> None:
        with self._lock:
            self._inflight[view.app] -= 1

    def call_shard(self, view: View, call: Call, shard: int, method: str, request):
        """Calls `method` on a replica of `shard`, trying the others when a
        replica is unreachable. Raises ShardFailed."""
        addrs = list(view.replicas[shard])
        random.shuffle(addrs)
        now = time.monotonic()
        with self._lock:
            addrs.sort(key=lambda a: self._down.get(a, 0.0) > now)
        last = "no live replica"
        code = grpc.StatusCode.UNAVAILABLE
        t = time.monotonic()
        for addr in addrs:
            timeout = call.deadline - time.monotonic()
            if timeout <= 0:
                raise ShardFailed(shard, grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
            try:
                resp = getattr(self.stub(addr), method)(
                    request, timeout=timeout, metadata=call.metadata)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNAVAILABLE:
                    with self._lock:
                        self._down[addr] = time.monotonic() + DOWN_FOR_S
                    last = f"replica {addr}: {e.details()}"
                    continue
                raise ShardFailed(shard, e.code(), e.details() or str(e.code()))
            with self._lock:
                self._down.pop(addr, None)
                r = call.reports.setdefault(shard, Report())
                r.ms += (time.monotonic() - t) * 1e3
                r.replica = addr
            return resp
        raise ShardFailed(shard, code, f"no live replica ({last})")

    def fan_out(self, view: View, call: Call, requests: Dict[int, object], method: str,
                unknown_field_ok: bool = False):
        """Calls every shard in `requests` at once; returns {shard: response}
        without the shards that are missing under `allow_partial`. With
        `unknown_field_ok`, a shard none of whose documents has a filter's
        field answers nothing rather than failing the call (another shard
        may hold such documents); the call fails only if no shard has it."""
        futs = {
            s: self._pool.submit(self.call_shard, view, call, s, method, req)
            for s, req in requests.items()
        }
        out, failed, unknown = {}, [], []
        for s, f in futs.items():
            try:
                out[s] = f.result()
            except ShardFailed as e:
                if (unknown_field_ok and e.code == grpc.StatusCode.INVALID_ARGUMENT
                        and UNKNOWN_FIELD in e.detail):
                    unknown.append(e)
                else:
                    failed.append(e)
        if unknown and not out and not failed:
            raise unknown[0]
        for e in failed:
            if call.allow_partial and e.code == grpc.StatusCode.UNAVAILABLE:
                call.missing.add(e.shard)
                continue
            raise e
        return out

    @staticmethod
    def _abort(context, e: ShardFailed):
        code = e.code if isinstance(e.code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
        context.abort(code, str(e))

    # ----- search ---------------------------------------------------------

    @rpc
    def Search(self, request, context, view, call):
        if not request.queries:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "queries: give at least one query")
        if len(request.queries) > self.limits.max_queries:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"queries: {len(request.queries)} is over the limit of "
                          f"{self.limits.max_queries} per call")
        call.allow_partial = request.allow_partial
        return self._search(view, call, request)

    def _retriever(self, q):
        pb = self.pb2
        r = q.retriever
        if r == pb.RETRIEVER_UNSPECIFIED:
            return pb.RETRIEVER_COLBERT if not q.text.strip() else pb.RETRIEVER_HYBRID
        return r

    def _prepare(self, view: View, call: Call, queries, kinds):
        """Vectors for the texts that need encoding and the summed BM25
        statistics for those that need them: ({i: vectors}, {i: stats})."""
        pb = self.pb2
        need_vec = [i for i, q in enumerate(queries)
                    if kinds[i] in (pb.RETRIEVER_COLBERT, pb.RETRIEVER_HYBRID)
                    and not q.HasField("vectors")]
        need_stats = [i for i, q in enumerate(queries)
                      if kinds[i] in (pb.RETRIEVER_BM25, pb.RETRIEVER_HYBRID)
                      and not q.HasField("bm25_stats")]
        vectors, stats = {}, {}
        if not need_vec and not need_stats:
            return vectors, stats
        with self._lock:
            self._rr += 1
            enc = self._rr % view.shards
        requests = {}
        for s in range(view.shards):
            if s == enc and need_vec:
                idx = sorted(set(need_vec) | set(need_stats))
                requests[s] = (idx, pb.PrepareRequest(
                    texts=[queries[i].text for i in idx], vectors=True,
                    bm25_stats=bool(need_stats)))
            elif need_stats:
                requests[s] = (need_stats, pb.PrepareRequest(
                    texts=[queries[i].text for i in need_stats], bm25_stats=True))
        got = self.fan_out(view, call, {s: r for s, (_, r) in requests.items()}, "Prepare")
        if need_vec and enc not in got:
            # The encoding shard is missing (allow_partial): encode elsewhere.
            for s in got:
                r = self.call_shard(view, call, s, "Prepare", pb.PrepareRequest(
                    texts=[queries[i].text for i in need_vec], vectors=True))
                for i, p in zip(need_vec, r.results):
                    vectors[i] = p.vectors
                break
            else:
                raise ShardFailed(enc, grpc.StatusCode.UNAVAILABLE, "no shard could encode the query")
        per_query: Dict[int, list] = {i: [] for i in need_stats}
        for s, resp in got.items():
            idx = requests[s][0]
            for i, p in zip(idx, resp.results):
                if s == enc and i in need_vec:
                    vectors[i] = p.vectors
                if i in per_query and p.HasField("bm25_stats"):
                    per_query[i].append(p.bm25_stats)
        for i, lst in per_query.items():
            summed = mg.sum_stats(lst)
            stats[i] = pb.Bm25Stats(docs=summed["docs"], tokens=summed["tokens"],
                                    doc_freq=summed["doc_freq"])
        return vectors, stats

    def _search(self, view: View, call: Call, request):
        pb = self.pb2
        t0 = time.monotonic()
        queries = list(request.queries)
        kinds = [self._retriever(q) for q in queries]
        vectors, stats = self._prepare(view, call, queries, kinds)
        encode_ms = (time.monotonic() - t0) * 1e3
        subs = []  # (query index, side, pb.Query)
        for i, q in enumerate(queries):
            k = q.k or 10
            depth = max(k, mg.HYBRID_DEPTH) if kinds[i] == pb.RETRIEVER_HYBRID else k
            common = dict(k=depth, candidates=q.candidates, filter=q.filter, fields=q.fields)
            if kinds[i] in (pb.RETRIEVER_COLBERT, pb.RETRIEVER_HYBRID):
                v = q.vectors if q.HasField("vectors") else vectors[i]
                subs.append((i, "d", pb.Query(id=f"{i}d", vectors=v,
                                              retriever=pb.RETRIEVER_COLBERT, **common)))
            if kinds[i] in (pb.RETRIEVER_BM25, pb.RETRIEVER_HYBRID):
                st = q.bm25_stats if q.HasField("bm25_stats") else stats[i]
                subs.append((i, "s", pb.Query(id=f"{i}s", text=q.text, bm25_stats=st,
                                              retriever=pb.RETRIEVER_BM25, **common)))
        req = pb.SearchRequest(queries=[s[2] for s in subs])
        live = [s for s in range(view.shards) if s not in call.missing]
        t1 = time.monotonic()
        got = self.fan_out(view, call, {s: req for s in live}, "Search", unknown_field_ok=True)
        search_ms = (time.monotonic() - t1) * 1e3
        lists: Dict[Tuple[int, str], list] = {}
        tokens: Dict[int, int] = {}
        for s, resp in got.items():
            call.reports[s].hits += sum(len(r.hits) for r in resp.results)
            for (i, side, _), r in zip(subs, resp.results):
                lists.setdefault((i, side), []).append(list(r.hits))
                if side == "d":
                    tokens[i] = max(tokens.get(i, 0), r.query_tokens)
        total_ms = (time.monotonic() - t0) * 1e3
        results = []
        for i, q in enumerate(queries):
            k = q.k or 10
            if kinds[i] == pb.RETRIEVER_HYBRID:
                depth = max(k, mg.HYBRID_DEPTH)
                dense = mg.merge(lists.get((i, "d"), []), depth)
                sparse = mg.merge(lists.get((i, "s"), []), depth)
                hits = mg.linear_fusion(dense, sparse, k, self.limits.bm25_weight, _rescored)
            else:
                side = "d" if kinds[i] == pb.RETRIEVER_COLBERT else "s"
                hits = mg.merge(lists.get((i, side), []), k)
            results.append(pb.QueryResult(
                id=q.id, hits=hits, query_tokens=tokens.get(i, 0),
                timings=pb.Timings(encode_ms=encode_ms, candidates_ms=search_ms,
                                   total_ms=total_ms)))
        return pb.SearchResponse(
            results=results, generation=view.generation,
            shards=self._reports(call), missing_shards=[shard_name(s) for s in sorted(call.missing)])

    def _reports(self, call: Call):
        return [self.pb2.ShardReport(shard=shard_name(s), total_ms=r.ms, hits=r.hits, replica=r.replica)
                for s, r in sorted(call.reports.items())]

    @rpc
    def Prepare(self, request, context, view, call):
        pb = self.pb2
        reqs = {s: pb.PrepareRequest(texts=request.texts, bm25_stats=True)
                for s in range(view.shards)} if request.bm25_stats else {}
        enc = random.randrange(view.shards)
        if request.vectors or not reqs:
            reqs[enc] = pb.PrepareRequest(texts=request.texts, vectors=request.vectors,
                                          bm25_stats=request.bm25_stats)
        got = self.fan_out(view, call, reqs, "Prepare")
        out = []
        for n in range(len(request.texts)):
            p = pb.Prepared()
            if request.vectors:
                p.vectors.CopyFrom(got[enc].results[n].vectors)
            if request.bm25_stats:
                summed = mg.sum_stats([got[s].results[n].bm25_stats for s in got])
                p.bm25_stats.CopyFrom(pb.Bm25Stats(**summed))
            out.append(p)
        return pb.PrepareResponse(results=out)

    # ----- documents ------------------------------------------------------

    def _by_shard(self, view: View, ids) -> Dict[int, List[str]]:
        out: Dict[int, List[str]] = {}
        for i in ids:
            out.setdefault(shard_of(i, view.shards), []).append(i)
        return out

    @rpc
    def GetDocuments(self, request, context, view, call):
        pb = self.pb2
        groups = self._by_shard(view, request.ids)
        got = self.fan_out(view, call, {s: pb.GetDocumentsRequest(ids=ids)
                                        for s, ids in groups.items()}, "GetDocuments")
        found = {}
        for resp in got.values():
            for r in resp.results:
                found[r.id] = r
        return pb.GetDocumentsResponse(results=[found[i] for i in request.ids])

    @rpc
    def AddDocuments(self, request_iterator, context, view, call):
        pb = self.pb2
        cap = self.limits.max_add_mb << 20
        size, skip, groups = 0, False, {}
        for n, msg in enumerate(request_iterator):
            size += msg.ByteSize()
            if size > cap:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"AddDocuments: the stream is over the limit of "
                              f"{self.limits.max_add_mb} MiB (message {n + 1})")
            skip = skip or msg.skip_existing
            for d in msg.documents:
                groups.setdefault(shard_of(d.id, view.shards), []).append(d)
        added, skipped, generation, done = 0, [], 0, []
        # Shard by shard, so a failure says which shards committed.
        for s in sorted(groups):
            docs = groups[s]
            msgs = [pb.AddDocumentsRequest(documents=docs[i:i + 256], skip_existing=skip)
                    for i in range(0, len(docs), 256)]
            try:
                r = self.call_shard(view, call, s, "AddDocuments", iter(msgs))
            except ShardFailed as e:
                note = (f"; shards {', '.join(shard_name(d) for d in done)} committed theirs"
                        if done else "")
                raise ShardFailed(s, e.code, e.detail + note)
            added += r.added
            skipped.extend(r.skipped_ids)
            generation = max(generation, r.generation)
            done.append(s)
        return pb.AddDocumentsResponse(added=added, skipped_ids=skipped, generation=generation)

    @rpc
    def DeleteDocuments(self, request, context, view, call):
        pb = self.pb2
        groups = self._by_shard(view, request.ids)
        got = self.fan_out(view, call, {s: pb.DeleteDocumentsRequest(ids=ids)
                                        for s, ids in groups.items()}, "DeleteDocuments")
        return pb.DeleteDocumentsResponse(
            deleted=sum(r.deleted for r in got.values()),
            unknown_ids=[i for r in got.values() for i in r.unknown_ids],
            generation=max((r.generation for r in got.values()), default=0))

    @rpc
    def Compact(self, request, context, view, call):
        pb = self.pb2
        got = self.fan_out(view, call, {s: pb.CompactRequest() for s in range(view.shards)},
                           "Compact")
        return pb.CompactResponse(
            generation=max(r.generation for r in got.values()),
            segments_before=sum(r.segments_before for r in got.values()),
            segments_after=sum(r.segments_after for r in got.values()))

    @rpc
    def IndexInfo(self, request, context, view, call):
        pb = self.pb2
        got = self.fan_out(view, call, {s: pb.IndexInfoRequest() for s in range(view.shards)},
                           "IndexInfo")
        first = got[min(got)]
        info = pb.IndexInfoResponse()
        info.CopyFrom(first)
        info.path = view.path
        info.generation = view.generation
        info.num_docs = sum(r.num_docs for r in got.values())
        info.num_tokens = sum(r.num_tokens for r in got.values())
        info.bytes_on_disk = sum(r.bytes_on_disk for r in got.values())
        info.num_centroids = sum(r.num_centroids for r in got.values())
        del info.segments[:]
        for s in sorted(got):
            for seg in got[s].segments:
                info.segments.add(name=f"{shard_name(s)}/{seg.name}", docs=seg.docs,
                                  deleted=seg.deleted, tokens=seg.tokens)
        info.build_info_json = json.dumps({
            "shard_set": view.path, "shards": view.shards,
            "shard_docs": {shard_name(s): got[s].num_docs for s in sorted(got)},
        })
        return info


def _rescored(hit, score):
    h = type(hit)()
    h.CopyFrom(hit)
    h.score = score
    return h


def serve_grpc(servicer: Servicer, addr: str, threads: int = 32, credentials=None):
    """Starts a gRPC server for `servicer` (and the standard health service)
    on `addr`; returns (server, health servicer, bound port)."""
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    server = grpc.server(
        concurrent.futures.ThreadPoolExecutor(max_workers=threads),
        options=[("grpc.so_reuseport", 0),
                 ("grpc.max_receive_message_length", MAX_MESSAGE),
                 ("grpc.max_send_message_length", MAX_MESSAGE)],
    )
    servicer.pb2_grpc.add_TesseraServicer_to_server(servicer, server)
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    port = (server.add_secure_port(addr, credentials) if credentials
            else server.add_insecure_port(addr))
    if port == 0:
        raise OSError(f"cannot listen on {addr}")
    server.start()
    hs.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    hs.set("tessera.v1.Tessera", health_pb2.HealthCheckResponse.NOT_SERVING)
    return server, hs, port
