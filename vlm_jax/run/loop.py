"""The training loop behind `vlm train`: one loop for pretraining and every finetuning task.

    results = train(config, workdir)            # config from `vlm_jax.config.load`

What a run does, in order:
1. writes `workdir/config.json` (the resolved config, seed included) and builds the data set if it is
   missing (process 0 builds; the others wait at a barrier);
2. builds the mesh (`config.mesh`), the logical-axis rules (`config.mesh.rules`), the model, the optimizer
   (`config.optim`) and the jitted train/eval steps with in/out shardings and a donated state;
3. resumes from the latest checkpoint in `workdir/checkpoints` (parameters, optimizer state, step, key
   and this process's data-iterator position), else starts fresh, optionally from another run's
   parameters (`config.init_from`, e.g. only the video tower of a pretraining run) or from real
   pretrained towers (`init_from.text_encoder` / `video_encoder`: MiniLM, Kinetics I3D);
4. trains for `train.num_steps` micro-steps with a progress bar (steps/s, ETA), logging the mean of every
   metric over each `train.log_every` steps to `metrics.jsonl` and TensorBoard (`workdir/tensorboard`);
   every `train.eval_every` steps runs the evaluators on the validation split, and every
   `checkpoint.every_steps` saves asynchronously;
5. saves the last step, evaluates on `eval.splits` and writes `results.json` (`<split>/<task>/<metric>`).

A SIGTERM (preemption) makes the loop save at the next step boundary and exit with status 143; the next
run resumes there. With several processes (`jax.distributed`), every process runs this same loop on its
own data shard; the step and the checkpoint are collective, and only process 0 writes files other than
checkpoints.

Evaluators are callables `(state, split) -> {"<task>/<metric>": number}`; the loop always has one for
the task's losses (`LossEvaluator`), and callers (the CLI) can pass more (retrieval recall@K, QA
accuracy, ...), since `run` sits below `eval` (vlm_jax.FLOORS).
"""

from __future__ import annotations

import json
import logging
import math
import resource
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Protocol

import jax
import numpy as np
from jax.experimental import multihost_utils

from vlm_jax import config as config_lib
from vlm_jax.data import clip_transform, pipeline
from vlm_jax.errors import TrainingFault, UserError
from vlm_jax.run.build import TOWER_MODULES, Run, ensure_data, load_pretrained, load_tower, make_mesh
from vlm_jax.train import checkpoint as checkpoint_lib
from vlm_jax.train import steps
from vlm_jax.train.state import TrainState

log = logging.getLogger(__name__)


class Evaluator(Protocol):
    def __call__(self, state: TrainState, split: str) -> dict[str, float]: ...


def _window_metrics(history: list[dict[str, Any]]) -> dict[str, float]:
    """A logging window's metrics: means over its finite steps (NaN when none was finite), `nonfinite`,
    the number of steps whose update was skipped, and the pipeline's `data/<issue>` counts, summed."""
    fetched = jax.device_get(history)
    finite = [m for m in fetched if not m["nonfinite"]]
    out = {k: float(np.mean([m[k] for m in finite])) if finite else math.nan for k in fetched[0]}
    out["nonfinite"] = float(len(fetched) - len(finite))
    out.update({k: float(sum(m[k] for m in fetched)) for k in fetched[0] if k.startswith("data/")})
    return out


def _check_data(window: dict[str, float], steps: int, batch_size: int, step: int) -> None:
    """Stop when a whole logging window held not one usable clip: the data set yields nothing."""
    skipped = window.get("data/unreadable", 0.0) + window.get("data/wrong_shape", 0.0)
    if skipped >= steps * batch_size:
        raise TrainingFault(f"every clip of steps {step - steps + 1}-{step} was unreadable or malformed "
                            f"({int(skipped)} skipped); the data set yields nothing to train on")


def _check_finite(run: Run, history: list[dict[str, Any]], step: int, last_saved: int | None) -> None:
    """With `train.on_nonfinite=stop`, stop at a skipped step, before anything is saved after it."""
    if run.config.train.on_nonfinite != "stop" or not history:
        return
    flags = jax.device_get([m["nonfinite"] for m in history])
    if any(flags):
        bad = step - len(history) + 1 + int(np.argmax(flags))
        kept = f"the last checkpoint (step {last_saved}) is intact" if last_saved is not None else "nothing was saved"
        raise TrainingFault(f"non-finite loss, gradients or parameters at step {bad}; stopped as "
                            f"train.on_nonfinite=stop asks, and {kept}")


