"""What an upload costs besides training, as its lineage grows: the 2nd upload against the 20th.

    das data build data/domains   # the four real domains (once)
    python bench/lineage_growth.py [--domains data/domains] [--uploads 20] [--steps 10] [--documents 280]
                                   [--reference-steps 100] [--out bench/results/lineage-growth.json]

Runs the embedded service in this process (DAS_JOB_ISOLATION=thread, a fresh store), registers two probe tasks
(movies and news, `--task-examples` train and eval examples each, so every upload fits both and gates on both),
then uploads `--uploads` corpora one after another with the upload defaults and force=true (the gate fits and
scores every task as usual, but a drop does not stop the lineage growing; replay 25%: each upload draws from
every corpus its lineage learned before). Upload i is the next `--documents` documents of domain i mod 4. Per
upload it records the job's wall time (started -> finished), the optimizer steps' own time (train_metrics'
train_time_s), and the phases the job records (pipeline.adaptation: prepare, train, gate, publish; the
trainer's timings: model load, data, the importance passes). Non-training time = wall - the steps' time (also
reported without DAS's importance passes); the summary compares the mean of uploads 2-5 with that of the last four
(one upload of each domain in each window) as well as the 2nd with the last. Last, one upload of
`--reference-steps` steps gives the training time the 20% target is measured against.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from fastapi.testclient import TestClient

from das.app import build_app
from das_formats.corpus import read_corpus
from das_settings import Settings, get_settings


def _wait(client: TestClient, job_id: str, timeout_s: float = 1800.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled", "rejected"):
            return job
        time.sleep(0.1)
    raise TimeoutError(job_id)


def _time(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))


def _register(client: TestClient, root: Path, name: str, rows: list[tuple[str, str]]) -> None:
    files = {}
    for part, chosen in (("train", rows[::2]), ("eval", rows[1::2])):
        path = root / f"{name}-{part}.jsonl"
        path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in chosen), encoding="utf-8")
        files[part] = (path.name, path.read_bytes())
    accepted = client.post("/v1/tasks", data={"name": name}, files=files)
    assert accepted.status_code == 202, accepted.text
    job = _wait(client, accepted.json()["job_id"])
    assert job["state"] == "succeeded", job


def _upload(client: TestClient, root: Path, index: int, documents: list[str], steps: int) -> dict:
    path = root / f"corpus-{index:02d}.txt"
    path.write_text("\n".join(documents) + "\n", encoding="utf-8")
    with open(path, "rb") as f:
        accepted = client.post("/v1/corpora", files={"file": (path.name, f, "text/plain")},
                               data={"domain": f"d{index:02d}", "steps": str(steps), "force": "true"})
    assert accepted.status_code == 202, accepted.text
    job = _wait(client, accepted.json()["job_id"])
    assert job["state"] == "succeeded", job
    metrics = client.app.state.service.store.manifest(job["version"]).metrics
    wall = (_time(job["finished"]) - _time(job["started"])).total_seconds()
    steps_s = metrics["train_time_s"]
    importance_s = sum(v for k, v in metrics["timings"].items() if "importance" in k)
    return {"upload": index, "version": job["version"], "steps": steps, "wall_s": round(wall, 2),
            "steps_s": round(steps_s, 2), "non_training_s": round(wall - steps_s, 2),
            "outside_steps_and_importance_s": round(wall - steps_s - importance_s, 2),
            "phases_s": metrics.get("phases_s", {}), "timings": {k: round(v, 2) for k, v in metrics["timings"].items()},
            "replay_corpora": len(metrics["replay"]["corpora"])}


def summarise(rows: list[dict], reference: dict, domains: int) -> dict:
    """The 2nd upload against the last, and the mean of uploads 2..domains+1 against the last `domains`."""
    second, last, outside = rows[1], rows[-1], "outside_steps_and_importance_s"
    # one upload of each domain at each end of the lineage: windows compare like with like, and one noisy upload
    # weighs a quarter
    early, late = rows[1:1 + domains], rows[-domains:]

    def mean(window: list[dict], key: str) -> float:
        return round(statistics.mean(r[key] for r in window), 2)

    summary = {"second_non_training_s": second["non_training_s"], "last_non_training_s": last["non_training_s"],
               "ratio_last_to_second": round(last["non_training_s"] / second["non_training_s"], 3),
               "early_uploads": [r["upload"] for r in early], "late_uploads": [r["upload"] for r in late],
               "early_mean_non_training_s": mean(early, "non_training_s"),
               "late_mean_non_training_s": mean(late, "non_training_s"),
               "ratio_late_to_early": round(mean(late, "non_training_s") / mean(early, "non_training_s"), 3),
               f"early_mean_{outside}": mean(early, outside), f"late_mean_{outside}": mean(late, outside),
               f"ratio_late_to_early_{outside}": round(mean(late, outside) / mean(early, outside), 3),
               "early_mean_data_s": round(statistics.mean(r["timings"].get("data_s", 0) for r in early), 2),
               "late_mean_data_s": round(statistics.mean(r["timings"].get("data_s", 0) for r in late), 2),
               "reference_steps": reference["steps"], "reference_steps_s": reference["steps_s"],
               "late_mean_non_training_share_of_reference_steps":
                   round(mean(late, "non_training_s") / reference["steps_s"], 3),
               f"late_mean_{outside}_share_of_reference_steps": round(mean(late, outside) / reference["steps_s"], 3)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uploads", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--domains", type=Path, default=Path("data/domains"))
    parser.add_argument("--documents", type=int, default=280, help="documents per corpus")
    parser.add_argument("--task-examples", type=int, default=200, help="train and eval examples of each task")
    parser.add_argument("--reference-steps", type=int, default=100)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--summarise", type=Path, help="only print the summary of a JSON file this bench wrote")
    args = parser.parse_args()
    if args.summarise:
        saved = json.loads(args.summarise.read_text())
        domains = len({r["upload"] % 4 for r in saved["uploads"]}) if "domains" not in saved else saved["domains"]
        print(json.dumps(summarise(saved["uploads"], saved["reference"], domains), indent=1))
        return
    names = sorted(p.name for p in args.domains.iterdir() if (p / "corpus.txt").is_file())
    if len(names) < 2:
        sys.exit(f"{args.domains} holds no domain folders: run `das data build {args.domains}` first")
    corpora = {name: read_corpus(args.domains / name / "corpus.txt") for name in names}
    need = -(-(args.uploads + 1) // len(names)) * args.documents
    if any(len(docs) < need for docs in corpora.values()):
        sys.exit(f"each domain needs {need} documents for {args.uploads + 1} uploads of {args.documents}; "
                 f"ask for fewer")

    def corpus(i: int) -> list[str]:
        docs = corpora[names[i % len(names)]]
        k = i // len(names)
        return docs[k * args.documents:(k + 1) * args.documents]

    def examples(name: str) -> list[tuple[str, str]]:
        rows = []
        for part in ("train", "test"):
            lines = (args.domains / name / f"{part}.jsonl").read_text("utf-8").splitlines()
            lines = random.Random(0).sample(lines, min(len(lines), args.task_examples))  # files are sorted by label
            rows += [(r["text"][:600], r["label"]) for r in map(json.loads, lines)]
        return rows

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = Settings(store=str(root / "store"), work_dir=root / "work", models_dir=get_settings().models_dir,
                            job_isolation="thread", serve_backend="torch", log_level="WARNING")
        with TestClient(build_app(settings)) as client:
            for name in ("movies", "news"):
                _register(client, root, name, examples(name))
            for i in range(args.uploads):
                rows.append(_upload(client, root, i + 1, corpus(i), args.steps))
                print(json.dumps(rows[-1]), flush=True)
            reference = _upload(client, root, args.uploads + 1, corpus(args.uploads), args.reference_steps)
            for job in client.get("/v1/jobs", params={"limit": 100}).json():  # the task fits the last swap started
                _wait(client, job["id"])
            print(json.dumps(reference), flush=True)
    summary = summarise(rows, reference, len(names))
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps({"settings": vars(args), "domains": len(names), "uploads": rows,
                                        "reference": reference,
                                        "summary": summary}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
