"""The service at roberta-base's shape: memory of the API process around an adaptation, with each job in a child
process (DAS_JOB_ISOLATION=process) and in the API process (thread), and the job's own figures, in one run.

    python bench/production_shape.py [--steps 4] [--batch-size 4] [--max-length 128] [--isolation process,thread]

Builds (once) a RobertaForMaskedLM of roberta-base's shape (12 x 768, 12 heads, FFN 3072; random weights, seed 0)
with the embedded WordPiece tokenizer (30,522 tokens, 110M parameters) in models/roberta-base-shape. For each
isolation: a fresh store on it, `das serve` on loopback; resident memory (VmRSS) of the API process and of its job
processes sampled every 100 ms; fill-mask requests sent throughout (each answered or counted as an error); one
adaptation (the upload default: plain MLM steps, the importance handed on, replay and merge); then the API's RSS
once the job ended and the new version serves, and what its other processes hold before the job (the fork
server, in process isolation). Also reported per run: the job's tokens/s, its importance-pass
seconds, the swap's load-and-warm seconds (das_swap_seconds from /metrics), and the store's bytes per version.
Writes the figures as JSON to stdout (and --out).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infer import free_port, probe_texts, start  # noqa: E402
from report import emit  # noqa: E402
from swap import metric, rss_mib  # noqa: E402

from das_data.base_models import resolve_base_model  # noqa: E402
from das_data.local_corpora import licence_documents  # noqa: E402
from das_settings import get_settings  # noqa: E402

SHAPE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
         "max_position_embeddings": 514, "type_vocab_size": 1}


def build_shape(folder: Path) -> Path:
    """roberta-base's shape, random weights, the embedded tokenizer (kept once built)."""
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    from transformers import AutoTokenizer, RobertaConfig, RobertaForMaskedLM

    tokenizer = AutoTokenizer.from_pretrained(resolve_base_model("embedded", get_settings().models_dir))
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **SHAPE)
    RobertaForMaskedLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (the fork server and the job's process, in process isolation)."""
    children = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            children.setdefault(int(fields["PPid"]), []).append(int(fields["Pid"]))
        except (OSError, KeyError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Sampler(threading.Thread):
    """VmRSS of the API process and the sum over its descendants, every 100 ms, until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.samples, self.halt = pid, [], threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.1):
            try:
                others = sum(rss_mib(p) for p in descendants(self.pid) if Path(f"/proc/{p}").exists())
                self.samples.append((time.monotonic(), rss_mib(self.pid), others))
            except (OSError, ValueError):
                continue


class Requests(threading.Thread):
    """Fill-mask requests one after another until stopped: how many answered, how many failed, latencies."""

    def __init__(self, url: str, headers: dict) -> None:
        super().__init__(daemon=True)
        self.url, self.headers, self.halt = url, headers, threading.Event()
        self.ok, self.errors, self.latencies = 0, 0, []

    def run(self) -> None:
        texts = probe_texts(64)
        with httpx.Client(timeout=30) as client:
            i = 0
            while not self.halt.is_set():
                t0 = time.perf_counter()
                try:
                    answer = client.post(f"{self.url}/v1/fill-mask", json={"texts": [texts[i % 64]]},
                                         headers=self.headers)
                    self.ok += answer.status_code == 200
                    self.errors += answer.status_code != 200
                except httpx.HTTPError:
                    self.errors += 1
                self.latencies.append(time.perf_counter() - t0)
                i += 1
                time.sleep(0.05)


def one_run(model: Path, isolation: str, args: argparse.Namespace) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="das-bench-") as tmp:
        store, token = Path(tmp) / "store", "bench-token"
        env = {"DAS_BASE_MODEL": str(model), "DAS_STORE": str(store), "DAS_WORK_DIR": str(Path(tmp) / "work"),
               "DAS_PORT": str(port), "DAS_JOB_ISOLATION": isolation, "DAS_MANAGEMENT_TOKEN": token,
               "DAS_INFERENCE_TOKEN": token, "DAS_LOG_LEVEL": "WARNING"}
        t0 = time.perf_counter()
        server = start([sys.executable, "-m", "das.cli", "serve"], port, env)
        ready_s = time.perf_counter() - t0
        headers = {"Authorization": f"Bearer {token}"}
        try:
            for _ in range(20):  # warm: the first requests load and trace
                httpx.post(f"{url}/v1/fill-mask", json={"texts": ["a [MASK] b"]}, headers=headers, timeout=60)
            time.sleep(1.0)
            before = rss_mib(server.pid)
            standing = sum(rss_mib(p) for p in descendants(server.pid))  # the fork server, when jobs run apart
            sampler, requests = Sampler(server.pid), Requests(url, headers)
            sampler.start()
            requests.start()
            corpus = Path(tmp) / "legal.txt"
            corpus.write_text("\n".join(licence_documents()[:200]) + "\n", encoding="utf-8")
            form = {"domain": "legal", "steps": str(args.steps), "batch_size": str(args.batch_size),
                    "max_length": str(args.max_length), "importance_samples": str(args.importance_samples)}
            with corpus.open("rb") as f:
                job = httpx.post(f"{url}/v1/corpora", files={"file": ("legal.txt", f, "text/plain")}, data=form,
                                 headers=headers, timeout=120).json()
            started = time.monotonic()
            while True:
                state = httpx.get(f"{url}/v1/jobs/{job['job_id']}", headers=headers, timeout=30).json()
                if state["state"] in ("succeeded", "failed", "rejected", "cancelled"):
                    break
                time.sleep(0.5)
            job_s = time.monotonic() - started
            while httpx.get(f"{url}/v1/models/current", headers=headers, timeout=30).json().get("serving") \
                    != state.get("version") and state["state"] == "succeeded":
                time.sleep(0.2)
            time.sleep(3.0)  # requests on the new version; the old one freed
            requests.halt.set()
            sampler.halt.set()
            requests.join()
            sampler.join()
            after = rss_mib(server.pid)
            metrics = httpx.get(f"{url}/metrics", headers=headers, timeout=30).text
            version = state.get("version")
            manifest = httpx.get(f"{url}/v1/models/{version}", headers=headers, timeout=30).json() if version \
                else {}
        finally:
            server.terminate()
            server.wait(60)
        folder = store / "versions" / version if version else None
        trained = manifest.get("metrics", {})
        lat = sorted(requests.latencies)
        return {
            "isolation": isolation, "job_state": state["state"], "job_error": state.get("error"),
            "ready_s": round(ready_s, 1), "job_s": round(job_s, 1),
            "api_rss_mib": {"before": round(before, 0), "peak_during": round(max(s[1] for s in sampler.samples), 0),
                            "after": round(after, 0)},
            "job_processes_rss_mib_before": round(standing, 0),
            "job_processes_peak_rss_mib": round(max(s[2] for s in sampler.samples), 0),
            "requests": {"answered": requests.ok, "errors": requests.errors,
                         "p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
                         "p99_ms": round(1000 * lat[int(0.99 * (len(lat) - 1))], 1) if lat else None},
            "tokens_per_s": round(trained.get("tokens_per_s", 0.0), 1),
            "importance_s": trained.get("timings", {}),
            "swap_seconds_sum": metric(metrics, "das_swap_seconds_sum"),
            "swap_count": metric(metrics, "das_swap_seconds_count"),
            "store_bytes_per_version": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            if folder and folder.is_dir() else None,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--importance-samples", type=int, default=16)
    parser.add_argument("--isolation", default="process,thread")
    parser.add_argument("--model", type=Path, default=get_settings().models_dir / "roberta-base-shape")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    model = build_shape(args.model)
    runs = [one_run(model, isolation, args) for isolation in args.isolation.split(",")]
    emit({"model": str(model), "shape": SHAPE, "settings": vars(args), "runs": runs}, args.out)


if __name__ == "__main__":
    main()
