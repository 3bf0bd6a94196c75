"""Model FLOPs utilisation of the plain and the DAS training step at roberta-base shape: the prepared GPU script.

    python bench/mfu.py [--device cuda] [--precision bf16] [--batch-size 32] [--max-length 512] [--steps 10]
                        [--peak-tflops N] [--out FILE]

Builds (once) the roberta-base-shaped model of bench/production_shape.py (110M parameters, random weights), then
times the trainer's own `train_step` for a plain MLM step (`softmask=False`) and a DAS step (soft-mask and the
contrastive passes, against a given importance), alternating, after 3 warm-up rounds, with the device
synchronised around each step (the step's one host sync is its loss read). Medians are reported.

Model FLOPs per step (the usual count, no recomputation): 6 * N * tokens for the encoder's weight matmuls
(N: encoder parameters without embeddings) plus the attention's 12 * layers * T^2 * hidden per sequence
(score and value matmuls, forward and backward), plus the MLM head on the masked positions only
(6 * (hidden^2 + hidden * vocab) per masked token). A DAS step's count is its executed passes: the masked pass
and the positive pass of the contrastive samples with backward (3x forward), and the o_prev pass without
(1x forward). MFU = model FLOPs / step time / the device's peak (dense bf16 or fp32, by name, or
--peak-tflops). On the CPU it runs too (small --batch-size and --max-length) to check the script itself.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from production_shape import build_shape  # noqa: E402
from report import emit  # noqa: E402

from das_data.local_corpora import licence_documents  # noqa: E402
from das_engine.data import pack_corpus  # noqa: E402
from das_engine.loading import load_masked_lm  # noqa: E402
from das_engine.softmask import SoftMask  # noqa: E402
from das_engine.train_step import train_step  # noqa: E402
from das_engine.training_data import TrainingData
from das_engine.units import UnitTensors, resolve_units  # noqa: E402
from das_formats.config import DASConfig  # noqa: E402
from das_settings import get_settings  # noqa: E402

# dense peak TFLOP/s by device name and precision (vendor datasheets, SXM parts, no sparsity)
PEAKS = {"H200": {"bf16": 989.0, "fp32": 67.0}, "H100": {"bf16": 989.0, "fp32": 67.0},
         "A100": {"bf16": 312.0, "fp32": 19.5}}


def model_flops(config, batch: int, length: int, masked: int, *, das: bool, contrastive: int) -> float:
    """Training FLOPs of one step (see the module's docstring)."""
    hidden, layers, vocab = config.hidden_size, config.num_hidden_layers, config.vocab_size
    per_layer = 4 * hidden * hidden + 2 * hidden * config.intermediate_size  # weight multiply-adds per token
    forward_per_sequence = 2 * layers * per_layer * length + 4 * layers * length * length * hidden
    head = 2 * (hidden * hidden + hidden * vocab) * masked  # forward, masked positions only
    plain = 3 * (forward_per_sequence * batch + head)
    if not das:
        return plain
    k = contrastive or batch
    return plain + 3 * forward_per_sequence * k + forward_per_sequence * k  # positive pass (+ backward), o_prev


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--model", type=Path, default=get_settings().models_dir / "roberta-base-shape")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    model, tokenizer = load_masked_lm(build_shape(args.model))
    model.to(device).train()
    units = resolve_units(model)
    shared = {"batch_size": args.batch_size, "max_length": args.max_length, "precision": args.precision,
              "max_grad_norm": 1.0}
    configs = {"plain": DASConfig(softmask=False, **shared), "das": DASConfig(**shared)}
    data = TrainingData(pack_corpus(licence_documents(), tokenizer, args.max_length))  # batches wrap around it
    generator = torch.Generator().manual_seed(0)
    importance = UnitTensors.full(units, 0.0).map(lambda t: torch.rand(t.shape, generator=generator) * 0.9)
    importance = importance.with_embeddings(torch.rand(units.embeddings_shape(), generator=generator) * 0.9)
    previous = importance.to(device)
    softmask = SoftMask.build(units, previous, embeddings=configs["das"].protect_embeddings)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {"plain": [], "das": []}
    for step in range(args.steps + 3):
        for name, config in configs.items():
            sync()
            started = time.perf_counter()
            train_step(model, units, tokenizer, optimizer, softmask if config.softmask else None,
                       previous if config.softmask else None, data, config, step, device)
            sync()
            if step >= 3:
                times[name].append(time.perf_counter() - started)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_tflops or next((p[args.precision] for key, p in PEAKS.items() if key in name), None)
    masked = round(0.15 * args.batch_size * (args.max_length - 2))
    result = {"device": name, "precision": args.precision, "batch": [args.batch_size, args.max_length],
              "parameters": sum(p.numel() for p in model.parameters()), "peak_tflops": peak, "steps": {}}
    for kind, values in times.items():
        seconds = statistics.median(values)
        flops = model_flops(model.config, args.batch_size, args.max_length, masked, das=kind == "das",
                            contrastive=configs[kind].contrastive_samples)
        result["steps"][kind] = {"median_s": round(seconds, 4), "model_tflops_per_step": round(flops / 1e12, 3),
                                 "achieved_tflops": round(flops / seconds / 1e12, 2),
                                 "mfu": round(flops / seconds / (peak * 1e12), 4) if peak else None,
                                 "tokens_per_s": round(args.batch_size * args.max_length / seconds, 1)}
    result["das_over_plain_time"] = round(result["steps"]["das"]["median_s"] / result["steps"]["plain"]["median_s"], 2)
    emit(result, args.out)


if __name__ == "__main__":
    main()
