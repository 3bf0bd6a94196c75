"""The served encoder on each backend the CPU offers, without HTTP: which one should serve?

    python bench/backends.py [--model models/roberta-base-shape] [--batches 1x20,16x24,64x47] [--repeats 20]
                             [--compile] [--out bench/results/backends.json]

For each batch shape (rows x tokens, one row padded to half its length) it times the encoder plus, for fill-mask,
the MLM head's top 5 at one masked position per row, on: torch eager (the `torch` backend), onnxruntime on the
graphs `das export` writes, with 2 and with 1 intra-op thread (the `onnx` backend runs torch's thread count), and
with `--compile` torch.compile (inductor, dynamic shapes; it compiles once per shape here, so its first call per
shape is left out). Each figure is the median of `--repeats` calls after one warm call; ratios are to torch eager
in the same run. The default model is the embedded base.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from das_data.base_models import resolve_base_model
from das_engine.answers import mlm_top_tokens
from das_engine.loading import load_masked_lm
from das_engine.onnx_export import GRAPH, HEAD_GRAPH, export_folder, run_session, session, session_top_tokens
from das_engine.units import resolve_units
from das_settings import get_settings


def _median_ms(call, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 3)


def _one_shape(shape: str, model, tokenizer, top, graphs: dict, compiled, repeats: int) -> list[dict]:
    b, t = (int(x) for x in shape.split("x"))
    ids = torch.randint(1000, 2000, (b, t))
    ids[:, 1] = tokenizer.mask_token_id
    mask = torch.ones_like(ids)
    mask[0, t // 2:] = 0
    where = ids == tokenizer.mask_token_id

    def torch_encoder(encoder=model.base_model):
        return encoder(input_ids=ids, attention_mask=mask).last_hidden_state

    runs = {"torch": (torch_encoder, top)}
    if compiled is not None:
        runs["torch.compile"] = (lambda: torch_encoder(compiled), top)
    for threads, (graph, head) in graphs.items():
        runs[f"onnx, {threads} thr"] = ((lambda g=graph: run_session(g, ids, mask)), head)
    rows, base = [], None
    with torch.inference_mode():
        for name, (encode, head) in runs.items():
            encoder_ms = _median_ms(encode, repeats)
            total_ms = _median_ms(lambda e=encode, h=head: h(e()[where], 5), repeats)
            base = base or total_ms
            rows.append({"batch": shape, "backend": name, "encoder_ms": encoder_ms, "fill_mask_ms": total_ms,
                         "speedup": round(base / total_ms, 3)})
            print(f"{shape:>8} {name:>14} {encoder_ms:>11.2f} {total_ms:>10.2f} {base / total_ms:>7.2f}x", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--batches", default="1x20,16x24,64x47")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    folder = args.model or Path(resolve_base_model("embedded", get_settings().models_dir))
    torch.set_num_threads(2)
    model, tokenizer = load_masked_lm(folder)
    model.eval()
    top = mlm_top_tokens(resolve_units(model).mlm_head)
    with tempfile.TemporaryDirectory() as tmp:
        parity = export_folder(folder, Path(tmp) / "graphs")
        graphs = {threads: (session(Path(tmp) / "graphs" / GRAPH, threads),
                            session_top_tokens(session(Path(tmp) / "graphs" / HEAD_GRAPH, threads)))
                  for threads in (2, 1)}
    compiled = torch.compile(model.base_model, dynamic=True) if args.compile else None
    rows = []
    print(f"{folder}: parity {parity.to_json()['ok']} (max logit diff {parity.max_logit_diff:g})")
    print(f"{'batch':>8} {'backend':>14} {'encoder ms':>11} {'+ head ms':>10} {'x torch':>8}")
    for shape in args.batches.split(","):
        rows += _one_shape(shape, model, tokenizer, top, graphs, compiled, args.repeats)
    if args.out:
        args.out.write_text(json.dumps({"model": str(folder), "command": " ".join(["python", *sys.argv]),
                                        "torch": torch.__version__, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
