"""The served encoder as an ONNX graph, and the parity check that decides whether the graph may serve.

Two graphs, both axes dynamic: the encoder, (input_ids, attention_mask) -> last_hidden_state, and the MLM head
with its top-k, hidden (N, D) at masked positions -> the top 50 tokens' log-probabilities and ids (what fill-mask
answers; a request's top_k is a prefix). The pooling and the task heads stay torch code on the encoder's output,
so the parity check measures all the backend changes:

- fill-mask logits at the masked positions within 1e-3 of torch (torch's head on the graph's hidden states), the
  head graph's log-probabilities within 1e-3 of torch's, and the same top-5 tokens;
- embeddings (the served pooling) at cosine >= 0.9999.

    python -m das_engine.onnx_export MODEL_FOLDER OUT_FOLDER   # what the service's background export runs
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from das_formats.texts import FILL_MASK_MAX_TOP_K

from .answers import mlm_top_tokens, pooled
from .endtask import served_max_tokens
from .loading import load_masked_lm
from .units import resolve_units

OPSET = 17
INPUTS, OUTPUT = ("input_ids", "attention_mask"), "last_hidden_state"
HEAD_INPUT, HEAD_OUTPUTS = "hidden", ("log_probs", "token_ids")
GRAPH, HEAD_GRAPH, PARITY = "model.onnx", "mlm_head.onnx", "parity.json"  # the files an export folder holds
EXPORTER = f"torch-{torch.__version__}-opset{OPSET}"  # part of the cache key: another exporter, another graph
MAX_LOGIT_DIFF, MIN_COSINE, TOP_K = 1e-3, 0.9999, 5
PROBE_TEXTS = (  # fill-mask sentences of several lengths; {mask} is the tokenizer's mask token
    "The patient was given {mask} for the pain.",
    "{mask}",
    "The court held that the contract was {mask} because the seller never delivered the goods it had promised "
    "to the buyer, and the buyer had paid in full before the date set by both parties.",
    "def parse(line): return line.{mask}()",
    "Great battery life, but the {mask} is too dim outdoors and the speakers crackle at high volume.",
)


class _Encoder(torch.nn.Module):
    """The encoder with positional inputs and one tensor out: what the exporter traces."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = model.base_model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class _Pretransposed(torch.nn.Module):
    """A Linear as x @ W^T kept transposed: the graph holds (in, out) weights, a MatMul whose constant operand
    onnxruntime packs once, instead of a Gemm that transposes the (vocabulary x hidden) matrix on every call
    (16 masks at roberta-base's shape: 81 ms against torch's 2 ms, bench/backends.py)."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.register_buffer("weight_t", linear.weight.detach().t().contiguous())
        self.register_buffer("bias", linear.bias.detach().clone() if linear.bias is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x @ self.weight_t
        return out + self.bias if self.bias is not None else out


def _pretransposed(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` whose Linear layers are _Pretransposed (the model's own head is left as it is)."""
    copied = copy.deepcopy(module)
    for child in list(copied.modules()):
        for attribute, grandchild in list(child.named_children()):
            if isinstance(grandchild, torch.nn.Linear):
                setattr(child, attribute, _Pretransposed(grandchild))
    if isinstance(copied, torch.nn.Linear):
        return _Pretransposed(copied)
    return copied


class _TopTokens(torch.nn.Module):
    """The MLM head and its top k as the head graph computes them: (N, D) -> log-probabilities and ids, (N, k)."""

    def __init__(self, mlm_head: torch.nn.Module, k: int) -> None:
        super().__init__()
        self.mlm_head, self.k = _pretransposed(mlm_head), k

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.mlm_head(hidden)
        best = logits.topk(self.k, dim=-1)
        return best.values - logits.logsumexp(-1, keepdim=True), best.indices


@dataclass
class Parity:
    """How far the graph's answers lie from torch's on the probe texts; `ok` when every bound holds."""

    max_logit_diff: float
    min_cosine: float
    same_top_k: bool
    texts: int
    exporter: str = EXPORTER

    @property
    def ok(self) -> bool:
        return self.max_logit_diff <= MAX_LOGIT_DIFF and self.min_cosine >= MIN_COSINE and self.same_top_k

    def to_json(self) -> dict:
        return {**asdict(self), "ok": self.ok, "bounds": {"max_logit_diff": MAX_LOGIT_DIFF, "min_cosine": MIN_COSINE,
                                                          "top_k": TOP_K}}


