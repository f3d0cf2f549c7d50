"""The `scaling` section: how a ViViT training step's time and memory grow with the clip's length, for the
variants in `VARIANTS` with token masking off and on, and the exponents fitted to them. Every step compiles
first, `COMPILE_THREADS` at a time, then each is timed alone. Settings and metrics: docs/bench.md."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import time
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.bench.common import (COMPILE_THREADS, MB, compiled_total_bytes, encoder_train_step,
                                  pooled_mean_square, progress, time_train_step)
from vlm_jax.models.video import vivit

MASKINGS = {"mask0": 0.0, "mask50": 0.5}
VARIANTS = ("joint", "factorised_encoder")  # factorised_self_attention is timed against TimeSformer by peers
IMAGE = 64
TUBELET = (2, 8, 8)
# quick -> sizes, frame counts, the shortest clip the exponents are fitted from, batch and timed steps
SETTINGS = {
    False: dict(sizes="small", frames=(16, 32, 64), fit_from=16, batch=2, steps=2),
    True: dict(sizes="tiny", frames=(4, 8), fit_from=0, batch=2, steps=2),
}


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The exponent k of the power law y = c x^k that fits (xs, ys) best: the least-squares slope of log y on log x."""
    xs, ys = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
    if xs.shape != ys.shape or xs.ndim != 1 or len(xs) < 2:
        raise ValueError(f"need two or more (x, y) pairs of equal length, got {xs.shape} and {ys.shape}")
    if np.any(xs <= 0) or np.any(ys <= 0):
        raise ValueError("a power law needs positive xs and ys")
    slope, _ = np.polyfit(np.log(xs), np.log(ys), 1)
    return float(slope)


def _random_params(model: Any, video: jax.Array, seed: int = 0) -> dict:
    """Parameters of `model`'s shapes (from `jax.eval_shape(model.init)`, nothing compiled): LayerNorm scales
    1, biases 0, every other leaf normal with standard deviation 0.02, drawn with numpy. Compiling the real
    init would cost more than the step; the timing does not depend on the values."""
    shapes = nn.unbox(jax.eval_shape(model.init, jax.random.key(seed), video)["params"])
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = getattr(path[-1], "key", None)
        if name == "scale":
            return jnp.ones(leaf.shape, leaf.dtype)
        if name == "bias":
            return jnp.zeros(leaf.shape, leaf.dtype)
        return jnp.asarray(rng.normal(0.0, 0.02, leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


@dataclasses.dataclass
class Compiled:
    """One ViViT training step, compiled, with the state and clips it runs on."""
    name: str
    executable: Any
    state: Any
    video: jax.Array
    step_key: jax.Array
    peak_mb: float


def compile_step(variant: str, mask_ratio: float, frames: int, sizes: dict, batch: int) -> Compiled:
    """The step of one (variant, mask_ratio, frames) on random clips in [-1, 1], CLS pooling, lowered and
    compiled once: that executable is both analysed and timed."""
    model = vivit.ViViT(variant=variant, mask_ratio=mask_ratio, pool="cls", **{**sizes, "tubelet": TUBELET})
    video_key, step_key = jax.random.split(jax.random.key(0))
    video = jax.random.uniform(video_key, (batch, frames, IMAGE, IMAGE, 3), jnp.float32, -1.0, 1.0)
    step, init_state = encoder_train_step(model, pooled_mean_square)
    state = init_state({"encoder": _random_params(model, video[:1])})
    executable = step.lower(*state, video, None, step_key).compile()
    peak = compiled_total_bytes(executable.memory_analysis())
    return Compiled(f"ViViT {variant} mask_ratio {mask_ratio} frames {frames}", executable, state, video,
                    step_key, peak / MB)


def time_step(compiled: Compiled, steps: int) -> float:
    """The median seconds of `steps` runs of a compiled step after one warm-up run (its state is donated). Run
    i's rngs come from `fold_in(step_key, i)`, so the masked tubelets change from step to step."""
    keys = [jax.random.fold_in(compiled.step_key, i) for i in range(steps + 1)]
    state, compiled.state = compiled.state, None
    step_s, loss = time_train_step(compiled.executable, state, compiled.video, None, keys.__getitem__, steps)
    if not math.isfinite(float(loss)):
        progress(f"warning: {compiled.name}: the loss is {float(loss)}")
    return step_s


def scaling(quick: bool, *, variants: Sequence[str] | None = None, maskings: Sequence[str] | None = None,
            frames: Sequence[int] | None = None) -> dict[str, float]:
    """Step time and peak memory of ViViT training steps against frame count, and their exponents.

    `variants`, `maskings` ("mask0", "mask50") and `frames` narrow the run (default: everything that
    `quick` selects); the exponents are fitted over the given frames from the setting's shortest fitted
    clip on, and left out when fewer than two remain.
    """
    setting = SETTINGS[quick]
    variants = VARIANTS if variants is None else tuple(variants)
    maskings = tuple(MASKINGS) if maskings is None else tuple(maskings)
    frame_counts = setting["frames"] if frames is None else tuple(frames)
    unknown = sorted({*set(variants) - set(vivit.VARIANTS), *set(maskings) - set(MASKINGS)})
    if unknown:
        raise ValueError(f"unknown variants or maskings {unknown}; choose from "
                         f"{', '.join((*vivit.VARIANTS, *MASKINGS))}")
    sizes = vivit.SIZES[setting["sizes"]]
    fitted = [t for t in frame_counts if t >= setting["fit_from"]]
    combos = [(v, m, t) for v in variants for m in maskings for t in frame_counts]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(COMPILE_THREADS) as pool:  # every compile before any timing
        steps = dict(zip(combos, pool.map(
            lambda combo: compile_step(combo[0], MASKINGS[combo[1]], combo[2], sizes, setting["batch"]), combos)))
    progress(f"scaling: {len(combos)} steps compiled in {time.perf_counter() - start:.0f} s "
             f"({COMPILE_THREADS} at a time)")
    results = {}
    for variant in variants:
        for masking in maskings:
            prefix = f"scaling/{variant}/{masking}"
            for t in frame_counts:
                compiled = steps.pop((variant, masking, t))
                step_s = time_step(compiled, setting["steps"])
                results[f"{prefix}/frames{t}/step_s"] = step_s
                results[f"{prefix}/frames{t}/peak_mb"] = compiled.peak_mb
                progress(f"{prefix}/frames{t}: {step_s:.3g} s, {compiled.peak_mb:.0f} MB")
                del compiled
            if len(fitted) >= 2:
                results.update(_exponents(prefix, results, fitted))
    return results


def _exponents(prefix: str, results: dict[str, float], fitted: Sequence[int]) -> dict[str, float]:
    """`time_exponent` and `memory_exponent` under `prefix`, fitted over the frame counts `fitted`."""
    exponents = {f"{prefix}/{name}": fit_exponent(fitted, [results[f"{prefix}/frames{t}/{metric}"] for t in fitted])
                 for metric, name in (("step_s", "time_exponent"), ("peak_mb", "memory_exponent"))}
    progress(f"{prefix}: time exponent {exponents[f'{prefix}/time_exponent']:.2f}, memory exponent "
             f"{exponents[f'{prefix}/memory_exponent']:.2f} (frames {', '.join(map(str, fitted))})")
    return exponents
