"""`vlm eval`: a trained run's checkpoint evaluated again, its results merged into its results.json.

    results = evaluate("runs/pretrain", splits=["test"])  # merged into runs/pretrain/results.json
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

import jax

from vlm_jax.errors import UserError
from vlm_jax.eval import evaluators as evaluators_lib
from vlm_jax.run.build import load_run
from vlm_jax.run.loop import LossEvaluator

log = logging.getLogger(__name__)


def evaluate(workdir: str | Path, splits: Iterable[str] | None = None, tasks: Iterable[str] | None = None,
             step: int | None = None, overrides: Iterable[str] = ()) -> dict[str, float]:
    """Evaluate a run's checkpoint on `splits` (default `eval.splits`) for `tasks` (default: its training
    task's evaluators and losses, the keys the end of training writes), and merge the
    `<split>/<task>/<metric>` keys into its results.json."""
    tasks = tuple(tasks) if tasks else None
    unknown = sorted(set(tasks or ()) - set(evaluators_lib.EVALUATORS))
    if unknown:
        raise UserError(f"unknown task {unknown[0]!r}; choose from {', '.join(evaluators_lib.EVALUATORS)}")
    run, state, step = load_run(workdir, step, overrides)
    splits = list(splits or run.config.eval.splits)
    evaluators = [make(run) for make in evaluators_lib.evaluators_for(run.config, tasks)]
    if tasks is None:  # what the end of training evaluates: the task's losses too
        evaluators.insert(0, LossEvaluator(run))
    results: dict[str, float] = {}
    for split in splits:
        for evaluator in evaluators:
            results.update({f"{split}/{k}": v for k, v in evaluator(state, split).items()})
    results["eval/step"] = float(step)
    if jax.process_index() == 0:
        path = Path(workdir) / "results.json"
        merged = json.loads(path.read_text()) if path.is_file() else {}
        merged.update(results)
        path.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
    return results