def export_graphs(model: torch.nn.Module, folder: Path, pad_token_id: int = 0) -> None:
    """Write the encoder of a masked LM (eval mode, CPU, fp32) and its MLM head with top-k to `folder` (GRAPH,
    HEAD_GRAPH). The encoder's example batch holds a padded row, so the attention mask's path is the one a padded
    batch takes."""
    ids = torch.full((2, 8), 5, dtype=torch.long)
    mask = torch.ones_like(ids)
    ids[1, 5:], mask[1, 5:] = pad_token_id, 0
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
            OUTPUT: {0: "batch", 1: "tokens"}}
    head = _TopTokens(resolve_units(model).mlm_head, min(FILL_MASK_MAX_TOP_K, model.config.vocab_size))
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python branches it records as taken
        torch.onnx.export(_Encoder(model).eval(), (ids, mask), str(folder / GRAPH), dynamo=False,
                          input_names=list(INPUTS), output_names=[OUTPUT], dynamic_axes=axes, opset_version=OPSET)
        torch.onnx.export(head.eval(), (torch.zeros(3, model.config.hidden_size),), str(folder / HEAD_GRAPH),
                          dynamo=False, input_names=[HEAD_INPUT], output_names=list(HEAD_OUTPUTS),
                          dynamic_axes={HEAD_INPUT: {0: "masks"}, **{o: {0: "masks"} for o in HEAD_OUTPUTS}},
                          opset_version=OPSET)


def session(path: Path, threads: int | None = None):
    """An onnxruntime session of a graph on the CPU: `threads` intra-op threads (torch's count by default), no
    spinning (an idle spinning pool would take the core the event loop answers on)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(graph, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """last_hidden_state (B, T, D) from an onnxruntime session of the encoder, as a torch tensor on the CPU."""
    feed = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()}
    return torch.from_numpy(graph.run([OUTPUT], feed)[0])


def session_top_tokens(head_graph):
    """das_engine.answers.TopTokens from an onnxruntime session of the head graph: probabilities and ids, (N, k)."""

    def top(hidden: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if hidden.shape[0] == 0:
            return torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long)
        log_probs, ids = head_graph.run(list(HEAD_OUTPUTS), {HEAD_INPUT: hidden.detach().cpu().numpy()})
        return torch.from_numpy(log_probs[:, :k]).exp(), torch.from_numpy(ids[:, :k])

    return top


@torch.inference_mode()
def check_parity(model: torch.nn.Module, tokenizer, graph, head_graph) -> Parity:
    """Torch and the graphs on the same batches: the probe texts padded together, each alone, and one row at the
    model's longest input."""
    texts = [t.format(mask=tokenizer.mask_token) for t in PROBE_TEXTS]
    longest = served_max_tokens(model.config)
    batches = [tokenizer(texts, padding=True, truncation=True, max_length=longest, return_tensors="pt")]
    batches += [tokenizer([t], truncation=True, max_length=longest, return_tensors="pt") for t in texts]
    row = torch.full((1, longest), tokenizer.mask_token_id, dtype=torch.long)
    batches.append({"input_ids": row, "attention_mask": torch.ones_like(row)})
    head = resolve_units(model).mlm_head
    torch_top, graph_top = mlm_top_tokens(head), session_top_tokens(head_graph)
    diff, cosine, same = 0.0, 1.0, True
    for batch in batches:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        ours, theirs = model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state, run_session(graph, ids,
                                                                                                           mask)
        where = (ids == tokenizer.mask_token_id) & mask.bool()
        a, b = head(ours[where]), head(theirs[where])
        (p, i), (q, j) = torch_top(ours[where], TOP_K), graph_top(theirs[where], TOP_K)
        diff = max(diff, (a - b).abs().max().item(), (p.log() - q.log()).abs().max().item())
        same = same and torch.equal(a.topk(TOP_K, -1).indices, b.topk(TOP_K, -1).indices) and torch.equal(i, j)
        cosine = min(cosine, (pooled(ours, mask) * pooled(theirs, mask)).sum(-1).min().item())
    return Parity(round(diff, 8), round(cosine, 8), same, len(texts))


def export_folder(model_folder: Path, out: Path) -> Parity:
    """Export the masked LM in `model_folder` and check the graphs: `out` gets GRAPH, HEAD_GRAPH and PARITY, written
    into a sibling folder first and renamed into place (a reader sees all of them or none)."""
    model, tokenizer = load_masked_lm(model_folder)
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    export_graphs(model, staging, tokenizer.pad_token_id or 0)
    parity = check_parity(model, tokenizer, session(staging / GRAPH), session(staging / HEAD_GRAPH))
    (staging / PARITY).write_text(json.dumps(parity.to_json(), indent=1) + "\n", "utf-8")
    try:
        os.replace(staging, out)
    except OSError:  # another export of the same version finished first: keep its folder
        shutil.rmtree(staging, ignore_errors=True)
        if not (out / PARITY).is_file():
            raise
    return parity


if __name__ == "__main__":  # the service's background export (serving.onnx_cache)
    os.nice(19)
    torch.set_num_threads(1)
    result = export_folder(Path(sys.argv[1]), Path(sys.argv[2]))
    print(json.dumps(result.to_json()))
