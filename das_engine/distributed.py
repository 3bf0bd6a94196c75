"""Training on several processes with torch.distributed: what a rank is, and the few collectives the engine uses.

A run of N ranks (torchrun, or `das adapt --nproc N`) trains the same model as one process:
- every rank builds the whole global batch of a step from (seed, step) and masks it with the step's generator, as
  one process does, then takes its own rows (`Ranks.rows`: rows rank, rank + N, ...). So 1 and N ranks see the
  same batches and the same masks, and `batch_size` stays the global batch;
- the model is wrapped in DistributedDataParallel for the step; each rank's loss is its share of the global
  batch's (`LossShares`), scaled by N before backward, so the averaged gradient is the one-process gradient
  (train_step.train_step); the InfoNCE term gathers every rank's positives and o_prev passes;
- the soft-mask then acts on the all-reduced gradients (or on the update), the same on every rank;
- the importance passes take every N-th batch on each rank and sum over the ranks (`all_reduce_sum`);
- rank 0 writes checkpoints and the outputs; every rank reads the same checkpoint to resume.
Dropout is drawn per rank, so equivalence holds with dropout off (the tests), and in distribution otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

# how long a rank waits in a collective: the others wait at the end while rank 0 merges (merge_auto scores
# candidates against the end tasks) and writes the outputs
TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: rank `rank` of `world` (0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """The rank that reports progress and writes checkpoints and outputs."""
        return self.rank == 0

    def rows(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch: rank, rank + world, rank + 2 * world, ..."""
        return tensor[self.rank::self.world] if self.distributed else tensor

    def all_reduce_sum(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor over the ranks, in place (nothing to do on one)."""
        if not self.distributed:
            return
        for tensor in tensors:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)

    def any(self, flag: bool, device: torch.device | str = "cpu") -> bool:
        """True on every rank when it is true on one (a stop asked on rank 0 stops all at the same step)."""
        if not self.distributed:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())


@dataclass(frozen=True)
class LossShares:
    """What a rank needs for its share of the global batch's loss: the ranks, and the global batch's scored tokens
    (masked positions of a masked LM, next-token targets of a causal one: `mlm.scored_tokens`); the LM loss is the
    sum over its own scored tokens divided by those."""

    ranks: Ranks
    masked_tokens: int


def current() -> Ranks:
    """The ranks of the process group this process is in (0 of 1 when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def launched_world() -> int:
    """The number of ranks torchrun launched this process among (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_from_environment(device: str) -> tuple[Ranks, str]:
    """Join the process group torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT).
    Returns the ranks and this rank's device (see `join`)."""
    if launched_world() <= 1:
        return Ranks(), device
    if not dist.is_initialized():
        device = join(int(os.environ["RANK"]), launched_world(), int(os.environ.get("LOCAL_RANK", "0")), device)
    return current(), device


def join(rank: int, world: int, local_rank: int, device: str, store: dist.Store | None = None) -> str:
    """Join a process group as `rank` of `world`: gloo on the CPU, nccl on GPUs, one GPU per rank of a machine;
    the rendezvous is `store`, or torchrun's environment (env://) without one.
    Returns this rank's device (cuda:LOCAL_RANK for a CUDA device, else `device`)."""
    cuda = torch.device(device).type == "cuda"
    if cuda:
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    rendezvous = {"store": store} if store is not None else {"init_method": "env://"}
    dist.init_process_group(backend="nccl" if cuda else "gloo", rank=rank, world_size=world, timeout=TIMEOUT,
                            **rendezvous)
    return device


def threads_per_rank(world: int) -> str:
    """OMP_NUM_THREADS for each of `world` CPU ranks of one machine: an equal share of its cores."""
    return str(max(1, (os.cpu_count() or 1) // world))


def leave() -> None:
    """Leave the process group at once (a failing rank: the others are stopped by their launcher)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def finish() -> None:
    """Leave the process group once every rank is done (rank 0 writes the outputs after the others' last step)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def gather_rows(tensor: torch.Tensor, ranks: Ranks, *, grad: bool) -> torch.Tensor:
    """Every rank's rows of `tensor`, rank 0's first, on every rank; with `grad`, gradients flow back to the rank
    that owns the rows, summed over every rank's loss (_GatherRows)."""
    if not ranks.distributed:
        return tensor
    if grad:
        return _GatherRows.apply(tensor, ranks.rank, ranks.world)
    return _all_gather(tensor, ranks.world)


def _all_gather(tensor: torch.Tensor, world: int) -> torch.Tensor:
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class _GatherRows(torch.autograd.Function):
    """All-gather on the row axis whose backward hands each rank the gradient of its own rows summed over every
    rank's loss (an all-reduce, then this rank's slice: gloo has no reduce-scatter)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, rank: int, world: int) -> torch.Tensor:
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        return _all_gather(tensor, world)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows], None, None