class LossEvaluator:
    """The task's losses and metrics on a split (at most `eval.max_batches` batches; all when <= 0),
    averaged over every caption (or, for qa, every question) of its clips: keys `<task>/<name>`
    (`pretrain/mlm_loss`, `qa/qa_accuracy`, ...), computed as in training on each caption style and
    question type in turn (`steps.eval_slots`), so the best checkpoint is chosen on all of them."""

    def __init__(self, run: Run):
        self.run = run

    def __call__(self, state: TrainState, split: str) -> dict[str, float]:
        run = self.run
        totals: dict[str, float] = {}
        weight = 0.0
        for batch in run.eval_batches(split):
            for slot in steps.eval_slots(batch, run.settings.task):
                with run.mesh_context():
                    metrics = jax.device_get(run.eval_step(state, run.to_device(slot)))
                w = float(metrics.pop("weight"))
                weight += w
                for k, v in metrics.items():
                    totals[k] = totals.get(k, 0.0) + w * float(v)
        task = run.settings.task
        return {f"{task}/{k.replace('/', '_')}": v / max(weight, 1.0) for k, v in totals.items()}


class _MetricsWriter:
    """metrics.jsonl + TensorBoard, written by process 0 only."""

    def __init__(self, workdir: Path):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter
        self.jsonl = open(workdir / "metrics.jsonl", "a")
        self.tensorboard = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        try:
            self.jsonl.write(json.dumps({"step": int(step), **{k: _number(v) for k, v in metrics.items()}}) + "\n")
            self.jsonl.flush()
        except OSError as error:
            raise TrainingFault(f"metrics could not be written to {self.jsonl.name}: {error.strerror or error}") \
                from error
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.tensorboard.add_scalar(name, value, step)
        self.tensorboard.flush()

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            self.tensorboard.close()


def _number(value: Any) -> Any:
    value = float(value)
    return value if math.isfinite(value) else None


