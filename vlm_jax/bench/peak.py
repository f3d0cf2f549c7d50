"""The `peak` section: this machine's matmul GFLOP/s, float32 and bfloat16 with float32 accumulation, which
the train and mfu sections divide by. The fastest timed run, not a typical one (docs/bench.md)."""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

from vlm_jax.bench.common import progress


def matmul_peak(quick: bool) -> dict[str, float]:
    """`peak/f32_gflops` and `peak/bf16_f32acc_gflops`: 2 N^3 / the fastest of the timed N x N products."""
    n, runs = (1024, 3) if quick else (2048, 11)
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (n, n), jnp.float32)
    b = jax.random.normal(key_b, (n, n), jnp.float32)
    kinds = {
        "f32_gflops": (jax.jit(jnp.dot), a, b),
        "bf16_f32acc_gflops": (jax.jit(functools.partial(jnp.dot, preferred_element_type=jnp.float32)),
                               a.astype(jnp.bfloat16), b.astype(jnp.bfloat16)),
    }
    results = {}
    for name, (dot, x, y) in kinds.items():
        for _ in range(2):  # compile, then one more
            jax.block_until_ready(dot(x, y))
        seconds = []
        for _ in range(runs):
            start = time.perf_counter()
            jax.block_until_ready(dot(x, y))
            seconds.append(time.perf_counter() - start)
        results[f"peak/{name}"] = 2 * n**3 / min(seconds) / 1e9
        progress(f"peak/{name}: {results[f'peak/{name}']:.1f} ({n} x {n}, fastest of {runs})")
    return results
