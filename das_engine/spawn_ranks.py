"""`adapt` on several processes of this machine, with this process as rank 0 (a worker's DAS_TRAIN_PROCS).

Rank 0 keeps what only one process can hold: the progress callback, the stop check (passed on to every rank at each
step), the merge's task judge and the outputs. The other ranks are started as `python -m das_engine.spawn_ranks
SPEC` with the environment torchrun would give them (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), read
the same inputs from SPEC, and train their rows of each batch. A rank that fails makes the collectives of the others
fail, so the job fails with it; the helpers are killed when rank 0 leaves early.

Rank 0 owns the rendezvous (a TCPStore on a port the system picks) and lets no rank into the process group before
every helper has said it is ready: a helper that dies while starting (an import error, a bad environment, a kill)
fails the run within a poll, and one that never gets ready fails it after HELPER_START_TIMEOUT_S, instead of rank 0
waiting the collectives' 6-hour timeout in `init_process_group`.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch.distributed as dist

from das_formats.exits import describe_exit

from . import distributed
from .run_state import AdaptResult
from .trainer import adapt

HELPER_EXIT_WAIT_S = 60.0
HELPER_START_TIMEOUT_S = 600.0  # importing torch and reading the spec; minutes on a busy machine, not hours
START_POLL_S = 0.2
FOLDER_PREFIX = "das-ranks-"  # then rank 0's pid: a folder whose rank 0 died is removed by the next run
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def adapt_on_ranks(procs: int, base: str | Path, corpus: str | Path | list[str], out_dir: str | Path, config,
                   *, device: str = "cpu", **kwargs: Any) -> AdaptResult:
    """trainer.adapt as `procs` ranks (one: in this process, as it is). kwargs: adapt's own; the callbacks
    (on_progress, should_stop, judge_tasks) stay on rank 0."""
    if procs <= 1:
        return adapt(base, corpus, out_dir, config, device=device, **kwargs)
    shared = {k: v for k, v in kwargs.items() if k in ("prev_importance", "domain", "replay", "base_digests",
                                                               "token_cache")}
    store = dist.TCPStore("127.0.0.1", 0, procs, is_master=True, timeout=distributed.TIMEOUT,
                          wait_for_workers=False)
    remove_dead_runs_folders()
    with tempfile.TemporaryDirectory(prefix=f"{FOLDER_PREFIX}{os.getpid()}-") as folder:
        spec = Path(folder) / "spec.pickle"
        spec.write_bytes(pickle.dumps({"base": base, "corpus": corpus, "out_dir": out_dir, "config": config,
                                       "device": device, **shared}))
        helpers = [_start_helper(rank, procs, store.port, spec) for rank in range(1, procs)]
        try:
            _wait_until_ready(store, helpers)
            rank_device = distributed.join(0, procs, 0, device, store=store)
            result = adapt(base, corpus, out_dir, config, device=rank_device, **kwargs)
            distributed.finish()  # the helpers wait there for rank 0's outputs
        except BaseException as err:
            dead = _dead_helper(helpers)  # the first to exit: the others' collectives failed because of it
            for helper in helpers:  # they may wait in a collective rank 0 never reaches
                helper.kill()
            distributed.leave()
            if dead is not None and isinstance(err, Exception) and not isinstance(err, RankFailed):
                raise RankFailed(f"training rank {dead[0]} of {procs} exited ({describe_exit(dead[1])}); the run "
                                 "stopped with it") from err
            raise
        finally:
            failed = _wait(helpers)
    if failed:
        raise RuntimeError(f"training rank(s) {failed} of {procs} failed; see their log lines")
    return result


class RankFailed(RuntimeError):
    """A helper rank ended the run: it exited while starting, or died while training (the message names it)."""


def remove_dead_runs_folders(older_than_s: float = 60.0) -> list[Path]:
    """Remove the spec folders of runs whose rank 0 died without cleaning up (a kill -9): each is named by its
    rank 0's pid, and one whose process is gone and that is older than `older_than_s` is left by nobody."""
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*-*"):
        pid = folder.name.removeprefix(FOLDER_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or _alive(int(pid)) or time.time() - folder.stat().st_mtime < older_than_s:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _dead_helper(helpers: list[subprocess.Popen], wait_s: float = 2.0) -> tuple[int, int] | None:
    """(rank, exit code) of the helper that died first, if one did (given a moment to be reaped)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for rank, helper in enumerate(helpers, start=1):
            code = helper.poll()
            if code is not None and code != 0:
                return rank, code
        time.sleep(0.05)
    return None


def die_with_parent() -> None:
    """In a helper, before it runs: the kernel kills it when rank 0 dies (Linux; elsewhere the collectives' failure
    ends it)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _start_helper(rank: int, world: int, port: int, spec: Path) -> subprocess.Popen:
    env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    env.setdefault("OMP_NUM_THREADS", distributed.threads_per_rank(world))
    return subprocess.Popen([sys.executable, "-m", "das_engine.spawn_ranks", str(spec)], env=env,
                            preexec_fn=die_with_parent if sys.platform == "linux" else None)


def _ready_key(rank: int) -> str:
    return f"das/ready/{rank}"


def _wait_until_ready(store: dist.TCPStore, helpers: list[subprocess.Popen]) -> None:
    """Return once every helper rank has said it is ready; RuntimeError as soon as one has exited instead, or
    when one is not ready after HELPER_START_TIMEOUT_S."""
    keys = [_ready_key(rank) for rank in range(1, len(helpers) + 1)]
    deadline = time.monotonic() + HELPER_START_TIMEOUT_S
    while not store.check(keys):
        for rank, helper in enumerate(helpers, start=1):
            code = helper.poll()
            if code is not None:
                raise RankFailed(f"training rank {rank} of {len(helpers) + 1} exited with code {code} before it "
                                 "joined the run; see its log lines")
        if time.monotonic() > deadline:
            raise RuntimeError(f"training rank(s) not ready after {HELPER_START_TIMEOUT_S:.0f} s: "
                               f"{[k.rsplit('/', 1)[1] for k in keys if not store.check([k])]}")
        time.sleep(START_POLL_S)


def _wait(helpers: list[subprocess.Popen]) -> list[int]:
    """Wait for the helper ranks (killing any still running after a while); the ranks that failed."""
    failed = []
    for rank, helper in enumerate(helpers, start=1):
        try:
            code = helper.wait(HELPER_EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            helper.kill()
            code = helper.wait()
        if code != 0:
            failed.append(rank)
    return failed


def main(spec_path: str) -> None:
    """A helper rank: the spec's adapt call, as rank RANK of WORLD_SIZE."""
    spec = pickle.loads(Path(spec_path).read_bytes())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=timedelta(seconds=HELPER_START_TIMEOUT_S))
    store.set(_ready_key(rank), "1")
    device = distributed.join(rank, world, int(os.environ["LOCAL_RANK"]), spec.pop("device"), store=store)
    try:
        adapt(spec.pop("base"), spec.pop("corpus"), spec.pop("out_dir"), spec.pop("config"), device=device, **spec)
    finally:
        distributed.finish()


if __name__ == "__main__":
    main(sys.argv[1])
