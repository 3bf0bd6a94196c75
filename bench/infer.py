"""Inference speed of the service against the baseline a user would write, measured in one run.

    python bench/infer.py [--seconds 8] [--concurrency 1,4,16,64] [--kinds fill-mask,embeddings,predict]
                          [--backends onnx,torch] [--model models/roberta-base-shape] [--out results.json]

Starts `das serve` (embedded base model, a fresh store) and bench/naive_server.py (a transformers
pipeline per request) on loopback, drives each with a bounded closed-loop load generator (one
text per request, N clients), and prints throughput and p50/p95/p99 latency per concurrency. In
the same run it measures the model's batched ceiling (sequences/s at batch 64, encoder plus the
head at mask positions, no HTTP) and the machine's fp32 matmul FLOP/s, and reports the model
FLOP/s each server achieves. The load generator shares the 2 cores with the servers, for both
alike: compare the ratios, not the absolute numbers. `predict` registers a probe task (licence
paragraphs against Python docstrings) on the service first, and the baseline serves the same
fitted head over a feature-extraction pipeline per request. `--backends` starts one `das serve` per serving backend
(DAS_SERVE_BACKEND; each waits until /readyz reports it), and the servers take turns at each level, so their
ratios come from one run. `--model` serves another base folder (bench/production_shape.py builds roberta-base's
shape) instead of the embedded one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from das_data.base_models import resolve_base_model
from das_data.local_corpora import licence_documents
from das_engine.loading import load_masked_lm
from das_engine.units import resolve_units
from das_settings import get_settings

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], port: int, env: dict | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{cmd[:3]} did not become ready")


def probe_texts(n: int, seed: int = 0) -> list[str]:
    """Real sentences with one word replaced by the mask token, 6-40 words each."""
    rng = random.Random(seed)
    texts = []
    for doc in licence_documents():
        words = doc.split()[:40]
        if len(words) >= 6:
            words[rng.randrange(len(words))] = "[MASK]"
            texts.append(" ".join(words))
    rng.shuffle(texts)
    return (texts * (n // max(1, len(texts)) + 1))[:n]


class Connection:
    """One keep-alive HTTP/1.1 connection speaking just enough to POST JSON and read the answer.

    A load generator on the same 2 cores as the server must cost little per request: httpx
    costs about a millisecond of CPU per request, which the servers would then be measured with.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def load(url: str, kind: str, texts: list[str], concurrency: int, seconds: float) -> dict:
    """Closed loop: `concurrency` clients, each with its own connection, each sending its next
    request when the last one was answered."""
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds

    path = "/v1/tasks/source/predict" if kind == "predict" else f"/v1/{kind}"

    def body_of(text: str) -> bytes:
        if kind == "fill-mask":
            return json.dumps({"texts": [text], "top_k": 5}).encode()
        return json.dumps({"texts": [text.replace("[MASK]", "it")]}).encode()

    bodies = [body_of(t) for t in texts]

    async def one_client(offset: int) -> None:
        nonlocal errors
        connection, i = Connection(host, int(port)), offset
        try:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    errors += await connection.post(path, bodies[i % len(bodies)]) != 200
                except (OSError, asyncio.IncompleteReadError, ValueError, StopIteration):
                    errors += 1  # a reset connection counts as a failed request; open a new one
                    connection.close()
                    connection = Connection(host, int(port))
                latencies.append(time.perf_counter() - t0)
                i += concurrency
        finally:
            connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(one_client(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - started
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return {"requests": len(latencies), "errors": errors, "rps": len(latencies) / elapsed,
            "p50": q[49] * 1000, "p95": q[94] * 1000, "p99": q[98] * 1000}


def matmul_flops(size: int = 1024, repeats: int = 20) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - t0)


def flops_per_sequence(config, tokens: int, masks: int = 1) -> float:
    """Forward FLOPs of one sequence: the encoder's matmuls and attention, and the head at the masks."""
    d, inner, layers, vocab = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    per_layer = tokens * 2 * (4 * d * d + 2 * d * inner) + 2 * 2 * tokens * tokens * d
    head = masks * 2 * (d * d + d * vocab)
    return layers * per_layer + head


def ceiling(model_dir: str, texts: list[str], batch: int = 64, repeats: int = 10) -> tuple[float, float]:
    """Sequences/s of the bare model at `batch` (encoder + head at mask positions), and mean tokens."""
    model, tokenizer = load_masked_lm(model_dir)
    model.eval()
    head = resolve_units(model).mlm_head
    enc = tokenizer(texts[:batch], return_tensors="pt", padding=True, truncation=True, max_length=128)
    with torch.inference_mode():
        def step():
            hidden = model.base_model(**enc).last_hidden_state
            head(hidden[enc["input_ids"] == tokenizer.mask_token_id]).softmax(-1).topk(5)
        step()
        t0 = time.perf_counter()
        for _ in range(repeats):
            step()
    return batch * repeats / (time.perf_counter() - t0), float(enc["attention_mask"].sum(1).float().mean())


def wait_for_backend(url: str, backend: str, timeout_s: float = 600.0) -> None:
    """Until /readyz says the active version runs on `backend` (the ONNX export runs in the background); a server
    whose /readyz names no backend (a commit from before the ONNX backend, bench/ab.py) has one: no wait."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        ready = httpx.get(f"{url}/readyz", timeout=30)
        if ready.status_code == 200 and ready.json().get("backend", backend) == backend:
            return
        time.sleep(0.5)
    raise TimeoutError(f"{url} never served on {backend}")


def register_probe(url: str, store: Path) -> Path:
    """Register the `source` probe task on the service, wait for its fit, return its model folder."""
    from das_data.local_corpora import python_doc_documents

    rows = [(t[:400], "licence") for t in licence_documents()[:150]] + [(t[:400], "code")
                                                                       for t in python_doc_documents(150)]
    train = "".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows).encode()
    job = httpx.post(f"{url}/v1/tasks", data={"name": "source"}, files={"train": ("train.jsonl", train)},
                     timeout=30).json()["job_id"]
    for _ in range(600):
        state = httpx.get(f"{url}/v1/jobs/{job}", timeout=10).json()["state"]
        if state != "queued" and state != "running":
            break
        time.sleep(0.2)
    if state != "succeeded":
        raise RuntimeError(f"the probe task's fit job ended {state}")
    time.sleep(3)  # the API process picks the task model up at its next poll
    [model] = (store / "task_models").glob("*/source/*/model.json")
    return model.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="load per concurrency level and server")
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--kinds", default="fill-mask,embeddings")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--backends", default="onnx", help="das serve's backends to measure, e.g. onnx,torch")
    parser.add_argument("--model", type=Path, help="base model folder (default: the embedded base)")
    parser.add_argument("--out", type=Path, help="write the table as JSON here too")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    model_dir = str(args.model) if args.model else resolve_base_model("embedded", get_settings().models_dir)
    texts = probe_texts(512)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    machine = matmul_flops()
    seq_per_s, mean_tokens = ceiling(model_dir, texts)
    per_seq = flops_per_sequence(config, round(mean_tokens))
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"fp32 matmul {machine / 1e9:.1f} GFLOP/s")
    print(f"model ceiling (batch 64, no HTTP): {seq_per_s:,.0f} sequences/s, {mean_tokens:.0f} tokens each, "
          f"{seq_per_s * per_seq / 1e9:.1f} GFLOP/s = {seq_per_s * per_seq / machine:.0%} of matmul")

    tmp = Path(tempfile.mkdtemp(prefix="das-bench-"))
    servers = {}
    try:
        probe = None
        for backend in args.backends.split(","):
            name, port = f"das-{backend}", free_port()
            servers[name] = (start([sys.executable, "-c", "from das.cli import app; app()", "serve", "--port",
                                    str(port), "--store", str(tmp / name)], port,
                                   {"DAS_WORK_DIR": str(tmp / "work"), "DAS_SERVE_BACKEND": backend,
                                    "DAS_ONNX_CACHE_DIR": str(tmp / "onnx"), "DAS_BASE_MODEL": model_dir}),
                             f"http://127.0.0.1:{port}")
            wait_for_backend(servers[name][1], backend)
            if "predict" in args.kinds:
                probe = register_probe(servers[name][1], tmp / name)
        if not args.skip_baseline:
            port = free_port()
            extra = ["--probe", str(probe)] if probe is not None else []
            servers["naive"] = (start([sys.executable, str(ROOT / "bench" / "naive_server.py"), "--model",
                                       model_dir, "--port", str(port), *extra], port), f"http://127.0.0.1:{port}")
        print(f"\n{'server':6} {'kind':10} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
              f"{'errors':>6} {'GFLOP/s':>8} {'of ceiling':>10}")
        results = {}
        for kind in args.kinds.split(","):
            for level in levels:
                for name, (_, url) in servers.items():
                    r = asyncio.run(load(url, kind, texts, level, args.seconds))
                    results[(name, kind, level)] = r
                    print(f"{name:6} {kind:10} {level:>4} {r['rps']:>8.1f} {r['p50']:>8.1f} {r['p95']:>8.1f} "
                          f"{r['p99']:>8.1f} {r['errors']:>6} {r['rps'] * per_seq / 1e9:>8.2f} "
                          f"{r['rps'] / seq_per_s:>10.1%}", flush=True)
        ratios = []
        if "naive" in servers:
            print()
            for kind in args.kinds.split(","):
                for level in levels:
                    naive = results[("naive", kind, level)]
                    for name in (n for n in servers if n != "naive"):
                        das = results[(name, kind, level)]
                        ratios.append({"server": name, "kind": kind, "concurrency": level,
                                       "ratio": round(das["rps"] / naive["rps"], 3)})
                        print(f"{kind} c={level}: {name}/naive throughput {das['rps'] / naive['rps']:.2f}x, "
                              f"p99 {das['p99']:.0f} ms vs {naive['p99']:.0f} ms (naive p50 {naive['p50']:.0f} ms)")
        if args.out:
            rows = [{"server": n, "kind": k, "concurrency": c, **r} for (n, k, c), r in results.items()]
            args.out.write_text(json.dumps({"model": model_dir, "machine_gflops": round(machine / 1e9, 1),
                                            "ceiling_seq_per_s": round(seq_per_s, 1), "results": rows,
                                            "ratios": ratios}, indent=1) + "\n")
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
