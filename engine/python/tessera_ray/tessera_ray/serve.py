"""Sharded serving on Ray Serve.

    python -m tessera_ray serve --shards /mnt/shared/corpus --replicas 2 --addr 127.0.0.1:50051

* One Serve application per shard-set generation, with one deployment per
  shard (`shard-000` …) of R replicas. Each replica runs a `tessera serve`
  process on a free port of its node; the replica's `check_health` asks that
  process's gRPC health service, so Ray Serve replaces a replica whose
  server died or stopped serving.
* A registry (a detached Ray actor) holds which replica serves which shard,
  refreshed by every health check and forgotten after `LEASE_S` without one,
  and which shard set is active.
* The ingress (a Serve deployment of one replica on the driver's node)
  listens on `--addr`, speaks `tessera.v1.Tessera` and fans calls out to the
  replicas directly over gRPC (see `tessera_ray.ingress`).
* `rollout` deploys a new generation next to the old one, waits until every
  new shard has its replicas, switches the ingress, waits until no call uses
  the old generation, then deletes it: no query fails.
"""

import json
import logging
import pathlib
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import List, Optional

import ray
from ray import serve

from . import proc
from .health import Probe
from .ingress import Limits, Servicer, View, serve_grpc
from .routing import shard_name

log = logging.getLogger("tessera_ray.serve")

NAMESPACE = "tessera"
REGISTRY = "tessera-registry"
INGRESS_APP = "tessera-ingress"
# Seconds a replica stays registered without a health check.
LEASE_S = 10.0
HEALTH_PERIOD_S = 1.0


class ServeError(RuntimeError):
    pass


def bind_to_node_address() -> None:
    """Ray Serve 2.60 starts each replica's inter-deployment gRPC server on
    every interface (`[::]:0`); bind it to the address Ray advertises for
    the node instead, so a replica listens nowhere else. Runs where this
    module is imported: in each replica, when its class is loaded, before
    that server starts."""
    try:
        from ray.serve._private import replica as _replica
    except ImportError:
        return
    add = getattr(_replica, "add_port_to_grpc_server", None)
    if add is None or getattr(add, "_tessera_bound", False):
        return

    def bound(server, address):
        if address.startswith("[::]:"):
            address = f"{ray.util.get_node_ip_address()}:{address[len('[::]:'):]}"
        return add(server, address)

    bound._tessera_bound = True
    _replica.add_port_to_grpc_server = bound


bind_to_node_address()

# Ray actor options of every replica this package deploys.
REPLICA_OPTIONS = {"num_cpus": 0}


@ray.remote(num_cpus=0)
class Registry:
    """Which replicas serve which shard of which generation; which
    generation is active; what the ingress uses."""

    def __init__(self):
        self.replicas = {}  # app -> shard -> replica id -> (addr, expiry)
        self.serve_apps = {}  # app -> its Serve applications (one per shard)
        self.active = None

    def deployed(self, app: str, serve_apps: List[str]) -> None:
        self.serve_apps[app] = list(serve_apps)

    def register(self, app: str, shard: int, rid: str, addr: str) -> None:
        self.replicas.setdefault(app, {}).setdefault(shard, {})[rid] = (addr, time.time() + LEASE_S)

    def unregister(self, app: str, shard: int, rid: str) -> None:
        self.replicas.get(app, {}).get(shard, {}).pop(rid, None)

    def forget_app(self, app: str) -> List[str]:
        """Forgets a generation; returns its Serve applications."""
        self.replicas.pop(app, None)
        return self.serve_apps.pop(app, [])

    def replicas_of(self, app: str, shards: int) -> List[List[str]]:
        now = time.time()
        table = self.replicas.get(app, {})
        return [sorted(a for a, exp in table.get(s, {}).values() if exp > now)
                for s in range(shards)]

    def set_active(self, active: dict) -> None:
        self.active = active

    def view(self) -> Optional[dict]:
        if self.active is None:
            return None
        return dict(self.active, replicas=self.replicas_of(self.active["app"], self.active["shards"]))

    def apps(self) -> List[str]:
        """Every Serve application of every generation deployed."""
        return sorted(n for names in self.serve_apps.values() for n in names)


def registry():
    return Registry.options(name=REGISTRY, namespace=NAMESPACE, lifetime="detached",
                            get_if_exists=True).remote()


@dataclass
class ShardSetInfo:
    path: str
    generation: int
    shards: List[str]  # absolute shard paths, in shard order


