"""Soak: the embedded service under mixed load for a long while, with its job process killed every few minutes.

    python bench/soak.py --minutes 20 [--concurrency 16] [--kill-every 300] [--upload-every 180]

Starts `das serve` (embedded mode, a fresh store under a temporary folder, both tokens set) and, until the time is
up: `--concurrency` threads send fill-mask, embeddings and predict requests (a mix; predict once a task serves);
a corpus is uploaded every `--upload-every` seconds (a short adaptation); the probe task is registered again every
other upload; every third upload activates the previous version and then the newest again (a rollback and back);
every `--kill-every` seconds the running job's process (the server's child that is not the fork server) is killed
with SIGKILL. At the end it waits for every accepted job to end and counts:

- requests by route and status (want: no 5xx), and the inference latency percentiles;
- lost jobs (want 0): a job answered 202 that is missing, or not in a final state two minutes after the load;
- the server's RSS (with its children) every 5 s.

Writes bench/results/soak-DATE.json and soak-DATE.png (RSS and request rate over time, the kills marked).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import date
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MGMT, INFER = "soak-management-token", "soak-inference-token"
FINAL = {"succeeded", "failed", "rejected", "cancelled"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(root: int) -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line) of `root` and every process below it."""
    table = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        table[int(stat.parent.name)] = (int(fields[1]), command)
    below, todo = {}, [root]
    while todo:
        pid = todo.pop()
        for child, (ppid, command) in table.items():
            if ppid == pid and child not in below:
                below[child] = (ppid, command)
                todo.append(child)
    return below


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


