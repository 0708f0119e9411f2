"""Whether a `tessera serve` (or the ingress) answers SERVING on the
standard gRPC health service, and waiting until it does."""

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVICE = "tessera.v1.Tessera"


class Probe:
    """A health client of one address."""

    def __init__(self, addr: str):
        self.addr = addr
        self.stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(addr))

    def serving(self) -> bool:
        try:
            r = self.stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2)
        except grpc.RpcError:
            return False
        return r.status == health_pb2.HealthCheckResponse.SERVING

    def wait(self, timeout_s: float, alive=lambda: True) -> bool:
        """Polls until SERVING (True), `timeout_s` passes or `alive()` turns
        false (False)."""
        deadline = time.time() + timeout_s
        while not self.serving():
            if not alive() or time.time() > deadline:
                return False
            time.sleep(0.2)
        return True
