"""A trained run loaded back from its workdir, for `vlm eval` and the applications (search, captions, answers).

    run, state, step = load_run("runs/pretrain")          # config.json + the latest checkpoint
    results = evaluate("runs/pretrain", splits=["test"])  # merged into runs/pretrain/results.json
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Iterable

import jax

from vlm_jax import config as config_lib
from vlm_jax.errors import UserError
from vlm_jax.eval import evaluators as evaluators_lib
from vlm_jax.train import checkpoint as checkpoint_lib
from vlm_jax.train.loop import LossEvaluator, Run, ensure_data
from vlm_jax.train.state import TrainState

log = logging.getLogger(__name__)


def load_run(workdir: str | Path, step: int | None = None,
             overrides: Iterable[str] = ()) -> tuple[Run, TrainState, int]:
    """The run's `Run` (from its config.json, with overrides such as `eval.max_batches=2`) and its state at
    `step` (default: the latest checkpoint), placed on this machine's devices."""
    workdir = Path(workdir)
    if not (workdir / "config.json").is_file():
        raise UserError(f"{workdir} is not a run directory (no config.json)")
    config = config_lib.load(str(workdir / "config.json"))  # with the defaults of keys added since
    for override in overrides:
        config_lib.apply_override(config, override)
    config_lib.validate(config)
    ensure_data(config)
    run = Run(config)
    checkpointer = checkpoint_lib.Checkpointer(workdir, async_save=False)
    try:
        step = checkpointer.latest_step() if step is None else int(step)
        if step is None:
            raise UserError(f"{workdir} has no checkpoint yet")
        if step not in checkpointer.all_steps():
            raise UserError(f"{workdir} has no checkpoint for step {step}; it has {checkpointer.all_steps()}")
        state, _ = checkpointer.restore(step, run.factory.abstract())
    finally:
        checkpointer.close()
    log.info("loaded %s at step %d", workdir, step)
    return run, state, step


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
