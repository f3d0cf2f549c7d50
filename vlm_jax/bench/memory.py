"""The `memory` section: per-device memory of the train state and of the compiled train step on 8 devices,
for meshes (data, fsdp, tensor) = (8 // k, k, 1), k = 1, 2, 4, 8, the global batch always split 8 ways.
It runs in subprocesses with 8 fake CPU devices (`python -m vlm_jax.bench.memory REQUEST`: the device count
must be set before jax starts) and lowers abstractly: nothing is executed. Metrics: docs/bench.md."""

from __future__ import annotations

import collections
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

import jax
import numpy as np

from vlm_jax.bench.common import MB, REPO, compiled_total_bytes, progress, subprocess_env
from vlm_jax.bench.presets import load_config
from vlm_jax.data import builders, features, pipeline
from vlm_jax.run import build

MEMORY_PRESETS = {True: ("tiny",), False: ("tiny", "small")}
MEMORY_COMPILED_PRESETS = ("tiny",)  # full only: compiling each mesh is slow even at tiny
MEMORY_COMPILED_FSDP = (1, 8)  # the two ends; 2 and 4 record the state alone
MEMORY_DEVICES = 8
MEMORY_FSDP = (1, 2, 4, 8)  # mesh (8 // fsdp, fsdp, 1)


def memory(quick: bool, data_dir: str, compiled: bool | None = None, presets: Sequence[str] | None = None,
           overrides: Sequence[str] = (), fsdp: Sequence[int] = MEMORY_FSDP) -> dict[str, float]:
    """The `memory/<preset>/fsdp<k>/...` metrics, in subprocesses. `compiled` (the compiled step's statistics
    too, for every mesh in `fsdp`) defaults to full runs at `MEMORY_COMPILED_PRESETS` and
    `MEMORY_COMPILED_FSDP`; `overrides` (config overrides) and `fsdp` (a subset of the meshes) let tests
    shrink it."""
    results = {}
    for preset in (MEMORY_PRESETS[quick] if presets is None else presets):
        config = load_config(preset, data_dir, overrides)
        builders.build(features.BuildRequest.from_config(config))  # a no-op when built
        if compiled is None:
            by_default = not quick and preset in MEMORY_COMPILED_PRESETS
            compiled_fsdp = [k for k in fsdp if k in MEMORY_COMPILED_FSDP] if by_default else []
        else:
            compiled_fsdp = list(fsdp) if compiled else []
        # One subprocess per compiled mesh and one for the rest, side by side: nothing here is timed, and
        # a compile keeps about one core busy.
        base = {"preset": preset, "data_dir": data_dir, "overrides": list(overrides)}
        requests = [{**base, "compiled_fsdp": [k], "fsdp": [k]} for k in compiled_fsdp]
        state_only = [k for k in fsdp if k not in compiled_fsdp]
        if state_only:
            requests.append({**base, "compiled_fsdp": [], "fsdp": state_only})
        with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
            for measured in pool.map(_memory_subprocess, requests):
                results.update(measured)
        key = f"memory/{preset}"
        if f"{key}/fsdp1/state_mb_per_device" in results and f"{key}/fsdp{max(fsdp)}/state_mb_per_device" in results:
            results[f"{key}/fsdp{max(fsdp)}_over_fsdp1"] = (results[f"{key}/fsdp{max(fsdp)}/state_mb_per_device"]
                                                           / results[f"{key}/fsdp1/state_mb_per_device"])
    return results


def _memory_subprocess(request: dict) -> dict[str, float]:
    flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
             if not f.startswith(("--xla_force_host_platform_device_count", "--xla_backend_optimization_level"))]
    flags += [f"--xla_force_host_platform_device_count={MEMORY_DEVICES}", "--xla_backend_optimization_level=0"]
    env = subprocess_env(XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, "-m", "vlm_jax.bench.memory", json.dumps(request)]
    with tempfile.TemporaryFile("w+") as stdout:
        process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
        tail = collections.deque(maxlen=60)
        for line in process.stderr:  # forward its progress and warnings as they come, keep the rest for errors
            if line.startswith("vlm bench:"):
                print(line, end="", file=sys.stderr, flush=True)
            tail.append(line)
        if process.wait() != 0:
            raise RuntimeError(f"the memory bench ({request}) exited {process.returncode}:\n{''.join(tail)}")
        stdout.seek(0)
        return json.loads(stdout.read().strip().splitlines()[-1])


