"""The walk of one upload: how many times its corpus and its parent version are read and hashed, end to end.

    python bench/upload_walk.py [--steps 2]

Runs the embedded service in this process (jobs on a thread, DAS_JOB_ISOLATION=thread, so one profiler sees the
API and the job), registers one probe task with an eval set (so the forgetting gate runs), uploads one corpus with
25% replay off (the lineage has one corpus only) and waits for the job. A profile hook on every thread counts the
calls of the functions that read or hash a corpus or a version's files, with the file they live in and their caller.
Jobs the upload starts afterwards (the registered task's fit on the new version) are counted until the upload's job
ends, so a few of their calls may show.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from fastapi.testclient import TestClient

from das.app import build_app
from das_data.local_corpora import licence_documents, python_doc_documents
from das_settings import Settings, get_settings

WATCHED = {"read_corpus", "sha256_file", "file_digest", "verify", "put_blob", "put_file", "model_dir",
           "importance_file", "load_masked_lm", "lineage", "manifest", "_read_json", "read_bytes"}
counts: Counter[str] = Counter()
counting = threading.Event()


def hook(frame, event, arg):  # noqa: ANN001 - sys.setprofile's signature
    if counting.is_set() and event == "call" and frame.f_code.co_name in WATCHED:
        where = frame.f_code.co_filename
        if "site-packages" in where or "/lib/python" in where:
            return
        parts, caller = Path(where).parts, frame.f_back
        by = f"{Path(caller.f_code.co_filename).stem}.{caller.f_code.co_name}" if caller is not None else "?"
        counts[f"{'/'.join(parts[-2:])}:{frame.f_code.co_name} <- {by}"] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        corpus = root / "legal.txt"
        corpus.write_text("\n".join(licence_documents()[:200]) + "\n", encoding="utf-8")
        rows = [(t[:400], "licence") for t in licence_documents()[200:260]] + \
               [(t[:400], "code") for t in python_doc_documents(60)]
        train = root / "train.jsonl"
        evals = root / "eval.jsonl"
        train.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows[::2]), encoding="utf-8")
        evals.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows[1::2]), encoding="utf-8")
        settings = Settings(store=str(root / "store"), work_dir=root / "work", models_dir=get_settings().models_dir,
                            job_isolation="thread")
        sys.setprofile(hook)
        threading.setprofile(hook)  # every thread started from here on: the server's and the worker's
        with TestClient(build_app(settings)) as client:
            with open(train, "rb") as t, open(evals, "rb") as e:
                r = client.post("/v1/tasks", data={"name": "source"}, files={"train": ("train.jsonl", t),
                                                                              "eval": ("eval.jsonl", e)})
            _wait(client, r.json()["job_id"])
            counting.set()
            started = time.perf_counter()
            with open(corpus, "rb") as f:
                r = client.post("/v1/corpora", files={"file": ("legal.txt", f, "text/plain")},
                                data={"domain": "legal", "steps": str(args.steps), "importance_samples": "8",
                                      "batch_size": "4", "max_length": "64", "replay_fraction": "0"})
            job = _wait(client, r.json()["job_id"])
            counting.clear()
    print(f"job {job['state']} -> {job['version']} in {time.perf_counter() - started:.1f} s (profiled)\n")
    print("| calls | function <- caller |\n|---:|---|")
    for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"| {n} | `{name}` |")


def _wait(client, job_id: str) -> dict:
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled", "rejected"):
            return job
        time.sleep(0.2)


if __name__ == "__main__":
    main()
