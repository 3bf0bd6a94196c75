"""Inference throughput of two commits, measured alternately on one machine: is a change faster or slower?

    python bench/ab.py A B [--runs 3] [--seconds 10] [--concurrency 16] [--kind fill-mask] [--load python|wrk]

Each commit is checked out into a worktree of its own (detached, removed at the end) and served by `das serve` from
it (this venv, the worktree first on PYTHONPATH; a fresh store on the embedded base model). The runs alternate
A, B, A, B, ... so a machine that gets busier or quieter meanwhile weighs on both alike; each run drives one
server with bench/infer.py's closed-loop load generator (`--concurrency` clients, one text per request) for
`--seconds` after a warm-up, or with `--load wrk` (wrk on the PATH, Debian's `wrk`) wrk's C load generator on one
thread posting one fixed text. Prints every run's requests/s and the medians' ratio B/A; writes
bench/results/ab-A-B-DATE.json. Compare ratios from one run of this script, never numbers from two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from infer import free_port, load, probe_texts, start, wait_for_backend  # noqa: E402 - bench/ is not a package

from das_settings import get_settings  # noqa: E402


def _worktree(commit: str, parent: Path) -> tuple[str, Path]:
    sha = subprocess.run(["git", "rev-parse", "--short", commit], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.strip()
    folder = parent / sha
    subprocess.run(["git", "worktree", "add", "--detach", str(folder), sha], cwd=ROOT, check=True,
                   capture_output=True)
    return sha, folder


WRK_SCRIPT = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"texts": ["%s"]}'
"""
WRK_TEXTS = {"fill-mask": "The contract is [MASK] by both parties before the work begins.",
             "embeddings": "The contract is signed by both parties before the work begins."}


def _wrk(url: str, kind: str, concurrency: int, seconds: float, scratch: Path) -> dict:
    """wrk's requests/s and p50 (ms) on one thread; non-2xx answers and socket errors counted as errors."""
    script = scratch / f"{kind}.lua"
    script.write_text(WRK_SCRIPT % WRK_TEXTS[kind])
    path = "/v1/fill-mask" if kind == "fill-mask" else "/v1/embeddings"
    done = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--latency", "-s", str(script),
                           url + path], check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", done).group(1))
    p50 = re.search(r"50%\s+([\d.]+)(us|ms|s)", done)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3}[p50.group(2)]
    errors = sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|Socket errors:.*?):\s+(\d+)", done))
    return {"rps": rps, "p50": float(p50.group(1)) * scale, "errors": errors}


def _one_run(folder: Path, kind: str, concurrency: int, seconds: float, scratch: Path, generator: str,
             extra: dict[str, str]) -> dict:
    port = free_port()
    store = Path(tempfile.mkdtemp(dir=scratch))
    env = {"PYTHONPATH": str(folder), "DAS_STORE": str(store / "store"), "DAS_WORK_DIR": str(store / "work"),
           "DAS_MODELS_DIR": str(get_settings().models_dir), "DAS_LOG_LEVEL": "WARNING", **extra}
    server = start([sys.executable, "-m", "das.cli", "serve", "--port", str(port)], port, env)
    try:
        url = f"http://127.0.0.1:{port}"
        texts = probe_texts(512)
        wait_for_backend(url, extra.get("DAS_SERVE_BACKEND", "onnx"))
        asyncio.run(load(url, kind, texts, concurrency, 2.0))  # warm-up
        if generator == "wrk":
            return _wrk(url, kind, concurrency, seconds, scratch)
        return asyncio.run(load(url, kind, texts, concurrency, seconds))
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(store, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--kind", default="fill-mask", choices=["fill-mask", "embeddings"])
    parser.add_argument("--load", default="python", choices=["python", "wrk"], help="the load generator")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="a setting for both servers, e.g. DAS_SERVE_BACKEND=torch (repeatable)")
    args = parser.parse_args()
    if args.load == "wrk" and shutil.which("wrk") is None:
        sys.exit("--load wrk needs wrk on the PATH (Debian: apt-get install wrk)")
    extra = dict(item.split("=", 1) for item in args.env)
    scratch = Path(tempfile.mkdtemp(prefix="das-ab-"))
    trees = [_worktree(args.a, scratch), _worktree(args.b, scratch)]
    runs: dict[str, list[float]] = {sha: [] for sha, _ in trees}
    try:
        for run in range(args.runs):
            for sha, folder in trees:
                result = _one_run(folder, args.kind, args.concurrency, args.seconds, scratch, args.load, extra)
                runs[sha].append(round(result["rps"], 1))
                print(f"run {run + 1} {sha}: {result['rps']:.1f} requests/s (p50 {result['p50']:.1f} ms, "
                      f"errors {result['errors']})", flush=True)
    finally:
        for _, folder in trees:
            subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=ROOT, capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    (a, a_runs), (b, b_runs) = runs.items()
    ratio = statistics.median(b_runs) / statistics.median(a_runs)
    print(f"median {a}: {statistics.median(a_runs):.1f}, {b}: {statistics.median(b_runs):.1f} requests/s; "
          f"{b}/{a} = {ratio:.3f}")
    settings = "".join(f"-{v}" for v in extra.values())  # e.g. -torch for DAS_SERVE_BACKEND=torch
    out = ROOT / "bench" / "results" / f"ab-{a}-{b}-{args.load}{settings}-{date.today().isoformat()}.json"
    command = " ".join(["python", "bench/ab.py", *sys.argv[1:]])
    out.write_text(json.dumps({"command": command, "kind": args.kind, "load": args.load, "env": extra,
                               "concurrency": args.concurrency, "seconds": args.seconds, "runs": runs,
                               "ratio_b_over_a": round(ratio, 4)}, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
