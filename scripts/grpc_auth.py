"""API keys for Tessera's Python gRPC clients: a channel that sends
`authorization: Bearer KEY` on every call, for servers run with
`tessera serve --api-keys`. Shared by grpc-example.py and grpc-reflect.py.
"""
import collections
import os

import grpc

class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer KEY` to every call (servers run with --api-keys)."""

    def __init__(self, key):
        self.metadata = ("authorization", f"Bearer {key}")

    def _with_key(self, details):
        md = list(details.metadata or []) + [self.metadata]
        return details._replace(metadata=md) if hasattr(details, "_replace") else _Details(
            details.method, details.timeout, md, details.credentials,
            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, cont, details, request):
        return cont(self._with_key(details), request)

    def intercept_unary_stream(self, cont, details, request):
        return cont(self._with_key(details), request)

    def intercept_stream_unary(self, cont, details, requests):
        return cont(self._with_key(details), requests)

    def intercept_stream_stream(self, cont, details, requests):
        return cont(self._with_key(details), requests)


class _Details(collections.namedtuple(
        "_Details", ["method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"]),
        grpc.ClientCallDetails):
    pass


def api_key(path):
    """The API key: the file's first line, else $TESSERA_API_KEY, else None."""
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    return os.environ.get("TESSERA_API_KEY", "").strip() or None


def channel_for(addr, key_file):
    """A plaintext channel to `addr` that sends the API key, if there is one."""
    channel = grpc.insecure_channel(addr)
    key = api_key(key_file)
    return grpc.intercept_channel(channel, _Bearer(key)) if key else channel