def per_device_bytes(tree: Any) -> int:
    """Bytes one device holds of a tree of arrays or ShapeDtypeStructs with shardings (the largest shard)."""
    return sum(int(np.prod(x.sharding.shard_shape(x.shape), dtype=np.int64)) * x.dtype.itemsize
               for x in jax.tree.leaves(tree))


def _memory_worker(preset: str, data_dir: str, compiled_fsdp: Sequence[int], overrides: Sequence[str] = (),
                   fsdp: Sequence[int] = MEMORY_FSDP) -> dict[str, float]:
    """In the subprocess: the meshes (8 // k, k, 1) for k in `fsdp`, on the 8 devices; the compiled step's
    statistics too for k in `compiled_fsdp`."""
    if jax.device_count() != MEMORY_DEVICES:
        raise RuntimeError(f"the memory bench needs {MEMORY_DEVICES} devices, found {jax.device_count()}")
    results: dict[str, float] = {}
    host_batch = None
    for k in fsdp:
        config = load_config(preset, data_dir, [*overrides, f"mesh.shape=({MEMORY_DEVICES // k},{k},1)"])
        run = build.Run(config)
        key = f"memory/{preset}/fsdp{k}"
        state = run.factory.abstract()
        state_bytes = per_device_bytes(state)
        results[f"{key}/state_mb_per_device"] = state_bytes / MB
        if k not in compiled_fsdp:
            continue
        if host_batch is None:  # the shapes of a real batch (the global batch: one process)
            host_batch = next(iter(pipeline.train_dataset(run.spec)))
        batch = {name: jax.ShapeDtypeStruct(value.shape, jax.dtypes.canonicalize_dtype(value.dtype),
                                            sharding=run.batch_sharding) for name, value in host_batch.items()}
        start = time.perf_counter()
        with run.mesh_context():
            executable = run.train_step.lower(state, batch).compile()
        progress(f"{key}: lowered and compiled in {time.perf_counter() - start:.0f} s")
        results.update(_compiled_metrics(key, executable, batch, state_bytes))
    return results


def _compiled_metrics(key: str, executable: Any, batch: dict, state_bytes: int) -> dict[str, float]:
    """The compiled step's `memory_analysis()` per device, and a warning when its arguments are not the
    state plus the batch entries it keeps."""
    stats = executable.memory_analysis()
    # the batch entries the executable keeps (pruned arguments have no sharding)
    formats = executable.input_formats[0][1]
    kept = {name: batch[name] for name in batch if getattr(formats[name], "sharding", None) is not None}
    batch_bytes = per_device_bytes(kept)
    argument, output = stats.argument_size_in_bytes, stats.output_size_in_bytes
    alias, temp = stats.alias_size_in_bytes, stats.temp_size_in_bytes
    if argument - batch_bytes != state_bytes:
        progress(f"warning: {key}: compiled argument size {argument} - batch {batch_bytes} "
                 f"!= state {state_bytes} bytes")
    return {f"{key}/argument_mb": argument / MB, f"{key}/batch_mb_per_device": batch_bytes / MB,
            f"{key}/output_mb": output / MB, f"{key}/alias_mb": alias / MB,
            f"{key}/temp_mb": temp / MB, f"{key}/total_mb": compiled_total_bytes(stats) / MB}


if __name__ == "__main__":  # the section's subprocess: python -m vlm_jax.bench.memory REQUEST_JSON
    if len(sys.argv) != 2:
        sys.exit("usage: python -m vlm_jax.bench.memory "
                 "'{\"preset\": ..., \"data_dir\": ..., \"compiled_fsdp\": [...], \"overrides\": [...], "
                 "\"fsdp\": [...]}'")
    print(json.dumps(_memory_worker(**json.loads(sys.argv[1]))))
