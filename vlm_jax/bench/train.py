"""The `train` section: the real pretraining step (`build.Run(config).train_step`, with its mesh, shardings
and donated state) on real batches: init, compile and step times, FLOPs and MFU, peak RSS and, quick only,
one checkpoint save and restore. The metrics are described in docs/bench.md."""

from __future__ import annotations

import gc
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import jax

from vlm_jax.bench import flops
from vlm_jax.bench.common import MB, progress
from vlm_jax.bench.presets import load_config
from vlm_jax.data import pipeline
from vlm_jax.train import checkpoint as checkpoint_lib
from vlm_jax.run import build, loop

TRAIN_STEPS = {True: {"tiny": 5}, False: {"small": 2, "cpu": 5}}  # quick -> {preset: timed steps}


def train(quick: bool, data_dir: str, peaks: dict[str, float], presets: Sequence[str] | None = None
          ) -> dict[str, float]:
    """The `train/<preset>/...` metrics at `presets` (default those of `TRAIN_STEPS[quick]`; a preset not
    there gets the fewest timed steps it lists); `peaks` holds this run's `peak/...` results."""
    steps = TRAIN_STEPS[quick]
    results = {}
    for preset in presets or steps:
        num_steps = steps.get(preset, min(steps.values()))
        start = time.perf_counter()
        results.update(train_preset(preset, num_steps, data_dir, peaks, time_checkpoint=quick))
        progress(f"train/{preset} done in {time.perf_counter() - start:.0f} s")
        gc.collect()
    return results


def train_preset(preset: str, num_steps: int, data_dir: str, peaks: dict[str, float],
                 time_checkpoint: bool) -> dict[str, float]:
    config = load_config(preset, data_dir)
    build.ensure_data(config)
    run = build.Run(config)
    key = f"train/{preset}"
    results: dict[str, float] = {}

    iterator = iter(pipeline.train_dataset(run.spec))
    host_batches = [next(iterator) for _ in range(num_steps + 1)]  # read first: the step is timed alone

    start = time.perf_counter()
    state = jax.block_until_ready(run.factory.create())
    results[f"{key}/init_s"] = time.perf_counter() - start

    batch = run.to_device(host_batches[0])
    start = time.perf_counter()
    with run.mesh_context():
        traced = run.train_step.trace(state, batch)
        compiled = traced.lower().compile()  # fills the jit's cache: the calls below reuse it
    results[f"{key}/compile_s"] = time.perf_counter() - start
    analytic_flops = flops.count_flops(traced.jaxpr)  # after the timing: counting is not compiling

    start = time.perf_counter()
    with run.mesh_context():
        state, metrics = run.train_step(state, batch)
    jax.block_until_ready((state, metrics))
    results[f"{key}/first_step_s"] = time.perf_counter() - start

    start = time.perf_counter()
    for host_batch in host_batches[1:]:
        batch = run.to_device(host_batch)
        with run.mesh_context():
            state, metrics = run.train_step(state, batch)
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - start
    results[f"{key}/steps_per_s"] = num_steps / seconds
    results[f"{key}/clips_per_s"] = num_steps * int(config.train.batch_size) / seconds
    results.update(flops.flops_metrics(key, analytic_flops, flops.xla_flops(compiled), seconds / num_steps,
                                       str(config.model.dtype), peaks))
    loss = float(jax.device_get(metrics["loss"]))
    if not math.isfinite(loss):
        progress(f"warning: the {preset} train loss is {loss} after {num_steps + 1} steps")

    if time_checkpoint:
        results.update(checkpoint_timing(key, run, config, state, iterator.get_state()))
    results[f"{key}/peak_rss_mb"] = loop.peak_rss_mb()
    return results


def checkpoint_timing(key: str, run: Any, config: Any, state: Any, data_state: Any) -> dict[str, float]:
    """The `checkpoint_*` metrics: one save and restore of `state` in a temporary directory."""
    results = {}
    with tempfile.TemporaryDirectory(prefix="vlm_bench_") as workdir:
        checkpointer = checkpoint_lib.Checkpointer(workdir, max_to_keep=1, config=config)
        try:
            step = int(jax.device_get(state.step))
            start = time.perf_counter()
            checkpointer.save(step, state, data_state)
            results[f"{key}/checkpoint_save_blocking_s"] = time.perf_counter() - start
            checkpointer.wait()
            results[f"{key}/checkpoint_save_total_s"] = time.perf_counter() - start
            results[f"{key}/checkpoint_mb"] = _directory_bytes(checkpointer.directory / str(step)) / MB
            target = run.factory.abstract()
            start = time.perf_counter()
            restored, _ = checkpointer.restore(step, target)
            jax.block_until_ready(restored)
            results[f"{key}/checkpoint_restore_s"] = time.perf_counter() - start
        finally:
            checkpointer.close()
    return results


def _directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