class _Preemption:
    """SIGTERM sets a flag; the loop saves and stops at the next step. Across processes the decision is
    collective (the OR of every process's flag, gathered every `train.log_every` steps), so no process stops
    alone."""

    def __init__(self):
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        log.warning("SIGTERM: saving a checkpoint at the next step and stopping")
        self.requested = True

    def should_stop(self, step: int, every: int) -> bool:
        """Single process: at every step. Several: at every `every`-th step (the check is a collective)."""
        if jax.process_count() == 1:
            return self.requested
        if step % every:
            return False
        flags = multihost_utils.process_allgather(np.asarray(self.requested))
        return bool(np.any(flags))

    def close(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def peak_rss_mb() -> float:
    """This process's peak resident memory (the device memory, on CPU)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _initial_state(run: Run, checkpointer: checkpoint_lib.Checkpointer, train_iter) -> tuple[TrainState, dict]:
    """Resume from the workdir's newest valid checkpoint, else a fresh state (optionally `init_from`)."""
    info: dict[str, float] = {}
    start = time.perf_counter()
    restored = checkpointer.restore_latest_valid(run.factory.abstract())
    if restored is not None:
        step, state, data_state = restored
        info["checkpoint/restore_s"] = time.perf_counter() - start
        if data_state is not None:
            train_iter.set_state(data_state)
        log.info("resumed from step %d", step)
        return state, info
    state = run.factory.create()
    init_from = run.config.init_from
    if init_from.workdir:
        state = load_pretrained(run, state, init_from)
    for module in TOWER_MODULES:
        if init_from[module]:
            state = load_tower(state, module, init_from[module])
    return state, info


def train(config: Any, workdir: str | Path, evaluators: Iterable[Callable[[Run], Evaluator]] = ()) -> dict[str, float]:
    """Run (or resume) training as the module doc describes; returns the final results."""
    workdir = Path(workdir)
    make_mesh(config)  # a mesh that cannot be is an error before the data set is built
    _check_writable(workdir)
    if jax.process_index() == 0:
        config_lib.write(config, workdir)
    ensure_data(config)
    run = Run(config)
    all_evaluators: list[Evaluator] = [LossEvaluator(run), *(make(run) for make in evaluators)]
    checkpointer = checkpoint_lib.Checkpointer.from_config(workdir, config.checkpoint, config)
    writer = _MetricsWriter(workdir)
    train_iter = iter(pipeline.train_dataset(run.spec))
    preemption = _Preemption()
    try:
        state, info = _initial_state(run, checkpointer, train_iter)
        results = _loop(run, state, train_iter, checkpointer, writer, all_evaluators, preemption, info)
    finally:
        preemption.close()
        checkpointer.close()
        writer.close()
    if results is not None and jax.process_index() == 0:
        (workdir / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    if results is None:
        raise SystemExit(143)
    return results


def _check_writable(workdir: Path) -> None:
    """Fail before any work when this process cannot write to the workdir."""
    probe = workdir / f".write_test_{jax.process_index()}"
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UserError(f"cannot write to the workdir {workdir}: {error.strerror or error}") from None


def _evaluate(evaluators: list[Evaluator], state: TrainState, split: str) -> dict[str, float]:
    out = {}
    for evaluator in evaluators:
        out.update({f"{split}/{k}": v for k, v in evaluator(state, split).items()})
    return out


def _loop(run: Run, state: TrainState, train_iter, checkpointer, writer, evaluators, preemption,
          info: dict[str, float]) -> dict[str, float] | None:
    config = run.config
    num_steps, log_every = int(config.train.num_steps), max(1, int(config.train.log_every))
    eval_every, save_every = int(config.train.eval_every), int(config.checkpoint.every_steps)
    step = int(jax.device_get(state.step))
    if info:
        writer.write(step, info)
    last_saved, nonfinite_steps = checkpointer.latest_step(), 0
    data_issues = dict.fromkeys(clip_transform.DATA_ISSUES, 0.0)  # since this (re)start
    history: list[dict[str, Any]] = []
    timed_steps, timed_seconds = 0, 0.0
    progress = _progress(step, num_steps)
    tick = time.perf_counter()
    try:
        while step < num_steps:
            batch = run.to_device(next(train_iter))
            with run.mesh_context():
                state, metrics = run.train_step(state, batch)
            step += 1
            history.append(metrics)
            progress.update(1)
            if step % log_every == 0 or step == num_steps:
                means = _window_metrics(history)  # waits for the step: timings below are real
                nonfinite_steps += int(means["nonfinite"])
                for name in data_issues:
                    data_issues[name] += means.get(f"data/{name}", 0.0)
                _check_data(means, len(history), config.train.batch_size, step)
                now = time.perf_counter()
                if step > log_every:  # the first window holds the compile
                    timed_steps, timed_seconds = timed_steps + len(history), timed_seconds + (now - tick)
                tick = now
                update = (step - 1) // run.accumulation
                means = {f"train/{k}": v for k, v in means.items()}
                means["train/learning_rate"] = float(run.schedule(update))
                if timed_seconds:
                    means["train/steps_per_s"] = timed_steps / timed_seconds
                    means["train/clips_per_s"] = timed_steps * config.train.batch_size / timed_seconds
                means["train/peak_rss_mb"] = peak_rss_mb()
                writer.write(step, means)
                progress.set_postfix(loss=f"{means['train/loss']:.4f}")
                _check_finite(run, history, step, last_saved)
                history = []
            if eval_every > 0 and step % eval_every == 0 and step < num_steps:
                _check_finite(run, history, step, last_saved)
                evaluation = _evaluate(evaluators, state, "validation")
                writer.write(step, evaluation)
                last_saved = _save(checkpointer, step, state, train_iter, writer, evaluation)
                tick = time.perf_counter()  # throughput counts training, not evaluation
            elif save_every > 0 and step % save_every == 0:
                _check_finite(run, history, step, last_saved)
                last_saved = _save(checkpointer, step, state, train_iter, writer)
            if preemption.should_stop(step, log_every):
                _check_finite(run, history, step, last_saved)
                _save(checkpointer, step, state, train_iter, writer)
                return None
    finally:
        progress.close()
    _save(checkpointer, step, state, train_iter, writer)
    results = {}
    for split in config.eval.splits:
        results.update(_evaluate(evaluators, state, split))
    if timed_seconds:
        results["train/steps_per_s"] = timed_steps / timed_seconds
        results["train/clips_per_s"] = timed_steps * config.train.batch_size / timed_seconds
    results["train/peak_rss_mb"] = peak_rss_mb()
    results["train/steps"] = float(step)
    results["train/nonfinite_steps"] = float(nonfinite_steps)
    results.update({f"train/data/{name}": count for name, count in data_issues.items()})
    writer.write(step, results)
    return results


def _save(checkpointer, step: int, state: TrainState, train_iter, writer,
          metrics: Mapping[str, float] | None = None) -> int:
    """Checkpoint `step` (unless it exists already); returns it."""
    start = time.perf_counter()
    if checkpointer.save(step, state, train_iter.get_state(), metrics=metrics):
        writer.write(step, {"checkpoint/save_blocking_s": time.perf_counter() - start})
    return step


def _progress(start: int, total: int):
    from tqdm import tqdm
    return tqdm(total=total, initial=start, unit="step", disable=jax.process_index() != 0, dynamic_ncols=True,
                smoothing=0.1, mininterval=1.0)
