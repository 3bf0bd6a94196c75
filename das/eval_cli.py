"""`das eval DOMAIN_DIR... --out DIR`: continual pre-training of several methods over domains, scored per stage.

The work is in `das_eval`; this is the command line around it (options, progress, errors).
Wire it into a Typer app with `app.command("eval")(eval_command)`; `merge_command` (`das eval-merge`) puts
the results of several runs of one evaluation into one report.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any

import typer

from das_data.base_models import BaseModelError, resolve_base_model
from das_data.domain_folder import DomainError
from das_eval import (
    EvalError,
    ScoringSettings,
    Stage,
    StageEvent,
    make_plan,
    merge_results,
    parse_settings,
    run_evaluation,
    write_reports,
)
from das_eval.files import read_json
from das_eval.results_check import MAX_METHOD_FOLDER, RESULTS_FIX
from das_formats.corpus import CorpusError
from das_settings import get_settings
from model_store.store import StoreError

from .console import console, fail, os_problem

S = ScoringSettings  # the option defaults below are the scoring settings' own


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _print_stage(event: StageEvent) -> None:
    where = f"[{event.position}/{event.total}]"
    if event.phase == "start":
        console.print(f"{where} {event.stage.label()}: started", soft_wrap=True)
    else:
        console.print(f"{where} {event.stage.label()}: done in {_duration(event.seconds)}; "
                      f"ETA for the rest {_duration(event.eta_s)}", soft_wrap=True)


class _TrainingLines:
    """A line at each phase change of the trainer (and the pipeline after it), every tenth of a phase's units, and
    at least every DAS_PROGRESS_EVERY_S seconds while a phase runs (an importance pass or a gate says it is alive)."""

    def __init__(self) -> None:
        self.phase: str | None = None
        self.written = 0.0

    def __call__(self, stage: Stage | None, progress: Any) -> None:
        now = time.monotonic()
        tenth = max(1, progress.total // 10)
        if (progress.phase == self.phase and progress.step % tenth != 0
                and now - self.written < get_settings().progress_every_s):
            return
        self.phase, self.written = progress.phase, now
        loss = progress.losses.get("loss")
        tail = f" loss {loss:.3f}" if loss is not None else ""
        detail = f" {progress.detail}" if getattr(progress, "detail", "") else ""
        eta = f" eta {_duration(progress.eta_s)}" if progress.eta_s else ""
        console.print(f"    {progress.phase} {progress.step}/{progress.total}{detail}{tail}{eta}", highlight=False)


_print_training = _TrainingLines()


# the options of `das eval` (ScoringSettings' defaults are the scoring options' own)
DomainsOpt = Annotated[list[Path], typer.Argument(help="domain folders (docs/domains.md), in the order they are "
                                                       "learned")]
OutOpt = Annotated[Path, typer.Option(help="output folder; rerunning the same command resumes it")]
MethodsOpt = Annotated[str, typer.Option(help="comma-separated: base, ncl, das, default (what an upload gets), "
                                              "and variants by their DASConfig settings, e.g. 'das:mask_mode=grad', "
                                              "'ncl:replay_fraction=0.25,merge_alpha=0.75', "
                                              "'ncl:replay_fraction=0.25,merge_auto=true'")
                       ]
SeedsOpt = Annotated[int, typer.Option(help="seeds 0..K-1 per method (training, and fine-tuning if on)")]
StepsOpt = Annotated[int, typer.Option(help="training steps per domain")]
BaseOpt = Annotated[str | None, typer.Option(help="model folder or id (default: $DAS_BASE_MODEL, else "
                                                  "'embedded')")]
LrOpt = Annotated[float | None, typer.Option(help="AdamW peak learning rate (default: DASConfig's)")]
BatchSizeOpt = Annotated[int | None, typer.Option(help="sequences per step (default: DASConfig's)")]
MaxLengthOpt = Annotated[int | None, typer.Option(help="tokens per training block, also the held-out loss's "
                                                        "(default: DASConfig's)")]
ImportanceSamplesOpt = Annotated[int | None, typer.Option(help="sequences per importance pass "
                                                                "(default: DASConfig's)")]
SettingsOpt = Annotated[str | None, typer.Option("--set", help="more DASConfig settings for every method, "
                                                               "'key=value,key=value'")]
FinetuneOpt = Annotated[bool, typer.Option("--finetune", help="also fine-tune every parameter on each end task "
                                                              "after every stage (the paper's protocol; slow)")
                        ]
FinetuneEpochsOpt = Annotated[int, typer.Option(help="fine-tuning epochs")]
FinetuneLrOpt = Annotated[float, typer.Option(help="fine-tuning learning rate")]
FinetuneBatchSizeOpt = Annotated[int, typer.Option(help="fine-tuning batch size")]
MaxTrainOpt = Annotated[int, typer.Option(help="end-task train examples per domain at most (balanced)")
                         ]
MaxTestOpt = Annotated[int, typer.Option(help="end-task test examples per domain at most (balanced)")]
TaskMaxLengthOpt = Annotated[int, typer.Option(help="tokens per end-task text")]
HeldoutFractionOpt = Annotated[float, typer.Option(help="share of each corpus kept out of training for the "
                                                         "held-out loss (MLM, or next-token on a causal base)")]
HeldoutMaxOpt = Annotated[int, typer.Option(help="held-out documents per domain at most")
                           ]
DeviceOpt = Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: $DAS_DEVICE, cpu)")]
PruneModelsOpt = Annotated[bool, typer.Option("--prune-models", help="delete a stage's weights once the next "
                                                                      "stage is scored (keeps scores and "
                                                                      "importance; saves disk)")]
ServedOpt = Annotated[bool, typer.Option("--served", help="the served view instead: upload each domain to a store "
                                                          "of its own per method and seed through the service's "
                                                          "path (gate, merge_auto, swap), registering each domain's "
                                                          "end task before the next arrives; writes OUT/served.*")
                      ]
GateMaxDropOpt = Annotated[float | None, typer.Option(help="with --served: the forgetting gate's limit in points "
                                                             "(default: $DAS_GATE_MAX_DROP)")]


def eval_command(
    ctx: typer.Context,
    domains: DomainsOpt,
    out: OutOpt,
    methods: MethodsOpt = "base,ncl,das",
    seeds: SeedsOpt = 3,
    steps: StepsOpt = 300,
    base: BaseOpt = None,
    lr: LrOpt = None,
    batch_size: BatchSizeOpt = None,
    max_length: MaxLengthOpt = None,
    importance_samples: ImportanceSamplesOpt = None,
    settings: SettingsOpt = None,
    finetune: FinetuneOpt = False,
    finetune_epochs: FinetuneEpochsOpt = S.finetune_epochs,
    finetune_lr: FinetuneLrOpt = S.finetune_lr,
    finetune_batch_size: FinetuneBatchSizeOpt = S.finetune_batch_size,
    max_train: MaxTrainOpt = S.max_train,
    max_test: MaxTestOpt = S.max_test,
    task_max_length: TaskMaxLengthOpt = S.max_length,
    heldout_fraction: HeldoutFractionOpt = S.heldout_fraction,
    heldout_max: HeldoutMaxOpt = S.heldout_max_documents,
    device: DeviceOpt = None,
    prune_models: PruneModelsOpt = False,
    served: ServedOpt = False,
    gate_max_drop: GateMaxDropOpt = None,
) -> None:
    """Continually pre-train each method on the domains in order; score every domain after every stage.

    Stage T = after T domains (stage 0 = the base model). Each stage scores every domain's end task:

    a probe on frozen features (and fine-tuning with --finetune), and the LM loss on a held-out corpus slice (MLM
    loss; next-token loss on a causal base).

    Writes OUT/results.json, results.md and PNG plots (mean ± std over seeds, cost per training step).

    Finished stages are reused: rerun the same command to resume. Other settings into the same OUT are refused.

    With --served, each domain is uploaded in turn through the service's path, its task registered before the next.

    It writes OUT/served.json, served.md and served.png: uploads refused, each task's served score along the lineage.
    """
    p = SimpleNamespace(**ctx.params)
    try:
        plan = _plan(p)
        _check_folder_names(plan.methods)
        _quiet()
        if served:
            _served_view(plan, out, gate_max_drop if gate_max_drop is not None else get_settings().gate_max_drop, ctx)
            return
        if gate_max_drop is not None:
            raise EvalError("--gate-max-drop is a setting of the served view: add --served")
        results = run_evaluation(plan, out, command=command_line(ctx), on_stage=_print_stage,
                                 on_train=_print_training)
    except (EvalError, DomainError, CorpusError, BaseModelError, StoreError, ValueError) as err:
        fail(str(err))
    except OSError as err:
        fail(os_problem(err, "check the path, its permissions and the free space, then rerun the same command "
                             "(finished stages are kept)"))
    _print_summary(out, results)


def _print_summary(out: Path, results: dict[str, Any]) -> None:
    console.print(f"wrote {out / 'results.json'}, {out / 'results.md'} and plots")
    for spec, summary in results["summary"].items():
        first = summary[results["families"][0]]
        fr = first["forgetting_rate"]["mean"]
        console.print(f"  {spec}: final average {first['final_average']['mean']:.2f}, "
                      f"FR {'n/a' if fr is None else f'{fr:.2f}'} ({results['families'][0]})", highlight=False)


def _plan(p: SimpleNamespace):
    """The evaluation's plan from the command's options (`p`: their values by parameter name)."""
    train = _shared_training(p.settings, steps=p.steps, lr=p.lr, batch_size=p.batch_size, max_length=p.max_length,
                             importance_samples=p.importance_samples)
    scoring = ScoringSettings(max_train=p.max_train, max_test=p.max_test, max_length=p.task_max_length,
                              finetune=p.finetune, finetune_epochs=p.finetune_epochs, finetune_lr=p.finetune_lr,
                              finetune_batch_size=p.finetune_batch_size, heldout_fraction=p.heldout_fraction,
                              heldout_max_documents=p.heldout_max)
    config = get_settings()
    spec = p.base or config.base_model
    return make_plan(p.domains, p.methods, p.seeds, base=resolve_base_model(spec, config.models_dir), base_spec=spec,
                     train=train, scoring=scoring, device=p.device or config.device, prune_models=p.prune_models)


def _served_view(plan: Any, out: Path, gate_max_drop: float, ctx: typer.Context) -> None:
    from das_eval.served import ServedSettings, run_served_view

    results = run_served_view(plan, out, ServedSettings(gate_max_drop=gate_max_drop), command=command_line(ctx),
                              on_event=lambda line: console.print(line, soft_wrap=True, highlight=False),
                              on_train=lambda progress: _print_training(None, progress))
    console.print(f"wrote {out / 'served.json'}, {out / 'served.md'} and {out / 'served.png'}")
    for spec, entry in results["methods"].items():
        s = entry["summary"]
        console.print(f"  {spec}: {s['accepted']['mean']:.2f} of {len(results['domains'])} uploads accepted, largest "
                      f"drop below a task's best {s['max_drop']['mean']:.2f} points, final served average "
                      f"{s['final_average']['mean']:.2f}", highlight=False)


def _check_folder_names(methods: list) -> None:
    """Before any stage runs: a method whose folder name the file system would refuse (after a stage's work)."""
    for method in methods:
        if len(method.folder) > MAX_METHOD_FOLDER:
            raise EvalError(f"method {method.spec!r}: its folder name would have {len(method.folder)} characters, "
                            f"at most {MAX_METHOD_FOLDER}; give it fewer settings (put the shared ones in --set)")


def _shared_training(settings: str | None, **options: Any) -> dict[str, Any]:
    """DASConfig settings every method shares: the options given (None: DASConfig's default), then --set's."""
    train = {name: value for name, value in options.items() if value is not None}
    extra = parse_settings(settings or "", what="--set")
    clash = sorted(set(extra) & set(train))
    if clash:
        fail(f"--set repeats {clash}, which have their own options")
    return {**train, **extra}


def command_line(ctx: typer.Context) -> list[str]:
    """The command as given: its arguments, and every option the command-line library saw set (an option left
    at its default is not repeated)."""
    words = ["das", ctx.info_name or "eval"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.param_type_name == "argument":
            words += [str(v) for v in (value if isinstance(value, list | tuple) else [value])]
            continue
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name == "DEFAULT":
            continue
        if getattr(param, "is_flag", False) and isinstance(value, bool):
            words += (param.opts if value else param.secondary_opts)[:1]
        else:
            words += [param.opts[0], str(value)]
    return words


def _quiet() -> None:
    """Our own progress lines are enough: silence transformers' bars and info logs; apply DAS_TORCH_THREADS."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    threads = get_settings().torch_threads
    if threads:
        import torch

        torch.set_num_threads(threads)


def merge_command(
    results: Annotated[list[Path], typer.Argument(help="results.json files of `das eval` runs with the same "
                                                  "domains, base, settings and seeds", show_default=False)],
    out: Annotated[Path, typer.Option(help="folder for the merged results.json, results.md and plots")],
    seeds: Annotated[int | None, typer.Option(help="keep seeds 0..K-1 of every run and summarise over them "
                                              "(default: every run's seeds, which must be the same)")] = None,
) -> None:
    """Merge the results of several runs of one evaluation (methods run into separate folders) into one report.

    The runs must share the domains, the base model, the training and scoring settings and the seeds.

    A method in several runs is taken from the first. --seeds K compares runs that finished different numbers of
    seeds at the seeds 0..K-1 they all have.

    Step-cost ratios stay within each run: a ratio to `ncl` needs an `ncl` in the same run.
    """
    try:
        if seeds is not None and seeds < 1:
            raise EvalError(f"--seeds must be >= 1, got {seeds}")
        parts = [read_json(path, what="a results.json", fix=RESULTS_FIX) for path in results]
        merged = merge_results(parts, seeds=None if seeds is None else range(seeds), names=[str(p) for p in results])
        if out.exists() and not out.is_dir():
            raise EvalError(f"{out} is a file; --out names a folder")
        out.mkdir(parents=True, exist_ok=True)
        write_reports(merged, out)
    except EvalError as err:
        fail(str(err))
    except OSError as err:
        fail(os_problem(err, f"--out {out} must be a folder you can write"))
    console.print(f"wrote {out / 'results.json'}, {out / 'results.md'} and plots "
                  f"({len(merged['methods'])} methods from {len(parts)} runs)")
