"""Generation speed: tokens/s through the service (POST /v1/completions, the scheduler's batched decoding with a KV
cache) against calling transformers' `model.generate` per request on the same model, same prompts, same max_tokens,
greedy, at concurrency 1 and 8.

    python bench/generate.py [--model models/smollm2-135m] [--max-tokens 32] [--rounds 2] [--threads 1]
                             [--device cpu] [--out bench/results/generate-DATE.json]

The model defaults to SmolLM2-135M (`das base build smollm2`) when models/smollm2-135m exists, else a tiny random
Llama built here (the results say which). Concurrency c: c client threads, each sending its share of the 8 prompts
one after another; for `generate`, each thread calls model.generate on the one model loaded in this process (what a
server without batching does). tokens/s = tokens generated (both stop at the end-of-sequence token) / wall seconds;
the best of --rounds. The service's texts are checked against generate's (greedy: they must be the same).
--threads sets torch's intra-op threads in this process and the server's (DAS_TORCH_THREADS) alike: on a small,
shared machine more threads than free cores make both sides spin against each other.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infer import free_port, start  # noqa: E402

from das_data.local_corpora import licence_documents  # noqa: E402
from das_engine.loading import load_lm  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = ROOT / "models" / "smollm2-135m"
CONCURRENCY = (1, 8)


def prompts(n: int = 8) -> list[str]:
    """n different prompts: the first words of real licence texts."""
    docs = [d for d in licence_documents() if len(d.split()) > 20]
    return [" ".join(doc.split()[:12 + 2 * i]) for i, doc in enumerate(docs[:n])]


def tiny_llama(folder: Path) -> Path:
    """A random Llama with SmolLM2's shape ratios but tiny (used when SmolLM2 is not built)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from causal_models import chat_tokenizer, tiny_causal

    return tiny_causal("llama", chat_tokenizer(licence_documents()[:120]), folder)


def timed(calls: list[Callable[[], tuple[str, int]]], concurrency: int) -> tuple[float, list[str], int]:
    """(wall seconds, texts in the calls' order, tokens generated) of `calls` run by `concurrency` threads."""
    texts: list[str] = [""] * len(calls)
    counts = [0] * len(calls)

    def worker(share: list[int]) -> None:
        for i in share:
            texts[i], counts[i] = calls[i]()

    threads = [threading.Thread(target=worker, args=(list(range(k, len(calls), concurrency)),))
               for k in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, texts, sum(counts)


def generate_call(model, tokenizer, prompt: str, max_tokens: int, device: str) -> Callable[[], tuple[str, int]]:
    ids = torch.tensor([tokenizer(prompt)["input_ids"]], device=device)

    def call() -> tuple[str, int]:
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens, do_sample=False,
                                 pad_token_id=model.generation_config.eos_token_id)
        new = out[0, ids.shape[1]:].tolist()
        return tokenizer.decode(new, skip_special_tokens=True), len(new)

    return call


def service_call(url: str, prompt: str, max_tokens: int) -> Callable[[], tuple[str, int]]:
    def call() -> tuple[str, int]:
        answer = httpx.post(f"{url}/v1/completions", json={"prompt": prompt, "max_tokens": max_tokens,
                                                           "temperature": 0}, timeout=600).json()
        return answer["choices"][0]["text"], answer["usage"]["completion_tokens"]

    return call


def best(calls: list[Callable[[], tuple[str, int]]], concurrency: int, rounds: int) -> tuple[float, list[str]]:
    """(the best tokens/s over `rounds`, the texts)."""
    runs = [timed(calls, concurrency) for _ in range(rounds)]
    return max(tokens / seconds for seconds, _, tokens in runs), runs[0][1]


def machine(device: str) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    found = {"cpu": cpu, "cpus": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
             "device": device, "host": platform.node()}
    if device.startswith("cuda"):
        found["gpu"] = torch.cuda.get_device_name(0)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=SMOLLM2 if SMOLLM2.is_dir() else None)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    today = datetime.date.today().isoformat()
    out = args.out or ROOT / "bench" / "results" / f"generate-{today}.json"
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.model or tiny_llama(Path(tmp) / "tiny-llama")
        texts = prompts()
        model, tokenizer, _ = load_lm(folder)
        model.eval().to(args.device)
        port = free_port()
        env = {"DAS_STORE": f"{tmp}/store", "DAS_WORK_DIR": f"{tmp}/work", "DAS_BASE_MODEL": str(folder),
               "DAS_DEVICE": args.device, "DAS_MAX_CONCURRENT_SEQUENCES": "8", "DAS_TORCH_THREADS": str(args.threads)}
        server = start([sys.executable, "-c", "from das.cli import app; app()", "serve", "--port", str(port)], port,
                       env)
        try:
            url = f"http://127.0.0.1:{port}"
            service_call(url, texts[0], 4)()  # warm
            rows, same = [], True
            for concurrency in CONCURRENCY:
                reference, expected = best([generate_call(model, tokenizer, p, args.max_tokens, args.device)
                                            for p in texts], concurrency, args.rounds)
                print(f"concurrency {concurrency}: model.generate per request {reference:.1f} tokens/s", flush=True)
                served, got = best([service_call(url, p, args.max_tokens) for p in texts], concurrency, args.rounds)
                same = same and got == expected
                rows.append({"concurrency": concurrency, "service_tokens_per_s": round(served, 1),
                             "generate_tokens_per_s": round(reference, 1), "ratio": round(served / reference, 2)})
                print(f"concurrency {concurrency}: service {served:.1f} tokens/s, model.generate per request "
                      f"{reference:.1f} tokens/s, ratio {served / reference:.2f}", flush=True)
        finally:
            server.terminate()
            server.wait(30)
    model_name = str(args.model.resolve().relative_to(ROOT)) if args.model and args.model.resolve().is_relative_to(
        ROOT) else str(args.model or "tiny random Llama")
    result = {"date": today, "machine": machine(args.device), "model": model_name,
              "command": "python " + " ".join(sys.argv), "prompts": len(texts), "max_tokens": args.max_tokens,
              "rounds": args.rounds, "greedy_texts_equal": same, "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(f"greedy texts equal: {same}; wrote {out}")


if __name__ == "__main__":
    main()
