"""A hot swap under steady load: errors, p99 during swaps against the steady p99, resident memory.

    python bench/swap.py [--seconds 30] [--warmup 5] [--concurrency 8] [--swaps 4] [--base DIR --adapt-steps N]

Builds a store with two versions of the embedded model (v0002 adapted for a few steps), starts
`das serve` on loopback, runs closed-loop fill-mask load, and activates v0002 / v0001 in turn.
A swap window runs from the activate call until the server answers with the new version, plus
0.5 s. Resident memory (VmRSS of the server) is sampled every 50 ms. The load's first --warmup seconds are
not counted (the server's fork server imports torch then, beside the first requests) and hold no swap.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infer import Connection, free_port, probe_texts, start  # noqa: E402

from das_data.base_models import ensure_initialised  # noqa: E402
from das_data.local_corpora import licence_documents  # noqa: E402
from das_formats.config import DASConfig  # noqa: E402
from das_settings import get_settings  # noqa: E402
from pipeline.adaptation import adapt_active  # noqa: E402
from worker.runtime import open_store  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def metric(text: str, name: str) -> float | None:
    """The value of metric `name` (its first sample) in Prometheus text, None if absent."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def swap_seconds(client: httpx.Client) -> tuple[float, int]:
    """The server's das_swap_seconds histogram: (sum, count) of the seconds spent building and warming versions
    between batches, the only part of a swap that holds up requests."""
    text = client.get("/metrics").text
    return metric(text, "das_swap_seconds_sum"), int(metric(text, "das_swap_seconds_count"))


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98] * 1000 if len(values) > 1 else float("nan")


async def steady_load(port: int, texts: list[str], concurrency: int, seconds: float, record: list) -> None:
    stop = time.perf_counter() + seconds
    bodies = [json.dumps({"texts": [t], "top_k": 5}).encode() for t in texts]

    async def client(k: int) -> None:
        connection, i = Connection("127.0.0.1", port), k
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            try:
                status = await connection.post("/v1/fill-mask", bodies[i % len(bodies)])
            except (OSError, asyncio.IncompleteReadError):
                status, connection = 0, Connection("127.0.0.1", port)
            record.append((t0, time.perf_counter() - t0, status))
            i += concurrency
        connection.close()

    await asyncio.gather(*(client(k) for k in range(concurrency)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before counting")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--swaps", type=int, default=4)
    parser.add_argument("--base", default=None, help="base model folder (default: $DAS_BASE_MODEL, 'embedded'); "
                        "e.g. models/roberta-base-shape (bench/production_shape.py builds it)")
    parser.add_argument("--adapt-steps", type=int, default=20, help="steps of the adaptation that makes v0002")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="das-swap-"))
    update = {"store": str(tmp / "store"), "work_dir": tmp / "work"} | ({"base_model": args.base} if args.base else {})
    settings = get_settings().model_copy(update=update)
    store = open_store(settings)
    ensure_initialised(store, settings)
    corpus = tmp / "legal.txt"
    corpus.write_text("\n".join(licence_documents()[:200]), encoding="utf-8")
    adapt_active(store, corpus, "legal", DASConfig(steps=args.adapt_steps, importance_samples=32, checkpoint_every=0,
                                                   batch_size=4 if args.base else 16),
                 work_dir=tmp / "work", activate=False)
    store.activate("v0001")
    port = free_port()
    server = start([sys.executable, "-c", "from das.cli import app; app()", "serve", "--port", str(port),
                    "--store", str(tmp / "store")], port, {"DAS_WORK_DIR": str(tmp / "work"),
                                                           "DAS_BASE_MODEL": settings.base_model})
    rss: list[tuple[float, float]] = []
    done = threading.Event()

    def sample_rss() -> None:
        while not done.wait(0.05):
            rss.append((time.perf_counter(), rss_mib(server.pid)))

    windows: list[tuple[float, float]] = []
    built: list[tuple[float, int]] = []  # das_swap_seconds before the first swap and after the last

    def swapper() -> None:
        gap = args.seconds / (args.swaps + 1)
        time.sleep(args.warmup)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            built.append(swap_seconds(client))
            for n in range(args.swaps):
                time.sleep(gap)
                target = "v0002" if n % 2 == 0 else "v0001"
                t0 = time.perf_counter()
                client.post(f"/v1/models/{target}/activate").raise_for_status()
                while client.get("/v1/models/current").json().get("serving") != target:
                    time.sleep(0.1)
                windows.append((t0, time.perf_counter() + 0.5))
            built.append(swap_seconds(client))

    record: list[tuple[float, float, int]] = []
    threads = [threading.Thread(target=sample_rss), threading.Thread(target=swapper)]
    try:
        for t in threads:
            t.start()
        asyncio.run(steady_load(port, probe_texts(256), args.concurrency, args.warmup + args.seconds, record))
    finally:
        done.set()
        for t in threads:
            t.join()
        server.terminate()
        server.wait(30)

    def in_swap(t: float) -> bool:
        return any(a <= t <= b for a, b in windows)

    counted_from = min(t for t, _, _ in record) + args.warmup
    record = [r for r in record if r[0] >= counted_from]
    rss = [r for r in rss if r[0] >= counted_from]
    steady = [d for t, d, s in record if not in_swap(t)]
    swapping = [d for t, d, s in record if in_swap(t)]
    errors = sum(s != 200 for _, _, s in record)
    steady_rss = [m for t, m in rss if not in_swap(t)]
    swap_rss = [m for t, m in rss if in_swap(t)]
    print(f"{len(record)} requests at concurrency {args.concurrency} over {args.seconds:.0f} s, {len(windows)} swaps "
          f"(each {statistics.mean(b - a - 0.5 for a, b in windows):.2f} s from activate to serving)")
    print(f"errors: {errors}")
    (seconds_before, count_before), (seconds_after, count_after) = built
    print(f"building and warming between batches (das_swap_seconds): "
          f"{(seconds_after - seconds_before) / (count_after - count_before) * 1000:.0f} ms per swap")
    print(f"p99 steady {p99(steady):.1f} ms, during swaps {p99(swapping):.1f} ms "
          f"(ratio {p99(swapping) / p99(steady):.2f}); p50 steady {statistics.median(steady) * 1000:.1f} ms")
    print(f"resident memory: steady median {statistics.median(steady_rss):.0f} MiB, "
          f"peak during swaps {max(swap_rss, default=float('nan')):.0f} MiB, "
          f"peak overall {max(m for _, m in rss):.0f} MiB")


if __name__ == "__main__":
    main()
