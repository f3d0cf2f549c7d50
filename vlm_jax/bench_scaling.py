"""`vlm bench`'s scaling section: how a ViViT training step's time and memory grow with the clip's length.

Measured in the calling process, on its default device; progress goes to stderr. Results are flat
"section/metric" -> number, like the rest of `vlm bench`. MB are 2**20 bytes.

- `scaling(quick)`: for joint and factorised ViViT (`VARIANTS`: joint, factorised_encoder; the TimeSformer-style
  factorised_self_attention is left to `variants=`, as `vlm bench` times it against TimesformerModel), with
  token masking off and on (`mask0`: mask_ratio 0.0; `mask50`: mask_ratio 0.5, the variant's own masking
  scheme, see `models.video.vivit`), and for each frame count T, one training step of the encoder alone:
  random 64 x 64 RGB clips in [-1, 1], tubelet 2 x 8 x 8 (so T / 2 x 8 x 8 tubelets, 64 per time slice),
  CLS pooling, loss = mean of the pooled output squared, `jax.value_and_grad`, then an `optax.adamw`
  update (lr 1e-4, weight decay 1e-4). The parameters are random, of `model.init`'s shapes (found with
  `jax.eval_shape`) but drawn with numpy: LayerNorm scales 1, biases 0, every other leaf normal(0, 0.02)
  (compiling the real init costs ~10 s per clip shape on 2 CPU cores; the timing does not depend on the
  values). The step is one `jax.jit` with the parameters and optimizer state donated; the "dropout" and
  "masking" rngs are `fold_in(key, step)` inside it, so the masked tubelets change from step to step. It
  is lowered and compiled once (`jax.jit(...).lower(...).compile()`, not timed) and that executable is
  both analysed and timed. All steps compile first, `COMPILE_THREADS` at a time, and are then timed one
  after another on an otherwise idle process.

  Full: `vivit.SIZES["small"]` (width 192, 4 layers, temporal 2, 3 heads, MLP 768), T = 16, 32, 64,
  batch 2, 2 timed steps. Quick (a smoke test): `SIZES["tiny"]` (width 64, 2 layers, temporal 1, 2 heads,
  MLP 256), T = 4, 8, batch 2, 2 timed steps; its steps take milliseconds, its 8 compiles half a minute
  on 2 shared CPU cores.
  The full section takes about 2 minutes on 2 shared CPU cores, most of it lowering and compiling the 12
  steps (5-9 s each one at a time) and the rest the 36 step runs, of which the joint variant at 64 frames
  (2048 tokens per clip, ~3 s a step) is the largest. Batch 4 would double the step runs, adding about a
  minute; batch 2 still gives 0.06 s or
  more per step, far above dispatch overhead.

  Per (variant, masking, frames), under `scaling/<variant>/<mask0|mask50>/frames<T>/`:
  - `step_s`: the median wall time of the timed steps (dispatch to `jax.block_until_ready` on the new
    state), after one untimed warm-up step of the compiled executable;
  - `peak_mb`: the compiled step's `memory_analysis()`: argument + output - alias + temp bytes. Arguments
    are the parameters, optimizer state, clips and step; output aliased onto the donated state is not
    counted twice; temp holds the activations kept for the backward pass, the gradients and other scratch.
    It is XLA's static buffer plan, so it does not vary from run to run. The parameters and optimizer
    state (the same at every T but for the position table) are a floor under it, so its growth with T
    flattens at short clips.

  Per (variant, masking), under `scaling/<variant>/<mask0|mask50>/`:
  - `time_exponent`, `memory_exponent`: the least-squares slope of log(step_s), log(peak_mb) against
    log(T) (`fit_exponent`), over T = 16, 32, 64 (full) or every T (quick): 1 is linear in the clip's
    length, 2 quadratic. Joint attention over all T/2 * 64 tubelets grows towards 2; the factorised
    variants attend within a time slice and across T/2 slices, so they stay near 1 (the issue's target:
    step time exponent <= 1.15 from 16 to 64 frames). The full run does not measure T = 8: there the
    fixed costs (the optimizer update over every parameter, dispatch) still weigh on the time. The memory
    exponents are exact (static plans); the time exponents rest on three medians of two steps and move
    by up to ~0.3 between runs on a loaded machine.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import sys
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax import bench, bench_mfu

MB = 2**20
COMPILE_THREADS = 2  # one per core: XLA's CPU compiles mostly keep one core busy each
MASKINGS = {"mask0": 0.0, "mask50": 0.5}
VARIANTS = ("joint", "factorised_encoder")
IMAGE = 64
TUBELET = (2, 8, 8)
LEARNING_RATE, WEIGHT_DECAY = 1e-4, 1e-4
# quick -> sizes, frame counts, the shortest clip the exponents are fitted from, batch and timed steps
SETTINGS = {
    False: dict(sizes="small", frames=(16, 32, 64), fit_from=16, batch=2, steps=2),
    True: dict(sizes="tiny", frames=(4, 8), fit_from=0, batch=2, steps=2),
}


def _progress(message: str) -> None:
    print(f"vlm bench: {message}", file=sys.stderr, flush=True)


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
    1, biases 0, every other leaf normal with standard deviation 0.02, drawn with numpy."""
    import flax.linen as nn

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


