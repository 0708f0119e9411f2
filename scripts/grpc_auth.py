"""Access for Tessera's Python gRPC clients: TLS (for servers run with
`tessera serve --tls-cert/--tls-key`, and client certificates for
`--tls-client-ca`) and a channel that sends `authorization: Bearer KEY` on
every call (for `--api-keys`). Shared by grpc-example.py and grpc-reflect.py.
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


def add_arguments(ap):
    """The access flags, the same in every client script."""
    ap.add_argument("--api-key-file", metavar="FILE",
                    help="file holding the API key (default: $TESSERA_API_KEY)")
    ap.add_argument("--tls-ca", metavar="FILE",
                    help="speak TLS and trust this CA (PEM) for the server's certificate")
    ap.add_argument("--tls-cert", metavar="FILE", help="client certificate (PEM), for --tls-client-ca")
    ap.add_argument("--tls-key", metavar="FILE", help="private key of --tls-cert (PEM)")


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def channel_for(args):
    """A channel to `args.addr`: TLS when a --tls-* flag is given, else
    plaintext; sending the API key, if there is one."""
    if args.tls_ca or args.tls_cert:
        if bool(args.tls_cert) != bool(args.tls_key):
            raise SystemExit("--tls-cert and --tls-key go together")
        creds = grpc.ssl_channel_credentials(
            root_certificates=_read(args.tls_ca) if args.tls_ca else None,
            private_key=_read(args.tls_key) if args.tls_key else None,
            certificate_chain=_read(args.tls_cert) if args.tls_cert else None)
        channel = grpc.secure_channel(args.addr, creds)
    else:
        channel = grpc.insecure_channel(args.addr)
    key = api_key(args.api_key_file)
    return grpc.intercept_channel(channel, _Bearer(key)) if key else channel
