"""Running the `tessera` binary from Ray tasks and replicas."""

import os
import pathlib
import shutil
import socket
import subprocess
import threading


class TesseraNotFound(RuntimeError):
    pass


def tessera_binary(explicit=None) -> str:
    """The `tessera` binary: `explicit`, else `$TESSERA_BIN`, else `tessera`
    on PATH, else the repository's `target/release/tessera`."""
    for cand in (explicit, os.environ.get("TESSERA_BIN")):
        if cand:
            if not os.access(cand, os.X_OK):
                raise TesseraNotFound(f"{cand} is not an executable tessera binary")
            return str(pathlib.Path(cand).resolve())
    on_path = shutil.which("tessera")
    if on_path:
        return on_path
    for parent in pathlib.Path(__file__).resolve().parents:
        cand = parent / "target" / "release" / "tessera"
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    raise TesseraNotFound(
        "cannot find the tessera binary: pass --tessera, set TESSERA_BIN or put it on PATH"
    )


def _launcher() -> list:
    # The child gets SIGKILL when the thread that started it ends, so a
    # killed Ray worker or replica leaves no orphan writing to a shard or
    # holding a port. setpriv (util-linux) sets that up without a Python
    # pre-exec hook, which would fork a process that runs gRPC threads.
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []


def spawn(args, **kw) -> subprocess.Popen:
    """Starts `args` from a thread that lives as long as the process, so
    the process dies with this one (Linux) and not with a pool thread."""
    started = threading.Event()
    box = {}

    def keeper():
        try:
            box["p"] = subprocess.Popen(_launcher() + list(args), **kw)
        except BaseException as e:  # reported to the caller below
            box["e"] = e
            started.set()
            return
        started.set()
        box["p"].wait()

    threading.Thread(target=keeper, daemon=True, name="tessera-child").start()
    started.wait()
    if "e" in box:
        raise box["e"]
    return box["p"]


def run(args, **kw) -> subprocess.CompletedProcess:
    """Runs `args` to completion (dies with its parent), capturing output."""
    p = spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
    out, err = p.communicate()
    return subprocess.CompletedProcess(args, p.returncode, out, err)


def free_port(host: str) -> int:
    """A TCP port free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
