"""`das eval`: continual pre-training of several methods over a sequence of domains, scored after every stage.

Read in this order:

1. `methods`: `base`, `ncl`, `das` and variants named by their DASConfig settings (`das:mask_mode=grad`);
2. `plan`: the domains in order, methods, seeds, the base model, the shared training settings, how stages
   are scored (`ScoringSettings`), and the stages themselves;
3. `scoring`: each domain's corpus minus a fixed held-out slice, its end task capped, and a model's scores
   (the end-task path is the service's: `das_engine.endtask.probe_task` and `finetune_task`);
4. `metrics`: pure functions of a score matrix a[T, i], as SPEC-DAS defines them;
5. `runner`: run or resume every stage into an output folder (`files` names its files);
6. `results`, `results_check` and `reports`: results.json collected or merged, checked field by field, results.md
   and the plots;
7. `served`: the served view (`das eval --served`), each domain uploaded through the pipeline in turn.

Below the CLI, above the pipeline (the served view runs its workflows), the data and the engine: it imports no
fastapi, celery, job records, worker or serving, and no torch at import time (the CLI starts fast); scoring and
training import the engine when they run.
"""

from .methods import EvalError, Method, method_folder, parse_method, parse_settings, split_methods
from .metrics import (
    final_average,
    forgetting_rate,
    loss_rise,
    mean_matrix,
    mean_std,
    plasticity,
    step_costs,
    summarise,
    summarise_losses,
    summarise_method,
)
from .plan import EvalPlan, ScoringSettings, Stage, make_plan
from .reports import write_reports
from .results import collect_results, merge_results
from .runner import StageEvent, run_evaluation
from .scoring import PreparedDomain, heldout_split, prepare_domain

__all__ = [
    "EvalError", "EvalPlan", "Method", "PreparedDomain", "ScoringSettings", "Stage", "StageEvent",
    "collect_results", "final_average", "forgetting_rate", "heldout_split", "loss_rise", "make_plan",
    "mean_matrix", "mean_std", "merge_results", "method_folder", "parse_method", "parse_settings", "plasticity",
    "prepare_domain", "run_evaluation", "split_methods", "step_costs", "summarise", "summarise_losses",
    "summarise_method", "write_reports",
]
