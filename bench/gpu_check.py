"""A prepared device check: two DAS domains in both precisions, then serving, with step times.

    python bench/gpu_check.py [--device cuda|cpu] [--steps 40] [--out DIR]

On the requested device, in fp32 and in bf16, it adapts the embedded base model to the licence
texts (first domain: the general importance I(0), training, the domain importance) and then to
the Python docstrings (second domain, trained against the importance the first handed on), and
serves one batch of fill-mask and embeddings from the last version. A short CPU fp32 run of the
same steps, measured in the same run, is the yardstick of the step-time ratios.

Checks (each printed PASS/FAIL; the exit code is 1 if any fails): losses finite; weights and
importance float32, importance in [0, 1); the second domain trained against the first's I(<=1)
and handed on max(I(<=1), I(2)) on every group; the first logged bf16 loss within 5% of fp32;
served scores and embeddings finite. A JSON report is written to DIR/gpu_check.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers.utils import logging as hf_logging

from das_data.base_models import resolve_base_model
from das_data.local_corpora import licence_documents, python_doc_documents
from das_engine.run_state import AdaptResult, Progress
from das_engine.trainer import adapt
from das_engine.units import UnitTensors
from das_formats.config import DASConfig
from das_formats.layout import DOMAIN_IMPORTANCE, GROUPS, IMPORTANCE, IMPORTANCE_IN
from das_settings import get_settings
from serving.model import LoadedModel

DOMAINS = (("licence", licence_documents), ("python", python_doc_documents))
FILL_MASK = ("the licence grants permission to {mask} the software", "return the {mask} of the two numbers")
EMBED = ("permission is granted to use and copy", "read the file and return its lines")
WARM_UP = 2  # step intervals left out of each median


@dataclass
class Run:
    """One adapt() call and what was measured of it."""

    name: str
    device: str
    precision: str
    result: AdaptResult
    step_s: list[float] = field(default_factory=list)  # wall time between consecutive train steps
    peak_mib: float | None = None

    @property
    def label(self) -> str:
        return f"{self.device} {self.precision} {self.name}"

    @property
    def median_step_s(self) -> float:
        """Median over the steps after the first WARM_UP ones (allocator and kernel warm-up)."""
        timed = self.step_s[WARM_UP:] or self.step_s
        return statistics.median(timed) if timed else float("nan")


class Checks:
    def __init__(self) -> None:
        self.results: list[tuple[str, bool]] = []

    def __call__(self, name: str, ok: bool) -> None:
        self.results.append((name, bool(ok)))

    @property
    def passed(self) -> bool:
        return all(ok for _, ok in self.results)


def timed_adapt(name: str, device: str, config: DASConfig, base: str | Path, documents: list[str], out: Path,
                prev_importance: Path | None = None) -> Run:
    """adapt() with the time between consecutive train-step reports recorded (each step ends in a
    device sync: the trainer reads the step's losses, so these are true step times on a GPU too)."""
    stamps: list[float] = []

    def on_progress(progress: Progress) -> None:
        if progress.phase == "train":
            stamps.append(time.perf_counter())

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    result = adapt(base, documents, out, config, prev_importance=prev_importance, domain=name, device=device,
                   on_progress=on_progress)
    run = Run(name, device, config.precision, result, [b - a for a, b in zip(stamps, stamps[1:], strict=False)])
    if device.startswith("cuda"):
        run.peak_mib = torch.cuda.max_memory_allocated() / 2**20
    return run


def check_run(run: Run, checks: Checks) -> None:
    out = run.result.out_dir
    label = run.label
    losses = [h[k] for h in run.result.metrics["history"] for k in ("loss", "mlm", "contrastive") if k in h]
    checks(f"{label}: completed, {len(losses)} logged losses all finite",
           run.result.status == "completed" and losses and all(map(math.isfinite, losses)))
    checks(f"{label}: weights float32", all(t.dtype == torch.float32
                                            for t in load_file(str(out / "model.safetensors")).values()))
    for file in (IMPORTANCE_IN, DOMAIN_IMPORTANCE, IMPORTANCE):
        tensors = load_file(str(out / file)).values()
        checks(f"{label}: {file} float32 in [0, 1)",
               all(t.dtype == torch.float32 and t.min() >= 0 and t.max() < 1 for t in tensors))


def check_chain(first: Run, second: Run, checks: Checks) -> None:
    """The second domain trained against the first's I(<=1) and handed on max(I(<=1), I(2))."""
    label = f"{second.device} {second.precision}"
    handed_on = UnitTensors.load(first.result.out_dir / IMPORTANCE)
    trained_against = UnitTensors.load(second.result.out_dir / IMPORTANCE_IN)
    domain = UnitTensors.load(second.result.out_dir / DOMAIN_IMPORTANCE)
    cumulative = UnitTensors.load(second.result.out_dir / IMPORTANCE)
    for group in GROUPS:
        checks(f"{label}: {group} importance handed on and EMax-accumulated",
               torch.equal(getattr(handed_on, group), getattr(trained_against, group))
               and torch.equal(getattr(cumulative, group),
                               torch.maximum(getattr(handed_on, group), getattr(domain, group))))


def serve(version: str, folder: Path, device: str, checks: Checks) -> dict:
    """Load a version as the service does and answer one fill-mask and one embedding batch."""
    start = time.perf_counter()
    model = LoadedModel.load(version, folder, device=device)
    load_s = time.perf_counter() - start
    texts = [t.format(mask=model.mask_token) for t in FILL_MASK]
    start = time.perf_counter()
    answers = model.fill_mask(texts, top_k=3)
    fill_s = time.perf_counter() - start
    start = time.perf_counter()
    vectors = model.embed(list(EMBED))
    embed_s = time.perf_counter() - start
    scores = [c["score"] for text in answers for mask in text for c in mask]
    checks(f"serving {version} on {device}: fill-mask scores finite, 3 per mask",
           scores and all(map(math.isfinite, scores)) and all(len(m) == 3 for text in answers for m in text))
    norms = [math.sqrt(sum(x * x for x in v)) for v in vectors]
    checks(f"serving {version} on {device}: embeddings finite, unit length",
           all(abs(n - 1) < 1e-3 for n in norms) and all(math.isfinite(x) for v in vectors for x in v))
    return {"version": version, "load_s": load_s, "fill_mask_s": fill_s, "embed_s": embed_s,
            "top3": [[c["token"] for c in text[0]] for text in answers], "embedding_dim": len(vectors[0])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=40, help="training steps per domain")
    parser.add_argument("--out", type=Path, default=None, help="folder for the versions and the report "
                        "(default: a new temporary folder)")
    parser.add_argument("--reference-steps", type=int, default=20, help="steps of the CPU fp32 yardstick run")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--importance-samples", type=int, default=32)
    parser.add_argument("--documents", type=int, default=400, help="documents per domain")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here: run it on a GPU machine, or with --device cpu")
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    base = resolve_base_model("embedded", get_settings().models_dir)
    corpora = {name: build(limit=args.documents) for name, build in DOMAINS}
    checks = Checks()

    def config(precision: str, steps: int) -> DASConfig:
        return DASConfig(steps=steps, batch_size=args.batch_size, max_length=args.max_length,
                         importance_samples=args.importance_samples, importance_batch_size=args.batch_size,
                         checkpoint_every=0, log_every=max(1, steps // 4), precision=precision)

    wall = time.perf_counter()
    first_name = DOMAINS[0][0]
    for device in dict.fromkeys(("cpu", args.device)):  # untimed: the first runs in a process pay for set-up
        timed_adapt("warm-up", device, config("fp32", 3), base, corpora[first_name], out / f"warm-up-{device}")
    reference = timed_adapt(f"{first_name} (reference)", "cpu", config("fp32", args.reference_steps), base,
                            corpora[first_name], out / "reference-cpu-fp32")
    check_run(reference, checks)
    runs: list[Run] = []
    served = []
    for precision in ("fp32", "bf16"):
        chain: list[Run] = []
        previous_folder: str | Path = base
        for name, _ in DOMAINS:
            folder = out / f"{args.device.replace(':', '-')}-{precision}" / name
            prev = chain[-1].result.out_dir / IMPORTANCE if chain else None
            chain.append(timed_adapt(name, args.device, config(precision, args.steps), previous_folder,
                                     corpora[name], folder, prev_importance=prev))
            check_run(chain[-1], checks)
            previous_folder = chain[-1].result.out_dir
        check_chain(chain[0], chain[1], checks)
        served.append(serve(f"{precision}-{DOMAINS[-1][0]}", chain[-1].result.out_dir, args.device, checks))
        runs += chain
    fp32_first = runs[0].result.metrics["history"][0]["mlm"]
    bf16_first = runs[2].result.metrics["history"][0]["mlm"]
    checks(f"first logged MLM loss: bf16 {bf16_first:.4f} within 5% of fp32 {fp32_first:.4f}",
           abs(bf16_first - fp32_first) <= 0.05 * fp32_first)

    print_report(args, base, reference, runs, served, checks, time.perf_counter() - wall)
    report = {
        "command": " ".join(sys.argv), "device": args.device, "device_name": device_name(args.device),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "base": str(base),
        "runs": [run_record(r, reference) for r in [reference, *runs]], "serving": served,
        "checks": [{"name": n, "ok": ok} for n, ok in checks.results], "passed": checks.passed,
    }
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(f"report: {out / 'gpu_check.json'}")
    return 0 if checks.passed else 1


def device_name(device: str) -> str:
    return torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "CPU"


def run_record(run: Run, reference: Run) -> dict:
    metrics = run.result.metrics
    timings = metrics["timings"]
    return {"run": run.label, "steps": metrics["steps"],
            "median_step_ms": run.median_step_s * 1e3,
            "ratio_to_cpu_fp32": run.median_step_s / reference.median_step_s,
            "tokens_per_s": metrics["tokens_per_s"], "general_importance_s": timings.get("general_importance_s"),
            "domain_importance_s": timings["domain_importance_s"],
            "final_loss": metrics["history"][-1]["loss"], "peak_mib": run.peak_mib}


def print_report(args, base, reference: Run, runs: list[Run], served: list[dict], checks: Checks,
                 wall_s: float) -> None:
    print(f"device {args.device} ({device_name(args.device)}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, base {Path(base).name}")
    print(f"batch {args.batch_size} x {args.max_length} tokens, {args.steps} steps per domain "
          f"(reference {args.reference_steps}), importance {args.importance_samples} sequences, "
          "update mode, contrastive on")
    print()
    header = (f"{'run':30s} {'steps':>5s} {'step ms':>9s} {'x cpu fp32':>10s} {'tokens/s':>10s} "
              f"{'I(0) s':>7s} {'I(t) s':>7s} {'loss':>7s} {'peak MiB':>9s}")
    print(header)
    print("-" * len(header))
    for run in [reference, *runs]:
        r = run_record(run, reference)
        general = f"{r['general_importance_s']:7.2f}" if r["general_importance_s"] is not None else f"{'-':>7s}"
        peak = f"{r['peak_mib']:9.0f}" if r["peak_mib"] is not None else f"{'-':>9s}"
        print(f"{r['run']:30s} {r['steps']:5d} {r['median_step_ms']:9.1f} {r['ratio_to_cpu_fp32']:10.2f} "
              f"{r['tokens_per_s']:10,.0f} {general} {r['domain_importance_s']:7.2f} {r['final_loss']:7.3f} {peak}")
    print(f"(step ms: median wall time of one training step after {WARM_UP}; x cpu fp32: over the reference's)")
    print()
    for s in served:
        print(f"serving {s['version']}: load {s['load_s']:.2f} s, fill-mask 2 texts {s['fill_mask_s'] * 1e3:.1f} ms, "
              f"embed 2 texts {s['embed_s'] * 1e3:.1f} ms, dim {s['embedding_dim']}, top-3 {s['top3']}")
    print()
    for name, ok in checks.results:
        print(f"{'PASS' if ok else 'FAIL'}  {name}")
    print(f"{sum(ok for _, ok in checks.results)}/{len(checks.results)} checks passed; wall time {wall_s:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