class Soak:
    def __init__(self, url: str, server: subprocess.Popen, corpus: Path, task_files: tuple[Path, Path]) -> None:
        self.url, self.server, self.corpus, self.task_files = url, server, corpus, task_files
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        self.latencies: list[float] = []
        self.timeline: list[dict] = []  # every 5 s: time, rss, requests so far, 5xx so far
        self.kills: list[float] = []
        self.accepted: list[str] = []
        self.errors_5xx: list[str] = []
        self.started = time.monotonic()

    def record(self, route: str, status: int, seconds: float | None, body: str = "") -> None:
        with self.lock:
            self.requests[f"{route} {status}"] += 1
            if seconds is not None and status == 200:
                self.latencies.append(seconds)
            if status >= 500:
                self.errors_5xx.append(f"{route} {status} {body[:200]}")

    def inference(self, seed: int) -> None:
        rng = random.Random(seed)
        headers = {"Authorization": f"Bearer {INFER}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=120) as client:
            while not self.stop.is_set():
                kind = rng.choice(["fill-mask", "embeddings", "predict"])
                texts = [f"the licence grants [MASK] to any person {rng.random():.6f}"
                         for _ in range(rng.randint(1, 4))]
                body = {"texts": texts} | ({"tasks": ["source"]} if kind == "predict" else {})
                started = time.monotonic()
                try:
                    answer = client.post(f"/v1/{kind}", json=body)
                except httpx.TransportError as err:
                    self.record(kind, 599, None, repr(err))
                    continue
                self.record(kind, answer.status_code, time.monotonic() - started, answer.text)

    def manage(self, upload_every: float) -> None:
        headers = {"Authorization": f"Bearer {MGMT}"}
        uploads = 0
        with httpx.Client(base_url=self.url, headers=headers, timeout=120) as client:
            self._register(client)
            while not self.stop.wait(upload_every):
                uploads += 1
                with open(self.corpus, "rb") as f:
                    answer = client.post("/v1/corpora", data={"domain": f"legal{uploads}", "steps": "20",
                                                              "importance_samples": "16", "batch_size": "8"},
                                         files={"file": ("legal.txt", f)})
                self.record("corpora", answer.status_code, None, answer.text)
                if answer.status_code == 202:
                    self.accepted.append(answer.json()["job_id"])
                if uploads % 2 == 0:
                    self._register(client)
                if uploads % 3 == 0:
                    self._roll_back_and_forth(client)

    def _register(self, client: httpx.Client) -> None:
        train, evals = self.task_files
        with open(train, "rb") as t, open(evals, "rb") as e:
            answer = client.post("/v1/tasks", data={"name": "source", "replace": "true"},
                                 files={"train": ("train.jsonl", t), "eval": ("eval.jsonl", e)})
        self.record("tasks", answer.status_code, None, answer.text)
        if answer.status_code == 202:
            self.accepted.append(answer.json()["job_id"])

    def _roll_back_and_forth(self, client: httpx.Client) -> None:
        versions = [m["id"] for m in client.get("/v1/models").json() if m["status"] != "rejected"]
        if len(versions) < 2:
            return
        for version in (versions[-2], versions[-1]):
            answer = client.post(f"/v1/models/{version}/activate")
            self.record("activate", answer.status_code, None, answer.text)
            for job_id in answer.json().get("fit_jobs", []) if answer.status_code == 200 else []:
                self.accepted.append(job_id)
            time.sleep(5)

    def killer(self, every: float) -> None:
        """Every `every` seconds, the next job process to run (waited for up to `every` seconds) is SIGKILLed."""
        while not self.stop.wait(every):
            deadline = time.monotonic() + every
            while not self.stop.is_set() and time.monotonic() < deadline:
                below = _tree(self.server.pid)
                jobs = [pid for pid, (ppid, command) in below.items()  # a job's process: the fork server's child
                        if "forkserver" in command and "forkserver" in below.get(ppid, (0, ""))[1]]
                if jobs:
                    try:
                        os.kill(jobs[0], signal.SIGKILL)
                        self.kills.append(time.monotonic() - self.started)
                    except ProcessLookupError:
                        continue
                    break
                time.sleep(0.5)

    def sampler(self) -> None:
        while not self.stop.wait(5):
            pids = [self.server.pid, *_tree(self.server.pid)]
            with self.lock:
                total = sum(self.requests.values())
                errors = len(self.errors_5xx)
            self.timeline.append({"t": round(time.monotonic() - self.started, 1), "rss_mb": round(_rss_mb(pids), 1),
                                  "requests": total, "errors_5xx": errors})


def _wait_ready(url: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise SystemExit("the server did not get ready")


def _lost_jobs(url: str, accepted: list[str], grace_s: float = 120) -> tuple[list[str], Counter]:
    headers = {"Authorization": f"Bearer {MGMT}"}
    deadline = time.monotonic() + grace_s
    states: dict[str, str | None] = {}
    while True:
        for job_id in accepted:
            answer = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers)
            states[job_id] = answer.json()["state"] if answer.status_code == 200 else None
        if all(s in FINAL for s in states.values()) or time.monotonic() > deadline:
            break
        time.sleep(2)
    return [j for j, s in states.items() if s not in FINAL], Counter(str(s) for s in states.values())


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [p["t"] / 60 for p in result["timeline"]]
    fig, (rss, rate) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, layout="constrained")
    rss.plot(t, [p["rss_mb"] for p in result["timeline"]])
    rss.set_ylabel("RSS, server + children (MB)")
    counts = [p["requests"] for p in result["timeline"]]
    rate.plot(t[1:], [(b - a) / 5 for a, b in zip(counts, counts[1:], strict=False)])
    rate.set_ylabel("requests / s")
    rate.set_xlabel("minutes")
    for axis in (rss, rate):
        for kill in result["kills_s"]:
            axis.axvline(kill / 60, color="red", alpha=0.4, linewidth=1)
    fig.suptitle(f"soak: {result['minutes']} min, {result['requests_total']} requests, "
                 f"{result['errors_5xx']} 5xx, {len(result['lost_jobs'])} lost jobs (red: job process killed)")
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--kill-every", type=float, default=300)
    parser.add_argument("--upload-every", type=float, default=180)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from task_sets import source_task, write_jsonl

    from das_data.local_corpora import licence_documents
    from das_settings import get_settings

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = root / "legal.txt"
        corpus.write_text("\n".join(licence_documents()[:200]) + "\n", encoding="utf-8")
        sets = source_task(n_train=40, n_eval=20)
        task_files = (write_jsonl(root / "train.jsonl", sets["train"]), write_jsonl(root / "eval.jsonl", sets["eval"]))
        port = _free_port()
        env = {**os.environ, "DAS_STORE": str(root / "store"), "DAS_WORK_DIR": str(root / "work"),
               "DAS_MODELS_DIR": str(get_settings().models_dir), "DAS_MANAGEMENT_TOKEN": MGMT,
               "DAS_INFERENCE_TOKEN": INFER, "DAS_LOG_LEVEL": "WARNING"}
        for name in ("DAS_URL", "DAS_TOKEN", "DAS_BROKER_URL"):
            env.pop(name, None)
        with open(root / "server.log", "wb") as log:
            server = subprocess.Popen([sys.executable, "-m", "das.cli", "serve", "--port", str(port)], env=env,
                                      stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(url)
            soak = Soak(url, server, corpus, task_files)
            threads = [threading.Thread(target=soak.inference, args=(i,), daemon=True) for i in range(args.concurrency)]
            threads += [threading.Thread(target=soak.manage, args=(args.upload_every,), daemon=True),
                        threading.Thread(target=soak.killer, args=(args.kill_every,), daemon=True),
                        threading.Thread(target=soak.sampler, daemon=True)]
            for thread in threads:
                thread.start()
            time.sleep(args.minutes * 60)
            soak.stop.set()
            for thread in threads:
                thread.join(150)
            lost, final_states = _lost_jobs(url, soak.accepted)
            server_alive = server.poll() is None
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
        log_tail = (root / "server.log").read_text(errors="replace")[-3000:]
    latencies = sorted(soak.latencies)
    result = {
        "date": date.today().isoformat(), "minutes": args.minutes, "concurrency": args.concurrency,
        "kill_every_s": args.kill_every, "upload_every_s": args.upload_every,
        "command": " ".join(["python", "bench/soak.py", *sys.argv[1:]]),
        "requests_total": sum(soak.requests.values()), "requests": dict(sorted(soak.requests.items())),
        "errors_5xx": len(soak.errors_5xx), "errors_5xx_examples": soak.errors_5xx[:10],
        "inference_latency_s": {"p50": statistics.median(latencies) if latencies else None,
                                "p99": latencies[int(0.99 * (len(latencies) - 1))] if latencies else None},
        "jobs_accepted": len(soak.accepted), "jobs_final_states": dict(final_states), "lost_jobs": lost,
        "kills_s": [round(k, 1) for k in soak.kills], "server_alive_at_end": server_alive,
        "rss_mb_first_last_max": [soak.timeline[0]["rss_mb"], soak.timeline[-1]["rss_mb"],
                                  max(p["rss_mb"] for p in soak.timeline)] if soak.timeline else None,
        "timeline": soak.timeline, "server_log_tail": log_tail,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"soak-{result['date']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    _plot(result, stem.with_suffix(".png"))
    print(json.dumps({k: v for k, v in result.items() if k not in ("timeline", "server_log_tail")}, indent=1))


if __name__ == "__main__":
    main()