def _train_step(model: Any, tx: Any):
    """One AdamW step of `model` on loss = mean(pooled^2); the rngs are fold_in(key, step)."""
    import optax

    def loss_fn(params, video, rngs):
        pooled = model.apply({"params": params}, video, train=True, rngs=rngs).pooled
        return jnp.mean(jnp.square(pooled))

    def step(params, opt_state, video, key, step_index):
        dropout, masking = jax.random.split(jax.random.fold_in(key, step_index))
        loss, grads = jax.value_and_grad(loss_fn)(params, video, {"dropout": dropout, "masking": masking})
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


@dataclasses.dataclass
class Compiled:
    """One ViViT training step, compiled, with the state and clips it runs on."""
    name: str
    executable: Any
    params: Any
    opt_state: Any
    video: jax.Array
    step_key: jax.Array
    peak_mb: float


def compile_step(variant: str, mask_ratio: float, frames: int, sizes: dict, batch: int) -> Compiled:
    """The step of one (variant, mask_ratio, frames), lowered and compiled; see the module docstring."""
    import optax

    from vlm_jax.models.video.vivit import ViViT

    model = ViViT(variant=variant, mask_ratio=mask_ratio, pool="cls", **{**sizes, "tubelet": TUBELET})
    video_key, step_key = jax.random.split(jax.random.key(0))
    video = jax.random.uniform(video_key, (batch, frames, IMAGE, IMAGE, 3), jnp.float32, -1.0, 1.0)
    params = _random_params(model, video[:1])
    tx = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    opt_state = tx.init(params)
    executable = _train_step(model, tx).lower(params, opt_state, video, step_key, jnp.zeros((), jnp.int32)).compile()
    peak = bench.compiled_total_bytes(executable.memory_analysis())
    return Compiled(f"ViViT {variant} mask_ratio {mask_ratio} frames {frames}", executable, params, opt_state,
                    video, step_key, peak / MB)


def time_step(compiled: Compiled, steps: int) -> float:
    """The median seconds of `steps` runs of a compiled step after one warm-up run (its state is donated)."""
    state = {"params": compiled.params, "opt_state": compiled.opt_state, "loss": None}
    compiled.params = compiled.opt_state = None

    def run_step(i):
        state["params"], state["opt_state"], state["loss"] = jax.block_until_ready(compiled.executable(
            state["params"], state["opt_state"], compiled.video, compiled.step_key, jnp.asarray(i, jnp.int32)))

    step_s = bench_mfu.median_step_seconds(run_step, steps)
    if not math.isfinite(float(state["loss"])):
        _progress(f"warning: {compiled.name}: the loss is {float(state['loss'])}")
    return step_s


def scaling(quick: bool, *, variants: Sequence[str] | None = None, maskings: Sequence[str] | None = None,
            frames: Sequence[int] | None = None) -> dict[str, float]:
    """Step time and peak memory of ViViT training steps against frame count, and their exponents.

    `variants`, `maskings` ("mask0", "mask50") and `frames` narrow the run (default: everything that
    `quick` selects); the exponents are fitted over the given frames from the setting's shortest fitted
    clip on, and left out when fewer than two remain.
    """
    from vlm_jax.models.video import vivit

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
    _progress(f"scaling: {len(combos)} steps compiled in {time.perf_counter() - start:.0f} s "
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
                _progress(f"{prefix}/frames{t}: {step_s:.3g} s, {compiled.peak_mb:.0f} MB")
                del compiled
            if len(fitted) >= 2:
                for metric, name in (("step_s", "time_exponent"), ("peak_mb", "memory_exponent")):
                    results[f"{prefix}/{name}"] = fit_exponent(
                        fitted, [results[f"{prefix}/frames{t}/{metric}"] for t in fitted])
                _progress(f"{prefix}: time exponent {results[f'{prefix}/time_exponent']:.2f}, memory exponent "
                          f"{results[f'{prefix}/memory_exponent']:.2f} (frames {', '.join(map(str, fitted))})")
    return results
