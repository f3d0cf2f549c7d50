"""FLOPs per training step, counted two ways, and the share of this machine's matmul peak that a step turns
into model FLOPs (MFU). `vlm bench` uses it in two places:

- the `train` section: the real pretraining step (`count_flops` on its jaxpr, `xla_flops` of its executable);
- the `mfu` section (`mfu`): each video encoder alone, at each preset size and compute dtype: one jitted
  AdamW step of the encoder (its `SIZES` for the preset, `dtype` for compute, float32 parameters) on
  random clips of the preset's shape, batch `ENCODER_BATCH`, with a mean-squared loss on the pooled output (BatchNorm
  statistics updated as in training). Its metrics, under `mfu/<encoder>/<preset>/<dtype>/`:
  - `analytic_gflop`: the step's matmul and convolution FLOPs counted from its jaxpr (`count_flops`:
    2 x the multiply-adds of every `dot_general` and `conv_general_dilated`, scan bodies times their
    length, the backward pass included). These are the model FLOPs MFU is defined on; elementwise work
    is left out, as is usual.
  - `xla_gflop`: `compiled.cost_analysis()["flops"]`, XLA's own count after optimisation. It counts
    elementwise operations too, and a while loop's body once whatever its trip count (the grouped
    attention of `layers.attend` on CPU is such a loop), so `xla_over_analytic` = xla / analytic is a
    cross-check, not an identity.
  - `step_s` (median of the timed steps after a warm-up), `clips_per_s`, `tflops` = analytic / step_s;
  - `mfu` = tflops / this run's matmul peak for the dtype (`peak/f32_gflops` for float32,
    `peak/bf16_f32acc_gflops` for bfloat16), in percent;
  - on a GPU also `mfu_datasheet`: tflops / the datasheet dense bf16 peak of the device kind
    (`DATASHEET_BF16_TFLOPS`), in percent.
  Every step is initialised and compiled first (`COMPILE_THREADS` at a time), then each is timed alone.
  Quick: vivit at tiny in float32, 1 timed step. Full: vivit at every preset in both `DTYPES`, and the
  other encoders in `ENCODERS` at small in float32, 2 timed steps each (a full grid would not fit `vlm
  bench`'s time on 2 CPU cores, where the convolutional encoders run at a few clips per second).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import statistics
import sys
import time
from typing import Any, Callable

import numpy as np

ENCODERS = ("vivit", "i3d", "cnn2d", "cnn_rnn")
PRESETS = ("tiny", "small", "base")
ENCODER_BATCH = 8
DTYPES = ("float32", "bfloat16")
COMPILE_THREADS = 2  # one per core: XLA's CPU compiles mostly keep one core busy each
# Dense bfloat16 tensor-core peak (TFLOP/s, without sparsity) by `jax.devices()[0].device_kind` substring.
DATASHEET_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0}


def _progress(message: str) -> None:
    print(f"vlm bench: {message}", file=sys.stderr, flush=True)


def count_flops(jaxpr: Any) -> float:
    """Matmul + convolution FLOPs of a (closed) jaxpr, sub-jaxprs included (scan bodies x their length,
    the costlier branch of a cond, a while body once: its trip count is not static)."""
    import jax.extend as jex

    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lhs_contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, *spatial)
            per_output = rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * per_output
        subs = [v for v in eqn.params.values() if isinstance(v, (jex.core.ClosedJaxpr, jex.core.Jaxpr))]
        branches = [v for value in eqn.params.values() if isinstance(value, tuple)
                    for v in value if isinstance(v, (jex.core.ClosedJaxpr, jex.core.Jaxpr))]
        inner = sum(count_flops(sub) for sub in subs)
        if branches:
            inner += max(count_flops(branch) for branch in branches)
        total += inner * (eqn.params["length"] if name == "scan" else 1)
    return total


def datasheet_tflops(device_kind: str) -> float | None:
    for kind, tflops in DATASHEET_BF16_TFLOPS.items():
        if kind.lower() in device_kind.lower():
            return tflops
    return None


def xla_flops(compiled: Any) -> float:
    """XLA's FLOP count of a compiled executable (`cost_analysis`), NaN when the backend gives none."""
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one dict per program
    return float((cost or {}).get("flops", float("nan")))


def peak_tflops(peaks: dict[str, float], dtype: str) -> float:
    """This run's measured matmul peak for a compute dtype, TFLOP/s."""
    return peaks.get({"float32": "peak/f32_gflops", "bfloat16": "peak/bf16_f32acc_gflops"}[dtype], np.nan) / 1e3