def read_shard_set(path) -> ShardSetInfo:
    p = pathlib.Path(path).resolve()
    m = p / "shards.json"
    try:
        doc = json.loads(m.read_text())
    except FileNotFoundError:
        raise ServeError(f"{m}: no shard-set manifest (build one with `python -m tessera_ray build` "
                         "or `tessera shards manifest`)") from None
    except ValueError as e:
        raise ServeError(f"{m}: not JSON ({e})") from None
    if doc.get("format") != "tessera-shards":
        raise ServeError(f"{m}: format {doc.get('format')!r} is not tessera-shards")
    try:
        shards = [str((p / s["path"]).resolve()) for s in doc["shards"]]
        return ShardSetInfo(str(p), int(doc["generation"]), shards)
    except (KeyError, TypeError, ValueError) as e:
        raise ServeError(f"{m}: not a shard-set manifest (bad or missing field {e})") from None


@serve.deployment(ray_actor_options=REPLICA_OPTIONS, health_check_period_s=HEALTH_PERIOD_S,
                  health_check_timeout_s=10, graceful_shutdown_timeout_s=5)
class ShardServer:
    """One replica of one shard: a `tessera serve` process."""

    def __init__(self, app: str, shard: int, index: str, tessera: str, serve_args: List[str]):
        self.app, self.shard, self.rid = app, shard, uuid.uuid4().hex
        host = ray.util.get_node_ip_address()
        self.addr = f"{host}:{proc.free_port(host)}"
        self.proc = proc.spawn([tessera, "serve", "--index", index, "--addr", self.addr, *serve_args])
        self.probe = Probe(self.addr)
        if not self.probe.wait(300, alive=lambda: self.proc.poll() is None):
            if self.proc.poll() is not None:
                raise ServeError(f"{shard_name(shard)}: tessera serve exited with {self.proc.returncode}")
            raise ServeError(f"{shard_name(shard)}: tessera serve did not start in 300 s")
        self.registry = registry()
        ray.get(self.registry.register.remote(app, shard, self.rid, self.addr))

    def check_health(self):
        if self.proc.poll() is not None or not self.probe.serving():
            self.registry.unregister.remote(self.app, self.shard, self.rid)
            raise ServeError(f"{shard_name(self.shard)}: tessera serve at {self.addr} is down")
        self.registry.register.remote(self.app, self.shard, self.rid, self.addr)

    def __del__(self):
        try:
            self.registry.unregister.remote(self.app, self.shard, self.rid)
        except Exception:
            pass
        if getattr(self, "proc", None) and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except Exception:
                self.proc.kill()


@serve.deployment(ray_actor_options=REPLICA_OPTIONS, num_replicas=1,
                  health_check_period_s=2, health_check_timeout_s=10)
class Ingress:
    """The gRPC front end (see `tessera_ray.ingress`)."""

    def __init__(self, addr: str, limits: dict, tls: Optional[dict] = None):
        import grpc

        from grpc_health.v1 import health_pb2

        self.registry = registry()
        self.current: Optional[View] = None
        self.servicer = Servicer(lambda: self.current, Limits(**limits))
        creds = None
        if tls:
            creds = grpc.ssl_server_credentials(
                [(pathlib.Path(tls["key"]).read_bytes(), pathlib.Path(tls["cert"]).read_bytes())])
        deadline = time.time() + 30
        while True:
            try:
                self.server, self.health, _ = serve_grpc(self.servicer, addr, credentials=creds)
                break
            except (OSError, RuntimeError):
                # A replica that is replacing a dead one waits for the port.
                if time.time() > deadline:
                    raise ServeError(f"ingress: cannot listen on {addr}") from None
                time.sleep(0.5)
        self.serving = health_pb2.HealthCheckResponse.SERVING
        self.not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        self.stop = threading.Event()
        self.refresh()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()

    def refresh(self):
        v = ray.get(self.registry.view.remote())
        if v is None:
            self.current = None
        else:
            self.current = View(v["app"], v["generation"], v["path"], v["replicas"])
        up = self.current is not None and all(self.current.replicas)
        status = self.serving if up else self.not_serving
        self.health.set("", status)
        self.health.set("tessera.v1.Tessera", status)

    def _poll(self):
        while not self.stop.wait(0.25):
            try:
                self.refresh()
            except Exception as e:  # the registry restarting: keep the last view
                log.warning("ingress: registry unreachable: %s", e)

    def check_health(self):
        if not self.thread.is_alive():
            raise ServeError("ingress: registry poller stopped")

    def using(self) -> Optional[str]:
        self.refresh()
        return self.current.app if self.current else None

    def inflight(self, app: str) -> int:
        return self.servicer.inflight(app)

    def __del__(self):
        if getattr(self, "stop", None):
            self.stop.set()
        if getattr(self, "server", None):
            self.server.stop(grace=5).wait()


@dataclass
class ServeOptions:
    shards: pathlib.Path
    replicas: int = 1
    addr: str = "127.0.0.1:50051"
    tessera: Optional[str] = None
    # Extra arguments of every `tessera serve` replica.
    serve_args: List[str] = field(default_factory=list)
    max_queries: int = 64
    max_add_mb: int = 64
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    insecure: bool = False
    ready_timeout_s: float = 600.0


