"""What an upload costs besides training, as its lineage grows: the 2nd upload against the 20th.

    python bench/lineage_growth.py [--uploads 20] [--steps 10] [--documents 150] [--reference-steps 100]
                                   [--out bench/results/lineage-growth.json]

Runs the embedded service in this process (DAS_JOB_ISOLATION=thread, a fresh store), registers two probe tasks
with eval sets (so every upload fits both and gates on both), then uploads `--uploads` corpora one after another
with the upload defaults (replay 25%: each upload draws from every corpus its lineage learned before), each a
different slice of real text (licence files and standard-library docstrings). Per upload it records the job's
wall time (started -> finished), the optimizer steps' own time (train_metrics' train_time_s), and the phases the
job records (pipeline.adaptation: prepare, train, gate, publish; the trainer's timings: model load, data, the
importance passes). Non-training time = wall - the steps' time. Last, one upload of `--reference-steps` steps
gives the training time the 20% target is measured against.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from fastapi.testclient import TestClient

from das.app import build_app
from das_data.local_corpora import licence_documents, python_doc_documents
from das_settings import Settings, get_settings


def _wait(client: TestClient, job_id: str, timeout_s: float = 1800.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled", "rejected"):
            return job
        time.sleep(0.1)
    raise TimeoutError(job_id)


def _register(client: TestClient, root: Path, name: str, rows: list[tuple[str, str]]) -> None:
    files = {}
    for part, chosen in (("train", rows[::2]), ("eval", rows[1::2])):
        path = root / f"{name}-{part}.jsonl"
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in chosen), encoding="utf-8")
        files[part] = (path.name, path.read_bytes())
    job = _wait(client, client.post("/v1/tasks", data={"name": name}, files=files).json()["job_id"])
    assert job["state"] == "succeeded", job


def _upload(client: TestClient, root: Path, index: int, documents: list[str], steps: int) -> dict:
    path = root / f"corpus-{index:02d}.txt"
    path.write_text("\n".join(documents) + "\n", encoding="utf-8")
    with open(path, "rb") as f:
        accepted = client.post("/v1/corpora", files={"file": (path.name, f, "text/plain")},
                               data={"domain": f"d{index:02d}", "steps": str(steps), "batch_size": "8",
                                     "max_length": "128"})
    assert accepted.status_code == 202, accepted.text
    job = _wait(client, accepted.json()["job_id"])
    assert job["state"] == "succeeded", job
    manifest = client.get(f"/v1/versions/{job['version']}").json()
    metrics = manifest["metrics"]
    wall = job["finished"] - job["started"]
    steps_s = metrics["train_time_s"]
    return {"upload": index, "version": job["version"], "steps": steps, "wall_s": round(wall, 2),
            "steps_s": round(steps_s, 2), "non_training_s": round(wall - steps_s, 2),
            "phases_s": metrics.get("phases_s", {}), "timings": {k: round(v, 2) for k, v in metrics["timings"].items()},
            "replay_corpora": len(metrics["replay"]["corpora"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--documents", type=int, default=150, help="documents per corpus")
    parser.add_argument("--reference-steps", type=int, default=100)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    pool = [d for pair in zip(licence_documents(4000), python_doc_documents(4000), strict=False) for d in pair]
    if len(pool) < args.documents * (args.uploads + 1) + 400:
        sys.exit(f"this machine has {len(pool)} documents; ask for fewer uploads or documents")
    source = [(t[:400], "licence") for t in licence_documents(4000)[-60:]] + \
             [(t[:400], "code") for t in python_doc_documents(4000)[-60:]]
    topic = [(t[:400], "short" if len(t) < 200 else "long") for t in pool[-200:]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = Settings(store=str(root / "store"), work_dir=root / "work", models_dir=get_settings().models_dir,
                            job_isolation="thread", serve_backend="torch", log_level="WARNING")
        with TestClient(build_app(settings)) as client:
            _register(client, root, "source", source)
            _register(client, root, "topic", topic)
            for i in range(args.uploads):
                docs = pool[i * args.documents:(i + 1) * args.documents]
                rows.append(_upload(client, root, i + 1, docs, args.steps))
                print(json.dumps(rows[-1]), flush=True)
            n = args.uploads
            reference = _upload(client, root, n + 1, pool[n * args.documents:(n + 1) * args.documents],
                                args.reference_steps)
            print(json.dumps(reference), flush=True)
    second, last = rows[1], rows[-1]
    summary = {"second_non_training_s": second["non_training_s"], "last_non_training_s": last["non_training_s"],
               "ratio_last_to_second": round(last["non_training_s"] / second["non_training_s"], 3),
               "reference_steps": args.reference_steps, "reference_steps_s": reference["steps_s"],
               "last_non_training_share_of_reference_steps": round(last["non_training_s"] / reference["steps_s"], 3),
               "median_non_training_s": statistics.median(r["non_training_s"] for r in rows)}
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)}, "uploads": rows,
                                        "reference": reference, "summary": summary}, indent=1) + "\n")


if __name__ == "__main__":
    main()
