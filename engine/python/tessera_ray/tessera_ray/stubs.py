"""Python stubs of the `tessera.v1` gRPC API, generated from the
repository's `proto/tessera/v1/tessera.proto` with grpcio-tools on first
use and cached by the proto's hash, so they always match the binary.

The proto is found through `TESSERA_PROTO_DIR` or by walking up from this
package (an editable install from the Tessera repository).
"""

import functools
import hashlib
import importlib
import os
import pathlib
import sys
import tempfile

PROTO = "tessera/v1/tessera.proto"


class StubError(RuntimeError):
    pass


def proto_dir() -> pathlib.Path:
    env = os.environ.get("TESSERA_PROTO_DIR")
    if env:
        d = pathlib.Path(env)
        if not (d / PROTO).is_file():
            raise StubError(f"TESSERA_PROTO_DIR={env} has no {PROTO}")
        return d
    for parent in pathlib.Path(__file__).resolve().parents:
        if (parent / "proto" / PROTO).is_file():
            return parent / "proto"
    raise StubError(
        f"cannot find {PROTO}: install tessera_ray from the Tessera repository "
        "(pip install -e engine/python/tessera_ray) or set TESSERA_PROTO_DIR"
    )


def _cache_root() -> pathlib.Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "tessera_ray" / "stubs"


@functools.lru_cache(maxsize=1)
def load():
    """Returns (tessera_pb2, tessera_pb2_grpc)."""
    src = proto_dir()
    digest = hashlib.sha256((src / PROTO).read_bytes()).hexdigest()[:16]
    out = _cache_root() / digest
    if not (out / "tessera" / "v1" / "tessera_pb2_grpc.py").is_file():
        from grpc_tools import protoc

        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = pathlib.Path(tempfile.mkdtemp(dir=out.parent, prefix=".gen-"))
        include = pathlib.Path(protoc.__file__).parent / "_proto"
        rc = protoc.main([
            "grpc_tools.protoc", f"-I{src}", f"-I{include}",
            f"--python_out={tmp}", f"--grpc_python_out={tmp}", PROTO,
        ])
        if rc != 0:
            raise StubError(f"protoc failed on {src / PROTO} (exit {rc})")
        try:
            os.rename(tmp, out)
        except OSError:
            # Another process generated the same stubs first.
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    pb2 = importlib.import_module("tessera.v1.tessera_pb2")
    pb2_grpc = importlib.import_module("tessera.v1.tessera_pb2_grpc")
    return pb2, pb2_grpc
