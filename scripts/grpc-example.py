#!/usr/bin/env python3
"""Search a running `tessera serve` from Python with grpcio.

Stubs are generated from proto/tessera/v1/tessera.proto with grpcio-tools
into a temporary folder at start, so this script always matches the API.

    scripts/grpc-example.py --addr 127.0.0.1:50051 "coffee and diabetes" -k 5
    scripts/grpc-example.py --addr 127.0.0.1:50051 --retriever bm25 --json "tides"
    TESSERA_API_KEY=... scripts/grpc-example.py --addr search.example.com:50051 \
        --tls-ca ca.pem "dietary fibre"

Needs: pip install grpcio grpcio-tools (scripts/setup puts them in .venv).
"""
import argparse
import importlib
import json
import pathlib
import sys
import tempfile

import grpc

from grpc_auth import add_arguments, channel_for
from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"


def load_stubs(out_dir):
    """Compiles the .proto into out_dir and imports the generated modules."""
    proto = "tessera/v1/tessera.proto"
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    rc = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        proto,
    ])
    if rc != 0:
        sys.exit(f"error: protoc failed on {PROTO_DIR / proto}")
    sys.path.insert(0, str(out_dir))
    return (importlib.import_module("tessera.v1.tessera_pb2"),
            importlib.import_module("tessera.v1.tessera_pb2_grpc"))




def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("query", help="the query text")
    ap.add_argument("--addr", default="127.0.0.1:50051", help="HOST:PORT of the server")
    ap.add_argument("-k", type=int, default=10, help="hits to return")
    ap.add_argument("--retriever", choices=["colbert", "bm25", "hybrid"], default="colbert")
    ap.add_argument("--timeout", type=float, default=30.0, help="deadline, seconds")
    add_arguments(ap)
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        pb2, pb2_grpc = load_stubs(tmp)
        retriever = {"colbert": pb2.RETRIEVER_COLBERT, "bm25": pb2.RETRIEVER_BM25,
                     "hybrid": pb2.RETRIEVER_HYBRID}[args.retriever]
        with channel_for(args) as channel:
            stub = pb2_grpc.TesseraStub(channel)
            request = pb2.SearchRequest(queries=[pb2.Query(
                id="q1", text=args.query, k=args.k, retriever=retriever,
                fields=pb2.Fields(title=True, text=True))])
            try:
                response = stub.Search(request, timeout=args.timeout)
            except grpc.RpcError as e:
                sys.exit(f"error: {e.code().name}: {e.details()}")
    result = response.results[0]
    if args.json:
        print(json.dumps({
            "generation": response.generation,
            "hits": [{"id": h.id, "score": h.score, "title": h.title} for h in result.hits],
            "timings_ms": {"encode": result.timings.encode_ms,
                           "candidates": result.timings.candidates_ms,
                           "rerank": result.timings.rerank_ms,
                           "total": result.timings.total_ms},
        }))
        return
    for rank, h in enumerate(result.hits, 1):
        print(f"{rank:>3}. {h.score:9.4f}  {h.id}  {h.title}")
    print(f"({len(result.hits)} hits, server total {result.timings.total_ms:.1f} ms)")


if __name__ == "__main__":
    main()
