"""The device check of the CUDA path: encoding parity, index builds, eval,
training (frozen and full), reductions and query-encoding latency, each
figure written as JSON. Runs the `tessera` binary; needs only Python's
standard library (PyTorch, where present, for its version line).

Called by `scripts/gpu-check run`; see that script's --help.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time

# Encoder agreement, as the CPU test suite states it: fp32 on another
# device within 1e-3 of CPU fp32; bf16 within the CPU bf16 guard (cosine).
FP32_MAX_ABS = 1e-3
BF16_MIN_COS = 0.995
BF16_MEAN_COS = 0.9995


class GpuMemory:
    """Samples the GPU's used memory (nvidia-smi) while a step runs; the
    peak above the level before it started."""

    def __init__(self, enabled):
        self.enabled = enabled and shutil.which("nvidia-smi") is not None
        self.peak = None
        self.base = None

    def used(self):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, check=False,
        ).stdout.split()
        return max((int(x) for x in out if x.isdigit()), default=0)

    def __enter__(self):
        if not self.enabled:
            return self
        self.base = self.used()
        self.peak = self.base
        self.stop = threading.Event()

        def loop():
            while not self.stop.wait(0.2):
                self.peak = max(self.peak, self.used())

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.stop.set()
            self.thread.join()

    def mib(self):
        return None if self.peak is None else self.peak - self.base


class Check:
    def __init__(self, a):
        self.a = a
        self.out = a.out
        self.work = os.path.join(a.work, "gpu-check")
        os.makedirs(self.out, exist_ok=True)
        os.makedirs(self.work, exist_ok=True)
        self.env = dict(os.environ, TESSERA_HOME=os.path.join(self.work, "home"))
        self.results = {"device": a.device, "quick": a.quick, "steps": {}}
        self.failed = []

    def tessera(self, *args, capture=True):
        cmd = [self.a.bin, *args]
        print("+", " ".join(cmd), flush=True)
        t = time.monotonic()
        p = subprocess.run(cmd, env=self.env, capture_output=capture, text=True, check=False)
        secs = time.monotonic() - t
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {(p.stderr or '')[-2000:]}")
        return p, secs

    def step(self, name, fn):
        """Runs one step; a failure is recorded and the next step runs."""
        print(f"== {name}", flush=True)
        t = time.monotonic()
        try:
            r = fn()
            r["seconds"] = round(time.monotonic() - t, 2)
            r["ok"] = r.get("ok", True)
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the check
            r = {"ok": False, "error": str(e), "seconds": round(time.monotonic() - t, 2)}
        if not r["ok"]:
            self.failed.append(name)
        self.results["steps"][name] = r
        with open(os.path.join(self.out, f"{name}.json"), "w") as f:
            json.dump(r, f, indent=2)
        print(json.dumps(r)[:600], flush=True)

    # --- steps ---------------------------------------------------------

    def environment(self):
        r = {"cpus": os.cpu_count()}
        if shutil.which("nvidia-smi"):
            r["nvidia_smi"] = subprocess.run(["nvidia-smi"], capture_output=True, text=True).stdout
        try:
            import torch  # noqa: PLC0415 - optional

            r["torch"] = torch.__version__
            r["torch_cuda"] = torch.version.cuda
            r["cuda_available"] = torch.cuda.is_available()
            if torch.cuda.is_available():
                r["gpu"] = torch.cuda.get_device_name(0)
        except ImportError:
            r["torch"] = None
        r["tessera"] = self.tessera("--version")[0].stdout.strip()
        return r

    def sample_texts(self, n):
        docs, queries = [], []
        with open(os.path.join(self.a.dataset, "corpus.jsonl")) as f:
            for line in f:
                d = json.loads(line)
                docs.append(" ".join(x for x in (d.get("title", ""), d.get("text", "")) if x))
                if len(docs) >= n:
                    break
        with open(os.path.join(self.a.dataset, "queries.jsonl")) as f:
            for line in f:
                queries.append(json.loads(line)["text"])
        return docs, queries

    def encode(self, path, device, precision):
        p, _ = self.tessera("encode", "--model", self.a.model, "--docs", path, "--json",
                            "--device", device, "--precision", precision)
        return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]

    def parity(self):
        docs, _ = self.sample_texts(8)
        path = os.path.join(self.work, "parity-docs.txt")
        with open(path, "w") as f:
            f.write("\n".join(d.replace("\n", " ") for d in docs) + "\n")
        ref = self.encode(path, "cpu", "fp32")
        r = {}
        for precision in ("fp32", "bf16"):
            got = self.encode(path, self.a.device, precision)
            max_abs, cosines = 0.0, []
            for x, y in zip(ref, got):
                if [t["id"] for t in x["tokens"]] != [t["id"] for t in y["tokens"]]:
                    raise RuntimeError(f"{precision}: token ids differ from the CPU's")
                for u, v in zip(x["tokens"], y["tokens"]):
                    a, b = u["vector"], v["vector"]
                    max_abs = max(max_abs, max(abs(p - q) for p, q in zip(a, b)))
                    cosines.append(sum(p * q for p, q in zip(a, b)))
            mean = sum(cosines) / len(cosines)
            ok = max_abs <= FP32_MAX_ABS if precision == "fp32" else (
                min(cosines) >= BF16_MIN_COS and mean >= BF16_MEAN_COS)
            r[precision] = {"vectors": len(cosines), "max_abs": max_abs,
                            "min_cos": min(cosines), "mean_cos": mean, "ok": ok}
        r["ok"] = all(r[p]["ok"] for p in ("fp32", "bf16"))
        return r

    def build(self, name, device, precision):
        idx = os.path.join(self.work, name)
        shutil.rmtree(idx, ignore_errors=True)
        with GpuMemory(device == "cuda") as mem:
            p, secs = self.tessera("index", "build", "--input", os.path.join(self.a.dataset, "corpus.jsonl"),
                                   "--out", idx, "--model", self.a.model, "--device", device,
                                   "--precision", precision)
        m = re.search(r"indexed (\d+) documents, (\d+) tokens .* in ([\d.]+) s \(encoding ([\d.]+) s", p.stdout + p.stderr)
        if not m:
            raise RuntimeError(f"no build summary in: {(p.stdout + p.stderr)[-500:]}")
        docs, tokens, total, enc = int(m[1]), int(m[2]), float(m[3]), float(m[4])
        return {"index": idx, "device": device, "precision": precision, "documents": docs,
                "tokens": tokens, "build_s": total, "encoder_s": enc,
                "docs_per_s": docs / total, "tokens_per_s": tokens / total,
                "encoder_share": enc / total, "peak_gpu_mib": mem.mib(), "wall_s": secs}

    def builds(self):
        r = {p: self.build(f"idx-{self.a.device}-{p}", self.a.device, p) for p in ("fp32", "bf16")}
        r["cpu_fp32"] = self.build("idx-ref-cpu-fp32", "cpu", "fp32")
        r["speedup_fp32_vs_cpu"] = r["cpu_fp32"]["build_s"] / r["fp32"]["build_s"]
        r["speedup_bf16_vs_cpu"] = r["cpu_fp32"]["build_s"] / r["bf16"]["build_s"]
        return r

    def evaluate(self):
        r = {}
        for name in (f"idx-{self.a.device}-fp32", f"idx-{self.a.device}-bf16", "idx-ref-cpu-fp32"):
            out = os.path.join(self.work, f"eval-{name}.json")
            self.tessera("eval", "--dataset", self.a.dataset, "--index", os.path.join(self.work, name),
                         "--out", out, "--device", self.a.device)
            with open(out) as f:
                rep = json.load(f)
            r[name] = dict(rep["measures"])
        cpu = r["idx-ref-cpu-fp32"]["nDCG@10"]
        # bf16 guard: the encoder's bf16 rankings moved SciFact nDCG@10 by
        # under 0.001 on CPU; an index rebuild adds its own k-means noise.
        for name in (f"idx-{self.a.device}-fp32", f"idx-{self.a.device}-bf16"):
            r[name]["delta_vs_cpu"] = r[name]["nDCG@10"] - cpu
        r["ok"] = all(abs(r[n]["delta_vs_cpu"]) <= self.a.ndcg_guard
                      for n in (f"idx-{self.a.device}-fp32", f"idx-{self.a.device}-bf16"))
        return r

    def train(self, mode, steps):
        out = os.path.join(self.work, f"head-{mode}")
        shutil.rmtree(out, ignore_errors=True)
        with GpuMemory(self.a.device == "cuda") as mem:
            self.tessera("train", "heads", "--model", self.a.backbone, "--dataset", self.a.dataset,
                         "--head", "glu", "--dim", str(self.a.dim), "--mode", mode,
                         "--steps", str(steps), "--batch-queries", str(self.a.batch_queries),
                         "--eval-every", str(steps), "--checkpoint-every", str(steps),
                         "--device", self.a.device, "--out", out, *shlex.split(self.a.train_extra))
        with open(os.path.join(out, "training.json")) as f:
            rec = json.load(f)
        losses = []
        with open(os.path.join(out, "metrics.jsonl")) as f:
            for line in f:
                m = json.loads(line)
                if m["type"] == "step":
                    losses.append(m["step"]["loss"])
        k = max(1, len(losses) // 4)
        first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
        return {"mode": mode, "steps": steps, "steps_per_s": rec["steps_per_s"],
                "pairs_per_s": rec["pairs_per_s"], "train_s": rec["train_seconds"],
                "loss_first_quarter": first, "loss_last_quarter": last,
                "dev": rec.get("best"), "peak_gpu_mib": mem.mib(), "ok": last < first}

    def reduce(self):
        out = os.path.join(self.work, "reduction")
        shutil.rmtree(out, ignore_errors=True)
        _, secs = self.tessera("train", "reduce", "--model", self.a.model, "--dataset", self.a.dataset,
                               "--dims", self.a.reduce_dims, "--steps", str(self.a.reduce_steps),
                               "--pseudo-queries", "0", "--device", self.a.device, "--out", out,
                               *shlex.split(self.a.reduce_extra))
        return {"steps": self.a.reduce_steps, "wall_s": secs,
                "files": sorted(os.listdir(out))}

    def latency(self):
        _, queries = self.sample_texts(0)
        path = os.path.join(self.work, "latency-queries.txt")
        with open(path, "w") as f:
            f.write("\n".join(q.replace("\n", " ") for q in queries[: self.a.latency_queries]) + "\n")
        r = {}
        for batch in (1, 32):
            p, _ = self.tessera("encode", "--model", self.a.model, "--queries", path, "--latency",
                                "--batch-size", str(batch), "--device", self.a.device)
            r[f"batch_{batch}"] = json.loads(p.stdout)
        return r

    def run(self):
        q = self.a.quick
        self.step("environment", self.environment)
        self.step("parity", self.parity)
        self.step("index_build", self.builds)
        self.step("eval", self.evaluate)
        self.step("train_frozen", lambda: self.train("frozen", 4 if q else self.a.frozen_steps))
        self.step("train_full", lambda: self.train("full", 2 if q else self.a.full_steps))
        self.step("train_reduce", self.reduce)
        self.step("latency", self.latency)
        self.results["failed"] = self.failed
        with open(os.path.join(self.out, "summary.json"), "w") as f:
            json.dump(self.results, f, indent=2)
        print(f"gpu-check: {len(self.results['steps']) - len(self.failed)} steps passed, "
              f"{len(self.failed)} failed{': ' + ', '.join(self.failed) if self.failed else ''}")
        return 1 if self.failed else 0


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--bin", required=True, help="the tessera binary")
    p.add_argument("--model", required=True, help="the model folder (backbone + head)")
    p.add_argument("--backbone", required=True, help="the backbone folder heads train on")
    p.add_argument("--dataset", required=True, help="a BEIR folder with train and dev splits")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True, help="where the JSON files go")
    p.add_argument("--work", default="/tmp", help="indexes, runs and caches")
    p.add_argument("--quick", action="store_true", help="tiny budgets (the CPU dry run)")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--batch-queries", type=int, default=24)
    p.add_argument("--frozen-steps", type=int, default=200)
    p.add_argument("--full-steps", type=int, default=60)
    p.add_argument("--reduce-dims", default="32,64")
    p.add_argument("--reduce-steps", type=int, default=20)
    p.add_argument("--latency-queries", type=int, default=320)
    p.add_argument("--ndcg-guard", type=float, default=0.01,
                   help="largest |nDCG@10 difference| from the CPU-built index")
    p.add_argument("--train-extra", default="", help="more `train heads` options, one string")
    p.add_argument("--reduce-extra", default="", help="more `train reduce` options, one string")
    sys.exit(Check(p.parse_args()).run())


if __name__ == "__main__":
    main()
