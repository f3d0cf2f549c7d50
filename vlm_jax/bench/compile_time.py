"""The `compile` section: how long the pretraining train step takes to become a program, stage by stage, and
how big the program is. Every `vlm train`, `vlm eval`, test and bench section pays this before its first step.

Each measurement runs in a fresh process, as a user's command does, with a new persistent compilation cache:
the first process compiles cold and fills the cache; a second one, which finds the program there, shows
what a repeated or resumed run of the same config pays. The metrics are described in docs/bench.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from typing import Sequence

from vlm_jax.bench.common import REPO, progress, subprocess_env

COMPILE_PRESETS = {True: ("tiny",), False: ("tiny", "cpu", "small")}  # quick -> presets


# The program depends on the clip's shape, not on how many clips the data set holds: every preset reads the
# tiny data set at its own frames and resolution, which builds in seconds (base's own data set takes hours).
DATA_SIZE = "data.size=tiny"


def compile_times(quick: bool, data_dir: str, presets: Sequence[str] | None = None) -> dict[str, float]:
    """The `compile/<preset>/...` metrics at `presets` (default `COMPILE_PRESETS[quick]`)."""
    results = {}
    for preset in presets or COMPILE_PRESETS[quick]:
        with tempfile.TemporaryDirectory(prefix="vlm_bench_xla_cache_") as cache:
            cold = _in_fresh_process(preset, data_dir, cache, DATA_SIZE)
            cached = _in_fresh_process(preset, data_dir, cache, DATA_SIZE)
        results.update({f"compile/{preset}/{name}": value for name, value in cold.items()})
        results[f"compile/{preset}/cached_total_s"] = cached["total_s"]
        progress(f"compile/{preset}: {cold['total_s']:.1f} s cold, {cached['total_s']:.1f} s from the cache")
    return results


def _in_fresh_process(preset: str, data_dir: str, cache: str, *overrides: str) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-m", "vlm_jax.bench.compile_time", preset, data_dir, cache, *overrides],
                          capture_output=True, text=True, cwd=REPO, env=subprocess_env())
    if done.returncode:
        raise RuntimeError(f"the compile measurement of {preset} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(preset: str, data_dir: str, cache: str, *overrides: str) -> dict[str, float]:
    """Trace, lower and compile the preset's train step once (config `overrides` applied), with `cache` as
    the persistent compilation cache."""
    import jax

    from vlm_jax.bench import flops
    from vlm_jax.bench.presets import load_config
    from vlm_jax.data import pipeline
    from vlm_jax.run import build

    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    config = load_config(preset, data_dir, overrides)
    build.ensure_data(config)
    run = build.Run(config)
    batch = run.to_device(next(iter(pipeline.train_dataset(run.spec))))
    state = run.factory.abstract()  # tracing needs shapes and shardings only
    with run.mesh_context():
        start = time.perf_counter()
        traced = run.train_step.trace(state, batch)
        traced_at = time.perf_counter()
        lowered = traced.lower()
        lowered_at = time.perf_counter()
        lowered.compile()
        compiled_at = time.perf_counter()
    return {"trace_s": traced_at - start, "lower_s": lowered_at - traced_at, "compile_s": compiled_at - lowered_at,
            "total_s": compiled_at - start, "equations": float(flops.count_equations(traced.jaxpr))}


if __name__ == "__main__":
    print(json.dumps(measure(*sys.argv[1:])))