def check_exposure(opts: ServeOptions) -> None:
    host = opts.addr.rsplit(":", 1)[0].strip("[]")
    loopback = host in ("127.0.0.1", "localhost", "::1")
    if not loopback and not (opts.tls_cert and opts.tls_key) and not opts.insecure:
        raise ServeError(
            f"--addr {opts.addr} is not a loopback address: give --tls-cert and --tls-key "
            "(and start the shards with API keys through --serve-arg), or --insecure on a "
            "private network")


def _wait_replicas(reg, app: str, shards: int, want: int, timeout: float) -> None:
    deadline = time.time() + timeout
    while True:
        table = ray.get(reg.replicas_of.remote(app, shards))
        if all(len(r) >= want for r in table):
            return
        if time.time() > deadline:
            short = [shard_name(s) for s, r in enumerate(table) if len(r) < want]
            raise ServeError(f"shards {', '.join(short)} have fewer than {want} live replicas "
                             f"after {timeout:.0f} s")
        time.sleep(0.2)


def deploy_shard_set(opts: ServeOptions) -> dict:
    """Deploys one generation's shards, each shard its own Serve
    application; returns the generation's record once every shard has its
    replicas."""
    from ray.serve.api import RunTarget

    info = read_shard_set(opts.shards)
    tessera = proc.tessera_binary(opts.tessera)
    app = f"tessera-shards-g{info.generation}-{uuid.uuid4().hex[:6]}"
    names = [f"{app}-{shard_name(s)}" for s in range(len(info.shards))]
    reg = registry()
    ray.get(reg.deployed.remote(app, names))
    targets = [
        RunTarget(
            ShardServer.options(name=shard_name(s), num_replicas=opts.replicas).bind(
                app, s, path, tessera, list(opts.serve_args)),
            name=names[s], route_prefix=None)
        for s, path in enumerate(info.shards)
    ]
    log.info("deploying %s: %d shards x %d replicas", app, len(info.shards), opts.replicas)
    serve.run_many(targets)
    _wait_replicas(reg, app, len(info.shards), opts.replicas, opts.ready_timeout_s)
    return {"app": app, "generation": info.generation, "path": info.path, "shards": len(info.shards)}


def start(opts: ServeOptions) -> dict:
    """Deploys the shard set and the ingress; returns the active record.
    Call `ray.init` first."""
    if opts.replicas < 1:
        raise ServeError("--replicas must be at least 1")
    check_exposure(opts)
    serve.start(proxy_location="Disabled", http_options={"host": "127.0.0.1", "port": 0})
    reg = registry()
    active = deploy_shard_set(opts)
    ray.get(reg.set_active.remote(active))
    node = ray.util.get_node_ip_address()
    tls = {"cert": opts.tls_cert, "key": opts.tls_key} if opts.tls_cert else None
    ingress = Ingress.options(
        ray_actor_options=dict(REPLICA_OPTIONS, resources={f"node:{node}": 0.001}))
    serve.run(ingress.bind(opts.addr, {"max_queries": opts.max_queries, "max_add_mb": opts.max_add_mb},
                           tls), name=INGRESS_APP, route_prefix=None)
    return active


def rollout(opts: ServeOptions, drain_timeout_s: float = 120.0) -> dict:
    """Switches the running service to the shard set at `opts.shards`
    without failing a call; returns the new active record."""
    reg = registry()
    old = ray.get(reg.view.remote())
    new = deploy_shard_set(opts)
    ray.get(reg.set_active.remote(new))
    ingress = serve.get_deployment_handle("Ingress", app_name=INGRESS_APP)
    deadline = time.time() + drain_timeout_s
    while ingress.using.remote().result() != new["app"]:
        if time.time() > deadline:
            raise ServeError("the ingress did not switch to the new shard set")
        time.sleep(0.1)
    if old is not None:
        while ingress.inflight.remote(old["app"]).result() > 0:
            if time.time() > deadline:
                raise ServeError(f"calls on generation {old['generation']} did not finish "
                                 f"in {drain_timeout_s:.0f} s")
            time.sleep(0.1)
        for name in ray.get(reg.forget_app.remote(old["app"])):
            serve.delete(name)
    return new


def shutdown(timeout_s: float = 60.0) -> None:
    """Deletes the ingress and every shard-set application the registry
    knows, then the registry."""
    try:
        reg = ray.get_actor(REGISTRY, namespace=NAMESPACE)
    except ValueError:
        reg = None
    apps = ray.get(reg.apps.remote(), timeout=timeout_s) if reg else []
    serve.delete(INGRESS_APP)
    for app in apps:
        serve.delete(app)
    if reg:
        ray.kill(reg)
