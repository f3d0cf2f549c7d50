"""What the `vlm bench` sections share: the section names, progress lines, units, the subprocess environment,
step timing and the one AdamW step that every section training an encoder alone compiles and times."""

from __future__ import annotations

import functools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

SECTIONS = ("peak", "input", "compile", "train", "mfu", "scaling", "memory", "peers")
MB = 2**20
COMPILE_THREADS = 2  # one per core: XLA's CPU compiles mostly keep one core busy each
REPO = Path(__file__).resolve().parents[2]
LEARNING_RATE, WEIGHT_DECAY = 1e-4, 1e-4


def progress(message: str) -> None:
    print(f"vlm bench: {message}", file=sys.stderr, flush=True)


def subprocess_env(**variables: str) -> dict[str, str]:
    """This environment plus `variables`, with this checkout first on PYTHONPATH: a section's `python -m
    vlm_jax.bench...` subprocess (run with cwd=REPO) imports the same code as its parent."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, **variables, "PYTHONPATH": path}


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


def compiled_total_bytes(stats: Any) -> int:
    """A compiled program's buffers from its `memory_analysis()`: arguments + outputs - the outputs aliased
    onto donated arguments (not counted twice) + temporaries."""
    return (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
            + stats.temp_size_in_bytes)


def pooled_mean_square(params: Any, pooled: jax.Array, target: Any) -> jax.Array:
    """The loss of an encoder trained alone: the mean of its pooled output squared, in float32."""
    del params, target
    return jnp.mean(jnp.square(pooled.astype(jnp.float32)))


def encoder_train_step(model: Any, loss: Callable[[Any, jax.Array, Any], jax.Array]
                       ) -> tuple[Callable, Callable[..., list]]:
    """One jitted AdamW step of a video encoder, `step(params, opt_state, extra, video, target, key) ->
    (params, opt_state, extra, loss)`, its state donated, and `init(params, extra={})`, the state it starts from.

    `params["encoder"]` are the encoder's parameters; `loss(params, pooled, target)` may train more of
    `params` (a head). `extra` holds the encoder's other collections (BatchNorm statistics), updated as in
    training. The "dropout" and "masking" rngs are split from `key`.
    """
    import optax  # here, not at the top: the torch side of vivit_train's peak-RSS subprocess imports this module

    tx = optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY)

    def loss_fn(params, extra, video, target, key):
        rngs = dict(zip(("dropout", "masking"), jax.random.split(key)))
        encoded, updates = model.apply({"params": params["encoder"], **extra}, video, train=True, rngs=rngs,
                                       mutable=list(extra))
        return loss(params, encoded.pooled, target), updates

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, opt_state, extra, video, target, key):
        (value, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, extra, video, target, key)
        changes, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, changes), opt_state, {**extra, **updates}, value

    def init(params: Any, extra: dict | None = None) -> list:
        return [params, tx.init(params), extra or {}]

    return step, init


def time_train_step(executable: Callable, state: list, video: Any, target: Any, key_of: Callable[[int], Any],
                    timed_steps: int) -> tuple[float, Any]:
    """`median_step_seconds` of an `encoder_train_step` (compiled or jitted) and the last run's loss. The step
    donates its state, so each run's output state feeds the next; run i gets `key_of(i)`."""
    loss = None

    def run_step(i):
        nonlocal state, loss
        *state, loss = jax.block_until_ready(executable(*state, video, target, key_of(i)))

    return median_step_seconds(run_step, timed_steps), loss