def flops_metrics(key: str, analytic: float, xla: float, step_s: float, dtype: str,
                  peaks: dict[str, float]) -> dict[str, float]:
    """The FLOP and MFU metrics of one measured step, under `key`."""
    import jax

    tflops = analytic / step_s / 1e12
    results = {f"{key}/analytic_gflop": analytic / 1e9, f"{key}/xla_gflop": xla / 1e9,
               f"{key}/xla_over_analytic": xla / analytic, f"{key}/tflops": tflops,
               f"{key}/mfu": 100.0 * tflops / peak_tflops(peaks, dtype)}
    datasheet = datasheet_tflops(jax.devices()[0].device_kind) if jax.default_backend() == "gpu" else None
    if datasheet:
        results[f"{key}/mfu_datasheet"] = 100.0 * tflops / datasheet
    return results


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
    """Initialise, trace (FLOPs counted) and compile one encoder's step (see the module docstring)."""
    import jax
    import jax.numpy as jnp
    import optax

    from vlm_jax import bench
    from vlm_jax.models import vlm

    config = bench.load_config(preset, "data")  # the preset's clip shape and encoder sizes (no data read)
    frames, image_size, batch_size = config.data.num_frames, config.data.image_size, ENCODER_BATCH
    block = config.model.video[encoder]
    model = vlm.VIDEO_ENCODERS[encoder](**vlm._kwargs(block), dtype=jnp.dtype(dtype), param_dtype=jnp.float32)
    rng = np.random.default_rng(0)
    video = jnp.asarray(rng.uniform(-1, 1, (batch_size, frames, image_size, image_size, 3)).astype(np.float32))
    # Jitted, from an "rbg" key: threefry's bits take most of an init's compile (I3D at small: 57 s jitted,
    # 92 s eager, 16 s this way); the step is timed, not the values it starts from.
    init = jax.jit(model.init, static_argnames="train")
    variables = init(jax.random.key(0, impl="rbg"), video[:1], train=False)
    params, extra = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    tx = optax.adamw(1e-4)

    def loss_fn(params, extra, video, key):
        rngs = dict(zip(("dropout", "masking"), jax.random.split(key)))
        encoded, updates = model.apply({"params": params, **extra}, video, train=True, rngs=rngs,
                                       mutable=list(extra))
        return jnp.mean(jnp.square(encoded.pooled.astype(jnp.float32))), updates

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, opt_state, extra, video, key):
        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, extra, video, key)
        changes, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, changes), opt_state, {**extra, **updates}, loss

    state = (params, tx.init(params), extra)
    traced = step.trace(*state, video, jax.random.key(1))
    executable = traced.lower().compile()
    return EncoderStep(f"mfu/{encoder}/{preset}/{dtype}", dtype, executable, state, video,
                       count_flops(traced.jaxpr), xla_flops(executable))


def median_step_seconds(run_step: Callable[[int], Any], timed_steps: int) -> float:
    """The median wall time of `run_step(i)` for i = 1..timed_steps, after the untimed warm-up `run_step(0)`;
    `run_step` must block until its step is done."""
    seconds = []
    for i in range(timed_steps + 1):
        start = time.perf_counter()
        run_step(i)
        if i:
            seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def time_encoder_step(step: EncoderStep, timed_steps: int, peaks: dict[str, float]) -> dict[str, float]:
    """The step's median time over `timed_steps` runs after a warm-up (its state is donated), and its MFU."""
    import jax

    state, step.state = step.state, None

    def run_step(i):
        nonlocal state
        *state, _ = jax.block_until_ready(step.executable(*state, step.video, jax.random.key(i)))

    step_s = median_step_seconds(run_step, timed_steps)
    batch_size = step.video.shape[0]
    return {f"{step.key}/step_s": step_s, f"{step.key}/clips_per_s": batch_size / step_s,
            **flops_metrics(step.key, step.analytic_flops, step.xla_flops, step_s, step.dtype, peaks)}


def mfu(quick: bool, peaks: dict[str, float]) -> dict[str, float]:
    """The `mfu` section; `peaks` holds this run's `peak/...` results."""
    combos = ([("vivit", "tiny", "float32")] if quick else
              [("vivit", p, d) for p in PRESETS for d in DTYPES]
              + [(e, "small", "float32") for e in ENCODERS[1:]])
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(COMPILE_THREADS) as pool:  # every compile before any timing
        steps = list(pool.map(lambda combo: compile_encoder_step(*combo), combos))
    _progress(f"mfu: {len(steps)} steps initialised and compiled in {time.perf_counter() - start:.0f} s "
              f"({COMPILE_THREADS} at a time)")
    results: dict[str, float] = {}
    while steps:
        step = steps.pop(0)
        key = step.key
        measured = time_encoder_step(step, 1 if quick else 2, peaks)
        del step
        results.update(measured)
        _progress(f"{key}: {measured[f'{key}/clips_per_s']:.3g} clips/s, {measured[f'{key}/tflops'] * 1e3:.3g} "
                  f"GFLOP/s, MFU {measured[f'{key}/mfu']:.1f}% (xla/analytic FLOPs "
                  f"{measured[f'{key}/xla_over_analytic']:.2f})")
    return results
