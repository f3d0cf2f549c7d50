"""The `mfu` section: each video encoder's own training step (`common.encoder_train_step` on random clips of
the preset's shape), its FLOPs counted two ways and the share of this run's matmul peak it reaches. Every
step is initialised and compiled first, `COMPILE_THREADS` at a time, then each is timed alone. Metrics and
the choice of combinations: docs/bench.md."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.bench import flops
from vlm_jax.bench.common import COMPILE_THREADS, encoder_train_step, pooled_mean_square, progress, time_train_step
from vlm_jax.bench.presets import load_config
from vlm_jax.models import vlm

ENCODERS = ("vivit", "i3d", "cnn2d", "cnn_rnn")
PRESETS = ("tiny", "small", "base")
ENCODER_BATCH = 8
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass
class EncoderStep:
    """One (encoder, preset, dtype) of the `mfu` section, compiled, with the state and clips it runs on."""
    key: str
    dtype: str
    executable: Any
    state: Any
    video: Any
    analytic_flops: float
    xla_flops: float


def compile_encoder_step(encoder: str, preset: str, dtype: str) -> EncoderStep:
    """Initialise, trace (FLOPs counted) and compile one encoder's step: its `SIZES` for the preset, `dtype`
    for compute, float32 parameters, batch `ENCODER_BATCH`."""
    config = load_config(preset, "data")  # the preset's clip shape and encoder sizes (no data read)
    frames, image_size, batch_size = config.data.num_frames, config.data.image_size, ENCODER_BATCH
    model = vlm.video_encoder(config.model, encoder, dtype=jnp.dtype(dtype), param_dtype=jnp.float32)
    rng = np.random.default_rng(0)
    video = jnp.asarray(rng.uniform(-1, 1, (batch_size, frames, image_size, image_size, 3)).astype(np.float32))
    # Jitted, from an "rbg" key: threefry's bits take most of an init's compile; the step is timed, not the
    # values it starts from.
    init = jax.jit(model.init, static_argnames="train")
    variables = init(jax.random.key(0, impl="rbg"), video[:1], train=False)
    step, init_state = encoder_train_step(model, pooled_mean_square)
    state = init_state({"encoder": variables["params"]}, {k: v for k, v in variables.items() if k != "params"})
    traced = step.trace(*state, video, None, jax.random.key(1))
    executable = traced.lower().compile()
    return EncoderStep(f"mfu/{encoder}/{preset}/{dtype}", dtype, executable, state, video,
                       flops.count_flops(traced.jaxpr), flops.xla_flops(executable))


def time_encoder_step(step: EncoderStep, timed_steps: int, peaks: dict[str, float]) -> dict[str, float]:
    """The step's median time over `timed_steps` runs after a warm-up (its state is donated), and its MFU."""
    state, step.state = step.state, None
    step_s, _ = time_train_step(step.executable, state, step.video, None, jax.random.key, timed_steps)
    batch_size = step.video.shape[0]
    return {f"{step.key}/step_s": step_s, f"{step.key}/clips_per_s": batch_size / step_s,
            **flops.flops_metrics(step.key, step.analytic_flops, step.xla_flops, step_s, step.dtype, peaks)}


def combinations(quick: bool, presets: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    """(encoder, preset, dtype) of the section: ViViT at each preset (default tiny when quick, else `PRESETS`)
    in float32 (quick) or each of `DTYPES`, and the other encoders in float32 at small when it is chosen and
    the run is full."""
    presets = presets or (("tiny",) if quick else PRESETS)
    combos = [("vivit", p, d) for p in presets for d in (("float32",) if quick else DTYPES)]
    if not quick and "small" in presets:
        combos += [(e, "small", "float32") for e in ENCODERS[1:]]
    return combos


def mfu(quick: bool, peaks: dict[str, float], presets: Sequence[str] | None = None) -> dict[str, float]:
    """The `mfu` section at `presets` (`combinations`); `peaks` holds this run's `peak/...` results."""
    combos = combinations(quick, presets)
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(COMPILE_THREADS) as pool:  # every compile before any timing
        steps = list(pool.map(lambda combo: compile_encoder_step(*combo), combos))
    progress(f"mfu: {len(steps)} steps initialised and compiled in {time.perf_counter() - start:.0f} s "
             f"({COMPILE_THREADS} at a time)")
    results: dict[str, float] = {}
    while steps:
        step = steps.pop(0)
        key = step.key
        measured = time_encoder_step(step, 1 if quick else 2, peaks)
        del step
        results.update(measured)
        progress(f"{key}: {measured[f'{key}/clips_per_s']:.3g} clips/s, {measured[f'{key}/tflops'] * 1e3:.3g} "
                 f"GFLOP/s, MFU {measured[f'{key}/mfu']:.1f}% (xla/analytic FLOPs "
                 f"{measured[f'{key}/xla_over_analytic']:.2f})")
    return results
